/*
 * strmap.h: a string-keyed hash map with chaining, plus an optional
 * least-recently-used order. It holds a client's prepared statements and the
 * set of statements each backend has prepared. An empty map allocates
 * nothing, so idle clients stay small.
 */
#ifndef PGMUX_STRMAP_H
#define PGMUX_STRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "list.h"

struct strmap_entry {
	struct strmap_entry *next; /* bucket chain */
	struct list_node lru;      /* most recently used first */
	uint64_t hash;
	void *value;
	char key[]; /* NUL-terminated */
};

struct strmap {
	struct strmap_entry **buckets;
	uint32_t n_buckets; /* a power of two, or 0 before the first insert */
	uint32_t count;     /* every map is bounded far below 2^31 entries (by its owner's limit) */
	struct list_node lru;
};

void strmap_init(struct strmap *m);

/*
 * An empty map for readers of a map that is made on first use (NULL until
 * then): find and iterate on it, never insert, delete or clear.
 */
extern const struct strmap strmap_empty;

/* Free every entry; free_value (may be NULL) is called on each value. */
void strmap_clear(struct strmap *m, void (*free_value)(void *));

struct strmap_entry *strmap_find(const struct strmap *m, const char *key);

/* Insert key (which must not be present) and make it the most recent. */
struct strmap_entry *strmap_insert(struct strmap *m, const char *key, void *value);

/* Unlink and free e; returns its value. */
void *strmap_delete(struct strmap *m, struct strmap_entry *e);

/* Mark e as just used. */
void strmap_touch(struct strmap *m, struct strmap_entry *e);

/* The least recently used entry, or NULL. */
struct strmap_entry *strmap_oldest(const struct strmap *m);

uint64_t strmap_hash(const char *key);

#endif
