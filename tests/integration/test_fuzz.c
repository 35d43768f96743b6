/*
 * test_fuzz.c: what a logged-in client sends pgmux, and what may go wrong
 * with it: one test per bug found there, each a specific message sequence
 * (answered as PostgreSQL answers it, without harm to other clients).
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct pgmux px;

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static void fini_kill_leftovers(void)
{
	h_teardown();
}

/* Trust, no TLS on either side. */
static void start_fuzz_pgmux(const char *pool_mode, int max_connections, int workers, const char *extra_pool)
{
	struct pgmux_options o;

	h_wait_no_app_backends();
	pgmux_options_default(&o);
	o.tls = false;
	o.server_tls = "disable";
	o.client_auth = "trust";
	o.pool_mode = pool_mode;
	o.max_connections = max_connections;
	o.workers = workers;
	o.extra_pgmux = "max_packet_size = 64kB";
	o.extra_pool = extra_pool;
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
}

/*
 * Transaction pooling with one backend, which every client of the test
 * shares: what a session leaves on it meets the others, and a session keeps
 * it from one transaction to the next as it would keep its own connection
 * directly (so its answers can be compared with PostgreSQL's byte for
 * byte). A client kept waiting for it gives up after a few seconds, not the
 * default two minutes.
 */
static void start_txn_one_backend(const char *extra_pool)
{
	char pool[512];

	snprintf(pool, sizeof(pool), "max_idle_connections_percent = 100\nconnection_borrow_timeout = %dms\n%s",
		 h_scaled_ms(3000), extra_pool ? extra_pool : "");
	start_fuzz_pgmux("transaction", 1, 2, pool);
}

/* The same, with another client logged in: it shares the backend, and sees whether a test's session harms it. */
static PGconn *start_shared(const char *extra_pool)
{
	start_txn_one_backend(extra_pool);
	return h_app_session(&px, "disable", NULL);
}

static void stop_shared(PGconn *other)
{
	PQfinish(other);
	h_stop_expect_clean_exit(&px);
}

/* ---------------------------------------------------------------- bytes a client sends */

struct buf {
	uint8_t *p;
	size_t len;
	size_t cap;
};

static void buf_put(struct buf *b, const void *data, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;

		while (b->len + n + 1 > cap)
			cap *= 2;
		b->p = realloc(b->p, cap);
		cr_assert_not_null(b->p);
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0'; /* text buffers stay printable */
}

static void buf_u8(struct buf *b, uint8_t v)
{
	buf_put(b, &v, 1);
}

static void buf_i32(struct buf *b, int64_t v)
{
	uint8_t x[4];

	h_put_u32(x, (uint32_t)v);
	buf_put(b, x, 4);
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* A message is begun with its type and a length to fill in, and ended by filling it in. */
static size_t msg_begin(struct buf *b, char type)
{
	size_t at = b->len;

	buf_u8(b, (uint8_t)type);
	buf_i32(b, 0);
	return at;
}

static void msg_end(struct buf *b, size_t at)
{
	h_put_u32(b->p + at + 1, (uint32_t)(b->len - at - 1));
}

/* A message of any type and body. */
static void msg_raw(struct buf *b, char type, const void *body, size_t len)
{
	size_t at = msg_begin(b, type);

	buf_put(b, body, len);
	msg_end(b, at);
}

/* A string and its NUL. */
static void buf_str(struct buf *b, const char *s)
{
	buf_put(b, s, strlen(s) + 1);
}

static void msg_query(struct buf *b, const char *sql)
{
	size_t at = msg_begin(b, 'Q');

	buf_str(b, sql);
	msg_end(b, at);
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_printf(struct buf *b, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	buf_put(b, line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void msg_sync(struct buf *b)
{
	msg_raw(b, 'S', "", 0);
}

/* An Execute of a portal, all of its rows. */
static void msg_execute(struct buf *b, const char *portal)
{
	size_t at = msg_begin(b, 'E');

	buf_str(b, portal);
	buf_i32(b, 0);
	msg_end(b, at);
}

/* A buffer's bytes as a string ("" when there are none). */
static const char *buf_text(const struct buf *b)
{
	return b->p ? (const char *)b->p : "";
}

static void buf_i16(struct buf *b, int v)
{
	uint8_t x[2] = {(uint8_t)((unsigned)v >> 8), (uint8_t)v};

	buf_put(b, x, 2);
}

/* Extended-protocol messages in their plainest form: no parameters, default formats. */
static void msg_parse(struct buf *b, const char *name, const char *sql)
{
	size_t at = msg_begin(b, 'P');

	buf_str(b, name);
	buf_str(b, sql);
	buf_i16(b, 0);
	msg_end(b, at);
}

static void msg_bind(struct buf *b, const char *portal, const char *name)
{
	size_t at = msg_begin(b, 'B');

	buf_str(b, portal);
	buf_str(b, name);
	buf_i16(b, 0);
	buf_i16(b, 0);
	buf_i16(b, 0);
	msg_end(b, at);
}

/* Run a statement: Bind it to the unnamed portal, Execute that, Sync. */
static void msg_run(struct buf *b, const char *name)
{
	msg_bind(b, "", name);
	msg_execute(b, "");
	msg_sync(b);
}

/* A Describe or Close ('D', 'C') of a statement ('S') or portal ('P'). */
static void msg_target(struct buf *b, char type, char kind, const char *name)
{
	size_t at = msg_begin(b, type);

	buf_u8(b, (uint8_t)kind);
	buf_str(b, name);
	msg_end(b, at);
}

/* ---------------------------------------------------------------- raw sessions */

/*
 * Read one backend message. Unlike h_raw_read_message(), a reset counts as a
 * close (H_MSG_CLOSED, with *len the bytes of a message cut short by it, 0
 * between messages) and H_MSG_ERROR means a length no backend sends.
 */
static enum h_msg_result read_message(int fd, char *type, char **body, size_t *len, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	uint8_t hdr[5];
	ssize_t n = h_raw_read(fd, hdr, 5, timeout_ms);
	uint32_t mlen;

	*body = NULL;
	*len = 0;
	*type = n > 0 ? (char)hdr[0] : '?';
	if (n == -2)
		return H_MSG_TIMEOUT;
	if (n < 5) {
		*len = n > 0 ? (size_t)n : 0;
		return H_MSG_CLOSED;
	}
	mlen = h_get_u32(hdr + 1);
	if (mlen < 4 || mlen > (1u << 24))
		return H_MSG_ERROR;
	*body = malloc(mlen - 4 + 1);
	cr_assert_not_null(*body);
	n = h_raw_read(fd, *body, mlen - 4, (int)(deadline - h_now_ms()));
	if (n == -2 || n < (ssize_t)(mlen - 4)) {
		free(*body);
		*body = NULL;
		*len = 5 + (n > 0 ? (size_t)n : 0);
		return n == -2 ? H_MSG_TIMEOUT : H_MSG_CLOSED;
	}
	(*body)[mlen - 4] = '\0';
	*len = mlen - 4;
	return H_MSG_OK;
}

/* Log in raw with trust; the socket once ReadyForQuery came (and the cancel key), or -1. */
static int raw_login(uint32_t key[2])
{
	int fd = h_raw_connect(px.port, h_scaled_ms(2000));
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", "application_name", "fuzz", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);

	if (fd < 0)
		return -1;
	if (!h_raw_send(fd, buf, len)) {
		close(fd);
		return -1;
	}
	for (;;) {
		char type;
		char *body;
		size_t blen;
		enum h_msg_result r = read_message(fd, &type, &body, &blen, h_scaled_ms(5000));

		if (r == H_MSG_OK && type == 'K' && blen == 8 && key) {
			key[0] = h_get_u32(body);
			key[1] = h_get_u32(body + 4);
		}
		free(body);
		if (r != H_MSG_OK || type == 'E') {
			close(fd);
			return -1;
		}
		if (type == 'Z')
			return fd;
	}
}

/* A raw session that must log in. */
static int raw_session(uint32_t key[2])
{
	int fd = raw_login(key);

	if (fd < 0)
		pgmux_dump_logs(&px);
	cr_assert(fd >= 0, "a raw session could not log in through pgmux");
	return fd;
}

static void send_buf(int fd, const struct buf *b)
{
	cr_assert(h_raw_send(fd, b->p, b->len), "could not send %zu bytes to pgmux", b->len);
}

/* The next message must be a FATAL error with sqlstate, and then the connection must close. */
static void expect_fatal_then_close(int fd, const char *sqlstate, const char *what)
{
	char type;
	char *body;
	size_t len;
	enum h_msg_result r = read_message(fd, &type, &body, &len, h_scaled_ms(3000));
	const char *sev = r == H_MSG_OK && type == 'E' ? h_error_field(body, len, 'V') : NULL;
	const char *code = sev ? h_error_field(body, len, 'C') : NULL;
	bool ok = sev && code && strcmp(sev, "FATAL") == 0 && strcmp(code, sqlstate) == 0;

	if (!ok)
		pgmux_dump_logs(&px);
	cr_assert(ok, "%s: expected FATAL %s, got %s (message '%c', %s %s)", what, sqlstate,
		  r == H_MSG_OK ? "a message" : r == H_MSG_TIMEOUT ? "nothing" : "a close", r == H_MSG_OK ? type : '-',
		  sev ? sev : "", code ? code : "");
	free(body);
	cr_assert(h_raw_wait_closed(fd, h_scaled_ms(3000)), "%s: not closed after the FATAL error", what);
	close(fd);
}

/* A simple query on a raw session, answered up to its ReadyForQuery; false if that did not come. */
static bool raw_query(int fd, const char *sql)
{
	struct buf q = {0};
	bool ok;

	msg_query(&q, sql);
	ok = h_raw_send(fd, q.p, q.len);
	buf_free(&q);
	while (ok) {
		char type;
		char *body;
		size_t len;

		ok = read_message(fd, &type, &body, &len, h_scaled_ms(5000)) == H_MSG_OK && type != 'E';
		free(body);
		if (ok && type == 'Z')
			return true;
	}
	return false;
}

/*
 * With transaction pooling a client that is idle must not keep the only
 * backend: another client's query must run now. NULL when it did, else why
 * (static storage).
 */
static const char *backend_free(PGconn *other)
{
	static char why[600];
	PGresult *res;
	bool ok;

	if (!PQsendQuery(other, "select 'backend free'")) {
		snprintf(why, sizeof(why), "the other client: %s", PQerrorMessage(other));
		return why;
	}
	res = h_get_result(other, h_scaled_ms(3000));
	ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
	snprintf(why, sizeof(why), "the other client's query %s%s",
		 res ? "failed: " : "got no answer within its time", res ? PQresultErrorMessage(res) : "");
	PQclear(res);
	while (res && (res = h_get_result(other, h_scaled_ms(3000))) != NULL)
		PQclear(res);
	return ok ? NULL : why;
}

static void expect_backend_free(PGconn *other, const char *what)
{
	const char *why = backend_free(other);

	if (why)
		pgmux_dump_logs(&px);
	cr_assert(why == NULL, "%s: %s", what, why);
}

/* ---------------------------------------------------------------- answers, and PostgreSQL's */

/* Is body a list of NUL-terminated fields ended by a zero byte, as ErrorResponse/NoticeResponse? */
static const char *check_error_fields(const char *body, size_t len, bool error)
{
	size_t i = 0;

	while (i < len && body[i] != '\0') {
		size_t l = strnlen(body + i + 1, len - i - 1);

		if (i + 1 + l >= len)
			return "a field without its NUL";
		i += l + 2;
	}
	if (i + 1 != len)
		return "no terminator, or bytes after it";
	const char *sev = h_error_field(body, len, 'V');
	const char *code = h_error_field(body, len, 'C');
	const char *msg = h_error_field(body, len, 'M');

	if (!sev || !h_error_field(body, len, 'S') || !code || !msg)
		return "missing S, V, C or M";
	if (strlen(code) != 5 || strspn(code, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") != 5)
		return "a malformed SQLSTATE";
	if (error && strcmp(sev, "ERROR") != 0 && strcmp(sev, "FATAL") != 0)
		return "an ErrorResponse that is neither ERROR nor FATAL";
	if (!error && strcmp(sev, "NOTICE") != 0 && strcmp(sev, "WARNING") != 0 && strcmp(sev, "INFO") != 0 &&
	    strcmp(sev, "LOG") != 0 && strcmp(sev, "DEBUG") != 0)
		return "a NoticeResponse of an unknown severity";
	if (strcmp(code, "XX000") == 0)
		return "an internal error (XX000)";
	/* pgmux's own statement names must never reach the client. */
	if (memmem(body, len, "pgmux_", 6))
		return "pgmux's internal statement name";
	return NULL;
}

/* A reader over a message body that says whether the layout adds up. */
struct rd {
	const uint8_t *p;
	size_t len, pos;
	bool bad;
};

static int64_t rd_int(struct rd *r, int size)
{
	int64_t v = 0;

	if (r->bad || r->len - r->pos < (size_t)size) {
		r->bad = true;
		return 0;
	}
	for (int i = 0; i < size; i++)
		v = (v << 8) | r->p[r->pos++];
	return size == 2 ? (int16_t)v : (int32_t)v;
}

static void rd_skip(struct rd *r, int64_t n)
{
	if (r->bad || n < 0 || (uint64_t)n > r->len - r->pos)
		r->bad = true;
	else
		r->pos += (size_t)n;
}

static void rd_str(struct rd *r)
{
	const void *nul = r->bad ? NULL : memchr(r->p + r->pos, 0, r->len - r->pos);

	if (nul == NULL)
		r->bad = true;
	else
		r->pos = (size_t)((const uint8_t *)nul - r->p) + 1;
}

/* NULL when a backend message is well-formed, else what is wrong with it. */
static const char *check_backend_message(char type, const char *body, size_t len)
{
	struct rd r = {(const uint8_t *)body, len, 0, false};
	int64_t n;

	switch (type) {
	case 'E':
	case 'N':
		return check_error_fields(body, len, type == 'E');
	case 'Z':
		return len == 1 && strchr("ITE", body[0]) && body[0] ? NULL : "a malformed ReadyForQuery";
	case '1':
	case '2':
	case '3':
	case 'n':
	case 's':
	case 'I':
	case 'c':
		return len == 0 ? NULL : "a body on a message that has none";
	case 'C':
		rd_str(&r);
		break;
	case 'S':
		rd_str(&r);
		rd_str(&r);
		break;
	case 'A':
		rd_int(&r, 4);
		rd_str(&r);
		rd_str(&r);
		break;
	case 'T':
		n = rd_int(&r, 2);
		for (int64_t i = 0; i < n && !r.bad; i++) {
			rd_str(&r);
			rd_skip(&r, 18);
		}
		r.bad |= n < 0;
		break;
	case 'D':
		n = rd_int(&r, 2);
		for (int64_t i = 0; i < n && !r.bad; i++) {
			int64_t l = rd_int(&r, 4);

			if (l != -1)
				rd_skip(&r, l);
		}
		r.bad |= n < 0;
		break;
	case 't':
		n = rd_int(&r, 2);
		rd_skip(&r, n * 4);
		break;
	case 'G':
	case 'H':
	case 'W':
		rd_skip(&r, 1);
		n = rd_int(&r, 2);
		rd_skip(&r, n * 2);
		break;
	case 'V':
		n = rd_int(&r, 4);
		if (n != -1)
			rd_skip(&r, n);
		break;
	case 'd':
		return NULL;
	default:
		return "a message type a backend does not send after login";
	}
	return !r.bad && r.pos == r.len ? NULL : "a body whose layout does not add up";
}

/* What came back from a session, and how it ended. */
struct outcome {
	bool marker;      /* the marker's row came */
	bool finished;    /* ... and the ReadyForQuery after it */
	bool closed;      /* the connection closed (EOF or reset) */
	bool cut;         /* ... in the middle of a message */
	bool timed_out;
	char fatal[6];    /* SQLSTATE of a FATAL error, "" if none */
	int errors;       /* ERROR responses */
	char problem[300];
	struct buf transcript; /* a line per message, to compare with PostgreSQL's answers */
};

/*
 * A message's line in the transcript: errors and notices by severity and
 * SQLSTATE only (their texts may name a statement another way).
 */
static void transcribe(struct buf *t, char type, const char *body, size_t len)
{
	if (type == 'S')
		return; /* ParameterStatus: pgmux reports what it carries, as it sees fit */
	if (type == 'E' || type == 'N') {
		buf_printf(t, "%c %s %s\n", type, h_error_field(body, len, 'V'), h_error_field(body, len, 'C'));
		return;
	}
	buf_printf(t, "%c %zu ", type, len);
	for (size_t i = 0; i < len && i < 64; i++)
		buf_printf(t, "%02x", (uint8_t)body[i]);
	buf_printf(t, "\n");
}

/* Read until the ReadyForQuery after the row with marker (if not NULL), a close, or the time limit. */
static void read_outcome(int fd, const char *marker, struct outcome *o)
{
	long long deadline = h_now_ms() + h_scaled_ms(5000);

	buf_free(&o->transcript);
	memset(o, 0, sizeof(*o));
	for (;;) {
		long long left = deadline - h_now_ms();
		char type;
		char *body;
		size_t len;
		enum h_msg_result r = read_message(fd, &type, &body, &len, left > 0 ? (int)left : 1);
		const char *bad;

		if (r == H_MSG_TIMEOUT) {
			o->timed_out = true;
			return;
		}
		if (r == H_MSG_ERROR) {
			snprintf(o->problem, sizeof(o->problem), "a message '%c' with an impossible length", type);
			return;
		}
		if (r == H_MSG_CLOSED) {
			o->closed = true;
			o->cut = len > 0;
			buf_printf(&o->transcript, "closed\n");
			return;
		}
		bad = check_backend_message(type, body, len);
		if (bad) {
			const char *m = type == 'E' || type == 'N' ? h_error_field(body, len, 'M') : NULL;

			snprintf(o->problem, sizeof(o->problem), "message '%c' (%zu bytes): %s%s%s", type, len, bad,
				 m ? ": " : "", m ? m : "");
		} else if (o->fatal[0]) {
			snprintf(o->problem, sizeof(o->problem), "message '%c' after a FATAL error", type);
		} else {
			transcribe(&o->transcript, type, body, len);
			if (type == 'E' && strcmp(h_error_field(body, len, 'V'), "FATAL") == 0)
				snprintf(o->fatal, sizeof(o->fatal), "%s", h_error_field(body, len, 'C'));
			else if (type == 'E')
				o->errors++;
			else if (type == 'D' && marker && memmem(body, len, marker, strlen(marker)))
				o->marker = true;
			else if (type == 'Z' && o->marker)
				o->finished = true;
		}
		free(body);
		if (o->problem[0] || o->finished)
			return;
	}
}

/*
 * A direct session to PostgreSQL that runs the same messages, for
 * comparison: libpq logs in, then the socket is used raw. DISCARD ALL
 * between uses makes it a new session for each; it is opened again after a
 * close.
 */
static PGconn *direct;

static int direct_fd(void)
{
	if (direct == NULL)
		direct = h_connect_app_direct("application_name=fuzz");
	return PQsocket(direct);
}

static void direct_done(bool reusable)
{
	if (reusable && raw_query(PQsocket(direct), "discard all"))
		return;
	PQfinish(direct);
	direct = NULL;
}

/* How a script that should end normally ends: a Sync, then a query whose row is the marker. */
static void put_finish(struct buf *b, const char *marker)
{
	char sql[96];

	msg_raw(b, 'S', "", 0);
	snprintf(sql, sizeof(sql), "rollback; select '%s'", marker);
	msg_query(b, sql);
}

#define LIKE_POSTGRES_MARKER "like postgres"

/* Send parts one after the other, pausing so that the answers to one come before the next; then finish. */
static void run_parts(int fd, const struct buf *parts, int n, struct outcome *o)
{
	struct buf finish = {0};

	for (int i = 0; i < n; i++) {
		h_raw_send(fd, parts[i].p, parts[i].len);
		h_sleep_ms(h_scaled_ms(50));
	}
	put_finish(&finish, LIKE_POSTGRES_MARKER);
	h_raw_send(fd, finish.p, finish.len);
	buf_free(&finish);
	read_outcome(fd, LIKE_POSTGRES_MARKER, o);
}

/*
 * The parts, sent through pgmux and directly to PostgreSQL, must get the
 * same answers (errors compared by SQLSTATE). With other (not NULL), the
 * session through pgmux, idle at the end, must leave the backend free for
 * that client. Frees the parts.
 */
static void like_postgres(struct buf *parts, int n, const char *what, PGconn *other)
{
	int fd = raw_session(NULL);
	struct outcome mux = {0}, pg = {0};
	bool same;

	run_parts(fd, parts, n, &mux);
	if (other && mux.finished)
		expect_backend_free(other, what);
	close(fd);
	run_parts(direct_fd(), parts, n, &pg);
	direct_done(pg.finished);
	cr_assert(pg.finished, "%s: PostgreSQL itself did not answer: %s%s", what, pg.problem,
		  pg.timed_out ? "timed out" : "");
	same = mux.finished && strcmp(buf_text(&mux.transcript), buf_text(&pg.transcript)) == 0;
	if (!same) {
		fprintf(stderr, "----- %s: pgmux answered:\n%s%s\n----- PostgreSQL answered:\n%s-----\n", what,
			buf_text(&mux.transcript), mux.problem, buf_text(&pg.transcript));
		pgmux_dump_logs(&px);
	}
	cr_assert(same, "%s: pgmux's answers differ from PostgreSQL's", what);
	buf_free(&mux.transcript);
	buf_free(&pg.transcript);
	for (int i = 0; i < n; i++)
		buf_free(&parts[i]);
}

/* ================================================================ what the fuzzer found */

TestSuite(fuzz_found, .fini = fini_kill_leftovers, .timeout = 120);

/* Is the only backend idle, with the reset after its session (session pooling) done? */
static bool backend_parked(void *arg)
{
	PGconn *super = arg;
	char *v = h_query_value(super, "select count(*) from pg_stat_activity where usename = 'app' and "
				       "state = 'idle' and (query = 'DISCARD ALL' or query like 'select 40%')");
	bool parked = v && strcmp(v, "1") == 0;

	free(v);
	return parked;
}

/*
 * With trust, a login completes inside the handler of the startup packet
 * when an idle backend already matches the client's session (no setup query
 * to wait for). The packet was still in the input buffer then, and was
 * relayed as the client's first message: FATAL "invalid frontend message
 * type 0" (its length's first byte) for a client that did nothing wrong.
 */
static void trust_login_on_matching_backend(const char *pool_mode)
{
	PGconn *super;

	/* One worker: the backend is handed over at once, not through another worker's inbox. */
	start_fuzz_pgmux(pool_mode, 1, 1, NULL);
	super = h_connect_super_direct();
	for (int i = 0; i < 3; i++) {
		PGconn *conn = h_app_session(&px, "disable", NULL);

		h_expect_value(conn, "select 40 + 2", "42");
		PQfinish(conn);
		/* The next login finds the backend idle in the pool (a little later, when pgmux saw it). */
		cr_assert(h_poll_until(backend_parked, super, h_scaled_ms(5000)), "the backend did not come back idle");
		h_sleep_ms(h_scaled_ms(100));
	}
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

Test(fuzz_found, trust_login_on_an_idle_matching_backend_session_pooling)
{
	trust_login_on_matching_backend("session");
}

Test(fuzz_found, trust_login_on_an_idle_matching_backend_transaction_pooling)
{
	trust_login_on_matching_backend("transaction");
}

/*
 * A PasswordMessage after login went to the backend: PostgreSQL ends the
 * session for it, and with transaction pooling that backend is the one
 * other clients share. pgmux refuses it itself now, as PostgreSQL would.
 */
Test(fuzz_found, password_message_after_login)
{
	struct buf m = {0};
	PGconn *other;
	int pid, fd;

	other = start_shared(NULL);
	pid = h_backend_pid(other);
	fd = raw_session(NULL);
	msg_raw(&m, 'p', "secret", 7);
	send_buf(fd, &m);
	buf_free(&m);
	expect_fatal_then_close(fd, "08P01", "a PasswordMessage after login");
	cr_assert_eq(h_backend_pid(other), pid, "the backend the clients share was lost");
	stop_shared(other);
}

/*
 * A Flush, or COPY messages outside a COPY (PostgreSQL ignores them), from
 * an idle client made pgmux borrow a backend for them; no ReadyForQuery
 * came to end that "transaction", so the client kept the backend from
 * everyone else until its next query.
 */
Test(fuzz_found, idle_flush_and_copy_messages_keep_no_backend)
{
	struct buf m = {0};
	PGconn *other;
	int fd;

	other = start_shared(NULL);
	fd = raw_session(NULL);
	msg_raw(&m, 'H', "", 0);
	msg_raw(&m, 'd', "1\t2\n", 4);
	msg_raw(&m, 'c', "", 0);
	msg_raw(&m, 'f', "no", 3);
	send_buf(fd, &m);
	buf_free(&m);
	h_sleep_ms(h_scaled_ms(100));
	expect_backend_free(other, "a Flush and COPY messages from an idle client");
	cr_assert(raw_query(fd, "select 1"), "the session does not work after them");
	close(fd);
	stop_shared(other);
}

/*
 * After an error in an extended-protocol batch, PostgreSQL skips everything
 * up to the next Sync, a Query (or FunctionCall) too: it gets no
 * ReadyForQuery. pgmux counted one owed for it, so the backend never looked
 * free again and the idle client kept it. Both when the error comes back
 * after pgmux saw the Query, and when pgmux knows of it before.
 */
Test(fuzz_found, queries_skipped_after_an_error_keep_no_backend)
{
	struct buf parts[2] = {{0}};
	PGconn *other;

	other = start_shared(NULL);
	msg_execute(&parts[0], "no_such_portal");
	msg_query(&parts[0], "select 1");
	msg_sync(&parts[0]);
	like_postgres(parts, 1, "a Query behind a failed Execute, sent together", other);

	msg_execute(&parts[0], "no_such_portal");
	msg_raw(&parts[0], 'H', "", 0);
	msg_query(&parts[1], "select 1");
	msg_sync(&parts[1]);
	like_postgres(parts, 2, "a Query after the error of an Execute came back", other);
	stop_shared(other);
}

/*
 * A Flush with a body is refused by PostgreSQL (08P01), which then skips to
 * the next Sync. pgmux expected no reply to a Flush, so that error was taken
 * for the reply to the next message in its queue (a Query: "ReadyForQuery
 * follows"), or with nothing queued its skipping went unnoticed; either way
 * the replies that followed were matched with the wrong messages and the
 * backend was never free again.
 */
Test(fuzz_found, flush_with_a_body)
{
	struct buf parts[3] = {{0}};
	PGconn *other;

	other = start_shared(NULL);
	msg_raw(&parts[0], 'H', "xx", 2);
	msg_query(&parts[1], "select 1");
	msg_parse(&parts[1], "s1", "select 2");
	msg_run(&parts[1], "s1");
	msg_run(&parts[2], "s1");
	like_postgres(parts, 3, "a Flush with a body, alone, then more", other);

	msg_target(&parts[0], 'D', 'S', "no_such_statement");
	msg_sync(&parts[0]);
	msg_raw(&parts[0], 'H', "xx", 2);
	msg_query(&parts[0], "begin");
	msg_sync(&parts[0]);
	like_postgres(parts, 1, "a Flush with a body while other replies are due", other);
	stop_shared(other);
}

/*
 * A Close of a statement with bytes after its name is malformed: PostgreSQL
 * refuses it (08P01) and the statement stays. pgmux, which answers a Close
 * of a statement itself, answered CloseComplete and dropped the statement.
 */
Test(fuzz_found, close_or_describe_with_trailing_bytes)
{
	struct buf parts[3] = {{0}};

	start_txn_one_backend(NULL);
	msg_parse(&parts[0], "s1", "select 1");
	msg_sync(&parts[0]);
	msg_raw(&parts[1], 'C', "Ss1\0junk", 8);
	msg_sync(&parts[1]);
	msg_raw(&parts[1], 'D', "Ss1\0junk", 8);
	msg_sync(&parts[1]);
	msg_run(&parts[2], "s1");
	like_postgres(parts, 3, "a Close and a Describe with bytes after the name", NULL);
	h_stop_expect_clean_exit(&px);
}

/*
 * PostgreSQL knows a prepared statement by the first 63 bytes of its name
 * (NAMEDATALEN - 1). pgmux kept longer names whole in its map but cut them
 * in its reply queue: the statement of a failed Parse with a long name was
 * never dropped (so the name was "already in use", and a Bind of it got the
 * Parse's error again), and two names that agree on 63 bytes were two
 * statements.
 */
#define LONG_63 "name_of_63_bytes_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"

/* Prepare a and b (a Sync after each), then run a: the answers must be PostgreSQL's. */
static void parse_parse_run(const char *a, const char *sql_a, const char *b, const char *sql_b, const char *what)
{
	struct buf parts[3] = {{0}};

	msg_parse(&parts[0], a, sql_a);
	msg_sync(&parts[0]);
	msg_parse(&parts[1], b, sql_b);
	msg_sync(&parts[1]);
	msg_run(&parts[2], a);
	like_postgres(parts, 3, what, NULL);
}

Test(fuzz_found, statement_names_longer_than_63_bytes)
{
	start_txn_one_backend(NULL);
	cr_assert_eq(strlen(LONG_63), 63);
	parse_parse_run(LONG_63 "_a", "select 1", LONG_63 "_b", "select 2",
			"two names that agree on their first 63 bytes");
	parse_parse_run(LONG_63 "_c", "selec 1", LONG_63 "_c", "select 3",
			"a long name whose Parse failed, prepared again");
	h_stop_expect_clean_exit(&px);
}

/* A CancelRequest with the client's key, on a connection of its own. */
static void send_cancel(const uint32_t key[2])
{
	int fd = h_raw_connect(px.port, h_scaled_ms(2000));
	uint8_t req[16];

	cr_assert(fd >= 0, "cannot connect to pgmux to cancel");
	h_put_u32(req, 16);
	h_put_u32(req + 4, 80877102);
	h_put_u32(req + 8, key[0]);
	h_put_u32(req + 12, key[1]);
	cr_assert(h_raw_send(fd, req, sizeof(req)));
	/* pgmux closes once it has looked the key up. */
	h_raw_wait_closed(fd, h_scaled_ms(2000));
	close(fd);
}

/* Another client holds the only backend in a transaction (raw, logged in and begun). */
static int blocker_begin(void)
{
	int fd = raw_session(NULL);

	cr_assert(raw_query(fd, "begin"), "the blocking client could not begin");
	return fd;
}

static void blocker_end(int fd)
{
	cr_assert(raw_query(fd, "rollback"), "the blocking client could not roll back");
	close(fd);
}

/*
 * A batch waits for the only backend and its wait is cancelled: it fails
 * (57014) and pgmux drops the rest of it, up to the next Sync. Returns the
 * session, still in that batch; *blocker holds the backend until
 * blocker_end().
 */
static int cancelled_batch(int *blocker)
{
	uint32_t key[2];
	int fd = raw_session(key);
	struct buf m = {0};
	char type;
	char *body;
	size_t len;

	*blocker = blocker_begin();
	msg_parse(&m, "s1", "select 1");
	send_buf(fd, &m);
	buf_free(&m);
	h_sleep_ms(h_scaled_ms(100));
	send_cancel(key);
	cr_assert_eq(read_message(fd, &type, &body, &len, h_scaled_ms(3000)), H_MSG_OK, "no answer to the cancel");
	cr_assert(type == 'E' && strcmp(h_error_field(body, len, 'C'), "57014") == 0,
		  "the cancelled wait did not fail with 57014");
	free(body);
	return fd;
}

/*
 * While pgmux dropped the rest of such a batch, a Terminate was left for a
 * handler that was never called (the session hung), and a message with a
 * length under 4 or over max_packet_size was waited on instead of refused.
 */
Test(fuzz_found, terminate_or_bad_header_after_a_cancelled_wait)
{
	struct buf m = {0};
	int blocker, fd;

	start_txn_one_backend(NULL);
	fd = cancelled_batch(&blocker);
	msg_raw(&m, 'X', "", 0);
	send_buf(fd, &m);
	buf_free(&m);
	cr_assert(h_raw_wait_closed(fd, h_scaled_ms(3000)), "a Terminate did not end the session");
	close(fd);
	blocker_end(blocker);

	fd = cancelled_batch(&blocker);
	cr_assert(h_raw_send(fd, "Q\0\0\0\2", 5));
	expect_fatal_then_close(fd, "08P01", "a length of 2 while a failed batch is dropped");
	blocker_end(blocker);

	fd = cancelled_batch(&blocker);
	cr_assert(h_raw_send(fd, "Q\x7f\xff\xff\xff", 5));
	expect_fatal_then_close(fd, "54000", "a length over max_packet_size while a failed batch is dropped");
	blocker_end(blocker);
	h_stop_expect_clean_exit(&px);
}

/* A named statement another client prepares, which must work. */
static void prepare_ok(PGconn *conn, const char *name, const char *sql)
{
	PGresult *res = PQprepare(conn, name, sql, 0, NULL);

	cr_assert_eq(PQresultStatus(res), PGRES_COMMAND_OK, "preparing %s: %s", name, PQerrorMessage(conn));
	PQclear(res);
}

/*
 * A Parse that pgmux answers itself (other prepares "select 1", so the
 * backend has it) in a batch that fails, then a Bind of it: sent once the
 * error came back (apart), or together.
 */
static void answered_parse_skipped(PGconn *other, bool apart, const char *what)
{
	struct buf parts[2] = {{0}};

	prepare_ok(other, "one", "select 1");
	msg_execute(&parts[0], "no_such_portal");
	msg_parse(&parts[0], "s2", "select 1");
	msg_sync(&parts[0]);
	msg_run(&parts[apart ? 1 : 0], "s2");
	like_postgres(parts, apart ? 2 : 1, what, other);
}

/*
 * Statements pgmux keeps on a backend are bounded (max_prepared_statements,
 * 3 here): a Parse beyond that closes the least recently used one first.
 * When an earlier message of the batch failed, the server skipped that
 * Close too and kept the statement, but pgmux took it for gone: preparing
 * it again for its next use failed with 42P05, given to a client whose Bind
 * was fine. And a Parse pgmux answered itself (the backend had the
 * statement) left the client's name in place when the server skipped it:
 * a Bind of a statement that PostgreSQL never created then worked.
 */
Test(fuzz_found, messages_skipped_after_an_error_are_undone)
{
	struct buf parts[4] = {{0}};
	PGconn *other;

	other = start_shared("max_prepared_statements = 3");
	msg_parse(&parts[0], "a", "select 11");
	msg_parse(&parts[0], "b", "select 12");
	msg_parse(&parts[0], "c", "select 13");
	msg_sync(&parts[0]);
	msg_execute(&parts[1], "no_such_portal");
	msg_parse(&parts[1], "d", "select 14");
	msg_sync(&parts[1]);
	msg_run(&parts[2], "a");
	msg_run(&parts[3], "b");
	like_postgres(parts, 4, "an eviction skipped after an error", other);

	answered_parse_skipped(other, true, "a Parse pgmux answered, skipped after an error");
	h_expect_value(other, "select 'still fine'", "still fine");
	stop_shared(other);
}

/*
 * What is undone must be undone whole: two failed batches, sent together,
 * the first of which prepares a statement that the second evicts. Undoing
 * the second must not bring the statement back in pgmux's books: the
 * server never had it, and the next client to use that text would get
 * "does not exist".
 */
Test(fuzz_found, statement_prepared_and_evicted_by_failed_batches)
{
	struct buf parts[1] = {{0}};
	PGconn *other;
	PGresult *res;
	const char *params[1] = {"41"};

	other = start_shared("max_prepared_statements = 3");
	msg_raw(&parts[0], 'C', "x\0", 2);
	msg_parse(&parts[0], "s1", "select $1::int + 1");
	msg_sync(&parts[0]);
	msg_target(&parts[0], 'D', 'S', "no_such_statement");
	msg_parse(&parts[0], "x1", "select 21");
	msg_parse(&parts[0], "x2", "select 22");
	msg_parse(&parts[0], "x3", "select 23");
	msg_sync(&parts[0]);
	like_postgres(parts, 1, "a statement prepared, then evicted, by two failed batches", other);
	prepare_ok(other, "plus_one", "select $1::int + 1");
	res = PQexecPrepared(other, "plus_one", 1, params, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "the other client's statement: %s", PQerrorMessage(other));
	cr_assert_str_eq(PQgetvalue(res, 0, 0), "42");
	PQclear(res);
	stop_shared(other);
}

/*
 * A Parse of a name the client has given to a statement already: pgmux
 * answered 42P05 itself. PostgreSQL finds the name taken only after the new
 * text passed its other checks (another error comes first), and its error
 * fails a transaction block, which pgmux's did not: a COMMIT then committed
 * where PostgreSQL rolls back.
 */
Test(fuzz_found, parse_of_a_name_in_use)
{
	struct buf parts[4] = {{0}};

	start_txn_one_backend(NULL);
	msg_query(&parts[0], "begin");
	msg_parse(&parts[1], "s1", "select 1");
	msg_sync(&parts[1]);
	msg_parse(&parts[2], "s1", "select 2");
	msg_sync(&parts[2]);
	msg_query(&parts[3], "commit");
	like_postgres(parts, 4, "a Parse of a name in use, in a transaction block", NULL);

	msg_parse(&parts[0], "s2", "select 1");
	msg_sync(&parts[0]);
	msg_parse(&parts[1], "s2", "selec 1");
	msg_sync(&parts[1]);
	msg_parse(&parts[2], "s2", "select 1; select 2");
	msg_sync(&parts[2]);
	like_postgres(parts, 3, "a Parse of a name in use, of a text PostgreSQL refuses", NULL);
	h_stop_expect_clean_exit(&px);
}

/*
 * Batches a client sends ahead (pipelining) were handled as if every
 * earlier batch had worked. When one fails, the server skips the rest of it:
 * a Parse there does not create its statement, and a Close there (pgmux's,
 * to keep within max_prepared_statements) does not close one. A message of a
 * later batch that names the client's statement, or needs the backend's,
 * now waits for the answer to the batch it depends on.
 */
static void msg_parse_sync(struct buf *b, const char *name, const char *sql)
{
	msg_parse(b, name, sql);
	msg_sync(b);
}

Test(fuzz_found, pipelined_batches_after_a_failed_one)
{
	struct buf parts[1] = {{0}};
	PGconn *other;

	other = start_shared(NULL);
	/* The first Parse of s1 fails: the second is no reuse of the name. */
	msg_parse_sync(&parts[0], "s1", "selec 1");
	msg_parse_sync(&parts[0], "s1", "select 1");
	msg_run(&parts[0], "s1");
	like_postgres(parts, 1, "a name prepared again after its Parse failed, sent together", other);

	/* A Parse pgmux answers itself, skipped, and its Bind in the next batch. */
	answered_parse_skipped(other, false, "a Bind after a skipped Parse pgmux answered, sent together");
	stop_shared(other);
}

/*
 * A Query whose text has no NUL (or bytes after it) is refused by
 * PostgreSQL without running anything. pgmux scanned its bytes anyway and
 * pinned the session on what it guessed ("set d": a SET of a parameter it
 * does not track), so the client kept its backend for good.
 */
Test(fuzz_found, malformed_query_does_not_pin)
{
	struct buf parts[1] = {{0}};
	PGconn *other;

	other = start_shared(NULL);
	msg_raw(&parts[0], 'Q', "set d", 5);
	like_postgres(parts, 1, "a Query without its NUL", other);
	msg_raw(&parts[0], 'Q', "set d\0x", 7);
	like_postgres(parts, 1, "a Query with a byte after its NUL", other);
	cr_assert_eq(h_file_count(px.logfile, "pinned"), 0, "the session was pinned");
	stop_shared(other);
}
