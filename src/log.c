/*
 * log.c: the logging backend behind log.h. Each line is formatted into a
 * stack buffer with a timestamp and the thread's name, then written with a
 * single write() so that lines from several workers never interleave.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int log_current_level = LOG_LEVEL_INFO;

/* STDERR_FILENO, or a descriptor of our own for the logfile; atomic (see log_open). */
static int log_fd = STDERR_FILENO;

void log_set_level(int level)
{
	__atomic_store_n(&log_current_level, level, __ATOMIC_RELAXED);
}

static const char *const level_names[] = { "error", "warning", "info", "debug" };
static const char *const level_tags[] = { "ERROR", "WARNING", "LOG", "DEBUG" };

int log_level_from_name(const char *name)
{
	for (int i = 0; i < (int)(sizeof(level_names) / sizeof(level_names[0])); i++)
		if (strcasecmp(name, level_names[i]) == 0)
			return i;
	return -1;
}

const char *log_level_name(int level)
{
	if (level < 0 || level > LOG_LEVEL_DEBUG)
		return "unknown";
	return level_names[level];
}

int log_open(const char *path)
{
	int fd, cur = __atomic_load_n(&log_fd, __ATOMIC_RELAXED);

	if (path == NULL || path[0] == '\0') {
		/* Our own descriptor now writes where stderr does. */
		if (cur != STDERR_FILENO && dup2(STDERR_FILENO, cur) < 0)
			return -1;
		return 0;
	}
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		return -1;
	if (cur == STDERR_FILENO) {
		__atomic_store_n(&log_fd, fd, __ATOMIC_RELEASE);
		return 0;
	}
	/* dup2 swaps the file under cur in one step; dup3 keeps O_CLOEXEC. */
	if (dup3(fd, cur, O_CLOEXEC) < 0) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	close(fd);
	return 0;
}

/* At exit, once no other thread logs. */
void log_close(void)
{
	int fd = __atomic_exchange_n(&log_fd, STDERR_FILENO, __ATOMIC_ACQ_REL);

	if (fd != STDERR_FILENO)
		close(fd);
}

/*
 * Text from clients (user and database names, application_name, SQL) reaches
 * log lines; a newline in it would let a client write a line of its own that
 * looks like pgmux's. So every message is escaped on its way out: control
 * characters become \\n, \\r, \\t or \\xNN and a backslash is doubled.
 * The copy never splits an escape, and ends in "..." when it was cut, or
 * when the text it was given had already been cut (more_follows).
 */
static size_t escape_into(const char *in, size_t in_len, bool more_follows, char *out, size_t out_size)
{
	static const char hex[] = "0123456789abcdef";
	size_t used = 0, mark = 0; /* mark: the longest copy that leaves room for "..." */
	bool cut = more_follows;

	if (out_size == 0)
		return 0;
	for (size_t i = 0; i < in_len; i++) {
		unsigned char ch = (unsigned char)in[i];
		char piece[4];
		size_t piece_len = 0;

		if (ch == '\n' || ch == '\r' || ch == '\t' || ch == '\\') {
			piece[piece_len++] = '\\';
			piece[piece_len++] = ch == '\n' ? 'n' : ch == '\r' ? 'r' : ch == '\t' ? 't' : '\\';
		} else if (ch < 0x20 || ch == 0x7f) {
			piece[piece_len++] = '\\';
			piece[piece_len++] = 'x';
			piece[piece_len++] = hex[ch >> 4];
			piece[piece_len++] = hex[ch & 0xf];
		} else {
			piece[piece_len++] = (char)ch;
		}
		if (used + piece_len + 1 > out_size) {
			cut = true;
			break;
		}
		memcpy(out + used, piece, piece_len);
		used += piece_len;
		if (used + 3 + 1 <= out_size)
			mark = used;
	}
	if (cut) {
		if (used + 3 + 1 > out_size)
			used = mark;
		if (used + 3 + 1 <= out_size) {
			memcpy(out + used, "...", 3);
			used += 3;
		}
	}
	out[used] = '\0';
	return used;
}

size_t log_escape(const char *in, char *out, size_t out_size)
{
	size_t in_len = strlen(in);

	/* libpq's error messages end with a newline, which says nothing. */
	while (in_len > 0 && (in[in_len - 1] == '\n' || in[in_len - 1] == '\r'))
		in_len--;
	return escape_into(in, in_len, false, out, out_size);
}

void log_write(int level, const char *fmt, ...)
{
	char line[2048], message[2048];
	struct timeval tv;
	struct tm tm;
	char thread_name[16] = "";
	size_t len;
	int n, saved_errno = errno;
	va_list ap;

	gettimeofday(&tv, NULL);
	localtime_r(&tv.tv_sec, &tm);
	pthread_getname_np(pthread_self(), thread_name, sizeof(thread_name));
	len = strftime(line, sizeof(line), "%Y-%m-%d %H:%M:%S", &tm);
	n = snprintf(line + len, sizeof(line) - len, ".%03d [%d] %s %s: ", (int)(tv.tv_usec / 1000),
		     (int)getpid(), thread_name, level_tags[level < 0 ? 0 : level > 3 ? 3 : level]);
	if (n > 0)
		len += (size_t)n;
	va_start(ap, fmt);
	n = vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(message))
		len += escape_into(message, sizeof(message) - 1, true, line + len, sizeof(line) - len - 1);
	else if (n > 0)
		len += log_escape(message, line + len, sizeof(line) - len - 1);
	line[len++] = '\n';
	/* A short write to a log is not worth retrying in a loop; the line is best effort. */
	if (write(__atomic_load_n(&log_fd, __ATOMIC_ACQUIRE), line, len) < 0)
		(void)0;
	errno = saved_errno;
}
