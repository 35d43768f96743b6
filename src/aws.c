/*
 * aws.c: region, endpoints, HTTPS, signed calls, the credential chain and
 * the aws helper thread (see aws.h). The credentials are owned here, under
 * creds_lock: the aws thread (or start-up) replaces them whole, any thread
 * copies them out. libcurl's easy interface blocks, which is why only
 * start-up and the aws thread make calls.
 */
#include "aws.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <ini.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "log.h"
#include "sigv4.h"
#include "util.h"

/* Temporary credentials are renewed this long before they expire (botocore's advisory window). */
#define REFRESH_BEFORE_EXPIRY_SECONDS (15 * 60)
/* After a failed renewal, the next try comes this much later (or sooner, near expiry). */
#define REFRESH_RETRY_SECONDS 60
#define HTTP_TIMEOUT_MS 10000L
/* Instance metadata answers in milliseconds on EC2; elsewhere nobody answers at all. */
#define IMDS_TIMEOUT_MS 1000L
#define RESPONSE_MAX (1024 * 1024)
#define ECS_HOST "http://169.254.170.2"
#define IMDS_DEFAULT_ENDPOINT "http://169.254.169.254"
/* Hosts no proxy is ever used for: this machine, instance metadata, the container agent. */
#define LOCAL_ENDPOINTS "localhost,127.0.0.1,::1,169.254.169.254,169.254.170.2,169.254.170.23,fd00:ec2::23,fd00:ec2::254"

static pthread_mutex_t creds_lock = PTHREAD_MUTEX_INITIALIZER;
static struct aws_credentials current; /* under creds_lock */
static bool have_current;              /* under creds_lock */

static bool initialized;   /* written at start-up only */
static bool stopping;      /* atomic: aws_shutdown() cuts short what the aws thread waits for */
static char *default_region;

static struct aws_stats stats; /* atomic */

/* ---------------------------------------------------------------- small helpers */

static char *copy_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

static void free_secret_string(char *s)
{
	if (s) {
		OPENSSL_cleanse(s, strlen(s));
		free(s);
	}
}

void aws_credentials_clear(struct aws_credentials *c)
{
	if (c == NULL)
		return;
	free(c->access_key_id);
	free_secret_string(c->secret_access_key);
	free_secret_string(c->session_token);
	memset(c, 0, sizeof(*c));
}

static void credentials_copy(struct aws_credentials *dst, const struct aws_credentials *src)
{
	dst->access_key_id = copy_or_null(src->access_key_id);
	dst->secret_access_key = copy_or_null(src->secret_access_key);
	dst->session_token = copy_or_null(src->session_token);
	dst->expiration = src->expiration;
	dst->source = src->source;
}

static const char *env(const char *name)
{
	const char *value = getenv(name);

	return value && value[0] ? value : NULL;
}

static bool env_true(const char *name)
{
	const char *value = env(name);

	return value && strcasecmp(value, "true") == 0;
}

time_t aws_parse_time(const char *text)
{
	struct tm tm = { 0 };
	const char *rest;

	if (text == NULL)
		return 0;
	rest = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
	if (rest == NULL)
		return 0;
	if (*rest == '.') /* fractions of a second */
		for (rest++; *rest >= '0' && *rest <= '9'; rest++)
			;
	if (strcmp(rest, "Z") != 0 && strcmp(rest, "+00:00") != 0 && strcmp(rest, "") != 0)
		return 0;
	return timegm(&tm);
}

char *aws_xml_value(const char *xml, const char *tag)
{
	char open[96], close[96];
	const char *start, *end;
	char *out;
	size_t used = 0;

	snprintf(open, sizeof(open), "<%s>", tag);
	snprintf(close, sizeof(close), "</%s>", tag);
	start = xml ? strstr(xml, open) : NULL;
	if (start == NULL)
		return NULL;
	start += strlen(open);
	end = strstr(start, close);
	if (end == NULL)
		return NULL;
	out = xmalloc((size_t)(end - start) + 1);
	for (const char *p = start; p < end; p++) {
		static const struct {
			const char *entity;
			char c;
		} entities[] = { { "&amp;", '&' }, { "&lt;", '<' }, { "&gt;", '>' }, { "&quot;", '"' }, { "&apos;", '\'' } };
		bool replaced = false;

		for (size_t i = 0; *p == '&' && i < sizeof(entities) / sizeof(entities[0]); i++) {
			size_t n = strlen(entities[i].entity);

			if ((size_t)(end - p) >= n && strncmp(p, entities[i].entity, n) == 0) {
				out[used++] = entities[i].c;
				p += n - 1;
				replaced = true;
				break;
			}
		}
		if (!replaced)
			out[used++] = *p;
	}
	out[used] = '\0';
	return out;
}

int aws_url_split(const char *url, char *host, size_t host_len, char *path, size_t path_len)
{
	const char *start = strstr(url, "://");
	const char *slash;
	size_t n;

	if (start == NULL)
		return -1;
	start += 3;
	slash = strchr(start, '/');
	n = slash ? (size_t)(slash - start) : strlen(start);
	if (n == 0 || n >= host_len)
		return -1;
	memcpy(host, start, n);
	host[n] = '\0';
	snprintf(path, path_len, "%s", slash ? slash : "/");
	return 0;
}

/* ---------------------------------------------------------------- region and endpoints */

const char *aws_default_region(void)
{
	return default_region;
}

bool aws_ready(void)
{
	return initialized;
}

char *aws_endpoint_url(const char *env_id, const char *host_prefix, const char *region)
{
	char name[96], *url;
	const char *configured = NULL;

	if (!env_true("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")) {
		snprintf(name, sizeof(name), "AWS_ENDPOINT_URL_%s", env_id);
		configured = env(name);
		if (configured == NULL)
			configured = env("AWS_ENDPOINT_URL");
	}
	if (configured) {
		url = xstrdup(configured);
		/* "http://host:port/" and "http://host:port" name the same endpoint. */
		size_t n = strlen(url);
		const char *after_scheme = strstr(url, "://");

		if (n > 0 && url[n - 1] == '/' && after_scheme && strchr(after_scheme + 3, '/') == url + n - 1)
			url[n - 1] = '\0';
		return url;
	}
	/* STS has a global endpoint for callers that name no region. */
	if (region == NULL || region[0] == '\0') {
		url = xasprintf("https://%s.amazonaws.com", host_prefix);
		return url;
	}
	url = xasprintf("https://%s.%s.amazonaws.com%s", host_prefix, region,
		     strncmp(region, "cn-", 3) == 0 ? ".cn" : "");
	return url;
}

/* ---------------------------------------------------------------- HTTP */

void aws_http_response_free(struct aws_http_response *r)
{
	if (r == NULL)
		return;
	if (r->body) {
		OPENSSL_cleanse(r->body, r->len);
		free(r->body);
	}
	memset(r, 0, sizeof(*r));
}

/* libcurl asks this during a transfer: non-zero aborts it (pgmux is stopping). */
static int keep_going(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	return __atomic_load_n(&stopping, __ATOMIC_RELAXED) ? 1 : 0;
}

static size_t collect(char *data, size_t size, size_t count, void *arg)
{
	struct aws_http_response *r = arg;
	size_t n = size * count;
	char *grown;

	if (r->len + n > RESPONSE_MAX)
		return 0; /* curl reports a write error */
	grown = realloc(r->body, r->len + n + 1);
	if (grown == NULL)
		return 0;
	r->body = grown;
	memcpy(r->body + r->len, data, n);
	r->len += n;
	r->body[r->len] = '\0';
	return n;
}

int aws_http(const char *method, const char *url, const char *const headers[], const char *body, size_t body_len,
	     long timeout_ms, struct aws_http_response *out, char *err, size_t errlen)
{
	CURL *curl = curl_easy_init();
	struct curl_slist *list = NULL;
	char curl_error[CURL_ERROR_SIZE] = "";
	CURLcode rc;

	memset(out, 0, sizeof(*out));
	if (curl == NULL) {
		error_printf(err, errlen, "cannot set up an HTTP request");
		return -1;
	}
	for (size_t i = 0; headers && headers[i]; i++)
		list = curl_slist_append(list, headers[i]);
	/* curl would add "Expect: 100-continue" to larger bodies: one round trip more for nothing. */
	list = curl_slist_append(list, "Expect:");
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
	if (body) {
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)body_len);
	} else if (strcmp(method, "GET") == 0) {
		curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
	}
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, out);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_error);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 3000 ? timeout_ms : 3000L);
	/* Several threads, and no SIGALRM for timeouts. */
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	/* Signed requests and credentials must not follow a redirect elsewhere. */
	curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
	/*
	 * HTTPS_PROXY and friends apply, as with the SDKs, but never to this host
	 * or to the link-local credential endpoints, which no proxy can reach.
	 */
	const char *no_proxy = env("NO_PROXY") ? env("NO_PROXY") : env("no_proxy");
	char *bypass;

	bypass = xasprintf("%s%s%s", LOCAL_ENDPOINTS, no_proxy ? "," : "", no_proxy ? no_proxy : "");
	curl_easy_setopt(curl, CURLOPT_NOPROXY, bypass);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, keep_going);
	curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	rc = curl_easy_perform(curl);
	if (rc == CURLE_OK)
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &out->status);
	curl_easy_cleanup(curl);
	curl_slist_free_all(list);
	free(bypass);
	if (rc != CURLE_OK) {
		error_printf(err, errlen, "%s", curl_error[0] ? curl_error : curl_easy_strerror(rc));
		aws_http_response_free(out);
		return -1;
	}
	if (out->body == NULL)
		out->body = xstrdup("");
	return 0;
}

void aws_describe_error(const struct aws_http_response *r, char *err, size_t errlen)
{
	json_t *root = json_loadb(r->body, r->len, 0, NULL);
	const char *type = NULL, *message = NULL;
	char *xml_code = NULL, *xml_message = NULL;

	if (root && json_is_object(root)) {
		type = json_string_value(json_object_get(root, "__type"));
		message = json_string_value(json_object_get(root, "message"));
		if (message == NULL)
			message = json_string_value(json_object_get(root, "Message"));
	} else {
		xml_code = aws_xml_value(r->body, "Code");
		xml_message = aws_xml_value(r->body, "Message");
		type = xml_code;
		message = xml_message;
	}
	if (type && strchr(type, '#'))
		type = strchr(type, '#') + 1;
	error_printf(err, errlen, "HTTP %ld%s%.80s%s%.200s", r->status, type ? " " : "", type ? type : "",
		     message ? ": " : "", message ? message : "");
	json_decref(root);
	free(xml_code);
	free(xml_message);
}

int aws_call(const char *signing_name, const char *env_id, const char *host_prefix, const char *region,
	     const char *target, const char *content_type, const char *body, struct aws_http_response *out,
	     char *err, size_t errlen)
{
	struct aws_credentials creds;
	char host[256], path[512];
	char *url;
	int rc = -1;

	memset(out, 0, sizeof(*out));
	if (!aws_credentials_get(&creds)) {
		error_printf(err, errlen, "no AWS credentials");
		return -1;
	}
	url = aws_endpoint_url(env_id, host_prefix, region);
	if (aws_url_split(url, host, sizeof(host), path, sizeof(path)) != 0) {
		error_printf(err, errlen, "cannot use the endpoint URL %.200s", url);
		goto out;
	}

	struct sigv4_header signed_headers[3];
	size_t n = 0;

	signed_headers[n++] = (struct sigv4_header){ "Host", host };
	signed_headers[n++] = (struct sigv4_header){ "Content-Type", content_type };
	if (target)
		signed_headers[n++] = (struct sigv4_header){ "X-Amz-Target", target };

	struct sigv4_request request = {
		.method = "POST", .path = path, .normalize_path = true, .query = NULL,
		.headers = signed_headers, .n_headers = n, .payload = body, .payload_len = strlen(body),
	};
	struct sigv4_credentials keys = { creds.access_key_id, creds.secret_access_key, creds.session_token };
	struct sigv4_scope scope = { region ? region : "us-east-1", signing_name, time(NULL) };
	struct sigv4_result signature;

	if (sigv4_sign_headers(&request, &keys, &scope, &signature) != 0) {
		error_printf(err, errlen, "cannot sign the request");
		goto out;
	}

	char *lines[7];
	size_t k = 0;

	lines[k++] = xasprintf("Host: %s", host);
	lines[k++] = xasprintf("Content-Type: %s", content_type);
	lines[k++] = xasprintf("X-Amz-Date: %s", signature.amz_date);
	lines[k++] = xasprintf("Authorization: %s", signature.authorization);
	if (target)
		lines[k++] = xasprintf("X-Amz-Target: %s", target);
	if (creds.session_token)
		lines[k++] = xasprintf("X-Amz-Security-Token: %s", creds.session_token);
	lines[k] = NULL;
	sigv4_result_free(&signature);

	if (aws_http("POST", url, (const char *const *)lines, body, strlen(body), HTTP_TIMEOUT_MS, out, err,
		     errlen) == 0)
		rc = 0;
	for (size_t i = 0; i < k; i++)
		free_secret_string(lines[i]);
out:
	free(url);
	aws_credentials_clear(&creds);
	return rc;
}

/* ---------------------------------------------------------------- credential providers */

enum found {
	FOUND,
	ABSENT, /* this source is not configured here: try the next */
	FAILED, /* configured, but it did not work: the chain stops with why */
};

static enum found from_environment(struct aws_credentials *out, char *err, size_t errlen)
{
	const char *key = env("AWS_ACCESS_KEY_ID"), *secret = env("AWS_SECRET_ACCESS_KEY");

	if (key == NULL && secret == NULL)
		return ABSENT;
	if (key == NULL || secret == NULL) {
		error_printf(err, errlen, "%s is set but %s is not", key ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
			     key ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID");
		return FAILED;
	}
	out->access_key_id = xstrdup(key);
	out->secret_access_key = xstrdup(secret);
	out->session_token = copy_or_null(env("AWS_SESSION_TOKEN"));
	out->source = "environment";
	return FOUND;
}

/* A small file's content without its trailing newline (malloc'd), or NULL. */
static char *read_small_file(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char *data;
	size_t n;

	if (f == NULL) {
		error_printf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		return NULL;
	}
	data = xmalloc(RESPONSE_MAX + 1);
	n = fread(data, 1, RESPONSE_MAX, f);
	fclose(f);
	data[n] = '\0';
	while (n > 0 && (data[n - 1] == '\n' || data[n - 1] == '\r' || data[n - 1] == ' '))
		data[--n] = '\0';
	return data;
}

/* Form encoding for an AWS query API body: every value percent-encoded. */
static void form_add(char **body, const char *name, const char *value)
{
	char *encoded = sigv4_uri_encode(value, false), *grown;

	grown = xasprintf("%s%s%s=%s", *body ? *body : "", *body ? "&" : "", name, encoded);
	free_secret_string(*body);
	free_secret_string(encoded);
	*body = grown;
}

/*
 * EKS (IRSA) and other OIDC setups: the token file's JWT is traded for role
 * credentials with STS AssumeRoleWithWebIdentity, which needs no signature.
 * The file is read again at every renewal: the kubelet rotates it.
 */
static enum found from_web_identity(struct aws_credentials *out, char *err, size_t errlen)
{
	const char *token_file = env("AWS_WEB_IDENTITY_TOKEN_FILE"), *role = env("AWS_ROLE_ARN");
	const char *session_name = env("AWS_ROLE_SESSION_NAME");
	char default_session[64], *token, *body = NULL, *url;
	struct aws_http_response response;
	int rc;

	if (token_file == NULL && role == NULL)
		return ABSENT;
	if (token_file == NULL || role == NULL) {
		error_printf(err, errlen, "web identity: %s is set but %s is not",
			     token_file ? "AWS_WEB_IDENTITY_TOKEN_FILE" : "AWS_ROLE_ARN",
			     token_file ? "AWS_ROLE_ARN" : "AWS_WEB_IDENTITY_TOKEN_FILE");
		return FAILED;
	}
	token = read_small_file(token_file, err, errlen);
	if (token == NULL)
		return FAILED;
	if (session_name == NULL) {
		snprintf(default_session, sizeof(default_session), "pgmux-%lld", (long long)time(NULL));
		session_name = default_session;
	}
	form_add(&body, "Action", "AssumeRoleWithWebIdentity");
	form_add(&body, "Version", "2011-06-15");
	form_add(&body, "RoleArn", role);
	form_add(&body, "RoleSessionName", session_name);
	form_add(&body, "WebIdentityToken", token);
	free_secret_string(token);

	url = aws_endpoint_url("STS", "sts", default_region);
	const char *headers[] = { "Content-Type: application/x-www-form-urlencoded; charset=utf-8",
				  "Accept: application/xml", NULL };
	rc = aws_http("POST", url, headers, body, strlen(body), HTTP_TIMEOUT_MS, &response, err, errlen);
	free_secret_string(body);
	if (rc != 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", err);
		error_printf(err, errlen, "web identity: STS at %.120s: %s", url, why);
		free(url);
		return FAILED;
	}
	if (response.status != 200) {
		char why[320];

		aws_describe_error(&response, why, sizeof(why));
		error_printf(err, errlen, "web identity: STS AssumeRoleWithWebIdentity for %.120s: %s", role, why);
		aws_http_response_free(&response);
		free(url);
		return FAILED;
	}
	free(url);
	out->access_key_id = aws_xml_value(response.body, "AccessKeyId");
	out->secret_access_key = aws_xml_value(response.body, "SecretAccessKey");
	out->session_token = aws_xml_value(response.body, "SessionToken");
	char *expiration = aws_xml_value(response.body, "Expiration");

	out->expiration = aws_parse_time(expiration);
	free(expiration);
	aws_http_response_free(&response);
	out->source = "web identity";
	if (out->access_key_id == NULL || out->secret_access_key == NULL || out->session_token == NULL) {
		error_printf(err, errlen, "web identity: STS answered without credentials");
		aws_credentials_clear(out);
		return FAILED;
	}
	return FOUND;
}

/* The JSON that the container and instance metadata endpoints answer with. */
static int credentials_from_json(const char *text, struct aws_credentials *out, char *err, size_t errlen)
{
	json_t *root = json_loads(text, 0, NULL);
	const char *key, *secret, *token, *expiration, *code;

	if (root == NULL || !json_is_object(root)) {
		error_printf(err, errlen, "the answer is not a JSON object");
		json_decref(root);
		return -1;
	}
	code = json_string_value(json_object_get(root, "Code"));
	key = json_string_value(json_object_get(root, "AccessKeyId"));
	secret = json_string_value(json_object_get(root, "SecretAccessKey"));
	token = json_string_value(json_object_get(root, "Token"));
	expiration = json_string_value(json_object_get(root, "Expiration"));
	if ((code && strcmp(code, "Success") != 0) || key == NULL || secret == NULL) {
		error_printf(err, errlen, "the answer holds no credentials%s%.80s", code ? ": " : "", code ? code : "");
		json_decref(root);
		return -1;
	}
	out->access_key_id = xstrdup(key);
	out->secret_access_key = xstrdup(secret);
	out->session_token = copy_or_null(token);
	out->expiration = aws_parse_time(expiration);
	json_decref(root);
	return 0;
}

/* FULL_URI may only name an endpoint on this host or the ECS/EKS agent's, unless it is HTTPS. */
static bool container_uri_allowed(const char *uri)
{
	static const char *const allowed[] = { "http://127.", "http://localhost:", "http://localhost/",
					       "http://[::1]", "http://169.254.170.2", "http://169.254.170.23",
					       "http://[fd00:ec2::23]", "https://" };

	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
		if (strncasecmp(uri, allowed[i], strlen(allowed[i])) == 0)
			return true;
	return false;
}

/* ECS tasks (and EKS Pod Identity): an HTTP endpoint the agent serves. */
static enum found from_container(struct aws_credentials *out, char *err, size_t errlen)
{
	const char *relative = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
	const char *full = env("AWS_CONTAINER_CREDENTIALS_FULL_URI");
	const char *token_file = env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
	const char *token_value = env("AWS_CONTAINER_AUTHORIZATION_TOKEN");
	char *url = NULL, *token = NULL, *auth_header = NULL;
	const char *headers[3] = { "Accept: application/json", NULL, NULL };
	struct aws_http_response response;
	enum found result = FAILED;

	if (relative == NULL && full == NULL)
		return ABSENT;
	if (relative) {
		url = xasprintf("%s%s", ECS_HOST, relative);
	} else {
		if (!container_uri_allowed(full)) {
			error_printf(err, errlen, "container credentials: AWS_CONTAINER_CREDENTIALS_FULL_URI must be "
				     "HTTPS or name this host or the container agent (169.254.170.2, 169.254.170.23)");
			return FAILED;
		}
		url = xstrdup(full);
	}
	if (token_file)
		token = read_small_file(token_file, err, errlen);
	else if (token_value)
		token = xstrdup(token_value);
	if (token_file && token == NULL)
		goto out;
	if (token) {
		auth_header = xasprintf("Authorization: %s", token);
		headers[1] = auth_header;
	}
	if (aws_http("GET", url, headers, NULL, 0, HTTP_TIMEOUT_MS, &response, err, errlen) != 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", err);
		error_printf(err, errlen, "container credentials at %.120s: %s", url, why);
		goto out;
	}
	if (response.status != 200) {
		error_printf(err, errlen, "container credentials at %.120s: HTTP %ld", url, response.status);
	} else if (credentials_from_json(response.body, out, err, errlen) == 0) {
		out->source = "container credentials endpoint";
		result = FOUND;
	}
	aws_http_response_free(&response);
out:
	free(url);
	free_secret_string(token);
	free_secret_string(auth_header);
	return result;
}

struct profile_search {
	const char *section; /* "default", "profile NAME" or "NAME" */
	struct aws_credentials *out;
};

static int profile_entry(void *user, const char *section, const char *name, const char *value)
{
	struct profile_search *search = user;

	if (strcmp(section, search->section) != 0)
		return 1;
	if (strcmp(name, "aws_access_key_id") == 0) {
		free(search->out->access_key_id);
		search->out->access_key_id = xstrdup(value);
	} else if (strcmp(name, "aws_secret_access_key") == 0) {
		free_secret_string(search->out->secret_access_key);
		search->out->secret_access_key = xstrdup(value);
	} else if (strcmp(name, "aws_session_token") == 0) {
		free_secret_string(search->out->session_token);
		search->out->session_token = xstrdup(value);
	}
	return 1;
}

/* Static keys of a profile in one INI file; ABSENT when the file or the keys are not there. */
static enum found from_profile_file(const char *path, const char *section, struct aws_credentials *out,
				    const char *source, char *err, size_t errlen)
{
	struct profile_search search = { section, out };
	int rc;

	if (access(path, F_OK) != 0)
		return ABSENT;
	rc = ini_parse(path, profile_entry, &search);
	if (rc < 0) {
		error_printf(err, errlen, "cannot read %s", path);
		aws_credentials_clear(out);
		return FAILED;
	}
	if (out->access_key_id == NULL && out->secret_access_key == NULL) {
		aws_credentials_clear(out);
		return ABSENT;
	}
	if (out->access_key_id == NULL || out->secret_access_key == NULL) {
		error_printf(err, errlen, "%s: [%s] has only one of aws_access_key_id and aws_secret_access_key", path,
			     section);
		aws_credentials_clear(out);
		return FAILED;
	}
	out->source = source;
	return FOUND;
}

static enum found from_shared_files(struct aws_credentials *out, char *err, size_t errlen)
{
	const char *profile = env("AWS_PROFILE") ? env("AWS_PROFILE") : "default";
	const char *home = env("HOME");
	char path[1024], section[300];
	enum found found;

	if (env("AWS_SHARED_CREDENTIALS_FILE"))
		snprintf(path, sizeof(path), "%s", env("AWS_SHARED_CREDENTIALS_FILE"));
	else if (home)
		snprintf(path, sizeof(path), "%s/.aws/credentials", home);
	else
		path[0] = '\0';
	if (path[0]) {
		found = from_profile_file(path, profile, out, "shared credentials file", err, errlen);
		if (found != ABSENT)
			return found;
	}
	/* The config file names profiles "[profile NAME]", but the default one "[default]". */
	if (env("AWS_CONFIG_FILE"))
		snprintf(path, sizeof(path), "%s", env("AWS_CONFIG_FILE"));
	else if (home)
		snprintf(path, sizeof(path), "%s/.aws/config", home);
	else
		return ABSENT;
	if (strcmp(profile, "default") == 0)
		snprintf(section, sizeof(section), "default");
	else
		snprintf(section, sizeof(section), "profile %s", profile);
	return from_profile_file(path, section, out, "shared config file", err, errlen);
}

/* EC2: IMDSv2 (a session token first, then the role's credentials). */
static enum found from_instance_metadata(struct aws_credentials *out, char *err, size_t errlen)
{
	const char *endpoint = env("AWS_EC2_METADATA_SERVICE_ENDPOINT") ? env("AWS_EC2_METADATA_SERVICE_ENDPOINT")
									 : IMDS_DEFAULT_ENDPOINT;
	char url[512], *token_header = NULL, role[256];
	struct aws_http_response response;
	enum found result = FAILED;
	size_t base_len;

	if (env_true("AWS_EC2_METADATA_DISABLED"))
		return ABSENT;
	snprintf(url, sizeof(url), "%s", endpoint);
	base_len = strlen(url);
	if (base_len > 0 && url[base_len - 1] == '/')
		url[--base_len] = '\0';

	snprintf(url + base_len, sizeof(url) - base_len, "/latest/api/token");
	const char *token_request[] = { "X-aws-ec2-metadata-token-ttl-seconds: 21600", NULL };

	/* Nobody answering means this is not an EC2 instance: not an error, just no credentials here. */
	if (aws_http("PUT", url, token_request, "", 0, IMDS_TIMEOUT_MS, &response, err, errlen) != 0)
		return ABSENT;
	if (response.status != 200) {
		error_printf(err, errlen, "instance metadata: HTTP %ld for a session token", response.status);
		aws_http_response_free(&response);
		return FAILED;
	}
	token_header = xasprintf("X-aws-ec2-metadata-token: %s", response.body);
	aws_http_response_free(&response);
	const char *with_token[] = { token_header, NULL };

	snprintf(url + base_len, sizeof(url) - base_len, "/latest/meta-data/iam/security-credentials/");
	if (aws_http("GET", url, with_token, NULL, 0, IMDS_TIMEOUT_MS, &response, err, errlen) != 0)
		goto out;
	if (response.status != 200 || response.body[0] == '\0') {
		error_printf(err, errlen, "instance metadata: no IAM role (HTTP %ld); attach an instance profile",
			     response.status);
		aws_http_response_free(&response);
		goto out;
	}
	snprintf(role, sizeof(role), "%.*s", (int)strcspn(response.body, "\r\n"), response.body);
	aws_http_response_free(&response);
	snprintf(url + base_len, sizeof(url) - base_len, "/latest/meta-data/iam/security-credentials/%s", role);
	if (aws_http("GET", url, with_token, NULL, 0, IMDS_TIMEOUT_MS, &response, err, errlen) != 0)
		goto out;
	if (response.status != 200)
		error_printf(err, errlen, "instance metadata: HTTP %ld for role %s", response.status, role);
	else if (credentials_from_json(response.body, out, err, errlen) == 0) {
		out->source = "instance metadata";
		result = FOUND;
	}
	aws_http_response_free(&response);
out:
	free_secret_string(token_header);
	return result;
}

/* The chain, in the SDKs' order; the first source that is configured decides. */
static int resolve_credentials(struct aws_credentials *out, char *err, size_t errlen)
{
	enum found (*const providers[])(struct aws_credentials *, char *, size_t) = {
		from_environment, from_web_identity, from_container, from_shared_files, from_instance_metadata,
	};

	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < sizeof(providers) / sizeof(providers[0]); i++) {
		enum found found = providers[i](out, err, errlen);

		if (found == FOUND)
			return 0;
		if (found == FAILED) {
			aws_credentials_clear(out);
			return -1;
		}
	}
	error_printf(err, errlen, "no AWS credentials found (environment, web identity, container endpoint, "
		     "shared credentials file, instance metadata)");
	return -1;
}

static void install_credentials(struct aws_credentials *fresh)
{
	struct aws_credentials old;

	pthread_mutex_lock(&creds_lock);
	old = current;
	current = *fresh;
	have_current = true;
	pthread_mutex_unlock(&creds_lock);
	aws_credentials_clear(&old);
	memset(fresh, 0, sizeof(*fresh));
}

static void log_credentials(const char *what, const struct aws_credentials *c)
{
	if (c->expiration) {
		struct tm tm;
		char until[32];

		gmtime_r(&c->expiration, &tm);
		strftime(until, sizeof(until), "%Y-%m-%dT%H:%M:%SZ", &tm);
		log_info("aws: %s credentials from the %s (access key %.24s), valid until %s", what, c->source,
			 c->access_key_id, until);
	} else {
		log_info("aws: %s credentials from the %s (access key %.24s)", what, c->source, c->access_key_id);
	}
}

bool aws_credentials_get(struct aws_credentials *out)
{
	bool have;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&creds_lock);
	have = have_current;
	if (have)
		credentials_copy(out, &current);
	pthread_mutex_unlock(&creds_lock);
	return have;
}

int aws_init(const char *configured_region, char *err, size_t errlen)
{
	struct aws_credentials fresh;
	const char *region = configured_region && configured_region[0] ? configured_region : env("AWS_REGION");

	if (region == NULL)
		region = env("AWS_DEFAULT_REGION");
	free(default_region);
	default_region = region ? xstrdup(region) : NULL;
	if (!initialized && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		error_printf(err, errlen, "cannot initialize libcurl");
		return -1;
	}
	initialized = true;
	if (resolve_credentials(&fresh, err, errlen) != 0)
		return -1;
	log_credentials("using", &fresh);
	install_credentials(&fresh);
	return 0;
}

/* ---------------------------------------------------------------- the aws thread */

static struct {
	pthread_t thread;
	bool running;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool stop;   /* under lock */
	bool poked;  /* under lock */
	void (*job)(void *arg);
	void *job_arg;
	int job_interval_ms;
	time_t next_credentials_try; /* 0: nothing to renew; the thread's own */
} T = { .lock = PTHREAD_MUTEX_INITIALIZER };

void aws_get_stats(struct aws_stats *out)
{
	out->credential_refreshes = __atomic_load_n(&stats.credential_refreshes, __ATOMIC_RELAXED);
	out->credential_refresh_failures = __atomic_load_n(&stats.credential_refresh_failures, __ATOMIC_RELAXED);
}

void aws_set_job(void (*job)(void *arg), void *arg, int interval_ms)
{
	T.job = job;
	T.job_arg = arg;
	T.job_interval_ms = interval_ms;
}

/* When the current credentials should be renewed (0: never). */
static time_t renewal_time(time_t now)
{
	time_t expiration;

	pthread_mutex_lock(&creds_lock);
	expiration = have_current ? current.expiration : 0;
	pthread_mutex_unlock(&creds_lock);
	if (expiration == 0)
		return 0;
	if (expiration - REFRESH_BEFORE_EXPIRY_SECONDS > now)
		return expiration - REFRESH_BEFORE_EXPIRY_SECONDS;
	/* Short-lived credentials: renew halfway through what is left, at least 10 s apart. */
	return now + (expiration - now > 20 ? (expiration - now) / 2 : 10);
}

static void renew_credentials(void)
{
	struct aws_credentials fresh;
	char err[512];
	time_t now = time(NULL);

	if (resolve_credentials(&fresh, err, sizeof(err)) != 0) {
		__atomic_add_fetch(&stats.credential_refresh_failures, 1, __ATOMIC_RELAXED);
		log_warning("aws: renewing the credentials failed, keeping the current ones for now: %s", err);
		T.next_credentials_try = now + REFRESH_RETRY_SECONDS;
		time_t renewal = renewal_time(now);

		if (renewal != 0 && renewal < T.next_credentials_try)
			T.next_credentials_try = renewal;
		return;
	}
	__atomic_add_fetch(&stats.credential_refreshes, 1, __ATOMIC_RELAXED);
	log_credentials("renewed", &fresh);
	install_credentials(&fresh);
	T.next_credentials_try = renewal_time(now);
}

static void *aws_thread_main(void *arg)
{
	struct timespec job_due;

	pthread_setname_np(pthread_self(), "aws");
	clock_gettime(CLOCK_MONOTONIC, &job_due);
	job_due.tv_sec += T.job_interval_ms / 1000;
	job_due.tv_nsec += (long)(T.job_interval_ms % 1000) * 1000000L;
	if (job_due.tv_nsec >= 1000000000L) {
		job_due.tv_sec++;
		job_due.tv_nsec -= 1000000000L;
	}
	T.next_credentials_try = renewal_time(time(NULL));
	for (;;) {
		struct timespec now, deadline = job_due;
		bool run_job = false, renew = false;

		pthread_mutex_lock(&T.lock);
		for (;;) {
			if (T.stop)
				break;
			clock_gettime(CLOCK_MONOTONIC, &now);
			if (T.poked || (T.job && (now.tv_sec > job_due.tv_sec ||
						  (now.tv_sec == job_due.tv_sec && now.tv_nsec >= job_due.tv_nsec)))) {
				run_job = T.job != NULL;
				T.poked = false;
				break;
			}
			if (T.next_credentials_try != 0 && time(NULL) >= T.next_credentials_try) {
				renew = true;
				break;
			}
			deadline = job_due;
			if (!T.job)
				deadline.tv_sec = now.tv_sec + 3600;
			/* Wall-clock renewals are looked at at least every 10 s. */
			if (T.next_credentials_try != 0 && deadline.tv_sec > now.tv_sec + 10) {
				deadline.tv_sec = now.tv_sec + 10;
				deadline.tv_nsec = now.tv_nsec;
			}
			pthread_cond_timedwait(&T.wake, &T.lock, &deadline);
		}
		bool stop = T.stop;

		pthread_mutex_unlock(&T.lock);
		if (stop)
			break;
		if (renew)
			renew_credentials();
		if (run_job) {
			T.job(T.job_arg);
			clock_gettime(CLOCK_MONOTONIC, &job_due);
			job_due.tv_sec += T.job_interval_ms / 1000;
			job_due.tv_nsec += (long)(T.job_interval_ms % 1000) * 1000000L;
			if (job_due.tv_nsec >= 1000000000L) {
				job_due.tv_sec++;
				job_due.tv_nsec -= 1000000000L;
			}
		}
	}
	return NULL;
}

int aws_thread_start(void)
{
	pthread_condattr_t attr;

	if (!initialized || T.running)
		return 0;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&T.wake, &attr);
	pthread_condattr_destroy(&attr);
	if (pthread_create(&T.thread, NULL, aws_thread_main, NULL) != 0) {
		pthread_cond_destroy(&T.wake);
		return -1;
	}
	T.running = true;
	return 0;
}

void aws_thread_poke(void)
{
	if (!T.running)
		return;
	pthread_mutex_lock(&T.lock);
	T.poked = true;
	pthread_cond_signal(&T.wake);
	pthread_mutex_unlock(&T.lock);
}

void aws_shutdown(void)
{
	if (T.running) {
		__atomic_store_n(&stopping, true, __ATOMIC_RELAXED);
		pthread_mutex_lock(&T.lock);
		T.stop = true;
		pthread_cond_signal(&T.wake);
		pthread_mutex_unlock(&T.lock);
		pthread_join(T.thread, NULL);
		pthread_cond_destroy(&T.wake);
		T.running = false;
	}
	pthread_mutex_lock(&creds_lock);
	aws_credentials_clear(&current);
	have_current = false;
	pthread_mutex_unlock(&creds_lock);
	free(default_region);
	default_region = NULL;
	if (initialized) {
		curl_global_cleanup();
		initialized = false;
	}
}
