/*
 * test_reload.c: changing pgmux's configuration while it runs: the admin
 * RELOAD and SIGHUP apply what may change and report what may not, refuse a
 * broken file as a whole, free the configurations they replace, reopen the
 * log file (rotation), survive a SIGHUP that comes as soon as the port
 * opens, and take new passwords from the secrets directory without
 * touching sessions already logged in. A reload that changes the hosts is a
 * cutover: test_cutover.c.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct pgmux px;

static void init_console(void)
{
	struct pgmux_options o;
	pgmux_options_console(&o);
	pgmux_start_ok(&px, &o);
}

/* The line number (1-based) of the first line of a file containing needle, or 0. */
static int line_of(const char *path, const char *needle)
{
	char *text = h_read_file(path);
	int line = 1, found = 0;
	for (char *p = text; *p; line++) {
		char *nl = strchr(p, '\n');
		if (nl)
			*nl = '\0';
		if (strstr(p, needle)) {
			found = line;
			break;
		}
		if (!nl)
			break;
		p = nl + 1;
	}
	free(text);
	return found;
}

/* ================================================================ the admin console's RELOAD */

TestSuite(reload_admin, .init = init_console, .fini = h_teardown, .timeout = 60);

Test(reload_admin, applies_a_reloadable_change)
{
	PGconn *admin = h_admin_session(&px);
	struct pgmux_options o;
	pgmux_options_console(&o);
	o.max_connections = 5;
	pgmux_rewrite_config(&px, &o);
	PGresult *r = PQexec(admin, "RELOAD");
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "RELOAD: %s", PQerrorMessage(admin));
	cr_expect_str_eq(PQcmdStatus(r), "RELOAD");
	PQclear(r);
	char *v = h_admin_cell_ok(admin, "SHOW CONFIG", "name", "max_connections", "value");
	cr_expect_str_eq(v, "5", "max_connections after RELOAD");
	free(v);
	PGconn *app = h_app_session(&px, "disable", NULL);
	cr_expect_eq(h_number_ok(app, "select 5"), 5);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

Test(reload_admin, a_broken_file_is_refused_as_a_whole)
{
	PGconn *admin = h_admin_session(&px);
	struct pgmux_options o;
	pgmux_options_console(&o);
	/* Valid changes first, then one bad line: none of it may take effect. */
	o.max_connections = 3;
	o.hosts = "127.0.0.1:1";
	o.extra_pool = "bogus_key = 1";
	pgmux_rewrite_config(&px, &o);
	int line = line_of(px.config, "bogus_key");
	cr_assert_gt(line, 0);

	PGresult *r = PQexec(admin, "RELOAD");
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "RELOAD of a broken file: %s",
		     PQresStatus(PQresultStatus(r)));
	const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	cr_assert_not_null(msg);
	char where[700];
	snprintf(where, sizeof(where), "%s:%d", px.config, line);
	cr_expect(strstr(msg, where) != NULL, "the error does not name %s: %s", where, msg);
	cr_expect(strstr(msg, "bogus_key") != NULL, "the error does not name the key: %s", msg);
	PQclear(r);
	cr_expect(h_file_wait_contains(px.logfile, "reload failed", 2000), "no \"reload failed\" in the log");

	/* The old configuration is still in force, the admin session still works. */
	char *v = h_admin_cell_ok(admin, "SHOW CONFIG", "name", "max_connections", "value");
	cr_expect_str_eq(v, "8");
	free(v);
	v = h_admin_cell_ok(admin, "SHOW CONFIG", "name", "hosts", "value");
	char want[64];
	snprintf(want, sizeof(want), "127.0.0.1:%d", h_env()->pgport);
	cr_expect_str_eq(v, want);
	free(v);
	cr_expect_eq(h_admin_stat(admin, "cutovers"), 0);
	PGconn *app = h_app_session(&px, "disable", NULL);
	cr_expect_eq(h_number_ok(app, "select 9"), 9);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ SIGHUP */

TestSuite(reload, .init = init_console, .fini = h_teardown, .timeout = 60);

Test(reload, sighup_with_an_invalid_file_keeps_the_old_one)
{
	PGconn *app = h_app_session(&px, "disable", NULL);
	struct pgmux_options o;
	pgmux_options_console(&o);
	o.hosts = "127.0.0.1:1";
	o.max_connections = 3;
	o.extra_pgmux = "no_such_option = yes";
	pgmux_rewrite_config(&px, &o);
	int failures = h_file_count(px.logfile, "reload failed");
	pgmux_signal(&px, SIGHUP);
	bool logged = h_file_wait_count(px.logfile, "reload failed", failures + 1, 5000);
	if (!logged)
		pgmux_dump_logs(&px);
	cr_assert(logged, "no \"reload failed\" in the log after SIGHUP with an invalid file");
	char *log = h_read_file(px.logfile);
	cr_expect(strstr(log, "no_such_option") != NULL, "the log does not name the bad option");
	free(log);

	cr_assert(pgmux_running(&px));
	cr_expect_eq(h_number_ok(app, "select 1"), 1, "an open session stopped working");
	PGconn *fresh = h_app_session(&px, "disable", NULL);
	char *port = h_value_ok(fresh, "select inet_server_port()");
	char want[16];
	snprintf(want, sizeof(want), "%d", h_env()->pgport);
	cr_expect_str_eq(port, want);
	free(port);
	PGconn *admin = h_admin_session(&px);
	char *v = h_admin_cell_ok(admin, "SHOW CONFIG", "name", "max_connections", "value");
	cr_expect_str_eq(v, "8");
	free(v);
	cr_expect_eq(h_admin_stat(admin, "cutovers"), 0);
	PQfinish(admin);
	PQfinish(fresh);
	PQfinish(app);
	h_stop_expect_clean_exit(&px);
}

/* The replaced configurations pgmux's log says it freed ("freed N replaced configuration(s)"), in all. */
static int freed_configurations(void)
{
	static const char needle[] = "freed ";
	char *log = h_read_file(px.logfile);
	int total = 0;
	for (const char *p = log; (p = strstr(p, needle)) != NULL; p += sizeof(needle) - 1) {
		int n;
		char word[16];
		if (sscanf(p + sizeof(needle) - 1, "%d %15s", &n, word) == 2 && strcmp(word, "replaced") == 0)
			total += n;
	}
	free(log);
	return total;
}

/*
 * A reload replaces the configuration, and the old one is freed once no
 * worker and no monitor can still be reading it, not kept until exit. Ten
 * reloads while two clients keep querying: all ten are freed, the clients
 * notice nothing, and under valgrind nothing reads freed memory.
 */
Test(reload, replaced_configurations_are_freed)
{
	PGconn *a = h_app_session(&px, "disable", NULL), *b = h_app_session(&px, "disable", NULL);
	struct pgmux_options o;
	pgmux_options_console(&o);
	for (int i = 0; i < 10; i++) {
		o.max_connections = 6 + i % 3;
		pgmux_reload(&px, &o);
		cr_assert_eq(h_number_ok(a, "select 1"), 1);
		cr_assert_eq(h_number_ok(b, "select 2"), 2);
	}
	long long deadline = h_now_ms() + h_scaled_ms(10000);
	int freed;
	while ((freed = freed_configurations()) < 10 && h_now_ms() < deadline)
		h_sleep_ms(100);
	if (freed != 10)
		pgmux_dump_logs(&px);
	cr_assert_eq(freed, 10, "pgmux freed %d of the 10 configurations its reloads replaced", freed);
	cr_assert_eq(h_number_ok(a, "select 3"), 3);
	PQfinish(a);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/*
 * Log rotation as logrotate does it: rename the file, then SIGHUP. Meanwhile
 * both workers log every state change (log_level = debug) and pgbench -C
 * opens a socket per transaction, so a descriptor number that the reopen
 * freed too early would soon belong to a client, and a log line written to
 * it would break that client's protocol stream.
 */
Test(reload, sighup_reopens_the_logfile_while_workers_log)
{
	char script[700], rotated[8][700];
	const int rotations = 8;

	snprintf(script, sizeof(script), "%s.select.sql", px.logfile);
	h_write_file(script, "select 1;\n", 0644);
	const char *duration = h_under_valgrind() ? "12" : "4";
	const char *args[] = {"-n", "-C", "-c", "4", "-j", "2", "-T", duration, "-f", script, NULL};
	struct h_cmd bench;
	cr_assert(h_pgbench_start(&bench, px.port, "disable", "postgres", args), "pgbench did not start");

	for (int i = 0; i < rotations; i++) {
		h_sleep_ms(h_scaled_ms(200));
		/* On a loaded machine 200 ms may pass before pgbench's next login: wait for one in this stretch. */
		cr_assert(h_file_wait_contains(px.logfile, ": authenticated", h_scaled_ms(10000)),
			  "rotation %d: no login in %s", i + 1, px.logfile);
		snprintf(rotated[i], sizeof(rotated[i]), "%s.%d", px.logfile, i + 1);
		cr_assert_eq(rename(px.logfile, rotated[i]), 0, "rename %s: %s", px.logfile, strerror(errno));
		pgmux_signal(&px, SIGHUP);
		/* The reload is logged to the new file, once it is open. */
		bool reopened = h_file_wait_contains(px.logfile, "configuration reloaded from", h_scaled_ms(5000));
		if (!reopened)
			h_cmd_dump(&bench, "pgbench");
		cr_assert(reopened, "rotation %d: pgmux did not log to a new %s after SIGHUP", i + 1, px.logfile);
	}
	cr_assert(h_cmd_wait(&bench, h_scaled_ms(60000)), "pgbench did not finish");
	h_expect_pgbench_clean(&bench, "pgbench -C during log rotations");
	h_cmd_free(&bench);

	/* Each rotated file holds a full stretch of the log: clients logged in while it was current. */
	for (int i = 0; i < rotations; i++)
		cr_expect_gt(h_file_count(rotated[i], ": authenticated"), 0, "%s has no login from its stretch", rotated[i]);
	/* The renamed files are finished: new lines go to the new file only. */
	long long before = 0;
	for (int i = 0; i < rotations; i++)
		before += h_file_count(rotated[i], " C-");
	int logins = h_file_count(px.logfile, ": authenticated");
	PGconn *a = h_app_session(&px, "disable", NULL);
	cr_assert_eq(h_number_ok(a, "select 7"), 7);
	PQfinish(a);
	cr_assert(h_file_wait_count(px.logfile, ": authenticated", logins + 1, h_scaled_ms(5000)),
		  "the login after the rotations is not in the current log");
	long long after = 0;
	for (int i = 0; i < rotations; i++)
		after += h_file_count(rotated[i], " C-");
	cr_expect_eq(after, before, "lines still went to rotated files after the last reopen");
	h_stop_expect_clean_exit(&px);
}

Test(reload, sighup_keeps_restart_only_settings)
{
	int old_port = px.port;
	int new_port = h_free_port();
	struct pgmux_options o;
	pgmux_options_console(&o);
	o.workers = 5;
	o.max_connections = 3;
	o.listen_port = new_port;
	/* A session first: it proves start-up is over (see sighup_as_soon_as_the_port_accepts). */
	PGconn *admin = h_admin_session(&px);
	pgmux_write_config(&px, &o); /* sets px.port to the new one: put it back */
	px.port = old_port;
	pgmux_reload(&px, NULL);
	char *log = h_read_file(px.logfile);
	cr_expect(strstr(log, "listen_port can only change at start-up") != NULL, "listen_port change not reported");
	cr_expect(strstr(log, "workers can only change at start-up") != NULL, "workers change not reported");
	free(log);

	char port[16];
	snprintf(port, sizeof(port), "%d", old_port);
	char *v = h_admin_cell_ok(admin, "SHOW CONFIG", "name", "listen_port", "value");
	cr_expect_str_eq(v, port);
	free(v);
	v = h_admin_cell_ok(admin, "SHOW CONFIG", "name", "workers", "value");
	cr_expect_str_eq(v, "2");
	free(v);
	v = h_admin_cell_ok(admin, "SHOW CONFIG", "name", "max_connections", "value");
	cr_expect_str_eq(v, "3", "the reloadable change in the same file was not applied");
	free(v);
	int fd = h_raw_connect(new_port, 500);
	cr_expect_lt(fd, 0, "pgmux listens on the new port without a restart");
	if (fd >= 0)
		close(fd);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/*
 * A service manager may send SIGHUP as soon as the port accepts connections:
 * pgmux must not die of it (SIGHUP's default action) however early it comes.
 * pgmux_start() polls too slowly to hit that moment, so each round starts
 * pgmux itself, polls the port without pause and signals at once.
 */
Test(reload, sighup_as_soon_as_the_port_accepts)
{
	/* The .init's pgmux is not needed; a session first, so that SIGTERM does not hit its start-up. */
	PQfinish(h_admin_session(&px));
	h_stop_expect_clean_exit(&px);
	struct pgmux_options o;
	pgmux_options_console(&o);
	pgmux_write_config(&px, &o);
	const char *argv[] = {h_env()->pgmux, px.config, NULL};
	int killed = 0;
	for (int round = 0; round < 10; round++) {
		struct h_cmd c;
		cr_assert(h_cmd_start(&c, argv, NULL));
		long long deadline = h_now_ms() + 10000;
		int fd;
		while ((fd = h_raw_connect(px.port, 100)) < 0) {
			cr_assert(h_now_ms() < deadline && !h_cmd_wait(&c, 0), "round %d: pgmux did not start", round);
		}
		close(fd);
		cr_assert_eq(kill(c.pid, SIGHUP), 0);
		bool ended = h_cmd_wait(&c, 100);
		if (ended) {
			killed++;
			fprintf(stderr, "round %d: pgmux exited with status %d on a SIGHUP right after its port opened\n",
				round, c.status);
		} else {
			kill(c.pid, SIGTERM);
			cr_assert(h_cmd_wait(&c, 10000), "round %d: pgmux did not stop on SIGTERM", round);
			cr_expect_eq(c.status, 0, "round %d: exit status %d after SIGTERM", round, c.status);
		}
		h_cmd_free(&c);
	}
	cr_expect_eq(killed, 0, "an early SIGHUP killed pgmux in %d of 10 starts", killed);
}

/* ================================================================ new passwords from the secrets directory */

#define ROT_OLD "rot-old-pw"
#define ROT_NEW "rot-new-pw"

static char rot_secrets[600];
static bool rot_role_created; /* .fini drops the "rot" role on the suite's server */

static void write_rot_secret(const char *password)
{
	char path[700], text[400];
	snprintf(path, sizeof(path), "%s/rot.json", rot_secrets);
	snprintf(text, sizeof(text),
		 "{\"username\": \"rot\", \"password\": \"%s\", \"engine\": \"postgres\", \"host\": \"127.0.0.1\", "
		 "\"port\": %d, \"dbname\": \"postgres\"}\n",
		 password, h_env()->pgport);
	h_write_file(path, text, 0600);
}

/* Terminate rot's sessions on A except keep_pid, and wait until they are gone. */
static void terminate_rot_backends(PGconn *su, const char *keep_pid)
{
	char sql[300], check[300];
	snprintf(sql, sizeof(sql),
		 "with t as materialized (select pid from pg_stat_activity where usename = 'rot' and pid <> %s) "
		 "select coalesce(string_agg(pid::text, ' '), '') from t where pg_terminate_backend(pid)",
		 keep_pid);
	snprintf(check, sizeof(check), "select count(*) from pg_stat_activity where usename = 'rot' and pid <> %s",
		 keep_pid);
	char *pids = h_value_ok(su, sql);
	cr_assert(h_poll_value(su, check, "0", 10000), "rot's backends did not go away");
	/*
	 * And pgmux has seen them go. A backend that dies while parked is noticed
	 * when its worker reads the end of the connection; a borrow that comes
	 * first (pgmux under valgrind is slow) hands out the dead backend, and
	 * the transaction sent to it fails with ERROR 57P01.
	 */
	char *save = NULL;
	for (char *pid = strtok_r(pids, " ", &save); pid; pid = strtok_r(NULL, " ", &save)) {
		char needle[64];
		snprintf(needle, sizeof(needle), " pid=%s: closing (", pid);
		cr_assert(h_file_wait_contains(px.logfile, needle, h_scaled_ms(10000)),
			  "pgmux did not notice that backend %s was terminated", pid);
	}
	free(pids);
}

/* A role of its own and a copy of the secrets with it, so that nothing shared changes. */
static void init_rotation(void)
{
	const struct h_env *e = h_env();
	PGconn *su = h_connect_super_direct();
	rot_role_created = true;
	PQsetNoticeReceiver(su, h_ignore_notices, NULL);
	h_exec_ok(su, "DROP ROLE IF EXISTS rot");
	h_exec_ok(su, "CREATE ROLE rot LOGIN PASSWORD '" ROT_OLD "'");
	PQfinish(su);

	snprintf(rot_secrets, sizeof(rot_secrets), "%s/secrets", h_test_dir());
	cr_assert_eq(mkdir(rot_secrets, 0700), 0);
	static const char *const names[] = {"app.json", "postgres.json", NULL};
	for (int i = 0; names[i]; i++) {
		char from[700], to[700];
		snprintf(from, sizeof(from), "%s/%s", e->secrets, names[i]);
		snprintf(to, sizeof(to), "%s/%s", rot_secrets, names[i]);
		char *text = h_read_file(from);
		cr_assert(text[0], "%s is empty or missing", from);
		h_write_file(to, text, 0600);
		free(text);
	}
	write_rot_secret(ROT_OLD);

	struct pgmux_options o;
	pgmux_options_console(&o);
	o.max_connections = 20;
	o.secrets_dir = rot_secrets;
	pgmux_start_ok(&px, &o);
}

static void fini_rotation(void)
{
	pgmux_kill(&px);
	h_teardown();
	if (rot_role_created) {
		PGconn *su = h_connect_super_direct();
		PQclear(PQexec(su, "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'rot'"));
		if (!h_poll_value(su, "select count(*) from pg_stat_activity where usename = 'rot'", "0", 10000))
			fprintf(stderr, "cleanup: rot still has sessions\n");
		PGresult *r = PQexec(su, "DROP ROLE IF EXISTS rot");
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			fprintf(stderr, "cleanup: DROP ROLE rot failed: %s", PQerrorMessage(su));
		PQclear(r);
		PQfinish(su);
		rot_role_created = false;
	}
}

TestSuite(reload_secrets, .init = init_rotation, .fini = fini_rotation, .timeout = 60);

Test(reload_secrets, new_password_at_reload_old_sessions_untouched)
{
	/* S1 is pinned (temp table) so it keeps its backend; S2 is not pinned. */
	PGconn *s1 = h_session_as(&px, "rot", ROT_OLD, NULL);
	PGconn *s2 = h_session_as(&px, "rot", ROT_OLD, NULL);
	h_exec_ok(s1, "create temp table rot_pin (x int)");
	char *s1_pid = h_value_ok(s1, "select pg_backend_pid()");
	cr_assert_eq(h_number_ok(s2, "select 1"), 1);

	/* Rotate: the server first, then the secret, then SIGHUP. */
	PGconn *su = h_connect_super_direct();
	h_exec_ok(su, "ALTER ROLE rot PASSWORD '" ROT_NEW "'");
	write_rot_secret(ROT_NEW);
	pgmux_reload(&px, NULL);
	/* Every later query needs a new backend: only S1's pinned one is left. */
	terminate_rot_backends(su, s1_pid);

	PGconn *s3 = h_connect_as(px.port, "rot", ROT_NEW, NULL);
	if (PQstatus(s3) != CONNECTION_OK)
		pgmux_dump_logs(&px);
	cr_assert_eq(PQstatus(s3), CONNECTION_OK, "login with the new password failed: %s", PQerrorMessage(s3));
	char *v = h_query_value(s3, "select current_user || ' ' || pg_backend_pid()");
	if (!v)
		pgmux_dump_logs(&px);
	cr_assert_not_null(v, "a query that needs a new backend failed after the rotation: %s", PQerrorMessage(s3));
	cr_expect(strncmp(v, "rot ", 4) == 0 && strcmp(v + 4, s1_pid) != 0, "got \"%s\"", v);
	free(v);

	PGconn *old = h_connect_as(px.port, "rot", ROT_OLD, NULL);
	cr_expect_eq(PQstatus(old), CONNECTION_BAD, "the old password still logs in after the rotation");
	cr_expect(strstr(PQerrorMessage(old), "password authentication failed") != NULL, "error: %s",
		  PQerrorMessage(old));
	PQfinish(old);

	/* Established sessions are left alone. */
	cr_expect_eq(h_number_ok(s1, "select count(*) from rot_pin"), 0);
	v = h_value_ok(s1, "select pg_backend_pid()");
	cr_expect_str_eq(v, s1_pid, "S1 lost its backend");
	free(v);
	cr_expect_eq(h_number_ok(s2, "select 2"), 2, "S2 stopped working");

	free(s1_pid);
	PQfinish(s1);
	PQfinish(s2);
	PQfinish(s3);
	PQfinish(su);
	h_stop_expect_clean_exit(&px);
}
