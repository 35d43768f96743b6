/*
 * aws.h: what pgmux needs to talk to AWS, below everything AWS-specific it
 * does (secretsmgr.c, iamauth.c): the region, service endpoints (with
 * AWS_ENDPOINT_URL and its per-service forms, as the SDKs honour them),
 * HTTPS through libcurl, SigV4-signed API calls, the credential chain in
 * the SDKs' order, and the "aws" helper thread that refreshes temporary
 * credentials before they expire and runs one periodic job.
 *
 * Every call that does I/O blocks: it runs at start-up (before the workers
 * exist) or on the aws thread, never on a worker or the main loop. What the
 * other threads use (aws_credentials_get()) only copies under a mutex.
 * This module calls nothing above it; it knows no pool, server or secret.
 */
#ifndef PGMUX_AWS_H
#define PGMUX_AWS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* One set of credentials; the strings are owned (aws_credentials_clear()). */
struct aws_credentials {
	char *access_key_id;
	char *secret_access_key;
	char *session_token; /* NULL for long-term keys */
	time_t expiration;   /* 0: they do not expire */
	const char *source;  /* static text for logs: "environment", "web identity", ... */
};

void aws_credentials_clear(struct aws_credentials *c);

/*
 * Set up libcurl and the default region (configured_region, else
 * AWS_REGION, else AWS_DEFAULT_REGION; may stay unset) and resolve the
 * credential chain: environment, web identity (STS
 * AssumeRoleWithWebIdentity), the container credentials endpoint, the shared
 * credentials and config files, EC2 instance metadata (IMDSv2). Start-up
 * only, before any other thread exists. Returns 0, or -1 with why in err.
 */
int aws_init(const char *configured_region, char *err, size_t errlen);

/* True once aws_init() succeeded. */
bool aws_ready(void);

/* The region aws_init() settled on, or NULL. */
const char *aws_default_region(void);

/* A copy of the current credentials; false when there are none. Any thread, no I/O. */
bool aws_credentials_get(struct aws_credentials *out);

/*
 * The base URL of a service: AWS_ENDPOINT_URL_<env_id> (SECRETS_MANAGER,
 * STS), else AWS_ENDPOINT_URL, else https://<host_prefix>.<region>.amazonaws.com
 * (AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true ignores the first two). Malloc'd.
 */
char *aws_endpoint_url(const char *env_id, const char *host_prefix, const char *region);

struct aws_http_response {
	long status; /* the HTTP status, 0 when no answer came */
	char *body;  /* NUL-terminated */
	size_t len;
};

void aws_http_response_free(struct aws_http_response *r);

/*
 * One HTTP(S) request (blocking, at most timeout_ms). headers: NULL or a
 * NULL-terminated list of "Name: value". Returns 0 when an answer came (any
 * status), -1 with why in err when none did.
 */
int aws_http(const char *method, const char *url, const char *const headers[], const char *body, size_t body_len,
	     long timeout_ms, struct aws_http_response *out, char *err, size_t errlen);

/* What an AWS error answer says ("HTTP 400 ResourceNotFoundException: ..."), into err. */
void aws_describe_error(const struct aws_http_response *r, char *err, size_t errlen);

/*
 * A SigV4-signed POST of body to an AWS API with the current credentials:
 * signing_name is the service in the signature ("secretsmanager"),
 * env_id and host_prefix find its endpoint (aws_endpoint_url()), target
 * (NULL for none) is sent as X-Amz-Target. Returns as aws_http() does.
 */
int aws_call(const char *signing_name, const char *env_id, const char *host_prefix, const char *region,
	     const char *target, const char *content_type, const char *body, struct aws_http_response *out,
	     char *err, size_t errlen);

/*
 * The periodic job of the aws thread (before aws_thread_start()): job(arg)
 * runs every interval_ms and when aws_thread_poke() asks.
 */
void aws_set_job(void (*job)(void *arg), void *arg, int interval_ms);

/* Start the aws thread when aws_init() succeeded (else nothing). Returns 0 or -1. */
int aws_thread_start(void);

/* Run the job soon (a SIGHUP re-reads the secrets). Any thread. */
void aws_thread_poke(void);

/* Stop the thread and free everything (at exit). */
void aws_shutdown(void);

/* Counters for /metrics (atomic reads). */
struct aws_stats {
	uint64_t credential_refreshes;         /* temporary credentials renewed */
	uint64_t credential_refresh_failures;
};

void aws_get_stats(struct aws_stats *out);

/* ------------------------------------------------------------ exposed for unit tests */

/* "2024-01-02T03:04:05Z" (fractions and "+00:00" allowed) as UTC seconds; 0 when malformed. */
time_t aws_parse_time(const char *text);

/* The text of the first <tag>...</tag> in xml, entities decoded (malloc'd), or NULL. */
char *aws_xml_value(const char *xml, const char *tag);

/* scheme://host[:port][/path]: the host as a Host header wants it (with the port) and the path ("/" if none). */
int aws_url_split(const char *url, char *host, size_t host_len, char *path, size_t path_len);

#endif
