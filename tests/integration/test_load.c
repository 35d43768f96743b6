/*
 * test_prepared_load.c: issue 15's acceptance test. pgbench's TPC-B script
 * with -M prepared through pgmux in transaction pooling, with more clients
 * (16, 32, 64; two pgbench threads) than backends (8). pgbench prepares each
 * command with a synchronous PQprepare (Parse + Sync) the first time a client
 * runs it, which blocks the whole pgbench thread; when that thread's other
 * clients hold every backend inside their transactions, a pgmux that needs a
 * backend for the Parse never gets one (the issue: 8 transactions processed,
 * then 53300 and "prepared statement P_0 does not exist"). Each run must end
 * with no failed transaction and no aborted client, and -M prepared must keep
 * at least half of the throughput of -M simple, measured here the same way.
 *
 * Each pgbench run is short (-T 3) and has a hard time limit, so a stall
 * fails the test instead of hanging it.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKENDS 8
#define THREADS "2"

static struct pgmux px;

TestSuite(prepared_load, .fini = h_teardown, .timeout = 240);

/*
 * Transaction pooling over BACKENDS backends, kept while idle. A client that
 * waits for a backend gives up after 10 s: far longer than any wait of a
 * pgbench transaction here, far shorter than the test's time limits, so a
 * stall shows as failed transactions rather than as a killed pgbench.
 */
static void start_pool(void)
{
	struct pgmux_options o;

	h_wait_no_app_backends();
	pgmux_options_default(&o);
	o.tls = false;
	o.server_tls = "disable";
	o.pool_mode = "transaction";
	o.max_connections = BACKENDS;
	o.admin_users = h_env()->superuser;
	o.extra_pool = "max_idle_connections_percent = 100\nconnection_borrow_timeout = 10s";
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
}

/* The number after key in pgbench's output, or -1 when the line is missing. */
static double pgbench_number(const char *out, const char *key)
{
	const char *p = out ? strstr(out, key) : NULL;

	return p ? strtod(p + strlen(key), NULL) : -1;
}

struct run_result {
	double tps;
	long processed;
};

/*
 * pgbench -M protocol -c clients -j THREADS -T seconds (TPC-B) through pgmux.
 * It must end within its time limit, exit 0 (2 means a client aborted), and
 * report no failed transaction; what it did is returned.
 */
static struct run_result run_pgbench(const char *protocol, int clients, int seconds)
{
	const struct h_env *e = h_env();
	char pgbench[600], port[16], pw[300], nclients[16], duration[16], what[96];
	struct h_cmd c;
	struct run_result r;

	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(port, sizeof(port), "%d", px.port);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	snprintf(nclients, sizeof(nclients), "%d", clients);
	snprintf(duration, sizeof(duration), "%d", h_under_valgrind() ? seconds * 3 : seconds);
	snprintf(what, sizeof(what), "pgbench -M %s -c %d -j %s", protocol, clients, THREADS);
	const char *argv[] = {pgbench, "-n",  "-M", protocol,    "-c", nclients, "-j",    THREADS, "-T", duration,
			      "-h",    "127.0.0.1", "-p", port, "-U", e->appuser, "postgres", NULL};
	const char *env[] = {pw, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30", NULL};

	/* -T plus the borrow timeout and the connections: anything longer is a stall. */
	int st = h_cmd_run(&c, argv, env, h_scaled_ms((seconds + 25) * 1000));
	bool clean = st == 0 && c.out && strstr(c.out, "number of failed transactions: 0 ") != NULL;

	if (!clean) {
		h_cmd_dump(&c, what);
		pgmux_dump_logs(&px);
	}
	cr_assert_neq(st, -1, "%s did not end within %d s of its %d s run: it stalled", what, 25, seconds);
	cr_assert_neq(st, 2, "%s: a client aborted (exit status 2):\n%s", what, c.err);
	cr_assert_eq(st, 0, "%s exited with %d:\n%s", what, st, c.err);
	cr_assert(strstr(c.out, "number of failed transactions: 0 ") != NULL, "%s reports failed transactions:\n%s",
		  what, c.out);
	cr_assert_null(strstr(c.err, "aborted"), "%s: a client aborted:\n%s", what, c.err);
	r.processed = (long)pgbench_number(c.out, "number of transactions actually processed: ");
	r.tps = pgbench_number(c.out, "tps = ");
	cr_assert_gt(r.processed, 0, "%s processed no transaction:\n%s", what, c.out);
	cr_assert_gt(r.tps, 0, "no tps in the output of %s:\n%s", what, c.out);
	cr_log_info("%s: %ld transactions, %.0f tps", what, r.processed, r.tps);
	fprintf(stderr, "%s: %ld transactions, %.0f tps\n", what, r.processed, r.tps);
	h_cmd_free(&c);
	return r;
}

/* -M simple, then -M prepared, with the same number of clients; prepared keeps half the throughput. */
static void prepared_against_simple(int clients)
{
	start_pool();
	struct run_result simple = run_pgbench("simple", clients, 3);
	struct run_result prepared = run_pgbench("prepared", clients, 3);

	cr_assert_geq(prepared.tps, simple.tps / 2,
		      "-M prepared with %d clients over %d backends: %.0f tps, under half of -M simple's %.0f", clients,
		      BACKENDS, prepared.tps, simple.tps);
	h_stop_expect_clean_exit(&px);
}

Test(prepared_load, tpcb_16_clients_over_8_backends)
{
	prepared_against_simple(16);
}

Test(prepared_load, tpcb_32_clients_over_8_backends)
{
	prepared_against_simple(32);
}

Test(prepared_load, tpcb_64_clients_over_8_backends)
{
	prepared_against_simple(64);
}
