/*
 * monitor.c: health checks (see monitor.h). The monitor thread runs its own
 * event_base. For each instance it keeps a libpq connection, opened and
 * queried without blocking, and a deadline of health_check_timeout per
 * check. Roles come from pg_is_in_recovery() on PostgreSQL and from
 * aurora_replica_status() on Aurora, which also names instances that
 * [target] hosts does not list.
 */
#include "monitor.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <libpq-fe.h>

#include "log.h"
#include "pgconn.h"
#include "pgmux.h"
#include "pool.h"
#include "proto.h"
#include "secrets.h"
#include "util.h"

#define MONITOR_APPLICATION_NAME "pgmux health check"

/*
 * The first check of an instance also finds out whether it is Aurora. The
 * lag of a PostgreSQL standby counts only while WAL it has received is not
 * yet replayed; an idle standby is not behind however old its last commit.
 */
static const char plain_check_sql[] =
	"SELECT pg_catalog.pg_is_in_recovery(), "
	"CASE WHEN pg_catalog.pg_is_in_recovery() AND "
	"pg_catalog.pg_last_wal_receive_lsn() IS DISTINCT FROM pg_catalog.pg_last_wal_replay_lsn() "
	"THEN COALESCE((EXTRACT(EPOCH FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp()) * 1000)::int, 0) "
	"ELSE 0 END, "
	"pg_catalog.to_regproc('aurora_replica_status') IS NOT NULL";

static const char aurora_check_sql[] =
	"SELECT aurora_db_instance_identifier(), server_id, session_id, replica_lag_in_msec "
	"FROM aurora_replica_status()";

enum monitor_state {
	MON_IDLE,
	MON_CONNECTING, /* resolving, then connecting (pgconn.c) */
	MON_QUERYING,
};

struct monitor_conn {
	struct target *t;
	unsigned seen; /* the last round that found its target among the live ones */
	PGconn *pg;
	struct pgconn connect; /* while MON_CONNECTING */
	enum monitor_state state;
	bool connected_before; /* pg was up when this check began: one quiet retry on failure */
	bool retried;
	bool aurora;
	struct pgconn_query query; /* while MON_QUERYING */
	struct event *deadline;
};

static struct event_base *mon_base;
static struct evdns_base *mon_dns;
static struct event *tick_event;
static struct event *wake_event;
static pthread_t mon_thread;
static bool mon_running;
static int mon_reader = -1; /* config_reader_register() */
static struct monitor_conn **mons;
static int n_mons;
static unsigned round_number;

static void monitor_start_check(struct monitor_conn *m);

/* ------------------------------------------------------------------ results */

static void monitor_reset(struct monitor_conn *m)
{
	pgconn_query_cancel(&m->query);
	if (m->deadline)
		evtimer_del(m->deadline);
	pgconn_cancel(&m->connect);
	m->state = MON_IDLE;
}

static void monitor_fail(struct monitor_conn *m, const char *why)
{
	char reason[256];

	snprintf(reason, sizeof(reason), "%s", why);
	reason[strcspn(reason, "\n")] = '\0';
	monitor_reset(m);
	if (m->pg) {
		PQfinish(m->pg);
		m->pg = NULL;
	}
	/* An old monitoring connection may just have been dropped: try once afresh before judging. */
	if (m->connected_before && !m->retried) {
		m->retried = true;
		monitor_start_check(m);
		return;
	}
	pool_instance_report(m->t, false, ROLE_UNKNOWN, 0, NULL, reason);
}

static void monitor_done(struct monitor_conn *m, enum instance_role role, int lag_ms, const char *instance_id)
{
	monitor_reset(m);
	pool_instance_report(m->t, true, role, lag_ms, instance_id, NULL);
}

/*
 * Discovery, from the writer's view of the cluster only: it is the one that
 * adds and removes instances, and a reader's copy of the topology may lag
 * behind it (which, were readers heard too, would bring back an instance the
 * writer no longer names). Instances it names are added, discovered ones it
 * no longer names are retired.
 */
static void monitor_discover(PGresult *res)
{
	const struct config *cfg = config_current();
	const char *q = strchr(cfg->instance_host_pattern, '?');
	const char **named = xcalloc((size_t)PQntuples(res) + 1, sizeof(*named));

	for (int i = 0; i < PQntuples(res); i++) {
		const char *server_id = PQgetvalue(res, i, 1);
		char host[256];

		named[i] = server_id;
		if (server_id[0] == '\0')
			continue;
		snprintf(host, sizeof(host), "%.*s%s%s", (int)(q - cfg->instance_host_pattern),
			 cfg->instance_host_pattern, server_id, q + 1);
		pool_add_instance(host, cfg->hosts[0].port, server_id);
	}
	pool_retire_absent_instances(named, PQntuples(res));
	free(named);
}

/* Aurora: this instance's role from the cluster's own view, and (on the writer) the instances it names. */
static void monitor_aurora_result(struct monitor_conn *m, PGresult *res)
{
	const char *me = NULL, *writer_id = NULL;
	int lag = 0;

	for (int i = 0; i < PQntuples(res); i++) {
		me = PQgetvalue(res, i, 0);
		if (strcmp(PQgetvalue(res, i, 2), "MASTER_SESSION_ID") == 0)
			writer_id = PQgetvalue(res, i, 1);
	}
	if (me == NULL) {
		monitor_fail(m, "aurora_replica_status() returned no rows");
		return;
	}
	for (int i = 0; i < PQntuples(res); i++)
		if (strcmp(PQgetvalue(res, i, 1), me) == 0 && !PQgetisnull(res, i, 3))
			lag = (int)atof(PQgetvalue(res, i, 3));
	if (config_current()->instance_host_pattern[0] && writer_id && strcmp(writer_id, me) == 0)
		monitor_discover(res);
	monitor_done(m, writer_id && strcmp(writer_id, me) == 0 ? ROLE_WRITER : ROLE_READER, lag < 0 ? 0 : lag, me);
}

static void monitor_result(struct monitor_conn *m, PGresult *res)
{
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		monitor_fail(m, PQresultErrorMessage(res));
		return;
	}
	if (m->aurora) {
		monitor_aurora_result(m, res);
		return;
	}
	if (PQntuples(res) != 1 || PQnfields(res) != 3) {
		monitor_fail(m, "unexpected health check result");
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 2), "t") == 0) {
		/* Aurora: the next check asks the cluster itself. */
		m->aurora = true;
		log_info("instance %s:%d is Aurora PostgreSQL", m->t->host, m->t->port);
	}
	monitor_done(m, strcmp(PQgetvalue(res, 0, 0), "t") == 0 ? ROLE_READER : ROLE_WRITER, atoi(PQgetvalue(res, 0, 1)),
		     NULL);
}

/* ------------------------------------------------------------ the exchange */

static void monitor_on_result(void *arg, PGresult *res, const char *error)
{
	struct monitor_conn *m = arg;

	if (res == NULL)
		monitor_fail(m, error);
	else
		monitor_result(m, res);
}

static void monitor_send_query(struct monitor_conn *m)
{
	m->state = MON_QUERYING;
	pgconn_query_start(&m->query, mon_base, m->pg, m->aurora ? aurora_check_sql : plain_check_sql, 0, NULL,
			   monitor_on_result, m);
}

/*
 * The user the health checks logged in as without health_check_user (the
 * one secret there was). When a reload adds secrets and leaves
 * health_check_user unset, the checks go on as that user, whose password
 * already went to these servers, rather than fail and take the writer away;
 * the reload logged an error. Touched by the monitor thread only.
 */
static char implicit_check_user[PROTO_MAX_PARAM_NAME_LEN + 1];

static void monitor_connected(void *arg, PGconn *pg, const struct pgconn_failure *failure)
{
	struct monitor_conn *m = arg;

	if (pg == NULL) {
		monitor_fail(m, failure->message);
		return;
	}
	m->pg = pg;
	monitor_send_query(m);
}

static const struct pgconn_ops monitor_connect_ops = {
	.done = monitor_connected,
};

static void monitor_connect(struct monitor_conn *m)
{
	const struct config *cfg = config_current();
	struct pgconn_params params = { 0 };
	struct secret secret;
	bool found;

	/* Only health_check_user's password, or the one secret there is (or was), ever goes to a server for a check. */
	if (cfg->health_check_user[0]) {
		found = secrets_find(cfg->health_check_user, &secret);
	} else if ((found = secrets_find_only(&secret))) {
		snprintf(implicit_check_user, sizeof(implicit_check_user), "%s", secret.username);
	} else {
		found = implicit_check_user[0] && secrets_find(implicit_check_user, &secret);
	}
	if (!found) {
		monitor_fail(m, cfg->health_check_user[0] ? "health_check_user has no secret in secrets_dir"
			     : secrets_count() > 1 ? "health_check_user is not set and secrets_dir holds more than one secret"
						   : "no secret in secrets_dir for health checks");
		return;
	}
	params.host = m->t->host;
	params.port = m->t->port;
	params.user = secret.username;
	params.database = cfg->health_check_database;
	params.password = secret.password;
	params.application_name = MONITOR_APPLICATION_NAME;
	m->state = MON_CONNECTING;
	/* It may end (monitor_connected()) before it returns. */
	pgconn_start(&m->connect, mon_base, mon_dns, &params, &monitor_connect_ops, m);
	secret_clear(&secret);
}

static void monitor_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct monitor_conn *m = arg;
	char why[64];

	snprintf(why, sizeof(why), "no answer within health_check_timeout (%d ms)",
		 config_current()->health_check_timeout_ms);
	/* A hung instance gets no quiet retry. */
	m->retried = true;
	monitor_fail(m, why);
}

static void monitor_start_check(struct monitor_conn *m)
{
	const struct config *cfg = config_current();
	struct timeval tv = { cfg->health_check_timeout_ms / 1000, (cfg->health_check_timeout_ms % 1000) * 1000 };

	if (m->state != MON_IDLE)
		return;
	evtimer_add(m->deadline, &tv);
	if (m->pg && PQstatus(m->pg) == CONNECTION_OK) {
		m->connected_before = true;
		monitor_send_query(m);
		return;
	}
	m->connected_before = false;
	if (m->pg) {
		PQfinish(m->pg);
		m->pg = NULL;
	}
	monitor_connect(m);
}

/* --------------------------------------------------------------- the thread */

static void monitor_free(struct monitor_conn *m)
{
	monitor_reset(m);
	event_free(m->deadline);
	if (m->pg)
		PQfinish(m->pg);
	m->t->monitor = NULL;
	free(m);
}

/* Runs under the pool lock: give every target (including discovered ones) its monitor. */
static void monitor_adopt(struct target *t, void *arg)
{
	struct monitor_conn *m;

	if (t->monitor) {
		t->monitor->seen = round_number;
		return;
	}
	m = xcalloc(1, sizeof(*m));
	m->t = t;
	m->seen = round_number;
	m->deadline = evtimer_new(mon_base, monitor_deadline, m);
	if (m->deadline == NULL)
		out_of_memory("a health check's timer");
	mons = xrealloc(mons, sizeof(*mons) * (size_t)(n_mons + 1));
	mons[n_mons++] = m;
	t->monitor = m;
}

static void monitor_tick(evutil_socket_t fd, short what, void *arg)
{
	const struct config *cfg;

	/* A callback's start: the monitor holds no pointer into a configuration. */
	config_reader_quiescent(mon_reader);
	cfg = config_current();
	struct timeval tv = { cfg->health_check_interval_ms / 1000, (cfg->health_check_interval_ms % 1000) * 1000 };

	round_number++;
	pool_for_each_target(monitor_adopt, NULL);
	for (int i = 0; i < n_mons; i++) {
		struct monitor_conn *m = mons[i];

		if (m->seen != round_number) {
			/* Its instance was retired by a cutover: stop watching it. */
			monitor_free(m);
			mons[i--] = mons[--n_mons];
			continue;
		}
		m->retried = false;
		monitor_start_check(m);
	}
	/* Re-armed each time so that a reloaded interval applies at once. */
	evtimer_add(tick_event, &tv);
}

static void monitor_wake(evutil_socket_t fd, short what, void *arg)
{
	for (int i = 0; i < n_mons; i++) {
		/*
		 * A backend saw the instance fail. The check still gets its one
		 * quiet retry on a fresh connection if its own was up when it began:
		 * what ended a session may have ended that idle connection as well
		 * (pg_terminate_backend, idle_session_timeout), and a dead
		 * monitoring connection says nothing about the instance. If the
		 * instance is down, the fresh connection is refused at once.
		 */
		if (__atomic_exchange_n(&mons[i]->t->check_requested, 0, __ATOMIC_ACQ_REL)) {
			mons[i]->retried = false;
			monitor_start_check(mons[i]);
		}
	}
}

/* A worker asked for a check now (pool_request_health_check() marked the target). Thread safe. */
static void monitor_wake_up(void)
{
	if (__atomic_load_n(&mon_running, __ATOMIC_ACQUIRE))
		event_active(wake_event, EV_READ, 0);
}

void monitor_rescan(void)
{
	if (mon_running)
		event_active(tick_event, EV_TIMEOUT, 0);
}

static void *monitor_main(void *arg)
{
	pthread_setname_np(pthread_self(), "monitor");
	mon_reader = config_reader_register();
	event_base_loop(mon_base, EVLOOP_NO_EXIT_ON_EMPTY);
	for (int i = 0; i < n_mons; i++)
		monitor_free(mons[i]);
	free(mons);
	mons = NULL;
	n_mons = 0;
	return NULL;
}

int monitor_start(void)
{
	struct timeval now = { 0, 0 };

	mon_base = event_base_new();
	if (mon_base == NULL)
		return -1;
	mon_dns = evdns_base_new(mon_base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (mon_dns == NULL) {
		mon_dns = evdns_base_new(mon_base, 0);
		if (mon_dns)
			evdns_base_load_hosts(mon_dns, NULL);
	}
	tick_event = evtimer_new(mon_base, monitor_tick, NULL);
	wake_event = event_new(mon_base, -1, 0, monitor_wake, NULL);
	if (mon_dns == NULL || tick_event == NULL || wake_event == NULL)
		return -1;
	/* The first round starts at once: the writer is unknown until it completes. */
	evtimer_add(tick_event, &now);
	if (pthread_create(&mon_thread, NULL, monitor_main, NULL) != 0)
		return -1;
	__atomic_store_n(&mon_running, true, __ATOMIC_RELEASE);
	pool_set_health_check_wake(monitor_wake_up);
	return 0;
}

void monitor_stop(void)
{
	if (mon_running) {
		pool_set_health_check_wake(NULL);
		event_base_loopbreak(mon_base);
		pthread_join(mon_thread, NULL);
		__atomic_store_n(&mon_running, false, __ATOMIC_RELEASE);
	}
	if (tick_event)
		event_free(tick_event);
	if (wake_event)
		event_free(wake_event);
	if (mon_dns)
		evdns_base_free(mon_dns, 1);
	if (mon_base)
		event_base_free(mon_base);
	tick_event = wake_event = NULL;
	mon_dns = NULL;
	mon_base = NULL;
}
