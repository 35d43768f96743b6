/*
 * test_fuzz.c: the protocol fuzz test: random and mutated messages from
 * logged-in clients, in both pooling modes. The bugs it found each have a
 * test of their own beside the feature they broke (each says that the fuzz
 * test found it): a login on an idle backend in test_startup.c, a wait
 * cancelled in test_cancel.c, a malformed Query that pinned in
 * test_parameters.c, prepared statements and failed batches in
 * test_prepared.c, what a logged-in client may send in test_txn.c.
 *
 * Each fuzz session logs in raw (trust), sends a sequence of frontend
 * messages of valid types whose bodies are valid or mutated (truncated
 * strings, wrong counts, negative and huge lengths, unknown statement names,
 * odd Describe/Close kinds, trailing junk...), then a Sync and a marker
 * query, and reads the answers. Every session must end within a time limit
 * (no hang) with well-formed backend messages only: the marker's row and
 * ReadyForQuery, or a FATAL ErrorResponse and a close. A session that ends
 * with a bad message header must get FATAL 08P01 (or 54000). The answers of
 * a session that ends normally must be PostgreSQL's own: the same script
 * runs on a direct session too. Other clients must not notice: a client
 * that shares the backends (and their prepared statements) must be served
 * right, and with transaction pooling a session that is idle must not keep
 * the backend; pgmux must stay the same process and exit cleanly at the end
 * (under valgrind: without errors or leaks).
 *
 * The generator is a PRNG with a fixed seed per test: a failure prints the
 * seed and the messages of the sessions involved, in hex. To replay, set
 * PGMUX_FUZZ_SEED to the seed printed (and PGMUX_FUZZ_SESSIONS to the number
 * of sessions to run).
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct pgmux px;

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* ================================================================ the fuzzer */

/* Other clients are checked every this many sessions. */
#define FUZZ_CHECK_EVERY 10

/* The transaction-pooling suite runs: one backend, shared (see pgmux_start_one_backend()). */
static bool txn_suite;

static void init_fuzz_transaction(void)
{
	txn_suite = true;
	/* Few statements kept per backend, so that eviction happens. */
	pgmux_start_one_backend(&px, "max_prepared_statements = 3");
}

static void init_fuzz_session(void)
{
	pgmux_start_trust(&px, "session", 3, 2, "max_packet_size = 64kB", NULL);
}

/* ---------------------------------------------------------------- what the fuzzer says */

/* SQL the sessions prepare or run; the bystander prepares some of the same texts. */
struct fuzz_sql {
	const char *text;
	int nparams;
};

static const struct fuzz_sql fuzz_sql[] = {
	{"select $1::int + 1", 1},
	{"select $1::text || '-' || $2::text", 2},
	{"select 1", 0},
	{"select generate_series(1, 5)", 0},
	{"select 1/0", 0},
	{"selec 1", 0},
	{"", 0},
	{"select 1; select 2", 0},
	{"begin", 0},
	{"commit", 0},
	{"rollback", 0},
	{"copy (select 2) to stdout", 0},
	{"set datestyle = 'iso, dmy'", 0},
	/* Settings pgmux reads back: a session must never see another's (the replay is a fresh connection). */
	{"set work_mem = '5MB'", 0},
	{"reset work_mem", 0},
	{"select current_setting('work_mem')", 0},
	{"select set_config('fz.tenant', $1::text, false)", 1},
	{"select current_setting('fz.tenant', true)", 0},
	{"select pg_sleep(0.001)", 0},
	{"select bid from pgbench_branches where bid = $1::int", 1},
};
#define N_FUZZ_SQL (sizeof(fuzz_sql) / sizeof(fuzz_sql[0]))

/* Statement names: mostly a few that get reused, so that Bind, Describe and Close find them. */
#define LONG_NAME_A "long_name_LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL_a"
#define LONG_NAME_B "long_name_LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL_b"
static const char *const stmt_names[] = {"s1", "s2", "s3", "s1", "s2", "", "", "never_prepared",
					 LONG_NAME_A, LONG_NAME_B};
static const char *const portal_names[] = {"", "", "", "p1", "p1", "no_such_portal"};

/* A session's messages and a description of each, for the log of a failure. */
struct script {
	struct h_buf bytes;
	struct h_buf log;
	int n_messages;
	/* How it ends. */
	enum {
		END_FINISH,     /* Sync and a marker query: the marker's row and ReadyForQuery must come */
		END_TERMINATE,  /* a Terminate: the connection must close */
		END_BAD_HEADER, /* an invalid type or length: FATAL 08P01 / 54000, then a close */
		END_HALF_CLOSE, /* a message cut short, then our write side closed: pgmux must close */
		END_ABANDON,    /* the socket closed under pgmux (nothing to check but pgmux) */
	} ending;
	char marker[32];
	int statement_of[N_OF(stmt_names)]; /* fuzz_sql index a name was last prepared with, or -1 */
	/*
	 * Transaction pooling: the only backend is held by another client while
	 * the script is sent, and the session's first wait for it is cancelled.
	 */
	bool blocked;
	/* Sent once the final query was answered: messages that ask nothing of a backend. */
	struct h_buf after;
};

static const char *const ending_names[] = {"finish", "terminate", "bad header", "half close", "abandon"};

static const char *pick_name(struct h_rng *r, int *index)
{
	int i = (int)h_rng_below(r, N_OF(stmt_names));

	if (index)
		*index = i;
	return stmt_names[i];
}

/* A name of 300 bytes now and then: far beyond PostgreSQL's NAMEDATALEN. */
static const char *maybe_very_long(struct h_rng *r, const char *name)
{
	static char longer[301];

	if (!h_rng_percent(r, 3))
		return name;
	memset(longer, 'v', sizeof(longer) - 1);
	longer[sizeof(longer) - 1] = '\0';
	return longer;
}

static const char *portal(struct h_rng *r)
{
	return portal_names[h_rng_below(r, N_OF(portal_names))];
}

static void gen_parse(struct h_rng *r, struct script *s, struct h_buf *m, char type)
{
	int ni, q = (int)h_rng_below(r, N_FUZZ_SQL);
	const char *name = maybe_very_long(r, pick_name(r, &ni));
	int ntypes = h_rng_percent(r, 70) ? 0 : fuzz_sql[q].nparams;
	int declared = ntypes;

	h_buf_str(m, name);
	h_buf_str(m, fuzz_sql[q].text);
	if (h_rng_percent(r, 8))
		declared = h_rng_percent(r, 50) ? -1 : ntypes + 3; /* a count the types do not match */
	h_buf_i16(m, declared);
	for (int i = 0; i < ntypes; i++)
		h_buf_i32(m, h_rng_percent(r, 90) ? (i == 0 ? 23 : 25) : 16); /* int4, text; bool for a mismatch */
	s->statement_of[ni] = q;
	h_buf_printf(&s->log, "Parse name=\"%.40s\" sql=\"%s\" types=%d", name, fuzz_sql[q].text, declared);
}

/* One parameter value: text or NULL mostly, else lengths that lie. */
static void gen_param(struct h_rng *r, struct h_buf *m, struct h_buf *log)
{
	static const char *const texts[] = {"42", "7", "-1", "abc", "", "2147483648"};
	uint32_t k = h_rng_below(r, 100);

	if (k < 70) {
		const char *t = texts[h_rng_below(r, N_OF(texts))];

		h_buf_i32(m, (int64_t)strlen(t));
		h_buf_put(m, t, strlen(t));
		h_buf_printf(log, " '%s'", t);
	} else if (k < 82) {
		h_buf_i32(m, -1);
		h_buf_printf(log, " NULL");
	} else if (k < 88) {
		h_buf_i32(m, 4); /* binary int4, or a text that is not one */
		h_buf_i32(m, 42);
		h_buf_printf(log, " int4:42");
	} else if (k < 92) {
		h_buf_i32(m, -2);
		h_buf_printf(log, " len=-2");
	} else if (k < 96) {
		h_buf_i32(m, 0x7fffffff);
		h_buf_put(m, "xy", 2);
		h_buf_printf(log, " len=huge");
	} else {
		h_buf_i32(m, 1000);
		h_buf_put(m, "short", 5);
		h_buf_printf(log, " len=1000(5)");
	}
}

/* A format-code list: count then codes; sometimes a lying count or a bad code. */
static void gen_formats(struct h_rng *r, struct h_buf *m, int n_expected, struct h_buf *log, const char *what)
{
	uint32_t k = h_rng_below(r, 100);

	if (k < 60) {
		h_buf_i16(m, 0);
		return;
	}
	if (k < 75) {
		int code = h_rng_percent(r, 70) ? 0 : 1;

		h_buf_i16(m, 1);
		h_buf_i16(m, code);
		h_buf_printf(log, " %s=[%d]", what, code);
		return;
	}
	if (k < 85) {
		h_buf_i16(m, n_expected);
		for (int i = 0; i < n_expected; i++)
			h_buf_i16(m, (int)h_rng_below(r, 2));
		h_buf_printf(log, " %s=%d codes", what, n_expected);
		return;
	}
	if (k < 90) {
		h_buf_i16(m, -1);
		h_buf_printf(log, " %s=count -1", what);
	} else if (k < 95) {
		h_buf_i16(m, 1000);
		h_buf_printf(log, " %s=count 1000, none given", what);
	} else {
		h_buf_i16(m, 1);
		h_buf_i16(m, 2 + (int)h_rng_below(r, 100));
		h_buf_printf(log, " %s=[bad code]", what);
	}
}

static void gen_bind(struct h_rng *r, struct script *s, struct h_buf *m, char type)
{
	int ni;
	const char *p = portal(r);
	const char *name = maybe_very_long(r, pick_name(r, &ni));
	int expected = s->statement_of[ni] >= 0 ? fuzz_sql[s->statement_of[ni]].nparams : (int)h_rng_below(r, 2);
	int nparams = expected;

	h_buf_printf(&s->log, "Bind portal=\"%s\" stmt=\"%.40s\"", p, name);
	h_buf_str(m, p);
	h_buf_str(m, name);
	gen_formats(r, m, expected, &s->log, "pfmt");
	if (h_rng_percent(r, 15)) {
		static const int lies[] = {-1, -2, 30000};

		nparams = h_rng_percent(r, 50) ? expected + 1 : lies[h_rng_below(r, N_OF(lies))];
	}
	h_buf_i16(m, nparams);
	h_buf_printf(&s->log, " nparams=%d:", nparams);
	for (int i = 0; i < (nparams > 0 && nparams < 10 ? nparams : 0); i++)
		gen_param(r, m, &s->log);
	gen_formats(r, m, 1, &s->log, "rfmt");
}

static void gen_execute(struct h_rng *r, struct script *s, struct h_buf *m, char type)
{
	static const int64_t max_rows[] = {0, 0, 0, 1, 2, -1, 0x7fffffff};
	const char *p = portal(r);
	int64_t rows = max_rows[h_rng_below(r, N_OF(max_rows))];

	h_buf_str(m, p);
	h_buf_i32(m, rows);
	h_buf_printf(&s->log, "Execute portal=\"%s\" max_rows=%" PRId64, p, rows);
}

/* Describe or Close: a kind ('S', 'P', or anything) and a name. */
static void gen_describe_close(struct h_rng *r, struct script *s, struct h_buf *m, char type)
{
	uint32_t k = h_rng_below(r, 100);
	uint8_t kind = k < 55 ? 'S' : k < 90 ? 'P' : (uint8_t)h_rng_below(r, 256);
	const char *name = kind == 'P' ? portal(r) : maybe_very_long(r, pick_name(r, NULL));

	h_buf_u8(m, kind);
	h_buf_str(m, name);
	h_buf_printf(&s->log, "%s kind=0x%02x name=\"%.40s\"", type == 'D' ? "Describe" : "Close", kind, name);
}

static void gen_query(struct h_rng *r, struct script *s, struct h_buf *m, char type)
{
	const char *sql = fuzz_sql[h_rng_below(r, N_FUZZ_SQL)].text;

	h_buf_str(m, sql);
	h_buf_printf(&s->log, "Query \"%s\"", sql);
}

/* FunctionCall of int4abs (or an OID that is none) with one argument. */
static void gen_function_call(struct h_rng *r, struct script *s, struct h_buf *m, char type)
{
	static const int64_t oids[] = {1251, 1251, 0, 999999};
	int64_t oid = oids[h_rng_below(r, N_OF(oids))];
	int nargs = h_rng_percent(r, 85) ? 1 : (int)h_rng_below(r, 4) - 1;

	h_buf_i32(m, oid);
	gen_formats(r, m, 1, &s->log, "afmt");
	h_buf_i16(m, nargs);
	for (int i = 0; i < (nargs > 0 ? nargs : 0); i++)
		gen_param(r, m, &s->log);
	h_buf_i16(m, h_rng_percent(r, 90) ? 0 : 7);
	h_buf_printf(&s->log, "FunctionCall oid=%" PRId64 " nargs=%d", oid, nargs);
}

static void gen_copy(struct h_rng *r, struct script *s, struct h_buf *m, char type)
{
	if (type == 'd') {
		int n = (int)h_rng_below(r, 20);

		for (int i = 0; i < n; i++)
			h_buf_u8(m, (uint8_t)h_rng_below(r, 256));
		h_buf_printf(&s->log, "CopyData %d bytes", n);
	} else if (type == 'f') {
		h_buf_str(m, "fuzz says no");
		h_buf_printf(&s->log, "CopyFail");
	} else {
		h_buf_printf(&s->log, "CopyDone");
	}
}

/* Mutations of a whole body: cut short (strings lose their NUL, counts overrun), emptied, or junk after. */
static void mutate_body(struct h_rng *r, struct script *s, struct h_buf *msgs, size_t at)
{
	size_t body = msgs->len - at - 5;
	uint32_t k = h_rng_below(r, 100);

	if (k < 8 && body > 0) {
		size_t cut = 1 + h_rng_below(r, (uint32_t)body);

		msgs->len -= cut;
		h_buf_printf(&s->log, " [cut %zu]", cut);
	} else if (k < 11) {
		msgs->len = at + 5;
		h_buf_printf(&s->log, " [empty body]");
	} else if (k < 17) {
		int n = 1 + (int)h_rng_below(r, 8);

		for (int i = 0; i < n; i++)
			h_buf_u8(msgs, (uint8_t)h_rng_below(r, 256));
		h_buf_printf(&s->log, " [junk +%d]", n);
	}
}

/* Hex of the bytes from at to the end, for replaying a failure by hand. */
static void log_hex(struct h_buf *log, const struct h_buf *msgs, size_t at)
{
	size_t n = msgs->len - at;

	h_buf_printf(log, "\n      ");
	for (size_t i = 0; i < n && i < 400; i++)
		h_buf_printf(log, "%02x", msgs->p[at + i]);
	if (n > 400)
		h_buf_printf(log, "... (%zu bytes)", n);
	h_buf_printf(log, "\n");
}

/* Messages with no body: nothing to generate but their line in the log. */
static void gen_empty(struct h_rng *r, struct script *s, struct h_buf *m, char type)
{
	h_buf_printf(&s->log, "%s", type == 'S' ? "Sync" : type == 'H' ? "Flush" : "Terminate");
}

/* Which generator writes the body of which message types. */
static const struct generator {
	const char *types;
	void (*gen)(struct h_rng *r, struct script *s, struct h_buf *m, char type);
} generators[] = {
	{"P", gen_parse},
	{"B", gen_bind},
	{"E", gen_execute},
	{"DC", gen_describe_close},
	{"Q", gen_query},
	{"F", gen_function_call},
	{"dcf", gen_copy},
	{"SHX", gen_empty},
};

/* One message of a valid type, body valid or mutated. Returns false after a Terminate. */
static bool gen_message(struct h_rng *r, struct script *s)
{
	static const char types[] = "PPPPBBBBBBEEEEEDDDCCCCSSSSSHHQQQQFdcf";
	struct h_buf *m = &s->bytes;
	char type = h_rng_percent(r, 1) ? 'X' : types[h_rng_below(r, sizeof(types) - 1)];
	size_t at = h_msg_begin(m, type);

	h_buf_printf(&s->log, "  #%d ", ++s->n_messages);
	for (size_t i = 0; i < N_OF(generators); i++)
		if (strchr(generators[i].types, type))
			generators[i].gen(r, s, m, type);
	if (type != 'X' && h_rng_percent(r, 25))
		mutate_body(r, s, m, at);
	h_msg_end(m, at);
	log_hex(&s->log, m, at);
	return type != 'X';
}

/* The last message: a header pgmux must refuse (bad type, length under 4, or over max_packet_size). */
static void gen_bad_header(struct h_rng *r, struct script *s)
{
	static const char valid[] = "pQPBEDCSHFdcfX";
	uint8_t type;
	uint32_t len;
	size_t at = s->bytes.len;

	do
		type = (uint8_t)h_rng_below(r, 256);
	while (memchr(valid, type, sizeof(valid)));
	switch (h_rng_below(r, 4)) {
	case 3:
		/* A password message, valid only during authentication. */
		type = 'p';
		len = 4 + 8;
		h_buf_printf(&s->log, "  #%d 'p' (a password message after login)", ++s->n_messages);
		break;
	case 0:
		len = 4 + h_rng_below(r, 20);
		h_buf_printf(&s->log, "  #%d invalid type 0x%02x, length %u", ++s->n_messages, type, len);
		break;
	case 1:
		type = (uint8_t)"QPBEDCSHFdcf"[h_rng_below(r, 12)];
		len = h_rng_below(r, 4);
		h_buf_printf(&s->log, "  #%d '%c' with length %u", ++s->n_messages, type, len);
		break;
	default:
		type = (uint8_t)"QPBEDCSHFdcf"[h_rng_below(r, 12)];
		len = 0x7fffffff - h_rng_below(r, 1000);
		h_buf_printf(&s->log, "  #%d '%c' with length %u (over max_packet_size)", ++s->n_messages, type, len);
		break;
	}
	h_buf_u8(&s->bytes, type);
	h_buf_i32(&s->bytes, len);
	for (int i = 0; i < 8; i++)
		h_buf_u8(&s->bytes, (uint8_t)h_rng_below(r, 256));
	log_hex(&s->log, &s->bytes, at);
}

static void gen_script(uint64_t seed, int number, struct script *s)
{
	struct h_rng r = {seed};
	int n = 1 + (int)h_rng_below(&r, 14);
	uint32_t k;
	bool terminated = false;

	memset(s, 0, sizeof(*s));
	for (size_t i = 0; i < N_OF(stmt_names); i++)
		s->statement_of[i] = -1;
	snprintf(s->marker, sizeof(s->marker), "fuzz-end-%d", number);
	for (int i = 0; i < n && !terminated; i++)
		terminated = !gen_message(&r, s);
	s->blocked = h_rng_percent(&r, 4);
	if (s->blocked)
		h_buf_printf(&s->log, "  (sent while another client holds the only backend, then cancelled)\n");
	k = h_rng_below(&r, 100);
	if (terminated) {
		s->ending = END_TERMINATE;
	} else if (k < 80) {
		h_put_finish(&s->bytes, s->marker);
		s->ending = END_FINISH;
		h_buf_printf(&s->log, "  then Sync, Query \"rollback; select '%s'\"\n", s->marker);
		if (h_rng_percent(&r, 30)) {
			/* A Flush, or COPY messages outside a COPY: nothing to answer, no backend to keep. */
			char type = "Hdcf"[h_rng_below(&r, 4)];

			h_msg_raw(&s->after, type, "x", type == 'd' || type == 'f' ? 2 : 0);
			h_buf_printf(&s->log, "  then, once answered, '%c'\n", type);
		}
	} else if (k < 88) {
		gen_bad_header(&r, s);
		s->ending = END_BAD_HEADER;
	} else if (k < 94) {
		/* A header promising more than comes: pgmux waits for the rest, then sees EOF. */
		size_t at = h_msg_begin(&s->bytes, 'Q');

		h_buf_put(&s->bytes, "select", 6);
		h_put_u32(s->bytes.p + at + 1, 100);
		s->ending = END_HALF_CLOSE;
		h_buf_printf(&s->log, "  then a Query of 100 bytes cut after 6, and our write side shut\n");
	} else {
		s->ending = END_ABANDON;
		h_buf_printf(&s->log, "  then the socket is closed\n");
	}
}

/* ---------------------------------------------------------------- the run */

struct fuzz_stats {
	int sessions;
	int messages;
	int finished;
	int compared; /* answers compared with PostgreSQL's own */
	int blocked;
	int errors;
	int fatal_closes;
	int refused_headers;
	int silent_closes; /* a bad header refused by a close alone: pgmux was in the middle of a message */
	int terminated;
	int half_closed;
	int abandoned;
};

/* Scripts since the last check of the other clients, printed if a check fails (any may be the cause). */
struct recent {
	char *logs[FUZZ_CHECK_EVERY];
	int n;
};

static void recent_add(struct recent *rc, const char *log)
{
	if (rc->n == FUZZ_CHECK_EVERY) {
		free(rc->logs[0]);
		memmove(rc->logs, rc->logs + 1, sizeof(rc->logs[0]) * (FUZZ_CHECK_EVERY - 1));
		rc->n--;
	}
	rc->logs[rc->n++] = strdup(log);
}

static void recent_clear(struct recent *rc)
{
	for (int i = 0; i < rc->n; i++)
		free(rc->logs[i]);
	rc->n = 0;
}

/* Print the recent sessions and pgmux's logs, then fail the test with the message. */
static void fuzz_fail(const struct recent *rc, uint64_t seed, int sessions, const char *fmt, ...)
	__attribute__((format(printf, 4, 5), noreturn));

static void fuzz_fail(const struct recent *rc, uint64_t seed, int sessions, const char *fmt, ...)
{
	char why[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	fprintf(stderr, "----- the last %d fuzz sessions -----\n", rc->n);
	for (int i = 0; i < rc->n; i++)
		fprintf(stderr, "%s", rc->logs[i]);
	fprintf(stderr, "----- end of the fuzz sessions; replay with PGMUX_FUZZ_SEED=%" PRIu64
			" PGMUX_FUZZ_SESSIONS=%d -----\n",
		seed, sessions);
	pgmux_dump_logs(&px);
	cr_assert_fail("%s", why);
	abort(); /* not reached */
}

/* Send bytes, in pieces of random sizes now and then (pgmux must put messages together). */
static void send_pieces(int fd, struct h_rng *r, const struct h_buf *b)
{
	size_t off = 0;
	bool pieces = h_rng_percent(r, 30);

	while (off < b->len) {
		size_t n = b->len - off;

		if (pieces) {
			n = 1 + h_rng_below(r, (uint32_t)(n < 40 ? n : 40));
			if (h_rng_percent(r, 10))
				h_sleep_ms(1);
		}
		/* pgmux may have closed already (a FATAL for an earlier message): the rest is not sent. */
		if (!h_raw_send(fd, b->p + off, n))
			return;
		off += n;
	}
}

/* NULL when the session ended as it should, else what went wrong (static storage). */
static const char *judge(const struct script *s, const struct h_outcome *o, struct fuzz_stats *st)
{
	static char why[400];

	if (o->problem[0])
		return o->problem;
	if (o->timed_out) {
		snprintf(why, sizeof(why), "no %s within %d ms (a hang)",
			 s->ending == END_FINISH ? "answer to the final query" : "close", h_scaled_ms(5000));
		return why;
	}
	st->errors += o->errors;
	if (o->fatal[0]) {
		st->fatal_closes++;
		if (!o->closed) {
			snprintf(why, sizeof(why), "FATAL %s, but the connection was not closed", o->fatal);
			return why;
		}
		if (s->ending == END_BAD_HEADER && strcmp(o->fatal, "08P01") != 0 && strcmp(o->fatal, "54000") != 0) {
			snprintf(why, sizeof(why), "a bad header refused with %s, expected 08P01 or 54000", o->fatal);
			return why;
		}
		st->refused_headers += s->ending == END_BAD_HEADER;
		return NULL;
	}
	switch (s->ending) {
	case END_FINISH:
		if (o->finished) {
			st->finished++;
			return NULL;
		}
		/* Nothing in such a script ends a session: a close has no reason. */
		return "closed without an ErrorResponse before the final query was answered";
	case END_BAD_HEADER:
		/*
		 * In the middle of a message it relays, pgmux cannot answer (an
		 * error would be read as the rest of that message): it closes.
		 */
		if (o->cut) {
			st->silent_closes++;
			return NULL;
		}
		return "a bad header: closed without FATAL 08P01 or 54000";
	case END_TERMINATE:
		st->terminated++;
		return NULL;
	case END_HALF_CLOSE:
		st->half_closed++;
		return NULL;
	case END_ABANDON:
		st->abandoned++;
		return NULL;
	}
	return NULL;
}

/* ---------------------------------------------------------------- other clients */

/* The bystander's statements: texts the fuzz sessions prepare too, so that they share backend statements. */
static const char *const bystander_sql[] = {"select $1::int + 1", "select 1", "select generate_series(1, 5)"};

static PGconn *bystander_open(void)
{
	PGconn *conn = h_app_session(&px, "disable", "application_name=bystander");

	for (size_t i = 0; i < N_OF(bystander_sql); i++) {
		char name[16];

		snprintf(name, sizeof(name), "by%zu", i);
		h_prepare_ok(conn, name, bystander_sql[i]);
	}
	return conn;
}

/* NULL when the bystander's statements all give what they must, else what went wrong. */
static const char *bystander_check(PGconn *conn, int round)
{
	static char why[600];
	char arg[16], want[16];
	const char *params[1] = {arg};

	snprintf(arg, sizeof(arg), "%d", round);
	snprintf(want, sizeof(want), "%d", round + 1);
	for (size_t i = 0; i < N_OF(bystander_sql); i++) {
		char name[16];
		PGresult *res;
		bool ok;

		snprintf(name, sizeof(name), "by%zu", i);
		res = PQexecPrepared(conn, name, i == 0 ? 1 : 0, params, NULL, NULL, 0);
		ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) >= 1 &&
		     strcmp(PQgetvalue(res, 0, 0), i == 0 ? want : "1") == 0;
		if (!ok) {
			snprintf(why, sizeof(why), "statement %s (%s): %s: %s", name, bystander_sql[i],
				 PQresStatus(PQresultStatus(res)),
				 PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0 ? PQgetvalue(res, 0, 0)
											  : PQerrorMessage(conn));
			PQclear(res);
			return why;
		}
		PQclear(res);
	}
	return NULL;
}

/* pgmux is the same process, a new client runs a query, the bystander is served right. */
static void others_unharmed(PGconn *bystander, int round, const struct recent *rc, uint64_t seed)
{
	const char *why;
	PGconn *fresh;
	char *v;

	if (!pgmux_running(&px) || kill(px.pid, 0) != 0)
		fuzz_fail(rc, seed, round, "pgmux is no longer running after %d sessions", round);
	why = bystander_check(bystander, round);
	if (why)
		fuzz_fail(rc, seed, round, "after %d fuzz sessions, the bystander client was harmed: %s", round, why);
	fresh = h_connect_app(px.port, "disable", NULL);
	v = PQstatus(fresh) == CONNECTION_OK ? h_query_value(fresh, "select 40 + 2") : NULL;
	if (!v || strcmp(v, "42") != 0)
		fuzz_fail(rc, seed, round, "after %d fuzz sessions, a new client was not served: %s", round,
			  PQerrorMessage(fresh));
	free(v);
	PQfinish(fresh);
}

/* ---------------------------------------------------------------- sessions */

static void log_session(struct recent *rc, const struct script *s, uint64_t seed, int number)
{
	struct h_buf whole = {0};

	h_buf_printf(&whole, "session %d (seed %" PRIu64 "), %d messages, ending: %s:\n", number, seed, s->n_messages,
		   ending_names[s->ending]);
	h_buf_put(&whole, s->log.p, s->log.len);
	recent_add(rc, (const char *)whole.p);
	h_buf_free(&whole);
}

/* One fuzz session; fails the test (printing the scripts involved) when it goes wrong. */
static void run_session(uint64_t suite_seed, int number, PGconn *bystander, struct fuzz_stats *st,
			struct recent *rc)
{
	uint64_t seed = suite_seed + (uint64_t)number * 0x100000001b3ull;
	struct h_rng send_rng = {seed ^ 0x5eedull};
	struct script s;
	struct h_outcome o = {0}, d = {0};
	const char *verdict;
	int fd, blocker = -1;
	uint32_t key[2] = {0, 0};

	gen_script(seed, number, &s);
	s.blocked = s.blocked && txn_suite;
	log_session(rc, &s, suite_seed, number);
	st->sessions++;
	st->messages += s.n_messages;
	st->blocked += s.blocked;

	fd = h_raw_login(px.port, "fuzz", key);
	if (fd < 0)
		fuzz_fail(rc, suite_seed, number, "session %d: could not log in through pgmux", number);
	if (s.blocked)
		blocker = h_raw_blocker_begin(&px);
	send_pieces(fd, &send_rng, &s.bytes);
	if (s.blocked) {
		/* A cancel that comes before the wait began, or after it ended, has nothing to end: no matter. */
		h_sleep_ms(h_scaled_ms(20));
		h_raw_cancel(px.port, key);
		h_sleep_ms(h_scaled_ms(20));
		h_raw_blocker_end(blocker);
	}
	if (s.ending == END_ABANDON) {
		close(fd);
		judge(&s, &o, st);
		goto done;
	}
	if (s.ending == END_HALF_CLOSE)
		shutdown(fd, SHUT_WR);
	h_read_outcome(fd, s.ending == END_FINISH ? s.marker : NULL, &o);
	verdict = judge(&s, &o, st);
	if (verdict)
		fuzz_fail(rc, suite_seed, number, "fuzz session %d: %s", number, verdict);
	/* A close without an error is allowed only if pgmux is fine: see to it at once. */
	if (o.closed && !o.fatal[0] && s.ending == END_BAD_HEADER)
		others_unharmed(bystander, number, rc, suite_seed);
	if (s.ending == END_FINISH) {
		send_pieces(fd, &send_rng, &s.after);
		if (txn_suite && (verdict = h_backend_free(bystander)) != NULL)
			fuzz_fail(rc, suite_seed, number,
				  "fuzz session %d ended idle, but the only backend was not free for others: %s",
				  number, verdict);
	}
	if (s.ending == END_FINISH && !s.blocked) {
		int dfd = h_direct_fd();

		h_raw_send(dfd, s.bytes.p, s.bytes.len);
		h_read_outcome(dfd, s.marker, &d);
		h_raw_send(dfd, s.after.p, s.after.len);
		h_direct_done(d.finished);
		if (!d.finished)
			fuzz_fail(rc, suite_seed, number, "session %d: PostgreSQL itself did not answer the script: %s%s",
				  number, d.problem, d.timed_out ? "timed out" : "");
		if (strcmp(h_buf_text(&o.transcript), h_buf_text(&d.transcript)) != 0) {
			fprintf(stderr, "----- pgmux answered:\n%s----- PostgreSQL answered:\n%s-----\n",
				h_buf_text(&o.transcript), h_buf_text(&d.transcript));
			fuzz_fail(rc, suite_seed, number, "fuzz session %d: pgmux's answers differ from PostgreSQL's",
				  number);
		}
		st->compared++;
	}
	close(fd);
done:
	h_buf_free(&o.transcript);
	h_buf_free(&d.transcript);
	h_buf_free(&s.bytes);
	h_buf_free(&s.after);
	h_buf_free(&s.log);
}

/* ---------------------------------------------------------------- the end */

/* No sign of a crash or an assertion in pgmux's log and stderr. */
static void expect_quiet_logs(void)
{
	static const char *const signs[] = {"assert", "Assertion", "invalid state change", "AddressSanitizer",
					    "runtime error", "Segmentation", "abort"};

	for (size_t i = 0; i < N_OF(signs); i++) {
		int n = h_file_count(px.logfile, signs[i]) + h_file_count(px.stderr_file, signs[i]);

		if (n > 0)
			pgmux_dump_logs(&px);
		cr_assert_eq(n, 0, "pgmux's log or stderr mentions \"%s\" %d times", signs[i], n);
	}
}

/* The backends the fuzz sessions used must not be left running a statement. */
static void expect_no_active_backends(void)
{
	PGconn *super = h_connect_super_direct();
	bool idle = h_poll_value(super,
				 "select count(*) from pg_stat_activity where usename = 'app' and state = 'active' and "
				 "coalesce(application_name, '') <> 'pgmux health check'",
				 "0", h_scaled_ms(5000));

	PQfinish(super);
	cr_assert(idle, "backends of app are still active after the fuzz sessions ended");
}

static uint64_t suite_seed(uint64_t fixed)
{
	const char *env = getenv("PGMUX_FUZZ_SEED");

	return env && env[0] ? strtoull(env, NULL, 0) : fixed;
}

static int session_count(int normal)
{
	const char *env = getenv("PGMUX_FUZZ_SESSIONS");

	if (env && env[0])
		return atoi(env);
	return h_under_valgrind() ? normal / 5 : normal;
}

static void fuzz_run(uint64_t fixed_seed, int normal_sessions)
{
	uint64_t seed = suite_seed(fixed_seed);
	int sessions = session_count(normal_sessions);
	struct fuzz_stats st = {0};
	struct recent rc = {0};
	long long t0 = h_now_ms();
	PGconn *bystander = bystander_open();

	cr_log_info("fuzz: seed %" PRIu64 ", %d sessions (replay: PGMUX_FUZZ_SEED=%" PRIu64 ")", seed, sessions, seed);
	for (int i = 1; i <= sessions; i++) {
		run_session(seed, i, bystander, &st, &rc);
		if (i % FUZZ_CHECK_EVERY == 0 || i == sessions) {
			others_unharmed(bystander, i, &rc, seed);
			recent_clear(&rc);
		}
	}
	PQfinish(bystander);
	h_direct_close();
	expect_no_active_backends();
	expect_quiet_logs();
	cr_log_info("fuzz: %d sessions, %d messages in %lld ms: %d finished (%d compared with PostgreSQL), "
		    "%d kept waiting, %d ERRORs, %d FATAL closes (%d refused headers), %d closed mid-message "
		    "without an error, %d terminated, %d half-closed, %d abandoned",
		    st.sessions, st.messages, h_now_ms() - t0, st.finished, st.compared, st.blocked, st.errors,
		    st.fatal_closes, st.refused_headers, st.silent_closes, st.terminated, st.half_closed, st.abandoned);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ transaction pooling */

TestSuite(fuzz_txn, .init = init_fuzz_transaction, .fini = h_teardown, .timeout = 240);

Test(fuzz_txn, random_sessions)
{
	fuzz_run(20240601, 400);
}

/* ================================================================ session pooling */

TestSuite(fuzz_session, .init = init_fuzz_session, .fini = h_teardown, .timeout = 240);

Test(fuzz_session, random_sessions)
{
	fuzz_run(20240602, 200);
}
