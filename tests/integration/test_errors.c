/*
 * test_errors.c: issue 19, items 2 to 4. What a client sees when the server
 * ends its backend (pg_terminate_backend, idle_session_timeout), compared
 * with what the same client sees from PostgreSQL directly: the messages, their
 * severity, SQLSTATE and text, and whether the socket closes. Read on the
 * socket itself, below libpq, so that a second error or a missing close
 * cannot hide in a driver's summary.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct pgmux px;

static void fini_errors(void)
{
	h_teardown();
}

static void start_errors_pgmux(const char *pool_mode, int max_connections, const char *extra_pool)
{
	h_wait_no_app_backends();
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.pool_mode = pool_mode;
	o.max_connections = max_connections;
	o.extra_pool = extra_pool;
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
}

/* ---------------------------------------------------------------- transcripts */

#define MAX_ERRORS 4

/* The ErrorResponses a client read, whether a ReadyForQuery followed, and whether the socket closed. */
struct transcript {
	int n_errors;
	char severity[MAX_ERRORS][16];
	char sqlstate[MAX_ERRORS][6];
	char message[MAX_ERRORS][200];
	char detail[MAX_ERRORS][300];
	bool ready;  /* a ReadyForQuery came (the connection goes on) */
	bool closed; /* EOF or a reset */
};

static void copy_field(char *to, size_t cap, const char *body, size_t len, char field)
{
	const char *v = h_error_field(body, len, field);
	snprintf(to, cap, "%s", v ? v : "");
}

/* Read backend messages on fd until a ReadyForQuery, the end of the connection, or timeout_ms. */
static void read_transcript(int fd, struct transcript *t, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	memset(t, 0, sizeof(*t));
	for (;;) {
		char type;
		char *body;
		size_t len;
		int left = (int)(deadline - h_now_ms());
		enum h_msg_result r = h_raw_read_message(fd, &type, &body, &len, left > 0 ? left : 1);

		if (r == H_MSG_CLOSED || r == H_MSG_ERROR) {
			t->closed = true;
			return;
		}
		cr_assert_neq(r, H_MSG_TIMEOUT, "neither a ReadyForQuery nor the end of the connection within %d ms",
			      timeout_ms);
		if (type == 'E' && t->n_errors < MAX_ERRORS) {
			int i = t->n_errors++;
			copy_field(t->severity[i], sizeof(t->severity[i]), body, len, 'V');
			copy_field(t->sqlstate[i], sizeof(t->sqlstate[i]), body, len, 'C');
			copy_field(t->message[i], sizeof(t->message[i]), body, len, 'M');
			copy_field(t->detail[i], sizeof(t->detail[i]), body, len, 'D');
		}
		free(body);
		if (type == 'Z') {
			t->ready = true;
			return;
		}
	}
}

static void log_transcript(const char *who, const struct transcript *t)
{
	cr_log_info("%s: %d error(s)%s%s", who, t->n_errors, t->ready ? ", ReadyForQuery" : "",
		    t->closed ? ", closed" : "");
	for (int i = 0; i < t->n_errors; i++)
		cr_log_info("  %s %s \"%s\" (DETAIL \"%s\")", t->severity[i], t->sqlstate[i], t->message[i],
			    t->detail[i]);
}

/* A simple Query written on the session's socket, past libpq (sslmode=disable). */
static void send_raw_query(PGconn *conn, const char *sql)
{
	struct h_buf b = {0};
	h_msg_query(&b, sql);
	h_send_buf(PQsocket(conn), &b);
	h_buf_free(&b);
}

static void terminate_and_wait(PGconn *super, int pid)
{
	char sql[160];
	snprintf(sql, sizeof(sql), "select pg_terminate_backend(%d)", pid);
	h_exec_ok(super, sql);
	snprintf(sql, sizeof(sql), "select count(*) from pg_stat_activity where pid = %d", pid);
	cr_assert(h_poll_value(super, sql, "0", h_scaled_ms(5000)), "backend %d outlived pg_terminate_backend", pid);
}

/*
 * conn's backend is terminated while it runs pg_sleep (running) or while it
 * waits for a statement: what reaches the client's socket afterwards.
 */
static void terminated_transcript(PGconn *conn, PGconn *super, bool running, struct transcript *t)
{
	int pid = h_backend_pid(conn);
	if (running) {
		char sql[160];
		send_raw_query(conn, "select pg_sleep(30)");
		snprintf(sql, sizeof(sql), "select count(*) from pg_stat_activity where pid = %d and state = 'active'",
			 pid);
		cr_assert(h_poll_value(super, sql, "1", h_scaled_ms(5000)), "pg_sleep never ran on backend %d", pid);
	}
	terminate_and_wait(super, pid);
	if (!running)
		send_raw_query(conn, "select 1");
	read_transcript(PQsocket(conn), t, h_scaled_ms(5000));
}

/* ================================================================ item 2: session pooling */

TestSuite(errors_session, .fini = fini_errors, .timeout = 120);

/*
 * PostgreSQL sends one FATAL (57P01, "terminating connection due to
 * administrator command") and closes. Through pgmux in session pooling the
 * client must read the same, and nothing more: before, a second ErrorResponse
 * of pgmux's own ("lost the connection to the database server") followed,
 * and drivers reported that one.
 */
Test(errors_session, the_servers_fatal_reaches_the_client_once_then_the_socket_closes)
{
	start_errors_pgmux("session", 2, NULL);
	PGconn *super = h_connect_super_direct();
	for (int running = 0; running <= 1; running++) {
		struct transcript direct, through;
		PGconn *d = h_connect_app_direct(NULL);
		terminated_transcript(d, super, running, &direct);
		PGconn *p = h_app_session(&px, "disable", NULL);
		terminated_transcript(p, super, running, &through);
		log_transcript(running ? "directly, terminated while running" : "directly, terminated while idle",
			       &direct);
		log_transcript(running ? "pgmux, terminated while running" : "pgmux, terminated while idle", &through);

		cr_assert_eq(direct.n_errors, 1);
		cr_expect_str_eq(direct.sqlstate[0], "57P01");
		cr_expect(direct.closed && !direct.ready);
		cr_expect_eq(through.n_errors, 1, "pgmux sent %d errors where PostgreSQL sends one (running %d)",
			     through.n_errors, running);
		cr_expect_str_eq(through.severity[0], direct.severity[0]);
		cr_expect_str_eq(through.sqlstate[0], direct.sqlstate[0]);
		cr_expect_str_eq(through.message[0], direct.message[0]);
		cr_expect(through.closed && !through.ready, "pgmux did not close the client's socket (running %d)",
			  running);
		PQfinish(d);
		PQfinish(p);
	}
	/* The pool goes on. */
	PGconn *p = h_app_session(&px, "disable", NULL);
	h_expect_value(p, "select 'after'", "after");
	PQfinish(p);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ item 3: transaction pooling */

TestSuite(errors_txn, .fini = fini_errors, .timeout = 120);

/*
 * The backend dies inside the client's transaction. PostgreSQL sends FATAL
 * 57P01 and closes. pgmux keeps the client's session (only the transaction
 * is lost), so the severity is ERROR; the SQLSTATE and message are the
 * server's, so that code matching on them works as directly, and the DETAIL
 * says that the session goes on. The next transaction runs on another
 * backend.
 */
Test(errors_txn, a_lost_transaction_reports_the_servers_sqlstate_and_message)
{
	start_errors_pgmux("transaction", 2, NULL);
	PGconn *super = h_connect_super_direct();
	struct transcript direct, through;

	PGconn *d = h_connect_app_direct(NULL);
	h_exec_ok(d, "begin");
	terminated_transcript(d, super, true, &direct);
	PQfinish(d);

	PGconn *p = h_app_session(&px, "disable", NULL);
	h_exec_ok(p, "begin");
	int pid = h_backend_pid(p);
	terminated_transcript(p, super, true, &through);
	log_transcript("directly", &direct);
	log_transcript("pgmux", &through);

	cr_assert_eq(direct.n_errors, 1);
	cr_expect_str_eq(direct.severity[0], "FATAL");
	cr_assert_eq(through.n_errors, 1, "pgmux sent %d errors", through.n_errors);
	cr_expect_str_eq(through.severity[0], "ERROR");
	cr_expect_str_eq(through.sqlstate[0], direct.sqlstate[0]);
	cr_expect_str_eq(through.message[0], direct.message[0]);
	cr_expect(strstr(through.detail[0], "pgmux kept this client's session") != NULL, "DETAIL \"%s\"",
		  through.detail[0]);
	cr_expect(through.ready && !through.closed, "the client's session did not go on");

	/* libpq sent nothing while the test read past it: the session is at a message boundary. */
	h_expect_value(p, "select 'next'", "next");
	cr_expect_neq(h_backend_pid(p), pid);
	PQfinish(p);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * A session pinned to its backend (a temporary table) cannot go on without
 * it: like a session-pooled one, it gets the server's FATAL, once, and its
 * socket closes, as directly.
 */
Test(errors_txn, a_pinned_session_ends_with_the_servers_fatal)
{
	start_errors_pgmux("transaction", 2, NULL);
	PGconn *super = h_connect_super_direct();
	for (int running = 0; running <= 1; running++) {
		struct transcript direct, through;
		PGconn *d = h_connect_app_direct(NULL);
		h_exec_ok(d, "create temporary table pinned (x int)");
		terminated_transcript(d, super, running, &direct);
		PGconn *p = h_app_session(&px, "disable", NULL);
		h_exec_ok(p, "create temporary table pinned (x int)");
		terminated_transcript(p, super, running, &through);
		log_transcript("directly", &direct);
		log_transcript("pgmux, pinned", &through);
		cr_assert_eq(direct.n_errors, 1);
		cr_expect_eq(through.n_errors, 1, "pgmux sent %d errors (running %d)", through.n_errors, running);
		cr_expect_str_eq(through.severity[0], direct.severity[0]);
		cr_expect_str_eq(through.sqlstate[0], direct.sqlstate[0]);
		cr_expect_str_eq(through.message[0], direct.message[0]);
		cr_expect(through.closed && !through.ready, "the pinned session did not end (running %d)", running);
		PQfinish(d);
		PQfinish(p);
	}
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ item 4: parked backends that died */

TestSuite(errors_parked, .fini = fini_errors, .timeout = 180);

#define PARKED_CLIENTS 4

#define APP_SESSIONS_SQL                                                                                     \
	"from pg_stat_activity where usename = 'app' and backend_type = 'client backend' and "                 \
	"application_name <> 'pgmux health check'"

/* Run sql on a client; false (logged) when it failed. */
static bool client_ran(PGconn *conn, const char *sql, int round, int client)
{
	PGresult *r = PQexec(conn, sql);
	bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
	if (!ok)
		cr_log_warn("round %d, client %d, \"%s\": %s", round, client, sql, PQerrorMessage(conn));
	PQclear(r);
	cr_assert_eq(PQstatus(conn), CONNECTION_OK, "round %d: client %d lost its session", round, client);
	return ok;
}

/*
 * Every client opens a transaction at once, so that the pool has
 * PARKED_CLIENTS backends, then all end. Returns how many statements failed.
 */
static int fill_the_pool(PGconn **clients, int round)
{
	int failed = 0;
	for (int i = 0; i < PARKED_CLIENTS; i++)
		failed += !client_ran(clients[i], "begin", round, i);
	for (int i = 0; i < PARKED_CLIENTS; i++)
		failed += !client_ran(clients[i], "commit", round, i);
	return failed;
}

/* Run one transaction on each client; count those that failed. */
static int run_transactions(PGconn **clients, int round)
{
	int failed = 0;
	for (int i = 0; i < PARKED_CLIENTS; i++)
		failed += !client_ran(clients[i], "begin; select 1; commit", round, i);
	return failed;
}

/*
 * pg_terminate_backend() of every parked backend of the pool, then a
 * transaction on each client, five times over: none may fail. With
 * server_check_delay = 0 each backend is looked at before it is lent.
 */
Test(errors_parked, terminated_parked_backends_fail_no_transaction)
{
	start_errors_pgmux("transaction", PARKED_CLIENTS, "server_check_delay = 0\nmax_idle_connections_percent = 100");
	PGconn *super = h_connect_super_direct();
	PGconn *clients[PARKED_CLIENTS];
	int failed = 0, rounds = h_under_valgrind() ? 3 : 5;
	for (int i = 0; i < PARKED_CLIENTS; i++)
		clients[i] = h_app_session(&px, "disable", NULL);
	for (int round = 0; round < rounds; round++) {
		cr_assert_eq(fill_the_pool(clients, round), 0, "round %d: the pool could not be filled", round);
		char *n = h_value_ok(super, "select count(pg_terminate_backend(pid)) " APP_SESSIONS_SQL);
		cr_assert_gt(atoi(n), 0, "round %d: no parked backend to terminate", round);
		free(n);
		/* Gone from the server: their FATAL and their end are on pgmux's sockets, read or not. */
		cr_assert(h_poll_value(super, "select count(*) " APP_SESSIONS_SQL, "0", h_scaled_ms(5000)),
			  "round %d: the terminated backends did not go", round);
		failed += run_transactions(clients, round);
	}
	cr_log_info("%d rounds of %d transactions after pg_terminate_backend of every parked backend: %d failed",
		    rounds, PARKED_CLIENTS, failed);
	cr_expect_eq(failed, 0, "%d transactions failed on backends that died while parked", failed);
	for (int i = 0; i < PARKED_CLIENTS; i++)
		PQfinish(clients[i]);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

static void drop_idle_database(void)
{
	PGconn *super = h_connect_super_direct();
	PQclear(PQexec(super, "drop database if exists errors_idle with (force)"));
	PQfinish(super);
	h_teardown();
}

/*
 * idle_session_timeout = 1s, set on the server (for a database of the
 * test's own, so nothing else is affected): a backend parked for a second
 * ends its session. Clients come back after 0.9 to 1.1 s, around the moment
 * their backends end: none of their transactions may fail.
 */
Test(errors_parked, idle_session_timeout_on_the_server_fails_no_transaction, .fini = drop_idle_database)
{
	PGconn *super = h_connect_super_direct();
	PQclear(PQexec(super, "drop database if exists errors_idle with (force)"));
	h_exec_ok(super, "create database errors_idle");
	h_exec_ok(super, "alter database errors_idle set idle_session_timeout = '1s'");
	start_errors_pgmux("transaction", PARKED_CLIENTS, "max_idle_connections_percent = 100");
	PGconn *clients[PARKED_CLIENTS];
	int failed = 0, rounds = 0;
	for (int i = 0; i < PARKED_CLIENTS; i++) {
		clients[i] = h_app_session(&px, "disable", "dbname=errors_idle");
		h_expect_value(clients[i], "show idle_session_timeout", "1s");
	}
	for (int pause = 950; pause <= 1050; pause += 50, rounds++) {
		failed += fill_the_pool(clients, rounds);
		h_sleep_ms(pause);
		failed += run_transactions(clients, rounds);
	}
	int resent = h_file_count(px.logfile, "first statements go to another backend");
	cr_log_info("%d rounds of %d transactions, 0.95 to 1.05 s after the last, with idle_session_timeout = 1s: "
		    "%d failed, %d sent again to another backend",
		    rounds, PARKED_CLIENTS, failed, resent);
	cr_expect_eq(failed, 0, "%d transactions failed on backends that idle_session_timeout ended", failed);
	for (int i = 0; i < PARKED_CLIENTS; i++)
		PQfinish(clients[i]);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * The moment item 4 is about, made to happen on purpose. pgmux is stopped
 * (SIGSTOP) while the client's next statement reaches its socket and then
 * the client's parked backend ends for idle_session_timeout; when pgmux goes
 * on, it reads the statement first (it came first), lends the backend (idle
 * for less than server_check_delay, so it is not looked at), sends the
 * statement, and only then reads the server's FATAL, which came before any
 * answer: nothing ran, and the statement goes to another backend. A batch
 * pgmux may not send again (a named Parse) fails instead, with the server's
 * SQLSTATE, and the session goes on.
 */
static void backend_times_out_under_a_stopped_pgmux(PGconn *conn, void (*send)(PGconn *))
{
	/* The backend parks now; idle_session_timeout (1 s) starts. */
	h_expect_value(conn, "select 'parked'", "parked");
	/* pgmux parks it just after the answer went: not stopped before that. */
	h_sleep_ms(100);
	cr_assert_eq(kill(px.pid, SIGSTOP), 0);
	h_sleep_ms(100);
	send(conn);
	h_sleep_ms(1500);
	cr_assert_eq(kill(px.pid, SIGCONT), 0);
}

static void send_query(PGconn *conn)
{
	cr_assert_eq(PQsendQuery(conn, "select 'resent'"), 1, "%s", PQerrorMessage(conn));
}

static void send_unnamed_extended(PGconn *conn)
{
	const char *values[] = {"resent"};
	cr_assert_eq(PQsendQueryParams(conn, "select $1::text", 1, NULL, values, NULL, NULL, 0), 1, "%s",
		     PQerrorMessage(conn));
}

static void send_named_parse(PGconn *conn)
{
	cr_assert_eq(PQsendPrepare(conn, "named", "select 'resent'", 0, NULL), 1, "%s", PQerrorMessage(conn));
}

Test(errors_parked, a_batch_sent_to_a_backend_that_timed_out_goes_to_another, .fini = drop_idle_database)
{
	if (h_under_valgrind())
		cr_skip_test("the moments are too short for pgmux under valgrind");
	PGconn *super = h_connect_super_direct();
	PQclear(PQexec(super, "drop database if exists errors_idle with (force)"));
	h_exec_ok(super, "create database errors_idle");
	h_exec_ok(super, "alter database errors_idle set idle_session_timeout = '1s'");
	h_wait_no_app_backends();
	struct pgmux_options o;
	char metrics[64];
	int metrics_port = h_free_port();
	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.max_connections = 2;
	o.workers = 1; /* the client's socket and its backend's on one loop, read in the order they became ready */
	o.admin_users = h_env()->superuser;
	snprintf(metrics, sizeof(metrics), "metrics_port = %d\n", metrics_port);
	o.extra_pgmux = metrics;
	cr_assert(pgmux_start(&px, &o), "pgmux did not start (config %s)", px.config);
	PGconn *c = h_app_session(&px, "disable", "dbname=errors_idle");
	PGconn *admin = h_admin_session(&px);
	cr_expect_eq(h_admin_stat(admin, "resends"), 0);

	static void (*const resendable[])(PGconn *) = {send_query, send_unnamed_extended};
	for (size_t i = 0; i < sizeof(resendable) / sizeof(resendable[0]); i++) {
		backend_times_out_under_a_stopped_pgmux(c, resendable[i]);
		PGresult *r = h_get_result(c, h_scaled_ms(10000));
		cr_assert_not_null(r, "case %zu: no answer", i);
		cr_expect_eq(PQresultStatus(r), PGRES_TUPLES_OK, "case %zu failed: %s", i, PQresultErrorMessage(r));
		if (PQresultStatus(r) == PGRES_TUPLES_OK)
			cr_expect_str_eq(PQgetvalue(r, 0, 0), "resent");
		PQclear(r);
		while ((r = h_get_result(c, h_scaled_ms(5000))) != NULL)
			PQclear(r);
		cr_expect(h_file_wait_count(px.logfile, "first statements go to another backend", (int)i + 1,
					    h_scaled_ms(5000)),
			  "case %zu: pgmux did not send the batch again", i);
	}

	/* A named Parse: the session holds the statement once it is sent; pgmux does not send it again. */
	backend_times_out_under_a_stopped_pgmux(c, send_named_parse);
	PGresult *r = h_get_result(c, h_scaled_ms(10000));
	cr_assert_not_null(r, "no answer to the Parse");
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "the Parse did not fail");
	cr_expect_str_eq(state ? state : "", "57P05", "%s", PQresultErrorMessage(r));
	PQclear(r);
	while ((r = h_get_result(c, h_scaled_ms(5000))) != NULL)
		PQclear(r);
	cr_expect_eq(h_file_count(px.logfile, "first statements go to another backend"), 2,
		     "a named Parse was sent again");
	/* SHOW STATS and /metrics count the two batches sent again. */
	cr_expect_eq(h_admin_stat(admin, "resends"), 2);
	char *body = h_scrape(metrics_port);
	cr_expect_eq(h_sample(body, "pgmux_resends_total"), 2, "pgmux_resends_total in the scrape");
	free(body);
	PQfinish(admin);
	cr_assert_eq(PQstatus(c), CONNECTION_OK, "the session ended");
	h_expect_value(c, "select 'goes on'", "goes on");
	PQfinish(c);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}
