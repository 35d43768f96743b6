/*
 * fuzz_scram.c: libFuzzer harness for the server side of SCRAM-SHA-256(-PLUS)
 * and the MD5 check (auth.c): the SASLInitialResponse and SASLResponse
 * payloads a client sends before it has proved anything.
 *
 * Input layout: one flags byte, a big-endian uint16 n, n bytes of
 * client-first-message, then the client-final-message. Flags:
 *   bits 0-1  mechanism: SCRAM-SHA-256, SCRAM-SHA-256-PLUS, "", SCRAM-SHA-1
 *   bit 2     the connection is TLS, so -PLUS with a certificate hash is offered
 *   bit 3     the user has no secret (the made-up exchange for unknown users)
 *   bit 4     sign: the harness appends ",p=<proof>" computed from the right
 *             password, so that the fuzzer reaches the paths after a valid
 *             proof; without it a successful login would be a forged proof
 *   bit 5     also run the client-final bytes through md5_check_response()
 * The server nonce is fixed, so corpus entries replay the same exchange:
 * auth.c is compiled into this harness, which sets the nonce an exchange
 * drew at random (struct scram_server is auth.c's own).
 */
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.c"
#include "fuzz.h"
#include "secrets.h"

#define PASSWORD "pencil"
#define SERVER_NONCE "fuzzservernonce0123456789"

static struct secret secret;
static uint8_t client_key[32];
static const uint8_t cert_hash[32] = { 0xfe, 0xed, 0xfa, 0xce, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
				       13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28 };

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	uint8_t salted[32];
	unsigned int n = 0;

	(void)argc;
	(void)argv;
	memset(&secret, 0, sizeof(secret));
	secret.username = strdup("app");
	secret.password = strdup(PASSWORD);
	memcpy(secret.scram.salt, "fuzzsalt16bytes!", SCRAM_SALT_LEN);
	secret.scram.iterations = SCRAM_DEFAULT_ITERATIONS;
	FUZZ_CHECK(scram_compute_keys(PASSWORD, secret.scram.salt, SCRAM_SALT_LEN, secret.scram.iterations, secret.scram.stored_key,
				      secret.scram.server_key) == 0, "keys");
	FUZZ_CHECK(PKCS5_PBKDF2_HMAC(PASSWORD, (int)strlen(PASSWORD), secret.scram.salt, SCRAM_SALT_LEN,
				     secret.scram.iterations, EVP_sha256(), 32, salted) == 1, "pbkdf2");
	HMAC(EVP_sha256(), salted, 32, (const uint8_t *)"Client Key", 10, client_key, &n);
	return 0;
}

static char *base64(const uint8_t *data, size_t len)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);

	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

/* RFC 5802's AuthMessage: client-first-message-bare "," server-first "," client-final-without-proof. */
static char *auth_message(const char *first, size_t first_len, const char *server_first, const char *final,
			  size_t final_len)
{
	const char *comma = memchr(first, ',', first_len);
	const char *bare;
	char *out;
	size_t bare_len, n;

	if (comma == NULL || (comma = memchr(comma + 1, ',', first_len - (size_t)(comma + 1 - first))) == NULL)
		return NULL;
	bare = comma + 1;
	bare_len = first_len - (size_t)(bare - first);
	n = bare_len + 1 + strlen(server_first) + 1 + final_len;
	out = malloc(n + 1);
	memcpy(out, bare, bare_len);
	out[bare_len] = ',';
	strcpy(out + bare_len + 1, server_first);
	strcat(out, ",");
	memcpy(out + bare_len + 2 + strlen(server_first), final, final_len);
	out[n] = '\0';
	return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const mechanisms[] = { "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "", "SCRAM-SHA-1" };
	uint8_t flags;
	size_t first_len, final_len;
	const char *first, *final_in;
	bool tls, unknown, sign;
	struct scram_server *s;
	char *server_first = NULL, *server_final = NULL, *message = NULL, *final = NULL;
	char err[256];
	enum auth_result rc;

	if (size < 3)
		return 0;
	flags = data[0];
	first_len = (size_t)data[1] << 8 | data[2];
	if (first_len > size - 3)
		return 0;
	first = (const char *)data + 3;
	final_in = first + first_len;
	final_len = size - 3 - first_len;
	tls = flags & 4;
	unknown = flags & 8;
	sign = (flags & 16) && !unknown;

	if (flags & 32) {
		char *response = strndup(final_in, final_len);
		const uint8_t md5_salt[4] = { 1, 2, 3, 4 };

		/* The right answer is "md5" + 32 hex digits: no 35-byte prefix of fuzz input finds it. */
		FUZZ_CHECK(!md5_check_response("app", PASSWORD, md5_salt, response) || strlen(response) == 35,
			   "MD5 accepted %s", response);
		free(response);
	}

	s = unknown ? scram_server_new_unknown_user("ghost", tls ? cert_hash : NULL, tls ? sizeof(cert_hash) : 0)
		    : scram_server_new(&secret.scram, tls ? cert_hash : NULL, tls ? sizeof(cert_hash) : 0);
	FUZZ_CHECK(s != NULL, "no state");
	free(s->server_nonce);
	s->server_nonce = strdup(SERVER_NONCE);
	FUZZ_CHECK(s->server_nonce != NULL, "out of memory");

	err[0] = '\0';
	rc = scram_server_handle_first(s, mechanisms[flags & 3], first, first_len, &server_first, err, sizeof(err));
	FUZZ_CHECK(rc == AUTH_OK || rc == AUTH_FAILED || rc == AUTH_PROTOCOL_ERROR, "result %d", rc);
	if (rc != AUTH_OK) {
		FUZZ_CHECK(server_first == NULL, "a reply to a refused client-first");
		/* The exchange is over: a client-final now is out of order. */
		rc = scram_server_handle_final(s, final_in, final_len, &server_final, err, sizeof(err));
		FUZZ_CHECK(rc != AUTH_OK && server_final == NULL, "final accepted after a refused first");
		scram_server_free(s);
		return 0;
	}
	FUZZ_CHECK(server_first != NULL && strncmp(server_first, "r=", 2) == 0 && strstr(server_first, ",s=") &&
			   strstr(server_first, ",i="),
		   "server-first %s", server_first ? server_first : "(null)");
	FUZZ_CHECK(strstr(server_first, SERVER_NONCE ",") != NULL, "server nonce missing from %s", server_first);

	final = malloc(final_len + 64);
	memcpy(final, final_in, final_len);
	final[final_len] = '\0';
	if (sign && memchr(final_in, '\0', final_len) == NULL &&
	    (message = auth_message(first, first_len, server_first, final_in, final_len)) != NULL) {
		uint8_t signature[32], proof[32];
		unsigned int n = 0;
		uint8_t stored_key[32];
		char *proof_text;

		memcpy(stored_key, secret.scram.stored_key, 32);
		HMAC(EVP_sha256(), stored_key, 32, (const uint8_t *)message, strlen(message), signature, &n);
		for (int i = 0; i < 32; i++)
			proof[i] = client_key[i] ^ signature[i];
		proof_text = base64(proof, 32);
		snprintf(final + final_len, 64, ",p=%s", proof_text);
		final_len += strlen(final + final_len);
		free(proof_text);
	} else {
		sign = false;
	}

	err[0] = '\0';
	rc = scram_server_handle_final(s, final, final_len, &server_final, err, sizeof(err));
	FUZZ_CHECK(rc == AUTH_OK || rc == AUTH_FAILED || rc == AUTH_PROTOCOL_ERROR, "result %d", rc);
	if (rc == AUTH_OK) {
		uint8_t signature[32];
		unsigned int n = 0;
		char *expected;

		FUZZ_CHECK(!unknown, "an unknown user logged in");
		FUZZ_CHECK(sign, "a login without the password: client-final %s", final);
		HMAC(EVP_sha256(), secret.scram.server_key, 32, (const uint8_t *)message, strlen(message), signature, &n);
		expected = base64(signature, 32);
		FUZZ_CHECK(server_final != NULL && strncmp(server_final, "v=", 2) == 0 &&
				   strcmp(server_final + 2, expected) == 0,
			   "server-final %s, expected v=%s", server_final ? server_final : "(null)", expected);
		free(expected);
	}
	/* Once finished, the state answers nothing more. */
	free(server_final);
	server_final = NULL;
	rc = scram_server_handle_final(s, final, final_len, &server_final, err, sizeof(err));
	FUZZ_CHECK(rc != AUTH_OK && server_final == NULL, "a second client-final accepted");

	scram_server_free(s);
	free(server_first);
	free(message);
	free(final);
	return 0;
}
