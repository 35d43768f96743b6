/*
 * strmap.c: string-keyed hash map (see strmap.h). FNV-1a hashing; the table
 * doubles when it holds more entries than buckets.
 */
#include "strmap.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

#define STRMAP_INITIAL_BUCKETS 16

const struct strmap strmap_empty = {
	.lru = {(struct list_node *)&strmap_empty.lru, (struct list_node *)&strmap_empty.lru},
};

void strmap_init(struct strmap *m)
{
	m->buckets = NULL;
	m->n_buckets = 0;
	m->count = 0;
	list_init(&m->lru);
}

uint64_t strmap_hash(const char *key)
{
	uint64_t h = 14695981039346656037ull;

	for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
		h ^= *p;
		h *= 1099511628211ull;
	}
	return h;
}

void strmap_clear(struct strmap *m, void (*free_value)(void *))
{
	for (size_t i = 0; i < m->n_buckets; i++) {
		struct strmap_entry *e = m->buckets[i];

		while (e) {
			struct strmap_entry *next = e->next;

			if (free_value)
				free_value(e->value);
			free(e);
			e = next;
		}
	}
	free(m->buckets);
	strmap_init(m);
}

struct strmap_entry *strmap_find(const struct strmap *m, const char *key)
{
	uint64_t h;

	if (m->count == 0)
		return NULL;
	h = strmap_hash(key);
	for (struct strmap_entry *e = m->buckets[h & (m->n_buckets - 1)]; e; e = e->next)
		if (e->hash == h && strcmp(e->key, key) == 0)
			return e;
	return NULL;
}

static void strmap_grow(struct strmap *m)
{
	uint32_t n = m->n_buckets ? m->n_buckets * 2 : STRMAP_INITIAL_BUCKETS;
	struct strmap_entry **buckets = xcalloc(n, sizeof(*buckets));

	for (uint32_t i = 0; i < m->n_buckets; i++) {
		struct strmap_entry *e = m->buckets[i];

		while (e) {
			struct strmap_entry *next = e->next;
			size_t b = e->hash & (n - 1);

			e->next = buckets[b];
			buckets[b] = e;
			e = next;
		}
	}
	free(m->buckets);
	m->buckets = buckets;
	m->n_buckets = n;
}

struct strmap_entry *strmap_insert(struct strmap *m, const char *key, void *value)
{
	size_t len = strlen(key);
	struct strmap_entry *e = xmalloc(sizeof(*e) + len + 1);
	size_t b;

	if (m->count + 1 > m->n_buckets)
		strmap_grow(m);
	memcpy(e->key, key, len + 1);
	e->hash = strmap_hash(key);
	e->value = value;
	b = e->hash & (m->n_buckets - 1);
	e->next = m->buckets[b];
	m->buckets[b] = e;
	list_prepend(&m->lru, &e->lru);
	m->count++;
	return e;
}

void *strmap_delete(struct strmap *m, struct strmap_entry *e)
{
	struct strmap_entry **pp = &m->buckets[e->hash & (m->n_buckets - 1)];
	void *value = e->value;

	while (*pp != e)
		pp = &(*pp)->next;
	*pp = e->next;
	list_del(&e->lru);
	m->count--;
	free(e);
	return value;
}

void strmap_touch(struct strmap *m, struct strmap_entry *e)
{
	list_del(&e->lru);
	list_prepend(&m->lru, &e->lru);
}

struct strmap_entry *strmap_oldest(const struct strmap *m)
{
	return list_empty(&m->lru) ? NULL : list_entry(m->lru.prev, struct strmap_entry, lru);
}
