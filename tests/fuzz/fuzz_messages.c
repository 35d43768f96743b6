/*
 * fuzz_messages.c: libFuzzer harness for what pgmux reads inside the messages
 * of a logged-in session. The input's first byte picks the direction; the
 * rest is a stream of messages (type byte, int32 length, body).
 *
 * Frontend (even first byte): each header is checked as relay_check_header()
 * does (a frontend type, a length of at least 4, at most max_packet_size) and
 * the stream ends at the first refusal, as the session would. Whole messages
 * then go through the functions reply_frontend() uses in transaction
 * pooling: the SQL scan of a Query or Parse, prepared_from_parse() for a named
 * Parse, and prepared_rewrite() of the statement name in a Bind, Describe or
 * Close. Each rewrite is read back: it must be a well-framed message that
 * differs from the client's only in the statement name.
 *
 * Backend (odd first byte): ErrorResponse and NoticeResponse bodies go
 * through proto_parse_error(), which server.c uses to log and re-raise a
 * backend's errors; every field it returns must lie inside the body.
 *
 * The framing loop itself (relay_to_backend()) works on a live session and is
 * exercised by the integration suite's protocol fuzz test instead.
 */
#include <string.h>

#include "fuzz.h"
#include "iobuf.h"
#include "params.h"
#include "prepared.h"
#include "proto.h"
#include "sqlscan.h"

#define MAX_PACKET_SIZE (1024 * 1024) /* max_packet_size's default */
#define MAX_STATEMENTS 8

struct named {
	char client_name[64];
	struct prepared_stmt *st;
};

static void scan(const char *sql, size_t len)
{
	struct sql_scan_result result;

	sql_scan(sql, len, params_carried_names, SQL_SCAN_CARRY_SETS, &result);
	FUZZ_CHECK(result.n_custom >= 0 && result.n_custom <= SQL_SCAN_MAX_CUSTOM, "n_custom %d", result.n_custom);
	FUZZ_CHECK(memchr(result.pin_detail, '\0', sizeof(result.pin_detail)) != NULL, "pin detail unterminated");
}

/* The message at out must be one frame of the given type whose body is prefix, name and NUL, suffix. */
static void check_rewrite(const struct iobuf *out, char type, const uint8_t *prefix, size_t prefix_len,
			  const char *name, const uint8_t *suffix, size_t suffix_len)
{
	const uint8_t *p = iobuf_head(out);
	size_t name_len = strlen(name);

	FUZZ_CHECK(iobuf_len(out) == PROTO_HEADER_LEN + prefix_len + name_len + 1 + suffix_len, "rewrite size %zu",
		   iobuf_len(out));
	FUZZ_CHECK(p[0] == (uint8_t)type && get_u32(p + 1) == iobuf_len(out) - 1, "rewrite header");
	p += PROTO_HEADER_LEN;
	FUZZ_CHECK(prefix_len == 0 || memcmp(p, prefix, prefix_len) == 0, "bytes before the name changed");
	p += prefix_len;
	FUZZ_CHECK(memcmp(p, name, name_len + 1) == 0, "name not replaced");
	p += name_len + 1;
	FUZZ_CHECK(suffix_len == 0 || memcmp(p, suffix, suffix_len) == 0, "bytes after the name changed");
}

static void parse_message(const uint8_t *body, size_t len, struct named *named, int *n_named)
{
	struct msg_reader r;
	const char *name, *query, *client_name = NULL;
	struct prepared_stmt *st, *again;
	struct iobuf out;
	size_t rest;

	msg_reader_init(&r, body, len);
	name = msg_read_str(&r);
	query = msg_read_str(&r);
	if (name && query)
		scan(query, strlen(query));
	if (name == NULL || name[0] == '\0')
		return;
	st = prepared_from_parse(body, len, &client_name);
	if (st == NULL)
		return;
	FUZZ_CHECK(client_name == name, "client name");
	FUZZ_CHECK(strlen(st->server_name) == PREPARED_NAME_LEN - 1 && strncmp(st->server_name, "pgmux_", 6) == 0,
		   "server name %s", st->server_name);
	/* Its own Parse names it and carries the client's text and types unchanged. */
	rest = (size_t)((const uint8_t *)query - body);
	iobuf_init(&out);
	iobuf_append(&out, st->parse, st->parse_len);
	check_rewrite(&out, FE_PARSE, NULL, 0, st->server_name, body + rest, len - rest);
	iobuf_reset(&out);
	prepared_put_parse_as(&out, st, PREPARED_CHECK_NAME);
	check_rewrite(&out, FE_PARSE, NULL, 0, PREPARED_CHECK_NAME, body + rest, len - rest);
	iobuf_free(&out);
	/* The same text and types always give the same server name. */
	again = prepared_from_parse(body, len, &client_name);
	FUZZ_CHECK(again && strcmp(again->server_name, st->server_name) == 0, "unstable server name");
	prepared_free(again);

	if (*n_named < MAX_STATEMENTS) {
		snprintf(named[*n_named].client_name, sizeof(named[*n_named].client_name), "%s", name);
		named[(*n_named)++].st = st;
	} else {
		prepared_free(st);
	}
}

static const char *server_name_of(const char *name, const struct named *named, int n_named)
{
	for (int i = 0; i < n_named; i++)
		if (strcmp(named[i].client_name, name) == 0)
			return named[i].st->server_name;
	return "pgmux_000000000000000000000000";
}

static void rewrite_message(uint8_t type, const uint8_t *body, size_t len, const struct named *named, int n_named)
{
	struct msg_reader r;
	const char *name, *server_name;
	size_t offset;
	struct iobuf out;
	uint8_t kind;

	msg_reader_init(&r, body, len);
	if (type == FE_BIND) {
		if (msg_read_str(&r) == NULL || (name = msg_read_str(&r)) == NULL || name[0] == '\0')
			return;
	} else if (msg_read_u8(&r, &kind) != 0 || kind != 'S' || (name = msg_read_str(&r)) == NULL ||
		   name[0] == '\0' || r.pos != len) {
		return;
	}
	offset = (size_t)((const uint8_t *)name - body);
	server_name = server_name_of(name, named, n_named);
	iobuf_init(&out);
	prepared_rewrite(&out, (char)type, body, len, offset, strlen(name), server_name);
	check_rewrite(&out, (char)type, body, offset, server_name, body + offset + strlen(name) + 1,
		      len - offset - strlen(name) - 1);
	iobuf_free(&out);
}

static void frontend(const uint8_t *data, size_t size)
{
	struct named named[MAX_STATEMENTS];
	int n_named = 0;

	while (size >= PROTO_HEADER_LEN) {
		uint8_t type = data[0];
		uint32_t mlen = get_u32(data + 1);
		uint8_t *body;
		size_t blen;

		if (!proto_valid_frontend_type(type) || type == FE_PASSWORD || mlen < 4 || mlen - 4 > MAX_PACKET_SIZE)
			break;
		if (size - 1 < mlen)
			break; /* the rest has not arrived */
		blen = mlen - 4;
		/* An exact copy, so that AddressSanitizer sees a read past the body. */
		body = malloc(blen ? blen : 1);
		memcpy(body, data + PROTO_HEADER_LEN, blen);
		switch (type) {
		case FE_QUERY:
			if (blen > 0 && memchr(body, '\0', blen) == body + blen - 1)
				scan((const char *)body, blen - 1);
			break;
		case FE_PARSE:
			parse_message(body, blen, named, &n_named);
			break;
		case FE_BIND:
		case FE_DESCRIBE:
		case FE_CLOSE:
			rewrite_message(type, body, blen, named, n_named);
			break;
		default:
			break;
		}
		free(body);
		data += 1 + (size_t)mlen;
		size -= 1 + (size_t)mlen;
	}
	for (int i = 0; i < n_named; i++)
		prepared_free(named[i].st);
}

static bool inside(const char *field, const uint8_t *body, size_t len)
{
	return field == NULL ||
	       ((const uint8_t *)field >= body && (const uint8_t *)field + strlen(field) < body + len);
}

static void backend(const uint8_t *data, size_t size)
{
	while (size >= PROTO_HEADER_LEN) {
		uint8_t type = data[0];
		uint32_t mlen = get_u32(data + 1);
		struct error_fields fields;
		uint8_t *body;
		size_t blen;

		if (!proto_valid_backend_type(type) || mlen < 4 || size - 1 < mlen)
			break;
		blen = mlen - 4;
		body = malloc(blen ? blen : 1);
		memcpy(body, data + PROTO_HEADER_LEN, blen);
		if ((type == BE_ERROR_RESPONSE || type == BE_NOTICE_RESPONSE) &&
		    proto_parse_error(body, blen, &fields) == 0) {
			FUZZ_CHECK(inside(fields.severity, body, blen) && inside(fields.sqlstate, body, blen) &&
					   inside(fields.message, body, blen) && inside(fields.detail, body, blen),
				   "a field outside the body");
			FUZZ_CHECK(blen > 0 && body[blen - 1] == '\0', "accepted an unterminated field list");
		}
		free(body);
		data += 1 + (size_t)mlen;
		size -= 1 + (size_t)mlen;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1)
		backend(data + 1, size - 1);
	else
		frontend(data + 1, size - 1);
	return 0;
}
