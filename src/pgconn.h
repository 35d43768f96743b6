/*
 * pgconn.h: opening a libpq connection to a PostgreSQL instance without
 * blocking an event loop, and querying it the same way. The host name is resolved with evdns (libpq's own
 * lookup blocks), libpq starts on the numeric address with pgmux's settings
 * for backend connections (server_tls and friends), and the loop's events
 * drive PQconnectPoll. The pool's backend connections (server.c) and the
 * health checks (monitor.c) both open theirs here; what each does with the
 * connection once it is up is its own business. pgconn_query_start() runs
 * one query on such a connection, driven by the loop's events, for the
 * health checks and the cutover's control connections.
 */
#ifndef PGMUX_PGCONN_H
#define PGMUX_PGCONN_H

#include <stdbool.h>

#include <event2/event.h>
#include <libpq-fe.h>

struct evdns_base;
struct evdns_getaddrinfo_request;

/* Why an attempt failed. */
struct pgconn_failure {
	char message[512]; /* libpq's first line, as at its default verbosity */
	char reason[512];  /* the server's own words when it refused, else message */
	char sqlstate[6];   /* the server's SQLSTATE when it refused, else "" */
	bool refused;       /* the server itself refused the login (a FATAL), rather than the connection failing */
};

/* What the owner of an attempt hears; installed with pgconn_start(). */
struct pgconn_ops {
	/* Optional: the address is known, libpq starts connecting. */
	void (*resolved)(void *arg);
	/*
	 * The attempt ended: pg is the open connection, now the owner's
	 * (non-blocking, default error verbosity), or NULL and failure says why.
	 * Once per pgconn_start() unless cancelled before; may run inside
	 * pgconn_start(). The pgconn is idle by then and may be started again.
	 */
	void (*done)(void *arg, PGconn *pg, const struct pgconn_failure *failure);
};

/* Where and as whom to connect; pgconn_start() copies what it keeps. */
struct pgconn_params {
	const char *host; /* a name or a numeric address */
	int port;
	const char *user;
	const char *database;
	const char *password;         /* may be NULL */
	const char *application_name; /* may be NULL: the server's default */
};

/* One attempt, embedded in its owner; all zero when idle. */
struct pgconn {
	const struct pgconn_ops *ops;
	void *arg;
	struct event_base *base;
	struct evdns_getaddrinfo_request *dns_request;
	PGconn *pg;          /* while libpq connects */
	struct event *event; /* the direction PQconnectPoll asked for */
	struct pgconn_params params; /* copies, until libpq has them (the password is wiped then) */
};

/* Is host a numeric IPv4 or IPv6 address (no resolution needed)? */
bool pgconn_host_is_numeric(const char *host);

/* Start connecting on base, resolving with dns; c must be idle. */
void pgconn_start(struct pgconn *c, struct event_base *base, struct evdns_base *dns,
		  const struct pgconn_params *params, const struct pgconn_ops *ops, void *arg);

/* Give up an attempt in progress (nothing is called back); harmless on an idle one. */
void pgconn_cancel(struct pgconn *c);

/*
 * A query ended: res is its first result, whatever its status (an error the
 * server sent is a result too; later results are dropped), freed after the
 * call; or res is NULL and error says why the exchange itself failed (the
 * connection broke, no result came): the connection is of no further use.
 * The query is idle by then and may be started again, or cancelled.
 */
typedef void (*pgconn_result_fn)(void *arg, PGresult *res, const char *error);

/* One query under way on an open, non-blocking connection; embedded in its owner, all zero when idle. */
struct pgconn_query {
	PGconn *pg;
	struct event_base *base;
	struct event *event; /* the direction the exchange waits for */
	PGresult *result;    /* the first result, until the last has come */
	pgconn_result_fn done;
	void *arg;
};

/*
 * Send sql (with n_params text parameters, $1...) on pg, an open connection
 * with nothing under way, and drive the exchange on base until its last
 * result; q must be idle. done hears once, unless cancelled before; it may
 * run inside this call (the query could not be sent).
 */
void pgconn_query_start(struct pgconn_query *q, struct event_base *base, PGconn *pg, const char *sql, int n_params,
			const char *const *params, pgconn_result_fn done, void *arg);

/* Stop waiting for a query (nothing is called back; the connection is not closed); harmless when idle. */
void pgconn_query_cancel(struct pgconn_query *q);

/* Is a query under way? */
bool pgconn_query_busy(const struct pgconn_query *q);

#endif
