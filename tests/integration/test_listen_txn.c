/*
 * test_listen_txn.c: a LISTEN that runs on a backend (inside a transaction
 * block, or among other statements in one Query) with transaction pooling
 * does not pin the session: pgmux takes its channels over when the
 * transaction ends (src/client_listen_handover.c). The same script runs
 * against PostgreSQL directly and through pgmux and must see the same
 * thing; through pgmux nothing is pinned and the backend goes back clean.
 * Then many clients take their LISTEN over while a stream of numbered
 * notifications runs: each gets every one committed after its COMMIT
 * returned, once, in order, and none committed before it began.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct pgmux px;
static int stopped_pid; /* a backend a test stopped (SIGSTOP): continued whatever way the test ends */

static struct h_pg second; /* the cutover's new server */

static void fini(void)
{
	if (stopped_pid > 0)
		kill(stopped_pid, SIGCONT);
	stopped_pid = 0;
	h_teardown();
	h_pg_stop(&second);
}

/*
 * No session pinned so far. A pin that should not be leaves the backend to
 * that session, and in a pool of one the next client waits for it up to
 * connection_borrow_timeout: said here, with pgmux's log, rather than a hang.
 */
static void expect_not_pinned(PGconn *admin, const char *when)
{
	long long pinned = h_admin_stat(admin, "sessions_pinned_total");

	if (pinned != 0)
		h_dump_current_logs();
	cr_assert_eq(pinned, 0, "a LISTEN in a transaction pinned the session (%s)", when);
}

/*
 * After the takeovers of a test: nothing pinned, a new session's backend
 * listens on nothing, and the hub delivers to it only what it LISTENs on
 * (not gone, the channel of the takeovers). Then pgmux stops cleanly.
 */
static void expect_nothing_left_behind(PGconn *notifier, const char *gone)
{
	PGconn *admin = h_connect_app(px.port, "disable", "dbname=pgmux");
	PGconn *b;
	char sql[120];

	expect_not_pinned(admin, "after the takeovers");
	b = h_app_session(&px, "disable", NULL);
	h_expect_value(b, "select count(*) from pg_listening_channels()", "0");
	h_expect_tag(b, "LISTEN after", "LISTEN");
	snprintf(sql, sizeof(sql), "NOTIFY %s, 'x'", gone);
	h_exec_ok(notifier, sql);
	h_exec_ok(notifier, "NOTIFY after, 'y'");
	h_expect_notify(b, "after", "y", 0);
	h_expect_no_notify(b, 100);
	PQfinish(b);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

TestSuite(listen_txn, .fini = fini, .timeout = 120);

/*
 * What a client sees of LISTEN in transactions (a, with notifier a direct
 * session): the same directly and through pgmux.
 */
static void listen_in_transactions(PGconn *a, PGconn *notifier, const char *who, int *got_before)
{
	int pid = PQbackendPID(notifier);
	PGresult *r;

	/* Takes effect at COMMIT: each notification after it, once, in order. */
	h_expect_tag(a, "BEGIN", "BEGIN");
	h_expect_tag(a, "LISTEN ta", "LISTEN");
	h_expect_tag(a, "COMMIT", "COMMIT");
	h_exec_ok(notifier, "NOTIFY ta, 'one'");
	h_exec_ok(notifier, "NOTIFY ta, 'two'");
	h_exec_ok(notifier, "NOTIFY ta, 'three'");
	h_expect_notify(a, "ta", "one", pid);
	h_expect_notify(a, "ta", "two", pid);
	h_expect_notify(a, "ta", "three", pid);
	h_expect_no_notify(a, 100);

	/* Nothing at ROLLBACK. */
	h_expect_tag(a, "BEGIN", "BEGIN");
	h_expect_tag(a, "LISTEN tb", "LISTEN");
	h_expect_tag(a, "ROLLBACK", "ROLLBACK");
	h_exec_ok(notifier, "NOTIFY tb, 'never'");
	h_expect_no_notify(a, 150);

	/* Among other statements in one Query (an implicit transaction). */
	h_expect_tag(a, "LISTEN tc; SELECT 1", "SELECT 1");
	h_exec_ok(notifier, "NOTIFY tc, 'c1'");
	h_expect_notify(a, "tc", "c1", pid);

	/* A channel it listened on already, again in a transaction, and a new one: each once. */
	h_expect_tag(a, "BEGIN; LISTEN ta; LISTEN td; COMMIT", "COMMIT");
	h_exec_ok(notifier, "NOTIFY ta, 'a2'");
	h_exec_ok(notifier, "NOTIFY td, 'd1'");
	h_expect_notify(a, "ta", "a2", pid);
	h_expect_notify(a, "td", "d1", pid);
	h_expect_no_notify(a, 100);

	/*
	 * A notification committed between the LISTEN and the COMMIT: PostgreSQL
	 * may deliver it or not (a session that listens already reads on from
	 * its own queue position and delivers it; a first LISTEN starts from the
	 * other listeners' position, past it). pgmux's backend is in the second
	 * case, this direct session in the first: both are PostgreSQL's answer.
	 */
	h_expect_tag(a, "BEGIN", "BEGIN");
	h_expect_tag(a, "LISTEN te", "LISTEN");
	h_exec_ok(notifier, "NOTIFY te, 'before commit'");
	h_expect_tag(a, "COMMIT", "COMMIT");
	h_exec_ok(notifier, "NOTIFY te, 'after commit'");
	{
		PGnotify *n = h_wait_notify(a, h_scaled_ms(5000));
		bool before;

		cr_assert_not_null(n, "%s: nothing on te", who);
		before = strcmp(n->extra, "before commit") == 0;
		PQfreemem(n);
		*got_before = before;
		cr_log_info("%s: the notification committed before the COMMIT %s", who, before ? "came" : "did not come");
		if (before)
			h_expect_notify(a, "te", "after commit", pid);
	}
	h_expect_no_notify(a, 100);

	/* A LISTEN prepared outside a transaction, run inside one. */
	r = PQprepare(a, "lf", "LISTEN tf", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", who, PQerrorMessage(a));
	PQclear(r);
	h_expect_tag(a, "BEGIN", "BEGIN");
	r = PQexecPrepared(a, "lf", 0, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", who, PQerrorMessage(a));
	PQclear(r);
	h_expect_tag(a, "COMMIT", "COMMIT");
	h_exec_ok(notifier, "NOTIFY tf, 'f1'");
	h_expect_notify(a, "tf", "f1", pid);

	/* Its own NOTIFY in the transaction of its LISTEN: delivered at the COMMIT, to itself too. */
	h_expect_tag(a, "BEGIN; LISTEN tg; NOTIFY tg, 'mine'; COMMIT", "COMMIT");
	h_expect_notify(a, "tg", "mine", 0);
	h_expect_no_notify(a, 100);
	h_expect_tag(a, "UNLISTEN *", "UNLISTEN");
}

Test(listen_txn, same_as_postgresql_no_pin_backend_back_clean)
{
	PGconn *direct, *a, *b, *notifier, *admin;
	int got_before = -1;

	notifier = h_connect_super_direct();
	direct = h_connect_app_direct(NULL);
	cr_assert_eq(PQstatus(direct), CONNECTION_OK, "%s", PQerrorMessage(direct));
	listen_in_transactions(direct, notifier, "directly", &got_before);
	PQfinish(direct);

	/*
	 * A pool of one: whoever comes next gets the backend the LISTENs ran on.
	 * A client waiting for a backend held by a wrong pin fails in 10 s, not
	 * at the default 120 s (the suite's timeout).
	 */
	h_start_transaction_pgmux(&px, 1, "connection_borrow_timeout = 10s\n");
	a = h_app_session(&px, "disable", NULL);
	b = h_app_session(&px, "disable", NULL);
	listen_in_transactions(a, notifier, "through pgmux", &got_before);
	admin = h_connect_app(px.port, "disable", "dbname=pgmux");
	expect_not_pinned(admin, "the LISTENs in transactions");
	/*
	 * The backend went back, listening on nothing; b gets nothing of a's.
	 * a listens on nothing through the hub now (UNLISTEN *): the hub closes
	 * its connection and opens one again for this takeover, which must wait
	 * for it, not fail (listen.c once timed such a waiter out at once).
	 */
	h_expect_tag(a, "BEGIN; LISTEN ta; COMMIT", "COMMIT");
	expect_not_pinned(admin, "a takeover while the LISTEN connection reopens");
	h_expect_value(b, "select count(*) from pg_listening_channels()", "0");
	h_exec_ok(notifier, "NOTIFY ta, 'for a'");
	h_expect_notify(a, "ta", "for a", 0);
	h_expect_no_notify(b, 150);
	h_expect_value(b, "select 1", "1");
	expect_not_pinned(admin, "at the end");
	PQfinish(a);
	PQfinish(b);
	PQfinish(admin);
	PQfinish(notifier);
	h_stop_expect_clean_exit(&px);
}

/* A client leaves right after its LISTEN's COMMIT, during the takeover: nothing is left behind. */
Test(listen_txn, client_leaves_during_takeover)
{
	PGconn *a, *notifier;

	h_start_transaction_pgmux(&px, 1, NULL);
	notifier = h_connect_super_direct();
	for (int i = 0; i < 10; i++) {
		a = h_app_session(&px, "disable", NULL);
		PQsendQuery(a, "BEGIN; LISTEN gone; COMMIT");
		if (i % 2)
			h_sleep_ms(1);
		PQfinish(a);
	}
	expect_nothing_left_behind(notifier, "gone");
	PQfinish(notifier);
}

/*
 * More channels than max_client_listen_channels with those it held: the
 * session keeps its backend (a pin, as before), which delivers them all.
 */
Test(listen_txn, over_the_channel_bound_pins)
{
	PGconn *a, *b, *notifier, *admin;

	h_start_transaction_pgmux(&px, 2, "max_client_listen_channels = 2\n");
	a = h_app_session(&px, "disable", NULL);
	b = h_app_session(&px, "disable", NULL);
	notifier = h_connect_super_direct();
	admin = h_connect_app(px.port, "disable", "dbname=pgmux");
	h_expect_tag(a, "LISTEN o1", "LISTEN");
	h_expect_tag(a, "BEGIN; LISTEN o2; LISTEN o3; COMMIT", "COMMIT");
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 1, "the session was to be pinned");
	h_exec_ok(notifier, "NOTIFY o1, '1'");
	h_exec_ok(notifier, "NOTIFY o2, '2'");
	h_exec_ok(notifier, "NOTIFY o3, '3'");
	/* o1 through pgmux's LISTEN connection, o2 and o3 from the pinned backend: each once, in any order. */
	{
		bool seen[3] = { false, false, false };

		for (int i = 0; i < 3; i++) {
			PGnotify *n = h_wait_notify(a, h_scaled_ms(5000));
			int k;

			cr_assert_not_null(n, "%d of 3 notifications came", i);
			k = atoi(n->extra) - 1;
			cr_assert(k >= 0 && k < 3 && !seen[k], "unexpected or twice: %s (%s)", n->relname, n->extra);
			cr_expect_eq(n->relname[1] - '1', k, "%s (%s)", n->relname, n->extra);
			seen[k] = true;
			PQfreemem(n);
		}
	}
	h_expect_no_notify(a, 100);
	/* Within the bound, b's takeover pins nothing. */
	h_expect_tag(b, "BEGIN; LISTEN o2; COMMIT", "COMMIT");
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 1);
	h_exec_ok(notifier, "NOTIFY o2, '4'");
	h_expect_notify(b, "o2", "4", 0);
	h_expect_notify(a, "o2", "4", 0);
	h_expect_no_notify(a, 50);
	PQfinish(admin);
	PQfinish(a);
	PQfinish(b);
	PQfinish(notifier);
	h_stop_expect_clean_exit(&px);
}

/*
 * The backend is terminated at any moment of the takeover: the client's
 * session goes on (or ends with an error, when its channels were not known
 * yet), nothing is pinned, and no subscription is left behind.
 */
Test(listen_txn, backend_terminated_during_takeover)
{
	PGconn *super, *notifier;
	char kill[400];

	snprintf(kill, sizeof(kill),
		 "select pg_terminate_backend(pid) from pg_stat_activity where usename = '%s' and "
		 "application_name not like 'pgmux %%'",
		 h_env()->appuser);
	h_start_transaction_pgmux(&px, 1, NULL);
	super = h_connect_super_direct();
	notifier = h_connect_super_direct();
	for (int i = 0; i < 8; i++) {
		PGconn *a = h_app_session(&px, "disable", NULL);
		PGresult *r;

		h_expect_value(a, "select 1", "1");
		cr_assert(PQsendQuery(a, "BEGIN; LISTEN killed; COMMIT"));
		if (i % 3)
			h_sleep_ms(i % 3);
		h_exec_ok(super, kill);
		while ((r = PQgetResult(a)) != NULL)
			PQclear(r);
		/*
		 * Still usable, or closed with an error: never stuck. A statement
		 * may still meet the terminated backend (lent before pgmux read its
		 * FATAL: the window pgmux(1) documents) and fail with 57P01 once.
		 */
		for (int tries = 0; tries < 2 && PQstatus(a) == CONNECTION_OK; tries++) {
			bool done;

			r = PQexec(a, "select 1");
			done = PQresultStatus(r) == PGRES_TUPLES_OK;
			cr_expect(done || tries == 0, "%s", PQerrorMessage(a));
			PQclear(r);
			if (done)
				break;
		}
		PQfinish(a);
	}
	expect_nothing_left_behind(notifier, "killed");
	PQfinish(super);
	PQfinish(notifier);
}

/* The pid of pgmux's LISTEN connection on the server at super, once it listens on what it was asked to. */
static int hub_pid(PGconn *super)
{
	cr_assert(h_poll_value(super,
			       "select count(*) from pg_stat_activity where application_name = 'pgmux listen' and "
			       "state = 'idle' and query like 'LISTEN%'",
			       "1", h_scaled_ms(10000)),
		  "pgmux's LISTEN connection does not listen");
	return (int)h_number_ok(super, "select pid from pg_stat_activity where application_name = 'pgmux listen'");
}

/*
 * A session that listens on keep through pgmux; then the backend of pgmux's
 * LISTEN connection (on the server at super) is stopped: a takeover waits
 * for it in vain. Its pid in *hub.
 */
static PGconn *listen_then_stop_the_hub(PGconn *super, int *hub)
{
	PGconn *keep = h_app_session(&px, "disable", NULL);

	h_expect_tag(keep, "LISTEN keep", "LISTEN");
	*hub = hub_pid(super);
	cr_assert_eq(kill(*hub, SIGSTOP), 0, "SIGSTOP to backend %d", *hub);
	stopped_pid = *hub;
	return keep;
}

static void continue_the_hub(int hub)
{
	cr_assert_eq(kill(hub, SIGCONT), 0, "SIGCONT to backend %d", hub);
	stopped_pid = 0;
}

/*
 * The takeover does not complete in CLIENT_LISTEN_HANDOVER_TIMEOUT_MS (5 s;
 * pgmux(1)): pgmux's LISTEN connection's backend is stopped, so the hub
 * never says it listens on the new channel. The backend of the transaction
 * is closed instead of given back, the client gets its ReadyForQuery and
 * goes on unpinned, a warning says so, and it keeps its subscription: once
 * the hub's backend runs again, notifications of the channel reach it.
 */
Test(listen_txn, takeover_times_out_backend_closed)
{
	PGconn *super, *notifier, *keep, *a, *admin;
	long long began, took;
	int backend, hub;
	char warning[120];

	h_start_transaction_pgmux(&px, 1, NULL);
	super = h_connect_super_direct();
	notifier = h_connect_super_direct();
	keep = listen_then_stop_the_hub(super, &hub);
	a = h_app_session(&px, "disable", NULL);
	h_expect_tag(a, "BEGIN", "BEGIN");
	backend = (int)h_number_ok(a, "select pg_backend_pid()");
	h_expect_tag(a, "LISTEN stall", "LISTEN");
	began = h_now_ms();
	h_expect_tag(a, "COMMIT", "COMMIT");
	took = h_now_ms() - began;
	cr_expect(took >= 4500, "the COMMIT came back after %lld ms, before the takeover's 5 s", took);
	cr_expect(took < h_scaled_ms(9000), "the COMMIT came back after %lld ms", took);
	snprintf(warning, sizeof(warning), "taking over the LISTEN of backend pid %d failed (timed out)", backend);
	h_expect_log(&px, warning, 1000);
	/* Closed, not given back; the session is not pinned and goes on. */
	cr_expect(h_wait_backend_gone(super, backend, 5000), "the backend of the stalled takeover (pid %d) is still there",
		  backend);
	h_expect_value(a, "select 1", "1");
	admin = h_connect_app(px.port, "disable", "dbname=pgmux");
	expect_not_pinned(admin, "a takeover that timed out");
	/* The hub's backend runs again: a's subscription takes effect there. */
	continue_the_hub(hub);
	/* Answered once pgmux's LISTEN connection listens on it (client_listen.c). */
	h_expect_tag(keep, "LISTEN stall", "LISTEN");
	h_exec_ok(notifier, "NOTIFY stall, 's'");
	h_exec_ok(notifier, "NOTIFY keep, 'k'");
	h_expect_notify(a, "stall", "s", 0);
	h_expect_notify(keep, "stall", "s", 0);
	h_expect_notify(keep, "keep", "k", 0);
	h_expect_no_notify(a, 100);
	PQfinish(admin);
	PQfinish(a);
	PQfinish(keep);
	PQfinish(notifier);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* Is conn's query over (its ReadyForQuery read) within ms? */
static bool ready_within(PGconn *conn, int ms)
{
	long long deadline = h_now_ms() + ms;

	for (;;) {
		cr_assert(PQconsumeInput(conn), "reading: %s", PQerrorMessage(conn));
		if (!PQisBusy(conn))
			return true;
		if (h_now_ms() >= deadline)
			return false;
		struct pollfd pfd = { .fd = PQsocket(conn), .events = POLLIN };
		poll(&pfd, 1, 20);
	}
}

/*
 * A cutover to another server while a takeover waits for pgmux's LISTEN
 * connection (its backend stopped, as above). The cutover counts the
 * takeover as a transaction in flight and waits for it; the takeover gives
 * up at its 5 s and its backend is closed; then the cutover switches. The
 * COMMIT and the CUTOVER both come back, the LISTEN connection follows the
 * pool to the new server, and the client that was taken over keeps its
 * channel there: what is NOTIFYed on the new server reaches it, as it does
 * a client that LISTENed through pgmux before. Nothing is pinned.
 */
Test(listen_txn, cutover_during_a_takeover)
{
	const struct h_env *e = h_env();
	struct pgmux_options o;
	PGconn *su, *super, *keep, *a, *admin;
	PGresult *r;
	char sql[200], port[16];
	int hub;

	cr_assert(h_pg_start(&second), "the second PostgreSQL did not start");
	su = h_connect_super_port(second.port, "postgres");
	snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN PASSWORD '%s'", e->appuser, e->apppass);
	h_exec_ok(su, sql);
	pgmux_options_console(&o);
	o.tls = false;
	o.max_connections = 2;
	o.extra_target = "health_check_interval = 250ms\ncutover_require_catchup = false";
	pgmux_start_ok(&px, &o);
	super = h_connect_super_direct();
	keep = listen_then_stop_the_hub(super, &hub);
	a = h_app_session(&px, "disable", NULL);
	h_expect_tag(a, "BEGIN; LISTEN moved", "LISTEN");
	cr_assert(PQsendQuery(a, "COMMIT"));
	r = h_get_result(a, h_scaled_ms(5000));
	cr_assert(r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK, "COMMIT: %s", PQerrorMessage(a));
	PQclear(r);
	/* Its ReadyForQuery waits for the takeover. */
	cr_assert(!ready_within(a, 300), "the takeover did not wait for pgmux's stopped LISTEN connection");
	admin = h_admin_session(&px);
	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", second.port);
	cr_assert(PQsendQuery(admin, sql));
	if (!ready_within(a, h_scaled_ms(15000)))
		h_dump_current_logs();
	cr_assert(ready_within(a, 0), "the COMMIT's ReadyForQuery did not come");
	cr_assert_null(PQgetResult(a));
	r = h_get_result(admin, h_scaled_ms(20000));
	if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK)
		h_dump_current_logs();
	cr_assert_not_null(r, "CUTOVER TO did not come back");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "CUTOVER TO: %s", PQresultErrorMessage(r));
	PQclear(r);
	h_drain_results(admin);
	continue_the_hub(hub);
	/* On the new server: the LISTEN connection listens on both channels again (one query). */
	PQfinish(super);
	super = h_connect_super_port(second.port, "postgres");
	hub_pid(super);
	h_exec_ok(super, "NOTIFY moved, 'm'");
	h_exec_ok(super, "NOTIFY keep, 'k'");
	h_expect_notify(a, "moved", "m", 0);
	h_expect_notify(keep, "keep", "k", 0);
	h_expect_no_notify(a, 100);
	snprintf(port, sizeof(port), "%d", second.port);
	h_expect_value(a, "select inet_server_port()", port);
	expect_not_pinned(admin, "a takeover during a cutover");
	PQfinish(admin);
	PQfinish(a);
	PQfinish(keep);
	PQfinish(super);
	PQfinish(su);
	h_stop_expect_clean_exit(&px);
}

/* ---------------------------------------------------------------- the stress case */

#define S_CLIENTS 32
#define S_CHANNELS 4

static volatile int stream_last; /* the last number whose commit returned (atomic) */
static volatile int stream_stop;

static void *notifier_main(void *arg)
{
	PGconn *n = arg;
	char sql[256];
	/* Under valgrind or a sanitizer pgmux is many times slower: a stream it can follow. */
	int pause_us = h_under_valgrind() || h_under_sanitizer() ? 10000 : 500;

	for (int k = 1; !__atomic_load_n(&stream_stop, __ATOMIC_ACQUIRE); k++) {
		PGresult *r;

		snprintf(sql, sizeof(sql),
			 "SELECT pg_notify('st0', '%d'), pg_notify('st1', '%d'), pg_notify('st2', '%d'), "
			 "pg_notify('st3', '%d')",
			 k, k, k, k);
		r = PQexec(n, sql);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			PQclear(r);
			break;
		}
		PQclear(r);
		__atomic_store_n(&stream_last, k, __ATOMIC_RELEASE);
		usleep(pause_us);
	}
	return NULL;
}

struct stream_client {
	PGconn *conn;
	int before; /* the last number committed before its BEGIN */
	int after;  /* the last number committed when its COMMIT returned */
	int first, last, count;
	char error[200];
};

static void stream_read(struct stream_client *sc)
{
	PGnotify *n;

	if (!PQconsumeInput(sc->conn)) {
		snprintf(sc->error, sizeof(sc->error), "reading: %s", PQerrorMessage(sc->conn));
		return;
	}
	while ((n = PQnotifies(sc->conn)) != NULL) {
		int k = atoi(n->extra);

		if (sc->error[0] == '\0') {
			if (sc->count == 0)
				sc->first = k;
			else if (k != sc->last + 1)
				snprintf(sc->error, sizeof(sc->error), "%d after %d (a gap or a duplicate)", k, sc->last);
			sc->last = k;
			sc->count++;
		}
		PQfreemem(n);
	}
}

Test(listen_txn, takeovers_under_a_stream_exactly_once_in_order)
{
	static struct stream_client cl[S_CLIENTS];
	PGconn *notifier, *admin;
	pthread_t thread;
	char sql[64];
	int final;
	long long deadline;

	h_start_transaction_pgmux(&px, 4, NULL);
	notifier = h_connect_super_direct();
	__atomic_store_n(&stream_stop, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&stream_last, 0, __ATOMIC_RELEASE);
	for (int i = 0; i < S_CLIENTS; i++) {
		memset(&cl[i], 0, sizeof(cl[i]));
		cl[i].conn = h_app_session(&px, "disable", NULL);
	}
	cr_assert_eq(pthread_create(&thread, NULL, notifier_main, notifier), 0);
	h_sleep_ms(50);
	/* The clients LISTEN one after another, two at a time, while the stream runs and the earlier ones read. */
	for (int i = 0; i < S_CLIENTS; i += 2) {
		for (int j = i; j < i + 2; j++) {
			cl[j].before = __atomic_load_n(&stream_last, __ATOMIC_ACQUIRE);
			snprintf(sql, sizeof(sql), "BEGIN; LISTEN st%d; COMMIT", j % S_CHANNELS);
			cr_assert(PQsendQuery(cl[j].conn, sql), "%s", PQerrorMessage(cl[j].conn));
		}
		for (int j = i; j < i + 2; j++) {
			PGresult *r;

			while ((r = PQgetResult(cl[j].conn)) != NULL) {
				cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "client %d: %s", j,
					     PQerrorMessage(cl[j].conn));
				PQclear(r);
			}
			cl[j].after = __atomic_load_n(&stream_last, __ATOMIC_ACQUIRE);
		}
		for (int j = 0; j < i + 2; j++)
			stream_read(&cl[j]);
		h_sleep_ms(20);
	}
	h_sleep_ms(100);
	__atomic_store_n(&stream_stop, 1, __ATOMIC_RELEASE);
	pthread_join(thread, NULL);
	final = __atomic_load_n(&stream_last, __ATOMIC_ACQUIRE);
	cr_log_info("%d numbers streamed", final);
	deadline = h_now_ms() + h_scaled_ms(5000);
	for (int i = 0; i < S_CLIENTS; i++)
		while (cl[i].error[0] == '\0' && cl[i].last < final && h_now_ms() < deadline) {
			struct pollfd pfd = { .fd = PQsocket(cl[i].conn), .events = POLLIN };

			poll(&pfd, 1, 50);
			stream_read(&cl[i]);
		}
	for (int i = 0; i < S_CLIENTS; i++) {
		h_sleep_ms(i == 0 ? 100 : 0);
		stream_read(&cl[i]);
		cr_expect_eq(cl[i].error[0], '\0', "client %d: %s", i, cl[i].error);
		cr_expect_gt(cl[i].count, 0, "client %d got nothing", i);
		cr_expect_gt(cl[i].first, cl[i].before, "client %d got %d, committed before its BEGIN (%d)", i,
			     cl[i].first, cl[i].before);
		/*
		 * Number after + 1 may have committed before its COMMIT returned
		 * (the notifier had not noted it yet); every later one began after.
		 */
		cr_expect_leq(cl[i].first, cl[i].after + 2, "client %d missed what came after its COMMIT (%d): first %d",
			      i, cl[i].after, cl[i].first);
		cr_expect_eq(cl[i].last, final, "client %d: the last number %d, streamed %d", i, cl[i].last, final);
	}
	admin = h_connect_app(px.port, "disable", "dbname=pgmux");
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 0, "a takeover pinned a session");
	PQfinish(admin);
	for (int i = 0; i < S_CLIENTS; i++)
		PQfinish(cl[i].conn);
	PQfinish(notifier);
	h_stop_expect_clean_exit(&px);
}
