/*
 * test_admin.c: the admin console (database "pgmux"): its SHOW commands in
 * psql and over both query protocols, KILL, SHUTDOWN, PAUSE and RESUME (and
 * SIGUSR1 and SIGUSR2, which do the same), who may log in to it, and the
 * look-only role of stats_users. RELOAD is test_reload.c's, CUTOVER TO
 * test_cutover.c's.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct pgmux px;

static void init_console(void)
{
	struct pgmux_options o;
	pgmux_options_console(&o);
	pgmux_start_ok(&px, &o);
}

/* The number of the column name of r, which must have it. */
static int column(const PGresult *r, const char *name)
{
	int c = PQfnumber(r, name);
	cr_assert_geq(c, 0, "the result has no column \"%s\"", name);
	return c;
}

/* The first row whose column key_col equals key, or -1. */
static int find_row(const PGresult *r, const char *key_col, const char *key)
{
	int k = column(r, key_col);
	for (int i = 0; i < PQntuples(r); i++)
		if (strcmp(PQgetvalue(r, i, k), key) == 0)
			return i;
	return -1;
}

/* psql -A [-t] -c sql against the admin console; returns the exit status. */
static int admin_psql(struct h_cmd *c, const char *sql, bool tuples_only)
{
	const struct h_env *e = h_env();
	char *ci = h_conninfo(px.port, e->superuser, e->superpass, "disable", "dbname=pgmux");
	/* conninfo carries the password too; PGPASSWORD keeps psql from ever prompting. */
	const char *args[] = {"-A", tuples_only ? "-t" : "-P", tuples_only ? "-q" : "footer=on", "-v", "ON_ERROR_STOP=1",
			      "-c", sql, NULL};
	int st = h_psql_run(c, ci, e->superpass, args);
	free(ci);
	return st;
}

/* ================================================================ the console */

TestSuite(admin, .init = init_console, .fini = h_teardown, .timeout = 60);

Test(admin, psql_show_pools_one_row_per_pool)
{
	const struct h_env *e = h_env();
	PGconn *app = h_app_session(&px, "disable", NULL);
	PGconn *su = h_session_as(&px, e->superuser, e->superpass, NULL);
	cr_assert_eq(h_number_ok(app, "select 1"), 1);
	cr_assert_eq(h_number_ok(su, "select 2"), 2);

	struct h_cmd c;
	int st = admin_psql(&c, "SHOW POOLS", false);
	if (st != 0)
		h_cmd_dump(&c, "psql SHOW POOLS");
	cr_assert_eq(st, 0);
	cr_expect(strstr(c.out, "database|user|endpoint|cl_waiting|sv_active|sv_idle|sv_connecting|sv_total|sv_pinned\n") ==
			  c.out,
		  "SHOW POOLS header:\n%s", c.out);
	char row[200];
	snprintf(row, sizeof(row), "\npostgres|%s|writer|", e->appuser);
	cr_expect(strstr(c.out, row) != NULL, "no app@postgres row:\n%s", c.out);
	snprintf(row, sizeof(row), "\npostgres|%s|writer|", e->superuser);
	cr_expect(strstr(c.out, row) != NULL, "no %s@postgres row:\n%s", e->superuser, c.out);
	cr_expect(strstr(c.out, "\n(2 rows)\n") != NULL, "expected exactly two pools:\n%s", c.out);
	h_cmd_free(&c);
	PQfinish(app);
	PQfinish(su);
	h_stop_expect_clean_exit(&px);
}

Test(admin, show_help_lists_every_command)
{
	struct h_cmd c;
	int st = admin_psql(&c, "SHOW HELP", true);
	cr_assert_eq(st, 0, "psql: %s", c.err);
	static const char *const commands[] = {"SHOW HELP", "SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS",
					       "SHOW TARGETS", "SHOW STATS", "SHOW CONFIG", "SHOW VERSION",
					       "PAUSE", "RESUME", "RELOAD", "CUTOVER TO", "KILL", "SHUTDOWN", NULL};
	for (int i = 0; commands[i]; i++) {
		char line_start[64];
		snprintf(line_start, sizeof(line_start), "\n%s", commands[i]);
		bool found = strncmp(c.out, commands[i], strlen(commands[i])) == 0 || strstr(c.out, line_start);
		cr_expect(found, "SHOW HELP does not list %s:\n%s", commands[i], c.out);
	}
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

Test(admin, show_clients_then_kill_closes_that_client)
{
	const struct h_env *e = h_env();
	PGconn *admin = h_admin_session(&px);
	PGconn *app = h_app_session(&px, "disable", NULL);
	PGconn *bystander = h_session_as(&px, e->superuser, e->superpass, NULL);
	cr_assert_eq(h_number_ok(app, "select 1"), 1);

	PGresult *r = h_rows_ok(admin, "SHOW CLIENTS");
	int row = find_row(r, "user", e->appuser);
	cr_assert_geq(row, 0, "SHOW CLIENTS has no row for %s", e->appuser);
	cr_expect_str_eq(PQgetvalue(r, row, column(r, "database")), "postgres");
	char *id = strdup(PQgetvalue(r, row, column(r, "id")));
	cr_expect_geq(find_row(r, "database", "pgmux"), 0, "SHOW CLIENTS does not list the admin session");
	cr_expect_eq(PQntuples(r), 3, "expected 3 clients (admin, app, superuser)");
	PQclear(r);

	char sql[100];
	snprintf(sql, sizeof(sql), "KILL %s", id);
	r = PQexec(admin, sql);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(admin));
	cr_expect_str_eq(PQcmdStatus(r), "KILL");
	PQclear(r);

	/* pgmux closes the connection: wait until its socket says so, then the next query fails. */
	struct pollfd pfd = {.fd = PQsocket(app), .events = POLLIN};
	cr_assert_eq(poll(&pfd, 1, 5000), 1, "KILL did not close the app connection within 5 s");
	PQconsumeInput(app);
	r = PQexec(app, "select 1");
	cr_expect_neq(PQresultStatus(r), PGRES_TUPLES_OK, "the killed client's query still worked");
	PQclear(r);
	cr_expect_eq(PQstatus(app), CONNECTION_BAD);

	cr_expect(h_admin_poll_cell(admin, "SHOW STATS", "name", "client_connections", "value", "2", 5000),
		  "the killed client is still counted");
	r = h_rows_ok(admin, "SHOW CLIENTS");
	cr_expect_lt(find_row(r, "id", id), 0, "SHOW CLIENTS still lists the killed client %s", id);
	PQclear(r);
	/* Others are untouched; an unknown id is an error. */
	cr_expect_eq(h_number_ok(bystander, "select 3"), 3);
	r = PQexec(admin, "KILL 999999");
	cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "KILL of an unknown id: %s", PQresStatus(PQresultStatus(r)));
	PQclear(r);
	free(id);
	PQfinish(app);
	PQfinish(bystander);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(admin, show_servers_lists_the_backend_a_client_used)
{
	const struct h_env *e = h_env();
	PGconn *admin = h_admin_session(&px);
	PGconn *app = h_app_session(&px, "disable", NULL);
	char *pid = h_value_ok(app, "select pg_backend_pid()");

	PGresult *r = h_rows_ok(admin, "SHOW SERVERS");
	int row = find_row(r, "backend_pid", pid);
	cr_assert_geq(row, 0, "SHOW SERVERS has no backend with pid %s (%d rows)", pid, PQntuples(r));
	cr_expect_str_eq(PQgetvalue(r, row, column(r, "user")), e->appuser);
	cr_expect_str_eq(PQgetvalue(r, row, column(r, "database")), "postgres");
	char instance[64];
	snprintf(instance, sizeof(instance), "127.0.0.1:%d", e->pgport);
	cr_expect_str_eq(PQgetvalue(r, row, column(r, "instance")), instance);
	cr_expect_str_eq(PQgetvalue(r, row, column(r, "pinned")), "no");
	PQclear(r);
	free(pid);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(admin, show_targets_writer_healthy)
{
	const struct h_env *e = h_env();
	PGconn *admin = h_admin_session(&px);
	char port[16];
	snprintf(port, sizeof(port), "%d", e->pgport);
	cr_assert(h_admin_poll_cell(admin, "SHOW TARGETS", "port", port, "health", "healthy", 5000),
		  "the suite's server never became healthy in SHOW TARGETS");
	PGresult *r = h_rows_ok(admin, "SHOW TARGETS");
	cr_expect_eq(PQntuples(r), 1);
	int row = find_row(r, "port", port);
	cr_expect_str_eq(PQgetvalue(r, row, column(r, "host")), "127.0.0.1");
	cr_expect_str_eq(PQgetvalue(r, row, column(r, "role")), "writer");
	cr_expect_str_eq(PQgetvalue(r, row, column(r, "paused")), "no");
	cr_expect_str_eq(PQgetvalue(r, row, column(r, "status")), "serving");
	cr_expect_gt(atoll(PQgetvalue(r, row, column(r, "checks_ok"))), 0);
	PQclear(r);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(admin, show_stats_counts_queries)
{
	PGconn *admin = h_admin_session(&px);
	long long before = h_admin_stat(admin, "queries");
	PGconn *app = h_app_session(&px, "disable", NULL);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(h_number_ok(app, "select 7"), 7);
	cr_expect_geq(h_admin_stat(admin, "queries") - before, 5, "5 queries were not counted");
	cr_expect_geq(h_admin_stat(admin, "transactions"), 5);
	cr_expect_eq(h_admin_stat(admin, "client_connections"), 2, "admin + app");
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	cr_expect_eq(h_admin_stat(admin, "cutovers"), 0);
	cr_expect_eq(h_admin_stat(admin, "cutover_in_progress"), 0);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(admin, show_config_and_show_version)
{
	const struct h_env *e = h_env();
	struct h_cmd c;
	int st = admin_psql(&c, "SHOW CONFIG", true);
	cr_assert_eq(st, 0, "psql: %s", c.err);
	char row[200];
	snprintf(row, sizeof(row), "\npgmux|listen_port|%d|6432|no\n", px.port);
	cr_expect(strstr(c.out, row) != NULL, "SHOW CONFIG has no row \"%s\":\n%s", row + 1, c.out);
	snprintf(row, sizeof(row), "\ntarget|hosts|127.0.0.1:%d|", e->pgport);
	cr_expect(strstr(c.out, row) != NULL, "SHOW CONFIG hosts is not the suite's server:\n%s", c.out);
	cr_expect(strstr(c.out, "\npool|max_connections|8|") != NULL, "max_connections:\n%s", c.out);
	cr_expect(strstr(c.out, "in memory") == NULL, "nothing was set by CUTOVER TO:\n%s", c.out);
	h_cmd_free(&c);

	st = admin_psql(&c, "SHOW VERSION", true);
	cr_assert_eq(st, 0, "psql: %s", c.err);
	cr_expect(strncmp(c.out, "pgmux ", 6) == 0, "SHOW VERSION: %s", c.out);
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

/*
 * SHUTDOWN is graceful, like SIGINT: no new connections, a transaction in
 * progress may finish (the client is closed when it gives its backend back),
 * and pgmux exits 0 once the sessions are gone.
 */
Test(admin, shutdown_lets_the_open_transaction_finish_then_exits_0)
{
	PGconn *admin = h_admin_session(&px);
	PGconn *app = h_app_session(&px, "disable", NULL);
	h_exec_ok(app, "BEGIN");
	cr_assert_eq(h_number_ok(app, "select 1"), 1);

	PGresult *r = PQexec(admin, "SHUTDOWN");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "SHUTDOWN: %s", PQerrorMessage(admin));
	cr_expect_str_eq(PQcmdStatus(r), "SHUTDOWN");
	PQclear(r);
	/* No longer accepting: poll until a new connection is refused. */
	long long deadline = h_now_ms() + 5000;
	int fd;
	while ((fd = h_raw_connect(px.port, 500)) >= 0 && h_now_ms() < deadline) {
		close(fd);
		h_sleep_ms(20);
	}
	if (fd >= 0)
		close(fd);
	cr_expect_lt(fd, 0, "pgmux still accepts connections after SHUTDOWN");
	PQfinish(admin);

	/* The transaction is still served, and pgmux waits for it. */
	cr_expect_eq(pgmux_wait_exit(&px, 300), -2, "pgmux exited while a transaction was open");
	cr_expect_eq(h_number_ok(app, "select 2"), 2, "the open transaction was cut short by SHUTDOWN");
	h_exec_ok(app, "COMMIT");
	int st = pgmux_wait_exit(&px, h_scaled_ms(10000));
	cr_assert_eq(st, 0, "pgmux exit status after SHUTDOWN: %d", st);
	PQfinish(app);
}

Test(admin, extended_protocol_gives_the_same_results)
{
	PGconn *admin = h_admin_session(&px);
	PGconn *app = h_app_session(&px, "disable", NULL);
	cr_assert_eq(h_number_ok(app, "select 1"), 1);

	PGresult *simple = h_rows_ok(admin, "SHOW POOLS");
	PGresult *ext = PQexecParams(admin, "SHOW POOLS", 0, NULL, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(ext), PGRES_TUPLES_OK, "PQexecParams(SHOW POOLS): %s", PQerrorMessage(admin));
	cr_expect_eq(PQnfields(ext), PQnfields(simple));
	cr_expect_eq(PQnfields(ext), 9);
	for (int i = 0; i < PQnfields(ext) && i < PQnfields(simple); i++)
		cr_expect_str_eq(PQfname(ext, i), PQfname(simple, i));
	cr_expect_eq(PQntuples(ext), PQntuples(simple));
	cr_expect_eq(PQntuples(ext), 1);
	cr_expect_str_eq(PQgetvalue(ext, 0, column(ext, "user")), h_env()->appuser);
	PQclear(simple);
	PQclear(ext);

	/* A prepared statement, and a command the main thread answers. */
	PGresult *r = PQprepare(admin, "v", "SHOW VERSION", 0, NULL);
	cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "PQprepare: %s", PQerrorMessage(admin));
	PQclear(r);
	r = PQexecPrepared(admin, "v", 0, NULL, NULL, NULL, 0);
	cr_expect_eq(PQresultStatus(r), PGRES_TUPLES_OK, "PQexecPrepared: %s", PQerrorMessage(admin));
	if (PQresultStatus(r) == PGRES_TUPLES_OK)
		cr_expect(strncmp(PQgetvalue(r, 0, 0), "pgmux", 5) == 0);
	PQclear(r);
	r = PQexecParams(admin, "RELOAD", 0, NULL, NULL, NULL, NULL, 0);
	cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "PQexecParams(RELOAD): %s", PQerrorMessage(admin));
	cr_expect_str_eq(PQcmdStatus(r), "RELOAD");
	PQclear(r);
	r = PQexecParams(admin, "NO SUCH COMMAND", 0, NULL, NULL, NULL, NULL, 0);
	cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_expect_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE) ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : "", "42601");
	PQclear(r);
	/* Still in step after the error. */
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(admin, non_admin_and_wrong_password_are_refused)
{
	const struct h_env *e = h_env();
	PGconn *conn = h_connect_as(px.port, e->appuser, e->apppass, "dbname=pgmux");
	cr_expect_eq(PQstatus(conn), CONNECTION_BAD, "app logged in to the admin console");
	cr_expect(strstr(PQerrorMessage(conn), "permission denied") != NULL, "app's error: %s", PQerrorMessage(conn));
	PQfinish(conn);

	conn = h_connect_as(px.port, e->superuser, "not-the-password", "dbname=pgmux");
	cr_expect_eq(PQstatus(conn), CONNECTION_BAD, "the admin logged in with a wrong password");
	cr_expect(strstr(PQerrorMessage(conn), "password authentication failed") != NULL, "error: %s",
		  PQerrorMessage(conn));
	PQfinish(conn);

	/* pgmux is unharmed. */
	PGconn *admin = h_admin_session(&px);
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(admin, unknown_command_points_to_show_help)
{
	PGconn *admin = h_admin_session(&px);
	static const char *const bad[] = {"FROBNICATE", "SHOW NOTHING", "select 1", NULL};
	for (int i = 0; bad[i]; i++) {
		PGresult *r = PQexec(admin, bad[i]);
		cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "%s: %s", bad[i], PQresStatus(PQresultStatus(r)));
		const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
		const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
		cr_expect_str_eq(state ? state : "", "42601", "%s", bad[i]);
		cr_expect(msg && strstr(msg, "SHOW HELP"), "%s: message \"%s\"", bad[i], msg ? msg : "");
		PQclear(r);
	}
	char *v = h_value_ok(admin, "SHOW VERSION");
	cr_expect(strncmp(v, "pgmux", 5) == 0);
	free(v);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ PAUSE and RESUME */

TestSuite(pause, .init = init_console, .fini = h_teardown, .timeout = 60);

/* PAUSE (all, or one instance) holds new transactions until RESUME. */
static void pause_resume(const char *pause_sql, const char *resume_sql)
{
	const struct h_env *e = h_env();
	PGconn *admin = h_admin_session(&px);
	PGconn *app = h_app_session(&px, "disable", NULL);
	cr_assert_eq(h_number_ok(app, "select 1"), 1);

	PGresult *r = PQexec(admin, pause_sql);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", pause_sql, PQerrorMessage(admin));
	cr_expect_str_eq(PQcmdStatus(r), "PAUSE");
	PQclear(r);
	char port[16];
	snprintf(port, sizeof(port), "%d", e->pgport);
	if (strchr(pause_sql, ':')) {
		char *paused = h_admin_cell_ok(admin, "SHOW TARGETS", "port", port, "paused");
		cr_expect_str_eq(paused, "yes", "SHOW TARGETS after %s", pause_sql);
		free(paused);
	}
	char *status = h_admin_cell_ok(admin, "SHOW TARGETS", "port", port, "status");
	cr_expect_str_eq(status, "paused", "SHOW TARGETS status after %s", pause_sql);
	free(status);
	if (!strchr(pause_sql, ':')) {
		cr_expect_eq(h_admin_stat(admin, "paused"), 1, "SHOW STATS after PAUSE");
	}

	cr_assert(PQsendQuery(app, "select 42"));
	h_expect_no_result(app, 1000, pause_sql);
	cr_expect_geq(h_admin_stat(admin, "transactions_waiting"), 1);

	r = PQexec(admin, resume_sql);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", resume_sql, PQerrorMessage(admin));
	cr_expect_str_eq(PQcmdStatus(r), "RESUME");
	PQclear(r);
	char *v = h_sent_value_ok(app, 5000, "the query held by PAUSE, after RESUME");
	cr_expect_str_eq(v, "42");
	free(v);
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	char *paused = h_admin_cell_ok(admin, "SHOW TARGETS", "port", port, "paused");
	cr_expect_str_eq(paused, "no");
	free(paused);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(pause, holds_queries_until_resume)
{
	pause_resume("PAUSE", "RESUME");
}

Test(pause, one_instance)
{
	char pause[100], resume[100];
	snprintf(pause, sizeof(pause), "PAUSE '127.0.0.1:%d'", h_env()->pgport);
	snprintf(resume, sizeof(resume), "RESUME '127.0.0.1:%d'", h_env()->pgport);
	pause_resume(pause, resume);
}

Test(pause, unknown_instance_is_an_error)
{
	PGconn *admin = h_admin_session(&px);
	PGresult *r = PQexec(admin, "PAUSE '127.0.0.1:1'");
	cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "PAUSE of an unknown instance: %s",
		     PQresStatus(PQresultStatus(r)));
	PQclear(r);
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(pause, sigusr1_pauses_sigusr2_resumes)
{
	PGconn *admin = h_admin_session(&px);
	PGconn *app = h_app_session(&px, "disable", NULL);
	cr_assert_eq(h_number_ok(app, "select 1"), 1);

	pgmux_signal(&px, SIGUSR1);
	cr_assert(h_admin_poll_cell(admin, "SHOW STATS", "name", "paused", "value", "1", 5000), "SIGUSR1 did not pause");
	cr_assert(PQsendQuery(app, "select 43"));
	h_expect_no_result(app, 1000, "a query after SIGUSR1");

	pgmux_signal(&px, SIGUSR2);
	char *v = h_sent_value_ok(app, 5000, "the query held by SIGUSR1, after SIGUSR2");
	cr_expect_str_eq(v, "43");
	free(v);
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ trust */

static void init_console_trust(void)
{
	struct pgmux_options o;
	pgmux_options_console(&o);
	o.tls = false;
	o.client_auth = "trust";
	pgmux_start_ok(&px, &o);
}

TestSuite(admin_trust, .init = init_console_trust, .fini = h_teardown, .timeout = 60);

/* Without a password exchange in the way, the refusal's SQLSTATE can be read off the wire. */
Test(admin_trust, non_admin_gets_fatal_42501)
{
	int fd = h_raw_connect(px.port, 2000);
	cr_assert_geq(fd, 0);
	uint8_t buf[256];
	const char *params[] = {"user", h_env()->appuser, "database", "pgmux", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 3u << 16, params);
	cr_assert(h_raw_send(fd, buf, len));
	/* AuthenticationOk and what follows a login may come first; the ErrorResponse must follow. */
	h_raw_expect_fatal(fd, "42501", "permission denied", "RSKN", "app logging in to the admin console");
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ admin roles */

TestSuite(admin_roles, .fini = h_teardown, .timeout = 60);

/* A user in stats_users looks (SHOW) but cannot act; an admin still can. */
Test(admin_roles, a_stats_user_may_show_but_not_pause_or_shut_down)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.admin_users = h_env()->superuser;
	o.extra_pgmux = "stats_users = app\n";
	pgmux_start_ok(&px, &o);

	PGconn *stats = h_admin_connect(&px, h_env()->appuser, h_env()->apppass);
	cr_assert_not_null(stats, "a stats user cannot log in to the console");
	cr_expect_str_eq(h_command_outcome(stats, "SHOW POOLS"), "SHOW");
	cr_expect_str_eq(h_command_outcome(stats, "SHOW STATS"), "SHOW");
	cr_expect_str_eq(h_command_outcome(stats, "show clients"), "SHOW");
	static const char *const refused[] = {"PAUSE", "RESUME", "RELOAD", "KILL 1", "SHUTDOWN",
					      "CUTOVER TO '127.0.0.1:1'", NULL};
	for (int i = 0; refused[i]; i++)
		cr_expect_str_eq(h_command_outcome(stats, refused[i]), "ERROR 42501", "%s", refused[i]);
	/* The extended protocol runs the same check. */
	PGresult *res = PQexecParams(stats, "SHUTDOWN", 0, NULL, NULL, NULL, NULL, 0);
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	cr_expect_str_eq(state ? state : "", "42501");
	PQclear(res);
	cr_expect(pgmux_running(&px), "a stats user's SHUTDOWN stopped pgmux");
	cr_expect(h_file_count(px.logfile, "is in stats_users, which may only run SHOW commands") == 0,
		  "the refusal is for the client, not a log line of its own");
	PQfinish(stats);

	PGconn *admin = h_admin_connect(&px, h_env()->superuser, h_env()->superpass);
	cr_assert_not_null(admin);
	cr_expect_str_eq(h_command_outcome(admin, "PAUSE"), "PAUSE");
	cr_expect_str_eq(h_command_outcome(admin, "RESUME"), "RESUME");
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* client_auth = trust hands the console to whoever names an admin: a WARNING at start and at each reload. */
Test(admin_roles, trust_logs_a_warning_at_start_and_reload)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.client_auth = "trust";
	o.admin_users = h_env()->superuser;
	pgmux_start_ok(&px, &o);
	const char *warning = "WARNING: client_auth = trust: clients log in without a password, and anyone who names "
			      "a user in admin_users gets the admin console";
	cr_expect_eq(h_file_count(px.logfile, warning), 1);
	pgmux_signal(&px, SIGHUP);
	cr_expect(h_file_wait_count(px.logfile, warning, 2, h_scaled_ms(5000)), "no warning at reload");
	h_stop_expect_clean_exit(&px);
}

/* Without trust, no such warning. */
Test(admin_roles, scram_logs_no_trust_warning)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	pgmux_start_ok(&px, &o);
	PGconn *conn = h_app_session(&px, "disable", NULL);
	PQfinish(conn);
	cr_expect_eq(h_file_count(px.logfile, "client_auth = trust"), 0);
	h_stop_expect_clean_exit(&px);
}
