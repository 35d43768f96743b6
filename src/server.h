/*
 * server.h: one backend connection. libpq opens it (non-blocking, all of its
 * authentication methods and TLS); after that pgmux relays protocol messages
 * over the same socket (and libpq's SSL object), framing them just enough to
 * see where transactions end. The PGconn is kept until the connection closes
 * because it owns the socket and the SSL object.
 */
#ifndef PGMUX_SERVER_H
#define PGMUX_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "io.h"
#include "list.h"
#include "pgconn.h"
#include "prepared.h"
#include "reply.h"
#include "strmap.h"

struct client;
struct pool;
struct target;
struct worker;

enum server_state {
	SERVER_RESOLVING,  /* evdns looking up the target's host name */
	SERVER_CONNECTING, /* libpq's connection handshake */
	SERVER_INTERNAL,   /* running a query of pgmux's own: setup, reset, client parameters */
	SERVER_IDLE,       /* parked in its pool, attached to no worker */
	SERVER_ACTIVE,     /* linked to a client, relaying */
	SERVER_CLOSED,     /* waiting to be freed */
};

struct server_param {
	char *name;
	char *value;
};

struct server;
/* Called when a query of pgmux's own ends; ok is false when it failed (error in server->query_error). */
typedef void (*server_query_done_fn)(struct server *s, bool ok, void *arg);

/*
 * What a server tells its owners. server.c calls nothing above it: the
 * client linked to a server hears through the server_client_ops given to
 * server_link(), the pool through the server_pool_ops it installed once
 * (server_set_pool_ops()). Unless said otherwise a callback may close s or
 * hand it away, and the server checks its state after each.
 */
struct server_client_ops {
	/* Bytes for the client, in order: the backend's replies, and replies pgmux owes it. */
	void (*deliver)(struct client *c, const uint8_t *bytes, size_t n);
	/* Is the client's output too full to take more now? (Back-pressure: s stops reading.) */
	bool (*congested)(const struct client *c);
	/*
	 * Replies arrived (delivered already). over: they end the client's
	 * transaction, nothing is in flight, and s may go back to the pool
	 * (pgmux's last use of s).
	 */
	void (*replies_arrived)(struct client *c, struct server *s, bool over);
	/* s's output to the backend drained: the client may be read again. */
	void (*drained)(struct client *c);
	/* A ReadyForQuery reached the client (the tracker has counted it): a query, maybe a transaction, ended. */
	void (*ready_for_query)(struct client *c, struct server *s);
	/* The backend reported a parameter's value (ParameterStatus). */
	void (*parameter)(struct client *c, const char *name, const char *value);
	/* A NotificationResponse (its body): false drops it. */
	bool (*notification)(struct client *c, const uint8_t *body, size_t len);
	/* s is closing under its client, unlinked already (a lost backend). */
	void (*lost)(struct client *c, struct server *s, const char *sqlstate, const char *message);
};

struct server_pool_ops {
	/* The login of a new connection of pool: its user, database, and password as it is now. */
	void (*login)(const struct pool *pool, const char **user, const char **database, const char **password);
	/* Must a new connection ask its setup question (the server's limit, whether writes are opaque)? */
	bool (*setup_wanted)(const struct server *s);
	/* The answer: what the server allows ordinary roles, and whether the database's code makes writes opaque. */
	void (*setup_answered)(struct server *s, int server_max, bool writes_opaque);
	/* A new connection is connected and set up: count it and hand it out. */
	void (*ready)(struct server *s);
	/* A new connection failed; answered: the server refused the login (see server.c). */
	void (*connect_failed)(struct server *s, const char *sqlstate, const char *message, bool answered);
	/* s is clean and linked to no client: give it back (pgmux's last use of s). */
	void (*release)(struct server *s);
	/* s is closing: free its slot. */
	void (*forget)(struct server *s);
	/* The backend accepted, or refused, a Parse of this statement (server-side name). */
	void (*statement_accepted)(struct pool *pool, const char *server_name);
	void (*statement_refused)(struct pool *pool, const char *server_name);
	/* What a backend's end says about its instance: suspect it, or ask for a health check now. */
	void (*instance_suspect)(struct target *t);
	void (*instance_check)(struct target *t);
};

/* The pool's callbacks, installed once before the first connection (pool_init()). */
void server_set_pool_ops(const struct server_pool_ops *ops);

struct server {
	struct list_node pool_node;   /* pool idle list, under the pool lock */
	struct list_node worker_node; /* owner's servers list, or its reap list */
	struct list_node registry_node; /* every server, for SHOW SERVERS (registry lock) */
	uint64_t client_id;           /* of the client it serves (0: none); atomic, for SHOW SERVERS */
	uint64_t id;
	enum server_state state; /* atomic stores: server_set_state() */
	struct worker *worker; /* owner; NULL while parked */
	struct pool *pool;     /* atomic stores: server_set_pool() */
	struct target *target;
	PGconn *pg;
	struct io io;
	struct client *client;       /* linked to it (server_link()), or NULL */
	const struct server_client_ops *client_ops;
	char log_user[64];           /* the pool's user and database, for its log lines (63 bytes, as LOG_NAME) */
	char log_database[64];
	int backend_pid;       /* atomic, for SHOW SERVERS */
	int generation;              /* the target's generation when this connected */
	struct event *timer;         /* connect timeout */
	struct pgconn connect;       /* resolving and connecting (pgconn.c) */
	bool counted_connecting;     /* holds one of the target's n_connecting (pool lock) */
	bool counted_migrating;      /* holds one of its pool's n_migrating (pool lock) */
	bool reading_settings;       /* pgmux's query is the read-back of its client's settings (the
	                              * client, if still linked, waits in SETUP) */
	int session_end;             /* what its close will say about its instance: an enum session_end
	                              * (server.c), from a FATAL relayed before it */
	/*
	 * The FATAL (or PANIC) with which the server ended this session, if it
	 * sent one: its SQLSTATE and message, which the client gets instead of
	 * pgmux's own words (client_server_lost()). end_relayed: it went to the
	 * client as it was (session pooling), so nothing more is to be said.
	 */
	char end_sqlstate[6];
	char *end_message;
	bool end_relayed;
	bool answered;               /* a message came from the backend while relaying, since server_link() */
	bool end_unanswered;         /* the server's FATAL came before any other message since server_link():
	                              * none of what its client sent was answered */

	/* Relay framing. */
	uint32_t forward_remaining;  /* bytes of the backend's current message still to pass to the client */
	uint32_t frontend_remaining; /* bytes of the client's current message still to pass to the backend */
	char tx_status;              /* from the last ReadyForQuery */
	/* What the backend was sent and will answer, and what the client is owed (reply.h). */
	struct reply_tracker replies;

	/* A query of pgmux's own. */
	server_query_done_fn query_done;
	void *query_arg;
	char *query_error;          /* message of the first ErrorResponse */
	char query_sqlstate[6];
	char *query_value;          /* first column of the first row */
	/* NotificationResponses (their bodies) while pgmux's own queries run (client_listen_handover.c). */
	void (*query_notify)(struct server *s, const uint8_t *body, size_t len, void *arg);

	/* Parameters the server reported (ParameterStatus), and their values at connect time. */
	struct server_param *params;
	int n_params;
	struct strmap defaults;

	/* Transaction pooling: session state pgmux carries between backends. */
	struct strmap prepared;    /* server-side statement names this backend has, LRU order (replies
	                            * keeps it in step) */
	struct strmap applied;     /* unreported parameters pgmux set here (lower-case name -> value) */
	uint64_t params_fingerprint; /* of params (carried ones) and applied, when ..._valid */
	bool init_undone;          /* a reset (RESET, DISCARD ALL) undid init_query: run it before the next client */
	bool reset_before_reuse;   /* code pgmux could not read ran here: RESET ALL before the next client */
	bool params_fingerprint_valid;
	bool pinned;               /* served a pinned session: never shared again */
	bool cancel_sent;          /* a CancelRequest may still be on its way: never shared again */
	bool pinned_counted;       /* counted in its pool's n_pinned (pool lock) */
	bool served;               /* has been linked to a client (a fresh one has not; see pool_release()) */

	uint64_t created_usec;
	uint64_t last_used_usec;
	uint64_t connect_started_usec; /* server_connect() */
	uint64_t query_sent_usec;      /* the clock of the oldest query in flight (0: none); stats.c */
};

/*
 * Fields SHOW SERVERS reads from another thread (under the registry lock,
 * which their writers do not take): written with these relaxed atomic stores,
 * read with relaxed loads. Each value is shown as it was at some moment.
 */
static inline void server_set_state(struct server *s, enum server_state state)
{
	__atomic_store_n(&s->state, state, __ATOMIC_RELAXED);
}

static inline void server_set_pool(struct server *s, struct pool *pool)
{
	__atomic_store_n(&s->pool, pool, __ATOMIC_RELAXED);
}

static inline void server_set_pinned(struct server *s)
{
	__atomic_store_n(&s->pinned, true, __ATOMIC_RELAXED);
}

/* Start a new connection for pool to target on worker w (a slot was reserved by the pool). */
void server_connect(struct worker *w, struct pool *pool, struct target *target);

/* Attach a parked server to w's loop. Returns false when it turned out dead (it is then closed). */
bool server_attach(struct server *s, struct worker *w);

/* Detach from the current worker (before handing to the pool or another worker); counted as a hand-off. */
void server_detach(struct server *s);

/* Run sql as a query of pgmux's own; done is called from the server's callback. */
void server_run_query(struct server *s, const char *sql, server_query_done_fn done, void *arg);

/*
 * The client linked to s has left: if s is clean, give it back to the pool
 * (after server_reset_query when reset is set, as session pooling wants),
 * else close it (cancelling the statement it runs, if any). Pinned servers
 * are always closed.
 */
void server_client_gone(struct server *s, bool reset);

/*
 * The answer to a read-back of the session's settings (s->query_value, a JSON
 * object of name -> value) becomes what s has applied: the parameters set on
 * it beyond the reported ones. false, s->applied untouched, when it is not
 * such an object.
 */
bool server_applied_from_settings(struct server *s);

/*
 * Send a cancel request for s's current statement through the cancel thread
 * (s is never shared again). False when s has no live connection to cancel on.
 */
bool server_send_cancel(struct server *s, uint64_t client_id);

/* Before closing a backend that is alive: send a cancel for the statement it is running, if any. */
void server_cancel_running(struct server *s);

/* Close now (logs reason); the pool slot is freed. */
void server_close(struct server *s, const char *reason);

/* Free (reap). */
void server_free(struct server *s);

/* Write what the client queued for s; resume the client when it drained. */
void server_flush(struct server *s);

/*
 * Wait until no server_for_each() is under way: a pool freed after this
 * cannot be reached through a server's pool pointer that a SHOW SERVERS row
 * loaded before the pointer was cleared.
 */
void server_registry_barrier(void);

/* Call fn for every backend connection (SHOW SERVERS); fn must only read atomic or fixed fields. */
void server_for_each(void (*fn)(struct server *s, void *arg), void *arg);

const char *server_state_name(enum server_state state);

/* Look up a reported parameter. */
const char *server_param(const struct server *s, const char *name);
void server_set_param(struct server *s, const char *name, const char *value);

/* Is s between transactions, with nothing in flight? */
static inline bool server_is_clean(const struct server *s)
{
	return reply_settled(&s->replies) && s->tx_status == 'I' && s->forward_remaining == 0 &&
	       s->frontend_remaining == 0 && iobuf_len(&s->io.in) == 0 && iobuf_len(&s->io.out) == 0;
}

/*
 * Link s to client c, which hears from s through ops; rs is the client's
 * side of the reply tracking, tracking set with transaction pooling.
 */
void server_link(struct server *s, struct client *c, uint64_t client_id, const struct server_client_ops *ops,
		 struct reply_session *rs, bool tracking);

/* Unlink s from its client, whose transaction is over (before s goes back to the pool). */
void server_unlink(struct server *s);

/*
 * The linked client's next message, whole (with tracking, or one pgmux must
 * see whole): msg is its type, length and body, len bytes. Returns what the
 * reply tracker made of it (reply.h); it is on its way to the backend unless
 * REPLY_WAIT, REPLY_TOO_MANY or REPLY_NO_MEMORY.
 */
enum reply_action server_send_message(struct server *s, const uint8_t *msg, size_t len);

/* The first n bytes of a client's message of total bytes that passes through as it arrives. */
void server_send_start(struct server *s, const uint8_t *p, size_t n, size_t total);

/* More of such a message: takes up to avail bytes and returns how many (0: none is under way). */
size_t server_send_rest(struct server *s, const uint8_t *p, size_t avail);

/* Replies the client is owed, not yet answered by the backend (max_pending_replies). */
static inline uint32_t server_replies_pending(const struct server *s)
{
	return s->replies.count;
}

/* Bytes queued for the backend, not yet written. */
size_t server_output_pending(const struct server *s);

/* The linked client took what it was given: read the backend again (if s is active). */
void server_resume_reading(struct server *s);

#endif
