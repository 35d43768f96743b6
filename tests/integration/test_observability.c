/*
 * test_observability.c: end-to-end tests of issue 23, "observability": the
 * command line (--help, --version, --check), JSON and syslog logging, the
 * latency histograms and failover/cutover counters of /metrics and SHOW
 * STATS, and the contrib/ dashboard and alert rules checked against a real
 * scrape. Each test runs a real pgmux against the suite's PostgreSQL.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct pgmux px;

static void fini_kill_leftovers(void)
{
	h_teardown();
}

/* ---------------------------------------------------------------- command line */

TestSuite(observability_cli, .fini = fini_kill_leftovers, .timeout = 60);

/* Run pgmux with argv[1..] and wait; returns the exit status, the output in c. */
static int run_pgmux(struct h_cmd *c, const char *const args[])
{
	const char *argv[8] = { h_env()->pgmux };
	int n = 1;

	for (; args[n - 1] != NULL && n < 7; n++)
		argv[n] = args[n - 1];
	argv[n] = NULL;
	return h_cmd_run(c, argv, NULL, h_scaled_ms(20000));
}

Test(observability_cli, help_prints_the_usage_and_exits_0)
{
	struct h_cmd c;
	const char *const long_form[] = { "--help", NULL }, *const short_form[] = { "-h", NULL };

	cr_assert_eq(run_pgmux(&c, long_form), 0);
	cr_expect(strstr(c.out, "Usage: pgmux") != NULL, "no usage in: %s", c.out);
	cr_expect(strstr(c.out, "--check CONFIG") != NULL, "--check is not in the usage: %s", c.out);
	cr_expect_str_empty(c.err);
	h_cmd_free(&c);
	cr_assert_eq(run_pgmux(&c, short_form), 0);
	cr_expect(strstr(c.out, "Usage: pgmux") != NULL);
	h_cmd_free(&c);
}

Test(observability_cli, version_prints_the_version)
{
	struct h_cmd c;
	const char *const long_form[] = { "--version", NULL }, *const short_form[] = { "-V", NULL };

	cr_assert_eq(run_pgmux(&c, long_form), 0);
	cr_expect(strncmp(c.out, "pgmux ", 6) == 0 && strchr(c.out, '.') != NULL, "not a version: %s", c.out);
	h_cmd_free(&c);
	cr_assert_eq(run_pgmux(&c, short_form), 0);
	cr_expect(strncmp(c.out, "pgmux ", 6) == 0);
	h_cmd_free(&c);
}

Test(observability_cli, an_unknown_option_prints_the_usage_and_fails)
{
	struct h_cmd c;
	const char *const args[] = { "--no-such-option", NULL };

	cr_assert_eq(run_pgmux(&c, args), 1);
	cr_expect(strstr(c.err, "Usage: pgmux") != NULL, "no usage on stderr: %s", c.err);
	h_cmd_free(&c);
}

/* A good configuration passes, and nothing starts: no port, no log file, no pid file. */
Test(observability_cli, check_accepts_a_good_configuration_and_starts_nothing)
{
	struct pgmux_options o;
	struct h_cmd c;
	struct stat st;
	char pidfile[600];

	pgmux_options_default(&o);
	snprintf(pidfile, sizeof(pidfile), "%s/pgmux.pid", h_test_dir());
	o.pidfile = pidfile;
	cr_assert(pgmux_write_config(&px, &o));
	const char *const args[] = { "--check", px.config, NULL };
	cr_assert_eq(run_pgmux(&c, args), 0, "--check failed: %s", c.err);
	cr_expect(strstr(c.out, "the configuration is valid") != NULL, "stdout: %s", c.out);
	cr_expect(stat(px.logfile, &st) != 0, "--check wrote the log file");
	cr_expect(stat(pidfile, &st) != 0, "--check wrote the pid file");
	cr_expect_eq(h_raw_connect(px.port, 200), -1, "--check left something listening");
	h_cmd_free(&c);
}

/* An error names the file and the line, and the status is 1. */
Test(observability_cli, check_names_the_file_and_line_of_an_error)
{
	struct pgmux_options o;
	struct h_cmd c;
	char path[600], where[700];

	pgmux_options_default(&o);
	o.extra_pgmux = "log_level = chatty\n";
	cr_assert(pgmux_write_config(&px, &o));
	char *text = h_read_file(px.config);
	int line = 1;
	for (char *p = text; p < strstr(text, "log_level = chatty"); p++)
		line += *p == '\n';
	snprintf(path, sizeof(path), "%s", px.config);
	free(text);
	const char *const args[] = { "-t", path, NULL };
	cr_assert_eq(run_pgmux(&c, args), 1);
	snprintf(where, sizeof(where), "%s:%d:", path, line);
	cr_expect(strstr(c.err, where) != NULL, "%s is not in: %s", where, c.err);
	cr_expect(strstr(c.out, "valid") == NULL);
	h_cmd_free(&c);
}

/* A secret file that cannot be used fails the check and is named. */
Test(observability_cli, check_fails_on_a_bad_secret_file)
{
	struct pgmux_options o;
	struct h_cmd c;
	char dir[600], from[700], to[700], bad[700];

	snprintf(dir, sizeof(dir), "%s/secrets", h_test_dir());
	cr_assert_eq(mkdir(dir, 0700), 0);
	snprintf(from, sizeof(from), "%s/app.json", h_env()->secrets);
	snprintf(to, sizeof(to), "%s/app.json", dir);
	char *text = h_read_file(from);
	h_write_file(to, text, 0600);
	free(text);
	snprintf(bad, sizeof(bad), "%s/broken.json", dir);
	h_write_file(bad, "{\"username\": \"x\", \"password\": ", 0600);
	pgmux_options_default(&o);
	o.secrets_dir = dir;
	o.health_check_user = "app";
	cr_assert(pgmux_write_config(&px, &o));
	const char *const args[] = { "--check", px.config, NULL };
	cr_assert_eq(run_pgmux(&c, args), 1, "stdout: %s stderr: %s", c.out, c.err);
	cr_expect(strstr(c.err, "broken.json") != NULL, "the bad file is not named: %s", c.err);
	h_cmd_free(&c);
}

/* A TLS key file that cannot be read fails the check. */
Test(observability_cli, check_fails_on_a_missing_tls_file)
{
	struct pgmux_options o;
	struct h_cmd c;

	pgmux_options_default(&o);
	o.tls = true;
	cr_assert(pgmux_write_config(&px, &o));
	/* The harness names the suite's key; name one that is not there. */
	char *text = h_read_file(px.config), *at = strstr(text, h_env()->key);
	cr_assert_not_null(at, "the configuration names no key file");
	char *edited = malloc(strlen(text) + 64);
	snprintf(edited, strlen(text) + 64, "%.*s/nonexistent/key.pem%s", (int)(at - text), text,
		 at + strlen(h_env()->key));
	h_write_file(px.config, edited, 0600);
	free(edited);
	free(text);
	const char *const args[] = { "--check", px.config, NULL };
	cr_assert_eq(run_pgmux(&c, args), 1, "stdout: %s", c.out);
	cr_expect(strstr(c.err, "/nonexistent/key.pem") != NULL, "the file is not named: %s", c.err);
	h_cmd_free(&c);
}
