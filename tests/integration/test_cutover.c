/*
 * test_cutover.c: end-to-end tests of what lets pgmux change servers and
 * credentials without dropping clients: reload (SIGHUP and the admin RELOAD),
 * cutover to another PostgreSQL under pgbench load, the admin console's
 * commands over both query protocols, the pause/resume signals, and password
 * rotation through the secrets directory. Cutover tests start a second
 * PostgreSQL of their own (h_pg_start); everything a test creates on the
 * suite's server (a database, a role) is dropped again by its .fini.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct pgmux px;
static struct h_pg pgb;         /* the second server, B, of the cutover tests */
static bool cutover_db_created; /* .fini drops the "cutover" database on the suite's server A */
static bool rot_role_created;   /* .fini drops the "rot" role on A */

#define DB "cutover" /* the database the cutover tests run pgbench in, on A and on B */
#define CLIENT_TIMEOUT_MS 20000

/* ---------------------------------------------------------------- small helpers */

static char *conninfo_db(int port, const char *user, const char *password, const char *dbname)
{
	char *s = NULL;
	int n = asprintf(&s, "host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable connect_timeout=10",
			 port, user, password, dbname);
	cr_assert(n > 0);
	return s;
}

static PGconn *connect_db(int port, const char *user, const char *password, const char *dbname)
{
	char *ci = conninfo_db(port, user, password, dbname);
	PGconn *conn = PQconnectdb(ci);
	free(ci);
	return conn;
}

static PGconn *connect_ok(int port, const char *user, const char *password, const char *dbname)
{
	PGconn *conn = connect_db(port, user, password, dbname);
	if (PQstatus(conn) != CONNECTION_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQstatus(conn), CONNECTION_OK, "connecting as %s to %s on port %d failed: %s", user, dbname,
		     port, PQerrorMessage(conn));
	return conn;
}

/* The app user through pgmux, to dbname. */
static PGconn *app_ok(const char *dbname)
{
	return connect_ok(px.port, h_env()->appuser, h_env()->apppass, dbname);
}

/* The admin console (the suite's superuser is the admin user). */
static PGconn *admin_ok(void)
{
	return connect_ok(px.port, h_env()->superuser, h_env()->superpass, "pgmux");
}

static char *value_ok(PGconn *conn, const char *sql)
{
	char *v = h_query_value(conn, sql);
	if (!v)
		pgmux_dump_logs(&px);
	cr_assert_not_null(v, "query \"%s\" failed: %s", sql, PQerrorMessage(conn));
	return v;
}

static long long number_ok(PGconn *conn, const char *sql)
{
	char *v = value_ok(conn, sql);
	long long n = atoll(v);
	free(v);
	return n;
}

/* Run sql and require a result set. */
static PGresult *rows_ok(PGconn *conn, const char *sql)
{
	PGresult *r = PQexec(conn, sql);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "\"%s\": %s %s", sql, PQresStatus(PQresultStatus(r)),
		     PQerrorMessage(conn));
	return r;
}

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

/* The value of column val_col in the row whose key_col is key (malloc'd); fails when absent. */
static char *lookup(PGconn *admin, const char *command, const char *key_col, const char *key, const char *val_col)
{
	PGresult *r = rows_ok(admin, command);
	int i = find_row(r, key_col, key);
	cr_assert_geq(i, 0, "%s has no row with %s = %s", command, key_col, key);
	char *v = strdup(PQgetvalue(r, i, column(r, val_col)));
	PQclear(r);
	return v;
}

/* Poll an admin lookup until it equals want. */
static bool poll_lookup(PGconn *admin, const char *command, const char *key_col, const char *key,
			const char *val_col, const char *want, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	for (;;) {
		PGresult *r = rows_ok(admin, command);
		int i = find_row(r, key_col, key);
		bool ok = i >= 0 && strcmp(PQgetvalue(r, i, column(r, val_col)), want) == 0;
		PQclear(r);
		if (ok)
			return true;
		if (h_now_ms() >= deadline)
			return false;
		h_sleep_ms(20);
	}
}

static void drain_results(PGconn *conn)
{
	PGresult *r;
	while ((r = h_get_result(conn, 5000)) != NULL)
		PQclear(r);
}

/* The result of a query sent with PQsendQuery, which must arrive within timeout_ms and be rows. */
static char *sent_value_ok(PGconn *conn, int timeout_ms, const char *what)
{
	PGresult *r = h_get_result(conn, timeout_ms);
	if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK)
		pgmux_dump_logs(&px);
	cr_assert_not_null(r, "%s: no result within %d ms", what, timeout_ms);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", what, PQresultErrorMessage(r));
	char *v = strdup(PQgetvalue(r, 0, 0));
	PQclear(r);
	drain_results(conn);
	return v;
}

/* A query sent with PQsendQuery must still be unanswered after wait_ms. */
static void expect_blocked(PGconn *conn, int wait_ms, const char *what)
{
	PGresult *r = h_get_result(conn, wait_ms);
	if (r)
		fprintf(stderr, "%s: got %s: %s\n", what, PQresStatus(PQresultStatus(r)), PQresultErrorMessage(r));
	cr_assert_null(r, "%s: the query was answered although pgmux should hold it", what);
}

/* psql -X -w -A [-t] -c sql against the admin console; returns the exit status. */
static int admin_psql(struct h_cmd *c, const char *sql, bool tuples_only)
{
	const struct h_env *e = h_env();
	char psql[600], pw[300];
	snprintf(psql, sizeof(psql), "%s/psql", e->pgbin);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->superpass);
	char *ci = conninfo_db(px.port, e->superuser, e->superpass, "pgmux");
	/* conninfo carries the password too; PGPASSWORD keeps psql from ever prompting. */
	const char *argv[] = {psql, "-X", "-w", "-A", tuples_only ? "-t" : "-P", tuples_only ? "-q" : "footer=on",
			      "-v", "ON_ERROR_STOP=1", "-c", sql, ci, NULL};
	const char *env[] = {pw, "PGCONNECT_TIMEOUT=10", NULL};
	int st = h_cmd_run(c, argv, env, h_scaled_ms(CLIENT_TIMEOUT_MS));
	free(ci);
	return st;
}

/* Rewrite pgmux's config file in place (same port) from o. */
static void rewrite_config(struct pgmux_options *o)
{
	o->listen_port = px.port;
	pgmux_write_config(&px, o);
}

/* The line number (1-based) of the first line of a file containing needle, or 0. */
static int line_of(const char *path, const char *needle)
{
	char *text = h_read_file(path);
	int line = 1, found = 0;
	for (char *p = text; *p; line++) {
		char *nl = strchr(p, '\n');
		if (nl)
			*nl = '\0';
		if (strstr(p, needle)) {
			found = line;
			break;
		}
		if (!nl)
			break;
		p = nl + 1;
	}
	free(text);
	return found;
}

static void sigsend(int sig)
{
	cr_assert(pgmux_running(&px), "pgmux is not running");
	cr_assert_eq(kill(px.pid, sig), 0);
}

/* Collects the messages libpq receives outside a query (an asynchronous FATAL, say). */
struct notices {
	char text[2048];
};

static void collect_notice(void *arg, const PGresult *r)
{
	struct notices *n = arg;
	size_t used = strlen(n->text);
	snprintf(n->text + used, sizeof(n->text) - used, "%s", PQresultErrorMessage(r));
}

/* For cleanup statements whose "does not exist, skipping" notices are expected. */
static void quiet_notice(void *arg, const PGresult *r)
{
	(void)arg;
	(void)r;
}

/* ---------------------------------------------------------------- fixtures */

/* Options every test here shares: transaction pooling, quick health checks, an admin user. */
static void base_options(struct pgmux_options *o)
{
	pgmux_options_default(o);
	o->pool_mode = "transaction";
	o->max_connections = 8;
	o->admin_users = h_env()->superuser;
	o->extra_target = "health_check_interval = 250ms";
}

static void start_pgmux(struct pgmux_options *o)
{
	cr_assert(pgmux_start(&px, o), "pgmux did not start (config %s)", px.config);
}

/*
 * Stop the .init's pgmux and start one with o. A session first: pgmux installs
 * its signal handlers only after its port opens, and a SIGTERM that comes
 * sooner kills it with status 143 (see sighup_as_soon_as_the_port_accepts).
 */
static void restart_pgmux(struct pgmux_options *o)
{
	PQfinish(admin_ok());
	h_stop_expect_clean_exit(&px);
	start_pgmux(o);
}

/* pgbench -i in DB on a server where the app role exists, as app. */
static void pgbench_init(int port)
{
	const struct h_env *e = h_env();
	char pgbench[600], portstr[16], pw[300];
	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(portstr, sizeof(portstr), "%d", port);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	const char *argv[] = {pgbench, "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", portstr, "-U", e->appuser, DB, NULL};
	const char *env[] = {pw, "PGSSLMODE=disable", NULL};
	struct h_cmd c;
	int st = h_cmd_run(&c, argv, env, 60000);
	if (st != 0)
		h_cmd_dump(&c, "pgbench -i");
	cr_assert_eq(st, 0, "pgbench -i on port %d failed", port);
	h_cmd_free(&c);
}

/* An empty DB owned by app, with pgbench's tables, on the server at port. */
static void make_pgbench_db(int port)
{
	PGconn *su = h_connect_super_port(port, "postgres");
	PQsetNoticeReceiver(su, quiet_notice, NULL);
	h_exec_ok(su, "DROP DATABASE IF EXISTS " DB " WITH (FORCE)");
	char sql[300];
	snprintf(sql, sizeof(sql), "CREATE DATABASE " DB " OWNER %s", h_env()->appuser);
	h_exec_ok(su, sql);
	PQfinish(su);
	pgbench_init(port);
}

/* Server A (the suite's) and a new server B, both with DB; pgmux on A. */
static void init_two_servers(void)
{
	const struct h_env *e = h_env();
	cutover_db_created = true;
	make_pgbench_db(e->pgport);

	cr_assert(h_pg_start(&pgb), "the second PostgreSQL did not start");
	PGconn *su = h_connect_super_port(pgb.port, "postgres");
	char sql[400];
	snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN PASSWORD '%s'", e->appuser, e->apppass);
	h_exec_ok(su, sql);
	PQfinish(su);
	make_pgbench_db(pgb.port);

	struct pgmux_options o;
	base_options(&o);
	o.tls = false;
	start_pgmux(&o);
}

static void fini_two_servers(void)
{
	pgmux_kill(&px);
	h_pg_stop(&pgb);
	h_teardown();
	if (cutover_db_created) {
		PGconn *su = h_connect_super_direct();
		PGresult *r = PQexec(su, "DROP DATABASE IF EXISTS " DB " WITH (FORCE)");
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			fprintf(stderr, "cleanup: dropping database %s on the suite's server failed: %s", DB,
				PQerrorMessage(su));
		PQclear(r);
		PQfinish(su);
		cutover_db_created = false;
	}
}

static int metrics_port;

static void init_admin(void)
{
	static char extra[64];
	struct pgmux_options o;
	base_options(&o);
	metrics_port = h_free_port();
	snprintf(extra, sizeof(extra), "metrics_port = %d", metrics_port);
	o.extra_pgmux = extra;
	start_pgmux(&o);
}

static void init_admin_trust(void)
{
	struct pgmux_options o;
	base_options(&o);
	o.tls = false;
	o.client_auth = "trust";
	start_pgmux(&o);
}

static void fini_kill_leftovers(void)
{
	h_teardown();
}

/* ================================================================ cutover under load */

TestSuite(cutover, .init = init_two_servers, .fini = fini_two_servers, .timeout = 150);

/* The "new transactions paused for N ms" of the log's cutover line to host:port, or -1. */
static long cutover_pause_from_log(const char *target)
{
	char needle[200];
	snprintf(needle, sizeof(needle), "cutover to %s: new transactions paused for ", target);
	char *log = h_read_file(px.logfile);
	const char *p = strstr(log, needle);
	long ms = p ? strtol(p + strlen(needle), NULL, 10) : -1;
	free(log);
	return ms;
}

struct latency_summary {
	long transactions;
	long failed;
	long long max_us;
	long long max_epoch_us; /* when that slowest transaction ended */
	long long window_from_us, window_to_us; /* wall-clock window around the cutover (set by the caller) */
	long long window_max_us;                /* slowest transaction that ended in it */
	long window_transactions;
};

/*
 * pgbench -l writes one line per transaction: client_id transaction_no time
 * script_no time_epoch time_us [...]; time is the latency in microseconds
 * (or "failed"/"skipped"). Read every log file in dir.
 */
static void read_pgbench_logs(const char *dir, struct latency_summary *s)
{
	long long from = s->window_from_us, to = s->window_to_us;
	memset(s, 0, sizeof(*s));
	s->window_from_us = from;
	s->window_to_us = to;
	DIR *d = opendir(dir);
	cr_assert_not_null(d, "cannot open %s", dir);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, "pgbench_log", 11) != 0)
			continue;
		char path[1024];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		FILE *f = fopen(path, "r");
		cr_assert_not_null(f, "%s", path);
		char line[256];
		while (fgets(line, sizeof(line), f)) {
			long client, txno, script;
			char time_field[32];
			long long epoch, usec;
			if (sscanf(line, "%ld %ld %31s %ld %lld %lld", &client, &txno, time_field, &script, &epoch,
				   &usec) != 6)
				continue;
			if (strcmp(time_field, "failed") == 0 || strcmp(time_field, "skipped") == 0) {
				s->failed++;
				continue;
			}
			long long lat = atoll(time_field);
			s->transactions++;
			long long ended = epoch * 1000000LL + usec;
			if (lat > s->max_us) {
				s->max_us = lat;
				s->max_epoch_us = ended;
			}
			if (ended >= s->window_from_us && ended <= s->window_to_us) {
				s->window_transactions++;
				if (lat > s->window_max_us)
					s->window_max_us = lat;
			}
		}
		fclose(f);
	}
	closedir(d);
}

static long long wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static long parse_processed(const char *out)
{
	const char *key = "number of transactions actually processed: ";
	const char *p = strstr(out, key);
	cr_assert_not_null(p, "no transaction count in pgbench's output:\n%s", out);
	return strtol(p + strlen(key), NULL, 10);
}

enum cutover_how { BY_SIGHUP, BY_ADMIN_CUTOVER_TO };

/*
 * pgbench (TPC-B, 16 clients over 8 server connections) runs through pgmux
 * against A; a few seconds in, hosts changes to B. No transaction may fail,
 * every committed one must be on A or B exactly once, B must get the rest of
 * the run, and later sessions must land on B.
 */
static void cutover_under_pgbench(enum cutover_how how, const char *protocol, int max_connections)
{
	const struct h_env *e = h_env();
	if (max_connections != 8) {
		struct pgmux_options o;
		base_options(&o);
		o.tls = false;
		o.max_connections = max_connections;
		restart_pgmux(&o);
	}
	char b_hostport[64];
	snprintf(b_hostport, sizeof(b_hostport), "127.0.0.1:%d", pgb.port);

	PGconn *admin = admin_ok();
	PGconn *on_a = h_connect_super_port(e->pgport, DB);
	PGconn *on_b = h_connect_super_port(pgb.port, DB);

	char pgbench[600], portstr[16], pw[300], logdir[600], prefix[700];
	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(portstr, sizeof(portstr), "%d", px.port);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	snprintf(logdir, sizeof(logdir), "%s/pgbench-logs", h_test_dir());
	cr_assert_eq(mkdir(logdir, 0700), 0);
	snprintf(prefix, sizeof(prefix), "--log-prefix=%s/pgbench_log", logdir);
	const char *duration = h_under_valgrind() ? "20" : "10";
	const char *argv[] = {pgbench, "-n", "-c", "16", "-j", "2", "-T", duration, "-M", protocol, "-l", prefix,
			      "-h", "127.0.0.1", "-p", portstr, "-U", e->appuser, DB, NULL};
	const char *env[] = {pw, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30", NULL};
	struct h_cmd bench;
	cr_assert(h_cmd_start(&bench, argv, env));

	/* Load is flowing through A... */
	long long deadline = h_now_ms() + h_scaled_ms(15000);
	while (number_ok(on_a, "select count(*) from pgbench_history") < 200) {
		bool ended = h_cmd_wait(&bench, 0);
		if (ended || h_now_ms() >= deadline) {
			if (!ended)
				h_cmd_kill(&bench);
			h_cmd_dump(&bench, "pgbench");
			pgmux_dump_logs(&px);
			cr_assert_fail("pgbench did not get 200 transactions through pgmux to A");
		}
		h_sleep_ms(20);
	}
	/* ...and has run for about 4 s of its 10 (a load duration, not something to poll for). */
	long long since = h_now_ms() - bench.started_ms;
	if (since < 4000)
		h_sleep_ms((int)(4000 - since));
	cr_assert(!h_cmd_wait(&bench, 0), "pgbench ended before the cutover");

	long long cut_started = h_now_ms();
	long long cut_started_wall_us = wall_us();
	long long cut_ended;
	if (how == BY_SIGHUP) {
		struct pgmux_options o;
		base_options(&o);
		o.tls = false;
		o.max_connections = max_connections;
		o.hosts = b_hostport;
		rewrite_config(&o);
		sigsend(SIGHUP);
		bool done = poll_lookup(admin, "SHOW STATS", "name", "cutovers", "value", "1", h_scaled_ms(35000));
		cut_ended = h_now_ms();
		if (!done)
			pgmux_dump_logs(&px);
		cr_assert(done, "SHOW STATS does not count a cutover within 35 s of SIGHUP");
	} else {
		char sql[200];
		snprintf(sql, sizeof(sql), "CUTOVER TO '%s'", b_hostport);
		cr_assert(PQsendQuery(admin, sql));
		PGresult *r = h_get_result(admin, h_scaled_ms(35000));
		cut_ended = h_now_ms();
		if (!r || PQresultStatus(r) != PGRES_COMMAND_OK)
			pgmux_dump_logs(&px);
		cr_assert_not_null(r, "CUTOVER TO did not answer within 35 s");
		cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO failed: %s", PQresultErrorMessage(r));
		cr_expect_str_eq(PQcmdStatus(r), "CUTOVER");
		PQclear(r);
		drain_results(admin);
	}

	long long cut_ended_wall_us = wall_us();
	bool ended = h_cmd_wait(&bench, h_scaled_ms(40000));
	if (!ended)
		h_cmd_kill(&bench);
	if (!ended || bench.status != 0 || !strstr(bench.out, "number of failed transactions: 0 ")) {
		h_cmd_dump(&bench, "pgbench");
		pgmux_dump_logs(&px);
	}
	cr_assert(ended, "pgbench did not finish");
	cr_assert_eq(bench.status, 0, "pgbench exited with %d:\n%s", bench.status, bench.err);
	cr_assert(strstr(bench.out, "number of failed transactions: 0 ") != NULL,
		  "pgbench reports failed transactions:\n%s", bench.out);
	long processed = parse_processed(bench.out);

	/* Every committed TPC-B transaction inserted one history row, on A or on B. */
	long long rows_a = number_ok(on_a, "select count(*) from pgbench_history");
	long long rows_b = number_ok(on_b, "select count(*) from pgbench_history");
	cr_log_info("cutover (%s, -M %s): pgbench processed %ld transactions; history rows: %lld on A, %lld on B",
		    how == BY_SIGHUP ? "SIGHUP" : "CUTOVER TO", protocol, processed, rows_a, rows_b);
	cr_expect_gt(rows_a, 0, "A got no transactions");
	cr_expect_gt(rows_b, 0, "B got no transactions after the cutover");
	/* pgbench may leave up to one committed transaction per client uncounted when -T runs out. */
	cr_expect(rows_a + rows_b >= processed && rows_a + rows_b <= processed + 16,
		  "history rows on A+B = %lld, but pgbench processed %ld transactions", rows_a + rows_b, processed);

	/* The longest pause: pgmux's own account (log and SHOW STATS), and what pgbench's clients saw. */
	long pause_ms = cutover_pause_from_log(b_hostport);
	long long stats_pause_ms = h_admin_stat(admin, "last_cutover_pause_ms");
	/* Transactions held by the pause end between the start of the cutover and shortly after its end. */
	struct latency_summary lat = {.window_from_us = cut_started_wall_us, .window_to_us = cut_ended_wall_us + 500000};
	read_pgbench_logs(logdir, &lat);
	char msg[600];
	snprintf(msg, sizeof(msg),
		 "cutover (%s, -M %s): new transactions paused for %lld ms (SHOW STATS; log line says %ld); the "
		 "cutover took %lld ms as the test saw it; slowest pgbench transaction ending during the cutover (or 0.5 s "
		 "after): %.1f ms (of %ld); slowest of all %ld: %.1f ms; failed: %ld",
		 how == BY_SIGHUP ? "SIGHUP" : "CUTOVER TO", protocol, stats_pause_ms, pause_ms, cut_ended - cut_started,
		 lat.window_max_us / 1000.0, lat.window_transactions, lat.transactions, lat.max_us / 1000.0, lat.failed);
	cr_log_info("%s", msg);
	fprintf(stderr, "%s\n", msg);
	cr_expect_geq(pause_ms, 0, "no \"cutover to %s: new transactions paused for N ms\" line in pgmux's log",
		      b_hostport);
	cr_expect_eq(lat.failed, 0);
	cr_expect_gt(lat.transactions, 0, "pgbench's per-transaction logs are empty");

	/* Later sessions run on B. */
	PGconn *app = app_ok(DB);
	char *port = value_ok(app, "select inet_server_port()");
	char want[16];
	snprintf(want, sizeof(want), "%d", pgb.port);
	cr_expect_str_eq(port, want, "a session after the cutover runs on port %s, expected B (%s)", port, want);
	free(port);
	PQfinish(app);

	cr_expect_eq(h_admin_stat(admin, "cutovers"), 1);
	cr_expect_eq(h_admin_stat(admin, "cutover_in_progress"), 0);
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	if (pause_ms >= 0)
		cr_expect_eq(stats_pause_ms, pause_ms, "SHOW STATS and the log disagree on the pause");
	/* B is the only target now, and the monitor knows it as the writer. */
	cr_expect(poll_lookup(admin, "SHOW TARGETS", "port", want, "role", "writer", 5000),
		  "SHOW TARGETS does not show B as the writer");
	char a_port[16];
	snprintf(a_port, sizeof(a_port), "%d", e->pgport);
	PGresult *targets = rows_ok(admin, "SHOW TARGETS");
	cr_expect_lt(find_row(targets, "port", a_port), 0, "SHOW TARGETS still lists A after the cutover");
	PQclear(targets);

	char *hosts = lookup(admin, "SHOW CONFIG", "name", "hosts", "value");
	cr_expect(strstr(hosts, b_hostport) != NULL, "SHOW CONFIG hosts = \"%s\"", hosts);
	if (how == BY_ADMIN_CUTOVER_TO)
		cr_expect(strstr(hosts, "(in memory, set by CUTOVER TO; not in the file)") != NULL,
			  "SHOW CONFIG hosts after CUTOVER TO = \"%s\"", hosts);
	else
		cr_expect(strstr(hosts, "in memory") == NULL, "SHOW CONFIG hosts after SIGHUP = \"%s\"", hosts);
	free(hosts);

	h_cmd_free(&bench);
	PQfinish(admin);
	PQfinish(on_a);
	PQfinish(on_b);
	h_stop_expect_clean_exit(&px);
}

Test(cutover, sighup_new_hosts_under_pgbench)
{
	cutover_under_pgbench(BY_SIGHUP, "simple", 8);
}

/*
 * -M prepared: pgmux must carry the prepared statements over to B. (pgbench
 * prepares each command with a synchronous PQprepare the first time a client
 * runs it; pgmux answers that without a server connection, so fewer
 * connections than clients work too: tests/integration/test_prepared_load.c.
 * This variant keeps one connection per client, as it always had.)
 */
Test(cutover, admin_cutover_to_under_pgbench_prepared)
{
	cutover_under_pgbench(BY_ADMIN_CUTOVER_TO, "prepared", 16);
}

/*
 * CUTOVER TO while a health check of A is under way, to a B that refuses the
 * monitor's login for a while. A stand-in for Aurora's functions on A (pgmux
 * then asks aurora_replica_status() and takes the instance's name from it)
 * holds A's check at an advisory lock the test owns, released right after
 * the cutover. A must never serve again: a query sent after the cutover
 * waits until B answers its health check, then runs on B.
 *
 * pool_instance_report() ignores retired targets, for the narrower race where
 * the monitor handles A's answer before the cutover's rescan drops A's
 * check (seen under valgrind); this test cannot time that from outside.
 */
Test(cutover, check_of_old_server_under_way_and_new_server_not_yet_healthy)
{
	static const char held_checks[] = "SELECT count(*) FROM pg_stat_activity "
					  "WHERE application_name = 'pgmux health check' AND wait_event_type = 'Lock'";
	const struct h_env *e = h_env();
	PGconn *on_a = h_connect_super_port(e->pgport, DB);
	PGconn *on_b = h_connect_super_port(pgb.port, DB);
	h_exec_ok(on_a, "CREATE FUNCTION aurora_db_instance_identifier() RETURNS text LANGUAGE sql "
			"AS $$ SELECT 'instance-a'::text $$");
	h_exec_ok(on_a, "CREATE FUNCTION aurora_replica_status() "
			"RETURNS TABLE (server_id text, session_id text, replica_lag_in_msec float8) LANGUAGE sql "
			"AS $$ SELECT 'instance-a'::text, 'MASTER_SESSION_ID'::text, 0::float8 "
			"FROM (SELECT pg_advisory_xact_lock_shared(4242)) AS gate $$");

	struct pgmux_options o;
	base_options(&o);
	o.tls = false;
	/* A long interval: the tick after the cutover stops A's check, which must end before it. */
	o.extra_target = "health_check_interval = 2s\nhealth_check_database = " DB;
	restart_pgmux(&o);
	cr_assert(h_file_wait_contains(px.logfile, "is Aurora PostgreSQL", h_scaled_ms(10000)),
		  "pgmux did not take A's stand-in functions for Aurora's");
	PGconn *admin = admin_ok();
	cr_assert(poll_lookup(admin, "SHOW TARGETS", "instance", "instance-a", "role", "writer", h_scaled_ms(10000)),
		  "SHOW TARGETS does not show instance-a as the writer");
	PGconn *app = app_ok(DB);
	char *port = value_ok(app, "select inet_server_port()");
	cr_assert_eq(atoi(port), e->pgport, "before the cutover a session runs on port %s, not A's", port);
	free(port);

	char sql[300];
	snprintf(sql, sizeof(sql), "ALTER ROLE %s NOLOGIN", e->appuser);
	h_exec_ok(on_b, sql);
	h_exec_ok(on_a, "SELECT pg_advisory_lock(4242)");
	cr_assert(h_poll_value(on_a, held_checks, "1", h_scaled_ms(10000)),
		  "no health check of A was seen waiting for the lock");

	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", pgb.port);
	PGresult *r = PQexec(admin, sql);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO failed: %s", PQresultErrorMessage(r));
	PQclear(r);
	cr_assert(PQsendQuery(app, "select inet_server_port()"));

	/* A's held check ends and reports "writer"; B still refuses the monitor. */
	h_exec_ok(on_a, "SELECT pg_advisory_unlock(4242)");
	cr_assert(h_poll_value(on_a, held_checks, "0", h_scaled_ms(10000)),
		  "A's health check did not go on");
	h_sleep_ms(h_scaled_ms(300));
	snprintf(sql, sizeof(sql), "ALTER ROLE %s LOGIN", e->appuser);
	h_exec_ok(on_b, sql);

	port = sent_value_ok(app, h_scaled_ms(20000), "the query sent after the cutover");
	cr_expect_eq(atoi(port), pgb.port, "the query sent after the cutover ran on port %s, not B's (%d)", port,
		     pgb.port);
	free(port);
	char b_port[16];
	snprintf(b_port, sizeof(b_port), "%d", pgb.port);
	cr_expect(poll_lookup(admin, "SHOW TARGETS", "port", b_port, "role", "writer", h_scaled_ms(5000)),
		  "SHOW TARGETS does not show B as the writer");

	PQfinish(app);
	PQfinish(admin);
	PQfinish(on_a);
	PQfinish(on_b);
	h_stop_expect_clean_exit(&px);
}

/*
 * An open transaction on A holds the cutover: CUTOVER TO does not answer and
 * other clients' new transactions wait, until it commits (on A); then the
 * waiting query runs on B.
 */
Test(cutover, open_transaction_finishes_on_old_server_first)
{
	const struct h_env *e = h_env();
	PGconn *admin = admin_ok();
	PGconn *tx = app_ok(DB);
	PGconn *other = app_ok(DB);
	char a_port[16], b_port[16], sql[200];
	snprintf(a_port, sizeof(a_port), "%d", e->pgport);
	snprintf(b_port, sizeof(b_port), "%d", pgb.port);

	h_exec_ok(tx, "BEGIN");
	char *port = value_ok(tx, "insert into pgbench_history (tid, bid, aid, delta, mtime) "
				  "values (1, 1, 1, 4242, now()) returning inet_server_port()");
	cr_assert_str_eq(port, a_port);
	free(port);

	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", pgb.port);
	cr_assert(PQsendQuery(admin, sql));
	/* pgmux pauses first: poll until it says so, then a new transaction must wait. */
	PGconn *watch = admin_ok();
	cr_assert(poll_lookup(watch, "SHOW STATS", "name", "cutover_in_progress", "value", "1", 5000),
		  "SHOW STATS never showed the cutover in progress");
	cr_expect_eq(h_admin_stat(watch, "paused"), 1);
	cr_assert(PQsendQuery(other, "select inet_server_port()"));
	expect_blocked(other, 1000, "a new transaction during the cutover");
	expect_blocked(admin, 10, "CUTOVER TO while a transaction is open");

	h_exec_ok(tx, "COMMIT");
	PGresult *r = h_get_result(admin, 10000);
	cr_assert_not_null(r, "CUTOVER TO did not finish after the open transaction committed");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO: %s", PQresultErrorMessage(r));
	PQclear(r);
	drain_results(admin);

	port = sent_value_ok(other, 10000, "the waiting transaction");
	cr_expect_str_eq(port, b_port, "the transaction that waited ran on port %s, expected B", port);
	free(port);

	/* The transaction that was open committed on A, and the client that held it now runs on B. */
	PGconn *on_a = h_connect_super_port(e->pgport, DB);
	cr_expect_eq(number_ok(on_a, "select count(*) from pgbench_history where delta = 4242"), 1);
	PQfinish(on_a);
	port = value_ok(tx, "select inet_server_port()");
	cr_expect_str_eq(port, b_port);
	free(port);
	cr_expect_eq(h_admin_stat(admin, "last_cutover_transactions_in_flight"), 1);
	cr_expect_geq(h_admin_stat(admin, "last_cutover_clients_waited"), 1);
	char needle[200];
	snprintf(needle, sizeof(needle), "cutover to 127.0.0.1:%d: new transactions paused for", pgb.port);
	cr_expect(h_file_count(px.logfile, needle) == 1, "no \"%s\" line in pgmux's log", needle);
	PQfinish(watch);
	cr_expect_geq(h_admin_stat(admin, "last_cutover_pause_ms"), 1000);

	PQfinish(tx);
	PQfinish(other);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/*
 * A pinned session (temp table) keeps its backend on A after the cutover
 * until cutover_timeout, then gets a FATAL; an unpinned one moves to B and
 * stays connected.
 */
Test(cutover, pinned_session_keeps_old_backend_until_cutover_timeout)
{
	const struct h_env *e = h_env();
	/* Restart pgmux with a short cutover_timeout. */
	struct pgmux_options o;
	base_options(&o);
	o.tls = false;
	o.extra_target = "health_check_interval = 250ms\ncutover_timeout = 2s";
	restart_pgmux(&o);

	PGconn *admin = admin_ok();
	PGconn *pinned = app_ok(DB);
	PGconn *free_client = app_ok(DB);
	char a_port[16], b_port[16], sql[200];
	snprintf(a_port, sizeof(a_port), "%d", e->pgport);
	snprintf(b_port, sizeof(b_port), "%d", pgb.port);

	struct notices pinned_notices = {.text = ""};
	PQsetNoticeReceiver(pinned, collect_notice, &pinned_notices);
	h_exec_ok(pinned, "create temp table pin_me (x int)");
	char *pid_before = value_ok(pinned, "select pg_backend_pid()");
	char *port = value_ok(free_client, "select inet_server_port()");
	cr_assert_str_eq(port, a_port);
	free(port);

	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", pgb.port);
	long long t0 = h_now_ms();
	PGresult *r = PQexec(admin, sql);
	long long took = h_now_ms() - t0;
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO: %s", PQerrorMessage(admin));
	PQclear(r);
	cr_expect_lt(took, 1500, "an idle pinned session held the cutover for %lld ms", took);

	/* Right after the cutover: the pinned session is still on its A backend... */
	port = value_ok(pinned, "select inet_server_port()");
	cr_expect_str_eq(port, a_port, "the pinned session moved to port %s before cutover_timeout", port);
	free(port);
	char *pid_after = value_ok(pinned, "select pg_backend_pid()");
	cr_expect_str_eq(pid_after, pid_before);
	free(pid_after);
	free(pid_before);
	/* ...and the unpinned one is on B. */
	port = value_ok(free_client, "select inet_server_port()");
	cr_expect_str_eq(port, b_port);
	free(port);
	cr_expect_eq(h_admin_stat(admin, "last_cutover_pinned_sessions"), 1);

	/* When cutover_timeout has passed, the pinned session ends with a FATAL error. */
	struct pollfd pfd = {.fd = PQsocket(pinned), .events = POLLIN};
	int ready = poll(&pfd, 1, h_scaled_ms(6000));
	long long ended_after = h_now_ms() - t0;
	cr_assert_eq(ready, 1, "the pinned session was not closed within cutover_timeout + 4 s");
	PQconsumeInput(pinned);
	r = PQexec(pinned, "select 1");
	cr_expect_neq(PQresultStatus(r), PGRES_TUPLES_OK, "the pinned session still works after cutover_timeout");
	PQclear(r);
	cr_expect_eq(PQstatus(pinned), CONNECTION_BAD);
	/* libpq hands a FATAL that arrives while idle to the notice receiver. */
	cr_expect(strstr(pinned_notices.text, "FATAL") != NULL || strstr(PQerrorMessage(pinned), "FATAL") != NULL,
		  "the pinned session ended without a FATAL: \"%s\" / \"%s\"", pinned_notices.text,
		  PQerrorMessage(pinned));
	cr_log_info("the pinned session ended %lld ms after CUTOVER TO with: %s", ended_after, pinned_notices.text);
	cr_expect_geq(ended_after, 1800, "the pinned session was closed after %lld ms, before cutover_timeout (2 s)",
		      ended_after);

	port = value_ok(free_client, "select inet_server_port()");
	cr_expect_str_eq(port, b_port);
	free(port);

	PQfinish(pinned);
	PQfinish(free_client);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ admin console */

TestSuite(cutover_admin, .init = init_admin, .fini = fini_kill_leftovers, .timeout = 60);

/* ---------------------------------------------------------------- metrics */

/* One HTTP/1.0 request to the metrics port; the whole response, read to EOF (malloc'd). */
static char *http_request(const char *request)
{
	int fd = h_raw_connect(metrics_port, h_scaled_ms(2000));
	cr_assert_geq(fd, 0, "nothing listens on metrics_port %d", metrics_port);
	cr_assert(h_raw_send(fd, request, strlen(request)));
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);
	cr_assert_not_null(buf);
	long long deadline = h_now_ms() + h_scaled_ms(5000);
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		long long left = deadline - h_now_ms();
		cr_assert_gt(left, 0, "the metrics response did not end within 5 s");
		if (poll(&pfd, 1, (int)left) <= 0)
			continue;
		if (len + 1 == cap) {
			cap *= 2;
			buf = realloc(buf, cap);
			cr_assert_not_null(buf);
		}
		ssize_t n = read(fd, buf + len, cap - len - 1);
		cr_assert_geq(n, 0, "reading the metrics response: %s", strerror(errno));
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	return buf;
}

/* The value of the sample whose name and labels are exactly series, or -1 when there is none. */
static double sample(const char *body, const char *series)
{
	size_t n = strlen(series);
	for (const char *line = body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
		if (strncmp(line, series, n) == 0 && line[n] == ' ')
			return strtod(line + n + 1, NULL);
	return -1;
}

/* Every line is a comment or "name{labels} value" with a Prometheus name and a number. */
static void expect_exposition_format(const char *body)
{
	int samples = 0;
	for (const char *line = body; *line; line = strchr(line, '\n') + 1) {
		const char *end = strchr(line, '\n');
		cr_assert_not_null(end, "the last line has no newline");
		if (*line == '#') {
			cr_assert(strncmp(line, "# HELP pgmux_", 13) == 0 || strncmp(line, "# TYPE pgmux_", 13) == 0,
				  "comment line: %.*s", (int)(end - line), line);
			continue;
		}
		const char *p = line;
		cr_assert(strncmp(p, "pgmux_", 6) == 0, "sample line: %.*s", (int)(end - line), line);
		while (*p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9'))
			p++;
		if (*p == '{') {
			/* label="value" pairs; values may hold escaped quotes. */
			while (*p != '}') {
				p++;
				while (*p == '_' || (*p >= 'a' && *p <= 'z'))
					p++;
				cr_assert(p[0] == '=' && p[1] == '"', "labels: %.*s", (int)(end - line), line);
				for (p += 2; *p != '"'; p++) {
					cr_assert(p < end, "unterminated label value: %.*s", (int)(end - line), line);
					if (*p == '\\')
						p++;
				}
				p++;
				cr_assert(*p == ',' || *p == '}', "labels: %.*s", (int)(end - line), line);
			}
			p++;
		}
		cr_assert_eq(*p, ' ', "no space before the value: %.*s", (int)(end - line), line);
		char *after;
		(void)strtod(p + 1, &after);
		cr_assert(after == end && after > p + 1, "not a number: %.*s", (int)(end - line), line);
		samples++;
	}
	cr_assert_gt(samples, 20, "only %d samples", samples);
}

/*
 * metrics_port serves Prometheus's text format: the counters move with the
 * traffic, the pool and the instance are there with their labels, and
 * anything but GET /metrics is refused.
 */
Test(cutover_admin, metrics_endpoint_serves_prometheus_text)
{
	const struct h_env *e = h_env();
	PGconn *app = app_ok("postgres");
	cr_assert_eq(number_ok(app, "select 1"), 1);
	char instance[128], target[512];
	snprintf(instance, sizeof(instance), "%s:%d", e->pghost, e->pgport);
	snprintf(target, sizeof(target), "pgmux_target_up{instance=\"%s\",host=\"%s\",port=\"%d\",role=\"writer\"}",
		 instance, e->pghost, e->pgport);
	bool up = false;
	char *body = NULL;
	for (long long end = h_now_ms() + h_scaled_ms(5000); !up && h_now_ms() < end; h_sleep_ms(50)) {
		free(body);
		body = http_request("GET /metrics HTTP/1.0\r\n\r\n");
		up = strstr(body, target) && sample(strstr(body, "\r\n\r\n") + 4, target) == 1;
	}
	cr_assert(up, "no \"%s 1\" in:\n%s", target, body);
	cr_assert(strncmp(body, "HTTP/1.1 200 OK\r\n", 17) == 0 || strncmp(body, "HTTP/1.0 200 OK\r\n", 17) == 0,
		  "status line: %.40s", body);
	cr_assert(strstr(body, "Content-Type: text/plain; version=0.0.4") != NULL, "%s", body);
	const char *text = strstr(body, "\r\n\r\n") + 4;
	expect_exposition_format(text);
	double transactions = sample(text, "pgmux_transactions_total");
	cr_assert_geq(transactions, 1, "pgmux_transactions_total %g", transactions);
	cr_assert_geq(sample(text, "pgmux_client_connections"), 1);
	cr_assert_geq(sample(text, "pgmux_pool_server_connections{database=\"postgres\",user=\"app\",endpoint=\"writer\"}"),
		      1, "%s", text);
	char serving[512];
	snprintf(serving, sizeof(serving), "pgmux_target_serving{instance=\"%s\",host=\"%s\",port=\"%d\",role=\"writer\"}",
		 instance, e->pghost, e->pgport);
	cr_assert_eq(sample(text, serving), 1, "%s", text);

	for (int i = 0; i < 5; i++)
		cr_assert_eq(number_ok(app, "select 1"), 1);
	/* A transaction is counted when its backend goes back, just after the client has its answer. */
	double later = 0;
	for (long long end = h_now_ms() + h_scaled_ms(2000); later < transactions + 5 && h_now_ms() < end;
	     h_sleep_ms(20)) {
		char *again = http_request("GET /metrics HTTP/1.0\r\n\r\n");
		later = sample(strstr(again, "\r\n\r\n") + 4, "pgmux_transactions_total");
		free(again);
	}
	cr_assert_geq(later, transactions + 5, "pgmux_transactions_total went from %g to %g over 5 transactions",
		      transactions, later);
	free(body);

	char *missing = http_request("GET /other HTTP/1.0\r\n\r\n");
	cr_assert(strstr(missing, " 404 ") != NULL, "GET /other: %.60s", missing);
	free(missing);
	char *post = http_request("POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
	/* libevent's answer to a method the server does not allow. */
	cr_assert(strstr(post, " 501 ") != NULL, "POST /metrics: %.60s", post);
	free(post);
	PQfinish(app);
	h_stop_expect_clean_exit(&px);
}

Test(cutover_admin, psql_show_pools_one_row_per_pool)
{
	const struct h_env *e = h_env();
	PGconn *app = app_ok("postgres");
	PGconn *su = connect_ok(px.port, e->superuser, e->superpass, "postgres");
	cr_assert_eq(number_ok(app, "select 1"), 1);
	cr_assert_eq(number_ok(su, "select 2"), 2);

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

Test(cutover_admin, show_help_lists_every_command)
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

Test(cutover_admin, show_clients_then_kill_closes_that_client)
{
	const struct h_env *e = h_env();
	PGconn *admin = admin_ok();
	PGconn *app = app_ok("postgres");
	PGconn *bystander = connect_ok(px.port, e->superuser, e->superpass, "postgres");
	cr_assert_eq(number_ok(app, "select 1"), 1);

	PGresult *r = rows_ok(admin, "SHOW CLIENTS");
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

	cr_expect(poll_lookup(admin, "SHOW STATS", "name", "client_connections", "value", "2", 5000),
		  "the killed client is still counted");
	r = rows_ok(admin, "SHOW CLIENTS");
	cr_expect_lt(find_row(r, "id", id), 0, "SHOW CLIENTS still lists the killed client %s", id);
	PQclear(r);
	/* Others are untouched; an unknown id is an error. */
	cr_expect_eq(number_ok(bystander, "select 3"), 3);
	r = PQexec(admin, "KILL 999999");
	cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "KILL of an unknown id: %s", PQresStatus(PQresultStatus(r)));
	PQclear(r);
	free(id);
	PQfinish(app);
	PQfinish(bystander);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(cutover_admin, show_servers_lists_the_backend_a_client_used)
{
	const struct h_env *e = h_env();
	PGconn *admin = admin_ok();
	PGconn *app = app_ok("postgres");
	char *pid = value_ok(app, "select pg_backend_pid()");

	PGresult *r = rows_ok(admin, "SHOW SERVERS");
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

Test(cutover_admin, show_targets_writer_healthy)
{
	const struct h_env *e = h_env();
	PGconn *admin = admin_ok();
	char port[16];
	snprintf(port, sizeof(port), "%d", e->pgport);
	cr_assert(poll_lookup(admin, "SHOW TARGETS", "port", port, "health", "healthy", 5000),
		  "the suite's server never became healthy in SHOW TARGETS");
	PGresult *r = rows_ok(admin, "SHOW TARGETS");
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

Test(cutover_admin, show_stats_counts_queries)
{
	PGconn *admin = admin_ok();
	long long before = h_admin_stat(admin, "queries");
	PGconn *app = app_ok("postgres");
	for (int i = 0; i < 5; i++)
		cr_assert_eq(number_ok(app, "select 7"), 7);
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

Test(cutover_admin, show_config_and_show_version)
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

/* PAUSE (all, or one instance) holds new transactions until RESUME. */
static void pause_resume(const char *pause_sql, const char *resume_sql)
{
	const struct h_env *e = h_env();
	PGconn *admin = admin_ok();
	PGconn *app = app_ok("postgres");
	cr_assert_eq(number_ok(app, "select 1"), 1);

	PGresult *r = PQexec(admin, pause_sql);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", pause_sql, PQerrorMessage(admin));
	cr_expect_str_eq(PQcmdStatus(r), "PAUSE");
	PQclear(r);
	char port[16];
	snprintf(port, sizeof(port), "%d", e->pgport);
	if (strchr(pause_sql, ':')) {
		char *paused = lookup(admin, "SHOW TARGETS", "port", port, "paused");
		cr_expect_str_eq(paused, "yes", "SHOW TARGETS after %s", pause_sql);
		free(paused);
	}
	char *status = lookup(admin, "SHOW TARGETS", "port", port, "status");
	cr_expect_str_eq(status, "paused", "SHOW TARGETS status after %s", pause_sql);
	free(status);
	if (!strchr(pause_sql, ':')) {
		cr_expect_eq(h_admin_stat(admin, "paused"), 1, "SHOW STATS after PAUSE");
	}

	cr_assert(PQsendQuery(app, "select 42"));
	expect_blocked(app, 1000, pause_sql);
	cr_expect_geq(h_admin_stat(admin, "transactions_waiting"), 1);

	r = PQexec(admin, resume_sql);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", resume_sql, PQerrorMessage(admin));
	cr_expect_str_eq(PQcmdStatus(r), "RESUME");
	PQclear(r);
	char *v = sent_value_ok(app, 5000, "the query held by PAUSE, after RESUME");
	cr_expect_str_eq(v, "42");
	free(v);
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	char *paused = lookup(admin, "SHOW TARGETS", "port", port, "paused");
	cr_expect_str_eq(paused, "no");
	free(paused);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(cutover_admin, pause_holds_queries_until_resume)
{
	pause_resume("PAUSE", "RESUME");
}

Test(cutover_admin, pause_one_instance)
{
	char pause[100], resume[100];
	snprintf(pause, sizeof(pause), "PAUSE '127.0.0.1:%d'", h_env()->pgport);
	snprintf(resume, sizeof(resume), "RESUME '127.0.0.1:%d'", h_env()->pgport);
	pause_resume(pause, resume);
}

Test(cutover_admin, pause_unknown_instance_is_an_error)
{
	PGconn *admin = admin_ok();
	PGresult *r = PQexec(admin, "PAUSE '127.0.0.1:1'");
	cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "PAUSE of an unknown instance: %s",
		     PQresStatus(PQresultStatus(r)));
	PQclear(r);
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(cutover_admin, reload_applies_a_reloadable_change)
{
	PGconn *admin = admin_ok();
	struct pgmux_options o;
	base_options(&o);
	o.max_connections = 5;
	rewrite_config(&o);
	PGresult *r = PQexec(admin, "RELOAD");
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "RELOAD: %s", PQerrorMessage(admin));
	cr_expect_str_eq(PQcmdStatus(r), "RELOAD");
	PQclear(r);
	char *v = lookup(admin, "SHOW CONFIG", "name", "max_connections", "value");
	cr_expect_str_eq(v, "5", "max_connections after RELOAD");
	free(v);
	PGconn *app = app_ok("postgres");
	cr_expect_eq(number_ok(app, "select 5"), 5);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(cutover_admin, reload_of_a_broken_file_is_refused_as_a_whole)
{
	PGconn *admin = admin_ok();
	struct pgmux_options o;
	base_options(&o);
	/* Valid changes first, then one bad line: none of it may take effect. */
	o.max_connections = 3;
	o.hosts = "127.0.0.1:1";
	o.extra_pool = "bogus_key = 1";
	rewrite_config(&o);
	int line = line_of(px.config, "bogus_key");
	cr_assert_gt(line, 0);

	PGresult *r = PQexec(admin, "RELOAD");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "RELOAD of a broken file: %s",
		     PQresStatus(PQresultStatus(r)));
	const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	cr_assert_not_null(msg);
	char where[700];
	snprintf(where, sizeof(where), "%s:%d", px.config, line);
	cr_expect(strstr(msg, where) != NULL, "the error does not name %s: %s", where, msg);
	cr_expect(strstr(msg, "bogus_key") != NULL, "the error does not name the key: %s", msg);
	PQclear(r);
	cr_expect(h_file_wait_contains(px.logfile, "reload failed", 2000), "no \"reload failed\" in the log");

	/* The old configuration is still in force, the admin session still works. */
	char *v = lookup(admin, "SHOW CONFIG", "name", "max_connections", "value");
	cr_expect_str_eq(v, "8");
	free(v);
	v = lookup(admin, "SHOW CONFIG", "name", "hosts", "value");
	char want[64];
	snprintf(want, sizeof(want), "127.0.0.1:%d", h_env()->pgport);
	cr_expect_str_eq(v, want);
	free(v);
	cr_expect_eq(h_admin_stat(admin, "cutovers"), 0);
	PGconn *app = app_ok("postgres");
	cr_expect_eq(number_ok(app, "select 9"), 9);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/*
 * SHUTDOWN is graceful, like SIGINT: no new connections, a transaction in
 * progress may finish (the client is closed when it gives its backend back),
 * and pgmux exits 0 once the sessions are gone.
 */
Test(cutover_admin, shutdown_lets_the_open_transaction_finish_then_exits_0)
{
	PGconn *admin = admin_ok();
	PGconn *app = app_ok("postgres");
	h_exec_ok(app, "BEGIN");
	cr_assert_eq(number_ok(app, "select 1"), 1);

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
	cr_expect_eq(number_ok(app, "select 2"), 2, "the open transaction was cut short by SHUTDOWN");
	h_exec_ok(app, "COMMIT");
	int st = pgmux_wait_exit(&px, h_scaled_ms(10000));
	cr_assert_eq(st, 0, "pgmux exit status after SHUTDOWN: %d", st);
	PQfinish(app);
}

Test(cutover_admin, extended_protocol_gives_the_same_results)
{
	PGconn *admin = admin_ok();
	PGconn *app = app_ok("postgres");
	cr_assert_eq(number_ok(app, "select 1"), 1);

	PGresult *simple = rows_ok(admin, "SHOW POOLS");
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

Test(cutover_admin, non_admin_and_wrong_password_are_refused)
{
	const struct h_env *e = h_env();
	PGconn *conn = connect_db(px.port, e->appuser, e->apppass, "pgmux");
	cr_expect_eq(PQstatus(conn), CONNECTION_BAD, "app logged in to the admin console");
	cr_expect(strstr(PQerrorMessage(conn), "permission denied") != NULL, "app's error: %s", PQerrorMessage(conn));
	PQfinish(conn);

	conn = connect_db(px.port, e->superuser, "not-the-password", "pgmux");
	cr_expect_eq(PQstatus(conn), CONNECTION_BAD, "the admin logged in with a wrong password");
	cr_expect(strstr(PQerrorMessage(conn), "password authentication failed") != NULL, "error: %s",
		  PQerrorMessage(conn));
	PQfinish(conn);

	/* pgmux is unharmed. */
	PGconn *admin = admin_ok();
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(cutover_admin, unknown_command_points_to_show_help)
{
	PGconn *admin = admin_ok();
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
	char *v = value_ok(admin, "SHOW VERSION");
	cr_expect(strncmp(v, "pgmux", 5) == 0);
	free(v);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

TestSuite(cutover_admin_trust, .init = init_admin_trust, .fini = fini_kill_leftovers, .timeout = 60);

/* Without a password exchange in the way, the refusal's SQLSTATE can be read off the wire. */
Test(cutover_admin_trust, non_admin_gets_fatal_42501)
{
	int fd = h_raw_connect(px.port, 2000);
	cr_assert_geq(fd, 0);
	uint8_t buf[256];
	const char *params[] = {"user", h_env()->appuser, "database", "pgmux", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 3u << 16, params);
	cr_assert(h_raw_send(fd, buf, len));
	char type = 0, *body = NULL;
	size_t blen = 0;
	/* AuthenticationOk may come first; the ErrorResponse must follow. */
	for (int i = 0; i < 20; i++) {
		enum h_msg_result m = h_raw_read_message(fd, &type, &body, &blen, 5000);
		cr_assert_eq(m, H_MSG_OK, "no ErrorResponse before the connection ended (%d)", m);
		if (type == 'E')
			break;
		cr_assert(type == 'R' || type == 'S' || type == 'K' || type == 'N', "unexpected message '%c'", type);
		free(body);
		body = NULL;
	}
	cr_assert_eq(type, 'E');
	const char *sev = h_error_field(body, blen, 'V');
	const char *code = h_error_field(body, blen, 'C');
	const char *msg = h_error_field(body, blen, 'M');
	cr_expect_str_eq(sev ? sev : "", "FATAL");
	cr_expect_str_eq(code ? code : "", "42501");
	cr_expect(msg && strstr(msg, "permission denied"), "message: %s", msg ? msg : "");
	free(body);
	cr_expect(h_raw_wait_closed(fd, 5000), "pgmux did not close the refused connection");
	close(fd);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ signals and reload */

TestSuite(cutover_signals, .init = init_admin, .fini = fini_kill_leftovers, .timeout = 60);

Test(cutover_signals, sigusr1_pauses_sigusr2_resumes)
{
	PGconn *admin = admin_ok();
	PGconn *app = app_ok("postgres");
	cr_assert_eq(number_ok(app, "select 1"), 1);

	sigsend(SIGUSR1);
	cr_assert(poll_lookup(admin, "SHOW STATS", "name", "paused", "value", "1", 5000), "SIGUSR1 did not pause");
	cr_assert(PQsendQuery(app, "select 43"));
	expect_blocked(app, 1000, "a query after SIGUSR1");

	sigsend(SIGUSR2);
	char *v = sent_value_ok(app, 5000, "the query held by SIGUSR1, after SIGUSR2");
	cr_expect_str_eq(v, "43");
	free(v);
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(cutover_signals, sighup_with_an_invalid_file_keeps_the_old_one)
{
	PGconn *app = app_ok("postgres");
	struct pgmux_options o;
	base_options(&o);
	o.hosts = "127.0.0.1:1";
	o.max_connections = 3;
	o.extra_pgmux = "no_such_option = yes";
	rewrite_config(&o);
	int failures = h_file_count(px.logfile, "reload failed");
	sigsend(SIGHUP);
	bool logged = h_file_wait_count(px.logfile, "reload failed", failures + 1, 5000);
	if (!logged)
		pgmux_dump_logs(&px);
	cr_assert(logged, "no \"reload failed\" in the log after SIGHUP with an invalid file");
	char *log = h_read_file(px.logfile);
	cr_expect(strstr(log, "no_such_option") != NULL, "the log does not name the bad option");
	free(log);

	cr_assert(pgmux_running(&px));
	cr_expect_eq(number_ok(app, "select 1"), 1, "an open session stopped working");
	PGconn *fresh = app_ok("postgres");
	char *port = value_ok(fresh, "select inet_server_port()");
	char want[16];
	snprintf(want, sizeof(want), "%d", h_env()->pgport);
	cr_expect_str_eq(port, want);
	free(port);
	PGconn *admin = admin_ok();
	char *v = lookup(admin, "SHOW CONFIG", "name", "max_connections", "value");
	cr_expect_str_eq(v, "8");
	free(v);
	cr_expect_eq(h_admin_stat(admin, "cutovers"), 0);
	PQfinish(admin);
	PQfinish(fresh);
	PQfinish(app);
	h_stop_expect_clean_exit(&px);
}

/* The replaced configurations pgmux's log says it freed ("freed N replaced configuration(s)"), in all. */
static int freed_configurations(void)
{
	static const char needle[] = "freed ";
	char *log = h_read_file(px.logfile);
	int total = 0;
	for (const char *p = log; (p = strstr(p, needle)) != NULL; p += sizeof(needle) - 1) {
		int n;
		char word[16];
		if (sscanf(p + sizeof(needle) - 1, "%d %15s", &n, word) == 2 && strcmp(word, "replaced") == 0)
			total += n;
	}
	free(log);
	return total;
}

/*
 * A reload replaces the configuration, and the old one is freed once no
 * worker and no monitor can still be reading it, not kept until exit. Ten
 * reloads while two clients keep querying: all ten are freed, the clients
 * notice nothing, and under valgrind nothing reads freed memory.
 */
Test(cutover_signals, replaced_configurations_are_freed)
{
	PGconn *a = app_ok("postgres"), *b = app_ok("postgres");
	struct pgmux_options o;
	char extra[64];
	base_options(&o);
	snprintf(extra, sizeof(extra), "metrics_port = %d", metrics_port);
	o.extra_pgmux = extra;
	for (int i = 0; i < 10; i++) {
		o.max_connections = 6 + i % 3;
		rewrite_config(&o);
		int reloads = h_file_count(px.logfile, "configuration reloaded from");
		sigsend(SIGHUP);
		bool done = h_file_wait_count(px.logfile, "configuration reloaded from", reloads + 1, h_scaled_ms(5000));
		if (!done)
			pgmux_dump_logs(&px);
		cr_assert(done, "reload %d did not happen", i + 1);
		cr_assert_eq(number_ok(a, "select 1"), 1);
		cr_assert_eq(number_ok(b, "select 2"), 2);
	}
	long long deadline = h_now_ms() + h_scaled_ms(10000);
	int freed;
	while ((freed = freed_configurations()) < 10 && h_now_ms() < deadline)
		h_sleep_ms(100);
	if (freed != 10)
		pgmux_dump_logs(&px);
	cr_assert_eq(freed, 10, "pgmux freed %d of the 10 configurations its reloads replaced", freed);
	cr_assert_eq(number_ok(a, "select 3"), 3);
	PQfinish(a);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/*
 * Log rotation as logrotate does it: rename the file, then SIGHUP. Meanwhile
 * both workers log every state change (log_level = debug) and pgbench -C
 * opens a socket per transaction, so a descriptor number that the reopen
 * freed too early would soon belong to a client, and a log line written to
 * it would break that client's protocol stream.
 */
Test(cutover_signals, sighup_reopens_the_logfile_while_workers_log)
{
	const struct h_env *e = h_env();
	char pgbench[600], port[16], pw[256], script[700], rotated[8][700];
	const int rotations = 8;

	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(port, sizeof(port), "%d", px.port);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	snprintf(script, sizeof(script), "%s.select.sql", px.logfile);
	h_write_file(script, "select 1;\n", 0644);
	const char *duration = h_under_valgrind() ? "12" : "4";
	const char *argv[] = {pgbench, "-n", "-C", "-c", "4", "-j", "2", "-T", duration, "-f", script,
			      "-h", "127.0.0.1", "-p", port, "-U", e->appuser, "postgres", NULL};
	const char *env[] = {pw, "PGSSLMODE=disable", NULL};
	struct h_cmd bench;
	cr_assert(h_cmd_start(&bench, argv, env), "pgbench did not start");

	for (int i = 0; i < rotations; i++) {
		h_sleep_ms(h_scaled_ms(200));
		/* On a loaded machine 200 ms may pass before pgbench's next login: wait for one in this stretch. */
		cr_assert(h_file_wait_contains(px.logfile, ": authenticated", h_scaled_ms(10000)),
			  "rotation %d: no login in %s", i + 1, px.logfile);
		snprintf(rotated[i], sizeof(rotated[i]), "%s.%d", px.logfile, i + 1);
		cr_assert_eq(rename(px.logfile, rotated[i]), 0, "rename %s: %s", px.logfile, strerror(errno));
		sigsend(SIGHUP);
		/* The reload is logged to the new file, once it is open. */
		bool reopened = h_file_wait_contains(px.logfile, "configuration reloaded from", h_scaled_ms(5000));
		if (!reopened)
			h_cmd_dump(&bench, "pgbench");
		cr_assert(reopened, "rotation %d: pgmux did not log to a new %s after SIGHUP", i + 1, px.logfile);
	}
	cr_assert(h_cmd_wait(&bench, h_scaled_ms(60000)), "pgbench did not finish");
	h_expect_pgbench_clean(&bench, "pgbench -C during log rotations");
	h_cmd_free(&bench);

	/* Each rotated file holds a full stretch of the log: clients logged in while it was current. */
	for (int i = 0; i < rotations; i++)
		cr_expect_gt(h_file_count(rotated[i], ": authenticated"), 0, "%s has no login from its stretch", rotated[i]);
	/* The renamed files are finished: new lines go to the new file only. */
	long long before = 0;
	for (int i = 0; i < rotations; i++)
		before += h_file_count(rotated[i], " C-");
	int logins = h_file_count(px.logfile, ": authenticated");
	PGconn *a = app_ok("postgres");
	cr_assert_eq(number_ok(a, "select 7"), 7);
	PQfinish(a);
	cr_assert(h_file_wait_count(px.logfile, ": authenticated", logins + 1, h_scaled_ms(5000)),
		  "the login after the rotations is not in the current log");
	long long after = 0;
	for (int i = 0; i < rotations; i++)
		after += h_file_count(rotated[i], " C-");
	cr_expect_eq(after, before, "lines still went to rotated files after the last reopen");
	h_stop_expect_clean_exit(&px);
}

Test(cutover_signals, sighup_keeps_restart_only_settings)
{
	int old_port = px.port;
	int new_port = h_free_port();
	struct pgmux_options o;
	base_options(&o);
	o.workers = 5;
	o.max_connections = 3;
	o.listen_port = new_port;
	/* A session first: it proves start-up is over (see sighup_as_soon_as_the_port_accepts). */
	PGconn *admin = admin_ok();
	pgmux_write_config(&px, &o); /* sets px.port to the new one: put it back */
	px.port = old_port;
	int reloads = h_file_count(px.logfile, "configuration reloaded from");
	sigsend(SIGHUP);
	bool done = h_file_wait_count(px.logfile, "configuration reloaded from", reloads + 1, 5000);
	if (!done)
		pgmux_dump_logs(&px);
	cr_assert(done, "SIGHUP did not reload");
	char *log = h_read_file(px.logfile);
	cr_expect(strstr(log, "listen_port can only change at start-up") != NULL, "listen_port change not reported");
	cr_expect(strstr(log, "workers can only change at start-up") != NULL, "workers change not reported");
	free(log);

	char port[16];
	snprintf(port, sizeof(port), "%d", old_port);
	char *v = lookup(admin, "SHOW CONFIG", "name", "listen_port", "value");
	cr_expect_str_eq(v, port);
	free(v);
	v = lookup(admin, "SHOW CONFIG", "name", "workers", "value");
	cr_expect_str_eq(v, "2");
	free(v);
	v = lookup(admin, "SHOW CONFIG", "name", "max_connections", "value");
	cr_expect_str_eq(v, "3", "the reloadable change in the same file was not applied");
	free(v);
	int fd = h_raw_connect(new_port, 500);
	cr_expect_lt(fd, 0, "pgmux listens on the new port without a restart");
	if (fd >= 0)
		close(fd);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/*
 * A service manager may send SIGHUP as soon as the port accepts connections:
 * pgmux must not die of it (SIGHUP's default action) however early it comes.
 * pgmux_start() polls too slowly to hit that moment, so each round starts
 * pgmux itself, polls the port without pause and signals at once.
 */
Test(cutover_signals, sighup_as_soon_as_the_port_accepts)
{
	/* The .init's pgmux is not needed; a session first, so that SIGTERM does not hit its start-up. */
	PQfinish(admin_ok());
	h_stop_expect_clean_exit(&px);
	struct pgmux_options o;
	base_options(&o);
	pgmux_write_config(&px, &o);
	const char *argv[] = {h_env()->pgmux, px.config, NULL};
	int killed = 0;
	for (int round = 0; round < 10; round++) {
		struct h_cmd c;
		cr_assert(h_cmd_start(&c, argv, NULL));
		long long deadline = h_now_ms() + 10000;
		int fd;
		while ((fd = h_raw_connect(px.port, 100)) < 0) {
			cr_assert(h_now_ms() < deadline && !h_cmd_wait(&c, 0), "round %d: pgmux did not start", round);
		}
		close(fd);
		cr_assert_eq(kill(c.pid, SIGHUP), 0);
		bool ended = h_cmd_wait(&c, 100);
		if (ended) {
			killed++;
			fprintf(stderr, "round %d: pgmux exited with status %d on a SIGHUP right after its port opened\n",
				round, c.status);
		} else {
			kill(c.pid, SIGTERM);
			cr_assert(h_cmd_wait(&c, 10000), "round %d: pgmux did not stop on SIGTERM", round);
			cr_expect_eq(c.status, 0, "round %d: exit status %d after SIGTERM", round, c.status);
		}
		h_cmd_free(&c);
	}
	cr_expect_eq(killed, 0, "an early SIGHUP killed pgmux in %d of 10 starts", killed);
}

/* ================================================================ credential rotation */

#define ROT_OLD "rot-old-pw"
#define ROT_NEW "rot-new-pw"

static char rot_secrets[600];

static void write_rot_secret(const char *password)
{
	char path[700], text[400];
	snprintf(path, sizeof(path), "%s/rot.json", rot_secrets);
	snprintf(text, sizeof(text),
		 "{\"username\": \"rot\", \"password\": \"%s\", \"engine\": \"postgres\", \"host\": \"127.0.0.1\", "
		 "\"port\": %d, \"dbname\": \"postgres\"}\n",
		 password, h_env()->pgport);
	h_write_file(path, text, 0600);
}

/* Terminate rot's sessions on A except keep_pid, and wait until they are gone. */
static void terminate_rot_backends(PGconn *su, const char *keep_pid)
{
	char sql[300], check[300];
	snprintf(sql, sizeof(sql),
		 "with t as materialized (select pid from pg_stat_activity where usename = 'rot' and pid <> %s) "
		 "select coalesce(string_agg(pid::text, ' '), '') from t where pg_terminate_backend(pid)",
		 keep_pid);
	snprintf(check, sizeof(check), "select count(*) from pg_stat_activity where usename = 'rot' and pid <> %s",
		 keep_pid);
	char *pids = value_ok(su, sql);
	cr_assert(h_poll_value(su, check, "0", 10000), "rot's backends did not go away");
	/*
	 * And pgmux has seen them go. A backend that dies while parked is noticed
	 * when its worker reads the end of the connection; a borrow that comes
	 * first (pgmux under valgrind is slow) hands out the dead backend, and
	 * the transaction sent to it fails with 08006.
	 */
	char *save = NULL;
	for (char *pid = strtok_r(pids, " ", &save); pid; pid = strtok_r(NULL, " ", &save)) {
		char needle[64];
		snprintf(needle, sizeof(needle), " pid=%s: closing (", pid);
		cr_assert(h_file_wait_contains(px.logfile, needle, h_scaled_ms(10000)),
			  "pgmux did not notice that backend %s was terminated", pid);
	}
	free(pids);
}

/* A role of its own and a copy of the secrets with it, so that nothing shared changes. */
static void init_rotation(void)
{
	const struct h_env *e = h_env();
	PGconn *su = h_connect_super_direct();
	rot_role_created = true;
	PQsetNoticeReceiver(su, quiet_notice, NULL);
	h_exec_ok(su, "DROP ROLE IF EXISTS rot");
	h_exec_ok(su, "CREATE ROLE rot LOGIN PASSWORD '" ROT_OLD "'");
	PQfinish(su);

	snprintf(rot_secrets, sizeof(rot_secrets), "%s/secrets", h_test_dir());
	cr_assert_eq(mkdir(rot_secrets, 0700), 0);
	static const char *const names[] = {"app.json", "postgres.json", NULL};
	for (int i = 0; names[i]; i++) {
		char from[700], to[700];
		snprintf(from, sizeof(from), "%s/%s", e->secrets, names[i]);
		snprintf(to, sizeof(to), "%s/%s", rot_secrets, names[i]);
		char *text = h_read_file(from);
		cr_assert(text[0], "%s is empty or missing", from);
		h_write_file(to, text, 0600);
		free(text);
	}
	write_rot_secret(ROT_OLD);

	struct pgmux_options o;
	base_options(&o);
	o.max_connections = 20;
	o.secrets_dir = rot_secrets;
	start_pgmux(&o);
}

static void fini_rotation(void)
{
	pgmux_kill(&px);
	h_teardown();
	if (rot_role_created) {
		PGconn *su = h_connect_super_direct();
		PQclear(PQexec(su, "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'rot'"));
		if (!h_poll_value(su, "select count(*) from pg_stat_activity where usename = 'rot'", "0", 10000))
			fprintf(stderr, "cleanup: rot still has sessions\n");
		PGresult *r = PQexec(su, "DROP ROLE IF EXISTS rot");
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			fprintf(stderr, "cleanup: DROP ROLE rot failed: %s", PQerrorMessage(su));
		PQclear(r);
		PQfinish(su);
		rot_role_created = false;
	}
}

TestSuite(cutover_rotation, .init = init_rotation, .fini = fini_rotation, .timeout = 60);

Test(cutover_rotation, new_password_at_reload_old_sessions_untouched)
{
	/* S1 is pinned (temp table) so it keeps its backend; S2 is not pinned. */
	PGconn *s1 = connect_ok(px.port, "rot", ROT_OLD, "postgres");
	PGconn *s2 = connect_ok(px.port, "rot", ROT_OLD, "postgres");
	h_exec_ok(s1, "create temp table rot_pin (x int)");
	char *s1_pid = value_ok(s1, "select pg_backend_pid()");
	cr_assert_eq(number_ok(s2, "select 1"), 1);

	/* Rotate: the server first, then the secret, then SIGHUP. */
	PGconn *su = h_connect_super_direct();
	h_exec_ok(su, "ALTER ROLE rot PASSWORD '" ROT_NEW "'");
	write_rot_secret(ROT_NEW);
	int reloads = h_file_count(px.logfile, "configuration reloaded from");
	sigsend(SIGHUP);
	cr_assert(h_file_wait_count(px.logfile, "configuration reloaded from", reloads + 1, 5000),
		  "SIGHUP did not reload");
	/* Every later query needs a new backend: only S1's pinned one is left. */
	terminate_rot_backends(su, s1_pid);

	PGconn *s3 = connect_db(px.port, "rot", ROT_NEW, "postgres");
	if (PQstatus(s3) != CONNECTION_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQstatus(s3), CONNECTION_OK, "login with the new password failed: %s", PQerrorMessage(s3));
	char *v = h_query_value(s3, "select current_user || ' ' || pg_backend_pid()");
	if (!v)
		pgmux_dump_logs(&px);
	cr_assert_not_null(v, "a query that needs a new backend failed after the rotation: %s", PQerrorMessage(s3));
	cr_expect(strncmp(v, "rot ", 4) == 0 && strcmp(v + 4, s1_pid) != 0, "got \"%s\"", v);
	free(v);

	PGconn *old = connect_db(px.port, "rot", ROT_OLD, "postgres");
	cr_expect_eq(PQstatus(old), CONNECTION_BAD, "the old password still logs in after the rotation");
	cr_expect(strstr(PQerrorMessage(old), "password authentication failed") != NULL, "error: %s",
		  PQerrorMessage(old));
	PQfinish(old);

	/* Established sessions are left alone. */
	cr_expect_eq(number_ok(s1, "select count(*) from rot_pin"), 0);
	v = value_ok(s1, "select pg_backend_pid()");
	cr_expect_str_eq(v, s1_pid, "S1 lost its backend");
	free(v);
	cr_expect_eq(number_ok(s2, "select 2"), 2, "S2 stopped working");

	free(s1_pid);
	PQfinish(s1);
	PQfinish(s2);
	PQfinish(s3);
	PQfinish(su);
	h_stop_expect_clean_exit(&px);
}
