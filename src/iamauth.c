/*
 * iamauth.c: RDS IAM tokens for server logins (see iamauth.h). The token
 * cache is shared by every thread that opens server connections (workers,
 * the monitor) under cache_lock; a token is copied out into the caller's
 * thread-local buffer, so no thread ever reads a cache entry another one
 * replaces.
 */
#include "iamauth.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "aws.h"
#include "config.h"
#include "log.h"
#include "sigv4.h"
#include "util.h"

/* A token is valid for 15 minutes; one is used for new logins while younger than this. */
#define TOKEN_REUSE_SECONDS (10 * 60)
#define CACHE_SIZE 64
/* Tokens with a long session token are about 1.5 kB; far more than any needs. */
#define TOKEN_MAX 8192
/* A failure is logged at most this often, not once per connection attempt. */
#define FAILURE_LOG_INTERVAL_SECONDS 10

struct cached_token {
	char *host;
	int port;
	char *user;
	char *access_key_id; /* a token made with other credentials is not used */
	char *token;
	time_t made_at;
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cached_token cache[CACHE_SIZE]; /* under cache_lock */
static time_t failure_logged_at;              /* under cache_lock */
static struct iamauth_stats stats;            /* atomic */
static __thread char token_buffer[TOKEN_MAX];

void iamauth_get_stats(struct iamauth_stats *out)
{
	out->tokens_made = __atomic_load_n(&stats.tokens_made, __ATOMIC_RELAXED);
	out->tokens_reused = __atomic_load_n(&stats.tokens_reused, __ATOMIC_RELAXED);
	out->failures = __atomic_load_n(&stats.failures, __ATOMIC_RELAXED);
}

static void entry_clear(struct cached_token *e)
{
	free(e->host);
	free(e->user);
	free(e->access_key_id);
	if (e->token) {
		OPENSSL_cleanse(e->token, strlen(e->token));
		free(e->token);
	}
	memset(e, 0, sizeof(*e));
}

/* Copy token to this thread's buffer; false when it does not fit. */
static bool to_buffer(const char *token)
{
	size_t n = strlen(token);

	if (n >= sizeof(token_buffer))
		return false;
	memcpy(token_buffer, token, n + 1);
	return true;
}

static const char *fail(const char *host, int port, const char *user, const char *why)
{
	time_t now = time(NULL);
	bool log_it;

	__atomic_add_fetch(&stats.failures, 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&cache_lock);
	log_it = now - failure_logged_at >= FAILURE_LOG_INTERVAL_SECONDS;
	if (log_it)
		failure_logged_at = now;
	pthread_mutex_unlock(&cache_lock);
	if (log_it)
		log_error("iam: no token for " LOG_NAME "@%s:%d: %s; the login goes without a password", user, host,
			  port, why);
	return NULL;
}

/* A cached token for these credentials that is young enough, copied to the buffer. */
static bool reuse(const char *host, int port, const char *user, const char *key_id, time_t now)
{
	bool found = false;

	pthread_mutex_lock(&cache_lock);
	for (int i = 0; i < CACHE_SIZE && !found; i++) {
		struct cached_token *e = &cache[i];

		if (e->token && e->port == port && strcmp(e->host, host) == 0 && strcmp(e->user, user) == 0 &&
		    strcmp(e->access_key_id, key_id) == 0 && now - e->made_at >= 0 &&
		    now - e->made_at < TOKEN_REUSE_SECONDS)
			found = to_buffer(e->token);
	}
	pthread_mutex_unlock(&cache_lock);
	return found;
}

/* Keep token for later logins, in place of the same key's entry or the oldest one. */
static void remember(const char *host, int port, const char *user, const char *key_id, const char *token, time_t now)
{
	struct cached_token *slot = &cache[0];

	pthread_mutex_lock(&cache_lock);
	for (int i = 0; i < CACHE_SIZE; i++) {
		struct cached_token *e = &cache[i];

		if (e->token == NULL || (e->port == port && strcmp(e->host, host) == 0 && strcmp(e->user, user) == 0)) {
			slot = e;
			break;
		}
		if (e->made_at < slot->made_at)
			slot = e;
	}
	entry_clear(slot);
	slot->host = xstrdup(host);
	slot->port = port;
	slot->user = xstrdup(user);
	slot->access_key_id = xstrdup(key_id);
	slot->token = xstrdup(token);
	slot->made_at = now;
	pthread_mutex_unlock(&cache_lock);
}

const char *iamauth_password(const struct config *cfg, const char *host, int port, const char *user,
			     const char *password)
{
	struct aws_credentials creds;
	time_t now = time(NULL);
	char *token;

	if (cfg->server_auth != SERVER_AUTH_IAM)
		return password;
	if (!aws_credentials_get(&creds))
		return fail(host, port, user, "no AWS credentials");
	if (reuse(host, port, user, creds.access_key_id, now)) {
		__atomic_add_fetch(&stats.tokens_reused, 1, __ATOMIC_RELAXED);
		aws_credentials_clear(&creds);
		return token_buffer;
	}

	struct sigv4_credentials keys = { creds.access_key_id, creds.secret_access_key, creds.session_token };

	token = aws_default_region() ? sigv4_rds_auth_token(&keys, host, port, user, aws_default_region(), now) : NULL;
	if (token == NULL || !to_buffer(token)) {
		if (token) {
			OPENSSL_cleanse(token, strlen(token));
			free(token);
		}
		aws_credentials_clear(&creds);
		return fail(host, port, user, aws_default_region() ? "the token could not be made" : "no region");
	}
	remember(host, port, user, creds.access_key_id, token, now);
	__atomic_add_fetch(&stats.tokens_made, 1, __ATOMIC_RELAXED);
	log_debug("iam: new token for " LOG_NAME "@%s:%d (access key %.24s)", user, host, port, creds.access_key_id);
	OPENSSL_cleanse(token, strlen(token));
	free(token);
	aws_credentials_clear(&creds);
	return token_buffer;
}
