/*
 * admin.c: the admin console (see admin.h). Commands run on the client's
 * worker and read shared state through the pool, cancel and server
 * registries; RELOAD, CUTOVER and SHUTDOWN are handed to the main thread
 * (control.c) and answered when it is done. Every result column is text.
 */
#include "admin.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cancel.h"
#include "client.h"
#include "config.h"
#include "control.h"
#include "cutover.h"
#include "listen.h"
#include "log.h"
#include "pgmux.h"
#include "pool.h"
#include "proto.h"
#include "server.h"
#include "stats.h"
#include "util.h"
#include "worker.h"

#include "build_config.h"

#define TEXT_OID 25
#define MAX_COLUMNS 20

struct admin_session {
	bool waiting;            /* a request to the main thread is pending */
	bool waiting_extended;   /* it came from Execute: no ReadyForQuery of its own */
	char *rest;              /* commands after the pending one (simple protocol) */
	bool discard_until_sync; /* an extended-protocol message failed */
	char *statement;         /* the text of the last Parse */
	char *portal;            /* the text of the last Bind */
	struct iobuf described;  /* rows and tag of a portal already run by Describe */
	bool have_described;
	bool look_only;          /* in stats_users, not admin_users: SHOW commands only */
	bool extended;           /* the command came in the extended protocol: one result set per command */
};

enum admin_outcome {
	ADMIN_DONE,  /* the result is in the buffer */
	ADMIN_ASYNC, /* the main thread answers later */
};

/* ------------------------------------------------------------ result sets */

static void put_columns(struct iobuf *out, int n, const char *const *names)
{
	size_t begin = proto_begin(out, BE_ROW_DESCRIPTION);

	iobuf_append_u16(out, (uint16_t)n);
	for (int i = 0; i < n; i++) {
		iobuf_append_str(out, names[i]);
		iobuf_append_u32(out, 0); /* table oid */
		iobuf_append_u16(out, 0); /* column number */
		iobuf_append_u32(out, TEXT_OID);
		iobuf_append_u16(out, 0xffff); /* varlena */
		iobuf_append_u32(out, 0xffffffff); /* typmod -1 */
		iobuf_append_u16(out, 0);          /* text format */
	}
	proto_end(out, begin);
}

static void put_row(struct iobuf *out, int n, const char *const *values)
{
	size_t begin = proto_begin(out, BE_DATA_ROW);

	iobuf_append_u16(out, (uint16_t)n);
	for (int i = 0; i < n; i++) {
		size_t len = strlen(values[i]);

		iobuf_append_u32(out, (uint32_t)len);
		iobuf_append(out, values[i], len);
	}
	proto_end(out, begin);
}

static void put_complete(struct iobuf *out, const char *tag)
{
	size_t begin = proto_begin(out, BE_COMMAND_COMPLETE);

	iobuf_append_str(out, tag);
	proto_end(out, begin);
}

/* A row built from printf-style cells: each cell is formatted into its own buffer. */
struct row {
	char cells[MAX_COLUMNS][160];
	const char *ptrs[MAX_COLUMNS];
	int n;
};

static void cell(struct row *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void cell(struct row *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->cells[r->n], sizeof(r->cells[r->n]), fmt, ap);
	va_end(ap);
	r->ptrs[r->n] = r->cells[r->n];
	r->n++;
}

/* ------------------------------------------------------------------- SHOW */

static void show_help(struct iobuf *out)
{
	static const char *const cols[] = { "command", "description" };
	static const char *const help[][2] = {
		{ "SHOW HELP", "this list" },
		{ "SHOW POOLS", "one row per pool (user, database, endpoint): clients waiting, backend connections" },
		{ "SHOW CLIENTS", "one row per logged-in client" },
		{ "SHOW SERVERS", "one row per backend connection" },
		{ "SHOW TARGETS", "one row per instance: role, health, replication lag, connections" },
		{ "SHOW LISTENERS", "one row per pool whose clients LISTEN through pgmux: its LISTEN connection, channels" },
		{ "SHOW STATS",
		  "per pool: PgBouncer's totals and averages; then counters since start-up, failovers and cutovers" },
		{ "SHOW CONFIG", "every setting and its value" },
		{ "SHOW VERSION", "the pgmux version" },
		{ "PAUSE [instance]", "new transactions wait (all instances, or the one named host:port)" },
		{ "RESUME [instance]", "undo PAUSE" },
		{ "RELOAD", "re-read the configuration file and the secrets (a hosts change cuts over)" },
		{ "CUTOVER TO 'host:port[, ...]'", "move the pools to these instances without failing a transaction" },
		{ "KILL client_id", "close a client connection" },
		{ "SHUTDOWN", "stop accepting, let sessions end (as SIGINT)" },
	};

	put_columns(out, 2, cols);
	for (size_t i = 0; i < sizeof(help) / sizeof(help[0]); i++)
		put_row(out, 2, help[i]);
	put_complete(out, "SHOW");
}

static void show_version(struct iobuf *out)
{
	static const char *const cols[] = { "version" };
	const char *v[] = { "pgmux " PACKAGE_VERSION };

	put_columns(out, 1, cols);
	put_row(out, 1, v);
	put_complete(out, "SHOW");
}

static void pool_row(struct pool *p, void *arg)
{
	struct iobuf *out = arg;
	struct row r = { .n = 0 };

	cell(&r, "%s", p->database);
	cell(&r, "%s", p->user);
	cell(&r, "%s", p->endpoint == ENDPOINT_WRITER ? "writer" : "reader");
	cell(&r, "%d", p->n_waiting);
	cell(&r, "%d", p->n_active);
	cell(&r, "%d", p->n_idle);
	cell(&r, "%d", p->n_connecting);
	cell(&r, "%d", p->n_connections);
	cell(&r, "%d", p->n_pinned);
	put_row(out, r.n, r.ptrs);
}

static void show_pools(struct iobuf *out)
{
	static const char *const cols[] = { "database", "user", "endpoint", "cl_waiting", "sv_active",
					    "sv_idle", "sv_connecting", "sv_total", "sv_pinned" };

	put_columns(out, 9, cols);
	pool_for_each_pool(pool_row, out);
	put_complete(out, "SHOW");
}

static void target_row(struct target *t, void *arg)
{
	struct iobuf *out = arg;
	struct row r = { .n = 0 };
	char status[384];

	cell(&r, "%s", t->instance_id);
	cell(&r, "%s", t->host);
	cell(&r, "%d", t->port);
	cell(&r, "%s", pool_role_name(t->role));
	cell(&r, "%s", !t->checked ? "unknown" : t->healthy ? "healthy" : "unhealthy");
	cell(&r, "%d", t->lag_ms);
	cell(&r, "%d", t->n_connections);
	cell(&r, "%d", t->n_idle);
	if (t->cap_known)
		cell(&r, "%d", t->max_connections);
	else
		cell(&r, "unknown");
	cell(&r, "%llu", (unsigned long long)t->checks_ok);
	cell(&r, "%llu", (unsigned long long)t->checks_failed);
	cell(&r, "%s", t->paused ? "yes" : "no");
	/* Longer than a cell can be (a health check's error): passed as it is. */
	pool_target_status_locked(t, status, sizeof(status));
	r.ptrs[r.n++] = status;
	put_row(out, r.n, r.ptrs);
}

static void show_targets(struct iobuf *out)
{
	static const char *const cols[] = { "instance",    "host",        "port",      "role",
					    "health",      "lag_ms",      "connections", "idle",
					    "max_connections", "checks_ok", "checks_failed", "paused", "status" };

	put_columns(out, 13, cols);
	pool_for_each_target(target_row, out);
	put_complete(out, "SHOW");
}

static void listener_row(const struct listen_info *info, void *arg)
{
	struct iobuf *out = arg;
	struct row r = { .n = 0 };

	cell(&r, "%s", info->database);
	cell(&r, "%s", info->user);
	cell(&r, "%s", info->instance);
	cell(&r, "%d", info->backend_pid);
	cell(&r, "%d", info->channels);
	cell(&r, "%d", info->subscriptions);
	cell(&r, "%llu", (unsigned long long)info->notifications);
	cell(&r, "%llu", (unsigned long long)info->reconnects);
	put_row(out, r.n, r.ptrs);
}

static void show_listeners(struct iobuf *out)
{
	static const char *const cols[] = { "database", "user",          "instance",      "backend_pid",
					    "channels", "subscriptions", "notifications", "reconnects" };

	put_columns(out, 8, cols);
	listen_for_each(listener_row, out);
	put_complete(out, "SHOW");
}

static void client_row(struct cancel_entry *entry, void *arg)
{
	const struct client *c = list_entry(entry, struct client, cancel);
	struct iobuf *out = arg;
	struct row r = { .n = 0 };
	enum client_state state = __atomic_load_n(&c->state, __ATOMIC_RELAXED);
	const char *pin_reason = __atomic_load_n(&c->pin_reason, __ATOMIC_RELAXED);

	cell(&r, "%llu", (unsigned long long)c->id);
	cell(&r, "%s", c->startup.user);
	cell(&r, "%s", c->startup.database);
	cell(&r, "%s", c->peer);
	cell(&r, "%s", client_state_name(state));
	cell(&r, "%s", c->io.ssl ? "yes" : "no");
	cell(&r, "%d", __atomic_load_n(&c->backend_pid, __ATOMIC_RELAXED));
	cell(&r, "%s", pin_reason ? pin_reason : "");
	cell(&r, "%llu", (unsigned long long)((pgmux_now_usec() - c->connect_usec) / 1000000));
	/* The registry's lock is held: client_move() changes the entry's worker under it. */
	cell(&r, "%d", entry->worker ? entry->worker->id : -1);
	put_row(out, r.n, r.ptrs);
}

static void show_clients(struct iobuf *out)
{
	static const char *const cols[] = { "id",  "user",        "database", "address", "state",
					    "tls", "backend_pid", "pinned",   "connected_seconds", "worker" };

	put_columns(out, 10, cols);
	cancel_for_each_entry(client_row, out);
	put_complete(out, "SHOW");
}

static void server_row(struct server *s, void *arg)
{
	struct iobuf *out = arg;
	struct row r = { .n = 0 };
	/*
	 * A server's target is never freed before exit, and its pool not while a
	 * row is built (server_registry_barrier()); its other fields may change under us.
	 */
	struct pool *p = __atomic_load_n(&s->pool, __ATOMIC_RELAXED);
	enum server_state state = __atomic_load_n(&s->state, __ATOMIC_RELAXED);

	cell(&r, "%llu", (unsigned long long)s->id);
	cell(&r, "%s", p ? p->user : "");
	cell(&r, "%s", p ? p->database : "");
	cell(&r, "%s:%d", s->target->host, s->target->port);
	cell(&r, "%s", server_state_name(state));
	cell(&r, "%d", __atomic_load_n(&s->backend_pid, __ATOMIC_RELAXED));
	cell(&r, "%llu", (unsigned long long)__atomic_load_n(&s->client_id, __ATOMIC_RELAXED));
	cell(&r, "%s", __atomic_load_n(&s->pinned, __ATOMIC_RELAXED) ? "yes" : "no");
	put_row(out, r.n, r.ptrs);
}

static void show_servers(struct iobuf *out)
{
	static const char *const cols[] = { "id", "user", "database", "instance", "state", "backend_pid", "client_id",
					    "pinned" };

	put_columns(out, 8, cols);
	server_for_each(server_row, out);
	put_complete(out, "SHOW");
}

static void stat_row(struct iobuf *out, const char *name, unsigned long long value)
{
	struct row r = { .n = 0 };

	cell(&r, "%s", name);
	cell(&r, "%llu", value);
	put_row(out, r.n, r.ptrs);
}

/*
 * PgBouncer's SHOW STATS columns, a row per pool: totals since the pool was
 * made, and averages: counts and bytes per second over the pool's life (not
 * PgBouncer's last stats_period), times in microseconds per transaction,
 * query or borrow.
 */
static void pool_stats_row(struct pool *p, void *arg)
{
	struct iobuf *out = arg;
	struct pool_stats_slot sum;
	struct row r = { .n = 0 };
	uint64_t xacts, queries, borrows;
	double seconds;

	if (p->stats == NULL)
		return;
	stats_pool_sum(p->stats, &sum);
	xacts = histogram_count(&sum.transaction);
	queries = histogram_count(&sum.query);
	borrows = histogram_count(&sum.borrow_wait);
	seconds = (pgmux_now_usec() - p->stats->created_usec) / 1e6;
	if (seconds < 1)
		seconds = 1;
	cell(&r, "%s", p->database);
	cell(&r, "%s", p->user);
	cell(&r, "%s", p->endpoint == ENDPOINT_WRITER ? "writer" : "reader");
	cell(&r, "%llu", (unsigned long long)xacts);
	cell(&r, "%llu", (unsigned long long)queries);
	cell(&r, "%llu", (unsigned long long)sum.bytes_in);
	cell(&r, "%llu", (unsigned long long)sum.bytes_out);
	cell(&r, "%llu", (unsigned long long)sum.transaction.sum_usec);
	cell(&r, "%llu", (unsigned long long)sum.query.sum_usec);
	cell(&r, "%llu", (unsigned long long)sum.borrow_wait.sum_usec);
	cell(&r, "%.0f", xacts / seconds);
	cell(&r, "%.0f", queries / seconds);
	cell(&r, "%.0f", sum.bytes_in / seconds);
	cell(&r, "%.0f", sum.bytes_out / seconds);
	cell(&r, "%llu", (unsigned long long)(xacts ? sum.transaction.sum_usec / xacts : 0));
	cell(&r, "%llu", (unsigned long long)(queries ? sum.query.sum_usec / queries : 0));
	cell(&r, "%llu", (unsigned long long)(borrows ? sum.borrow_wait.sum_usec / borrows : 0));
	put_row(out, r.n, r.ptrs);
}

static void show_pool_stats(struct iobuf *out)
{
	static const char *const cols[] = { "database", "user", "endpoint", "total_xact_count", "total_query_count",
					    "total_received", "total_sent", "total_xact_time", "total_query_time",
					    "total_wait_time", "avg_xact_count", "avg_query_count", "avg_recv",
					    "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time" };

	put_columns(out, 17, cols);
	pool_for_each_pool(pool_stats_row, out);
	put_complete(out, "SHOW");
}

/*
 * In the simple protocol SHOW STATS answers with two result sets: the
 * per-pool table first, then pgmux's own rows (name, value), which a client
 * that keeps only the last result (libpq's PQexec) sees as it always did. In
 * the extended protocol, where a command has one result set, only the second.
 */
static void show_stats(struct client *c, struct iobuf *out)
{
	static const char *const cols[] = { "name", "value" };
	struct worker_stats st;
	struct cutover_stats cs;
	struct event_stats ev;

	if (!c->admin_session->extended)
		show_pool_stats(out);
	workers_sum_stats(&st);
	cutover_get_stats(&cs);
	stats_get_events(&ev);
	put_columns(out, 2, cols);
	stat_row(out, "client_connections", (unsigned long long)pgmux_clients_open());
	stat_row(out, "client_connections_received", st.clients_accepted);
	stat_row(out, "client_logins_failed", st.logins_failed);
	stat_row(out, "client_logins_in_progress", (unsigned long long)pgmux_logins_open());
	stat_row(out, "accept_out_of_descriptors",
		 (unsigned long long)__atomic_load_n(&pgmux_accept_out_of_descriptors, __ATOMIC_RELAXED));
	stat_row(out, "transactions", st.transactions);
	stat_row(out, "queries", st.queries);
	stat_row(out, "borrow_waits", st.borrow_waits);
	stat_row(out, "borrow_timeouts", st.borrow_timeouts);
	stat_row(out, "sessions_pinned_now", (unsigned long long)__atomic_load_n(&client_pinned_sessions, __ATOMIC_RELAXED));
	stat_row(out, "sessions_pinned_total", st.sessions_pinned);
	stat_row(out, "database_connections_opened", st.servers_opened);
	stat_row(out, "database_connection_failures", st.server_connect_failures);
	stat_row(out, "database_connection_handoffs", st.server_handoffs);
	stat_row(out, "clients_moved_between_workers", st.clients_moved);
	stat_row(out, "workers_taking_clients", (unsigned long long)workers_active());
	stat_row(out, "send_batches", st.send_batches);
	stat_row(out, "batched_sends", st.batched_sends);
	stat_row(out, "parses_answered_without_backend", st.parses_answered);
	stat_row(out, "parses_answered_unjudged", st.parses_unjudged);
	stat_row(out, "transactions_waiting", (unsigned long long)pool_clients_waiting());
	stat_row(out, "paused", pool_is_paused() ? 1 : 0);
	stat_row(out, "cutovers", (unsigned long long)cs.count);
	stat_row(out, "cutovers_abandoned", (unsigned long long)cs.abandoned);
	stat_row(out, "cutover_in_progress", cs.in_progress ? 1 : 0);
	stat_row(out, "last_cutover_pause_ms", cs.last_pause_ms);
	stat_row(out, "last_cutover_catchup_ms", cs.last_catchup_ms);
	stat_row(out, "last_cutover_transactions_in_flight", (unsigned long long)cs.last_in_flight);
	stat_row(out, "last_cutover_clients_waited", (unsigned long long)cs.last_waited);
	stat_row(out, "last_cutover_pinned_sessions", (unsigned long long)cs.last_pinned);
	stat_row(out, "last_cutover_unix_time", ev.last_cutover_unix_usec / 1000000);
	stat_row(out, "failovers", ev.failovers);
	stat_row(out, "last_failover_unix_time", ev.last_failover_unix_usec / 1000000);
	stat_row(out, "last_failover_ms", ev.last_failover_outage_usec / 1000);
	stat_row(out, "resends", ev.resends);
	stat_row(out, "tls_handshake_failures", st.tls_handshake_failures);
	stat_row(out, "clients_refused_max_client_connections", st.refused_max_client_connections);
	stat_row(out, "clients_refused_max_login_connections", st.refused_max_login_connections);
	stat_row(out, "clients_refused_require_tls", st.refused_require_tls);
	put_complete(out, "SHOW");
}

static void show_config(struct iobuf *out)
{
	static const char *const cols[] = { "section", "name", "value", "default", "reloadable" };
	const struct config *cfg = config_current();
	size_t n;
	const struct config_option *opts = config_options(&n);

	put_columns(out, 5, cols);
	for (size_t i = 0; i < n; i++) {
		char *value = config_value_text(cfg, &opts[i]);
		struct row r = { .n = 0 };
		bool in_memory = cfg->hosts_in_memory && strcmp(opts[i].name, "hosts") == 0;

		cell(&r, "%s", opts[i].section);
		cell(&r, "%s", opts[i].name);
		if (config_option_is_secret(&opts[i]) && value != NULL && value[0] != '\0')
			cell(&r, "%s", "(set; not shown)");
		else
			cell(&r, "%.120s%s", value, in_memory ? " (in memory, set by CUTOVER TO; not in the file)" : "");
		cell(&r, "%s", opts[i].default_value);
		cell(&r, "%s", opts[i].reloadable ? "yes" : "no");
		put_row(out, r.n, r.ptrs);
		free(value);
	}
	put_complete(out, "SHOW");
}

/* ------------------------------------------------------------- commands */

/* The next word of *p, upper-cased into word; false at the end. */
static bool next_word(const char **p, char *word, size_t size)
{
	size_t n = 0;

	while (isspace((unsigned char)**p))
		(*p)++;
	if (**p == '\0')
		return false;
	while (**p && !isspace((unsigned char)**p) && n + 1 < size)
		word[n++] = (char)toupper((unsigned char)*(*p)++);
	word[n] = '\0';
	return true;
}

/* An optional argument: a quoted string ('x' or "x") or a bare word; "" when absent. */
static void argument(const char *p, char *out, size_t size)
{
	size_t n = 0;

	while (isspace((unsigned char)*p))
		p++;
	if (*p == '\'' || *p == '"') {
		char quote = *p++;

		while (*p && n + 1 < size) {
			if (*p == quote && p[1] == quote)
				p++;
			else if (*p == quote)
				break;
			out[n++] = *p++;
		}
	} else {
		while (*p && !isspace((unsigned char)*p) && n + 1 < size)
			out[n++] = *p++;
	}
	out[n] = '\0';
}

static void admin_error(struct iobuf *out, const char *sqlstate, const char *message)
{
	proto_put_error(out, "ERROR", sqlstate, message, NULL, NULL);
}

/* Run one command. */
static enum admin_outcome admin_run(struct client *c, const char *sql, struct iobuf *out)
{
	char w1[32], w2[32], arg[256];
	const char *p = sql;

	if (!next_word(&p, w1, sizeof(w1))) {
		size_t begin = proto_begin(out, BE_EMPTY_QUERY);

		proto_end(out, begin);
		return ADMIN_DONE;
	}
	log_client(LOG_LEVEL_INFO, c, "admin console: %.200s", sql);
	if (c->admin_session->look_only && strcmp(w1, "SHOW") != 0) {
		char message[200];

		snprintf(message, sizeof(message),
			 "permission denied for %s: user \"%.63s\" is in stats_users, which may only run SHOW commands",
			 w1, c->startup.user);
		admin_error(out, SQLSTATE_INSUFFICIENT_PRIVILEGE, message);
		return ADMIN_DONE;
	}
	if (strcmp(w1, "SHOW") == 0 && next_word(&p, w2, sizeof(w2))) {
		if (strcmp(w2, "HELP") == 0)
			show_help(out);
		else if (strcmp(w2, "POOLS") == 0)
			show_pools(out);
		else if (strcmp(w2, "CLIENTS") == 0)
			show_clients(out);
		else if (strcmp(w2, "SERVERS") == 0)
			show_servers(out);
		else if (strcmp(w2, "TARGETS") == 0)
			show_targets(out);
		else if (strcmp(w2, "LISTENERS") == 0)
			show_listeners(out);
		else if (strcmp(w2, "STATS") == 0)
			show_stats(c, out);
		else if (strcmp(w2, "CONFIG") == 0)
			show_config(out);
		else if (strcmp(w2, "VERSION") == 0)
			show_version(out);
		else
			goto unknown;
		return ADMIN_DONE;
	}
	if (strcmp(w1, "PAUSE") == 0 || strcmp(w1, "RESUME") == 0) {
		bool pause = w1[0] == 'P';

		argument(p, arg, sizeof(arg));
		if ((pause ? pool_pause(arg) : pool_resume(arg)) != 0) {
			char message[320];

			snprintf(message, sizeof(message), "no instance \"%s\"; SHOW TARGETS lists them", arg);
			admin_error(out, SQLSTATE_INVALID_PARAMETER_VALUE, message);
			return ADMIN_DONE;
		}
		put_complete(out, pause ? "PAUSE" : "RESUME");
		return ADMIN_DONE;
	}
	if (strcmp(w1, "RELOAD") == 0) {
		control_request(CONTROL_RELOAD, NULL, c->worker, c->id);
		return ADMIN_ASYNC;
	}
	if (strcmp(w1, "SHUTDOWN") == 0) {
		control_request(CONTROL_SHUTDOWN, NULL, c->worker, c->id);
		return ADMIN_ASYNC;
	}
	if (strcmp(w1, "CUTOVER") == 0 && next_word(&p, w2, sizeof(w2)) && strcmp(w2, "TO") == 0) {
		argument(p, arg, sizeof(arg));
		if (arg[0] == '\0') {
			admin_error(out, SQLSTATE_SYNTAX_ERROR, "CUTOVER TO needs a host list: CUTOVER TO 'host:port[, ...]'");
			return ADMIN_DONE;
		}
		control_request(CONTROL_CUTOVER, arg, c->worker, c->id);
		return ADMIN_ASYNC;
	}
	if (strcmp(w1, "KILL") == 0) {
		struct worker *owner;
		char *end;
		unsigned long long id;

		argument(p, arg, sizeof(arg));
		id = strtoull(arg, &end, 10);
		if (arg[0] == '\0' || *end != '\0') {
			admin_error(out, SQLSTATE_SYNTAX_ERROR, "KILL needs a client id (SHOW CLIENTS lists them)");
			return ADMIN_DONE;
		}
		owner = cancel_worker_of(id);
		if (owner == NULL) {
			admin_error(out, SQLSTATE_INVALID_PARAMETER_VALUE, "no such client; SHOW CLIENTS lists them");
			return ADMIN_DONE;
		}
		/* The client belongs to its worker: ask it (a worker never frees it while registered). */
		worker_post_kill(owner, id);
		put_complete(out, "KILL");
		return ADMIN_DONE;
	}
unknown: {
	char message[300];

	snprintf(message, sizeof(message), "unrecognized admin command \"%.200s\"; SHOW HELP lists the commands", sql);
	admin_error(out, SQLSTATE_SYNTAX_ERROR, message);
	return ADMIN_DONE;
}
}

/* Is sql a command the main thread answers (it must run once, at Execute)? */
static bool admin_is_async(const char *sql)
{
	char w[32];
	const char *p = sql;

	if (!next_word(&p, w, sizeof(w)))
		return false;
	return strcmp(w, "RELOAD") == 0 || strcmp(w, "SHUTDOWN") == 0 || strcmp(w, "CUTOVER") == 0;
}

/* -------------------------------------------------------------- protocol */

/* Finish the login of an authenticated admin client (ParameterStatus, ReadyForQuery). */
static void admin_login(struct client *c)
{
	const char *app = proto_startup_get(&c->startup, "application_name");

	c->admin_session = xcalloc(1, sizeof(*c->admin_session));
	iobuf_init(&c->admin_session->described);
	/* Decided once, at login: a reload that moves the user takes effect on its next session. */
	c->admin_session->look_only = !config_is_admin(config_current(), c->startup.user);
	proto_put_parameter_status(&c->io.out, "server_version", "15.0 (pgmux " PACKAGE_VERSION ")");
	proto_put_parameter_status(&c->io.out, "server_encoding", "UTF8");
	proto_put_parameter_status(&c->io.out, "client_encoding", "UTF8");
	proto_put_parameter_status(&c->io.out, "DateStyle", "ISO, MDY");
	proto_put_parameter_status(&c->io.out, "integer_datetimes", "on");
	proto_put_parameter_status(&c->io.out, "standard_conforming_strings", "on");
	proto_put_parameter_status(&c->io.out, "application_name", app ? app : "");
	proto_put_backend_key(&c->io.out, c->cancel.pid, c->cancel.key);
	proto_put_ready(&c->io.out, 'I');
	c->logged_in = true;
	log_client(LOG_LEVEL_INFO, c, "admin console session opened%s",
		   c->admin_session->look_only ? " (stats_users: SHOW commands only)" : "");
}

/* Run the commands of a simple Query one by one; stops at one the main thread must answer. */
static void admin_run_simple(struct client *c, const char *text)
{
	struct admin_session *a = c->admin_session;
	char *copy = xstrdup(text);
	char *rest = copy;

	for (;;) {
		char *end = strchr(rest, ';');
		char *next = end ? end + 1 : NULL;
		bool blank;

		if (end)
			*end = '\0';
		blank = strspn(rest, " \t\r\n") == strlen(rest);
		a->extended = false;
		if (!blank && admin_run(c, rest, &c->io.out) == ADMIN_ASYNC) {
			a->waiting = true;
			a->waiting_extended = false;
			a->rest = next ? xstrdup(next) : NULL;
			free(copy);
			return;
		}
		if (next == NULL)
			break;
		rest = next;
	}
	free(copy);
	proto_put_ready(&c->io.out, 'I');
}

/* Split a result into its RowDescription (if any) and the rest. */
static void admin_split_result(struct iobuf *result, struct iobuf *head, struct iobuf *rest)
{
	const uint8_t *p = iobuf_head(result);
	size_t len = iobuf_len(result);

	if (len >= PROTO_HEADER_LEN && p[0] == BE_ROW_DESCRIPTION) {
		size_t first = 1 + get_u32(p + 1);

		iobuf_append(head, p, first);
		iobuf_append(rest, p + first, len - first);
	} else {
		iobuf_append(rest, p, len);
	}
}

static void admin_extended_error(struct client *c, const char *message)
{
	admin_error(&c->io.out, SQLSTATE_PROTOCOL_VIOLATION, message);
	c->admin_session->discard_until_sync = true;
}

/* One extended-protocol message. Returns false while waiting for the main thread. */
static bool admin_extended(struct client *c, uint8_t type, const uint8_t *body, size_t len)
{
	struct admin_session *a = c->admin_session;
	struct msg_reader r;
	struct iobuf result, head, rest;
	const char *s;

	a->extended = true;
	if (a->discard_until_sync && type != FE_SYNC)
		return true;
	msg_reader_init(&r, body, len);
	switch (type) {
	case FE_PARSE:
		if (msg_read_str(&r) == NULL || (s = msg_read_str(&r)) == NULL) {
			admin_extended_error(c, "malformed Parse message");
			break;
		}
		free(a->statement);
		a->statement = xstrdup(s);
		iobuf_append_u8(&c->io.out, '1');
		iobuf_append_u32(&c->io.out, 4);
		break;
	case FE_BIND:
		free(a->portal);
		a->portal = xstrdup(a->statement ? a->statement : "");
		iobuf_reset(&a->described);
		a->have_described = false;
		iobuf_append_u8(&c->io.out, '2');
		iobuf_append_u32(&c->io.out, 4);
		break;
	case FE_DESCRIBE: {
		uint8_t kind = 0;

		msg_read_u8(&r, &kind);
		if (kind == 'S') {
			/* No parameters; the row shape is known once it runs. */
			size_t begin = proto_begin(&c->io.out, 't');

			iobuf_append_u16(&c->io.out, 0);
			proto_end(&c->io.out, begin);
			iobuf_append_u8(&c->io.out, 'n');
			iobuf_append_u32(&c->io.out, 4);
			break;
		}
		if (a->portal == NULL || admin_is_async(a->portal)) {
			/* Commands the main thread answers return no rows; they run at Execute. */
			iobuf_append_u8(&c->io.out, 'n');
			iobuf_append_u32(&c->io.out, 4);
			break;
		}
		iobuf_init(&result);
		iobuf_init(&head);
		admin_run(c, a->portal, &result);
		admin_split_result(&result, &head, &a->described);
		a->have_described = true;
		/* Out of memory: what is sent would lack part of it, so nothing is (see iobuf.h). */
		c->io.out.failed |= result.failed || head.failed || a->described.failed;
		if (iobuf_len(&head))
			iobuf_append(&c->io.out, iobuf_head(&head), iobuf_len(&head));
		else if (iobuf_len(&a->described) && iobuf_head(&a->described)[0] == BE_ERROR_RESPONSE) {
			iobuf_append(&c->io.out, iobuf_head(&a->described), iobuf_len(&a->described));
			iobuf_reset(&a->described);
			a->discard_until_sync = true;
		} else {
			iobuf_append_u8(&c->io.out, 'n');
			iobuf_append_u32(&c->io.out, 4);
		}
		iobuf_free(&result);
		iobuf_free(&head);
		break;
	}
	case FE_EXECUTE:
		if (a->have_described) {
			iobuf_append(&c->io.out, iobuf_head(&a->described), iobuf_len(&a->described));
			iobuf_reset(&a->described);
			a->have_described = false;
			break;
		}
		iobuf_init(&result);
		iobuf_init(&head);
		iobuf_init(&rest);
		if (admin_run(c, a->portal ? a->portal : "", &result) == ADMIN_ASYNC) {
			a->waiting = true;
			a->waiting_extended = true;
			iobuf_free(&result);
			iobuf_free(&head);
			iobuf_free(&rest);
			return false;
		}
		/* Execute sends no RowDescription of its own. */
		admin_split_result(&result, &head, &rest);
		c->io.out.failed |= result.failed || head.failed || rest.failed || a->described.failed;
		iobuf_append(&c->io.out, iobuf_head(&rest), iobuf_len(&rest));
		if (iobuf_len(&rest) && iobuf_head(&rest)[0] == BE_ERROR_RESPONSE)
			a->discard_until_sync = true;
		iobuf_free(&result);
		iobuf_free(&head);
		iobuf_free(&rest);
		break;
	case FE_CLOSE:
		iobuf_append_u8(&c->io.out, '3');
		iobuf_append_u32(&c->io.out, 4);
		break;
	case FE_SYNC:
		a->discard_until_sync = false;
		proto_put_ready(&c->io.out, 'I');
		break;
	case FE_FLUSH:
		break;
	default:
		admin_extended_error(c, "the admin console does not support this message");
		break;
	}
	return true;
}

/* Act on the admin client's buffered messages. Returns false if c was closed. */
static bool admin_process_input(struct client *c)
{
	struct admin_session *a = c->admin_session;
	struct iobuf *in = &c->io.in;

	while (!a->waiting && iobuf_len(in) >= PROTO_HEADER_LEN) {
		const uint8_t *p = iobuf_head(in);
		uint8_t type = p[0];
		uint32_t mlen = get_u32(p + 1);
		uint8_t *body;

		if (!proto_valid_frontend_type(type) || mlen < 4 || mlen > 1024 * 1024) {
			client_fatal(c, SQLSTATE_PROTOCOL_VIOLATION, "invalid frontend message");
			return false;
		}
		if (iobuf_len(in) < 1 + (size_t)mlen)
			break;
		if (type == FE_TERMINATE) {
			client_close(c, "admin session ended");
			return false;
		}
		/* Copy out first: the message buffer may move while results are written. */
		body = malloc(mlen);
		if (body == NULL) {
			client_fatal(c, SQLSTATE_OUT_OF_MEMORY, "out of memory");
			return false;
		}
		memcpy(body, p + PROTO_HEADER_LEN, mlen - 4);
		body[mlen - 4] = '\0';
		iobuf_consume(in, 1 + (size_t)mlen);
		if (type == FE_QUERY)
			admin_run_simple(c, (const char *)body);
		else
			admin_extended(c, type, body, mlen - 4);
		free(body);
	}
	client_flush(c);
	return c->state != CLIENT_CLOSED;
}

void admin_reply(struct client *c, bool ok, const char *text)
{
	struct admin_session *a = c->admin_session;
	char *rest;

	if (a == NULL || !a->waiting)
		return;
	a->waiting = false;
	if (ok)
		put_complete(&c->io.out, text);
	else
		admin_error(&c->io.out, SQLSTATE_INTERNAL_ERROR, text);
	if (a->waiting_extended) {
		a->waiting_extended = false;
		if (!ok)
			a->discard_until_sync = true;
	} else {
		rest = a->rest;
		a->rest = NULL;
		if (rest) {
			admin_run_simple(c, rest);
			free(rest);
		} else {
			proto_put_ready(&c->io.out, 'I');
		}
	}
	client_flush(c);
	if (c->state != CLIENT_CLOSED)
		admin_process_input(c);
}

static void admin_session_free(struct client *c)
{
	struct admin_session *a = c->admin_session;

	if (a == NULL)
		return;
	free(a->rest);
	free(a->statement);
	free(a->portal);
	iobuf_free(&a->described);
	free(a);
	c->admin_session = NULL;
}

const struct client_console admin_console = {
	.login = admin_login,
	.process_input = admin_process_input,
	.session_free = admin_session_free,
};
