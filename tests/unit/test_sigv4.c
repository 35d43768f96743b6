/*
 * test_sigv4.c: src/sigv4.c against AWS's published Signature Version 4 test
 * vectors (tests/unit/sigv4-vectors, see its README.md for where they come
 * from): for every case, the canonical request, the string to sign and the
 * signature, both with an Authorization header and presigned; then RDS IAM
 * tokens against ones botocore made for a fixed signing time.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sigv4.h"

#define VECTORS TEST_SRCDIR "/tests/unit/sigv4-vectors"
#define MAX_HEADERS 16

/* A file's whole content, with the trailing newlines some files have dropped; NULL when absent. */
static char *slurp(const char *dir, const char *name, size_t *len_out)
{
	char path[1024];
	FILE *f;
	char *data;
	long size;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	fseek(f, 0, SEEK_SET);
	data = malloc((size_t)size + 1);
	cr_assert_not_null(data);
	cr_assert_eq(fread(data, 1, (size_t)size, f), (size_t)size);
	fclose(f);
	data[size] = '\0';
	if (len_out)
		*len_out = (size_t)size;
	return data;
}

static char *slurp_trimmed(const char *dir, const char *name)
{
	char *text = slurp(dir, name, NULL);
	size_t n;

	cr_assert_not_null(text, "%s/%s is missing", dir, name);
	n = strlen(text);
	while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
		text[--n] = '\0';
	return text;
}

/* One test case: its request.txt parsed and its context.json. */
struct vector {
	char name[128];
	char dir[1024];
	char *request_text; /* owns the strings below */
	char method[16];
	char *path;
	char *query;
	struct sigv4_header headers[MAX_HEADERS];
	size_t n_headers;
	char *body;
	size_t body_len;
	json_t *context;
};

/*
 * request.txt: "METHOD PATH[?QUERY] HTTP/1.1", then "Name:value" lines (a
 * line starting with a space continues the previous value), a blank line and
 * the body. The path may hold spaces, so the version is cut from the end.
 */
static void parse_request(struct vector *v)
{
	size_t len = 0;
	char *text = slurp(v->dir, "request.txt", &len);
	char *line, *next, *end_of_line, *version;

	cr_assert_not_null(text, "%s: no request.txt", v->name);
	v->request_text = text;
	end_of_line = strchr(text, '\n');
	cr_assert_not_null(end_of_line);
	*end_of_line = '\0';
	version = strstr(text, " HTTP/1.1");
	cr_assert_not_null(version, "%s: request line", v->name);
	*version = '\0';
	char *space = strchr(text, ' ');
	cr_assert_not_null(space);
	*space = '\0';
	snprintf(v->method, sizeof(v->method), "%s", text);
	v->path = space + 1;
	char *question = strchr(v->path, '?');
	v->query = "";
	if (question) {
		*question = '\0';
		v->query = question + 1;
	}

	v->body = "";
	for (line = end_of_line + 1; line < text + len && *line; line = next) {
		char *eol = strchr(line, '\n');

		next = eol ? eol + 1 : line + strlen(line);
		if (eol)
			*eol = '\0';
		if (line[0] == '\0') {
			v->body = next;
			v->body_len = (size_t)(text + len - next);
			break;
		}
		if (line[0] == ' ' || line[0] == '\t') {
			/* A folded line: its text joins the previous value after a space. */
			cr_assert_gt(v->n_headers, 0);
			struct sigv4_header *h = &v->headers[v->n_headers - 1];
			char *joined;

			cr_assert_geq(asprintf(&joined, "%s %s", h->value, line), 0);
			h->value = joined; /* leaked on purpose: one test process */
			continue;
		}
		char *colon = strchr(line, ':');

		cr_assert_not_null(colon, "%s: header line '%s'", v->name, line);
		*colon = '\0';
		cr_assert_lt(v->n_headers, MAX_HEADERS);
		v->headers[v->n_headers].name = line;
		v->headers[v->n_headers].value = colon + 1;
		v->n_headers++;
	}
}

static void load_vector(struct vector *v, const char *name)
{
	json_error_t error;
	char *context;

	memset(v, 0, sizeof(*v));
	snprintf(v->name, sizeof(v->name), "%s", name);
	snprintf(v->dir, sizeof(v->dir), "%s/%s", VECTORS, name);
	parse_request(v);
	context = slurp(v->dir, "context.json", NULL);
	cr_assert_not_null(context);
	v->context = json_loads(context, 0, &error);
	cr_assert_not_null(v->context, "%s: context.json: %s", name, error.text);
	free(context);
}

static const char *context_string(const struct vector *v, const char *key)
{
	json_t *value = json_object_get(v->context, key);

	return json_is_string(value) ? json_string_value(value) : NULL;
}

static bool context_true(const struct vector *v, const char *key)
{
	return json_is_true(json_object_get(v->context, key));
}

static time_t context_time(const struct vector *v)
{
	struct tm tm = { 0 };
	const char *text = context_string(v, "timestamp");

	cr_assert_not_null(text);
	cr_assert_not_null(strptime(text, "%Y-%m-%dT%H:%M:%SZ", &tm), "%s: timestamp %s", v->name, text);
	return timegm(&tm);
}

static void context_credentials(const struct vector *v, struct sigv4_credentials *c)
{
	json_t *credentials = json_object_get(v->context, "credentials");

	c->access_key_id = json_string_value(json_object_get(credentials, "access_key_id"));
	c->secret_access_key = json_string_value(json_object_get(credentials, "secret_access_key"));
	c->session_token = json_string_value(json_object_get(credentials, "token"));
	/* "omit_session_token": the token is added after signing, so it is not signed. */
	if (context_true(v, "omit_session_token"))
		c->session_token = NULL;
}

/* The names of every case directory, sorted; returns the count. */
static size_t vector_names(char names[][128], size_t cap)
{
	DIR *dir = opendir(VECTORS);
	struct dirent *entry;
	size_t n = 0;

	cr_assert_not_null(dir, "cannot open %s", VECTORS);
	while ((entry = readdir(dir)) != NULL) {
		if (entry->d_name[0] == '.' || strchr(entry->d_name, '.') != NULL)
			continue;
		cr_assert_lt(n, cap);
		snprintf(names[n++], 128, "%.127s", entry->d_name);
	}
	closedir(dir);
	qsort(names, n, 128, (int (*)(const void *, const void *))strcmp);
	return n;
}

static void request_of(struct vector *v, struct sigv4_request *r, struct sigv4_header *headers)
{
	memcpy(headers, v->headers, v->n_headers * sizeof(*headers));
	memset(r, 0, sizeof(*r));
	r->method = v->method;
	r->path = v->path;
	r->normalize_path = context_true(v, "normalize");
	r->query = v->query;
	r->headers = headers;
	r->n_headers = v->n_headers;
	r->payload = v->body;
	r->payload_len = v->body_len;
}

Test(sigv4, the_vectors_are_there)
{
	char names[64][128];

	/* 38 cases in AWS's suite as copied; a lost directory must not pass unnoticed. */
	cr_expect_eq(vector_names(names, 64), 38);
}

Test(sigv4, every_vector_signed_with_an_authorization_header)
{
	char names[64][128];
	size_t n = vector_names(names, 64);

	for (size_t i = 0; i < n; i++) {
		struct vector v;
		struct sigv4_request r;
		struct sigv4_header headers[MAX_HEADERS + 1];
		struct sigv4_credentials c;
		struct sigv4_result out;
		char payload_hash[SIGV4_HEX_LEN + 1];

		load_vector(&v, names[i]);
		request_of(&v, &r, headers);
		context_credentials(&v, &c);
		/* "sign_body": the payload's hash is sent, and signed, as x-amz-content-sha256. */
		if (context_true(&v, "sign_body")) {
			sigv4_sha256_hex(v.body, v.body_len, payload_hash);
			headers[r.n_headers++] = (struct sigv4_header){ "x-amz-content-sha256", payload_hash };
		}
		struct sigv4_scope scope = { context_string(&v, "region"), context_string(&v, "service"),
					     context_time(&v) };

		cr_assert_eq(sigv4_sign_headers(&r, &c, &scope, &out), 0, "%s", v.name);
		char *want_creq = slurp_trimmed(v.dir, "header-canonical-request.txt");
		char *want_sts = slurp_trimmed(v.dir, "header-string-to-sign.txt");
		char *want_sig = slurp_trimmed(v.dir, "header-signature.txt");
		char *signed_request = slurp_trimmed(v.dir, "header-signed-request.txt");
		cr_expect_str_eq(out.canonical_request, want_creq, "%s: canonical request", v.name);
		cr_expect_str_eq(out.string_to_sign, want_sts, "%s: string to sign", v.name);
		cr_expect_str_eq(out.signature, want_sig, "%s: signature", v.name);
		/* The Authorization header as the signed request carries it. */
		char *authorization = strstr(signed_request, "\nAuthorization:");
		cr_assert_not_null(authorization, "%s", v.name);
		authorization += strlen("\nAuthorization:");
		authorization[strcspn(authorization, "\r\n")] = '\0';
		cr_expect_str_eq(out.authorization, authorization, "%s: Authorization", v.name);
		cr_expect_str_eq(out.amz_date, "20150830T123600Z");
		free(want_creq);
		free(want_sts);
		free(want_sig);
		free(signed_request);
		sigv4_result_free(&out);
		json_decref(v.context);
		free(v.request_text);
	}
}

Test(sigv4, every_vector_presigned)
{
	char names[64][128];
	size_t n = vector_names(names, 64);

	for (size_t i = 0; i < n; i++) {
		struct vector v;
		struct sigv4_request r;
		struct sigv4_header headers[MAX_HEADERS + 1];
		struct sigv4_credentials c;
		struct sigv4_result out;

		load_vector(&v, names[i]);
		request_of(&v, &r, headers);
		context_credentials(&v, &c);
		struct sigv4_scope scope = { context_string(&v, "region"), context_string(&v, "service"),
					     context_time(&v) };
		int expires = (int)json_integer_value(json_object_get(v.context, "expiration_in_seconds"));

		cr_assert_eq(sigv4_presign(&r, &c, &scope, expires, &out), 0, "%s", v.name);
		char *want_creq = slurp_trimmed(v.dir, "query-canonical-request.txt");
		char *want_sts = slurp_trimmed(v.dir, "query-string-to-sign.txt");
		char *want_sig = slurp_trimmed(v.dir, "query-signature.txt");
		cr_expect_str_eq(out.canonical_request, want_creq, "%s: canonical request", v.name);
		cr_expect_str_eq(out.string_to_sign, want_sts, "%s: string to sign", v.name);
		cr_expect_str_eq(out.signature, want_sig, "%s: signature", v.name);
		/* The query ends with the signature, after every other parameter. */
		char tail[SIGV4_HEX_LEN + 32];
		snprintf(tail, sizeof(tail), "&X-Amz-Signature=%s", want_sig);
		cr_expect(strlen(out.query) > strlen(tail) &&
				  strcmp(out.query + strlen(out.query) - strlen(tail), tail) == 0,
			  "%s: query %s", v.name, out.query);
		free(want_creq);
		free(want_sts);
		free(want_sig);
		sigv4_result_free(&out);
		json_decref(v.context);
		free(v.request_text);
	}
}

/* ---------------------------------------------------------------- RDS IAM tokens */

/* The suite's example keys; the session token is that of the post-sts-* cases. */
static const struct sigv4_credentials example_keys = {
	"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
	"AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqT"
	"flfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9"
	"HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYv"
	"KTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==",
};

/* 2024-03-01T12:34:56Z */
#define TOKEN_TIME ((time_t)1709296496)

/*
 * Made with botocore 1.43.11, its clock fixed at TOKEN_TIME:
 *   rds.generate_db_auth_token('mydb.cluster-abc.eu-west-1.rds.amazonaws.com', 5432, 'app user+1', 'eu-west-1')
 * with the keys above (session token included).
 */
static const char botocore_token_with_session[] =
	"mydb.cluster-abc.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app%20user%2B1"
	"&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240301%2Feu-west-1%2Frds-db%2Faws4_request"
	"&X-Amz-Date=20240301T123456Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token="
	"AQoDYXdzEPT%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXm"
	"xfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI%2FqkPpKPi%2FkMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5"
	"VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d%2Bxo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz%2BscqKmlzm8FDrypNC9Yjc8fPOLn"
	"9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR%2FoLxBA%3D%3D"
	"&X-Amz-Signature=bc77ec75af0c2bbb7ae091757955dfa6ed849f0b4fbc7b4cf569108411e401bf";

/*
 * The same, without a session token, for a host in mixed case on port 443
 * (botocore signs "mydb.example.com" there: lower case, no default port):
 *   rds.generate_db_auth_token('MyDB.example.com', 443, 'iam_user', 'us-east-1')
 */
static const char botocore_token_port_443[] =
	"MyDB.example.com:443/?Action=connect&DBUser=iam_user&X-Amz-Algorithm=AWS4-HMAC-SHA256"
	"&X-Amz-Credential=AKIDEXAMPLE%2F20240301%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20240301T123456Z"
	"&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
	"&X-Amz-Signature=3e9757ca771087861b8c53115ad7d7af878ac898fcefd850b94942a449ad26a7";

Test(sigv4, rds_token_is_botocores_with_a_session_token)
{
	char *token = sigv4_rds_auth_token(&example_keys, "mydb.cluster-abc.eu-west-1.rds.amazonaws.com", 5432,
					   "app user+1", "eu-west-1", TOKEN_TIME);

	cr_assert_not_null(token);
	cr_expect_str_eq(token, botocore_token_with_session);
	free(token);
}

Test(sigv4, rds_token_is_botocores_on_port_443_without_a_session_token)
{
	struct sigv4_credentials keys = example_keys;
	char *token;

	keys.session_token = NULL;
	token = sigv4_rds_auth_token(&keys, "MyDB.example.com", 443, "iam_user", "us-east-1", TOKEN_TIME);
	cr_assert_not_null(token);
	cr_expect_str_eq(token, botocore_token_port_443);
	free(token);
}

Test(sigv4, uri_encoding)
{
	char *a = sigv4_uri_encode("a b/c+d=e~f_g.h-i%\xe1\x88\xb4", false);
	char *b = sigv4_uri_encode("/x y/", true);

	cr_expect_str_eq(a, "a%20b%2Fc%2Bd%3De~f_g.h-i%25%E1%88%B4");
	cr_expect_str_eq(b, "/x%20y/");
	free(a);
	free(b);
}

Test(sigv4, a_request_without_host_is_refused)
{
	struct sigv4_header headers[] = { { "X-Other", "1" } };
	struct sigv4_request r = { .method = "GET", .path = "/", .headers = headers, .n_headers = 1 };
	struct sigv4_scope scope = { "us-east-1", "sts", TOKEN_TIME };
	struct sigv4_result out;

	cr_expect_eq(sigv4_sign_headers(&r, &example_keys, &scope, &out), -1);
	sigv4_result_free(&out);
	cr_expect_eq(sigv4_presign(&r, &example_keys, &scope, 60, &out), -1);
	sigv4_result_free(&out);
}
