/*
 * sqllex.c: the SQL tokenizer (see sqllex.h). It follows PostgreSQL's own
 * scanner where that decides what is a token: which prefixes start a string
 * (E, B, X, N, U&), that '$' may continue an identifier, that a dollar quote's
 * body ends at the first copy of its delimiter, that block comments nest.
 */
#include "sqllex.h"

static bool is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* PostgreSQL treats every byte with the high bit set as a letter, so UTF-8 names lex as identifiers. */
static bool is_ident_start(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

/* '$' may continue an identifier, which is why "a$$b" holds no dollar quote. */
static bool is_ident_char(unsigned char c)
{
	return is_ident_start(c) || sql_is_digit(c) || c == '$';
}

static bool is_dollar_tag_char(unsigned char c)
{
	return is_ident_start(c) || sql_is_digit(c);
}

/* The byte `ahead` positions on, or NUL past the end (the text never holds a NUL itself). */
static unsigned char peek(const struct sql_lexer *lx, size_t ahead)
{
	size_t at = lx->pos + ahead;

	return at < lx->len ? (unsigned char)lx->sql[at] : '\0';
}

/* Skips a block comment that starts at pos. Comments nest, unlike in C. */
static bool skip_block_comment(struct sql_lexer *lx)
{
	int depth = 0;

	while (lx->pos + 1 < lx->len) {
		if (lx->sql[lx->pos] == '/' && lx->sql[lx->pos + 1] == '*') {
			depth++;
			lx->pos += 2;
		} else if (lx->sql[lx->pos] == '*' && lx->sql[lx->pos + 1] == '/') {
			lx->pos += 2;
			if (--depth == 0)
				return true;
		} else {
			lx->pos++;
		}
	}
	lx->pos = lx->len;
	return false;
}

/* Skips white space and comments; false when the text ends inside a comment. */
static bool skip_blanks(struct sql_lexer *lx)
{
	while (lx->pos < lx->len) {
		unsigned char c = (unsigned char)lx->sql[lx->pos];

		if (is_space(c)) {
			lx->pos++;
		} else if (c == '-' && peek(lx, 1) == '-') {
			while (lx->pos < lx->len && lx->sql[lx->pos] != '\n' && lx->sql[lx->pos] != '\r')
				lx->pos++;
		} else if (c == '/' && peek(lx, 1) == '*') {
			if (!skip_block_comment(lx))
				return false;
		} else {
			break;
		}
	}
	return true;
}

/*
 * Reads the body of a quoted token whose opening quote has been consumed. A
 * doubled quote stands for itself; with backslash_escapes (E'' strings) a
 * backslash also protects the byte after it. False when the text ends first.
 */
static bool scan_quoted(struct sql_lexer *lx, char quote, bool backslash_escapes, struct sql_token *tok)
{
	size_t start = lx->pos;

	while (lx->pos < lx->len) {
		char c = lx->sql[lx->pos];

		if (backslash_escapes && c == '\\') {
			lx->pos += 2;
		} else if (c == quote && peek(lx, 1) == (unsigned char)quote) {
			lx->pos += 2;
		} else if (c == quote) {
			tok->text = lx->sql + start;
			tok->len = lx->pos - start;
			lx->pos++;
			return true;
		} else {
			lx->pos++;
		}
	}
	lx->pos = lx->len;
	return false;
}

enum dollar_result { DOLLAR_NOT_A_QUOTE, DOLLAR_QUOTE, DOLLAR_UNTERMINATED };

/*
 * At a '$' that does not start a parameter: reads $tag$...$tag$ if one starts
 * here. The body ends at the first copy of the opening delimiter, which is
 * also where the server's scanner ends it.
 */
static enum dollar_result scan_dollar_quote(struct sql_lexer *lx, struct sql_token *tok)
{
	size_t open = lx->pos;
	size_t tag_end = open + 1;

	if (tag_end < lx->len && is_ident_start((unsigned char)lx->sql[tag_end]))
		while (tag_end < lx->len && is_dollar_tag_char((unsigned char)lx->sql[tag_end]))
			tag_end++;
	if (tag_end >= lx->len || lx->sql[tag_end] != '$')
		return DOLLAR_NOT_A_QUOTE;

	size_t delim_len = tag_end + 1 - open;
	size_t body = tag_end + 1;

	for (size_t at = body; at + delim_len <= lx->len; at++) {
		if (lx->sql[at] == '$' && memcmp(lx->sql + at, lx->sql + open, delim_len) == 0) {
			tok->text = lx->sql + body;
			tok->len = at - body;
			lx->pos = at + delim_len;
			return DOLLAR_QUOTE;
		}
	}
	lx->pos = lx->len;
	return DOLLAR_UNTERMINATED;
}

static bool start_string(struct sql_lexer *lx, struct sql_token *tok, size_t prefix, enum sql_string_flavor flavor)
{
	lx->pos += prefix;
	tok->kind = TOKEN_STRING;
	tok->flavor = flavor;
	return scan_quoted(lx, '\'', flavor == STRING_ESCAPE, tok);
}

/*
 * Reads the next token. False at the end of the text, and also when the text
 * ends inside a string, quoted identifier, dollar quote or comment: what
 * follows an unterminated opener can never be a token.
 */
bool sql_lex_next(struct sql_lexer *lx, struct sql_token *tok)
{
	if (!skip_blanks(lx) || lx->pos >= lx->len)
		return false;

	size_t start = lx->pos;
	unsigned char c = (unsigned char)lx->sql[start];
	unsigned char next = peek(lx, 1);

	tok->offset = start;
	tok->flavor = STRING_STANDARD;

	if ((c == 'e' || c == 'E') && next == '\'')
		return start_string(lx, tok, 2, STRING_ESCAPE);
	if ((c == 'b' || c == 'B' || c == 'x' || c == 'X' || c == 'n' || c == 'N') && next == '\'')
		return start_string(lx, tok, 2, STRING_STANDARD);
	if ((c == 'u' || c == 'U') && next == '&' && peek(lx, 2) == '\'')
		return start_string(lx, tok, 3, STRING_STANDARD);
	if ((c == 'u' || c == 'U') && next == '&' && peek(lx, 2) == '"') {
		lx->pos += 3;
		tok->kind = TOKEN_QUOTED_IDENT;
		return scan_quoted(lx, '"', false, tok);
	}
	if (c == '\'')
		return start_string(lx, tok, 1, STRING_STANDARD);
	if (c == '"') {
		lx->pos++;
		tok->kind = TOKEN_QUOTED_IDENT;
		return scan_quoted(lx, '"', false, tok);
	}
	if (c == '$' && sql_is_digit(next)) {
		lx->pos++;
		while (lx->pos < lx->len && sql_is_digit((unsigned char)lx->sql[lx->pos]))
			lx->pos++;
		tok->kind = TOKEN_PARAM;
	} else if (c == '$') {
		enum dollar_result r = scan_dollar_quote(lx, tok);

		if (r == DOLLAR_QUOTE) {
			tok->kind = TOKEN_STRING;
			tok->flavor = STRING_DOLLAR;
			return true;
		}
		if (r == DOLLAR_UNTERMINATED)
			return false;
		lx->pos++;
		tok->kind = TOKEN_CHAR;
	} else if (is_ident_start(c)) {
		while (lx->pos < lx->len && is_ident_char((unsigned char)lx->sql[lx->pos]))
			lx->pos++;
		tok->kind = TOKEN_IDENT;
	} else if (sql_is_digit(c) || (c == '.' && sql_is_digit(next))) {
		/* Loose on purpose: 1e10, 0x1F, 1_000 and 1.5 all end up as one token. */
		while (lx->pos < lx->len && (is_dollar_tag_char((unsigned char)lx->sql[lx->pos]) ||
					     lx->sql[lx->pos] == '.'))
			lx->pos++;
		tok->kind = TOKEN_NUMBER;
	} else {
		lx->pos++;
		tok->kind = TOKEN_CHAR;
	}
	tok->text = lx->sql + start;
	tok->len = lx->pos - start;
	return true;
}

/* The body of a string literal compared case-insensitively, for the few words a boolean accepts. */
static bool string_body_is(const struct sql_token *tok, const char *word)
{
	return tok->kind == TOKEN_STRING && sql_ascii_case_equal(tok->text, tok->len, word, strlen(word));
}

/*
 * Whether a token is a false boolean literal: FALSE, or a string the boolean
 * input function reads as false. Option values (EXPLAIN (ANALYZE off)) also
 * accept OFF and 0.
 */
bool sql_token_is_false(const struct sql_token *tok, bool option_value)
{
	static const char *const false_strings[] = {"f", "false", "n", "no", "off", "0"};

	if (sql_token_is_keyword(tok, "false"))
		return true;
	if (option_value && (sql_token_is_keyword(tok, "off") ||
			     (tok->kind == TOKEN_NUMBER && tok->len == 1 && tok->text[0] == '0')))
		return true;
	for (size_t i = 0; i < sizeof(false_strings) / sizeof(false_strings[0]); i++)
		if (string_body_is(tok, false_strings[i]))
			return true;
	return false;
}

/* Whether a token is a true boolean literal: TRUE, or a string the boolean input function reads as true. */
bool sql_token_is_true(const struct sql_token *tok)
{
	static const char *const true_strings[] = {"t", "true", "y", "yes", "on", "1"};

	if (sql_token_is_keyword(tok, "true"))
		return true;
	for (size_t i = 0; i < sizeof(true_strings) / sizeof(true_strings[0]); i++)
		if (string_body_is(tok, true_strings[i]))
			return true;
	return false;
}

/*
 * Is the name tok (an identifier, or a quoted one taken as it is) in list,
 * one of the sorted lower-case lists of sqlnames.c?
 */
bool sql_token_in_names(const struct sql_token *tok, const char *const *list, size_t n)
{
	char name[64];
	size_t lo = 0, hi = n;

	if (!sql_token_is_any_name(tok) || tok->len >= sizeof(name))
		return false;
	for (size_t i = 0; i < tok->len; i++)
		name[i] = tok->kind == TOKEN_IDENT ? sql_ascii_lower(tok->text[i]) : tok->text[i];
	name[tok->len] = '\0';
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int cmp = strcmp(name, list[mid]);

		if (cmp == 0)
			return true;
		if (cmp < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return false;
}

