/*
 * test_session.c: the session state pgmux carries between backends
 * (session.c): quoting of hostile values, the SET/RESET SQL that brings a
 * backend to a client's parameters, the read-back query, the reading of its
 * answer (good and malformed) and the pin a failed read-back gives.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iobuf.h"
#include "params.h"
#include "session.h"
#include "sqlscan.h"
#include "strmap.h"

/* The built text of sql (NUL-terminated by the caller or here). */
static const char *text_of(struct iobuf *sql)
{
	if (iobuf_len(sql) == 0 || iobuf_head(sql)[iobuf_len(sql) - 1] != '\0')
		iobuf_append_u8(sql, '\0');
	cr_assert(!sql->failed);
	return (const char *)iobuf_head(sql);
}

/*
 * Read one string literal as PostgreSQL's lexer does (standard_conforming_
 * strings on: '' is a quote, a backslash is itself; in E'' a backslash
 * escapes). Returns the value (malloc'ed) and sets *end past the literal, or
 * NULL when the text is not one well-formed literal. Only the escapes
 * session_append_literal() may produce (\\ and nothing else) are accepted,
 * so that any other backslash sequence counts as a failure to quote.
 */
static char *unquote(const char *text, const char **end)
{
	bool escapes = false;
	size_t n = 0;
	char *out = malloc(strlen(text) + 1);
	const char *p = text;

	if (*p == 'E') {
		escapes = true;
		p++;
	}
	if (*p++ != '\'')
		goto bad;
	for (;;) {
		if (*p == '\0')
			goto bad; /* unterminated */
		if (*p == '\'') {
			if (p[1] == '\'') {
				out[n++] = '\'';
				p += 2;
				continue;
			}
			p++;
			break;
		}
		if (escapes && *p == '\\') {
			if (p[1] != '\\')
				goto bad;
			out[n++] = '\\';
			p += 2;
			continue;
		}
		out[n++] = *p++;
	}
	out[n] = '\0';
	*end = p;
	return out;
bad:
	free(out);
	return NULL;
}

/* session_append_literal(value) must read back as exactly value, and as one literal with nothing after it. */
static void check_round_trip(const char *value)
{
	struct iobuf sql;
	const char *text, *end = NULL;
	char *back;

	iobuf_init(&sql);
	session_append_literal(&sql, value);
	text = text_of(&sql);
	back = unquote(text, &end);
	cr_assert_not_null(back, "not one literal: %.200s", text);
	cr_assert_str_eq(back, value);
	cr_assert_eq(*end, '\0', "text after the literal: %.200s", end);
	/* A backslash makes it E'': never a bare backslash that a backend with standard_conforming_strings off reads. */
	cr_assert_eq(text[0] == 'E', strchr(value, '\\') != NULL, "%.200s", text);
	free(back);
	iobuf_free(&sql);
}

Test(session_quoting, plain_values_are_one_literal)
{
	struct iobuf sql;

	iobuf_init(&sql);
	session_append_literal(&sql, "UTC");
	cr_assert_str_eq(text_of(&sql), "'UTC'");
	iobuf_reset(&sql);
	session_append_literal(&sql, "");
	cr_assert_str_eq(text_of(&sql), "''");
	iobuf_free(&sql);
	check_round_trip("UTC");
	check_round_trip("");
	check_round_trip("\"$user\", public");
}

Test(session_quoting, quotes_are_doubled)
{
	struct iobuf sql;

	iobuf_init(&sql);
	session_append_literal(&sql, "it's");
	cr_assert_str_eq(text_of(&sql), "'it''s'");
	iobuf_free(&sql);
	check_round_trip("'");
	check_round_trip("''");
	check_round_trip("'''");
	check_round_trip("'; DROP TABLE accounts; --");
	check_round_trip("x'), pg_catalog.set_config('role', 'postgres', false) --");
}

Test(session_quoting, backslashes_make_an_escape_string)
{
	struct iobuf sql;

	iobuf_init(&sql);
	session_append_literal(&sql, "a\\b");
	cr_assert_str_eq(text_of(&sql), "E'a\\\\b'");
	iobuf_reset(&sql);
	session_append_literal(&sql, "it's C:\\");
	cr_assert_str_eq(text_of(&sql), "E'it''s C:\\\\'");
	iobuf_free(&sql);
	check_round_trip("\\");
	check_round_trip("\\'");
	check_round_trip("'\\");
	check_round_trip("\\\\'\\'");
	check_round_trip("\\'; SELECT pg_sleep(10); --");
	check_round_trip("E'\\x27'");
}

Test(session_quoting, other_quoting_characters_pass_through)
{
	check_round_trip("$$ dollar $$");
	check_round_trip("$tag$'$tag$");
	check_round_trip("\"ident\"");
	check_round_trip("semi;colon -- comment /* block */");
	check_round_trip("tab\tnewline\ncr\r");
}

Test(session_quoting, unicode_is_copied_byte_for_byte)
{
	static const char *const values[] = {
		"h\xc3\xa9llo w\xc3\xb6rld",                 /* héllo wörld */
		"\xe2\x98\x83 \xf0\x9d\x84\x9e",             /* snowman, G clef */
		"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e'\\",   /* Japanese, a quote and a backslash */
		"\xef\xbc\x87 \xca\xbc \xe2\x80\x99",        /* fullwidth apostrophe, modifier, right quote */
		"\xc0\xa7 \xe0\x80\xa7",                     /* overlong encodings of a quote (invalid UTF-8) */
	};
	struct iobuf sql;

	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++)
		check_round_trip(values[i]);
	/* Only ASCII ' and \ are special: a fullwidth apostrophe is not doubled. */
	iobuf_init(&sql);
	session_append_literal(&sql, values[3]);
	cr_assert_eq(iobuf_len(&sql), strlen(values[3]) + 2);
	iobuf_free(&sql);
}

Test(session_quoting, very_long_values)
{
	size_t n = 1 << 20;
	char *value = malloc(n + 1);
	struct iobuf sql;

	for (size_t i = 0; i < n; i++)
		value[i] = "a'\\"[i % 3];
	value[n] = '\0';
	check_round_trip(value);
	iobuf_init(&sql);
	session_append_literal(&sql, value);
	/* E, two quotes, and every quote and backslash twice. */
	cr_assert_eq(iobuf_len(&sql), 1 + 2 + n + 2 * (n / 3) + (n % 3 == 2 ? 1 : 0));
	iobuf_free(&sql);
	memset(value, '\'', n);
	check_round_trip(value);
	free(value);
}

Test(session_quoting, reset_quotes_each_part_of_a_name)
{
	struct iobuf sql;

	iobuf_init(&sql);
	session_append_reset(&sql, "statement_timeout");
	session_append_reset(&sql, "app.tenant");
	session_append_reset(&sql, "my\"ext.we\"\"ird");
	cr_assert_str_eq(text_of(&sql), "RESET \"statement_timeout\"; RESET \"app\".\"tenant\"; "
					"RESET \"my\"\"ext\".\"we\"\"\"\"ird\"; ");
	iobuf_free(&sql);
}

Test(session_quoting, set_lists_set_config_calls)
{
	struct iobuf sql;
	int count = 0;

	iobuf_init(&sql);
	session_append_set(&sql, &count, "search_path", "a, b");
	session_append_set(&sql, &count, "app.x", "it's \\ here");
	cr_assert_eq(count, 2);
	cr_assert_str_eq(text_of(&sql), "SELECT pg_catalog.set_config('search_path','a, b', false), "
					"pg_catalog.set_config('app.x',E'it''s \\\\ here', false)");
	iobuf_free(&sql);
}

/* ------------------------------------------------------ session_state_sql */

/* A backend's reported parameters, as server_param() would give them. */
struct fake_backend {
	const char *names[8];
	const char *values[8];
};

static const char *fake_reported(const char *name, void *arg)
{
	const struct fake_backend *f = arg;

	for (int i = 0; i < 8 && f->names[i]; i++)
		if (strcasecmp(f->names[i], name) == 0)
			return f->values[i];
	return NULL;
}

struct state_fixture {
	struct session_params want;
	struct strmap applied;
	struct strmap defaults;
	struct fake_backend reported;
	struct session_backend b;
	struct iobuf sql;
};

static void fixture_init(struct state_fixture *f)
{
	memset(f, 0, sizeof(*f));
	session_params_init(&f->want);
	strmap_init(&f->applied);
	strmap_init(&f->defaults);
	/* The backend reports what it had at connect; the client has seen the same. */
	f->reported = (struct fake_backend){
		.names = {"application_name", "client_encoding", "DateStyle", "IntervalStyle", "TimeZone",
			  "standard_conforming_strings"},
		.values = {"", "UTF8", "ISO, MDY", "postgres", "UTC", "on"},
	};
	for (int i = 0; f->reported.names[i]; i++) {
		params_put(&f->defaults, f->reported.names[i], f->reported.values[i]);
		session_params_set_reported(&f->want, params_carried_index(f->reported.names[i]),
					    f->reported.values[i]);
	}
	f->b = (struct session_backend){
		.applied = &f->applied,
		.defaults = &f->defaults,
		.reported = fake_reported,
		.reported_arg = &f->reported,
	};
	iobuf_init(&f->sql);
}

static void fixture_free(struct state_fixture *f)
{
	session_params_free(&f->want);
	params_clear(&f->applied);
	params_clear(&f->defaults);
	iobuf_free(&f->sql);
}

Test(session_state_sql, a_matching_backend_needs_nothing)
{
	struct state_fixture f;

	fixture_init(&f);
	session_params_put_startup(&f.want, "search_path", "app");
	params_put(&f.applied, "search_path", "app");
	cr_assert_not(session_state_sql(&f.sql, &f.want, &f.b, "SET x = 1"));
	cr_assert_str_eq(text_of(&f.sql), "SELECT 1");
	cr_assert_not(f.b.applied_changed);
	cr_assert_not(f.b.init_undone);
	fixture_free(&f);
}

Test(session_state_sql, differences_are_set)
{
	struct state_fixture f;

	fixture_init(&f);
	session_params_set_reported(&f.want, params_carried_index("TimeZone"), "Europe/Paris");
	session_params_put_startup(&f.want, "statement_timeout", "5s");
	session_params_put_startup(&f.want, "app.tenant", "o'brien");
	params_put(&f.applied, "statement_timeout", "5s"); /* already there */
	cr_assert(session_state_sql(&f.sql, &f.want, &f.b, NULL));
	cr_assert_str_eq(text_of(&f.sql), "SELECT pg_catalog.set_config('timezone','Europe/Paris', false), "
					  "pg_catalog.set_config('app.tenant','o''brien', false)");
	cr_assert(f.b.applied_changed);
	cr_assert_str_eq(params_get(&f.applied, "app.tenant"), "o'brien");
	cr_assert_eq(f.applied.count, 2);
	fixture_free(&f);
}

Test(session_state_sql, an_unset_reported_parameter_goes_back_to_the_default)
{
	struct state_fixture f;
	int tz = params_carried_index("timezone");

	fixture_init(&f);
	/* The client never set TimeZone; the backend's was changed by its last client. */
	session_params_unset_reported(&f.want, tz);
	f.reported.values[4] = "Asia/Tokyo";
	cr_assert(session_state_sql(&f.sql, &f.want, &f.b, NULL));
	cr_assert_str_eq(text_of(&f.sql), "SELECT pg_catalog.set_config('timezone','UTC', false)");
	fixture_free(&f);
}

Test(session_state_sql, what_an_earlier_client_set_is_reset_and_init_query_runs_again)
{
	struct state_fixture f;

	fixture_init(&f);
	session_params_put_startup(&f.want, "work_mem", "64MB");
	params_put(&f.applied, "work_mem", "64MB");
	params_put(&f.applied, "app.tenant", "other");
	params_put(&f.applied, "statement_timeout", "1s");
	cr_assert(session_state_sql(&f.sql, &f.want, &f.b, "SET lock_timeout = '1s'"));
	/*
	 * Maps list the most recently set first. After init_query every
	 * parameter the client wants is set again, matching or not.
	 */
	cr_assert_str_eq(text_of(&f.sql),
			 "RESET \"statement_timeout\"; RESET \"app\".\"tenant\"; SET lock_timeout = '1s'; "
			 "SELECT pg_catalog.set_config('application_name','', false), "
			 "pg_catalog.set_config('client_encoding','UTF8', false), "
			 "pg_catalog.set_config('datestyle','ISO, MDY', false), "
			 "pg_catalog.set_config('intervalstyle','postgres', false), "
			 "pg_catalog.set_config('timezone','UTC', false), "
			 "pg_catalog.set_config('standard_conforming_strings','on', false), "
			 "pg_catalog.set_config('work_mem','64MB', false)");
	cr_assert(f.b.init_undone, "init_query runs in this SQL: the caller clears init_undone once it ran");
	cr_assert(f.b.applied_changed);
	cr_assert_eq(f.applied.count, 1);
	cr_assert_str_eq(params_get(&f.applied, "work_mem"), "64MB");
	fixture_free(&f);
}

Test(session_state_sql, a_reset_without_init_query_needs_no_reinit)
{
	struct state_fixture f;

	fixture_init(&f);
	params_put(&f.applied, "app.tenant", "other");
	cr_assert(session_state_sql(&f.sql, &f.want, &f.b, ""));
	cr_assert_str_eq(text_of(&f.sql), "RESET \"app\".\"tenant\"; SELECT 1");
	cr_assert_not(f.b.init_undone);
	cr_assert_eq(f.applied.count, 0);
	fixture_free(&f);
}

Test(session_state_sql, an_undone_init_query_runs_again)
{
	struct state_fixture f;
	static const char want[] = "SELECT pg_catalog.set_config('a.b', 'c', false); SELECT ";

	fixture_init(&f);
	f.b.init_undone = true; /* a DISCARD ALL after the last client */
	cr_assert(session_state_sql(&f.sql, &f.want, &f.b, "SELECT pg_catalog.set_config('a.b', 'c', false)"));
	cr_assert(strncmp(text_of(&f.sql), want, strlen(want)) == 0, "%s", text_of(&f.sql));
	cr_assert(f.b.init_undone);
	fixture_free(&f);
}

Test(session_state_sql, reset_all_comes_first_and_everything_is_set_after_it)
{
	struct state_fixture f;

	fixture_init(&f);
	f.b.reset_all = true;
	session_params_put_startup(&f.want, "search_path", "app");
	params_put(&f.applied, "search_path", "app");
	params_put(&f.applied, "app.secret", "theirs");
	cr_assert(session_state_sql(&f.sql, &f.want, &f.b, NULL));
	cr_assert_str_eq(text_of(&f.sql),
			 "RESET ALL; SELECT pg_catalog.set_config('application_name','', false), "
			 "pg_catalog.set_config('client_encoding','UTF8', false), "
			 "pg_catalog.set_config('datestyle','ISO, MDY', false), "
			 "pg_catalog.set_config('intervalstyle','postgres', false), "
			 "pg_catalog.set_config('timezone','UTC', false), "
			 "pg_catalog.set_config('standard_conforming_strings','on', false), "
			 "pg_catalog.set_config('search_path','app', false)");
	cr_assert_not(f.b.reset_all);
	cr_assert(f.b.applied_changed);
	cr_assert_eq(f.applied.count, 1);
	cr_assert_null(params_get(&f.applied, "app.secret"));
	fixture_free(&f);
}

Test(session_state_sql, hostile_values_stay_inside_their_literals)
{
	struct state_fixture f;
	const char *text;

	fixture_init(&f);
	session_params_set_reported(&f.want, params_carried_index("application_name"), "x', true); DROP TABLE t; --");
	session_params_put_startup(&f.want, "app.a\"b", "\\'); RESET ALL; --");
	cr_assert(session_state_sql(&f.sql, &f.want, &f.b, NULL));
	text = text_of(&f.sql);
	cr_assert_str_eq(text, "SELECT pg_catalog.set_config('application_name','x'', true); DROP TABLE t; --', false), "
			       "pg_catalog.set_config('app.a\"b',E'\\\\''); RESET ALL; --', false)");
	fixture_free(&f);
}

/* ------------------------------------------------------------ parameters */

Test(session_params, startup_parameters_are_sorted_and_remembered)
{
	struct session_params p = {0};

	session_params_init(&p);
	session_params_put_startup(&p, "TimeZone", "UTC");
	session_params_put_startup(&p, "Search_Path", "app");
	cr_assert_str_eq(p.reported[params_carried_index("timezone")], "UTC");
	cr_assert_null(params_get(session_params_set(&p), "timezone"));
	cr_assert_str_eq(params_get(session_params_set(&p), "search_path"), "app");
	cr_assert_str_eq(params_get(&p.extra->startup, "search_path"), "app");
	session_params_free(&p);
}

Test(session_params, fingerprint_is_cached_until_a_change)
{
	struct session_params p = {0};
	uint64_t before;

	session_params_init(&p);
	session_params_put_startup(&p, "search_path", "app");
	before = session_params_fingerprint(&p);
	cr_assert(p.fingerprint_valid);
	cr_assert_eq(session_params_fingerprint(&p), before);
	/* The same value again changes nothing. */
	session_params_set_reported(&p, 0, "psql");
	cr_assert_not(p.fingerprint_valid);
	before = session_params_fingerprint(&p);
	session_params_set_reported(&p, 0, "psql");
	cr_assert(p.fingerprint_valid);
	session_params_set_reported(&p, 0, "other");
	cr_assert_neq(session_params_fingerprint(&p), before);
	session_params_free(&p);
}

Test(session_params, adopt_takes_the_settings_and_startup_values_for_what_was_reset)
{
	struct session_params p = {0};
	struct strmap settings;

	session_params_init(&p);
	strmap_init(&settings);
	session_params_put_startup(&p, "search_path", "app");
	session_params_put_startup(&p, "work_mem", "64MB");
	cr_assert_not_null(p.extra);
	params_put(&p.extra->set, "statement_timeout", "1s"); /* SET earlier, RESET since */
	params_put(&settings, "work_mem", "128MB");
	params_put(&settings, "app.tenant", "t1");
	(void)session_params_fingerprint(&p);
	session_params_adopt(&p, &settings);
	cr_assert_not(p.fingerprint_valid);
	cr_assert_eq(session_params_set(&p)->count, 3);
	cr_assert_str_eq(params_get(session_params_set(&p), "work_mem"), "128MB");
	cr_assert_str_eq(params_get(session_params_set(&p), "app.tenant"), "t1");
	cr_assert_str_eq(params_get(session_params_set(&p), "search_path"), "app");
	cr_assert_null(params_get(session_params_set(&p), "statement_timeout"));
	params_clear(&settings);
	session_params_free(&p);
}

/* ------------------------------------------------------------ read-back */

Test(session_settings_sql, reads_pg_settings_and_custom_names)
{
	static const char head[] = "SELECT coalesce(pg_catalog.json_object_agg(name, setting), '{}') FROM ("
				   "SELECT name, pg_catalog.current_setting(name) AS setting FROM pg_catalog.pg_settings "
				   "WHERE source = 'session'";
	struct strmap set, pending;
	struct iobuf sql;
	char want[1024];

	strmap_init(&set);
	strmap_init(&pending);
	iobuf_init(&sql);
	session_settings_sql(&sql, &set, NULL, NULL);
	snprintf(want, sizeof(want), "%s) AS s WHERE setting <> ''", head);
	cr_assert_str_eq((const char *)iobuf_head(&sql), want);

	/*
	 * Custom names the session has, then those touched since (most recent
	 * first), each once; built-in ones are in pg_settings.
	 */
	params_put(&set, "work_mem", "1MB");
	params_put(&set, "app.a", "1");
	params_put(&set, "app.it's", "2");
	params_put(&pending, "app.a", "");
	params_put(&pending, "app.new", "");
	iobuf_reset(&sql);
	session_settings_sql(&sql, &set, &pending, NULL);
	snprintf(want, sizeof(want),
		 "%s UNION SELECT name, pg_catalog.current_setting(name, true) FROM pg_catalog.unnest(ARRAY["
		 "'app.it''s', 'app.new', 'app.a']::text[]) AS name) AS s WHERE setting <> ''",
		 head);
	cr_assert_str_eq((const char *)iobuf_head(&sql), want);
	cr_assert_eq(pending.count, 2, "the caller drops the pending names");
	params_clear(&set);
	params_clear(&pending);
	iobuf_free(&sql);
}

Test(session_settings_sql, verification_checks_the_user_and_prepared_statements)
{
	struct strmap set;
	struct iobuf sql;
	const char *text;
	struct session_verify verify = {.user = "o'neil\\", .prepared = 42};
	static const char want[] = "SELECT CASE WHEN CURRENT_USER <> SESSION_USER OR SESSION_USER <> E'o''neil\\\\' THEN ";

	strmap_init(&set);
	iobuf_init(&sql);
	session_settings_sql(&sql, &set, NULL, &verify);
	text = (const char *)iobuf_head(&sql);
	cr_assert(strncmp(text, want, strlen(want)) == 0, "%s", text);
	cr_assert_not_null(strstr(text, "FROM pg_catalog.pg_prepared_statements) <> 42 THEN"));
	cr_assert_not_null(strstr(text, "WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()) THEN 'LISTEN'"));
	cr_assert_not_null(strstr(text, " UNION SELECT m.name, pg_catalog.current_setting(m.name, true)"));
	cr_assert(strlen(text) > 11 && strcmp(text + strlen(text) - 11, ")::text END") == 0, "%s", text);
	iobuf_free(&sql);
}

Test(session_readback, a_json_object_gives_the_unreported_settings)
{
	struct strmap settings;

	strmap_init(&settings);
	params_put(&settings, "stale", "x");
	cr_assert_eq(session_readback_parse("{\"statement_timeout\": \"5s\", \"app.tenant\": \"o'brien \\\\ \\u00e9\", "
					    "\"TimeZone\": \"UTC\", \"odd\": 1, \"null\": null}",
					    &settings),
		     SESSION_READBACK_SETTINGS);
	cr_assert_eq(settings.count, 2);
	cr_assert_str_eq(params_get(&settings, "statement_timeout"), "5s");
	cr_assert_str_eq(params_get(&settings, "app.tenant"), "o'brien \\ \xc3\xa9");
	cr_assert_null(params_get(&settings, "timezone"), "reported parameters follow ParameterStatus");
	cr_assert_null(params_get(&settings, "stale"));

	cr_assert_eq(session_readback_parse("{}", &settings), SESSION_READBACK_SETTINGS);
	cr_assert_eq(settings.count, 0);
	params_clear(&settings);
}

Test(session_readback, a_reason_is_a_refusal)
{
	struct strmap settings;
	struct sql_scan_result pin;

	strmap_init(&settings);
	params_put(&settings, "kept", "1");
	cr_assert_eq(session_readback_parse("LISTEN", &settings), SESSION_READBACK_REFUSED);
	cr_assert_eq(session_readback_parse("session-level advisory lock", &settings), SESSION_READBACK_REFUSED);
	/* Whatever does not start like a JSON object is the verification's reason. */
	cr_assert_eq(session_readback_parse("[\"a\"]", &settings), SESSION_READBACK_REFUSED);
	cr_assert_str_eq(params_get(&settings, "kept"), "1");
	session_readback_pin(SESSION_READBACK_REFUSED, "LISTEN", &pin);
	cr_assert_eq(pin.pin, SQL_PIN_OTHER_SESSION_STATE);
	cr_assert_str_eq(pin.pin_detail, "LISTEN");
	params_clear(&settings);
}

Test(session_readback, malformed_answers_leave_the_settings_alone)
{
	static const char *const answers[] = {
		"", "{", "{\"a\": ", "{\"a\" \"b\"}", "{\"a\": \"b\"} trailing", "{\"a\": \"\\ud800\"}",
	};
	struct strmap settings;
	struct sql_scan_result pin;

	strmap_init(&settings);
	params_put(&settings, "kept", "1");
	cr_assert_eq(session_readback_parse(NULL, &settings), SESSION_READBACK_MALFORMED);
	for (size_t i = 0; i < sizeof(answers) / sizeof(answers[0]); i++)
		cr_assert_eq(session_readback_parse(answers[i], &settings), SESSION_READBACK_MALFORMED, "%s",
			     answers[i]);
	cr_assert_eq(settings.count, 1);
	cr_assert_str_eq(params_get(&settings, "kept"), "1");
	session_readback_pin(SESSION_READBACK_MALFORMED, NULL, &pin);
	cr_assert_eq(pin.pin, SQL_PIN_SET);
	cr_assert_str_eq(pin.pin_detail, "its settings could not be read back");
	params_clear(&settings);
}

Test(session_readback, a_long_reason_is_cut_to_fit_the_pin)
{
	char reason[300];
	struct sql_scan_result pin;

	memset(reason, 'r', sizeof(reason) - 1);
	reason[sizeof(reason) - 1] = '\0';
	session_readback_pin(SESSION_READBACK_REFUSED, reason, &pin);
	cr_assert_eq(strlen(pin.pin_detail), sizeof(pin.pin_detail) - 1);
}
