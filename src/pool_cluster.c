/*
 * pool_cluster.c: the cluster's instances, for the pools of pool.c (see
 * pool.h): the targets and the writer, the rules that say which instance a
 * pool may use, what a health check reports (failover, a role change, an
 * instance that comes back), Aurora discovery, the caps on connections,
 * PAUSE and RESUME, and cutover to new instances. Under the same lock as
 * the pools: a decision here often moves their idle backends and waiters
 * (pool_internal.h).
 */
#include "pool.h"
#include "pool_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pgmux.h"
#include "stats.h"
#include "server.h"
#include "util.h"
#include "worker.h"

static struct list_node targets = LIST_HEAD_INIT(targets);
static struct list_node retired_targets = LIST_HEAD_INIT(retired_targets);
static struct target *writer;      /* the instance serving the writer endpoint, or NULL */
static bool paused;                /* PAUSE, or a cutover waiting for transactions to end */
static uint64_t writer_lost_usec;  /* when the last writer was lost (0: not lost) */

/* --------------------------------------------------------- the instances */

static const char *const role_names[] = {
	[ROLE_UNKNOWN] = "unknown",
	[ROLE_WRITER] = "writer",
	[ROLE_READER] = "reader",
};

const char *pool_role_name(enum instance_role role)
{
	return role_names[role];
}

static bool target_set_cap_locked(struct target *t, const struct config *cfg);

static struct target *target_new_locked(const char *host, int port, bool listed)
{
	const struct config *cfg = config_current();
	struct target *t = xcalloc(1, sizeof(*t));

	t->host = xstrdup(host);
	t->port = port;
	t->listed = listed;
	snprintf(t->instance_id, sizeof(t->instance_id), "%s:%d", host, port);
	target_set_cap_locked(t, cfg);
	list_append(&targets, &t->node);
	return t;
}

int pool_init(const struct config *cfg)
{
	if (cfg->n_hosts < 1)
		return -1;
	pool_install_server_ops();
	pthread_mutex_lock(&pool_lock);
	for (int i = 0; i < cfg->n_hosts; i++)
		target_new_locked(cfg->hosts[i].host, cfg->hosts[i].port, true);
	pthread_mutex_unlock(&pool_lock);
	return 0;
}

/* How to wake the monitor (monitor.c installs it), or NULL; atomic. */
static void (*health_check_wake)(void);

void pool_set_health_check_wake(void (*wake)(void))
{
	__atomic_store_n(&health_check_wake, wake, __ATOMIC_RELEASE);
}

void pool_request_health_check(struct target *t)
{
	void (*wake)(void) = __atomic_load_n(&health_check_wake, __ATOMIC_ACQUIRE);

	/* Targets live until exit, so the flag is safe to set whatever the monitor is doing. */
	if (wake == NULL)
		return;
	__atomic_store_n(&t->check_requested, 1, __ATOMIC_RELEASE);
	wake();
}

void pool_instance_suspect(struct target *t)
{
	pthread_mutex_lock(&pool_lock);
	t->suspect = true;
	pthread_mutex_unlock(&pool_lock);
	pool_request_health_check(t);
}

void pool_add_instance(const char *host, int port, const char *instance_id)
{
	struct list_node *pos;
	struct target *t;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &targets) {
		t = list_entry(pos, struct target, node);
		if (t->port == port && strcmp(t->host, host) == 0) {
			pthread_mutex_unlock(&pool_lock);
			return;
		}
	}
	t = target_new_locked(host, port, false);
	snprintf(t->instance_id, sizeof(t->instance_id), "%s", instance_id);
	pthread_mutex_unlock(&pool_lock);
	log_info("instance %s discovered at %s:%d", instance_id, host, port);
}

void pool_for_each_target(void (*fn)(struct target *t, void *arg), void *arg)
{
	struct list_node *pos;

	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &targets)
		fn(list_entry(pos, struct target, node), arg);
	pthread_mutex_unlock(&pool_lock);
}

/* --------------------------------------------------------- routing rules */

bool pool_paused_locked(void)
{
	return paused;
}

/*
 * How many connections the target may have now. While the server's own
 * max_connections is unknown, one connection is allowed so that it can be
 * asked.
 */
int pool_target_cap_locked(const struct target *t)
{
	if (!t->cap_known)
		return 1;
	return t->max_connections > 0 ? t->max_connections : 1;
}

static bool reader_usable_locked(const struct target *t)
{
	const struct config *cfg = config_current();

	return t->role == ROLE_READER && t->healthy && !t->suspect &&
	       (cfg->max_replica_lag_ms <= 0 || t->lag_ms <= cfg->max_replica_lag_ms);
}

static bool writer_usable_locked(void)
{
	return writer != NULL && writer->healthy && !writer->suspect && writer->role == ROLE_WRITER;
}

bool pool_writer_known(void)
{
	bool usable;

	pthread_mutex_lock(&pool_lock);
	usable = writer_usable_locked();
	pthread_mutex_unlock(&pool_lock);
	return usable;
}

void pool_target_status_locked(const struct target *t, char *out, size_t len)
{
	const struct config *cfg = config_current();

	if (!t->checked)
		snprintf(out, len, "waiting for its first health check");
	else if (!t->healthy)
		snprintf(out, len, "health check failed: %s", t->check_failure);
	else if (t->suspect)
		snprintf(out, len, "a connection to it was lost; waiting for the next health check");
	else if (paused || t->paused)
		snprintf(out, len, "paused");
	else if (t->role == ROLE_WRITER && t != writer)
		snprintf(out, len, "reports itself writer, but %s is the writer in use",
			 writer ? writer->instance_id : "none");
	else if (t->role == ROLE_READER && cfg->max_replica_lag_ms > 0 && t->lag_ms > cfg->max_replica_lag_ms)
		snprintf(out, len, "replication lag %d ms is over max_replica_lag (%d ms): no reads", t->lag_ms,
			 cfg->max_replica_lag_ms);
	else
		snprintf(out, len, "serving");
}

/*
 * The instance a new connection of pool should go to, or NULL to wait.
 * *error is set when waiting is pointless: the cluster has no reader at all.
 */
struct target *pool_pick_target_locked(struct pool *p, const char **error)
{
	const struct config *cfg = config_current();
	struct target *best = NULL;
	bool any_reader = false, all_checked = true;
	struct list_node *pos;

	*error = NULL;
	if (p->endpoint == ENDPOINT_WRITER)
		return writer_usable_locked() ? writer : NULL;
	list_for_each(pos, &targets) {
		struct target *t = list_entry(pos, struct target, node);

		all_checked = all_checked && t->checked;
		if (t->role == ROLE_READER)
			any_reader = true;
		if (!reader_usable_locked(t))
			continue;
		/* Spread by fewest borrowed connections. */
		if (best == NULL || t->n_connections - t->n_idle < best->n_connections - best->n_idle)
			best = t;
	}
	if (best)
		return best;
	if (cfg->reader_fallback_to_writer && writer_usable_locked())
		return writer;
	if (!any_reader && all_checked)
		*error = "no reader instance in the cluster";
	return NULL;
}

bool pool_current_login(struct pool *pool, struct pool_login *out)
{
	const char *error;
	struct target *t;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&pool_lock);
	t = pool_pick_target_locked(pool, &error);
	if (t) {
		snprintf(out->host, sizeof(out->host), "%s", t->host);
		out->port = t->port;
		snprintf(out->instance_id, sizeof(out->instance_id), "%s", t->instance_id);
		out->target = t;
		out->generation = t->generation;
		out->user = xstrdup(pool->user);
		out->database = xstrdup(pool->database);
		out->password = pool->password ? xstrdup(pool->password) : NULL;
	}
	pthread_mutex_unlock(&pool_lock);
	return t != NULL;
}

void pool_login_clear(struct pool_login *login)
{
	free(login->user);
	free(login->database);
	if (login->password) {
		memset(login->password, 0, strlen(login->password));
		free(login->password);
	}
	memset(login, 0, sizeof(*login));
}

/* May s serve its pool now? */
bool pool_server_usable_locked(const struct server *s, const struct pool *p)
{
	const struct config *cfg = config_current();
	const struct target *t = s->target;

	if (s->generation != t->generation)
		return false;
	if (p->endpoint == ENDPOINT_WRITER)
		return t == writer && writer_usable_locked();
	if (reader_usable_locked(t))
		return true;
	/* The writer serves reads only while no reader can. */
	if (cfg->reader_fallback_to_writer && t == writer && writer_usable_locked()) {
		struct list_node *pos;

		list_for_each(pos, &targets)
			if (reader_usable_locked(list_entry(pos, struct target, node)))
				return false;
		return true;
	}
	return false;
}

void pool_wait_detail(struct pool *pool, char *out, size_t len)
{
	struct list_node *pos;
	const char *error;

	out[0] = '\0';
	pthread_mutex_lock(&pool_lock);
	if (pool_pick_target_locked(pool, &error) == NULL) {
		const char *role = pool->endpoint == ENDPOINT_WRITER ? "writer" : "reader";
		const struct target *failed = NULL;

		/* Retired targets are on retired_targets, never on this list. */
		list_for_each(pos, &targets) {
			const struct target *t = list_entry(pos, struct target, node);

			if (t->check_failure[0]) {
				failed = t;
				break;
			}
		}
		if (failed)
			snprintf(out, len, "No %s instance is available: %s (%s:%d) failed its health check: %s", role,
				 failed->instance_id, failed->host, failed->port, failed->check_failure);
		else
			snprintf(out, len, "No %s instance is available.", role);
	} else if (pool->last_failure[0]) {
		snprintf(out, len, "%s", pool->last_failure);
	}
	pthread_mutex_unlock(&pool_lock);
}

/* ------------------------------------------------------------------ caps */

/*
 * t's cap under cfg: max_connections, or max_connections_percent of what the
 * server allows. With [peers] that is the cap of all instances together, and
 * this one takes its share (config_peer_share()). Returns false when that
 * needs the server's limit and it is not known yet (the next new connection
 * asks; until then one is allowed).
 */
static bool target_set_cap_locked(struct target *t, const struct config *cfg)
{
	int cap = cfg->max_connections;

	if (cap <= 0) {
		if (t->server_max <= 0) {
			t->cap_known = false;
			return false;
		}
		cap = (int)((long)t->server_max * cfg->max_connections_percent / 100);
	}
	cap = config_peer_share(cfg, cap > 0 ? cap : 1);
	t->max_connections = cap > 0 ? cap : 1;
	t->cap_known = true;
	return true;
}

void pool_learn_cap(struct target *t, int server_max)
{
	const struct config *cfg = config_current();
	struct connect_batch batch;

	batch.n = 0;
	pthread_mutex_lock(&pool_lock);
	/* Kept so that a reload can apply another max_connections_percent (pool_apply_caps). */
	__atomic_store_n(&t->server_max, server_max > 0 ? server_max : 1, __ATOMIC_RELAXED);
	if (!t->cap_known) {
		target_set_cap_locked(t, cfg);
		log_info("instance %s: server allows %d connections, pgmux uses at most %d", t->instance_id,
			 server_max, t->max_connections);
		/* Connections that waited for the cap to be known can start now. */
		pool_kick_locked(&batch);
	}
	pthread_mutex_unlock(&pool_lock);
	pool_run_connects(&batch);
}

void pool_apply_caps(void)
{
	const struct config *cfg = config_current();
	struct connect_batch batch;
	struct list_node *pos;

	batch.n = 0;
	pthread_mutex_lock(&pool_lock);
	list_for_each(pos, &targets) {
		struct target *t = list_entry(pos, struct target, node);
		int before = t->cap_known ? t->max_connections : 0;

		if (target_set_cap_locked(t, cfg) && t->max_connections != before)
			log_info("instance %s: pgmux now uses at most %d connections", t->instance_id,
				 t->max_connections);
	}
	/* A larger cap lets waiting clients have new connections now. */
	pool_kick_locked(&batch);
	pthread_mutex_unlock(&pool_lock);
	pool_run_connects(&batch);
}

/* ------------------------------------------- health reports and failover */

void pool_instance_report(struct target *t, bool healthy, enum instance_role role, int lag_ms,
			  const char *instance_id, const char *why)
{
	uint64_t now = pgmux_now_usec();
	struct connect_batch batch;
	struct list_node doomed;
	bool was_healthy, changed_role;

	batch.n = 0;
	list_init(&doomed);
	pthread_mutex_lock(&pool_lock);
	if (t->retired) {
		/*
		 * A check that was under way when a cutover retired t: whatever it
		 * found, t must not become the writer (or a reader) again.
		 */
		pthread_mutex_unlock(&pool_lock);
		return;
	}
	was_healthy = t->healthy;
	t->checked = true;
	t->suspect = false;
	if (instance_id && instance_id[0])
		snprintf(t->instance_id, sizeof(t->instance_id), "%s", instance_id);
	snprintf(t->check_failure, sizeof(t->check_failure), "%s", healthy ? "" : why ? why : "unknown reason");
	if (!healthy) {
		t->checks_failed++;
		t->healthy = false;
		if (was_healthy || t->unhealthy_since_usec == 0) {
			t->unhealthy_since_usec = now;
			log_instance(LOG_LEVEL_WARNING, t->instance_id,
				     "instance %s (%s:%d, %s) failed its health check: %s", t->instance_id, t->host,
				     t->port, role_names[t->role], why ? why : "unknown reason");
			pool_drop_idle_of_locked(t, &doomed);
		}
		if (t == writer) {
			struct list_node *pos;

			writer = NULL;
			writer_lost_usec = now;
			log_instance(LOG_LEVEL_WARNING, t->instance_id,
				     "writer %s lost; new transactions wait for a writer", t->instance_id);
			/* A promoted instance may have reported already: no need to wait for its next check. */
			list_for_each(pos, &targets) {
				struct target *other = list_entry(pos, struct target, node);

				if (other != t && other->healthy && other->role == ROLE_WRITER) {
					writer = other;
					writer_lost_usec = 0;
					stats_writer_found(now, now);
					log_instance(LOG_LEVEL_INFO, other->instance_id,
						     "failover: writer is now %s (%s:%d), 0 ms after the previous writer was lost",
						     other->instance_id, other->host, other->port);
					pool_kick_locked(&batch);
					break;
				}
			}
		}
		pthread_mutex_unlock(&pool_lock);
		pool_close_all(&doomed, "its instance failed a health check");
		/* Servers parked on worker loops are closed by their own worker. */
		workers_broadcast(WORKER_MSG_SWEEP);
		pool_run_connects(&batch);
		return;
	}
	t->checks_ok++;
	t->healthy = true;
	t->lag_ms = lag_ms;
	changed_role = t->role != role;
	if (!was_healthy && t->unhealthy_since_usec)
		log_instance(LOG_LEVEL_INFO, t->instance_id,
			     "instance %s (%s:%d) is healthy again after %llu ms", t->instance_id, t->host, t->port,
			     (unsigned long long)((now - t->unhealthy_since_usec) / 1000));
	t->unhealthy_since_usec = 0;
	if (changed_role) {
		if (t->role != ROLE_UNKNOWN)
			log_instance(LOG_LEVEL_INFO, t->instance_id,
				     "instance %s (%s:%d) changed role: %s -> %s", t->instance_id, t->host, t->port,
				     role_names[t->role], role_names[role]);
		t->role = role;
		t->generation++;
		/* Its connections were made for the old role: never reuse them. */
		pool_drop_idle_of_locked(t, &doomed);
	}
	if (role == ROLE_WRITER && t != writer && !writer_usable_locked()) {
		/*
		 * A writer pgmux had but cannot use (suspect after its connections
		 * failed, before its health check fails) is left for this one: a
		 * failover too, counted as one.
		 */
		if (writer != NULL && writer_lost_usec == 0)
			writer_lost_usec = now;
		writer = t;
		stats_writer_found(writer_lost_usec, now);
		if (writer_lost_usec)
			log_instance(LOG_LEVEL_INFO, t->instance_id,
				     "failover: writer is now %s (%s:%d), %llu ms after the previous writer was lost",
				     t->instance_id, t->host, t->port,
				     (unsigned long long)((now - writer_lost_usec) / 1000));
		else
			log_instance(LOG_LEVEL_INFO, t->instance_id,
				     "writer is %s (%s:%d)", t->instance_id, t->host, t->port);
		writer_lost_usec = 0;
	} else if (role == ROLE_WRITER && t != writer) {
		log_warning("instance %s (%s:%d) also reports being a writer; pgmux stays with %s", t->instance_id, t->host,
			    t->port, writer->instance_id);
	} else if (role != ROLE_WRITER && t == writer) {
		/* A demoted writer: writes must not go to an instance in recovery. */
		writer = NULL;
		writer_lost_usec = now;
		log_instance(LOG_LEVEL_WARNING, t->instance_id,
			     "writer %s is now a %s; new transactions wait for a writer", t->instance_id,
			     role_names[role]);
	}
	/* Clients that waited (for a writer, or while t was suspect) get idle connections or new ones. */
	pool_serve_waiters_locked(&batch);
	pthread_mutex_unlock(&pool_lock);
	pool_close_all(&doomed, "its instance changed role");
	if (changed_role)
		workers_broadcast(WORKER_MSG_SWEEP);
	pool_run_connects(&batch);
}

/* ----------------------------------------------------- pause and cutover */

static struct target *find_target_locked(const char *instance)
{
	struct list_node *pos;
	char hostport[300];

	list_for_each(pos, &targets) {
		struct target *t = list_entry(pos, struct target, node);

		snprintf(hostport, sizeof(hostport), "%s:%d", t->host, t->port);
		if (strcmp(instance, hostport) == 0 || strcmp(instance, t->instance_id) == 0 || strcmp(instance, t->host) == 0)
			return t;
	}
	return NULL;
}

static int pool_set_paused(const char *instance, bool on)
{
	struct connect_batch batch;
	struct target *t = NULL;

	batch.n = 0;
	pthread_mutex_lock(&pool_lock);
	if (instance && instance[0]) {
		t = find_target_locked(instance);
		if (t == NULL) {
			pthread_mutex_unlock(&pool_lock);
			return -1;
		}
		t->paused = on;
	} else {
		paused = on;
		if (!on) {
			struct list_node *pos;

			/* RESUME without a name resumes everything. */
			list_for_each(pos, &targets)
				list_entry(pos, struct target, node)->paused = false;
		}
	}
	if (!on)
		pool_serve_waiters_locked(&batch);
	pthread_mutex_unlock(&pool_lock);
	pool_run_connects(&batch);
	log_info("%s %s", on ? "paused" : "resumed", t ? t->instance_id : "all instances");
	return 0;
}

int pool_pause(const char *instance)
{
	return pool_set_paused(instance, true);
}

int pool_resume(const char *instance)
{
	return pool_set_paused(instance, false);
}

bool pool_is_paused(void)
{
	bool p;

	pthread_mutex_lock(&pool_lock);
	p = paused;
	pthread_mutex_unlock(&pool_lock);
	return p;
}

/* Retire t as a cutover does: no new transactions, idle connections unlinked into doomed. */
static void target_retire_locked(struct target *t, struct list_node *doomed)
{
	t->retired = true;
	t->healthy = false;
	t->generation++;
	pool_drop_idle_of_locked(t, doomed);
	list_del(&t->node);
	list_append(&retired_targets, &t->node);
}

/*
 * A reader that was deleted (or removed by Aurora Auto Scaling) leaves the
 * topology before its endpoint stops answering. Until this, pgmux kept
 * sending it reads while it still answered, and kept it for good afterwards,
 * so that a cluster scaled in to no reader made reader-port clients wait for
 * connection_borrow_timeout instead of failing at once. Only the writer's
 * view counts: it is the one that adds and removes instances. Transactions
 * still running on a retired instance finish there; session-pooled clients
 * pinned to it keep it until they end or it goes away. The target itself
 * stays allocated (workers may still refer to it), on the retired list; should
 * the instance come back, discovery adds it afresh. The monitor stops
 * watching it at its next round.
 */
void pool_retire_absent_instances(const char *const *instance_ids, int n)
{
	struct list_node doomed, *pos, *tmp;
	int n_retired = 0;

	list_init(&doomed);
	pthread_mutex_lock(&pool_lock);
	list_for_each_safe(pos, tmp, &targets) {
		struct target *t = list_entry(pos, struct target, node);
		bool named = false;

		for (int i = 0; i < n && !named; i++)
			named = strcmp(t->instance_id, instance_ids[i]) == 0;
		if (t->listed || named || t == writer)
			continue;
		log_info("instance %s (%s:%d) is no longer in the cluster's topology; it gets no new transactions",
			 t->instance_id, t->host, t->port);
		target_retire_locked(t, &doomed);
		n_retired++;
	}
	pthread_mutex_unlock(&pool_lock);
	if (n_retired == 0)
		return;
	pool_close_all(&doomed, "its instance left the cluster");
	/* Servers parked on worker loops are closed by their own worker. */
	workers_broadcast(WORKER_MSG_SWEEP);
}

void pool_replace_targets(const struct target_host *hosts, int n_hosts)
{
	struct list_node doomed, *node, *tmp;

	list_init(&doomed);
	pthread_mutex_lock(&pool_lock);
	list_for_each_safe(node, tmp, &targets)
		target_retire_locked(list_entry(node, struct target, node), &doomed);
	writer = NULL;
	writer_lost_usec = 0;
	for (int i = 0; i < n_hosts; i++)
		target_new_locked(hosts[i].host, hosts[i].port, true);
	pthread_mutex_unlock(&pool_lock);
	pool_close_all(&doomed, "cutover to new instances");
	workers_broadcast(WORKER_MSG_SWEEP);
}

bool pool_writer_address(char *host, size_t host_len, int *port)
{
	bool known;

	pthread_mutex_lock(&pool_lock);
	known = writer != NULL;
	if (known) {
		snprintf(host, host_len, "%s", writer->host);
		*port = writer->port;
	}
	pthread_mutex_unlock(&pool_lock);
	return known;
}

bool pool_target_retired(const struct target *t)
{
	return __atomic_load_n(&t->retired, __ATOMIC_RELAXED);
}

void pool_free_targets(void)
{
	struct list_node *node;

	while ((node = list_pop_front(&targets)) != NULL || (node = list_pop_front(&retired_targets)) != NULL) {
		struct target *t = list_entry(node, struct target, node);

		free(t->host);
		free(t);
	}
	writer = NULL;
}
