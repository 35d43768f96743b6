/*
 * fuzz_reply.c: libFuzzer harness for the reply tracker (src/reply.c), which
 * has no I/O and so can be driven without a backend. The input is a script
 * of steps for one client and two backends: a frontend message of the client
 * (a type, one of a few statement names and texts, or a body of raw bytes);
 * the backend's answer to the next message it was sent, as PostgreSQL
 * answers (in order, every message but a Close or Sync may fail, nothing
 * after a failure until the Sync), with any transaction status, notices, a
 * command tag that drops statements; the client's input taken with no
 * backend; a switch to the other backend between transactions.
 *
 * Checked, besides no sanitizer report and no leak once everything is freed:
 * what the tracker writes for the backend and for the client is well-framed
 * messages; the replies it owes are ParseComplete or CloseComplete; once a
 * backend has answered everything, the statements the tracker believes it
 * has are the ones it has (after failed batches, evictions, DISCARD ALL); a
 * release comes only with nothing in flight once the owed replies went.
 */
#include <string.h>

#include "fuzz.h"
#include "iobuf.h"
#include "proto.h"
#include "reply.h"
#include "list.h"
#include "strmap.h"

/* FUZZ_REPLY_TRACE=1: say what each step did (to replay one input). */
static int tracing = -1;
#define trace(...) (tracing ? (void)fprintf(stderr, __VA_ARGS__) : (void)0)

static void trace_queue(const struct reply_tracker *t, const struct strmap *statements)
{
	if (!tracing)
		return;
	fprintf(stderr, "    queue:");
	for (uint32_t i = 0; i < t->count; i++) {
		const struct pending_reply *r = &t->items[(t->head + i) % t->cap];

		fprintf(stderr, " %s%s%.12s", reply_kind_name(r->kind), r->name[0] ? ":" : "", r->name);
	}
	fprintf(stderr, " | statements %zu, outstanding %d%s%s\n", (size_t)statements->count, t->outstanding,
		t->unsynced ? ", unsynced" : "", t->skipping_until_sync ? ", skipping" : "");
}

struct cursor {
	const uint8_t *p;
	size_t left;
};

static uint8_t next(struct cursor *c)
{
	if (c->left == 0)
		return 0;
	c->left--;
	return *c->p++;
}

static const char *const names[] = {"", "s1", "s2", "s3",
				    "a_name_longer_than_sixty_three_bytes_which_postgresql_cuts_at_that_length_x",
				    "a_name_longer_than_sixty_three_bytes_which_postgresql_cuts_at_that_length_y"};
static const char *const texts[] = {"SELECT 1", "BEGIN", "COMMIT", "SET a.b = 1", "SELECT $1::int",
				    "DEALLOCATE ALL", "DISCARD ALL", "RESET ALL", "INSERT INTO t VALUES (1)"};
static const char *const tags[] = {"SELECT 1", "DISCARD ALL", "DEALLOCATE ALL", "RESET", "BEGIN"};

static unsigned scan_hook(void *arg, const char *sql, size_t len)
{
	(void)arg;
	if (len >= 5 && (memcmp(sql, "BEGIN", 5) == 0 || memcmp(sql, "COMMIT", 5) == 0))
		return SQL_EFFECT_TRANSACTION_CONTROL;
	if (len >= 9 && memcmp(sql, "RESET ALL", 9) == 0)
		return SQL_EFFECT_RESET_ALL;
	if (len >= 3 && memcmp(sql, "SET", 3) == 0)
		return SQL_EFFECT_SET_SESSION;
	return 0;
}

static bool known_hook(void *arg, const char *server_name)
{
	(void)server_name;
	return *(bool *)arg;
}

static const struct reply_hooks hooks = {.scan = scan_hook, .known = known_hook};

/* Every message in buf is whole and well framed. */
static void check_framing(const struct iobuf *buf, const char *what)
{
	size_t len = iobuf_len(buf), off = 0;
	const uint8_t *p;

	FUZZ_CHECK(!buf->failed, "%s failed", what);
	if (len == 0)
		return; /* (iobuf_head() of a buffer never allocated is NULL + 0) */
	p = iobuf_head(buf);
	while (off < len) {
		FUZZ_CHECK(len - off >= PROTO_HEADER_LEN, "%s: a partial header", what);
		uint32_t mlen = get_u32(p + off + 1);

		FUZZ_CHECK(mlen >= 4 && len - off >= 1 + (size_t)mlen, "%s: a message of %u bytes at %zu of %zu", what,
			   mlen, off, len);
		off += 1 + (size_t)mlen;
	}
}

static void put_frontend(struct iobuf *out, struct cursor *c)
{
	static const uint8_t types[] = {FE_PARSE, FE_BIND, FE_DESCRIBE, FE_CLOSE, FE_EXECUTE,
					FE_SYNC,  FE_QUERY, FE_FLUSH,    FE_FUNCTION_CALL};
	uint8_t type = types[next(c) % sizeof(types)];
	const char *name = names[next(c) % (sizeof(names) / sizeof(names[0]))];
	const char *text = texts[next(c) % (sizeof(texts) / sizeof(texts[0]))];
	uint8_t raw = next(c);
	size_t begin = proto_begin(out, (char)type);

	if (raw >= 240) {
		/* A body of raw bytes: whatever a client may send. */
		uint8_t n = next(c);

		for (uint8_t i = 0; i < n % 24; i++)
			iobuf_append_u8(out, next(c));
	} else if (type == FE_PARSE) {
		iobuf_append_str(out, name);
		iobuf_append_str(out, text);
		iobuf_append_u16(out, 0);
	} else if (type == FE_BIND) {
		iobuf_append_str(out, "");
		iobuf_append_str(out, name);
		iobuf_append_u16(out, 0);
		iobuf_append_u16(out, 0);
		iobuf_append_u16(out, 0);
	} else if (type == FE_DESCRIBE || type == FE_CLOSE) {
		iobuf_append_u8(out, raw & 1 ? 'P' : 'S');
		iobuf_append_str(out, name);
	} else if (type == FE_EXECUTE) {
		iobuf_append_str(out, "");
		iobuf_append_u32(out, 0);
	} else if (type == FE_QUERY) {
		iobuf_append_str(out, text);
	} else if (type == FE_FLUSH && (raw & 1)) {
		iobuf_append_u8(out, 0); /* a Flush with a body */
	}
	proto_end(out, begin);
}

/*
 * What a model backend received, in order (each message's type, a Describe's
 * or Close's kind, the statement it names), and the statements it has.
 */
struct model {
	uint8_t fifo[256];
	uint8_t kind[256];
	char name[256][96];
	bool well_formed[256]; /* a Parse: name, text, parameter types and nothing after */
	struct strmap has;
	unsigned head, tail;
	bool skipping;
	char tx_status;
	int pending; /* the message at the head has begun its answer (a Describe's 't', a Query's rows) */
};

static void model_receive(struct model *m, const struct iobuf *buf)
{
	const uint8_t *p;
	size_t len = iobuf_len(buf), off = 0;

	if (len == 0)
		return;
	p = iobuf_head(buf);
	while (off < len) {
		uint32_t mlen = get_u32(p + off + 1);

		/* A bare Flush has no answer at all. */
		if (!(p[off] == FE_FLUSH && mlen == 4)) {
			unsigned at = m->tail % sizeof(m->fifo);
			const uint8_t *body = p + off + PROTO_HEADER_LEN;
			size_t blen = mlen - 4, skip = 0;
			const uint8_t *nul;

			FUZZ_CHECK(m->tail - m->head < sizeof(m->fifo), "model queue full");
			m->fifo[at] = p[off];
			m->kind[at] = blen > 0 ? body[0] : 0;
			/* The statement it names: a Parse's first string, a Bind's second, a Describe's or Close's. */
			if (p[off] == FE_BIND && (nul = memchr(body, 0, blen)) != NULL)
				skip = (size_t)(nul - body) + 1;
			else if (p[off] == FE_DESCRIBE || p[off] == FE_CLOSE)
				skip = 1;
			m->name[at][0] = '\0';
			m->well_formed[at] = false;
			if (p[off] == FE_PARSE && (nul = memchr(body, 0, blen)) != NULL) {
				const uint8_t *text = nul + 1;
				const uint8_t *end = body + blen;
				const uint8_t *nul2 = text < end ? memchr(text, 0, (size_t)(end - text)) : NULL;

				m->well_formed[at] = nul2 && end - (nul2 + 1) >= 2 &&
						     (size_t)(end - (nul2 + 3)) == 4u * get_u16(nul2 + 1);
			}
			if ((p[off] == FE_PARSE || p[off] == FE_BIND || p[off] == FE_DESCRIBE || p[off] == FE_CLOSE) &&
			    skip < blen && (nul = memchr(body + skip, 0, blen - skip)) != NULL &&
			    (size_t)(nul - body - skip) < sizeof(m->name[at]))
				memcpy(m->name[at], body + skip, (size_t)(nul - body - skip) + 1);
			m->tail++;
		}
		off += 1 + (size_t)mlen;
	}
}

/* A statement ran: its tag, and what it did to the backend's statements. */
static void model_command(struct model *m, struct iobuf *body, const char *tag)
{
	iobuf_append_str(body, tag);
	if (strcmp(tag, "DISCARD ALL") == 0 || strcmp(tag, "DEALLOCATE ALL") == 0)
		strmap_clear(&m->has, NULL);
}

static void put_error(struct iobuf *body, bool names_ours)
{
	iobuf_append_u8(body, 'S');
	iobuf_append_str(body, "ERROR");
	iobuf_append_u8(body, 'M');
	iobuf_append_str(body, names_ours ? "prepared statement \"pgmux_0123456789abcdef01234567\" x" : "x");
	iobuf_append_u8(body, 0);
}

/*
 * The model backend's next reply (type, body), as PostgreSQL would send it
 * for the message at the head of what it received. False when it has
 * nothing to say.
 */
static bool model_reply(struct model *m, uint8_t *type, struct iobuf *body, struct cursor *c)
{
	uint8_t how = next(c);
	uint8_t msg;

	iobuf_reset(body);
	if (how % 16 == 0) {
		/* A notice or a parameter change may come at any time. */
		*type = how & 16 ? BE_NOTICE_RESPONSE : BE_PARAMETER_STATUS;
		iobuf_append_str(body, "x");
		if (*type == BE_PARAMETER_STATUS)
			iobuf_append_str(body, "y");
		return true;
	}
	while (m->head != m->tail && m->skipping && m->fifo[m->head % sizeof(m->fifo)] != FE_SYNC)
		m->head++;
	if (m->head == m->tail)
		return false;
	msg = m->fifo[m->head % sizeof(m->fifo)];
	const char *name = m->name[m->head % sizeof(m->fifo)];
	bool named = name[0] != '\0' && (msg == FE_PARSE || msg == FE_BIND ||
					 ((msg == FE_DESCRIBE || msg == FE_CLOSE) && m->kind[m->head % sizeof(m->fifo)] == 'S'));
	bool exists = named && strmap_find(&m->has, name) != NULL;
	/*
	 * What PostgreSQL refuses for sure: a Parse of a name it has, a Bind or
	 * Describe of one it lacks. Besides, any message but a Close or a Sync
	 * may fail (a Query's error is followed by its ReadyForQuery).
	 */
	bool fails = (msg == FE_PARSE && (exists || !m->well_formed[m->head % sizeof(m->fifo)])) ||
		     ((msg == FE_BIND || msg == FE_DESCRIBE) && named && !exists);

	if ((fails || how % 7 == 1) && msg != FE_CLOSE && msg != FE_SYNC && m->pending == 0) {
		*type = BE_ERROR_RESPONSE;
		put_error(body, how & 8);
		if (msg == FE_QUERY || msg == FE_FUNCTION_CALL) {
			m->pending = 1; /* its ReadyForQuery next */
			if (m->tx_status == 'T')
				m->tx_status = 'E';
			return true;
		}
		m->skipping = true;
		m->head++;
		return true;
	}
	switch (msg) {
	case FE_PARSE:
		*type = BE_PARSE_COMPLETE;
		if (named)
			strmap_insert(&m->has, name, NULL);
		break;
	case FE_BIND:
		*type = BE_BIND_COMPLETE;
		break;
	case FE_DESCRIBE:
		if (m->kind[m->head % sizeof(m->fifo)] == 'S' && m->pending == 0) {
			*type = BE_PARAMETER_DESCRIPTION;
			iobuf_append_u16(body, 0);
			m->pending = 1;
			return true;
		}
		*type = how & 1 ? BE_ROW_DESCRIPTION : BE_NO_DATA;
		if (*type == BE_ROW_DESCRIPTION)
			iobuf_append_u16(body, 0);
		break;
	case FE_EXECUTE:
		if (how & 32) {
			*type = BE_DATA_ROW;
			iobuf_append_u16(body, 0);
			return true;
		}
		*type = how & 64 ? BE_PORTAL_SUSPENDED : BE_COMMAND_COMPLETE;
		if (*type == BE_COMMAND_COMPLETE)
			model_command(m, body, tags[(how >> 2) % (sizeof(tags) / sizeof(tags[0]))]);
		break;
	case FE_CLOSE:
		*type = BE_CLOSE_COMPLETE;
		if (exists)
			strmap_delete(&m->has, strmap_find(&m->has, name));
		break;
	case FE_QUERY:
	case FE_FUNCTION_CALL:
		if (m->pending == 0) {
			*type = msg == FE_QUERY ? BE_COMMAND_COMPLETE : 'V';
			if (msg == FE_QUERY)
				model_command(m, body, tags[(how >> 2) % (sizeof(tags) / sizeof(tags[0]))]);
			else
				iobuf_append_u32(body, 0xffffffffu);
			m->pending = 1;
			return true;
		}
		/* fall through: its ReadyForQuery */
	case FE_SYNC:
		*type = BE_READY_FOR_QUERY;
		if (how & 2)
			m->tx_status = "ITE"[(how >> 2) % 3];
		iobuf_append_u8(body, (uint8_t)m->tx_status);
		m->skipping = false;
		break;
	default:
		/* A Flush with a body: refused. */
		*type = BE_ERROR_RESPONSE;
		put_error(body, false);
		m->skipping = true;
		break;
	}
	m->pending = 0;
	m->head++;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cursor c = {data, size};
	struct strmap statements[2];
	struct reply_tracker t[2];
	struct reply_session rs;
	struct reply_limits limits = {.max_client_statements = 8, .max_packet_size = 1 << 20};
	struct iobuf in, to_server, to_client, body;
	struct model model[2];
	bool known = false;
	int cur = 0;
	bool linked = false;
	char tx_status[2] = {'I', 'I'};

	if (tracing < 0)
		tracing = getenv("FUZZ_REPLY_TRACE") != NULL;
	limits.max_backend_statements = 1 + next(&c) % 3;
	memset(model, 0, sizeof(model));
	model[0].tx_status = model[1].tx_status = 'I';
	strmap_init(&model[0].has);
	strmap_init(&model[1].has);
	reply_session_init(&rs, &hooks, &known);
	iobuf_init(&in);
	iobuf_init(&to_server);
	iobuf_init(&to_client);
	iobuf_init(&body);
	for (int i = 0; i < 2; i++) {
		strmap_init(&statements[i]);
		reply_tracker_init(&t[i], &statements[i]);
	}
	while (c.left > 0) {
		uint8_t op = next(&c) % 4;

		if (op == 0) {
			/* The client sends a message: with a backend it goes through the tracker at once. */
			if (model[cur].tail - model[cur].head > 200)
				continue; /* (the model backend holds so many) */
			put_frontend(&in, &c);
			if (!linked)
				continue;
			const uint8_t *p = iobuf_head(&in);
			size_t len = 1 + (size_t)get_u32(p + 1);
			uint8_t type = p[0];
			bool whole = (type != FE_FLUSH || len > 5);
			enum reply_action action = REPLY_FORWARD;

			if (whole)
				action = reply_frontend(&t[cur], p, len, tx_status[cur], &limits, &to_server);
			trace("backend %d: client '%c' %.20s -> action %d\n", cur, type,
			      type == FE_PARSE || type == FE_QUERY ? (const char *)p + 5
			      : type == FE_BIND && len > 6 ? (const char *)p + 6 : "", action);
			if (action == REPLY_WAIT || action == REPLY_TOO_MANY || action == REPLY_NO_MEMORY) {
				/* Not taken: dropped here (a client closed, or one that gave up waiting). */
				iobuf_consume(&in, len);
				continue;
			}
			if (action == REPLY_FORWARD)
				iobuf_append(&to_server, p, len);
			reply_count_frontend(&t[cur], type);
			iobuf_consume(&in, len);
		} else if (op == 1 && linked) {
			/* The backend answers something. */
			struct reply_verdict v;
			uint8_t type;

			static const uint8_t empty[1];
			const uint8_t *b;

			if (!model_reply(&model[cur], &type, &body, &c))
				continue;
			b = iobuf_len(&body) ? iobuf_head(&body) : empty;
			if (type == BE_READY_FOR_QUERY)
				tx_status[cur] = (char)b[0];
			reply_backend(&t[cur], type, b, iobuf_len(&body), &v);
			trace("backend %d: reply '%c'%s%s\n", cur, type, v.forward ? "" : " swallowed",
			      v.release ? " release" : "");
			if (v.forward) {
				iobuf_append_u8(&to_client, type);
				iobuf_append_u32(&to_client, (uint32_t)(4 + iobuf_len(&body)));
				iobuf_append(&to_client, b, iobuf_len(&body));
			}
			if (v.broken) {
				/* pgmux closes such a backend: a new connection takes its place. */
				reply_unlink(&t[cur]);
				reply_tracker_free(&t[cur]);
				strmap_clear(&statements[cur], NULL);
				reply_tracker_init(&t[cur], &statements[cur]);
				strmap_clear(&model[cur].has, NULL);
				model[cur].head = model[cur].tail = 0;
				model[cur].skipping = false;
				model[cur].pending = 0;
				model[cur].tx_status = 'I';
				tx_status[cur] = 'I';
				linked = false;
				continue;
			}
			FUZZ_CHECK(!v.owed || reply_owed_due(&t[cur]), "owed replies said due but none is");
			if (v.statement != REPLY_STATEMENT_NONE)
				FUZZ_CHECK(strncmp(v.statement_name, "pgmux_", 6) == 0, "statement %s", v.statement_name);
			if (v.release) {
				uint8_t owed[64];

				while (reply_take_owed(&t[cur], owed, sizeof(owed)) > 0)
					;
				FUZZ_CHECK(reply_settled(&t[cur]), "a release with replies in flight");
				reply_unlink(&t[cur]);
				linked = false;
			}
		} else if (op == 2 && !linked && iobuf_len(&in) > 0) {
			/* No backend: what pgmux answers alone, or a backend is linked. */
			struct reply_idle_result result;
			bool unjudged = next(&c) & 1;

			known = next(&c) & 1;
			switch (reply_answer_idle(&rs, iobuf_head(&in), iobuf_len(&in), unjudged, &limits, &to_client,
						  &result)) {
			case REPLY_IDLE_ANSWERED:
				FUZZ_CHECK(result.consumed > 0 && result.consumed <= iobuf_len(&in), "consumed %zu",
					   result.consumed);
				iobuf_consume(&in, result.consumed);
				break;
			case REPLY_IDLE_BORROW:
			case REPLY_IDLE_BORROW_OR_ANSWER:
				trace("link backend %d\n", cur);
				reply_link(&t[cur], &rs, true);
				linked = true;
				break;
			case REPLY_IDLE_NEED_MORE:
			case REPLY_IDLE_TOO_MANY:
			case REPLY_IDLE_NO_MEMORY:
				/* Dropped here, as a closed client's would be. */
				iobuf_consume(&in, 1 + (size_t)get_u32(iobuf_head(&in) + 1));
				break;
			}
		} else if (op == 3 && !linked) {
			cur = 1 - cur;
		}
		if (linked) {
			uint8_t owed[64];
			size_t n;

			while ((n = reply_take_owed(&t[cur], owed, sizeof(owed))) > 0) {
				for (size_t i = 0; i < n; i += PROTO_HEADER_LEN)
					FUZZ_CHECK((owed[i] == BE_PARSE_COMPLETE || owed[i] == BE_CLOSE_COMPLETE) &&
							   get_u32(owed + i + 1) == 4,
						   "owed reply '%c'", owed[i]);
				iobuf_append(&to_client, owed, n);
			}
		}
		if (op <= 1)
			trace_queue(&t[cur], &statements[cur]);
		check_framing(&to_server, "what the backend got");
		model_receive(&model[cur], &to_server);
		check_framing(&to_client, "what the client got");
		/*
		 * With everything answered, the tracker knows what the backend has.
		 * (It may hold more than max_backend_statements for a while: a
		 * Close of pgmux's own that the backend skipped leaves the statement
		 * there, and the next Parse makes room again.)
		 */
		for (int i = 0; i < 2; i++) {
			if (model[i].head != model[i].tail || t[i].count > 0)
				continue;
			if (tracing && statements[i].count != model[i].has.count) {
				for (struct list_node *pos = model[i].has.lru.next; pos != &model[i].has.lru; pos = pos->next)
					fprintf(stderr, "    backend %d has %s\n", i, list_entry(pos, struct strmap_entry, lru)->key);
			}
			FUZZ_CHECK(statements[i].count == model[i].has.count, "backend %d has %zu statements, the tracker "
				   "believes %zu", i, (size_t)model[i].has.count, (size_t)statements[i].count);
			for (struct list_node *pos = statements[i].lru.next; pos != &statements[i].lru; pos = pos->next)
				FUZZ_CHECK(strmap_find(&model[i].has, list_entry(pos, struct strmap_entry, lru)->key),
					   "the tracker believes backend %d has %s", i,
					   list_entry(pos, struct strmap_entry, lru)->key);
		}
		/* Keep the buffers small: what was checked is done with. */
		iobuf_reset(&to_server);
		iobuf_reset(&to_client);
	}
	if (linked)
		reply_unlink(&t[cur]);
	for (int i = 0; i < 2; i++) {
		reply_tracker_free(&t[i]);
		strmap_clear(&statements[i], NULL);
		strmap_clear(&model[i].has, NULL);
	}
	reply_session_free(&rs);
	iobuf_free(&in);
	iobuf_free(&to_server);
	iobuf_free(&to_client);
	iobuf_free(&body);
	return 0;
}
