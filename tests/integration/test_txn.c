/*
 * test_txn.c: end-to-end tests of transaction pooling (pool_mode =
 * transaction) through a real pgmux and real clients: pgbench and libpq
 * sessions that share a few backends, sessions that must be pinned to their
 * backend, session state that must follow a client from backend to backend,
 * the pool's limits, and conformance (the same libpq calls give the same
 * results through pgmux as directly against PostgreSQL).
 *
 * Backends are made to change under a client on purpose: with a pool of two,
 * a second client that holds one backend in an open transaction forces the
 * first onto the other, so "the setting followed the client" is proved on a
 * backend the client had not used for that statement before.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct pgmux px;

/* ---------------------------------------------------------------- fixtures */

struct traffic;
static struct traffic *running_traffic;
static void traffic_stop(struct traffic *t);

/* After a failed assertion: stop the background client's thread, then every process. */
static void fini_kill_leftovers(void)
{
	if (running_traffic)
		traffic_stop(running_traffic);
	h_teardown();
}

/*
 * Start a pgmux in transaction mode with a pool of max_connections backends.
 * First wait for backends of app left by an earlier test to be gone, so that
 * counts in pg_stat_activity belong to this test only.
 *
 * The pool keeps every idle backend (max_idle_connections_percent = 100)
 * unless extra_pool sets the cap: these tests follow clients over a fixed
 * set of backends, and the default cap of 50 % closes one of two backends
 * left idle for a second (during a pg_sleep, or a slow run under valgrind).
 * The janitor suite tests the cap.
 */
static void start_txn_pgmux(int max_connections, const char *extra_pgmux, const char *extra_pool)
{
	h_wait_no_app_backends();

	char pool[1024];
	snprintf(pool, sizeof(pool), "%s\n%s",
		 extra_pool && strstr(extra_pool, "max_idle_connections_percent") ? "" : "max_idle_connections_percent = 100",
		 extra_pool ? extra_pool : "");

	struct pgmux_options o;
	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.max_connections = max_connections;
	o.extra_pgmux = extra_pgmux;
	o.extra_pool = pool;
	o.admin_users = h_env()->superuser;
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
}

/* ---------------------------------------------------------------- libpq helpers */

/* A session through pgmux (no TLS unless sslmode asks), that must log in. */
static PGconn *app_session_ssl(const char *sslmode, const char *extra)
{
	return h_app_session(&px, sslmode, extra);
}

static PGconn *app(const char *extra)
{
	return app_session_ssl("disable", extra);
}

/* Run a statement that must succeed (command or rows). */
static void run_ok(PGconn *conn, const char *sql)
{
	PGresult *r = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(r);
	cr_assert(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "\"%s\" failed (%s): %s", sql,
		  PQresStatus(st), PQerrorMessage(conn));
	PQclear(r);
}

/* sql returns (pid, value) in one row: one statement, so both come from the same backend. */
static char *pid_and_value(PGconn *conn, const char *sql, int *pid)
{
	PGresult *r = PQexec(conn, sql);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "\"%s\" failed: %s", sql, PQerrorMessage(conn));
	cr_assert_eq(PQntuples(r), 1);
	cr_assert_eq(PQnfields(r), 2);
	*pid = atoi(PQgetvalue(r, 0, 0));
	char *v = strdup(PQgetvalue(r, 0, 1));
	PQclear(r);
	return v;
}

/* A statement that must fail with sqlstate; returns the primary message (malloc'd). */
static char *expect_error(PGconn *conn, const char *sql, const char *sqlstate)
{
	PGresult *r = PQexec(conn, sql);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "\"%s\" gave %s, expected an error %s", sql,
		     PQresStatus(PQresultStatus(r)), sqlstate);
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert(state && strcmp(state, sqlstate) == 0, "\"%s\" failed with SQLSTATE %s (%s), expected %s", sql,
		  state ? state : "(none)", PQerrorMessage(conn), sqlstate);
	const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	char *out = strdup(msg ? msg : "");
	PQclear(r);
	return out;
}

/* PQexecPrepared with one text parameter; the single value it returns (malloc'd). */
static char *exec_prepared_1(PGconn *conn, const char *name, const char *param)
{
	const char *values[1] = {param};
	PGresult *r = PQexecPrepared(conn, name, param ? 1 : 0, param ? values : NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "executing prepared statement \"%s\" failed: %s", name,
		     PQerrorMessage(conn));
	cr_assert_eq(PQntuples(r), 1);
	char *v = strdup(PQgetvalue(r, 0, 0));
	PQclear(r);
	return v;
}

static void prepare_ok(PGconn *conn, const char *name, const char *sql)
{
	PGresult *r = PQprepare(conn, name, sql, 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "PQprepare(\"%s\", \"%s\") failed: %s", name, sql,
		     PQerrorMessage(conn));
	PQclear(r);
}

/* Wait until PQgetResult would not block; false on timeout or a broken connection. */
static bool wait_not_busy(PGconn *conn, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	while (PQisBusy(conn)) {
		long long left = deadline - h_now_ms();
		if (left <= 0)
			return false;
		struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
		if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR)
			return false;
		if (!PQconsumeInput(conn))
			return true; /* PQgetResult reports the broken connection */
	}
	return true;
}

static PGresult *next_result(PGconn *conn)
{
	cr_assert(wait_not_busy(conn, h_scaled_ms(20000)), "no result within %d ms: %s", h_scaled_ms(20000),
		  PQerrorMessage(conn));
	return PQgetResult(conn);
}

static int distinct_count(const int *v, int n)
{
	int distinct = 0;
	for (int i = 0; i < n; i++) {
		bool seen = false;
		for (int j = 0; j < i; j++)
			seen |= v[j] == v[i];
		distinct += !seen;
	}
	return distinct;
}

static bool contains_int(const int *v, int n, int x)
{
	for (int i = 0; i < n; i++)
		if (v[i] == x)
			return true;
	return false;
}

/* ---------------------------------------------------------------- log */

static void expect_log_contains(const char *needle)
{
	bool found = h_file_wait_contains(px.logfile, needle, h_scaled_ms(3000));
	if (!found)
		pgmux_dump_logs(&px);
	cr_assert(found, "pgmux's log (%s) lacks \"%s\"", px.logfile, needle);
}

static void expect_log_lacks(const char *needle)
{
	char *text = h_read_file(px.logfile);
	const char *at = strstr(text, needle);
	if (at) {
		const char *eol = strchr(at, '\n');
		fprintf(stderr, "unexpected log line: %.*s\n", eol ? (int)(eol - at) : 200, at);
	}
	bool absent = at == NULL;
	free(text);
	cr_assert(absent, "pgmux's log contains \"%s\"", needle);
}

static void expect_pinned_log(int pid, const char *reason)
{
	char needle[256];
	snprintf(needle, sizeof(needle), "session pinned to backend pid %d: %s", pid, reason);
	expect_log_contains(needle);
}

/* ---------------------------------------------------------------- background traffic */

/*
 * A second client on a thread of its own that runs short transactions
 * (BEGIN; SELECT pg_backend_pid(); COMMIT) without pause, so that the pool's
 * backends really are shared while the test's own client works. A backend
 * that is pinned to the test's client must never serve it: avoid_pid names
 * that backend once the pin is established, and every transaction begun
 * after that checks it. Nothing here calls criterion: the main thread
 * asserts on the counters.
 */
struct traffic {
	pthread_t thread;
	int port;
	atomic_bool stop;
	atomic_int avoid_pid;
	atomic_int transactions;
	atomic_int failures;
	atomic_int collisions;
	char error[512];
};

static bool traffic_exec(struct traffic *t, PGconn *conn, const char *sql, int *value)
{
	PGresult *r = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(r);
	bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
	if (!ok && atomic_fetch_add(&t->failures, 1) == 0)
		snprintf(t->error, sizeof(t->error), "\"%s\": %s", sql, PQerrorMessage(conn));
	if (ok && value)
		*value = atoi(PQgetvalue(r, 0, 0));
	PQclear(r);
	return ok;
}

static void *traffic_main(void *arg)
{
	struct traffic *t = arg;
	PGconn *conn = h_connect_app(t->port, "disable", "application_name=traffic");
	if (PQstatus(conn) != CONNECTION_OK) {
		snprintf(t->error, sizeof(t->error), "connect: %s", PQerrorMessage(conn));
		atomic_fetch_add(&t->failures, 1);
		PQfinish(conn);
		return NULL;
	}
	while (!atomic_load(&t->stop)) {
		int avoid = atomic_load(&t->avoid_pid);
		int pid = 0;
		if (!traffic_exec(t, conn, "begin", NULL) || !traffic_exec(t, conn, "select pg_backend_pid()", &pid) ||
		    !traffic_exec(t, conn, "commit", NULL))
			break;
		if (avoid != 0 && pid == avoid)
			atomic_fetch_add(&t->collisions, 1);
		atomic_fetch_add(&t->transactions, 1);
	}
	PQfinish(conn);
	return NULL;
}

static void traffic_start(struct traffic *t)
{
	memset(t, 0, sizeof(*t));
	t->port = px.port;
	(void)h_env(); /* loaded here, read-only on the thread */
	cr_assert_eq(pthread_create(&t->thread, NULL, traffic_main, t), 0);
	running_traffic = t;
	long long deadline = h_now_ms() + h_scaled_ms(10000);
	while (atomic_load(&t->transactions) < 1 && atomic_load(&t->failures) == 0 && h_now_ms() < deadline)
		h_sleep_ms(5);
	cr_assert_gt(atomic_load(&t->transactions), 0, "the background client ran no transaction: %s", t->error);
}

static void traffic_stop(struct traffic *t)
{
	atomic_store(&t->stop, true);
	pthread_join(t->thread, NULL);
	running_traffic = NULL;
}

static void traffic_stop_and_check(struct traffic *t)
{
	traffic_stop(t);
	cr_assert_eq(atomic_load(&t->failures), 0, "the background client failed: %s", t->error);
	cr_assert_eq(atomic_load(&t->collisions), 0,
		     "the background client was served backend %d %d times while it was pinned to another session",
		     atomic_load(&t->avoid_pid), atomic_load(&t->collisions));
	cr_log_info("background client: %d transactions", atomic_load(&t->transactions));
}

/* ================================================================ 1: pgbench */

TestSuite(txn_pgbench, .fini = fini_kill_leftovers, .timeout = 300);

/*
 * pgbench -S with 64 clients over 8 backends. While it runs, pg_stat_activity
 * is sampled from a direct superuser connection: app never has more than 8
 * backends.
 */
static void pgbench_64_clients_over_8(const char *protocol, const char *sslmode)
{
	start_txn_pgmux(8, NULL, NULL);
	const struct h_env *e = h_env();
	char pgbench[600], port[16], pw[256], ssl[64];
	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(port, sizeof(port), "%d", px.port);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	snprintf(ssl, sizeof(ssl), "PGSSLMODE=%s", sslmode);
	/* Under valgrind, 64 TLS handshakes alone take several seconds. */
	bool tls = strcmp(sslmode, "disable") != 0;
	const char *duration = h_under_valgrind() ? (tls ? "10" : "6") : "5";
	const char *argv[] = {pgbench, "-n", "-S", "-M", protocol, "-c", "64", "-j", "2", "-T", duration,
			      "-h", "127.0.0.1", "-p", port, "-U", "app", "postgres", NULL};
	const char *env[] = {pw, ssl, "PGCONNECT_TIMEOUT=60", NULL};

	PGconn *super = h_connect_super_direct();
	struct h_cmd c;
	cr_assert(h_cmd_start(&c, argv, env));
	int samples = 0, max_seen = 0;
	long long deadline = h_now_ms() + h_scaled_ms(90000);
	while (!h_cmd_wait(&c, 100)) {
		if (h_now_ms() > deadline) {
			h_cmd_kill(&c);
			h_cmd_dump(&c, "pgbench");
			cr_assert_fail("pgbench -M %s did not finish in time", protocol);
		}
		char *n = h_value_ok(super, H_APP_BACKENDS_SQL);
		samples++;
		if (atoi(n) > max_seen)
			max_seen = atoi(n);
		free(n);
	}
	PQfinish(super);

	char what[64];
	snprintf(what, sizeof(what), "pgbench -M %s", protocol);
	h_expect_pgbench_clean(&c, what);
	const char *p = strstr(c.out, "number of transactions actually processed: ");
	cr_assert_not_null(p, "no transaction count in pgbench's output:\n%s", c.out);
	long processed = strtol(p + strlen("number of transactions actually processed: "), NULL, 10);
	cr_assert_gt(processed, 0, "pgbench -M %s processed no transactions", protocol);
	cr_assert_geq(samples, 3, "pg_stat_activity was sampled only %d times while pgbench ran", samples);
	cr_assert_leq(max_seen, 8, "app had %d backends with max_connections = 8 (pgbench -M %s)", max_seen,
		      protocol);
	cr_assert_gt(max_seen, 0, "no backend of app was ever seen while pgbench ran");
	cr_log_info("pgbench -M %s: %ld transactions, at most %d backends in %d samples", protocol, processed,
		    max_seen, samples);
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

Test(txn_pgbench, simple_protocol_64_clients_8_backends_tls)
{
	pgbench_64_clients_over_8("simple", "require");
}

Test(txn_pgbench, extended_protocol_64_clients_8_backends)
{
	pgbench_64_clients_over_8("extended", "disable");
}

Test(txn_pgbench, prepared_statements_64_clients_8_backends)
{
	pgbench_64_clients_over_8("prepared", "disable");
}

/*
 * Each pgbench client sets its own tenant with set_config(.., false), then
 * checks it in a second statement, which runs in a transaction of its own and
 * so may get another backend: 16 clients over 4 backends, so it often does.
 * A tenant that did not follow its client divides by zero and fails the run.
 * With -M prepared the set_config is one prepared statement run again and
 * again, so every run must be read back.
 */
static void pgbench_tenants(const char *protocol)
{
	start_txn_pgmux(4, NULL, NULL);
	const struct h_env *e = h_env();
	char script[600], pgbench[600], port[16], pw[256];
	snprintf(script, sizeof(script), "%s/tenant.sql", h_test_dir());
	h_write_file(script,
		     "\\set t random(1, 1000000)\n"
		     "SELECT set_config('myapp.tenant', :t::text, false);\n"
		     "SELECT 1 / (current_setting('myapp.tenant') = :t::text)::int;\n",
		     0644);
	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(port, sizeof(port), "%d", px.port);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	const char *duration = h_under_valgrind() ? "5" : "4";
	const char *argv[] = {pgbench, "-n", "-f", script, "-M", protocol, "-c", "16", "-j", "2", "-T", duration,
			      "-h", "127.0.0.1", "-p", port, "-U", "app", "postgres", NULL};
	const char *env[] = {pw, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=60", NULL};
	struct h_cmd c;
	int st = h_cmd_run(&c, argv, env, h_scaled_ms(90000));
	char what[64];
	snprintf(what, sizeof(what), "pgbench tenants -M %s", protocol);
	cr_assert_eq(st, 0, "%s exited with %d:\n%s\n%s", what, st, c.out, c.err);
	h_expect_pgbench_clean(&c, what);
	const char *p = strstr(c.out, "number of transactions actually processed: ");
	cr_assert_not_null(p, "no transaction count in pgbench's output:\n%s", c.out);
	long processed = strtol(p + strlen("number of transactions actually processed: "), NULL, 10);
	cr_assert_gt(processed, 100, "%s processed only %ld transactions", what, processed);
	cr_log_info("%s: %ld transactions, no tenant lost", what, processed);
	h_cmd_free(&c);
	expect_log_lacks("session pinned");
	h_stop_expect_clean_exit(&px);
}

Test(txn_pgbench, tenants_follow_16_clients_over_4_backends_simple)
{
	pgbench_tenants("simple");
}

Test(txn_pgbench, tenants_follow_16_clients_over_4_backends_prepared)
{
	pgbench_tenants("prepared");
}

/* ================================================================ 2: pinning */

TestSuite(txn_pin, .fini = fini_kill_leftovers, .timeout = 120);

/* A client about to pin itself, a pool of two, and a second client busy on the other backend. */
struct pin_test {
	PGconn *conn;
	struct traffic traffic;
	int pid; /* the backend the session is pinned to */
};

static void pin_test_begin(struct pin_test *p)
{
	start_txn_pgmux(2, NULL, NULL);
	p->conn = app(NULL);
	traffic_start(&p->traffic);
}

/* The pinning statement has run: remember the backend, find the log line. */
static void pin_test_pinned(struct pin_test *p, const char *reason)
{
	p->pid = h_backend_pid(p->conn);
	atomic_store(&p->traffic.avoid_pid, p->pid);
	expect_pinned_log(p->pid, reason);
}

static void expect_still_pinned(struct pin_test *p, int statements)
{
	for (int i = 0; i < statements; i++) {
		int pid = h_backend_pid(p->conn);
		cr_assert_eq(pid, p->pid, "pinned session moved from backend %d to %d (statement %d)", p->pid, pid,
			     i + 1);
	}
}

static void pin_test_end(struct pin_test *p)
{
	int before = atomic_load(&p->traffic.transactions);
	expect_still_pinned(p, 2);
	/* The other client really worked beside the pinned session. */
	long long deadline = h_now_ms() + h_scaled_ms(5000);
	while (atomic_load(&p->traffic.transactions) < before + 5 && h_now_ms() < deadline)
		h_sleep_ms(5);
	cr_assert_geq(atomic_load(&p->traffic.transactions), before + 5,
		      "the other client made no progress while the session was pinned");
	traffic_stop_and_check(&p->traffic);
	PQfinish(p->conn);
	h_stop_expect_clean_exit(&px);
}

Test(txn_pin, temp_table)
{
	struct pin_test p;
	pin_test_begin(&p);
	run_ok(p.conn, "create temp table t (x int)");
	pin_test_pinned(&p, "temporary table");
	run_ok(p.conn, "insert into t values (1), (2), (3)");
	char want[64];
	snprintf(want, sizeof(want), "3:%d", p.pid);
	for (int i = 0; i < 20; i++)
		h_expect_value(p.conn, "select count(*) || ':' || pg_backend_pid() from t", want);
	expect_still_pinned(&p, 10);
	pin_test_end(&p);
}

Test(txn_pin, cursor_with_hold)
{
	struct pin_test p;
	pin_test_begin(&p);
	run_ok(p.conn, "declare c cursor with hold for select generate_series(1, 100)");
	pin_test_pinned(&p, "cursor WITH HOLD");
	for (int i = 0; i < 10; i++) {
		PGresult *r = PQexec(p.conn, "fetch 10 from c");
		cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "fetch %d: %s", i + 1, PQerrorMessage(p.conn));
		cr_assert_eq(PQntuples(r), 10, "fetch %d returned %d rows", i + 1, PQntuples(r));
		cr_assert_eq(atoi(PQgetvalue(r, 0, 0)), 10 * i + 1);
		cr_assert_eq(atoi(PQgetvalue(r, 9, 0)), 10 * i + 10);
		PQclear(r);
		cr_assert_eq(h_backend_pid(p.conn), p.pid);
	}
	PGresult *r = PQexec(p.conn, "fetch 10 from c");
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(p.conn));
	cr_assert_eq(PQntuples(r), 0, "the cursor returned rows after its 100th");
	PQclear(r);
	run_ok(p.conn, "close c");
	expect_still_pinned(&p, 10);
	pin_test_end(&p);
}

/* Wait for a notification, at most timeout_ms; NULL if none came or the connection broke. */
static PGnotify *wait_notify(PGconn *conn, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	for (;;) {
		if (!PQconsumeInput(conn))
			return NULL;
		PGnotify *n = PQnotifies(conn);
		if (n)
			return n;
		long long left = deadline - h_now_ms();
		if (left <= 0)
			return NULL;
		struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
		poll(&pfd, 1, (int)left);
	}
}

Test(txn_pin, listen)
{
	struct pin_test p;
	pin_test_begin(&p);
	run_ok(p.conn, "listen ch");
	pin_test_pinned(&p, "LISTEN");

	PGconn *super = h_connect_super_direct();
	int notifier = h_backend_pid(super);
	for (int round = 0; round < 3; round++) {
		char sql[64], payload[16];
		snprintf(payload, sizeof(payload), "x%d", round);
		snprintf(sql, sizeof(sql), "notify ch, '%s'", payload);
		run_ok(super, sql);
		/* The notification arrives while the client sits idle between transactions. */
		PGnotify *n = wait_notify(p.conn, h_scaled_ms(5000));
		cr_assert_not_null(n, "no notification within 5 s of NOTIFY ch, '%s' (%s)", payload,
				   PQerrorMessage(p.conn));
		cr_assert_str_eq(n->relname, "ch");
		cr_assert_str_eq(n->extra, payload);
		cr_assert_eq(n->be_pid, notifier, "notification from pid %d, expected the notifier %d", n->be_pid,
			     notifier);
		PQfreemem(n);
		expect_still_pinned(&p, 3);
	}
	PQfinish(super);
	pin_test_end(&p);
}

Test(txn_pin, session_advisory_lock)
{
	struct pin_test p;
	pin_test_begin(&p);
	h_expect_value(p.conn, "select pg_advisory_lock(42)", "");
	pin_test_pinned(&p, "session-level advisory lock");

	PGconn *super = h_connect_super_direct();
	const char *holder_sql = "select coalesce(string_agg(pid::text, ','), 'none') from pg_locks "
				 "where locktype = 'advisory' and objid = 42 and granted";
	char want[32];
	snprintf(want, sizeof(want), "%d", p.pid);
	for (int i = 0; i < 5; i++) {
		h_expect_value(super, holder_sql, want);
		expect_still_pinned(&p, 2);
	}
	h_expect_value(p.conn, "select pg_advisory_unlock(42)", "t");
	h_expect_value(super, holder_sql, "none");
	PQfinish(super);
	pin_test_end(&p);
}

Test(txn_pin, sql_prepare_execute)
{
	struct pin_test p;
	pin_test_begin(&p);
	run_ok(p.conn, "prepare p as select $1::int");
	pin_test_pinned(&p, "SQL-level PREPARE");
	for (int i = 0; i < 10; i++) {
		h_expect_value(p.conn, "execute p(5)", "5");
		cr_assert_eq(h_backend_pid(p.conn), p.pid);
	}
	run_ok(p.conn, "deallocate p");
	free(expect_error(p.conn, "execute p(5)", "26000"));
	pin_test_end(&p);
}

/*
 * set_config() of a parameter named by a bind parameter: pgmux cannot tell
 * which setting changes (it could be role), so the session is pinned.
 */
Test(txn_pin, set_config_of_a_name_pgmux_cannot_read)
{
	struct pin_test p;
	pin_test_begin(&p);
	const char *values[2] = {"work_mem", "7MB"};
	PGresult *r = PQexecParams(p.conn, "select set_config($1, $2, false)", 2, NULL, values, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(p.conn));
	PQclear(r);
	pin_test_pinned(&p, "SET of a parameter pgmux does not track");
	for (int i = 0; i < 10; i++) {
		int pid;
		char *v = pid_and_value(p.conn, "select pg_backend_pid(), current_setting('work_mem')", &pid);
		cr_assert_str_eq(v, "7MB");
		cr_assert_eq(pid, p.pid);
		free(v);
	}
	pin_test_end(&p);
}

/* ================================================================ 3: state that follows the client */

/* The end of a test with three clients: close them, then pgmux must exit cleanly. */
static void finish_three(PGconn *a, PGconn *b, PGconn *c)
{
	PQfinish(a);
	PQfinish(b);
	PQfinish(c);
	h_stop_expect_clean_exit(&px);
}


TestSuite(txn_state, .fini = fini_kill_leftovers, .timeout = 120);

/* One step of client a: runs its checks and returns the backend pid they ran on. */
typedef int (*step_fn)(PGconn *a, int step, void *arg);
/* Something client b does inside its transaction (while it holds a backend), or NULL. */
typedef void (*held_fn)(PGconn *b, int round, void *arg);

struct rounds {
	int pids[128]; /* a's backend at each step */
	int n;
};

/* BEGIN on conn, which must be served backend want (pool of two, the only idle one) within 5 s. */
static void begin_on_backend(PGconn *conn, int want, const char *why)
{
	cr_assert_eq(PQsendQuery(conn, "begin; select pg_backend_pid()"), 1, "%s", PQerrorMessage(conn));
	bool answered = wait_not_busy(conn, h_scaled_ms(5000));
	if (!answered)
		pgmux_dump_logs(&px);
	cr_assert(answered, "%s: no backend for a BEGIN within 5 s, although backend %d should be idle", why, want);
	PGresult *r;
	int pid = 0;
	while ((r = next_result(conn)) != NULL) {
		cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", why,
			  PQerrorMessage(conn));
		if (PQresultStatus(r) == PGRES_TUPLES_OK)
			pid = atoi(PQgetvalue(r, 0, 0));
		PQclear(r);
	}
	cr_assert_eq(pid, want, "%s: served backend %d, expected the only idle one, %d", why, pid, want);
}

/*
 * Client a is inside a transaction on backend pa. End it and leave c holding
 * pa in a transaction of its own, with b's help: b takes the other backend
 * while a still holds pa, so the only backend c can get is pa. Any pooling
 * policy (LIFO, FIFO, affinity) has to do exactly this with a pool of two.
 * Returns the other backend, which is then idle.
 */
static int take_over_backend(PGconn *a, int pa, PGconn *b, PGconn *c)
{
	run_ok(b, "begin");
	int pb = h_backend_pid(b);
	cr_assert_neq(pb, pa, "client b was served backend %d while client a held it in a transaction", pa);
	run_ok(a, "commit");
	begin_on_backend(c, pa, "client c after a's COMMIT");
	run_ok(b, "commit");
	return pb;
}

/*
 * Move client a between the pool's two backends. In each round a opens a
 * transaction on some backend pa, the helpers b and c take pa over (see
 * take_over_backend()), and a runs a step that must be served by the other
 * backend: whatever a's session carries must follow it there. Then c lets
 * go, and a runs another step with both backends free.
 */
static void switching_rounds(PGconn *a, PGconn *b, PGconn *c, int rounds, step_fn step, held_fn while_held,
			     void *arg, struct rounds *out)
{
	out->n = 0;
	for (int r = 0; r < rounds && out->n + 3 <= 128; r++) {
		run_ok(a, "begin");
		int pa = h_backend_pid(a);
		out->pids[out->n++] = pa;
		if (while_held) {
			run_ok(b, "begin");
			while_held(b, r, arg);
			run_ok(b, "commit");
		}
		int other = take_over_backend(a, pa, b, c);
		int pid = step(a, out->n, arg);
		cr_assert_eq(pid, other, "client a was served backend %d, expected %d (client c holds %d)", pid, other,
			     pa);
		out->pids[out->n++] = pid;
		run_ok(c, "commit");
		pid = step(a, out->n, arg);
		out->pids[out->n++] = pid;
	}
	cr_assert_geq(distinct_count(out->pids, out->n), 2);
}

/*
 * Client b (which never changed sql's setting) sees want, also on backends
 * client a used: a holds a backend at times so that b is moved around too.
 */
static void expect_other_client_sees(PGconn *a, PGconn *b, const struct rounds *a_rounds, const char *sql,
				     const char *want)
{
	int pids[16], n = 0;
	for (int r = 0; r < 4; r++) {
		run_ok(a, "begin");
		(void)h_backend_pid(a);
		char *v = pid_and_value(b, sql, &pids[n]);
		cr_assert_str_eq(v, want, "a client that never changed it got \"%s\" from \"%s\", expected \"%s\"", v,
				 sql, want);
		free(v);
		n++;
		run_ok(a, "commit");
		v = pid_and_value(b, sql, &pids[n]);
		cr_assert_str_eq(v, want, "a client that never changed it got \"%s\" from \"%s\", expected \"%s\"", v,
				 sql, want);
		free(v);
		n++;
	}
	bool shared = false;
	for (int i = 0; i < n; i++)
		shared |= contains_int(a_rounds->pids, a_rounds->n, pids[i]);
	if (!shared) {
		fprintf(stderr, "client a's backends:");
		for (int i = 0; i < a_rounds->n; i++)
			fprintf(stderr, " %d", a_rounds->pids[i]);
		fprintf(stderr, "\nclient b's backends:");
		for (int i = 0; i < n; i++)
			fprintf(stderr, " %d", pids[i]);
		fprintf(stderr, "\n");
		pgmux_dump_logs(&px);
	}
	cr_assert(shared, "client b never used a backend that client a had used");
}

/* (a) SET TimeZone and IntervalStyle follow the client; RESET too. */
struct tz_arg {
	const char *want; /* "TimeZone|IntervalStyle|interval '1 day'" */
	const char *want_tz;
};

static int tz_step(PGconn *a, int step, void *arg)
{
	struct tz_arg *t = arg;
	int pid;
	char *v = pid_and_value(a, "select pg_backend_pid(), current_setting('TimeZone') || '|' || "
				   "current_setting('IntervalStyle') || '|' || interval '1 day'",
				&pid);
	cr_assert_str_eq(v, t->want, "step %d on backend %d: \"%s\", expected \"%s\"", step, pid, v, t->want);
	free(v);
	h_expect_value(a, "show timezone", t->want_tz);
	return pid;
}

Test(txn_state, timezone_and_intervalstyle_follow_the_client)
{
	PGconn *direct = h_connect_app_direct(NULL);
	char *default_tz = h_value_ok(direct, "show timezone");
	PQfinish(direct);

	start_txn_pgmux(2, NULL, NULL);
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	cr_assert_str_eq(PQparameterStatus(a, "TimeZone"), default_tz);
	run_ok(a, "set timezone = 'Asia/Tokyo'");
	cr_assert_str_eq(PQparameterStatus(a, "TimeZone"), "Asia/Tokyo",
			 "the client was not told of its new TimeZone (ParameterStatus)");
	run_ok(a, "set intervalstyle = 'iso_8601'");
	cr_assert_str_eq(PQparameterStatus(a, "IntervalStyle"), "iso_8601");

	struct tz_arg t = {.want = "Asia/Tokyo|iso_8601|P1D", .want_tz = "Asia/Tokyo"};
	struct rounds ra;
	switching_rounds(a, b, c, 8, tz_step, NULL, &t, &ra);

	char want_b[256];
	snprintf(want_b, sizeof(want_b), "%s|postgres|1 day", default_tz);
	expect_other_client_sees(a, b, &ra,
				 "select pg_backend_pid(), current_setting('TimeZone') || '|' || "
				 "current_setting('IntervalStyle') || '|' || interval '1 day'",
				 want_b);
	cr_assert_str_eq(PQparameterStatus(b, "TimeZone"), default_tz);

	/* RESET is followed as well: back to the default, on every backend. */
	run_ok(a, "reset timezone");
	cr_assert_str_eq(PQparameterStatus(a, "TimeZone"), default_tz);
	char want_a[256];
	snprintf(want_a, sizeof(want_a), "%s|iso_8601|P1D", default_tz);
	t.want = want_a;
	t.want_tz = default_tz;
	switching_rounds(a, b, c, 4, tz_step, NULL, &t, &ra);

	free(default_tz);
	finish_three(a, b, c);
}

/* (b) startup options: -c and --name=value, on every backend. */
static int timeout_step(PGconn *a, int step, void *arg)
{
	int pid;
	char *v = pid_and_value(a, "select pg_backend_pid(), current_setting('statement_timeout') || '|' || "
				   "current_setting('lock_timeout')",
				&pid);
	cr_assert_str_eq(v, "1234ms|4321ms", "step %d on backend %d: \"%s\"", step, pid, v);
	free(v);
	h_expect_value(a, "show statement_timeout", "1234ms");
	return pid;
}

/* A step that checks one value: sql returns (pid, value), which must be want. */
struct value_check {
	const char *sql;
	const char *want;
};

static int value_step(PGconn *a, int step, void *arg)
{
	const struct value_check *v = arg;
	int pid;
	char *got = pid_and_value(a, v->sql, &pid);
	cr_assert_str_eq(got, v->want, "step %d on backend %d: \"%s\" gave \"%s\", expected \"%s\"", step, pid, v->sql,
			 got, v->want);
	free(got);
	return pid;
}

/* Client a's rounds must all see want from sql. */
static void rounds_expect(PGconn *a, PGconn *b, PGconn *c, int rounds, const char *sql, const char *want,
			  struct rounds *out)
{
	struct value_check v = {sql, want};
	switching_rounds(a, b, c, rounds, value_step, NULL, &v, out);
}

#define TIMEOUT_SQL "select pg_backend_pid(), current_setting('statement_timeout')"

/* Client a runs each run, then every backend it is moved to must give want from check_sql. */
struct set_step {
	const char *run;
	const char *want;
};

static void set_steps(PGconn *a, PGconn *b, PGconn *c, const char *check_sql, const struct set_step *steps, size_t n,
		      struct rounds *out)
{
	for (size_t i = 0; i < n; i++) {
		run_ok(a, steps[i].run);
		rounds_expect(a, b, c, 2, check_sql, steps[i].want, out);
	}
}

Test(txn_state, startup_options_follow_the_client)
{
	start_txn_pgmux(2, NULL, NULL);
	PGconn *a = app("options='-c statement_timeout=1234 --lock_timeout=4321'");
	PGconn *b = app(NULL), *c = app(NULL);
	struct rounds ra;
	switching_rounds(a, b, c, 6, timeout_step, NULL, NULL, &ra);

	long long t0 = h_now_ms();
	char *msg = expect_error(a, "select pg_sleep(2)", "57014");
	long long took = h_now_ms() - t0;
	cr_assert(strstr(msg, "statement timeout") != NULL, "pg_sleep(2) failed with \"%s\"", msg);
	cr_assert_lt(took, 1990, "the statement timeout of 1234 ms ended pg_sleep(2) only after %lld ms", took);
	free(msg);
	cr_assert_eq(PQtransactionStatus(a), PQTRANS_IDLE);
	(void)timeout_step(a, 0, NULL);

	expect_other_client_sees(a, b, &ra,
				 "select pg_backend_pid(), current_setting('statement_timeout') || '|' || "
				 "current_setting('lock_timeout')",
				 "0|0");
	finish_three(a, b, c);
}

/* (c) application_name from the conninfo, then changed with SET. */
struct appname_arg {
	const char *want;
	PGconn *super;
};

static int appname_step(PGconn *a, int step, void *arg)
{
	struct appname_arg *t = arg;
	int pid;
	char *v = pid_and_value(a, "select pg_backend_pid(), current_setting('application_name')", &pid);
	cr_assert_str_eq(v, t->want, "step %d on backend %d: application_name \"%s\", expected \"%s\"", step, pid,
			 v, t->want);
	free(v);
	h_expect_value(a, "show application_name", t->want);
	/* PostgreSQL shows it too, for the backend while it serves the client. */
	run_ok(a, "begin");
	pid = h_backend_pid(a);
	char sql[128];
	snprintf(sql, sizeof(sql), "select application_name from pg_stat_activity where pid = %d", pid);
	h_expect_value(t->super, sql, t->want);
	run_ok(a, "commit");
	return pid;
}

Test(txn_state, application_name_follows_the_client)
{
	start_txn_pgmux(2, NULL, NULL);
	PGconn *a = app("application_name=foo");
	PGconn *b = app(NULL), *c = app(NULL);
	cr_assert_str_eq(PQparameterStatus(a, "application_name"), "foo");
	struct appname_arg t = {.want = "foo", .super = h_connect_super_direct()};
	struct rounds ra;
	switching_rounds(a, b, c, 5, appname_step, NULL, &t, &ra);
	/*
	 * b sent no application_name: it must keep the value its own login
	 * reported (pgmux may name itself there), never a's "foo".
	 */
	const char *b_name = PQparameterStatus(b, "application_name");
	cr_assert_not_null(b_name);
	char *b_default = strdup(b_name);
	expect_other_client_sees(a, b, &ra, "select pg_backend_pid(), current_setting('application_name')", b_default);
	free(b_default);

	run_ok(a, "set application_name = 'bar'");
	cr_assert_str_eq(PQparameterStatus(a, "application_name"), "bar");
	t.want = "bar";
	switching_rounds(a, b, c, 4, appname_step, NULL, &t, &ra);
	PQfinish(t.super);
	finish_three(a, b, c);
}

/*
 * (e) SET of parameters PostgreSQL does not report (search_path is not
 * reported before PostgreSQL 18, work_mem and custom ones never are) follows
 * the client without pinning it: pgmux reads the session's settings back
 * after the transaction. RESET, SET ... TO DEFAULT and a rolled-back SET are
 * followed as well, and other clients never see any of it.
 */
#define SETTINGS_SQL                                                                                            \
	"select pg_backend_pid(), current_setting('work_mem') || '|' || current_setting('search_path') || '|' || " \
	"coalesce(current_setting('myapp.tenant', true), '')"

Test(txn_state, set_of_unreported_parameters_follows_the_client)
{
	start_txn_pgmux(2, NULL, NULL);
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	char *defaults;
	int pid;
	defaults = pid_and_value(b, SETTINGS_SQL, &pid);
	cr_assert_str_eq(defaults, "4MB|\"$user\", public|");

	run_ok(a, "set work_mem = '7MB'; set search_path = pg_catalog, public");
	run_ok(a, "select set_config('myapp.tenant', '42', false)");
	struct rounds ra;
	rounds_expect(a, b, c, 4, SETTINGS_SQL, "7MB|pg_catalog, public|42", &ra);
	expect_other_client_sees(a, b, &ra, SETTINGS_SQL, defaults);

	const struct set_step steps[] = {
		/* A SET in a transaction that rolls back leaves nothing behind; one that commits does. */
		{"begin; set work_mem = '99MB'; set myapp.tenant = 'x'; rollback", "7MB|pg_catalog, public|42"},
		{"begin; set myapp.tenant = '43'; commit", "7MB|pg_catalog, public|43"},
		/* RESET and TO DEFAULT go back to the server's default everywhere. */
		{"reset work_mem; set search_path to default", "4MB|\"$user\", public|43"},
		{"reset all", defaults},
	};
	set_steps(a, b, c, SETTINGS_SQL, steps, sizeof(steps) / sizeof(steps[0]), &ra);
	expect_other_client_sees(a, b, &ra, SETTINGS_SQL, defaults);
	expect_log_lacks("session pinned");
	free(defaults);
	finish_three(a, b, c);
}

/*
 * A client that SETs something and leaves at once (psql -c "SET ...") leaves
 * while pgmux reads its settings back. That read is pgmux's own: the backend
 * goes back to the pool once it is answered, rather than being closed as
 * if the client had left mid-query. One backend, twenty such clients.
 */
Test(txn_state, client_leaving_during_the_read_back_keeps_the_backend)
{
	start_txn_pgmux(1, NULL, NULL);
	PGconn *first = app(NULL);
	int pid = h_backend_pid(first);
	/* Gone without a Terminate message, as a killed client goes. */
	shutdown(PQsocket(first), SHUT_RDWR);
	PQfinish(first);
	for (int i = 0; i < 20; i++) {
		PGconn *a = app(NULL);
		run_ok(a, "set work_mem = '5MB'");
		PQfinish(a);
	}
	PGconn *b = app(NULL);
	int after = h_backend_pid(b);
	cr_assert_eq(after, pid, "the backend changed from %d to %d: pgmux closed it under a leaving client", pid, after);
	h_expect_value(b, "show work_mem", "4MB");
	expect_log_lacks("client left in the middle");
	/* The first client left between transactions, long after its login: the log must not say otherwise. */
	expect_log_contains("closing during idle: client disconnected");
	expect_log_lacks("closing during idle: client disconnected during login");
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/* A startup option is what RESET goes back to, on every backend, as it would be directly. */
Test(txn_state, reset_goes_back_to_the_startup_option)
{
	start_txn_pgmux(2, NULL, NULL);
	PGconn *a = app("options='-c statement_timeout=1234'");
	PGconn *b = app(NULL), *c = app(NULL);
	static const struct set_step steps[] = {
		{"set statement_timeout = 5000", "5s"},
		{"reset statement_timeout", "1234ms"},
		{"set statement_timeout = 0", "0"},
		{"reset all", "1234ms"},
	};
	struct rounds ra;
	set_steps(a, b, c, TIMEOUT_SQL, steps, sizeof(steps) / sizeof(steps[0]), &ra);
	expect_other_client_sees(a, b, &ra, TIMEOUT_SQL, "0");
	expect_log_lacks("session pinned");
	finish_three(a, b, c);
}

/*
 * The pattern of row-level security by tenant: one prepared statement,
 * set_config('myapp.tenant', $1, false), run again with each new tenant.
 * Every run is read back, not only the first (which is when pgmux sees the
 * statement's text), so the tenant follows the client to every backend.
 */
Test(txn_state, prepared_set_config_follows_the_client_at_every_run)
{
	start_txn_pgmux(2, NULL, NULL);
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	PGresult *r = PQprepare(a, "tenant", "select set_config('myapp.tenant', $1, false)", 1, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(a));
	PQclear(r);
	static const char *const tenants[] = {"1", "2", "3"};
	struct rounds ra;
	for (size_t i = 0; i < sizeof(tenants) / sizeof(tenants[0]); i++) {
		char *v = exec_prepared_1(a, "tenant", tenants[i]);
		cr_assert_str_eq(v, tenants[i]);
		free(v);
		rounds_expect(a, b, c, 2, "select pg_backend_pid(), current_setting('myapp.tenant')", tenants[i], &ra);
	}
	expect_other_client_sees(a, b, &ra,
				 "select pg_backend_pid(), coalesce(current_setting('myapp.tenant', true), '')", "");
	expect_log_lacks("session pinned");
	finish_three(a, b, c);
}

/* SET LOCAL ends with its transaction: no pin, the client still moves between backends. */
static int work_mem_step(PGconn *a, int step, void *arg)
{
	int pid;
	char *v = pid_and_value(a, "select pg_backend_pid(), current_setting('work_mem')", &pid);
	cr_assert_str_eq(v, "4MB", "step %d on backend %d: work_mem \"%s\" after SET LOCAL's transaction", step,
			 pid, v);
	free(v);
	return pid;
}

Test(txn_state, set_local_does_not_pin)
{
	start_txn_pgmux(2, NULL, NULL);
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	run_ok(a, "begin");
	run_ok(a, "set local work_mem = '9MB'");
	h_expect_value(a, "show work_mem", "9MB");
	run_ok(a, "commit");
	struct rounds ra;
	switching_rounds(a, b, c, 5, work_mem_step, NULL, NULL, &ra);
	expect_log_lacks("session pinned");
	finish_three(a, b, c);
}

/* (d) protocol-level prepared statements across backends; b has its own "s1". */
static int prepared_step(PGconn *a, int step, void *arg)
{
	char param[16], want[16];
	snprintf(param, sizeof(param), "%d", step * 7);
	snprintf(want, sizeof(want), "%d", step * 7 + 1);
	char *v = exec_prepared_1(a, "s1", param);
	cr_assert_str_eq(v, want, "s1(%s) returned %s", param, v);
	free(v);
	v = exec_prepared_1(a, "pid", NULL);
	int pid = atoi(v);
	free(v);
	return pid;
}

static void prepared_while_held(PGconn *b, int round, void *arg)
{
	char param[16], want[16];
	snprintf(param, sizeof(param), "%d", round);
	snprintf(want, sizeof(want), "%d", round * 100);
	char *v = exec_prepared_1(b, "s1", param);
	cr_assert_str_eq(v, want, "the other client's own s1(%s) returned %s", param, v);
	free(v);
}

Test(txn_state, prepared_statements_follow_the_client)
{
	start_txn_pgmux(2, NULL, NULL);
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	prepare_ok(a, "s1", "select $1::int + 1");
	prepare_ok(a, "pid", "select pg_backend_pid()");
	prepare_ok(b, "s1", "select $1::int * 100");
	struct rounds ra;
	switching_rounds(a, b, c, 10, prepared_step, prepared_while_held, NULL, &ra);
	/* The same again inside transactions, and through PQexecParams in between. */
	for (int i = 0; i < 5; i++) {
		run_ok(a, "begin");
		(void)prepared_step(a, 100 + i, NULL);
		const char *v[1] = {"40"};
		PGresult *r = PQexecParams(a, "select $1::int + 2", 1, NULL, v, NULL, NULL, 0);
		cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(a));
		cr_assert_str_eq(PQgetvalue(r, 0, 0), "42");
		PQclear(r);
		run_ok(a, "commit");
	}
	/* The client's names never reach the server, and so cannot clash with other clients'. */
	h_expect_value(a, "select count(*) from pg_prepared_statements where name in ('s1', 'pid')", "0");
	expect_log_lacks("session pinned");
	finish_three(a, b, c);
}

/* (e) max_prepared_statements = 2 with five statements in use: evicted ones come back unseen. */
static int evict_step(PGconn *a, int step, void *arg)
{
	bool in_transaction = step % 3 == 2;
	if (in_transaction)
		run_ok(a, "begin");
	for (int k = 1; k <= 5; k++) {
		char name[8], param[16], want[16];
		snprintf(name, sizeof(name), "s%d", k);
		snprintf(param, sizeof(param), "%d", step);
		snprintf(want, sizeof(want), "%d", step + k);
		char *v = exec_prepared_1(a, name, param);
		cr_assert_str_eq(v, want, "%s(%s) returned %s at step %d", name, param, v, step);
		free(v);
	}
	PGresult *r = PQexecParams(a,
				   "select pg_backend_pid(), count(*), count(*) filter (where name not like 'pgmux\\_%') "
				   "from pg_prepared_statements",
				   0, NULL, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(a));
	int pid = atoi(PQgetvalue(r, 0, 0));
	cr_assert_leq(atoi(PQgetvalue(r, 0, 1)), 2, "backend %d holds %s prepared statements, max_prepared_statements = 2",
		      pid, PQgetvalue(r, 0, 1));
	cr_assert_str_eq(PQgetvalue(r, 0, 2), "0", "a prepared statement on the server has a client's name");
	PQclear(r);
	if (in_transaction)
		run_ok(a, "commit");
	return pid;
}

Test(txn_state, max_prepared_statements_evicts_and_prepares_again)
{
	start_txn_pgmux(2, NULL, "max_prepared_statements = 2");
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	for (int k = 1; k <= 5; k++) {
		char name[8], sql[64];
		snprintf(name, sizeof(name), "s%d", k);
		snprintf(sql, sizeof(sql), "select $1::int + %d", k);
		prepare_ok(a, name, sql);
	}
	struct rounds ra;
	switching_rounds(a, b, c, 8, evict_step, NULL, NULL, &ra);
	finish_three(a, b, c);
}

/* (f) PQdescribePrepared on another backend; (g) two names for the same SQL. */
Test(txn_state, describe_after_switch_and_shared_statement)
{
	start_txn_pgmux(2, NULL, NULL);
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	run_ok(a, "begin");
	int prepared_on = h_backend_pid(a);
	prepare_ok(a, "d1", "select $1::int as a, $2::text as b, $1::int8 * 2 as c");
	int other = take_over_backend(a, prepared_on, b, c);
	/* c holds the backend d1 was prepared on: a is served the other one */
	run_ok(a, "begin");
	cr_assert_eq(h_backend_pid(a), other);
	PGresult *r = PQdescribePrepared(a, "d1");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "PQdescribePrepared after a backend switch: %s",
		     PQerrorMessage(a));
	cr_assert_eq(PQnparams(r), 2);
	cr_assert_eq(PQparamtype(r, 0), 23u);
	cr_assert_eq(PQparamtype(r, 1), 25u);
	cr_assert_eq(PQnfields(r), 3);
	cr_assert_str_eq(PQfname(r, 0), "a");
	cr_assert_str_eq(PQfname(r, 1), "b");
	cr_assert_str_eq(PQfname(r, 2), "c");
	cr_assert_eq(PQftype(r, 0), 23u);
	cr_assert_eq(PQftype(r, 1), 25u);
	cr_assert_eq(PQftype(r, 2), 20u);
	PQclear(r);
	const char *v[2] = {"21", "x"};
	r = PQexecPrepared(a, "d1", 2, v, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(a));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "21");
	cr_assert_str_eq(PQgetvalue(r, 0, 1), "x");
	cr_assert_str_eq(PQgetvalue(r, 0, 2), "42");
	PQclear(r);
	run_ok(a, "commit");
	run_ok(c, "commit");

	/* Two client names, one SQL text: both work, and the server holds the statement once. */
	prepare_ok(a, "g1", "select $1::int * 3");
	prepare_ok(a, "g2", "select $1::int * 3");
	for (int i = 0; i < 3; i++) {
		char *x = exec_prepared_1(a, "g1", "5");
		cr_assert_str_eq(x, "15");
		free(x);
		x = exec_prepared_1(a, "g2", "6");
		cr_assert_str_eq(x, "18");
		free(x);
	}
	run_ok(a, "begin");
	char *x = exec_prepared_1(a, "g1", "7");
	cr_assert_str_eq(x, "21");
	free(x);
	x = exec_prepared_1(a, "g2", "8");
	cr_assert_str_eq(x, "24");
	free(x);
	h_expect_value(a, "select count(*) from pg_prepared_statements where statement = 'select $1::int * 3'", "1");
	run_ok(a, "commit");
	finish_three(a, b, c);
}

/* ================================================================ 4: borrow timeout */

TestSuite(txn_borrow, .fini = fini_kill_leftovers, .timeout = 120);

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
	start_txn_pgmux(1, NULL, "connection_borrow_timeout = 1s");
	PGconn *a = app(NULL), *b = app(NULL);
	prepare_ok(b, "bs", "select $1::int * 10");

	/* simple protocol */
	run_ok(a, "begin");
	int held = h_backend_pid(a);
	long long t0 = h_now_ms();
	PGresult *r = PQexec(b, "select 1");
	expect_borrow_timeout(b, r, h_now_ms() - t0, "a simple query");
	PQclear(r);
	h_expect_value(a, "select 'a still in its transaction'", "a still in its transaction");
	cr_assert_eq(h_backend_pid(a), held);
	run_ok(a, "commit");
	h_expect_value(b, "select 2", "2");

	/* extended protocol, unnamed statement */
	run_ok(a, "begin");
	const char *v[1] = {"7"};
	t0 = h_now_ms();
	r = PQexecParams(b, "select $1::int", 1, NULL, v, NULL, NULL, 0);
	expect_borrow_timeout(b, r, h_now_ms() - t0, "PQexecParams");
	PQclear(r);
	run_ok(a, "commit");
	r = PQexecParams(b, "select $1::int", 1, NULL, v, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "PQexecParams after the timeout: %s", PQerrorMessage(b));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "7");
	PQclear(r);

	/* extended protocol, a named statement prepared before */
	run_ok(a, "begin");
	const char *three[1] = {"3"};
	t0 = h_now_ms();
	r = PQexecPrepared(b, "bs", 1, three, NULL, NULL, 0);
	expect_borrow_timeout(b, r, h_now_ms() - t0, "PQexecPrepared");
	PQclear(r);
	run_ok(a, "commit");
	char *x = exec_prepared_1(b, "bs", "3");
	cr_assert_str_eq(x, "30");
	free(x);

	PQfinish(a);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/* The clock_timestamp() (microseconds since 1970) of a query that waited for the only backend. */
static long long queued_clock_ok(PGconn *conn, const char *who)
{
	bool answered = wait_not_busy(conn, h_scaled_ms(5000));
	if (!answered)
		pgmux_dump_logs(&px);
	cr_assert(answered, "%s got no backend within 5 s of the only backend's release", who);
	PGresult *r = next_result(conn);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", who, PQerrorMessage(conn));
	long long t = atoll(PQgetvalue(r, 0, 0));
	PQclear(r);
	cr_assert_null(next_result(conn));
	return t;
}

/*
 * A backend given back goes to a waiter on its own worker thread when the
 * oldest waiter is on the other one and has waited under a millisecond, which
 * saves moving the backend between threads. A waiter that has waited longer
 * comes first, wherever it is. The harness starts two workers and pgmux deals
 * connections to them in turn, so x and z share one and y has the other.
 */
Test(txn_borrow, oldest_waiter_comes_first_across_workers)
{
	static const char clock_sql[] = "select (extract(epoch from clock_timestamp()) * 1000000)::bigint";

	start_txn_pgmux(1, NULL, NULL);
	PGconn *admin = h_connect_super_port(px.port, "pgmux");
	PGconn *x = app(NULL), *y = app(NULL), *z = app(NULL);
	long long handoffs = h_admin_stat(admin, "database_connection_handoffs");

	run_ok(x, "begin");
	cr_assert_eq(PQsendQuery(y, clock_sql), 1, "%s", PQerrorMessage(y));
	h_sleep_ms(h_scaled_ms(50));
	cr_assert_eq(PQsendQuery(z, clock_sql), 1, "%s", PQerrorMessage(z));
	h_sleep_ms(h_scaled_ms(50));
	run_ok(x, "commit");
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

/* ================================================================ 5: conformance */

TestSuite(txn_conform, .fini = fini_kill_leftovers, .timeout = 300);

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

static uint64_t fnv1a(uint64_t h, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static void tr_value(struct transcript *t, const char *v, int len, int format)
{
	if (len > 256) {
		tr_add(t, "<%d bytes, hash %016llx>", len,
		       (unsigned long long)fnv1a(14695981039346656037ULL, v, (size_t)len));
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
	while ((r = next_result(conn)) != NULL) {
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
		PGresult *r = next_result(c);
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
	char chunk[8192];
	size_t used = 0;
	for (int i = 1; i <= COPY_ROWS; i++) {
		char line[128];
		int n = snprintf(line, sizeof(line), "%d\trow %d: \\\\ tab\\there %08x\n", i, i,
				 (unsigned)(i * 2654435761u));
		if (used + (size_t)n > sizeof(chunk)) {
			cr_assert_eq(PQputCopyData(c, chunk, (int)used), 1, "%s", PQerrorMessage(c));
			used = 0;
		}
		memcpy(chunk + used, line, (size_t)n);
		used += (size_t)n;
	}
	cr_assert_eq(PQputCopyData(c, chunk, (int)used), 1);
	cr_assert_eq(PQputCopyEnd(c, NULL), 1);
	tr_drain(t, "copy in end", c);
	tr_take(t, "count", c, PQexec(c, "select count(*), sum(id), md5(string_agg(v, ',' order by id)) from txn_copy_t"));

	r = PQexec(c, "copy (select * from txn_copy_t order by id) to stdout");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_OUT, "%s", PQerrorMessage(c));
	tr_take(t, "copy out", c, r);
	uint64_t h = 14695981039346656037ULL;
	int rows = 0, n;
	char *buf;
	while ((n = PQgetCopyData(c, &buf, 0)) > 0) {
		h = fnv1a(h, buf, (size_t)n);
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
	start_txn_pgmux(2, NULL, NULL);
	PGconn *via = app_session_ssl("require", NULL);
	struct traffic traffic;
	traffic_start(&traffic);
	compare_scenario(via, scenario_extended, "extended protocol");
	compare_scenario(via, scenario_cursors, "cursors with row limits");
	compare_scenario(via, scenario_pipeline, "pipeline mode");
	compare_scenario(via, scenario_large, "large values");
	compare_scenario(via, scenario_copy, "COPY");
	compare_scenario(via, scenario_notices_and_errors, "notices and errors");
	traffic_stop_and_check(&traffic);
	PQfinish(via);
	cr_assert_eq(conformance_failures, 0, "%d scenario(s) gave different results through pgmux",
		     conformance_failures);
	expect_log_lacks("session pinned");
	h_stop_expect_clean_exit(&px);
}

/* 100 clients over 4 backends, each with its own connection on a thread. */
#define MANY_CLIENTS 100

struct many {
	int port;
	int transactions;
	atomic_int done;
	atomic_int failures;
	atomic_int committed;
	char error[512];
};

static void many_fail(struct many *m, const char *what, PGconn *conn)
{
	if (atomic_fetch_add(&m->failures, 1) == 0)
		snprintf(m->error, sizeof(m->error), "%s: %s", what, conn ? PQerrorMessage(conn) : "");
}

static void *many_client(void *arg)
{
	struct many *m = arg;
	PGconn *conn = h_connect_app(m->port, "disable", NULL);
	if (PQstatus(conn) != CONNECTION_OK) {
		many_fail(m, "connect", conn);
		goto out;
	}
	for (int i = 0; i < m->transactions; i++) {
		char param[16];
		snprintf(param, sizeof(param), "%d", i);
		const char *v[1] = {param};
		PGresult *r = PQexec(conn, "begin");
		bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
		PQclear(r);
		if (!ok) {
			many_fail(m, "begin", conn);
			break;
		}
		r = PQexecParams(conn, "select pg_backend_pid(), $1::int", 1, NULL, v, NULL, NULL, 0);
		ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 1), param) == 0;
		int pid1 = ok ? atoi(PQgetvalue(r, 0, 0)) : 0;
		PQclear(r);
		if (!ok) {
			many_fail(m, "select in the transaction", conn);
			break;
		}
		r = PQexec(conn, "select pg_backend_pid()");
		ok = PQresultStatus(r) == PGRES_TUPLES_OK;
		int pid2 = ok ? atoi(PQgetvalue(r, 0, 0)) : 0;
		PQclear(r);
		if (!ok || pid1 != pid2) {
			many_fail(m, ok ? "the backend changed inside a transaction" : "second select", conn);
			break;
		}
		r = PQexec(conn, "commit");
		ok = PQresultStatus(r) == PGRES_COMMAND_OK;
		PQclear(r);
		if (!ok) {
			many_fail(m, "commit", conn);
			break;
		}
		atomic_fetch_add(&m->committed, 1);
	}
out:
	PQfinish(conn);
	atomic_fetch_add(&m->done, 1);
	return NULL;
}

Test(txn_conform, hundred_clients_over_4_backends)
{
	start_txn_pgmux(4, NULL, NULL);
	struct many m = {.port = px.port, .transactions = h_under_valgrind() ? 20 : 50};
	(void)h_env();
	pthread_t threads[MANY_CLIENTS];
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 1024 * 1024);
	for (int i = 0; i < MANY_CLIENTS; i++)
		cr_assert_eq(pthread_create(&threads[i], &attr, many_client, &m), 0);
	pthread_attr_destroy(&attr);

	PGconn *super = h_connect_super_direct();
	int samples = 0, max_seen = 0;
	long long deadline = h_now_ms() + h_scaled_ms(60000);
	while (atomic_load(&m.done) < MANY_CLIENTS && h_now_ms() < deadline) {
		char *n = h_value_ok(super, H_APP_BACKENDS_SQL);
		samples++;
		if (atoi(n) > max_seen)
			max_seen = atoi(n);
		free(n);
		h_sleep_ms(20);
	}
	PQfinish(super);
	bool finished = atomic_load(&m.done) == MANY_CLIENTS;
	if (!finished)
		pgmux_dump_logs(&px);
	cr_assert(finished, "only %d of %d clients finished in time", atomic_load(&m.done), MANY_CLIENTS);
	for (int i = 0; i < MANY_CLIENTS; i++)
		pthread_join(threads[i], NULL);
	cr_assert_eq(atomic_load(&m.failures), 0, "%d clients failed; first: %s", atomic_load(&m.failures), m.error);
	cr_assert_eq(atomic_load(&m.committed), MANY_CLIENTS * m.transactions);
	cr_assert_geq(samples, 2);
	cr_assert_leq(max_seen, 4, "app had %d backends with max_connections = 4", max_seen);
	cr_assert_gt(max_seen, 0);
	cr_log_info("100 clients: %d transactions, at most %d backends in %d samples", atomic_load(&m.committed),
		    max_seen, samples);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 6-7: client limits */

TestSuite(txn_limits, .fini = fini_kill_leftovers, .timeout = 120);

/* A client that must get in; retried while pgmux still counts a client that just left. */
static PGconn *app_eventually(void)
{
	long long deadline = h_now_ms() + h_scaled_ms(5000);
	for (;;) {
		PGconn *conn = h_connect_app(px.port, "disable", NULL);
		if (PQstatus(conn) == CONNECTION_OK)
			return conn;
		if (h_now_ms() >= deadline) {
			pgmux_dump_logs(&px);
			cr_assert_fail("no connection within 5 s: %s", PQerrorMessage(conn));
		}
		PQfinish(conn);
		h_sleep_ms(20);
	}
}

Test(txn_limits, max_client_connections)
{
	start_txn_pgmux(2, "max_client_connections = 5", NULL);
	PGconn *c[5];
	for (int i = 0; i < 5; i++)
		c[i] = app_eventually();
	for (int i = 0; i < 5; i++)
		h_expect_value(c[i], "select 1", "1");

	PGconn *sixth = h_connect_app(px.port, "disable", NULL);
	cr_assert_neq(PQstatus(sixth), CONNECTION_OK, "a 6th client got in with max_client_connections = 5");
	const char *err = PQerrorMessage(sixth);
	cr_assert(strstr(err, "FATAL") != NULL && strstr(err, "max_client_connections") != NULL,
		  "the 6th client's error does not name max_client_connections: %s", err);
	PQfinish(sixth);

	/* the SQLSTATE, read from the raw ErrorResponse */
	int fd = h_raw_connect(px.port, 2000);
	cr_assert(fd >= 0);
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len));
	char type;
	char *body;
	size_t blen;
	enum h_msg_result res = h_raw_read_message(fd, &type, &body, &blen, h_scaled_ms(3000));
	cr_assert_eq(res, H_MSG_OK, "no answer to a 6th client (%d)", res);
	cr_assert_eq(type, 'E', "a 6th client got message '%c', expected an ErrorResponse", type);
	const char *code = h_error_field(body, blen, 'C');
	const char *sev = h_error_field(body, blen, 'V');
	cr_assert(code && strcmp(code, "53300") == 0, "SQLSTATE %s, expected 53300", code ? code : "(none)");
	cr_assert(sev && strcmp(sev, "FATAL") == 0, "severity %s, expected FATAL", sev ? sev : "(none)");
	free(body);
	cr_assert(h_raw_wait_closed(fd, h_scaled_ms(2000)), "the refused connection was not closed");
	close(fd);

	for (int i = 0; i < 5; i++)
		h_expect_value(c[i], "select 2", "2");
	PQfinish(c[0]);
	PGconn *again = app_eventually();
	h_expect_value(again, "select 'in again'", "in again");
	PQfinish(again);
	for (int i = 1; i < 5; i++)
		PQfinish(c[i]);
	h_stop_expect_clean_exit(&px);
}

struct fatal_notice {
	char sqlstate[8];
	char severity[16];
};

static void on_fatal_notice(void *arg, const PGresult *r)
{
	struct fatal_notice *n = arg;
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	snprintf(n->sqlstate, sizeof(n->sqlstate), "%s", state ? state : "");
	snprintf(n->severity, sizeof(n->severity), "%s", sev ? sev : "");
}

Test(txn_limits, idle_client_timeout)
{
	start_txn_pgmux(2, "idle_client_timeout = 1s", NULL);
	PGconn *idle = app(NULL), *busy = app(NULL);
	struct fatal_notice n;
	memset(&n, 0, sizeof(n));
	PQsetNoticeReceiver(idle, on_fatal_notice, &n);
	h_expect_value(idle, "select 1", "1");
	long long t0 = h_now_ms();
	cr_assert_eq(PQsendQuery(busy, "select pg_sleep(2)"), 1);

	/* The idle one is closed: an ErrorResponse 57P05 (a notice to libpq while idle), then EOF. */
	bool closed = false;
	long long deadline = t0 + h_scaled_ms(5000);
	while (!closed && h_now_ms() < deadline) {
		struct pollfd pfd = {.fd = PQsocket(idle), .events = POLLIN};
		poll(&pfd, 1, (int)(deadline - h_now_ms()));
		closed = !PQconsumeInput(idle) || PQstatus(idle) == CONNECTION_BAD;
		(void)PQisBusy(idle); /* parses what came: the ErrorResponse goes to the notice receiver */
	}
	long long took = h_now_ms() - t0;
	if (!closed)
		pgmux_dump_logs(&px);
	cr_assert(closed, "an idle client was still connected %lld ms after its last query (idle_client_timeout = 1s)",
		  took);
	cr_assert_geq(took, 900, "the idle client was closed after %lld ms, before idle_client_timeout = 1s", took);
	cr_assert_str_eq(n.sqlstate, "57P05", "the idle client was closed with SQLSTATE \"%s\", expected 57P05",
			 n.sqlstate);
	cr_assert_str_eq(n.severity, "FATAL");

	/* The one whose query ran longer than the timeout was not idle. */
	PGresult *r = h_get_result(busy, h_scaled_ms(10000));
	cr_assert_not_null(r, "pg_sleep(2) gave no result");
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "a client busy in pg_sleep(2) was cut off: %s",
		     PQerrorMessage(busy));
	PQclear(r);
	while ((r = h_get_result(busy, 2000)) != NULL)
		PQclear(r);
	PQfinish(idle);
	PQfinish(busy);

	PGconn *fresh = app(NULL);
	h_expect_value(fresh, "select 'fresh'", "fresh");
	PQfinish(fresh);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 8: session mode */

TestSuite(txn_session, .fini = fini_kill_leftovers, .timeout = 120);

Test(txn_session, session_mode_keeps_state_without_pinning)
{
	PGconn *super = h_connect_super_direct();
	cr_assert(h_poll_value(super, H_APP_BACKENDS_SQL, "0", h_scaled_ms(10000)));
	PQfinish(super);
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.pool_mode = "session";
	o.max_connections = 2;
	cr_assert(pgmux_start(&px, &o));

	PGconn *a = app(NULL), *b = app(NULL);
	int pid = h_backend_pid(a);
	run_ok(a, "set search_path = pg_catalog, public");
	run_ok(a, "set work_mem = '7MB'");
	run_ok(a, "create temp table st (x int)");
	for (int i = 0; i < 10; i++) {
		h_expect_value(b, "select 1", "1");
		h_expect_value(a, "show search_path", "pg_catalog, public");
		h_expect_value(a, "show work_mem", "7MB");
		h_expect_value(a, "select count(*) from st", "0");
		cr_assert_eq(h_backend_pid(a), pid);
	}
	h_expect_value(b, "show search_path", "\"$user\", public");
	expect_log_lacks("session pinned");
	PQfinish(a);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 9: busy polling */

TestSuite(txn_busy_poll, .fini = fini_kill_leftovers, .timeout = 180);

/* utime + stime of every thread of pid, in milliseconds (/proc/PID/stat fields 14 and 15). */
static long long proc_cpu_ms(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	char *text = h_read_file(path);
	cr_assert_not_null(text, "cannot read %s", path);
	const char *p = strrchr(text, ')');
	cr_assert_not_null(p, "unexpected %s: %s", path, text);
	unsigned long long utime = 0, stime = 0;
	/* After "comm)": state is field 3, utime 14, stime 15. */
	int n = sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime);
	free(text);
	cr_assert_eq(n, 2, "cannot parse utime and stime from %s", path);
	return (long long)(utime + stime) * 1000 / sysconf(_SC_CLK_TCK);
}

/* pgbench -S through pgmux with the given clients for the given seconds: no failed transaction. */
static void pgbench_select_ok(const char *clients, const char *seconds)
{
	const struct h_env *e = h_env();
	char pgbench[600], port[16], pw[256];
	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(port, sizeof(port), "%d", px.port);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	const char *argv[] = {pgbench, "-n", "-S", "-c", clients, "-j", "1", "-T", seconds,
			      "-h", "127.0.0.1", "-p", port, "-U", "app", "postgres", NULL};
	const char *env[] = {pw, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=60", NULL};
	struct h_cmd c;
	char what[64];
	h_cmd_run(&c, argv, env, h_scaled_ms(60000));
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
	start_txn_pgmux(4, "busy_poll_us = 500", NULL);
	pgbench_select_ok("1", h_under_valgrind() ? "4" : "2");
	pgbench_select_ok("8", h_under_valgrind() ? "4" : "2");

	PGconn *conn = app(NULL);
	h_expect_value(conn, "select 41 + 1", "42");
	h_sleep_ms(200);
	long long before = proc_cpu_ms(px.pid);
	h_sleep_ms(2000);
	long long used = proc_cpu_ms(px.pid) - before;
	cr_log_info("busy_poll_us = 500: pgmux used %lld ms of CPU time in 2 s of idleness", used);
	cr_assert_lt(used, 400, "pgmux used %lld ms of CPU time in 2 s with no traffic: a worker kept polling",
		     used);
	h_expect_value(conn, "select 6 * 7", "42");
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 10: the pool's janitor */

TestSuite(txn_janitor, .fini = fini_kill_leftovers, .timeout = 120);

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
		run_ok(clients[i], "begin");
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
		run_ok(c[i], "commit");
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
		cr_assert(contains_int(pids, n, pid), "%s: backend %d is not one of those the clients used", why, pid);
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
	start_txn_pgmux(4, NULL, "max_idle_connections_percent = 50");
	PGconn *super = h_connect_super_direct();
	PGconn *c[4];
	int pids[4];
	for (int i = 0; i < 4; i++)
		c[i] = app(NULL);
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
		run_ok(c[i], "commit");
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
	start_txn_pgmux(4, NULL, "min_pool_size = 2\nserver_idle_timeout = 1s");
	PGconn *super = h_connect_super_direct();
	PGconn *c[4];
	int pids[4];
	for (int i = 0; i < 4; i++)
		c[i] = app(NULL);
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
	start_txn_pgmux(2, NULL, "server_lifetime = 1s");
	PGconn *super = h_connect_super_direct();
	PGconn *a = app(NULL);
	run_ok(a, "begin");
	int old = h_backend_pid(a);
	h_sleep_ms(1500);
	cr_assert_eq(h_backend_pid(a), old, "a transaction moved to another backend when its own grew old");
	run_ok(a, "commit");
	/* At once: not left to the janitor's round once a second. */
	cr_assert_neq(h_backend_pid(a), old, "the next statement was served by a backend older than server_lifetime");

	char sql[160];
	snprintf(sql, sizeof(sql), "select count(*) from pg_stat_activity where pid = %d", old);
	bool gone = h_poll_value(super, sql, "0", h_scaled_ms(5000));
	if (!gone)
		pgmux_dump_logs(&px);
	cr_assert(gone, "backend %d, older than server_lifetime = 1s, was still connected after it was released", old);
	PQfinish(a);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * A client that leaves while its statement runs: pgmux closes the backend
 * and cancels the statement, which PostgreSQL would otherwise run to its end
 * (it does not watch the socket during a query). The pool's only slot is
 * free again for the next client.
 */
Test(txn_janitor, client_gone_mid_statement_cancels_it)
{
	start_txn_pgmux(1, NULL, NULL);
	PGconn *super = h_connect_super_direct();
	PGconn *a = app(NULL);
	int pid = h_backend_pid(a);
	cr_assert_eq(PQsendQuery(a, "select pg_sleep(60)"), 1, "%s", PQerrorMessage(a));
	char sql[200];
	snprintf(sql, sizeof(sql), "select count(*) from pg_stat_activity where pid = %d and state = 'active'", pid);
	cr_assert(h_poll_value(super, sql, "1", h_scaled_ms(5000)), "pg_sleep(60) never ran on backend %d", pid);
	PQfinish(a);

	snprintf(sql, sizeof(sql), "select count(*) from pg_stat_activity where pid = %d", pid);
	bool gone = h_poll_value(super, sql, "0", h_scaled_ms(5000));
	if (!gone) {
		pgmux_dump_logs(&px);
		snprintf(sql, sizeof(sql), "select pg_terminate_backend(%d)", pid);
		h_exec_ok(super, sql);
	}
	cr_assert(gone, "backend %d still ran pg_sleep(60) 5 s after its client left", pid);
	PGconn *b = app(NULL);
	h_expect_value(b, "select 'served'", "served");
	PQfinish(b);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 11: a backend that ends its session */

TestSuite(txn_backend_ends, .fini = fini_kill_leftovers, .timeout = 120);

static void count_fatal_notice(void *arg, const PGresult *r)
{
	const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	if (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
		++*(int *)arg;
}

static void terminate_backend(PGconn *super, int pid, bool wait_gone)
{
	char sql[160];
	snprintf(sql, sizeof(sql), "select pg_terminate_backend(%d)", pid);
	h_exec_ok(super, sql);
	if (!wait_gone)
		return;
	snprintf(sql, sizeof(sql), "select count(*) from pg_stat_activity where pid = %d", pid);
	cr_assert(h_poll_value(super, sql, "0", h_scaled_ms(5000)), "backend %d outlived pg_terminate_backend", pid);
}

/*
 * A backend terminated while its client is idle in a transaction sends a
 * FATAL and closes. The session is pgmux's and goes on: the client must not
 * get a FATAL that ends nothing (libpq passes one that arrives while it is
 * idle to the notice receiver); its next statement fails with 08006, since
 * the transaction is gone, and the one after runs on another backend.
 */
Test(txn_backend_ends, terminated_while_idle_in_a_transaction)
{
	start_txn_pgmux(2, NULL, NULL);
	PGconn *super = h_connect_super_direct();
	PGconn *a = app(NULL);
	int fatal_notices = 0;
	PQsetNoticeReceiver(a, count_fatal_notice, &fatal_notices);
	run_ok(a, "begin");
	int pid = h_backend_pid(a);
	terminate_backend(super, pid, true);
	h_sleep_ms(h_scaled_ms(300));
	cr_assert(PQconsumeInput(a), "the client's connection broke: %s", PQerrorMessage(a));
	(void)PQisBusy(a); /* parses whatever came */
	cr_expect_eq(fatal_notices, 0, "the backend's FATAL reached the idle client");

	PGresult *r = PQexec(a, "select 1");
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "a statement in the lost transaction did not fail (%s)",
		     PQresStatus(PQresultStatus(r)));
	cr_expect_str_eq(state ? state : "", "08006", "%s", PQresultErrorMessage(r));
	const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
	cr_expect(detail && strstr(detail, "terminating connection due to administrator command") &&
			  strstr(detail, "57P01"),
		  "the error does not say why the backend went: DETAIL %s", detail ? detail : "(none)");
	PQclear(r);
	cr_expect_eq(fatal_notices, 0, "a FATAL reached the client");
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
	start_txn_pgmux(2, NULL, NULL);
	PGconn *super = h_connect_super_direct();
	PGconn *a = app(NULL);
	int rounds = h_under_valgrind() ? 20 : 150, failed = 0;
	for (int i = 0; i < rounds; i++) {
		run_ok(a, "begin");
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
 * statement learns why from the DETAIL, and the session goes on.
 */
Test(txn_backend_ends, idle_in_transaction_timeout_says_why)
{
	start_txn_pgmux(2, NULL, NULL);
	PGconn *a = app(NULL);
	int fatal_notices = 0;
	PQsetNoticeReceiver(a, count_fatal_notice, &fatal_notices);
	run_ok(a, "set idle_in_transaction_session_timeout = '200ms'");
	run_ok(a, "begin");
	int pid = h_backend_pid(a);
	h_sleep_ms(h_scaled_ms(1000));
	PGresult *r = PQexec(a, "select 1");
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "the timed-out transaction went on (%s)",
		     PQresStatus(PQresultStatus(r)));
	cr_expect_str_eq(state ? state : "", "08006", "%s", PQresultErrorMessage(r));
	cr_expect(detail && strstr(detail, "idle-in-transaction timeout") && strstr(detail, "25P03"),
		  "DETAIL %s", detail ? detail : "(none)");
	PQclear(r);
	cr_expect_eq(fatal_notices, 0, "the backend's FATAL reached the client");
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
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
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

	PGconn *a = app(NULL);
	run_ok(a, "begin");
	int pid = h_backend_pid(a);
	terminate_backend(super, monitor_pid, true);
	terminate_backend(super, pid, true);

	PGresult *r = PQexec(a, "select 1");
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_expect_str_eq(state ? state : "", "08006", "%s", PQresultErrorMessage(r));
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

/* ------------------------------------------------------------ prepare outside a transaction */

/*
 * libpq's PQprepare() sends Parse and Sync and waits. pgbench -M prepared
 * calls it before a statement's first use, from a thread that drives several
 * connections: when those held every backend inside their transactions, the
 * thread waited here for a backend that only it could free (issue 15). Outside
 * a transaction pgmux answers a Parse, a Close and a Sync without a backend.
 */
TestSuite(txn_prepare_idle, .fini = fini_kill_leftovers, .timeout = 120);

/* A PQprepare() that must be answered within a second, while the only backend is held. */
static void prepare_while_held(PGconn *conn, const char *name, const char *sql)
{
	long long t0 = h_now_ms();

	prepare_ok(conn, name, sql);
	cr_assert_lt(h_now_ms() - t0, h_scaled_ms(1000), "PQprepare(\"%s\") waited for the held backend", name);
}

Test(txn_prepare_idle, prepare_is_answered_while_every_backend_is_held)
{
	PGconn *holder, *b, *c, *admin;
	char *v;

	start_txn_pgmux(1, NULL, "connection_borrow_timeout = 20");
	holder = app(NULL);
	b = app(NULL);
	c = app(NULL);
	admin = h_connect_super_port(px.port, "pgmux");
	cr_assert(admin && PQstatus(admin) == CONNECTION_OK, "admin console");

	/* No backend has seen this text: answered unjudged. */
	run_ok(holder, "BEGIN");
	prepare_while_held(b, "plus_one", "SELECT $1::int + 1");
	cr_assert_eq(h_admin_stat(admin, "parses_answered_unjudged"), 1);
	run_ok(holder, "COMMIT");
	v = exec_prepared_1(b, "plus_one", "41");
	cr_assert_str_eq(v, "42");
	free(v);

	/* Now a backend accepted it: another client's Parse of the same text is answered as known. */
	run_ok(holder, "BEGIN");
	prepare_while_held(c, "mine", "SELECT $1::int + 1");
	cr_assert_eq(h_admin_stat(admin, "parses_answered_unjudged"), 1);
	cr_assert_eq(h_admin_stat(admin, "parses_answered_without_backend"), 2);
	/* Another text under another name, while still held: unjudged again. */
	prepare_while_held(c, "mine2", "SELECT $1::int + 2");
	cr_assert_eq(h_admin_stat(admin, "parses_answered_unjudged"), 2);
	run_ok(holder, "COMMIT");
	v = exec_prepared_1(c, "mine2", "40");
	cr_assert_str_eq(v, "42");
	free(v);

	/* A text no backend judged that turns out bad: its first use gets the server's error, and keeps getting it. */
	run_ok(holder, "BEGIN");
	prepare_while_held(b, "bad", "SELEC 1");
	run_ok(holder, "COMMIT");
	for (int i = 0; i < 2; i++) {
		PGresult *r = PQexecPrepared(b, "bad", 0, NULL, NULL, NULL, 0);
		const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);

		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
		cr_assert(state && strcmp(state, "42601") == 0, "run %d of a bad statement: %s", i,
			  PQerrorMessage(b));
		PQclear(r);
	}
	/* The session is fine afterwards, and the good statement still works. */
	v = exec_prepared_1(b, "plus_one", "1");
	cr_assert_str_eq(v, "2");
	free(v);

	/* A name in use, while the backend is held: PostgreSQL's 42P05 at once, and the old statement stays. */
	run_ok(holder, "BEGIN");
	{
		long long t0 = h_now_ms();
		PGresult *r = PQprepare(b, "plus_one", "SELECT $1::int + 1", 0, NULL);
		const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);

		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "a Parse of a name in use was accepted");
		cr_assert(state && strcmp(state, "42P05") == 0, "a name in use: %s", PQerrorMessage(b));
		cr_assert(strstr(PQerrorMessage(b), "prepared statement \"plus_one\" already exists") != NULL, "%s",
			  PQerrorMessage(b));
		PQclear(r);
		cr_assert_lt(h_now_ms() - t0, h_scaled_ms(1000), "the refusal waited for the held backend");
	}
	run_ok(holder, "COMMIT");
	v = exec_prepared_1(b, "plus_one", "9");
	cr_assert_str_eq(v, "10");
	free(v);

	/* With the backend free, an unknown text is judged by it: a bad one fails at once, as directly. */
	{
		PGresult *r = PQprepare(b, "bad2", "SELEC 2", 0, NULL);

		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "a bad Parse with a free backend was not judged");
		PQclear(r);
	}
	cr_assert_eq(h_admin_stat(admin, "parses_answered_unjudged"), 3);
	PQfinish(admin);
	PQfinish(holder);
	PQfinish(b);
	PQfinish(c);
	h_stop_expect_clean_exit(&px);
}
