/*
 * test_aws.c: issue 24, AWS integration, end to end. Secrets Manager and STS
 * are moto's (moto_server, started by each test on a free loopback port and
 * stopped by its PID; pgmux finds it through AWS_ENDPOINT_URL, as the AWS
 * SDKs would); secrets are written with boto3. The IAM token test needs no
 * moto: a fake server of the test's own, speaking TLS, records the password
 * pgmux sends, which must be byte for byte what botocore's
 * generate_db_auth_token() makes for the same credentials, host, port, user,
 * region and signing time (the one the token itself names).
 *
 * The Python used is $PGMUX_TEST_PYTHON (.ci/run finds the one that has
 * moto), else python3; a test is skipped, saying so, only when that Python
 * lacks moto, boto3 or botocore. No test lets pgmux look for instance
 * metadata or a credentials file: AWS_EC2_METADATA_DISABLED is set and the
 * shared files point nowhere.
 */
#include "harness.h"
#include "harness_aws.h"

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
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static struct pgmux px;

/* ---------------------------------------------------------------- Python, moto */

static struct h_moto moto;

static const char put_secret_py[] =
	"import boto3, json, sys\n"
	"name, user, password = sys.argv[1:4]\n"
	"sm = boto3.client('secretsmanager', region_name='us-east-1')\n"
	"value = json.dumps({'username': user, 'password': password, 'engine': 'postgres',\n"
	"                    'host': '127.0.0.1', 'port': 5432, 'dbname': 'postgres'})\n"
	"try:\n"
	"    sm.put_secret_value(SecretId=name, SecretString=value)\n"
	"except sm.exceptions.ResourceNotFoundException:\n"
	"    sm.create_secret(Name=name, SecretString=value)\n";

/* Create the secret, or put a new AWSCURRENT version of it. */
static void put_secret(const char *name, const char *user, const char *password)
{
	const char *args[] = { name, user, password, NULL };

	free(h_run_python(put_secret_py, args));
}

/* ---------------------------------------------------------------- pgmux */

static void fini_aws(void)
{
	h_teardown();
}

static void init_aws(void)
{
	h_aws_clean_environment();
}

/* pgmux reading secrets from moto (secrets_dir as given: NULL = the suite's, "" = none). */
static void options_for_secrets(struct pgmux_options *o, const char *secrets_dir, const char *names,
				const char *extra)
{
	static char pgmux_lines[1024];

	pgmux_options_default(o);
	o->secrets_dir = secrets_dir;
	snprintf(pgmux_lines, sizeof(pgmux_lines), "secrets_manager_secrets = %s\naws_region = us-east-1\n%s", names,
		 extra ? extra : "");
	o->extra_pgmux = pgmux_lines;
	o->extra_target = "health_check_interval = 200ms\n";
}

/* A login as user/password through pgmux: NULL when refused (the error in why). */
static PGconn *login(const char *user, const char *password, char *why, size_t why_len)
{
	char *ci = h_conninfo(px.port, user, password, "disable", NULL);
	PGconn *conn = PQconnectdb(ci);

	free(ci);
	if (PQstatus(conn) != CONNECTION_OK) {
		snprintf(why, why_len, "%s", PQerrorMessage(conn));
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/* user/password logs in and a statement runs (which needs a server connection). */
static bool login_works(const char *user, const char *password)
{
	char why[512];
	PGconn *conn = login(user, password, why, sizeof(why));

	if (conn == NULL)
		return false;
	char *v = h_query_value(conn, "select 41 + 1");
	bool ok = v && strcmp(v, "42") == 0;

	free(v);
	PQfinish(conn);
	return ok;
}

static void terminate_backends_of(const char *user)
{
	PGconn *super = h_connect_super_direct();
	char sql[256], count_sql[256];

	snprintf(sql, sizeof(sql),
		 "select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = '%s' and "
		 "coalesce(application_name, '') <> 'pgmux health check'",
		 user);
	free(h_value_ok(super, sql));
	snprintf(count_sql, sizeof(count_sql),
		 "select count(*) from pg_stat_activity where usename = '%s' and "
		 "coalesce(application_name, '') <> 'pgmux health check'",
		 user);
	cr_assert(h_poll_value(super, count_sql, "0", 10000), "backends of %s did not go", user);
	PQfinish(super);
}

/* ---------------------------------------------------------------- Secrets Manager */

TestSuite(aws, .init = init_aws, .fini = fini_aws, .timeout = 180);

/* With no secrets_dir at all, the app user's secret comes from Secrets Manager alone. */
Test(aws, secrets_are_read_from_secrets_manager_at_start)
{
	struct pgmux_options o;

	h_wait_no_app_backends();
	h_moto_start(&moto);
	h_aws_use_static_keys();
	put_secret("pgmux/app", h_env()->appuser, h_env()->apppass);
	options_for_secrets(&o, "", "pgmux/app", NULL);
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
	cr_expect(login_works(h_env()->appuser, h_env()->apppass), "app could not log in with its secret");
	cr_expect(h_file_count(px.logfile, "secrets manager: read \"pgmux/app\" (user \"app\"") == 1);
	cr_expect(h_file_count(px.logfile, "credentials from the environment (access key AKIDPGMUXTEST)") == 1);
	char why[512];
	PGconn *wrong = login(h_env()->appuser, "not-the-password", why, sizeof(why));
	cr_expect_null(wrong, "a wrong password was accepted");
	if (wrong)
		PQfinish(wrong);
	h_stop_expect_clean_exit(&px);
	h_moto_stop(&moto);
}

/* A secret that cannot be read at start-up stops pgmux, and the error names it. */
Test(aws, a_secret_missing_at_start_is_a_startup_error_naming_it)
{
	struct pgmux_options o;

	h_moto_start(&moto);
	h_aws_use_static_keys();
	put_secret("pgmux/app", h_env()->appuser, h_env()->apppass);
	options_for_secrets(&o, "", "pgmux/app, pgmux/no-such-secret", NULL);
	int st = pgmux_run_to_exit(&px, &o, 30000);
	cr_expect_eq(st, 1, "pgmux exited with %d", st);
	cr_expect(h_file_count(px.logfile, "cannot read \"pgmux/no-such-secret\"") == 1,
		  "the error does not name the secret");
	cr_expect(h_file_count(px.logfile, "ResourceNotFoundException") == 1);
	h_moto_stop(&moto);
}

/* Without any credentials, pgmux says so at start-up instead of failing later. */
Test(aws, no_credentials_is_a_startup_error)
{
	struct pgmux_options o;

	char closed[64];

	snprintf(closed, sizeof(closed), "http://127.0.0.1:%d", h_free_port()); /* never reached */
	setenv("AWS_ENDPOINT_URL", closed, 1);
	options_for_secrets(&o, "", "pgmux/app", NULL);
	int st = pgmux_run_to_exit(&px, &o, 30000);
	cr_expect_eq(st, 1, "pgmux exited with %d", st);
	cr_expect(h_file_count(px.logfile, "no AWS credentials found") == 1);
}

#define ROTATED_ROLE "aws_rotated"

static void drop_rotated_role(void)
{
	PGconn *super = h_connect_super_direct();

	h_exec_ok(super, "drop role if exists " ROTATED_ROLE);
	PQfinish(super);
}

static const char *rotated_new_password = "rotated-new-pw";

static bool new_password_works(void *arg)
{
	return login_works(ROTATED_ROLE, rotated_new_password);
}

/*
 * A rotation as Secrets Manager's rotation functions do it: the role's
 * password changes on the server, then the secret gets a new AWSCURRENT
 * version. pgmux must follow within its refresh interval, with no SIGHUP:
 * new logins (client side) and new server connections use the new password,
 * and the old one is refused.
 */
Test(aws, a_rotation_is_followed_without_a_reload)
{
	struct pgmux_options o;
	PGconn *super;

	h_moto_start(&moto);
	h_aws_use_static_keys();
	drop_rotated_role();
	super = h_connect_super_direct();
	h_exec_ok(super, "create role " ROTATED_ROLE " login password 'rotated-old-pw'");
	put_secret("pgmux/rotated", ROTATED_ROLE, "rotated-old-pw");
	/* The suite's secrets_dir (app, for health checks) and the rotated role's secret from Secrets Manager. */
	options_for_secrets(&o, NULL, "pgmux/rotated", "secrets_refresh_interval = 1s\n");
	o.pool_mode = "transaction";
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
	cr_assert(login_works(ROTATED_ROLE, "rotated-old-pw"), "the first password did not work");

	h_exec_ok(super, "alter role " ROTATED_ROLE " password 'rotated-new-pw'");
	put_secret("pgmux/rotated", ROTATED_ROLE, rotated_new_password);
	long long rotated_at = h_now_ms();
	/* Server connections opened with the old password would go on working: make pgmux open new ones. */
	terminate_backends_of(ROTATED_ROLE);

	cr_assert(h_poll_until(new_password_works, NULL, 15000), "the new password never worked through pgmux");
	long long followed_ms = h_now_ms() - rotated_at;
	/* One interval (1 s) plus a read; generous for a loaded machine. */
	cr_expect_lt(followed_ms, 10000, "the rotation took %lld ms to be followed", followed_ms);
	char why[512];
	PGconn *old = login(ROTATED_ROLE, "rotated-old-pw", why, sizeof(why));
	cr_expect_null(old, "the old password still logs in after the rotation");
	if (old)
		PQfinish(old);
	else
		cr_expect(strstr(why, "password authentication failed") != NULL, "refused with: %s", why);
	cr_expect(h_file_count(px.logfile, "secrets manager: \"pgmux/rotated\" changed") == 1);
	cr_expect(h_file_count(px.logfile, "SIGHUP") == 0);
	cr_expect(h_file_count(px.logfile, "reloaded") == 0);

	h_stop_expect_clean_exit(&px);
	PQfinish(super);
	drop_rotated_role();
	h_moto_stop(&moto);
}

/*
 * Secrets Manager becomes unreachable: refreshes fail, are logged and
 * counted, and the last good password keeps working for new client logins
 * and new server connections.
 */
Test(aws, an_unreachable_endpoint_keeps_the_last_good_value)
{
	struct pgmux_options o;
	int metrics_port = h_free_port();
	char extra[128];

	h_wait_no_app_backends();
	h_moto_start(&moto);
	h_aws_use_static_keys();
	put_secret("pgmux/app", h_env()->appuser, h_env()->apppass);
	snprintf(extra, sizeof(extra), "secrets_refresh_interval = 1s\nmetrics_port = %d\n", metrics_port);
	options_for_secrets(&o, "", "pgmux/app", extra);
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
	cr_assert(login_works(h_env()->appuser, h_env()->apppass));

	h_moto_stop(&moto);
	cr_assert(h_file_wait_contains(px.logfile, "reading \"pgmux/app\" failed, keeping its last good value",
				       15000),
		  "no failed refresh was logged");
	terminate_backends_of(h_env()->appuser);
	cr_expect(login_works(h_env()->appuser, h_env()->apppass),
		  "the last good password stopped working once Secrets Manager was gone");
	char *text = h_scrape(metrics_port);
	cr_expect_geq(h_sample(text, "pgmux_secrets_manager_read_failures_total"), 1, "metrics:\n%s", text);
	cr_expect_geq(h_sample(text, "pgmux_secrets_manager_reads_total"), 1);
	cr_expect_eq(h_sample(text, "pgmux_secrets_manager_secrets"), 1);
	free(text);
	h_stop_expect_clean_exit(&px);
}

/*
 * EKS-style credentials: a web identity token file and a role ARN, traded
 * for temporary credentials through STS AssumeRoleWithWebIdentity (moto's).
 */
Test(aws, web_identity_credentials_come_from_sts)
{
	struct pgmux_options o;
	char token_file[600];

	h_wait_no_app_backends();
	h_moto_start(&moto);
	put_secret("pgmux/app", h_env()->appuser, h_env()->apppass);
	snprintf(token_file, sizeof(token_file), "%s/web-identity-token", h_test_dir());
	h_write_file(token_file, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6cGdtdXgifQ.c2lnbmF0dXJl\n",
		     0600);
	setenv("AWS_WEB_IDENTITY_TOKEN_FILE", token_file, 1);
	setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/pgmux-test", 1);
	setenv("AWS_ROLE_SESSION_NAME", "pgmux-integration-test", 1);
	options_for_secrets(&o, "", "pgmux/app", NULL);
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
	/* moto's STS hands out temporary keys (ASIA...) valid for an hour. */
	cr_expect(h_file_count(px.logfile, "aws: using credentials from the web identity (access key ASIA") == 1,
		  "the credentials did not come from STS");
	cr_expect(h_file_count(px.logfile, "valid until") == 1);
	cr_expect(login_works(h_env()->appuser, h_env()->apppass));
	h_stop_expect_clean_exit(&px);
	h_moto_stop(&moto);
}

/* A per-service endpoint wins over AWS_ENDPOINT_URL, as in the SDKs. */
Test(aws, the_per_service_endpoint_wins)
{
	struct pgmux_options o;

	h_wait_no_app_backends();
	h_moto_start(&moto);
	h_aws_use_static_keys();
	put_secret("pgmux/app", h_env()->appuser, h_env()->apppass);
	char closed[64];

	snprintf(closed, sizeof(closed), "http://127.0.0.1:%d", h_free_port()); /* nothing listens there */
	setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.url, 1);
	setenv("AWS_ENDPOINT_URL", closed, 1);
	options_for_secrets(&o, "", "pgmux/app", NULL);
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
	cr_expect(login_works(h_env()->appuser, h_env()->apppass));
	h_stop_expect_clean_exit(&px);
	h_moto_stop(&moto);
}

/* ---------------------------------------------------------------- IAM authentication */

/*
 * A server of the test's own, with TLS (the suite's certificate): it answers
 * an SSLRequest with 'S', asks for a cleartext password, as RDS does for IAM
 * users, records what it gets and refuses the login.
 */
struct token_server {
	int listen_fd;
	int port;
	pthread_t thread;
	volatile int stop;
	pthread_mutex_t lock;
	SSL_CTX *ctx;
	int n_tokens;
	int plain_logins; /* logins that did not ask for TLS first */
	char users[4][64];
	char tokens[4][4096];
};

static struct token_server ts;

static bool tls_read(SSL *ssl, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		int n = SSL_read(ssl, (char *)buf + got, (int)(len - got));
		if (n <= 0)
			return false;
		got += (size_t)n;
	}
	return true;
}

static void token_server_serve(int fd)
{
	uint8_t head[8];
	char body[8192];
	struct timeval limit = { 3, 0 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
	if (h_raw_read(fd, head, 8, 3000) != 8)
		return;
	if (h_get_u32(head + 4) != 80877103) { /* not an SSLRequest */
		pthread_mutex_lock(&ts.lock);
		ts.plain_logins++;
		pthread_mutex_unlock(&ts.lock);
		return;
	}
	if (!h_raw_send(fd, "S", 1))
		return;
	SSL *ssl = SSL_new(ts.ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_accept(ssl) != 1 || !tls_read(ssl, head, 8))
		goto out;
	uint32_t len = h_get_u32(head);
	if (len < 8 || len - 8 >= sizeof(body) || !tls_read(ssl, body, len - 8))
		goto out;
	body[len - 8] = '\0';
	char user[64] = "";
	for (size_t at = 0; at < len - 8 && body[at];) {
		const char *name = body + at, *value = name + strlen(name) + 1;
		if ((size_t)(value - body) >= len - 8)
			break;
		if (strcmp(name, "user") == 0)
			snprintf(user, sizeof(user), "%s", value);
		at = (size_t)(value - body) + strlen(value) + 1;
	}
	uint8_t ask[9] = { 'R' };
	h_put_u32(ask + 1, 8);
	h_put_u32(ask + 5, 3); /* AuthenticationCleartextPassword */
	uint8_t type;
	if (SSL_write(ssl, ask, sizeof(ask)) != (int)sizeof(ask) || !tls_read(ssl, &type, 1) || type != 'p' ||
	    !tls_read(ssl, head, 4))
		goto out;
	len = h_get_u32(head);
	if (len < 5 || len - 4 >= sizeof(body) || !tls_read(ssl, body, len - 4))
		goto out;
	body[len - 4] = '\0';
	pthread_mutex_lock(&ts.lock);
	if (ts.n_tokens < 4) {
		snprintf(ts.users[ts.n_tokens], sizeof(ts.users[0]), "%s", user);
		snprintf(ts.tokens[ts.n_tokens], sizeof(ts.tokens[0]), "%s", body);
	}
	ts.n_tokens++;
	pthread_mutex_unlock(&ts.lock);
	static const char fatal[] = "SFATAL\0C28000\0Mthe test's server records the token and refuses the login\0";
	uint8_t reply[128] = { 'E' };
	h_put_u32(reply + 1, (uint32_t)(4 + sizeof(fatal)));
	memcpy(reply + 5, fatal, sizeof(fatal));
	SSL_write(ssl, reply, (int)(5 + sizeof(fatal)));
	SSL_shutdown(ssl);
out:
	SSL_free(ssl);
	ERR_clear_error();
}

static void *token_server_main(void *arg)
{
	(void)arg;
	while (!ts.stop) {
		struct pollfd p = { .fd = ts.listen_fd, .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		int fd = accept(ts.listen_fd, NULL, NULL);
		if (fd < 0)
			continue;
		token_server_serve(fd);
		close(fd);
	}
	return NULL;
}

static void token_server_start(void)
{
	/* libpq closes as soon as it reads the FATAL: writing close_notify after that must not kill the test. */
	signal(SIGPIPE, SIG_IGN);
	memset(&ts, 0, sizeof(ts));
	pthread_mutex_init(&ts.lock, NULL);
	ts.ctx = SSL_CTX_new(TLS_server_method());
	cr_assert_not_null(ts.ctx);
	cr_assert_eq(SSL_CTX_use_certificate_chain_file(ts.ctx, h_env()->cert), 1);
	cr_assert_eq(SSL_CTX_use_PrivateKey_file(ts.ctx, h_env()->key, SSL_FILETYPE_PEM), 1);
	ts.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(ts.listen_fd, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(sa);
	cr_assert_eq(bind(ts.listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(ts.listen_fd, 16), 0);
	cr_assert_eq(getsockname(ts.listen_fd, (struct sockaddr *)&sa, &sl), 0);
	ts.port = ntohs(sa.sin_port);
	cr_assert_eq(pthread_create(&ts.thread, NULL, token_server_main, NULL), 0);
}

static void token_server_stop(void)
{
	if (ts.listen_fd <= 0)
		return;
	ts.stop = 1;
	pthread_join(ts.thread, NULL);
	close(ts.listen_fd);
	ts.listen_fd = 0;
	SSL_CTX_free(ts.ctx);
}

static bool two_tokens(void *arg)
{
	pthread_mutex_lock(&ts.lock);
	int n = ts.n_tokens;
	pthread_mutex_unlock(&ts.lock);
	return n >= 2;
}

static const char botocore_token_py[] =
	"import datetime, sys\n"
	"from unittest import mock\n"
	"import botocore.auth, botocore.session\n"
	"host, port, user, region, amz_date = sys.argv[1:6]\n"
	"when = datetime.datetime.strptime(amz_date, '%Y%m%dT%H%M%SZ')\n"
	"rds = botocore.session.get_session().create_client('rds', region_name=region)\n"
	"with mock.patch.object(botocore.auth, 'get_current_datetime', lambda *a, **k: when):\n"
	"    sys.stdout.write(rds.generate_db_auth_token(host, int(port), user, region))\n";

#define TEST_SESSION_TOKEN                                                                                         \
	"IQoJb3JpZ2luX2VjEPT//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+pgmux/test+session/token=="

static void fini_token_server(void)
{
	h_teardown();
	token_server_stop();
}

TestSuite(aws_iam, .init = init_aws, .fini = fini_token_server, .timeout = 120);

/*
 * The health checks log in to the fake server (pgmux's first server
 * connections); the password they send is compared, byte for byte, with the
 * token botocore makes for the same inputs at the signing time the token
 * names (X-Amz-Date), so no test hook in pgmux fixes its clock.
 */
Test(aws_iam, the_token_is_botocores_and_travels_over_tls)
{
	struct pgmux_options o;
	char hosts[64], port[16];

	h_require_python_modules("botocore");
	setenv("AWS_ACCESS_KEY_ID", "ASIAPGMUXIAMTEST", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "pgmux/iam+test=secret", 1);
	setenv("AWS_SESSION_TOKEN", TEST_SESSION_TOKEN, 1);
	token_server_start();
	pgmux_options_default(&o);
	snprintf(hosts, sizeof(hosts), "127.0.0.1:%d", ts.port);
	o.hosts = hosts;
	o.server_tls = "require";
	o.extra_pgmux = "aws_region = eu-west-1\n";
	o.extra_target = "server_auth = iam\nhealth_check_interval = 200ms\n";
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
	cr_assert(h_poll_until(two_tokens, NULL, 15000), "the fake server did not get two logins with a password");

	pthread_mutex_lock(&ts.lock);
	char token[4096], second[4096], user[64];
	snprintf(token, sizeof(token), "%s", ts.tokens[0]);
	snprintf(second, sizeof(second), "%s", ts.tokens[1]);
	snprintf(user, sizeof(user), "%s", ts.users[0]);
	int plain = ts.plain_logins;
	pthread_mutex_unlock(&ts.lock);

	cr_expect_eq(plain, 0, "a login came without TLS");
	cr_expect_str_eq(user, h_env()->appuser);
	const char *date = strstr(token, "X-Amz-Date=");
	cr_assert_not_null(date, "not an IAM token: %s", token);
	char amz_date[17];
	snprintf(amz_date, sizeof(amz_date), "%.16s", date + strlen("X-Amz-Date="));
	snprintf(port, sizeof(port), "%d", ts.port);
	const char *args[] = { "127.0.0.1", port, user, "eu-west-1", amz_date, NULL };
	char *expected = h_run_python(botocore_token_py, args);
	cr_expect_str_eq(token, expected, "pgmux's token differs from botocore's:\n pgmux: %s\n boto: %s", token,
			 expected);
	/* The second login, moments later, reuses the token (it is good for 15 minutes, reused for 10). */
	cr_expect_str_eq(second, token, "a second token was made at once");
	free(expected);
	h_stop_expect_clean_exit(&px);
}

/* The token is a clear-text password: pgmux refuses to start when TLS to the servers may be skipped. */
Test(aws_iam, iam_without_server_tls_is_a_startup_error)
{
	struct pgmux_options o;

	pgmux_options_default(&o);
	o.server_tls = "prefer";
	o.extra_pgmux = "aws_region = eu-west-1\n";
	o.extra_target = "server_auth = iam\n";
	int st = pgmux_run_to_exit(&px, &o, 30000);
	cr_expect_eq(st, 1, "pgmux exited with %d", st);
	char *err = h_read_file(px.stderr_file);
	cr_expect(strstr(err, "[target] server_auth: iam needs server_tls = require") != NULL, "stderr: %s", err);
	free(err);
}
