/*
 * test_reply.c: the reply tracker (src/reply.c) on conversations of real
 * clients with PostgreSQL, recorded by tests/transcripts/record.py: psql,
 * pgbench -M simple / extended / prepared, psycopg's pipeline mode, asyncpg.
 *
 * Each connection of a transcript is replayed as pgmux would carry it with
 * transaction pooling: the client's messages go through the tracker as they
 * were sent (reply_answer_idle() without a backend, reply_frontend() with
 * one), and a model backend answers what the tracker sent it: the recorded
 * replies for the client's own messages, in the recorded order and not
 * before they were recorded, and ParseComplete / CloseComplete for messages
 * of pgmux's own. Each transaction goes to the other of two model backends,
 * so statements prepared on one must be prepared on the other. The model
 * backend refuses what PostgreSQL would (a statement it does not have, one
 * it has already, an unnamed statement that is not the client's), and the
 * replay checks that:
 * - the client gets every recorded reply, byte for byte, in order: the
 *   backend's relayed, the replies to pgmux's own messages swallowed, those
 *   pgmux answered itself (owed, or with no backend) in their place;
 * - the backend sees only pgmux's names for the client's statements, and
 *   has each before it is used (Parses injected where it lacked one);
 * - the tracker releases the backend exactly at the ReadyForQuery that ends
 *   a transaction with nothing in flight, and nowhere else.
 * Every transcript is replayed twice: with a generous max_prepared_statements
 * and with 2, so that the tracker must also evict (Closes of its own) and
 * prepare again.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "params.h"
#include "proto.h"
#include "reply.h"
#include "sqlscan.h"

#ifndef TEST_SRCDIR
#define TEST_SRCDIR "."
#endif

#define MAX_CONNECTIONS 8

/* REPLY_TRACE=1 in the environment: say what happens to each message. */
static bool tracing;
#define trace(...) (tracing ? (void)fprintf(stderr, __VA_ARGS__) : (void)0)

/* One recorded message. */
struct tmsg {
	char dir;      /* 'F' or 'B' */
	uint8_t type;
	uint8_t *body;
	size_t len;
	int seg_first; /* F: its replies are the B messages [seg_first, seg_end) of the connection's B list */
	int seg_end;
};

struct connection {
	struct tmsg *m;
	int n, cap;
	int *b_index; /* the positions (in m) of the B messages, in order */
	int *ready;   /* when each B message reaches pgmux: a position in m */
	int n_b;
};

struct transcript {
	struct connection conn[MAX_CONNECTIONS + 1];
	int n_conn;
};

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static void load(const char *name, struct transcript *t)
{
	char path[512], line[1 << 16];
	FILE *f;

	memset(t, 0, sizeof(*t));
	snprintf(path, sizeof(path), "%s/tests/transcripts/%s.txt", TEST_SRCDIR, name);
	f = fopen(path, "r");
	cr_assert_not_null(f, "cannot open %s", path);
	while (fgets(line, sizeof(line), f)) {
		int number;
		char dir, type, hex[sizeof(line)];
		struct connection *c;
		struct tmsg *m;

		cr_assert(strchr(line, '\n'), "%s: line too long", path);
		if (line[0] == '#' || line[0] == '\n')
			continue;
		cr_assert_eq(sscanf(line, "%d %c %c %s", &number, &dir, &type, hex), 4, "%s: bad line %s", path, line);
		cr_assert(number >= 1 && number <= MAX_CONNECTIONS && (dir == 'F' || dir == 'B'), "%s: bad line %s", path,
			  line);
		if (number > t->n_conn)
			t->n_conn = number;
		c = &t->conn[number];
		if (c->n == c->cap) {
			c->cap = c->cap ? c->cap * 2 : 64;
			c->m = realloc(c->m, sizeof(*c->m) * (size_t)c->cap);
		}
		m = &c->m[c->n++];
		memset(m, 0, sizeof(*m));
		m->dir = dir;
		m->type = (uint8_t)type;
		m->len = strcmp(hex, "-") == 0 ? 0 : strlen(hex) / 2;
		m->body = malloc(m->len + 1);
		for (size_t i = 0; i < m->len; i++)
			m->body[i] = (uint8_t)(hexval(hex[2 * i]) << 4 | hexval(hex[2 * i + 1]));
	}
	fclose(f);
	cr_assert(t->n_conn > 0, "%s: no messages", path);
}

static void transcript_free(struct transcript *t)
{
	for (int i = 1; i <= t->n_conn; i++) {
		for (int j = 0; j < t->conn[i].n; j++)
			free(t->conn[i].m[j].body);
		free(t->conn[i].m);
		free(t->conn[i].b_index);
		free(t->conn[i].ready);
	}
}

/* Does PostgreSQL answer this frontend message at all? */
static bool answered_at_all(const struct tmsg *f)
{
	return f->type != FE_FLUSH && f->type != FE_COPY_DATA && f->type != FE_COPY_DONE && f->type != FE_COPY_FAIL &&
	       f->type != FE_TERMINATE;
}

/* Is backend message b the last of its reply to frontend message f? */
static bool reply_complete(const struct tmsg *f, const struct tmsg *b)
{
	uint8_t type = b->type;

	switch (f->type) {
	case FE_QUERY:
	case FE_SYNC:
	case FE_FUNCTION_CALL:
		return type == BE_READY_FOR_QUERY;
	case FE_PARSE:
		return type == BE_PARSE_COMPLETE || type == BE_ERROR_RESPONSE;
	case FE_BIND:
		return type == BE_BIND_COMPLETE || type == BE_ERROR_RESPONSE;
	case FE_DESCRIBE:
		return type == BE_ROW_DESCRIPTION || type == BE_NO_DATA || type == BE_ERROR_RESPONSE;
	case FE_EXECUTE:
		return type == BE_COMMAND_COMPLETE || type == BE_EMPTY_QUERY || type == BE_PORTAL_SUSPENDED ||
		       type == BE_ERROR_RESPONSE;
	case FE_CLOSE:
		return type == BE_CLOSE_COMPLETE || type == BE_ERROR_RESPONSE;
	default:
		return true;
	}
}

/*
 * Which frontend message each backend message answers, as PostgreSQL
 * answers them: in order; after an error in the extended protocol the
 * messages up to the Sync get no reply; notices and parameter changes go
 * with the message being answered. With lag, each reply reaches pgmux only
 * after the client's next message (a slow backend, a client that pipelines
 * everything): batches are then in flight behind unanswered ones.
 */
static void segment(struct connection *c, bool lag)
{
	int *fifo = malloc(sizeof(int) * (size_t)c->n), head = 0, tail = 0;
	bool skipping = false;

	c->b_index = malloc(sizeof(int) * (size_t)c->n);
	c->n_b = 0;
	for (int i = 0; i < c->n; i++) {
		struct tmsg *m = &c->m[i];

		if (m->dir == 'F') {
			m->seg_first = m->seg_end = -1;
			fifo[tail++] = i;
			continue;
		}
		c->b_index[c->n_b] = i;
		/* Messages with no reply (or skipped after an error) at the head end at once. */
		while (head < tail) {
			struct tmsg *f = &c->m[fifo[head]];

			if (f->seg_first < 0 && (!answered_at_all(f) || (skipping && f->type != FE_SYNC))) {
				f->seg_first = f->seg_end = c->n_b;
				head++;
				continue;
			}
			break;
		}
		cr_assert(head < tail, "backend message %d answers nothing", i);
		struct tmsg *f = &c->m[fifo[head]];

		if (f->seg_first < 0)
			f->seg_first = c->n_b;
		f->seg_end = c->n_b + 1;
		if (f->type == FE_SYNC)
			skipping = false;
		if (m->type == BE_ERROR_RESPONSE && f->type != FE_QUERY && f->type != FE_SYNC &&
		    f->type != FE_FUNCTION_CALL)
			skipping = true;
		c->n_b++;
		if (reply_complete(f, m) && !(m->type == BE_NOTICE_RESPONSE || m->type == BE_PARAMETER_STATUS))
			head++;
	}
	/* What is left was answered with nothing (a Terminate, a trailing Flush). */
	for (; head < tail; head++) {
		struct tmsg *f = &c->m[fifo[head]];

		if (f->seg_first < 0)
			f->seg_first = f->seg_end = c->n_b;
	}
	free(fifo);
	c->ready = malloc(sizeof(int) * (size_t)(c->n_b + 1));
	for (int k = 0, next_f = 0; k < c->n_b; k++) {
		int at = c->b_index[k];

		if (lag) {
			if (next_f < at)
				next_f = at;
			while (next_f < c->n && c->m[next_f].dir != 'F')
				next_f++;
			if (next_f < c->n)
				at = next_f;
		}
		c->ready[k] = at;
	}
}

/* ------------------------------------------------------------ the replay */

/* A message the model backend received. */
struct received {
	bool own;     /* pgmux's own (Parse, Close): its reply is made up */
	uint8_t type;
	uint8_t *msg; /* the message as the backend got it */
	size_t len;
	bool started; /* the backend has acted on it */
	char *unnamed; /* the client's unnamed statement when it sent this (its text, or NULL) */
	int f;        /* the client's: its index in the connection */
	int next;     /* its next reply to deliver (index into the B list) */
};

struct backend {
	struct reply_tracker t;
	struct strmap statements; /* as the tracker keeps them */
	struct strmap has;        /* what the model backend has: server-side name -> text */
	char *unnamed;            /* the text of its unnamed statement, or NULL */
	bool skipping;
	char tx_status;
	struct received *fifo;
	int head, tail, cap;
};

/* Two backends and what the pool knows, shared by the clients replayed one after the other. */
struct pool_model {
	struct backend be[2];
	struct strmap known; /* statements a backend accepted */
	int next_be;
};

struct replay {
	struct connection *c;
	const char *name;
	int conn_number;
	struct reply_session rs;
	struct reply_limits limits;
	struct pool_model *pool;
	struct backend *be; /* the pool's */
	int cur;            /* linked backend, or -1 */
	struct iobuf in;    /* what the client sent, not yet taken */
	int *pending;       /* the F indexes in it, in order */
	int p_head, p_tail;
	struct iobuf out;   /* what the client got */
	struct iobuf to_server;
	char *client_unnamed; /* the text of the client's unnamed statement (its last Parse of it) */
	bool unsynced;        /* the client sent extended-protocol messages since its last Sync */
	bool terminated;
	int now;              /* the position in the transcript reached */
	/* What happened, for the checks and the log. */
	int releases, idle_answers, owed, swallowed, injected, rewritten, waits, forwarded;
};

static unsigned scan_hook(void *arg, const char *sql, size_t len)
{
	struct sql_scan_result scan;

	(void)arg;
	sql_scan(sql, len, params_carried_names, SQL_SCAN_CARRY_SETS, &scan);
	return scan.effects;
}

static bool known_hook(void *arg, const char *server_name)
{
	return strmap_find(&((struct replay *)arg)->pool->known, server_name) != NULL;
}

static const struct reply_hooks hooks = {.scan = scan_hook, .known = known_hook};

static const char *cstr_at(const uint8_t *body, size_t len, size_t off)
{
	cr_assert(off < len && memchr(body + off, '\0', len - off), "malformed message");
	return (const char *)body + off;
}

/*
 * The model backend acts on one message from pgmux (msg, len bytes) when it
 * comes to it, unless an error earlier in the batch made it skip it: what
 * PostgreSQL would refuse fails the test. ok: its reply is not an error.
 */
static void backend_act(struct replay *r, struct backend *be, const uint8_t *msg, size_t len, bool ok,
			const char *client_unnamed)
{
	uint8_t type = msg[0];
	const uint8_t *body = msg + PROTO_HEADER_LEN;
	size_t blen = len - PROTO_HEADER_LEN;

	switch (type) {
	case FE_PARSE: {
		const char *name = cstr_at(body, blen, 0), *text = cstr_at(body, blen, strlen(name) + 1);

		if (!ok)
			break;
		if (name[0] == '\0') {
			free(be->unnamed);
			be->unnamed = strdup(text);
		} else {
			cr_assert_null(strmap_find(&be->has, name), "%s: Parse of %s, which the backend has already", r->name,
				       name);
			strmap_insert(&be->has, name, NULL);
		}
		break;
	}
	case FE_BIND: {
		const char *portal = cstr_at(body, blen, 0), *name = cstr_at(body, blen, strlen(portal) + 1);

		/* (A statement the client does not have is the backend's to refuse, as directly.) */
		if (name[0] == '\0' && ok)
			cr_assert(be->unnamed && client_unnamed && strcmp(be->unnamed, client_unnamed) == 0,
				  "%s: Bind of an unnamed statement that is not the client's", r->name);
		else if (ok)
			cr_assert_not_null(strmap_find(&be->has, name), "%s: Bind of %s, which the backend lacks", r->name,
					   name);
		break;
	}
	case FE_DESCRIBE:
	case FE_CLOSE:
		if (body[0] == 'S') {
			const char *name = cstr_at(body, blen, 1);
			struct strmap_entry *e;

			if (name[0] == '\0') {
				if (type == FE_CLOSE) {
					free(be->unnamed);
					be->unnamed = NULL;
				} else {
					cr_assert(be->unnamed && client_unnamed && strcmp(be->unnamed, client_unnamed) == 0,
						  "%s: Describe of an unnamed statement that is not the client's", r->name);
				}
				break;
			}
			e = strmap_find(&be->has, name);
			if (type == FE_CLOSE && e)
				strmap_delete(&be->has, e);
			else if (type == FE_DESCRIBE && ok)
				cr_assert_not_null(e, "%s: Describe of %s, which the backend lacks", r->name, name);
		}
		break;
	case FE_QUERY:
		/* A Query destroys the unnamed statement. */
		free(be->unnamed);
		be->unnamed = NULL;
		break;
	default:
		break;
	}
}

/* The model backend gets one message from pgmux: the client's statements only ever under pgmux's names. */
static void backend_receive(struct replay *r, struct backend *be, const uint8_t *msg, size_t len, bool own, int f)
{
	uint8_t type = msg[0];
	const uint8_t *body = msg + PROTO_HEADER_LEN;
	size_t blen = len - PROTO_HEADER_LEN;
	const char *name = NULL;
	struct received *rc;

	if (type == FE_PARSE)
		name = cstr_at(body, blen, 0);
	else if (type == FE_BIND)
		name = cstr_at(body, blen, strlen(cstr_at(body, blen, 0)) + 1);
	else if ((type == FE_DESCRIBE || type == FE_CLOSE) && body[0] == 'S')
		name = cstr_at(body, blen, 1);
	trace("  backend %d gets %s '%c' %s\n", (int)(be - r->be), own ? "pgmux's" : "the client's", type,
	      name ? name : "");
	if (name && name[0]) {
		/* A statement the client does not have goes as it is: PostgreSQL refuses it, as directly. */
		bool refused = !own && r->c->m[f].seg_first < r->c->m[f].seg_end &&
			       r->c->m[r->c->b_index[r->c->m[f].seg_first]].type == BE_ERROR_RESPONSE;

		cr_assert(strncmp(name, "pgmux_", 6) == 0 || (refused && type != FE_PARSE),
			  "%s: the backend was sent the client's name %s", r->name, name);
		if (own && type == FE_PARSE && strcmp(name, PREPARED_CHECK_NAME) != 0)
			r->injected++;
		if (type == FE_BIND || type == FE_DESCRIBE)
			r->rewritten++;
	}
	if (be->tail == be->cap) {
		be->cap = be->cap ? be->cap * 2 : 64;
		be->fifo = realloc(be->fifo, sizeof(*be->fifo) * (size_t)be->cap);
	}
	rc = &be->fifo[be->tail++];
	rc->own = own;
	rc->type = type;
	rc->msg = malloc(len);
	memcpy(rc->msg, msg, len);
	rc->len = len;
	rc->started = false;
	rc->unnamed = r->client_unnamed ? strdup(r->client_unnamed) : NULL;
	rc->f = f;
	rc->next = own ? 0 : r->c->m[f].seg_first;
}

/* The backend comes to the message at the head of its queue. */
static void backend_start(struct replay *r, struct backend *be, struct received *rc)
{
	bool ok = true;

	if (rc->started)
		return;
	rc->started = true;
	if (be->skipping && rc->type != FE_SYNC)
		return;
	if (!rc->own && rc->next < r->c->m[rc->f].seg_end)
		ok = r->c->m[r->c->b_index[rc->next]].type != BE_ERROR_RESPONSE;
	backend_act(r, be, rc->msg, rc->len, ok, rc->unnamed);
}

/* The backend is done with the message at the head of its queue. */
static void backend_pop(struct backend *be)
{
	free(be->fifo[be->head].msg);
	free(be->fifo[be->head].unnamed);
	be->head++;
}

/* Split what the tracker wrote for the backend into messages; the last is the client's when it went. */
static void backend_take(struct replay *r, struct backend *be, bool client_message_went, int f)
{
	const uint8_t *p = iobuf_head(&r->to_server);
	size_t avail = iobuf_len(&r->to_server), off = 0;

	cr_assert(!r->to_server.failed);
	while (off < avail) {
		size_t len = 1 + (size_t)get_u32(p + off + 1);
		bool last = off + len == avail;

		cr_assert(off + len <= avail);
		backend_receive(r, be, p + off, len, !(last && client_message_went), f);
		off += len;
	}
	iobuf_reset(&r->to_server);
}

static void put_message(struct iobuf *out, uint8_t type, const uint8_t *body, size_t len)
{
	iobuf_append_u8(out, type);
	iobuf_append_u32(out, (uint32_t)(len + 4));
	iobuf_append(out, body, len);
}

static void take_owed(struct replay *r, struct backend *be)
{
	uint8_t owed[64];
	size_t n;

	while ((n = reply_take_owed(&be->t, owed, sizeof(owed))) > 0) {
		iobuf_append(&r->out, owed, n);
		r->owed += (int)(n / PROTO_HEADER_LEN);
	}
}

/*
 * Does the backend still owe a reply (to_now: one that has arrived by now)?
 * Messages with no reply of their own (a Flush, COPY data, one skipped
 * after an error) do not count.
 */
static bool backend_owes(const struct replay *r, const struct backend *be, bool arrived_only)
{
	for (int i = be->head; i < be->tail; i++) {
		const struct received *rc = &be->fifo[i];

		if (rc->own) {
			if (!be->skipping)
				return true;
			continue;
		}
		if (rc->next < r->c->m[rc->f].seg_end)
			return !arrived_only || r->c->ready[rc->next] <= r->now;
	}
	return false;
}

/* The backend answers what it can by now; the tracker hears it. Returns true if anything arrived. */
static bool backend_answer(struct replay *r)
{
	bool any = false;

	while (r->cur >= 0) {
		struct backend *be = &r->be[r->cur];
		struct received *rc;
		const struct tmsg *reply;
		struct reply_verdict v;
		uint8_t made[1];
		const uint8_t *body;
		size_t len;
		uint8_t type;

		if (be->head == be->tail)
			break;
		rc = &be->fifo[be->head];
		if (rc->own) {
			backend_start(r, be, rc);
			if (be->skipping) {
				backend_pop(be);
				continue;
			}
			/* pgmux's Parse or Close: PostgreSQL accepts it. */
			type = rc->type == FE_PARSE ? BE_PARSE_COMPLETE : BE_CLOSE_COMPLETE;
			body = made;
			len = 0;
			backend_pop(be);
		} else {
			const struct tmsg *f = &r->c->m[rc->f];

			if (rc->next >= f->seg_end) {
				backend_start(r, be, rc);
				if (f->type == FE_SYNC)
					be->skipping = false;
				backend_pop(be);
				continue;
			}
			if (r->c->ready[rc->next] > r->now)
				break; /* not yet */
			backend_start(r, be, rc);
			reply = &r->c->m[r->c->b_index[rc->next]];
			type = reply->type;
			body = reply->body;
			len = reply->len;
			rc->next++;
			if (type == BE_ERROR_RESPONSE && f->type != FE_QUERY && f->type != FE_SYNC &&
			    f->type != FE_FUNCTION_CALL)
				be->skipping = true;
			if (rc->next >= f->seg_end) {
				if (f->type == FE_SYNC)
					be->skipping = false;
				backend_pop(be);
			}
		}
		any = true;
		trace("  backend %d answers '%c'\n", r->cur, type);
		if (type == BE_READY_FOR_QUERY)
			be->tx_status = (char)body[0];
		/* Statements are gone on the backend (psycopg ends its sessions with DEALLOCATE ALL). */
		if (type == BE_COMMAND_COMPLETE && len > 0 && body[len - 1] == '\0' &&
		    (strcmp((const char *)body, "DEALLOCATE ALL") == 0 || strcmp((const char *)body, "DISCARD ALL") == 0))
			strmap_clear(&be->has, NULL);
		reply_backend(&be->t, type, body, len, &v);
		if (v.forward) {
			put_message(&r->out, type, body, len);
			r->forwarded++;
		} else {
			cr_assert(rc->own, "%s: the tracker swallowed the client's reply '%c'", r->name, type);
			r->swallowed++;
		}
		if (v.statement == REPLY_STATEMENT_ACCEPTED && !strmap_find(&r->pool->known, v.statement_name))
			strmap_insert(&r->pool->known, v.statement_name, NULL);
		if (v.statement == REPLY_STATEMENT_REFUSED) {
			struct strmap_entry *e = strmap_find(&r->pool->known, v.statement_name);

			if (e)
				strmap_delete(&r->pool->known, e);
		}
		if (v.owed)
			take_owed(r, be);
		if (type == BE_READY_FOR_QUERY) {
			/* Over: idle, everything the client sent answered, nothing unsynced. */
			bool over = body[0] == 'I' && !backend_owes(r, be, false) && !r->unsynced;
			/* pgmux releases only with nothing more in its input (server.c). */
			bool released = v.release && !backend_owes(r, be, true);

			cr_assert_eq(released, over, "%s connection %d: ReadyForQuery at line %d: tracker %s, should %s",
				     r->name, r->conn_number, r->now, released ? "releases" : "keeps",
				     over ? "release" : "keep");
			if (released) {
				cr_assert(reply_settled(&be->t));
				reply_unlink(&be->t);
				r->cur = -1;
				r->releases++;
			}
		}
	}
	return any;
}

/* The client's next message held whole (as client_holds_whole() says, with transaction pooling)? */
static bool holds_whole(uint8_t type, uint32_t mlen)
{
	return (type != FE_FLUSH || mlen > 4) && type != FE_COPY_DATA && type != FE_COPY_DONE && type != FE_COPY_FAIL;
}

/* Is the batch the client's input begins with all here (relay_batch_ready() in relay.c)? */
static bool batch_ready(const struct replay *r)
{
	const uint8_t *p = iobuf_head(&r->in);
	size_t avail = iobuf_len(&r->in), off = 0;

	while (avail - off >= PROTO_HEADER_LEN) {
		uint8_t type = p[off];
		size_t len = 1 + (size_t)get_u32(p + off + 1);

		if (avail - off < len)
			break;
		if (type == FE_SYNC || type == FE_FLUSH || type == FE_QUERY || type == FE_FUNCTION_CALL ||
		    type == FE_TERMINATE)
			return true;
		off += len;
	}
	return false;
}

static void take_input(struct replay *r, size_t len)
{
	iobuf_consume(&r->in, len);
	r->p_head++;
}

static void note_client_message(struct replay *r, const struct tmsg *f)
{
	if (f->type == FE_PARSE && f->len > 0 && f->body[0] == '\0') {
		free(r->client_unnamed);
		r->client_unnamed = strdup((const char *)f->body + 1);
	} else if (f->type == FE_QUERY) {
		free(r->client_unnamed);
		r->client_unnamed = NULL;
	}
}

/* The client's input as pgmux would take it (client_process_input()). Returns true if it took anything. */
static bool client_step(struct replay *r)
{
	const uint8_t *p;
	uint8_t type;
	uint32_t mlen;
	int f;

	if (r->terminated || r->p_head == r->p_tail)
		return false;
	p = iobuf_head(&r->in);
	type = p[0];
	mlen = get_u32(p + 1);
	f = r->pending[r->p_head];
	trace("line %d: client '%c' (message %d), backend %d\n", r->now, type, f, r->cur);
	if (type == FE_TERMINATE) {
		take_input(r, 1 + (size_t)mlen);
		r->terminated = true;
		return true;
	}
	if (r->cur < 0) {
		struct reply_idle_result result;

		/* Nothing in flight: a bare Flush or COPY data is dropped. */
		if (!holds_whole(type, mlen)) {
			take_input(r, 1 + (size_t)mlen);
			return true;
		}
		switch (reply_answer_idle(&r->rs, p, iobuf_len(&r->in), false, &r->limits, &r->out, &result)) {
		case REPLY_IDLE_ANSWERED:
			cr_assert(!result.discard_batch, "%s: pgmux refused what PostgreSQL took", r->name);
			cr_assert_eq(result.consumed, 1 + (size_t)mlen);
			note_client_message(r, &r->c->m[f]);
			take_input(r, result.consumed);
			r->idle_answers++;
			return true;
		case REPLY_IDLE_NEED_MORE:
			return false;
		case REPLY_IDLE_BORROW:
		case REPLY_IDLE_BORROW_OR_ANSWER:
			if (!batch_ready(r))
				return false;
			r->cur = r->pool->next_be;
			r->pool->next_be = 1 - r->pool->next_be;
			reply_link(&r->be[r->cur].t, &r->rs, true);
			return true;
		default:
			cr_assert_fail("%s: reply_answer_idle() refused a message", r->name);
		}
	}
	struct backend *be = &r->be[r->cur];
	enum reply_action action = REPLY_FORWARD;

	if (holds_whole(type, mlen)) {
		action = reply_frontend(&be->t, p, 1 + (size_t)mlen, be->tx_status, &r->limits, &r->to_server);
		if (action == REPLY_WAIT) {
			r->waits++;
			iobuf_reset(&r->to_server);
			return false;
		}
		cr_assert(action != REPLY_TOO_MANY && action != REPLY_NO_MEMORY);
	}
	if (action == REPLY_FORWARD)
		iobuf_append(&r->to_server, p, 1 + (size_t)mlen);
	reply_count_frontend(&be->t, type);
	note_client_message(r, &r->c->m[f]);
	backend_take(r, be, action == REPLY_FORWARD || action == REPLY_REWRITTEN, f);
	if (type == FE_SYNC || type == FE_QUERY)
		r->unsynced = false;
	else if (type == FE_PARSE || type == FE_BIND || type == FE_DESCRIBE || type == FE_EXECUTE || type == FE_CLOSE)
		r->unsynced = true;
	if (reply_owed_due(&be->t))
		take_owed(r, be);
	take_input(r, 1 + (size_t)mlen);
	return true;
}

static void settle(struct replay *r)
{
	bool moved;

	do {
		moved = false;
		while (client_step(r))
			moved = true;
		if (backend_answer(r))
			moved = true;
	} while (moved);
}

static void replay_connection(struct pool_model *pool, const char *name, struct connection *c, int number,
			      int max_backend_statements, int *totals)
{
	struct replay r;
	struct iobuf want;

	memset(&r, 0, sizeof(r));
	r.pool = pool;
	r.be = pool->be;
	r.c = c;
	r.name = name;
	r.conn_number = number;
	r.cur = -1;
	r.limits.max_backend_statements = max_backend_statements;
	r.limits.max_client_statements = 1000;
	r.limits.max_packet_size = 1 << 30;
	r.pending = malloc(sizeof(int) * (size_t)(c->n + 1));
	reply_session_init(&r.rs, &hooks, &r);
	iobuf_init(&r.in);
	iobuf_init(&r.out);
	iobuf_init(&r.to_server);
	for (int i = 0; i < c->n; i++) {
		const struct tmsg *m = &c->m[i];

		r.now = i;
		if (m->dir == 'F') {
			put_message(&r.in, m->type, m->body, m->len);
			r.pending[r.p_tail++] = i;
		}
		settle(&r);
	}
	r.now = c->n;
	settle(&r);

	/* Everything the client sent was taken, and everything it got is what PostgreSQL sent it. */
	cr_assert(r.terminated || r.p_head == r.p_tail, "%s connection %d: %d messages never went", name, number,
		  r.p_tail - r.p_head);
	iobuf_init(&want);
	for (int i = 0; i < c->n_b; i++) {
		const struct tmsg *m = &c->m[c->b_index[i]];

		put_message(&want, m->type, m->body, m->len);
	}
	if (iobuf_len(&want) != iobuf_len(&r.out) || memcmp(iobuf_head(&want), iobuf_head(&r.out), iobuf_len(&want)) != 0) {
		size_t off = 0;
		int k = 0;

		/* Find the first message that differs. */
		while (off + PROTO_HEADER_LEN <= iobuf_len(&want) && off + PROTO_HEADER_LEN <= iobuf_len(&r.out)) {
			size_t len = 1 + (size_t)get_u32(iobuf_head(&want) + off + 1);

			if (off + len > iobuf_len(&r.out) || memcmp(iobuf_head(&want) + off, iobuf_head(&r.out) + off, len) != 0)
				break;
			off += len;
			k++;
		}
		cr_assert_fail("%s connection %d: the client's reply %d (transcript line of B message) differs: want '%c', "
			       "got '%c' (%zu of %zu bytes agree)",
			       name, number, k, off < iobuf_len(&want) ? iobuf_head(&want)[off] : '-',
			       off < iobuf_len(&r.out) ? iobuf_head(&r.out)[off] : '-', off, iobuf_len(&want));
	}
	cr_assert(r.cur < 0 || reply_settled(&r.be[r.cur].t), "%s connection %d: replies still awaited at the end", name,
		  number);
	cr_log_info("%s connection %d (max_prepared_statements %d): %d releases, %d forwarded, %d swallowed, "
		    "%d owed, %d answered without a backend, %d statements prepared by pgmux, %d rewritten, %d waits",
		    name, number, max_backend_statements, r.releases, r.forwarded, r.swallowed, r.owed, r.idle_answers,
		    r.injected, r.rewritten, r.waits);
	totals[0] += r.releases;
	totals[1] += r.swallowed;
	totals[2] += r.owed;
	totals[3] += r.idle_answers;
	totals[4] += r.injected;
	totals[5] += r.rewritten;
	totals[6] += r.waits;

	/* The client leaves: its backend goes back if clean, else it is closed (a new one takes its place). */
	if (r.cur >= 0 && reply_settled(&r.be[r.cur].t)) {
		reply_unlink(&r.be[r.cur].t);
	} else if (r.cur >= 0) {
		struct backend *be = &r.be[r.cur];

		reply_unlink(&be->t);
		reply_tracker_free(&be->t);
		strmap_clear(&be->statements, NULL);
		strmap_clear(&be->has, NULL);
		free(be->unnamed);
		be->unnamed = NULL;
		while (be->head < be->tail)
			backend_pop(be);
		be->skipping = false;
		be->tx_status = 'I';
		reply_tracker_init(&be->t, &be->statements);
	}
	iobuf_free(&want);
	iobuf_free(&r.in);
	iobuf_free(&r.out);
	iobuf_free(&r.to_server);
	reply_session_free(&r.rs);
	free(r.client_unnamed);
	free(r.pending);
}

enum { RELEASES, SWALLOWED, OWED, IDLE_ANSWERS, INJECTED, REWRITTEN, WAITS, N_TOTALS };

/*
 * Replay every connection of a transcript, clients times over, one client
 * after the other on the same two backends: a later client finds its
 * statements prepared already, and known to the pool. totals[] adds up
 * what happened.
 */
static void replay(const char *name, int max_backend_statements, int clients, bool lag, int totals[N_TOTALS])
{
	struct transcript t;
	struct pool_model pool;

	tracing = getenv("REPLY_TRACE") != NULL;
	memset(totals, 0, sizeof(int) * N_TOTALS);
	memset(&pool, 0, sizeof(pool));
	strmap_init(&pool.known);
	for (int i = 0; i < 2; i++) {
		strmap_init(&pool.be[i].statements);
		strmap_init(&pool.be[i].has);
		reply_tracker_init(&pool.be[i].t, &pool.be[i].statements);
		pool.be[i].tx_status = 'I';
	}
	load(name, &t);
	for (int i = 1; i <= t.n_conn; i++)
		if (t.conn[i].n > 0)
			segment(&t.conn[i], lag);
	for (int k = 0; k < clients; k++)
		for (int i = 1; i <= t.n_conn; i++)
			if (t.conn[i].n > 0)
				replay_connection(&pool, name, &t.conn[i], i, max_backend_statements, totals);
	transcript_free(&t);
	for (int i = 0; i < 2; i++) {
		reply_tracker_free(&pool.be[i].t);
		strmap_clear(&pool.be[i].statements, NULL);
		strmap_clear(&pool.be[i].has, NULL);
		free(pool.be[i].unnamed);
		free(pool.be[i].fifo);
	}
	strmap_clear(&pool.known, NULL);
}

/*
 * Every transcript four times over: as recorded and with replies late (lag),
 * each with a generous max_prepared_statements and with 2 (evictions).
 * sum[] adds up what happened in all four.
 */
static void replay_all_ways(const char *name, int sum[N_TOTALS])
{
	static const int limits[] = {100, 2};
	int n[N_TOTALS];

	memset(sum, 0, sizeof(int) * N_TOTALS);
	for (int lag = 0; lag <= 1; lag++) {
		for (size_t l = 0; l < sizeof(limits) / sizeof(limits[0]); l++) {
			replay(name, limits[l], 2, lag, n);
			for (int i = 0; i < N_TOTALS; i++)
				sum[i] += n[i];
		}
	}
	cr_log_info("%s in all: %d releases, %d swallowed, %d owed, %d answered without a backend, %d prepared by "
		    "pgmux, %d rewritten, %d waits",
		    name, sum[RELEASES], sum[SWALLOWED], sum[OWED], sum[IDLE_ANSWERS], sum[INJECTED], sum[REWRITTEN],
		    sum[WAITS]);
}

Test(reply, psql)
{
	int n[N_TOTALS];

	replay_all_ways("psql", n);
	/* Simple queries only: nothing rewritten or answered by pgmux. */
	cr_assert_gt(n[RELEASES], 0);
	cr_assert_eq(n[REWRITTEN] + n[INJECTED] + n[OWED] + n[SWALLOWED] + n[IDLE_ANSWERS], 0);
}

Test(reply, pgbench_simple)
{
	int n[N_TOTALS];

	replay_all_ways("pgbench-simple", n);
	cr_assert_gt(n[RELEASES], 0);
	cr_assert_eq(n[REWRITTEN] + n[INJECTED] + n[OWED] + n[SWALLOWED] + n[IDLE_ANSWERS], 0);
}

Test(reply, pgbench_extended)
{
	int n[N_TOTALS];

	replay_all_ways("pgbench-extended", n);
	cr_assert_gt(n[RELEASES], 0);
}

Test(reply, pgbench_prepared)
{
	int n[N_TOTALS];

	replay_all_ways("pgbench-prepared", n);
	cr_assert_gt(n[RELEASES], 0);
	/* Statements prepared in one transaction are used in later ones, on the other backend. */
	cr_assert_gt(n[INJECTED], 0);
	cr_assert_gt(n[REWRITTEN], 0);
	cr_assert_gt(n[SWALLOWED], 0);
	/* The second client's Parses: the backend has the statement, or the pool knows it. */
	cr_assert_gt(n[OWED], 0);
	cr_assert_gt(n[IDLE_ANSWERS], 0);
}

Test(reply, psycopg_pipeline)
{
	int n[N_TOTALS];

	replay_all_ways("psycopg-pipeline", n);
	cr_assert_gt(n[RELEASES], 0);
	cr_assert_gt(n[INJECTED], 0);
	cr_assert_gt(n[REWRITTEN], 0);
	cr_assert_gt(n[OWED], 0);
	cr_assert_gt(n[IDLE_ANSWERS], 0);
	/* A batch that binds a statement whose Parse is in an earlier one not answered yet. */
	cr_assert_gt(n[WAITS], 0);
}

Test(reply, asyncpg)
{
	int n[N_TOTALS];

	replay_all_ways("asyncpg", n);
	cr_assert_gt(n[RELEASES], 0);
	cr_assert_gt(n[INJECTED], 0);
	cr_assert_gt(n[REWRITTEN], 0);
	cr_assert_gt(n[OWED], 0);
}

/* ------------------------------------------------ what the fuzzer found */

/*
 * Sequences tests/fuzz/fuzz_reply.c found where the tracker's idea of the
 * backend's statements went wrong, driven here message by message.
 */
struct scene {
	struct reply_session rs;
	struct strmap statements;
	struct reply_tracker t;
	struct reply_limits limits;
	struct iobuf to_server;
};

static void scene_init(struct scene *sc, int max_backend_statements)
{
	reply_session_init(&sc->rs, &hooks, NULL);
	strmap_init(&sc->statements);
	reply_tracker_init(&sc->t, &sc->statements);
	reply_link(&sc->t, &sc->rs, true);
	sc->limits.max_backend_statements = max_backend_statements;
	sc->limits.max_client_statements = 100;
	sc->limits.max_packet_size = 1 << 20;
	iobuf_init(&sc->to_server);
}

static void scene_free(struct scene *sc)
{
	reply_unlink(&sc->t);
	reply_tracker_free(&sc->t);
	strmap_clear(&sc->statements, NULL);
	reply_session_free(&sc->rs);
	iobuf_free(&sc->to_server);
}

/* The client sends a message (type and body); returns what the tracker made of it. */
static enum reply_action scene_send(struct scene *sc, char type, const void *body, size_t len)
{
	struct iobuf msg;
	enum reply_action action;

	iobuf_init(&msg);
	put_message(&msg, (uint8_t)type, body, len);
	action = reply_frontend(&sc->t, iobuf_head(&msg), iobuf_len(&msg), 'I', &sc->limits, &sc->to_server);
	cr_assert(action != REPLY_WAIT && action != REPLY_TOO_MANY && action != REPLY_NO_MEMORY);
	reply_count_frontend(&sc->t, (uint8_t)type);
	iobuf_free(&msg);
	return action;
}

static void scene_parse(struct scene *sc, const char *name, const char *text)
{
	uint8_t body[128];
	size_t n = strlen(name) + 1, m = strlen(text) + 1;

	memcpy(body, name, n);
	memcpy(body + n, text, m);
	body[n + m] = body[n + m + 1] = 0; /* no parameter types */
	scene_send(sc, FE_PARSE, body, n + m + 2);
}

static void scene_bind(struct scene *sc, const char *name)
{
	uint8_t body[128] = {0}; /* unnamed portal */
	size_t n = strlen(name) + 1;

	memcpy(body + 1, name, n);
	/* no formats, parameters or result formats: six zero bytes, there already */
	scene_send(sc, FE_BIND, body, 1 + n + 6);
}

/* The backend replies; returns the verdict. */
static struct reply_verdict scene_reply(struct scene *sc, char type, const char *body)
{
	struct reply_verdict v;
	uint8_t owed[64];

	reply_backend(&sc->t, (uint8_t)type, (const uint8_t *)(body ? body : ""), body ? strlen(body) + 1 : 0, &v);
	while (reply_take_owed(&sc->t, owed, sizeof(owed)) > 0)
		;
	return v;
}

static const char *server_name_of(struct scene *sc, const char *client_name)
{
	struct strmap_entry *e = strmap_find(reply_stmts(&sc->rs), client_name);

	cr_assert_not_null(e, "the client has no statement %s", client_name);
	return ((struct prepared_stmt *)e->value)->server_name;
}

Test(reply_found, deallocate_all_ahead_of_a_parse_in_flight)
{
	struct scene sc;
	char x[PREPARED_NAME_LEN + 1];

	scene_init(&sc, 100);
	/* DEALLOCATE ALL, then, before its answer, a Parse: the backend creates that statement afterwards. */
	scene_send(&sc, FE_QUERY, "DEALLOCATE ALL", 15);
	scene_parse(&sc, "s1", "SELECT 1");
	scene_send(&sc, FE_SYNC, NULL, 0);
	snprintf(x, sizeof(x), "%s", server_name_of(&sc, "s1"));
	scene_reply(&sc, BE_COMMAND_COMPLETE, "DEALLOCATE ALL");
	cr_assert_not_null(strmap_find(&sc.statements, x), "the backend's statement went with the DEALLOCATE ALL");
	cr_assert_not_null(strmap_find(reply_stmts(&sc.rs), "s1"), "the client's statement went with the DEALLOCATE ALL");
	scene_reply(&sc, BE_READY_FOR_QUERY, "I");
	scene_reply(&sc, BE_PARSE_COMPLETE, NULL);
	scene_reply(&sc, BE_READY_FOR_QUERY, "I");
	cr_assert(reply_settled(&sc.t));
	cr_assert_not_null(strmap_find(&sc.statements, x));
	scene_free(&sc);
}

Test(reply_found, failed_parse_of_a_statement_a_later_batch_prepares_again)
{
	struct scene sc;
	char x[PREPARED_NAME_LEN + 1];

	scene_init(&sc, 1);
	/* Batch 1: s, under x. */
	scene_parse(&sc, "s", "SELECT 1");
	scene_send(&sc, FE_SYNC, NULL, 0);
	snprintf(x, sizeof(x), "%s", server_name_of(&sc, "s"));
	/* Batch 2, before batch 1 is answered: t evicts x; the Bind of s prepares x again, evicting t. */
	scene_parse(&sc, "t", "SELECT 2");
	scene_bind(&sc, "s");
	scene_send(&sc, FE_SYNC, NULL, 0);
	/* Batch 1 fails: its Parse of x never happened, but batch 2 prepares x. */
	scene_reply(&sc, BE_ERROR_RESPONSE, "SERROR");
	scene_reply(&sc, BE_READY_FOR_QUERY, "I");
	cr_assert_not_null(strmap_find(&sc.statements, x), "batch 2 prepares x: the backend has it");
	scene_reply(&sc, BE_CLOSE_COMPLETE, NULL); /* of x: nothing there */
	scene_reply(&sc, BE_PARSE_COMPLETE, NULL); /* t */
	scene_reply(&sc, BE_CLOSE_COMPLETE, NULL); /* of t */
	scene_reply(&sc, BE_PARSE_COMPLETE, NULL); /* x again */
	scene_reply(&sc, BE_BIND_COMPLETE, NULL);
	scene_reply(&sc, BE_READY_FOR_QUERY, "I");
	cr_assert(reply_settled(&sc.t));
	cr_assert_eq(sc.statements.count, 1);
	cr_assert_not_null(strmap_find(&sc.statements, x));
	scene_free(&sc);
}

Test(reply_found, a_parse_under_a_name_dropped_meanwhile_breaks_the_backend)
{
	struct scene sc;
	struct reply_verdict v;

	scene_init(&sc, 100);
	scene_parse(&sc, "s", "SELECT 1");
	scene_send(&sc, FE_SYNC, NULL, 0);
	scene_reply(&sc, BE_PARSE_COMPLETE, NULL);
	scene_reply(&sc, BE_READY_FOR_QUERY, "I");
	/*
	 * DEALLOCATE ALL and, in the same batch, a Parse of s again: pgmux has
	 * the backend refuse it under s's server-side name, which by then is gone.
	 */
	scene_send(&sc, FE_QUERY, "DEALLOCATE ALL", 15);
	cr_assert_eq(scene_send(&sc, FE_PARSE, "s\0SELECT 2\0\0", 13), REPLY_REWRITTEN);
	scene_reply(&sc, BE_COMMAND_COMPLETE, "DEALLOCATE ALL");
	scene_reply(&sc, BE_READY_FOR_QUERY, "I");
	v = scene_reply(&sc, BE_PARSE_COMPLETE, NULL);
	cr_assert(v.broken, "the backend took the client's text under another statement's name: it must go");
	cr_assert(!v.forward);
	scene_free(&sc);
}

/*
 * A client that prepares and closes statement after statement (a driver's
 * statement cache turning over): the names pgmux keeps for its error texts
 * stay bounded by the statements it holds, and a held statement's name is
 * still translated.
 */
Test(reply_found, statement_names_stay_bounded_as_statements_come_and_go)
{
	struct scene sc;
	const uint8_t close_s[] = { 'S', 's', 0 };
	char text[32], error[96];
	struct iobuf out;
	size_t n;

	scene_init(&sc, 5000);
	for (int i = 0; i < 1000; i++) {
		snprintf(text, sizeof(text), "SELECT %d", i);
		scene_parse(&sc, "s", text);
		scene_send(&sc, FE_CLOSE, close_s, sizeof(close_s));
		scene_send(&sc, FE_SYNC, NULL, 0);
		scene_reply(&sc, BE_PARSE_COMPLETE, NULL);
		scene_reply(&sc, BE_READY_FOR_QUERY, "I");
		cr_assert(reply_settled(&sc.t), "round %d", i);
		cr_assert_eq(reply_stmts(&sc.rs)->count, 0);
		/* Pruned before a new name once there are twice the statements held (one, the new one) and the slack. */
		cr_assert_leq(reply_stmt_names(&sc.rs)->count, 2 + STMT_NAMES_SLACK, "round %d: %u names kept", i,
			      reply_stmt_names(&sc.rs)->count);
	}
	scene_parse(&sc, "kept", "SELECT 'kept'");
	scene_send(&sc, FE_SYNC, NULL, 0);
	scene_reply(&sc, BE_PARSE_COMPLETE, NULL);
	scene_reply(&sc, BE_READY_FOR_QUERY, "I");
	/* An ErrorResponse body naming the server-side statement: S, C and M fields. */
	n = (size_t)snprintf(error, sizeof(error), "SERROR%cC26000%cMprepared statement \"%s\" does not exist%c",
			     0, 0, server_name_of(&sc, "kept"), 0) + 1;
	iobuf_init(&out);
	cr_assert(reply_translate_error(&sc.rs, (const uint8_t *)error, n, &out));
	cr_assert_not_null(memmem(iobuf_head(&out), iobuf_len(&out), "\"kept\"", 6), "the client's name is not in the error");
	iobuf_free(&out);
	scene_free(&sc);
}
