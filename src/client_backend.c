/*
 * client_backend.c: the client module's side of the backend serving a
 * client (see client.h; client.c has the connection's life and its input).
 * Getting one: borrowing it from the pool per transaction (or once, with
 * session pooling), waiting for it within connection_borrow_timeout, a
 * batch failed meanwhile; bringing it to the client's session (the state
 * SQL of session.c) and completing the login on it; what it tells the client
 * while linked (the server_client_ops callbacks: replies, drained, a
 * reported parameter, a lost backend); what the client's SQL does to its
 * session (scanning, pinning: the hooks the reply tracker asks); and giving
 * it back, after the session's settings were read back when a statement
 * may have SET one PostgreSQL does not report.
 */
#include "client_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_stats.h"
#include "params.h"
#include "pgmux.h"
#include "pool.h"
#include "prepared.h"
#include "relay.h"
#include "server.h"
#include "session.h"
#include "sqlscan.h"
#include "stats.h"
#include "util.h"
#include "worker.h"

#define BORROW_TIMEOUT_MESSAGE "timed out waiting to acquire database connection"

static void client_link(struct client *c, struct server *s);
static const struct server_client_ops client_server_ops;

/* ------------------------------------------------------- getting a backend */

void client_lost_free(struct client *c)
{
	if (c->lost == NULL)
		return;
	free(c->lost->message);
	free(c->lost->detail);
	free(c->lost);
	c->lost = NULL;
}

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

/*
 * connection_borrow_timeout. The clients of a worker that wait for a backend
 * are on its borrow_waits list in deadline order and share one timer, set
 * for the first deadline: a timer per wait cost an event_add and an
 * event_del (some 380 instructions) in every transaction that queued. A
 * wait that ends only leaves the list; the timer, left as it was, finds
 * nothing due when it fires and is set again for the new first deadline.
 */
struct client_wait {
	struct list_node node; /* on the worker's borrow_waits while waiting */
	struct client *client;
	uint64_t deadline_usec;
};

static void client_wait_stop(struct client *c)
{
	if (c->wait)
		list_del(&c->wait->node);
}

void client_wait_free(struct client *c, bool closing)
{
	if (c->wait == NULL || (!closing && list_linked(&c->wait->node)))
		return;
	client_wait_stop(c);
	free(c->wait);
	c->wait = NULL;
}

bool client_wait_queued(const struct client *c)
{
	return c->wait != NULL && list_linked(&c->wait->node);
}

/* Set w's borrow timer for its first deadline, unless it is set for that or earlier already. */
static void borrow_timer_set(struct worker *w, uint64_t now)
{
	struct client_wait *first;
	uint64_t delay;
	struct timeval tv;

	if (list_empty(&w->borrow_waits))
		return;
	first = list_entry(w->borrow_waits.next, struct client_wait, node);
	if (w->borrow_timer_at != 0 && w->borrow_timer_at <= first->deadline_usec)
		return;
	delay = pgmux_usec_since(now, first->deadline_usec);
	tv.tv_sec = (time_t)(delay / 1000000);
	tv.tv_usec = (suseconds_t)(delay % 1000000);
	if (evtimer_add(w->borrow_timer, &tv) == 0)
		w->borrow_timer_at = first->deadline_usec;
}

/* The borrow timer: every wait whose deadline passed times out, then the timer is set for the next. */
static void borrow_timer_fired(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;
	uint64_t now = pgmux_now_usec();

	w->borrow_timer_at = 0;
	while (!list_empty(&w->borrow_waits)) {
		struct client_wait *first = list_entry(w->borrow_waits.next, struct client_wait, node);

		if (first->deadline_usec > now)
			break;
		list_del(&first->node);
		client_borrow_timeout(-1, EV_TIMEOUT, first->client);
	}
	borrow_timer_set(w, now);
}

static void client_arm_wait_timer(struct client *c)
{
	const struct config *cfg = config_current();
	struct worker *w = c->worker;
	struct list_node *pos;
	uint64_t now = pgmux_pass_now_usec();

	if (c->state != CLIENT_WAITING || cfg->connection_borrow_timeout_ms <= 0)
		return;
	if (w->borrow_timer == NULL && (w->borrow_timer = evtimer_new(w->base, borrow_timer_fired, w)) == NULL) {
		client_fatal(c, SQLSTATE_OUT_OF_MEMORY, "out of memory");
		return;
	}
	if (c->wait == NULL) {
		c->wait = calloc(1, sizeof(*c->wait));
		if (c->wait == NULL) {
			client_fatal(c, SQLSTATE_OUT_OF_MEMORY, "out of memory");
			return;
		}
		c->wait->client = c;
		list_init(&c->wait->node);
	}
	client_wait_stop(c);
	c->wait->deadline_usec = now + (uint64_t)cfg->connection_borrow_timeout_ms * 1000;
	/* In deadline order: at the end, unless a reload shortened the timeout. */
	for (pos = w->borrow_waits.prev; pos != &w->borrow_waits; pos = pos->prev)
		if (list_entry(pos, struct client_wait, node)->deadline_usec <= c->wait->deadline_usec)
			break;
	list_insert_between(&c->wait->node, pos, pos->next);
	borrow_timer_set(w, now);
}

/* Act on what pool_borrow() said; the client is WAITING. */
static void client_borrow_result(struct client *c, enum pool_borrow_result result, struct server *s,
				 const char *error)
{
	c->borrow_start_usec = pgmux_pass_now_usec(); /* the borrow wait (stats_borrow_ended()) counts from here */
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
void client_borrow(struct client *c)
{
	struct server *s;
	const char *error;
	enum pool_borrow_result result = pool_borrow(c->pool, &c->waiter, c->fresh_backend, &s, &error);

	client_borrow_result(c, result, s, error);
}

/* A logged-in client needs a backend for the transaction it just started. */
void client_begin_transaction(struct client *c)
{
	c->txn_start_usec = pgmux_pass_now_usec();
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
 * A Parse no backend of the pool has judged: borrow one to judge it, unless
 * the client would have to wait for another client's transaction to end
 * (no idle backend, none opening or on its way for it): then pgmux answers
 * the Parse itself, unjudged. Returns false if c was closed or must wait.
 */
bool client_borrow_for_parse(struct client *c)
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

/*
 * Answer the batch a client sent while no backend could be had: an
 * ErrorResponse, then drop its messages up to the Sync (or the Query) that
 * ends it and say ReadyForQuery, so that the connection stays usable.
 */
void client_fail_batch_detail(struct client *c, const char *sqlstate, const char *message,
				     const char *detail)
{
	client_wait_stop(c);
	pool_cancel_wait(&c->waiter);
	if (c->state == CLIENT_WAITING)
		client_set_state(c, CLIENT_IDLE);
	proto_put_error(&c->io.out, "ERROR", sqlstate, message, detail, NULL);
	c->relay.discard_until_sync = true;
	io_want_read(&c->io, true);
	/* Its input (the rest of the batch) is looked at by whoever called, once it is done. */
}

void client_fail_batch(struct client *c, const char *sqlstate, const char *message)
{
	client_fail_batch_detail(c, sqlstate, message, NULL);
}

/* ------------------------------- bringing its session over, giving it back */

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

/* The session keeps state pgmux cannot carry: it keeps this backend to the end. */
static void client_pin(struct client *c, const struct sql_scan_result *scan)
{
	if (c->pin_reason)
		return;
	/* Atomic because SHOW CLIENTS reads it from another worker. */
	__atomic_store_n(&c->pin_reason, sql_pin_reason_text(scan->pin), __ATOMIC_RELAXED);
	if (scan->pin_detail[0])
		c->pin_detail = xstrdup(scan->pin_detail);
	if (c->server) {
		server_set_pinned(c->server);
		pool_note_pinned(c->server);
	}
	/* Its backend listens on the mirrored channels: it delivers them from now on. */
	if (c->listen && c->listen->n_mirrored > 0)
		client_listen_mirror_pinned(c);
	__atomic_add_fetch(&client_pinned_sessions, 1, __ATOMIC_RELAXED);
	STAT_INC(c->worker, sessions_pinned);
	STAT_INC(c->worker, pins_by_reason[scan->pin]);
	log_client_because(LOG_LEVEL_INFO, c, NULL, c->pin_reason,
			   "session pinned to backend pid %d: %s%s%s%s", c->server ? c->server->backend_pid : 0,
			   c->pin_reason, c->pin_detail ? " (" : "", c->pin_detail ? c->pin_detail : "",
			   c->pin_detail ? ")" : "");
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
	client_keep_backend(c, &pin);
}

void client_keep_backend(struct client *c, const struct sql_scan_result *pin)
{
	client_pin(c, pin);
	server_set_state(c->server, SERVER_ACTIVE);
	client_set_state(c, CLIENT_ACTIVE);
	client_listen_unhold_rfq(c);
	client_flush(c);
	if (c->state == CLIENT_CLOSED)
		return;
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

/*
 * Give c's backend back. While draining, a client is closed here, between
 * transactions (FATAL 57P01), unless the backend only served its login: a
 * client that has just logged in runs its first transaction first.
 */
static void client_give_back_server(struct client *c, bool after_transaction);

void client_release_server(struct client *c)
{
	client_give_back_server(c, true);
}

static void client_give_back_server(struct client *c, bool after_transaction)
{
	struct server *s = c->server;

	if (c->settings_dirty && c->transaction_mode && !c->pin_reason) {
		struct iobuf sql;
		bool verify = c->state_unverified;
		struct session_verify check = {.user = c->startup.user, .prepared = s->prepared.count,
					       .listen_taken_over = c->listen && c->listen->on_backend};

		c->settings_dirty = false;
		c->state_unverified = false;
		s->reading_settings = true;
		/* Whatever the verification finds, what it cannot see goes before anyone else's turn. */
		if (verify)
			s->reset_before_reuse = true;
		/* Code pgmux cannot read may have UNLISTENed: the takeover's reading decides. */
		if (verify && c->listen && c->listen->n_mirrored > 0)
			c->listen->unlisten_deferred = true;
		client_set_state(c, CLIENT_SETUP);
		iobuf_init(&sql);
		session_settings_sql(&sql, session_params_set(&c->params), c->custom_pending, verify ? &check : NULL);
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
	/* A LISTEN ran on it: the hub takes its channels over before it goes (client_listen_handover.c). */
	if (c->listen && c->listen->on_backend) {
		c->listen->on_backend = false;
		if (!c->pin_reason && client_listen_handover_begin(c, s))
			return;
		/* It may listen, and nobody asked it: closed, not given back. */
		if (!c->pin_reason)
			server_set_pinned(s);
		c->listen->n_mirrored = 0;
	}
	c->server = NULL;
	__atomic_store_n(&c->backend_pid, 0, __ATOMIC_RELAXED);
	STAT_INC(c->worker, transactions);
	client_listen_unhold_rfq(c);
	client_set_state(c, CLIENT_IDLE);
	if (c->read_paused) {
		c->read_paused = false;
		io_want_read(&c->io, true);
	}
	server_unlink(s);
	/* The pool may hand s to another worker at once: nothing touches it after this. */
	pool_release(s);
	if (c->worker->draining && after_transaction)
		client_fatal(c, SQLSTATE_ADMIN_SHUTDOWN, "pgmux is shutting down");
	else if (c->state == CLIENT_IDLE)
		client_consider_move(c);
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
		client_give_back_server(c, false);
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
	bool mirror;

	stats_borrow_ended(c);
	c->fresh_backend = false;
	c->batch_recording = c->transaction_mode && c->logged_in;
	iobuf_reset(&c->first_batch);
	client_wait_stop(c);
	c->server = s;
	server_link(s, c, c->id, &client_server_ops, &c->relay.session, c->transaction_mode);
	__atomic_store_n(&c->backend_pid, s->backend_pid, __ATOMIC_RELAXED);
	if (c->pin_reason)
		server_set_pinned(s);
	/* A session-pooled client or a pinned one holds this backend beyond a transaction. */
	if (c->pin_reason || !c->transaction_mode)
		pool_note_pinned(s);
	iobuf_init(&sql);
	/* Its hub channels LISTENed here first, when the batch may UNLISTEN (client_listen_mirror()). */
	mirror = c->listen && client_listen_mirror(c, &sql);
	if (!mirror && !s->init_undone && !s->reset_before_reuse && client_state_matches(c, s)) {
		client_set_state(c, CLIENT_SETUP);
		client_setup_complete(c);
		return;
	}
	if (!client_state_sql(c, s, &sql) && !mirror) {
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

/* ------------------------------- what the client's SQL does to its session */

/*
 * Scan SQL the client sends: pin the session if need be, and note what its
 * settings read-back must cover. Returns the text's SQL_EFFECT_* bits.
 */
static unsigned client_scan_sql(struct client *c, const char *sql, size_t len)
{
	struct sql_scan_result scan;

	sql_scan(sql, len, params_carried_names,
		 SQL_SCAN_CARRY_SETS | (c->relay.listen_apply ? SQL_SCAN_LISTEN_HELD : 0), &scan);
	if (scan.pin != SQL_PIN_NONE)
		client_pin(c, &scan);
	/* Taken over when its transaction ends, instead of a pin (client_listen_handover.c). */
	if (scan.effects & SQL_EFFECT_LISTEN)
		client_listen_state(c)->on_backend = client_listen_state(c)->listen_ran = true;
	if (scan.effects & SQL_EFFECT_RESET_ALL)
		c->relay.session.reset_all_pending = true;
	/*
	 * DISCARD ALL is UNLISTEN * too. On a mirrored transaction the backend
	 * says at its end what took effect (the takeover, client_listen_handover.c);
	 * else an UNLISTEN sent to the backend ends what pgmux holds now.
	 */
	if (c->listen && c->listen->n_mirrored > 0 && !c->pin_reason) {
		if (scan.effects & (SQL_EFFECT_DISCARD_ALL | SQL_EFFECT_UNLISTEN))
			c->listen->unlisten_deferred = true;
	} else {
		if (scan.effects & SQL_EFFECT_DISCARD_ALL)
			client_listen_forget(c);
		if ((scan.effects & SQL_EFFECT_UNLISTEN) && c->listen && c->listen->n_channels > 0)
			client_listen_unlisten_text(c, sql, len);
	}
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

	if (st->listen && c->relay.listen_apply) {
		/* A LISTEN pgmux answered, now run inside a transaction: taken over when it ends. */
		client_listen_state(c)->on_backend = client_listen_state(c)->listen_ran = true;
		/* An UNLISTEN: as one sent in a text (client_scan_sql()). */
		if (c->listen->n_channels > 0)
			client_rescan_prepared(c, st);
	} else if (st->listen) {
		struct sql_scan_result scan = { .pin = SQL_PIN_LISTEN };

		client_pin(c, &scan);
	} else if (st->sets_session) {
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

/* --------------------------------------- what the backend tells the client */

/*
 * The error a client of transaction pooling gets for a transaction its
 * backend took with it. When the server ended the session with a FATAL, its
 * own SQLSTATE and message (57P01 "terminating connection due to
 * administrator command", a shutdown's or recovery's 57P02, 57P03...), so
 * that code that matches on them works as it does directly, with severity
 * ERROR and a DETAIL that says the session goes on; else 08006 with pgmux's
 * words and the reason (reason) as DETAIL.
 */
static void client_lost_error(const struct server *s, const char *reason, const char **sqlstate,
			      const char **message, const char **detail)
{
	if (s->end_message) {
		*sqlstate = s->end_sqlstate;
		*message = s->end_message;
		*detail = "pgmux kept this client's session: the transaction was rolled back, and the next one "
			  "runs on another connection to the database server";
	} else {
		*sqlstate = SQLSTATE_CONNECTION_FAILURE;
		*message = CLIENT_LOST_TRANSACTION_MESSAGE;
		*detail = reason;
	}
}

void client_record_batch(struct client *c, const uint8_t *p, size_t n)
{
	if (iobuf_len(&c->first_batch) + n > CLIENT_RESEND_MAX) {
		c->batch_recording = false;
		iobuf_reset(&c->first_batch);
		return;
	}
	iobuf_append(&c->first_batch, p, n);
}

/*
 * The backend ended its session before it answered anything the client
 * sent in this transaction (end_unanswered), with idle_session_timeout
 * (57P05): PostgreSQL arms that timer only while it waits for a statement
 * outside a transaction, so none of what pgmux sent ran. When that was one
 * whole batch pgmux may send again (proto_batch_resendable()), it goes, as
 * the client sent it, to another backend, a new connection; the client
 * notices nothing. Returns false when not (the caller reports the loss).
 */
static bool client_resend_first_batch(struct client *c, struct server *s, const char *reason)
{
	struct iobuf again;

	if (!c->batch_recording || !s->end_unanswered || s->end_message == NULL ||
	    strcmp(s->end_sqlstate, SQLSTATE_IDLE_SESSION_TIMEOUT) != 0 || c->resends >= CLIENT_MAX_RESENDS ||
	    s->replies.outstanding != 1 ||
	    !proto_batch_resendable(iobuf_head(&c->first_batch), iobuf_len(&c->first_batch)))
		return false;
	/* The batch, then what the client sent after it, not yet relayed. */
	iobuf_init(&again);
	iobuf_append(&again, iobuf_head(&c->first_batch), iobuf_len(&c->first_batch));
	iobuf_append(&again, iobuf_head(&c->io.in), iobuf_len(&c->io.in));
	if (again.failed) {
		iobuf_free(&again);
		return false;
	}
	iobuf_free(&c->io.in);
	c->io.in = again;
	c->resends++;
	stats_first_batch_resent();
	c->batch_recording = false;
	iobuf_reset(&c->first_batch);
	c->relay.waiting = false;
	c->relay.replies_full = false;
	c->fresh_backend = true;
	client_set_state(c, CLIENT_IDLE);
	if (c->read_paused) {
		c->read_paused = false;
		io_want_read(&c->io, true);
	}
	log_client(LOG_LEVEL_INFO, c, "backend ended its session before answering anything (%s); the transaction's "
				      "first statements go to another backend",
		   reason);
	io_schedule_read(&c->io);
	return true;
}

/*
 * The backend linked to c failed (server_close(), unlinked already). With
 * transaction pooling the client's transaction fails with an ERROR and its
 * connection stays usable; a pinned or session-pooled client is closed
 * with a FATAL: the server's own when it sent one (passed on as it was with
 * session pooling, so nothing more is sent), else pgmux's of class 08.
 */
static void client_server_lost(struct client *c, struct server *s, const char *sqlstate, const char *message)
{
	bool was_in_transaction = s->tx_status == 'T' || s->tx_status == 'E';
	const char *error_sqlstate, *error_message, *error_detail;

	if (c->server == s)
		c->server = NULL;
	if (c->state == CLIENT_CLOSED)
		return;
	if (c->listen && !c->listen->handover) {
		/* Its transaction is lost, rolled back: what it UNLISTENed on that backend never took effect. */
		c->listen->on_backend = false;
		c->listen->n_mirrored = 0;
	}
	if (c->listen && c->listen->handover) {
		/* The transaction was over: the client keeps what was taken over so far. */
		client_listen_handover_lost(c, message);
		return;
	}
	if (c->listen && c->listen->rfq_held) {
		/* Lost while its settings were read back, after the transaction's end. */
		client_listen_unhold_rfq(c);
	}
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
		if (s->end_relayed) {
			/* The client has the server's FATAL, as PostgreSQL sent it: the connection ends, as directly. */
			(void)io_flush(&c->io);
			client_close(c, message);
		} else if (s->end_message) {
			/* The server's own FATAL, which pgmux held back (transaction pooling): the session ends with it. */
			client_fatal_detail(c, s->end_sqlstate, s->end_message, NULL);
		} else {
			client_fatal(c, sqlstate, "%s: %s",
				     c->pin_reason ? "the database connection of this pinned session was lost"
						   : "lost the connection to the database server",
				     message);
		}
		return;
	}
	if (client_resend_first_batch(c, s, message))
		return;
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
	client_lost_error(s, message, &error_sqlstate, &error_message, &error_detail);
	log_client_because(LOG_LEVEL_WARNING, c, error_sqlstate, message,
			   "backend lost mid-transaction (%s); the client's transaction fails", message);
	if (s->replies.outstanding > 0) {
		proto_put_error(&c->io.out, "ERROR", error_sqlstate, error_message, error_detail, NULL);
		/* Messages sent after the failed batch began belong to it: drop them up to its Sync. */
		if (s->replies.unsynced)
			c->relay.discard_until_sync = true;
		else
			proto_put_ready(&c->io.out, 'I');
	} else if (was_in_transaction || s->replies.unsynced) {
		/* Nothing in flight, but an open transaction died: its next statement must fail. */
		c->transaction_lost = true;
		client_lost_free(c);
		c->lost = xcalloc(1, sizeof(*c->lost));
		snprintf(c->lost->sqlstate, sizeof(c->lost->sqlstate), "%s", error_sqlstate);
		c->lost->message = s->end_message ? xstrdup(error_message) : NULL;
		c->lost->detail = xstrdup(error_detail);
	}
	client_flush(c);
	/* Messages already buffered (the rest of the batch, the next one) are looked at from the loop. */
	io_schedule_read(&c->io);
}

/* The backend linked to c answered something: a message waiting for that may go now. */
static void client_replies_arrived(struct client *c)
{
	if (c->state == CLIENT_CLOSED)
		return;
	/* A retiring session's transaction may be over: client_handle_event() looks, from the loop. */
	if (c->retiring)
		io_schedule_read(&c->io);
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
	/* The backend answered: what it was sent may have run, and is never sent again. */
	if (c->batch_recording || c->resends) {
		c->batch_recording = false;
		c->resends = 0;
		iobuf_reset(&c->first_batch);
		iobuf_shrink(&c->first_batch);
	}
	/* A LISTEN ran on it: the client's ReadyForQuery waits for the takeover (client_listen_handover.c). */
	if (over && c->listen && c->listen->on_backend && !c->pin_reason && c->server == s)
		client_listen_hold_rfq(c);
	/* A pinned session between its transactions: the notifications pgmux held for it go now. */
	if (c->pin_reason && c->listen && c->listen->n_pending > 0)
		client_listen_idle(c);
	client_flush(c);
	client_replies_arrived(c);
	/* The transaction is over: give the backend back (the last use of it here). */
	if (over && c->state != CLIENT_CLOSED && c->server == s)
		client_release_server(c);
}

/*
 * A notification from the backend: of a channel the client holds through
 * the hub (the backend listens on it too, in a mirrored transaction, or
 * LISTENed on it in a pinned session), the hub's copy is the one it gets.
 */
static bool client_on_notification(struct client *c, const uint8_t *body, size_t len)
{
	const char *channel, *payload;

	if (c->listen == NULL || c->listen->n_channels == 0 || !proto_parse_notification(body, len, &channel, &payload))
		return true;
	return !client_listen_has(c, channel);
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

const struct reply_hooks client_reply_hooks = {
	.scan = client_hook_scan,
	.bound = client_hook_bound,
	.known = client_hook_known,
};

static const struct server_client_ops client_server_ops = {
	.deliver = client_deliver,
	.congested = client_congested,
	.replies_arrived = client_on_replies,
	.drained = client_on_drained,
	.ready_for_query = stats_ready_for_query,
	.parameter = client_on_parameter,
	.notification = client_on_notification,
	.lost = client_server_lost,
};
