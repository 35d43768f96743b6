/*
 * config_options.c: the option table of config.h, the single source of
 * truth for every setting: its section, name, type, default, bounds,
 * whether a reload may change it, and the text man/pgmux.ini.5 documents,
 * with the value names and checks it refers to. config.c loads files
 * through it; tests/unit/test_config.c and tests/check-docs.sh hold the man
 * page and etc/pgmux.ini to it.
 */
#include "config.h"

#include <ctype.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>

#include "log.h"

/* The index of each name is the C enum value it stands for. */
static const char *const client_auth_names[] = { "scram-sha-256", "md5", "trust", NULL };
static const char *const server_tls_names[] = { "disable", "prefer", "require", "verify-ca",
						"verify-full", NULL };
static const char *const pool_mode_names[] = { "session", "transaction", NULL };
static const char *const server_auth_names[] = { "password", "iam", NULL };

/*
 * The '?' stands for the server_id of an instance that aurora_replica_status()
 * reports, so a pattern without one would name the same host for them all.
 */
static const char *check_instance_host_pattern(const char *text)
{
	const char *first = strchr(text, '?');

	if (first == NULL || strchr(first + 1, '?') != NULL)
		return "must contain exactly one '?', which stands for the instance's server_id";
	return NULL;
}

/* A comma separated list of TLSv1.2 and TLSv1.3, with no gap between them. */
static const char *check_tls_protocols(const char *text)
{
	int low, high;

	if (config_tls_protocol_range(text, &low, &high) != 0)
		return "expected TLSv1.2, TLSv1.3 or both, separated by a comma";
	return NULL;
}

/* The cipher list goes to OpenSSL at load; here only what no list can hold. */
static const char *check_tls_ciphers(const char *text)
{
	for (const char *p = text; *p; p++)
		if (!isalnum((unsigned char)*p) && strchr(":-_+!@=,. ", *p) == NULL)
			return "is not an OpenSSL cipher list (letters, digits and : - _ + ! @ = , . only)";
	return NULL;
}

/* Secret names and ARNs: printable ASCII (AWS allows no more), separated by commas. */
static const char *check_secret_ids(const char *text)
{
	for (const char *p = text; *p; p++)
		if (*p < ' ' || *p > '~')
			return "must be secret names or ARNs (printable ASCII) separated by commas";
	return NULL;
}

/* A region name such as us-east-1: letters, digits and dashes. */
static const char *check_region(const char *text)
{
	for (const char *p = text; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-')
			return "is not an AWS region name (such as us-east-1)";
	return NULL;
}

/* A bearer token goes into an HTTP header: printable ASCII, no spaces. */
static const char *check_token(const char *text)
{
	if (strlen(text) < 16)
		return "must be at least 16 characters long";
	for (const char *p = text; *p; p++)
		if (*p <= ' ' || *p > '~')
			return "must be printable ASCII without spaces";
	return NULL;
}

#define FIELD(name) offsetof(struct config, name)

static const struct config_option option_table[] = {
	/* ------------------------------------------------------------ [pgmux] */
	{ .section = "pgmux", .name = "listen_addr", .type = CONFIG_STRING,
	  .default_value = "127.0.0.1", .reloadable = false,
	  .offset = FIELD(listen_addr), .min_value = 1,
	  .doc = "The numeric IPv4 or IPv6 address to accept client connections on. "
		 "0.0.0.0 means every IPv4 address of the machine, :: every IPv6 one." },
	{ .section = "pgmux", .name = "listen_port", .type = CONFIG_INT,
	  .default_value = "6432", .reloadable = false,
	  .offset = FIELD(listen_port), .min_value = 1, .max_value = 65535,
	  .doc = "The TCP port to accept client connections on. Its clients are always "
		 "sent to the writer instance." },
	{ .section = "pgmux", .name = "readonly_port", .type = CONFIG_INT,
	  .default_value = "0", .reloadable = false,
	  .offset = FIELD(readonly_port), .min_value = 0, .max_value = 65535,
	  .doc = "A second TCP port, on listen_addr, for read-only work: its clients "
		 "are sent to the reader instances (replicas), spread over the healthy "
		 "readers by fewest borrowed connections. See reader_fallback_to_writer "
		 "for when no reader is available. 0 means no second port; otherwise it "
		 "must differ from listen_port." },
	{ .section = "pgmux", .name = "workers", .type = CONFIG_INT,
	  .default_value = "0", .reloadable = false,
	  .offset = FIELD(workers), .min_value = 0, .max_value = MAX_WORKERS,
	  .doc = "The number of worker threads, each running its own event loop and "
		 "owning its own sessions. 0 means one per online CPU, at most 64." },
	{ .section = "pgmux", .name = "worker_spread_percent", .type = CONFIG_INT,
	  .default_value = "75", .reloadable = true,
	  .offset = FIELD(worker_spread_percent), .min_value = 0, .max_value = 100,
	  .doc = "How busy a worker thread may get, in percent of one CPU, before pgmux "
		 "spreads its clients over one more worker. pgmux starts with one worker "
		 "taking clients and adds the next while the busiest one uses more than "
		 "this share of a CPU; it gives one back when the others could carry the "
		 "load at under 60 percent of this share each. A client moves between "
		 "workers only between transactions, with nothing buffered (never a "
		 "session-pooled, pinned, LISTEN or admin session). One loop does more "
		 "work per wake-up than two half-busy ones, so at low and middling load "
		 "this saves CPU; workers is the most it uses. 0 deals clients to all "
		 "workers in turn, from the start." },
	{ .section = "pgmux", .name = "batch_sends", .type = CONFIG_BOOL,
	  .default_value = "true", .reloadable = true,
	  .offset = FIELD(batch_sends),
	  .doc = "Send what a worker's loop pass has for its plaintext sockets with one "
		 "system call: the pass queues each socket's output, and when it is over one "
		 "io_uring_enter sends it all, each send taking what the socket's buffer has "
		 "room for without waiting, as send(2) would (a pass with one socket to "
		 "write to sends as before). Under load a pass has replies for several "
		 "clients and statements for several backends, and one call instead of one "
		 "per socket is much of the CPU time a proxy uses. TLS connections send as "
		 "before. Without io_uring (an old kernel, a seccomp profile that forbids "
		 "it, kernel.io_uring_disabled) pgmux logs a warning and sends each socket's "
		 "output with its own call, as with off." },
	{ .section = "pgmux", .name = "busy_poll_us", .type = CONFIG_INT,
	  .default_value = "0", .reloadable = true,
	  .offset = FIELD(busy_poll_us), .min_value = 0, .max_value = 10000,
	  .doc = "Microseconds a worker keeps polling its sockets after its last event "
		 "before it sleeps, while it has at most two sessions in a transaction "
		 "or waiting for a backend (a session-pooled client or an admin console "
		 "session counts as long as it is connected) and the machine has an idle "
		 "CPU (no more runnable threads than CPUs). A reply that arrives within "
		 "that time is relayed without waking a sleeping thread, which is most "
		 "of the latency a proxy adds at low load, at the price of CPU time: a "
		 "worker serving one busy session keeps a CPU busy. Cover the backend's "
		 "usual reply time (200 is a good start on a local network). 0 turns it "
		 "off." },
	{ .section = "pgmux", .name = "client_tls_cert_file", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(client_tls_cert_file),
	  .doc = "The PEM certificate (chain) pgmux presents to clients that ask for TLS. "
		 "Set it together with client_tls_key_file, or leave both empty to refuse "
		 "TLS to clients. A reload reads the files again, which is how a renewed "
		 "certificate is put in place." },
	{ .section = "pgmux", .name = "client_tls_key_file", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(client_tls_key_file),
	  .doc = "The PEM private key for client_tls_cert_file. As PostgreSQL demands of "
		 "its own key, pgmux refuses to start (or to reload) with a key file that "
		 "its group or other users can access (mode 0600 or less), unless root "
		 "owns it, when its group may read it (0640 or less)." },
	{ .section = "pgmux", .name = "client_tls_ciphers", .type = CONFIG_STRING,
	  .default_value = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL",
	  .reloadable = true,
	  .offset = FIELD(client_tls_ciphers), .min_value = 1, .check_string = check_tls_ciphers,
	  .doc = "The cipher suites clients may use with TLS 1.2, as an OpenSSL cipher "
		 "list. The default is what Mozilla's intermediate profile allows: "
		 "forward-secret key "
		 "exchange (ECDHE, DHE) and authenticated encryption (AES-GCM, "
		 "ChaCha20-Poly1305) only, so no RSA key exchange and no CBC. A list that "
		 "OpenSSL cannot use stops pgmux at start-up (or the reload). TLS 1.3 "
		 "suites are all of that kind and are not affected." },
	{ .section = "pgmux", .name = "client_tls_protocols", .type = CONFIG_STRING,
	  .default_value = "TLSv1.2,TLSv1.3", .reloadable = true,
	  .offset = FIELD(client_tls_protocols), .min_value = 1,
	  .check_string = check_tls_protocols,
	  .doc = "The TLS versions clients may use: TLSv1.2, TLSv1.3 or both, separated "
		 "by a comma. Older versions are never offered." },
	{ .section = "pgmux", .name = "require_tls", .type = CONFIG_BOOL,
	  .default_value = "false", .reloadable = true,
	  .offset = FIELD(require_tls),
	  .doc = "When true, clients that do not use TLS are refused before "
		 "authentication. Needs client_tls_cert_file and client_tls_key_file." },
	{ .section = "pgmux", .name = "client_auth", .type = CONFIG_ENUM,
	  .default_value = "scram-sha-256", .reloadable = true,
	  .offset = FIELD(client_auth), .enum_values = client_auth_names,
	  .doc = "How clients prove who they are: scram-sha-256 (the password is never "
		 "sent), md5 (weaker, for old drivers only) or trust (no password at all; "
		 "only for tests on a private machine: anyone who names a user in "
		 "admin_users gets the admin console, and pgmux logs a WARNING saying so "
		 "at every start and reload). The passwords come from the files in "
		 "secrets_dir." },
	{ .section = "pgmux", .name = "secrets_dir", .type = CONFIG_STRING,
	  .default_value = "/etc/pgmux/secrets", .reloadable = true,
	  .offset = FIELD(secrets_dir),
	  .doc = "The directory holding one JSON secret per database user (see SECRETS). "
		 "pgmux uses each secret both to check the client's password and to log "
		 "in to the server. A reload reads the directory again. Empty means no "
		 "directory, which only secrets_manager_secrets allows." },
	/* ---- AWS (Secrets Manager, IAM authentication): one block, [target] server_auth included */
	{ .section = "pgmux", .name = "secrets_manager_secrets", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = false,
	  .offset = FIELD(secrets_manager_secrets), .check_string = check_secret_ids,
	  .doc = "A comma separated list of AWS Secrets Manager secrets, by name or ARN, "
		 "each a database secret shaped like a file of secrets_dir (see SECRETS), "
		 "read in addition to secrets_dir or instead of it. pgmux reads their "
		 "AWSCURRENT version at start-up, where a secret it cannot read is an "
		 "error that names it, and again every secrets_refresh_interval: a "
		 "rotated password applies to the next client login and the next server "
		 "connection, with no reload; a failed refresh keeps the last good value, "
		 "is logged and counted in /metrics. A user in both sources gets the "
		 "Secrets Manager secret. Credentials come from the standard AWS chain "
		 "(see AWS). Empty means none." },
	{ .section = "pgmux", .name = "aws_region", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = false,
	  .offset = FIELD(aws_region), .check_string = check_region,
	  .doc = "The AWS region of the secrets named by name and of the IAM tokens, "
		 "such as us-east-1. A secret named by ARN is read in the region its ARN "
		 "names. Empty means the AWS_REGION environment variable, else "
		 "AWS_DEFAULT_REGION." },
	{ .section = "pgmux", .name = "secrets_refresh_interval", .type = CONFIG_DURATION_MS,
	  .default_value = "300s", .reloadable = false, .bare_unit = "s",
	  .offset = FIELD(secrets_refresh_interval_ms), .min_value = 1000, .max_value = INT_MAX,
	  .doc = "How often pgmux reads secrets_manager_secrets again, to follow "
		 "rotations; a SIGHUP reads them at once. A number without a unit is "
		 "seconds. At least 1s." },
	{ .section = "target", .name = "server_auth", .type = CONFIG_ENUM,
	  .default_value = "password", .reloadable = false,
	  .offset = FIELD(server_auth), .enum_values = server_auth_names,
	  .doc = "How pgmux logs in to the servers: password (the user's secret) or iam "
		 "(an RDS IAM authentication token for the instance's host and port, the "
		 "user and aws_region, made with the AWS credentials and used for 10 of "
		 "its 15 minutes, health checks included). iam needs server_tls = "
		 "require or stronger (verify-full in production), since the token "
		 "travels as a clear-text password; server_require_scram does not apply "
		 "to it. Clients still log in with the secret's password: see AWS." },
	{ .section = "pgmux", .name = "admin_users", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(admin_users),
	  .doc = "A comma separated list of the users allowed to use the pgmux admin "
		 "console, every command included (PAUSE, KILL, CUTOVER TO, SHUTDOWN). "
		 "Spaces around names are ignored; names are case sensitive. Empty means "
		 "nobody." },
	{ .section = "pgmux", .name = "stats_users", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(stats_users),
	  .doc = "A comma separated list of users who may log in to the admin console "
		 "to look only: SHOW commands run, every other command fails with "
		 "SQLSTATE 42501. A user in admin_users too may run everything. Written "
		 "like admin_users; empty means nobody." },
	{ .section = "pgmux", .name = "logfile", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(logfile),
	  .doc = "The file to append log lines to. Empty means standard error. A reload "
		 "reopens the file, so log rotation only needs a SIGHUP." },
	{ .section = "pgmux", .name = "log_level", .type = CONFIG_LOG_LEVEL,
	  .default_value = "info", .reloadable = true,
	  .offset = FIELD(log_level),
	  .doc = "The least severe message that is logged: error, warning, info or "
		 "debug. The -v and -q command-line flags override it." },
	/* Observability (issue 23): log format, syslog, slow borrows and long transactions. */
	{ .section = "pgmux", .name = "log_format", .type = CONFIG_ENUM,
	  .default_value = "text", .reloadable = true,
	  .offset = FIELD(log_format), .enum_values = log_format_names,
	  .doc = "How log lines look: text (a timestamp, the process id, the thread and "
		 "the level, then the message, with a client's or a server connection's "
		 "identity first) or json (one JSON object per line with the keys ts, an "
		 "RFC 3339 UTC time with microseconds, level, pid, thread and msg, and, "
		 "where they apply, client_id or server_id, user, database, remote, "
		 "server, backend_pid, instance, sqlstate and reason). Either way a line "
		 "is written whole, and what clients chose (names, text) is escaped." },
	{ .section = "pgmux", .name = "syslog", .type = CONFIG_BOOL,
	  .default_value = "false", .reloadable = true,
	  .offset = FIELD(syslog),
	  .doc = "When true, every line is sent to syslog too (in log_format; syslog "
		 "adds its own time and process id to text lines), besides logfile or "
		 "standard error." },
	{ .section = "pgmux", .name = "syslog_facility", .type = CONFIG_ENUM,
	  .default_value = "daemon", .reloadable = true,
	  .offset = FIELD(syslog_facility), .enum_values = log_facility_names,
	  .doc = "The syslog facility of the lines: daemon, user, auth, authpriv or "
		 "local0 to local7." },
	{ .section = "pgmux", .name = "syslog_ident", .type = CONFIG_STRING,
	  .default_value = "pgmux", .reloadable = true,
	  .offset = FIELD(syslog_ident), .min_value = 1,
	  .doc = "The name syslog shows for pgmux's lines (at most 63 bytes are used)." },
	{ .section = "pgmux", .name = "log_slow_borrow", .type = CONFIG_DURATION_MS,
	  .default_value = "0s", .reloadable = true, .bare_unit = "ms",
	  .offset = FIELD(log_slow_borrow_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "A client that waits longer than this for a server connection gets "
		 "one log line (level info) when its wait ends with a connection, "
		 "saying how long it waited. A number without a unit is milliseconds; "
		 "0 means no such lines." },
	{ .section = "pgmux", .name = "log_long_transaction", .type = CONFIG_DURATION_MS,
	  .default_value = "0s", .reloadable = true, .bare_unit = "ms",
	  .offset = FIELD(log_long_transaction_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "A transaction that takes longer than this, from its first message to "
		 "the ReadyForQuery that ends it, gets one log line (level info) with its "
		 "duration when it ends. A number without a unit is milliseconds; 0 "
		 "means no such lines." },
	{ .section = "pgmux", .name = "pidfile", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = false,
	  .offset = FIELD(pidfile),
	  .doc = "The file pgmux writes its process id to once it listens (in the foreground "
		 "too) and removes when it exits; -d needs one. Empty means no pid file is "
		 "written." },
	{ .section = "pgmux", .name = "max_packet_size", .type = CONFIG_SIZE,
	  .default_value = "1GB", .reloadable = true,
	  .offset = FIELD(max_packet_size), .min_value = 1024, .max_value = GIGABYTE,
	  .doc = "The largest message a client may send; a client that announces a larger "
		 "one is disconnected with an error. At least 1kB. 1GB, the largest value, "
		 "means PostgreSQL's own limit of 1GB minus one byte." },
	{ .section = "pgmux", .name = "client_login_timeout", .type = CONFIG_DURATION_MS,
	  .default_value = "60s", .reloadable = true, .bare_unit = "s",
	  .offset = FIELD(client_login_timeout_ms), .min_value = 1000, .max_value = INT_MAX,
	  .doc = "How long a client may take from connecting to finishing TLS and "
		 "authentication before it is disconnected. A number without a unit is "
		 "seconds. At least 1s." },
	{ .section = "pgmux", .name = "shutdown_timeout", .type = CONFIG_DURATION_MS,
	  .default_value = "30s", .reloadable = true, .bare_unit = "s",
	  .offset = FIELD(shutdown_timeout_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "After SIGINT, how long sessions may take to end on their own before "
		 "pgmux closes them, cancelling the statements they still run, and exits. "
		 "A number without a unit is seconds; 0 closes them at once." },
	{ .section = "pgmux", .name = "metrics_port", .type = CONFIG_INT,
	  .default_value = "0", .reloadable = false,
	  .offset = FIELD(metrics_port), .min_value = 0, .max_value = 65535,
	  .doc = "A TCP port, on metrics_addr, for Prometheus: GET /metrics returns pgmux's "
		 "counters and, per pool and per instance, what SHOW POOLS and SHOW TARGETS "
		 "show, in the text exposition format; GET /healthz and GET /readyz answer a "
		 "load balancer's or Kubernetes' probes (see pgmux(1)). 0 means no metrics "
		 "endpoint." },
	{ .section = "pgmux", .name = "metrics_addr", .type = CONFIG_STRING,
	  .default_value = "127.0.0.1", .reloadable = false,
	  .offset = FIELD(metrics_addr), .min_value = 1,
	  .doc = "The numeric IPv4 or IPv6 address metrics_port listens on. The metrics "
		 "name users, databases and hosts: the default keeps them on this machine; "
		 "to let a Prometheus server elsewhere scrape them, name an address it can "
		 "reach and set metrics_token." },
	{ .section = "pgmux", .name = "metrics_token", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(metrics_token), .check_string = check_token,
	  .doc = "When set, GET /metrics must carry the header Authorization: Bearer "
		 "followed by this token (Prometheus: authorization credentials in the "
		 "scrape config); without it the answer is 401. At least 16 printable "
		 "characters, no spaces. SHOW CONFIG does not show it. Empty means no "
		 "token is asked for." },
	{ .section = "pgmux", .name = "listen_backlog", .type = CONFIG_INT,
	  .default_value = "4096", .reloadable = false,
	  .offset = FIELD(listen_backlog), .min_value = 1, .max_value = 65535,
	  .doc = "The backlog passed to listen(2): how many connections the kernel queues "
		 "before pgmux accepts them. The kernel caps it at net.core.somaxconn." },
	{ .section = "pgmux", .name = "max_client_connections", .type = CONFIG_INT,
	  .default_value = "10000", .reloadable = true,
	  .offset = FIELD(max_client_connections), .min_value = 1, .max_value = 1000000,
	  .doc = "The most client connections pgmux holds at once, across all workers. "
		 "A client that connects beyond the limit is refused with a FATAL error "
		 "(SQLSTATE 53300) that names the limit, as RDS Proxy refuses clients "
		 "once its maximum number of client connections is exceeded." },
	{ .section = "pgmux", .name = "max_login_connections", .type = CONFIG_INT,
	  .default_value = "1000", .reloadable = true,
	  .offset = FIELD(max_login_connections), .min_value = 1, .max_value = 1000000,
	  .doc = "The most client connections that may be logging in at once (before "
		 "their authentication succeeds: startup, TLS handshake, password), across "
		 "all workers and counted within max_client_connections. A client beyond "
		 "it is refused with a FATAL error (SQLSTATE 53300), so that connections "
		 "that never log in cannot take every slot from those that do." },
	{ .section = "pgmux", .name = "idle_client_timeout", .type = CONFIG_DURATION_MS,
	  .default_value = "1800s", .reloadable = true, .bare_unit = "s",
	  .offset = FIELD(idle_client_timeout_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "How long a client with no transaction in progress may send nothing "
		 "before it is closed with a FATAL error (SQLSTATE 57P05), like RDS "
		 "Proxy's IdleClientTimeout. A number without a unit is seconds; 0 means "
		 "never." },
	{ .section = "pgmux", .name = "peer_id", .type = CONFIG_INT,
	  .default_value = "0", .reloadable = false,
	  .offset = FIELD(peer_id), .min_value = 0, .max_value = PEER_ID_MAX,
	  .doc = "This instance's id, 1 to 255, among the pgmux instances that serve the "
		 "same clients behind a load balancer, all listed in the section [peers] as "
		 "lines ID = host:port (each instance's listen_addr and listen_port, as the "
		 "others reach it; every instance has the same list). The id travels in the "
		 "cancel keys this instance gives its clients, so a CancelRequest that the "
		 "balancer sends to another instance is passed on to this one; and each "
		 "instance opens at most its share of every server's connection cap "
		 "(max_connections or max_connections_percent, which then count for all "
		 "instances together): the cap divided by the number of peers, rounded "
		 "down, plus one for each of the lowest ids while the remainder lasts. 0 "
		 "means no peers (and no [peers] section). An instance that is down keeps "
		 "its share: the others do not take it over, because none of them can tell "
		 "an instance that is down from one it cannot reach, and taking the share "
		 "of one that still runs could open more connections than the server "
		 "allows. Remove a peer that is gone for good from [peers] and reload." },

	/* ----------------------------------------------------------- [target] */
	{ .section = "target", .name = "hosts", .type = CONFIG_HOSTS,
	  .default_value = "127.0.0.1:5432", .reloadable = true,
	  .offset = FIELD(hosts),
	  .doc = "The cluster's instance endpoints, writer and readers in any order, as "
		 "a comma separated list of host:port. A host is a DNS name, an IPv4 "
		 "address or an IPv6 address in brackets ([::1]:5432); the port "
		 "defaults to 5432. pgmux learns each instance's role from its health "
		 "checks (pg_is_in_recovery() on PostgreSQL, aurora_replica_status() on "
		 "Aurora) and follows the writer when it changes in a failover, without "
		 "relying on DNS; so with Aurora, list the instance endpoints, not the "
		 "cluster endpoints. At least one and at most 64 hosts." },
	{ .section = "target", .name = "hosts_from_secret", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(hosts_from_secret),
	  .doc = "The user name of a secret (a file in secrets_dir, or one of "
		 "secrets_manager_secrets) whose host and port fields (port 5432 when "
		 "absent) name the writer, instead of hosts. This is the shape of an RDS "
		 "or Aurora secret: editing its host, then a reload (SIGHUP, RELOAD; a "
		 "Secrets Manager secret is read again every secrets_refresh_interval), "
		 "is a cutover with everything a changed hosts brings (pgmux(1), "
		 "CUTOVER). A secret without a host keeps the hosts there were; at "
		 "start-up pgmux refuses to start." },
	{ .section = "target", .name = "server_tls", .type = CONFIG_ENUM,
	  .default_value = "prefer", .reloadable = true,
	  .offset = FIELD(server_tls), .enum_values = server_tls_names,
	  .doc = "Whether connections to the servers use TLS, with the meaning of libpq's "
		 "sslmode: disable, prefer, require, verify-ca or verify-full. It applies to "
		 "every server connection, monitoring included, and to instances that "
		 "CUTOVER TO names or instance_host_pattern discovers. Use verify-full in "
		 "production: below it, nothing proves that the server is the one meant, "
		 "and libpq sends a password to whichever server asks for it (in clear "
		 "text if the server asks so; see server_require_scram). pgmux logs a "
		 "WARNING at start-up and reload for each host that is not on loopback "
		 "while this is below verify-full." },
	{ .section = "target", .name = "server_require_scram", .type = CONFIG_BOOL,
	  .default_value = "true", .reloadable = true,
	  .offset = FIELD(server_require_scram),
	  .doc = "When true and pgmux is built with libpq 16 or later, server "
		 "connections pass require_auth=scram-sha-256 to libpq, so a server that "
		 "asks for a cleartext or MD5 password is refused before any password is "
		 "sent. libpq 15 has no such setting: built against it (configure says "
		 "which), pgmux sends the password however the server asks, and only "
		 "server_tls = verify-full stops an impostor; pgmux logs a WARNING at "
		 "start-up when this is true but cannot be enforced. Set false for servers "
		 "that still use md5 passwords." },
	{ .section = "target", .name = "server_tls_ca_file", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(server_tls_ca_file),
	  .doc = "The CA certificates that verify-ca and verify-full check the server "
		 "against, passed to libpq as sslrootcert (so the word system means the "
		 "operating system's roots). Empty means libpq's default, "
		 "~/.postgresql/root.crt. For Aurora, use the RDS CA bundle." },
	{ .section = "target", .name = "server_connect_timeout", .type = CONFIG_DURATION_MS,
	  .default_value = "10s", .reloadable = true, .bare_unit = "s",
	  .offset = FIELD(server_connect_timeout_ms), .min_value = 100, .max_value = INT_MAX,
	  .doc = "How long opening a server connection, TLS, login and init_query "
		 "included, may take before that attempt fails. The clients waiting for it "
		 "keep waiting (see connection_borrow_timeout) while pgmux tries again. A "
		 "number without a unit is seconds. At least 100ms." },
	{ .section = "target", .name = "cutover_timeout", .type = CONFIG_DURATION_MS,
	  .default_value = "30s", .reloadable = true, .bare_unit = "s",
	  .offset = FIELD(cutover_timeout_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "When a reload (or CUTOVER TO in the admin console) changes hosts, pgmux first "
		 "logs in to the old writer and the new target on control connections of its own "
		 "(as cutover_user), without pausing; then it pauses new transactions, lets those "
		 "in flight finish, waits until the new target has caught up with the old writer "
		 "(see cutover_require_catchup), then moves the pools to the new instances and "
		 "resumes. This time bounds the logins, and then, counted afresh, the pause. A "
		 "control connection that cannot be opened refuses the cutover before anything is "
		 "paused (unless cutover_require_catchup is false: then the cutover goes ahead "
		 "without the checks). When the pause has not ended within this time, the cutover "
		 "is abandoned: pgmux resumes on the old instances, nothing a client sent fails, "
		 "and the log and SHOW STATS (cutovers_abandoned) say why. Session-pooled and "
		 "pinned clients, which cannot move, end their transaction on the old instance and "
		 "are then closed with FATAL 57P01 (pgmux moved to a new server; reconnect); one "
		 "whose transaction outlasts this time makes the cutover abandon. A number without "
		 "a unit is seconds." },
	{ .section = "target", .name = "cutover_require_catchup", .type = CONFIG_BOOL,
	  .default_value = "true", .reloadable = true,
	  .offset = FIELD(cutover_require_catchup),
	  .doc = "A cutover waits, during its pause and once the transactions in flight "
		 "have ended, until the new target holds everything the old writer wrote: "
		 "it reads the old writer's WAL position (pg_current_wal_insert_lsn()) "
		 "and waits until a "
		 "physical standby has replayed it (pg_last_wal_replay_lsn()) or, for "
		 "logical replication, until the replication slots on the old writer of "
		 "the new target's subscriptions have confirmed it (confirmed_flush_lsn). "
		 "When there is no such relationship to check (a server restored from a "
		 "snapshot, say), true refuses the cutover and false switches anyway with "
		 "a WARNING. The first host of the new list is the one checked: name the "
		 "new writer first." },
	{ .section = "target", .name = "cutover_sync_sequences", .type = CONFIG_BOOL,
	  .default_value = "false", .reloadable = true,
	  .offset = FIELD(cutover_sync_sequences),
	  .doc = "Logical replication does not carry sequences: on the new target a "
		 "serial key would start again where its sequence stands and collide "
		 "with the rows it received. With true, once the new target has caught "
		 "up and before the switch, pgmux reads every sequence of every database "
		 "of the old writer (last_value in pg_sequences) and sets the sequence of "
		 "the same name on the new target to at least that value plus "
		 "cutover_sequence_margin steps (setval; a sequence is never moved back, "
		 "nor past its bounds). A database or sequence the new target lacks is "
		 "logged and skipped; a sequence cutover_user may not read, or any other "
		 "failure, abandons the cutover." },
	{ .section = "target", .name = "cutover_sequence_margin", .type = CONFIG_INT,
	  .default_value = "1000", .reloadable = true,
	  .offset = FIELD(cutover_sequence_margin), .min_value = 0, .max_value = 1000000000,
	  .doc = "How many steps (increments) cutover_sync_sequences sets each sequence "
		 "ahead of the old writer's value: room for values handed out but not yet "
		 "in pg_sequences (a session's cache, CACHE above 1) and for writers "
		 "that do not go through pgmux. Gaps are harmless; collisions are not." },
	{ .section = "target", .name = "cutover_promote", .type = CONFIG_BOOL,
	  .default_value = "false", .reloadable = true,
	  .offset = FIELD(cutover_promote),
	  .doc = "A cutover moves the writer: the new target must accept writes. One "
		 "that is in recovery (a physical standby) is refused, unless this is "
		 "true: then, once it has replayed the old writer's position, pgmux calls "
		 "pg_promote() on it and waits until it leaves recovery "
		 "(pg_is_in_recovery() false), all within cutover_timeout, before the "
		 "switch. cutover_user must be allowed to call pg_promote() (a superuser, "
		 "or a grant of EXECUTE)." },
	{ .section = "target", .name = "cutover_user", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(cutover_user),
	  .doc = "The user whose secret the cutover's own connections (the catch-up "
		 "check, cutover_sync_sequences, cutover_promote) log in as, to "
		 "health_check_database (and, for sequences, to every database). Empty "
		 "means health_check_user's. Reading WAL positions needs no privilege; "
		 "setting sequences needs UPDATE on them and pg_promote() needs a "
		 "superuser or a grant of EXECUTE on it." },
	{ .section = "target", .name = "health_check_interval", .type = CONFIG_DURATION_MS,
	  .default_value = "1s", .reloadable = true, .bare_unit = "ms",
	  .offset = FIELD(health_check_interval_ms), .min_value = 100, .max_value = INT_MAX,
	  .doc = "How often pgmux checks each instance's health and role, over a "
		 "monitoring connection of its own that does not count against "
		 "max_connections. A server connection that fails triggers a check at "
		 "once. A check that fails on a monitoring connection that was already "
		 "open (someone may have terminated it) is tried once more on a new "
		 "connection before the instance counts as down. A number without a "
		 "unit is milliseconds. At least 100ms." },
	{ .section = "target", .name = "health_check_timeout", .type = CONFIG_DURATION_MS,
	  .default_value = "1s", .reloadable = true, .bare_unit = "ms",
	  .offset = FIELD(health_check_timeout_ms), .min_value = 50, .max_value = INT_MAX,
	  .doc = "How long a health check may take, to connect or to run its query; a "
		 "check that takes longer marks the instance unhealthy. A number without "
		 "a unit is milliseconds. At least 50ms." },
	{ .section = "target", .name = "health_check_user", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(health_check_user),
	  .doc = "The user that monitoring connections log in as, with its password "
		 "from secrets_dir; only this user's password is ever sent for them. "
		 "Choose an unprivileged role (pg_monitor is enough). Empty means the "
		 "only user in secrets_dir: with more than one secret, pgmux refuses to "
		 "start until it is set, and after a reload that adds secrets the checks "
		 "keep the user they had (an error is logged)." },
	{ .section = "target", .name = "health_check_database", .type = CONFIG_STRING,
	  .default_value = "postgres", .reloadable = true,
	  .offset = FIELD(health_check_database), .min_value = 1,
	  .doc = "The database that monitoring connections log in to. It must not be "
		 "empty." },
	{ .section = "target", .name = "instance_host_pattern", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(instance_host_pattern), .check_string = check_instance_host_pattern,
	  .doc = "On Aurora, how to reach the instances that aurora_replica_status() "
		 "reports but hosts does not list: the pattern holds exactly one ?, "
		 "which is replaced by the instance's server_id, as in "
		 "?.abc123xyz.us-east-1.rds.amazonaws.com (an instance endpoint), and "
		 "the port is that of the first host. Only the writer's view counts: "
		 "a discovered instance that it no longer reports (deleted, or removed "
		 "by auto scaling) gets no new transactions and is no longer checked. "
		 "Empty means no discovery: only the instances in hosts are used." },
	{ .section = "target", .name = "max_replica_lag", .type = CONFIG_DURATION_MS,
	  .default_value = "0s", .reloadable = true, .bare_unit = "ms",
	  .offset = FIELD(max_replica_lag_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "Readers whose replication lag exceeds this get no new transactions "
		 "until they catch up. Aurora reports the lag itself; on PostgreSQL it "
		 "is now() - pg_last_xact_replay_timestamp() while the reader still has "
		 "WAL to replay. A number without a unit is milliseconds; 0 means no "
		 "limit." },
	{ .section = "target", .name = "reader_fallback_to_writer", .type = CONFIG_BOOL,
	  .default_value = "false", .reloadable = true,
	  .offset = FIELD(reader_fallback_to_writer),
	  .doc = "When no reader is available, send readonly_port clients to the writer "
		 "instead. When false they wait for a reader, up to "
		 "connection_borrow_timeout, or fail at once with an error if the "
		 "cluster has no readers at all." },

	/* ------------------------------------------------------------- [pool] */
	{ .section = "pool", .name = "pool_mode", .type = CONFIG_ENUM,
	  .default_value = "transaction", .reloadable = true,
	  .offset = FIELD(pool_mode), .enum_values = pool_mode_names,
	  .doc = "How clients share server connections. transaction: a client borrows a "
		 "server connection for each transaction and gives it back when "
		 "ReadyForQuery reports the connection idle, so many clients can share "
		 "a few connections. session: a client keeps one server connection for "
		 "its whole session. A change applies to sessions that start after the "
		 "reload." },
	{ .section = "pool", .name = "max_connections", .type = CONFIG_INT,
	  .default_value = "0", .reloadable = true,
	  .offset = FIELD(max_connections), .min_value = 0, .max_value = 1000000,
	  .doc = "The most server connections pgmux opens to each target host. 0 means "
		 "max_connections_percent of what the server's own max_connections setting "
		 "allows." },
	{ .section = "pool", .name = "max_connections_percent", .type = CONFIG_INT,
	  .default_value = "100", .reloadable = true,
	  .offset = FIELD(max_connections_percent), .min_value = 1, .max_value = 100,
	  .doc = "When max_connections is 0: the share, from 1 to 100 percent, of the "
		 "connections the server allows ordinary roles (its max_connections minus "
		 "superuser_reserved_connections, read on the first connection) that pgmux "
		 "may use. SHOW TARGETS in the admin console reports the result. Leave "
		 "room for other clients." },
	{ .section = "pool", .name = "max_idle_connections_percent", .type = CONFIG_INT,
	  .default_value = "50", .reloadable = true,
	  .offset = FIELD(max_idle_connections_percent), .min_value = 0, .max_value = 100,
	  .doc = "How many idle server connections pgmux keeps to each target host, as a "
		 "share, from 0 to 100 percent, of the connection limit in force for "
		 "that host (max_connections, or max_connections_percent of the "
		 "server's own setting), like RDS Proxy's MaxIdleConnectionsPercent. "
		 "Idle connections beyond it are closed once they have been idle for a "
		 "second." },
	{ .section = "pool", .name = "min_pool_size", .type = CONFIG_INT,
	  .default_value = "0", .reloadable = true,
	  .offset = FIELD(min_pool_size), .min_value = 0, .max_value = 1000000,
	  .doc = "The server connections kept open for each (user, database) pool that "
		 "has been used, even when they are idle. They count against "
		 "max_connections; when that is not 0, min_pool_size may not exceed "
		 "it." },
	{ .section = "pool", .name = "connection_borrow_timeout", .type = CONFIG_DURATION_MS,
	  .default_value = "120s", .reloadable = true, .bare_unit = "s",
	  .offset = FIELD(connection_borrow_timeout_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "How long a client waits for a server connection when none is free, "
		 "because the pool is full or no server can be reached. When the time is "
		 "up the client gets an ERROR with SQLSTATE 53300, \"timed out waiting to "
		 "acquire database connection\", and its connection stays usable; a client "
		 "that is still logging in gets a FATAL error instead. The error's DETAIL "
		 "says why when pgmux knows: no instance could serve the pool (with what "
		 "its last failed health check found), or how the last attempt to open a "
		 "server connection failed. A number without a unit is seconds; 0 means "
		 "wait forever." },
	{ .section = "pool", .name = "server_idle_timeout", .type = CONFIG_DURATION_MS,
	  .default_value = "600s", .reloadable = true, .bare_unit = "s",
	  .offset = FIELD(server_idle_timeout_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "How long a server connection may sit idle in the pool, unused, before "
		 "it is closed. A number without a unit is seconds; 0 means never." },
	{ .section = "pool", .name = "server_check_delay", .type = CONFIG_DURATION_MS,
	  .default_value = "30s", .reloadable = true, .bare_unit = "s",
	  .offset = FIELD(server_check_delay_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "How long a server connection may sit idle in the pool before pgmux, about "
		 "to hand it to a client, first looks whether the server ended it meanwhile "
		 "(idle_session_timeout, pg_terminate_backend, a restart): one non-blocking "
		 "look at its socket, which finds the server's FATAL or the end of the "
		 "connection before pgmux has read them; a dead one is closed and the next "
		 "idle one (or a new connection) is taken. Connections given back more "
		 "recently are lent without the look. A connection that the server ended for "
		 "idle_session_timeout before it answered anything gets the transaction's "
		 "first statements sent again to another connection (see pgmux(1), "
		 "Differences from PostgreSQL). As PgBouncer's server_check_delay. A number "
		 "without a unit is seconds; 0 means look every time." },
	{ .section = "pool", .name = "server_lifetime", .type = CONFIG_DURATION_MS,
	  .default_value = "3600s", .reloadable = true, .bare_unit = "s",
	  .offset = FIELD(server_lifetime_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "How old a server connection may grow: one opened longer ago than this "
		 "is closed when it is next returned to the pool, instead of being "
		 "handed to another client. A number without a unit is seconds; 0 means "
		 "no limit." },
	{ .section = "pool", .name = "init_query", .type = CONFIG_STRING,
	  .default_value = "", .reloadable = true,
	  .offset = FIELD(init_query),
	  .doc = "SQL run on every new server connection before any client uses it, like "
		 "RDS Proxy's InitQuery; for example SET work_mem = '64MB'. Clients see "
		 "what it sets as the connection's defaults. A reset undoes it "
		 "(server_reset_query with session pooling; with transaction pooling, the "
		 "RESET of a parameter that an earlier client set at startup, or a "
		 "client's DISCARD ALL or RESET ALL), so pgmux runs it again before the "
		 "next client uses that connection. If it fails, the connection is closed, "
		 "the failure logged, and the clients waiting for a connection get the "
		 "error. Empty means none. It must not contain a semicolon preceded by a "
		 "space, which would start a comment." },
	{ .section = "pool", .name = "server_reset_query", .type = CONFIG_STRING,
	  .default_value = "DISCARD ALL", .reloadable = true,
	  .offset = FIELD(server_reset_query),
	  .doc = "The statement run on a server connection when a session-mode client "
		 "leaves, so the next client finds no state from the last one; init_query, "
		 "when set, runs again before the next client uses the connection. If it "
		 "fails, the connection is closed. Empty means none. It must not contain a "
		 "semicolon preceded by a space, which would start a comment." },
	{ .section = "pool", .name = "max_prepared_statements", .type = CONFIG_INT,
	  .default_value = "100", .reloadable = true,
	  .offset = FIELD(max_prepared_statements), .min_value = 1, .max_value = 100000,
	  .doc = "How many protocol-level prepared statements pgmux keeps on each "
		 "server connection. Beyond it the least recently used one is closed on "
		 "the server, and prepared again, unseen by the client, when a client "
		 "next needs it. From 1 to 100000." },
	{ .section = "pool", .name = "max_pending_replies", .type = CONFIG_INT,
	  .default_value = "8192", .reloadable = true,
	  .offset = FIELD(max_pending_replies), .min_value = 4096, .max_value = 1000000,
	  .doc = "With transaction pooling, how many replies pgmux may be waiting for on "
		 "behalf of one client (each message the client pipelines is one). At the "
		 "limit pgmux stops reading from that client until its backend has "
		 "answered half of them, as PostgreSQL's own TCP back-pressure would; "
		 "nobody else waits. pgmux likewise stops reading from a client that does "
		 "not read what is sent to it, once 256kB are waiting. From 4096 to "
		 "1000000." },
	{ .section = "pool", .name = "max_client_listen_channels", .type = CONFIG_INT,
	  .default_value = "256", .reloadable = true,
	  .offset = FIELD(max_client_listen_channels), .min_value = 1, .max_value = 100000,
	  .doc = "With transaction pooling, how many channels one client may LISTEN on "
		 "(pgmux holds LISTEN itself: see LISTEN and NOTIFY in pgmux(1)). A LISTEN "
		 "beyond it fails with SQLSTATE 54000 and the client keeps its session; "
		 "nobody else notices. From 1 to 100000." },
	{ .section = "pool", .name = "max_client_pending_notifications", .type = CONFIG_INT,
	  .default_value = "1000", .reloadable = true,
	  .offset = FIELD(max_client_pending_notifications), .min_value = 1, .max_value = 1000000,
	  .doc = "With transaction pooling, how many notifications pgmux keeps for one "
		 "client while it is inside a transaction (PostgreSQL delivers them once "
		 "the transaction ends) or does not read its socket. A client that falls "
		 "further behind is closed with SQLSTATE 54000 and a message that says so; "
		 "the notifications of other clients are not held up. From 1 to 1000000." },
	{ .section = "pool", .name = "max_buffered_message_size", .type = CONFIG_SIZE,
	  .default_value = "32MB", .reloadable = true,
	  .offset = FIELD(max_buffered_message_size), .min_value = 1024, .max_value = GIGABYTE,
	  .doc = "With transaction pooling, the largest message pgmux holds whole before "
		 "sending it on (a Query or Parse, whose text it reads, and the other "
		 "extended-protocol messages); COPY data passes through as it arrives, up "
		 "to max_packet_size. A client that announces a larger message is "
		 "disconnected with error 54000 naming this option. At least 1kB." },
	{ .section = "pool", .name = "max_client_prepared_statements", .type = CONFIG_INT,
	  .default_value = "1000", .reloadable = true,
	  .offset = FIELD(max_client_prepared_statements), .min_value = 1, .max_value = 1000000,
	  .doc = "With transaction pooling, how many named prepared statements pgmux keeps "
		 "for one client (their text stays in pgmux while the client holds them, "
		 "whichever backend serves it). A Parse of one more is refused: the client "
		 "is disconnected with error 54000 naming this option. From 1 to 1000000." },
	{ .section = "pool", .name = "idle_transaction_timeout", .type = CONFIG_DURATION_MS,
	  .default_value = "0s", .reloadable = true, .bare_unit = "s",
	  .offset = FIELD(idle_transaction_timeout_ms), .min_value = 0, .max_value = INT_MAX,
	  .doc = "How long a client may hold a server connection while the server waits "
		 "for it (inside a transaction, or in the middle of a message or batch) "
		 "before it is closed with a FATAL error (SQLSTATE 25P03), as PgBouncer's "
		 "option of the same name does; its server connection is closed, which "
		 "rolls the transaction back, and its slot goes to the next client. A "
		 "number without a unit is seconds; 0 means never." },
};

#define OPTION_COUNT (sizeof(option_table) / sizeof(option_table[0]))

const struct config_option *config_options(size_t *count)
{
	if (count != NULL)
		*count = OPTION_COUNT;
	return option_table;
}

const char *config_pool_mode_name(enum pool_mode mode)
{
	if ((int)mode < 0 || (size_t)mode >= sizeof(pool_mode_names) / sizeof(pool_mode_names[0]) - 1)
		return "unknown";
	return pool_mode_names[mode];
}

const char *config_server_tls_sslmode(enum server_tls_mode mode)
{
	if ((int)mode < 0 || (size_t)mode >= sizeof(server_tls_names) / sizeof(server_tls_names[0]) - 1)
		return "unknown";
	return server_tls_names[mode];
}
