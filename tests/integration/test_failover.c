/*
 * test_failover.c: pgmux in front of a real primary + streaming standby
 * pair. The suite's PostgreSQL (pg-env.sh) cannot fail over, so every test
 * here builds its own little cluster on loopback ports, crashes or stops its
 * instances with pg_ctl and promotes the standby, and checks what clients of
 * pgmux's writer port (listen_port) and reader port (readonly_port) see.
 *
 * The postmasters are children of the test process (started directly, not
 * through pg_ctl, and asking for SIGKILL should the test process die); .fini
 * stops each by its PID and removes the cluster's directory.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------- one cluster */

struct instance {
	const char *name; /* "primary" or "standby" */
	char dir[600];
	char addr[16]; /* the loopback address it listens on: 127.0.0.1 unless a test says otherwise */
	int port;
	struct h_cmd postmaster; /* pid 0 once it has exited and been reaped */
	bool started;
};

struct cluster {
	char base[512]; /* everything of this cluster lives below it */
	struct instance primary;
	struct instance standby;
};

static struct cluster cl;
static struct pgmux px;
static int readonly_port;

static const char *pg_program(const char *name)
{
	static char path[8][600];
	static int next;
	char *p = path[next++ % 8];
	snprintf(p, sizeof(path[0]), "%s/%s", h_env()->pgbin, name);
	return p;
}

/* Write (mode "w") or append (mode "a") text to a file inside the cluster. */
static void write_cluster_file(const char *path, const char *mode, const char *text)
{
	FILE *f = fopen(path, mode);
	cr_assert(f != NULL, "%s: %s", path, strerror(errno));
	fputs(text, f);
	cr_assert(fclose(f) == 0, "%s: %s", path, strerror(errno));
}

/* A direct superuser connection to one instance of the cluster; fails the test on error. */
static PGconn *connect_super(int port)
{
	return h_connect_super_port(port, "postgres");
}

/*
 * Start the postmaster of inst as our own child, as postgres when we are
 * root (setpriv execs in place, so the PID is the postmaster's and it still
 * dies with us), and wait until it accepts connections.
 */
static void instance_start(struct instance *inst)
{
	const char *postmaster[] = {pg_program("postgres"), "-D", inst->dir, NULL};
	const char *argv[16];

	h_as_postgres_argv(argv, 16, postmaster);
	cr_assert(h_cmd_start(&inst->postmaster, argv, NULL));
	inst->started = true;

	char ping[200];
	snprintf(ping, sizeof(ping), "host=%s port=%d dbname=postgres connect_timeout=2", inst->addr, inst->port);
	long long deadline = h_now_ms() + 30000;
	for (;;) {
		if (PQping(ping) == PQPING_OK)
			return;
		if (h_cmd_wait(&inst->postmaster, 0)) {
			fprintf(stderr, "%s postmaster log:\n%s\n", inst->name, inst->postmaster.err);
			cr_assert_fail("the %s (port %d) exited with status %d while starting", inst->name,
				       inst->port, inst->postmaster.status);
		}
		cr_assert(h_now_ms() < deadline, "the %s (port %d) did not accept connections within 30 s",
			  inst->name, inst->port);
		h_sleep_ms(20);
	}
}

/* pg_ctl stop -m immediate (a crash, as far as clients can tell), then reap the postmaster. */
static void instance_crash(struct instance *inst)
{
	const char *argv[] = {pg_program("pg_ctl"), "-D", inst->dir, "-m", "immediate", "-w", "-t", "30", "stop",
			      NULL};
	h_run_as_postgres("pg_ctl stop -m immediate", argv, 40000);
	cr_assert(h_cmd_wait(&inst->postmaster, 10000), "the %s postmaster did not exit after pg_ctl stop",
		  inst->name);
	h_cmd_free(&inst->postmaster);
	inst->started = false;
}

/* For .fini: stop a postmaster still running by its PID (SIGQUIT = immediate shutdown). */
static void instance_stop_quietly(struct instance *inst)
{
	if (!inst->started || inst->postmaster.pid == 0)
		return;
	kill(inst->postmaster.pid, SIGQUIT);
	if (!h_cmd_wait(&inst->postmaster, 10000))
		h_cmd_kill(&inst->postmaster);
	h_cmd_free(&inst->postmaster);
	inst->started = false;
}

static void cluster_dirs(void)
{
	memset(&cl, 0, sizeof(cl));
	/* The suite's directory is world-searchable; the test's own is not (postgres must reach this). */
	snprintf(cl.base, sizeof(cl.base), "%s/failover-%ld-XXXXXX", h_env()->dir, (long)getpid());
	cr_assert(mkdtemp(cl.base) != NULL, "mkdtemp %s: %s", cl.base, strerror(errno));
	h_chown_to_postgres(cl.base);
	cl.primary.name = "primary";
	cl.standby.name = "standby";
	snprintf(cl.primary.dir, sizeof(cl.primary.dir), "%s/primary", cl.base);
	snprintf(cl.standby.dir, sizeof(cl.standby.dir), "%s/standby", cl.base);
	snprintf(cl.primary.addr, sizeof(cl.primary.addr), "127.0.0.1");
	snprintf(cl.standby.addr, sizeof(cl.standby.addr), "127.0.0.1");
	cl.primary.port = h_free_port();
	do
		cl.standby.port = h_free_port();
	while (cl.standby.port == cl.primary.port);
}

/*
 * A fresh primary with the suite's superuser password and the app role
 * (SCRAM over TCP), ready to stream WAL to a standby. Tables:
 * fo_writes (one row per write, with the port of the instance that took it)
 * and fo_counters (one row per load thread).
 */
static void cluster_init_primary(void)
{
	const struct h_env *e = h_env();
	char path[700], text[1024];

	snprintf(path, sizeof(path), "%s/pwfile", cl.base);
	snprintf(text, sizeof(text), "%s\n", e->superpass);
	write_cluster_file(path, "w", text);
	chmod(path, 0600);
	h_chown_to_postgres(path);
	char pwopt[720];
	snprintf(pwopt, sizeof(pwopt), "--pwfile=%s", path);
	const char *initdb[] = {pg_program("initdb"), "-D", cl.primary.dir, "-U", e->superuser, pwopt,
				"--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
				"--locale=C", "-N", NULL};
	h_run_as_postgres("initdb", initdb, 60000);
	unlink(path);

	snprintf(path, sizeof(path), "%s/postgresql.conf", cl.primary.dir);
	snprintf(text, sizeof(text),
		 "\n# ---- pgmux failover tests\n"
		 "listen_addresses = '127.0.0.1'\n"
		 "port = %d\n"
		 "unix_socket_directories = ''\n"
		 "max_connections = 60\n"
		 "password_encryption = 'scram-sha-256'\n"
		 "wal_level = replica\n"
		 "max_wal_senders = 4\n"
		 "hot_standby = on\n"
		 "fsync = off\n"
		 "synchronous_commit = off\n"
		 "shared_buffers = 16MB\n"
		 "logging_collector = off\n"
		 "log_line_prefix = '%%m [%%p] %%q%%u@%%d '\n",
		 cl.primary.port);
	write_cluster_file(path, "a", text);
	snprintf(path, sizeof(path), "%s/pg_hba.conf", cl.primary.dir);
	write_cluster_file(path, "w",
			   "# pgmux failover tests: the standby streams without a password\n"
			   "host replication all 127.0.0.1/32 trust\n"
			   "host all all 127.0.0.1/32 scram-sha-256\n");
	instance_start(&cl.primary);

	PGconn *super = connect_super(cl.primary.port);
	snprintf(text, sizeof(text), "CREATE ROLE %s LOGIN PASSWORD '%s'", e->appuser, e->apppass);
	h_exec_ok(super, text);
	snprintf(text, sizeof(text), "GRANT CREATE, USAGE ON SCHEMA public TO %s", e->appuser);
	h_exec_ok(super, text);
	h_exec_ok(super, "CREATE TABLE fo_writes (id bigserial PRIMARY KEY, client int NOT NULL, "
		       "port int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())");
	h_exec_ok(super, "CREATE TABLE fo_counters (id int PRIMARY KEY, n bigint NOT NULL)");
	h_exec_ok(super, "INSERT INTO fo_counters SELECT g, 0 FROM generate_series(0, 15) g");
	snprintf(text, sizeof(text), "ALTER TABLE fo_writes OWNER TO %s", e->appuser);
	h_exec_ok(super, text);
	snprintf(text, sizeof(text), "ALTER TABLE fo_counters OWNER TO %s", e->appuser);
	h_exec_ok(super, text);
	PQfinish(super);
}

/* A streaming standby of the primary: pg_basebackup -R, its own port, started and caught up. */
static void cluster_add_standby(void)
{
	char port[16], path[700], text[200];
	snprintf(port, sizeof(port), "%d", cl.primary.port);
	const char *basebackup[] = {pg_program("pg_basebackup"), "-h", "127.0.0.1", "-p", port, "-U",
				    h_env()->superuser, "-D", cl.standby.dir, "-R", "-c", "fast", "-X",
				    "stream", "-w", NULL};
	h_run_as_postgres("pg_basebackup", basebackup, 60000);
	snprintf(path, sizeof(path), "%s/postgresql.conf", cl.standby.dir);
	snprintf(text, sizeof(text), "\n# ---- the standby\nlisten_addresses = '%s'\nport = %d\n", cl.standby.addr,
		 cl.standby.port);
	write_cluster_file(path, "a", text);
	instance_start(&cl.standby);

	PGconn *standby = h_connect_super_at(cl.standby.addr, cl.standby.port, "postgres");
	cr_assert(h_poll_value(standby, "select pg_is_in_recovery()", "t", 10000),
		  "the standby is not in recovery");
	PQfinish(standby);
	PGconn *primary = connect_super(cl.primary.port);
	cr_assert(h_poll_value(primary, "select count(*) from pg_stat_replication where state = 'streaming'", "1",
			       20000),
		  "the standby is not streaming from the primary");
	/* The app role and the tables have reached the standby. */
	h_exec_ok(primary, "select 1");
	PQfinish(primary);
}

/* pg_ctl promote (it waits until the promotion is done); returns when it returned. */
static long long promote_standby(void)
{
	const char *argv[] = {pg_program("pg_ctl"), "-D", cl.standby.dir, "-w", "-t", "30", "promote", NULL};
	h_run_as_postgres("pg_ctl promote", argv, 40000);
	return h_now_ms();
}

static void cluster_remove(void)
{
	instance_stop_quietly(&cl.standby);
	instance_stop_quietly(&cl.primary);
	if (cl.base[0] && getenv("PGMUX_TEST_KEEP") == NULL) {
		const char *argv[] = {"rm", "-rf", cl.base, NULL};
		struct h_cmd c;
		h_cmd_run(&c, argv, NULL, 30000);
		h_cmd_free(&c);
	}
	cl.base[0] = '\0';
}

/* ---------------------------------------------------------------- pgmux in front */

/* pgmux with transaction pooling, quick health checks and a reader port. */
static void start_pgmux(const char *hosts, const char *extra_target, const char *borrow_timeout)
{
	static char pgmux_lines[128], target_lines[512], pool_lines[128];
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.tls = false;
	o.pool_mode = "transaction";
	o.server_tls = "disable";
	o.max_connections = 20;
	readonly_port = h_free_port();
	snprintf(pgmux_lines, sizeof(pgmux_lines), "readonly_port = %d\n", readonly_port);
	snprintf(target_lines, sizeof(target_lines),
		 "health_check_interval = 250\n"
		 "health_check_timeout = 500ms\n"
		 "health_check_user = %s\n%s",
		 h_env()->appuser, extra_target ? extra_target : "");
	snprintf(pool_lines, sizeof(pool_lines), "connection_borrow_timeout = %s\n", borrow_timeout);
	o.extra_pgmux = pgmux_lines;
	o.extra_target = target_lines;
	o.extra_pool = pool_lines;
	o.hosts = hosts;
	o.admin_users = h_env()->superuser;
	do
		o.listen_port = h_free_port();
	while (o.listen_port == readonly_port);
	pgmux_start_ok(&px, &o);
}

static char hosts_buf[128];

static const char *hosts_of(const struct instance *a, const struct instance *b)
{
	if (b)
		snprintf(hosts_buf, sizeof(hosts_buf), "127.0.0.1:%d, 127.0.0.1:%d", a->port, b->port);
	else
		snprintf(hosts_buf, sizeof(hosts_buf), "127.0.0.1:%d", a->port);
	return hosts_buf;
}

/* A client of pgmux's port (listen_port or readonly_port) that must log in. */
static PGconn *connect_app_ok(int port)
{
	return h_app_session_on(&px, port, "disable", "application_name=failover-test");
}

static void expect_port(PGconn *conn, int port)
{
	char want[16];
	snprintf(want, sizeof(want), "%d", port);
	h_expect_value(conn, "select inet_server_port()", want);
}

/* Poll pgmux's log for a line holding both needles; returns that line (malloc'd) or NULL. */
static char *wait_log_line(const char *needle, const char *also, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	for (;;) {
		FILE *f = fopen(px.logfile, "r");
		char line[2048];
		while (f && fgets(line, sizeof(line), f))
			if (strstr(line, needle) && (also == NULL || strstr(line, also))) {
				fclose(f);
				line[strcspn(line, "\n")] = '\0';
				return strdup(line);
			}
		if (f)
			fclose(f);
		if (h_now_ms() >= deadline)
			return NULL;
		h_sleep_ms(20);
	}
}

/* ---------------------------------------------------------------- fixtures */

static void init_pair(void)
{
	cluster_dirs();
	cluster_init_primary();
	cluster_add_standby();
}

static void init_primary_only(void)
{
	cluster_dirs();
	cluster_init_primary();
}

static void fini_cluster(void)
{
	pgmux_kill(&px);
	cluster_remove();
	h_teardown();
}

TestSuite(failover, .init = init_pair, .fini = fini_cluster, .timeout = 120);
TestSuite(failover_no_reader, .init = init_primary_only, .fini = fini_cluster, .timeout = 60);
TestSuite(replica_lag, .init = init_pair, .fini = fini_cluster, .timeout = 60);

/*
 * Discovery as on Aurora, where every instance endpoint has the same port and
 * its own name, <server_id>.<cluster>.<region>.rds.amazonaws.com: here every
 * instance has the same port and its own loopback address, 127.0.0.<server_id>
 * (the pattern 127.0.0.?). The primary is instance 1 on 127.0.0.1, the
 * standby instance 2 on 127.0.0.2. Stand-ins for Aurora's functions report
 * the topology the test writes into aurora_topology on the primary (which
 * every instance sees, as on Aurora) and name each instance by the address
 * it was reached at.
 */
static void init_discovery(void)
{
	cluster_dirs();
	snprintf(cl.standby.addr, sizeof(cl.standby.addr), "127.0.0.2");
	cl.standby.port = cl.primary.port;
	cluster_init_primary();
	cluster_add_standby();
	PGconn *primary = connect_super(cl.primary.port);
	h_exec_ok(primary, "CREATE TABLE aurora_topology (server_id text PRIMARY KEY, session_id text NOT NULL, "
			 "replica_lag_in_msec float8 NOT NULL DEFAULT 0)");
	h_exec_ok(primary, "GRANT SELECT ON aurora_topology TO PUBLIC");
	h_exec_ok(primary, "INSERT INTO aurora_topology VALUES ('1', 'MASTER_SESSION_ID', 0)");
	h_exec_ok(primary, "CREATE FUNCTION aurora_db_instance_identifier() RETURNS text LANGUAGE sql "
			 "AS $$ SELECT split_part(host(inet_server_addr()), '.', 4) $$");
	h_exec_ok(primary, "CREATE FUNCTION aurora_replica_status() "
			 "RETURNS TABLE (server_id text, session_id text, replica_lag_in_msec float8) LANGUAGE sql "
			 "AS $$ SELECT server_id, session_id, replica_lag_in_msec FROM aurora_topology $$");
	PQfinish(primary);
	PGconn *standby = h_connect_super_at(cl.standby.addr, cl.standby.port, "postgres");
	cr_assert(h_poll_value(standby, "select to_regproc('aurora_replica_status') is not null", "t", 10000),
		  "the stand-ins did not reach the standby");
	cr_assert(h_poll_value(standby, "select aurora_db_instance_identifier()", "2", 0));
	PQfinish(standby);
}

TestSuite(discovery, .init = init_discovery, .fini = fini_cluster, .timeout = 60);

/* ================================================================ routing */

Test(failover, writer_port_reaches_primary_reader_port_reaches_standby)
{
	start_pgmux(hosts_of(&cl.primary, &cl.standby), NULL, "10s");

	PGconn *w = connect_app_ok(px.port);
	expect_port(w, cl.primary.port);
	h_expect_value(w, "select pg_is_in_recovery()", "f");
	char p1[16];
	snprintf(p1, sizeof(p1), "%d", cl.primary.port);
	h_expect_value(w, "insert into fo_writes (client, port) values (1, inet_server_port()) returning port", p1);

	PGconn *r = connect_app_ok(readonly_port);
	expect_port(r, cl.standby.port);
	h_expect_value(r, "select pg_is_in_recovery()", "t");
	/* The standby really is read-only: a write through the reader port fails there, not in pgmux. */
	PGresult *res = PQexec(r, "insert into fo_writes (client, port) values (2, 0)");
	cr_expect_eq(PQresultStatus(res), PGRES_FATAL_ERROR);
	cr_expect_str_eq(PQresultErrorField(res, PG_DIAG_SQLSTATE), "25006",
			 "a write on the reader port: %s", PQresultErrorMessage(res));
	PQclear(res);
	expect_port(r, cl.standby.port);

	PQfinish(r);
	PQfinish(w);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ failover, idle client */

/*
 * A client that is idle (between transactions) when the primary crashes
 * sends its next INSERT after the standby was promoted: it must go through,
 * on the new writer, within a second of the promotion. The log must name
 * the new writer.
 */
static void idle_client_survives_failover(void)
{
	PGconn *conn = connect_app_ok(px.port);
	expect_port(conn, cl.primary.port);

	instance_crash(&cl.primary);
	long long promoted = promote_standby();

	PGresult *res =
		PQexec(conn, "insert into fo_writes (client, port) values (7, inet_server_port()) returning port");
	long long took = h_now_ms() - promoted;
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "the INSERT after the failover failed (SQLSTATE %s): %s",
		     PQresultErrorField(res, PG_DIAG_SQLSTATE), PQresultErrorMessage(res));
	cr_assert_eq(atoi(PQgetvalue(res, 0, 0)), cl.standby.port, "the INSERT landed on port %s, expected %d",
		     PQgetvalue(res, 0, 0), cl.standby.port);
	PQclear(res);
	cr_log_info("idle client: INSERT succeeded %lld ms after pg_ctl promote returned", took);
	fprintf(stderr, "failover/idle client: INSERT on the new writer %lld ms after promotion\n", took);
	cr_expect_lt(took, h_scaled_ms(1000), "the INSERT took %lld ms after the promotion (limit %d ms)", took,
		     h_scaled_ms(1000));
	cr_assert_eq(PQstatus(conn), CONNECTION_OK);
	expect_port(conn, cl.standby.port);
	h_expect_value(conn, "select pg_is_in_recovery()", "f");

	/* The log says which instance became the writer, and when. */
	char where[64];
	snprintf(where, sizeof(where), "127.0.0.1:%d)", cl.standby.port);
	char *line = wait_log_line("failover: writer is now", where, 5000);
	if (line == NULL)
		pgmux_dump_logs(&px);
	cr_assert_not_null(line, "no \"failover: writer is now ... (%s\" line in %s", where, px.logfile);
	cr_expect(strstr(line, "ms after the previous writer was lost") != NULL, "log line: %s", line);
	fprintf(stderr, "failover/idle client: log: %s\n", line);
	free(line);
	line = wait_log_line("writer", "lost", 0);
	cr_expect_not_null(line, "no \"writer ... lost\" line in %s", px.logfile);
	free(line);

	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

Test(failover, idle_client_writes_on_new_writer_within_1s)
{
	start_pgmux(hosts_of(&cl.primary, &cl.standby), NULL, "10s");
	idle_client_survives_failover();
}

Test(failover, idle_client_writes_on_new_writer_hosts_listed_standby_first)
{
	start_pgmux(hosts_of(&cl.standby, &cl.primary), NULL, "10s");
	idle_client_survives_failover();
}

/*
 * A transaction that begins after the crash but before the promotion waits
 * for the new writer (connection_borrow_timeout is 10 s) instead of failing.
 */
Test(failover, insert_sent_before_promotion_waits_for_new_writer)
{
	start_pgmux(hosts_of(&cl.primary, &cl.standby), NULL, "10s");
	PGconn *conn = connect_app_ok(px.port);
	expect_port(conn, cl.primary.port);

	instance_crash(&cl.primary);
	cr_assert(PQsendQuery(conn, "insert into fo_writes (client, port) values (8, inet_server_port()) returning port"),
		  "%s", PQerrorMessage(conn));
	long long sent = h_now_ms();
	long long promoted = promote_standby();
	PGresult *res = h_get_result(conn, h_scaled_ms(10000));
	long long done = h_now_ms();
	cr_assert_not_null(res, "no answer to the INSERT within 10 s of the promotion");
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		pgmux_dump_logs(&px);
	fprintf(stderr,
		"failover/insert before promotion: %s %lld ms after it was sent, %lld ms after the promotion\n",
		PQresultStatus(res) == PGRES_TUPLES_OK ? "succeeded" : "failed", done - sent, done - promoted);
	cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK,
		     "the INSERT sent %lld ms before the promotion failed after %lld ms (SQLSTATE %s): %s", promoted - sent,
		     done - sent, PQresultErrorField(res, PG_DIAG_SQLSTATE), PQresultErrorMessage(res));
	cr_expect_eq(atoi(PQgetvalue(res, 0, 0)), cl.standby.port, "the INSERT landed on port %s, expected %d",
		     PQgetvalue(res, 0, 0), cl.standby.port);
	PQclear(res);
	cr_assert_null(PQgetResult(conn));
	cr_expect_lt(done - promoted, h_scaled_ms(1000), "the INSERT finished %lld ms after the promotion",
		     done - promoted);
	expect_port(conn, cl.standby.port);
	PQfinish(conn);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ failover under load */

#define LOAD_THREADS 8
#define LOAD_MS 8000
#define CRASH_AFTER_MS 2000

struct loader {
	int id;
	PGconn *conn;
	pthread_t thread;
	int p1, p2;                 /* the ports of the old and the new writer */
	atomic_int ok_total;        /* committed transactions */
	int ok_on_old;              /* ... that ran on the old writer */
	int ok_on_new;              /* ... on the new writer */
	int ok_after_promotion;     /* ... on the new writer, started after the promotion */
	int bad_commit;             /* COMMIT that reported ROLLBACK (a silently lost transaction) */
	int errors;
	char error_states[4][8];    /* the first few SQLSTATEs */
	char first_error[256];
	long long first_ok_after_promotion_ms;
	bool connection_broken;
};

static atomic_bool load_stop;
static atomic_llong load_promoted_ms; /* 0 until pg_ctl promote returned */

/* Run one statement; false on error (recorded). */
static bool load_step(struct loader *l, const char *sql, PGresult **out)
{
	PGresult *r = PQexec(l->conn, sql);
	ExecStatusType st = PQresultStatus(r);
	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
		if (out)
			*out = r;
		else
			PQclear(r);
		return true;
	}
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	if (l->errors < 4)
		snprintf(l->error_states[l->errors], sizeof(l->error_states[0]), "%s", state ? state : "none");
	if (l->errors == 0)
		snprintf(l->first_error, sizeof(l->first_error), "%s", PQerrorMessage(l->conn));
	l->errors++;
	PQclear(r);
	if (PQstatus(l->conn) != CONNECTION_OK)
		l->connection_broken = true;
	return false;
}

static void *load_main(void *arg)
{
	struct loader *l = arg;
	char update[128], insert[160];
	snprintf(update, sizeof(update), "UPDATE fo_counters SET n = n + 1 WHERE id = %d", l->id);
	snprintf(insert, sizeof(insert),
		 "INSERT INTO fo_writes (client, port) VALUES (%d, inet_server_port()) RETURNING port", l->id);

	while (!atomic_load(&load_stop) && !l->connection_broken) {
		long long promoted = atomic_load(&load_promoted_ms);
		PGresult *ins = NULL;
		int port = 0;
		bool ok = load_step(l, "BEGIN", NULL) && load_step(l, update, NULL) && load_step(l, insert, &ins);
		if (ins) {
			port = atoi(PQgetvalue(ins, 0, 0));
			PQclear(ins);
		}
		if (ok) {
			PGresult *c = NULL;
			ok = load_step(l, "COMMIT", &c);
			if (ok && strcmp(PQcmdStatus(c), "COMMIT") != 0) {
				l->bad_commit++;
				ok = false;
			}
			PQclear(c);
		}
		if (!ok) {
			/* What a client does after an error: make sure no transaction is left open. */
			if (!l->connection_broken)
				load_step(l, "ROLLBACK", NULL);
			continue;
		}
		atomic_fetch_add(&l->ok_total, 1);
		if (port == l->p1)
			l->ok_on_old++;
		else if (port == l->p2) {
			l->ok_on_new++;
			if (promoted) {
				l->ok_after_promotion++;
				if (l->first_ok_after_promotion_ms == 0)
					l->first_ok_after_promotion_ms = h_now_ms();
			}
		}
	}
	return NULL;
}

static int min_ok_total(struct loader *ls)
{
	int least = -1;
	for (int i = 0; i < LOAD_THREADS; i++) {
		int n = atomic_load(&ls[i].ok_total);
		if (least < 0 || n < least)
			least = n;
	}
	return least;
}

/*
 * Eight clients run BEGIN; UPDATE; INSERT; COMMIT in a loop through the
 * writer port for eight seconds; two seconds in, the primary crashes and the
 * standby is promoted. Only the transactions in flight at the crash may fail
 * (class 08, or 53300 should a wait time out); every client's connection
 * stays up and goes on committing on the new writer.
 */
Test(failover, eight_writers_keep_their_connections_across_failover)
{
	start_pgmux(hosts_of(&cl.primary, &cl.standby), NULL, "10s");
	static struct loader ls[LOAD_THREADS];
	atomic_store(&load_stop, false);
	atomic_store(&load_promoted_ms, 0);
	for (int i = 0; i < LOAD_THREADS; i++) {
		memset(&ls[i], 0, sizeof(ls[i]));
		ls[i].id = i;
		ls[i].p1 = cl.primary.port;
		ls[i].p2 = cl.standby.port;
		ls[i].conn = connect_app_ok(px.port);
		/* The WARNINGs of the crash and of ROLLBACK without a transaction are expected. */
		PQsetNoticeReceiver(ls[i].conn, h_ignore_notices, NULL);
	}
	long long started = h_now_ms();
	for (int i = 0; i < LOAD_THREADS; i++)
		cr_assert_eq(pthread_create(&ls[i].thread, NULL, load_main, &ls[i]), 0);

	/* Load for two seconds, and until every client has committed on the old writer. */
	long long deadline = started + 20000;
	while (h_now_ms() < started + CRASH_AFTER_MS || min_ok_total(ls) < 10) {
		if (h_now_ms() > deadline)
			break;
		h_sleep_ms(20);
	}
	int before_crash = min_ok_total(ls);
	long long crash_at = h_now_ms();
	instance_crash(&cl.primary);
	long long crashed = h_now_ms();
	long long promoted = promote_standby();
	atomic_store(&load_promoted_ms, promoted);
	/* The rest of the eight seconds, and at least three seconds on the new writer. */
	long long end = started + LOAD_MS;
	if (end < promoted + 3000)
		end = promoted + 3000;
	while (h_now_ms() < end)
		h_sleep_ms(20);
	atomic_store(&load_stop, true);
	for (int i = 0; i < LOAD_THREADS; i++)
		pthread_join(ls[i].thread, NULL);

	fprintf(stderr,
		"failover/load: every client had >= %d commits before the crash; pg_ctl stop -m immediate took "
		"%lld ms, pg_ctl promote %lld ms\n",
		before_crash, crashed - crash_at, promoted - crashed);
	int total_errors = 0;
	long long worst_gap = 0;
	for (int i = 0; i < LOAD_THREADS; i++) {
		struct loader *l = &ls[i];
		long long gap = l->first_ok_after_promotion_ms ? l->first_ok_after_promotion_ms - promoted : -1;
		if (gap > worst_gap)
			worst_gap = gap;
		total_errors += l->errors;
		fprintf(stderr,
			"failover/load: client %d: %d commits on the old writer, %d on the new (%d after promotion, "
			"first %lld ms after it), %d errors [%s %s %s %s]%s%s\n",
			i, l->ok_on_old, l->ok_on_new, l->ok_after_promotion, gap, l->errors, l->error_states[0],
			l->error_states[1], l->error_states[2], l->error_states[3], l->errors ? " first: " : "",
			l->first_error);
	}
	cr_log_info("failover under load: %d errors in all, worst first commit %lld ms after promotion",
		    total_errors, worst_gap);

	bool dumped = false;
	for (int i = 0; i < LOAD_THREADS; i++) {
		struct loader *l = &ls[i];
		bool ok = !l->connection_broken && PQstatus(l->conn) == CONNECTION_OK && l->errors <= 2 &&
			  (l->errors == 0 || strstr(l->first_error, "could not connect") == NULL) &&
			  l->bad_commit == 0 && l->ok_on_old > 0 && l->ok_after_promotion > 0;
		for (int k = 0; k < l->errors && k < 4; k++)
			ok = ok && (strncmp(l->error_states[k], "08", 2) == 0 || strcmp(l->error_states[k], "53300") == 0);
		if (!ok && !dumped) {
			pgmux_dump_logs(&px);
			dumped = true;
		}
		cr_expect(!l->connection_broken && PQstatus(l->conn) == CONNECTION_OK,
			  "client %d lost its connection to pgmux: %s", i, PQerrorMessage(l->conn));
		cr_expect_leq(l->errors, 2, "client %d had %d errors (at most 2 expected), first: %s", i, l->errors,
			      l->first_error);
		/* An instance going down (57P01-57P03 at login) makes waiters wait, not fail. */
		cr_expect(l->errors == 0 || strstr(l->first_error, "could not connect") == NULL,
			  "client %d failed because pgmux could not connect, rather than waiting for the new writer: %s",
			  i, l->first_error);
		for (int k = 0; k < l->errors && k < 4; k++)
			cr_expect(strncmp(l->error_states[k], "08", 2) == 0 || strcmp(l->error_states[k], "53300") == 0,
				  "client %d error %d has SQLSTATE %s (expected class 08 or 53300)", i, k,
				  l->error_states[k]);
		cr_expect_eq(l->bad_commit, 0, "client %d: %d COMMITs reported ROLLBACK without an error", i,
			     l->bad_commit);
		cr_expect_gt(l->ok_on_old, 0, "client %d committed nothing on the old writer", i);
		cr_expect_gt(l->ok_after_promotion, 0, "client %d committed nothing on the new writer", i);
	}

	/* Every commit reported on the new writer is there, and nothing else claims to come from it. */
	PGconn *super = connect_super(cl.standby.port);
	for (int i = 0; i < LOAD_THREADS; i++) {
		char sql[160], want[16];
		snprintf(sql, sizeof(sql), "select count(*) from fo_writes where client = %d and port = %d", i,
			 cl.standby.port);
		snprintf(want, sizeof(want), "%d", ls[i].ok_on_new);
		h_expect_value(super, sql, want);
	}
	PQfinish(super);

	for (int i = 0; i < LOAD_THREADS; i++)
		PQfinish(ls[i].conn);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ readers */

/*
 * The only reader stops: a reader-port client's next query waits for a
 * reader and, after connection_borrow_timeout, gets 53300; its connection
 * stays usable and is served again once the standby is back.
 */
Test(failover, reader_down_query_waits_then_times_out)
{
	start_pgmux(hosts_of(&cl.primary, &cl.standby), NULL, "2s");
	PGconn *r = connect_app_ok(readonly_port);
	expect_port(r, cl.standby.port);

	instance_crash(&cl.standby);
	long long t0 = h_now_ms();
	PGresult *res = PQexec(r, "select inet_server_port()");
	long long took = h_now_ms() - t0;
	fprintf(stderr, "failover/reader down: the query ended after %lld ms: %s", took,
		PQresultStatus(res) == PGRES_TUPLES_OK ? "succeeded\n" : PQresultErrorMessage(res));
	if (PQresultStatus(res) != PGRES_FATAL_ERROR)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQresultStatus(res), PGRES_FATAL_ERROR, "the query on the reader port did not fail");
	cr_expect_str_eq(PQresultErrorField(res, PG_DIAG_SQLSTATE), "53300", "error: %s",
			 PQresultErrorMessage(res));
	cr_expect(strstr(PQresultErrorMessage(res), "timed out waiting to acquire database connection") != NULL,
		  "error: %s", PQresultErrorMessage(res));
	cr_expect_geq(took, 1900, "the query failed after %lld ms, before connection_borrow_timeout (2 s)", took);
	cr_expect_lt(took, h_scaled_ms(2000) + 2000, "the query failed only after %lld ms", took);
	PQclear(res);
	cr_assert_eq(PQstatus(r), CONNECTION_OK, "the reader-port client lost its connection");

	/* The writer port is not affected. */
	PGconn *w = connect_app_ok(px.port);
	expect_port(w, cl.primary.port);
	PQfinish(w);

	/* The same connection is served once a reader is back. */
	instance_start(&cl.standby);
	expect_port(r, cl.standby.port);
	h_expect_value(r, "select pg_is_in_recovery()", "t");
	PQfinish(r);
	h_stop_expect_clean_exit(&px);
}

Test(failover, reader_down_falls_back_to_writer)
{
	start_pgmux(hosts_of(&cl.primary, &cl.standby), "reader_fallback_to_writer = true\n", "2s");
	PGconn *r = connect_app_ok(readonly_port);
	/*
	 * Until its first health check of the standby, pgmux knows no reader and
	 * falls back to the writer; once it knows one, reads go to the reader.
	 */
	char standby_port[16];
	snprintf(standby_port, sizeof(standby_port), "%d", cl.standby.port);
	long long t_first = h_now_ms();
	bool on_reader = h_poll_value(r, "select inet_server_port()", standby_port, h_scaled_ms(3000));
	fprintf(stderr, "failover/reader down, fallback: reads reached the standby: %s after %lld ms\n",
		on_reader ? "yes" : "no", h_now_ms() - t_first);
	if (!on_reader)
		pgmux_dump_logs(&px);
	cr_assert(on_reader, "the reader port kept sending reads to the writer while the standby was healthy");

	instance_crash(&cl.standby);
	long long t0 = h_now_ms();
	PGresult *res = PQexec(r, "select inet_server_port(), pg_is_in_recovery()");
	long long took = h_now_ms() - t0;
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "the reader-port query failed (SQLSTATE %s) after %lld ms: %s",
		     PQresultErrorField(res, PG_DIAG_SQLSTATE), took, PQresultErrorMessage(res));
	cr_expect_eq(atoi(PQgetvalue(res, 0, 0)), cl.primary.port, "served by port %s, expected the writer's %d",
		     PQgetvalue(res, 0, 0), cl.primary.port);
	cr_expect_str_eq(PQgetvalue(res, 0, 1), "f");
	PQclear(res);
	fprintf(stderr, "failover/reader down, fallback: served by the writer after %lld ms\n", took);
	cr_expect_lt(took, h_scaled_ms(2000), "falling back to the writer took %lld ms", took);
	PQfinish(r);
	h_stop_expect_clean_exit(&px);
}

/* A new reader-port client is refused at once, naming the reason: the cluster has no reader. */
static void expect_reader_port_refused(void)
{
	long long t0 = h_now_ms();
	PGconn *r = h_connect_app(readonly_port, "disable", NULL);
	const char *message = PQerrorMessage(r);
	bool failed = PQstatus(r) != CONNECTION_OK;
	PGresult *res = NULL;
	if (!failed) {
		/* Should pgmux let the login through, the first query must fail instead. */
		res = PQexec(r, "select 1");
		failed = PQresultStatus(res) != PGRES_TUPLES_OK;
		message = PQresultErrorMessage(res);
	}
	long long took = h_now_ms() - t0;
	fprintf(stderr, "no reader: %s after %lld ms: %s", failed ? "failed" : "succeeded", took, message);
	cr_assert(failed, "a reader-port client of a cluster without readers was served");
	cr_expect(strstr(message, "no reader instance") != NULL, "error: %s", message);
	cr_expect_lt(took, h_scaled_ms(1000), "the failure took %lld ms", took);
	PQclear(res);
	PQfinish(r);
}

/* A cluster without any reader: the reader port refuses at once, naming the reason. */
Test(failover_no_reader, reader_port_fails_at_once)
{
	start_pgmux(hosts_of(&cl.primary, NULL), NULL, "10s");
	/* Wait until pgmux knows the writer (and so has checked every instance). */
	PGconn *w = connect_app_ok(px.port);
	expect_port(w, cl.primary.port);
	expect_reader_port_refused();
	expect_port(w, cl.primary.port);
	PQfinish(w);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ replication lag */

/* Column col of the SHOW TARGETS row whose column key_col is key (malloc'd), or NULL when there is none. */
static char *target_field(PGconn *admin, const char *key_col, const char *key, const char *col)
{
	return h_admin_cell(admin, "SHOW TARGETS", key_col, key, col);
}

struct lag_probe {
	PGconn *admin;
	char port[16];
	bool above;
	int limit_ms;
};

static bool lag_probe_holds(void *arg)
{
	struct lag_probe *p = arg;
	char *lag = target_field(p->admin, "port", p->port, "lag_ms");
	bool ok = lag && (atoi(lag) > p->limit_ms) == p->above;
	free(lag);
	return ok;
}

/* Poll SHOW TARGETS until the lag_ms of the instance on port is above (or, !above, at most) limit_ms. */
static bool wait_target_lag(PGconn *admin, int port, bool above, int limit_ms, int timeout_ms)
{
	struct lag_probe p = {.admin = admin, .above = above, .limit_ms = limit_ms};
	snprintf(p.port, sizeof(p.port), "%d", port);
	return h_poll_until(lag_probe_holds, &p, timeout_ms);
}

/*
 * Make the standby fall behind for real: it replays a commit (client 1), its
 * replay is paused, and the primary commits another (client 2) that the
 * standby receives but does not apply. From then on pgmux's measure of its
 * lag, now() - pg_last_xact_replay_timestamp(), grows with the clock.
 */
static void standby_fall_behind(PGconn *primary, PGconn *standby)
{
	h_exec_ok(primary, "insert into fo_writes (client, port) values (1, inet_server_port())");
	cr_assert(h_poll_value(standby, "select count(*) from fo_writes where client = 1", "1", 10000),
		  "the standby did not replay the first insert");
	h_exec_ok(standby, "select pg_wal_replay_pause()");
	cr_assert(h_poll_value(standby, "select pg_get_wal_replay_pause_state()", "paused", 10000),
		  "the standby's replay did not pause");
	h_exec_ok(primary, "insert into fo_writes (client, port) values (2, inet_server_port())");
	cr_assert(h_poll_value(standby, "select pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()", "t", 10000),
		  "the standby did not receive WAL it could not replay");
}

/* What a read of the second insert sees: the port that served it and whether the row was there. */
static const char read_after_second_insert[] =
	"select inet_server_port() || ' ' || (select count(*) from fo_writes where client = 2)";

struct lag_setup {
	PGconn *primary, *standby, *admin, *reader;
};

/* pgmux with max_replica_lag = 1s in front of the pair, a reader-port client served by the standby. */
static void lag_begin(struct lag_setup *l, const char *extra_target, const char *borrow_timeout)
{
	char want[16];
	start_pgmux(hosts_of(&cl.primary, &cl.standby), extra_target, borrow_timeout);
	l->primary = connect_super(cl.primary.port);
	l->standby = connect_super(cl.standby.port);
	l->admin = h_admin_session(&px);
	l->reader = connect_app_ok(readonly_port);
	/* Until its first check of the standby pgmux may fall back to the writer (when allowed). */
	snprintf(want, sizeof(want), "%d", cl.standby.port);
	cr_assert(h_poll_value(l->reader, "select inet_server_port()", want, h_scaled_ms(5000)),
		  "reads did not reach the standby while it was up to date");
	cr_expect(wait_target_lag(l->admin, cl.standby.port, false, 0, h_scaled_ms(5000)),
		  "SHOW TARGETS showed lag for a standby that was up to date");

	standby_fall_behind(l->primary, l->standby);
	bool lagging = wait_target_lag(l->admin, cl.standby.port, true, 1000, h_scaled_ms(10000));
	if (!lagging)
		pgmux_dump_logs(&px);
	cr_assert(lagging, "SHOW TARGETS never showed the paused standby's lag_ms above 1000");
	char *health = target_field(l->admin, "port", want, "health");
	cr_expect_str_eq(health, "healthy", "a lagging standby is still healthy, SHOW TARGETS says %s", health);
	free(health);
	/* Its status says why it gets no reads. */
	char *status = target_field(l->admin, "port", want, "status");
	cr_expect(status && strncmp(status, "replication lag ", 16) == 0 &&
			  strstr(status, " ms is over max_replica_lag (1000 ms): no reads") != NULL,
		  "SHOW TARGETS status of the lagging standby: %s", status ? status : "(no row)");
	free(status);
}

static void lag_end(struct lag_setup *l)
{
	cr_expect(wait_target_lag(l->admin, cl.standby.port, false, 0, h_scaled_ms(5000)),
		  "SHOW TARGETS still shows lag after the standby caught up");
	char port[16];
	snprintf(port, sizeof(port), "%d", cl.standby.port);
	char *status = target_field(l->admin, "port", port, "status");
	cr_expect(status && strcmp(status, "serving") == 0, "SHOW TARGETS status of the standby that caught up: %s",
		  status ? status : "(no row)");
	free(status);
	PQfinish(l->reader);
	PQfinish(l->admin);
	PQfinish(l->standby);
	PQfinish(l->primary);
	h_stop_expect_clean_exit(&px);
}

/*
 * The only reader falls further behind than max_replica_lag: a reader-port
 * read waits (no fallback to the writer) instead of reading stale data, and
 * runs on the standby, seeing the row it was missing, once replay resumes.
 */
Test(replica_lag, lagging_reader_gets_no_reads_until_it_catches_up)
{
	struct lag_setup l;
	lag_begin(&l, "max_replica_lag = 1s\n", "20s");

	cr_assert(PQsendQuery(l.reader, read_after_second_insert), "%s", PQerrorMessage(l.reader));
	PGresult *res = h_get_result(l.reader, h_scaled_ms(1500));
	if (res)
		fprintf(stderr, "replica_lag/wait: a read was served by a lagging reader: %s %s\n",
			PQresStatus(PQresultStatus(res)),
			PQresultStatus(res) == PGRES_TUPLES_OK ? PQgetvalue(res, 0, 0) : PQresultErrorMessage(res));
	cr_assert_null(res, "a read on the reader port did not wait while the only reader lagged");

	h_exec_ok(l.standby, "select pg_wal_replay_resume()");
	res = h_get_result(l.reader, h_scaled_ms(10000));
	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
		pgmux_dump_logs(&px);
	cr_assert_not_null(res, "the waiting read was not served after the standby caught up");
	cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "the waiting read failed: %s", PQresultErrorMessage(res));
	char want[32];
	snprintf(want, sizeof(want), "%d 1", cl.standby.port);
	cr_expect_str_eq(PQgetvalue(res, 0, 0), want, "the waiting read returned \"%s\" (port, rows), expected \"%s\"",
			 PQgetvalue(res, 0, 0), want);
	PQclear(res);
	cr_assert_null(h_get_result(l.reader, 5000));
	lag_end(&l);
}

/*
 * With reader_fallback_to_writer, reads go to the writer while the only
 * reader lags too far (and so see the newest row), and back to the reader
 * once it has caught up.
 */
Test(replica_lag, lagging_reader_falls_back_to_writer_then_serves_again)
{
	struct lag_setup l;
	lag_begin(&l, "max_replica_lag = 1s\nreader_fallback_to_writer = true\n", "10s");

	char want[32];
	snprintf(want, sizeof(want), "%d 1", cl.primary.port);
	h_expect_value(l.reader, read_after_second_insert, want);

	h_exec_ok(l.standby, "select pg_wal_replay_resume()");
	snprintf(want, sizeof(want), "%d 1", cl.standby.port);
	bool back = h_poll_value(l.reader, read_after_second_insert, want, h_scaled_ms(10000));
	if (!back)
		pgmux_dump_logs(&px);
	cr_assert(back, "reads did not return to the standby after it caught up");
	lag_end(&l);
}

/* ================================================================ discovery */

static void set_topology(const char *sql)
{
	PGconn *primary = connect_super(cl.primary.port);
	h_exec_ok(primary, sql);
	PQfinish(primary);
}

/*
 * [target] hosts names only the writer. The standby is up all along, but
 * pgmux uses it as a reader only while the topology names instance 2: reads
 * reach it once it appears, without a config change; once it has left, the
 * reader port has no reader again (and says so at once); when it comes back,
 * reads reach it again.
 */
Test(discovery, reader_gets_reads_while_in_topology)
{
	char hosts[64], discovered[96];
	snprintf(hosts, sizeof(hosts), "127.0.0.1:%d", cl.primary.port);
	start_pgmux(hosts, "instance_host_pattern = 127.0.0.?\n", "10s");
	cr_assert(h_file_wait_contains(px.logfile, "is Aurora PostgreSQL", h_scaled_ms(10000)),
		  "pgmux did not take the stand-ins for Aurora's functions");
	PGconn *w = connect_app_ok(px.port);
	h_expect_value(w, "select host(inet_server_addr())", "127.0.0.1");
	expect_reader_port_refused();

	set_topology("INSERT INTO aurora_topology VALUES ('2', '7f3c1a52-reader-session', 0)");
	snprintf(discovered, sizeof(discovered), "instance 2 discovered at 127.0.0.2:%d", cl.primary.port);
	cr_assert(h_file_wait_contains(px.logfile, discovered, h_scaled_ms(5000)), "no \"%s\" in pgmux's log",
		  discovered);
	/* The login waits for the first check of the new instance, then reads run there. */
	PGconn *r = connect_app_ok(readonly_port);
	h_expect_value(r, "select host(inet_server_addr()) || ' ' || pg_is_in_recovery()", "127.0.0.2 true");
	PGconn *admin = h_admin_session(&px);
	char *v = target_field(admin, "instance", "2", "host");
	cr_expect(v && strcmp(v, "127.0.0.2") == 0, "SHOW TARGETS: instance 2 has host %s", v ? v : "(no row)");
	free(v);
	v = target_field(admin, "instance", "2", "role");
	cr_expect(v && strcmp(v, "reader") == 0, "SHOW TARGETS: instance 2 has role %s", v ? v : "(no row)");
	free(v);
	/* The writer is the one listed in hosts, not a second, discovered copy. */
	PGresult *targets = PQexec(admin, "SHOW TARGETS");
	cr_expect_eq(PQntuples(targets), 2, "SHOW TARGETS has %d rows, expected 2", PQntuples(targets));
	PQclear(targets);

	/*
	 * Only the writer's view counts: the standby's own copy of the topology
	 * (its replay paused) still names instance 2, and must not bring it back.
	 */
	PGconn *standby = h_connect_super_at(cl.standby.addr, cl.standby.port, "postgres");
	h_exec_ok(standby, "select pg_wal_replay_pause()");
	cr_assert(h_poll_value(standby, "select pg_get_wal_replay_pause_state()", "paused", 10000));
	set_topology("DELETE FROM aurora_topology WHERE server_id = '2'");
	/* Reads go on (within a health check or two) until pgmux hears the writer's new view. */
	long long deadline = h_now_ms() + h_scaled_ms(5000);
	PGresult *res;
	for (;;) {
		res = PQexec(r, "select host(inet_server_addr())");
		if (PQresultStatus(res) != PGRES_TUPLES_OK || h_now_ms() >= deadline)
			break;
		PQclear(res);
		h_sleep_ms(20);
	}
	if (PQresultStatus(res) != PGRES_FATAL_ERROR)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQresultStatus(res), PGRES_FATAL_ERROR, "reads still ran on %s 5 s after instance 2 left",
		     PQresultStatus(res) == PGRES_TUPLES_OK ? PQgetvalue(res, 0, 0) : PQresultErrorMessage(res));
	cr_expect(strstr(PQresultErrorMessage(res), "no reader instance") != NULL, "error: %s",
		  PQresultErrorMessage(res));
	PQclear(res);
	/* For several health checks of both instances, no read reaches instance 2. */
	deadline = h_now_ms() + h_scaled_ms(1500);
	while (h_now_ms() < deadline) {
		res = PQexec(r, "select host(inet_server_addr())");
		cr_assert_neq(PQresultStatus(res), PGRES_TUPLES_OK, "a read ran on %s after instance 2 left",
			      PQresultStatus(res) == PGRES_TUPLES_OK ? PQgetvalue(res, 0, 0) : "");
		PQclear(res);
		h_sleep_ms(20);
	}
	h_exec_ok(standby, "select pg_wal_replay_resume()");
	PQfinish(standby);
	cr_expect(h_file_wait_contains(px.logfile, "instance 2 (127.0.0.2", 0) &&
			  h_file_wait_contains(px.logfile, "is no longer in the cluster's topology", 0),
		  "pgmux's log does not say that instance 2 left the topology");
	v = target_field(admin, "instance", "2", "role");
	cr_expect_null(v, "SHOW TARGETS still lists instance 2 after it left the topology");
	free(v);
	expect_reader_port_refused();

	set_topology("INSERT INTO aurora_topology VALUES ('2', '0b9e44d1-reader-session', 0)");
	bool back = h_poll_value(r, "select host(inet_server_addr())", "127.0.0.2", h_scaled_ms(5000));
	if (!back)
		pgmux_dump_logs(&px);
	cr_assert(back, "reads did not reach instance 2 after it came back");
	h_expect_value(w, "select host(inet_server_addr())", "127.0.0.1");

	PQfinish(admin);
	PQfinish(r);
	PQfinish(w);
	h_stop_expect_clean_exit(&px);
}

/*
 * max_replica_lag on Aurora's terms: the lag is the replica_lag_in_msec that
 * aurora_replica_status() reports for the instance itself. While instance 2
 * reports 5 s, reads fall back to the writer; once it reports 0, they reach
 * it again. (Both instances are listed in hosts here: no discovery.)
 */
Test(discovery, aurora_reported_lag_over_max_replica_lag)
{
	char hosts[64], lag_line[64];
	snprintf(hosts, sizeof(hosts), "127.0.0.1:%d, 127.0.0.2:%d", cl.primary.port, cl.primary.port);
	set_topology("INSERT INTO aurora_topology VALUES ('2', '7f3c1a52-reader-session', 5000)");
	start_pgmux(hosts, "max_replica_lag = 1s\nreader_fallback_to_writer = true\n", "10s");
	PGconn *admin = h_admin_session(&px);
	long long deadline = h_now_ms() + h_scaled_ms(5000);
	char *lag = NULL;
	while ((lag == NULL || strcmp(lag, "5000") != 0) && h_now_ms() < deadline) {
		free(lag);
		h_sleep_ms(20);
		lag = target_field(admin, "instance", "2", "lag_ms");
	}
	snprintf(lag_line, sizeof(lag_line), "%s", lag ? lag : "(no row)");
	free(lag);
	cr_assert_str_eq(lag_line, "5000", "SHOW TARGETS: instance 2 has lag_ms %s, expected 5000", lag_line);

	PGconn *r = connect_app_ok(readonly_port);
	h_expect_value(r, "select host(inet_server_addr())", "127.0.0.1");
	set_topology("UPDATE aurora_topology SET replica_lag_in_msec = 0 WHERE server_id = '2'");
	bool back = h_poll_value(r, "select host(inet_server_addr())", "127.0.0.2", h_scaled_ms(5000));
	if (!back)
		pgmux_dump_logs(&px);
	cr_assert(back, "reads did not reach instance 2 once it reported no lag");
	PQfinish(r);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ LISTEN across a failover */

/*
 * LISTEN held by pgmux (test_listen.c has the rest): clients that LISTENed
 * through pgmux before the writer crashed get what is NOTIFYed on the new
 * writer once it is up, without LISTENing again: pgmux's LISTEN connection
 * follows the pool to the new writer and LISTENs there again.
 */
static PGnotify *failover_wait_notify(PGconn *conn, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	PGnotify *n;

	while ((n = PQnotifies(conn)) == NULL && h_now_ms() < deadline) {
		h_sleep_ms(20);
		cr_assert(PQconsumeInput(conn), "reading: %s", PQerrorMessage(conn));
	}
	return n;
}

static void failover_expect_notify(PGconn *conn, const char *channel, const char *payload)
{
	PGnotify *n = failover_wait_notify(conn, h_scaled_ms(5000));

	if (n == NULL)
		pgmux_dump_logs(&px);
	cr_assert_not_null(n, "no notification on %s (%s)", channel, payload);
	cr_expect_str_eq(n->relname, channel);
	cr_expect_str_eq(n->extra, payload);
	PQfreemem(n);
}

Test(failover, listen_follows_the_new_writer)
{
	PGconn *a, *b, *direct;
	PGresult *r;
	long long promoted;

	start_pgmux(hosts_of(&cl.primary, &cl.standby), NULL, "10s");
	a = connect_app_ok(px.port);
	b = connect_app_ok(px.port);
	r = PQexec(a, "LISTEN jobs");
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "LISTEN: %s", PQerrorMessage(a));
	PQclear(r);
	r = PQexecParams(b, "LISTEN other", 0, NULL, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "LISTEN: %s", PQerrorMessage(b));
	PQclear(r);
	direct = connect_super(cl.primary.port);
	h_exec_ok(direct, "NOTIFY jobs, 'before'");
	failover_expect_notify(a, "jobs", "before");
	PQfinish(direct);

	instance_crash(&cl.primary);
	promoted = promote_standby();
	direct = connect_super(cl.standby.port);
	cr_assert(h_poll_value(direct,
			       "select count(*) from pg_stat_activity where application_name = 'pgmux listen' and "
			       "state = 'idle' and query like 'LISTEN%'",
			       "1", h_scaled_ms(10000)),
		  "pgmux's LISTEN connection did not move to the new writer");
	fprintf(stderr, "failover/listen: LISTENing on the new writer %lld ms after promotion\n", h_now_ms() - promoted);
	h_exec_ok(direct, "NOTIFY jobs, 'after'");
	h_exec_ok(direct, "NOTIFY other, 'after too'");
	failover_expect_notify(a, "jobs", "after");
	failover_expect_notify(b, "other", "after too");
	/* The clients' sessions go on, unpinned, on the new writer. */
	expect_port(a, cl.standby.port);
	PQfinish(direct);
	PQfinish(a);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}
