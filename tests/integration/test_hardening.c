/*
 * test_hardening.c: the edges a hostile peer pushes on (issue 17): whom
 * pgmux gives server passwords to (a fake server of the test's own asks for
 * them in cleartext), what a client can write into the log, and running out
 * of file descriptors or of login slots. The other points of issue 17 sit
 * with their features: who may read /metrics in test_metrics.c, the client
 * TLS settings in test_auth.c, the look-only admin role in test_admin.c.
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
	/* The fake server cannot say whether it caught up with anything. */
	o.extra_target = "health_check_interval = 200ms\ncutover_require_catchup = false\n";
	pgmux_start_ok(&px, &o);
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
	PGconn *admin = h_admin_connect(&px, h_env()->superuser, h_env()->superpass);
	cr_assert_not_null(admin);
	char sql[128];
	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", fake.port);
	cr_assert_str_eq(h_command_outcome(admin, sql), "CUTOVER");
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
	PGconn *admin = h_admin_connect(&px, h_env()->superuser, h_env()->superpass);
	cr_assert_not_null(admin);
	char sql[128];
	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", fake.port);
	cr_assert_str_eq(h_command_outcome(admin, sql), "CUTOVER");
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
	pgmux_start_ok(&px, &o);
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
	pgmux_start_ok(&px, &o);
	cr_expect(h_file_count(px.logfile, "WARNING: server 192.0.2.10:5432 is not on loopback and server_tls = require "
					   "does not verify it") == 1,
		  "no warning for the remote host");
	cr_expect(h_file_count(px.logfile, "WARNING: server 127.0.0.1:") == 0, "a warning for a loopback host");
	h_stop_expect_clean_exit(&px);
}

/* ---------------------------------------------------------------- log injection */

TestSuite(log_injection, .fini = h_teardown, .timeout = 60);

/*
 * A user name with a newline and a line of pgmux's own log format after it:
 * the log must keep it on the line it came in on, escaped, at every level.
 */
Test(log_injection, a_newline_in_the_user_name_cannot_forge_a_log_line)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	pgmux_start_ok(&px, &o);

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

/* ---------------------------------------------------------------- running out of descriptors */

TestSuite(descriptors, .fini = h_teardown, .timeout = 90);

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
	pgmux_start_ok(&px, &o);
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
	long long cpu_before = h_proc_cpu_ms(px.pid), log_before = file_size(px.logfile);
	long long t0 = h_now_ms();
	h_sleep_ms(3000);
	long long cpu_ms = h_proc_cpu_ms(px.pid) - cpu_before, log_growth = file_size(px.logfile) - log_before;
	long long elapsed_ms = h_now_ms() - t0;
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
	PGconn *admin = h_admin_connect(&px, h_env()->superuser, h_env()->superpass);
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
	pgmux_start_ok(&px, &o);
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
