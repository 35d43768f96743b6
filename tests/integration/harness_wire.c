/*
 * harness_wire.c: the raw protocol for the integration suite (see
 * harness.h): build frontend messages byte by byte, log in and query on a
 * bare socket, read backend messages and check that they are well formed,
 * write them down as a transcript, and compare what pgmux answers with what
 * PostgreSQL answers to the same bytes. The tests that send what no driver
 * sends (the protocol fuzz test, the stress test, the cases the fuzz test
 * found, hostile clients) share these.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---------------------------------------------------------------- reading backend messages */

enum h_msg_result h_raw_read_message(int fd, char *type, char **body, size_t *len, int timeout_ms)
{
	long long deadline = h_now_ms() + timeout_ms;
	uint8_t hdr[5];
	ssize_t n = h_raw_read(fd, hdr, 5, timeout_ms);
	uint32_t mlen;

	*body = NULL;
	*len = 0;
	*type = n > 0 ? (char)hdr[0] : '?';
	if (n == -2)
		return H_MSG_TIMEOUT;
	if (n < 5) {
		*len = n > 0 ? (size_t)n : 0;
		return H_MSG_CLOSED;
	}
	mlen = h_get_u32(hdr + 1);
	if (mlen < 4 || mlen > (1u << 24)) {
		fprintf(stderr, "raw: message '%c' with impossible length %u\n", *type, mlen);
		return H_MSG_ERROR;
	}
	*body = malloc(mlen - 4 + 1);
	cr_assert_not_null(*body);
	n = h_raw_read(fd, *body, mlen - 4, (int)(deadline - h_now_ms()));
	if (n == -2 || n < (ssize_t)(mlen - 4)) {
		free(*body);
		*body = NULL;
		*len = 5 + (n > 0 ? (size_t)n : 0);
		return n == -2 ? H_MSG_TIMEOUT : H_MSG_CLOSED;
	}
	(*body)[mlen - 4] = '\0';
	*len = mlen - 4;
	return H_MSG_OK;
}

size_t h_build_startup(uint8_t *buf, size_t cap, uint32_t version, const char *const params[])
{
	size_t len = 8;
	for (size_t i = 0; params && params[i]; i++) {
		size_t l = strlen(params[i]) + 1;
		cr_assert(len + l + 1 <= cap);
		memcpy(buf + len, params[i], l);
		len += l;
	}
	buf[len++] = '\0';
	h_put_u32(buf, (uint32_t)len);
	h_put_u32(buf + 4, version);
	return len;
}

const char *h_error_field(const char *body, size_t len, char field)
{
	size_t i = 0;
	while (i < len && body[i] != '\0') {
		char f = body[i++];
		const char *val = body + i;
		size_t l = strnlen(val, len - i);
		if (f == field)
			return val;
		i += l + 1;
	}
	return NULL;
}

/* ---------------------------------------------------------------- bytes a client sends */

void h_buf_put(struct h_buf *b, const void *data, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;

		while (b->len + n + 1 > cap)
			cap *= 2;
		b->p = realloc(b->p, cap);
		cr_assert_not_null(b->p);
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0'; /* text buffers stay printable */
}

void h_buf_u8(struct h_buf *b, uint8_t v)
{
	h_buf_put(b, &v, 1);
}

void h_buf_i16(struct h_buf *b, int v)
{
	uint8_t x[2] = {(uint8_t)((unsigned)v >> 8), (uint8_t)v};

	h_buf_put(b, x, 2);
}

void h_buf_i32(struct h_buf *b, int64_t v)
{
	uint8_t x[4];

	h_put_u32(x, (uint32_t)v);
	h_buf_put(b, x, 4);
}

void h_buf_str(struct h_buf *b, const char *s)
{
	h_buf_put(b, s, strlen(s) + 1);
}

void h_buf_printf(struct h_buf *b, const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	h_buf_put(b, line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

const char *h_buf_text(const struct h_buf *b)
{
	return b->p ? (const char *)b->p : "";
}

void h_buf_free(struct h_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

size_t h_msg_begin(struct h_buf *b, char type)
{
	size_t at = b->len;

	h_buf_u8(b, (uint8_t)type);
	h_buf_i32(b, 0);
	return at;
}

void h_msg_end(struct h_buf *b, size_t at)
{
	h_put_u32(b->p + at + 1, (uint32_t)(b->len - at - 1));
}

void h_msg_raw(struct h_buf *b, char type, const void *body, size_t len)
{
	size_t at = h_msg_begin(b, type);

	h_buf_put(b, body, len);
	h_msg_end(b, at);
}

void h_msg_query(struct h_buf *b, const char *sql)
{
	size_t at = h_msg_begin(b, 'Q');

	h_buf_str(b, sql);
	h_msg_end(b, at);
}

void h_msg_parse(struct h_buf *b, const char *name, const char *sql)
{
	size_t at = h_msg_begin(b, 'P');

	h_buf_str(b, name);
	h_buf_str(b, sql);
	h_buf_i16(b, 0);
	h_msg_end(b, at);
}

void h_msg_bind(struct h_buf *b, const char *portal, const char *name, int nparams, const char *const params[])
{
	size_t at = h_msg_begin(b, 'B');

	h_buf_str(b, portal);
	h_buf_str(b, name);
	h_buf_i16(b, 0);
	h_buf_i16(b, nparams);
	for (int i = 0; i < nparams; i++) {
		h_buf_i32(b, (int64_t)strlen(params[i]));
		h_buf_put(b, params[i], strlen(params[i]));
	}
	h_buf_i16(b, 0);
	h_msg_end(b, at);
}

void h_msg_execute(struct h_buf *b, const char *portal, int max_rows)
{
	size_t at = h_msg_begin(b, 'E');

	h_buf_str(b, portal);
	h_buf_i32(b, max_rows);
	h_msg_end(b, at);
}

void h_msg_target(struct h_buf *b, char type, char kind, const char *name)
{
	size_t at = h_msg_begin(b, type);

	h_buf_u8(b, (uint8_t)kind);
	h_buf_str(b, name);
	h_msg_end(b, at);
}

void h_msg_sync(struct h_buf *b)
{
	h_msg_raw(b, 'S', "", 0);
}

void h_msg_parse_sync(struct h_buf *b, const char *name, const char *sql)
{
	h_msg_parse(b, name, sql);
	h_msg_sync(b);
}

void h_msg_run(struct h_buf *b, const char *name)
{
	h_msg_bind(b, "", name, 0, NULL);
	h_msg_execute(b, "", 0);
	h_msg_sync(b);
}

void h_send_buf(int fd, const struct h_buf *b)
{
	cr_assert(h_raw_send(fd, b->p, b->len), "could not send %zu bytes to pgmux", b->len);
}

/* ---------------------------------------------------------------- raw sessions */

int h_raw_login(int port, const char *application_name, uint32_t key[2])
{
	int fd = h_raw_connect(port, h_scaled_ms(2000));
	uint8_t buf[256];
	const char *params[] = {"user", h_env()->appuser, "database", "postgres",
				application_name ? "application_name" : NULL, application_name, NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);

	if (fd < 0)
		return -1;
	if (!h_raw_send(fd, buf, len)) {
		close(fd);
		return -1;
	}
	for (;;) {
		char type;
		char *body;
		size_t blen;
		enum h_msg_result r = h_raw_read_message(fd, &type, &body, &blen, h_scaled_ms(5000));
		/* AuthenticationOk is the only authentication message a trust login gets. */
		bool asked_to_authenticate = r == H_MSG_OK && type == 'R' && (blen < 4 || h_get_u32(body) != 0);

		if (r == H_MSG_OK && type == 'K' && blen == 8 && key) {
			key[0] = h_get_u32(body);
			key[1] = h_get_u32(body + 4);
		}
		free(body);
		if (r != H_MSG_OK || type == 'E' || asked_to_authenticate) {
			close(fd);
			return -1;
		}
		if (type == 'Z')
			return fd;
	}
}

int h_raw_session(const struct pgmux *p, const char *application_name, uint32_t key[2])
{
	int fd = h_raw_login(p->port, application_name, key);

	if (fd < 0)
		pgmux_dump_logs(p);
	cr_assert(fd >= 0, "a raw session could not log in through pgmux");
	return fd;
}

bool h_raw_read_until_ready(int fd, char **first_value)
{
	long long deadline = h_now_ms() + h_scaled_ms(10000);
	bool failed = false;

	if (first_value)
		*first_value = NULL;
	for (;;) {
		long long left = deadline - h_now_ms();
		char type;
		char *body;
		size_t len;

		if (h_raw_read_message(fd, &type, &body, &len, left > 0 ? (int)left : 1) != H_MSG_OK)
			return false;
		if (type == 'E')
			failed = true;
		if (type == 'D' && first_value && *first_value == NULL && len >= 6) {
			int32_t n = (int32_t)h_get_u32(body + 2);

			if (n >= 0 && (size_t)n <= len - 6)
				*first_value = strndup(body + 6, (size_t)n);
		}
		free(body);
		if (type == 'Z')
			break;
	}
	if (failed && first_value) {
		free(*first_value);
		*first_value = NULL;
	}
	return !failed;
}

bool h_raw_query(int fd, const char *sql)
{
	struct h_buf q = {0};
	bool sent;

	h_msg_query(&q, sql);
	sent = h_raw_send(fd, q.p, q.len);
	h_buf_free(&q);
	return sent && h_raw_read_until_ready(fd, NULL);
}

void h_raw_expect_fatal(int fd, const char *sqlstate, const char *text, const char *allowed_before,
			const char *what)
{
	char type = '?';
	char *body = NULL;
	size_t len = 0;
	enum h_msg_result r;

	for (;;) {
		r = h_raw_read_message(fd, &type, &body, &len, h_scaled_ms(5000));
		if (r != H_MSG_OK || type == 'E' || allowed_before == NULL || strchr(allowed_before, type) == NULL)
			break;
		free(body);
		body = NULL;
	}
	const char *sev = r == H_MSG_OK && type == 'E' ? h_error_field(body, len, 'V') : NULL;
	const char *code = sev ? h_error_field(body, len, 'C') : NULL;
	const char *msg = sev ? h_error_field(body, len, 'M') : NULL;
	bool ok = sev && code && strcmp(sev, "FATAL") == 0 && strcmp(code, sqlstate) == 0 &&
		  (text == NULL || (msg && strstr(msg, text)));

	if (!ok)
		h_dump_current_logs();
	cr_assert(ok, "%s: expected FATAL %s%s%s, got %s (message '%c', %s %s: %s)", what, sqlstate,
		  text ? " mentioning " : "", text ? text : "",
		  r == H_MSG_OK ? "a message" : r == H_MSG_TIMEOUT ? "nothing" : "a close", r == H_MSG_OK ? type : '-',
		  sev ? sev : "", code ? code : "", msg ? msg : "");
	free(body);
	cr_assert(h_raw_wait_closed(fd, h_scaled_ms(3000)), "%s: not closed after the FATAL error", what);
	close(fd);
}

void h_raw_cancel(int port, const uint32_t key[2])
{
	int fd = h_raw_connect(port, h_scaled_ms(2000));
	uint8_t req[16];

	cr_assert(fd >= 0, "cannot connect to pgmux to cancel");
	h_put_u32(req, 16);
	h_put_u32(req + 4, 80877102);
	h_put_u32(req + 8, key[0]);
	h_put_u32(req + 12, key[1]);
	cr_assert(h_raw_send(fd, req, sizeof(req)));
	/* pgmux closes once it has looked the key up. */
	h_raw_wait_closed(fd, h_scaled_ms(2000));
	close(fd);
}

int h_raw_blocker_begin(const struct pgmux *p)
{
	int fd = h_raw_session(p, NULL, NULL);

	cr_assert(h_raw_query(fd, "begin"), "the blocking client could not begin");
	return fd;
}

void h_raw_blocker_end(int fd)
{
	cr_assert(h_raw_query(fd, "rollback"), "the blocking client could not roll back");
	close(fd);
}

/* ---------------------------------------------------------------- answers, and PostgreSQL's */

/* Is body a list of NUL-terminated fields ended by a zero byte, as ErrorResponse/NoticeResponse? */
static const char *check_error_fields(const char *body, size_t len, bool error)
{
	size_t i = 0;

	while (i < len && body[i] != '\0') {
		size_t l = strnlen(body + i + 1, len - i - 1);

		if (i + 1 + l >= len)
			return "a field without its NUL";
		i += l + 2;
	}
	if (i + 1 != len)
		return "no terminator, or bytes after it";
	const char *sev = h_error_field(body, len, 'V');
	const char *code = h_error_field(body, len, 'C');
	const char *msg = h_error_field(body, len, 'M');

	if (!sev || !h_error_field(body, len, 'S') || !code || !msg)
		return "missing S, V, C or M";
	if (strlen(code) != 5 || strspn(code, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") != 5)
		return "a malformed SQLSTATE";
	if (error && strcmp(sev, "ERROR") != 0 && strcmp(sev, "FATAL") != 0)
		return "an ErrorResponse that is neither ERROR nor FATAL";
	if (!error && strcmp(sev, "NOTICE") != 0 && strcmp(sev, "WARNING") != 0 && strcmp(sev, "INFO") != 0 &&
	    strcmp(sev, "LOG") != 0 && strcmp(sev, "DEBUG") != 0)
		return "a NoticeResponse of an unknown severity";
	if (strcmp(code, "XX000") == 0)
		return "an internal error (XX000)";
	/* pgmux's own statement names must never reach the client. */
	if (memmem(body, len, "pgmux_", 6))
		return "pgmux's internal statement name";
	return NULL;
}

/* A reader over a message body that says whether the layout adds up. */
struct rd {
	const uint8_t *p;
	size_t len, pos;
	bool bad;
};

static int64_t rd_int(struct rd *r, int size)
{
	int64_t v = 0;

	if (r->bad || r->len - r->pos < (size_t)size) {
		r->bad = true;
		return 0;
	}
	for (int i = 0; i < size; i++)
		v = (v << 8) | r->p[r->pos++];
	return size == 2 ? (int16_t)v : (int32_t)v;
}

static void rd_skip(struct rd *r, int64_t n)
{
	if (r->bad || n < 0 || (uint64_t)n > r->len - r->pos)
		r->bad = true;
	else
		r->pos += (size_t)n;
}

static void rd_str(struct rd *r)
{
	const void *nul = r->bad ? NULL : memchr(r->p + r->pos, 0, r->len - r->pos);

	if (nul == NULL)
		r->bad = true;
	else
		r->pos = (size_t)((const uint8_t *)nul - r->p) + 1;
}

/* NULL when a backend message is well-formed, else what is wrong with it. */
static const char *check_backend_message(char type, const char *body, size_t len)
{
	struct rd r = {(const uint8_t *)body, len, 0, false};
	int64_t n;

	switch (type) {
	case 'E':
	case 'N':
		return check_error_fields(body, len, type == 'E');
	case 'Z':
		return len == 1 && strchr("ITE", body[0]) && body[0] ? NULL : "a malformed ReadyForQuery";
	case '1':
	case '2':
	case '3':
	case 'n':
	case 's':
	case 'I':
	case 'c':
		return len == 0 ? NULL : "a body on a message that has none";
	case 'C':
		rd_str(&r);
		break;
	case 'S':
		rd_str(&r);
		rd_str(&r);
		break;
	case 'A':
		rd_int(&r, 4);
		rd_str(&r);
		rd_str(&r);
		break;
	case 'T':
		n = rd_int(&r, 2);
		for (int64_t i = 0; i < n && !r.bad; i++) {
			rd_str(&r);
			rd_skip(&r, 18);
		}
		r.bad |= n < 0;
		break;
	case 'D':
		n = rd_int(&r, 2);
		for (int64_t i = 0; i < n && !r.bad; i++) {
			int64_t l = rd_int(&r, 4);

			if (l != -1)
				rd_skip(&r, l);
		}
		r.bad |= n < 0;
		break;
	case 't':
		n = rd_int(&r, 2);
		rd_skip(&r, n * 4);
		break;
	case 'G':
	case 'H':
	case 'W':
		rd_skip(&r, 1);
		n = rd_int(&r, 2);
		rd_skip(&r, n * 2);
		break;
	case 'V':
		n = rd_int(&r, 4);
		if (n != -1)
			rd_skip(&r, n);
		break;
	case 'd':
		return NULL;
	default:
		return "a message type a backend does not send after login";
	}
	return !r.bad && r.pos == r.len ? NULL : "a body whose layout does not add up";
}

void h_transcribe(struct h_buf *t, char type, const char *body, size_t len)
{
	if (type == 'S')
		return;
	if (type == 'E' || type == 'N') {
		const char *sev = h_error_field(body, len, 'V');
		const char *code = h_error_field(body, len, 'C');

		h_buf_printf(t, "%c %s %s\n", type, sev ? sev : "?", code ? code : "?");
		return;
	}
	if (type == 'D' || type == 'C') {
		/* Rows and command tags as text (they are), so that a difference reads well. */
		h_buf_printf(t, "%c ", type);
		for (size_t i = 0; i < len; i++) {
			uint8_t ch = (uint8_t)body[i];

			if (ch >= 0x20 && ch < 0x7f && ch != '\\')
				h_buf_put(t, &ch, 1);
			else
				h_buf_printf(t, "\\x%02x", ch);
		}
		h_buf_printf(t, "\n");
		return;
	}
	h_buf_printf(t, "%c", type);
	for (size_t i = 0; i < len; i++)
		h_buf_printf(t, "%02x", (uint8_t)body[i]);
	h_buf_printf(t, "\n");
}

void h_read_outcome(int fd, const char *marker, struct h_outcome *o)
{
	long long deadline = h_now_ms() + h_scaled_ms(5000);

	h_buf_free(&o->transcript);
	memset(o, 0, sizeof(*o));
	for (;;) {
		long long left = deadline - h_now_ms();
		char type;
		char *body;
		size_t len;
		enum h_msg_result r = h_raw_read_message(fd, &type, &body, &len, left > 0 ? (int)left : 1);
		const char *bad;

		if (r == H_MSG_TIMEOUT) {
			o->timed_out = true;
			return;
		}
		if (r == H_MSG_ERROR) {
			snprintf(o->problem, sizeof(o->problem), "a message '%c' with an impossible length", type);
			return;
		}
		if (r == H_MSG_CLOSED) {
			o->closed = true;
			o->cut = len > 0;
			h_buf_printf(&o->transcript, "closed\n");
			return;
		}
		bad = check_backend_message(type, body, len);
		if (bad) {
			const char *m = type == 'E' || type == 'N' ? h_error_field(body, len, 'M') : NULL;

			snprintf(o->problem, sizeof(o->problem), "message '%c' (%zu bytes): %s%s%s", type, len, bad,
				 m ? ": " : "", m ? m : "");
		} else if (o->fatal[0]) {
			snprintf(o->problem, sizeof(o->problem), "message '%c' after a FATAL error", type);
		} else {
			h_transcribe(&o->transcript, type, body, len);
			if (type == 'E' && strcmp(h_error_field(body, len, 'V'), "FATAL") == 0)
				snprintf(o->fatal, sizeof(o->fatal), "%s", h_error_field(body, len, 'C'));
			else if (type == 'E')
				o->errors++;
			else if (type == 'D' && marker && memmem(body, len, marker, strlen(marker)))
				o->marker = true;
			else if (type == 'Z' && o->marker)
				o->finished = true;
		}
		free(body);
		if (o->problem[0] || o->finished)
			return;
	}
}

void h_put_finish(struct h_buf *b, const char *marker)
{
	char sql[96];

	h_msg_sync(b);
	snprintf(sql, sizeof(sql), "rollback; select '%s'", marker);
	h_msg_query(b, sql);
}

static PGconn *direct;

int h_direct_fd(void)
{
	if (direct == NULL)
		direct = h_connect_app_direct("application_name=fuzz");
	return PQsocket(direct);
}

void h_direct_done(bool reusable)
{
	if (reusable && h_raw_query(PQsocket(direct), "discard all"))
		return;
	h_direct_close();
}

void h_direct_close(void)
{
	PQfinish(direct);
	direct = NULL;
}

#define LIKE_POSTGRES_MARKER "like postgres"

/* Send parts one after the other, pausing so that the answers to one come before the next; then finish. */
static void run_parts(int fd, const struct h_buf *parts, int n, struct h_outcome *o)
{
	struct h_buf finish = {0};

	for (int i = 0; i < n; i++) {
		h_raw_send(fd, parts[i].p, parts[i].len);
		h_sleep_ms(h_scaled_ms(50));
	}
	h_put_finish(&finish, LIKE_POSTGRES_MARKER);
	h_raw_send(fd, finish.p, finish.len);
	h_buf_free(&finish);
	h_read_outcome(fd, LIKE_POSTGRES_MARKER, o);
}

void h_like_postgres(const struct pgmux *p, struct h_buf *parts, int n, const char *what, PGconn *other)
{
	int fd = h_raw_session(p, "fuzz", NULL);
	struct h_outcome mux = {0}, pg = {0};
	bool same;

	run_parts(fd, parts, n, &mux);
	if (other && mux.finished)
		h_expect_backend_free(other, what);
	close(fd);
	run_parts(h_direct_fd(), parts, n, &pg);
	h_direct_done(pg.finished);
	cr_assert(pg.finished, "%s: PostgreSQL itself did not answer: %s%s", what, pg.problem,
		  pg.timed_out ? "timed out" : "");
	same = mux.finished && strcmp(h_buf_text(&mux.transcript), h_buf_text(&pg.transcript)) == 0;
	if (!same) {
		fprintf(stderr, "----- %s: pgmux answered:\n%s%s\n----- PostgreSQL answered:\n%s-----\n", what,
			h_buf_text(&mux.transcript), mux.problem, h_buf_text(&pg.transcript));
		pgmux_dump_logs(p);
	}
	cr_assert(same, "%s: pgmux's answers differ from PostgreSQL's", what);
	h_buf_free(&mux.transcript);
	h_buf_free(&pg.transcript);
	for (int i = 0; i < n; i++)
		h_buf_free(&parts[i]);
}

const char *h_backend_free(PGconn *other)
{
	static char why[600];
	PGresult *res;
	bool ok;

	if (!PQsendQuery(other, "select 'backend free'")) {
		snprintf(why, sizeof(why), "the other client: %s", PQerrorMessage(other));
		return why;
	}
	res = h_get_result(other, h_scaled_ms(3000));
	ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
	snprintf(why, sizeof(why), "the other client's query %s%s",
		 res ? "failed: " : "got no answer within its time", res ? PQresultErrorMessage(res) : "");
	PQclear(res);
	while (res && (res = h_get_result(other, h_scaled_ms(3000))) != NULL)
		PQclear(res);
	return ok ? NULL : why;
}

void h_expect_backend_free(PGconn *other, const char *what)
{
	const char *why = h_backend_free(other);

	if (why)
		h_dump_current_logs();
	cr_assert(why == NULL, "%s: %s", what, why);
}

/* ---------------------------------------------------------------- PRNG */

uint64_t h_rng_next(struct h_rng *r)
{
	uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

uint32_t h_rng_below(struct h_rng *r, uint32_t n)
{
	return n ? (uint32_t)(h_rng_next(r) % n) : 0;
}

bool h_rng_percent(struct h_rng *r, unsigned percent)
{
	return h_rng_below(r, 100) < percent;
}
