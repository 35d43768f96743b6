/*
 * log.c: the logging backend behind log.h. Each line is formatted into a
 * stack buffer with a timestamp and the thread's name, as text or as one JSON
 * object (log_format), then written with a single write() so that lines from
 * several workers never interleave; with syslog on, it goes to syslog(3) too.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

int log_current_level = LOG_LEVEL_INFO;

/* STDERR_FILENO, or a descriptor of our own for the logfile; atomic (see log_open). */
static int log_fd = STDERR_FILENO;

/* enum log_format and whether lines go to syslog too: set by log_configure(), read with relaxed loads. */
static int log_format_now = LOG_FORMAT_TEXT;
static bool log_syslog_on;

const char *const log_format_names[] = { "text", "json", NULL };
const char *const log_facility_names[] = { "daemon", "user", "auth", "authpriv", "local0", "local1", "local2",
					   "local3", "local4", "local5", "local6", "local7", NULL };
static const int facility_codes[] = { LOG_DAEMON, LOG_USER, LOG_AUTH, LOG_AUTHPRIV, LOG_LOCAL0, LOG_LOCAL1,
				       LOG_LOCAL2, LOG_LOCAL3, LOG_LOCAL4, LOG_LOCAL5, LOG_LOCAL6, LOG_LOCAL7 };
static const int syslog_priorities[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

/*
 * openlog() keeps the ident pointer it is given, and a thread may be inside
 * syslog() while the main thread changes it: the new ident goes into the
 * other of two buffers, so the one in use is never written to.
 */
static char syslog_idents[2][64];
static int syslog_ident_slot = -1;
static int syslog_facility_open = -1;

void log_configure(int format, bool use_syslog, int facility, const char *ident)
{
	int code = facility_codes[facility < 0 || facility > 11 ? 0 : facility];

	__atomic_store_n(&log_format_now, format, __ATOMIC_RELAXED);
	if (!use_syslog) {
		__atomic_store_n(&log_syslog_on, false, __ATOMIC_RELAXED);
		return;
	}
	if (syslog_ident_slot < 0 || strncmp(syslog_idents[syslog_ident_slot], ident, 63) != 0 ||
	    syslog_facility_open != code) {
		int slot = syslog_ident_slot < 0 ? 0 : 1 - syslog_ident_slot;

		snprintf(syslog_idents[slot], sizeof(syslog_idents[slot]), "%s", ident);
		openlog(syslog_idents[slot], LOG_PID | LOG_NDELAY, code);
		syslog_ident_slot = slot;
		syslog_facility_open = code;
	}
	__atomic_store_n(&log_syslog_on, true, __ATOMIC_RELAXED);
}

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

static const char hex_digits[] = "0123456789abcdef";

/*
 * How one character of the input is written out: into piece (at most 8
 * bytes), returning its length; *taken is how many input bytes it stands for.
 */
typedef size_t (*escape_piece_fn)(const unsigned char *in, size_t left, char *piece, size_t *taken);

/*
 * Text from clients (user and database names, application_name, SQL) reaches
 * log lines; a newline in it would let a client write a line of its own that
 * looks like pgmux's. So every message is escaped on its way out: control
 * characters become \\n, \\r, \\t or \\xNN and a backslash is doubled.
 */
static size_t text_piece(const unsigned char *in, size_t left, char *piece, size_t *taken)
{
	unsigned char ch = in[0];

	*taken = 1;
	if (ch == '\n' || ch == '\r' || ch == '\t' || ch == '\\') {
		piece[0] = '\\';
		piece[1] = ch == '\n' ? 'n' : ch == '\r' ? 'r' : ch == '\t' ? 't' : '\\';
		return 2;
	}
	if (ch < 0x20 || ch == 0x7f) {
		piece[0] = '\\';
		piece[1] = 'x';
		piece[2] = hex_digits[ch >> 4];
		piece[3] = hex_digits[ch & 0xf];
		return 4;
	}
	piece[0] = (char)ch;
	return 1;
}

/*
 * The inside of a JSON string (RFC 8259): quote, backslash and control
 * characters escaped, and valid UTF-8 whatever the input: a byte that does
 * not start or continue a well-formed UTF-8 character (RFC 3629: no
 * overlong forms, no surrogates) becomes U+FFFD.
 */
static size_t json_piece(const unsigned char *in, size_t left, char *piece, size_t *taken)
{
	unsigned char low = 0x80, high = 0xbf;
	size_t need = 0;

	*taken = 1;
	if (in[0] == '"' || in[0] == '\\' || in[0] == '\n' || in[0] == '\r' || in[0] == '\t') {
		piece[0] = '\\';
		piece[1] = in[0] == '\n' ? 'n' : in[0] == '\r' ? 'r' : in[0] == '\t' ? 't' : (char)in[0];
		return 2;
	}
	if (in[0] < 0x20 || in[0] == 0x7f) {
		memcpy(piece, "\\u00", 4);
		piece[4] = hex_digits[in[0] >> 4];
		piece[5] = hex_digits[in[0] & 0xf];
		return 6;
	}
	if (in[0] < 0x80) {
		piece[0] = (char)in[0];
		return 1;
	}
	/* The lead byte says the length; the second byte's range excludes overlong forms and surrogates. */
	if (in[0] >= 0xc2 && in[0] <= 0xdf)
		need = 2;
	else if (in[0] >= 0xe0 && in[0] <= 0xef)
		need = 3, low = in[0] == 0xe0 ? 0xa0 : 0x80, high = in[0] == 0xed ? 0x9f : 0xbf;
	else if (in[0] >= 0xf0 && in[0] <= 0xf4)
		need = 4, low = in[0] == 0xf0 ? 0x90 : 0x80, high = in[0] == 0xf4 ? 0x8f : 0xbf;
	if (need == 0 || need > left || in[1] < low || in[1] > high || (need > 2 && (in[2] < 0x80 || in[2] > 0xbf)) ||
	    (need > 3 && (in[3] < 0x80 || in[3] > 0xbf))) {
		memcpy(piece, "\\ufffd", 6);
		return 6;
	}
	memcpy(piece, in, need);
	*taken = need;
	return need;
}

/*
 * Copy in to out, each character as piece_of writes it. The copy never
 * splits an escape or a character, and ends in "..." when it was cut, or
 * when the text it was given had already been cut (more_follows).
 */
static size_t escape_with(escape_piece_fn piece_of, const char *in, size_t in_len, bool more_follows, char *out,
			  size_t out_size)
{
	size_t used = 0, mark = 0; /* mark: the longest copy that leaves room for "..." */
	bool cut = more_follows;

	if (out_size == 0)
		return 0;
	for (size_t i = 0; i < in_len;) {
		char piece[8];
		size_t taken, piece_len = piece_of((const unsigned char *)in + i, in_len - i, piece, &taken);

		if (used + piece_len + 1 > out_size) {
			cut = true;
			break;
		}
		memcpy(out + used, piece, piece_len);
		used += piece_len;
		i += taken;
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

static size_t escape_into(const char *in, size_t in_len, bool more_follows, char *out, size_t out_size)
{
	return escape_with(text_piece, in, in_len, more_follows, out, out_size);
}

static size_t json_escape_into(const char *in, size_t in_len, bool more_follows, char *out, size_t out_size)
{
	return escape_with(json_piece, in, in_len, more_follows, out, out_size);
}

size_t log_escape(const char *in, char *out, size_t out_size)
{
	size_t in_len = strlen(in);

	/* libpq's error messages end with a newline, which says nothing. */
	while (in_len > 0 && (in[in_len - 1] == '\n' || in[in_len - 1] == '\r'))
		in_len--;
	return escape_into(in, in_len, false, out, out_size);
}

size_t log_json_escape(const char *in, size_t in_len, char *out, size_t out_size)
{
	return json_escape_into(in, in_len, false, out, out_size);
}

/* Append to line (size bytes, len used): "text". Returns the new length; text is cut to fit. */
static size_t put_text(char *line, size_t len, size_t size, const char *text)
{
	size_t n = strlen(text);

	if (len + n >= size)
		n = len < size ? size - len - 1 : 0;
	memcpy(line + len, text, n);
	return len + n;
}

/* Append ,"key":"value" with value JSON-escaped (at most max_in bytes of it) to line. */
static size_t put_json_string(char *line, size_t len, size_t size, const char *key, const char *value,
			      size_t max_in)
{
	size_t value_len = strlen(value);

	len = put_text(line, len, size, ",\"");
	len = put_text(line, len, size, key);
	len = put_text(line, len, size, "\":\"");
	if (len + 2 < size)
		len += json_escape_into(value, value_len < max_in ? value_len : max_in, value_len > max_in, line + len,
					size - len - 2);
	return put_text(line, len, size, "\"");
}

static size_t put_json_number(char *line, size_t len, size_t size, const char *key, unsigned long long value)
{
	char number[64];

	snprintf(number, sizeof(number), ",\"%s\":%llu", key, value);
	return put_text(line, len, size, number);
}

/* The keys of the fields that are set, each with a leading comma, into tail. */
static size_t json_fields(const struct log_fields *f, char *tail, size_t size)
{
	size_t len = 0;

	tail[0] = '\0';
	if (f == NULL)
		return 0;
	if (f->subject == LOG_SUBJECT_CLIENT)
		len = put_json_number(tail, len, size, "client_id", f->id);
	else if (f->subject == LOG_SUBJECT_SERVER)
		len = put_json_number(tail, len, size, "server_id", f->id);
	if (f->user)
		len = put_json_string(tail, len, size, "user", f->user, 63);
	if (f->database)
		len = put_json_string(tail, len, size, "database", f->database, 63);
	if (f->remote)
		len = put_json_string(tail, len, size, "remote", f->remote, 128);
	if (f->server_host) {
		char server[320];

		snprintf(server, sizeof(server), "%s:%d", f->server_host, f->server_port);
		len = put_json_string(tail, len, size, "server", server, sizeof(server));
	}
	if (f->backend_pid)
		len = put_json_number(tail, len, size, "backend_pid", (unsigned long long)f->backend_pid);
	if (f->instance)
		len = put_json_string(tail, len, size, "instance", f->instance, 128);
	if (f->sqlstate)
		len = put_json_string(tail, len, size, "sqlstate", f->sqlstate, 5);
	if (f->reason)
		len = put_json_string(tail, len, size, "reason", f->reason, 512);
	tail[len] = '\0';
	return len;
}

/* The text mode's prefix of a client's or server's line, as log_client()/log_server() always wrote it. */
static size_t text_prefix(const struct log_fields *f, char *out, size_t size)
{
	int n = 0;

	if (f == NULL || f->subject == LOG_SUBJECT_NONE)
		return 0;
	if (f->subject == LOG_SUBJECT_CLIENT)
		n = snprintf(out, size, "C-%llu " LOG_NAME "@" LOG_NAME " %s: ", f->id, f->user ? f->user : "-",
			     f->database ? f->database : "-", f->remote ? f->remote : "");
	else
		n = snprintf(out, size, "S-%llu " LOG_NAME "@" LOG_NAME " %s:%d pid=%d: ", f->id,
			     f->user ? f->user : "-", f->database ? f->database : "-",
			     f->server_host ? f->server_host : "-", f->server_port, f->backend_pid);
	return n < 0 ? 0 : (size_t)n >= size ? size - 1 : (size_t)n;
}

static void log_vwrite(int level, const struct log_fields *f, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

static void log_vwrite(int level, const struct log_fields *f, const char *fmt, va_list ap)
{
	char line[8192], message[2048], tail[2048];
	struct timeval tv;
	struct tm tm;
	char thread_name[16] = "";
	const char *tag = level_tags[level < 0 ? 0 : level > 3 ? 3 : level];
	size_t len, message_len, body_at;
	bool json = __atomic_load_n(&log_format_now, __ATOMIC_RELAXED) == LOG_FORMAT_JSON;
	bool cut = false;
	int n;

	gettimeofday(&tv, NULL);
	pthread_getname_np(pthread_self(), thread_name, sizeof(thread_name));
	/* The raw message: in text mode, the subject's prefix first, escaped with the rest as it always was. */
	message_len = json ? 0 : text_prefix(f, message, sizeof(message));
	n = vsnprintf(message + message_len, sizeof(message) - message_len, fmt, ap);
	if (n >= (int)(sizeof(message) - message_len)) {
		cut = true;
		message_len = sizeof(message) - 1;
	} else if (n > 0) {
		message_len += (size_t)n;
	}
	/* libpq's error messages end with a newline, which says nothing. */
	while (!cut && message_len > 0 && (message[message_len - 1] == '\n' || message[message_len - 1] == '\r'))
		message_len--;

	if (json) {
		size_t tail_len = json_fields(f, tail, sizeof(tail));

		gmtime_r(&tv.tv_sec, &tm);
		len = strftime(line, sizeof(line), "{\"ts\":\"%Y-%m-%dT%H:%M:%S", &tm);
		n = snprintf(line + len, sizeof(line) - len, ".%06dZ\",\"level\":\"%s\",\"pid\":%d,\"thread\":\"",
			     (int)tv.tv_usec, log_level_name(level < 0 ? 0 : level > 3 ? 3 : level), (int)getpid());
		if (n > 0)
			len += (size_t)n;
		len += json_escape_into(thread_name, strlen(thread_name), false, line + len, 64);
		len = put_text(line, len, sizeof(line), "\",\"msg\":\"");
		body_at = len;
		/* Room for the fields, the closing quote and brace, and the newline. */
		len += json_escape_into(message, message_len, cut, line + len, sizeof(line) - len - tail_len - 4);
		line[len++] = '"';
		memcpy(line + len, tail, tail_len);
		len += tail_len;
		line[len++] = '}';
	} else {
		localtime_r(&tv.tv_sec, &tm);
		len = strftime(line, sizeof(line), "%Y-%m-%d %H:%M:%S", &tm);
		n = snprintf(line + len, sizeof(line) - len, ".%03d [%d] %s %s: ", (int)(tv.tv_usec / 1000),
			     (int)getpid(), thread_name, tag);
		if (n > 0)
			len += (size_t)n;
		body_at = len;
		/* Bounded as it always was: the escaped message fits a 2 kB line. */
		len += escape_into(message, message_len, cut, line + len, 2048 - len - 1);
	}
	if (__atomic_load_n(&log_syslog_on, __ATOMIC_RELAXED)) {
		line[len] = '\0';
		/* syslog stamps the time and the pid itself; the JSON object goes whole. */
		if (json)
			syslog(syslog_priorities[level < 0 ? 0 : level > 3 ? 3 : level], "%s", line);
		else
			syslog(syslog_priorities[level < 0 ? 0 : level > 3 ? 3 : level], "%s %s: %s", thread_name, tag,
			       line + body_at);
	}
	line[len++] = '\n';
	/* A short write to a log is not worth retrying in a loop; the line is best effort. */
	if (write(__atomic_load_n(&log_fd, __ATOMIC_ACQUIRE), line, len) < 0)
		(void)0;
}

void log_write(int level, const char *fmt, ...)
{
	int saved_errno = errno;
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(level, NULL, fmt, ap);
	va_end(ap);
	errno = saved_errno;
}

void log_write_fields(int level, const struct log_fields *fields, const char *fmt, ...)
{
	int saved_errno = errno;
	va_list ap;

	va_start(ap, fmt);
	log_vwrite(level, fields, fmt, ap);
	va_end(ap);
	errno = saved_errno;
}
