/*
 * listen.h: LISTEN and NOTIFY with transaction pooling, held by pgmux. A
 * client's LISTEN does not go to a backend (it would pin the session): pgmux
 * keeps one connection per pool that listens on the union of the channels
 * its clients asked for, and hands each notification to every client that
 * listens on its channel. That connection, and the registry of who listens
 * on what, belong to the listen thread (its own event_base): a worker's
 * client subscribes and unsubscribes here under the registry lock, and what
 * reaches a client (a notification, "your LISTEN took effect") comes through
 * its worker's inbox (worker_post_notify(), worker_post_listen_ready()), so
 * that nothing here touches a client. See src/README.md, "LISTEN and NOTIFY".
 */
#ifndef PGMUX_LISTEN_H
#define PGMUX_LISTEN_H

#include <stdbool.h>
#include <stdint.h>

struct pool;

/* Start and stop the listen thread (main thread). */
int listen_start(void);
void listen_stop(void);

enum listen_result {
	LISTEN_DONE,  /* the connection listens on it already: the LISTEN has taken effect */
	LISTEN_WAIT,  /* it will once the connection has run LISTEN: listen_wait() */
	LISTEN_ERROR, /* not running (start-up failed, shutdown) */
};

/*
 * Client client_id, on worker worker_id, of pool listens on channel (a name
 * as the server resolved it) from now on. Any thread; the caller keeps its
 * own list of its channels (and its bound).
 */
enum listen_result listen_subscribe(struct pool *pool, uint64_t client_id, int worker_id, const char *channel);

/*
 * After one or more LISTEN_WAIT: the client's worker is sent one
 * WORKER_MSG_LISTEN_READY once the connection listens on all of them, or
 * with an error when it could not (then the client's LISTENs failed: it
 * should unsubscribe them).
 */
void listen_wait(struct pool *pool, uint64_t client_id, int worker_id);

/* Client client_id of pool no longer listens on channel. */
void listen_unsubscribe(struct pool *pool, uint64_t client_id, const char *channel);

/* How many LISTEN connections are open now (SHOW LISTENERS, tests). */
int listen_connections(void);

/* SHOW LISTENERS: fn for each pool that has a LISTEN connection or listeners, under the registry lock. */
struct listen_info {
	const char *user, *database;
	const char *instance; /* where its connection is, "" when it has none */
	int backend_pid;      /* 0 when it has none */
	int channels;         /* channels someone listens on */
	int subscriptions;    /* (client, channel) pairs */
	uint64_t notifications; /* delivered to its clients so far (one per notification, not per client) */
	uint64_t reconnects;
};
void listen_for_each(void (*fn)(const struct listen_info *info, void *arg), void *arg);

#endif
