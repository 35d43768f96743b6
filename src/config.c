/*
 * config.c: the option table and the loader that turns an INI file into an
 * immutable struct config. The table is the single source of truth: defaults
 * are parsed from it, the man page and example file are checked against it.
 */
#include "config.h"
#include "util.h"

#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* Enum fields are stored through an int pointer; that is only sound while the
 * compiler gives them the size of an int. */
_Static_assert(sizeof(enum pool_mode) == sizeof(int), "enum pool_mode must be int-sized");
_Static_assert(sizeof(enum client_auth_method) == sizeof(int), "enum client_auth_method must be int-sized");
_Static_assert(sizeof(enum server_tls_mode) == sizeof(int), "enum server_tls_mode must be int-sized");

#define MAX_TARGET_HOSTS 64
#define MAX_WORKERS 64
#define DEFAULT_POSTGRES_PORT 5432

/*
 * PostgreSQL refuses any single allocation above 1GB - 1 byte (MaxAllocSize),
 * so no message can be larger. Sizes are capped there, and "1GB" is accepted
 * as a readable way to ask for that cap.
 */
#define SIZE_CAP 1073741823LL
#define GIGABYTE 1073741824LL

/* The index of each name is the C enum value it stands for. */
static const char *const client_auth_names[] = { "scram-sha-256", "md5", "trust", NULL };
static const char *const server_tls_names[] = { "disable", "prefer", "require", "verify-ca",
						"verify-full", NULL };
static const char *const pool_mode_names[] = { "session", "transaction", NULL };

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
	  .offset = FIELD(secrets_dir), .min_value = 1,
	  .doc = "The directory holding one JSON secret per database user (see SECRETS). "
		 "pgmux uses each secret both to check the client's password and to log "
		 "in to the server. A reload reads the directory again." },
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
		 "show, in the text exposition format. 0 means no metrics endpoint." },
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
	  .doc = "When a reload (or CUTOVER TO in the admin console) changes hosts, pgmux "
		 "pauses new transactions, lets those in flight finish for up to this long, "
		 "then moves the pools to the new instances and resumes. Sessions pinned to "
		 "an old instance keep it until they end or this much time has passed, then "
		 "get a FATAL error. A number without a unit is seconds." },
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

static const char *const known_sections[] = { "pgmux", "target", "pool" };

/* ------------------------------------------------------------ parse state */

/*
 * Everything the INI callbacks need. inih does not tell its handler which
 * line it is on, so our own line reader counts lines and the handler reads
 * the count; only the first error is kept, as it is the one to fix first.
 */
struct load_state {
	struct config *cfg;
	FILE *file;
	int line_number;
	char *line_buffer; /* getline's buffer */
	size_t line_buffer_size;
	int option_line[OPTION_COUNT]; /* where each option was set; 0 = not in the file */
	int error_line;                /* 0 = no error yet */
	char error[512];               /* the message without "path:line: " */
};

static void set_error(struct load_state *state, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_error(struct load_state *state, int line, const char *fmt, ...)
{
	va_list ap;

	if (state->error_line != 0)
		return;
	state->error_line = line;
	va_start(ap, fmt);
	vsnprintf(state->error, sizeof(state->error), fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------ value parsers */

/*
 * Each parser either fills *out and returns NULL, or returns a static or
 * state-owned description of what is wrong, worded to follow "[sec] name: ".
 * Messages that quote the value are built into problem[].
 */
struct value_problem {
	char text[384];
};

static const char *problem(struct value_problem *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static const char *problem(struct value_problem *p, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(p->text, sizeof(p->text), fmt, ap);
	va_end(ap);
	return p->text;
}

/* Digits only, optionally signed: no spaces, no hex, no trailing text. */
static bool parse_strict_integer(const char *text, long long *out)
{
	const char *digits = text;
	char *end;

	if (*digits == '+' || *digits == '-')
		digits++;
	if (!isdigit((unsigned char)*digits))
		return false;
	errno = 0;
	*out = strtoll(text, &end, 10);
	return errno == 0 && *end == '\0';
}

struct unit {
	const char *name;
	long long factor;
};

static const struct unit duration_units[] = {
	{ "ms", 1 }, { "s", 1000 }, { "min", 60000 }, { "h", 3600000 }, { NULL, 0 },
};

static const struct unit size_units[] = {
	{ "B", 1 }, { "kB", 1024 }, { "MB", 1048576 }, { "GB", GIGABYTE }, { NULL, 0 },
};

/*
 * A non-negative integer followed by an optional unit, with optional spaces
 * between; units are case sensitive as in postgresql.conf (kB, not KB).
 * Returns 0, or -1 for a malformed value, -2 for one too large for long long.
 */
static int parse_with_unit(const char *text, const struct unit *units, long long bare_factor,
			   long long *out)
{
	const char *p = text;
	long long number = 0;
	long long factor = bare_factor;

	if (!isdigit((unsigned char)*p))
		return -1;
	while (isdigit((unsigned char)*p)) {
		if (number > (LLONG_MAX - 9) / 10)
			return -2;
		number = number * 10 + (*p - '0');
		p++;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p != '\0') {
		const struct unit *u;

		for (u = units; u->name != NULL; u++)
			if (strcmp(p, u->name) == 0)
				break;
		if (u->name == NULL)
			return -1;
		factor = u->factor;
	}
	if (number > LLONG_MAX / factor)
		return -2;
	*out = number * factor;
	return 0;
}

static long long unit_factor(const struct unit *units, const char *name)
{
	for (const struct unit *u = units; u->name != NULL; u++)
		if (strcmp(u->name, name) == 0)
			return u->factor;
	return 0;
}

/* Renders a size or duration for error messages, in the option's own terms. */
static void format_amount(const struct config_option *opt, long long amount, char *buf, size_t len)
{
	if (opt->type == CONFIG_DURATION_MS) {
		if (amount % 1000 == 0)
			snprintf(buf, len, "%llds", amount / 1000);
		else
			snprintf(buf, len, "%lldms", amount);
	} else if (opt->type == CONFIG_SIZE) {
		if (amount == SIZE_CAP || amount == GIGABYTE)
			snprintf(buf, len, "1GB");
		else if (amount % 1048576 == 0)
			snprintf(buf, len, "%lldMB", amount / 1048576);
		else if (amount % 1024 == 0)
			snprintf(buf, len, "%lldkB", amount / 1024);
		else
			snprintf(buf, len, "%lldB", amount);
	} else {
		snprintf(buf, len, "%lld", amount);
	}
}

static const char *check_range(const struct config_option *opt, long long value,
			       struct value_problem *p)
{
	char low[32], high[32];

	/* A maximum of INT_MAX only says what the field can hold; name it only when hit. */
	bool open_ended = opt->max_value == INT_MAX;

	if (value >= opt->min_value && value <= opt->max_value)
		return NULL;
	format_amount(opt, opt->min_value, low, sizeof(low));
	format_amount(opt, opt->max_value, high, sizeof(high));
	if (open_ended && value < opt->min_value)
		return problem(p, "must be at least %s", low);
	if (open_ended)
		return problem(p, "must be at most %s", high);
	return problem(p, "must be between %s and %s", low, high);
}

static const char *parse_int_value(const struct config_option *opt, const char *text, int *out,
				   struct value_problem *p)
{
	long long value;
	const char *why;

	if (!parse_strict_integer(text, &value))
		return problem(p, "invalid integer '%s'", text);
	if ((why = check_range(opt, value, p)) != NULL)
		return why;
	*out = (int)value;
	return NULL;
}

static const char *parse_duration_value(const struct config_option *opt, const char *text,
					int *out, struct value_problem *p)
{
	long long value;
	const char *why;
	int rc = parse_with_unit(text, duration_units, unit_factor(duration_units, opt->bare_unit),
				 &value);

	if (rc == -1)
		return problem(p, "invalid duration '%s' (a whole number with unit ms, s, min or h)",
			       text);
	if (rc == -2)
		return problem(p, "duration '%s' is too large", text);
	if ((why = check_range(opt, value, p)) != NULL)
		return why;
	*out = (int)value;
	return NULL;
}

static const char *parse_size_value(const struct config_option *opt, const char *text, int *out,
				    struct value_problem *p)
{
	long long value;
	const char *why;
	int rc = parse_with_unit(text, size_units, 1, &value);

	if (rc == -1)
		return problem(p, "invalid size '%s' (a whole number with unit B, kB, MB or GB)",
			       text);
	if (rc == -2)
		return problem(p, "size '%s' is too large", text);
	if ((why = check_range(opt, value, p)) != NULL)
		return why;
	*out = (int)(value > SIZE_CAP ? SIZE_CAP : value);
	return NULL;
}

static const char *parse_bool_value(const char *text, bool *out, struct value_problem *p)
{
	static const char *const truths[] = { "true", "on", "yes", "1" };
	static const char *const falsehoods[] = { "false", "off", "no", "0" };

	for (size_t i = 0; i < sizeof(truths) / sizeof(truths[0]); i++) {
		if (strcasecmp(text, truths[i]) == 0) {
			*out = true;
			return NULL;
		}
		if (strcasecmp(text, falsehoods[i]) == 0) {
			*out = false;
			return NULL;
		}
	}
	return problem(p, "invalid boolean '%s' (use true/false, on/off, yes/no or 1/0)", text);
}

/* Appends "a, b or c" to buf: the allowed words, for error messages. */
static void list_words(const char *const *words, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; words[i] != NULL && used < len; i++) {
		const char *sep = i == 0 ? "" : words[i + 1] == NULL ? " or " : ", ";
		int n = snprintf(buf + used, len - used, "%s%s", sep, words[i]);

		if (n < 0)
			break;
		used += (size_t)n;
	}
}

static const char *parse_enum_value(const struct config_option *opt, const char *text, int *out,
				    struct value_problem *p)
{
	char allowed[160];

	for (int i = 0; opt->enum_values[i] != NULL; i++) {
		if (strcasecmp(text, opt->enum_values[i]) == 0) {
			*out = i;
			return NULL;
		}
	}
	list_words(opt->enum_values, allowed, sizeof(allowed));
	return problem(p, "invalid value '%s' (expected %s)", text, allowed);
}

static const char *parse_log_level_value(const char *text, int *out, struct value_problem *p)
{
	int level = log_level_from_name(text);

	if (level < 0)
		return problem(p, "invalid log level '%s' (expected error, warning, info or debug)",
			       text);
	*out = level;
	return NULL;
}

static bool is_host_name(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > 253)
		return false;
	for (const char *c = name; *c != '\0'; c++)
		if (!isalnum((unsigned char)*c) && *c != '-' && *c != '.' && *c != '_')
			return false;
	return true;
}

static const char *parse_port(const char *text, const char *entry, int *port,
			      struct value_problem *p)
{
	long long value;

	if (!parse_strict_integer(text, &value) || value < 1 || value > 65535)
		return problem(p, "invalid port '%s' in '%s' (expected 1 to 65535)", text, entry);
	*port = (int)value;
	return NULL;
}

/* One "host[:port]" or "[ipv6][:port]" entry, already trimmed, into *host. */
static const char *parse_host_entry(const char *entry, struct target_host *host,
				    struct value_problem *p)
{
	const char *port_text = NULL;
	const char *name_start = entry;
	size_t name_len;
	char *name;
	const char *why;

	host->port = DEFAULT_POSTGRES_PORT;
	if (entry[0] == '[') {
		const char *close = strchr(entry, ']');
		struct in6_addr address;
		char *numeric;

		if (close == NULL)
			return problem(p, "missing ']' in '%s'", entry);
		name_start = entry + 1;
		name_len = (size_t)(close - name_start);
		if (close[1] == ':')
			port_text = close + 2;
		else if (close[1] != '\0')
			return problem(p, "unexpected text after ']' in '%s'", entry);
		numeric = strndup(name_start, name_len);
		if (numeric == NULL)
			return problem(p, "out of memory");
		if (inet_pton(AF_INET6, numeric, &address) != 1) {
			free(numeric);
			return problem(p, "'%s' is not an IPv6 address in brackets", entry);
		}
		free(numeric);
	} else {
		const char *colon = strchr(entry, ':');

		if (colon != NULL && strchr(colon + 1, ':') != NULL)
			return problem(p, "IPv6 address '%s' must be in brackets, as [address]:port",
				       entry);
		name_len = colon != NULL ? (size_t)(colon - entry) : strlen(entry);
		if (colon != NULL)
			port_text = colon + 1;
	}
	name = strndup(name_start, name_len);
	if (name == NULL)
		return problem(p, "out of memory");
	if (entry[0] != '[' && !is_host_name(name)) {
		free(name);
		return problem(p, "invalid host '%s'", entry);
	}
	if (port_text != NULL && (why = parse_port(port_text, entry, &host->port, p)) != NULL) {
		free(name);
		return why;
	}
	host->host = name;
	return NULL;
}

static void free_hosts(struct target_host *hosts, int count)
{
	for (int i = 0; i < count; i++)
		free(hosts[i].host);
	free(hosts);
}

static const char *parse_hosts_value(const char *text, struct target_host **out, int *out_count,
				     struct value_problem *p)
{
	struct target_host *hosts = calloc(MAX_TARGET_HOSTS, sizeof(*hosts));
	char *copy = strdup(text);
	char *rest = copy, *entry;
	int count = 0;
	const char *why = NULL;

	if (hosts == NULL || copy == NULL) {
		why = problem(p, "out of memory");
		goto fail;
	}
	if (text[0] == '\0') {
		why = problem(p, "at least one host is needed");
		goto fail;
	}
	while ((entry = strsep(&rest, ",")) != NULL) {
		char *end;

		while (*entry == ' ' || *entry == '\t')
			entry++;
		end = entry + strlen(entry);
		while (end > entry && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (*entry == '\0') {
			why = problem(p, "empty entry in host list '%s'", text);
			goto fail;
		}
		if (count == MAX_TARGET_HOSTS) {
			why = problem(p, "more than %d hosts", MAX_TARGET_HOSTS);
			goto fail;
		}
		if ((why = parse_host_entry(entry, &hosts[count], p)) != NULL)
			goto fail;
		count++;
	}
	free(copy);
	*out = hosts;
	*out_count = count;
	return NULL;

fail:
	free(copy);
	free_hosts(hosts, count);
	return why;
}

/* ------------------------------------------------------------ storing values */

static void *field_of(struct config *cfg, const struct config_option *opt)
{
	return (char *)cfg + opt->offset;
}

static const void *const_field_of(const struct config *cfg, const struct config_option *opt)
{
	return (const char *)cfg + opt->offset;
}

/* Parses text for opt and, if it is valid, replaces the value in cfg. */
static const char *apply_value(struct config *cfg, const struct config_option *opt,
			       const char *text, struct value_problem *p)
{
	switch (opt->type) {
	case CONFIG_STRING: {
		char **slot = field_of(cfg, opt);
		char *copy;
		const char *why;

		if (opt->min_value > 0 && text[0] == '\0')
			return problem(p, "must not be empty");
		/* Empty means unset, which needs no further check. */
		if (text[0] != '\0' && opt->check_string != NULL &&
		    (why = opt->check_string(text)) != NULL)
			return why;
		if ((copy = strdup(text)) == NULL)
			return problem(p, "out of memory");
		free(*slot);
		*slot = copy;
		return NULL;
	}
	case CONFIG_INT:
		return parse_int_value(opt, text, field_of(cfg, opt), p);
	case CONFIG_BOOL:
		return parse_bool_value(text, field_of(cfg, opt), p);
	case CONFIG_DURATION_MS:
		return parse_duration_value(opt, text, field_of(cfg, opt), p);
	case CONFIG_SIZE:
		return parse_size_value(opt, text, field_of(cfg, opt), p);
	case CONFIG_ENUM:
		return parse_enum_value(opt, text, field_of(cfg, opt), p);
	case CONFIG_LOG_LEVEL:
		return parse_log_level_value(text, field_of(cfg, opt), p);
	case CONFIG_HOSTS: {
		/* The only option of this type; it owns both hosts and n_hosts. */
		struct target_host *hosts = NULL;
		int count = 0;
		const char *why = parse_hosts_value(text, &hosts, &count, p);

		if (why != NULL)
			return why;
		free_hosts(cfg->hosts, cfg->n_hosts);
		cfg->hosts = hosts;
		cfg->n_hosts = count;
		return NULL;
	}
	}
	return problem(p, "option of unknown type");
}

/* ------------------------------------------------------------ the INI callbacks */

static bool is_known_section(const char *name)
{
	for (size_t i = 0; i < sizeof(known_sections) / sizeof(known_sections[0]); i++)
		if (strcmp(name, known_sections[i]) == 0)
			return true;
	return false;
}

static void report_unknown_section(struct load_state *state, const char *name)
{
	set_error(state, state->line_number,
		  "unknown section [%s] (expected [pgmux], [target] or [pool])", name);
}

/*
 * fgets-style reader for ini_parse_stream. Besides counting lines it strips
 * leading whitespace, because inih would otherwise take an indented line as
 * the continuation of the previous value (a surprise nobody wants here); it
 * rejects lines too long for inih's buffer instead of letting inih split
 * them; and it catches unknown sections that hold no keys, which inih never
 * reports to the handler.
 */
static char *read_line(char *buffer, int size, void *stream)
{
	struct load_state *state = stream;
	ssize_t length = getline(&state->line_buffer, &state->line_buffer_size, state->file);
	char *line;
	size_t stripped_length;

	if (length < 0)
		return NULL;
	state->line_number++;
	line = state->line_buffer;
	if (state->line_number == 1 && strncmp(line, "\xEF\xBB\xBF", 3) == 0)
		line += 3; /* a UTF-8 byte order mark */
	while (*line == ' ' || *line == '\t')
		line++;
	stripped_length = strlen(line);
	if (stripped_length + 1 > (size_t)size) {
		set_error(state, state->line_number, "line is longer than %d characters", size - 2);
		strcpy(buffer, "\n");
		return buffer;
	}
	if (line[0] == '[') {
		const char *close = strchr(line, ']');

		if (close != NULL) {
			char name[64];
			size_t name_length = (size_t)(close - line - 1);

			if (name_length >= sizeof(name))
				name_length = sizeof(name) - 1;
			memcpy(name, line + 1, name_length);
			name[name_length] = '\0';
			if (!is_known_section(name))
				report_unknown_section(state, name);
		}
	}
	memcpy(buffer, line, stripped_length + 1);
	return buffer;
}

static int handle_pair(void *user, const char *section, const char *name, const char *value)
{
	struct load_state *state = user;
	const struct config_option *opt;
	struct value_problem p;
	const char *why;
	size_t index;

	if (state->error_line != 0)
		return 0; /* one error at a time: the first is the one to fix */
	if (section[0] == '\0') {
		set_error(state, state->line_number, "%s: option outside any section", name);
		return 0;
	}
	if (!is_known_section(section)) {
		report_unknown_section(state, section);
		return 0;
	}
	opt = config_find_option(section, name);
	if (opt == NULL) {
		set_error(state, state->line_number, "[%s] %s: unknown option", section, name);
		return 0;
	}
	index = (size_t)(opt - option_table);
	if (state->option_line[index] != 0) {
		set_error(state, state->line_number, "[%s] %s: already set on line %d", section,
			  name, state->option_line[index]);
		return 0;
	}
	state->option_line[index] = state->line_number;
	why = apply_value(state->cfg, opt, value, &p);
	if (why != NULL) {
		set_error(state, state->line_number, "[%s] %s: %s", section, name, why);
		return 0;
	}
	return 1;
}

/* ------------------------------------------------------------ load and validate */

/* The line an option was set on, or -1 (an error without a line) if it was not. */
static int line_of(const struct load_state *state, const char *section, const char *name)
{
	const struct config_option *opt = config_find_option(section, name);

	if (opt == NULL || state->option_line[opt - option_table] == 0)
		return -1;
	return state->option_line[opt - option_table];
}

/* Rules that involve more than one option, checked once the file is read. */
static void check_combinations(struct load_state *state)
{
	const struct config *cfg = state->cfg;
	bool have_cert = cfg->client_tls_cert_file[0] != '\0';
	bool have_key = cfg->client_tls_key_file[0] != '\0';

	if (have_cert && !have_key)
		set_error(state, line_of(state, "pgmux", "client_tls_cert_file"),
			  "[pgmux] client_tls_cert_file: client_tls_key_file must be set too");
	else if (have_key && !have_cert)
		set_error(state, line_of(state, "pgmux", "client_tls_key_file"),
			  "[pgmux] client_tls_key_file: client_tls_cert_file must be set too");
	else if (cfg->require_tls && !have_cert)
		set_error(state, line_of(state, "pgmux", "require_tls"),
			  "[pgmux] require_tls: needs client_tls_cert_file and client_tls_key_file");

	if (cfg->metrics_port != 0 && (cfg->metrics_port == cfg->listen_port || cfg->metrics_port == cfg->readonly_port))
		set_error(state, line_of(state, "pgmux", "metrics_port"),
			  "[pgmux] metrics_port: must differ from listen_port and readonly_port (%d)", cfg->metrics_port);
	if (cfg->readonly_port != 0 && cfg->readonly_port == cfg->listen_port)
		set_error(state, line_of(state, "pgmux", "readonly_port"),
			  "[pgmux] readonly_port: must differ from listen_port (%d)",
			  cfg->listen_port);

	/*
	 * The pools of all users and databases share a host's max_connections,
	 * so one pool's floor above it could never be met. (With max_connections
	 * at 0 the limit is only known once the server has been asked.)
	 */
	if (cfg->max_connections > 0 && cfg->min_pool_size > cfg->max_connections)
		set_error(state, line_of(state, "pool", "min_pool_size"),
			  "[pool] min_pool_size: must not be larger than max_connections (%d)",
			  cfg->max_connections);
}

/* Every option at its default, parsed from the table's own text. */
static struct config *config_defaults(const char *path, char *err, size_t errlen)
{
	struct config *cfg = calloc(1, sizeof(*cfg));

	if (cfg == NULL || (cfg->path = strdup(path)) == NULL) {
		free(cfg);
		error_printf(err, errlen, "%s: out of memory", path);
		return NULL;
	}
	for (size_t i = 0; i < OPTION_COUNT; i++) {
		const struct config_option *opt = &option_table[i];
		struct value_problem p;
		const char *why;

		/* Strings start as "" so that a failed load can free them all. */
		if (opt->type == CONFIG_STRING) {
			char **slot = field_of(cfg, opt);

			if ((*slot = strdup("")) == NULL) {
				config_free(cfg);
				error_printf(err, errlen, "%s: out of memory", path);
				return NULL;
			}
		}
		why = apply_value(cfg, opt, opt->default_value, &p);
		if (why != NULL) {
			/* A broken table is a programming error, but say where. */
			error_printf(err, errlen, "%s: built-in default of [%s] %s: %s", path,
				    opt->section, opt->name, why);
			config_free(cfg);
			return NULL;
		}
	}
	return cfg;
}

struct config *config_load(const char *path, char *err, size_t errlen)
{
	struct load_state state;
	int rc;

	memset(&state, 0, sizeof(state));
	state.file = fopen(path, "r");
	if (state.file == NULL) {
		error_printf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	state.cfg = config_defaults(path, err, errlen);
	if (state.cfg == NULL) {
		fclose(state.file);
		return NULL;
	}

	rc = ini_parse_stream(read_line, &state, handle_pair, &state);
	if (ferror(state.file) && state.error_line == 0)
		set_error(&state, state.line_number + 1, "read error: %s", strerror(errno));
	fclose(state.file);
	free(state.line_buffer);

	if (rc == -2) {
		error_printf(err, errlen, "%s: out of memory", path);
		config_free(state.cfg);
		return NULL;
	}
	/*
	 * inih reports the first line it could not make sense of, or the first
	 * line our handler refused; a line it reports before ours is malformed.
	 */
	if (rc > 0 && (state.error_line == 0 || rc < state.error_line)) {
		state.error_line = 0;
		set_error(&state, rc, "syntax error: expected '[section]' or 'name = value'");
	}
	if (state.error_line == 0)
		check_combinations(&state);
	if (state.error_line != 0) {
		if (state.error_line > 0)
			error_printf(err, errlen, "%s:%d: %s", path, state.error_line, state.error);
		else
			error_printf(err, errlen, "%s: %s", path, state.error);
		config_free(state.cfg);
		return NULL;
	}
	return state.cfg;
}

void config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < OPTION_COUNT; i++)
		if (option_table[i].type == CONFIG_STRING)
			free(*(char **)field_of(cfg, &option_table[i]));
	free_hosts(cfg->hosts, cfg->n_hosts);
	free(cfg->path);
	free(cfg);
}

int config_parse_hosts(const char *text, struct target_host **hosts, int *n_hosts, char *err, size_t errlen)
{
	struct value_problem p;
	const char *why = parse_hosts_value(text, hosts, n_hosts, &p);

	if (why) {
		error_printf(err, errlen, "%s", why);
		return -1;
	}
	return 0;
}

void config_free_hosts(struct target_host *hosts, int n_hosts)
{
	free_hosts(hosts, n_hosts);
}

struct config *config_with_hosts(const struct config *cfg, const struct target_host *hosts, int n_hosts)
{
	struct config *copy = xmalloc(sizeof(*copy));

	*copy = *cfg;
	for (size_t i = 0; i < OPTION_COUNT; i++) {
		if (option_table[i].type == CONFIG_STRING) {
			char **field = (char **)field_of(copy, &option_table[i]);

			*field = xstrdup(*field);
		}
	}
	copy->path = xstrdup(cfg->path);
	copy->hosts = xcalloc((size_t)n_hosts, sizeof(*copy->hosts));
	for (int i = 0; i < n_hosts; i++) {
		copy->hosts[i].host = xstrdup(hosts[i].host);
		copy->hosts[i].port = hosts[i].port;
	}
	copy->n_hosts = n_hosts;
	copy->hosts_in_memory = true;
	return copy;
}

/* ------------------------------------------------------------ queries */

const struct config_option *config_options(size_t *count)
{
	if (count != NULL)
		*count = OPTION_COUNT;
	return option_table;
}

const struct config_option *config_find_option(const char *section, const char *name)
{
	for (size_t i = 0; i < OPTION_COUNT; i++)
		if (strcmp(option_table[i].section, section) == 0 &&
		    strcmp(option_table[i].name, name) == 0)
			return &option_table[i];
	return NULL;
}

int config_worker_count(const struct config *cfg)
{
	long cpus;

	if (cfg->workers > 0)
		return cfg->workers;
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus < 1)
		return 1;
	return cpus > MAX_WORKERS ? MAX_WORKERS : (int)cpus;
}

static char *render_hosts(const struct config *cfg)
{
	size_t size = 1;
	char *text, *end;

	for (int i = 0; i < cfg->n_hosts; i++)
		size += strlen(cfg->hosts[i].host) + sizeof("[]:65535,");
	if ((text = malloc(size)) == NULL)
		return NULL;
	end = text;
	*end = '\0';
	for (int i = 0; i < cfg->n_hosts; i++) {
		const struct target_host *h = &cfg->hosts[i];
		const char *sep = i == 0 ? "" : ",";

		/* A colon in the host can only be an IPv6 address, which needs brackets again. */
		if (strchr(h->host, ':') != NULL)
			end += sprintf(end, "%s[%s]:%d", sep, h->host, h->port);
		else
			end += sprintf(end, "%s%s:%d", sep, h->host, h->port);
	}
	return text;
}

char *config_value_text(const struct config *cfg, const struct config_option *opt)
{
	char buf[64];

	switch (opt->type) {
	case CONFIG_STRING:
		return strdup(*(char *const *)const_field_of(cfg, opt));
	case CONFIG_INT:
		snprintf(buf, sizeof(buf), "%d", *(const int *)const_field_of(cfg, opt));
		return strdup(buf);
	case CONFIG_BOOL:
		return strdup(*(const bool *)const_field_of(cfg, opt) ? "true" : "false");
	case CONFIG_DURATION_MS:
	case CONFIG_SIZE:
		format_amount(opt, *(const int *)const_field_of(cfg, opt), buf, sizeof(buf));
		return strdup(buf);
	case CONFIG_ENUM: {
		int value = *(const int *)const_field_of(cfg, opt);
		int count = 0;

		while (opt->enum_values[count] != NULL)
			count++;
		return strdup(value >= 0 && value < count ? opt->enum_values[value] : "unknown");
	}
	case CONFIG_LOG_LEVEL:
		return strdup(log_level_name(*(const int *)const_field_of(cfg, opt)));
	case CONFIG_HOSTS:
		return render_hosts(cfg);
	}
	return strdup("unknown");
}

const struct config_option *config_first_fixed_change(const struct config *old,
						      const struct config *next)
{
	for (size_t i = 0; i < OPTION_COUNT; i++) {
		const struct config_option *opt = &option_table[i];
		char *before, *after;
		bool same;

		if (opt->reloadable)
			continue;
		before = config_value_text(old, opt);
		after = config_value_text(next, opt);
		same = before != NULL && after != NULL && strcmp(before, after) == 0;
		free(before);
		free(after);
		if (!same)
			return opt;
	}
	return NULL;
}

static bool list_has_user(const char *list, const char *user);

bool config_is_admin(const struct config *cfg, const char *user)
{
	return list_has_user(cfg->admin_users, user);
}

bool config_is_stats_user(const struct config *cfg, const char *user)
{
	return list_has_user(cfg->stats_users, user);
}

/* True when the comma separated list names user (spaces around names ignored). */
static bool list_has_user(const char *list, const char *user)
{
	const char *p = list;
	size_t user_length;

	if (user == NULL || user[0] == '\0')
		return false;
	user_length = strlen(user);
	while (*p != '\0') {
		const char *start, *end;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		start = p;
		while (*p != '\0' && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if ((size_t)(end - start) == user_length && memcmp(start, user, user_length) == 0)
			return true;
	}
	return false;
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

int config_tls_protocol_range(const char *text, int *min_minor, int *max_minor)
{
	bool have[4] = { false, false, false, false };
	const char *p = text;

	while (*p != '\0') {
		const char *start, *end;

		while (*p == ' ' || *p == '\t')
			p++;
		start = p;
		while (*p != '\0' && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if ((size_t)(end - start) == 7 && strncasecmp(start, "TLSv1.2", 7) == 0)
			have[2] = true;
		else if ((size_t)(end - start) == 7 && strncasecmp(start, "TLSv1.3", 7) == 0)
			have[3] = true;
		else
			return -1;
		if (*p == ',')
			p++;
	}
	if (!have[2] && !have[3])
		return -1;
	*min_minor = have[2] ? 2 : 3;
	*max_minor = have[3] ? 3 : 2;
	return 0;
}

bool config_host_is_loopback(const char *host)
{
	struct in_addr v4;
	struct in6_addr v6;

	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &v4) == 1)
		return (ntohl(v4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &v6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&v6);
	return false;
}

bool config_option_is_secret(const struct config_option *opt)
{
	return strcmp(opt->name, "metrics_token") == 0;
}
