/*
 * test_spread.c: worker_spread_percent (worker.c, client_move()): with two
 * workers pgmux serves every client on worker 0 while that one keeps up,
 * spreads them over worker 1 when it is busier than the setting, and gathers
 * them back when the load falls. A client moves only between transactions
 * (client_may_move()), and what it set up must follow it: its settings, its
 * prepared statements, its TLS session, its cancel key and its id for KILL.
 * Session-pooled, pinned, LISTENing and admin sessions never move.
 *
 * The balancer reads CPU time, which a test cannot set: it spreads with
 * worker_spread_percent = 1 (any steady traffic uses more than 1 % of a
 * CPU) and gathers with 100 (light traffic is far below the 60 % the other
 * worker must stay under). Reloads switch between the two, and every check
 * polls SHOW CLIENTS' worker column rather than waiting a fixed time. The
 * quota a worker gives away is the excess over a fair share (more than one
 * client over it), so the tests that follow particular clients keep a few
 * idle sessions on worker 0 to make room for them to leave.
 */
#include "harness_spread.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct pgmux px;
static struct pgmux_options opts;

TestSuite(spread, .fini = h_teardown, .timeout = 120);

/* Two workers, pool_mode over max_connections backends (kept while idle), the admin console, spread as given. */
static void start(const char *pool_mode, int max_connections, int spread, const char *extra_pgmux)
{
	h_spread_start(&px, &opts, pool_mode, max_connections, spread, extra_pgmux);
}

/* worker_spread_percent = spread, by SIGHUP (waits for the reload's log line). */
static void set_spread(int spread)
{
	opts.worker_spread_percent = spread;
	pgmux_reload(&px, &opts);
}

/* Every admin session (database pgmux) is on worker 0. */
static void expect_admin_sessions_on_worker_0(PGconn *admin)
{
	PGresult *r = h_rows_ok(admin, "SHOW CLIENTS");
	int db = PQfnumber(r, "database"), wk = PQfnumber(r, "worker"), seen = 0;

	for (int i = 0; i < PQntuples(r); i++) {
		if (strcmp(PQgetvalue(r, i, db), "pgmux") != 0)
			continue;
		seen++;
		cr_expect_str_eq(PQgetvalue(r, i, wk), "0", "an admin session moved to worker %s", PQgetvalue(r, i, wk));
	}
	PQclear(r);
	cr_expect_gt(seen, 0, "SHOW CLIENTS lists no admin session");
}

/* ================================================================ quiet: one worker */

/*
 * pgmux's default (75 %) with light traffic: both workers run, but only
 * worker 0 takes clients, and nothing moves.
 */
Test(spread, one_worker_while_quiet)
{
	/* The balancer reads CPU time: under valgrind eight logins keep worker 0 above 75 % (it spread, seen). */
	if (h_under_valgrind())
		cr_skip_test("under valgrind light traffic is not light");
	start("transaction", 4, -1, NULL);
	PGconn *admin = h_admin_session(&px);
	PGconn *clients[8];

	for (int i = 0; i < 8; i++)
		clients[i] = h_app_session(&px, i % 2 ? "require" : "disable", NULL);
	for (int round = 0; round < 10; round++) {
		h_one_round(clients, 8);
		h_sleep_ms(20);
	}
	/* Two balancer ticks at least, on light traffic. */
	h_sleep_ms(600);
	struct h_placement pl = h_placement_of(admin, "postgres");
	cr_expect_eq(pl.on[0], 8, "app clients on worker 0: %d of 8 (worker 1: %d)", pl.on[0], pl.on[1]);
	cr_expect_eq(pl.on[1], 0);
	cr_expect_eq(pl.elsewhere, 0);
	expect_admin_sessions_on_worker_0(admin);
	cr_expect_eq(h_admin_stat(admin, "workers_taking_clients"), 1);
	cr_expect_eq(h_admin_stat(admin, "clients_moved_between_workers"), 0);
	h_close_all(clients, 8);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ pgbench while spreading and gathering */

struct cycle_check {
	PGconn *admin;
	bool spread; /* want clients on both workers (else all on worker 0) */
	struct h_placement last;
	int pinned_seen;
};

static bool placement_reached(void *arg)
{
	struct cycle_check *cc = arg;

	cc->last = h_placement_of(cc->admin, "postgres");
	if (cc->last.pinned > cc->pinned_seen)
		cc->pinned_seen = cc->last.pinned;
	/* Spread: worker 0 gives away about half of its 18 (more than a straggler or two). */
	if (cc->spread)
		return cc->last.on[0] > 0 && cc->last.on[1] >= 4 &&
		       h_admin_stat(cc->admin, "workers_taking_clients") == 2;
	return cc->last.on[1] == 0 && cc->last.on[0] > 0 && h_admin_stat(cc->admin, "workers_taking_clients") == 1;
}

#define PGBENCH_RUNS 3

/*
 * TPC-B from pgbench in each query protocol at once (6 clients each, 18 over
 * 4 backends, at a steady rate), while the test alternates
 * worker_spread_percent between 1 and 100: each time the clients must spread
 * over both workers, then come back to worker 0. No transaction may fail,
 * and the tables must add up: one history row per transaction pgbench
 * counted, and the balances moved by exactly the deltas recorded.
 */
Test(spread, spreads_and_gathers_under_pgbench)
{
	char metrics[64];
	int metrics_port = h_free_port();
	snprintf(metrics, sizeof(metrics), "metrics_port = %d", metrics_port);
	start("transaction", 4, 1, metrics);
	PGconn *admin = h_admin_session(&px);
	PGconn *super = h_connect_super_direct();
	struct h_bank before = h_bank_totals(super);
	long long moved_before = h_admin_stat(admin, "clients_moved_between_workers");

	static const char *const modes[PGBENCH_RUNS] = {"simple", "extended", "prepared"};
	const int seconds = h_under_valgrind() ? 30 : 14;
	char duration[16], rate[16];
	snprintf(duration, sizeof(duration), "%d", seconds);
	snprintf(rate, sizeof(rate), "%d", h_under_valgrind() ? 10 : 100);
	struct h_cmd runs[PGBENCH_RUNS];
	for (int i = 0; i < PGBENCH_RUNS; i++) {
		const char *args[] = {"-n", "-M", modes[i], "-c", "6", "-j", "1", "-T", duration, "-R", rate, NULL};
		cr_assert(h_pgbench_start(&runs[i], px.port, "disable", "postgres", args), "pgbench -M %s", modes[i]);
	}
	long long started = h_now_ms(), stop_at = started + (seconds - 1) * 1000LL;

	/* Spread (it starts at 1), gather, spread... while pgbench runs, each step checked in SHOW CLIENTS. */
	struct cycle_check cc = {.admin = admin, .spread = true};
	int spreads = 0, gathers = 0;
	while (h_now_ms() < stop_at) {
		int left = (int)(stop_at - h_now_ms());
		bool reached = h_poll_until(placement_reached, &cc, left);
		if (!reached)
			break;
		if (cc.spread)
			spreads++;
		else
			gathers++;
		cr_log_info("%s after %lld ms: %d clients on worker 0, %d on worker 1", cc.spread ? "spread" : "gathered",
			    h_now_ms() - started, cc.last.on[0], cc.last.on[1]);
		cc.spread = !cc.spread;
		set_spread(cc.spread ? 1 : 100);
	}
	struct h_placement last = cc.last;

	long processed = h_pgbench_modes_wait(runs, modes, PGBENCH_RUNS);
	long long moved = h_admin_stat(admin, "clients_moved_between_workers") - moved_before;
	cr_log_info("%d spreads, %d gathers, %lld moves, %ld transactions", spreads, gathers, moved, processed);
	fprintf(stderr, "spread: %d spreads, %d gathers, %lld moves, %ld transactions\n", spreads, gathers, moved,
		processed);
	cr_assert_geq(spreads, 2, "the clients spread over both workers %d times (last: %d and %d)", spreads, last.on[0],
		      last.on[1]);
	cr_assert_geq(gathers, 2, "the clients came back to worker 0 %d times (last: %d and %d)", gathers, last.on[0],
		      last.on[1]);
	/* Each spread moves about half of the 18, each gathering all that went. */
	cr_assert_geq(moved, 4LL * (spreads + gathers), "only %lld moves in %d spreads and %d gatherings", moved, spreads,
		      gathers);
	cr_expect_eq(cc.pinned_seen, 0, "SHOW CLIENTS showed %d pinned sessions", cc.pinned_seen);
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 0);
	expect_admin_sessions_on_worker_0(admin);

	/* The metrics say the same. */
	long long active_before = h_admin_stat(admin, "workers_taking_clients");
	char *body = h_scrape(metrics_port);
	long long active_after = h_admin_stat(admin, "workers_taking_clients");
	long long active = (long long)h_sample(body, "pgmux_workers_active");
	cr_expect_eq((long long)h_sample(body, "pgmux_client_moves_total"),
		     h_admin_stat(admin, "clients_moved_between_workers"));
	/* The balancer may gather between the two readings, now that pgbench is gone. */
	cr_expect(active == active_before || active == active_after, "pgmux_workers_active %lld, SHOW STATS %lld then %lld",
		  active, active_before, active_after);
	free(body);

	struct h_bank after = h_bank_totals(super);
	h_expect_bank_adds_up(&before, &after, processed);
	for (int i = 0; i < PGBENCH_RUNS; i++)
		h_cmd_free(&runs[i]);
	PQfinish(super);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ what follows a client that moves */

/*
 * pgmux with every client on worker 0 (worker_spread_percent = 100 from the
 * start), the admin console and pad idle sessions: room in worker 0's quota
 * for the test's clients to leave once it spreads.
 */
static PGconn *start_with_pad(PGconn **pad, int n_pad)
{
	start("transaction", 2, 100, NULL);
	PGconn *admin = h_admin_session(&px);
	h_open_idle(&px, pad, n_pad);
	return admin;
}

/* X: plain, with settings of three kinds and a prepared statement. */
static PGconn *client_x(void)
{
	PGconn *x = h_app_session(&px, "disable", "application_name=spread_x");
	h_exec_ok(x, "set statement_timeout = '12345ms'");
	h_exec_ok(x, "set spread.flavour = 'mint'");
	h_prepare_ok(x, "doubled", "select $1::int * 2");
	return x;
}

static void expect_x_state(PGconn *x, const char *where)
{
	h_expect_value(x, "show application_name", "spread_x");
	h_expect_value(x, "show statement_timeout", "12345ms");
	h_expect_value(x, "select current_setting('spread.flavour')", "mint");
	char *v = h_prepared_value_ok(x, "doubled", "21");
	cr_expect_str_eq(v, "42", "X's prepared statement on %s", where);
	free(v);
}

/* T: over TLS, with a setting and a prepared statement. */
static PGconn *client_t(void)
{
	PGconn *t = h_app_session(&px, "require", NULL);
	cr_assert(PQsslInUse(t), "T is not using TLS");
	h_exec_ok(t, "set spread.who = 'tls'");
	h_prepare_ok(t, "shout", "select upper($1::text)");
	return t;
}

static void expect_t_state(PGconn *admin, PGconn *t, const char *where)
{
	h_expect_value(t, "select current_setting('spread.who')", "tls");
	char *v = h_prepared_value_ok(t, "shout", "quiet");
	cr_expect_str_eq(v, "QUIET", "T's prepared statement on %s", where);
	free(v);
	v = h_client_cell(admin, t, "tls");
	cr_expect_str_eq(v ? v : "(not listed)", "yes", "T's TLS on %s", where);
	free(v);
	cr_assert(PQsslInUse(t));
}

#define PAD 6

Test(spread, session_state_follows_the_client)
{
	PGconn *pad[PAD];
	PGconn *admin = start_with_pad(pad, PAD);
	PGconn *x = client_x(), *t = client_t();
	PGconn *both[2] = {x, t};

	cr_assert_eq(h_worker_of(admin, x), 0);
	cr_assert_eq(h_worker_of(admin, t), 0);
	long long moved_before = h_admin_stat(admin, "clients_moved_between_workers");

	set_spread(1);
	h_move_to(admin, both, 2, both, 2, 1, 0, "spreading");
	expect_x_state(x, "worker 1");
	expect_t_state(admin, t, "worker 1");
	cr_expect_eq(h_worker_of(admin, x), 1, "X left worker 1 while it was checked");

	set_spread(100);
	h_move_to(admin, both, 2, both, 2, 0, h_gather_pause_ms(), "gathering");
	expect_x_state(x, "worker 0 again");
	expect_t_state(admin, t, "worker 0 again");
	cr_expect_eq(h_admin_stat(admin, "workers_taking_clients"), 1);
	cr_expect_geq(h_admin_stat(admin, "clients_moved_between_workers") - moved_before, 4,
		      "X and T moved twice each");
	/* The pad never ended a transaction: it stayed. */
	for (int i = 0; i < PAD; i++)
		cr_expect_eq(h_worker_of(admin, pad[i]), 0, "idle session %d moved", i);
	h_close_all(pad, PAD);
	PQfinish(x);
	PQfinish(t);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* The client an admin KILL closed must see its socket close, and leave SHOW CLIENTS. */
static void expect_killed(PGconn *admin, PGconn *k, const char *id)
{
	struct pollfd pfd = {.fd = PQsocket(k), .events = POLLIN};
	cr_assert_eq(poll(&pfd, 1, h_scaled_ms(5000)), 1, "KILL did not close the moved client within 5 s");
	PQconsumeInput(k);
	PGresult *r = PQexec(k, "select 1");
	cr_expect_neq(PQresultStatus(r), PGRES_TUPLES_OK, "the killed client's query still worked");
	PQclear(r);
	cr_expect_eq(PQstatus(k), CONNECTION_BAD);
	char *still = h_admin_cell(admin, "SHOW CLIENTS", "id", id, "id");
	cr_expect_null(still, "SHOW CLIENTS still lists the killed client %s", id);
	free(still);
}

Test(spread, cancel_and_kill_follow_a_moved_client)
{
	PGconn *pad[PAD];
	PGconn *admin = start_with_pad(pad, PAD);
	PGconn *super = h_connect_super_direct();
	PGconn *x = h_app_session(&px, "require", NULL), *k = h_app_session(&px, "disable", NULL);
	PGconn *both[2] = {x, k};

	set_spread(1);
	h_move_to(admin, both, 2, both, 2, 1, 0, "spreading");

	/* A cancel of X's statement reaches it on worker 1. */
	cr_assert_eq(PQsendQuery(x, "select pg_sleep(30)"), 1, "%s", PQerrorMessage(x));
	cr_assert(h_poll_value(super, H_SLEEP_ACTIVE_SQL(30), "1", h_scaled_ms(10000)), "pg_sleep(30) never ran");
	cr_expect_eq(h_worker_of(admin, x), 1, "X left worker 1 inside its statement");
	PGcancel *cancel = PQgetCancel(x);
	char errbuf[256];
	cr_assert_not_null(cancel);
	long long sent = h_now_ms();
	cr_assert_eq(PQcancel(cancel, errbuf, sizeof(errbuf)), 1, "PQcancel: %s", errbuf);
	PGresult *r = h_get_result(x, h_scaled_ms(3000));
	if (r == NULL)
		h_dump_current_logs();
	cr_assert_not_null(r, "no answer within 3 s of the cancel of a moved client's statement");
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert_str_eq(state ? state : PQresStatus(PQresultStatus(r)), "57014", "%s", PQresultErrorMessage(r));
	cr_log_info("cancel answered in %lld ms", h_now_ms() - sent);
	PQclear(r);
	h_drain_results(x);
	h_expect_value(x, "select 'still here'", "still here");

	/* X back on worker 0 (it ended transactions since): a cancel still finds it. */
	set_spread(100);
	PGconn *x_only[1] = {x};
	h_move_to(admin, x_only, 1, x_only, 1, 0, h_gather_pause_ms(), "gathering");
	cr_assert_eq(PQsendQuery(x, "select pg_sleep(31)"), 1, "%s", PQerrorMessage(x));
	cr_assert(h_poll_value(super, H_SLEEP_ACTIVE_SQL(31), "1", h_scaled_ms(10000)), "pg_sleep(31) never ran");
	cr_assert_eq(PQcancel(cancel, errbuf, sizeof(errbuf)), 1, "PQcancel: %s", errbuf);
	PQfreeCancel(cancel);
	r = h_get_result(x, h_scaled_ms(3000));
	cr_assert_not_null(r, "no answer within 3 s of the cancel of a client that moved back");
	state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert_str_eq(state ? state : PQresStatus(PQresultStatus(r)), "57014", "%s", PQresultErrorMessage(r));
	PQclear(r);
	h_drain_results(x);
	h_expect_value(x, "select 'still here'", "still here");

	/* K went to worker 1 and stayed there, idle since: KILL finds it. */
	cr_assert_eq(h_worker_of(admin, k), 1, "K is not on worker 1");
	char *id = h_client_cell(admin, k, "id");
	cr_assert_not_null(id);
	char sql[64];
	snprintf(sql, sizeof(sql), "KILL %s", id);
	r = PQexec(admin, sql);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(admin));
	PQclear(r);
	expect_killed(admin, k, id);
	free(id);
	h_expect_value(x, "select 'x unharmed'", "x unharmed");

	h_close_all(pad, PAD);
	PQfinish(x);
	PQfinish(k);
	PQfinish(super);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ who never moves */

/*
 * Worker 0 gives clients away, but a client that LISTENs through pgmux, a
 * pinned one and the admin console's session stay, however many
 * transactions they end; the LISTENing one moves once it has UNLISTENed,
 * and a notification reaches it before and after.
 */
Test(spread, listening_pinned_and_admin_sessions_stay)
{
	PGconn *pad[PAD];
	PGconn *admin = start_with_pad(pad, PAD);
	PGconn *super = h_connect_super_direct();
	PGconn *l = h_app_session(&px, "disable", NULL);
	PGconn *p = h_app_session(&px, "disable", NULL);
	PGconn *m1 = h_app_session(&px, "disable", NULL), *m2 = h_app_session(&px, "require", NULL);

	h_exec_ok(l, "listen spread_ch");
	h_exec_ok(p, "create temp table spread_pin (x int)");
	char *pin = h_client_cell(admin, p, "pinned");
	cr_assert(pin && pin[0], "the temporary table did not pin P");
	free(pin);

	PGconn *busy[4] = {l, p, m1, m2}, *movers[2] = {m1, m2};
	set_spread(1);
	h_move_to(admin, busy, 4, movers, 2, 1, 0, "spreading");
	/* Worker 0 still has more than its share (L, P, the admin session, the pad): it keeps offering. */
	for (int round = 0; round < 50; round++)
		h_one_round(busy, 4);
	cr_expect_eq(h_worker_of(admin, l), 0, "the LISTENing client moved");
	cr_expect_eq(h_worker_of(admin, p), 0, "the pinned client moved");
	expect_admin_sessions_on_worker_0(admin);
	h_exec_ok(p, "insert into spread_pin values (1)");
	h_expect_value(p, "select count(*) from spread_pin", "1");
	h_exec_ok(super, "notify spread_ch, 'one'");
	h_expect_notify(l, "spread_ch", "one", 0);

	/* Without its channel it may go. */
	h_exec_ok(l, "unlisten *");
	PGconn *l_only[1] = {l};
	h_move_to(admin, busy, 4, l_only, 1, 1, 0, "after UNLISTEN");
	h_exec_ok(l, "listen spread_ch");
	h_exec_ok(super, "notify spread_ch, 'two'");
	h_expect_notify(l, "spread_ch", "two", 0);
	cr_expect_eq(h_worker_of(admin, p), 0, "the pinned client moved");

	h_close_all(pad, PAD);
	PQfinish(l);
	PQfinish(p);
	PQfinish(m1);
	PQfinish(m2);
	PQfinish(super);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* Session pooling: worker 1 takes new clients, but none of the sessions already on worker 0 moves. */
Test(spread, session_pooled_clients_stay)
{
	start("session", 12, 100, NULL);
	PGconn *admin = h_admin_session(&px);
	PGconn *clients[6];

	for (int i = 0; i < 6; i++)
		clients[i] = h_app_session(&px, i % 2 ? "require" : "disable", NULL);
	set_spread(1);
	long long deadline = h_now_ms() + h_scaled_ms(10000);
	while (h_admin_stat(admin, "workers_taking_clients") != 2) {
		cr_assert_lt(h_now_ms(), deadline, "worker 1 never took clients");
		for (int round = 0; round < 20; round++)
			h_one_round(clients, 6);
	}
	for (int round = 0; round < 100; round++)
		h_one_round(clients, 6);
	struct h_placement pl = h_placement_of(admin, "postgres");
	cr_expect_eq(pl.on[0], 6, "session-pooled clients on worker 0: %d of 6", pl.on[0]);
	cr_expect_eq(h_admin_stat(admin, "clients_moved_between_workers"), 0);
	h_close_all(clients, 6);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ stopping while clients move */

/*
 * pgbench -S (8 clients at a steady rate, light enough to gather under the
 * sanitizers too) while the clients spread and come back, then sig while
 * they still move: a client on its way to a worker that has stopped is
 * closed there (worker_destroy()), and pgmux exits 0 (under the sanitizers
 * and valgrind: nothing leaked, nothing freed twice).
 */
static void stop_while_moving(int sig)
{
	start("transaction", 4, 100, NULL);
	PGconn *admin = h_admin_session(&px);
	const char *args[] = {"-n", "-S", "-c", "8", "-j", "1", "-T", "30", "-R", h_under_valgrind() ? "50" : "200", NULL};
	struct h_cmd bench;
	cr_assert(h_pgbench_start(&bench, px.port, "disable", "postgres", args));

	/* All 8 on worker 0 first; then spread, then gather, and stop once clients are coming back. */
	long long deadline = h_now_ms() + h_scaled_ms(15000);
	while (h_placement_of(admin, "postgres").on[0] < 8) {
		cr_assert_lt(h_now_ms(), deadline, "pgbench's 8 clients did not all log in on worker 0");
		h_sleep_ms(20);
	}
	set_spread(1);
	while (h_admin_stat(admin, "clients_moved_between_workers") < 3) {
		cr_assert_lt(h_now_ms(), deadline, "no client moved under pgbench -S");
		h_sleep_ms(20);
	}
	set_spread(100);
	long long moved = h_admin_stat(admin, "clients_moved_between_workers");
	deadline = h_now_ms() + h_scaled_ms(15000);
	while (h_admin_stat(admin, "clients_moved_between_workers") == moved) {
		cr_assert_lt(h_now_ms(), deadline, "the clients never came back to worker 0");
		h_sleep_ms(5);
	}
	PQfinish(admin);
	int st = pgmux_stop(&px, sig, h_scaled_ms(15000));
	cr_assert_eq(st, 0, "pgmux exit status after signal %d while clients moved: %d", sig, st);
	/* Its clients were closed under it: pgbench ends (a client aborted), not hangs. */
	bool ended = h_cmd_wait(&bench, h_scaled_ms(20000));
	if (!ended)
		h_cmd_kill(&bench);
	cr_assert(ended, "pgbench did not end once pgmux had stopped");
	h_cmd_free(&bench);
}

Test(spread, sigterm_while_clients_move)
{
	stop_while_moving(SIGTERM);
}

Test(spread, sigint_while_clients_move)
{
	stop_while_moving(SIGINT);
}
