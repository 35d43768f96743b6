/*
 * sqllex.h: SQL text as PostgreSQL's scanner splits it into tokens, for
 * sqlscan.c: identifiers and keywords, quoted identifiers, string literals in
 * all their forms (standard, E'...', dollar-quoted), numbers, parameters and
 * single characters, with white space and comments (nested, as the server
 * nests them) skipped. Nothing here allocates or reads past the length it is
 * given; an unterminated string, quoted identifier, dollar quote or comment
 * ends the text. The small predicates are inline: the scanner asks them of
 * every token.
 */
#ifndef PGMUX_SQLLEX_H
#define PGMUX_SQLLEX_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

enum sql_token_kind {
	TOKEN_IDENT,        /* unquoted identifier or keyword */
	TOKEN_QUOTED_IDENT, /* "..." or U&"..."; text is the body between the quotes */
	TOKEN_STRING,       /* any string literal; text is the body between the delimiters */
	TOKEN_NUMBER,
	TOKEN_PARAM, /* $1 */
	TOKEN_CHAR,  /* any other single byte: punctuation or an operator character */
};

enum sql_string_flavor {
	STRING_STANDARD, /* '...' and its B, X, N and U& forms: only '' is special */
	STRING_ESCAPE,   /* E'...': a backslash also escapes the next byte */
	STRING_DOLLAR,   /* $tag$...$tag$: nothing inside is special */
};

struct sql_token {
	const char *text;
	size_t len;
	size_t offset; /* where the token starts in the whole text, to order findings */
	enum sql_token_kind kind;
	enum sql_string_flavor flavor;
};

struct sql_lexer {
	const char *sql;
	size_t len;
	size_t pos;
};

/*
 * Reads the next token. False at the end of the text, and also when the text
 * ends inside a string, quoted identifier, dollar quote or comment: what
 * follows an unterminated opener can never be a token.
 */
bool sql_lex_next(struct sql_lexer *lx, struct sql_token *tok);

static inline bool sql_is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static inline char sql_ascii_lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static inline bool sql_ascii_case_equal(const char *a, size_t a_len, const char *b, size_t b_len)
{
	if (a_len != b_len)
		return false;
	for (size_t i = 0; i < a_len; i++)
		if (sql_ascii_lower(a[i]) != sql_ascii_lower(b[i]))
			return false;
	return true;
}

static inline bool sql_token_is_char(const struct sql_token *tok, char c)
{
	return tok != NULL && tok->kind == TOKEN_CHAR && tok->text[0] == c;
}

/*
 * Keywords are unquoted and case-insensitive; "LISTEN" in quotes is a name,
 * never a keyword. word is in lower case. Every token of every statement is
 * held against a dozen words, so the first letter decides most cases before
 * strlen and the full comparison are paid for.
 */
static inline bool sql_token_is_keyword(const struct sql_token *tok, const char *word)
{
	return tok != NULL && tok->kind == TOKEN_IDENT && tok->len > 0 && sql_ascii_lower(tok->text[0]) == word[0] &&
	       sql_ascii_case_equal(tok->text, tok->len, word, strlen(word));
}

/* A name as the server resolves it: unquoted folds to lower case, quoted must match exactly. name is in lower case. */
static inline bool sql_token_is_name(const struct sql_token *tok, const char *name)
{
	if (tok == NULL || tok->len == 0 || (tok->kind == TOKEN_IDENT ? sql_ascii_lower(tok->text[0]) : tok->text[0]) != name[0])
		return false;
	if (tok->kind == TOKEN_IDENT)
		return sql_ascii_case_equal(tok->text, tok->len, name, strlen(name));
	return tok->kind == TOKEN_QUOTED_IDENT && tok->len == strlen(name) && memcmp(tok->text, name, tok->len) == 0;
}

static inline bool sql_token_is_any_name(const struct sql_token *tok)
{
	return tok != NULL && (tok->kind == TOKEN_IDENT || tok->kind == TOKEN_QUOTED_IDENT);
}

/*
 * Whether a token is a false boolean literal: FALSE, or a string the boolean
 * input function reads as false. Option values (EXPLAIN (ANALYZE off)) also
 * accept OFF and 0.
 */
bool sql_token_is_false(const struct sql_token *tok, bool option_value);

/* Whether a token is a true boolean literal: TRUE, or a string the boolean input function reads as true. */
bool sql_token_is_true(const struct sql_token *tok);

/*
 * Is the name tok (an identifier, or a quoted one taken as it is) in list,
 * one of the sorted lower-case lists of sqlnames.c?
 */
bool sql_token_in_names(const struct sql_token *tok, const char *const *list, size_t n);

#endif
