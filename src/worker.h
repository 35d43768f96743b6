/*
 * worker.h: worker threads. Each worker runs its own libevent event_base and
 * owns the clients and servers attached to it; nothing else touches them.
 * Other threads talk to a worker only through its inbox (a mutex-protected
 * list plus an event_active() wake-up), as memcached's threads do, or through
 * the pool's ready list, which the pool lock protects. worker.c knows the
 * loop, not the sessions: what a message means for them, and how a closed
 * one is freed, is the worker_ops that main installs (dispatch.c).
 */
#ifndef PGMUX_WORKER_H
#define PGMUX_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "config.h"
#include "histogram.h"
#include "iobuf.h"
#include "list.h"
#include "sqlscan.h"

struct pool;
struct target;
struct worker;

enum worker_msg_type {
	WORKER_MSG_CONNECTION, /* a newly accepted client socket */
	WORKER_MSG_CANCEL,     /* cancel what this worker's client is running */
	WORKER_MSG_DRAIN,      /* graceful shutdown started: refuse new work */
	WORKER_MSG_STOP,       /* close everything now and leave the loop */
	WORKER_MSG_CONNECT,    /* open a backend connection for a pool (a slot is reserved) */
	WORKER_MSG_ADMIN_REPLY, /* the main thread finished an admin console request */
	WORKER_MSG_RETIRE,     /* a cutover is over: close connections to retired instances */
	WORKER_MSG_CUTOVER,    /* a cutover began: session-pooled and pinned clients finish their transaction and go */
	WORKER_MSG_KILL,       /* KILL from the admin console: close this client */
	WORKER_MSG_SWEEP,      /* close parked servers that became unusable (failover, cutover) */
	WORKER_MSG_MIGRATE,    /* detach a parked server so that another worker's client can use it */
	WORKER_MSG_NOTIFY,     /* a NotificationResponse (data) for this worker's clients ids (listen.c) */
	WORKER_MSG_LISTEN_READY, /* the LISTEN connection listens on what client_id asked (or text: why not) */
	WORKER_MSG_ADOPT,      /* a client another worker moved here (client), detached from its loop */
};

struct worker_msg {
	struct list_node node;
	enum worker_msg_type type;
	int fd;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	uint64_t client_id;
	enum pool_endpoint endpoint;
	struct pool *pool;
	struct target *target;
	bool ok;
	char *text; /* ADMIN_REPLY: the command tag or the error; LISTEN_READY: the error, or NULL */
	uint8_t *data;  /* NOTIFY: the whole message, owned */
	size_t data_len;
	uint64_t *ids;  /* NOTIFY: the clients it goes to, owned */
	int n_ids;
	void *client;   /* ADOPT: the struct client, now this worker's */
};

/*
 * Counters of one worker, written only by its thread (relaxed atomic stores,
 * so that SHOW STATS may read them from another) and summed when asked.
 */
struct worker_stats {
	uint64_t clients_accepted;
	uint64_t logins_failed;
	uint64_t transactions;     /* backends given back at the end of a transaction */
	uint64_t queries;          /* Query and Sync messages relayed */
	uint64_t borrow_waits;     /* clients that had to queue for a backend */
	uint64_t borrow_timeouts;
	uint64_t servers_opened;
	uint64_t server_connect_failures;
	uint64_t sessions_pinned;
	uint64_t server_handoffs;  /* backends detached from this worker for a client on another */
	uint64_t clients_moved;    /* idle clients this worker gave to another (worker_spread_percent) */
	uint64_t send_batches;     /* loop passes whose sends went in one io_uring_enter (batch_sends) */
	uint64_t batched_sends;    /* ... and the sends they made */
	uint64_t parses_answered;  /* Parses of clients outside a transaction answered without a backend */
	uint64_t parses_unjudged;  /* ... of which no backend had accepted the text before */
	uint64_t tls_handshake_failures;
	uint64_t refused_max_client_connections; /* clients refused at once, by the limit they hit */
	uint64_t refused_max_login_connections;
	uint64_t refused_require_tls;
	uint64_t pins_by_reason[SQL_PIN_TOO_LONG + 1]; /* sessions pinned, by enum sql_pin_reason */
	struct histogram client_login;   /* connect to authenticated: TLS and the password exchange */
	struct histogram server_connect; /* server_connect() to ready: DNS, TCP, TLS, login, setup */
};

#define STAT_INC(w, field) __atomic_store_n(&(w)->stats.field, (w)->stats.field + 1, __ATOMIC_RELAXED)
#define STAT_ADD(w, field, n) __atomic_store_n(&(w)->stats.field, (w)->stats.field + (n), __ATOMIC_RELAXED)

/*
 * What a worker does with the work it is handed, on its own thread: the
 * session layer's side of the loop (dispatch.c), installed at start-up.
 */
struct worker_ops {
	/* One inbox message, in order (DRAIN and STOP have set draining and stopping); worker.c frees it. */
	void (*message)(struct worker *w, struct worker_msg *msg);
	/* After the inbox, whenever the worker is woken: the waits the pool ended (its ready list). */
	void (*woken)(struct worker *w);
	/* Free what closed (reap_clients, reap_servers): no callback of this pass refers to it any more. */
	void (*reap)(struct worker *w);
	/* Once a second. */
	void (*janitor)(struct worker *w, uint64_t now_usec);
};

struct worker {
	int id;
	const struct worker_ops *ops;
	int config_reader; /* config_reader_register(), from the worker's own thread */
	struct worker_stats stats;
	/*
	 * Clients with no buffered input read into this, so that an idle
	 * client holds no input buffer of its own (see client_on_event).
	 */
	struct iobuf scratch;
	bool scratch_busy;
	pthread_t thread;
	struct event_base *base;
	struct evdns_base *dns;
	/*
	 * The base has no lock (EVENT_BASE_FLAG_NOLOCK): only this worker's
	 * thread touches its events. Another thread wakes it through wake_fd
	 * (an eventfd), written only when wake_pending was clear.
	 */
	struct event *wake_event; /* the wake's callback, activated by this thread or by wake_fd_event */
	struct event *wake_fd_event;
	int wake_fd;
	bool wake_pending; /* wake_fd written and not yet read; atomic */
	struct event *reap_event; /* frees closed objects after the current callbacks */
	struct event *janitor_event; /* once a second: client timeouts */
	/* Clients waiting for a backend, by connection_borrow_timeout deadline (client_backend.c). */
	struct list_node borrow_waits;
	struct event *borrow_timer;  /* for the first deadline; made on first use */
	uint64_t borrow_timer_at;    /* the deadline it is set for; 0: not set */

	pthread_mutex_t inbox_lock;
	struct list_node inbox; /* struct worker_msg, under inbox_lock */

	struct list_node ready; /* struct pool_waiter: waits the pool has ended; under the pool lock */

	/* Owned by the worker thread alone; worker.c only sees whether they are empty. */
	struct list_node clients;      /* struct client.worker_node */
	struct list_node servers;      /* struct server.worker_node: attached to this worker */
	struct list_node reap_clients; /* closed, freed by reap_event (ops->reap) */
	struct list_node reap_servers;
	/*
	 * For busy polling (busy_poll_us): events handled so far, and sessions
	 * in a transaction or waiting for a backend.
	 */
	unsigned long activity;
	int n_busy;
	uint64_t busy_poll_checked; /* when the machine's load was last looked at */
	bool busy_poll_ok;          /* it had an idle CPU then */
	bool draining;
	bool stopping;
	/*
	 * Spreading clients over the workers (worker_spread_percent): its
	 * clients (written by this thread, read by the main thread's balancer),
	 * how many of them it should give away and to which worker (set by the
	 * balancer, taken by this thread), and the clients it chose this pass
	 * (moved by its ops' reap, after the callbacks that may hold them).
	 */
	int n_clients;   /* atomic */
	int move_quota;  /* atomic */
	int move_to;     /* atomic: a worker id */
	int n_moving;
	struct worker_move {
		void *client;
		struct worker *to;
	} moving[16];
	/* The balancer's view of its CPU time (main thread only). */
	clockid_t cpu_clock;
	bool cpu_clock_ok;
	uint64_t cpu_seen_ns;
	double load; /* share of one CPU it used lately, smoothed */
};

extern struct worker **workers;
extern int n_workers;

/* Create and start n workers doing what ops says; returns 0 or -1 with a logged reason. */
int workers_start(int n, const struct worker_ops *ops);

/*
 * The workers that take new clients now (1 to n_workers; worker_spread_percent).
 * workers_balance() runs on the main thread a few times a second: it reads
 * each worker's CPU time, takes a worker in or out, and sets the quotas of
 * clients to move that worker_move_target() hands out.
 */
int workers_active(void);
void workers_balance(void);
/*
 * After a reload (main thread): with worker_spread_percent now 0, every
 * worker takes clients and no client moves from here on, rather than from
 * workers_balance()'s next tick (until then the quotas set under the old
 * setting would still move clients, and only the active workers take new ones).
 */
void workers_spread_reloaded(void);
#define WORKERS_BALANCE_MS 250

/*
 * A client of w has just become idle between transactions: the worker it
 * should move to, or NULL to stay. Cheap (one relaxed load) when nothing is
 * to move; a non-NULL answer takes one from w's quota.
 */
struct worker *worker_move_target(struct worker *w);

/* Count a client in or out of w (it was attached to or left w). */
static inline void worker_count_client(struct worker *w, int delta)
{
	__atomic_add_fetch(&w->n_clients, delta, __ATOMIC_RELAXED);
}

void worker_post_adopt(struct worker *w, void *client);

/* Post STOP to every worker and join them. */
void workers_stop(void);

/* Post a message of the given type (no payload) to every worker. */
void workers_broadcast(enum worker_msg_type type);

/* Hand an accepted socket to the next worker, round robin. */
void workers_dispatch_connection(int fd, const struct sockaddr *addr, socklen_t addrlen, enum pool_endpoint endpoint);

void worker_post_cancel(struct worker *w, uint64_t client_id);

/* The answer to an admin console request of client_id (text is copied). */
void worker_post_admin_reply(struct worker *w, uint64_t client_id, bool ok, const char *text);

/* Ask w to detach its parked server server_id and give it to the pool's oldest waiter. */
void worker_post_migrate(struct worker *w, uint64_t server_id);

/* A NotificationResponse (msg, len bytes, copied) for w's clients ids (n of them, copied). */
void worker_post_notify(struct worker *w, const uint64_t *ids, int n, const uint8_t *msg, size_t len);

/* The LISTEN connection listens on every channel client_id asked for; error: it could not (copied). */
void worker_post_listen_ready(struct worker *w, uint64_t client_id, const char *error);

/* Close client_id, wherever it lives (KILL). */
void worker_post_kill(struct worker *w, uint64_t client_id);

/* Ask the next worker to open a backend connection for pool (from a thread that is not a worker). */
void workers_post_connect(struct pool *pool, struct target *target);

/* Wake a worker so that it looks at its inbox and ready list. Thread safe. */
void worker_wake(struct worker *w);

/* Ask for the reap callback to run once the current callbacks are done (from w's own thread). */
void worker_schedule_reap(struct worker *w);

/* Add up every worker's counters. */
void workers_sum_stats(struct worker_stats *out);

/* The worker running on this thread, or NULL on the main thread. */
struct worker *worker_self(void);

#endif
