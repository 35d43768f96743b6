/*
 * test_spread_edges.c: what else must hold for a client that moved between
 * workers (worker_spread_percent, client_move()), beyond test_spread.c: the
 * janitor of the worker it moved to closes it on idle_client_timeout and
 * spares it while it works; a reload to worker_spread_percent = 0 deals new
 * clients to every worker in turn and moves nobody any more, sessions
 * keeping their state; many moves leave the pool's accounting exact; and a
 * cutover to another PostgreSQL while clients run write transactions and
 * move loses or misplaces none of them.
 *
 * Spreading is forced with worker_spread_percent = 1 and gathering with 100,
 * by reload, as in test_spread.c (harness_spread.h); every wait polls.
 */
#include "harness_cutover.h"
#include "harness_spread.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct pgmux px;
static struct pgmux_options opts;
static struct h_pg pgb;     /* the cutover's new server, B */
static bool cut_db_created; /* .fini drops CUT_DB on the suite's server A */

#define CUT_DB "spread_cut"

static void fini(void)
{
	pgmux_kill(&px);
	h_pg_stop(&pgb);
	h_teardown();
	if (cut_db_created) {
		PGconn *su = h_connect_super_direct();
		PGresult *r = PQexec(su, "DROP DATABASE IF EXISTS " CUT_DB " WITH (FORCE)");
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			fprintf(stderr, "cleanup: dropping database %s failed: %s", CUT_DB, PQerrorMessage(su));
		PQclear(r);
		PQfinish(su);
		cut_db_created = false;
	}
}

TestSuite(spread_edges, .fini = fini, .timeout = 120);

/* Two workers with transaction pooling over max_connections backends, the admin console, spread as given. */
static void start(int max_connections, int spread, const char *extra_pgmux)
{
	h_spread_start(&px, &opts, "transaction", max_connections, spread, extra_pgmux);
}

/* worker_spread_percent = spread, by SIGHUP (waits for the reload's log line). */
static void set_spread(int spread)
{
	opts.worker_spread_percent = spread;
	pgmux_reload(&px, &opts);
}

/*
 * Rounds of one statement on each of conns (sent_ms[i]: when conns[i] last
 * sent one) until at least want of them are on worker 1.
 */
static void spread_until(PGconn *admin, PGconn *const *conns, int n, long long *sent_ms, int want)
{
	long long deadline = h_now_ms() + h_scaled_ms(15000);

	for (int round = 0;; round++) {
		for (int i = 0; i < n; i++) {
			sent_ms[i] = h_now_ms();
			h_expect_value(conns[i], "select 1", "1");
		}
		if (round % 4 != 3)
			continue;
		int on_1 = 0;
		for (int i = 0; i < n; i++)
			on_1 += h_worker_of(admin, conns[i]) == 1;
		if (on_1 >= want)
			return;
		if (h_now_ms() > deadline)
			h_dump_current_logs();
		cr_assert_leq(h_now_ms(), deadline, "only %d of %d clients reached worker 1 within %d ms", on_1, n,
			      h_scaled_ms(15000));
	}
}

/* ================================================================ idle_client_timeout on the new worker */

#define IDLE_TIMEOUT_MS 2000
#define IDLE_CLIENTS 8

/*
 * Clients spread over worker 1, then worker_spread_percent = 0 keeps each
 * where it is. Of those on worker 1, I sends nothing more: worker 1's
 * janitor (once a second) closes it with FATAL 57P05 between 2 and about
 * 3 s after its last statement. K, also on worker 1, sends a statement every
 * second and B one all the time: neither is closed, and K stays on worker 1.
 */
Test(spread_edges, idle_client_timeout_after_a_move)
{
	start(2, 100, "idle_client_timeout = 2s");
	PGconn *admin = h_admin_session(&px);
	PGconn *c[IDLE_CLIENTS];
	long long sent_ms[IDLE_CLIENTS];

	for (int i = 0; i < IDLE_CLIENTS; i++)
		c[i] = h_app_session(&px, "disable", NULL);
	set_spread(1);
	spread_until(admin, c, IDLE_CLIENTS, sent_ms, 2);
	set_spread(0);

	int idle = -1, keep = -1, busy = -1;
	for (int i = 0; i < IDLE_CLIENTS; i++) {
		int w = h_worker_of(admin, c[i]);
		if (w == 1 && idle < 0)
			idle = i;
		else if (w == 1 && keep < 0)
			keep = i;
		else if (busy < 0)
			busy = i;
	}
	cr_assert(idle >= 0 && keep >= 0 && busy >= 0, "fewer than two clients on worker 1 after the reload");
	for (int i = 0; i < IDLE_CLIENTS; i++)
		if (i != idle && i != keep && i != busy) {
			PQfinish(c[i]);
			c[i] = NULL;
		}
	struct h_notices notices = {0};
	PQsetNoticeReceiver(c[idle], h_record_notices, &notices);
	char *idle_id = h_client_cell(admin, c[idle], "id");
	cr_assert_not_null(idle_id);

	/* B works all along, K once a second (and the admin session with it); until I is closed, and 4.5 s at least. */
	long long started = h_now_ms(), hold_until = started + h_scaled_ms(4500);
	long long give_up = sent_ms[idle] + h_scaled_ms(IDLE_TIMEOUT_MS + 1000 + 1500), closed_at = -1, keep_next = 0;
	int keep_statements = 0;
	while (closed_at < 0 || h_now_ms() < hold_until) {
		h_expect_value(c[busy], "select 'busy'", "busy");
		if (h_now_ms() >= keep_next) {
			h_expect_value(c[keep], "select 'kept'", "kept");
			keep_statements++;
			keep_next = h_now_ms() + 1000;
			cr_expect_eq(h_worker_of(admin, c[keep]), 1, "K left worker 1 with worker_spread_percent = 0");
		}
		struct pollfd pfd = {.fd = PQsocket(c[idle]), .events = POLLIN};
		if (closed_at < 0 && poll(&pfd, 1, 20) == 1)
			closed_at = h_now_ms();
		if (closed_at < 0 && h_now_ms() > give_up)
			h_dump_current_logs();
		cr_assert(closed_at >= 0 || h_now_ms() <= give_up, "the idle client on worker 1 was not closed within %lld ms",
			  h_now_ms() - sent_ms[idle]);
		if (closed_at >= 0)
			h_sleep_ms(20);
	}
	long long after = closed_at - sent_ms[idle];
	cr_log_info("the idle client was closed %lld ms after its last statement", after);
	cr_expect_geq(after, IDLE_TIMEOUT_MS, "closed %lld ms after its last statement, before idle_client_timeout",
		      after);
	cr_expect_leq(after, h_scaled_ms(IDLE_TIMEOUT_MS + 1000 + 500), "closed only %lld ms after its last statement",
		      after);

	/* The FATAL it got (libpq hands one that comes while idle to the notice receiver). */
	PQconsumeInput(c[idle]);
	PGresult *r = PQexec(c[idle], "select 1");
	cr_expect_neq(PQresultStatus(r), PGRES_TUPLES_OK, "the idle client still works after its timeout");
	PQclear(r);
	cr_expect_eq(PQstatus(c[idle]), CONNECTION_BAD);
	cr_expect_str_eq(notices.fatal_sqlstate, "57P05", "notices: \"%s\"; error: \"%s\"", notices.text,
			 PQerrorMessage(c[idle]));
	cr_expect(strstr(notices.text, "terminating connection due to idle_client_timeout (2 s)") != NULL,
		  "notices: \"%s\"", notices.text);
	char *still = h_admin_cell(admin, "SHOW CLIENTS", "id", idle_id, "id");
	cr_expect_null(still, "SHOW CLIENTS still lists the idle client %s", idle_id);
	free(still);
	free(idle_id);

	/* K, on worker 1 longer than the timeout, and B are unharmed. */
	cr_expect_geq(keep_statements, 4);
	h_expect_value(c[keep], "select 'still kept'", "still kept");
	h_expect_value(c[busy], "select 'still busy'", "still busy");
	cr_expect_eq(h_worker_of(admin, c[keep]), 1);
	PQfinish(c[idle]);
	PQfinish(c[keep]);
	PQfinish(c[busy]);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ worker_spread_percent = 0 by reload */

#define OLD_CLIENTS 6

/* Client i's session state: a setting and a prepared statement that reads it. */
static void give_state(PGconn *conn, int i)
{
	char sql[80];
	snprintf(sql, sizeof(sql), "set spread.tag = 'client%d'", i);
	h_exec_ok(conn, sql);
	h_prepare_ok(conn, "tagged", "select $1::text || current_setting('spread.tag')");
}

static void expect_state(PGconn *conn, int i)
{
	char want[32];
	snprintf(want, sizeof(want), "client%d", i);
	h_expect_value(conn, "show spread.tag", want);
	char *v = h_prepared_value_ok(conn, "tagged", "is ");
	snprintf(want, sizeof(want), "is client%d", i);
	cr_expect_str_eq(v, want, "client %d's prepared statement", i);
	free(v);
}

/*
 * Right after a reload to worker_spread_percent = 0 (pgmux_reload() waits
 * for "configuration reloaded"): both workers take clients, new ones go to
 * each in turn, and over 360 transactions nobody moves; the old sessions
 * keep their settings and prepared statements. spread says whether the old
 * ones were spread over both workers first, or all on worker 0.
 */
static void reload_to_zero(bool spread)
{
	start(4, 100, NULL);
	PGconn *admin = h_admin_session(&px);
	PGconn *old[OLD_CLIENTS], *fresh[OLD_CLIENTS];
	long long sent_ms[OLD_CLIENTS];
	int old_on[OLD_CLIENTS], fresh_on[OLD_CLIENTS];

	for (int i = 0; i < OLD_CLIENTS; i++) {
		old[i] = h_app_session(&px, "disable", NULL);
		give_state(old[i], i);
	}
	if (spread) {
		set_spread(1);
		spread_until(admin, old, OLD_CLIENTS, sent_ms, 2);
		cr_assert_gt(h_admin_stat(admin, "clients_moved_between_workers"), 0);
	} else {
		cr_assert_eq(h_placement_of(admin, "postgres").on[0], OLD_CLIENTS);
		cr_assert_eq(h_admin_stat(admin, "workers_taking_clients"), 1);
	}

	set_spread(0);
	cr_expect_eq(h_admin_stat(admin, "workers_taking_clients"), 2,
		     "SHOW STATS workers_taking_clients right after the reload to worker_spread_percent = 0");
	long long moved = h_admin_stat(admin, "clients_moved_between_workers");
	for (int i = 0; i < OLD_CLIENTS; i++) {
		old_on[i] = h_worker_of(admin, old[i]);
		expect_state(old[i], i);
	}
	/* New clients: each worker in turn. */
	for (int i = 0; i < OLD_CLIENTS; i++) {
		fresh[i] = h_app_session(&px, i % 2 ? "require" : "disable", NULL);
		fresh_on[i] = h_worker_of(admin, fresh[i]);
		cr_expect(fresh_on[i] == 0 || fresh_on[i] == 1, "new client %d on worker %d", i, fresh_on[i]);
		if (i > 0)
			cr_expect_neq(fresh_on[i], fresh_on[i - 1], "new clients %d and %d both went to worker %d", i - 1, i,
				      fresh_on[i]);
	}
	/* 360 transactions, the old sessions' state checked as they go: nobody moves. */
	for (int round = 0; round < 30; round++) {
		h_one_round(old, OLD_CLIENTS);
		h_one_round(fresh, OLD_CLIENTS);
		if (round % 10 == 9)
			for (int i = 0; i < OLD_CLIENTS; i++)
				expect_state(old[i], i);
	}
	cr_expect_eq(h_admin_stat(admin, "clients_moved_between_workers"), moved,
		     "clients moved with worker_spread_percent = 0");
	cr_expect_eq(h_admin_stat(admin, "workers_taking_clients"), 2);
	for (int i = 0; i < OLD_CLIENTS; i++) {
		cr_expect_eq(h_worker_of(admin, old[i]), old_on[i], "old client %d moved", i);
		cr_expect_eq(h_worker_of(admin, fresh[i]), fresh_on[i], "new client %d moved", i);
	}
	h_close_all(old, OLD_CLIENTS);
	h_close_all(fresh, OLD_CLIENTS);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(spread_edges, reload_to_zero_deals_in_turn_and_moves_nobody)
{
	reload_to_zero(true);
}

Test(spread_edges, reload_to_zero_while_gathered)
{
	reload_to_zero(false);
}

/* ================================================================ the pool after many moves */

#define MANY 104

/* The app's backends as SHOW POOLS counts them (database postgres, both endpoints). */
struct pool_counts {
	long long waiting, active, idle, connecting, total;
};

static struct pool_counts app_pool_counts(PGconn *admin)
{
	struct pool_counts pc = {0};
	PGresult *r = h_rows_ok(admin, "SHOW POOLS");
	int db = PQfnumber(r, "database"), user = PQfnumber(r, "user");

	for (int i = 0; i < PQntuples(r); i++) {
		if (strcmp(PQgetvalue(r, i, db), "postgres") != 0 || strcmp(PQgetvalue(r, i, user), h_env()->appuser) != 0)
			continue;
		pc.waiting += atoll(PQgetvalue(r, i, PQfnumber(r, "cl_waiting")));
		pc.active += atoll(PQgetvalue(r, i, PQfnumber(r, "sv_active")));
		pc.idle += atoll(PQgetvalue(r, i, PQfnumber(r, "sv_idle")));
		pc.connecting += atoll(PQgetvalue(r, i, PQfnumber(r, "sv_connecting")));
		pc.total += atoll(PQgetvalue(r, i, PQfnumber(r, "sv_total")));
	}
	PQclear(r);
	return pc;
}

struct settled {
	PGconn *admin, *super;
	struct pool_counts pc;
	int backends;
};

/* Nothing in flight: every backend SHOW POOLS counts is idle, and PostgreSQL has exactly those. */
static bool pool_settled(void *arg)
{
	struct settled *st = arg;

	st->pc = app_pool_counts(st->admin);
	st->backends = h_app_backends(st->super);
	return st->pc.waiting == 0 && st->pc.active == 0 && st->pc.connecting == 0 && st->pc.idle == st->pc.total &&
	       st->pc.total == st->backends;
}

/*
 * 104 clients spread over worker 1 and gather back, again and again, until
 * more than 200 moves; then, idle, the pool adds up: SHOW POOLS counts as
 * many backends as PostgreSQL has for the app (no more than
 * max_connections), SHOW SERVERS lists exactly those backends, none held
 * for a client, and every client still works.
 */
Test(spread_edges, pool_adds_up_after_many_moves)
{
	start(4, 100, NULL);
	PGconn *admin = h_admin_session(&px);
	PGconn *super = h_connect_super_direct();
	PGconn *c[MANY];

	for (int i = 0; i < MANY; i++)
		c[i] = h_app_session(&px, "disable", NULL);
	long long moved_from = h_admin_stat(admin, "clients_moved_between_workers"), moved = 0;
	int cycles = 0;
	for (; cycles < 8 && moved < 200; cycles++) {
		set_spread(1);
		long long deadline = h_now_ms() + h_scaled_ms(15000);
		while (h_placement_of(admin, "postgres").on[1] < MANY / 4) {
			cr_assert_lt(h_now_ms(), deadline, "cycle %d: the clients did not spread", cycles);
			for (int round = 0; round < 4; round++)
				h_one_round(c, MANY);
		}
		set_spread(100);
		deadline = h_now_ms() + h_scaled_ms(15000);
		while (h_placement_of(admin, "postgres").on[1] > 0) {
			cr_assert_lt(h_now_ms(), deadline, "cycle %d: the clients did not gather", cycles);
			h_one_round(c, MANY);
			h_sleep_ms(h_gather_pause_ms());
		}
		moved = h_admin_stat(admin, "clients_moved_between_workers") - moved_from;
	}
	cr_log_info("%lld moves in %d spreads and gatherings of %d clients", moved, cycles, MANY);
	cr_assert_geq(moved, 200, "only %lld moves in %d cycles", moved, cycles);

	struct settled st = {.admin = admin, .super = super};
	bool settled = h_poll_until(pool_settled, &st, h_scaled_ms(5000));
	cr_assert(settled, "SHOW POOLS: %lld waiting, %lld active, %lld idle, %lld connecting, %lld in all; PostgreSQL: %d",
		  st.pc.waiting, st.pc.active, st.pc.idle, st.pc.connecting, st.pc.total, st.backends);
	cr_expect_leq(st.backends, 4, "%d backends for max_connections = 4", st.backends);
	cr_expect_gt(st.backends, 0);

	/* SHOW SERVERS: PostgreSQL's backends of the app, each once, none held for a client. */
	PGresult *servers = h_rows_ok(admin, "SHOW SERVERS");
	int listed = 0;
	for (int i = 0; i < PQntuples(servers); i++) {
		if (strcmp(PQgetvalue(servers, i, PQfnumber(servers, "database")), "postgres") != 0)
			continue;
		listed++;
		const char *pid = PQgetvalue(servers, i, PQfnumber(servers, "backend_pid"));
		char sql[300];
		snprintf(sql, sizeof(sql), H_APP_BACKENDS_SQL " and pid = %s", pid);
		cr_expect_eq(h_number_ok(super, sql), 1, "SHOW SERVERS lists backend %s, which PostgreSQL does not have",
			     pid);
		cr_expect_str_eq(PQgetvalue(servers, i, PQfnumber(servers, "client_id")), "0",
				 "backend %s is held for a client while all are idle", pid);
	}
	PQclear(servers);
	cr_expect_eq(listed, st.backends, "SHOW SERVERS lists %d backends, PostgreSQL has %d", listed, st.backends);

	h_one_round(c, MANY);
	h_close_all(c, MANY);
	PQfinish(super);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ a cutover while clients move */

/*
 * Six, with the admin session seven on worker 0: the balancer's quota there
 * (the excess over a fair share of four, more than one over it) still
 * allows a second move after the first, whichever tick it comes in.
 */
#define WRITERS 6
#define MAX_TXNS 100000
/*
 * Light traffic while the writers gather; their pauses differ (20 to 220
 * ms), so that they end transactions, and move, at different times.
 */
#define GATHER_PACE_MS 20

/* A client that runs write transactions on a thread of its own (no criterion assertion there). */
struct writer {
	pthread_t thread;
	PGconn *conn;
	int id;
	atomic_bool *stop;
	atomic_int *pace_ms; /* a pause after each transaction (0: none), 40 ms longer for each id */
	atomic_int n; /* committed transactions; the arrays below up to n are the main thread's to read */
	int port[MAX_TXNS];
	long long began_ms[MAX_TXNS], committed_ms[MAX_TXNS];
	char error[512]; /* the first failure, which ends the thread */
	bool seen_on[2][2]; /* [before / after the cutover][worker] in SHOW CLIENTS */
};

static struct writer writers[WRITERS];

static bool writer_step(struct writer *w, const char *sql, ExecStatusType want, char **value)
{
	PGresult *r = PQexec(w->conn, sql);
	bool ok = PQresultStatus(r) == want;

	if (!ok)
		snprintf(w->error, sizeof(w->error), "%s: %s", sql, PQresultErrorMessage(r));
	else if (value)
		*value = strdup(PQgetvalue(r, 0, 0));
	PQclear(r);
	return ok;
}

/* BEGIN; INSERT (the server's port back); UPDATE; COMMIT, each statement a round trip, until told to stop. */
static void *writer_run(void *arg)
{
	struct writer *w = arg;
	char insert[200], update[120];

	snprintf(update, sizeof(update), "UPDATE totals SET n = n + 1 WHERE client = %d", w->id);
	for (int seq = 0; seq < MAX_TXNS && !atomic_load(w->stop); seq++) {
		char *port = NULL;
		long long began = h_now_ms();
		snprintf(insert, sizeof(insert),
			 "INSERT INTO items (client, seq) VALUES (%d, %d) RETURNING inet_server_port()", w->id, seq);
		if (!writer_step(w, "BEGIN", PGRES_COMMAND_OK, NULL) ||
		    !writer_step(w, insert, PGRES_TUPLES_OK, &port) || !writer_step(w, update, PGRES_COMMAND_OK, NULL) ||
		    !writer_step(w, "COMMIT", PGRES_COMMAND_OK, NULL)) {
			free(port);
			break;
		}
		w->port[seq] = atoi(port);
		w->began_ms[seq] = began;
		w->committed_ms[seq] = h_now_ms();
		free(port);
		atomic_store(&w->n, seq + 1);
		int pace = atomic_load(w->pace_ms);
		if (pace > 0)
			h_sleep_ms(pace + 40 * w->id);
	}
	return NULL;
}

/* CUT_DB with items and totals (a row per writer), owned by app, on the server at port. */
static void make_cut_db(int port, bool make_role)
{
	const struct h_env *e = h_env();
	PGconn *su = h_connect_super_port(port, "postgres");
	char sql[400];

	PQsetNoticeReceiver(su, h_ignore_notices, NULL);
	h_exec_ok(su, "DROP DATABASE IF EXISTS " CUT_DB " WITH (FORCE)");
	if (make_role) {
		snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN PASSWORD '%s'", e->appuser, e->apppass);
		h_exec_ok(su, sql);
	}
	snprintf(sql, sizeof(sql), "CREATE DATABASE " CUT_DB " OWNER %s", e->appuser);
	h_exec_ok(su, sql);
	PQfinish(su);
	snprintf(sql, sizeof(sql),
		 "CREATE TABLE items (client int, seq int, PRIMARY KEY (client, seq)); "
		 "CREATE TABLE totals (client int PRIMARY KEY, n int NOT NULL); "
		 "INSERT INTO totals SELECT g, 0 FROM generate_series(0, %d) g; "
		 "ALTER TABLE items OWNER TO %s; ALTER TABLE totals OWNER TO %s",
		 WRITERS - 1, e->appuser, e->appuser);
	h_exec_on(port, CUT_DB, sql);
}

/* Note the worker of each writer, as SHOW CLIENTS gives it (after: the cutover began). */
static void note_writers(PGconn *admin, bool after)
{
	for (int i = 0; i < WRITERS; i++) {
		int w = h_worker_of(admin, writers[i].conn);
		if (w == 0 || w == 1)
			writers[i].seen_on[after][w] = true;
	}
}

/* Until cond(arg) or timeout_ms (scaled), noting every 50 ms the worker of each writer. */
static bool watch_writers(PGconn *admin, bool after, bool (*cond)(void *), void *arg, int timeout_ms)
{
	long long deadline = h_now_ms() + h_scaled_ms(timeout_ms);

	for (;;) {
		note_writers(admin, after);
		if (cond(arg)) {
			/* The moves that met it may have come after the look above: look once more. */
			note_writers(admin, after);
			return true;
		}
		for (int i = 0; i < WRITERS; i++)
			if (writers[i].error[0])
				return false;
		if (h_now_ms() > deadline)
			return false;
		h_sleep_ms(50);
	}
}

struct progress {
	PGconn *admin;
	long long moves_from; /* SHOW STATS clients_moved_between_workers to count from */
	int min_moves;
	int txns_from[WRITERS]; /* each writer's count to count from */
	int min_txns;
};

static void progress_from_now(struct progress *p, PGconn *admin, int min_moves, int min_txns)
{
	p->admin = admin;
	p->moves_from = h_admin_stat(admin, "clients_moved_between_workers");
	p->min_moves = min_moves;
	for (int i = 0; i < WRITERS; i++)
		p->txns_from[i] = atomic_load(&writers[i].n);
	p->min_txns = min_txns;
}

static bool progressed(void *arg)
{
	struct progress *p = arg;

	for (int i = 0; i < WRITERS; i++)
		if (atomic_load(&writers[i].n) - p->txns_from[i] < p->min_txns)
			return false;
	return h_admin_stat(p->admin, "clients_moved_between_workers") - p->moves_from >= p->min_moves;
}

/* Some writer was seen on worker 1 since the cutover began. */
static bool some_writer_seen_on_1_after(void *arg)
{
	(void)arg;
	for (int i = 0; i < WRITERS; i++)
		if (writers[i].seen_on[1][1])
			return true;
	return false;
}

/* Every writer is on worker 0 (arg: the admin session). */
static bool all_on_worker_0(void *arg)
{
	for (int i = 0; i < WRITERS; i++)
		if (h_worker_of(arg, writers[i].conn) != 0)
			return false;
	return true;
}

/* Why progressed() did not come true: to stderr. */
static void report_progress(PGconn *admin, const struct progress *p)
{
	PGresult *r = h_rows_ok(admin, "SHOW CLIENTS");
	for (int i = 0; i < PQntuples(r); i++)
		fprintf(stderr, "client %s %s/%s worker %s state %s pinned '%s'\n", PQgetvalue(r, i, 0),
			PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, PQfnumber(r, "worker")),
			PQgetvalue(r, i, PQfnumber(r, "state")), PQgetvalue(r, i, PQfnumber(r, "pinned")));
	PQclear(r);
	for (int i = 0; i < WRITERS; i++)
		fprintf(stderr, "writer %d: %d transactions since\n", i, atomic_load(&writers[i].n) - p->txns_from[i]);
	fprintf(stderr, "workers_taking_clients %lld, moves since %lld\n", h_admin_stat(admin, "workers_taking_clients"),
		h_admin_stat(admin, "clients_moved_between_workers") - p->moves_from);
	h_dump_current_logs();
}

/* Client id's rows on the server at port: items, distinct seqs and its total. */
static void expect_rows(int port, const char *server, int id, long long want)
{
	char sql[200];
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM items WHERE client = %d", id);
	long long items = h_number_on(port, CUT_DB, sql);
	snprintf(sql, sizeof(sql), "SELECT n FROM totals WHERE client = %d", id);
	long long total = h_number_on(port, CUT_DB, sql);
	cr_expect_eq(items, want, "writer %d: %lld rows on %s, %lld transactions committed there", id, items, server,
		     want);
	cr_expect_eq(total, want, "writer %d: total %lld on %s, %lld transactions committed there", id, total, server,
		     want);
}

/*
 * Six clients run write transactions (BEGIN; INSERT; UPDATE; COMMIT) on
 * A while they spread over worker 1; the clients are sent back to worker 0
 * (worker_spread_percent = 100) and at once CUTOVER TO B; then they spread
 * again on B. No transaction fails; one that committed before the cutover
 * began ran on A, one that began after it ended on B; each server holds
 * exactly the rows of the transactions that ran there, and the totals agree.
 */
Test(spread_edges, cutover_while_clients_move)
{
	const struct h_env *e = h_env();
	cut_db_created = true;
	make_cut_db(e->pgport, false);
	cr_assert(h_pg_start(&pgb), "the second PostgreSQL did not start");
	make_cut_db(pgb.port, true);
	char b_hostport[64];
	snprintf(b_hostport, sizeof(b_hostport), "127.0.0.1:%d", pgb.port);

	h_wait_no_app_backends();
	pgmux_options_console(&opts);
	opts.tls = false;
	opts.workers = 2;
	/* All on worker 0 first (worker 1 may start taking clients during slow logins otherwise: sanitizers). */
	opts.worker_spread_percent = 100;
	opts.extra_target = "health_check_interval = 250ms\ncutover_require_catchup = false";
	pgmux_start_ok(&px, &opts);
	PGconn *admin = h_admin_session(&px);

	atomic_bool stop = false;
	atomic_int pace_ms = 0;
	for (int i = 0; i < WRITERS; i++) {
		struct writer *w = &writers[i];
		memset(w, 0, sizeof(*w));
		w->id = i;
		w->stop = &stop;
		w->pace_ms = &pace_ms;
		w->conn = h_app_session(&px, "disable", "dbname=" CUT_DB);
		cr_assert_eq(pthread_create(&w->thread, NULL, writer_run, w), 0);
	}

	/* Spread on A, at full speed. */
	set_spread(1);
	struct progress p;
	progress_from_now(&p, admin, 2, 50);
	bool spread_on_a = watch_writers(admin, false, progressed, &p, 15000);
	long long moves_before = h_admin_stat(admin, "clients_moved_between_workers") - p.moves_from;
	if (!spread_on_a)
		report_progress(admin, &p);

	/* Gather at a lighter pace, and the cutover as soon as the first client is on its way back. */
	bool gathering = false, gathered_on_b = false, spread_on_b = false;
	long long cut_started = 0, cut_ended = 0, moves_at = 0, moves_while_cutting = 0;
	PGresult *r = NULL;
	if (spread_on_a) {
		atomic_store(&pace_ms, GATHER_PACE_MS);
		set_spread(100);
		long long from = h_admin_stat(admin, "clients_moved_between_workers");
		long long deadline = h_now_ms() + h_scaled_ms(15000);
		while (!(gathering = h_admin_stat(admin, "clients_moved_between_workers") > from) && h_now_ms() < deadline)
			h_sleep_ms(2);
	}
	if (gathering) {
		char sql[120];
		snprintf(sql, sizeof(sql), "CUTOVER TO '%s'", b_hostport);
		moves_at = h_admin_stat(admin, "clients_moved_between_workers");
		cut_started = h_now_ms();
		r = PQexec(admin, sql);
		cut_ended = h_now_ms();
	}
	if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
		/* The file's hosts follow, for the reloads to come. On B: all back on worker 0, then spread again. */
		opts.hosts = b_hostport;
		gathered_on_b = watch_writers(admin, true, all_on_worker_0, admin, 15000);
		moves_while_cutting = h_admin_stat(admin, "clients_moved_between_workers") - moves_at;
		if (gathered_on_b) {
			atomic_store(&pace_ms, 0);
			set_spread(1);
			progress_from_now(&p, admin, 2, 50);
			spread_on_b = watch_writers(admin, true, progressed, &p, 15000);
			/* Spread at 1 %, the writers that moved stay: a short stint between two looks is seen now. */
			if (spread_on_b)
				(void)watch_writers(admin, true, some_writer_seen_on_1_after, NULL, 5000);
		}
		if (!spread_on_b)
			report_progress(admin, &p);
	}
	long long moves_after = h_admin_stat(admin, "clients_moved_between_workers") - moves_at;
	atomic_store(&stop, true);
	for (int i = 0; i < WRITERS; i++)
		pthread_join(writers[i].thread, NULL);
	for (int i = 0; i < WRITERS; i++)
		if (writers[i].error[0])
			h_dump_current_logs();
	for (int i = 0; i < WRITERS; i++)
		cr_assert_eq(writers[i].error[0], '\0', "writer %d failed: %s", i, writers[i].error);
	cr_assert(spread_on_a, "no two moves and 50 transactions a writer on A within 15 s (%lld moves)", moves_before);
	cr_assert(gathering, "no client moved back to worker 0 within 15 s of worker_spread_percent = 100");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO failed: %s", PQresultErrorMessage(r));
	PQclear(r);
	cr_assert(gathered_on_b, "the writers were not all back on worker 0 within 15 s of the cutover");
	cr_assert(spread_on_b, "no two moves and 50 transactions a writer on B within 15 s");
	cr_log_info("cutover took %lld ms; %lld moves before it, %lld from its start until all were back on worker 0, "
		    "%lld from its start in all", cut_ended - cut_started, moves_before, moves_while_cutting, moves_after);

	/* Each transaction where it belongs, and each server holds exactly its own. */
	bool moved_before = false, moved_after = false;
	for (int i = 0; i < WRITERS; i++) {
		struct writer *w = &writers[i];
		int n = atomic_load(&w->n), on_a = 0, on_b = 0, after_on_b = 0;
		for (int t = 0; t < n; t++) {
			cr_assert(w->port[t] == e->pgport || w->port[t] == pgb.port, "writer %d's transaction %d ran on port %d",
				  i, t, w->port[t]);
			if (w->committed_ms[t] < cut_started)
				cr_assert_eq(w->port[t], e->pgport, "writer %d's transaction %d, committed before the cutover, ran on B", i, t);
			if (w->began_ms[t] > cut_ended) {
				cr_assert_eq(w->port[t], pgb.port, "writer %d's transaction %d, begun after the cutover, ran on A", i, t);
				after_on_b++;
			}
			on_a += w->port[t] == e->pgport;
			on_b += w->port[t] == pgb.port;
		}
		cr_log_info("writer %d: %d transactions on A, %d on B; seen on workers %d%d before, %d%d after", i, on_a, on_b,
			    w->seen_on[0][0], w->seen_on[0][1], w->seen_on[1][0], w->seen_on[1][1]);
		cr_expect_gt(on_a, 0, "writer %d committed nothing on A", i);
		cr_expect_geq(after_on_b, 50, "writer %d: %d transactions begun on B after the cutover", i, after_on_b);
		expect_rows(e->pgport, "A", i, on_a);
		expect_rows(pgb.port, "B", i, on_b);
		moved_before |= w->seen_on[0][1];
		moved_after |= w->seen_on[1][1];
		/* It still works on B. */
		char *port = h_value_ok(w->conn, "select inet_server_port()");
		cr_expect_eq(atoi(port), pgb.port, "writer %d's session runs on port %s after the cutover", i, port);
		free(port);
		PQfinish(w->conn);
	}
	cr_expect(moved_before, "no writer was seen on worker 1 before the cutover");
	cr_expect(moved_after, "no writer was seen on worker 1 after the cutover");
	cr_expect_eq(h_admin_stat(admin, "cutovers"), 1);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}
