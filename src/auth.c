/*
 * auth.c: the server side of SCRAM-SHA-256 (RFC 5802, RFC 7677, with
 * PostgreSQL's SASL conventions and tls-server-end-point channel binding from
 * RFC 5929) and of MD5 password checks. Pure computation over message payloads
 * that the client state machine hands in; see auth.h for the contract.
 */
#include "auth.h"
#include "util.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#define SCRAM_MECHANISM "SCRAM-SHA-256"
#define SCRAM_MECHANISM_PLUS "SCRAM-SHA-256-PLUS"
#define SCRAM_CHANNEL_BINDING_NAME "tls-server-end-point"

/* RFC 7677 only says "at least 128 bits"; 18 bytes encode to 24 base64 characters with no padding. */
#define SCRAM_SERVER_NONCE_BYTES 18

/*
 * A real client-first or client-final message is well under a kilobyte. The
 * cap keeps a hostile client from making us copy megabytes per attempt.
 */
#define SCRAM_MESSAGE_MAX 16384

/* SCRAM-SHA-256 uses SHA-256 everywhere, so every key, signature and proof is this long. */
#define SCRAM_HASH_LEN SCRAM_KEY_LEN

enum scram_state {
	SCRAM_EXPECT_CLIENT_FIRST,
	SCRAM_EXPECT_CLIENT_FINAL,
	SCRAM_FINISHED, /* succeeded, failed or broke the protocol: nothing more is accepted */
};

struct scram_server {
	enum scram_state state;

	/*
	 * Unknown user: the exchange runs with made-up keys and must fail at the
	 * end. The salt is derived from the user name so that asking twice gives
	 * the same answer, like a real user's salt does.
	 */
	bool is_mock;
	char *mock_username; /* NULL: take the name from client-first */

	uint8_t salt[SCRAM_SALT_LEN];
	int iterations;
	uint8_t stored_key[SCRAM_KEY_LEN];
	uint8_t server_key[SCRAM_KEY_LEN];

	/* tls-server-end-point data of our certificate; NULL when the client is not on TLS. */
	uint8_t *channel_binding_data;
	size_t channel_binding_len;

	/* Kept from client-first for the checks and the AuthMessage of client-final. */
	char *gs2_header;        /* e.g. "n,," or "p=tls-server-end-point,," */
	bool uses_channel_binding;
	char *client_first_bare; /* client-first without the GS2 header */
	char *server_first;      /* exactly what we sent */
	char *combined_nonce;    /* client nonce followed by ours */

	char *server_nonce;      /* our part of the nonce: random, made with the state */
};

/* ------------------------------------------------------------ small helpers */

/* Free a string that may hold secret material, wiping it first. */
static void free_wiped_string(char *s)
{
	if (s == NULL)
		return;
	OPENSSL_cleanse(s, strlen(s));
	free(s);
}

void auth_random_bytes(void *buf, size_t len)
{
	if (len == 0)
		return;
	if (len > (size_t)INT32_MAX || RAND_bytes(buf, (int)len) != 1) {
		fprintf(stderr, "pgmux: the OpenSSL random generator failed\n");
		abort();
	}
}

/* ------------------------------------------------------------------ base64 */

static const char base64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t base64_encoded_length(size_t len)
{
	return (len + 2) / 3 * 4;
}

/* Standard base64 with padding; out must hold base64_encoded_length(len) + 1 bytes. */
static void base64_encode(const uint8_t *in, size_t len, char *out)
{
	size_t i, o = 0;

	for (i = 0; i + 2 < len; i += 3) {
		uint32_t group = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

		out[o++] = base64_alphabet[(group >> 18) & 63];
		out[o++] = base64_alphabet[(group >> 12) & 63];
		out[o++] = base64_alphabet[(group >> 6) & 63];
		out[o++] = base64_alphabet[group & 63];
	}
	if (len - i == 1) {
		uint32_t group = (uint32_t)in[i] << 16;

		out[o++] = base64_alphabet[(group >> 18) & 63];
		out[o++] = base64_alphabet[(group >> 12) & 63];
		out[o++] = '=';
		out[o++] = '=';
	} else if (len - i == 2) {
		uint32_t group = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;

		out[o++] = base64_alphabet[(group >> 18) & 63];
		out[o++] = base64_alphabet[(group >> 12) & 63];
		out[o++] = base64_alphabet[(group >> 6) & 63];
		out[o++] = '=';
	}
	out[o] = '\0';
}

static char *base64_encode_alloc(const uint8_t *in, size_t len)
{
	char *out = xmalloc(base64_encoded_length(len) + 1);

	base64_encode(in, len, out);
	return out;
}

static int base64_digit_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/*
 * Strict decoding: whole groups of four, padding only at the very end, no
 * whitespace, and unused bits of the last group must be zero, so that every
 * byte string has exactly one accepted encoding. Returns the decoded length,
 * or -1 when the text is not valid base64 or does not fit in outcap bytes.
 */
static long base64_decode(const char *in, size_t len, uint8_t *out, size_t outcap)
{
	size_t i, o = 0;

	if (len % 4 != 0)
		return -1;
	for (i = 0; i < len; i += 4) {
		bool last_group = i + 4 == len;
		int padding = 0;
		int values[4];
		uint32_t group;

		for (int k = 0; k < 4; k++) {
			char c = in[i + (size_t)k];

			if (c == '=' && last_group && k >= 2) {
				values[k] = 0;
				padding++;
				continue;
			}
			/* Padding in the middle of a group, or data after padding. */
			if (padding > 0)
				return -1;
			values[k] = base64_digit_value(c);
			if (values[k] < 0)
				return -1;
		}
		group = (uint32_t)values[0] << 18 | (uint32_t)values[1] << 12 |
			(uint32_t)values[2] << 6 | (uint32_t)values[3];
		if (padding == 2 && (group & 0xFFFF) != 0)
			return -1;
		if (padding == 1 && (group & 0xFF) != 0)
			return -1;
		if (o + 3 - (size_t)padding > outcap)
			return -1;
		out[o++] = (uint8_t)(group >> 16);
		if (padding < 2)
			out[o++] = (uint8_t)(group >> 8);
		if (padding < 1)
			out[o++] = (uint8_t)group;
	}
	return (long)o;
}

/* ------------------------------------------------------------ SCRAM crypto */

static int hmac_sha256(const uint8_t *key, size_t key_len, const void *data, size_t data_len,
		       uint8_t out[SCRAM_HASH_LEN])
{
	unsigned int out_len = 0;

	if (key_len > (size_t)INT32_MAX)
		return -1;
	if (HMAC(EVP_sha256(), key, (int)key_len, data, data_len, out, &out_len) == NULL ||
	    out_len != SCRAM_HASH_LEN)
		return -1;
	return 0;
}

static int sha256(const void *data, size_t len, uint8_t out[SCRAM_HASH_LEN])
{
	unsigned int out_len = 0;

	if (EVP_Digest(data, len, out, &out_len, EVP_sha256(), NULL) != 1 ||
	    out_len != SCRAM_HASH_LEN)
		return -1;
	return 0;
}

int scram_compute_keys(const char *password, const uint8_t *salt, size_t salt_len, int iterations,
		       uint8_t stored_key[SCRAM_KEY_LEN], uint8_t server_key[SCRAM_KEY_LEN])
{
	uint8_t salted_password[SCRAM_HASH_LEN];
	uint8_t client_key[SCRAM_HASH_LEN];
	size_t password_len;
	int rc = -1;

	if (password == NULL || salt == NULL || iterations < 1 || salt_len > (size_t)INT32_MAX)
		return -1;
	password_len = strlen(password);
	if (password_len > (size_t)INT32_MAX)
		return -1;
	/*
	 * SaltedPassword := Hi(password, salt, i), which is PBKDF2 with
	 * HMAC-SHA-256 and an output as long as one hash.
	 */
	if (PKCS5_PBKDF2_HMAC(password, (int)password_len, salt, (int)salt_len, iterations,
			      EVP_sha256(), SCRAM_HASH_LEN, salted_password) != 1)
		goto out;
	if (hmac_sha256(salted_password, sizeof(salted_password), "Client Key", 10, client_key) != 0)
		goto out;
	if (sha256(client_key, sizeof(client_key), stored_key) != 0)
		goto out;
	if (hmac_sha256(salted_password, sizeof(salted_password), "Server Key", 10, server_key) != 0)
		goto out;
	rc = 0;
out:
	OPENSSL_cleanse(salted_password, sizeof(salted_password));
	OPENSSL_cleanse(client_key, sizeof(client_key));
	return rc;
}

/*
 * A random key, made once per process, behind the salts of unknown users.
 * It must stay secret: knowing it would let anyone tell made-up salts from
 * real ones.
 */
static uint8_t mock_process_key[SCRAM_KEY_LEN];
static pthread_once_t mock_process_key_once = PTHREAD_ONCE_INIT;

static void mock_process_key_init(void)
{
	auth_random_bytes(mock_process_key, sizeof(mock_process_key));
}

static void mock_fill_verifier(struct scram_server *s, const char *username)
{
	uint8_t digest[SCRAM_HASH_LEN];

	pthread_once(&mock_process_key_once, mock_process_key_init);
	if (hmac_sha256(mock_process_key, sizeof(mock_process_key), username, strlen(username),
			digest) != 0)
		auth_random_bytes(digest, sizeof(digest));
	memcpy(s->salt, digest, SCRAM_SALT_LEN);
	OPENSSL_cleanse(digest, sizeof(digest));
	/* Keys nobody knows the password for: the proof can never match, and is not checked anyway. */
	auth_random_bytes(s->stored_key, sizeof(s->stored_key));
	auth_random_bytes(s->server_key, sizeof(s->server_key));
	s->iterations = SCRAM_DEFAULT_ITERATIONS;
}

/* --------------------------------------------------------- message parsing */

/*
 * A position in a SCRAM message. Messages are sequences of "x=value"
 * attributes separated by commas; the text is NUL-terminated (embedded NULs
 * are refused before parsing) so end is also where the NUL sits.
 */
struct scram_cursor {
	const char *position;
	const char *end;
};

static bool is_attribute_name(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/*
 * Read one "x=value" attribute, stopping before the next comma or at the
 * end. Returns false when the text here is not an attribute.
 */
static bool cursor_read_attribute(struct scram_cursor *cursor, char *name, const char **value,
				  size_t *value_len)
{
	const char *p = cursor->position;
	const char *comma;

	if (cursor->end - p < 2 || !is_attribute_name(p[0]) || p[1] != '=')
		return false;
	*name = p[0];
	*value = p + 2;
	comma = memchr(*value, ',', (size_t)(cursor->end - *value));
	*value_len = (size_t)((comma != NULL ? comma : cursor->end) - *value);
	cursor->position = *value + *value_len;
	return true;
}

/* Consume a comma; false when the next character is something else or the text ended. */
static bool cursor_skip_comma(struct scram_cursor *cursor)
{
	if (cursor->position >= cursor->end || *cursor->position != ',')
		return false;
	cursor->position++;
	return true;
}

static bool cursor_at_end(const struct scram_cursor *cursor)
{
	return cursor->position >= cursor->end;
}

/* Read an attribute that must carry a given name. */
static bool cursor_expect_attribute(struct scram_cursor *cursor, char expected, const char **value,
				    size_t *value_len)
{
	char name;
	struct scram_cursor saved = *cursor;

	if (!cursor_read_attribute(cursor, &name, value, value_len) || name != expected) {
		*cursor = saved;
		return false;
	}
	return true;
}

/* RFC 5802 "printable": any visible ASCII character except the comma. */
static bool nonce_is_printable(const char *nonce, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)nonce[i];

		if (c < 0x21 || c > 0x7E || c == ',')
			return false;
	}
	return true;
}

/*
 * Check length and embedded NULs, and return a NUL-terminated copy that the
 * cursor can walk safely, or NULL with err set.
 */
static char *copy_message(const char *message, size_t len, const char *what, char *err,
			  size_t errlen)
{
	if (message == NULL) {
		error_printf(err, errlen, "malformed SCRAM exchange: missing %s", what);
		return NULL;
	}
	if (len > SCRAM_MESSAGE_MAX) {
		error_printf(err, errlen, "malformed SCRAM exchange: %s is too long (%zu bytes)", what,
			  len);
		return NULL;
	}
	if (memchr(message, '\0', len) != NULL) {
		error_printf(err, errlen, "malformed SCRAM exchange: %s contains a NUL byte", what);
		return NULL;
	}
	return xstrndup(message, len);
}

/* ---------------------------------------------------------- the exchange */

struct scram_server *scram_server_new(const struct scram_verifier *verifier, const uint8_t *cb_data,
				      size_t cb_len)
{
	struct scram_server *s = xmalloc(sizeof(*s));
	uint8_t random_nonce[SCRAM_SERVER_NONCE_BYTES];

	memset(s, 0, sizeof(*s));
	s->state = SCRAM_EXPECT_CLIENT_FIRST;
	auth_random_bytes(random_nonce, sizeof(random_nonce));
	s->server_nonce = base64_encode_alloc(random_nonce, sizeof(random_nonce));
	if (verifier != NULL) {
		memcpy(s->salt, verifier->salt, sizeof(s->salt));
		memcpy(s->stored_key, verifier->stored_key, sizeof(s->stored_key));
		memcpy(s->server_key, verifier->server_key, sizeof(s->server_key));
		s->iterations = verifier->iterations > 0 ? verifier->iterations : SCRAM_DEFAULT_ITERATIONS;
	} else {
		/* The made-up verifier is filled in once the user name is known. */
		s->is_mock = true;
	}
	if (cb_data != NULL && cb_len > 0) {
		s->channel_binding_data = xmalloc(cb_len);
		memcpy(s->channel_binding_data, cb_data, cb_len);
		s->channel_binding_len = cb_len;
	}
	return s;
}

struct scram_server *scram_server_new_unknown_user(const char *username, const uint8_t *cb_data,
						   size_t cb_len)
{
	struct scram_server *s = scram_server_new(NULL, cb_data, cb_len);

	s->mock_username = xstrndup(username != NULL ? username : "", username != NULL ? strlen(username) : 0);
	return s;
}

void scram_server_free(struct scram_server *s)
{
	if (s == NULL)
		return;
	OPENSSL_cleanse(s->stored_key, sizeof(s->stored_key));
	OPENSSL_cleanse(s->server_key, sizeof(s->server_key));
	OPENSSL_cleanse(s->salt, sizeof(s->salt));
	free(s->channel_binding_data);
	free(s->mock_username);
	free(s->gs2_header);
	free(s->client_first_bare);
	free(s->server_first);
	free(s->combined_nonce);
	free(s->server_nonce);
	free(s);
}

/*
 * Parse the GS2 header ("n,,", "y,," or "p=cb-name,,") at the start of
 * client-first and check it against the mechanism the client chose and what
 * we advertised. On success the cursor sits on client-first-message-bare.
 */
static enum auth_result parse_gs2_header(struct scram_server *s, bool chose_plus,
					 struct scram_cursor *cursor, char *err, size_t errlen)
{
	const char *start = cursor->position;
	char flag;

	if (cursor_at_end(cursor)) {
		error_printf(err, errlen, "malformed SCRAM client-first-message: empty message");
		return AUTH_PROTOCOL_ERROR;
	}
	flag = *cursor->position;
	if (flag == 'n' || flag == 'y') {
		cursor->position++;
		if (chose_plus) {
			error_printf(err, errlen,
				  "SCRAM channel binding negotiation error: the client selected "
				  SCRAM_MECHANISM_PLUS " but sent no channel binding data");
			return AUTH_PROTOCOL_ERROR;
		}
		/*
		 * "y" means the client could bind but believes we cannot. We
		 * advertised PLUS whenever we have binding data, so a "y" then
		 * means someone stripped PLUS from our list: a downgrade.
		 */
		if (flag == 'y' && s->channel_binding_data != NULL) {
			error_printf(err, errlen,
				  "SCRAM channel binding negotiation error: the client supports "
				  "channel binding but thinks the server does not, yet this server "
				  "offered it");
			return AUTH_PROTOCOL_ERROR;
		}
		s->uses_channel_binding = false;
	} else if (flag == 'p') {
		const char *name;
		size_t name_len;
		char attribute;

		if (!cursor_read_attribute(cursor, &attribute, &name, &name_len)) {
			error_printf(err, errlen,
				  "malformed SCRAM client-first-message: bad channel binding flag");
			return AUTH_PROTOCOL_ERROR;
		}
		if (!chose_plus) {
			error_printf(err, errlen,
				  "SCRAM channel binding negotiation error: the client selected "
				  SCRAM_MECHANISM " but sent channel binding data");
			return AUTH_PROTOCOL_ERROR;
		}
		if (name_len != strlen(SCRAM_CHANNEL_BINDING_NAME) ||
		    memcmp(name, SCRAM_CHANNEL_BINDING_NAME, name_len) != 0) {
			error_printf(err, errlen,
				  "unsupported SCRAM channel binding type (only "
				  SCRAM_CHANNEL_BINDING_NAME " is supported)");
			return AUTH_PROTOCOL_ERROR;
		}
		s->uses_channel_binding = true;
	} else {
		error_printf(err, errlen,
			  "malformed SCRAM client-first-message: unexpected channel binding flag");
		return AUTH_PROTOCOL_ERROR;
	}
	if (!cursor_skip_comma(cursor)) {
		error_printf(err, errlen,
			  "malformed SCRAM client-first-message: comma expected after the "
			  "channel binding flag");
		return AUTH_PROTOCOL_ERROR;
	}
	/* PostgreSQL takes the user from the startup packet; an authorization identity means nothing here. */
	if (!cursor_at_end(cursor) && *cursor->position == 'a') {
		error_printf(err, errlen,
			  "SCRAM authorization identity (a=) is not supported");
		return AUTH_PROTOCOL_ERROR;
	}
	if (!cursor_skip_comma(cursor)) {
		error_printf(err, errlen,
			  "malformed SCRAM client-first-message: comma expected after the "
			  "GS2 header");
		return AUTH_PROTOCOL_ERROR;
	}
	s->gs2_header = xstrndup(start, (size_t)(cursor->position - start));
	return AUTH_OK;
}

/* Skip the optional extensions at the end of a message ("," attribute, repeated). */
static bool skip_extensions(struct scram_cursor *cursor)
{
	while (!cursor_at_end(cursor)) {
		char name;
		const char *value;
		size_t value_len;

		/* RFC 5802 gives an extension a value of at least one character. */
		if (!cursor_skip_comma(cursor) ||
		    !cursor_read_attribute(cursor, &name, &value, &value_len) || value_len == 0)
			return false;
	}
	return true;
}

static enum auth_result answer_client_first(struct scram_server *s, const char *mechanism,
						     const char *client_first, size_t len,
						     char **server_first, char *err, size_t errlen)
{
	struct scram_cursor cursor;
	const char *username, *client_nonce;
	size_t username_len, client_nonce_len;
	bool chose_plus;
	char *message, *salt_text;
	enum auth_result rc = AUTH_PROTOCOL_ERROR;
	int needed;

	if (mechanism == NULL) {
		error_printf(err, errlen, "malformed SCRAM exchange: no SASL mechanism given");
		return AUTH_PROTOCOL_ERROR;
	}
	if (strcmp(mechanism, SCRAM_MECHANISM_PLUS) == 0) {
		if (s->channel_binding_data == NULL) {
			error_printf(err, errlen,
				  "the client selected " SCRAM_MECHANISM_PLUS
				  ", which was not offered (channel binding needs TLS)");
			return AUTH_PROTOCOL_ERROR;
		}
		chose_plus = true;
	} else if (strcmp(mechanism, SCRAM_MECHANISM) == 0) {
		chose_plus = false;
	} else {
		error_printf(err, errlen, "the client selected an unsupported SASL mechanism");
		return AUTH_PROTOCOL_ERROR;
	}

	message = copy_message(client_first, len, "client-first-message", err, errlen);
	if (message == NULL)
		return AUTH_PROTOCOL_ERROR;
	cursor.position = message;
	cursor.end = message + len;

	if (parse_gs2_header(s, chose_plus, &cursor, err, errlen) != AUTH_OK)
		goto out;
	s->client_first_bare = xstrndup(cursor.position, (size_t)(cursor.end - cursor.position));

	if (cursor.end - cursor.position >= 2 && cursor.position[0] == 'm' && cursor.position[1] == '=') {
		error_printf(err, errlen, "unsupported SCRAM mandatory extension (m=)");
		goto out;
	}
	/* PostgreSQL ignores this name (the startup packet's user counts) and libpq sends it empty. */
	if (!cursor_expect_attribute(&cursor, 'n', &username, &username_len)) {
		error_printf(err, errlen, "malformed SCRAM client-first-message: user name (n=) expected");
		goto out;
	}
	if (!cursor_skip_comma(&cursor) ||
	    !cursor_expect_attribute(&cursor, 'r', &client_nonce, &client_nonce_len)) {
		error_printf(err, errlen, "malformed SCRAM client-first-message: nonce (r=) expected");
		goto out;
	}
	if (!nonce_is_printable(client_nonce, client_nonce_len)) {
		error_printf(err, errlen,
			  "malformed SCRAM client-first-message: the nonce is empty or has "
			  "characters outside printable ASCII");
		goto out;
	}
	if (!skip_extensions(&cursor)) {
		error_printf(err, errlen,
			  "malformed SCRAM client-first-message: garbage after the nonce");
		goto out;
	}

	if (s->is_mock) {
		if (s->mock_username != NULL) {
			mock_fill_verifier(s, s->mock_username);
		} else {
			char *name = xstrndup(username, username_len);

			mock_fill_verifier(s, name);
			free(name);
		}
	}

	needed = snprintf(NULL, 0, "%.*s%s", (int)client_nonce_len, client_nonce, s->server_nonce);
	s->combined_nonce = xmalloc((size_t)needed + 1);
	snprintf(s->combined_nonce, (size_t)needed + 1, "%.*s%s", (int)client_nonce_len,
		 client_nonce, s->server_nonce);

	salt_text = base64_encode_alloc(s->salt, sizeof(s->salt));
	needed = snprintf(NULL, 0, "r=%s,s=%s,i=%d", s->combined_nonce, salt_text, s->iterations);
	s->server_first = xmalloc((size_t)needed + 1);
	snprintf(s->server_first, (size_t)needed + 1, "r=%s,s=%s,i=%d", s->combined_nonce,
		 salt_text, s->iterations);
	free(salt_text);

	*server_first = xstrndup(s->server_first, (size_t)needed);
	rc = AUTH_OK;
out:
	free(message);
	return rc;
}

enum auth_result scram_server_handle_first(struct scram_server *s, const char *mechanism,
					   const char *client_first, size_t len, char **server_first,
					   char *err, size_t errlen)
{
	enum auth_result rc;

	if (server_first != NULL)
		*server_first = NULL;
	if (s == NULL || server_first == NULL) {
		error_printf(err, errlen, "SCRAM exchange used without a state");
		return AUTH_PROTOCOL_ERROR;
	}
	if (s->state != SCRAM_EXPECT_CLIENT_FIRST) {
		s->state = SCRAM_FINISHED;
		error_printf(err, errlen, "SCRAM exchange out of order: client-first-message not expected");
		return AUTH_PROTOCOL_ERROR;
	}
	rc = answer_client_first(s, mechanism, client_first, len, server_first, err, errlen);
	s->state = rc == AUTH_OK ? SCRAM_EXPECT_CLIENT_FINAL : SCRAM_FINISHED;
	return rc;
}

/*
 * Check the c= attribute of client-final: it must be base64 of the GS2
 * header we received, followed by our certificate hash when the client
 * asked for channel binding.
 */
static bool channel_binding_matches(const struct scram_server *s, const char *value,
				    size_t value_len)
{
	size_t header_len = strlen(s->gs2_header);
	size_t expected_len = header_len + (s->uses_channel_binding ? s->channel_binding_len : 0);
	uint8_t *expected = xmalloc(expected_len);
	uint8_t *decoded = xmalloc(value_len / 4 * 3 + 1);
	long decoded_len;
	bool matches;

	memcpy(expected, s->gs2_header, header_len);
	if (s->uses_channel_binding)
		memcpy(expected + header_len, s->channel_binding_data, s->channel_binding_len);
	decoded_len = base64_decode(value, value_len, decoded, value_len / 4 * 3 + 1);
	matches = decoded_len >= 0 && (size_t)decoded_len == expected_len &&
		  CRYPTO_memcmp(decoded, expected, expected_len) == 0;
	free(expected);
	free(decoded);
	return matches;
}

static enum auth_result verify_final(struct scram_server *s, const char *client_final, size_t len,
				     char **server_final, char *err, size_t errlen)
{
	struct scram_cursor cursor;
	const char *binding, *nonce, *proof_text = NULL, *proof_attribute = NULL;
	size_t binding_len, nonce_len, proof_text_len = 0;
	uint8_t proof[SCRAM_HASH_LEN], client_signature[SCRAM_HASH_LEN];
	uint8_t client_key[SCRAM_HASH_LEN], computed_stored_key[SCRAM_HASH_LEN];
	uint8_t server_signature[SCRAM_HASH_LEN];
	uint8_t proof_buffer[SCRAM_HASH_LEN + 3];
	char *message, *auth_message = NULL, *signature_text;
	size_t auth_message_len;
	long proof_len;
	enum auth_result rc = AUTH_PROTOCOL_ERROR;

	message = copy_message(client_final, len, "client-final-message", err, errlen);
	if (message == NULL)
		return AUTH_PROTOCOL_ERROR;
	cursor.position = message;
	cursor.end = message + len;

	if (!cursor_expect_attribute(&cursor, 'c', &binding, &binding_len)) {
		error_printf(err, errlen,
			  "malformed SCRAM client-final-message: channel binding (c=) expected");
		goto out;
	}
	if (!cursor_skip_comma(&cursor) ||
	    !cursor_expect_attribute(&cursor, 'r', &nonce, &nonce_len)) {
		error_printf(err, errlen, "malformed SCRAM client-final-message: nonce (r=) expected");
		goto out;
	}
	/* Extensions may follow; the proof must be the last attribute. */
	while (!cursor_at_end(&cursor)) {
		const char *attribute_start = cursor.position;
		const char *value;
		size_t value_len;
		char name;

		if (!cursor_skip_comma(&cursor) ||
		    !cursor_read_attribute(&cursor, &name, &value, &value_len) || value_len == 0) {
			error_printf(err, errlen,
				  "malformed SCRAM client-final-message: attribute expected");
			goto out;
		}
		if (name == 'p') {
			if (!cursor_at_end(&cursor)) {
				error_printf(err, errlen,
					  "malformed SCRAM client-final-message: garbage after "
					  "the proof");
				goto out;
			}
			proof_attribute = attribute_start;
			proof_text = value;
			proof_text_len = value_len;
		}
	}
	if (proof_text == NULL) {
		error_printf(err, errlen, "malformed SCRAM client-final-message: proof (p=) expected");
		goto out;
	}
	if (!channel_binding_matches(s, binding, binding_len)) {
		error_printf(err, errlen,
			  "SCRAM channel binding check failed: c= does not match what was "
			  "negotiated");
		goto out;
	}
	if (nonce_len != strlen(s->combined_nonce) ||
	    memcmp(nonce, s->combined_nonce, nonce_len) != 0) {
		error_printf(err, errlen,
			  "malformed SCRAM client-final-message: the nonce does not match");
		goto out;
	}
	proof_len = base64_decode(proof_text, proof_text_len, proof_buffer, sizeof(proof_buffer));
	if (proof_len != SCRAM_HASH_LEN) {
		error_printf(err, errlen,
			  "malformed SCRAM client-final-message: the proof is not base64 of "
			  "%d bytes", SCRAM_HASH_LEN);
		goto out;
	}
	memcpy(proof, proof_buffer, sizeof(proof));

	/*
	 * AuthMessage := client-first-message-bare + "," + server-first-message
	 *                + "," + client-final-message-without-proof
	 */
	{
		size_t bare_len = strlen(s->client_first_bare);
		size_t server_first_len = strlen(s->server_first);
		size_t without_proof_len = (size_t)(proof_attribute - message);

		auth_message_len = bare_len + 1 + server_first_len + 1 + without_proof_len;
		auth_message = xmalloc(auth_message_len);
		memcpy(auth_message, s->client_first_bare, bare_len);
		auth_message[bare_len] = ',';
		memcpy(auth_message + bare_len + 1, s->server_first, server_first_len);
		auth_message[bare_len + 1 + server_first_len] = ',';
		memcpy(auth_message + bare_len + 1 + server_first_len + 1, message,
		       without_proof_len);
	}

	if (s->is_mock) {
		/* Everything was well formed; the answer is the same as for a wrong password. */
		error_printf(err, errlen, "SCRAM authentication failed: wrong password or unknown user");
		rc = AUTH_FAILED;
		goto out;
	}

	/* ClientKey := ClientProof XOR HMAC(StoredKey, AuthMessage); it must hash to StoredKey. */
	if (hmac_sha256(s->stored_key, sizeof(s->stored_key), auth_message, auth_message_len,
			client_signature) != 0) {
		error_printf(err, errlen, "SCRAM computation failed inside OpenSSL");
		goto out;
	}
	for (size_t i = 0; i < SCRAM_HASH_LEN; i++)
		client_key[i] = proof[i] ^ client_signature[i];
	if (sha256(client_key, sizeof(client_key), computed_stored_key) != 0) {
		error_printf(err, errlen, "SCRAM computation failed inside OpenSSL");
		goto out;
	}
	if (CRYPTO_memcmp(computed_stored_key, s->stored_key, SCRAM_HASH_LEN) != 0) {
		error_printf(err, errlen, "SCRAM authentication failed: wrong password or unknown user");
		rc = AUTH_FAILED;
		goto out;
	}

	/* ServerSignature := HMAC(ServerKey, AuthMessage), proving we knew the verifier too. */
	if (hmac_sha256(s->server_key, sizeof(s->server_key), auth_message, auth_message_len,
			server_signature) != 0) {
		error_printf(err, errlen, "SCRAM computation failed inside OpenSSL");
		goto out;
	}
	signature_text = base64_encode_alloc(server_signature, sizeof(server_signature));
	*server_final = xmalloc(2 + strlen(signature_text) + 1);
	memcpy(*server_final, "v=", 2);
	memcpy(*server_final + 2, signature_text, strlen(signature_text) + 1);
	free(signature_text);
	rc = AUTH_OK;
out:
	OPENSSL_cleanse(proof, sizeof(proof));
	OPENSSL_cleanse(proof_buffer, sizeof(proof_buffer));
	OPENSSL_cleanse(client_signature, sizeof(client_signature));
	OPENSSL_cleanse(client_key, sizeof(client_key));
	OPENSSL_cleanse(computed_stored_key, sizeof(computed_stored_key));
	OPENSSL_cleanse(server_signature, sizeof(server_signature));
	free(auth_message);
	free_wiped_string(message);
	return rc;
}

enum auth_result scram_server_handle_final(struct scram_server *s, const char *client_final,
					   size_t len, char **server_final, char *err, size_t errlen)
{
	enum auth_result rc;

	if (server_final != NULL)
		*server_final = NULL;
	if (s == NULL || server_final == NULL) {
		error_printf(err, errlen, "SCRAM exchange used without a state");
		return AUTH_PROTOCOL_ERROR;
	}
	if (s->state != SCRAM_EXPECT_CLIENT_FINAL) {
		s->state = SCRAM_FINISHED;
		error_printf(err, errlen, "SCRAM exchange out of order: client-final-message not expected");
		return AUTH_PROTOCOL_ERROR;
	}
	rc = verify_final(s, client_final, len, server_final, err, errlen);
	/* One attempt per exchange: whatever happened, the state is spent. */
	s->state = SCRAM_FINISHED;
	return rc;
}

/* ------------------------------------------------------- channel binding */

size_t scram_cert_binding(void *cert, uint8_t out[64])
{
	X509 *certificate = cert;
	int digest_nid = NID_undef;
	const EVP_MD *digest;
	unsigned int out_len = 0;

	if (certificate == NULL)
		return 0;
	/*
	 * RFC 5929 section 4.1: hash the certificate with the hash of its
	 * signature algorithm, except that MD5 and SHA-1 become SHA-256.
	 * X509_get_signature_info also understands RSA-PSS parameters;
	 * OBJ_find_sigid_algs is the fallback for what it does not cover.
	 */
	if (X509_get_signature_info(certificate, &digest_nid, NULL, NULL, NULL) != 1 ||
	    digest_nid == NID_undef) {
		if (OBJ_find_sigid_algs(X509_get_signature_nid(certificate), &digest_nid, NULL) != 1)
			return 0;
	}
	if (digest_nid == NID_md5 || digest_nid == NID_sha1)
		digest_nid = NID_sha256;
	/* Signature algorithms with no separate hash (Ed25519, say) have no defined binding. */
	if (digest_nid == NID_undef)
		return 0;
	digest = EVP_get_digestbynid(digest_nid);
	if (digest == NULL || EVP_MD_get_size(digest) <= 0 || EVP_MD_get_size(digest) > 64)
		return 0;
	if (X509_digest(certificate, digest, out, &out_len) != 1)
		return 0;
	return out_len;
}

size_t scram_mechanisms(bool with_channel_binding, char *out, size_t outlen)
{
	size_t total = 0, used = 0;
	const char *names[2];
	size_t count = 0;

	if (with_channel_binding)
		names[count++] = SCRAM_MECHANISM_PLUS;
	names[count++] = SCRAM_MECHANISM;
	for (size_t i = 0; i < count; i++)
		total += strlen(names[i]) + 1;
	total += 1; /* the empty name that ends the list */
	if (out == NULL || outlen < total)
		return 0;
	for (size_t i = 0; i < count; i++) {
		size_t name_len = strlen(names[i]) + 1;

		memcpy(out + used, names[i], name_len);
		used += name_len;
	}
	out[used++] = '\0';
	return used;
}

/* -------------------------------------------------------------------- MD5 */

/* The lowercase hex MD5 of data; out receives 32 characters and a NUL. */
static bool md5_hex(const void *data, size_t len, char out[33])
{
	static const char hex_digits[] = "0123456789abcdef";
	uint8_t digest[16];
	unsigned int digest_len = 0;

	/* MD5 is missing from FIPS-only OpenSSL builds: then nothing matches. */
	if (EVP_Digest(data, len, digest, &digest_len, EVP_md5(), NULL) != 1 || digest_len != 16)
		return false;
	for (size_t i = 0; i < 16; i++) {
		out[2 * i] = hex_digits[digest[i] >> 4];
		out[2 * i + 1] = hex_digits[digest[i] & 15];
	}
	out[32] = '\0';
	OPENSSL_cleanse(digest, sizeof(digest));
	return true;
}

bool md5_check_response(const char *user, const char *password, const uint8_t salt[4],
			const char *response)
{
	char inner_hex[33], expected[3 + 33];
	uint8_t outer_input[32 + 4];
	char *password_and_user;
	size_t password_len, user_len;
	bool ok = false;

	if (user == NULL || password == NULL || salt == NULL || response == NULL)
		return false;
	password_len = strlen(password);
	user_len = strlen(user);
	password_and_user = xmalloc(password_len + user_len + 1);
	memcpy(password_and_user, password, password_len);
	memcpy(password_and_user + password_len, user, user_len + 1);

	/* What PostgreSQL stores as an MD5 password is md5hex(password + user); the wire adds the salt. */
	if (!md5_hex(password_and_user, password_len + user_len, inner_hex))
		goto out;
	memcpy(outer_input, inner_hex, 32);
	memcpy(outer_input + 32, salt, 4);
	memcpy(expected, "md5", 3);
	if (!md5_hex(outer_input, sizeof(outer_input), expected + 3))
		goto out;
	/* strnlen: a long response is wrong anyway and need not be scanned to its end. */
	ok = strnlen(response, 36) == 35 && CRYPTO_memcmp(response, expected, 35) == 0;
out:
	OPENSSL_cleanse(password_and_user, password_len + user_len);
	free(password_and_user);
	OPENSSL_cleanse(inner_hex, sizeof(inner_hex));
	OPENSSL_cleanse(outer_input, sizeof(outer_input));
	OPENSSL_cleanse(expected, sizeof(expected));
	return ok;
}
