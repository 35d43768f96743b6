/*
 * tls.c: client-facing TLS contexts (see tls.h). Loading happens at start-up
 * and on reload in the main thread; workers only take references.
 */
#include "tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>

#include "auth.h"
#include "config.h"

static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tls_context *tls_current;

static void tls_error(char *err, size_t errlen, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();

	snprintf(err, errlen, "%s %s: %s", what, file, e ? ERR_reason_error_string(e) : "unknown error");
	ERR_clear_error();
}

/*
 * PostgreSQL's rule for its own key file (be-secure-common.c): no access for
 * group or others, or, when root owns it, read access for its group at most
 * (a key shared through a group such as ssl-cert). Anything looser is
 * refused rather than warned about. (PostgreSQL also insists on the owner;
 * pgmux does not, so that one key file can serve a server run as another user.)
 */
static int check_key_file_mode(const char *key_file, char *err, size_t errlen)
{
	struct stat st;

	if (stat(key_file, &st) != 0) {
		snprintf(err, errlen, "cannot load private key %s: %s", key_file, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "private key %s is not a regular file", key_file);
		return -1;
	}
	/* Others may never read it; its group only when root owns it, and then read only. */
	if ((st.st_mode & S_IRWXO) != 0 || (st.st_uid != 0 && (st.st_mode & S_IRWXG) != 0) ||
	    (st.st_uid == 0 && (st.st_mode & (S_IWGRP | S_IXGRP)) != 0)) {
		snprintf(err, errlen,
			 "private key %s has group or world access (mode %04o); it must be u=rw (0600) or less, or "
			 "u=rw,g=r (0640) or less if owned by root",
			 key_file, (unsigned)(st.st_mode & 07777));
		return -1;
	}
	return 0;
}

static int tls_version_of_minor(int minor)
{
	return minor == 3 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

struct tls_context *tls_context_load(const struct config *cfg, char *err, size_t errlen)
{
	const char *cert_file = cfg->client_tls_cert_file;
	const char *key_file = cfg->client_tls_key_file;
	struct tls_context *tc = calloc(1, sizeof(*tc));
	int min_minor, max_minor;
	X509 *cert;

	if (tc == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (check_key_file_mode(key_file, err, errlen) != 0) {
		free(tc);
		return NULL;
	}
	if (config_tls_protocol_range(cfg->client_tls_protocols, &min_minor, &max_minor) != 0) {
		/* The loader checked it already; a broken invariant still fails closed. */
		snprintf(err, errlen, "client_tls_protocols: invalid value '%s'", cfg->client_tls_protocols);
		free(tc);
		return NULL;
	}
	tc->refcount = 1;
	tc->ctx = SSL_CTX_new(TLS_server_method());
	if (tc->ctx == NULL) {
		tls_error(err, errlen, "cannot create TLS context for", cert_file);
		goto fail;
	}
	if (SSL_CTX_set_min_proto_version(tc->ctx, tls_version_of_minor(min_minor)) != 1 ||
	    SSL_CTX_set_max_proto_version(tc->ctx, tls_version_of_minor(max_minor)) != 1) {
		tls_error(err, errlen, "cannot set client_tls_protocols", cfg->client_tls_protocols);
		goto fail;
	}
	/* Only TLS 1.2 and older use this list; OpenSSL keeps TLS 1.3's suites apart. */
	if (SSL_CTX_set_cipher_list(tc->ctx, cfg->client_tls_ciphers) != 1) {
		tls_error(err, errlen, "client_tls_ciphers: no usable cipher in", cfg->client_tls_ciphers);
		goto fail;
	}
	/* DHE suites need parameters; OpenSSL picks ones that match the key's strength. */
	SSL_CTX_set_dh_auto(tc->ctx, 1);
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
