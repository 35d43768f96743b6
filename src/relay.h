/*
 * relay.h: what a logged-in client sends, message by message: with a
 * backend, framed and handed to it (through the reply tracker with
 * transaction pooling); between transactions, with no backend, answered
 * here, dropped, or found to need a backend. It has no state machine and
 * logs nothing: each call reads the client's input, writes what goes to the
 * client or its backend, and returns what happened (enum relay_outcome);
 * client.c changes the client's state and goes on. Below client.c, above
 * server.c and reply.c.
 */
#ifndef PGMUX_RELAY_H
#define PGMUX_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include "iobuf.h"
#include "reply.h"

struct server;

/*
 * LISTEN and UNLISTEN pgmux answers itself (relay_listen.c): what the client
 * does with the commands of one statement (all of a Query's, or one
 * Execute's). WAIT: they are applied, but the LISTEN takes effect only once
 * the LISTEN connection listens, and the reply must wait until then.
 */
enum relay_listen_status {
	RELAY_LISTEN_DONE,
	RELAY_LISTEN_WAIT,
	RELAY_LISTEN_REFUSED, /* why says why; nothing was applied */
};
struct relay_refusal;
typedef enum relay_listen_status (*relay_listen_apply)(void *arg, const struct sql_listen_command *cmds, int n,
							 struct relay_refusal *why);

/* What the relay keeps for one client (struct client has one). */
struct relay {
	struct reply_session session; /* its prepared statements, as the reply tracker keeps them */
	uint32_t ignore_remaining;    /* no backend: bytes still to drop of a message none needs */
	bool discard_until_sync;      /* a failed batch: its messages are dropped up to its Sync */
	bool waiting;                 /* the next message waits for the answer to an earlier batch */
	bool replies_full;            /* max_pending_replies are owed: reading waits until half are answered */
	relay_listen_apply listen_apply; /* LISTEN answered here: the client's side, called with the
	                                  * session's hook_arg (NULL: never) */
	size_t listen_wait_at;        /* after a LISTEN answered here: where its held replies begin in out */
};

enum relay_outcome {
	RELAY_NEED_MORE,      /* took what it could: nothing to act on until more bytes arrive */
	RELAY_WAIT,           /* the next message waits for replies (waiting or replies_full says why) */
	RELAY_TERMINATE,      /* the client sent Terminate */
	RELAY_FATAL,          /* refused: a FATAL with the refusal, then close */
	/* With no backend: */
	RELAY_ANSWERED,       /* a message was answered here or dropped (a failed batch, COPY data, a bare
	                       * Flush): call again */
	RELAY_PARSE_ANSWERED, /* likewise, a Parse (counted in SHOW STATS) */
	RELAY_LOST,           /* the transaction died with the client's last backend: its next statement
	                       * fails (the client answers it) */
	RELAY_BORROW,         /* the next message and its batch are here, and need a backend */
	RELAY_BORROW_OR_ANSWER, /* a Parse a backend should judge, if one can be had now: if not,
	                         * relay_answer_unjudged() */
};

/* Why pgmux refuses what a client sent. */
struct relay_refusal {
	const char *sqlstate;
	char message[256];
};

void relay_init(struct relay *r, const struct reply_hooks *hooks, void *hook_arg);
void relay_free(struct relay *r);

/*
 * The client's input (in) to its backend s: a message pgmux looks inside
 * (with tracking: every one but COPY data and a bare Flush) waits until
 * whole and goes through the reply tracker, others pass as they arrive.
 * Never RELAY_ANSWERED or later.
 */
enum relay_outcome relay_to_backend(struct relay *r, struct iobuf *in, struct server *s, bool tracking,
				    struct relay_refusal *why);

/*
 * The client's input (in) with no backend; what pgmux answers goes to out.
 * tracking: transaction pooling (else every message needs a backend);
 * transaction_lost: the client's next statement is to fail.
 */
enum relay_outcome relay_between_transactions(struct relay *r, struct iobuf *in, struct iobuf *out, bool tracking,
					      bool transaction_lost, struct relay_refusal *why);

/*
 * With no backend and transaction pooling: is the client's next message a
 * Query of only LISTEN and UNLISTEN statements, or the first of an
 * extended-protocol batch that only prepares and runs such statements? Then
 * it is answered into out (RELAY_ANSWERED), its commands handed to apply;
 * *wait_at is where in out the first reply that must wait (RELAY_LISTEN_WAIT)
 * begins, or SIZE_MAX. RELAY_NEED_MORE: the batch is not all here.
 * RELAY_BORROW: it is not one (go on as usual). RELAY_FATAL: why says why.
 */
enum relay_outcome relay_listen(struct relay *r, struct iobuf *in, struct iobuf *out, relay_listen_apply apply,
				void *arg, size_t *wait_at, struct relay_refusal *why);

/*
 * The client's Parse at the head of in, when no backend can judge it
 * without waiting for another client: answered here unjudged.
 */
enum relay_outcome relay_answer_unjudged(struct relay *r, struct iobuf *in, struct iobuf *out,
					 struct relay_refusal *why);

#endif
