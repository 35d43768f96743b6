/*
 * test_login.c: a client's login (login.c) on one end of a socketpair: what
 * each first packet leads to (a bad length, an encryption or cancel request,
 * a StartupMessage and its checks), the password exchange (trust, MD5, the
 * framing of password messages) and the "options" startup parameter.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "config.h"
#include "io.h"
#include "login.h"
#include "params.h"
#include "proto.h"
#include "secrets.h"
#include "session.h"

struct fixture {
	int peer; /* the client's end */
	struct io io;
	struct login login;
	struct startup_packet startup;
	struct config cfg;
	struct login_result r;
};

static struct fixture f;

static void setup(void)
{
	int fds[2];

	memset(&f, 0, sizeof(f));
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
	io_init(&f.io, fds[0]);
	f.peer = fds[1];
	f.cfg.max_packet_size = 1 << 20;
	f.cfg.client_auth = CLIENT_AUTH_TRUST;
}

static void teardown(void)
{
	login_free(&f.login);
	proto_startup_free(&f.startup);
	io_close(&f.io, true);
	close(f.peer);
}

TestSuite(login_startup, .init = setup, .fini = teardown);
TestSuite(login_auth, .init = setup, .fini = teardown);

/* Queue a startup-style packet (length, code, body) as the client's input. */
static void client_sends_packet(uint32_t code, const void *body, size_t len)
{
	uint8_t head[8];

	put_u32(head, (uint32_t)(8 + len));
	put_u32(head + 4, code);
	iobuf_append(&f.io.in, head, sizeof(head));
	iobuf_append(&f.io.in, body, len);
}

/* A StartupMessage of the given version with NUL-separated "name\0value\0" pairs (then the final NUL). */
static void client_sends_startup(uint32_t version, const char *pairs, size_t pairs_len)
{
	uint8_t body[512];

	cr_assert(pairs_len + 1 <= sizeof(body));
	memcpy(body, pairs, pairs_len);
	body[pairs_len] = '\0';
	client_sends_packet(version, body, pairs_len + 1);
}

#define PAIRS(s) s, sizeof(s) - 1

static enum login_outcome process_startup(void)
{
	return login_process_startup(&f.login, &f.io, &f.cfg, &f.startup, &f.r);
}

/* What the client received so far. */
static size_t client_reads(uint8_t *out, size_t cap)
{
	ssize_t n = recv(f.peer, out, cap, MSG_DONTWAIT);

	return n > 0 ? (size_t)n : 0;
}

Test(login_startup, partial_packets_wait)
{
	static const uint8_t two[] = {0, 0};

	cr_assert_eq(process_startup(), LOGIN_NEED_MORE);
	iobuf_append(&f.io.in, two, sizeof(two));
	cr_assert_eq(process_startup(), LOGIN_NEED_MORE);
	iobuf_reset(&f.io.in);
	client_sends_startup(PROTO_VERSION(3, 0), PAIRS("user\0app\0"));
	f.io.in.end--; /* the last byte is still on its way */
	cr_assert_eq(process_startup(), LOGIN_NEED_MORE);
	cr_assert_not(f.r.startup_parsed);
}

Test(login_startup, bad_lengths_close_without_a_word)
{
	uint8_t packet[8];
	uint8_t got[16];

	put_u32(packet, 7);
	put_u32(packet + 4, PROTO_VERSION(3, 0));
	iobuf_append(&f.io.in, packet, sizeof(packet));
	cr_assert_eq(process_startup(), LOGIN_CLOSE);
	cr_assert_str_eq(f.r.message, "invalid length of startup packet");
	iobuf_reset(&f.io.in);
	put_u32(packet, 10001 + 4);
	iobuf_append(&f.io.in, packet, 4);
	cr_assert_eq(process_startup(), LOGIN_CLOSE, "judged on the length word alone");
	iobuf_reset(&f.io.in);
	f.cfg.max_packet_size = 100;
	put_u32(packet, 101);
	iobuf_append(&f.io.in, packet, 4);
	cr_assert_eq(process_startup(), LOGIN_CLOSE);
	cr_assert_eq(client_reads(got, sizeof(got)), 0);
}

Test(login_startup, an_ssl_request_without_tls_is_answered_n_once)
{
	uint8_t got[16];

	client_sends_packet(PROTO_SSL_REQUEST, NULL, 0);
	cr_assert_eq(process_startup(), LOGIN_NEXT);
	cr_assert_eq(client_reads(got, sizeof(got)), 1);
	cr_assert_eq(got[0], 'N');
	cr_assert(f.login.ssl_asked);
	/* A second one is a protocol version like any other: 1234.5679, refused. */
	client_sends_packet(PROTO_SSL_REQUEST, NULL, 0);
	cr_assert_eq(process_startup(), LOGIN_FATAL);
	cr_assert_str_eq(f.r.sqlstate, SQLSTATE_FEATURE_NOT_SUPPORTED);
	cr_assert_str_eq(f.r.message, "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0");
}

Test(login_startup, bytes_after_an_encryption_request_are_refused)
{
	uint8_t got[16];

	client_sends_packet(PROTO_GSSENC_REQUEST, NULL, 0);
	iobuf_append(&f.io.in, "Q", 1);
	cr_assert_eq(process_startup(), LOGIN_FATAL);
	cr_assert_str_eq(f.r.sqlstate, SQLSTATE_PROTOCOL_VIOLATION);
	cr_assert_str_eq(f.r.message, "received unencrypted data after SSL request");
	cr_assert_eq(client_reads(got, sizeof(got)), 1);
	cr_assert_eq(got[0], 'N');
	cr_assert(f.login.gss_asked);
}

Test(login_startup, a_cancel_request_carries_its_key)
{
	uint8_t body[8];

	put_u32(body, 4242);
	put_u32(body + 4, 0xdeadbeef);
	client_sends_packet(PROTO_CANCEL_REQUEST, body, sizeof(body));
	cr_assert_eq(process_startup(), LOGIN_CANCEL);
	cr_assert(f.r.cancel_valid);
	cr_assert_eq(f.r.cancel_pid, 4242);
	cr_assert_eq(f.r.cancel_key, 0xdeadbeef);
	iobuf_reset(&f.io.in);
	client_sends_packet(PROTO_CANCEL_REQUEST, body, 4);
	cr_assert_eq(process_startup(), LOGIN_CANCEL);
	cr_assert_not(f.r.cancel_valid);
}

Test(login_startup, a_startup_message_is_taken_and_what_follows_stays)
{
	client_sends_startup(PROTO_VERSION(3, 0), PAIRS("user\0app\0database\0shop\0TimeZone\0UTC\0"));
	iobuf_append(&f.io.in, "Q", 1);
	cr_assert_eq(process_startup(), LOGIN_STARTUP_DONE);
	cr_assert(f.r.startup_parsed);
	cr_assert_eq(f.r.version, PROTO_VERSION(3, 0));
	cr_assert_str_eq(f.startup.user, "app");
	cr_assert_str_eq(f.startup.database, "shop");
	cr_assert_eq(iobuf_len(&f.io.in), 1, "the client's next message stays buffered");
	cr_assert_eq(iobuf_len(&f.io.out), 0, "no NegotiateProtocolVersion for 3.0");
}

Test(login_startup, a_newer_minor_gets_negotiate_protocol_version)
{
	client_sends_startup(PROTO_VERSION(3, 0) + 2, PAIRS("user\0app\0_pq_.x\0y\0"));
	cr_assert_eq(process_startup(), LOGIN_STARTUP_DONE);
	cr_assert_gt(iobuf_len(&f.io.out), 0);
	cr_assert_eq(iobuf_head(&f.io.out)[0], 'v');
}

Test(login_startup, checks_after_parsing_keep_the_packet)
{
	f.cfg.require_tls = true;
	client_sends_startup(PROTO_VERSION(3, 0), PAIRS("user\0app\0"));
	cr_assert_eq(process_startup(), LOGIN_FATAL);
	cr_assert(f.r.startup_parsed, "the refusal is logged with the user's name");
	cr_assert(f.r.tls_required, "counted as refused_require_tls");
	cr_assert_str_eq(f.r.sqlstate, SQLSTATE_INVALID_AUTHORIZATION);
	cr_assert_str_eq(f.r.message, "This pgmux requires TLS connections");
}

Test(login_startup, replication_is_refused)
{
	client_sends_startup(PROTO_VERSION(3, 0), PAIRS("user\0app\0replication\0database\0"));
	cr_assert_eq(process_startup(), LOGIN_FATAL);
	cr_assert_str_eq(f.r.sqlstate, SQLSTATE_FEATURE_NOT_SUPPORTED);
	proto_startup_free(&f.startup);
	client_sends_startup(PROTO_VERSION(3, 0), PAIRS("user\0app\0replication\0off\0"));
	cr_assert_eq(process_startup(), LOGIN_STARTUP_DONE);
}

Test(login_startup, malformed_and_old_protocols)
{
	uint8_t got[256];
	size_t n;

	client_sends_startup(PROTO_VERSION(3, 0), PAIRS("database\0shop\0"));
	cr_assert_eq(process_startup(), LOGIN_FATAL);
	cr_assert_not(f.r.startup_parsed);
	cr_assert_str_eq(f.r.sqlstate, SQLSTATE_INVALID_AUTHORIZATION, "%s", f.r.message);
	client_sends_startup(PROTO_VERSION(4, 0), PAIRS("user\0app\0"));
	cr_assert_eq(process_startup(), LOGIN_FATAL);
	cr_assert_str_eq(f.r.message, "unsupported frontend protocol 4.0: server supports 3.0 to 3.0");
	/* Protocol 2 gets its own kind of error: text and a NUL. */
	client_sends_startup(PROTO_VERSION(2, 0), PAIRS("user\0app\0"));
	cr_assert_eq(process_startup(), LOGIN_CLOSE);
	n = client_reads(got, sizeof(got));
	cr_assert_gt(n, 2);
	cr_assert_eq(got[0], 'E');
	cr_assert_eq(got[n - 1], '\0');
}

/* ------------------------------------------------------------- auth */

static void start_as(const char *user)
{
	char pairs[128];
	int n = snprintf(pairs, sizeof(pairs), "user%c%s%c", 0, user, 0);

	client_sends_startup(PROTO_VERSION(3, 0), pairs, (size_t)n);
	cr_assert_eq(process_startup(), LOGIN_STARTUP_DONE);
}

static void client_sends_password(const void *body, size_t len)
{
	uint8_t head[5] = {'p'};

	put_u32(head + 1, (uint32_t)(4 + len));
	iobuf_append(&f.io.in, head, sizeof(head));
	iobuf_append(&f.io.in, body, len);
}

static enum login_outcome process_auth(void)
{
	return login_process_auth(&f.login, &f.io, f.startup.user, &f.r);
}

Test(login_auth, trust_needs_no_exchange)
{
	start_as("nobody");
	cr_assert_eq(login_begin_auth(&f.login, &f.io, &f.cfg, f.startup.user, &f.r), LOGIN_AUTHENTICATED);
	cr_assert_eq(iobuf_len(&f.io.out), 0);
}

Test(login_auth, md5_for_an_unknown_user_fails_like_a_wrong_password)
{
	f.cfg.client_auth = CLIENT_AUTH_MD5;
	start_as("nobody");
	cr_assert_eq(login_begin_auth(&f.login, &f.io, &f.cfg, f.startup.user, &f.r), LOGIN_CHALLENGE_SENT);
	cr_assert_eq(iobuf_len(&f.io.out), 1 + 4 + 4 + 4, "AuthenticationMD5Password with its salt");
	cr_assert_eq(iobuf_head(&f.io.out)[0], 'R');
	cr_assert_not(f.login.have_secret);
	client_sends_password("md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 36);
	cr_assert_eq(process_auth(), LOGIN_AUTH_FAILED);
	cr_assert_str_eq(f.r.sqlstate, SQLSTATE_INVALID_PASSWORD);
	cr_assert_str_eq(f.r.message, "password authentication failed for user \"nobody\"");
	cr_assert_str_eq(f.r.why, "no secret for this user");
}

static void md5_response(const char *user, const char *password, const uint8_t salt[4], char out[36])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t digest[16];
	char inner[33 + 4];
	char buf[256];

	snprintf(buf, sizeof(buf), "%s%s", password, user);
	cr_assert_eq(EVP_Digest(buf, strlen(buf), digest, NULL, EVP_md5(), NULL), 1);
	for (int i = 0; i < 16; i++) {
		inner[2 * i] = hex[digest[i] >> 4];
		inner[2 * i + 1] = hex[digest[i] & 15];
	}
	memcpy(inner + 32, salt, 4);
	cr_assert_eq(EVP_Digest(inner, 36, digest, NULL, EVP_md5(), NULL), 1);
	memcpy(out, "md5", 3);
	for (int i = 0; i < 16; i++) {
		out[3 + 2 * i] = hex[digest[i] >> 4];
		out[3 + 2 * i + 1] = hex[digest[i] & 15];
	}
	out[35] = '\0';
}

Test(login_auth, md5_with_the_secret_authenticates)
{
	char dir[] = "/tmp/test_login.XXXXXX";
	char path[256], err[256], response[36];
	FILE *file;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/app.json", dir);
	file = fopen(path, "w");
	cr_assert_not_null(file);
	fputs("{\"username\": \"app\", \"password\": \"s3cret'\\\\\", \"engine\": \"postgres\"}", file);
	fclose(file);
	chmod(path, 0600);
	cr_assert_eq(secrets_reload(dir, err, sizeof(err)), 1, "%s", err);
	unlink(path);
	rmdir(dir);

	f.cfg.client_auth = CLIENT_AUTH_MD5;
	start_as("app");
	cr_assert_eq(login_begin_auth(&f.login, &f.io, &f.cfg, f.startup.user, &f.r), LOGIN_CHALLENGE_SENT);
	cr_assert(f.login.have_secret);
	md5_response("app", "wrong", f.login.md5_salt, response);
	client_sends_password(response, sizeof(response));
	cr_assert_eq(process_auth(), LOGIN_AUTH_FAILED);
	cr_assert_str_eq(f.r.why, "wrong MD5 response");

	f.login.auth_step = LOGIN_AUTH_STEP_MD5;
	md5_response("app", "s3cret'\\", f.login.md5_salt, response);
	client_sends_password(response, sizeof(response));
	cr_assert_eq(process_auth(), LOGIN_AUTHENTICATED);
	login_forget_secret(&f.login);
	cr_assert_not(f.login.have_secret);
	cr_assert_null(f.login.secret.password);
}

Test(login_auth, scram_starts_with_its_mechanisms)
{
	f.cfg.client_auth = CLIENT_AUTH_SCRAM;
	start_as("nobody");
	cr_assert_eq(login_begin_auth(&f.login, &f.io, &f.cfg, f.startup.user, &f.r), LOGIN_CHALLENGE_SENT);
	cr_assert_not_null(f.login.scram, "an unknown user gets a made-up exchange");
	cr_assert_eq(f.login.auth_step, LOGIN_AUTH_STEP_SASL_INITIAL);
	cr_assert_not_null(memmem(iobuf_head(&f.io.out), iobuf_len(&f.io.out), "SCRAM-SHA-256", 13));
	client_sends_password("SCRAM-SHA-256\0\xff\xff\xff\xff", 18);
	cr_assert_eq(process_auth(), LOGIN_FATAL, "a negative length is malformed");
	cr_assert_str_eq(f.r.message, "malformed SASLInitialResponse message");
	login_end_exchange(&f.login);
	cr_assert_null(f.login.scram);
	cr_assert_eq(f.login.auth_step, LOGIN_AUTH_STEP_NONE);
}

Test(login_auth, password_message_framing)
{
	static const uint8_t query[] = {'Q', 0, 0, 0, 5, 0};
	uint8_t huge[5] = {'p'};

	f.cfg.client_auth = CLIENT_AUTH_MD5;
	start_as("nobody");
	login_begin_auth(&f.login, &f.io, &f.cfg, f.startup.user, &f.r);
	cr_assert_eq(process_auth(), LOGIN_NEED_MORE);
	iobuf_append(&f.io.in, query, sizeof(query));
	cr_assert_eq(process_auth(), LOGIN_FATAL);
	cr_assert_str_eq(f.r.message, "expected password response, got message type 81");
	iobuf_reset(&f.io.in);
	put_u32(huge + 1, LOGIN_MAX_AUTH_MESSAGE + 1);
	iobuf_append(&f.io.in, huge, sizeof(huge));
	cr_assert_eq(process_auth(), LOGIN_FATAL, "refused before the body arrives");
	cr_assert_str_eq(f.r.message, "invalid password message length 10001");
	iobuf_reset(&f.io.in);
	client_sends_password("no terminator", 13);
	cr_assert_eq(process_auth(), LOGIN_FATAL);
	cr_assert_str_eq(f.r.message, "invalid password packet");
	f.login.auth_step = LOGIN_AUTH_STEP_NONE;
	client_sends_password("x", 2);
	cr_assert_eq(process_auth(), LOGIN_FATAL);
	cr_assert_str_eq(f.r.message, "unexpected password message");
}

Test(login_auth, grant_sorts_the_startup_parameters_and_says_ok)
{
	static const uint8_t ok[] = {'R', 0, 0, 0, 8, 0, 0, 0, 0};
	struct session_params p = {0};
	char err[256];

	session_params_init(&p);
	client_sends_startup(PROTO_VERSION(3, 0),
			     PAIRS("user\0app\0database\0shop\0TimeZone\0UTC\0search_path\0app\0"
				   "options\0-c work_mem=64MB --lock-timeout=1s\0"));
	cr_assert_eq(process_startup(), LOGIN_STARTUP_DONE);
	cr_assert_eq(login_grant(&f.login, &f.io, &f.startup, &p, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(iobuf_len(&f.io.out), sizeof(ok));
	cr_assert_arr_eq(iobuf_head(&f.io.out), ok, sizeof(ok));
	cr_assert_str_eq(p.reported[params_carried_index("timezone")], "UTC");
	cr_assert_str_eq(params_get(session_params_set(&p), "search_path"), "app");
	cr_assert_str_eq(params_get(session_params_set(&p), "work_mem"), "64MB");
	cr_assert_str_eq(params_get(&p.extra->startup, "lock_timeout"), "1s");
	cr_assert_null(params_get(session_params_set(&p), "user"));
	cr_assert_null(params_get(session_params_set(&p), "database"));
	cr_assert_null(params_get(session_params_set(&p), "options"));
	session_params_free(&p);

	/* Options pgmux cannot honour: nothing is queued. */
	session_params_init(&p);
	proto_startup_free(&f.startup);
	iobuf_reset(&f.io.out);
	client_sends_startup(PROTO_VERSION(3, 0), PAIRS("user\0app\0options\0-F\0"));
	cr_assert_eq(process_startup(), LOGIN_STARTUP_DONE);
	cr_assert_eq(login_grant(&f.login, &f.io, &f.startup, &p, err, sizeof(err)), -1);
	cr_assert_str_eq(err, "unsupported option \"-F\": pgmux accepts only -c name=value and --name=value");
	cr_assert_eq(iobuf_len(&f.io.out), 0);
	session_params_free(&p);
}

/* ---------------------------------------------------------- options */

static int parse_options(const char *options, struct session_params *p, char *err)
{
	session_params_init(p);
	return login_options_parse(options, p, err, 256);
}

Test(login_options, settings_in_every_spelling)
{
	struct session_params p = {0};
	char err[256] = "";

	cr_assert_eq(parse_options("  -c a.b=1\t-cwork_mem=2MB --lock-timeout=3s -c search_path=x\\ y\\\\z "
				   "--app.some-thing=a-b",
				   &p, err),
		     0, "%s", err);
	cr_assert_str_eq(params_get(session_params_set(&p), "a.b"), "1");
	cr_assert_str_eq(params_get(session_params_set(&p), "work_mem"), "2MB");
	cr_assert_str_eq(params_get(session_params_set(&p), "lock_timeout"), "3s");
	cr_assert_str_eq(params_get(session_params_set(&p), "search_path"), "x y\\z");
	cr_assert_str_eq(params_get(session_params_set(&p), "app.some_thing"), "a-b", "dashes only in the name become _");
	cr_assert_eq(session_params_set(&p)->count, 5);
	session_params_free(&p);

	cr_assert_eq(parse_options("-c application_name=it's", &p, err), 0, "%s", err);
	cr_assert_str_eq(p.reported[params_carried_index("application_name")], "it's");
	cr_assert_eq(session_params_set(&p)->count, 0);
	session_params_free(&p);

	cr_assert_eq(parse_options("", &p, err), 0);
	cr_assert_eq(session_params_set(&p)->count, 0);
	session_params_free(&p);
}

Test(login_options, refusals)
{
	static const struct {
		const char *options;
		const char *err;
	} cases[] = {
		{"-F", "unsupported option \"-F\": pgmux accepts only -c name=value and --name=value"},
		{"-c", "option -c requires a value"},
		{"-c a=1 -c", "option -c requires a value"},
		{"-c =x", "invalid option \"=x\": expected name=value"},
		{"--novalue", "invalid option \"novalue\": expected name=value"},
		{"-c a=1 -B 100", "unsupported option \"-B\": pgmux accepts only -c name=value and --name=value"},
	};
	struct session_params p = {0};
	char err[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(parse_options(cases[i].options, &p, err), -1, "%s", cases[i].options);
		cr_assert_str_eq(err, cases[i].err);
		session_params_free(&p);
	}
}

Test(login_options, a_word_too_long_is_refused)
{
	size_t n = 5000;
	char *options = malloc(n + 1);
	struct session_params p = {0};
	char err[256];

	memcpy(options, "-ca=", 4);
	memset(options + 4, 'v', n - 4);
	options[n] = '\0';
	cr_assert_eq(parse_options(options, &p, err), -1);
	cr_assert_str_eq(err, "options value too long");
	session_params_free(&p);
	free(options);
}
