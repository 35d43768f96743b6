/*
 * log.h: leveled logging for pgmux. The macros check the level before any
 * formatting happens, so disabled debug lines cost one comparison. Lines go
 * to stderr or the configured logfile, one write() per line, from any thread,
 * as text or JSON (log_format), and to syslog too when configured.
 * Never pass a password, a SCRAM secret or query text with values to these.
 */
#ifndef PGMUX_LOG_H
#define PGMUX_LOG_H

#include <stdarg.h>
#include <stdbool.h>
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

/* log_format: one line of text per message, or one JSON object per line. */
enum log_format {
	LOG_FORMAT_TEXT,
	LOG_FORMAT_JSON,
};

/* For the option table: "text", "json"; and the syslog_facility names, index = enum log_facility. */
extern const char *const log_format_names[];
extern const char *const log_facility_names[];

/*
 * Where lines go besides the log file (or stderr), and how they look. Main
 * thread only (start-up, reload); threads logging meanwhile see the old or
 * the new settings, each line whole. ident is copied.
 */
void log_configure(int format, bool use_syslog, int facility, const char *ident);

/*
 * What a line is about. In text mode a client's or a server's identity is a
 * prefix ("C-7 user@db 10.0.0.5:41000: ", "S-3 user@db host:5432 pid=77: ")
 * and the other fields are only in the message; in JSON mode every field
 * that is set is a key of its own (client_id or server_id, user, database,
 * remote, server, backend_pid, instance, sqlstate, reason). NULL and 0 mean "does
 * not apply".
 */
enum log_subject {
	LOG_SUBJECT_NONE,
	LOG_SUBJECT_CLIENT, /* id is the client's */
	LOG_SUBJECT_SERVER, /* id is the server connection's */
};

struct log_fields {
	enum log_subject subject;
	unsigned long long id;
	const char *user;     /* NULL: not known yet ("-" in text) */
	const char *database;
	const char *remote;   /* the client's address and port */
	const char *server_host;
	int server_port;
	int backend_pid;
	const char *instance; /* a target's instance id */
	const char *sqlstate; /* the SQLSTATE the line reports to a client */
	const char *reason;   /* why something ended (a close, a failed login) */
};

void log_write_fields(int level, const struct log_fields *fields, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_at_fields(level, fields, ...) \
	do { \
		if ((level) <= log_level_now()) \
			log_write_fields((level), (fields), __VA_ARGS__); \
	} while (0)

/* A line about an instance (failover, health): the instance is a field in JSON; the text is unchanged. */
#define log_instance(level, instance_id, ...) \
	do { \
		if ((level) <= log_level_now()) { \
			const struct log_fields log_fields_ = { .instance = (instance_id) }; \
			log_write_fields((level), &log_fields_, __VA_ARGS__); \
		} \
	} while (0)

/*
 * Copy in (in_len bytes) to out as the inside of a JSON string (RFC 8259):
 * quote, backslash and control characters escaped, bytes that are not UTF-8
 * replaced by U+FFFD, so that any JSON parser accepts the result; cut, never
 * inside an escape or a character, with "..." when it does not fit. Returns
 * the length written (out is NUL-terminated).
 */
size_t log_json_escape(const char *in, size_t in_len, char *out, size_t out_size);

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
