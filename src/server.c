/*
 * server.c: backend connections (see server.h). The life of one:
 * RESOLVING (evdns, only for host names) -> CONNECTING (PQconnectPoll driven
 * by this worker's loop) -> INTERNAL (a setup query when the pool needs one)
 * -> handed to the pool -> ACTIVE (relaying for a client) or IDLE (parked),
 * and back through INTERNAL (reset) when its client leaves.
 *
 * While a client is linked (server_link()), its messages come in through
 * server_send_message() and friends and the backend's replies go out to it
 * through the server_client_ops it gave; the reply tracker (reply.c)
 * decides what each message becomes. server.c includes nothing of the
 * client's: it and the pool hear from a server through their ops.
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

#include "cancel.h"
#include "log.h"
#include "pgmux.h"
#include "params.h"
#include "proto.h"
#include "target.h"
#include "util.h"
#include "worker.h"

#include "build_config.h"

/* Bytes read from one backend per wake-up before others get a turn. */
#define SERVER_READ_BUDGET (256 * 1024)
/* Messages pgmux must see whole are small; a longer one is a broken stream. */
#define SERVER_MAX_INSPECTED_MESSAGE (1024 * 1024)

/* A line about server connection s: its identity as fields (see log_client_because() in client.h). */
#define log_server_because(level, s, reason_, fmt, ...) \
	do { \
		if ((level) <= log_level_now()) { \
			const struct log_fields log_fields_ = { \
				.subject = LOG_SUBJECT_SERVER, .id = (s)->id, \
				.user = (s)->log_user, \
				.database = (s)->log_database, \
				.server_host = (s)->target ? (s)->target->host : NULL, \
				.server_port = (s)->target ? (s)->target->port : 0, .backend_pid = (s)->backend_pid, \
				.instance = (s)->target ? (s)->target->instance_id : NULL, .reason = (reason_) }; \
			log_write_fields((level), &log_fields_, fmt, ##__VA_ARGS__); \
		} \
	} while (0)

#define log_server(level, s, fmt, ...) log_server_because(level, s, NULL, fmt, ##__VA_ARGS__)

static uint64_t next_server_id = 1;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct list_node registry = LIST_HEAD_INIT(registry);

/* The parameters PostgreSQL 15 reports with ParameterStatus. */
static const char *const reported_params[] = {
	"application_name", "client_encoding", "DateStyle", "default_transaction_read_only",
	"in_hot_standby", "integer_datetimes", "IntervalStyle", "is_superuser", "server_encoding",
	"server_version", "session_authorization", "standard_conforming_strings", "TimeZone",
};

/* The pool's callbacks (server_set_pool_ops()). */
static const struct server_pool_ops *pool_ops;

static const char *const server_state_names[] = {
	[SERVER_RESOLVING] = "resolving", [SERVER_CONNECTING] = "connecting",
	[SERVER_INTERNAL] = "internal",   [SERVER_IDLE] = "idle",
	[SERVER_ACTIVE] = "active",       [SERVER_CLOSED] = "closed",
};

static void server_on_event(evutil_socket_t fd, short what, void *arg);
static void server_setup_done(struct server *s, bool ok, void *arg);

void server_set_pool_ops(const struct server_pool_ops *ops)
{
	pool_ops = ops;
}

/* Who its log lines say it logs in as (names cut as LOG_NAME cuts them). */
static void server_set_label(struct server *s, const struct pool *pool)
{
	const char *user, *database, *password;

	pool_ops->login(pool, &user, &database, &password);
	snprintf(s->log_user, sizeof(s->log_user), "%s", user);
	snprintf(s->log_database, sizeof(s->log_database), "%s", database);
}

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
	log_server_because(LOG_LEVEL_WARNING, s, why, "connection failed: %s", why);
	if (s->worker)
		STAT_INC(s->worker, server_connect_failures);
	/* The instance may be down: find out now rather than at the next interval. */
	pool_ops->instance_check(s->target);
	/* The pool fails the waiting clients; server_close must not free the slot again. */
	if (pool)
		pool_ops->connect_failed(s, SQLSTATE_CONNECTION_FAILURE, message, answered);
	server_close(s, "connection failed");
}

static void server_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	server_connect_failed(s, s->state == SERVER_INTERNAL ? "timed out running the setup query or init_query"
							     : "timed out connecting",
			      false);
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

/* The address is known: libpq connects (SHOW SERVERS says so). */
static void server_connect_resolved(void *arg)
{
	server_set_state(arg, SERVER_CONNECTING);
}

static void server_connected(void *arg, PGconn *pg, const struct pgconn_failure *failure)
{
	struct server *s = arg;

	if (pg == NULL) {
		server_connect_failed(s, failure->reason,
				      failure->refused && !sqlstate_instance_unavailable(failure->sqlstate));
		return;
	}
	/*
	 * Connected: libpq has consumed everything up to the first ReadyForQuery.
	 * The connect timer keeps running through the setup query and init_query
	 * (server_init_done stops it): one that never ends (a lock wait) must not
	 * hold the slot forever.
	 */
	s->pg = pg;
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
	if (!pool_ops->setup_wanted(s)) {
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

static const struct pgconn_ops server_connect_ops = {
	.resolved = server_connect_resolved,
	.done = server_connected,
};

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
	histogram_record(&s->worker->stats.server_connect, s->created_usec - s->connect_started_usec);
	pool_ops->ready(s);
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
		pool_ops->setup_answered(s, limit, writes_opaque != 0);
		free(s->query_value);
		s->query_value = NULL;
	}
	if (cfg->init_query[0]) {
		server_run_query(s, cfg->init_query, server_init_done, NULL);
		return;
	}
	server_init_done(s, true, NULL);
}

void server_connect(struct worker *w, struct pool *pool, struct target *target)
{
	const struct config *cfg = config_current();
	struct server *s = xcalloc(1, sizeof(*s));
	struct pgconn_params params = { 0 };
	struct timeval tv;

	s->id = __atomic_fetch_add(&next_server_id, 1, __ATOMIC_RELAXED);
	server_set_pool(s, pool);
	s->target = target;
	/* A role change while this connects makes it unusable; pool_release will see. */
	s->generation = target->generation;
	s->worker = w;
	s->connect_started_usec = pgmux_now_usec();
	s->counted_connecting = true;
	server_set_state(s, SERVER_RESOLVING);
	s->io.fd = -1;
	strmap_init(&s->defaults);
	strmap_init(&s->prepared);
	strmap_init(&s->applied);
	reply_tracker_init(&s->replies, &s->prepared);
	server_set_label(s, pool);
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
	/* The pool's password as it is now (a reload may rotate it); pgconn keeps a copy. */
	params.host = target->host;
	params.port = target->port;
	pool_ops->login(pool, &params.user, &params.database, &params.password);
	/* The callbacks may run before this returns (a numeric address that cannot be reached at all). */
	pgconn_start(&s->connect, w->base, w->dns, &params, &server_connect_ops, s);
}

/* ------------------------------------------------------------ pool hand-off */

/*
 * A parked connection should have nothing to say: is it so? One look at the
 * socket, without blocking. Bytes or EOF mean the server closed it or is
 * about to (its FATAL: an admin terminate, idle_session_timeout, a
 * restart); *why says which.
 */
static bool server_parked_clean(struct server *s, const char **why)
{
	uint8_t byte;
	ssize_t n;

	n = recv(s->io.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || (s->io.ssl && SSL_has_pending(s->io.ssl))) {
		*why = n == 0 ? "server closed the idle connection" : "idle connection is not clean";
		return false;
	}
	return true;
}

bool server_attach(struct server *s, struct worker *w)
{
	const char *why;

	if (s->worker == w) {
		uint64_t check_after = (uint64_t)config_current()->server_check_delay_ms * 1000;

		/*
		 * Parked on this loop already: its read event sees a close, but
		 * only once the loop gets to it, and a client's event of the same
		 * pass may come first. One that sat idle for server_check_delay
		 * is looked at (its server had time to end it: an idle timeout,
		 * a terminate, a restart).
		 */
		if (pgmux_usec_since(s->last_used_usec, pgmux_pass_now_usec()) >= check_after && !server_parked_clean(s, &why)) {
			server_close(s, why);
			return false;
		}
		server_set_state(s, SERVER_ACTIVE);
		return true;
	}
	s->worker = w;
	list_append(&w->servers, &s->worker_node);
	if (!server_parked_clean(s, &why)) {
		server_close(s, why);
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

/* -------------------------------------------------------- the client's side */

void server_link(struct server *s, struct client *c, uint64_t client_id, const struct server_client_ops *ops,
		 struct reply_session *rs, bool tracking)
{
	s->client = c;
	s->client_ops = ops;
	s->served = true;
	s->answered = false;
	__atomic_store_n(&s->client_id, client_id, __ATOMIC_RELAXED);
	reply_link(&s->replies, rs, tracking);
}

void server_unlink(struct server *s)
{
	s->client = NULL;
	reply_unlink(&s->replies);
}

/* Limits from the configuration now (a reload may change them). */
static void server_limits(struct reply_limits *limits)
{
	const struct config *cfg = config_current();

	limits->max_backend_statements = cfg->max_prepared_statements;
	limits->max_client_statements = cfg->max_client_prepared_statements;
	limits->max_packet_size = cfg->max_packet_size;
}

/* Hand the client the replies it is owed that are due now (pgmux answered their messages). */
static void server_deliver_owed(struct server *s)
{
	uint8_t owed[64 * PROTO_HEADER_LEN];
	size_t n;

	while ((n = reply_take_owed(&s->replies, owed, sizeof(owed))) > 0)
		if (s->client)
			s->client_ops->deliver(s->client, owed, n);
}

/* A message that begins to go to the backend: follow the transaction state. */
static void server_count_message(struct server *s, uint8_t type)
{
	/* Pipelined queries: the next one's clock starts when the one before it is answered (client_stats.c). */
	if ((type == FE_QUERY || type == FE_SYNC || type == FE_FUNCTION_CALL) && s->replies.outstanding == 0)
		s->query_sent_usec = pgmux_pass_now_usec();
	if (reply_count_frontend(&s->replies, type))
		STAT_INC(s->worker, queries);
}

enum reply_action server_send_message(struct server *s, const uint8_t *msg, size_t len)
{
	struct reply_limits limits;
	enum reply_action action;

	if (!s->replies.tracking) {
		server_count_message(s, msg[0]);
		iobuf_append(&s->io.out, msg, len);
		return REPLY_FORWARD;
	}
	server_limits(&limits);
	action = reply_frontend(&s->replies, msg, len, s->tx_status, &limits, &s->io.out);
	switch (action) {
	case REPLY_FORWARD:
		iobuf_append(&s->io.out, msg, len);
		break;
	case REPLY_REWRITTEN:
	case REPLY_ANSWERED:
		break;
	case REPLY_WAIT:
	case REPLY_TOO_MANY:
	case REPLY_NO_MEMORY:
		return action;
	}
	server_count_message(s, msg[0]);
	if (reply_owed_due(&s->replies))
		server_deliver_owed(s);
	return action;
}

void server_send_start(struct server *s, const uint8_t *p, size_t n, size_t total)
{
	server_count_message(s, p[0]);
	iobuf_append(&s->io.out, p, n);
	s->frontend_remaining = (uint32_t)(total - n);
}

size_t server_send_rest(struct server *s, const uint8_t *p, size_t avail)
{
	size_t n = avail < s->frontend_remaining ? avail : s->frontend_remaining;

	iobuf_append(&s->io.out, p, n);
	s->frontend_remaining -= (uint32_t)n;
	return n;
}

size_t server_output_pending(const struct server *s)
{
	return io_pending_output(&s->io);
}

void server_resume_reading(struct server *s)
{
	if (s->state == SERVER_ACTIVE && !s->io.reading)
		io_want_read(&s->io, true);
}

/* ---------------------------------------------------------------- relaying */

static void server_flush_queued(void *arg)
{
	server_flush(arg);
}

void server_flush(struct server *s)
{
	struct client *c = s->client;

	/* On its own loop, during a pass: sent with the pass's other output (batch_sends; io_batch.c). */
	if (s->worker != NULL && s->worker == worker_self() && io_defer_flush(&s->io, server_flush_queued, s))
		return;
	switch (io_flush(&s->io)) {
	case IO_OK:
		/* Drained: the client may send again. */
		if (c)
			s->client_ops->drained(c);
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
	s->replies.outstanding++;
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
		if (s->replies.outstanding > 0)
			s->replies.outstanding--;
		if (s->replies.outstanding == 0) {
			server_query_done_fn done = s->query_done;
			bool ok = s->query_error == NULL && s->tx_status == 'I';

			s->query_done = NULL;
			if (done)
				done(s, ok, s->query_arg);
			return false;
		}
		break;
	case BE_NOTIFICATION:
		if (s->query_notify)
			s->query_notify(s, body, len, s->query_arg);
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
		pool_ops->instance_suspect(s->target);
	else if (end == SESSION_END_ALONE)
		pool_ops->instance_check(s->target);
}

/*
 * Is this ErrorResponse one after which the backend closes the connection?
 * If so, *why is "the server ended the session: FATAL: <message> (SQLSTATE
 * <code>)", for the log, and *end what it says about the instance; s keeps
 * the server's SQLSTATE and message (end_sqlstate, end_message) for its
 * client.
 */
static bool server_error_ends_session(struct server *s, const uint8_t *body, size_t len, char *why, size_t cap,
				      enum session_end *end)
{
	struct error_fields ef;
	const char *code;

	if (proto_parse_error(body, len, &ef) != 0 || ef.severity == NULL ||
	    (strcmp(ef.severity, "FATAL") != 0 && strcmp(ef.severity, "PANIC") != 0))
		return false;
	code = ef.sqlstate ? ef.sqlstate : "?";
	if (ef.sqlstate && strlen(ef.sqlstate) == 5 && ef.message) {
		free(s->end_message);
		s->end_message = xstrdup(ef.message);
		memcpy(s->end_sqlstate, ef.sqlstate, sizeof(s->end_sqlstate));
	}
	/* idle_in_transaction_session_timeout, idle_session_timeout, transaction_timeout */
	if (strcmp(code, SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT) == 0 || strcmp(code, SQLSTATE_IDLE_SESSION_TIMEOUT) == 0 ||
	    strcmp(code, SQLSTATE_TRANSACTION_TIMEOUT) == 0)
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
 * Hand the client the first *span bytes of the input (messages relayed as
 * they are, consecutive ones at once) and consume them. With no client
 * relayed to, they are dropped.
 */
static void server_deliver_span(struct server *s, bool relaying, size_t *span)
{
	if (*span == 0)
		return;
	if (relaying)
		s->client_ops->deliver(s->client, iobuf_head(&s->io.in), *span);
	iobuf_consume(&s->io.in, *span);
	*span = 0;
}

/*
 * A whole backend message (type, body of blen bytes) at offset *span of the
 * input, while a client is linked: the reply tracker says what becomes of
 * it. SERVER_INPUT_RELEASE when it ends the client's transaction,
 * SERVER_INPUT_GONE when s was closed.
 */
static enum server_input server_relay_message(struct server *s, uint8_t type, const uint8_t *body, size_t blen,
					      size_t *span)
{
	struct reply_verdict v;

	if (type == BE_READY_FOR_QUERY)
		s->tx_status = blen >= 1 ? (char)body[0] : 'E';
	reply_backend(&s->replies, type, body, blen, &v);
	if (v.broken) {
		server_deliver_span(s, true, span);
		iobuf_consume(&s->io.in, PROTO_HEADER_LEN + blen);
		log_server(LOG_LEVEL_WARNING, s, "the backend accepted a Parse it had to refuse ('%c')", type);
		server_close(s, "the backend accepted a Parse under the name of a statement it had dropped");
		return SERVER_INPUT_GONE;
	}
	if (type == BE_READY_FOR_QUERY)
		s->client_ops->ready_for_query(s->client, s);
	if (v.session_reset) {
		params_clear(&s->applied);
		s->params_fingerprint_valid = false;
		/* Back to the server's defaults: init_query's settings are gone too. */
		s->init_undone = true;
	}
	if (v.statement == REPLY_STATEMENT_ACCEPTED && s->pool)
		pool_ops->statement_accepted(s->pool, v.statement_name);
	else if (v.statement == REPLY_STATEMENT_REFUSED && s->pool)
		pool_ops->statement_refused(s->pool, v.statement_name);
	if (!v.forward || (type == BE_NOTIFICATION && !s->client_ops->notification(s->client, body, blen))) {
		/* The reply to a message of pgmux's own, or a notification the client gets otherwise. */
		server_deliver_span(s, true, span);
		iobuf_consume(&s->io.in, PROTO_HEADER_LEN + blen);
	} else if (type == BE_ERROR_RESPONSE && s->replies.tracking && s->replies.session &&
		   reply_stmt_names(s->replies.session)->count > 0 && memmem(body, blen, "pgmux_", 6) != NULL) {
		/* It may name a statement by pgmux's name: the client gets its own (rare: only then a copy). */
		struct iobuf translated;

		iobuf_init(&translated);
		if (reply_translate_error(s->replies.session, body, blen, &translated) && !translated.failed) {
			server_deliver_span(s, true, span);
			iobuf_consume(&s->io.in, PROTO_HEADER_LEN + blen);
			s->client_ops->deliver(s->client, iobuf_head(&translated), iobuf_len(&translated));
		} else {
			*span += PROTO_HEADER_LEN + blen;
		}
		iobuf_free(&translated);
	} else {
		*span += PROTO_HEADER_LEN + blen;
	}
	if (v.owed) {
		server_deliver_span(s, true, span);
		server_deliver_owed(s);
	}
	/*
	 * The transaction is over when the tracker says so and nothing else is
	 * under way: the rest of a message either way, more input, output not
	 * yet written, or a pinned session.
	 */
	return v.release && !s->pinned && s->forward_remaining == 0 && s->frontend_remaining == 0 &&
			       iobuf_len(&s->io.in) == *span && iobuf_len(&s->io.out) == 0
		       ? SERVER_INPUT_RELEASE
		       : SERVER_INPUT_MORE;
}

/*
 * Frame what the backend sent. While relaying, bodies are passed through as
 * they arrive; the messages pgmux acts on (ReadyForQuery, ParameterStatus,
 * and with transaction pooling every reply but DataRow and CopyData) are
 * held until whole. Consecutive messages that go to the client as they are
 * go to it at once (the span).
 */
static enum server_input server_process_input(struct server *s)
{
	struct iobuf *in = &s->io.in;
	struct client *c = s->client;
	bool relaying = s->state == SERVER_ACTIVE && c != NULL;
	size_t span = 0; /* bytes at the head of the input that go to the client as they are */

	while (iobuf_len(in) > span) {
		const uint8_t *p = iobuf_head(in) + span;
		size_t avail = iobuf_len(in) - span;
		uint8_t type;
		uint32_t mlen;

		if (s->forward_remaining > 0) {
			size_t n = avail < s->forward_remaining ? avail : s->forward_remaining;

			span += n;
			s->forward_remaining -= (uint32_t)n;
			continue;
		}
		if (avail < PROTO_HEADER_LEN)
			break;
		type = p[0];
		mlen = get_u32(p + 1);
		if (mlen < 4 || !proto_valid_backend_type(type)) {
			server_deliver_span(s, relaying, &span);
			log_server(LOG_LEVEL_ERROR, s, "protocol error: message type 0x%02x length %u", type, mlen);
			server_close(s, "protocol error from server");
			return SERVER_INPUT_GONE;
		}
		if (relaying && !reply_holds_whole(&s->replies, type)) {
			size_t n = avail < 1 + (size_t)mlen ? avail : 1 + (size_t)mlen;

			/*
			 * A FATAL relayed as it is (session pooling) precedes the close:
			 * note what it says about the instance, if it came whole.
			 */
			if (type == BE_ERROR_RESPONSE && avail >= 1 + (size_t)mlen) {
				char why[320];
				enum session_end end;

				if (server_error_ends_session(s, p + PROTO_HEADER_LEN, mlen - 4, why, sizeof(why), &end)) {
					s->session_end = end;
					s->end_relayed = true;
				}
			}
			span += n;
			s->forward_remaining = (uint32_t)(1 + mlen - n);
			s->answered = true;
			continue;
		}
		if (mlen > SERVER_MAX_INSPECTED_MESSAGE) {
			server_deliver_span(s, relaying, &span);
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
				if (relaying)
					s->client_ops->parameter(c, name, value);
			}
		}
		if (relaying && type == BE_ERROR_RESPONSE && s->replies.tracking &&
		    server_error_ends_session(s, body, blen, reason, sizeof(reason), &end)) {
			server_deliver_span(s, relaying, &span);
			iobuf_consume(in, 1 + (size_t)mlen);
			/*
			 * The backend ends its session (terminated, shutting down, an
			 * idle-in-transaction timeout). The client's session lives on in
			 * pgmux, so it gets the server's SQLSTATE and message as an ERROR
			 * rather than a FATAL that ends nothing (its lost callback), and
			 * gets it now: until the connection closed, a statement of the
			 * client would still go to this backend, which never reads it,
			 * and the client would wait for its answer for good.
			 */
			s->end_unanswered = !s->answered;
			server_session_ended(s, end);
			server_close(s, reason);
			return SERVER_INPUT_GONE;
		}
		if (relaying) {
			s->answered = true;
			enum server_input result = server_relay_message(s, type, body, blen, &span);

			if (result == SERVER_INPUT_GONE)
				return result;
			if (result == SERVER_INPUT_RELEASE) {
				server_deliver_span(s, relaying, &span);
				return result;
			}
			continue;
		}
		server_deliver_span(s, relaying, &span);
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
		/*
		 * A parked backend's server ended its session (idle_session_timeout,
		 * a terminate, a shutdown): closed now, not when the end of the
		 * connection is read, which a borrow may come before.
		 */
		if (type == BE_ERROR_RESPONSE && s->client == NULL &&
		    server_error_ends_session(s, body, blen, reason, sizeof(reason), &end)) {
			iobuf_consume(in, 1 + (size_t)mlen);
			server_session_ended(s, end);
			server_close(s, reason);
			return SERVER_INPUT_GONE;
		}
		/* Unsolicited message with nobody linked (notice, parameter change): drop it. */
		iobuf_consume(in, 1 + (size_t)mlen);
	}
	server_deliver_span(s, relaying, &span);
	return SERVER_INPUT_MORE;
}

static void server_on_event(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;
	size_t budget = SERVER_READ_BUDGET;

	s->worker->activity++;
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
		if (c && s->client_ops->congested(c)) {
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
			/* With a release, the last use of s here: the pool may hand it to another worker at once. */
			if (c)
				s->client_ops->replies_arrived(c, s, result == SERVER_INPUT_RELEASE);
			if (result == SERVER_INPUT_RELEASE)
				return;
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
	pool_ops->release(s);
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
	if (s->replies.outstanding == 0 || s->cancel_sent)
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
	pool_ops->release(s);
}

void server_client_gone(struct server *s, bool reset)
{
	const struct config *cfg = config_current();

	server_unlink(s);
	if (s->state == SERVER_CLOSED)
		return;
	if (!reset && s->state == SERVER_INTERNAL && s->query_done && s->replies.outstanding == 1 &&
	    s->tx_status == 'I' &&
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
		pool_ops->release(s);
		return;
	}
	if (cfg->server_reset_query && cfg->server_reset_query[0])
		server_run_query(s, cfg->server_reset_query, server_reset_done, NULL);
	else
		pool_ops->release(s);
}

void server_close(struct server *s, const char *reason)
{
	struct client *c = s->client;

	if (s->state == SERVER_CLOSED)
		return;
	log_server_because(LOG_LEVEL_DEBUG, s, reason, "closing (%s, was %s)", reason, server_state_names[s->state]);
	pgconn_cancel(&s->connect);
	if (s->timer) {
		event_free(s->timer);
		s->timer = NULL;
	}
	pool_ops->forget(s);
	server_set_state(s, SERVER_CLOSED);
	server_unlink(s);
	/* libpq owns the socket and the SSL object: PQfinish closes both. */
	io_close(&s->io, false);
	if (s->pg) {
		PQfinish(s->pg);
		s->pg = NULL;
	}
	if (c)
		s->client_ops->lost(c, s, SQLSTATE_CONNECTION_FAILURE, reason);
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
	reply_tracker_free(&s->replies);
	free(s->end_message);
	free(s->query_error);
	free(s->query_value);
	free(s);
}
