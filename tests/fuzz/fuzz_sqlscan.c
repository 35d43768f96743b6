/*
 * fuzz_sqlscan.c: libFuzzer harness for the SQL lexer (sqlscan.c), which
 * reads every Query and Parse text a client sends in transaction pooling to
 * find what pins a session. The text is handed over without a terminating
 * NUL, in a buffer of exactly its length, so AddressSanitizer catches any
 * read past it. The first input byte picks the flags and tracked list.
 *
 * Checks beyond "no crash": the result is well formed, SQL_SCAN_CARRY_SETS
 * alone decides whether SET_SESSION and custom names can appear, and neither
 * leading white space or a comment (which PostgreSQL's lexer skips) nor a
 * final semicolon changes what is found.
 */
#include <ctype.h>
#include <string.h>

#include "fuzz.h"
#include "params.h"
#include "sqlscan.h"

static const char *const few_tracked[] = { "search_path", "statement_timeout", NULL };
static const char *const none_tracked[] = { NULL };

static void check_result(const struct sql_scan_result *r, unsigned flags)
{
	FUZZ_CHECK(r->pin >= SQL_PIN_NONE && r->pin <= SQL_PIN_TOO_LONG, "pin %d", (int)r->pin);
	FUZZ_CHECK(sql_pin_reason_text(r->pin) != NULL, "no text for pin %d", (int)r->pin);
	FUZZ_CHECK(memchr(r->pin_detail, '\0', sizeof(r->pin_detail)) != NULL, "pin detail unterminated");
	FUZZ_CHECK(r->pin != SQL_PIN_NONE || r->pin_detail[0] == '\0', "detail %s without a pin", r->pin_detail);
	FUZZ_CHECK(r->statements >= 0, "statements %d", r->statements);
	FUZZ_CHECK(r->n_custom >= 0 && r->n_custom <= SQL_SCAN_MAX_CUSTOM, "n_custom %d", r->n_custom);
	/* LISTEN is an effect instead of a pin where the caller takes it over, and only there. */
	if (flags & SQL_SCAN_LISTEN_HELD)
		FUZZ_CHECK(r->pin != SQL_PIN_LISTEN, "a LISTEN pin with SQL_SCAN_LISTEN_HELD");
	else
		FUZZ_CHECK(!(r->effects & SQL_EFFECT_LISTEN), "SQL_EFFECT_LISTEN without SQL_SCAN_LISTEN_HELD");
	if (!(flags & SQL_SCAN_CARRY_SETS)) {
		FUZZ_CHECK(!(r->effects & SQL_EFFECT_SET_SESSION), "SET_SESSION without SQL_SCAN_CARRY_SETS");
		FUZZ_CHECK(r->n_custom == 0 && !r->custom_overflow, "custom names without SQL_SCAN_CARRY_SETS");
	}
	for (int i = 0; i < r->n_custom; i++) {
		FUZZ_CHECK(memchr(r->custom[i], '\0', sizeof(r->custom[i])) != NULL, "custom name unterminated");
		FUZZ_CHECK(strchr(r->custom[i], '.') != NULL, "custom name %s has no dot", r->custom[i]);
		for (const char *p = r->custom[i]; *p; p++)
			FUZZ_CHECK(!isupper((unsigned char)*p), "custom name %s not lower-case", r->custom[i]);
	}
}

static void same(const struct sql_scan_result *a, const struct sql_scan_result *b, const char *change)
{
	FUZZ_CHECK(a->pin == b->pin && a->effects == b->effects && a->statements == b->statements &&
			   strcmp(a->pin_detail, b->pin_detail) == 0,
		   "%s changed the result: pin %d/%d (%s/%s) effects %#x/%#x statements %d/%d", change, (int)a->pin,
		   (int)b->pin, a->pin_detail, b->pin_detail, a->effects, b->effects, a->statements, b->statements);
}

/*
 * The LISTEN texts pgmux answers itself (sqlscan_listen.c): whatever it
 * takes is a LISTEN text to sql_scan() too (it pins with LISTEN, or has the
 * UNLISTEN effect, and nothing else), and every channel name is a
 * terminated name of 1 to 63 bytes. One over-reading is allowed: a channel
 * named like a writing command (LISTEN update, a name PostgreSQL accepts)
 * reads as a write to sql_scan(), which only makes pgmux check more.
 */
static void check_listen(const char *text, size_t len)
{
	struct sql_listen_command cmds[SQL_LISTEN_MAX_COMMANDS];
	struct sql_scan_result scan;
	int n = sql_listen_parse(text, len, cmds, SQL_LISTEN_MAX_COMMANDS);

	if (n < 0 || n > SQL_LISTEN_MAX_COMMANDS)
		abort();
	if (n == 0)
		return;
	sql_scan(text, len, NULL, 0, &scan);
	if ((scan.pin != SQL_PIN_NONE && scan.pin != SQL_PIN_LISTEN) || (scan.effects & ~(SQL_EFFECT_UNLISTEN | SQL_EFFECT_WRITE)) != 0)
		abort();
	for (int i = 0; i < n; i++) {
		size_t name_len = strnlen(cmds[i].channel, sizeof(cmds[i].channel));

		if (name_len == sizeof(cmds[i].channel) || (cmds[i].kind == SQL_UNLISTEN_ALL) != (name_len == 0))
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *const *tracked;
	unsigned flags;
	struct sql_scan_result first, second;
	char *text, *padded;
	size_t len;

	if (size < 1)
		return 0;
	flags = (data[0] & 1) ? SQL_SCAN_CARRY_SETS : 0;
	if (data[0] & 8)
		flags |= SQL_SCAN_LISTEN_HELD;
	switch ((data[0] >> 1) & 3) {
	case 0:
		tracked = params_carried_names;
		break;
	case 1:
		tracked = few_tracked;
		break;
	case 2:
		tracked = none_tracked;
		break;
	default:
		tracked = NULL;
		break;
	}
	len = size - 1;
	text = malloc(len ? len : 1);
	memcpy(text, data + 1, len);
	sql_scan(text, len, tracked, flags, &first);
	check_result(&first, flags);

	padded = malloc(len + 5);
	memcpy(padded, " \n", 2);
	memcpy(padded + 2, text, len);
	sql_scan(padded, len + 2, tracked, flags, &second);
	same(&first, &second, "leading white space");
	memcpy(padded, "/**/", 4);
	memcpy(padded + 4, text, len);
	padded[len + 4] = ';';
	sql_scan(padded, len + 5, tracked, flags, &second);
	same(&first, &second, "a leading comment and a final semicolon");
	free(padded);
	check_listen(text, len);
	free(text);
	return 0;
}
