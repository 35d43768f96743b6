/*
 * test_startup.c: what comes before a session: the startup packet and the
 * requests that may precede it (SSLRequest, GSSENCRequest, CancelRequest),
 * hostile or malformed openings (answered as PostgreSQL answers them),
 * protocol negotiation, client_login_timeout, and a login served by a
 * backend that is already idle in the pool. How a client proves who it is
 * (SCRAM, MD5, trust, TLS) is test_auth.c's.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct pgmux px;

/* TLS offered, not required, SCRAM. */
static void init_tls_optional(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	pgmux_start_ok(&px, &o);
}

/* No TLS at all, SCRAM. */
static void init_no_tls(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.tls = false;
	pgmux_start_ok(&px, &o);
}

/* ================================================================ malformed and hostile openings */

TestSuite(startup, .init = init_tls_optional, .fini = h_teardown, .timeout = 120);

static int raw_open(void)
{
	int fd = h_raw_connect(px.port, 2000);
	cr_assert(fd >= 0, "cannot connect to pgmux's port %d", px.port);
	return fd;
}

/* An ErrorResponse body must say FATAL with one of the SQLSTATEs (NULL-terminated). */
static void expect_fatal_body(const char *body, size_t len, const char *const sqlstates[], const char *what)
{
	const char *sev = h_error_field(body, len, 'V');
	if (!sev)
		sev = h_error_field(body, len, 'S');
	cr_assert(sev && strcmp(sev, "FATAL") == 0, "%s: severity %s, expected FATAL", what, sev ? sev : "(none)");
	const char *code = h_error_field(body, len, 'C');
	cr_assert_not_null(code, "%s: ErrorResponse without SQLSTATE", what);
	bool allowed = false;
	for (int i = 0; sqlstates[i]; i++)
		if (strcmp(code, sqlstates[i]) == 0)
			allowed = true;
	const char *msg = h_error_field(body, len, 'M');
	cr_assert(allowed, "%s: SQLSTATE %s (%s) not expected", what, code, msg ? msg : "");
}

/*
 * The connection must be refused within limit_ms: either closed or (when
 * error_required, only) an ErrorResponse as expect_fatal_body() wants,
 * followed by a close. Closes fd.
 */
static void expect_refused_within(int fd, const char *const sqlstates[], bool error_required, int limit_ms,
				  const char *what)
{
	long long t0 = h_now_ms();
	char type;
	char *body;
	size_t len;
	enum h_msg_result r = h_raw_read_message(fd, &type, &body, &len, limit_ms);
	cr_assert_neq(r, H_MSG_TIMEOUT, "%s: neither an error nor a close within %d ms", what, limit_ms);
	cr_assert(r == H_MSG_OK || !error_required, "%s: closed without an ErrorResponse (%d)", what, r);
	if (r == H_MSG_OK) {
		cr_assert_eq(type, 'E', "%s: expected an ErrorResponse, got message '%c'", what, type);
		expect_fatal_body(body, len, sqlstates, what);
		free(body);
		long long left = limit_ms - (h_now_ms() - t0);
		cr_assert(h_raw_wait_closed(fd, left > 0 ? (int)left : 1),
			  "%s: connection not closed after the FATAL error", what);
	}
	close(fd);
}

/*
 * The connection must be refused within 2 s: either closed, or an
 * ErrorResponse with severity FATAL and one of the SQLSTATEs (NULL-terminated)
 * followed by a close.
 */
static void expect_refused(int fd, const char *const sqlstates[], const char *what)
{
	expect_refused_within(fd, sqlstates, false, h_scaled_ms(2000), what);
}

static const char *const protocol_violation[] = {"08P01", NULL};
static const char *const bad_version[] = {"0A000", "08P01", NULL};
static const char *const no_user[] = {"28000", "08P01", NULL};

static void send_header(int fd, uint32_t len, uint32_t code)
{
	uint8_t b[8];
	h_put_u32(b, len);
	h_put_u32(b + 4, code);
	cr_assert(h_raw_send(fd, b, 8));
}

Test(startup, length_below_8)
{
	int fd = raw_open();
	send_header(fd, 4, 196608);
	expect_refused(fd, protocol_violation, "length 4");
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

/* PostgreSQL's limit of 10,000 bytes is on the packet less its length word. */
Test(startup, length_above_10004)
{
	int fd = raw_open();
	send_header(fd, 10005, 196608);
	expect_refused(fd, protocol_violation, "length 10005");
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

Test(startup, one_gigabyte_length_claim)
{
	int fd = raw_open();
	send_header(fd, 1u << 30, 196608);
	expect_refused(fd, protocol_violation, "length 1 GB");
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

static void bad_version_test(uint32_t version, const char *what)
{
	int fd = raw_open();
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), version, params);
	cr_assert(h_raw_send(fd, buf, len));
	expect_refused(fd, bad_version, what);
	h_expect_serves_new_client(&px);
}

Test(startup, protocol_2_0)
{
	bad_version_test(2u << 16, "protocol 2.0");
	h_stop_expect_clean_exit(&px);
}

Test(startup, protocol_4_0)
{
	bad_version_test(4u << 16, "protocol 4.0");
	h_stop_expect_clean_exit(&px);
}

Test(startup, garbage_bytes)
{
	int fd = raw_open();
	const char http[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
	cr_assert(h_raw_send(fd, http, sizeof(http) - 1));
	expect_refused(fd, protocol_violation, "an HTTP request");

	fd = raw_open();
	uint8_t junk[64];
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)(i * 37 + 11);
	h_put_u32(junk, 64);
	cr_assert(h_raw_send(fd, junk, sizeof(junk)));
	expect_refused(fd, bad_version, "64 bytes of junk with a plausible length");
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

Test(startup, truncated_then_closed)
{
	int fd = raw_open();
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len / 2));
	shutdown(fd, SHUT_WR);
	expect_refused(fd, protocol_violation, "half a startup packet, then EOF");

	/* and one that simply vanishes */
	fd = raw_open();
	cr_assert(h_raw_send(fd, buf, 6));
	close(fd);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

Test(startup, missing_user)
{
	int fd = raw_open();
	uint8_t buf[256];
	const char *params[] = {"database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len));
	expect_refused(fd, no_user, "a startup packet without user");
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

Test(startup, unterminated_parameters)
{
	int fd = raw_open();
	uint8_t buf[64];
	memcpy(buf + 8, "user\0app\0database", 17); /* no value, no final NUL */
	h_put_u32(buf, 8 + 17);
	h_put_u32(buf + 4, 196608);
	cr_assert(h_raw_send(fd, buf, 8 + 17));
	expect_refused(fd, protocol_violation, "a startup packet with unterminated parameters");
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

/* Read one message that must arrive, of the given type. */
static char *expect_message(int fd, char want, size_t *len, const char *what)
{
	char type;
	char *body;
	enum h_msg_result r = h_raw_read_message(fd, &type, &body, len, h_scaled_ms(3000));
	cr_assert_eq(r, H_MSG_OK, "%s: no message (%d)", what, r);
	if (type == 'E') {
		const char *m = h_error_field(body, *len, 'M');
		cr_assert_eq(type, want, "%s: got ErrorResponse: %s", what, m ? m : "");
	}
	cr_assert_eq(type, want, "%s: expected '%c', got '%c'", what, want, type);
	return body;
}

/* A plain StartupMessage for app must now be answered with SCRAM (SASL) authentication. */
static void expect_sasl_after_startup(int fd, bool plus_allowed, const char *what)
{
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len));
	size_t blen;
	char *body = expect_message(fd, 'R', &blen, what);
	cr_assert(blen >= 4);
	cr_assert_eq(h_get_u32(body), 10u, "%s: authentication type %u, expected 10 (SASL)", what,
		     h_get_u32(body));
	bool scram = false, plus = false;
	for (size_t i = 4; i < blen && body[i]; i += strlen(body + i) + 1) {
		if (strcmp(body + i, "SCRAM-SHA-256") == 0)
			scram = true;
		if (strcmp(body + i, "SCRAM-SHA-256-PLUS") == 0)
			plus = true;
	}
	cr_assert(scram, "%s: SCRAM-SHA-256 not offered", what);
	if (!plus_allowed)
		cr_assert(!plus, "%s: SCRAM-SHA-256-PLUS offered without TLS", what);
	free(body);
}

Test(startup, ssl_request_answered_S_with_tls)
{
	int fd = raw_open();
	send_header(fd, 8, 80877103);
	char answer = 0;
	cr_assert_eq(h_raw_read(fd, &answer, 1, h_scaled_ms(2000)), 1, "no answer to SSLRequest");
	cr_assert_eq(answer, 'S', "SSLRequest answered '%c' although TLS is configured", answer);
	close(fd);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

Test(startup, gssenc_request_answered_N)
{
	int fd = raw_open();
	send_header(fd, 8, 80877104);
	char answer = 0;
	cr_assert_eq(h_raw_read(fd, &answer, 1, h_scaled_ms(2000)), 1, "no answer to GSSENCRequest");
	cr_assert_eq(answer, 'N', "GSSENCRequest answered '%c'", answer);
	/* the same connection goes on with a plain startup */
	expect_sasl_after_startup(fd, false, "startup after GSSENCRequest");
	close(fd);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

static void negotiate_test(uint32_t version, const char *pq_option)
{
	int fd = raw_open();
	uint8_t buf[256];
	const char *with_opt[] = {"user", "app", "database", "postgres", pq_option, "bar", NULL};
	const char *without[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), version, pq_option ? with_opt : without);
	cr_assert(h_raw_send(fd, buf, len));
	size_t blen;
	char *body = expect_message(fd, 'v', &blen, "NegotiateProtocolVersion");
	cr_assert(blen >= 8);
	/*
	 * The protocol documentation calls this the newest supported minor
	 * version, but PostgreSQL sends its full latest version, 3.0 (196608):
	 * accept both spellings of "3.0".
	 */
	uint32_t newest = h_get_u32(body);
	cr_assert((newest & 0xFFFF) == 0 && (newest >> 16 == 3 || newest >> 16 == 0),
		  "NegotiateProtocolVersion offers version %u.%u, expected 3.0", newest >> 16, newest & 0xFFFF);
	uint32_t n = h_get_u32(body + 4);
	if (pq_option) {
		cr_assert_eq(n, 1u, "%u unrecognized options reported, expected 1", n);
		cr_assert_str_eq(body + 8, pq_option);
	} else {
		cr_assert_eq(n, 0u);
	}
	free(body);
	body = expect_message(fd, 'R', &blen, "authentication after NegotiateProtocolVersion");
	cr_assert_eq(h_get_u32(body), 10u);
	free(body);
	close(fd);
}

Test(startup, protocol_3_1_gets_negotiate_protocol_version)
{
	negotiate_test((3u << 16) | 1, NULL);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

Test(startup, pq_option_gets_negotiate_protocol_version)
{
	negotiate_test(3u << 16, "_pq_.foo");
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

/*
 * What a server does with an opening, as text: "closed" (no byte, then the
 * connection closed), "open" (nothing within the time), "S" or "N" (the
 * answer to an encryption request; then "+open", or what followed), or
 * "E <severity> <SQLSTATE> <message>" and "+closed" after an ErrorResponse.
 */
static void opening_outcome(int port, int wait_ms, const uint8_t *bytes, size_t len, char *out, size_t cap)
{
	int fd = h_raw_connect(port, 2000);
	uint8_t buf[4096];
	size_t got = 0, used = 0;
	long long deadline = h_now_ms() + wait_ms;
	bool closed = false;

	cr_assert(fd >= 0, "cannot connect to port %d", port);
	cr_assert(h_raw_send(fd, bytes, len));
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		long long left = deadline - h_now_ms();
		ssize_t n;

		if (left <= 0 || got == sizeof(buf) || poll(&pfd, 1, (int)left) <= 0)
			break;
		n = recv(fd, buf + got, sizeof(buf) - got, 0);
		if (n <= 0) {
			closed = true;
			break;
		}
		got += (size_t)n;
	}
	close(fd);
	out[0] = '\0';
	if (got > 0 && (buf[0] == 'S' || buf[0] == 'N')) {
		snprintf(out, cap, "%c+", buf[0]);
		used = 1;
	}
	while (used + 5 <= got && buf[used] == 'E') {
		uint32_t mlen = ((uint32_t)buf[used + 1] << 24) | ((uint32_t)buf[used + 2] << 16) |
				((uint32_t)buf[used + 3] << 8) | buf[used + 4];
		const char *body = (const char *)buf + used + 5;
		size_t blen;
		const char *sev, *code, *msg;

		if (mlen < 4 || used + 1 + mlen > got)
			break;
		blen = mlen - 4;
		sev = h_error_field(body, blen, 'V');
		if (sev == NULL)
			sev = h_error_field(body, blen, 'S');
		code = h_error_field(body, blen, 'C');
		msg = h_error_field(body, blen, 'M');
		snprintf(out + strlen(out), cap - strlen(out), "E %s %s %s+", sev ? sev : "?", code ? code : "?",
			 msg ? msg : "?");
		used += 1 + mlen;
	}
	if (used < got)
		snprintf(out + strlen(out), cap - strlen(out), "%zu more bytes (first %d)+", got - used, buf[used]);
	snprintf(out + strlen(out), cap - strlen(out), "%s", closed ? "closed" : "open");
}

/* The same opening to PostgreSQL and to pgmux: the same answer (issue 19). */
static void opening_like_postgres(const uint8_t *bytes, size_t len, const char *what)
{
	char direct[1024], through[1024];

	/* Long enough for a busy machine to fork a backend and close: "open" costs the whole wait. */
	opening_outcome(h_env()->pgport, 1500, bytes, len, direct, sizeof(direct));
	opening_outcome(px.port, h_scaled_ms(1500), bytes, len, through, sizeof(through));
	cr_expect_str_eq(through, direct, "%s: pgmux answered \"%s\", PostgreSQL \"%s\"", what, through, direct);
}

static size_t packet(uint8_t *b, uint32_t len, uint32_t code)
{
	h_put_u32(b, len);
	h_put_u32(b + 4, code);
	return 8;
}

Test(startup, hostile_openings_are_answered_as_postgresql_answers_them)
{
	static const uint32_t lengths[] = {0, 4, 7, 10001, 10004, 10005, 0x7fffffffu, 0xfffffff0u, 1u << 30};
	uint8_t b[512];
	size_t n;
	const char *database_only[] = {"database", "postgres", NULL};
	const char *app[] = {"user", "app", "database", "postgres", NULL};

	for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
		char what[64];

		snprintf(what, sizeof(what), "length %u", lengths[i]);
		n = packet(b, lengths[i], 196608);
		opening_like_postgres(b, n, what);
		/* Only the four bytes of the length. */
		opening_like_postgres(b, 4, what);
	}
	/* A driver that connects and ends at once: Terminate as its first bytes. */
	opening_like_postgres((const uint8_t *)"X\0\0\0\4", 5, "Terminate first");
	opening_like_postgres((const uint8_t *)"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27, "an HTTP request");
	n = h_build_startup(b, sizeof(b), 4u << 16, app);
	opening_like_postgres(b, n, "protocol 4.0");
	n = h_build_startup(b, sizeof(b), 2u << 16, app);
	opening_like_postgres(b, n, "protocol 2.0");
	n = h_build_startup(b, sizeof(b), (1u << 16) | 5, app);
	opening_like_postgres(b, n, "protocol 1.5");
	n = h_build_startup(b, sizeof(b), 0, app);
	opening_like_postgres(b, n, "protocol 0.0");
	n = h_build_startup(b, sizeof(b), (1234u << 16) | 5681, app);
	opening_like_postgres(b, n, "protocol 1234.5681");
	n = h_build_startup(b, sizeof(b), 196608, database_only);
	opening_like_postgres(b, n, "no user");
	/* An SSLRequest with bytes after the code in its packet is still one. */
	n = packet(b, 12, 80877103);
	h_put_u32(b + 8, 0);
	opening_like_postgres(b, 12, "SSLRequest of 12 bytes");
	/* CancelRequests: a wrong length, an unknown key. */
	n = packet(b, 12, 80877102);
	h_put_u32(b + 8, 1);
	opening_like_postgres(b, 12, "CancelRequest of 12 bytes");
	n = packet(b, 16, 80877102);
	h_put_u32(b + 8, 1);
	h_put_u32(b + 12, 2);
	opening_like_postgres(b, 16, "CancelRequest with an unknown key");
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

TestSuite(startup_no_tls, .init = init_no_tls, .fini = h_teardown, .timeout = 120);

Test(startup_no_tls, ssl_request_answered_N)
{
	int fd = raw_open();
	send_header(fd, 8, 80877103);
	char answer = 0;
	cr_assert_eq(h_raw_read(fd, &answer, 1, h_scaled_ms(2000)), 1, "no answer to SSLRequest");
	cr_assert_eq(answer, 'N', "SSLRequest answered '%c' although no TLS is configured", answer);
	expect_sasl_after_startup(fd, false, "startup after SSLRequest was refused");
	close(fd);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ client_login_timeout */

/* 1 s, pgmux's minimum; longer under valgrind, where a TLS + SCRAM login alone can take a second. */
static int login_timeout_ms(void)
{
	return h_under_valgrind() ? 3000 : 1000;
}

/* The timeout, one backend (so that a client waiting for it can be made to wait past the timeout). */
static void init_login_timeout(void)
{
	struct pgmux_options o;
	char timeout[16];
	pgmux_options_default(&o);
	snprintf(timeout, sizeof(timeout), "%dms", login_timeout_ms());
	o.client_login_timeout = timeout;
	o.max_connections = 1;
	pgmux_start_ok(&px, &o);
}

TestSuite(login_timeout, .init = init_login_timeout, .fini = h_teardown, .timeout = 120);

#define LOGIN_TIMEOUT_MESSAGE "canceling authentication due to timeout"

static const char *const login_timed_out[] = {"57014", NULL};

/*
 * A client stalled in its login (connected at connected_ms) must be cut off
 * once client_login_timeout has passed, not before: with FATAL 57014 when
 * error_expected, by a plain close otherwise (in the middle of a TLS
 * handshake, where nothing can be sent).
 */
static void expect_login_timed_out(int fd, long long connected_ms, bool error_expected, const char *what)
{
	int limit = login_timeout_ms() + h_scaled_ms(4000);
	long long left = limit - (h_now_ms() - connected_ms);
	if (error_expected)
		expect_refused_within(fd, login_timed_out, true, left > 0 ? (int)left : 1, what);
	else {
		cr_assert(h_raw_wait_closed(fd, left > 0 ? (int)left : 1), "%s: not closed within %d ms", what, limit);
		close(fd);
	}
	long long waited = h_now_ms() - connected_ms;
	/* A little slack for the two clocks; pgmux's timer never fires early. */
	cr_assert_geq(waited, login_timeout_ms() - 50, "%s: cut off after %lld ms, before client_login_timeout (%d ms)",
		      what, waited, login_timeout_ms());
}

/* The raw bytes of a SASLInitialResponse for SCRAM-SHA-256 without channel binding. */
static size_t build_sasl_initial_response(uint8_t *buf, size_t cap)
{
	static const char mechanism[] = "SCRAM-SHA-256";
	static const char first[] = "n,,n=,r=pgmuxtestnonce0123456789";
	size_t len = 1 + 4 + sizeof(mechanism) + 4 + strlen(first);
	cr_assert_leq(len, cap);
	buf[0] = 'p';
	h_put_u32(buf + 1, (uint32_t)(len - 1));
	memcpy(buf + 5, mechanism, sizeof(mechanism));
	h_put_u32(buf + 5 + sizeof(mechanism), (uint32_t)strlen(first));
	memcpy(buf + 9 + sizeof(mechanism), first, strlen(first));
	return len;
}

Test(login_timeout, stalled_logins_are_cut_off_others_log_in)
{
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t startup_len = h_build_startup(buf, sizeof(buf), 196608, params);

	/* One that sends nothing at all. */
	long long silent_ms = h_now_ms();
	int silent = raw_open();

	/* One that sends half of its startup packet. */
	long long half_ms = h_now_ms();
	int half = raw_open();
	cr_assert(h_raw_send(half, buf, startup_len / 2));

	/* One that stops in the middle of SCRAM: after its client-first-message. */
	long long scram_ms = h_now_ms();
	int scram = raw_open();
	expect_sasl_after_startup(scram, false, "the client that stalls in SCRAM");
	size_t n = build_sasl_initial_response(buf, sizeof(buf));
	cr_assert(h_raw_send(scram, buf, n));
	size_t blen;
	char *body = expect_message(scram, 'R', &blen, "SASLContinue");
	cr_assert(blen >= 4 && h_get_u32(body) == 11u, "expected SASLContinue (11), got authentication type %u",
		  blen >= 4 ? h_get_u32(body) : 0u);
	free(body);

	/* One that asks for TLS and then never starts the handshake. */
	long long tls_ms = h_now_ms();
	int tls = raw_open();
	send_header(tls, 8, 80877103);
	char answer = 0;
	cr_assert_eq(h_raw_read(tls, &answer, 1, h_scaled_ms(2000)), 1, "no answer to SSLRequest");
	cr_assert_eq(answer, 'S');

	/* Meanwhile a real client logs in and works. */
	PGconn *conn = h_app_session(&px, "require", NULL);
	h_expect_value(conn, "select 'logged in while others stall'", "logged in while others stall");
	PQfinish(conn);

	expect_login_timed_out(silent, silent_ms, true, "a client that sends nothing");
	expect_login_timed_out(half, half_ms, true, "a client that sends half a startup packet");
	expect_login_timed_out(scram, scram_ms, true, "a client that stops in the middle of SCRAM");
	expect_login_timed_out(tls, tls_ms, false, "a client that stops before its TLS handshake");
	cr_assert(h_file_wait_count(px.logfile, LOGIN_TIMEOUT_MESSAGE, 4, h_scaled_ms(2000)),
		  "pgmux's log does not give the login timeout as the reason 4 times (%d)",
		  h_file_count(px.logfile, LOGIN_TIMEOUT_MESSAGE));

	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

/*
 * The timeout ends with authentication: neither a logged-in session that
 * outlives it nor an authenticated client that waits longer than it for the
 * only backend is cut off.
 */
Test(login_timeout, does_not_apply_after_authentication)
{
	PGconn *first = h_app_session(&px, "require", NULL);
	h_expect_value(first, "select 1", "1");

	struct h_cmd c;
	cr_assert(h_app_psql_start(&c, &px, "require", "select 'second got in'"));
	h_sleep_ms(login_timeout_ms() + 500);
	bool ended_early = h_cmd_wait(&c, 0);
	if (ended_early)
		h_cmd_dump(&c, "second psql");
	cr_assert(!ended_early, "the client waiting for the only backend ended (status %d) before it was free",
		  c.status);

	h_expect_value(first, "select 'still logged in'", "still logged in");
	PQfinish(first);
	h_expect_cmd_output(&c, h_scaled_ms(10000), "second got in\n", "the client that waited for the only backend");
	cr_assert_eq(h_file_count(px.logfile, LOGIN_TIMEOUT_MESSAGE), 0,
		     "pgmux cut a client off for the login timeout");
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ a login on an idle backend */

TestSuite(login, .fini = h_teardown, .timeout = 120);

/* Is the only backend idle, with the reset after its session (session pooling) done? */
static bool backend_parked(void *arg)
{
	PGconn *super = arg;
	char *v = h_query_value(super, "select count(*) from pg_stat_activity where usename = 'app' and "
				       "state = 'idle' and (query = 'DISCARD ALL' or query like 'select 40%')");
	bool parked = v && strcmp(v, "1") == 0;

	free(v);
	return parked;
}

/*
 * Found by the protocol fuzz test (test_fuzz.c). With trust, a login
 * completes inside the handler of the startup packet when an idle backend
 * already matches the client's session (no setup query to wait for). The
 * packet was still in the input buffer then, and was relayed as the
 * client's first message: FATAL "invalid frontend message type 0" (its
 * length's first byte) for a client that did nothing wrong.
 */
static void trust_login_on_matching_backend(const char *pool_mode)
{
	PGconn *super;

	/* One worker: the backend is handed over at once, not through another worker's inbox. */
	pgmux_start_trust(&px, pool_mode, 1, 1, "max_packet_size = 64kB", NULL);
	super = h_connect_super_direct();
	for (int i = 0; i < 3; i++) {
		PGconn *conn = h_app_session(&px, "disable", NULL);

		h_expect_value(conn, "select 40 + 2", "42");
		PQfinish(conn);
		/* The next login finds the backend idle in the pool (a little later, when pgmux saw it). */
		cr_assert(h_poll_until(backend_parked, super, h_scaled_ms(5000)), "the backend did not come back idle");
		h_sleep_ms(h_scaled_ms(100));
	}
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

Test(login, trust_login_on_an_idle_matching_backend_session_pooling)
{
	trust_login_on_matching_backend("session");
}

Test(login, trust_login_on_an_idle_matching_backend_transaction_pooling)
{
	trust_login_on_matching_backend("transaction");
}
