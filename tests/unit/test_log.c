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

#include <jansson.h>

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

/* ---------------------------------------------------------------- structured lines, JSON */

/* Open a fresh log file, run emit, close it; its whole text (malloc'd). */
static char *logged(void (*emit)(void))
{
	char path[] = "/tmp/pgmux-test-log.XXXXXX";
	int fd = mkstemp(path);
	char *text = calloc(1, 65536);
	ssize_t len;

	cr_assert_geq(fd, 0);
	close(fd);
	cr_assert_eq(log_open(path), 0);
	log_set_level(LOG_LEVEL_DEBUG);
	emit();
	log_close();
	log_configure(LOG_FORMAT_TEXT, false, 0, "pgmux");
	fd = open(path, O_RDONLY);
	len = read(fd, text, 65535);
	close(fd);
	unlink(path);
	cr_assert_gt(len, 0);
	return text;
}

static const struct log_fields client_fields = {
	.subject = LOG_SUBJECT_CLIENT, .id = 7, .user = "app", .database = "shop", .remote = "10.0.0.5:41000",
	.sqlstate = "28P01", .reason = "wrong \"password\"",
};
static const struct log_fields server_fields = {
	.subject = LOG_SUBJECT_SERVER, .id = 3, .user = "app", .database = "shop", .server_host = "db1",
	.server_port = 5432, .backend_pid = 77, .instance = "db1:5432",
};

static void emit_text(void)
{
	log_write_fields(LOG_LEVEL_INFO, &client_fields, "closing: %s", "bye");
	log_write_fields(LOG_LEVEL_INFO, &server_fields, "connected");
	log_write_fields(LOG_LEVEL_INFO, &(struct log_fields){ .subject = LOG_SUBJECT_CLIENT, .id = 8, .remote = "x:1" },
			 "new connection");
}

/* Text mode renders the fields as the log_client()/log_server() prefixes always did, and nothing more. */
Test(log, text_mode_renders_a_client_or_server_as_its_old_prefix)
{
	char *text = logged(emit_text);

	cr_assert_not_null(strstr(text, " LOG: C-7 app@shop 10.0.0.5:41000: closing: bye\n"), "%s", text);
	cr_assert_not_null(strstr(text, " LOG: S-3 app@shop db1:5432 pid=77: connected\n"), "%s", text);
	cr_assert_not_null(strstr(text, " LOG: C-8 -@- x:1: new connection\n"), "%s", text);
	cr_assert_null(strstr(text, "28P01"), "text mode adds no fields: %s", text);
	free(text);
}

static void emit_json(void)
{
	log_configure(LOG_FORMAT_JSON, false, 0, "pgmux");
	log_write_fields(LOG_LEVEL_WARNING, &client_fields, "authentication failed: %s", "bad\n\x01\"\xff\xc3\xa9");
	log_write_fields(LOG_LEVEL_DEBUG, &server_fields, "connected");
	log_info("plain line");
}

/* JSON mode: one object per line that a JSON parser accepts, whatever bytes the message held. */
Test(log, json_mode_writes_one_parseable_object_per_line_with_the_fields)
{
	char *text = logged(emit_json);
	char *save = NULL;
	json_t *line[3];

	for (int i = 0; i < 3; i++) {
		json_error_t error;
		char *l = strtok_r(i ? NULL : text, "\n", &save);

		cr_assert_not_null(l, "line %d missing", i);
		line[i] = json_loads(l, JSON_REJECT_DUPLICATES, &error);
		cr_assert_not_null(line[i], "line %d is not JSON (%s): %s", i, error.text, l);
		cr_assert_eq(strlen(json_string_value(json_object_get(line[i], "ts"))), strlen("2026-12-06T20:24:14.460048Z"));
	}
	cr_assert_null(strtok_r(NULL, "\n", &save), "more than three lines");
	cr_assert_str_eq(json_string_value(json_object_get(line[0], "level")), "warning");
	cr_assert_eq(json_integer_value(json_object_get(line[0], "client_id")), 7);
	cr_assert_str_eq(json_string_value(json_object_get(line[0], "user")), "app");
	cr_assert_str_eq(json_string_value(json_object_get(line[0], "database")), "shop");
	cr_assert_str_eq(json_string_value(json_object_get(line[0], "remote")), "10.0.0.5:41000");
	cr_assert_str_eq(json_string_value(json_object_get(line[0], "sqlstate")), "28P01");
	cr_assert_str_eq(json_string_value(json_object_get(line[0], "reason")), "wrong \"password\"");
	/* The newline and the control byte come back as they were; the stray 0xff becomes U+FFFD; é stays. */
	cr_assert_str_eq(json_string_value(json_object_get(line[0], "msg")),
			 "authentication failed: bad\n\x01\"\xef\xbf\xbd\xc3\xa9");
	cr_assert_str_eq(json_string_value(json_object_get(line[1], "server")), "db1:5432");
	cr_assert_eq(json_integer_value(json_object_get(line[1], "server_id")), 3);
	cr_assert_eq(json_integer_value(json_object_get(line[1], "backend_pid")), 77);
	cr_assert_eq(json_integer_value(json_object_get(line[1], "pid")), getpid(), "pid is pgmux's own");
	cr_assert_str_eq(json_string_value(json_object_get(line[1], "instance")), "db1:5432");
	cr_assert_str_eq(json_string_value(json_object_get(line[2], "msg")), "plain line");
	cr_assert_null(json_object_get(line[2], "client_id"));
	for (int i = 0; i < 3; i++)
		json_decref(line[i]);
	free(text);
}

Test(log, json_escape_never_splits_an_escape_or_a_character)
{
	char out[16];

	log_json_escape("ab\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 15, out, sizeof(out));
	/* "ab\"" is 4 bytes, each é 2; the copy stops where "..." still fits after a whole character. */
	cr_assert_str_eq(out, "ab\\\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9...");
	char wide[32];

	log_json_escape("\xe0\x80\xaf", 3, wide, sizeof(wide));
	cr_assert_str_eq(wide, "\\ufffd\\ufffd\\ufffd", "an overlong form is three bad bytes");
}

static void emit_long_json(void)
{
	static char big[20000];

	memset(big, '\n', sizeof(big) - 1);
	log_configure(LOG_FORMAT_JSON, false, 0, "pgmux");
	log_write_fields(LOG_LEVEL_INFO, &client_fields, "query: %s", big);
}

/* A message longer than the line is cut visibly and the object still closes. */
Test(log, a_long_json_message_is_cut_and_still_parses)
{
	char *text = logged(emit_long_json);
	json_t *o;

	cr_assert_eq(strchr(text, '\n'), text + strlen(text) - 1, "only the final newline");
	o = json_loads(text, 0, NULL);
	cr_assert_not_null(o, "%.200s", text);
	cr_assert_not_null(strstr(json_string_value(json_object_get(o, "msg")), "..."));
	cr_assert_str_eq(json_string_value(json_object_get(o, "reason")), "wrong \"password\"");
	json_decref(o);
	free(text);
}
