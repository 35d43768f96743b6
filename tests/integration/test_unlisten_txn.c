/*
 * test_unlisten_txn.c: an UNLISTEN (UNLISTEN *, DISCARD ALL) that runs on a
 * backend with transaction pooling takes effect at its commit, as in
 * PostgreSQL: a rollback (of the transaction, a savepoint, or the implicit
 * block of a failed Query) keeps the channels pgmux holds for the client.
 * pgmux LISTENs on the client's channels on the backend before such a
 * transaction (the mirror) and asks the backend at its end what is left
 * (src/client_listen_handover.c). The same script runs against PostgreSQL
 * directly and through pgmux and must see the same; through pgmux nothing
 * is pinned, the backend goes back clean, and each notification of a
 * stream that runs during mirrored transactions comes once, in order.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct pgmux px;

static void fini(void)
{
	h_teardown();
}

TestSuite(unlisten_txn, .fini = fini, .timeout = 120);

/* A NOTIFY on channel comes to a (kept), or not (gone). */
static void expect_kept(PGconn *a, PGconn *notifier, const char *channel, bool kept, const char *who)
{
	char sql[200];

	snprintf(sql, sizeof(sql), "NOTIFY %s, 'probe'", channel);
	h_exec_ok(notifier, sql);
	if (kept) {
		h_expect_notify(a, channel, "probe", PQbackendPID(notifier));
	} else {
		PGnotify *n = h_wait_notify(a, 150);

		cr_assert_null(n, "%s: %s was to be gone, but %s (%s) came", who, channel, n ? n->relname : "",
			       n ? n->extra : "");
	}
}

/* What a client sees of UNLISTEN in transactions (a; notifier a direct session). */
static void unlisten_in_transactions(PGconn *a, PGconn *notifier, const char *who)
{
	PGresult *r;
	int pid = PQbackendPID(notifier);

	cr_log_info("%s", who);
	/* A rollback keeps it (BEGIN sent alone first, as a driver does); a commit ends it. */
	h_expect_tag(a, "LISTEN u1", "LISTEN");
	h_expect_tag(a, "BEGIN", "BEGIN");
	h_expect_tag(a, "UNLISTEN u1", "UNLISTEN");
	h_expect_tag(a, "ROLLBACK", "ROLLBACK");
	expect_kept(a, notifier, "u1", true, who);
	h_expect_tag(a, "BEGIN; UNLISTEN u1; ROLLBACK", "ROLLBACK");
	expect_kept(a, notifier, "u1", true, who);
	h_expect_tag(a, "BEGIN", "BEGIN");
	h_expect_tag(a, "UNLISTEN u1", "UNLISTEN");
	h_expect_tag(a, "COMMIT", "COMMIT");
	expect_kept(a, notifier, "u1", false, who);

	/* The extended protocol (a driver's prepared UNLISTEN): the same. */
	h_expect_tag(a, "LISTEN u1", "LISTEN");
	h_expect_tag(a, "BEGIN", "BEGIN");
	r = PQexecParams(a, "UNLISTEN u1", 0, NULL, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", who, PQerrorMessage(a));
	PQclear(r);
	h_expect_tag(a, "ROLLBACK", "ROLLBACK");
	expect_kept(a, notifier, "u1", true, who);
	h_expect_tag(a, "UNLISTEN u1", "UNLISTEN");

	/* A quoted name, with a double quote in it: mirrored as it is. */
	h_expect_tag(a, "LISTEN \"Mixed \"\"Q\"\" ch\"", "LISTEN");
	h_expect_tag(a, "BEGIN; UNLISTEN \"Mixed \"\"Q\"\" ch\"; ROLLBACK", "ROLLBACK");
	h_exec_ok(notifier, "NOTIFY \"Mixed \"\"Q\"\" ch\", 'q'");
	h_expect_notify(a, "Mixed \"Q\" ch", "q", pid);
	h_expect_tag(a, "UNLISTEN \"Mixed \"\"Q\"\" ch\"", "UNLISTEN");

	/* A savepoint rolled back keeps it. */
	h_expect_tag(a, "LISTEN u2", "LISTEN");
	h_expect_tag(a, "BEGIN; SAVEPOINT s; UNLISTEN u2; ROLLBACK TO s; COMMIT", "COMMIT");
	expect_kept(a, notifier, "u2", true, who);

	/* One Query is an implicit transaction block: its failure keeps it. */
	h_expect_tag(a, "LISTEN u3", "LISTEN");
	r = PQexec(a, "UNLISTEN u3; SELECT 1/0");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "%s: UNLISTEN u3; SELECT 1/0 did not fail", who);
	PQclear(r);
	expect_kept(a, notifier, "u3", true, who);

	/* UNLISTEN * committed ends them all (u2, u3, u4, u5). */
	h_expect_tag(a, "LISTEN u4; LISTEN u5", "LISTEN");
	h_expect_tag(a, "BEGIN; UNLISTEN *; COMMIT", "COMMIT");
	expect_kept(a, notifier, "u4", false, who);
	expect_kept(a, notifier, "u2", false, who);

	/* A driver's reset query (UNLISTEN * among other statements), and DISCARD ALL. */
	h_expect_tag(a, "LISTEN u6", "LISTEN");
	h_expect_tag(a, "UNLISTEN *; RESET ALL", "RESET");
	expect_kept(a, notifier, "u6", false, who);
	h_expect_tag(a, "LISTEN u7", "LISTEN");
	h_expect_tag(a, "DISCARD ALL", "DISCARD ALL");
	expect_kept(a, notifier, "u7", false, who);

	/* UNLISTEN of one channel among several: the others stay. */
	h_expect_tag(a, "LISTEN u8; LISTEN u9", "LISTEN");
	h_expect_tag(a, "BEGIN; UNLISTEN u8; COMMIT", "COMMIT");
	expect_kept(a, notifier, "u8", false, who);
	expect_kept(a, notifier, "u9", true, who);

	/*
	 * A notification committed during the transaction: after a rollback it
	 * comes (once); after the UNLISTEN's commit it does not (the session
	 * had not read it when its UNLISTEN took effect).
	 */
	h_expect_tag(a, "BEGIN", "BEGIN");
	h_expect_tag(a, "UNLISTEN u9", "UNLISTEN");
	h_exec_ok(notifier, "NOTIFY u9, 'during'");
	h_expect_tag(a, "ROLLBACK", "ROLLBACK");
	h_expect_notify(a, "u9", "during", pid);
	h_expect_no_notify(a, 100);
	h_expect_tag(a, "BEGIN", "BEGIN");
	h_expect_tag(a, "UNLISTEN u9", "UNLISTEN");
	h_exec_ok(notifier, "NOTIFY u9, 'during'");
	h_expect_tag(a, "COMMIT", "COMMIT");
	h_expect_no_notify(a, 150);
	expect_kept(a, notifier, "u9", false, who);

	/*
	 * Code pgmux cannot read (a DO block): its settings are verified at the
	 * end, which pins nothing for the mirror; an UNLISTEN run by such code
	 * is read back like any other.
	 */
	h_expect_tag(a, "LISTEN u10", "LISTEN");
	h_expect_tag(a, "BEGIN; DO $$BEGIN PERFORM 1; END$$; UNLISTEN u10; ROLLBACK", "ROLLBACK");
	expect_kept(a, notifier, "u10", true, who);
	h_expect_tag(a, "BEGIN; DO $$BEGIN EXECUTE 'UNLISTEN u10'; END$$; COMMIT", "COMMIT");
	expect_kept(a, notifier, "u10", false, who);

	/* A LISTEN and an UNLISTEN in one transaction, with one it held: the backend says what is left. */
	h_expect_tag(a, "LISTEN v1; LISTEN v2", "LISTEN");
	h_expect_tag(a, "BEGIN; UNLISTEN v1; LISTEN v3; COMMIT", "COMMIT");
	expect_kept(a, notifier, "v1", false, who);
	expect_kept(a, notifier, "v2", true, who);
	expect_kept(a, notifier, "v3", true, who);
	h_expect_tag(a, "UNLISTEN *", "UNLISTEN");
	h_expect_no_notify(a, 50);
}

Test(unlisten_txn, same_as_postgresql_no_pin_backend_back_clean)
{
	PGconn *direct, *a, *b, *notifier, *admin;

	notifier = h_connect_super_direct();
	direct = h_connect_app_direct(NULL);
	cr_assert_eq(PQstatus(direct), CONNECTION_OK, "%s", PQerrorMessage(direct));
	unlisten_in_transactions(direct, notifier, "directly");
	PQfinish(direct);

	/* A pool of one: whoever comes next gets the backend the mirror ran on. */
	h_start_transaction_pgmux(&px, 1, NULL);
	a = h_app_session(&px, "disable", NULL);
	b = h_app_session(&px, "disable", NULL);
	unlisten_in_transactions(a, notifier, "through pgmux");
	admin = h_connect_app(px.port, "disable", "dbname=pgmux");
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 0, "an UNLISTEN in a transaction pinned the session");
	/* After a mirrored transaction (rolled back: a keeps w) the backend goes back listening on nothing. */
	h_expect_tag(a, "LISTEN w", "LISTEN");
	h_expect_tag(a, "BEGIN; UNLISTEN w; ROLLBACK", "ROLLBACK");
	h_expect_value(b, "select count(*) from pg_listening_channels()", "0");
	h_exec_ok(notifier, "NOTIFY w, 'for a'");
	h_expect_notify(a, "w", "for a", 0);
	h_expect_no_notify(b, 150);
	h_expect_value(b, "select 1", "1");
	h_expect_no_notify(b, 50);
	/* And after one whose UNLISTEN * committed (it listens on nothing then: no UNLISTEN * of pgmux's). */
	h_expect_tag(a, "BEGIN; UNLISTEN *; COMMIT", "COMMIT");
	h_expect_value(b, "select count(*) from pg_listening_channels()", "0");
	h_exec_ok(notifier, "NOTIFY w, 'for nobody'");
	h_expect_no_notify(a, 100);
	h_expect_no_notify(b, 50);
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 0);
	PQfinish(a);
	PQfinish(b);
	PQfinish(admin);
	PQfinish(notifier);
	h_stop_expect_clean_exit(&px);
}

/* A client leaves in a mirrored transaction, or right after it: the backend never goes back listening. */
Test(unlisten_txn, client_leaves)
{
	PGconn *a, *b, *notifier;

	h_start_transaction_pgmux(&px, 1, NULL);
	notifier = h_connect_super_direct();
	for (int i = 0; i < 10; i++) {
		a = h_app_session(&px, "disable", NULL);
		h_expect_tag(a, "LISTEN leaving", "LISTEN");
		PQsendQuery(a, i % 2 ? "BEGIN; UNLISTEN leaving; ROLLBACK" : "BEGIN");
		if (i % 3)
			h_sleep_ms(i % 3);
		PQfinish(a);
	}
	b = h_app_session(&px, "disable", NULL);
	h_expect_value(b, "select count(*) from pg_listening_channels()", "0");
	h_exec_ok(notifier, "NOTIFY leaving, 'x'");
	h_expect_value(b, "select 1", "1");
	h_expect_no_notify(b, 100);
	PQfinish(b);
	PQfinish(notifier);
	h_stop_expect_clean_exit(&px);
}

/*
 * Notifications committed while a client's mirrored transactions run (the
 * backend and pgmux's LISTEN connection both listen then): each comes once,
 * in order, whether the transaction commits or rolls back its UNLISTEN.
 */
Test(unlisten_txn, each_notification_once_during_mirrored_transactions)
{
	PGconn *a, *notifier, *admin;
	enum { ROUNDS = 30 };
	char sql[200];
	int next = 1, sent = 0;

	h_start_transaction_pgmux(&px, 1, NULL);
	a = h_app_session(&px, "disable", NULL);
	notifier = h_connect_super_direct();
	h_expect_tag(a, "LISTEN m", "LISTEN");
	for (int i = 0; i < ROUNDS; i++) {
		PGnotify *n;

		h_expect_tag(a, "BEGIN", "BEGIN");
		snprintf(sql, sizeof(sql), "SELECT pg_notify('m', '%d'), pg_notify('m', '%d')", sent + 1, sent + 2);
		h_exec_ok(notifier, sql);
		sent += 2;
		if (i % 2)
			h_expect_tag(a, "UNLISTEN m", "UNLISTEN");
		h_expect_value(a, "select 1", "1");
		snprintf(sql, sizeof(sql), "SELECT pg_notify('m', '%d')", ++sent);
		h_exec_ok(notifier, sql);
		h_expect_tag(a, "ROLLBACK", "ROLLBACK");
		/* What came so far: the next numbers, each once. */
		while ((n = h_wait_notify(a, next <= sent ? h_scaled_ms(5000) : 0)) != NULL) {
			cr_assert_str_eq(n->relname, "m");
			cr_assert_eq(atoi(n->extra), next, "round %d: %s came, %d was next (a gap or a duplicate)", i,
				     n->extra, next);
			next++;
			PQfreemem(n);
			if (next > sent)
				break;
		}
		cr_assert_eq(next, sent + 1, "round %d: %d of %d notifications came", i, next - 1, sent);
	}
	h_expect_no_notify(a, 150);
	admin = h_connect_app(px.port, "disable", "dbname=pgmux");
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 0);
	PQfinish(admin);
	PQfinish(a);
	PQfinish(notifier);
	h_stop_expect_clean_exit(&px);
}

/*
 * A mirrored transaction pinned for another reason (a session-level
 * advisory lock): pgmux's LISTEN connection goes on delivering the channels
 * until the session UNLISTENs one, which then comes from its backend (which
 * listens on it) and ends at the UNLISTEN's commit, as in PostgreSQL; each
 * notification once. One that UNLISTENed before the pin hands them all to
 * its backend at the pin.
 */
Test(unlisten_txn, pinned_mirrored_session)
{
	PGconn *a, *d, *notifier, *admin;
	int pid;

	h_start_transaction_pgmux(&px, 3, NULL);
	a = h_app_session(&px, "disable", NULL);
	d = h_app_session(&px, "disable", NULL);
	notifier = h_connect_super_direct();
	pid = PQbackendPID(notifier);
	h_expect_tag(a, "LISTEN p", "LISTEN");
	h_expect_tag(a, "BEGIN", "BEGIN");
	h_expect_value(a, "select pg_advisory_lock(4242)::text", "");
	h_expect_tag(a, "COMMIT", "COMMIT");
	admin = h_connect_app(px.port, "disable", "dbname=pgmux");
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 1, "the session was to be pinned");
	h_exec_ok(notifier, "NOTIFY p, 'one'");
	h_expect_notify(a, "p", "one", pid);
	h_expect_no_notify(a, 100);
	/* 'early' reaches pgmux through its LISTEN connection before the UNLISTEN is sent: still once. */
	h_expect_tag(a, "BEGIN", "BEGIN");
	h_exec_ok(notifier, "NOTIFY p, 'early'");
	h_sleep_ms(100);
	h_expect_tag(a, "UNLISTEN p", "UNLISTEN");
	h_exec_ok(notifier, "NOTIFY p, 'during'");
	h_expect_tag(a, "ROLLBACK", "ROLLBACK");
	h_expect_notify(a, "p", "early", pid);
	h_expect_notify(a, "p", "during", pid);
	h_expect_no_notify(a, 100);
	h_exec_ok(notifier, "NOTIFY p, 'two'");
	h_expect_notify(a, "p", "two", pid);
	h_expect_no_notify(a, 100);
	h_expect_tag(a, "BEGIN; UNLISTEN p; COMMIT", "COMMIT");
	h_exec_ok(notifier, "NOTIFY p, 'three'");
	h_expect_no_notify(a, 150);

	/* Pinned after its UNLISTEN, in the same transaction, which rolls back: both channels kept. */
	h_expect_tag(d, "LISTEN r1; LISTEN r2", "LISTEN");
	h_expect_tag(d, "BEGIN", "BEGIN");
	h_expect_tag(d, "UNLISTEN r1", "UNLISTEN");
	h_expect_value(d, "select pg_advisory_lock(4243)::text", "");
	h_expect_tag(d, "ROLLBACK", "ROLLBACK");
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 2, "the session was to be pinned");
	h_exec_ok(notifier, "NOTIFY r1, 'r1'");
	h_exec_ok(notifier, "NOTIFY r2, 'r2'");
	h_expect_notify(d, "r1", "r1", pid);
	h_expect_notify(d, "r2", "r2", pid);
	h_expect_no_notify(d, 100);
	h_expect_tag(d, "BEGIN; UNLISTEN r1; COMMIT", "COMMIT");
	h_exec_ok(notifier, "NOTIFY r1, 'gone'");
	h_exec_ok(notifier, "NOTIFY r2, 'kept'");
	h_expect_notify(d, "r2", "kept", pid);
	h_expect_no_notify(d, 100);
	PQfinish(admin);
	PQfinish(a);
	PQfinish(d);
	PQfinish(notifier);
	h_stop_expect_clean_exit(&px);
}
