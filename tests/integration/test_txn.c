/*
 * test_txn.c: transaction pooling (pool_mode = transaction) through a real
 * pgmux and real clients: the borrow timeout and who waits first, results
 * the same as PostgreSQL's for every libpq call (with another client busy on
 * the other backend), the pool's janitor (idle cap, server_idle_timeout,
 * min_pool_size, server_lifetime), a backend that PostgreSQL ends itself,
 * busy polling, and what a logged-in client sends that must not keep or
 * harm the backend the clients share. Session state carried from backend
 * to backend is test_parameters.c's, prepared statements test_prepared.c's,
 * load test_load.c's.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct pgmux px;

/* ---------------------------------------------------------------- fixtures */

/* A session through pgmux without TLS, that must log in. */
static PGconn *app(void)
{
	return h_app_session(&px, "disable", NULL);
}

/* ================================================================ the borrow timeout */

TestSuite(txn_borrow, .fini = h_teardown, .timeout = 120);

static void expect_borrow_timeout(PGconn *b, PGresult *r, long long took_ms, const char *what)
{
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "%s while the only backend was busy: %s (%s)", what,
		     PQresStatus(PQresultStatus(r)), PQerrorMessage(b));
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	const char *severity = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	cr_assert(state && strcmp(state, "53300") == 0, "%s: SQLSTATE %s, expected 53300 (%s)", what,
		  state ? state : "(none)", PQerrorMessage(b));
	cr_assert(msg && strstr(msg, "timed out waiting to acquire database connection") != NULL,
		  "%s: message \"%s\"", what, msg ? msg : "");
	cr_assert(severity && strcmp(severity, "ERROR") == 0, "%s: severity %s, expected ERROR", what,
		  severity ? severity : "(none)");
	cr_assert(took_ms >= 800 && took_ms <= h_scaled_ms(5000),
		  "%s: the error came after %lld ms with connection_borrow_timeout = 1s", what, took_ms);
	cr_assert_eq(PQstatus(b), CONNECTION_OK, "%s: the connection did not survive the borrow timeout", what);
	cr_assert_eq(PQtransactionStatus(b), PQTRANS_IDLE);
}

Test(txn_borrow, timeout_error_and_connection_stays_usable)
{
	pgmux_start_transaction(&px, 1, NULL, "connection_borrow_timeout = 1s");
	PGconn *a = app(), *b = app();
	h_prepare_ok(b, "bs", "select $1::int * 10");

	/* simple protocol */
	h_exec_ok(a, "begin");
	int held = h_backend_pid(a);
	long long t0 = h_now_ms();
	PGresult *r = PQexec(b, "select 1");
	expect_borrow_timeout(b, r, h_now_ms() - t0, "a simple query");
	PQclear(r);
	h_expect_value(a, "select 'a still in its transaction'", "a still in its transaction");
	cr_assert_eq(h_backend_pid(a), held);
	h_exec_ok(a, "commit");
	h_expect_value(b, "select 2", "2");

	/* extended protocol, unnamed statement */
	h_exec_ok(a, "begin");
	const char *v[1] = {"7"};
	t0 = h_now_ms();
	r = PQexecParams(b, "select $1::int", 1, NULL, v, NULL, NULL, 0);
	expect_borrow_timeout(b, r, h_now_ms() - t0, "PQexecParams");
	PQclear(r);
	h_exec_ok(a, "commit");
	r = PQexecParams(b, "select $1::int", 1, NULL, v, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "PQexecParams after the timeout: %s", PQerrorMessage(b));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "7");
	PQclear(r);

	/* extended protocol, a named statement prepared before */
	h_exec_ok(a, "begin");
	const char *three[1] = {"3"};
	t0 = h_now_ms();
	r = PQexecPrepared(b, "bs", 1, three, NULL, NULL, 0);
	expect_borrow_timeout(b, r, h_now_ms() - t0, "PQexecPrepared");
	PQclear(r);
	h_exec_ok(a, "commit");
	char *x = h_prepared_value_ok(b, "bs", "3");
	cr_assert_str_eq(x, "30");
	free(x);

	PQfinish(a);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/* The clock_timestamp() (microseconds since 1970) of a query that waited for the only backend. */
static long long queued_clock_ok(PGconn *conn, const char *who)
{
	bool answered = h_wait_ready(conn, h_scaled_ms(5000));
	if (!answered)
		pgmux_dump_logs(&px);
	cr_assert(answered, "%s got no backend within 5 s of the only backend's release", who);
	PGresult *r = h_next_result(conn);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", who, PQerrorMessage(conn));
	long long t = atoll(PQgetvalue(r, 0, 0));
	PQclear(r);
	cr_assert_null(h_next_result(conn));
	return t;
}

/*
 * A backend given back goes to a waiter on its own worker thread when the
 * oldest waiter is on the other one and has waited under 5 ms
 * (POOL_LOCAL_WAITER_MAX_SKIP_USEC), which saves moving the backend between
 * threads. A waiter that has waited longer
 * comes first, wherever it is. The harness starts two workers and pgmux deals
 * connections to them in turn, so x and z share one and y has the other.
 */
Test(txn_borrow, oldest_waiter_comes_first_across_workers)
{
	static const char clock_sql[] = "select (extract(epoch from clock_timestamp()) * 1000000)::bigint";

	pgmux_start_transaction(&px, 1, NULL, NULL);
	PGconn *admin = h_admin_session(&px);
	PGconn *x = app(), *y = app(), *z = app();
	long long handoffs = h_admin_stat(admin, "database_connection_handoffs");

	h_exec_ok(x, "begin");
	cr_assert_eq(PQsendQuery(y, clock_sql), 1, "%s", PQerrorMessage(y));
	h_sleep_ms(h_scaled_ms(50));
	cr_assert_eq(PQsendQuery(z, clock_sql), 1, "%s", PQerrorMessage(z));
	h_sleep_ms(h_scaled_ms(50));
	h_exec_ok(x, "commit");
	long long ty = queued_clock_ok(y, "y (the oldest waiter, on the other worker)");
	long long tz = queued_clock_ok(z, "z (on x's worker)");
	cr_assert_lt(ty, tz, "z, on the releasing worker, ran %lld us before y, which had waited 50 ms longer", ty - tz);
	/* x's worker to y's, then y's to z's. */
	cr_assert_eq(h_admin_stat(admin, "database_connection_handoffs") - handoffs, 2);
	h_expect_value(x, "select 'x again'", "x again");

	PQfinish(x);
	PQfinish(y);
	PQfinish(z);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ the same results as PostgreSQL */

TestSuite(txn_conform, .fini = h_teardown, .timeout = 300);

/*
 * A transcript: a text rendering of every result a sequence of libpq calls
 * produced (status, SQLSTATE and message, fields and their types, values,
 * command tags, transaction status, notices). The same sequence is run through
 * pgmux and directly against PostgreSQL, and the transcripts must be equal.
 */
struct transcript {
	char *text;
	size_t len, cap;
	bool sqlstate_only; /* for the next results: leave the message out */
};

static void tr_add(struct transcript *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void tr_add(struct transcript *t, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	va_list ap2;
	va_copy(ap2, ap);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	cr_assert_geq(n, 0);
	if (t->len + (size_t)n + 1 > t->cap) {
		t->cap = (t->len + (size_t)n + 1) * 2;
		t->text = realloc(t->text, t->cap);
		cr_assert_not_null(t->text);
	}
	vsnprintf(t->text + t->len, t->cap - t->len, fmt, ap2);
	va_end(ap2);
	t->len += (size_t)n;
}

static void tr_value(struct transcript *t, const char *v, int len, int format)
{
	if (len > 256) {
		tr_add(t, "<%d bytes, hash %016llx>", len,
		       (unsigned long long)h_fnv1a(H_FNV1A_START, v, (size_t)len));
		return;
	}
	if (format == 0) {
		tr_add(t, "'%s'", v);
		return;
	}
	tr_add(t, "x");
	for (int i = 0; i < len; i++)
		tr_add(t, "%02x", (unsigned char)v[i]);
}

static char txn_status_char(PGconn *conn)
{
	switch (PQtransactionStatus(conn)) {
	case PQTRANS_IDLE:
		return 'I';
	case PQTRANS_ACTIVE:
		return 'A';
	case PQTRANS_INTRANS:
		return 'T';
	case PQTRANS_INERROR:
		return 'E';
	default:
		return '?';
	}
}

static void tr_result(struct transcript *t, const char *label, PGconn *conn, PGresult *r)
{
	if (r == NULL) {
		tr_add(t, "%s: (no result)\n", label);
		return;
	}
	ExecStatusType st = PQresultStatus(r);
	tr_add(t, "%s: %s", label, PQresStatus(st));
	if (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR) {
		const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
		const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
		const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
		const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
		const char *pos = PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION);
		tr_add(t, " %s %s", sev ? sev : "-", state ? state : "-");
		if (!t->sqlstate_only)
			tr_add(t, " \"%s\" detail=\"%s\" position=%s", msg ? msg : "", detail ? detail : "",
			       pos ? pos : "-");
	}
	tr_add(t, " cmd=\"%s\" rows=\"%s\"", PQcmdStatus(r), PQcmdTuples(r));
	if (PQnparams(r) > 0) {
		tr_add(t, " params=");
		for (int i = 0; i < PQnparams(r); i++)
			tr_add(t, "%s%u", i ? "," : "", PQparamtype(r, i));
	}
	tr_add(t, " txn=%c\n", txn_status_char(conn));
	int nf = PQnfields(r);
	if (nf > 0) {
		tr_add(t, "  fields:");
		for (int i = 0; i < nf; i++)
			tr_add(t, " %s/%u/%d/%d/%d", PQfname(r, i), PQftype(r, i), PQfformat(r, i), PQfmod(r, i),
			       PQfsize(r, i));
		tr_add(t, "\n");
	}
	for (int row = 0; row < PQntuples(r); row++) {
		tr_add(t, "  row %d:", row);
		for (int i = 0; i < nf; i++) {
			tr_add(t, " ");
			if (PQgetisnull(r, row, i))
				tr_add(t, "NULL");
			else
				tr_value(t, PQgetvalue(r, row, i), PQgetlength(r, row, i), PQfformat(r, i));
		}
		tr_add(t, "\n");
	}
}

/* Record and free r. */
static void tr_take(struct transcript *t, const char *label, PGconn *conn, PGresult *r)
{
	tr_result(t, label, conn, r);
	PQclear(r);
}

/* Every result of a query sent with PQsend*, up to the final NULL. */
static void tr_drain(struct transcript *t, const char *label, PGconn *conn)
{
	PGresult *r;
	int i = 0;
	while ((r = h_next_result(conn)) != NULL) {
		char l[128];
		snprintf(l, sizeof(l), "%s[%d]", label, i++);
		tr_take(t, l, conn, r);
	}
}

static void tr_notice(void *arg, const PGresult *r)
{
	struct transcript *t = arg;
	const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	tr_add(t, "notice: %s %s \"%s\"\n", sev ? sev : "-", state ? state : "-", msg ? msg : "");
}

/* Write text to a file in the test directory; its path goes to path. */
static void write_test_file(const char *name, const char *text, char *path, size_t size)
{
	int n = snprintf(path, size, "%s/%s", h_test_dir(), name);
	cr_assert(n > 0 && (size_t)n < size);
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fputs(text, f);
	fclose(f);
}

/* Show how two transcripts differ (diff -u) on stderr; the first differing line goes to first. */
static void report_differences(const char *via, const char *direct, const char *what, char *first, size_t first_size)
{
	int line = 1;
	first[0] = '\0';
	while (*via || *direct) {
		int na = (int)(strchrnul(via, '\n') - via), nb = (int)(strchrnul(direct, '\n') - direct);
		if (na != nb || memcmp(via, direct, (size_t)na) != 0) {
			snprintf(first, first_size, "line %d:\n  pgmux:  %.*s\n  direct: %.*s", line, na, via, nb, direct);
			break;
		}
		via += na + (via[na] == '\n');
		direct += nb + (direct[nb] == '\n');
		line++;
	}
}

/*
 * Compare two transcripts; on a difference print it and count a failure, but
 * go on, so that one run shows every scenario that differs.
 */
static int conformance_failures;

static void expect_same_transcript(const struct transcript *via, const struct transcript *direct, const char *what)
{
	cr_assert_not_null(via->text, "%s: nothing recorded through pgmux", what);
	cr_assert_not_null(direct->text, "%s: nothing recorded directly", what);
	if (strcmp(via->text, direct->text) == 0)
		return;
	char first[2048], via_path[600], direct_path[600], name[128];
	report_differences(via->text, direct->text, what, first, sizeof(first));
	snprintf(name, sizeof(name), "transcript-%d.direct", conformance_failures);
	write_test_file(name, direct->text, direct_path, sizeof(direct_path));
	snprintf(name, sizeof(name), "transcript-%d.pgmux", conformance_failures);
	write_test_file(name, via->text, via_path, sizeof(via_path));
	const char *argv[] = {"diff", "-u", direct_path, via_path, NULL};
	struct h_cmd diff;
	h_cmd_run(&diff, argv, NULL, 10000);
	fprintf(stderr, "----- %s: PostgreSQL directly (-) and through pgmux (+) -----\n%s-----\n", what,
		diff.out ? diff.out : "");
	h_cmd_free(&diff);
	cr_expect_fail("%s: through pgmux the results differ from PostgreSQL's; first at %s", what, first);
	conformance_failures++;
}

typedef void (*scenario_fn)(PGconn *conn, struct transcript *t);

/* Run scenario through pgmux (on via) and on a direct connection; compare. */
static void compare_scenario(PGconn *via, scenario_fn scenario, const char *what)
{
	struct transcript tv = {0}, td = {0};
	PGconn *direct = h_connect_app_direct(NULL);
	void *old_arg = NULL;
	PQnoticeReceiver old = PQsetNoticeReceiver(via, tr_notice, &tv);
	PQsetNoticeReceiver(direct, tr_notice, &td);
	scenario(via, &tv);
	scenario(direct, &td);
	PQsetNoticeReceiver(via, old, old_arg);
	PQfinish(direct);
	cr_assert_eq(PQstatus(via), CONNECTION_OK, "%s: the connection through pgmux broke: %s", what,
		     PQerrorMessage(via));
	expect_same_transcript(&tv, &td, what);
	free(tv.text);
	free(td.text);
}

static void scenario_extended(PGconn *c, struct transcript *t)
{
	/* unnamed statements, text parameters and results */
	const char *p3[3] = {"41", "hello", NULL};
	tr_take(t, "params text", c,
		PQexecParams(c, "select $1::int4 + 1 as a, $2::text as b, $3::bytea as c", 3, NULL, p3, NULL, NULL, 0));

	/* binary parameters and results: int4, int8, text, bytea with NUL bytes */
	uint32_t i4 = htonl(123456);
	unsigned char i8[8];
	uint64_t big = (uint64_t)-9000000000LL;
	for (int i = 0; i < 8; i++)
		i8[i] = (unsigned char)(big >> (56 - 8 * i));
	const char bytes[] = {0x00, (char)0xff, 0x10, 0x00, 'z'};
	const char *bv[4] = {(const char *)&i4, (const char *)i8, "h\xc3\xa9llo", bytes};
	int bl[4] = {4, 8, 6, 5};
	int bf[4] = {1, 1, 1, 1};
	Oid bt[4] = {23, 20, 25, 17};
	tr_take(t, "params binary", c,
		PQexecParams(c, "select $1 as i4, $2 as i8, $3 as txt, $4 as bin, $1::int8 * 2 as dbl", 4, bt, bv, bl,
			     bf, 1));
	tr_take(t, "binary numeric/bool/float", c,
		PQexecParams(c, "select 3.14159::numeric, true, 2.5::float8, '2024-01-31'::date, null::int", 0, NULL,
			     NULL, NULL, NULL, 1));

	/* errors with unnamed statements */
	const char *one[1] = {"1"};
	tr_take(t, "too few params", c, PQexecParams(c, "select $1::int, $2::int", 1, NULL, one, NULL, NULL, 0));
	tr_take(t, "division by zero", c, PQexecParams(c, "select 1/0", 0, NULL, NULL, NULL, NULL, 0));
	tr_take(t, "syntax error", c, PQexecParams(c, "selec 1", 0, NULL, NULL, NULL, NULL, 0));
	tr_take(t, "bad input", c, PQexecParams(c, "select $1::int", 1, NULL, (const char *[]){"x"}, NULL, NULL, 0));

	/* named statements */
	tr_take(t, "prepare n1", c, PQprepare(c, "n1", "select $1::int * 2 as doubled", 1, NULL));
	tr_take(t, "exec n1", c, PQexecPrepared(c, "n1", 1, (const char *[]){"21"}, NULL, NULL, 0));
	tr_take(t, "exec n1 binary", c, PQexecPrepared(c, "n1", 1, (const char *[]){"-4"}, NULL, NULL, 1));
	tr_take(t, "describe n1", c, PQdescribePrepared(c, "n1"));
	Oid t8[1] = {20};
	tr_take(t, "prepare n2", c,
		PQprepare(c, "n2", "select $1 as big, $1 + 1 as next, 'x'::varchar(7) as v, 1.5::numeric(5,2) as n", 1,
			  t8));
	tr_take(t, "describe n2", c, PQdescribePrepared(c, "n2"));
	tr_take(t, "exec n2", c, PQexecPrepared(c, "n2", 1, (const char *[]){"9000000000"}, NULL, NULL, 0));
	tr_take(t, "prepare n1 again", c, PQprepare(c, "n1", "select 2", 0, NULL));
	tr_take(t, "exec n1 after failed re-prepare", c,
		PQexecPrepared(c, "n1", 1, (const char *[]){"5"}, NULL, NULL, 0));
	tr_take(t, "prepare bad", c, PQprepare(c, "bad", "selec 1", 0, NULL));
	tr_take(t, "exec bad", c, PQexecPrepared(c, "bad", 0, NULL, NULL, NULL, 0));
	tr_take(t, "describe nosuch", c, PQdescribePrepared(c, "nosuch"));
	tr_take(t, "exec nosuch", c, PQexecPrepared(c, "nosuch", 0, NULL, NULL, NULL, 0));
	tr_take(t, "exec n2 binary param", c,
		PQexecPrepared(c, "n2", 1, (const char *[]){(const char *)i8}, (int[]){8}, (int[]){1}, 0));
	/* The server names the statement in this error: through pgmux only the SQLSTATE must match. */
	t->sqlstate_only = true;
	tr_take(t, "exec n1 without its param", c, PQexecPrepared(c, "n1", 0, NULL, NULL, NULL, 0));
	t->sqlstate_only = false;
	tr_take(t, "n1 still fine", c, PQexecPrepared(c, "n1", 1, (const char *[]){"8"}, NULL, NULL, 0));
	/* DEALLOCATE ALL forgets the client's statements (and does not pin). */
	tr_take(t, "deallocate all", c, PQexec(c, "deallocate all"));
	tr_take(t, "exec n1 after deallocate all", c, PQexecPrepared(c, "n1", 1, (const char *[]){"8"}, NULL, NULL, 0));
	tr_take(t, "prepare n1 after deallocate all", c, PQprepare(c, "n1", "select $1::int - 1", 0, NULL));
	tr_take(t, "exec new n1", c, PQexecPrepared(c, "n1", 1, (const char *[]){"8"}, NULL, NULL, 0));

	/* single-row mode */
	cr_assert_eq(PQsendQueryParams(c, "select g, g * g as sq from generate_series(1, 5) g", 0, NULL, NULL, NULL,
				       NULL, 0),
		     1, "%s", PQerrorMessage(c));
	cr_assert_eq(PQsetSingleRowMode(c), 1);
	tr_drain(t, "single row", c);

	/* simple protocol: several statements in one Query, an error among them, an empty one */
	cr_assert_eq(PQsendQuery(c, "select 1 as one; select 'two' as two, 2.0 as n; select 1/0; select 4"), 1);
	tr_drain(t, "multi", c);
	tr_take(t, "empty", c, PQexec(c, ""));
	tr_take(t, "comment only", c, PQexec(c, "-- nothing"));
	tr_take(t, "show", c, PQexec(c, "show integer_datetimes"));
}

static void scenario_cursors(PGconn *c, struct transcript *t)
{
	tr_take(t, "begin", c, PQexec(c, "begin"));
	tr_take(t, "declare", c,
		PQexec(c, "declare cur cursor for select g, md5(g::text) as h, g::numeric / 3 as third "
			  "from generate_series(1, 10) g"));
	tr_take(t, "describe portal", c, PQdescribePortal(c, "cur"));
	for (int i = 0; i < 4; i++)
		tr_take(t, "fetch 3", c, PQexec(c, "fetch 3 from cur"));
	tr_take(t, "fetch backward", c, PQexec(c, "move absolute 2 in cur"));
	tr_take(t, "fetch after move", c,
		PQexecParams(c, "fetch 2 from cur", 0, NULL, NULL, NULL, NULL, 1));
	tr_take(t, "close", c, PQexec(c, "close cur"));
	tr_take(t, "describe closed portal", c, PQdescribePortal(c, "cur"));
	tr_take(t, "fetch closed", c, PQexec(c, "fetch 1 from cur"));
	tr_take(t, "rollback", c, PQexec(c, "rollback"));
	tr_take(t, "describe portal outside a transaction", c, PQdescribePortal(c, "cur"));
}

static void scenario_pipeline(PGconn *c, struct transcript *t)
{
	cr_assert_eq(PQenterPipelineMode(c), 1, "%s", PQerrorMessage(c));
	const char *v21[1] = {"21"}, *v5[1] = {"5"}, *v50[1] = {"50"}, *vt[1] = {"text"};
	/* batch 1: a named statement prepared and used, then an error: the rest is aborted */
	cr_assert_eq(PQsendPrepare(c, "pp1", "select $1::int * 2 as x", 1, NULL), 1);
	cr_assert_eq(PQsendQueryPrepared(c, "pp1", 1, v21, NULL, NULL, 0), 1);
	cr_assert_eq(PQsendQueryParams(c, "select 1/0", 0, NULL, NULL, NULL, NULL, 0), 1);
	cr_assert_eq(PQsendQueryPrepared(c, "pp1", 1, v5, NULL, NULL, 0), 1);
	cr_assert_eq(PQsendQueryParams(c, "select $1::text as t", 1, NULL, vt, NULL, NULL, 0), 1);
	cr_assert_eq(PQpipelineSync(c), 1);
	/* batch 2: works again after the sync, pp1 still exists */
	cr_assert_eq(PQsendQueryPrepared(c, "pp1", 1, v50, NULL, NULL, 0), 1);
	cr_assert_eq(PQsendQueryParams(c, "select 'after sync' as s", 0, NULL, NULL, NULL, NULL, 1), 1);
	cr_assert_eq(PQpipelineSync(c), 1);
	/* batch 3: a statement whose Parse fails, then used in the same batch */
	cr_assert_eq(PQsendPrepare(c, "pp2", "selec 1", 0, NULL), 1);
	cr_assert_eq(PQsendQueryPrepared(c, "pp2", 0, NULL, NULL, NULL, 0), 1);
	cr_assert_eq(PQpipelineSync(c), 1);
	/* batch 4: ... and in the next one */
	cr_assert_eq(PQsendQueryPrepared(c, "pp2", 0, NULL, NULL, NULL, 0), 1);
	cr_assert_eq(PQpipelineSync(c), 1);
	/* batch 5: a transaction across statements, with a describe */
	cr_assert_eq(PQsendQueryParams(c, "begin", 0, NULL, NULL, NULL, NULL, 0), 1);
	cr_assert_eq(PQsendDescribePrepared(c, "pp1"), 1);
	cr_assert_eq(PQsendQueryPrepared(c, "pp1", 1, v5, NULL, NULL, 1), 1);
	cr_assert_eq(PQsendQueryParams(c, "commit", 0, NULL, NULL, NULL, NULL, 0), 1);
	cr_assert_eq(PQpipelineSync(c), 1);
	int syncs = 0, n = 0;
	while (syncs < 5) {
		PGresult *r = h_next_result(c);
		char label[64];
		snprintf(label, sizeof(label), "pipeline %d", n++);
		if (r && PQresultStatus(r) == PGRES_PIPELINE_SYNC)
			syncs++;
		tr_take(t, label, c, r);
		cr_assert_lt(n, 100, "pipeline: too many results");
	}
	cr_assert_eq(PQexitPipelineMode(c), 1, "%s", PQerrorMessage(c));
	tr_take(t, "after pipeline", c, PQexec(c, "select 'after pipeline'"));
}

#define LARGE_SIZE (10 * 1024 * 1024)

static void scenario_large(PGconn *c, struct transcript *t)
{
	char *big = malloc(LARGE_SIZE + 1);
	cr_assert_not_null(big);
	uint32_t x = 12345;
	for (size_t i = 0; i < LARGE_SIZE; i++) {
		x = x * 1103515245u + 12345u;
		big[i] = (char)('a' + (x >> 16) % 26);
	}
	big[LARGE_SIZE] = '\0';
	const char *v[1] = {big};
	for (int format = 0; format <= 1; format++) {
		PGresult *r = PQexecParams(c, "select length($1), md5($1), $1", 1, (Oid[]){25}, v, NULL, NULL, format);
		cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "10 MB round trip: %s", PQerrorMessage(c));
		cr_assert_eq(PQgetlength(r, 0, 2), LARGE_SIZE);
		cr_assert(memcmp(PQgetvalue(r, 0, 2), big, LARGE_SIZE) == 0, "the 10 MB value came back changed");
		tr_take(t, "10 MB round trip", c, r);
	}
	free(big);
	tr_take(t, "12 MB result", c, PQexec(c, "select repeat('abc', 4000000) as r, md5(repeat('abc', 4000000))"));
	tr_take(t, "many rows", c, PQexec(c, "select g, repeat('y', g % 100) from generate_series(1, 50000) g"));
}

#define COPY_ROWS 10000

static void scenario_copy(PGconn *c, struct transcript *t)
{
	tr_take(t, "drop", c, PQexec(c, "drop table if exists txn_copy_t"));
	tr_take(t, "create", c, PQexec(c, "create table txn_copy_t (id int primary key, v text)"));
	PGresult *r = PQexec(c, "copy txn_copy_t from stdin");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN, "%s", PQerrorMessage(c));
	tr_take(t, "copy in", c, r);
	(void)h_copy_rows_in(c, COPY_ROWS, NULL);
	tr_drain(t, "copy in end", c);
	tr_take(t, "count", c, PQexec(c, "select count(*), sum(id), md5(string_agg(v, ',' order by id)) from txn_copy_t"));

	r = PQexec(c, "copy (select * from txn_copy_t order by id) to stdout");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_OUT, "%s", PQerrorMessage(c));
	tr_take(t, "copy out", c, r);
	uint64_t h = H_FNV1A_START;
	int rows = 0, n;
	char *buf;
	while ((n = PQgetCopyData(c, &buf, 0)) > 0) {
		h = h_fnv1a(h, buf, (size_t)n);
		rows++;
		PQfreemem(buf);
	}
	tr_add(t, "copy out: %d rows, end %d, hash %016llx\n", rows, n, (unsigned long long)h);
	tr_drain(t, "copy out end", c);

	/* inside a transaction: CopyFail, then a bad row */
	tr_take(t, "begin", c, PQexec(c, "begin"));
	r = PQexec(c, "copy txn_copy_t from stdin");
	tr_take(t, "copy in (to fail)", c, r);
	cr_assert_eq(PQputCopyData(c, "20001\tpartial\n", 14), 1);
	cr_assert_eq(PQputCopyEnd(c, "client gave up"), 1);
	tr_drain(t, "copy fail", c);
	tr_take(t, "rollback", c, PQexec(c, "rollback"));
	r = PQexec(c, "copy txn_copy_t from stdin");
	tr_take(t, "copy in (bad row)", c, r);
	cr_assert_eq(PQputCopyData(c, "x\ty\n", 4), 1);
	cr_assert_eq(PQputCopyEnd(c, NULL), 1);
	tr_drain(t, "copy bad row", c);
	tr_take(t, "count again", c, PQexec(c, "select count(*) from txn_copy_t"));
	tr_take(t, "drop", c, PQexec(c, "drop table txn_copy_t"));
}

static void scenario_notices_and_errors(PGconn *c, struct transcript *t)
{
	tr_take(t, "notice", c, PQexec(c, "DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END$$"));
	tr_take(t, "notice in txn", c, PQexec(c, "begin; DO $$BEGIN RAISE NOTICE 'inside'; END$$; commit"));
	tr_take(t, "begin", c, PQexec(c, "begin"));
	tr_take(t, "1/0", c, PQexec(c, "select 1/0"));
	tr_take(t, "in failed txn", c, PQexec(c, "select 1"));
	tr_take(t, "in failed txn, extended", c, PQexecParams(c, "select 1", 0, NULL, NULL, NULL, NULL, 0));
	tr_take(t, "rollback", c, PQexec(c, "rollback"));
	tr_take(t, "after rollback", c, PQexec(c, "select 1"));
	tr_take(t, "begin", c, PQexec(c, "begin"));
	tr_take(t, "extended error", c, PQexecParams(c, "select 1/0", 0, NULL, NULL, NULL, NULL, 0));
	tr_take(t, "commit of failed", c, PQexec(c, "commit"));
	tr_take(t, "savepoints", c,
		PQexec(c, "begin; savepoint s; select 1/0"));
	tr_take(t, "rollback to", c, PQexec(c, "rollback to savepoint s"));
	tr_take(t, "after rollback to", c, PQexec(c, "select 'recovered'"));
	tr_take(t, "commit", c, PQexec(c, "commit"));
	tr_take(t, "commit outside", c, PQexec(c, "commit"));
	tr_take(t, "raise exception", c,
		PQexec(c, "DO $$BEGIN RAISE EXCEPTION 'custom' USING ERRCODE = 'P0042', DETAIL = 'd'; END$$"));
	tr_take(t, "subquery returns two rows", c, PQexec(c, "select * from (values (1)) v(x) where x = (select 1 union all select 1)"));
}

Test(txn_conform, same_results_as_postgresql)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *via = h_app_session(&px, "require", NULL);
	struct h_traffic traffic;
	h_traffic_start(&traffic, &px);
	compare_scenario(via, scenario_extended, "extended protocol");
	compare_scenario(via, scenario_cursors, "cursors with row limits");
	compare_scenario(via, scenario_pipeline, "pipeline mode");
	compare_scenario(via, scenario_large, "large values");
	compare_scenario(via, scenario_copy, "COPY");
	compare_scenario(via, scenario_notices_and_errors, "notices and errors");
	h_traffic_stop_and_check(&traffic);
	PQfinish(via);
	cr_assert_eq(conformance_failures, 0, "%d scenario(s) gave different results through pgmux",
		     conformance_failures);
	h_expect_log_lacks(&px, "session pinned");
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ the pool's janitor */

TestSuite(txn_janitor, .fini = h_teardown, .timeout = 120);

/*
 * Wait until app has want backends; returns the milliseconds since t0. On a
 * timeout, prints pgmux's log and fails with why.
 */
static long long wait_app_backends(PGconn *super, int want, long long t0, const char *why)
{
	char s[16];
	snprintf(s, sizeof(s), "%d", want);
	bool reached = h_poll_value(super, H_APP_BACKENDS_SQL, s, h_scaled_ms(6000));
	long long took = h_now_ms() - t0;
	if (!reached)
		pgmux_dump_logs(&px);
	cr_assert(reached, "%d backends %lld ms later, expected %d: %s", h_app_backends(super), took, want, why);
	return took;
}

/* Each of n clients opens a transaction, so that the pool has n backends; their pids go to pids. */
static void hold_backends(PGconn **clients, int n, int *pids)
{
	for (int i = 0; i < n; i++) {
		h_exec_ok(clients[i], "begin");
		pids[i] = h_backend_pid(clients[i]);
		for (int j = 0; j < i; j++)
			cr_assert_neq(pids[j], pids[i], "two clients in a transaction share backend %d", pids[i]);
	}
}

/*
 * Make the pool's four backends busy (one transaction per client), then idle.
 * Returns the time just before the first of them went idle.
 */
static long long four_busy_then_idle(PGconn *super, PGconn **c, int *pids)
{
	hold_backends(c, 4, pids);
	cr_assert_eq(h_app_backends(super), 4);
	long long t0 = h_now_ms();
	for (int i = 0; i < 4; i++)
		h_exec_ok(c[i], "commit");
	return t0;
}

/* Every backend of app that PostgreSQL has is one of pids: the pool opened none since. */
static void expect_backends_among(PGconn *super, const int *pids, int n, const char *why)
{
	PGresult *r = PQexec(super, "select pid from pg_stat_activity where usename = 'app' and datname = "
				    "'postgres' and coalesce(application_name, '') <> 'pgmux health check'");
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(super));
	for (int i = 0; i < PQntuples(r); i++) {
		int pid = atoi(PQgetvalue(r, i, 0));
		bool known = false;
		for (int k = 0; k < n; k++)
			known |= pids[k] == pid;
		cr_assert(known, "%s: backend %d is not one of those the clients used", why, pid);
	}
	PQclear(r);
}

/*
 * max_idle_connections_percent = 50 of max_connections = 4: of four backends
 * left idle, two are closed once they have been idle for a second, and two
 * stay. The clients then get four backends again.
 */
Test(txn_janitor, idle_cap_closes_surplus_backends_after_a_second)
{
	pgmux_start_transaction(&px, 4, NULL, "max_idle_connections_percent = 50");
	PGconn *super = h_connect_super_direct();
	PGconn *c[4];
	int pids[4];
	for (int i = 0; i < 4; i++)
		c[i] = app();
	/* Every backend goes idle after t0, so none may be closed before t0 + 1 s. */
	long long t0 = four_busy_then_idle(super, c, pids);
	long long took = wait_app_backends(super, 2, t0, "four went idle and the idle cap is 2");
	cr_assert_geq(took, 995, "the idle cap closed backends %lld ms after they went idle, before a second", took);
	h_sleep_ms(1500);
	cr_assert_eq(h_app_backends(super), 2, "the janitor went below the idle cap of 2");
	expect_backends_among(super, pids, 4, "after the idle cap");

	hold_backends(c, 4, pids);
	cr_assert_eq(h_app_backends(super), 4);
	for (int i = 0; i < 4; i++) {
		h_exec_ok(c[i], "commit");
		PQfinish(c[i]);
	}
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * min_pool_size = 2: one client's first statement makes the pool open a
 * second backend, with no second client. server_idle_timeout = 1s: of four
 * backends left idle, those beyond min_pool_size are closed, and the two
 * that stay are kept however long they are idle.
 */
Test(txn_janitor, server_idle_timeout_spares_min_pool_size)
{
	pgmux_start_transaction(&px, 4, NULL, "min_pool_size = 2\nserver_idle_timeout = 1s");
	PGconn *super = h_connect_super_direct();
	PGconn *c[4];
	int pids[4];
	for (int i = 0; i < 4; i++)
		c[i] = app();
	h_expect_value(c[0], "select 1", "1");
	(void)wait_app_backends(super, 2, h_now_ms(), "one client ran a statement and min_pool_size is 2");

	long long t0 = four_busy_then_idle(super, c, pids);
	long long took = wait_app_backends(super, 2, t0, "four went idle, server_idle_timeout = 1s, min_pool_size = 2");
	cr_assert_geq(took, 995, "idle backends were closed %lld ms after they went idle, before server_idle_timeout",
		      took);
	h_sleep_ms(2500);
	cr_assert_eq(h_app_backends(super), 2, "the janitor closed backends that min_pool_size keeps");
	expect_backends_among(super, pids, 4, "after server_idle_timeout");
	h_expect_value(c[3], "select 'still served'", "still served");
	for (int i = 0; i < 4; i++)
		PQfinish(c[i]);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * server_lifetime = 1s: a transaction on a backend older than that is never
 * cut short; the backend is closed when the transaction gives it back, and
 * the next statement gets a new one.
 */
Test(txn_janitor, server_lifetime_replaces_backends_between_transactions)
{
	pgmux_start_transaction(&px, 2, NULL, "server_lifetime = 1s");
	PGconn *super = h_connect_super_direct();
	PGconn *a = app();
	h_exec_ok(a, "begin");
	int old = h_backend_pid(a);
	h_sleep_ms(1500);
	cr_assert_eq(h_backend_pid(a), old, "a transaction moved to another backend when its own grew old");
	h_exec_ok(a, "commit");
	/* At once: not left to the janitor's round once a second. */
	cr_assert_neq(h_backend_pid(a), old, "the next statement was served by a backend older than server_lifetime");

	bool gone = h_wait_backend_gone(super, old, 5000);
	if (!gone)
		pgmux_dump_logs(&px);
	cr_assert(gone, "backend %d, older than server_lifetime = 1s, was still connected after it was released", old);
	PQfinish(a);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ a backend that ends its session */

TestSuite(txn_backend_ends, .fini = h_teardown, .timeout = 120);

static void terminate_backend(PGconn *super, int pid, bool wait_gone)
{
	char sql[160];
	snprintf(sql, sizeof(sql), "select pg_terminate_backend(%d)", pid);
	h_exec_ok(super, sql);
	if (!wait_gone)
		return;
	cr_assert(h_wait_backend_gone(super, pid, 5000), "backend %d outlived pg_terminate_backend", pid);
}

/*
 * A backend terminated while its client is idle in a transaction sends a
 * FATAL and closes. The session is pgmux's and goes on: the client must not
 * get a FATAL that ends nothing (libpq passes one that arrives while it is
 * idle to the notice receiver); its next statement fails with the server's
 * SQLSTATE and message (57P01) as an ERROR, since the transaction is gone,
 * and the one after runs on another backend.
 */
Test(txn_backend_ends, terminated_while_idle_in_a_transaction)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *super = h_connect_super_direct();
	PGconn *a = app();
	struct h_notices notices = {0};
	PQsetNoticeReceiver(a, h_record_notices, &notices);
	h_exec_ok(a, "begin");
	int pid = h_backend_pid(a);
	terminate_backend(super, pid, true);
	h_sleep_ms(h_scaled_ms(300));
	cr_assert(PQconsumeInput(a), "the client's connection broke: %s", PQerrorMessage(a));
	(void)PQisBusy(a); /* parses whatever came */
	cr_expect_eq(notices.fatal, 0, "the backend's FATAL reached the idle client");

	PGresult *r = PQexec(a, "select 1");
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "a statement in the lost transaction did not fail (%s)",
		     PQresStatus(PQresultStatus(r)));
	cr_expect_str_eq(state ? state : "", "57P01", "%s", PQresultErrorMessage(r));
	const char *message = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	const char *severity = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	cr_expect_str_eq(message ? message : "", "terminating connection due to administrator command");
	cr_expect_str_eq(severity ? severity : "", "ERROR");
	const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
	cr_expect(detail && strstr(detail, "pgmux kept this client's session"),
		  "the error does not say that the session goes on: DETAIL %s", detail ? detail : "(none)");
	PQclear(r);
	cr_expect_eq(notices.fatal, 0, "a FATAL reached the client");
	cr_assert_eq(PQstatus(a), CONNECTION_OK, "the session ended with its backend");
	h_expect_value(a, "select 'next'", "next");
	cr_expect_neq(h_backend_pid(a), pid);
	PQfinish(a);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * The same, with the client's next statement sent as the backend goes. Before
 * pgmux acted on the FATAL itself, a statement that came between the FATAL and
 * the end of the connection went to the dying backend uncounted (as if the
 * server skipped it after an extended-protocol error), and the client waited
 * for its answer for good (pgbench TPC-B with pg_terminate_backend hung that
 * way). Each round must get an answer, whichever it is.
 */
Test(txn_backend_ends, statement_sent_as_the_backend_is_terminated_gets_an_answer)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *super = h_connect_super_direct();
	PGconn *a = app();
	int rounds = h_under_valgrind() ? 20 : 150, failed = 0;
	for (int i = 0; i < rounds; i++) {
		h_exec_ok(a, "begin");
		int pid = h_backend_pid(a);
		terminate_backend(super, pid, false);
		cr_assert_eq(PQsendQuery(a, "select 1"), 1, "round %d: %s", i, PQerrorMessage(a));
		PGresult *r = h_get_result(a, h_scaled_ms(5000));
		if (r == NULL)
			pgmux_dump_logs(&px);
		cr_assert_not_null(r, "round %d: no answer within 5 s to a statement sent as backend %d was terminated",
				   i, pid);
		failed += PQresultStatus(r) == PGRES_FATAL_ERROR;
		PQclear(r);
		while ((r = h_get_result(a, h_scaled_ms(5000))) != NULL)
			PQclear(r);
		cr_assert_eq(PQstatus(a), CONNECTION_OK, "round %d: the session ended: %s", i, PQerrorMessage(a));
		cr_assert(!PQisBusy(a), "round %d: the answer to \"select 1\" never ended with ReadyForQuery", i);
		/* Whatever happened, end the transaction; it may fail in its turn if the backend went after "select 1". */
		cr_assert_eq(PQsendQuery(a, "rollback"), 1, "round %d: %s", i, PQerrorMessage(a));
		r = h_get_result(a, h_scaled_ms(5000));
		if (r == NULL)
			pgmux_dump_logs(&px);
		cr_assert_not_null(r, "round %d: no answer within 5 s to the rollback after backend %d was terminated",
				   i, pid);
		PQclear(r);
		while ((r = h_get_result(a, h_scaled_ms(5000))) != NULL)
			PQclear(r);
	}
	h_expect_value(a, "select 'after'", "after");
	cr_log_info("%d rounds, %d statements failed with their backend", rounds, failed);
	PQfinish(a);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * idle_in_transaction_session_timeout set by the client (carried to each
 * backend it borrows) ends the backend's session; the client's next
 * statement gets the server's SQLSTATE and message, and the session goes on.
 */
Test(txn_backend_ends, idle_in_transaction_timeout_says_why)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *a = app();
	struct h_notices notices = {0};
	PQsetNoticeReceiver(a, h_record_notices, &notices);
	h_exec_ok(a, "set idle_in_transaction_session_timeout = '200ms'");
	h_exec_ok(a, "begin");
	int pid = h_backend_pid(a);
	h_sleep_ms(h_scaled_ms(1000));
	PGresult *r = PQexec(a, "select 1");
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "the timed-out transaction went on (%s)",
		     PQresStatus(PQresultStatus(r)));
	cr_expect_str_eq(state ? state : "", "25P03", "%s", PQresultErrorMessage(r));
	cr_expect(strstr(PQresultErrorMessage(r), "idle-in-transaction timeout") != NULL, "%s",
		  PQresultErrorMessage(r));
	cr_expect(detail && strstr(detail, "pgmux kept this client's session"), "DETAIL %s", detail ? detail : "(none)");
	PQclear(r);
	cr_expect_eq(notices.fatal, 0, "the backend's FATAL reached the client");
	cr_assert_eq(PQstatus(a), CONNECTION_OK, "the session ended with its backend");
	h_expect_value(a, "show idle_in_transaction_session_timeout", "200ms");
	cr_expect_neq(h_backend_pid(a), pid);
	PQfinish(a);
	h_stop_expect_clean_exit(&px);
}

/*
 * Someone terminates pgmux's idle health-check connection, then a session's
 * backend (a script that ends idle sessions does both). The session's FATAL
 * asks for a health check at once; it runs on the monitor's dead connection
 * and fails, which says nothing about the instance: the monitor must try a
 * fresh connection before it declares the writer lost and makes every new
 * transaction wait for the next check.
 */
Test(txn_backend_ends, a_terminated_health_check_connection_is_not_an_outage)
{
	h_wait_no_app_backends();
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.max_connections = 2;
	o.admin_users = h_env()->superuser;
	o.extra_target = "health_check_interval = 60s"; /* no scheduled check comes to the rescue */
	pgmux_start_ok(&px, &o);
	PGconn *super = h_connect_super_direct();
	const char *monitor_sql = "select coalesce(max(pid), 0) from pg_stat_activity "
				  "where application_name = 'pgmux health check'";
	cr_assert(h_poll_value(super, "select count(*) from pg_stat_activity "
				      "where application_name = 'pgmux health check'",
			       "1", h_scaled_ms(5000)),
		  "no health-check connection");
	char *v = h_value_ok(super, monitor_sql);
	int monitor_pid = atoi(v);
	free(v);

	PGconn *a = app();
	h_exec_ok(a, "begin");
	int pid = h_backend_pid(a);
	terminate_backend(super, monitor_pid, true);
	terminate_backend(super, pid, true);

	PGresult *r = PQexec(a, "select 1");
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_expect_str_eq(state ? state : "", "57P01", "%s", PQresultErrorMessage(r));
	PQclear(r);
	h_expect_value(a, "select 'next'", "next");
	/* The check that the session's FATAL asked for reconnected. */
	char sql[200];
	snprintf(sql, sizeof(sql), "select count(*) from pg_stat_activity where application_name = "
				   "'pgmux health check' and pid <> %d", monitor_pid);
	cr_expect(h_poll_value(super, sql, "1", h_scaled_ms(5000)), "the health check did not reconnect");
	int lost = h_file_count(px.logfile, "lost; new transactions wait for a writer");
	if (lost)
		pgmux_dump_logs(&px);
	cr_expect_eq(lost, 0, "the writer was declared lost because its health-check connection was terminated");
	PQfinish(a);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ busy polling */

TestSuite(txn_busy_poll, .fini = h_teardown, .timeout = 180);

/* pgbench -S through pgmux with the given clients for the given seconds: no failed transaction. */
static void pgbench_select_ok(const char *clients, const char *seconds)
{
	const char *args[] = {"-n", "-S", "-c", clients, "-j", "1", "-T", seconds, NULL};
	struct h_cmd c;
	char what[64];
	h_pgbench_run(&c, px.port, "disable", "postgres", args, h_scaled_ms(60000));
	snprintf(what, sizeof(what), "pgbench -c %s", clients);
	h_expect_pgbench_clean(&c, what);
	cr_log_info("busy_poll_us = 500, pgbench -S -c %s: %s", clients,
		    strstr(c.out, "tps = ") ? strstr(c.out, "tps = ") : "(no tps)");
	h_cmd_free(&c);
}

/*
 * With busy_poll_us set, a worker polls instead of sleeping while it has few
 * sessions in flight. Transactions must be relayed exactly as without it, at
 * one client (polling) and at eight (more sessions than it polls for), and
 * once the traffic stops the workers must go back to sleep: pgmux uses
 * almost no CPU time while idle.
 */
Test(txn_busy_poll, relays_transactions_and_sleeps_when_idle)
{
	pgmux_start_transaction(&px, 4, "busy_poll_us = 500", NULL);
	pgbench_select_ok("1", h_under_valgrind() ? "4" : "2");
	pgbench_select_ok("8", h_under_valgrind() ? "4" : "2");

	PGconn *conn = app();
	h_expect_value(conn, "select 41 + 1", "42");
	h_sleep_ms(200);
	long long before = h_proc_cpu_ms(px.pid);
	h_sleep_ms(2000);
	long long used = h_proc_cpu_ms(px.pid) - before;
	cr_log_info("busy_poll_us = 500: pgmux used %lld ms of CPU time in 2 s of idleness", used);
	cr_assert_lt(used, 400, "pgmux used %lld ms of CPU time in 2 s with no traffic: a worker kept polling",
		     used);
	h_expect_value(conn, "select 6 * 7", "42");
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ what a logged-in client sends */

TestSuite(txn_protocol, .fini = h_teardown, .timeout = 120);

/* The one shared backend (pgmux_start_one_backend()) and another client on it, to see whether a session harms it. */
static PGconn *start_shared(const char *extra_pool)
{
	pgmux_start_one_backend(&px, extra_pool);
	return h_app_session(&px, "disable", NULL);
}

static void stop_shared(PGconn *other)
{
	PQfinish(other);
	h_stop_expect_clean_exit(&px);
}

/*
 * Found by the protocol fuzz test (test_fuzz.c), like the rest of this
 * suite. A PasswordMessage after login went to the backend: PostgreSQL ends the
 * session for it, and with transaction pooling that backend is the one
 * other clients share. pgmux refuses it itself now, as PostgreSQL would.
 */
Test(txn_protocol, password_message_after_login)
{
	struct h_buf m = {0};
	PGconn *other;
	int pid, fd;

	other = start_shared(NULL);
	pid = h_backend_pid(other);
	fd = h_raw_session(&px, "fuzz", NULL);
	h_msg_raw(&m, 'p', "secret", 7);
	h_send_buf(fd, &m);
	h_buf_free(&m);
	h_raw_expect_fatal(fd, "08P01", NULL, NULL, "a PasswordMessage after login");
	cr_assert_eq(h_backend_pid(other), pid, "the backend the clients share was lost");
	stop_shared(other);
}

/*
 * A Flush, or COPY messages outside a COPY (PostgreSQL ignores them), from
 * an idle client made pgmux borrow a backend for them; no ReadyForQuery
 * came to end that "transaction", so the client kept the backend from
 * everyone else until its next query.
 */
Test(txn_protocol, idle_flush_and_copy_messages_keep_no_backend)
{
	struct h_buf m = {0};
	PGconn *other;
	int fd;

	other = start_shared(NULL);
	fd = h_raw_session(&px, "fuzz", NULL);
	h_msg_raw(&m, 'H', "", 0);
	h_msg_raw(&m, 'd', "1\t2\n", 4);
	h_msg_raw(&m, 'c', "", 0);
	h_msg_raw(&m, 'f', "no", 3);
	h_send_buf(fd, &m);
	h_buf_free(&m);
	h_sleep_ms(h_scaled_ms(100));
	h_expect_backend_free(other, "a Flush and COPY messages from an idle client");
	cr_assert(h_raw_query(fd, "select 1"), "the session does not work after them");
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
Test(txn_protocol, queries_skipped_after_an_error_keep_no_backend)
{
	struct h_buf parts[2] = {{0}};
	PGconn *other;

	other = start_shared(NULL);
	h_msg_execute(&parts[0], "no_such_portal", 0);
	h_msg_query(&parts[0], "select 1");
	h_msg_sync(&parts[0]);
	h_like_postgres(&px, parts, 1, "a Query behind a failed Execute, sent together", other);

	h_msg_execute(&parts[0], "no_such_portal", 0);
	h_msg_raw(&parts[0], 'H', "", 0);
	h_msg_query(&parts[1], "select 1");
	h_msg_sync(&parts[1]);
	h_like_postgres(&px, parts, 2, "a Query after the error of an Execute came back", other);
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
Test(txn_protocol, flush_with_a_body)
{
	struct h_buf parts[3] = {{0}};
	PGconn *other;

	other = start_shared(NULL);
	h_msg_raw(&parts[0], 'H', "xx", 2);
	h_msg_query(&parts[1], "select 1");
	h_msg_parse(&parts[1], "s1", "select 2");
	h_msg_run(&parts[1], "s1");
	h_msg_run(&parts[2], "s1");
	h_like_postgres(&px, parts, 3, "a Flush with a body, alone, then more", other);

	h_msg_target(&parts[0], 'D', 'S', "no_such_statement");
	h_msg_sync(&parts[0]);
	h_msg_raw(&parts[0], 'H', "xx", 2);
	h_msg_query(&parts[0], "begin");
	h_msg_sync(&parts[0]);
	h_like_postgres(&px, parts, 1, "a Flush with a body while other replies are due", other);
	stop_shared(other);
}

