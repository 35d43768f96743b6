/*
 * pgconn.c: non-blocking libpq connections (see pgconn.h). An attempt goes
 * from the evdns lookup (skipped for a numeric address) to
 * PQconnectStartParams with hostaddr, then waits on the loop for whichever
 * direction PQconnectPoll asks for, following the socket should libpq
 * replace it (another address, a retry without TLS). Error verbosity is
 * raised while it connects so that a FATAL comes with its SQLSTATE. A query
 * (pgconn_query_start()) is sent with PQsendQuery (PQsendQueryParams with
 * parameters), flushed as the socket takes it, and read with PQconsumeInput
 * until PQgetResult has no more.
 */
#include "pgconn.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/dns.h>
#include <openssl/crypto.h>

#include "config.h"
#include "iamauth.h"
#include "pgmux.h"
#include "util.h"

#include "build_config.h"

static void pgconn_on_event(evutil_socket_t fd, short what, void *arg);
static void pgconn_query_on_event(evutil_socket_t fd, short what, void *arg);

bool pgconn_host_is_numeric(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	return inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
}

/* The numeric address of a resolver answer. */
static void format_address(const struct evutil_addrinfo *res, char *out, size_t len)
{
	if (res->ai_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)res->ai_addr)->sin6_addr, out, (socklen_t)len);
	else
		inet_ntop(AF_INET, &((const struct sockaddr_in *)res->ai_addr)->sin_addr, out, (socklen_t)len);
}

/* Forget the copied parameters, wiping the password. */
static void clear_params(struct pgconn_params *p)
{
	if (p->password) {
		OPENSSL_cleanse((char *)p->password, strlen(p->password));
		free((char *)p->password);
	}
	free((char *)p->host);
	free((char *)p->user);
	free((char *)p->database);
	free((char *)p->application_name);
	memset(p, 0, sizeof(*p));
}

void pgconn_cancel(struct pgconn *c)
{
	if (c->dns_request) {
		/* Its callback sees EVUTIL_EAI_CANCEL and leaves c alone. */
		evdns_getaddrinfo_cancel(c->dns_request);
		c->dns_request = NULL;
	}
	if (c->event) {
		event_free(c->event);
		c->event = NULL;
	}
	if (c->pg) {
		PQfinish(c->pg);
		c->pg = NULL;
	}
	clear_params(&c->params);
	c->ops = NULL;
	c->arg = NULL;
}

/* The attempt ended: c is idle before the owner hears, so that it may start again. */
static void pgconn_finish(struct pgconn *c, PGconn *pg, const struct pgconn_failure *failure)
{
	const struct pgconn_ops *ops = c->ops;
	void *arg = c->arg;

	pgconn_cancel(c);
	ops->done(arg, pg, failure);
}

static void pgconn_fail(struct pgconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A failure of the connection itself (no server refused anything). */
static void pgconn_fail(struct pgconn *c, const char *fmt, ...)
{
	struct pgconn_failure f;
	va_list ap;

	memset(&f, 0, sizeof(f));
	va_start(ap, fmt);
	vsnprintf(f.message, sizeof(f.message), fmt, ap);
	va_end(ap);
	f.message[strcspn(f.message, "\n")] = '\0';
	memcpy(f.reason, f.message, sizeof(f.reason));
	pgconn_finish(c, NULL, &f);
}

/*
 * PQconnectPoll failed: libpq's message, with the server's reason and
 * SQLSTATE picked out when the server refused the login. Verbose, a FATAL
 * reads "...failed: FATAL:  57P03: the database system is shutting down";
 * message leaves the SQLSTATE out, as the default verbosity would.
 */
static void pgconn_poll_failed(struct pgconn *c)
{
	struct pgconn_failure f;
	const char *msg = PQerrorMessage(c->pg);
	const char *fatal = strstr(msg, "FATAL:  ");
	const char *words = fatal ? fatal + 8 : msg;

	memset(&f, 0, sizeof(f));
	f.refused = fatal != NULL;
	if (fatal && strspn(words, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 5 && words[5] == ':' &&
	    words[6] == ' ') {
		memcpy(f.sqlstate, words, 5);
		/* What precedes the SQLSTATE, then what follows it. */
		snprintf(f.message, sizeof(f.message), "%.*s%s", (int)(words - msg), msg, words + 7);
		words += 7;
	} else {
		snprintf(f.message, sizeof(f.message), "%s", msg);
	}
	/* Show the server's own reason when there is one. */
	snprintf(f.reason, sizeof(f.reason), "%s", words);
	f.message[strcspn(f.message, "\n")] = '\0';
	f.reason[strcspn(f.reason, "\n")] = '\0';
	pgconn_finish(c, NULL, &f);
}

/* Wait for the direction libpq asked for, on whatever socket it uses now. */
static void pgconn_wait(struct pgconn *c, bool want_write)
{
	if (c->event)
		event_free(c->event);
	c->event = event_new(c->base, PQsocket(c->pg), want_write ? EV_WRITE : EV_READ, pgconn_on_event, c);
	if (c->event == NULL) {
		pgconn_fail(c, "out of memory");
		return;
	}
	event_add(c->event, NULL);
}

static void pgconn_poll(struct pgconn *c)
{
	PGconn *pg;

	switch (PQconnectPoll(c->pg)) {
	case PGRES_POLLING_READING:
		pgconn_wait(c, false);
		return;
	case PGRES_POLLING_WRITING:
		pgconn_wait(c, true);
		return;
	case PGRES_POLLING_FAILED:
		pgconn_poll_failed(c);
		return;
	default:
		break;
	}
	/* Connected: libpq has consumed everything up to the first ReadyForQuery. */
	pg = c->pg;
	c->pg = NULL;
	PQsetErrorVerbosity(pg, PQERRORS_DEFAULT);
	/* Non-blocking, so that PQfinish's Terminate can never block a loop. */
	PQsetnonblocking(pg, 1);
	pgconn_finish(c, pg, NULL);
}

static void pgconn_on_event(evutil_socket_t fd, short what, void *arg)
{
	pgconn_poll(arg);
}

/* The address is known: start libpq on it. */
static void pgconn_connect(struct pgconn *c, const char *hostaddr)
{
	const struct config *cfg = config_current();
	const struct pgconn_params *p = &c->params;
	char port[16];
	const char *keys[16], *values[16], *password;
	int n = 0;

	if (c->ops->resolved)
		c->ops->resolved(c->arg);
	snprintf(port, sizeof(port), "%d", p->port);
	keys[n] = "host", values[n++] = p->host;
	/* A numeric address: libpq must not resolve names itself (that blocks). */
	keys[n] = "hostaddr", values[n++] = hostaddr;
	keys[n] = "port", values[n++] = port;
	keys[n] = "user", values[n++] = p->user;
	keys[n] = "dbname", values[n++] = p->database;
	/* server_auth = iam: an RDS IAM token stands in for the password (iamauth.c). */
	password = iamauth_password(cfg, p->host, p->port, p->user, p->password);
	if (password)
		keys[n] = "password", values[n++] = password;
#ifdef HAVE_LIBPQ_REQUIRE_AUTH
	/* No password for a server that asks for it in clear text or as MD5: it may not be ours. */
	if (cfg->server_require_scram && cfg->server_auth != SERVER_AUTH_IAM)
		keys[n] = "require_auth", values[n++] = "scram-sha-256";
#endif
	keys[n] = "sslmode", values[n++] = config_server_tls_sslmode(cfg->server_tls);
	if (cfg->server_tls_ca_file && cfg->server_tls_ca_file[0])
		keys[n] = "sslrootcert", values[n++] = cfg->server_tls_ca_file;
	/* GSSAPI would look for a credential cache on every connect; pgmux never uses it. */
	keys[n] = "gssencmode", values[n++] = "disable";
	/* Pool connections carry no name of their own: clients see the server's default, as directly. */
	if (p->application_name)
		keys[n] = "application_name", values[n++] = p->application_name;
	/* Let the kernel notice dead backends on idle connections. */
	keys[n] = "keepalives", values[n++] = "1";
	keys[n] = "keepalives_idle", values[n++] = "30";
	keys[n] = NULL, values[n] = NULL;
	c->pg = PQconnectStartParams(keys, values, 0);
	/* libpq has its own copies now. */
	clear_params(&c->params);
	if (c->pg == NULL) {
		pgconn_fail(c, "out of memory");
		return;
	}
	if (PQstatus(c->pg) == CONNECTION_BAD) {
		pgconn_fail(c, "%s", PQerrorMessage(c->pg));
		return;
	}
	/* So that a FATAL during login comes with its SQLSTATE (see pgconn_poll_failed()). */
	PQsetErrorVerbosity(c->pg, PQERRORS_VERBOSE);
	/* libpq's rule: behave as if PQconnectPoll had returned PGRES_POLLING_WRITING. */
	pgconn_wait(c, true);
}

static void pgconn_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
	struct pgconn *c = arg;
	char hostaddr[64];

	/* A cancelled lookup's pgconn may be gone or busy with another attempt: do not touch it. */
	if (result == EVUTIL_EAI_CANCEL)
		return;
	c->dns_request = NULL;
	if (result != 0 || res == NULL) {
		if (res)
			evutil_freeaddrinfo(res);
		pgconn_fail(c, "could not resolve host \"%s\": %s", c->params.host, evutil_gai_strerror(result));
		return;
	}
	format_address(res, hostaddr, sizeof(hostaddr));
	evutil_freeaddrinfo(res);
	pgconn_connect(c, hostaddr);
}

void pgconn_start(struct pgconn *c, struct event_base *base, struct evdns_base *dns,
		  const struct pgconn_params *params, const struct pgconn_ops *ops, void *arg)
{
	struct evutil_addrinfo hints;
	struct evdns_getaddrinfo_request *request;

	pgconn_cancel(c);
	c->ops = ops;
	c->arg = arg;
	c->base = base;
	c->params.host = xstrdup(params->host);
	c->params.port = params->port;
	c->params.user = xstrdup(params->user);
	c->params.database = xstrdup(params->database);
	c->params.password = params->password ? xstrdup(params->password) : NULL;
	c->params.application_name = params->application_name ? xstrdup(params->application_name) : NULL;
	if (pgconn_host_is_numeric(params->host)) {
		pgconn_connect(c, params->host);
		return;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	/* The callback may run before this returns (a cached answer, a failure): then it returns NULL. */
	request = evdns_getaddrinfo(dns, params->host, NULL, &hints, pgconn_resolved, c);
	if (request)
		c->dns_request = request;
}

/* ------------------------------------------------------------------ queries */

void pgconn_query_cancel(struct pgconn_query *q)
{
	if (q->event) {
		event_free(q->event);
		q->event = NULL;
	}
	if (q->result) {
		PQclear(q->result);
		q->result = NULL;
	}
	q->pg = NULL;
	q->base = NULL;
	q->done = NULL;
	q->arg = NULL;
}

bool pgconn_query_busy(const struct pgconn_query *q)
{
	return q->done != NULL;
}

/* The query ended: q is idle before its owner hears, so that it may start another. */
static void pgconn_query_finish(struct pgconn_query *q, PGresult *res, const char *error)
{
	pgconn_result_fn done = q->done;
	void *arg = q->arg;
	char copy[512];

	if (error) {
		/* libpq's message lives in the connection, which the owner may close: one line of it, copied. */
		snprintf(copy, sizeof(copy), "%s", error);
		copy[strcspn(copy, "\n")] = '\0';
		error = copy;
	}
	/* res, if it is the first result, is the caller's to free; one kept before an error is freed here. */
	if (q->result != res)
		PQclear(q->result);
	q->result = NULL;
	pgconn_query_cancel(q);
	done(arg, res, error);
}

static void pgconn_query_wait(struct pgconn_query *q, short what)
{
	if (q->event)
		event_free(q->event);
	q->event = event_new(q->base, PQsocket(q->pg), what, pgconn_query_on_event, q);
	if (q->event == NULL || event_add(q->event, NULL) != 0)
		pgconn_query_finish(q, NULL, "out of memory");
}

void pgconn_query_start(struct pgconn_query *q, struct event_base *base, PGconn *pg, const char *sql, int n_params,
			const char *const *params, pgconn_result_fn done, void *arg)
{
	int flushed;

	pgconn_query_cancel(q);
	q->pg = pg;
	q->base = base;
	q->done = done;
	q->arg = arg;
	/* Without parameters, the simple protocol: one message. */
	if (!(n_params ? PQsendQueryParams(pg, sql, n_params, NULL, params, NULL, NULL, 0) : PQsendQuery(pg, sql))) {
		pgconn_query_finish(q, NULL, PQerrorMessage(pg));
		return;
	}
	flushed = PQflush(pg);
	if (flushed < 0) {
		pgconn_query_finish(q, NULL, PQerrorMessage(pg));
		return;
	}
	pgconn_query_wait(q, flushed ? EV_READ | EV_WRITE : EV_READ);
}

static void pgconn_query_on_event(evutil_socket_t fd, short what, void *arg)
{
	struct pgconn_query *q = arg;
	int flushed = 0;

	(void)fd;
	if (q->done == NULL)
		return;
	if (what & EV_WRITE) {
		flushed = PQflush(q->pg);
		if (flushed < 0) {
			pgconn_query_finish(q, NULL, PQerrorMessage(q->pg));
			return;
		}
	}
	if (!PQconsumeInput(q->pg)) {
		pgconn_query_finish(q, NULL, PQerrorMessage(q->pg));
		return;
	}
	while (!PQisBusy(q->pg)) {
		PGresult *res = PQgetResult(q->pg);

		if (res == NULL) {
			PGresult *first = q->result;

			if (first == NULL) {
				pgconn_query_finish(q, NULL, "no result");
				return;
			}
			pgconn_query_finish(q, first, NULL);
			PQclear(first);
			return;
		}
		if (q->result)
			PQclear(res);
		else
			q->result = res;
	}
	/* A long query (the cutover's sequences) may not have left in one go. */
	pgconn_query_wait(q, flushed ? EV_READ | EV_WRITE : EV_READ);
}
