/*
 * test_cutover_catchup.c: a cutover that loses nothing (issue 20). Each test
 * starts servers of its own: A, the old writer (wal_level = logical), and B,
 * the new target, which subscribes to A's table (logical replication) or is
 * A's physical standby. Clients write through pgmux; CUTOVER TO B must wait
 * until B holds every row A committed, or give up within cutover_timeout and
 * go on with A, with no client's insert failing either way.
 */
#include "harness.h"
#include "harness_cutover.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct pgmux px;
static struct h_pg pga, pgb; /* pgb: B, a server of its own or A's standby */

#define DB H_SHOP_DB
#define A_CONF H_PUBLISHER_CONF

/* ---------------------------------------------------------------- servers */

/* B subscribes to A's items and has copied what was there. */
static void subscribe_b_to_a(void)
{
	h_subscribe(pga.port, pgb.port);
}

/* pgmux on A: pool_mode, no TLS, 8 connections, the superuser as admin, extra_target. */
static void options_on_a(struct pgmux_options *o, const char *pool_mode, const char *extra_target)
{
	static char hosts[64];
	pgmux_options_default(o);
	o->pool_mode = pool_mode;
	o->tls = false;
	o->max_connections = 8;
	o->admin_users = h_env()->superuser;
	snprintf(hosts, sizeof(hosts), "127.0.0.1:%d", pga.port);
	o->hosts = hosts;
	o->extra_target = extra_target;
}

static void start_pgmux_mode_on_a(const char *pool_mode, const char *extra_target)
{
	struct pgmux_options o;
	options_on_a(&o, pool_mode, extra_target);
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
}

/* Rewrite pgmux's configuration (same port) with extra_target and RELOAD it on the admin console. */
static void reload_on_a(PGconn *admin, const char *extra_target)
{
	struct pgmux_options o;
	options_on_a(&o, "transaction", extra_target);
	o.listen_port = px.port;
	pgmux_write_config(&px, &o);
	PGresult *r = PQexec(admin, "RELOAD");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "RELOAD: %s", PQresultErrorMessage(r));
	PQclear(r);
}

/* Server A with the shop database, and B its physical standby (pg_basebackup -R). */
static void init_primary_and_standby(void)
{
	cr_assert(h_pg_start_with(&pga, A_CONF), "server A did not start");
	h_make_shop(pga.port);
	cr_assert(h_pg_start_standby(&pgb, pga.port, NULL), "A's standby did not start");
}

static void start_pgmux_on_a(const char *extra_target)
{
	start_pgmux_mode_on_a("transaction", extra_target);
}

/* Servers A and B, each with the shop database; no replication yet. */
static void init_servers(void)
{
	h_shop_servers_start(&pga, &pgb);
}

static void fini_servers(void)
{
	pgmux_kill(&px);
	h_pg_stop(&pgb);
	h_pg_stop(&pga);
	h_teardown();
}

/* ---------------------------------------------------------------- clients */

static PGconn *admin_ok(void)
{
	const struct h_env *e = h_env();
	char *ci = h_conninfo(px.port, e->superuser, e->superpass, "disable", "dbname=pgmux");
	PGconn *c = PQconnectdb(ci);
	free(ci);
	cr_assert_eq(PQstatus(c), CONNECTION_OK, "the admin console: %s", PQerrorMessage(c));
	return c;
}

static PGconn *app_ok(void)
{
	const struct h_env *e = h_env();
	char *ci = h_conninfo(px.port, e->appuser, e->apppass, "disable", "dbname=" DB);
	PGconn *c = PQconnectdb(ci);
	free(ci);
	if (PQstatus(c) != CONNECTION_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQstatus(c), CONNECTION_OK, "an app session through pgmux: %s", PQerrorMessage(c));
	return c;
}

/* Wait until A has at least n rows (pgbench is flowing). */
static void wait_rows_on_a(struct h_cmd *bench, long long n)
{
	PGconn *su = h_connect_super_port(pga.port, DB);
	long long deadline = h_now_ms() + h_scaled_ms(15000);
	for (;;) {
		char *v = h_value_ok(su, "SELECT count(*) FROM items");
		long long have = atoll(v);
		free(v);
		if (have >= n)
			break;
		if (h_cmd_wait(bench, 0) || h_now_ms() >= deadline) {
			h_cmd_kill(bench);
			h_cmd_dump(bench, "pgbench");
			pgmux_dump_logs(&px);
			cr_assert_fail("pgbench did not get %lld rows through pgmux to A", n);
		}
		h_sleep_ms(20);
	}
	PQfinish(su);
}

/* CUTOVER TO b (host:port) on the admin console; returns the result (the caller clears it). */
static PGresult *cutover_to(PGconn *admin, int port, int timeout_ms)
{
	char sql[200];
	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", port);
	cr_assert(PQsendQuery(admin, sql));
	PGresult *r = h_get_result(admin, timeout_ms);
	cr_assert_not_null(r, "CUTOVER TO did not answer within %d ms", timeout_ms);
	PGresult *rest;
	while ((rest = h_get_result(admin, 1000)) != NULL)
		PQclear(rest);
	return r;
}

static long long stat_of(const char *name)
{
	PGconn *admin = admin_ok();
	long long v = h_admin_stat(admin, name);
	PQfinish(admin);
	return v;
}

/* ---------------------------------------------------------------- tests */

TestSuite(cutover_catchup, .init = init_servers, .fini = fini_servers, .timeout = 120);

/*
 * The scenario: 8 pgbench clients insert through pgmux into A, which
 * B copies by logical replication; CUTOVER TO B mid-run. When CUTOVER TO
 * answers, B holds every row A has; no insert fails; later rows go to B
 * only. Logical replication does not carry B's sequence:
 * cutover_sync_sequences does, or B's first inserts would collide; a
 * sequence B lacks is logged and skipped.
 */
Test(cutover_catchup, logical_subscriber_holds_every_row_when_cutover_returns)
{
	subscribe_b_to_a();
	h_exec_on(pga.port, DB, "CREATE SEQUENCE only_on_a; SELECT nextval('only_on_a')");
	char extra[300];
	snprintf(extra, sizeof(extra),
		 "health_check_interval = 250ms\ncutover_user = %s\ncutover_timeout = 20s\n"
		 "cutover_sync_sequences = true\ncutover_sequence_margin = 100",
		 h_env()->superuser);
	start_pgmux_on_a(extra);

	struct h_cmd bench;
	h_start_inserts(&bench, px.port, 300, 1200); /* 2,400 rows in about 2 s */
	wait_rows_on_a(&bench, 300);

	PGconn *admin = admin_ok();
	long long t0 = h_now_ms();
	PGresult *r = cutover_to(admin, pgb.port, h_scaled_ms(30000));
	long long took = h_now_ms() - t0;
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO: %s", PQresultErrorMessage(r));
	PQclear(r);

	/* At this moment B must hold every row A committed. */
	long long rows_a = h_number_on(pga.port, DB, "SELECT count(*) FROM items");
	long long max_a = h_number_on(pga.port, DB, "SELECT coalesce(max(id), 0) FROM items");
	char sql[200];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM items WHERE id <= %lld", max_a);
	long long of_a_on_b = h_number_on(pgb.port, DB, sql);
	cr_log_info("CUTOVER TO took %lld ms; A had %lld rows (ids up to %lld), B held %lld of them", took, rows_a,
		    max_a, of_a_on_b);
	cr_expect_eq(of_a_on_b, rows_a, "when CUTOVER TO answered, B held %lld of A's %lld rows", of_a_on_b, rows_a);
	/* B's sequence stands at least the margin (100) past A's. */
	long long seq_a = h_number_on(pga.port, DB, "SELECT last_value FROM items_id_seq");
	long long seq_b = h_number_on(pgb.port, DB, "SELECT last_value FROM items_id_seq");
	cr_expect_geq(seq_b, seq_a + 100, "B's sequence is at %lld, A's at %lld", seq_b, seq_a);
	cr_expect(h_file_count(px.logfile, "only_on_a of database " DB " is not on the new target") == 1,
		  "the sequence B lacks is not logged");

	bool ended = h_cmd_wait(&bench, h_scaled_ms(30000));
	if (!ended)
		h_cmd_kill(&bench);
	h_expect_pgbench_clean(&bench, "pgbench");
	cr_expect(strstr(bench.out, "number of transactions actually processed: 2400/2400") != NULL,
		  "pgbench did not insert all 2,400 rows:\n%s", bench.out);

	/* Nothing reached A after the switch, and B has every row. */
	cr_expect_eq(h_number_on(pga.port, DB, "SELECT count(*) FROM items"), rows_a, "rows reached A after the switch");
	cr_expect_eq(h_number_on(pgb.port, DB, "SELECT count(*) FROM items"), 2400);
	cr_expect_eq(stat_of("cutovers"), 1);
	cr_expect_eq(stat_of("cutovers_abandoned"), 0);
	cr_expect(h_file_count(px.logfile, "confirmed") >= 1, "the log does not say what B confirmed");
	fprintf(stderr, "cutover with logical replication: CUTOVER TO took %lld ms, catch-up %lld ms of a %lld ms pause\n",
		took, stat_of("last_cutover_catchup_ms"), stat_of("last_cutover_pause_ms"));
	h_cmd_free(&bench);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/*
 * B's subscription is disabled: B never catches up. The cutover is abandoned
 * within cutover_timeout; a client that waited during the pause is served by
 * A; SHOW STATS and the log say why; the running hosts are A again.
 */
Test(cutover_catchup, a_target_that_never_catches_up_is_abandoned)
{
	subscribe_b_to_a();
	h_exec_on(pgb.port, DB, "ALTER SUBSCRIPTION sub DISABLE");
	/* The apply worker stops a moment later: until then it would still take what A writes. */
	PGconn *on_a = h_connect_super_port(pga.port, DB);
	cr_assert(h_poll_value(on_a, "SELECT active FROM pg_replication_slots WHERE slot_name = 'sub'", "f",
			       h_scaled_ms(10000)),
		  "the disabled subscription's slot on A stays active");
	PQfinish(on_a);
	char extra[200];
	snprintf(extra, sizeof(extra), "health_check_interval = 250ms\ncutover_user = %s\ncutover_timeout = 1500ms",
		 h_env()->superuser);
	start_pgmux_on_a(extra);
	PGconn *app = app_ok();
	h_exec_ok(app, "INSERT INTO items (client, note) VALUES (0, 'B never gets this')");

	PGconn *admin = admin_ok();
	char sql[200];
	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", pgb.port);
	long long t0 = h_now_ms();
	cr_assert(PQsendQuery(admin, sql));
	h_sleep_ms(200);
	/* A transaction sent during the pause waits, then runs on A. */
	cr_assert(PQsendQuery(app, "INSERT INTO items (client, note) VALUES (0, 'during the pause') "
				   "RETURNING inet_server_port()"));
	PGresult *r = h_get_result(admin, h_scaled_ms(10000));
	long long took = h_now_ms() - t0;
	cr_assert_not_null(r, "CUTOVER TO did not answer");
	cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "CUTOVER TO to a B that does not catch up succeeded");
	cr_expect(strstr(PQresultErrorMessage(r), "abandoned") != NULL && strstr(PQresultErrorMessage(r), "catch up"),
		  "the error does not say the cutover was abandoned for the catch-up: %s", PQresultErrorMessage(r));
	cr_log_info("CUTOVER TO answered after %lld ms: %s", took, PQresultErrorMessage(r));
	PQclear(r);
	while ((r = h_get_result(admin, 1000)) != NULL)
		PQclear(r);
	cr_expect_geq(took, 1400, "abandoned after %lld ms, before cutover_timeout", took);
	cr_expect_lt(took, h_scaled_ms(4000), "abandoned only after %lld ms", took);

	r = h_get_result(app, h_scaled_ms(5000));
	cr_assert_not_null(r, "the insert sent during the pause got no answer");
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "the insert sent during the pause failed: %s",
		     PQresultErrorMessage(r));
	cr_expect_eq(atoi(PQgetvalue(r, 0, 0)), pga.port, "the insert during the pause ran on port %s, not A's",
		     PQgetvalue(r, 0, 0));
	PQclear(r);
	while ((r = h_get_result(app, 1000)) != NULL)
		PQclear(r);
	char *port = h_value_ok(app, "SELECT inet_server_port()");
	cr_expect_eq(atoi(port), pga.port, "after the abandoned cutover a query ran on port %s", port);
	free(port);

	cr_expect_eq(stat_of("cutovers_abandoned"), 1);
	cr_expect_eq(stat_of("cutovers"), 0);
	cr_expect_eq(stat_of("paused"), 0);
	cr_expect(h_file_count(px.logfile, "abandoned after") == 1, "no \"abandoned\" line in pgmux's log");
	PGresult *cfg = PQexec(admin, "SHOW CONFIG");
	cr_assert_eq(PQresultStatus(cfg), PGRES_TUPLES_OK);
	bool back_on_a = false;
	for (int i = 0; i < PQntuples(cfg); i++)
		if (strcmp(PQgetvalue(cfg, i, PQfnumber(cfg, "name")), "hosts") == 0) {
			char want[32];
			snprintf(want, sizeof(want), "127.0.0.1:%d", pga.port);
			back_on_a = strstr(PQgetvalue(cfg, i, PQfnumber(cfg, "value")), want) != NULL;
		}
	PQclear(cfg);
	cr_expect(back_on_a, "SHOW CONFIG's hosts are not A's after the abandoned cutover");
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/*
 * B copies nothing from A (a restored snapshot, say). cutover_require_catchup
 * (on by default) refuses at once and says why; turned off, the cutover goes
 * ahead with a WARNING.
 */
Test(cutover_catchup, no_replication_follows_cutover_require_catchup)
{
	char extra[200];
	snprintf(extra, sizeof(extra), "health_check_interval = 250ms\ncutover_user = %s", h_env()->superuser);
	start_pgmux_on_a(extra);
	PGconn *admin = admin_ok();
	long long t0 = h_now_ms();
	PGresult *r = cutover_to(admin, pgb.port, h_scaled_ms(10000));
	cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "CUTOVER TO to an unrelated B succeeded");
	cr_expect(strstr(PQresultErrorMessage(r), "cutover_require_catchup") != NULL, "the error: %s",
		  PQresultErrorMessage(r));
	PQclear(r);
	cr_expect_lt(h_now_ms() - t0, h_scaled_ms(2000), "the refusal took %lld ms", h_now_ms() - t0);
	cr_expect_eq(stat_of("cutovers_abandoned"), 1);
	PGconn *app = app_ok();
	char *port = h_value_ok(app, "SELECT inet_server_port()");
	cr_expect_eq(atoi(port), pga.port);
	free(port);

	/* Off: the cutover goes ahead, with a WARNING. */
	snprintf(extra, sizeof(extra), "health_check_interval = 250ms\ncutover_user = %s\ncutover_require_catchup = false",
		 h_env()->superuser);
	reload_on_a(admin, extra);
	r = cutover_to(admin, pgb.port, h_scaled_ms(10000));
	cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO with cutover_require_catchup = false: %s",
		     PQresultErrorMessage(r));
	PQclear(r);
	cr_expect(h_file_count(px.logfile, "switching without a catch-up check") == 1, "no WARNING in the log");
	port = h_value_ok(app, "SELECT inet_server_port()");
	cr_expect_eq(atoi(port), pgb.port);
	free(port);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/*
 * A client that holds its backend beyond a transaction (session pooling, or
 * a pinned session) is in a transaction on A when CUTOVER TO comes: the
 * cutover waits for it, its COMMIT succeeds on A, and then it gets FATAL
 * 57P01 "pgmux moved to a new server; reconnect"; what it sends after that
 * reaches no server. A new session runs on B.
 */
static void holder_finishes_then_goes(const char *pool_mode, bool pin)
{
	subscribe_b_to_a();
	char extra[300];
	snprintf(extra, sizeof(extra), "health_check_interval = 250ms\ncutover_user = %s\ncutover_timeout = 10s",
		 h_env()->superuser);
	start_pgmux_mode_on_a(pool_mode, extra);
	PGconn *c = app_ok();
	struct h_notices notices = {0};
	PQsetNoticeReceiver(c, h_record_notices, &notices);
	if (pin)
		h_exec_ok(c, "CREATE TEMP TABLE pin_me (x int)");
	h_exec_ok(c, "BEGIN");
	char *port = h_value_ok(c, "INSERT INTO items (client, note) VALUES (7, 'in the transaction') "
				   "RETURNING inet_server_port()");
	cr_assert_eq(atoi(port), pga.port);
	free(port);

	PGconn *admin = admin_ok();
	char sql[200];
	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", pgb.port);
	cr_assert(PQsendQuery(admin, sql));
	PGresult *r = h_get_result(admin, 500);
	cr_assert_null(r, "CUTOVER TO answered while a %s session was in a transaction", pin ? "pinned" : pool_mode);

	/* Its transaction completes, on A... */
	h_exec_ok(c, "COMMIT");
	r = h_get_result(admin, h_scaled_ms(10000));
	cr_assert_not_null(r, "CUTOVER TO did not answer after the COMMIT");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO: %s", PQresultErrorMessage(r));
	PQclear(r);
	while ((r = h_get_result(admin, 1000)) != NULL)
		PQclear(r);
	/* ...then the session is told to reconnect, and what it sends reaches no server. */
	r = PQexec(c, "INSERT INTO items (client, note) VALUES (7, 'after the cutover')");
	cr_expect_neq(PQresultStatus(r), PGRES_COMMAND_OK, "the %s session still works after the cutover",
		      pin ? "pinned" : pool_mode);
	PQclear(r);
	cr_expect(strstr(notices.text, "pgmux moved to a new server; reconnect") != NULL ||
			  strstr(PQerrorMessage(c), "pgmux moved to a new server; reconnect") != NULL,
		  "no FATAL saying why: \"%s\" / \"%s\"", notices.text, PQerrorMessage(c));
	cr_expect_eq(PQstatus(c), CONNECTION_BAD);
	PQfinish(c);
	cr_expect_eq(h_number_on(pga.port, DB, "SELECT count(*) FROM items WHERE note = 'in the transaction'"), 1);
	cr_expect_eq(h_number_on(pga.port, DB, "SELECT count(*) FROM items WHERE note = 'after the cutover'"), 0);
	cr_expect_eq(h_number_on(pgb.port, DB, "SELECT count(*) FROM items WHERE note = 'after the cutover'"), 0);
	cr_expect_eq(h_number_on(pgb.port, DB, "SELECT count(*) FROM items WHERE note = 'in the transaction'"), 1,
		     "B does not have the row committed on A before the switch");

	c = app_ok();
	port = h_value_ok(c, "SELECT inet_server_port()");
	cr_expect_eq(atoi(port), pgb.port, "a new session runs on port %s, not B's", port);
	free(port);
	PQfinish(c);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(cutover_catchup, session_pooled_client_finishes_then_goes)
{
	holder_finishes_then_goes("session", false);
}

Test(cutover_catchup, pinned_client_finishes_then_goes)
{
	holder_finishes_then_goes("transaction", true);
}

/* The secret of user "cluster", which names the writer as RDS's and Aurora's secrets do. */
static void write_cluster_secret(const char *dir, int port)
{
	char path[700], text[300];
	snprintf(path, sizeof(path), "%s/cluster.json", dir);
	snprintf(text, sizeof(text),
		 "{\"username\": \"cluster\", \"password\": \"unused\", \"engine\": \"postgres\", "
		 "\"host\": \"127.0.0.1\", \"port\": %d, \"dbname\": \"" DB "\"}\n",
		 port);
	h_write_file(path, text, 0600);
}

/*
 * hosts_from_secret: pgmux takes the writer from the host and port of a
 * secret in secrets_dir. The user's cutover plan edits that secret's host;
 * with a SIGHUP that is a cutover, through the catch-up gate: a row written
 * through pgmux just before is on B when SHOW STATS counts the cutover.
 */
Test(cutover_catchup, editing_the_secret_host_and_sighup_cut_over)
{
	const struct h_env *e = h_env();
	subscribe_b_to_a();
	char dir[600];
	h_secrets_dir_for_cutover(dir, sizeof(dir));
	write_cluster_secret(dir, pga.port);

	struct pgmux_options o;
	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.tls = false;
	o.admin_users = e->superuser;
	o.secrets_dir = dir;
	o.hosts = "127.0.0.1:1"; /* the secret says otherwise */
	char extra[300];
	snprintf(extra, sizeof(extra), "health_check_interval = 250ms\ncutover_user = %s\nhosts_from_secret = cluster",
		 e->superuser);
	o.extra_target = extra;
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
	PGconn *app = app_ok();
	char *port = h_value_ok(app, "SELECT inet_server_port()");
	cr_assert_eq(atoi(port), pga.port, "with the secret naming A, a session runs on port %s", port);
	free(port);

	/* The user's plan, step 5: the secret's host moves to the new server. */
	write_cluster_secret(dir, pgb.port);
	h_exec_ok(app, "INSERT INTO items (client, note) VALUES (5, 'just before the edit')");
	cr_assert_eq(kill(px.pid, SIGHUP), 0);
	PGconn *admin = admin_ok();
	long long deadline = h_now_ms() + h_scaled_ms(15000);
	while (h_admin_stat(admin, "cutovers") < 1) {
		if (h_now_ms() >= deadline) {
			pgmux_dump_logs(&px);
			cr_assert_fail("no cutover within 15 s of editing the secret and SIGHUP");
		}
		h_sleep_ms(20);
	}
	cr_expect_eq(h_number_on(pgb.port, DB, "SELECT count(*) FROM items WHERE note = 'just before the edit'"), 1,
		     "the cutover did not wait for B to have A's last row");
	cr_expect(h_file_count(px.logfile, "confirmed") >= 1, "the cutover did not go through the catch-up gate");
	port = h_value_ok(app, "SELECT inet_server_port()");
	cr_expect_eq(atoi(port), pgb.port, "after the edit a session runs on port %s, not B's", port);
	free(port);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ a physical standby */

TestSuite(cutover_standby, .init = init_primary_and_standby, .fini = fini_servers, .timeout = 120);

/*
 * B is A's physical standby. A writer cutover to it is refused while it is
 * in recovery; with cutover_promote = true, CUTOVER TO mid-run waits until B
 * has replayed A's position, promotes it, waits until it takes writes, and
 * switches: no insert fails, B holds every row of A's when CUTOVER TO
 * returns, and later rows reach B only.
 */
Test(cutover_standby, promoted_after_it_caught_up)
{
	char extra[300];
	snprintf(extra, sizeof(extra), "health_check_interval = 250ms\ncutover_user = %s\ncutover_timeout = 20s",
		 h_env()->superuser);
	start_pgmux_on_a(extra);
	PGconn *admin = admin_ok();
	PGresult *r = cutover_to(admin, pgb.port, h_scaled_ms(10000));
	cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "CUTOVER TO a standby without cutover_promote succeeded");
	cr_expect(strstr(PQresultErrorMessage(r), "in recovery") != NULL, "the error: %s", PQresultErrorMessage(r));
	PQclear(r);

	snprintf(extra, sizeof(extra),
		 "health_check_interval = 250ms\ncutover_user = %s\ncutover_timeout = 20s\ncutover_promote = true",
		 h_env()->superuser);
	reload_on_a(admin, extra);

	struct h_cmd bench;
	h_start_inserts(&bench, px.port, 300, 1200);
	wait_rows_on_a(&bench, 300);
	long long t0 = h_now_ms();
	r = cutover_to(admin, pgb.port, h_scaled_ms(30000));
	long long took = h_now_ms() - t0;
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO the standby: %s", PQresultErrorMessage(r));
	PQclear(r);

	long long rows_a = h_number_on(pga.port, DB, "SELECT count(*) FROM items");
	long long max_a = h_number_on(pga.port, DB, "SELECT coalesce(max(id), 0) FROM items");
	char sql[200];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM items WHERE id <= %lld", max_a);
	long long of_a_on_b = h_number_on(pgb.port, DB, sql);
	cr_expect_eq(of_a_on_b, rows_a, "when CUTOVER TO answered, B held %lld of A's %lld rows", of_a_on_b, rows_a);
	cr_expect_eq(h_number_on(pgb.port, "postgres", "SELECT pg_is_in_recovery()::int"), 0, "B is still a standby");

	bool ended = h_cmd_wait(&bench, h_scaled_ms(30000));
	if (!ended)
		h_cmd_kill(&bench);
	h_expect_pgbench_clean(&bench, "pgbench");
	cr_expect(strstr(bench.out, "number of transactions actually processed: 2400/2400") != NULL,
		  "pgbench did not insert all 2,400 rows:\n%s", bench.out);
	cr_expect_eq(h_number_on(pga.port, DB, "SELECT count(*) FROM items"), rows_a, "rows reached A after the switch");
	cr_expect_eq(h_number_on(pgb.port, DB, "SELECT count(*) FROM items"), 2400);
	cr_expect(h_file_count(px.logfile, "left recovery") == 1, "the log does not say B left recovery");
	fprintf(stderr, "cutover to a promoted standby: CUTOVER TO took %lld ms, pause %lld ms\n", took,
		stat_of("last_cutover_pause_ms"));
	h_cmd_free(&bench);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}
