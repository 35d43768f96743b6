/*
 * login.h: a client connection before it is logged in: its first packet
 * (SSLRequest, GSSENCRequest, CancelRequest or StartupMessage), the answer
 * that starts TLS, the password exchange (trust, MD5, SCRAM-SHA-256 and
 * -PLUS) and the "options" startup parameter. It has no state machine and
 * logs nothing: each call reads and writes the client's socket buffers and
 * returns what happened (enum login_outcome); client.c changes the client's
 * state, logs and goes on.
 */
#ifndef PGMUX_LOGIN_H
#define PGMUX_LOGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "secrets.h"

struct config;
struct io;
struct scram_server;
struct session_params;
struct tls_context;

/* Password messages are small; PostgreSQL's own limit for them is similar. */
#define LOGIN_MAX_AUTH_MESSAGE 10000

enum login_auth_step {
	LOGIN_AUTH_STEP_NONE,
	LOGIN_AUTH_STEP_MD5,
	LOGIN_AUTH_STEP_SASL_INITIAL,
	LOGIN_AUTH_STEP_SASL_FINAL,
};

/* What the login of one client holds; zeroed with the client. */
struct event;

struct login {
	bool ssl_asked; /* an SSLRequest was answered: another one is an unknown protocol version */
	bool gss_asked; /* likewise a GSSENCRequest */
	struct tls_context *tls; /* the context an SSLRequest was answered with (a reference), or NULL */
	struct secret secret;    /* the user's, from the secrets store (until login_forget_secret()) */
	bool have_secret;
	enum login_auth_step auth_step;
	struct scram_server *scram;
	uint8_t md5_salt[4];
	struct event *timeout;   /* the login timeout: client.c makes and frees it (here, not in every client) */
};

enum login_outcome {
	LOGIN_NEED_MORE,      /* nothing to act on until more bytes arrive */
	LOGIN_NEXT,           /* a packet was handled (an encryption request answered 'N'): read on */
	LOGIN_TLS_STARTED,    /* 'S' went out and the server side of the TLS handshake started */
	LOGIN_CANCEL,         /* a CancelRequest: cancel_pid and cancel_key if cancel_valid; then close */
	LOGIN_STARTUP_DONE,   /* the StartupMessage is accepted: authentication begins (login_begin_auth()) */
	LOGIN_CHALLENGE_SENT, /* an authentication request is in the output: flush it, wait for the answer */
	LOGIN_AUTHENTICATED,  /* the client proved who it is (or trust): login_grant() is next */
	LOGIN_AUTH_FAILED,    /* the password is wrong or the user unknown: FATAL, and log why */
	LOGIN_FATAL,          /* refused: FATAL sqlstate message, then close */
	LOGIN_CLOSE,          /* close without a word (what was to be sent is flushed); message says why */
};

struct login_result {
	enum login_outcome outcome;
	const char *sqlstate;   /* LOGIN_FATAL, LOGIN_AUTH_FAILED */
	char message[512];      /* LOGIN_FATAL, LOGIN_AUTH_FAILED: the error's text; LOGIN_CLOSE: the reason */
	char why[256];          /* LOGIN_AUTH_FAILED: what failed, for the log only */
	bool startup_parsed;    /* the StartupMessage was parsed into *startup (whatever came of it) */
	bool tls_required;      /* LOGIN_FATAL: refused because require_tls wants TLS and it has none */
	uint32_t version;       /* the StartupMessage's protocol version */
	bool cancel_valid;      /* LOGIN_CANCEL: the request had the length of one */
	uint32_t cancel_pid;
	uint32_t cancel_key;
};

/*
 * Act on the first packet in io->in, in PostgreSQL's order and with its
 * answers (ProcessStartupPacket()): a bad length closes without a word; an
 * SSLRequest or GSSENCRequest is answered at once ('S' starts TLS with the
 * current context, tls_get_current()), each only once; a StartupMessage is
 * parsed into *startup and checked (protocol 3.x, require_tls, no
 * replication), and a newer 3.x minor or _pq_ options are answered with
 * NegotiateProtocolVersion. An encryption request or a StartupMessage leaves
 * io->in before it is acted on, so what follows it is the client's next
 * message; a CancelRequest stays (the client is closed).
 */
enum login_outcome login_process_startup(struct login *l, struct io *io, const struct config *cfg,
					 struct startup_packet *startup, struct login_result *r);

/*
 * Begin the password exchange cfg->client_auth asks for, for user: look up
 * the user's secret and queue the first request. Trust needs none: it
 * returns LOGIN_AUTHENTICATED at once. An unknown user gets a SCRAM exchange
 * that fails at its end, like a wrong password.
 */
enum login_outcome login_begin_auth(struct login *l, struct io *io, const struct config *cfg, const char *user,
				    struct login_result *r);

/* Act on the client's next PasswordMessage (MD5, SASLInitialResponse or SASLResponse) in io->in. */
enum login_outcome login_process_auth(struct login *l, struct io *io, const char *user, struct login_result *r);

/*
 * The client is authenticated: end the exchange, take its startup
 * parameters into p (the carried reported ones, and the others, including
 * "-c name=value" and "--name=value" from options) and queue
 * AuthenticationOk. Returns -1 with err set, having queued nothing, for an
 * options string pgmux cannot honour. p may point to startup's values
 * (session_params_keep_startup()): startup must outlive p.
 */
int login_grant(struct login *l, struct io *io, const struct startup_packet *startup, struct session_params *p,
		char *err, size_t errlen);

/*
 * Turn the "options" startup parameter (as PostgreSQL reads it: words
 * separated by white space, a backslash escapes the next character) into
 * settings in p. Only "-c name=value" and "--name=value" set parameters
 * ("--a-b=c" sets a_b); pgmux refuses other switches rather than drop them
 * silently. Returns -1 with err set.
 */
int login_options_parse(const char *options, struct session_params *p, char *err, size_t errlen);

/* The pool has what backend logins need: the client's copy of the password goes. */
void login_forget_secret(struct login *l);

/* The exchange is over (done, or the client closed): free what it held. */
void login_end_exchange(struct login *l);

/* Everything the login still holds (the client is freed). */
void login_free(struct login *l);

#endif
