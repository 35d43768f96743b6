/*
 * sigv4.h: AWS Signature Version 4, the request signing every AWS API call
 * pgmux makes needs (Secrets Manager, STS) and that an RDS IAM token is made
 * of (a presigned rds-db:connect URL). Pure computation over OpenSSL's
 * SHA-256 and HMAC: no I/O, no clock (the signing time is an argument), so
 * tests/unit/test_sigv4.c checks it against AWS's published test vectors.
 */
#ifndef PGMUX_SIGV4_H
#define PGMUX_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define SIGV4_HEX_LEN 64 /* a SHA-256 in hexadecimal, without the NUL */

struct sigv4_credentials {
	const char *access_key_id;
	const char *secret_access_key;
	const char *session_token; /* NULL or "" for long-term credentials */
};

struct sigv4_header {
	const char *name;  /* any case; "Host" must be among them */
	const char *value; /* as sent: trimmed and with runs of spaces collapsed for signing */
};

/* What is signed of one request. */
struct sigv4_request {
	const char *method; /* "GET", "POST" */
	const char *path;   /* as sent, not yet percent-encoded; "/" for the AWS query and JSON APIs */
	bool normalize_path; /* drop "." and ".." segments and repeated slashes (every service but S3) */
	const char *query;  /* as sent ("a=b&c=d", percent-encoded or not), NULL or "" for none */
	const struct sigv4_header *headers;
	size_t n_headers;
	const void *payload;
	size_t payload_len;
};

struct sigv4_scope {
	const char *region;  /* "us-east-1" */
	const char *service; /* "secretsmanager", "sts", "rds-db" */
	time_t when;         /* the signing time (UTC seconds) */
};

/* What a signing produced; free with sigv4_result_free(). */
struct sigv4_result {
	char amz_date[17];                 /* "20150830T123600Z": the X-Amz-Date to send */
	char signature[SIGV4_HEX_LEN + 1];
	char *authorization; /* header signing: the value of the Authorization header */
	char *query;         /* presigning: the whole query string to send, signature last */
	char *canonical_request; /* the intermediate steps, for tests and debugging */
	char *string_to_sign;
};

void sigv4_result_free(struct sigv4_result *r);

/*
 * Sign r for an Authorization header. X-Amz-Date (out->amz_date) and, with
 * a session token, X-Amz-Security-Token are signed too: the caller sends
 * them with the request, besides r's own headers and out->authorization.
 * Returns 0, or -1 when r is malformed (no Host header, say).
 */
int sigv4_sign_headers(const struct sigv4_request *r, const struct sigv4_credentials *c,
		       const struct sigv4_scope *scope, struct sigv4_result *out);

/*
 * Presign r: the X-Amz-* parameters (the session token among them) are
 * added to r's query and signed with it, r's headers being the signed ones.
 * out->query is r's query, "&", the parameters in the order botocore writes
 * them (Algorithm, Credential, Date, Expires, SignedHeaders, Security-Token),
 * then "&X-Amz-Signature=...", so that a token pgmux makes is byte for byte
 * the one AWS's own SDK makes. Returns 0 or -1.
 */
int sigv4_presign(const struct sigv4_request *r, const struct sigv4_credentials *c,
		  const struct sigv4_scope *scope, int expires_seconds, struct sigv4_result *out);

/*
 * An RDS IAM authentication token: "host:port/?Action=connect&DBUser=...&
 * X-Amz-...", presigned for service rds-db with X-Amz-Expires=900, the way
 * botocore's generate_db_auth_token() writes it (the Host that is signed is
 * the host in lower case, with ":port" unless the port is 443). Returns a
 * malloc'd string, or NULL.
 */
char *sigv4_rds_auth_token(const struct sigv4_credentials *c, const char *host, int port, const char *user,
			   const char *region, time_t when);

/*
 * Percent-encode text as SigV4 wants it: every byte but A-Z a-z 0-9 - _ . ~
 * (and '/' when keep_slash) as %XX in upper case. Returns a malloc'd string.
 */
char *sigv4_uri_encode(const char *text, bool keep_slash);

/* Hex SHA-256 of data into out (SIGV4_HEX_LEN + 1 bytes). */
void sigv4_sha256_hex(const void *data, size_t len, char *out);

#endif
