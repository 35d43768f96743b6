/*
 * session.h: the session state pgmux carries for a client from backend to
 * backend (transaction pooling): the parameters the client has, the SQL
 * that gives a backend the same ones, the SQL that reads a session's
 * settings back after a transaction that may have changed them, and the
 * reading of its answer. Plain data in and out: no I/O, no struct client or
 * struct server. client.c runs the SQL (server_run_query()) and acts on what
 * comes back.
 */
#ifndef PGMUX_SESSION_H
#define PGMUX_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "iobuf.h"
#include "params.h"
#include "sqlscan.h"
#include "strmap.h"

/* The parameters a session has besides the carried reported ones (most have none). */
struct session_extra {
	struct strmap set;       /* other parameters: from the startup packet (options -c ...), then as the
	                          * session's own SETs left them (read back, see session_settings_sql()) */
	struct strmap startup;   /* set as the startup packet gave it: what RESET goes back to */
};

/* The parameters of one client's session, as pgmux carries them. */
struct session_params {
	char *reported[PARAMS_N_CARRIED]; /* carried reported parameters as the client last saw them (NULL: unset);
	                                   * common values point to shared constants (session.c): never write
	                                   * through these, change them with session_params_set_reported() */
	struct session_extra *extra; /* made on the first such parameter, freed when both maps are empty
	                              * (NULL: none); read them with session_params_set() */
	uint64_t fingerprint;    /* of reported and set, when fingerprint_valid (session_params_fingerprint()) */
	bool fingerprint_valid;
	uint8_t borrowed;        /* bit i: reported[i] points to the startup packet's value, not a copy
	                          * (session_params_keep_startup()) */
};

/* The session's other parameters (extra->set), or an empty map: read only. */
static inline const struct strmap *session_params_set(const struct session_params *p)
{
	return p->extra ? &p->extra->set : &strmap_empty;
}

void session_params_init(struct session_params *p);
void session_params_free(struct session_params *p);

/* Record a carried parameter's value as the client sees it now (ParameterStatus, startup). */
void session_params_set_reported(struct session_params *p, int index, const char *value);

/* Forget a carried parameter's value: the client has none of its own (the server's default goes). */
void session_params_unset_reported(struct session_params *p, int index);

/*
 * A parameter from the startup packet (or its options): a carried reported
 * one is followed through ParameterStatus; any other is set by pgmux on
 * every backend the client uses, and is what RESET goes back to.
 */
void session_params_put_startup(struct session_params *p, const char *name, const char *value);

/*
 * The same for a value that lives as long as p (the client's startup
 * packet): a carried reported one is pointed to, not copied.
 */
void session_params_keep_startup(struct session_params *p, const char *name, const char *value);

/* The fingerprint of the session's parameters (params_fingerprint()), cached until one changes. */
uint64_t session_params_fingerprint(struct session_params *p);

/*
 * The read-back found settings (session_readback_parse()): they are the
 * session's now. A parameter of the startup packet that the session RESET
 * is back at the startup packet's value, which the backend had only as a
 * SET of pgmux's: the client keeps it.
 */
void session_params_adopt(struct session_params *p, const struct strmap *settings);

/* ------------------------------------------------------------ quoting */

/* Append value as a SQL string literal: '' doubles a quote; E'' with doubled backslashes when it has one. */
void session_append_literal(struct iobuf *sql, const char *value);

/* Append "SELECT " (the first) or ", " and pg_catalog.set_config('name', 'value', false); count one more. */
void session_append_set(struct iobuf *sql, int *count, const char *name, const char *value);

/* Append RESET of a (possibly dotted) parameter name, each part a quoted identifier, then "; ". */
void session_append_reset(struct iobuf *sql, const char *name);

/* ----------------------------------------- bringing a backend over */

/* What pgmux knows of a backend's parameters, for session_state_sql(). */
struct session_backend {
	struct strmap *applied;       /* unreported parameters pgmux set there; brought up to date */
	const struct strmap *defaults; /* its reported parameters' values as of its connection */
	const char *(*reported)(const char *name, void *arg); /* a reported parameter's value there now */
	void *reported_arg;
	bool reset_all;   /* code pgmux could not read ran there: RESET ALL first (cleared) */
	bool init_undone; /* a reset undid init_query: run it again (updated) */
	bool applied_changed; /* out: applied changed (its fingerprint is stale) */
};

/*
 * Build the SQL (NUL-terminated) that makes backend b match the session p:
 * RESET ALL if b->reset_all; RESET of each parameter set for an earlier
 * client that p lacks; a reset (or an earlier DISCARD ALL, see init_undone)
 * goes back to the server's defaults and so undoes init_query, which then
 * runs again; then set_config() of the carried parameters that differ and
 * of the parameters p has that b lacks. After init_query runs, every
 * parameter p wants is set, whatever b had before, since init_query may have
 * changed any of them. b->applied is updated to what the SQL leaves.
 * Returns false when b already matches (the SQL is then "SELECT 1").
 */
bool session_state_sql(struct iobuf *sql, const struct session_params *p, struct session_backend *b,
		       const char *init_query);

/* ----------------------------------------------- reading settings back */

/* For a verifying read-back: what the session must still be. */
struct session_verify {
	const char *user;  /* the startup packet's user: SESSION_USER and CURRENT_USER */
	size_t prepared;   /* the prepared statements pgmux made on the backend */
	bool listen_taken_over; /* a LISTEN takeover follows (client_listen_handover.c): it reads what the
	                         * backend listens on itself, so the verification does not */
};

/*
 * Build the query (NUL-terminated) that reads the session's settings back
 * as one JSON object: pg_settings with source "session", plus, by name, the
 * custom (dotted) parameters in set and in custom_pending (those SET or
 * RESET since the last read-back; NULL: none), which pg_settings does not
 * list. With verify, the query first checks the session state pgmux cannot
 * carry and answers with the reason instead when it finds any; it also reads
 * the custom parameters named in the database's own functions.
 */
void session_settings_sql(struct iobuf *sql, const struct strmap *set, const struct strmap *custom_pending,
			  const struct session_verify *verify);

enum session_readback {
	SESSION_READBACK_SETTINGS,  /* a JSON object: the session's settings */
	SESSION_READBACK_REFUSED,   /* the verification found state pgmux cannot carry: the answer says what */
	SESSION_READBACK_MALFORMED, /* no answer, or neither of the above */
};

/*
 * Read the answer to session_settings_sql(). With SESSION_READBACK_SETTINGS,
 * settings holds its unreported parameters (the reported ones follow
 * ParameterStatus; values that are not strings are left out); otherwise
 * settings is untouched.
 */
enum session_readback session_readback_parse(const char *answer, struct strmap *settings);

/*
 * The pin a session gets when its read-back was not SETTINGS: it keeps its
 * backend, as it did before pgmux carried SETs. answer is the reason of a
 * REFUSED one (truncated to fit pin_detail).
 */
void session_readback_pin(enum session_readback outcome, const char *answer, struct sql_scan_result *pin);

#endif
