/*
 * secretsmgr.h: AWS Secrets Manager as a source of secrets. The secrets that
 * secrets_manager_secrets names are read with GetSecretValue (AWSCURRENT) at
 * start-up, then again every secrets_refresh_interval on the aws thread; a
 * changed secret goes to the store (secrets_set_managed()) at once, so the
 * next client login and the next server connection use it, with no reload.
 * A failed refresh keeps the last good value, is logged and counted.
 *
 * It also starts what IAM authentication needs (aws_init()) when
 * server_auth = iam, so that main.c has one call to make.
 */
#ifndef PGMUX_SECRETSMGR_H
#define PGMUX_SECRETSMGR_H

#include <stddef.h>
#include <stdint.h>

struct config;

/*
 * At start-up, before any thread: when cfg names Secrets Manager secrets or
 * asks for IAM authentication, set up AWS (region, credentials) and read
 * every secret, blocking. changed (may be NULL) is called on the aws thread
 * after a refresh changed a secret: the pools take the new passwords.
 * Returns 0 (also when cfg needs no AWS), or -1 with why in err, naming the
 * secret that could not be read. The refreshes start with aws_thread_start().
 */
int secretsmgr_start(const struct config *cfg, void (*changed)(void), char *err, size_t errlen);

/* Read the secrets again soon, on the aws thread (SIGHUP). Any thread; nothing when not in use. */
void secretsmgr_refresh_soon(void);

/* Free what the module holds (at exit, after aws_shutdown()). */
void secretsmgr_shutdown(void);

/* Counters for /metrics. */
struct secretsmgr_stats {
	uint64_t reads;         /* GetSecretValue calls that answered with the secret */
	uint64_t read_failures; /* calls that failed (the last good value stayed) */
	uint64_t changes;       /* secrets found changed by a refresh */
	int secrets;            /* secrets named in secrets_manager_secrets */
};

void secretsmgr_get_stats(struct secretsmgr_stats *out);

#endif
