/*
 * test_aws.c: src/aws.c without AWS: the helpers (times, XML, URLs,
 * endpoints), and the credential chain's order and sources against files
 * and a small HTTP server of the test's own on loopback standing in for the
 * container credentials endpoint and EC2 instance metadata (IMDSv2).
 * Each criterion test runs in its own process, so the environment a test
 * sets up is its own.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "aws.h"

static void clean_environment(void)
{
	static const char *const names[] = {
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS",
		"AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_REGION", "AWS_DEFAULT_REGION",
		"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
		/* moto and the fake endpoints are on loopback: no proxy in between. */
		"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy",
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		unsetenv(names[i]);
	/* Never the real instance metadata address from a test. */
	setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
	setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials", 1);
	setenv("AWS_CONFIG_FILE", "/nonexistent/config", 1);
}

static void fini_aws(void)
{
	aws_shutdown();
}

TestSuite(aws, .init = clean_environment, .fini = fini_aws);

Test(aws, times)
{
	cr_expect_eq(aws_parse_time("2015-08-30T12:36:00Z"), 1440938160);
	cr_expect_eq(aws_parse_time("2015-08-30T12:36:00.123Z"), 1440938160);
	cr_expect_eq(aws_parse_time("2015-08-30T12:36:00+00:00"), 1440938160);
	cr_expect_eq(aws_parse_time("yesterday"), 0);
	cr_expect_eq(aws_parse_time("2015-08-30T12:36:00+02:00"), 0);
	cr_expect_eq(aws_parse_time(NULL), 0);
}

Test(aws, xml_values)
{
	const char *xml = "<R><Credentials><AccessKeyId>ASIA1</AccessKeyId><SessionToken>a&amp;b&lt;c</SessionToken>"
			  "</Credentials></R>";
	char *key = aws_xml_value(xml, "AccessKeyId"), *token = aws_xml_value(xml, "SessionToken");

	cr_expect_str_eq(key, "ASIA1");
	cr_expect_str_eq(token, "a&b<c");
	cr_expect_null(aws_xml_value(xml, "Expiration"));
	cr_expect_null(aws_xml_value("<A>unclosed", "A"));
	free(key);
	free(token);
}

Test(aws, urls)
{
	char host[64], path[64];

	cr_assert_eq(aws_url_split("http://127.0.0.1:5000", host, sizeof(host), path, sizeof(path)), 0);
	cr_expect_str_eq(host, "127.0.0.1:5000");
	cr_expect_str_eq(path, "/");
	cr_assert_eq(aws_url_split("https://sts.amazonaws.com/x/y", host, sizeof(host), path, sizeof(path)), 0);
	cr_expect_str_eq(host, "sts.amazonaws.com");
	cr_expect_str_eq(path, "/x/y");
	cr_expect_eq(aws_url_split("no-scheme", host, sizeof(host), path, sizeof(path)), -1);
}

Test(aws, endpoints)
{
	char *url = aws_endpoint_url("SECRETS_MANAGER", "secretsmanager", "eu-west-1");

	cr_expect_str_eq(url, "https://secretsmanager.eu-west-1.amazonaws.com");
	free(url);
	url = aws_endpoint_url("STS", "sts", NULL);
	cr_expect_str_eq(url, "https://sts.amazonaws.com");
	free(url);
	url = aws_endpoint_url("STS", "sts", "cn-north-1");
	cr_expect_str_eq(url, "https://sts.cn-north-1.amazonaws.com.cn");
	free(url);

	setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566/", 1);
	url = aws_endpoint_url("STS", "sts", "eu-west-1");
	cr_expect_str_eq(url, "http://127.0.0.1:4566", "the global form, trailing slash dropped");
	free(url);
	setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:4567", 1);
	url = aws_endpoint_url("STS", "sts", "eu-west-1");
	cr_expect_str_eq(url, "http://127.0.0.1:4567", "the service's own form wins");
	free(url);
	url = aws_endpoint_url("SECRETS_MANAGER", "secretsmanager", "eu-west-1");
	cr_expect_str_eq(url, "http://127.0.0.1:4566");
	free(url);
	setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true", 1);
	url = aws_endpoint_url("STS", "sts", "eu-west-1");
	cr_expect_str_eq(url, "https://sts.eu-west-1.amazonaws.com");
	free(url);
}

/* ---------------------------------------------------------------- the chain */

static void expect_credentials(const char *key, const char *secret, const char *token, const char *source)
{
	struct aws_credentials c;

	cr_assert(aws_credentials_get(&c), "no credentials");
	cr_expect_str_eq(c.access_key_id, key);
	cr_expect_str_eq(c.secret_access_key, secret);
	if (token)
		cr_expect_str_eq(c.session_token, token);
	else
		cr_expect_null(c.session_token);
	cr_expect_str_eq(c.source, source);
	aws_credentials_clear(&c);
}

Test(aws, nothing_configured_is_an_error)
{
	char err[512];

	cr_expect_eq(aws_init(NULL, err, sizeof(err)), -1);
	cr_expect(strstr(err, "no AWS credentials found") != NULL, "%s", err);
	cr_expect_null(aws_default_region());
}

Test(aws, environment_first)
{
	char err[512], path[] = "/tmp/pgmux-test-aws-XXXXXX";
	int fd = mkstemp(path);

	cr_assert_geq(fd, 0);
	dprintf(fd, "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n");
	close(fd);
	setenv("AWS_SHARED_CREDENTIALS_FILE", path, 1);
	setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	setenv("AWS_SESSION_TOKEN", "envtoken", 1);
	setenv("AWS_DEFAULT_REGION", "ap-south-1", 1);
	cr_assert_eq(aws_init("", err, sizeof(err)), 0, "%s", err);
	expect_credentials("ENVKEY", "envsecret", "envtoken", "environment");
	cr_expect_str_eq(aws_default_region(), "ap-south-1");
	unlink(path);
}

Test(aws, half_the_environment_is_an_error)
{
	char err[512];

	setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
	cr_expect_eq(aws_init("us-east-1", err, sizeof(err)), -1);
	cr_expect(strstr(err, "AWS_SECRET_ACCESS_KEY") != NULL, "%s", err);
}

Test(aws, shared_credentials_file_and_profile)
{
	char err[512], path[] = "/tmp/pgmux-test-aws-XXXXXX";
	int fd = mkstemp(path);

	cr_assert_geq(fd, 0);
	dprintf(fd, "[default]\naws_access_key_id = DEFAULTKEY\naws_secret_access_key = defaultsecret\n"
		    "[prod]\naws_access_key_id = PRODKEY\naws_secret_access_key = prodsecret\n"
		    "aws_session_token = prodtoken\n");
	close(fd);
	setenv("AWS_SHARED_CREDENTIALS_FILE", path, 1);
	setenv("AWS_PROFILE", "prod", 1);
	setenv("AWS_REGION", "eu-central-1", 1);
	cr_assert_eq(aws_init("us-west-2", err, sizeof(err)), 0, "%s", err);
	expect_credentials("PRODKEY", "prodsecret", "prodtoken", "shared credentials file");
	cr_expect_str_eq(aws_default_region(), "us-west-2", "the configured region wins over AWS_REGION");
	unlink(path);
}

Test(aws, config_file_profile)
{
	char err[512], path[] = "/tmp/pgmux-test-aws-XXXXXX";
	int fd = mkstemp(path);

	cr_assert_geq(fd, 0);
	dprintf(fd, "[profile app]\nregion = x\naws_access_key_id = CFGKEY\naws_secret_access_key = cfgsecret\n");
	close(fd);
	setenv("AWS_CONFIG_FILE", path, 1);
	setenv("AWS_PROFILE", "app", 1);
	cr_assert_eq(aws_init(NULL, err, sizeof(err)), 0, "%s", err);
	expect_credentials("CFGKEY", "cfgsecret", NULL, "shared config file");
	unlink(path);
}

Test(aws, web_identity_needs_both_variables)
{
	char err[512];

	setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/x", 1);
	cr_expect_eq(aws_init("us-east-1", err, sizeof(err)), -1);
	cr_expect(strstr(err, "AWS_WEB_IDENTITY_TOKEN_FILE") != NULL, "%s", err);
}

/* ---------------------------------------------------------------- HTTP sources */

/*
 * A one-thread HTTP server on loopback that answers by path: the container
 * endpoint's JSON at /creds (only with the right Authorization), and
 * IMDSv2's token, role and credentials under /latest/.
 */
struct fake_http {
	int fd;
	int port;
	pthread_t thread;
	volatile int stop;
	int requests;
	char last_authorization[128];
};

static struct fake_http web;

static const char creds_json[] = "{\"Code\": \"Success\", \"AccessKeyId\": \"ASIAHTTP\", \"SecretAccessKey\": "
				 "\"httpsecret\", \"Token\": \"httptoken\", \"Expiration\": \"2099-01-01T00:00:00Z\"}";

static void answer(int fd, int status, const char *body)
{
	char head[256];
	int n = snprintf(head, sizeof(head), "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
			 status, strlen(body));

	if (write(fd, head, (size_t)n) < 0 || write(fd, body, strlen(body)) < 0)
		return;
}

static void *web_main(void *arg)
{
	while (!web.stop) {
		struct pollfd p = { .fd = web.fd, .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		int fd = accept(web.fd, NULL, NULL);
		char req[4096];
		ssize_t n = 0, got;

		if (fd < 0)
			continue;
		while ((size_t)n < sizeof(req) - 1 && (got = read(fd, req + n, sizeof(req) - 1 - (size_t)n)) > 0) {
			n += got;
			req[n] = '\0';
			if (strstr(req, "\r\n\r\n"))
				break;
		}
		req[n > 0 ? n : 0] = '\0';
		web.requests++;
		const char *auth = strstr(req, "Authorization: ");
		if (auth)
			snprintf(web.last_authorization, sizeof(web.last_authorization), "%.*s",
				 (int)strcspn(auth + 15, "\r\n"), auth + 15);
		bool has_imds_token = strstr(req, "X-aws-ec2-metadata-token: imds-session") != NULL;
		if (strncmp(req, "GET /short ", 11) == 0) {
			/* Credentials that expire in 20 s, a new key each time. */
			char json[512], expiration[32];
			time_t soon = time(NULL) + 20;
			struct tm tm;

			gmtime_r(&soon, &tm);
			strftime(expiration, sizeof(expiration), "%Y-%m-%dT%H:%M:%SZ", &tm);
			snprintf(json, sizeof(json),
				 "{\"AccessKeyId\": \"ASIASHORT%d\", \"SecretAccessKey\": \"s\", \"Token\": \"t\", "
				 "\"Expiration\": \"%s\"}",
				 web.requests, expiration);
			answer(fd, 200, json);
		} else if (strncmp(req, "GET /creds ", 11) == 0)
			answer(fd, auth && strncmp(auth + 15, "Bearer ok", 9) == 0 ? 200 : 401, creds_json);
		else if (strncmp(req, "PUT /latest/api/token ", 22) == 0 &&
			 strstr(req, "X-aws-ec2-metadata-token-ttl-seconds: 21600"))
			answer(fd, 200, "imds-session");
		else if (strncmp(req, "GET /latest/meta-data/iam/security-credentials/ ", 48) == 0 && has_imds_token)
			answer(fd, 200, "pgmux-role\n");
		else if (strncmp(req, "GET /latest/meta-data/iam/security-credentials/pgmux-role ", 58) == 0 &&
			 has_imds_token)
			answer(fd, 200, creds_json);
		else
			answer(fd, 404, "not here");
		close(fd);
	}
	return NULL;
}

static void web_start(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);

	memset(&web, 0, sizeof(web));
	web.fd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(web.fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(web.fd, 8), 0);
	cr_assert_eq(getsockname(web.fd, (struct sockaddr *)&sa, &sl), 0);
	web.port = ntohs(sa.sin_port);
	cr_assert_eq(pthread_create(&web.thread, NULL, web_main, NULL), 0);
}

static void web_stop(void)
{
	web.stop = 1;
	pthread_join(web.thread, NULL);
	close(web.fd);
}

Test(aws, container_credentials_endpoint)
{
	char err[512], uri[128], token_file[] = "/tmp/pgmux-test-aws-XXXXXX";
	int fd = mkstemp(token_file);

	cr_assert_geq(fd, 0);
	dprintf(fd, "Bearer ok\n");
	close(fd);
	web_start();
	snprintf(uri, sizeof(uri), "http://127.0.0.1:%d/creds", web.port);
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri, 1);
	setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file, 1);
	cr_assert_eq(aws_init("us-east-1", err, sizeof(err)), 0, "%s", err);
	expect_credentials("ASIAHTTP", "httpsecret", "httptoken", "container credentials endpoint");
	cr_expect_str_eq(web.last_authorization, "Bearer ok");
	struct aws_credentials c;
	cr_assert(aws_credentials_get(&c));
	cr_expect_eq(c.expiration, aws_parse_time("2099-01-01T00:00:00Z"));
	aws_credentials_clear(&c);
	web_stop();
	unlink(token_file);
}

Test(aws, container_endpoint_elsewhere_is_refused)
{
	char err[512];

	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://192.0.2.1/creds", 1);
	cr_expect_eq(aws_init("us-east-1", err, sizeof(err)), -1);
	cr_expect(strstr(err, "FULL_URI") != NULL, "%s", err);
}

Test(aws, instance_metadata_v2)
{
	char err[512], endpoint[64];

	web_start();
	snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", web.port);
	setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint, 1);
	unsetenv("AWS_EC2_METADATA_DISABLED");
	cr_assert_eq(aws_init("us-east-1", err, sizeof(err)), 0, "%s", err);
	expect_credentials("ASIAHTTP", "httpsecret", "httptoken", "instance metadata");
	cr_expect_eq(web.requests, 3, "token, role, credentials");
	web_stop();
}

static bool has_key(const char *key)
{
	struct aws_credentials c;
	bool same;

	if (!aws_credentials_get(&c))
		return false;
	same = strcmp(c.access_key_id, key) == 0;
	aws_credentials_clear(&c);
	return same;
}

/*
 * Temporary credentials are renewed before they expire, on the aws thread:
 * with 20 s left (less than the 15 minutes pgmux keeps in hand) the renewal
 * comes halfway, 10 s later, and brings the endpoint's next key.
 */
Test(aws, temporary_credentials_are_renewed_before_they_expire, .timeout = 60)
{
	char err[512], uri[128];
	struct aws_stats stats;

	web_start();
	snprintf(uri, sizeof(uri), "http://127.0.0.1:%d/short", web.port);
	setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri, 1);
	cr_assert_eq(aws_init("us-east-1", err, sizeof(err)), 0, "%s", err);
	cr_assert(has_key("ASIASHORT1"));
	cr_assert_eq(aws_thread_start(), 0);
	for (int i = 0; i < 300 && !has_key("ASIASHORT2"); i++)
		usleep(100 * 1000);
	cr_expect(has_key("ASIASHORT2"), "the credentials were not renewed within 30 s");
	aws_get_stats(&stats);
	cr_expect_eq(stats.credential_refreshes, 1);
	cr_expect_eq(stats.credential_refresh_failures, 0);
	aws_shutdown();
	web_stop();
}
