/*
 * log.h: leveled logging for pgmux. The macros check the level before any
 * formatting happens, so disabled debug lines cost one comparison. Lines go
 * to stderr or the configured logfile, one write() per line, from any thread.
 * Never pass a password, a SCRAM secret or query text with values to these.
 */
#ifndef PGMUX_LOG_H
#define PGMUX_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level {
	LOG_LEVEL_ERROR = 0,
	LOG_LEVEL_WARNING = 1,
	LOG_LEVEL_INFO = 2,
	LOG_LEVEL_DEBUG = 3,
};

/* Written by the main thread (start-up, reload), read by every thread: relaxed atomics. */
extern int log_current_level;

static inline int log_level_now(void)
{
	return __atomic_load_n(&log_current_level, __ATOMIC_RELAXED);
}

void log_set_level(int level);

/* Parse "error" | "warning" | "info" | "debug"; returns -1 if unknown. */
int log_level_from_name(const char *name);
const char *log_level_name(int level);

/*
 * Open (or reopen, after a reload or log rotation) the log file; NULL or ""
 * means stderr. Main thread only. Other threads may be writing meanwhile: the
 * descriptor they use is never closed while pgmux runs, only pointed at the
 * new file (dup2), so a line goes to the old file or the new one and never to
 * a descriptor number that a new socket has taken over.
 */
int log_open(const char *path);
void log_close(void);

/*
 * The conversion for a name a client chose (user, database) in a log line's
 * prefix: PostgreSQL keeps 63 bytes of a name, and so does the log.
 */
#define LOG_NAME "%.63s"

/*
 * Copy in to out (out_size bytes, NUL included) with control characters
 * escaped (\n, \r, \t, \xNN) and backslashes doubled, so that the text
 * cannot start a line of its own; a trailing newline is dropped; cut with
 * "..." when it does not fit.
 * Returns the length written. log_write() passes every message through it.
 */
size_t log_escape(const char *in, char *out, size_t out_size);

void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_at(level, ...) \
	do { \
		if ((level) <= log_level_now()) \
			log_write((level), __VA_ARGS__); \
	} while (0)

#define log_error(...) log_at(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_at(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...) log_at(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
