/*
 * test_prepared.c: protocol-level prepared statements in transaction
 * pooling. A client's statements follow it to every backend under names of
 * pgmux's own (max_prepared_statements evicts and prepares again; Describe
 * works on another backend; two names for one text share one server-side
 * statement), a Parse outside a transaction is answered without a backend
 * (issue 15), and batches that fail, pipelined or not, leave the client's
 * statements exactly as PostgreSQL would: the cases the protocol fuzz test
 * found, each answered byte for byte as PostgreSQL answers it.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct pgmux px;

/* A session through pgmux without TLS, that must log in. */
static PGconn *app(void)
{
	return h_app_session(&px, "disable", NULL);
}

/* ================================================================ statements that follow their client */

TestSuite(prepared, .fini = h_teardown, .timeout = 120);

/* Protocol-level prepared statements across backends; b has its own "s1". */
static int prepared_step(PGconn *a, int step, void *arg)
{
	char param[16], want[16];
	snprintf(param, sizeof(param), "%d", step * 7);
	snprintf(want, sizeof(want), "%d", step * 7 + 1);
	char *v = h_prepared_value_ok(a, "s1", param);
	cr_assert_str_eq(v, want, "s1(%s) returned %s", param, v);
	free(v);
	v = h_prepared_value_ok(a, "pid", NULL);
	int pid = atoi(v);
	free(v);
	return pid;
}

static void prepared_while_held(PGconn *b, int round, void *arg)
{
	char param[16], want[16];
	snprintf(param, sizeof(param), "%d", round);
	snprintf(want, sizeof(want), "%d", round * 100);
	char *v = h_prepared_value_ok(b, "s1", param);
	cr_assert_str_eq(v, want, "the other client's own s1(%s) returned %s", param, v);
	free(v);
}

Test(prepared, prepared_statements_follow_the_client)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *a = app(), *b = app(), *c = app();
	h_prepare_ok(a, "s1", "select $1::int + 1");
	h_prepare_ok(a, "pid", "select pg_backend_pid()");
	h_prepare_ok(b, "s1", "select $1::int * 100");
	struct h_rounds ra;
	h_switching_rounds(a, b, c, 10, prepared_step, prepared_while_held, NULL, &ra);
	/* The same again inside transactions, and through PQexecParams in between. */
	for (int i = 0; i < 5; i++) {
		h_exec_ok(a, "begin");
		(void)prepared_step(a, 100 + i, NULL);
		const char *v[1] = {"40"};
		PGresult *r = PQexecParams(a, "select $1::int + 2", 1, NULL, v, NULL, NULL, 0);
		cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(a));
		cr_assert_str_eq(PQgetvalue(r, 0, 0), "42");
		PQclear(r);
		h_exec_ok(a, "commit");
	}
	/* The client's names never reach the server, and so cannot clash with other clients'. */
	h_expect_value(a, "select count(*) from pg_prepared_statements where name in ('s1', 'pid')", "0");
	h_expect_log_lacks(&px, "session pinned");
	h_finish_three(&px, a, b, c);
}

/* max_prepared_statements = 2 with five statements in use: evicted ones come back unseen. */
static int evict_step(PGconn *a, int step, void *arg)
{
	bool in_transaction = step % 3 == 2;
	if (in_transaction)
		h_exec_ok(a, "begin");
	for (int k = 1; k <= 5; k++) {
		char name[8], param[16], want[16];
		snprintf(name, sizeof(name), "s%d", k);
		snprintf(param, sizeof(param), "%d", step);
		snprintf(want, sizeof(want), "%d", step + k);
		char *v = h_prepared_value_ok(a, name, param);
		cr_assert_str_eq(v, want, "%s(%s) returned %s at step %d", name, param, v, step);
		free(v);
	}
	PGresult *r = PQexecParams(a,
				   "select pg_backend_pid(), count(*), count(*) filter (where name not like 'pgmux\\_%') "
				   "from pg_prepared_statements",
				   0, NULL, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(a));
	int pid = atoi(PQgetvalue(r, 0, 0));
	cr_assert_leq(atoi(PQgetvalue(r, 0, 1)), 2, "backend %d holds %s prepared statements, max_prepared_statements = 2",
		      pid, PQgetvalue(r, 0, 1));
	cr_assert_str_eq(PQgetvalue(r, 0, 2), "0", "a prepared statement on the server has a client's name");
	PQclear(r);
	if (in_transaction)
		h_exec_ok(a, "commit");
	return pid;
}

Test(prepared, max_prepared_statements_evicts_and_prepares_again)
{
	pgmux_start_transaction(&px, 2, NULL, "max_prepared_statements = 2");
	PGconn *a = app(), *b = app(), *c = app();
	for (int k = 1; k <= 5; k++) {
		char name[8], sql[64];
		snprintf(name, sizeof(name), "s%d", k);
		snprintf(sql, sizeof(sql), "select $1::int + %d", k);
		h_prepare_ok(a, name, sql);
	}
	struct h_rounds ra;
	h_switching_rounds(a, b, c, 8, evict_step, NULL, NULL, &ra);
	h_finish_three(&px, a, b, c);
}

/* PQdescribePrepared on another backend; two names for the same SQL. */
Test(prepared, describe_after_switch_and_shared_statement)
{
	pgmux_start_transaction(&px, 2, NULL, NULL);
	PGconn *a = app(), *b = app(), *c = app();
	h_exec_ok(a, "begin");
	int prepared_on = h_backend_pid(a);
	h_prepare_ok(a, "d1", "select $1::int as a, $2::text as b, $1::int8 * 2 as c");
	int other = h_take_over_backend(a, prepared_on, b, c);
	/* c holds the backend d1 was prepared on: a is served the other one */
	h_exec_ok(a, "begin");
	cr_assert_eq(h_backend_pid(a), other);
	PGresult *r = PQdescribePrepared(a, "d1");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "PQdescribePrepared after a backend switch: %s",
		     PQerrorMessage(a));
	cr_assert_eq(PQnparams(r), 2);
	cr_assert_eq(PQparamtype(r, 0), 23u);
	cr_assert_eq(PQparamtype(r, 1), 25u);
	cr_assert_eq(PQnfields(r), 3);
	cr_assert_str_eq(PQfname(r, 0), "a");
	cr_assert_str_eq(PQfname(r, 1), "b");
	cr_assert_str_eq(PQfname(r, 2), "c");
	cr_assert_eq(PQftype(r, 0), 23u);
	cr_assert_eq(PQftype(r, 1), 25u);
	cr_assert_eq(PQftype(r, 2), 20u);
	PQclear(r);
	const char *v[2] = {"21", "x"};
	r = PQexecPrepared(a, "d1", 2, v, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(a));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "21");
	cr_assert_str_eq(PQgetvalue(r, 0, 1), "x");
	cr_assert_str_eq(PQgetvalue(r, 0, 2), "42");
	PQclear(r);
	h_exec_ok(a, "commit");
	h_exec_ok(c, "commit");

	/* Two client names, one SQL text: both work, and the server holds the statement once. */
	h_prepare_ok(a, "g1", "select $1::int * 3");
	h_prepare_ok(a, "g2", "select $1::int * 3");
	for (int i = 0; i < 3; i++) {
		char *x = h_prepared_value_ok(a, "g1", "5");
		cr_assert_str_eq(x, "15");
		free(x);
		x = h_prepared_value_ok(a, "g2", "6");
		cr_assert_str_eq(x, "18");
		free(x);
	}
	h_exec_ok(a, "begin");
	char *x = h_prepared_value_ok(a, "g1", "7");
	cr_assert_str_eq(x, "21");
	free(x);
	x = h_prepared_value_ok(a, "g2", "8");
	cr_assert_str_eq(x, "24");
	free(x);
	h_expect_value(a, "select count(*) from pg_prepared_statements where statement = 'select $1::int * 3'", "1");
	h_exec_ok(a, "commit");
	h_finish_three(&px, a, b, c);
}

/* ================================================================ a Parse outside a transaction */

/*
 * libpq's PQprepare() sends Parse and Sync and waits. pgbench -M prepared
 * calls it before a statement's first use, from a thread that drives several
 * connections: when those held every backend inside their transactions, the
 * thread waited here for a backend that only it could free (issue 15). Outside
 * a transaction pgmux answers a Parse, a Close and a Sync without a backend.
 */
/* A PQprepare() that must be answered within a second, while the only backend is held. */
static void prepare_while_held(PGconn *conn, const char *name, const char *sql)
{
	long long t0 = h_now_ms();

	h_prepare_ok(conn, name, sql);
	cr_assert_lt(h_now_ms() - t0, h_scaled_ms(1000), "PQprepare(\"%s\") waited for the held backend", name);
}

Test(prepared, prepare_is_answered_while_every_backend_is_held)
{
	PGconn *holder, *b, *c, *admin;
	char *v;

	pgmux_start_transaction(&px, 1, NULL, "connection_borrow_timeout = 20");
	holder = app();
	b = app();
	c = app();
	admin = h_admin_session(&px);

	/* No backend has seen this text: answered unjudged. */
	h_exec_ok(holder, "BEGIN");
	prepare_while_held(b, "plus_one", "SELECT $1::int + 1");
	cr_assert_eq(h_admin_stat(admin, "parses_answered_unjudged"), 1);
	h_exec_ok(holder, "COMMIT");
	v = h_prepared_value_ok(b, "plus_one", "41");
	cr_assert_str_eq(v, "42");
	free(v);

	/* Now a backend accepted it: another client's Parse of the same text is answered as known. */
	h_exec_ok(holder, "BEGIN");
	prepare_while_held(c, "mine", "SELECT $1::int + 1");
	cr_assert_eq(h_admin_stat(admin, "parses_answered_unjudged"), 1);
	cr_assert_eq(h_admin_stat(admin, "parses_answered_without_backend"), 2);
	/* Another text under another name, while still held: unjudged again. */
	prepare_while_held(c, "mine2", "SELECT $1::int + 2");
	cr_assert_eq(h_admin_stat(admin, "parses_answered_unjudged"), 2);
	h_exec_ok(holder, "COMMIT");
	v = h_prepared_value_ok(c, "mine2", "40");
	cr_assert_str_eq(v, "42");
	free(v);

	/* A text no backend judged that turns out bad: its first use gets the server's error, and keeps getting it. */
	h_exec_ok(holder, "BEGIN");
	prepare_while_held(b, "bad", "SELEC 1");
	h_exec_ok(holder, "COMMIT");
	for (int i = 0; i < 2; i++) {
		PGresult *r = PQexecPrepared(b, "bad", 0, NULL, NULL, NULL, 0);
		const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);

		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
		cr_assert(state && strcmp(state, "42601") == 0, "run %d of a bad statement: %s", i,
			  PQerrorMessage(b));
		PQclear(r);
	}
	/* The session is fine afterwards, and the good statement still works. */
	v = h_prepared_value_ok(b, "plus_one", "1");
	cr_assert_str_eq(v, "2");
	free(v);

	/* A name in use, while the backend is held: PostgreSQL's 42P05 at once, and the old statement stays. */
	h_exec_ok(holder, "BEGIN");
	{
		long long t0 = h_now_ms();
		PGresult *r = PQprepare(b, "plus_one", "SELECT $1::int + 1", 0, NULL);
		const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);

		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "a Parse of a name in use was accepted");
		cr_assert(state && strcmp(state, "42P05") == 0, "a name in use: %s", PQerrorMessage(b));
		cr_assert(strstr(PQerrorMessage(b), "prepared statement \"plus_one\" already exists") != NULL, "%s",
			  PQerrorMessage(b));
		PQclear(r);
		cr_assert_lt(h_now_ms() - t0, h_scaled_ms(1000), "the refusal waited for the held backend");
	}
	h_exec_ok(holder, "COMMIT");
	v = h_prepared_value_ok(b, "plus_one", "9");
	cr_assert_str_eq(v, "10");
	free(v);

	/* With the backend free, an unknown text is judged by it: a bad one fails at once, as directly. */
	{
		PGresult *r = PQprepare(b, "bad2", "SELEC 2", 0, NULL);

		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "a bad Parse with a free backend was not judged");
		PQclear(r);
	}
	cr_assert_eq(h_admin_stat(admin, "parses_answered_unjudged"), 3);
	PQfinish(admin);
	PQfinish(holder);
	PQfinish(b);
	PQfinish(c);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ batches that fail, and what they leave */

TestSuite(prepared_batches, .fini = h_teardown, .timeout = 120);

/*
 * Found by the protocol fuzz test (test_fuzz.c), like the rest of this
 * suite. A Close of a statement with bytes after its name is malformed: PostgreSQL
 * refuses it (08P01) and the statement stays. pgmux, which answers a Close
 * of a statement itself, answered CloseComplete and dropped the statement.
 */
Test(prepared_batches, close_or_describe_with_trailing_bytes)
{
	struct h_buf parts[3] = {{0}};

	pgmux_start_one_backend(&px, NULL);
	h_msg_parse(&parts[0], "s1", "select 1");
	h_msg_sync(&parts[0]);
	h_msg_raw(&parts[1], 'C', "Ss1\0junk", 8);
	h_msg_sync(&parts[1]);
	h_msg_raw(&parts[1], 'D', "Ss1\0junk", 8);
	h_msg_sync(&parts[1]);
	h_msg_run(&parts[2], "s1");
	h_like_postgres(&px, parts, 3, "a Close and a Describe with bytes after the name", NULL);
	h_stop_expect_clean_exit(&px);
}

/*
 * PostgreSQL knows a prepared statement by the first 63 bytes of its name
 * (NAMEDATALEN - 1). pgmux kept longer names whole in its map but cut them
 * in its reply queue: the statement of a failed Parse with a long name was
 * never dropped (so the name was "already in use", and a Bind of it got the
 * Parse's error again), and two names that agree on 63 bytes were two
 * statements.
 */
#define LONG_63 "name_of_63_bytes_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"

/* Prepare a and b (a Sync after each), then run a: the answers must be PostgreSQL's. */
static void parse_parse_run(const char *a, const char *sql_a, const char *b, const char *sql_b, const char *what)
{
	struct h_buf parts[3] = {{0}};

	h_msg_parse(&parts[0], a, sql_a);
	h_msg_sync(&parts[0]);
	h_msg_parse(&parts[1], b, sql_b);
	h_msg_sync(&parts[1]);
	h_msg_run(&parts[2], a);
	h_like_postgres(&px, parts, 3, what, NULL);
}

Test(prepared_batches, statement_names_longer_than_63_bytes)
{
	pgmux_start_one_backend(&px, NULL);
	cr_assert_eq(strlen(LONG_63), 63);
	parse_parse_run(LONG_63 "_a", "select 1", LONG_63 "_b", "select 2",
			"two names that agree on their first 63 bytes");
	parse_parse_run(LONG_63 "_c", "selec 1", LONG_63 "_c", "select 3",
			"a long name whose Parse failed, prepared again");
	h_stop_expect_clean_exit(&px);
}

/*
 * A Parse that pgmux answers itself (other prepares "select 1", so the
 * backend has it) in a batch that fails, then a Bind of it: sent once the
 * error came back (apart), or together.
 */
static void answered_parse_skipped(PGconn *other, bool apart, const char *what)
{
	struct h_buf parts[2] = {{0}};

	h_prepare_ok(other, "one", "select 1");
	h_msg_execute(&parts[0], "no_such_portal", 0);
	h_msg_parse(&parts[0], "s2", "select 1");
	h_msg_sync(&parts[0]);
	h_msg_run(&parts[apart ? 1 : 0], "s2");
	h_like_postgres(&px, parts, apart ? 2 : 1, what, other);
}

/*
 * Statements pgmux keeps on a backend are bounded (max_prepared_statements,
 * 3 here): a Parse beyond that closes the least recently used one first.
 * When an earlier message of the batch failed, the server skipped that
 * Close too and kept the statement, but pgmux took it for gone: preparing
 * it again for its next use failed with 42P05, given to a client whose Bind
 * was fine. And a Parse pgmux answered itself (the backend had the
 * statement) left the client's name in place when the server skipped it:
 * a Bind of a statement that PostgreSQL never created then worked.
 */
Test(prepared_batches, messages_skipped_after_an_error_are_undone)
{
	struct h_buf parts[4] = {{0}};
	PGconn *other;

	pgmux_start_one_backend(&px, "max_prepared_statements = 3");
	other = app();
	h_msg_parse(&parts[0], "a", "select 11");
	h_msg_parse(&parts[0], "b", "select 12");
	h_msg_parse(&parts[0], "c", "select 13");
	h_msg_sync(&parts[0]);
	h_msg_execute(&parts[1], "no_such_portal", 0);
	h_msg_parse(&parts[1], "d", "select 14");
	h_msg_sync(&parts[1]);
	h_msg_run(&parts[2], "a");
	h_msg_run(&parts[3], "b");
	h_like_postgres(&px, parts, 4, "an eviction skipped after an error", other);

	answered_parse_skipped(other, true, "a Parse pgmux answered, skipped after an error");
	h_expect_value(other, "select 'still fine'", "still fine");
	PQfinish(other);
	h_stop_expect_clean_exit(&px);
}

/*
 * What is undone must be undone whole: two failed batches, sent together,
 * the first of which prepares a statement that the second evicts. Undoing
 * the second must not bring the statement back in pgmux's books: the
 * server never had it, and the next client to use that text would get
 * "does not exist".
 */
Test(prepared_batches, statement_prepared_and_evicted_by_failed_batches)
{
	struct h_buf parts[1] = {{0}};
	PGconn *other;
	PGresult *res;
	const char *params[1] = {"41"};

	pgmux_start_one_backend(&px, "max_prepared_statements = 3");
	other = app();
	h_msg_raw(&parts[0], 'C', "x\0", 2);
	h_msg_parse(&parts[0], "s1", "select $1::int + 1");
	h_msg_sync(&parts[0]);
	h_msg_target(&parts[0], 'D', 'S', "no_such_statement");
	h_msg_parse(&parts[0], "x1", "select 21");
	h_msg_parse(&parts[0], "x2", "select 22");
	h_msg_parse(&parts[0], "x3", "select 23");
	h_msg_sync(&parts[0]);
	h_like_postgres(&px, parts, 1, "a statement prepared, then evicted, by two failed batches", other);
	h_prepare_ok(other, "plus_one", "select $1::int + 1");
	res = PQexecPrepared(other, "plus_one", 1, params, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "the other client's statement: %s", PQerrorMessage(other));
	cr_assert_str_eq(PQgetvalue(res, 0, 0), "42");
	PQclear(res);
	PQfinish(other);
	h_stop_expect_clean_exit(&px);
}

/*
 * A Parse of a name the client has given to a statement already: pgmux
 * answered 42P05 itself. PostgreSQL finds the name taken only after the new
 * text passed its other checks (another error comes first), and its error
 * fails a transaction block, which pgmux's did not: a COMMIT then committed
 * where PostgreSQL rolls back.
 */
Test(prepared_batches, parse_of_a_name_in_use)
{
	struct h_buf parts[4] = {{0}};

	pgmux_start_one_backend(&px, NULL);
	h_msg_query(&parts[0], "begin");
	h_msg_parse(&parts[1], "s1", "select 1");
	h_msg_sync(&parts[1]);
	h_msg_parse(&parts[2], "s1", "select 2");
	h_msg_sync(&parts[2]);
	h_msg_query(&parts[3], "commit");
	h_like_postgres(&px, parts, 4, "a Parse of a name in use, in a transaction block", NULL);

	h_msg_parse(&parts[0], "s2", "select 1");
	h_msg_sync(&parts[0]);
	h_msg_parse(&parts[1], "s2", "selec 1");
	h_msg_sync(&parts[1]);
	h_msg_parse(&parts[2], "s2", "select 1; select 2");
	h_msg_sync(&parts[2]);
	h_like_postgres(&px, parts, 3, "a Parse of a name in use, of a text PostgreSQL refuses", NULL);
	h_stop_expect_clean_exit(&px);
}

/*
 * Batches a client sends ahead (pipelining) were handled as if every
 * earlier batch had worked. When one fails, the server skips the rest of it:
 * a Parse there does not create its statement, and a Close there (pgmux's,
 * to keep within max_prepared_statements) does not close one. A message of a
 * later batch that names the client's statement, or needs the backend's,
 * now waits for the answer to the batch it depends on.
 */
Test(prepared_batches, pipelined_batches_after_a_failed_one)
{
	struct h_buf parts[1] = {{0}};
	PGconn *other;

	pgmux_start_one_backend(&px, NULL);
	other = app();
	/* The first Parse of s1 fails: the second is no reuse of the name. */
	h_msg_parse_sync(&parts[0], "s1", "selec 1");
	h_msg_parse_sync(&parts[0], "s1", "select 1");
	h_msg_run(&parts[0], "s1");
	h_like_postgres(&px, parts, 1, "a name prepared again after its Parse failed, sent together", other);

	/* A Parse pgmux answers itself, skipped, and its Bind in the next batch. */
	answered_parse_skipped(other, false, "a Bind after a skipped Parse pgmux answered, sent together");
	PQfinish(other);
	h_stop_expect_clean_exit(&px);
}

/*
 * A Close of a statement is answered by pgmux (the server-side statement
 * stays for others), and it dropped the client's name at once. After an
 * error earlier in the batch PostgreSQL skips the Close and keeps the
 * statement: a later Bind of it worked directly and failed through pgmux.
 * The statement now comes back when the server skips the Close, and a later
 * batch that uses the name waits for that batch's answer.
 */
Test(prepared_batches, close_skipped_after_an_error_keeps_the_statement)
{
	struct h_buf parts[2] = {{0}};

	pgmux_start_one_backend(&px, NULL);
	h_msg_parse_sync(&parts[0], "s1", "select 1");
	h_msg_execute(&parts[1], "no_such_portal", 0);
	h_msg_target(&parts[1], 'C', 'S', "s1");
	h_msg_sync(&parts[1]);
	h_msg_run(&parts[1], "s1");
	h_like_postgres(&px, parts, 2, "a Close behind a failed Execute, then a Bind", NULL);

	h_msg_parse_sync(&parts[0], "s2", "select 1");
	h_msg_query(&parts[1], "select pg_sleep(0.05)");
	h_msg_target(&parts[1], 'C', 'S', "s2");
	h_msg_parse(&parts[1], "s2", "select 2");
	h_msg_run(&parts[1], "s2");
	h_like_postgres(&px, parts, 2, "a Close and a new Parse of the name while a Query runs", NULL);

	/* The Parse in the next batch must find the name still taken. */
	h_msg_parse_sync(&parts[0], "s3", "select 1");
	h_msg_execute(&parts[1], "no_such_portal", 0);
	h_msg_target(&parts[1], 'C', 'S', "s3");
	h_msg_sync(&parts[1]);
	h_msg_parse_sync(&parts[1], "s3", "select 3");
	h_msg_run(&parts[1], "s3");
	h_like_postgres(&px, parts, 2, "a Close skipped, then a Parse of the name in the next batch", NULL);

	/* Prepared and closed in a batch that fails: the statement never was. */
	h_msg_execute(&parts[0], "no_such_portal", 0);
	h_msg_parse(&parts[0], "s4", "select 4");
	h_msg_target(&parts[0], 'C', 'S', "s4");
	h_msg_sync(&parts[0]);
	h_msg_target(&parts[0], 'D', 'S', "s4");
	h_msg_sync(&parts[0]);
	h_like_postgres(&px, parts, 1, "a Parse and a Close of a name, both skipped", NULL);

	/* A failed Parse, then a Close of the name in the next batch, which fails too. */
	h_msg_parse_sync(&parts[0], "s5", "selec 5");
	h_msg_execute(&parts[0], "no_such_portal", 0);
	h_msg_target(&parts[0], 'C', 'S', "s5");
	h_msg_sync(&parts[0]);
	h_msg_target(&parts[0], 'D', 'S', "s5");
	h_msg_sync(&parts[0]);
	h_like_postgres(&px, parts, 1, "a Close, skipped, of a name whose Parse failed", NULL);
	h_stop_expect_clean_exit(&px);
}

/*
 * A Parse of a statement the backend has already is answered by pgmux
 * itself. In a failed transaction block PostgreSQL refuses it (25P02),
 * unless the statement ends the transaction: pgmux answered ParseComplete,
 * and the name then existed for the client where PostgreSQL never made it.
 */
Test(prepared_batches, parse_in_a_failed_transaction_block)
{
	struct h_buf parts[4] = {{0}};
	PGconn *other;

	pgmux_start_one_backend(&px, NULL);
	other = app();
	/* The other client prepares both texts: the backend has them, and pgmux would answer Parses of them. */
	h_prepare_ok(other, "one", "select 1");
	h_prepare_ok(other, "rb", "rollback");
	h_msg_query(&parts[0], "begin");
	h_msg_query(&parts[1], "select 1/0");
	h_msg_parse_sync(&parts[2], "s1", "select 1");
	h_msg_query(&parts[3], "rollback");
	h_msg_run(&parts[3], "s1");
	h_like_postgres(&px, parts, 4, "a Parse in a failed transaction block", other);

	h_msg_query(&parts[0], "begin");
	h_msg_query(&parts[1], "select 1/0");
	h_msg_parse_sync(&parts[2], "s2", "rollback");
	h_msg_run(&parts[3], "s2");
	h_like_postgres(&px, parts, 4, "a Parse that ends a failed transaction block", other);
	PQfinish(other);
	h_stop_expect_clean_exit(&px);
}
