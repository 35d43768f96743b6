/*
 * tls.h: the TLS context pgmux offers to its clients (certificate, key,
 * client_tls_protocols and client_tls_ciphers) and the channel-binding data
 * SCRAM-SHA-256-PLUS needs.
 * A context is reference counted: a reload installs a new one while
 * connections that started under the old one keep it until they close.
 */
#ifndef PGMUX_TLS_H
#define PGMUX_TLS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

struct tls_context {
	SSL_CTX *ctx;
	uint8_t binding[64]; /* tls-server-end-point hash of our certificate */
	size_t binding_len;
	int refcount;        /* atomic */
};

struct config;

/*
 * Build a server context from cfg's client_tls_* options; NULL with a reason
 * in err on failure, which includes a key file that group or others can read
 * and a cipher list OpenSSL cannot use.
 */
struct tls_context *tls_context_load(const struct config *cfg, char *err, size_t errlen);

/* Make ctx (may be NULL: TLS off) the one new client connections get; drops the old one. */
void tls_set_current(struct tls_context *ctx);

/* A reference to the current context, or NULL when client TLS is off. */
struct tls_context *tls_get_current(void);

void tls_context_ref(struct tls_context *ctx);
void tls_context_unref(struct tls_context *ctx);

#endif
