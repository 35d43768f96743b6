/*
 * sqlscan.h: a small SQL lexer that reads the text of a Query or Parse message
 * and reports what transaction pooling cares about: statements that leave
 * session state behind (so the client must be pinned to its backend) and
 * statements that reset session state (so pgmux can follow them instead).
 */
#ifndef PGMUX_SQLSCAN_H
#define PGMUX_SQLSCAN_H

#include <stdbool.h>
#include <stddef.h>

enum sql_pin_reason {
	SQL_PIN_NONE = 0,
	SQL_PIN_PREPARE,             /* SQL-level PREPARE name AS ... */
	SQL_PIN_EXECUTE,             /* SQL-level EXECUTE name */
	SQL_PIN_DEALLOCATE,          /* DEALLOCATE name (not ALL) */
	SQL_PIN_TEMP_OBJECT,         /* CREATE TEMP ..., SELECT ... INTO TEMP, CREATE ... pg_temp.x */
	SQL_PIN_CURSOR_WITH_HOLD,    /* DECLARE ... CURSOR WITH HOLD */
	SQL_PIN_LISTEN,              /* LISTEN channel */
	SQL_PIN_LOAD,                /* LOAD 'library' */
	SQL_PIN_ADVISORY_LOCK,       /* a call to a session-level pg_[try_]advisory_lock[_shared] */
	SQL_PIN_SET,                 /* SET (not LOCAL) of an untracked parameter, SET ROLE,
	                              * SET SESSION AUTHORIZATION, SET SESSION CHARACTERISTICS,
	                              * set_config(name, value, false), UPDATE pg_settings */
	SQL_PIN_OTHER_SESSION_STATE, /* reserved; sql_scan() does not report it today */
	SQL_PIN_TOO_LONG,            /* reserved for callers that refuse to scan long texts */
};

/* Statements that reset or change session state that pgmux follows instead of pinning. */
#define SQL_EFFECT_DISCARD_ALL         0x01 /* DISCARD ALL */
#define SQL_EFFECT_DEALLOCATE_ALL      0x02 /* DEALLOCATE [PREPARE] ALL */
#define SQL_EFFECT_RESET_ALL           0x04 /* RESET ALL */
#define SQL_EFFECT_SET_TRACKED         0x08 /* SET/RESET/set_config(.., false) of a tracked parameter */
#define SQL_EFFECT_UNLISTEN            0x10 /* UNLISTEN name|* */
#define SQL_EFFECT_TRANSACTION_CONTROL 0x20 /* BEGIN, START, COMMIT, ROLLBACK, END, ABORT,
                                             * SAVEPOINT, RELEASE, PREPARE TRANSACTION (informational) */
#define SQL_EFFECT_SET_SESSION         0x40 /* with SQL_SCAN_CARRY_SETS: SET/RESET/set_config(.., false)
                                             * of an untracked parameter, which then does not pin */
#define SQL_EFFECT_OPAQUE              0x80 /* runs code pgmux cannot read (DO, CALL, a function that is
                                             * not PostgreSQL's own): what it leaves in the session must
                                             * be verified (see sqlnames.h) */
#define SQL_EFFECT_WRITE               0x100 /* INSERT, UPDATE, DELETE, MERGE, COPY or TRUNCATE: may fire
                                              * triggers, column defaults, ... (code no text shows) */
#define SQL_EFFECT_DEFINES_CODE        0x200 /* CREATE or ALTER of a function, procedure, trigger, rule,
                                              * extension or language: what DML may run changes */
#define SQL_EFFECT_LISTEN              0x400 /* LISTEN name (with SQL_SCAN_LISTEN_HELD, instead of a pin) */

/*
 * sql_scan() flags. SQL_SCAN_CARRY_SETS: the caller carries session-level
 * SETs of parameters that are not tracked by reading the session's settings
 * back; such a SET (by name: not SET ROLE or SET SESSION AUTHORIZATION, not
 * set_config() of a name that is not a literal) reports SQL_EFFECT_SET_SESSION
 * instead of pinning, and RESET of one reports it too.
 */
#define SQL_SCAN_CARRY_SETS 0x01
/*
 * SQL_SCAN_LISTEN_HELD: the caller takes over what a LISTEN leaves on the
 * backend once its transaction ends (client_listen_handover.c): LISTEN
 * reports SQL_EFFECT_LISTEN instead of pinning.
 */
#define SQL_SCAN_LISTEN_HELD 0x02

#define SQL_SCAN_MAX_CUSTOM 4

struct sql_scan_result {
	enum sql_pin_reason pin; /* the first pinning cause in text order, or SQL_PIN_NONE */
	char pin_detail[64];     /* what pinned: parameter, statement, cursor, channel, function or
	                          * object name; "" when there is none. Truncated, always terminated. */
	unsigned effects;        /* SQL_EFFECT_* bits of all statements, pinning or not */
	int statements;          /* number of non-empty statements */
	/*
	 * With SQL_SCAN_CARRY_SETS: the custom (dotted) parameters whose SET or
	 * RESET it reported as SQL_EFFECT_SET_SESSION, lower-case. PostgreSQL
	 * does not list those in pg_settings, so the caller must read them by
	 * name. custom_overflow: there were more, or a name too long to hold.
	 */
	char custom[SQL_SCAN_MAX_CUSTOM][64];
	int n_custom;
	bool custom_overflow;
};

/* A fixed English description of a pin reason, for logs and error messages. */
const char *sql_pin_reason_text(enum sql_pin_reason reason);

/*
 * Scan SQL text (not necessarily NUL-terminated; len bytes; a NUL byte ends
 * the text as it would for the server). tracked is a NULL-terminated list of
 * parameter names (case-insensitive) whose SET pgmux can carry, or NULL for
 * none; SET of any other parameter pins (unless flags has
 * SQL_SCAN_CARRY_SETS). Never reads past len, never
 * allocates, never fails: malformed SQL is scanned as far as it goes (an
 * unterminated string, quoted identifier, dollar quote or comment just ends
 * the scan, and the statement in progress is still judged).
 */
void sql_scan(const char *sql, size_t len, const char *const *tracked, unsigned flags, struct sql_scan_result *out);

/*
 * LISTEN and UNLISTEN, which pgmux answers itself with transaction pooling
 * (listen.h): a text made only of LISTEN channel, UNLISTEN channel and
 * UNLISTEN * statements (and empty ones) is split into its commands, the
 * channel names as PostgreSQL resolves them (an unquoted name folds to lower
 * case, a quoted one is taken as it is, "" stands for "). Anything else
 * (another statement, a reserved word as a name, a U&"..." name, a name
 * longer than SQL_LISTEN_NAME_MAX bytes, which PostgreSQL would truncate, a
 * syntax error, more than SQL_LISTEN_MAX_COMMANDS commands) makes it
 * return 0: the text is then the server's to run, as any other.
 */
#define SQL_LISTEN_NAME_MAX 63
#define SQL_LISTEN_MAX_COMMANDS 16

enum sql_listen_kind {
	SQL_LISTEN,         /* LISTEN channel */
	SQL_UNLISTEN,       /* UNLISTEN channel */
	SQL_UNLISTEN_ALL,   /* UNLISTEN * */
};

struct sql_listen_command {
	enum sql_listen_kind kind;
	char channel[SQL_LISTEN_NAME_MAX + 1]; /* "" for UNLISTEN * */
};

/* The commands of a LISTEN/UNLISTEN-only text (len bytes, a NUL ends it), at most max; 0: not one. */
int sql_listen_parse(const char *sql, size_t len, struct sql_listen_command *out, int max);
/*
 * The plain LISTEN and UNLISTEN statements among others in a text (a reset
 * query such as "CLOSE ALL; UNLISTEN *; RESET ALL"), at most max.
 */
int sql_listen_find(const char *sql, size_t len, struct sql_listen_command *out, int max);

#endif
