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
