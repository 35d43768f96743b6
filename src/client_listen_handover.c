/*
 * client_listen_handover.c: a LISTEN that ran on a backend (inside a
 * transaction block, or among other statements in one Query) is taken over
 * by the hub when the transaction ends, so that the session is not pinned
 * (transaction pooling; src/README.md, "LISTEN and NOTIFY").
 *
 * At the ReadyForQuery 'I' that would give the backend back, the client's
 * ReadyForQuery is held and the backend is asked what it listens on
 * (pg_listening_channels()): nothing (rolled back) gives it back as usual;
 * more than max_client_listen_channels with the client's own keeps the
 * session on it (a pin, as before). Otherwise the client subscribes to the
 * new channels through the hub and to the marker channel
 * (CLIENT_LISTEN_SYNC_CHANNEL), and once the hub listens on them all, the
 * backend runs LISTEN on the marker channel and NOTIFY of a token there, in
 * one transaction. Notifications are one queue in commit order: the backend
 * delivers every notification of its channels committed before the marker,
 * then the marker; the hub every one committed after its LISTENs, the
 * marker among them. So the client takes the backend's copies up to the
 * backend's marker (except of channels it held through the hub before: the
 * hub delivers those) and the hub's copies of the new channels after the
 * hub's marker: each notification once, in order. What the hub delivers of
 * them after its marker but before the backend's marker waits (`later`),
 * and follows the backend's. Then UNLISTEN * leaves the backend clean, it
 * goes back, and the client gets its ReadyForQuery, then the notifications.
 *
 * The same takeover ends a mirrored transaction (client_listen_mirror():
 * pgmux's setup query LISTENed on the client's hub channels on the backend
 * before the client's first statement, so that an UNLISTEN, UNLISTEN * or
 * DISCARD ALL it runs takes effect at its commit, as in PostgreSQL). A
 * mirrored channel the backend still listens on stays the hub's (a
 * rollback, of the transaction or a savepoint, kept it); one it no longer
 * listens on was UNLISTENed by a commit (the mirror committed before the
 * transaction began, so nothing but a committed UNLISTEN removes it), and
 * ends: unsubscribed from the hub, its queued notifications dropped
 * (unlistened()). Nothing left (pg_listening_channels() empty) needs no
 * UNLISTEN *; else UNLISTEN * leaves the backend clean as above.
 *
 * Bounds: the new channels are at most max_client_listen_channels; what
 * waits counts against max_client_pending_notifications; the takeover takes
 * at most CLIENT_LISTEN_HANDOVER_TIMEOUT_MS, else the backend is closed
 * instead of given back (the client keeps its subscriptions: notifications
 * may then be lost or come twice, and a warning says so).
 */
#include "client_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "auth.h"
#include "config.h"
#include "listen.h"
#include "pgmux.h"
#include "server.h"
#include "util.h"
#include "worker.h"

/* Between polls of a backend whose marker has not come yet (its notifications come when it reads). */
#define POLL_USEC 2000

enum handover_phase {
	PHASE_CHANNELS,   /* asking the backend what it listens on */
	PHASE_HUB,        /* waiting for the hub to listen on the new channels and the marker channel */
	PHASE_MARK,       /* the backend sends the marker */
	PHASE_POLL,       /* waiting for the backend's marker (a query now and then makes it read) */
	PHASE_UNLISTEN,   /* UNLISTEN * on the backend */
	PHASE_HUB_MARKER, /* the backend is clean: waiting for the hub's marker */
};

struct client_handover {
	enum handover_phase phase;
	char token[40];
	char (*fresh)[SQL_LISTEN_NAME_MAX + 1]; /* the channels taken over */
	int n_fresh;
	bool subscribed;     /* to the marker channel */
	bool backend_marker; /* the backend's marker came: its notifications after it are dropped */
	bool hub_marker;     /* the hub's came: its copies of the fresh channels are the client's */
	struct iobuf later;  /* the hub's copies after its marker, before the backend's */
	int n_later;
	struct event *deadline, *poll;
};

static const char channels_sql[] =
	"SELECT coalesce(json_agg(c)::text, '[]') FROM pg_catalog.pg_listening_channels() AS c";

static void run(struct client *c, enum handover_phase phase, const char *sql);

/* The takeover under way for c, if any (its LISTEN state is made on first need). */
static struct client_handover *handover_of(const struct client *c)
{
	return c->listen ? c->listen->handover : NULL;
}

static bool is_fresh(const struct client_handover *h, const char *channel)
{
	for (int i = 0; i < h->n_fresh; i++)
		if (strcmp(h->fresh[i], channel) == 0)
			return true;
	return false;
}

void client_listen_hold_rfq(struct client *c)
{
	struct iobuf *out = &c->io.out;
	static const uint8_t idle_rfq[6] = { 'Z', 0, 0, 0, 5, 'I' };
	size_t n = iobuf_len(out);

	if (c->listen == NULL || c->listen->rfq_held || n < sizeof(idle_rfq) || memcmp(iobuf_head(out) + n - 6, idle_rfq, 6) != 0)
		return;
	memcpy(c->listen->rfq, idle_rfq, sizeof(idle_rfq));
	out->end -= sizeof(idle_rfq);
	c->listen->rfq_held = true;
}

void client_listen_unhold_rfq(struct client *c)
{
	if (c->listen == NULL || !c->listen->rfq_held)
		return;
	c->listen->rfq_held = false;
	iobuf_append(&c->io.out, c->listen->rfq, sizeof(c->listen->rfq));
}

/* The takeover is over (or given up): hub deliveries reach the client as usual from now on. */
static void handover_end(struct client *c)
{
	struct client_handover *h = handover_of(c);

	if (h == NULL)
		return;
	c->listen->handover = NULL;
	if (h->subscribed && c->pool && !client_listen_has(c, CLIENT_LISTEN_SYNC_CHANNEL))
		listen_unsubscribe(c->pool, c->id, CLIENT_LISTEN_SYNC_CHANNEL);
	if (c->server)
		c->server->query_notify = NULL;
	if (h->deadline)
		event_free(h->deadline);
	if (h->poll)
		event_free(h->poll);
	iobuf_free(&h->later);
	free(h->fresh);
	free(h);
}

/* The client is between transactions again, with or without its backend (given back before). */
static void client_idle_again(struct client *c)
{
	client_listen_unhold_rfq(c);
	if (c->state != CLIENT_IDLE)
		client_set_state(c, CLIENT_IDLE);
	c->read_paused = false;
	io_want_read(&c->io, true);
	client_flush(c);
	if (c->state != CLIENT_CLOSED)
		io_schedule_read(&c->io);
}

/* Done: the backend is clean and goes back; the client gets its ReadyForQuery, then its notifications. */
static void handover_done(struct client *c)
{
	handover_end(c);
	c->listen->n_mirrored = 0;
	client_release_server(c);
	if (c->state == CLIENT_CLOSED)
		return;
	client_flush(c);
	if (c->state == CLIENT_IDLE)
		client_resume(c);
}

/* The backend keeps what it listens on, and the session keeps the backend (fail closed). */
static void handover_pin(struct client *c, const char *why)
{
	struct sql_scan_result pin = { .pin = SQL_PIN_LISTEN };

	log_client(LOG_LEVEL_WARNING, c, "LISTEN in a transaction stays on its backend: %s", why);
	snprintf(pin.pin_detail, sizeof(pin.pin_detail), "%s", why);
	for (int i = 0; handover_of(c) && i < handover_of(c)->n_fresh; i++)
		client_listen_remove(c, handover_of(c)->fresh[i]);
	handover_end(c);
	client_keep_backend(c, &pin);
}

/* Give the backend up (it may still listen): closed, not given back; the client keeps its subscriptions. */
static void handover_abandon(struct client *c, const char *why)
{
	struct server *s = c->server;

	log_client(LOG_LEVEL_WARNING, c, "taking over the LISTEN of backend pid %d failed (%s); it is closed, and "
		   "notifications of the channels it listened on may have been lost or may come twice",
		   s ? s->backend_pid : 0, why);
	handover_end(c);
	c->listen->n_mirrored = 0;
	if (s) {
		c->server = NULL;
		__atomic_store_n(&c->backend_pid, 0, __ATOMIC_RELAXED);
		server_unlink(s);
		server_close(s, "its LISTEN could not be taken over");
	}
	client_idle_again(c);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;
	struct client_handover *h = handover_of(c);

	if (h == NULL || c->state == CLIENT_CLOSED)
		return;
	if (h->phase == PHASE_HUB_MARKER) {
		/* The backend is clean: it goes back; the hub's copies reach the client from now on. */
		log_client(LOG_LEVEL_WARNING, c, "the marker of a LISTEN takeover did not come through pgmux's LISTEN "
			   "connection in %d ms; notifications of its channels may have been lost or may come twice",
			   CLIENT_LISTEN_HANDOVER_TIMEOUT_MS);
		handover_done(c);
		return;
	}
	if (h->phase == PHASE_CHANNELS) {
		client_fatal(c, SQLSTATE_CONNECTION_FAILURE, "pgmux could not take over this session's LISTEN: the "
			     "server did not say in time what it listens on");
		return;
	}
	handover_abandon(c, "timed out");
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
	struct client *c = arg;

	if (handover_of(c) && handover_of(c)->phase == PHASE_POLL && c->server)
		run(c, PHASE_POLL, "SELECT 1");
}

/* Once both markers came: the backend's notifications are all here, then what the hub sent after its own. */
static void markers_met(struct client *c)
{
	struct client_handover *h = handover_of(c);

	if (h->n_later > 0) {
		iobuf_append(&c->listen->pending, iobuf_head(&h->later), iobuf_len(&h->later));
		c->listen->n_pending += h->n_later;
		iobuf_reset(&h->later);
		h->n_later = 0;
	}
}

/* A backend notification during the takeover. */
static void on_backend_notify(struct server *s, const uint8_t *body, size_t len, void *arg)
{
	struct client *c = arg;
	struct client_handover *h = handover_of(c);
	const char *channel, *payload;
	struct iobuf msg;
	size_t begin;

	if (h == NULL || c->state == CLIENT_CLOSED || !proto_parse_notification(body, len, &channel, &payload))
		return;
	if (strcmp(channel, CLIENT_LISTEN_SYNC_CHANNEL) == 0) {
		if (strcmp(payload, h->token) == 0) {
			h->backend_marker = true;
			if (h->hub_marker)
				markers_met(c);
		}
		return;
	}
	/* After its marker, the hub's; of a channel the client held before, the hub's too. */
	if (h->backend_marker || (client_listen_has(c, channel) && !is_fresh(h, channel)))
		return;
	iobuf_init(&msg);
	begin = proto_begin(&msg, BE_NOTIFICATION);
	iobuf_append(&msg, body, len);
	proto_end(&msg, begin);
	if (!msg.failed)
		client_listen_queue(c, iobuf_head(&msg), iobuf_len(&msg));
	iobuf_free(&msg);
}

bool client_listen_handover_filter(struct client *c, const uint8_t *msg, size_t len)
{
	struct client_handover *h = handover_of(c);
	const char *channel, *payload;

	if (len < PROTO_HEADER_LEN || !proto_parse_notification(msg + PROTO_HEADER_LEN, len - PROTO_HEADER_LEN, &channel, &payload))
		return true;
	if (strcmp(channel, CLIENT_LISTEN_SYNC_CHANNEL) == 0) {
		/* A marker: this client's, or another takeover's (late, or of another client). */
		bool listens = client_listen_has(c, channel);

		if (h && strcmp(payload, h->token) == 0 && !h->hub_marker) {
			h->hub_marker = true;
			if (h->backend_marker)
				markers_met(c);
			if (h->phase == PHASE_HUB_MARKER)
				handover_done(c);
		}
		/* Only a client that listens on that channel itself sees them. */
		return listens && c->state != CLIENT_CLOSED;
	}
	/* One on its way when its UNLISTEN took effect is dropped, as PostgreSQL drops those it has not read. */
	if (h == NULL || !is_fresh(h, channel))
		return client_listen_has(c, channel);
	if (!h->hub_marker)
		return false; /* the backend delivers it */
	if (h->backend_marker)
		return true;
	if (c->listen->n_pending + h->n_later >= config_current()->max_client_pending_notifications) {
		client_fatal(c, SQLSTATE_PROGRAM_LIMIT_EXCEEDED,
			     "terminating connection: %d notifications are waiting for this session, the limit set by "
			     "max_client_pending_notifications",
			     c->listen->n_pending + h->n_later);
		return false;
	}
	iobuf_append(&h->later, msg, len);
	h->n_later++;
	return false;
}

static void on_unlistened(struct server *s, bool ok, void *arg)
{
	struct client *c = arg;
	struct client_handover *h = handover_of(c);

	if (h == NULL)
		return;
	if (!ok) {
		handover_abandon(c, s->query_error ? s->query_error : "UNLISTEN * failed");
		return;
	}
	s->query_notify = NULL;
	if (h->hub_marker) {
		handover_done(c);
		return;
	}
	h->phase = PHASE_HUB_MARKER;
}

/* The marker query, or a poll, is answered. */
static void on_marked(struct server *s, bool ok, void *arg)
{
	struct client *c = arg;
	struct client_handover *h = handover_of(c);
	struct timeval tv = { 0, POLL_USEC };

	if (h == NULL)
		return;
	if (!ok) {
		handover_abandon(c, s->query_error ? s->query_error : "the marker's query failed");
		return;
	}
	if (h->backend_marker) {
		run(c, PHASE_UNLISTEN, "UNLISTEN *");
		return;
	}
	/* Its own notifications come when it next reads (PostgreSQL 14 and later): ask again. */
	if (h->phase == PHASE_MARK) {
		run(c, PHASE_POLL, "SELECT 1");
		return;
	}
	if (h->poll == NULL && (h->poll = evtimer_new(c->worker->base, on_poll, c)) == NULL) {
		handover_abandon(c, "out of memory");
		return;
	}
	evtimer_add(h->poll, &tv);
}

/* The hub listens on the new channels and the marker channel: the backend sends the marker. */
static void send_marker(struct client *c)
{
	struct client_handover *h = handover_of(c);
	char sql[160];

	snprintf(sql, sizeof(sql), "LISTEN \"%s\"; NOTIFY \"%s\", '%s'", CLIENT_LISTEN_SYNC_CHANNEL,
		 CLIENT_LISTEN_SYNC_CHANNEL, h->token);
	run(c, PHASE_MARK, sql);
}

bool client_listen_handover_ready(struct client *c, const char *error)
{
	struct client_handover *h = handover_of(c);

	if (h == NULL || h->phase != PHASE_HUB)
		return false;
	if (error) {
		handover_pin(c, error);
		return true;
	}
	send_marker(c);
	return true;
}

/*
 * The mirror (client_listen_mirror()): a channel the client held through the
 * hub when the transaction began, and the backend no longer listens on, was
 * UNLISTENed by the transaction, which committed (the mirror committed
 * before it, so a rollback cannot undo it): the hub's subscription ends
 * now, and what it queued of that channel is dropped, as PostgreSQL drops
 * what it has not delivered when the UNLISTEN commits. The others stay.
 */
static void unlistened(struct client *c, json_t *listening)
{
	struct client_listen *l = c->listen;

	l->unlisten_deferred = false;
	for (int k = 0; k < l->n_mirrored; k++) {
		const char *name = l->mirrored[k];
		bool still = false;
		size_t i;
		json_t *v;

		json_array_foreach(listening, i, v) {
			const char *on = json_string_value(v);

			if (on && strcmp(on, name) == 0) {
				still = true;
				break;
			}
		}
		if (!still && client_listen_has(c, name)) {
			client_listen_remove(c, name);
			client_listen_drop_pending(c, name);
		}
	}
}

/* What the backend listens on is known: take it over, keep it, or give the backend back. */
static void on_channels(struct server *s, bool ok, void *arg)
{
	struct client *c = arg;
	struct client_handover *h = handover_of(c);
	json_error_t jerr;
	json_t *root, *v;
	size_t i, n;
	int limit = config_current()->max_client_listen_channels;
	bool wait = false;

	if (h == NULL)
		return;
	root = ok && s->query_value ? json_loads(s->query_value, 0, &jerr) : NULL;
	if (!json_is_array(root)) {
		json_decref(root);
		handover_pin(c, "pgmux could not read what the backend listens on");
		return;
	}
	n = json_array_size(root);
	h->fresh = xcalloc(n ? n : 1, sizeof(*h->fresh));
	unlistened(c, root);
	json_array_foreach(root, i, v) {
		const char *name = json_string_value(v);

		if (name == NULL || strlen(name) > SQL_LISTEN_NAME_MAX || strcmp(name, CLIENT_LISTEN_SYNC_CHANNEL) == 0 ||
		    client_listen_has(c, name))
			continue;
		snprintf(h->fresh[h->n_fresh++], sizeof(*h->fresh), "%s", name);
	}
	json_decref(root);
	if (n == 0) {
		/* It listens on nothing (rolled back, or UNLISTENed, the mirror too): it goes back as it is. */
		s->query_notify = NULL;
		handover_done(c);
		return;
	}
	if (h->n_fresh == 0) {
		/* The client held them all through the hub already: the backend only forgets them. */
		h->backend_marker = h->hub_marker = true;
		run(c, PHASE_UNLISTEN, "UNLISTEN *");
		return;
	}
	if (c->listen->n_channels + h->n_fresh > limit) {
		char why[160];

		snprintf(why, sizeof(why), "%d channels with the session's own, more than max_client_listen_channels (%d)",
			 c->listen->n_channels + h->n_fresh, limit);
		handover_pin(c, why);
		return;
	}
	for (int k = 0; k <= h->n_fresh; k++) {
		const char *name = k < h->n_fresh ? h->fresh[k] : CLIENT_LISTEN_SYNC_CHANNEL;
		enum listen_result r = listen_subscribe(c->pool, c->id, c->worker->id, name);

		if (r == LISTEN_ERROR) {
			/* Those subscribed so far are in the list: handover_pin() takes them out. */
			handover_pin(c, "pgmux's LISTEN connection is not running");
			return;
		}
		if (k < h->n_fresh)
			client_listen_add(c, name);
		else
			h->subscribed = true;
		wait |= r == LISTEN_WAIT;
	}
	if (wait) {
		h->phase = PHASE_HUB;
		listen_wait(c->pool, c->id, c->worker->id);
		return;
	}
	send_marker(c);
}

static void run(struct client *c, enum handover_phase phase, const char *sql)
{
	struct server *s = c->server;

	c->listen->handover->phase = phase;
	s->query_notify = on_backend_notify;
	server_run_query(s, sql, phase == PHASE_CHANNELS ? on_channels
				 : phase == PHASE_UNLISTEN ? on_unlistened
							    : on_marked,
			 c);
}

bool client_listen_handover_begin(struct client *c, struct server *s)
{
	struct client_handover *h;
	struct timeval tv = { CLIENT_LISTEN_HANDOVER_TIMEOUT_MS / 1000, (CLIENT_LISTEN_HANDOVER_TIMEOUT_MS % 1000) * 1000 };
	uint8_t nonce[8];
	uint64_t r;

	if (handover_of(c) || s->tx_status != 'I')
		return false;
	h = xcalloc(1, sizeof(*h));
	iobuf_init(&h->later);
	auth_random_bytes(nonce, sizeof(nonce));
	memcpy(&r, nonce, sizeof(r));
	/* Unique among this instance's clients (id) and among instances sharing the server (random). */
	snprintf(h->token, sizeof(h->token), "%" PRIx64 "-%016" PRIx64, c->id, r);
	h->deadline = evtimer_new(c->worker->base, on_deadline, c);
	if (h->deadline == NULL) {
		free(h);
		return false;
	}
	evtimer_add(h->deadline, &tv);
	client_listen_state(c)->handover = h;
	if (c->state != CLIENT_SETUP)
		client_set_state(c, CLIENT_SETUP);
	run(c, PHASE_CHANNELS, channels_sql);
	return true;
}

void client_listen_handover_lost(struct client *c, const char *why)
{
	struct client_handover *h = handover_of(c);

	if (h->phase == PHASE_CHANNELS) {
		struct client_listen *l = c->listen;

		/*
		 * A mirrored transaction that ran no LISTEN, UNLISTEN or code pgmux
		 * cannot read changed nothing the hub holds for it: the client
		 * keeps its subscriptions, as without the mirror.
		 */
		if (l->n_mirrored > 0 && !l->unlisten_deferred && !l->listen_ran) {
			handover_end(c);
			l->n_mirrored = 0;
			client_idle_again(c);
			return;
		}
		handover_end(c);
		client_fatal(c, SQLSTATE_CONNECTION_FAILURE, "lost the connection to the database server before pgmux "
			     "could take over this session's LISTEN: %s", why);
		return;
	}
	if (h->phase != PHASE_HUB_MARKER)
		log_client(LOG_LEVEL_WARNING, c, "backend lost while pgmux took over its LISTEN (%s); notifications of "
			   "its channels may have been lost", why);
	handover_end(c);
	c->listen->n_mirrored = 0;
	client_idle_again(c);
}

void client_listen_handover_free(struct client *c)
{
	/* A mirrored transaction's backend listens (the mirror committed): never given back either. */
	if (c->listen && c->listen->n_mirrored > 0 && c->server)
		server_set_pinned(c->server);
	if (handover_of(c) == NULL)
		return;
	/* It still listens, or may: never given back. */
	if (c->server)
		server_set_pinned(c->server);
	handover_end(c);
}
