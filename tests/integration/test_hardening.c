/*
 * test_hardening.c: end-to-end tests of issue 17, "hardening the edges":
 * whom pgmux gives server passwords to, what a client can write into the
 * log, running out of file descriptors, who may read /metrics, the client
 * TLS settings and key file checks, and the look-only admin role. Each
 * suite runs a real pgmux (and, where it needs one, a fake server of the
 * test's own) and checks what a client, the log or the fake server sees.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
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

/* A session to pgmux's admin console as user (password password); NULL when refused. */
static PGconn *admin_as(const char *user, const char *password)
{
	char *ci = h_conninfo(px.port, user, password, "disable", "dbname=pgmux");
	PGconn *conn = PQconnectdb(ci);
	free(ci);
	if (PQstatus(conn) != CONNECTION_OK) {
		fprintf(stderr, "admin login as %s: %s", user, PQerrorMessage(conn));
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/* Run sql; its command tag, or the SQLSTATE after "ERROR " when it failed (static). */
static const char *admin_run(PGconn *conn, const char *sql)
{
	static char outcome[128];
	PGresult *res = PQexec(conn, sql);
	if (PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK) {
		snprintf(outcome, sizeof(outcome), "%s", PQcmdStatus(res));
	} else {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		snprintf(outcome, sizeof(outcome), "ERROR %s", state ? state : "?");
	}
	PQclear(res);
	return outcome;
}

/* ---------------------------------------------------------------- a fake server */

/*
 * A "server" of the test's own that asks every login for a cleartext
 * password (AuthenticationCleartextPassword) and records what arrives: the
 * SSLRequests, the user of each StartupMessage and each password. It answers
 * an SSLRequest with 'N', as a server without TLS does.
 */
struct fake_server {
	int listen_fd;
	int port;
	pthread_t thread;
	volatile int stop;
	pthread_mutex_t lock;
	int ssl_requests;
	int startups;
	int passwords;
	char users[8][128];
	char secrets[8][128];
};

static struct fake_server fake;

static bool fake_read(int fd, void *buf, size_t len)
{
	return h_raw_read(fd, buf, len, 3000) == (ssize_t)len;
}

static void fake_serve_one(int fd)
{
	uint8_t head[8];
	char body[2048];

	for (;;) {
		if (!fake_read(fd, head, 8))
			return;
		uint32_t len = h_get_u32(head), code = h_get_u32(head + 4);
		if (len == 8 && (code == 80877103 || code == 80877104)) { /* SSLRequest, GSSENCRequest */
			pthread_mutex_lock(&fake.lock);
			fake.ssl_requests += code == 80877103;
			pthread_mutex_unlock(&fake.lock);
			if (!h_raw_send(fd, "N", 1))
				return;
			continue;
		}
		if (len < 8 || len - 8 >= sizeof(body) || !fake_read(fd, body, len - 8))
			return;
		body[len - 8] = '\0';
		char user[128] = "";
		for (size_t at = 0; at < len - 8 && body[at];) {
			const char *name = body + at, *value = name + strlen(name) + 1;
			if ((size_t)(value - body) >= len - 8)
				break;
			if (strcmp(name, "user") == 0)
				snprintf(user, sizeof(user), "%s", value);
			at = (size_t)(value - body) + strlen(value) + 1;
		}
		pthread_mutex_lock(&fake.lock);
		if (fake.startups < 8)
			snprintf(fake.users[fake.startups], sizeof(fake.users[0]), "%s", user);
		fake.startups++;
		pthread_mutex_unlock(&fake.lock);
		break;
	}
	uint8_t ask[9] = {'R'};
	h_put_u32(ask + 1, 8);
	h_put_u32(ask + 5, 3); /* AuthenticationCleartextPassword */
	if (!h_raw_send(fd, ask, sizeof(ask)))
		return;
	uint8_t type;
	if (!fake_read(fd, &type, 1) || type != 'p' || !fake_read(fd, head, 4))
		return;
	uint32_t len = h_get_u32(head);
	if (len < 4 || len - 4 >= sizeof(body) || !fake_read(fd, body, len - 4))
		return;
	body[len - 4] = '\0';
	pthread_mutex_lock(&fake.lock);
	if (fake.passwords < 8)
		snprintf(fake.secrets[fake.passwords], sizeof(fake.secrets[0]), "%.127s", body);
	fake.passwords++;
	pthread_mutex_unlock(&fake.lock);
	static const char fatal[] = "SFATAL\0C28P01\0Mfake server\0";
	uint8_t reply[64] = {'E'};
	h_put_u32(reply + 1, (uint32_t)(4 + sizeof(fatal)));
	memcpy(reply + 5, fatal, sizeof(fatal));
	h_raw_send(fd, reply, 5 + sizeof(fatal));
}

static void *fake_main(void *arg)
{
	(void)arg;
	while (!fake.stop) {
		struct pollfd p = {.fd = fake.listen_fd, .events = POLLIN};
		if (poll(&p, 1, 100) <= 0)
			continue;
		int fd = accept(fake.listen_fd, NULL, NULL);
		if (fd < 0)
			continue;
		fake_serve_one(fd);
		close(fd);
	}
	return NULL;
}

static void fake_start(void)
{
	memset(&fake, 0, sizeof(fake));
	pthread_mutex_init(&fake.lock, NULL);
	fake.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fake.listen_fd, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(sa);
	cr_assert_eq(bind(fake.listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(fake.listen_fd, 16), 0);
	cr_assert_eq(getsockname(fake.listen_fd, (struct sockaddr *)&sa, &sl), 0);
	fake.port = ntohs(sa.sin_port);
	cr_assert_eq(pthread_create(&fake.thread, NULL, fake_main, NULL), 0);
}

static void fake_stop(void)
{
	if (fake.listen_fd <= 0)
		return;
	fake.stop = 1;
	pthread_join(fake.thread, NULL);
	close(fake.listen_fd);
	fake.listen_fd = 0;
}

static int fake_count(const int *field)
{
	pthread_mutex_lock(&fake.lock);
	int n = *field;
	pthread_mutex_unlock(&fake.lock);
	return n;
}

static bool fake_has_passwords(void *arg)
{
	return fake_count(&fake.passwords) >= 1;
}

static bool fake_has_ssl_requests(void *arg)
{
	return fake_count(&fake.ssl_requests) >= 2;
}

static void fini_fake(void)
{
	h_teardown();
	fake_stop();
}

/* ---------------------------------------------------------------- server credentials */

TestSuite(server_credentials, .fini = fini_fake, .timeout = 90);

/* pgmux with the suite's two secrets (app, postgres), health_check_user = app and a console for postgres. */
static void start_with_console(const char *server_tls)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	if (server_tls)
		o.server_tls = server_tls;
	o.admin_users = h_env()->superuser;
	o.extra_target = "health_check_interval = 200ms\n";
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
}

/*
 * The attack: CUTOVER TO a server that asks for a cleartext password.
 * libpq 15 hands it over (libpq 16 with require_auth would not), but only the
 * health-check user's, never the superuser's that sorts first among several.
 */
Test(server_credentials, a_server_asking_for_cleartext_gets_only_the_health_check_user)
{
	fake_start();
	start_with_console(NULL);
	PGconn *admin = admin_as(h_env()->superuser, h_env()->superpass);
	cr_assert_not_null(admin);
	char sql[128];
	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", fake.port);
	cr_assert_str_eq(admin_run(admin, sql), "CUTOVER");
	PQfinish(admin);
	if (PQlibVersion() >= 160000) {
		/* Built with require_auth: no password leaves for a server that asks for cleartext. */
		h_sleep_ms(h_scaled_ms(2000));
		cr_expect_eq(fake_count(&fake.passwords), 0);
	} else {
		cr_assert(h_poll_until(fake_has_passwords, NULL, h_scaled_ms(10000)),
			  "the health check never logged in to the fake server");
	}
	pthread_mutex_lock(&fake.lock);
	for (int i = 0; i < fake.startups && i < 8; i++)
		cr_expect_str_eq(fake.users[i], h_env()->appuser, "a login as %s", fake.users[i]);
	for (int i = 0; i < fake.passwords && i < 8; i++) {
		cr_expect_str_neq(fake.secrets[i], h_env()->superpass, "the superuser's password was sent");
		cr_expect_str_eq(fake.secrets[i], h_env()->apppass);
	}
	pthread_mutex_unlock(&fake.lock);
	h_stop_expect_clean_exit(&px);
}

/* With server_tls = verify-full, a server that cannot prove itself gets no login at all. */
Test(server_credentials, verify_full_gives_an_unverified_cutover_target_nothing)
{
	if (h_under_valgrind())
		cr_skip_test("server TLS is off under valgrind");
	fake_start();
	start_with_console("verify-full");
	PGconn *admin = admin_as(h_env()->superuser, h_env()->superpass);
	cr_assert_not_null(admin);
	char sql[128];
	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", fake.port);
	cr_assert_str_eq(admin_run(admin, sql), "CUTOVER");
	PQfinish(admin);
	cr_assert(h_poll_until(fake_has_ssl_requests, NULL, h_scaled_ms(10000)),
		  "pgmux never tried the fake server");
	cr_expect_eq(fake_count(&fake.startups), 0, "a StartupMessage went to a server that refused TLS");
	cr_expect_eq(fake_count(&fake.passwords), 0, "a password went to a server that refused TLS");
	h_stop_expect_clean_exit(&px);
}

/* Two secrets and no health_check_user: pgmux says so and does not start. */
Test(server_credentials, several_secrets_without_health_check_user_stop_the_start)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.health_check_user = "";
	int status = pgmux_run_to_exit(&px, &o, h_scaled_ms(10000));
	cr_assert_eq(status, 1, "pgmux exited with %d", status);
	cr_expect(h_file_count(px.logfile, "health_check_user must be set when secrets_dir holds more than one secret") >= 1,
		  "the error does not say what to set");
}

/* One secret: the health checks use it, no health_check_user needed. */
Test(server_credentials, a_single_secret_needs_no_health_check_user)
{
	char dir[600], from[700], to[700];
	snprintf(dir, sizeof(dir), "%s/one-secret", h_test_dir());
	cr_assert_eq(mkdir(dir, 0700), 0);
	snprintf(from, sizeof(from), "%s/app.json", h_env()->secrets);
	snprintf(to, sizeof(to), "%s/app.json", dir);
	char *text = h_read_file(from);
	h_write_file(to, text, 0600);
	free(text);
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.health_check_user = "";
	o.secrets_dir = dir;
	cr_assert(pgmux_start(&px, &o));
	PGconn *conn = h_app_session(&px, "disable", NULL);
	h_expect_value(conn, "select current_user", h_env()->appuser);
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

/* A host that is not on loopback, not verified: a WARNING that names it and the risk. */
Test(server_credentials, an_unverified_remote_server_gets_a_startup_warning)
{
	char hosts[128];
	snprintf(hosts, sizeof(hosts), "%s:%d, 192.0.2.10:5432", h_env()->pghost, h_env()->pgport);
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.server_tls = "require";
	o.hosts = hosts;
	o.extra_target = "health_check_timeout = 200ms\n";
	cr_assert(pgmux_start(&px, &o));
	cr_expect(h_file_count(px.logfile, "WARNING: server 192.0.2.10:5432 is not on loopback and server_tls = require "
					   "does not verify it") == 1,
		  "no warning for the remote host");
	cr_expect(h_file_count(px.logfile, "WARNING: server 127.0.0.1:") == 0, "a warning for a loopback host");
	h_stop_expect_clean_exit(&px);
}

/* ---------------------------------------------------------------- log injection */

TestSuite(log_injection, .fini = fini_kill_leftovers, .timeout = 60);

/*
 * A user name with a newline and a line of pgmux's own log format after it:
 * the log must keep it on the line it came in on, escaped, at every level.
 */
Test(log_injection, a_newline_in_the_user_name_cannot_forge_a_log_line)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	cr_assert(pgmux_start(&px, &o));

	const char *forged = "2026-12-06 12:00:00.000 [1] main LOG: admin console: SHUTDOWN by admin";
	char user[256], app_name[128];
	snprintf(user, sizeof(user), "mallory\n%s", forged);
	snprintf(app_name, sizeof(app_name), "app\r\n%s", forged);
	int fd = h_raw_connect(px.port, 2000);
	cr_assert_geq(fd, 0);
	uint8_t buf[1024];
	const char *params[] = {"user", user, "database", "db\nx", "application_name", app_name, NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 3u << 16, params);
	cr_assert(h_raw_send(fd, buf, len));
	/* pgmux asks for a password (it does not say which users exist); leaving is logged at LOG. */
	char type = 0, *body = NULL;
	size_t blen = 0;
	cr_assert_eq(h_raw_read_message(fd, &type, &body, &blen, 5000), H_MSG_OK);
	cr_assert_eq(type, 'R', "pgmux sent '%c' instead of an authentication request", type);
	free(body);
	close(fd);
	cr_assert(h_file_wait_contains(px.logfile, "mallory\\n2026-12-06", h_scaled_ms(5000)),
		  "the user name is not in the log, escaped");

	char *log = h_read_file(px.logfile);
	for (char *line = log; line && *line;) {
		char *end = strchr(line, '\n');
		if (end)
			*end = '\0';
		cr_expect(strncmp(line, "2026-12-06 12:00:00.000 [1]", 27) != 0, "a forged line: %s", line);
		cr_expect(strchr(line, '\r') == NULL, "a carriage return in a log line: %s", line);
		line = end ? end + 1 : NULL;
	}
	free(log);
	h_stop_expect_clean_exit(&px);
}

/* ---------------------------------------------------------------- metrics access */

TestSuite(metrics_access, .fini = fini_kill_leftovers, .timeout = 60);

/*
 * GET /metrics from address:port with an optional Authorization header; the
 * HTTP status (0 when nothing listens), the reply in body (static).
 */
static int http_get(const char *address, int port, const char *authorization, char **body)
{
	static char reply[65536];
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	size_t used = 0;
	char request[512];
	int status = 0;

	reply[0] = '\0';
	*body = reply;
	cr_assert_geq(fd, 0);
	cr_assert_eq(inet_pton(AF_INET, address, &sa.sin_addr), 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(fd);
		return 0;
	}
	snprintf(request, sizeof(request), "GET /metrics HTTP/1.1\r\nHost: %s\r\n%s%s%sConnection: close\r\n\r\n",
		 address, authorization ? "Authorization: " : "", authorization ? authorization : "",
		 authorization ? "\r\n" : "");
	cr_assert(h_raw_send(fd, request, strlen(request)));
	for (;;) {
		ssize_t n = h_raw_read(fd, reply + used, 1, 5000);
		if (n != 1 || used + 2 >= sizeof(reply))
			break;
		used++;
	}
	reply[used] = '\0';
	close(fd);
	sscanf(reply, "HTTP/1.1 %d", &status);
	return status;
}

/* metrics_addr, not listen_addr, is where /metrics listens: 127.0.0.2 here, another loopback address. */
Test(metrics_access, metrics_listen_on_metrics_addr_and_ask_for_the_token)
{
	int metrics_port = h_free_port();
	char extra[256];
	snprintf(extra, sizeof(extra), "metrics_port = %d\nmetrics_addr = 127.0.0.2\nmetrics_token = s3cret-token-0123456789\n",
		 metrics_port);
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = extra;
	o.admin_users = h_env()->superuser;
	cr_assert(pgmux_start(&px, &o));
	char *body;
	cr_expect_eq(http_get("127.0.0.1", metrics_port, NULL, &body), 0, "metrics answer on listen_addr: %s", body);
	cr_expect_eq(http_get("127.0.0.2", metrics_port, NULL, &body), 401, "no token: %s", body);
	cr_expect_null(strstr(body, "pgmux_"), "a refused scrape shows metrics: %s", body);
	cr_expect_eq(http_get("127.0.0.2", metrics_port, "Bearer s3cret-token-0123456788", &body), 401, "a wrong token");
	cr_expect_eq(http_get("127.0.0.2", metrics_port, "Bearer s3cret-token-012345678", &body), 401, "a prefix");
	cr_expect_eq(http_get("127.0.0.2", metrics_port, "Basic czNjcmV0", &body), 401, "another scheme");
	cr_expect_eq(http_get("127.0.0.2", metrics_port, "Bearer s3cret-token-0123456789", &body), 200, "%s", body);
	cr_expect_not_null(strstr(body, "pgmux_client_connections_received_total"), "%s", body);

	/* SHOW CONFIG does not give the token away either. */
	PGconn *admin = admin_as(h_env()->superuser, h_env()->superpass);
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
	int metrics_port = h_free_port();
	char extra[64];
	snprintf(extra, sizeof(extra), "metrics_port = %d\n", metrics_port);
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = extra;
	cr_assert(pgmux_start(&px, &o));
	char *body;
	cr_expect_eq(http_get("127.0.0.1", metrics_port, NULL, &body), 200, "%s", body);
	cr_expect_eq(http_get("127.0.0.2", metrics_port, NULL, &body), 0, "metrics answer beyond 127.0.0.1");
	cr_expect(h_file_count(px.logfile, "metrics on http://127.0.0.1:") == 1);
	h_stop_expect_clean_exit(&px);
}

/* ---------------------------------------------------------------- admin roles */

TestSuite(admin_roles, .fini = fini_kill_leftovers, .timeout = 60);

/* A user in stats_users looks (SHOW) but cannot act; an admin still can. */
Test(admin_roles, a_stats_user_may_show_but_not_pause_or_shut_down)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.admin_users = h_env()->superuser;
	o.extra_pgmux = "stats_users = app\n";
	cr_assert(pgmux_start(&px, &o));

	PGconn *stats = admin_as(h_env()->appuser, h_env()->apppass);
	cr_assert_not_null(stats, "a stats user cannot log in to the console");
	cr_expect_str_eq(admin_run(stats, "SHOW POOLS"), "SHOW");
	cr_expect_str_eq(admin_run(stats, "SHOW STATS"), "SHOW");
	cr_expect_str_eq(admin_run(stats, "show clients"), "SHOW");
	static const char *const refused[] = {"PAUSE", "RESUME", "RELOAD", "KILL 1", "SHUTDOWN",
					      "CUTOVER TO '127.0.0.1:1'", NULL};
	for (int i = 0; refused[i]; i++)
		cr_expect_str_eq(admin_run(stats, refused[i]), "ERROR 42501", "%s", refused[i]);
	/* The extended protocol runs the same check. */
	PGresult *res = PQexecParams(stats, "SHUTDOWN", 0, NULL, NULL, NULL, NULL, 0);
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	cr_expect_str_eq(state ? state : "", "42501");
	PQclear(res);
	cr_expect(pgmux_running(&px), "a stats user's SHUTDOWN stopped pgmux");
	cr_expect(h_file_count(px.logfile, "is in stats_users, which may only run SHOW commands") == 0,
		  "the refusal is for the client, not a log line of its own");
	PQfinish(stats);

	PGconn *admin = admin_as(h_env()->superuser, h_env()->superpass);
	cr_assert_not_null(admin);
	cr_expect_str_eq(admin_run(admin, "PAUSE"), "PAUSE");
	cr_expect_str_eq(admin_run(admin, "RESUME"), "RESUME");
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* client_auth = trust hands the console to whoever names an admin: a WARNING at start and at each reload. */
Test(admin_roles, trust_logs_a_warning_at_start_and_reload)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.client_auth = "trust";
	o.admin_users = h_env()->superuser;
	cr_assert(pgmux_start(&px, &o));
	const char *warning = "WARNING: client_auth = trust: clients log in without a password, and anyone who names "
			      "a user in admin_users gets the admin console";
	cr_expect_eq(h_file_count(px.logfile, warning), 1);
	cr_assert_eq(kill(px.pid, SIGHUP), 0);
	cr_expect(h_file_wait_count(px.logfile, warning, 2, h_scaled_ms(5000)), "no warning at reload");
	h_stop_expect_clean_exit(&px);
}

/* Without trust, no such warning. */
Test(admin_roles, scram_logs_no_trust_warning)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	cr_assert(pgmux_start(&px, &o));
	PGconn *conn = h_app_session(&px, "disable", NULL);
	PQfinish(conn);
	cr_expect_eq(h_file_count(px.logfile, "client_auth = trust"), 0);
	h_stop_expect_clean_exit(&px);
}

/* ---------------------------------------------------------------- running out of descriptors */

TestSuite(descriptors, .fini = fini_kill_leftovers, .timeout = 90);

/* utime + stime of pid, in clock ticks. */
static long long cpu_ticks(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	char *text = h_read_file(path);
	const char *after = strrchr(text, ')');
	unsigned long long utime = 0, stime = 0;
	/* Fields after the name: state is 3rd, utime the 14th, stime the 15th. */
	cr_assert(after && sscanf(after + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
				  &stime) == 2,
		  "cannot read %s", path);
	free(text);
	return (long long)(utime + stime);
}

static long long file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/*
 * pgmux with 64 descriptors and 80 connections that never log in: accept()
 * fails with EMFILE. pgmux must not spin on it (CPU and log stay small), must
 * count it, and must take logins again once the connections are gone.
 */
Test(descriptors, emfile_pauses_accepting_and_logins_work_again)
{
	if (h_under_valgrind())
		cr_skip_test("valgrind needs descriptors of its own");
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.max_open_files = 64;
	o.admin_users = h_env()->superuser;
	int metrics_port = h_free_port();
	char extra[64];
	snprintf(extra, sizeof(extra), "metrics_port = %d\n", metrics_port);
	o.extra_pgmux = extra;
	cr_assert(pgmux_start(&px, &o));
	PGconn *first = h_app_session(&px, "disable", NULL);
	PQfinish(first);

	enum { IDLE = 80, SCRAPES = 2 };
	int idle[IDLE], scrapes[SCRAPES];
	for (int i = 0; i < IDLE; i++) {
		idle[i] = h_raw_connect(px.port, 2000);
		cr_assert_geq(idle[i], 0, "connection %d: the kernel's backlog should take it", i);
	}
	cr_assert(h_file_wait_contains(px.logfile, "accept failed: Too many open files", h_scaled_ms(5000)),
		  "pgmux never ran out of descriptors");
	/* The metrics port, out of descriptors too, must not spin either. */
	for (int i = 0; i < SCRAPES; i++) {
		scrapes[i] = h_raw_connect(metrics_port, 2000);
		cr_assert_geq(scrapes[i], 0);
	}
	cr_assert(h_file_wait_contains(px.logfile, "metrics: accept failed: Too many open files", h_scaled_ms(5000)),
		  "the metrics port never ran out of descriptors");
	/* Measure three seconds of being out of descriptors. */
	long long ticks_before = cpu_ticks(px.pid), log_before = file_size(px.logfile);
	long long t0 = h_now_ms();
	h_sleep_ms(3000);
	long long ticks = cpu_ticks(px.pid) - ticks_before, log_growth = file_size(px.logfile) - log_before;
	long long elapsed_ms = h_now_ms() - t0;
	long long cpu_ms = ticks * 1000 / sysconf(_SC_CLK_TCK);
	cr_expect_lt(cpu_ms, elapsed_ms / 5, "pgmux used %lld ms of CPU in %lld ms out of descriptors", cpu_ms,
		     elapsed_ms);
	cr_expect_lt(log_growth, 4096, "the log grew by %lld bytes in %lld ms", log_growth, elapsed_ms);
	cr_expect_leq(h_file_count(px.logfile, "accept failed: Too many open files; new connections wait"), 2,
		      "the failure is logged at most once per 10 s");
	cr_expect_leq(h_file_count(px.logfile, "metrics: accept failed: Too many open files"), 2,
		      "the metrics port's failure is logged at most once per 10 s");
	cr_expect(pgmux_running(&px));

	for (int i = 0; i < IDLE; i++)
		close(idle[i]);
	for (int i = 0; i < SCRAPES; i++)
		close(scrapes[i]);
	/* pgmux accepts again on its own: the queued connections go, a login works. */
	PGconn *conn = NULL;
	long long deadline = h_now_ms() + h_scaled_ms(10000);
	while (h_now_ms() < deadline) {
		char *ci = h_conninfo(px.port, h_env()->appuser, h_env()->apppass, "disable", NULL);
		conn = PQconnectdb(ci);
		free(ci);
		if (PQstatus(conn) == CONNECTION_OK)
			break;
		PQfinish(conn);
		conn = NULL;
		h_sleep_ms(200);
	}
	cr_assert_not_null(conn, "no login after the idle connections left");
	h_expect_value(conn, "select 1", "1");
	PQfinish(conn);
	PGconn *admin = admin_as(h_env()->superuser, h_env()->superpass);
	cr_assert_not_null(admin);
	cr_expect_gt(h_admin_stat(admin, "accept_out_of_descriptors"), 0, "SHOW STATS does not count it");
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* Connections that never authenticate have a cap of their own; logged-in ones do not count. */
Test(descriptors, max_login_connections_refuses_the_next_unauthenticated_client)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = "max_login_connections = 3\n";
	cr_assert(pgmux_start(&px, &o));
	PGconn *logged_in[4];
	for (int i = 0; i < 4; i++)
		logged_in[i] = h_app_session(&px, "disable", NULL);

	int silent[3];
	int before = h_file_count(px.logfile, ": new connection");
	for (int i = 0; i < 3; i++) {
		silent[i] = h_raw_connect(px.port, 2000);
		cr_assert_geq(silent[i], 0);
	}
	cr_assert(h_file_wait_count(px.logfile, ": new connection", before + 3, h_scaled_ms(5000)));
	char *ci = h_conninfo(px.port, h_env()->appuser, h_env()->apppass, "disable", NULL);
	PGconn *refused = PQconnectdb(ci);
	cr_expect_neq(PQstatus(refused), CONNECTION_OK, "a fourth client logging in was let in");
	cr_expect(strstr(PQerrorMessage(refused), "max_login_connections") != NULL, "%s", PQerrorMessage(refused));
	PQfinish(refused);

	for (int i = 0; i < 3; i++)
		close(silent[i]);
	PGconn *conn = NULL;
	long long deadline = h_now_ms() + h_scaled_ms(5000);
	while (h_now_ms() < deadline) {
		conn = PQconnectdb(ci);
		if (PQstatus(conn) == CONNECTION_OK)
			break;
		PQfinish(conn);
		conn = NULL;
		h_sleep_ms(100);
	}
	free(ci);
	cr_assert_not_null(conn, "no login once the silent connections left");
	PQfinish(conn);
	for (int i = 0; i < 4; i++)
		PQfinish(logged_in[i]);
	h_stop_expect_clean_exit(&px);
}

/* ---------------------------------------------------------------- client TLS */

TestSuite(client_tls_settings, .fini = fini_kill_leftovers, .timeout = 60);

/* openssl s_client through pgmux's SSLRequest; its exit status, output in c (free it). */
static int s_client(struct h_cmd *c, const char *version, const char *cipher)
{
	char connect_to[64];
	snprintf(connect_to, sizeof(connect_to), "127.0.0.1:%d", px.port);
	const char *argv[] = {"openssl", "s_client", "-starttls", "postgres", "-connect", connect_to, version,
			      cipher ? "-cipher" : NULL, cipher, NULL};
	return h_cmd_run(c, argv, NULL, h_scaled_ms(10000));
}

/* TLS 1.2 with RSA key exchange and CBC (AES128-SHA) is refused; an ECDHE AEAD suite is not. */
Test(client_tls_settings, a_legacy_cipher_is_refused_by_default)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	cr_assert(pgmux_start(&px, &o));
	struct h_cmd c;
	int status = s_client(&c, "-tls1_2", "AES128-SHA");
	cr_expect_neq(status, 0, "AES128-SHA was negotiated");
	cr_expect_null(strstr(c.out ? c.out : "", "Cipher is AES128-SHA"), "%s", c.out);
	h_cmd_free(&c);
	status = s_client(&c, "-tls1_2", "ECDHE-RSA-AES128-GCM-SHA256");
	cr_expect_eq(status, 0, "a forward-secret AEAD suite was refused");
	cr_expect_not_null(strstr(c.out ? c.out : "", "ECDHE-RSA-AES128-GCM-SHA256"), "%s", c.out);
	h_cmd_free(&c);
	status = s_client(&c, "-tls1_3", NULL);
	cr_expect_eq(status, 0, "TLS 1.3 was refused");
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

/* client_tls_protocols = TLSv1.3 turns TLS 1.2 away. */
Test(client_tls_settings, protocols_limit_the_versions)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = "client_tls_protocols = TLSv1.3\n";
	cr_assert(pgmux_start(&px, &o));
	struct h_cmd c;
	cr_expect_neq(s_client(&c, "-tls1_2", NULL), 0, "TLS 1.2 was accepted");
	h_cmd_free(&c);
	cr_expect_eq(s_client(&c, "-tls1_3", NULL), 0, "TLS 1.3 was refused");
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

/* A copy of the suite's certificate and key in the test directory, the key with mode key_mode. */
static void copy_cert_and_key(char *cert, size_t cert_size, char *key, size_t key_size, int key_mode)
{
	snprintf(cert, cert_size, "%s/server.crt", h_test_dir());
	snprintf(key, key_size, "%s/server.key", h_test_dir());
	char *text = h_read_file(h_env()->cert);
	h_write_file(cert, text, 0644);
	free(text);
	text = h_read_file(h_env()->key);
	h_write_file(key, text, key_mode);
	free(text);
	cr_assert_eq(chmod(key, (mode_t)key_mode), 0);
}

/* A private key that others can read stops the start, naming the file (PostgreSQL's rule). */
Test(client_tls_settings, a_key_readable_by_others_is_refused)
{
	char cert[600], key[600], extra[1400];
	copy_cert_and_key(cert, sizeof(cert), key, sizeof(key), 0644);
	snprintf(extra, sizeof(extra), "client_tls_cert_file = %s\nclient_tls_key_file = %s\n", cert, key);
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.tls = false;
	o.extra_pgmux = extra;
	pgmux_write_config(&px, &o);
	/* The harness leaves the cert and key lines empty when tls is off: drop them for ours. */
	char *config = h_read_file(px.config);
	char *cut = strstr(config, "client_tls_cert_file = \n");
	cr_assert_not_null(cut);
	memmove(cut, cut + strlen("client_tls_cert_file = \n"), strlen(cut + strlen("client_tls_cert_file = \n")) + 1);
	cut = strstr(config, "client_tls_key_file = \n");
	cr_assert_not_null(cut);
	memmove(cut, cut + strlen("client_tls_key_file = \n"), strlen(cut + strlen("client_tls_key_file = \n")) + 1);
	h_write_file(px.config, config, 0644);
	free(config);

	const char *argv[] = {h_env()->pgmux, px.config, NULL};
	struct h_cmd c;
	int status = h_cmd_run(&c, argv, NULL, h_scaled_ms(10000));
	cr_expect_eq(status, 1, "pgmux exited with %d", status);
	char want[700];
	snprintf(want, sizeof(want), "private key %s has group or world access (mode 0644)", key);
	cr_expect(h_file_count(px.logfile, want) == 1, "the log does not say: %s", want);
	h_cmd_free(&c);

	/* The suite's own key, mode 0600, is the one every other TLS test starts with. */
}

/* A cipher list OpenSSL cannot use stops the start with the option's name. */
Test(client_tls_settings, an_unusable_cipher_list_is_refused)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = "client_tls_ciphers = NO-SUCH-CIPHER\n";
	int status = pgmux_run_to_exit(&px, &o, h_scaled_ms(10000));
	cr_expect_eq(status, 1);
	cr_expect(h_file_count(px.logfile, "client_tls_ciphers: no usable cipher in NO-SUCH-CIPHER") == 1);
}
