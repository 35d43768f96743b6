/*
 * login.c: a client's startup packet, TLS request and password exchange (see
 * login.h). Every check is PostgreSQL's, in its order and with its answer, so
 * that a client cannot tell pgmux from the server before it logs in. Each
 * function returns what happened; client.c, which owns the client's state,
 * acts on it.
 */
#include "login.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "io.h"
#include "session.h"
#include "tls.h"

static enum login_outcome login_fatal(struct login_result *r, const char *sqlstate, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static enum login_outcome login_fatal(struct login_result *r, const char *sqlstate, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->message, sizeof(r->message), fmt, ap);
	va_end(ap);
	r->sqlstate = sqlstate;
	return r->outcome = LOGIN_FATAL;
}

static enum login_outcome login_close(struct login_result *r, const char *reason)
{
	snprintf(r->message, sizeof(r->message), "%s", reason);
	return r->outcome = LOGIN_CLOSE;
}

static enum login_outcome login_auth_failed(struct login_result *r, const char *user, const char *why)
{
	snprintf(r->why, sizeof(r->why), "%s", why);
	login_fatal(r, SQLSTATE_INVALID_PASSWORD, "password authentication failed for user \"%s\"", user);
	return r->outcome = LOGIN_AUTH_FAILED;
}

/* ----------------------------------------------------------------- startup */

/* Answer a one-byte 'S' or 'N'; the byte must leave before a TLS handshake starts. */
static bool login_answer_byte(struct io *io, char answer, struct login_result *r)
{
	iobuf_append_u8(&io->out, (uint8_t)answer);
	if (io_flush(io) != IO_OK) {
		login_close(r, "could not answer the encryption request");
		return false;
	}
	return true;
}

/* An SSLRequest or GSSENCRequest (len bytes, still in io->in), the first of its kind. */
static enum login_outcome login_encryption_request(struct login *l, struct io *io, uint32_t code, uint32_t len,
						   struct login_result *r)
{
	struct tls_context *tls = NULL;

	iobuf_consume(&io->in, len);
	if (code == PROTO_SSL_REQUEST) {
		l->ssl_asked = true;
		tls = tls_get_current();
		l->tls = tls; /* its reference goes with the login (login_free()) */
	} else {
		l->gss_asked = true;
	}
	if (!login_answer_byte(io, tls ? 'S' : 'N', r))
		return r->outcome;
	/* Bytes sent before the handshake would be trusted as if encrypted (CVE-2021-23214). */
	if (iobuf_len(&io->in) > 0)
		return login_fatal(r, SQLSTATE_PROTOCOL_VIOLATION, "received unencrypted data after SSL request");
	if (tls == NULL)
		return r->outcome = LOGIN_NEXT;
	if (io_start_tls_accept(io, tls->ctx) != 0)
		return login_close(r, io->error);
	return r->outcome = LOGIN_TLS_STARTED;
}

static enum login_outcome login_startup_message(struct io *io, const struct config *cfg, uint32_t version,
						const uint8_t *body, size_t len, struct startup_packet *startup,
						struct login_result *r)
{
	char err[256];
	const char *replication;

	r->version = version;
	if (version >> 16 == 1 || version >> 16 == 2) {
		char old[128];
		int n = snprintf(old, sizeof(old),
				 "EFATAL:  unsupported frontend protocol %u.%u: server supports 3.0 to 3.0\n", version >> 16,
				 version & 0xffff);

		/* PostgreSQL answers a client of protocol 1 or 2 in that protocol's ErrorResponse: text and a NUL. */
		iobuf_append(&io->out, old, (size_t)n + 1);
		(void)io_flush(io);
		return login_close(r, "unsupported frontend protocol");
	}
	if (version >> 16 != 3)
		return login_fatal(r, SQLSTATE_FEATURE_NOT_SUPPORTED,
				   "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0", version >> 16,
				   version & 0xffff);
	if (proto_parse_startup(version, body, len, startup, err, sizeof(err)) != 0)
		return login_fatal(r, strstr(err, "user name") ? SQLSTATE_INVALID_AUTHORIZATION : SQLSTATE_PROTOCOL_VIOLATION,
				   "%s", err);
	r->startup_parsed = true;
	if (cfg->require_tls && io->ssl == NULL) {
		r->tls_required = true;
		return login_fatal(r, SQLSTATE_INVALID_AUTHORIZATION, "This pgmux requires TLS connections");
	}
	replication = proto_startup_get(startup, "replication");
	if (replication && strcmp(replication, "false") != 0 && strcmp(replication, "0") != 0 &&
	    strcmp(replication, "off") != 0 && strcmp(replication, "no") != 0)
		return login_fatal(r, SQLSTATE_FEATURE_NOT_SUPPORTED, "replication connections are not supported by pgmux");
	/* A newer 3.x minor or _pq_ options: say what we speak, then carry on. */
	if ((version & 0xffff) != 0 || startup->n_unknown_protocol_options > 0)
		proto_put_negotiate_version(&io->out, 0, startup->unknown_protocol_options,
					    startup->n_unknown_protocol_options);
	return r->outcome = LOGIN_STARTUP_DONE;
}

/*
 * A length below 8 or above 10,000 bytes closes the connection without a
 * word, as PostgreSQL does (it only logs "invalid length of startup
 * packet"), once the four bytes of the length are in; an SSLRequest or
 * GSSENCRequest is answered whatever else its packet holds, once each, and a
 * second one is an unsupported protocol version like any other.
 */
enum login_outcome login_process_startup(struct login *l, struct io *io, const struct config *cfg,
					 struct startup_packet *startup, struct login_result *r)
{
	struct iobuf *in = &io->in;
	const uint8_t *p;
	uint32_t len, code;

	memset(r, 0, sizeof(*r));
	if (iobuf_len(in) < 4)
		return r->outcome = LOGIN_NEED_MORE;
	p = iobuf_head(in);
	len = get_u32(p);
	/* PostgreSQL's limit is on the packet less its length word. */
	if (len < 8 || len - 4 > PROTO_MAX_STARTUP_PACKET || len > (uint32_t)cfg->max_packet_size)
		return login_close(r, "invalid length of startup packet");
	if (iobuf_len(in) < len)
		return r->outcome = LOGIN_NEED_MORE;
	code = get_u32(p + 4);

	if ((code == PROTO_SSL_REQUEST && !l->ssl_asked) || (code == PROTO_GSSENC_REQUEST && !l->gss_asked))
		return login_encryption_request(l, io, code, len, r);
	if (code == PROTO_CANCEL_REQUEST) {
		/* The caller looks the key up and closes; the packet may stay where it is. */
		r->cancel_valid = len == 16;
		if (r->cancel_valid) {
			r->cancel_pid = get_u32(p + 8);
			r->cancel_key = get_u32(p + 12);
		}
		return r->outcome = LOGIN_CANCEL;
	}
	/*
	 * Take the packet out of the buffer before acting on it: with trust
	 * authentication the login can complete as soon as the caller goes on
	 * (an idle backend that already matches the client's session needs no
	 * setup), and whatever is still buffered then is relayed to the backend
	 * as the client's first message.
	 */
	uint8_t body[PROTO_MAX_STARTUP_PACKET];

	memcpy(body, p + 8, len - 8);
	iobuf_consume(in, len);
	return login_startup_message(io, cfg, code, body, len - 8, startup, r);
}

/* ----------------------------------------------------------- authentication */

enum login_outcome login_begin_auth(struct login *l, struct io *io, const struct config *cfg, const char *user,
				    struct login_result *r)
{
	memset(r, 0, sizeof(*r));
	l->have_secret = secrets_find(user, &l->secret);
	switch (cfg->client_auth) {
	case CLIENT_AUTH_TRUST:
		return r->outcome = LOGIN_AUTHENTICATED;
	case CLIENT_AUTH_MD5:
		auth_random_bytes(l->md5_salt, sizeof(l->md5_salt));
		proto_put_auth(&io->out, AUTH_REQ_MD5, l->md5_salt, sizeof(l->md5_salt));
		l->auth_step = LOGIN_AUTH_STEP_MD5;
		break;
	case CLIENT_AUTH_SCRAM: {
		char mechanisms[64];
		bool plus = io->ssl && l->tls && l->tls->binding_len > 0;
		size_t n = scram_mechanisms(plus, mechanisms, sizeof(mechanisms));

		/* An unknown user gets a made-up exchange that fails at the end, like a wrong password. */
		if (l->have_secret)
			l->scram = scram_server_new(&l->secret.scram, plus ? l->tls->binding : NULL,
						    plus ? l->tls->binding_len : 0);
		else
			l->scram = scram_server_new_unknown_user(user, plus ? l->tls->binding : NULL,
								 plus ? l->tls->binding_len : 0);
		if (l->scram == NULL)
			return login_fatal(r, SQLSTATE_INTERNAL_ERROR, "out of memory");
		proto_put_auth(&io->out, AUTH_REQ_SASL, mechanisms, n);
		l->auth_step = LOGIN_AUTH_STEP_SASL_INITIAL;
		break;
	}
	}
	return r->outcome = LOGIN_CHALLENGE_SENT;
}

static enum login_outcome login_password_message(struct login *l, struct io *io, const char *user,
						 const uint8_t *body, size_t len, struct login_result *r)
{
	struct msg_reader r_msg;
	char err[256] = "";
	char *reply = NULL;
	enum auth_result res;

	msg_reader_init(&r_msg, body, len);
	switch (l->auth_step) {
	case LOGIN_AUTH_STEP_MD5: {
		const char *response = msg_read_str(&r_msg);

		if (response == NULL)
			return login_fatal(r, SQLSTATE_PROTOCOL_VIOLATION, "invalid password packet");
		if (!l->have_secret)
			return login_auth_failed(r, user, "no secret for this user");
		if (!md5_check_response(user, l->secret.password, l->md5_salt, response))
			return login_auth_failed(r, user, "wrong MD5 response");
		return r->outcome = LOGIN_AUTHENTICATED;
	}
	case LOGIN_AUTH_STEP_SASL_INITIAL: {
		const char *mechanism = msg_read_str(&r_msg);
		int32_t data_len = -1;
		const uint8_t *data = NULL;

		if (mechanism == NULL || msg_read_i32(&r_msg, &data_len) != 0 ||
		    (data_len >= 0 && (data = msg_read_bytes(&r_msg, (size_t)data_len)) == NULL) || data_len < 0)
			return login_fatal(r, SQLSTATE_PROTOCOL_VIOLATION, "malformed SASLInitialResponse message");
		res = scram_server_handle_first(l->scram, mechanism, (const char *)data, (size_t)data_len, &reply,
						err, sizeof(err));
		if (res == AUTH_OK) {
			proto_put_auth(&io->out, AUTH_REQ_SASL_CONTINUE, reply, strlen(reply));
			free(reply);
			l->auth_step = LOGIN_AUTH_STEP_SASL_FINAL;
			return r->outcome = LOGIN_CHALLENGE_SENT;
		}
		break;
	}
	case LOGIN_AUTH_STEP_SASL_FINAL:
		res = scram_server_handle_final(l->scram, (const char *)body, len, &reply, err, sizeof(err));
		if (res == AUTH_OK) {
			proto_put_auth(&io->out, AUTH_REQ_SASL_FINAL, reply, strlen(reply));
			free(reply);
			return r->outcome = LOGIN_AUTHENTICATED;
		}
		break;
	default:
		return login_fatal(r, SQLSTATE_PROTOCOL_VIOLATION, "unexpected password message");
	}
	free(reply);
	if (res == AUTH_PROTOCOL_ERROR)
		return login_fatal(r, SQLSTATE_PROTOCOL_VIOLATION, "%s", err[0] ? err : "malformed SCRAM message");
	return login_auth_failed(r, user, err[0] ? err : "wrong password");
}

enum login_outcome login_process_auth(struct login *l, struct io *io, const char *user, struct login_result *r)
{
	struct iobuf *in = &io->in;
	const uint8_t *p;
	uint32_t mlen;

	memset(r, 0, sizeof(*r));
	if (iobuf_len(in) < PROTO_HEADER_LEN)
		return r->outcome = LOGIN_NEED_MORE;
	p = iobuf_head(in);
	mlen = get_u32(p + 1);
	if (p[0] != FE_PASSWORD)
		return login_fatal(r, SQLSTATE_PROTOCOL_VIOLATION, "expected password response, got message type %d",
				   p[0]);
	if (mlen < 4 || mlen > LOGIN_MAX_AUTH_MESSAGE)
		return login_fatal(r, SQLSTATE_PROTOCOL_VIOLATION, "invalid password message length %u", mlen);
	if (iobuf_len(in) < 1 + (size_t)mlen)
		return r->outcome = LOGIN_NEED_MORE;
	/*
	 * Take the message out of the buffer before acting on it: a login can
	 * complete as soon as the caller goes on, and whatever is still buffered
	 * then is relayed to the backend as the client's first query.
	 */
	uint8_t body[LOGIN_MAX_AUTH_MESSAGE];

	memcpy(body, p + PROTO_HEADER_LEN, mlen - 4);
	iobuf_consume(in, 1 + (size_t)mlen);
	return login_password_message(l, io, user, body, mlen - 4, r);
}

/* ------------------------------------------------- startup parameters */

int login_options_parse(const char *options, struct session_params *params, char *err, size_t errlen)
{
	char word[4096];
	bool expect_c_value = false;
	const char *p = options;

	for (;;) {
		size_t n = 0;

		while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
			p++;
		if (*p == '\0')
			break;
		while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
			if (*p == '\\' && p[1])
				p++;
			if (n + 1 >= sizeof(word)) {
				snprintf(err, errlen, "options value too long");
				return -1;
			}
			word[n++] = *p++;
		}
		word[n] = '\0';

		char *setting = NULL;

		if (expect_c_value) {
			setting = word;
			expect_c_value = false;
		} else if (strcmp(word, "-c") == 0) {
			expect_c_value = true;
			continue;
		} else if (strncmp(word, "-c", 2) == 0) {
			setting = word + 2;
		} else if (strncmp(word, "--", 2) == 0) {
			setting = word + 2;
			/* PostgreSQL reads "--a-b=c" as a_b = c. */
			for (char *q = setting; *q && *q != '='; q++)
				if (*q == '-')
					*q = '_';
		} else {
			snprintf(err, errlen, "unsupported option \"%.200s\": pgmux accepts only -c name=value and --name=value",
				 word);
			return -1;
		}
		char *eq = strchr(setting, '=');

		if (eq == NULL || eq == setting) {
			snprintf(err, errlen, "invalid option \"%.200s\": expected name=value", setting);
			return -1;
		}
		*eq = '\0';
		session_params_put_startup(params, setting, eq + 1);
	}
	if (expect_c_value) {
		snprintf(err, errlen, "option -c requires a value");
		return -1;
	}
	return 0;
}

int login_grant(struct login *l, struct io *io, const struct startup_packet *startup, struct session_params *params,
		char *err, size_t errlen)
{
	login_end_exchange(l);
	for (int i = 0; i < startup->n_params; i++) {
		const char *name = startup->params[i].name;
		const char *value = startup->params[i].value;

		if (strcmp(name, "user") == 0 || strcmp(name, "database") == 0 || strcmp(name, "replication") == 0)
			continue;
		if (strcmp(name, "options") == 0) {
			if (login_options_parse(value, params, err, errlen) != 0)
				return -1;
			continue;
		}
		session_params_keep_startup(params, name, value);
	}
	proto_put_auth(&io->out, AUTH_REQ_OK, NULL, 0);
	return 0;
}

/* ---------------------------------------------------------------- the end */

void login_forget_secret(struct login *l)
{
	if (l->have_secret) {
		secret_clear(&l->secret);
		l->have_secret = false;
	}
}

void login_end_exchange(struct login *l)
{
	if (l->scram) {
		scram_server_free(l->scram);
		l->scram = NULL;
	}
	l->auth_step = LOGIN_AUTH_STEP_NONE;
}

void login_free(struct login *l)
{
	login_end_exchange(l);
	login_forget_secret(l);
	tls_context_unref(l->tls);
	l->tls = NULL;
}
