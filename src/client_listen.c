/*
 * client_listen.c: a client's side of LISTEN held by pgmux (transaction
 * pooling; listen.h has the design). The relay answers the client's LISTEN
 * and UNLISTEN statements without a backend (relay_listen.c) and hands
 * their commands here: the client keeps the list of its channels (at most
 * max_client_listen_channels) and subscribes through the listen thread's
 * registry. A LISTEN on a channel the LISTEN connection does not listen on
 * yet is answered only once it does, as PostgreSQL answers once the LISTEN
 * took effect: until then the replies are held and the client's input
 * waits. Notifications come through the worker's inbox (dispatch.c); they
 * reach the client while it is idle, or once its transaction is over, as
 * PostgreSQL sends them; at most max_client_pending_notifications wait.
 * Before a transaction that may UNLISTEN, the client's channels are
 * mirrored on its backend (client_listen_mirror()), so that the UNLISTEN
 * takes effect at its commit, which the takeover at the transaction's end
 * reads back (client_listen_handover.c).
 */
#include "client.h"

#include <stdio.h>
#include <string.h>

#include "config.h"
#include "listen.h"
#include "pgmux.h"
#include "proto.h"
#include "server.h"
#include "util.h"
#include "worker.h"

/*
 * May a notification go to c now? Between its transactions: idle, or
 * pinned (a session that keeps its backend) with that backend idle and
 * nothing of its replies on the way.
 */
static bool between_transactions(const struct client *c)
{
	const struct server *s = c->server;

	if (c->state == CLIENT_IDLE)
		return true;
	return c->state == CLIENT_ACTIVE && c->pin_reason && s && s->tx_status == 'I' && server_replies_pending(s) == 0 &&
	       s->forward_remaining == 0;
}

static int channel_index(const struct client *c, const char *channel)
{
	if (c->listen == NULL)
		return -1;
	for (int i = 0; i < c->listen->n_channels; i++)
		if (strcmp(c->listen->channels[i], channel) == 0)
			return i;
	return -1;
}

/* The LISTEN state is made on first need: most clients never LISTEN. */
struct client_listen *client_listen_state(struct client *c)
{
	if (c->listen == NULL)
		c->listen = xcalloc(1, sizeof(*c->listen));
	return c->listen;
}

/* Nothing left in it (no channel, no wait, nothing queued, no takeover): an idle client keeps none of it. */
static void listen_trim(struct client *c)
{
	const struct client_listen *l = c->listen;

	if (l != NULL && l->n_channels == 0 && !l->waiting && l->n_added == 0 && l->n_pending == 0 && !l->on_backend &&
	    l->n_mirrored == 0 && !l->rfq_held && l->handover == NULL)
		client_listen_free(c);
}

static bool is_mirrored(const struct client *c, const char *channel)
{
	for (int i = 0; i < c->listen->n_mirrored; i++)
		if (strcmp(c->listen->mirrored[i], channel) == 0)
			return true;
	return false;
}

static void channel_remove(struct client *c, int i)
{
	/*
	 * A pinned session's backend listens on a mirrored channel: it delivers
	 * it from now on (what the hub queued of it, the backend delivers too),
	 * and its UNLISTEN takes effect there at its commit.
	 */
	if (c->pin_reason && is_mirrored(c, c->listen->channels[i]))
		client_listen_drop_pending(c, c->listen->channels[i]);
	listen_unsubscribe(c->pool, c->id, c->listen->channels[i]);
	memmove(c->listen->channels + i, c->listen->channels + i + 1,
		(size_t)(c->listen->n_channels - i - 1) * sizeof(*c->listen->channels));
	c->listen->n_channels--;
}

static void note_added(struct client *c, const char *channel)
{
	if (c->listen->n_added == c->listen->cap_added) {
		c->listen->cap_added = c->listen->cap_added ? 2 * c->listen->cap_added : 4;
		c->listen->added = xrealloc(c->listen->added, (size_t)c->listen->cap_added * sizeof(*c->listen->added));
	}
	snprintf(c->listen->added[c->listen->n_added++], sizeof(*c->listen->added), "%s", channel);
}

bool client_listen_has(const struct client *c, const char *channel)
{
	return channel_index(c, channel) >= 0;
}

void client_listen_add(struct client *c, const char *channel)
{
	struct client_listen *l = client_listen_state(c);

	if (l->n_channels == l->cap_channels) {
		l->cap_channels = l->cap_channels ? 2 * l->cap_channels : 4;
		l->channels = xrealloc(l->channels, (size_t)l->cap_channels * sizeof(*l->channels));
	}
	snprintf(l->channels[l->n_channels++], sizeof(*l->channels), "%s", channel);
}

void client_listen_remove(struct client *c, const char *channel)
{
	int at = channel_index(c, channel);

	if (at >= 0)
		channel_remove(c, at);
}

enum relay_listen_status client_listen_apply(void *arg, const struct sql_listen_command *cmds, int n,
					     struct relay_refusal *why)
{
	struct client *c = arg;
	int limit = config_current()->max_client_listen_channels, more = 0;
	bool wait = false;

	for (int i = 0; i < n; i++)
		if (cmds[i].kind == SQL_LISTEN && channel_index(c, cmds[i].channel) < 0)
			more++;
	if (more > 0 && (c->listen ? c->listen->n_channels : 0) + more > limit) {
		why->sqlstate = SQLSTATE_PROGRAM_LIMIT_EXCEEDED;
		snprintf(why->message, sizeof(why->message),
			 "too many channels: this session listens on %d, the limit set by max_client_listen_channels is %d",
			 c->listen ? c->listen->n_channels : 0, limit);
		return RELAY_LISTEN_REFUSED;
	}
	for (int i = 0; i < n; i++) {
		const char *channel = cmds[i].channel;
		int at = channel_index(c, channel);

		switch (cmds[i].kind) {
		case SQL_LISTEN:
			if (at >= 0)
				break; /* LISTEN twice is LISTEN once */
			client_listen_state(c);
			switch (listen_subscribe(c->pool, c->id, c->worker->id, channel)) {
			case LISTEN_ERROR:
				why->sqlstate = SQLSTATE_ADMIN_SHUTDOWN;
				snprintf(why->message, sizeof(why->message), "pgmux cannot LISTEN now: it is shutting down");
				listen_trim(c);
				return RELAY_LISTEN_REFUSED;
			case LISTEN_WAIT:
				wait = true;
				note_added(c, channel);
				break;
			case LISTEN_DONE:
				break;
			}
			client_listen_add(c, channel);
			break;
		case SQL_UNLISTEN:
			if (at >= 0)
				channel_remove(c, at);
			break;
		case SQL_UNLISTEN_ALL:
			client_listen_forget(c);
			break;
		}
	}
	if (wait && !c->listen->waiting) {
		c->listen->waiting = true;
		listen_wait(c->pool, c->id, c->worker->id);
	}
	listen_trim(c);
	return wait ? RELAY_LISTEN_WAIT : RELAY_LISTEN_DONE;
}

void client_listen_hold(struct client *c, size_t wait_at)
{
	struct iobuf *out = &c->io.out;

	if (c->listen == NULL || !c->listen->waiting || wait_at == SIZE_MAX || wait_at > iobuf_len(out))
		return;
	iobuf_append(&c->listen->held, iobuf_head(out) + wait_at, iobuf_len(out) - wait_at);
	out->end = out->start + (uint32_t)wait_at; /* wait_at <= iobuf_len(out), checked above */
	/* Nothing more is read until the LISTEN took effect: its input is bounded meanwhile. */
	io_want_read(&c->io, false);
}

void client_listen_ready(struct client *c, const char *error)
{
	if (c->state == CLIENT_CLOSED || client_listen_handover_ready(c, error) || c->listen == NULL || !c->listen->waiting)
		return;
	c->listen->waiting = false;
	if (error == NULL) {
		iobuf_append(&c->io.out, iobuf_head(&c->listen->held), iobuf_len(&c->listen->held));
	} else {
		/* The LISTENs that waited did not take effect: the statement fails, the rest of its batch is skipped. */
		for (int i = 0; i < c->listen->n_added; i++) {
			int at = channel_index(c, c->listen->added[i]);

			if (at >= 0)
				channel_remove(c, at);
		}
		proto_put_error(&c->io.out, "ERROR", SQLSTATE_CONNECTION_FAILURE, error, NULL, NULL);
		proto_put_ready(&c->io.out, 'I');
		log_client(LOG_LEVEL_WARNING, c, "LISTEN failed: %s", error);
	}
	c->listen->n_added = 0;
	iobuf_reset(&c->listen->held);
	client_listen_idle(c);
	listen_trim(c);
	io_want_read(&c->io, true);
	/* What it sent meanwhile, and the replies, on its next turn in the loop. */
	io_schedule_read(&c->io);
}

bool client_listen_notify(struct client *c, const uint8_t *msg, size_t len)
{
	if (c->state == CLIENT_CLOSED)
		return false;
	if (!client_listen_handover_filter(c, msg, len))
		return c->state != CLIENT_CLOSED;
	return client_listen_queue(c, msg, len);
}

bool client_listen_queue(struct client *c, const uint8_t *msg, size_t len)
{
	int limit = config_current()->max_client_pending_notifications;

	if (c->state == CLIENT_CLOSED)
		return false;
	if (between_transactions(c) && (c->listen == NULL || (!c->listen->waiting && c->listen->n_pending == 0)) &&
	    io_pending_output(&c->io) < (size_t)CLIENT_NOTIFY_OUTPUT_LIMIT) {
		iobuf_append(&c->io.out, msg, len);
		client_flush(c);
		return c->state != CLIENT_CLOSED;
	}
	client_listen_state(c);
	if (c->listen->n_pending >= limit) {
		client_fatal(c, SQLSTATE_PROGRAM_LIMIT_EXCEEDED,
			     "terminating connection: %d notifications are waiting for this session, the limit set by "
			     "max_client_pending_notifications (it is in a long transaction, or does not read)",
			     c->listen->n_pending);
		return false;
	}
	iobuf_append(&c->listen->pending, msg, len);
	c->listen->n_pending++;
	return true;
}

void client_listen_idle(struct client *c)
{
	if (c->listen == NULL || c->listen->n_pending == 0 || c->listen->waiting || !between_transactions(c))
		return;
	/* A client that does not read keeps them here, where they are counted, not in its output. */
	if (io_pending_output(&c->io) >= (size_t)CLIENT_NOTIFY_OUTPUT_LIMIT)
		return;
	iobuf_append(&c->io.out, iobuf_head(&c->listen->pending), iobuf_len(&c->listen->pending));
	iobuf_reset(&c->listen->pending);
	c->listen->n_pending = 0;
	listen_trim(c);
	io_schedule_read(&c->io);
}

void client_listen_unlisten_text(struct client *c, const char *sql, size_t len)
{
	struct sql_listen_command cmds[SQL_LISTEN_MAX_COMMANDS];
	int n = sql_listen_find(sql, len, cmds, SQL_LISTEN_MAX_COMMANDS);

	for (int i = 0; i < n; i++) {
		int at;

		if (cmds[i].kind == SQL_UNLISTEN_ALL)
			client_listen_forget(c);
		else if (cmds[i].kind == SQL_UNLISTEN && (at = channel_index(c, cmds[i].channel)) >= 0)
			channel_remove(c, at);
	}
}

void client_listen_forget(struct client *c)
{
	if (c->listen == NULL)
		return;
	while (c->listen->n_channels > 0)
		channel_remove(c, c->listen->n_channels - 1);
	listen_trim(c);
}

/*
 * Whether a client's first batch may UNLISTEN (UNLISTEN, DISCARD ALL) or
 * open a transaction block in which a later batch may (BEGIN, START
 * TRANSACTION): "unlisten", "discard", "begin" or "start" anywhere, in any
 * case. A keyword is never quoted or escaped; a word in a string or a name
 * only costs a mirror.
 */
static bool may_unlisten(const uint8_t *p, size_t n)
{
	static const char *const words[] = {"unlisten", "discard", "begin", "start"};

	for (size_t at = 0; at < n; at++) {
		uint8_t first = p[at] | 0x20;

		for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
			size_t len = strlen(words[w]), k = 1;

			if (first != (uint8_t)words[w][0] || n - at < len)
				continue;
			while (k < len && (p[at + k] | 0x20) == (uint8_t)words[w][k])
				k++;
			if (k == len)
				return true;
		}
	}
	return false;
}

bool client_listen_mirror(struct client *c, struct iobuf *sql)
{
	struct client_listen *l = c->listen;

	if (l != NULL) {
		l->n_mirrored = 0;
		l->unlisten_deferred = l->listen_ran = false;
	}
	if (l == NULL || l->n_channels == 0 || !c->transaction_mode || c->pin_reason || l->handover ||
	    !may_unlisten(iobuf_head(&c->io.in), iobuf_len(&c->io.in)))
		return false;
	if (l->cap_mirrored < l->n_channels) {
		l->cap_mirrored = l->n_channels;
		l->mirrored = xrealloc(l->mirrored, (size_t)l->cap_mirrored * sizeof(*l->mirrored));
	}
	for (int i = 0; i < l->n_channels; i++) {
		/* A quoted identifier: the name as it is, a double quote doubled. */
		iobuf_append(sql, "LISTEN \"", 8);
		for (const char *p = l->channels[i]; *p; p++)
			iobuf_append(sql, *p == '"' ? "\"\"" : p, *p == '"' ? 2 : 1);
		iobuf_append(sql, "\"; ", 3);
		memcpy(l->mirrored[i], l->channels[i], sizeof(l->mirrored[i]));
	}
	l->n_mirrored = l->n_channels;
	/* The takeover at the transaction's end reads what the backend listens on, and leaves it clean. */
	l->on_backend = true;
	return true;
}

void client_listen_mirror_pinned(struct client *c)
{
	struct client_listen *l = c->listen;

	/*
	 * The backend listens on them since the mirror committed, and stays the
	 * session's. The hub goes on delivering them (the backend's copies are
	 * dropped): no source changes while notifications are on their way.
	 * An UNLISTEN the transaction ran already is not read back (no takeover
	 * on a pinned session): the backend takes them all over now, and an
	 * UNLISTEN takes effect there at its commit (channel_remove()).
	 */
	int n;

	if (l == NULL || !l->unlisten_deferred)
		return;
	l->unlisten_deferred = false;
	n = l->n_mirrored;
	/*
	 * Pinned at the transaction's end (a settings read-back, CLIENT_SETUP):
	 * the backend delivered what it had read before its ReadyForQuery, and
	 * pgmux dropped those as the hub's: the hub's queued copies stay the
	 * client's (channel_remove() drops them only while n_mirrored says so).
	 */
	if (c->state == CLIENT_SETUP)
		l->n_mirrored = 0;
	for (int i = 0; i < n; i++)
		client_listen_remove(c, l->mirrored[i]);
	l->n_mirrored = 0;
}

void client_listen_drop_pending(struct client *c, const char *channel)
{
	struct client_listen *l = c->listen;
	struct iobuf kept;
	size_t at = 0, n;
	int n_kept = 0;

	if (l == NULL || l->n_pending == 0)
		return;
	iobuf_init(&kept);
	n = iobuf_len(&l->pending);
	while (at + PROTO_HEADER_LEN <= n) {
		const uint8_t *msg = iobuf_head(&l->pending) + at;
		size_t len = 1 + (size_t)get_u32(msg + 1);
		const char *name, *payload;

		if (len < PROTO_HEADER_LEN || at + len > n)
			break;
		if (!proto_parse_notification(msg + PROTO_HEADER_LEN, len - PROTO_HEADER_LEN, &name, &payload) ||
		    strcmp(name, channel) != 0) {
			iobuf_append(&kept, msg, len);
			n_kept++;
		}
		at += len;
	}
	iobuf_free(&l->pending);
	l->pending = kept;
	l->n_pending = n_kept;
}

void client_listen_free(struct client *c)
{
	struct client_listen *l;

	client_listen_handover_free(c);
	l = c->listen;
	if (l == NULL)
		return;
	free(l->channels);
	free(l->added);
	free(l->mirrored);
	iobuf_free(&l->held);
	iobuf_free(&l->pending);
	free(l);
	c->listen = NULL;
}
