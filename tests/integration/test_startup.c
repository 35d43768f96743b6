/*
 * test_integration.c: end-to-end tests that drive real clients (psql, pgbench,
 * libpq and hand-made bytes) through a real pgmux to the PostgreSQL that
 * pg-env.sh started. Each test's .init starts a pgmux with the configuration
 * the test needs; the test ends by stopping it and asserting a clean exit
 * (status 0, and under valgrind no memory errors or leaks); .fini kills
 * whatever is left should the test have failed half way.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static struct pgmux px;

/* ---------------------------------------------------------------- fixtures */

static void start_pgmux(struct pgmux_options *o)
{
	cr_assert(pgmux_start(&px, o), "pgmux did not start (config %s)", px.config);
}

/* TLS offered and required, SCRAM. */
static void init_tls_required(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.require_tls = true;
	start_pgmux(&o);
}

/* TLS offered, not required, SCRAM. */
static void init_tls_optional(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	start_pgmux(&o);
}

/* No TLS at all, SCRAM. */
static void init_no_tls(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.tls = false;
	start_pgmux(&o);
}

static void init_md5(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.tls = false;
	o.client_auth = "md5";
	start_pgmux(&o);
}

static void init_trust(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.tls = false;
	o.client_auth = "trust";
	start_pgmux(&o);
}

static void init_pgbench(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.require_tls = true;
	o.pool_mode = "session";
	o.max_connections = 40;
	start_pgmux(&o);
}

static void init_pool_of_2(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.max_connections = 2;
	start_pgmux(&o);
}

static void init_pool_of_1(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.max_connections = 1;
	start_pgmux(&o);
}

static void fini_kill_leftovers(void)
{
	h_teardown();
}

/* ---------------------------------------------------------------- client helpers */

#define CLIENT_TIMEOUT_MS 20000

/*
 * psql -X -w -At -c SQL "conninfo" with the password (if any) in PGPASSWORD
 * and no password file. Returns the exit status.
 */
static int run_psql(struct h_cmd *c, const char *user, const char *password, const char *sslmode,
		    const char *extra_conninfo, const char *sql)
{
	const struct h_env *e = h_env();
	char psql[600], pw[256];
	snprintf(psql, sizeof(psql), "%s/psql", e->pgbin);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", password ? password : "");
	char *ci = h_conninfo(px.port, user, NULL, sslmode, extra_conninfo);
	const char *argv[] = {psql, "-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, ci, NULL};
	const char *env[] = {password ? pw : "PGPASSFILE=/dev/null", "PGCONNECT_TIMEOUT=10", NULL};
	int st = h_cmd_run(c, argv, env, h_scaled_ms(CLIENT_TIMEOUT_MS));
	free(ci);
	return st;
}

static void start_psql(struct h_cmd *c, const char *sslmode, const char *sql)
{
	const struct h_env *e = h_env();
	char psql[600], pw[256];
	snprintf(psql, sizeof(psql), "%s/psql", e->pgbin);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	char *ci = h_conninfo(px.port, e->appuser, NULL, sslmode, NULL);
	const char *argv[] = {psql, "-X", "-w", "-A", "-t", "-c", sql, ci, NULL};
	const char *env[] = {pw, "PGCONNECT_TIMEOUT=10", NULL};
	cr_assert(h_cmd_start(c, argv, env));
	free(ci);
}

/* A psql started with SECOND_CLIENT_SQL that waited for a backend must now be served (and is freed). */
#define SECOND_CLIENT_SQL "select 'second got in'"
static void expect_second_client_served(struct h_cmd *c)
{
	bool ended = h_cmd_wait(c, h_scaled_ms(10000));
	if (!ended)
		h_cmd_kill(c);
	if (!ended || c->status != 0)
		h_cmd_dump(c, "second psql");
	cr_assert(ended, "the second client was not served after the first left");
	cr_assert_eq(c->status, 0);
	cr_assert_str_eq(c->out, "second got in\n");
	h_cmd_free(c);
}

static PGconn *connect_app_ok(const char *sslmode, const char *extra)
{
	PGconn *conn = h_connect_app(px.port, sslmode, extra);
	if (PQstatus(conn) != CONNECTION_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQstatus(conn), CONNECTION_OK, "connecting to pgmux as app failed: %s",
		     PQerrorMessage(conn));
	return conn;
}

static void expect_value(PGconn *conn, const char *sql, const char *want)
{
	char *v = h_value_ok(conn, sql);
	cr_expect_str_eq(v, want, "\"%s\" returned \"%s\", expected \"%s\"", sql, v, want);
	free(v);
}

/* A fresh client must still get a working session (pgmux not harmed by what came before). */
static void expect_serves_normal_client(void)
{
	cr_assert(pgmux_running(&px), "pgmux is no longer running");
	PGconn *conn = connect_app_ok("prefer", NULL);
	expect_value(conn, "select 40 + 2", "42");
	PQfinish(conn);
}

/* A query for the direct superuser connection: is app's pg_sleep running? */
#define SLEEP_ACTIVE_SQL(seconds)                                                                  \
	"select count(*) from pg_stat_activity where usename = 'app' and state = 'active' and "    \
	"query like 'select pg_sleep(" #seconds ")%'"

/* ================================================================ 1-3: TLS + SCRAM */

TestSuite(tls_scram, .init = init_tls_required, .fini = fini_kill_leftovers, .timeout = 120);

Test(tls_scram, psql_select_1)
{
	struct h_cmd c;
	int st = run_psql(&c, "app", h_env()->apppass, "require", NULL, "select 1");
	if (st != 0)
		h_cmd_dump(&c, "psql");
	cr_assert_eq(st, 0, "psql exited with %d: %s", st, c.err);
	cr_assert_str_eq(c.out, "1\n");
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

Test(tls_scram, libpq_ssl_in_use_and_backend_identity)
{
	PGconn *conn = connect_app_ok("require", NULL);
	cr_assert_eq(PQsslInUse(conn), 1, "PQsslInUse is %d through pgmux with sslmode=require",
		     PQsslInUse(conn));
	PGresult *r = PQexec(conn, "select current_user, inet_server_port()");
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "app");
	cr_assert_eq(atoi(PQgetvalue(r, 0, 1)), h_env()->pgport,
		     "inet_server_port() is %s, expected PostgreSQL's port %d", PQgetvalue(r, 0, 1),
		     h_env()->pgport);
	PQclear(r);
	PQfinish(conn);

	/* pgmux presents the configured certificate: verify-full against the test CA works. */
	char extra[600];
	snprintf(extra, sizeof(extra), "sslrootcert=%s", h_env()->ca);
	conn = connect_app_ok("verify-full", extra);
	cr_assert_eq(PQsslInUse(conn), 1);
	expect_value(conn, "select 1", "1");
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

/* Over TLS pgmux offers SCRAM-SHA-256-PLUS: a client that insists on channel binding gets it. */
Test(tls_scram, channel_binding_required_by_the_client)
{
	PGconn *conn = connect_app_ok("require", "channel_binding=require");

	cr_assert_eq(PQsslInUse(conn), 1);
	expect_value(conn, "select 'bound'", "bound");
	PQfinish(conn);

	/* A wrong password with channel binding still fails as a wrong password. */
	char *ci = h_conninfo(px.port, "app", "not-the-password", "require", "channel_binding=require");
	conn = PQconnectdb(ci);
	free(ci);
	cr_assert_neq(PQstatus(conn), CONNECTION_OK, "a wrong password logged in with channel binding");
	cr_assert(strstr(PQerrorMessage(conn), "password authentication failed for user \"app\"") != NULL,
		  "unexpected message: %s", PQerrorMessage(conn));
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

Test(tls_scram, wrong_password_is_refused)
{
	struct h_cmd c;
	int st = run_psql(&c, "app", "not-the-password", "require", NULL, "select 1");
	cr_assert_neq(st, 0, "psql with a wrong password succeeded: %s", c.out);
	cr_assert(st > 0 && st < 128, "psql died from a signal or timed out (%d)", st);
	cr_assert(strstr(c.err, "password authentication failed for user \"app\"") != NULL,
		  "psql's stderr lacks the 28P01 message: %s", c.err);
	h_cmd_free(&c);

	/* A user without a secret gets no hint that it does not exist. */
	char *ci = h_conninfo(px.port, "nosuchuser", "whatever", "require", NULL);
	PGconn *conn = PQconnectdb(ci);
	free(ci);
	cr_assert_neq(PQstatus(conn), CONNECTION_OK, "an unknown user logged in");
	cr_expect(strstr(PQerrorMessage(conn), "password authentication failed for user \"nosuchuser\"") != NULL,
		  "unexpected message for an unknown user: %s", PQerrorMessage(conn));
	PQfinish(conn);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

Test(tls_scram, plaintext_refused_when_tls_required)
{
	struct h_cmd c;
	int st = run_psql(&c, "app", h_env()->apppass, "disable", NULL, "select 1");
	cr_assert_neq(st, 0, "psql without TLS got in although require_tls=true: %s", c.out);
	cr_assert(st > 0 && st < 128, "psql died from a signal or timed out (%d)", st);
	cr_assert(strstr(c.err, "requires TLS connections") != NULL,
		  "psql's stderr does not say that TLS is required: %s", c.err);
	h_cmd_free(&c);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 4-5: md5, trust */

/* Send a StartupMessage for app and return the first message's auth code ('R'), or -1. */
static int first_auth_request(const char *user, char **body_out, size_t *len_out)
{
	int fd = h_raw_connect(px.port, 2000);
	cr_assert(fd >= 0, "cannot connect to pgmux");
	uint8_t buf[256];
	const char *params[] = {"user", user, "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len));
	char type;
	char *body;
	size_t blen;
	enum h_msg_result r = h_raw_read_message(fd, &type, &body, &blen, h_scaled_ms(3000));
	close(fd);
	cr_assert_eq(r, H_MSG_OK, "no reply to a StartupMessage (%d)", r);
	cr_assert_eq(type, 'R', "expected an authentication request, got '%c'", type);
	cr_assert(blen >= 4);
	int code = (int)h_get_u32(body);
	if (body_out) {
		*body_out = body;
		*len_out = blen;
	} else {
		free(body);
	}
	return code;
}

TestSuite(md5, .init = init_md5, .fini = fini_kill_leftovers, .timeout = 120);

Test(md5, right_password_logs_in_wrong_one_does_not)
{
	char *body;
	size_t blen;
	int code = first_auth_request("app", &body, &blen);
	cr_assert_eq(code, 5, "client_auth=md5 asked for authentication type %d, not 5 (MD5)", code);
	cr_assert_eq(blen, 8u, "AuthenticationMD5Password must carry a 4-byte salt");
	free(body);

	struct h_cmd c;
	int st = run_psql(&c, "app", h_env()->apppass, "disable", NULL, "select current_user");
	if (st != 0)
		h_cmd_dump(&c, "psql");
	cr_assert_eq(st, 0);
	cr_assert_str_eq(c.out, "app\n");
	h_cmd_free(&c);

	st = run_psql(&c, "app", "wrong-password", "disable", NULL, "select 1");
	cr_assert(st > 0 && st < 128, "psql with a wrong md5 password: status %d", st);
	cr_assert(strstr(c.err, "password authentication failed for user \"app\"") != NULL, "%s", c.err);
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

TestSuite(trust, .init = init_trust, .fini = fini_kill_leftovers, .timeout = 120);

Test(trust, logs_in_without_password)
{
	int code = first_auth_request("app", NULL, NULL);
	cr_assert_eq(code, 0, "client_auth=trust asked for authentication type %d, not 0 (OK)", code);

	struct h_cmd c;
	int st = run_psql(&c, "app", NULL, "disable", NULL, "select current_user");
	if (st != 0)
		h_cmd_dump(&c, "psql");
	cr_assert_eq(st, 0);
	cr_assert_str_eq(c.out, "app\n");
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 6: pgbench */

TestSuite(pgbench, .init = init_pgbench, .fini = fini_kill_leftovers, .timeout = 180);

Test(pgbench, select_only_32_clients_over_tls)
{
	const struct h_env *e = h_env();
	char pgbench[600], port[16], pw[256];
	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(port, sizeof(port), "%d", px.port);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	/*
	 * Under valgrind, 32 TLS + SCRAM logins alone can take longer than 12 s
	 * (pgbench's -T counts them): one CI run processed nothing in 12.
	 */
	const char *duration = h_under_valgrind() ? "20" : "5";
	const char *argv[] = {pgbench, "-n", "-S", "-c", "32", "-j", "2", "-T", duration, "-h", "127.0.0.1",
			      "-p", port, "-U", "app", "postgres", NULL};
	const char *env[] = {pw, "PGSSLMODE=require", "PGCONNECT_TIMEOUT=30", NULL};
	struct h_cmd c;
	int st = h_cmd_run(&c, argv, env, h_scaled_ms(60000));
	if (st != 0 || strstr(c.out, "number of failed transactions: 0 ") == NULL ||
	    strstr(c.out, "actually processed: 0\n") != NULL)
		h_cmd_dump(&c, "pgbench");
	cr_assert_eq(st, 0, "pgbench exited with %d", st);
	cr_assert(strstr(c.out, "number of failed transactions: 0 ") != NULL,
		  "pgbench reports failed transactions:\n%s", c.out);
	const char *p = strstr(c.out, "number of transactions actually processed: ");
	cr_assert_not_null(p, "no transaction count in pgbench's output:\n%s", c.out);
	long processed = strtol(p + strlen("number of transactions actually processed: "), NULL, 10);
	cr_assert_gt(processed, 0, "pgbench processed no transactions");
	cr_log_info("pgbench through pgmux: %ld transactions", processed);
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 7: cancel */

TestSuite(cancel, .init = init_tls_optional, .fini = fini_kill_leftovers, .timeout = 120);

Test(cancel, psql_sigint_sends_cancel_request)
{
	PGconn *super = h_connect_super_direct();
	struct h_cmd c;
	start_psql(&c, "require", "select pg_sleep(20)");
	bool active = h_poll_value(super, SLEEP_ACTIVE_SQL(20), "1", h_scaled_ms(10000));
	if (!active) {
		h_cmd_kill(&c);
		h_cmd_dump(&c, "psql");
	}
	cr_assert(active, "pg_sleep(20) never became active in pg_stat_activity");

	kill(c.pid, SIGINT);
	bool ended = h_cmd_wait(&c, h_scaled_ms(2000));
	if (!ended)
		h_cmd_kill(&c);
	cr_assert(ended, "psql did not end within 2 s of SIGINT (CancelRequest not forwarded?)");
	cr_assert(c.status > 0 && c.status < 128, "psql status %d", c.status);
	cr_assert(strstr(c.err, "canceling statement due to user request") != NULL,
		  "psql's stderr: %s", c.err);
	h_cmd_free(&c);
	/* the backend is no longer sleeping */
	cr_assert(h_poll_value(super, SLEEP_ACTIVE_SQL(20), "0", h_scaled_ms(5000)));
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

Test(cancel, libpq_pqcancel_gives_57014)
{
	PGconn *super = h_connect_super_direct();
	PGconn *conn = connect_app_ok("require", NULL);
	cr_assert_eq(PQsendQuery(conn, "select pg_sleep(20)"), 1, "%s", PQerrorMessage(conn));
	cr_assert(h_poll_value(super, SLEEP_ACTIVE_SQL(20), "1", h_scaled_ms(10000)),
		  "pg_sleep(20) never became active");

	PGcancel *cancel = PQgetCancel(conn);
	cr_assert_not_null(cancel);
	char errbuf[256];
	cr_assert_eq(PQcancel(cancel, errbuf, sizeof(errbuf)), 1, "PQcancel: %s", errbuf);
	PQfreeCancel(cancel);

	PGresult *r = h_get_result(conn, h_scaled_ms(1000));
	cr_assert_not_null(r, "no result within 1 s of the cancel request");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "status %s",
		     PQresStatus(PQresultStatus(r)));
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert_not_null(state);
	cr_assert_str_eq(state, "57014");
	PQclear(r);
	while ((r = h_get_result(conn, 2000)) != NULL)
		PQclear(r);

	/* The session survives a cancelled query. */
	expect_value(conn, "select 'still here'", "still here");
	PQfinish(conn);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 8: COPY */

TestSuite(copy, .init = init_tls_optional, .fini = fini_kill_leftovers, .timeout = 120);

#define COPY_ROWS 10000

static uint64_t fnv1a(uint64_t h, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 1099511628211ULL;
	}
	return h;
}

Test(copy, libpq_copy_in_and_out_10000_rows)
{
	PGconn *conn = connect_app_ok("require", NULL);
	PGresult *r = PQexec(conn, "create temp table copy_t (id int primary key, v text)");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
	PQclear(r);

	r = PQexec(conn, "copy copy_t from stdin");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN, "%s", PQerrorMessage(conn));
	PQclear(r);
	uint64_t sent_hash = 14695981039346656037ULL;
	long long sum = 0;
	char chunk[8192];
	size_t used = 0;
	for (int i = 1; i <= COPY_ROWS; i++) {
		char line[128];
		int n = snprintf(line, sizeof(line), "%d\trow %d: \\\\ tab\\there %08x\n", i, i,
				 (unsigned)(i * 2654435761u));
		sent_hash = fnv1a(sent_hash, line, (size_t)n);
		sum += i;
		if (used + (size_t)n > sizeof(chunk)) {
			cr_assert_eq(PQputCopyData(conn, chunk, (int)used), 1, "%s", PQerrorMessage(conn));
			used = 0;
		}
		memcpy(chunk + used, line, (size_t)n);
		used += (size_t)n;
	}
	cr_assert_eq(PQputCopyData(conn, chunk, (int)used), 1);
	cr_assert_eq(PQputCopyEnd(conn, NULL), 1);
	r = PQgetResult(conn);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "COPY FROM failed: %s", PQerrorMessage(conn));
	cr_assert_str_eq(PQcmdTuples(r), "10000");
	PQclear(r);
	while ((r = PQgetResult(conn)) != NULL)
		PQclear(r);

	char want_sum[64];
	snprintf(want_sum, sizeof(want_sum), "%d|%lld", COPY_ROWS, sum);
	expect_value(conn, "select count(*) || '|' || sum(id) from copy_t", want_sum);

	r = PQexec(conn, "copy (select * from copy_t order by id) to stdout");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_OUT, "%s", PQerrorMessage(conn));
	PQclear(r);
	uint64_t got_hash = 14695981039346656037ULL;
	int rows = 0;
	char *buf;
	int n;
	while ((n = PQgetCopyData(conn, &buf, 0)) > 0) {
		got_hash = fnv1a(got_hash, buf, (size_t)n);
		rows++;
		PQfreemem(buf);
	}
	cr_assert_eq(n, -1, "COPY TO STDOUT ended with %d: %s", n, PQerrorMessage(conn));
	r = PQgetResult(conn);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
	PQclear(r);
	while ((r = PQgetResult(conn)) != NULL)
		PQclear(r);
	cr_assert_eq(rows, COPY_ROWS);
	cr_assert_eq(got_hash, sent_hash, "the rows read back differ from the rows written");

	/* A CopyFail ends the COPY with an error and leaves the session usable. */
	r = PQexec(conn, "copy copy_t from stdin");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN);
	PQclear(r);
	cr_assert_eq(PQputCopyData(conn, "20001\tpartial\n", 14), 1);
	cr_assert_eq(PQputCopyEnd(conn, "client gave up"), 1);
	r = PQgetResult(conn);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "57014");
	PQclear(r);
	while ((r = PQgetResult(conn)) != NULL)
		PQclear(r);
	expect_value(conn, "select count(*) from copy_t", "10000");
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

Test(copy, psql_backslash_copy_both_ways)
{
	char data[600];
	snprintf(data, sizeof(data), "%s/rows.txt", h_test_dir());
	FILE *f = fopen(data, "w");
	cr_assert_not_null(f);
	for (int i = 1; i <= COPY_ROWS; i++)
		fprintf(f, "%d\n", i);
	fclose(f);

	/* psql's \copy streams the file through COPY FROM STDIN / TO STDOUT */
	char script[600];
	snprintf(script, sizeof(script), "%s/copy.sql", h_test_dir());
	f = fopen(script, "w");
	cr_assert_not_null(f);
	fprintf(f, "create temp table t (a int);\n\\copy t from '%s'\nselect count(*) || '|' || sum(a) from t;\n"
		   "\\copy (select a * 2 from t order by a) to '%s.out'\n", data, data);
	fclose(f);

	const struct h_env *e = h_env();
	char psql[600], pw[256];
	snprintf(psql, sizeof(psql), "%s/psql", e->pgbin);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	char *ci = h_conninfo(px.port, "app", NULL, "require", NULL);
	const char *argv[] = {psql, "-X", "-w", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", script, ci, NULL};
	const char *env[] = {pw, NULL};
	struct h_cmd c;
	int st = h_cmd_run(&c, argv, env, h_scaled_ms(CLIENT_TIMEOUT_MS));
	free(ci);
	if (st != 0)
		h_cmd_dump(&c, "psql");
	cr_assert_eq(st, 0);
	cr_assert_str_eq(c.out, "10000|50005000\n");
	h_cmd_free(&c);

	char outpath[700];
	snprintf(outpath, sizeof(outpath), "%s.out", data);
	f = fopen(outpath, "r");
	cr_assert_not_null(f, "\\copy to a file wrote nothing");
	long long sum = 0;
	int rows = 0, v;
	while (fscanf(f, "%d", &v) == 1) {
		sum += v;
		rows++;
	}
	fclose(f);
	cr_assert_eq(rows, COPY_ROWS);
	cr_assert_eq(sum, 2LL * 50005000);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 9: notices and errors */

TestSuite(session, .init = init_tls_optional, .fini = fini_kill_leftovers, .timeout = 120);

struct notices {
	int count;
	char last[256];
};

static void on_notice(void *arg, const PGresult *r)
{
	struct notices *n = arg;
	n->count++;
	const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	snprintf(n->last, sizeof(n->last), "%s", msg ? msg : "");
}

Test(session, notice_then_error_then_query)
{
	PGconn *conn = connect_app_ok("require", NULL);
	struct notices n = {0};
	PQsetNoticeReceiver(conn, on_notice, &n);

	PGresult *r = PQexec(conn, "DO $$BEGIN RAISE NOTICE 'hello %', 42; END$$");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
	PQclear(r);
	cr_assert_eq(n.count, 1, "expected one notice, got %d", n.count);
	cr_assert_str_eq(n.last, "hello 42");

	r = PQexec(conn, "select 1/0");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22012");
	PQclear(r);
	cr_assert_eq(PQstatus(conn), CONNECTION_OK);

	expect_value(conn, "select 2", "2");
	/* an error inside a transaction block, then ROLLBACK, then more work */
	PQclear(PQexec(conn, "begin"));
	r = PQexec(conn, "select 1/0");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	PQclear(r);
	cr_assert_eq(PQtransactionStatus(conn), PQTRANS_INERROR);
	PQclear(PQexec(conn, "rollback"));
	cr_assert_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
	expect_value(conn, "select 3", "3");
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 11: startup parameters */

Test(session, startup_parameters_are_kept)
{
	PGconn *super = h_connect_super_direct();
	PGconn *conn = connect_app_ok("require", "application_name=foo options='-c statement_timeout=1234'");
	expect_value(conn, "show application_name", "foo");
	expect_value(conn, "show statement_timeout", "1234ms");
	cr_assert_str_eq(PQparameterStatus(conn, "application_name"), "foo");

	char *pid = h_value_ok(conn, "select pg_backend_pid()");
	char sql[200];
	snprintf(sql, sizeof(sql), "select application_name from pg_stat_activity where pid = %s", pid);
	expect_value(super, sql, "foo");
	free(pid);
	PQfinish(conn);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 15: BackendKeyData */

Test(session, backend_key_is_pgmux_own)
{
	PGconn *conn = connect_app_ok("require", NULL);
	char *pid = h_value_ok(conn, "select pg_backend_pid()");
	cr_assert_neq(PQbackendPID(conn), atoi(pid),
		      "pgmux passed the backend's own pid (%d) through in BackendKeyData", atoi(pid));
	cr_assert_neq(PQbackendPID(conn), 0);
	free(pid);
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 13: client vanishes */

Test(session, client_killed_mid_query_does_not_harm_others)
{
	PGconn *super = h_connect_super_direct();
	PGconn *other = connect_app_ok("require", NULL);
	expect_value(other, "select 1", "1");

	struct h_cmd c;
	start_psql(&c, "require", "select pg_sleep(60)");
	cr_assert(h_poll_value(super, SLEEP_ACTIVE_SQL(60), "1", h_scaled_ms(10000)),
		  "pg_sleep(60) never became active");
	h_cmd_kill(&c);
	h_cmd_free(&c);

	/* PostgreSQL would run the statement to its end: pgmux cancels it. */
	bool ended = h_poll_value(super, SLEEP_ACTIVE_SQL(60), "0", h_scaled_ms(5000));
	if (!ended) {
		pgmux_dump_logs(&px);
		h_exec_ok(super, "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app' and "
				 "query like 'select pg_sleep(60)%'");
	}
	cr_assert(ended, "the killed client's pg_sleep(60) still ran 5 s after pgmux closed its backend");
	expect_value(other, "select 'other session fine'", "other session fine");
	expect_serves_normal_client();
	PQfinish(other);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 10: malformed startup */

TestSuite(startup, .init = init_tls_optional, .fini = fini_kill_leftovers, .timeout = 120);

static int raw_open(void)
{
	int fd = h_raw_connect(px.port, 2000);
	cr_assert(fd >= 0, "cannot connect to pgmux's port %d", px.port);
	return fd;
}

/* An ErrorResponse body must say FATAL with one of the SQLSTATEs (NULL-terminated). */
static void expect_fatal_body(const char *body, size_t len, const char *const sqlstates[], const char *what)
{
	const char *sev = h_error_field(body, len, 'V');
	if (!sev)
		sev = h_error_field(body, len, 'S');
	cr_assert(sev && strcmp(sev, "FATAL") == 0, "%s: severity %s, expected FATAL", what, sev ? sev : "(none)");
	const char *code = h_error_field(body, len, 'C');
	cr_assert_not_null(code, "%s: ErrorResponse without SQLSTATE", what);
	bool allowed = false;
	for (int i = 0; sqlstates[i]; i++)
		if (strcmp(code, sqlstates[i]) == 0)
			allowed = true;
	const char *msg = h_error_field(body, len, 'M');
	cr_assert(allowed, "%s: SQLSTATE %s (%s) not expected", what, code, msg ? msg : "");
}

/*
 * The connection must be refused within limit_ms: either closed or (when
 * error_required, only) an ErrorResponse as expect_fatal_body() wants,
 * followed by a close. Closes fd.
 */
static void expect_refused_within(int fd, const char *const sqlstates[], bool error_required, int limit_ms,
				  const char *what)
{
	long long t0 = h_now_ms();
	char type;
	char *body;
	size_t len;
	enum h_msg_result r = h_raw_read_message(fd, &type, &body, &len, limit_ms);
	cr_assert_neq(r, H_MSG_TIMEOUT, "%s: neither an error nor a close within %d ms", what, limit_ms);
	cr_assert(r == H_MSG_OK || !error_required, "%s: closed without an ErrorResponse (%d)", what, r);
	if (r == H_MSG_OK) {
		cr_assert_eq(type, 'E', "%s: expected an ErrorResponse, got message '%c'", what, type);
		expect_fatal_body(body, len, sqlstates, what);
		free(body);
		long long left = limit_ms - (h_now_ms() - t0);
		cr_assert(h_raw_wait_closed(fd, left > 0 ? (int)left : 1),
			  "%s: connection not closed after the FATAL error", what);
	}
	close(fd);
}

/*
 * The connection must be refused within 2 s: either closed, or an
 * ErrorResponse with severity FATAL and one of the SQLSTATEs (NULL-terminated)
 * followed by a close.
 */
static void expect_refused(int fd, const char *const sqlstates[], const char *what)
{
	expect_refused_within(fd, sqlstates, false, h_scaled_ms(2000), what);
}

static const char *const protocol_violation[] = {"08P01", NULL};
static const char *const bad_version[] = {"0A000", "08P01", NULL};
static const char *const no_user[] = {"28000", "08P01", NULL};

static void send_header(int fd, uint32_t len, uint32_t code)
{
	uint8_t b[8];
	h_put_u32(b, len);
	h_put_u32(b + 4, code);
	cr_assert(h_raw_send(fd, b, 8));
}

Test(startup, length_below_8)
{
	int fd = raw_open();
	send_header(fd, 4, 196608);
	expect_refused(fd, protocol_violation, "length 4");
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

/* PostgreSQL's limit of 10,000 bytes is on the packet less its length word. */
Test(startup, length_above_10004)
{
	int fd = raw_open();
	send_header(fd, 10005, 196608);
	expect_refused(fd, protocol_violation, "length 10005");
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

Test(startup, one_gigabyte_length_claim)
{
	int fd = raw_open();
	send_header(fd, 1u << 30, 196608);
	expect_refused(fd, protocol_violation, "length 1 GB");
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

static void bad_version_test(uint32_t version, const char *what)
{
	int fd = raw_open();
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), version, params);
	cr_assert(h_raw_send(fd, buf, len));
	expect_refused(fd, bad_version, what);
	expect_serves_normal_client();
}

Test(startup, protocol_2_0)
{
	bad_version_test(2u << 16, "protocol 2.0");
	h_stop_expect_clean_exit(&px);
}

Test(startup, protocol_4_0)
{
	bad_version_test(4u << 16, "protocol 4.0");
	h_stop_expect_clean_exit(&px);
}

Test(startup, garbage_bytes)
{
	int fd = raw_open();
	const char http[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
	cr_assert(h_raw_send(fd, http, sizeof(http) - 1));
	expect_refused(fd, protocol_violation, "an HTTP request");

	fd = raw_open();
	uint8_t junk[64];
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)(i * 37 + 11);
	h_put_u32(junk, 64);
	cr_assert(h_raw_send(fd, junk, sizeof(junk)));
	expect_refused(fd, bad_version, "64 bytes of junk with a plausible length");
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

Test(startup, truncated_then_closed)
{
	int fd = raw_open();
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len / 2));
	shutdown(fd, SHUT_WR);
	expect_refused(fd, protocol_violation, "half a startup packet, then EOF");

	/* and one that simply vanishes */
	fd = raw_open();
	cr_assert(h_raw_send(fd, buf, 6));
	close(fd);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

Test(startup, missing_user)
{
	int fd = raw_open();
	uint8_t buf[256];
	const char *params[] = {"database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len));
	expect_refused(fd, no_user, "a startup packet without user");
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

Test(startup, unterminated_parameters)
{
	int fd = raw_open();
	uint8_t buf[64];
	memcpy(buf + 8, "user\0app\0database", 17); /* no value, no final NUL */
	h_put_u32(buf, 8 + 17);
	h_put_u32(buf + 4, 196608);
	cr_assert(h_raw_send(fd, buf, 8 + 17));
	expect_refused(fd, protocol_violation, "a startup packet with unterminated parameters");
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

/* Read one message that must arrive, of the given type. */
static char *expect_message(int fd, char want, size_t *len, const char *what)
{
	char type;
	char *body;
	enum h_msg_result r = h_raw_read_message(fd, &type, &body, len, h_scaled_ms(3000));
	cr_assert_eq(r, H_MSG_OK, "%s: no message (%d)", what, r);
	if (type == 'E') {
		const char *m = h_error_field(body, *len, 'M');
		cr_assert_eq(type, want, "%s: got ErrorResponse: %s", what, m ? m : "");
	}
	cr_assert_eq(type, want, "%s: expected '%c', got '%c'", what, want, type);
	return body;
}

/* A plain StartupMessage for app must now be answered with SCRAM (SASL) authentication. */
static void expect_sasl_after_startup(int fd, bool plus_allowed, const char *what)
{
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len));
	size_t blen;
	char *body = expect_message(fd, 'R', &blen, what);
	cr_assert(blen >= 4);
	cr_assert_eq(h_get_u32(body), 10u, "%s: authentication type %u, expected 10 (SASL)", what,
		     h_get_u32(body));
	bool scram = false, plus = false;
	for (size_t i = 4; i < blen && body[i]; i += strlen(body + i) + 1) {
		if (strcmp(body + i, "SCRAM-SHA-256") == 0)
			scram = true;
		if (strcmp(body + i, "SCRAM-SHA-256-PLUS") == 0)
			plus = true;
	}
	cr_assert(scram, "%s: SCRAM-SHA-256 not offered", what);
	if (!plus_allowed)
		cr_assert(!plus, "%s: SCRAM-SHA-256-PLUS offered without TLS", what);
	free(body);
}

Test(startup, ssl_request_answered_S_with_tls)
{
	int fd = raw_open();
	send_header(fd, 8, 80877103);
	char answer = 0;
	cr_assert_eq(h_raw_read(fd, &answer, 1, h_scaled_ms(2000)), 1, "no answer to SSLRequest");
	cr_assert_eq(answer, 'S', "SSLRequest answered '%c' although TLS is configured", answer);
	close(fd);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

Test(startup, gssenc_request_answered_N)
{
	int fd = raw_open();
	send_header(fd, 8, 80877104);
	char answer = 0;
	cr_assert_eq(h_raw_read(fd, &answer, 1, h_scaled_ms(2000)), 1, "no answer to GSSENCRequest");
	cr_assert_eq(answer, 'N', "GSSENCRequest answered '%c'", answer);
	/* the same connection goes on with a plain startup */
	expect_sasl_after_startup(fd, false, "startup after GSSENCRequest");
	close(fd);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

static void negotiate_test(uint32_t version, const char *pq_option)
{
	int fd = raw_open();
	uint8_t buf[256];
	const char *with_opt[] = {"user", "app", "database", "postgres", pq_option, "bar", NULL};
	const char *without[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), version, pq_option ? with_opt : without);
	cr_assert(h_raw_send(fd, buf, len));
	size_t blen;
	char *body = expect_message(fd, 'v', &blen, "NegotiateProtocolVersion");
	cr_assert(blen >= 8);
	/*
	 * The protocol documentation calls this the newest supported minor
	 * version, but PostgreSQL sends its full latest version, 3.0 (196608):
	 * accept both spellings of "3.0".
	 */
	uint32_t newest = h_get_u32(body);
	cr_assert((newest & 0xFFFF) == 0 && (newest >> 16 == 3 || newest >> 16 == 0),
		  "NegotiateProtocolVersion offers version %u.%u, expected 3.0", newest >> 16, newest & 0xFFFF);
	uint32_t n = h_get_u32(body + 4);
	if (pq_option) {
		cr_assert_eq(n, 1u, "%u unrecognized options reported, expected 1", n);
		cr_assert_str_eq(body + 8, pq_option);
	} else {
		cr_assert_eq(n, 0u);
	}
	free(body);
	body = expect_message(fd, 'R', &blen, "authentication after NegotiateProtocolVersion");
	cr_assert_eq(h_get_u32(body), 10u);
	free(body);
	close(fd);
}

Test(startup, protocol_3_1_gets_negotiate_protocol_version)
{
	negotiate_test((3u << 16) | 1, NULL);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

Test(startup, pq_option_gets_negotiate_protocol_version)
{
	negotiate_test(3u << 16, "_pq_.foo");
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

/*
 * What a server does with an opening, as text: "closed" (no byte, then the
 * connection closed), "open" (nothing within the time), "S" or "N" (the
 * answer to an encryption request; then "+open", or what followed), or
 * "E <severity> <SQLSTATE> <message>" and "+closed" after an ErrorResponse.
 */
static void opening_outcome(int port, int wait_ms, const uint8_t *bytes, size_t len, char *out, size_t cap)
{
	int fd = h_raw_connect(port, 2000);
	uint8_t buf[4096];
	size_t got = 0, used = 0;
	long long deadline = h_now_ms() + wait_ms;
	bool closed = false;

	cr_assert(fd >= 0, "cannot connect to port %d", port);
	cr_assert(h_raw_send(fd, bytes, len));
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		long long left = deadline - h_now_ms();
		ssize_t n;

		if (left <= 0 || got == sizeof(buf) || poll(&pfd, 1, (int)left) <= 0)
			break;
		n = recv(fd, buf + got, sizeof(buf) - got, 0);
		if (n <= 0) {
			closed = true;
			break;
		}
		got += (size_t)n;
	}
	close(fd);
	out[0] = '\0';
	if (got > 0 && (buf[0] == 'S' || buf[0] == 'N')) {
		snprintf(out, cap, "%c+", buf[0]);
		used = 1;
	}
	while (used + 5 <= got && buf[used] == 'E') {
		uint32_t mlen = ((uint32_t)buf[used + 1] << 24) | ((uint32_t)buf[used + 2] << 16) |
				((uint32_t)buf[used + 3] << 8) | buf[used + 4];
		const char *body = (const char *)buf + used + 5;
		size_t blen;
		const char *sev, *code, *msg;

		if (mlen < 4 || used + 1 + mlen > got)
			break;
		blen = mlen - 4;
		sev = h_error_field(body, blen, 'V');
		if (sev == NULL)
			sev = h_error_field(body, blen, 'S');
		code = h_error_field(body, blen, 'C');
		msg = h_error_field(body, blen, 'M');
		snprintf(out + strlen(out), cap - strlen(out), "E %s %s %s+", sev ? sev : "?", code ? code : "?",
			 msg ? msg : "?");
		used += 1 + mlen;
	}
	if (used < got)
		snprintf(out + strlen(out), cap - strlen(out), "%zu more bytes (first %d)+", got - used, buf[used]);
	snprintf(out + strlen(out), cap - strlen(out), "%s", closed ? "closed" : "open");
}

/* The same opening to PostgreSQL and to pgmux: the same answer (issue 19). */
static void opening_like_postgres(const uint8_t *bytes, size_t len, const char *what)
{
	char direct[1024], through[1024];

	/* Long enough for a busy machine to fork a backend and close: "open" costs the whole wait. */
	opening_outcome(h_env()->pgport, 1500, bytes, len, direct, sizeof(direct));
	opening_outcome(px.port, h_scaled_ms(1500), bytes, len, through, sizeof(through));
	cr_expect_str_eq(through, direct, "%s: pgmux answered \"%s\", PostgreSQL \"%s\"", what, through, direct);
}

static size_t packet(uint8_t *b, uint32_t len, uint32_t code)
{
	h_put_u32(b, len);
	h_put_u32(b + 4, code);
	return 8;
}

Test(startup, hostile_openings_are_answered_as_postgresql_answers_them)
{
	static const uint32_t lengths[] = {0, 4, 7, 10001, 10004, 10005, 0x7fffffffu, 0xfffffff0u, 1u << 30};
	uint8_t b[512];
	size_t n;
	const char *database_only[] = {"database", "postgres", NULL};
	const char *app[] = {"user", "app", "database", "postgres", NULL};

	for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
		char what[64];

		snprintf(what, sizeof(what), "length %u", lengths[i]);
		n = packet(b, lengths[i], 196608);
		opening_like_postgres(b, n, what);
		/* Only the four bytes of the length. */
		opening_like_postgres(b, 4, what);
	}
	/* A driver that connects and ends at once: Terminate as its first bytes. */
	opening_like_postgres((const uint8_t *)"X\0\0\0\4", 5, "Terminate first");
	opening_like_postgres((const uint8_t *)"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27, "an HTTP request");
	n = h_build_startup(b, sizeof(b), 4u << 16, app);
	opening_like_postgres(b, n, "protocol 4.0");
	n = h_build_startup(b, sizeof(b), 2u << 16, app);
	opening_like_postgres(b, n, "protocol 2.0");
	n = h_build_startup(b, sizeof(b), (1u << 16) | 5, app);
	opening_like_postgres(b, n, "protocol 1.5");
	n = h_build_startup(b, sizeof(b), 0, app);
	opening_like_postgres(b, n, "protocol 0.0");
	n = h_build_startup(b, sizeof(b), (1234u << 16) | 5681, app);
	opening_like_postgres(b, n, "protocol 1234.5681");
	n = h_build_startup(b, sizeof(b), 196608, database_only);
	opening_like_postgres(b, n, "no user");
	/* An SSLRequest with bytes after the code in its packet is still one. */
	n = packet(b, 12, 80877103);
	h_put_u32(b + 8, 0);
	opening_like_postgres(b, 12, "SSLRequest of 12 bytes");
	/* CancelRequests: a wrong length, an unknown key. */
	n = packet(b, 12, 80877102);
	h_put_u32(b + 8, 1);
	opening_like_postgres(b, 12, "CancelRequest of 12 bytes");
	n = packet(b, 16, 80877102);
	h_put_u32(b + 8, 1);
	h_put_u32(b + 12, 2);
	opening_like_postgres(b, 16, "CancelRequest with an unknown key");
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

TestSuite(startup_no_tls, .init = init_no_tls, .fini = fini_kill_leftovers, .timeout = 120);

Test(startup_no_tls, ssl_request_answered_N)
{
	int fd = raw_open();
	send_header(fd, 8, 80877103);
	char answer = 0;
	cr_assert_eq(h_raw_read(fd, &answer, 1, h_scaled_ms(2000)), 1, "no answer to SSLRequest");
	cr_assert_eq(answer, 'N', "SSLRequest answered '%c' although no TLS is configured", answer);
	expect_sasl_after_startup(fd, false, "startup after SSLRequest was refused");
	close(fd);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 12: session pooling */

TestSuite(pool2, .init = init_pool_of_2, .fini = fini_kill_leftovers, .timeout = 120);

Test(pool2, sequential_sessions_reuse_reset_backends)
{
	int pids[5];
	for (int i = 0; i < 5; i++) {
		PGconn *conn = connect_app_ok("require", NULL);
		if (i == 0) {
			PGresult *r = PQexec(conn, "create temp table reuse_marker (x int)");
			cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
			PQclear(r);
			PQclear(PQexec(conn, "set work_mem = '7MB'"));
			expect_value(conn, "show work_mem", "7MB");
		} else {
			expect_value(conn, "select coalesce(to_regclass('pg_temp.reuse_marker')::text, 'gone')", "gone");
			expect_value(conn, "show work_mem", "4MB");
		}
		char *pid = h_value_ok(conn, "select pg_backend_pid()");
		pids[i] = atoi(pid);
		free(pid);
		PQfinish(conn);
	}
	int distinct = 0;
	for (int i = 0; i < 5; i++) {
		bool seen = false;
		for (int j = 0; j < i; j++)
			seen |= pids[j] == pids[i];
		distinct += !seen;
	}
	cr_assert_leq(distinct, 2, "5 sessions used %d backends with max_connections=2 (pids %d %d %d %d %d)",
		      distinct, pids[0], pids[1], pids[2], pids[3], pids[4]);

	PGconn *super = h_connect_super_direct();
	char *n = h_value_ok(super, "select count(*) from pg_stat_activity where usename = 'app' and application_name <> 'pgmux health check'");
	cr_assert_leq(atoi(n), 2, "%s backend connections for app with max_connections=2", n);
	free(n);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

TestSuite(pool1, .init = init_pool_of_1, .fini = fini_kill_leftovers, .timeout = 120);

Test(pool1, second_client_waits_for_the_first)
{
	PGconn *first = connect_app_ok("require", NULL);
	expect_value(first, "select 1", "1");

	struct h_cmd c;
	start_psql(&c, "require", SECOND_CLIENT_SQL);
	/* Give the second client time to be served if pgmux wrongly lets it through. */
	bool ended_early = h_cmd_wait(&c, h_scaled_ms(1000));
	if (ended_early)
		h_cmd_dump(&c, "second psql");
	cr_assert(!ended_early, "the second client did not wait for the only backend");

	PGconn *super = h_connect_super_direct();
	char *n = h_value_ok(super, "select count(*) from pg_stat_activity where usename = 'app' and application_name <> 'pgmux health check'");
	cr_assert_str_eq(n, "1", "max_connections=1 but app has %s backends", n);
	free(n);
	PQfinish(super);

	expect_value(first, "select 'first still works'", "first still works");
	PQfinish(first);
	expect_second_client_served(&c);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ 14: graceful SIGINT */

TestSuite(shutdown, .init = init_tls_optional, .fini = fini_kill_leftovers, .timeout = 120);

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
	PGconn *open = connect_app_ok("require", NULL);
	expect_value(open, "select 1", "1");

	cr_assert_eq(kill(px.pid, SIGINT), 0);
	expect_new_sessions_refused();

	cr_assert(pgmux_running(&px), "pgmux exited although a session was still open");
	expect_value(open, "select 'open session still served'", "open session still served");
	cr_assert(pgmux_running(&px));
	PQfinish(open);

	int st = pgmux_wait_exit(&px, h_scaled_ms(10000));
	cr_assert_neq(st, -2, "pgmux did not exit after its last session ended");
	cr_assert_eq(st, 0, "pgmux exit status after SIGINT: %d", st);
}

/* ================================================================ client_login_timeout */

/* 1 s, pgmux's minimum; longer under valgrind, where a TLS + SCRAM login alone can take a second. */
static int login_timeout_ms(void)
{
	return h_under_valgrind() ? 3000 : 1000;
}

/* The timeout, one backend (so that a client waiting for it can be made to wait past the timeout). */
static void init_login_timeout(void)
{
	struct pgmux_options o;
	char timeout[16];
	pgmux_options_default(&o);
	snprintf(timeout, sizeof(timeout), "%dms", login_timeout_ms());
	o.client_login_timeout = timeout;
	o.max_connections = 1;
	start_pgmux(&o);
}

TestSuite(login_timeout, .init = init_login_timeout, .fini = fini_kill_leftovers, .timeout = 120);

#define LOGIN_TIMEOUT_MESSAGE "canceling authentication due to timeout"

static const char *const login_timed_out[] = {"57014", NULL};

/*
 * A client stalled in its login (connected at connected_ms) must be cut off
 * once client_login_timeout has passed, not before: with FATAL 57014 when
 * error_expected, by a plain close otherwise (in the middle of a TLS
 * handshake, where nothing can be sent).
 */
static void expect_login_timed_out(int fd, long long connected_ms, bool error_expected, const char *what)
{
	int limit = login_timeout_ms() + h_scaled_ms(4000);
	long long left = limit - (h_now_ms() - connected_ms);
	if (error_expected)
		expect_refused_within(fd, login_timed_out, true, left > 0 ? (int)left : 1, what);
	else {
		cr_assert(h_raw_wait_closed(fd, left > 0 ? (int)left : 1), "%s: not closed within %d ms", what, limit);
		close(fd);
	}
	long long waited = h_now_ms() - connected_ms;
	/* A little slack for the two clocks; pgmux's timer never fires early. */
	cr_assert_geq(waited, login_timeout_ms() - 50, "%s: cut off after %lld ms, before client_login_timeout (%d ms)",
		      what, waited, login_timeout_ms());
}

/* The raw bytes of a SASLInitialResponse for SCRAM-SHA-256 without channel binding. */
static size_t build_sasl_initial_response(uint8_t *buf, size_t cap)
{
	static const char mechanism[] = "SCRAM-SHA-256";
	static const char first[] = "n,,n=,r=pgmuxtestnonce0123456789";
	size_t len = 1 + 4 + sizeof(mechanism) + 4 + strlen(first);
	cr_assert_leq(len, cap);
	buf[0] = 'p';
	h_put_u32(buf + 1, (uint32_t)(len - 1));
	memcpy(buf + 5, mechanism, sizeof(mechanism));
	h_put_u32(buf + 5 + sizeof(mechanism), (uint32_t)strlen(first));
	memcpy(buf + 9 + sizeof(mechanism), first, strlen(first));
	return len;
}

Test(login_timeout, stalled_logins_are_cut_off_others_log_in)
{
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t startup_len = h_build_startup(buf, sizeof(buf), 196608, params);

	/* One that sends nothing at all. */
	long long silent_ms = h_now_ms();
	int silent = raw_open();

	/* One that sends half of its startup packet. */
	long long half_ms = h_now_ms();
	int half = raw_open();
	cr_assert(h_raw_send(half, buf, startup_len / 2));

	/* One that stops in the middle of SCRAM: after its client-first-message. */
	long long scram_ms = h_now_ms();
	int scram = raw_open();
	expect_sasl_after_startup(scram, false, "the client that stalls in SCRAM");
	size_t n = build_sasl_initial_response(buf, sizeof(buf));
	cr_assert(h_raw_send(scram, buf, n));
	size_t blen;
	char *body = expect_message(scram, 'R', &blen, "SASLContinue");
	cr_assert(blen >= 4 && h_get_u32(body) == 11u, "expected SASLContinue (11), got authentication type %u",
		  blen >= 4 ? h_get_u32(body) : 0u);
	free(body);

	/* One that asks for TLS and then never starts the handshake. */
	long long tls_ms = h_now_ms();
	int tls = raw_open();
	send_header(tls, 8, 80877103);
	char answer = 0;
	cr_assert_eq(h_raw_read(tls, &answer, 1, h_scaled_ms(2000)), 1, "no answer to SSLRequest");
	cr_assert_eq(answer, 'S');

	/* Meanwhile a real client logs in and works. */
	PGconn *conn = connect_app_ok("require", NULL);
	expect_value(conn, "select 'logged in while others stall'", "logged in while others stall");
	PQfinish(conn);

	expect_login_timed_out(silent, silent_ms, true, "a client that sends nothing");
	expect_login_timed_out(half, half_ms, true, "a client that sends half a startup packet");
	expect_login_timed_out(scram, scram_ms, true, "a client that stops in the middle of SCRAM");
	expect_login_timed_out(tls, tls_ms, false, "a client that stops before its TLS handshake");
	cr_assert(h_file_wait_count(px.logfile, LOGIN_TIMEOUT_MESSAGE, 4, h_scaled_ms(2000)),
		  "pgmux's log does not give the login timeout as the reason 4 times (%d)",
		  h_file_count(px.logfile, LOGIN_TIMEOUT_MESSAGE));

	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

/*
 * The timeout ends with authentication: neither a logged-in session that
 * outlives it nor an authenticated client that waits longer than it for the
 * only backend is cut off.
 */
Test(login_timeout, does_not_apply_after_authentication)
{
	PGconn *first = connect_app_ok("require", NULL);
	expect_value(first, "select 1", "1");

	struct h_cmd c;
	start_psql(&c, "require", SECOND_CLIENT_SQL);
	h_sleep_ms(login_timeout_ms() + 500);
	bool ended_early = h_cmd_wait(&c, 0);
	if (ended_early)
		h_cmd_dump(&c, "second psql");
	cr_assert(!ended_early, "the client waiting for the only backend ended (status %d) before it was free",
		  c.status);

	expect_value(first, "select 'still logged in'", "still logged in");
	PQfinish(first);
	expect_second_client_served(&c);
	cr_assert_eq(h_file_count(px.logfile, LOGIN_TIMEOUT_MESSAGE), 0,
		     "pgmux cut a client off for the login timeout");
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ max_packet_size */

#define MAX_PACKET_SIZE 8192

static void init_max_packet(const char *pool_mode)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = "max_packet_size = 8kB";
	o.pool_mode = pool_mode;
	/* One backend: a refused client that kept its backend would stop everyone else. */
	o.max_connections = 1;
	start_pgmux(&o);
}

static void init_max_packet_session(void)
{
	init_max_packet("session");
}

static void init_max_packet_transaction(void)
{
	init_max_packet("transaction");
}

#define MAX_PACKET_MESSAGE "exceeds max_packet_size"

/* "select length('xxx...')" whose text is text_len bytes long (malloc'd). */
static char *query_of_length(size_t text_len)
{
	static const char head[] = "select length('", tail[] = "')";
	size_t fixed = strlen(head) + strlen(tail);
	cr_assert_gt(text_len, fixed);
	char *q = malloc(text_len + 1);
	cr_assert_not_null(q);
	memcpy(q, head, strlen(head));
	memset(q + strlen(head), 'x', text_len - fixed);
	memcpy(q + text_len - strlen(tail), tail, strlen(tail) + 1);
	return q;
}

/*
 * The first result of a query sent with PQsend* must be pgmux's FATAL 54000
 * for an oversized message (the first: PQexec would return libpq's own
 * "connection closed" result that follows it); the connection is then closed.
 */
static void expect_too_large(PGconn *conn, int sent, const char *what)
{
	cr_assert_eq(sent, 1, "%s: not sent: %s", what, PQerrorMessage(conn));
	PGresult *r = h_get_result(conn, h_scaled_ms(5000));
	cr_assert_not_null(r, "%s: no result", what);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "%s: status %s, expected an error", what,
		     PQresStatus(PQresultStatus(r)));
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *severity = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	cr_assert(state && strcmp(state, "54000") == 0, "%s: SQLSTATE %s, expected 54000: %s", what,
		  state ? state : "(none)", PQerrorMessage(conn));
	cr_assert(severity && strcmp(severity, "FATAL") == 0, "%s: severity %s", what, severity ? severity : "(none)");
	cr_assert(strstr(PQresultErrorMessage(r), MAX_PACKET_MESSAGE) != NULL, "%s: message %s", what,
		  PQresultErrorMessage(r));
	PQclear(r);
	while ((r = h_get_result(conn, h_scaled_ms(5000))) != NULL)
		PQclear(r);
	PGresult *after = PQexec(conn, "select 1");
	cr_assert_neq(PQresultStatus(after), PGRES_TUPLES_OK, "%s: the connection still works", what);
	PQclear(after);
	cr_assert_eq(PQstatus(conn), CONNECTION_BAD, "%s: the connection was not closed", what);
}

/* The largest Query ('Q': text and its NUL) passes; one byte more is refused, and only that client goes. */
static void query_limit_test(void)
{
	PGconn *conn = connect_app_ok("require", NULL);
	char *q = query_of_length(MAX_PACKET_SIZE - 1);
	char want[16];
	snprintf(want, sizeof(want), "%zu", MAX_PACKET_SIZE - 1 - strlen("select length('')"));
	expect_value(conn, q, want);
	free(q);

	q = query_of_length(MAX_PACKET_SIZE);
	expect_too_large(conn, PQsendQuery(conn, q), "a Query one byte over max_packet_size");
	free(q);
	PQfinish(conn);
	cr_assert(h_file_wait_contains(px.logfile, MAX_PACKET_MESSAGE, h_scaled_ms(2000)),
		  "pgmux's log does not say why the client was closed");
	expect_serves_normal_client();
}

TestSuite(max_packet, .init = init_max_packet_session, .fini = fini_kill_leftovers, .timeout = 120);

Test(max_packet, query_over_the_limit_is_refused_with_54000)
{
	query_limit_test();
	h_stop_expect_clean_exit(&px);
}

TestSuite(max_packet_txn, .init = init_max_packet_transaction, .fini = fini_kill_leftovers, .timeout = 120);

Test(max_packet_txn, query_over_the_limit_is_refused_with_54000)
{
	query_limit_test();
	h_stop_expect_clean_exit(&px);
}

/*
 * An oversized message is refused before a backend is borrowed for it: while
 * another client's transaction holds the only backend, the sender gets 54000
 * at once rather than after waiting for that backend.
 */
Test(max_packet_txn, refused_without_waiting_for_a_backend)
{
	/* Both log in first: a login borrows a backend too. */
	PGconn *holder = connect_app_ok("require", NULL);
	PGconn *conn = connect_app_ok("require", NULL);
	h_exec_ok(holder, "begin");
	expect_value(holder, "select 1", "1");

	char *q = query_of_length(MAX_PACKET_SIZE);
	long long t0 = h_now_ms();
	expect_too_large(conn, PQsendQuery(conn, q), "a Query one byte over max_packet_size, all backends busy");
	long long waited = h_now_ms() - t0;
	free(q);
	PQfinish(conn);
	cr_assert_lt(waited, h_scaled_ms(1000), "the oversized Query was refused only after %lld ms", waited);

	expect_value(holder, "select 2", "2");
	h_exec_ok(holder, "commit");
	PQfinish(holder);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

/* A Parse (name, text, NUL, int16 0) checked the same way; a session in a transaction keeps working. */
Test(max_packet_txn, parse_over_the_limit_is_refused_with_54000)
{
	size_t parse_overhead = 1 + 1 + 2; /* the unnamed statement's NUL, the text's NUL, no parameter types */
	PGconn *conn = connect_app_ok("require", NULL);
	char *q = query_of_length(MAX_PACKET_SIZE - parse_overhead);
	PGresult *r = PQprepare(conn, "", q, 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "a Parse of exactly max_packet_size: %s",
		     PQerrorMessage(conn));
	PQclear(r);
	free(q);

	q = query_of_length(MAX_PACKET_SIZE - parse_overhead + 1);
	expect_too_large(conn, PQsendPrepare(conn, "", q, 0, NULL), "a Parse one byte over max_packet_size");
	free(q);
	PQfinish(conn);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ closed mid-message */

TestSuite(mid_message, .init = init_trust, .fini = fini_kill_leftovers, .timeout = 120);

/* A raw session logged in with trust; returns the socket once ReadyForQuery came. */
static int raw_trust_session(void)
{
	int fd = raw_open();
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len));
	for (;;) {
		char type;
		char *body;
		size_t blen;
		enum h_msg_result r = h_raw_read_message(fd, &type, &body, &blen, h_scaled_ms(5000));
		cr_assert_eq(r, H_MSG_OK, "login through pgmux did not finish (%d)", r);
		free(body);
		cr_assert_neq(type, 'E', "login through pgmux failed");
		if (type == 'Z')
			return fd;
	}
}

/*
 * The backend dies in the middle of a 16 MB DataRow: the client does not
 * read, so PostgreSQL blocks in the middle of sending it, and is then
 * terminated (it sends no error inside a message). When the client reads
 * again it must get the part of the row pgmux had, then EOF, with nothing
 * but the value's bytes: an ErrorResponse there would be taken for part of
 * the row.
 */
Test(mid_message, backend_lost_inside_a_message_gets_no_error_appended)
{
	enum { VALUE = 16 * 1024 * 1024 };
	int fd = raw_trust_session();
	const char *sql = "select repeat('x', 16777216)";
	uint8_t q[64];
	q[0] = 'Q';
	h_put_u32(q + 1, (uint32_t)(4 + strlen(sql) + 1));
	memcpy(q + 5, sql, strlen(sql) + 1);
	cr_assert(h_raw_send(fd, q, 5 + strlen(sql) + 1));

	/* RowDescription, then the DataRow's header: its length, one column, the value's length. */
	char type;
	char *body;
	size_t blen;
	cr_assert_eq(h_raw_read_message(fd, &type, &body, &blen, h_scaled_ms(10000)), H_MSG_OK);
	free(body);
	cr_assert_eq(type, 'T');
	uint8_t head[11];
	cr_assert_eq(h_raw_read(fd, head, sizeof(head), h_scaled_ms(10000)), (ssize_t)sizeof(head));
	cr_assert_eq(head[0], 'D');
	cr_assert_eq(h_get_u32(head + 1), 4 + 2 + 4 + VALUE);
	cr_assert_eq(h_get_u32(head + 7), VALUE);

	/* The buffers fill up and the backend blocks in its send; then it is terminated. */
	PGconn *super = h_connect_super_direct();
	h_sleep_ms(300);
	const char *mine = "select count(*) from pg_stat_activity where usename = 'app' and query like 'select repeat%'";
	h_exec_ok(super, "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app' and "
			 "query like 'select repeat%'");
	cr_assert(h_poll_value(super, mine, "0", h_scaled_ms(5000)), "the backend did not end");
	PQfinish(super);

	/* Everything pgmux sends now: only 'x' bytes, fewer than the value's length, then EOF. */
	size_t got = 0, bad_at = 0;
	bool bad = false;
	static char chunk[65536];
	ssize_t n;
	while ((n = h_raw_read(fd, chunk, sizeof(chunk), h_scaled_ms(10000))) > 0) {
		for (ssize_t i = 0; i < n && !bad; i++)
			if (chunk[i] != 'x') {
				bad = true;
				bad_at = got + (size_t)i;
			}
		got += (size_t)n;
	}
	close(fd);
	cr_assert_eq(n, 0, "the stream did not end with EOF (%zd)", n);
	cr_assert(!bad, "byte %zu of the value is not 'x': something was appended inside the DataRow", bad_at);
	cr_assert_lt(got, (size_t)VALUE, "the whole value arrived (%zu bytes): the backend was not cut off", got);
	cr_log_info("mid_message: the session was closed %zu bytes into a %d-byte value", got, VALUE);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ shutdown_timeout */

#define SHUTDOWN_TIMEOUT_MS 1000

static void init_shutdown_timeout(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.shutdown_timeout = "1s";
	start_pgmux(&o);
}

TestSuite(shutdown_timeout, .init = init_shutdown_timeout, .fini = fini_kill_leftovers, .timeout = 120);

/* A notice receiver that keeps the SQLSTATE of the last FATAL error libpq saw while idle. */
static void keep_fatal_sqlstate(void *arg, const PGresult *r)
{
	const char *severity = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	if (severity && strcmp(severity, "FATAL") == 0 && state)
		snprintf(arg, 6, "%s", state);
}

#define APP_BACKENDS_SQL                                                                           \
	"select count(*) from pg_stat_activity where usename = 'app' and "                          \
	"application_name <> 'pgmux health check'"

/*
 * Two sessions in open transactions outlast shutdown_timeout after SIGINT:
 * one running a long query, one idle in its transaction. Both are kept until
 * the timeout, then get FATAL 57P01; pgmux leaves no backend behind and exits
 * with status 0.
 */
Test(shutdown_timeout, sigint_closes_transactions_that_outlast_it)
{
	PGconn *super = h_connect_super_direct();
	PGconn *busy = connect_app_ok("require", NULL);
	PGconn *idle = connect_app_ok("require", NULL);
	char idle_sqlstate[6] = "";
	PQsetNoticeReceiver(idle, keep_fatal_sqlstate, idle_sqlstate);
	h_exec_ok(idle, "begin");
	expect_value(idle, "select 'in a transaction'", "in a transaction");
	h_exec_ok(busy, "begin");
	cr_assert_eq(PQsendQuery(busy, "select pg_sleep(60)"), 1, "%s", PQerrorMessage(busy));
	cr_assert(h_poll_value(super, SLEEP_ACTIVE_SQL(60), "1", h_scaled_ms(10000)),
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
	cr_assert_str_eq(idle_sqlstate, "57P01", "the session idle in its transaction did not get FATAL 57P01");
	/*
	 * pgmux closed both backends. PostgreSQL does not watch the socket during
	 * a query: the sleeping one ends because pgmux cancelled its statement
	 * before closing it, not 60 s later.
	 */
	if (!h_poll_value(super, APP_BACKENDS_SQL, "0", h_scaled_ms(5000))) {
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

TestSuite(pidfile, .fini = fini_kill_leftovers, .timeout = 120);

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
	start_pgmux(&o);
	expect_pidfile_holds(px.pid);
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
	expect_pidfile_gone();

	/* The graceful way out removes it too. */
	start_pgmux(&o);
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
	start_pgmux(&o);
	expect_pidfile_holds(px.pid);

	struct pgmux second;
	memset(&second, 0, sizeof(second));
	o.listen_port = px.port;
	int st = pgmux_run_to_exit(&second, &o, h_scaled_ms(10000));
	cr_assert_eq(st, 1, "a second pgmux on the same port exited with %d, expected 1", st);
	expect_pidfile_holds(px.pid);
	expect_serves_normal_client();
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
	start_pgmux(&o);
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
	expect_serves_normal_client();
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
	start_pgmux(&o);
	cr_assert_neq(getsid(px.pid), getsid(0), "the daemon did not leave the test's session");
	cr_assert_neq(getsid(px.pid), px.pid, "the daemon is a session leader (it could get a terminal)");
	expect_serves_normal_client();
	h_stop_expect_clean_exit(&px);
	expect_pidfile_gone();
}
