/*
 * test_strmap.c: the string-keyed hash map (growth, deletion, LRU order)
 * and the parameter maps built on it (case folding, the carried list).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "params.h"
#include "strmap.h"

Test(strmap, insert_find_delete_and_grow)
{
	struct strmap m;
	char key[32];

	strmap_init(&m);
	cr_assert_null(strmap_find(&m, "absent"));
	for (int i = 0; i < 1000; i++) {
		snprintf(key, sizeof(key), "key-%d", i);
		strmap_insert(&m, key, (void *)(intptr_t)(i + 1));
	}
	cr_assert_eq(m.count, 1000);
	cr_assert_geq(m.n_buckets, 1000);
	for (int i = 0; i < 1000; i++) {
		struct strmap_entry *e;

		snprintf(key, sizeof(key), "key-%d", i);
		e = strmap_find(&m, key);
		cr_assert_not_null(e, "%s missing", key);
		cr_assert_eq((intptr_t)e->value, i + 1);
		cr_assert_str_eq(e->key, key);
	}
	for (int i = 0; i < 1000; i += 2) {
		snprintf(key, sizeof(key), "key-%d", i);
		cr_assert_eq((intptr_t)strmap_delete(&m, strmap_find(&m, key)), i + 1);
	}
	cr_assert_eq(m.count, 500);
	for (int i = 0; i < 1000; i++) {
		snprintf(key, sizeof(key), "key-%d", i);
		if (i % 2)
			cr_assert_not_null(strmap_find(&m, key));
		else
			cr_assert_null(strmap_find(&m, key));
	}
	strmap_clear(&m, NULL);
	cr_assert_eq(m.count, 0);
	cr_assert_null(m.buckets);
	cr_assert_null(strmap_find(&m, "key-1"));
}

Test(strmap, lru_order_follows_inserts_and_touches)
{
	struct strmap m;

	strmap_init(&m);
	cr_assert_null(strmap_oldest(&m));
	strmap_insert(&m, "a", NULL);
	strmap_insert(&m, "b", NULL);
	strmap_insert(&m, "c", NULL);
	cr_assert_str_eq(strmap_oldest(&m)->key, "a");
	strmap_touch(&m, strmap_find(&m, "a"));
	cr_assert_str_eq(strmap_oldest(&m)->key, "b");
	strmap_delete(&m, strmap_find(&m, "b"));
	cr_assert_str_eq(strmap_oldest(&m)->key, "c");
	strmap_delete(&m, strmap_find(&m, "c"));
	cr_assert_str_eq(strmap_oldest(&m)->key, "a");
	strmap_delete(&m, strmap_find(&m, "a"));
	cr_assert_null(strmap_oldest(&m));
	strmap_clear(&m, NULL);
}

static int freed;

static void count_free(void *v)
{
	freed++;
	free(v);
}

Test(strmap, clear_frees_every_value)
{
	struct strmap m;

	strmap_init(&m);
	for (int i = 0; i < 40; i++) {
		char key[16];

		snprintf(key, sizeof(key), "%d", i);
		strmap_insert(&m, key, malloc(8));
	}
	freed = 0;
	strmap_clear(&m, count_free);
	cr_assert_eq(freed, 40);
}

Test(params, names_fold_case_and_values_replace)
{
	struct strmap m;

	strmap_init(&m);
	params_put(&m, "DateStyle", "ISO, MDY");
	cr_assert_str_eq(params_get(&m, "datestyle"), "ISO, MDY");
	cr_assert_str_eq(params_get(&m, "DATESTYLE"), "ISO, MDY");
	params_put(&m, "datestyle", "German");
	cr_assert_eq(m.count, 1);
	cr_assert_str_eq(params_get(&m, "DateStyle"), "German");
	cr_assert_null(params_get(&m, "never-there"));
	params_clear(&m);
	cr_assert_eq(m.count, 0);
	cr_assert_null(params_get(&m, "datestyle"));
}

Test(params, carried_list_is_the_settable_reported_parameters)
{
	cr_assert_geq(params_carried_index("TimeZone"), 0);
	cr_assert_geq(params_carried_index("application_name"), 0);
	cr_assert_geq(params_carried_index("DATESTYLE"), 0);
	cr_assert_geq(params_carried_index("IntervalStyle"), 0);
	cr_assert_geq(params_carried_index("client_encoding"), 0);
	cr_assert_geq(params_carried_index("standard_conforming_strings"), 0);
	/* Reported but not settable by a session, or not reported at all. */
	cr_assert_lt(params_carried_index("server_version"), 0);
	cr_assert_lt(params_carried_index("is_superuser"), 0);
	cr_assert_lt(params_carried_index("statement_timeout"), 0);
	cr_assert_lt(params_carried_index("work_mem"), 0);
}
