/*
 * client.c: client connections (see client.h). The life of one:
 * STARTUP (SSLRequest -> TLS_HANDSHAKE -> STARTUP again, or a CancelRequest)
 * -> AUTH (trust, MD5 or SCRAM against the user's secret) -> WAITING for a
 * backend from the pool -> SETUP (the client's session state is brought over
 * to that backend) -> ACTIVE (relaying) -> CLOSED. With transaction pooling a
 * client goes back to IDLE, without a backend, each time a transaction ends,
 * and through WAITING and SETUP again when the next one starts.
 *
 * What the login checks and answers is login.c's, the SQL that carries a
 * session's state to a backend and reads it back is session.c's, and what a
 * logged-in client's messages become is relay.c's: this file drives them,
 * acting on what they return. The backend serving a client (borrowing it,
 * linking it, what it tells the client, giving it back) is the other file
 * of this module, client_backend.c.
 */
#include "client.h"
#include "client_internal.h"

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
/* Input a client may queue before it has a backend (pipelined early queries). */
#define CLIENT_EARLY_INPUT_LIMIT (64 * 1024)

static uint64_t next_client_id = 1;
int64_t client_pinned_sessions;
int64_t client_retiring_sessions;

/* The admin console's session (admin.c), installed before the workers start. */
static const struct client_console *console;

void client_set_console(const struct client_console *ops)
{
	console = ops;
}


static const char *const client_state_names[] = {
	[CLIENT_STARTUP] = "startup", [CLIENT_TLS_HANDSHAKE] = "tls-handshake",
	[CLIENT_AUTH] = "auth",       [CLIENT_WAITING] = "waiting",
	[CLIENT_SETUP] = "setup",     [CLIENT_ACTIVE] = "active",
	[CLIENT_IDLE] = "idle",       [CLIENT_CLOSED] = "closed",
};

static void client_on_event(evutil_socket_t fd, short what, void *arg);

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
void client_set_state(struct client *c, enum client_state next)
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
	/* Notifications that waited for the end of its transaction follow its ReadyForQuery. */
	if (next == CLIENT_IDLE)
		client_listen_idle(c);
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

static void client_trim_output(struct client *c);

/* The end of the pass sent what client_flush() queued (io_batch.c): the rest of the flush. */
static void client_flush_queued(void *arg)
{
	struct client *c = arg;

	client_flush(c);
	client_trim_output(c);
}

void client_flush(struct client *c)
{
	struct server *s = c->server;

	if (c->state == CLIENT_CLOSED)
		return;
	/* On its own loop, during a pass: sent with the pass's other output (batch_sends). */
	if (c->worker == worker_self() && io_defer_flush(&c->io, client_flush_queued, c))
		return;
	switch (io_flush(&c->io)) {
	case IO_OK:
		/* Drained: the backend may send again. */
		if (s)
			server_resume_reading(s);
		/* Notifications kept while its output was full. */
		if (c->state == CLIENT_IDLE && c->listen && c->listen->n_pending > 0)
			client_listen_idle(c);
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
void client_fatal_detail(struct client *c, const char *sqlstate, const char *message, const char *detail)
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
	struct client *c;
	char host[INET6_ADDRSTRLEN] = "?", peer[INET6_ADDRSTRLEN + 8];
	int port = 0;
	size_t peer_len;
	struct timeval tv;

	if (addr->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)addr)->sin_addr, host, sizeof(host));
		port = ntohs(((const struct sockaddr_in *)addr)->sin_port);
	} else if (addr->sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)addr)->sin6_addr, host, sizeof(host));
		port = ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
	}
	(void)addrlen;
	snprintf(peer, sizeof(peer), "%s:%d", host, port);
	peer_len = strlen(peer);
	/* The address is part of the client's own block: one allocation fewer per client. */
	c = calloc(1, sizeof(*c) + peer_len + 1);
	if (c == NULL) {
		close(fd);
		return;
	}
	memcpy(c->peer, peer, peer_len + 1);
	c->id = __atomic_fetch_add(&next_client_id, 1, __ATOMIC_RELAXED);
	c->worker = w;
	c->endpoint = endpoint;
	c->state = CLIENT_STARTUP;
	c->connect_usec = pgmux_now_usec();
	pool_waiter_init(&c->waiter, w);
	list_init(&c->cancel.node);
	list_append(&w->clients, &c->worker_node);
	worker_count_client(w, 1);
	__atomic_add_fetch(&pgmux_client_count, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&pgmux_login_count, 1, __ATOMIC_RELAXED);


	evutil_make_socket_nonblocking(fd);
	io_set_nodelay(fd);
	io_init(&c->io, fd);
	/* Only while it logs in: an idle session keeps none of it (see client_login_done()). */
	c->login = calloc(1, sizeof(*c->login));
	if (c->login)
		c->login->timeout = evtimer_new(w->base, client_login_timeout, c);
	if (c->login == NULL || c->login->timeout == NULL || io_attach(&c->io, w->base, client_on_event, c) != 0) {
		client_close(c, "out of memory");
		return;
	}
	tv.tv_sec = cfg->client_login_timeout_ms / 1000;
	tv.tv_usec = (cfg->client_login_timeout_ms % 1000) * 1000;
	evtimer_add(c->login->timeout, &tv);
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
	if (c->login && c->login->timeout) {
		event_free(c->login->timeout);
		c->login->timeout = NULL;
	}
	client_wait_free(c, true);
	if (c->pin_reason)
		__atomic_sub_fetch(&client_pinned_sessions, 1, __ATOMIC_RELAXED);
	if (c->retiring)
		__atomic_sub_fetch(&client_retiring_sessions, 1, __ATOMIC_RELAXED);
	cancel_unregister(&c->cancel);
	pool_cancel_wait(&c->waiter);
	/* Leaving while its LISTEN is taken over: the backend may still listen, and is closed. */
	client_listen_handover_free(c);
	c->server = NULL;
	if (s)
		server_client_gone(s, !c->transaction_mode);
	if (c->pool) {
		client_listen_forget(c);
		pool_put(c->pool);
		c->pool = NULL;
	}
	if (c->login)
		login_end_exchange(c->login);
	io_close(&c->io, true);
	list_del(&c->worker_node);
	worker_count_client(c->worker, -1);
	list_append(&c->worker->reap_clients, &c->worker_node);
	worker_schedule_reap(c->worker);
	__atomic_sub_fetch(&pgmux_client_count, 1, __ATOMIC_RELAXED);
}

/* The custom parameters noted since the last read-back (client_scan_sql()) are read now, or never. */
void client_drop_custom_pending(struct client *c)
{
	if (c->custom_pending) {
		params_clear(c->custom_pending);
		free(c->custom_pending);
		c->custom_pending = NULL;
	}
}

/* The login is over (or the client gone): its state, the secret and the TLS context reference go. */
static void client_login_done(struct client *c)
{
	if (c->login) {
		if (c->login->timeout)
			event_free(c->login->timeout);
		login_free(c->login);
		free(c->login);
		c->login = NULL;
	}
}

void client_free(struct client *c)
{
	if (c->have_startup)
		proto_startup_free(&c->startup);
	client_login_done(c);
	free(c->pin_detail);
	free(c->waiter.error);
	client_lost_free(c);
	iobuf_free(&c->first_batch);
	if (c->admin_session)
		console->session_free(c);
	session_params_free(&c->params);
	client_drop_custom_pending(c);
	relay_free(&c->relay);
	client_listen_free(c);
	free(c);
}

/*
 * While draining, a client between transactions is closed once it has sent
 * nothing for this long: one that has just logged in (pgbench -C, or any
 * client connected a moment before a restart) sends its first query within
 * it and is closed when that transaction ends, rather than refused.
 */
#define CLIENT_DRAIN_IDLE_GRACE_USEC (1000 * 1000ULL)

static bool client_drain_closes_now(const struct client *c, uint64_t now)
{
	if (c->admin)
		return true;
	/*
	 * Sessions in progress may finish: with session pooling that is the whole
	 * session, with transaction pooling the current transaction (a client
	 * that gives its backend back while draining is closed then). A login in
	 * progress may finish too (client_login_timeout bounds it).
	 */
	if (c->state == CLIENT_ACTIVE || c->state == CLIENT_SETUP || (c->state == CLIENT_WAITING && c->logged_in))
		return false;
	if (!c->logged_in)
		return false;
	return now - c->last_activity_usec >= CLIENT_DRAIN_IDLE_GRACE_USEC;
}

void client_drain(struct client *c)
{
	if (client_drain_closes_now(c, pgmux_now_usec()))
		client_fatal(c, SQLSTATE_ADMIN_SHUTDOWN, "pgmux is shutting down");
}

/*
 * Moving an idle client to another worker (worker_spread_percent, worker.c).
 * Only a client that holds nothing of its worker's but its socket's events
 * and its place on the worker's list: logged in with transaction pooling,
 * between transactions with no backend, nothing buffered either way, not
 * waiting, pinned, retiring, listening through pgmux (the LISTEN hub knows
 * its worker) or an admin session (the main thread answers to its worker).
 * Anything else that names it by id follows it: cancels and KILLs through
 * the cancel registry (dispatch.c forwards one that missed it).
 */
static bool client_may_move_but_for_output(const struct client *c);

static bool client_may_move(const struct client *c)
{
	return client_may_move_but_for_output(c) && iobuf_len(&c->io.out) == 0;
}

/* All but its output, which may wait for the end of the pass (batch_sends; client_move() sends it first). */
static bool client_may_move_but_for_output(const struct client *c)
{
	const struct io *io = &c->io;

	return c->state == CLIENT_IDLE && c->logged_in && c->transaction_mode && !c->admin && c->login == NULL &&
	       c->server == NULL && c->listen == NULL && c->pin_reason == NULL && !c->retiring && !c->read_paused &&
	       !c->cancel_deferred && !client_wait_queued(c) && !io->in_borrowed &&
	       iobuf_len(&io->in) == 0 && (iobuf_len(&io->out) == 0 || io->batch_slot > 0) && !io->writing &&
	       !io->ssl_read_wants_write &&
	       !io->ssl_write_wants_read && !c->worker->draining && !c->worker->stopping;
}

void client_consider_move(struct client *c)
{
	struct worker *w = c->worker, *to;

	/* The common case, nothing to move, costs one relaxed load. */
	if (__atomic_load_n(&w->move_quota, __ATOMIC_RELAXED) <= 0 || !client_may_move_but_for_output(c))
		return;
	/* Once per pass: a second client_move() would find it another worker's. */
	for (int i = 0; i < w->n_moving; i++)
		if (w->moving[i].client == c)
			return;
	if ((to = worker_move_target(w)) == NULL)
		return;
	/* Moved by the reaper, once the callbacks of this pass that may hold c have returned. */
	w->moving[w->n_moving].client = c;
	w->moving[w->n_moving].to = to;
	w->n_moving++;
	worker_schedule_reap(w);
}

static void client_post_adopt(void *arg)
{
	struct client *c = arg;

	worker_post_adopt(c->worker, c);
}

void client_move(struct client *c, struct worker *to)
{
	struct worker *from = c->worker;

	/* Its last reply may still be queued for the end of the pass (batch_sends): it goes first. */
	io_batch_send_now(&c->io);
	/* It may have sent its next statement, or gone, since it was chosen. */
	if (c->state == CLIENT_CLOSED || !client_may_move(c)) {
		__atomic_add_fetch(&from->move_quota, 1, __ATOMIC_RELAXED);
		return;
	}
	io_detach(&c->io);
	list_del(&c->worker_node);
	worker_count_client(from, -1);
	pool_waiter_init(&c->waiter, to);
	c->worker = to;
	STAT_INC(from, clients_moved);
	log_client(LOG_LEVEL_DEBUG, c, "moved from worker %d to worker %d", from->id, to->id);
	/*
	 * Posted under the registry's lock: a KILL or cancel that finds the new
	 * worker there reaches it after the client, never ahead of it (it would
	 * find nobody, and the registry would send it nowhere else). c is the
	 * new worker's from here on.
	 */
	cancel_move(&c->cancel, to, client_post_adopt, c);
}

void client_adopt(struct worker *w, struct client *c)
{
	list_append(&w->clients, &c->worker_node);
	worker_count_client(w, 1);
	/* Level-triggered: a statement it sent meanwhile wakes the new loop at once. */
	if (io_attach(&c->io, w->base, client_on_event, c) != 0) {
		client_close(c, "out of memory");
		return;
	}
	if (w->stopping)
		client_fatal(c, SQLSTATE_ADMIN_SHUTDOWN, "pgmux is shutting down");
	else if (w->draining)
		client_drain(c);
}

/* A retiring client whose backend is between transactions goes now. Returns true if c was closed. */
static bool client_retire_if_done(struct client *c)
{
	if (!c->retiring || (c->server && !server_is_clean(c->server)))
		return false;
	client_fatal(c, SQLSTATE_ADMIN_SHUTDOWN, "pgmux moved to a new server; reconnect");
	return true;
}

void client_retire_for_cutover(struct client *c)
{
	if (c->admin || c->retiring || c->state == CLIENT_CLOSED || c->server == NULL ||
	    (c->transaction_mode && c->pin_reason == NULL))
		return;
	c->retiring = true;
	__atomic_add_fetch(&client_retiring_sessions, 1, __ATOMIC_RELAXED);
	log_client(LOG_LEVEL_INFO, c, "a cutover began: this %s session ends after its current transaction",
		   c->pin_reason ? "pinned" : "session-pooled");
	client_retire_if_done(c);
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
	/* The statement may still be queued for the end of the pass (batch_sends): it goes before its cancel. */
	if (c->server)
		io_batch_send_now(&c->server->io);
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
	switch (login_begin_auth(c->login, &c->io, config_current(), c->startup.user, &r)) {
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
/*
 * A CancelRequest for (pid, key): to the client of this instance that holds
 * the key; else, with peers, on to the instance whose id the key carries. A
 * key that names this instance but no client here is dropped, never passed
 * on, so a cancel cannot go round between instances.
 */
static void client_route_cancel(struct client *c, uint32_t pid, uint32_t key)
{
	const struct config *cfg = config_current();
	int owner = cancel_key_instance(pid);
	const struct peer *peer;
	struct worker *w;
	uint64_t id;

	if (cancel_lookup(pid, key, &w, &id)) {
		worker_post_cancel(w, id);
	} else if (owner == 0 || owner == cfg->peer_id) {
		log_client(LOG_LEVEL_DEBUG, c, "cancel request with an unknown key ignored");
	} else if ((peer = config_find_peer(cfg, owner)) == NULL) {
		log_client(LOG_LEVEL_WARNING, c, "cancel request for peer %d, which [peers] does not list: ignored", owner);
	} else {
		log_client(LOG_LEVEL_DEBUG, c, "cancel request for peer %d: passing it on to %s:%d", owner,
			   peer->address.host, peer->address.port);
		cancel_forward(owner, peer->address.host, peer->address.port, pid, key);
	}
}

static bool client_process_startup(struct client *c)
{
	struct login_result r;

	login_process_startup(c->login, &c->io, config_current(), &c->startup, &r);
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
		if (r.cancel_valid)
			client_route_cancel(c, r.cancel_pid, r.cancel_key);
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

	switch (login_process_auth(c->login, &c->io, c->startup.user, &r)) {
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
	if (login_grant(c->login, &c->io, &c->startup, &c->params, err, sizeof(err)) != 0) {
		client_fatal(c, SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", err);
		return;
	}
	if (c->login && c->login->timeout) {
		event_free(c->login->timeout);
		c->login->timeout = NULL;
	}
	c->transaction_mode = cfg->pool_mode == POOL_MODE_TRANSACTION;
	/* LISTEN is pgmux's to hold with transaction pooling, on the writer endpoint (a standby refuses it). */
	if (c->transaction_mode && c->endpoint == ENDPOINT_WRITER) {
		c->relay.listen_apply = client_listen_apply;
	}
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
		client_login_done(c);
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
			   c->login->have_secret ? c->login->secret.password : NULL);
	/* The pool keeps what backend logins need; the client's copy of the password goes now. */
	client_login_done(c);
	client_set_state(c, CLIENT_WAITING);
	client_flush(c);
	if (c->state == CLIENT_CLOSED)
		return;
	client_borrow(c);
}

/* ---------------------------------------------------------------- relaying */

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
		c->txn_start_usec = pgmux_pass_now_usec();
	/* Consumed bytes stay where they are until more is appended: what went is copied after. */
	const uint8_t *head = iobuf_head(&c->io.in);
	size_t before = iobuf_len(&c->io.in);

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
	/* Unless s was lost meanwhile (a failed write): then the input may have been replaced. */
	if (c->batch_recording && c->server == s)
		client_record_batch(c, head, before - iobuf_len(&c->io.in));
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

/* A logged-in client without a backend sent something. Returns false if c was closed or must wait. */
static bool client_process_idle(struct client *c)
{
	struct relay_refusal why;

	/* Its LISTEN has not taken effect yet: what follows waits for it (client_listen_ready()). */
	if (c->listen && c->listen->waiting)
		return false;
	switch (relay_between_transactions(&c->relay, &c->io.in, &c->io.out, c->transaction_mode, c->transaction_lost,
					   &why)) {
	case RELAY_ANSWERED:
		client_listen_hold(c, c->relay.listen_wait_at);
		return !(c->listen && c->listen->waiting);
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
		struct client_lost *lost = c->lost;
		const char *message = lost ? lost->message : NULL;

		c->transaction_lost = false;
		c->lost = NULL;
		client_set_state(c, CLIENT_WAITING);
		/* What client_server_lost() kept: the server's SQLSTATE and message, or pgmux's words. */
		client_fail_batch_detail(c, message ? lost->sqlstate : SQLSTATE_CONNECTION_FAILURE,
					 message ? message : CLIENT_LOST_TRANSACTION_MESSAGE, lost ? lost->detail : NULL);
		if (lost) {
			free(lost->message);
			free(lost->detail);
			free(lost);
		}
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
bool client_process_input(struct client *c)
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
				/* What pgmux answered alone (relay_between_transactions()) goes out once all is read. */
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

/*
 * A client between transactions that has sent nothing for this long gives
 * back what it only needs while it works (client_release_idle()): once a
 * second (the janitor), not at the end of every transaction, where the next
 * one would make it all again.
 */
#define CLIENT_IDLE_RELEASE_USEC (1000 * 1000ULL)

/* Buffers and events an idle client can do without; each is made again on its next use. */
static void client_release_idle(struct client *c)
{
	if (!c->batch_recording && iobuf_len(&c->first_batch) == 0 && !c->first_batch.failed)
		iobuf_free(&c->first_batch);
	client_wait_free(c, false);
	io_release_idle(&c->io);
}

void client_janitor(struct client *c, uint64_t now)
{
	const struct config *cfg = config_current();
	bool idle = c->state == CLIENT_IDLE ||
		    (c->state == CLIENT_ACTIVE && !c->transaction_mode && c->server && server_is_clean(c->server));

	if (c->worker->draining && c->state != CLIENT_CLOSED && client_drain_closes_now(c, now)) {
		client_fatal(c, SQLSTATE_ADMIN_SHUTDOWN, "pgmux is shutting down");
		return;
	}
	if (idle && cfg->idle_client_timeout_ms > 0 &&
	    now - c->last_activity_usec >= (uint64_t)cfg->idle_client_timeout_ms * 1000)
		client_fatal(c, SQLSTATE_IDLE_SESSION_TIMEOUT,
			     "terminating connection due to idle_client_timeout (%d s)",
			     cfg->idle_client_timeout_ms / 1000);
	if (c->state == CLIENT_IDLE && now - c->last_activity_usec >= CLIENT_IDLE_RELEASE_USEC)
		client_release_idle(c);
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
 * buffer, and their output buffer is let go by the janitor.
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
	client_trim_output(c);
}

/*
 * A small output buffer stays between the transactions of a client that
 * runs them (a malloc and a free fewer per transaction; its first batch's
 * buffer says it does), until the janitor lets both go once it has been
 * idle for a second (client_release_idle()). A client that has only logged
 * in gives it back now: kept while thousands log in, the buffers would
 * leave holes between the clients when the janitor frees them. A large one
 * goes now too. Output queued for the end of the pass is looked at again
 * once it went (client_flush_queued()).
 */
static void client_trim_output(struct client *c)
{
	if (c->state != CLIENT_IDLE || c->io.batch_slot > 0)
		return;
	if (c->first_batch.data == NULL && iobuf_len(&c->io.out) == 0 && !c->io.out.failed)
		iobuf_free(&c->io.out);
	else
		iobuf_shrink(&c->io.out);
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
	/* A cutover retires this session: its transaction is over, nothing more goes to the old server. */
	if (c->retiring && client_retire_if_done(c))
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

			c->last_activity_usec = pgmux_pass_now_usec();

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
void client_resume(struct client *c)
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
