/*
 * sigv4.c: AWS Signature Version 4 (see sigv4.h). The steps are AWS's own:
 * a canonical request (method, URI, sorted query, sorted headers, payload
 * hash), a string to sign that hashes it under a credential scope, and an
 * HMAC-SHA256 with a key derived from the secret key, the date, the region
 * and the service. Nothing here allocates on failure paths the caller must
 * free but through sigv4_result_free().
 */
#include "sigv4.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "util.h"

#define ALGORITHM "AWS4-HMAC-SHA256"

/* ---------------------------------------------------------------- strings */

struct text {
	char *data;
	size_t len;
	size_t cap;
};

static void text_add(struct text *t, const char *s, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 256;

		while (t->len + n + 1 > cap)
			cap *= 2;
		t->data = xrealloc(t->data, cap);
		t->cap = cap;
	}
	memcpy(t->data + t->len, s, n);
	t->len += n;
	t->data[t->len] = '\0';
}

static void text_put(struct text *t, const char *s)
{
	text_add(t, s, strlen(s));
}

static void text_printf(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void text_printf(struct text *t, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		abort();
	if ((size_t)n < sizeof(buf)) {
		text_add(t, buf, (size_t)n);
		return;
	}
	char *big = xmalloc((size_t)n + 1);

	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	text_add(t, big, (size_t)n);
	free(big);
}

/* The text's string, never NULL (ownership passes to the caller). */
static char *text_take(struct text *t)
{
	if (t->data == NULL)
		text_add(t, "", 0);
	return t->data;
}

static bool is_unreserved(unsigned char c)
{
	return isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~';
}

static void encode_into(struct text *t, const char *s, size_t n, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (is_unreserved(c) || (keep_slash && c == '/')) {
			text_add(t, (const char *)&c, 1);
		} else {
			char escaped[3] = { '%', hex[c >> 4], hex[c & 15] };

			text_add(t, escaped, 3);
		}
	}
}

char *sigv4_uri_encode(const char *text, bool keep_slash)
{
	struct text t = { 0 };

	encode_into(&t, text, strlen(text), keep_slash);
	return text_take(&t);
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decode s[0..n) ('+' stays '+': AWS query strings are not form-encoded). */
static char *uri_decode(const char *s, size_t n)
{
	char *out = xmalloc(n + 1);
	size_t used = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%' && i + 2 < n && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
			out[used++] = (char)(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
			i += 2;
		} else {
			out[used++] = s[i];
		}
	}
	out[used] = '\0';
	return out;
}

/* ---------------------------------------------------------------- hashing */

static void to_hex(const unsigned char *bytes, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[bytes[i] >> 4];
		out[2 * i + 1] = hex[bytes[i] & 15];
	}
	out[2 * n] = '\0';
}

void sigv4_sha256_hex(const void *data, size_t len, char *out)
{
	unsigned char digest[SHA256_DIGEST_LENGTH];

	if (EVP_Digest(data, len, digest, NULL, EVP_sha256(), NULL) != 1)
		abort();
	to_hex(digest, sizeof(digest), out);
}

static void hmac(const void *key, size_t key_len, const char *msg, unsigned char out[SHA256_DIGEST_LENGTH])
{
	unsigned int out_len = SHA256_DIGEST_LENGTH;

	if (HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)msg, strlen(msg), out, &out_len) == NULL)
		abort();
}

/* ---------------------------------------------------------------- canonical parts */

/*
 * The canonical URI: with normalization, "." and ".." segments go and
 * repeated slashes become one (a trailing slash stays); then every byte but
 * the unreserved ones and '/' is percent-encoded.
 */
static void canonical_uri(struct text *t, const char *path, bool normalize)
{
	if (path == NULL || path[0] == '\0')
		path = "/";
	if (!normalize) {
		encode_into(t, path, strlen(path), true);
		return;
	}
	size_t n = strlen(path);
	const char **segments = xcalloc(n + 1, sizeof(*segments));
	size_t *lengths = xcalloc(n + 1, sizeof(*lengths));
	size_t count = 0;
	bool trailing_slash = n > 0 && path[n - 1] == '/';
	const char *p = path;

	while (*p) {
		while (*p == '/')
			p++;
		if (*p == '\0')
			break;
		const char *start = p;

		while (*p && *p != '/')
			p++;
		size_t len = (size_t)(p - start);

		if (len == 1 && start[0] == '.') {
			trailing_slash = trailing_slash || *p == '\0';
			continue;
		}
		if (len == 2 && start[0] == '.' && start[1] == '.') {
			if (count > 0)
				count--;
			trailing_slash = trailing_slash || *p == '\0';
			continue;
		}
		segments[count] = start;
		lengths[count++] = len;
	}
	text_put(t, "/");
	for (size_t i = 0; i < count; i++) {
		encode_into(t, segments[i], lengths[i], false);
		if (i + 1 < count || trailing_slash)
			text_put(t, "/");
	}
	free(segments);
	free(lengths);
}

struct query_pair {
	char *key;   /* percent-encoded the canonical way */
	char *value;
};

static int compare_pairs(const void *a, const void *b)
{
	const struct query_pair *x = a, *y = b;
	int c = strcmp(x->key, y->key);

	return c != 0 ? c : strcmp(x->value, y->value);
}

/* The canonical query: each name and value decoded, encoded again, sorted by name then value. */
static void canonical_query(struct text *t, const char *query)
{
	size_t n = 0, cap = 8;
	struct query_pair *pairs;
	const char *p = query;

	if (query == NULL || query[0] == '\0')
		return;
	pairs = xcalloc(cap, sizeof(*pairs));
	while (*p) {
		const char *end = strchr(p, '&');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (len > 0) {
			const char *eq = memchr(p, '=', len);
			size_t key_len = eq ? (size_t)(eq - p) : len;
			char *key = uri_decode(p, key_len);
			char *value = eq ? uri_decode(eq + 1, len - key_len - 1) : xstrdup("");

			if (n == cap) {
				cap *= 2;
				pairs = xrealloc(pairs, cap * sizeof(*pairs));
			}
			pairs[n].key = sigv4_uri_encode(key, false);
			pairs[n].value = sigv4_uri_encode(value, false);
			n++;
			free(key);
			free(value);
		}
		p += len;
		if (*p == '&')
			p++;
	}
	qsort(pairs, n, sizeof(*pairs), compare_pairs);
	for (size_t i = 0; i < n; i++) {
		text_printf(t, "%s%s=%s", i ? "&" : "", pairs[i].key, pairs[i].value);
		free(pairs[i].key);
		free(pairs[i].value);
	}
	free(pairs);
}

struct header_entry {
	char *name;  /* lower case */
	char *value; /* trimmed, inner runs of spaces made one */
	size_t order;
};

static int compare_headers(const void *a, const void *b)
{
	const struct header_entry *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c != 0)
		return c;
	return x->order < y->order ? -1 : x->order > y->order;
}

static char *lower_copy(const char *s)
{
	char *copy = xstrdup(s);

	for (char *p = copy; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return copy;
}

static char *trimmed_value(const char *s)
{
	struct text t = { 0 };
	bool space = false;

	while (*s == ' ' || *s == '\t')
		s++;
	for (; *s; s++) {
		if (*s == ' ' || *s == '\t') {
			space = true;
			continue;
		}
		if (space && t.len > 0)
			text_put(&t, " ");
		space = false;
		text_add(&t, s, 1);
	}
	return text_take(&t);
}

/*
 * The canonical headers ("name:value\n" each, sorted by name; a name given
 * twice gets its values joined with commas, in the order given) into t, and
 * the signed-headers list ("a;b;c") into signed_list. Returns false when no
 * Host header is among them.
 */
static bool canonical_headers(struct text *t, struct text *signed_list, const struct sigv4_header *headers,
			      size_t n)
{
	struct header_entry *entries = xcalloc(n ? n : 1, sizeof(*entries));
	bool have_host = false;

	for (size_t i = 0; i < n; i++) {
		entries[i].name = lower_copy(headers[i].name);
		entries[i].value = trimmed_value(headers[i].value ? headers[i].value : "");
		entries[i].order = i;
		have_host = have_host || strcmp(entries[i].name, "host") == 0;
	}
	qsort(entries, n, sizeof(*entries), compare_headers);
	for (size_t i = 0; i < n; i++) {
		bool same_as_previous = i > 0 && strcmp(entries[i].name, entries[i - 1].name) == 0;

		if (same_as_previous) {
			/* Replace the newline that ended the previous value with the comma that continues it. */
			t->data[--t->len] = '\0';
			text_printf(t, ",%s\n", entries[i].value);
		} else {
			text_printf(t, "%s:%s\n", entries[i].name, entries[i].value);
			text_printf(signed_list, "%s%s", signed_list->len ? ";" : "", entries[i].name);
		}
	}
	for (size_t i = 0; i < n; i++) {
		free(entries[i].name);
		free(entries[i].value);
	}
	free(entries);
	return have_host;
}

/* ---------------------------------------------------------------- signing */

static char *build_canonical_request(const struct sigv4_request *r, const char *query,
				     const struct sigv4_header *headers, size_t n_headers, char **signed_headers)
{
	struct text t = { 0 }, signed_list = { 0 };
	char payload_hash[SIGV4_HEX_LEN + 1];

	text_printf(&t, "%s\n", r->method);
	canonical_uri(&t, r->path, r->normalize_path);
	text_put(&t, "\n");
	canonical_query(&t, query);
	text_put(&t, "\n");
	if (!canonical_headers(&t, &signed_list, headers, n_headers)) {
		free(t.data);
		free(signed_list.data);
		return NULL;
	}
	text_put(&t, "\n");
	text_printf(&t, "%s\n", text_take(&signed_list));
	sigv4_sha256_hex(r->payload ? r->payload : "", r->payload ? r->payload_len : 0, payload_hash);
	text_put(&t, payload_hash);
	*signed_headers = text_take(&signed_list);
	return text_take(&t);
}

static void format_times(time_t when, char amz_date[17], char date8[9])
{
	struct tm tm;

	gmtime_r(&when, &tm);
	strftime(amz_date, 17, "%Y%m%dT%H%M%SZ", &tm);
	memcpy(date8, amz_date, 8);
	date8[8] = '\0';
}

/* The string to sign and the signature for a canonical request. */
static void sign_canonical(const char *canonical, const struct sigv4_credentials *c, const struct sigv4_scope *scope,
			   const char *amz_date, const char *date8, struct sigv4_result *out)
{
	char canonical_hash[SIGV4_HEX_LEN + 1];
	unsigned char key[SHA256_DIGEST_LENGTH], signature[SHA256_DIGEST_LENGTH];
	struct text sts = { 0 }, secret = { 0 };

	sigv4_sha256_hex(canonical, strlen(canonical), canonical_hash);
	text_printf(&sts, "%s\n%s\n%s/%s/%s/aws4_request\n%s", ALGORITHM, amz_date, date8, scope->region,
		    scope->service, canonical_hash);
	out->string_to_sign = text_take(&sts);

	text_printf(&secret, "AWS4%s", c->secret_access_key);
	hmac(secret.data, secret.len, date8, key);
	OPENSSL_cleanse(secret.data, secret.len);
	free(secret.data);
	hmac(key, sizeof(key), scope->region, key);
	hmac(key, sizeof(key), scope->service, key);
	hmac(key, sizeof(key), "aws4_request", key);
	hmac(key, sizeof(key), out->string_to_sign, signature);
	OPENSSL_cleanse(key, sizeof(key));
	to_hex(signature, sizeof(signature), out->signature);
}

static bool has_token(const struct sigv4_credentials *c)
{
	return c->session_token != NULL && c->session_token[0] != '\0';
}

void sigv4_result_free(struct sigv4_result *r)
{
	if (r == NULL)
		return;
	/* A presigned query is a credential for as long as it is valid. */
	if (r->query)
		OPENSSL_cleanse(r->query, strlen(r->query));
	free(r->authorization);
	free(r->query);
	free(r->canonical_request);
	free(r->string_to_sign);
	memset(r, 0, sizeof(*r));
}

int sigv4_sign_headers(const struct sigv4_request *r, const struct sigv4_credentials *c,
		       const struct sigv4_scope *scope, struct sigv4_result *out)
{
	char date8[9];
	struct sigv4_header *headers = xcalloc(r->n_headers + 2, sizeof(*headers));
	size_t n = 0;
	char *signed_headers = NULL;

	memset(out, 0, sizeof(*out));
	format_times(scope->when, out->amz_date, date8);
	for (size_t i = 0; i < r->n_headers; i++)
		headers[n++] = r->headers[i];
	headers[n++] = (struct sigv4_header){ "X-Amz-Date", out->amz_date };
	if (has_token(c))
		headers[n++] = (struct sigv4_header){ "X-Amz-Security-Token", c->session_token };
	out->canonical_request = build_canonical_request(r, r->query, headers, n, &signed_headers);
	free(headers);
	if (out->canonical_request == NULL)
		return -1;
	sign_canonical(out->canonical_request, c, scope, out->amz_date, date8, out);

	struct text authorization = { 0 };

	text_printf(&authorization, "%s Credential=%s/%s/%s/%s/aws4_request, SignedHeaders=%s, Signature=%s",
		    ALGORITHM, c->access_key_id, date8, scope->region, scope->service, signed_headers,
		    out->signature);
	out->authorization = text_take(&authorization);
	free(signed_headers);
	return 0;
}

int sigv4_presign(const struct sigv4_request *r, const struct sigv4_credentials *c,
		  const struct sigv4_scope *scope, int expires_seconds, struct sigv4_result *out)
{
	char date8[9];
	struct text credential = { 0 }, signed_list = { 0 }, scratch = { 0 }, query = { 0 };
	char *encoded_credential, *encoded_signed, *signed_headers, *signed_again = NULL;

	memset(out, 0, sizeof(*out));
	format_times(scope->when, out->amz_date, date8);

	/* Which headers are signed must be known before the query that names them is. */
	if (!canonical_headers(&scratch, &signed_list, r->headers, r->n_headers)) {
		free(scratch.data);
		free(signed_list.data);
		return -1;
	}
	free(scratch.data);
	signed_headers = text_take(&signed_list);

	text_printf(&credential, "%s/%s/%s/%s/aws4_request", c->access_key_id, date8, scope->region,
		    scope->service);
	encoded_credential = sigv4_uri_encode(text_take(&credential), false);
	encoded_signed = sigv4_uri_encode(signed_headers, false);
	free(credential.data);

	if (r->query && r->query[0])
		text_printf(&query, "%s&", r->query);
	text_printf(&query, "X-Amz-Algorithm=%s&X-Amz-Credential=%s&X-Amz-Date=%s&X-Amz-Expires=%d"
			    "&X-Amz-SignedHeaders=%s",
		    ALGORITHM, encoded_credential, out->amz_date, expires_seconds, encoded_signed);
	if (has_token(c)) {
		char *token = sigv4_uri_encode(c->session_token, false);

		text_printf(&query, "&X-Amz-Security-Token=%s", token);
		OPENSSL_cleanse(token, strlen(token));
		free(token);
	}
	free(encoded_credential);
	free(encoded_signed);

	out->canonical_request = build_canonical_request(r, text_take(&query), r->headers, r->n_headers,
							 &signed_again);
	free(signed_headers);
	free(signed_again);
	if (out->canonical_request == NULL) {
		free(query.data);
		return -1;
	}
	sign_canonical(out->canonical_request, c, scope, out->amz_date, date8, out);
	text_printf(&query, "&X-Amz-Signature=%s", out->signature);
	out->query = text_take(&query);
	return 0;
}

char *sigv4_rds_auth_token(const struct sigv4_credentials *c, const char *host, int port, const char *user,
			   const char *region, time_t when)
{
	struct text host_header = { 0 }, query = { 0 }, token = { 0 };
	struct sigv4_result result;
	char *lower_host = lower_copy(host), *encoded_user = sigv4_uri_encode(user, false);
	int rc;

	/* Python's urlsplit gives botocore the host in lower case, and it leaves the default port out. */
	if (port == 443)
		text_put(&host_header, lower_host);
	else
		text_printf(&host_header, "%s:%d", lower_host, port);
	text_printf(&query, "Action=connect&DBUser=%s", encoded_user);

	struct sigv4_header headers[] = { { "host", text_take(&host_header) } };
	struct sigv4_request request = {
		.method = "GET", .path = "/", .normalize_path = true, .query = text_take(&query),
		.headers = headers, .n_headers = 1,
	};
	struct sigv4_scope scope = { .region = region, .service = "rds-db", .when = when };

	rc = sigv4_presign(&request, c, &scope, 900, &result);
	free(lower_host);
	free(encoded_user);
	free(host_header.data);
	free(query.data);
	if (rc != 0)
		return NULL;
	text_printf(&token, "%s:%d/?%s", host, port, result.query);
	sigv4_result_free(&result);
	return text_take(&token);
}
