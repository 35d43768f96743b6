/*
 * fuzz_secrets.c: libFuzzer harness for one JSON secret file
 * (secret_parse_json() in secrets.c, the shape of an AWS Secrets Manager
 * secret), parsed from a buffer of exactly its length with no terminating NUL,
 * then given its verifier (secret_compute_verifier()), as the loader does. A
 * secret that parses must be usable as secrets.c uses it: a non-empty user
 * and password, a port in range, the default iteration count, and a copy
 * equal to the original.
 */
#include <string.h>

#include "auth.h"
#include "fuzz.h"
#include "log.h"
#include "secrets.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	log_set_level(-1); /* nothing here should log; if it does, keep it quiet */
	return 0;
}

static bool same_string(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct secret s, copy;
	char err[256];
	char *json = malloc(size ? size : 1);

	memcpy(json, data, size);
	err[0] = '\0';
	if (secret_parse_json(json, size, &s, err, sizeof(err)) != 0) {
		FUZZ_CHECK(err[0] != '\0', "a refusal must say why");
		FUZZ_CHECK(s.username == NULL && s.password == NULL && s.host == NULL && s.dbname == NULL,
			   "a refused secret keeps fields");
		free(json);
		return 0;
	}
	FUZZ_CHECK(s.username && s.username[0] && s.password && s.password[0], "empty user or password");
	FUZZ_CHECK(s.port >= 0 && s.port <= 65535, "port %d", s.port);
	FUZZ_CHECK(secret_compute_verifier(&s, err, sizeof(err)) == 0, "no verifier: %s", err);
	FUZZ_CHECK(s.scram.iterations == SCRAM_DEFAULT_ITERATIONS, "iterations %d", s.scram.iterations);
	secret_copy(&copy, &s);
	FUZZ_CHECK(same_string(copy.username, s.username) && same_string(copy.password, s.password) &&
			   same_string(copy.host, s.host) && same_string(copy.dbname, s.dbname) && copy.port == s.port &&
			   memcmp(copy.scram.stored_key, s.scram.stored_key, SCRAM_KEY_LEN) == 0 &&
			   memcmp(copy.scram.server_key, s.scram.server_key, SCRAM_KEY_LEN) == 0,
		   "copy differs");
	secret_clear(&copy);
	secret_clear(&s);
	FUZZ_CHECK(s.username == NULL && s.password == NULL, "cleared secret keeps fields");
	free(json);
	return 0;
}
