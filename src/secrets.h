/*
 * secrets.h: client credentials, read from a directory of JSON files shaped
 * like AWS Secrets Manager database secrets:
 *   {"username": "app", "password": "...", "engine": "postgres",
 *    "host": "...", "port": 5432, "dbname": "..."}
 * one user per file. The SCRAM verifier of each password is computed once at
 * load time (PBKDF2 is expensive), never on the event loop.
 * The store is swapped atomically on reload; lookups copy what they need.
 */
#ifndef PGMUX_SECRETS_H
#define PGMUX_SECRETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"

/* A copy of one user's credentials, owned by whoever holds it. */
struct secret {
	char *username;
	char *password; /* plaintext: pgmux needs it to log in to the backend */
	char *dbname;   /* optional fields of the secret, NULL when absent */
	char *host;
	int port;       /* 0 when absent */
	struct scram_verifier scram; /* computed once per password (PBKDF2 is expensive) */
};

/*
 * Parse one secret from JSON text. Returns 0 and fills every field of out
 * but the SCRAM verifier, or -1 with a reason in err that never contains the
 * password.
 */
int secret_parse_json(const char *json, size_t len, struct secret *out, char *err, size_t errlen);

/*
 * Give s a fresh random salt and the SCRAM verifier of its password for it
 * (a PBKDF2 of SCRAM_DEFAULT_ITERATIONS rounds). Returns 0, or -1 with a
 * reason in err.
 */
int secret_compute_verifier(struct secret *s, char *err, size_t errlen);

/* Wipe the password and keys, free the strings. */
void secret_clear(struct secret *s);

/* Deep copy. */
void secret_copy(struct secret *dst, const struct secret *src);

/*
 * (Re)load every *.json file of dir into a new store and make it current.
 * Bad files are logged (file name and reason) and skipped; a user that keeps
 * the same password keeps its SCRAM salt and keys (no PBKDF2 on reload).
 * Returns the number of users loaded, or -1 when dir cannot be read (the old
 * store then stays current) with the reason in err. An empty dir means no
 * directory (every secret comes from Secrets Manager): 0.
 */
int secrets_reload(const char *dir, char *err, size_t errlen);

/*
 * Replace the secrets that come from AWS Secrets Manager (secretsmgr.c) with
 * copies of entries[0..count), verifiers included, and make the store
 * current at once: the users of secrets_dir and these together, a user in
 * both taking this secret. A later secrets_reload() keeps them. Thread safe.
 */
void secrets_set_managed(const struct secret *entries, size_t count);

/* Copy the current secret for user into out; false when there is none. Thread safe. */
bool secrets_find(const char *user, struct secret *out);

/*
 * Copy the secret of the only user in the store; false when there are none or
 * several (the health checks then need health_check_user: which password
 * pgmux sends must never depend on file names). Thread safe.
 */
bool secrets_find_only(struct secret *out);

/* How many users the current store holds. */
int secrets_count(void);

/* How many files the last secrets_reload() skipped as bad (pgmux --check fails on any). */
int secrets_skipped(void);

/* Drop the current store (at exit). */
void secrets_shutdown(void);

#endif
