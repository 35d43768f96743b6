/*
 * tls.c: client-facing TLS contexts (see tls.h). Loading happens at start-up
 * and on reload in the main thread; workers only take references.
 */
#include "tls.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/err.h>

#include "auth.h"

static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tls_context *tls_current;

static void tls_error(char *err, size_t errlen, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();

	snprintf(err, errlen, "%s %s: %s", what, file, e ? ERR_reason_error_string(e) : "unknown error");
	ERR_clear_error();
}

struct tls_context *tls_context_load(const char *cert_file, const char *key_file, char *err,
				     size_t errlen)
{
	struct tls_context *tc = calloc(1, sizeof(*tc));
	X509 *cert;

	if (tc == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	tc->refcount = 1;
	tc->ctx = SSL_CTX_new(TLS_server_method());
	if (tc->ctx == NULL) {
		tls_error(err, errlen, "cannot create TLS context for", cert_file);
		goto fail;
	}
	SSL_CTX_set_min_proto_version(tc->ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(tc->ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
					     SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_session_cache_mode(tc->ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(tc->ctx, 0);
	if (SSL_CTX_use_certificate_chain_file(tc->ctx, cert_file) != 1) {
		tls_error(err, errlen, "cannot load certificate", cert_file);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(tc->ctx, key_file, SSL_FILETYPE_PEM) != 1) {
		tls_error(err, errlen, "cannot load private key", key_file);
		goto fail;
	}
	if (SSL_CTX_check_private_key(tc->ctx) != 1) {
		tls_error(err, errlen, "private key does not match certificate", cert_file);
		goto fail;
	}
	cert = SSL_CTX_get0_certificate(tc->ctx);
	tc->binding_len = cert ? scram_cert_binding(cert, tc->binding) : 0;
	return tc;
fail:
	if (tc->ctx)
		SSL_CTX_free(tc->ctx);
	free(tc);
	return NULL;
}

void tls_context_ref(struct tls_context *ctx)
{
	__atomic_add_fetch(&ctx->refcount, 1, __ATOMIC_RELAXED);
}

void tls_context_unref(struct tls_context *ctx)
{
	if (ctx == NULL)
		return;
	if (__atomic_sub_fetch(&ctx->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
		SSL_CTX_free(ctx->ctx);
		free(ctx);
	}
}

void tls_set_current(struct tls_context *ctx)
{
	struct tls_context *old;

	pthread_mutex_lock(&tls_lock);
	old = tls_current;
	tls_current = ctx;
	pthread_mutex_unlock(&tls_lock);
	tls_context_unref(old);
}

struct tls_context *tls_get_current(void)
{
	struct tls_context *ctx;

	pthread_mutex_lock(&tls_lock);
	ctx = tls_current;
	if (ctx)
		tls_context_ref(ctx);
	pthread_mutex_unlock(&tls_lock);
	return ctx;
}
