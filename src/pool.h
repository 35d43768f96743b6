/*
 * pool.h: the cluster's instances and the backend connection pools.
 *
 * A target is one PostgreSQL instance (an Aurora writer or reader, or a
 * primary or standby), with the role its health checks report and a cap on
 * connections to it. A pool is the set of backend connections for one
 * (user, database) and one endpoint: the writer endpoint (listen_port) or the
 * reader endpoint (readonly_port). A writer pool follows whichever instance is
 * the writer now; a reader pool spreads over the healthy readers.
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
#include "strmap.h"
#include "target.h"

struct server;
struct worker;
struct pool_stats;

struct pool {
	struct list_node node;
	char *user;
	char *database;
	enum pool_endpoint endpoint;
	char *password; /* for backend logins; refreshed by each client login (rotation) */
	struct list_node idle;    /* struct server.pool_node, most recently used first */
	struct list_node waiters; /* struct pool_waiter.node, oldest first */
	int n_idle;
	int n_active;   /* linked to a client or running pgmux's own queries */
	int n_waiting;
	int n_connecting;  /* connections being opened for it */
	int n_migrating;   /* idle backends on their way from one worker to a waiter on another */
	char last_failure[256]; /* why its last new connection failed; "" once one succeeds */
	int n_pinned;      /* active connections held by pinned (or session-pooled) clients */
	int n_connections; /* this pool's share of its targets' n_connections */
	int n_clients;     /* logged-in clients that hold it (pool_get() to pool_put()) */
	/*
	 * Server-side names (a hash of text and parameter types) of statements
	 * a backend of this pool accepted, least recently used last, at most
	 * POOL_KNOWN_STATEMENTS_PER_BACKEND x max_prepared_statements: a client's
	 * Parse of one of them outside a transaction is answered without a
	 * backend (see reply_answer_idle()).
	 */
	struct strmap known_statements;
	/*
	 * The database has functions in a procedural language whose code may
	 * change session state (set_config, SET, EXECUTE, ...): a trigger, a
	 * column default or a rule may run one on any write, with no call in the
	 * text, so writes count as SQL_EFFECT_OPAQUE. Learned by each new server
	 * connection (server.c), set at once by a client's CREATE FUNCTION and
	 * the like. Relaxed atomic: pool_writes_opaque(), pool_set_writes_opaque().
	 */
	bool writes_opaque;
	uint64_t writes_checked_usec; /* when a connection last asked (0: never); relaxed atomic */
	struct pool_stats *stats;     /* histograms and byte counts, a slot per worker (stats.h) */
};

/* How often new connections ask again whether writes are opaque (a connection churn must not pay each time). */
#define POOL_WRITES_RECHECK_USEC (60ull * 1000000)

static inline bool pool_writes_opaque(const struct pool *pool)
{
	return __atomic_load_n(&pool->writes_opaque, __ATOMIC_RELAXED);
}

static inline void pool_set_writes_opaque(struct pool *pool, bool opaque)
{
	__atomic_store_n(&pool->writes_opaque, opaque, __ATOMIC_RELAXED);
}

/* Should a new connection of pool ask? Once, then at most every POOL_WRITES_RECHECK_USEC. */
static inline bool pool_writes_check_due(const struct pool *pool, uint64_t now_usec)
{
	uint64_t at = __atomic_load_n(&pool->writes_checked_usec, __ATOMIC_RELAXED);

	return at == 0 || now_usec - at >= POOL_WRITES_RECHECK_USEC;
}

#define POOL_KNOWN_STATEMENTS_PER_BACKEND 4

/*
 * One client waiting for a backend, as the pool sees it: embedded in the
 * client, set up once by pool_waiter_init(). The pool ends a wait under its
 * lock: it sets assigned (a backend, detached or parked on the waiter's
 * loop) or error, puts the waiter on its worker's ready list and wakes that
 * worker, which calls the ended callback (pool_set_wait_ended(), from
 * pool_run_ready()).
 */
struct pool_waiter {
	struct list_node node;  /* its pool's waiters, or its worker's ready list (pool lock) */
	struct worker *worker;  /* the loop it lives on */
	struct pool *pool;      /* where it last borrowed (its worker's thread only) */
	uint64_t since_usec;    /* when it joined its pool's waiters (pool lock) */
	/* Set by the pool, under its lock, when the wait ends (with sqlstate). */
	struct server *assigned;
	char *error; /* malloc'd, the waiter's to free */
	char sqlstate[6];
	bool fresh_only;        /* no backend another client used, while one opens for it (pool lock) */
};

static inline void pool_waiter_init(struct pool_waiter *waiter, struct worker *worker)
{
	list_init(&waiter->node);
	waiter->worker = worker;
}

/*
 * What a worker calls for each of its waiters whose wait ended, once
 * assigned or error is set (every waiter is a client's: one callback for
 * all, set before the workers start, rather than a pointer in each).
 */
void pool_set_wait_ended(void (*ended)(struct pool_waiter *waiter));

enum pool_borrow_result {
	POOL_BORROWED, /* *server is attached to the caller's worker */
	POOL_QUEUED,   /* the waiter waits; the pool sets its assigned or error and wakes it */
	POOL_FAILED,   /* no instance can ever serve this now (no readers): *error says why */
};

/* Build the targets from the config (start-up). */
int pool_init(const struct config *cfg);
void pool_shutdown(void);

/*
 * Find or create the pool for (user, database, endpoint); records password
 * for backend logins. The caller holds the pool until pool_put(): a pool no
 * client holds and without connections is freed (pool_janitor()), so that
 * logins naming made-up databases leave nothing behind.
 */
struct pool *pool_get(const char *user, const char *database, enum pool_endpoint endpoint,
		      const char *password);
void pool_put(struct pool *pool);
/* One more hold on a pool someone holds already (the LISTEN connection of its clients, listen.c). */
void pool_hold(struct pool *pool);

/*
 * Where and as whom a connection for pool that is none of its backends goes
 * now (the LISTEN connection, listen.c): the instance its new backends would
 * go to, and the pool's login, copied. False when there is none now (no
 * usable writer, say). generation changes with the instance's role, so that
 * a holder can tell that the instance it is on no longer serves the pool.
 */
struct pool_login {
	char host[256];
	int port;
	char instance_id[64];
	const struct target *target; /* to compare only, never to follow */
	int generation;
	char *user, *database, *password; /* owned: pool_login_clear() */
};
bool pool_current_login(struct pool *pool, struct pool_login *out);
void pool_login_clear(struct pool_login *login);

/*
 * Called on the waiter's worker: an idle server of the right instance when
 * one is free, else the waiter is queued and, if the cap allows, a new
 * backend connection is started. fresh_only: the client's backend died
 * under it, so it gets a new connection if the cap allows one, not an idle
 * backend another client just gave back.
 */
enum pool_borrow_result pool_borrow(struct pool *pool, struct pool_waiter *waiter, bool fresh_only,
				    struct server **server, const char **error);

/* A waiter that leaves while waiting (or with a server assigned but not yet taken). */
void pool_cancel_wait(struct pool_waiter *waiter);
/*
 * Why a client of pool may have waited in vain, for the DETAIL of its
 * borrow timeout: no usable writer (and what its health check said), or how
 * the last attempt to open a connection failed. "" when there is nothing to
 * say (the pool is busy, say).
 */
void pool_wait_detail(struct pool *pool, char *out, size_t len);

/*
 * Statements a backend of pool accepted (ParseComplete) or refused (its
 * error), by server-side name; and whether one was accepted and not refused
 * since.
 */
void pool_statement_accepted(struct pool *pool, const char *server_name);
void pool_statement_refused(struct pool *pool, const char *server_name);
bool pool_statement_known(struct pool *pool, const char *server_name);

/*
 * Will a waiter just queued by pool_borrow() be served by a backend already
 * on its way (a connection opening, an idle one moving from another worker)?
 * When not, it waits for some other client's transaction to end.
 */
bool pool_backend_coming(struct pool *pool);

/* A server that is clean and free: hand it to the oldest waiter or park it idle. */
void pool_release(struct server *server);

/* A server that is gone: free its slot, serve waiters. */
void pool_forget(struct server *server);

/* A new connection finished its setup: count it active, then release it. */
void pool_connection_ready(struct server *server);

/*
 * A connection attempt failed: its slot is freed. With fail_waiters (the
 * server refused the login) the clients waiting in its pool hear why.
 */
void pool_connect_failed(struct server *server, const char *sqlstate, const char *message, bool fail_waiters);

/* The server told us its max_connections (less reserved slots): fix the cap if it was 0. */
void pool_learn_cap(struct target *target, int server_max_connections);

/* On worker w: call ended for each of its waiters whose wait the pool ended. */
void pool_run_ready(struct worker *w);

/* Maintenance of the idle backends parked on w's loop, and min_pool_size (worker w, once a second). */
void pool_janitor(uint64_t now_usec, struct worker *w);

/* Close idle servers (shutdown). Called on the main thread after workers stopped. */
void pool_close_idle(void);

/*
 * What a health check found (monitor thread). role is meaningful when
 * healthy. Handles failover: a new writer takes over the writer pools, and
 * clients waiting for one proceed.
 */
void pool_instance_report(struct target *t, bool healthy, enum instance_role role, int lag_ms,
			  const char *instance_id, const char *why);

/*
 * A backend connection to t was lost. Until the health check this asks for
 * answers, t's parked connections are not lent (their loss may not have
 * been seen yet) and no new ones are opened.
 */
void pool_instance_suspect(struct target *t);

/*
 * Check t now rather than at the next health_check_interval (a backend
 * connection to it failed): marks t (check_requested) and wakes the monitor.
 * Thread safe; nothing happens before the monitor has started.
 */
void pool_request_health_check(struct target *t);

/* The monitor's wake-up for pool_request_health_check() (NULL: none). Thread safe. */
void pool_set_health_check_wake(void (*wake)(void));

/* Aurora discovery: make sure an instance endpoint is known (monitor thread). */
void pool_add_instance(const char *host, int port, const char *instance_id);
/*
 * Aurora discovery, the other way: retire every discovered instance (one not
 * in hosts) whose identifier is not among the n in instance_ids, the
 * instances that the writer's aurora_replica_status() names (monitor thread).
 */
void pool_retire_absent_instances(const char *const *instance_ids, int n);

/* Call fn for every pool, under the pool lock (SHOW POOLS). */
void pool_for_each_pool(void (*fn)(struct pool *p, void *arg), void *arg);

/* Call fn for every target, under the pool lock (monitor thread, SHOW). */
void pool_for_each_target(void (*fn)(struct target *t, void *arg), void *arg);

const char *pool_role_name(enum instance_role role);
/*
 * Whether t takes new transactions now, and why not (SHOW TARGETS): "serving",
 * or what keeps it out. Only from a pool_for_each_target() callback (the lock is held).
 */
void pool_target_status_locked(const struct target *t, char *out, size_t len);

/*
 * PAUSE: new transactions wait (as for a full pool) until RESUME; those in
 * flight finish. instance NULL pauses everything, else the instance with
 * that host:port or identifier. Returns -1 for an unknown instance.
 */
int pool_pause(const char *instance);
int pool_resume(const char *instance);
bool pool_is_paused(void);

/* A healthy writer is known (the monitor found one): what GET /readyz asks. */
bool pool_writer_known(void);

/* Transactions in flight: active connections not held by pinned sessions. */
int pool_transactions_in_flight(void);

/* Clients queued for a backend, in all pools. */
int pool_clients_waiting(void);

/* A linked server's client became pinned (or holds it for a whole session). */
void pool_note_pinned(struct server *s);

/*
 * Cutover: retire every current instance and make hosts the new ones. Idle
 * connections to the old instances are closed; active ones stop being
 * reused. The writer is unknown until the monitor checks the new instances.
 */
void pool_replace_targets(const struct target_host *hosts, int n_hosts);

/* Is t one of the instances a cutover replaced? */
/* Where the writer is (copied into host, port): false when none is known. */
bool pool_writer_address(char *host, size_t host_len, int *port);

bool pool_target_retired(const struct target *t);

/* After a reload: backend logins use each user's current secret (credential rotation). */
void pool_refresh_passwords(void);
/* After a reload: every target's cap from the new max_connections or max_connections_percent. */
void pool_apply_caps(void);

#endif
