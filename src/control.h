/*
 * control.h: operations on the whole process, run on the main thread:
 * reload (SIGHUP, RELOAD), cutover to new instances (a reload that changes
 * hosts, or CUTOVER TO), pause and resume (SIGUSR1/SIGUSR2, PAUSE/RESUME),
 * and shutdown (SIGINT, SHUTDOWN, SIGTERM). The admin console asks from its
 * worker through a queue and gets the answer back in that worker's inbox.
 */
#ifndef PGMUX_CONTROL_H
#define PGMUX_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

struct worker;

enum control_op {
	CONTROL_RELOAD,
	CONTROL_CUTOVER,  /* arg: the new hosts */
	CONTROL_SHUTDOWN, /* graceful, as SIGINT */
	CONTROL_SECRET_HOSTS, /* a secret changed: follow hosts_from_secret (a cutover if its host moved) */
};

/*
 * Set up signals, the request queue and the pool janitor on the main loop.
 * stop_listening closes the listeners when a graceful shutdown begins.
 */
int control_init(struct event_base *base, const char *config_path, int log_level_override,
		 void (*stop_listening)(void));
void control_cleanup(void);

/* -v / -q: a level that wins over the configuration's log_level (-1: none). */
void control_set_log_level_override(int level);

/* Apply log level and file from cfg (start-up and reload). */
struct config;
struct target_host;

/*
 * Log a WARNING for each setting of cfg that puts passwords or the console at
 * risk: client_auth = trust, servers not on loopback that are not verified
 * (server_tls below verify-full), server_require_scram that this libpq cannot
 * enforce. At start-up and at every reload.
 */
void control_warn_risky_settings(const struct config *cfg);

/* WARNING for each of hosts that is not on loopback while cfg's server_tls is below verify-full. */
void control_warn_unverified_hosts(const struct config *cfg, const struct target_host *hosts, int n_hosts);

/*
 * With an empty health_check_user, the health checks need the one secret
 * there is: NULL when that holds for n_secrets, else the error to report.
 */
const char *control_health_check_user_problem(const struct config *cfg, int n_secrets);

void control_apply_log_settings(const void *cfg);

/*
 * hosts_from_secret: make cfg's hosts the host and port of that secret.
 * When it has none (or there is no such secret), cfg gets fallback's hosts
 * (none: it keeps its own) and -1 is returned with the reason in err.
 */
int control_hosts_from_secret(struct config *cfg, const struct target_host *fallback, int n_fallback, char *err,
			      size_t errlen);

/*
 * Ask the main thread for op (thread safe). When it is done, the worker w
 * gets WORKER_MSG_ADMIN_REPLY for client_id with the outcome.
 */
void control_request(enum control_op op, const char *arg, struct worker *w, uint64_t client_id);

/* A graceful shutdown (or a hand-over to a new process) has begun: no new clients here. */
bool control_is_draining(void);
/*
 * Begin a graceful shutdown, as SIGINT does (why is logged), after a
 * hand-over to a new process: systemd hears nothing of it (the new process
 * is the service's main process now).
 */
void control_drain(const char *why);

/* Configs replaced by reloads stay allocated until exit; this frees them. */
void control_free_retired_configs(void);

#endif
