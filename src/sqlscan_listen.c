/*
 * sqlscan_listen.c: the texts pgmux answers itself with transaction pooling,
 * LISTEN and UNLISTEN (see sql_listen_parse() in sqlscan.h). Only the plain
 * forms are taken, so that what pgmux answers is exactly what the server
 * would have accepted; everything else stays the server's to judge.
 */
#include "sqllex.h"
#include "sqlscan.h"

#include <stdbool.h>
#include <string.h>

/*
 * PostgreSQL 15's keywords that cannot be a channel name (ColId): the
 * reserved ones and those that may only name a type or a function. Sorted.
 */
static const char *const not_col_id[] = {
	"all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization",
	"binary", "both", "case", "cast", "check", "collate", "collation", "column", "concurrently",
	"constraint", "create", "cross", "current_catalog", "current_date", "current_role",
	"current_schema", "current_time", "current_timestamp", "current_user", "default", "deferrable",
	"desc", "distinct", "do", "else", "end", "except", "false", "fetch", "for", "foreign", "freeze",
	"from", "full", "grant", "group", "having", "ilike", "in", "initially", "inner", "intersect",
	"into", "is", "isnull", "join", "lateral", "leading", "left", "like", "limit", "localtime",
	"localtimestamp", "natural", "not", "notnull", "null", "offset", "on", "only", "or", "order",
	"outer", "overlaps", "placing", "primary", "references", "returning", "right", "select",
	"session_user", "similar", "some", "symmetric", "table", "tablesample", "then", "to",
	"trailing", "true", "union", "unique", "user", "using", "variadic", "verbose", "when", "where",
	"window", "with",
};

/* The channel a name token stands for, as the server resolves it; false when pgmux leaves it to the server. */
static bool channel_name(const char *sql, const struct sql_token *tok, char out[SQL_LISTEN_NAME_MAX + 1])
{
	size_t n = 0;

	if (tok->kind == TOKEN_IDENT) {
		if (tok->len > SQL_LISTEN_NAME_MAX ||
		    sql_token_in_names(tok, not_col_id, sizeof(not_col_id) / sizeof(not_col_id[0])))
			return false;
		for (size_t i = 0; i < tok->len; i++)
			out[n++] = sql_ascii_lower(tok->text[i]);
	} else if (tok->kind == TOKEN_QUOTED_IDENT) {
		/* "name" has its body one byte after where the token starts; U&"name" (escapes) is the server's. */
		if (tok->text != sql + tok->offset + 1 || tok->len == 0)
			return false;
		for (size_t i = 0; i < tok->len; i++) {
			if (tok->text[i] == '"')
				i++; /* "" stands for one " */
			if (n == SQL_LISTEN_NAME_MAX || tok->text[i] == '\0')
				return false;
			out[n++] = tok->text[i];
		}
	} else {
		return false;
	}
	out[n] = '\0';
	return true;
}

/*
 * Whether the text has "listen" in it, in any case. Every LISTEN or UNLISTEN
 * statement does (a keyword is never quoted or escaped), and most texts do
 * not: those are answered without lexing them (about 1,500 instructions for
 * pgbench -S's SELECT, issue 21).
 */
static bool mentions_listen(const char *sql, size_t len)
{
	static const char word[] = "listen"; /* six different letters */
	static const unsigned char offset[256] = {['l'] = 1, ['i'] = 2, ['s'] = 3, ['t'] = 4, ['e'] = 5, ['n'] = 6};

	/*
	 * Every six bytes long stretch holds exactly one offset 5, 11, 17, ...:
	 * only those are looked at, and a letter of the word there says where
	 * the word would begin (byte | 0x20 is one of its letters only for that
	 * letter in either case).
	 */
	for (size_t at = 5; at < len; at += 6) {
		size_t in_word = offset[(unsigned char)(sql[at] | 0x20)], start, k = 0;

		if (in_word == 0 || in_word - 1 > at)
			continue;
		start = at - (in_word - 1);
		if (start + 6 > len)
			continue;
		while (k < 6 && (sql[start + k] | 0x20) == word[k])
			k++;
		if (k == 6)
			return true;
	}
	return false;
}

/*
 * The LISTEN and UNLISTEN statements of a text; with only, 0 unless the text
 * holds nothing else; without, the other statements are passed over.
 */
static int listen_statements(const char *sql, size_t len, struct sql_listen_command *out, int max, bool only)
{
	struct sql_lexer lx = {.sql = sql, .len = sql ? len : 0, .pos = 0};
	struct sql_token tok[4];
	const char *nul = lx.len ? memchr(sql, '\0', lx.len) : NULL;
	int n_commands = 0, n_tokens = 0;
	size_t after_last = 0;
	bool more = true;

	if (nul)
		lx.len = (size_t)(nul - sql);
	if (!mentions_listen(sql, lx.len))
		return 0;
	/* Each statement is at most three tokens (UNLISTEN name ;): gather them up to the ';' and judge. */
	while (more) {
		struct sql_token next;

		more = sql_lex_next(&lx, &next);
		if (more)
			after_last = lx.pos;
		if (more && !sql_token_is_char(&next, ';')) {
			if (n_tokens < 3)
				tok[n_tokens] = next;
			n_tokens++;
			continue;
		}
		if (n_tokens == 0)
			continue; /* an empty statement */
		if (n_tokens == 2 && n_commands < max && sql_token_is_keyword(&tok[0], "listen")) {
			out[n_commands].kind = SQL_LISTEN;
		} else if (n_tokens == 2 && n_commands < max && sql_token_is_keyword(&tok[0], "unlisten")) {
			out[n_commands].kind = sql_token_is_char(&tok[1], '*') ? SQL_UNLISTEN_ALL : SQL_UNLISTEN;
		} else if (only) {
			return 0;
		} else {
			n_tokens = 0;
			continue;
		}
		n_tokens = 0;
		if (out[n_commands].kind == SQL_UNLISTEN_ALL)
			out[n_commands].channel[0] = '\0';
		else if (!channel_name(sql, &tok[1], out[n_commands].channel)) {
			if (only)
				return 0;
			continue;
		}
		n_commands++;
	}
	/*
	 * The lexer also stops inside an unterminated quote or comment, which
	 * the server refuses: only blanks may follow the last token (a trailing
	 * comment, too, leaves the text to the server).
	 */
	for (size_t i = after_last; i < lx.len; i++)
		if (strchr(" \t\n\r\f\v", sql[i]) == NULL)
			return 0;
	return n_commands;
}

int sql_listen_parse(const char *sql, size_t len, struct sql_listen_command *out, int max)
{
	return listen_statements(sql, len, out, max, true);
}

int sql_listen_find(const char *sql, size_t len, struct sql_listen_command *out, int max)
{
	return listen_statements(sql, len, out, max, false);
}
