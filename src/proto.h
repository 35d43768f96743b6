/*
 * proto.h: PostgreSQL frontend/backend protocol 3.0 framing: the codes and
 * message types pgmux looks at, the parsing of startup packets, and one
 * builder for each message pgmux writes itself (ErrorResponse and friends).
 * It knows bytes and their layout; what a message means for a session is
 * decided above it (reply.c, relay.c, server.c).
 */
#ifndef PGMUX_PROTO_H
#define PGMUX_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "iobuf.h"

/* Startup-packet request codes (the int32 after the length). */
#define PROTO_VERSION(major, minor) (((uint32_t)(major) << 16) | (uint32_t)(minor))
#define PROTO_SSL_REQUEST 80877103u
#define PROTO_GSSENC_REQUEST 80877104u
#define PROTO_CANCEL_REQUEST 80877102u

/* PostgreSQL's own limit on a startup packet. */
#define PROTO_MAX_STARTUP_PACKET 10000u
#define PROTO_HEADER_LEN 5 /* type byte + int32 length */

/*
 * Limits pgmux puts on startup parameters. PostgreSQL has none beyond the
 * packet size, but the session code copies these strings into pool keys and
 * log lines, so they are kept small: names at NAMEDATALEN - 1 (the server
 * truncates longer identifiers anyway), values well above any real options
 * string, and a count far above what drivers send (libpq sends under ten).
 */
#define PROTO_MAX_PARAM_NAME_LEN 63
#define PROTO_MAX_PARAM_VALUE_LEN 4096
#define PROTO_MAX_STARTUP_PARAMS 64

/* Messages from the frontend that pgmux interprets. */
#define FE_PASSWORD 'p' /* PasswordMessage, SASLInitialResponse, SASLResponse */
#define FE_QUERY 'Q'
#define FE_PARSE 'P'
#define FE_BIND 'B'
#define FE_EXECUTE 'E'
#define FE_DESCRIBE 'D'
#define FE_CLOSE 'C'
#define FE_SYNC 'S'
#define FE_FLUSH 'H'
#define FE_FUNCTION_CALL 'F'
#define FE_COPY_DATA 'd'
#define FE_COPY_DONE 'c'
#define FE_COPY_FAIL 'f'
#define FE_TERMINATE 'X'

/* Messages from the backend that pgmux interprets or writes. */
#define BE_AUTHENTICATION 'R'
#define BE_PARAMETER_STATUS 'S'
#define BE_BACKEND_KEY_DATA 'K'
#define BE_READY_FOR_QUERY 'Z'
#define BE_ERROR_RESPONSE 'E'
#define BE_NOTICE_RESPONSE 'N'
#define BE_NOTIFICATION 'A'
#define BE_COMMAND_COMPLETE 'C'
#define BE_ROW_DESCRIPTION 'T'
#define BE_DATA_ROW 'D'
#define BE_EMPTY_QUERY 'I'
#define BE_COPY_IN 'G'
#define BE_COPY_OUT 'H'
#define BE_COPY_BOTH 'W'
#define BE_NEGOTIATE_PROTOCOL 'v'
#define BE_PARSE_COMPLETE '1'
#define BE_CLOSE_COMPLETE '3'
#define BE_BIND_COMPLETE '2'
#define BE_NO_DATA 'n'
#define BE_PORTAL_SUSPENDED 's'
#define BE_PARAMETER_DESCRIPTION 't'

/* Authentication request codes carried by 'R'. */
#define AUTH_REQ_OK 0
#define AUTH_REQ_MD5 5
#define AUTH_REQ_SASL 10
#define AUTH_REQ_SASL_CONTINUE 11
#define AUTH_REQ_SASL_FINAL 12

/* SQLSTATEs pgmux sends itself. */
#define SQLSTATE_PROTOCOL_VIOLATION "08P01"
#define SQLSTATE_CONNECTION_FAILURE "08006"
#define SQLSTATE_CONNECTION_EXCEPTION "08000"
#define SQLSTATE_SQLCLIENT_UNABLE_TO_ESTABLISH "08001"
#define SQLSTATE_INVALID_PASSWORD "28P01"
#define SQLSTATE_INVALID_AUTHORIZATION "28000"
#define SQLSTATE_TOO_MANY_CONNECTIONS "53300"
#define SQLSTATE_PROGRAM_LIMIT_EXCEEDED "54000"
#define SQLSTATE_OUT_OF_MEMORY "53200"
#define SQLSTATE_FEATURE_NOT_SUPPORTED "0A000"
#define SQLSTATE_ADMIN_SHUTDOWN "57P01"
#define SQLSTATE_CRASH_SHUTDOWN "57P02"
#define SQLSTATE_CANNOT_CONNECT_NOW "57P03"
#define SQLSTATE_QUERY_CANCELED "57014"
#define SQLSTATE_INTERNAL_ERROR "XX000"
#define SQLSTATE_INSUFFICIENT_PRIVILEGE "42501"
#define SQLSTATE_SYNTAX_ERROR "42601"
#define SQLSTATE_DUPLICATE_PREPARED_STATEMENT "42P05"
#define SQLSTATE_INVALID_PARAMETER_VALUE "22023"
#define SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT "25P03"
#define SQLSTATE_TRANSACTION_TIMEOUT "25P04"
#define SQLSTATE_IDLE_SESSION_TIMEOUT "57P05"

/* A startup parameter (name/value pair of the StartupMessage). */
struct startup_param {
	char *name;
	char *value;
};

/* A parsed StartupMessage. */
struct startup_packet {
	struct startup_param *params; /* every parameter, in order, including user and database; one
	                               * block with their text (never free a name or value alone) */
	const char *user;     /* points into params; never NULL after a successful parse */
	const char *database; /* defaults to user when absent */
	char **unknown_protocol_options; /* names of _pq_.* options, which pgmux does not support */
	int n_params;
	int n_unknown_protocol_options;
	uint32_t version;           /* PROTO_VERSION(3, minor) */
};

/*
 * Parse the body of a StartupMessage (everything after the int32 length and
 * int32 version). Returns 0, or -1 with a client-presentable reason in err
 * (missing user, unterminated string, ...).
 */
int proto_parse_startup(uint32_t version, const uint8_t *body, size_t len, struct startup_packet *out,
			char *err, size_t errlen);
void proto_startup_free(struct startup_packet *sp);
const char *proto_startup_get(const struct startup_packet *sp, const char *name);

/*
 * A cursor over a message body for pulling fields out safely. Every getter
 * fails (returns -1 / NULL and marks the reader bad) rather than reading past
 * the end.
 */
struct msg_reader {
	const uint8_t *p;
	size_t len;
	size_t pos;
	bool bad;
};

void msg_reader_init(struct msg_reader *r, const uint8_t *body, size_t len);
int msg_read_u8(struct msg_reader *r, uint8_t *out);
int msg_read_i16(struct msg_reader *r, int16_t *out);
int msg_read_i32(struct msg_reader *r, int32_t *out);
const char *msg_read_str(struct msg_reader *r); /* NUL-terminated inside the body */
const uint8_t *msg_read_bytes(struct msg_reader *r, size_t n);

/*
 * The fields of an ErrorResponse or NoticeResponse that pgmux looks at (for
 * logging and for re-raising backend errors). Pointers into the body.
 */
struct error_fields {
	const char *severity; /* 'S' (localized) or 'V' */
	const char *sqlstate; /* 'C' */
	const char *message;  /* 'M' */
	const char *detail;   /* 'D' */
};
int proto_parse_error(const uint8_t *body, size_t len, struct error_fields *out);
/*
 * The channel and payload of a NotificationResponse's body (the notifying
 * pid, then two NUL-terminated strings), pointing into body. Returns false
 * when the body is malformed.
 */
bool proto_parse_notification(const uint8_t *body, size_t len, const char **channel, const char **payload);

/* Start a message of the given type: writes the type and a placeholder length; returns its offset. */
size_t proto_begin(struct iobuf *buf, char type);
/* Patch the length of the message begun at offset. */
void proto_end(struct iobuf *buf, size_t offset);

/* Builders. Each appends one complete message. */
void proto_put_error(struct iobuf *buf, const char *severity, const char *sqlstate, const char *message,
		     const char *detail, const char *hint);
void proto_put_auth(struct iobuf *buf, uint32_t code, const void *data, size_t len);
void proto_put_parameter_status(struct iobuf *buf, const char *name, const char *value);
void proto_put_backend_key(struct iobuf *buf, uint32_t pid, uint32_t key);
void proto_put_ready(struct iobuf *buf, char status);
void proto_put_negotiate_version(struct iobuf *buf, uint32_t newest_minor, char *const *unknown, int n_unknown);
void proto_put_query(struct iobuf *buf, const char *sql);
/* What a client sends to cancel; pgmux sends it to the peer whose key it is (cancel.c). */
void proto_put_cancel_request(struct iobuf *buf, uint32_t pid, uint32_t key); /* 16 bytes, no type byte */

/*
 * Is this a message type a frontend may send after startup? Used to reject
 * garbage early instead of waiting for a bogus length to arrive.
 */
bool proto_valid_frontend_type(uint8_t type);
bool proto_valid_backend_type(uint8_t type);

/*
 * Is batch (len bytes, as the client sent them) one whole batch that pgmux
 * may send again to another backend, when the first ended its session
 * before answering any of it? Exactly one Query, or extended-protocol
 * messages up to and including their Sync: Parse of the unnamed statement,
 * Bind, Describe, Execute, Flush. Not a named Parse or a Close (they change
 * what the client's session holds as they are sent), a FunctionCall, COPY,
 * or anything after the batch's end.
 */
bool proto_batch_resendable(const uint8_t *batch, size_t len);

#endif
