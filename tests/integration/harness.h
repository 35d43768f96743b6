/*
 * harness.h: helpers for the integration suite: start and stop a real pgmux
 * (optionally under valgrind) with a per-test config, run real clients (psql,
 * pgbench) with a timeout and captured output, connect through libpq, and
 * speak raw bytes over TCP. The PostgreSQL they all talk to is set up once
 * for the whole suite by pg-env.sh, which describes it in PGMUX_TEST_*.
 * harness.c holds processes, clients and files; harness_wire.c the raw
 * protocol (building frontend messages, reading and checking backend ones,
 * comparing pgmux's answers with PostgreSQL's).
 *
 * Every process started here is stopped by its PID: by the test itself, by
 * h_teardown() in the test's .fini, and, should the test process die, by the
 * kernel (each child asks for SIGKILL when its parent dies).
 *
 * One helper per check: a helper whose name says "_ok", "expect" or
 * "session" fails the test when what it names does not happen, and first
 * prints the logs of the pgmux the test started last (pgmux_start()), so
 * that a failure shows what pgmux saw. Criterion runs every test in a
 * process of its own, so "the pgmux started last" is the test's own.
 */
#ifndef PGMUX_TEST_HARNESS_H
#define PGMUX_TEST_HARNESS_H

#include <pthread.h>
#include <stdatomic.h>
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
/* utime + stime of every thread of pid, in milliseconds (/proc/PID/stat). */
long long h_proc_cpu_ms(pid_t pid);
/* FNV-1a over n bytes, continuing from h (start with H_FNV1A_START): a digest of a stream. */
#define H_FNV1A_START 14695981039346656037ULL
uint64_t h_fnv1a(uint64_t h, const char *p, size_t n);

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
	/*
	 * worker_spread_percent: 0 by default here (clients dealt to both
	 * workers in turn, so that every suite crosses between workers); -1
	 * leaves it out (pgmux's default, 75: one worker until it is busy).
	 */
	int worker_spread_percent;
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
	/* Several pgmux in one test: NAME.ini, NAME.log, NAME.stderr (NULL: pgmux.*). */
	const char *instance_name;
};

/* TLS offered but not required, SCRAM, session pooling, 20 connections, 2 workers. */
void pgmux_options_default(struct pgmux_options *o);
/*
 * The defaults, with transaction pooling over 8 backends, the admin console
 * for the suite's superuser and health checks every 250 ms: the setup of
 * the admin console, reload, metrics and cutover tests.
 */
void pgmux_options_console(struct pgmux_options *o);

struct pgmux {
	pid_t pid; /* 0 when not running */
	int port;
	char config[512];
	char logfile[512];
	char stderr_file[512];
	char valgrind_prefix[512]; /* valgrind.<pid> files start with this */
};

/* Write the config for o into the test directory (picks the port unless o->listen_port says). */
bool pgmux_write_config(struct pgmux *p, const struct pgmux_options *o);
/* Write the config for o on p's port (a running pgmux reads it at its next reload). */
void pgmux_rewrite_config(struct pgmux *p, const struct pgmux_options *o);
/*
 * Write the config, start pgmux and wait until its port accepts connections.
 * On failure the process is stopped, its logs are printed and false returned.
 * With o->daemonize the process started must exit 0; the daemon it leaves
 * (whose pid the pidfile gives) becomes this process's child, as a child
 * subreaper, so that p->pid is stopped and reaped like any other.
 */
bool pgmux_start(struct pgmux *p, const struct pgmux_options *o);
/* pgmux_start() that must succeed: fails the test otherwise. */
void pgmux_start_ok(struct pgmux *p, const struct pgmux_options *o);
/*
 * Transaction pooling with a pool of max_connections backends, the admin
 * console for the suite's superuser, and extra lines (or NULL) for [pgmux]
 * and [pool]; otherwise the defaults (TLS offered, SCRAM). The pool keeps
 * every idle backend (max_idle_connections_percent = 100) unless extra_pool
 * sets the cap: tests that follow clients over a fixed set of backends
 * cannot have the default cap of 50 % close one left idle for a second.
 * Waits first until the backends of app that earlier tests left are gone.
 */
void pgmux_start_transaction(struct pgmux *p, int max_connections, const char *extra_pgmux, const char *extra_pool);
/*
 * pgmux for raw-protocol tests: client_auth trust, no TLS on either side,
 * the admin console for the suite's superuser, pool_mode with
 * max_connections backends and workers workers, and extra lines (or NULL)
 * for [pgmux] and [pool]. Waits first until the backends of app that earlier
 * tests left are gone, so that counts in pg_stat_activity are the test's own.
 */
void pgmux_start_trust(struct pgmux *p, const char *pool_mode, int max_connections, int workers,
		       const char *extra_pgmux, const char *extra_pool);
/*
 * Transaction pooling with one backend, which every client of the test
 * shares: what a session leaves on it meets the others, and a session keeps
 * it from one transaction to the next as it would keep its own connection
 * directly (so its answers can be compared with PostgreSQL's byte for byte).
 * A client kept waiting for it gives up after a few seconds, not the default
 * two minutes. Trust, max_packet_size = 64kB, two workers.
 */
void pgmux_start_one_backend(struct pgmux *p, const char *extra_pool);
/*
 * Write the config, run pgmux and wait up to timeout_ms for it to exit, for
 * start-ups that must fail. Returns the exit status as pgmux_stop does, or -1
 * (pgmux killed) when it did not exit in time.
 */
int pgmux_run_to_exit(struct pgmux *p, const struct pgmux_options *o, int timeout_ms);
/* True while pgmux has not exited (reaps it when it has). */
bool pgmux_running(struct pgmux *p);
/* Send sig to a pgmux that must be running. */
void pgmux_signal(struct pgmux *p, int sig);
/*
 * Reload: with o, first rewrite the config (p's port kept); then SIGHUP, and
 * wait until pgmux logs one more "configuration reloaded from". Fails the
 * test when it does not.
 */
void pgmux_reload(struct pgmux *p, const struct pgmux_options *o);
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
/* pgmux_dump_logs() of the pgmux the test started last (nothing before the first). */
void h_dump_current_logs(void);

/* pgmux's log must come to contain needle within timeout_ms (scaled under valgrind). */
void h_expect_log(const struct pgmux *p, const char *needle, int timeout_ms);
/* pgmux's log must not contain needle (the line that does is printed). */
void h_expect_log_lacks(const struct pgmux *p, const char *needle);

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

/*
 * psql -X -w ARGS... conninfo, with password in PGPASSWORD (NULL: none, and
 * no password file) and PGCONNECT_TIMEOUT=10. args are psql's own options
 * (-A, -t, -c SQL, -f FILE...), NULL-terminated.
 */
bool h_psql_start(struct h_cmd *c, const char *conninfo, const char *password, const char *const args[]);
/* The same, waited for up to 20 s (scaled); returns the exit status as h_cmd_run() does. */
int h_psql_run(struct h_cmd *c, const char *conninfo, const char *password, const char *const args[]);
/* psql -A -t -c sql as app to pgmux p, with sslmode, started (the password in PGPASSWORD). */
bool h_app_psql_start(struct h_cmd *c, const struct pgmux *p, const char *sslmode, const char *sql);
/* A command started before must end within timeout_ms with status 0, having printed exactly want; frees it. */
void h_expect_cmd_output(struct h_cmd *c, int timeout_ms, const char *want, const char *what);
/*
 * pgbench ARGS... -h 127.0.0.1 -p port -U app dbname, as the suite's app
 * user with its password, PGSSLMODE=sslmode and PGCONNECT_TIMEOUT=60.
 * args are pgbench's own options (-n -S -c 8 -T 5...), NULL-terminated.
 */
bool h_pgbench_start(struct h_cmd *c, int port, const char *sslmode, const char *dbname, const char *const args[]);
/* The same, waited for up to timeout_ms (then killed); returns the exit status as h_cmd_run() does. */
int h_pgbench_run(struct h_cmd *c, int port, const char *sslmode, const char *dbname, const char *const args[],
		  int timeout_ms);
/* pgbench (c, ended) exited with 0 and reports no failed transaction; its output is printed if not. */
void h_expect_pgbench_clean(const struct h_cmd *c, const char *what);
/* pgbench's "number of transactions actually processed", which its output (c, ended) must give. */
long h_pgbench_processed(const struct h_cmd *c);
/*
 * Wait for n pgbench runs, one per query protocol in modes (-M), started
 * with h_pgbench_start(): each must end in time and clean, with no client
 * aborted and some transactions. Returns the transactions of all of them.
 */
long h_pgbench_modes_wait(struct h_cmd *runs, const char *const *modes, int n);
/* Totals of the pgbench tables, read directly from PostgreSQL (super: a connection to it). */
struct h_bank {
	long long history_rows, history_delta, accounts, branches, tellers;
};
struct h_bank h_bank_totals(PGconn *super);
/* Between before and after, processed TPC-B transactions: one history row each, balances moved by the deltas. */
void h_expect_bank_adds_up(const struct h_bank *before, const struct h_bank *after, long processed);

/* ---------------------------------------------------------------- libpq */

/* "host=127.0.0.1 port=P user=U dbname=postgres sslmode=S password=W connect_timeout=10 EXTRA" (malloc'd). */
char *h_conninfo(int port, const char *user, const char *password, const char *sslmode, const char *extra);
/* A connection to port as the app user; check PQstatus yourself. */
PGconn *h_connect_app(int port, const char *sslmode, const char *extra);
/* A connection to port as user (sslmode=disable unless extra says otherwise); check PQstatus yourself. */
PGconn *h_connect_as(int port, const char *user, const char *password, const char *extra);
/* A session to pgmux p as app that must log in. */
PGconn *h_app_session(const struct pgmux *p, const char *sslmode, const char *extra);
/* The same on another of p's ports (its readonly_port, say). */
PGconn *h_app_session_on(const struct pgmux *p, int port, const char *sslmode, const char *extra);
/* A session to pgmux p as user (sslmode=disable unless extra says otherwise) that must log in. */
PGconn *h_session_as(const struct pgmux *p, const char *user, const char *password, const char *extra);
/* p's admin console as the suite's superuser (an admin in the tests that set admin_users); must log in. */
PGconn *h_admin_session(const struct pgmux *p);
/* p's admin console as user; NULL (the reason printed) when pgmux refuses the login. */
PGconn *h_admin_connect(const struct pgmux *p, const char *user, const char *password);
/* A direct connection to PostgreSQL as the superuser (bypassing pgmux); fails the test on error. */
PGconn *h_connect_super_direct(void);
/* A direct connection to PostgreSQL as the app user (bypassing pgmux); fails the test on error. */
PGconn *h_connect_app_direct(const char *extra);
/* A connection to a server (port, or addr:port) as the suite's superuser to dbname; fails the test on error. */
PGconn *h_connect_super_port(int port, const char *dbname);
PGconn *h_connect_super_at(const char *addr, int port, const char *dbname);

/* First column of the first row (malloc'd), or NULL on error (message to stderr). */
char *h_query_value(PGconn *conn, const char *sql);
/* The same for a query that must succeed: fails the test otherwise (free the value). */
char *h_value_ok(PGconn *conn, const char *sql);
/* h_value_ok() read as a number. */
long long h_number_ok(PGconn *conn, const char *sql);
/* sql must return rows (the result is the caller's to PQclear). */
PGresult *h_rows_ok(PGconn *conn, const char *sql);
/* sql must return want as its first value. */
void h_expect_value(PGconn *conn, const char *sql, const char *want);
/* Run one statement that must succeed, command or rows (fails the test otherwise). */
void h_exec_ok(PGconn *conn, const char *sql);
/* Run sql: its command tag ("SELECT 1", "PAUSE"), or "ERROR " and its SQLSTATE when it failed (static). */
const char *h_command_outcome(PGconn *conn, const char *sql);
/* A statement that must fail with sqlstate; returns its primary message (malloc'd). */
char *h_expect_error(PGconn *conn, const char *sql, const char *sqlstate);
/* PQprepare that must succeed. */
void h_prepare_ok(PGconn *conn, const char *name, const char *sql);
/* PQexecPrepared with one text parameter (or none when param is NULL): its single value (malloc'd). */
char *h_prepared_value_ok(PGconn *conn, const char *name, const char *param);
/* sql returns (pid, value) in one row, so both come from the same backend: the value (malloc'd). */
char *h_pid_and_value(PGconn *conn, const char *sql, int *pid);
/* The pid of the backend that serves conn's next statement. */
int h_backend_pid(PGconn *conn);

/*
 * Poll (direct superuser connection) until sql returns a first value equal to
 * want, or timeout_ms passes. Returns true when it did.
 */
bool h_poll_value(PGconn *super, const char *sql, const char *want, int timeout_ms);
/* pgmux with transaction pooling, trust, the app user as admin, a pool of max_connections (extra_pool: more lines). */
void h_start_transaction_pgmux(struct pgmux *p, int max_connections, const char *extra_pool);
/* sql through conn ends with the command tag want (a command, or rows). */
void h_expect_tag(PGconn *conn, const char *sql, const char *want);
/* LISTEN: wait until conn has a notification (consuming input), at most timeout_ms; NULL when none came. */
PGnotify *h_wait_notify(PGconn *conn, int timeout_ms);
/* The next notification on conn is channel's, with payload, from backend pid (0: any), within 5 s (scaled). */
void h_expect_notify(PGconn *conn, const char *channel, const char *payload, int pid);
/* No notification comes to conn within wait_ms. */
void h_expect_no_notify(PGconn *conn, int wait_ms);
/* Poll check(arg) every 20 ms until it returns true (then true) or timeout_ms passes (false). */
bool h_poll_until(bool (*check)(void *arg), void *arg, int timeout_ms);
/* Wait until PQgetResult() would not block, at most timeout_ms; false on timeout. */
bool h_wait_ready(PGconn *conn, int timeout_ms);
/* Wait for the result of a query sent with PQsendQuery, at most timeout_ms; NULL on timeout or at the end. */
PGresult *h_get_result(PGconn *conn, int timeout_ms);
/* The next result (NULL at the end), which must come within 20 s (scaled). */
PGresult *h_next_result(PGconn *conn);
/* Read and drop every result still to come (each within 5 s). */
void h_drain_results(PGconn *conn);
/* The first value of the answer to a query sent with PQsendQuery: rows, within timeout_ms (malloc'd). */
char *h_sent_value_ok(PGconn *conn, int timeout_ms, const char *what);
/* A query sent with PQsendQuery must still be unanswered after wait_ms. */
void h_expect_no_result(PGconn *conn, int wait_ms, const char *what);

/*
 * A notice receiver (PQsetNoticeReceiver(conn, h_record_notices, &n)):
 * libpq hands it warnings and notices, and errors that arrive while the
 * connection is idle (a FATAL before a close).
 */
struct h_notices {
	int count;
	int fatal;            /* of severity FATAL or PANIC */
	char sqlstate[6];     /* of the last one */
	char severity[16];    /* of the last one (not localized) */
	char fatal_sqlstate[6]; /* of the last FATAL */
	char message[256];    /* primary message of the last one */
	char text[2048];      /* every one's full text, in order */
};
void h_record_notices(void *arg, const PGresult *r);
/* A notice receiver that drops them (cleanup statements, expected warnings). */
void h_ignore_notices(void *arg, const PGresult *r);

/* ---------------------------------------------------------------- the admin console */

/* The value of counter name in SHOW STATS, on a connection to the admin console. */
long long h_admin_stat(PGconn *admin, const char *name);
/*
 * Column col of the row of an admin SHOW command whose column key_col is
 * key (the first row when key_col is NULL): malloc'd, NULL when no row
 * matches. A missing column fails the test.
 */
char *h_admin_cell(PGconn *admin, const char *show, const char *key_col, const char *key, const char *col);
/* The same, which must be there (fails the test otherwise). */
char *h_admin_cell_ok(PGconn *admin, const char *show, const char *key_col, const char *key, const char *col);
/* Poll h_admin_cell() until it equals want, at most timeout_ms. */
bool h_admin_poll_cell(PGconn *admin, const char *show, const char *key_col, const char *key, const char *col,
		       const char *want, int timeout_ms);

/* ---------------------------------------------------------------- HTTP (the metrics port) */

/* One HTTP request to address:port: the whole response, read to EOF within 5 s (malloc'd), or NULL when nothing listens. */
char *h_http_exchange(const char *address, int port, const char *request);
/* The body of an HTTP response (after the blank line), or "" without one. */
const char *h_http_body(const char *response);
/* GET /metrics on 127.0.0.1:port, which must answer 200: the body (malloc'd). */
char *h_scrape(int port);
/* The value of the sample whose name and labels are exactly series in a scrape, or -1 when there is none. */
double h_sample(const char *body, const char *series);

/* ---------------------------------------------------------------- raw TCP (the protocol: harness_wire.c) */

int h_raw_connect(int port, int timeout_ms); /* -1 on failure */
bool h_raw_send(int fd, const void *buf, size_t len);
/* Read exactly len bytes. Returns len, fewer at EOF, -1 on a reset/error, -2 on timeout. */
ssize_t h_raw_read(int fd, void *buf, size_t len, int timeout_ms);

enum h_msg_result { H_MSG_OK = 1, H_MSG_CLOSED = 0, H_MSG_ERROR = -1, H_MSG_TIMEOUT = -2 };
/*
 * Read one backend message (type byte, int32 length, body); *body is
 * malloc'd and NUL-terminated. A close, by EOF or reset, is H_MSG_CLOSED,
 * with *len the bytes of a message it cut short (0 between messages);
 * H_MSG_ERROR is a length no backend sends.
 */
enum h_msg_result h_raw_read_message(int fd, char *type, char **body, size_t *len, int timeout_ms);
/* True when the peer closes (EOF or reset) within timeout_ms; data before that is discarded. */
bool h_raw_wait_closed(int fd, int timeout_ms);
/* A StartupMessage: version, then NULL-terminated name/value pairs. Returns its length. */
size_t h_build_startup(uint8_t *buf, size_t cap, uint32_t version, const char *const params[]);
/* A field (e.g. 'C' for the SQLSTATE) of an ErrorResponse/NoticeResponse body, or NULL. */
const char *h_error_field(const char *body, size_t len, char field);

uint32_t h_get_u32(const void *p);
void h_put_u32(void *p, uint32_t v);

/* ---------------------------------------------------------------- raw protocol (harness_wire.c) */

/* A growing byte buffer; its bytes are followed by a NUL, so a text buffer stays printable. */
struct h_buf {
	uint8_t *p;
	size_t len;
	size_t cap;
};
void h_buf_put(struct h_buf *b, const void *data, size_t n);
void h_buf_u8(struct h_buf *b, uint8_t v);
void h_buf_i16(struct h_buf *b, int v);     /* network byte order */
void h_buf_i32(struct h_buf *b, int64_t v); /* network byte order, the low 32 bits */
void h_buf_str(struct h_buf *b, const char *s); /* with its NUL */
void h_buf_printf(struct h_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A buffer's bytes as a string ("" when there are none). */
const char *h_buf_text(const struct h_buf *b);
void h_buf_free(struct h_buf *b);

/* A message is begun with its type and a length to fill in, and ended by filling it in. */
size_t h_msg_begin(struct h_buf *b, char type);
void h_msg_end(struct h_buf *b, size_t at);
/* A message of any type and body. */
void h_msg_raw(struct h_buf *b, char type, const void *body, size_t len);
void h_msg_query(struct h_buf *b, const char *sql);
/* A Parse with no parameter types. */
void h_msg_parse(struct h_buf *b, const char *name, const char *sql);
/* A Bind with nparams text parameters (params may be NULL for none), default formats. */
void h_msg_bind(struct h_buf *b, const char *portal, const char *name, int nparams, const char *const params[]);
/* An Execute of a portal, max_rows at most (0: all). */
void h_msg_execute(struct h_buf *b, const char *portal, int max_rows);
/* A Describe or Close ('D', 'C') of a statement ('S') or portal ('P'). */
void h_msg_target(struct h_buf *b, char type, char kind, const char *name);
void h_msg_sync(struct h_buf *b);
/* Prepare a statement in a batch of its own: Parse, Sync. */
void h_msg_parse_sync(struct h_buf *b, const char *name, const char *sql);
/* Run a statement: Bind it (no parameters) to the unnamed portal, Execute that, Sync. */
void h_msg_run(struct h_buf *b, const char *name);
/* Send every byte of b, which must all go. */
void h_send_buf(int fd, const struct h_buf *b);

/*
 * Log in raw (client_auth trust) as app to postgres, with application_name
 * unless NULL: the socket once ReadyForQuery came, or -1 (an authentication
 * request, an error, a close). key, unless NULL, gets the BackendKeyData.
 */
int h_raw_login(int port, const char *application_name, uint32_t key[2]);
/* The same, which must log in (pgmux's logs are printed if not). */
int h_raw_session(const struct pgmux *p, const char *application_name, uint32_t key[2]);
/*
 * Read the answer on a raw session up to its ReadyForQuery (10 s at most,
 * scaled). True when it came and held no ErrorResponse; *first_value (when
 * not NULL) gets the first column of the first DataRow, malloc'd, or NULL.
 */
bool h_raw_read_until_ready(int fd, char **first_value);
/* A simple query on a raw session, answered up to its ReadyForQuery without an error. */
bool h_raw_query(int fd, const char *sql);
/*
 * The connection must end with an ErrorResponse of severity FATAL and
 * SQLSTATE sqlstate (whose primary message mentions text, unless NULL), and
 * then close. Messages of the types in allowed_before (NULL: none) may come
 * first. Closes fd.
 */
void h_raw_expect_fatal(int fd, const char *sqlstate, const char *text, const char *allowed_before,
			const char *what);
/* A CancelRequest with key, on a connection of its own to port; returns once pgmux closed it. */
void h_raw_cancel(int port, const uint32_t key[2]);
/* Another client, raw, logged in and inside a transaction: it holds a backend until h_raw_blocker_end(). */
int h_raw_blocker_begin(const struct pgmux *p);
void h_raw_blocker_end(int fd);

/*
 * A backend message's line in a transcript, to compare pgmux's answers with
 * PostgreSQL's: errors and notices by severity and SQLSTATE only (their
 * texts may name a statement another way), ParameterStatus not at all
 * (pgmux reports what it carries, as it sees fit), rows and command tags as
 * text, everything else in hex.
 */
void h_transcribe(struct h_buf *t, char type, const char *body, size_t len);

/* What came back from a raw session, and how it ended. */
struct h_outcome {
	bool marker;      /* the marker's row came */
	bool finished;    /* ... and the ReadyForQuery after it */
	bool closed;      /* the connection closed (EOF or reset) */
	bool cut;         /* ... in the middle of a message */
	bool timed_out;
	char fatal[6];    /* SQLSTATE of a FATAL error, "" if none */
	int errors;       /* ERROR responses */
	char problem[300];
	struct h_buf transcript; /* a line per message (h_transcribe()) */
};
/*
 * Read until the ReadyForQuery after the row with marker (if not NULL), a
 * close, or the time limit (5 s, scaled), checking that every message is
 * well-formed and that nothing follows a FATAL.
 */
void h_read_outcome(int fd, const char *marker, struct h_outcome *o);
/* How a script that should end normally ends: a Sync, then a query whose row is marker. */
void h_put_finish(struct h_buf *b, const char *marker);
/*
 * A direct session to PostgreSQL that runs the same messages, for
 * comparison: libpq logs in, then the socket is used raw. DISCARD ALL
 * between uses makes it a new session for each (h_direct_done(true)); it is
 * opened again after a close, and closed for good by h_direct_close().
 */
int h_direct_fd(void);
void h_direct_done(bool reusable);
void h_direct_close(void);
/*
 * The parts, sent one after the other through pgmux p (a raw session) and
 * directly to PostgreSQL, must get the same answers (errors compared by
 * SQLSTATE). With other (not NULL), the session through pgmux, idle at the
 * end, must leave the backend free for that client. Frees the parts.
 */
void h_like_postgres(const struct pgmux *p, struct h_buf *parts, int n, const char *what, PGconn *other);
/*
 * With transaction pooling a client that is idle must not keep the only
 * backend: other's query must run now. NULL when it did, else why (static).
 */
const char *h_backend_free(PGconn *other);
void h_expect_backend_free(PGconn *other, const char *what);

/* splitmix64: small, fast, and the same sequence everywhere for a seed. */
struct h_rng {
	uint64_t state;
};
uint64_t h_rng_next(struct h_rng *r);
uint32_t h_rng_below(struct h_rng *r, uint32_t n); /* 0 when n is 0 */
bool h_rng_percent(struct h_rng *r, unsigned percent);

/* ---------------------------------------------------------------- files, second server */

/* A file's whole content (malloc'd, NUL-terminated); "" when it cannot be read. */
char *h_read_file(const char *path);
/* Poll a file (a log) until it contains needle, at most timeout_ms. */
bool h_file_wait_contains(const char *path, const char *needle, int timeout_ms);
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
/*
 * PostgreSQL refuses to run as root: when the tests run as root, its
 * programs run as the "postgres" user (behind setpriv, which keeps the
 * parent-death signal), and what they must reach is theirs.
 */
void h_as_postgres_argv(const char **out, size_t cap, const char *const argv[]);
void h_chown_to_postgres(const char *path);
/* Run a PostgreSQL program so (no password prompt), which must exit 0 within timeout_ms. */
void h_run_as_postgres(const char *what, const char *const argv[], int timeout_ms);
/* initdb, start and wait until it accepts logins; false (and the log printed) when it does not start. */
bool h_pg_start(struct h_pg *pg);
/* The same with extra_conf (lines for postgresql.conf, or NULL) appended. */
bool h_pg_start_with(struct h_pg *pg, const char *extra_conf);
/*
 * A physical standby of the server at primary_port (which must allow
 * replication connections: wal_level replica or logical), made with
 * pg_basebackup -R as the suite's superuser, started on a port of its own.
 */
bool h_pg_start_standby(struct h_pg *pg, int primary_port, const char *extra_conf);
/* Fast shutdown (SIGINT to the postmaster) and wait; returns its exit status or -1. */
int h_pg_stop(struct h_pg *pg);

/* ---------------------------------------------------------------- shared test steps */

/*
 * Backends of the app role on the test database, as PostgreSQL sees them,
 * but for pgmux's health-check connection (outside the pool caps by design).
 */
#define H_APP_BACKENDS_SQL                                                                             \
	"select count(*) from pg_stat_activity where usename = 'app' and datname = 'postgres' and "    \
	"coalesce(application_name, '') <> 'pgmux health check'"

/* A query for a direct superuser connection: is app's pg_sleep(seconds) running? */
#define H_SLEEP_ACTIVE_SQL(seconds)                                                                \
	"select count(*) from pg_stat_activity where usename = 'app' and state = 'active' and "    \
	"query like 'select pg_sleep(" #seconds ")%'"

/* Poll (direct superuser connection) until backend pid is gone, at most timeout_ms (scaled); true when it is. */
bool h_wait_backend_gone(PGconn *super, int pid, int timeout_ms);
/*
 * COPY FROM STDIN in progress on conn: send rows lines "i<TAB>row i: ..."
 * (with a backslash and an escaped tab in each) in 8 kB chunks, and end the
 * copy. The FNV-1a digest of the text sent (h_fnv1a()) is returned, and the
 * sum of the ids in *sum unless it is NULL.
 */
uint64_t h_copy_rows_in(PGconn *conn, int rows, long long *sum);
/* How many of app's backends PostgreSQL has now (see H_APP_BACKENDS_SQL). */
int h_app_backends(PGconn *super);
/*
 * Wait for backends of app left by an earlier test to be gone, so that counts
 * in pg_stat_activity belong to the current test; fails the test otherwise.
 */
void h_wait_no_app_backends(void);
/* pgmux is still running and a new client gets a working session: what came before did not harm it. */
void h_expect_serves_new_client(struct pgmux *p);
/* SIGTERM must make pgmux exit with status 0 (99 under valgrind means errors or leaks). */
void h_stop_expect_clean_exit(struct pgmux *p);

/* ---------------------------------------------------------------- transaction pooling: moving a client */

/*
 * With a pool of two backends, a client's statements can be made to run on
 * a backend it had not used for them: the helpers b and c hold one backend
 * in a transaction while client a runs on the other. So "a's session state
 * followed it" is proved on a backend chosen for the test, whatever the
 * pool's policy (LIFO, FIFO, affinity).
 */
/* One step of client a: runs its checks and returns the backend pid they ran on. */
typedef int (*h_step_fn)(PGconn *a, int step, void *arg);
/* Something client b does inside its transaction (while it holds a backend), or NULL. */
typedef void (*h_held_fn)(PGconn *b, int round, void *arg);

struct h_rounds {
	int pids[128]; /* a's backend at each step */
	int n;
};

/*
 * Client a is inside a transaction on backend pa. End it and leave c holding
 * pa in a transaction of its own, with b's help: b takes the other backend
 * while a still holds pa, so the only backend c can get is pa. Returns the
 * other backend, which is then idle.
 */
int h_take_over_backend(PGconn *a, int pa, PGconn *b, PGconn *c);
/*
 * Move client a between the pool's two backends, rounds times: a opens a
 * transaction on some backend pa, b and c take pa over, and a runs step,
 * which must be served by the other backend; then c lets go, and a runs
 * step again with both backends free. while_held (unless NULL) runs on b
 * inside a transaction of its own first.
 */
void h_switching_rounds(PGconn *a, PGconn *b, PGconn *c, int rounds, h_step_fn step, h_held_fn while_held, void *arg,
			struct h_rounds *out);
/* Client a's rounds must all see want from sql (which returns pid and value). */
void h_rounds_expect(PGconn *a, PGconn *b, PGconn *c, int rounds, const char *sql, const char *want,
		     struct h_rounds *out);
/*
 * Client b (which never changed sql's setting) sees want, also on backends
 * client a used: a holds a backend at times so that b is moved around too.
 */
void h_expect_other_client_sees(PGconn *a, PGconn *b, const struct h_rounds *a_rounds, const char *sql,
				const char *want);
/* The end of a test with the three clients: close them, then pgmux p must exit cleanly. */
void h_finish_three(struct pgmux *p, PGconn *a, PGconn *b, PGconn *c);

/*
 * A second client on a thread of its own that runs short transactions
 * (BEGIN; SELECT pg_backend_pid(); COMMIT) without pause, so that the pool's
 * backends really are shared while the test's own client works. A backend
 * that is pinned to the test's client must never serve it: avoid_pid names
 * that backend once the pin is established, and every transaction begun
 * after that checks it. Nothing on the thread calls criterion: the test
 * asserts on the counters. h_teardown() stops one still running.
 */
struct h_traffic {
	pthread_t thread;
	int port;
	atomic_bool stop;
	atomic_int avoid_pid;
	atomic_int transactions;
	atomic_int failures;
	atomic_int collisions;
	char error[512];
};
/* Start it against pgmux p; returns once it has run a transaction. */
void h_traffic_start(struct h_traffic *t, const struct pgmux *p);
/* Stop it: it must have had no failure and never been served avoid_pid. */
void h_traffic_stop_and_check(struct h_traffic *t);

/* ---------------------------------------------------------------- teardown */

/* Kill every process this test started and still running (pgmux included), and any it inherited. */
void h_teardown(void);

#endif
