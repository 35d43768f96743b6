/*
 * listen.c: the listen thread and the registry of who listens on what (see
 * listen.h). A hub is one pool's share: its channels, each with the clients
 * that listen on it, and the one connection that LISTENs on them all, on
 * the instance the pool's new backends go to. The registry (hubs, channels,
 * subscribers, waiters) is under listen_lock, which workers take to
 * subscribe and unsubscribe; the connections are the listen thread's alone.
 *
 * The thread brings each connection in step with its hub's channels (one
 * query of LISTENs and UNLISTENs at a time), tells the clients whose LISTEN
 * waited for that, and sends every notification to the workers of the
 * clients that listen on its channel, one inbox message per worker. It
 * reconnects when its connection is lost, and moves when the pool's instance
 * changes (failover, cutover): notifications sent while no connection
 * listened are lost, as with a dropped direct connection.
 */
#include "listen.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <libpq-fe.h>

#include "config.h"
#include "iobuf.h"
#include "list.h"
#include "log.h"
#include "pgconn.h"
#include "pgmux.h"
#include "pool.h"
#include "proto.h"
#include "sqlscan.h"
#include "strmap.h"
#include "util.h"
#include "worker.h"

#define LISTEN_APPLICATION_NAME "pgmux listen"
/* A lost or refused connection is tried again after this, then twice as long, up to the maximum. */
#define RETRY_FIRST_USEC (100ull * 1000)
#define RETRY_MAX_USEC (5ull * 1000000)
/* How often the thread looks whether a pool moved to another instance (failover, cutover). */
#define TICK_USEC (200 * 1000)
/* Channels named in one query of the connection's own. */
#define CHANNELS_PER_QUERY 500

struct subscriber {
	uint64_t client_id;
	int worker_id;
};

struct channel {
	char name[SQL_LISTEN_NAME_MAX + 1];
	struct subscriber *subs;
	int n_subs, cap_subs;
	bool listening;   /* the connection has LISTENed on it */
	bool in_flight;   /* a LISTEN or UNLISTEN of it is on its way */
	bool sent_listen; /* which of the two */
};

struct waiter {
	uint64_t client_id;
	int worker_id;
	uint64_t since_usec;
};

enum hub_state {
	HUB_DOWN,       /* no connection (none yet, or lost): one is opened when due */
	HUB_CONNECTING,
	HUB_UP,         /* connected, no query of its own in flight */
	HUB_QUERYING,   /* a LISTEN/UNLISTEN query in flight */
};

struct hub {
	struct list_node node;
	struct pool *pool; /* held (pool_hold()) while the hub lives */
	/* Under listen_lock. */
	struct strmap channels; /* name -> struct channel */
	int subscriptions;
	struct waiter *waiters;
	int n_waiters, cap_waiters;
	bool changed;           /* a channel gained its first subscriber or lost its last */
	uint64_t notifications, reconnects;
	char instance[64];      /* where the connection is ("" with none), for SHOW LISTENERS */
	int backend_pid;
	/* The listen thread's alone. */
	enum hub_state state;
	struct pgconn connect;
	PGconn *pg;
	struct event *io_event;
	struct pool_login where; /* the instance of the connection (target, generation) */
	uint64_t retry_at_usec, retry_delay_usec;
	char last_failure[256];
	int waiters_covered; /* waiters[0, n) are served once the query in flight is answered */
	struct channel **sent; /* the channels that query names */
	int n_sent;
	bool query_failed;
	char query_error[256];
};

static pthread_mutex_t listen_lock = PTHREAD_MUTEX_INITIALIZER;
static struct list_node hubs = LIST_HEAD_INIT(hubs); /* under listen_lock */
static struct event_base *listen_base;
static struct evdns_base *listen_dns;
static struct event *wake_event, *tick_event;
static pthread_t listen_thread;
static bool listen_running; /* atomic */
static int listen_reader;   /* config_reader_register() */

static void hub_work(struct hub *h);
static void hub_drop_connection(struct hub *h, const char *why);

/* ------------------------------------------------------------ the registry (any thread) */

static void channel_free(void *value)
{
	struct channel *ch = value;

	free(ch->subs);
	free(ch);
}

static struct hub *hub_find_locked(struct pool *pool)
{
	struct list_node *pos;

	list_for_each(pos, &hubs) {
		struct hub *h = list_entry(pos, struct hub, node);

		if (h->pool == pool)
			return h;
	}
	return NULL;
}

/*
 * Under the lock, so that listen_stop(), which clears listen_running under
 * it, never frees the event while a worker is about to activate it.
 */
static void wake_listen_thread(void)
{
	pthread_mutex_lock(&listen_lock);
	if (__atomic_load_n(&listen_running, __ATOMIC_ACQUIRE))
		event_active(wake_event, EV_READ, 0);
	pthread_mutex_unlock(&listen_lock);
}

enum listen_result listen_subscribe(struct pool *pool, uint64_t client_id, int worker_id, const char *channel)
{
	struct strmap_entry *e;
	struct channel *ch;
	struct hub *h;
	bool wait;

	if (!__atomic_load_n(&listen_running, __ATOMIC_ACQUIRE))
		return LISTEN_ERROR;
	pthread_mutex_lock(&listen_lock);
	h = hub_find_locked(pool);
	if (h == NULL) {
		h = xcalloc(1, sizeof(*h));
		pool_hold(pool);
		h->pool = pool;
		strmap_init(&h->channels);
		h->retry_delay_usec = RETRY_FIRST_USEC;
		list_append(&hubs, &h->node);
	}
	e = strmap_find(&h->channels, channel);
	if (e == NULL) {
		ch = xcalloc(1, sizeof(*ch));
		snprintf(ch->name, sizeof(ch->name), "%s", channel);
		e = strmap_insert(&h->channels, channel, ch);
	}
	ch = e->value;
	for (int i = 0; i < ch->n_subs; i++) {
		if (ch->subs[i].client_id == client_id) {
			/* LISTEN twice is LISTEN once, as in PostgreSQL. */
			wait = !ch->listening || ch->in_flight;
			pthread_mutex_unlock(&listen_lock);
			return wait ? LISTEN_WAIT : LISTEN_DONE;
		}
	}
	if (ch->n_subs == ch->cap_subs) {
		ch->cap_subs = ch->cap_subs ? 2 * ch->cap_subs : 4;
		ch->subs = xrealloc(ch->subs, (size_t)ch->cap_subs * sizeof(*ch->subs));
	}
	ch->subs[ch->n_subs++] = (struct subscriber){ .client_id = client_id, .worker_id = worker_id };
	h->subscriptions++;
	/* Listening already, and not being unlistened: it has taken effect. */
	wait = !ch->listening || ch->in_flight;
	if (ch->n_subs == 1)
		h->changed = true;
	pthread_mutex_unlock(&listen_lock);
	if (wait)
		wake_listen_thread();
	return wait ? LISTEN_WAIT : LISTEN_DONE;
}

void listen_wait(struct pool *pool, uint64_t client_id, int worker_id)
{
	struct hub *h;

	pthread_mutex_lock(&listen_lock);
	h = hub_find_locked(pool);
	if (h) {
		if (h->n_waiters == h->cap_waiters) {
			h->cap_waiters = h->cap_waiters ? 2 * h->cap_waiters : 8;
			h->waiters = xrealloc(h->waiters, (size_t)h->cap_waiters * sizeof(*h->waiters));
		}
		h->waiters[h->n_waiters++] =
			(struct waiter){ .client_id = client_id, .worker_id = worker_id, .since_usec = pgmux_now_usec() };
	}
	pthread_mutex_unlock(&listen_lock);
	if (h == NULL)
		worker_post_listen_ready(workers[worker_id], client_id, "pgmux is not listening for this pool");
	else
		wake_listen_thread();
}

void listen_unsubscribe(struct pool *pool, uint64_t client_id, const char *channel)
{
	struct strmap_entry *e;
	struct hub *h;
	bool changed = false;

	pthread_mutex_lock(&listen_lock);
	h = hub_find_locked(pool);
	if (h && (e = strmap_find(&h->channels, channel)) != NULL) {
		struct channel *ch = e->value;

		for (int i = 0; i < ch->n_subs; i++) {
			if (ch->subs[i].client_id == client_id) {
				ch->subs[i] = ch->subs[--ch->n_subs];
				h->subscriptions--;
				changed = ch->n_subs == 0;
				break;
			}
		}
		if (changed)
			h->changed = true;
	}
	pthread_mutex_unlock(&listen_lock);
	if (changed)
		wake_listen_thread();
}

int listen_connections(void)
{
	struct list_node *pos;
	int n = 0;

	pthread_mutex_lock(&listen_lock);
	list_for_each(pos, &hubs)
		n += list_entry(pos, struct hub, node)->backend_pid != 0;
	pthread_mutex_unlock(&listen_lock);
	return n;
}

void listen_for_each(void (*fn)(const struct listen_info *info, void *arg), void *arg)
{
	struct list_node *pos;

	pthread_mutex_lock(&listen_lock);
	list_for_each(pos, &hubs) {
		struct hub *h = list_entry(pos, struct hub, node);
		struct listen_info info = {
			.user = h->pool->user, .database = h->pool->database, .instance = h->instance,
			.backend_pid = h->backend_pid, .subscriptions = h->subscriptions,
			.notifications = h->notifications, .reconnects = h->reconnects,
		};
		struct list_node *c;

		list_for_each(c, &h->channels.lru)
			info.channels += ((struct channel *)list_entry(c, struct strmap_entry, lru)->value)->n_subs > 0;
		fn(&info, arg);
	}
	pthread_mutex_unlock(&listen_lock);
}

/* ------------------------------------------------------------ telling the clients */

/* Tell waiters[0, n) that their LISTENs took effect (error NULL) or failed. Under listen_lock. */
static void serve_waiters_locked(struct hub *h, int n, const char *error)
{
	for (int i = 0; i < n; i++)
		worker_post_listen_ready(workers[h->waiters[i].worker_id], h->waiters[i].client_id, error);
	memmove(h->waiters, h->waiters + n, (size_t)(h->n_waiters - n) * sizeof(*h->waiters));
	h->n_waiters -= n;
	if (h->waiters_covered >= n)
		h->waiters_covered -= n;
	else
		h->waiters_covered = 0;
}

/* One notification to every client that listens on its channel: one message per worker. */
static void deliver(struct hub *h, const PGnotify *n)
{
	struct strmap_entry *e;
	struct iobuf msg;
	size_t begin;

	iobuf_init(&msg);
	begin = proto_begin(&msg, BE_NOTIFICATION);
	iobuf_append_u32(&msg, (uint32_t)n->be_pid);
	iobuf_append_str(&msg, n->relname);
	iobuf_append_str(&msg, n->extra);
	proto_end(&msg, begin);
	if (msg.failed) {
		iobuf_free(&msg);
		log_error("out of memory for a notification on channel \"%s\"", n->relname);
		return;
	}
	pthread_mutex_lock(&listen_lock);
	if ((e = strmap_find(&h->channels, n->relname)) != NULL) {
		struct channel *ch = e->value;
		uint64_t *ids = xmalloc((size_t)(ch->n_subs ? ch->n_subs : 1) * sizeof(*ids));

		h->notifications++;
		for (int w = 0; w < n_workers; w++) {
			int k = 0;

			for (int i = 0; i < ch->n_subs; i++)
				if (ch->subs[i].worker_id == w)
					ids[k++] = ch->subs[i].client_id;
			if (k > 0)
				worker_post_notify(workers[w], ids, k, iobuf_head(&msg), iobuf_len(&msg));
		}
		free(ids);
	}
	pthread_mutex_unlock(&listen_lock);
	iobuf_free(&msg);
}

/* ------------------------------------------------------------ the connection (listen thread) */

static void hub_set_where_locked(struct hub *h, const char *instance, int pid)
{
	snprintf(h->instance, sizeof(h->instance), "%s", instance);
	h->backend_pid = pid;
}

static void hub_wait_io(struct hub *h, short what);

static void hub_on_io(evutil_socket_t fd, short what, void *arg)
{
	struct hub *h = arg;
	PGnotify *n;

	config_reader_quiescent(listen_reader);
	if ((what & EV_WRITE) && PQflush(h->pg) < 0) {
		hub_drop_connection(h, PQerrorMessage(h->pg));
		return;
	}
	if (!PQconsumeInput(h->pg)) {
		hub_drop_connection(h, PQerrorMessage(h->pg));
		return;
	}
	while (h->state == HUB_QUERYING && !PQisBusy(h->pg)) {
		PGresult *res = PQgetResult(h->pg);

		if (res == NULL) {
			h->state = HUB_UP;
			break;
		}
		if (PQresultStatus(res) != PGRES_COMMAND_OK && !h->query_failed) {
			h->query_failed = true;
			snprintf(h->query_error, sizeof(h->query_error), "%s", PQresultErrorMessage(res));
		}
		PQclear(res);
	}
	while ((n = PQnotifies(h->pg)) != NULL) {
		deliver(h, n);
		PQfreemem(n);
	}
	if (PQstatus(h->pg) == CONNECTION_BAD) {
		hub_drop_connection(h, PQerrorMessage(h->pg));
		return;
	}
	if (h->state == HUB_UP && h->sent) {
		/* The query of LISTENs and UNLISTENs is answered: the channels it named are in step. */
		pthread_mutex_lock(&listen_lock);
		for (int i = 0; i < h->n_sent; i++) {
			struct channel *ch = h->sent[i];

			ch->in_flight = false;
			/*
			 * What was sent, not who subscribes now: a client that came
			 * while its UNLISTEN was on its way needs another LISTEN. A
			 * failed query (one transaction) changed nothing.
			 */
			if (!h->query_failed)
				ch->listening = ch->sent_listen;
			if ((ch->n_subs > 0) != ch->listening)
				h->changed = true;
		}
		if (h->query_failed) {
			char why[300];

			snprintf(why, sizeof(why), "the LISTEN connection's query failed: %s", h->query_error);
			log_warning("pool %s@%s: %s", h->pool->user, h->pool->database, h->query_error);
			serve_waiters_locked(h, h->waiters_covered, why);
		} else {
			serve_waiters_locked(h, h->waiters_covered, NULL);
		}
		pthread_mutex_unlock(&listen_lock);
		free(h->sent);
		h->sent = NULL;
		h->n_sent = 0;
		h->query_failed = false;
	}
	if (h->state == HUB_UP)
		hub_work(h);
	else
		hub_wait_io(h, EV_READ);
}

static void hub_wait_io(struct hub *h, short what)
{
	if (h->io_event == NULL) {
		h->io_event = event_new(listen_base, PQsocket(h->pg), what | EV_PERSIST, hub_on_io, h);
		if (h->io_event == NULL) {
			hub_drop_connection(h, "out of memory");
			return;
		}
	} else if (event_get_events(h->io_event) != (what | EV_PERSIST)) {
		event_del(h->io_event);
		event_assign(h->io_event, listen_base, PQsocket(h->pg), what | EV_PERSIST, hub_on_io, h);
	}
	event_add(h->io_event, NULL);
}

/* Forget the connection; the next one is opened after a delay that grows while they keep failing. */
static void hub_drop_connection(struct hub *h, const char *why)
{
	bool had_connection = h->pg != NULL, say = why != NULL;

	/* why may be libpq's own message: kept before PQfinish() frees it. */
	snprintf(h->last_failure, sizeof(h->last_failure), "%s", why ? why : "");
	pgconn_cancel(&h->connect);
	if (h->io_event) {
		event_free(h->io_event);
		h->io_event = NULL;
	}
	if (h->pg) {
		PQfinish(h->pg);
		h->pg = NULL;
	}
	/* One line, without libpq's trailing newline. */
	h->last_failure[strcspn(h->last_failure, "\n")] = '\0';
	pthread_mutex_lock(&listen_lock);
	{
		struct list_node *pos;

		list_for_each(pos, &h->channels.lru) {
			struct channel *ch = list_entry(pos, struct strmap_entry, lru)->value;

			ch->listening = false;
			ch->in_flight = false;
			if (ch->n_subs > 0)
				h->changed = true;
		}
	}
	h->waiters_covered = 0;
	hub_set_where_locked(h, "", 0);
	if (had_connection)
		h->reconnects++;
	pthread_mutex_unlock(&listen_lock);
	free(h->sent);
	h->sent = NULL;
	h->n_sent = 0;
	h->query_failed = false;
	if (had_connection && say)
		log_warning("pool %s@%s: the LISTEN connection to %s:%d was lost (%s); notifications sent until it "
			    "is back are lost", h->pool->user, h->pool->database, h->where.host, h->where.port,
			    h->last_failure);
	pool_login_clear(&h->where);
	h->state = HUB_DOWN;
	h->retry_at_usec = pgmux_now_usec() + h->retry_delay_usec;
	h->retry_delay_usec = h->retry_delay_usec * 2 > RETRY_MAX_USEC ? RETRY_MAX_USEC : h->retry_delay_usec * 2;
}

static void hub_connected(void *arg, PGconn *pg, const struct pgconn_failure *failure)
{
	struct hub *h = arg;

	if (pg == NULL) {
		log_warning("pool %s@%s: the LISTEN connection to %s:%d failed: %s", h->pool->user,
			    h->pool->database, h->where.host, h->where.port, failure->message);
		hub_drop_connection(h, failure->message);
		/*
		 * The server refused the login: whoever waits for this connection
		 * hears why at once, as a client waiting for a backend does. An
		 * instance that cannot be reached (a failover under way) is waited
		 * for, up to connection_borrow_timeout (hub_work()).
		 */
		if (!failure->refused)
			return;
		pthread_mutex_lock(&listen_lock);
		{
			char why[600];

			snprintf(why, sizeof(why), "pgmux could not open its LISTEN connection: %s", h->last_failure);
			serve_waiters_locked(h, h->n_waiters, why);
		}
		pthread_mutex_unlock(&listen_lock);
		return;
	}
	h->pg = pg;
	h->state = HUB_UP;
	h->retry_delay_usec = RETRY_FIRST_USEC;
	pthread_mutex_lock(&listen_lock);
	hub_set_where_locked(h, h->where.instance_id, PQbackendPID(pg));
	pthread_mutex_unlock(&listen_lock);
	log_info("pool %s@%s: LISTEN connection open to %s:%d (backend pid %d)", h->pool->user,
		 h->pool->database, h->where.host, h->where.port, PQbackendPID(pg));
	hub_wait_io(h, EV_READ);
	hub_work(h);
}

static const struct pgconn_ops hub_connect_ops = {
	.done = hub_connected,
};

static void hub_connect(struct hub *h)
{
	struct pgconn_params params = { 0 };

	if (!pool_current_login(h->pool, &h->where)) {
		snprintf(h->last_failure, sizeof(h->last_failure), "no instance is available for this pool");
		return;
	}
	params.host = h->where.host;
	params.port = h->where.port;
	params.user = h->where.user;
	params.database = h->where.database;
	params.password = h->where.password;
	params.application_name = LISTEN_APPLICATION_NAME;
	h->state = HUB_CONNECTING;
	pgconn_start(&h->connect, listen_base, listen_dns, &params, &hub_connect_ops, h);
}

/* A channel name as a quoted identifier: "" for each ". */
static void append_quoted(struct iobuf *q, const char *name)
{
	iobuf_append_u8(q, '"');
	for (const char *p = name; *p; p++) {
		if (*p == '"')
			iobuf_append_u8(q, '"');
		iobuf_append_u8(q, (uint8_t)*p);
	}
	iobuf_append_u8(q, '"');
}

/* Connected and idle: send the LISTENs and UNLISTENs that bring the connection in step, if any. */
static void hub_sync(struct hub *h)
{
	struct iobuf q;
	struct list_node *pos, *tmp;
	int cap = CHANNELS_PER_QUERY;

	iobuf_init(&q);
	h->sent = xcalloc((size_t)cap, sizeof(*h->sent));
	h->n_sent = 0;
	pthread_mutex_lock(&listen_lock);
	h->changed = false;
	list_for_each_safe(pos, tmp, &h->channels.lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);
		struct channel *ch = e->value;

		if (ch->in_flight || (ch->n_subs > 0) == ch->listening) {
			if (ch->n_subs == 0 && !ch->listening && !ch->in_flight) {
				channel_free(strmap_delete(&h->channels, e));
			}
			continue;
		}
		if (h->n_sent == cap) {
			h->changed = true; /* the rest in the next query */
			break;
		}
		iobuf_append(&q, ch->n_subs > 0 ? "LISTEN " : "UNLISTEN ", ch->n_subs > 0 ? 7 : 9);
		append_quoted(&q, ch->name);
		iobuf_append(&q, ";", 1);
		ch->in_flight = true;
		ch->sent_listen = ch->n_subs > 0;
		h->sent[h->n_sent++] = ch;
	}
	h->waiters_covered = h->n_waiters;
	if (h->n_sent == 0) {
		/* Nothing to send: whoever waits listens already. */
		serve_waiters_locked(h, h->n_waiters, NULL);
		pthread_mutex_unlock(&listen_lock);
		free(h->sent);
		h->sent = NULL;
		iobuf_free(&q);
		return;
	}
	pthread_mutex_unlock(&listen_lock);
	iobuf_append_u8(&q, 0);
	if (q.failed || !PQsendQuery(h->pg, (const char *)iobuf_head(&q))) {
		iobuf_free(&q);
		hub_drop_connection(h, q.failed ? "out of memory" : PQerrorMessage(h->pg));
		return;
	}
	iobuf_free(&q);
	h->state = HUB_QUERYING;
	switch (PQflush(h->pg)) {
	case 0:
		hub_wait_io(h, EV_READ);
		break;
	case 1:
		hub_wait_io(h, EV_READ | EV_WRITE);
		break;
	default:
		hub_drop_connection(h, PQerrorMessage(h->pg));
	}
}

/* Free a hub nobody listens through any more (its connection is closed). Under listen_lock. */
static void hub_free_locked(struct hub *h)
{
	list_del(&h->node);
	strmap_clear(&h->channels, channel_free);
	free(h->waiters);
	free(h->sent);
	pool_put(h->pool);
	free(h);
}

/* Has the pool moved to another instance than the connection's (failover, cutover)? */
static bool hub_moved(struct hub *h)
{
	struct pool_login now;
	bool moved;

	if (!pool_current_login(h->pool, &now))
		return false; /* none now: the connection stays until there is one */
	moved = now.target != h->where.target || now.generation != h->where.generation;
	pool_login_clear(&now);
	return moved;
}

/* Whatever is due for h: free it, connect, move, or bring the connection in step. */
static void hub_work(struct hub *h)
{
	bool empty, changed, waiting;
	uint64_t now;
	const struct config *cfg = config_current();

	pthread_mutex_lock(&listen_lock);
	/*
	 * Read under the lock: a worker stamps a waiter (listen_wait()) under it,
	 * so no waiter is younger than now. Read before it, a waiter added
	 * meanwhile was "older" than any timeout (the unsigned difference
	 * wrapped) and its LISTEN failed at once.
	 */
	now = pgmux_now_usec();
	empty = h->subscriptions == 0 && h->n_waiters == 0;
	changed = h->changed;
	waiting = h->n_waiters > 0;
	/* A LISTEN that cannot take effect in time fails, as a borrow would (connection_borrow_timeout). */
	if (waiting && h->state != HUB_UP && h->state != HUB_QUERYING && cfg->connection_borrow_timeout_ms > 0) {
		int n = 0;

		while (n < h->n_waiters && now >= h->waiters[n].since_usec &&
		       now - h->waiters[n].since_usec >= (uint64_t)cfg->connection_borrow_timeout_ms * 1000)
			n++;
		if (n > 0) {
			char why[400];

			snprintf(why, sizeof(why), "pgmux's LISTEN connection is not ready%s%s", h->last_failure[0] ? ": " : "",
				 h->last_failure);
			serve_waiters_locked(h, n, why);
		}
	}
	if (empty && h->state != HUB_QUERYING && h->state != HUB_CONNECTING) {
		pthread_mutex_unlock(&listen_lock);
		if (h->pg || h->state != HUB_DOWN)
			hub_drop_connection(h, NULL);
		pool_login_clear(&h->where);
		pthread_mutex_lock(&listen_lock);
		if (h->subscriptions == 0 && h->n_waiters == 0) {
			log_debug("pool %s@%s: nobody listens any more, LISTEN connection closed", h->pool->user,
				  h->pool->database);
			hub_free_locked(h);
			pthread_mutex_unlock(&listen_lock);
			return;
		}
		/*
		 * A client subscribed while the connection was being closed (the
		 * lock is not held across the close): the hub stays, and connects
		 * again at once for it.
		 */
		changed = h->changed;
		waiting = h->n_waiters > 0;
		h->retry_at_usec = now;
		h->retry_delay_usec = RETRY_FIRST_USEC;
	}
	pthread_mutex_unlock(&listen_lock);
	switch (h->state) {
	case HUB_DOWN:
		if (now >= h->retry_at_usec)
			hub_connect(h);
		break;
	case HUB_CONNECTING:
		break;
	case HUB_UP:
		if (hub_moved(h)) {
			log_info("pool %s@%s: the pool moved away from %s:%d, the LISTEN connection follows",
				 h->pool->user, h->pool->database, h->where.host, h->where.port);
			hub_drop_connection(h, NULL);
			h->retry_at_usec = now;
			h->retry_delay_usec = RETRY_FIRST_USEC;
			hub_connect(h);
		} else if (changed || waiting) {
			hub_sync(h);
		}
		break;
	case HUB_QUERYING:
		break;
	}
}

static void work_all(void)
{
	struct list_node *pos, *tmp;

	config_reader_quiescent(listen_reader);
	/* hub_work() may free its hub, never another: the next one is taken first. */
	pthread_mutex_lock(&listen_lock);
	list_for_each_safe(pos, tmp, &hubs) {
		struct hub *h = list_entry(pos, struct hub, node);

		pthread_mutex_unlock(&listen_lock);
		hub_work(h);
		pthread_mutex_lock(&listen_lock);
	}
	pthread_mutex_unlock(&listen_lock);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
	work_all();
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	work_all();
}

static void *listen_main(void *arg)
{
	pthread_setname_np(pthread_self(), "listen");
	listen_reader = config_reader_register();
	event_base_loop(listen_base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

int listen_start(void)
{
	struct timeval tick = { 0, TICK_USEC };

	listen_base = event_base_new();
	if (listen_base == NULL)
		return -1;
	listen_dns = evdns_base_new(listen_base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (listen_dns == NULL) {
		listen_dns = evdns_base_new(listen_base, 0);
		if (listen_dns)
			evdns_base_load_hosts(listen_dns, NULL);
	}
	wake_event = event_new(listen_base, -1, 0, on_wake, NULL);
	tick_event = event_new(listen_base, -1, EV_PERSIST, on_tick, NULL);
	if (listen_dns == NULL || wake_event == NULL || tick_event == NULL)
		return -1;
	evtimer_add(tick_event, &tick);
	if (pthread_create(&listen_thread, NULL, listen_main, NULL) != 0)
		return -1;
	__atomic_store_n(&listen_running, true, __ATOMIC_RELEASE);
	return 0;
}

void listen_stop(void)
{
	if (__atomic_load_n(&listen_running, __ATOMIC_ACQUIRE)) {
		pthread_mutex_lock(&listen_lock);
		__atomic_store_n(&listen_running, false, __ATOMIC_RELEASE);
		pthread_mutex_unlock(&listen_lock);
		event_base_loopbreak(listen_base);
		pthread_join(listen_thread, NULL);
	}
	/*
	 * The thread is gone: its connections are closed here, under the lock,
	 * since the workers still run (a client closing now unsubscribes, and
	 * finds no hub).
	 */
	pthread_mutex_lock(&listen_lock);
	while (!list_empty(&hubs)) {
		struct hub *h = list_entry(hubs.next, struct hub, node);

		pgconn_cancel(&h->connect);
		if (h->io_event)
			event_free(h->io_event);
		if (h->pg)
			PQfinish(h->pg);
		pool_login_clear(&h->where);
		hub_free_locked(h);
	}
	pthread_mutex_unlock(&listen_lock);
	if (wake_event)
		event_free(wake_event);
	if (tick_event)
		event_free(tick_event);
	if (listen_dns)
		evdns_base_free(listen_dns, 1);
	if (listen_base)
		event_base_free(listen_base);
	wake_event = tick_event = NULL;
	listen_dns = NULL;
	listen_base = NULL;
}
