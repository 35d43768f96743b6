/*
 * prepared.c: rewriting of prepared-statement messages (see prepared.h).
 */
#include "prepared.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "proto.h"
#include "util.h"

static void prepared_name(const uint8_t *query_and_types, size_t len, char out[PREPARED_NAME_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t digest[32];
	unsigned int dlen = 0;

	/* 96 bits of SHA-256: a collision among even millions of statements is out of reach. */
	EVP_Digest(query_and_types, len, digest, &dlen, EVP_sha256(), NULL);
	memcpy(out, "pgmux_", 6);
	for (int i = 0; i < 12; i++) {
		out[6 + 2 * i] = hex[digest[i] >> 4];
		out[7 + 2 * i] = hex[digest[i] & 15];
	}
	out[PREPARED_NAME_LEN - 1] = '\0';
	out[PREPARED_NAME_LEN] = '\0';
}

struct prepared_stmt *prepared_from_parse(const uint8_t *body, size_t len, const char **client_name)
{
	struct msg_reader r;
	const char *name, *query;
	int16_t ntypes;
	size_t rest_offset;
	struct prepared_stmt *st;
	struct iobuf buf;
	size_t begin;

	msg_reader_init(&r, body, len);
	name = msg_read_str(&r);
	query = msg_read_str(&r);
	if (name == NULL || query == NULL || msg_read_i16(&r, &ntypes) != 0 || ntypes < 0 ||
	    msg_read_bytes(&r, (size_t)ntypes * 4) == NULL || r.pos != len) {
		errno = EINVAL;
		return NULL;
	}
	*client_name = name;
	/* The query text, its NUL and the parameter types identify the statement. */
	rest_offset = (size_t)((const uint8_t *)query - body);
	st = xcalloc(1, sizeof(*st));
	prepared_name(body + rest_offset, len - rest_offset, st->server_name);

	iobuf_init(&buf);
	begin = proto_begin(&buf, FE_PARSE);
	iobuf_append_str(&buf, st->server_name);
	iobuf_append(&buf, body + rest_offset, len - rest_offset);
	proto_end(&buf, begin);
	st->parse_len = iobuf_len(&buf);
	st->parse = buf.failed ? NULL : malloc(st->parse_len);
	if (st->parse == NULL) {
		/* Out of memory: the caller closes the client (see iobuf.h). */
		iobuf_free(&buf);
		free(st);
		errno = ENOMEM;
		return NULL;
	}
	memcpy(st->parse, iobuf_head(&buf), st->parse_len);
	iobuf_free(&buf);
	return st;
}

void prepared_put_parse_as(struct iobuf *out, const struct prepared_stmt *st, const char *server_name)
{
	/* st->parse: type, length, st->server_name and its NUL, then the text, its NUL and the types. */
	size_t rest = PROTO_HEADER_LEN + strlen(st->server_name) + 1;
	size_t begin = proto_begin(out, FE_PARSE);

	iobuf_append_str(out, server_name);
	iobuf_append(out, st->parse + rest, st->parse_len - rest);
	proto_end(out, begin);
}

void prepared_put_check(struct iobuf *out, const struct prepared_stmt *st)
{
	size_t begin;

	if (st) {
		prepared_put_parse_as(out, st, PREPARED_CHECK_NAME);
		return;
	}
	begin = proto_begin(out, FE_PARSE);
	iobuf_append_str(out, PREPARED_CHECK_NAME);
	iobuf_append_str(out, "SELECT");
	iobuf_append_u16(out, 0); /* no parameter types */
	proto_end(out, begin);
}

void prepared_free(void *p)
{
	struct prepared_stmt *st = p;

	if (st == NULL)
		return;
	free(st->parse);
	free(st);
}

void prepared_rewrite(struct iobuf *out, char type, const uint8_t *body, size_t len, size_t name_offset,
		      size_t name_len, const char *server_name)
{
	size_t begin = proto_begin(out, type);

	iobuf_append(out, body, name_offset);
	iobuf_append_str(out, server_name);
	iobuf_append(out, body + name_offset + name_len + 1, len - name_offset - name_len - 1);
	proto_end(out, begin);
}

void prepared_put_close(struct iobuf *out, const char *server_name)
{
	size_t begin = proto_begin(out, FE_CLOSE);

	iobuf_append_u8(out, 'S');
	iobuf_append_str(out, server_name);
	proto_end(out, begin);
}
