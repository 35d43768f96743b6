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

/*
 * What pgmux expects back for a message it sent to the backend, in order.
 * Kinds: the frontend message type ('P', 'B', 'D', 'E', 'C', 'S', 'Q', 'F')
 * whose reply is relayed; 'p' and 'c' for a Parse or Close pgmux injected,
 * whose reply is swallowed; '1' and '3' for a ParseComplete or CloseComplete
 * pgmux owes the client for a message it answered itself, sent when it
 * reaches the head of the queue so that replies keep their order. 'H' is a
 * Flush with a body, and 'x' a client's Parse of a name it has already (see
 * server_parse_taken()): their only reply is the error that refuses them.
 * 'u' is pgmux's Close of the unnamed statement (server_unnamed_reset()),
 * whose CloseComplete is swallowed.
 */
struct pending_reply {
	char kind;
	char name[PREPARED_NAME_LEN + 1]; /* server-side statement of a 'P', 'p', 'c' or '1' */
	char client_name[64];             /* the client's name for a 'P', '1' or '3' */
	struct prepared_stmt *closed;     /* a '3': the client's statement, until the Close is answered */
};

struct reply_queue {
	struct pending_reply *items;
	uint32_t head;
	uint32_t count;
	uint32_t cap;
};

struct server;
/* Called when a query of pgmux's own ends; ok is false when it failed (error in server->query_error). */
typedef void (*server_query_done_fn)(struct server *s, bool ok, void *arg);

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
	struct client *client;
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

	/* Relay framing. */
	uint32_t forward_remaining; /* body bytes of the current message still to pass through */
	int outstanding;            /* Query/Sync/FunctionCall sent and not yet answered */
	bool unsynced;              /* extended-protocol messages since the last Sync */
	char tx_status;             /* from the last ReadyForQuery */

	/* A query of pgmux's own. */
	server_query_done_fn query_done;
	void *query_arg;
	char *query_error;          /* message of the first ErrorResponse */
	char query_sqlstate[6];
	char *query_value;          /* first column of the first row */

	/* Parameters the server reported (ParameterStatus), and their values at connect time. */
	struct server_param *params;
	int n_params;
	struct strmap defaults;

	/* Transaction pooling: session state pgmux carries between backends. */
	struct reply_queue replies;
	bool skipping_until_sync;  /* an error made the server discard messages until Sync */
	struct strmap prepared;    /* server-side statement names this backend has, LRU order */
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
	return s->outstanding == 0 && !s->unsynced && s->tx_status == 'I' && s->forward_remaining == 0 &&
	       s->replies.count == 0 && !s->skipping_until_sync && iobuf_len(&s->io.in) == 0 &&
	       iobuf_len(&s->io.out) == 0;
}

/* Queue what the backend will answer to a message just sent (transaction pooling). */
void server_expect(struct server *s, char kind, const char *name);

/*
 * The client's Close of its statement client_name: answered by pgmux, in
 * order, leaving the server's statement for others. The client's name goes
 * at once, but the statement comes back if the server skips the Close
 * (after an error earlier in its batch), as PostgreSQL keeps it then.
 */
void server_close_owed(struct server *s, const char *client_name);

/*
 * The client's Parse of st under a name it has already given to statement
 * taken: let the backend refuse it (42P05, or what is wrong with the text).
 */
void server_parse_taken(struct server *s, const struct prepared_stmt *taken, const struct prepared_stmt *st);

/*
 * Close the unnamed statement on s, which an earlier client of s may have
 * left there (the protocol keeps it until the next Parse of it or Query):
 * before a client that has not Parsed it on s in this transaction uses it.
 * Should the server skip that Close, the client's unnamed_here goes back to
 * false.
 */
void server_unnamed_reset(struct server *s);

/* Make sure the backend has statement st before a message uses it (sends its Parse if needed). */
void server_ensure_prepared(struct server *s, const struct prepared_stmt *st);

/*
 * Is a Parse or Close of the client's statement client_name still
 * unanswered in an earlier batch (a Sync follows it in the reply queue)?
 * The server skips it if that batch fails, so whether the statement exists
 * is not known yet. With owed_only, of the Parses only one pgmux answered
 * itself counts (the backend had the statement already, so a message using
 * it would work regardless).
 */
bool server_parse_unsettled(const struct server *s, const char *client_name, bool owed_only);

/*
 * Does the backend's copy of statement server_name hang on an earlier batch
 * still unanswered (a Parse or Close of it, with a Sync after it in the
 * reply queue)? The server skips them if that batch fails, so whether the
 * backend has it is not known yet: a message that relies on it (or prepares
 * it) must wait. A Parse by the client's own name client_name (may be NULL)
 * does not count: were it skipped, the statement would not exist for the
 * client either, and the backend's "does not exist" is the right answer.
 */
bool server_statement_unsettled(const struct server *s, const char *server_name, const char *client_name);

/*
 * Record that a client's Parse of st (named client_name) is being sent, or
 * answered from the backend's cache. If the server rejects it, the client's
 * name is dropped again, as PostgreSQL would never have created it.
 * transaction_control: the text begins or ends transactions (see there).
 */
void server_parse(struct server *s, const struct prepared_stmt *st, const char *client_name,
		  bool transaction_control);

#endif
