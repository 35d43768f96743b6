/*
 * test_listen.c: LISTEN and NOTIFY with transaction pooling, held by pgmux
 * (issue 19, item 5; src/listen.c). Many clients LISTEN through a small
 * pool without pinning, and each gets exactly its channel's notifications
 * in order, with the notifying backend's pid and payload; PostgreSQL sees
 * the pool's backends and one LISTEN connection, no more. Then the
 * semantics one by one (UNLISTEN, UNLISTEN *, DISCARD ALL, delivery only
 * once a transaction ends, the bounds per client), the LISTEN connection
 * lost and back, and a failover.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct pgmux px;

static PGconn *admin_session(void)
{
	PGconn *admin = h_connect_app(px.port, "disable", "dbname=pgmux");

	cr_assert_eq(PQstatus(admin), CONNECTION_OK, "admin console: %s", PQerrorMessage(admin));
	return admin;
}

/* The same in the extended protocol (Parse, Bind, Describe, Execute, Sync). */
static void expect_tag_extended(PGconn *conn, const char *sql, const char *want)
{
	PGresult *r = PQexecParams(conn, sql, 0, NULL, NULL, NULL, NULL, 0);

	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(conn));
	cr_assert_str_eq(PQcmdStatus(r), want, "%s", sql);
	PQclear(r);
}

/* SHOW LISTENERS: one pool, its LISTEN connection up, with these channels and subscriptions. */
static void expect_listeners(PGconn *admin, const char *channels, const char *subscriptions)
{
	PGresult *r = PQexec(admin, "SHOW LISTENERS");

	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "SHOW LISTENERS: %s", PQerrorMessage(admin));
	cr_assert_eq(PQntuples(r), 1);
	cr_expect_str_eq(PQgetvalue(r, 0, PQfnumber(r, "user")), h_env()->appuser);
	cr_expect_neq(atoi(PQgetvalue(r, 0, PQfnumber(r, "backend_pid"))), 0);
	cr_expect_str_eq(PQgetvalue(r, 0, PQfnumber(r, "channels")), channels);
	cr_expect_str_eq(PQgetvalue(r, 0, PQfnumber(r, "subscriptions")), subscriptions);
	PQclear(r);
}

static void fini(void)
{
	h_teardown();
}

TestSuite(listen, .fini = fini, .timeout = 120);

#define N_CLIENTS 500
#define N_CHANNELS 50
#define N_NOTIFIES 3

/*
 * The acceptance: 500 clients LISTEN on 50 channels through a pool of
 * 4 backends (half in the simple protocol, half in the extended one; names
 * unquoted in any case, or quoted as folded); 3 NOTIFYs per channel from a
 * direct session; each client gets exactly its channel's 3, in order, with
 * the direct session's pid; PostgreSQL never sees more than the pool and the
 * LISTEN connection; nothing is pinned.
 */
Test(listen, five_hundred_clients_fifty_channels_pool_of_four)
{
	static PGconn *clients[N_CLIENTS];
	int got[N_CLIENTS] = { 0 };
	PGconn *super, *notifier, *admin;
	PGresult *r;
	char sql[128];
	long long t0 = h_now_ms(), deadline;
	int pid, remaining = N_CLIENTS;

	h_start_transaction_pgmux(&px, 4, NULL);
	super = h_connect_super_direct();
	for (int i = 0; i < N_CLIENTS; i++) {
		clients[i] = h_connect_app(px.port, "disable", NULL);
		cr_assert_eq(PQstatus(clients[i]), CONNECTION_OK, "client %d: %s", i, PQerrorMessage(clients[i]));
		switch (i % 4) {
		case 0:
			snprintf(sql, sizeof(sql), "LISTEN ch_%d", i % N_CHANNELS);
			h_expect_tag(clients[i], sql, "LISTEN");
			break;
		case 1:
			snprintf(sql, sizeof(sql), "LISTEN CH_%d", i % N_CHANNELS);
			expect_tag_extended(clients[i], sql, "LISTEN");
			break;
		case 2:
			snprintf(sql, sizeof(sql), "listen \"ch_%d\";", i % N_CHANNELS);
			h_expect_tag(clients[i], sql, "LISTEN");
			break;
		default:
			snprintf(sql, sizeof(sql), "/* a comment */ Listen \"ch_%d\"", i % N_CHANNELS);
			expect_tag_extended(clients[i], sql, "LISTEN");
			break;
		}
		if (i % 100 == 99)
			cr_assert_leq(h_app_backends(super), 4 + 1, "PostgreSQL sees more than the pool and the LISTEN connection");
	}
	cr_log_info("500 clients connected and listening in %lld ms", h_now_ms() - t0);

	admin = admin_session();
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_now"), 0, "a LISTEN pinned a session");
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 0, "a LISTEN pinned a session");
	cr_assert_leq(h_app_backends(super), 4 + 1);
	cr_expect_eq(atoi(h_value_ok(super, "select count(*) from pg_stat_activity where application_name = 'pgmux listen'")), 1,
		     "one LISTEN connection for the pool");
	expect_listeners(admin, "50", "500");

	notifier = h_connect_super_direct();
	pid = PQbackendPID(notifier);
	for (int k = 1; k <= N_NOTIFIES; k++)
		for (int c = 0; c < N_CHANNELS; c++) {
			snprintf(sql, sizeof(sql), "NOTIFY ch_%d, '%d:%d'", c, c, k);
			h_exec_ok(notifier, sql);
		}

	/* Read every client's notifications as they come, with one poll over all of them. */
	deadline = h_now_ms() + h_scaled_ms(15000);
	while (remaining > 0 && h_now_ms() < deadline) {
		static struct pollfd fds[N_CLIENTS];

		for (int i = 0; i < N_CLIENTS; i++)
			fds[i] = (struct pollfd){ .fd = PQsocket(clients[i]), .events = POLLIN };
		poll(fds, N_CLIENTS, 100);
		for (int i = 0; i < N_CLIENTS; i++) {
			PGnotify *n;

			if (!(fds[i].revents & POLLIN))
				continue;
			cr_assert(PQconsumeInput(clients[i]), "client %d: %s", i, PQerrorMessage(clients[i]));
			while ((n = PQnotifies(clients[i])) != NULL) {
				char want_channel[32], want_payload[32];

				got[i]++;
				snprintf(want_channel, sizeof(want_channel), "ch_%d", i % N_CHANNELS);
				snprintf(want_payload, sizeof(want_payload), "%d:%d", i % N_CHANNELS, got[i]);
				cr_assert_str_eq(n->relname, want_channel, "client %d", i);
				cr_assert_str_eq(n->extra, want_payload, "client %d: out of order", i);
				cr_assert_eq(n->be_pid, pid, "client %d: the notifying backend's pid", i);
				cr_assert_leq(got[i], N_NOTIFIES, "client %d got more than its channel's", i);
				if (got[i] == N_NOTIFIES)
					remaining--;
				PQfreemem(n);
			}
		}
	}
	cr_assert_eq(remaining, 0, "%d clients did not get their 3 notifications", remaining);
	cr_log_info("1500 deliveries in %lld ms after the NOTIFYs", h_now_ms() - deadline + h_scaled_ms(15000));
	/* Nothing more comes. */
	for (int i = 0; i < N_CLIENTS; i += 50)
		h_expect_no_notify(clients[i], 20);
	cr_expect_eq(h_admin_stat(admin, "sessions_pinned_total"), 0);
	cr_assert_leq(h_app_backends(super), 4 + 1);
	r = PQexec(admin, "SHOW LISTENERS");
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK);
	cr_expect_str_eq(PQgetvalue(r, 0, PQfnumber(r, "notifications")), "150");
	PQclear(r);

	/* The clients still run queries as usual. */
	h_expect_value(clients[7], "select 41 + 1", "42");
	for (int i = 0; i < N_CLIENTS; i++)
		PQfinish(clients[i]);
	/* Once nobody listens, the LISTEN connection goes. */
	cr_expect(h_poll_value(super, "select count(*) from pg_stat_activity where application_name = 'pgmux listen'", "0",
			       h_scaled_ms(5000)),
		  "the LISTEN connection stayed after every listener left");
	PQfinish(notifier);
	PQfinish(admin);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* UNLISTEN, UNLISTEN *, DISCARD ALL and a client's exit unsubscribe; a LISTEN twice is one. */
Test(listen, unlisten_unlisten_all_discard_all)
{
	PGconn *a, *b, *notifier;

	h_start_transaction_pgmux(&px, 2, NULL);
	a = h_app_session(&px, "disable", NULL);
	b = h_app_session(&px, "disable", NULL);
	notifier = h_connect_super_direct();
	h_expect_tag(a, "LISTEN one; LISTEN two", "LISTEN");
	h_expect_tag(a, "LISTEN one", "LISTEN");
	h_expect_tag(b, "LISTEN two", "LISTEN");
	h_exec_ok(notifier, "NOTIFY one, 'x1'");
	h_exec_ok(notifier, "NOTIFY two, 'x2'");
	h_expect_notify(a, "one", "x1", PQbackendPID(notifier));
	h_expect_notify(a, "two", "x2", 0);
	h_expect_no_notify(a, 100); /* LISTEN twice: delivered once */
	h_expect_notify(b, "two", "x2", 0);

	expect_tag_extended(a, "UNLISTEN one", "UNLISTEN");
	h_exec_ok(notifier, "NOTIFY one, 'y1'");
	h_exec_ok(notifier, "NOTIFY two, 'y2'");
	h_expect_notify(a, "two", "y2", 0);
	h_expect_no_notify(a, 100);
	h_expect_notify(b, "two", "y2", 0);

	h_expect_tag(a, "UNLISTEN *", "UNLISTEN");
	h_exec_ok(notifier, "NOTIFY two, 'z2'");
	h_expect_notify(b, "two", "z2", 0);
	h_expect_no_notify(a, 100);

	/* DISCARD ALL runs on a backend, and is UNLISTEN * too. */
	h_expect_tag(a, "LISTEN three", "LISTEN");
	h_expect_tag(a, "DISCARD ALL", "DISCARD ALL");
	h_exec_ok(notifier, "NOTIFY three, 'w3'");
	h_expect_no_notify(a, 150);

	/* An UNLISTEN in a transaction block runs on the backend, and ends pgmux's subscription too. */
	h_expect_tag(a, "LISTEN four", "LISTEN");
	h_expect_tag(a, "BEGIN", "BEGIN");
	h_expect_tag(a, "UNLISTEN four", "UNLISTEN");
	h_expect_tag(a, "COMMIT", "COMMIT");
	h_exec_ok(notifier, "NOTIFY four, 'u4'");
	h_expect_no_notify(a, 150);

	/* A client that leaves listens no more; the other still does. */
	h_expect_tag(a, "LISTEN two", "LISTEN");
	PQfinish(a);
	h_exec_ok(notifier, "NOTIFY two, 'v2'");
	h_expect_notify(b, "two", "v2", 0);
	PQfinish(b);
	PQfinish(notifier);
	h_stop_expect_clean_exit(&px);
}

/*
 * As PostgreSQL: a notification reaches a client in a transaction only once
 * the transaction is over; its own NOTIFY runs in its transaction (and is
 * delivered at its commit, to itself too).
 */
Test(listen, delivery_waits_for_the_end_of_a_transaction)
{
	PGconn *a, *notifier;
	PGresult *r;

	h_start_transaction_pgmux(&px, 2, NULL);
	a = h_app_session(&px, "disable", NULL);
	notifier = h_connect_super_direct();
	h_expect_tag(a, "LISTEN jobs", "LISTEN");
	h_expect_tag(a, "BEGIN", "BEGIN");
	r = PQexec(a, "select 1");
	PQclear(r);
	h_exec_ok(notifier, "NOTIFY jobs, 'during'");
	h_sleep_ms(200);
	h_expect_no_notify(a, 100);
	h_expect_tag(a, "NOTIFY jobs, 'mine'", "NOTIFY");
	h_expect_tag(a, "COMMIT", "COMMIT");
	h_expect_notify(a, "jobs", "during", PQbackendPID(notifier));
	h_expect_notify(a, "jobs", "mine", 0);
	PQfinish(a);
	PQfinish(notifier);
	h_stop_expect_clean_exit(&px);
}

/* The bounds: channels per client (an error, the session goes on) and notifications waiting for one (closed). */
Test(listen, bounds_per_client)
{
	PGconn *a, *b, *notifier;
	PGresult *r;
	char sql[64];

	h_start_transaction_pgmux(&px, 2, "max_client_listen_channels = 3\nmax_client_pending_notifications = 5\n");
	a = h_app_session(&px, "disable", NULL);
	b = h_app_session(&px, "disable", NULL);
	notifier = h_connect_super_direct();
	h_expect_tag(a, "LISTEN c1; LISTEN c2; LISTEN c3", "LISTEN");
	r = PQexec(a, "LISTEN c4");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
	cr_expect_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), "54000");
	PQclear(r);
	h_expect_value(a, "select 'still here'", "still here");

	/* b sits in a transaction while more notifications come than may wait for it. */
	h_expect_tag(b, "LISTEN c1", "LISTEN");
	h_expect_tag(b, "BEGIN", "BEGIN");
	for (int i = 0; i < 7; i++) {
		snprintf(sql, sizeof(sql), "NOTIFY c1, '%d'", i);
		h_exec_ok(notifier, sql);
	}
	for (int i = 0; i < 7; i++) {
		snprintf(sql, sizeof(sql), "%d", i);
		h_expect_notify(a, "c1", sql, 0);
	}
	r = PQexec(b, "select 1");
	cr_expect_neq(PQresultStatus(r), PGRES_TUPLES_OK, "b was to be closed");
	cr_expect(strstr(PQerrorMessage(b), "max_client_pending_notifications") != NULL, "%s", PQerrorMessage(b));
	PQclear(r);
	/* Nobody else noticed. */
	h_exec_ok(notifier, "NOTIFY c2, 'after'");
	h_expect_notify(a, "c2", "after", 0);
	PQfinish(a);
	PQfinish(b);
	PQfinish(notifier);
	h_stop_expect_clean_exit(&px);
}

/*
 * The LISTEN connection is terminated: pgmux reconnects and LISTENs again;
 * what is sent after that arrives (what was sent meanwhile is lost, as with
 * a direct connection that dropped).
 */
Test(listen, the_listen_connection_comes_back)
{
	PGconn *a, *notifier, *super;
	bool back = false;

	h_start_transaction_pgmux(&px, 2, NULL);
	a = h_app_session(&px, "disable", NULL);
	notifier = h_connect_super_direct();
	super = h_connect_super_direct();
	h_expect_tag(a, "LISTEN again", "LISTEN");
	h_exec_ok(super, "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'pgmux listen'");
	/*
	 * The query text shows from the moment the LISTEN starts; it listens
	 * once it committed, when the connection is idle again.
	 */
	cr_assert(h_file_wait_contains(px.logfile, "LISTEN connection to", h_scaled_ms(5000)));
	cr_assert(h_poll_value(super,
			       "select count(*) from pg_stat_activity where application_name = 'pgmux listen' and "
			       "state = 'idle' and query = 'LISTEN \"again\";'",
			       "1", h_scaled_ms(5000)),
		  "pgmux did not LISTEN again");
	h_exec_ok(notifier, "NOTIFY again, 'back'");
	back = h_wait_notify(a, h_scaled_ms(5000)) != NULL;
	cr_expect(back, "no notification after the LISTEN connection came back");
	PQfinish(a);
	PQfinish(notifier);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ real drivers */

TestSuite(listen_drivers, .fini = fini, .timeout = 120);

#define PYTHON "/usr/bin/python3"

/*
 * psycopg 3, psycopg2, asyncpg and psql LISTEN through pgmux as each
 * documents it (tests/drivers/listen_drivers.py checks what each gets);
 * here: nothing was pinned.
 */
Test(listen_drivers, psycopg3_psycopg2_asyncpg_psql)
{
	const struct h_env *e = h_env();
	const char *top = getenv("TOP_SRCDIR");
	char path[700], port[32], user[300], pw[300], direct[700], psql[600];
	struct h_cmd c;
	PGconn *admin;
	long long pinned;
	int st;

	cr_assert(access(PYTHON, X_OK) == 0, "%s is missing (install python3 and the drivers: see .ci/run)", PYTHON);
	h_start_transaction_pgmux(&px, 2, NULL);
	snprintf(path, sizeof(path), "%s/tests/drivers/listen_drivers.py", top ? top : ".");
	snprintf(port, sizeof(port), "PGPORT=%d", px.port);
	snprintf(user, sizeof(user), "PGUSER=%s", e->appuser);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	snprintf(direct, sizeof(direct), "DIRECT_DSN=host=%s port=%d user=%s password=%s dbname=postgres sslmode=disable",
		 e->pghost, e->pgport, e->superuser, e->superpass);
	snprintf(psql, sizeof(psql), "PSQL=%s/psql", e->pgbin);
	const char *argv[] = { PYTHON, path, NULL };
	const char *env[] = { "PGHOST=127.0.0.1", port, user, pw, "PGDATABASE=postgres", "MAX_BACKENDS=2", direct, psql,
			      NULL };
	st = h_cmd_run(&c, argv, env, h_scaled_ms(90000));
	if (st != 0 || strstr(c.out, "listen drivers ok") == NULL) {
		h_cmd_dump(&c, "listen_drivers.py");
		pgmux_dump_logs(&px);
	}
	cr_assert_eq(st, 0, "listen_drivers.py exited with %d", st);
	cr_assert(strstr(c.out, "listen drivers ok") != NULL);
	cr_log_info("%s", c.out);
	h_cmd_free(&c);

	admin = admin_session();
	pinned = h_admin_stat(admin, "sessions_pinned_total");
	PQfinish(admin);
	if (pinned != 0)
		pgmux_dump_logs(&px);
	cr_assert_eq(pinned, 0, "%lld session(s) were pinned", pinned);
	h_stop_expect_clean_exit(&px);
}
