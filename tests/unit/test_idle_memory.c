/*
 * test_idle_memory.c: what an idle client keeps (issue 21, src/README.md
 * "What an idle client holds"): the per-session maps are made on first use
 * and freed when empty, carried values from the startup packet are pointed
 * to rather than copied, and the startup packet is one block.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "params.h"
#include "proto.h"
#include "session.h"
#include "strmap.h"

Test(idle_memory, only_carried_parameters_make_no_maps)
{
	struct session_params p = {0};

	session_params_init(&p);
	session_params_put_startup(&p, "TimeZone", "UTC");
	session_params_put_startup(&p, "application_name", "an app of its own");
	cr_assert_null(p.extra, "carried parameters need no map");
	cr_assert_eq(session_params_set(&p)->count, 0);
	cr_assert_null(params_get(session_params_set(&p), "search_path"));
	session_params_put_startup(&p, "search_path", "app");
	cr_assert_not_null(p.extra);
	cr_assert_str_eq(params_get(session_params_set(&p), "search_path"), "app");
	session_params_free(&p);
	cr_assert_null(p.extra);
}

Test(idle_memory, adopting_no_settings_frees_the_maps)
{
	struct session_params p = {0};
	struct strmap settings;

	session_params_init(&p);
	strmap_init(&settings);
	params_put(&settings, "work_mem", "1MB");
	session_params_adopt(&p, &settings);
	cr_assert_not_null(p.extra);
	cr_assert_str_eq(params_get(session_params_set(&p), "work_mem"), "1MB");
	params_clear(&settings);
	session_params_adopt(&p, &settings); /* the session RESET it: nothing is left */
	cr_assert_null(p.extra, "empty maps are freed");
	cr_assert_null(params_get(session_params_set(&p), "work_mem"));
	session_params_free(&p);
}

Test(idle_memory, startup_values_are_pointed_to_until_changed)
{
	struct session_params p = {0};
	char value[] = "an app of its own";
	int app = params_carried_index("application_name");
	int tz = params_carried_index("timezone");
	char *shared;

	session_params_init(&p);
	session_params_keep_startup(&p, "application_name", value);
	cr_assert_eq(p.reported[app], value, "the startup packet's value is not copied");
	session_params_keep_startup(&p, "TimeZone", "UTC");
	shared = p.reported[tz];
	cr_assert_str_eq(shared, "UTC");
	session_params_keep_startup(&p, "search_path", "app"); /* not carried: copied into the maps */
	cr_assert_str_eq(params_get(session_params_set(&p), "search_path"), "app");
	/* A ParameterStatus changes it: pgmux's own copy from then on, and the startup packet is not freed. */
	session_params_set_reported(&p, app, "renamed");
	cr_assert_neq(p.reported[app], value);
	cr_assert_str_eq(p.reported[app], "renamed");
	cr_assert_str_eq(value, "an app of its own");
	/* Back to a borrowed one, then unset: nothing to free. */
	session_params_keep_startup(&p, "application_name", value);
	cr_assert_eq(p.reported[app], value);
	session_params_unset_reported(&p, app);
	cr_assert_null(p.reported[app]);
	session_params_free(&p);
	cr_assert_str_eq(value, "an app of its own");
}

Test(idle_memory, startup_packet_is_one_block)
{
	static const char body[] = "user\0bench\0database\0shop\0application_name\0idle\0";
	struct startup_packet sp;
	char err[256];
	const char *lo, *hi;

	cr_assert_eq(proto_parse_startup(PROTO_VERSION(3, 0), (const uint8_t *)body, sizeof(body), &sp, err,
					 sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(sp.n_params, 3);
	lo = (const char *)sp.params;
	hi = lo + sp.n_params * sizeof(*sp.params) + (sizeof(body) - 1);
	for (int i = 0; i < sp.n_params; i++) {
		cr_assert(sp.params[i].name >= lo && sp.params[i].name < hi, "name %d is in the block", i);
		cr_assert(sp.params[i].value >= lo && sp.params[i].value < hi, "value %d is in the block", i);
	}
	cr_assert_str_eq(sp.user, "bench");
	cr_assert_str_eq(sp.database, "shop");
	cr_assert_str_eq(proto_startup_get(&sp, "application_name"), "idle");
	proto_startup_free(&sp);
	cr_assert_null(sp.params);
}
