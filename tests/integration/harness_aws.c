/*
 * harness_aws.c: Python, moto and the AWS environment for the integration
 * tests (see harness_aws.h).
 */
#include "harness_aws.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *h_python(void)
{
	const char *p = getenv("PGMUX_TEST_PYTHON");

	return p && p[0] ? p : "python3";
}

void h_require_python_modules(const char *modules)
{
	struct h_cmd c;
	char code[256];

	snprintf(code, sizeof(code), "import %s", modules);
	const char *argv[] = { h_python(), "-c", code, NULL };
	int st = h_cmd_run(&c, argv, NULL, 60000);
	if (st != 0) {
		fprintf(stderr, "%s cannot import %s (status %d): %s\n", h_python(), modules, st, c.err ? c.err : "");
		h_cmd_free(&c);
		cr_skip_test("%s has no %s (set PGMUX_TEST_PYTHON to a Python with moto 5, boto3 and botocore)",
			     h_python(), modules);
	}
	h_cmd_free(&c);
}

void h_aws_clean_environment(void)
{
	static const char *const unset[] = {
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_ENDPOINT_URL",
		"AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL_STS", "AWS_REGION", "AWS_DEFAULT_REGION",
		"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
		/* moto and the fake endpoints are on loopback: no proxy in between. */
		"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy",
	};

	for (size_t i = 0; i < sizeof(unset) / sizeof(unset[0]); i++)
		unsetenv(unset[i]);
	setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
	setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/pgmux-test/credentials", 1);
	setenv("AWS_CONFIG_FILE", "/nonexistent/pgmux-test/config", 1);
}

void h_aws_use_static_keys(void)
{
	setenv("AWS_ACCESS_KEY_ID", "AKIDPGMUXTEST", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "pgmux-test-secret-key", 1);
}

static bool port_open(void *arg)
{
	int fd = h_raw_connect(*(int *)arg, 200);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

void h_moto_start(struct h_moto *m)
{
	char port[16];

	h_require_python_modules("moto.server, boto3, botocore");
	m->port = h_free_port();
	snprintf(port, sizeof(port), "%d", m->port);
	snprintf(m->url, sizeof(m->url), "http://127.0.0.1:%d", m->port);
	const char *argv[] = { h_python(), "-m", "moto.server", "-H", "127.0.0.1", "-p", port, NULL };
	cr_assert(h_cmd_start(&m->cmd, argv, NULL), "cannot start moto_server");
	if (!h_poll_until(port_open, &m->port, 30000)) {
		h_cmd_kill(&m->cmd);
		h_cmd_dump(&m->cmd, "moto_server");
		cr_assert_fail("moto_server did not listen on port %d within 30 s", m->port);
	}
	setenv("AWS_ENDPOINT_URL", m->url, 1);
}

void h_moto_stop(struct h_moto *m)
{
	if (m->cmd.pid > 0)
		h_cmd_kill(&m->cmd);
}

char *h_run_python(const char *code, const char *const args[])
{
	struct h_cmd c;
	const char *argv[16] = { h_python(), "-c", code };
	int n = 3;

	for (int i = 0; args && args[i]; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	const char *env[] = { "AWS_ACCESS_KEY_ID=AKIDBOTO3", "AWS_SECRET_ACCESS_KEY=boto3", "AWS_REGION=us-east-1",
			      NULL };
	int st = h_cmd_run(&c, argv, getenv("AWS_ACCESS_KEY_ID") ? NULL : env, 60000);
	if (st != 0)
		h_cmd_dump(&c, "python");
	cr_assert_eq(st, 0, "python failed (status %d)", st);
	char *out = strdup(c.out ? c.out : "");
	h_cmd_free(&c);
	return out;
}
