/*
 * relay_listen.c: LISTEN and UNLISTEN outside a transaction, answered by
 * pgmux with no backend (transaction pooling; see listen.h). A simple Query
 * whose text holds only LISTEN and UNLISTEN statements, or an
 * extended-protocol batch (up to its Sync) that only prepares, binds,
 * describes, runs and closes such statements, is answered here message by
 * message with what PostgreSQL would send; what each statement does is
 * handed to the client (relay_listen_apply), which keeps the subscriptions.
 * Any other batch goes to a backend as usual, where a LISTEN pins the
 * session as before.
 */
#include "relay.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "params.h"
#include "pgmux.h"
#include "proto.h"

/* Named statements and portals one batch may define and use. */
#define BATCH_NAMES 8

struct named_command {
	char name[REPLY_STMT_KEY_LEN + 1];
	struct sql_listen_command cmd;
	bool stored; /* a statement: kept in the client's statements after the batch */
};

struct listen_batch {
	struct named_command stmts[BATCH_NAMES], portals[BATCH_NAMES];
	int n_stmts, n_portals;
};

/* The one command of a Parse's text, or false when its text is not one LISTEN or UNLISTEN. */
static bool text_command(const char *query, struct sql_listen_command *out)
{
	return sql_listen_parse(query, strlen(query), out, 1) == 1;
}

/* A statement stored by an earlier batch (struct prepared_stmt.listen): its command. */
static bool stored_command(struct reply_session *rs, const char *name, struct sql_listen_command *out)
{
	char key[REPLY_STMT_KEY_LEN + 1];
	struct strmap_entry *e;
	struct prepared_stmt *st;
	struct msg_reader r;
	const char *query;

	snprintf(key, sizeof(key), "%s", name);
	if ((e = strmap_find(reply_stmts(rs), key)) == NULL || !(st = e->value)->listen)
		return false;
	msg_reader_init(&r, st->parse + PROTO_HEADER_LEN, st->parse_len - PROTO_HEADER_LEN);
	return msg_read_str(&r) != NULL && (query = msg_read_str(&r)) != NULL && text_command(query, out);
}

static struct named_command *batch_find(struct named_command *list, int n, const char *name)
{
	for (int i = n - 1; i >= 0; i--)
		if (strncmp(list[i].name, name, REPLY_STMT_KEY_LEN) == 0)
			return &list[i];
	return NULL;
}

/* The command of statement name: defined in this batch, or earlier. */
static bool statement_command(struct reply_session *rs, struct listen_batch *b, const char *name,
			      struct sql_listen_command *out)
{
	struct named_command *nc = batch_find(b->stmts, b->n_stmts, name);

	if (nc) {
		*out = nc->cmd;
		return true;
	}
	return name[0] != '\0' && stored_command(rs, name, out);
}

/*
 * First pass over the batch that begins at p (avail bytes): does it hold
 * only what is answered here, up to a Sync, or up to a Flush after which
 * nothing has come yet (asyncpg prepares with Parse, Describe, Flush and
 * runs with Bind, Execute, Sync)? RELAY_ANSWERED when it does (*end: the
 * bytes to answer, *synced: they end with the Sync), RELAY_NEED_MORE when it
 * is not all here, RELAY_BORROW when it is not one.
 */
static enum relay_outcome judge_batch(struct reply_session *rs, const uint8_t *p, size_t avail, struct listen_batch *b,
				      size_t *end, bool *synced)
{
	const struct config *cfg = config_current();
	size_t off = 0;
	uint8_t last = 0;

	while (avail - off >= PROTO_HEADER_LEN) {
		uint8_t type = p[off];
		uint32_t mlen = get_u32(p + off + 1);
		struct msg_reader r;
		struct sql_listen_command cmd;
		const char *name, *text;

		if (mlen < 4 || mlen - 4 > (uint32_t)cfg->max_buffered_message_size)
			return RELAY_BORROW;
		if (avail - off < 1 + (size_t)mlen)
			return RELAY_NEED_MORE;
		msg_reader_init(&r, p + off + PROTO_HEADER_LEN, mlen - 4);
		switch (type) {
		case FE_SYNC:
			*end = off + 1 + (size_t)mlen;
			*synced = true;
			return b->n_portals + b->n_stmts > 0 ? RELAY_ANSWERED : RELAY_BORROW;
		case FE_FLUSH:
			break;
		case FE_PARSE: {
			int16_t n_types;
			char key[REPLY_STMT_KEY_LEN + 1];

			if ((name = msg_read_str(&r)) == NULL || (text = msg_read_str(&r)) == NULL ||
			    msg_read_i16(&r, &n_types) != 0 || n_types != 0 || r.pos != r.len || !text_command(text, &cmd) ||
			    b->n_stmts == BATCH_NAMES)
				return RELAY_BORROW;
			snprintf(key, sizeof(key), "%s", name);
			/* A name taken already is the usual path's to refuse, as PostgreSQL does. */
			if (name[0] != '\0' && (strmap_find(reply_stmts(rs), key) || batch_find(b->stmts, b->n_stmts, name)))
				return RELAY_BORROW;
			snprintf(b->stmts[b->n_stmts].name, sizeof(b->stmts[0].name), "%s", name);
			b->stmts[b->n_stmts].cmd = cmd;
			b->stmts[b->n_stmts++].stored = name[0] != '\0';
			break;
		}
		case FE_BIND: {
			const char *portal = msg_read_str(&r);
			int16_t n_formats, n_params;
			int16_t dummy;

			if (portal == NULL || (name = msg_read_str(&r)) == NULL || msg_read_i16(&r, &n_formats) != 0)
				return RELAY_BORROW;
			for (int i = 0; i < n_formats; i++)
				if (msg_read_i16(&r, &dummy) != 0)
					return RELAY_BORROW;
			/* A LISTEN has no parameters: a Bind that gives some is the server's to refuse. */
			if (msg_read_i16(&r, &n_params) != 0 || n_params != 0 ||
			    !statement_command(rs, b, name, &cmd) || b->n_portals == BATCH_NAMES)
				return RELAY_BORROW;
			snprintf(b->portals[b->n_portals].name, sizeof(b->portals[0].name), "%s", portal);
			b->portals[b->n_portals++].cmd = cmd;
			break;
		}
		case FE_DESCRIBE:
		case FE_CLOSE: {
			uint8_t kind;

			if (msg_read_u8(&r, &kind) != 0 || (name = msg_read_str(&r)) == NULL || r.pos != r.len)
				return RELAY_BORROW;
			if (kind == 'S' ? !statement_command(rs, b, name, &cmd)
			    : kind == 'P' ? batch_find(b->portals, b->n_portals, name) == NULL : true)
				return RELAY_BORROW;
			break;
		}
		case FE_EXECUTE:
			if ((name = msg_read_str(&r)) == NULL || batch_find(b->portals, b->n_portals, name) == NULL)
				return RELAY_BORROW;
			break;
		default:
			return RELAY_BORROW;
		}
		last = type;
		off += 1 + (size_t)mlen;
	}
	/* A Flush asks for the answers so far; the rest of the batch comes after them. */
	if (last == FE_FLUSH && off == avail && b->n_portals + b->n_stmts > 0) {
		*end = off;
		*synced = false;
		return RELAY_ANSWERED;
	}
	return RELAY_NEED_MORE;
}

static void put_empty(struct iobuf *out, uint8_t type)
{
	iobuf_append_u8(out, type);
	iobuf_append_u32(out, 4);
}

static void put_complete(struct iobuf *out, const struct sql_listen_command *cmds, int n)
{
	for (int i = 0; i < n; i++) {
		size_t begin = proto_begin(out, BE_COMMAND_COMPLETE);

		iobuf_append_str(out, cmds[i].kind == SQL_LISTEN ? "LISTEN" : "UNLISTEN");
		proto_end(out, begin);
	}
}

/*
 * Hand the commands to the client and write their replies: CommandComplete
 * for each, or the refusal. Returns false when refused (the rest of the
 * batch is skipped, as after any error).
 */
static bool run_commands(const struct sql_listen_command *cmds, int n, struct iobuf *out, relay_listen_apply apply,
			 void *arg, size_t *wait_at)
{
	struct relay_refusal why;

	switch (apply(arg, cmds, n, &why)) {
	case RELAY_LISTEN_REFUSED:
		proto_put_error(out, "ERROR", why.sqlstate, why.message, NULL, NULL);
		return false;
	case RELAY_LISTEN_WAIT:
		if (*wait_at == SIZE_MAX)
			*wait_at = iobuf_len(out);
		break;
	case RELAY_LISTEN_DONE:
		break;
	}
	put_complete(out, cmds, n);
	return true;
}

/*
 * Second pass: answer the end bytes judge_batch() accepted, message by
 * message (its i-th Parse and Bind are b's i-th statement and portal).
 * Returns false when a statement failed (the rest of the batch is skipped).
 */
static bool answer_batch(struct reply_session *rs, const uint8_t *p, size_t end, struct listen_batch *b,
			 struct iobuf *out, relay_listen_apply apply, void *arg, size_t *wait_at)
{
	int n_stmts = 0, n_portals = 0;
	bool failed = false;
	size_t off = 0;

	while (off < end) {
		uint8_t type = p[off];
		uint32_t mlen = get_u32(p + off + 1);
		struct msg_reader r;
		const char *name;
		uint8_t kind;

		msg_reader_init(&r, p + off + PROTO_HEADER_LEN, mlen - 4);
		off += 1 + (size_t)mlen;
		if (type == FE_SYNC) {
			proto_put_ready(out, 'I');
			return !failed;
		}
		if (failed)
			continue;
		switch (type) {
		case FE_PARSE:
			/* The client's unnamed statement is this one now, which no backend holds. */
			if (b->stmts[n_stmts++].name[0] == '\0')
				rs->unnamed_parse_len = 0;
			put_empty(out, BE_PARSE_COMPLETE);
			break;
		case FE_BIND:
			n_portals++;
			put_empty(out, BE_BIND_COMPLETE);
			break;
		case FE_DESCRIBE:
			(void)msg_read_u8(&r, &kind);
			if (kind == 'S') {
				iobuf_append_u8(out, BE_PARAMETER_DESCRIPTION);
				iobuf_append_u32(out, 6);
				iobuf_append_u16(out, 0);
			}
			put_empty(out, BE_NO_DATA);
			break;
		case FE_CLOSE:
			(void)msg_read_u8(&r, &kind);
			name = msg_read_str(&r);
			if (kind == 'S') {
				struct named_command *nc = batch_find(b->stmts, n_stmts, name);
				char key[REPLY_STMT_KEY_LEN + 1];
				struct strmap_entry *e;

				snprintf(key, sizeof(key), "%s", name);
				if (nc)
					nc->stored = false;
				else if ((e = strmap_find(reply_stmts(rs), key)) != NULL)
					prepared_free(strmap_delete(&rs->names->stmts, e));
			}
			put_empty(out, BE_CLOSE_COMPLETE);
			break;
		case FE_EXECUTE: {
			struct named_command *portal = batch_find(b->portals, n_portals, msg_read_str(&r));

			failed = !run_commands(&portal->cmd, 1, out, apply, arg, wait_at);
			break;
		}
		default: /* FE_FLUSH: everything is answered at once anyway */
			break;
		}
	}
	return !failed;
}

/* The named statements the batch prepared (and did not close) are the client's, for later batches. */
static enum relay_outcome keep_statements(struct reply_session *rs, const uint8_t *p, size_t len,
					  struct listen_batch *b, struct relay_refusal *why)
{
	size_t off = 0;
	int i = 0;

	while (off < len && i < b->n_stmts) {
		uint32_t mlen = get_u32(p + off + 1);

		if (p[off] == FE_PARSE && b->stmts[i++].stored) {
			const char *client_name;
			char key[REPLY_STMT_KEY_LEN + 1];
			struct prepared_stmt *st = prepared_from_parse(p + off + PROTO_HEADER_LEN, mlen - 4, &client_name);

			if (st == NULL)
				return RELAY_FATAL;
			if (reply_stmts(rs)->count >= (size_t)config_current()->max_client_prepared_statements) {
				prepared_free(st);
				why->sqlstate = SQLSTATE_PROGRAM_LIMIT_EXCEEDED;
				snprintf(why->message, sizeof(why->message),
					 "too many prepared statements: this session holds %d, the limit set by "
					 "max_client_prepared_statements",
					 config_current()->max_client_prepared_statements);
				return RELAY_FATAL;
			}
			st->listen = true;
			snprintf(key, sizeof(key), "%s", client_name);
			strmap_insert(&reply_names_make(rs)->stmts, key, st);
			reply_note_stmt_name(rs, st, key);
		}
		off += 1 + (size_t)mlen;
	}
	return RELAY_ANSWERED;
}

enum relay_outcome relay_listen(struct relay *r, struct iobuf *in, struct iobuf *out, relay_listen_apply apply,
				void *arg, size_t *wait_at, struct relay_refusal *why)
{
	const uint8_t *p = iobuf_head(in);
	size_t avail = iobuf_len(in), end = 0;
	struct listen_batch b; /* its entries are written before they are read: only the counts are set
	                        * (zeroing it all cost some 300 instructions per statement, issue 21) */
	enum relay_outcome outcome;
	bool synced = false;

	b.n_stmts = b.n_portals = 0;
	*wait_at = SIZE_MAX;
	if (avail < PROTO_HEADER_LEN)
		return RELAY_NEED_MORE;
	if (p[0] == FE_QUERY) {
		struct sql_listen_command cmds[SQL_LISTEN_MAX_COMMANDS];
		uint32_t mlen = get_u32(p + 1);
		int n;

		if (avail < 1 + (size_t)mlen)
			return RELAY_NEED_MORE;
		n = sql_listen_parse((const char *)p + PROTO_HEADER_LEN, mlen - 4, cmds, SQL_LISTEN_MAX_COMMANDS);
		if (n == 0)
			return RELAY_BORROW;
		run_commands(cmds, n, out, apply, arg, wait_at);
		proto_put_ready(out, 'I');
		iobuf_consume(in, 1 + (size_t)mlen);
		return RELAY_ANSWERED;
	}
	if (p[0] != FE_PARSE && p[0] != FE_BIND)
		return RELAY_BORROW;
	outcome = judge_batch(&r->session, p, avail, &b, &end, &synced);
	if (outcome != RELAY_ANSWERED)
		return outcome;
	/* A statement failed before the Sync came: the rest of the batch is dropped up to it, as after any error. */
	if (!answer_batch(&r->session, p, end, &b, out, apply, arg, wait_at) && !synced)
		r->discard_until_sync = true;
	/* The named statements it prepared are the client's once it ran (unless it closed them). */
	outcome = keep_statements(&r->session, p, end, &b, why);
	iobuf_consume(in, end);
	return outcome;
}
