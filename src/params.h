/*
 * params.h: run-time parameters as pgmux carries them between backends:
 * maps from lower-case parameter name to value, and the list of parameters
 * that PostgreSQL reports with ParameterStatus and a client may change.
 */
#ifndef PGMUX_PARAMS_H
#define PGMUX_PARAMS_H

#include <stdbool.h>
#include <stdint.h>

#include "strmap.h"

/* Set name (any case) to value; the map owns copies. */
void params_put(struct strmap *m, const char *name, const char *value);
const char *params_get(const struct strmap *m, const char *name);
void params_clear(struct strmap *m);

/*
 * A fingerprint of a session state: the carried reported parameters, as
 * get(name, arg) returns them, and every entry of extra. Order-independent
 * for extra; equal states give equal fingerprints, so a backend whose
 * fingerprint matches the client's needs no SET at all.
 */
uint64_t params_fingerprint(const char *(*get)(const char *name, void *arg), void *arg, const struct strmap *extra);

/*
 * The carried parameters: the reported ones a session can change with SET
 * (application_name, client_encoding, DateStyle, IntervalStyle, TimeZone,
 * standard_conforming_strings). pgmux follows their ParameterStatus
 * messages, so SET of them needs no pin. How many there are, and the index
 * of name among them (-1: not carried).
 */
#define PARAMS_N_CARRIED 6
int params_carried_index(const char *name);

/* The carried parameter names, NULL-terminated (for the SQL scanner). */
extern const char *const params_carried_names[];

#endif
