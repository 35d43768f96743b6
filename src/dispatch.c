/*
 * dispatch.c: the session layer's side of a worker's loop (see dispatch.h).
 * Everything here runs on the worker's own thread, on clients and servers
 * attached to it; a message names a client by id, and one that has gone
 * meanwhile is simply not found.
 */
#include "dispatch.h"

#include <unistd.h>

#include "admin.h"
#include "cancel.h"
#include "client.h"
#include "cutover.h"
#include "pgmux.h"
#include "pool.h"
#include "proto.h"
#include "server.h"

static struct client *find_client(struct worker *w, uint64_t id)
{
	struct list_node *pos;

	list_for_each(pos, &w->clients) {
		struct client *c = list_entry(pos, struct client, worker_node);

		if (c->id == id)
			return c;
	}
	return NULL;
}

/*
 * A message for a client that is not here: it left, or it moved to another
 * worker after the message was addressed (client_move()). A cancel or a
 * KILL follows it there; the other messages name clients that never move.
 */
static void forward_to_client(struct worker *w, struct worker_msg *msg)
{
	struct worker *now = cancel_worker_of(msg->client_id);

	if (now == NULL || now == w)
		return;
	if (msg->type == WORKER_MSG_CANCEL)
		worker_post_cancel(now, msg->client_id);
	else
		worker_post_kill(now, msg->client_id);
}

static void close_everything(struct worker *w)
{
	struct list_node *pos, *tmp;

	list_for_each_safe(pos, tmp, &w->clients) {
		struct client *c = list_entry(pos, struct client, worker_node);

		client_fatal(c, SQLSTATE_ADMIN_SHUTDOWN, "pgmux is shutting down");
	}
	list_for_each_safe(pos, tmp, &w->servers) {
		struct server *s = list_entry(pos, struct server, worker_node);

		server_close(s, "pgmux is shutting down");
	}
}

static void dispatch_message(struct worker *w, struct worker_msg *msg)
{
	struct client *c;
	struct list_node *pos, *tmp;

	switch (msg->type) {
	case WORKER_MSG_CONNECTION:
		if (w->draining || w->stopping) {
			close(msg->fd);
			break;
		}
		client_accept(w, msg->fd, (struct sockaddr *)&msg->addr, msg->addrlen, msg->endpoint);
		break;
	case WORKER_MSG_CANCEL:
		c = find_client(w, msg->client_id);
		if (c)
			client_cancel_backend(c);
		else
			forward_to_client(w, msg);
		break;
	case WORKER_MSG_DRAIN:
		list_for_each_safe(pos, tmp, &w->clients)
			client_drain(list_entry(pos, struct client, worker_node));
		break;
	case WORKER_MSG_STOP:
		close_everything(w);
		break;
	case WORKER_MSG_CONNECT:
		server_connect(w, msg->pool, msg->target);
		break;
	case WORKER_MSG_ADMIN_REPLY:
		c = find_client(w, msg->client_id);
		if (c)
			admin_reply(c, msg->ok, msg->text);
		break;
	case WORKER_MSG_RETIRE:
		list_for_each_safe(pos, tmp, &w->servers) {
			struct server *s = list_entry(pos, struct server, worker_node);

			if (pool_target_retired(s->target)) {
				server_cancel_running(s);
				server_close(s, "pgmux cut over to new database instances and this session could not move");
			}
		}
		break;
	case WORKER_MSG_CUTOVER:
		list_for_each_safe(pos, tmp, &w->clients)
			client_retire_for_cutover(list_entry(pos, struct client, worker_node));
		__atomic_sub_fetch(&cutover_workers_pending, 1, __ATOMIC_RELEASE);
		break;
	case WORKER_MSG_SWEEP:
		pool_janitor(pgmux_now_usec(), w);
		break;
	case WORKER_MSG_MIGRATE:
		list_for_each_safe(pos, tmp, &w->servers) {
			struct server *s = list_entry(pos, struct server, worker_node);

			/* Gone already if it closed meanwhile; the waiting client then gets another. */
			if (s->id == msg->client_id && s->state == SERVER_IDLE && s->client == NULL) {
				server_detach(s);
				pool_release(s);
				break;
			}
		}
		break;
	case WORKER_MSG_NOTIFY:
		/* One notification, for some of this worker's clients (listen.c); one that left is not found. */
		for (int i = 0; i < msg->n_ids; i++)
			if ((c = find_client(w, msg->ids[i])) != NULL)
				client_listen_notify(c, msg->data, msg->data_len);
		break;
	case WORKER_MSG_LISTEN_READY:
		c = find_client(w, msg->client_id);
		if (c)
			client_listen_ready(c, msg->text);
		break;
	case WORKER_MSG_KILL:
		c = find_client(w, msg->client_id);
		if (c)
			client_fatal(c, SQLSTATE_ADMIN_SHUTDOWN, "terminating connection due to KILL from the pgmux admin console");
		else
			forward_to_client(w, msg);
		break;
	case WORKER_MSG_ADOPT:
		client_adopt(w, msg->client);
		break;
	}
}

static void dispatch_reap(struct worker *w)
{
	struct list_node *node;

	/* First the clients this pass chose to move: none of them is freed before it is looked at. */
	for (int i = 0; i < w->n_moving; i++)
		client_move(w->moving[i].client, w->moving[i].to);
	w->n_moving = 0;
	while ((node = list_pop_front(&w->reap_clients)) != NULL)
		client_free(list_entry(node, struct client, worker_node));
	while ((node = list_pop_front(&w->reap_servers)) != NULL)
		server_free(list_entry(node, struct server, worker_node));
}

static void dispatch_janitor(struct worker *w, uint64_t now)
{
	struct list_node *pos, *tmp;

	list_for_each_safe(pos, tmp, &w->clients)
		client_janitor(list_entry(pos, struct client, worker_node), now);
	pool_janitor(now, w);
}

const struct worker_ops dispatch_worker_ops = {
	.message = dispatch_message,
	.woken = pool_run_ready,
	.reap = dispatch_reap,
	.janitor = dispatch_janitor,
};
