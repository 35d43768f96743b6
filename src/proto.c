/*
 * proto.c: byte-level PostgreSQL protocol 3.0 support (see proto.h): the
 * StartupMessage parser, a bounds-checked reader for message bodies, the
 * ErrorResponse field parser and the builders for every message pgmux writes.
 */
#include "proto.h"
#include "util.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PQ_OPTION_PREFIX "_pq_."

/* Where one name/value pair sits inside the startup body; found by the first pass. */
struct param_span {
	size_t name_off;
	size_t name_len;
	size_t value_off;
	size_t value_len;
};

/*
 * Walk the body once and record where each pair lies, checking the layout and
 * the limits. Nothing is allocated here so that every rejection is a plain
 * return; the copies are made only once the whole packet is known to be good.
 * The caller has already checked that the body ends with a NUL, so every
 * strlen() below stops inside the body.
 */
static int find_params(const uint8_t *body, size_t len, struct param_span *spans, int *n_spans, char *err,
		       size_t errlen)
{
	size_t off = 0;
	int n = 0;

	for (;;) {
		const char *name = (const char *)body + off;
		size_t name_len = strlen(name);
		size_t value_off, value_len;

		if (name_len == 0) {
			/* The empty name is the list terminator; it must be the very last byte. */
			if (off != len - 1) {
				error_printf(err, errlen, "invalid startup packet layout: data after the terminator");
				return -1;
			}
			break;
		}
		if (name_len > PROTO_MAX_PARAM_NAME_LEN) {
			error_printf(err, errlen, "startup parameter name is too long (at most %d bytes)",
				  PROTO_MAX_PARAM_NAME_LEN);
			return -1;
		}
		value_off = off + name_len + 1;
		if (value_off >= len) {
			/* The name's NUL was the final byte: no value and no terminator. */
			error_printf(err, errlen, "invalid startup packet layout: parameter \"%s\" has no value", name);
			return -1;
		}
		value_len = strlen((const char *)body + value_off);
		if (value_off + value_len + 1 >= len) {
			/* The value used up the final NUL, so the list itself is unterminated. */
			error_printf(err, errlen, "invalid startup packet layout: expected terminator as last byte");
			return -1;
		}
		if (value_len > PROTO_MAX_PARAM_VALUE_LEN) {
			error_printf(err, errlen, "value of startup parameter \"%s\" is too long (at most %d bytes)", name,
				  PROTO_MAX_PARAM_VALUE_LEN);
			return -1;
		}
		if (n == PROTO_MAX_STARTUP_PARAMS) {
			error_printf(err, errlen, "too many startup parameters (at most %d)", PROTO_MAX_STARTUP_PARAMS);
			return -1;
		}
		/*
		 * PostgreSQL lets a later duplicate win silently. A proxy that keys
		 * pools on user and database must not guess which one the server
		 * will use, so duplicates are refused outright.
		 */
		for (int i = 0; i < n; i++) {
			if (spans[i].name_len == name_len && memcmp(body + spans[i].name_off, name, name_len) == 0) {
				error_printf(err, errlen, "duplicate startup parameter \"%s\"", name);
				return -1;
			}
		}
		spans[n].name_off = off;
		spans[n].name_len = name_len;
		spans[n].value_off = value_off;
		spans[n].value_len = value_len;
		n++;
		off = value_off + value_len + 1;
	}
	*n_spans = n;
	return 0;
}

static bool is_protocol_option(const uint8_t *body, const struct param_span *span)
{
	size_t prefix_len = strlen(PQ_OPTION_PREFIX);

	return span->name_len >= prefix_len && memcmp(body + span->name_off, PQ_OPTION_PREFIX, prefix_len) == 0;
}

int proto_parse_startup(uint32_t version, const uint8_t *body, size_t len, struct startup_packet *out,
			char *err, size_t errlen)
{
	struct param_span spans[PROTO_MAX_STARTUP_PARAMS];
	int n_spans = 0, n_options = 0;
	const char *user = NULL, *database = NULL;

	memset(out, 0, sizeof(*out));
	if (version >> 16 != 3) {
		error_printf(err, errlen, "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0",
			  (unsigned)(version >> 16), (unsigned)(version & 0xffff));
		return -1;
	}
	if (len == 0 || body[len - 1] != '\0') {
		error_printf(err, errlen, "invalid startup packet layout: expected terminator as last byte");
		return -1;
	}
	if (find_params(body, len, spans, &n_spans, err, errlen) < 0)
		return -1;

	size_t strings = 0;
	char *text;

	for (int i = 0; i < n_spans; i++) {
		if (is_protocol_option(body, &spans[i]))
			n_options++;
		else
			strings += spans[i].name_len + 1 + spans[i].value_len + 1;
	}
	/*
	 * The parameters and their text in one block: a logged-in client keeps
	 * them for good, and one allocation costs one malloc header, not two
	 * per parameter.
	 */
	if (n_spans - n_options > 0) {
		out->params = malloc((size_t)(n_spans - n_options) * sizeof(*out->params) + strings);
		if (out->params == NULL)
			goto oom;
	}
	text = out->params ? (char *)(out->params + (n_spans - n_options)) : NULL;
	if (n_options > 0) {
		out->unknown_protocol_options = calloc((size_t)n_options, sizeof(*out->unknown_protocol_options));
		if (out->unknown_protocol_options == NULL)
			goto oom;
	}

	for (int i = 0; i < n_spans; i++) {
		const char *name = (const char *)body + spans[i].name_off;
		const char *value = (const char *)body + spans[i].value_off;
		struct startup_param *param;

		/*
		 * _pq_.* options ask for protocol extensions pgmux does not speak;
		 * the caller answers them with NegotiateProtocolVersion, and they
		 * must never reach a backend as if they were settings.
		 */
		if (is_protocol_option(body, &spans[i])) {
			char *copy = strdup(name);

			if (copy == NULL)
				goto oom;
			out->unknown_protocol_options[out->n_unknown_protocol_options++] = copy;
			continue;
		}
		param = &out->params[out->n_params++];
		param->name = text;
		memcpy(text, name, spans[i].name_len + 1);
		text += spans[i].name_len + 1;
		param->value = text;
		memcpy(text, value, spans[i].value_len + 1);
		text += spans[i].value_len + 1;
		if (strcmp(name, "user") == 0)
			user = param->value;
		else if (strcmp(name, "database") == 0)
			database = param->value;
	}

	/* Like PostgreSQL, an empty user is as good as none, and an empty database means the user's. */
	if (user == NULL || user[0] == '\0') {
		error_printf(err, errlen, "no PostgreSQL user name specified in startup packet");
		proto_startup_free(out);
		return -1;
	}
	out->version = version;
	out->user = user;
	out->database = (database != NULL && database[0] != '\0') ? database : user;
	return 0;

oom:
	error_printf(err, errlen, "out of memory");
	proto_startup_free(out);
	return -1;
}

void proto_startup_free(struct startup_packet *sp)
{
	if (sp == NULL)
		return;
	free(sp->params); /* and their text, in the same block */
	for (int i = 0; i < sp->n_unknown_protocol_options; i++)
		free(sp->unknown_protocol_options[i]);
	free(sp->unknown_protocol_options);
	memset(sp, 0, sizeof(*sp));
}

const char *proto_startup_get(const struct startup_packet *sp, const char *name)
{
	for (int i = 0; i < sp->n_params; i++) {
		if (strcmp(sp->params[i].name, name) == 0)
			return sp->params[i].value;
	}
	return NULL;
}

/*
 * Message body reader. Once a getter fails the reader stays bad, so a caller
 * can pull several fields and check r->bad once at the end.
 */

void msg_reader_init(struct msg_reader *r, const uint8_t *body, size_t len)
{
	/* An empty body may come as NULL; point at something so a zero-length read still succeeds. */
	static const uint8_t empty[1];

	r->p = body != NULL ? body : empty;
	r->len = body != NULL ? len : 0;
	r->pos = 0;
	r->bad = false;
}

/* Claim n bytes at the cursor, or mark the reader bad if fewer remain. */
static const uint8_t *reader_take(struct msg_reader *r, size_t n)
{
	const uint8_t *p;

	if (r->bad || r->len - r->pos < n) {
		r->bad = true;
		return NULL;
	}
	p = r->p + r->pos;
	r->pos += n;
	return p;
}

int msg_read_u8(struct msg_reader *r, uint8_t *out)
{
	const uint8_t *p = reader_take(r, 1);

	if (p == NULL)
		return -1;
	*out = p[0];
	return 0;
}

/* Wire integers are two's complement; convert without relying on implementation-defined casts. */
int msg_read_i16(struct msg_reader *r, int16_t *out)
{
	const uint8_t *p = reader_take(r, 2);
	uint16_t v;

	if (p == NULL)
		return -1;
	v = get_u16(p);
	*out = v <= INT16_MAX ? (int16_t)v : (int16_t)(-(int32_t)(UINT16_MAX - v) - 1);
	return 0;
}

int msg_read_i32(struct msg_reader *r, int32_t *out)
{
	const uint8_t *p = reader_take(r, 4);
	uint32_t v;

	if (p == NULL)
		return -1;
	v = get_u32(p);
	*out = v <= INT32_MAX ? (int32_t)v : -(int32_t)(UINT32_MAX - v) - 1;
	return 0;
}

const char *msg_read_str(struct msg_reader *r)
{
	const uint8_t *start, *nul;

	if (r->bad)
		return NULL;
	start = r->p + r->pos;
	nul = memchr(start, '\0', r->len - r->pos);
	if (nul == NULL) {
		r->bad = true;
		return NULL;
	}
	r->pos += (size_t)(nul - start) + 1;
	return (const char *)start;
}

const uint8_t *msg_read_bytes(struct msg_reader *r, size_t n)
{
	return reader_take(r, n);
}

bool proto_parse_notification(const uint8_t *body, size_t len, const char **channel, const char **payload)
{
	const char *p = (const char *)body + 4, *end = (const char *)body + len, *z;

	if (len < 6 || (z = memchr(p, '\0', (size_t)(end - p))) == NULL || memchr(z + 1, '\0', (size_t)(end - z - 1)) == NULL)
		return false;
	*channel = p;
	*payload = z + 1;
	return true;
}

int proto_parse_error(const uint8_t *body, size_t len, struct error_fields *out)
{
	struct msg_reader r;
	const char *localized_severity = NULL, *severity = NULL;

	memset(out, 0, sizeof(*out));
	msg_reader_init(&r, body, len);
	for (;;) {
		uint8_t code;
		const char *value;

		if (msg_read_u8(&r, &code) < 0)
			return -1; /* the list must end with a zero byte */
		if (code == 0)
			break;
		value = msg_read_str(&r);
		if (value == NULL)
			return -1;
		switch (code) {
		case 'S':
			localized_severity = value;
			break;
		case 'V':
			severity = value;
			break;
		case 'C':
			out->sqlstate = value;
			break;
		case 'M':
			out->message = value;
			break;
		case 'D':
			out->detail = value;
			break;
		default:
			/* Hints, positions, source locations...: not needed, and new codes may appear. */
			break;
		}
	}
	if (r.pos != r.len)
		return -1; /* bytes after the terminator: the framing is broken */
	/* 'V' is never translated, so it is the one to compare against "FATAL" or "PANIC". */
	out->severity = severity != NULL ? severity : localized_severity;
	return 0;
}

/*
 * Builders. The offset proto_begin() returns is relative to the unread start
 * of the buffer rather than to data[]: appending may slide unread bytes to the
 * front, which moves every absolute position but none of the relative ones.
 */

size_t proto_begin(struct iobuf *buf, char type)
{
	size_t offset = iobuf_len(buf);

	iobuf_append_u8(buf, (uint8_t)type);
	iobuf_append_u32(buf, 0); /* patched by proto_end() */
	return offset;
}

void proto_end(struct iobuf *buf, size_t offset)
{
	size_t msg_len;

	if (buf->failed)
		return; /* its owner closes the connection (see iobuf.h) */
	assert(offset + PROTO_HEADER_LEN <= iobuf_len(buf));
	/* The length counts itself and the body, not the type byte. */
	msg_len = iobuf_len(buf) - offset - 1;
	assert(msg_len <= INT32_MAX);
	put_u32(iobuf_head(buf) + offset + 1, (uint32_t)msg_len);
}

static void put_field(struct iobuf *buf, char code, const char *value)
{
	iobuf_append_u8(buf, (uint8_t)code);
	iobuf_append_str(buf, value);
}

/*
 * ErrorResponse and NoticeResponse share one layout. The severity goes out
 * twice: 'S' is what older clients display, 'V' is what newer ones match on;
 * pgmux does not translate, so both carry the same text.
 */
static void put_error_or_notice(struct iobuf *buf, char type, const char *severity, const char *sqlstate,
				const char *message, const char *detail, const char *hint)
{
	size_t offset = proto_begin(buf, type);

	put_field(buf, 'S', severity);
	put_field(buf, 'V', severity);
	put_field(buf, 'C', sqlstate);
	put_field(buf, 'M', message);
	if (detail != NULL)
		put_field(buf, 'D', detail);
	if (hint != NULL)
		put_field(buf, 'H', hint);
	iobuf_append_u8(buf, 0);
	proto_end(buf, offset);
}

void proto_put_error(struct iobuf *buf, const char *severity, const char *sqlstate, const char *message,
		     const char *detail, const char *hint)
{
	put_error_or_notice(buf, BE_ERROR_RESPONSE, severity, sqlstate, message, detail, hint);
}

void proto_put_auth(struct iobuf *buf, uint32_t code, const void *data, size_t len)
{
	size_t offset = proto_begin(buf, BE_AUTHENTICATION);

	iobuf_append_u32(buf, code);
	if (len > 0)
		iobuf_append(buf, data, len);
	proto_end(buf, offset);
}

void proto_put_parameter_status(struct iobuf *buf, const char *name, const char *value)
{
	size_t offset = proto_begin(buf, BE_PARAMETER_STATUS);

	iobuf_append_str(buf, name);
	iobuf_append_str(buf, value);
	proto_end(buf, offset);
}

void proto_put_backend_key(struct iobuf *buf, uint32_t pid, uint32_t key)
{
	size_t offset = proto_begin(buf, BE_BACKEND_KEY_DATA);

	iobuf_append_u32(buf, pid);
	iobuf_append_u32(buf, key);
	proto_end(buf, offset);
}

void proto_put_ready(struct iobuf *buf, char status)
{
	size_t offset = proto_begin(buf, BE_READY_FOR_QUERY);

	iobuf_append_u8(buf, (uint8_t)status);
	proto_end(buf, offset);
}

/*
 * The protocol documentation calls the first field the "newest minor
 * version", but PostgreSQL sends the full version word (major << 16 | minor)
 * and libpq compares it as such: a bare minor of 0 would read as "server
 * supports up to 0.0" and libpq would give up. So the word is 3.newest_minor.
 */
void proto_put_negotiate_version(struct iobuf *buf, uint32_t newest_minor, char *const *unknown, int n_unknown)
{
	size_t offset = proto_begin(buf, BE_NEGOTIATE_PROTOCOL);

	iobuf_append_u32(buf, PROTO_VERSION(3, newest_minor));
	iobuf_append_u32(buf, n_unknown > 0 ? (uint32_t)n_unknown : 0);
	for (int i = 0; i < n_unknown; i++)
		iobuf_append_str(buf, unknown[i]);
	proto_end(buf, offset);
}

void proto_put_query(struct iobuf *buf, const char *sql)
{
	size_t offset = proto_begin(buf, FE_QUERY);

	iobuf_append_str(buf, sql);
	proto_end(buf, offset);
}

/* A CancelRequest is a startup-style packet: no type byte, and its length is always 16. */
void proto_put_cancel_request(struct iobuf *buf, uint32_t pid, uint32_t key)
{
	iobuf_append_u32(buf, 16);
	iobuf_append_u32(buf, PROTO_CANCEL_REQUEST);
	iobuf_append_u32(buf, pid);
	iobuf_append_u32(buf, key);
}

bool proto_valid_frontend_type(uint8_t type)
{
	switch (type) {
	case FE_BIND:
	case FE_CLOSE:
	case FE_COPY_DATA:
	case FE_COPY_DONE:
	case FE_COPY_FAIL:
	case FE_DESCRIBE:
	case FE_EXECUTE:
	case FE_FLUSH:
	case FE_FUNCTION_CALL:
	case FE_PARSE:
	case FE_PASSWORD:
	case FE_QUERY:
	case FE_SYNC:
	case FE_TERMINATE:
		return true;
	default:
		return false;
	}
}

bool proto_valid_backend_type(uint8_t type)
{
	switch (type) {
	case BE_AUTHENTICATION:
	case BE_BACKEND_KEY_DATA:
	case BE_PARAMETER_STATUS:
	case BE_READY_FOR_QUERY:
	case BE_ERROR_RESPONSE:
	case BE_NOTICE_RESPONSE:
	case BE_NOTIFICATION:
	case BE_COMMAND_COMPLETE:
	case BE_ROW_DESCRIPTION:
	case BE_DATA_ROW:
	case BE_EMPTY_QUERY:
	case BE_COPY_IN:
	case BE_COPY_OUT:
	case BE_COPY_BOTH:
	case BE_NEGOTIATE_PROTOCOL:
	case '1': /* ParseComplete */
	case '2': /* BindComplete */
	case '3': /* CloseComplete */
	case 'n': /* NoData */
	case 's': /* PortalSuspended */
	case 't': /* ParameterDescription */
	case 'c': /* CopyDone */
	case 'd': /* CopyData */
	case 'V': /* FunctionCallResponse */
		return true;
	default:
		return false;
	}
}

bool proto_batch_resendable(const uint8_t *batch, size_t len)
{
	size_t at = 0;

	while (len - at >= PROTO_HEADER_LEN) {
		uint8_t type = batch[at];
		uint32_t mlen = get_u32(batch + at + 1);

		if (mlen < 4 || len - at - 1 < mlen)
			return false;
		/* A Parse's body starts with the statement's name: the unnamed one is "". */
		if (type == FE_PARSE && (mlen == 4 || batch[at + PROTO_HEADER_LEN] != '\0'))
			return false;
		if (type != FE_QUERY && type != FE_PARSE && type != FE_BIND && type != FE_DESCRIBE &&
		    type != FE_EXECUTE && type != FE_FLUSH && type != FE_SYNC)
			return false;
		at += 1 + (size_t)mlen;
		if (type == FE_QUERY || type == FE_SYNC)
			return at == len;
	}
	return false;
}
