/*
 * test_auth.c: unit tests for auth.c. SCRAM is checked against the RFC 7677
 * test vector and against a small independent SCRAM client written here with
 * OpenSSL; MD5 against digests computed independently in the test.
 *
 * auth.c is compiled into this file rather than linked beside it, so that a
 * test can fix the server's part of the nonce (the RFC's example has one of
 * its own), which pgmux draws at random and keeps to itself.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/x509.h>

#include "auth.c"
#include "secrets.h"

#define ERR_LEN 256

/* Use nonce as the server's part of the nonce of exchange s, instead of the random one it drew. */
static void set_server_nonce(struct scram_server *s, const char *nonce)
{
	free(s->server_nonce);
	s->server_nonce = strdup(nonce);
	cr_assert_not_null(s->server_nonce);
}

/* ------------------------------------------------- independent helpers */

/* Base64 through OpenSSL's encoder, so the test does not trust auth.c's own. */
static char *test_base64(const void *data, size_t len)
{
	char *out = malloc((len + 2) / 3 * 4 + 1);

	cr_assert_not_null(out);
	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

static size_t test_unbase64(const char *text, uint8_t *out, size_t outcap)
{
	size_t text_len = strlen(text);
	int n;

	cr_assert(text_len / 4 * 3 <= outcap);
	n = EVP_DecodeBlock(out, (const unsigned char *)text, (int)text_len);
	cr_assert(n >= 0, "bad base64 %s", text);
	/* EVP_DecodeBlock counts padding as output bytes. */
	if (text_len >= 1 && text[text_len - 1] == '=')
		n--;
	if (text_len >= 2 && text[text_len - 2] == '=')
		n--;
	return (size_t)n;
}

static void test_hmac(const uint8_t *key, size_t key_len, const void *data, size_t len,
		      uint8_t out[32])
{
	unsigned int out_len = 0;

	cr_assert_not_null(HMAC(EVP_sha256(), key, (int)key_len, data, len, out, &out_len));
	cr_assert_eq(out_len, 32);
}

static void test_sha256(const void *data, size_t len, uint8_t out[32])
{
	cr_assert_eq(EVP_Digest(data, len, out, NULL, EVP_sha256(), NULL), 1);
}

/* The secret of a user as secrets.c would build it, with a chosen salt. */
static void make_secret(struct secret *s, const char *user, const char *password,
			const uint8_t *salt)
{
	memset(s, 0, sizeof(*s));
	s->username = strdup(user);
	s->password = strdup(password);
	memcpy(s->scram.salt, salt, SCRAM_SALT_LEN);
	s->scram.iterations = 4096;
	cr_assert_eq(scram_compute_keys(password, s->scram.salt, SCRAM_SALT_LEN, 4096, s->scram.stored_key,
					s->scram.server_key), 0);
}

static const uint8_t fixed_salt[SCRAM_SALT_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8,
						     9, 10, 11, 12, 13, 14, 15, 16 };

/*
 * A SCRAM client written from RFC 5802 alone. It records what it sent and
 * the server signature it expects.
 */
struct test_client {
	char gs2_header[64];
	char client_first[256];
	const char *client_first_bare;
	char client_final[512];
	char expected_server_final[128];
};

static void client_start(struct test_client *c, const char *gs2_header, const char *nonce)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->gs2_header, sizeof(c->gs2_header), "%s", gs2_header);
	snprintf(c->client_first, sizeof(c->client_first), "%sn=,r=%s", gs2_header, nonce);
	c->client_first_bare = c->client_first + strlen(gs2_header);
}

/* Answer server_first with password; cb_data is appended to the GS2 header in c=. */
static void client_finish(struct test_client *c, const char *server_first, const char *password,
			  const uint8_t *cb_data, size_t cb_len)
{
	char nonce[128], salt_text[64], without_proof[384], auth_message[1024];
	uint8_t salt[64], salted[32], client_key[32], stored_key[32], server_key[32];
	uint8_t client_signature[32], server_signature[32], proof[32], binding_input[160];
	size_t salt_len, header_len = strlen(c->gs2_header);
	int iterations = 0;
	char *binding_text, *proof_text, *signature_text;

	cr_assert_eq(sscanf(server_first, "r=%127[^,],s=%63[^,],i=%d", nonce, salt_text, &iterations),
		     3, "unparsable server-first %s", server_first);
	salt_len = test_unbase64(salt_text, salt, sizeof(salt));
	cr_assert_eq(PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)salt_len,
				       iterations, EVP_sha256(), 32, salted), 1);
	test_hmac(salted, 32, "Client Key", 10, client_key);
	test_sha256(client_key, 32, stored_key);
	test_hmac(salted, 32, "Server Key", 10, server_key);

	memcpy(binding_input, c->gs2_header, header_len);
	if (cb_data != NULL)
		memcpy(binding_input + header_len, cb_data, cb_len);
	binding_text = test_base64(binding_input, header_len + (cb_data != NULL ? cb_len : 0));
	snprintf(without_proof, sizeof(without_proof), "c=%s,r=%s", binding_text, nonce);
	snprintf(auth_message, sizeof(auth_message), "%s,%s,%s", c->client_first_bare, server_first,
		 without_proof);
	test_hmac(stored_key, 32, auth_message, strlen(auth_message), client_signature);
	for (int i = 0; i < 32; i++)
		proof[i] = client_key[i] ^ client_signature[i];
	test_hmac(server_key, 32, auth_message, strlen(auth_message), server_signature);
	proof_text = test_base64(proof, 32);
	signature_text = test_base64(server_signature, 32);
	snprintf(c->client_final, sizeof(c->client_final), "%s,p=%s", without_proof, proof_text);
	snprintf(c->expected_server_final, sizeof(c->expected_server_final), "v=%s",
		 signature_text);
	free(binding_text);
	free(proof_text);
	free(signature_text);
}

/* Run client-first through the server and expect success; returns server-first (caller frees). */
static char *first_ok(struct scram_server *s, const char *mechanism, const char *client_first)
{
	char err[ERR_LEN] = "";
	char *server_first = NULL;
	enum auth_result rc = scram_server_handle_first(s, mechanism, client_first,
							strlen(client_first), &server_first, err,
							sizeof(err));

	cr_assert_eq(rc, AUTH_OK, "client-first rejected: %s", err);
	cr_assert_not_null(server_first);
	return server_first;
}

static enum auth_result first_result(struct scram_server *s, const char *mechanism,
				     const char *client_first, char *err)
{
	char *server_first = (char *)"untouched";
	enum auth_result rc = scram_server_handle_first(s, mechanism, client_first,
							strlen(client_first), &server_first, err,
							ERR_LEN);

	if (rc != AUTH_OK)
		cr_assert_null(server_first, "server-first must be NULL on failure");
	free(rc == AUTH_OK ? server_first : NULL);
	return rc;
}

/* ------------------------------------------------------- RFC 7677 vector */

Test(scram, rfc7677_test_vector)
{
	/* RFC 7677 section 3: user "user", password "pencil". */
	const char *client_first = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
	const char *expected_server_first =
		"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
		"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
	const char *client_final =
		"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
		"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
	const char *expected_server_final = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
	uint8_t salt[32];
	struct secret secret;
	struct scram_server *s;
	char err[ERR_LEN] = "";
	char *server_first, *server_final = NULL;

	cr_assert_eq(test_unbase64("W22ZaJ0SNY7soEsUEjb6gQ==", salt, sizeof(salt)), SCRAM_SALT_LEN);
	make_secret(&secret, "user", "pencil", salt);
	s = scram_server_new(&secret.scram, NULL, 0);
	set_server_nonce(s, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
	server_first = first_ok(s, "SCRAM-SHA-256", client_first);
	cr_assert_str_eq(server_first, expected_server_first);
	cr_assert_eq(scram_server_handle_final(s, client_final, strlen(client_final), &server_final,
					       err, sizeof(err)),
		     AUTH_OK, "client-final rejected: %s", err);
	cr_assert_str_eq(server_final, expected_server_final);
	free(server_first);
	free(server_final);
	scram_server_free(s);
	secret_clear(&secret);
}

Test(scram, compute_keys_matches_independent_computation)
{
	uint8_t stored[32], server[32], salted[32], client_key[32], expected_stored[32],
		expected_server[32];

	cr_assert_eq(scram_compute_keys("correct horse", fixed_salt, sizeof(fixed_salt), 4096, stored,
					server), 0);
	cr_assert_eq(PKCS5_PBKDF2_HMAC("correct horse", 13, fixed_salt, sizeof(fixed_salt), 4096,
				       EVP_sha256(), 32, salted), 1);
	test_hmac(salted, 32, "Client Key", 10, client_key);
	test_sha256(client_key, 32, expected_stored);
	test_hmac(salted, 32, "Server Key", 10, expected_server);
	cr_assert_arr_eq(stored, expected_stored, 32);
	cr_assert_arr_eq(server, expected_server, 32);
	cr_assert_eq(scram_compute_keys("x", fixed_salt, sizeof(fixed_salt), 0, stored, server), -1);
	cr_assert_eq(scram_compute_keys(NULL, fixed_salt, sizeof(fixed_salt), 4096, stored, server),
		     -1);
}

/* ------------------------------------------------------- full exchanges */

/* One exchange through the test client; returns the final result and checks server-final on success. */
static enum auth_result run_exchange(const struct secret *secret, const char *password,
				     const char *mechanism, const char *gs2_header,
				     const uint8_t *server_cb, size_t server_cb_len,
				     const uint8_t *client_cb, size_t client_cb_len, char *err)
{
	struct test_client client;
	struct scram_server *s = scram_server_new(secret ? &secret->scram : NULL, server_cb, server_cb_len);
	char *server_first, *server_final = (char *)"untouched";
	enum auth_result rc;

	client_start(&client, gs2_header, "fyko+d2lbbFgONRv9qkxdawL");
	server_first = first_ok(s, mechanism, client.client_first);
	/* Our nonce is the client's followed by 24 base64 characters (18 random bytes). */
	cr_assert_eq(strncmp(server_first, "r=fyko+d2lbbFgONRv9qkxdawL", 26), 0);
	cr_assert_eq(strcspn(server_first + 26, ","), 24);
	client_finish(&client, server_first, password, client_cb, client_cb_len);
	rc = scram_server_handle_final(s, client.client_final, strlen(client.client_final),
				       &server_final, err, ERR_LEN);
	if (rc == AUTH_OK) {
		cr_assert_str_eq(server_final, client.expected_server_final);
		free(server_final);
	} else {
		cr_assert_null(server_final);
	}
	free(server_first);
	scram_server_free(s);
	return rc;
}

Test(scram, right_password_succeeds)
{
	struct secret secret;
	char err[ERR_LEN] = "";

	make_secret(&secret, "app", "s3cret!", fixed_salt);
	cr_assert_eq(run_exchange(&secret, "s3cret!", "SCRAM-SHA-256", "n,,", NULL, 0, NULL, 0, err),
		     AUTH_OK, "%s", err);
	secret_clear(&secret);
}

Test(scram, wrong_password_fails)
{
	struct secret secret;
	char err[ERR_LEN] = "";

	make_secret(&secret, "app", "s3cret!", fixed_salt);
	cr_assert_eq(run_exchange(&secret, "s3cret?", "SCRAM-SHA-256", "n,,", NULL, 0, NULL, 0, err),
		     AUTH_FAILED);
	cr_assert_str_eq(err, "SCRAM authentication failed: wrong password or unknown user");
	cr_assert_null(strstr(err, "s3cret"));
	secret_clear(&secret);
}

Test(scram, server_first_carries_salt_and_iterations)
{
	struct secret secret;
	struct scram_server *s;
	char *server_first, *salt_text = test_base64(fixed_salt, SCRAM_SALT_LEN);
	char expected_tail[64];

	make_secret(&secret, "app", "pw", fixed_salt);
	s = scram_server_new(&secret.scram, NULL, 0);
	server_first = first_ok(s, "SCRAM-SHA-256", "n,,n=,r=abc");
	snprintf(expected_tail, sizeof(expected_tail), ",s=%s,i=4096", salt_text);
	cr_assert_str_eq(server_first + strlen(server_first) - strlen(expected_tail), expected_tail);
	free(server_first);
	free(salt_text);
	scram_server_free(s);
	secret_clear(&secret);
}

Test(scram, server_nonces_are_random)
{
	struct secret secret;
	struct scram_server *a, *b;
	char *first_a, *first_b;

	make_secret(&secret, "app", "pw", fixed_salt);
	a = scram_server_new(&secret.scram, NULL, 0);
	b = scram_server_new(&secret.scram, NULL, 0);
	first_a = first_ok(a, "SCRAM-SHA-256", "n,,n=,r=abc");
	first_b = first_ok(b, "SCRAM-SHA-256", "n,,n=,r=abc");
	cr_assert_str_neq(first_a, first_b);
	free(first_a);
	free(first_b);
	scram_server_free(a);
	scram_server_free(b);
	secret_clear(&secret);
}

Test(scram, extensions_are_ignored)
{
	struct secret secret;
	struct scram_server *s;
	char err[ERR_LEN] = "";
	char *server_first;

	make_secret(&secret, "app", "pw", fixed_salt);
	s = scram_server_new(&secret.scram, NULL, 0);
	server_first = first_ok(s, "SCRAM-SHA-256", "n,,n=someone,r=abc,x=extension");
	free(server_first);
	scram_server_free(s);
	s = scram_server_new(&secret.scram, NULL, 0);
	cr_assert_eq(first_result(s, "SCRAM-SHA-256", "n,,n=,r=abc,", err), AUTH_PROTOCOL_ERROR);
	scram_server_free(s);
	secret_clear(&secret);
}

/* --------------------------------------------------------- channel binding */

static const uint8_t cert_hash[32] = { 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
				       12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
				       27, 28 };

Test(scram, plus_with_matching_binding_succeeds)
{
	struct secret secret;
	char err[ERR_LEN] = "";

	make_secret(&secret, "app", "pw", fixed_salt);
	cr_assert_eq(run_exchange(&secret, "pw", "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,",
				  cert_hash, sizeof(cert_hash), cert_hash, sizeof(cert_hash), err),
		     AUTH_OK, "%s", err);
	secret_clear(&secret);
}

Test(scram, plus_with_other_certificate_hash_fails)
{
	struct secret secret;
	uint8_t other_hash[32];
	char err[ERR_LEN] = "";

	memcpy(other_hash, cert_hash, sizeof(other_hash));
	other_hash[31] ^= 1;
	make_secret(&secret, "app", "pw", fixed_salt);
	cr_assert_eq(run_exchange(&secret, "pw", "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,",
				  cert_hash, sizeof(cert_hash), other_hash, sizeof(other_hash), err),
		     AUTH_PROTOCOL_ERROR);
	cr_assert(strstr(err, "channel binding") != NULL, "%s", err);
	/* c= without the certificate hash at all is just as wrong. */
	cr_assert_eq(run_exchange(&secret, "pw", "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,",
				  cert_hash, sizeof(cert_hash), NULL, 0, err),
		     AUTH_PROTOCOL_ERROR);
	secret_clear(&secret);
}

Test(scram, no_binding_over_tls_is_allowed)
{
	struct secret secret;
	char err[ERR_LEN] = "";

	/* A client that knows nothing of binding ("n") may still use plain SCRAM over TLS. */
	make_secret(&secret, "app", "pw", fixed_salt);
	cr_assert_eq(run_exchange(&secret, "pw", "SCRAM-SHA-256", "n,,", cert_hash,
				  sizeof(cert_hash), NULL, 0, err),
		     AUTH_OK, "%s", err);
	/* "y" without TLS: the client is right that we cannot bind. */
	cr_assert_eq(run_exchange(&secret, "pw", "SCRAM-SHA-256", "y,,", NULL, 0, NULL, 0, err),
		     AUTH_OK, "%s", err);
	secret_clear(&secret);
}

Test(scram, y_flag_when_plus_was_offered_fails)
{
	struct secret secret;
	struct scram_server *s;
	char err[ERR_LEN] = "";

	make_secret(&secret, "app", "pw", fixed_salt);
	s = scram_server_new(&secret.scram, cert_hash, sizeof(cert_hash));
	cr_assert_eq(first_result(s, "SCRAM-SHA-256", "y,,n=,r=abc", err), AUTH_PROTOCOL_ERROR);
	cr_assert(strstr(err, "channel binding negotiation") != NULL, "%s", err);
	scram_server_free(s);
	secret_clear(&secret);
}

Test(scram, mechanism_and_flag_must_agree)
{
	struct secret secret;
	struct scram_server *s;
	char err[ERR_LEN] = "";

	make_secret(&secret, "app", "pw", fixed_salt);
	/* PLUS never offered without TLS. */
	s = scram_server_new(&secret.scram, NULL, 0);
	cr_assert_eq(first_result(s, "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,n=,r=abc", err),
		     AUTH_PROTOCOL_ERROR);
	scram_server_free(s);
	/* PLUS chosen but no binding requested. */
	s = scram_server_new(&secret.scram, cert_hash, sizeof(cert_hash));
	cr_assert_eq(first_result(s, "SCRAM-SHA-256-PLUS", "n,,n=,r=abc", err), AUTH_PROTOCOL_ERROR);
	scram_server_free(s);
	/* Binding requested under the plain mechanism. */
	s = scram_server_new(&secret.scram, cert_hash, sizeof(cert_hash));
	cr_assert_eq(first_result(s, "SCRAM-SHA-256", "p=tls-server-end-point,,n=,r=abc", err),
		     AUTH_PROTOCOL_ERROR);
	scram_server_free(s);
	/* An unknown binding type. */
	s = scram_server_new(&secret.scram, cert_hash, sizeof(cert_hash));
	cr_assert_eq(first_result(s, "SCRAM-SHA-256-PLUS", "p=tls-unique,,n=,r=abc", err),
		     AUTH_PROTOCOL_ERROR);
	cr_assert(strstr(err, "tls-server-end-point") != NULL, "%s", err);
	scram_server_free(s);
	/* An unknown mechanism. */
	s = scram_server_new(&secret.scram, NULL, 0);
	cr_assert_eq(first_result(s, "SCRAM-SHA-1", "n,,n=,r=abc", err), AUTH_PROTOCOL_ERROR);
	scram_server_free(s);
	s = scram_server_new(&secret.scram, NULL, 0);
	cr_assert_eq(first_result(s, NULL, "n,,n=,r=abc", err), AUTH_PROTOCOL_ERROR);
	scram_server_free(s);
	secret_clear(&secret);
}

/* ------------------------------------------------------------ unknown user */

/* The salt text of a server-first message, copied. */
static char *salt_of(const char *server_first)
{
	const char *start = strstr(server_first, ",s=");
	const char *end;

	cr_assert_not_null(start);
	start += 3;
	end = strchr(start, ',');
	cr_assert_not_null(end);
	return strndup(start, (size_t)(end - start));
}

Test(scram, unknown_user_fails_at_the_end)
{
	char err[ERR_LEN] = "";

	/* Even the right-looking proof for some password fails: there is no verifier. */
	cr_assert_eq(run_exchange(NULL, "anything", "SCRAM-SHA-256", "n,,", NULL, 0, NULL, 0, err),
		     AUTH_FAILED);
	cr_assert_str_eq(err, "SCRAM authentication failed: wrong password or unknown user");
}

Test(scram, unknown_user_salt_is_stable_per_name)
{
	struct scram_server *a = scram_server_new_unknown_user("ghost", NULL, 0);
	struct scram_server *b = scram_server_new_unknown_user("ghost", NULL, 0);
	struct scram_server *c = scram_server_new_unknown_user("phantom", NULL, 0);
	char *first_a = first_ok(a, "SCRAM-SHA-256", "n,,n=,r=abc");
	char *first_b = first_ok(b, "SCRAM-SHA-256", "n,,n=,r=abc");
	char *first_c = first_ok(c, "SCRAM-SHA-256", "n,,n=,r=abc");
	char *salt_a = salt_of(first_a), *salt_b = salt_of(first_b), *salt_c = salt_of(first_c);
	uint8_t decoded[32];

	cr_assert_str_eq(salt_a, salt_b);
	cr_assert_str_neq(salt_a, salt_c);
	cr_assert_eq(test_unbase64(salt_a, decoded, sizeof(decoded)), SCRAM_SALT_LEN);
	cr_assert(strstr(first_a, ",i=4096") != NULL);
	free(salt_a);
	free(salt_b);
	free(salt_c);
	free(first_a);
	free(first_b);
	free(first_c);
	scram_server_free(a);
	scram_server_free(b);
	scram_server_free(c);
}

Test(scram, unknown_user_without_name_uses_client_first_name)
{
	struct scram_server *a = scram_server_new(NULL, NULL, 0);
	struct scram_server *b = scram_server_new(NULL, NULL, 0);
	struct scram_server *c = scram_server_new_unknown_user("ghost", NULL, 0);
	char *first_a = first_ok(a, "SCRAM-SHA-256", "n,,n=ghost,r=abc");
	char *first_b = first_ok(b, "SCRAM-SHA-256", "n,,n=other,r=abc");
	char *first_c = first_ok(c, "SCRAM-SHA-256", "n,,n=,r=abc");
	char *salt_a = salt_of(first_a), *salt_b = salt_of(first_b), *salt_c = salt_of(first_c);

	cr_assert_str_neq(salt_a, salt_b);
	cr_assert_str_eq(salt_a, salt_c);
	free(salt_a);
	free(salt_b);
	free(salt_c);
	free(first_a);
	free(first_b);
	free(first_c);
	scram_server_free(a);
	scram_server_free(b);
	scram_server_free(c);
}

Test(scram, unknown_user_malformed_final_is_protocol_error)
{
	struct scram_server *s = scram_server_new_unknown_user("ghost", NULL, 0);
	char *server_first = first_ok(s, "SCRAM-SHA-256", "n,,n=,r=abc");
	char *server_final = NULL;
	char err[ERR_LEN] = "";

	cr_assert_eq(scram_server_handle_final(s, "c=biws", 6, &server_final, err, sizeof(err)),
		     AUTH_PROTOCOL_ERROR);
	cr_assert_null(server_final);
	free(server_first);
	scram_server_free(s);
}

/* ------------------------------------------------------ malformed messages */

Test(scram, malformed_client_first_is_rejected)
{
	static const char *const bad[] = {
		"",
		"n",
		"n,",
		"n,,",
		"x,,n=,r=abc",          /* unknown flag */
		"n,a=someone,n=,r=abc", /* authorization identity */
		"nn,,n=,r=abc",
		"n,,r=abc",             /* missing n= */
		"n,,n=",                /* missing r= */
		"n,,n=,",
		"n,,n=,r=",             /* empty nonce */
		"n,,n=,x=abc",
		"n,,m=ext,n=,r=abc",    /* mandatory extension */
		"n,,n=,r=ab c",         /* space in nonce */
		"n,,n=,r=abc,,",
		"n,,n=,r=abc,1=x",      /* attribute names are letters */
		"p,,n=,r=abc",
		"p=,,n=,r=abc",
	};
	struct secret secret;
	char err[ERR_LEN];

	make_secret(&secret, "app", "pw", fixed_salt);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct scram_server *s = scram_server_new(&secret.scram, NULL, 0);

		err[0] = '\0';
		cr_assert_eq(first_result(s, "SCRAM-SHA-256", bad[i], err), AUTH_PROTOCOL_ERROR,
			     "accepted \"%s\"", bad[i]);
		cr_assert(err[0] != '\0', "no reason for \"%s\"", bad[i]);
		scram_server_free(s);
	}
	secret_clear(&secret);
}

Test(scram, nonprintable_nonce_is_rejected)
{
	struct secret secret;
	struct scram_server *s;
	char err[ERR_LEN];
	const char message[] = "n,,n=,r=ab\x7f";

	make_secret(&secret, "app", "pw", fixed_salt);
	s = scram_server_new(&secret.scram, NULL, 0);
	cr_assert_eq(first_result(s, "SCRAM-SHA-256", message, err), AUTH_PROTOCOL_ERROR);
	scram_server_free(s);
	secret_clear(&secret);
}

Test(scram, oversized_message_is_rejected)
{
	struct secret secret;
	struct scram_server *s;
	char err[ERR_LEN] = "";
	char *huge = malloc(20001);

	memcpy(huge, "n,,n=,r=", 8);
	memset(huge + 8, 'a', 20000 - 8);
	huge[20000] = '\0';
	make_secret(&secret, "app", "pw", fixed_salt);
	s = scram_server_new(&secret.scram, NULL, 0);
	cr_assert_eq(first_result(s, "SCRAM-SHA-256", huge, err), AUTH_PROTOCOL_ERROR);
	cr_assert(strstr(err, "too long") != NULL, "%s", err);
	scram_server_free(s);
	free(huge);
	secret_clear(&secret);
}

Test(scram, embedded_nul_is_rejected)
{
	struct secret secret;
	struct scram_server *s;
	struct test_client client;
	char err[ERR_LEN] = "";
	char *server_first = NULL, *server_final = NULL;
	const char first_with_nul[] = "n,,n=,r=abc\0def";
	char final_with_nul[600];
	size_t final_len;

	make_secret(&secret, "app", "pw", fixed_salt);
	s = scram_server_new(&secret.scram, NULL, 0);
	cr_assert_eq(scram_server_handle_first(s, "SCRAM-SHA-256", first_with_nul,
					       sizeof(first_with_nul) - 1, &server_first, err,
					       sizeof(err)),
		     AUTH_PROTOCOL_ERROR);
	cr_assert_null(server_first);
	cr_assert(strstr(err, "NUL") != NULL, "%s", err);
	scram_server_free(s);

	/* A correct client-final followed by a NUL and junk. */
	s = scram_server_new(&secret.scram, NULL, 0);
	client_start(&client, "n,,", "abc");
	server_first = first_ok(s, "SCRAM-SHA-256", client.client_first);
	client_finish(&client, server_first, "pw", NULL, 0);
	final_len = strlen(client.client_final);
	memcpy(final_with_nul, client.client_final, final_len);
	memcpy(final_with_nul + final_len, "\0,x=y", 5);
	cr_assert_eq(scram_server_handle_final(s, final_with_nul, final_len + 5, &server_final, err,
					       sizeof(err)),
		     AUTH_PROTOCOL_ERROR);
	cr_assert_null(server_final);
	free(server_first);
	scram_server_free(s);
	secret_clear(&secret);
}

/*
 * Start an exchange, then feed the correct client-final with its first
 * occurrence of original replaced by replacement. Returns the result of
 * client-final.
 */
static enum auth_result final_variant(const char *original, const char *replacement,
				      char *err)
{
	struct secret secret;
	struct scram_server *s;
	struct test_client client;
	char *server_first, *server_final = NULL, *message, *at;
	enum auth_result rc;

	make_secret(&secret, "app", "pw", fixed_salt);
	s = scram_server_new(&secret.scram, NULL, 0);
	client_start(&client, "n,,", "abc");
	server_first = first_ok(s, "SCRAM-SHA-256", client.client_first);
	client_finish(&client, server_first, "pw", NULL, 0);
	message = malloc(strlen(client.client_final) + strlen(replacement) + 1);
	at = strstr(client.client_final, original);
	cr_assert_not_null(at, "%s not in %s", original, client.client_final);
	memcpy(message, client.client_final, (size_t)(at - client.client_final));
	strcpy(message + (at - client.client_final), replacement);
	strcat(message, at + strlen(original));
	rc = scram_server_handle_final(s, message, strlen(message), &server_final, err, ERR_LEN);
	if (rc != AUTH_OK)
		cr_assert_null(server_final);
	free(server_final);
	free(message);
	free(server_first);
	scram_server_free(s);
	secret_clear(&secret);
	return rc;
}

Test(scram, malformed_client_final_is_rejected)
{
	char err[ERR_LEN] = "";

	/* Sanity: replacing nothing meaningful keeps it valid. */
	cr_assert_eq(final_variant("c=", "c=", err), AUTH_OK, "%s", err);
	cr_assert_eq(final_variant("c=biws", "c=bi*s", err), AUTH_PROTOCOL_ERROR);
	cr_assert_eq(final_variant("c=biws", "c=biw", err), AUTH_PROTOCOL_ERROR);
	cr_assert_eq(final_variant("c=biws", "c=eSws", err), AUTH_PROTOCOL_ERROR); /* "y,," */
	cr_assert_eq(final_variant("c=biws,", "", err), AUTH_PROTOCOL_ERROR);     /* no c= */
	cr_assert_eq(final_variant("r=abc", "r=abd", err), AUTH_PROTOCOL_ERROR);  /* wrong nonce */
	cr_assert(strstr(err, "nonce") != NULL, "%s", err);
	cr_assert_eq(final_variant("r=abc", "r=ab", err), AUTH_PROTOCOL_ERROR);
	cr_assert_eq(final_variant(",p=", ",p=!", err), AUTH_PROTOCOL_ERROR);    /* bad base64 */
	/*
	 * An extension is parsed, but it is part of the AuthMessage the proof
	 * covers, so slipping one in afterwards makes the proof wrong.
	 */
	cr_assert_eq(final_variant(",p=", ",x=1,p=", err), AUTH_FAILED, "%s", err);
	cr_assert_eq(final_variant(",p=", ",x=,p=", err), AUTH_PROTOCOL_ERROR);
	cr_assert_eq(final_variant(",p=", ",q=", err), AUTH_PROTOCOL_ERROR);     /* no proof */
	cr_assert(strstr(err, "proof") != NULL, "%s", err);
}

Test(scram, proof_of_wrong_length_or_junk_after_it_is_rejected)
{
	struct secret secret;
	struct scram_server *s;
	struct test_client client;
	char *server_first, *server_final = NULL;
	char err[ERR_LEN] = "";
	char message[700];

	make_secret(&secret, "app", "pw", fixed_salt);
	static const char *const suffixes[] = { "", ",x=y", "AAAA", "=" };

	for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
		s = scram_server_new(&secret.scram, NULL, 0);
		client_start(&client, "n,,", "abc");
		server_first = first_ok(s, "SCRAM-SHA-256", client.client_first);
		client_finish(&client, server_first, "pw", NULL, 0);
		if (i == 0) {
			/* A proof short by its last base64 group: 30 bytes. */
			size_t len = strlen(client.client_final);

			snprintf(message, sizeof(message), "%.*s", (int)(len - 4), client.client_final);
		} else {
			snprintf(message, sizeof(message), "%s%s", client.client_final, suffixes[i]);
		}
		cr_assert_eq(scram_server_handle_final(s, message, strlen(message), &server_final, err,
						       sizeof(err)),
			     AUTH_PROTOCOL_ERROR, "accepted %s", message);
		cr_assert_null(server_final);
		free(server_first);
		scram_server_free(s);
	}
	secret_clear(&secret);
}

Test(scram, non_canonical_base64_is_rejected)
{
	char err[ERR_LEN] = "";

	/* "biws" is "n,,"; "biwt" decodes to the same bytes only in lenient decoders. */
	cr_assert_eq(final_variant("c=biws", "c=biws====", err), AUTH_PROTOCOL_ERROR);
	cr_assert_eq(final_variant("c=biws", "c=bi=s", err), AUTH_PROTOCOL_ERROR);
	cr_assert_eq(final_variant("c=biws", "c=bi ws", err), AUTH_PROTOCOL_ERROR);
	/* "bg==" is "n"; "bh==" has stray low bits. */
	cr_assert_eq(final_variant("c=biws", "c=bh==", err), AUTH_PROTOCOL_ERROR);
}

/* Add one to a base64 digit whose low bits are zero: a lenient decoder then yields the same bytes. */
static char stray_bits(char c)
{
	cr_assert(c != 'z' && c != '/' && c != '9', "unexpected digit %c", c);
	return (char)(c + 1);
}

/*
 * Non-canonical padding where lenient decoding would give exactly the right
 * bytes: the one "=" of the proof, and the "==" of a channel binding input
 * of 24 + 64 bytes (a SHA-512 certificate hash).
 */
Test(scram, stray_bits_before_padding_are_rejected)
{
	struct secret secret;
	struct scram_server *s;
	struct test_client client;
	uint8_t long_hash[64];
	char *server_first, *server_final = NULL, *at;
	char err[ERR_LEN] = "";
	size_t len;

	make_secret(&secret, "app", "pw", fixed_salt);
	s = scram_server_new(&secret.scram, NULL, 0);
	client_start(&client, "n,,", "abc");
	server_first = first_ok(s, "SCRAM-SHA-256", client.client_first);
	client_finish(&client, server_first, "pw", NULL, 0);
	len = strlen(client.client_final);
	cr_assert_eq(client.client_final[len - 1], '=');
	client.client_final[len - 2] = stray_bits(client.client_final[len - 2]);
	cr_assert_eq(scram_server_handle_final(s, client.client_final, len, &server_final, err,
					       sizeof(err)),
		     AUTH_PROTOCOL_ERROR, "%s", err);
	free(server_first);
	scram_server_free(s);

	for (size_t i = 0; i < sizeof(long_hash); i++)
		long_hash[i] = (uint8_t)(i * 7);
	cr_assert_eq(run_exchange(&secret, "pw", "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,",
				  long_hash, sizeof(long_hash), long_hash, sizeof(long_hash), err),
		     AUTH_OK, "%s", err);
	s = scram_server_new(&secret.scram, long_hash, sizeof(long_hash));
	client_start(&client, "p=tls-server-end-point,,", "abc");
	server_first = first_ok(s, "SCRAM-SHA-256-PLUS", client.client_first);
	client_finish(&client, server_first, "pw", long_hash, sizeof(long_hash));
	at = strstr(client.client_final, "==,r=");
	cr_assert_not_null(at, "%s", client.client_final);
	at[-1] = stray_bits(at[-1]);
	cr_assert_eq(scram_server_handle_final(s, client.client_final, strlen(client.client_final),
					       &server_final, err, sizeof(err)),
		     AUTH_PROTOCOL_ERROR);
	cr_assert(strstr(err, "channel binding") != NULL, "%s", err);
	free(server_first);
	scram_server_free(s);
	secret_clear(&secret);
}

/*
 * Every strict prefix of a correct message, in a buffer exactly that long
 * (so valgrind would catch a read past it), must be refused.
 */
Test(scram, truncated_client_final_is_rejected)
{
	struct secret secret;
	struct test_client client;
	struct scram_server *s;
	char *server_first;
	char err[ERR_LEN];
	size_t full_len;

	make_secret(&secret, "app", "pw", fixed_salt);
	client_start(&client, "n,,", "abc");
	s = scram_server_new(&secret.scram, NULL, 0);
	server_first = first_ok(s, "SCRAM-SHA-256", client.client_first);
	client_finish(&client, server_first, "pw", NULL, 0);
	full_len = strlen(client.client_final);
	/*
	 * The server nonce is random, so every attempt reuses this server_first
	 * through fresh states given the same nonce.
	 */
	{
		char nonce[64];

		cr_assert_eq(sscanf(server_first, "r=abc%63[^,]", nonce), 1);
		for (size_t cut = 0; cut < full_len; cut++) {
			struct scram_server *attempt = scram_server_new(&secret.scram, NULL, 0);
			char *first, *final = NULL;
			char *exact = malloc(cut + 1);

			set_server_nonce(attempt, nonce);
			first = first_ok(attempt, "SCRAM-SHA-256", client.client_first);
			cr_assert_str_eq(first, server_first);
			memcpy(exact, client.client_final, cut);
			cr_assert_eq(scram_server_handle_final(attempt, exact, cut, &final, err,
							       sizeof(err)),
				     AUTH_PROTOCOL_ERROR, "accepted prefix of %zu bytes", cut);
			cr_assert_null(final);
			free(exact);
			free(first);
			scram_server_free(attempt);
		}
	}
	free(server_first);
	scram_server_free(s);
	secret_clear(&secret);
}

Test(scram, truncated_client_first_never_over_reads)
{
	const char *full = "p=tls-server-end-point,,n=user,r=abcdef,x=ext";
	struct secret secret;
	char err[ERR_LEN];
	size_t full_len = strlen(full);
	int accepted = 0;

	make_secret(&secret, "app", "pw", fixed_salt);
	for (size_t cut = 0; cut <= full_len; cut++) {
		struct scram_server *s = scram_server_new(&secret.scram, cert_hash, sizeof(cert_hash));
		char *exact = malloc(cut + 1);
		char *server_first = NULL;
		enum auth_result rc;

		memcpy(exact, full, cut);
		rc = scram_server_handle_first(s, "SCRAM-SHA-256-PLUS", exact, cut, &server_first, err,
					       sizeof(err));
		/* Prefixes ending inside the nonce or the extension's value are valid messages. */
		if (rc == AUTH_OK) {
			accepted++;
			cr_assert(cut >= strlen("p=tls-server-end-point,,n=user,r=a"), "cut %zu", cut);
			free(server_first);
		} else {
			cr_assert_eq(rc, AUTH_PROTOCOL_ERROR);
			cr_assert_null(server_first);
		}
		free(exact);
		scram_server_free(s);
	}
	/* r=a .. r=abcdef (6) and x=e .. x=ext (3); "r=abcdef," and "x=" are not valid. */
	cr_assert_eq(accepted, 6 + 3);
	secret_clear(&secret);
}

Test(scram, calls_out_of_order_are_rejected)
{
	struct secret secret;
	struct scram_server *s;
	char err[ERR_LEN] = "";
	char *out = NULL;

	make_secret(&secret, "app", "pw", fixed_salt);
	s = scram_server_new(&secret.scram, NULL, 0);
	cr_assert_eq(scram_server_handle_final(s, "c=biws,r=abc,p=AAAA", 19, &out, err, sizeof(err)),
		     AUTH_PROTOCOL_ERROR);
	cr_assert_null(out);
	/* After an error the state is spent, even for a valid first message. */
	cr_assert_eq(first_result(s, "SCRAM-SHA-256", "n,,n=,r=abc", err), AUTH_PROTOCOL_ERROR);
	scram_server_free(s);

	s = scram_server_new(&secret.scram, NULL, 0);
	out = first_ok(s, "SCRAM-SHA-256", "n,,n=,r=abc");
	free(out);
	cr_assert_eq(first_result(s, "SCRAM-SHA-256", "n,,n=,r=abc", err), AUTH_PROTOCOL_ERROR);
	scram_server_free(s);
	secret_clear(&secret);
}

Test(scram, failed_proof_cannot_be_retried)
{
	struct secret secret;
	struct scram_server *s;
	struct test_client client;
	char *server_first, *server_final = NULL;
	char err[ERR_LEN] = "";
	char good_final[512];

	make_secret(&secret, "app", "pw", fixed_salt);
	s = scram_server_new(&secret.scram, NULL, 0);
	client_start(&client, "n,,", "abc");
	server_first = first_ok(s, "SCRAM-SHA-256", client.client_first);
	client_finish(&client, server_first, "pw", NULL, 0);
	snprintf(good_final, sizeof(good_final), "%s", client.client_final);
	client_finish(&client, server_first, "wrong", NULL, 0);
	cr_assert_eq(scram_server_handle_final(s, client.client_final, strlen(client.client_final),
					       &server_final, err, sizeof(err)),
		     AUTH_FAILED);
	cr_assert_eq(scram_server_handle_final(s, good_final, strlen(good_final), &server_final, err,
					       sizeof(err)),
		     AUTH_PROTOCOL_ERROR);
	cr_assert_null(server_final);
	free(server_first);
	scram_server_free(s);
	secret_clear(&secret);
}

Test(scram, free_of_null_is_harmless)
{
	scram_server_free(NULL);
	cr_assert(true);
}

/* ------------------------------------------------------------- mechanisms */

Test(scram, mechanism_list)
{
	char out[64];
	const char plain[] = "SCRAM-SHA-256\0";
	const char plus[] = "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0";

	memset(out, 'x', sizeof(out));
	cr_assert_eq(scram_mechanisms(false, out, sizeof(out)), sizeof(plain));
	cr_assert_arr_eq(out, plain, sizeof(plain));
	memset(out, 'x', sizeof(out));
	cr_assert_eq(scram_mechanisms(true, out, sizeof(out)), sizeof(plus));
	cr_assert_arr_eq(out, plus, sizeof(plus));
	cr_assert_eq(scram_mechanisms(true, out, sizeof(plus) - 1), 0);
	cr_assert_eq(scram_mechanisms(false, out, sizeof(plain)), sizeof(plain));
}

/* ------------------------------------------------- certificate binding */

/* A throwaway self-signed certificate signed with the given digest. */
static X509 *make_certificate(const EVP_MD *digest)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *cert = X509_new();
	X509_NAME *name;

	cr_assert_not_null(key);
	cr_assert_not_null(cert);
	X509_set_version(cert, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(cert), 42);
	X509_gmtime_adj(X509_getm_notBefore(cert), 0);
	X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
	X509_set_pubkey(cert, key);
	name = X509_get_subject_name(cert);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"pgmux-test", -1,
				   -1, 0);
	X509_set_issuer_name(cert, name);
	cr_assert(X509_sign(cert, key, digest) > 0);
	EVP_PKEY_free(key);
	return cert;
}

/* Hash the DER encoding independently of X509_digest. */
static size_t der_hash(X509 *cert, const EVP_MD *digest, uint8_t out[64])
{
	unsigned char *der = NULL;
	int der_len = i2d_X509(cert, &der);
	unsigned int out_len = 0;

	cr_assert(der_len > 0);
	cr_assert_eq(EVP_Digest(der, (size_t)der_len, out, &out_len, digest, NULL), 1);
	OPENSSL_free(der);
	return out_len;
}

Test(scram, certificate_binding_uses_signature_digest)
{
	struct {
		const EVP_MD *sign_with;
		const EVP_MD *hash_with;
	} cases[] = {
		{ EVP_sha256(), EVP_sha256() },
		{ EVP_sha384(), EVP_sha384() },
		{ EVP_sha512(), EVP_sha512() },
		{ EVP_sha1(), EVP_sha256() }, /* RFC 5929: SHA-1 is replaced by SHA-256 */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		X509 *cert = make_certificate(cases[i].sign_with);
		uint8_t got[64], expected[64];
		size_t expected_len = der_hash(cert, cases[i].hash_with, expected);

		cr_assert_eq(scram_cert_binding(cert, got), expected_len, "case %zu", i);
		cr_assert_arr_eq(got, expected, expected_len, "case %zu", i);
		X509_free(cert);
	}
	cr_assert_eq(scram_cert_binding(NULL, (uint8_t[64]){ 0 }), 0);
}

/* -------------------------------------------------------------------- MD5 */

/* The expected response computed with OpenSSL's MD5 and sprintf, independently of auth.c. */
static void md5_expected(const char *user, const char *password, const uint8_t salt[4],
			 char out[36])
{
	uint8_t digest[16], outer[36];
	char inner_hex[33], input[256];

	snprintf(input, sizeof(input), "%s%s", password, user);
	cr_assert_eq(EVP_Digest(input, strlen(input), digest, NULL, EVP_md5(), NULL), 1);
	for (int i = 0; i < 16; i++)
		sprintf(inner_hex + 2 * i, "%02x", digest[i]);
	memcpy(outer, inner_hex, 32);
	memcpy(outer + 32, salt, 4);
	cr_assert_eq(EVP_Digest(outer, 36, digest, NULL, EVP_md5(), NULL), 1);
	strcpy(out, "md5");
	for (int i = 0; i < 16; i++)
		sprintf(out + 3 + 2 * i, "%02x", digest[i]);
}

Test(md5, known_vector)
{
	const uint8_t salt[4] = { 0x01, 0x02, 0x03, 0x04 };
	char expected[36];

	/* Fixed value from Python's hashlib for user "user", password "pencil", salt 01020304. */
	cr_assert(md5_check_response("user", "pencil", salt, "md54376eb6913b38f9aaff38dc7cf19ca76"));
	md5_expected("user", "pencil", salt, expected);
	cr_assert_str_eq(expected, "md54376eb6913b38f9aaff38dc7cf19ca76");
	md5_expected("app", "s3cret!", (const uint8_t[4]){ 0xff, 0x00, 0x80, 0x7f }, expected);
	cr_assert(md5_check_response("app", "s3cret!", (const uint8_t[4]){ 0xff, 0x00, 0x80, 0x7f },
				     expected));
}

Test(md5, wrong_responses_fail)
{
	const uint8_t salt[4] = { 0x01, 0x02, 0x03, 0x04 };
	const uint8_t other_salt[4] = { 0x01, 0x02, 0x03, 0x05 };
	char expected[36], altered[40];

	md5_expected("user", "pencil", salt, expected);
	cr_assert_not(md5_check_response("user", "pencel", salt, expected));
	cr_assert_not(md5_check_response("usr", "pencil", salt, expected));
	cr_assert_not(md5_check_response("user", "pencil", other_salt, expected));
	cr_assert_not(md5_check_response("user", "pencil", salt, ""));
	cr_assert_not(md5_check_response("user", "pencil", salt, "md5"));
	cr_assert_not(md5_check_response("user", "pencil", salt, NULL));
	snprintf(altered, sizeof(altered), "%.34s", expected);
	cr_assert_not(md5_check_response("user", "pencil", salt, altered));
	snprintf(altered, sizeof(altered), "%sa", expected);
	cr_assert_not(md5_check_response("user", "pencil", salt, altered));
	snprintf(altered, sizeof(altered), "MD5%s", expected + 3);
	cr_assert_not(md5_check_response("user", "pencil", salt, altered));
	/* Uppercase hex is not what PostgreSQL clients send. */
	snprintf(altered, sizeof(altered), "%s", expected);
	for (char *p = altered + 3; *p; p++)
		if (*p >= 'a' && *p <= 'f')
			*p = (char)(*p - 'a' + 'A');
	if (strcmp(altered, expected) != 0)
		cr_assert_not(md5_check_response("user", "pencil", salt, altered));
}

Test(random, fills_buffer)
{
	uint8_t a[32] = { 0 }, b[32] = { 0 }, zero[32] = { 0 };

	auth_random_bytes(a, sizeof(a));
	auth_random_bytes(b, sizeof(b));
	cr_assert_arr_neq(a, zero, sizeof(a));
	cr_assert_arr_neq(a, b, sizeof(a));
}
