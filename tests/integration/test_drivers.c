/*
 * test_drivers.c: real client drivers through pgmux in transaction pooling,
 * each over a pool of two backends: asyncpg (its own named prepared
 * statements and statement cache, its pool's reset query, its query timeout,
 * which sends a cancel) and psycopg 3 (server-side prepared statements,
 * pipeline mode, Connection.cancel()) with psycopg2 (simple queries,
 * implicit transaction blocks). The scripts in tests/drivers/ check every
 * answer, and that no more than three backends served them (two at a time;
 * pgmux replaces the one a cancel reached); this file starts pgmux, runs
 * them with Debian's python3 and checks what pgmux saw: no session pinned.
 *
 * The drivers come from Debian (python3-asyncpg, python3-psycopg,
 * python3-psycopg2; .ci/run installs them). /usr/bin/python3 is used on
 * purpose: another python3 first in PATH would lack them.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PYTHON "/usr/bin/python3"
#define BACKENDS 2

static struct pgmux px;

TestSuite(drivers, .fini = h_teardown, .timeout = 300);

/*
 * Runs tests/drivers/SCRIPT against a fresh pgmux with a pool of backends
 * (and the extra [pool] lines, or NULL); its output must contain want.
 */
static void run_driver_script_over(const char *script, const char *want, int backends, const char *extra_pool)
{
	const struct h_env *e = h_env();
	char path[700], port[32], user[300], pw[300], max_backends[32];
	struct h_cmd c;

	pgmux_start_transaction(&px, backends, NULL, extra_pool);

	const char *top = getenv("TOP_SRCDIR"); /* set by tests/run-tests.sh */
	snprintf(path, sizeof(path), "%s/tests/drivers/%s", top ? top : ".", script);
	snprintf(port, sizeof(port), "PGPORT=%d", px.port);
	snprintf(user, sizeof(user), "PGUSER=%s", e->appuser);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	snprintf(max_backends, sizeof(max_backends), "MAX_BACKENDS=%d", backends);
	const char *argv[] = {PYTHON, path, NULL};
	const char *env[] = {"PGHOST=127.0.0.1", port, user, pw, "PGDATABASE=postgres", max_backends,
			     h_under_valgrind() ? "DRIVER_ROUNDS=15" : "DRIVER_ROUNDS=40", NULL};
	cr_assert(access(PYTHON, X_OK) == 0, "%s is missing (install python3 and the drivers: see .ci/run)", PYTHON);
	int st = h_cmd_run(&c, argv, env, h_scaled_ms(120000));
	if (st != 0 || strstr(c.out, want) == NULL) {
		h_cmd_dump(&c, script);
		pgmux_dump_logs(&px);
	}
	cr_assert_eq(st, 0, "%s exited with %d: %s", script, st, c.err);
	cr_assert(strstr(c.out, want) != NULL, "%s did not print \"%s\": %s", script, want, c.out);
	cr_log_info("%s", c.out);
	h_cmd_free(&c);

	/* Everything the drivers do is carried: nothing pinned a session to its backend. */
	PGconn *admin = h_admin_session(&px);
	long long pinned = h_admin_stat(admin, "sessions_pinned_total");
	PQfinish(admin);
	if (pinned != 0)
		pgmux_dump_logs(&px);
	cr_assert_eq(pinned, 0, "%lld session(s) were pinned", pinned);
	h_stop_expect_clean_exit(&px);
}

static void run_driver_script(const char *script, const char *want)
{
	run_driver_script_over(script, want, BACKENDS, NULL);
}

Test(drivers, asyncpg_pool_with_its_statement_cache)
{
	run_driver_script("asyncpg_pool.py", "asyncpg ok:");
}

Test(drivers, psycopg3_pipeline_and_psycopg2)
{
	run_driver_script("psycopg_pipeline.py", "psycopg ok:");
}

/*
 * Issue 15: more connections than backends (four per backend), writing in
 * transactions with statements prepared on the server, and pgbench's
 * pattern in one thread: a synchronous PQprepare on an idle connection while
 * the same thread's other connections hold every backend in a transaction.
 * A client waits at most 10 s for a backend, so a deadlock through pgmux
 * shows as an error (53300) in the script, not as a hang.
 */
#define LOAD_BACKENDS 6
#define LOAD_POOL "connection_borrow_timeout = 10s"

Test(drivers, psycopg3_prepared_transactions_more_clients_than_backends)
{
	run_driver_script_over("psycopg_prepared_txn.py", "psycopg prepared ok:", LOAD_BACKENDS, LOAD_POOL);
}

Test(drivers, asyncpg_statement_cache_in_transactions_more_clients_than_backends)
{
	run_driver_script_over("asyncpg_prepared_txn.py", "asyncpg prepared ok:", LOAD_BACKENDS, LOAD_POOL);
}
