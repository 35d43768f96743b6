/*
 * client.h: one client connection: its life from accept to close, waiting
 * for a backend, then relaying. Its login (login.h) and the session state it
 * carries between backends (session.h) are modules of their own that
 * client.c drives. Every change of state goes through client_set_state(),
 * which checks and logs it.
 */
#ifndef PGMUX_CLIENT_H
#define PGMUX_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "cancel.h"
#include "io.h"
#include "list.h"
#include "log.h"
#include "login.h"
#include "params.h"
#include "pool.h"
#include "proto.h"
#include "relay.h"
#include "sqlscan.h"
#include "session.h"
#include "strmap.h"

struct pool;
struct server;
struct worker;

/*
 * LISTEN through pgmux (transaction pooling; listen.h, client_listen.c):
 * the channels the client listens on, the replies to its LISTEN held until
 * the LISTEN connection listens, and the notifications that wait for it to
 * be idle. Made on the client's first LISTEN (or notification) and freed
 * once it has nothing left: most clients never LISTEN.
 */
struct client_listen {
	char (*channels)[SQL_LISTEN_NAME_MAX + 1];
	int n_channels, cap_channels;
	bool waiting;           /* replies are held: its input waits too */
	struct iobuf held;      /* the replies from the first one that waits on */
	char (*added)[SQL_LISTEN_NAME_MAX + 1]; /* channels its waiting LISTENs added, undone if they fail */
	int n_added, cap_added;
	struct iobuf pending;   /* NotificationResponses for when it is idle */
	int n_pending;
	/*
	 * A LISTEN ran on the backend in this transaction (transaction pooling,
	 * SQL_SCAN_LISTEN_HELD): when the transaction ends, its channels are
	 * taken over through the hub (client_listen_handover.c) before the
	 * backend goes back, with the client's ReadyForQuery held meanwhile.
	 */
	bool on_backend;
	/*
	 * The mirror (client_listen_mirror()): the channels it held through the
	 * hub when this transaction began, LISTENed on the backend by pgmux's
	 * setup query, so that an UNLISTEN the transaction runs there takes
	 * effect at its commit, as in PostgreSQL: the takeover at its end reads
	 * which of them the backend still listens on. At most
	 * max_client_listen_channels; n_mirrored is 0 between transactions,
	 * except in a session pinned in a mirrored transaction, whose backend
	 * listens on them from then on (client_listen_mirror_pinned()).
	 * unlisten_deferred: an UNLISTEN or DISCARD ALL ran in it, or code
	 * pgmux cannot read (which may), not yet read back. listen_ran: a
	 * LISTEN ran in it. With neither, the transaction changed nothing the
	 * hub holds for it.
	 */
	char (*mirrored)[SQL_LISTEN_NAME_MAX + 1];
	int n_mirrored, cap_mirrored;
	bool unlisten_deferred, listen_ran;
	bool rfq_held;
	uint8_t rfq[6];
	struct client_handover *handover; /* while its channels are taken over */
};

/*
 * The error a client's next statement gets when its backend died inside its
 * transaction (transaction_lost): the server's SQLSTATE and message when it
 * ended the session with a FATAL, else (message NULL) 08006 and pgmux's words.
 */
struct client_lost {
	char *message;
	char *detail;
	char sqlstate[6];
};

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

/*
 * Pointers and 64-bit fields first, the small ones together at the end: an
 * idle client is mostly this struct, so it has no padding to speak of.
 * What only some clients need (LISTEN, the login, the admin session, a lost
 * transaction's error text) is allocated on need and pointed to.
 */
struct client {
	struct list_node worker_node; /* owner's clients list, or its reap list */
	struct pool_waiter waiter;    /* waiting for a backend (pool.c) */
	struct cancel_entry cancel;   /* cancel registry (its own lock): the client's (pid, key) */
	uint64_t id;
	struct worker *worker;
	struct io io;

	struct startup_packet startup; /* who it is: user, database, its parameters (when have_startup) */
	struct login *login;           /* TLS request, secret and password exchange (login.h); freed
	                                * once it is logged in (NULL from then on) */

	struct pool *pool;
	struct server *server;

	/* Session state pgmux carries from backend to backend (transaction pooling). */
	struct session_params params;  /* its parameters (session.h); read back when settings_dirty */
	struct relay relay;            /* its prepared statements and what it sent that waits (relay.h) */
	const char *pin_reason;        /* why the session is pinned to its backend, or NULL; atomic store */
	char *pin_detail;              /* what pinned it, when there is more to say than the reason (or NULL) */
	struct strmap *custom_pending; /* custom (dotted) parameters SET or RESET since the last read-back
	                                * (keys only; NULL when none): pg_settings does not list them */
	struct iobuf first_batch;      /* what it sent to its backend since the link, as it sent it, while
	                                * batch_recording (at most CLIENT_RESEND_MAX bytes) */
	struct client_lost *lost;      /* the error its next statement gets (transaction_lost; NULL: none) */
	struct client_wait *wait;      /* connection_borrow_timeout while WAITING (client_backend.c) */
	uint64_t last_activity_usec;
	uint64_t backend_waiting_since_usec; /* its backend waits for it since (janitor; 0: it does not) */

	struct admin_session *admin_session;
	uint64_t connect_usec;
	uint64_t borrow_start_usec;    /* when it asked for a server connection (0: it is not waiting); stats.c */
	uint64_t txn_start_usec;       /* the first message of its transaction (0: none in progress); stats.c */
	struct client_listen *listen;  /* LISTEN held by pgmux (client_listen.c); NULL while it has none */

	enum client_state state;
	enum pool_endpoint endpoint;   /* which port it came in on: writer or reader */
	int backend_pid;               /* of the backend serving it now (0: none); atomic, for SHOW CLIENTS */
	char fatal_sqlstate[6];        /* the SQLSTATE of the FATAL it was sent, for the closing line ("": none) */
	uint8_t resends;               /* times this transaction's first batch went to another backend */
	bool have_startup;
	bool read_paused;              /* back-pressure: the server's output is full */
	bool logged_in;                /* the client has had its ReadyForQuery after authentication */
	bool transaction_mode;         /* pool_mode at login: borrow a backend per transaction */
	bool settings_dirty;           /* a statement may have SET an untracked parameter: read the
	                                * session's settings back before the backend goes */
	bool state_unverified;         /* it ran code pgmux cannot read (SQL_EFFECT_OPAQUE): the read-back
	                                * verifies the session too, and the backend is RESET ALL after */
	bool retiring;                 /* a cutover began: closed once its transaction ends (client_retire_for_cutover()) */
	bool transaction_lost;         /* its backend died inside a transaction block */
	bool fresh_backend;            /* its backend died under it: its next one is a new connection,
	                                * not one another client just used (pool_borrow()) */
	bool batch_recording;          /* transaction pooling: first_batch is all it sent in this transaction */
	bool cancel_deferred;          /* a cancel came while pgmux prepared the backend: forward it
	                                * once the client's own statements are on their way */
	bool admin;                    /* a session of the admin console (database "pgmux") */
	char peer[];                   /* "address:port", for logs and SHOW CLIENTS (allocated with it) */
};

/*
 * A line about client c: its id, user, database and address are fields of
 * the line (a "C-N user@db address: " prefix in text mode), and so are the
 * SQLSTATE it was sent and the reason, where a line has them (else NULL).
 */
#define log_client_because(level, c, sqlstate_, reason_, fmt, ...) \
	do { \
		if ((level) <= log_level_now()) { \
			const struct log_fields log_fields_ = { \
				.subject = LOG_SUBJECT_CLIENT, .id = (c)->id, \
				.user = (c)->have_startup ? (c)->startup.user : NULL, \
				.database = (c)->have_startup ? (c)->startup.database : NULL, \
				.remote = (c)->peer, .sqlstate = (sqlstate_), .reason = (reason_) }; \
			log_write_fields((level), &log_fields_, fmt, ##__VA_ARGS__); \
		} \
	} while (0)

#define log_client(level, c, fmt, ...) log_client_because(level, c, NULL, NULL, fmt, ##__VA_ARGS__)

/*
 * The admin console (admin.c, a layer above): what a session of the database
 * ADMIN_DATABASE runs instead of borrowing backends. Installed at start-up.
 */
#define ADMIN_DATABASE "pgmux"

struct client_console {
	void (*login)(struct client *c);         /* authenticated: ParameterStatus, BackendKeyData, ReadyForQuery */
	bool (*process_input)(struct client *c); /* act on buffered messages; false if c was closed */
	void (*session_free)(struct client *c);  /* free c->admin_session */
};

void client_set_console(const struct client_console *console);

/* Take over an accepted socket on worker w. */
void client_accept(struct worker *w, int fd, const struct sockaddr *addr, socklen_t addrlen,
		   enum pool_endpoint endpoint);

/* The pool ended this client's wait (its waiter's assigned or error is set): the waiter's ended callback. */
void client_wait_ended(struct pool_waiter *waiter);

/* Cancel what the client's backend is running (a CancelRequest named this client). */
void client_cancel_backend(struct client *c);

/* The server linked to c has data for it or drained: resume/pause reading. */
void client_flush(struct client *c);

/* Send a FATAL ErrorResponse (best effort, non-blocking) and close. */
void client_fatal(struct client *c, const char *sqlstate, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

void client_close(struct client *c, const char *reason);
void client_free(struct client *c);

/*
 * Graceful shutdown or hand-over: close c now with FATAL 57P01 if it is
 * between transactions (transaction pooling) and has sent nothing for a
 * second; a transaction, a session (session pooling) or a login in progress
 * goes on, and the end of the transaction, or the janitor, closes it later.
 */
void client_drain(struct client *c);

/*
 * Spreading clients over the workers (worker_spread_percent, worker.c).
 * client_consider_move(): c fell idle between transactions; if its worker
 * should give clients away and c holds nothing that ties it to the worker,
 * it is queued to move (the reaper calls client_move() after this pass).
 * client_move() detaches it and posts it to the other worker, whose
 * client_adopt() attaches it there (WORKER_MSG_ADOPT).
 */
void client_consider_move(struct client *c);
void client_move(struct client *c, struct worker *to);
void client_adopt(struct worker *w, struct client *c);

/* The client's transaction is over: give its backend back to the pool (the last use of it). */
void client_release_server(struct client *c);

/* Periodic checks on a worker's clients (idle_client_timeout). */
void client_janitor(struct client *c, uint64_t now_usec);

/* Record a carried parameter's value as the client sees it now (ParameterStatus, startup). */
void client_set_reported(struct client *c, int index, const char *value);

/* ---- LISTEN held by pgmux (client_listen.c) */

/* Notifications wait in the client's own queue, where they are counted, while this much output waits. */
#define CLIENT_NOTIFY_OUTPUT_LIMIT (256 * 1024)

/* What the relay hands over of a LISTEN or UNLISTEN pgmux answers (relay_listen_apply). */
enum relay_listen_status client_listen_apply(void *arg, const struct sql_listen_command *cmds, int n,
					     struct relay_refusal *why);
/* After relay_listen() answered into io.out: hold the replies from wait_at on if they must wait. */
void client_listen_hold(struct client *c, size_t wait_at);
/* The LISTEN connection listens on what c asked for (error NULL), or could not. */
void client_listen_ready(struct client *c, const char *error);
/* A NotificationResponse for c: now if it is idle, else once it is (bounded). Returns false if c was closed. */
bool client_listen_notify(struct client *c, const uint8_t *msg, size_t len);
/* c is idle now: the notifications that waited go out after what it was sent. */
void client_listen_idle(struct client *c);
/* The UNLISTENs (among other statements, as in a reset query) of a text that goes to c's backend. */
void client_listen_unlisten_text(struct client *c, const char *sql, size_t len);
/* UNLISTEN * (DISCARD ALL, the client leaves). */
void client_listen_forget(struct client *c);
/*
 * c (transaction pooling, holding channels through the hub) begins a
 * transaction on a backend: when its first batch may UNLISTEN or open a
 * transaction block, append to sql a LISTEN of each channel it holds, for
 * the setup query that runs before the batch, and note them mirrored.
 * Returns whether it did.
 */
bool client_listen_mirror(struct client *c, struct iobuf *sql);
/*
 * The mirrored transaction's session is pinned: the hub goes on delivering
 * the mirrored channels, until an UNLISTEN hands one to the backend (which
 * listens on it); all of them at once if the transaction UNLISTENed already.
 */
void client_listen_mirror_pinned(struct client *c);
/* The queued notifications of channel are dropped (its UNLISTEN took effect). */
void client_listen_drop_pending(struct client *c, const char *channel);
void client_listen_free(struct client *c);
/* c's LISTEN state, made if it has none yet. */
struct client_listen *client_listen_state(struct client *c);
/* Does c listen on channel through pgmux? */
bool client_listen_has(const struct client *c, const char *channel);
/* Note channel in c's list (subscribed already); remove one (and unsubscribe). */
void client_listen_add(struct client *c, const char *channel);
void client_listen_remove(struct client *c, const char *channel);
/* A NotificationResponse for c, wherever it came from: now if idle, else queued (bounded). */
bool client_listen_queue(struct client *c, const uint8_t *msg, size_t len);

/* ---- LISTEN run on a backend in a transaction, taken over at its end (client_listen_handover.c) */

/* How long a takeover may take before pgmux gives up on the backend (closes it). */
#define CLIENT_LISTEN_HANDOVER_TIMEOUT_MS 5000
/* The channel of the markers; the hub listens on it while a takeover waits for one. */
#define CLIENT_LISTEN_SYNC_CHANNEL "pgmux.sync"

/* The transaction's ReadyForQuery (the last bytes of c's output) waits for the takeover. */
void client_listen_hold_rfq(struct client *c);
/* The held ReadyForQuery goes to the client's output (before the notifications that wait). */
void client_listen_unhold_rfq(struct client *c);
/* Take over what backend s (linked, idle) listens on. Returns false when there is nothing to take over. */
bool client_listen_handover_begin(struct client *c, struct server *s);
/* The hub's answer to the takeover's subscriptions. Returns false if c is not waiting for one. */
bool client_listen_handover_ready(struct client *c, const char *error);
/* A notification from the hub during a takeover: false when it is not for the client (yet). */
bool client_listen_handover_filter(struct client *c, const uint8_t *msg, size_t len);
/* The backend was lost during the takeover (it is unlinked already). */
void client_listen_handover_lost(struct client *c, const char *why);
/* The client leaves: the takeover ends, its backend is closed (it still listens). */
void client_listen_handover_free(struct client *c);

/* Sessions pinned to their backend, across workers (for SHOW and logs). */
extern int64_t client_pinned_sessions;

/*
 * A cutover began. A client that holds its backend beyond a transaction
 * (session pooling, or a pinned session) cannot move to the new server: it
 * ends the transaction it is in on the old one and is then closed with
 * FATAL 57P01 "pgmux moved to a new server; reconnect", at once when it is
 * between transactions. Until then it counts in client_retiring_sessions,
 * which the cutover waits for.
 */
void client_retire_for_cutover(struct client *c);
extern int64_t client_retiring_sessions;

const char *client_state_name(enum client_state state);

#endif
