/*
 * test_cutover_secretsmgr.c: hosts_from_secret with the secret in AWS
 * Secrets Manager (moto). A, the old writer, publishes its items to B; the
 * secret names A. Its host is changed to B in Secrets Manager, then pgmux
 * gets a SIGHUP (which also has the aws thread read the secrets again): pgmux
 * cuts over to B through the catch-up gate while pgbench inserts through it,
 * and no insert fails. Skipped, saying so, without a Python that has moto.
 */
#include "harness.h"
#include "harness_aws.h"
#include "harness_cutover.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct pgmux px;
static struct h_pg pga, pgb;
static struct h_moto moto;

static void init_secretsmgr_cutover(void)
{
	h_aws_clean_environment();
	h_shop_servers_start(&pga, &pgb);
}

static void fini_secretsmgr_cutover(void)
{
	pgmux_kill(&px);
	h_moto_stop(&moto);
	h_pg_stop(&pgb);
	h_pg_stop(&pga);
	h_teardown();
}

TestSuite(cutover_secretsmgr, .init = init_secretsmgr_cutover, .fini = fini_secretsmgr_cutover, .timeout = 120);

static const char put_cluster_secret_py[] =
	"import boto3, json, sys\n"
	"name, port = sys.argv[1], int(sys.argv[2])\n"
	"sm = boto3.client('secretsmanager', region_name='us-east-1')\n"
	"value = json.dumps({'username': 'cluster', 'password': 'unused', 'engine': 'postgres',\n"
	"                    'host': '127.0.0.1', 'port': port, 'dbname': 'shop'})\n"
	"try:\n"
	"    sm.put_secret_value(SecretId=name, SecretString=value)\n"
	"except sm.exceptions.ResourceNotFoundException:\n"
	"    sm.create_secret(Name=name, SecretString=value)\n";

/* The secret pgmux/cluster, the shape of an RDS secret, naming 127.0.0.1:port as the writer. */
static void put_cluster_secret(int port)
{
	char portstr[16];
	snprintf(portstr, sizeof(portstr), "%d", port);
	const char *args[] = { "pgmux/cluster", portstr, NULL };
	free(h_run_python(put_cluster_secret_py, args));
}

static long long stat_of(const char *name)
{
	PGconn *admin = h_admin_session(&px);
	long long v = h_admin_stat(admin, name);
	PQfinish(admin);
	return v;
}

Test(cutover_secretsmgr, a_host_changed_in_secrets_manager_cuts_over_through_the_gate)
{
	const struct h_env *e = h_env();
	char dir[600], extra_pgmux[300], extra_target[300];
	struct pgmux_options o;
	struct h_cmd bench;

	h_moto_start(&moto);
	h_aws_use_static_keys();
	h_subscribe(pga.port, pgb.port);
	put_cluster_secret(pga.port);
	h_secrets_dir_for_cutover(dir, sizeof(dir));

	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.tls = false;
	o.max_connections = 8;
	o.admin_users = e->superuser;
	o.secrets_dir = dir;
	o.hosts = "127.0.0.1:1"; /* the secret says otherwise */
	/* A long refresh interval: the SIGHUP is what has pgmux read the secret again. */
	snprintf(extra_pgmux, sizeof(extra_pgmux),
		 "secrets_manager_secrets = pgmux/cluster\naws_region = us-east-1\nsecrets_refresh_interval = 1h\n");
	o.extra_pgmux = extra_pgmux;
	snprintf(extra_target, sizeof(extra_target),
		 "health_check_interval = 250ms\ncutover_user = %s\ncutover_timeout = 20s\nhosts_from_secret = cluster\n"
		 "cutover_sync_sequences = true", /* logical replication does not carry items_id_seq */
		 e->superuser);
	o.extra_target = extra_target;
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
	PGconn *app = h_app_session(&px, "disable", "dbname=" H_SHOP_DB);
	char *port = h_value_ok(app, "SELECT inet_server_port()");
	cr_assert_eq(atoi(port), pga.port, "with the secret naming A, a session runs on port %s", port);
	free(port);

	/* Inserts flow through pgmux to A; the secret's host moves to B; SIGHUP. */
	h_start_inserts(&bench, px.port, 200, 800); /* 1,600 rows in about 2 s */
	PGconn *on_a = h_connect_super_port(pga.port, H_SHOP_DB);
	cr_assert(h_poll_value(on_a, "SELECT count(*) > 100 FROM items", "t", h_scaled_ms(15000)),
		  "pgbench did not get rows through pgmux to A");
	PQfinish(on_a);
	put_cluster_secret(pgb.port);
	h_exec_ok(app, "INSERT INTO items (client, note) VALUES (0, 'just before the SIGHUP')");
	long long t0 = h_now_ms();
	cr_assert_eq(kill(px.pid, SIGHUP), 0);
	PGconn *admin = h_admin_session(&px);
	if (!h_admin_poll_cell(admin, "SHOW STATS", "name", "cutovers", "value", "1", h_scaled_ms(15000))) {
		pgmux_dump_logs(&px);
		cr_assert_fail("no cutover within 15 s of the secret's change and SIGHUP");
	}
	long long took = h_now_ms() - t0;
	cr_expect_eq(h_number_on(pgb.port, H_SHOP_DB, "SELECT count(*) FROM items WHERE note = 'just before the SIGHUP'"),
		     1, "the cutover did not wait for B to have A's last row");
	cr_expect(h_file_count(px.logfile, "hosts_from_secret: the secret of cluster names 127.0.0.1") == 1,
		  "the log does not say the secret moved");
	cr_expect(h_file_count(px.logfile, "confirmed") >= 1, "the cutover did not go through the catch-up gate");

	/* No insert failed, every one is on B, and nothing reached A after the switch. */
	bool ended = h_cmd_wait(&bench, h_scaled_ms(30000));
	if (!ended)
		h_cmd_kill(&bench);
	h_expect_pgbench_clean(&bench, "pgbench");
	cr_expect(strstr(bench.out, "number of transactions actually processed: 1600/1600") != NULL,
		  "pgbench did not insert all 1,600 rows:\n%s", bench.out);
	long long on_b = h_number_on(pgb.port, H_SHOP_DB, "SELECT count(*) FROM items");
	cr_expect_eq(on_b, 1601, "B has %lld of the 1,601 rows", on_b);
	cr_expect_leq(h_number_on(pga.port, H_SHOP_DB, "SELECT count(*) FROM items"), on_b);
	port = h_value_ok(app, "SELECT inet_server_port()");
	cr_expect_eq(atoi(port), pgb.port, "after the change a session runs on port %s, not B's", port);
	free(port);
	cr_expect_eq(h_admin_stat(admin, "cutovers_abandoned"), 0);
	fprintf(stderr, "cutover_secretsmgr: SIGHUP to cutover %lld ms; pause %lld ms (catch-up %lld ms)\n", took,
		stat_of("last_cutover_pause_ms"), stat_of("last_cutover_catchup_ms"));
	h_cmd_free(&bench);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
	h_moto_stop(&moto);
}
