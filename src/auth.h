/*
 * auth.h: the server side of PostgreSQL's password exchanges, as pgmux plays
 * them with its clients: SCRAM-SHA-256 (RFC 5802 / RFC 7677, with optional
 * channel binding tls-server-end-point over TLS) and MD5. Pure computation:
 * no I/O, so the client state machine feeds it message payloads.
 */
#ifndef PGMUX_AUTH_H
#define PGMUX_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCRAM_KEY_LEN 32
#define SCRAM_SALT_LEN 16
#define SCRAM_DEFAULT_ITERATIONS 4096

/*
 * What the server keeps of a password for SCRAM-SHA-256 (RFC 5802's
 * verifier): the salt, the iteration count and the two keys derived from
 * them, never the password itself. secrets.c computes one per password.
 */
struct scram_verifier {
	uint8_t salt[SCRAM_SALT_LEN];
	int iterations;
	uint8_t stored_key[SCRAM_KEY_LEN];
	uint8_t server_key[SCRAM_KEY_LEN];
};

enum auth_result {
	AUTH_OK = 0,
	AUTH_FAILED = 1,         /* wrong password or unknown user: 28P01 */
	AUTH_PROTOCOL_ERROR = 2, /* malformed exchange: 08P01, err says what */
};

/* Compute SaltedPassword -> StoredKey, ServerKey (PBKDF2-HMAC-SHA-256). Returns 0 on success. */
int scram_compute_keys(const char *password, const uint8_t *salt, size_t salt_len, int iterations,
		       uint8_t stored_key[SCRAM_KEY_LEN], uint8_t server_key[SCRAM_KEY_LEN]);

struct scram_server;

/*
 * Start an exchange. verifier may be NULL (unknown user): the exchange then
 * runs to the end with made-up keys and fails, so that an unknown user looks
 * like a wrong password. cb_data is the tls-server-end-point hash of pgmux's
 * certificate when the client connection is TLS (NULL otherwise); when given,
 * SCRAM-SHA-256-PLUS is accepted.
 */
struct scram_server *scram_server_new(const struct scram_verifier *verifier, const uint8_t *cb_data,
				      size_t cb_len);
void scram_server_free(struct scram_server *s);

/*
 * Like scram_server_new(NULL, ...) for a user with no secret, but with the
 * user name from the startup packet: the made-up salt is derived from it, so
 * two unknown users get different salts, as two real users would. (With
 * scram_server_new(NULL, ...) the name in client-first is used instead, and
 * libpq leaves that empty.)
 */
struct scram_server *scram_server_new_unknown_user(const char *username, const uint8_t *cb_data,
						   size_t cb_len);

/*
 * The client's SASLInitialResponse: the mechanism name and the
 * client-first-message. On AUTH_OK, *server_first is a malloc'd
 * server-first-message to send in AuthenticationSASLContinue.
 */
enum auth_result scram_server_handle_first(struct scram_server *s, const char *mechanism,
					   const char *client_first, size_t len, char **server_first,
					   char *err, size_t errlen);

/*
 * The client's SASLResponse with the client-final-message. On AUTH_OK,
 * *server_final is a malloc'd server-final-message for AuthenticationSASLFinal.
 */
enum auth_result scram_server_handle_final(struct scram_server *s, const char *client_final,
					   size_t len, char **server_final, char *err, size_t errlen);

/*
 * The tls-server-end-point channel binding data for a certificate (RFC 5929:
 * its hash with the certificate's signature digest, SHA-256 for MD5/SHA-1).
 * cert is an X509 *; returns the length written to out (<= 64), or 0 on error.
 */
size_t scram_cert_binding(void *cert, uint8_t out[64]);

/* The mechanisms to advertise in AuthenticationSASL, as a NUL-separated list ending in an empty string. */
size_t scram_mechanisms(bool with_channel_binding, char *out, size_t outlen);

/*
 * MD5: the client answers "md5" + md5hex(md5hex(password + user) + salt).
 * Compares in constant time.
 */
bool md5_check_response(const char *user, const char *password, const uint8_t salt[4],
			const char *response);

/* Fill buf with cryptographically random bytes (OpenSSL RAND_bytes); aborts if it fails. */
void auth_random_bytes(void *buf, size_t len);

#endif
