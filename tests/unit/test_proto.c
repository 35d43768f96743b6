/*
 * test_proto.c: unit tests for src/proto.c: every builder checked byte for
 * byte against hand-written wire images, StartupMessage parsing (good and
 * malformed), the bounds-checked body reader and ErrorResponse parsing.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

/*
 * Wire images are written as string literals split at every NUL, so that an
 * escape never swallows the character after it; the literal's own trailing
 * NUL is not part of the image.
 */
#define assert_wire(buf, literal) assert_wire_bytes((buf), (const uint8_t *)(literal), sizeof(literal) - 1)
#define BODY(literal) (const uint8_t *)(literal), (sizeof(literal) - 1)

static void assert_wire_bytes(const struct iobuf *buf, const uint8_t *want, size_t want_len)
{
	cr_assert_eq(iobuf_len(buf), want_len, "message is %zu bytes, expected %zu", iobuf_len(buf), want_len);
	for (size_t i = 0; i < want_len; i++)
		cr_assert_eq(iobuf_head(buf)[i], want[i], "byte %zu is 0x%02x, expected 0x%02x", i,
			     iobuf_head(buf)[i], want[i]);
}

/* ---- builders ---- */

Test(builders, error_with_detail_and_hint)
{
	struct iobuf buf;

	iobuf_init(&buf);
	proto_put_error(&buf, "FATAL", "08P01", "bad", "det", "hint");
	assert_wire(&buf, "E\x00\x00\x00\x2a"
			  "SFATAL\0"
			  "VFATAL\0"
			  "C08P01\0"
			  "Mbad\0"
			  "Ddet\0"
			  "Hhint\0"
			  "\0");
	iobuf_free(&buf);
}

Test(builders, error_without_detail_or_hint)
{
	struct iobuf buf;

	iobuf_init(&buf);
	proto_put_error(&buf, "ERROR", "53300", "too many", NULL, NULL);
	assert_wire(&buf, "E\x00\x00\x00\x24"
			  "SERROR\0"
			  "VERROR\0"
			  "C53300\0"
			  "Mtoo many\0"
			  "\0");
	iobuf_free(&buf);
}

Test(builders, error_with_hint_only)
{
	struct iobuf buf;

	iobuf_init(&buf);
	proto_put_error(&buf, "ERROR", "0A000", "no", NULL, "h");
	assert_wire(&buf, "E\x00\x00\x00\x21"
			  "SERROR\0"
			  "VERROR\0"
			  "C0A000\0"
			  "Mno\0"
			  "Hh\0"
			  "\0");
	iobuf_free(&buf);
}

Test(builders, auth_ok)
{
	struct iobuf buf;

	iobuf_init(&buf);
	proto_put_auth(&buf, AUTH_REQ_OK, NULL, 0);
	assert_wire(&buf, "R\x00\x00\x00\x08"
			  "\x00\x00\x00\x00");
	iobuf_free(&buf);
}

Test(builders, auth_md5_with_salt)
{
	struct iobuf buf;
	static const uint8_t salt[4] = {0x01, 0x02, 0xfe, 0xff};

	iobuf_init(&buf);
	proto_put_auth(&buf, AUTH_REQ_MD5, salt, sizeof(salt));
	assert_wire(&buf, "R\x00\x00\x00\x0c"
			  "\x00\x00\x00\x05"
			  "\x01\x02\xfe\xff");
	iobuf_free(&buf);
}

Test(builders, auth_sasl_mechanism_list)
{
	struct iobuf buf;

	iobuf_init(&buf);
	/* The mechanism list is a string list ending with an empty string. */
	proto_put_auth(&buf, AUTH_REQ_SASL, "SCRAM-SHA-256\0", 15);
	assert_wire(&buf, "R\x00\x00\x00\x17"
			  "\x00\x00\x00\x0a"
			  "SCRAM-SHA-256\0"
			  "\0");
	iobuf_free(&buf);
}

Test(builders, parameter_status)
{
	struct iobuf buf;

	iobuf_init(&buf);
	proto_put_parameter_status(&buf, "client_encoding", "UTF8");
	assert_wire(&buf, "S\x00\x00\x00\x19"
			  "client_encoding\0"
			  "UTF8\0");
	iobuf_free(&buf);
}

Test(builders, parameter_status_empty_value)
{
	struct iobuf buf;

	iobuf_init(&buf);
	proto_put_parameter_status(&buf, "application_name", "");
	assert_wire(&buf, "S\x00\x00\x00\x16"
			  "application_name\0"
			  "\0");
	iobuf_free(&buf);
}

Test(builders, backend_key)
{
	struct iobuf buf;

	iobuf_init(&buf);
	proto_put_backend_key(&buf, 0x01020304u, 0xdeadbeefu);
	assert_wire(&buf, "K\x00\x00\x00\x0c"
			  "\x01\x02\x03\x04"
			  "\xde\xad\xbe\xef");
	iobuf_free(&buf);
}

Test(builders, ready_for_query)
{
	struct iobuf buf;

	iobuf_init(&buf);
	proto_put_ready(&buf, 'I');
	proto_put_ready(&buf, 'T');
	proto_put_ready(&buf, 'E');
	assert_wire(&buf, "Z\x00\x00\x00\x05"
			  "I"
			  "Z\x00\x00\x00\x05"
			  "T"
			  "Z\x00\x00\x00\x05"
			  "E");
	iobuf_free(&buf);
}

Test(builders, negotiate_version_with_options)
{
	struct iobuf buf;
	char *options[] = {"_pq_.foo", "_pq_.bar"};

	iobuf_init(&buf);
	proto_put_negotiate_version(&buf, 0, options, 2);
	/* The version word is the full 3.0, as PostgreSQL sends and libpq expects. */
	assert_wire(&buf, "v\x00\x00\x00\x1e"
			  "\x00\x03\x00\x00"
			  "\x00\x00\x00\x02"
			  "_pq_.foo\0"
			  "_pq_.bar\0");
	iobuf_free(&buf);
}

Test(builders, negotiate_version_minor_only)
{
	struct iobuf buf;

	iobuf_init(&buf);
	proto_put_negotiate_version(&buf, 0, NULL, 0);
	proto_put_negotiate_version(&buf, 2, NULL, 0);
	assert_wire(&buf, "v\x00\x00\x00\x0c"
			  "\x00\x03\x00\x00"
			  "\x00\x00\x00\x00"
			  "v\x00\x00\x00\x0c"
			  "\x00\x03\x00\x02"
			  "\x00\x00\x00\x00");
	iobuf_free(&buf);
}

Test(builders, query)
{
	struct iobuf buf;

	iobuf_init(&buf);
	proto_put_query(&buf, "SELECT 1");
	assert_wire(&buf, "Q\x00\x00\x00\x0d"
			  "SELECT 1\0");
	iobuf_free(&buf);
}

Test(builders, begin_end_custom_message)
{
	struct iobuf buf;
	size_t offset;

	iobuf_init(&buf);
	offset = proto_begin(&buf, 'C');
	cr_assert_eq(offset, 0);
	cr_assert_eq(iobuf_len(&buf), 5, "begin writes the type and a 4-byte placeholder");
	iobuf_append_str(&buf, "SELECT 1");
	proto_end(&buf, offset);
	assert_wire(&buf, "C\x00\x00\x00\x0d"
			  "SELECT 1\0");
	iobuf_free(&buf);
}

Test(builders, messages_append_after_existing_bytes)
{
	struct iobuf buf;

	iobuf_init(&buf);
	iobuf_append(&buf, "junk", 4);
	iobuf_consume(&buf, 2); /* offsets are relative to the unread start */
	proto_put_query(&buf, "");
	proto_put_ready(&buf, 'I');
	assert_wire(&buf, "nk"
			  "Q\x00\x00\x00\x05\0"
			  "Z\x00\x00\x00\x05"
			  "I");
	iobuf_free(&buf);
}

Test(builders, length_survives_buffer_slide_and_growth)
{
	struct iobuf buf;
	size_t offset;
	char big[3000];

	iobuf_init(&buf);
	/* Leave a consumed prefix so the next growth slides the unread bytes to the front. */
	iobuf_reserve(&buf, 500);
	memset(iobuf_reserve(&buf, 500), 'a', 500);
	iobuf_commit(&buf, 500);
	iobuf_consume(&buf, 498);
	offset = proto_begin(&buf, 'Q');
	cr_assert_eq(offset, 2);
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	iobuf_append_str(&buf, big); /* forces the buffer to move */
	proto_end(&buf, offset);
	cr_assert_eq(buf.start, 0, "the buffer was expected to slide");
	cr_assert_eq(iobuf_len(&buf), 2 + 5 + 3000);
	cr_assert_eq(iobuf_head(&buf)[0], 'a');
	cr_assert_eq(iobuf_head(&buf)[2], 'Q');
	cr_assert_eq(get_u32(iobuf_head(&buf) + 3), 4 + 3000);
	cr_assert_eq(iobuf_head(&buf)[2 + 5 + 2999], '\0');
	iobuf_free(&buf);
}

/* ---- startup packets ---- */

Test(startup, user_and_database)
{
	struct startup_packet sp;
	char err[256] = "";

	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0),
					 BODY("user\0"
					      "alice\0"
					      "database\0"
					      "db1\0"
					      "\0"),
					 &sp, err, sizeof(err)),
		     0, "rejected: %s", err);
	cr_assert_eq(sp.version, 0x00030000u);
	cr_assert_eq(sp.n_params, 2);
	cr_assert_str_eq(sp.params[0].name, "user");
	cr_assert_str_eq(sp.params[0].value, "alice");
	cr_assert_str_eq(sp.params[1].name, "database");
	cr_assert_str_eq(sp.params[1].value, "db1");
	cr_assert_str_eq(sp.user, "alice");
	cr_assert_str_eq(sp.database, "db1");
	cr_assert_eq(sp.user, sp.params[0].value, "user points into params");
	cr_assert_eq(sp.database, sp.params[1].value);
	cr_assert_eq(sp.n_unknown_protocol_options, 0);
	cr_assert_null(sp.unknown_protocol_options);
	proto_startup_free(&sp);
	cr_assert_null(sp.params);
	cr_assert_eq(sp.n_params, 0);
}

Test(startup, options_and_application_name_in_order)
{
	struct startup_packet sp;
	char err[256] = "";

	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0),
					 BODY("application_name\0"
					      "psql\0"
					      "user\0"
					      "bob\0"
					      "options\0"
					      "-c search_path=app -c statement_timeout=5s\0"
					      "client_encoding\0"
					      "UTF8\0"
					      "\0"),
					 &sp, err, sizeof(err)),
		     0, "rejected: %s", err);
	cr_assert_eq(sp.n_params, 4);
	cr_assert_str_eq(sp.params[0].name, "application_name");
	cr_assert_str_eq(sp.params[1].name, "user");
	cr_assert_str_eq(sp.params[2].name, "options");
	cr_assert_str_eq(sp.params[3].name, "client_encoding");
	cr_assert_str_eq(proto_startup_get(&sp, "application_name"), "psql");
	cr_assert_str_eq(proto_startup_get(&sp, "options"), "-c search_path=app -c statement_timeout=5s");
	cr_assert_str_eq(proto_startup_get(&sp, "client_encoding"), "UTF8");
	cr_assert_null(proto_startup_get(&sp, "database"));
	cr_assert_null(proto_startup_get(&sp, "Application_name"), "names are case-sensitive");
	cr_assert_str_eq(sp.user, "bob");
	cr_assert_str_eq(sp.database, "bob", "database defaults to the user");
	proto_startup_free(&sp);
}

Test(startup, empty_database_defaults_to_user)
{
	struct startup_packet sp;
	char err[256] = "";

	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0),
					 BODY("database\0"
					      "\0"
					      "user\0"
					      "carol\0"
					      "\0"),
					 &sp, err, sizeof(err)),
		     0, "rejected: %s", err);
	cr_assert_eq(sp.n_params, 2);
	cr_assert_str_eq(proto_startup_get(&sp, "database"), "");
	cr_assert_str_eq(sp.database, "carol");
	proto_startup_free(&sp);
}

Test(startup, protocol_options_are_set_aside)
{
	struct startup_packet sp;
	char err[256] = "";

	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 2),
					 BODY("_pq_.compression\0"
					      "on\0"
					      "user\0"
					      "u\0"
					      "database\0"
					      "d\0"
					      "_pq_.other\0"
					      "x\0"
					      "\0"),
					 &sp, err, sizeof(err)),
		     0, "rejected: %s", err);
	cr_assert_eq(sp.version, 0x00030002u);
	cr_assert_eq(sp.n_params, 2);
	cr_assert_str_eq(sp.params[0].name, "user");
	cr_assert_str_eq(sp.params[1].name, "database");
	cr_assert_null(proto_startup_get(&sp, "_pq_.compression"));
	cr_assert_eq(sp.n_unknown_protocol_options, 2);
	cr_assert_str_eq(sp.unknown_protocol_options[0], "_pq_.compression");
	cr_assert_str_eq(sp.unknown_protocol_options[1], "_pq_.other");
	proto_startup_free(&sp);
	cr_assert_null(sp.unknown_protocol_options);
	cr_assert_eq(sp.n_unknown_protocol_options, 0);
}

Test(startup, prefix_lookalikes_are_ordinary_parameters)
{
	struct startup_packet sp;
	char err[256] = "";

	/* "_pq_" without the dot, and "_pq_." not at the start, are plain settings. */
	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0),
					 BODY("user\0"
					      "u\0"
					      "_pq_\0"
					      "1\0"
					      "x_pq_.y\0"
					      "2\0"
					      "\0"),
					 &sp, err, sizeof(err)),
		     0, "rejected: %s", err);
	cr_assert_eq(sp.n_params, 3);
	cr_assert_eq(sp.n_unknown_protocol_options, 0);
	cr_assert_str_eq(proto_startup_get(&sp, "_pq_"), "1");
	cr_assert_str_eq(proto_startup_get(&sp, "x_pq_.y"), "2");
	proto_startup_free(&sp);
}

Test(startup, replication_is_kept)
{
	struct startup_packet sp;
	char err[256] = "";

	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0),
					 BODY("user\0"
					      "rep\0"
					      "replication\0"
					      "database\0"
					      "\0"),
					 &sp, err, sizeof(err)),
		     0, "rejected: %s", err);
	cr_assert_eq(sp.n_params, 2);
	cr_assert_str_eq(proto_startup_get(&sp, "replication"), "database");
	proto_startup_free(&sp);
}

Test(startup, empty_values_are_allowed)
{
	struct startup_packet sp;
	char err[256] = "";

	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0),
					 BODY("user\0"
					      "u\0"
					      "options\0"
					      "\0"
					      "\0"),
					 &sp, err, sizeof(err)),
		     0, "rejected: %s", err);
	cr_assert_eq(sp.n_params, 2);
	cr_assert_str_eq(proto_startup_get(&sp, "options"), "");
	proto_startup_free(&sp);
}

Test(startup, copies_outlive_the_packet)
{
	struct startup_packet sp;
	char err[256] = "";
	uint8_t body[] = "user\0"
			 "dave\0"
			 "\0";

	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0), body, sizeof(body) - 1, &sp, err, sizeof(err)), 0);
	memset(body, 'z', sizeof(body));
	cr_assert_str_eq(sp.user, "dave");
	cr_assert_str_eq(sp.params[0].name, "user");
	proto_startup_free(&sp);
}

Test(startup, free_twice_and_free_zeroed_are_safe)
{
	struct startup_packet sp;

	memset(&sp, 0, sizeof(sp));
	proto_startup_free(&sp);
	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0),
					 BODY("user\0"
					      "u\0"
					      "\0"),
					 &sp, NULL, 0),
		     0);
	proto_startup_free(&sp);
	proto_startup_free(&sp);
	cr_assert_null(sp.params);
}

/* Parse a body expected to fail; check the message and that out was left empty. */
static void expect_startup_failure(uint32_t version, const uint8_t *body, size_t len, const char *want_err)
{
	struct startup_packet sp;
	char err[256] = "";

	memset(&sp, 0x55, sizeof(sp)); /* garbage in: the parser must not trust it */
	cr_assert_eq(proto_parse_startup(version, body, len, &sp, err, sizeof(err)), -1, "accepted, expected \"%s\"",
		     want_err);
	cr_assert_str_eq(err, want_err);
	cr_assert_null(sp.params, "a failed parse leaves nothing to free");
	cr_assert_eq(sp.n_params, 0);
	cr_assert_null(sp.unknown_protocol_options);
	cr_assert_eq(sp.n_unknown_protocol_options, 0);
	cr_assert_null(sp.user);
	cr_assert_null(sp.database);
	proto_startup_free(&sp);
}

#define LAYOUT_TERMINATOR "invalid startup packet layout: expected terminator as last byte"

Test(startup_malformed, empty_body)
{
	expect_startup_failure(PROTO_VERSION(3, 0), (const uint8_t *)"", 0, LAYOUT_TERMINATOR);
	expect_startup_failure(PROTO_VERSION(3, 0), NULL, 0, LAYOUT_TERMINATOR);
}

Test(startup_malformed, last_byte_not_nul)
{
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("user\0"
				    "alice"),
			       LAYOUT_TERMINATOR);
	expect_startup_failure(PROTO_VERSION(3, 0), BODY("user"), LAYOUT_TERMINATOR);
}

Test(startup_malformed, value_runs_into_the_end)
{
	/* "alice" is terminated by the last byte, leaving no list terminator. */
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("user\0"
				    "alice\0"),
			       LAYOUT_TERMINATOR);
	/* Read as user = "" followed by nothing: still no terminator. */
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("user\0"
				    "\0"),
			       LAYOUT_TERMINATOR);
}

Test(startup_malformed, name_without_value)
{
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("user\0"
				    "alice\0"
				    "database\0"),
			       "invalid startup packet layout: parameter \"database\" has no value");
	expect_startup_failure(PROTO_VERSION(3, 0), BODY("user\0"),
			       "invalid startup packet layout: parameter \"user\" has no value");
}

Test(startup_malformed, data_after_terminator)
{
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("user\0"
				    "a\0"
				    "\0"
				    "junk\0"),
			       "invalid startup packet layout: data after the terminator");
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("\0"
				    "\0"),
			       "invalid startup packet layout: data after the terminator");
}

#define NO_USER "no PostgreSQL user name specified in startup packet"

Test(startup_malformed, missing_user)
{
	expect_startup_failure(PROTO_VERSION(3, 0), BODY("\0"), NO_USER);
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("database\0"
				    "d\0"
				    "\0"),
			       NO_USER);
	/* user must be exactly that name */
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("User\0"
				    "d\0"
				    "\0"),
			       NO_USER);
}

Test(startup_malformed, empty_user)
{
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("user\0"
				    "\0"
				    "database\0"
				    "d\0"
				    "\0"),
			       NO_USER);
}

Test(startup_malformed, user_only_as_protocol_option)
{
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("_pq_.user\0"
				    "x\0"
				    "\0"),
			       NO_USER);
}

Test(startup_malformed, duplicate_names)
{
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("user\0"
				    "a\0"
				    "user\0"
				    "b\0"
				    "\0"),
			       "duplicate startup parameter \"user\"");
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("user\0"
				    "a\0"
				    "database\0"
				    "x\0"
				    "options\0"
				    "\0"
				    "database\0"
				    "x\0"
				    "\0"),
			       "duplicate startup parameter \"database\"");
	expect_startup_failure(PROTO_VERSION(3, 0),
			       BODY("_pq_.a\0"
				    "1\0"
				    "user\0"
				    "a\0"
				    "_pq_.a\0"
				    "1\0"
				    "\0"),
			       "duplicate startup parameter \"_pq_.a\"");
}

Test(startup_malformed, unsupported_versions)
{
	expect_startup_failure(PROTO_VERSION(2, 0),
			       BODY("user\0"
				    "a\0"
				    "\0"),
			       "unsupported frontend protocol 2.0: server supports 3.0 to 3.0");
	expect_startup_failure(PROTO_VERSION(4, 1),
			       BODY("user\0"
				    "a\0"
				    "\0"),
			       "unsupported frontend protocol 4.1: server supports 3.0 to 3.0");
}

/* Build a body "user\0u\0<name>\0<value>\0\0" with generated name and value lengths. */
static size_t build_sized_body(uint8_t *out, size_t name_len, size_t value_len)
{
	size_t n = 0;

	memcpy(out, "user\0u\0", 7);
	n = 7;
	memset(out + n, 'n', name_len);
	n += name_len;
	out[n++] = '\0';
	memset(out + n, 'v', value_len);
	n += value_len;
	out[n++] = '\0';
	out[n++] = '\0';
	return n;
}

Test(startup_limits, name_length)
{
	uint8_t body[256];
	struct startup_packet sp;
	char err[256] = "";
	size_t len;

	len = build_sized_body(body, PROTO_MAX_PARAM_NAME_LEN, 1);
	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0), body, len, &sp, err, sizeof(err)), 0, "rejected: %s",
		     err);
	cr_assert_eq(strlen(sp.params[1].name), 63);
	proto_startup_free(&sp);

	len = build_sized_body(body, PROTO_MAX_PARAM_NAME_LEN + 1, 1);
	expect_startup_failure(PROTO_VERSION(3, 0), body, len, "startup parameter name is too long (at most 63 bytes)");
}

Test(startup_limits, value_length)
{
	uint8_t body[8192];
	struct startup_packet sp;
	char err[256] = "";
	size_t len;

	len = build_sized_body(body, 7, PROTO_MAX_PARAM_VALUE_LEN);
	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0), body, len, &sp, err, sizeof(err)), 0, "rejected: %s",
		     err);
	cr_assert_eq(strlen(sp.params[1].value), 4096);
	proto_startup_free(&sp);

	len = build_sized_body(body, 7, PROTO_MAX_PARAM_VALUE_LEN + 1);
	expect_startup_failure(PROTO_VERSION(3, 0), body, len,
			       "value of startup parameter \"nnnnnnn\" is too long (at most 4096 bytes)");
}

/* A body with "user" plus total - 1 distinct parameters p1 .. p<total-1>, each set to "x". */
static size_t build_many_params(uint8_t *out, int total)
{
	size_t len;

	memcpy(out, "user\0u\0", 7);
	len = 7;
	for (int i = 1; i < total; i++) {
		len += (size_t)sprintf((char *)out + len, "p%d", i) + 1;
		out[len++] = 'x';
		out[len++] = '\0';
	}
	out[len++] = '\0';
	return len;
}

Test(startup_limits, parameter_count)
{
	uint8_t body[2048];
	struct startup_packet sp;
	char err[256] = "";
	size_t len;

	len = build_many_params(body, PROTO_MAX_STARTUP_PARAMS);
	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0), body, len, &sp, err, sizeof(err)), 0, "rejected: %s",
		     err);
	cr_assert_eq(sp.n_params, 64);
	cr_assert_str_eq(sp.params[63].name, "p63");
	cr_assert_str_eq(sp.params[63].value, "x");
	proto_startup_free(&sp);

	len = build_many_params(body, PROTO_MAX_STARTUP_PARAMS + 1);
	expect_startup_failure(PROTO_VERSION(3, 0), body, len, "too many startup parameters (at most 64)");
}

Test(startup_malformed, small_or_missing_error_buffer)
{
	struct startup_packet sp;
	char err[8];

	memset(err, '#', sizeof(err));
	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0), BODY("\0"), &sp, err, sizeof(err)), -1);
	cr_assert_str_eq(err, "no Post", "the message is truncated, never overflowed");
	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0), BODY("\0"), &sp, NULL, 0), -1);
}

/* ---- message reader ---- */

Test(msg_reader, reads_fields_in_order)
{
	static const uint8_t body[] = {0x7f, 0x01, 0x02, 0x00, 0x00, 0x01, 0x00, 'a', 'b', '\0', 0xaa, 0xbb};
	struct msg_reader r;
	uint8_t u8;
	int16_t i16;
	int32_t i32;
	const char *s;
	const uint8_t *bytes;

	msg_reader_init(&r, body, sizeof(body));
	cr_assert_eq(msg_read_u8(&r, &u8), 0);
	cr_assert_eq(u8, 0x7f);
	cr_assert_eq(msg_read_i16(&r, &i16), 0);
	cr_assert_eq(i16, 0x0102);
	cr_assert_eq(msg_read_i32(&r, &i32), 0);
	cr_assert_eq(i32, 256);
	s = msg_read_str(&r);
	cr_assert_str_eq(s, "ab");
	cr_assert_eq((const uint8_t *)s, body + 7, "strings point into the body");
	bytes = msg_read_bytes(&r, 2);
	cr_assert_eq(bytes, body + 10);
	cr_assert_eq(r.pos, sizeof(body));
	cr_assert_not(r.bad);
	/* At the end: a zero-length read succeeds, anything more fails. */
	cr_assert_not_null(msg_read_bytes(&r, 0));
	cr_assert_not(r.bad);
	cr_assert_eq(msg_read_u8(&r, &u8), -1);
	cr_assert(r.bad);
}

Test(msg_reader, negative_integers)
{
	static const uint8_t body[] = {0xff, 0xff, 0x80, 0x00, 0xff, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00,
				       0x7f, 0xff, 0xff, 0xff};
	struct msg_reader r;
	int16_t a, b;
	int32_t c, d, e;

	msg_reader_init(&r, body, sizeof(body));
	cr_assert_eq(msg_read_i16(&r, &a), 0);
	cr_assert_eq(msg_read_i16(&r, &b), 0);
	cr_assert_eq(msg_read_i32(&r, &c), 0);
	cr_assert_eq(msg_read_i32(&r, &d), 0);
	cr_assert_eq(msg_read_i32(&r, &e), 0);
	cr_assert_eq(a, -1);
	cr_assert_eq(b, INT16_MIN);
	cr_assert_eq(c, -1);
	cr_assert_eq(d, INT32_MIN);
	cr_assert_eq(e, INT32_MAX);
}

Test(msg_reader, short_integer_reads_fail_without_moving)
{
	static const uint8_t body[] = {0x00, 0x01, 0x02};
	struct msg_reader r;
	int32_t i32 = 12345;
	int16_t i16 = 123;

	msg_reader_init(&r, body, sizeof(body));
	cr_assert_eq(msg_read_i32(&r, &i32), -1);
	cr_assert_eq(i32, 12345, "output untouched on failure");
	cr_assert_eq(r.pos, 0);
	cr_assert(r.bad);

	msg_reader_init(&r, body, 1);
	cr_assert_eq(msg_read_i16(&r, &i16), -1);
	cr_assert_eq(i16, 123);
	cr_assert(r.bad);
}

Test(msg_reader, bad_is_sticky)
{
	static const uint8_t body[] = {0x01, 0x02, 0x03, 0x04, 0x05};
	struct msg_reader r;
	uint8_t u8;
	int32_t i32;

	msg_reader_init(&r, body, sizeof(body));
	cr_assert_null(msg_read_bytes(&r, 6));
	cr_assert(r.bad);
	/* Enough bytes remain for these, but a reader that has failed stays failed. */
	cr_assert_eq(msg_read_u8(&r, &u8), -1);
	cr_assert_eq(msg_read_i32(&r, &i32), -1);
	cr_assert_null(msg_read_str(&r));
	cr_assert_null(msg_read_bytes(&r, 0));
	cr_assert_eq(r.pos, 0);
}

Test(msg_reader, unterminated_string)
{
	static const uint8_t body[] = {'a', 'b', 'c'};
	struct msg_reader r;

	msg_reader_init(&r, body, sizeof(body));
	cr_assert_null(msg_read_str(&r));
	cr_assert(r.bad);
	cr_assert_eq(r.pos, 0);
}

Test(msg_reader, string_must_end_inside_the_body)
{
	/* The NUL sits just past the declared length: it must not be found. */
	static const uint8_t body[] = {'a', 'b', '\0'};
	struct msg_reader r;

	msg_reader_init(&r, body, 2);
	cr_assert_null(msg_read_str(&r));
	cr_assert(r.bad);
}

Test(msg_reader, empty_strings_and_bodies)
{
	static const uint8_t body[] = {'\0', '\0'};
	struct msg_reader r;
	uint8_t u8;

	msg_reader_init(&r, body, sizeof(body));
	cr_assert_str_eq(msg_read_str(&r), "");
	cr_assert_str_eq(msg_read_str(&r), "");
	cr_assert_null(msg_read_str(&r));

	msg_reader_init(&r, NULL, 0);
	cr_assert_not_null(msg_read_bytes(&r, 0));
	cr_assert_eq(msg_read_u8(&r, &u8), -1);
	cr_assert(r.bad);
}

Test(msg_reader, huge_byte_count_does_not_wrap)
{
	static const uint8_t body[] = {1, 2, 3, 4};
	struct msg_reader r;

	msg_reader_init(&r, body, sizeof(body));
	cr_assert_not_null(msg_read_bytes(&r, 1));
	cr_assert_null(msg_read_bytes(&r, SIZE_MAX));
	cr_assert(r.bad);
	cr_assert_eq(r.pos, 1);
}

/* ---- ErrorResponse parsing ---- */

Test(parse_error, all_fields)
{
	static const char body[] = "SERREUR\0"
				   "VERROR\0"
				   "C42P01\0"
				   "Mrelation \"t\" does not exist\0"
				   "Dsome detail\0"
				   "Hsome hint\0"
				   "P15\0"
				   "Fparse_relation.c\0"
				   "L1392\0"
				   "\0";
	struct error_fields f;

	cr_assert_eq(proto_parse_error((const uint8_t *)body, sizeof(body) - 1, &f), 0);
	cr_assert_str_eq(f.severity, "ERROR", "the untranslated V wins over S");
	cr_assert_str_eq(f.sqlstate, "42P01");
	cr_assert_str_eq(f.message, "relation \"t\" does not exist");
	cr_assert_str_eq(f.detail, "some detail");
	cr_assert_eq((const char *)f.sqlstate, body + 16, "fields point into the body");
}

Test(parse_error, v_before_s_still_wins)
{
	static const char body[] = "VFATAL\0"
				   "SFATAL-LOCALIZED\0"
				   "C57P01\0"
				   "Mbye\0"
				   "\0";
	struct error_fields f;

	cr_assert_eq(proto_parse_error((const uint8_t *)body, sizeof(body) - 1, &f), 0);
	cr_assert_str_eq(f.severity, "FATAL");
}

Test(parse_error, severity_from_s_when_no_v)
{
	static const char body[] = "SWARNING\0"
				   "C01000\0"
				   "Mwatch out\0"
				   "\0";
	struct error_fields f;

	cr_assert_eq(proto_parse_error((const uint8_t *)body, sizeof(body) - 1, &f), 0);
	cr_assert_str_eq(f.severity, "WARNING");
	cr_assert_str_eq(f.sqlstate, "01000");
	cr_assert_str_eq(f.message, "watch out");
	cr_assert_null(f.detail);
}

Test(parse_error, empty_field_list)
{
	struct error_fields f;

	memset(&f, 0x55, sizeof(f));
	cr_assert_eq(proto_parse_error((const uint8_t *)"", 1, &f), 0);
	cr_assert_null(f.severity);
	cr_assert_null(f.sqlstate);
	cr_assert_null(f.message);
	cr_assert_null(f.detail);
}

Test(parse_error, malformed)
{
	struct error_fields f;

	/* no bytes at all */
	cr_assert_eq(proto_parse_error(NULL, 0, &f), -1);
	/* missing list terminator */
	cr_assert_eq(proto_parse_error(BODY("SERROR\0"
					    "C00000\0"),
				       &f),
		     -1);
	/* field value not terminated */
	cr_assert_eq(proto_parse_error(BODY("SERROR\0"
					    "Mtrunc"),
				       &f),
		     -1);
	/* a code with nothing after it */
	cr_assert_eq(proto_parse_error(BODY("SERROR\0"
					    "M"),
				       &f),
		     -1);
	/* bytes after the terminator */
	cr_assert_eq(proto_parse_error(BODY("SERROR\0"
					    "\0"
					    "x"),
				       &f),
		     -1);
}

Test(parse_error, round_trip_with_builder)
{
	struct iobuf buf;
	struct error_fields f;

	iobuf_init(&buf);
	proto_put_error(&buf, "FATAL", SQLSTATE_TOO_MANY_CONNECTIONS, "no more connections allowed", "pool is full",
			"try later");
	cr_assert_eq(iobuf_head(&buf)[0], 'E');
	cr_assert_eq(get_u32(iobuf_head(&buf) + 1), iobuf_len(&buf) - 1);
	cr_assert_eq(proto_parse_error(iobuf_head(&buf) + PROTO_HEADER_LEN, iobuf_len(&buf) - PROTO_HEADER_LEN, &f), 0);
	cr_assert_str_eq(f.severity, "FATAL");
	cr_assert_str_eq(f.sqlstate, "53300");
	cr_assert_str_eq(f.message, "no more connections allowed");
	cr_assert_str_eq(f.detail, "pool is full");
	iobuf_free(&buf);
}

/* ---- message type tables ---- */

static void assert_type_set(bool (*valid)(uint8_t), const char *want)
{
	for (int c = 0; c < 256; c++) {
		bool expected = c != 0 && strchr(want, c) != NULL;

		cr_assert_eq(valid((uint8_t)c), expected, "type 0x%02x ('%c') should be %s", c,
			     c >= 0x20 && c < 0x7f ? c : '?', expected ? "valid" : "invalid");
	}
}

Test(types, frontend)
{
	assert_type_set(proto_valid_frontend_type, "BCdcfDEHFPpQSX");
}

Test(types, backend)
{
	assert_type_set(proto_valid_backend_type, "RKSZENACTDIGHWv123nstcdV");
}

/* ---- batches pgmux may send again (proto_batch_resendable) ---- */

/* Append one frontend message: type, then body (blen bytes). */
static void put_message(struct iobuf *buf, char type, const void *body, size_t blen)
{
	iobuf_append_u8(buf, (uint8_t)type);
	iobuf_append_u32(buf, (uint32_t)(4 + blen));
	iobuf_append(buf, body, blen);
}

static bool resendable(const struct iobuf *buf)
{
	return proto_batch_resendable(iobuf_head(buf), iobuf_len(buf));
}

Test(resend, one_query_or_one_unnamed_extended_batch)
{
	struct iobuf b;

	iobuf_init(&b);
	put_message(&b, 'Q', "select 1\0", 9);
	cr_expect(resendable(&b), "a Query alone");
	iobuf_reset(&b);
	/* What libpq's PQexecParams sends: Parse "", Bind, Describe portal, Execute, Sync. */
	put_message(&b, 'P', "\0select $1\0\0\0", 13);
	put_message(&b, 'B', "\0\0\0\0\0\0\0\0\0\0", 10);
	put_message(&b, 'D', "P\0", 2);
	put_message(&b, 'E', "\0\0\0\0\0", 5);
	put_message(&b, 'S', "", 0);
	cr_expect(resendable(&b), "an unnamed extended batch");
	iobuf_free(&b);
}

Test(resend, what_may_not_go_again)
{
	struct iobuf b;

	iobuf_init(&b);
	/* A named Parse: the client's session holds the statement as soon as it is sent. */
	put_message(&b, 'P', "s1\0select 1\0\0\0", 14);
	put_message(&b, 'S', "", 0);
	cr_expect(!resendable(&b), "a named Parse");
	iobuf_reset(&b);
	put_message(&b, 'C', "Ss1\0", 4);
	put_message(&b, 'S', "", 0);
	cr_expect(!resendable(&b), "a Close");
	iobuf_reset(&b);
	/* Two batches: the second may have been answered by then, or be half sent. */
	put_message(&b, 'Q', "select 1\0", 9);
	put_message(&b, 'Q', "select 2\0", 9);
	cr_expect(!resendable(&b), "two Queries");
	iobuf_reset(&b);
	/* A batch whose Sync has not been sent yet. */
	put_message(&b, 'P', "\0select 1\0\0\0", 12);
	put_message(&b, 'E', "\0\0\0\0\0", 5);
	cr_expect(!resendable(&b), "no Sync");
	iobuf_reset(&b);
	/* Part of a message. */
	put_message(&b, 'Q', "select 1\0", 9);
	cr_expect(!proto_batch_resendable(iobuf_head(&b), iobuf_len(&b) - 1), "a cut Query");
	iobuf_reset(&b);
	put_message(&b, 'F', "\0\0\0\1\0\0\0\0\0\0", 10);
	cr_expect(!resendable(&b), "a FunctionCall");
	cr_expect(!proto_batch_resendable(NULL, 0), "nothing");
	iobuf_free(&b);
}

Test(notification, channel_and_payload_or_malformed)
{
	/* The notifying pid, the channel, the payload (each string NUL-terminated). */
	static const char good[] = "\0\0\0\7chan\0hello";
	static const char empty_payload[] = "\0\0\0\7c\0";
	static const char no_payload[] = "\0\0\0\7chan";
	const char *channel = NULL, *payload = NULL;

	cr_assert(proto_parse_notification((const uint8_t *)good, sizeof(good), &channel, &payload));
	cr_expect_str_eq(channel, "chan");
	cr_expect_str_eq(payload, "hello");
	cr_assert(proto_parse_notification((const uint8_t *)empty_payload, sizeof(empty_payload), &channel, &payload));
	cr_expect_str_eq(channel, "c");
	cr_expect_str_eq(payload, "");
	/* The channel ends at the body's end: no payload. */
	cr_expect(!proto_parse_notification((const uint8_t *)no_payload, sizeof(no_payload), &channel, &payload));
	/* Nothing ends the channel. */
	cr_expect(!proto_parse_notification((const uint8_t *)good, 8, &channel, &payload));
	/* Shorter than a pid and two empty strings. */
	cr_expect(!proto_parse_notification((const uint8_t *)good, 5, &channel, &payload));
}
