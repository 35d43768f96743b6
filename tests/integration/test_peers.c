/*
 * test_peers.c: end-to-end tests of issue 22, "several instances behind a
 * load balancer": the probes of the metrics port (/healthz, /readyz), peers
 * (cancel keys that name their instance, forwarded to it), shared caps, and
 * the restart in place (pgmux -R) that hands the listening sockets to a new
 * process. Each test runs real pgmux processes against the suite's
 * PostgreSQL; the balancer tests put HAProxy in front of them.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void fini_kill_leftovers(void)
{
	h_teardown();
}

/*
 * GET path from 127.0.0.1:port: the HTTP status (0 when nothing answers),
 * the body in body (static) when body is not NULL.
 */
static int http_status(int port, const char *path, char **body)
{
	static char kept[8192];
	char request[256], *response;
	int status = 0;

	snprintf(request, sizeof(request), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
	response = h_http_exchange("127.0.0.1", port, request);
	kept[0] = '\0';
	if (response != NULL) {
		sscanf(response, "HTTP/1.%*d %d", &status);
		snprintf(kept, sizeof(kept), "%s", h_http_body(response));
		free(response);
	}
	if (body)
		*body = kept;
	return status;
}

struct probe_wait {
	int port;
	const char *path;
	int want;
};

static bool probe_answers(void *arg)
{
	struct probe_wait *w = arg;

	return http_status(w->port, w->path, NULL) == w->want;
}

/* Poll GET path until it answers want, at most timeout_ms. */
static bool wait_probe(int port, const char *path, int want, int timeout_ms)
{
	struct probe_wait w = { port, path, want };

	return h_poll_until(probe_answers, &w, timeout_ms);
}

/* ---------------------------------------------------------------- probes */

TestSuite(probes, .fini = fini_kill_leftovers, .timeout = 60);

/*
 * /healthz answers 200 as long as the process runs; /readyz only once the
 * writer is known, and 503 again as soon as a graceful shutdown begins,
 * while a session in progress keeps the process alive.
 */
Test(probes, readyz_follows_the_writer_and_the_drain)
{
	struct pgmux px;
	struct pgmux_options o;
	int metrics_port = h_free_port();
	char extra[128], *body;

	pgmux_options_default(&o);
	snprintf(extra, sizeof(extra), "metrics_port = %d\n", metrics_port);
	o.extra_pgmux = extra;
	o.shutdown_timeout = "20s";
	cr_assert(pgmux_start(&px, &o));
	cr_expect_eq(http_status(metrics_port, "/healthz", &body), 200, "%s", body);
	cr_expect(strstr(body, "alive") != NULL, "%s", body);
	cr_assert(wait_probe(metrics_port, "/readyz", 200, h_scaled_ms(5000)), "never ready");
	cr_expect_eq(http_status(metrics_port, "/nothing", &body), 404, "%s", body);

	/* A session in progress holds the process up while it drains. */
	PGconn *conn = h_connect_app(px.port, "disable", NULL);
	cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
	free(h_value_ok(conn, "begin; select 1"));
	cr_assert_eq(kill(px.pid, SIGINT), 0);
	cr_assert(wait_probe(metrics_port, "/readyz", 503, h_scaled_ms(5000)), "still ready while draining");
	cr_expect_eq(http_status(metrics_port, "/readyz", &body), 503);
	cr_expect(strstr(body, "draining") != NULL, "%s", body);
	cr_expect_eq(http_status(metrics_port, "/healthz", &body), 200, "alive while draining: %s", body);
	PQfinish(conn);
	cr_expect_eq(pgmux_wait_exit(&px, h_scaled_ms(10000)), 0);
}

/* With no writer reachable /readyz says so, while /healthz still answers 200. */
Test(probes, readyz_is_503_without_a_writer)
{
	struct pgmux px;
	struct pgmux_options o;
	int metrics_port = h_free_port();
	char extra[128], hosts[64], *body;

	pgmux_options_default(&o);
	snprintf(extra, sizeof(extra), "metrics_port = %d\n", metrics_port);
	snprintf(hosts, sizeof(hosts), "127.0.0.1:%d", h_free_port()); /* nothing listens there */
	o.extra_pgmux = extra;
	o.hosts = hosts;
	cr_assert(pgmux_start(&px, &o));
	cr_expect_eq(http_status(metrics_port, "/healthz", &body), 200, "%s", body);
	h_sleep_ms(300); /* a health check or two fail meanwhile */
	cr_expect_eq(http_status(metrics_port, "/readyz", &body), 503, "%s", body);
	cr_expect(strstr(body, "no writer") != NULL, "%s", body);
	cr_expect_eq(pgmux_stop(&px, SIGTERM, h_scaled_ms(5000)), 0);
}

/* ---------------------------------------------------------------- peers behind HAProxy */

/*
 * Two or three pgmux instances listed as each other's peers, and HAProxy in
 * front of them in TCP mode, checking GET /readyz on each metrics port every
 * 200 ms. Every port is free when the test starts.
 */
#define MAX_INSTANCES 3

struct cluster {
	int n;
	struct pgmux px[MAX_INSTANCES];
	int port[MAX_INSTANCES];
	int metrics_port[MAX_INSTANCES];
	int balancer_port;
	struct h_cmd haproxy;
};

/* Start n instances with peer ids 1..n, the shared [pool] max_connections, pool_mode. */
static void cluster_start(struct cluster *cl, int n, int max_connections, const char *pool_mode)
{
	static const char *const names[MAX_INSTANCES] = { "pgmux1", "pgmux2", "pgmux3" };
	char peers[512] = "", extra[MAX_INSTANCES][768];
	size_t used = 0;

	memset(cl, 0, sizeof(*cl));
	cl->n = n;
	for (int i = 0; i < n; i++) {
		cl->port[i] = h_free_port();
		cl->metrics_port[i] = h_free_port();
		used += (size_t)snprintf(peers + used, sizeof(peers) - used, "%d = 127.0.0.1:%d\n", i + 1, cl->port[i]);
	}
	for (int i = 0; i < n; i++) {
		struct pgmux_options o;

		pgmux_options_default(&o);
		o.listen_port = cl->port[i];
		o.max_connections = max_connections;
		o.pool_mode = pool_mode;
		o.workers = 1;
		o.instance_name = names[i];
		/* [peers] follows [pgmux]'s extra lines (the harness writes [target] next). */
		snprintf(extra[i], sizeof(extra[i]), "metrics_port = %d\npeer_id = %d\n[peers]\n%s",
			 cl->metrics_port[i], i + 1, peers);
		o.extra_pgmux = extra[i];
		cr_assert(pgmux_start(&cl->px[i], &o), "instance %d did not start", i + 1);
	}
}

/*
 * HAProxy in front of the instances: TCP mode, round robin, GET /readyz on
 * each metrics port every 200 ms (down after one failure, up after one
 * success), and a connection refused by a dead instance retried on another.
 */
static void balancer_start(struct cluster *cl)
{
	char path[600], text[2048];
	size_t used;

	cl->balancer_port = h_free_port();
	snprintf(path, sizeof(path), "%s/haproxy.cfg", h_test_dir());
	used = (size_t)snprintf(text, sizeof(text),
				"global\n  maxconn 512\n"
				"defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n"
				"  timeout server 60s\n  retries 3\n  option redispatch\n"
				"listen pgmux\n  bind 127.0.0.1:%d\n  balance roundrobin\n"
				"  option httpchk GET /readyz\n  default-server inter 200ms fall 1 rise 1\n",
				cl->balancer_port);
	for (int i = 0; i < cl->n; i++)
		used += (size_t)snprintf(text + used, sizeof(text) - used,
					 "  server pgmux%d 127.0.0.1:%d check port %d\n", i + 1, cl->port[i],
					 cl->metrics_port[i]);
	h_write_file(path, text, 0644);
	const char *argv[] = { "haproxy", "-db", "-f", path, NULL };
	cr_assert(h_cmd_start(&cl->haproxy, argv, NULL), "cannot start haproxy (apt-get install haproxy)");
	/* Up once it logs clients in through it. */
	for (long long until = h_now_ms() + h_scaled_ms(10000);; h_sleep_ms(50)) {
		PGconn *conn = h_connect_app(cl->balancer_port, "disable", NULL);
		bool ok = PQstatus(conn) == CONNECTION_OK;

		PQfinish(conn);
		if (ok)
			break;
		if (h_now_ms() > until) {
			h_cmd_kill(&cl->haproxy);
			h_cmd_dump(&cl->haproxy, "haproxy");
			cr_assert_fail("no login through haproxy on port %d", cl->balancer_port);
		}
	}
	for (int i = 0; i < cl->n; i++)
		cr_assert(wait_probe(cl->metrics_port[i], "/readyz", 200, h_scaled_ms(5000)), "instance %d not ready",
			  i + 1);
	h_sleep_ms(300); /* a check of each has passed since */
}

static void cluster_stop(struct cluster *cl)
{
	h_cmd_kill(&cl->haproxy);
	h_cmd_free(&cl->haproxy);
	for (int i = 0; i < cl->n; i++)
		if (cl->px[i].pid)
			cr_expect_eq(pgmux_stop(&cl->px[i], SIGTERM, h_scaled_ms(5000)), 0, "instance %d", i + 1);
}

/* The number of backends of app that run pg_sleep, as PostgreSQL sees them. */
#define SLEEPERS_SQL                                                                                   \
	"select count(*) from pg_stat_activity where usename = 'app' and state = 'active' and query like " \
	"'select pg_sleep%'"

/*
 * Send "select pg_sleep(30)" on conn, wait until PostgreSQL runs it, cancel
 * it through the address conn used (the balancer), and expect 57014 within
 * a few seconds. Returns how long the cancel took, in ms.
 */
static long long cancel_one_sleep(PGconn *conn, PGconn *super, int round)
{
	char errbuf[256];
	PGcancel *cancel;
	PGresult *res;
	long long started;

	cr_assert(PQsendQuery(conn, "select pg_sleep(30)"), "%s", PQerrorMessage(conn));
	cr_assert(h_poll_value(super, SLEEPERS_SQL, "1", h_scaled_ms(5000)), "round %d: the sleep never ran", round);
	started = h_now_ms();
	cancel = PQgetCancel(conn);
	cr_assert_not_null(cancel);
	cr_assert(PQcancel(cancel, errbuf, sizeof(errbuf)), "round %d: %s", round, errbuf);
	PQfreeCancel(cancel);
	res = h_get_result(conn, h_scaled_ms(5000));
	cr_assert_not_null(res, "round %d: the cancel did not end the sleep within 5 s", round);
	cr_expect_str_eq(PQresultErrorField(res, PG_DIAG_SQLSTATE) ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : "",
			 "57014", "round %d: %s", round, PQresultErrorMessage(res));
	PQclear(res);
	while ((res = PQgetResult(conn)) != NULL)
		PQclear(res);
	return h_now_ms() - started;
}

TestSuite(peers, .fini = fini_kill_leftovers, .timeout = 120);

/*
 * 20 cancels through HAProxy: the session and its cancel land on instances
 * in round-robin order, so a cancel reaches the instance that holds the key
 * directly or by way of the other; each ends its pg_sleep. Both paths must
 * have been taken.
 */
static void cancels_through_the_balancer(int n_instances, int rounds)
{
	struct cluster cl;
	PGconn *super = h_connect_super_direct();
	long long slowest = 0;
	int passed_on = 0;

	cluster_start(&cl, n_instances, 20, "session");
	balancer_start(&cl);
	for (int round = 0; round < rounds; round++) {
		PGconn *conn = h_connect_app(cl.balancer_port, "disable", NULL);
		long long took;

		cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
		/* Every third round the round robin comes back to the session's instance for the cancel. */
		for (int shift = 0; round % 3 == 2 && shift < n_instances - 1; shift++)
			PQfinish(h_connect_app(cl.balancer_port, "disable", NULL));
		took = cancel_one_sleep(conn, super, round);
		if (took > slowest)
			slowest = took;
		PQfinish(conn);
	}
	for (int i = 0; i < n_instances; i++)
		passed_on += h_file_count(cl.px[i].logfile, "passing it on to");
	fprintf(stderr, "peers: %d cancels through haproxy to %d instances, %d passed on to another, slowest %lld ms\n",
		rounds, n_instances, passed_on, slowest);
	cr_expect(passed_on > 0 && passed_on < rounds, "%d of %d cancels were passed on: both paths must be taken",
		  passed_on, rounds);
	PQfinish(super);
	cluster_stop(&cl);
}

Test(peers, cancels_through_the_balancer_reach_the_instance_with_the_session)
{
	cancels_through_the_balancer(2, 20);
}

Test(peers, cancels_among_three_instances)
{
	cancels_through_the_balancer(3, 9);
}

/* A cancel whose key names this instance but no session here is dropped, not passed on. */
Test(peers, an_unknown_key_of_this_instance_is_dropped)
{
	struct cluster cl;
	uint8_t request[16];
	int fd;

	cluster_start(&cl, 2, 20, "session");
	h_put_u32(request, 16);
	h_put_u32(request + 4, 80877102);
	h_put_u32(request + 8, (1u << 23) | 12345); /* instance 1's */
	h_put_u32(request + 12, 42);
	fd = h_raw_connect(cl.port[0], 2000);
	cr_assert_geq(fd, 0);
	cr_assert(h_raw_send(fd, request, sizeof(request)));
	cr_expect(h_raw_wait_closed(fd, 2000));
	close(fd);
	h_put_u32(request + 8, (2u << 23) | 12345); /* instance 2's, sent to 1: passed on once, dropped there */
	fd = h_raw_connect(cl.port[0], 2000);
	cr_assert_geq(fd, 0);
	cr_assert(h_raw_send(fd, request, sizeof(request)));
	cr_expect(h_raw_wait_closed(fd, 2000));
	close(fd);
	cr_expect(h_file_wait_count(cl.px[1].logfile, "cancel request with an unknown key ignored", 1, 3000));
	cr_expect_eq(h_file_count(cl.px[0].logfile, "passing it on to"), 1);
	cr_expect_eq(h_file_count(cl.px[1].logfile, "passing it on to"), 0);
	cr_expect_eq(h_file_count(cl.px[0].logfile, "cancel request with an unknown key ignored"), 1);
	cluster_stop(&cl);
}

struct sleeper_peak {
	PGconn *super;
	int peak;
	int want;
};

static bool sleepers_reach(void *arg)
{
	struct sleeper_peak *sp = arg;
	char *v = h_query_value(sp->super, SLEEPERS_SQL);
	int n = v ? atoi(v) : 0;

	free(v);
	if (n > sp->peak)
		sp->peak = n;
	return false; /* poll for the whole window, keeping the peak */
}

/*
 * Two instances share max_connections = 4: with 6 clients through the
 * balancer each running a 0.6 s statement, PostgreSQL sees at most 4 at once
 * (2 per instance), and every statement completes. After kill -9 of one
 * instance, logins through the balancer succeed within 3 s.
 */
Test(peers, shares_hold_and_a_killed_instance_is_left_out_within_3s)
{
	struct cluster cl;
	PGconn *clients[6];
	struct sleeper_peak sp = { h_connect_super_direct(), 0, 4 };
	long long killed_at, last_failure = -1;
	int logins = 0, failures = 0;

	h_wait_no_app_backends();
	cluster_start(&cl, 2, 4, "transaction");
	balancer_start(&cl);
	for (int i = 0; i < 6; i++) {
		clients[i] = h_connect_app(cl.balancer_port, "disable", NULL);
		cr_assert_eq(PQstatus(clients[i]), CONNECTION_OK, "%s", PQerrorMessage(clients[i]));
	}
	for (int i = 0; i < 6; i++)
		cr_assert(PQsendQuery(clients[i], "select pg_sleep(0.6)"));
	h_poll_until(sleepers_reach, &sp, 900);
	for (int i = 0; i < 6; i++) {
		PGresult *res = h_get_result(clients[i], h_scaled_ms(10000));

		cr_assert_not_null(res, "client %d: no answer", i);
		cr_expect_eq(PQresultStatus(res), PGRES_TUPLES_OK, "client %d: %s", i, PQresultErrorMessage(res));
		PQclear(res);
		while ((res = PQgetResult(clients[i])) != NULL)
			PQclear(res);
	}
	fprintf(stderr, "peers: 6 clients, cap 4 shared by 2 instances: at most %d backends at once\n", sp.peak);
	cr_expect(sp.peak <= 4, "%d backends at once: more than the server's cap of 4", sp.peak);
	cr_expect(sp.peak >= 3, "only %d backends at once: the instances did not use their shares", sp.peak);

	cr_assert_eq(kill(cl.px[0].pid, SIGKILL), 0);
	killed_at = h_now_ms();
	while (pgmux_running(&cl.px[0]))
		h_sleep_ms(10);
	while (h_now_ms() - killed_at < 4000) {
		PGconn *conn = h_connect_app(cl.balancer_port, "disable", "connect_timeout=2");
		char *v = PQstatus(conn) == CONNECTION_OK ? h_query_value(conn, "select 1") : NULL;

		logins++;
		if (v == NULL || strcmp(v, "1") != 0) {
			failures++;
			last_failure = h_now_ms() - killed_at;
		}
		free(v);
		PQfinish(conn);
		h_sleep_ms(50);
	}
	for (int i = 0; i < 6; i++)
		PQfinish(clients[i]);
	fprintf(stderr, "peers: after kill -9 of one instance, %d of %d logins failed, the last %lld ms after\n",
		failures, logins, last_failure);
	cr_expect(last_failure < 3000, "a login failed %lld ms after the kill", last_failure);
	cr_expect_geq(logins - failures, 10);
	PQfinish(sp.super);
	cluster_stop(&cl);
}

/* ---------------------------------------------------------------- restart in place */

TestSuite(restart, .fini = fini_kill_leftovers, .timeout = 120);

#define RESTART_SHUTDOWN_TIMEOUT_MS 5000

/* pgmux in transaction pooling with a pidfile and a metrics port, ready for pgmux -R. */
static void start_restartable(struct pgmux *px, char *pidfile, size_t len, int *metrics_port)
{
	struct pgmux_options o;
	static char extra[128];

	snprintf(pidfile, len, "%s/pgmux.pid", h_test_dir());
	*metrics_port = h_free_port();
	snprintf(extra, sizeof(extra), "metrics_port = %d\n", *metrics_port);
	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.max_connections = 8;
	o.pidfile = pidfile;
	o.shutdown_timeout = "5s";
	o.extra_pgmux = extra;
	cr_assert(pgmux_start(px, &o));
	cr_assert(wait_probe(*metrics_port, "/readyz", 200, h_scaled_ms(5000)));
}

/*
 * Start pgmux -R on px's configuration; the new process's output goes to
 * cmd's files. With new_binary, from a copy of the binary elsewhere, as an
 * upgrade installs one.
 */
static void start_replacement(struct h_cmd *cmd, const struct pgmux *px, bool new_binary)
{
	static char copy[600];
	const char *argv[] = { h_env()->pgmux, "-R", px->config, NULL };

	if (new_binary) {
		struct h_cmd cp;
		const char *cp_argv[] = { "cp", h_env()->pgmux, copy, NULL };

		snprintf(copy, sizeof(copy), "%s/pgmux-upgraded", h_test_dir());
		cr_assert_eq(h_cmd_run(&cp, cp_argv, NULL, 10000), 0, "cp %s %s", h_env()->pgmux, copy);
		h_cmd_free(&cp);
		argv[0] = copy;
	}
	cr_assert(h_cmd_start(cmd, argv, NULL));
}

/* pgbench through port for seconds, with extra options (NULL-terminated). */
static void start_pgbench(struct h_cmd *cmd, int port, const char *seconds, const char *const extra[])
{
	const struct h_env *e = h_env();
	static char pgbench[600], port_text[16], password[256];
	const char *argv[32];
	const char *env[] = { password, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10", NULL };
	int n = 0;

	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(port_text, sizeof(port_text), "%d", port);
	snprintf(password, sizeof(password), "PGPASSWORD=%s", e->apppass);
	argv[n++] = pgbench;
	argv[n++] = "-n";
	for (int i = 0; extra[i] != NULL; i++)
		argv[n++] = extra[i];
	const char *tail[] = { "-c", "4", "-j", "2", "-T", seconds, "-h", "127.0.0.1", "-p", port_text, "-U", "app",
			       "postgres", NULL };
	for (int i = 0; tail[i] != NULL; i++)
		argv[n++] = tail[i];
	argv[n] = NULL;
	cr_assert(h_cmd_start(cmd, argv, env));
}

/* The pid the pidfile names, or 0. */
static pid_t pidfile_pid(const char *pidfile)
{
	char *text = h_read_file(pidfile);
	pid_t pid = (pid_t)atol(text);

	free(text);
	return pid;
}

/*
 * pgbench -C (a connection per transaction) through pgmux while pgmux -R,
 * from another copy of the binary, replaces it: no connection refused, no
 * transaction failed, the old process gone within shutdown_timeout, the new
 * one serving and named by the pidfile.
 */
Test(restart, restart_under_pgbench_with_a_connection_per_transaction)
{
	struct pgmux px;
	struct h_cmd bench, replacement;
	char pidfile[600];
	int metrics_port;
	long long restarted_at, old_gone_ms;
	const char *const bench_options[] = { "-C", "-S", NULL };

	start_restartable(&px, pidfile, sizeof(pidfile), &metrics_port);
	start_pgbench(&bench, px.port, "4", bench_options);
	h_sleep_ms(1200);
	restarted_at = h_now_ms();
	start_replacement(&replacement, &px, true);
	int st = pgmux_wait_exit(&px, RESTART_SHUTDOWN_TIMEOUT_MS + h_scaled_ms(3000));
	old_gone_ms = h_now_ms() - restarted_at;
	cr_expect_eq(st, 0, "the old process: status %d", st);
	cr_expect_leq(old_gone_ms, RESTART_SHUTDOWN_TIMEOUT_MS + 1000, "the old process took %lld ms to go",
		      old_gone_ms);
	cr_assert(h_cmd_wait(&bench, h_scaled_ms(30000)), "pgbench did not end");
	fprintf(stderr, "restart: old process gone %lld ms after pgmux -R; pgbench -C: %s\n", old_gone_ms,
		strstr(bench.out, "number of transactions actually processed") ?: bench.out);
	h_expect_pgbench_clean(&bench, "pgbench -C across pgmux -R");
	cr_expect(h_file_count(px.logfile, "took the listening sockets over") == 1);

	/* The new process serves, /readyz included, and the pidfile names it. */
	cr_expect_eq(pidfile_pid(pidfile), replacement.pid);
	cr_expect(wait_probe(metrics_port, "/readyz", 200, h_scaled_ms(3000)));
	PGconn *conn = h_connect_app(px.port, "disable", NULL);
	cr_expect_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
	PQfinish(conn);
	kill(replacement.pid, SIGTERM);
	cr_expect(h_cmd_wait(&replacement, h_scaled_ms(5000)));
	cr_expect_eq(replacement.status, 0, "the new process: status %d", replacement.status);
	if (replacement.status != 0)
		h_cmd_dump(&replacement, "pgmux -R");
	h_cmd_free(&replacement);
	h_cmd_free(&bench);
}

/* The FATAL of a connection closed between transactions reaches libpq as a notice: expected here. */
static void quiet_notices(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

/* One client of the loop below: its connection, and its transactions committed. */
struct loop_client {
	PGconn *conn;
	int committed;
	int reconnects;
};

/*
 * Run "BEGIN; INSERT; INSERT; COMMIT" on client k, one statement at a time.
 * A connection closed before BEGIN is between transactions: the client
 * reconnects and the transaction runs on the new connection. A failure at
 * any later statement is a transaction cut short, which must never happen.
 */
static void loop_transaction(struct loop_client *lc, int k, int port)
{
	char insert[128];
	const char *steps[4] = { "begin", insert, insert, "commit" };

	snprintf(insert, sizeof(insert), "insert into restart_loop values (%d, %d)", k, lc->committed);
	for (int i = 0; i < 4; i++) {
		PGresult *r = PQexec(lc->conn, steps[i]);
		bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;

		if (!ok && i == 0 && PQstatus(lc->conn) == CONNECTION_BAD) {
			PQclear(r);
			PQfinish(lc->conn);
			lc->conn = h_connect_app(port, "disable", NULL);
			PQsetNoticeProcessor(lc->conn, quiet_notices, NULL);
			cr_assert_eq(PQstatus(lc->conn), CONNECTION_OK, "client %d: reconnect: %s", k,
				     PQerrorMessage(lc->conn));
			lc->reconnects++;
			i = -1; /* the whole transaction again, on the new connection */
			continue;
		}
		cr_assert(ok, "client %d: \"%s\" failed inside a transaction: %s", k, steps[i], PQresultErrorMessage(r));
		PQclear(r);
	}
	lc->committed++;
}

/*
 * Transaction pooling, pgbench (TPC-B-like transactions, no -C) and four
 * libpq clients in a loop of two-insert transactions while pgmux -R replaces
 * the process: the old process closes every client between transactions.
 * pgbench reports no failed transaction (a client whose connection was
 * closed between transactions ends, as pgbench does); the loop's clients
 * lose nothing (each reconnects when its connection was closed before a
 * BEGIN and every committed row is there); and the old process's log shows
 * each client it closed as closed while idle.
 */
Test(restart, transaction_pooling_closes_clients_between_transactions)
{
	struct pgmux px;
	struct h_cmd bench, replacement;
	struct loop_client clients[4];
	char pidfile[600];
	int metrics_port, committed = 0, reconnects = 0;
	const char *const bench_options[] = { NULL };
	PGconn *super = h_connect_super_direct();

	h_exec_ok(super, "drop table if exists restart_loop");
	h_exec_ok(super, "create table restart_loop (client int, seq int)");
	h_exec_ok(super, "grant all on restart_loop to app");
	start_restartable(&px, pidfile, sizeof(pidfile), &metrics_port);
	for (int k = 0; k < 4; k++) {
		clients[k] = (struct loop_client){ h_connect_app(px.port, "disable", NULL), 0, 0 };
		PQsetNoticeProcessor(clients[k].conn, quiet_notices, NULL);
		cr_assert_eq(PQstatus(clients[k].conn), CONNECTION_OK, "%s", PQerrorMessage(clients[k].conn));
	}
	start_pgbench(&bench, px.port, "4", bench_options);
	long long started = h_now_ms();
	bool restarted = false;

	while (h_now_ms() - started < 3500) {
		if (!restarted && h_now_ms() - started > 1000) {
			start_replacement(&replacement, &px, false);
			restarted = true;
		}
		for (int k = 0; k < 4; k++)
			loop_transaction(&clients[k], k, px.port);
	}
	cr_expect_eq(pgmux_wait_exit(&px, RESTART_SHUTDOWN_TIMEOUT_MS + h_scaled_ms(3000)), 0);
	cr_assert(h_cmd_wait(&bench, h_scaled_ms(30000)), "pgbench did not end");
	for (int k = 0; k < 4; k++) {
		char sql[128], want[16];

		committed += clients[k].committed;
		reconnects += clients[k].reconnects;
		snprintf(sql, sizeof(sql), "select count(*) from restart_loop where client = %d", k);
		snprintf(want, sizeof(want), "%d", 2 * clients[k].committed);
		char *got = h_value_ok(super, sql);
		cr_expect_str_eq(got, want, "client %d: rows", k);
		free(got);
		PQfinish(clients[k].conn);
	}
	/* The old and the new process share the log: the new one closes nobody while the old one drains. */
	static const char *const states[] = { "startup", "tls-handshake", "auth", "waiting", "setup", "active", "idle" };
	int closed = 0, closed_idle = h_file_count(px.logfile, "closing during idle: pgmux is shutting down");

	for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
		char needle[96];

		snprintf(needle, sizeof(needle), "closing during %s: pgmux is shutting down", states[i]);
		closed += h_file_count(px.logfile, needle);
	}

	fprintf(stderr, "restart: %d loop transactions, %d reconnects; the old process closed %d clients, %d of them "
			"between transactions; pgbench: %s\n",
		committed, reconnects, closed, closed_idle, strstr(bench.out, "number of failed") ?: bench.out);
	cr_expect_eq(reconnects, 4, "each loop client reconnects once, after the old process closed it");
	cr_expect(strstr(bench.out, "number of failed transactions: 0 ") != NULL, "pgbench:\n%s", bench.out);
	cr_expect_geq(closed, 4, "the old process closed fewer clients than the loop had");
	cr_expect_eq(closed, closed_idle, "a client was closed inside a transaction (see %s)", px.logfile);
	kill(replacement.pid, SIGTERM);
	cr_expect(h_cmd_wait(&replacement, h_scaled_ms(5000)));
	h_exec_ok(super, "drop table restart_loop");
	PQfinish(super);
	h_cmd_free(&replacement);
	h_cmd_free(&bench);
}

/* ---------------------------------------------------------------- systemd notifications */

TestSuite(service_notify, .fini = fini_kill_leftovers, .timeout = 60);

/* The next datagram on fd within timeout_ms, as a string ("" on timeout). */
static const char *next_notification(int fd, int timeout_ms)
{
	static char text[512];
	struct timeval limit = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	ssize_t n;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
	n = recv(fd, text, sizeof(text) - 1, 0);
	text[n > 0 ? n : 0] = '\0';
	return text;
}

/*
 * pgmux, built with libsystemd and started with NOTIFY_SOCKET as systemd
 * starts a Type=notify unit, says READY=1 once it accepts, RELOADING=1 and
 * READY=1 around a SIGHUP, STOPPING=1 at SIGINT.
 */
Test(service_notify, ready_reloading_stopping)
{
	if (system("ldd \"$PGMUX_BIN\" 2>/dev/null | grep -q libsystemd") != 0)
		cr_skip_test("pgmux was built without libsystemd");
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct pgmux px;
	struct pgmux_options o;
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/notify", h_test_dir());
	cr_assert_eq(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0, "%s: %s", addr.sun_path, strerror(errno));
	setenv("NOTIFY_SOCKET", addr.sun_path, 1);
	pgmux_options_default(&o);
	bool started = pgmux_start(&px, &o);
	unsetenv("NOTIFY_SOCKET");
	cr_assert(started);
	cr_expect_str_eq(next_notification(fd, 5000), "READY=1");
	cr_assert_eq(kill(px.pid, SIGHUP), 0);
	cr_expect_str_eq(next_notification(fd, 5000), "RELOADING=1");
	cr_expect_str_eq(next_notification(fd, 5000), "READY=1");
	cr_assert_eq(kill(px.pid, SIGINT), 0);
	cr_expect_str_eq(next_notification(fd, 5000), "STOPPING=1");
	cr_expect_eq(pgmux_wait_exit(&px, 5000), 0);
	close(fd);
}
