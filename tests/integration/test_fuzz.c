/*
 * test_fuzz.c: what a logged-in client sends pgmux, and what may go wrong
 * with it. First one test per bug found there, each a specific message
 * sequence (answered as PostgreSQL answers it, without harm to other
 * clients); then the fuzzer that found them.
 *
 * Each fuzz session logs in raw (trust), sends a sequence of frontend
 * messages of valid types whose bodies are valid or mutated (truncated
 * strings, wrong counts, negative and huge lengths, unknown statement names,
 * odd Describe/Close kinds, trailing junk...), then a Sync and a marker
 * query, and reads the answers. Every session must end within a time limit
 * (no hang) with well-formed backend messages only: the marker's row and
 * ReadyForQuery, or a FATAL ErrorResponse and a close. A session that ends
 * with a bad message header must get FATAL 08P01 (or 54000). The answers of
 * a session that ends normally must be PostgreSQL's own: the same script
 * runs on a direct session too. Other clients must not notice: a client
 * that shares the backends (and their prepared statements) must be served
 * right, and with transaction pooling a session that is idle must not keep
 * the backend; pgmux must stay the same process and exit cleanly at the end
 * (under valgrind: without errors or leaks).
 *
 * The generator is a PRNG with a fixed seed per test: a failure prints the
 * seed and the messages of the sessions involved, in hex. To replay, set
 * PGMUX_FUZZ_SEED to the seed printed (and PGMUX_FUZZ_SESSIONS to the number
 * of sessions to run).
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
	/*
	 * The unnamed statement: a named one pgmux would prepare without a
	 * backend (reply_answer_idle()). The Flush makes it a batch PostgreSQL
	 * would answer, which pgmux borrows a backend for (relay_batch_ready()).
	 */
	msg_parse(&m, "", "select 1");
	msg_raw(&m, 'H', "", 0);
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

/*
 * A Close of a statement is answered by pgmux (the server-side statement
 * stays for others), and it dropped the client's name at once. After an
 * error earlier in the batch PostgreSQL skips the Close and keeps the
 * statement: a later Bind of it worked directly and failed through pgmux.
 * The statement now comes back when the server skips the Close, and a later
 * batch that uses the name waits for that batch's answer.
 */
Test(fuzz_found, close_skipped_after_an_error_keeps_the_statement)
{
	struct buf parts[2] = {{0}};

	start_txn_one_backend(NULL);
	msg_parse_sync(&parts[0], "s1", "select 1");
	msg_execute(&parts[1], "no_such_portal");
	msg_target(&parts[1], 'C', 'S', "s1");
	msg_sync(&parts[1]);
	msg_run(&parts[1], "s1");
	like_postgres(parts, 2, "a Close behind a failed Execute, then a Bind", NULL);

	msg_parse_sync(&parts[0], "s2", "select 1");
	msg_query(&parts[1], "select pg_sleep(0.05)");
	msg_target(&parts[1], 'C', 'S', "s2");
	msg_parse(&parts[1], "s2", "select 2");
	msg_run(&parts[1], "s2");
	like_postgres(parts, 2, "a Close and a new Parse of the name while a Query runs", NULL);

	/* The Parse in the next batch must find the name still taken. */
	msg_parse_sync(&parts[0], "s3", "select 1");
	msg_execute(&parts[1], "no_such_portal");
	msg_target(&parts[1], 'C', 'S', "s3");
	msg_sync(&parts[1]);
	msg_parse_sync(&parts[1], "s3", "select 3");
	msg_run(&parts[1], "s3");
	like_postgres(parts, 2, "a Close skipped, then a Parse of the name in the next batch", NULL);

	/* Prepared and closed in a batch that fails: the statement never was. */
	msg_execute(&parts[0], "no_such_portal");
	msg_parse(&parts[0], "s4", "select 4");
	msg_target(&parts[0], 'C', 'S', "s4");
	msg_sync(&parts[0]);
	msg_target(&parts[0], 'D', 'S', "s4");
	msg_sync(&parts[0]);
	like_postgres(parts, 1, "a Parse and a Close of a name, both skipped", NULL);

	/* A failed Parse, then a Close of the name in the next batch, which fails too. */
	msg_parse_sync(&parts[0], "s5", "selec 5");
	msg_execute(&parts[0], "no_such_portal");
	msg_target(&parts[0], 'C', 'S', "s5");
	msg_sync(&parts[0]);
	msg_target(&parts[0], 'D', 'S', "s5");
	msg_sync(&parts[0]);
	like_postgres(parts, 1, "a Close, skipped, of a name whose Parse failed", NULL);
	h_stop_expect_clean_exit(&px);
}

/*
 * A Parse of a statement the backend has already is answered by pgmux
 * itself. In a failed transaction block PostgreSQL refuses it (25P02),
 * unless the statement ends the transaction: pgmux answered ParseComplete,
 * and the name then existed for the client where PostgreSQL never made it.
 */
Test(fuzz_found, parse_in_a_failed_transaction_block)
{
	struct buf parts[4] = {{0}};
	PGconn *other;

	other = start_shared(NULL);
	/* The other client prepares both texts: the backend has them, and pgmux would answer Parses of them. */
	prepare_ok(other, "one", "select 1");
	prepare_ok(other, "rb", "rollback");
	msg_query(&parts[0], "begin");
	msg_query(&parts[1], "select 1/0");
	msg_parse_sync(&parts[2], "s1", "select 1");
	msg_query(&parts[3], "rollback");
	msg_run(&parts[3], "s1");
	like_postgres(parts, 4, "a Parse in a failed transaction block", other);

	msg_query(&parts[0], "begin");
	msg_query(&parts[1], "select 1/0");
	msg_parse_sync(&parts[2], "s2", "rollback");
	msg_run(&parts[3], "s2");
	like_postgres(parts, 4, "a Parse that ends a failed transaction block", other);
	stop_shared(other);
}

/* ================================================================ the fuzzer */

/* Other clients are checked every this many sessions. */
#define FUZZ_CHECK_EVERY 10

/* The transaction-pooling suite runs: one backend, shared (see start_txn_one_backend()). */
static bool txn_suite;

static void init_fuzz_transaction(void)
{
	txn_suite = true;
	/* Few statements kept per backend, so that eviction happens. */
	start_txn_one_backend("max_prepared_statements = 3");
}

static void init_fuzz_session(void)
{
	start_fuzz_pgmux("session", 3, 2, NULL);
}

/* ---------------------------------------------------------------- PRNG */

/* splitmix64: small, fast, and the same sequence everywhere for a seed. */
struct rng {
	uint64_t state;
};

static uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t rng_below(struct rng *r, uint32_t n)
{
	return n ? (uint32_t)(rng_next(r) % n) : 0;
}

static bool rng_percent(struct rng *r, unsigned percent)
{
	return rng_below(r, 100) < percent;
}

/* ---------------------------------------------------------------- what the fuzzer says */

/* SQL the sessions prepare or run; the bystander prepares some of the same texts. */
struct fuzz_sql {
	const char *text;
	int nparams;
};

static const struct fuzz_sql fuzz_sql[] = {
	{"select $1::int + 1", 1},
	{"select $1::text || '-' || $2::text", 2},
	{"select 1", 0},
	{"select generate_series(1, 5)", 0},
	{"select 1/0", 0},
	{"selec 1", 0},
	{"", 0},
	{"select 1; select 2", 0},
	{"begin", 0},
	{"commit", 0},
	{"rollback", 0},
	{"copy (select 2) to stdout", 0},
	{"set datestyle = 'iso, dmy'", 0},
	/* Settings pgmux reads back: a session must never see another's (the replay is a fresh connection). */
	{"set work_mem = '5MB'", 0},
	{"reset work_mem", 0},
	{"select current_setting('work_mem')", 0},
	{"select set_config('fz.tenant', $1::text, false)", 1},
	{"select current_setting('fz.tenant', true)", 0},
	{"select pg_sleep(0.001)", 0},
	{"select bid from pgbench_branches where bid = $1::int", 1},
};
#define N_FUZZ_SQL (sizeof(fuzz_sql) / sizeof(fuzz_sql[0]))

/* Statement names: mostly a few that get reused, so that Bind, Describe and Close find them. */
#define LONG_NAME_A "long_name_LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL_a"
#define LONG_NAME_B "long_name_LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL_b"
static const char *const stmt_names[] = {"s1", "s2", "s3", "s1", "s2", "", "", "never_prepared",
					 LONG_NAME_A, LONG_NAME_B};
static const char *const portal_names[] = {"", "", "", "p1", "p1", "no_such_portal"};

/* A session's messages and a description of each, for the log of a failure. */
struct script {
	struct buf bytes;
	struct buf log;
	int n_messages;
	/* How it ends. */
	enum {
		END_FINISH,     /* Sync and a marker query: the marker's row and ReadyForQuery must come */
		END_TERMINATE,  /* a Terminate: the connection must close */
		END_BAD_HEADER, /* an invalid type or length: FATAL 08P01 / 54000, then a close */
		END_HALF_CLOSE, /* a message cut short, then our write side closed: pgmux must close */
		END_ABANDON,    /* the socket closed under pgmux (nothing to check but pgmux) */
	} ending;
	char marker[32];
	int statement_of[N_OF(stmt_names)]; /* fuzz_sql index a name was last prepared with, or -1 */
	/*
	 * Transaction pooling: the only backend is held by another client while
	 * the script is sent, and the session's first wait for it is cancelled.
	 */
	bool blocked;
	/* Sent once the final query was answered: messages that ask nothing of a backend. */
	struct buf after;
};

static const char *const ending_names[] = {"finish", "terminate", "bad header", "half close", "abandon"};

static const char *pick_name(struct rng *r, int *index)
{
	int i = (int)rng_below(r, N_OF(stmt_names));

	if (index)
		*index = i;
	return stmt_names[i];
}

/* A name of 300 bytes now and then: far beyond PostgreSQL's NAMEDATALEN. */
static const char *maybe_very_long(struct rng *r, const char *name)
{
	static char longer[301];

	if (!rng_percent(r, 3))
		return name;
	memset(longer, 'v', sizeof(longer) - 1);
	longer[sizeof(longer) - 1] = '\0';
	return longer;
}

static const char *portal(struct rng *r)
{
	return portal_names[rng_below(r, N_OF(portal_names))];
}

static void gen_parse(struct rng *r, struct script *s, struct buf *m, char type)
{
	int ni, q = (int)rng_below(r, N_FUZZ_SQL);
	const char *name = maybe_very_long(r, pick_name(r, &ni));
	int ntypes = rng_percent(r, 70) ? 0 : fuzz_sql[q].nparams;
	int declared = ntypes;

	buf_str(m, name);
	buf_str(m, fuzz_sql[q].text);
	if (rng_percent(r, 8))
		declared = rng_percent(r, 50) ? -1 : ntypes + 3; /* a count the types do not match */
	buf_i16(m, declared);
	for (int i = 0; i < ntypes; i++)
		buf_i32(m, rng_percent(r, 90) ? (i == 0 ? 23 : 25) : 16); /* int4, text; bool for a mismatch */
	s->statement_of[ni] = q;
	buf_printf(&s->log, "Parse name=\"%.40s\" sql=\"%s\" types=%d", name, fuzz_sql[q].text, declared);
}

/* One parameter value: text or NULL mostly, else lengths that lie. */
static void gen_param(struct rng *r, struct buf *m, struct buf *log)
{
	static const char *const texts[] = {"42", "7", "-1", "abc", "", "2147483648"};
	uint32_t k = rng_below(r, 100);

	if (k < 70) {
		const char *t = texts[rng_below(r, N_OF(texts))];

		buf_i32(m, (int64_t)strlen(t));
		buf_put(m, t, strlen(t));
		buf_printf(log, " '%s'", t);
	} else if (k < 82) {
		buf_i32(m, -1);
		buf_printf(log, " NULL");
	} else if (k < 88) {
		buf_i32(m, 4); /* binary int4, or a text that is not one */
		buf_i32(m, 42);
		buf_printf(log, " int4:42");
	} else if (k < 92) {
		buf_i32(m, -2);
		buf_printf(log, " len=-2");
	} else if (k < 96) {
		buf_i32(m, 0x7fffffff);
		buf_put(m, "xy", 2);
		buf_printf(log, " len=huge");
	} else {
		buf_i32(m, 1000);
		buf_put(m, "short", 5);
		buf_printf(log, " len=1000(5)");
	}
}

/* A format-code list: count then codes; sometimes a lying count or a bad code. */
static void gen_formats(struct rng *r, struct buf *m, int n_expected, struct buf *log, const char *what)
{
	uint32_t k = rng_below(r, 100);

	if (k < 60) {
		buf_i16(m, 0);
		return;
	}
	if (k < 75) {
		int code = rng_percent(r, 70) ? 0 : 1;

		buf_i16(m, 1);
		buf_i16(m, code);
		buf_printf(log, " %s=[%d]", what, code);
		return;
	}
	if (k < 85) {
		buf_i16(m, n_expected);
		for (int i = 0; i < n_expected; i++)
			buf_i16(m, (int)rng_below(r, 2));
		buf_printf(log, " %s=%d codes", what, n_expected);
		return;
	}
	if (k < 90) {
		buf_i16(m, -1);
		buf_printf(log, " %s=count -1", what);
	} else if (k < 95) {
		buf_i16(m, 1000);
		buf_printf(log, " %s=count 1000, none given", what);
	} else {
		buf_i16(m, 1);
		buf_i16(m, 2 + (int)rng_below(r, 100));
		buf_printf(log, " %s=[bad code]", what);
	}
}

static void gen_bind(struct rng *r, struct script *s, struct buf *m, char type)
{
	int ni;
	const char *p = portal(r);
	const char *name = maybe_very_long(r, pick_name(r, &ni));
	int expected = s->statement_of[ni] >= 0 ? fuzz_sql[s->statement_of[ni]].nparams : (int)rng_below(r, 2);
	int nparams = expected;

	buf_printf(&s->log, "Bind portal=\"%s\" stmt=\"%.40s\"", p, name);
	buf_str(m, p);
	buf_str(m, name);
	gen_formats(r, m, expected, &s->log, "pfmt");
	if (rng_percent(r, 15)) {
		static const int lies[] = {-1, -2, 30000};

		nparams = rng_percent(r, 50) ? expected + 1 : lies[rng_below(r, N_OF(lies))];
	}
	buf_i16(m, nparams);
	buf_printf(&s->log, " nparams=%d:", nparams);
	for (int i = 0; i < (nparams > 0 && nparams < 10 ? nparams : 0); i++)
		gen_param(r, m, &s->log);
	gen_formats(r, m, 1, &s->log, "rfmt");
}

static void gen_execute(struct rng *r, struct script *s, struct buf *m, char type)
{
	static const int64_t max_rows[] = {0, 0, 0, 1, 2, -1, 0x7fffffff};
	const char *p = portal(r);
	int64_t rows = max_rows[rng_below(r, N_OF(max_rows))];

	buf_str(m, p);
	buf_i32(m, rows);
	buf_printf(&s->log, "Execute portal=\"%s\" max_rows=%" PRId64, p, rows);
}

/* Describe or Close: a kind ('S', 'P', or anything) and a name. */
static void gen_describe_close(struct rng *r, struct script *s, struct buf *m, char type)
{
	uint32_t k = rng_below(r, 100);
	uint8_t kind = k < 55 ? 'S' : k < 90 ? 'P' : (uint8_t)rng_below(r, 256);
	const char *name = kind == 'P' ? portal(r) : maybe_very_long(r, pick_name(r, NULL));

	buf_u8(m, kind);
	buf_str(m, name);
	buf_printf(&s->log, "%s kind=0x%02x name=\"%.40s\"", type == 'D' ? "Describe" : "Close", kind, name);
}

static void gen_query(struct rng *r, struct script *s, struct buf *m, char type)
{
	const char *sql = fuzz_sql[rng_below(r, N_FUZZ_SQL)].text;

	buf_str(m, sql);
	buf_printf(&s->log, "Query \"%s\"", sql);
}

/* FunctionCall of int4abs (or an OID that is none) with one argument. */
static void gen_function_call(struct rng *r, struct script *s, struct buf *m, char type)
{
	static const int64_t oids[] = {1251, 1251, 0, 999999};
	int64_t oid = oids[rng_below(r, N_OF(oids))];
	int nargs = rng_percent(r, 85) ? 1 : (int)rng_below(r, 4) - 1;

	buf_i32(m, oid);
	gen_formats(r, m, 1, &s->log, "afmt");
	buf_i16(m, nargs);
	for (int i = 0; i < (nargs > 0 ? nargs : 0); i++)
		gen_param(r, m, &s->log);
	buf_i16(m, rng_percent(r, 90) ? 0 : 7);
	buf_printf(&s->log, "FunctionCall oid=%" PRId64 " nargs=%d", oid, nargs);
}

static void gen_copy(struct rng *r, struct script *s, struct buf *m, char type)
{
	if (type == 'd') {
		int n = (int)rng_below(r, 20);

		for (int i = 0; i < n; i++)
			buf_u8(m, (uint8_t)rng_below(r, 256));
		buf_printf(&s->log, "CopyData %d bytes", n);
	} else if (type == 'f') {
		buf_str(m, "fuzz says no");
		buf_printf(&s->log, "CopyFail");
	} else {
		buf_printf(&s->log, "CopyDone");
	}
}

/* Mutations of a whole body: cut short (strings lose their NUL, counts overrun), emptied, or junk after. */
static void mutate_body(struct rng *r, struct script *s, struct buf *msgs, size_t at)
{
	size_t body = msgs->len - at - 5;
	uint32_t k = rng_below(r, 100);

	if (k < 8 && body > 0) {
		size_t cut = 1 + rng_below(r, (uint32_t)body);

		msgs->len -= cut;
		buf_printf(&s->log, " [cut %zu]", cut);
	} else if (k < 11) {
		msgs->len = at + 5;
		buf_printf(&s->log, " [empty body]");
	} else if (k < 17) {
		int n = 1 + (int)rng_below(r, 8);

		for (int i = 0; i < n; i++)
			buf_u8(msgs, (uint8_t)rng_below(r, 256));
		buf_printf(&s->log, " [junk +%d]", n);
	}
}

/* Hex of the bytes from at to the end, for replaying a failure by hand. */
static void log_hex(struct buf *log, const struct buf *msgs, size_t at)
{
	size_t n = msgs->len - at;

	buf_printf(log, "\n      ");
	for (size_t i = 0; i < n && i < 400; i++)
		buf_printf(log, "%02x", msgs->p[at + i]);
	if (n > 400)
		buf_printf(log, "... (%zu bytes)", n);
	buf_printf(log, "\n");
}

/* Messages with no body: nothing to generate but their line in the log. */
static void gen_empty(struct rng *r, struct script *s, struct buf *m, char type)
{
	buf_printf(&s->log, "%s", type == 'S' ? "Sync" : type == 'H' ? "Flush" : "Terminate");
}

/* Which generator writes the body of which message types. */
static const struct generator {
	const char *types;
	void (*gen)(struct rng *r, struct script *s, struct buf *m, char type);
} generators[] = {
	{"P", gen_parse},
	{"B", gen_bind},
	{"E", gen_execute},
	{"DC", gen_describe_close},
	{"Q", gen_query},
	{"F", gen_function_call},
	{"dcf", gen_copy},
	{"SHX", gen_empty},
};

/* One message of a valid type, body valid or mutated. Returns false after a Terminate. */
static bool gen_message(struct rng *r, struct script *s)
{
	static const char types[] = "PPPPBBBBBBEEEEEDDDCCCCSSSSSHHQQQQFdcf";
	struct buf *m = &s->bytes;
	char type = rng_percent(r, 1) ? 'X' : types[rng_below(r, sizeof(types) - 1)];
	size_t at = msg_begin(m, type);

	buf_printf(&s->log, "  #%d ", ++s->n_messages);
	for (size_t i = 0; i < N_OF(generators); i++)
		if (strchr(generators[i].types, type))
			generators[i].gen(r, s, m, type);
	if (type != 'X' && rng_percent(r, 25))
		mutate_body(r, s, m, at);
	msg_end(m, at);
	log_hex(&s->log, m, at);
	return type != 'X';
}

/* The last message: a header pgmux must refuse (bad type, length under 4, or over max_packet_size). */
static void gen_bad_header(struct rng *r, struct script *s)
{
	static const char valid[] = "pQPBEDCSHFdcfX";
	uint8_t type;
	uint32_t len;
	size_t at = s->bytes.len;

	do
		type = (uint8_t)rng_below(r, 256);
	while (memchr(valid, type, sizeof(valid)));
	switch (rng_below(r, 4)) {
	case 3:
		/* A password message, valid only during authentication. */
		type = 'p';
		len = 4 + 8;
		buf_printf(&s->log, "  #%d 'p' (a password message after login)", ++s->n_messages);
		break;
	case 0:
		len = 4 + rng_below(r, 20);
		buf_printf(&s->log, "  #%d invalid type 0x%02x, length %u", ++s->n_messages, type, len);
		break;
	case 1:
		type = (uint8_t)"QPBEDCSHFdcf"[rng_below(r, 12)];
		len = rng_below(r, 4);
		buf_printf(&s->log, "  #%d '%c' with length %u", ++s->n_messages, type, len);
		break;
	default:
		type = (uint8_t)"QPBEDCSHFdcf"[rng_below(r, 12)];
		len = 0x7fffffff - rng_below(r, 1000);
		buf_printf(&s->log, "  #%d '%c' with length %u (over max_packet_size)", ++s->n_messages, type, len);
		break;
	}
	buf_u8(&s->bytes, type);
	buf_i32(&s->bytes, len);
	for (int i = 0; i < 8; i++)
		buf_u8(&s->bytes, (uint8_t)rng_below(r, 256));
	log_hex(&s->log, &s->bytes, at);
}

static void gen_script(uint64_t seed, int number, struct script *s)
{
	struct rng r = {seed};
	int n = 1 + (int)rng_below(&r, 14);
	uint32_t k;
	bool terminated = false;

	memset(s, 0, sizeof(*s));
	for (size_t i = 0; i < N_OF(stmt_names); i++)
		s->statement_of[i] = -1;
	snprintf(s->marker, sizeof(s->marker), "fuzz-end-%d", number);
	for (int i = 0; i < n && !terminated; i++)
		terminated = !gen_message(&r, s);
	s->blocked = rng_percent(&r, 4);
	if (s->blocked)
		buf_printf(&s->log, "  (sent while another client holds the only backend, then cancelled)\n");
	k = rng_below(&r, 100);
	if (terminated) {
		s->ending = END_TERMINATE;
	} else if (k < 80) {
		put_finish(&s->bytes, s->marker);
		s->ending = END_FINISH;
		buf_printf(&s->log, "  then Sync, Query \"rollback; select '%s'\"\n", s->marker);
		if (rng_percent(&r, 30)) {
			/* A Flush, or COPY messages outside a COPY: nothing to answer, no backend to keep. */
			char type = "Hdcf"[rng_below(&r, 4)];

			msg_raw(&s->after, type, "x", type == 'd' || type == 'f' ? 2 : 0);
			buf_printf(&s->log, "  then, once answered, '%c'\n", type);
		}
	} else if (k < 88) {
		gen_bad_header(&r, s);
		s->ending = END_BAD_HEADER;
	} else if (k < 94) {
		/* A header promising more than comes: pgmux waits for the rest, then sees EOF. */
		size_t at = msg_begin(&s->bytes, 'Q');

		buf_put(&s->bytes, "select", 6);
		h_put_u32(s->bytes.p + at + 1, 100);
		s->ending = END_HALF_CLOSE;
		buf_printf(&s->log, "  then a Query of 100 bytes cut after 6, and our write side shut\n");
	} else {
		s->ending = END_ABANDON;
		buf_printf(&s->log, "  then the socket is closed\n");
	}
}

/* ---------------------------------------------------------------- the run */

struct fuzz_stats {
	int sessions;
	int messages;
	int finished;
	int compared; /* answers compared with PostgreSQL's own */
	int blocked;
	int errors;
	int fatal_closes;
	int refused_headers;
	int silent_closes; /* a bad header refused by a close alone: pgmux was in the middle of a message */
	int terminated;
	int half_closed;
	int abandoned;
};

/* Scripts since the last check of the other clients, printed if a check fails (any may be the cause). */
struct recent {
	char *logs[FUZZ_CHECK_EVERY];
	int n;
};

static void recent_add(struct recent *rc, const char *log)
{
	if (rc->n == FUZZ_CHECK_EVERY) {
		free(rc->logs[0]);
		memmove(rc->logs, rc->logs + 1, sizeof(rc->logs[0]) * (FUZZ_CHECK_EVERY - 1));
		rc->n--;
	}
	rc->logs[rc->n++] = strdup(log);
}

static void recent_clear(struct recent *rc)
{
	for (int i = 0; i < rc->n; i++)
		free(rc->logs[i]);
	rc->n = 0;
}

/* Print the recent sessions and pgmux's logs, then fail the test with the message. */
static void fuzz_fail(const struct recent *rc, uint64_t seed, int sessions, const char *fmt, ...)
	__attribute__((format(printf, 4, 5), noreturn));

static void fuzz_fail(const struct recent *rc, uint64_t seed, int sessions, const char *fmt, ...)
{
	char why[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	fprintf(stderr, "----- the last %d fuzz sessions -----\n", rc->n);
	for (int i = 0; i < rc->n; i++)
		fprintf(stderr, "%s", rc->logs[i]);
	fprintf(stderr, "----- end of the fuzz sessions; replay with PGMUX_FUZZ_SEED=%" PRIu64
			" PGMUX_FUZZ_SESSIONS=%d -----\n",
		seed, sessions);
	pgmux_dump_logs(&px);
	cr_assert_fail("%s", why);
	abort(); /* not reached */
}

/* Send bytes, in pieces of random sizes now and then (pgmux must put messages together). */
static void send_pieces(int fd, struct rng *r, const struct buf *b)
{
	size_t off = 0;
	bool pieces = rng_percent(r, 30);

	while (off < b->len) {
		size_t n = b->len - off;

		if (pieces) {
			n = 1 + rng_below(r, (uint32_t)(n < 40 ? n : 40));
			if (rng_percent(r, 10))
				h_sleep_ms(1);
		}
		/* pgmux may have closed already (a FATAL for an earlier message): the rest is not sent. */
		if (!h_raw_send(fd, b->p + off, n))
			return;
		off += n;
	}
}

/* NULL when the session ended as it should, else what went wrong (static storage). */
static const char *judge(const struct script *s, const struct outcome *o, struct fuzz_stats *st)
{
	static char why[400];

	if (o->problem[0])
		return o->problem;
	if (o->timed_out) {
		snprintf(why, sizeof(why), "no %s within %d ms (a hang)",
			 s->ending == END_FINISH ? "answer to the final query" : "close", h_scaled_ms(5000));
		return why;
	}
	st->errors += o->errors;
	if (o->fatal[0]) {
		st->fatal_closes++;
		if (!o->closed) {
			snprintf(why, sizeof(why), "FATAL %s, but the connection was not closed", o->fatal);
			return why;
		}
		if (s->ending == END_BAD_HEADER && strcmp(o->fatal, "08P01") != 0 && strcmp(o->fatal, "54000") != 0) {
			snprintf(why, sizeof(why), "a bad header refused with %s, expected 08P01 or 54000", o->fatal);
			return why;
		}
		st->refused_headers += s->ending == END_BAD_HEADER;
		return NULL;
	}
	switch (s->ending) {
	case END_FINISH:
		if (o->finished) {
			st->finished++;
			return NULL;
		}
		/* Nothing in such a script ends a session: a close has no reason. */
		return "closed without an ErrorResponse before the final query was answered";
	case END_BAD_HEADER:
		/*
		 * In the middle of a message it relays, pgmux cannot answer (an
		 * error would be read as the rest of that message): it closes.
		 */
		if (o->cut) {
			st->silent_closes++;
			return NULL;
		}
		return "a bad header: closed without FATAL 08P01 or 54000";
	case END_TERMINATE:
		st->terminated++;
		return NULL;
	case END_HALF_CLOSE:
		st->half_closed++;
		return NULL;
	case END_ABANDON:
		st->abandoned++;
		return NULL;
	}
	return NULL;
}

/* ---------------------------------------------------------------- other clients */

/* The bystander's statements: texts the fuzz sessions prepare too, so that they share backend statements. */
static const char *const bystander_sql[] = {"select $1::int + 1", "select 1", "select generate_series(1, 5)"};

static PGconn *bystander_open(void)
{
	PGconn *conn = h_app_session(&px, "disable", "application_name=bystander");

	for (size_t i = 0; i < N_OF(bystander_sql); i++) {
		char name[16];

		snprintf(name, sizeof(name), "by%zu", i);
		prepare_ok(conn, name, bystander_sql[i]);
	}
	return conn;
}

/* NULL when the bystander's statements all give what they must, else what went wrong. */
static const char *bystander_check(PGconn *conn, int round)
{
	static char why[600];
	char arg[16], want[16];
	const char *params[1] = {arg};

	snprintf(arg, sizeof(arg), "%d", round);
	snprintf(want, sizeof(want), "%d", round + 1);
	for (size_t i = 0; i < N_OF(bystander_sql); i++) {
		char name[16];
		PGresult *res;
		bool ok;

		snprintf(name, sizeof(name), "by%zu", i);
		res = PQexecPrepared(conn, name, i == 0 ? 1 : 0, params, NULL, NULL, 0);
		ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) >= 1 &&
		     strcmp(PQgetvalue(res, 0, 0), i == 0 ? want : "1") == 0;
		if (!ok) {
			snprintf(why, sizeof(why), "statement %s (%s): %s: %s", name, bystander_sql[i],
				 PQresStatus(PQresultStatus(res)),
				 PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0 ? PQgetvalue(res, 0, 0)
											  : PQerrorMessage(conn));
			PQclear(res);
			return why;
		}
		PQclear(res);
	}
	return NULL;
}

/* pgmux is the same process, a new client runs a query, the bystander is served right. */
static void others_unharmed(PGconn *bystander, int round, const struct recent *rc, uint64_t seed)
{
	const char *why;
	PGconn *fresh;
	char *v;

	if (!pgmux_running(&px) || kill(px.pid, 0) != 0)
		fuzz_fail(rc, seed, round, "pgmux is no longer running after %d sessions", round);
	why = bystander_check(bystander, round);
	if (why)
		fuzz_fail(rc, seed, round, "after %d fuzz sessions, the bystander client was harmed: %s", round, why);
	fresh = h_connect_app(px.port, "disable", NULL);
	v = PQstatus(fresh) == CONNECTION_OK ? h_query_value(fresh, "select 40 + 2") : NULL;
	if (!v || strcmp(v, "42") != 0)
		fuzz_fail(rc, seed, round, "after %d fuzz sessions, a new client was not served: %s", round,
			  PQerrorMessage(fresh));
	free(v);
	PQfinish(fresh);
}

/* ---------------------------------------------------------------- sessions */

static void log_session(struct recent *rc, const struct script *s, uint64_t seed, int number)
{
	struct buf whole = {0};

	buf_printf(&whole, "session %d (seed %" PRIu64 "), %d messages, ending: %s:\n", number, seed, s->n_messages,
		   ending_names[s->ending]);
	buf_put(&whole, s->log.p, s->log.len);
	recent_add(rc, (const char *)whole.p);
	buf_free(&whole);
}

/* One fuzz session; fails the test (printing the scripts involved) when it goes wrong. */
static void run_session(uint64_t suite_seed, int number, PGconn *bystander, struct fuzz_stats *st,
			struct recent *rc)
{
	uint64_t seed = suite_seed + (uint64_t)number * 0x100000001b3ull;
	struct rng send_rng = {seed ^ 0x5eedull};
	struct script s;
	struct outcome o = {0}, d = {0};
	const char *verdict;
	int fd, blocker = -1;
	uint32_t key[2] = {0, 0};

	gen_script(seed, number, &s);
	s.blocked = s.blocked && txn_suite;
	log_session(rc, &s, suite_seed, number);
	st->sessions++;
	st->messages += s.n_messages;
	st->blocked += s.blocked;

	fd = raw_login(key);
	if (fd < 0)
		fuzz_fail(rc, suite_seed, number, "session %d: could not log in through pgmux", number);
	if (s.blocked)
		blocker = blocker_begin();
	send_pieces(fd, &send_rng, &s.bytes);
	if (s.blocked) {
		/* A cancel that comes before the wait began, or after it ended, has nothing to end: no matter. */
		h_sleep_ms(h_scaled_ms(20));
		send_cancel(key);
		h_sleep_ms(h_scaled_ms(20));
		blocker_end(blocker);
	}
	if (s.ending == END_ABANDON) {
		close(fd);
		judge(&s, &o, st);
		goto done;
	}
	if (s.ending == END_HALF_CLOSE)
		shutdown(fd, SHUT_WR);
	read_outcome(fd, s.ending == END_FINISH ? s.marker : NULL, &o);
	verdict = judge(&s, &o, st);
	if (verdict)
		fuzz_fail(rc, suite_seed, number, "fuzz session %d: %s", number, verdict);
	/* A close without an error is allowed only if pgmux is fine: see to it at once. */
	if (o.closed && !o.fatal[0] && s.ending == END_BAD_HEADER)
		others_unharmed(bystander, number, rc, suite_seed);
	if (s.ending == END_FINISH) {
		send_pieces(fd, &send_rng, &s.after);
		if (txn_suite && (verdict = backend_free(bystander)) != NULL)
			fuzz_fail(rc, suite_seed, number,
				  "fuzz session %d ended idle, but the only backend was not free for others: %s",
				  number, verdict);
	}
	if (s.ending == END_FINISH && !s.blocked) {
		int dfd = direct_fd();

		h_raw_send(dfd, s.bytes.p, s.bytes.len);
		read_outcome(dfd, s.marker, &d);
		h_raw_send(dfd, s.after.p, s.after.len);
		direct_done(d.finished);
		if (!d.finished)
			fuzz_fail(rc, suite_seed, number, "session %d: PostgreSQL itself did not answer the script: %s%s",
				  number, d.problem, d.timed_out ? "timed out" : "");
		if (strcmp(buf_text(&o.transcript), buf_text(&d.transcript)) != 0) {
			fprintf(stderr, "----- pgmux answered:\n%s----- PostgreSQL answered:\n%s-----\n",
				buf_text(&o.transcript), buf_text(&d.transcript));
			fuzz_fail(rc, suite_seed, number, "fuzz session %d: pgmux's answers differ from PostgreSQL's",
				  number);
		}
		st->compared++;
	}
	close(fd);
done:
	buf_free(&o.transcript);
	buf_free(&d.transcript);
	buf_free(&s.bytes);
	buf_free(&s.after);
	buf_free(&s.log);
}

/* ---------------------------------------------------------------- the end */

/* No sign of a crash or an assertion in pgmux's log and stderr. */
static void expect_quiet_logs(void)
{
	static const char *const signs[] = {"assert", "Assertion", "invalid state change", "AddressSanitizer",
					    "runtime error", "Segmentation", "abort"};

	for (size_t i = 0; i < N_OF(signs); i++) {
		int n = h_file_count(px.logfile, signs[i]) + h_file_count(px.stderr_file, signs[i]);

		if (n > 0)
			pgmux_dump_logs(&px);
		cr_assert_eq(n, 0, "pgmux's log or stderr mentions \"%s\" %d times", signs[i], n);
	}
}

/* The backends the fuzz sessions used must not be left running a statement. */
static void expect_no_active_backends(void)
{
	PGconn *super = h_connect_super_direct();
	bool idle = h_poll_value(super,
				 "select count(*) from pg_stat_activity where usename = 'app' and state = 'active' and "
				 "coalesce(application_name, '') <> 'pgmux health check'",
				 "0", h_scaled_ms(5000));

	PQfinish(super);
	cr_assert(idle, "backends of app are still active after the fuzz sessions ended");
}

static uint64_t suite_seed(uint64_t fixed)
{
	const char *env = getenv("PGMUX_FUZZ_SEED");

	return env && env[0] ? strtoull(env, NULL, 0) : fixed;
}

static int session_count(int normal)
{
	const char *env = getenv("PGMUX_FUZZ_SESSIONS");

	if (env && env[0])
		return atoi(env);
	return h_under_valgrind() ? normal / 5 : normal;
}

static void fuzz_run(uint64_t fixed_seed, int normal_sessions)
{
	uint64_t seed = suite_seed(fixed_seed);
	int sessions = session_count(normal_sessions);
	struct fuzz_stats st = {0};
	struct recent rc = {0};
	long long t0 = h_now_ms();
	PGconn *bystander = bystander_open();

	cr_log_info("fuzz: seed %" PRIu64 ", %d sessions (replay: PGMUX_FUZZ_SEED=%" PRIu64 ")", seed, sessions, seed);
	for (int i = 1; i <= sessions; i++) {
		run_session(seed, i, bystander, &st, &rc);
		if (i % FUZZ_CHECK_EVERY == 0 || i == sessions) {
			others_unharmed(bystander, i, &rc, seed);
			recent_clear(&rc);
		}
	}
	PQfinish(bystander);
	if (direct) {
		PQfinish(direct);
		direct = NULL;
	}
	expect_no_active_backends();
	expect_quiet_logs();
	cr_log_info("fuzz: %d sessions, %d messages in %lld ms: %d finished (%d compared with PostgreSQL), "
		    "%d kept waiting, %d ERRORs, %d FATAL closes (%d refused headers), %d closed mid-message "
		    "without an error, %d terminated, %d half-closed, %d abandoned",
		    st.sessions, st.messages, h_now_ms() - t0, st.finished, st.compared, st.blocked, st.errors,
		    st.fatal_closes, st.refused_headers, st.silent_closes, st.terminated, st.half_closed, st.abandoned);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ transaction pooling */

TestSuite(fuzz_txn, .init = init_fuzz_transaction, .fini = fini_kill_leftovers, .timeout = 240);

Test(fuzz_txn, random_sessions)
{
	fuzz_run(20240601, 400);
}

/* ================================================================ session pooling */

TestSuite(fuzz_session, .init = init_fuzz_session, .fini = fini_kill_leftovers, .timeout = 240);

Test(fuzz_session, random_sessions)
{
	fuzz_run(20240602, 200);
}
