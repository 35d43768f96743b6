/*
 * test_fuzz.c: what a logged-in client sends pgmux, and what may go wrong
 * with it: one test per bug found there, each a specific message sequence
 * (answered as PostgreSQL answers it, without harm to other clients).
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static struct pgmux px;

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static void fini_kill_leftovers(void)
{
	h_teardown();
}

/* Trust, no TLS on either side. */
static void start_fuzz_pgmux(const char *pool_mode, int max_connections, int workers, const char *extra_pool)
{
	struct pgmux_options o;

	h_wait_no_app_backends();
	pgmux_options_default(&o);
	o.tls = false;
	o.server_tls = "disable";
	o.client_auth = "trust";
	o.pool_mode = pool_mode;
	o.max_connections = max_connections;
	o.workers = workers;
	o.extra_pgmux = "max_packet_size = 64kB";
	o.extra_pool = extra_pool;
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
}

/* ================================================================ what the fuzzer found */

TestSuite(fuzz_found, .fini = fini_kill_leftovers, .timeout = 120);

/* Is the only backend idle, with the reset after its session (session pooling) done? */
static bool backend_parked(void *arg)
{
	PGconn *super = arg;
	char *v = h_query_value(super, "select count(*) from pg_stat_activity where usename = 'app' and "
				       "state = 'idle' and (query = 'DISCARD ALL' or query like 'select 40%')");
	bool parked = v && strcmp(v, "1") == 0;

	free(v);
	return parked;
}

/*
 * With trust, a login completes inside the handler of the startup packet
 * when an idle backend already matches the client's session (no setup query
 * to wait for). The packet was still in the input buffer then, and was
 * relayed as the client's first message: FATAL "invalid frontend message
 * type 0" (its length's first byte) for a client that did nothing wrong.
 */
static void trust_login_on_matching_backend(const char *pool_mode)
{
	PGconn *super;

	/* One worker: the backend is handed over at once, not through another worker's inbox. */
	start_fuzz_pgmux(pool_mode, 1, 1, NULL);
	super = h_connect_super_direct();
	for (int i = 0; i < 3; i++) {
		PGconn *conn = h_app_session(&px, "disable", NULL);

		h_expect_value(conn, "select 40 + 2", "42");
		PQfinish(conn);
		/* The next login finds the backend idle in the pool (a little later, when pgmux saw it). */
		cr_assert(h_poll_until(backend_parked, super, h_scaled_ms(5000)), "the backend did not come back idle");
		h_sleep_ms(h_scaled_ms(100));
	}
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

Test(fuzz_found, trust_login_on_an_idle_matching_backend_session_pooling)
{
	trust_login_on_matching_backend("session");
}

Test(fuzz_found, trust_login_on_an_idle_matching_backend_transaction_pooling)
{
	trust_login_on_matching_backend("transaction");
}
