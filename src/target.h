/*
 * target.h: one PostgreSQL instance pgmux connects to (an Aurora writer or
 * reader, a primary or a standby): where it is, the role and health its
 * checks report, and its cap on connections. The pool (pool.c) owns the
 * targets and every field marked so is under its lock; a backend connection
 * (server.c) and the health checks (monitor.c) read where to connect.
 */
#ifndef PGMUX_TARGET_H
#define PGMUX_TARGET_H

#include <stdbool.h>
#include <stdint.h>

#include "list.h"

struct monitor_conn;

enum instance_role {
	ROLE_UNKNOWN, /* not checked yet, or unreachable since start-up */
	ROLE_WRITER,
	ROLE_READER,
};

struct target {
	struct list_node node;
	char *host;
	int port;
	char instance_id[64]; /* Aurora's identifier, else host:port */
	bool listed;          /* named in [target] hosts (not discovered) */
	bool is_aurora;
	enum instance_role role;
	bool healthy;         /* the last health check succeeded */
	bool suspect;         /* a backend connection was lost since: not used until the next check says */
	bool checked;         /* a health check has completed (either way) */
	int lag_ms;           /* replication lag of a reader */
	uint64_t checks_ok, checks_failed;
	uint64_t unhealthy_since_usec;
	int generation;       /* bumps when the role changes: older connections are not reused */
	bool paused;          /* PAUSE of this instance: no new transactions go to it */
	bool retired;         /* replaced by a cutover; kept while connections still refer to it */
	int check_requested;  /* atomic: a worker asked for a health check now */
	char check_failure[256]; /* why the last health check failed; "" when it passed */

	int max_connections; /* effective cap; learned from the server when configured as 0 */
	bool cap_known;
	int server_max;      /* what the server allows ordinary roles; 0 until the first connection asked (atomic) */
	int n_connections;   /* open or opening */
	int n_connecting;
	int n_idle;

	struct monitor_conn *monitor; /* the monitor thread's own state for this instance */
};

#endif
