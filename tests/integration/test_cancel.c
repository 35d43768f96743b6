/*
 * test_cancel.c: cancel requests and the statements pgmux cancels itself. A
 * CancelRequest (psql's SIGINT, libpq's PQcancel) reaches the statement
 * that runs for the client, also while pgmux prepares the backend it
 * borrowed, and also while the client only waits for one; and the
 * statement of a client that leaves in the middle of it is cancelled
 * rather than left to run to its end on the backend.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct pgmux px;

/* TLS offered, not required, SCRAM, session pooling. */
static void start_session_pooling(void)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	pgmux_start_ok(&px, &o);
}

TestSuite(cancel, .fini = h_teardown, .timeout = 120);

Test(cancel, psql_sigint_sends_cancel_request)
{
	start_session_pooling();
	PGconn *super = h_connect_super_direct();
	struct h_cmd c;
	cr_assert(h_app_psql_start(&c, &px, "require", "select pg_sleep(20)"));
	bool active = h_poll_value(super, H_SLEEP_ACTIVE_SQL(20), "1", h_scaled_ms(10000));
	if (!active) {
		h_cmd_kill(&c);
		h_cmd_dump(&c, "psql");
	}
	cr_assert(active, "pg_sleep(20) never became active in pg_stat_activity");

	kill(c.pid, SIGINT);
	bool ended = h_cmd_wait(&c, h_scaled_ms(2000));
	if (!ended)
		h_cmd_kill(&c);
	cr_assert(ended, "psql did not end within 2 s of SIGINT (CancelRequest not forwarded?)");
	cr_assert(c.status > 0 && c.status < 128, "psql status %d", c.status);
	cr_assert(strstr(c.err, "canceling statement due to user request") != NULL,
		  "psql's stderr: %s", c.err);
	h_cmd_free(&c);
	/* the backend is no longer sleeping */
	cr_assert(h_poll_value(super, H_SLEEP_ACTIVE_SQL(20), "0", h_scaled_ms(5000)));
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

Test(cancel, libpq_pqcancel_gives_57014)
{
	start_session_pooling();
	PGconn *super = h_connect_super_direct();
	PGconn *conn = h_app_session(&px, "require", NULL);
	cr_assert_eq(PQsendQuery(conn, "select pg_sleep(20)"), 1, "%s", PQerrorMessage(conn));
	cr_assert(h_poll_value(super, H_SLEEP_ACTIVE_SQL(20), "1", h_scaled_ms(10000)),
		  "pg_sleep(20) never became active");

	PGcancel *cancel = PQgetCancel(conn);
	cr_assert_not_null(cancel);
	char errbuf[256];
	cr_assert_eq(PQcancel(cancel, errbuf, sizeof(errbuf)), 1, "PQcancel: %s", errbuf);
	PQfreeCancel(cancel);

	PGresult *r = h_get_result(conn, h_scaled_ms(1000));
	cr_assert_not_null(r, "no result within 1 s of the cancel request");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "status %s",
		     PQresStatus(PQresultStatus(r)));
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert_not_null(state);
	cr_assert_str_eq(state, "57014");
	PQclear(r);
	h_drain_results(conn);

	/* The session survives a cancelled query. */
	h_expect_value(conn, "select 'still here'", "still here");
	PQfinish(conn);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * A cancel that arrives while pgmux prepares the borrowed backend (here it
 * runs init_query again after the client's DISCARD ALL) must not cancel
 * pgmux's own query: that would fail the preparation and end the session.
 * pgmux holds the cancel until the client's statement is sent, so the
 * statement is what gets cancelled (57014), and the session goes on.
 */
Test(cancel, while_the_backend_is_prepared_cancels_the_statement)
{
	pgmux_start_transaction(&px, 1, NULL, "init_query = SELECT pg_sleep(1)");
	PGconn *super = h_connect_super_direct();
	PGconn *a = h_app_session(&px, "disable", NULL);

	h_exec_ok(a, "discard all");
	cr_assert_eq(PQsendQuery(a, "select pg_sleep(30)"), 1, "%s", PQerrorMessage(a));
	cr_assert(h_poll_value(super,
			       "select count(*) from pg_stat_activity where state = 'active' and "
			       "query like 'SELECT pg_sleep(1);%'",
			       "1", h_scaled_ms(10000)),
		  "pgmux did not run init_query again before the client's statement");

	PGcancel *cancel = PQgetCancel(a);
	char errbuf[256];
	cr_assert_not_null(cancel);
	cr_assert_eq(PQcancel(cancel, errbuf, sizeof(errbuf)), 1, "PQcancel: %s", errbuf);
	PQfreeCancel(cancel);

	PGresult *r = h_get_result(a, h_scaled_ms(10000));
	cr_assert_not_null(r, "no result within 10 s of the cancel request");
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	if (PQresultStatus(r) != PGRES_FATAL_ERROR || state == NULL || strcmp(state, "57014") != 0)
		h_dump_current_logs();
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "status %s", PQresStatus(PQresultStatus(r)));
	cr_assert_str_eq(state ? state : "", "57014", "%s", PQresultErrorMessage(r));
	PQclear(r);
	h_drain_results(a);
	cr_assert_eq(PQstatus(a), CONNECTION_OK, "the session ended: %s", PQerrorMessage(a));
	h_expect_value(a, "select 'still here'", "still here");
	PQfinish(a);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * A psql killed in the middle of its statement (session pooling):
 * PostgreSQL would run the statement to its end, pgmux cancels it, and the
 * other sessions go on.
 */
Test(cancel, client_killed_mid_query_does_not_harm_others)
{
	start_session_pooling();
	PGconn *super = h_connect_super_direct();
	PGconn *other = h_app_session(&px, "require", NULL);
	h_expect_value(other, "select 1", "1");

	struct h_cmd c;
	cr_assert(h_app_psql_start(&c, &px, "require", "select pg_sleep(60)"));
	cr_assert(h_poll_value(super, H_SLEEP_ACTIVE_SQL(60), "1", h_scaled_ms(10000)),
		  "pg_sleep(60) never became active");
	h_cmd_kill(&c);
	h_cmd_free(&c);

	/* PostgreSQL would run the statement to its end: pgmux cancels it. */
	bool ended = h_poll_value(super, H_SLEEP_ACTIVE_SQL(60), "0", h_scaled_ms(5000));
	if (!ended) {
		pgmux_dump_logs(&px);
		h_exec_ok(super, "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app' and "
				 "query like 'select pg_sleep(60)%'");
	}
	cr_assert(ended, "the killed client's pg_sleep(60) still ran 5 s after pgmux closed its backend");
	h_expect_value(other, "select 'other session fine'", "other session fine");
	h_expect_serves_new_client(&px);
	PQfinish(other);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * A client that leaves while its statement runs: pgmux closes the backend
 * and cancels the statement, which PostgreSQL would otherwise run to its end
 * (it does not watch the socket during a query). The pool's only slot is
 * free again for the next client.
 */
Test(cancel, client_gone_mid_statement_cancels_it)
{
	pgmux_start_transaction(&px, 1, NULL, NULL);
	PGconn *super = h_connect_super_direct();
	PGconn *a = h_app_session(&px, "disable", NULL);
	int pid = h_backend_pid(a);
	cr_assert_eq(PQsendQuery(a, "select pg_sleep(60)"), 1, "%s", PQerrorMessage(a));
	char sql[200];
	snprintf(sql, sizeof(sql), "select count(*) from pg_stat_activity where pid = %d and state = 'active'", pid);
	cr_assert(h_poll_value(super, sql, "1", h_scaled_ms(5000)), "pg_sleep(60) never ran on backend %d", pid);
	PQfinish(a);

	bool gone = h_wait_backend_gone(super, pid, 5000);
	if (!gone) {
		pgmux_dump_logs(&px);
		snprintf(sql, sizeof(sql), "select pg_terminate_backend(%d)", pid);
		h_exec_ok(super, sql);
	}
	cr_assert(gone, "backend %d still ran pg_sleep(60) 5 s after its client left", pid);
	PGconn *b = h_app_session(&px, "disable", NULL);
	h_expect_value(b, "select 'served'", "served");
	PQfinish(b);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * A batch waits for the only backend and its wait is cancelled: it fails
 * (57014) and pgmux drops the rest of it, up to the next Sync. Returns the
 * session, still in that batch; *blocker holds the backend until
 * blocker_end().
 */
static int cancelled_batch(int *blocker)
{
	uint32_t key[2];
	int fd = h_raw_session(&px, "fuzz", key);
	struct h_buf m = {0};
	char type;
	char *body;
	size_t len;

	*blocker = h_raw_blocker_begin(&px);
	/*
	 * The unnamed statement: a named one pgmux would prepare without a
	 * backend (reply_answer_idle()). The Flush makes it a batch PostgreSQL
	 * would answer, which pgmux borrows a backend for (relay_batch_ready()).
	 */
	h_msg_parse(&m, "", "select 1");
	h_msg_raw(&m, 'H', "", 0);
	h_send_buf(fd, &m);
	h_buf_free(&m);
	h_sleep_ms(h_scaled_ms(100));
	h_raw_cancel(px.port, key);
	cr_assert_eq(h_raw_read_message(fd, &type, &body, &len, h_scaled_ms(3000)), H_MSG_OK, "no answer to the cancel");
	cr_assert(type == 'E' && strcmp(h_error_field(body, len, 'C'), "57014") == 0,
		  "the cancelled wait did not fail with 57014");
	free(body);
	return fd;
}

/*
 * Found by the protocol fuzz test (test_fuzz.c). While pgmux dropped the
 * rest of such a batch, a Terminate was left for a handler that was never
 * called (the session hung), and a message with a length under 4 or over
 * max_packet_size was waited on instead of refused.
 */
Test(cancel, terminate_or_bad_header_after_a_cancelled_wait)
{
	struct h_buf m = {0};
	int blocker, fd;

	pgmux_start_one_backend(&px, NULL);
	fd = cancelled_batch(&blocker);
	h_msg_raw(&m, 'X', "", 0);
	h_send_buf(fd, &m);
	h_buf_free(&m);
	cr_assert(h_raw_wait_closed(fd, h_scaled_ms(3000)), "a Terminate did not end the session");
	close(fd);
	h_raw_blocker_end(blocker);

	fd = cancelled_batch(&blocker);
	cr_assert(h_raw_send(fd, "Q\0\0\0\2", 5));
	h_raw_expect_fatal(fd, "08P01", NULL, NULL, "a length of 2 while a failed batch is dropped");
	h_raw_blocker_end(blocker);

	fd = cancelled_batch(&blocker);
	cr_assert(h_raw_send(fd, "Q\x7f\xff\xff\xff", 5));
	h_raw_expect_fatal(fd, "54000", NULL, NULL, "a length over max_packet_size while a failed batch is dropped");
	h_raw_blocker_end(blocker);
	h_stop_expect_clean_exit(&px);
}
