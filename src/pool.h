/*
 * pool.h: backend connection pools. A target is one PostgreSQL instance with
 * a cap on connections to it; a pool is the set of backend connections for
 * one (user, database) on a target, with its idle servers and the clients
 * waiting for one, first come first served.
 *
 * Every field below that is not marked otherwise is protected by the single
 * pool lock: pool limits are global across workers, and an idle server parked
 * by one worker may be handed to a client on another. A server on an idle
 * list is attached to no worker; whoever takes it attaches it to its own loop.
 */
#ifndef PGMUX_POOL_H
#define PGMUX_POOL_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "list.h"

struct client;
struct server;
struct worker;

struct target {
	struct list_node node;
	char *host;
	int port;
	int max_connections; /* effective cap; learned from the server when configured as 0 */
	bool cap_known;
	int n_connections;   /* open or opening */
	int n_connecting;
	int generation;      /* bumps when the target is replaced */
};

struct pool {
	struct list_node node;
	char *user;
	char *database;
	char *password; /* for backend logins; refreshed by each client login (rotation) */
	struct target *target;
	struct list_node idle;    /* struct server.pool_node, most recently used first */
	struct list_node waiters; /* struct client.wait_node, oldest first */
	int n_idle;
	int n_active;   /* linked to a client or running pgmux's own queries */
	int n_waiting;
	int n_connections; /* this pool's share of target->n_connections */
};

/* Build the targets from the config (start-up). */
int pool_init(const struct config *cfg);
void pool_shutdown(void);

/* Find or create the pool for (user, database); records password for backend logins. */
struct pool *pool_get(const char *user, const char *database, const char *password);

/*
 * Called on the client's worker. Returns an idle server (already attached to
 * the caller's worker) when one is free; otherwise queues the client and, if
 * the cap allows, starts a new backend connection; returns NULL. When the
 * wait ends the pool sets client->assigned_server or client->assigned_error
 * and wakes the client's worker.
 */
struct server *pool_borrow(struct pool *pool, struct client *client);

/* A client that leaves while waiting (or with a server assigned but not yet taken). */
void pool_cancel_wait(struct client *client);

/* A server that is clean and free: hand it to the oldest waiter or park it idle. */
void pool_release(struct server *server);

/* A server that is gone (closed or failed to connect): free its slot, serve waiters. */
void pool_forget(struct server *server);

/* A new connection finished its setup: count it active, then release it. */
void pool_connection_ready(struct server *server);

/* A connection attempt failed: its slot is freed and every client waiting in its pool gets this error. */
void pool_connect_failed(struct server *server, const char *sqlstate, const char *message);

/* The server told us its max_connections (less reserved slots): fix the cap if it was 0. */
void pool_learn_cap(struct target *target, int server_max_connections);

/* Periodic maintenance of idle backends and min_pool_size (main thread, once a second). */
void pool_janitor(uint64_t now_usec);

/* Move the clients whose wait ended to out (called by their worker). */
void pool_take_ready(struct worker *w, struct list_node *out);

/* Close idle servers (shutdown). Called on the main thread after workers stopped. */
void pool_close_idle(void);

#endif
