/*
 * reply.h: the reply tracker. With transaction pooling a client's messages go
 * to whichever backend serves it now, its named statements under names pgmux
 * chose, with messages of pgmux's own in between (a Parse the backend lacks,
 * a Close to make room); some of the client's messages pgmux answers itself.
 * The tracker decides all of that: for each frontend message, forward it,
 * rewrite it, answer it here or let it wait; for each backend message,
 * forward it or swallow it, which replies pgmux owes the client after it, and
 * whether it ends the transaction (release). It keeps, per backend, the queue
 * of replies the client is owed in order, and per client its statements.
 *
 * It does no I/O and knows neither sockets nor clients, servers or pools: it
 * writes what must be sent into buffers its caller gives it, returns its
 * decisions, and asks the client's session what a text does through hooks.
 * server.c and client.c call it; tests/unit/test_reply.c replays recorded
 * conversations of real clients through it.
 */
#ifndef PGMUX_REPLY_H
#define PGMUX_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "iobuf.h"
#include "prepared.h"
#include "proto.h"
#include "sqlscan.h"
#include "strmap.h"

/*
 * PostgreSQL keeps a prepared statement under the first NAMEDATALEN - 1 (63)
 * bytes of its name: longer names that agree on those are one statement.
 * The tracker keys the client's statements the same way.
 */
#define REPLY_STMT_KEY_LEN 63

/*
 * What a text does (SQL_EFFECT_* bits) that means its session's settings
 * must be read back after it runs; a statement whose text does is marked
 * sets_session, and each run of it counts as doing it again.
 */
#define REPLY_SETTINGS_EFFECTS \
	(SQL_EFFECT_SET_SESSION | SQL_EFFECT_RESET_ALL | SQL_EFFECT_DISCARD_ALL | SQL_EFFECT_OPAQUE)

/* What the backend will answer to one message it was sent, in order. */
enum reply_kind {
	/* The client's own messages: their replies are relayed. */
	REPLY_PARSE,         /* ParseComplete */
	REPLY_BIND,          /* BindComplete */
	REPLY_DESCRIBE,      /* (ParameterDescription) RowDescription or NoData */
	REPLY_EXECUTE,       /* (rows) CommandComplete, PortalSuspended or EmptyQueryResponse */
	REPLY_CLOSE,         /* CloseComplete of a portal (the client's Close of a statement is owed) */
	REPLY_SYNC,          /* ReadyForQuery */
	REPLY_QUERY,         /* everything up to ReadyForQuery */
	REPLY_FUNCTION_CALL, /* FunctionCallResponse, ReadyForQuery */
	REPLY_FLUSH_REFUSED, /* a Flush with a body: its only reply is the error that refuses it */
	REPLY_PARSE_REFUSED, /* the client's Parse of a name it has already: likewise (see reply.c) */
	/* Messages of pgmux's own: their replies are swallowed. */
	REPLY_OWN_PARSE,         /* a Parse the backend lacked, or one that judges a text */
	REPLY_OWN_CLOSE,         /* a Close that makes room (max_prepared_statements), or ends a judging Parse */
	REPLY_OWN_UNNAMED_CLOSE, /* a Close of the unnamed statement another client may have left */
	/* Replies pgmux owes the client for a message it answered itself, sent in turn. */
	REPLY_OWED_PARSE, /* ParseComplete: the backend had the statement */
	REPLY_OWED_CLOSE, /* CloseComplete: the client's Close of a statement */
};

const char *reply_kind_name(enum reply_kind kind);

struct pending_reply {
	enum reply_kind kind;
	char name[PREPARED_NAME_LEN + 1];         /* server-side statement of a Parse or Close (or "") */
	char client_name[REPLY_STMT_KEY_LEN + 1]; /* the client's name, for its Parse or Close */
	struct prepared_stmt *closed;             /* an owed Close: the client's statement, until answered */
};

/* What the tracker asks of the client's session (client.c; a test's stand-ins). */
struct reply_hooks {
	/* What a text the client sends does (SQL_EFFECT_* bits); it may pin the session. */
	unsigned (*scan)(void *arg, const char *sql, size_t len);
	/* The client binds its named statement st: a run of it may change the session. */
	void (*bound)(void *arg, const struct prepared_stmt *st);
	/* Has a backend of the pool accepted this statement (server-side name) before? */
	bool (*known)(void *arg, const char *server_name);
};

/* The client's side, kept across the backends it uses (struct client has one). */
/* A session's named prepared statements (made on its first; most sessions have none). */
struct reply_names {
	struct strmap stmts;      /* named prepared statements: key -> struct prepared_stmt */
	struct strmap stmt_names; /* server-side name -> the client's key, for error messages */
};

struct reply_session {
	struct reply_names *names; /* NULL until its first named statement: read through reply_stmts()
	                            * and reply_stmt_names(), add through reply_names_make() */
	uint8_t *unnamed_parse;   /* the client's last Parse of the unnamed statement, whole */
	uint32_t unnamed_parse_len; /* a message: at most max_packet_size, under 2^31 */
	uint32_t unnamed_parse_cap;
	bool unnamed_here;        /* the backend's unnamed statement is this client's (or none):
	                           * cleared at each link, see use_unnamed() in reply.c */
	bool reset_all_pending;   /* a RESET ALL was sent; its CommandComplete resets the session */
	const struct reply_hooks *hooks;
	void *hook_arg;
};

/* One backend connection's side (struct server has one). */
struct reply_tracker {
	/* Framing, with either pool mode. */
	int outstanding;          /* Query/Sync/FunctionCall sent and not yet answered */
	bool unsynced;            /* extended-protocol messages since the last Sync */
	/* Transaction pooling: replies are matched with what was sent. */
	bool tracking;
	bool skipping_until_sync; /* an error made the backend discard messages until Sync */
	struct pending_reply *items; /* ring of count entries from head */
	uint32_t head;
	uint32_t count;
	uint32_t cap;
	struct strmap *statements; /* the backend's prepared statements (server-side names), LRU order */
	struct reply_session *session; /* of the client linked now, or NULL */
};

/* Limits from the configuration, read by the caller at each call (a reload may change them). */
struct reply_limits {
	int max_backend_statements; /* max_prepared_statements */
	int max_client_statements;  /* max_client_prepared_statements */
	int max_packet_size;
};

static inline const struct strmap *reply_stmts(const struct reply_session *rs)
{
	return rs->names ? &rs->names->stmts : &strmap_empty;
}

static inline const struct strmap *reply_stmt_names(const struct reply_session *rs)
{
	return rs->names ? &rs->names->stmt_names : &strmap_empty;
}

/* The client's statement key now stands for server-side name st->server_name (for error texts; bounded). */
#define STMT_NAMES_SLACK 16
void reply_note_stmt_name(struct reply_session *rs, const struct prepared_stmt *st, const char *key);

/* The session's statement maps, made now if it had none. */
struct reply_names *reply_names_make(struct reply_session *rs);

void reply_session_init(struct reply_session *rs, const struct reply_hooks *hooks, void *hook_arg);
void reply_session_free(struct reply_session *rs);

/* statements: the backend's set of prepared statements, which the tracker keeps in step. */
void reply_tracker_init(struct reply_tracker *t, struct strmap *statements);
void reply_tracker_free(struct reply_tracker *t);

/* A client's session is linked to the backend; tracking: transaction pooling. */
void reply_link(struct reply_tracker *t, struct reply_session *rs, bool tracking);
void reply_unlink(struct reply_tracker *t);

/* ------------------------------------------------------------ frontend */

enum reply_action {
	REPLY_FORWARD,   /* send the message as it is, after what the tracker wrote to to_server */
	REPLY_REWRITTEN, /* the tracker wrote the message to send in its place (and any it needs first) */
	REPLY_ANSWERED,  /* pgmux answers it: its reply is owed to the client, in turn (reply_take_owed()) */
	REPLY_WAIT,      /* what it does hangs on an earlier batch still unanswered: nothing was done, try
	                  * again once replies arrived */
	REPLY_TOO_MANY,  /* a named statement over max_client_statements: the client is to be closed */
	REPLY_NO_MEMORY, /* nothing was done */
};

/*
 * A frontend message that starts to go to the backend (the first byte of it,
 * whole or not): follow the transaction state. Returns true when it is a
 * statement (Query or Sync) for the statistics. The tracked path below counts
 * its messages itself.
 */
bool reply_count_frontend(struct reply_tracker *t, uint8_t type);

/*
 * A whole frontend message (type, length, body: len bytes) to the backend,
 * with tracking on. tx_status is the backend's from its last ReadyForQuery.
 * Whatever must reach the backend before or instead of the message is
 * appended to to_server (marked failed if memory ran out).
 */
enum reply_action reply_frontend(struct reply_tracker *t, const uint8_t *msg, size_t len, char tx_status,
				 const struct reply_limits *limits, struct iobuf *to_server);

/* ------------------------------------------------------------ backend */

enum reply_statement {
	REPLY_STATEMENT_NONE,
	REPLY_STATEMENT_ACCEPTED, /* the backend accepted a Parse of statement_name */
	REPLY_STATEMENT_REFUSED,  /* it refused one */
};

struct reply_verdict {
	bool forward;       /* relay the message to the client; false: swallow it (the reply to pgmux's own) */
	bool owed;          /* replies owed to the client are due after it (reply_take_owed()) */
	bool release;       /* a ReadyForQuery 'I' that ends the transaction: nothing in flight once the
	                     * owed replies went */
	bool session_reset; /* DISCARD ALL, or RESET after a RESET ALL: the backend's parameters are its defaults */
	bool broken;        /* the backend accepted what it had to refuse: close it (the client loses its
	                     * transaction, as with any lost backend) */
	enum reply_statement statement;
	char statement_name[PREPARED_NAME_LEN + 1];
};

/*
 * Must the caller hold a backend message of this type whole before it goes on?
 * With tracking, every one but DataRow and CopyData; else only ReadyForQuery
 * and ParameterStatus. (ErrorResponse is the caller's to look at.)
 */
static inline bool reply_holds_whole(const struct reply_tracker *t, uint8_t type)
{
	return type == BE_READY_FOR_QUERY || type == BE_PARAMETER_STATUS ||
	       (t->tracking && type != BE_DATA_ROW && type != FE_COPY_DATA);
}

/* A whole backend message (type, body of len bytes) while a client is linked. */
void reply_backend(struct reply_tracker *t, uint8_t type, const uint8_t *body, size_t len,
		   struct reply_verdict *out);

/*
 * Take the replies owed to the client that are now at the head of the queue:
 * their bytes go to out (at most cap bytes; 5 each). Returns the number of
 * bytes; call again until it returns 0.
 */
size_t reply_take_owed(struct reply_tracker *t, uint8_t *out, size_t cap);

/* Is a reply owed to the client due now (at the head of the queue)? */
static inline bool reply_owed_due(const struct reply_tracker *t)
{
	return t->count > 0 &&
	       (t->items[t->head].kind == REPLY_OWED_PARSE || t->items[t->head].kind == REPLY_OWED_CLOSE);
}

/*
 * An ErrorResponse (body of len bytes) may name a statement by pgmux's name
 * (a Bind sent before the Parse it relied on failed, a wrong parameter
 * count): write to out the message with the client's names instead. Returns
 * false, out untouched, when there is nothing to translate.
 */
bool reply_translate_error(const struct reply_session *rs, const uint8_t *body, size_t len, struct iobuf *out);

/* Nothing sent to the backend awaits an answer, and it is not discarding messages. */
static inline bool reply_settled(const struct reply_tracker *t)
{
	return t->outstanding == 0 && !t->unsynced && t->count == 0 && !t->skipping_until_sync;
}

/* ------------------------------------------------------------ no backend */

/*
 * What pgmux answers alone for a client outside a transaction, with no
 * backend (see reply.c).
 */
enum reply_idle {
	REPLY_IDLE_ANSWERED,         /* answered into to_client; *consumed bytes of input are done with */
	REPLY_IDLE_NEED_MORE,        /* the message (or its batch) is not all here yet */
	REPLY_IDLE_BORROW,           /* it needs a backend */
	REPLY_IDLE_BORROW_OR_ANSWER, /* a Parse that a backend should judge, if one can be had now */
	REPLY_IDLE_TOO_MANY,         /* a named statement over max_client_statements */
	REPLY_IDLE_NO_MEMORY,
};

struct reply_idle_result {
	size_t consumed;      /* input bytes answered */
	bool parse_answered;  /* a Parse was answered (counted in SHOW STATS) */
	bool discard_batch;   /* an error was answered: drop the rest of the batch up to its Sync */
};

/*
 * The client's input (avail bytes at in, beginning with a whole header) when
 * it has no backend. unjudged: answer a Parse even though no backend judged
 * its text (none can be had without waiting for another client).
 */
enum reply_idle reply_answer_idle(struct reply_session *rs, const uint8_t *in, size_t avail, bool unjudged,
				  const struct reply_limits *limits, struct iobuf *to_client,
				  struct reply_idle_result *out);

#endif
