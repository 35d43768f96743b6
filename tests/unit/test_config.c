/*
 * test_config.c: unit tests for config.c: defaults, every value type, the
 * exact "file:line: [section] name: problem" errors, and the checks that keep
 * man/pgmux.ini.5 and etc/pgmux.ini in step with the option table.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#ifndef TEST_SRCDIR
#error "compile with -DTEST_SRCDIR='\"/abs/top/srcdir\"'"
#endif

/* ------------------------------------------------------------ helpers */

static char config_path[64];

/*
 * Writes text to a fresh temporary file. Each load removes the file at once
 * (the name stays in config_path for the expected error text), so tests that
 * load many files leave nothing behind.
 */
static const char *write_config(const char *text)
{
	int fd;
	size_t length = strlen(text);

	strcpy(config_path, "/tmp/pgmux-test-config-XXXXXX");
	fd = mkstemp(config_path);
	cr_assert(fd >= 0, "mkstemp: %s", strerror(errno));
	cr_assert_eq(write(fd, text, length), (ssize_t)length);
	close(fd);
	return config_path;
}

static struct config *load_file_once(const char *text, char *err, size_t errlen)
{
	struct config *cfg = config_load(write_config(text), err, errlen);

	unlink(config_path);
	return cfg;
}

static struct config *load_ok(const char *text)
{
	char err[512] = "";
	struct config *cfg = load_file_once(text, err, sizeof(err));

	cr_assert_not_null(cfg, "config did not load: %s\n--- text:\n%s", err, text);
	return cfg;
}

/* Asserts that text fails to load with "PATH:" followed by expected. */
static void expect_error(const char *text, const char *expected)
{
	char err[512] = "";
	char want[512];
	struct config *cfg = load_file_once(text, err, sizeof(err));

	snprintf(want, sizeof(want), "%s:%s", config_path, expected);
	cr_assert_null(cfg, "config loaded, expected error \"%s\"\n--- text:\n%s", want, text);
	cr_expect_str_eq(err, want, "\n got: %s\nwant: %s", err, want);
}

static char *value_text(const struct config *cfg, const char *section, const char *name)
{
	const struct config_option *opt = config_find_option(section, name);

	cr_assert_not_null(opt, "no option [%s] %s", section, name);
	return config_value_text(cfg, opt);
}

static void expect_value_text(const struct config *cfg, const char *section, const char *name,
			      const char *expected)
{
	char *text = value_text(cfg, section, name);

	cr_expect_str_eq(text, expected, "[%s] %s renders as '%s', expected '%s'", section, name,
			 text, expected);
	free(text);
}

/* ------------------------------------------------------------ defaults */

Test(config, defaults_from_a_file_with_only_a_section)
{
	struct config *cfg = load_ok("[pgmux]\n");

	cr_expect_str_eq(cfg->path, config_path);
	cr_expect_str_eq(cfg->listen_addr, "127.0.0.1");
	cr_expect_eq(cfg->listen_port, 6432);
	cr_expect_eq(cfg->readonly_port, 0);
	cr_expect_eq(cfg->workers, 0);
	cr_expect_str_eq(cfg->client_tls_cert_file, "");
	cr_expect_str_eq(cfg->client_tls_key_file, "");
	cr_expect_eq(cfg->require_tls, false);
	cr_expect_eq(cfg->client_auth, CLIENT_AUTH_SCRAM);
	cr_expect_str_eq(cfg->secrets_dir, "/etc/pgmux/secrets");
	cr_expect_str_eq(cfg->admin_users, "");
	cr_expect_str_eq(cfg->logfile, "");
	cr_expect_eq(cfg->log_level, LOG_LEVEL_INFO);
	cr_expect_str_eq(cfg->pidfile, "");
	cr_expect_eq(cfg->max_packet_size, 1073741823);
	cr_expect_eq(cfg->client_login_timeout_ms, 60000);
	cr_expect_eq(cfg->shutdown_timeout_ms, 30000);
	cr_expect_eq(cfg->listen_backlog, 4096);
	cr_expect_eq(cfg->max_client_connections, 10000);
	cr_expect_eq(cfg->idle_client_timeout_ms, 1800 * 1000);

	cr_assert_eq(cfg->n_hosts, 1);
	cr_expect_str_eq(cfg->hosts[0].host, "127.0.0.1");
	cr_expect_eq(cfg->hosts[0].port, 5432);
	cr_expect_eq(cfg->server_tls, SERVER_TLS_PREFER);
	cr_expect_str_eq(cfg->server_tls_ca_file, "");
	cr_expect_eq(cfg->server_connect_timeout_ms, 10000);
	cr_expect_eq(cfg->health_check_interval_ms, 1000);
	cr_expect_eq(cfg->health_check_timeout_ms, 1000);
	cr_expect_str_eq(cfg->health_check_user, "");
	cr_expect_str_eq(cfg->health_check_database, "postgres");
	cr_expect_str_eq(cfg->instance_host_pattern, "");
	cr_expect_eq(cfg->max_replica_lag_ms, 0);
	cr_expect_eq(cfg->reader_fallback_to_writer, false);

	cr_expect_eq(cfg->pool_mode, POOL_MODE_TRANSACTION);
	cr_expect_eq(cfg->max_connections, 0);
	cr_expect_eq(cfg->max_connections_percent, 100);
	cr_expect_eq(cfg->max_idle_connections_percent, 50);
	cr_expect_eq(cfg->min_pool_size, 0);
	cr_expect_eq(cfg->connection_borrow_timeout_ms, 120 * 1000);
	cr_expect_eq(cfg->server_idle_timeout_ms, 600 * 1000);
	cr_expect_eq(cfg->server_lifetime_ms, 3600 * 1000);
	cr_expect_str_eq(cfg->init_query, "");
	cr_expect_str_eq(cfg->server_reset_query, "DISCARD ALL");
	cr_expect_eq(cfg->max_prepared_statements, 100);
	config_free(cfg);
}

Test(config, empty_file_is_all_defaults)
{
	struct config *cfg = load_ok("");

	cr_expect_eq(cfg->listen_port, 6432);
	cr_expect_eq(cfg->n_hosts, 1);
	config_free(cfg);
}

Test(config, every_default_renders_as_the_table_writes_it)
{
	size_t count;
	const struct config_option *options = config_options(&count);
	struct config *cfg = load_ok("");

	cr_assert_gt(count, 20);
	for (size_t i = 0; i < count; i++) {
		char *text = config_value_text(cfg, &options[i]);

		cr_expect_str_eq(text, options[i].default_value, "[%s] %s: '%s' vs default '%s'",
				 options[i].section, options[i].name, text,
				 options[i].default_value);
		free(text);
	}
	config_free(cfg);
}

Test(config, table_rows_are_complete_and_unique)
{
	size_t count;
	const struct config_option *options = config_options(&count);

	for (size_t i = 0; i < count; i++) {
		const struct config_option *opt = &options[i];

		cr_expect(opt->doc != NULL && strlen(opt->doc) > 20, "[%s] %s: no doc", opt->section,
			  opt->name);
		cr_expect_eq(config_find_option(opt->section, opt->name), opt, "%s listed twice",
			     opt->name);
		if (opt->type == CONFIG_ENUM)
			cr_expect_not_null(opt->enum_values, "%s: enum without values", opt->name);
		if (opt->type == CONFIG_DURATION_MS)
			cr_expect_not_null(opt->bare_unit, "%s: duration without a bare unit",
					   opt->name);
	}
	cr_expect_null(config_find_option("pool", "nonsense"));
	cr_expect_null(config_find_option("pgmux", "hosts"));
}

/* ------------------------------------------------------------ integers */

Test(config, integer_values)
{
	struct config *cfg = load_ok("[pgmux]\nlisten_port = 7000\nworkers = 4\nlisten_backlog = +128\n"
				     "[pool]\nmax_connections = 50\nmax_connections_percent = 1\n");

	cr_expect_eq(cfg->listen_port, 7000);
	cr_expect_eq(cfg->workers, 4);
	cr_expect_eq(cfg->listen_backlog, 128);
	cr_expect_eq(cfg->max_connections, 50);
	cr_expect_eq(cfg->max_connections_percent, 1);
	config_free(cfg);
}

Test(config, integer_errors_name_file_line_and_key)
{
	expect_error("[pool]\n\n; a comment\nmax_connections = abc\n",
		     "4: [pool] max_connections: invalid integer 'abc'");
	expect_error("[pgmux]\nlisten_port = 12abc\n",
		     "2: [pgmux] listen_port: invalid integer '12abc'");
	expect_error("[pgmux]\nlisten_port = 0x10\n",
		     "2: [pgmux] listen_port: invalid integer '0x10'");
	expect_error("[pgmux]\nlisten_port = 1.5\n",
		     "2: [pgmux] listen_port: invalid integer '1.5'");
	expect_error("[pgmux]\nlisten_port = 70000\n",
		     "2: [pgmux] listen_port: must be between 1 and 65535");
	expect_error("[pgmux]\nlisten_port = 99999999999999999999999\n",
		     "2: [pgmux] listen_port: invalid integer '99999999999999999999999'");
	expect_error("[pgmux]\nworkers = 65\n", "2: [pgmux] workers: must be between 0 and 64");
	expect_error("[pool]\nmax_connections = -1\n",
		     "2: [pool] max_connections: must be between 0 and 1000000");
	expect_error("[pool]\nmax_connections_percent = 0\n",
		     "2: [pool] max_connections_percent: must be between 1 and 100");
	expect_error("[pool]\nmax_connections_percent = 101\n",
		     "2: [pool] max_connections_percent: must be between 1 and 100");
}

/* ------------------------------------------------------------ booleans */

Test(config, boolean_spellings)
{
	static const char *const truths[] = { "true", "on", "yes", "1", "TRUE", "Yes" };
	static const char *const falsehoods[] = { "false", "off", "no", "0", "Off" };
	char text[256];

	for (size_t i = 0; i < sizeof(truths) / sizeof(truths[0]); i++) {
		struct config *cfg;

		snprintf(text, sizeof(text),
			 "[pgmux]\nclient_tls_cert_file = c.pem\nclient_tls_key_file = k.pem\n"
			 "require_tls = %s\n", truths[i]);
		cfg = load_ok(text);
		cr_expect_eq(cfg->require_tls, true, "'%s' should be true", truths[i]);
		expect_value_text(cfg, "pgmux", "require_tls", "true");
		config_free(cfg);
	}
	for (size_t i = 0; i < sizeof(falsehoods) / sizeof(falsehoods[0]); i++) {
		struct config *cfg;

		snprintf(text, sizeof(text), "[pgmux]\nrequire_tls = %s\n", falsehoods[i]);
		cfg = load_ok(text);
		cr_expect_eq(cfg->require_tls, false, "'%s' should be false", falsehoods[i]);
		config_free(cfg);
	}
}

Test(config, boolean_errors)
{
	expect_error("[pgmux]\nrequire_tls = maybe\n",
		     "2: [pgmux] require_tls: invalid boolean 'maybe' "
		     "(use true/false, on/off, yes/no or 1/0)");
	expect_error("[pgmux]\nrequire_tls = 2\n",
		     "2: [pgmux] require_tls: invalid boolean '2' "
		     "(use true/false, on/off, yes/no or 1/0)");
}

/* ------------------------------------------------------------ durations */

Test(config, duration_units)
{
	struct config *cfg = load_ok("[pgmux]\nclient_login_timeout = 45\nshutdown_timeout = 2min\n"
				     "[target]\nserver_connect_timeout = 500ms\n");

	cr_expect_eq(cfg->client_login_timeout_ms, 45000, "a bare number is seconds");
	cr_expect_eq(cfg->shutdown_timeout_ms, 120000);
	cr_expect_eq(cfg->server_connect_timeout_ms, 500);
	expect_value_text(cfg, "pgmux", "client_login_timeout", "45s");
	expect_value_text(cfg, "pgmux", "shutdown_timeout", "120s");
	expect_value_text(cfg, "target", "server_connect_timeout", "500ms");
	config_free(cfg);

	cfg = load_ok("[pgmux]\nclient_login_timeout = 1h\nshutdown_timeout = 0\n"
		      "[target]\nserver_connect_timeout = 3 s\n");
	cr_expect_eq(cfg->client_login_timeout_ms, 3600000);
	cr_expect_eq(cfg->shutdown_timeout_ms, 0);
	cr_expect_eq(cfg->server_connect_timeout_ms, 3000);
	expect_value_text(cfg, "pgmux", "shutdown_timeout", "0s");
	config_free(cfg);
}

Test(config, duration_errors)
{
	const char *why = "(a whole number with unit ms, s, min or h)";
	char want[256];

	snprintf(want, sizeof(want), "2: [pgmux] shutdown_timeout: invalid duration '10x' %s", why);
	expect_error("[pgmux]\nshutdown_timeout = 10x\n", want);
	snprintf(want, sizeof(want), "2: [pgmux] shutdown_timeout: invalid duration '-5s' %s", why);
	expect_error("[pgmux]\nshutdown_timeout = -5s\n", want);
	snprintf(want, sizeof(want), "2: [pgmux] shutdown_timeout: invalid duration '1.5s' %s", why);
	expect_error("[pgmux]\nshutdown_timeout = 1.5s\n", want);
	snprintf(want, sizeof(want), "2: [pgmux] shutdown_timeout: invalid duration '10S' %s", why);
	expect_error("[pgmux]\nshutdown_timeout = 10S\n", want);
	snprintf(want, sizeof(want), "2: [pgmux] shutdown_timeout: invalid duration 's' %s", why);
	expect_error("[pgmux]\nshutdown_timeout = s\n", want);

	expect_error("[pgmux]\nclient_login_timeout = 500ms\n",
		     "2: [pgmux] client_login_timeout: must be at least 1s");
	expect_error("[pgmux]\nclient_login_timeout = 0\n",
		     "2: [pgmux] client_login_timeout: must be at least 1s");
	expect_error("[target]\nserver_connect_timeout = 50ms\n",
		     "2: [target] server_connect_timeout: must be at least 100ms");
	expect_error("[pgmux]\nshutdown_timeout = 1000h\n",
		     "2: [pgmux] shutdown_timeout: must be at most 2147483647ms");
	expect_error("[pgmux]\nshutdown_timeout = 99999999999999999999h\n",
		     "2: [pgmux] shutdown_timeout: duration '99999999999999999999h' is too large");
}

/* ------------------------------------------------------------ sizes */

Test(config, size_units)
{
	struct config *cfg = load_ok("[pgmux]\nmax_packet_size = 64kB\n");

	cr_expect_eq(cfg->max_packet_size, 65536);
	expect_value_text(cfg, "pgmux", "max_packet_size", "64kB");
	config_free(cfg);

	cfg = load_ok("[pgmux]\nmax_packet_size = 2MB\n");
	cr_expect_eq(cfg->max_packet_size, 2 * 1024 * 1024);
	expect_value_text(cfg, "pgmux", "max_packet_size", "2MB");
	config_free(cfg);

	cfg = load_ok("[pgmux]\nmax_packet_size = 1500\n");
	cr_expect_eq(cfg->max_packet_size, 1500, "a bare number is bytes");
	expect_value_text(cfg, "pgmux", "max_packet_size", "1500B");
	config_free(cfg);

	/* 1GB is PostgreSQL's limit, which is one byte less. */
	cfg = load_ok("[pgmux]\nmax_packet_size = 1GB\n");
	cr_expect_eq(cfg->max_packet_size, 1073741823);
	expect_value_text(cfg, "pgmux", "max_packet_size", "1GB");
	config_free(cfg);

	cfg = load_ok("[pgmux]\nmax_packet_size = 1024MB\n");
	cr_expect_eq(cfg->max_packet_size, 1073741823);
	config_free(cfg);
}

Test(config, size_errors)
{
	const char *why = "(a whole number with unit B, kB, MB or GB)";
	char want[256];

	snprintf(want, sizeof(want), "2: [pgmux] max_packet_size: invalid size '1KB' %s", why);
	expect_error("[pgmux]\nmax_packet_size = 1KB\n", want);
	snprintf(want, sizeof(want), "2: [pgmux] max_packet_size: invalid size '1.5MB' %s", why);
	expect_error("[pgmux]\nmax_packet_size = 1.5MB\n", want);
	expect_error("[pgmux]\nmax_packet_size = 1000\n",
		     "2: [pgmux] max_packet_size: must be between 1kB and 1GB");
	expect_error("[pgmux]\nmax_packet_size = 2GB\n",
		     "2: [pgmux] max_packet_size: must be between 1kB and 1GB");
}

/* ------------------------------------------------------------ enums and log levels */

Test(config, enum_values)
{
	struct config *cfg = load_ok("[pgmux]\nclient_auth = md5\nlog_level = DEBUG\n"
				     "[target]\nserver_tls = verify-full\n"
				     "[pool]\npool_mode = Transaction\n");

	cr_expect_eq(cfg->client_auth, CLIENT_AUTH_MD5);
	cr_expect_eq(cfg->log_level, LOG_LEVEL_DEBUG);
	cr_expect_eq(cfg->server_tls, SERVER_TLS_VERIFY_FULL);
	cr_expect_eq(cfg->pool_mode, POOL_MODE_TRANSACTION);
	expect_value_text(cfg, "pgmux", "client_auth", "md5");
	expect_value_text(cfg, "pgmux", "log_level", "debug");
	expect_value_text(cfg, "pool", "pool_mode", "transaction");
	config_free(cfg);

	cfg = load_ok("[pgmux]\nclient_auth = trust\nlog_level = warning\n"
		      "[pool]\npool_mode = session\n");
	cr_expect_eq(cfg->client_auth, CLIENT_AUTH_TRUST);
	cr_expect_eq(cfg->log_level, LOG_LEVEL_WARNING);
	cr_expect_eq(cfg->pool_mode, POOL_MODE_SESSION);
	expect_value_text(cfg, "pool", "pool_mode", "session");
	config_free(cfg);
}

Test(config, every_server_tls_mode_maps_to_its_sslmode)
{
	static const char *const modes[] = { "disable", "prefer", "require", "verify-ca",
					     "verify-full" };
	char text[128];

	for (int i = 0; i < 5; i++) {
		struct config *cfg;

		snprintf(text, sizeof(text), "[target]\nserver_tls = %s\n", modes[i]);
		cfg = load_ok(text);
		cr_expect_eq((int)cfg->server_tls, i);
		cr_expect_str_eq(config_server_tls_sslmode(cfg->server_tls), modes[i]);
		config_free(cfg);
	}
	cr_expect_str_eq(config_pool_mode_name(POOL_MODE_SESSION), "session");
	cr_expect_str_eq(config_pool_mode_name(POOL_MODE_TRANSACTION), "transaction");
	cr_expect_str_eq(config_server_tls_sslmode((enum server_tls_mode)42), "unknown");
}

Test(config, enum_errors_list_the_choices)
{
	expect_error("[pgmux]\nclient_auth = password\n",
		     "2: [pgmux] client_auth: invalid value 'password' "
		     "(expected scram-sha-256, md5 or trust)");
	expect_error("[target]\nserver_tls = allow\n",
		     "2: [target] server_tls: invalid value 'allow' "
		     "(expected disable, prefer, require, verify-ca or verify-full)");
	expect_error("[pool]\npool_mode = statement\n",
		     "2: [pool] pool_mode: invalid value 'statement' (expected session or transaction)");
	expect_error("[pgmux]\nlog_level = verbose\n",
		     "2: [pgmux] log_level: invalid log level 'verbose' "
		     "(expected error, warning, info or debug)");
}

/* ------------------------------------------------------------ strings */

Test(config, strings_and_empty_values)
{
	struct config *cfg = load_ok("[pgmux]\nlogfile = /var/log/pgmux.log\npidfile =\n"
				     "[pool]\nserver_reset_query =\n");

	cr_expect_str_eq(cfg->logfile, "/var/log/pgmux.log");
	cr_expect_str_eq(cfg->pidfile, "");
	cr_expect_str_eq(cfg->server_reset_query, "", "empty means no reset query");
	config_free(cfg);

	expect_error("[pgmux]\nsecrets_dir =\n", "2: [pgmux] secrets_dir: must not be empty");
	expect_error("[pgmux]\nlisten_addr =\n", "2: [pgmux] listen_addr: must not be empty");
}

/* ------------------------------------------------------------ hosts */

Test(config, hosts_list)
{
	struct config *cfg = load_ok("[target]\nhosts = db1.example.com:5433, 10.0.0.2 ,"
				     "[::1]:6000,[2001:db8::5], my_host\n");

	cr_assert_eq(cfg->n_hosts, 5);
	cr_expect_str_eq(cfg->hosts[0].host, "db1.example.com");
	cr_expect_eq(cfg->hosts[0].port, 5433);
	cr_expect_str_eq(cfg->hosts[1].host, "10.0.0.2");
	cr_expect_eq(cfg->hosts[1].port, 5432, "the port defaults to 5432");
	cr_expect_str_eq(cfg->hosts[2].host, "::1", "brackets are not part of the address");
	cr_expect_eq(cfg->hosts[2].port, 6000);
	cr_expect_str_eq(cfg->hosts[3].host, "2001:db8::5");
	cr_expect_eq(cfg->hosts[3].port, 5432);
	cr_expect_str_eq(cfg->hosts[4].host, "my_host");
	expect_value_text(cfg, "target", "hosts",
			  "db1.example.com:5433,10.0.0.2:5432,[::1]:6000,[2001:db8::5]:5432,"
			  "my_host:5432");
	config_free(cfg);
}

Test(config, hosts_limit_is_64)
{
	char text[512];
	size_t used = (size_t)snprintf(text, sizeof(text), "[target]\nhosts = ");
	struct config *cfg;

	for (int i = 0; i < 64; i++)
		used += (size_t)snprintf(text + used, sizeof(text) - used, "%sh", i ? "," : "");
	snprintf(text + used, sizeof(text) - used, "\n");
	cfg = load_ok(text);
	cr_expect_eq(cfg->n_hosts, 64);
	config_free(cfg);

	snprintf(text + used, sizeof(text) - used, ",h\n");
	expect_error(text, "2: [target] hosts: more than 64 hosts");
}

Test(config, hosts_errors)
{
	expect_error("[target]\nhosts = db:0\n",
		     "2: [target] hosts: invalid port '0' in 'db:0' (expected 1 to 65535)");
	expect_error("[target]\nhosts = a, db:99999\n",
		     "2: [target] hosts: invalid port '99999' in 'db:99999' (expected 1 to 65535)");
	expect_error("[target]\nhosts = db:pg\n",
		     "2: [target] hosts: invalid port 'pg' in 'db:pg' (expected 1 to 65535)");
	expect_error("[target]\nhosts = db:\n",
		     "2: [target] hosts: invalid port '' in 'db:' (expected 1 to 65535)");
	expect_error("[target]\nhosts = [::1]:x\n",
		     "2: [target] hosts: invalid port 'x' in '[::1]:x' (expected 1 to 65535)");
	expect_error("[target]\nhosts = ::1\n",
		     "2: [target] hosts: IPv6 address '::1' must be in brackets, as [address]:port");
	expect_error("[target]\nhosts = [db.example.com]:5432\n",
		     "2: [target] hosts: '[db.example.com]:5432' is not an IPv6 address in brackets");
	expect_error("[target]\nhosts = [::1\n", "2: [target] hosts: missing ']' in '[::1'");
	expect_error("[target]\nhosts = [::1]5432\n",
		     "2: [target] hosts: unexpected text after ']' in '[::1]5432'");
	expect_error("[target]\nhosts = a,,b\n", "2: [target] hosts: empty entry in host list 'a,,b'");
	expect_error("[target]\nhosts = a,\n", "2: [target] hosts: empty entry in host list 'a,'");
	expect_error("[target]\nhosts = :5432\n", "2: [target] hosts: invalid host ':5432'");
	expect_error("[target]\nhosts = bad host\n", "2: [target] hosts: invalid host 'bad host'");
	expect_error("[target]\nhosts =\n", "2: [target] hosts: at least one host is needed");
}

/* ------------------------------------------------------------ readers and health checks */

Test(config, readonly_port)
{
	struct config *cfg = load_ok("[pgmux]\nlisten_port = 7000\nreadonly_port = 7001\n");

	cr_expect_eq(cfg->listen_port, 7000);
	cr_expect_eq(cfg->readonly_port, 7001);
	config_free(cfg);

	cfg = load_ok("[pgmux]\nreadonly_port = 0\n");
	cr_expect_eq(cfg->readonly_port, 0, "0 means no second port");
	config_free(cfg);
}

Test(config, readonly_port_errors)
{
	expect_error("[pgmux]\nreadonly_port = 65536\n",
		     "2: [pgmux] readonly_port: must be between 0 and 65535");
	expect_error("[pgmux]\nreadonly_port = -1\n",
		     "2: [pgmux] readonly_port: must be between 0 and 65535");
	expect_error("[pgmux]\nreadonly_port = 5433x\n",
		     "2: [pgmux] readonly_port: invalid integer '5433x'");
	/* Against the default listen_port, and against one set later in the file. */
	expect_error("[pgmux]\n\nreadonly_port = 6432\n",
		     "3: [pgmux] readonly_port: must differ from listen_port (6432)");
	expect_error("[pgmux]\nreadonly_port = 7000\nlisten_port = 7000\n",
		     "2: [pgmux] readonly_port: must differ from listen_port (7000)");
	expect_error("[pgmux]\nmetrics_port = 6432\n",
		     "2: [pgmux] metrics_port: must differ from listen_port and readonly_port (6432)");
	expect_error("[pgmux]\nreadonly_port = 7001\nmetrics_port = 7001\n",
		     "3: [pgmux] metrics_port: must differ from listen_port and readonly_port (7001)");
}

Test(config, health_checks)
{
	struct config *cfg = load_ok("[target]\nhealth_check_interval = 250\n"
				     "health_check_timeout = 50\nhealth_check_user = monitor\n"
				     "health_check_database = app\n");

	cr_expect_eq(cfg->health_check_interval_ms, 250, "a bare number is milliseconds");
	cr_expect_eq(cfg->health_check_timeout_ms, 50);
	cr_expect_str_eq(cfg->health_check_user, "monitor");
	cr_expect_str_eq(cfg->health_check_database, "app");
	expect_value_text(cfg, "target", "health_check_interval", "250ms");
	expect_value_text(cfg, "target", "health_check_timeout", "50ms");
	config_free(cfg);

	cfg = load_ok("[target]\nhealth_check_interval = 5s\nhealth_check_timeout = 2s\n"
		      "health_check_user =\n");
	cr_expect_eq(cfg->health_check_interval_ms, 5000);
	cr_expect_eq(cfg->health_check_timeout_ms, 2000);
	cr_expect_str_eq(cfg->health_check_user, "", "empty means the first secret's user");
	expect_value_text(cfg, "target", "health_check_interval", "5s");
	config_free(cfg);
}

Test(config, health_check_errors)
{
	expect_error("[target]\nhealth_check_interval = 99\n",
		     "2: [target] health_check_interval: must be at least 100ms");
	expect_error("[target]\nhealth_check_interval = 1 sec\n",
		     "2: [target] health_check_interval: invalid duration '1 sec' "
		     "(a whole number with unit ms, s, min or h)");
	expect_error("[target]\nhealth_check_timeout = 49ms\n",
		     "2: [target] health_check_timeout: must be at least 50ms");
	expect_error("[target]\nhealth_check_timeout = 0\n",
		     "2: [target] health_check_timeout: must be at least 50ms");
	expect_error("[target]\nhealth_check_database =\n",
		     "2: [target] health_check_database: must not be empty");
	/* Any user name is a valid string, so the error a file can hold is a repeated key. */
	expect_error("[target]\nhealth_check_user = a\n\nhealth_check_user = b\n",
		     "4: [target] health_check_user: already set on line 2");
}

Test(config, instance_host_pattern)
{
	struct config *cfg =
		load_ok("[target]\ninstance_host_pattern = ?.abc123xyz.us-east-1.rds.amazonaws.com\n");

	cr_expect_str_eq(cfg->instance_host_pattern, "?.abc123xyz.us-east-1.rds.amazonaws.com");
	config_free(cfg);

	cfg = load_ok("[target]\ninstance_host_pattern = db-?.internal\n");
	cr_expect_str_eq(cfg->instance_host_pattern, "db-?.internal");
	config_free(cfg);

	cfg = load_ok("[target]\ninstance_host_pattern =\n");
	cr_expect_str_eq(cfg->instance_host_pattern, "", "empty means no discovery");
	config_free(cfg);
}

Test(config, instance_host_pattern_needs_exactly_one_question_mark)
{
	expect_error("[target]\ninstance_host_pattern = db.example.com\n",
		     "2: [target] instance_host_pattern: must contain exactly one '?', which "
		     "stands for the instance's server_id");
	expect_error("[target]\nhosts = a\ninstance_host_pattern = ?.?.example.com\n",
		     "3: [target] instance_host_pattern: must contain exactly one '?', which "
		     "stands for the instance's server_id");
}

Test(config, replica_lag_and_reader_fallback)
{
	struct config *cfg = load_ok("[target]\nmax_replica_lag = 500\n"
				     "reader_fallback_to_writer = on\n");

	cr_expect_eq(cfg->max_replica_lag_ms, 500, "a bare number is milliseconds");
	cr_expect_eq(cfg->reader_fallback_to_writer, true);
	expect_value_text(cfg, "target", "max_replica_lag", "500ms");
	expect_value_text(cfg, "target", "reader_fallback_to_writer", "true");
	config_free(cfg);

	cfg = load_ok("[target]\nmax_replica_lag = 30s\nreader_fallback_to_writer = no\n");
	cr_expect_eq(cfg->max_replica_lag_ms, 30000);
	cr_expect_eq(cfg->reader_fallback_to_writer, false);
	config_free(cfg);

	cfg = load_ok("[target]\nmax_replica_lag = 0\n");
	cr_expect_eq(cfg->max_replica_lag_ms, 0, "0 means no limit");
	config_free(cfg);
}

Test(config, replica_lag_and_reader_fallback_errors)
{
	expect_error("[target]\nmax_replica_lag = -1\n",
		     "2: [target] max_replica_lag: invalid duration '-1' "
		     "(a whole number with unit ms, s, min or h)");
	expect_error("[target]\nmax_replica_lag = 1000h\n",
		     "2: [target] max_replica_lag: must be at most 2147483647ms");
	expect_error("[target]\nreader_fallback_to_writer = sometimes\n",
		     "2: [target] reader_fallback_to_writer: invalid boolean 'sometimes' "
		     "(use true/false, on/off, yes/no or 1/0)");
}

/* ------------------------------------------------------------ client and pool limits */

Test(config, client_limits)
{
	struct config *cfg = load_ok("[pgmux]\nmax_client_connections = 250\n"
				     "idle_client_timeout = 15min\n");

	cr_expect_eq(cfg->max_client_connections, 250);
	cr_expect_eq(cfg->idle_client_timeout_ms, 15 * 60 * 1000);
	expect_value_text(cfg, "pgmux", "idle_client_timeout", "900s");
	config_free(cfg);

	cfg = load_ok("[pgmux]\nmax_client_connections = 1\nidle_client_timeout = 0\n");
	cr_expect_eq(cfg->max_client_connections, 1);
	cr_expect_eq(cfg->idle_client_timeout_ms, 0, "0 means never");
	config_free(cfg);
}

Test(config, client_limit_errors)
{
	expect_error("[pgmux]\nmax_client_connections = 0\n",
		     "2: [pgmux] max_client_connections: must be between 1 and 1000000");
	expect_error("[pgmux]\nlisten_port = 6432\nmax_client_connections = lots\n",
		     "3: [pgmux] max_client_connections: invalid integer 'lots'");
	expect_error("[pgmux]\nidle_client_timeout = 30 minutes\n",
		     "2: [pgmux] idle_client_timeout: invalid duration '30 minutes' "
		     "(a whole number with unit ms, s, min or h)");
}

Test(config, pool_limits_and_timeouts)
{
	struct config *cfg = load_ok("[pool]\nmax_idle_connections_percent = 0\nmin_pool_size = 5\n"
				     "connection_borrow_timeout = 30\nserver_idle_timeout = 1min\n"
				     "server_lifetime = 2h\nmax_prepared_statements = 100000\n");

	cr_expect_eq(cfg->max_idle_connections_percent, 0);
	cr_expect_eq(cfg->min_pool_size, 5);
	cr_expect_eq(cfg->connection_borrow_timeout_ms, 30 * 1000, "a bare number is seconds");
	cr_expect_eq(cfg->server_idle_timeout_ms, 60 * 1000);
	cr_expect_eq(cfg->server_lifetime_ms, 2 * 3600 * 1000);
	cr_expect_eq(cfg->max_prepared_statements, 100000);
	expect_value_text(cfg, "pool", "server_lifetime", "7200s");
	config_free(cfg);

	/* 0 turns each timeout off; 100 keeps every idle connection. */
	cfg = load_ok("[pool]\nmax_idle_connections_percent = 100\nconnection_borrow_timeout = 0\n"
		      "server_idle_timeout = 0\nserver_lifetime = 0\nmax_prepared_statements = 1\n");
	cr_expect_eq(cfg->max_idle_connections_percent, 100);
	cr_expect_eq(cfg->connection_borrow_timeout_ms, 0);
	cr_expect_eq(cfg->server_idle_timeout_ms, 0);
	cr_expect_eq(cfg->server_lifetime_ms, 0);
	cr_expect_eq(cfg->max_prepared_statements, 1);
	config_free(cfg);
}

Test(config, pool_limit_and_timeout_errors)
{
	const char *why = "(a whole number with unit ms, s, min or h)";
	char want[256];

	expect_error("[pool]\nmax_idle_connections_percent = 101\n",
		     "2: [pool] max_idle_connections_percent: must be between 0 and 100");
	expect_error("[pool]\nmax_idle_connections_percent = -1\n",
		     "2: [pool] max_idle_connections_percent: must be between 0 and 100");
	expect_error("[pool]\nmin_pool_size = -1\n",
		     "2: [pool] min_pool_size: must be between 0 and 1000000");
	snprintf(want, sizeof(want), "2: [pool] connection_borrow_timeout: invalid duration '2m' %s",
		 why);
	expect_error("[pool]\nconnection_borrow_timeout = 2m\n", want);
	snprintf(want, sizeof(want), "2: [pool] server_idle_timeout: invalid duration '-1' %s", why);
	expect_error("[pool]\nserver_idle_timeout = -1\n", want);
	expect_error("[pool]\nserver_lifetime = 1000h\n",
		     "2: [pool] server_lifetime: must be at most 2147483647ms");
	expect_error("[pool]\nmax_prepared_statements = 0\n",
		     "2: [pool] max_prepared_statements: must be between 1 and 100000");
	expect_error("[pool]\nmax_prepared_statements = 100001\n",
		     "2: [pool] max_prepared_statements: must be between 1 and 100000");
}

Test(config, min_pool_size_fits_within_max_connections)
{
	struct config *cfg = load_ok("[pool]\nmax_connections = 10\nmin_pool_size = 10\n");

	cr_expect_eq(cfg->min_pool_size, 10);
	config_free(cfg);

	/* With max_connections at 0 the limit comes from the server, so anything goes. */
	cfg = load_ok("[pool]\nmin_pool_size = 500\n");
	cr_expect_eq(cfg->min_pool_size, 500);
	config_free(cfg);

	expect_error("[pool]\nmax_connections = 10\n\nmin_pool_size = 11\n",
		     "4: [pool] min_pool_size: must not be larger than max_connections (10)");
	expect_error("[pool]\nmin_pool_size = 11\nmax_connections = 10\n",
		     "2: [pool] min_pool_size: must not be larger than max_connections (10)");
}

Test(config, init_query_is_kept_as_written)
{
	struct config *cfg = load_ok("[pool]\ninit_query = SET work_mem = '64MB' ; per session\n");

	cr_expect_str_eq(cfg->init_query, "SET work_mem = '64MB'", "' ;' starts a comment");
	expect_value_text(cfg, "pool", "init_query", "SET work_mem = '64MB'");
	config_free(cfg);

	cfg = load_ok("[pool]\ninit_query = SET search_path = app;SET statement_timeout = '5s'\n");
	cr_expect_str_eq(cfg->init_query, "SET search_path = app;SET statement_timeout = '5s'");
	config_free(cfg);

	/* Any text is a valid string, so the error a file can hold is a repeated key. */
	expect_error("[pool]\ninit_query = SET a = 1\ninit_query = SET b = 2\n",
		     "3: [pool] init_query: already set on line 2");
}

/* ------------------------------------------------------------ TLS pairing */

Test(config, client_tls_cert_and_key_go_together)
{
	struct config *cfg = load_ok("[pgmux]\nclient_tls_cert_file = /etc/pgmux/cert.pem\n"
				     "client_tls_key_file = /etc/pgmux/key.pem\nrequire_tls = on\n");

	cr_expect_str_eq(cfg->client_tls_cert_file, "/etc/pgmux/cert.pem");
	cr_expect_str_eq(cfg->client_tls_key_file, "/etc/pgmux/key.pem");
	cr_expect(cfg->require_tls);
	config_free(cfg);

	expect_error("[pgmux]\nlisten_port = 7000\nclient_tls_cert_file = cert.pem\n",
		     "3: [pgmux] client_tls_cert_file: client_tls_key_file must be set too");
	expect_error("[pgmux]\nclient_tls_key_file = key.pem\n",
		     "2: [pgmux] client_tls_key_file: client_tls_cert_file must be set too");
	expect_error("[pgmux]\n\nrequire_tls = true\n",
		     "3: [pgmux] require_tls: needs client_tls_cert_file and client_tls_key_file");
}

/* ------------------------------------------------------------ file structure */

Test(config, unknown_keys_and_sections)
{
	expect_error("[pool]\nmax_conections = 5\n", "2: [pool] max_conections: unknown option");
	expect_error("[pgmux]\nhosts = a\n", "2: [pgmux] hosts: unknown option");
	expect_error("[pgmux]\n[poool]\nmax_connections = 5\n",
		     "2: unknown section [poool] (expected [pgmux], [target], [pool] or [peers])");
	expect_error("[pgmux]\nlisten_port = 1\n[extra]\n",
		     "3: unknown section [extra] (expected [pgmux], [target], [pool] or [peers])");
	expect_error("; top\nlisten_port = 1\n", "2: listen_port: option outside any section");
	expect_error("[Pool]\n", "1: unknown section [Pool] (expected [pgmux], [target], [pool] or [peers])");
}

/* [peers]: ids in range and once each, kept in id order; peer_id among them. */
Test(config, peers_are_listed_by_id_and_include_this_instance)
{
	struct config *cfg = load_ok("[pgmux]\npeer_id = 2\n[peers]\n3 = c.internal:6434\n1 = 127.0.0.1:6432\n"
				     "2 = [::1]:6433\n");
	struct config *copy;

	cr_assert_eq(cfg->n_peers, 3);
	cr_expect_eq(cfg->peers[0].id, 1);
	cr_expect_str_eq(cfg->peers[0].address.host, "127.0.0.1");
	cr_expect_eq(cfg->peers[0].address.port, 6432);
	cr_expect_eq(cfg->peers[1].id, 2);
	cr_expect_str_eq(cfg->peers[1].address.host, "::1");
	cr_expect_eq(cfg->peers[2].id, 3);
	cr_expect_eq(config_find_peer(cfg, 3)->address.port, 6434);
	cr_expect_null(config_find_peer(cfg, 4));
	/* A cutover's copy keeps them. */
	copy = config_with_hosts(cfg, cfg->hosts, cfg->n_hosts);
	cr_expect_eq(copy->n_peers, 3);
	cr_expect_str_eq(copy->peers[2].address.host, "c.internal");
	config_free(copy);
	config_free(cfg);

	expect_error("[pgmux]\npeer_id = 1\n[peers]\n0 = a:1\n", "4: [peers] 0: a peer's id must be a number from 1 to 255");
	expect_error("[pgmux]\npeer_id = 1\n[peers]\n256 = a:1\n",
		     "4: [peers] 256: a peer's id must be a number from 1 to 255");
	expect_error("[pgmux]\npeer_id = 1\n[peers]\nb = a:1\n", "4: [peers] b: a peer's id must be a number from 1 to 255");
	expect_error("[pgmux]\npeer_id = 1\n[peers]\n1 = a:1\n2 = b:1\n1 = c:1\n", "6: [peers] 1: listed twice");
	expect_error("[pgmux]\npeer_id = 1\n[peers]\n1 = a:0\n",
		     "4: [peers] 1: invalid port '0' in 'a:0' (expected 1 to 65535)");
	expect_error("[pgmux]\npeer_id = 3\n[peers]\n1 = a:1\n2 = b:1\n",
		     "2: [pgmux] peer_id: 3 is not listed in [peers] (list every instance, this one too)");
	expect_error("[pgmux]\npeer_id = 3\n", "2: [pgmux] peer_id: 3 is not listed in [peers] (list every instance, this one too)");
	expect_error("[peers]\n1 = a:1\n", " [peers] needs [pgmux] peer_id, this instance's id among them");
	expect_error("[pgmux]\npeer_id = 256\n", "2: [pgmux] peer_id: must be between 0 and 255");
}

/* The shares of a cap add up to the cap, the lowest ids taking the remainder. */
Test(config, peer_shares_add_up_to_the_cap)
{
	struct config *cfg[3];
	const char *texts[3] = {
		"[pgmux]\npeer_id = 4\n[peers]\n4 = a:1\n7 = b:1\n9 = c:1\n",
		"[pgmux]\npeer_id = 7\n[peers]\n4 = a:1\n7 = b:1\n9 = c:1\n",
		"[pgmux]\npeer_id = 9\n[peers]\n4 = a:1\n7 = b:1\n9 = c:1\n",
	};
	struct config *alone = load_ok("[pgmux]\n");

	for (int i = 0; i < 3; i++)
		cfg[i] = load_ok(texts[i]);
	cr_expect_eq(config_peer_share(alone, 100), 100);
	cr_expect_eq(config_peer_share(cfg[0], 100), 34);
	cr_expect_eq(config_peer_share(cfg[1], 100), 33);
	cr_expect_eq(config_peer_share(cfg[2], 100), 33);
	for (int total = 3; total < 50; total++)
		cr_expect_eq(config_peer_share(cfg[0], total) + config_peer_share(cfg[1], total) +
				     config_peer_share(cfg[2], total),
			     total, "shares of %d", total);
	cr_expect_eq(config_peer_share(cfg[2], 1), 1, "never less than one connection");
	for (int i = 0; i < 3; i++)
		config_free(cfg[i]);
	config_free(alone);
}

Test(config, duplicate_keys)
{
	expect_error("[pool]\nmax_connections = 5\n\nmax_connections = 6\n",
		     "4: [pool] max_connections: already set on line 2");
	/* A section may be reopened, but an option still appears once. */
	expect_error("[pool]\nmax_connections = 5\n[pgmux]\n[pool]\nmax_connections = 5\n",
		     "5: [pool] max_connections: already set on line 2");
	config_free(load_ok("[pool]\nmax_connections = 5\n[pgmux]\n[pool]\npool_mode = session\n"));
}

Test(config, syntax_errors)
{
	expect_error("[pgmux]\nlisten_port 6432\n",
		     "2: syntax error: expected '[section]' or 'name = value'");
	expect_error("[pgmux\nlisten_port = 6432\n",
		     "1: syntax error: expected '[section]' or 'name = value'");
	/* The first problem in the file is the one reported. */
	expect_error("[pgmux]\ngarbage\nlisten_port = abc\n",
		     "2: syntax error: expected '[section]' or 'name = value'");
	expect_error("[pgmux]\nlisten_port = abc\ngarbage\n",
		     "2: [pgmux] listen_port: invalid integer 'abc'");
}

Test(config, long_lines_are_refused)
{
	char text[512];
	char query[300];

	memset(query, 'x', sizeof(query) - 1);
	query[sizeof(query) - 1] = '\0';
	snprintf(text, sizeof(text), "[pool]\nserver_reset_query = %s\n", query);
	expect_error(text, "2: line is longer than 198 characters");

	/* 198 characters is still fine. */
	memset(query, 'x', 198 - strlen("server_reset_query = "));
	query[198 - strlen("server_reset_query = ")] = '\0';
	snprintf(text, sizeof(text), "[pool]\nserver_reset_query = %s\n", query);
	config_free(load_ok(text));
}

Test(config, inline_comments_indentation_and_crlf)
{
	struct config *cfg = load_ok("# hash comment\n"
				     "[pgmux]   ; section comment\n"
				     "    listen_port = 7001 ; clients connect here\n"
				     "\tlog_level=debug\n"
				     "admin_users = alice;bob\n"
				     "[pool]\r\n"
				     "server_reset_query = SELECT 1;\r\n"
				     "  max_connections = 9\r\n");

	cr_expect_eq(cfg->listen_port, 7001);
	cr_expect_eq(cfg->log_level, LOG_LEVEL_DEBUG);
	cr_expect_str_eq(cfg->admin_users, "alice;bob", "';' without a space before is kept");
	cr_expect_str_eq(cfg->server_reset_query, "SELECT 1;");
	cr_expect_eq(cfg->max_connections, 9);
	config_free(cfg);
}

Test(config, byte_order_mark_is_ignored)
{
	struct config *cfg = load_ok("\xEF\xBB\xBF[pgmux]\nlisten_port = 7002\n");

	cr_expect_eq(cfg->listen_port, 7002);
	config_free(cfg);
}

Test(config, missing_file_names_path_and_reason)
{
	char err[256];
	struct config *cfg = config_load("/nonexistent/pgmux.ini", err, sizeof(err));

	cr_assert_null(cfg);
	cr_expect_str_eq(err, "/nonexistent/pgmux.ini: No such file or directory");
	cr_expect_null(config_load("/nonexistent/pgmux.ini", NULL, 0), "err may be NULL");
}

Test(config, error_message_is_truncated_safely)
{
	char err[16];

	cr_assert_null(load_file_once("[pool]\nmax_connections = abc\n", err, sizeof(err)));
	cr_expect_eq(strlen(err), sizeof(err) - 1);
}

/* ------------------------------------------------------------ queries */

Test(config, admin_users_list)
{
	struct config *cfg = load_ok("[pgmux]\nadmin_users =  alice , bob,carol,,\tdave \n");

	cr_expect(config_is_admin(cfg, "alice"));
	cr_expect(config_is_admin(cfg, "bob"));
	cr_expect(config_is_admin(cfg, "carol"));
	cr_expect(config_is_admin(cfg, "dave"));
	cr_expect_not(config_is_admin(cfg, "ali"));
	cr_expect_not(config_is_admin(cfg, "Alice"), "role names are case sensitive");
	cr_expect_not(config_is_admin(cfg, "alice , bob"));
	cr_expect_not(config_is_admin(cfg, ""));
	cr_expect_not(config_is_admin(cfg, NULL));
	config_free(cfg);

	cfg = load_ok("");
	cr_expect_not(config_is_admin(cfg, "postgres"), "empty means nobody");
	config_free(cfg);
}

Test(config, worker_count)
{
	struct config *cfg = load_ok("[pgmux]\nworkers = 3\n");
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int expected = cpus < 1 ? 1 : cpus > 64 ? 64 : (int)cpus;

	cr_expect_eq(config_worker_count(cfg), 3);
	config_free(cfg);

	cfg = load_ok("[pgmux]\nworkers = 0\n");
	cr_expect_eq(config_worker_count(cfg), expected);
	config_free(cfg);
}

Test(config, fixed_options_are_reported_on_reload)
{
	struct config *old = load_ok("[pgmux]\nlisten_port = 6432\n");
	struct config *same = load_ok("[pgmux]\nlisten_port = 6432\nlog_level = debug\n"
				      "[target]\nhosts = a, b\n");
	struct config *moved = load_ok("[pgmux]\nlisten_port = 6433\n");
	struct config *with_readers = load_ok("[pgmux]\nlisten_port = 6432\nreadonly_port = 6433\n"
					      "[target]\nhealth_check_interval = 200ms\n"
					      "reader_fallback_to_writer = true\n");
	const struct config_option *changed;

	cr_expect_null(config_first_fixed_change(old, same), "reloadable changes are fine");
	changed = config_first_fixed_change(old, moved);
	cr_assert_not_null(changed);
	cr_expect_str_eq(changed->name, "listen_port");
	changed = config_first_fixed_change(old, with_readers);
	cr_assert_not_null(changed);
	cr_expect_str_eq(changed->name, "readonly_port", "opening a second port needs a restart");
	config_free(old);
	config_free(same);
	config_free(moved);
	config_free(with_readers);
}

/* ------------------------------------------------------------ docs and example */

/* A text file split into lines, in one allocation. */
struct text_lines {
	char *data;
	char **line;
	size_t count;
};

static void read_lines(const char *path, struct text_lines *out)
{
	FILE *file = fopen(path, "r");
	long size;
	size_t capacity = 64;

	cr_assert_not_null(file, "%s: %s", path, strerror(errno));
	fseek(file, 0, SEEK_END);
	size = ftell(file);
	rewind(file);
	out->data = malloc((size_t)size + 1);
	cr_assert_not_null(out->data);
	cr_assert_eq(fread(out->data, 1, (size_t)size, file), (size_t)size);
	out->data[size] = '\0';
	fclose(file);

	out->line = malloc(capacity * sizeof(char *));
	out->count = 0;
	for (char *p = out->data; *p != '\0';) {
		char *end = strchr(p, '\n');

		if (out->count == capacity) {
			capacity *= 2;
			out->line = realloc(out->line, capacity * sizeof(char *));
			cr_assert_not_null(out->line);
		}
		out->line[out->count++] = p;
		if (end == NULL)
			break;
		*end = '\0';
		p = end + 1;
	}
}

static void free_lines(struct text_lines *lines)
{
	free(lines->data);
	free(lines->line);
}

/* Removes the few roff escapes the option entries use: \- \e \& */
static void unescape_roff(const char *in, char *out, size_t len)
{
	size_t used = 0;

	while (*in != '\0' && used + 1 < len) {
		if (in[0] == '\\' && in[1] == '-') {
			out[used++] = '-';
			in += 2;
		} else if (in[0] == '\\' && in[1] == 'e') {
			out[used++] = '\\';
			in += 2;
		} else if (in[0] == '\\' && in[1] == '&') {
			in += 2;
		} else {
			out[used++] = *in++;
		}
	}
	out[used] = '\0';
}

/* The type as the man page and the example file name it: "string", "integer", "boolean", ... */
static const char *doc_type_name(enum config_type type)
{
	switch (type) {
	case CONFIG_STRING:
		return "string";
	case CONFIG_INT:
		return "integer";
	case CONFIG_BOOL:
		return "boolean";
	case CONFIG_DURATION_MS:
		return "duration";
	case CONFIG_SIZE:
		return "size";
	case CONFIG_ENUM:
		return "enum";
	case CONFIG_HOSTS:
		return "host list";
	case CONFIG_LOG_LEVEL:
		return "log level";
	}
	cr_assert_fail("option type %d has no name in the documentation", (int)type);
	return "unknown";
}

/* The one-line summary both the man page and the example file show for opt. */
static void option_summary(const struct config_option *opt, char *out, size_t len)
{
	char type[160];
	char default_text[160];

	if (opt->type == CONFIG_ENUM) {
		size_t used = (size_t)snprintf(type, sizeof(type), "enum (");

		for (int i = 0; opt->enum_values[i] != NULL; i++)
			used += (size_t)snprintf(type + used, sizeof(type) - used, "%s%s",
						 i ? ", " : "", opt->enum_values[i]);
		snprintf(type + used, sizeof(type) - used, ")");
	} else {
		snprintf(type, sizeof(type), "%s", doc_type_name(opt->type));
	}
	if (opt->type == CONFIG_STRING)
		snprintf(default_text, sizeof(default_text), "\"%s\"", opt->default_value);
	else
		snprintf(default_text, sizeof(default_text), "%s", opt->default_value);
	snprintf(out, len, "Type: %s. Default: %s. Reload: %s.", type, default_text,
		 opt->reloadable ? "yes" : "no, needs a restart");
}

Test(config, man_page_documents_every_option_as_the_table_does)
{
	struct text_lines man;
	size_t count;
	const struct config_option *options = config_options(&count);

	read_lines(TEST_SRCDIR "/man/pgmux.ini.5", &man);
	for (size_t i = 0; i < count; i++) {
		const struct config_option *opt = &options[i];
		char entry[64], section_header[64], summary[512], got[1024], doc[2048];
		const char *current_section = "";
		size_t at = 0;
		bool found = false;

		snprintf(entry, sizeof(entry), ".B %s", opt->name);
		snprintf(section_header, sizeof(section_header), ".SH \"THE [%s] SECTION\"",
			 opt->section);
		for (at = 0; at < man.count; at++) {
			if (strncmp(man.line[at], ".SH", 3) == 0)
				current_section = man.line[at];
			if (strcmp(man.line[at], entry) == 0 && at > 0 &&
			    strcmp(man.line[at - 1], ".TP") == 0 &&
			    strcmp(current_section, section_header) == 0) {
				found = true;
				break;
			}
		}
		cr_expect(found, "man/pgmux.ini.5: no '.TP' / '%s' entry under %s", entry,
			  section_header);
		if (!found || at + 3 >= man.count)
			continue;

		option_summary(opt, summary, sizeof(summary));
		unescape_roff(man.line[at + 1], got, sizeof(got));
		cr_expect_str_eq(got, summary, "man/pgmux.ini.5 %s:\n got: %s\nwant: %s", opt->name,
				 got, summary);
		cr_expect_str_eq(man.line[at + 2], ".br", "man/pgmux.ini.5 %s: .br after summary",
				 opt->name);

		/* The paragraph runs until the next request line. */
		doc[0] = '\0';
		for (size_t j = at + 3; j < man.count && man.line[j][0] != '.'; j++) {
			unescape_roff(man.line[j], got, sizeof(got));
			if (doc[0] != '\0')
				strncat(doc, " ", sizeof(doc) - strlen(doc) - 1);
			strncat(doc, got, sizeof(doc) - strlen(doc) - 1);
		}
		cr_expect_str_eq(doc, opt->doc,
				 "man/pgmux.ini.5 %s: text differs from src/config_options.c\n got: %s\nwant: %s",
				 opt->name, doc, opt->doc);
	}
	free_lines(&man);
}

Test(config, example_file_lists_every_option_in_its_section)
{
	struct text_lines example;
	size_t count;
	const struct config_option *options = config_options(&count);

	read_lines(TEST_SRCDIR "/etc/pgmux.ini", &example);
	for (size_t i = 0; i < count; i++) {
		const struct config_option *opt = &options[i];
		char header[64], active[64], commented[64], summary[512], want_summary[520];
		const char *current_section = "";
		bool found = false;

		snprintf(header, sizeof(header), "[%s]", opt->section);
		snprintf(active, sizeof(active), "%s =", opt->name);
		snprintf(commented, sizeof(commented), "; %s =", opt->name);
		option_summary(opt, summary, sizeof(summary));
		snprintf(want_summary, sizeof(want_summary), "; %s", summary);
		for (size_t at = 0; at < example.count; at++) {
			const char *line = example.line[at];

			if (line[0] == '[')
				current_section = line;
			if (strcmp(current_section, header) != 0)
				continue;
			if (strncmp(line, active, strlen(active)) == 0 ||
			    strncmp(line, commented, strlen(commented)) == 0) {
				found = true;
				cr_expect(at > 0 && strcmp(example.line[at - 1], want_summary) == 0,
					  "etc/pgmux.ini: the line above '%s' should be\n%s", line,
					  want_summary);
				break;
			}
		}
		cr_expect(found, "etc/pgmux.ini: no '%s' or '%s' line under %s", active, commented,
			  header);
	}
	free_lines(&example);
}

Test(config, example_file_loads_as_is)
{
	char err[512] = "";
	struct config *cfg = config_load(TEST_SRCDIR "/etc/pgmux.ini", err, sizeof(err));

	cr_assert_not_null(cfg, "%s", err);
	cr_expect_eq(cfg->listen_port, 6432);
	cr_expect_str_eq(cfg->secrets_dir, "/etc/pgmux/secrets");
	cr_assert_eq(cfg->n_hosts, 1);
	cr_expect_str_eq(cfg->hosts[0].host, "127.0.0.1");
	cr_expect_eq(cfg->hosts[0].port, 5432);
	cr_expect_eq(cfg->pool_mode, POOL_MODE_TRANSACTION);
	config_free(cfg);
}

/* ------------------------------------------------------------ issue 17: the hardening options */

Test(config, hardening_defaults_are_the_safe_ones)
{
	struct config *cfg = load_ok("");

	cr_expect_str_eq(cfg->metrics_addr, "127.0.0.1");
	cr_expect_str_eq(cfg->metrics_token, "");
	cr_expect_str_eq(cfg->client_tls_protocols, "TLSv1.2,TLSv1.3");
	cr_expect_null(strstr(cfg->client_tls_ciphers, "RSA:"), "no RSA key exchange by default");
	cr_expect_null(strstr(cfg->client_tls_ciphers, "CBC"));
	cr_expect(cfg->server_require_scram);
	cr_expect_eq(cfg->max_login_connections, 1000);
	cr_expect_str_eq(cfg->stats_users, "");
	config_free(cfg);
}

Test(config, tls_protocol_range)
{
	int low = 0, high = 0;

	cr_expect_eq(config_tls_protocol_range("TLSv1.2,TLSv1.3", &low, &high), 0);
	cr_expect(low == 2 && high == 3);
	cr_expect_eq(config_tls_protocol_range(" tlsv1.3 ", &low, &high), 0);
	cr_expect(low == 3 && high == 3);
	cr_expect_eq(config_tls_protocol_range("TLSv1.2", &low, &high), 0);
	cr_expect(low == 2 && high == 2);
	cr_expect_eq(config_tls_protocol_range("TLSv1.1,TLSv1.2", &low, &high), -1, "no TLS 1.1");
	cr_expect_eq(config_tls_protocol_range("SSLv3", &low, &high), -1);
	cr_expect_eq(config_tls_protocol_range(",", &low, &high), -1);
	expect_error("[pgmux]\nclient_tls_protocols = TLSv1.0\n",
		     "2: [pgmux] client_tls_protocols: expected TLSv1.2, TLSv1.3 or both, separated by a comma");
	expect_error("[pgmux]\nclient_tls_ciphers = AES128-SHA;x\n",
		     "2: [pgmux] client_tls_ciphers: is not an OpenSSL cipher list (letters, digits and : - _ + ! @ = , . "
		     "only)");
}

Test(config, metrics_token_must_be_long_and_printable_and_is_secret)
{
	struct config *cfg;

	expect_error("[pgmux]\nmetrics_token = short\n", "2: [pgmux] metrics_token: must be at least 16 characters long");
	expect_error("[pgmux]\nmetrics_token = 0123456789abcdef\x01\n",
		     "2: [pgmux] metrics_token: must be printable ASCII without spaces");
	cfg = load_ok("[pgmux]\nmetrics_token = 0123456789abcdef\n");
	cr_expect_str_eq(cfg->metrics_token, "0123456789abcdef");
	cr_expect(config_option_is_secret(config_find_option("pgmux", "metrics_token")));
	cr_expect_not(config_option_is_secret(config_find_option("pgmux", "metrics_addr")));
	config_free(cfg);
}

Test(config, stats_users_is_a_list_apart_from_admin_users)
{
	struct config *cfg = load_ok("[pgmux]\nadmin_users = root\nstats_users = grafana, nagios\n");

	cr_expect(config_is_stats_user(cfg, "grafana"));
	cr_expect(config_is_stats_user(cfg, "nagios"));
	cr_expect_not(config_is_stats_user(cfg, "root"));
	cr_expect_not(config_is_admin(cfg, "grafana"));
	config_free(cfg);
}

Test(config, loopback_hosts)
{
	cr_expect(config_host_is_loopback("127.0.0.1"));
	cr_expect(config_host_is_loopback("127.1.2.3"));
	cr_expect(config_host_is_loopback("::1"));
	cr_expect(config_host_is_loopback("localhost"));
	cr_expect_not(config_host_is_loopback("128.0.0.1"));
	cr_expect_not(config_host_is_loopback("10.0.0.1"));
	cr_expect_not(config_host_is_loopback("::2"));
	cr_expect_not(config_host_is_loopback("db.example.com"));
	cr_expect_not(config_host_is_loopback("localhost.example.com"));
}
