/*
 * test_hardening.c: end-to-end tests of issue 17, "hardening the edges":
 * whom pgmux gives server passwords to, what a client can write into the
 * log, running out of file descriptors, who may read /metrics, the client
 * TLS settings and key file checks, and the look-only admin role. Each
 * suite runs a real pgmux (and, where it needs one, a fake server of the
 * test's own) and checks what a client, the log or the fake server sees.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static struct pgmux px;

static void fini_kill_leftovers(void)
{
	h_teardown();
}

/* Read messages from fd until an ErrorResponse; its body (malloc'd), or NULL when none came. */
static char *read_until_error(int fd, size_t *len)
{
	for (int i = 0; i < 30; i++) {
		char type = 0, *body = NULL;
		if (h_raw_read_message(fd, &type, &body, len, 5000) != H_MSG_OK)
			return NULL;
		if (type == 'E')
			return body;
		free(body);
	}
	return NULL;
}

/* ---------------------------------------------------------------- log injection */

TestSuite(log_injection, .fini = fini_kill_leftovers, .timeout = 60);

/*
 * A user name with a newline and a line of pgmux's own log format after it:
 * the log must keep it on the line it came in on, escaped, at every level.
 */
Test(log_injection, a_newline_in_the_user_name_cannot_forge_a_log_line)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	cr_assert(pgmux_start(&px, &o));

	const char *forged = "2026-12-06 12:00:00.000 [1] main LOG: admin console: SHUTDOWN by admin";
	char user[256], app_name[128];
	snprintf(user, sizeof(user), "mallory\n%s", forged);
	snprintf(app_name, sizeof(app_name), "app\r\n%s", forged);
	int fd = h_raw_connect(px.port, 2000);
	cr_assert_geq(fd, 0);
	uint8_t buf[1024];
	const char *params[] = {"user", user, "database", "db\nx", "application_name", app_name, NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 3u << 16, params);
	cr_assert(h_raw_send(fd, buf, len));
	/* pgmux asks for a password (it does not say which users exist); leaving is logged at LOG. */
	char type = 0, *body = NULL;
	size_t blen = 0;
	cr_assert_eq(h_raw_read_message(fd, &type, &body, &blen, 5000), H_MSG_OK);
	cr_assert_eq(type, 'R', "pgmux sent '%c' instead of an authentication request", type);
	free(body);
	close(fd);
	cr_assert(h_file_wait_contains(px.logfile, "mallory\\n2026-12-06", h_scaled_ms(5000)),
		  "the user name is not in the log, escaped");

	char *log = h_read_file(px.logfile);
	for (char *line = log; line && *line;) {
		char *end = strchr(line, '\n');
		if (end)
			*end = '\0';
		cr_expect(strncmp(line, "2026-12-06 12:00:00.000 [1]", 27) != 0, "a forged line: %s", line);
		cr_expect(strchr(line, '\r') == NULL, "a carriage return in a log line: %s", line);
		line = end ? end + 1 : NULL;
	}
	free(log);
	h_stop_expect_clean_exit(&px);
}
