/*
 * test_lifecycle.c: pgmux as a process: the graceful shutdown on SIGINT
 * (open sessions finish, new ones are refused), shutdown_timeout for the
 * transactions that outlast it, and the pid file (written once the port is
 * pgmux's, removed at exit, left alone by a second instance; -d). The admin
 * console's SHUTDOWN is test_admin.c's; SIGHUP, test_reload.c's.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static struct pgmux px;

/* TLS offered, not required, SCRAM, session pooling, with shutdown_timeout (NULL: the default). */
static void start_pgmux(const char *shutdown_timeout)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	if (shutdown_timeout)
		o.shutdown_timeout = shutdown_timeout;
	pgmux_start_ok(&px, &o);
}

static void init_tls_optional(void)
{
	start_pgmux(NULL);
}

/* ================================================================ SIGINT: a graceful shutdown */

TestSuite(shutdown, .init = init_tls_optional, .fini = h_teardown, .timeout = 120);

/* After SIGINT: new connections are refused once pgmux has seen the signal. */
static void expect_new_sessions_refused(void)
{
	long long deadline = h_now_ms() + h_scaled_ms(5000);
	bool refused = false;
	while (!refused && h_now_ms() < deadline) {
		PGconn *late = h_connect_app(px.port, "require", NULL);
		refused = PQstatus(late) != CONNECTION_OK;
		PQfinish(late);
		if (!refused)
			h_sleep_ms(20);
	}
	cr_assert(refused, "pgmux still accepts new sessions after SIGINT");
}

Test(shutdown, sigint_lets_open_sessions_finish)
{
	PGconn *open = h_app_session(&px, "require", NULL);
	h_expect_value(open, "select 1", "1");

	cr_assert_eq(kill(px.pid, SIGINT), 0);
	expect_new_sessions_refused();

	cr_assert(pgmux_running(&px), "pgmux exited although a session was still open");
	h_expect_value(open, "select 'open session still served'", "open session still served");
	cr_assert(pgmux_running(&px));
	PQfinish(open);

	int st = pgmux_wait_exit(&px, h_scaled_ms(10000));
	cr_assert_neq(st, -2, "pgmux did not exit after its last session ended");
	cr_assert_eq(st, 0, "pgmux exit status after SIGINT: %d", st);
}

/* ================================================================ shutdown_timeout */

#define SHUTDOWN_TIMEOUT_MS 1000

static void init_shutdown_timeout(void)
{
	start_pgmux("1s");
}

TestSuite(shutdown_timeout, .init = init_shutdown_timeout, .fini = h_teardown, .timeout = 120);

/*
 * Two sessions in open transactions outlast shutdown_timeout after SIGINT:
 * one running a long query, one idle in its transaction. Both are kept until
 * the timeout, then get FATAL 57P01; pgmux leaves no backend behind and exits
 * with status 0.
 */
Test(shutdown_timeout, sigint_closes_transactions_that_outlast_it)
{
	PGconn *super = h_connect_super_direct();
	PGconn *busy = h_app_session(&px, "require", NULL);
	PGconn *idle = h_app_session(&px, "require", NULL);
	struct h_notices idle_notices = {0};
	PQsetNoticeReceiver(idle, h_record_notices, &idle_notices);
	h_exec_ok(idle, "begin");
	h_expect_value(idle, "select 'in a transaction'", "in a transaction");
	h_exec_ok(busy, "begin");
	cr_assert_eq(PQsendQuery(busy, "select pg_sleep(60)"), 1, "%s", PQerrorMessage(busy));
	cr_assert(h_poll_value(super, H_SLEEP_ACTIVE_SQL(60), "1", h_scaled_ms(10000)),
		  "pg_sleep(60) never became active");

	long long signalled_ms = h_now_ms();
	cr_assert_eq(kill(px.pid, SIGINT), 0);
	expect_new_sessions_refused();

	PGresult *r = h_get_result(busy, SHUTDOWN_TIMEOUT_MS + h_scaled_ms(5000));
	long long waited = h_now_ms() - signalled_ms;
	cr_assert_not_null(r, "the long query was not ended after shutdown_timeout");
	cr_assert_geq(waited, SHUTDOWN_TIMEOUT_MS - 50, "the query was ended %lld ms after SIGINT, before shutdown_timeout",
		      waited);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "status %s", PQresStatus(PQresultStatus(r)));
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert(state && strcmp(state, "57P01") == 0, "SQLSTATE %s, expected 57P01: %s", state ? state : "(none)",
		  PQresultErrorMessage(r));
	cr_assert(strstr(PQresultErrorMessage(r), "pgmux is shutting down") != NULL, "message: %s",
		  PQresultErrorMessage(r));
	PQclear(r);

	int st = pgmux_wait_exit(&px, h_scaled_ms(5000));
	cr_assert_neq(st, -2, "pgmux did not exit after shutdown_timeout");
	cr_assert_eq(st, 0, "pgmux exit status after SIGINT and shutdown_timeout: %d", st);
	cr_assert_eq(h_file_count(px.logfile, "shutdown_timeout reached with 2 client(s) open"), 1,
		     "pgmux's log does not say that shutdown_timeout closed 2 clients");

	/* The session idle in its transaction got the same error; libpq reports it as a notice. */
	PQconsumeInput(idle);
	(void)PQisBusy(idle); /* parses what was read */
	cr_assert_str_eq(idle_notices.fatal_sqlstate, "57P01", "the session idle in its transaction did not get FATAL 57P01");
	/*
	 * pgmux closed both backends. PostgreSQL does not watch the socket during
	 * a query: the sleeping one ends because pgmux cancelled its statement
	 * before closing it, not 60 s later.
	 */
	if (!h_poll_value(super, H_APP_BACKENDS_SQL, "0", h_scaled_ms(5000))) {
		char *left = h_value_ok(super, "select string_agg(state || ': ' || query, ', ') from "
					       "pg_stat_activity where usename = 'app'");
		pgmux_dump_logs(&px);
		h_exec_ok(super, "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app'");
		cr_assert_fail("backends of app are still there after pgmux exited: %s", left);
	}
	PQfinish(idle);
	PQfinish(busy);
	PQfinish(super);
}

/* ================================================================ pidfile */

TestSuite(pidfile, .fini = h_teardown, .timeout = 120);

static char pidfile_path[600];

static void options_with_pidfile(struct pgmux_options *o, const char *name)
{
	pgmux_options_default(o);
	snprintf(pidfile_path, sizeof(pidfile_path), "%s/%s", h_test_dir(), name);
	o->pidfile = pidfile_path;
}

/* The pidfile must hold pid (it is written a moment after the port opens). */
static void expect_pidfile_holds(pid_t pid)
{
	char want[32];
	snprintf(want, sizeof(want), "%ld\n", (long)pid);
	bool holds = h_file_wait_contains(pidfile_path, want, h_scaled_ms(5000));
	char *text = h_read_file(pidfile_path);
	cr_assert(holds && strcmp(text, want) == 0, "pidfile %s holds \"%s\", expected pgmux's pid %ld", pidfile_path,
		  text, (long)pid);
	free(text);
}

static void expect_pidfile_gone(void)
{
	cr_assert(access(pidfile_path, F_OK) != 0, "pidfile %s is still there after pgmux exited", pidfile_path);
}

Test(pidfile, written_at_start_removed_at_exit)
{
	struct pgmux_options o;
	options_with_pidfile(&o, "pgmux.pid");
	pgmux_start_ok(&px, &o);
	expect_pidfile_holds(px.pid);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
	expect_pidfile_gone();

	/* The graceful way out removes it too. */
	pgmux_start_ok(&px, &o);
	expect_pidfile_holds(px.pid);
	int st = pgmux_stop(&px, SIGINT, h_scaled_ms(10000));
	cr_assert_eq(st, 0, "pgmux exit status after SIGINT: %d", st);
	expect_pidfile_gone();
}

/* A pidfile that cannot be written stops the start-up: status 1, a clear log line, no port. */
Test(pidfile, unwritable_directory_fails_the_start)
{
	struct pgmux_options o;
	options_with_pidfile(&o, "no-such-directory/pgmux.pid");
	int st = pgmux_run_to_exit(&px, &o, h_scaled_ms(10000));
	if (st != 1)
		pgmux_dump_logs(&px);
	cr_assert_eq(st, 1, "pgmux exit status with an unwritable pidfile: %d, expected 1", st);
	char want[700];
	snprintf(want, sizeof(want), "cannot write pidfile %s: No such file or directory", pidfile_path);
	char *log = h_read_file(px.logfile);
	cr_assert(strstr(log, want) != NULL, "pgmux's log lacks \"%s\":\n%s", want, log);
	free(log);
	cr_assert_lt(h_raw_connect(px.port, 200), 0, "something listens on pgmux's port");
	expect_pidfile_gone();
}

/*
 * A second pgmux started by mistake with the same configuration cannot listen
 * on the port: it must exit 1 and leave the running one's pidfile alone.
 */
Test(pidfile, second_instance_leaves_it_alone)
{
	struct pgmux_options o;
	options_with_pidfile(&o, "pgmux.pid");
	pgmux_start_ok(&px, &o);
	expect_pidfile_holds(px.pid);

	struct pgmux second;
	memset(&second, 0, sizeof(second));
	o.listen_port = px.port;
	int st = pgmux_run_to_exit(&second, &o, h_scaled_ms(10000));
	cr_assert_eq(st, 1, "a second pgmux on the same port exited with %d, expected 1", st);
	expect_pidfile_holds(px.pid);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
	expect_pidfile_gone();
}

/*
 * With -d the command returns only once the daemon listens: a daemon that
 * cannot (the port is taken by a pgmux already running) makes the command
 * exit 1 and say so, rather than 0 with nothing running. The running one
 * keeps its pidfile and serves on.
 */
Test(pidfile, daemon_that_cannot_listen_fails_the_command)
{
	struct pgmux_options o;
	options_with_pidfile(&o, "pgmux.pid");
	pgmux_start_ok(&px, &o);
	expect_pidfile_holds(px.pid);

	/* The daemon's own parents exit: it becomes this process's child, and the teardown reaps it. */
	cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0, "PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
	struct pgmux second;
	memset(&second, 0, sizeof(second));
	o.listen_port = px.port;
	o.daemonize = true;
	int st = pgmux_run_to_exit(&second, &o, h_scaled_ms(10000));
	if (st != 1)
		pgmux_dump_logs(&second);
	cr_assert_eq(st, 1, "pgmux -d on a port in use exited with %d, expected 1", st);
	char *err = h_read_file(second.stderr_file);
	cr_assert(strstr(err, "the background process did not start; see ") != NULL,
		  "pgmux -d did not say that its daemon failed; its stderr:\n%s", err);
	free(err);
	char want[64];
	snprintf(want, sizeof(want), "cannot listen on 127.0.0.1:%d", px.port);
	bool logged = h_file_wait_contains(second.logfile, want, h_scaled_ms(5000));
	cr_assert(logged, "the daemon's log lacks \"%s\"", want);
	expect_pidfile_holds(px.pid);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
	expect_pidfile_gone();
}

/*
 * With -d the process started exits 0 at once and the daemon, in a session
 * of its own, writes its own pid; SIGTERM to that pid stops it cleanly and
 * removes the file.
 */
Test(pidfile, daemon_writes_its_own_pid)
{
	struct pgmux_options o;
	options_with_pidfile(&o, "pgmux.pid");
	o.daemonize = true;
	pgmux_start_ok(&px, &o);
	cr_assert_neq(getsid(px.pid), getsid(0), "the daemon did not leave the test's session");
	cr_assert_neq(getsid(px.pid), px.pid, "the daemon is a session leader (it could get a terminal)");
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
	expect_pidfile_gone();
}
