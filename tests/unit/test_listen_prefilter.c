/*
 * test_listen_prefilter.c: sql_listen_parse() and sql_listen_find() skip the
 * lexer for texts without "listen" in them (issue 21). The skip looks at
 * every sixth byte only: the word must be found wherever it begins, in any
 * case, and a text without it must still give nothing.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "sqlscan.h"

Test(listen_prefilter, the_word_is_found_at_every_offset_and_in_any_case)
{
	static const char *const spellings[] = {"LISTEN", "listen", "Listen", "lIsTeN", "UNLISTEN", "unlisten"};
	struct sql_listen_command c[SQL_LISTEN_MAX_COMMANDS];

	for (size_t s = 0; s < sizeof(spellings) / sizeof(spellings[0]); s++) {
		for (int pad = 0; pad < 14; pad++) {
			char sql[64];
			int n = snprintf(sql, sizeof(sql), "%*s%s chan%s", pad, "", spellings[s], pad % 2 ? ";" : "");

			cr_assert_eq(sql_listen_parse(sql, (size_t)n, c, SQL_LISTEN_MAX_COMMANDS), 1, "[%s]", sql);
			cr_assert_str_eq(c[0].channel, "chan", "[%s]", sql);
			cr_assert_eq(c[0].kind, spellings[s][0] == 'U' || spellings[s][0] == 'u' ? SQL_UNLISTEN : SQL_LISTEN,
				     "[%s]", sql);
			/* After another statement, the channel the last bytes of the text: found there too. */
			n = snprintf(sql, sizeof(sql), "SELECT 1;%*s%s c", pad, "", spellings[s]);
			cr_assert_eq(sql_listen_find(sql, (size_t)n, c, SQL_LISTEN_MAX_COMMANDS), 1, "[%s]", sql);
			cr_assert_str_eq(c[0].channel, "c", "[%s]", sql);
		}
	}
}

Test(listen_prefilter, texts_without_it_give_nothing)
{
	struct sql_listen_command c[SQL_LISTEN_MAX_COMMANDS];
	static const char *const texts[] = {
		"SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
		"LISTE chan", "ISTEN chan", "L1STEN chan", "",
		"SELECT 'listen'", /* the word, but in a string: lexed, and still no command */
	};

	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		cr_assert_eq(sql_listen_parse(texts[i], strlen(texts[i]), c, SQL_LISTEN_MAX_COMMANDS), 0, "[%s]",
			     texts[i]);
		cr_assert_eq(sql_listen_find(texts[i], strlen(texts[i]), c, SQL_LISTEN_MAX_COMMANDS), 0, "[%s]",
			     texts[i]);
	}
}
