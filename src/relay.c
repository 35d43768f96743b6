/*
 * relay.c: a logged-in client's messages (see relay.h). With a backend they
 * go to it: with transaction pooling each message pgmux must look inside is
 * held whole and goes through the reply tracker (server_send_message()),
 * which may rewrite it, answer it or make it wait; the rest passes as it
 * arrives. Between transactions, with no backend, pgmux answers what it can
 * alone (reply_answer_idle()), drops what PostgreSQL would ignore, and says
 * when a backend must be borrowed: only once the batch the next message
 * begins is all here.
 */
#include "relay.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "pgmux.h"
#include "proto.h"
#include "server.h"

/* Input a client may queue before it has a backend (pipelined early queries). */
#define RELAY_EARLY_INPUT_LIMIT (64 * 1024)

void relay_init(struct relay *r, const struct reply_hooks *hooks, void *hook_arg)
{
	memset(r, 0, sizeof(*r));
	reply_session_init(&r->session, hooks, hook_arg);
}

void relay_free(struct relay *r)
{
	reply_session_free(&r->session);
}

static void relay_limits(struct reply_limits *limits)
{
	const struct config *cfg = config_current();

	limits->max_backend_statements = cfg->max_prepared_statements;
	limits->max_client_statements = cfg->max_client_prepared_statements;
	limits->max_packet_size = cfg->max_packet_size;
}

static enum relay_outcome relay_refuse(struct relay_refusal *why, const char *sqlstate, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static enum relay_outcome relay_refuse(struct relay_refusal *why, const char *sqlstate, const char *fmt, ...)
{
	va_list ap;

	why->sqlstate = sqlstate;
	va_start(ap, fmt);
	vsnprintf(why->message, sizeof(why->message), fmt, ap);
	va_end(ap);
	return RELAY_FATAL;
}

/* pgmux keeps each statement's text for as long as the client holds it: their number is bounded. */
static enum relay_outcome relay_too_many_statements(struct relay_refusal *why)
{
	return relay_refuse(why, SQLSTATE_PROGRAM_LIMIT_EXCEEDED,
			    "too many prepared statements: this session holds %d, the limit set by "
			    "max_client_prepared_statements",
			    config_current()->max_client_prepared_statements);
}

/*
 * Does pgmux hold a message of this type whole before it goes on? With
 * transaction pooling it does for every message it looks inside: all but
 * COPY data and a bare Flush.
 */
static bool relay_holds_whole(bool tracking, uint8_t type, uint32_t mlen)
{
	return tracking && (type != FE_FLUSH || mlen > 4) && type != FE_COPY_DATA && type != FE_COPY_DONE &&
	       type != FE_COPY_FAIL;
}

/*
 * Check the header of the client's next message (type, length p[1..4]):
 * false, with why set, when it is not a frontend message, longer than
 * max_packet_size, or one pgmux must hold whole longer than
 * max_buffered_message_size. Checked before a backend is borrowed for it,
 * and before any of it is buffered beyond a read.
 */
static bool relay_check_header(const uint8_t *p, bool tracking, struct relay_refusal *why)
{
	const struct config *cfg = config_current();
	uint32_t mlen = get_u32(p + 1);

	/*
	 * A password message belongs to authentication, which is over by now:
	 * PostgreSQL ends the session for one, and so does pgmux, before it
	 * reaches a backend (with transaction pooling, one other clients use).
	 */
	if (!proto_valid_frontend_type(p[0]) || p[0] == FE_PASSWORD || mlen < 4) {
		relay_refuse(why, SQLSTATE_PROTOCOL_VIOLATION, "invalid frontend message type %d", p[0]);
		return false;
	}
	if (mlen - 4 > (uint32_t)cfg->max_packet_size) {
		relay_refuse(why, SQLSTATE_PROGRAM_LIMIT_EXCEEDED, "message of %u bytes exceeds max_packet_size (%d bytes)",
			     mlen - 4, cfg->max_packet_size);
		return false;
	}
	if (mlen - 4 > (uint32_t)cfg->max_buffered_message_size && relay_holds_whole(tracking, p[0], mlen)) {
		relay_refuse(why, SQLSTATE_PROGRAM_LIMIT_EXCEEDED,
			     "message of %u bytes exceeds max_buffered_message_size (%d bytes), the largest message "
			     "pgmux holds whole with transaction pooling",
			     mlen - 4, cfg->max_buffered_message_size);
		return false;
	}
	return true;
}

enum relay_outcome relay_to_backend(struct relay *r, struct iobuf *in, struct server *s, bool tracking,
				    struct relay_refusal *why)
{
	r->waiting = false;
	r->replies_full = false;
	while (iobuf_len(in) > 0) {
		const uint8_t *p = iobuf_head(in);
		size_t avail = iobuf_len(in);
		uint8_t type;
		uint32_t mlen;
		size_t n;

		/* The rest of a message that passes as it arrives. */
		if ((n = server_send_rest(s, p, avail)) > 0) {
			iobuf_consume(in, n);
			continue;
		}
		if (avail < PROTO_HEADER_LEN)
			break;
		/* Until the backend has answered half of them (the client's replies_arrived callback). */
		if (tracking && server_replies_pending(s) >= (uint32_t)config_current()->max_pending_replies) {
			r->replies_full = true;
			return RELAY_WAIT;
		}
		if (!relay_check_header(p, tracking, why))
			return RELAY_FATAL;
		type = p[0];
		mlen = get_u32(p + 1);
		if (type == FE_TERMINATE) {
			iobuf_consume(in, PROTO_HEADER_LEN);
			return RELAY_TERMINATE;
		}
		/*
		 * A Flush has no reply, unless it has a body: then the server
		 * refuses it (and skips to the next Sync), and that error must be
		 * matched with it, not with the next message in the reply queue.
		 */
		if (relay_holds_whole(tracking, type, mlen)) {
			/* pgmux looks inside these: wait for the whole message. */
			if (avail < 1 + (size_t)mlen)
				break;
			switch (server_send_message(s, p, 1 + (size_t)mlen)) {
			case REPLY_WAIT:
				/* Until the earlier batch is answered. */
				r->waiting = true;
				return RELAY_WAIT;
			case REPLY_TOO_MANY:
				return relay_too_many_statements(why);
			case REPLY_NO_MEMORY:
				return relay_refuse(why, SQLSTATE_OUT_OF_MEMORY, "out of memory");
			case REPLY_FORWARD:
			case REPLY_REWRITTEN:
			case REPLY_ANSWERED:
				break;
			}
			iobuf_consume(in, 1 + (size_t)mlen);
			continue;
		}
		n = avail < 1 + (size_t)mlen ? avail : 1 + (size_t)mlen;
		server_send_start(s, p, n, 1 + (size_t)mlen);
		iobuf_consume(in, n);
	}
	return RELAY_NEED_MORE;
}

/*
 * Drop buffered messages up to the end of the failed batch, then say
 * ReadyForQuery. A Terminate ends the session here too, and a header pgmux
 * refuses elsewhere (a bad type or length) is refused here as well rather
 * than waited on.
 */
static enum relay_outcome relay_discard_batch(struct relay *r, struct iobuf *in, struct iobuf *out, bool tracking,
					      struct relay_refusal *why)
{
	while (r->discard_until_sync) {
		const uint8_t *p = iobuf_head(in);
		uint32_t mlen;
		uint8_t type;

		/* The rest of a message dropped as it arrives, rather than held whole. */
		if (r->ignore_remaining > 0) {
			size_t n = iobuf_len(in) < r->ignore_remaining ? iobuf_len(in) : r->ignore_remaining;

			iobuf_consume(in, n);
			r->ignore_remaining -= (uint32_t)n;
			if (r->ignore_remaining > 0)
				return RELAY_NEED_MORE;
			continue;
		}
		if (iobuf_len(in) < PROTO_HEADER_LEN)
			return RELAY_NEED_MORE;
		type = p[0];
		if (type == FE_TERMINATE)
			return RELAY_TERMINATE;
		if (!relay_check_header(p, tracking, why))
			return RELAY_FATAL;
		mlen = get_u32(p + 1);
		if (type != FE_SYNC && type != FE_QUERY) {
			r->ignore_remaining = 1 + mlen;
			continue;
		}
		if (iobuf_len(in) < 1 + (size_t)mlen)
			return RELAY_NEED_MORE;
		iobuf_consume(in, 1 + (size_t)mlen);
		r->discard_until_sync = false;
		proto_put_ready(out, 'I');
	}
	return RELAY_ANSWERED;
}

/*
 * Is enough of what the client sent here to borrow a backend for it? A
 * backend borrowed for part of a message waits, with every other client of
 * the pool, for the rest, which a stalled client never sends: two clients
 * could hold a pool of two that way. So the first message must be whole
 * (it is held whole anyway, within max_buffered_message_size), and so must
 * the batch it begins, up to what makes PostgreSQL answer (Sync, Flush,
 * Query, FunctionCall): before that the client expects nothing back, so
 * waiting for it costs it nothing. Past RELAY_EARLY_INPUT_LIMIT of a batch,
 * though, the backend is borrowed rather than more held.
 */
static bool relay_batch_ready(const struct iobuf *in)
{
	const uint8_t *p = iobuf_head(in);
	size_t avail = iobuf_len(in), off = 0;

	while (avail - off >= PROTO_HEADER_LEN) {
		uint8_t type = p[off];
		uint32_t mlen = get_u32(p + off + 1);
		size_t len = 1 + (size_t)mlen;

		/* A header pgmux refuses is refused now, where the relay checks it (relay_check_header()). */
		if (!proto_valid_frontend_type(type) || type == FE_PASSWORD || mlen < 4 ||
		    mlen - 4 > (uint32_t)config_current()->max_buffered_message_size)
			return true;
		if (avail - off < len)
			break;
		if (type == FE_SYNC || type == FE_FLUSH || type == FE_QUERY || type == FE_FUNCTION_CALL ||
		    type == FE_TERMINATE)
			return true;
		off += len;
	}
	return off > 0 && avail >= RELAY_EARLY_INPUT_LIMIT;
}

/* What the reply tracker answers alone (reply_answer_idle()), as an outcome. */
static enum relay_outcome relay_answer(struct relay *r, struct iobuf *in, struct iobuf *out, bool unjudged,
				       struct relay_refusal *why)
{
	struct reply_limits limits;
	struct reply_idle_result result;
	enum reply_idle answer;

	relay_limits(&limits);
	answer = reply_answer_idle(&r->session, iobuf_head(in), iobuf_len(in), unjudged, &limits, out, &result);
	switch (answer) {
	case REPLY_IDLE_ANSWERED:
		iobuf_consume(in, result.consumed);
		if (result.discard_batch)
			r->discard_until_sync = true;
		return result.parse_answered ? RELAY_PARSE_ANSWERED : RELAY_ANSWERED;
	case REPLY_IDLE_NEED_MORE:
		return RELAY_NEED_MORE;
	case REPLY_IDLE_BORROW:
		return RELAY_BORROW;
	case REPLY_IDLE_BORROW_OR_ANSWER:
		return RELAY_BORROW_OR_ANSWER;
	case REPLY_IDLE_TOO_MANY:
		return relay_too_many_statements(why);
	case REPLY_IDLE_NO_MEMORY:
		break;
	}
	return relay_refuse(why, SQLSTATE_OUT_OF_MEMORY, "out of memory");
}

enum relay_outcome relay_between_transactions(struct relay *r, struct iobuf *in, struct iobuf *out, bool tracking,
					      bool transaction_lost, struct relay_refusal *why)
{
	const uint8_t *p = iobuf_head(in);
	enum relay_outcome outcome;

	r->listen_wait_at = SIZE_MAX;
	if (r->discard_until_sync)
		return relay_discard_batch(r, in, out, tracking, why);
	if (r->ignore_remaining > 0) {
		size_t n = iobuf_len(in) < r->ignore_remaining ? iobuf_len(in) : r->ignore_remaining;

		iobuf_consume(in, n);
		r->ignore_remaining -= (uint32_t)n;
		return RELAY_ANSWERED;
	}
	if (iobuf_len(in) < PROTO_HEADER_LEN)
		return RELAY_NEED_MORE;
	if (p[0] == FE_TERMINATE)
		return RELAY_TERMINATE;
	if (!relay_check_header(p, tracking, why))
		return RELAY_FATAL;
	/*
	 * PostgreSQL ignores COPY messages outside a COPY (the rest of a COPY
	 * that failed, still on its way), and a Flush with nothing in flight
	 * has nothing to flush. Borrowing a backend for them would keep it from
	 * every other client until this one's next query: no ReadyForQuery
	 * would come to end the "transaction". They are dropped here, as they
	 * arrive. A Flush with a body is left to the server, which refuses it.
	 */
	if (p[0] == FE_COPY_DATA || p[0] == FE_COPY_DONE || p[0] == FE_COPY_FAIL ||
	    (p[0] == FE_FLUSH && get_u32(p + 1) == 4)) {
		r->ignore_remaining = 1 + get_u32(p + 1);
		return RELAY_ANSWERED;
	}
	if (transaction_lost)
		return RELAY_LOST;
	if (tracking && r->listen_apply &&
	    (outcome = relay_listen(r, in, out, r->listen_apply, r->session.hook_arg, &r->listen_wait_at, why)) != RELAY_BORROW)
		return outcome;
	outcome = tracking ? relay_answer(r, in, out, false, why) : RELAY_BORROW;
	/* Until the batch is here: then it is read again (the client's next read). */
	if ((outcome == RELAY_BORROW_OR_ANSWER || (outcome == RELAY_BORROW && tracking)) && !relay_batch_ready(in))
		return RELAY_NEED_MORE;
	return outcome;
}

enum relay_outcome relay_answer_unjudged(struct relay *r, struct iobuf *in, struct iobuf *out,
					 struct relay_refusal *why)
{
	return relay_answer(r, in, out, true, why);
}
