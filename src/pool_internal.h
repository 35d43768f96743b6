/*
 * pool_internal.h: what the two files of the pool module share under the
 * one pool lock: pool.c (pools, borrowing, release, maintenance) and
 * pool_cluster.c (the instances: routing rules, health reports and
 * failover, caps, pause, cutover). Not for other modules: they use pool.h.
 * Functions named _locked expect the pool lock held.
 */
#ifndef PGMUX_POOL_INTERNAL_H
#define PGMUX_POOL_INTERNAL_H

#include <pthread.h>

#include "pool.h"

extern pthread_mutex_t pool_lock;

/* Connections started by one decision; more wait for the next occasion. */
#define POOL_MAX_CONNECTS 64

struct connect_request {
	struct pool *pool;
	struct target *target;
};

/* Connections reserved under the lock, started by pool_run_connects() once it is dropped. */
struct connect_batch {
	struct connect_request req[POOL_MAX_CONNECTS];
	int n;
};

/* ------------------------------------------------------- pool.c */

/*
 * Start connections for pools whose waiters outnumber the connections
 * already opening for them, where the chosen instance has room.
 */
void pool_kick_locked(struct connect_batch *b);

/* Give idle servers to waiting clients and start connections for the rest (after RESUME, a failover). */
void pool_serve_waiters_locked(struct connect_batch *b);

/* Unlink every idle server of t that no loop holds (it is down or changed role); the caller closes them. */
void pool_drop_idle_of_locked(struct target *t, struct list_node *doomed);

/* Start the connections of b, from any thread: directly on a worker, else through one's inbox. */
void pool_run_connects(struct connect_batch *b);

/* Close the servers on doomed (linked by their pool_node), without the lock. */
void pool_close_all(struct list_node *doomed, const char *reason);

/* ----------------------------------------------- pool_cluster.c */

/* PAUSE of everything, or a cutover waiting for transactions to end. */
bool pool_paused_locked(void);

/* How many connections t may have now (one while the server's own limit is unknown, to ask it). */
int pool_target_cap_locked(const struct target *t);

/*
 * The instance a new connection of pool should go to, or NULL to wait.
 * *error is set when waiting is pointless: the cluster has no reader at all.
 */
struct target *pool_pick_target_locked(struct pool *p, const char **error);

/* May s serve its pool now? */
bool pool_server_usable_locked(const struct server *s, const struct pool *p);

/* Free every target, current and retired (at exit, once no server is left). */
void pool_free_targets(void);

/* Give server.c the pool's callbacks (struct server_pool_ops), at pool_init(). */
void pool_install_server_ops(void);

#endif
