/*
 * test_metrics.c: the Prometheus endpoint (metrics_port): the text format,
 * counters that move with the traffic, the pool's and the instances'
 * series, what it refuses, where it listens (metrics_addr, loopback by
 * default) and the token it asks for (metrics_token).
 */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct pgmux px;

/* ================================================================ the endpoint */

static int metrics_port;

static void init_metrics(void)
{
	static char extra[64];
	struct pgmux_options o;

	pgmux_options_console(&o);
	metrics_port = h_free_port();
	snprintf(extra, sizeof(extra), "metrics_port = %d", metrics_port);
	o.extra_pgmux = extra;
	pgmux_start_ok(&px, &o);
}

/* GET path (or any request) on the metrics port of 127.0.0.1, which must answer: the whole response. */
static char *http_request(const char *request)
{
	char *response = h_http_exchange("127.0.0.1", metrics_port, request);

	cr_assert_not_null(response, "nothing listens on metrics_port %d", metrics_port);
	return response;
}

TestSuite(metrics, .init = init_metrics, .fini = h_teardown, .timeout = 60);

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
Test(metrics, endpoint_serves_prometheus_text)
{
	const struct h_env *e = h_env();
	PGconn *app = h_app_session(&px, "disable", NULL);
	cr_assert_eq(h_number_ok(app, "select 1"), 1);
	char instance[128], target[512];
	snprintf(instance, sizeof(instance), "%s:%d", e->pghost, e->pgport);
	snprintf(target, sizeof(target), "pgmux_target_up{instance=\"%s\",host=\"%s\",port=\"%d\",role=\"writer\"}",
		 instance, e->pghost, e->pgport);
	bool up = false;
	char *body = NULL;
	for (long long end = h_now_ms() + h_scaled_ms(5000); !up && h_now_ms() < end; h_sleep_ms(50)) {
		free(body);
		body = http_request("GET /metrics HTTP/1.0\r\n\r\n");
		up = strstr(body, target) && h_sample(h_http_body(body), target) == 1;
	}
	cr_assert(up, "no \"%s 1\" in:\n%s", target, body);
	cr_assert(strncmp(body, "HTTP/1.1 200 OK\r\n", 17) == 0 || strncmp(body, "HTTP/1.0 200 OK\r\n", 17) == 0,
		  "status line: %.40s", body);
	cr_assert(strstr(body, "Content-Type: text/plain; version=0.0.4") != NULL, "%s", body);
	const char *text = h_http_body(body);
	expect_exposition_format(text);
	double transactions = h_sample(text, "pgmux_transactions_total");
	cr_assert_geq(transactions, 1, "pgmux_transactions_total %g", transactions);
	cr_assert_geq(h_sample(text, "pgmux_client_connections"), 1);
	cr_assert_geq(h_sample(text, "pgmux_pool_server_connections{database=\"postgres\",user=\"app\",endpoint=\"writer\"}"),
		      1, "%s", text);
	char serving[512];
	snprintf(serving, sizeof(serving), "pgmux_target_serving{instance=\"%s\",host=\"%s\",port=\"%d\",role=\"writer\"}",
		 instance, e->pghost, e->pgport);
	cr_assert_eq(h_sample(text, serving), 1, "%s", text);

	for (int i = 0; i < 5; i++)
		cr_assert_eq(h_number_ok(app, "select 1"), 1);
	/* A transaction is counted when its backend goes back, just after the client has its answer. */
	double later = 0;
	for (long long end = h_now_ms() + h_scaled_ms(2000); later < transactions + 5 && h_now_ms() < end;
	     h_sleep_ms(20)) {
		char *again = http_request("GET /metrics HTTP/1.0\r\n\r\n");
		later = h_sample(h_http_body(again), "pgmux_transactions_total");
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

/* ================================================================ where it listens, and who may read it */

TestSuite(metrics_access, .fini = h_teardown, .timeout = 60);

/*
 * GET /metrics from address:port with an optional Authorization header; the
 * HTTP status (0 when nothing listens), the reply in body (valid until the
 * next call).
 */
static int http_get(const char *address, int port, const char *authorization, char **body)
{
	static char *last;
	char request[512];
	int status = 0;

	free(last);
	snprintf(request, sizeof(request), "GET /metrics HTTP/1.1\r\nHost: %s\r\n%s%s%sConnection: close\r\n\r\n",
		 address, authorization ? "Authorization: " : "", authorization ? authorization : "",
		 authorization ? "\r\n" : "");
	last = h_http_exchange(address, port, request);
	if (last == NULL)
		last = strdup("");
	else
		sscanf(last, "HTTP/1.1 %d", &status);
	*body = last;
	return status;
}

/* metrics_addr, not listen_addr, is where /metrics listens: 127.0.0.2 here, another loopback address. */
Test(metrics_access, metrics_listen_on_metrics_addr_and_ask_for_the_token)
{
	int port = h_free_port();
	char extra[256];
	snprintf(extra, sizeof(extra), "metrics_port = %d\nmetrics_addr = 127.0.0.2\nmetrics_token = s3cret-token-0123456789\n",
		 port);
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = extra;
	o.admin_users = h_env()->superuser;
	pgmux_start_ok(&px, &o);
	char *body;
	cr_expect_eq(http_get("127.0.0.1", port, NULL, &body), 0, "metrics answer on listen_addr: %s", body);
	cr_expect_eq(http_get("127.0.0.2", port, NULL, &body), 401, "no token: %s", body);
	cr_expect_null(strstr(body, "pgmux_"), "a refused scrape shows metrics: %s", body);
	cr_expect_eq(http_get("127.0.0.2", port, "Bearer s3cret-token-0123456788", &body), 401, "a wrong token");
	cr_expect_eq(http_get("127.0.0.2", port, "Bearer s3cret-token-012345678", &body), 401, "a prefix");
	cr_expect_eq(http_get("127.0.0.2", port, "Basic czNjcmV0", &body), 401, "another scheme");
	cr_expect_eq(http_get("127.0.0.2", port, "Bearer s3cret-token-0123456789", &body), 200, "%s", body);
	cr_expect_not_null(strstr(body, "pgmux_client_connections_received_total"), "%s", body);

	/* SHOW CONFIG does not give the token away either. */
	PGconn *admin = h_admin_connect(&px, h_env()->superuser, h_env()->superpass);
	cr_assert_not_null(admin);
	PGresult *res = PQexec(admin, "SHOW CONFIG");
	cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK);
	bool seen = false;
	for (int i = 0; i < PQntuples(res); i++) {
		cr_expect_null(strstr(PQgetvalue(res, i, 2), "s3cret"), "SHOW CONFIG shows the token");
		if (strcmp(PQgetvalue(res, i, 1), "metrics_addr") == 0) {
			seen = true;
			cr_expect_str_eq(PQgetvalue(res, i, 2), "127.0.0.2");
		}
	}
	cr_expect(seen, "SHOW CONFIG lists metrics_addr");
	PQclear(res);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* By default the metrics stay on loopback, whatever listen_addr is. */
Test(metrics_access, metrics_default_to_loopback_without_a_token)
{
	int port = h_free_port();
	char extra[64];
	snprintf(extra, sizeof(extra), "metrics_port = %d\n", port);
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = extra;
	pgmux_start_ok(&px, &o);
	char *body;
	cr_expect_eq(http_get("127.0.0.1", port, NULL, &body), 200, "%s", body);
	cr_expect_eq(http_get("127.0.0.2", port, NULL, &body), 0, "metrics answer beyond 127.0.0.1");
	cr_expect(h_file_count(px.logfile, "metrics on http://127.0.0.1:") == 1);
	h_stop_expect_clean_exit(&px);
}
