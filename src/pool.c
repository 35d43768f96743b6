/*
 * pool.c: backend pools and the rules for handing out backend connections
 * (see pool.h). The decisions are made under one lock and are short; the
 * work they lead to (connecting, attaching a server to a loop, waking a
 * worker) happens after the lock is dropped.
 */
#include "pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "client.h"
#include "log.h"
#include "pgmux.h"
#include "server.h"
#include "util.h"
#include "worker.h"

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static void pool_start_connect(struct pool *pool);
static struct list_node targets = LIST_HEAD_INIT(targets);
static struct list_node pools = LIST_HEAD_INIT(pools);

static void set_string(char **dst, const char *src)
{
	if (*dst && src && strcmp(*dst, src) == 0)
		return;
	free(*dst);
	*dst = xstrdup(src);
}

int pool_init(const struct config *cfg)
{
	/* Session and transaction pooling use the first host as the target; roles come later. */
	struct target *t = calloc(1, sizeof(*t));

	if (t == NULL || cfg->n_hosts < 1) {
		free(t);
		return -1;
	}
	t->host = xstrdup(cfg->hosts[0].host);
	t->port = cfg->hosts[0].port;
	t->max_connections = cfg->max_connections;
	t->cap_known = cfg->max_connections > 0;
	list_append(&targets, &t->node);
	return 0;
}

static struct target *pool_default_target(void)
{
	return list_empty(&targets) ? NULL : list_entry(targets.next, struct target, node);
}

struct pool *pool_get(const char *user, const char *database, const char *password)
{
	struct list_node *pos;
	struct pool *p;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &pools) {
		p = list_entry(pos, struct pool, node);
		if (strcmp(p->user, user) == 0 && strcmp(p->database, database) == 0) {
			if (password)
				set_string(&p->password, password);
			pthread_mutex_unlock(&pool_lock);
			return p;
		}
	}
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		abort();
	p->user = xstrdup(user);
	p->database = xstrdup(database);
	p->password = password ? xstrdup(password) : NULL;
	p->target = pool_default_target();
	list_init(&p->idle);
	list_init(&p->waiters);
	list_append(&pools, &p->node);
	pthread_mutex_unlock(&pool_lock);
	log_debug("pool %s@%s created for target %s:%d", user, database, p->target->host, p->target->port);
	return p;
}

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

/*
 * Find an idle server of another pool on the same target that can be closed
 * to make room. Returns it unlinked from its pool, its slot handed over to
 * the caller's pool.
 */
static struct server *pool_steal_idle_locked(struct pool *for_pool)
{
	struct list_node *pos;

	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);

		if (p == for_pool || p->target != for_pool->target || list_empty(&p->idle))
			continue;
		/* The least recently used one: idle lists keep the most recent first. */
		struct server *s = list_entry(p->idle.prev, struct server, pool_node);

		list_del(&s->pool_node);
		p->n_idle--;
		p->n_connections--;
		for_pool->n_connections++;
		return s;
	}
	return NULL;
}

/* Does any waiter need a connection that the cap now allows? Reserve it. */
static struct pool *pool_next_to_connect_locked(struct target *t)
{
	struct list_node *pos;

	if (t->n_connections >= target_cap_locked(t))
		return NULL;
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);

		/* Connections already opening will serve the first waiters. */
		if (p->target == t && p->n_waiting > 0 && t->n_connecting < p->n_waiting) {
			t->n_connections++;
			t->n_connecting++;
			p->n_connections++;
			return p;
		}
	}
	return NULL;
}

struct server *pool_borrow(struct pool *pool, struct client *client)
{
	struct worker *w = client->worker;
	struct target *t = pool->target;
	struct server *s = NULL, *victim = NULL;
	bool connect = false;

	for (;;) {
		pthread_mutex_lock(&pool_lock);
		if (!list_empty(&pool->idle)) {
			s = list_entry(pool->idle.next, struct server, pool_node);
			list_del(&s->pool_node);
			pool->n_idle--;
			pool->n_active++;
		} else {
			/* Queue first: a connection that completes goes to the oldest waiter. */
			list_append(&pool->waiters, &client->wait_node);
			pool->n_waiting++;
			if (t->n_connections < target_cap_locked(t)) {
				t->n_connections++;
				t->n_connecting++;
				pool->n_connections++;
				connect = true;
			} else if (t->cap_known && (victim = pool_steal_idle_locked(pool)) != NULL) {
				t->n_connecting++;
				connect = true;
			}
		}
		pthread_mutex_unlock(&pool_lock);

		if (s == NULL)
			break;
		/* An idle server may have died while parked; try the next one. */
		if (server_attach(s, w))
			return s;
		s = NULL;
	}
	if (victim) {
		/* Its slot now belongs to pool; closing it must not free the slot again. */
		victim->pool = NULL;
		victim->worker = w;
		list_append(&w->servers, &victim->worker_node);
		server_close(victim, "closed to make room for another pool");
	}
	if (connect)
		server_connect(w, pool);
	return NULL;
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

void pool_release(struct server *s)
{
	const struct config *cfg = config_current();
	struct pool *pool = s->pool;
	struct client *waiter = NULL;
	struct worker *wake = NULL;
	uint64_t now = pgmux_now_usec();

	if (cfg->server_lifetime_ms > 0 && now - s->created_usec >= (uint64_t)cfg->server_lifetime_ms * 1000) {
		server_close(s, "server_lifetime reached");
		return;
	}
	if (s->cancel_sent) {
		server_close(s, "a cancel request was sent to it");
		return;
	}
	if (s->worker)
		server_detach(s);
	s->client = NULL;
	s->last_used_usec = pgmux_now_usec();
	pthread_mutex_lock(&pool_lock);
	if (!list_empty(&pool->waiters)) {
		waiter = list_entry(pool->waiters.next, struct client, wait_node);
		list_del(&waiter->wait_node);
		pool->n_waiting--;
		waiter->assigned_server = s;
		s->state = SERVER_IDLE;
		list_append(&waiter->worker->ready, &waiter->wait_node);
		/* Once the lock is dropped the waiter may close; its worker lives on. */
		wake = waiter->worker;
	} else {
		s->state = SERVER_IDLE;
		list_prepend(&pool->idle, &s->pool_node);
		pool->n_idle++;
		pool->n_active--;
	}
	pthread_mutex_unlock(&pool_lock);
	if (wake)
		worker_wake(wake);
}

/* Give back the slot s held; the caller holds the pool lock. */
static void pool_forget_locked(struct server *s)
{
	struct pool *pool = s->pool;
	struct target *t = s->target;

	if (s->counted_connecting) {
		t->n_connecting--;
		s->counted_connecting = false;
	} else if (s->state == SERVER_IDLE && list_linked(&s->pool_node)) {
		list_del(&s->pool_node);
		pool->n_idle--;
	} else {
		pool->n_active--;
	}
	pool->n_connections--;
	t->n_connections--;
}

void pool_forget(struct server *s)
{
	struct pool *next;

	if (s->pool == NULL)
		return;
	pthread_mutex_lock(&pool_lock);
	pool_forget_locked(s);
	next = pool_next_to_connect_locked(s->target);
	pthread_mutex_unlock(&pool_lock);
	s->pool = NULL;
	if (next)
		pool_start_connect(next);
}

void pool_connection_ready(struct server *s)
{
	pthread_mutex_lock(&pool_lock);
	if (s->counted_connecting) {
		s->target->n_connecting--;
		s->counted_connecting = false;
		s->pool->n_active++;
	}
	pthread_mutex_unlock(&pool_lock);
	pool_release(s);
}

void pool_connect_failed(struct server *s, const char *sqlstate, const char *message)
{
	struct pool *pool = s->pool;
	struct pool *next;
	struct list_node *node;

	if (pool == NULL)
		return;
	pthread_mutex_lock(&pool_lock);
	pool_forget_locked(s);
	/*
	 * Every client waiting in this pool hears why, rather than each one
	 * triggering another attempt that fails the same way.
	 */
	while ((node = list_pop_front(&pool->waiters)) != NULL) {
		struct client *c = list_entry(node, struct client, wait_node);

		pool->n_waiting--;
		c->assigned_error = strdup(message);
		memcpy(c->assigned_sqlstate, sqlstate, 5);
		c->assigned_sqlstate[5] = '\0';
		list_append(&c->worker->ready, &c->wait_node);
		worker_wake(c->worker);
	}
	next = pool_next_to_connect_locked(s->target);
	pthread_mutex_unlock(&pool_lock);
	s->pool = NULL;
	if (next)
		pool_start_connect(next);
}

void pool_learn_cap(struct target *t, int server_max)
{
	const struct config *cfg = config_current();
	struct pool *next[64];
	int n = 0;

	pthread_mutex_lock(&pool_lock);
	if (!t->cap_known) {
		int cap = cfg->max_connections;

		if (cap <= 0)
			cap = (int)((long)server_max * cfg->max_connections_percent / 100);
		t->max_connections = cap > 0 ? cap : 1;
		t->cap_known = true;
		log_info("target %s:%d: server allows %d connections, pgmux uses at most %d", t->host, t->port,
			 server_max, t->max_connections);
		/* Connections that waited for the cap to be known can start now. */
		while (n < 64 && (next[n] = pool_next_to_connect_locked(t)) != NULL)
			n++;
	}
	pthread_mutex_unlock(&pool_lock);
	for (int i = 0; i < n; i++)
		pool_start_connect(next[i]);
}

/* Start a connection for pool from any thread: directly on a worker, else through one's inbox. */
static void pool_start_connect(struct pool *pool)
{
	struct worker *w = worker_self();

	if (w)
		server_connect(w, pool);
	else
		workers_post_connect(pool);
}

/*
 * Once a second, on the main thread: close idle backends past
 * server_idle_timeout or server_lifetime, or beyond the idle cap
 * (max_idle_connections_percent of the target's cap, once idle for a
 * second), sparing min_pool_size per pool; open connections up to
 * min_pool_size.
 */
void pool_janitor(uint64_t now)
{
	const struct config *cfg = config_current();
	struct list_node doomed, *pos, *node;
	struct pool *to_connect[64];
	int n_connect = 0;

	list_init(&doomed);
	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &targets) {
		struct target *t = list_entry(pos, struct target, node);
		int idle = 0, max_idle;
		struct list_node *ppos;

		list_for_each(ppos, &pools) {
			struct pool *p = list_entry(ppos, struct pool, node);

			if (p->target == t)
				idle += p->n_idle;
		}
		max_idle = t->cap_known ? t->max_connections * cfg->max_idle_connections_percent / 100 : idle;
		list_for_each(ppos, &pools) {
			struct pool *p = list_entry(ppos, struct pool, node);
			struct list_node *spos, *stmp;

			if (p->target != t)
				continue;
			/* Oldest idle first: the idle list keeps the most recently used at the front. */
			for (spos = p->idle.prev, stmp = spos->prev; spos != &p->idle; spos = stmp, stmp = spos->prev) {
				struct server *s = list_entry(spos, struct server, pool_node);
				uint64_t idle_for = now - s->last_used_usec;
				bool expired = (cfg->server_idle_timeout_ms > 0 &&
						idle_for >= (uint64_t)cfg->server_idle_timeout_ms * 1000) ||
					       (cfg->server_lifetime_ms > 0 &&
						now - s->created_usec >= (uint64_t)cfg->server_lifetime_ms * 1000);
				bool surplus = idle > max_idle && idle_for >= 1000000;

				if (p->n_connections <= cfg->min_pool_size || (!expired && !surplus))
					continue;
				list_del(&s->pool_node);
				p->n_idle--;
				p->n_connections--;
				t->n_connections--;
				idle--;
				s->pool = NULL;
				list_append(&doomed, &s->pool_node);
			}
		}
		/* Keep min_pool_size open for each pool that has been used. */
		list_for_each(ppos, &pools) {
			struct pool *p = list_entry(ppos, struct pool, node);

			while (p->target == t && p->n_connections < cfg->min_pool_size && t->cap_known &&
			       t->n_connections < t->max_connections && n_connect < 64) {
				t->n_connections++;
				t->n_connecting++;
				p->n_connections++;
				to_connect[n_connect++] = p;
			}
		}
	}
	pthread_mutex_unlock(&pool_lock);
	while ((node = list_pop_front(&doomed)) != NULL) {
		struct server *s = list_entry(node, struct server, pool_node);

		list_init(&s->pool_node);
		server_close(s, "idle too long, too old, or beyond the idle cap");
	}
	for (int i = 0; i < n_connect; i++)
		pool_start_connect(to_connect[i]);
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
	struct list_node *pos;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &pools) {
		struct pool *p = list_entry(pos, struct pool, node);
		struct list_node *node;

		while ((node = list_pop_front(&p->idle)) != NULL) {
			struct server *s = list_entry(node, struct server, pool_node);

			p->n_idle--;
			p->n_connections--;
			p->target->n_connections--;
			s->pool = NULL;
			pthread_mutex_unlock(&pool_lock);
			server_close(s, "pgmux is shutting down");
			pthread_mutex_lock(&pool_lock);
		}
	}
	pthread_mutex_unlock(&pool_lock);
}

void pool_shutdown(void)
{
	struct list_node *node;

	pool_close_idle();
	while ((node = list_pop_front(&pools)) != NULL) {
		struct pool *p = list_entry(node, struct pool, node);

		free(p->user);
		free(p->database);
		if (p->password) {
			memset(p->password, 0, strlen(p->password));
			free(p->password);
		}
		free(p);
	}
	while ((node = list_pop_front(&targets)) != NULL) {
		struct target *t = list_entry(node, struct target, node);

		free(t->host);
		free(t);
	}
}
