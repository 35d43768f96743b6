/*
 * fuzz_startup.c: libFuzzer harness for the first packet a client sends. The
 * input is the packet as it arrives on the socket (int32 length, int32 code,
 * body). SSLRequest, GSSENCRequest and CancelRequest have fixed layouts that
 * login_process_startup() (login.c) checks by length alone, so what is
 * fuzzed here is the one real parser, proto_parse_startup(), fed with every
 * code the input brings (those three included: they must be refused as
 * protocol versions), and what pgmux builds from its result
 * (NegotiateProtocolVersion). The checks below are the parser's contract.
 */
#include <string.h>

#include "fuzz.h"
#include "iobuf.h"
#include "proto.h"
#include "util.h"

static void check_negotiate(const struct startup_packet *sp)
{
	struct iobuf out;
	const uint8_t *p;
	struct msg_reader r;
	int32_t version, count;

	iobuf_init(&out);
	proto_put_negotiate_version(&out, 0, sp->unknown_protocol_options, sp->n_unknown_protocol_options);
	p = iobuf_head(&out);
	FUZZ_CHECK(p[0] == BE_NEGOTIATE_PROTOCOL, "type %d", p[0]);
	FUZZ_CHECK(get_u32(p + 1) + 1 == iobuf_len(&out), "length %u of %zu bytes", get_u32(p + 1), iobuf_len(&out));
	msg_reader_init(&r, p + PROTO_HEADER_LEN, iobuf_len(&out) - PROTO_HEADER_LEN);
	FUZZ_CHECK(msg_read_i32(&r, &version) == 0 && version == (int32_t)PROTO_VERSION(3, 0), "version");
	FUZZ_CHECK(msg_read_i32(&r, &count) == 0 && count == sp->n_unknown_protocol_options, "count");
	for (int i = 0; i < count; i++) {
		const char *name = msg_read_str(&r);

		FUZZ_CHECK(name != NULL && strcmp(name, sp->unknown_protocol_options[i]) == 0, "option %d", i);
	}
	FUZZ_CHECK(!r.bad && r.pos == r.len, "trailing bytes");
	iobuf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct startup_packet sp;
	char err[256];
	uint32_t len, code;
	uint8_t *body;
	size_t body_len;

	if (size < 8)
		return 0;
	len = get_u32(data);
	code = get_u32(data + 4);
	/* client.c refuses anything outside these bounds before parsing; so does the harness. */
	if (len < 8 || len > PROTO_MAX_STARTUP_PACKET || len > size)
		return 0;
	/* A copy of exactly the body, so that AddressSanitizer sees any read past its end. */
	body_len = len - 8;
	body = malloc(body_len ? body_len : 1);
	memcpy(body, data + 8, body_len);

	err[0] = '\0';
	if (proto_parse_startup(code, body, body_len, &sp, err, sizeof(err)) != 0) {
		FUZZ_CHECK(err[0] != '\0', "a refusal must say why");
		FUZZ_CHECK(sp.params == NULL && sp.n_params == 0 && sp.unknown_protocol_options == NULL,
			   "a refused packet leaves nothing allocated");
		free(body);
		return 0;
	}
	FUZZ_CHECK(code >> 16 == 3, "accepted protocol %u.%u", code >> 16, code & 0xffff);
	FUZZ_CHECK(code != PROTO_SSL_REQUEST && code != PROTO_GSSENC_REQUEST && code != PROTO_CANCEL_REQUEST,
		   "a request code taken as a protocol version");
	FUZZ_CHECK(sp.version == code, "version");
	FUZZ_CHECK(sp.user != NULL && sp.user[0] != '\0', "no user");
	FUZZ_CHECK(sp.database != NULL && sp.database[0] != '\0', "no database");
	FUZZ_CHECK(sp.n_params + sp.n_unknown_protocol_options <= PROTO_MAX_STARTUP_PARAMS, "%d parameters",
		   sp.n_params);
	FUZZ_CHECK(proto_startup_get(&sp, "user") == sp.user, "user is not the user parameter");
	for (int i = 0; i < sp.n_params; i++) {
		size_t name_len = strlen(sp.params[i].name);

		FUZZ_CHECK(name_len > 0 && name_len <= PROTO_MAX_PARAM_NAME_LEN, "name length %zu", name_len);
		FUZZ_CHECK(strlen(sp.params[i].value) <= PROTO_MAX_PARAM_VALUE_LEN, "value length");
		FUZZ_CHECK(strncmp(sp.params[i].name, "_pq_.", 5) != 0, "protocol option among the parameters");
		for (int j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(sp.params[i].name, sp.params[j].name) != 0, "duplicate %s", sp.params[i].name);
		/* Every name and value came from the body. */
		FUZZ_CHECK(memmem(body, body_len, sp.params[i].name, name_len + 1) != NULL, "name not in the packet");
	}
	for (int i = 0; i < sp.n_unknown_protocol_options; i++)
		FUZZ_CHECK(strncmp(sp.unknown_protocol_options[i], "_pq_.", 5) == 0, "option %s",
			   sp.unknown_protocol_options[i]);
	check_negotiate(&sp);
	proto_startup_free(&sp);
	FUZZ_CHECK(sp.params == NULL && sp.n_params == 0, "freed packet still points somewhere");
	free(body);
	return 0;
}
