/*
 * control.c: process-wide operations on the main thread (see control.h).
 *
 * A cutover (a reload that changes hosts, or CUTOVER TO) is cutover.c's
 * state machine; this file starts it and gives it the way to publish the
 * old hosts again should it be abandoned.
 */
#include "control.h"
#include "cutover.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "client.h"
#include "config.h"
#include "log.h"
#include "monitor.h"
#include "pgmux.h"
#include "pool.h"
#include "secrets.h"
#include "service.h"
#include "stats.h"
#include "secretsmgr.h"
#include "tls.h"
#include "util.h"
#include "worker.h"

#include "build_config.h"

struct control_request {
	struct list_node node;
	enum control_op op;
	char *arg;
	struct worker *reply_to;
	uint64_t client_id;
};

/*
 * A configuration that was replaced, with each reader's pass count when it
 * was: once every count has moved, no reader can hold a pointer into it.
 */
struct retired_config {
	struct config *cfg;
	struct config_readers_mark mark;
};

static struct {
	struct event_base *base;
	char *config_path;
	int log_level_override;
	struct event *signals[5];
	struct event *request_event;
	struct event *drain_timer;
	uint64_t drain_deadline_usec;
	void (*stop_listening)(void);
	struct retired_config *retired; /* replaced, not yet freed: oldest first */
	int n_retired;
	struct event *reclaim_timer;

	pthread_mutex_t lock; /* the request queue */
	struct list_node requests;
} C;

/* ------------------------------------------------------------------ replies */

static void reply(struct worker *w, uint64_t client_id, bool ok, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void reply(struct worker *w, uint64_t client_id, bool ok, const char *fmt, ...)
{
	char text[512];
	va_list ap;

	if (w == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	worker_post_admin_reply(w, client_id, ok, text);
}

bool control_is_draining(void)
{
	return C.drain_timer != NULL; /* main thread only, as is the metrics endpoint that asks */
}

/* ------------------------------------------------------------------ reload */

/* Copy one option's value from src to dst (a restart-only option keeps its running value). */
static void config_copy_option(struct config *dst, const struct config *src, const struct config_option *opt)
{
	char *d = (char *)dst + opt->offset;
	const char *s = (const char *)src + opt->offset;

	switch (opt->type) {
	case CONFIG_STRING: {
		char **dp = (char **)d;

		free(*dp);
		*dp = xstrdup(*(char *const *)s);
		break;
	}
	case CONFIG_BOOL:
		*(bool *)d = *(const bool *)s;
		break;
	default:
		*(int *)d = *(const int *)s;
		break;
	}
}

static bool hosts_equal(const struct target_host *a, int na, const struct target_host *b, int nb)
{
	if (na != nb)
		return false;
	for (int i = 0; i < na; i++)
		if (strcmp(a[i].host, b[i].host) != 0 || a[i].port != b[i].port)
			return false;
	return true;
}

void control_set_log_level_override(int level)
{
	C.log_level_override = level;
}

void control_apply_log_settings(const void *arg)
{
	const struct config *cfg = arg;

	log_set_level(C.log_level_override >= 0 ? C.log_level_override : cfg->log_level);
	log_configure(cfg->log_format, cfg->syslog, cfg->syslog_facility, cfg->syslog_ident);
	if (log_open(cfg->logfile) != 0)
		log_error("cannot open logfile %s: %s; logging to stderr", cfg->logfile, strerror(errno));
}

void control_warn_unverified_hosts(const struct config *cfg, const struct target_host *hosts, int n_hosts)
{
	if (cfg->server_tls == SERVER_TLS_VERIFY_FULL)
		return;
	for (int i = 0; i < n_hosts; i++)
		if (!config_host_is_loopback(hosts[i].host))
			log_warning("server %s:%d is not on loopback and server_tls = %s does not verify it: whoever "
				    "answers there, or on the way, can pose as the server and get the passwords pgmux "
				    "logs in with; set server_tls = verify-full and server_tls_ca_file",
				    hosts[i].host, hosts[i].port, config_server_tls_sslmode(cfg->server_tls));
}

void control_warn_risky_settings(const struct config *cfg)
{
	if (cfg->client_auth == CLIENT_AUTH_TRUST)
		log_warning("client_auth = trust: clients log in without a password, and anyone who names a user "
			    "in admin_users%s gets the admin console; use it only for tests on a private machine",
			    cfg->stats_users[0] ? " or stats_users" : "");
	control_warn_unverified_hosts(cfg, cfg->hosts, cfg->n_hosts);
	if (cfg->instance_host_pattern[0] && cfg->server_tls != SERVER_TLS_VERIFY_FULL &&
	    !config_host_is_loopback(cfg->instance_host_pattern))
		log_warning("instances discovered through instance_host_pattern %s are not verified (server_tls = "
			    "%s): set server_tls = verify-full",
			    cfg->instance_host_pattern, config_server_tls_sslmode(cfg->server_tls));
#ifndef HAVE_LIBPQ_REQUIRE_AUTH
	if (cfg->server_require_scram && cfg->server_tls != SERVER_TLS_VERIFY_FULL)
		log_warning("server_require_scram cannot be enforced: pgmux was built with libpq %d, which sends a "
			    "password however a server asks for it (libpq 16 has require_auth); only server_tls = "
			    "verify-full keeps it from an impostor",
			    PQlibVersion() / 10000);
#endif
}

const char *control_health_check_user_problem(const struct config *cfg, int n_secrets)
{
	if (cfg->health_check_user[0] == '\0' && n_secrets > 1)
		return "[target] health_check_user must be set when secrets_dir holds more than one secret: name the "
		       "(unprivileged) user the health checks log in as";
	return NULL;
}

/*
 * Frees the replaced configurations no reader can hold any more. A timer
 * callback of the main thread, so the main thread itself holds none either;
 * it checks again a second later while some are left (a worker with nothing
 * to do still passes every second, for its janitor).
 */
static void reclaim_configs(evutil_socket_t fd, short what, void *arg)
{
	struct timeval again = {1, 0};
	int kept = 0, freed = 0;

	(void)fd;
	(void)what;
	(void)arg;
	for (int i = 0; i < C.n_retired; i++) {
		if (config_readers_passed(&C.retired[i].mark)) {
			config_free(C.retired[i].cfg);
			freed++;
		} else {
			C.retired[kept++] = C.retired[i];
		}
	}
	C.n_retired = kept;
	if (freed > 0)
		log_debug("freed %d replaced configuration(s), %d still in use", freed, kept);
	if (kept > 0)
		evtimer_add(C.reclaim_timer, &again);
}

/*
 * Publish next as the running configuration. The old one is freed by
 * reclaim_configs() once no reader can be using it; callers on the main
 * thread may go on using it until they return to the loop.
 */
static void publish(struct config *next)
{
	struct retired_config *r;
	struct timeval soon = {1, 0};

	C.retired = xrealloc(C.retired, sizeof(*C.retired) * (size_t)(C.n_retired + 1));
	r = &C.retired[C.n_retired++];
	r->cfg = config_publish(next, &r->mark);
	if (C.reclaim_timer && !evtimer_pending(C.reclaim_timer, NULL))
		evtimer_add(C.reclaim_timer, &soon);
}

static struct target_host *copy_hosts(const struct target_host *hosts, int n)
{
	struct target_host *copy = xcalloc((size_t)(n > 0 ? n : 1), sizeof(*copy));

	for (int i = 0; i < n; i++) {
		copy[i].host = xstrdup(hosts[i].host);
		copy[i].port = hosts[i].port;
	}
	return copy;
}

int control_hosts_from_secret(struct config *cfg, const struct target_host *fallback, int n_fallback, char *err,
			      size_t errlen)
{
	struct secret secret;
	struct target_host *hosts;

	if (cfg->hosts_from_secret[0] == '\0')
		return 0;
	if (!secrets_find(cfg->hosts_from_secret, &secret)) {
		snprintf(err, errlen, "hosts_from_secret: there is no secret for %s", cfg->hosts_from_secret);
	} else if (secret.host == NULL || secret.host[0] == '\0') {
		snprintf(err, errlen, "hosts_from_secret: the secret of %s has no host", cfg->hosts_from_secret);
		secret_clear(&secret);
	} else {
		hosts = xcalloc(1, sizeof(*hosts));
		hosts->host = xstrdup(secret.host);
		hosts->port = secret.port > 0 ? secret.port : 5432;
		secret_clear(&secret);
		config_free_hosts(cfg->hosts, cfg->n_hosts);
		cfg->hosts = hosts;
		cfg->n_hosts = 1;
		return 0;
	}
	if (fallback) {
		config_free_hosts(cfg->hosts, cfg->n_hosts);
		cfg->hosts = copy_hosts(fallback, n_fallback);
		cfg->n_hosts = n_fallback;
	}
	return -1;
}

/* Begin a cutover to hosts (takes them), the running configuration's in memory until the next reload. */
static void cutover_to(struct target_host *hosts, int n, struct worker *w, uint64_t client_id)
{
	const struct config *before = config_current();

	/* Instances named here get the same server_tls as hosts; say when that does not verify them. */
	control_warn_unverified_hosts(before, hosts, n);
	/* In memory only: the running config says so until the next reload (or the cutover is abandoned). */
	publish(config_with_hosts(before, hosts, n));
	cutover_begin(hosts, n, before->hosts, before->n_hosts, w, client_id);
}

/* A secret changed (Secrets Manager's refresh): does hosts_from_secret's host move? */
static void follow_secret_hosts(void)
{
	const struct config *cfg = config_current();
	struct config *probe;
	char err[256];

	if (cfg->hosts_from_secret[0] == '\0')
		return;
	probe = config_with_hosts(cfg, cfg->hosts, cfg->n_hosts);
	if (control_hosts_from_secret(probe, NULL, 0, err, sizeof(err)) != 0)
		log_error("%s; keeping hosts as they are", err);
	else if (!hosts_equal(cfg->hosts, cfg->n_hosts, probe->hosts, probe->n_hosts)) {
		log_info("hosts_from_secret: the secret of %s names %s:%d now: cutover", cfg->hosts_from_secret,
			 probe->hosts[0].host, probe->hosts[0].port);
		cutover_to(copy_hosts(probe->hosts, probe->n_hosts), probe->n_hosts, NULL, 0);
	}
	config_free(probe);
}

/* An abandoned cutover's way back: hosts are the running ones again (in memory). */
static void publish_hosts(const struct target_host *hosts, int n_hosts)
{
	publish(config_with_hosts(config_current(), hosts, n_hosts));
}

/*
 * Re-read the file and the secrets. An invalid file changes nothing.
 * Returns 0, or -1 with the reason in err.
 */
static int reload(char *err, size_t errlen, struct worker *w, uint64_t client_id)
{
	const struct config *old = config_current();
	struct config *next = config_load(C.config_path, err, errlen);
	const struct config_option *opt;
	struct tls_context *tls = NULL;
	bool hosts_changed;
	int n;

	if (next == NULL) {
		log_error("reload failed, keeping the running configuration: %s", err);
		return -1;
	}
	service_notify("RELOADING=1");
	if (next->client_tls_cert_file[0]) {
		tls = tls_context_load(next, err, errlen);
		if (tls == NULL) {
			log_error("reload failed, keeping the running configuration: %s", err);
			config_free(next);
			service_notify("READY=1");
			return -1;
		}
	}
	while ((opt = config_first_fixed_change(old, next)) != NULL) {
		log_warning("reload: [%s] %s can only change at start-up; keeping the running value", opt->section,
			    opt->name);
		config_copy_option(next, old, opt);
	}
	tls_set_current(tls);
	n = secrets_reload(next->secrets_dir, err, errlen);
	if (n < 0)
		log_error("reload: secrets not reloaded: %s", err);
	else
		log_info("reload: %d secret(s) loaded from %s", n, next->secrets_dir);
	secretsmgr_refresh_soon(); /* and AWS Secrets Manager's, on the aws thread */
	control_apply_log_settings(next);
	/*
	 * The secrets are in place already. Until this is fixed the health
	 * checks go on as the user they used so far (the one secret there was;
	 * see monitor_connect()), or fail, sending nothing, if there was none.
	 */
	if (control_health_check_user_problem(next, secrets_count()) != NULL)
		log_error("reload: %s; health checks keep the user they had, if any, until it is",
			  control_health_check_user_problem(next, secrets_count()));
	/* hosts_from_secret: the secret (just reloaded) says where; without one, the hosts stay as they are. */
	if (control_hosts_from_secret(next, old->hosts, old->n_hosts, err, errlen) != 0)
		log_error("reload: %s; keeping hosts as they are", err);
	control_warn_risky_settings(next);
	/* A CUTOVER TO in memory counts as the running hosts until the file says otherwise. */
	hosts_changed = !hosts_equal(old->hosts, old->n_hosts, next->hosts, next->n_hosts);
	publish(next);
	pool_refresh_passwords();
	pool_apply_caps();
	workers_spread_reloaded();
	log_info("configuration reloaded from %s", C.config_path);
	service_notify("READY=1");
	if (hosts_changed) {
		cutover_begin(copy_hosts(next->hosts, next->n_hosts), next->n_hosts, old->hosts, old->n_hosts, w,
			      client_id);
		return 1;
	}
	return 0;
}

/* ------------------------------------------------------------ shutdown */

static void drain_check(evutil_socket_t fd, short what, void *arg)
{
	int64_t open = pgmux_clients_open();

	if (open == 0) {
		log_info("all client sessions ended; stopping");
		event_base_loopbreak(C.base);
	} else if (pgmux_now_usec() >= C.drain_deadline_usec) {
		log_info("shutdown_timeout reached with %lld client(s) open; stopping", (long long)open);
		event_base_loopbreak(C.base);
	}
}

/*
 * tell_manager: say STOPPING=1 to systemd; not after a hand-over, when the
 * new process is the service's main process and this one leaves quietly.
 */
static void begin_drain(bool tell_manager)
{
	const struct config *cfg = config_current();
	struct timeval tick = { 0, 100 * 1000 };

	if (C.drain_timer) {
		log_info("second shutdown request: stopping now");
		event_base_loopbreak(C.base);
		return;
	}
	log_info("no longer accepting connections; waiting up to %d ms for sessions to end", cfg->shutdown_timeout_ms);
	if (tell_manager)
		service_notify("STOPPING=1");
	if (C.stop_listening)
		C.stop_listening();
	workers_broadcast(WORKER_MSG_DRAIN);
	C.drain_deadline_usec = pgmux_now_usec() + (uint64_t)cfg->shutdown_timeout_ms * 1000;
	C.drain_timer = event_new(C.base, -1, EV_PERSIST, drain_check, NULL);
	if (C.drain_timer == NULL)
		out_of_memory("the shutdown's timer");
	event_add(C.drain_timer, &tick);
}

void control_drain(const char *why)
{
	log_info("%s", why);
	begin_drain(false);
}

/* ------------------------------------------------------------ entry points */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	char err[512];

	switch (sig) {
	case SIGHUP:
		log_info("SIGHUP: reloading");
		reload(err, sizeof(err), NULL, 0);
		break;
	case SIGTERM:
		log_info("SIGTERM: stopping now");
		service_notify("STOPPING=1");
		event_base_loopbreak(C.base);
		break;
	case SIGINT:
		log_info("SIGINT: graceful shutdown");
		begin_drain(true);
		break;
	case SIGUSR1:
		log_info("SIGUSR1: pausing");
		pool_pause(NULL);
		break;
	case SIGUSR2:
		log_info("SIGUSR2: resuming");
		pool_resume(NULL);
		break;
	default:
		break;
	}
}

static void on_requests(evutil_socket_t fd, short what, void *arg)
{
	struct list_node queue, *node;
	char err[512];

	list_init(&queue);
	pthread_mutex_lock(&C.lock);
	while ((node = list_pop_front(&C.requests)) != NULL)
		list_append(&queue, node);
	pthread_mutex_unlock(&C.lock);
	while ((node = list_pop_front(&queue)) != NULL) {
		struct control_request *r = list_entry(node, struct control_request, node);

		switch (r->op) {
		case CONTROL_RELOAD: {
			int rc = reload(err, sizeof(err), r->reply_to, r->client_id);

			if (rc < 0)
				reply(r->reply_to, r->client_id, false, "reload failed, configuration unchanged: %s", err);
			else if (rc == 0)
				reply(r->reply_to, r->client_id, true, "RELOAD");
			/* rc 1: a cutover began; the reply comes when it is over. */
			break;
		}
		case CONTROL_CUTOVER: {
			struct target_host *hosts;
			int n;

			if (config_parse_hosts(r->arg, &hosts, &n, err, sizeof(err)) != 0) {
				reply(r->reply_to, r->client_id, false, "CUTOVER TO: %s", err);
				break;
			}
			cutover_to(hosts, n, r->reply_to, r->client_id);
			break;
		}
		case CONTROL_SECRET_HOSTS:
			follow_secret_hosts();
			break;
		case CONTROL_SHUTDOWN:
			log_info("SHUTDOWN from the admin console");
			reply(r->reply_to, r->client_id, true, "SHUTDOWN");
			begin_drain(true);
			break;
		}
		free(r->arg);
		free(r);
	}
}

void control_request(enum control_op op, const char *arg, struct worker *w, uint64_t client_id)
{
	struct control_request *r;

	/* Before control_init() (Secrets Manager's first read at start-up): start-up does it itself. */
	if (C.request_event == NULL)
		return;
	r = xcalloc(1, sizeof(*r));

	r->op = op;
	r->arg = arg ? xstrdup(arg) : NULL;
	r->reply_to = w;
	r->client_id = client_id;
	pthread_mutex_lock(&C.lock);
	list_append(&C.requests, &r->node);
	pthread_mutex_unlock(&C.lock);
	event_active(C.request_event, EV_READ, 0);
}

int control_init(struct event_base *base, const char *config_path, int log_level_override,
		 void (*stop_listening)(void))
{
	const int signums[5] = { SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2 };

	C.base = base;
	C.config_path = xstrdup(config_path);
	C.log_level_override = log_level_override;
	C.stop_listening = stop_listening;
	pthread_mutex_init(&C.lock, NULL);
	list_init(&C.requests);
	for (int i = 0; i < 5; i++) {
		C.signals[i] = evsignal_new(base, signums[i], on_signal, NULL);
		if (C.signals[i] == NULL || event_add(C.signals[i], NULL) != 0)
			return -1;
	}
	C.request_event = event_new(base, -1, 0, on_requests, NULL);
	C.reclaim_timer = evtimer_new(base, reclaim_configs, NULL);
	if (C.request_event == NULL || C.reclaim_timer == NULL || cutover_init(base, publish_hosts) != 0)
		return -1;
	return 0;
}

void control_cleanup(void)
{
	struct list_node *node;

	for (int i = 0; i < 5; i++)
		if (C.signals[i])
			event_free(C.signals[i]);
	if (C.request_event)
		event_free(C.request_event);
	cutover_cleanup();
	if (C.reclaim_timer)
		event_free(C.reclaim_timer);
	C.reclaim_timer = NULL;
	if (C.drain_timer)
		event_free(C.drain_timer);
	/* Start-up may have failed before control_init ran. */
	while (C.requests.next != NULL && (node = list_pop_front(&C.requests)) != NULL) {
		struct control_request *r = list_entry(node, struct control_request, node);

		free(r->arg);
		free(r);
	}
	free(C.config_path);
	memset(&C.signals, 0, sizeof(C.signals));
}

void control_free_retired_configs(void)
{
	for (int i = 0; i < C.n_retired; i++)
		config_free(C.retired[i].cfg);
	free(C.retired);
	C.retired = NULL;
	C.n_retired = 0;
}
