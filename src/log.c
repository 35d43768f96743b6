/*
 * log.c: the logging backend behind log.h. Each line is formatted into a
 * stack buffer with a timestamp and the thread's name, then written with a
 * single write() so that lines from several workers never interleave.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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

void log_write(int level, const char *fmt, ...)
{
	char line[2048];
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
	n = vsnprintf(line + len, sizeof(line) - len - 1, fmt, ap);
	va_end(ap);
	if (n > 0)
		len += (size_t)n < sizeof(line) - len - 1 ? (size_t)n : sizeof(line) - len - 2;
	line[len++] = '\n';
	/* A short write to a log is not worth retrying in a loop; the line is best effort. */
	if (write(__atomic_load_n(&log_fd, __ATOMIC_ACQUIRE), line, len) < 0)
		(void)0;
	errno = saved_errno;
}
