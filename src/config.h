/*
 * config.h: pgmux's settings. Every option lives in one table in config_options.c
 * (section, name, type, default, whether a reload may change it, and the text
 * the man page documents); the parsed values land in struct config below.
 * A struct config is immutable once loaded: a reload builds a new one.
 */
#ifndef PGMUX_CONFIG_H
#define PGMUX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

enum pool_mode {
	POOL_MODE_SESSION,
	POOL_MODE_TRANSACTION,
};

enum client_auth_method {
	CLIENT_AUTH_SCRAM,
	CLIENT_AUTH_MD5,
	CLIENT_AUTH_TRUST,
};

/* The values map one to one onto libpq's sslmode. */
enum server_tls_mode {
	SERVER_TLS_DISABLE,
	SERVER_TLS_PREFER,
	SERVER_TLS_REQUIRE,
	SERVER_TLS_VERIFY_CA,
	SERVER_TLS_VERIFY_FULL,
};

/* Bounds that the option table (config_options.c) states and the loader (config.c) enforces. */
#define MAX_WORKERS 64
#define GIGABYTE 1073741824LL /* a size option's cap: see SIZE_CAP in config.c */

/* Which port a client came in on, and so which instances its pool uses. */
enum pool_endpoint {
	ENDPOINT_WRITER, /* listen_port */
	ENDPOINT_READER, /* readonly_port */
};

/* How pgmux logs in to the servers: the secret's password, or an RDS IAM token. */
enum server_auth_method {
	SERVER_AUTH_PASSWORD,
	SERVER_AUTH_IAM,
};

struct target_host {
	char *host; /* name or numeric address, as written */
	int port;
};

/*
 * [peers]: every pgmux instance that serves the same clients behind a load
 * balancer, by id (1..PEER_ID_MAX). An id travels in the cancel keys that
 * instance gives its clients (cancel.c), so any instance can pass a
 * CancelRequest on to the one that holds the session.
 */
#define PEER_ID_MAX 255
#define MAX_PEERS 64

struct peer {
	int id;
	struct target_host address; /* its listen_addr:listen_port, as the other instances reach it */
};

struct config {
	char *path; /* the file this was loaded from */

	/* [pgmux] */
	char *listen_addr;
	int listen_port;   /* routes to the writer */
	int readonly_port; /* routes to the readers; 0 = none */
	int metrics_port;  /* Prometheus endpoint; 0 = none */
	char *metrics_addr;  /* the address metrics_port listens on */
	char *metrics_token; /* "" = /metrics needs no Authorization header */
	int workers; /* as configured; 0 = one per CPU */
	int busy_poll_us; /* 0 = off */
	bool batch_sends; /* a loop pass's sends in one io_uring_enter (io_batch.c) */
	int worker_spread_percent; /* a worker's CPU share that adds one (worker.c); 0 = all from the start */
	char *client_tls_cert_file;
	char *client_tls_key_file;
	char *client_tls_ciphers;   /* OpenSSL cipher list for TLS 1.2 */
	char *client_tls_protocols; /* "TLSv1.2,TLSv1.3" or a part of it */
	bool require_tls;
	enum client_auth_method client_auth;
	char *secrets_dir;             /* "" = none (secrets_manager_secrets only) */
	char *secrets_manager_secrets; /* comma separated names or ARNs; "" = none */
	char *aws_region;              /* "" = AWS_REGION, AWS_DEFAULT_REGION */
	int secrets_refresh_interval_ms;
	char *admin_users; /* comma separated, as written */
	char *stats_users; /* comma separated: SHOW commands only */
	char *logfile;
	int log_level; /* enum log_level */
	int log_format; /* enum log_format */
	bool syslog;
	int syslog_facility; /* index into log_facility_names */
	char *syslog_ident;
	int log_slow_borrow_ms;      /* 0 = no "slow borrow" lines */
	int log_long_transaction_ms; /* 0 = no "long transaction" lines */
	char *pidfile;
	int max_packet_size;        /* bytes, for any client message */
	int client_login_timeout_ms; /* startup + TLS + authentication */
	int shutdown_timeout_ms;     /* SIGINT: how long sessions may take to end */
	int listen_backlog;
	int max_client_connections; /* across all workers */
	int max_login_connections;  /* of those, still before authentication */
	int idle_client_timeout_ms; /* outside a transaction; 0 = never */
	int peer_id;                /* this instance's id in [peers]; 0 = no peers */

	/* [peers], ordered by id; none without peers */
	struct peer *peers;
	int n_peers;

	/* [target] */
	struct target_host *hosts; /* the instances, writer and readers in any order */
	int n_hosts;
	bool hosts_in_memory; /* set by CUTOVER TO: hosts differ from the file until the next reload */
	char *hosts_from_secret; /* "" = hosts as written; else the user whose secret's host and port they are */
	enum server_tls_mode server_tls;
	enum server_auth_method server_auth;
	char *server_tls_ca_file;
	int server_connect_timeout_ms;
	int cutover_timeout_ms;
	bool cutover_require_catchup; /* refuse a cutover with no replication to check */
	char *cutover_user;           /* "" = health_check_user's secret */
	bool cutover_sync_sequences;  /* carry sequences to the new target */
	int cutover_sequence_margin;  /* steps added to each carried sequence */
	bool cutover_promote;         /* pg_promote() a caught-up standby target */
	int health_check_interval_ms;
	int health_check_timeout_ms;  /* for the connect or the query */
	char *health_check_user;      /* "" = the only user in secrets_dir (an error when there are more) */
	bool server_require_scram;    /* libpq 16+: require_auth=scram-sha-256 */
	char *health_check_database;
	char *instance_host_pattern;  /* "" = no discovery; else exactly one '?' */
	int max_replica_lag_ms;       /* 0 = no limit */
	bool reader_fallback_to_writer;

	/* [pool] */
	enum pool_mode pool_mode;
	int max_connections;              /* per target instance; 0 = use the percent */
	int max_connections_percent;      /* of the server's max_connections */
	int max_idle_connections_percent; /* of the effective max_connections */
	int min_pool_size;                /* per (user, database) pool once used */
	int connection_borrow_timeout_ms; /* 0 = wait forever */
	int server_idle_timeout_ms;       /* 0 = never */
	int server_lifetime_ms;           /* checked on return to the pool; 0 = forever */
	int server_check_delay_ms;        /* idle longer: looked at before it is lent; 0 = always */
	char *init_query;                 /* run once on each new server connection */
	char *server_reset_query;         /* run when a session-mode client leaves */
	int max_prepared_statements;      /* per server connection */
	int max_pending_replies;          /* per client: replies awaited before its reading stops */
	int max_client_listen_channels;   /* per client: channels it LISTENs on through pgmux */
	int max_client_pending_notifications; /* per client: notifications waiting for it to be idle */
	int max_buffered_message_size;    /* bytes: a message held whole (transaction pooling) */
	int max_client_prepared_statements; /* named statements kept per client */
	int idle_transaction_timeout_ms;  /* a backend waiting on its client; 0 = never */
};

enum config_type {
	CONFIG_STRING,
	CONFIG_INT,
	CONFIG_BOOL,
	CONFIG_DURATION_MS, /* integer with unit: ms, s, min, h; bare number = the option's unit */
	CONFIG_SIZE,        /* integer with unit: B, kB, MB, GB; bare number = bytes */
	CONFIG_ENUM,
	CONFIG_HOSTS, /* host:port[, host:port ...] */
	CONFIG_LOG_LEVEL,
};

/* One row of the option table; exposed so that tests and docs can walk it. */
struct config_option {
	const char *section;
	const char *name;
	enum config_type type;
	const char *default_value; /* as it would be written in the file */
	bool reloadable;
	const char *doc; /* one paragraph, as in man/pgmux.ini.5 */

	/* How config.c parses and stores the value. */
	size_t offset; /* of the field in struct config (CONFIG_HOSTS: hosts; n_hosts goes with it) */
	/* Allowed range: INT as is, SIZE in bytes, DURATION_MS in milliseconds;
	 * STRING with min_value 1 must not be empty. */
	long long min_value;
	long long max_value;
	const char *const *enum_values; /* CONFIG_ENUM: NULL-terminated; index = the C enum value */
	const char *bare_unit;          /* CONFIG_DURATION_MS: what a number without a unit means */
	/* CONFIG_STRING, optional: NULL when text is acceptable, else what is wrong
	 * with it, worded to follow "[section] name: ". */
	const char *(*check_string)(const char *text);
};

const struct config_option *config_options(size_t *count);

/* The table row for section/name, or NULL. */
const struct config_option *config_find_option(const char *section, const char *name);

/*
 * On reload: the first option that differs between old and next but cannot
 * change without a restart, or NULL when next may replace old as a whole.
 */
const struct config_option *config_first_fixed_change(const struct config *old,
						      const struct config *next);

/*
 * Load and validate a config file. On failure returns NULL and writes a
 * message naming the file, line and key into err (e.g.
 * "/etc/pgmux/pgmux.ini:12: [pool] max_connections: invalid integer 'x'");
 * a file that cannot be read gives "PATH: strerror". String options that
 * are not set hold "" (never NULL), so callers need no NULL checks.
 */
struct config *config_load(const char *path, char *err, size_t errlen);
void config_free(struct config *cfg);

/* Parse "host:port[, host:port ...]" as [target] hosts is parsed. Returns 0, or -1 with err set. */
int config_parse_hosts(const char *text, struct target_host **hosts, int *n_hosts, char *err, size_t errlen);
void config_free_hosts(struct target_host *hosts, int n_hosts);

/* A copy of cfg with other hosts, as CUTOVER TO makes it (in memory only: hosts_in_memory is set). */
struct config *config_with_hosts(const struct config *cfg, const struct target_host *hosts, int n_hosts);

/* The number of worker threads this config asks for, with 0 resolved to the CPU count. */
int config_worker_count(const struct config *cfg);

/* Render one option's current value as text, as SHOW CONFIG would. Returns a malloc'd string. */
char *config_value_text(const struct config *cfg, const struct config_option *opt);

/* True when admin_users lists user. */
bool config_is_admin(const struct config *cfg, const char *user);
/* True when stats_users lists user (who may run SHOW commands in the admin console). */
bool config_is_stats_user(const struct config *cfg, const char *user);

/*
 * client_tls_protocols as TLS minor versions: TLSv1.2 is 2, TLSv1.3 is 3.
 * Returns 0, or -1 when the text is not a valid list (the loader refuses it).
 */
int config_tls_protocol_range(const char *text, int *min_minor, int *max_minor);

/* True when host (a name or numeric address from hosts) is this machine's loopback. */
bool config_host_is_loopback(const char *host);

/* The peer with this id in [peers], or NULL. */
const struct peer *config_find_peer(const struct config *cfg, int id);
/*
 * This instance's share of total (a cap on one server's connections) when
 * [peers] lists n instances: floor(total / n), plus one for each of the
 * (total mod n) lowest ids; at least 1. total itself without peers.
 */
int config_peer_share(const struct config *cfg, int total);

/* True when an option's value is a secret that SHOW CONFIG must not show. */
bool config_option_is_secret(const struct config_option *opt);

const char *config_pool_mode_name(enum pool_mode mode);
const char *config_server_tls_sslmode(enum server_tls_mode mode); /* libpq's sslmode string */

#endif
