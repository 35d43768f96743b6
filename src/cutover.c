/*
 * cutover.c: the cutover state machine (see cutover.h), on the main thread,
 * driven by a 20 ms timer and by the answers of two control connections of
 * its own: one to the old writer, one to the new target (the first host of
 * the new list). Both are opened through pgconn.c and queried with libpq's
 * asynchronous calls, so the main loop (reloads, the admin console's
 * requests, metrics) never blocks on a server.
 *
 *   CONNECTING the two control connections open and log in, before any
 *              pause (a failure abandons the cutover at once, or with
 *              cutover_require_catchup = false, switches without the checks)
 *   DRAINING   pools paused; the transactions in flight end (a control
 *              connection lost meanwhile is opened again)
 *   POSITION   the old writer's pg_current_wal_insert_lsn(); the new target's
 *              pg_is_in_recovery() and the slots of its subscriptions
 *   CATCHUP    until the new target has replayed (physical standby) or its
 *              slots on the old writer have confirmed (logical) that position
 *   PROMOTING  cutover_promote: pg_promote() on the standby, until it
 *              leaves recovery (a standby is refused without it)
 *   SEQUENCES  cutover_sync_sequences: the old writer's sequences, database
 *              by database, set on the new target
 *   switch     the pools move to the new instances and resume
 *
 * Any phase that does not end within cutover_timeout abandons the cutover
 * (CONNECTING counts from the cutover's start, the others from the pause's):
 * the pools resume on the old instances, the old hosts are published again,
 * and whoever asked gets an error that says why.
 */
#include "cutover.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/dns.h>
#include <libpq-fe.h>

#include "client.h"
#include "config.h"
#include "log.h"
#include "monitor.h"
#include "pgconn.h"
#include "pgmux.h"
#include "pool.h"
#include "secrets.h"
#include "stats.h"
#include "util.h"
#include "worker.h"

#define CUTOVER_TICK_USEC 20000
#define CUTOVER_APPLICATION_NAME "pgmux cutover"

/*
 * The old writer's position once nothing more is written through pgmux: where
 * its WAL is inserted, not where it is written, for with synchronous_commit =
 * off a commit is visible to others before its WAL is written.
 */
static const char old_position_sql[] = "SELECT pg_catalog.pg_current_wal_insert_lsn()::text";

/*
 * The new target: a standby (and how far it has replayed), or a server whose
 * subscriptions, if any, name the slots to look for on the old writer.
 * pg_subscription's slot names are readable by every role.
 */
static const char new_state_sql[] =
	"SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_replay_lsn()::text, "
	"(SELECT pg_catalog.array_agg(subslotname::text) FROM pg_catalog.pg_subscription "
	"WHERE subslotname IS NOT NULL)::text";

static const char replay_sql[] = "SELECT pg_catalog.pg_last_wal_replay_lsn()::text";

/* cutover_promote: the caught-up standby becomes a writer; pgmux waits for it to leave recovery. */
static const char promote_sql[] = "SELECT pg_catalog.pg_promote(false)";
static const char in_recovery_sql[] = "SELECT pg_catalog.pg_is_in_recovery()";

/* How far the subscriber has confirmed, on the old writer: every slot of the new target's must have. */
static const char slots_sql[] =
	"SELECT pg_catalog.count(*), pg_catalog.min(confirmed_flush_lsn)::text FROM pg_catalog.pg_replication_slots "
	"WHERE slot_type = 'logical' AND slot_name = ANY ($1::text[])";

/* cutover_sync_sequences: the databases whose sequences are carried. */
static const char databases_sql[] =
	"SELECT datname FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1";

/*
 * A database's sequences on the old writer, as JSON, and those cutover_user
 * may not read (pg_sequences shows their last_value as NULL, like that of a
 * sequence never used).
 */
static const char old_sequences_sql[] =
	"SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object('s', schemaname, 'n', sequencename, "
	"'v', last_value, 'i', increment_by))::text, '[]') FROM pg_catalog.pg_sequences WHERE last_value IS NOT NULL "
	"UNION ALL SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I', schemaname, sequencename), ', ') "
	"FROM pg_catalog.pg_sequences WHERE NOT pg_catalog.has_sequence_privilege("
	"pg_catalog.format('%I.%I', schemaname, sequencename), 'SELECT, USAGE')";

/*
 * The same sequences on the new target, each set to at least the old
 * writer's value plus the margin ($2 steps of its increment), within its
 * bounds; never moved back. A sequence the new target lacks comes back with
 * present = false.
 */
static const char new_sequences_sql[] =
	"SELECT pg_catalog.format('%I.%I', a.s, a.n), q.seqrelid IS NOT NULL, "
	"CASE WHEN q.seqrelid IS NULL THEN NULL "
	"WHEN a.i > 0 THEN pg_catalog.setval(q.seqrelid, LEAST(GREATEST(a.v::numeric + $2::numeric * a.i, "
	"COALESCE(b.last_value, q.seqmin)), q.seqmax)::bigint) "
	"ELSE pg_catalog.setval(q.seqrelid, GREATEST(LEAST(a.v::numeric + $2::numeric * a.i, "
	"COALESCE(b.last_value, q.seqmax)), q.seqmin)::bigint) END "
	"FROM pg_catalog.json_to_recordset($1::json) AS a(s text, n text, v bigint, i bigint) "
	"LEFT JOIN pg_catalog.pg_namespace ns ON ns.nspname = a.s "
	"LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = a.n AND c.relkind = 'S' "
	"LEFT JOIN pg_catalog.pg_sequence q ON q.seqrelid = c.oid "
	"LEFT JOIN pg_catalog.pg_sequences b ON b.schemaname = a.s AND b.sequencename = a.n";

enum cutover_phase {
	PHASE_IDLE,
	PHASE_CONNECTING,
	PHASE_DRAINING,
	PHASE_POSITION,
	PHASE_CATCHUP,
	PHASE_PROMOTING,
	PHASE_SEQUENCES,
};

enum replication_kind {
	REPLICATION_NONE,
	REPLICATION_PHYSICAL, /* the new target is a standby of the old writer */
	REPLICATION_LOGICAL,  /* the new target subscribes to the old writer */
};

struct ctl_conn;
/* A connect (res NULL, error NULL: connected) or a query ended; res is freed after the call. */
typedef void (*ctl_done_fn)(struct ctl_conn *k, PGresult *res, const char *error);

/* A control connection: one connect or query at a time. */
struct ctl_conn {
	const char *what; /* "the old writer", "the new target" */
	char host[256];
	int port;
	struct pgconn connect;
	PGconn *pg;
	struct pgconn_query query;
	char *result_text; /* kept for a later step: the old writer's sequences, for the new target */
	ctl_done_fn done; /* what is under way, or NULL */
	char last_error[256];
	char last_sqlstate[6]; /* the server's, when it refused the last login */
};

/* Someone waiting for the end of the cutover in progress (the admin who asked for it). */
struct cutover_waiter {
	struct worker *worker;
	uint64_t client_id;
};

static struct {
	struct event_base *base;
	struct evdns_base *dns;
	void (*publish_hosts)(const struct target_host *hosts, int n_hosts);
	pthread_mutex_t lock; /* stats */
	struct cutover_stats stats;

	/* The cutover in progress (main thread only). */
	enum cutover_phase phase;
	struct event *timer;
	uint64_t begun_usec;   /* asked for; the control connections open from here */
	uint64_t started_usec; /* the pause began; 0 before (CONNECTING) */
	uint64_t drained_usec;
	bool opened; /* CONNECTING: both control connections were asked for */
	struct target_host *hosts; /* where to */
	int n_hosts;
	struct target_host *before; /* where from, to go back to */
	int n_before;
	int in_flight;
	struct cutover_waiter waiters[16];
	int n_waiters;
	struct ctl_conn old, new;
	bool old_answered, new_answered;
	char old_lsn_text[32];
	uint64_t old_lsn;
	enum replication_kind replication;
	char slots[1024]; /* the new target's subscription slots, as a text[] literal */
	bool new_in_recovery;
	char unchecked[384]; /* cutover_require_catchup = false and the checks could not run: why */
	char **databases;    /* cutover_sync_sequences: the old writer's databases */
	int n_databases, next_database;
	int sequences_set, sequences_missing;
} X;

int cutover_workers_pending;

static void cutover_abandon(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

bool cutover_parse_lsn(const char *text, uint64_t *out)
{
	unsigned long long hi, lo;
	int used = 0;

	if (text == NULL || sscanf(text, "%llx/%llx%n", &hi, &lo, &used) != 2 || text[used] != '\0' ||
	    hi > 0xffffffffULL || lo > 0xffffffffULL)
		return false;
	*out = (uint64_t)hi << 32 | (uint64_t)lo;
	return true;
}

/* ------------------------------------------------------- control connections */

/* Close k's connection and stop its query, if it has them. */
static void ctl_disconnect(struct ctl_conn *k)
{
	pgconn_query_cancel(&k->query);
	if (k->pg) {
		PQfinish(k->pg);
		k->pg = NULL;
	}
}

static void ctl_close(struct ctl_conn *k)
{
	pgconn_cancel(&k->connect);
	ctl_disconnect(k);
	k->done = NULL;
}

/* Close k and forget what it kept. */
static void ctl_reset(struct ctl_conn *k)
{
	ctl_close(k);
	free(k->result_text);
	k->result_text = NULL;
}

static bool ctl_ready(const struct ctl_conn *k)
{
	return k->pg != NULL && k->done == NULL;
}

/* What was under way ended: k is free for the next step before done hears. */
static void ctl_finish(struct ctl_conn *k, PGresult *res, const char *error)
{
	ctl_done_fn done = k->done;

	k->done = NULL;
	if (error) {
		snprintf(k->last_error, sizeof(k->last_error), "%s", error);
		k->last_error[strcspn(k->last_error, "\n")] = '\0';
	}
	if (done)
		done(k, res, error ? k->last_error : NULL);
}

static void ctl_fail(struct ctl_conn *k, const char *error)
{
	char copy[512];

	snprintf(copy, sizeof(copy), "%s", error);
	/* A connection that failed is not used again: the next step opens another. */
	ctl_disconnect(k);
	ctl_finish(k, NULL, copy);
}

static void ctl_connected(void *arg, PGconn *pg, const struct pgconn_failure *failure)
{
	struct ctl_conn *k = arg;

	if (pg == NULL) {
		memcpy(k->last_sqlstate, failure->sqlstate, sizeof(k->last_sqlstate));
		ctl_fail(k, failure->message);
		return;
	}
	k->pg = pg;
	k->last_sqlstate[0] = '\0';
	ctl_finish(k, NULL, NULL);
}

static const struct pgconn_ops ctl_connect_ops = {
	.done = ctl_connected,
};

/* Open k to host:port (database) as cutover_user; done hears when it is up or failed. */
static void ctl_open(struct ctl_conn *k, const char *host, int port, const char *database, ctl_done_fn done)
{
	const struct config *cfg = config_current();
	const char *user = cfg->cutover_user[0] ? cfg->cutover_user : cfg->health_check_user;
	struct pgconn_params params = { 0 };
	struct secret secret;
	bool found;

	ctl_close(k);
	snprintf(k->host, sizeof(k->host), "%s", host);
	k->port = port;
	k->done = done;
	found = user[0] ? secrets_find(user, &secret) : secrets_find_only(&secret);
	if (!found) {
		ctl_finish(k, NULL, user[0] ? "cutover_user (or health_check_user) has no secret"
					    : "set cutover_user: no user to log in as for the cutover's checks");
		return;
	}
	params.host = host;
	params.port = port;
	params.user = secret.username;
	params.database = database;
	params.password = secret.password;
	params.application_name = CUTOVER_APPLICATION_NAME;
	/* It may end (ctl_connected()) before it returns. */
	pgconn_start(&k->connect, X.base, X.dns, &params, &ctl_connect_ops, k);
	secret_clear(&secret);
}

/* A query of k's ended: a server's error is the step's error; a broken exchange closes k too. */
static void ctl_on_result(void *arg, PGresult *res, const char *error)
{
	struct ctl_conn *k = arg;
	ExecStatusType st;

	if (res == NULL) {
		ctl_fail(k, error);
		return;
	}
	st = PQresultStatus(res);
	if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
		ctl_finish(k, res, NULL);
	else
		ctl_finish(k, NULL, PQresultErrorMessage(res));
}

/* Send sql with its text parameters on a ready connection; done hears the (first) result. */
static void ctl_query(struct ctl_conn *k, const char *sql, int n_params, const char *const *params, ctl_done_fn done)
{
	k->done = done;
	pgconn_query_start(&k->query, X.base, k->pg, sql, n_params, params, ctl_on_result, k);
}

/* ------------------------------------------------------------- the cutover */

static void tell_waiters(bool ok, const char *text)
{
	for (int i = 0; i < X.n_waiters; i++)
		worker_post_admin_reply(X.waiters[i].worker, X.waiters[i].client_id, ok, text);
	X.n_waiters = 0;
}

static void free_databases(void)
{
	for (int i = 0; i < X.n_databases; i++)
		free(X.databases[i]);
	free(X.databases);
	X.databases = NULL;
	X.n_databases = X.next_database = 0;
}

static void cutover_end(void)
{
	X.phase = PHASE_IDLE;
	free_databases();
	evtimer_del(X.timer);
	ctl_reset(&X.old);
	ctl_reset(&X.new);
	config_free_hosts(X.hosts, X.n_hosts);
	config_free_hosts(X.before, X.n_before);
	X.hosts = X.before = NULL;
	X.n_hosts = X.n_before = 0;
}

/* Give up: the pools resume on the old instances, which are the running hosts again. */
static void cutover_abandon(const char *fmt, ...)
{
	char why[256], text[600];
	va_list ap;
	uint64_t now = pgmux_now_usec();
	uint64_t paused_ms = X.started_usec ? (now - X.started_usec) / 1000 : 0;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	X.publish_hosts(X.before, X.n_before);
	/* Abandoned while the control connections opened: nothing was paused. */
	if (X.started_usec)
		pool_resume(NULL);
	pthread_mutex_lock(&X.lock);
	X.stats.abandoned++;
	X.stats.in_progress = false;
	X.stats.last_pause_ms = paused_ms;
	snprintf(X.stats.last_abandon_reason, sizeof(X.stats.last_abandon_reason), "%s", why);
	pthread_mutex_unlock(&X.lock);
	log_warning("cutover to %s abandoned after %llu ms (%llu ms of pause): %s; pgmux goes on with the old instances",
		    X.stats.last_hosts, (unsigned long long)((now - X.begun_usec) / 1000), (unsigned long long)paused_ms,
		    why);
	snprintf(text, sizeof(text), "cutover to %s abandoned, pgmux goes on with the old instances: %s",
		 X.stats.last_hosts, why);
	tell_waiters(false, text);
	cutover_end();
}

static void cutover_switch(void)
{
	uint64_t now = pgmux_now_usec();
	uint64_t paused_ms = (now - X.started_usec) / 1000;
	uint64_t connect_ms = (X.started_usec - X.begun_usec) / 1000;
	uint64_t catchup_ms = X.drained_usec ? (now - X.drained_usec) / 1000 : 0;
	int pinned = (int)__atomic_load_n(&client_pinned_sessions, __ATOMIC_RELAXED);
	int waited = pool_clients_waiting();

	pool_replace_targets(X.hosts, X.n_hosts);
	monitor_rescan();
	pool_resume(NULL);
	/*
	 * Nothing may reach the old instances now: a session pinned since the
	 * cutover began (in a transaction that was in flight) loses its backend.
	 */
	workers_broadcast(WORKER_MSG_RETIRE);
	pthread_mutex_lock(&X.lock);
	X.stats.count++;
	X.stats.in_progress = false;
	X.stats.last_pause_ms = paused_ms;
	X.stats.last_catchup_ms = catchup_ms;
	X.stats.last_in_flight = X.in_flight;
	X.stats.last_waited = waited;
	X.stats.last_pinned = pinned;
	X.stats.last_abandon_reason[0] = '\0';
	pthread_mutex_unlock(&X.lock);
	stats_cutover_ended();
	log_info("cutover to %s: new transactions paused for %llu ms (%llu ms of it for the catch-up; the control "
		 "connections opened in %llu ms before it); %d transaction(s) were in flight, %d client(s) waited; %d "
		 "pinned session(s) lost their old backend",
		 X.stats.last_hosts, (unsigned long long)paused_ms, (unsigned long long)catchup_ms,
		 (unsigned long long)connect_ms, X.in_flight, waited, pinned);
	tell_waiters(true, "CUTOVER");
	cutover_end();
}

/* ------------------------------------------------------------ sequences */

static void sequences_next_database(void);

static void on_new_sequences(struct ctl_conn *k, PGresult *res, const char *error)
{
	const char *db = X.databases[X.next_database];

	if (error) {
		cutover_abandon("cannot set the sequences of database %s on the new target: %s", db, error);
		return;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		if (strcmp(PQgetvalue(res, i, 1), "t") == 0) {
			X.sequences_set++;
			continue;
		}
		X.sequences_missing++;
		log_warning("cutover to %s: sequence %s of database %s is not on the new target; not carried",
			    X.stats.last_hosts, PQgetvalue(res, i, 0), db);
	}
	X.next_database++;
	sequences_next_database();
}

static void on_new_database(struct ctl_conn *k, PGresult *res, const char *error)
{
	const char *db = X.databases[X.next_database];
	char margin[16];
	const char *params[2];

	(void)res;
	if (error && strcmp(k->last_sqlstate, "3D000") == 0) {
		log_warning("cutover to %s: database %s is not on the new target; its sequences are not carried",
			    X.stats.last_hosts, db);
		X.next_database++;
		sequences_next_database();
		return;
	}
	if (error) {
		cutover_abandon("cannot connect to database %s on the new target to set its sequences: %s", db, error);
		return;
	}
	snprintf(margin, sizeof(margin), "%d", config_current()->cutover_sequence_margin);
	params[0] = k->result_text;
	params[1] = margin;
	ctl_query(k, new_sequences_sql, 2, params, on_new_sequences);
}

static void on_old_sequences(struct ctl_conn *k, PGresult *res, const char *error)
{
	const char *db = X.databases[X.next_database];
	char host[256];

	if (error) {
		cutover_abandon("cannot read the sequences of database %s on the old writer: %s", db, error);
		return;
	}
	if (PQntuples(res) == 2 && !PQgetisnull(res, 1, 0)) {
		cutover_abandon("cutover_user may not read sequences %.120s of database %s on the old writer, so "
				"cutover_sync_sequences cannot carry them",
				PQgetvalue(res, 1, 0), db);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "[]") == 0) {
		X.next_database++;
		sequences_next_database();
		return;
	}
	free(X.new.result_text);
	X.new.result_text = xstrdup(PQgetvalue(res, 0, 0));
	snprintf(host, sizeof(host), "%s", X.new.host);
	ctl_open(&X.new, host, X.new.port, db, on_new_database);
}

static void on_old_database(struct ctl_conn *k, PGresult *res, const char *error)
{
	(void)res;
	if (error) {
		cutover_abandon("cannot connect to database %s on the old writer to read its sequences: %s",
				X.databases[X.next_database], error);
		return;
	}
	ctl_query(k, old_sequences_sql, 0, NULL, on_old_sequences);
}

static void sequences_next_database(void)
{
	char host[256];

	if (X.next_database == X.n_databases) {
		log_info("cutover to %s: %d sequence(s) set on the new target (old value + %d steps), %d not there",
			 X.stats.last_hosts, X.sequences_set, config_current()->cutover_sequence_margin,
			 X.sequences_missing);
		cutover_switch();
		return;
	}
	snprintf(host, sizeof(host), "%s", X.old.host);
	ctl_open(&X.old, host, X.old.port, X.databases[X.next_database], on_old_database);
}

static void on_databases(struct ctl_conn *k, PGresult *res, const char *error)
{
	(void)k;
	if (error) {
		cutover_abandon("cannot list the old writer's databases to carry their sequences: %s", error);
		return;
	}
	free_databases();
	X.n_databases = PQntuples(res);
	X.databases = xcalloc((size_t)X.n_databases + 1, sizeof(*X.databases));
	for (int i = 0; i < X.n_databases; i++)
		X.databases[i] = xstrdup(PQgetvalue(res, i, 0));
	sequences_next_database();
}

/*
 * cutover_sync_sequences: logical replication does not carry sequences, so
 * without this the new target's serial keys would start where its own
 * sequences stand (from its initial copy) and collide with rows it got.
 * Database by database, the old writer's values go to the new target.
 */
static void sequences_begin(void)
{
	X.phase = PHASE_SEQUENCES;
	X.sequences_set = X.sequences_missing = 0;
	if (!ctl_ready(&X.old)) {
		cutover_abandon("no connection to the old writer to read its sequences (%s)", X.old.last_error);
		return;
	}
	ctl_query(&X.old, databases_sql, 0, NULL, on_databases);
}

/* ------------------------------------------------------------ the switch */

/* The new target accepts writes: carry the sequences if asked, then switch. */
static void cutover_writable(void)
{
	if (config_current()->cutover_sync_sequences) {
		sequences_begin();
		return;
	}
	cutover_switch();
}

static void on_recovery_answer(struct ctl_conn *k, PGresult *res, const char *error)
{
	if (error) {
		log_debug("cutover: asking %s whether it left recovery failed: %s", k->what, error);
		return; /* the next tick asks again */
	}
	if (strcmp(PQgetvalue(res, 0, 0), "f") != 0)
		return;
	X.new_in_recovery = false;
	log_info("cutover to %s: the new target left recovery and accepts writes", X.stats.last_hosts);
	cutover_writable();
}

static void on_promote(struct ctl_conn *k, PGresult *res, const char *error)
{
	if (error) {
		cutover_abandon("pg_promote() on the new target %s:%d failed: %s", k->host, k->port, error);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
		cutover_abandon("pg_promote() on the new target %s:%d returned false", k->host, k->port);
		return;
	}
	log_info("cutover to %s: the new target caught up and is being promoted (cutover_promote)", X.stats.last_hosts);
	X.phase = PHASE_PROMOTING;
}

/* The new target holds what the old writer wrote, or nothing says otherwise and that is allowed. */
static void cutover_caught_up(void)
{
	if (X.new_in_recovery) {
		/* Only a physical standby gets here, and only with cutover_promote (decide()). */
		if (!ctl_ready(&X.new)) {
			cutover_abandon("no connection to the new target to promote it (%s)", X.new.last_error);
			return;
		}
		ctl_query(&X.new, promote_sql, 0, NULL, on_promote);
		return;
	}
	cutover_writable();
}

/* Nothing replicates from the old writer to the new target, as far as pgmux can see. */
static void cutover_no_replication(const char *what)
{
	if (config_current()->cutover_require_catchup) {
		cutover_abandon("%s, so pgmux cannot tell whether the new target holds everything the old writer "
				"committed (cutover_require_catchup = true refuses such a cutover)",
				what);
		return;
	}
	log_warning("cutover to %s: %s; switching without a catch-up check (cutover_require_catchup = false)",
		    X.stats.last_hosts, what);
	cutover_caught_up();
}

/* One poll of the catch-up: how far the standby replayed, or the slots confirmed. */
static void on_catchup_answer(struct ctl_conn *k, PGresult *res, const char *error)
{
	uint64_t lsn;
	const char *text;

	if (error) {
		log_debug("cutover: polling the catch-up on %s failed: %s", k->what, error);
		return; /* the next tick tries again, on a new connection if this one failed */
	}
	if (X.replication == REPLICATION_LOGICAL) {
		if (atoi(PQgetvalue(res, 0, 0)) == 0) {
			cutover_no_replication("the new target's subscriptions have no slot on the old writer");
			return;
		}
		text = PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1);
	} else {
		text = PQgetisnull(res, 0, 0) ? NULL : PQgetvalue(res, 0, 0);
	}
	if (text && cutover_parse_lsn(text, &lsn) && lsn >= X.old_lsn) {
		log_info("cutover to %s: the new target has %s %s, the old writer's position", X.stats.last_hosts,
			 X.replication == REPLICATION_LOGICAL ? "confirmed" : "replayed", X.old_lsn_text);
		cutover_caught_up();
	}
}

static void poll_catchup(void)
{
	const char *params[1];

	if (X.replication == REPLICATION_PHYSICAL) {
		if (ctl_ready(&X.new))
			ctl_query(&X.new, replay_sql, 0, NULL, on_catchup_answer);
		return;
	}
	if (ctl_ready(&X.old)) {
		params[0] = X.slots;
		ctl_query(&X.old, slots_sql, 1, params, on_catchup_answer);
	}
}

/* Both answers of POSITION are in: what relationship is there to wait for? */
static void decide(void)
{
	if (X.new_in_recovery && !config_current()->cutover_promote) {
		cutover_abandon("the new target %s:%d is in recovery (a standby): it cannot take writes; promote it "
				"first, or set cutover_promote = true",
				X.new.host, X.new.port);
		return;
	}
	if (X.new_in_recovery) {
		X.replication = REPLICATION_PHYSICAL;
		X.phase = PHASE_CATCHUP;
		log_info("cutover to %s: waiting until the new target (a standby) has replayed %s", X.stats.last_hosts,
			 X.old_lsn_text);
		poll_catchup();
		return;
	}
	if (X.slots[0] == '\0') {
		cutover_no_replication("the new target is not a standby and has no subscription");
		return;
	}
	X.replication = REPLICATION_LOGICAL;
	X.phase = PHASE_CATCHUP;
	log_info("cutover to %s: waiting until the new target's subscription slots %s on the old writer confirm %s",
		 X.stats.last_hosts, X.slots, X.old_lsn_text);
	poll_catchup();
}

static void on_old_position(struct ctl_conn *k, PGresult *res, const char *error)
{
	if (error) {
		char why[384];

		snprintf(why, sizeof(why), "cannot read the old writer's WAL position on %s:%d (%s)", k->host, k->port,
			 error);
		cutover_no_replication(why);
		return;
	}
	snprintf(X.old_lsn_text, sizeof(X.old_lsn_text), "%s", PQgetvalue(res, 0, 0));
	if (!cutover_parse_lsn(X.old_lsn_text, &X.old_lsn)) {
		cutover_abandon("the old writer answered \"%s\" for its WAL position", X.old_lsn_text);
		return;
	}
	X.old_answered = true;
	if (X.new_answered)
		decide();
}

static void on_new_state(struct ctl_conn *k, PGresult *res, const char *error)
{
	if (error) {
		char why[384];

		snprintf(why, sizeof(why), "cannot read the state of the new target %s:%d (%s)", k->host, k->port, error);
		cutover_no_replication(why);
		return;
	}
	X.new_in_recovery = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	snprintf(X.slots, sizeof(X.slots), "%s", PQgetisnull(res, 0, 2) ? "" : PQgetvalue(res, 0, 2));
	X.new_answered = true;
	if (X.old_answered)
		decide();
}

/*
 * A control connection came up, or did not. Before the pause (CONNECTING) the
 * tick runs at once to go on; a failure there abandons the cutover (see
 * connecting_done()). During the pause the next tick tries again, unless
 * cutover_require_catchup = false, which switches without the checks once the
 * transactions in flight have ended.
 */
static void on_connected(struct ctl_conn *k, PGresult *res, const char *error)
{
	(void)res;
	if (X.phase == PHASE_CONNECTING)
		event_active(X.timer, EV_TIMEOUT, 1);
	if (error == NULL)
		return;
	log_debug("cutover: connecting to %s %s:%d failed: %s", k->what, k->host, k->port, error);
	if (!config_current()->cutover_require_catchup && X.unchecked[0] == '\0')
		snprintf(X.unchecked, sizeof(X.unchecked), "cannot reach %s %s:%d to check it (%s)", k->what, k->host,
			 k->port, error);
}

/* Open whichever control connection is down, to the old writer and to the new target. */
static void open_connections(void)
{
	const struct config *cfg = config_current();

	if (X.old.pg == NULL && X.old.done == NULL) {
		char host[256];
		int port;

		/* The writer pgmux uses now; the first old host when none is known. */
		if (!pool_writer_address(host, sizeof(host), &port)) {
			snprintf(host, sizeof(host), "%s", X.before[0].host);
			port = X.before[0].port;
		}
		ctl_open(&X.old, host, port, cfg->health_check_database, on_connected);
	}
	if (X.new.pg == NULL && X.new.done == NULL)
		ctl_open(&X.new, X.hosts[0].host, X.hosts[0].port, cfg->health_check_database, on_connected);
}

/*
 * Nothing is written to the old instances through pgmux any more: no
 * transaction in flight, and every session-pooled or pinned client has ended
 * its transaction and gone (client_retire_for_cutover()).
 */
static bool drained(void)
{
	return pool_transactions_in_flight() == 0 && __atomic_load_n(&cutover_workers_pending, __ATOMIC_ACQUIRE) == 0 &&
	       __atomic_load_n(&client_retiring_sessions, __ATOMIC_RELAXED) == 0;
}

/* The control connections are up (or need not be): pause, and retire what cannot move. */
static void cutover_pause(void)
{
	X.started_usec = pgmux_now_usec();
	X.in_flight = pool_transactions_in_flight();
	X.phase = PHASE_DRAINING;
	pool_pause(NULL);
	/* Sessions that hold their backend cannot move: each ends its transaction and goes. */
	__atomic_store_n(&cutover_workers_pending, n_workers, __ATOMIC_RELEASE);
	workers_broadcast(WORKER_MSG_CUTOVER);
	log_info("cutover to %s: the control connections took %llu ms; new transactions wait while %d in flight finish "
		 "and the new target catches up",
		 X.stats.last_hosts, (unsigned long long)((X.started_usec - X.begun_usec) / 1000), X.in_flight);
}

/*
 * CONNECTING: open both control connections and wait for them, so that their
 * logins are not part of the pause. True once paused (DRAINING). A connection
 * that cannot be opened abandons the cutover before anything paused; with
 * cutover_require_catchup = false the pause begins anyway (on_connected()
 * noted why the checks cannot run).
 */
static bool connecting_done(void)
{
	if (!X.opened) {
		X.opened = true;
		open_connections();
		if (X.phase != PHASE_CONNECTING)
			return false;
	}
	if (X.old.done || X.new.done)
		return false;
	if (config_current()->cutover_require_catchup) {
		for (struct ctl_conn *k = &X.old; k; k = k == &X.old ? &X.new : NULL) {
			if (ctl_ready(k))
				continue;
			cutover_abandon("cannot open a control connection to %s %s:%d (as cutover_user) before pausing: %s",
					k->what, k->host, k->port, k->last_error);
			return false;
		}
	}
	cutover_pause();
	return true;
}

static void cutover_tick(evutil_socket_t fd, short what, void *arg)
{
	const struct config *cfg = config_current();
	struct timeval tick = { 0, CUTOVER_TICK_USEC };
	uint64_t elapsed_ms = (pgmux_now_usec() - (X.started_usec ? X.started_usec : X.begun_usec)) / 1000;

	(void)fd;
	(void)what;
	(void)arg;
	if (elapsed_ms >= (uint64_t)cfg->cutover_timeout_ms) {
		switch (X.phase) {
		case PHASE_CONNECTING:
			cutover_abandon("the control connections did not open within cutover_timeout (%d ms): %s%s%s",
					cfg->cutover_timeout_ms, ctl_ready(&X.old) ? "" : X.old.what,
					ctl_ready(&X.old) || ctl_ready(&X.new) ? "" : " and ",
					ctl_ready(&X.new) ? "" : X.new.what);
			break;
		case PHASE_DRAINING:
			if (!drained())
				cutover_abandon("%d transaction(s) still in flight and %lld session-pooled or pinned "
						"session(s) not done after cutover_timeout (%d ms)",
						pool_transactions_in_flight(),
						(long long)__atomic_load_n(&client_retiring_sessions, __ATOMIC_RELAXED),
						cfg->cutover_timeout_ms);
			else
				cutover_abandon("no control connection within cutover_timeout (%d ms): %s%s",
						cfg->cutover_timeout_ms, X.old.pg ? "" : X.old.last_error,
						X.old.pg ? X.new.last_error : "");
			break;
		case PHASE_PROMOTING:
			cutover_abandon("the new target, asked to promote, did not leave recovery within cutover_timeout "
					"(%d ms); it may still do so, but pgmux stays with the old writer",
					cfg->cutover_timeout_ms);
			break;
		case PHASE_SEQUENCES:
			cutover_abandon("the sequences were not carried within cutover_timeout (%d ms)",
					cfg->cutover_timeout_ms);
			break;
		case PHASE_CATCHUP:
			cutover_abandon("the new target did not catch up with the old writer's %s within cutover_timeout "
					"(%d ms)",
					X.old_lsn_text, cfg->cutover_timeout_ms);
			break;
		default:
			cutover_abandon("no answer from the old writer or the new target within cutover_timeout (%d ms)",
					cfg->cutover_timeout_ms);
			break;
		}
		return;
	}
	/* Once the control connections are up, the pause begins and the drain with it, in this tick. */
	if (X.phase == PHASE_CONNECTING && !connecting_done()) {
		if (X.phase != PHASE_IDLE)
			evtimer_add(X.timer, &tick);
		return;
	}
	switch (X.phase) {
	case PHASE_DRAINING:
		if (X.unchecked[0] && drained()) {
			X.drained_usec = pgmux_now_usec();
			cutover_no_replication(X.unchecked);
			return;
		}
		open_connections();
		if (X.phase != PHASE_DRAINING)
			return;
		if (!drained() || !ctl_ready(&X.old) || !ctl_ready(&X.new))
			break;
		/* Nothing is written through pgmux now: what the old writer has is what must be carried. */
		X.phase = PHASE_POSITION;
		X.drained_usec = pgmux_now_usec();
		X.old_answered = X.new_answered = false;
		ctl_query(&X.old, old_position_sql, 0, NULL, on_old_position);
		if (X.phase == PHASE_POSITION)
			ctl_query(&X.new, new_state_sql, 0, NULL, on_new_state);
		break;
	case PHASE_CATCHUP:
		open_connections();
		if (X.phase == PHASE_CATCHUP)
			poll_catchup();
		break;
	case PHASE_PROMOTING:
		open_connections();
		if (ctl_ready(&X.new))
			ctl_query(&X.new, in_recovery_sql, 0, NULL, on_recovery_answer);
		break;
	default:
		break;
	}
	if (X.phase != PHASE_IDLE)
		evtimer_add(X.timer, &tick);
}

void cutover_begin(struct target_host *hosts, int n_hosts, const struct target_host *before, int n_before,
		   struct worker *w, uint64_t client_id)
{
	struct timeval now = { 0, 0 };
	size_t used = 0;

	if (X.phase != PHASE_IDLE) {
		/*
		 * The newest list wins: its checks start again, from the control
		 * connections (during the pause if it began: from the drain);
		 * whoever asked hears when it ends.
		 */
		config_free_hosts(X.hosts, X.n_hosts);
		ctl_reset(&X.old);
		ctl_reset(&X.new);
		free_databases();
		X.new_in_recovery = false;
		X.opened = false;
		X.phase = X.started_usec ? PHASE_DRAINING : PHASE_CONNECTING;
	} else {
		X.begun_usec = pgmux_now_usec();
		X.started_usec = 0;
		X.drained_usec = 0;
		X.in_flight = 0;
		X.opened = false;
		X.before = xcalloc((size_t)n_before, sizeof(*X.before));
		for (int i = 0; i < n_before; i++) {
			X.before[i].host = xstrdup(before[i].host);
			X.before[i].port = before[i].port;
		}
		X.n_before = n_before;
		/* The pause waits for the control connections (connecting_done()). */
		X.phase = PHASE_CONNECTING;
		evtimer_add(X.timer, &now);
	}
	X.hosts = hosts;
	X.n_hosts = n_hosts;
	X.replication = REPLICATION_NONE;
	X.slots[0] = '\0';
	X.unchecked[0] = '\0';
	X.old.last_error[0] = X.new.last_error[0] = '\0';
	if (w && X.n_waiters < (int)(sizeof(X.waiters) / sizeof(X.waiters[0]))) {
		X.waiters[X.n_waiters].worker = w;
		X.waiters[X.n_waiters].client_id = client_id;
		X.n_waiters++;
	}
	pthread_mutex_lock(&X.lock);
	X.stats.in_progress = true;
	X.stats.last_hosts[0] = '\0';
	for (int i = 0; i < n_hosts; i++) {
		int n = snprintf(X.stats.last_hosts + used, sizeof(X.stats.last_hosts) - used, "%s%s:%d", i ? ", " : "",
				 hosts[i].host, hosts[i].port);

		if (n < 0 || (size_t)n >= sizeof(X.stats.last_hosts) - used)
			break;
		used += (size_t)n;
	}
	pthread_mutex_unlock(&X.lock);
	log_info("cutover to %s begins: the control connections open, then new transactions wait while those in flight "
		 "finish and the new target catches up (cutover_timeout %d ms)",
		 X.stats.last_hosts, config_current()->cutover_timeout_ms);
}

bool cutover_in_progress(void)
{
	return X.phase != PHASE_IDLE;
}

void cutover_get_stats(struct cutover_stats *out)
{
	pthread_mutex_lock(&X.lock);
	*out = X.stats;
	pthread_mutex_unlock(&X.lock);
}

int cutover_init(struct event_base *base, void (*publish_hosts)(const struct target_host *hosts, int n_hosts))
{
	X.base = base;
	X.publish_hosts = publish_hosts;
	X.old.what = "the old writer";
	X.new.what = "the new target";
	pthread_mutex_init(&X.lock, NULL);
	X.dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (X.dns == NULL) {
		X.dns = evdns_base_new(base, 0);
		if (X.dns)
			evdns_base_load_hosts(X.dns, NULL);
	}
	X.timer = evtimer_new(base, cutover_tick, NULL);
	if (X.dns == NULL || X.timer == NULL)
		return -1;
	return 0;
}

void cutover_cleanup(void)
{
	free_databases();
	ctl_reset(&X.old);
	ctl_reset(&X.new);
	config_free_hosts(X.hosts, X.n_hosts);
	config_free_hosts(X.before, X.n_before);
	X.hosts = X.before = NULL;
	X.n_hosts = X.n_before = 0;
	X.phase = PHASE_IDLE;
	if (X.timer)
		event_free(X.timer);
	if (X.dns)
		evdns_base_free(X.dns, 1);
	X.timer = NULL;
	X.dns = NULL;
}
