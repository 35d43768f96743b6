/*
 * sqlscan.c: one pass over the tokens (sqllex.c) of the SQL of a Query or
 * Parse message. It splits the text into statements where the server would,
 * judges each one by its leading keywords, and watches the whole statement
 * for a few patterns that matter wherever they appear (session-level
 * function calls, SELECT ... INTO TEMP, objects created in pg_temp). Nothing
 * here allocates or reads past the length it is given; see sqlscan.h for the
 * contract.
 */
#include "sqllex.h"
#include "sqlnames.h"
#include "sqlscan.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>

/* -------------------------------------------------------------- name text */

/* Parameter names are compared in full, so this is roomier than pin_detail. */
#define NAME_BUFFER 256
#define DETAIL_SIZE sizeof(((struct sql_scan_result *)0)->pin_detail)

/* A bounded, always-terminated text being built from tokens. */
struct text {
	char *buf;
	size_t cap;
	size_t len;
	bool truncated;
};

static void text_init(struct text *t, char *buf, size_t cap)
{
	t->buf = buf;
	t->cap = cap;
	t->len = 0;
	t->truncated = false;
	buf[0] = '\0';
}

/*
 * Where to cut s[0, n) so it does not end inside a UTF-8 sequence: details
 * end up in log lines and in error messages sent to clients, which must stay
 * valid text.
 */
static size_t utf8_safe_cut(const char *s, size_t n)
{
	size_t lead = n;

	while (lead > 0 && ((unsigned char)s[lead - 1] & 0xC0) == 0x80)
		lead--;
	if (lead == 0)
		return n;
	lead--; /* the byte that starts the last sequence */

	unsigned char c = (unsigned char)s[lead];
	size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;

	return n - lead < need ? lead : n;
}

static void text_putc(struct text *t, char c)
{
	if (t->truncated)
		return;
	if (t->len + 1 < t->cap) {
		t->buf[t->len++] = c;
		t->buf[t->len] = '\0';
	} else {
		t->truncated = true;
		t->len = utf8_safe_cut(t->buf, t->len);
		t->buf[t->len] = '\0';
	}
}

static void text_puts(struct text *t, const char *s)
{
	while (*s)
		text_putc(t, *s++);
}

/* Appends a token as the server would read it: folded if unquoted, with escapes undone if quoted. */
static void text_append_token(struct text *t, const struct sql_token *tok)
{
	for (size_t i = 0; i < tok->len; i++) {
		char c = tok->text[i];

		if (tok->kind == TOKEN_IDENT) {
			c = sql_ascii_lower(c);
		} else if (tok->kind == TOKEN_QUOTED_IDENT) {
			if (c == '"')
				i++; /* "" stands for one quote */
		} else if (tok->kind == TOKEN_STRING && tok->flavor == STRING_ESCAPE && c == '\\') {
			if (i + 1 < tok->len)
				c = tok->text[++i];
		} else if (tok->kind == TOKEN_STRING && tok->flavor != STRING_DOLLAR && c == '\'') {
			i++;
		}
		text_putc(t, c);
	}
}

/* ------------------------------------------------------------- statements */

#define HEAD_MAX 32  /* leading tokens kept per statement; enough for any command's preamble */
#define RECENT_MAX 4 /* previous tokens kept for the patterns found anywhere */
#define CALL_MAX 4   /* nested set_config() calls followed at once */

/* A pinning cause found by a pattern whose meaning depends on the kind of statement. */
struct finding {
	enum sql_pin_reason reason; /* SQL_PIN_NONE while nothing is found */
	size_t offset;
	char detail[DETAIL_SIZE];
};

/* An open set_config( call whose arguments are being followed. */
struct set_config_call {
	int depth;                  /* paren depth just inside the call */
	int commas;                 /* commas seen at that depth */
	int arg_tokens;             /* tokens in the current argument */
	bool arg_is_false;          /* the current argument starts with a false literal */
	bool arg_is_true;           /* ... with a true literal */
	bool first_arg_is_string;   /* the first argument is one string literal */
	struct sql_token first_arg;
	size_t offset;
};

struct statement {
	bool empty;
	bool writes; /* a DML keyword: INSERT, UPDATE, DELETE, MERGE, COPY, TRUNCATE */
	struct sql_token head[HEAD_MAX]; /* first tokens, without leading '(' */
	size_t head_count;
	struct sql_token recent[RECENT_MAX]; /* recent[0] is the token before the current one */
	size_t recent_count;
	int paren_depth;
	int atomic_depth; /* BEGIN ATOMIC ... END nesting in a routine body, where ';' does not split */
	struct set_config_call calls[CALL_MAX];
	int call_count;
	struct finding call; /* session-level advisory lock or set_config(.., false) */
	unsigned call_effects;
	struct finding into_temp; /* SELECT ... INTO TEMP */
	struct finding pg_temp;   /* pg_temp.name */
};

struct scan {
	const char *const *tracked;
	unsigned flags; /* SQL_SCAN_* */
	struct sql_scan_result *out;
	int depth;      /* DO blocks within DO blocks being read */
};

#define DO_DEPTH_MAX 4

static void scan_text(const char *sql, size_t len, const char *const *tracked, unsigned flags,
		      struct sql_scan_result *out, int depth);

/* A truncated name is never tracked: it could only match by accident. */
static bool is_tracked(const struct scan *sc, const struct text *name)
{
	if (sc->tracked == NULL || name->truncated || name->len == 0)
		return false;
	for (const char *const *p = sc->tracked; *p != NULL; p++)
		if (sql_ascii_case_equal(*p, strlen(*p), name->buf, name->len))
			return true;
	return false;
}

/*
 * With SQL_SCAN_CARRY_SETS, may a session-level SET of this untracked
 * parameter be carried (SQL_EFFECT_SET_SESSION) rather than pin? Not ROLE or
 * SESSION AUTHORIZATION, which change who the session is, and not a name
 * the scanner could not read whole (set_config($1, ...), a truncated name).
 */
static bool is_carried_set(const struct scan *sc, const struct text *name)
{
	static const char *const privileged[] = {"role", "session_authorization"};

	if (!(sc->flags & SQL_SCAN_CARRY_SETS) || name->truncated || name->len == 0)
		return false;
	for (size_t i = 0; i < sizeof(privileged) / sizeof(privileged[0]); i++)
		if (sql_ascii_case_equal(privileged[i], strlen(privileged[i]), name->buf, name->len))
			return false;
	return true;
}

/*
 * A SET or RESET of an untracked parameter: when it is carried, *effects
 * gets SQL_EFFECT_SET_SESSION and a custom (dotted) name is listed for the
 * caller. Returns false when it is not carried.
 */
static bool carry_set(struct scan *sc, const struct text *name, unsigned *effects)
{
	struct sql_scan_result *out = sc->out;

	if (!is_carried_set(sc, name))
		return false;
	*effects |= SQL_EFFECT_SET_SESSION;
	if (memchr(name->buf, '.', name->len) == NULL)
		return true;
	for (int i = 0; i < out->n_custom; i++)
		if (sql_ascii_case_equal(out->custom[i], strlen(out->custom[i]), name->buf, name->len))
			return true;
	if (out->n_custom == SQL_SCAN_MAX_CUSTOM || name->len >= sizeof(out->custom[0])) {
		out->custom_overflow = true;
		return true;
	}
	for (size_t i = 0; i < name->len; i++)
		out->custom[out->n_custom][i] = (char)tolower((unsigned char)name->buf[i]);
	out->custom[out->n_custom][name->len] = '\0';
	out->n_custom++;
	return true;
}

static void statement_reset(struct statement *st)
{
	st->empty = true;
	st->writes = false;
	st->head_count = 0;
	st->recent_count = 0;
	st->paren_depth = 0;
	st->atomic_depth = 0;
	st->call_count = 0;
	st->call.reason = SQL_PIN_NONE;
	st->call_effects = 0;
	st->into_temp.reason = SQL_PIN_NONE;
	st->pg_temp.reason = SQL_PIN_NONE;
}

static const struct sql_token *head_token(const struct statement *st, size_t i)
{
	return i < st->head_count ? &st->head[i] : NULL;
}

static bool head_keyword(const struct statement *st, size_t i, const char *word)
{
	return sql_token_is_keyword(head_token(st, i), word);
}

static const struct sql_token *recent_token(const struct statement *st, size_t back)
{
	return back < st->recent_count ? &st->recent[back] : NULL;
}

static void copy_detail(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);

	if (n >= cap)
		n = utf8_safe_cut(src, cap - 1);
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* Keeps the earliest finding of a kind, so the reported cause is the first in the text. */
static void record_finding(struct finding *f, enum sql_pin_reason reason, size_t offset, const char *detail)
{
	if (f->reason != SQL_PIN_NONE && f->offset <= offset)
		return;
	f->reason = reason;
	f->offset = offset;
	copy_detail(f->detail, sizeof(f->detail), detail);
}

static void record_token_finding(struct finding *f, enum sql_pin_reason reason, const struct sql_token *tok,
				 const char *prefix, const struct sql_token *name)
{
	char buf[DETAIL_SIZE];
	struct text t;

	text_init(&t, buf, sizeof(buf));
	if (prefix)
		text_puts(&t, prefix);
	if (name)
		text_append_token(&t, name);
	record_finding(f, reason, tok->offset, buf);
}

/* CREATE [OR REPLACE] FUNCTION|PROCEDURE: the only statements with a BEGIN ATOMIC body. */
static bool is_routine_definition(const struct statement *st)
{
	size_t i = 1;

	if (!head_keyword(st, 0, "create"))
		return false;
	if (head_keyword(st, i, "or") && head_keyword(st, i + 1, "replace"))
		i += 2;
	return head_keyword(st, i, "function") || head_keyword(st, i, "procedure");
}

static bool is_pg_temp_schema(const struct sql_token *tok)
{
	static const char prefix[] = "pg_temp";
	size_t n = sizeof(prefix) - 1;

	if (!sql_token_is_any_name(tok) || tok->len < n)
		return false;
	if (tok->kind == TOKEN_IDENT ? !sql_ascii_case_equal(tok->text, n, prefix, n) : memcmp(tok->text, prefix, n) != 0)
		return false;
	if (tok->len == n)
		return true;
	/* pg_temp_NNN names one backend's temporary schema. */
	if (tok->len == n + 1 || tok->text[n] != '_')
		return false;
	for (size_t i = n + 1; i < tok->len; i++)
		if (!sql_is_digit((unsigned char)tok->text[i]))
			return false;
	return true;
}

static const char *const advisory_lock_functions[] = {
	"pg_advisory_lock",
	"pg_advisory_lock_shared",
	"pg_try_advisory_lock",
	"pg_try_advisory_lock_shared",
};

/*
 * Words before "name (" that make the parenthesis part of the syntax, not a
 * call: a table's column list (INSERT INTO t (a, b), CREATE TABLE t (...),
 * COPY t (a)), an alias's (AS t (a, b)), an index's (ON t (a), USING gin (a)),
 * a view's or a common table expression's (WITH c (a) AS ...).
 */
static const char *const not_a_call_after[] = {
	"into", "table", "as", "references", "on", "view", "exists", "index", "copy", "type", "with", "using",
	"statistics", "only", "execute", "prepare",
};

/*
 * At a '(' after a name: decides whether this is a call of a function that
 * matters. A name after FUNCTION (DROP FUNCTION f(bigint), GRANT ... ON
 * FUNCTION) is a signature, not a call. A call of anything but PostgreSQL's
 * own functions (sqlnames.c) may leave session state that no text shows:
 * SQL_EFFECT_OPAQUE. A keyword before '(' is syntax (IN (...), VALUES (...)).
 */
static void note_call(struct statement *st)
{
	const struct sql_token *name = recent_token(st, 0);
	const struct sql_token *before = recent_token(st, 1);
	bool qualified = false, catalog = false;

	if (!sql_token_is_any_name(name))
		return;
	if (sql_token_is_char(before, '.')) {
		qualified = true;
		catalog = sql_token_is_name(recent_token(st, 2), "pg_catalog");
		before = recent_token(st, 3);
	}
	if (sql_token_is_keyword(before, "function") || sql_token_is_keyword(before, "procedure") ||
	    sql_token_is_keyword(before, "routine") || sql_token_is_keyword(before, "aggregate"))
		return;
	if (!qualified && name->kind == TOKEN_IDENT &&
	    sql_token_in_names(name, sqlnames_keywords, sqlnames_keywords_count))
		return;
	for (size_t i = 0; i < sizeof(not_a_call_after) / sizeof(not_a_call_after[0]); i++)
		if (sql_token_is_keyword(before, not_a_call_after[i]))
			return;
	if (qualified && !catalog) {
		/* Somebody else's function. */
		st->call_effects |= SQL_EFFECT_OPAQUE;
		return;
	}
	for (size_t i = 0; i < sizeof(advisory_lock_functions) / sizeof(advisory_lock_functions[0]); i++) {
		if (sql_token_is_name(name, advisory_lock_functions[i])) {
			record_finding(&st->call, SQL_PIN_ADVISORY_LOCK, name->offset, advisory_lock_functions[i]);
			return;
		}
	}
	if (sql_token_is_name(name, "set_config")) {
		if (st->call_count < CALL_MAX) {
			struct set_config_call *call = &st->calls[st->call_count++];

			memset(call, 0, sizeof(*call));
			call->depth = st->paren_depth + 1; /* the '(' is counted after this */
			call->offset = name->offset;
		}
		return;
	}
	if (!sql_token_in_names(name, sqlnames_functions, sqlnames_functions_count))
		st->call_effects |= SQL_EFFECT_OPAQUE;
}

/* Feeds a token to the open set_config() calls so each knows its arguments. */
static void follow_call_arguments(struct statement *st, const struct sql_token *tok)
{
	for (int i = 0; i < st->call_count; i++) {
		struct set_config_call *call = &st->calls[i];
		bool at_call_level = st->paren_depth == call->depth;

		if (at_call_level && sql_token_is_char(tok, ')'))
			continue;
		if (at_call_level && sql_token_is_char(tok, ',')) {
			if (call->commas == 0)
				call->first_arg_is_string = call->arg_tokens == 1 && call->first_arg.kind == TOKEN_STRING;
			call->commas++;
			call->arg_tokens = 0;
			call->arg_is_false = false;
			call->arg_is_true = false;
			continue;
		}
		if (call->arg_tokens == 0) {
			call->arg_is_false = sql_token_is_false(tok, false);
			call->arg_is_true = sql_token_is_true(tok);
			if (call->commas == 0)
				call->first_arg = *tok;
		}
		call->arg_tokens++;
	}
}

/*
 * At the ')' that closes a set_config() call: set_config(name, value, false)
 * changes the session; with true it lasts only until the transaction ends.
 * Anything but a literal true there (1=0, $3, an expression) may be false:
 * it counts as a change of the session.
 */
static void close_call(struct scan *sc, struct statement *st, const struct set_config_call *call)
{
	char buf[NAME_BUFFER];
	struct text name;

	if (call->commas != 2 || (call->arg_tokens == 1 && call->arg_is_true))
		return;
	text_init(&name, buf, sizeof(buf));
	if (call->first_arg_is_string)
		text_append_token(&name, &call->first_arg);
	/* A custom name is listed even if the call turns out not to run (a function body): reading one more is harmless. */
	if (is_tracked(sc, &name))
		st->call_effects |= SQL_EFFECT_SET_TRACKED;
	else if (!carry_set(sc, &name, &st->call_effects))
		record_finding(&st->call, SQL_PIN_SET, call->offset, name.len ? name.buf : "set_config");
}

/* INSERT, UPDATE, DELETE, MERGE, COPY or TRUNCATE (every identifier comes here: look at the first letter first). */
static bool is_write_keyword(const struct sql_token *tok)
{
	switch (sql_ascii_lower(tok->text[0])) {
	case 'i':
		return sql_token_is_keyword(tok, "insert");
	case 'u':
		return sql_token_is_keyword(tok, "update");
	case 'd':
		return sql_token_is_keyword(tok, "delete");
	case 'm':
		return sql_token_is_keyword(tok, "merge");
	case 'c':
		return sql_token_is_keyword(tok, "copy");
	case 't':
		return sql_token_is_keyword(tok, "truncate");
	default:
		return false;
	}
}

/* Patterns that need a few tokens of left context: SELECT ... INTO TEMP t and pg_temp.t. */
static void note_names(struct statement *st, const struct sql_token *tok)
{
	const struct sql_token *r0 = recent_token(st, 0);
	const struct sql_token *r1 = recent_token(st, 1);
	const struct sql_token *r2 = recent_token(st, 2);
	const struct sql_token *r3 = recent_token(st, 3);
	bool r0_temp = sql_token_is_keyword(r0, "temp") || sql_token_is_keyword(r0, "temporary");
	bool r1_temp = sql_token_is_keyword(r1, "temp") || sql_token_is_keyword(r1, "temporary");

	/* INSERT INTO temp and MERGE INTO temp name a table called "temp". */
	if (r0_temp && sql_token_is_keyword(r1, "into") && !sql_token_is_keyword(r2, "insert") &&
	    !sql_token_is_keyword(r2, "merge") && !sql_token_is_keyword(tok, "table"))
		record_token_finding(&st->into_temp, SQL_PIN_TEMP_OBJECT, tok, NULL, tok);
	else if (sql_token_is_keyword(r0, "table") && r1_temp && sql_token_is_keyword(r2, "into") &&
		 !sql_token_is_keyword(r3, "insert") && !sql_token_is_keyword(r3, "merge"))
		record_token_finding(&st->into_temp, SQL_PIN_TEMP_OBJECT, tok, NULL, tok);

	if (sql_token_is_char(r0, '.') && is_pg_temp_schema(r1)) {
		char prefix[DETAIL_SIZE];
		struct text t;

		text_init(&t, prefix, sizeof(prefix));
		text_append_token(&t, r1);
		text_putc(&t, '.');
		record_token_finding(&st->pg_temp, SQL_PIN_TEMP_OBJECT, r1, prefix, tok);
	}
}

static void statement_token(struct scan *sc, struct statement *st, const struct sql_token *tok)
{
	st->empty = false;
	if (st->head_count < HEAD_MAX && !(st->head_count == 0 && sql_token_is_char(tok, '(')))
		st->head[st->head_count++] = *tok;

	if (tok->kind == TOKEN_IDENT && is_routine_definition(st)) {
		if (sql_token_is_keyword(tok, "atomic") && sql_token_is_keyword(recent_token(st, 0), "begin"))
			st->atomic_depth++;
		else if (sql_token_is_keyword(tok, "case") && st->atomic_depth > 0)
			st->atomic_depth++;
		else if (sql_token_is_keyword(tok, "end") && st->atomic_depth > 0)
			st->atomic_depth--;
	}

	if (!st->writes && tok->kind == TOKEN_IDENT && is_write_keyword(tok))
		st->writes = true;
	follow_call_arguments(st, tok);
	if (sql_token_is_char(tok, '(')) {
		note_call(st);
		st->paren_depth++;
	} else if (sql_token_is_char(tok, ')')) {
		if (st->call_count > 0 && st->calls[st->call_count - 1].depth == st->paren_depth) {
			st->call_count--;
			close_call(sc, st, &st->calls[st->call_count]);
		}
		if (st->paren_depth > 0)
			st->paren_depth--;
	} else if (sql_token_is_any_name(tok)) {
		note_names(st, tok);
	}

	memmove(&st->recent[1], &st->recent[0], sizeof(st->recent[0]) * (RECENT_MAX - 1));
	st->recent[0] = *tok;
	if (st->recent_count < RECENT_MAX)
		st->recent_count++;
}

/* ------------------------------------------------------------- judgements */

static void pin(struct scan *sc, enum sql_pin_reason reason, const char *detail)
{
	if (sc->out->pin != SQL_PIN_NONE)
		return;
	sc->out->pin = reason;
	copy_detail(sc->out->pin_detail, sizeof(sc->out->pin_detail), detail ? detail : "");
}

/* Pins with the text of head[i] (a name or a string) as the detail, or "" when there is none. */
static void pin_with_token(struct scan *sc, enum sql_pin_reason reason, const struct statement *st, size_t i)
{
	char buf[DETAIL_SIZE];
	struct text t;
	const struct sql_token *tok = head_token(st, i);

	text_init(&t, buf, sizeof(buf));
	if (tok && (sql_token_is_any_name(tok) || tok->kind == TOKEN_STRING))
		text_append_token(&t, tok);
	pin(sc, reason, buf);
}

/* Reads name[.name...] starting at head[i]; returns the index after it (i when there is none). */
static size_t head_read_name(const struct statement *st, size_t i, struct text *name)
{
	size_t j = i;

	while (sql_token_is_any_name(head_token(st, j))) {
		if (j > i)
			text_putc(name, '.');
		text_append_token(name, &st->head[j]);
		j++;
		if (!sql_token_is_char(head_token(st, j), '.') || !sql_token_is_any_name(head_token(st, j + 1)))
			break;
		j++;
	}
	return j;
}

static void judge_parameter(struct scan *sc, const struct text *name)
{
	if (is_tracked(sc, name))
		sc->out->effects |= SQL_EFFECT_SET_TRACKED;
	else if (!carry_set(sc, name, &sc->out->effects))
		pin(sc, SQL_PIN_SET, name->buf);
}

static void judge_parameter_named(struct scan *sc, const char *parameter)
{
	char buf[NAME_BUFFER];
	struct text name;

	text_init(&name, buf, sizeof(buf));
	text_puts(&name, parameter);
	judge_parameter(sc, &name);
}

/*
 * The special SET/RESET forms that name a parameter with keywords. SET NAMES
 * and SET SCHEMA count only when not followed by TO or '=', where they would
 * be ordinary (and nonexistent) parameter names.
 */
static const char *keyword_parameter(const struct statement *st, size_t i)
{
	bool generic_next = head_keyword(st, i + 1, "to") || sql_token_is_char(head_token(st, i + 1), '=');

	if (head_keyword(st, i, "session") && head_keyword(st, i + 1, "authorization"))
		return "session_authorization";
	if (head_keyword(st, i, "role"))
		return "role";
	if (head_keyword(st, i, "time") && head_keyword(st, i + 1, "zone"))
		return "timezone";
	if (head_keyword(st, i, "xml") && head_keyword(st, i + 1, "option"))
		return "xmloption";
	if (head_keyword(st, i, "names") && !generic_next)
		return "client_encoding";
	if (head_keyword(st, i, "schema") && !generic_next)
		return "search_path";
	return NULL;
}

/* SET SESSION CHARACTERISTICS AS TRANSACTION modes: each mode sets one default_transaction_* parameter. */
static void judge_characteristics(struct scan *sc, const struct statement *st, size_t i)
{
	bool any = false;

	for (size_t j = i; j < st->head_count; j++) {
		if (head_keyword(st, j, "isolation")) {
			judge_parameter_named(sc, "default_transaction_isolation");
			any = true;
		} else if (head_keyword(st, j, "read") && (head_keyword(st, j + 1, "only") || head_keyword(st, j + 1, "write"))) {
			judge_parameter_named(sc, "default_transaction_read_only");
			any = true;
		} else if (head_keyword(st, j, "deferrable")) {
			judge_parameter_named(sc, "default_transaction_deferrable");
			any = true;
		}
	}
	if (!any)
		judge_parameter_named(sc, "default_transaction_isolation");
}

static void judge_set(struct scan *sc, const struct statement *st, size_t i)
{
	char buf[NAME_BUFFER];
	struct text name;
	const char *keyword_name;

	/* SET LOCAL lasts until the end of the transaction, which pgmux already keeps on one backend. */
	if (head_keyword(st, i, "local"))
		return;
	if (head_keyword(st, i, "session") && !head_keyword(st, i + 1, "authorization") &&
	    !head_keyword(st, i + 1, "characteristics"))
		i++;
	if (head_keyword(st, i, "transaction") || head_keyword(st, i, "constraints"))
		return;
	if (head_keyword(st, i, "session") && head_keyword(st, i + 1, "characteristics")) {
		judge_characteristics(sc, st, i + 2);
		return;
	}
	keyword_name = keyword_parameter(st, i);
	if (keyword_name) {
		judge_parameter_named(sc, keyword_name);
		return;
	}
	text_init(&name, buf, sizeof(buf));
	if (head_read_name(st, i, &name) > i)
		judge_parameter(sc, &name);
}

/*
 * RESET only goes back to the default that every other backend has, so it
 * never pins; a tracked parameter's value does change, which the caller hears.
 */
static void judge_reset(struct scan *sc, const struct statement *st, size_t i)
{
	char buf[NAME_BUFFER];
	struct text name;
	const char *keyword_name = keyword_parameter(st, i);

	if (head_keyword(st, i, "all")) {
		sc->out->effects |= SQL_EFFECT_RESET_ALL;
		return;
	}
	text_init(&name, buf, sizeof(buf));
	if (keyword_name)
		text_puts(&name, keyword_name);
	else
		head_read_name(st, i, &name);
	if (is_tracked(sc, &name))
		sc->out->effects |= SQL_EFFECT_SET_TRACKED;
	else
		(void)carry_set(sc, &name, &sc->out->effects);
}

/* What kind of statement it was, for the patterns found anywhere in it. */
struct verdict {
	bool executes;   /* false under EXPLAIN without ANALYZE */
	bool select;     /* SELECT or WITH: may hold INTO TEMP */
	bool create;     /* CREATE: pg_temp.name creates a temporary object */
	bool definition; /* a function, procedure, view or rule body: its calls do not run now */
};

/* CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY [RECURSIVE] kind [IF NOT EXISTS] name ... */
static void judge_create(struct scan *sc, const struct statement *st, size_t i, struct verdict *v)
{
	static const char *const modifiers[] = {
		"unlogged", "recursive", "materialized", "trusted", "procedural", "constraint", "default", "unique",
	};
	static const char *const definitions[] = {"function", "procedure", "view", "rule"};
	size_t j = i + 1;

	v->create = true;
	if (head_keyword(st, j, "or") && head_keyword(st, j + 1, "replace"))
		j += 2;
	if (head_keyword(st, j, "global") || head_keyword(st, j, "local"))
		j++;
	if (head_keyword(st, j, "temp") || head_keyword(st, j, "temporary")) {
		char buf[DETAIL_SIZE];
		struct text name;

		j++;
		if (head_keyword(st, j, "recursive"))
			j++;
		j++; /* TABLE, SEQUENCE or VIEW */
		if (head_keyword(st, j, "if") && head_keyword(st, j + 1, "not") && head_keyword(st, j + 2, "exists"))
			j += 3;
		text_init(&name, buf, sizeof(buf));
		head_read_name(st, j, &name);
		if (v->executes)
			pin(sc, SQL_PIN_TEMP_OBJECT, buf);
		return;
	}
	for (bool skipped = true; skipped;) {
		skipped = false;
		for (size_t m = 0; m < sizeof(modifiers) / sizeof(modifiers[0]); m++) {
			if (head_keyword(st, j, modifiers[m])) {
				j++;
				skipped = true;
			}
		}
	}
	for (size_t d = 0; d < sizeof(definitions) / sizeof(definitions[0]); d++)
		if (head_keyword(st, j, definitions[d]))
			v->definition = true;
}

/* DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR [WITH HOLD|WITHOUT HOLD] FOR ... */
static void judge_declare(struct scan *sc, const struct statement *st, size_t i)
{
	for (size_t j = i + 2; j < st->head_count && !head_keyword(st, j, "for"); j++) {
		if (head_keyword(st, j, "with") && head_keyword(st, j + 1, "hold")) {
			pin_with_token(sc, SQL_PIN_CURSOR_WITH_HOLD, st, i + 1);
			return;
		}
	}
}

/*
 * EXPLAIN [ANALYZE|ANALYSE] [VERBOSE] stmt or EXPLAIN (option [value], ...)
 * stmt: returns the index of stmt and whether it really runs.
 */
static size_t skip_explain(const struct statement *st, size_t i, bool *analyze)
{
	*analyze = false;
	if (sql_token_is_char(head_token(st, i), '(')) {
		int depth = 0;

		for (size_t j = i; j < st->head_count; j++) {
			const struct sql_token *tok = &st->head[j];

			if (sql_token_is_char(tok, '(')) {
				depth++;
			} else if (sql_token_is_char(tok, ')')) {
				if (--depth == 0)
					return j + 1;
			} else if (depth == 1 && (sql_token_is_keyword(tok, "analyze") || sql_token_is_keyword(tok, "analyse")) &&
				   (sql_token_is_char(&st->head[j - 1], '(') || sql_token_is_char(&st->head[j - 1], ','))) {
				const struct sql_token *value = head_token(st, j + 1);

				*analyze = value == NULL || !sql_token_is_false(value, true);
			}
		}
		return st->head_count;
	}
	while (head_keyword(st, i, "analyze") || head_keyword(st, i, "analyse") || head_keyword(st, i, "verbose")) {
		if (!head_keyword(st, i, "verbose"))
			*analyze = true;
		i++;
	}
	return i;
}

static bool is_transaction_control(const struct statement *st, size_t i)
{
	static const char *const words[] = {
		"begin", "start", "commit", "rollback", "end", "abort", "savepoint", "release",
	};

	for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++)
		if (head_keyword(st, i, words[w]))
			return true;
	return head_keyword(st, i, "prepare") && head_keyword(st, i + 1, "transaction");
}

/*
 * DO [LANGUAGE name] code [LANGUAGE name]: code pgmux cannot run, so the
 * block is SQL_EFFECT_OPAQUE; but its text is read as SQL too, for what it
 * shows: a SET or set_config() of a custom parameter names one that the
 * session's read-back must cover, and what pins in SQL pins here as well.
 * (BEGIN and END there are PL/pgSQL's, not transaction control.)
 */
static void judge_do(struct scan *sc, const struct statement *st, size_t i)
{
	struct sql_scan_result body;
	const struct sql_token *code = NULL;
	struct sql_scan_result *out = sc->out;

	out->effects |= SQL_EFFECT_OPAQUE;
	for (size_t j = i; j < st->head_count && code == NULL; j++)
		if (st->head[j].kind == TOKEN_STRING && !head_keyword(st, j - 1, "language"))
			code = &st->head[j];
	if (code == NULL || sc->depth >= DO_DEPTH_MAX)
		return;
	scan_text(code->text, code->len, sc->tracked, sc->flags, &body, sc->depth + 1);
	out->effects |= body.effects & ~SQL_EFFECT_TRANSACTION_CONTROL;
	if (out->pin == SQL_PIN_NONE && body.pin != SQL_PIN_NONE) {
		out->pin = body.pin;
		memcpy(out->pin_detail, body.pin_detail, sizeof(out->pin_detail));
	}
	out->custom_overflow = out->custom_overflow || body.custom_overflow;
	for (int k = 0; k < body.n_custom; k++) {
		bool seen = false;

		for (int m = 0; m < out->n_custom; m++)
			seen = seen || strcmp(out->custom[m], body.custom[k]) == 0;
		if (seen)
			continue;
		if (out->n_custom == SQL_SCAN_MAX_CUSTOM)
			out->custom_overflow = true;
		else
			memcpy(out->custom[out->n_custom++], body.custom[k], sizeof(out->custom[0]));
	}
}

/* Judges the leading keywords; commands that cannot follow EXPLAIN are judged only without it. */
static void judge_command(struct scan *sc, const struct statement *st, size_t i, bool explain, struct verdict *v)
{
	char buf[NAME_BUFFER];
	struct text name;

	/* In a DO block's code, BEGIN opens a PL/pgSQL block: its first statement follows. */
	if (sc->depth > 0 && head_keyword(st, i, "begin") && i + 1 < st->head_count &&
	    !head_keyword(st, i + 1, "transaction") && !head_keyword(st, i + 1, "work") &&
	    !head_keyword(st, i + 1, "isolation"))
		i++;

	if (head_keyword(st, i, "select") || head_keyword(st, i, "with")) {
		v->select = true;
	} else if (head_keyword(st, i, "create")) {
		judge_create(sc, st, i, v);
	} else if (head_keyword(st, i, "execute") && sc->depth > 0) {
		/* PL/pgSQL's EXECUTE runs a text pgmux cannot see: the block is opaque already. */
	} else if (head_keyword(st, i, "execute")) {
		/* Even EXPLAIN EXECUTE needs the prepared statement that lives on this backend. */
		pin_with_token(sc, SQL_PIN_EXECUTE, st, i + 1);
	} else if (head_keyword(st, i, "update") && v->executes) {
		size_t j = head_keyword(st, i + 1, "only") ? i + 2 : i + 1;

		text_init(&name, buf, sizeof(buf));
		head_read_name(st, j, &name);
		if (strcmp(buf, "pg_settings") == 0 || strcmp(buf, "pg_catalog.pg_settings") == 0)
			pin(sc, SQL_PIN_SET, "pg_settings");
	} else if (explain) {
		return;
	} else if (is_transaction_control(st, i)) {
		sc->out->effects |= SQL_EFFECT_TRANSACTION_CONTROL;
	} else if (head_keyword(st, i, "do")) {
		judge_do(sc, st, i + 1);
	} else if (head_keyword(st, i, "call")) {
		/* A procedure: code pgmux cannot read, which may even end the transaction. */
		sc->out->effects |= SQL_EFFECT_OPAQUE;
	} else if (head_keyword(st, i, "prepare")) {
		pin_with_token(sc, SQL_PIN_PREPARE, st, i + 1);
	} else if (head_keyword(st, i, "deallocate")) {
		size_t j = head_keyword(st, i + 1, "prepare") ? i + 2 : i + 1;

		if (head_keyword(st, j, "all"))
			sc->out->effects |= SQL_EFFECT_DEALLOCATE_ALL;
		else
			pin_with_token(sc, SQL_PIN_DEALLOCATE, st, j);
	} else if (head_keyword(st, i, "discard")) {
		/* DISCARD PLANS, SEQUENCES and TEMP only drop state, which never needs a pin. */
		if (head_keyword(st, i + 1, "all"))
			sc->out->effects |= SQL_EFFECT_DISCARD_ALL;
	} else if (head_keyword(st, i, "declare")) {
		judge_declare(sc, st, i);
	} else if (head_keyword(st, i, "listen")) {
		if (sc->flags & SQL_SCAN_LISTEN_HELD)
			sc->out->effects |= SQL_EFFECT_LISTEN;
		else
			pin_with_token(sc, SQL_PIN_LISTEN, st, i + 1);
	} else if (head_keyword(st, i, "unlisten")) {
		sc->out->effects |= SQL_EFFECT_UNLISTEN;
	} else if (head_keyword(st, i, "load")) {
		pin_with_token(sc, SQL_PIN_LOAD, st, i + 1);
	} else if (head_keyword(st, i, "set")) {
		judge_set(sc, st, i + 1);
	} else if (head_keyword(st, i, "reset")) {
		judge_reset(sc, st, i + 1);
	}
}

static void finish_statement(struct scan *sc, const struct statement *st)
{
	struct verdict v = {.executes = true};
	const struct finding *candidates[3];
	const struct finding *first = NULL;
	size_t n = 0;
	size_t i = 0;
	bool explain = head_keyword(st, 0, "explain");

	if (st->empty)
		return;
	sc->out->statements++;
	if (explain)
		i = skip_explain(st, 1, &v.executes);
	judge_command(sc, st, i, explain, &v);
	if (st->writes && v.executes && !v.definition)
		sc->out->effects |= SQL_EFFECT_WRITE;
	if (head_keyword(st, i, "create") || head_keyword(st, i, "alter")) {
		static const char *const code[] = {"function", "procedure", "trigger", "rule", "extension", "language"};

		for (size_t j = i + 1; j < st->head_count && j < i + 6; j++)
			for (size_t k = 0; k < sizeof(code) / sizeof(code[0]); k++)
				if (head_keyword(st, j, code[k]))
					sc->out->effects |= SQL_EFFECT_DEFINES_CODE;
	}

	if (v.executes && !v.definition) {
		candidates[n++] = &st->call;
		sc->out->effects |= st->call_effects;
	}
	if (v.executes && v.select)
		candidates[n++] = &st->into_temp;
	if (v.executes && v.create)
		candidates[n++] = &st->pg_temp;
	for (size_t c = 0; c < n; c++)
		if (candidates[c]->reason != SQL_PIN_NONE && (first == NULL || candidates[c]->offset < first->offset))
			first = candidates[c];
	if (first)
		pin(sc, first->reason, first->detail);
}

/* ------------------------------------------------------------------ entry */

const char *sql_pin_reason_text(enum sql_pin_reason reason)
{
	switch (reason) {
	case SQL_PIN_NONE:
		return "no pin";
	case SQL_PIN_PREPARE:
		return "SQL-level PREPARE";
	case SQL_PIN_EXECUTE:
		return "SQL-level EXECUTE";
	case SQL_PIN_DEALLOCATE:
		return "SQL-level DEALLOCATE";
	case SQL_PIN_TEMP_OBJECT:
		return "temporary table";
	case SQL_PIN_CURSOR_WITH_HOLD:
		return "cursor WITH HOLD";
	case SQL_PIN_LISTEN:
		return "LISTEN";
	case SQL_PIN_LOAD:
		return "LOAD";
	case SQL_PIN_ADVISORY_LOCK:
		return "session-level advisory lock";
	case SQL_PIN_SET:
		return "SET of a parameter pgmux does not track";
	case SQL_PIN_OTHER_SESSION_STATE:
		return "other session state";
	case SQL_PIN_TOO_LONG:
		return "query text too long to scan";
	}
	return "unknown pin reason";
}

void sql_scan(const char *sql, size_t len, const char *const *tracked, unsigned flags, struct sql_scan_result *out)
{
	scan_text(sql, len, tracked, flags, out, 0);
}

static void scan_text(const char *sql, size_t len, const char *const *tracked, unsigned flags,
		      struct sql_scan_result *out, int depth)
{
	struct scan sc = {.tracked = tracked, .flags = flags, .out = out, .depth = depth};
	struct sql_lexer lx = {.sql = sql, .len = sql ? len : 0, .pos = 0};
	struct statement st;
	struct sql_token tok;
	const char *nul;

	memset(out, 0, sizeof(*out));
	/* The server reads message text up to its terminating NUL; nothing after one is SQL. */
	nul = lx.len ? memchr(sql, '\0', lx.len) : NULL;
	if (nul)
		lx.len = (size_t)(nul - sql);

	statement_reset(&st);
	while (sql_lex_next(&lx, &tok)) {
		if (sql_token_is_char(&tok, ';') && st.paren_depth == 0 && st.atomic_depth == 0) {
			finish_statement(&sc, &st);
			statement_reset(&st);
		} else {
			statement_token(&sc, &st, &tok);
		}
	}
	finish_statement(&sc, &st);
}
