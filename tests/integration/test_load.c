/*
 * test_load.c: pgmux under load from pgbench and from many libpq clients at
 * once: no failed transaction, and never more backends than the pool
 * allows. Session pooling over TLS; transaction pooling with 64 pgbench
 * clients over 8 backends in each query protocol and 100 threads over 4
 * backends; and issue 15's acceptance test, pgbench -M prepared (TPC-B)
 * with more clients than backends, which must keep at least half of -M
 * simple's throughput. A single thread with many sessions is
 * test_stress.c's.
 *
 * Each pgbench run has a hard time limit, so a stall fails the test instead
 * of hanging it.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct pgmux px;

/* ================================================================ session pooling */

TestSuite(load, .fini = h_teardown, .timeout = 180);

/* pgbench -S with 32 clients over TLS, session pooling with 40 connections: every transaction passes. */
Test(load, select_only_32_clients_over_tls)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.require_tls = true;
	o.pool_mode = "session";
	o.max_connections = 40;
	pgmux_start_ok(&px, &o);
	/*
	 * Under valgrind, 32 TLS + SCRAM logins alone can take longer than 12 s
	 * (pgbench's -T counts them): one CI run processed nothing in 12.
	 */
	const char *duration = h_under_valgrind() ? "20" : "5";
	const char *args[] = {"-n", "-S", "-c", "32", "-j", "2", "-T", duration, NULL};
	struct h_cmd c;
	h_pgbench_run(&c, px.port, "require", "postgres", args, h_scaled_ms(60000));
	h_expect_pgbench_clean(&c, "pgbench -S -c 32 over TLS");
	long processed = h_pgbench_processed(&c);
	if (processed <= 0)
		h_cmd_dump(&c, "pgbench");
	cr_assert_gt(processed, 0, "pgbench processed no transactions");
	cr_log_info("pgbench through pgmux: %ld transactions", processed);
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ transaction pooling */

TestSuite(load_txn, .fini = h_teardown, .timeout = 300);

/*
 * pgbench -S with 64 clients over 8 backends. While it runs, pg_stat_activity
 * is sampled from a direct superuser connection: app never has more than 8
 * backends.
 */
static void pgbench_64_clients_over_8(const char *protocol, const char *sslmode)
{
	pgmux_start_transaction(&px, 8, NULL, NULL);
	/* Under valgrind, 64 TLS handshakes alone take several seconds. */
	bool tls = strcmp(sslmode, "disable") != 0;
	const char *duration = h_under_valgrind() ? (tls ? "10" : "6") : "5";
	const char *args[] = {"-n", "-S", "-M", protocol, "-c", "64", "-j", "2", "-T", duration, NULL};

	PGconn *super = h_connect_super_direct();
	struct h_cmd c;
	cr_assert(h_pgbench_start(&c, px.port, sslmode, "postgres", args));
	int samples = 0, max_seen = 0;
	long long deadline = h_now_ms() + h_scaled_ms(90000);
	while (!h_cmd_wait(&c, 100)) {
		if (h_now_ms() > deadline) {
			h_cmd_kill(&c);
			h_cmd_dump(&c, "pgbench");
			cr_assert_fail("pgbench -M %s did not finish in time", protocol);
		}
		int n = h_app_backends(super);
		samples++;
		if (n > max_seen)
			max_seen = n;
	}
	PQfinish(super);

	char what[64];
	snprintf(what, sizeof(what), "pgbench -M %s", protocol);
	h_expect_pgbench_clean(&c, what);
	long processed = h_pgbench_processed(&c);
	cr_assert_gt(processed, 0, "pgbench -M %s processed no transactions", protocol);
	cr_assert_geq(samples, 3, "pg_stat_activity was sampled only %d times while pgbench ran", samples);
	cr_assert_leq(max_seen, 8, "app had %d backends with max_connections = 8 (pgbench -M %s)", max_seen,
		      protocol);
	cr_assert_gt(max_seen, 0, "no backend of app was ever seen while pgbench ran");
	cr_log_info("pgbench -M %s: %ld transactions, at most %d backends in %d samples", protocol, processed,
		    max_seen, samples);
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

Test(load_txn, simple_protocol_64_clients_8_backends_tls)
{
	pgbench_64_clients_over_8("simple", "require");
}

Test(load_txn, extended_protocol_64_clients_8_backends)
{
	pgbench_64_clients_over_8("extended", "disable");
}

Test(load_txn, prepared_statements_64_clients_8_backends)
{
	pgbench_64_clients_over_8("prepared", "disable");
}

/* 100 clients over 4 backends, each with its own connection on a thread. */
#define MANY_CLIENTS 100

struct many {
	int port;
	int transactions;
	atomic_int done;
	atomic_int failures;
	atomic_int committed;
	char error[512];
};

static void many_fail(struct many *m, const char *what, PGconn *conn)
{
	if (atomic_fetch_add(&m->failures, 1) == 0)
		snprintf(m->error, sizeof(m->error), "%s: %s", what, conn ? PQerrorMessage(conn) : "");
}

static void *many_client(void *arg)
{
	struct many *m = arg;
	PGconn *conn = h_connect_app(m->port, "disable", NULL);
	if (PQstatus(conn) != CONNECTION_OK) {
		many_fail(m, "connect", conn);
		goto out;
	}
	for (int i = 0; i < m->transactions; i++) {
		char param[16];
		snprintf(param, sizeof(param), "%d", i);
		const char *v[1] = {param};
		PGresult *r = PQexec(conn, "begin");
		bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
		PQclear(r);
		if (!ok) {
			many_fail(m, "begin", conn);
			break;
		}
		r = PQexecParams(conn, "select pg_backend_pid(), $1::int", 1, NULL, v, NULL, NULL, 0);
		ok = PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 1), param) == 0;
		int pid1 = ok ? atoi(PQgetvalue(r, 0, 0)) : 0;
		PQclear(r);
		if (!ok) {
			many_fail(m, "select in the transaction", conn);
			break;
		}
		r = PQexec(conn, "select pg_backend_pid()");
		ok = PQresultStatus(r) == PGRES_TUPLES_OK;
		int pid2 = ok ? atoi(PQgetvalue(r, 0, 0)) : 0;
		PQclear(r);
		if (!ok || pid1 != pid2) {
			many_fail(m, ok ? "the backend changed inside a transaction" : "second select", conn);
			break;
		}
		r = PQexec(conn, "commit");
		ok = PQresultStatus(r) == PGRES_COMMAND_OK;
		PQclear(r);
		if (!ok) {
			many_fail(m, "commit", conn);
			break;
		}
		atomic_fetch_add(&m->committed, 1);
	}
out:
	PQfinish(conn);
	atomic_fetch_add(&m->done, 1);
	return NULL;
}

Test(load_txn, hundred_clients_over_4_backends)
{
	pgmux_start_transaction(&px, 4, NULL, NULL);
	struct many m = {.port = px.port, .transactions = h_under_valgrind() ? 20 : 50};
	(void)h_env();
	pthread_t threads[MANY_CLIENTS];
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 1024 * 1024);
	for (int i = 0; i < MANY_CLIENTS; i++)
		cr_assert_eq(pthread_create(&threads[i], &attr, many_client, &m), 0);
	pthread_attr_destroy(&attr);

	PGconn *super = h_connect_super_direct();
	int samples = 0, max_seen = 0;
	long long deadline = h_now_ms() + h_scaled_ms(60000);
	while (atomic_load(&m.done) < MANY_CLIENTS && h_now_ms() < deadline) {
		int n = h_app_backends(super);
		samples++;
		if (n > max_seen)
			max_seen = n;
		h_sleep_ms(20);
	}
	PQfinish(super);
	bool finished = atomic_load(&m.done) == MANY_CLIENTS;
	if (!finished)
		h_dump_current_logs();
	cr_assert(finished, "only %d of %d clients finished in time", atomic_load(&m.done), MANY_CLIENTS);
	for (int i = 0; i < MANY_CLIENTS; i++)
		pthread_join(threads[i], NULL);
	cr_assert_eq(atomic_load(&m.failures), 0, "%d clients failed; first: %s", atomic_load(&m.failures), m.error);
	cr_assert_eq(atomic_load(&m.committed), MANY_CLIENTS * m.transactions);
	cr_assert_geq(samples, 2);
	cr_assert_leq(max_seen, 4, "app had %d backends with max_connections = 4", max_seen);
	cr_assert_gt(max_seen, 0);
	cr_log_info("100 clients: %d transactions, at most %d backends in %d samples", atomic_load(&m.committed),
		    max_seen, samples);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ pgbench -M prepared, more clients than backends (issue 15) */

#define BACKENDS 8
#define THREADS "2"

TestSuite(load_prepared, .fini = h_teardown, .timeout = 240);

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
	pgmux_start_ok(&px, &o);
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
	char nclients[16], duration[16], what[96];
	struct h_cmd c;
	struct run_result r;

	snprintf(nclients, sizeof(nclients), "%d", clients);
	snprintf(duration, sizeof(duration), "%d", h_under_valgrind() ? seconds * 3 : seconds);
	snprintf(what, sizeof(what), "pgbench -M %s -c %d -j %s", protocol, clients, THREADS);
	const char *args[] = {"-n", "-M", protocol, "-c", nclients, "-j", THREADS, "-T", duration, NULL};

	/* -T plus the borrow timeout and the connections: anything longer is a stall. */
	int st = h_pgbench_run(&c, px.port, "disable", "postgres", args, h_scaled_ms((seconds + 25) * 1000));
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
	r.processed = h_pgbench_processed(&c);
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

Test(load_prepared, tpcb_16_clients_over_8_backends)
{
	prepared_against_simple(16);
}

Test(load_prepared, tpcb_32_clients_over_8_backends)
{
	prepared_against_simple(32);
}

Test(load_prepared, tpcb_64_clients_over_8_backends)
{
	prepared_against_simple(64);
}
