/*
 * main.c: pgmux's entry point and main thread. It parses the command line,
 * loads the configuration, secrets and TLS certificate, starts the worker
 * threads, the cancel helper and the health-check monitor, then runs the
 * acceptors on its own event loop, where control.c handles signals, reloads,
 * cutovers and shutdown.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "admin.h"
#include "aws.h"
#include "cancel.h"
#include "client.h"
#include "config.h"
#include "control.h"
#include "dispatch.h"
#include "handover.h"
#include "io.h"
#include "listen.h"
#include "log.h"
#include "metrics.h"
#include "monitor.h"
#include "pgmux.h"
#include "pool.h"
#include "secrets.h"
#include "secretsmgr.h"
#include "service.h"
#include "tls.h"
#include "worker.h"

#include "build_config.h"

/* How long accepting stops after accept() found no descriptor, and how often that is logged. */
#define ACCEPT_PAUSE_MS 250
#define ACCEPT_PAUSE_LOG_INTERVAL_USEC (10 * 1000 * 1000ULL)

struct main_state {
	struct event_base *base;
	struct evconnlistener *listener;          /* listen_port: the writer endpoint */
	struct evconnlistener *readonly_listener; /* readonly_port: the reader endpoint */
	struct event *accept_resume_timer;        /* re-enables the listeners after a pause */
	struct event *balance_timer;              /* workers_balance(): which workers take clients */
	uint64_t accept_pause_logged_usec;        /* when the last "out of descriptors" line was written */
	uint64_t accept_failures_unlogged;        /* failures since then */
	char *config_path;
	int log_level_override; /* -1 when -v/-q were not given */
	bool handed_over;       /* a process started with -R took the sockets (and the pidfile) */
};

static struct main_state M;

static void usage(FILE *out)
{
	fprintf(out,
		"pgmux %s: a PostgreSQL connection proxy\n\n"
		"Usage: pgmux [-d] [-v|-q] [-R] CONFIG\n"
		"       pgmux --check CONFIG\n"
		"       pgmux --version | --help\n\n"
		"  -d, --daemon        run in the background (writes the pidfile named in CONFIG)\n"
		"  -v, --verbose       log more (debug)\n"
		"  -q, --quiet         log less (warnings and errors only)\n"
		"  -R, --restart       take the listening sockets over from the pgmux that the\n"
		"                      pidfile in CONFIG names, which then drains and exits:\n"
		"                      a restart or upgrade that refuses no connection\n"
		"  -t, --check CONFIG  check CONFIG, the secrets and TLS files it names, and exit:\n"
		"                      0 when pgmux could start with them, 1 with the errors\n"
		"  -V, --version       print the version and exit\n"
		"  -h, --help          print this help and exit\n\n"
		"Signals: HUP reloads CONFIG and the secrets, INT stops gracefully,\n"
		"TERM stops immediately. See pgmux(1) and pgmux.ini(5).\n",
		PACKAGE_VERSION);
}

/*
 * pgmux --check: everything start-up reads (the configuration, the TLS
 * certificate and key, the secrets) is read as start-up reads it, and every
 * problem is printed to stderr, with the file and line where there is one.
 * Nothing is started: no port, no thread, no log file, no pid file.
 * Returns the exit status.
 */
/*
 * Secrets Manager gave new values (aws thread): the pools get the new
 * passwords, and the main thread looks whether hosts_from_secret's host moved.
 */
static void on_secrets_refreshed(void)
{
	pool_refresh_passwords();
	control_request(CONTROL_SECRET_HOSTS, NULL, NULL, 0);
}

/* A string with no control character and no space at either end (a user or host name as written). */
static bool plain_name(const char *s)
{
	size_t n = strlen(s);

	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return n > 0 && s[0] != ' ' && s[n - 1] != ' ';
}

/*
 * --check: hosts_from_secret as far as it can be checked offline: the value
 * is a user name, and when the secret is a file in secrets_dir, it names a
 * host. A secret that only Secrets Manager holds is not read here. The
 * number of problems printed.
 */
static int check_hosts_from_secret(const struct config *cfg, const char *path)
{
	const char *user = cfg->hosts_from_secret;
	struct secret secret;
	int errors = 0;

	if (user[0] == '\0')
		return 0;
	if (!plain_name(user) || strlen(user) > 63) {
		fprintf(stderr, "pgmux: %s: hosts_from_secret = \"%s\" is not a user name (at most 63 bytes, no control "
			"character, no space at either end)\n",
			path, user);
		return 1;
	}
	if (!secrets_find(user, &secret)) {
		if (cfg->secrets_manager_secrets[0]) {
			printf("pgmux: %s: hosts_from_secret: no file in secrets_dir has user %s; it must be one of "
			       "secrets_manager_secrets, which --check does not read\n",
			       path, user);
			return 0;
		}
		fprintf(stderr, "pgmux: %s: hosts_from_secret: no secret has user %s (none in secrets_dir %s, and "
			"secrets_manager_secrets is empty)\n",
			path, user, cfg->secrets_dir[0] ? cfg->secrets_dir : "\"\"");
		return 1;
	}
	if (secret.host == NULL || secret.host[0] == '\0') {
		fprintf(stderr, "pgmux: %s: hosts_from_secret: the secret of %s in %s has no \"host\" (the writer's host "
			"name or address)\n",
			path, user, cfg->secrets_dir);
		errors++;
	} else if (!plain_name(secret.host) || strchr(secret.host, ' ') || strlen(secret.host) > 255) {
		fprintf(stderr, "pgmux: %s: hosts_from_secret: the \"host\" of %s's secret in %s is not a host name or "
			"address\n",
			path, user, cfg->secrets_dir);
		errors++;
	}
	secret_clear(&secret);
	return errors;
}

static int check_configuration(const char *path)
{
	struct config *cfg;
	char err[512];
	int errors = 0, n;

	cfg = config_load(path, err, sizeof(err));
	if (cfg == NULL) {
		fprintf(stderr, "pgmux: %s\n", err);
		return 1;
	}
	pgmux_config_ptr = cfg;
	/* Problems go to stderr whatever logfile says; debug lines are not wanted here. */
	log_set_level(cfg->log_level < LOG_LEVEL_INFO ? cfg->log_level : LOG_LEVEL_INFO);
	if (cfg->client_tls_cert_file[0]) {
		struct tls_context *tls = tls_context_load(cfg, err, sizeof(err));

		if (tls == NULL) {
			fprintf(stderr, "pgmux: %s\n", err);
			errors++;
		} else {
			tls_context_unref(tls);
		}
	}
	n = secrets_reload(cfg->secrets_dir, err, sizeof(err));
	if (n < 0 && cfg->client_auth != CLIENT_AUTH_TRUST) {
		fprintf(stderr, "pgmux: secrets_dir: %s\n", err);
		errors++;
	} else if (n >= 0 && secrets_skipped() > 0) {
		fprintf(stderr, "pgmux: %s: %d secret file(s) cannot be used (see above)\n", cfg->secrets_dir,
			secrets_skipped());
		errors++;
	}
	if (control_health_check_user_problem(cfg, n) != NULL) {
		fprintf(stderr, "pgmux: %s: %s\n", path, control_health_check_user_problem(cfg, n));
		errors++;
	}
	errors += check_hosts_from_secret(cfg, path);
	control_warn_risky_settings(cfg);
	if (errors == 0)
		printf("pgmux: %s: the configuration is valid (%d secret(s) in %s)\n", path, n < 0 ? 0 : n,
		       cfg->secrets_dir);
	secrets_shutdown();
	pgmux_config_ptr = NULL;
	config_free(cfg);
	return errors == 0 ? 0 : 1;
}

/* ---------------------------------------------------------------- acceptor */

/* A graceful shutdown begins: refuse new connections at the socket. */
static void stop_listening(void)
{
	if (M.listener) {
		evconnlistener_free(M.listener);
		M.listener = NULL;
	}
	if (M.readonly_listener) {
		evconnlistener_free(M.readonly_listener);
		M.readonly_listener = NULL;
	}
}

static void on_accept(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *addr, int addrlen,
		      void *arg)
{
	workers_dispatch_connection(fd, addr, (socklen_t)addrlen,
				    listener == M.readonly_listener ? ENDPOINT_READER : ENDPOINT_WRITER);
}

static void balance_workers(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	workers_balance();
}

static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
	/* A graceful stop may have closed the listeners meanwhile. */
	if (M.listener)
		evconnlistener_enable(M.listener);
	if (M.readonly_listener)
		evconnlistener_enable(M.readonly_listener);
}

/*
 * accept() failed, typically for want of a descriptor (EMFILE, ENFILE). The
 * connection stays in the kernel's queue, so the listener would report it
 * again at once: one core spinning on accept() and a log line per pass.
 * Instead both listeners stop for ACCEPT_PAUSE_MS, while closing sessions
 * free descriptors; a failure for want of a descriptor is counted every time,
 * and failures are logged at most once per ACCEPT_PAUSE_LOG_INTERVAL_USEC.
 */
static void pause_accepting(int err)
{
	struct timeval pause = { 0, ACCEPT_PAUSE_MS * 1000 };
	uint64_t now = pgmux_now_usec();
	bool out_of_descriptors = err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;

	if (out_of_descriptors)
		__atomic_add_fetch(&pgmux_accept_out_of_descriptors, 1, __ATOMIC_RELAXED);
	M.accept_failures_unlogged++;
	if (M.accept_pause_logged_usec == 0 || now - M.accept_pause_logged_usec >= ACCEPT_PAUSE_LOG_INTERVAL_USEC) {
		log_error("accept failed: %s; new connections wait %d ms at a time until it passes "
			  "(%llu failure(s) since the last such message)%s",
			  evutil_socket_error_to_string(err), ACCEPT_PAUSE_MS,
			  (unsigned long long)M.accept_failures_unlogged,
			  out_of_descriptors ? "; raise the open-file limit (ulimit -n, LimitNOFILE) or lower "
					       "max_client_connections"
					     : "");
		M.accept_pause_logged_usec = now;
		M.accept_failures_unlogged = 0;
	}
	if (M.listener)
		evconnlistener_disable(M.listener);
	if (M.readonly_listener)
		evconnlistener_disable(M.readonly_listener);
	if (M.accept_resume_timer)
		evtimer_add(M.accept_resume_timer, &pause);
}

/* libevent calls this for any accept() error it cannot retry at once; each one would come back on the next pass. */
static void on_accept_error(struct evconnlistener *listener, void *arg)
{
	pause_accepting(EVUTIL_SOCKET_ERROR());
}

/* Listen on port_number, or on inherited_fd (handed over, see handover.h) when it is not -1. */
static struct evconnlistener *start_listener(const struct config *cfg, int port_number, int inherited_fd)
{
	struct evconnlistener *listener =
		inherited_fd >= 0 ? io_listen_inherited(M.base, inherited_fd, port_number, on_accept, NULL)
				  : io_listen(M.base, cfg->listen_addr, port_number, cfg->listen_backlog, on_accept, NULL);

	if (listener)
		evconnlistener_set_error_cb(listener, on_accept_error);
	return listener;
}

/* ------------------------------------------------------------ restart in place */

static void handover_get_fds(struct handover_fds *out)
{
	out->listen_fd = M.listener ? evconnlistener_get_fd(M.listener) : -1;
	out->readonly_fd = M.readonly_listener ? evconnlistener_get_fd(M.readonly_listener) : -1;
	out->metrics_fd = metrics_listen_fd();
}

/*
 * A process started with -R accepts on the sockets now: this one stops
 * accepting (its copies close; the sockets stay open in the new process),
 * leaves the metrics port, and so /readyz, to it, and drains as after SIGINT.
 */
static void handover_taken(pid_t new_pid)
{
	char why[160];

	M.handed_over = true;
	metrics_stop();
	snprintf(why, sizeof(why), "restart: process %d took the listening sockets over; this one drains and exits",
		 (int)new_pid);
	control_drain(why);
}

/* ------------------------------------------------------------ process setup */

static int write_pidfile(const char *path)
{
	char buf[32];
	int fd, n;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	if (write(fd, buf, (size_t)n) != n) {
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/*
 * -d: the command that started pgmux returns only once the daemon listens
 * (status 0) or has given up (status 1), so that a port already in use or an
 * unwritable pid file is not hidden behind a successful start. The daemon
 * writes one byte to ready_fd when it is up; if it exits first, the parent
 * reads end-of-file instead.
 */
static int ready_fd = -1;

static void daemon_parent_wait(int fd)
{
	char c;
	ssize_t n;

	do
		n = read(fd, &c, 1);
	while (n < 0 && errno == EINTR);
	if (n == 1)
		_exit(0);
	if (config_current()->logfile[0])
		fprintf(stderr, "pgmux: the background process did not start; see %s\n", config_current()->logfile);
	else
		fprintf(stderr, "pgmux: the background process did not start\n");
	_exit(1);
}

static void daemon_ready(void)
{
	if (ready_fd < 0)
		return;
	if (write(ready_fd, "R", 1) != 1)
		log_warning("cannot tell the starting command that pgmux is up: %s", strerror(errno));
	close(ready_fd);
	ready_fd = -1;
}

static int daemonize(void)
{
	int fds[2];
	pid_t pid;
	int fd;

	if (pipe2(fds, O_CLOEXEC) != 0)
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid > 0) {
		close(fds[1]);
		daemon_parent_wait(fds[0]);
	}
	close(fds[0]);
	ready_fd = fds[1];
	if (setsid() < 0)
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (chdir("/") != 0)
		return -1;
	fd = open("/dev/null", O_RDWR);
	if (fd >= 0) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		/* stderr stays only when it is the log. */
		if (config_current()->logfile[0])
			dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
	return 0;
}

int main(int argc, char **argv)
{
	bool background = false, pidfile_written = false, restart = false;
	struct handover_fds inherited = { -1, -1, -1 };
	struct config *cfg;
	char err[512];
	int opt, exit_code = 0, n;
	static const struct option long_options[] = {
		{ "daemon", no_argument, NULL, 'd' },   { "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },    { "check", required_argument, NULL, 't' },
		{ "version", no_argument, NULL, 'V' },  { "help", no_argument, NULL, 'h' },
		{ "restart", no_argument, NULL, 'R' },  { NULL, 0, NULL, 0 },
	};
	const char *check_path = NULL;

	M.log_level_override = -1;
	while ((opt = getopt_long(argc, argv, "dvqt:VhR", long_options, NULL)) != -1) {
		switch (opt) {
		case 't':
			check_path = optarg;
			break;
		case 'd':
			background = true;
			break;
		case 'R':
			restart = true;
			break;
		case 'v':
			M.log_level_override = LOG_LEVEL_DEBUG;
			break;
		case 'q':
			M.log_level_override = LOG_LEVEL_WARNING;
			break;
		case 'V':
			printf("pgmux %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 1;
		}
	}
	if (check_path != NULL) {
		if (optind != argc) {
			usage(stderr);
			return 1;
		}
		return check_configuration(check_path);
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 1;
	}
	M.config_path = argv[optind];
	cfg = config_load(M.config_path, err, sizeof(err));
	if (cfg == NULL) {
		fprintf(stderr, "pgmux: %s\n", err);
		return 1;
	}
	pgmux_config_ptr = cfg;
	control_set_log_level_override(M.log_level_override);
	control_apply_log_settings(cfg);

	if ((background || restart) && cfg->pidfile[0] == '\0') {
		fprintf(stderr, "pgmux: %s needs a pidfile in %s\n", restart ? "-R" : "-d", M.config_path);
		config_free(cfg);
		return 1;
	}
	if (cfg->client_tls_cert_file[0]) {
		struct tls_context *tls = tls_context_load(cfg, err, sizeof(err));

		if (tls == NULL) {
			log_error("%s", err);
			config_free(cfg);
			return 1;
		}
		tls_set_current(tls);
	}
	n = secrets_reload(cfg->secrets_dir, err, sizeof(err));
	if (n < 0 && cfg->client_auth != CLIENT_AUTH_TRUST) {
		log_error("secrets_dir: %s", err);
		exit_code = 1;
		goto out_early;
	}
	if (cfg->secrets_dir[0])
		log_info("loaded %d secret(s) from %s", n < 0 ? 0 : n, cfg->secrets_dir);
	/* Secrets Manager's secrets join the directory's; IAM tokens need the AWS credentials. */
	if (secretsmgr_start(cfg, on_secrets_refreshed, err, sizeof(err)) != 0) {
		log_error("%s", err);
		exit_code = 1;
		goto out_early;
	}
	if (control_hosts_from_secret(cfg, NULL, 0, err, sizeof(err)) != 0) {
		log_error("%s: %s", M.config_path, err);
		exit_code = 1;
		goto out_early;
	}
	n = secrets_count();
	if (control_health_check_user_problem(cfg, n) != NULL) {
		log_error("%s: %s", M.config_path, control_health_check_user_problem(cfg, n));
		exit_code = 1;
		goto out_early;
	}
	control_warn_risky_settings(cfg);

	if (background && daemonize() != 0) {
		log_error("cannot daemonize: %s", strerror(errno));
		exit_code = 1;
		goto out_early;
	}
	signal(SIGPIPE, SIG_IGN);
	evthread_use_pthreads();
	pthread_setname_np(pthread_self(), "main");

	M.base = event_base_new();
	if (M.base)
		M.accept_resume_timer = evtimer_new(M.base, resume_accepting, NULL);
	/*
	 * Signals are handled before the port opens: a service manager may send
	 * SIGHUP as soon as it sees pgmux listening. They are acted on once the
	 * loop runs, by which time everything below is up.
	 */
	if (M.base == NULL || M.accept_resume_timer == NULL ||
	    control_init(M.base, M.config_path, M.log_level_override, stop_listening) != 0 || pool_init(cfg) != 0) {
		exit_code = 1;
		goto out;
	}
	if (restart) {
		if (handover_receive(cfg->pidfile, &inherited, err, sizeof(err)) != 0) {
			log_error("%s", err);
			exit_code = 1;
			goto out;
		}
		log_info("restart: received the listening sockets of the running pgmux");
		if (cfg->readonly_port == 0 && inherited.readonly_fd >= 0)
			close(inherited.readonly_fd);
	}
	M.listener = start_listener(cfg, cfg->listen_port, inherited.listen_fd);
	if (cfg->readonly_port)
		M.readonly_listener = start_listener(cfg, cfg->readonly_port, inherited.readonly_fd);
	if (M.listener == NULL || (cfg->readonly_port && M.readonly_listener == NULL) ||
	    metrics_start(M.base, cfg, inherited.metrics_fd) != 0) {
		exit_code = 1;
		goto out;
	}
	/*
	 * The pid file is written only once the ports are ours: a second pgmux
	 * started by mistake with the same configuration cannot listen, and must
	 * leave the running one's pid file alone rather than overwrite it and
	 * then remove it on its way out. With -R, only once the old process has
	 * let go of the ports (below).
	 */
	if (cfg->pidfile[0] && !restart) {
		if (write_pidfile(cfg->pidfile) != 0) {
			log_error("cannot write pidfile %s: %s", cfg->pidfile, strerror(errno));
			exit_code = 1;
			goto out;
		}
		pidfile_written = true;
	}
	client_set_console(&admin_console);
	pool_set_wait_ended(client_wait_ended);
	cancel_set_instance_id(cfg->peer_id);
	if (cancel_thread_start() != 0 || workers_start(config_worker_count(cfg), &dispatch_worker_ops) != 0 ||
	    monitor_start() != 0 || listen_start() != 0 || aws_thread_start() != 0) {
		log_error("cannot start threads");
		exit_code = 1;
		goto out;
	}
	M.balance_timer = event_new(M.base, -1, EV_PERSIST, balance_workers, NULL);
	if (M.balance_timer) {
		struct timeval tick = { 0, WORKERS_BALANCE_MS * 1000 };

		event_add(M.balance_timer, &tick);
	}
	log_info("pgmux %s listening on %s:%d (writer)%s%.0d, %d worker(s), %s pooling, %d instance(s) listed",
		 PACKAGE_VERSION, cfg->listen_addr, cfg->listen_port, cfg->readonly_port ? " and readers on port " : "",
		 cfg->readonly_port, n_workers, config_pool_mode_name(cfg->pool_mode), cfg->n_hosts);
	if (cfg->peer_id != 0)
		log_info("peer %d of %d: cancels for the others' keys are passed on to them; connection caps are "
			 "shared", cfg->peer_id, cfg->n_peers);
	if (restart) {
		/* This process accepts now: the old one may stop. */
		if (handover_confirm() != 0)
			log_warning("restart: the old process went away before it heard that this one took over");
		if (write_pidfile(cfg->pidfile) != 0)
			log_error("cannot write pidfile %s: %s", cfg->pidfile, strerror(errno));
		else
			pidfile_written = true;
	}
	/* The next pgmux -R finds this process through the pidfile. */
	if (pidfile_written)
		handover_listen(M.base, cfg->pidfile, handover_get_fds, handover_taken);
	if (restart) {
		char state[64];

		/* The unit's main process is this one now (NotifyAccess=all lets it say so). */
		snprintf(state, sizeof(state), "MAINPID=%d\nREADY=1", (int)getpid());
		service_notify(state);
	} else {
		service_notify("READY=1");
	}
	daemon_ready();

	event_base_dispatch(M.base);

out:
	handover_stop();
	stop_listening();
	metrics_stop();
	control_cleanup();
	monitor_stop();
	/* Before the workers: it posts to their inboxes. */
	listen_stop();
	workers_stop();
	aws_shutdown(); /* its refreshes update the pools: before they go */
	pool_shutdown();
	cancel_thread_stop();
	if (M.accept_resume_timer)
		event_free(M.accept_resume_timer);
	if (M.balance_timer)
		event_free(M.balance_timer);
	if (M.base)
		event_base_free(M.base);
	/* After a hand-over the pid file names the new process. */
	if (pidfile_written && !M.handed_over)
		unlink(config_current()->pidfile);
	log_info("pgmux stopped");
out_early:
	aws_shutdown();
	secretsmgr_shutdown();
	secrets_shutdown();
	tls_set_current(NULL);
	config_free((struct config *)config_current());
	control_free_retired_configs();
	log_close();
	libevent_global_shutdown();
	return exit_code;
}
