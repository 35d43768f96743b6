/*
 * test_server.c: end-to-end tests of the options that shape pgmux's own
 * connections to PostgreSQL ([target] and [pool] options that act on the
 * server side): init_query, server_reset_query, server_connect_timeout,
 * max_connections_percent and server_tls with server_tls_ca_file. Each test
 * runs a real pgmux against the suite's PostgreSQL 15 with real libpq
 * clients (and pgbench), and checks what PostgreSQL and the clients see.
 * A cancel while init_query runs is test_cancel.c's.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct pgmux px;

/* ---------------------------------------------------------------- fixtures */

struct silent_target;
static struct silent_target *running_target;
static void silent_target_stop(struct silent_target *t);

/* After a failed assertion: stop the test's own listener thread, then every process. */
static void fini_kill_leftovers(void)
{
	if (running_target)
		silent_target_stop(running_target);
	h_teardown();
}

/*
 * Start pgmux with o (admin console for the superuser), once the backends of
 * app left by an earlier test are gone.
 */
static void start_pgmux(struct pgmux_options *o)
{
	h_wait_no_app_backends();
	o->admin_users = h_env()->superuser;
	pgmux_start_ok(&px, o);
}

/* A pool of one backend, so that consecutive or alternating clients share it. */
static void start_pool_of_one(const char *pool_mode, const char *extra_pool)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.pool_mode = pool_mode;
	o.max_connections = 1;
	o.extra_pool = extra_pool;
	start_pgmux(&o);
}

static PGconn *app(void)
{
	return h_app_session(&px, "disable", NULL);
}

/*
 * A login through pgmux as app that must fail with sqlstate, within
 * timeout_ms. libpq's error messages carry the SQLSTATE only when verbose,
 * so the connection is polled by hand with verbosity set from the start.
 * Returns the message (malloc'd) and, in took_ms, how long the login took.
 */
static char *expect_login_error(const char *sqlstate, int timeout_ms, long long *took_ms)
{
	long long t0 = h_now_ms();
	char *ci = h_conninfo(px.port, h_env()->appuser, h_env()->apppass, "disable", NULL);
	PGconn *conn = PQconnectStart(ci);
	free(ci);
	cr_assert_not_null(conn);
	PQsetErrorVerbosity(conn, PQERRORS_VERBOSE);
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
		struct pollfd pfd = {.fd = PQsocket(conn), .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
		long long left = t0 + timeout_ms - h_now_ms();
		cr_assert_gt(left, 0, "no answer to a login through pgmux within %d ms", timeout_ms);
		if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR)
			cr_assert_fail("poll: %s", strerror(errno));
		st = PQconnectPoll(conn);
	}
	if (took_ms)
		*took_ms = h_now_ms() - t0;
	cr_assert_eq(st, PGRES_POLLING_FAILED, "the login through pgmux succeeded, expected %s", sqlstate);
	char *message = strdup(PQerrorMessage(conn));
	PQfinish(conn);
	char want[16];
	snprintf(want, sizeof(want), "FATAL:  %s:", sqlstate);
	if (strstr(message, want) == NULL)
		pgmux_dump_logs(&px);
	cr_assert(strstr(message, want) != NULL, "the login failed without FATAL %s: %s", sqlstate, message);
	return message;
}

/* The suite's PostgreSQL as SHOW TARGETS names it. */
static const char *suite_instance(void)
{
	static char instance[64];

	snprintf(instance, sizeof(instance), "%s:%d", h_env()->pghost, h_env()->pgport);
	return instance;
}

/*
 * Wait until the health checks have made instance the writer: until then a
 * client waits for a writer, and pgmux does not even try to connect.
 */
static void wait_for_writer(PGconn *admin, const char *instance)
{
	bool writer = h_admin_poll_cell(admin, "SHOW TARGETS", "instance", instance, "role", "writer", h_scaled_ms(10000));
	if (!writer)
		pgmux_dump_logs(&px);
	cr_assert(writer, "instance %s never became the writer", instance);
}

/* Superuser statements run directly on PostgreSQL. */
static void super_exec(const char *sql)
{
	PGconn *super = h_connect_super_direct();
	h_exec_ok(super, sql);
	PQfinish(super);
}

/* ================================================================ init_query */

TestSuite(server_init, .fini = fini_kill_leftovers, .timeout = 120);

/*
 * An init_query that sets an unreported parameter (work_mem), a reported one
 * that pgmux carries between backends (TimeZone), and counts its runs in a
 * sequence, so that the test sees how often it ran.
 */
#define COUNTED_INIT_QUERY                                                                             \
	"init_query = SELECT pg_catalog.set_config('work_mem', '64MB', false), "                        \
	"pg_catalog.set_config('TimeZone', 'Pacific/Chatham', false), nextval('public.init_runs')"

static void create_init_runs(void)
{
	super_exec("set client_min_messages = warning; drop sequence if exists public.init_runs; "
		   "create sequence public.init_runs; grant usage, select on sequence public.init_runs to app");
}

/* How many times init_query has run (sequence init_runs; 0 before the first). */
static int init_runs(void)
{
	PGconn *super = h_connect_super_direct();
	char *v = h_value_ok(super, "select case when is_called then last_value else 0 end from public.init_runs");
	int n = atoi(v);
	free(v);
	PQfinish(super);
	return n;
}

/* What init_query set is what the client sees. */
static void expect_init_settings(PGconn *conn, const char *when)
{
	char *wm = h_value_ok(conn, "show work_mem"), *tz = h_value_ok(conn, "show timezone");
	if (strcmp(wm, "64MB") != 0 || strcmp(tz, "Pacific/Chatham") != 0)
		pgmux_dump_logs(&px);
	cr_assert_str_eq(wm, "64MB", "%s: work_mem is %s, init_query set 64MB", when, wm);
	cr_assert_str_eq(tz, "Pacific/Chatham", "%s: TimeZone is %s, init_query set Pacific/Chatham", when, tz);
	free(wm);
	free(tz);
}

/*
 * Session pooling, one backend: the first client sees init_query's settings
 * (TimeZone too, which pgmux must not put back to its value from before
 * init_query), changes them and leaves. server_reset_query (DISCARD ALL)
 * undoes every SET, init_query's included, so pgmux runs init_query again:
 * the next client, on the same backend, sees init_query's settings, not the
 * server's defaults and not what the first client left.
 */
Test(server_init, session_mode_every_client_sees_init_query_settings)
{
	create_init_runs();
	start_pool_of_one("session", COUNTED_INIT_QUERY);

	PGconn *a = app();
	int pid = h_backend_pid(a);
	expect_init_settings(a, "first client on a new backend");
	cr_assert_eq(init_runs(), 1, "init_query ran %d times for one new backend", init_runs());
	h_exec_ok(a, "set work_mem = '1MB'");
	h_exec_ok(a, "set timezone = 'UTC'");
	PQfinish(a);

	PGconn *b = app();
	cr_assert_eq(h_backend_pid(b), pid, "the second client did not get the only backend");
	expect_init_settings(b, "second client, after the reset of the first one's session");
	/* Once for the new backend, once after DISCARD ALL. */
	cr_assert_eq(init_runs(), 2, "init_query ran %d times: a new backend and one reset", init_runs());
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
	super_exec("drop sequence public.init_runs");
}

/*
 * Transaction pooling, one backend shared by two clients: init_query runs
 * once for the backend, not per transaction or per client. A client that
 * changes TimeZone (carried by pgmux) sees its own value, the other client
 * sees init_query's on the same backend. A client that sets work_mem at
 * startup (options) has it applied; the next client on that backend gets
 * work_mem put back to init_query's value, not to the server's default.
 */
Test(server_init, transaction_mode_runs_once_per_backend)
{
	create_init_runs();
	start_pool_of_one("transaction", COUNTED_INIT_QUERY "\nmax_idle_connections_percent = 100");

	PGconn *a = app(), *b = app();
	int pid = h_backend_pid(a);
	for (int i = 0; i < 5; i++) {
		expect_init_settings(a, "client a");
		expect_init_settings(b, "client b");
	}
	h_exec_ok(a, "set timezone = 'UTC'");
	h_expect_value(a, "show timezone", "UTC");
	expect_init_settings(b, "client b after client a changed TimeZone");
	h_expect_value(a, "show timezone", "UTC");
	cr_assert_eq(h_backend_pid(b), pid, "a second backend was opened with max_connections = 1");
	cr_assert_eq(init_runs(), 1, "init_query ran %d times on one backend", init_runs());

	PGconn *c = h_app_session(&px, "disable", "options='-c work_mem=3MB'");
	h_expect_value(c, "show work_mem", "3MB");
	expect_init_settings(b, "client b after a client with work_mem=3MB at startup");
	cr_assert_eq(h_backend_pid(c), pid);
	PQfinish(a);
	PQfinish(b);
	PQfinish(c);
	h_stop_expect_clean_exit(&px);
	super_exec("drop sequence public.init_runs");
}

/*
 * An init_query that fails (an error, or one that leaves a transaction
 * open): the new connection is closed, the log says why, and the waiting
 * client gets a FATAL error that says why at once (not a wait for
 * connection_borrow_timeout). The slot is given back: a second client gets
 * the same answer, and no backend of app is left behind.
 */
Test(server_init, failing_init_query_closes_the_connection_and_tells_the_client)
{
	static const struct {
		const char *init_query, *client_says, *log_says;
	} cases[] = {
		{"init_query = SELECT 1/0", "init_query failed: division by zero",
		 "connection failed: init_query failed: division by zero"},
		{"init_query = BEGIN", "init_query failed: not idle afterwards",
		 "connection failed: init_query failed: not idle afterwards"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char pool[256];
		snprintf(pool, sizeof(pool), "%s\nconnection_borrow_timeout = 60s", cases[i].init_query);
		start_pool_of_one("session", pool);
		for (int attempt = 0; attempt < 2; attempt++) {
			long long took;
			char *message = expect_login_error("08006", h_scaled_ms(20000), &took);
			cr_assert(strstr(message, cases[i].client_says) != NULL,
				  "%s, login %d: the client was told \"%s\", expected \"%s\"", cases[i].init_query,
				  attempt + 1, message, cases[i].client_says);
			cr_assert_lt(took, h_scaled_ms(10000), "%s: the client waited %lld ms for its error",
				     cases[i].init_query, took);
			free(message);
		}
		h_expect_log(&px, cases[i].log_says, 2000);
		PGconn *super = h_connect_super_direct();
		bool gone = h_poll_value(super, H_APP_BACKENDS_SQL, "0", h_scaled_ms(5000));
		PQfinish(super);
		cr_assert(gone, "%s: a backend whose init_query failed is still connected", cases[i].init_query);
		h_stop_expect_clean_exit(&px);
	}
}

/* ================================================================ server_reset_query */

TestSuite(server_reset, .fini = fini_kill_leftovers, .timeout = 120);

/*
 * A client leaves a temp table, a changed parameter, an SQL prepared
 * statement and a protocol-level one, a session advisory lock... behind.
 * Returns its backend's pid.
 */
static int leave_session_state(PGconn *conn)
{
	int pid = h_backend_pid(conn);
	h_exec_ok(conn, "create temp table left_behind (x int)");
	h_exec_ok(conn, "set work_mem = '3MB'");
	h_exec_ok(conn, "prepare left_sql as select 1");
	PGresult *r = PQprepare(conn, "left_protocol", "select 2", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(conn));
	PQclear(r);
	h_exec_ok(conn, "select pg_advisory_lock(4242)");
	return pid;
}

/*
 * The default server_reset_query, DISCARD ALL: the next client, on the same
 * backend, finds none of the state the last one left.
 */
Test(server_reset, default_discard_all_clears_the_last_clients_state)
{
	start_pool_of_one("session", NULL);
	PGconn *a = app();
	char *default_work_mem = h_value_ok(a, "show work_mem");
	int pid = leave_session_state(a);
	PQfinish(a);

	PGconn *b = app();
	cr_assert_eq(h_backend_pid(b), pid, "the second client did not get the first one's backend");
	h_expect_value(b, "select to_regclass('pg_temp.left_behind') is null", "t");
	h_expect_value(b, "show work_mem", default_work_mem);
	h_expect_value(b, "select count(*) from pg_prepared_statements", "0");
	h_expect_value(b, "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
		       "0");
	free(default_work_mem);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/*
 * A custom server_reset_query is the statement run, instead of DISCARD ALL:
 * it records the backend's pid in a side table, and what DISCARD ALL would
 * have dropped (the temp table) is still there for the next client.
 */
Test(server_reset, custom_reset_query_is_the_one_run)
{
	super_exec("set client_min_messages = warning; drop table if exists public.reset_log; "
		   "create table public.reset_log (pid int, at timestamptz default now()); "
		   "grant insert, select on public.reset_log to app");
	start_pool_of_one("session", "server_reset_query = INSERT INTO public.reset_log (pid) VALUES (pg_backend_pid())");
	PGconn *a = app();
	int pid = leave_session_state(a);
	h_exec_ok(a, "select pg_advisory_unlock_all()");
	PQfinish(a);

	PGconn *super = h_connect_super_direct();
	char sql[128];
	snprintf(sql, sizeof(sql), "select count(*) from public.reset_log where pid = %d", pid);
	bool logged = h_poll_value(super, sql, "1", h_scaled_ms(5000));
	if (!logged)
		pgmux_dump_logs(&px);
	cr_assert(logged, "the custom server_reset_query did not run once on backend %d", pid);

	PGconn *b = app();
	cr_assert_eq(h_backend_pid(b), pid, "the second client did not get the first one's backend");
	h_expect_value(b, "select to_regclass('pg_temp.left_behind') is not null", "t");
	h_expect_value(b, "show work_mem", "3MB");
	h_expect_value(super, "select count(*) from public.reset_log", "1");
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
	h_exec_ok(super, "drop table public.reset_log");
	PQfinish(super);
}

/*
 * A server_reset_query that fails: the log says so, the backend is closed
 * rather than handed on with the last client's state, and the next client
 * gets a new backend.
 */
Test(server_reset, failing_reset_query_closes_the_backend)
{
	start_pool_of_one("session", "server_reset_query = SELECT 1/0");
	PGconn *a = app();
	int pid = leave_session_state(a);
	PQfinish(a);
	h_expect_log(&px, "reset query failed: division by zero", 5000);

	PGconn *b = app();
	int other = h_backend_pid(b);
	cr_assert_neq(other, pid, "the backend whose reset failed was handed to the next client");
	h_expect_value(b, "select to_regclass('pg_temp.left_behind') is null", "t");
	PGconn *super = h_connect_super_direct();
	cr_assert(h_wait_backend_gone(super, pid, 5000), "backend %d is still connected", pid);
	PQfinish(super);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ server_connect_timeout */

TestSuite(server_connect, .fini = fini_kill_leftovers, .timeout = 120);

/*
 * A target that accepts TCP connections and reads what comes, but answers
 * only pgmux's health checks: a connection whose startup packet names the
 * application "pgmux health check" is relayed to the suite's PostgreSQL,
 * so the instance stays healthy and the writer; every other connection (a
 * pool connection) is held open and never answered. It runs on a thread of
 * its own; server_tls must be disable so that the startup packet is readable.
 */
#define SILENT_MAX_CONNS 64

struct silent_conn {
	int fd;       /* accepted from pgmux */
	int upstream; /* relay to PostgreSQL, -1 when silent or still reading the startup packet */
	bool silent;
	uint8_t startup[1024];
	size_t startup_len;
};

struct silent_target {
	int listen_fd;
	int port;
	pthread_t thread;
	atomic_bool stop;
	atomic_int silent_accepted; /* pool connections held unanswered so far */
	struct silent_conn conns[SILENT_MAX_CONNS];
	int n_conns;
};

static void silent_conn_close(struct silent_target *t, int i)
{
	close(t->conns[i].fd);
	if (t->conns[i].upstream >= 0)
		close(t->conns[i].upstream);
	t->conns[i] = t->conns[--t->n_conns];
}

/* Copy what one side has to the other; false when either side is gone. */
static bool silent_relay(int from, int to)
{
	char buf[8192];
	ssize_t n = read(from, buf, sizeof(buf));
	if (n <= 0)
		return false;
	for (ssize_t off = 0; off < n;) {
		ssize_t w = write(to, buf + off, (size_t)(n - off));
		if (w <= 0)
			return false;
		off += w;
	}
	return true;
}

/* More of a connection's startup packet; decides its fate once it is whole. False: close it. */
static bool silent_read_startup(struct silent_target *t, struct silent_conn *c)
{
	ssize_t n = read(c->fd, c->startup + c->startup_len, sizeof(c->startup) - c->startup_len);
	if (n <= 0)
		return false;
	c->startup_len += (size_t)n;
	if (c->startup_len < 4 || c->startup_len < h_get_u32(c->startup))
		return c->startup_len < sizeof(c->startup);
	if (memmem(c->startup, c->startup_len, "pgmux health check", 18) == NULL) {
		c->silent = true;
		atomic_fetch_add(&t->silent_accepted, 1);
		return true;
	}
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)h_env()->pgport)};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	c->upstream = socket(AF_INET, SOCK_STREAM, 0);
	if (c->upstream < 0 || connect(c->upstream, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		return false;
	return write(c->upstream, c->startup, c->startup_len) == (ssize_t)c->startup_len;
}

static void *silent_target_main(void *arg)
{
	struct silent_target *t = arg;
	while (!atomic_load(&t->stop)) {
		struct pollfd pfd[1 + 2 * SILENT_MAX_CONNS];
		int n = 0;
		pfd[n++] = (struct pollfd){.fd = t->n_conns < SILENT_MAX_CONNS ? t->listen_fd : -1, .events = POLLIN};
		for (int i = 0; i < t->n_conns; i++) {
			/* A silent connection is still read, to see pgmux close it. */
			pfd[n++] = (struct pollfd){.fd = t->conns[i].fd, .events = POLLIN};
			pfd[n++] = (struct pollfd){.fd = t->conns[i].upstream, .events = POLLIN};
		}
		if (poll(pfd, (nfds_t)n, 50) <= 0)
			continue;
		for (int i = t->n_conns - 1; i >= 0; i--) {
			struct silent_conn *c = &t->conns[i];
			short from_pgmux = pfd[1 + 2 * i].revents, from_pg = pfd[2 + 2 * i].revents;
			bool alive = true;
			if (from_pgmux) {
				if (c->silent) {
					char sink[4096];
					alive = read(c->fd, sink, sizeof(sink)) > 0;
				} else if (c->upstream < 0) {
					alive = silent_read_startup(t, c);
				} else {
					alive = silent_relay(c->fd, c->upstream);
				}
			}
			if (alive && from_pg)
				alive = silent_relay(c->upstream, c->fd);
			if (!alive)
				silent_conn_close(t, i);
		}
		if (pfd[0].revents & POLLIN) {
			int fd = accept(t->listen_fd, NULL, NULL);
			if (fd >= 0)
				t->conns[t->n_conns++] = (struct silent_conn){.fd = fd, .upstream = -1};
		}
	}
	return NULL;
}

static struct silent_target *silent_target_start(void)
{
	struct silent_target *t = calloc(1, sizeof(*t));
	cr_assert_not_null(t);
	t->port = h_free_port();
	t->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(t->listen_fd, 0, "socket: %s", strerror(errno));
	int on = 1;
	setsockopt(t->listen_fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)t->port)};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	cr_assert_eq(bind(t->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "bind to port %d: %s", t->port,
		     strerror(errno));
	cr_assert_eq(listen(t->listen_fd, 16), 0, "listen: %s", strerror(errno));
	cr_assert_eq(pthread_create(&t->thread, NULL, silent_target_main, t), 0);
	running_target = t;
	return t;
}

static void silent_target_stop(struct silent_target *t)
{
	running_target = NULL;
	atomic_store(&t->stop, true);
	pthread_join(t->thread, NULL);
	while (t->n_conns > 0)
		silent_conn_close(t, 0);
	close(t->listen_fd);
	free(t);
}

/*
 * server_connect_timeout = 500ms against a target that accepts the
 * connection but never answers the login. Each attempt fails after about
 * the timeout and is logged; the instance is healthy (its health checks
 * pass), so pgmux tries again, and the client keeps waiting until
 * connection_borrow_timeout, when it gets FATAL 53300 with a DETAIL that
 * says how the last attempt failed. All the while the
 * worker's event loop (there is one worker) keeps serving: the admin console
 * answers at once and shows the connection being opened.
 */
Test(server_connect, timeout_fails_the_attempt_without_blocking_the_loop)
{
	struct silent_target *t = silent_target_start();
	char hosts[64];
	snprintf(hosts, sizeof(hosts), "127.0.0.1:%d", t->port);
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.workers = 1;
	o.hosts = hosts;
	o.server_tls = "disable";
	o.extra_target = "server_connect_timeout = 500ms";
	o.extra_pool = "connection_borrow_timeout = 4s";
	start_pgmux(&o);
	PGconn *admin = h_admin_session(&px);
	wait_for_writer(admin, hosts);

	struct h_cmd client;
	char *ci = h_conninfo(px.port, h_env()->appuser, NULL, "disable", "connect_timeout=60");
	const char *args[] = {"-c", "select 1", NULL};
	long long t0 = h_now_ms();
	cr_assert(h_psql_start(&client, ci, h_env()->apppass, args));
	free(ci);

	/* While the client waits, the admin console answers at once, again and again. */
	int answered = 0, saw_connecting = 0, slowest = 0;
	while (!h_cmd_wait(&client, 100)) {
		long long q0 = h_now_ms();
		char *state = h_admin_cell(admin, "SHOW SERVERS", NULL, NULL, "state");
		int took = (int)(h_now_ms() - q0);
		slowest = took > slowest ? took : slowest;
		answered++;
		if (state && strcmp(state, "connecting") == 0)
			saw_connecting++;
		free(state);
		cr_assert_lt(h_now_ms() - t0, h_scaled_ms(30000), "the client was never answered");
	}
	long long waited = client.ended_ms - t0;
	if (client.status == 0 || strstr(client.err, "timed out waiting to acquire database connection") == NULL)
		pgmux_dump_logs(&px);
	cr_assert_neq(client.status, 0, "the client was served by a target that never answers");
	cr_assert(strstr(client.err, "timed out waiting to acquire database connection") != NULL,
		  "the client did not get the borrow timeout: %s", client.err);
	cr_assert(strstr(client.err, "DETAIL:  pgmux could not connect to the database server: timed out connecting"),
		  "the client was not told why it waited in vain: %s", client.err);
	cr_assert_geq(waited, 3500, "the client gave up after %lld ms, before connection_borrow_timeout = 4s",
		      waited);
	cr_assert_gt(answered, 10, "the admin console answered only %d times in %lld ms", answered, waited);
	cr_assert_lt(slowest, h_scaled_ms(1000), "the admin console took %d ms to answer during the wait", slowest);
	cr_assert_gt(saw_connecting, 0, "SHOW SERVERS never showed the connection being opened");

	/* Attempts fail after about server_connect_timeout: several in 4 s, not one per borrow timeout. */
	int timeouts = h_file_count(px.logfile, "connection failed: timed out connecting");
	cr_assert_geq(timeouts, 3, "%d connection attempts timed out in %lld ms with server_connect_timeout = 500ms",
		      timeouts, waited);
	cr_assert_leq(timeouts, 10, "%d attempts timed out in %lld ms: faster than server_connect_timeout = 500ms",
		      timeouts, waited);
	cr_assert_geq(atomic_load(&t->silent_accepted), timeouts, "the target saw fewer attempts than pgmux logged");
	cr_log_info("server_connect_timeout = 500ms: %d attempts timed out, client answered after %lld ms; admin "
		    "console answered %d times, slowest %d ms",
		    timeouts, waited, answered, slowest);
	h_cmd_free(&client);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
	silent_target_stop(t);
}

/* ================================================================ max_connections_percent */

TestSuite(server_cap, .fini = fini_kill_leftovers, .timeout = 180);

/* What the suite's PostgreSQL allows ordinary roles: max_connections - superuser_reserved_connections. */
static int server_allows(void)
{
	PGconn *super = h_connect_super_direct();
	char *max = h_value_ok(super, "show max_connections");
	char *reserved = h_value_ok(super, "show superuser_reserved_connections");
	int allowed = atoi(max) - atoi(reserved);
	free(max);
	free(reserved);
	PQfinish(super);
	return allowed;
}

/* SHOW TARGETS must come to report want as the suite's instance's max_connections, after a reload. */
static void expect_target_cap(PGconn *admin, int want, const char *why)
{
	char text[16];
	snprintf(text, sizeof(text), "%d", want);
	bool shown = h_admin_poll_cell(admin, "SHOW TARGETS", "instance", suite_instance(), "max_connections", text,
				       h_scaled_ms(5000));
	char *now = shown ? NULL : h_admin_cell(admin, "SHOW TARGETS", "instance", suite_instance(), "max_connections");
	if (!shown)
		pgmux_dump_logs(&px);
	cr_assert(shown, "%s: SHOW TARGETS reports max_connections = %s, expected %d", why, now ? now : "(no row)",
		  want);
}

/*
 * max_connections = 0 and max_connections_percent = 10: pgmux asks the
 * server and uses a tenth of the connections it allows ordinary roles
 * (max_connections minus superuser_reserved_connections). Under pgbench
 * with more clients than that, app never has more backends, and SHOW
 * TARGETS reports the cap.
 */
/*
 * Run pgbench -S with the given number of clients through pgmux, sampling
 * pg_stat_activity from super meanwhile; returns the most backends of app
 * seen at once.
 */
static int pgbench_max_backends(PGconn *super, const char *clients)
{
	char what[64];
	const char *args[] = {"-n", "-S", "-c", clients, "-j", "2", "-T", h_under_valgrind() ? "6" : "4", NULL};
	struct h_cmd c;
	cr_assert(h_pgbench_start(&c, px.port, "disable", "postgres", args));
	int samples = 0, max_seen = 0;
	long long deadline = h_now_ms() + h_scaled_ms(60000);
	while (!h_cmd_wait(&c, 100)) {
		if (h_now_ms() > deadline) {
			h_cmd_kill(&c);
			h_cmd_dump(&c, "pgbench");
			cr_assert_fail("pgbench did not finish in time");
		}
		int n = h_app_backends(super);
		samples++;
		max_seen = n > max_seen ? n : max_seen;
	}
	snprintf(what, sizeof(what), "pgbench -c %s", clients);
	h_expect_pgbench_clean(&c, what);
	h_cmd_free(&c);
	cr_assert_geq(samples, 3, "pg_stat_activity was sampled only %d times while pgbench ran", samples);
	cr_assert_gt(max_seen, 0, "no backend of app was ever seen while pgbench ran");
	return max_seen;
}

Test(server_cap, percent_of_the_servers_max_connections)
{
	int allowed = server_allows(), cap = allowed * 10 / 100;
	cr_assert_gt(cap, 1, "the suite's PostgreSQL allows too few connections (%d)", allowed);
	cr_assert_lt(cap, 20, "pgbench's 20 clients must outnumber the cap of %d", cap);

	struct pgmux_options o;
	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.max_connections = 0;
	o.max_connections_percent = 10;
	o.extra_pool = "max_idle_connections_percent = 100";
	start_pgmux(&o);

	PGconn *super = h_connect_super_direct();
	int max_seen = pgbench_max_backends(super, "20");
	cr_assert_leq(max_seen, cap, "app had %d backends; 10 %% of %d allows %d", max_seen, allowed, cap);

	PGconn *admin = h_admin_session(&px);
	expect_target_cap(admin, cap, "max_connections_percent = 10");
	char *connections = h_admin_cell_ok(admin, "SHOW TARGETS", "instance", suite_instance(), "connections");
	cr_assert_leq(atoi(connections), cap, "SHOW TARGETS reports %s connections, over the cap of %d", connections,
		      cap);
	free(connections);
	h_expect_log(&px, "pgmux uses at most", 1000);
	cr_log_info("max_connections_percent = 10 of %d: cap %d, at most %d backends", allowed, cap, max_seen);
	PQfinish(admin);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/*
 * A cap far above the number of clients: pgmux opens a backend for a client
 * that waits only when the connections already opening cannot serve it, so
 * eight clients never have more than eight backends however their
 * transactions interleave. Two workers (the harness's default), so idle
 * backends also move from one worker's loop to a waiter on the other: one on
 * its way counts as able to serve a waiter, like a connection opening.
 */
Test(server_cap, no_more_backends_than_clients_under_a_large_cap)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.max_connections = 40;
	o.extra_pool = "max_idle_connections_percent = 100";
	start_pgmux(&o);
	PGconn *super = h_connect_super_direct();
	int max_seen = pgbench_max_backends(super, "8");
	cr_assert_leq(max_seen, 8, "eight clients had %d backends at once", max_seen);
	cr_log_info("pgbench -c 8 under a cap of 40: at most %d backends", max_seen);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ server_tls */

TestSuite(server_tls, .fini = fini_kill_leftovers, .timeout = 120);

/*
 * verify-ca and verify-full with server_tls_ca_file = the suite's CA, which
 * signed PostgreSQL's certificate (for 127.0.0.1): clients are served, and
 * PostgreSQL sees TLS on pgmux's connection (pg_stat_ssl), both for the
 * client's backend and for the health check's.
 */
Test(server_tls, verify_ca_and_verify_full_with_the_servers_ca)
{
	static const char *const modes[] = {"verify-ca", "verify-full"};
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		struct pgmux_options o;
		pgmux_options_default(&o);
		o.server_tls = modes[i];
		o.server_tls_ca_file = h_env()->ca;
		start_pgmux(&o);
		PGconn *a = app();
		h_expect_value(a, "select ssl from pg_stat_ssl where pid = pg_backend_pid()", "t");
		int pid = h_backend_pid(a);

		PGconn *super = h_connect_super_direct();
		char sql[256];
		snprintf(sql, sizeof(sql), "select ssl::text || ' ' || (version like 'TLSv1.%%')::text from pg_stat_ssl "
					   "where pid = %d", pid);
		h_expect_value(super, sql, "true true");
		bool checks_tls = h_poll_value(super,
					       "select bool_and(s.ssl) from pg_stat_activity a join pg_stat_ssl s "
					       "using (pid) where a.application_name = 'pgmux health check'",
					       "t", h_scaled_ms(5000));
		cr_assert(checks_tls, "%s: the health check's connection does not use TLS", modes[i]);
		PQfinish(super);
		PQfinish(a);
		h_stop_expect_clean_exit(&px);
	}
}

/*
 * verify-ca with a CA that did not sign PostgreSQL's certificate: pgmux
 * never logs in to the server, not even for its health check. The log says
 * why (the certificate failed verification); the client, which has nothing
 * to be served by, gets FATAL 53300 at connection_borrow_timeout, with a
 * DETAIL that gives the health check's reason.
 */
Test(server_tls, verify_ca_with_another_ca_fails_with_the_reason_logged)
{
	char key[600], ca[600];
	snprintf(key, sizeof(key), "%s/other-ca.key", h_test_dir());
	snprintf(ca, sizeof(ca), "%s/other-ca.pem", h_test_dir());
	const char *argv[] = {"openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
			      "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", ca, "-days", "1",
			      "-subj", "/CN=not the suite's CA", NULL};
	struct h_cmd gen;
	int st = h_cmd_run(&gen, argv, NULL, 30000);
	if (st != 0)
		h_cmd_dump(&gen, "openssl");
	cr_assert_eq(st, 0, "openssl could not make a CA");
	h_cmd_free(&gen);

	struct pgmux_options o;
	pgmux_options_default(&o);
	o.server_tls = "verify-ca";
	o.server_tls_ca_file = ca;
	o.extra_pool = "connection_borrow_timeout = 2s";
	start_pgmux(&o);
	long long took;
	char *message = expect_login_error("53300", h_scaled_ms(30000), &took);
	cr_assert(strstr(message, "timed out waiting to acquire database connection") != NULL,
		  "the client was told: %s", message);
	cr_assert(strstr(message, "DETAIL:  No writer instance is available: ") != NULL &&
			  strstr(message, "failed its health check: ") != NULL &&
			  strstr(message, "certificate verify failed") != NULL,
		  "the client was not told why it waited in vain: %s", message);
	cr_assert_geq(took, 1900, "the client got its error after %lld ms, before connection_borrow_timeout", took);
	free(message);
	h_expect_log(&px, "failed its health check", 5000);
	h_expect_log(&px, "certificate verify failed", 5000);
	PGconn *super = h_connect_super_direct();
	cr_assert_eq(h_app_backends(super), 0, "app has a backend although no certificate check can pass");
	PQfinish(super);
	/* SHOW TARGETS says why the instance serves nobody. */
	PGconn *admin = h_admin_session(&px);
	char *status = h_admin_cell(admin, "SHOW TARGETS", "instance", suite_instance(), "status");
	cr_assert(status && strncmp(status, "health check failed: ", 21) == 0 &&
			  strstr(status, "certificate verify failed") != NULL,
		  "SHOW TARGETS status: %s", status ? status : "(no row)");
	free(status);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/*
 * An init_query that never ends (it waits for an advisory lock the test
 * holds) counts against server_connect_timeout like the login does: the
 * attempt is closed and logged, the client gets the borrow timeout with a
 * DETAIL that says so, and once the lock is free the pool serves again.
 */
Test(server_connect, hung_init_query_times_out)
{
	PGconn *holder = h_connect_super_direct();
	h_exec_ok(holder, "select pg_advisory_lock(7707)");
	int timeout_ms = h_scaled_ms(1000);
	char target[64], pool[160];
	snprintf(target, sizeof(target), "server_connect_timeout = %dms", timeout_ms);
	snprintf(pool, sizeof(pool), "init_query = SELECT pg_advisory_xact_lock(7707)\nconnection_borrow_timeout = %dms",
		 3 * timeout_ms);
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_target = target;
	o.extra_pool = pool;
	start_pgmux(&o);
	PGconn *admin = h_admin_session(&px);
	wait_for_writer(admin, suite_instance());
	PQfinish(admin);

	long long took;
	char *message = expect_login_error("53300", 10 * timeout_ms, &took);
	bool told = strstr(message, "DETAIL:  pgmux could not connect to the database server: timed out running the "
				    "setup query or init_query") != NULL;
	if (!told)
		pgmux_dump_logs(&px);
	cr_assert(told, "the client was not told why it waited in vain: %s", message);
	cr_assert_geq(took, 3 * timeout_ms - 100, "the client got its error after %lld ms", took);
	free(message);
	h_expect_log(&px, "connection failed: timed out running the setup query or init_query", 1000);

	h_exec_ok(holder, "select pg_advisory_unlock(7707)");
	PGconn *a = app();
	h_expect_value(a, "select 'served once the lock is free'", "served once the lock is free");
	PQfinish(a);
	PQfinish(holder);
	h_stop_expect_clean_exit(&px);
}

/*
 * Both options are reloadable: a reload that changes max_connections_percent
 * applies the new share of the server's limit at once, one that sets
 * max_connections applies that, and going back to 0 uses the server's limit
 * again, even though it was learned under a fixed max_connections.
 */
Test(server_cap, reload_applies_a_new_cap)
{
	int allowed = server_allows();
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.max_connections = 3;
	start_pgmux(&o);
	PGconn *admin = h_admin_session(&px);
	PGconn *a = app(); /* a first connection, which learns the server's limit */
	expect_target_cap(admin, 3, "max_connections = 3");

	o.max_connections = 0;
	o.max_connections_percent = 20;
	pgmux_reload(&px, &o);
	expect_target_cap(admin, allowed * 20 / 100, "reloaded with max_connections = 0, percent = 20");
	o.max_connections_percent = 50;
	pgmux_reload(&px, &o);
	expect_target_cap(admin, allowed * 50 / 100, "reloaded with max_connections_percent = 50");
	o.max_connections = 4;
	pgmux_reload(&px, &o);
	expect_target_cap(admin, 4, "reloaded with max_connections = 4");
	h_expect_value(a, "select 'still served'", "still served");
	PQfinish(a);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}
