/*
 * params.c: parameter maps (see params.h). Names are folded to lower case
 * because PostgreSQL's parameter names are case-insensitive and clients
 * spell them both ways ("DateStyle", "datestyle").
 */
#include "params.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

/*
 * PostgreSQL 15 reports these and a session may change them. search_path is
 * reported only from PostgreSQL 18 on, so SET search_path pins (its value
 * given at startup is applied like any other startup parameter).
 */
const char *const params_carried_names[] = {
	"application_name", "client_encoding", "datestyle", "intervalstyle",
	"timezone", "standard_conforming_strings", NULL,
};
_Static_assert(sizeof(params_carried_names) / sizeof(params_carried_names[0]) == PARAMS_N_CARRIED + 1,
	       "PARAMS_N_CARRIED must match params_carried_names");

static void lower_copy(char *dst, size_t size, const char *src)
{
	size_t i;

	for (i = 0; i + 1 < size && src[i]; i++)
		dst[i] = (char)tolower((unsigned char)src[i]);
	dst[i] = '\0';
}

void params_put(struct strmap *m, const char *name, const char *value)
{
	char key[128];
	struct strmap_entry *e;

	lower_copy(key, sizeof(key), name);
	e = strmap_find(m, key);
	if (e) {
		free(e->value);
		e->value = xstrdup(value);
		return;
	}
	strmap_insert(m, key, xstrdup(value));
}

const char *params_get(const struct strmap *m, const char *name)
{
	char key[128];
	struct strmap_entry *e;

	lower_copy(key, sizeof(key), name);
	e = strmap_find(m, key);
	return e ? e->value : NULL;
}

void params_clear(struct strmap *m)
{
	strmap_clear(m, free);
}

static uint64_t entry_hash(const char *name, const char *value)
{
	uint64_t h = 1469598103934665603ull;

	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ (unsigned char)tolower(*p)) * 1099511628211ull;
	h = (h ^ '=') * 1099511628211ull;
	for (const unsigned char *p = (const unsigned char *)value; *p; p++)
		h = (h ^ *p) * 1099511628211ull;
	/* Mix so that summing entries does not cancel out. */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	return h;
}

uint64_t params_fingerprint(const char *(*get)(const char *name, void *arg), void *arg, const struct strmap *extra)
{
	uint64_t fp = 0;
	struct list_node *pos;

	for (int i = 0; params_carried_names[i]; i++) {
		const char *v = get(params_carried_names[i], arg);

		if (v)
			fp += entry_hash(params_carried_names[i], v);
	}
	/* The extra entries are told apart from carried ones by a tag. */
	list_for_each(pos, &extra->lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

		fp += entry_hash(e->key, e->value) * 3 + 1;
	}
	return fp;
}

int params_carried_index(const char *name)
{
	for (int i = 0; params_carried_names[i]; i++)
		if (strcasecmp(name, params_carried_names[i]) == 0)
			return i;
	return -1;
}
