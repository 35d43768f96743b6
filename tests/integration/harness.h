/*
 * harness.h: helpers for the integration suite: start and stop a real pgmux
 * (optionally under valgrind) with a per-test config, run real clients (psql,
 * pgbench) with a timeout and captured output, connect through libpq, and
 * speak raw bytes over TCP. The PostgreSQL they all talk to is set up once
 * for the whole suite by pg-env.sh, which describes it in PGMUX_TEST_*.
 *
 * Every process started here is stopped by its PID: by the test itself, by
 * h_teardown() in the test's .fini, and, should the test process die, by the
 * kernel (each child asks for SIGKILL when its parent dies).
 */
#ifndef PGMUX_TEST_HARNESS_H
#define PGMUX_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>

/* What pg-env.sh set up; every field is non-NULL once h_env() returned. */
struct h_env {
	const char *dir;       /* the suite's scratch directory */
	const char *pghost;    /* 127.0.0.1 */
	int pgport;            /* PostgreSQL itself */
	const char *superuser; /* PostgreSQL superuser and its password */
	const char *superpass;
	const char *appuser; /* the role the tests log in as through pgmux */
	const char *apppass;
	const char *secrets; /* pgmux's secrets_dir */
	const char *cert;    /* pgmux's client-side certificate, key and their CA */
	const char *key;
	const char *ca;
	const char *pgbin;    /* psql, pgbench */
	const char *pgmux;    /* PGMUX_BIN */
	const char *valgrind; /* PGMUX_VALGRIND, "" when not under valgrind */
};

/* Read the environment; fails the current test when pg-env.sh did not run. */
const struct h_env *h_env(void);
bool h_under_valgrind(void);
/*
 * pgmux is a sanitizer build (PGMUX_SANITIZER=asan or tsan, which .ci/run
 * sets): its memory and speed are the sanitizer's, so bounds on resident
 * memory and on throughput ratios do not apply.
 */
bool h_under_sanitizer(void);
/* A time limit for something pgmux does, stretched when pgmux runs under valgrind. */
int h_scaled_ms(int ms);
long long h_now_ms(void);
void h_sleep_ms(int ms);
/* A directory of its own for the current test (created on first use). */
const char *h_test_dir(void);
/* A loopback port that was free a moment ago (bound with port 0, then closed). */
int h_free_port(void);

/* ---------------------------------------------------------------- pgmux */

struct pgmux_options {
	int listen_port;          /* 0: pick a free one */
	bool tls;                 /* configure client_tls_cert_file/key_file */
	bool require_tls;
	const char *client_auth;  /* scram-sha-256 | md5 | trust */
	const char *pool_mode;    /* session | transaction */
	int max_connections;      /* [pool] max_connections */
	const char *server_tls;   /* disable | prefer | require | verify-ca | verify-full */
	const char *server_tls_ca_file; /* NULL: the suite's CA with verify-*, else none */
	int max_connections_percent;    /* [pool] max_connections_percent; 0 means 100 */
	int workers;
	const char *shutdown_timeout;
	const char *client_login_timeout;
	const char *extra_pgmux; /* raw lines appended to [pgmux], or NULL */
	const char *extra_pool;  /* raw lines appended to [pool], or NULL */
	const char *hosts;        /* [target] hosts; NULL means the suite's PostgreSQL */
	const char *extra_target; /* raw lines appended to [target], or NULL */
	const char *admin_users;  /* [pgmux] admin_users; NULL means nobody */
	const char *secrets_dir;  /* [pgmux] secrets_dir; NULL means the suite's */
	/*
	 * [target] health_check_user, which pgmux requires with more than one
	 * secret: NULL means the suite's app user, "" leaves it out. Also left
	 * out when extra_target sets it.
	 */
	const char *health_check_user;
	const char *pidfile;      /* [pgmux] pidfile; NULL means none */
	bool daemonize;           /* run with -d (needs pidfile, an absolute path) */
	int max_open_files;       /* > 0: pgmux runs under prlimit --nofile with this limit */
};

/* TLS offered but not required, SCRAM, session pooling, 20 connections, 2 workers. */
void pgmux_options_default(struct pgmux_options *o);

struct pgmux {
	pid_t pid; /* 0 when not running */
	int port;
	char config[512];
	char logfile[512];
	char stderr_file[512];
	char valgrind_prefix[512]; /* valgrind.<pid> files start with this */
};

/* Write the config for o into the test directory (picks the port). */
bool pgmux_write_config(struct pgmux *p, const struct pgmux_options *o);
/*
 * Write the config, start pgmux and wait until its port accepts connections.
 * On failure the process is stopped, its logs are printed and false returned.
 * With o->daemonize the process started must exit 0; the daemon it leaves
 * (whose pid the pidfile gives) becomes this process's child, as a child
 * subreaper, so that p->pid is stopped and reaped like any other.
 */
bool pgmux_start(struct pgmux *p, const struct pgmux_options *o);
/*
 * Write the config, run pgmux and wait up to timeout_ms for it to exit, for
 * start-ups that must fail. Returns the exit status as pgmux_stop does, or -1
 * (pgmux killed) when it did not exit in time.
 */
int pgmux_run_to_exit(struct pgmux *p, const struct pgmux_options *o, int timeout_ms);
/* True while pgmux has not exited (reaps it when it has). */
bool pgmux_running(struct pgmux *p);
/*
 * Send sig and wait up to timeout_ms for pgmux to exit. Returns its exit code,
 * 128+N when signal N killed it, or -1 when it did not exit in time (it is then
 * killed with SIGKILL). Prints pgmux's logs when the result is not 0.
 */
int pgmux_stop(struct pgmux *p, int sig, int timeout_ms);
/* Wait (without signalling) for pgmux to exit; same results as pgmux_stop, -2 = still running. */
int pgmux_wait_exit(struct pgmux *p, int timeout_ms);
/* SIGKILL and reap, for teardown paths. */
void pgmux_kill(struct pgmux *p);
/* The tail of pgmux's log and stderr and any valgrind reports, to stderr. */
void pgmux_dump_logs(const struct pgmux *p);

/* ---------------------------------------------------------------- commands */

struct h_cmd {
	pid_t pid; /* 0 once reaped */
	int status; /* exit code, or 128+signal; -1 while running */
	char out_path[512];
	char err_path[512];
	char *out; /* NUL-terminated captured output, filled once the command ended */
	char *err;
	long long started_ms;
	long long ended_ms;
};

/*
 * Start argv[0] (searched in PATH) with env (NULL-terminated "NAME=value"
 * additions, or NULL), stdin from /dev/null, stdout and stderr to files.
 */
bool h_cmd_start(struct h_cmd *c, const char *const argv[], const char *const env[]);
/* Wait up to timeout_ms; true (and out/err filled) when the command ended. */
bool h_cmd_wait(struct h_cmd *c, int timeout_ms);
/* SIGKILL, reap and collect the output. */
void h_cmd_kill(struct h_cmd *c);
/* Start, wait up to timeout_ms (then kill), return the status (-1 if killed for time). */
int h_cmd_run(struct h_cmd *c, const char *const argv[], const char *const env[], int timeout_ms);
void h_cmd_free(struct h_cmd *c);
/* Print a command's output to stderr (for failing assertions). */
void h_cmd_dump(const struct h_cmd *c, const char *what);

/* ---------------------------------------------------------------- libpq */

/* "host=127.0.0.1 port=P user=U dbname=postgres sslmode=S password=W connect_timeout=10 EXTRA" (malloc'd). */
char *h_conninfo(int port, const char *user, const char *password, const char *sslmode, const char *extra);
/* A connection to pgmux as the app user; check PQstatus yourself. */
PGconn *h_connect_app(int port, const char *sslmode, const char *extra);
/* A direct connection to PostgreSQL as the superuser (bypassing pgmux); fails the test on error. */
PGconn *h_connect_super_direct(void);
/* First column of the first row (malloc'd), or NULL on error (message to stderr). */
char *h_query_value(PGconn *conn, const char *sql);
/* The same for a query that must succeed: fails the test otherwise (free the value). */
char *h_value_ok(PGconn *conn, const char *sql);
/* The value of counter name in SHOW STATS, on a connection to the admin console. */
long long h_admin_stat(PGconn *admin, const char *name);
/*
 * Poll (direct superuser connection) until sql returns a first value equal to
 * want, or timeout_ms passes. Returns true when it did.
 */
bool h_poll_value(PGconn *super, const char *sql, const char *want, int timeout_ms);
/* Poll check(arg) every 20 ms until it returns true (then true) or timeout_ms passes (false). */
bool h_poll_until(bool (*check)(void *arg), void *arg, int timeout_ms);
/* Wait for the result of a query sent with PQsendQuery, at most timeout_ms; NULL on timeout. */
PGresult *h_get_result(PGconn *conn, int timeout_ms);

/* ---------------------------------------------------------------- raw TCP */

int h_raw_connect(int port, int timeout_ms); /* -1 on failure */
bool h_raw_send(int fd, const void *buf, size_t len);
/* Read exactly len bytes. Returns len, fewer at EOF, -1 on a reset/error, -2 on timeout. */
ssize_t h_raw_read(int fd, void *buf, size_t len, int timeout_ms);

enum h_msg_result { H_MSG_OK = 1, H_MSG_CLOSED = 0, H_MSG_ERROR = -1, H_MSG_TIMEOUT = -2 };
/* Read one backend message (type byte, int32 length, body); *body is malloc'd. */
enum h_msg_result h_raw_read_message(int fd, char *type, char **body, size_t *len, int timeout_ms);
/* True when the peer closes (EOF or reset) within timeout_ms; data before that is discarded. */
bool h_raw_wait_closed(int fd, int timeout_ms);
/* A StartupMessage: version, then NULL-terminated name/value pairs. Returns its length. */
size_t h_build_startup(uint8_t *buf, size_t cap, uint32_t version, const char *const params[]);
/* A field (e.g. 'C' for the SQLSTATE) of an ErrorResponse/NoticeResponse body, or NULL. */
const char *h_error_field(const char *body, size_t len, char field);

uint32_t h_get_u32(const void *p);
void h_put_u32(void *p, uint32_t v);

/* ---------------------------------------------------------------- files, direct app sessions */

/* A file's whole content (malloc'd, NUL-terminated); "" when it cannot be read. */
char *h_read_file(const char *path);
/* Poll a file (a log) until it contains needle, at most timeout_ms. */
bool h_file_wait_contains(const char *path, const char *needle, int timeout_ms);
/* A direct connection to PostgreSQL as the app user (bypassing pgmux); fails the test on error. */
PGconn *h_connect_app_direct(const char *extra);

/* ---------------------------------------------------------------- logs, second server */

/* How many times needle occurs in a file (0 when it cannot be read). */
int h_file_count(const char *path, const char *needle);
/* Poll a file until needle occurs in it at least min_count times, at most timeout_ms. */
bool h_file_wait_count(const char *path, const char *needle, int min_count, int timeout_ms);
/* Write a whole file (a new one renamed over the old) with the given mode; fails the test on error. */
void h_write_file(const char *path, const char *text, int mode);

/*
 * A second, throw-away PostgreSQL for tests that need two servers (cutover):
 * its own cluster under the suite's directory, the suite's superuser and
 * password, SCRAM, loopback only. The postmaster is a child of the test
 * (stopped by its PID; it dies with the test process too).
 */
struct h_pg {
	pid_t pid; /* the postmaster; 0 when not running */
	int port;
	char dir[512]; /* holds data/ and the socket */
	char logfile[600];
};
/* initdb, start and wait until it accepts logins; false (and the log printed) on failure. */
bool h_pg_start(struct h_pg *pg);
/* Fast shutdown (SIGINT to the postmaster) and wait; returns its exit status or -1. */
int h_pg_stop(struct h_pg *pg);
/* A connection to a server (port) as the suite's superuser to dbname; fails the test on error. */
PGconn *h_connect_super_port(int port, const char *dbname);
/* Run one statement that must succeed (fails the test otherwise). */
void h_exec_ok(PGconn *conn, const char *sql);

/* ---------------------------------------------------------------- shared test steps */

/*
 * Backends of the app role on the test database, as PostgreSQL sees them,
 * but for pgmux's health-check connection (outside the pool caps by design).
 */
#define H_APP_BACKENDS_SQL                                                                             \
	"select count(*) from pg_stat_activity where usename = 'app' and datname = 'postgres' and "    \
	"coalesce(application_name, '') <> 'pgmux health check'"

/* How many of app's backends PostgreSQL has now (see H_APP_BACKENDS_SQL). */
int h_app_backends(PGconn *super);
/*
 * Wait for backends of app left by an earlier test to be gone, so that counts
 * in pg_stat_activity belong to the current test; fails the test otherwise.
 */
void h_wait_no_app_backends(void);
/* A session to pgmux p as app that must log in (pgmux's logs are printed if not). */
PGconn *h_app_session(const struct pgmux *p, const char *sslmode, const char *extra);
/* sql must return want as its first value. */
void h_expect_value(PGconn *conn, const char *sql, const char *want);
/* The pid of the backend that serves conn's next statement. */
int h_backend_pid(PGconn *conn);
/* SIGTERM must make pgmux exit with status 0 (99 under valgrind means errors or leaks). */
void h_stop_expect_clean_exit(struct pgmux *p);
/* pgbench (c, ended) exited with 0 and reports no failed transaction; its output is printed if not. */
void h_expect_pgbench_clean(const struct h_cmd *c, const char *what);

/* ---------------------------------------------------------------- teardown */

/* Kill every process this test started and still running (pgmux included), and any it inherited. */
void h_teardown(void);

#endif
