/*
 * client.h: one client connection: startup, TLS, authentication, waiting for
 * a backend, then relaying. Every change of state goes through
 * client_set_state(), which checks and logs it.
 */
#ifndef PGMUX_CLIENT_H
#define PGMUX_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "io.h"
#include "list.h"
#include "log.h"
#include "params.h"
#include "pool.h"
#include "proto.h"
#include "relay.h"
#include "secrets.h"
#include "strmap.h"

struct pool;
struct server;
struct tls_context;
struct worker;
struct scram_server;

enum client_state {
	CLIENT_STARTUP,       /* reading the startup packet (before or after TLS) */
	CLIENT_TLS_HANDSHAKE, /* answered 'S' to SSLRequest, handshaking */
	CLIENT_AUTH,          /* password exchange */
	CLIENT_WAITING,       /* queued for a backend (to log in, or for a transaction) */
	CLIENT_SETUP,         /* backend linked, pgmux brings its session state over first */
	CLIENT_ACTIVE,        /* relaying to and from its backend */
	CLIENT_IDLE,          /* logged in, between transactions, no backend (transaction pooling) */
	CLIENT_CLOSED,        /* waiting to be freed */
};

enum client_auth_step {
	AUTH_STEP_NONE,
	AUTH_STEP_MD5,
	AUTH_STEP_SASL_INITIAL,
	AUTH_STEP_SASL_FINAL,
};

struct client {
	struct list_node worker_node; /* owner's clients list, or its reap list */
	struct list_node wait_node;   /* pool waiters, or the worker's ready list (pool lock) */
	struct list_node cancel_node; /* cancel registry (its own lock) */
	uint64_t id;
	uint32_t cancel_pid;
	uint32_t cancel_key;
	enum client_state state;
	struct worker *worker;
	struct io io;
	struct tls_context *tls;
	char peer[64];

	struct startup_packet startup;
	bool have_startup;
	bool ssl_asked;   /* an SSLRequest was answered: another one is an unknown protocol version */
	bool gss_asked;   /* likewise a GSSENCRequest */
	struct secret secret;
	bool have_secret;
	enum client_auth_step auth_step;
	struct scram_server *scram;
	uint8_t md5_salt[4];

	enum pool_endpoint endpoint; /* which port it came in on: writer or reader */
	struct pool *pool;
	struct server *server;
	bool read_paused; /* back-pressure: the server's output is full */
	bool logged_in;   /* the client has had its ReadyForQuery after authentication */
	bool transaction_mode; /* pool_mode at login: borrow a backend per transaction */

	/* Session state pgmux carries from backend to backend (transaction pooling). */
	char *reported[PARAMS_N_CARRIED]; /* carried reported parameters as the client last saw them (NULL: unset) */
	struct strmap params_set;      /* other parameters: from the startup packet (options -c ...), then as
	                                * the session's own SETs left them (read back, see settings_dirty) */
	struct strmap params_startup;  /* params_set as the startup packet gave it: what RESET goes back to */
	uint64_t params_fingerprint;   /* of the two maps above, valid when params_fingerprint_valid */
	bool params_fingerprint_valid;
	struct relay relay;            /* its prepared statements and what it sent that waits (relay.h) */
	const char *pin_reason;        /* why the session is pinned to its backend, or NULL; atomic store */
	char pin_detail[64];
	bool settings_dirty;           /* a statement may have SET an untracked parameter: read the
	                                * session's settings back before the backend goes */
	bool state_unverified;         /* it ran code pgmux cannot read (SQL_EFFECT_OPAQUE): the read-back
	                                * verifies the session too, and the backend is RESET ALL after */
	struct strmap *custom_pending; /* custom (dotted) parameters SET or RESET since the last read-back
	                                * (keys only; NULL when none): pg_settings does not list them */
	bool transaction_lost;         /* its backend died inside a transaction block */
	bool fresh_backend;            /* its backend died under it: its next one is a new connection,
	                                * not one another client just used (pool_borrow()) */
	char *lost_detail;             /* why, for the DETAIL of the error its next statement gets */
	bool cancel_deferred;          /* a cancel came while pgmux prepared the backend: forward it
	                                * once the client's own statements are on their way */
	struct event *wait_timer;      /* connection_borrow_timeout while WAITING */
	uint64_t last_activity_usec;
	uint64_t backend_waiting_since_usec; /* its backend waits for it since (janitor; 0: it does not) */

	uint64_t wait_since_usec;      /* when it joined its pool's waiters (pool lock) */

	/* Set by the pool, under its lock, when a wait ends. */
	struct server *assigned_server;
	char *assigned_error;
	char assigned_sqlstate[6];

	struct event *timer; /* login timeout */
	int backend_pid;     /* of the backend serving it now (0: none); atomic, for SHOW CLIENTS */
	bool admin;          /* a session of the admin console (database "pgmux") */
	struct admin_session *admin_session;
	uint64_t connect_usec;
};

#define log_client(level, c, fmt, ...) \
	log_at(level, "C-%llu " LOG_NAME "@" LOG_NAME " %s: " fmt, (unsigned long long)(c)->id, \
	       (c)->have_startup ? (c)->startup.user : "-", (c)->have_startup ? (c)->startup.database : "-", \
	       (c)->peer, ##__VA_ARGS__)

/* Take over an accepted socket on worker w. */
void client_accept(struct worker *w, int fd, const struct sockaddr *addr, socklen_t addrlen,
		   enum pool_endpoint endpoint);

/* The pool ended this client's wait (assigned_server or assigned_error is set). */
void client_wait_ended(struct client *c);

/* Cancel what the client's backend is running (a CancelRequest named this client). */
void client_cancel_backend(struct client *c);

/* The server linked to c has data for it or drained: resume/pause reading. */
void client_flush(struct client *c);

/* Send a FATAL ErrorResponse (best effort, non-blocking) and close. */
void client_fatal(struct client *c, const char *sqlstate, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

void client_close(struct client *c, const char *reason);
void client_free(struct client *c);

/* Graceful shutdown: close clients that are not in a session yet. */
void client_drain(struct client *c);

/* The client's transaction is over: give its backend back to the pool (the last use of it). */
void client_release_server(struct client *c);

/* Periodic checks on a worker's clients (idle_client_timeout). */
void client_janitor(struct client *c, uint64_t now_usec);

/* Record a carried parameter's value as the client sees it now (ParameterStatus, startup). */
void client_set_reported(struct client *c, int index, const char *value);

/* Sessions pinned to their backend, across workers (for SHOW and logs). */
extern int64_t client_pinned_sessions;

const char *client_state_name(enum client_state state);

#endif
