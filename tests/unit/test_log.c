/*
 * test_log.c: unit tests for log.c: what a client writes into a name or a
 * query must not be able to start a log line of its own, and a message is
 * bounded by the line buffer, cut visibly.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "log.h"

Test(log, escape_turns_control_characters_into_text)
{
	char out[128];
	size_t n = log_escape("a\nb\rc\td\\e\x01" "f\x7fg", out, sizeof(out));

	cr_assert_str_eq(out, "a\\nb\\rc\\td\\\\e\\x01f\\x7fg");
	cr_assert_eq(n, strlen(out));
}

Test(log, escape_drops_a_trailing_newline)
{
	char out[64];

	log_escape("server closed the connection\n", out, sizeof(out));
	cr_assert_str_eq(out, "server closed the connection");
}

Test(log, escape_cuts_long_text_visibly_and_never_splits_an_escape)
{
	char out[12];
	size_t n = log_escape("abcdef\n\n\n\n\nz", out, sizeof(out));

	/* "abcdef\n" is 8 bytes; a further "\n" would leave no room for "...". */
	cr_assert_str_eq(out, "abcdef\\n...");
	cr_assert_eq(n, 11);
	cr_assert_lt(n, sizeof(out));
	log_escape("abc", out, 4);
	cr_assert_str_eq(out, "abc", "text that fits exactly is not cut");
}

/* The whole path: a forged admin line in a user name stays on the line it came in. */
Test(log, a_newline_in_a_logged_name_cannot_forge_a_line)
{
	char path[] = "/tmp/pgmux-test-log.XXXXXX";
	int fd = mkstemp(path);
	char text[4096];
	ssize_t len;
	int lines = 0;
	const char *user = "mallory\n2026-01-01 00:00:00.000 [1] main LOG: admin console: SHUTDOWN by admin";

	cr_assert_geq(fd, 0);
	close(fd);
	cr_assert_eq(log_open(path), 0);
	log_set_level(LOG_LEVEL_INFO);
	log_info("C-1 " LOG_NAME "@" LOG_NAME " 127.0.0.1:5: closing during startup: %s", user, "db\r\n", "bye");
	log_close();
	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0);
	len = read(fd, text, sizeof(text) - 1);
	close(fd);
	unlink(path);
	cr_assert_gt(len, 0);
	text[len] = '\0';
	for (ssize_t i = 0; i < len; i++)
		lines += text[i] == '\n';
	cr_assert_eq(lines, 1, "one message, one line: %s", text);
	cr_assert_not_null(strstr(text, "mallory\\n2026-01-01"), "%s", text);
	cr_assert_not_null(strstr(text, "@db\\r\\n 127.0.0.1"), "%s", text);
	/* LOG_NAME keeps 63 bytes of a name: the forged text is cut short too. */
	cr_assert_null(strstr(text, "SHUTDOWN by admin"), "%s", text);
}

Test(log, a_long_message_stays_one_bounded_line)
{
	char path[] = "/tmp/pgmux-test-log.XXXXXX";
	int fd = mkstemp(path);
	char *big = malloc(100000);
	char text[8192];
	ssize_t len;

	cr_assert_geq(fd, 0);
	close(fd);
	memset(big, '\n', 99999);
	big[99999] = '\0';
	big[0] = 'x';
	big[99998] = 'y';
	cr_assert_eq(log_open(path), 0);
	log_info("query: %s", big);
	log_close();
	fd = open(path, O_RDONLY);
	len = read(fd, text, sizeof(text) - 1);
	close(fd);
	unlink(path);
	free(big);
	cr_assert_gt(len, 0);
	cr_assert_leq(len, 2048);
	text[len] = '\0';
	cr_assert_eq(strchr(text, '\n'), text + len - 1, "only the final newline");
	cr_assert_not_null(strstr(text, "...\n"), "a cut message says so");
}
