/*
 * client.c: client connections (see client.h). The life of one:
 * STARTUP (SSLRequest -> TLS_HANDSHAKE -> STARTUP again, or a CancelRequest)
 * -> AUTH (trust, MD5 or SCRAM against the user's secret) -> WAITING for a
 * backend from the pool -> SETUP (the client's session state is brought over
 * to that backend) -> ACTIVE (relaying) -> CLOSED. With transaction pooling a
 * client goes back to IDLE, without a backend, each time a transaction ends,
 * and through WAITING and SETUP again when the next one starts.
 *
 * What the login checks and answers is login.c's, and the SQL that carries
 * a session's state to a backend and reads it back is session.c's: this file
 * drives both, acting on what they return.
 */
#include "client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/util.h>

#include "cancel.h"
#include "login.h"
#include "params.h"
#include "pgmux.h"
#include "pool.h"
#include "prepared.h"
#include "relay.h"
#include "server.h"
#include "session.h"
#include "sqlscan.h"
#include "client_stats.h"
#include "util.h"
#include "worker.h"

/* Stop reading from the client while this much is queued for its backend. */
#define CLIENT_SERVER_HIGH_WATER (256 * 1024)
#define CLIENT_READ_BUDGET (256 * 1024)
/*
 * Stop reading from a client while this much output waits for it: one that
 * sends and never reads (Syncs pgmux answers alone, say) would grow it for
 * good. Reading resumes once the output has gone (client_flush()).
 */
#define CLIENT_OUTPUT_HIGH_WATER (256 * 1024)
/* Input a client may queue before it has a backend (pipelined early queries). */
#define CLIENT_EARLY_INPUT_LIMIT (64 * 1024)

static uint64_t next_client_id = 1;
int64_t client_pinned_sessions;

/* The admin console's session (admin.c), installed before the workers start. */
static const struct client_console *console;

void client_set_console(const struct client_console *ops)
{
	console = ops;
}

#define BORROW_TIMEOUT_MESSAGE "timed out waiting to acquire database connection"

static const char *const client_state_names[] = {
	[CLIENT_STARTUP] = "startup", [CLIENT_TLS_HANDSHAKE] = "tls-handshake",
	[CLIENT_AUTH] = "auth",       [CLIENT_WAITING] = "waiting",
	[CLIENT_SETUP] = "setup",     [CLIENT_ACTIVE] = "active",
	[CLIENT_IDLE] = "idle",       [CLIENT_CLOSED] = "closed",
};

static void client_on_event(evutil_socket_t fd, short what, void *arg);
static bool client_process_input(struct client *c);
static void client_resume(struct client *c);
static void client_server_lost(struct client *c, struct server *s, const char *sqlstate, const char *message);
static const struct server_client_ops client_server_ops;
static const struct reply_hooks client_reply_hooks;
static void client_pin(struct client *c, const struct sql_scan_result *scan);
static void client_link(struct client *c, struct server *s);
static void client_fail_batch(struct client *c, const char *sqlstate, const char *message);
static void client_fail_batch_detail(struct client *c, const char *sqlstate, const char *message,
				     const char *detail);
static void client_arm_wait_timer(struct client *c);
static void client_borrow(struct client *c);

const char *client_state_name(enum client_state state)
{
	return client_state_names[state];
}

/* Not yet authenticated: what max_login_connections counts. */
static bool client_state_logging_in(enum client_state state)
{
	return state == CLIENT_STARTUP || state == CLIENT_TLS_HANDSHAKE || state == CLIENT_AUTH;
}

/* In a transaction or waiting for a backend (for the worker's busy polling). */
static bool client_state_busy(enum client_state state)
{
	return state == CLIENT_WAITING || state == CLIENT_SETUP || state == CLIENT_ACTIVE;
}

/*
 * The one place a client changes state. Transitions are few: forward only,
 * except that STARTUP follows TLS_HANDSHAKE and that transaction pooling
 * cycles IDLE -> WAITING -> SETUP -> ACTIVE -> IDLE, with ACTIVE -> SETUP ->
 * IDLE while the session's settings are read back (client_release_server()).
 */
static void client_set_state(struct client *c, enum client_state next)
{
	static const unsigned allowed[] = {
		[CLIENT_STARTUP] = 1u << CLIENT_TLS_HANDSHAKE | 1u << CLIENT_AUTH | 1u << CLIENT_CLOSED,
		[CLIENT_TLS_HANDSHAKE] = 1u << CLIENT_STARTUP | 1u << CLIENT_CLOSED,
		[CLIENT_AUTH] = 1u << CLIENT_WAITING | 1u << CLIENT_CLOSED,
		[CLIENT_WAITING] = 1u << CLIENT_SETUP | 1u << CLIENT_ACTIVE | 1u << CLIENT_IDLE | 1u << CLIENT_CLOSED,
		[CLIENT_SETUP] = 1u << CLIENT_ACTIVE | 1u << CLIENT_WAITING | 1u << CLIENT_IDLE | 1u << CLIENT_CLOSED,
		/* ACTIVE -> SETUP: the session's settings are read back before the backend goes. */
		[CLIENT_ACTIVE] = 1u << CLIENT_SETUP | 1u << CLIENT_IDLE | 1u << CLIENT_CLOSED,
		[CLIENT_IDLE] = 1u << CLIENT_WAITING | 1u << CLIENT_CLOSED,
		[CLIENT_CLOSED] = 0,
	};

	if (!(allowed[c->state] & (1u << next))) {
		log_client(LOG_LEVEL_ERROR, c, "invalid state change %s -> %s", client_state_names[c->state],
			   client_state_names[next]);
		abort();
	}
	log_client(LOG_LEVEL_DEBUG, c, "%s -> %s", client_state_names[c->state], client_state_names[next]);
	/* Back to idle: whatever the client's statements were, a cancel held for them is void. */
	if (next == CLIENT_IDLE)
		c->cancel_deferred = false;
	if (client_state_busy(c->state) != client_state_busy(next))
		c->worker->n_busy += client_state_busy(next) ? 1 : -1;
	if (client_state_logging_in(c->state) && !client_state_logging_in(next))
		__atomic_sub_fetch(&pgmux_login_count, 1, __ATOMIC_RELAXED);
	/* Atomic because SHOW CLIENTS reads it from another worker. */
	__atomic_store_n(&c->state, next, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ output */

/*
 * Must pgmux stop reading from c for now? While its own output is not taken,
 * while its backend's output is full, while a message waits for an earlier
 * batch's answer, or while max_pending_replies replies are owed to it: each
 * message it pipelines adds one, and a client that sends them faster than
 * the backend answers (behind a long statement, say) would grow the queue
 * without bound. PostgreSQL stops reading a client in the same way, through
 * TCP, when its own output is full.
 */
static bool client_input_blocked(const struct client *c)
{
	const struct server *s = c->server;

	if (io_pending_output(&c->io) >= CLIENT_OUTPUT_HIGH_WATER)
		return true;
	if (s == NULL)
		return false;
	return c->relay.waiting || server_output_pending(s) >= CLIENT_SERVER_HIGH_WATER ||
	       (c->transaction_mode && server_replies_pending(s) >= (uint32_t)config_current()->max_pending_replies);
}

void client_flush(struct client *c)
{
	struct server *s = c->server;

	if (c->state == CLIENT_CLOSED)
		return;
	switch (io_flush(&c->io)) {
	case IO_OK:
		/* Drained: the backend may send again. */
		if (s)
			server_resume_reading(s);
		/* And the client, if its unread output was what stopped it. */
		if (c->read_paused && !client_input_blocked(c)) {
			c->read_paused = false;
			io_want_read(&c->io, true);
		}
		break;
	case IO_AGAIN:
		break;
	case IO_EOF:
	case IO_ERROR:
		client_close(c, c->io.error[0] ? c->io.error : "write failed");
		break;
	}
}

/* A FATAL error (with an optional DETAIL), then close. */
static void client_fatal_detail(struct client *c, const char *sqlstate, const char *message, const char *detail)
{
	if (c->state == CLIENT_CLOSED)
		return;
	/*
	 * A client in the middle of a TLS handshake cannot be sent anything, nor
	 * one that has part of a server message and waits for the rest: an
	 * ErrorResponse would be read as the rest of that message.
	 */
	if (c->state != CLIENT_TLS_HANDSHAKE && !(c->server && c->server->forward_remaining > 0)) {
		proto_put_error(&c->io.out, "FATAL", sqlstate, message, detail, NULL);
		(void)io_flush(&c->io);
	}
	snprintf(c->fatal_sqlstate, sizeof(c->fatal_sqlstate), "%s", sqlstate);
	client_close(c, message);
}

static void client_vfatal(struct client *c, const char *sqlstate, const char *fmt, va_list ap)
{
	char message[512];

	vsnprintf(message, sizeof(message), fmt, ap);
	client_fatal_detail(c, sqlstate, message, NULL);
}

void client_fatal(struct client *c, const char *sqlstate, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	client_vfatal(c, sqlstate, fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------- lifecycle */

static void client_login_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;

	client_fatal(c, SQLSTATE_QUERY_CANCELED, "canceling authentication due to timeout");
}

void client_accept(struct worker *w, int fd, const struct sockaddr *addr, socklen_t addrlen,
		   enum pool_endpoint endpoint)
{
	const struct config *cfg = config_current();
	struct client *c = calloc(1, sizeof(*c));
	char host[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	struct timeval tv;

	if (c == NULL) {
		close(fd);
		return;
	}
	c->id = __atomic_fetch_add(&next_client_id, 1, __ATOMIC_RELAXED);
	c->worker = w;
	c->endpoint = endpoint;
	c->state = CLIENT_STARTUP;
	c->connect_usec = pgmux_now_usec();
	pool_waiter_init(&c->waiter, w, client_wait_ended);
	list_init(&c->cancel.node);
	list_append(&w->clients, &c->worker_node);
	__atomic_add_fetch(&pgmux_client_count, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&pgmux_login_count, 1, __ATOMIC_RELAXED);

	if (addr->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)addr)->sin_addr, host, sizeof(host));
		port = ntohs(((const struct sockaddr_in *)addr)->sin_port);
	} else if (addr->sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)addr)->sin6_addr, host, sizeof(host));
		port = ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
	}
	snprintf(c->peer, sizeof(c->peer), "%s:%d", host, port);
	(void)addrlen;

	evutil_make_socket_nonblocking(fd);
	io_set_nodelay(fd);
	io_init(&c->io, fd);
	c->timer = evtimer_new(w->base, client_login_timeout, c);
	if (c->timer == NULL || io_attach(&c->io, w->base, client_on_event, c) != 0) {
		client_close(c, "out of memory");
		return;
	}
	tv.tv_sec = cfg->client_login_timeout_ms / 1000;
	tv.tv_usec = (cfg->client_login_timeout_ms % 1000) * 1000;
	evtimer_add(c->timer, &tv);
	c->last_activity_usec = c->connect_usec;
	session_params_init(&c->params);
	relay_init(&c->relay, &client_reply_hooks, c);
	log_client(LOG_LEVEL_DEBUG, c, "new connection");
	STAT_INC(w, clients_accepted);
	if (pgmux_clients_open() > cfg->max_client_connections) {
		STAT_INC(w, refused_max_client_connections);
		client_fatal(c, SQLSTATE_TOO_MANY_CONNECTIONS,
			     "The maximum number of client connections to pgmux exceeded %d (max_client_connections)",
			     cfg->max_client_connections);
	} else if (pgmux_logins_open() > cfg->max_login_connections) {
		STAT_INC(w, refused_max_login_connections);
		client_fatal(c, SQLSTATE_TOO_MANY_CONNECTIONS,
			     "too many client connections are logging in to pgmux at once, more than %d "
			     "(max_login_connections)",
			     cfg->max_login_connections);
	}
}

void client_close(struct client *c, const char *reason)
{
	struct server *s = c->server;

	if (c->state == CLIENT_CLOSED)
		return;
	if (c->state == CLIENT_ACTIVE)
		log_client_because(LOG_LEVEL_DEBUG, c, c->fatal_sqlstate[0] ? c->fatal_sqlstate : NULL, reason,
				   "closing: %s", reason);
	else
		log_client_because(LOG_LEVEL_INFO, c, c->fatal_sqlstate[0] ? c->fatal_sqlstate : NULL, reason,
				   "closing during %s: %s", client_state_names[c->state], reason);
	client_set_state(c, CLIENT_CLOSED);
	if (c->timer) {
		event_free(c->timer);
		c->timer = NULL;
	}
	if (c->wait_timer) {
		event_free(c->wait_timer);
		c->wait_timer = NULL;
	}
	if (c->pin_reason)
		__atomic_sub_fetch(&client_pinned_sessions, 1, __ATOMIC_RELAXED);
	cancel_unregister(&c->cancel);
	pool_cancel_wait(&c->waiter);
	c->server = NULL;
	if (s)
		server_client_gone(s, !c->transaction_mode);
	if (c->pool) {
		pool_put(c->pool);
		c->pool = NULL;
	}
	login_end_exchange(&c->login);
	io_close(&c->io, true);
	list_del(&c->worker_node);
	list_append(&c->worker->reap_clients, &c->worker_node);
	worker_schedule_reap(c->worker);
	__atomic_sub_fetch(&pgmux_client_count, 1, __ATOMIC_RELAXED);
}

/* The custom parameters noted since the last read-back (client_scan_sql()) are read now, or never. */
static void client_drop_custom_pending(struct client *c)
{
	if (c->custom_pending) {
		params_clear(c->custom_pending);
		free(c->custom_pending);
		c->custom_pending = NULL;
	}
}

void client_free(struct client *c)
{
	if (c->have_startup)
		proto_startup_free(&c->startup);
	login_free(&c->login);
	free(c->waiter.error);
	free(c->lost_detail);
	if (c->admin_session)
		console->session_free(c);
	session_params_free(&c->params);
	client_drop_custom_pending(c);
	relay_free(&c->relay);
	free(c);
}

void client_drain(struct client *c)
{
	/*
	 * Sessions in progress may finish: with session pooling that is the whole
	 * session, with transaction pooling the current transaction (a client
	 * that gives its backend back while draining is closed then).
	 */
	if (!c->admin &&
	    (c->state == CLIENT_ACTIVE || c->state == CLIENT_SETUP || (c->state == CLIENT_WAITING && c->logged_in)))
		return;
	client_fatal(c, SQLSTATE_ADMIN_SHUTDOWN, "pgmux is shutting down");
}

/*
 * The backend linked to c failed (server_close(), unlinked already). With
 * transaction pooling the client's transaction fails with an ERROR and its
 * connection stays usable; a pinned or session-pooled client gets a FATAL
 * and is closed.
 */
static void client_server_lost(struct client *c, struct server *s, const char *sqlstate, const char *message)
{
	bool was_in_transaction = s->tx_status == 'T' || s->tx_status == 'E';

	if (c->server == s)
		c->server = NULL;
	if (c->state == CLIENT_CLOSED)
		return;
	if (s->forward_remaining > 0) {
		/* The client has part of a message of s: nothing can follow it (see client_vfatal()). */
		client_close(c, message);
		return;
	}
	if (s->reading_settings) {
		/* What the session SET lived only on that backend: it cannot go on as if nothing happened. */
		client_fatal(c, sqlstate, "lost the connection to the database server before pgmux could read the "
				 "session's settings: %s", message);
		return;
	}
	if (c->state == CLIENT_SETUP && c->logged_in && c->transaction_mode && !c->pin_reason) {
		/* Nothing of the client's reached that backend yet: try another. */
		log_client(LOG_LEVEL_INFO, c, "backend lost while being prepared (%s); borrowing another", message);
		client_set_state(c, CLIENT_WAITING);
		client_borrow(c);
		/* What it sent meanwhile is looked at from the loop (this may run inside its own processing). */
		if (c->state != CLIENT_CLOSED)
			io_schedule_read(&c->io);
		return;
	}
	/*
	 * With transaction pooling the client's session lives in pgmux, so it
	 * survives its backend: the transaction in flight fails with an error of
	 * class 08 and the next one gets another backend (a new writer after a
	 * failover). That needs the reply stream at a message boundary and at
	 * most one batch waiting for its ReadyForQuery. Sessions pinned to the
	 * backend, session pooling and anything else end here.
	 */
	if (!c->transaction_mode || c->pin_reason || !c->logged_in || c->state != CLIENT_ACTIVE ||
	    s->forward_remaining > 0 || s->frontend_remaining > 0 || s->replies.outstanding > 1) {
		client_fatal(c, sqlstate, "%s: %s",
			     c->pin_reason ? "the database connection of this pinned session was lost"
					   : "lost the connection to the database server",
			     message);
		return;
	}
	/*
	 * A client that ends its backends (pg_terminate_backend() of its own, in
	 * a loop, say) must not end the others' one after another: its next
	 * backend is a new connection, paid for by its own wait.
	 */
	c->fresh_backend = true;
	client_set_state(c, CLIENT_IDLE);
	if (c->read_paused) {
		c->read_paused = false;
		io_want_read(&c->io, true);
	}
	log_client_because(LOG_LEVEL_WARNING, c, sqlstate, message,
			   "backend lost mid-transaction (%s); the client's transaction fails", message);
	if (s->replies.outstanding > 0) {
		proto_put_error(&c->io.out, "ERROR", sqlstate, "the connection to the database server was lost; the transaction was rolled back",
				message, NULL);
		/* Messages sent after the failed batch began belong to it: drop them up to its Sync. */
		if (s->replies.unsynced)
			c->relay.discard_until_sync = true;
		else
			proto_put_ready(&c->io.out, 'I');
	} else if (was_in_transaction || s->replies.unsynced) {
		/* Nothing in flight, but an open transaction died: its next statement must fail. */
		c->transaction_lost = true;
		free(c->lost_detail);
		c->lost_detail = strdup(message); /* NULL if out of memory: the error just has no DETAIL */
	}
	client_flush(c);
	/* Messages already buffered (the rest of the batch, the next one) are looked at from the loop. */
	io_schedule_read(&c->io);
}

void client_cancel_backend(struct client *c)
{
	if (c->state == CLIENT_WAITING && c->logged_in) {
		/* Still queued for a backend: the statement never started; end the wait. */
		client_fail_batch(c, SQLSTATE_QUERY_CANCELED, "canceling statement due to user request");
		client_resume(c);
		return;
	}
	/*
	 * pgmux is bringing the backend to the client's session before the
	 * statement goes: a cancel now would fail that preparation and with it
	 * the session. It is forwarded once the statement is on its way.
	 */
	if (c->state == CLIENT_SETUP && c->server && c->server->state == SERVER_INTERNAL &&
	    !c->server->reading_settings) {
		log_client(LOG_LEVEL_DEBUG, c, "cancel request while the backend is prepared: deferred");
		c->cancel_deferred = true;
		return;
	}
	/* Reading the settings back: the client's statements are over, and the read must not fail. */
	if (c->server == NULL || c->server->reading_settings || !server_send_cancel(c->server, c->id)) {
		log_client(LOG_LEVEL_DEBUG, c, "cancel request: nothing to cancel");
		return;
	}
	log_client(LOG_LEVEL_INFO, c, "forwarding cancel request to backend pid %d", c->server->backend_pid);
}

/* ------------------------------------------------------------------- login */

static void client_authenticated(struct client *c);

/* The login module refused the client (login.h): say so and close. */
static void client_login_refused(struct client *c, const struct login_result *r)
{
	switch (r->outcome) {
	case LOGIN_AUTH_FAILED:
		STAT_INC(c->worker, logins_failed);
		log_client_because(LOG_LEVEL_WARNING, c, r->sqlstate, r->why, "authentication failed: %s", r->why);
		client_fatal(c, r->sqlstate, "%s", r->message);
		break;
	case LOGIN_FATAL:
		if (r->tls_required)
			STAT_INC(c->worker, refused_require_tls);
		client_fatal(c, r->sqlstate, "%s", r->message);
		break;
	default:
		client_close(c, r->message);
		break;
	}
}

static void client_begin_auth(struct client *c)
{
	struct login_result r;

	client_set_state(c, CLIENT_AUTH);
	switch (login_begin_auth(&c->login, &c->io, config_current(), c->startup.user, &r)) {
	case LOGIN_AUTHENTICATED:
		client_authenticated(c);
		break;
	case LOGIN_CHALLENGE_SENT:
		client_flush(c);
		break;
	default:
		client_login_refused(c, &r);
		break;
	}
}

/* The client's first packet (login_process_startup()). Returns false when c was closed or must wait for more bytes. */
static bool client_process_startup(struct client *c)
{
	struct login_result r;
	struct worker *w;
	uint64_t id;

	login_process_startup(&c->login, &c->io, config_current(), &c->startup, &r);
	if (r.startup_parsed)
		c->have_startup = true;
	switch (r.outcome) {
	case LOGIN_NEED_MORE:
		return false;
	case LOGIN_NEXT:
		return true;
	case LOGIN_TLS_STARTED:
		client_set_state(c, CLIENT_TLS_HANDSHAKE);
		return true;
	case LOGIN_CANCEL:
		if (r.cancel_valid && cancel_lookup(r.cancel_pid, r.cancel_key, &w, &id))
			worker_post_cancel(w, id);
		else
			log_client(LOG_LEVEL_DEBUG, c, "cancel request with an unknown key ignored");
		client_close(c, "cancel request handled");
		return false;
	case LOGIN_STARTUP_DONE:
		log_client(LOG_LEVEL_DEBUG, c, "startup packet: protocol 3.%u, %d parameters%s", r.version & 0xffff,
			   c->startup.n_params, c->io.ssl ? ", TLS" : "");
		/* With trust the login may complete here, and the client go on with what it sent next. */
		client_begin_auth(c);
		return c->state != CLIENT_CLOSED;
	default:
		client_login_refused(c, &r);
		return false;
	}
}

/* The client's next password message (login_process_auth()). Returns false unless it is still in AUTH. */
static bool client_process_auth(struct client *c)
{
	struct login_result r;

	switch (login_process_auth(&c->login, &c->io, c->startup.user, &r)) {
	case LOGIN_NEED_MORE:
		return false;
	case LOGIN_CHALLENGE_SENT:
		client_flush(c);
		break;
	case LOGIN_AUTHENTICATED:
		client_authenticated(c);
		break;
	default:
		client_login_refused(c, &r);
		break;
	}
	return c->state == CLIENT_AUTH;
}

void client_set_reported(struct client *c, int index, const char *value)
{
	session_params_set_reported(&c->params, index, value);
}

static void client_authenticated(struct client *c)
{
	const struct config *cfg = config_current();
	char err[512];

	histogram_record(&c->worker->stats.client_login, pgmux_now_usec() - c->connect_usec);
	if (login_grant(&c->login, &c->io, &c->startup, &c->params, err, sizeof(err)) != 0) {
		client_fatal(c, SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", err);
		return;
	}
	if (c->timer) {
		event_free(c->timer);
		c->timer = NULL;
	}
	c->transaction_mode = cfg->pool_mode == POOL_MODE_TRANSACTION;
	log_client(LOG_LEVEL_DEBUG, c, "authenticated");
	if (strcmp(c->startup.database, ADMIN_DATABASE) == 0) {
		if (!config_is_admin(cfg, c->startup.user) && !config_is_stats_user(cfg, c->startup.user)) {
			client_fatal(c, SQLSTATE_INSUFFICIENT_PRIVILEGE,
				     "permission denied for the pgmux admin console: user \"%s\" is not in admin_users "
				     "or stats_users",
				     c->startup.user);
			return;
		}
		cancel_register(&c->cancel, c->worker, c->id);
		c->admin = true;
		client_set_state(c, CLIENT_WAITING);
		client_set_state(c, CLIENT_ACTIVE);
		console->login(c);
		client_flush(c);
		if (c->state == CLIENT_ACTIVE && iobuf_len(&c->io.in) > 0)
			console->process_input(c);
		return;
	}
	cancel_register(&c->cancel, c->worker, c->id);
	c->pool = pool_get(c->startup.user, c->startup.database, c->endpoint,
			   c->login.have_secret ? c->login.secret.password : NULL);
	/* The pool keeps what backend logins need; the client's copy of the password goes now. */
	login_forget_secret(&c->login);
	client_set_state(c, CLIENT_WAITING);
	client_flush(c);
	if (c->state == CLIENT_CLOSED)
		return;
	client_borrow(c);
}

/* --------------------------------------------------- getting a backend */

static void client_borrow_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	char detail[512];

	if (c->state != CLIENT_WAITING)
		return;
	pool_cancel_wait(&c->waiter);
	STAT_INC(c->worker, borrow_timeouts);
	/* Say why, when pgmux knows: no healthy writer, or how its connection attempts fail. */
	pool_wait_detail(c->pool, detail, sizeof(detail));
	log_client_because(LOG_LEVEL_WARNING, c, SQLSTATE_TOO_MANY_CONNECTIONS, BORROW_TIMEOUT_MESSAGE,
			   "%s after %d ms%s%s", BORROW_TIMEOUT_MESSAGE,
			   config_current()->connection_borrow_timeout_ms, detail[0] ? ": " : "", detail);
	if (!c->logged_in) {
		client_fatal_detail(c, SQLSTATE_TOO_MANY_CONNECTIONS, BORROW_TIMEOUT_MESSAGE, detail[0] ? detail : NULL);
		return;
	}
	client_fail_batch_detail(c, SQLSTATE_TOO_MANY_CONNECTIONS, BORROW_TIMEOUT_MESSAGE, detail[0] ? detail : NULL);
	client_resume(c);
}

static void client_arm_wait_timer(struct client *c)
{
	const struct config *cfg = config_current();
	struct timeval tv;

	if (c->state != CLIENT_WAITING || cfg->connection_borrow_timeout_ms <= 0)
		return;
	if (c->wait_timer == NULL) {
		c->wait_timer = evtimer_new(c->worker->base, client_borrow_timeout, c);
		if (c->wait_timer == NULL) {
			client_fatal(c, SQLSTATE_INTERNAL_ERROR, "out of memory");
			return;
		}
	}
	tv.tv_sec = cfg->connection_borrow_timeout_ms / 1000;
	tv.tv_usec = (cfg->connection_borrow_timeout_ms % 1000) * 1000;
	evtimer_add(c->wait_timer, &tv);
}

/* Act on what pool_borrow() said; the client is WAITING. */
static void client_borrow_result(struct client *c, enum pool_borrow_result result, struct server *s,
				 const char *error)
{
	c->borrow_start_usec = pgmux_now_usec(); /* the borrow wait (stats_borrow_ended()) counts from here */
	switch (result) {
	case POOL_BORROWED:
		client_link(c, s);
		break;
	case POOL_QUEUED:
		STAT_INC(c->worker, borrow_waits);
		client_arm_wait_timer(c);
		break;
	case POOL_FAILED:
		if (c->logged_in)
			client_fail_batch(c, SQLSTATE_SQLCLIENT_UNABLE_TO_ESTABLISH, error);
		else
			client_fatal(c, SQLSTATE_SQLCLIENT_UNABLE_TO_ESTABLISH, "%s", error);
		break;
	}
}

/* Ask the pool for a backend; the client is WAITING. */
static void client_borrow(struct client *c)
{
	struct server *s;
	const char *error;
	enum pool_borrow_result result = pool_borrow(c->pool, &c->waiter, c->fresh_backend, &s, &error);

	client_borrow_result(c, result, s, error);
}

/* A logged-in client needs a backend for the transaction it just started. */
static void client_begin_transaction(struct client *c)
{
	c->txn_start_usec = pgmux_now_usec();
	client_set_state(c, CLIENT_WAITING);
	client_borrow(c);
}

void client_wait_ended(struct pool_waiter *waiter)
{
	struct client *c = list_entry(waiter, struct client, waiter);
	struct server *s = waiter->assigned;

	if (c->state != CLIENT_WAITING)
		return;
	if (waiter->error) {
		char sqlstate[6];
		char *message = waiter->error;

		memcpy(sqlstate, waiter->sqlstate, sizeof(sqlstate));
		waiter->error = NULL;
		if (c->logged_in)
			client_fail_batch(c, sqlstate, message);
		else
			client_fatal(c, sqlstate, "%s", message);
		free(message);
		client_resume(c);
		return;
	}
	waiter->assigned = NULL;
	if (s == NULL)
		return;
	if (server_attach(s, c->worker))
		client_link(c, s);
	else
		client_borrow(c); /* it died while parked: wait again */
	client_resume(c);
}

/*
 * Answer the batch a client sent while no backend could be had: an
 * ErrorResponse, then drop its messages up to the Sync (or the Query) that
 * ends it and say ReadyForQuery, so that the connection stays usable.
 */
static void client_fail_batch_detail(struct client *c, const char *sqlstate, const char *message,
				     const char *detail)
{
	if (c->wait_timer)
		evtimer_del(c->wait_timer);
	pool_cancel_wait(&c->waiter);
	if (c->state == CLIENT_WAITING)
		client_set_state(c, CLIENT_IDLE);
	proto_put_error(&c->io.out, "ERROR", sqlstate, message, detail, NULL);
	c->relay.discard_until_sync = true;
	io_want_read(&c->io, true);
	/* Its input (the rest of the batch) is looked at by whoever called, once it is done. */
}

static void client_fail_batch(struct client *c, const char *sqlstate, const char *message)
{
	client_fail_batch_detail(c, sqlstate, message, NULL);
}

/* ------------------------------------------------------ carrying state */

static const char *server_reported_get(const char *name, void *arg)
{
	return server_param(arg, name);
}

/*
 * Build the SQL that makes backend s match the client's session
 * (session_state_sql()) and note on s what it will leave there. Returns
 * false when s already matches.
 */
static bool client_state_sql(struct client *c, struct server *s, struct iobuf *sql)
{
	struct session_backend b = {
		.applied = &s->applied,
		.defaults = &s->defaults,
		.reported = server_reported_get,
		.reported_arg = s,
		.reset_all = s->reset_before_reuse,
		.init_undone = s->init_undone,
	};
	bool differs = session_state_sql(sql, &c->params, &b, config_current()->init_query);

	s->reset_before_reuse = b.reset_all;
	s->init_undone = b.init_undone;
	if (b.applied_changed)
		s->params_fingerprint_valid = false;
	return differs;
}

/*
 * The settings could not be read back, or the verification found state
 * pgmux cannot carry (session_readback_pin() says which): the session keeps
 * this backend, as it did before pgmux carried SETs.
 */
static void client_settings_unread(struct client *c, struct server *s, enum session_readback outcome)
{
	struct sql_scan_result pin;

	if (s->tx_status != 'I') {
		client_fatal(c, SQLSTATE_INTERNAL_ERROR, "could not read the session's settings: %s",
			     s->query_error ? s->query_error : "unexpected reply");
		return;
	}
	if (outcome != SESSION_READBACK_REFUSED)
		log_client(LOG_LEVEL_WARNING, c, "could not read the session's settings back (%s)",
			   s->query_error ? s->query_error : "unexpected reply");
	session_readback_pin(outcome, s->query_value, &pin);
	client_pin(c, &pin);
	server_set_state(s, SERVER_ACTIVE);
	client_set_state(c, CLIENT_ACTIVE);
	io_want_read(&c->io, !c->read_paused);
	client_process_input(c);
}

/* The answer to the read-back client_release_server() sent. */
static void client_settings_read(struct server *s, bool ok, void *arg)
{
	struct client *c = arg;
	enum session_readback outcome;

	s->reading_settings = false;
	outcome = ok ? session_readback_parse(s->query_value, &s->applied) : SESSION_READBACK_MALFORMED;
	if (outcome != SESSION_READBACK_SETTINGS) {
		client_settings_unread(c, s, outcome);
		return;
	}
	/* What is set on s now is the session's. */
	s->params_fingerprint_valid = false;
	session_params_adopt(&c->params, &s->applied);
	client_release_server(c);
	if (c->state != CLIENT_IDLE)
		return;
	/* Anything the client sent meanwhile was kept: go on with it. */
	io_want_read(&c->io, true);
	if (iobuf_len(&c->io.in) > 0)
		client_process_input(c);
}

void client_release_server(struct client *c)
{
	struct server *s = c->server;

	if (c->settings_dirty && c->transaction_mode && !c->pin_reason) {
		struct iobuf sql;
		bool verify = c->state_unverified;
		struct session_verify check = {.user = c->startup.user, .prepared = s->prepared.count};

		c->settings_dirty = false;
		c->state_unverified = false;
		s->reading_settings = true;
		/* Whatever the verification finds, what it cannot see goes before anyone else's turn. */
		if (verify)
			s->reset_before_reuse = true;
		client_set_state(c, CLIENT_SETUP);
		iobuf_init(&sql);
		session_settings_sql(&sql, &c->params.set, c->custom_pending, verify ? &check : NULL);
		client_drop_custom_pending(c);
		if (sql.failed) {
			iobuf_free(&sql);
			client_fatal(c, SQLSTATE_OUT_OF_MEMORY, "out of memory");
			return;
		}
		server_run_query(s, (const char *)iobuf_head(&sql), client_settings_read, c);
		iobuf_free(&sql);
		return;
	}
	c->server = NULL;
	__atomic_store_n(&c->backend_pid, 0, __ATOMIC_RELAXED);
	STAT_INC(c->worker, transactions);
	client_set_state(c, CLIENT_IDLE);
	if (c->read_paused) {
		c->read_paused = false;
		io_want_read(&c->io, true);
	}
	server_unlink(s);
	/* The pool may hand s to another worker at once: nothing touches it after this. */
	pool_release(s);
	if (c->worker->draining)
		client_fatal(c, SQLSTATE_ADMIN_SHUTDOWN, "pgmux is shutting down");
}

static void client_login_complete(struct client *c)
{
	struct server *s = c->server;

	/* From now on the client's view of the carried parameters is what the server reported. */
	for (int i = 0; params_carried_names[i]; i++) {
		const char *v = server_param(s, params_carried_names[i]);

		if (v)
			client_set_reported(c, i, v);
	}
	c->params.fingerprint_valid = false;
	for (int i = 0; i < s->n_params; i++)
		proto_put_parameter_status(&c->io.out, s->params[i].name, s->params[i].value);
	proto_put_backend_key(&c->io.out, c->cancel.pid, c->cancel.key);
	proto_put_ready(&c->io.out, s->tx_status ? s->tx_status : 'I');
	c->logged_in = true;
	client_set_state(c, CLIENT_ACTIVE);
	log_client(LOG_LEVEL_DEBUG, c, "logged in, backend pid %d", s->backend_pid);
	client_flush(c);
	if (c->state != CLIENT_ACTIVE)
		return;
	/* Anything the client sent early is processed by whoever called, once it is done. */
	if (c->transaction_mode && iobuf_len(&c->io.in) == 0 && server_is_clean(s))
		client_release_server(c);
}

/*
 * The backend matches the client's session: log in, or carry on with the
 * transaction. What the client sent meanwhile is relayed by whoever called:
 * client_process_input()'s loop when the backend came at once, else the
 * event that completed the setup (client_resume()).
 */
static void client_setup_complete(struct client *c)
{
	server_set_state(c->server, SERVER_ACTIVE);
	if (!c->logged_in) {
		client_login_complete(c);
		return;
	}
	client_set_state(c, CLIENT_ACTIVE);
	io_want_read(&c->io, !c->read_paused);
}

static void client_setup_done(struct server *s, bool ok, void *arg)
{
	struct client *c = arg;

	if (!ok) {
		client_fatal(c, s->query_sqlstate[0] ? s->query_sqlstate : SQLSTATE_INVALID_PARAMETER_VALUE, "%s",
			     s->query_error ? s->query_error : "could not apply session parameters");
		return;
	}
	/* The query ran init_query again if it had been undone. */
	s->init_undone = false;
	client_setup_complete(c);
	client_resume(c);
}

/* Does backend s already match the client's session? Cheap: two cached fingerprints. */
static bool client_state_matches(struct client *c, struct server *s)
{
	/* Before login the client's view is incomplete: always compare in full. */
	if (!c->logged_in)
		return false;
	if (!s->params_fingerprint_valid) {
		s->params_fingerprint = params_fingerprint(server_reported_get, s, &s->applied);
		s->params_fingerprint_valid = true;
	}
	return session_params_fingerprint(&c->params) == s->params_fingerprint;
}

static void client_link(struct client *c, struct server *s)
{
	struct iobuf sql;

	stats_borrow_ended(c);
	c->fresh_backend = false;
	if (c->wait_timer)
		evtimer_del(c->wait_timer);
	c->server = s;
	server_link(s, c, c->id, &client_server_ops, &c->relay.session, c->transaction_mode);
	__atomic_store_n(&c->backend_pid, s->backend_pid, __ATOMIC_RELAXED);
	if (c->pin_reason)
		server_set_pinned(s);
	/* A session-pooled client or a pinned one holds this backend beyond a transaction. */
	if (c->pin_reason || !c->transaction_mode)
		pool_note_pinned(s);
	if (!s->init_undone && !s->reset_before_reuse && client_state_matches(c, s)) {
		client_set_state(c, CLIENT_SETUP);
		client_setup_complete(c);
		return;
	}
	iobuf_init(&sql);
	if (!client_state_sql(c, s, &sql)) {
		iobuf_free(&sql);
		client_set_state(c, CLIENT_SETUP);
		client_setup_complete(c);
		return;
	}
	if (sql.failed) {
		iobuf_free(&sql);
		client_fatal(c, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return;
	}
	client_set_state(c, CLIENT_SETUP);
	server_run_query(s, (const char *)iobuf_head(&sql), client_setup_done, c);
	iobuf_free(&sql);
}

/* ---------------------------------------------------------------- relaying */

/* The session keeps state pgmux cannot carry: it keeps this backend to the end. */
static void client_pin(struct client *c, const struct sql_scan_result *scan)
{
	if (c->pin_reason)
		return;
	/* Atomic because SHOW CLIENTS reads it from another worker. */
	__atomic_store_n(&c->pin_reason, sql_pin_reason_text(scan->pin), __ATOMIC_RELAXED);
	snprintf(c->pin_detail, sizeof(c->pin_detail), "%s", scan->pin_detail);
	if (c->server) {
		server_set_pinned(c->server);
		pool_note_pinned(c->server);
	}
	__atomic_add_fetch(&client_pinned_sessions, 1, __ATOMIC_RELAXED);
	STAT_INC(c->worker, sessions_pinned);
	STAT_INC(c->worker, pins_by_reason[scan->pin]);
	log_client_because(LOG_LEVEL_INFO, c, NULL, c->pin_reason,
			   "session pinned to backend pid %d: %s%s%s%s", c->server ? c->server->backend_pid : 0,
			   c->pin_reason, c->pin_detail[0] ? " (" : "", c->pin_detail, c->pin_detail[0] ? ")" : "");
}

/*
 * Scan SQL the client sends: pin the session if need be, and note what its
 * settings read-back must cover. Returns the text's SQL_EFFECT_* bits.
 */
static unsigned client_scan_sql(struct client *c, const char *sql, size_t len)
{
	struct sql_scan_result scan;

	sql_scan(sql, len, params_carried_names, SQL_SCAN_CARRY_SETS, &scan);
	if (scan.pin != SQL_PIN_NONE)
		client_pin(c, &scan);
	if (scan.effects & SQL_EFFECT_RESET_ALL)
		c->relay.session.reset_all_pending = true;
	if (scan.custom_overflow && !c->pin_reason) {
		/* More custom parameters in one text than the scanner lists: keep them on this backend. */
		scan.pin = SQL_PIN_SET;
		snprintf(scan.pin_detail, sizeof(scan.pin_detail), "more than %d custom parameters at once",
			 SQL_SCAN_MAX_CUSTOM);
		client_pin(c, &scan);
	}
	if (scan.effects & REPLY_SETTINGS_EFFECTS)
		c->settings_dirty = true;
	if (scan.effects & SQL_EFFECT_DEFINES_CODE)
		pool_set_writes_opaque(c->pool, true);
	if ((scan.effects & SQL_EFFECT_OPAQUE) || ((scan.effects & SQL_EFFECT_WRITE) && pool_writes_opaque(c->pool))) {
		c->state_unverified = true;
		c->settings_dirty = true;
		scan.effects |= SQL_EFFECT_OPAQUE;
	}
	for (int i = 0; i < scan.n_custom; i++) {
		if (c->custom_pending == NULL) {
			c->custom_pending = xcalloc(1, sizeof(*c->custom_pending));
			strmap_init(c->custom_pending);
		}
		params_put(c->custom_pending, scan.custom[i], "");
	}
	return scan.effects;
}

/* A Bind of a statement whose text SETs session parameters: its run changes them again. */
static void client_rescan_prepared(struct client *c, const struct prepared_stmt *st)
{
	struct msg_reader r;
	const char *query;

	msg_reader_init(&r, st->parse + PROTO_HEADER_LEN, st->parse_len - PROTO_HEADER_LEN);
	if (msg_read_str(&r) != NULL && (query = msg_read_str(&r)) != NULL)
		client_scan_sql(c, query, strlen(query));
	else
		c->settings_dirty = true;
}

/* What the reply tracker asks of the client's session (struct reply_hooks). */
static unsigned client_hook_scan(void *arg, const char *sql, size_t len)
{
	return client_scan_sql(arg, sql, len);
}

static void client_hook_bound(void *arg, const struct prepared_stmt *st)
{
	struct client *c = arg;

	if (st->sets_session) {
		client_rescan_prepared(c, st);
	} else if (st->writes && pool_writes_opaque(c->pool)) {
		/* A trigger or a default may run code that changes the session (struct pool). */
		c->state_unverified = true;
		c->settings_dirty = true;
	}
}

static bool client_hook_known(void *arg, const char *server_name)
{
	return pool_statement_known(((struct client *)arg)->pool, server_name);
}

static const struct reply_hooks client_reply_hooks = {
	.scan = client_hook_scan,
	.bound = client_hook_bound,
	.known = client_hook_known,
};

/* Relay what the client sent to its backend (relay_to_backend()). Returns false if c was closed. */
static bool client_relay(struct client *c)
{
	struct server *s = c->server;
	struct relay_refusal why;

	/*
	 * A transaction's clock starts with its first message, if
	 * client_begin_transaction() did not start it. Only with input here: a
	 * session-pooled client stays ACTIVE between transactions, and a pass
	 * with nothing to relay must not start the next one's clock.
	 */
	if (c->txn_start_usec == 0 && iobuf_len(&c->io.in) > 0)
		c->txn_start_usec = pgmux_now_usec();
	switch (relay_to_backend(&c->relay, &c->io.in, s, c->transaction_mode, &why)) {
	case RELAY_TERMINATE:
		client_close(c, "client terminated the session");
		return false;
	case RELAY_FATAL:
		client_fatal(c, why.sqlstate, "%s", why.message);
		return false;
	default:
		break;
	}
	server_flush(s);
	if (c->state == CLIENT_CLOSED)
		return false;
	client_flush(c); /* replies pgmux owed at once (a cached Parse, a Close) */
	if (c->state == CLIENT_CLOSED)
		return false;
	/* Nothing more is relayed while a message waits: no more is read either. */
	if (c->server && (c->relay.replies_full || client_input_blocked(c))) {
		c->read_paused = true;
		io_want_read(&c->io, false);
	}
	return true;
}

/* The backend linked to c answered something: a message waiting for that may go now. */
static void client_replies_arrived(struct client *c)
{
	if (c->state == CLIENT_CLOSED)
		return;
	if (!c->relay.waiting) {
		/* Stopped at max_pending_replies: go on once the backend has answered half of them. */
		if (!c->relay.replies_full ||
		    (c->server && server_replies_pending(c->server) > (uint32_t)config_current()->max_pending_replies / 2))
			return;
	}
	/* Try the waiting message again (from the loop, as input left from before). */
	c->relay.waiting = false;
	c->relay.replies_full = false;
	c->read_paused = false;
	io_want_read(&c->io, true);
	io_schedule_read(&c->io);
}

/*
 * A Parse no backend of the pool has judged: borrow one to judge it, unless
 * the client would have to wait for another client's transaction to end
 * (no idle backend, none opening or on its way for it): then pgmux answers
 * the Parse itself, unjudged. Returns false if c was closed or must wait.
 */
static bool client_borrow_for_parse(struct client *c)
{
	struct server *s;
	const char *error;
	enum pool_borrow_result result;

	client_set_state(c, CLIENT_WAITING);
	result = pool_borrow(c->pool, &c->waiter, c->fresh_backend, &s, &error);
	if (result == POOL_QUEUED && !pool_backend_coming(c->pool)) {
		struct relay_refusal why;

		pool_cancel_wait(&c->waiter);
		client_set_state(c, CLIENT_IDLE);
		switch (relay_answer_unjudged(&c->relay, &c->io.in, &c->io.out, &why)) {
		case RELAY_PARSE_ANSWERED:
			STAT_INC(c->worker, parses_answered);
			STAT_INC(c->worker, parses_unjudged);
			return true;
		case RELAY_ANSWERED:
			return true;
		case RELAY_FATAL:
			client_fatal(c, why.sqlstate, "%s", why.message);
			return false;
		default:
			return false;
		}
	}
	client_borrow_result(c, result, s, error);
	return c->state != CLIENT_CLOSED;
}

/* A logged-in client without a backend sent something. Returns false if c was closed or must wait. */
static bool client_process_idle(struct client *c)
{
	struct relay_refusal why;

	switch (relay_between_transactions(&c->relay, &c->io.in, &c->io.out, c->transaction_mode, c->transaction_lost,
					   &why)) {
	case RELAY_ANSWERED:
		return true;
	case RELAY_PARSE_ANSWERED:
		STAT_INC(c->worker, parses_answered);
		return true;
	case RELAY_NEED_MORE:
	case RELAY_WAIT:
		return false;
	case RELAY_TERMINATE:
		client_close(c, "client terminated the session");
		return false;
	case RELAY_FATAL:
		client_fatal(c, why.sqlstate, "%s", why.message);
		return false;
	case RELAY_LOST: {
		char *detail = c->lost_detail;

		c->transaction_lost = false;
		c->lost_detail = NULL;
		client_set_state(c, CLIENT_WAITING);
		client_fail_batch_detail(c, SQLSTATE_CONNECTION_FAILURE,
					 "the connection to the database server was lost; the transaction was rolled back",
					 detail);
		free(detail);
		return c->state == CLIENT_IDLE;
	}
	case RELAY_BORROW_OR_ANSWER:
		return client_borrow_for_parse(c);
	case RELAY_BORROW:
		break;
	}
	/* The loop goes on with the backend linked, the client waiting, or its batch failed. */
	client_begin_transaction(c);
	return c->state != CLIENT_CLOSED;
}

/*
 * Act on buffered input for the current state, as long as it moves on.
 * Returns false if c was closed. Nothing it calls calls it again: an event
 * that moves a client on without input of its own (a backend came, a wait
 * ended) calls client_resume() once it is done.
 */
static bool client_process_input(struct client *c)
{
	for (;;) {
		switch (c->state) {
		case CLIENT_STARTUP:
			if (!client_process_startup(c))
				return c->state != CLIENT_CLOSED;
			if (c->state == CLIENT_TLS_HANDSHAKE)
				return true;
			continue;
		case CLIENT_AUTH:
			/* Past authentication (its backend may be linked already), what it sent early goes on. */
			if (!client_process_auth(c) && (c->state == CLIENT_AUTH || c->state == CLIENT_CLOSED))
				return c->state != CLIENT_CLOSED;
			continue;
		case CLIENT_ACTIVE:
			if (c->admin)
				return console->process_input(c);
			return client_relay(c);
		case CLIENT_IDLE:
			if (iobuf_len(&c->io.in) == 0 || !client_process_idle(c)) {
				/* What pgmux answered alone (client_answer_idle()) goes out once all is read. */
				if (c->state == CLIENT_IDLE && (iobuf_len(&c->io.out) > 0 || c->io.out.failed))
					client_flush(c);
				return c->state != CLIENT_CLOSED;
			}
			continue;
		case CLIENT_WAITING:
		case CLIENT_SETUP:
			/* Keep early input until a backend is ready; bound it. */
			if (iobuf_len(&c->io.in) >= CLIENT_EARLY_INPUT_LIMIT)
				io_want_read(&c->io, false);
			return true;
		case CLIENT_TLS_HANDSHAKE:
			return true;
		case CLIENT_CLOSED:
			return false;
		}
	}
}

/*
 * Does c hold a backend that waits for it: inside a transaction, or with
 * part of a message or batch sent, while the backend owes it nothing?
 */
static bool client_holds_waiting_backend(const struct client *c)
{
	const struct server *s = c->server;

	if (c->state != CLIENT_ACTIVE || c->admin || s == NULL || s->state != SERVER_ACTIVE)
		return false;
	if (s->replies.outstanding > 0 || server_replies_pending(s) > 0 || s->forward_remaining > 0 ||
	    server_output_pending(s) > 0)
		return false; /* the backend is working, or the client is not taking its answer */
	return s->tx_status != 'I' || s->replies.unsynced || s->frontend_remaining > 0 || iobuf_len(&c->io.in) > 0;
}

void client_janitor(struct client *c, uint64_t now)
{
	const struct config *cfg = config_current();
	bool idle = c->state == CLIENT_IDLE ||
		    (c->state == CLIENT_ACTIVE && !c->transaction_mode && c->server && server_is_clean(c->server));

	if (idle && cfg->idle_client_timeout_ms > 0 &&
	    now - c->last_activity_usec >= (uint64_t)cfg->idle_client_timeout_ms * 1000)
		client_fatal(c, SQLSTATE_IDLE_SESSION_TIMEOUT,
			     "terminating connection due to idle_client_timeout (%d s)",
			     cfg->idle_client_timeout_ms / 1000);
	if (c->state == CLIENT_CLOSED || cfg->idle_transaction_timeout_ms <= 0)
		return;
	if (!client_holds_waiting_backend(c)) {
		c->backend_waiting_since_usec = 0;
		return;
	}
	/* Noted at the first check that sees it (so late rather than early), or since the client last sent. */
	if (c->backend_waiting_since_usec == 0)
		c->backend_waiting_since_usec = now;
	uint64_t since = c->backend_waiting_since_usec > c->last_activity_usec ? c->backend_waiting_since_usec
									      : c->last_activity_usec;
	if (now - since >= (uint64_t)cfg->idle_transaction_timeout_ms * 1000)
		client_fatal(c, SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT,
			     "terminating connection due to idle_transaction_timeout (%d ms)",
			     cfg->idle_transaction_timeout_ms);
}

static void client_handle_event(evutil_socket_t fd, short what, struct client *c);

/*
 * A client with nothing buffered reads into its worker's scratch buffer;
 * only bytes left over (a partial message) get a buffer of its own. Idle
 * clients (most of them, with transaction pooling) thus hold no input
 * buffer, and their output buffer is let go once it is empty.
 */
static void client_on_event(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	struct worker *w = c->worker;
	bool borrowed = false;

	w->activity++;

	if (c->state != CLIENT_CLOSED && c->io.in.data == NULL && !w->scratch_busy) {
		c->io.in = w->scratch;
		c->io.in_borrowed = true;
		w->scratch_busy = true;
		borrowed = true;
	}
	client_handle_event(fd, what, c);
	if (borrowed) {
		struct iobuf own;

		iobuf_init(&own);
		if (c->state != CLIENT_CLOSED && iobuf_len(&c->io.in) > 0)
			iobuf_append(&own, iobuf_head(&c->io.in), iobuf_len(&c->io.in));
		/* The scratch buffer may have grown (a large message): keep it grown. */
		w->scratch = c->io.in;
		iobuf_reset(&w->scratch);
		w->scratch_busy = false;
		c->io.in = own;
		c->io.in_borrowed = false;
		if (own.failed)
			client_close(c, "out of memory for its input");
	} else if (c->io.in.data && iobuf_len(&c->io.in) == 0) {
		iobuf_free(&c->io.in);
	}
	if (c->state == CLIENT_IDLE && iobuf_len(&c->io.out) == 0 && !c->io.out.failed)
		iobuf_free(&c->io.out);
}

static void client_handle_event(evutil_socket_t fd, short what, struct client *c)
{
	size_t budget = CLIENT_READ_BUDGET;

	if (c->state == CLIENT_CLOSED)
		return;
	if (c->state == CLIENT_TLS_HANDSHAKE) {
		switch (io_tls_handshake(&c->io)) {
		case IO_OK:
			client_set_state(c, CLIENT_STARTUP);
			log_client(LOG_LEVEL_DEBUG, c, "TLS established: %s", SSL_get_version(c->io.ssl));
			what = EV_READ; /* the startup packet may already be decrypted */
			break;
		case IO_AGAIN:
			return;
		default:
			STAT_INC(c->worker, tls_handshake_failures);
			client_close(c, c->io.error);
			return;
		}
	}
	if ((what & EV_WRITE) || c->io.ssl_write_wants_read || io_pending_output(&c->io) > 0) {
		c->io.writing = false;
		client_flush(c);
		if (c->state == CLIENT_CLOSED)
			return;
	}
	if (!(what & EV_READ) && !c->io.ssl_read_wants_write)
		return;
	/* Input left from before (a lost backend, a failed batch) is handled before reading more. */
	if ((c->state == CLIENT_IDLE || c->state == CLIENT_ACTIVE) && iobuf_len(&c->io.in) > 0 &&
	    !client_process_input(c))
		return;
	while (budget > 0 && !c->read_paused && c->io.reading) {
		size_t before = iobuf_len(&c->io.in);
		enum io_status st;

		/* Whoever resumed reading, nothing more is read while it would pile up (see there). */
		if (client_input_blocked(c) || (c->relay.replies_full && c->server)) {
			c->read_paused = true;
			io_want_read(&c->io, false);
			break;
		}
		st = io_read(&c->io, budget);

		if (st == IO_OK) {
			size_t got = iobuf_len(&c->io.in) - before;

			c->last_activity_usec = pgmux_now_usec();

			budget -= got < budget ? got : budget;
			if (!client_process_input(c))
				return;
			if (c->state == CLIENT_TLS_HANDSHAKE) {
				client_handle_event(fd, EV_READ, c);
				return;
			}
			if (c->io.drained)
				break;
			continue;
		}
		if (st == IO_AGAIN)
			break;
		if (st == IO_EOF)
			client_close(c, c->logged_in ? "client disconnected" : "client disconnected during login");
		else
			client_close(c, c->io.error);
		return;
	}
	if (budget == 0)
		io_schedule_read(&c->io);
}

/*
 * Something other than the client's own input moved c on (a backend came, a
 * wait ended, pgmux's query on its backend was answered): act on what it
 * sent meanwhile, then forward a cancel held while its backend was being
 * prepared. Called at the end of such an event only, never from inside
 * client_process_input().
 */
static void client_resume(struct client *c)
{
	if (c->state == CLIENT_CLOSED || !client_process_input(c))
		return;
	if (c->state == CLIENT_IDLE && (iobuf_len(&c->io.out) > 0 || c->io.out.failed))
		client_flush(c);
	if (c->state == CLIENT_CLOSED || !c->cancel_deferred)
		return;
	c->cancel_deferred = false;
	client_cancel_backend(c);
}

/* ------------------------------------------------ what the backend tells us */

static void client_deliver(struct client *c, const uint8_t *bytes, size_t n)
{
	iobuf_append(&c->io.out, bytes, n);
}

static bool client_congested(const struct client *c)
{
	return io_pending_output(&c->io) >= CLIENT_OUTPUT_HIGH_WATER;
}

static void client_on_replies(struct client *c, struct server *s, bool over)
{
	client_flush(c);
	client_replies_arrived(c);
	/* The transaction is over: give the backend back (the last use of it here). */
	if (over && c->state != CLIENT_CLOSED && c->server == s)
		client_release_server(c);
}

static void client_on_drained(struct client *c)
{
	if (c->read_paused) {
		c->read_paused = false;
		io_want_read(&c->io, true);
	}
}

static void client_on_parameter(struct client *c, const char *name, const char *value)
{
	int index = params_carried_index(name);

	/* The session is the client's: what it changes follows it to other backends. */
	if (c->logged_in && index >= 0)
		client_set_reported(c, index, value);
}

static const struct server_client_ops client_server_ops = {
	.deliver = client_deliver,
	.congested = client_congested,
	.replies_arrived = client_on_replies,
	.drained = client_on_drained,
	.ready_for_query = stats_ready_for_query,
	.parameter = client_on_parameter,
	.lost = client_server_lost,
};
