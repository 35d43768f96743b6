/*
 * test_observability.c: end-to-end tests of issue 23, "observability": the
 * command line (--help, --version, --check), JSON and syslog logging, the
 * latency histograms and failover/cutover counters of /metrics and SHOW
 * STATS, and the contrib/ dashboard and alert rules checked against a real
 * scrape. Each test runs a real pgmux against the suite's PostgreSQL.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static struct pgmux px;

static void fini_kill_leftovers(void)
{
	h_teardown();
}

/* ---------------------------------------------------------------- command line */

TestSuite(observability_cli, .fini = fini_kill_leftovers, .timeout = 60);

/* Run pgmux with argv[1..] and wait; returns the exit status, the output in c. */
static int run_pgmux(struct h_cmd *c, const char *const args[])
{
	const char *argv[8] = { h_env()->pgmux };
	int n = 1;

	for (; args[n - 1] != NULL && n < 7; n++)
		argv[n] = args[n - 1];
	argv[n] = NULL;
	return h_cmd_run(c, argv, NULL, h_scaled_ms(20000));
}

Test(observability_cli, help_prints_the_usage_and_exits_0)
{
	struct h_cmd c;
	const char *const long_form[] = { "--help", NULL }, *const short_form[] = { "-h", NULL };

	cr_assert_eq(run_pgmux(&c, long_form), 0);
	cr_expect(strstr(c.out, "Usage: pgmux") != NULL, "no usage in: %s", c.out);
	cr_expect(strstr(c.out, "--check CONFIG") != NULL, "--check is not in the usage: %s", c.out);
	cr_expect_str_empty(c.err);
	h_cmd_free(&c);
	cr_assert_eq(run_pgmux(&c, short_form), 0);
	cr_expect(strstr(c.out, "Usage: pgmux") != NULL);
	h_cmd_free(&c);
}

Test(observability_cli, version_prints_the_version)
{
	struct h_cmd c;
	const char *const long_form[] = { "--version", NULL }, *const short_form[] = { "-V", NULL };

	cr_assert_eq(run_pgmux(&c, long_form), 0);
	cr_expect(strncmp(c.out, "pgmux ", 6) == 0 && strchr(c.out, '.') != NULL, "not a version: %s", c.out);
	h_cmd_free(&c);
	cr_assert_eq(run_pgmux(&c, short_form), 0);
	cr_expect(strncmp(c.out, "pgmux ", 6) == 0);
	h_cmd_free(&c);
}

Test(observability_cli, an_unknown_option_prints_the_usage_and_fails)
{
	struct h_cmd c;
	const char *const args[] = { "--no-such-option", NULL };

	cr_assert_eq(run_pgmux(&c, args), 1);
	cr_expect(strstr(c.err, "Usage: pgmux") != NULL, "no usage on stderr: %s", c.err);
	h_cmd_free(&c);
}

/* A good configuration passes, and nothing starts: no port, no log file, no pid file. */
Test(observability_cli, check_accepts_a_good_configuration_and_starts_nothing)
{
	struct pgmux_options o;
	struct h_cmd c;
	struct stat st;
	char pidfile[600];

	pgmux_options_default(&o);
	snprintf(pidfile, sizeof(pidfile), "%s/pgmux.pid", h_test_dir());
	o.pidfile = pidfile;
	cr_assert(pgmux_write_config(&px, &o));
	const char *const args[] = { "--check", px.config, NULL };
	cr_assert_eq(run_pgmux(&c, args), 0, "--check failed: %s", c.err);
	cr_expect(strstr(c.out, "the configuration is valid") != NULL, "stdout: %s", c.out);
	cr_expect(stat(px.logfile, &st) != 0, "--check wrote the log file");
	cr_expect(stat(pidfile, &st) != 0, "--check wrote the pid file");
	cr_expect_eq(h_raw_connect(px.port, 200), -1, "--check left something listening");
	h_cmd_free(&c);
}

/* An error names the file and the line, and the status is 1. */
Test(observability_cli, check_names_the_file_and_line_of_an_error)
{
	struct pgmux_options o;
	struct h_cmd c;
	char path[600], where[700];

	pgmux_options_default(&o);
	o.extra_pgmux = "log_level = chatty\n";
	cr_assert(pgmux_write_config(&px, &o));
	char *text = h_read_file(px.config);
	int line = 1;
	for (char *p = text; p < strstr(text, "log_level = chatty"); p++)
		line += *p == '\n';
	snprintf(path, sizeof(path), "%s", px.config);
	free(text);
	const char *const args[] = { "-t", path, NULL };
	cr_assert_eq(run_pgmux(&c, args), 1);
	snprintf(where, sizeof(where), "%s:%d:", path, line);
	cr_expect(strstr(c.err, where) != NULL, "%s is not in: %s", where, c.err);
	cr_expect(strstr(c.out, "valid") == NULL);
	h_cmd_free(&c);
}

/* A secrets_dir of the test's own (into dir) holding a copy of the suite's app secret. */
static void secrets_dir_with_app(char *dir, size_t size)
{
	char from[700], to[700];

	snprintf(dir, size, "%s/secrets", h_test_dir());
	cr_assert_eq(mkdir(dir, 0700), 0);
	snprintf(from, sizeof(from), "%s/app.json", h_env()->secrets);
	snprintf(to, sizeof(to), "%s/app.json", dir);
	char *text = h_read_file(from);
	h_write_file(to, text, 0600);
	free(text);
}

/* A secret file that cannot be used fails the check and is named. */
Test(observability_cli, check_fails_on_a_bad_secret_file)
{
	struct pgmux_options o;
	struct h_cmd c;
	char dir[600], bad[700];

	secrets_dir_with_app(dir, sizeof(dir));
	snprintf(bad, sizeof(bad), "%s/broken.json", dir);
	h_write_file(bad, "{\"username\": \"x\", \"password\": ", 0600);
	pgmux_options_default(&o);
	o.secrets_dir = dir;
	o.health_check_user = "app";
	cr_assert(pgmux_write_config(&px, &o));
	const char *const args[] = { "--check", px.config, NULL };
	cr_assert_eq(run_pgmux(&c, args), 1, "stdout: %s stderr: %s", c.out, c.err);
	cr_expect(strstr(c.err, "broken.json") != NULL, "the bad file is not named: %s", c.err);
	h_cmd_free(&c);
}

/*
 * hosts_from_secret, as far as it can be checked offline: a value that is no
 * user name, a user with no secret (and no Secrets Manager to hold one), and
 * a secret file without a host each fail the check, named; one with a host
 * passes.
 */
Test(observability_cli, check_validates_hosts_from_secret)
{
	static const struct {
		const char *value, *secret, *expect; /* secret: cluster.json's text, or NULL for none */
	} cases[] = {
		{ "cluster", "{\"username\": \"cluster\", \"password\": \"pw\", \"port\": 5432}", "has no \"host\"" },
		{ "cluster", "{\"username\": \"cluster\", \"password\": \"pw\", \"host\": \"db one\"}",
		  "is not a host name or address" },
		{ "nobody", NULL, "no secret has user nobody" },
		{ "a_name_longer_than_the_63_bytes_of_any_postgresql_user_name_there_is", NULL, "is not a user name" },
		{ "cluster", "{\"username\": \"cluster\", \"password\": \"pw\", \"host\": \"db.example.com\"}", NULL },
	};
	char dir[600], secret[700], extra[200];

	secrets_dir_with_app(dir, sizeof(dir));
	snprintf(secret, sizeof(secret), "%s/cluster.json", dir);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct pgmux_options o;
		struct h_cmd c;

		unlink(secret);
		if (cases[i].secret)
			h_write_file(secret, cases[i].secret, 0600);
		pgmux_options_default(&o);
		o.secrets_dir = dir;
		o.health_check_user = "app";
		snprintf(extra, sizeof(extra), "hosts_from_secret = %s", cases[i].value);
		o.extra_target = extra;
		cr_assert(pgmux_write_config(&px, &o));
		const char *const args[] = { "--check", px.config, NULL };
		int status = run_pgmux(&c, args);
		if (cases[i].expect) {
			cr_expect_eq(status, 1, "hosts_from_secret = \"%s\" passed: %s", cases[i].value, c.out);
			cr_expect(strstr(c.err, cases[i].expect) != NULL && strstr(c.err, "hosts_from_secret") != NULL,
				  "case %zu: \"%s\" is not in: %s", i, cases[i].expect, c.err);
		} else {
			cr_expect_eq(status, 0, "a secret with a host failed the check: %s", c.err);
			cr_expect(strstr(c.out, "the configuration is valid") != NULL, "stdout: %s", c.out);
		}
		h_cmd_free(&c);
	}
}

/* A TLS key file that cannot be read fails the check. */
Test(observability_cli, check_fails_on_a_missing_tls_file)
{
	struct pgmux_options o;
	struct h_cmd c;

	pgmux_options_default(&o);
	o.tls = true;
	cr_assert(pgmux_write_config(&px, &o));
	/* The harness names the suite's key; name one that is not there. */
	char *text = h_read_file(px.config), *at = strstr(text, h_env()->key);
	cr_assert_not_null(at, "the configuration names no key file");
	char *edited = malloc(strlen(text) + 64);
	snprintf(edited, strlen(text) + 64, "%.*s/nonexistent/key.pem%s", (int)(at - text), text,
		 at + strlen(h_env()->key));
	h_write_file(px.config, edited, 0600);
	free(edited);
	free(text);
	const char *const args[] = { "--check", px.config, NULL };
	cr_assert_eq(run_pgmux(&c, args), 1, "stdout: %s", c.out);
	cr_expect(strstr(c.err, "/nonexistent/key.pem") != NULL, "the file is not named: %s", c.err);
	h_cmd_free(&c);
}

/* ---------------------------------------------------------------- metrics helpers */

/* The value of the sample whose name and labels are exactly series; fails the test when there is none. */
static double sample(const char *body, const char *series)
{
	double value = h_sample(body, series);

	cr_assert(value >= 0, "no sample %s in the scrape", series);
	return value;
}

#define POOL_LABELS "{database=\"postgres\",user=\"app\",endpoint=\"writer\""

/* ---------------------------------------------------------------- histograms */

TestSuite(observability_metrics, .fini = fini_kill_leftovers, .timeout = 120);

struct sleeper {
	int port;
	int done; /* transactions that succeeded */
};

/* One client: five transactions of pg_sleep(0.1). */
static void *sleeper_main(void *arg)
{
	struct sleeper *sl = arg;
	PGconn *conn = h_connect_app(sl->port, "disable", NULL);

	if (PQstatus(conn) == CONNECTION_OK) {
		for (int i = 0; i < 5; i++) {
			PGresult *r = PQexec(conn, "select pg_sleep(0.1)");
			sl->done += PQresultStatus(r) == PGRES_TUPLES_OK;
			PQclear(r);
		}
	}
	PQfinish(conn);
	return NULL;
}

/*
 * 4 clients x 5 transactions of pg_sleep(0.1) over one server connection:
 * 20 transactions and 20 queries, each query over 100 ms on the server, and
 * the clients queue behind each other: about 3 x 100 ms of borrow wait per
 * transaction once all four run, 5.4 s in all (the first round waits 0, 0.1,
 * 0.2 and 0.3 s).
 */
Test(observability_metrics, histograms_place_a_known_workload)
{
	struct pgmux_options o;
	char extra[128];
	int metrics_port = h_free_port();
	pthread_t threads[4];
	struct sleeper sleepers[4];

	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.max_connections = 1;
	o.tls = false;
	snprintf(extra, sizeof(extra), "metrics_port = %d\n", metrics_port);
	o.extra_pgmux = extra;
	o.admin_users = "app";
	cr_assert(pgmux_start(&px, &o));
	for (int i = 0; i < 4; i++) {
		sleepers[i] = (struct sleeper){ .port = px.port };
		cr_assert_eq(pthread_create(&threads[i], NULL, sleeper_main, &sleepers[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(threads[i], NULL);
		cr_assert_eq(sleepers[i].done, 5, "client %d ran %d of its 5 transactions", i, sleepers[i].done);
	}

	char *body = h_scrape(metrics_port);
	cr_expect_eq(sample(body, "pgmux_transaction_duration_seconds_count" POOL_LABELS "}"), 20);
	cr_expect_eq(sample(body, "pgmux_transaction_duration_seconds_bucket" POOL_LABELS ",le=\"0.1\"}"), 0,
		     "a transaction of pg_sleep(0.1) took under 100 ms");
	cr_expect_eq(sample(body, "pgmux_transaction_duration_seconds_bucket" POOL_LABELS ",le=\"+Inf\"}"), 20);
	cr_expect_eq(sample(body, "pgmux_query_duration_seconds_count" POOL_LABELS "}"), 20);
	cr_expect_eq(sample(body, "pgmux_query_duration_seconds_bucket" POOL_LABELS ",le=\"0.1\"}"), 0);
	/* The server's own time: no queueing in it, so all but a loaded machine's stragglers are under 250 ms. */
	cr_expect_geq(sample(body, "pgmux_query_duration_seconds_bucket" POOL_LABELS ",le=\"0.25\"}"), 16);
	cr_expect_eq(sample(body, "pgmux_query_duration_seconds_bucket" POOL_LABELS ",le=\"1\"}"), 20);
	double query_sum = sample(body, "pgmux_query_duration_seconds_sum" POOL_LABELS "}");
	double txn_sum = sample(body, "pgmux_transaction_duration_seconds_sum" POOL_LABELS "}");
	cr_expect(query_sum >= 2.0 && query_sum < 5.0, "20 queries of 100 ms took %.3f s in all", query_sum);
	cr_expect_geq(txn_sum, query_sum, "transactions (%.3f s) are shorter than their queries (%.3f s)", txn_sum,
		      query_sum);
	/* 20 borrows for transactions and 4 at login. */
	cr_expect_eq(sample(body, "pgmux_borrow_wait_seconds_count" POOL_LABELS "}"), 24);
	double wait_sum = sample(body, "pgmux_borrow_wait_seconds_sum" POOL_LABELS "}");
	cr_expect(wait_sum > 2.7 && wait_sum < 11.0, "borrow waits add up to %.3f s, expected near 5.4 s", wait_sum);
	cr_expect_geq(sample(body, "pgmux_client_login_seconds_count"), 4);
	cr_expect_geq(sample(body, "pgmux_server_connect_seconds_count"), 1);
	cr_expect_eq(sample(body, "pgmux_server_connect_seconds_bucket{le=\"+Inf\"}"),
		     sample(body, "pgmux_server_connect_seconds_count"));
	cr_expect_gt(sample(body, "pgmux_pool_bytes_sent_total" POOL_LABELS "}"), 0);

	/* SHOW STATS: PgBouncer's columns per pool in the first result set, pgmux's rows in the second. */
	char *ci = h_conninfo(px.port, "app", h_env()->apppass, "disable", "dbname=pgmux");
	PGconn *admin = PQconnectdb(ci);
	free(ci);
	cr_assert_eq(PQstatus(admin), CONNECTION_OK, "%s", PQerrorMessage(admin));
	cr_assert(PQsendQuery(admin, "SHOW STATS"));
	PGresult *pools = h_get_result(admin, h_scaled_ms(5000)), *rows = h_get_result(admin, h_scaled_ms(5000));
	cr_assert_eq(PQresultStatus(pools), PGRES_TUPLES_OK);
	cr_assert_eq(PQresultStatus(rows), PGRES_TUPLES_OK);
	cr_assert_eq(PQnfields(rows), 2, "the second result set is not pgmux's (name, value)");
	int row = -1;
	for (int i = 0; i < PQntuples(pools); i++)
		if (strcmp(PQgetvalue(pools, i, PQfnumber(pools, "database")), "postgres") == 0)
			row = i;
	cr_assert_geq(row, 0, "SHOW STATS has no row for the pool");
#define COLUMN(name) atoll(PQgetvalue(pools, row, PQfnumber(pools, name)))
	cr_expect_eq(COLUMN("total_xact_count"), 20);
	cr_expect_eq(COLUMN("total_query_count"), 20);
	cr_expect_gt(COLUMN("total_received"), 20 * (long long)strlen("select pg_sleep(0.1)"));
	cr_expect_gt(COLUMN("total_sent"), 0);
	cr_expect_geq(COLUMN("total_query_time"), 2000000);
	cr_expect_geq(COLUMN("avg_query_time"), 100000, "a pg_sleep(0.1) query averages under 100 ms");
	cr_expect_geq(COLUMN("avg_xact_time"), COLUMN("avg_query_time"));
	cr_expect(COLUMN("total_wait_time") > 2700000 && COLUMN("total_wait_time") < 11000000);
	cr_expect_eq(COLUMN("avg_wait_time"), COLUMN("total_wait_time") / 24);
#undef COLUMN
	PQclear(pools);
	PQclear(rows);
	PQclear(h_get_result(admin, 1000));
	/* PQexec keeps the last result: the (name, value) rows as before. */
	cr_expect_eq(h_admin_stat(admin, "queries"), 20);
	PQfinish(admin);
	free(body);
	h_stop_expect_clean_exit(&px);
}

/*
 * Every metric name the contrib/ dashboard and alert rules use is in a real
 * scrape (a histogram's _bucket, _sum and _count included), after a
 * transaction so that the per-pool series exist.
 */
Test(observability_metrics, contrib_dashboard_and_alerts_use_only_real_metrics)
{
	struct pgmux_options o;
	char extra[128];
	int metrics_port = h_free_port();
	const char *const files[] = { TEST_SRCDIR "/contrib/grafana-dashboard.json",
				      TEST_SRCDIR "/contrib/prometheus-alerts.yml" };
	regex_t name_re;
	int checked = 0;

	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.tls = false;
	snprintf(extra, sizeof(extra), "metrics_port = %d\n", metrics_port);
	o.extra_pgmux = extra;
	cr_assert(pgmux_start(&px, &o));
	PGconn *conn = h_app_session(&px, "disable", NULL);
	h_expect_value(conn, "select 1", "1");
	PQfinish(conn);
	char *body = h_scrape(metrics_port);
	cr_assert_eq(regcomp(&name_re, "pgmux_[a-z0-9_]+", REG_EXTENDED), 0);
	for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
		char *text = h_read_file(files[f]);
		regmatch_t m;

		cr_assert_gt(strlen(text), 0, "cannot read %s", files[f]);
		for (const char *at = text; regexec(&name_re, at, 1, &m, 0) == 0; at += m.rm_eo) {
			char name[128], as_sample[140], as_labelled[140];
			int len = (int)(m.rm_eo - m.rm_so);

			snprintf(name, sizeof(name), "%.*s", len, at + m.rm_so);
			snprintf(as_sample, sizeof(as_sample), "\n%s ", name);
			snprintf(as_labelled, sizeof(as_labelled), "\n%s{", name);
			cr_expect(strstr(body, as_sample) || strstr(body, as_labelled), "%s uses %s, which /metrics lacks",
				  files[f], name);
			checked++;
		}
		free(text);
	}
	cr_expect_gt(checked, 10, "the contrib files name only %d metrics", checked);
	regfree(&name_re);
	free(body);
	h_stop_expect_clean_exit(&px);
}

/* ---------------------------------------------------------------- a failover, JSON logs */

/*
 * A TCP relay to the suite's PostgreSQL on a port of its own: two of them
 * are two "instances" of one server, both writers. Stopping the one pgmux
 * chose closes its listener and every connection through it, so that its
 * health checks fail and pgmux fails over to the other.
 */
#define RELAY_MAX_PAIRS 64

struct relay {
	int listen_fd;
	int port;
	pthread_t thread;
	atomic_bool stop;
	int client[RELAY_MAX_PAIRS], upstream[RELAY_MAX_PAIRS];
	int n;
};

static struct relay relays[2];

/* Copy what from has to to; false when either side is gone. */
static bool relay_copy(int from, int to)
{
	char buf[16384];
	ssize_t n = read(from, buf, sizeof(buf));

	for (ssize_t off = 0; n > 0 && off < n;) {
		ssize_t w = write(to, buf + off, (size_t)(n - off));

		if (w <= 0)
			return false;
		off += w;
	}
	return n > 0;
}

static void relay_drop(struct relay *r, int i)
{
	close(r->client[i]);
	close(r->upstream[i]);
	r->n--;
	r->client[i] = r->client[r->n];
	r->upstream[i] = r->upstream[r->n];
}

static void *relay_main(void *arg)
{
	struct relay *r = arg;

	while (!atomic_load(&r->stop)) {
		struct pollfd pfd[1 + 2 * RELAY_MAX_PAIRS];

		pfd[0] = (struct pollfd){ .fd = r->n < RELAY_MAX_PAIRS ? r->listen_fd : -1, .events = POLLIN };
		for (int i = 0; i < r->n; i++) {
			pfd[1 + 2 * i] = (struct pollfd){ .fd = r->client[i], .events = POLLIN };
			pfd[2 + 2 * i] = (struct pollfd){ .fd = r->upstream[i], .events = POLLIN };
		}
		if (poll(pfd, (nfds_t)(1 + 2 * r->n), 50) <= 0)
			continue;
		for (int i = r->n - 1; i >= 0; i--) {
			bool alive = true;

			if (pfd[1 + 2 * i].revents)
				alive = relay_copy(r->client[i], r->upstream[i]);
			if (alive && pfd[2 + 2 * i].revents)
				alive = relay_copy(r->upstream[i], r->client[i]);
			if (!alive)
				relay_drop(r, i);
		}
		if (pfd[0].revents & POLLIN) {
			int fd = accept(r->listen_fd, NULL, NULL), up = socket(AF_INET, SOCK_STREAM, 0);
			struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)h_env()->pgport) };

			inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
			if (fd >= 0 && up >= 0 && connect(up, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
				r->client[r->n] = fd;
				r->upstream[r->n++] = up;
			} else {
				if (fd >= 0)
					close(fd);
				if (up >= 0)
					close(up);
			}
		}
	}
	while (r->n > 0)
		relay_drop(r, 0);
	close(r->listen_fd);
	return NULL;
}

static void relay_start(struct relay *r)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int on = 1;

	memset(r, 0, sizeof(*r));
	r->port = h_free_port();
	r->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(r->listen_fd, 0);
	setsockopt(r->listen_fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
	sa.sin_port = htons((uint16_t)r->port);
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	cr_assert_eq(bind(r->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "bind: %s", strerror(errno));
	cr_assert_eq(listen(r->listen_fd, 64), 0);
	cr_assert_eq(pthread_create(&r->thread, NULL, relay_main, r), 0);
}

static void relay_stop(struct relay *r)
{
	if (r->thread == 0)
		return;
	atomic_store(&r->stop, true);
	pthread_join(r->thread, NULL);
	r->thread = 0;
}

static void fini_relays(void)
{
	pgmux_kill(&px);
	relay_stop(&relays[0]);
	relay_stop(&relays[1]);
	h_teardown();
}

TestSuite(observability_json_logs, .fini = fini_relays, .timeout = 120);

/* The first line of path whose msg contains needle, parsed (json_decref it), or NULL. */
static json_t *find_line(const char *path, const char *needle)
{
	char *text = h_read_file(path);
	json_t *found = NULL;

	for (char *line = strtok(text, "\n"); line && !found; line = strtok(NULL, "\n")) {
		json_t *o = json_loads(line, 0, NULL);
		const char *msg = json_string_value(json_object_get(o, "msg"));

		if (msg && strstr(msg, needle))
			found = o;
		else
			json_decref(o);
	}
	free(text);
	return found;
}

/* The port of the instance serving as the writer in a scrape, or 0. */
static int serving_writer_port(const char *body)
{
	static const char family[] = "\npgmux_target_serving{";

	for (const char *at = strstr(body, family); at; at = strstr(at + 1, family)) {
		const char *end = strchr(at + 1, '\n'), *port = strstr(at, "port=\"");

		if (end && port && port < end && strstr(at, "role=\"writer\"} 1") != NULL &&
		    strstr(at, "role=\"writer\"} 1") < end)
			return atoi(port + strlen("port=\""));
	}
	return 0;
}

struct failover_watch {
	int metrics_port;
	double failovers_before;
};

static bool failover_counted(void *arg)
{
	struct failover_watch *watch = arg;
	char *body = h_scrape(watch->metrics_port);
	const char *at = strstr(body, "\npgmux_failovers_total ");
	bool counted = at && atof(at + strlen("\npgmux_failovers_total ")) > watch->failovers_before;

	free(body);
	return counted;
}

/*
 * log_format = json: every line pgmux writes while a login fails, a reload
 * runs, a borrow is slow, a transaction is long and the writer fails over is
 * one JSON object with ts (RFC 3339, microseconds), level and msg, and the
 * lines about a client, a server connection or an instance carry their keys.
 * The failover moves pgmux_failovers_total and the last failover's time.
 */
Test(observability_json_logs, every_line_is_a_json_object_with_its_fields)
{
	struct pgmux_options o;
	char hosts[128], extra[256];
	int metrics_port = h_free_port();

	relay_start(&relays[0]);
	relay_start(&relays[1]);
	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.max_connections = 1;
	o.tls = false;
	snprintf(hosts, sizeof(hosts), "127.0.0.1:%d, 127.0.0.1:%d", relays[0].port, relays[1].port);
	o.hosts = hosts;
	o.extra_target = "health_check_interval = 200ms\n";
	snprintf(extra, sizeof(extra),
		 "log_format = json\nlog_slow_borrow = 50ms\nlog_long_transaction = 150ms\n"
		 "metrics_port = %d\n", metrics_port);
	o.extra_pgmux = extra;
	cr_assert(pgmux_start(&px, &o));
	cr_assert(h_file_wait_contains(px.logfile, "\"writer is 127.0.0.1:", h_scaled_ms(10000)));

	/* A login that fails. */
	char *ci = h_conninfo(px.port, "app", "not-the-password", "disable", NULL);
	PGconn *bad = PQconnectdb(ci);
	free(ci);
	cr_expect_neq(PQstatus(bad), CONNECTION_OK);
	PQfinish(bad);

	/* A reload. */
	cr_assert_eq(kill(px.pid, SIGHUP), 0);
	cr_assert(h_file_wait_contains(px.logfile, "configuration reloaded", h_scaled_ms(10000)));

	/* A long transaction that makes a second client's borrow slow (one server connection). */
	PGconn *a = h_app_session(&px, "disable", NULL), *b = h_app_session(&px, "disable", NULL);
	cr_assert(PQsendQuery(a, "select pg_sleep(0.3)"));
	h_sleep_ms(50);
	h_expect_value(b, "select 1", "1");
	PQclear(h_get_result(a, h_scaled_ms(5000)));
	PQclear(h_get_result(a, 1000));

	/*
	 * A failover: the relay of the instance that is the writer now goes
	 * away; the other instance is a writer already.
	 */
	struct failover_watch watch = { .metrics_port = metrics_port };
	char *before = h_scrape(metrics_port);
	int writer_port = serving_writer_port(before);
	watch.failovers_before = sample(before, "pgmux_failovers_total");
	free(before);
	cr_assert(writer_port == relays[0].port || writer_port == relays[1].port, "no serving writer in the scrape");
	relay_stop(writer_port == relays[0].port ? &relays[0] : &relays[1]);
	if (!h_poll_until(failover_counted, &watch, h_scaled_ms(15000))) {
		pgmux_dump_logs(&px);
		cr_assert_fail("pgmux_failovers_total did not move after the relay of port %d stopped", writer_port);
	}
	cr_expect(h_file_count(px.logfile, "failover: writer is now") >= 1);
	char *body = h_scrape(metrics_port);
	cr_expect_gt(sample(body, "pgmux_last_failover_timestamp_seconds"), 1.7e9);
	free(body);
	h_expect_value(b, "select 2", "2");
	PQfinish(a);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);

	/* Every line parses and has the keys every line has. */
	regex_t ts_re;
	cr_assert_eq(regcomp(&ts_re, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$",
			     REG_EXTENDED | REG_NOSUB), 0);
	char *text = h_read_file(px.logfile);
	int lines = 0, client_lines = 0, server_lines = 0;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		json_error_t error;
		json_t *obj = json_loads(line, JSON_REJECT_DUPLICATES, &error);

		lines++;
		cr_assert_not_null(obj, "line %d is not JSON (%s): %s", lines, error.text, line);
		const char *ts = json_string_value(json_object_get(obj, "ts"));
		const char *level = json_string_value(json_object_get(obj, "level"));
		cr_assert(ts && regexec(&ts_re, ts, 0, NULL, 0) == 0, "line %d: ts is not RFC 3339 with microseconds: %s",
			  lines, line);
		cr_assert(level && (strcmp(level, "error") == 0 || strcmp(level, "warning") == 0 ||
				    strcmp(level, "info") == 0 || strcmp(level, "debug") == 0),
			  "line %d: level: %s", lines, line);
		cr_assert(json_is_string(json_object_get(obj, "msg")), "line %d has no msg: %s", lines, line);
		if (json_object_get(obj, "client_id")) {
			client_lines++;
			cr_assert(json_is_integer(json_object_get(obj, "client_id")) && json_object_get(obj, "remote"),
				  "line %d: a client line without its remote address: %s", lines, line);
		}
		if (json_object_get(obj, "server_id")) {
			server_lines++;
			cr_assert(json_is_string(json_object_get(obj, "server")) && json_object_get(obj, "instance"),
				  "line %d: a server line without server and instance: %s", lines, line);
		}
		json_decref(obj);
	}
	free(text);
	regfree(&ts_re);
	cr_expect_gt(client_lines, 5);
	cr_expect_gt(server_lines, 0);

	/* The lines the issue names, with their fields. */
	json_t *l = find_line(px.logfile, "authentication failed");
	cr_assert_not_null(l, "no line for the failed login");
	cr_expect_str_eq(json_string_value(json_object_get(l, "user")), "app");
	cr_expect_str_eq(json_string_value(json_object_get(l, "database")), "postgres");
	cr_expect_str_eq(json_string_value(json_object_get(l, "sqlstate")), "28P01");
	cr_expect(json_is_string(json_object_get(l, "reason")));
	cr_expect_str_eq(json_string_value(json_object_get(l, "level")), "warning");
	json_decref(l);
	l = find_line(px.logfile, "closing during auth");
	cr_assert_not_null(l, "no closing line for the failed login");
	cr_expect_str_eq(json_string_value(json_object_get(l, "sqlstate")), "28P01");
	json_decref(l);
	l = find_line(px.logfile, "configuration reloaded");
	cr_expect_not_null(l);
	json_decref(l);
	l = find_line(px.logfile, "slow borrow");
	cr_assert_not_null(l, "no slow-borrow line");
	cr_expect(json_is_integer(json_object_get(l, "client_id")));
	json_decref(l);
	l = find_line(px.logfile, "long transaction");
	cr_assert_not_null(l, "no long-transaction line");
	cr_expect_str_eq(json_string_value(json_object_get(l, "user")), "app");
	json_decref(l);
	l = find_line(px.logfile, "failover: writer is now");
	cr_assert_not_null(l);
	cr_expect(json_is_string(json_object_get(l, "instance")), "the failover line has no instance");
	json_decref(l);
}

/* ---------------------------------------------------------------- a cutover */

TestSuite(observability_cutover, .fini = fini_kill_leftovers, .timeout = 60);

/* A CUTOVER TO (here to the same server under another name) moves the cutover counters and time. */
Test(observability_cutover, a_cutover_moves_its_counters)
{
	struct pgmux_options o;
	char extra[128], sql[128];
	int metrics_port = h_free_port();

	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.tls = false;
	o.admin_users = "app";
	/* The same server under another name: nothing replicates to it, and nothing needs to. */
	o.extra_target = "cutover_require_catchup = false";
	snprintf(extra, sizeof(extra), "metrics_port = %d\n", metrics_port);
	o.extra_pgmux = extra;
	cr_assert(pgmux_start(&px, &o));
	char *body = h_scrape(metrics_port);
	cr_expect_eq(sample(body, "pgmux_cutovers_total"), 0);
	cr_expect_eq(sample(body, "pgmux_last_cutover_timestamp_seconds"), 0);
	free(body);

	char *ci = h_conninfo(px.port, "app", h_env()->apppass, "disable", "dbname=pgmux");
	PGconn *admin = PQconnectdb(ci);
	free(ci);
	cr_assert_eq(PQstatus(admin), CONNECTION_OK, "%s", PQerrorMessage(admin));
	snprintf(sql, sizeof(sql), "CUTOVER TO 'localhost:%d'", h_env()->pgport);
	PGresult *r = PQexec(admin, sql);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
	PQclear(r);

	body = h_scrape(metrics_port);
	cr_expect_eq(sample(body, "pgmux_cutovers_total"), 1);
	cr_expect_gt(sample(body, "pgmux_last_cutover_timestamp_seconds"), 1.7e9);
	cr_expect_eq(sample(body, "pgmux_last_cutover_transactions_in_flight"), 0);
	cr_expect_eq(sample(body, "pgmux_last_cutover_pinned_sessions"), 0);
	cr_expect_geq(sample(body, "pgmux_last_cutover_pause_seconds"), 0);
	free(body);
	cr_expect_eq(h_admin_stat(admin, "cutovers"), 1);
	cr_expect_gt(h_admin_stat(admin, "last_cutover_unix_time"), 1700000000);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}
