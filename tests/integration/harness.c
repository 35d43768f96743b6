/*
 * harness.c: processes, clients and files for the integration suite (see
 * harness.h; the raw protocol is harness_wire.c). Criterion runs every test
 * in a process of its own, so the little state kept here (the test
 * directory, the PIDs to clean up, the pgmux started last) belongs to
 * exactly one test.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---------------------------------------------------------------- environment */

static struct h_env env_cache;
static bool env_loaded;

static const char *need_env(const char *name)
{
	const char *v = getenv(name);
	cr_assert(v != NULL && v[0] != '\0',
		  "%s is not set: run the integration suite through tests/integration/pg-env.sh", name);
	return v;
}

const struct h_env *h_env(void)
{
	if (env_loaded)
		return &env_cache;
	env_cache.dir = need_env("PGMUX_TEST_DIR");
	env_cache.pghost = need_env("PGMUX_TEST_PGHOST");
	env_cache.pgport = atoi(need_env("PGMUX_TEST_PGPORT"));
	env_cache.superuser = need_env("PGMUX_TEST_SUPERUSER");
	env_cache.superpass = need_env("PGMUX_TEST_SUPERPASS");
	env_cache.appuser = getenv("PGMUX_TEST_APPUSER") ? getenv("PGMUX_TEST_APPUSER") : "app";
	env_cache.apppass = getenv("PGMUX_TEST_APPPASS") ? getenv("PGMUX_TEST_APPPASS") : "app-secret-pw";
	env_cache.secrets = need_env("PGMUX_TEST_SECRETS");
	env_cache.cert = need_env("PGMUX_TEST_CERT");
	env_cache.key = need_env("PGMUX_TEST_KEY");
	env_cache.ca = need_env("PGMUX_TEST_CA");
	env_cache.pgbin = need_env("PGMUX_TEST_PGBIN");
	env_cache.pgmux = need_env("PGMUX_BIN");
	cr_assert(access(env_cache.pgmux, X_OK) == 0, "PGMUX_BIN=%s is not executable", env_cache.pgmux);
	const char *vg = getenv("PGMUX_VALGRIND");
	/* configure writes "no" when it found no valgrind */
	env_cache.valgrind = (vg && vg[0] && strcmp(vg, "no") != 0) ? vg : "";
	env_loaded = true;
	return &env_cache;
}

bool h_under_valgrind(void)
{
	return h_env()->valgrind[0] != '\0';
}

bool h_under_sanitizer(void)
{
	const char *s = getenv("PGMUX_SANITIZER");

	return s != NULL && s[0] != '\0';
}

int h_scaled_ms(int ms)
{
	return h_under_valgrind() ? ms * 5 : ms;
}

long long h_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void h_sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static char test_dir[512];

const char *h_test_dir(void)
{
	if (test_dir[0])
		return test_dir;
	snprintf(test_dir, sizeof(test_dir), "%s/t-%ld-XXXXXX", h_env()->dir, (long)getpid());
	cr_assert(mkdtemp(test_dir) != NULL, "mkdtemp %s: %s", test_dir, strerror(errno));
	return test_dir;
}

int h_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert(fd >= 0, "socket: %s", strerror(errno));
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind: %s", strerror(errno));
	socklen_t len = sizeof(sa);
	cr_assert(getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
	close(fd);
	return ntohs(sa.sin_port);
}

long long h_proc_cpu_ms(pid_t pid)
{
	char path[64];
	unsigned long long utime = 0, stime = 0;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	char *text = h_read_file(path);
	const char *after_name = strrchr(text, ')');
	/* After "comm)": the state is field 3, utime field 14, stime field 15. */
	int n = after_name ? sscanf(after_name + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
				    &stime)
			   : 0;

	free(text);
	cr_assert_eq(n, 2, "cannot read utime and stime from %s", path);
	return (long long)(utime + stime) * 1000 / sysconf(_SC_CLK_TCK);
}

uint64_t h_fnv1a(uint64_t h, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 1099511628211ULL;
	}
	return h;
}

/* ---------------------------------------------------------------- child processes */

/* PIDs this test started and has not reaped yet; h_teardown() kills them. */
#define MAX_CHILDREN 128
static pid_t children[MAX_CHILDREN];

static void child_add(pid_t pid)
{
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] == 0) {
			children[i] = pid;
			return;
		}
}

static void child_forget(pid_t pid)
{
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] == pid)
			children[i] = 0;
}

/* Encode a wait status as our exit status: code, or 128 + signal. */
static int decode_status(int ws)
{
	if (WIFEXITED(ws))
		return WEXITSTATUS(ws);
	if (WIFSIGNALED(ws))
		return 128 + WTERMSIG(ws);
	return -1;
}

/* Wait up to timeout_ms for pid. Returns the decoded status, or -2 if still running. */
static int wait_pid(pid_t pid, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	int delay = 1;
	for (;;) {
		int ws;
		pid_t r = waitpid(pid, &ws, WNOHANG);
		if (r == pid) {
			child_forget(pid);
			return decode_status(ws);
		}
		if (r < 0 && errno != EINTR) {
			child_forget(pid);
			return -1;
		}
		if (h_now_ms() >= deadline)
			return -2;
		h_sleep_ms(delay);
		if (delay < 20)
			delay *= 2;
	}
}

static void kill_and_reap(pid_t pid)
{
	if (pid <= 0)
		return;
	kill(pid, SIGKILL);
	int ws;
	while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
		;
	child_forget(pid);
}

/* In the child: die with the parent, drop every inherited descriptor but 0-2. */
static void child_prepare(pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(127);
#ifdef SYS_close_range
	if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
		return;
#endif
	for (int fd = 3; fd < 4096; fd++)
		close(fd);
}

/* environ plus additions (which override same-named variables); malloc'd array. */
static char **build_env(const char *const add[])
{
	size_t n_env = 0, n_add = 0;
	while (environ[n_env])
		n_env++;
	while (add && add[n_add])
		n_add++;
	char **out = calloc(n_env + n_add + 1, sizeof(char *));
	cr_assert(out != NULL);
	size_t k = 0;
	for (size_t i = 0; i < n_env; i++) {
		bool overridden = false;
		const char *eq = strchr(environ[i], '=');
		size_t nlen = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
		for (size_t j = 0; j < n_add; j++)
			if (strncmp(add[j], environ[i], nlen) == 0 && add[j][nlen] == '=')
				overridden = true;
		if (!overridden)
			out[k++] = environ[i];
	}
	for (size_t j = 0; j < n_add; j++)
		out[k++] = (char *)add[j];
	out[k] = NULL;
	return out;
}

/* fork + exec with stdin from /dev/null and stdout/stderr to the given files. */
static pid_t spawn(const char *const argv[], const char *const env_add[], const char *out_path,
		   const char *err_path)
{
	char **envp = build_env(env_add);
	pid_t parent = getpid();
	fflush(NULL);
	pid_t pid = fork();
	cr_assert(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int in = open("/dev/null", O_RDONLY);
		int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (in < 0 || out < 0 || err < 0)
			_exit(126);
		dup2(in, 0);
		dup2(out, 1);
		dup2(err, 2);
		child_prepare(parent);
		execvpe(argv[0], (char *const *)argv, envp);
		dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	free(envp);
	child_add(pid);
	return pid;
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return strdup("");
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	size_t n;
	while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += n;
		if (cap - len < 2) {
			cap *= 2;
			buf = realloc(buf, cap);
		}
	}
	fclose(f);
	buf[len] = '\0';
	return buf;
}

static void print_tail(const char *title, const char *path, size_t max_bytes)
{
	char *text = read_file(path);
	size_t len = strlen(text);
	const char *start = len > max_bytes ? text + len - max_bytes : text;
	if (len > 0)
		fprintf(stderr, "----- %s (%s)%s -----\n%s\n----- end of %s -----\n", title, path,
			len > max_bytes ? ", last part" : "", start, title);
	free(text);
}

/* ---------------------------------------------------------------- pgmux */

void pgmux_options_default(struct pgmux_options *o)
{
	memset(o, 0, sizeof(*o));
	o->tls = true;
	o->require_tls = false;
	o->client_auth = "scram-sha-256";
	o->pool_mode = "session";
	o->max_connections = 20;
	/*
	 * TLS to the server is libpq's work, not pgmux's: under valgrind, where
	 * every handshake costs about half a second, only the suites that are
	 * about it (they set server_tls themselves) pay for one.
	 */
	o->server_tls = h_under_valgrind() ? "disable" : "prefer";
	o->workers = 2;
	o->worker_spread_percent = 0;
	o->shutdown_timeout = "30s";
	o->client_login_timeout = "60s";
}

void pgmux_options_console(struct pgmux_options *o)
{
	pgmux_options_default(o);
	o->pool_mode = "transaction";
	o->max_connections = 8;
	o->admin_users = h_env()->superuser;
	o->extra_target = "health_check_interval = 250ms";
}

/* dst = dir/name, failing the test rather than silently truncating a path. */
static void path_in_test_dir(char *dst, size_t size, const char *name)
{
	int n = snprintf(dst, size, "%s/%s", h_test_dir(), name);
	cr_assert(n > 0 && (size_t)n < size, "path too long: %s/%s", h_test_dir(), name);
}

static void set_paths(struct pgmux *p, const char *name)
{
	char file[64];

	snprintf(file, sizeof(file), "%.40s-valgrind.", name ? name : "");
	path_in_test_dir(p->valgrind_prefix, sizeof(p->valgrind_prefix), name ? file : "valgrind.");
	name = name ? name : "pgmux";
	snprintf(file, sizeof(file), "%.40s.ini", name);
	path_in_test_dir(p->config, sizeof(p->config), file);
	snprintf(file, sizeof(file), "%.40s.log", name);
	path_in_test_dir(p->logfile, sizeof(p->logfile), file);
	snprintf(file, sizeof(file), "%.40s.stderr", name);
	path_in_test_dir(p->stderr_file, sizeof(p->stderr_file), file);
}

bool pgmux_write_config(struct pgmux *p, const struct pgmux_options *o)
{
	const struct h_env *e = h_env();
	char suite_host[300];
	set_paths(p, o->instance_name);
	p->port = o->listen_port ? o->listen_port : h_free_port();
	snprintf(suite_host, sizeof(suite_host), "%s:%d", e->pghost, e->pgport);
	/*
	 * Under valgrind a health check's first connection (SCRAM's PBKDF2 in
	 * libpq, run through valgrind) takes seconds: give checks the time, or
	 * the writer is never found and every test waits for it.
	 */
	char target_extra[2048];
	const char *hct = o->extra_target ? strstr(o->extra_target, "health_check_timeout") : NULL;
	snprintf(target_extra, sizeof(target_extra), "%s", o->extra_target ? o->extra_target : "");
	if (h_under_valgrind()) {
		if (hct) {
			size_t at = (size_t)(hct - o->extra_target);
			const char *eol = strchr(hct, '\n');
			snprintf(target_extra + at, sizeof(target_extra) - at, "health_check_timeout = 20s\n%s",
				 eol ? eol + 1 : "");
		} else {
			snprintf(target_extra + strlen(target_extra), sizeof(target_extra) - strlen(target_extra),
				 "%shealth_check_timeout = 20s\n", target_extra[0] ? "\n" : "");
		}
	}
	if (!(o->extra_target && strstr(o->extra_target, "health_check_user"))) {
		const char *user = o->health_check_user ? o->health_check_user : e->appuser;
		if (user[0])
			snprintf(target_extra + strlen(target_extra), sizeof(target_extra) - strlen(target_extra),
				 "%shealth_check_user = %s\n", target_extra[0] ? "\n" : "", user);
	}
	char spread[48] = "";
	if (o->worker_spread_percent >= 0)
		snprintf(spread, sizeof(spread), "worker_spread_percent = %d\n", o->worker_spread_percent);
	FILE *f = fopen(p->config, "w");
	cr_assert(f != NULL, "%s: %s", p->config, strerror(errno));
	fprintf(f,
		"; written by the integration harness for one test\n"
		"[pgmux]\n"
		"listen_addr = 127.0.0.1\n"
		"listen_port = %d\n"
		"workers = %d\n"
		"%s"
		"client_tls_cert_file = %s\n"
		"client_tls_key_file = %s\n"
		"require_tls = %s\n"
		"client_auth = %s\n"
		"secrets_dir = %s\n"
		"admin_users = %s\n"
		"logfile = %s\n"
		"log_level = debug\n"
		"pidfile = %s\n"
		"client_login_timeout = %s\n"
		"shutdown_timeout = %s\n"
		"%s\n"
		"[target]\n"
		"hosts = %s\n"
		"server_tls = %s\n"
		"server_tls_ca_file = %s\n"
		"%s\n"
		"[pool]\n"
		"pool_mode = %s\n"
		"max_connections = %d\n"
		"max_connections_percent = %d\n"
		"%s\n",
		p->port, o->workers, spread, o->tls ? e->cert : "", o->tls ? e->key : "",
		o->require_tls ? "true" : "false", o->client_auth,
		o->secrets_dir ? o->secrets_dir : e->secrets, o->admin_users ? o->admin_users : "", p->logfile,
		o->pidfile ? o->pidfile : "", o->client_login_timeout, o->shutdown_timeout, o->extra_pgmux ? o->extra_pgmux : "",
		o->hosts ? o->hosts : suite_host, o->server_tls,
		o->server_tls_ca_file ? o->server_tls_ca_file : (strncmp(o->server_tls, "verify", 6) == 0) ? e->ca : "",
		target_extra, o->pool_mode, o->max_connections,
		o->max_connections_percent ? o->max_connections_percent : 100, o->extra_pool ? o->extra_pool : "");
	fclose(f);
	return true;
}

void pgmux_rewrite_config(struct pgmux *p, const struct pgmux_options *o)
{
	struct pgmux_options same_port = *o;

	same_port.listen_port = p->port;
	pgmux_write_config(p, &same_port);
}

/* One attempt to connect to the port; true when something accepted. */
static bool port_accepts(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

/* Start pgmux (under valgrind when asked) on the config written for p; "-d" first when daemonize. */
static pid_t pgmux_spawn(struct pgmux *p, const struct pgmux_options *o)
{
	bool daemonize = o->daemonize;
	char nofile[64];
	const struct h_env *e = h_env();
	char vglog[600];
	snprintf(vglog, sizeof(vglog), "--log-file=%s%%p", p->valgrind_prefix);
	const char *argv[16];
	int n = 0;
	if (h_under_valgrind()) {
		const char *vg[] = {e->valgrind,
				    "--leak-check=full",
				    "--show-leak-kinds=definite,indirect",
				    "--errors-for-leak-kinds=definite,indirect",
				    "--error-exitcode=99",
				    "--track-fds=no",
				    "--num-callers=16",
				    vglog};
		for (size_t i = 0; i < sizeof(vg) / sizeof(vg[0]); i++)
			argv[n++] = vg[i];
	}
	if (o->max_open_files > 0) {
		/* prlimit sets the limit and execs pgmux: the pid stays pgmux's. */
		snprintf(nofile, sizeof(nofile), "--nofile=%d:%d", o->max_open_files, o->max_open_files);
		argv[n++] = "prlimit";
		argv[n++] = nofile;
		argv[n++] = "--";
	}
	argv[n++] = e->pgmux;
	if (daemonize)
		argv[n++] = "-d";
	argv[n++] = p->config;
	argv[n] = NULL;
	char outfile[600];
	snprintf(outfile, sizeof(outfile), "%s.out", p->stderr_file);
	return spawn(argv, NULL, outfile, p->stderr_file);
}

int pgmux_run_to_exit(struct pgmux *p, const struct pgmux_options *o, int timeout_ms)
{
	pgmux_write_config(p, o);
	pid_t pid = pgmux_spawn(p, o);
	int st = wait_pid(pid, timeout_ms);
	if (st == -2) {
		fprintf(stderr, "pgmux (pid %ld) did not exit within %d ms; killing it\n", (long)pid, timeout_ms);
		kill_and_reap(pid);
		pgmux_dump_logs(p);
		return -1;
	}
	return st;
}

/*
 * pgmux -d was started as launcher: wait for it to exit 0, then for the
 * daemon's pid in the pidfile and for the daemon to become this process's
 * child (its parents exit at once). Returns that pid, or 0.
 */
static pid_t adopt_daemon(const struct pgmux_options *o, pid_t launcher, int timeout_ms)
{
	int st = wait_pid(launcher, timeout_ms);
	if (st != 0) {
		fprintf(stderr, "pgmux -d exited with status %d (-2: still running)\n", st);
		if (st == -2)
			kill_and_reap(launcher);
		return 0;
	}
	long long deadline = h_now_ms() + timeout_ms;
	while (h_now_ms() < deadline) {
		char *text = read_file(o->pidfile);
		pid_t pid = (pid_t)atol(text);
		free(text);
		int ws;
		if (pid > 0 && waitpid(pid, &ws, WNOHANG) == 0) {
			child_add(pid);
			return pid;
		}
		h_sleep_ms(10);
	}
	fprintf(stderr, "pgmux -d: no running daemon named in %s within %d ms\n", o->pidfile, timeout_ms);
	return 0;
}

/* For pgmux_start under valgrind: has the monitor's first check settled what a test needs? */
struct first_check {
	const char *logfile;
	bool only_instance; /* the suite's PostgreSQL is the only one listed */
};

static bool first_check_done(void *arg)
{
	const struct first_check *fc = arg;

	return h_file_count(fc->logfile, "writer is") > 0 ||
	       (fc->only_instance && h_file_count(fc->logfile, "failed its health check") > 0);
}

/* The pgmux the test started last, whose logs a failing helper prints (see harness.h). */
static const struct pgmux *current;

bool pgmux_start(struct pgmux *p, const struct pgmux_options *o)
{
	current = p;
	pgmux_write_config(p, o);
	if (o->daemonize)
		cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0, "PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
	p->pid = pgmux_spawn(p, o);
	if (o->daemonize && (p->pid = adopt_daemon(o, p->pid, h_under_valgrind() ? 60000 : 10000)) == 0) {
		pgmux_dump_logs(p);
		return false;
	}

	int timeout = h_under_valgrind() ? 60000 : 10000;
	long long deadline = h_now_ms() + timeout;
	int delay = 2;
	while (h_now_ms() < deadline) {
		if (port_accepts(p->port)) {
			/*
			 * Under valgrind the monitor's first check takes seconds, and a
			 * test with a short connection_borrow_timeout would time out
			 * waiting for the writer at login. Wait until it is known (a
			 * cluster without a reachable writer never logs this: go on).
			 * With the suite's PostgreSQL as the only instance, a failed
			 * first check (a test of a bad certificate, say) ends the wait
			 * too: no writer will come.
			 */
			if (h_under_valgrind()) {
				struct first_check fc = {p->logfile, o->hosts == NULL};

				(void)h_poll_until(first_check_done, &fc, 30000);
			}
			return true;
		}
		int st = wait_pid(p->pid, 0);
		if (st != -2) {
			fprintf(stderr, "pgmux exited with status %d before listening on port %d\n", st,
				p->port);
			p->pid = 0;
			pgmux_dump_logs(p);
			return false;
		}
		h_sleep_ms(delay);
		if (delay < 50)
			delay *= 2;
	}
	fprintf(stderr, "pgmux (pid %ld) did not accept connections on port %d within %d ms\n",
		(long)p->pid, p->port, timeout);
	pgmux_kill(p);
	pgmux_dump_logs(p);
	return false;
}

void pgmux_start_ok(struct pgmux *p, const struct pgmux_options *o)
{
	cr_assert(pgmux_start(p, o), "pgmux did not start (config %s)", p->config);
}

void pgmux_start_transaction(struct pgmux *p, int max_connections, const char *extra_pgmux, const char *extra_pool)
{
	struct pgmux_options o;
	char pool[1024];

	h_wait_no_app_backends();
	snprintf(pool, sizeof(pool), "%s\n%s",
		 extra_pool && strstr(extra_pool, "max_idle_connections_percent") ? "" : "max_idle_connections_percent = 100",
		 extra_pool ? extra_pool : "");
	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.max_connections = max_connections;
	o.extra_pgmux = extra_pgmux;
	o.extra_pool = pool;
	o.admin_users = h_env()->superuser;
	pgmux_start_ok(p, &o);
}

void pgmux_start_trust(struct pgmux *p, const char *pool_mode, int max_connections, int workers,
		       const char *extra_pgmux, const char *extra_pool)
{
	struct pgmux_options o;

	h_wait_no_app_backends();
	pgmux_options_default(&o);
	o.tls = false;
	o.server_tls = "disable";
	o.client_auth = "trust";
	o.pool_mode = pool_mode;
	o.max_connections = max_connections;
	o.workers = workers;
	o.extra_pgmux = extra_pgmux;
	o.extra_pool = extra_pool;
	o.admin_users = h_env()->superuser;
	pgmux_start_ok(p, &o);
}

void pgmux_start_one_backend(struct pgmux *p, const char *extra_pool)
{
	char pool[512];

	snprintf(pool, sizeof(pool), "max_idle_connections_percent = 100\nconnection_borrow_timeout = %dms\n%s",
		 h_scaled_ms(3000), extra_pool ? extra_pool : "");
	pgmux_start_trust(p, "transaction", 1, 2, "max_packet_size = 64kB", pool);
}

bool pgmux_running(struct pgmux *p)
{
	if (p->pid == 0)
		return false;
	int st = wait_pid(p->pid, 0);
	if (st == -2)
		return true;
	fprintf(stderr, "pgmux (pid %ld) has exited with status %d\n", (long)p->pid, st);
	p->pid = 0;
	return false;
}

void pgmux_signal(struct pgmux *p, int sig)
{
	cr_assert(pgmux_running(p), "pgmux is not running");
	cr_assert_eq(kill(p->pid, sig), 0, "kill %ld: %s", (long)p->pid, strerror(errno));
}

void pgmux_reload(struct pgmux *p, const struct pgmux_options *o)
{
	static const char reloaded[] = "configuration reloaded from";
	int before = h_file_count(p->logfile, reloaded);

	if (o)
		pgmux_rewrite_config(p, o);
	pgmux_signal(p, SIGHUP);
	bool done = h_file_wait_count(p->logfile, reloaded, before + 1, h_scaled_ms(5000));
	if (!done)
		pgmux_dump_logs(p);
	cr_assert(done, "pgmux did not log a reload within %d ms of SIGHUP", h_scaled_ms(5000));
}

int pgmux_wait_exit(struct pgmux *p, int timeout_ms)
{
	if (p->pid == 0)
		return -1;
	int st = wait_pid(p->pid, timeout_ms);
	if (st == -2)
		return -2;
	p->pid = 0;
	if (st != 0)
		pgmux_dump_logs(p);
	return st;
}

int pgmux_stop(struct pgmux *p, int sig, int timeout_ms)
{
	if (p->pid == 0) {
		fprintf(stderr, "pgmux_stop: pgmux is not running\n");
		pgmux_dump_logs(p);
		return -1;
	}
	kill(p->pid, sig);
	int st = wait_pid(p->pid, timeout_ms);
	if (st == -2) {
		fprintf(stderr, "pgmux (pid %ld) did not exit within %d ms of signal %d; killing it\n",
			(long)p->pid, timeout_ms, sig);
		kill_and_reap(p->pid);
		p->pid = 0;
		pgmux_dump_logs(p);
		return -1;
	}
	p->pid = 0;
	if (st != 0) {
		fprintf(stderr, "pgmux exited with status %d%s\n", st,
			st == 99 ? " (valgrind found memory errors or leaks)" : "");
		pgmux_dump_logs(p);
	}
	return st;
}

void pgmux_kill(struct pgmux *p)
{
	if (p->pid > 0)
		kill_and_reap(p->pid);
	p->pid = 0;
}

void pgmux_dump_logs(const struct pgmux *p)
{
	if (!p->config[0])
		return;
	print_tail("pgmux log", p->logfile, 6000);
	print_tail("pgmux stderr", p->stderr_file, 4000);
	/* valgrind.<pid> files */
	char dir[512];
	snprintf(dir, sizeof(dir), "%s", p->valgrind_prefix);
	char *slash = strrchr(dir, '/');
	if (!slash)
		return;
	*slash = '\0';
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, "valgrind.", 9) != 0)
			continue;
		char path[1024];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		print_tail("valgrind report", path, 20000);
	}
	closedir(d);
}

void h_dump_current_logs(void)
{
	if (current)
		pgmux_dump_logs(current);
}

void h_expect_log(const struct pgmux *p, const char *needle, int timeout_ms)
{
	bool found = h_file_wait_contains(p->logfile, needle, h_scaled_ms(timeout_ms));

	if (!found)
		pgmux_dump_logs(p);
	cr_assert(found, "pgmux's log (%s) never said \"%s\"", p->logfile, needle);
}

void h_expect_log_lacks(const struct pgmux *p, const char *needle)
{
	char *text = h_read_file(p->logfile);
	const char *at = strstr(text, needle);

	if (at) {
		const char *eol = strchr(at, '\n');

		fprintf(stderr, "unexpected log line: %.*s\n", eol ? (int)(eol - at) : 200, at);
	}
	bool absent = at == NULL;
	free(text);
	cr_assert(absent, "pgmux's log contains \"%s\"", needle);
}

/* ---------------------------------------------------------------- commands */

static unsigned cmd_counter;

bool h_cmd_start(struct h_cmd *c, const char *const argv[], const char *const env[])
{
	memset(c, 0, sizeof(*c));
	c->status = -1;
	unsigned n = ++cmd_counter;
	const char *base = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	char name[128];
	snprintf(name, sizeof(name), "cmd%u-%.64s.out", n, base);
	path_in_test_dir(c->out_path, sizeof(c->out_path), name);
	snprintf(name, sizeof(name), "cmd%u-%.64s.err", n, base);
	path_in_test_dir(c->err_path, sizeof(c->err_path), name);
	c->started_ms = h_now_ms();
	c->pid = spawn(argv, env, c->out_path, c->err_path);
	return c->pid > 0;
}

static void collect(struct h_cmd *c, int status)
{
	c->status = status;
	c->pid = 0;
	c->ended_ms = h_now_ms();
	free(c->out);
	free(c->err);
	c->out = read_file(c->out_path);
	c->err = read_file(c->err_path);
}

bool h_cmd_wait(struct h_cmd *c, int timeout_ms)
{
	if (c->pid == 0)
		return true;
	int st = wait_pid(c->pid, timeout_ms);
	if (st == -2)
		return false;
	collect(c, st);
	return true;
}

void h_cmd_kill(struct h_cmd *c)
{
	if (c->pid == 0)
		return;
	kill_and_reap(c->pid);
	collect(c, -1);
}

int h_cmd_run(struct h_cmd *c, const char *const argv[], const char *const env[], int timeout_ms)
{
	h_cmd_start(c, argv, env);
	if (!h_cmd_wait(c, timeout_ms)) {
		fprintf(stderr, "%s did not finish within %d ms; killed\n", argv[0], timeout_ms);
		h_cmd_kill(c);
		h_cmd_dump(c, argv[0]);
	}
	return c->status;
}

void h_cmd_free(struct h_cmd *c)
{
	if (c->pid)
		h_cmd_kill(c);
	free(c->out);
	free(c->err);
	c->out = c->err = NULL;
}

void h_cmd_dump(const struct h_cmd *c, const char *what)
{
	fprintf(stderr, "----- %s: status %d after %lld ms\nstdout:\n%s\nstderr:\n%s\n-----\n", what,
		c->status, c->ended_ms - c->started_ms, c->out ? c->out : "", c->err ? c->err : "");
}

bool h_psql_start(struct h_cmd *c, const char *conninfo, const char *password, const char *const args[])
{
	const struct h_env *e = h_env();
	char psql[600], pw[300];
	const char *argv[32];
	int n = 0;

	snprintf(psql, sizeof(psql), "%s/psql", e->pgbin);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", password ? password : "");
	argv[n++] = psql;
	argv[n++] = "-X";
	argv[n++] = "-w";
	for (int i = 0; args[i]; i++) {
		cr_assert_lt(n, 30, "too many psql arguments");
		argv[n++] = args[i];
	}
	argv[n++] = conninfo;
	argv[n] = NULL;
	const char *env[] = {password ? pw : "PGPASSFILE=/dev/null", "PGCONNECT_TIMEOUT=10", NULL};
	return h_cmd_start(c, argv, env);
}

int h_psql_run(struct h_cmd *c, const char *conninfo, const char *password, const char *const args[])
{
	int timeout = h_scaled_ms(20000);

	cr_assert(h_psql_start(c, conninfo, password, args), "psql did not start");
	if (!h_cmd_wait(c, timeout)) {
		fprintf(stderr, "psql did not finish within %d ms; killed\n", timeout);
		h_cmd_kill(c);
		h_cmd_dump(c, "psql");
	}
	return c->status;
}

bool h_app_psql_start(struct h_cmd *c, const struct pgmux *p, const char *sslmode, const char *sql)
{
	const struct h_env *e = h_env();
	char *ci = h_conninfo(p->port, e->appuser, NULL, sslmode, NULL);
	const char *args[] = {"-A", "-t", "-c", sql, NULL};
	bool started = h_psql_start(c, ci, e->apppass, args);

	free(ci);
	return started;
}

void h_expect_cmd_output(struct h_cmd *c, int timeout_ms, const char *want, const char *what)
{
	bool ended = h_cmd_wait(c, timeout_ms);

	if (!ended)
		h_cmd_kill(c);
	if (!ended || c->status != 0 || strcmp(c->out, want) != 0)
		h_cmd_dump(c, what);
	cr_assert(ended, "%s did not end within %d ms", what, timeout_ms);
	cr_assert_eq(c->status, 0, "%s exited with %d", what, c->status);
	cr_assert_str_eq(c->out, want, "%s printed \"%s\", expected \"%s\"", what, c->out, want);
	h_cmd_free(c);
}

bool h_pgbench_start(struct h_cmd *c, int port, const char *sslmode, const char *dbname, const char *const args[])
{
	const struct h_env *e = h_env();
	char pgbench[600], portstr[16], pw[300], ssl[64];
	const char *argv[40];
	int n = 0;

	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(portstr, sizeof(portstr), "%d", port);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	snprintf(ssl, sizeof(ssl), "PGSSLMODE=%s", sslmode);
	argv[n++] = pgbench;
	for (int i = 0; args[i]; i++) {
		cr_assert_lt(n, 32, "too many pgbench arguments");
		argv[n++] = args[i];
	}
	argv[n++] = "-h";
	argv[n++] = "127.0.0.1";
	argv[n++] = "-p";
	argv[n++] = portstr;
	argv[n++] = "-U";
	argv[n++] = e->appuser;
	argv[n++] = dbname;
	argv[n] = NULL;
	const char *env[] = {pw, ssl, "PGCONNECT_TIMEOUT=60", NULL};
	return h_cmd_start(c, argv, env);
}

int h_pgbench_run(struct h_cmd *c, int port, const char *sslmode, const char *dbname, const char *const args[],
		  int timeout_ms)
{
	cr_assert(h_pgbench_start(c, port, sslmode, dbname, args), "pgbench did not start");
	if (!h_cmd_wait(c, timeout_ms)) {
		fprintf(stderr, "pgbench did not finish within %d ms; killed\n", timeout_ms);
		h_cmd_kill(c);
		h_cmd_dump(c, "pgbench");
	}
	return c->status;
}

void h_expect_pgbench_clean(const struct h_cmd *c, const char *what)
{
	bool clean = c->status == 0 && strstr(c->out, "number of failed transactions: 0 ") != NULL;

	if (!clean)
		h_cmd_dump(c, "pgbench");
	cr_assert_eq(c->status, 0, "%s exited with %d", what, c->status);
	cr_assert(strstr(c->out, "number of failed transactions: 0 ") != NULL, "%s reports failed transactions:\n%s",
		  what, c->out);
}

long h_pgbench_processed(const struct h_cmd *c)
{
	static const char key[] = "number of transactions actually processed: ";
	const char *p = c->out ? strstr(c->out, key) : NULL;

	cr_assert_not_null(p, "no transaction count in pgbench's output:\n%s", c->out ? c->out : "");
	return strtol(p + strlen(key), NULL, 10);
}

long h_pgbench_modes_wait(struct h_cmd *runs, const char *const *modes, int n)
{
	long processed = 0;

	for (int i = 0; i < n; i++) {
		bool ended = h_cmd_wait(&runs[i], h_scaled_ms(60000));
		if (!ended)
			h_cmd_kill(&runs[i]);
		cr_assert(ended, "pgbench -M %s did not end in time", modes[i]);
	}
	for (int i = 0; i < n; i++) {
		char what[64];
		snprintf(what, sizeof(what), "pgbench -M %s", modes[i]);
		h_expect_pgbench_clean(&runs[i], what);
		cr_assert_null(strstr(runs[i].err, "aborted"), "%s: a client aborted:\n%s", what, runs[i].err);
		long done = h_pgbench_processed(&runs[i]);
		cr_assert_gt(done, 0, "%s processed nothing", what);
		processed += done;
	}
	return processed;
}

struct h_bank h_bank_totals(PGconn *super)
{
	struct h_bank b;
	PGresult *r = h_rows_ok(super, "select (select count(*) from pgbench_history), "
				       "(select coalesce(sum(delta), 0) from pgbench_history), "
				       "(select sum(abalance) from pgbench_accounts), "
				       "(select sum(bbalance) from pgbench_branches), "
				       "(select sum(tbalance) from pgbench_tellers)");

	b.history_rows = atoll(PQgetvalue(r, 0, 0));
	b.history_delta = atoll(PQgetvalue(r, 0, 1));
	b.accounts = atoll(PQgetvalue(r, 0, 2));
	b.branches = atoll(PQgetvalue(r, 0, 3));
	b.tellers = atoll(PQgetvalue(r, 0, 4));
	PQclear(r);
	return b;
}

void h_expect_bank_adds_up(const struct h_bank *before, const struct h_bank *after, long processed)
{
	long long delta = after->history_delta - before->history_delta;

	cr_expect_eq(after->history_rows - before->history_rows, processed,
		     "%lld history rows for %ld transactions pgbench counted", after->history_rows - before->history_rows,
		     processed);
	cr_expect_eq(after->accounts - before->accounts, delta, "accounts moved by %lld, history says %lld",
		     after->accounts - before->accounts, delta);
	cr_expect_eq(after->branches - before->branches, delta, "branches moved by %lld, history says %lld",
		     after->branches - before->branches, delta);
	cr_expect_eq(after->tellers - before->tellers, delta, "tellers moved by %lld, history says %lld",
		     after->tellers - before->tellers, delta);
}

/* ---------------------------------------------------------------- libpq */

char *h_conninfo(int port, const char *user, const char *password, const char *sslmode, const char *extra)
{
	char *s = NULL;
	int n = asprintf(&s, "host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=%s connect_timeout=10%s%s%s%s",
			 port, user, sslmode ? sslmode : "prefer", password ? " password=" : "",
			 password ? password : "", extra ? " " : "", extra ? extra : "");
	cr_assert(n > 0);
	return s;
}

/* PQconnectdb of h_conninfo(); check PQstatus yourself. */
static PGconn *connect_with(int port, const char *user, const char *password, const char *sslmode, const char *extra)
{
	char *ci = h_conninfo(port, user, password, sslmode, extra);
	PGconn *conn = PQconnectdb(ci);

	free(ci);
	return conn;
}

PGconn *h_connect_app(int port, const char *sslmode, const char *extra)
{
	const struct h_env *e = h_env();

	return connect_with(port, e->appuser, e->apppass, sslmode, extra);
}

PGconn *h_connect_as(int port, const char *user, const char *password, const char *extra)
{
	return connect_with(port, user, password, "disable", extra);
}

/* A connection that must have logged in: else p's logs, and the test fails naming who. */
static PGconn *logged_in(PGconn *conn, const struct pgmux *p, const char *who)
{
	if (PQstatus(conn) != CONNECTION_OK)
		pgmux_dump_logs(p);
	cr_assert_eq(PQstatus(conn), CONNECTION_OK, "connecting to pgmux as %s failed: %s", who, PQerrorMessage(conn));
	return conn;
}

PGconn *h_app_session(const struct pgmux *p, const char *sslmode, const char *extra)
{
	return h_app_session_on(p, p->port, sslmode, extra);
}

PGconn *h_app_session_on(const struct pgmux *p, int port, const char *sslmode, const char *extra)
{
	return logged_in(h_connect_app(port, sslmode, extra), p, h_env()->appuser);
}

PGconn *h_session_as(const struct pgmux *p, const char *user, const char *password, const char *extra)
{
	return logged_in(h_connect_as(p->port, user, password, extra), p, user);
}

PGconn *h_admin_session(const struct pgmux *p)
{
	return h_session_as(p, h_env()->superuser, h_env()->superpass, "dbname=pgmux");
}

PGconn *h_admin_connect(const struct pgmux *p, const char *user, const char *password)
{
	PGconn *conn = h_connect_as(p->port, user, password, "dbname=pgmux");

	if (PQstatus(conn) != CONNECTION_OK) {
		fprintf(stderr, "admin login as %s: %s", user, PQerrorMessage(conn));
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

PGconn *h_connect_super_direct(void)
{
	return h_connect_super_port(h_env()->pgport, "postgres");
}

PGconn *h_connect_app_direct(const char *extra)
{
	const struct h_env *e = h_env();
	PGconn *conn = connect_with(e->pgport, e->appuser, e->apppass, "disable", extra);

	cr_assert(PQstatus(conn) == CONNECTION_OK, "direct connection to PostgreSQL as %s failed: %s", e->appuser,
		  PQerrorMessage(conn));
	return conn;
}

PGconn *h_connect_super_port(int port, const char *dbname)
{
	return h_connect_super_at(h_env()->pghost, port, dbname);
}

PGconn *h_connect_super_at(const char *addr, int port, const char *dbname)
{
	const struct h_env *e = h_env();
	char ci[800];

	snprintf(ci, sizeof(ci),
		 "host=%s port=%d user=%s password=%s dbname=%s sslmode=disable connect_timeout=10 "
		 "application_name=pgmux-tests",
		 addr, port, e->superuser, e->superpass, dbname);
	PGconn *conn = PQconnectdb(ci);
	cr_assert(PQstatus(conn) == CONNECTION_OK, "direct connection to PostgreSQL at %s:%d failed: %s", addr, port,
		  PQerrorMessage(conn));
	return conn;
}

char *h_query_value(PGconn *conn, const char *sql)
{
	PGresult *r = PQexec(conn, sql);
	char *v = NULL;
	if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0)
		v = strdup(PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
	else
		fprintf(stderr, "query \"%s\" failed: %s", sql, PQerrorMessage(conn));
	PQclear(r);
	return v;
}

char *h_value_ok(PGconn *conn, const char *sql)
{
	char *v = h_query_value(conn, sql);

	if (v == NULL)
		h_dump_current_logs();
	cr_assert_not_null(v, "query \"%s\" failed: %s", sql, PQerrorMessage(conn));
	return v;
}

long long h_number_ok(PGconn *conn, const char *sql)
{
	char *v = h_value_ok(conn, sql);
	long long n = atoll(v);

	free(v);
	return n;
}

PGresult *h_rows_ok(PGconn *conn, const char *sql)
{
	PGresult *r = PQexec(conn, sql);

	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		h_dump_current_logs();
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "\"%s\": %s %s", sql, PQresStatus(PQresultStatus(r)),
		     PQerrorMessage(conn));
	return r;
}

void h_expect_value(PGconn *conn, const char *sql, const char *want)
{
	char *v = h_value_ok(conn, sql);

	if (strcmp(v, want) != 0)
		h_dump_current_logs();
	cr_assert_str_eq(v, want, "\"%s\" returned \"%s\", expected \"%s\"", sql, v, want);
	free(v);
}

void h_exec_ok(PGconn *conn, const char *sql)
{
	PGresult *r = PQexec(conn, sql);
	ExecStatusType s = PQresultStatus(r);
	char *msg = strdup(PQerrorMessage(conn));

	PQclear(r);
	if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
		h_dump_current_logs();
	cr_assert(s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK, "\"%s\" failed (%s): %s", sql, PQresStatus(s), msg);
	free(msg);
}

const char *h_command_outcome(PGconn *conn, const char *sql)
{
	static char outcome[128];
	PGresult *res = PQexec(conn, sql);

	if (PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK) {
		snprintf(outcome, sizeof(outcome), "%s", PQcmdStatus(res));
	} else {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		snprintf(outcome, sizeof(outcome), "ERROR %s", state ? state : "?");
	}
	PQclear(res);
	return outcome;
}

char *h_expect_error(PGconn *conn, const char *sql, const char *sqlstate)
{
	PGresult *r = PQexec(conn, sql);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "\"%s\" gave %s, expected an error %s", sql,
		     PQresStatus(PQresultStatus(r)), sqlstate);
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert(state && strcmp(state, sqlstate) == 0, "\"%s\" failed with SQLSTATE %s (%s), expected %s", sql,
		  state ? state : "(none)", PQerrorMessage(conn), sqlstate);
	const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	char *out = strdup(msg ? msg : "");
	PQclear(r);
	return out;
}

void h_prepare_ok(PGconn *conn, const char *name, const char *sql)
{
	PGresult *r = PQprepare(conn, name, sql, 0, NULL);

	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		h_dump_current_logs();
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "PQprepare(\"%s\", \"%s\") failed: %s", name, sql,
		     PQerrorMessage(conn));
	PQclear(r);
}

char *h_prepared_value_ok(PGconn *conn, const char *name, const char *param)
{
	const char *values[1] = {param};
	PGresult *r = PQexecPrepared(conn, name, param ? 1 : 0, param ? values : NULL, NULL, NULL, 0);

	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		h_dump_current_logs();
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "executing prepared statement \"%s\" failed: %s", name,
		     PQerrorMessage(conn));
	cr_assert_eq(PQntuples(r), 1);
	char *v = strdup(PQgetvalue(r, 0, 0));
	PQclear(r);
	return v;
}

char *h_pid_and_value(PGconn *conn, const char *sql, int *pid)
{
	PGresult *r = h_rows_ok(conn, sql);

	cr_assert_eq(PQntuples(r), 1);
	cr_assert_eq(PQnfields(r), 2);
	*pid = atoi(PQgetvalue(r, 0, 0));
	char *v = strdup(PQgetvalue(r, 0, 1));
	PQclear(r);
	return v;
}

int h_backend_pid(PGconn *conn)
{
	char *v = h_value_ok(conn, "select pg_backend_pid()");
	int pid = atoi(v);
	free(v);
	cr_assert_gt(pid, 0);
	return pid;
}

struct poll_value {
	PGconn *conn;
	const char *sql;
	const char *want;
};

static bool poll_value_matches(void *arg)
{
	struct poll_value *p = arg;
	char *v = h_query_value(p->conn, p->sql);
	bool ok = v && strcmp(v, p->want) == 0;
	free(v);
	return ok;
}

bool h_poll_value(PGconn *super, const char *sql, const char *want, int timeout_ms)
{
	struct poll_value p = { super, sql, want };

	return h_poll_until(poll_value_matches, &p, timeout_ms);
}

bool h_poll_until(bool (*check)(void *arg), void *arg, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	for (;;) {
		if (check(arg))
			return true;
		if (h_now_ms() >= deadline)
			return false;
		h_sleep_ms(20);
	}
}

bool h_wait_ready(PGconn *conn, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;

	while (PQisBusy(conn)) {
		long long left = deadline - h_now_ms();
		if (left <= 0)
			return false;
		struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
		if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR)
			return false;
		if (!PQconsumeInput(conn))
			return true; /* PQgetResult reports the broken connection */
	}
	return true;
}

PGresult *h_get_result(PGconn *conn, int timeout_ms)
{
	return h_wait_ready(conn, timeout_ms) ? PQgetResult(conn) : NULL;
}

PGresult *h_next_result(PGconn *conn)
{
	bool ready = h_wait_ready(conn, h_scaled_ms(20000));

	if (!ready)
		h_dump_current_logs();
	cr_assert(ready, "no result within %d ms: %s", h_scaled_ms(20000), PQerrorMessage(conn));
	return PQgetResult(conn);
}

void h_drain_results(PGconn *conn)
{
	PGresult *r;

	while ((r = h_get_result(conn, 5000)) != NULL)
		PQclear(r);
}

char *h_sent_value_ok(PGconn *conn, int timeout_ms, const char *what)
{
	PGresult *r = h_get_result(conn, timeout_ms);

	if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK)
		h_dump_current_logs();
	cr_assert_not_null(r, "%s: no result within %d ms", what, timeout_ms);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", what, PQresultErrorMessage(r));
	char *v = strdup(PQgetvalue(r, 0, 0));
	PQclear(r);
	h_drain_results(conn);
	return v;
}

void h_expect_no_result(PGconn *conn, int wait_ms, const char *what)
{
	PGresult *r = h_get_result(conn, wait_ms);

	if (r)
		fprintf(stderr, "%s: got %s: %s\n", what, PQresStatus(PQresultStatus(r)), PQresultErrorMessage(r));
	cr_assert_null(r, "%s: the query was answered although pgmux should hold it", what);
}

void h_record_notices(void *arg, const PGresult *r)
{
	struct h_notices *n = arg;
	const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	size_t used = strlen(n->text);

	n->count++;
	snprintf(n->severity, sizeof(n->severity), "%s", sev ? sev : "");
	snprintf(n->sqlstate, sizeof(n->sqlstate), "%s", state ? state : "");
	snprintf(n->message, sizeof(n->message), "%s", msg ? msg : "");
	if (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0)) {
		n->fatal++;
		snprintf(n->fatal_sqlstate, sizeof(n->fatal_sqlstate), "%s", state ? state : "");
	}
	snprintf(n->text + used, sizeof(n->text) - used, "%s", PQresultErrorMessage(r));
}

void h_ignore_notices(void *arg, const PGresult *r)
{
	(void)arg;
	(void)r;
}

/* ---------------------------------------------------------------- the admin console */

long long h_admin_stat(PGconn *admin, const char *name)
{
	char *v = h_admin_cell(admin, "SHOW STATS", "name", name, "value");

	cr_assert_not_null(v, "SHOW STATS has no row named %s", name);
	long long n = atoll(v);
	free(v);
	return n;
}

char *h_admin_cell(PGconn *admin, const char *show, const char *key_col, const char *key, const char *col)
{
	PGresult *r = h_rows_ok(admin, show);
	int k = key_col ? PQfnumber(r, key_col) : 0, c = PQfnumber(r, col);
	char *v = NULL;

	cr_assert(k >= 0 && c >= 0, "%s has no column %s or %s", show, key_col ? key_col : "(first)", col);
	for (int i = 0; i < PQntuples(r) && v == NULL; i++)
		if (key_col == NULL || strcmp(PQgetvalue(r, i, k), key) == 0)
			v = strdup(PQgetvalue(r, i, c));
	PQclear(r);
	return v;
}

char *h_admin_cell_ok(PGconn *admin, const char *show, const char *key_col, const char *key, const char *col)
{
	char *v = h_admin_cell(admin, show, key_col, key, col);

	if (v == NULL)
		h_dump_current_logs();
	cr_assert_not_null(v, "%s has no row with %s = %s", show, key_col ? key_col : "(any)", key ? key : "");
	return v;
}

struct poll_cell {
	PGconn *admin;
	const char *show, *key_col, *key, *col, *want;
};

static bool poll_cell_matches(void *arg)
{
	struct poll_cell *p = arg;
	char *v = h_admin_cell(p->admin, p->show, p->key_col, p->key, p->col);
	bool ok = v && strcmp(v, p->want) == 0;

	free(v);
	return ok;
}

bool h_admin_poll_cell(PGconn *admin, const char *show, const char *key_col, const char *key, const char *col,
		       const char *want, int timeout_ms)
{
	struct poll_cell p = {admin, show, key_col, key, col, want};

	return h_poll_until(poll_cell_matches, &p, timeout_ms);
}

/* ---------------------------------------------------------------- raw TCP */

uint32_t h_get_u32(const void *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return ntohl(v);
}

void h_put_u32(void *p, uint32_t v)
{
	v = htonl(v);
	memcpy(p, &v, 4);
}

int h_raw_connect(int port, int timeout_ms)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		if (errno != EINPROGRESS) {
			close(fd);
			return -1;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		int soerr = 0;
		socklen_t len = sizeof(soerr);
		if (poll(&pfd, 1, timeout_ms) != 1 ||
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
			close(fd);
			return -1;
		}
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

bool h_raw_send(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pfd = {.fd = fd, .events = POLLOUT};
				if (poll(&pfd, 1, 2000) != 1)
					return false;
				continue;
			}
			return false;
		}
		p += n;
		len -= (size_t)n;
	}
	return true;
}

ssize_t h_raw_read(int fd, void *buf, size_t len, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	size_t got = 0;
	while (got < len) {
		ssize_t n = recv(fd, (char *)buf + got, len - got, 0);
		if (n > 0) {
			got += (size_t)n;
			continue;
		}
		if (n == 0)
			return (ssize_t)got;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -1;
		long long left = deadline - h_now_ms();
		if (left <= 0)
			return -2;
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		poll(&pfd, 1, (int)left);
	}
	return (ssize_t)got;
}

bool h_raw_wait_closed(int fd, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	char buf[4096];
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n == 0)
			return true;
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return true; /* reset */
		if (n > 0)
			continue;
		long long left = deadline - h_now_ms();
		if (left <= 0)
			return false;
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		poll(&pfd, 1, (int)left);
	}
}

/* ---------------------------------------------------------------- files, second server */

char *h_read_file(const char *path)
{
	return read_file(path);
}

bool h_file_wait_contains(const char *path, const char *needle, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	for (;;) {
		char *text = read_file(path);
		bool found = strstr(text, needle) != NULL;
		free(text);
		if (found)
			return true;
		if (h_now_ms() >= deadline)
			return false;
		h_sleep_ms(20);
	}
}

int h_file_count(const char *path, const char *needle)
{
	char *text = read_file(path);
	int n = 0;
	size_t step = strlen(needle) ? strlen(needle) : 1;
	for (const char *p = strstr(text, needle); p; p = strstr(p + step, needle))
		n++;
	free(text);
	return n;
}

bool h_file_wait_count(const char *path, const char *needle, int min_count, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	for (;;) {
		if (h_file_count(path, needle) >= min_count)
			return true;
		if (h_now_ms() >= deadline)
			return false;
		h_sleep_ms(20);
	}
}

void h_write_file(const char *path, const char *text, int mode)
{
	/* A new file renamed over the old one: a reader never sees half of it. */
	char tmp[600];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	cr_assert(f != NULL, "%s: %s", tmp, strerror(errno));
	cr_assert(fputs(text, f) >= 0 && fclose(f) == 0, "%s: %s", tmp, strerror(errno));
	cr_assert(chmod(tmp, (mode_t)mode) == 0, "chmod %s: %s", tmp, strerror(errno));
	cr_assert(rename(tmp, path) == 0, "rename %s: %s", path, strerror(errno));
}

/* When we are root, PostgreSQL runs as "postgres": its uid/gid; else our own. */
static void pg_os_user(uid_t *uid, gid_t *gid)
{
	*uid = getuid();
	*gid = getgid();
	if (*uid != 0)
		return;
	struct passwd *pw = getpwnam("postgres");
	cr_assert(pw != NULL, "running as root but there is no 'postgres' user to run PostgreSQL");
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
}

void h_chown_to_postgres(const char *path)
{
	uid_t uid;
	gid_t gid;

	pg_os_user(&uid, &gid);
	cr_assert(chown(path, uid, gid) == 0, "chown %s: %s", path, strerror(errno));
}

void h_as_postgres_argv(const char **out, size_t cap, const char *const argv[])
{
	size_t n = 0;
	if (getuid() == 0) {
		static const char *const pre[] = {"setpriv", "--reuid=postgres", "--regid=postgres",
						  "--init-groups", "--pdeathsig=KILL", "--", NULL};
		for (size_t i = 0; pre[i] && n + 1 < cap; i++)
			out[n++] = pre[i];
	}
	for (size_t i = 0; argv[i] && n + 1 < cap; i++)
		out[n++] = argv[i];
	out[n] = NULL;
}

void h_run_as_postgres(const char *what, const char *const argv[], int timeout_ms)
{
	const char *full[40];
	/* Replication connections are trusted; no tool may ever prompt. */
	const char *env[] = {"PGPASSFILE=/dev/null", "PGCONNECT_TIMEOUT=10", NULL};
	struct h_cmd c;

	h_as_postgres_argv(full, 40, argv);
	int st = h_cmd_run(&c, full, env, timeout_ms);
	if (st != 0)
		h_cmd_dump(&c, what);
	cr_assert_eq(st, 0, "%s exited with status %d", what, st);
	h_cmd_free(&c);
}

/* A directory for a second server, which postgres (the OS user) owns. */
static void pg_make_dir(struct h_pg *pg)
{
	const struct h_env *e = h_env();
	memset(pg, 0, sizeof(*pg));
	/* Not in h_test_dir(): that one is private to us, and postgres must reach this. */
	snprintf(pg->dir, sizeof(pg->dir), "%s/pg2-%ld-XXXXXX", e->dir, (long)getpid());
	cr_assert(mkdtemp(pg->dir) != NULL, "mkdtemp %s: %s", pg->dir, strerror(errno));
	h_chown_to_postgres(pg->dir);
	cr_assert(chmod(pg->dir, 0700) == 0, "chmod %s: %s", pg->dir, strerror(errno));
	snprintf(pg->logfile, sizeof(pg->logfile), "%s/postgres.log", pg->dir);
}

static bool pg_launch(struct h_pg *pg, const char *extra_conf);

bool h_pg_start(struct h_pg *pg)
{
	return h_pg_start_with(pg, NULL);
}

bool h_pg_start_standby(struct h_pg *pg, int primary_port, const char *extra_conf)
{
	const struct h_env *e = h_env();
	pg_make_dir(pg);
	char data[600], basebackup[600], conninfo[400];
	snprintf(data, sizeof(data), "%s/data", pg->dir);
	snprintf(basebackup, sizeof(basebackup), "%s/pg_basebackup", e->pgbin);
	snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d user=%s password=%s sslmode=disable",
		 primary_port, e->superuser, e->superpass);
	/* -c fast: no wait for a checkpoint; -R: standby.signal and primary_conninfo (with the password). */
	const char *bb_argv[] = {basebackup, "-d", conninfo, "-D", data, "-c", "fast", "-R", "-X", "stream", "-w", NULL};
	h_run_as_postgres("pg_basebackup", bb_argv, 60000);
	return pg_launch(pg, extra_conf);
}

bool h_pg_start_with(struct h_pg *pg, const char *extra_conf)
{
	const struct h_env *e = h_env();
	pg_make_dir(pg);
	char data[600], pwfile[600], initdb[600], pwtext[300], pwopt[700];
	snprintf(data, sizeof(data), "%s/data", pg->dir);
	snprintf(pwfile, sizeof(pwfile), "%s/pwfile", pg->dir);
	snprintf(initdb, sizeof(initdb), "%s/initdb", e->pgbin);
	snprintf(pwtext, sizeof(pwtext), "%s\n", e->superpass);
	h_write_file(pwfile, pwtext, 0600);
	h_chown_to_postgres(pwfile);

	snprintf(pwopt, sizeof(pwopt), "--pwfile=%s", pwfile);
	const char *initdb_argv[] = {initdb, "-D", data, "-U", e->superuser, pwopt, "--auth=scram-sha-256",
				     "-E", "UTF8", "--locale=C", "-N", NULL};
	h_run_as_postgres("initdb", initdb_argv, 60000);
	unlink(pwfile);
	return pg_launch(pg, extra_conf);
}

/* Configure the cluster in pg->dir/data for a port of its own (and extra_conf), start it, wait for logins. */
static bool pg_launch(struct h_pg *pg, const char *extra_conf)
{
	const struct h_env *e = h_env();
	char data[600], postgres[600], conf[700];
	const char *argv[32];
	snprintf(data, sizeof(data), "%s/data", pg->dir);
	snprintf(postgres, sizeof(postgres), "%s/postgres", e->pgbin);
	pg->port = h_free_port();
	snprintf(conf, sizeof(conf), "%s/postgresql.conf", data);
	FILE *f = fopen(conf, "a");
	cr_assert(f != NULL, "%s: %s", conf, strerror(errno));
	fprintf(f,
		"\n# ---- second server for the pgmux integration tests (harness.c)\n"
		"listen_addresses = '127.0.0.1'\n"
		"port = %d\n"
		"unix_socket_directories = '%s'\n"
		"max_connections = 60\n"
		"password_encryption = 'scram-sha-256'\n"
		"fsync = off\n"
		"synchronous_commit = off\n"
		"full_page_writes = off\n"
		"shared_buffers = 16MB\n"
		"log_line_prefix = '%%m [%%p] %%q%%u@%%d '\n"
		"%s\n",
		pg->port, pg->dir, extra_conf ? extra_conf : "");
	fclose(f);

	/* The postmaster itself is our child (setpriv execs it), so its PID is the one we stop. */
	const char *pg_argv[] = {postgres, "-D", data, NULL};
	h_as_postgres_argv(argv, 32, pg_argv);
	pid_t parent = getpid();
	fflush(NULL);
	pid_t pid = fork();
	cr_assert(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int in = open("/dev/null", O_RDONLY);
		int out = open(pg->logfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (in < 0 || out < 0)
			_exit(126);
		dup2(in, 0);
		dup2(out, 1);
		dup2(out, 2);
		child_prepare(parent);
		execvp(argv[0], (char *const *)argv);
		dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	child_add(pid);
	pg->pid = pid;

	/* Ready when the superuser can log in. */
	char ci[700];
	snprintf(ci, sizeof(ci),
		 "host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable connect_timeout=5",
		 pg->port, e->superuser, e->superpass);
	long long deadline = h_now_ms() + 30000;
	for (;;) {
		PGconn *conn = PQconnectdb(ci);
		bool ok = PQstatus(conn) == CONNECTION_OK;
		PQfinish(conn);
		if (ok)
			return true;
		int ws = wait_pid(pid, 0);
		if (ws != -2 || h_now_ms() >= deadline) {
			fprintf(stderr, "second PostgreSQL on port %d %s\n", pg->port,
				ws != -2 ? "exited during start-up" : "did not accept logins within 30 s");
			if (ws == -2)
				kill_and_reap(pid);
			pg->pid = 0;
			print_tail("second PostgreSQL log", pg->logfile, 4000);
			return false;
		}
		h_sleep_ms(20);
	}
}

int h_pg_stop(struct h_pg *pg)
{
	if (pg->pid <= 0)
		return -1;
	kill(pg->pid, SIGINT); /* fast shutdown */
	int st = wait_pid(pg->pid, 20000);
	if (st == -2) {
		fprintf(stderr, "second PostgreSQL (pid %ld) did not stop within 20 s; killing it\n", (long)pg->pid);
		kill_and_reap(pg->pid);
		st = -1;
	}
	pg->pid = 0;
	return st;
}

/* ---------------------------------------------------------------- shared test steps */

int h_app_backends(PGconn *super)
{
	char *v = h_value_ok(super, H_APP_BACKENDS_SQL);
	int n = atoi(v);
	free(v);
	return n;
}

void h_wait_no_app_backends(void)
{
	PGconn *super = h_connect_super_direct();
	bool quiet = h_poll_value(super, H_APP_BACKENDS_SQL, "0", h_scaled_ms(10000));
	char *left = quiet ? NULL
			   : h_query_value(super, "select string_agg(pid || ' ' || coalesce(application_name, '') || ' ' || "
						  "state || ' since ' || backend_start || ': ' || query, '; ') from "
						  "pg_stat_activity where usename = 'app' and datname = 'postgres' and "
						  "coalesce(application_name, '') <> 'pgmux health check'");

	PQfinish(super);
	cr_assert(quiet, "backends of app from an earlier test are still connected to PostgreSQL: %s",
		  left ? left : "");
	free(left);
}

bool h_wait_backend_gone(PGconn *super, int pid, int timeout_ms)
{
	char sql[160];

	snprintf(sql, sizeof(sql), "select count(*) from pg_stat_activity where pid = %d", pid);
	return h_poll_value(super, sql, "0", h_scaled_ms(timeout_ms));
}

uint64_t h_copy_rows_in(PGconn *conn, int rows, long long *sum)
{
	uint64_t hash = H_FNV1A_START;
	char chunk[8192];
	size_t used = 0;

	if (sum)
		*sum = 0;
	for (int i = 1; i <= rows; i++) {
		char line[128];
		int n = snprintf(line, sizeof(line), "%d\trow %d: \\\\ tab\\there %08x\n", i, i,
				 (unsigned)(i * 2654435761u));
		hash = h_fnv1a(hash, line, (size_t)n);
		if (sum)
			*sum += i;
		if (used + (size_t)n > sizeof(chunk)) {
			cr_assert_eq(PQputCopyData(conn, chunk, (int)used), 1, "%s", PQerrorMessage(conn));
			used = 0;
		}
		memcpy(chunk + used, line, (size_t)n);
		used += (size_t)n;
	}
	cr_assert_eq(PQputCopyData(conn, chunk, (int)used), 1, "%s", PQerrorMessage(conn));
	cr_assert_eq(PQputCopyEnd(conn, NULL), 1, "%s", PQerrorMessage(conn));
	return hash;
}

void h_expect_serves_new_client(struct pgmux *p)
{
	cr_assert(pgmux_running(p), "pgmux is no longer running");
	PGconn *conn = h_app_session(p, "prefer", NULL);
	h_expect_value(conn, "select 40 + 2", "42");
	PQfinish(conn);
}

void h_stop_expect_clean_exit(struct pgmux *p)
{
	int st = pgmux_stop(p, SIGTERM, h_scaled_ms(10000));
	cr_assert_eq(st, 0, "pgmux exit status after SIGTERM: %d (expected 0%s)", st,
		     h_under_valgrind() ? "; 99 = valgrind found errors or leaks" : "");
}

/* ---------------------------------------------------------------- transaction pooling: moving a client */

static int distinct_count(const int *v, int n)
{
	int distinct = 0;
	for (int i = 0; i < n; i++) {
		bool seen = false;
		for (int j = 0; j < i; j++)
			seen |= v[j] == v[i];
		distinct += !seen;
	}
	return distinct;
}

static bool contains_int(const int *v, int n, int x)
{
	for (int i = 0; i < n; i++)
		if (v[i] == x)
			return true;
	return false;
}

/* BEGIN on conn, which must be served backend want (pool of two, the only idle one) within 5 s. */
static void begin_on_backend(PGconn *conn, int want, const char *why)
{
	cr_assert_eq(PQsendQuery(conn, "begin; select pg_backend_pid()"), 1, "%s", PQerrorMessage(conn));
	bool answered = h_wait_ready(conn, h_scaled_ms(5000));
	if (!answered)
		h_dump_current_logs();
	cr_assert(answered, "%s: no backend for a BEGIN within 5 s, although backend %d should be idle", why, want);
	PGresult *r;
	int pid = 0;
	while ((r = h_next_result(conn)) != NULL) {
		cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", why,
			  PQerrorMessage(conn));
		if (PQresultStatus(r) == PGRES_TUPLES_OK)
			pid = atoi(PQgetvalue(r, 0, 0));
		PQclear(r);
	}
	cr_assert_eq(pid, want, "%s: served backend %d, expected the only idle one, %d", why, pid, want);
}

int h_take_over_backend(PGconn *a, int pa, PGconn *b, PGconn *c)
{
	h_exec_ok(b, "begin");
	int pb = h_backend_pid(b);
	cr_assert_neq(pb, pa, "client b was served backend %d while client a held it in a transaction", pa);
	h_exec_ok(a, "commit");
	begin_on_backend(c, pa, "client c after a's COMMIT");
	h_exec_ok(b, "commit");
	return pb;
}

void h_switching_rounds(PGconn *a, PGconn *b, PGconn *c, int rounds, h_step_fn step, h_held_fn while_held, void *arg,
			struct h_rounds *out)
{
	out->n = 0;
	for (int r = 0; r < rounds && out->n + 3 <= 128; r++) {
		h_exec_ok(a, "begin");
		int pa = h_backend_pid(a);
		out->pids[out->n++] = pa;
		if (while_held) {
			h_exec_ok(b, "begin");
			while_held(b, r, arg);
			h_exec_ok(b, "commit");
		}
		int other = h_take_over_backend(a, pa, b, c);
		int pid = step(a, out->n, arg);
		cr_assert_eq(pid, other, "client a was served backend %d, expected %d (client c holds %d)", pid, other,
			     pa);
		out->pids[out->n++] = pid;
		h_exec_ok(c, "commit");
		pid = step(a, out->n, arg);
		out->pids[out->n++] = pid;
	}
	cr_assert_geq(distinct_count(out->pids, out->n), 2);
}

/* A step that checks one value: sql returns (pid, value), which must be want. */
struct value_check {
	const char *sql;
	const char *want;
};

static int value_step(PGconn *a, int step, void *arg)
{
	const struct value_check *v = arg;
	int pid;
	char *got = h_pid_and_value(a, v->sql, &pid);
	cr_assert_str_eq(got, v->want, "step %d on backend %d: \"%s\" gave \"%s\", expected \"%s\"", step, pid, v->sql,
			 got, v->want);
	free(got);
	return pid;
}

void h_rounds_expect(PGconn *a, PGconn *b, PGconn *c, int rounds, const char *sql, const char *want,
		     struct h_rounds *out)
{
	struct value_check v = {sql, want};
	h_switching_rounds(a, b, c, rounds, value_step, NULL, &v, out);
}

void h_expect_other_client_sees(PGconn *a, PGconn *b, const struct h_rounds *a_rounds, const char *sql,
				const char *want)
{
	int pids[16], n = 0;
	for (int r = 0; r < 4; r++) {
		h_exec_ok(a, "begin");
		(void)h_backend_pid(a);
		char *v = h_pid_and_value(b, sql, &pids[n]);
		cr_assert_str_eq(v, want, "a client that never changed it got \"%s\" from \"%s\", expected \"%s\"", v,
				 sql, want);
		free(v);
		n++;
		h_exec_ok(a, "commit");
		v = h_pid_and_value(b, sql, &pids[n]);
		cr_assert_str_eq(v, want, "a client that never changed it got \"%s\" from \"%s\", expected \"%s\"", v,
				 sql, want);
		free(v);
		n++;
	}
	bool shared = false;
	for (int i = 0; i < n; i++)
		shared |= contains_int(a_rounds->pids, a_rounds->n, pids[i]);
	if (!shared) {
		fprintf(stderr, "client a's backends:");
		for (int i = 0; i < a_rounds->n; i++)
			fprintf(stderr, " %d", a_rounds->pids[i]);
		fprintf(stderr, "\nclient b's backends:");
		for (int i = 0; i < n; i++)
			fprintf(stderr, " %d", pids[i]);
		fprintf(stderr, "\n");
		h_dump_current_logs();
	}
	cr_assert(shared, "client b never used a backend that client a had used");
}

void h_finish_three(struct pgmux *p, PGconn *a, PGconn *b, PGconn *c)
{
	PQfinish(a);
	PQfinish(b);
	PQfinish(c);
	h_stop_expect_clean_exit(p);
}

/* ---------------------------------------------------------------- background traffic */

static struct h_traffic *running_traffic;

static bool traffic_exec(struct h_traffic *t, PGconn *conn, const char *sql, int *value)
{
	PGresult *r = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(r);
	bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
	if (!ok && atomic_fetch_add(&t->failures, 1) == 0)
		snprintf(t->error, sizeof(t->error), "\"%s\": %s", sql, PQerrorMessage(conn));
	if (ok && value)
		*value = atoi(PQgetvalue(r, 0, 0));
	PQclear(r);
	return ok;
}

static void *traffic_main(void *arg)
{
	struct h_traffic *t = arg;
	PGconn *conn = h_connect_app(t->port, "disable", "application_name=traffic");
	if (PQstatus(conn) != CONNECTION_OK) {
		snprintf(t->error, sizeof(t->error), "connect: %s", PQerrorMessage(conn));
		atomic_fetch_add(&t->failures, 1);
		PQfinish(conn);
		return NULL;
	}
	while (!atomic_load(&t->stop)) {
		int avoid = atomic_load(&t->avoid_pid);
		int pid = 0;
		if (!traffic_exec(t, conn, "begin", NULL) || !traffic_exec(t, conn, "select pg_backend_pid()", &pid) ||
		    !traffic_exec(t, conn, "commit", NULL))
			break;
		if (avoid != 0 && pid == avoid)
			atomic_fetch_add(&t->collisions, 1);
		atomic_fetch_add(&t->transactions, 1);
	}
	PQfinish(conn);
	return NULL;
}

void h_traffic_start(struct h_traffic *t, const struct pgmux *p)
{
	memset(t, 0, sizeof(*t));
	t->port = p->port;
	(void)h_env(); /* loaded here, read-only on the thread */
	cr_assert_eq(pthread_create(&t->thread, NULL, traffic_main, t), 0);
	running_traffic = t;
	long long deadline = h_now_ms() + h_scaled_ms(10000);
	while (atomic_load(&t->transactions) < 1 && atomic_load(&t->failures) == 0 && h_now_ms() < deadline)
		h_sleep_ms(5);
	cr_assert_gt(atomic_load(&t->transactions), 0, "the background client ran no transaction: %s", t->error);
}

static void traffic_stop(struct h_traffic *t)
{
	atomic_store(&t->stop, true);
	pthread_join(t->thread, NULL);
	running_traffic = NULL;
}

void h_traffic_stop_and_check(struct h_traffic *t)
{
	traffic_stop(t);
	cr_assert_eq(atomic_load(&t->failures), 0, "the background client failed: %s", t->error);
	cr_assert_eq(atomic_load(&t->collisions), 0,
		     "the background client was served backend %d %d times while it was pinned to another session",
		     atomic_load(&t->avoid_pid), atomic_load(&t->collisions));
	cr_log_info("background client: %d transactions", atomic_load(&t->transactions));
}

/* ---------------------------------------------------------------- teardown */

/*
 * Children this process has but did not start: a pgmux -d daemon inherited as
 * child subreaper (see pgmux_start), perhaps before it could be adopted.
 */
static void kill_inherited_children(void)
{
	DIR *d = opendir("/proc");
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		pid_t pid = (pid_t)atol(de->d_name);
		if (pid <= 0)
			continue;
		char path[64];
		snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
		char *stat = read_file(path);
		const char *after_name = strrchr(stat, ')'); /* "pid (name) state ppid ..." */
		char state;
		long ppid;
		if (after_name && sscanf(after_name + 1, " %c %ld", &state, &ppid) == 2 && ppid == (long)getpid())
			kill_and_reap(pid);
		free(stat);
	}
	closedir(d);
}

void h_teardown(void)
{
	/* A background client's thread first: it talks to the pgmux about to be killed. */
	if (running_traffic)
		traffic_stop(running_traffic);
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] > 0)
			kill_and_reap(children[i]);
	kill_inherited_children();
}

/* ---------------------------------------------------------------- HTTP (the metrics port) */

/*
 * One HTTP request to address:port; the whole response, read to EOF within
 * 5 s (malloc'd), or NULL when nothing listens there.
 */
char *h_http_exchange(const char *address, int port, const char *request)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	cr_assert_eq(inet_pton(AF_INET, address, &sa.sin_addr), 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(fd);
		return NULL;
	}
	cr_assert(h_raw_send(fd, request, strlen(request)));
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);
	cr_assert_not_null(buf);
	long long deadline = h_now_ms() + h_scaled_ms(5000);
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		long long left = deadline - h_now_ms();
		cr_assert_gt(left, 0, "the response from %s:%d did not end within 5 s", address, port);
		if (poll(&pfd, 1, (int)left) <= 0)
			continue;
		if (len + 1 == cap) {
			cap *= 2;
			buf = realloc(buf, cap);
			cr_assert_not_null(buf);
		}
		ssize_t n = read(fd, buf + len, cap - len - 1);
		cr_assert_geq(n, 0, "reading the response from %s:%d: %s", address, port, strerror(errno));
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	return buf;
}

/* The body of an HTTP response (after the blank line), or "" without one. */
const char *h_http_body(const char *response)
{
	const char *blank = strstr(response, "\r\n\r\n");

	return blank ? blank + 4 : "";
}

/* The value of the sample whose name and labels are exactly series, or -1 when there is none. */
double h_sample(const char *body, const char *series)
{
	size_t n = strlen(series);
	for (const char *line = body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
		if (strncmp(line, series, n) == 0 && line[n] == ' ')
			return strtod(line + n + 1, NULL);
	return -1;
}

char *h_scrape(int port)
{
	char *response = h_http_exchange("127.0.0.1", port, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
	char *body;

	cr_assert_not_null(response, "nothing listens on metrics port %d", port);
	cr_assert(strncmp(response, "HTTP/1.", 7) == 0 && strstr(response, " 200 ") != NULL,
		  "the metrics port answered: %.200s", response);
	body = strdup(h_http_body(response));
	cr_assert_not_null(body);
	free(response);
	return body;
}

PGnotify *h_wait_notify(PGconn *conn, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	PGnotify *n;

	for (;;) {
		cr_assert(PQconsumeInput(conn), "reading: %s", PQerrorMessage(conn));
		if ((n = PQnotifies(conn)) != NULL)
			return n;
		long long left = deadline - h_now_ms();
		if (left <= 0)
			return NULL;
		struct pollfd pfd = { .fd = PQsocket(conn), .events = POLLIN };
		poll(&pfd, 1, (int)(left > 100 ? 100 : left));
	}
}

void h_expect_notify(PGconn *conn, const char *channel, const char *payload, int pid)
{
	PGnotify *n = h_wait_notify(conn, h_scaled_ms(5000));

	cr_assert_not_null(n, "no notification on %s (%s) came", channel, payload);
	cr_expect_str_eq(n->relname, channel);
	cr_expect_str_eq(n->extra, payload);
	if (pid)
		cr_expect_eq(n->be_pid, pid, "the notifying backend's pid");
	PQfreemem(n);
}

void h_expect_no_notify(PGconn *conn, int wait_ms)
{
	PGnotify *n = h_wait_notify(conn, wait_ms);

	cr_expect_null(n, "unexpected notification on %s (%s)", n ? n->relname : "", n ? n->extra : "");
	if (n)
		PQfreemem(n);
}

void h_start_transaction_pgmux(struct pgmux *p, int max_connections, const char *extra_pool)
{
	struct pgmux_options o;

	h_wait_no_app_backends();
	pgmux_options_default(&o);
	o.pool_mode = "transaction";
	o.client_auth = "trust";
	o.max_connections = max_connections;
	o.admin_users = h_env()->appuser;
	o.extra_pool = extra_pool;
	cr_assert(pgmux_start(p, &o), "pgmux did not start");
}

void h_expect_tag(PGconn *conn, const char *sql, const char *want)
{
	PGresult *r = PQexec(conn, sql);

	cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql,
		  PQerrorMessage(conn));
	cr_assert_str_eq(PQcmdStatus(r), want, "%s", sql);
	PQclear(r);
}
