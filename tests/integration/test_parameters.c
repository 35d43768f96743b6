/*
 * test_parameters.c: the session state a client carries from backend to
 * backend in transaction pooling, and the state that pins it to one.
 * Settings follow the client (reported ones from ParameterStatus, the
 * others read back after its transaction; startup options; RESET and SET
 * LOCAL; a tenant set with set_config() at every run of a prepared
 * statement, also under pgbench), and other clients never see them. What
 * pgmux cannot carry (a temporary table, a held cursor, LISTEN, a session
 * advisory lock, SQL PREPARE, set_config() of a name it cannot read) pins
 * the session, which keeps its backend while another client works on the
 * other. Isolation against code pgmux cannot read is test_isolation.c's;
 * protocol-level prepared statements, test_prepared.c's.
 *
 * Backends are made to change under a client on purpose (see "moving a
 * client" in harness.h): "the setting followed the client" is proved on a
 * backend the client had not used for that statement before.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct pgmux px;

/* A session through pgmux without TLS (with extra conninfo, or NULL), that must log in. */
static PGconn *app(const char *extra)
{
	return h_app_session(&px, "disable", extra);
}

static void expect_pinned_log(int pid, const char *reason)
{
	char needle[256];
	snprintf(needle, sizeof(needle), "session pinned to backend pid %d: %s", pid, reason);
	h_expect_log(&px, needle, 3000);
}

/* ================================================================ state that follows the client */

TestSuite(parameters, .fini = h_teardown, .timeout = 120);

/* (a) SET TimeZone and IntervalStyle follow the client; RESET too. */
struct tz_arg {
	const char *want; /* "TimeZone|IntervalStyle|interval '1 day'" */
	const char *want_tz;
};

static int tz_step(PGconn *a, int step, void *arg)
{
	struct tz_arg *t = arg;
	int pid;
	char *v = h_pid_and_value(a, "select pg_backend_pid(), current_setting('TimeZone') || '|' || "
				   "current_setting('IntervalStyle') || '|' || interval '1 day'",
				&pid);
	cr_assert_str_eq(v, t->want, "step %d on backend %d: \"%s\", expected \"%s\"", step, pid, v, t->want);
	free(v);
	h_expect_value(a, "show timezone", t->want_tz);
	return pid;
}

Test(parameters, timezone_and_intervalstyle_follow_the_client)
{
	PGconn *direct = h_connect_app_direct(NULL);
	char *default_tz = h_value_ok(direct, "show timezone");
	PQfinish(direct);

	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	cr_assert_str_eq(PQparameterStatus(a, "TimeZone"), default_tz);
	h_exec_ok(a, "set timezone = 'Asia/Tokyo'");
	cr_assert_str_eq(PQparameterStatus(a, "TimeZone"), "Asia/Tokyo",
			 "the client was not told of its new TimeZone (ParameterStatus)");
	h_exec_ok(a, "set intervalstyle = 'iso_8601'");
	cr_assert_str_eq(PQparameterStatus(a, "IntervalStyle"), "iso_8601");

	struct tz_arg t = {.want = "Asia/Tokyo|iso_8601|P1D", .want_tz = "Asia/Tokyo"};
	struct h_rounds ra;
	h_switching_rounds(a, b, c, 8, tz_step, NULL, &t, &ra);

	char want_b[256];
	snprintf(want_b, sizeof(want_b), "%s|postgres|1 day", default_tz);
	h_expect_other_client_sees(a, b, &ra,
				 "select pg_backend_pid(), current_setting('TimeZone') || '|' || "
				 "current_setting('IntervalStyle') || '|' || interval '1 day'",
				 want_b);
	cr_assert_str_eq(PQparameterStatus(b, "TimeZone"), default_tz);

	/* RESET is followed as well: back to the default, on every backend. */
	h_exec_ok(a, "reset timezone");
	cr_assert_str_eq(PQparameterStatus(a, "TimeZone"), default_tz);
	char want_a[256];
	snprintf(want_a, sizeof(want_a), "%s|iso_8601|P1D", default_tz);
	t.want = want_a;
	t.want_tz = default_tz;
	h_switching_rounds(a, b, c, 4, tz_step, NULL, &t, &ra);

	free(default_tz);
	h_finish_three(&px, a, b, c);
}

/* (b) startup options: -c and --name=value, on every backend. */
static int timeout_step(PGconn *a, int step, void *arg)
{
	int pid;
	char *v = h_pid_and_value(a, "select pg_backend_pid(), current_setting('statement_timeout') || '|' || "
				   "current_setting('lock_timeout')",
				&pid);
	cr_assert_str_eq(v, "1234ms|4321ms", "step %d on backend %d: \"%s\"", step, pid, v);
	free(v);
	h_expect_value(a, "show statement_timeout", "1234ms");
	return pid;
}

#define TIMEOUT_SQL "select pg_backend_pid(), current_setting('statement_timeout')"

/* Client a runs each run, then every backend it is moved to must give want from check_sql. */
struct set_step {
	const char *run;
	const char *want;
};

static void set_steps(PGconn *a, PGconn *b, PGconn *c, const char *check_sql, const struct set_step *steps, size_t n,
		      struct h_rounds *out)
{
	for (size_t i = 0; i < n; i++) {
		h_exec_ok(a, steps[i].run);
		h_rounds_expect(a, b, c, 2, check_sql, steps[i].want, out);
	}
}

Test(parameters, startup_options_follow_the_client)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *a = app("options='-c statement_timeout=1234 --lock_timeout=4321'");
	PGconn *b = app(NULL), *c = app(NULL);
	struct h_rounds ra;
	h_switching_rounds(a, b, c, 6, timeout_step, NULL, NULL, &ra);

	long long t0 = h_now_ms();
	char *msg = h_expect_error(a, "select pg_sleep(2)", "57014");
	long long took = h_now_ms() - t0;
	cr_assert(strstr(msg, "statement timeout") != NULL, "pg_sleep(2) failed with \"%s\"", msg);
	cr_assert_lt(took, 1990, "the statement timeout of 1234 ms ended pg_sleep(2) only after %lld ms", took);
	free(msg);
	cr_assert_eq(PQtransactionStatus(a), PQTRANS_IDLE);
	(void)timeout_step(a, 0, NULL);

	h_expect_other_client_sees(a, b, &ra,
				 "select pg_backend_pid(), current_setting('statement_timeout') || '|' || "
				 "current_setting('lock_timeout')",
				 "0|0");
	h_finish_three(&px, a, b, c);
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
	char *v = h_pid_and_value(a, "select pg_backend_pid(), current_setting('application_name')", &pid);
	cr_assert_str_eq(v, t->want, "step %d on backend %d: application_name \"%s\", expected \"%s\"", step, pid,
			 v, t->want);
	free(v);
	h_expect_value(a, "show application_name", t->want);
	/* PostgreSQL shows it too, for the backend while it serves the client. */
	h_exec_ok(a, "begin");
	pid = h_backend_pid(a);
	char sql[128];
	snprintf(sql, sizeof(sql), "select application_name from pg_stat_activity where pid = %d", pid);
	h_expect_value(t->super, sql, t->want);
	h_exec_ok(a, "commit");
	return pid;
}

Test(parameters, application_name_follows_the_client)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *a = app("application_name=foo");
	PGconn *b = app(NULL), *c = app(NULL);
	cr_assert_str_eq(PQparameterStatus(a, "application_name"), "foo");
	struct appname_arg t = {.want = "foo", .super = h_connect_super_direct()};
	struct h_rounds ra;
	h_switching_rounds(a, b, c, 5, appname_step, NULL, &t, &ra);
	/*
	 * b sent no application_name: it must keep the value its own login
	 * reported (pgmux may name itself there), never a's "foo".
	 */
	const char *b_name = PQparameterStatus(b, "application_name");
	cr_assert_not_null(b_name);
	char *b_default = strdup(b_name);
	h_expect_other_client_sees(a, b, &ra, "select pg_backend_pid(), current_setting('application_name')", b_default);
	free(b_default);

	h_exec_ok(a, "set application_name = 'bar'");
	cr_assert_str_eq(PQparameterStatus(a, "application_name"), "bar");
	t.want = "bar";
	h_switching_rounds(a, b, c, 4, appname_step, NULL, &t, &ra);
	PQfinish(t.super);
	h_finish_three(&px, a, b, c);
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

Test(parameters, set_of_unreported_parameters_follows_the_client)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	char *defaults;
	int pid;
	defaults = h_pid_and_value(b, SETTINGS_SQL, &pid);
	cr_assert_str_eq(defaults, "4MB|\"$user\", public|");

	h_exec_ok(a, "set work_mem = '7MB'; set search_path = pg_catalog, public");
	h_exec_ok(a, "select set_config('myapp.tenant', '42', false)");
	struct h_rounds ra;
	h_rounds_expect(a, b, c, 4, SETTINGS_SQL, "7MB|pg_catalog, public|42", &ra);
	h_expect_other_client_sees(a, b, &ra, SETTINGS_SQL, defaults);

	const struct set_step steps[] = {
		/* A SET in a transaction that rolls back leaves nothing behind; one that commits does. */
		{"begin; set work_mem = '99MB'; set myapp.tenant = 'x'; rollback", "7MB|pg_catalog, public|42"},
		{"begin; set myapp.tenant = '43'; commit", "7MB|pg_catalog, public|43"},
		/* RESET and TO DEFAULT go back to the server's default everywhere. */
		{"reset work_mem; set search_path to default", "4MB|\"$user\", public|43"},
		{"reset all", defaults},
	};
	set_steps(a, b, c, SETTINGS_SQL, steps, sizeof(steps) / sizeof(steps[0]), &ra);
	h_expect_other_client_sees(a, b, &ra, SETTINGS_SQL, defaults);
	h_expect_log_lacks(&px, "session pinned");
	free(defaults);
	h_finish_three(&px, a, b, c);
}

/*
 * A client that SETs something and leaves at once (psql -c "SET ...") leaves
 * while pgmux reads its settings back. That read is pgmux's own: the backend
 * goes back to the pool once it is answered, rather than being closed as
 * if the client had left mid-query. One backend, twenty such clients.
 */
Test(parameters, client_leaving_during_the_read_back_keeps_the_backend)
{
	pgmux_start_transaction(&px, 1, NULL, NULL);
	PGconn *first = app(NULL);
	int pid = h_backend_pid(first);
	/* Gone without a Terminate message, as a killed client goes. */
	shutdown(PQsocket(first), SHUT_RDWR);
	PQfinish(first);
	for (int i = 0; i < 20; i++) {
		PGconn *a = app(NULL);
		h_exec_ok(a, "set work_mem = '5MB'");
		PQfinish(a);
	}
	PGconn *b = app(NULL);
	int after = h_backend_pid(b);
	cr_assert_eq(after, pid, "the backend changed from %d to %d: pgmux closed it under a leaving client", pid, after);
	h_expect_value(b, "show work_mem", "4MB");
	h_expect_log_lacks(&px, "client left in the middle");
	/* The first client left between transactions, long after its login: the log must not say otherwise. */
	h_expect_log(&px, "closing during idle: client disconnected", 3000);
	h_expect_log_lacks(&px, "closing during idle: client disconnected during login");
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/* A startup option is what RESET goes back to, on every backend, as it would be directly. */
Test(parameters, reset_goes_back_to_the_startup_option)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *a = app("options='-c statement_timeout=1234'");
	PGconn *b = app(NULL), *c = app(NULL);
	static const struct set_step steps[] = {
		{"set statement_timeout = 5000", "5s"},
		{"reset statement_timeout", "1234ms"},
		{"set statement_timeout = 0", "0"},
		{"reset all", "1234ms"},
	};
	struct h_rounds ra;
	set_steps(a, b, c, TIMEOUT_SQL, steps, sizeof(steps) / sizeof(steps[0]), &ra);
	h_expect_other_client_sees(a, b, &ra, TIMEOUT_SQL, "0");
	h_expect_log_lacks(&px, "session pinned");
	h_finish_three(&px, a, b, c);
}

/*
 * The pattern of row-level security by tenant: one prepared statement,
 * set_config('myapp.tenant', $1, false), run again with each new tenant.
 * Every run is read back, not only the first (which is when pgmux sees the
 * statement's text), so the tenant follows the client to every backend.
 */
Test(parameters, prepared_set_config_follows_the_client_at_every_run)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	PGresult *r = PQprepare(a, "tenant", "select set_config('myapp.tenant', $1, false)", 1, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(a));
	PQclear(r);
	static const char *const tenants[] = {"1", "2", "3"};
	struct h_rounds ra;
	for (size_t i = 0; i < sizeof(tenants) / sizeof(tenants[0]); i++) {
		char *v = h_prepared_value_ok(a, "tenant", tenants[i]);
		cr_assert_str_eq(v, tenants[i]);
		free(v);
		h_rounds_expect(a, b, c, 2, "select pg_backend_pid(), current_setting('myapp.tenant')", tenants[i], &ra);
	}
	h_expect_other_client_sees(a, b, &ra,
				 "select pg_backend_pid(), coalesce(current_setting('myapp.tenant', true), '')", "");
	h_expect_log_lacks(&px, "session pinned");
	h_finish_three(&px, a, b, c);
}

/* SET LOCAL ends with its transaction: no pin, the client still moves between backends. */
static int work_mem_step(PGconn *a, int step, void *arg)
{
	int pid;
	char *v = h_pid_and_value(a, "select pg_backend_pid(), current_setting('work_mem')", &pid);
	cr_assert_str_eq(v, "4MB", "step %d on backend %d: work_mem \"%s\" after SET LOCAL's transaction", step,
			 pid, v);
	free(v);
	return pid;
}

Test(parameters, set_local_does_not_pin)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *a = app(NULL), *b = app(NULL), *c = app(NULL);
	h_exec_ok(a, "begin");
	h_exec_ok(a, "set local work_mem = '9MB'");
	h_expect_value(a, "show work_mem", "9MB");
	h_exec_ok(a, "commit");
	struct h_rounds ra;
	h_switching_rounds(a, b, c, 5, work_mem_step, NULL, NULL, &ra);
	h_expect_log_lacks(&px, "session pinned");
	h_finish_three(&px, a, b, c);
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
	pgmux_start_transaction(&px, 4, NULL, NULL);
	char script[600];
	snprintf(script, sizeof(script), "%s/tenant.sql", h_test_dir());
	h_write_file(script,
		     "\\set t random(1, 1000000)\n"
		     "SELECT set_config('myapp.tenant', :t::text, false);\n"
		     "SELECT 1 / (current_setting('myapp.tenant') = :t::text)::int;\n",
		     0644);
	const char *duration = h_under_valgrind() ? "5" : "4";
	const char *args[] = {"-n", "-f", script, "-M", protocol, "-c", "16", "-j", "2", "-T", duration, NULL};
	struct h_cmd c;
	int st = h_pgbench_run(&c, px.port, "disable", "postgres", args, h_scaled_ms(90000));
	char what[64];
	snprintf(what, sizeof(what), "pgbench tenants -M %s", protocol);
	cr_assert_eq(st, 0, "%s exited with %d:\n%s\n%s", what, st, c.out, c.err);
	h_expect_pgbench_clean(&c, what);
	long processed = h_pgbench_processed(&c);
	cr_assert_gt(processed, 100, "%s processed only %ld transactions", what, processed);
	cr_log_info("%s: %ld transactions, no tenant lost", what, processed);
	h_cmd_free(&c);
	h_expect_log_lacks(&px, "session pinned");
	h_stop_expect_clean_exit(&px);
}

Test(parameters, tenants_follow_16_clients_over_4_backends_simple)
{
	pgbench_tenants("simple");
}

Test(parameters, tenants_follow_16_clients_over_4_backends_prepared)
{
	pgbench_tenants("prepared");
}

/* ================================================================ pinning */

TestSuite(pinning, .fini = h_teardown, .timeout = 120);

/* A client about to pin itself, a pool of two, and a second client busy on the other backend. */
struct pin_test {
	PGconn *conn;
	struct h_traffic traffic;
	int pid; /* the backend the session is pinned to */
};

static void pin_test_begin(struct pin_test *p)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	p->conn = app(NULL);
	h_traffic_start(&p->traffic, &px);
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
	h_traffic_stop_and_check(&p->traffic);
	PQfinish(p->conn);
	h_stop_expect_clean_exit(&px);
}

Test(pinning, temp_table)
{
	struct pin_test p;
	pin_test_begin(&p);
	h_exec_ok(p.conn, "create temp table t (x int)");
	pin_test_pinned(&p, "temporary table");
	h_exec_ok(p.conn, "insert into t values (1), (2), (3)");
	char want[64];
	snprintf(want, sizeof(want), "3:%d", p.pid);
	for (int i = 0; i < 20; i++)
		h_expect_value(p.conn, "select count(*) || ':' || pg_backend_pid() from t", want);
	expect_still_pinned(&p, 10);
	pin_test_end(&p);
}

Test(pinning, cursor_with_hold)
{
	struct pin_test p;
	pin_test_begin(&p);
	h_exec_ok(p.conn, "declare c cursor with hold for select generate_series(1, 100)");
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
	h_exec_ok(p.conn, "close c");
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

/*
 * A LISTEN pgmux cannot take over (here: more channels in one transaction
 * than max_client_listen_channels) pins, and the session gets its
 * notifications from its backend. A LISTEN on its own, or one pgmux takes
 * over at its transaction's end, pins nothing: test_listen.c,
 * test_listen_txn.c.
 */
Test(pinning, listen)
{
	struct pin_test p;
	pgmux_start_transaction(&px, 2, NULL, "max_client_listen_channels = 1");
	p.conn = app(NULL);
	h_traffic_start(&p.traffic, &px);
	h_exec_ok(p.conn, "select 1; listen ch; listen ch2");
	pin_test_pinned(&p, "LISTEN");

	PGconn *super = h_connect_super_direct();
	int notifier = h_backend_pid(super);
	for (int round = 0; round < 3; round++) {
		char sql[64], payload[16];
		snprintf(payload, sizeof(payload), "x%d", round);
		snprintf(sql, sizeof(sql), "notify ch, '%s'", payload);
		h_exec_ok(super, sql);
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

Test(pinning, session_advisory_lock)
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

Test(pinning, sql_prepare_execute)
{
	struct pin_test p;
	pin_test_begin(&p);
	h_exec_ok(p.conn, "prepare p as select $1::int");
	pin_test_pinned(&p, "SQL-level PREPARE");
	for (int i = 0; i < 10; i++) {
		h_expect_value(p.conn, "execute p(5)", "5");
		cr_assert_eq(h_backend_pid(p.conn), p.pid);
	}
	h_exec_ok(p.conn, "deallocate p");
	free(h_expect_error(p.conn, "execute p(5)", "26000"));
	pin_test_end(&p);
}

/*
 * set_config() of a parameter named by a bind parameter: pgmux cannot tell
 * which setting changes (it could be role), so the session is pinned.
 */
Test(pinning, set_config_of_a_name_pgmux_cannot_read)
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
		char *v = h_pid_and_value(p.conn, "select pg_backend_pid(), current_setting('work_mem')", &pid);
		cr_assert_str_eq(v, "7MB");
		cr_assert_eq(pid, p.pid);
		free(v);
	}
	pin_test_end(&p);
}

/*
 * Found by the protocol fuzz test (test_fuzz.c). A Query whose text has no
 * NUL (or bytes after it) is refused by
 * PostgreSQL without running anything. pgmux scanned its bytes anyway and
 * pinned the session on what it guessed ("set d": a SET of a parameter it
 * does not track), so the client kept its backend for good.
 */
Test(pinning, malformed_query_does_not_pin)
{
	struct h_buf parts[1] = {{0}};
	PGconn *other;

	pgmux_start_one_backend(&px, NULL);
	other = h_app_session(&px, "disable", NULL);
	h_msg_raw(&parts[0], 'Q', "set d", 5);
	h_like_postgres(&px, parts, 1, "a Query without its NUL", other);
	h_msg_raw(&parts[0], 'Q', "set d\0x", 7);
	h_like_postgres(&px, parts, 1, "a Query with a byte after its NUL", other);
	cr_assert_eq(h_file_count(px.logfile, "pinned"), 0, "the session was pinned");
	PQfinish(other);
	h_stop_expect_clean_exit(&px);
}
