/*
 * prepared.h: protocol-level prepared statements in transaction pooling.
 * A client's named statement is kept as a Parse message rewritten to a
 * server-side name derived from the statement itself (a hash of its text and
 * parameter types), so every backend that has prepared it under that name can
 * serve any client that uses it, and a backend that has not is sent the Parse
 * first. The replies pgmux causes or hides are tracked in a reply queue (see
 * server.h), so the client sees exactly the replies it would see directly.
 */
#ifndef PGMUX_PREPARED_H
#define PGMUX_PREPARED_H

#include <stddef.h>
#include <stdint.h>

#include "iobuf.h"

#define PREPARED_NAME_LEN 31 /* "pgmux_" + 24 hex digits + NUL = 31 bytes */
/* A statement pgmux prepares only to have a backend judge a text, closed again at once. */
#define PREPARED_CHECK_NAME "pgmux_check"

struct prepared_stmt {
	char server_name[PREPARED_NAME_LEN + 1];
	uint8_t *parse;   /* a complete Parse message naming server_name */
	size_t parse_len;
	bool sets_session; /* its text SETs an untracked parameter or runs code pgmux cannot read: each
	                    * run may change the session */
	bool writes;       /* its text writes (SQL_EFFECT_WRITE): a run is opaque while the pool's writes are */
	bool listen;       /* a LISTEN or UNLISTEN pgmux answered (relay_listen.c): no backend has it */
};

/*
 * Build a statement from the body of a client's Parse message. *client_name
 * points into body. Returns NULL when the message is malformed (errno
 * EINVAL) or memory ran out (errno ENOMEM).
 */
struct prepared_stmt *prepared_from_parse(const uint8_t *body, size_t len, const char **client_name);
void prepared_free(void *stmt);

/* Append a Parse of st's text and parameter types under another server-side name. */
void prepared_put_parse_as(struct iobuf *out, const struct prepared_stmt *st, const char *server_name);

/* Append a Parse of st's text (or, with st NULL, of a bare SELECT) as PREPARED_CHECK_NAME. */
void prepared_put_check(struct iobuf *out, const struct prepared_stmt *st);

/*
 * Append to out a copy of a Bind ('B') or Describe/Close ('D'/'C' with 'S')
 * message whose statement name is replaced by server_name. body is the
 * original body; name_offset and name_len locate the statement name in it.
 */
void prepared_rewrite(struct iobuf *out, char type, const uint8_t *body, size_t len, size_t name_offset,
		      size_t name_len, const char *server_name);

/* A Close('S') message for a server-side name (evicting it). */
void prepared_put_close(struct iobuf *out, const char *server_name);

#endif
