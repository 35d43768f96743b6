/*
 * client.c: client connections (see client.h). The life of one:
 * STARTUP (SSLRequest -> TLS_HANDSHAKE -> STARTUP again, or a CancelRequest)
 * -> AUTH (trust, MD5 or SCRAM against the user's secret) -> WAITING for a
 * backend from the pool -> SETUP (the client's session state is brought over
 * to that backend) -> ACTIVE (relaying) -> CLOSED. With transaction pooling a
 * client goes back to IDLE, without a backend, each time a transaction ends,
 * and through WAITING and SETUP again when the next one starts.
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

#include "admin.h"
#include "auth.h"
#include "cancel.h"
#include "params.h"
#include "pgmux.h"
#include "pool.h"
#include "prepared.h"
#include "server.h"
#include "sqlscan.h"
#include "tls.h"
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
/* Password messages are small; PostgreSQL's own limit for them is similar. */
#define CLIENT_MAX_AUTH_MESSAGE 10000

static uint64_t next_client_id = 1;
int64_t client_pinned_sessions;

#define BORROW_TIMEOUT_MESSAGE "timed out waiting to acquire database connection"

static const char *const client_state_names[] = {
	[CLIENT_STARTUP] = "startup", [CLIENT_TLS_HANDSHAKE] = "tls-handshake",
	[CLIENT_AUTH] = "auth",       [CLIENT_WAITING] = "waiting",
	[CLIENT_SETUP] = "setup",     [CLIENT_ACTIVE] = "active",
	[CLIENT_IDLE] = "idle",       [CLIENT_CLOSED] = "closed",
};

static void client_on_event(evutil_socket_t fd, short what, void *arg);
static bool client_process_input(struct client *c);
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
	return c->relay_waiting || io_pending_output(&s->io) >= CLIENT_SERVER_HIGH_WATER ||
	       (c->transaction_mode && s->replies.count >= (uint32_t)config_current()->max_pending_replies);
}

void client_flush(struct client *c)
{
	struct server *s = c->server;

	if (c->state == CLIENT_CLOSED)
		return;
	switch (io_flush(&c->io)) {
	case IO_OK:
		/* Drained: the backend may send again. */
		if (s && s->state == SERVER_ACTIVE && !s->io.reading)
			io_want_read(&s->io, true);
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
	list_init(&c->wait_node);
	list_init(&c->cancel_node);
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
	strmap_init(&c->params_set);
	strmap_init(&c->params_startup);
	strmap_init(&c->stmts);
	strmap_init(&c->stmt_names);
	log_client(LOG_LEVEL_DEBUG, c, "new connection");
	STAT_INC(w, clients_accepted);
	if (pgmux_clients_open() > cfg->max_client_connections)
		client_fatal(c, SQLSTATE_TOO_MANY_CONNECTIONS,
			     "The maximum number of client connections to pgmux exceeded %d (max_client_connections)",
			     cfg->max_client_connections);
	else if (pgmux_logins_open() > cfg->max_login_connections)
		client_fatal(c, SQLSTATE_TOO_MANY_CONNECTIONS,
			     "too many client connections are logging in to pgmux at once, more than %d "
			     "(max_login_connections)",
			     cfg->max_login_connections);
}

void client_close(struct client *c, const char *reason)
{
	struct server *s = c->server;

	if (c->state == CLIENT_CLOSED)
		return;
	if (c->state == CLIENT_ACTIVE)
		log_client(LOG_LEVEL_DEBUG, c, "closing: %s", reason);
	else
		log_client(LOG_LEVEL_INFO, c, "closing during %s: %s", client_state_names[c->state], reason);
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
	cancel_unregister(c);
	pool_cancel_wait(c);
	c->server = NULL;
	if (s)
		server_client_gone(s, !c->transaction_mode);
	if (c->pool) {
		pool_put(c->pool);
		c->pool = NULL;
	}
	if (c->scram) {
		scram_server_free(c->scram);
		c->scram = NULL;
	}
	io_close(&c->io, true);
	list_del(&c->worker_node);
	list_append(&c->worker->reap_clients, &c->worker_node);
	worker_schedule_reap(c->worker);
	__atomic_sub_fetch(&pgmux_client_count, 1, __ATOMIC_RELAXED);
}

void client_free(struct client *c)
{
	if (c->have_startup)
		proto_startup_free(&c->startup);
	if (c->have_secret)
		secret_clear(&c->secret);
	tls_context_unref(c->tls);
	free(c->unnamed_parse);
	free(c->assigned_error);
	free(c->lost_detail);
	admin_session_free(c);
	for (int i = 0; i < PARAMS_N_CARRIED; i++)
		free(c->reported[i]);
	params_clear(&c->params_set);
	params_clear(&c->params_startup);
	if (c->custom_pending) {
		params_clear(c->custom_pending);
		free(c->custom_pending);
	}
	strmap_clear(&c->stmts, prepared_free);
	params_clear(&c->stmt_names);
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

void client_server_lost(struct client *c, struct server *s, const char *sqlstate, const char *message)
{
	bool was_in_transaction = s->tx_status == 'T' || s->tx_status == 'E';

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
	    s->forward_remaining > 0 || c->forward_remaining > 0 || s->outstanding > 1) {
		client_fatal(c, sqlstate, "%s: %s",
			     c->pin_reason ? "the database connection of this pinned session was lost"
					   : "lost the connection to the database server",
			     message);
		return;
	}
	c->server = NULL;
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
	log_client(LOG_LEVEL_WARNING, c, "backend lost mid-transaction (%s); the client's transaction fails", message);
	if (s->outstanding > 0) {
		proto_put_error(&c->io.out, "ERROR", sqlstate, "the connection to the database server was lost; the transaction was rolled back",
				message, NULL);
		/* Messages sent after the failed batch began belong to it: drop them up to its Sync. */
		if (s->unsynced)
			c->discard_until_sync = true;
		else
			proto_put_ready(&c->io.out, 'I');
	} else if (was_in_transaction || s->unsynced) {
		/* Nothing in flight, but an open transaction died: its next statement must fail. */
		c->transaction_lost = true;
		free(c->lost_detail);
		c->lost_detail = xstrdup(message);
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

/* ----------------------------------------------------------------- startup */

/* Answer a one-byte 'S' or 'N'; the byte must leave before a TLS handshake starts. */
static bool client_answer_byte(struct client *c, char answer)
{
	iobuf_append_u8(&c->io.out, (uint8_t)answer);
	if (io_flush(&c->io) != IO_OK) {
		client_close(c, "could not answer the encryption request");
		return false;
	}
	return true;
}

static void client_begin_auth(struct client *c);

static void client_handle_startup_message(struct client *c, uint32_t version, const uint8_t *body, size_t len)
{
	const struct config *cfg = config_current();
	char err[256];
	const char *replication;

	if (version >> 16 == 1 || version >> 16 == 2) {
		char old[128];
		int n = snprintf(old, sizeof(old),
				 "EFATAL:  unsupported frontend protocol %u.%u: server supports 3.0 to 3.0\n", version >> 16,
				 version & 0xffff);

		/* PostgreSQL answers a client of protocol 1 or 2 in that protocol's ErrorResponse: text and a NUL. */
		iobuf_append(&c->io.out, old, (size_t)n + 1);
		(void)io_flush(&c->io);
		client_close(c, "unsupported frontend protocol");
		return;
	}
	if (version >> 16 != 3) {
		client_fatal(c, SQLSTATE_FEATURE_NOT_SUPPORTED,
			     "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0", version >> 16,
			     version & 0xffff);
		return;
	}
	if (proto_parse_startup(version, body, len, &c->startup, err, sizeof(err)) != 0) {
		client_fatal(c, strstr(err, "user name") ? SQLSTATE_INVALID_AUTHORIZATION : SQLSTATE_PROTOCOL_VIOLATION,
			     "%s", err);
		return;
	}
	c->have_startup = true;
	if (cfg->require_tls && c->io.ssl == NULL) {
		client_fatal(c, SQLSTATE_INVALID_AUTHORIZATION, "This pgmux requires TLS connections");
		return;
	}
	replication = proto_startup_get(&c->startup, "replication");
	if (replication && strcmp(replication, "false") != 0 && strcmp(replication, "0") != 0 &&
	    strcmp(replication, "off") != 0 && strcmp(replication, "no") != 0) {
		client_fatal(c, SQLSTATE_FEATURE_NOT_SUPPORTED, "replication connections are not supported by pgmux");
		return;
	}
	/* A newer 3.x minor or _pq_ options: say what we speak, then carry on. */
	if ((version & 0xffff) != 0 || c->startup.n_unknown_protocol_options > 0)
		proto_put_negotiate_version(&c->io.out, 0, c->startup.unknown_protocol_options,
					    c->startup.n_unknown_protocol_options);
	log_client(LOG_LEVEL_DEBUG, c, "startup packet: protocol 3.%u, %d parameters%s", version & 0xffff,
		   c->startup.n_params, c->io.ssl ? ", TLS" : "");
	client_begin_auth(c);
}

/*
 * Returns false when the client was closed or must wait for more bytes.
 * Every check here is PostgreSQL's (ProcessStartupPacket()), in its order and
 * with its answer, so that a client cannot tell pgmux from the server before
 * it logs in: a length below 8 or above 10,000 bytes closes the connection
 * without a word, as PostgreSQL does (it only logs "invalid length of
 * startup packet"), once the four bytes of the length are in; an SSLRequest
 * or GSSENCRequest is answered whatever else its packet holds, once each, and
 * a second one is an unsupported protocol version like any other.
 */
static bool client_process_startup(struct client *c)
{
	const struct config *cfg = config_current();
	struct iobuf *in = &c->io.in;
	const uint8_t *p;
	uint32_t len, code;

	if (iobuf_len(in) < 4)
		return false;
	p = iobuf_head(in);
	len = get_u32(p);
	/* PostgreSQL's limit is on the packet less its length word. */
	if (len < 8 || len - 4 > PROTO_MAX_STARTUP_PACKET || len > (uint32_t)cfg->max_packet_size) {
		client_close(c, "invalid length of startup packet");
		return false;
	}
	if (iobuf_len(in) < len)
		return false;
	code = get_u32(p + 4);

	if ((code == PROTO_SSL_REQUEST && !c->ssl_asked) || (code == PROTO_GSSENC_REQUEST && !c->gss_asked)) {
		struct tls_context *tls = NULL;
		char answer;

		iobuf_consume(in, len);
		if (code == PROTO_SSL_REQUEST) {
			c->ssl_asked = true;
			tls = tls_get_current();
			c->tls = tls; /* its reference goes with the client (client_free()) */
		} else {
			c->gss_asked = true;
		}
		answer = tls ? 'S' : 'N';
		if (!client_answer_byte(c, answer))
			return false;
		/* Bytes sent before the handshake would be trusted as if encrypted (CVE-2021-23214). */
		if (iobuf_len(in) > 0) {
			client_fatal(c, SQLSTATE_PROTOCOL_VIOLATION, "received unencrypted data after SSL request");
			return false;
		}
		if (tls == NULL)
			return true;
		if (io_start_tls_accept(&c->io, tls->ctx) != 0) {
			client_close(c, c->io.error);
			return false;
		}
		client_set_state(c, CLIENT_TLS_HANDSHAKE);
		return true;
	}
	if (code == PROTO_CANCEL_REQUEST) {
		struct worker *w;
		uint64_t id;

		if (len == 16 && cancel_lookup(get_u32(p + 8), get_u32(p + 12), &w, &id))
			worker_post_cancel(w, id);
		else
			log_client(LOG_LEVEL_DEBUG, c, "cancel request with an unknown key ignored");
		client_close(c, "cancel request handled");
		return false;
	}
	/*
	 * Take the packet out of the buffer before acting on it: with trust
	 * authentication the login can complete inside the handler (an idle
	 * backend that already matches the client's session needs no setup),
	 * and whatever is still buffered then is relayed to the backend as the
	 * client's first message.
	 */
	uint8_t body[PROTO_MAX_STARTUP_PACKET];

	memcpy(body, p + 8, len - 8);
	iobuf_consume(in, len);
	client_handle_startup_message(c, code, body, len - 8);
	return c->state != CLIENT_CLOSED;
}

/* ----------------------------------------------------------- authentication */

static void client_authenticated(struct client *c);

static void client_auth_failed(struct client *c, const char *why)
{
	STAT_INC(c->worker, logins_failed);
	log_client(LOG_LEVEL_WARNING, c, "authentication failed: %s", why);
	client_fatal(c, SQLSTATE_INVALID_PASSWORD, "password authentication failed for user \"%s\"",
		     c->startup.user);
}

static void client_begin_auth(struct client *c)
{
	const struct config *cfg = config_current();

	c->have_secret = secrets_find(c->startup.user, &c->secret);
	client_set_state(c, CLIENT_AUTH);
	switch (cfg->client_auth) {
	case CLIENT_AUTH_TRUST:
		client_authenticated(c);
		return;
	case CLIENT_AUTH_MD5:
		auth_random_bytes(c->md5_salt, sizeof(c->md5_salt));
		proto_put_auth(&c->io.out, AUTH_REQ_MD5, c->md5_salt, sizeof(c->md5_salt));
		c->auth_step = AUTH_STEP_MD5;
		break;
	case CLIENT_AUTH_SCRAM: {
		char mechanisms[64];
		bool plus = c->io.ssl && c->tls && c->tls->binding_len > 0;
		size_t n = scram_mechanisms(plus, mechanisms, sizeof(mechanisms));

		/* An unknown user gets a made-up exchange that fails at the end, like a wrong password. */
		if (c->have_secret)
			c->scram = scram_server_new(&c->secret, plus ? c->tls->binding : NULL,
						    plus ? c->tls->binding_len : 0);
		else
			c->scram = scram_server_new_unknown_user(c->startup.user, plus ? c->tls->binding : NULL,
								 plus ? c->tls->binding_len : 0);
		if (c->scram == NULL) {
			client_fatal(c, SQLSTATE_OUT_OF_MEMORY, "out of memory");
			return;
		}
		proto_put_auth(&c->io.out, AUTH_REQ_SASL, mechanisms, n);
		c->auth_step = AUTH_STEP_SASL_INITIAL;
		break;
	}
	}
	client_flush(c);
}

static void client_handle_password_message(struct client *c, const uint8_t *body, size_t len)
{
	struct msg_reader r;
	char err[256] = "";
	char *reply = NULL;
	enum auth_result res;

	msg_reader_init(&r, body, len);
	switch (c->auth_step) {
	case AUTH_STEP_MD5: {
		const char *response = msg_read_str(&r);

		if (response == NULL) {
			client_fatal(c, SQLSTATE_PROTOCOL_VIOLATION, "invalid password packet");
			return;
		}
		if (!c->have_secret) {
			client_auth_failed(c, "no secret for this user");
			return;
		}
		if (!md5_check_response(c->startup.user, c->secret.password, c->md5_salt, response)) {
			client_auth_failed(c, "wrong MD5 response");
			return;
		}
		client_authenticated(c);
		return;
	}
	case AUTH_STEP_SASL_INITIAL: {
		const char *mechanism = msg_read_str(&r);
		int32_t data_len = -1;
		const uint8_t *data = NULL;

		if (mechanism == NULL || msg_read_i32(&r, &data_len) != 0 ||
		    (data_len >= 0 && (data = msg_read_bytes(&r, (size_t)data_len)) == NULL) || data_len < 0) {
			client_fatal(c, SQLSTATE_PROTOCOL_VIOLATION, "malformed SASLInitialResponse message");
			return;
		}
		res = scram_server_handle_first(c->scram, mechanism, (const char *)data, (size_t)data_len, &reply,
						err, sizeof(err));
		if (res == AUTH_OK) {
			proto_put_auth(&c->io.out, AUTH_REQ_SASL_CONTINUE, reply, strlen(reply));
			free(reply);
			c->auth_step = AUTH_STEP_SASL_FINAL;
			client_flush(c);
			return;
		}
		break;
	}
	case AUTH_STEP_SASL_FINAL:
		res = scram_server_handle_final(c->scram, (const char *)body, len, &reply, err, sizeof(err));
		if (res == AUTH_OK) {
			proto_put_auth(&c->io.out, AUTH_REQ_SASL_FINAL, reply, strlen(reply));
			free(reply);
			client_authenticated(c);
			return;
		}
		break;
	default:
		client_fatal(c, SQLSTATE_PROTOCOL_VIOLATION, "unexpected password message");
		return;
	}
	free(reply);
	if (res == AUTH_PROTOCOL_ERROR)
		client_fatal(c, SQLSTATE_PROTOCOL_VIOLATION, "%s", err[0] ? err : "malformed SCRAM message");
	else
		client_auth_failed(c, err[0] ? err : "wrong password");
}

static bool client_process_auth(struct client *c)
{
	struct iobuf *in = &c->io.in;
	const uint8_t *p;
	uint32_t mlen;

	if (iobuf_len(in) < PROTO_HEADER_LEN)
		return false;
	p = iobuf_head(in);
	mlen = get_u32(p + 1);
	if (p[0] != FE_PASSWORD) {
		client_fatal(c, SQLSTATE_PROTOCOL_VIOLATION, "expected password response, got message type %d", p[0]);
		return false;
	}
	if (mlen < 4 || mlen > CLIENT_MAX_AUTH_MESSAGE) {
		client_fatal(c, SQLSTATE_PROTOCOL_VIOLATION, "invalid password message length %u", mlen);
		return false;
	}
	if (iobuf_len(in) < 1 + (size_t)mlen)
		return false;
	/*
	 * Take the message out of the buffer before acting on it: a login can
	 * complete inside the handler, and whatever is still buffered then is
	 * relayed to the backend as the client's first query.
	 */
	uint8_t body[CLIENT_MAX_AUTH_MESSAGE];

	memcpy(body, p + PROTO_HEADER_LEN, mlen - 4);
	iobuf_consume(in, 1 + (size_t)mlen);
	client_handle_password_message(c, body, mlen - 4);
	return c->state == CLIENT_AUTH;
}

/*
 * Sort the startup packet's parameters into what pgmux carries: the
 * reported ones it follows through ParameterStatus, and the others
 * (including "-c name=value" and "--name=value" from options) that it sets
 * itself on every backend the client uses. Returns -1 with err set for an
 * options string pgmux cannot honour.
 */
static int client_options_parse(struct client *c, const char *options, char *err, size_t errlen);

void client_set_reported(struct client *c, int index, const char *value)
{
	if (c->reported[index] && strcmp(c->reported[index], value) == 0)
		return;
	free(c->reported[index]);
	c->reported[index] = xstrdup(value);
	c->params_fingerprint_valid = false;
}

static void client_put_param(struct client *c, const char *name, const char *value)
{
	int index = params_carried_index(name);

	c->params_fingerprint_valid = false;
	if (index >= 0) {
		client_set_reported(c, index, value);
	} else {
		params_put(&c->params_set, name, value);
		params_put(&c->params_startup, name, value);
	}
}

static int client_collect_startup_params(struct client *c, char *err, size_t errlen)
{
	for (int i = 0; i < c->startup.n_params; i++) {
		const char *name = c->startup.params[i].name;
		const char *value = c->startup.params[i].value;

		if (strcmp(name, "user") == 0 || strcmp(name, "database") == 0 || strcmp(name, "replication") == 0)
			continue;
		if (strcmp(name, "options") == 0) {
			if (client_options_parse(c, value, err, errlen) != 0)
				return -1;
			continue;
		}
		client_put_param(c, name, value);
	}
	return 0;
}

static void client_authenticated(struct client *c)
{
	const struct config *cfg = config_current();
	char err[512];

	if (c->scram) {
		scram_server_free(c->scram);
		c->scram = NULL;
	}
	c->auth_step = AUTH_STEP_NONE;
	if (client_collect_startup_params(c, err, sizeof(err)) != 0) {
		client_fatal(c, SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", err);
		return;
	}
	proto_put_auth(&c->io.out, AUTH_REQ_OK, NULL, 0);
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
		cancel_register(c);
		c->admin = true;
		client_set_state(c, CLIENT_WAITING);
		client_set_state(c, CLIENT_ACTIVE);
		admin_login(c);
		client_flush(c);
		if (c->state == CLIENT_ACTIVE && iobuf_len(&c->io.in) > 0)
			admin_process_input(c);
		return;
	}
	cancel_register(c);
	c->pool = pool_get(c->startup.user, c->startup.database, c->endpoint,
			   c->have_secret ? c->secret.password : NULL);
	/* The pool keeps what backend logins need; the client's copy of the password goes now. */
	if (c->have_secret) {
		secret_clear(&c->secret);
		c->have_secret = false;
	}
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
	pool_cancel_wait(c);
	STAT_INC(c->worker, borrow_timeouts);
	/* Say why, when pgmux knows: no healthy writer, or how its connection attempts fail. */
	pool_wait_detail(c->pool, detail, sizeof(detail));
	log_client(LOG_LEVEL_WARNING, c, "%s after %d ms%s%s", BORROW_TIMEOUT_MESSAGE,
		   config_current()->connection_borrow_timeout_ms, detail[0] ? ": " : "", detail);
	if (!c->logged_in) {
		client_fatal_detail(c, SQLSTATE_TOO_MANY_CONNECTIONS, BORROW_TIMEOUT_MESSAGE, detail[0] ? detail : NULL);
		return;
	}
	client_fail_batch_detail(c, SQLSTATE_TOO_MANY_CONNECTIONS, BORROW_TIMEOUT_MESSAGE, detail[0] ? detail : NULL);
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
			client_fatal(c, SQLSTATE_OUT_OF_MEMORY, "out of memory");
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
	enum pool_borrow_result result = pool_borrow(c->pool, c, &s, &error);

	client_borrow_result(c, result, s, error);
}

/* A logged-in client needs a backend for the transaction it just started. */
static void client_begin_transaction(struct client *c)
{
	client_set_state(c, CLIENT_WAITING);
	client_borrow(c);
}

void client_wait_ended(struct client *c)
{
	struct server *s = c->assigned_server;

	if (c->state != CLIENT_WAITING)
		return;
	if (c->assigned_error) {
		char sqlstate[6];
		char *message = c->assigned_error;

		memcpy(sqlstate, c->assigned_sqlstate, sizeof(sqlstate));
		c->assigned_error = NULL;
		if (c->logged_in)
			client_fail_batch(c, sqlstate, message);
		else
			client_fatal(c, sqlstate, "%s", message);
		free(message);
		return;
	}
	c->assigned_server = NULL;
	if (s == NULL)
		return;
	if (server_attach(s, c->worker)) {
		client_link(c, s);
		return;
	}
	/* It died while parked: wait again. */
	client_borrow(c);
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
	pool_cancel_wait(c);
	if (c->state == CLIENT_WAITING)
		client_set_state(c, CLIENT_IDLE);
	proto_put_error(&c->io.out, "ERROR", sqlstate, message, detail, NULL);
	c->discard_until_sync = true;
	io_want_read(&c->io, true);
	if (client_process_input(c))
		client_flush(c);
}

static void client_fail_batch(struct client *c, const char *sqlstate, const char *message)
{
	client_fail_batch_detail(c, sqlstate, message, NULL);
}

static bool client_check_header(struct client *c, const uint8_t *p);

/*
 * Drop buffered messages up to the end of the failed batch. Returns false
 * when more bytes are needed, or when c was closed: a Terminate ends the
 * session here too, and a header pgmux refuses elsewhere (a bad type or
 * length) is refused here as well rather than waited on.
 */
static bool client_discard_batch(struct client *c)
{
	struct iobuf *in = &c->io.in;

	while (c->discard_until_sync) {
		const uint8_t *p = iobuf_head(in);
		uint32_t mlen;
		uint8_t type;

		/* The rest of a message dropped as it arrives, rather than held whole. */
		if (c->ignore_remaining > 0) {
			size_t n = iobuf_len(in) < c->ignore_remaining ? iobuf_len(in) : c->ignore_remaining;

			iobuf_consume(in, n);
			c->ignore_remaining -= (uint32_t)n;
			if (c->ignore_remaining > 0)
				return false;
			continue;
		}
		if (iobuf_len(in) < PROTO_HEADER_LEN)
			return false;
		type = p[0];
		if (type == FE_TERMINATE) {
			client_close(c, "client terminated the session");
			return false;
		}
		if (!client_check_header(c, p))
			return false;
		mlen = get_u32(p + 1);
		if (type != FE_SYNC && type != FE_QUERY) {
			c->ignore_remaining = 1 + mlen;
			continue;
		}
		if (iobuf_len(in) < 1 + (size_t)mlen)
			return false;
		iobuf_consume(in, 1 + (size_t)mlen);
		c->discard_until_sync = false;
		proto_put_ready(&c->io.out, 'I');
	}
	return true;
}

/* ------------------------------------------------------ carrying state */

/* Append value as a SQL string literal. */
static void sql_append_literal(struct iobuf *sql, const char *value)
{
	bool backslash = strchr(value, '\\') != NULL;

	if (backslash)
		iobuf_append_u8(sql, 'E');
	iobuf_append_u8(sql, '\'');
	for (const char *p = value; *p; p++) {
		if (*p == '\'' || (*p == '\\' && backslash))
			iobuf_append_u8(sql, (uint8_t)*p);
		iobuf_append_u8(sql, (uint8_t)*p);
	}
	iobuf_append_u8(sql, '\'');
}

static void sql_append_set(struct iobuf *sql, int *count, const char *name, const char *value)
{
	iobuf_append(sql, *count == 0 ? "SELECT " : ", ", *count == 0 ? 7 : 2);
	iobuf_append(sql, "pg_catalog.set_config(", 22);
	sql_append_literal(sql, name);
	iobuf_append_u8(sql, ',');
	sql_append_literal(sql, value);
	iobuf_append(sql, ", false)", 8);
	(*count)++;
}

/* RESET of a (possibly dotted) parameter name, each part a quoted identifier, then "; ". */
static void sql_append_reset(struct iobuf *sql, const char *name)
{
	iobuf_append(sql, "RESET \"", 7);
	for (const char *p = name; *p; p++) {
		if (*p == '.')
			iobuf_append(sql, "\".\"", 3);
		else if (*p == '"')
			iobuf_append(sql, "\"\"", 2);
		else
			iobuf_append_u8(sql, (uint8_t)*p);
	}
	iobuf_append(sql, "\"; ", 3);
}

/*
 * Build the SQL that makes backend s match the client's session: parameters
 * set for an earlier client that this one does not want are RESET; a RESET
 * (or an earlier DISCARD ALL, see init_undone) goes back to the server's
 * defaults and so undoes init_query, which then runs again; then carried
 * parameters that differ and parameters pgmux set for the client that s
 * lacks. After init_query runs, every parameter the client wants is set,
 * whatever s had before, since init_query may have changed any of them.
 * Returns false when s already matches.
 */
static bool client_state_sql(struct client *c, struct server *s, struct iobuf *sql)
{
	const char *init_query = config_current()->init_query;
	struct list_node *pos, *tmp;
	int count = 0;
	bool reset = false, reinit, reset_all = s->reset_before_reuse;

	if (reset_all) {
		/*
		 * Code pgmux could not read ran on s (see verify_head): back to
		 * the server's defaults, every parameter, then the client's own.
		 */
		iobuf_append(sql, "RESET ALL; ", 11);
		params_clear(&s->applied);
		s->params_fingerprint_valid = false;
		s->reset_before_reuse = false;
		reset = true;
	}
	list_for_each_safe(pos, tmp, &s->applied.lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

		if (params_get(&c->params_set, e->key) == NULL) {
			sql_append_reset(sql, e->key);
			free(strmap_delete(&s->applied, e));
			s->params_fingerprint_valid = false;
			reset = true;
		}
	}
	if (reset)
		s->init_undone = true;
	reinit = s->init_undone && init_query && init_query[0];
	if (reinit) {
		iobuf_append(sql, init_query, strlen(init_query));
		iobuf_append(sql, "; ", 2);
	} else {
		s->init_undone = false; /* no init_query to run again */
	}
	for (int i = 0; params_carried_names[i]; i++) {
		const char *name = params_carried_names[i];
		const char *want = c->reported[i];
		const char *have = server_param(s, name);

		/* What the client never changed is the server's default. */
		if (want == NULL)
			want = params_get(&s->defaults, name);
		/* After RESET ALL, what s reported before is stale: set it all. */
		if (want == NULL || (!reinit && !reset_all && have && strcmp(have, want) == 0))
			continue;
		sql_append_set(sql, &count, name, want);
	}
	list_for_each(pos, &c->params_set.lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);
		const char *have = params_get(&s->applied, e->key);

		if (!reinit && have && strcmp(have, e->value) == 0)
			continue;
		sql_append_set(sql, &count, e->key, e->value);
		params_put(&s->applied, e->key, e->value);
		s->params_fingerprint_valid = false;
	}
	if (count == 0)
		iobuf_append(sql, "SELECT 1", 8);
	iobuf_append_u8(sql, '\0');
	return count > 0 || reset || reinit;
}

/*
 * Turn the "options" startup parameter (as PostgreSQL reads it: words
 * separated by spaces, a backslash escapes the next character) into settings.
 * Only "-c name=value" and "--name=value" set parameters; pgmux refuses other
 * switches rather than drop them silently. Returns -1 with err set.
 */
static int client_options_parse(struct client *c, const char *options, char *err, size_t errlen)
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
		client_put_param(c, setting, eq + 1);
	}
	if (expect_c_value) {
		snprintf(err, errlen, "option -c requires a value");
		return -1;
	}
	return 0;
}

/*
 * Transaction pooling carries the settings PostgreSQL does not report
 * (statement_timeout, search_path, a custom app.tenant, ...) by asking the
 * backend, once a transaction that may have changed one is over, what the
 * session's own settings are now. That follows SET, RESET, SET ... TO
 * DEFAULT, set_config(.., false), a rolled-back transaction and a failed
 * statement alike, which reading the statements could not. The answer is
 * what the client's next backends are given (client_state_sql()).
 */
static void settings_sql_name(struct iobuf *sql, int *n, const char *name)
{
	static const char custom[] = " UNION SELECT name, pg_catalog.current_setting(name, true) FROM "
				     "pg_catalog.unnest(ARRAY[";

	if (*n == 0)
		iobuf_append(sql, custom, sizeof(custom) - 1);
	else
		iobuf_append(sql, ", ", 2);
	sql_append_literal(sql, name);
	(*n)++;
}

/*
 * After a transaction that ran code pgmux cannot read (SQL_EFFECT_OPAQUE: a
 * DO block, CALL, somebody else's function, a trigger's work is not seen
 * either but needs such a call), the read-back is a verification too: the
 * session state pgmux cannot carry must be as it was, or the session keeps
 * its backend (pinned); the answer is then the reason, not a JSON object.
 * And custom parameters named in the database's own functions are read
 * back by name as well, so that the client keeps what a function set for it.
 * A custom parameter whose name no text shows (made at run time) cannot be
 * read; the backend is RESET ALL before anyone else uses it (see
 * reset_before_reuse), so that no client sees another's.
 */
static const char verify_head[] =
	"SELECT CASE"
	" WHEN CURRENT_USER <> SESSION_USER OR SESSION_USER <> %s"
	" THEN 'SET ROLE or SESSION AUTHORIZATION'"
	" WHEN (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements) <> %zu"
	" THEN 'SQL-level PREPARE or DEALLOCATE'"
	" WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()) THEN 'LISTEN'"
	" WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_cursors) THEN 'cursor WITH HOLD'"
	" WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())"
	" THEN 'temporary table'"
	" WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE pid = pg_catalog.pg_backend_pid()"
	" AND locktype = 'advisory') THEN 'session-level advisory lock'"
	" ELSE (";
static const char verify_catalog_names[] =
	" UNION SELECT m.name, pg_catalog.current_setting(m.name, true) FROM (SELECT DISTINCT"
	" pg_catalog.lower(r[1]) AS name FROM pg_catalog.pg_proc p, pg_catalog.regexp_matches(p.prosrc,"
	" '''([A-Za-z_][A-Za-z0-9_$]*[.][A-Za-z_][A-Za-z0-9_$]*)''', 'g') AS r"
	" WHERE p.pronamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace,"
	" 'information_schema'::pg_catalog.regnamespace)) AS m"
	" WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_settings g WHERE g.name = m.name)";

static void client_settings_sql(struct client *c, struct iobuf *sql, bool verify)
{
	static const char head[] = "SELECT coalesce(pg_catalog.json_object_agg(name, setting), '{}') FROM ("
				   "SELECT name, pg_catalog.current_setting(name) AS setting FROM pg_catalog.pg_settings "
				   "WHERE source = 'session'";
	struct list_node *pos;
	int n = 0;

	if (verify) {
		struct iobuf user;
		char *text;
		int len;

		iobuf_init(&user);
		sql_append_literal(&user, c->startup.user);
		iobuf_append_u8(&user, '\0');
		len = snprintf(NULL, 0, verify_head, (const char *)iobuf_head(&user), c->server->prepared.count);
		text = xmalloc((size_t)len + 1);
		snprintf(text, (size_t)len + 1, verify_head, (const char *)iobuf_head(&user), c->server->prepared.count);
		iobuf_append(sql, text, (size_t)len);
		free(text);
		iobuf_free(&user);
	}
	iobuf_append(sql, head, sizeof(head) - 1);
	if (verify)
		iobuf_append(sql, verify_catalog_names, sizeof(verify_catalog_names) - 1);
	/* Custom parameters are not in pg_settings: the ones the session has or touched, by name. */
	list_for_each(pos, &c->params_set.lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

		if (strchr(e->key, '.') == NULL || (c->custom_pending && params_get(c->custom_pending, e->key)))
			continue;
		settings_sql_name(sql, &n, e->key);
	}
	if (c->custom_pending) {
		list_for_each(pos, &c->custom_pending->lru) {
			struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

			settings_sql_name(sql, &n, e->key);
		}
		params_clear(c->custom_pending);
		free(c->custom_pending);
		c->custom_pending = NULL;
	}
	if (n > 0)
		iobuf_append(sql, "]::text[]) AS name", 18);
	/*
	 * A custom parameter that was never set, or RESET, reads as NULL or "":
	 * not the session's. (A built-in one SET to "" is then left out too; it
	 * is the default of every such parameter that a client may set.)
	 */
	iobuf_append(sql, ") AS s WHERE setting <> ''", 26);
	if (verify)
		iobuf_append(sql, ")::text END", 11);
	iobuf_append_u8(sql, '\0');
}

/*
 * The settings could not be read back, or the verification found state
 * pgmux cannot carry (found: what): the session keeps this backend, as it
 * did before pgmux carried SETs.
 */
static void client_settings_unread(struct client *c, struct server *s, const char *found)
{
	struct sql_scan_result pin = {.pin = found ? SQL_PIN_OTHER_SESSION_STATE : SQL_PIN_SET};

	if (s->tx_status != 'I') {
		client_fatal(c, SQLSTATE_INTERNAL_ERROR, "could not read the session's settings: %s",
			     s->query_error ? s->query_error : "unexpected reply");
		return;
	}
	if (found) {
		snprintf(pin.pin_detail, sizeof(pin.pin_detail), "%s", found);
	} else {
		log_client(LOG_LEVEL_WARNING, c, "could not read the session's settings back (%s)",
			   s->query_error ? s->query_error : "unexpected reply");
		snprintf(pin.pin_detail, sizeof(pin.pin_detail), "its settings could not be read back");
	}
	client_pin(c, &pin);
	server_set_state(s, SERVER_ACTIVE);
	client_set_state(c, CLIENT_ACTIVE);
	io_want_read(&c->io, !c->read_paused);
	client_process_input(c);
}

static void client_settings_read(struct server *s, bool ok, void *arg)
{
	struct client *c = arg;
	struct list_node *pos;

	s->reading_settings = false;
	/* The verification's answer is a reason when the session holds what pgmux cannot carry. */
	if (ok && s->query_value && s->query_value[0] != '{' && s->query_value[0] != '\0') {
		client_settings_unread(c, s, s->query_value);
		return;
	}
	if (!ok || !server_applied_from_settings(s)) {
		client_settings_unread(c, s, NULL);
		return;
	}
	/* What is set on s now is the session's. */
	params_clear(&c->params_set);
	list_for_each(pos, &s->applied.lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

		params_put(&c->params_set, e->key, e->value);
	}
	/*
	 * RESET goes back to the value from the startup packet, which the
	 * backend had only as a SET of pgmux's: the client gets it back.
	 */
	list_for_each(pos, &c->params_startup.lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

		if (params_get(&c->params_set, e->key) == NULL)
			params_put(&c->params_set, e->key, e->value);
	}
	c->params_fingerprint_valid = false;
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

		c->settings_dirty = false;
		c->state_unverified = false;
		s->reading_settings = true;
		/* Whatever the verification finds, what it cannot see goes before anyone else's turn. */
		if (verify)
			s->reset_before_reuse = true;
		client_set_state(c, CLIENT_SETUP);
		iobuf_init(&sql);
		client_settings_sql(c, &sql, verify);
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
	c->reset_all_pending = false;
	STAT_INC(c->worker, transactions);
	client_set_state(c, CLIENT_IDLE);
	if (c->read_paused) {
		c->read_paused = false;
		io_want_read(&c->io, true);
	}
	s->client = NULL;
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
	c->params_fingerprint_valid = false;
	for (int i = 0; i < s->n_params; i++)
		proto_put_parameter_status(&c->io.out, s->params[i].name, s->params[i].value);
	proto_put_backend_key(&c->io.out, c->cancel_pid, c->cancel_key);
	proto_put_ready(&c->io.out, s->tx_status ? s->tx_status : 'I');
	c->logged_in = true;
	client_set_state(c, CLIENT_ACTIVE);
	log_client(LOG_LEVEL_DEBUG, c, "logged in, backend pid %d", s->backend_pid);
	client_flush(c);
	if (c->state != CLIENT_ACTIVE)
		return;
	if (c->transaction_mode && iobuf_len(&c->io.in) == 0 && c->forward_remaining == 0 && server_is_clean(s)) {
		client_release_server(c);
		return;
	}
	/* Anything the client sent early is processed now. */
	if (iobuf_len(&c->io.in) > 0)
		client_process_input(c);
}

/* The backend matches the client's session: log in, or carry on with the transaction. */
static void client_setup_complete(struct client *c)
{
	server_set_state(c->server, SERVER_ACTIVE);
	if (!c->logged_in) {
		client_login_complete(c);
		return;
	}
	client_set_state(c, CLIENT_ACTIVE);
	io_want_read(&c->io, !c->read_paused);
	if (!client_process_input(c) || !c->cancel_deferred)
		return;
	c->cancel_deferred = false;
	client_cancel_backend(c);
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
}

static const char *client_reported_get(const char *name, void *arg)
{
	int index = params_carried_index(name);

	return index >= 0 ? ((struct client *)arg)->reported[index] : NULL;
}

static const char *server_reported_get(const char *name, void *arg)
{
	return server_param(arg, name);
}

/* Does backend s already match the client's session? Cheap: two cached fingerprints. */
static bool client_state_matches(struct client *c, struct server *s)
{
	/* Before login the client's view is incomplete: always compare in full. */
	if (!c->logged_in)
		return false;
	if (!c->params_fingerprint_valid) {
		c->params_fingerprint = params_fingerprint(client_reported_get, c, &c->params_set);
		c->params_fingerprint_valid = true;
	}
	if (!s->params_fingerprint_valid) {
		s->params_fingerprint = params_fingerprint(server_reported_get, s, &s->applied);
		s->params_fingerprint_valid = true;
	}
	return c->params_fingerprint == s->params_fingerprint;
}

static void client_link(struct client *c, struct server *s)
{
	struct iobuf sql;

	c->fresh_backend = false;
	s->served = true;

	if (c->wait_timer)
		evtimer_del(c->wait_timer);
	c->server = s;
	s->client = c;
	c->unnamed_here = false;
	__atomic_store_n(&c->backend_pid, s->backend_pid, __ATOMIC_RELAXED);
	__atomic_store_n(&s->client_id, c->id, __ATOMIC_RELAXED);
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
	log_client(LOG_LEVEL_INFO, c, "session pinned to backend pid %d: %s%s%s%s", c->server ? c->server->backend_pid : 0,
		   c->pin_reason, c->pin_detail[0] ? " (" : "", c->pin_detail, c->pin_detail[0] ? ")" : "");
}

/* What a text does that means its session's settings must be read back after it runs. */
#define CLIENT_SETTINGS_EFFECTS \
	(SQL_EFFECT_SET_SESSION | SQL_EFFECT_RESET_ALL | SQL_EFFECT_DISCARD_ALL | SQL_EFFECT_OPAQUE)

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
		c->reset_all_pending = true;
	if (scan.custom_overflow && !c->pin_reason) {
		/* More custom parameters in one text than the scanner lists: keep them on this backend. */
		scan.pin = SQL_PIN_SET;
		snprintf(scan.pin_detail, sizeof(scan.pin_detail), "more than %d custom parameters at once",
			 SQL_SCAN_MAX_CUSTOM);
		client_pin(c, &scan);
	}
	if (scan.effects & CLIENT_SETTINGS_EFFECTS)
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

/*
 * PostgreSQL keeps a prepared statement under the first NAMEDATALEN - 1 (63)
 * bytes of its name: longer names that agree on those are one statement.
 * pgmux keys the client's statements the same way (and the reply queue keeps
 * these keys whole).
 */
#define CLIENT_STMT_KEY_LEN 63
_Static_assert(sizeof(((struct pending_reply *)0)->client_name) == CLIENT_STMT_KEY_LEN + 1,
	       "the reply queue must hold a whole statement key");

static const char *client_stmt_key(const char *name, char key[CLIENT_STMT_KEY_LEN + 1])
{
	size_t n = strnlen(name, CLIENT_STMT_KEY_LEN);

	memcpy(key, name, n);
	key[n] = '\0';
	return key;
}

/*
 * May c have one more named statement? pgmux keeps each one's text for as
 * long as the client holds it, so their number is bounded per client
 * (max_client_prepared_statements); a client over it is told so and closed.
 */
static bool client_statement_room(struct client *c)
{
	int limit = config_current()->max_client_prepared_statements;

	if (c->stmts.count < (size_t)limit)
		return true;
	client_fatal(c, SQLSTATE_PROGRAM_LIMIT_EXCEEDED,
		     "too many prepared statements: this session holds %d, the limit set by "
		     "max_client_prepared_statements",
		     limit);
	return false;
}

/*
 * One whole extended-protocol or Query message, with transaction pooling:
 * named statements are rewritten to their server-side names and prepared on
 * this backend when it lacks them, and every reply is announced to the
 * server's reply queue. Returns false, having done nothing, when what the
 * message must do hangs on an earlier batch not answered yet, which the
 * server skips the rest of if it fails: whether the client's statement
 * exists (server_parse_unsettled()), or the backend's copy of it
 * (server_statement_unsettled()).
 */
/*
 * The client is about to Bind, Describe or Close the unnamed statement on s.
 * PostgreSQL keeps the unnamed statement until the next Parse of it (or a
 * Query), so a backend may hold one that its last client left: a Bind of it
 * with no Parse before it would run that client's text. The first time in
 * a transaction that a client uses it, pgmux puts the client's own there
 * first: the Parse it last sent for it (client_unnamed_parsed()), or, if it
 * has none, a Close of it, after which a Bind fails with 26000 as on a
 * session of the client's own. Should the server skip what pgmux sent (an
 * error earlier in the batch), unnamed_here goes back to false.
 */
static void client_unnamed_use(struct client *c, struct server *s)
{
	if (c->unnamed_here || s->skipping_until_sync)
		return;
	if (c->unnamed_parse) {
		iobuf_append(&s->io.out, c->unnamed_parse, c->unnamed_parse_len);
		server_expect(s, 'p', NULL);
	} else {
		server_unnamed_reset(s);
	}
	c->unnamed_here = true;
}

/* The client Parses the unnamed statement (msg, 1 + mlen bytes): it is the client's from now on. */
static void client_unnamed_parsed(struct client *c, struct server *s, const uint8_t *msg, size_t mlen)
{
	uint8_t *copy = malloc(1 + mlen);

	free(c->unnamed_parse);
	c->unnamed_parse = copy;
	c->unnamed_parse_len = copy ? 1 + mlen : 0;
	if (copy)
		memcpy(copy, msg, 1 + mlen);
	else
		c->io.out.failed = true; /* out of memory: the connection ends (iobuf.h) */
	if (!s->skipping_until_sync)
		c->unnamed_here = true;
}

static bool client_forward_tracked(struct client *c, struct server *s, uint8_t type, const uint8_t *msg, size_t mlen)
{
	const uint8_t *body = msg + PROTO_HEADER_LEN;
	size_t blen = mlen - 4;
	struct msg_reader r;
	const char *name;
	struct strmap_entry *e;
	char key[CLIENT_STMT_KEY_LEN + 1];

	/* After an error the server ignores everything up to Sync: pass it on untouched. */
	if (s->skipping_until_sync && type != FE_SYNC) {
		iobuf_append(&s->io.out, msg, 1 + mlen);
		return true;
	}
	msg_reader_init(&r, body, blen);
	switch (type) {
	case FE_QUERY:
		/*
		 * Only a text PostgreSQL will run: one string and its NUL, nothing
		 * after. A malformed Query is refused without running anything, and
		 * must not pin the session on what a scan of its bytes guesses.
		 */
		if (blen > 0 && memchr(body, '\0', blen) == body + blen - 1)
			client_scan_sql(c, (const char *)body, blen - 1);
		/* A Query destroys the unnamed statement: none is left for the client, as directly. */
		if (!s->skipping_until_sync) {
			free(c->unnamed_parse);
			c->unnamed_parse = NULL;
			c->unnamed_here = true;
		}
		break;
	case FE_PARSE: {
		const char *client_name;
		struct prepared_stmt *st, *taken = NULL;
		unsigned effects = 0;

		name = msg_read_str(&r);
		const char *query = msg_read_str(&r);

		/* Is the name taken? Not if that Parse is skipped. */
		if (name && name[0] && server_parse_unsettled(s, client_stmt_key(name, key), false))
			return false;
		st = name && name[0] ? prepared_from_parse(body, blen, &client_name) : NULL;
		if (name && name[0] && st == NULL && errno == ENOMEM) {
			client_fatal(c, SQLSTATE_OUT_OF_MEMORY, "out of memory");
			return true; /* c is closed */
		}
		if (st && (e = strmap_find(&c->stmts, key)) != NULL)
			taken = e->value;
		/* Has the backend the statement (the one that has the name, if taken) already? */
		if (st && server_statement_unsettled(s, taken ? taken->server_name : st->server_name, key)) {
			prepared_free(st);
			return false;
		}
		if (name && query)
			effects = client_scan_sql(c, query, strlen(query));
		if (name && name[0] == '\0')
			client_unnamed_parsed(c, s, msg, mlen);
		if (st == NULL)
			break; /* unnamed (or malformed: the server says why) */
		if (taken) {
			/* The backend refuses it, as PostgreSQL would (see server_parse_taken()). */
			server_parse_taken(s, taken, st);
			prepared_free(st);
			return true;
		}
		if (!client_statement_room(c)) {
			prepared_free(st);
			return true; /* c is closed */
		}
		st->sets_session = (effects & CLIENT_SETTINGS_EFFECTS) != 0;
		st->writes = (effects & SQL_EFFECT_WRITE) != 0;
		strmap_insert(&c->stmts, key, st);
		params_put(&c->stmt_names, st->server_name, key);
		server_parse(s, st, key, (effects & SQL_EFFECT_TRANSACTION_CONTROL) != 0);
		return true;
	}
	case FE_BIND:
		if (msg_read_str(&r) == NULL || (name = msg_read_str(&r)) == NULL)
			break; /* malformed: the server answers as it would directly */
		if (name[0] == '\0') {
			client_unnamed_use(c, s);
			break;
		}
		/*
		 * A Parse that pgmux answered itself (the backend had the
		 * statement) must not make this Bind work if it is skipped.
		 */
		if (server_parse_unsettled(s, client_stmt_key(name, key), true))
			return false;
		if ((e = strmap_find(&c->stmts, key)) == NULL)
			break; /* unknown: the server answers as it would directly */
		if (server_statement_unsettled(s, ((struct prepared_stmt *)e->value)->server_name, key))
			return false;
		if (((struct prepared_stmt *)e->value)->sets_session) {
			client_rescan_prepared(c, e->value);
		} else if (((struct prepared_stmt *)e->value)->writes && pool_writes_opaque(c->pool)) {
			/* A trigger or a default may run code that changes the session (struct pool). */
			c->state_unverified = true;
			c->settings_dirty = true;
		}
		server_ensure_prepared(s, e->value);
		prepared_rewrite(&s->io.out, FE_BIND, body, blen, (size_t)((const uint8_t *)name - body), strlen(name),
				 ((struct prepared_stmt *)e->value)->server_name);
		server_expect(s, FE_BIND, NULL);
		return true;
	case FE_DESCRIBE:
	case FE_CLOSE: {
		uint8_t kind;

		/* Bytes after the name make the message malformed: the server refuses it, as it would directly. */
		if (msg_read_u8(&r, &kind) != 0 || kind != 'S' || (name = msg_read_str(&r)) == NULL || r.pos != blen)
			break;
		if (name[0] == '\0') {
			client_unnamed_use(c, s);
			break;
		}
		e = strmap_find(&c->stmts, client_stmt_key(name, key));
		if (type == FE_CLOSE) {
			/* Answered by pgmux: the server-side statement stays for others. */
			server_close_owed(s, key);
			return true;
		}
		/* As for a Bind. */
		if (server_parse_unsettled(s, key, true) ||
		    (e && server_statement_unsettled(s, ((struct prepared_stmt *)e->value)->server_name, key)))
			return false;
		if (e == NULL)
			break;
		server_ensure_prepared(s, e->value);
		prepared_rewrite(&s->io.out, FE_DESCRIBE, body, blen, 1, strlen(name),
				 ((struct prepared_stmt *)e->value)->server_name);
		server_expect(s, FE_DESCRIBE, NULL);
		return true;
	}
	default:
		break;
	}
	iobuf_append(&s->io.out, msg, 1 + mlen);
	server_expect(s, (char)type, NULL);
	return true;
}

/*
 * Does pgmux hold a message of this type whole before it goes on? With
 * transaction pooling it does for every message it looks inside (see
 * client_relay()): all but COPY data and a bare Flush.
 */
static bool client_holds_whole(const struct client *c, uint8_t type, uint32_t mlen)
{
	return c->transaction_mode && (type != FE_FLUSH || mlen > 4) && type != FE_COPY_DATA &&
	       type != FE_COPY_DONE && type != FE_COPY_FAIL;
}

/*
 * Check the header of the client's next message (type, length p[1..4]):
 * false, with c closed and told why, when it is not a frontend message, longer
 * than max_packet_size, or one pgmux must hold whole (client_holds_whole())
 * longer than max_buffered_message_size. Checked before a backend is
 * borrowed for it, and before any of it is buffered beyond a read.
 */
static bool client_check_header(struct client *c, const uint8_t *p)
{
	const struct config *cfg = config_current();
	uint32_t mlen = get_u32(p + 1);

	/*
	 * A password message belongs to authentication, which is over by now:
	 * PostgreSQL ends the session for one, and so does pgmux, before it
	 * reaches a backend (with transaction pooling, one other clients use).
	 */
	if (!proto_valid_frontend_type(p[0]) || p[0] == FE_PASSWORD || mlen < 4) {
		client_fatal(c, SQLSTATE_PROTOCOL_VIOLATION, "invalid frontend message type %d", p[0]);
		return false;
	}
	if (mlen - 4 > (uint32_t)cfg->max_packet_size) {
		client_fatal(c, SQLSTATE_PROGRAM_LIMIT_EXCEEDED, "message of %u bytes exceeds max_packet_size (%d bytes)",
			     mlen - 4, cfg->max_packet_size);
		return false;
	}
	if (mlen - 4 > (uint32_t)cfg->max_buffered_message_size && client_holds_whole(c, p[0], mlen)) {
		client_fatal(c, SQLSTATE_PROGRAM_LIMIT_EXCEEDED,
			     "message of %u bytes exceeds max_buffered_message_size (%d bytes), the largest message "
			     "pgmux holds whole with transaction pooling",
			     mlen - 4, cfg->max_buffered_message_size);
		return false;
	}
	return true;
}

/* Follow the transaction state of backend s as the client's next message goes to it. */
static void client_count_message(struct client *c, struct server *s, uint8_t type)
{
	switch (type) {
	case FE_QUERY:
	case FE_FUNCTION_CALL:
		/*
		 * After an error in an extended-protocol batch the server skips
		 * everything up to the next Sync, a Query too: it gets no
		 * ReadyForQuery. With transaction pooling pgmux knows when.
		 */
		if (c->transaction_mode && s->skipping_until_sync)
			break;
		s->outstanding++;
		if (type == FE_FUNCTION_CALL)
			break;
		s->unsynced = false;
		STAT_INC(c->worker, queries);
		break;
	case FE_SYNC:
		s->outstanding++;
		s->unsynced = false;
		STAT_INC(c->worker, queries);
		break;
	case FE_PARSE:
	case FE_BIND:
	case FE_EXECUTE:
	case FE_DESCRIBE:
	case FE_CLOSE:
		s->unsynced = true;
		break;
	default:
		/* Flush and the COPY sub-protocol leave the transaction state alone. */
		break;
	}
}

/* Forward complete and partial messages to the backend. Returns false if c was closed. */
static bool client_relay(struct client *c)
{
	struct server *s = c->server;
	struct iobuf *in = &c->io.in;

	c->relay_waiting = false;
	c->replies_full = false;
	while (iobuf_len(in) > 0) {
		const uint8_t *p = iobuf_head(in);
		size_t avail = iobuf_len(in);
		uint8_t type;
		uint32_t mlen;
		size_t n;

		if (c->forward_remaining > 0) {
			n = avail < c->forward_remaining ? avail : c->forward_remaining;
			iobuf_append(&s->io.out, p, n);
			iobuf_consume(in, n);
			c->forward_remaining -= (uint32_t)n;
			continue;
		}
		if (avail < PROTO_HEADER_LEN)
			break;
		/* Until the backend has answered half of them (client_replies_arrived()). */
		if (c->transaction_mode && s->replies.count >= (uint32_t)config_current()->max_pending_replies) {
			c->replies_full = true;
			break;
		}
		if (!client_check_header(c, p))
			return false;
		type = p[0];
		mlen = get_u32(p + 1);
		if (type == FE_TERMINATE) {
			iobuf_consume(in, PROTO_HEADER_LEN);
			client_close(c, "client terminated the session");
			return false;
		}
		/*
		 * A Flush has no reply, unless it has a body: then the server
		 * refuses it (and skips to the next Sync), and that error must be
		 * matched with it, not with the next message in the reply queue.
		 */
		if (client_holds_whole(c, type, mlen)) {
			/* pgmux looks inside these: wait for the whole message. */
			if (avail < 1 + (size_t)mlen)
				break;
			if (!client_forward_tracked(c, s, type, p, mlen)) {
				/* Until the earlier batch is answered (client_replies_arrived()). */
				c->relay_waiting = true;
				break;
			}
			if (c->state == CLIENT_CLOSED)
				return false;
			client_count_message(c, s, type);
			iobuf_consume(in, 1 + (size_t)mlen);
			continue;
		}
		client_count_message(c, s, type);
		n = avail < 1 + (size_t)mlen ? avail : 1 + (size_t)mlen;
		iobuf_append(&s->io.out, p, n);
		iobuf_consume(in, n);
		c->forward_remaining = (uint32_t)(1 + mlen - n);
	}
	server_flush(s);
	if (c->state == CLIENT_CLOSED)
		return false;
	client_flush(c); /* replies pgmux owed at once (a cached Parse, a Close) */
	if (c->state == CLIENT_CLOSED)
		return false;
	/* Nothing more is relayed while a message waits: no more is read either. */
	if (c->server && (c->replies_full || client_input_blocked(c))) {
		c->read_paused = true;
		io_want_read(&c->io, false);
	}
	return true;
}

void client_replies_arrived(struct client *c)
{
	if (c->state == CLIENT_CLOSED)
		return;
	if (!c->relay_waiting) {
		/* Stopped at max_pending_replies: go on once the backend has answered half of them. */
		if (!c->replies_full || (c->server && c->server->replies.count >
							     (uint32_t)config_current()->max_pending_replies / 2))
			return;
	}
	/* Try the waiting message again (from the loop, as input left from before). */
	c->relay_waiting = false;
	c->replies_full = false;
	c->read_paused = false;
	io_want_read(&c->io, true);
	io_schedule_read(&c->io);
}

/*
 * What pgmux answers alone for a client outside a transaction, with no
 * backend. There a Sync only says ReadyForQuery 'I'; a Close of a statement
 * drops pgmux's record of it (the server-side statement stays for others, as
 * with server_close_owed()); a Close of a portal closes nothing (none
 * outlives its transaction); and a Parse of a named statement creates only
 * pgmux's record, as the backend prepares it when a message first uses it
 * (server_ensure_prepared()). This matters beyond saving a borrow: libpq's
 * PQprepare() waits for its Parse and Sync, and a program that drives several
 * connections from one thread (pgbench -M prepared) would wait there, for a
 * backend, while its other connections hold every backend inside their
 * transactions, which only it can end.
 *
 * A Parse is the backend's to judge, though: pgmux answers it alone when a
 * backend of the pool accepted the same text and parameter types before
 * (pool_statement_known()), or, with unjudged set, when no backend could take
 * it without waiting for another client's transaction to end (see
 * client_borrow_for_parse()). A text the backend then refuses fails the first
 * message that uses it, with the backend's error (and pgmux forgets that the
 * text was good, so the next Parse of it is judged again).
 */
enum idle_answer {
	IDLE_ANSWERED,         /* answered; the message is consumed */
	IDLE_NEED_MORE,        /* the message is not all here yet */
	IDLE_BORROW,           /* it needs a backend */
	IDLE_BORROW_OR_ANSWER, /* a Parse that a backend should judge, if one can be had now */
	IDLE_CLOSED,           /* the client was closed (over a limit) */
};

/*
 * Does the batch that begins with the client's next message hold only what
 * pgmux answers alone (Parse, Close, Flush) up to its Sync? A Parse answered
 * here in a batch that goes on to a Bind would only move the server's
 * verdict on its text from the Parse to the Bind. IDLE_NEED_MORE when the
 * batch is not all here and no Flush asked for answers yet (PostgreSQL would
 * not answer before either); IDLE_ANSWERED when it may be answered here.
 */
static enum idle_answer client_batch_answerable(const struct client *c)
{
	const uint8_t *p = iobuf_head(&c->io.in);
	size_t avail = iobuf_len(&c->io.in), off = 0;
	uint8_t last = 0;

	while (avail - off >= PROTO_HEADER_LEN) {
		uint8_t type = p[off];
		uint32_t len = get_u32(p + off + 1);

		if (len < 4 || len - 4 > (uint32_t)config_current()->max_packet_size ||
		    (type != FE_PARSE && type != FE_CLOSE && type != FE_FLUSH && type != FE_SYNC))
			return IDLE_BORROW;
		if (type == FE_SYNC)
			return IDLE_ANSWERED;
		if (avail - off < 1 + (size_t)len)
			return IDLE_NEED_MORE;
		last = type;
		off += 1 + (size_t)len;
	}
	return last == FE_FLUSH ? IDLE_BORROW : IDLE_NEED_MORE;
}

static enum idle_answer client_answer_idle(struct client *c, bool unjudged)
{
	const uint8_t *p = iobuf_head(&c->io.in);
	uint8_t type = p[0];
	uint32_t mlen = get_u32(p + 1);
	const uint8_t *body = p + PROTO_HEADER_LEN;
	size_t blen = mlen - 4;
	char key[CLIENT_STMT_KEY_LEN + 1];
	struct msg_reader r;
	struct strmap_entry *e;

	if (!c->transaction_mode || (type != FE_SYNC && type != FE_PARSE && type != FE_CLOSE))
		return IDLE_BORROW;
	if (iobuf_len(&c->io.in) < 1 + (size_t)mlen)
		return IDLE_NEED_MORE;
	msg_reader_init(&r, body, blen);
	switch (type) {
	case FE_SYNC:
		if (blen != 0)
			return IDLE_BORROW; /* malformed: the server says why */
		proto_put_ready(&c->io.out, 'I');
		break;
	case FE_CLOSE: {
		const char *name;
		uint8_t kind;

		if (msg_read_u8(&r, &kind) != 0 || (kind != 'S' && kind != 'P') || (name = msg_read_str(&r)) == NULL ||
		    r.pos != blen)
			return IDLE_BORROW;
		if (kind == 'S' && (e = strmap_find(&c->stmts, client_stmt_key(name, key))) != NULL)
			prepared_free(strmap_delete(&c->stmts, e));
		iobuf_append_u8(&c->io.out, BE_CLOSE_COMPLETE);
		iobuf_append_u32(&c->io.out, 4);
		break;
	}
	case FE_PARSE: {
		struct sql_scan_result scan;
		struct prepared_stmt *st;
		const char *name = msg_read_str(&r), *query = msg_read_str(&r), *client_name;
		enum idle_answer batch;
		bool taken;

		/* The unnamed statement, a malformed message: as usual. */
		if (name == NULL || query == NULL || name[0] == '\0')
			return IDLE_BORROW;
		if ((batch = client_batch_answerable(c)) != IDLE_ANSWERED)
			return batch;
		taken = strmap_find(&c->stmts, client_stmt_key(name, key)) != NULL;
		/* A text that pins the session pins it on a backend; one that defines code, likewise, to be seen. */
		sql_scan(query, strlen(query), params_carried_names, SQL_SCAN_CARRY_SETS, &scan);
		if (scan.pin != SQL_PIN_NONE || scan.custom_overflow || (scan.effects & SQL_EFFECT_DEFINES_CODE))
			return IDLE_BORROW;
		if ((st = prepared_from_parse(body, blen, &client_name)) == NULL) {
			if (errno != ENOMEM)
				return IDLE_BORROW;
			client_fatal(c, SQLSTATE_OUT_OF_MEMORY, "out of memory");
			return IDLE_CLOSED;
		}
		if (!unjudged && !pool_statement_known(c->pool, st->server_name)) {
			prepared_free(st);
			return IDLE_BORROW_OR_ANSWER;
		}
		if (taken) {
			/* PostgreSQL's answer once the text passed its checks; the rest of the batch is skipped. */
			char message[300];

			prepared_free(st);
			snprintf(message, sizeof(message), "prepared statement \"%.256s\" already exists", name);
			proto_put_error(&c->io.out, "ERROR", SQLSTATE_DUPLICATE_PREPARED_STATEMENT, message, NULL, NULL);
			iobuf_consume(&c->io.in, 1 + (size_t)mlen);
			c->discard_until_sync = true;
			return IDLE_ANSWERED;
		}
		if (!client_statement_room(c)) {
			prepared_free(st);
			return IDLE_CLOSED;
		}
		st->sets_session = (scan.effects & CLIENT_SETTINGS_EFFECTS) != 0;
		st->writes = (scan.effects & SQL_EFFECT_WRITE) != 0;
		strmap_insert(&c->stmts, key, st);
		params_put(&c->stmt_names, st->server_name, key);
		iobuf_append_u8(&c->io.out, BE_PARSE_COMPLETE);
		iobuf_append_u32(&c->io.out, 4);
		STAT_INC(c->worker, parses_answered);
		if (unjudged)
			STAT_INC(c->worker, parses_unjudged);
		break;
	}
	}
	iobuf_consume(&c->io.in, 1 + (size_t)mlen);
	return IDLE_ANSWERED;
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
	result = pool_borrow(c->pool, c, &s, &error);
	if (result == POOL_QUEUED && !pool_backend_coming(c->pool)) {
		pool_cancel_wait(c);
		client_set_state(c, CLIENT_IDLE);
		return client_answer_idle(c, true) == IDLE_ANSWERED;
	}
	client_borrow_result(c, result, s, error);
	return c->state == CLIENT_ACTIVE;
}

/*
 * Is enough of what the idle client sent here to borrow a backend for it?
 * A backend borrowed for part of a message waits, with every other client
 * of the pool, for the rest, which a stalled client never sends: two
 * clients could hold a pool of two that way. So the first message must be
 * whole (it is held whole anyway, within max_buffered_message_size), and
 * so must the batch it begins, up to what makes PostgreSQL answer (Sync,
 * Flush, Query, FunctionCall): before that the client expects nothing
 * back, so waiting for it costs it nothing. Past CLIENT_EARLY_INPUT_LIMIT
 * of a batch, though, the backend is borrowed rather than more held.
 */
static bool client_batch_ready(const struct client *c)
{
	const uint8_t *p = iobuf_head(&c->io.in);
	size_t avail = iobuf_len(&c->io.in), off = 0;

	while (avail - off >= PROTO_HEADER_LEN) {
		uint8_t type = p[off];
		uint32_t mlen = get_u32(p + off + 1);
		size_t len = 1 + (size_t)mlen;

		/* A header pgmux refuses is refused now, where the relay checks it (client_check_header()). */
		if (!proto_valid_frontend_type(type) || type == FE_PASSWORD || mlen < 4 ||
		    mlen - 4 > (uint32_t)config_current()->max_buffered_message_size)
			return true;
		if (avail - off < len)
			break;
		if (type == FE_SYNC || type == FE_FLUSH || type == FE_QUERY || type == FE_FUNCTION_CALL ||
		    type == FE_TERMINATE)
			return true;
		off += len;
	}
	return off > 0 && avail >= CLIENT_EARLY_INPUT_LIMIT;
}

/* A logged-in client without a backend sent something. Returns false if c was closed or must wait. */
static bool client_process_idle(struct client *c)
{
	const uint8_t *p = iobuf_head(&c->io.in);

	if (c->discard_until_sync) {
		if (!client_discard_batch(c))
			return false;
		if (c->discard_until_sync)
			return false;
		client_flush(c);
		return c->state == CLIENT_IDLE;
	}
	if (c->ignore_remaining > 0) {
		size_t n = iobuf_len(&c->io.in) < c->ignore_remaining ? iobuf_len(&c->io.in) : c->ignore_remaining;

		iobuf_consume(&c->io.in, n);
		c->ignore_remaining -= (uint32_t)n;
		return true;
	}
	if (iobuf_len(&c->io.in) < PROTO_HEADER_LEN)
		return false;
	if (p[0] == FE_TERMINATE) {
		client_close(c, "client terminated the session");
		return false;
	}
	if (!client_check_header(c, p))
		return false;
	/*
	 * PostgreSQL ignores COPY messages outside a COPY (the rest of a COPY
	 * that failed, still on its way), and a Flush with nothing in flight
	 * has nothing to flush. Borrowing a backend for them would keep it from
	 * every other client until this one's next query: no ReadyForQuery
	 * would come to end the "transaction". They are dropped here, as they
	 * arrive. A Flush with a body is left to the server, which refuses it.
	 */
	if (p[0] == FE_COPY_DATA || p[0] == FE_COPY_DONE || p[0] == FE_COPY_FAIL ||
	    (p[0] == FE_FLUSH && get_u32(p + 1) == 4)) {
		c->ignore_remaining = 1 + get_u32(p + 1);
		return true;
	}
	if (c->transaction_lost) {
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
	switch (client_answer_idle(c, false)) {
	case IDLE_ANSWERED:
		return true;
	case IDLE_NEED_MORE:
	case IDLE_CLOSED:
		return false;
	case IDLE_BORROW_OR_ANSWER:
		if (!client_batch_ready(c))
			return false;
		return client_borrow_for_parse(c);
	case IDLE_BORROW:
		break;
	}
	/* Until the batch is here: then it is read again (client_handle_event()). */
	if (c->transaction_mode && !client_batch_ready(c))
		return false;
	client_begin_transaction(c);
	return c->state == CLIENT_ACTIVE;
}

/* Act on buffered input for the current state. Returns false if c was closed. */
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
			if (!client_process_auth(c))
				return c->state != CLIENT_CLOSED;
			continue;
		case CLIENT_ACTIVE:
			if (c->admin)
				return admin_process_input(c);
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
	if (s->outstanding > 0 || s->replies.count > 0 || s->forward_remaining > 0 || iobuf_len(&s->io.out) > 0)
		return false; /* the backend is working, or the client is not taking its answer */
	return s->tx_status != 'I' || s->unsynced || c->forward_remaining > 0 || iobuf_len(&c->io.in) > 0;
}

void client_janitor(struct client *c, uint64_t now)
{
	const struct config *cfg = config_current();
	bool idle = c->state == CLIENT_IDLE ||
		    (c->state == CLIENT_ACTIVE && !c->transaction_mode && c->server && server_is_clean(c->server));

	if (idle && cfg->idle_client_timeout_ms > 0 &&
	    now - c->last_activity_usec >= (uint64_t)cfg->idle_client_timeout_ms * 1000)
		client_fatal(c, "57P05", "terminating connection due to idle_client_timeout (%d s)",
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
		client_fatal(c, "25P03", "terminating connection due to idle_transaction_timeout (%d ms)",
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
		if (client_input_blocked(c) || (c->replies_full && c->server)) {
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
