/*
 * pool.c: the cluster's instances, backend pools and the rules for handing
 * out backend connections (see pool.h). The decisions are made under one lock
 * and are short; the work they lead to (connecting, closing, attaching a
 * server to a loop, waking a worker) happens after the lock is dropped.
 */
#include "pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "client.h"
#include "log.h"
#include "monitor.h"
#include "pgmux.h"
#include "secrets.h"
#include "server.h"
#include "util.h"
#include "worker.h"

/* Connections started by one decision; more wait for the next occasion. */
#define POOL_MAX_CONNECTS 64

struct connect_request {
	struct pool *pool;
	struct target *target;
};

struct connect_batch {
	struct connect_request req[POOL_MAX_CONNECTS];
	int n;
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static void pool_serve_waiters_locked(struct connect_batch *b);
static struct list_node targets = LIST_HEAD_INIT(targets);
static struct list_node pools = LIST_HEAD_INIT(pools);
static struct list_node retired_targets = LIST_HEAD_INIT(retired_targets);
static struct target *writer;      /* the instance serving the writer endpoint, or NULL */
static bool paused;                /* PAUSE, or a cutover waiting for transactions to end */
static uint64_t writer_lost_usec;  /* when the last writer was lost (0: not lost) */

static const char *const role_names[] = {
	[ROLE_UNKNOWN] = "unknown",
	[ROLE_WRITER] = "writer",
	[ROLE_READER] = "reader",
};

const char *pool_role_name(enum instance_role role)
{
	return role_names[role];
}

static void set_string(char **dst, const char *src)
{
	if (*dst && src && strcmp(*dst, src) == 0)
		return;
	free(*dst);
	*dst = xstrdup(src);
}

static struct target *target_new_locked(const char *host, int port, bool listed)
{
	const struct config *cfg = config_current();
	struct target *t = xcalloc(1, sizeof(*t));

	t->host = xstrdup(host);
	t->port = port;
	t->listed = listed;
	snprintf(t->instance_id, sizeof(t->instance_id), "%s:%d", host, port);
	t->max_connections = cfg->max_connections;
	t->cap_known = cfg->max_connections > 0;
	list_append(&targets, &t->node);
	return t;
}

static void pool_login(const struct pool *pool, const char **user, const char **database, const char **password)
{
	*user = pool->user;
	*database = pool->database;
	*password = pool->password;
}

/*
 * A new connection learns the server's limit (used once per instance,
 * whatever the config says, so that a reload can switch to
 * max_connections = 0) and whether the pool's database has code that a
 * write may run and that may change the session (see struct pool's
 * writes_opaque). The first connection of a pool asks, then one a minute
 * at most.
 */
static bool pool_setup_wanted(const struct server *s)
{
	return __atomic_load_n(&s->target->server_max, __ATOMIC_RELAXED) <= 0 ||
	       (s->pool && pool_writes_check_due(s->pool, pgmux_now_usec()));
}

static void pool_setup_answered(struct server *s, int server_max, bool writes_opaque)
{
	if (__atomic_load_n(&s->target->server_max, __ATOMIC_RELAXED) <= 0)
		pool_learn_cap(s->target, server_max);
	if (s->pool) {
		pool_set_writes_opaque(s->pool, writes_opaque);
		__atomic_store_n(&s->pool->writes_checked_usec, pgmux_now_usec(), __ATOMIC_RELAXED);
	}
}

/* What a backend connection tells its pool (server.h). */
static const struct server_pool_ops pool_server_ops = {
	.login = pool_login,
	.setup_wanted = pool_setup_wanted,
	.setup_answered = pool_setup_answered,
	.ready = pool_connection_ready,
	.connect_failed = pool_connect_failed,
	.release = pool_release,
	.forget = pool_forget,
	.statement_accepted = pool_statement_accepted,
	.statement_refused = pool_statement_refused,
	.instance_suspect = pool_instance_suspect,
	.instance_check = monitor_check_now,
};

int pool_init(const struct config *cfg)
{
	if (cfg->n_hosts < 1)
		return -1;
	server_set_pool_ops(&pool_server_ops);
	pthread_mutex_lock(&pool_lock);
	for (int i = 0; i < cfg->n_hosts; i++)
		target_new_locked(cfg->hosts[i].host, cfg->hosts[i].port, true);
	pthread_mutex_unlock(&pool_lock);
	return 0;
}

void pool_instance_suspect(struct target *t)
{
	pthread_mutex_lock(&pool_lock);
	t->suspect = true;
	pthread_mutex_unlock(&pool_lock);
	monitor_check_now(t);
}

void pool_add_instance(const char *host, int port, const char *instance_id)
{
	struct list_node *pos;
	struct target *t;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &targets) {
		t = list_entry(pos, struct target, node);
		if (t->port == port && strcmp(t->host, host) == 0) {
			pthread_mutex_unlock(&pool_lock);
			return;
		}
	}
	t = target_new_locked(host, port, false);
	snprintf(t->instance_id, sizeof(t->instance_id), "%s", instance_id);
	pthread_mutex_unlock(&pool_lock);
	log_info("instance %s discovered at %s:%d", instance_id, host, port);
}

void pool_for_each_pool(void (*fn)(struct pool *p, void *arg), void *arg)
{
	struct list_node *pos;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &pools)
		fn(list_entry(pos, struct pool, node), arg);
	pthread_mutex_unlock(&pool_lock);
}

void pool_for_each_target(void (*fn)(struct target *t, void *arg), void *arg)
{
	struct list_node *pos;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &targets)
		fn(list_entry(pos, struct target, node), arg);
	pthread_mutex_unlock(&pool_lock);
}

struct pool *pool_get(const char *user, const char *database, enum pool_endpoint endpoint,
		      const char *password)
{
	struct list_node *pos;
	struct pool *p;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &pools) {
		p = list_entry(pos, struct pool, node);
		if (p->endpoint == endpoint && strcmp(p->user, user) == 0 && strcmp(p->database, database) == 0) {
			if (password)
				set_string(&p->password, password);
			p->n_clients++;
			pthread_mutex_unlock(&pool_lock);
			return p;
		}
	}
	p = xcalloc(1, sizeof(*p));
	p->user = xstrdup(user);
	p->database = xstrdup(database);
	p->endpoint = endpoint;
	p->password = password ? xstrdup(password) : NULL;
	list_init(&p->idle);
	list_init(&p->waiters);
	strmap_init(&p->known_statements);
	p->n_clients = 1;
	list_append(&pools, &p->node);
	pthread_mutex_unlock(&pool_lock);
	log_debug("pool %s@%s (%s endpoint) created", user, database, endpoint == ENDPOINT_WRITER ? "writer" : "reader");
	return p;
}

void pool_put(struct pool *pool)
{
	pthread_mutex_lock(&pool_lock);
	pool->n_clients--;
	pthread_mutex_unlock(&pool_lock);
}

static void pool_free(struct pool *p)
{
	free(p->user);
	free(p->database);
	if (p->password) {
		memset(p->password, 0, strlen(p->password));
		free(p->password);
	}
	strmap_clear(&p->known_statements, NULL);
	free(p);
}

/*
 * Nothing refers to p: no client holds it and no server belongs to it (a
 * server's pool pointer is cleared under the lock, with its slot).
 */
static bool pool_unused_locked(const struct pool *p)
{
	return p->n_clients == 0 && p->n_connections == 0 && p->n_waiting == 0 && p->n_connecting == 0 &&
	       p->n_migrating == 0 && p->n_idle == 0 && p->n_active == 0;
}

/* ------------------------------------------------------------ routing rules */

/*
 * How many connections the target may have now. While the server's own
 * max_connections is unknown, one connection is allowed so that it can be
 * asked.
 */
static int target_cap_locked(const struct target *t)
{
	if (!t->cap_known)
		return 1;
	return t->max_connections > 0 ? t->max_connections : 1;
}

static bool reader_usable_locked(const struct target *t)
{
	const struct config *cfg = config_current();

	return t->role == ROLE_READER && t->healthy && !t->suspect &&
	       (cfg->max_replica_lag_ms <= 0 || t->lag_ms <= cfg->max_replica_lag_ms);
}

static bool writer_usable_locked(void)
{
	return writer != NULL && writer->healthy && !writer->suspect && writer->role == ROLE_WRITER;
}

void pool_target_status_locked(const struct target *t, char *out, size_t len)
{
	const struct config *cfg = config_current();

	if (!t->checked)
		snprintf(out, len, "waiting for its first health check");
	else if (!t->healthy)
		snprintf(out, len, "health check failed: %s", t->check_failure);
	else if (t->suspect)
		snprintf(out, len, "a connection to it was lost; waiting for the next health check");
	else if (paused || t->paused)
		snprintf(out, len, "paused");
	else if (t->role == ROLE_WRITER && t != writer)
		snprintf(out, len, "reports itself writer, but %s is the writer in use",
			 writer ? writer->instance_id : "none");
	else if (t->role == ROLE_READER && cfg->max_replica_lag_ms > 0 && t->lag_ms > cfg->max_replica_lag_ms)
		snprintf(out, len, "replication lag %d ms is over max_replica_lag (%d ms): no reads", t->lag_ms,
			 cfg->max_replica_lag_ms);
	else
		snprintf(out, len, "serving");
}

/*
 * The instance a new connection of pool should go to, or NULL to wait.
 * *error is set when waiting is pointless: the cluster has no reader at all.
 */
static struct target *pool_pick_target_locked(struct pool *p, const char **error)
{
	const struct config *cfg = config_current();
	struct target *best = NULL;
	bool any_reader = false, all_checked = true;
	struct list_node *pos;

	*error = NULL;
	if (p->endpoint == ENDPOINT_WRITER)
		return writer_usable_locked() ? writer : NULL;
	list_for_each(pos, &targets) {
		struct target *t = list_entry(pos, struct target, node);

		all_checked = all_checked && t->checked;
		if (t->role == ROLE_READER)
			any_reader = true;
		if (!reader_usable_locked(t))
			continue;
		/* Spread by fewest borrowed connections. */
		if (best == NULL || t->n_connections - t->n_idle < best->n_connections - best->n_idle)
			best = t;
	}
	if (best)
		return best;
	if (cfg->reader_fallback_to_writer && writer_usable_locked())
		return writer;
	if (!any_reader && all_checked)
		*error = "no reader instance in the cluster";
	return NULL;
}

/* May s serve its pool now? */
static bool server_usable_locked(const struct server *s, const struct pool *p)
{
	const struct config *cfg = config_current();
	const struct target *t = s->target;

	if (s->generation != t->generation)
		return false;
	if (p->endpoint == ENDPOINT_WRITER)
		return t == writer && writer_usable_locked();
	if (reader_usable_locked(t))
		return true;
	/* The writer serves reads only while no reader can. */
	if (cfg->reader_fallback_to_writer && t == writer && writer_usable_locked()) {
		struct list_node *pos;

		list_for_each(pos, &targets)
			if (reader_usable_locked(list_entry(pos, struct target, node)))
				return false;
		return true;
	}
	return false;
}

/* Reserve a connection of pool to t. */
static void reserve_connect_locked(struct connect_batch *b, struct pool *p, struct target *t)
{
	t->n_connections++;
	t->n_connecting++;
	p->n_connections++;
	p->n_connecting++;
	b->req[b->n].pool = p;
	b->req[b->n].target = t;
	b->n++;
}

/*
 * Start connections for pools whose waiters outnumber the connections
 * already opening for them, where the chosen instance has room.
 */
static void pool_kick_locked(struct connect_batch *b)
{
	struct list_node *pos;

	if (paused)
		return;
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);
		const char *error;

		/* Connections opening or moving to the pool's waiters will serve its first ones. */
		while (p->n_waiting > p->n_connecting + p->n_migrating && b->n < POOL_MAX_CONNECTS) {
			struct target *t = pool_pick_target_locked(p, &error);

			if (t == NULL || t->paused || t->n_connections >= target_cap_locked(t))
				break;
			reserve_connect_locked(b, p, t);
		}
	}
}

/* Start a connection from any thread: directly on a worker, else through one's inbox. */
static void run_connects(struct connect_batch *b)
{
	struct worker *w = worker_self();

	for (int i = 0; i < b->n; i++) {
		if (w)
			server_connect(w, b->req[i].pool, b->req[i].target);
		else
			workers_post_connect(b->req[i].pool, b->req[i].target);
	}
	b->n = 0;
}

/* Unlink an idle server from its pool and give back its slot; the caller closes it. */
static void pool_unlink_idle_locked(struct server *s)
{
	struct pool *p = s->pool;

	list_del(&s->pool_node);
	p->n_idle--;
	p->n_connections--;
	s->target->n_idle--;
	s->target->n_connections--;
	server_set_pool(s, NULL);
}

static void close_all(struct list_node *doomed, const char *reason)
{
	struct list_node *node;

	while ((node = list_pop_front(doomed)) != NULL) {
		struct server *s = list_entry(node, struct server, pool_node);

		server_close(s, reason);
	}
}

/*
 * Find an idle server of another pool on the same instance that can be
 * closed to make room. Returns it unlinked, its slot handed over to for_pool.
 */
static struct server *pool_steal_idle_locked(struct pool *for_pool, struct target *t)
{
	struct list_node *pos;

	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);
		struct list_node *spos;

		if (p == for_pool)
			continue;
		/* The least recently used one: idle lists keep the most recent first. */
		for (spos = p->idle.prev; spos != &p->idle; spos = spos->prev) {
			struct server *s = list_entry(spos, struct server, pool_node);

			/* Only this thread may close it: parked here, or on no loop at all. */
			if (s->target != t || (s->worker != NULL && s->worker != worker_self()))
				continue;
			list_del(&s->pool_node);
			p->n_idle--;
			p->n_connections--;
			t->n_idle--;
			for_pool->n_connections++;
			server_set_pool(s, NULL);
			return s;
		}
	}
	return NULL;
}

/* ------------------------------------------------------------- borrowing */

static void pool_add_waiter_locked(struct pool *pool, struct client *client)
{
	client->wait_since_usec = pgmux_now_usec();
	list_append(&pool->waiters, &client->wait_node);
	pool->n_waiting++;
}

/*
 * Which waiter gets a backend that a client on worker w gave back. The
 * oldest one, unless it is on another worker and has waited less than
 * POOL_LOCAL_WAITER_MAX_SKIP_USEC: then the oldest of the next
 * POOL_LOCAL_WAITER_SCAN waiters that is on w, if there is one. Handing the
 * backend across costs a detach, an attach, a peek and a wake-up of the
 * other worker. Under pgbench -S with 32 clients and 16 backends, strict
 * first come, first served moved a backend between two workers in about 37 %
 * of transactions, this choice in 27-32 % (bench/README.md). No waiter is
 * passed over for longer than the skip limit.
 */
#define POOL_LOCAL_WAITER_SCAN 8
#define POOL_LOCAL_WAITER_MAX_SKIP_USEC 1000

/*
 * May waiter c be given s? Not a backend another client used, if c waits for
 * a new connection (fresh_backend, see pool_borrow()) and one is opening:
 * that one is its.
 */
static bool pool_waiter_takes_locked(const struct pool *pool, const struct client *c, const struct server *s)
{
	return !(c->fresh_backend && s->served && pool->n_connecting > 0);
}

static struct client *pool_pick_waiter_locked(struct pool *pool, const struct server *s, const struct worker *w,
					      uint64_t now)
{
	struct client *oldest = NULL;
	struct list_node *pos;
	uint64_t waited;

	list_for_each(pos, &pool->waiters) {
		struct client *c = list_entry(pos, struct client, wait_node);

		if (pool_waiter_takes_locked(pool, c, s)) {
			oldest = c;
			break;
		}
	}
	if (oldest == NULL)
		return NULL;
	pos = oldest->wait_node.next;
	/* now was read before the lock was taken: the oldest may have joined since. */
	waited = now > oldest->wait_since_usec ? now - oldest->wait_since_usec : 0;
	if (w == NULL || oldest->worker == w || waited >= POOL_LOCAL_WAITER_MAX_SKIP_USEC)
		return oldest;
	for (int i = 0; i < POOL_LOCAL_WAITER_SCAN && pos != &pool->waiters; i++, pos = pos->next) {
		struct client *c = list_entry(pos, struct client, wait_node);

		if (c->worker == w && pool_waiter_takes_locked(pool, c, s))
			return c;
	}
	return oldest;
}

enum pool_borrow_result pool_borrow(struct pool *pool, struct client *client, struct server **server,
				    const char **error)
{
	struct worker *w = client->worker;
	struct server *s, *victim = NULL;
	struct list_node doomed, *pos, *tmp;
	struct connect_batch batch;
	struct target *t;
	struct server *migrate;
	enum pool_borrow_result result = POOL_QUEUED;

	*server = NULL;
	*error = NULL;
	batch.n = 0;
	list_init(&doomed);
	for (;;) {
		struct server *detached = NULL, *remote = NULL;
		bool fresh_only;

		s = NULL;
		migrate = NULL;
		pthread_mutex_lock(&pool_lock);
		/*
		 * A client whose backend died under it gets a new connection, if
		 * the cap allows one, rather than the idle backend another client
		 * just gave back (see client_server_lost()).
		 */
		fresh_only = client->fresh_backend && !paused &&
			     (t = pool_pick_target_locked(pool, error)) != NULL && !t->paused &&
			     t->n_connections < target_cap_locked(t);
		*error = NULL;
		list_for_each_safe(pos, tmp, &pool->idle) {
			struct server *cand = list_entry(pos, struct server, pool_node);

			if (paused || cand->target->paused || fresh_only)
				break;
			if (!server_usable_locked(cand, pool)) {
				/*
				 * Its instance failed or changed role: it must not serve
				 * anyone. Only its own worker may close one still
				 * attached to a loop; that worker's sweep does.
				 */
				if (cand->worker == NULL || cand->worker == w) {
					pool_unlink_idle_locked(cand);
					list_append(&doomed, &cand->pool_node);
				}
				continue;
			}
			/* Best: parked on this worker's loop already, so no system call at all. */
			if (cand->worker == w) {
				s = cand;
				break;
			}
			if (cand->worker == NULL && detached == NULL)
				detached = cand;
			else if (cand->worker != NULL && remote == NULL)
				remote = cand;
		}
		if (s == NULL)
			s = detached;
		if (s == NULL && remote != NULL) {
			/*
			 * Only another worker's loop holds one: that worker detaches it
			 * and hands it to the oldest waiter, which this client becomes.
			 */
			migrate = remote;
			list_del(&migrate->pool_node);
			pool->n_idle--;
			pool->n_active++;
			pool->n_migrating++;
			migrate->counted_migrating = true;
			migrate->target->n_idle--;
			pool_add_waiter_locked(pool, client);
		} else if (s != NULL) {
			list_del(&s->pool_node);
			pool->n_idle--;
			pool->n_active++;
			s->target->n_idle--;
		}
		if (s == NULL && migrate == NULL) {
			t = pool_pick_target_locked(pool, error);
			if (*error) {
				result = POOL_FAILED;
			} else {
				/* Queue first: a connection that completes goes to the oldest waiter. */
				pool_add_waiter_locked(pool, client);
				if (paused || (t && t->paused)) {
					/* PAUSE: wait like a client of a full pool. */
				} else if (pool->n_connecting + pool->n_migrating >= pool->n_waiting && !fresh_only) {
					/*
					 * Connections already opening for the pool, and idle
					 * ones on their way from another worker, serve its
					 * waiters first come, first served, this one among
					 * them: one more would only add to the idle ones once
					 * a busy backend comes back before they are ready.
					 */
				} else if (t && t->n_connections < target_cap_locked(t)) {
					reserve_connect_locked(&batch, pool, t);
				} else if (t && t->cap_known && (victim = pool_steal_idle_locked(pool, t)) != NULL) {
					t->n_connecting++;
					pool->n_connecting++;
					batch.req[batch.n].pool = pool;
					batch.req[batch.n].target = t;
					batch.n++;
				}
			}
		}
		pthread_mutex_unlock(&pool_lock);
		close_all(&doomed, "its instance is no longer usable for this pool");

		if (migrate) {
			worker_post_migrate(migrate->worker, migrate->id);
			break;
		}
		if (s == NULL)
			break;
		/* An idle server may have died while parked; try the next one. */
		if (server_attach(s, w)) {
			*server = s;
			return POOL_BORROWED;
		}
	}
	if (victim)
		server_close(victim, "closed to make room for another pool");
	run_connects(&batch);
	return result;
}

/* ------------------------------------------------------------ statements */

void pool_statement_accepted(struct pool *pool, const char *server_name)
{
	size_t cap = (size_t)config_current()->max_prepared_statements * POOL_KNOWN_STATEMENTS_PER_BACKEND;
	struct strmap_entry *e;

	pthread_mutex_lock(&pool_lock);
	if ((e = strmap_find(&pool->known_statements, server_name)) != NULL) {
		strmap_touch(&pool->known_statements, e);
	} else {
		while (pool->known_statements.count > 0 && pool->known_statements.count >= cap)
			strmap_delete(&pool->known_statements, strmap_oldest(&pool->known_statements));
		strmap_insert(&pool->known_statements, server_name, NULL);
	}
	pthread_mutex_unlock(&pool_lock);
}

void pool_statement_refused(struct pool *pool, const char *server_name)
{
	struct strmap_entry *e;

	pthread_mutex_lock(&pool_lock);
	if ((e = strmap_find(&pool->known_statements, server_name)) != NULL)
		strmap_delete(&pool->known_statements, e);
	pthread_mutex_unlock(&pool_lock);
}

bool pool_statement_known(struct pool *pool, const char *server_name)
{
	struct strmap_entry *e;

	pthread_mutex_lock(&pool_lock);
	e = strmap_find(&pool->known_statements, server_name);
	if (e)
		strmap_touch(&pool->known_statements, e);
	pthread_mutex_unlock(&pool_lock);
	return e != NULL;
}

bool pool_backend_coming(struct pool *pool)
{
	bool coming;

	pthread_mutex_lock(&pool_lock);
	/* The waiters are served oldest first, this one among them. */
	coming = pool->n_connecting + pool->n_migrating >= pool->n_waiting;
	pthread_mutex_unlock(&pool_lock);
	return coming;
}

void pool_cancel_wait(struct client *client)
{
	struct server *assigned = NULL;
	struct pool *pool = client->pool;

	if (pool == NULL)
		return;
	pthread_mutex_lock(&pool_lock);
	if (list_linked(&client->wait_node)) {
		list_del(&client->wait_node);
		/* It is either still waiting or on its worker's ready list. */
		if (client->assigned_server == NULL && client->assigned_error == NULL)
			pool->n_waiting--;
	}
	assigned = client->assigned_server;
	client->assigned_server = NULL;
	pthread_mutex_unlock(&pool_lock);
	free(client->assigned_error);
	client->assigned_error = NULL;
	if (assigned) {
		/* Never attached to this client: it is clean, pass it on. */
		pool_release(assigned);
	}
}

void pool_wait_detail(struct pool *pool, char *out, size_t len)
{
	struct list_node *pos;
	const char *error;

	out[0] = '\0';
	pthread_mutex_lock(&pool_lock);
	if (pool_pick_target_locked(pool, &error) == NULL) {
		const char *role = pool->endpoint == ENDPOINT_WRITER ? "writer" : "reader";
		const struct target *failed = NULL;

		/* Retired targets are on retired_targets, never on this list. */
		list_for_each(pos, &targets) {
			const struct target *t = list_entry(pos, struct target, node);

			if (t->check_failure[0]) {
				failed = t;
				break;
			}
		}
		if (failed)
			snprintf(out, len, "No %s instance is available: %s (%s:%d) failed its health check: %s", role,
				 failed->instance_id, failed->host, failed->port, failed->check_failure);
		else
			snprintf(out, len, "No %s instance is available.", role);
	} else if (pool->last_failure[0]) {
		snprintf(out, len, "%s", pool->last_failure);
	}
	pthread_mutex_unlock(&pool_lock);
}

void pool_release(struct server *s)
{
	const struct config *cfg = config_current();
	struct pool *pool = s->pool;
	struct client *waiter = NULL;
	struct worker *wake = NULL;
	uint64_t now = pgmux_now_usec();
	bool usable;

	if (cfg->server_lifetime_ms > 0 && now - s->created_usec >= (uint64_t)cfg->server_lifetime_ms * 1000) {
		server_close(s, "server_lifetime reached");
		return;
	}
	if (s->cancel_sent) {
		server_close(s, "a cancel request was sent to it");
		return;
	}
	s->client = NULL;
	__atomic_store_n(&s->client_id, 0, __ATOMIC_RELAXED);
	s->last_used_usec = now;
	pthread_mutex_lock(&pool_lock);
	if (s->counted_migrating) {
		s->counted_migrating = false;
		pool->n_migrating--;
	}
	if (s->pinned_counted) {
		s->pinned_counted = false;
		pool->n_pinned--;
	}
	usable = server_usable_locked(s, pool);
	if (usable && !paused && !s->target->paused && !list_empty(&pool->waiters))
		waiter = pool_pick_waiter_locked(pool, s, s->worker, now);
	if (waiter) {
		list_del(&waiter->wait_node);
		pool->n_waiting--;
		/* A server moves to another worker's loop only detached; on this one it stays. */
		if (s->worker && s->worker != waiter->worker)
			server_detach(s);
		waiter->assigned_server = s;
		server_set_state(s, SERVER_IDLE);
		list_append(&waiter->worker->ready, &waiter->wait_node);
		/* Once the lock is dropped the waiter may close; its worker lives on. */
		wake = waiter->worker;
	} else if (usable) {
		/*
		 * Parked, it stays on this worker's loop with its read event on: the
		 * next borrow here costs no system call, and a server that closes
		 * the connection is noticed at once.
		 */
		server_set_state(s, SERVER_IDLE);
		if (s->worker)
			io_want_read(&s->io, true);
		list_prepend(&pool->idle, &s->pool_node);
		pool->n_idle++;
		pool->n_active--;
		s->target->n_idle++;
	}
	pthread_mutex_unlock(&pool_lock);
	if (!usable)
		server_close(s, "its instance is no longer usable for this pool");
	else if (wake)
		worker_wake(wake);
}

/* Give back the slot s held; the caller holds the pool lock. */
static void pool_forget_locked(struct server *s)
{
	struct pool *pool = s->pool;
	struct target *t = s->target;

	if (s->counted_migrating) {
		s->counted_migrating = false;
		pool->n_migrating--;
	}
	if (s->counted_connecting) {
		t->n_connecting--;
		pool->n_connecting--;
		s->counted_connecting = false;
	} else if (s->state == SERVER_IDLE && list_linked(&s->pool_node)) {
		list_del(&s->pool_node);
		pool->n_idle--;
		t->n_idle--;
	} else {
		pool->n_active--;
		if (s->pinned_counted)
			pool->n_pinned--;
	}
	pool->n_connections--;
	t->n_connections--;
}

void pool_forget(struct server *s)
{
	struct connect_batch batch;

	if (s->pool == NULL)
		return;
	batch.n = 0;
	pthread_mutex_lock(&pool_lock);
	pool_forget_locked(s);
	pool_kick_locked(&batch);
	/* Under the lock: once its count is 0, no server refers to a pool (pool_unused_locked()). */
	server_set_pool(s, NULL);
	pthread_mutex_unlock(&pool_lock);
	run_connects(&batch);
}

void pool_connection_ready(struct server *s)
{
	pthread_mutex_lock(&pool_lock);
	if (s->counted_connecting) {
		s->target->n_connecting--;
		s->pool->n_connecting--;
		s->counted_connecting = false;
		s->pool->n_active++;
	}
	s->pool->last_failure[0] = '\0';
	pthread_mutex_unlock(&pool_lock);
	pool_release(s);
}

/* Hand an error to every client waiting in pool; the caller holds the lock. */
static void pool_fail_waiters_locked(struct pool *pool, const char *sqlstate, const char *message)
{
	struct list_node *node;

	while ((node = list_pop_front(&pool->waiters)) != NULL) {
		struct client *c = list_entry(node, struct client, wait_node);

		pool->n_waiting--;
		c->assigned_error = xstrdup(message);
		memcpy(c->assigned_sqlstate, sqlstate, 5);
		c->assigned_sqlstate[5] = '\0';
		list_append(&c->worker->ready, &c->wait_node);
		worker_wake(c->worker);
	}
}

void pool_connect_failed(struct server *s, const char *sqlstate, const char *message, bool fail_waiters)
{
	struct pool *pool = s->pool;
	struct connect_batch batch;

	if (pool == NULL)
		return;
	batch.n = 0;
	pthread_mutex_lock(&pool_lock);
	pool_forget_locked(s);
	/* For the DETAIL of a borrow timeout (pool_wait_detail). */
	snprintf(pool->last_failure, sizeof(pool->last_failure), "%s", message);
	/*
	 * A healthy instance that refuses the login (wrong password, no such
	 * database) refuses every waiter the same way: they hear why rather than
	 * each triggering another attempt. An instance that is down is the
	 * monitor's business; the waiters wait for it or for a new writer.
	 */
	if (fail_waiters)
		pool_fail_waiters_locked(pool, sqlstate, message);
	pool_kick_locked(&batch);
	server_set_pool(s, NULL);
	pthread_mutex_unlock(&pool_lock);
	run_connects(&batch);
}

/*
 * t's cap under cfg: max_connections, or max_connections_percent of what the
 * server allows. Returns false when that needs the server's limit and it is
 * not known yet (the next new connection asks; until then one is allowed).
 */
static bool target_set_cap_locked(struct target *t, const struct config *cfg)
{
	int cap = cfg->max_connections;

	if (cap <= 0) {
		if (t->server_max <= 0) {
			t->cap_known = false;
			return false;
		}
		cap = (int)((long)t->server_max * cfg->max_connections_percent / 100);
	}
	t->max_connections = cap > 0 ? cap : 1;
	t->cap_known = true;
	return true;
}

void pool_learn_cap(struct target *t, int server_max)
{
	const struct config *cfg = config_current();
	struct connect_batch batch;

	batch.n = 0;
	pthread_mutex_lock(&pool_lock);
	/* Kept so that a reload can apply another max_connections_percent (pool_apply_caps). */
	__atomic_store_n(&t->server_max, server_max > 0 ? server_max : 1, __ATOMIC_RELAXED);
	if (!t->cap_known) {
		target_set_cap_locked(t, cfg);
		log_info("instance %s: server allows %d connections, pgmux uses at most %d", t->instance_id,
			 server_max, t->max_connections);
		/* Connections that waited for the cap to be known can start now. */
		pool_kick_locked(&batch);
	}
	pthread_mutex_unlock(&pool_lock);
	run_connects(&batch);
}

void pool_apply_caps(void)
{
	const struct config *cfg = config_current();
	struct connect_batch batch;
	struct list_node *pos;

	batch.n = 0;
	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &targets) {
		struct target *t = list_entry(pos, struct target, node);
		int before = t->cap_known ? t->max_connections : 0;

		if (target_set_cap_locked(t, cfg) && t->max_connections != before)
			log_info("instance %s: pgmux now uses at most %d connections", t->instance_id,
				 t->max_connections);
	}
	/* A larger cap lets waiting clients have new connections now. */
	pool_kick_locked(&batch);
	pthread_mutex_unlock(&pool_lock);
	run_connects(&batch);
}

/* ---------------------------------------------------------------- failover */

/* Unlink every idle server of t (it is down or changed role); the caller closes them. */
static void pool_drop_idle_of_locked(struct target *t, struct list_node *doomed)
{
	struct list_node *pos, *spos, *stmp;

	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);

		list_for_each_safe(spos, stmp, &p->idle) {
			struct server *s = list_entry(spos, struct server, pool_node);

			/* One parked on a worker's loop is closed by that worker's sweep. */
			if (s->target == t && s->worker == NULL) {
				pool_unlink_idle_locked(s);
				list_append(doomed, &s->pool_node);
			}
		}
	}
}

void pool_instance_report(struct target *t, bool healthy, enum instance_role role, int lag_ms,
			  const char *instance_id, const char *why)
{
	uint64_t now = pgmux_now_usec();
	struct connect_batch batch;
	struct list_node doomed;
	bool was_healthy, changed_role;

	batch.n = 0;
	list_init(&doomed);
	pthread_mutex_lock(&pool_lock);
	if (t->retired) {
		/*
		 * A check that was under way when a cutover retired t: whatever it
		 * found, t must not become the writer (or a reader) again.
		 */
		pthread_mutex_unlock(&pool_lock);
		return;
	}
	was_healthy = t->healthy;
	t->checked = true;
	t->suspect = false;
	if (instance_id && instance_id[0])
		snprintf(t->instance_id, sizeof(t->instance_id), "%s", instance_id);
	snprintf(t->check_failure, sizeof(t->check_failure), "%s", healthy ? "" : why ? why : "unknown reason");
	if (!healthy) {
		t->checks_failed++;
		t->healthy = false;
		if (was_healthy || t->unhealthy_since_usec == 0) {
			t->unhealthy_since_usec = now;
			log_warning("instance %s (%s:%d, %s) failed its health check: %s", t->instance_id, t->host, t->port,
				    role_names[t->role], why ? why : "unknown reason");
			pool_drop_idle_of_locked(t, &doomed);
		}
		if (t == writer) {
			struct list_node *pos;

			writer = NULL;
			writer_lost_usec = now;
			log_warning("writer %s lost; new transactions wait for a writer", t->instance_id);
			/* A promoted instance may have reported already: no need to wait for its next check. */
			list_for_each(pos, &targets) {
				struct target *other = list_entry(pos, struct target, node);

				if (other != t && other->healthy && other->role == ROLE_WRITER) {
					writer = other;
					writer_lost_usec = 0;
					log_info("failover: writer is now %s (%s:%d), 0 ms after the previous writer was lost",
						 other->instance_id, other->host, other->port);
					pool_kick_locked(&batch);
					break;
				}
			}
		}
		pthread_mutex_unlock(&pool_lock);
		close_all(&doomed, "its instance failed a health check");
		/* Servers parked on worker loops are closed by their own worker. */
		workers_broadcast(WORKER_MSG_SWEEP);
		run_connects(&batch);
		return;
	}
	t->checks_ok++;
	t->healthy = true;
	t->lag_ms = lag_ms;
	changed_role = t->role != role;
	if (!was_healthy && t->unhealthy_since_usec)
		log_info("instance %s (%s:%d) is healthy again after %llu ms", t->instance_id, t->host, t->port,
			 (unsigned long long)((now - t->unhealthy_since_usec) / 1000));
	t->unhealthy_since_usec = 0;
	if (changed_role) {
		if (t->role != ROLE_UNKNOWN)
			log_info("instance %s (%s:%d) changed role: %s -> %s", t->instance_id, t->host, t->port,
				 role_names[t->role], role_names[role]);
		t->role = role;
		t->generation++;
		/* Its connections were made for the old role: never reuse them. */
		pool_drop_idle_of_locked(t, &doomed);
	}
	if (role == ROLE_WRITER && t != writer && !writer_usable_locked()) {
		writer = t;
		if (writer_lost_usec)
			log_info("failover: writer is now %s (%s:%d), %llu ms after the previous writer was lost", t->instance_id,
				 t->host, t->port, (unsigned long long)((now - writer_lost_usec) / 1000));
		else
			log_info("writer is %s (%s:%d)", t->instance_id, t->host, t->port);
		writer_lost_usec = 0;
	} else if (role == ROLE_WRITER && t != writer) {
		log_warning("instance %s (%s:%d) also reports being a writer; pgmux stays with %s", t->instance_id, t->host,
			    t->port, writer->instance_id);
	} else if (role != ROLE_WRITER && t == writer) {
		/* A demoted writer: writes must not go to an instance in recovery. */
		writer = NULL;
		writer_lost_usec = now;
		log_warning("writer %s is now a %s; new transactions wait for a writer", t->instance_id, role_names[role]);
	}
	/* Clients that waited (for a writer, or while t was suspect) get idle connections or new ones. */
	pool_serve_waiters_locked(&batch);
	pthread_mutex_unlock(&pool_lock);
	close_all(&doomed, "its instance changed role");
	if (changed_role)
		workers_broadcast(WORKER_MSG_SWEEP);
	run_connects(&batch);
}

/* ------------------------------------------------------------- maintenance */

/*
 * Maintenance of the idle backends parked on worker w's loop (and, on the
 * first worker, of those parked on none): close those past
 * server_idle_timeout or server_lifetime, beyond the idle cap
 * (max_idle_connections_percent of the instance's cap, once idle for a
 * second), or no longer usable (failover, cutover), sparing min_pool_size
 * per pool; the first worker also opens connections up to min_pool_size.
 * Each worker runs it once a second, and at once when asked to sweep.
 */
void pool_janitor(uint64_t now, struct worker *w)
{
	const struct config *cfg = config_current();
	bool first = workers[0] == w;
	struct list_node doomed, unused, *pos, *tmp;
	struct connect_batch batch;

	batch.n = 0;
	list_init(&doomed);
	list_init(&unused);
	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);
		struct list_node *spos, *stmp;

		/* Oldest idle first: the idle list keeps the most recently used at the front. */
		for (spos = p->idle.prev, stmp = spos->prev; spos != &p->idle; spos = stmp, stmp = spos->prev) {
			struct server *s = list_entry(spos, struct server, pool_node);
			struct target *t = s->target;
			uint64_t idle_for = now - s->last_used_usec;
			int max_idle = t->cap_known ? t->max_connections * cfg->max_idle_connections_percent / 100 : t->n_idle;
			bool expired = (cfg->server_idle_timeout_ms > 0 &&
					idle_for >= (uint64_t)cfg->server_idle_timeout_ms * 1000) ||
				       (cfg->server_lifetime_ms > 0 &&
					now - s->created_usec >= (uint64_t)cfg->server_lifetime_ms * 1000);
			bool surplus = t->n_idle > max_idle && idle_for >= 1000000;
			bool unusable = !server_usable_locked(s, p);

			if (s->worker != w && !(first && s->worker == NULL))
				continue;
			if (!unusable && (p->n_connections <= cfg->min_pool_size || (!expired && !surplus)))
				continue;
			pool_unlink_idle_locked(s);
			list_append(&doomed, &s->pool_node);
		}
	}
	/*
	 * Free the pools nothing refers to (their last client left, their last
	 * backend closed, or never opened: a database that does not exist).
	 * One with min_pool_size backends kept open is never unused.
	 */
	list_for_each_safe(pos, tmp, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);

		if (first && pool_unused_locked(p)) {
			list_del(&p->node);
			list_append(&unused, &p->node);
		}
	}
	/* Keep min_pool_size open for each pool that has been used. */
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);
		const char *error;

		while (first && p->n_connections < cfg->min_pool_size && batch.n < POOL_MAX_CONNECTS) {
			struct target *t = pool_pick_target_locked(p, &error);

			if (t == NULL || !t->cap_known || t->n_connections >= t->max_connections)
				break;
			reserve_connect_locked(&batch, p, t);
		}
	}
	pthread_mutex_unlock(&pool_lock);
	if (!list_empty(&unused)) {
		/* SHOW SERVERS reads a server's pool under the registry lock: let a row in progress end. */
		server_registry_barrier();
		while ((pos = list_pop_front(&unused)) != NULL) {
			struct pool *p = list_entry(pos, struct pool, node);

			log_debug("pool %s@%s freed: no client and no connection left", p->user, p->database);
			pool_free(p);
		}
	}
	close_all(&doomed, "idle too long, too old, beyond the idle cap, or its instance is no longer usable");
	run_connects(&batch);
}

/* ------------------------------------------------------- pause and cutover */

/* Give idle servers to waiting clients and start connections for the rest (after RESUME). */
static void pool_serve_waiters_locked(struct connect_batch *b)
{
	struct list_node *pos;

	if (paused)
		return;
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);

		struct list_node *spos, *stmp;

		list_for_each_safe(spos, stmp, &p->idle) {
			struct server *s = list_entry(spos, struct server, pool_node);
			struct client *c;

			if (p->n_waiting <= p->n_migrating)
				break;
			if (s->target->paused || !server_usable_locked(s, p))
				continue;
			c = list_entry(p->waiters.next, struct client, wait_node);
			list_del(&s->pool_node);
			p->n_idle--;
			p->n_active++;
			s->target->n_idle--;
			if (s->worker != NULL && s->worker != c->worker) {
				/* Attached to another loop: its worker detaches it and hands it to the oldest waiter. */
				s->counted_migrating = true;
				p->n_migrating++;
				worker_post_migrate(s->worker, s->id);
				continue;
			}
			list_del(&c->wait_node);
			p->n_waiting--;
			c->assigned_server = s;
			list_append(&c->worker->ready, &c->wait_node);
			worker_wake(c->worker);
		}
	}
	pool_kick_locked(b);
}

static struct target *find_target_locked(const char *instance)
{
	struct list_node *pos;
	char hostport[300];

	list_for_each(pos, &targets) {
		struct target *t = list_entry(pos, struct target, node);

		snprintf(hostport, sizeof(hostport), "%s:%d", t->host, t->port);
		if (strcmp(instance, hostport) == 0 || strcmp(instance, t->instance_id) == 0 || strcmp(instance, t->host) == 0)
			return t;
	}
	return NULL;
}

static int pool_set_paused(const char *instance, bool on)
{
	struct connect_batch batch;
	struct target *t = NULL;

	batch.n = 0;
	pthread_mutex_lock(&pool_lock);
	if (instance && instance[0]) {
		t = find_target_locked(instance);
		if (t == NULL) {
			pthread_mutex_unlock(&pool_lock);
			return -1;
		}
		t->paused = on;
	} else {
		paused = on;
		if (!on) {
			struct list_node *pos;

			/* RESUME without a name resumes everything. */
			list_for_each(pos, &targets)
				list_entry(pos, struct target, node)->paused = false;
		}
	}
	if (!on)
		pool_serve_waiters_locked(&batch);
	pthread_mutex_unlock(&pool_lock);
	run_connects(&batch);
	log_info("%s %s", on ? "paused" : "resumed", t ? t->instance_id : "all instances");
	return 0;
}

int pool_pause(const char *instance)
{
	return pool_set_paused(instance, true);
}

int pool_resume(const char *instance)
{
	return pool_set_paused(instance, false);
}

bool pool_is_paused(void)
{
	bool p;

	pthread_mutex_lock(&pool_lock);
	p = paused;
	pthread_mutex_unlock(&pool_lock);
	return p;
}

int pool_transactions_in_flight(void)
{
	struct list_node *pos;
	int n = 0;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);

		n += p->n_active - p->n_pinned;
	}
	pthread_mutex_unlock(&pool_lock);
	return n;
}

int pool_clients_waiting(void)
{
	struct list_node *pos;
	int n = 0;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &pools)
		n += list_entry(pos, struct pool, node)->n_waiting;
	pthread_mutex_unlock(&pool_lock);
	return n;
}

void pool_note_pinned(struct server *s)
{
	pthread_mutex_lock(&pool_lock);
	if (s->pool && !s->pinned_counted) {
		s->pinned_counted = true;
		s->pool->n_pinned++;
	}
	pthread_mutex_unlock(&pool_lock);
}

/* Retire t as a cutover does: no new transactions, idle connections unlinked into doomed. */
static void target_retire_locked(struct target *t, struct list_node *doomed)
{
	t->retired = true;
	t->healthy = false;
	t->generation++;
	pool_drop_idle_of_locked(t, doomed);
	list_del(&t->node);
	list_append(&retired_targets, &t->node);
}

/*
 * A reader that was deleted (or removed by Aurora Auto Scaling) leaves the
 * topology before its endpoint stops answering. Until this, pgmux kept
 * sending it reads while it still answered, and kept it for good afterwards,
 * so that a cluster scaled in to no reader made reader-port clients wait for
 * connection_borrow_timeout instead of failing at once. Only the writer's
 * view counts: it is the one that adds and removes instances. Transactions
 * still running on a retired instance finish there; session-pooled clients
 * pinned to it keep it until they end or it goes away. The target itself
 * stays allocated (workers may still refer to it), on the retired list; should
 * the instance come back, discovery adds it afresh. The monitor stops
 * watching it at its next round.
 */
void pool_retire_absent_instances(const char *const *instance_ids, int n)
{
	struct list_node doomed, *pos, *tmp;
	int n_retired = 0;

	list_init(&doomed);
	pthread_mutex_lock(&pool_lock);
	list_for_each_safe(pos, tmp, &targets) {
		struct target *t = list_entry(pos, struct target, node);
		bool named = false;

		for (int i = 0; i < n && !named; i++)
			named = strcmp(t->instance_id, instance_ids[i]) == 0;
		if (t->listed || named || t == writer)
			continue;
		log_info("instance %s (%s:%d) is no longer in the cluster's topology; it gets no new transactions",
			 t->instance_id, t->host, t->port);
		target_retire_locked(t, &doomed);
		n_retired++;
	}
	pthread_mutex_unlock(&pool_lock);
	if (n_retired == 0)
		return;
	close_all(&doomed, "its instance left the cluster");
	/* Servers parked on worker loops are closed by their own worker. */
	workers_broadcast(WORKER_MSG_SWEEP);
}

void pool_replace_targets(const struct target_host *hosts, int n_hosts)
{
	struct list_node doomed, *node, *tmp;

	list_init(&doomed);
	pthread_mutex_lock(&pool_lock);
	list_for_each_safe(node, tmp, &targets)
		target_retire_locked(list_entry(node, struct target, node), &doomed);
	writer = NULL;
	writer_lost_usec = 0;
	for (int i = 0; i < n_hosts; i++)
		target_new_locked(hosts[i].host, hosts[i].port, true);
	pthread_mutex_unlock(&pool_lock);
	close_all(&doomed, "cutover to new instances");
	workers_broadcast(WORKER_MSG_SWEEP);
}

bool pool_target_retired(const struct target *t)
{
	return __atomic_load_n(&t->retired, __ATOMIC_RELAXED);
}

void pool_refresh_passwords(void)
{
	struct list_node *pos;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);
		struct secret secret;

		if (secrets_find(p->user, &secret)) {
			set_string(&p->password, secret.password);
			secret_clear(&secret);
		}
	}
	pthread_mutex_unlock(&pool_lock);
}

void pool_take_ready(struct worker *w, struct list_node *out)
{
	pthread_mutex_lock(&pool_lock);
	if (!list_empty(&w->ready)) {
		out->next = w->ready.next;
		out->prev = w->ready.prev;
		out->next->prev = out;
		out->prev->next = out;
		list_init(&w->ready);
	}
	pthread_mutex_unlock(&pool_lock);
}

void pool_close_idle(void)
{
	struct list_node doomed, *pos, *spos, *stmp;

	list_init(&doomed);
	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);

		list_for_each_safe(spos, stmp, &p->idle) {
			struct server *s = list_entry(spos, struct server, pool_node);

			pool_unlink_idle_locked(s);
			list_append(&doomed, &s->pool_node);
		}
	}
	pthread_mutex_unlock(&pool_lock);
	close_all(&doomed, "pgmux is shutting down");
}

void pool_shutdown(void)
{
	struct list_node *node;

	pool_close_idle();
	while ((node = list_pop_front(&pools)) != NULL)
		pool_free(list_entry(node, struct pool, node));
	while ((node = list_pop_front(&targets)) != NULL || (node = list_pop_front(&retired_targets)) != NULL) {
		struct target *t = list_entry(node, struct target, node);

		free(t->host);
		free(t);
	}
	writer = NULL;
}
