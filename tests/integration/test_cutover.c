/*
 * test_cutover.c: moving every client from one PostgreSQL to another
 * without dropping them: a SIGHUP with new hosts, or the admin console's
 * CUTOVER TO, under pgbench load (no transaction lost, the pause measured),
 * with a health check of the old server under way and a new one not yet
 * healthy, an open transaction that finishes on the old server first, and
 * a pinned session that keeps its old backend until cutover_timeout. Each
 * test starts a second PostgreSQL of its own (h_pg_start); the database it
 * creates on the suite's server is dropped again by its .fini.
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
static struct h_pg pgb;         /* the second server, B */
static bool cutover_db_created; /* .fini drops the "cutover" database on the suite's server A */

#define DB "cutover" /* the database the tests run pgbench in, on A and on B */

/* The app user through pgmux, to DB. */
static PGconn *app_ok(void)
{
	return h_app_session(&px, "disable", "dbname=" DB);
}

/* ---------------------------------------------------------------- fixtures */

/* The console's options; B is not a copy of A: these tests are about the pause, not the catch-up (test_cutover_catchup.c). */
static void cutover_options(struct pgmux_options *o)
{
	pgmux_options_console(o);
	o->extra_target = "health_check_interval = 250ms\ncutover_require_catchup = false";
}

/*
 * Stop the .init's pgmux and start one with o. A session first: pgmux installs
 * its signal handlers only after its port opens, and a SIGTERM that comes
 * sooner kills it with status 143 (see sighup_as_soon_as_the_port_accepts).
 */
static void restart_pgmux(struct pgmux_options *o)
{
	PQfinish(h_admin_session(&px));
	h_stop_expect_clean_exit(&px);
	pgmux_start_ok(&px, o);
}

/* pgbench -i in DB on a server where the app role exists, as app. */
static void pgbench_init(int port)
{
	const char *args[] = {"-i", "-s", "1", "-q", NULL};
	struct h_cmd c;
	int st = h_pgbench_run(&c, port, "disable", DB, args, 60000);
	if (st != 0)
		h_cmd_dump(&c, "pgbench -i");
	cr_assert_eq(st, 0, "pgbench -i on port %d failed", port);
	h_cmd_free(&c);
}

/* An empty DB owned by app, with pgbench's tables, on the server at port. */
static void make_pgbench_db(int port)
{
	PGconn *su = h_connect_super_port(port, "postgres");
	PQsetNoticeReceiver(su, h_ignore_notices, NULL);
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
	cutover_options(&o);
	o.tls = false;
	pgmux_start_ok(&px, &o);
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
		cutover_options(&o);
		o.tls = false;
		o.max_connections = max_connections;
		restart_pgmux(&o);
	}
	char b_hostport[64];
	snprintf(b_hostport, sizeof(b_hostport), "127.0.0.1:%d", pgb.port);

	PGconn *admin = h_admin_session(&px);
	PGconn *on_a = h_connect_super_port(e->pgport, DB);
	PGconn *on_b = h_connect_super_port(pgb.port, DB);

	char logdir[600], prefix[700];
	snprintf(logdir, sizeof(logdir), "%s/pgbench-logs", h_test_dir());
	cr_assert_eq(mkdir(logdir, 0700), 0);
	snprintf(prefix, sizeof(prefix), "--log-prefix=%s/pgbench_log", logdir);
	const char *duration = h_under_valgrind() ? "20" : "10";
	const char *args[] = {"-n", "-c", "16", "-j", "2", "-T", duration, "-M", protocol, "-l", prefix, NULL};
	struct h_cmd bench;
	cr_assert(h_pgbench_start(&bench, px.port, "disable", DB, args));

	/* Load is flowing through A... */
	long long deadline = h_now_ms() + h_scaled_ms(15000);
	while (h_number_ok(on_a, "select count(*) from pgbench_history") < 200) {
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
		cutover_options(&o);
		o.tls = false;
		o.max_connections = max_connections;
		o.hosts = b_hostport;
		pgmux_rewrite_config(&px, &o);
		pgmux_signal(&px, SIGHUP);
		bool done = h_admin_poll_cell(admin, "SHOW STATS", "name", "cutovers", "value", "1", h_scaled_ms(35000));
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
		h_drain_results(admin);
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
	long processed = h_pgbench_processed(&bench);

	/* Every committed TPC-B transaction inserted one history row, on A or on B. */
	long long rows_a = h_number_ok(on_a, "select count(*) from pgbench_history");
	long long rows_b = h_number_ok(on_b, "select count(*) from pgbench_history");
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
	PGconn *app = app_ok();
	char *port = h_value_ok(app, "select inet_server_port()");
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
	cr_expect(h_admin_poll_cell(admin, "SHOW TARGETS", "port", want, "role", "writer", 5000),
		  "SHOW TARGETS does not show B as the writer");
	char a_port[16];
	snprintf(a_port, sizeof(a_port), "%d", e->pgport);
	char *a_row = h_admin_cell(admin, "SHOW TARGETS", "port", a_port, "port");
	cr_expect_null(a_row, "SHOW TARGETS still lists A after the cutover");
	free(a_row);

	char *hosts = h_admin_cell_ok(admin, "SHOW CONFIG", "name", "hosts", "value");
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
 * connections than clients work too: tests/integration/test_load.c, load_prepared.
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
	cutover_options(&o);
	o.tls = false;
	/* A long interval: the tick after the cutover stops A's check, which must end before it. */
	o.extra_target = "health_check_interval = 2s\nhealth_check_database = " DB "\ncutover_require_catchup = false";
	restart_pgmux(&o);
	cr_assert(h_file_wait_contains(px.logfile, "is Aurora PostgreSQL", h_scaled_ms(10000)),
		  "pgmux did not take A's stand-in functions for Aurora's");
	PGconn *admin = h_admin_session(&px);
	cr_assert(h_admin_poll_cell(admin, "SHOW TARGETS", "instance", "instance-a", "role", "writer", h_scaled_ms(10000)),
		  "SHOW TARGETS does not show instance-a as the writer");
	PGconn *app = app_ok();
	char *port = h_value_ok(app, "select inet_server_port()");
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

	port = h_sent_value_ok(app, h_scaled_ms(20000), "the query sent after the cutover");
	cr_expect_eq(atoi(port), pgb.port, "the query sent after the cutover ran on port %s, not B's (%d)", port,
		     pgb.port);
	free(port);
	char b_port[16];
	snprintf(b_port, sizeof(b_port), "%d", pgb.port);
	cr_expect(h_admin_poll_cell(admin, "SHOW TARGETS", "port", b_port, "role", "writer", h_scaled_ms(5000)),
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
	PGconn *admin = h_admin_session(&px);
	PGconn *tx = app_ok();
	PGconn *other = app_ok();
	char a_port[16], b_port[16], sql[200];
	snprintf(a_port, sizeof(a_port), "%d", e->pgport);
	snprintf(b_port, sizeof(b_port), "%d", pgb.port);

	h_exec_ok(tx, "BEGIN");
	char *port = h_value_ok(tx, "insert into pgbench_history (tid, bid, aid, delta, mtime) "
				  "values (1, 1, 1, 4242, now()) returning inet_server_port()");
	cr_assert_str_eq(port, a_port);
	free(port);

	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", pgb.port);
	cr_assert(PQsendQuery(admin, sql));
	/*
	 * pgmux logs in to both servers (its control connections), then pauses:
	 * poll until it says so, then a new transaction must wait.
	 */
	PGconn *watch = h_admin_session(&px);
	cr_assert(h_admin_poll_cell(watch, "SHOW STATS", "name", "paused", "value", "1", 5000),
		  "SHOW STATS never showed pgmux paused for the cutover");
	cr_expect_eq(h_admin_stat(watch, "cutover_in_progress"), 1);
	cr_assert(PQsendQuery(other, "select inet_server_port()"));
	h_expect_no_result(other, 1000, "a new transaction during the cutover");
	h_expect_no_result(admin, 10, "CUTOVER TO while a transaction is open");

	h_exec_ok(tx, "COMMIT");
	PGresult *r = h_get_result(admin, 10000);
	cr_assert_not_null(r, "CUTOVER TO did not finish after the open transaction committed");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO: %s", PQresultErrorMessage(r));
	PQclear(r);
	h_drain_results(admin);

	port = h_sent_value_ok(other, 10000, "the waiting transaction");
	cr_expect_str_eq(port, b_port, "the transaction that waited ran on port %s, expected B", port);
	free(port);

	/* The transaction that was open committed on A, and the client that held it now runs on B. */
	PGconn *on_a = h_connect_super_port(e->pgport, DB);
	cr_expect_eq(h_number_ok(on_a, "select count(*) from pgbench_history where delta = 4242"), 1);
	PQfinish(on_a);
	port = h_value_ok(tx, "select inet_server_port()");
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
 * A pinned session (temp table) cannot move: at the cutover, being between
 * transactions, it is closed at once with FATAL 57P01 "pgmux moved to a new
 * server; reconnect", long before cutover_timeout; an unpinned one moves to
 * B and stays connected. (test_cutover_catchup.c has sessions that are in a
 * transaction when the cutover begins.)
 */
Test(cutover, idle_pinned_session_is_told_to_reconnect)
{
	const struct h_env *e = h_env();
	/* Restart pgmux with a cutover_timeout the pinned session must not wait for. */
	struct pgmux_options o;
	cutover_options(&o);
	o.tls = false;
	o.extra_target = "health_check_interval = 250ms\ncutover_timeout = 5s\ncutover_require_catchup = false";
	restart_pgmux(&o);

	PGconn *admin = h_admin_session(&px);
	PGconn *pinned = app_ok();
	PGconn *free_client = app_ok();
	char a_port[16], b_port[16], sql[200];
	snprintf(a_port, sizeof(a_port), "%d", e->pgport);
	snprintf(b_port, sizeof(b_port), "%d", pgb.port);

	struct h_notices pinned_notices = {0};
	PQsetNoticeReceiver(pinned, h_record_notices, &pinned_notices);
	h_exec_ok(pinned, "create temp table pin_me (x int)");
	char *port = h_value_ok(free_client, "select inet_server_port()");
	cr_assert_str_eq(port, a_port);
	free(port);

	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", pgb.port);
	long long t0 = h_now_ms();
	PGresult *r = PQexec(admin, sql);
	long long took = h_now_ms() - t0;
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO: %s", PQerrorMessage(admin));
	PQclear(r);
	cr_expect_lt(took, 1500, "an idle pinned session held the cutover for %lld ms", took);

	/* The pinned session was closed with a FATAL that says why... */
	struct pollfd pfd = {.fd = PQsocket(pinned), .events = POLLIN};
	cr_assert_eq(poll(&pfd, 1, h_scaled_ms(2000)), 1, "the pinned session was not closed");
	PQconsumeInput(pinned);
	r = PQexec(pinned, "select inet_server_port()");
	cr_expect_neq(PQresultStatus(r), PGRES_TUPLES_OK, "the pinned session still works after the cutover");
	PQclear(r);
	cr_expect_eq(PQstatus(pinned), CONNECTION_BAD);
	/* libpq hands a FATAL that arrives while idle to the notice receiver. */
	cr_expect(strstr(pinned_notices.text, "pgmux moved to a new server; reconnect") != NULL ||
			  strstr(PQerrorMessage(pinned), "pgmux moved to a new server; reconnect") != NULL,
		  "the pinned session ended without the FATAL: \"%s\" / \"%s\"", pinned_notices.text,
		  PQerrorMessage(pinned));
	cr_expect_lt(h_now_ms() - t0, 2500, "the pinned session was closed only after %lld ms", h_now_ms() - t0);

	/* ...and the unpinned one is on B. */
	port = h_value_ok(free_client, "select inet_server_port()");
	cr_expect_str_eq(port, b_port);
	free(port);

	PQfinish(pinned);
	PQfinish(free_client);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}
