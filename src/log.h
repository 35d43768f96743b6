/*
 * log.h: leveled logging for pgmux. The macros check the level before any
 * formatting happens, so disabled debug lines cost one comparison. Lines go
 * to stderr or the configured logfile, one write() per line, from any thread.
 * Never pass a password, a SCRAM secret or query text with values to these.
 */
#ifndef PGMUX_LOG_H
#define PGMUX_LOG_H

#include <stdarg.h>

enum log_level {
	LOG_LEVEL_ERROR = 0,
	LOG_LEVEL_WARNING = 1,
	LOG_LEVEL_INFO = 2,
	LOG_LEVEL_DEBUG = 3,
};

extern volatile int log_current_level;

/* Parse "error" | "warning" | "info" | "debug"; returns -1 if unknown. */
int log_level_from_name(const char *name);
const char *log_level_name(int level);

/* Open (or reopen, after a reload or log rotation) the log file; NULL or "" means stderr. */
int log_open(const char *path);
void log_close(void);

void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_at(level, ...) \
	do { \
		if ((level) <= log_current_level) \
			log_write((level), __VA_ARGS__); \
	} while (0)

#define log_error(...) log_at(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_at(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...) log_at(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
