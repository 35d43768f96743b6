/*
 * session.c: the session state pgmux carries for a client (see session.h):
 * the SQL that brings a backend to the client's parameters, the SQL that
 * reads them back, and the reading of its answer. Everything here works on
 * plain data; client.c decides when to run what.
 */
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "list.h"
#include "util.h"

/* ------------------------------------------------------------ parameters */

/*
 * The values PostgreSQL reports by default for the carried parameters: every
 * client of a default server holds these, so they are shared, not copied
 * (some 160 bytes per idle client, issue 21). Anything else gets its copy.
 */
static const char *const shared_reported_values[] = {
	"", "on", "off", "UTF8", "SQL_ASCII", "ISO, MDY", "ISO, DMY", "ISO, YMD",
	"postgres", "iso_8601", "UTC", "Etc/UTC", "GMT",
};

/* The shared constant equal to value, or NULL. */
static char *reported_copy_shared(const char *value)
{
	for (size_t i = 0; i < sizeof(shared_reported_values) / sizeof(shared_reported_values[0]); i++)
		if (strcmp(value, shared_reported_values[i]) == 0)
			return (char *)shared_reported_values[i];
	return NULL;
}

static char *reported_copy(const char *value)
{
	char *shared = reported_copy_shared(value);

	return shared ? shared : xstrdup(value);
}

static void reported_free(char *value)
{
	for (size_t i = 0; i < sizeof(shared_reported_values) / sizeof(shared_reported_values[0]); i++)
		if (value == shared_reported_values[i])
			return;
	free(value);
}

void session_params_init(struct session_params *p)
{
	p->extra = NULL;
	p->borrowed = 0;
}

/* reported[i] is let go: freed if it is pgmux's own copy. */
static void reported_release(struct session_params *p, int i)
{
	if (!(p->borrowed & (1u << i)))
		reported_free(p->reported[i]);
	p->borrowed &= (uint8_t)~(1u << i);
	p->reported[i] = NULL;
}

static struct session_extra *extra_make(struct session_params *p)
{
	if (p->extra == NULL) {
		p->extra = xmalloc(sizeof(*p->extra));
		strmap_init(&p->extra->set);
		strmap_init(&p->extra->startup);
	}
	return p->extra;
}

static void extra_free(struct session_params *p)
{
	if (p->extra == NULL)
		return;
	params_clear(&p->extra->set);
	params_clear(&p->extra->startup);
	free(p->extra);
	p->extra = NULL;
}

/* An idle session keeps no empty maps (issue 21). */
static void extra_trim(struct session_params *p)
{
	if (p->extra && p->extra->set.count == 0 && p->extra->startup.count == 0)
		extra_free(p);
}

void session_params_free(struct session_params *p)
{
	for (int i = 0; i < PARAMS_N_CARRIED; i++)
		reported_release(p, i);
	extra_free(p);
}

void session_params_set_reported(struct session_params *p, int index, const char *value)
{
	if (p->reported[index] && strcmp(p->reported[index], value) == 0)
		return;
	reported_release(p, index);
	p->reported[index] = reported_copy(value);
	p->fingerprint_valid = false;
}

void session_params_unset_reported(struct session_params *p, int index)
{
	reported_release(p, index);
	p->fingerprint_valid = false;
}

void session_params_keep_startup(struct session_params *p, const char *name, const char *value)
{
	int index = params_carried_index(name);
	char *shared;

	if (index < 0) {
		session_params_put_startup(p, name, value);
		return;
	}
	if (p->reported[index] && strcmp(p->reported[index], value) == 0)
		return;
	reported_release(p, index);
	shared = reported_copy_shared(value);
	p->reported[index] = shared ? shared : (char *)value;
	if (shared == NULL)
		p->borrowed |= (uint8_t)(1u << index);
	p->fingerprint_valid = false;
}

void session_params_put_startup(struct session_params *p, const char *name, const char *value)
{
	int index = params_carried_index(name);

	p->fingerprint_valid = false;
	if (index >= 0) {
		session_params_set_reported(p, index, value);
	} else {
		struct session_extra *x = extra_make(p);

		params_put(&x->set, name, value);
		params_put(&x->startup, name, value);
	}
}

static const char *session_reported_get(const char *name, void *arg)
{
	const struct session_params *p = arg;
	int index = params_carried_index(name);

	return index >= 0 ? p->reported[index] : NULL;
}

uint64_t session_params_fingerprint(struct session_params *p)
{
	if (!p->fingerprint_valid) {
		p->fingerprint = params_fingerprint(session_reported_get, p, session_params_set(p));
		p->fingerprint_valid = true;
	}
	return p->fingerprint;
}

void session_params_adopt(struct session_params *p, const struct strmap *settings)
{
	struct list_node *pos;
	struct session_extra *x = extra_make(p);

	params_clear(&x->set);
	list_for_each(pos, &settings->lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

		params_put(&x->set, e->key, e->value);
	}
	list_for_each(pos, &x->startup.lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

		if (params_get(&x->set, e->key) == NULL)
			params_put(&x->set, e->key, e->value);
	}
	extra_trim(p);
	p->fingerprint_valid = false;
}

/* ---------------------------------------------------------------- quoting */

void session_append_literal(struct iobuf *sql, const char *value)
{
	bool backslash = strchr(value, '\\') != NULL;

	if (backslash)
		iobuf_append_u8(sql, 'E');
	iobuf_append_u8(sql, '\'');
	for (const char *p = value; *p; p++) {
		if (*p == '\'' || (*p == '\\' && backslash))
			iobuf_append_u8(sql, (uint8_t)*p);
		iobuf_append_u8(sql, (uint8_t)*p);
	}
	iobuf_append_u8(sql, '\'');
}

void session_append_set(struct iobuf *sql, int *count, const char *name, const char *value)
{
	iobuf_append(sql, *count == 0 ? "SELECT " : ", ", *count == 0 ? 7 : 2);
	iobuf_append(sql, "pg_catalog.set_config(", 22);
	session_append_literal(sql, name);
	iobuf_append_u8(sql, ',');
	session_append_literal(sql, value);
	iobuf_append(sql, ", false)", 8);
	(*count)++;
}

void session_append_reset(struct iobuf *sql, const char *name)
{
	iobuf_append(sql, "RESET \"", 7);
	for (const char *p = name; *p; p++) {
		if (*p == '.')
			iobuf_append(sql, "\".\"", 3);
		else if (*p == '"')
			iobuf_append(sql, "\"\"", 2);
		else
			iobuf_append_u8(sql, (uint8_t)*p);
	}
	iobuf_append(sql, "\"; ", 3);
}

/* ------------------------------------------- bringing a backend over */

bool session_state_sql(struct iobuf *sql, const struct session_params *p, struct session_backend *b,
		       const char *init_query)
{
	struct list_node *pos, *tmp;
	int count = 0;
	bool reset = false, reinit, reset_all = b->reset_all;

	if (reset_all) {
		/*
		 * Code pgmux could not read ran on the backend (see verify_head):
		 * back to the server's defaults, every parameter, then the client's
		 * own.
		 */
		iobuf_append(sql, "RESET ALL; ", 11);
		params_clear(b->applied);
		b->applied_changed = true;
		b->reset_all = false;
		reset = true;
	}
	list_for_each_safe(pos, tmp, &b->applied->lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

		if (params_get(session_params_set(p), e->key) == NULL) {
			session_append_reset(sql, e->key);
			free(strmap_delete(b->applied, e));
			b->applied_changed = true;
			reset = true;
		}
	}
	if (reset)
		b->init_undone = true;
	reinit = b->init_undone && init_query && init_query[0];
	if (reinit) {
		iobuf_append(sql, init_query, strlen(init_query));
		iobuf_append(sql, "; ", 2);
	} else {
		b->init_undone = false; /* no init_query to run again */
	}
	for (int i = 0; params_carried_names[i]; i++) {
		const char *name = params_carried_names[i];
		const char *want = p->reported[i];
		const char *have = b->reported(name, b->reported_arg);

		/* What the client never changed is the server's default. */
		if (want == NULL)
			want = params_get(b->defaults, name);
		/* After RESET ALL, what the backend reported before is stale: set it all. */
		if (want == NULL || (!reinit && !reset_all && have && strcmp(have, want) == 0))
			continue;
		session_append_set(sql, &count, name, want);
	}
	list_for_each(pos, &session_params_set(p)->lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);
		const char *have = params_get(b->applied, e->key);

		if (!reinit && have && strcmp(have, e->value) == 0)
			continue;
		session_append_set(sql, &count, e->key, e->value);
		params_put(b->applied, e->key, e->value);
		b->applied_changed = true;
	}
	if (count == 0)
		iobuf_append(sql, "SELECT 1", 8);
	iobuf_append_u8(sql, '\0');
	return count > 0 || reset || reinit;
}

/* ------------------------------------------------ reading settings back */

/*
 * Transaction pooling carries the settings PostgreSQL does not report
 * (statement_timeout, search_path, a custom app.tenant, ...) by asking the
 * backend, once a transaction that may have changed one is over, what the
 * session's own settings are now. That follows SET, RESET, SET ... TO
 * DEFAULT, set_config(.., false), a rolled-back transaction and a failed
 * statement alike, which reading the statements could not. The answer is
 * what the client's next backends are given (session_state_sql()).
 */
static void settings_sql_name(struct iobuf *sql, int *n, const char *name)
{
	static const char custom[] = " UNION SELECT name, pg_catalog.current_setting(name, true) FROM "
				     "pg_catalog.unnest(ARRAY[";

	if (*n == 0)
		iobuf_append(sql, custom, sizeof(custom) - 1);
	else
		iobuf_append(sql, ", ", 2);
	session_append_literal(sql, name);
	(*n)++;
}

/*
 * After a transaction that ran code pgmux cannot read (SQL_EFFECT_OPAQUE: a
 * DO block, CALL, somebody else's function, a trigger's work is not seen
 * either but needs such a call), the read-back is a verification too: the
 * session state pgmux cannot carry must be as it was, or the session keeps
 * its backend (pinned); the answer is then the reason, not a JSON object.
 * And custom parameters named in the database's own functions are read
 * back by name as well, so that the client keeps what a function set for it.
 * A custom parameter whose name no text shows (made at run time) cannot be
 * read; the backend is RESET ALL before anyone else uses it (see
 * reset_before_reuse in server.h), so that no client sees another's.
 */
static const char verify_head[] =
	"SELECT CASE"
	" WHEN CURRENT_USER <> SESSION_USER OR SESSION_USER <> %s"
	" THEN 'SET ROLE or SESSION AUTHORIZATION'"
	" WHEN (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements) <> %zu"
	" THEN 'SQL-level PREPARE or DEALLOCATE'"
	"%s"
	" WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_cursors) THEN 'cursor WITH HOLD'"
	" WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())"
	" THEN 'temporary table'"
	" WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE pid = pg_catalog.pg_backend_pid()"
	" AND locktype = 'advisory') THEN 'session-level advisory lock'"
	" ELSE (";
/* Left out when pgmux's LISTEN takeover reads what the backend listens on next (listen_taken_over). */
static const char verify_listen[] = " WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()) THEN 'LISTEN'";
static const char verify_catalog_names[] =
	" UNION SELECT m.name, pg_catalog.current_setting(m.name, true) FROM (SELECT DISTINCT"
	" pg_catalog.lower(r[1]) AS name FROM pg_catalog.pg_proc p, pg_catalog.regexp_matches(p.prosrc,"
	" '''([A-Za-z_][A-Za-z0-9_$]*[.][A-Za-z_][A-Za-z0-9_$]*)''', 'g') AS r"
	" WHERE p.pronamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace,"
	" 'information_schema'::pg_catalog.regnamespace)) AS m"
	" WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_settings g WHERE g.name = m.name)";

void session_settings_sql(struct iobuf *sql, const struct strmap *set, const struct strmap *custom_pending,
			  const struct session_verify *verify)
{
	static const char head[] = "SELECT coalesce(pg_catalog.json_object_agg(name, setting), '{}') FROM ("
				   "SELECT name, pg_catalog.current_setting(name) AS setting FROM pg_catalog.pg_settings "
				   "WHERE source = 'session'";
	struct list_node *pos;
	int n = 0;

	if (verify) {
		struct iobuf user;
		char *text;
		int len;

		iobuf_init(&user);
		session_append_literal(&user, verify->user);
		iobuf_append_u8(&user, '\0');
		len = snprintf(NULL, 0, verify_head, (const char *)iobuf_head(&user), verify->prepared,
			       verify->listen_taken_over ? "" : verify_listen);
		text = xmalloc((size_t)len + 1);
		snprintf(text, (size_t)len + 1, verify_head, (const char *)iobuf_head(&user), verify->prepared,
			 verify->listen_taken_over ? "" : verify_listen);
		iobuf_append(sql, text, (size_t)len);
		free(text);
		iobuf_free(&user);
	}
	iobuf_append(sql, head, sizeof(head) - 1);
	if (verify)
		iobuf_append(sql, verify_catalog_names, sizeof(verify_catalog_names) - 1);
	/* Custom parameters are not in pg_settings: the ones the session has or touched, by name. */
	list_for_each(pos, &set->lru) {
		struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

		if (strchr(e->key, '.') == NULL || (custom_pending && params_get(custom_pending, e->key)))
			continue;
		settings_sql_name(sql, &n, e->key);
	}
	if (custom_pending) {
		list_for_each(pos, &custom_pending->lru) {
			struct strmap_entry *e = list_entry(pos, struct strmap_entry, lru);

			settings_sql_name(sql, &n, e->key);
		}
	}
	if (n > 0)
		iobuf_append(sql, "]::text[]) AS name", 18);
	/*
	 * A custom parameter that was never set, or RESET, reads as NULL or "":
	 * not the session's. (A built-in one SET to "" is then left out too; it
	 * is the default of every such parameter that a client may set.)
	 */
	iobuf_append(sql, ") AS s WHERE setting <> ''", 26);
	if (verify)
		iobuf_append(sql, ")::text END", 11);
	iobuf_append_u8(sql, '\0');
}

enum session_readback session_readback_parse(const char *answer, struct strmap *settings)
{
	json_error_t jerr;
	json_t *root;
	const char *name;
	json_t *value;

	if (answer == NULL)
		return SESSION_READBACK_MALFORMED;
	/* The verification's answer is a reason when the session holds what pgmux cannot carry. */
	if (answer[0] != '{' && answer[0] != '\0')
		return SESSION_READBACK_REFUSED;
	root = json_loads(answer, 0, &jerr);
	if (root == NULL || !json_is_object(root)) {
		json_decref(root);
		return SESSION_READBACK_MALFORMED;
	}
	params_clear(settings);
	json_object_foreach(root, name, value) {
		/* The reported ones follow ParameterStatus. */
		if (json_is_string(value) && params_carried_index(name) < 0)
			params_put(settings, name, json_string_value(value));
	}
	json_decref(root);
	return SESSION_READBACK_SETTINGS;
}

void session_readback_pin(enum session_readback outcome, const char *answer, struct sql_scan_result *pin)
{
	memset(pin, 0, sizeof(*pin));
	if (outcome == SESSION_READBACK_REFUSED) {
		pin->pin = SQL_PIN_OTHER_SESSION_STATE;
		snprintf(pin->pin_detail, sizeof(pin->pin_detail), "%s", answer);
	} else {
		pin->pin = SQL_PIN_SET;
		snprintf(pin->pin_detail, sizeof(pin->pin_detail), "its settings could not be read back");
	}
}
