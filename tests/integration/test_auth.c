/*
 * test_auth.c: how a client proves who it is, and the TLS it does it over:
 * SCRAM-SHA-256 over TLS (with channel binding), MD5, trust, require_tls,
 * wrong passwords and unknown users, and the client TLS settings (ciphers,
 * protocol versions, the private key's mode). What comes before (the
 * startup packet) is test_startup.c's; whom pgmux gives the server's
 * passwords to is test_hardening.c's.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct pgmux px;

/* TLS offered and required, SCRAM. */
static void init_tls_required(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.require_tls = true;
	pgmux_start_ok(&px, &o);
}

static void init_md5(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.tls = false;
	o.client_auth = "md5";
	pgmux_start_ok(&px, &o);
}

static void init_trust(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.tls = false;
	o.client_auth = "trust";
	pgmux_start_ok(&px, &o);
}

/*
 * psql -A -t -v ON_ERROR_STOP=1 -c SQL as user through pgmux, with the
 * password (if any) in PGPASSWORD and no password file. Returns the exit
 * status.
 */
static int run_psql(struct h_cmd *c, const char *user, const char *password, const char *sslmode, const char *sql)
{
	char *ci = h_conninfo(px.port, user, NULL, sslmode, NULL);
	const char *args[] = {"-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, NULL};
	int st = h_psql_run(c, ci, password, args);

	free(ci);
	return st;
}

/* ================================================================ SCRAM over TLS */

TestSuite(tls_scram, .init = init_tls_required, .fini = h_teardown, .timeout = 120);

Test(tls_scram, psql_select_1)
{
	struct h_cmd c;
	int st = run_psql(&c, "app", h_env()->apppass, "require", "select 1");
	if (st != 0)
		h_cmd_dump(&c, "psql");
	cr_assert_eq(st, 0, "psql exited with %d: %s", st, c.err);
	cr_assert_str_eq(c.out, "1\n");
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

Test(tls_scram, libpq_ssl_in_use_and_backend_identity)
{
	PGconn *conn = h_app_session(&px, "require", NULL);
	cr_assert_eq(PQsslInUse(conn), 1, "PQsslInUse is %d through pgmux with sslmode=require",
		     PQsslInUse(conn));
	PGresult *r = PQexec(conn, "select current_user, inet_server_port()");
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "app");
	cr_assert_eq(atoi(PQgetvalue(r, 0, 1)), h_env()->pgport,
		     "inet_server_port() is %s, expected PostgreSQL's port %d", PQgetvalue(r, 0, 1),
		     h_env()->pgport);
	PQclear(r);
	PQfinish(conn);

	/* pgmux presents the configured certificate: verify-full against the test CA works. */
	char extra[600];
	snprintf(extra, sizeof(extra), "sslrootcert=%s", h_env()->ca);
	conn = h_app_session(&px, "verify-full", extra);
	cr_assert_eq(PQsslInUse(conn), 1);
	h_expect_value(conn, "select 1", "1");
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

/* Over TLS pgmux offers SCRAM-SHA-256-PLUS: a client that insists on channel binding gets it. */
Test(tls_scram, channel_binding_required_by_the_client)
{
	PGconn *conn = h_app_session(&px, "require", "channel_binding=require");

	cr_assert_eq(PQsslInUse(conn), 1);
	h_expect_value(conn, "select 'bound'", "bound");
	PQfinish(conn);

	/* A wrong password with channel binding still fails as a wrong password. */
	char *ci = h_conninfo(px.port, "app", "not-the-password", "require", "channel_binding=require");
	conn = PQconnectdb(ci);
	free(ci);
	cr_assert_neq(PQstatus(conn), CONNECTION_OK, "a wrong password logged in with channel binding");
	cr_assert(strstr(PQerrorMessage(conn), "password authentication failed for user \"app\"") != NULL,
		  "unexpected message: %s", PQerrorMessage(conn));
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

Test(tls_scram, wrong_password_is_refused)
{
	struct h_cmd c;
	int st = run_psql(&c, "app", "not-the-password", "require", "select 1");
	cr_assert_neq(st, 0, "psql with a wrong password succeeded: %s", c.out);
	cr_assert(st > 0 && st < 128, "psql died from a signal or timed out (%d)", st);
	cr_assert(strstr(c.err, "password authentication failed for user \"app\"") != NULL,
		  "psql's stderr lacks the 28P01 message: %s", c.err);
	h_cmd_free(&c);

	/* A user without a secret gets no hint that it does not exist. */
	char *ci = h_conninfo(px.port, "nosuchuser", "whatever", "require", NULL);
	PGconn *conn = PQconnectdb(ci);
	free(ci);
	cr_assert_neq(PQstatus(conn), CONNECTION_OK, "an unknown user logged in");
	cr_expect(strstr(PQerrorMessage(conn), "password authentication failed for user \"nosuchuser\"") != NULL,
		  "unexpected message for an unknown user: %s", PQerrorMessage(conn));
	PQfinish(conn);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

Test(tls_scram, plaintext_refused_when_tls_required)
{
	struct h_cmd c;
	int st = run_psql(&c, "app", h_env()->apppass, "disable", "select 1");
	cr_assert_neq(st, 0, "psql without TLS got in although require_tls=true: %s", c.out);
	cr_assert(st > 0 && st < 128, "psql died from a signal or timed out (%d)", st);
	cr_assert(strstr(c.err, "requires TLS connections") != NULL,
		  "psql's stderr does not say that TLS is required: %s", c.err);
	h_cmd_free(&c);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ md5, trust */

/* Send a StartupMessage for app and return the first message's auth code ('R'), or -1. */
static int first_auth_request(const char *user, char **body_out, size_t *len_out)
{
	int fd = h_raw_connect(px.port, 2000);
	cr_assert(fd >= 0, "cannot connect to pgmux");
	uint8_t buf[256];
	const char *params[] = {"user", user, "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len));
	char type;
	char *body;
	size_t blen;
	enum h_msg_result r = h_raw_read_message(fd, &type, &body, &blen, h_scaled_ms(3000));
	close(fd);
	cr_assert_eq(r, H_MSG_OK, "no reply to a StartupMessage (%d)", r);
	cr_assert_eq(type, 'R', "expected an authentication request, got '%c'", type);
	cr_assert(blen >= 4);
	int code = (int)h_get_u32(body);
	if (body_out) {
		*body_out = body;
		*len_out = blen;
	} else {
		free(body);
	}
	return code;
}

TestSuite(md5, .init = init_md5, .fini = h_teardown, .timeout = 120);

Test(md5, right_password_logs_in_wrong_one_does_not)
{
	char *body;
	size_t blen;
	int code = first_auth_request("app", &body, &blen);
	cr_assert_eq(code, 5, "client_auth=md5 asked for authentication type %d, not 5 (MD5)", code);
	cr_assert_eq(blen, 8u, "AuthenticationMD5Password must carry a 4-byte salt");
	free(body);

	struct h_cmd c;
	int st = run_psql(&c, "app", h_env()->apppass, "disable", "select current_user");
	if (st != 0)
		h_cmd_dump(&c, "psql");
	cr_assert_eq(st, 0);
	cr_assert_str_eq(c.out, "app\n");
	h_cmd_free(&c);

	st = run_psql(&c, "app", "wrong-password", "disable", "select 1");
	cr_assert(st > 0 && st < 128, "psql with a wrong md5 password: status %d", st);
	cr_assert(strstr(c.err, "password authentication failed for user \"app\"") != NULL, "%s", c.err);
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

TestSuite(trust, .init = init_trust, .fini = h_teardown, .timeout = 120);

Test(trust, logs_in_without_password)
{
	int code = first_auth_request("app", NULL, NULL);
	cr_assert_eq(code, 0, "client_auth=trust asked for authentication type %d, not 0 (OK)", code);

	struct h_cmd c;
	int st = run_psql(&c, "app", NULL, "disable", "select current_user");
	if (st != 0)
		h_cmd_dump(&c, "psql");
	cr_assert_eq(st, 0);
	cr_assert_str_eq(c.out, "app\n");
	h_cmd_free(&c);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ client TLS settings */

TestSuite(tls_settings, .fini = h_teardown, .timeout = 60);

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
Test(tls_settings, a_legacy_cipher_is_refused_by_default)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	pgmux_start_ok(&px, &o);
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
Test(tls_settings, protocols_limit_the_versions)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = "client_tls_protocols = TLSv1.3\n";
	pgmux_start_ok(&px, &o);
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
Test(tls_settings, a_key_readable_by_others_is_refused)
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
Test(tls_settings, an_unusable_cipher_list_is_refused)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = "client_tls_ciphers = NO-SUCH-CIPHER\n";
	int status = pgmux_run_to_exit(&px, &o, h_scaled_ms(10000));
	cr_expect_eq(status, 1);
	cr_expect(h_file_count(px.logfile, "client_tls_ciphers: no usable cipher in NO-SUCH-CIPHER") == 1);
}
