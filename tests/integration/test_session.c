/*
 * test_session.c: a client's session through pgmux: notices and errors,
 * startup parameters, pgmux's own BackendKeyData, a backend lost in the
 * middle of a message, COPY in both directions, and session pooling
 * (sequential sessions on reset backends, a client that waits for the only
 * backend, state kept without pinning). Transaction pooling is
 * test_txn.c's; the session state it carries, test_parameters.c's.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct pgmux px;

/* TLS offered, not required, SCRAM, session pooling; max_connections backends unless 0. */
static void start_session_pooling(int max_connections)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	if (max_connections > 0)
		o.max_connections = max_connections;
	pgmux_start_ok(&px, &o);
}

static void init_tls_optional(void)
{
	start_session_pooling(0);
}

/* ================================================================ a session */

TestSuite(session, .fini = h_teardown, .timeout = 120);

Test(session, notice_then_error_then_query)
{
	init_tls_optional();
	PGconn *conn = h_app_session(&px, "require", NULL);
	struct h_notices n = {0};
	PQsetNoticeReceiver(conn, h_record_notices, &n);

	PGresult *r = PQexec(conn, "DO $$BEGIN RAISE NOTICE 'hello %', 42; END$$");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
	PQclear(r);
	cr_assert_eq(n.count, 1, "expected one notice, got %d", n.count);
	cr_assert_str_eq(n.message, "hello 42");

	r = PQexec(conn, "select 1/0");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22012");
	PQclear(r);
	cr_assert_eq(PQstatus(conn), CONNECTION_OK);

	h_expect_value(conn, "select 2", "2");
	/* an error inside a transaction block, then ROLLBACK, then more work */
	PQclear(PQexec(conn, "begin"));
	r = PQexec(conn, "select 1/0");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	PQclear(r);
	cr_assert_eq(PQtransactionStatus(conn), PQTRANS_INERROR);
	PQclear(PQexec(conn, "rollback"));
	cr_assert_eq(PQtransactionStatus(conn), PQTRANS_IDLE);
	h_expect_value(conn, "select 3", "3");
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

Test(session, startup_parameters_are_kept)
{
	init_tls_optional();
	PGconn *super = h_connect_super_direct();
	PGconn *conn = h_app_session(&px, "require", "application_name=foo options='-c statement_timeout=1234'");
	h_expect_value(conn, "show application_name", "foo");
	h_expect_value(conn, "show statement_timeout", "1234ms");
	cr_assert_str_eq(PQparameterStatus(conn, "application_name"), "foo");

	char *pid = h_value_ok(conn, "select pg_backend_pid()");
	char sql[200];
	snprintf(sql, sizeof(sql), "select application_name from pg_stat_activity where pid = %s", pid);
	h_expect_value(super, sql, "foo");
	free(pid);
	PQfinish(conn);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

Test(session, backend_key_is_pgmux_own)
{
	init_tls_optional();
	PGconn *conn = h_app_session(&px, "require", NULL);
	char *pid = h_value_ok(conn, "select pg_backend_pid()");
	cr_assert_neq(PQbackendPID(conn), atoi(pid),
		      "pgmux passed the backend's own pid (%d) through in BackendKeyData", atoi(pid));
	cr_assert_neq(PQbackendPID(conn), 0);
	free(pid);
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

/*
 * The backend dies in the middle of a 16 MB DataRow: the client does not
 * read, so PostgreSQL blocks in the middle of sending it, and is then
 * terminated (it sends no error inside a message). When the client reads
 * again it must get the part of the row pgmux had, then EOF, with nothing
 * but the value's bytes: an ErrorResponse there would be taken for part of
 * the row.
 */
Test(session, backend_lost_inside_a_message_gets_no_error_appended)
{
	enum { VALUE = 16 * 1024 * 1024 };
	struct pgmux_options o;
	int fd;

	/* Trust, so that a raw session logs in; the server side as by default (TLS where offered). */
	pgmux_options_default(&o);
	o.tls = false;
	o.client_auth = "trust";
	pgmux_start_ok(&px, &o);
	fd = h_raw_session(&px, NULL, NULL);
	struct h_buf q = {0};
	h_msg_query(&q, "select repeat('x', 16777216)");
	h_send_buf(fd, &q);
	h_buf_free(&q);

	/* RowDescription, then the DataRow's header: its length, one column, the value's length. */
	char type;
	char *body;
	size_t blen;
	cr_assert_eq(h_raw_read_message(fd, &type, &body, &blen, h_scaled_ms(10000)), H_MSG_OK);
	free(body);
	cr_assert_eq(type, 'T');
	uint8_t head[11];
	cr_assert_eq(h_raw_read(fd, head, sizeof(head), h_scaled_ms(10000)), (ssize_t)sizeof(head));
	cr_assert_eq(head[0], 'D');
	cr_assert_eq(h_get_u32(head + 1), 4 + 2 + 4 + VALUE);
	cr_assert_eq(h_get_u32(head + 7), VALUE);

	/* The buffers fill up and the backend blocks in its send; then it is terminated. */
	PGconn *super = h_connect_super_direct();
	h_sleep_ms(300);
	const char *mine = "select count(*) from pg_stat_activity where usename = 'app' and query like 'select repeat%'";
	h_exec_ok(super, "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app' and "
			 "query like 'select repeat%'");
	cr_assert(h_poll_value(super, mine, "0", h_scaled_ms(5000)), "the backend did not end");
	PQfinish(super);

	/* Everything pgmux sends now: only 'x' bytes, fewer than the value's length, then EOF. */
	size_t got = 0, bad_at = 0;
	bool bad = false;
	static char chunk[65536];
	ssize_t n;
	while ((n = h_raw_read(fd, chunk, sizeof(chunk), h_scaled_ms(10000))) > 0) {
		for (ssize_t i = 0; i < n && !bad; i++)
			if (chunk[i] != 'x') {
				bad = true;
				bad_at = got + (size_t)i;
			}
		got += (size_t)n;
	}
	close(fd);
	cr_assert_eq(n, 0, "the stream did not end with EOF (%zd)", n);
	cr_assert(!bad, "byte %zu of the value is not 'x': something was appended inside the DataRow", bad_at);
	cr_assert_lt(got, (size_t)VALUE, "the whole value arrived (%zu bytes): the backend was not cut off", got);
	cr_log_info("backend lost mid-message: the session was closed %zu bytes into a %d-byte value", got, VALUE);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ session pooling */

TestSuite(session_pooling, .fini = h_teardown, .timeout = 120);

Test(session_pooling, sequential_sessions_reuse_reset_backends)
{
	start_session_pooling(2);
	int pids[5];
	for (int i = 0; i < 5; i++) {
		PGconn *conn = h_app_session(&px, "require", NULL);
		if (i == 0) {
			PGresult *r = PQexec(conn, "create temp table reuse_marker (x int)");
			cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
			PQclear(r);
			PQclear(PQexec(conn, "set work_mem = '7MB'"));
			h_expect_value(conn, "show work_mem", "7MB");
		} else {
			h_expect_value(conn, "select coalesce(to_regclass('pg_temp.reuse_marker')::text, 'gone')", "gone");
			h_expect_value(conn, "show work_mem", "4MB");
		}
		char *pid = h_value_ok(conn, "select pg_backend_pid()");
		pids[i] = atoi(pid);
		free(pid);
		PQfinish(conn);
	}
	int distinct = 0;
	for (int i = 0; i < 5; i++) {
		bool seen = false;
		for (int j = 0; j < i; j++)
			seen |= pids[j] == pids[i];
		distinct += !seen;
	}
	cr_assert_leq(distinct, 2, "5 sessions used %d backends with max_connections=2 (pids %d %d %d %d %d)",
		      distinct, pids[0], pids[1], pids[2], pids[3], pids[4]);

	PGconn *super = h_connect_super_direct();
	int n = h_app_backends(super);
	cr_assert_leq(n, 2, "%d backend connections for app with max_connections=2", n);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

Test(session_pooling, second_client_waits_for_the_first)
{
	start_session_pooling(1);
	PGconn *first = h_app_session(&px, "require", NULL);
	h_expect_value(first, "select 1", "1");

	struct h_cmd c;
	cr_assert(h_app_psql_start(&c, &px, "require", "select 'second got in'"));
	/* Give the second client time to be served if pgmux wrongly lets it through. */
	bool ended_early = h_cmd_wait(&c, h_scaled_ms(1000));
	if (ended_early)
		h_cmd_dump(&c, "second psql");
	cr_assert(!ended_early, "the second client did not wait for the only backend");

	PGconn *super = h_connect_super_direct();
	int n = h_app_backends(super);
	cr_assert_eq(n, 1, "max_connections=1 but app has %d backends", n);
	PQfinish(super);

	h_expect_value(first, "select 'first still works'", "first still works");
	PQfinish(first);
	h_expect_cmd_output(&c, h_scaled_ms(10000), "second got in\n", "the second client (served once the first left)");
	h_stop_expect_clean_exit(&px);
}

/* Session pooling keeps a client's state on its backend, which is its own: nothing to pin. */
Test(session_pooling, keeps_state_without_pinning)
{
	h_wait_no_app_backends();
	start_session_pooling(2);

	PGconn *a = h_app_session(&px, "disable", NULL), *b = h_app_session(&px, "disable", NULL);
	int pid = h_backend_pid(a);
	h_exec_ok(a, "set search_path = pg_catalog, public");
	h_exec_ok(a, "set work_mem = '7MB'");
	h_exec_ok(a, "create temp table st (x int)");
	for (int i = 0; i < 10; i++) {
		h_expect_value(b, "select 1", "1");
		h_expect_value(a, "show search_path", "pg_catalog, public");
		h_expect_value(a, "show work_mem", "7MB");
		h_expect_value(a, "select count(*) from st", "0");
		cr_assert_eq(h_backend_pid(a), pid);
	}
	h_expect_value(b, "show search_path", "\"$user\", public");
	h_expect_log_lacks(&px, "session pinned");
	PQfinish(a);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ COPY */

TestSuite(copy, .init = init_tls_optional, .fini = h_teardown, .timeout = 120);

#define COPY_ROWS 10000

Test(copy, libpq_copy_in_and_out_10000_rows)
{
	PGconn *conn = h_app_session(&px, "require", NULL);
	PGresult *r = PQexec(conn, "create temp table copy_t (id int primary key, v text)");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
	PQclear(r);

	r = PQexec(conn, "copy copy_t from stdin");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN, "%s", PQerrorMessage(conn));
	PQclear(r);
	long long sum;
	uint64_t sent_hash = h_copy_rows_in(conn, COPY_ROWS, &sum);
	r = PQgetResult(conn);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "COPY FROM failed: %s", PQerrorMessage(conn));
	cr_assert_str_eq(PQcmdTuples(r), "10000");
	PQclear(r);
	while ((r = PQgetResult(conn)) != NULL)
		PQclear(r);

	char want_sum[64];
	snprintf(want_sum, sizeof(want_sum), "%d|%lld", COPY_ROWS, sum);
	h_expect_value(conn, "select count(*) || '|' || sum(id) from copy_t", want_sum);

	r = PQexec(conn, "copy (select * from copy_t order by id) to stdout");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_OUT, "%s", PQerrorMessage(conn));
	PQclear(r);
	uint64_t got_hash = H_FNV1A_START;
	int rows = 0;
	char *buf;
	int n;
	while ((n = PQgetCopyData(conn, &buf, 0)) > 0) {
		got_hash = h_fnv1a(got_hash, buf, (size_t)n);
		rows++;
		PQfreemem(buf);
	}
	cr_assert_eq(n, -1, "COPY TO STDOUT ended with %d: %s", n, PQerrorMessage(conn));
	r = PQgetResult(conn);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
	PQclear(r);
	while ((r = PQgetResult(conn)) != NULL)
		PQclear(r);
	cr_assert_eq(rows, COPY_ROWS);
	cr_assert_eq(got_hash, sent_hash, "the rows read back differ from the rows written");

	/* A CopyFail ends the COPY with an error and leaves the session usable. */
	r = PQexec(conn, "copy copy_t from stdin");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN);
	PQclear(r);
	cr_assert_eq(PQputCopyData(conn, "20001\tpartial\n", 14), 1);
	cr_assert_eq(PQputCopyEnd(conn, "client gave up"), 1);
	r = PQgetResult(conn);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "57014");
	PQclear(r);
	while ((r = PQgetResult(conn)) != NULL)
		PQclear(r);
	h_expect_value(conn, "select count(*) from copy_t", "10000");
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

Test(copy, psql_backslash_copy_both_ways)
{
	char data[600];
	snprintf(data, sizeof(data), "%s/rows.txt", h_test_dir());
	FILE *f = fopen(data, "w");
	cr_assert_not_null(f);
	for (int i = 1; i <= COPY_ROWS; i++)
		fprintf(f, "%d\n", i);
	fclose(f);

	/* psql's \copy streams the file through COPY FROM STDIN / TO STDOUT */
	char script[600];
	snprintf(script, sizeof(script), "%s/copy.sql", h_test_dir());
	f = fopen(script, "w");
	cr_assert_not_null(f);
	fprintf(f, "create temp table t (a int);\n\\copy t from '%s'\nselect count(*) || '|' || sum(a) from t;\n"
		   "\\copy (select a * 2 from t order by a) to '%s.out'\n", data, data);
	fclose(f);

	char *ci = h_conninfo(px.port, "app", NULL, "require", NULL);
	const char *args[] = {"-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", script, NULL};
	struct h_cmd c;
	int st = h_psql_run(&c, ci, h_env()->apppass, args);
	free(ci);
	if (st != 0)
		h_cmd_dump(&c, "psql");
	cr_assert_eq(st, 0);
	cr_assert_str_eq(c.out, "10000|50005000\n");
	h_cmd_free(&c);

	char outpath[700];
	snprintf(outpath, sizeof(outpath), "%s.out", data);
	f = fopen(outpath, "r");
	cr_assert_not_null(f, "\\copy to a file wrote nothing");
	long long sum = 0;
	int rows = 0, v;
	while (fscanf(f, "%d", &v) == 1) {
		sum += v;
		rows++;
	}
	fclose(f);
	cr_assert_eq(rows, COPY_ROWS);
	cr_assert_eq(sum, 2LL * 50005000);
	h_stop_expect_clean_exit(&px);
}
