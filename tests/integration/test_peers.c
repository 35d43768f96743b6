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
