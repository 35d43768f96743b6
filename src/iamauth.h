/*
 * iamauth.h: RDS IAM authentication for server connections. With
 * server_auth = iam, the password libpq sends is an IAM token (sigv4.c) for
 * the instance's host and port, the user and the region, signed with the
 * current AWS credentials (aws.c). Making one is a few HMACs, cheap enough
 * for a worker's loop; a token is kept and used again for 10 of its 15
 * minutes. Nothing here does I/O.
 */
#ifndef PGMUX_IAMAUTH_H
#define PGMUX_IAMAUTH_H

#include <stdint.h>

struct config;

/*
 * The password for a server login as user on host:port: password itself
 * with server_auth = password; with iam, a token, in a buffer of the calling
 * thread's that stays valid until that thread's next call (libpq copies it),
 * or NULL (logged) when none can be made, which makes the login fail.
 */
const char *iamauth_password(const struct config *cfg, const char *host, int port, const char *user,
			     const char *password);

struct iamauth_stats {
	uint64_t tokens_made;
	uint64_t tokens_reused;
	uint64_t failures;
};

void iamauth_get_stats(struct iamauth_stats *out);

#endif
