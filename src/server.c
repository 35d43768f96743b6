/*
 * server.c: backend connections (see server.h). The life of one:
 * RESOLVING (evdns, only for host names) -> CONNECTING (PQconnectPoll driven
 * by this worker's loop) -> INTERNAL (a setup query when the pool needs one)
 * -> handed to the pool -> ACTIVE (relaying for a client) or IDLE (parked),
 * and back through INTERNAL (reset) when its client leaves.
 */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/dns.h>
#include <jansson.h>
#include <netdb.h>

#include "cancel.h"
#include "client.h"
#include "log.h"
#include "monitor.h"
#include "pgmux.h"
#include "params.h"
#include "pool.h"
#include "proto.h"
#include "util.h"
#include "worker.h"

#include "build_config.h"

/* Stop reading from the backend while this much is queued for its client. */
#define SERVER_CLIENT_HIGH_WATER (256 * 1024)
/* Bytes read from one backend per wake-up before others get a turn. */
#define SERVER_READ_BUDGET (256 * 1024)
/* Messages pgmux must see whole are small; a longer one is a broken stream. */
#define SERVER_MAX_INSPECTED_MESSAGE (1024 * 1024)

#define log_server(level, s, fmt, ...) \
	log_at(level, "S-%llu " LOG_NAME "@" LOG_NAME " %s:%d pid=%d: " fmt, (unsigned long long)(s)->id, \
	       (s)->pool ? (s)->pool->user : "-", (s)->pool ? (s)->pool->database : "-", \
	       (s)->target ? (s)->target->host : "-", (s)->target ? (s)->target->port : 0, (s)->backend_pid, \
	       ##__VA_ARGS__)

static uint64_t next_server_id = 1;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct list_node registry = LIST_HEAD_INIT(registry);

/* The parameters PostgreSQL 15 reports with ParameterStatus. */
static const char *const reported_params[] = {
	"application_name", "client_encoding", "DateStyle", "default_transaction_read_only",
	"in_hot_standby", "integer_datetimes", "IntervalStyle", "is_superuser", "server_encoding",
	"server_version", "session_authorization", "standard_conforming_strings", "TimeZone",
};

static const char *const server_state_names[] = {
	[SERVER_RESOLVING] = "resolving", [SERVER_CONNECTING] = "connecting",
	[SERVER_INTERNAL] = "internal",   [SERVER_IDLE] = "idle",
	[SERVER_ACTIVE] = "active",       [SERVER_CLOSED] = "closed",
};

static void server_on_event(evutil_socket_t fd, short what, void *arg);
static void server_connect_poll(struct server *s);
static void server_setup_done(struct server *s, bool ok, void *arg);

const char *server_param(const struct server *s, const char *name)
{
	for (int i = 0; i < s->n_params; i++)
		if (strcasecmp(s->params[i].name, name) == 0)
			return s->params[i].value;
	return NULL;
}

void server_set_param(struct server *s, const char *name, const char *value)
{
	s->params_fingerprint_valid = false;
	struct server_param *p;
	char *copy = xstrdup(value);

	for (int i = 0; i < s->n_params; i++) {
		if (strcasecmp(s->params[i].name, name) == 0) {
			free(s->params[i].value);
			s->params[i].value = copy;
			return;
		}
	}
	p = xrealloc(s->params, sizeof(*p) * (size_t)(s->n_params + 1));
	s->params = p;
	p[s->n_params].name = xstrdup(name);
	p[s->n_params].value = copy;
	s->n_params++;
}

/* --------------------------------------------------------------- connecting */

/*
 * A new connection failed. answered says whether the server itself refused
 * (a FATAL: bad password, no such database, a failing init_query): then the
 * clients waiting in the pool hear why. A connection refused or timed out
 * says the instance may be down; that is the health check's call, and the
 * clients keep waiting for it or for a new writer.
 */
static void server_connect_failed(struct server *s, const char *why, bool answered)
{
	char message[512];
	struct pool *pool = s->pool;

	snprintf(message, sizeof(message), "pgmux could not connect to the database server: %s", why);
	log_server(LOG_LEVEL_WARNING, s, "connection failed: %s", why);
	if (s->worker)
		STAT_INC(s->worker, server_connect_failures);
	/* The instance may be down: find out now rather than at the next interval. */
	monitor_check_now(s->target);
	/* The pool fails the waiting clients; server_close must not free the slot again. */
	if (pool)
		pool_connect_failed(s, SQLSTATE_CONNECTION_FAILURE, message, answered);
	server_close(s, "connection failed");
}

static void server_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	server_connect_failed(s, s->state == SERVER_INTERNAL ? "timed out running the setup query or init_query"
							     : "timed out connecting",
			      false);
}

PGconn *server_libpq_start(const struct target *t, const char *hostaddr, const char *user, const char *database,
			   const char *password, const char *application_name)
{
	const struct config *cfg = config_current();
	char port[16];
	const char *keys[16], *values[16];
	int n = 0;

	snprintf(port, sizeof(port), "%d", t->port);
	keys[n] = "host", values[n++] = t->host;
	/* A numeric address: libpq must not resolve names itself (that blocks). */
	keys[n] = "hostaddr", values[n++] = hostaddr;
	keys[n] = "port", values[n++] = port;
	keys[n] = "user", values[n++] = user;
	keys[n] = "dbname", values[n++] = database;
	if (password)
		keys[n] = "password", values[n++] = password;
#ifdef HAVE_LIBPQ_REQUIRE_AUTH
	/* No password for a server that asks for it in clear text or as MD5: it may not be ours. */
	if (cfg->server_require_scram)
		keys[n] = "require_auth", values[n++] = "scram-sha-256";
#endif
	keys[n] = "sslmode", values[n++] = config_server_tls_sslmode(cfg->server_tls);
	if (cfg->server_tls_ca_file && cfg->server_tls_ca_file[0])
		keys[n] = "sslrootcert", values[n++] = cfg->server_tls_ca_file;
	/* GSSAPI would look for a credential cache on every connect; pgmux never uses it. */
	keys[n] = "gssencmode", values[n++] = "disable";
	if (application_name)
		keys[n] = "application_name", values[n++] = application_name;
	/* Pool connections carry no name of their own: clients see the server's default, as directly. */
	/* Let the kernel notice dead backends on idle connections. */
	keys[n] = "keepalives", values[n++] = "1";
	keys[n] = "keepalives_idle", values[n++] = "30";
	keys[n] = NULL, values[n] = NULL;
	return PQconnectStartParams(keys, values, 0);
}

bool server_host_is_numeric(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	return inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
}

void server_format_address(const struct evutil_addrinfo *res, char *out, size_t len)
{
	if (res->ai_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)res->ai_addr)->sin6_addr, out, (socklen_t)len);
	else
		inet_ntop(AF_INET, &((const struct sockaddr_in *)res->ai_addr)->sin_addr, out, (socklen_t)len);
}

static void server_start_libpq(struct server *s)
{
	struct pool *pool = s->pool;

	server_set_state(s, SERVER_CONNECTING);
	s->pg = server_libpq_start(s->target, s->hostaddr, pool->user, pool->database, pool->password, NULL);
	if (s->pg == NULL) {
		server_connect_failed(s, "out of memory", false);
		return;
	}
	if (PQstatus(s->pg) == CONNECTION_BAD) {
		char why[256];

		snprintf(why, sizeof(why), "%s", PQerrorMessage(s->pg));
		why[strcspn(why, "\n")] = '\0';
		server_connect_failed(s, why, false);
		return;
	}
	/* So that a FATAL during login comes with its SQLSTATE (see server_connect_poll). */
	PQsetErrorVerbosity(s->pg, PQERRORS_VERBOSE);
	/* libpq's rule: behave as if PQconnectPoll had returned PGRES_POLLING_WRITING. */
	s->pg_wants_write = true;
	io_init(&s->io, PQsocket(s->pg));
	s->io.ev_write = event_new(s->worker->base, s->io.fd, EV_WRITE, server_on_event, s);
	if (s->io.ev_write == NULL) {
		server_connect_failed(s, "out of memory", false);
		return;
	}
	event_add(s->io.ev_write, NULL);
	s->io.writing = true;
}

/* Wait for the direction libpq asked for, following the socket if it changed. */
static void server_connect_wait(struct server *s, bool want_write)
{
	int fd = PQsocket(s->pg);
	struct event **ev = want_write ? &s->io.ev_write : &s->io.ev_read;

	if (fd != s->io.fd) {
		io_detach(&s->io);
		s->io.fd = fd;
	}
	io_detach(&s->io);
	*ev = event_new(s->worker->base, fd, want_write ? EV_WRITE : EV_READ, server_on_event, s);
	if (*ev == NULL) {
		server_connect_failed(s, "out of memory", false);
		return;
	}
	event_add(*ev, NULL);
}

/*
 * A login refused with 57P01-57P03 (shutting down, crashed, starting up or in
 * recovery): the instance is unavailable, not refusing these clients. Like a
 * refused connection, that is the health check's call, and the waiting
 * clients wait for it or for a new writer (a failover).
 */
static bool sqlstate_instance_unavailable(const char *sqlstate)
{
	return strcmp(sqlstate, SQLSTATE_ADMIN_SHUTDOWN) == 0 || strcmp(sqlstate, SQLSTATE_CRASH_SHUTDOWN) == 0 ||
	       strcmp(sqlstate, SQLSTATE_CANNOT_CONNECT_NOW) == 0;
}

static void server_connect_poll(struct server *s)
{
	switch (PQconnectPoll(s->pg)) {
	case PGRES_POLLING_READING:
		server_connect_wait(s, false);
		return;
	case PGRES_POLLING_WRITING:
		server_connect_wait(s, true);
		return;
	case PGRES_POLLING_FAILED: {
		char why[512], sqlstate[6] = "";
		const char *msg = PQerrorMessage(s->pg);
		const char *fatal = strstr(msg, "FATAL:  ");
		const char *reason = fatal ? fatal + 8 : msg;

		/* Verbose: "FATAL:  57P03: the database system is shutting down". */
		if (fatal && strspn(reason, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 5 && reason[5] == ':' &&
		    reason[6] == ' ') {
			memcpy(sqlstate, reason, 5);
			reason += 7;
		}
		/* Show the server's own reason when there is one. */
		snprintf(why, sizeof(why), "%s", reason);
		why[strcspn(why, "\n")] = '\0';
		server_connect_failed(s, why, fatal != NULL && !sqlstate_instance_unavailable(sqlstate));
		return;
	}
	default:
		break;
	}

	/*
	 * Connected: libpq has consumed everything up to the first ReadyForQuery.
	 * The connect timer keeps running through the setup query and init_query
	 * (server_init_done stops it): one that never ends (a lock wait) must not
	 * hold the slot forever.
	 */
	PQsetErrorVerbosity(s->pg, PQERRORS_DEFAULT);
	io_detach(&s->io);
	/* Non-blocking, so that PQfinish's Terminate can never block the loop. */
	PQsetnonblocking(s->pg, 1);
	__atomic_store_n(&s->backend_pid, PQbackendPID(s->pg), __ATOMIC_RELAXED);
	for (size_t i = 0; i < sizeof(reported_params) / sizeof(reported_params[0]); i++) {
		const char *v = PQparameterStatus(s->pg, reported_params[i]);

		if (v) {
			server_set_param(s, reported_params[i], v);
			params_put(&s->defaults, reported_params[i], v);
		}
	}
	io_init(&s->io, PQsocket(s->pg));
	if (PQsslInUse(s->pg))
		io_adopt_tls(&s->io, PQsslStruct(s->pg, "OpenSSL"));
	io_set_nodelay(s->io.fd);
	s->tx_status = 'I';
	if (io_attach(&s->io, s->worker->base, server_on_event, s) != 0) {
		server_connect_failed(s, "out of memory", false);
		return;
	}
	log_server(LOG_LEVEL_DEBUG, s, "connected%s", PQsslInUse(s->pg) ? " with TLS" : "");
	/*
	 * Learn the server's limit (used once per instance, whatever the config
	 * says, so that a reload can switch to max_connections = 0) and whether
	 * the pool's database has code that a write may run and that may change
	 * the session (see struct pool's writes_opaque): "limit flag". The
	 * first connection of a pool asks, then one a minute at most.
	 */
	if (__atomic_load_n(&s->target->server_max, __ATOMIC_RELAXED) > 0 &&
	    (s->pool == NULL || !pool_writes_check_due(s->pool, pgmux_now_usec()))) {
		server_setup_done(s, true, NULL);
		return;
	}
	server_run_query(s,
			 "SELECT (pg_catalog.current_setting('max_connections')::int - "
			 "pg_catalog.current_setting('superuser_reserved_connections')::int)::text || ' ' || "
			 "EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang "
			 "WHERE p.pronamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, "
			 "'information_schema'::pg_catalog.regnamespace) AND l.lanname NOT IN ('c', 'internal') AND "
			 "(l.lanname NOT IN ('sql', 'plpgsql') OR p.prosrc ~* "
			 "'set_config|pg_(try_)?advisory_lock|\\mexecute\\M|(^|;|\\mbegin\\M|\\mthen\\M|\\melse\\M|"
			 "\\mloop\\M)\\s*(set|reset)\\M|\\mprepare\\M|\\mdeallocate\\M|\\mlisten\\M|"
			 "\\mtemp(orary)?\\M|\\mdiscard\\M|\\mcall\\M'))::int::text",
			 server_setup_done, NULL);
}

static void server_init_done(struct server *s, bool ok, void *arg)
{
	char why[512];

	if (!ok) {
		snprintf(why, sizeof(why), "init_query failed: %s", s->query_error ? s->query_error : "not idle afterwards");
		server_connect_failed(s, why, true);
		return;
	}
	/*
	 * init_query may have changed reported parameters (SET TimeZone, say).
	 * Their values now, not those at login, are this connection's defaults:
	 * client_link() puts a parameter that a client never changed back to its
	 * default, which would otherwise undo init_query for every client.
	 */
	for (int i = 0; i < s->n_params; i++)
		params_put(&s->defaults, s->params[i].name, s->params[i].value);
	/* Ready within server_connect_timeout; the timer is on this worker's loop, s may leave it now. */
	if (s->timer) {
		event_free(s->timer);
		s->timer = NULL;
	}
	s->created_usec = s->last_used_usec = pgmux_now_usec();
	pool_connection_ready(s);
}

static void server_setup_done(struct server *s, bool ok, void *arg)
{
	const struct config *cfg = config_current();

	if (!ok) {
		server_connect_failed(s, s->query_error ? s->query_error : "setup query failed", true);
		return;
	}
	if (s->query_value) {
		int limit = 0, writes_opaque = 1;

		/* Unreadable: writes stay opaque (fail closed). */
		(void)sscanf(s->query_value, "%d %d", &limit, &writes_opaque);
		if (__atomic_load_n(&s->target->server_max, __ATOMIC_RELAXED) <= 0)
			pool_learn_cap(s->target, limit);
		if (s->pool) {
			pool_set_writes_opaque(s->pool, writes_opaque != 0);
			__atomic_store_n(&s->pool->writes_checked_usec, pgmux_now_usec(), __ATOMIC_RELAXED);
		}
		free(s->query_value);
		s->query_value = NULL;
	}
	if (cfg->init_query[0]) {
		server_run_query(s, cfg->init_query, server_init_done, NULL);
		return;
	}
	server_init_done(s, true, NULL);
}

static void server_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
	struct server *s = arg;

	/* A cancelled lookup's server may already be freed: do not touch it. */
	if (result == EVUTIL_EAI_CANCEL)
		return;
	s->dns_request = NULL;
	if (result != 0 || res == NULL) {
		char why[256];

		snprintf(why, sizeof(why), "could not resolve host \"%s\": %s", s->target->host,
			 evutil_gai_strerror(result));
		if (res)
			evutil_freeaddrinfo(res);
		server_connect_failed(s, why, false);
		return;
	}
	server_format_address(res, s->hostaddr, sizeof(s->hostaddr));
	evutil_freeaddrinfo(res);
	server_start_libpq(s);
}

void server_connect(struct worker *w, struct pool *pool, struct target *target)
{
	const struct config *cfg = config_current();
	struct server *s = xcalloc(1, sizeof(*s));
	struct timeval tv;

	s->id = __atomic_fetch_add(&next_server_id, 1, __ATOMIC_RELAXED);
	server_set_pool(s, pool);
	s->target = target;
	/* A role change while this connects makes it unusable; pool_release will see. */
	s->generation = target->generation;
	s->worker = w;
	s->counted_connecting = true;
	server_set_state(s, SERVER_RESOLVING);
	s->io.fd = -1;
	strmap_init(&s->defaults);
	strmap_init(&s->prepared);
	strmap_init(&s->applied);
	list_init(&s->pool_node);
	list_append(&w->servers, &s->worker_node);
	pthread_mutex_lock(&registry_lock);
	list_append(&registry, &s->registry_node);
	pthread_mutex_unlock(&registry_lock);
	STAT_INC(w, servers_opened);

	s->timer = evtimer_new(w->base, server_connect_timeout, s);
	if (s->timer == NULL)
		out_of_memory("a connection's timer");
	tv.tv_sec = cfg->server_connect_timeout_ms / 1000;
	tv.tv_usec = (cfg->server_connect_timeout_ms % 1000) * 1000;
	evtimer_add(s->timer, &tv);

	log_server(LOG_LEVEL_DEBUG, s, "opening a new connection");
	if (server_host_is_numeric(s->target->host)) {
		snprintf(s->hostaddr, sizeof(s->hostaddr), "%s", s->target->host);
		server_start_libpq(s);
	} else {
		struct evutil_addrinfo hints;

		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_protocol = IPPROTO_TCP;
		/* The callback may run before this returns (cached or numeric answers). */
		s->dns_request = evdns_getaddrinfo(w->dns, s->target->host, NULL, &hints, server_resolved, s);
	}
}

/* ------------------------------------------------------------ pool hand-off */

bool server_attach(struct server *s, struct worker *w)
{
	uint8_t byte;
	ssize_t n;

	/* Parked on this loop already: its read event would have seen a close. */
	if (s->worker == w) {
		server_set_state(s, SERVER_ACTIVE);
		return true;
	}
	s->worker = w;
	list_append(&w->servers, &s->worker_node);
	/*
	 * A parked connection should have nothing to say. Bytes or EOF mean the
	 * server closed it or is about to (an admin terminate, a restart).
	 */
	n = recv(s->io.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || (s->io.ssl && SSL_has_pending(s->io.ssl))) {
		server_close(s, n == 0 ? "server closed the idle connection" : "idle connection is not clean");
		return false;
	}
	if (io_attach(&s->io, w->base, server_on_event, s) != 0) {
		server_close(s, "out of memory");
		return false;
	}
	server_set_state(s, SERVER_ACTIVE);
	return true;
}

void server_detach(struct server *s)
{
	io_detach(&s->io);
	if (s->worker) {
		/* Its only callers hand it to another worker (directly or through the pool). */
		STAT_INC(s->worker, server_handoffs);
		list_del(&s->worker_node);
	}
	s->worker = NULL;
	io_shrink(&s->io);
}

/* ------------------------------------------------------------ reply queue */

static struct pending_reply *reply_front(struct server *s)
{
	return s->replies.count ? &s->replies.items[s->replies.head] : NULL;
}

/* The i-th entry from the front (i < count). */
static struct pending_reply *reply_at(const struct server *s, uint32_t i)
{
	return &s->replies.items[(s->replies.head + i) % s->replies.cap];
}

static void reply_pop(struct server *s)
{
	s->replies.head = (s->replies.head + 1) % s->replies.cap;
	s->replies.count--;
}

/*
 * False when memory ran out: s's output is then marked failed, so that s is
 * closed at its next flush, before any reply could be matched with the
 * wrong message (see iobuf.h); the client gets the error of a lost backend.
 */
static bool reply_push(struct server *s, char kind, const char *name)
{
	struct reply_queue *q = &s->replies;
	struct pending_reply *r;

	if (q->count == q->cap) {
		uint32_t cap = q->cap ? q->cap * 2 : 16;
		struct pending_reply *items = malloc(sizeof(*items) * cap);

		if (items == NULL) {
			s->io.out.failed = true;
			return false;
		}
		/* Unwrap the ring into the new array. */
		for (uint32_t i = 0; i < q->count; i++)
			items[i] = q->items[(q->head + i) % q->cap];
		free(q->items);
		q->items = items;
		q->cap = cap;
		q->head = 0;
	}
	r = &q->items[(q->head + q->count) % q->cap];
	r->kind = kind;
	if (name)
		snprintf(r->name, sizeof(r->name), "%s", name);
	else
		r->name[0] = '\0';
	r->client_name[0] = '\0';
	r->closed = NULL;
	q->count++;
	return true;
}

/* The entry just pushed (to add details). */
static struct pending_reply *reply_back(struct server *s)
{
	return reply_at(s, s->replies.count - 1);
}

/* Send the client the replies pgmux owes it that are now at the head of the queue. */
static void server_emit_owed(struct server *s)
{
	struct client *c = s->client;
	struct pending_reply *r;

	while ((r = reply_front(s)) != NULL && (r->kind == '1' || r->kind == '3')) {
		if (c) {
			iobuf_append_u8(&c->io.out, (uint8_t)r->kind);
			iobuf_append_u32(&c->io.out, 4);
		}
		/* A Close the server did not skip: the statement is gone for good. */
		prepared_free(r->closed);
		reply_pop(s);
	}
}

void server_expect(struct server *s, char kind, const char *name)
{
	/* After an error the server discards everything up to Sync: nothing comes back, nothing is owed. */
	if (s->skipping_until_sync) {
		if (kind != 'S')
			return;
		s->skipping_until_sync = false;
	}
	reply_push(s, kind, name);
	server_emit_owed(s);
}

/* Keep the backend within max_prepared_statements by closing the least recently used. */
static void server_make_room(struct server *s)
{
	const struct config *cfg = config_current();

	while (s->prepared.count > 0 && s->prepared.count >= (size_t)cfg->max_prepared_statements) {
		struct strmap_entry *victim = strmap_oldest(&s->prepared);

		prepared_put_close(&s->io.out, victim->key);
		server_expect(s, 'c', victim->key);
		strmap_delete(&s->prepared, victim);
	}
}

void server_ensure_prepared(struct server *s, const struct prepared_stmt *st)
{
	struct strmap_entry *e;

	if (s->skipping_until_sync)
		return;
	e = strmap_find(&s->prepared, st->server_name);
	if (e) {
		strmap_touch(&s->prepared, e);
		return;
	}
	server_make_room(s);
	iobuf_append(&s->io.out, st->parse, st->parse_len);
	server_expect(s, 'p', st->server_name);
	strmap_insert(&s->prepared, st->server_name, NULL);
}

void server_close_owed(struct server *s, const char *client_name)
{
	struct client *c = s->client;
	struct strmap_entry *e;

	/* After an error the server skips it: no answer, and the client keeps its statement. */
	if (s->skipping_until_sync)
		return;
	if (!reply_push(s, '3', NULL))
		return;
	if (c && (e = strmap_find(&c->stmts, client_name)) != NULL) {
		snprintf(reply_back(s)->client_name, sizeof(reply_back(s)->client_name), "%s", client_name);
		reply_back(s)->closed = strmap_delete(&c->stmts, e);
	}
	server_emit_owed(s);
}

void server_unnamed_reset(struct server *s)
{
	size_t begin;

	if (s->skipping_until_sync)
		return;
	begin = proto_begin(&s->io.out, FE_CLOSE);
	iobuf_append_u8(&s->io.out, 'S');
	iobuf_append_u8(&s->io.out, 0);
	proto_end(&s->io.out, begin);
	server_expect(s, 'u', NULL);
}

void server_parse_taken(struct server *s, const struct prepared_stmt *taken, const struct prepared_stmt *st)
{
	/*
	 * PostgreSQL finds a name taken only once the new text has passed every
	 * other check (parse, analysis, an aborted transaction), and its error
	 * fails a transaction block. So the backend is made to refuse it: the
	 * new text goes under the server-side name of the statement that has
	 * the client's name, which the backend has (made sure of first), and
	 * its error, whichever it is, is the client's.
	 */
	server_ensure_prepared(s, taken);
	prepared_put_parse_as(&s->io.out, st, taken->server_name);
	server_expect(s, 'x', NULL);
}

/* Does the backend still owe a ReadyForQuery (the transaction state it will be in is not known yet)? */
static bool server_batch_pending(const struct server *s)
{
	for (uint32_t i = 0; i < s->replies.count; i++) {
		char kind = reply_at(s, i)->kind;

		if (kind == 'S' || kind == 'Q' || kind == 'F')
			return true;
	}
	return false;
}

void server_parse(struct server *s, const struct prepared_stmt *st, const char *client_name,
		  bool transaction_control)
{
	struct strmap_entry *e = strmap_find(&s->prepared, st->server_name);

	if (e && (s->tx_status != 'I' || server_batch_pending(s))) {
		/*
		 * In a failed transaction block PostgreSQL refuses a Parse (25P02)
		 * unless the statement ends the transaction, and the backend may
		 * be in one. Before pgmux answers the Parse itself, the backend
		 * judges one of pgmux's own, closed again at once: of the client's
		 * text if it controls transactions, else of a SELECT, refused
		 * exactly when the client's would be (the text itself is known to
		 * be good: the backend has it). Its error is the client's.
		 */
		prepared_put_check(&s->io.out, transaction_control ? st : NULL);
		server_expect(s, 'p', NULL);
		prepared_put_close(&s->io.out, PREPARED_CHECK_NAME);
		server_expect(s, 'c', NULL);
	}
	if (e) {
		/* The backend has it already: answer the client's Parse ourselves, in order. */
		strmap_touch(&s->prepared, e);
		server_expect(s, '1', st->server_name);
	} else {
		server_make_room(s);
		iobuf_append(&s->io.out, st->parse, st->parse_len);
		server_expect(s, 'P', st->server_name);
		strmap_insert(&s->prepared, st->server_name, NULL);
	}
	/* Whose Parse it is, unless already answered: should the server skip it, the client's name goes. */
	if (s->replies.count > 0 && (reply_back(s)->kind == 'P' || reply_back(s)->kind == '1'))
		snprintf(reply_back(s)->client_name, sizeof(reply_back(s)->client_name), "%s", client_name);
}

/*
 * Is there a Sync behind the i-th entry: does the batch of that entry still
 * await its answer, with later batches sent behind it?
 */
static bool reply_sync_behind(const struct server *s, uint32_t i)
{
	while (++i < s->replies.count)
		if (reply_at(s, i)->kind == 'S')
			return true;
	return false;
}

bool server_parse_unsettled(const struct server *s, const char *client_name, bool owed_only)
{
	for (uint32_t i = 0; i < s->replies.count; i++) {
		const struct pending_reply *r = reply_at(s, i);

		if ((r->kind == '1' || r->kind == '3' || (r->kind == 'P' && !owed_only)) &&
		    strcmp(r->client_name, client_name) == 0)
			return reply_sync_behind(s, i);
	}
	return false;
}

bool server_statement_unsettled(const struct server *s, const char *server_name, const char *client_name)
{
	for (uint32_t i = 0; i < s->replies.count; i++) {
		const struct pending_reply *r = reply_at(s, i);

		if ((r->kind == 'p' || r->kind == 'c' ||
		     (r->kind == 'P' && (client_name == NULL || strcmp(r->client_name, client_name) != 0))) &&
		    strcmp(r->name, server_name) == 0)
			return reply_sync_behind(s, i);
	}
	return false;
}

/* The backend ran a statement that dropped session state; follow it. */
static void server_command_complete(struct server *s, struct client *c, const uint8_t *body, size_t len)
{
	const char *tag = (const char *)body;

	if (len == 0 || body[len - 1] != '\0')
		return;
	if (strcmp(tag, "DISCARD ALL") == 0 || strcmp(tag, "DEALLOCATE ALL") == 0) {
		strmap_clear(&s->prepared, NULL);
		if (c)
			strmap_clear(&c->stmts, prepared_free);
	}
	if (strcmp(tag, "DISCARD ALL") == 0 || (strcmp(tag, "RESET") == 0 && c && c->reset_all_pending)) {
		params_clear(&s->applied);
		s->params_fingerprint_valid = false;
		/* Back to the server's defaults: init_query's settings are gone too. */
		s->init_undone = true;
	}
}

/*
 * The server failed the message at the head of the queue and skips the rest
 * up to the next Sync: undo what pgmux assumed when it sent them, and drop
 * their entries (and the replies owed for them, which the server would not
 * have sent either).
 */
static void server_skipped_to_sync(struct server *s)
{
	struct pending_reply *r;
	uint32_t n = 0;

	while (n < s->replies.count && reply_at(s, n)->kind != 'S')
		n++;
	/*
	 * The backend's statements, and the client's, are as they were before
	 * the first of them: undone from the last back, a statement prepared
	 * and then evicted or closed in the same batch (or the other way round)
	 * ends where it was.
	 */
	for (uint32_t i = n; i-- > 0;) {
		struct client *c = s->client;
		struct strmap_entry *e;

		r = reply_at(s, i);
		if ((r->kind == 'P' || r->kind == 'p') && (e = strmap_find(&s->prepared, r->name)) != NULL) {
			strmap_delete(&s->prepared, e);
		} else if (r->kind == 'P' || r->kind == 'p') {
			/*
			 * A later batch evicted it already: that Close now closes
			 * nothing, and must not bring the name back should that
			 * batch fail too. (Nothing prepares it again after the
			 * Close while this batch is unanswered: see
			 * server_statement_unsettled().)
			 */
			for (uint32_t j = n; j < s->replies.count; j++) {
				struct pending_reply *later = reply_at(s, j);

				if (later->kind == 'c' && strcmp(later->name, r->name) == 0) {
					later->name[0] = '\0';
					break;
				}
			}
		} else if (r->kind == 'c' && r->name[0] && strmap_find(&s->prepared, r->name) == NULL) {
			strmap_insert(&s->prepared, r->name, NULL);
		}
		/*
		 * A statement the server never created does not exist for the
		 * client either (nor, if a later batch closed it already, may
		 * undoing that Close bring it back)...
		 */
		if ((r->kind == 'P' || r->kind == '1') && r->client_name[0] && c &&
		    (e = strmap_find(&c->stmts, r->client_name)) != NULL &&
		    strcmp(((struct prepared_stmt *)e->value)->server_name, r->name) == 0) {
			prepared_free(strmap_delete(&c->stmts, e));
		} else if ((r->kind == 'P' || r->kind == '1') && r->client_name[0]) {
			for (uint32_t j = n; j < s->replies.count; j++) {
				struct pending_reply *later = reply_at(s, j);

				if (later->closed && strcmp(later->client_name, r->client_name) == 0 &&
				    strcmp(later->closed->server_name, r->name) == 0) {
					prepared_free(later->closed);
					later->closed = NULL;
					break;
				}
			}
		}
		/*
		 * What was to make the unnamed statement the client's was skipped
		 * (pgmux's Close or Parse of it, or the client's Parse): the backend
		 * may still have another client's.
		 */
		if ((r->kind == 'u' || ((r->kind == 'p' || r->kind == 'P') && r->name[0] == '\0')) && c)
			c->unnamed_here = false;
		/* ...and one it never closed is the client's again. */
		if (r->closed && c && strmap_find(&c->stmts, r->client_name) == NULL)
			strmap_insert(&c->stmts, r->client_name, r->closed);
		else
			prepared_free(r->closed);
		r->closed = NULL;
	}
	while (n-- > 0) {
		r = reply_front(s);
		/* A Query skipped this way gets no ReadyForQuery. */
		if ((r->kind == 'Q' || r->kind == 'F') && s->outstanding > 0)
			s->outstanding--;
		reply_pop(s);
	}
	if (s->replies.count == 0)
		s->skipping_until_sync = true;
}

/*
 * A whole reply arrived while a transaction-pooled client is linked: match
 * it with the queue. Returns false when pgmux must swallow it (the reply to
 * a message it injected).
 */
static bool server_reply_arrived(struct server *s, uint8_t type)
{
	struct pending_reply *r = reply_front(s);
	bool forward = true;

	if (type == BE_NOTICE_RESPONSE || type == BE_NOTIFICATION || type == BE_PARAMETER_STATUS)
		return true;
	if (type == BE_ERROR_RESPONSE) {
		if (r && (r->kind == 'Q' || r->kind == 'F' || r->kind == 'S'))
			return true; /* ReadyForQuery follows and ends it */
		/*
		 * An extended-protocol message failed (with nothing pending, a
		 * Flush with a body, which has no reply to wait for): the server
		 * skips everything up to the next Sync. A text the backend refused
		 * is no longer one pgmux may accept without asking.
		 */
		if (r && (r->kind == 'P' || r->kind == 'p') && r->name[0] && s->pool)
			pool_statement_refused(s->pool, r->name);
		server_skipped_to_sync(s);
		return true;
	}
	if (r == NULL)
		return true;
	switch (r->kind) {
	case 'P':
	case 'p':
		if (type == '1') {
			forward = r->kind == 'P';
			if (r->name[0] && s->pool)
				pool_statement_accepted(s->pool, r->name);
			reply_pop(s);
		}
		break;
	case 'B':
		if (type == '2')
			reply_pop(s);
		break;
	case 'D':
		if (type == BE_ROW_DESCRIPTION || type == 'n')
			reply_pop(s);
		break;
	case 'E':
		if (type == BE_COMMAND_COMPLETE || type == 's' || type == BE_EMPTY_QUERY)
			reply_pop(s);
		break;
	case 'C':
	case 'c':
	case 'u':
		if (type == '3') {
			forward = r->kind == 'C';
			reply_pop(s);
		}
		break;
	case 'S':
	case 'Q':
	case 'F':
		if (type == BE_READY_FOR_QUERY)
			reply_pop(s);
		break;
	default:
		break;
	}
	return forward;
}

/*
 * An ErrorResponse may name a statement by pgmux's internal name (a Bind
 * sent before the Parse it relied on failed, a wrong parameter count):
 * write it to the client with the client's own name instead. Returns false
 * when there is nothing to translate.
 */
static bool server_translate_error(struct client *c, const uint8_t *body, size_t len, struct iobuf *out)
{
	const char *hit = memmem(body, len, "pgmux_", 6);
	size_t begin;
	const uint8_t *p = body, *end = body + len;

	if (hit == NULL || c->stmt_names.count == 0)
		return false;
	begin = proto_begin(out, BE_ERROR_RESPONSE);
	while (p < end && *p) {
		const char *field = (const char *)p + 1;
		size_t flen = strnlen(field, (size_t)(end - p - 1));
		const char *at;

		iobuf_append_u8(out, *p);
		/* Copy the field, replacing each internal name that this client knows. */
		while (flen > 0 && (at = memmem(field, flen, "pgmux_", 6)) != NULL &&
		       (size_t)(at - field) + PREPARED_NAME_LEN - 1 <= flen) {
			char internal[PREPARED_NAME_LEN];
			struct strmap_entry *e;

			memcpy(internal, at, PREPARED_NAME_LEN - 1);
			internal[PREPARED_NAME_LEN - 1] = '\0';
			e = strmap_find(&c->stmt_names, internal);
			iobuf_append(out, field, (size_t)(at - field));
			if (e)
				iobuf_append(out, e->value, strlen(e->value));
			else
				iobuf_append(out, internal, PREPARED_NAME_LEN - 1);
			flen -= (size_t)(at - field) + PREPARED_NAME_LEN - 1;
			field = at + PREPARED_NAME_LEN - 1;
		}
		iobuf_append(out, field, flen);
		iobuf_append_u8(out, 0);
		p = (const uint8_t *)field + flen + 1;
	}
	iobuf_append_u8(out, 0);
	proto_end(out, begin);
	return true;
}

/* Can a transaction-pooled client give its backend back now? */
static bool server_transaction_over(const struct server *s, const struct client *c)
{
	return c->pin_reason == NULL && c->forward_remaining == 0 && server_is_clean(s);
}

/* ---------------------------------------------------------------- relaying */

void server_flush(struct server *s)
{
	struct client *c = s->client;

	switch (io_flush(&s->io)) {
	case IO_OK:
		/* Drained: the client may send again. */
		if (c && c->read_paused) {
			c->read_paused = false;
			io_want_read(&c->io, true);
		}
		break;
	case IO_AGAIN:
		break;
	case IO_EOF:
	case IO_ERROR:
		log_server(LOG_LEVEL_WARNING, s, "write to server failed: %s", s->io.error);
		server_close(s, "server connection lost");
		break;
	}
}

void server_run_query(struct server *s, const char *sql, server_query_done_fn done, void *arg)
{
	server_set_state(s, SERVER_INTERNAL);
	s->query_done = done;
	s->query_arg = arg;
	free(s->query_error);
	free(s->query_value);
	s->query_error = s->query_value = NULL;
	s->query_sqlstate[0] = '\0';
	proto_put_query(&s->io.out, sql);
	s->outstanding++;
	server_flush(s);
}

/*
 * A whole message during a query of pgmux's own, already consumed from the
 * input. Returns false when the query ended: the done callback may have
 * closed s or handed it to the pool (and so to another worker), so the
 * caller must not touch s again.
 */
static bool server_internal_message(struct server *s, uint8_t type, const uint8_t *body, size_t len)
{
	struct msg_reader r;

	switch (type) {
	case BE_ERROR_RESPONSE: {
		struct error_fields ef;

		if (s->query_error == NULL && proto_parse_error(body, len, &ef) == 0) {
			s->query_error = xstrdup(ef.message ? ef.message : "error");
			snprintf(s->query_sqlstate, sizeof(s->query_sqlstate), "%s",
				 ef.sqlstate ? ef.sqlstate : SQLSTATE_INTERNAL_ERROR);
		}
		break;
	}
	case BE_DATA_ROW:
		if (s->query_value == NULL) {
			int16_t ncols;
			int32_t vlen;
			const uint8_t *v;

			msg_reader_init(&r, body, len);
			if (msg_read_i16(&r, &ncols) == 0 && ncols > 0 && msg_read_i32(&r, &vlen) == 0 && vlen >= 0 &&
			    (v = msg_read_bytes(&r, (size_t)vlen)) != NULL)
				/* As large as the server sends: NULL if out of memory, and the read-back fails. */
				s->query_value = strndup((const char *)v, (size_t)vlen);
		}
		break;
	case BE_READY_FOR_QUERY:
		s->tx_status = len >= 1 ? (char)body[0] : 'E';
		if (s->outstanding > 0)
			s->outstanding--;
		if (s->outstanding == 0) {
			server_query_done_fn done = s->query_done;
			bool ok = s->query_error == NULL && s->tx_status == 'I';

			s->query_done = NULL;
			if (done)
				done(s, ok, s->query_arg);
			return false;
		}
		break;
	default:
		/* RowDescription, CommandComplete, notices: nobody to show them to. */
		break;
	}
	return true;
}

enum server_input {
	SERVER_INPUT_MORE,    /* processed what there was; s is still ours */
	SERVER_INPUT_GONE,    /* s was closed or handed away: do not touch it */
	SERVER_INPUT_RELEASE, /* the client's transaction ended: flush it, then give s back */
};

/*
 * What the end of one backend's session says about its instance. Only
 * server-wide evidence makes the instance suspect (no new borrows, idle
 * backends dropped, until the health check says): a PANIC, or a FATAL that
 * PostgreSQL sends every session at once (57P02, another process crashed)
 * or that says it takes no sessions (57P03). One session terminated,
 * 57P01, is what pg_terminate_backend() sends, and a client may do that to
 * its own backend as often as it likes: it only asks the monitor for a
 * check now, which a postmaster shutting down (57P01 too) then fails. A
 * session that sat idle too long says nothing about the instance.
 */
enum session_end {
	SESSION_END_INSTANCE, /* the instance is going or gone: suspect it (0: a close with no FATAL) */
	SESSION_END_ALONE,    /* this session only: check the instance, do not suspect it */
	SESSION_END_TIMEOUT,  /* idle_in_transaction_session_timeout and friends */
};

/* Act on what the end of s's session says about its instance (see enum session_end). */
static void server_session_ended(struct server *s, enum session_end end)
{
	if (end == SESSION_END_INSTANCE)
		pool_instance_suspect(s->target);
	else if (end == SESSION_END_ALONE)
		monitor_check_now(s->target);
}

/*
 * Is this ErrorResponse one after which the backend closes the connection?
 * If so, *why is "the server ended the session: FATAL: <message> (SQLSTATE
 * <code>)", for the log and the client's DETAIL, and *end what it says about
 * the instance.
 */
static bool server_error_ends_session(const uint8_t *body, size_t len, char *why, size_t cap,
				      enum session_end *end)
{
	struct error_fields ef;
	const char *code;

	if (proto_parse_error(body, len, &ef) != 0 || ef.severity == NULL ||
	    (strcmp(ef.severity, "FATAL") != 0 && strcmp(ef.severity, "PANIC") != 0))
		return false;
	code = ef.sqlstate ? ef.sqlstate : "?";
	/* idle_in_transaction_session_timeout, idle_session_timeout, transaction_timeout */
	if (strcmp(code, "25P03") == 0 || strcmp(code, "57P05") == 0 || strcmp(code, "25P04") == 0)
		*end = SESSION_END_TIMEOUT;
	else if (strcmp(ef.severity, "PANIC") == 0 || strcmp(code, SQLSTATE_CRASH_SHUTDOWN) == 0 ||
		 strcmp(code, SQLSTATE_CANNOT_CONNECT_NOW) == 0)
		*end = SESSION_END_INSTANCE;
	else
		*end = SESSION_END_ALONE;
	snprintf(why, cap, "the server ended the session: %s: %.200s (SQLSTATE %s)", ef.severity,
		 ef.message ? ef.message : "", code);
	return true;
}

/*
 * Frame what the backend sent. While relaying, bodies are passed through as
 * they arrive; the messages pgmux acts on (ReadyForQuery, ParameterStatus,
 * and with transaction pooling every reply but DataRow and CopyData) are
 * held until whole.
 */
static enum server_input server_process_input(struct server *s)
{
	struct iobuf *in = &s->io.in;

	while (iobuf_len(in) > 0) {
		struct client *c = s->client;
		const uint8_t *p = iobuf_head(in);
		size_t avail = iobuf_len(in);
		uint8_t type;
		uint32_t mlen;

		if (s->forward_remaining > 0) {
			size_t n = avail < s->forward_remaining ? avail : s->forward_remaining;

			if (c)
				iobuf_append(&c->io.out, p, n);
			iobuf_consume(in, n);
			s->forward_remaining -= (uint32_t)n;
			continue;
		}
		if (avail < PROTO_HEADER_LEN)
			break;
		type = p[0];
		mlen = get_u32(p + 1);
		if (mlen < 4 || !proto_valid_backend_type(type)) {
			log_server(LOG_LEVEL_ERROR, s, "protocol error: message type 0x%02x length %u", type, mlen);
			server_close(s, "protocol error from server");
			return SERVER_INPUT_GONE;
		}
		bool relaying = s->state == SERVER_ACTIVE && c != NULL;
		bool whole = !relaying || type == BE_READY_FOR_QUERY || type == BE_PARAMETER_STATUS ||
			     (c->transaction_mode && type != BE_DATA_ROW && type != FE_COPY_DATA);

		if (!whole) {
			size_t n = avail < 1 + (size_t)mlen ? avail : 1 + (size_t)mlen;

			/*
			 * A FATAL relayed as it is (session pooling) precedes the close:
			 * note what it says about the instance, if it came whole.
			 */
			if (type == BE_ERROR_RESPONSE && avail >= 1 + (size_t)mlen) {
				char why[320];
				enum session_end end;

				if (server_error_ends_session(p + PROTO_HEADER_LEN, mlen - 4, why, sizeof(why), &end))
					s->session_end = end;
			}

			iobuf_append(&c->io.out, p, n);
			iobuf_consume(in, n);
			s->forward_remaining = (uint32_t)(1 + mlen - n);
			continue;
		}
		if (mlen > SERVER_MAX_INSPECTED_MESSAGE) {
			log_server(LOG_LEVEL_ERROR, s, "protocol error: message '%c' of %u bytes", type, mlen);
			server_close(s, "protocol error from server");
			return SERVER_INPUT_GONE;
		}
		if (avail < 1 + (size_t)mlen)
			break;

		const uint8_t *body = p + PROTO_HEADER_LEN;
		size_t blen = mlen - 4;
		char reason[320];
		enum session_end end = SESSION_END_ALONE;

		if (type == BE_PARAMETER_STATUS) {
			struct msg_reader r;
			const char *name, *value;

			msg_reader_init(&r, body, blen);
			name = msg_read_str(&r);
			value = msg_read_str(&r);
			if (name && value) {
				server_set_param(s, name, value);
				/* The session is the client's: what it changes follows it to other backends. */
				int index = params_carried_index(name);

				if (relaying && c->logged_in && index >= 0)
					client_set_reported(c, index, value);
			}
		}
		if (relaying && type == BE_ERROR_RESPONSE && c->transaction_mode &&
		    server_error_ends_session(body, blen, reason, sizeof(reason), &end)) {
			iobuf_consume(in, 1 + (size_t)mlen);
			/*
			 * The backend ends its session (terminated, shutting down, an
			 * idle-in-transaction timeout). The client's session lives on in
			 * pgmux, so it gets the class 08 error of a lost backend rather
			 * than a FATAL that ends nothing (client_server_lost()), and gets
			 * it now: until the connection closed, a statement of the client
			 * would still go to this backend, which never reads it, and the
			 * client would wait for its answer for good.
			 */
			server_session_ended(s, end);
			server_close(s, reason);
			return SERVER_INPUT_GONE;
		}
		if (relaying) {
			bool forward = true;

			if (type == BE_READY_FOR_QUERY) {
				s->tx_status = blen >= 1 ? (char)body[0] : 'E';
				if (s->outstanding > 0)
					s->outstanding--;
			}
			if (c->transaction_mode) {
				if (type == BE_COMMAND_COMPLETE)
					server_command_complete(s, c, body, blen);
				forward = server_reply_arrived(s, type);
			}
			if (forward && !(type == BE_ERROR_RESPONSE && c->transaction_mode &&
					 server_translate_error(c, body, blen, &c->io.out)))
				iobuf_append(&c->io.out, p, 1 + (size_t)mlen);
			iobuf_consume(in, 1 + (size_t)mlen);
			if (c->transaction_mode) {
				server_emit_owed(s);
				if (type == BE_READY_FOR_QUERY && server_transaction_over(s, c))
					return SERVER_INPUT_RELEASE;
			}
			continue;
		}
		if (s->state == SERVER_INTERNAL) {
			uint8_t small[64];
			uint8_t *copy = blen <= sizeof(small) ? small : malloc(blen);
			bool more;

			if (copy == NULL) {
				server_close(s, "out of memory");
				return SERVER_INPUT_GONE;
			}
			/* Consume first: the message handler may give s to another worker. */
			memcpy(copy, body, blen);
			iobuf_consume(in, 1 + (size_t)mlen);
			more = server_internal_message(s, type, copy, blen);
			if (copy != small)
				free(copy);
			if (!more)
				return SERVER_INPUT_GONE;
			continue;
		}
		/* Unsolicited message with nobody linked (notice, parameter change): drop it. */
		iobuf_consume(in, 1 + (size_t)mlen);
	}
	return SERVER_INPUT_MORE;
}

static void server_on_event(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;
	size_t budget = SERVER_READ_BUDGET;

	s->worker->activity++;
	if (s->state == SERVER_CONNECTING) {
		server_connect_poll(s);
		return;
	}
	if (s->state == SERVER_CLOSED || s->worker == NULL)
		return;

	if ((what & EV_WRITE) || s->io.ssl_write_wants_read || io_pending_output(&s->io) > 0) {
		s->io.writing = false;
		server_flush(s);
		if (s->state == SERVER_CLOSED)
			return;
	}
	if (!(what & EV_READ) && !s->io.ssl_read_wants_write)
		return;

	while (budget > 0) {
		struct client *c = s->client;
		enum io_status st;
		size_t before = iobuf_len(&s->io.in);

		/* Back-pressure: the client is not taking what we already have. */
		if (c && io_pending_output(&c->io) >= SERVER_CLIENT_HIGH_WATER) {
			io_want_read(&s->io, false);
			break;
		}
		st = io_read(&s->io, budget);
		if (st == IO_OK) {
			enum server_input result;

			budget -= iobuf_len(&s->io.in) - before < budget ? iobuf_len(&s->io.in) - before : budget;
			result = server_process_input(s);
			if (result == SERVER_INPUT_GONE)
				return;
			c = s->client;
			if (c) {
				client_flush(c);
				client_replies_arrived(c);
			}
			if (result == SERVER_INPUT_RELEASE) {
				/* Last use of s here: the pool may hand it to another worker at once. */
				if (c && c->state != CLIENT_CLOSED && c->server == s)
					client_release_server(c);
				return;
			}
			if (s->state == SERVER_CLOSED || s->worker == NULL)
				return;
			if (s->io.drained)
				break;
			continue;
		}
		if (st == IO_AGAIN)
			break;
		/*
		 * EOF or error: a FATAL the server sent before closing is already
		 * relayed, and says what this means for the instance; without one,
		 * the instance is suspect.
		 */
		server_session_ended(s, s->session_end);
		if (st == IO_EOF)
			server_close(s, "server closed the connection");
		else {
			log_server(LOG_LEVEL_WARNING, s, "read from server failed: %s", s->io.error);
			server_close(s, "server connection lost");
		}
		return;
	}
	if (budget == 0)
		io_schedule_read(&s->io);
}

/* ----------------------------------------------------------- client leaves */

static void server_reset_done(struct server *s, bool ok, void *arg)
{
	if (!ok) {
		log_server(LOG_LEVEL_WARNING, s, "reset query failed: %s",
			   s->query_error ? s->query_error : "not idle afterwards");
		server_close(s, "reset failed");
		return;
	}
	/* DISCARD ALL dropped every prepared statement and parameter pgmux had set. */
	strmap_clear(&s->prepared, NULL);
	params_clear(&s->applied);
	s->params_fingerprint_valid = false;
	/*
	 * And init_query's settings with them (DISCARD ALL includes RESET ALL):
	 * client_link() runs init_query again before the next client uses s.
	 */
	s->init_undone = true;
	pool_release(s);
}

bool server_send_cancel(struct server *s, uint64_t client_id)
{
	PGcancel *pc;

	if (s->pg == NULL || (s->state != SERVER_ACTIVE && s->state != SERVER_INTERNAL))
		return false;
	pc = PQgetCancel(s->pg);
	if (pc == NULL)
		return false;
	/*
	 * The cancel travels on its own connection and may arrive after this
	 * backend has moved on; a backend that was sent one is closed rather
	 * than given to someone else, so a late cancel can only hit the
	 * statement it was meant for.
	 */
	s->cancel_sent = true;
	cancel_submit(pc, client_id, s->backend_pid);
	return true;
}

/*
 * The backend is about to be closed while it may still be running a
 * statement. PostgreSQL notices a closed connection only when it next reads
 * or writes it, so a long query (and the locks of its transaction) would
 * live on after pgmux let go; a cancel request ends it.
 */
void server_cancel_running(struct server *s)
{
	if (s->outstanding == 0 || s->cancel_sent)
		return;
	if (server_send_cancel(s, __atomic_load_n(&s->client_id, __ATOMIC_RELAXED)))
		log_server(LOG_LEVEL_INFO, s, "sending a cancel request for the statement it is running");
}

bool server_applied_from_settings(struct server *s)
{
	json_error_t jerr;
	json_t *root = s->query_value ? json_loads(s->query_value, 0, &jerr) : NULL;
	const char *name;
	json_t *value;

	if (root == NULL || !json_is_object(root)) {
		json_decref(root);
		return false;
	}
	params_clear(&s->applied);
	json_object_foreach(root, name, value) {
		/* The reported ones follow ParameterStatus. */
		if (json_is_string(value) && params_carried_index(name) < 0)
			params_put(&s->applied, name, json_string_value(value));
	}
	json_decref(root);
	s->params_fingerprint_valid = false;
	return true;
}

/*
 * pgmux's own query, whose client has left, is answered: the backend goes
 * back if that left it clean and pgmux knows what is set on it.
 */
static void server_orphan_query_done(struct server *s, bool ok, void *arg)
{
	bool settings = s->reading_settings;

	(void)arg;
	s->reading_settings = false;
	if (!ok || (settings && !server_applied_from_settings(s))) {
		server_close(s, "a query of pgmux's own failed after its client left");
		return;
	}
	pool_release(s);
}

void server_client_gone(struct server *s, bool reset)
{
	const struct config *cfg = config_current();

	s->client = NULL;
	if (s->state == SERVER_CLOSED)
		return;
	if (!reset && s->state == SERVER_INTERNAL && s->query_done && s->outstanding == 1 && s->tx_status == 'I' &&
	    !s->pinned && !s->cancel_sent) {
		/*
		 * A client of transaction pooling left while pgmux set its
		 * session up or read its settings back: that query is pgmux's
		 * and short, so the backend is given back once it is answered
		 * rather than closed.
		 */
		s->query_done = server_orphan_query_done;
		s->query_arg = NULL;
		return;
	}
	if (!server_is_clean(s)) {
		server_cancel_running(s);
		server_close(s, "client left in the middle of a transaction or query");
		return;
	}
	if (s->pinned) {
		/* Temp tables, LISTEN, advisory locks...: only a new connection is surely clean. */
		server_close(s, "its pinned session ended");
		return;
	}
	if (!reset) {
		/* Transaction pooling tracks the session state: nothing to undo. */
		pool_release(s);
		return;
	}
	if (cfg->server_reset_query && cfg->server_reset_query[0])
		server_run_query(s, cfg->server_reset_query, server_reset_done, NULL);
	else
		pool_release(s);
}

void server_close(struct server *s, const char *reason)
{
	struct client *c = s->client;

	if (s->state == SERVER_CLOSED)
		return;
	log_server(LOG_LEVEL_DEBUG, s, "closing (%s, was %s)", reason, server_state_names[s->state]);
	if (s->dns_request) {
		evdns_getaddrinfo_cancel(s->dns_request);
		s->dns_request = NULL;
	}
	if (s->timer) {
		event_free(s->timer);
		s->timer = NULL;
	}
	pool_forget(s);
	server_set_state(s, SERVER_CLOSED);
	s->client = NULL;
	/* libpq owns the socket and the SSL object: PQfinish closes both. */
	io_close(&s->io, false);
	if (s->pg) {
		PQfinish(s->pg);
		s->pg = NULL;
	}
	if (c) {
		c->server = NULL;
		client_server_lost(c, s, SQLSTATE_CONNECTION_FAILURE, reason);
	}
	if (s->worker) {
		list_del(&s->worker_node);
		list_append(&s->worker->reap_servers, &s->worker_node);
		worker_schedule_reap(s->worker);
	} else {
		/* Parked (attached to no loop): no callback can still refer to it. */
		server_free(s);
	}
}

void server_registry_barrier(void)
{
	pthread_mutex_lock(&registry_lock);
	pthread_mutex_unlock(&registry_lock);
}

void server_for_each(void (*fn)(struct server *s, void *arg), void *arg)
{
	struct list_node *pos;

	pthread_mutex_lock(&registry_lock);
	list_for_each(pos, &registry)
		fn(list_entry(pos, struct server, registry_node), arg);
	pthread_mutex_unlock(&registry_lock);
}

const char *server_state_name(enum server_state state)
{
	return server_state_names[state];
}

void server_free(struct server *s)
{
	pthread_mutex_lock(&registry_lock);
	list_del(&s->registry_node);
	pthread_mutex_unlock(&registry_lock);
	for (int i = 0; i < s->n_params; i++) {
		free(s->params[i].name);
		free(s->params[i].value);
	}
	free(s->params);
	params_clear(&s->defaults);
	params_clear(&s->applied);
	s->params_fingerprint_valid = false;
	strmap_clear(&s->prepared, NULL);
	while (s->replies.count > 0) {
		prepared_free(reply_front(s)->closed);
		reply_pop(s);
	}
	free(s->replies.items);
	free(s->query_error);
	free(s->query_value);
	free(s);
}
