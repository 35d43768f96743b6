/*
 * metrics.c: the Prometheus endpoint (see metrics.h).
 *
 * Served by libevent's HTTP server on the main thread's loop, so a scrape
 * never touches a worker's loop: counters are summed from the workers'
 * statistics (atomic loads), pools and targets are read under the pool lock
 * for as long as it takes to print them.
 */
#include "metrics.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "aws.h"
#include "client.h"
#include "control.h"
#include "cutover.h"
#include "iamauth.h"
#include "io.h"
#include "log.h"
#include "pgmux.h"
#include "pool.h"
#include "sqlscan.h"
#include "stats.h"
#include "secretsmgr.h"
#include "worker.h"

#include "build_config.h"

static struct evhttp *http;
static struct evconnlistener *metrics_listener; /* owned by http */
static struct event *metrics_resume_timer;
static uint64_t metrics_pause_logged_usec;

static void metrics_resume(evutil_socket_t fd, short what, void *arg)
{
	if (metrics_listener)
		evconnlistener_enable(metrics_listener);
}

/*
 * evhttp installs no error callback, and libevent would then warn and come
 * back on every loop pass while accept() fails (out of descriptors): pause
 * the metrics listener for a moment instead, as main.c does for clients.
 */
static void metrics_accept_error(struct evconnlistener *listener, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval pause = { 0, 250 * 1000 };
	uint64_t now = pgmux_now_usec();

	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
		__atomic_add_fetch(&pgmux_accept_out_of_descriptors, 1, __ATOMIC_RELAXED);
	if (metrics_pause_logged_usec == 0 || now - metrics_pause_logged_usec >= 10 * 1000 * 1000ULL) {
		log_error("metrics: accept failed: %s; the metrics port waits 250 ms at a time until it passes",
			  evutil_socket_error_to_string(err));
		metrics_pause_logged_usec = now;
	}
	evconnlistener_disable(listener);
	evtimer_add(metrics_resume_timer, &pause);
}

/* value as a label value: backslash, double quote and newline escaped. */
static void put_label(struct evbuffer *b, const char *name, const char *value, bool first)
{
	evbuffer_add_printf(b, "%s%s=\"", first ? "" : ",", name);
	for (const char *p = value; *p; p++) {
		if (*p == '\\' || *p == '"')
			evbuffer_add_printf(b, "\\%c", *p);
		else if (*p == '\n')
			evbuffer_add(b, "\\n", 2);
		else
			evbuffer_add(b, p, 1);
	}
	evbuffer_add(b, "\"", 1);
}

static void put_help(struct evbuffer *b, const char *name, const char *type, const char *help)
{
	evbuffer_add_printf(b, "# HELP pgmux_%s %s\n# TYPE pgmux_%s %s\n", name, help, name, type);
}

static void put_value(struct evbuffer *b, const char *name, const char *type, const char *help,
		      unsigned long long value)
{
	put_help(b, name, type, help);
	evbuffer_add_printf(b, "pgmux_%s %llu\n", name, value);
}

/* One family of per-pool or per-target samples: a header, then a row per object. */
struct family {
	const char *name;
	const char *type;
	const char *help;
};

static const struct family pool_families[] = {
	{ "pool_clients_waiting", "gauge", "Clients waiting for a server connection." },
	{ "pool_server_connections_active", "gauge", "Server connections linked to a client or busy with pgmux's own queries." },
	{ "pool_server_connections_idle", "gauge", "Idle server connections." },
	{ "pool_server_connections_opening", "gauge", "Server connections being opened." },
	{ "pool_server_connections", "gauge", "Server connections, open or opening." },
	{ "pool_server_connections_pinned", "gauge", "Server connections held by pinned or session-pooled clients." },
};

/* What a pool_for_each_* callback prints: one family's samples into b. */
struct family_pass {
	struct evbuffer *b;
	size_t family;
};

static void pool_sample(struct pool *p, void *arg)
{
	struct family_pass *pass = arg;
	const int values[] = { p->n_waiting, p->n_active, p->n_idle, p->n_connecting, p->n_connections, p->n_pinned };

	evbuffer_add_printf(pass->b, "pgmux_%s{", pool_families[pass->family].name);
	put_label(pass->b, "database", p->database, true);
	put_label(pass->b, "user", p->user, false);
	put_label(pass->b, "endpoint", p->endpoint == ENDPOINT_WRITER ? "writer" : "reader", false);
	evbuffer_add_printf(pass->b, "} %d\n", values[pass->family]);
}

/*
 * A histogram's samples: the cumulative _bucket series (le in seconds, +Inf
 * last), _sum in seconds and _count. labels is "" or the sample's other
 * labels, already escaped (pool_labels()).
 */
static void put_histogram(struct evbuffer *b, const char *name, const char *labels, const struct histogram *h)
{
	uint64_t cumulative[HISTOGRAM_BOUNDS + 1];
	const char *comma = labels[0] ? "," : "";

	histogram_cumulative(h, cumulative);
	for (int i = 0; i < HISTOGRAM_BOUNDS; i++)
		evbuffer_add_printf(b, "pgmux_%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, comma,
				    histogram_bounds_usec[i] / 1e6, (unsigned long long)cumulative[i]);
	evbuffer_add_printf(b, "pgmux_%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, comma,
			    (unsigned long long)cumulative[HISTOGRAM_BOUNDS]);
	evbuffer_add_printf(b, "pgmux_%s_sum%s%s%s %.6f\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
			    h->sum_usec / 1e6);
	evbuffer_add_printf(b, "pgmux_%s_count%s%s%s %llu\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
			    (unsigned long long)cumulative[HISTOGRAM_BOUNDS]);
}

/* A pool's labels (database, user, endpoint), escaped, into out. */
static void pool_labels(const struct pool *p, char *out, size_t size)
{
	struct evbuffer *labels = evbuffer_new();
	size_t len;

	out[0] = '\0';
	if (labels == NULL)
		return;
	put_label(labels, "database", p->database, true);
	put_label(labels, "user", p->user, false);
	put_label(labels, "endpoint", p->endpoint == ENDPOINT_WRITER ? "writer" : "reader", false);
	len = evbuffer_get_length(labels);
	if (len >= size)
		len = size - 1;
	evbuffer_copyout(labels, out, len);
	out[len] = '\0';
	evbuffer_free(labels);
}

/* The per-pool histograms and byte counters: one family per pass over the pools. */
static const struct family pool_stats_families[] = {
	{ "transaction_duration_seconds", "histogram",
	  "Transactions, from their first message to the ReadyForQuery that ends them (the borrow wait included)." },
	{ "query_duration_seconds", "histogram",
	  "Queries (a Query, Sync or FunctionCall) from being sent to the server to its ReadyForQuery." },
	{ "borrow_wait_seconds", "histogram", "How long clients waited for a server connection (0 when one was idle)." },
	{ "pool_bytes_received_total", "counter",
	  "Bytes received from the pool's clients (counted at each transaction's end)." },
	{ "pool_bytes_sent_total", "counter", "Bytes sent to the pool's clients (counted at each transaction's end)." },
};

static void pool_stats_sample(struct pool *p, void *arg)
{
	struct family_pass *pass = arg;
	const char *name = pool_stats_families[pass->family].name;
	struct pool_stats_slot sum;
	char labels[1024];

	if (p->stats == NULL)
		return;
	stats_pool_sum(p->stats, &sum);
	pool_labels(p, labels, sizeof(labels));
	switch (pass->family) {
	case 0:
		put_histogram(pass->b, name, labels, &sum.transaction);
		break;
	case 1:
		put_histogram(pass->b, name, labels, &sum.query);
		break;
	case 2:
		put_histogram(pass->b, name, labels, &sum.borrow_wait);
		break;
	default:
		evbuffer_add_printf(pass->b, "pgmux_%s{%s} %llu\n", name, labels,
				    (unsigned long long)(pass->family == 3 ? sum.bytes_in : sum.bytes_out));
		break;
	}
}

/* Counters and gauges of issue 23: failovers, cutovers, pins by reason, refusals, TLS, logins, connects. */
static void metrics_render_events(struct evbuffer *b, const struct worker_stats *st, const struct cutover_stats *cs)
{
	static const char *const limits[] = { "max_client_connections", "max_login_connections", "require_tls" };
	const uint64_t refused[] = { st->refused_max_client_connections, st->refused_max_login_connections,
				     st->refused_require_tls };
	struct event_stats ev;

	stats_get_events(&ev);
	put_value(b, "failovers_total", "counter", "Times pgmux moved to a new writer after losing the previous one.",
		  ev.failovers);
	put_value(b, "resends_total", "counter",
		  "Transactions whose first statements pgmux sent again, to another server connection, because the "
		  "one they went to had ended its session (57P05) before answering.",
		  ev.resends);
	put_help(b, "last_failover_timestamp_seconds", "gauge",
		 "When the last failover found its new writer (Unix time; 0: none).");
	evbuffer_add_printf(b, "pgmux_last_failover_timestamp_seconds %.6f\n", ev.last_failover_unix_usec / 1e6);
	put_help(b, "last_failover_duration_seconds", "gauge",
		 "How long the last failover was without a writer, from losing it to finding the new one.");
	evbuffer_add_printf(b, "pgmux_last_failover_duration_seconds %.6f\n", ev.last_failover_outage_usec / 1e6);
	put_help(b, "last_cutover_timestamp_seconds", "gauge", "When the last cutover ended (Unix time; 0: none).");
	evbuffer_add_printf(b, "pgmux_last_cutover_timestamp_seconds %.6f\n", ev.last_cutover_unix_usec / 1e6);
	/* Its duration is pgmux_last_cutover_pause_seconds: new transactions wait from its start to its end. */
	put_value(b, "last_cutover_transactions_in_flight", "gauge",
		  "Transactions still running when the last cutover began.", (unsigned long long)cs->last_in_flight);
	put_value(b, "last_cutover_clients_waited", "gauge", "Clients waiting when the last cutover moved the pools.",
		  (unsigned long long)cs->last_waited);
	put_value(b, "last_cutover_pinned_sessions", "gauge",
		  "Sessions pinned during the last cutover, whose old backend it closed at the switch.", (unsigned long long)cs->last_pinned);
	put_help(b, "sessions_pinned_by_reason_total", "counter",
		 "Sessions pinned to their server connection, by reason.");
	for (int r = SQL_PIN_NONE + 1; r <= SQL_PIN_TOO_LONG; r++) {
		evbuffer_add_printf(b, "pgmux_sessions_pinned_by_reason_total{");
		put_label(b, "reason", sql_pin_reason_text((enum sql_pin_reason)r), true);
		evbuffer_add_printf(b, "} %llu\n", (unsigned long long)st->pins_by_reason[r]);
	}
	put_help(b, "clients_refused_total", "counter", "Client connections refused at once, by the limit they hit.");
	for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++)
		evbuffer_add_printf(b, "pgmux_clients_refused_total{limit=\"%s\"} %llu\n", limits[i],
				    (unsigned long long)refused[i]);
	put_value(b, "tls_handshake_failures_total", "counter", "Client TLS handshakes that failed.",
		  st->tls_handshake_failures);
	put_help(b, "client_login_seconds", "histogram",
		 "Client logins, from the connection to the end of authentication (TLS and the password exchange).");
	put_histogram(b, "client_login_seconds", "", &st->client_login);
	put_help(b, "server_connect_seconds", "histogram",
		 "New server connections, from the start to ready (DNS, TCP, TLS, login, setup queries).");
	put_histogram(b, "server_connect_seconds", "", &st->server_connect);
}

static const struct family target_families[] = {
	{ "target_up", "gauge", "1 when the instance's last health check passed." },
	{ "target_serving", "gauge", "1 when the instance takes new transactions (SHOW TARGETS status)." },
	{ "target_replication_lag_seconds", "gauge", "Replication lag of a reader, from its last health check." },
	{ "target_server_connections", "gauge", "Server connections to the instance, open or opening." },
	{ "target_server_connections_idle", "gauge", "Idle server connections to the instance." },
	{ "target_max_server_connections", "gauge", "The cap on server connections to the instance (0 until known)." },
	{ "target_health_checks_total", "counter", "Health checks of the instance, by result." },
};

static void target_labels(struct evbuffer *b, const struct target *t)
{
	char port[16];

	snprintf(port, sizeof(port), "%d", t->port);
	put_label(b, "instance", t->instance_id, true);
	put_label(b, "host", t->host, false);
	put_label(b, "port", port, false);
	put_label(b, "role", pool_role_name(t->role), false);
}

static void target_sample(struct target *t, void *arg)
{
	struct family_pass *pass = arg;
	const char *name = target_families[pass->family].name;
	char status[384];

	evbuffer_add_printf(pass->b, "pgmux_%s{", name);
	target_labels(pass->b, t);
	switch (pass->family) {
	case 0:
		evbuffer_add_printf(pass->b, "} %d\n", t->checked && t->healthy ? 1 : 0);
		break;
	case 1:
		pool_target_status_locked(t, status, sizeof(status));
		evbuffer_add_printf(pass->b, "} %d\n", strcmp(status, "serving") == 0 ? 1 : 0);
		break;
	case 2:
		evbuffer_add_printf(pass->b, "} %.3f\n", t->lag_ms / 1000.0);
		break;
	case 3:
		evbuffer_add_printf(pass->b, "} %d\n", t->n_connections);
		break;
	case 4:
		evbuffer_add_printf(pass->b, "} %d\n", t->n_idle);
		break;
	case 5:
		evbuffer_add_printf(pass->b, "} %d\n", t->cap_known ? t->max_connections : 0);
		break;
	default:
		evbuffer_add_printf(pass->b, ",result=\"ok\"} %llu\npgmux_%s{", (unsigned long long)t->checks_ok, name);
		target_labels(pass->b, t);
		evbuffer_add_printf(pass->b, ",result=\"failed\"} %llu\n", (unsigned long long)t->checks_failed);
		break;
	}
}

/* Secrets Manager reads, IAM tokens and AWS credential renewals (all 0 when AWS is not used). */
static void render_aws(struct evbuffer *b)
{
	struct secretsmgr_stats sm;
	struct iamauth_stats iam;
	struct aws_stats aws;

	secretsmgr_get_stats(&sm);
	iamauth_get_stats(&iam);
	aws_get_stats(&aws);
	put_value(b, "secrets_manager_secrets", "gauge", "Secrets read from AWS Secrets Manager (secrets_manager_secrets).",
		  (unsigned long long)sm.secrets);
	put_value(b, "secrets_manager_reads_total", "counter", "GetSecretValue calls that returned the secret.",
		  (unsigned long long)sm.reads);
	put_value(b, "secrets_manager_read_failures_total", "counter",
		  "GetSecretValue calls that failed; the secret kept its last good value.",
		  (unsigned long long)sm.read_failures);
	put_value(b, "secrets_manager_changes_total", "counter", "Secrets found changed (rotated) by a refresh.",
		  (unsigned long long)sm.changes);
	put_value(b, "iam_tokens_made_total", "counter", "RDS IAM tokens made for server logins (server_auth = iam).",
		  (unsigned long long)iam.tokens_made);
	put_value(b, "iam_tokens_reused_total", "counter", "Server logins that used a token made earlier.",
		  (unsigned long long)iam.tokens_reused);
	put_value(b, "iam_token_failures_total", "counter", "Server logins for which no IAM token could be made.",
		  (unsigned long long)iam.failures);
	put_value(b, "aws_credential_refreshes_total", "counter", "Temporary AWS credentials renewed before they expired.",
		  (unsigned long long)aws.credential_refreshes);
	put_value(b, "aws_credential_refresh_failures_total", "counter",
		  "Renewals of AWS credentials that failed (the current ones stayed).",
		  (unsigned long long)aws.credential_refresh_failures);
}

static void metrics_render(struct evbuffer *b)
{
	struct worker_stats st;
	struct cutover_stats cs;

	workers_sum_stats(&st);
	cutover_get_stats(&cs);
	put_help(b, "info", "gauge", "The pgmux version.");
	evbuffer_add_printf(b, "pgmux_info{version=\"%s\"} 1\n", PACKAGE_VERSION);
	put_value(b, "client_connections", "gauge", "Client connections open now.",
		  (unsigned long long)pgmux_clients_open());
	put_value(b, "client_connections_received_total", "counter", "Client connections accepted.",
		  st.clients_accepted);
	put_value(b, "client_logins_failed_total", "counter", "Client logins that failed.", st.logins_failed);
	put_value(b, "client_logins_in_progress", "gauge", "Client connections not yet authenticated.",
		  (unsigned long long)pgmux_logins_open());
	put_value(b, "accept_out_of_descriptors_total", "counter",
		  "accept() failures for want of a file descriptor; each pauses accepting for a moment.",
		  (unsigned long long)__atomic_load_n(&pgmux_accept_out_of_descriptors, __ATOMIC_RELAXED));
	put_value(b, "transactions_total", "counter", "Transactions (server connections given back).",
		  st.transactions);
	put_value(b, "queries_total", "counter", "Query and Sync messages relayed.", st.queries);
	put_value(b, "borrow_waits_total", "counter", "Clients that had to wait for a server connection.",
		  st.borrow_waits);
	put_value(b, "borrow_timeouts_total", "counter", "Waits that ended at connection_borrow_timeout.",
		  st.borrow_timeouts);
	put_value(b, "transactions_waiting", "gauge", "Clients waiting for a server connection now.",
		  (unsigned long long)pool_clients_waiting());
	put_value(b, "sessions_pinned", "gauge", "Sessions pinned to their server connection now.",
		  (unsigned long long)__atomic_load_n(&client_pinned_sessions, __ATOMIC_RELAXED));
	put_value(b, "sessions_pinned_total", "counter", "Sessions that were pinned.", st.sessions_pinned);
	put_value(b, "server_connections_opened_total", "counter", "Server connections opened.", st.servers_opened);
	put_value(b, "server_connection_failures_total", "counter", "Server connection attempts that failed.",
		  st.server_connect_failures);
	put_value(b, "server_connection_handoffs_total", "counter",
		  "Idle server connections moved from one worker thread to another.", st.server_handoffs);
	put_value(b, "client_moves_total", "counter",
		  "Idle clients moved from one worker thread to another (worker_spread_percent).", st.clients_moved);
	put_value(b, "workers_active", "gauge", "Worker threads that take new clients now (worker_spread_percent).",
		  (unsigned long long)workers_active());
	put_value(b, "send_batches_total", "counter",
		  "Loop passes whose sends went out in one io_uring_enter system call (batch_sends).", st.send_batches);
	put_value(b, "batched_sends_total", "counter", "Sends made in those system calls.", st.batched_sends);
	put_value(b, "parses_answered_without_backend_total", "counter",
		  "Parse messages of clients outside a transaction that pgmux answered without a server connection.",
		  st.parses_answered);
	put_value(b, "parses_answered_unjudged_total", "counter",
		  "Of those, Parses of a text no server connection had accepted before (none was free to judge it).",
		  st.parses_unjudged);
	put_value(b, "paused", "gauge", "1 while PAUSE (of everything) holds new transactions.",
		  pool_is_paused() ? 1 : 0);
	put_value(b, "cutovers_total", "counter", "Cutovers to new instances.", (unsigned long long)cs.count);
	put_value(b, "cutovers_abandoned_total", "counter",
		  "Cutovers abandoned: the new target did not catch up (or could not be checked) within cutover_timeout.",
		  (unsigned long long)cs.abandoned);
	put_value(b, "cutover_in_progress", "gauge", "1 while a cutover runs.", cs.in_progress ? 1 : 0);
	put_help(b, "last_cutover_pause_seconds", "gauge", "How long the last cutover held new transactions.");
	evbuffer_add_printf(b, "pgmux_last_cutover_pause_seconds %.3f\n", cs.last_pause_ms / 1000.0);
	metrics_render_events(b, &st, &cs);
	render_aws(b);

	for (size_t i = 0; i < sizeof(pool_families) / sizeof(pool_families[0]); i++) {
		struct family_pass pass = { b, i };

		put_help(b, pool_families[i].name, pool_families[i].type, pool_families[i].help);
		pool_for_each_pool(pool_sample, &pass);
	}
	for (size_t i = 0; i < sizeof(pool_stats_families) / sizeof(pool_stats_families[0]); i++) {
		struct family_pass pass = { b, i };

		put_help(b, pool_stats_families[i].name, pool_stats_families[i].type, pool_stats_families[i].help);
		pool_for_each_pool(pool_stats_sample, &pass);
	}
	for (size_t i = 0; i < sizeof(target_families) / sizeof(target_families[0]); i++) {
		struct family_pass pass = { b, i };

		put_help(b, target_families[i].name, target_families[i].type, target_families[i].help);
		pool_for_each_target(target_sample, &pass);
	}
}

/*
 * With metrics_token set, a scrape must carry "Authorization: Bearer TOKEN".
 * The comparison takes the same time wherever the first difference is.
 */
static bool metrics_authorized(struct evhttp_request *req)
{
	const char *token = config_current()->metrics_token;
	const char *header;
	size_t token_len;

	if (token[0] == '\0')
		return true;
	header = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (header == NULL || strncasecmp(header, "Bearer ", 7) != 0)
		return false;
	header += 7;
	token_len = strlen(token);
	return strlen(header) == token_len && CRYPTO_memcmp(header, token, token_len) == 0;
}

static void metrics_reply(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();

	(void)arg;
	if (b == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
		return;
	}
	if (!metrics_authorized(req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer realm=\"pgmux\"");
		evbuffer_add_printf(b, "pgmux: /metrics needs the bearer token (metrics_token)\n");
		evhttp_send_reply(req, 401, "Unauthorized", b);
		evbuffer_free(b);
		return;
	}
	metrics_render(b);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, HTTP_OK, "OK", b);
	evbuffer_free(b);
}

/* A probe's answer: a status and one line of text, never cached. */
static void probe_reply(struct evhttp_request *req, int code, const char *reason, const char *text)
{
	struct evbuffer *b = evbuffer_new();
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);

	if (b == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
		return;
	}
	evbuffer_add_printf(b, "%s\n", text);
	evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
	evhttp_add_header(headers, "Cache-Control", "no-store");
	evhttp_send_reply(req, code, reason, b);
	evbuffer_free(b);
}

/*
 * GET /healthz: the process is alive and its main loop answers (a liveness
 * probe). Like /readyz it needs no token: it tells nothing a TCP connect to
 * the port would not, and balancers and kubelets probe without headers.
 */
static void healthz_reply(struct evhttp_request *req, void *arg)
{
	(void)arg;
	probe_reply(req, HTTP_OK, "OK", "alive");
}

/*
 * GET /readyz: 200 only while this process accepts clients (no shutdown or
 * hand-over to a new process has begun) and knows a healthy writer; 503
 * otherwise, so that a balancer sends new connections elsewhere.
 */
static void readyz_reply(struct evhttp_request *req, void *arg)
{
	(void)arg;
	if (control_is_draining())
		probe_reply(req, 503, "Service Unavailable", "draining: not accepting new clients");
	else if (!pool_writer_known())
		probe_reply(req, 503, "Service Unavailable", "no writer known");
	else
		probe_reply(req, HTTP_OK, "OK", "ready");
}

static void metrics_not_found(struct evhttp_request *req, void *arg)
{
	(void)arg;
	evhttp_send_error(req, HTTP_NOTFOUND, "pgmux serves only /metrics, /healthz and /readyz");
}

int metrics_start(struct event_base *base, const struct config *cfg, int inherited_fd)
{
	struct evconnlistener *listener;

	if (cfg->metrics_port == 0) {
		if (inherited_fd >= 0)
			close(inherited_fd);
		return 0;
	}
	/* No callback: evhttp takes the listener over. */
	if (inherited_fd >= 0)
		listener = io_listen_inherited(base, inherited_fd, cfg->metrics_port, NULL, NULL);
	else
		listener = io_listen(base, cfg->metrics_addr, cfg->metrics_port, 64, NULL, NULL);
	if (listener == NULL)
		return -1;
	http = evhttp_new(base);
	if (http == NULL || evhttp_bind_listener(http, listener) == NULL) {
		log_error("cannot start the metrics endpoint: out of memory");
		evconnlistener_free(listener);
		metrics_stop();
		return -1;
	}
	metrics_listener = listener;
	metrics_resume_timer = evtimer_new(base, metrics_resume, NULL);
	if (metrics_resume_timer == NULL) {
		log_error("cannot start the metrics endpoint: out of memory");
		metrics_stop();
		return -1;
	}
	evconnlistener_set_error_cb(listener, metrics_accept_error);
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_timeout(http, 10);
	evhttp_set_max_headers_size(http, 8192);
	evhttp_set_max_body_size(http, 0);
	evhttp_set_cb(http, "/metrics", metrics_reply, NULL);
	evhttp_set_cb(http, "/healthz", healthz_reply, NULL);
	evhttp_set_cb(http, "/readyz", readyz_reply, NULL);
	evhttp_set_gencb(http, metrics_not_found, NULL);
	log_info("metrics on http://%s:%d/metrics%s (probes /healthz and /readyz)", cfg->metrics_addr, cfg->metrics_port,
		 cfg->metrics_token[0] ? " (bearer token required)" : "");
	return 0;
}

int metrics_listen_fd(void)
{
	return metrics_listener ? evconnlistener_get_fd(metrics_listener) : -1;
}

void metrics_stop(void)
{
	/* The timer first: it must not re-enable a listener evhttp_free() is about to free. */
	if (metrics_resume_timer) {
		event_free(metrics_resume_timer);
		metrics_resume_timer = NULL;
	}
	metrics_listener = NULL;
	if (http) {
		evhttp_free(http);
		http = NULL;
	}
}
