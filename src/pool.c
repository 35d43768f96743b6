/*
 * pool.c: the backend pools and the rules for handing out their connections
 * (see pool.h): borrowing, waiting, release, the idle backends' maintenance.
 * The instances they go to are pool_cluster.c's. The decisions are made
 * under one lock and are short; the work they lead to (connecting, closing,
 * attaching a server to a loop, waking a worker) happens after the lock is
 * dropped.
 */
#include "pool.h"
#include "pool_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "pgmux.h"
#include "secrets.h"
#include "server.h"
#include "stats.h"
#include "util.h"
#include "worker.h"

/*
 * Adaptive: a thread that finds the lock taken spins a little before it
 * sleeps. Every section under it is a few list operations, so the holder is
 * almost always done within the spin; with a plain mutex the two workers of
 * pgbench -S -c 32 made 0.23 futex calls per transaction between them
 * (bench/README.md, issue 21).
 */
pthread_mutex_t pool_lock = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;

static struct list_node pools = LIST_HEAD_INIT(pools);
/* Set once before the workers start (pool_set_wait_ended()); read by them after. */
static void (*wait_ended)(struct pool_waiter *waiter);

static void set_string(char **dst, const char *src)
{
	if (*dst && src && strcmp(*dst, src) == 0)
		return;
	free(*dst);
	*dst = xstrdup(src);
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
	.instance_check = pool_request_health_check,
};

void pool_install_server_ops(void)
{
	server_set_pool_ops(&pool_server_ops);
}

void pool_for_each_pool(void (*fn)(struct pool *p, void *arg), void *arg)
{
	struct list_node *pos;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &pools)
		fn(list_entry(pos, struct pool, node), arg);
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
	p->stats = stats_pool_new();
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

void pool_hold(struct pool *pool)
{
	pthread_mutex_lock(&pool_lock);
	pool->n_clients++;
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
	stats_pool_free(p->stats);
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

void pool_kick_locked(struct connect_batch *b)
{
	struct list_node *pos;

	if (pool_paused_locked())
		return;
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);
		const char *error;

		/* Connections opening or moving to the pool's waiters will serve its first ones. */
		while (p->n_waiting > p->n_connecting + p->n_migrating && b->n < POOL_MAX_CONNECTS) {
			struct target *t = pool_pick_target_locked(p, &error);

			if (t == NULL || t->paused || t->n_connections >= pool_target_cap_locked(t))
				break;
			reserve_connect_locked(b, p, t);
		}
	}
}

void pool_run_connects(struct connect_batch *b)
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

void pool_close_all(struct list_node *doomed, const char *reason)
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

static void pool_add_waiter_locked(struct pool *pool, struct pool_waiter *waiter)
{
	waiter->since_usec = pgmux_pass_now_usec();
	list_append(&pool->waiters, &waiter->node);
	pool->n_waiting++;
}

/*
 * Which waiter gets a backend that a client on worker w gave back. The
 * oldest one, unless it is on another worker and has waited less than
 * POOL_LOCAL_WAITER_MAX_SKIP_USEC: then the oldest of the next
 * POOL_LOCAL_WAITER_SCAN waiters that is on w, if there is one. Handing the
 * backend across costs a detach, an attach, a peek and a wake-up of the
 * other worker: about five system calls (epoll_ctl twice, eventfd write and
 * read, recv). Under pgbench -S with 32 clients and 16 backends, strict
 * first come, first served moved a backend between two workers in about 37 %
 * of transactions; a 1 ms limit over 8 waiters in 27-46 %, some two
 * system calls per transaction; this limit in a few percent (bench/README.md).
 * Backends settle on the workers in proportion to their waiters: a worker
 * short of them sees its oldest waiter pass the limit and gets one more from
 * the other. No waiter is passed over for longer than the limit.
 */
#define POOL_LOCAL_WAITER_SCAN 64
#define POOL_LOCAL_WAITER_MAX_SKIP_USEC 5000

/*
 * May waiter be given s? Not a backend another client used, if it waits for
 * a new connection (fresh_only, see pool_borrow()) and one is opening: that
 * one is its.
 */
static bool pool_waiter_takes_locked(const struct pool *pool, const struct pool_waiter *waiter,
				     const struct server *s)
{
	return !(waiter->fresh_only && s->served && pool->n_connecting > 0);
}

static struct pool_waiter *pool_pick_waiter_locked(struct pool *pool, const struct server *s,
						   const struct worker *w, uint64_t now)
{
	struct pool_waiter *oldest = NULL;
	struct list_node *pos;
	uint64_t waited;

	list_for_each(pos, &pool->waiters) {
		struct pool_waiter *waiter = list_entry(pos, struct pool_waiter, node);

		if (pool_waiter_takes_locked(pool, waiter, s)) {
			oldest = waiter;
			break;
		}
	}
	if (oldest == NULL)
		return NULL;
	pos = oldest->node.next;
	/* now was read before the lock was taken: the oldest may have joined since. */
	waited = now > oldest->since_usec ? now - oldest->since_usec : 0;
	if (w == NULL || oldest->worker == w || waited >= POOL_LOCAL_WAITER_MAX_SKIP_USEC)
		return oldest;
	for (int i = 0; i < POOL_LOCAL_WAITER_SCAN && pos != &pool->waiters; i++, pos = pos->next) {
		struct pool_waiter *waiter = list_entry(pos, struct pool_waiter, node);

		if (waiter->worker == w && pool_waiter_takes_locked(pool, waiter, s))
			return waiter;
	}
	return oldest;
}

enum pool_borrow_result pool_borrow(struct pool *pool, struct pool_waiter *waiter, bool fresh_only,
				    struct server **server, const char **error)
{
	struct worker *w = waiter->worker;
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
	waiter->pool = pool;
	for (;;) {
		struct server *detached = NULL, *remote = NULL;
		bool fresh;

		s = NULL;
		migrate = NULL;
		pthread_mutex_lock(&pool_lock);
		/*
		 * A client whose backend died under it gets a new connection, if
		 * the cap allows one, rather than the idle backend another client
		 * just gave back (see client_server_lost()).
		 */
		waiter->fresh_only = fresh_only;
		fresh = fresh_only && !pool_paused_locked() && (t = pool_pick_target_locked(pool, error)) != NULL &&
			!t->paused && t->n_connections < pool_target_cap_locked(t);
		*error = NULL;
		list_for_each_safe(pos, tmp, &pool->idle) {
			struct server *cand = list_entry(pos, struct server, pool_node);

			if (pool_paused_locked() || cand->target->paused || fresh)
				break;
			if (!pool_server_usable_locked(cand, pool)) {
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
			pool_add_waiter_locked(pool, waiter);
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
				pool_add_waiter_locked(pool, waiter);
				if (pool_paused_locked() || (t && t->paused)) {
					/* PAUSE: wait like a client of a full pool. */
				} else if (pool->n_connecting + pool->n_migrating >= pool->n_waiting && !fresh) {
					/*
					 * Connections already opening for the pool, and idle
					 * ones on their way from another worker, serve its
					 * waiters first come, first served, this one among
					 * them: one more would only add to the idle ones once
					 * a busy backend comes back before they are ready.
					 */
				} else if (t && t->n_connections < pool_target_cap_locked(t)) {
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
		pool_close_all(&doomed, "its instance is no longer usable for this pool");

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
	pool_run_connects(&batch);
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

void pool_cancel_wait(struct pool_waiter *waiter)
{
	struct server *assigned = NULL;
	struct pool *pool = waiter->pool;

	if (pool == NULL)
		return;
	pthread_mutex_lock(&pool_lock);
	if (list_linked(&waiter->node)) {
		list_del(&waiter->node);
		/* It is either still waiting or on its worker's ready list. */
		if (waiter->assigned == NULL && waiter->error == NULL)
			pool->n_waiting--;
	}
	assigned = waiter->assigned;
	waiter->assigned = NULL;
	pthread_mutex_unlock(&pool_lock);
	/* Only its own worker sets it: nothing is queued anywhere now. */
	waiter->pool = NULL;
	free(waiter->error);
	waiter->error = NULL;
	if (assigned) {
		/* Never attached to this client: it is clean, pass it on. */
		pool_release(assigned);
	}
}

void pool_release(struct server *s)
{
	const struct config *cfg = config_current();
	struct pool *pool = s->pool;
	struct pool_waiter *waiter = NULL;
	struct worker *wake = NULL;
	uint64_t now = pgmux_pass_now_usec();
	bool usable;

	if (cfg->server_lifetime_ms > 0 &&
	    pgmux_usec_since(s->created_usec, now) >= (uint64_t)cfg->server_lifetime_ms * 1000) {
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
	usable = pool_server_usable_locked(s, pool);
	if (usable && !pool_paused_locked() && !s->target->paused && !list_empty(&pool->waiters))
		waiter = pool_pick_waiter_locked(pool, s, s->worker, now);
	if (waiter) {
		list_del(&waiter->node);
		pool->n_waiting--;
		/* A server moves to another worker's loop only detached; on this one it stays. */
		if (s->worker && s->worker != waiter->worker)
			server_detach(s);
		waiter->assigned = s;
		server_set_state(s, SERVER_IDLE);
		list_append(&waiter->worker->ready, &waiter->node);
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
	pool_run_connects(&batch);
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
		struct pool_waiter *waiter = list_entry(node, struct pool_waiter, node);

		pool->n_waiting--;
		waiter->error = xstrdup(message);
		memcpy(waiter->sqlstate, sqlstate, 5);
		waiter->sqlstate[5] = '\0';
		list_append(&waiter->worker->ready, &waiter->node);
		worker_wake(waiter->worker);
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
	pool_run_connects(&batch);
}

/* -------------------------- what a failover or cutover does to the pools */

void pool_drop_idle_of_locked(struct target *t, struct list_node *doomed)
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

void pool_serve_waiters_locked(struct connect_batch *b)
{
	struct list_node *pos;

	if (pool_paused_locked())
		return;
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);

		struct list_node *spos, *stmp;

		list_for_each_safe(spos, stmp, &p->idle) {
			struct server *s = list_entry(spos, struct server, pool_node);
			struct pool_waiter *waiter;

			if (p->n_waiting <= p->n_migrating)
				break;
			if (s->target->paused || !pool_server_usable_locked(s, p))
				continue;
			waiter = list_entry(p->waiters.next, struct pool_waiter, node);
			list_del(&s->pool_node);
			p->n_idle--;
			p->n_active++;
			s->target->n_idle--;
			if (s->worker != NULL && s->worker != waiter->worker) {
				/* Attached to another loop: its worker detaches it and hands it to the oldest waiter. */
				s->counted_migrating = true;
				p->n_migrating++;
				worker_post_migrate(s->worker, s->id);
				continue;
			}
			list_del(&waiter->node);
			p->n_waiting--;
			waiter->assigned = s;
			list_append(&waiter->worker->ready, &waiter->node);
			worker_wake(waiter->worker);
		}
	}
	pool_kick_locked(b);
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
			uint64_t idle_for = pgmux_usec_since(s->last_used_usec, now);
			int max_idle = t->cap_known ? t->max_connections * cfg->max_idle_connections_percent / 100 : t->n_idle;
			bool expired = (cfg->server_idle_timeout_ms > 0 &&
					idle_for >= (uint64_t)cfg->server_idle_timeout_ms * 1000) ||
				       (cfg->server_lifetime_ms > 0 &&
					pgmux_usec_since(s->created_usec, now) >= (uint64_t)cfg->server_lifetime_ms * 1000);
			bool surplus = t->n_idle > max_idle && idle_for >= 1000000;
			bool unusable = !pool_server_usable_locked(s, p);

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
	pool_close_all(&doomed, "idle too long, too old, beyond the idle cap, or its instance is no longer usable");
	pool_run_connects(&batch);
}

/* ------------------------------------------------------------------ counts */

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

void pool_run_ready(struct worker *w)
{
	struct list_node ready, *node;

	list_init(&ready);
	pthread_mutex_lock(&pool_lock);
	if (!list_empty(&w->ready)) {
		/* Splice the whole list out so that the lock is held only for this. */
		ready.next = w->ready.next;
		ready.prev = w->ready.prev;
		ready.next->prev = &ready;
		ready.prev->next = &ready;
		list_init(&w->ready);
	}
	pthread_mutex_unlock(&pool_lock);
	while ((node = list_pop_front(&ready)) != NULL) {
		struct pool_waiter *waiter = list_entry(node, struct pool_waiter, node);

		wait_ended(waiter);
	}
}

void pool_set_wait_ended(void (*ended)(struct pool_waiter *waiter))
{
	wait_ended = ended;
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
	pool_close_all(&doomed, "pgmux is shutting down");
}

void pool_shutdown(void)
{
	struct list_node *node;

	pool_close_idle();
	while ((node = list_pop_front(&pools)) != NULL)
		pool_free(list_entry(node, struct pool, node));
	pool_free_targets();
}
