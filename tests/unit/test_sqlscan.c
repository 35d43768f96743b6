/*
 * test_sqlscan.c: unit tests for src/sqlscan.c: every pinning cause, the
 * look-alikes that must not pin (strings, comments, quoted names, dollar
 * quotes, function bodies), statement splitting, effects, and truncated input
 * scanned from exact-length heap buffers so a sanitizer catches any over-read.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlnames.h"
#include "sqlscan.h"

/* ------------------------------------------------------------ helpers */

static const char *const tracked[] = {
	"search_path", "TimeZone", "client_encoding", "application_name", "DateStyle", NULL,
};

/*
 * Copies len bytes into a heap buffer of exactly that size with no terminator,
 * so reading one byte too far is a heap overflow under ASan or valgrind.
 */
static struct sql_scan_result scan_bytes_flags(const char *sql, size_t len, const char *const *tracked_names,
					       unsigned flags)
{
	struct sql_scan_result result;
	char *copy = malloc(len);

	cr_assert(len == 0 || copy != NULL);
	if (len > 0)
		memcpy(copy, sql, len);
	memset(&result, 0x5a, sizeof(result)); /* sql_scan must set every field */
	sql_scan(copy, len, tracked_names, flags, &result);
	free(copy);
	cr_assert_not_null(memchr(result.pin_detail, '\0', sizeof(result.pin_detail)), "pin_detail is not terminated");
	return result;
}

static struct sql_scan_result scan_bytes(const char *sql, size_t len, const char *const *tracked_names)
{
	return scan_bytes_flags(sql, len, tracked_names, 0);
}

static struct sql_scan_result scan_with(const char *sql, const char *const *tracked_names)
{
	return scan_bytes(sql, strlen(sql), tracked_names);
}

/* What these tests check of the effects; SQL_EFFECT_WRITE and _DEFINES_CODE have tests of their own. */
#define CHECKED_EFFECTS (~(unsigned)(SQL_EFFECT_WRITE | SQL_EFFECT_DEFINES_CODE))

/* Checks everything sql_scan reports for one text. */
static void check(const char *sql, enum sql_pin_reason pin, const char *detail, unsigned effects, int statements)
{
	struct sql_scan_result r = scan_with(sql, tracked);

	r.effects &= CHECKED_EFFECTS;
	cr_assert_eq(r.pin, pin, "[%s]: pin %d (\"%s\"), expected %d", sql, r.pin, r.pin_detail, pin);
	cr_assert_str_eq(r.pin_detail, detail, "[%s]: detail \"%s\", expected \"%s\"", sql, r.pin_detail, detail);
	cr_assert_eq(r.effects, effects, "[%s]: effects 0x%x, expected 0x%x", sql, r.effects, effects);
	cr_assert_eq(r.statements, statements, "[%s]: %d statements, expected %d", sql, r.statements, statements);
}

/* One statement that pins with no effects. */
static void pins(const char *sql, enum sql_pin_reason pin, const char *detail)
{
	check(sql, pin, detail, 0, 1);
}

/* One statement that neither pins nor has effects. */
static void harmless(const char *sql)
{
	check(sql, SQL_PIN_NONE, "", 0, 1);
}

/* ------------------------------------------------------------ PREPARE / EXECUTE / DEALLOCATE */

Test(sqlscan_prepared, prepare_pins_with_statement_name)
{
	pins("PREPARE q1 (int) AS SELECT $1", SQL_PIN_PREPARE, "q1");
	pins("prepare Q2 as select 1", SQL_PIN_PREPARE, "q2");
	pins("PREPARE \"MixedCase\" AS SELECT 1", SQL_PIN_PREPARE, "MixedCase");
}

Test(sqlscan_prepared, prepare_transaction_is_transaction_control)
{
	check("PREPARE TRANSACTION 'gid-1'", SQL_PIN_NONE, "", SQL_EFFECT_TRANSACTION_CONTROL, 1);
}

Test(sqlscan_prepared, execute_pins_even_under_explain)
{
	pins("EXECUTE q1(42)", SQL_PIN_EXECUTE, "q1");
	pins("EXPLAIN EXECUTE q1(42)", SQL_PIN_EXECUTE, "q1");
	pins("EXPLAIN ANALYZE EXECUTE q1", SQL_PIN_EXECUTE, "q1");
	pins("EXPLAIN (ANALYZE, BUFFERS) EXECUTE q1", SQL_PIN_EXECUTE, "q1");
}

Test(sqlscan_prepared, deallocate_name_pins)
{
	pins("DEALLOCATE q1", SQL_PIN_DEALLOCATE, "q1");
	pins("DEALLOCATE PREPARE q1", SQL_PIN_DEALLOCATE, "q1");
	pins("deallocate \"All\"", SQL_PIN_DEALLOCATE, "All");
}

Test(sqlscan_prepared, deallocate_all_is_an_effect)
{
	check("DEALLOCATE ALL", SQL_PIN_NONE, "", SQL_EFFECT_DEALLOCATE_ALL, 1);
	check("deallocate prepare all", SQL_PIN_NONE, "", SQL_EFFECT_DEALLOCATE_ALL, 1);
}

/* ------------------------------------------------------------ temporary objects */

Test(sqlscan_temp, create_temp_forms_pin)
{
	pins("CREATE TEMP TABLE t (a int)", SQL_PIN_TEMP_OBJECT, "t");
	pins("CREATE TEMPORARY TABLE t (a int)", SQL_PIN_TEMP_OBJECT, "t");
	pins("CREATE GLOBAL TEMPORARY TABLE t (a int)", SQL_PIN_TEMP_OBJECT, "t");
	pins("CREATE LOCAL TEMP TABLE t (a int)", SQL_PIN_TEMP_OBJECT, "t");
	pins("CREATE TEMP SEQUENCE s", SQL_PIN_TEMP_OBJECT, "s");
	pins("CREATE TEMP VIEW v AS SELECT 1", SQL_PIN_TEMP_OBJECT, "v");
	pins("CREATE TEMP RECURSIVE VIEW v (n) AS SELECT 1", SQL_PIN_TEMP_OBJECT, "v");
	pins("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", SQL_PIN_TEMP_OBJECT, "v");
	pins("create temp table if not exists Scratch (a int)", SQL_PIN_TEMP_OBJECT, "scratch");
	pins("CREATE TEMP TABLE t AS SELECT * FROM big", SQL_PIN_TEMP_OBJECT, "t");
	pins("CREATE TEMP TABLE t (a int) ON COMMIT DROP", SQL_PIN_TEMP_OBJECT, "t");
}

Test(sqlscan_temp, permanent_tables_do_not_pin)
{
	harmless("CREATE UNLOGGED TABLE t (a int)");
	harmless("CREATE TABLE t (a int)");
	harmless("CREATE TABLE temp (a int)");
	harmless("CREATE TABLE t (temp int, temporary text)");
	harmless("CREATE TABLE t AS SELECT 1 AS temp");
}

Test(sqlscan_temp, pg_temp_schema_pins)
{
	pins("CREATE TABLE pg_temp.t (a int)", SQL_PIN_TEMP_OBJECT, "pg_temp.t");
	pins("CREATE TABLE IF NOT EXISTS PG_TEMP.T (a int)", SQL_PIN_TEMP_OBJECT, "pg_temp.t");
	pins("CREATE TABLE \"pg_temp\".\"T\" (a int)", SQL_PIN_TEMP_OBJECT, "pg_temp.T");
	pins("CREATE TABLE pg_temp_3.t (a int)", SQL_PIN_TEMP_OBJECT, "pg_temp_3.t");
	pins("CREATE VIEW pg_temp.v AS SELECT 1", SQL_PIN_TEMP_OBJECT, "pg_temp.v");
	pins("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", SQL_PIN_TEMP_OBJECT,
	     "pg_temp.f");
}

Test(sqlscan_temp, pg_temp_look_alikes_do_not_pin)
{
	harmless("SELECT * FROM pg_temp.t");
	harmless("CREATE TABLE pg_temporary.t (a int)");
	harmless("CREATE TABLE pg_temp_x.t (a int)");
	harmless("CREATE TABLE pg_temp_.t (a int)");
	harmless("CREATE TABLE t (a int) -- pg_temp.t");
}

Test(sqlscan_temp, select_into_temp_pins)
{
	pins("SELECT * INTO TEMP t FROM x", SQL_PIN_TEMP_OBJECT, "t");
	pins("SELECT * INTO TEMPORARY TABLE t FROM x", SQL_PIN_TEMP_OBJECT, "t");
	pins("select 1 as a into temp table \"T\"", SQL_PIN_TEMP_OBJECT, "T");
	pins("WITH w AS (SELECT 1) SELECT * INTO TEMP t FROM w", SQL_PIN_TEMP_OBJECT, "t");
	pins("(SELECT 1 INTO TEMP t)", SQL_PIN_TEMP_OBJECT, "t");
	pins("EXPLAIN ANALYZE SELECT 1 INTO TEMP t", SQL_PIN_TEMP_OBJECT, "t");
}

Test(sqlscan_temp, select_into_look_alikes_do_not_pin)
{
	harmless("SELECT * INTO t FROM x");
	harmless("SELECT * INTO UNLOGGED t FROM x");
	harmless("INSERT INTO temp VALUES (1)");
	harmless("INSERT INTO temp SELECT 1");
	harmless("WITH w AS (SELECT 1) INSERT INTO temp SELECT * FROM w");
	harmless("MERGE INTO temp t USING s ON t.id = s.id WHEN MATCHED THEN DO NOTHING");
	harmless("SELECT 'INTO TEMP t'");
	harmless("EXPLAIN SELECT 1 INTO TEMP t");
	harmless("EXPLAIN CREATE TEMP TABLE t AS SELECT 1");
}

/* ------------------------------------------------------------ cursors */

Test(sqlscan_cursor, with_hold_pins)
{
	pins("DECLARE c CURSOR WITH HOLD FOR SELECT 1", SQL_PIN_CURSOR_WITH_HOLD, "c");
	pins("DECLARE c BINARY INSENSITIVE NO SCROLL CURSOR WITH HOLD FOR SELECT 1", SQL_PIN_CURSOR_WITH_HOLD, "c");
	pins("declare \"Cur\" asensitive scroll cursor with hold for select 1", SQL_PIN_CURSOR_WITH_HOLD, "Cur");
}

Test(sqlscan_cursor, without_hold_does_not_pin)
{
	harmless("DECLARE c CURSOR FOR SELECT 1");
	harmless("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1");
	harmless("DECLARE c SCROLL CURSOR FOR SELECT 1");
	harmless("DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold");
	harmless("EXPLAIN DECLARE c CURSOR WITH HOLD FOR SELECT 1");
}

/* ------------------------------------------------------------ LISTEN / LOAD */

Test(sqlscan_listen, listen_pins_with_channel)
{
	pins("LISTEN jobs", SQL_PIN_LISTEN, "jobs");
	pins("LiStEn Jobs", SQL_PIN_LISTEN, "jobs");
	pins("LISTEN \"Jobs\"", SQL_PIN_LISTEN, "Jobs");
}

/* With SQL_SCAN_LISTEN_HELD (transaction pooling: the LISTEN is taken over at its transaction's end), no pin. */
Test(sqlscan_listen, listen_held_is_an_effect)
{
	struct sql_scan_result r;
	const char *sql = "BEGIN; LISTEN jobs; PREPARE p AS SELECT 1";

	sql_scan(sql, strlen(sql), NULL, SQL_SCAN_LISTEN_HELD, &r);
	cr_assert(r.effects & SQL_EFFECT_LISTEN);
	/* Another cause after it still pins. */
	cr_assert_eq(r.pin, SQL_PIN_PREPARE);
	sql = "LISTEN jobs; SELECT 1";
	sql_scan(sql, strlen(sql), NULL, SQL_SCAN_LISTEN_HELD, &r);
	cr_assert(r.effects & SQL_EFFECT_LISTEN);
	cr_assert_eq(r.pin, SQL_PIN_NONE);
	sql_scan(sql, strlen(sql), NULL, 0, &r);
	cr_assert_eq(r.pin, SQL_PIN_LISTEN);
	cr_assert_eq(r.effects & SQL_EFFECT_LISTEN, 0);
}

Test(sqlscan_listen, unlisten_is_an_effect)
{
	check("UNLISTEN jobs", SQL_PIN_NONE, "", SQL_EFFECT_UNLISTEN, 1);
	check("UNLISTEN *", SQL_PIN_NONE, "", SQL_EFFECT_UNLISTEN, 1);
}

Test(sqlscan_listen, notify_does_not_pin)
{
	harmless("NOTIFY jobs, 'LISTEN'");
	harmless("SELECT pg_notify('jobs', 'x')");
}

Test(sqlscan_load, load_pins_with_library)
{
	pins("LOAD 'auto_explain'", SQL_PIN_LOAD, "auto_explain");
	pins("load '$libdir/plugins/it''s'", SQL_PIN_LOAD, "$libdir/plugins/it's");
}

/* ------------------------------------------------------------ advisory locks */

Test(sqlscan_advisory, session_level_calls_pin)
{
	pins("SELECT pg_advisory_lock(1)", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
	pins("SELECT pg_advisory_lock_shared(1, 2)", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock_shared");
	pins("SELECT pg_try_advisory_lock(1)", SQL_PIN_ADVISORY_LOCK, "pg_try_advisory_lock");
	pins("SELECT pg_try_advisory_lock_shared(1)", SQL_PIN_ADVISORY_LOCK, "pg_try_advisory_lock_shared");
	pins("SELECT pg_catalog.pg_advisory_lock(1)", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
	pins("SELECT \"pg_catalog\".\"pg_advisory_lock\"(1)", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
	pins("sElEcT PG_Advisory_Lock(1)", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
}

Test(sqlscan_advisory, call_found_anywhere_in_the_statement)
{
	pins("SELECT id FROM jobs WHERE pg_try_advisory_lock(id) LIMIT 1", SQL_PIN_ADVISORY_LOCK,
	     "pg_try_advisory_lock");
	pins("SELECT pg_advisory_lock /* why */ -- not\n (1)", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
	pins("WITH l AS (SELECT pg_advisory_lock(1)) SELECT * FROM l", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
	pins("((SELECT pg_advisory_lock(1)))", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
	pins("UPDATE t SET locked = pg_try_advisory_lock(t.id)", SQL_PIN_ADVISORY_LOCK, "pg_try_advisory_lock");
	pins("COPY (SELECT pg_advisory_lock(1)) TO STDOUT", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
}

Test(sqlscan_advisory, explain_pins_only_when_it_runs)
{
	pins("EXPLAIN ANALYZE SELECT pg_advisory_lock(1)", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
	pins("EXPLAIN ANALYSE VERBOSE SELECT pg_advisory_lock(1)", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
	pins("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT pg_advisory_lock(1)", SQL_PIN_ADVISORY_LOCK,
	     "pg_advisory_lock");
	pins("EXPLAIN (FORMAT TEXT, ANALYZE on) SELECT pg_advisory_lock(1)", SQL_PIN_ADVISORY_LOCK,
	     "pg_advisory_lock");
	harmless("EXPLAIN SELECT pg_advisory_lock(1)");
	harmless("EXPLAIN VERBOSE SELECT pg_advisory_lock(1)");
	harmless("EXPLAIN (ANALYZE false) SELECT pg_advisory_lock(1)");
	harmless("EXPLAIN (ANALYZE off, COSTS on) SELECT pg_advisory_lock(1)");
	harmless("EXPLAIN (FORMAT JSON) SELECT pg_advisory_lock(1)");
}

Test(sqlscan_advisory, look_alikes_do_not_pin)
{
	harmless("SELECT pg_advisory_xact_lock(1)");
	harmless("SELECT pg_advisory_xact_lock_shared(1)");
	harmless("SELECT pg_try_advisory_xact_lock(1)");
	harmless("SELECT pg_try_advisory_xact_lock_shared(1)");
	harmless("SELECT pg_advisory_unlock(1), pg_advisory_unlock_all()");
	harmless("SELECT pg_advisory_lock FROM t");
	harmless("SELECT 'pg_advisory_lock(1)'");
	harmless("SELECT 1 /* pg_advisory_lock(1) */");
	/* Not the built-in (names in quotes keep their case): somebody else's function. */
	check("SELECT \"PG_ADVISORY_LOCK\"(1)", SQL_PIN_NONE, "", SQL_EFFECT_OPAQUE, 1);
	check("SELECT myschema.pg_advisory_lock(1)", SQL_PIN_NONE, "", SQL_EFFECT_OPAQUE, 1);
	check("SELECT my_pg_advisory_lock(1)", SQL_PIN_NONE, "", SQL_EFFECT_OPAQUE, 1);
	harmless("DROP FUNCTION pg_advisory_lock(bigint)");
	harmless("GRANT EXECUTE ON FUNCTION pg_catalog.pg_advisory_lock(bigint) TO app");
	harmless("CREATE VIEW v AS SELECT pg_advisory_lock(1)");
	harmless("CREATE FUNCTION f() RETURNS void LANGUAGE sql RETURN pg_advisory_lock(1)");
}

/* ------------------------------------------------------------ SET */

Test(sqlscan_set, tracked_parameter_is_an_effect)
{
	check("SET search_path = app, public", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	check("SET SEARCH_PATH TO app", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	check("SET SESSION search_path TO DEFAULT", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	check("SET \"search_path\" = app", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	check("set datestyle = iso", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	check("SET TIME ZONE 'UTC'", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	check("SET timezone TO 'UTC'", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	check("SET NAMES 'UTF8'", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	check("SET SCHEMA 'app'", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
}

Test(sqlscan_set, untracked_parameter_pins)
{
	pins("SET work_mem = '64MB'", SQL_PIN_SET, "work_mem");
	pins("SET SESSION work_mem TO 1024", SQL_PIN_SET, "work_mem");
	pins("SET Statement_Timeout = 0", SQL_PIN_SET, "statement_timeout");
	pins("SET \"work_mem\" = 1", SQL_PIN_SET, "work_mem");
	pins("SET myapp.user_id = 5", SQL_PIN_SET, "myapp.user_id");
	pins("SET \"MyApp\".User_Id TO 5", SQL_PIN_SET, "MyApp.user_id");
	pins("SET XML OPTION DOCUMENT", SQL_PIN_SET, "xmloption");
	pins("SET work_mem FROM CURRENT", SQL_PIN_SET, "work_mem");
}

Test(sqlscan_set, role_and_authorization_pin)
{
	pins("SET ROLE admin", SQL_PIN_SET, "role");
	pins("SET role = 'admin'", SQL_PIN_SET, "role");
	pins("SET SESSION ROLE admin", SQL_PIN_SET, "role");
	pins("SET SESSION AUTHORIZATION bob", SQL_PIN_SET, "session_authorization");
	pins("SET SESSION SESSION AUTHORIZATION DEFAULT", SQL_PIN_SET, "session_authorization");
}

Test(sqlscan_set, session_characteristics_pin)
{
	pins("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", SQL_PIN_SET,
	     "default_transaction_isolation");
	pins("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", SQL_PIN_SET, "default_transaction_read_only");
	pins("SET SESSION CHARACTERISTICS AS TRANSACTION NOT DEFERRABLE", SQL_PIN_SET,
	     "default_transaction_deferrable");
	pins("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE", SQL_PIN_SET,
	     "default_transaction_isolation");
}

Test(sqlscan_set, transaction_scoped_forms_do_not_pin)
{
	harmless("SET LOCAL work_mem = '1GB'");
	harmless("SET LOCAL search_path = app");
	harmless("SET LOCAL ROLE admin");
	harmless("SET LOCAL SESSION AUTHORIZATION bob");
	harmless("SET LOCAL TIME ZONE 'UTC'");
	harmless("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
	harmless("SET SESSION TRANSACTION READ ONLY");
	harmless("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'");
	harmless("SET CONSTRAINTS ALL DEFERRED");
}

Test(sqlscan_set, tracked_list_is_case_insensitive_and_optional)
{
	static const char *const custom[] = {"MyApp.User_Id", NULL};
	struct sql_scan_result r = scan_with("SET myapp.user_id = 5", custom);

	cr_assert_eq(r.pin, SQL_PIN_NONE);
	cr_assert_eq(r.effects, SQL_EFFECT_SET_TRACKED);

	r = scan_with("SET TIME ZONE 'UTC'", NULL);
	cr_assert_eq(r.pin, SQL_PIN_SET);
	cr_assert_str_eq(r.pin_detail, "timezone");
	cr_assert_eq(r.effects, 0);
}

Test(sqlscan_set, long_names_are_compared_in_full_and_truncated_in_detail)
{
	char sql[400];
	char name[301];
	const char *custom[] = {name, NULL};
	struct sql_scan_result r;

	/* A 102-byte name: the detail holds only its first 63 bytes. */
	memset(name, 'p', 100);
	name[100] = '\0';
	snprintf(sql, sizeof(sql), "SET x.%s = 1", name);
	r = scan_with(sql, tracked);
	cr_assert_eq(r.pin, SQL_PIN_SET);
	cr_assert_eq(strlen(r.pin_detail), sizeof(r.pin_detail) - 1);
	cr_assert(strncmp(r.pin_detail, "x.ppp", 5) == 0);

	/* Tracking the truncated detail does not track the whole name... */
	memcpy(name, r.pin_detail, sizeof(r.pin_detail));
	r = scan_with(sql, custom);
	cr_assert_eq(r.pin, SQL_PIN_SET);

	/* ...but tracking the whole name does. */
	name[0] = 'X';
	name[1] = '.';
	memset(name + 2, 'P', 100);
	name[102] = '\0';
	r = scan_with(sql, custom);
	cr_assert_eq(r.pin, SQL_PIN_NONE);
	cr_assert_eq(r.effects, SQL_EFFECT_SET_TRACKED);

	/* A name too long to hold is never tracked, even if a prefix of it is. */
	memset(name, 'q', 300);
	name[300] = '\0';
	snprintf(sql, sizeof(sql), "SET %s = 1", name);
	name[255] = '\0';
	r = scan_with(sql, custom);
	cr_assert_eq(r.pin, SQL_PIN_SET);
	name[255] = 'q';
	r = scan_with(sql, custom);
	cr_assert_eq(r.pin, SQL_PIN_SET, "names longer than the scanner holds always pin");
}

Test(sqlscan_set, set_config_session_pins)
{
	pins("SELECT set_config('myapp.user_id', '5', false)", SQL_PIN_SET, "myapp.user_id");
	pins("SELECT pg_catalog.set_config('work_mem', '1GB', FALSE)", SQL_PIN_SET, "work_mem");
	pins("SELECT set_config('a', 'b, c', 'off')", SQL_PIN_SET, "a");
	pins("SELECT set_config('a', concat('x', 'y'), false)", SQL_PIN_SET, "a");
	pins("SELECT set_config('a', set_config('b', 'c', true), false)", SQL_PIN_SET, "a");
	pins("SELECT set_config($1, $2, false)", SQL_PIN_SET, "set_config");
	pins("SELECT set_config /* c */ ( 'a' , 'b' , false )", SQL_PIN_SET, "a");
	pins("SELECT set_config(E'my\\'app', 'b', false)", SQL_PIN_SET, "my'app");
}

Test(sqlscan_set, set_config_local_or_tracked_does_not_pin)
{
	harmless("SELECT set_config('myapp.user_id', '5', true)");
	harmless("SELECT set_config('a', 'false', true)");
	/* Anything but a literal true may be false: a session SET (issue 16: set_config(.., 1=0) leaked). */
	pins("SELECT set_config('a', 'b', $3)", SQL_PIN_SET, "a");
	pins("SELECT set_config('a', 'b', false AND x)", SQL_PIN_SET, "a");
	pins("SELECT set_config('a', 'b', 1=0)", SQL_PIN_SET, "a");
	harmless("SELECT set_config('a', 'b', 'on')");
	harmless("SELECT current_setting('a'), 'set_config(''a'',''b'',false)'");
	check("SELECT set_config('search_path', 'app', false)", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	harmless("SELECT set_config('search_path', 'app', true)");
	harmless("CREATE FUNCTION f() RETURNS text LANGUAGE sql RETURN set_config('a', 'b', false)");
}

/* ------------------------------------------------------------ code pgmux cannot read */

/* One statement that runs code pgmux cannot read, and does not pin. */
static void opaque(const char *sql)
{
	check(sql, SQL_PIN_NONE, "", SQL_EFFECT_OPAQUE, 1);
}

Test(sqlscan_opaque, calls_of_other_functions_are_opaque)
{
	opaque("SELECT public.set_tenant('42')");
	opaque("SELECT set_tenant('42')");
	opaque("SELECT \"Now\"()");
	opaque("SELECT x FROM my_srf(1) AS t");
	opaque("INSERT INTO t (a) VALUES (app.next_id())");
	opaque("SELECT pg_catalog.now(), audit.log('x')");
	opaque("CALL refresh_all()");
	opaque("call app.p(1, 2)");
	opaque("DO 'BEGIN NULL; END'");
	opaque("DO LANGUAGE plpgsql $$ BEGIN PERFORM 1; END $$");
	opaque("SELECT setseed(0.5)");
	opaque("SELECT query_to_xml('SET ROLE x', true, true, '')");
	/* A function's own body is not run by defining it. */
	harmless("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT g()'");
}

Test(sqlscan_opaque, syntax_and_builtin_functions_are_not)
{
	harmless("SELECT now(), count(*), coalesce(a, 1), lower(b), pg_catalog.upper(c) FROM t");
	harmless("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)");
	harmless("INSERT INTO public.t(a, b) SELECT a, b FROM u WHERE a IN (1, 2) AND EXISTS (SELECT 1)");
	harmless("UPDATE t SET (a, b) = (1, 2) WHERE c = ANY($1)");
	harmless("SELECT count(*) FILTER (WHERE a > 1) OVER (PARTITION BY b) FROM t");
	harmless("SELECT x::numeric(10, 2), CAST(y AS varchar(20)), ROW(1, 2), ARRAY(SELECT 1) FROM t");
	harmless("SELECT * FROM generate_series(1, 3) AS g(i) JOIN t USING (i)");
	harmless("WITH c (a) AS (SELECT 1) SELECT a FROM c");
	harmless("INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO NOTHING");
	harmless("SELECT nextval('s'), substring(a FROM 1 FOR 2), extract(epoch FROM now()) FROM t");
	harmless("CREATE TABLE t (a int CHECK (a > 0), PRIMARY KEY (a))");
	harmless("CREATE INDEX i ON t USING btree (a)");
	harmless("COPY t (a, b) FROM STDIN");
}

Test(sqlscan_opaque, do_block_text_is_read_for_custom_names_and_pins)
{
	struct sql_scan_result r = scan_bytes_flags(
		"DO $$ BEGIN PERFORM set_config('app.tenant', '42', false); END $$",
		strlen("DO $$ BEGIN PERFORM set_config('app.tenant', '42', false); END $$"), tracked, SQL_SCAN_CARRY_SETS);

	cr_assert_eq(r.pin, SQL_PIN_NONE);
	cr_assert_eq(r.effects, SQL_EFFECT_OPAQUE | SQL_EFFECT_SET_SESSION, "effects 0x%x", r.effects);
	cr_assert_eq(r.n_custom, 1);
	cr_assert_str_eq(r.custom[0], "app.tenant");
	/* What pins in SQL pins in a block too; a name pgmux cannot read pins. */
	check("DO $$ BEGIN CREATE TEMP TABLE x (a int); END $$", SQL_PIN_TEMP_OBJECT, "x", SQL_EFFECT_OPAQUE, 1);
	check("DO $$ BEGIN PERFORM set_config(n, '1', false); END $$", SQL_PIN_SET, "set_config", SQL_EFFECT_OPAQUE,
	      1);
}

/* Whether sql reports the effect bit. */
static bool has_effect(const char *sql, unsigned bit)
{
	return (scan_with(sql, tracked).effects & bit) != 0;
}

Test(sqlscan_opaque, writes_and_code_definitions_are_reported)
{
	cr_assert(has_effect("INSERT INTO t VALUES (1)", SQL_EFFECT_WRITE));
	cr_assert(has_effect("update t set a = 1", SQL_EFFECT_WRITE));
	cr_assert(has_effect("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", SQL_EFFECT_WRITE));
	cr_assert(has_effect("COPY t FROM STDIN", SQL_EFFECT_WRITE));
	cr_assert(has_effect("TRUNCATE t", SQL_EFFECT_WRITE));
	cr_assert(!has_effect("SELECT 'insert' FROM t", SQL_EFFECT_WRITE));
	cr_assert(!has_effect("EXPLAIN UPDATE t SET a = 1", SQL_EFFECT_WRITE));
	cr_assert(!has_effect("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DELETE FROM t'", SQL_EFFECT_WRITE));
	cr_assert(has_effect("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SELECT 1'", SQL_EFFECT_DEFINES_CODE));
	cr_assert(has_effect("create or replace procedure p() language sql as 'select 1'", SQL_EFFECT_DEFINES_CODE));
	cr_assert(has_effect("CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()",
			     SQL_EFFECT_DEFINES_CODE));
	cr_assert(has_effect("CREATE EXTENSION pgcrypto", SQL_EFFECT_DEFINES_CODE));
	cr_assert(has_effect("ALTER FUNCTION f() SECURITY DEFINER", SQL_EFFECT_DEFINES_CODE));
	cr_assert(!has_effect("CREATE TABLE function_log (a int)", SQL_EFFECT_DEFINES_CODE));
}

Test(sqlscan_opaque, name_lists_are_sorted)
{
	for (size_t i = 1; i < sqlnames_keywords_count; i++)
		cr_assert(strcmp(sqlnames_keywords[i - 1], sqlnames_keywords[i]) < 0, "keywords: %s before %s",
			  sqlnames_keywords[i - 1], sqlnames_keywords[i]);
	for (size_t i = 1; i < sqlnames_functions_count; i++)
		cr_assert(strcmp(sqlnames_functions[i - 1], sqlnames_functions[i]) < 0, "functions: %s before %s",
			  sqlnames_functions[i - 1], sqlnames_functions[i]);
}

/* With SQL_SCAN_CARRY_SETS: what the scan reports for sql. */
static void check_carrying(const char *sql, enum sql_pin_reason pin, const char *detail, unsigned effects)
{
	struct sql_scan_result r = scan_bytes_flags(sql, strlen(sql), tracked, SQL_SCAN_CARRY_SETS);

	r.effects &= CHECKED_EFFECTS;
	cr_assert_eq(r.pin, pin, "[%s]: pin %d (\"%s\"), expected %d", sql, r.pin, r.pin_detail, pin);
	cr_assert_str_eq(r.pin_detail, detail, "[%s]: detail \"%s\", expected \"%s\"", sql, r.pin_detail, detail);
	cr_assert_eq(r.effects, effects, "[%s]: effects 0x%x, expected 0x%x", sql, r.effects, effects);
}

Test(sqlscan_set, carried_sets_do_not_pin)
{
	check_carrying("SET work_mem = '64MB'", SQL_PIN_NONE, "", SQL_EFFECT_SET_SESSION);
	check_carrying("SET SESSION statement_timeout TO 1000", SQL_PIN_NONE, "", SQL_EFFECT_SET_SESSION);
	check_carrying("SET myapp.user_id = 5", SQL_PIN_NONE, "", SQL_EFFECT_SET_SESSION);
	check_carrying("SET XML OPTION DOCUMENT", SQL_PIN_NONE, "", SQL_EFFECT_SET_SESSION);
	check_carrying("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", SQL_PIN_NONE, "",
		       SQL_EFFECT_SET_SESSION);
	check_carrying("SELECT set_config('myapp.user_id', '5', false)", SQL_PIN_NONE, "", SQL_EFFECT_SET_SESSION);
	check_carrying("SELECT set_config('app.tenant', '42', 1=0)", SQL_PIN_NONE, "", SQL_EFFECT_SET_SESSION);
	check_carrying("RESET work_mem", SQL_PIN_NONE, "", SQL_EFFECT_SET_SESSION);
	check_carrying("SET work_mem TO DEFAULT", SQL_PIN_NONE, "", SQL_EFFECT_SET_SESSION);
	/* Tracked ones stay tracked; SET LOCAL is nothing either way. */
	check_carrying("SET search_path = app", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED);
	check_carrying("SET LOCAL work_mem = '1GB'", SQL_PIN_NONE, "", 0);
	check_carrying("SET search_path = a; SET work_mem = 1", SQL_PIN_NONE, "",
		       SQL_EFFECT_SET_TRACKED | SQL_EFFECT_SET_SESSION);
}

Test(sqlscan_set, carried_custom_parameters_are_listed_by_name)
{
	struct sql_scan_result r = scan_bytes_flags(
		"SET MyApp.Tenant = 1; SELECT set_config('myapp.user', 'x', false); RESET \"A\".b; SET work_mem = 1; "
		"SET myapp.tenant = 2",
		strlen("SET MyApp.Tenant = 1; SELECT set_config('myapp.user', 'x', false); RESET \"A\".b; SET work_mem = 1; "
		       "SET myapp.tenant = 2"),
		tracked, SQL_SCAN_CARRY_SETS);

	cr_assert_eq(r.pin, SQL_PIN_NONE);
	cr_assert_eq(r.n_custom, 3, "%d custom names", r.n_custom);
	cr_assert_str_eq(r.custom[0], "myapp.tenant");
	cr_assert_str_eq(r.custom[1], "myapp.user");
	cr_assert_str_eq(r.custom[2], "a.b");
	cr_assert(!r.custom_overflow);

	const char *many = "SET a.a = 1; SET b.b = 1; SET c.c = 1; SET d.d = 1; SET e.e = 1";
	r = scan_bytes_flags(many, strlen(many), tracked, SQL_SCAN_CARRY_SETS);
	cr_assert_eq(r.n_custom, SQL_SCAN_MAX_CUSTOM);
	cr_assert(r.custom_overflow, "a fifth custom name is not reported as overflow");

	r = scan_bytes_flags("SET work_mem = 1", 16, tracked, SQL_SCAN_CARRY_SETS);
	cr_assert_eq(r.n_custom, 0);
	cr_assert(!r.custom_overflow);
}

Test(sqlscan_set, carrying_still_pins_identity_and_unknown_names)
{
	check_carrying("SET ROLE admin", SQL_PIN_SET, "role", 0);
	check_carrying("SET SESSION AUTHORIZATION bob", SQL_PIN_SET, "session_authorization", 0);
	check_carrying("SELECT set_config('Role', 'admin', false)", SQL_PIN_SET, "Role", 0);
	check_carrying("SELECT set_config($1, $2, false)", SQL_PIN_SET, "set_config", 0);
	check_carrying("UPDATE pg_settings SET setting = '1GB' WHERE name = 'work_mem'", SQL_PIN_SET, "pg_settings", 0);
	/* Any other pin in the text still pins. */
	check_carrying("SET work_mem = 1; LISTEN x", SQL_PIN_LISTEN, "x", SQL_EFFECT_SET_SESSION);

	char sql[400];
	memset(sql, 0, sizeof(sql));
	memcpy(sql, "SET ", 4);
	memset(sql + 4, 'q', 300);
	memcpy(sql + 304, " = 1", 4);
	struct sql_scan_result r = scan_bytes_flags(sql, strlen(sql), tracked, SQL_SCAN_CARRY_SETS);
	cr_assert_eq(r.pin, SQL_PIN_SET, "a name longer than the scanner holds is not carried");
}

Test(sqlscan_set, update_pg_settings_pins)
{
	pins("UPDATE pg_settings SET setting = '1GB' WHERE name = 'work_mem'", SQL_PIN_SET, "pg_settings");
	pins("UPDATE ONLY pg_catalog.pg_settings SET setting = 'x'", SQL_PIN_SET, "pg_settings");
	harmless("UPDATE my_settings SET setting = 'x'");
}

/* ------------------------------------------------------------ RESET / DISCARD / transactions */

Test(sqlscan_reset, reset_never_pins)
{
	harmless("RESET work_mem");
	harmless("RESET myapp.user_id");
	harmless("RESET ROLE");
	harmless("RESET SESSION AUTHORIZATION");
	check("RESET search_path", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	check("RESET TIME ZONE", SQL_PIN_NONE, "", SQL_EFFECT_SET_TRACKED, 1);
	check("RESET ALL", SQL_PIN_NONE, "", SQL_EFFECT_RESET_ALL, 1);
	check("reset all", SQL_PIN_NONE, "", SQL_EFFECT_RESET_ALL, 1);
}

Test(sqlscan_reset, discard)
{
	check("DISCARD ALL", SQL_PIN_NONE, "", SQL_EFFECT_DISCARD_ALL, 1);
	harmless("DISCARD PLANS");
	harmless("DISCARD SEQUENCES");
	harmless("DISCARD TEMP");
	harmless("DISCARD TEMPORARY");
}

Test(sqlscan_reset, transaction_control_is_reported)
{
	static const char *const texts[] = {
		"BEGIN", "BEGIN ISOLATION LEVEL SERIALIZABLE", "START TRANSACTION READ ONLY", "COMMIT", "COMMIT AND CHAIN",
		"ROLLBACK", "END", "ABORT", "SAVEPOINT s1", "RELEASE SAVEPOINT s1", "RELEASE s1",
		"ROLLBACK TO SAVEPOINT s1", "COMMIT PREPARED 'gid'", "ROLLBACK PREPARED 'gid'", "begin work",
	};

	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
		check(texts[i], SQL_PIN_NONE, "", SQL_EFFECT_TRANSACTION_CONTROL, 1);
}

/* ------------------------------------------------------------ lexing */

Test(sqlscan_lexer, keywords_inside_strings_do_not_count)
{
	harmless("SELECT 'PREPARE p AS SELECT 1'");
	harmless("SELECT 'it''s; LISTEN x'");
	harmless("SELECT N'LISTEN x', B'1010', X'1F'");
	harmless("SELECT U&'d\\0061t\\+000061; LISTEN x'");
	harmless("SELECT 'a'\n'b; LISTEN x'");
}

Test(sqlscan_lexer, escape_strings_honour_backslash_quote)
{
	harmless("SELECT E'\\'; LISTEN x'");
	harmless("SELECT e'\\\\'' ; LISTEN x'");
	check("SELECT E'\\\\'; LISTEN x", SQL_PIN_LISTEN, "x", 0, 2);
}

Test(sqlscan_lexer, plain_strings_treat_backslash_as_literal)
{
	check("SELECT '\\'; LISTEN x", SQL_PIN_LISTEN, "x", 0, 2);
	check("SELECT 'C:\\path\\'; PREPARE p AS SELECT 1", SQL_PIN_PREPARE, "p", 0, 2);
}

Test(sqlscan_lexer, quoted_identifiers_are_never_keywords)
{
	harmless("SELECT 1 AS \"LISTEN\"");
	harmless("SELECT \"LISTEN\" FROM t");
	harmless("SELECT 1 AS \"a\"\"; LISTEN x\"");
	harmless("SELECT U&\"LISTEN\" FROM t");
	harmless("\"LISTEN\" x");
}

Test(sqlscan_lexer, keywords_must_be_whole_tokens)
{
	harmless("SELECT listen_count, prepared_xacts, execute_time, loader FROM stats");
	harmless("SELECT * FROM pg_prepared_xacts");
	harmless("SELECT listener, unlistened FROM t");
	harmless("listener");
	harmless("prepared_xacts");
	harmless("settings");
	harmless("SELECT 1 AS listen");
}

Test(sqlscan_lexer, comments_hide_keywords)
{
	harmless("-- LISTEN x\nSELECT 1");
	harmless("SELECT 1 -- ; LISTEN x");
	harmless("SELECT 1 -- ; LISTEN x\r");
	harmless("/* LISTEN x; */ SELECT 1");
	harmless("/* outer /* inner */ LISTEN x; */ SELECT 1");
	harmless("/* a /* b /* c */ */ ; LISTEN x */ SELECT 1");
	harmless("SELECT 1 +-- LISTEN\n 2");
	check("/* a /* b */ c */ LISTEN ch", SQL_PIN_LISTEN, "ch", 0, 1);
	check("/**/LISTEN ch/**/", SQL_PIN_LISTEN, "ch", 0, 1);
}

Test(sqlscan_lexer, dollar_quotes_hide_keywords_and_semicolons)
{
	harmless("SELECT $$; LISTEN x; $$");
	harmless("SELECT $tag$ $$ ; LISTEN x $tag$");
	harmless("SELECT $_t1$ $t1$ ; LISTEN x $_t1$");
	harmless("SELECT $a$ $ab$; LISTEN x $a$");
	check("SELECT $a$ $b$ ; $a$; LISTEN z", SQL_PIN_LISTEN, "z", 0, 2);
	check("SELECT $$$$; LISTEN z", SQL_PIN_LISTEN, "z", 0, 2);
}

Test(sqlscan_lexer, parameters_and_dollar_identifiers_are_not_quotes)
{
	check("SELECT $1; LISTEN x", SQL_PIN_LISTEN, "x", 0, 2);
	check("SELECT $1, $22 FROM t WHERE a = $1; LISTEN x", SQL_PIN_LISTEN, "x", 0, 2);
	check("SELECT a$$b FROM t; LISTEN x", SQL_PIN_LISTEN, "x", 0, 2);
	check("SELECT f$1$ FROM t; LISTEN x", SQL_PIN_LISTEN, "x", 0, 2);
	check("SELECT $ 1; LISTEN x", SQL_PIN_LISTEN, "x", 0, 2);
}

Test(sqlscan_lexer, semicolons_inside_parentheses_do_not_split)
{
	harmless("SELECT (1; LISTEN x)");
	check("SELECT (1)); LISTEN x", SQL_PIN_LISTEN, "x", 0, 2);
}

Test(sqlscan_lexer, function_bodies_are_not_scanned)
{
	harmless("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$\n"
		 "BEGIN\n"
		 "  PREPARE p AS SELECT 1; LISTEN x; PERFORM pg_advisory_lock(1);\n"
		 "  SET work_mem = '1GB'; CREATE TEMP TABLE t (a int);\n"
		 "END $$");
	harmless("CREATE OR REPLACE FUNCTION f() RETURNS void AS $body$ BEGIN LISTEN x; END; $body$ LANGUAGE plpgsql");
	harmless("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'LISTEN x; SELECT 1'");
	/* A DO block is code pgmux cannot run: opaque (what it leaves is verified), but not a pin. */
	check("DO $$ BEGIN EXECUTE 'LISTEN x'; END $$", SQL_PIN_NONE, "", SQL_EFFECT_OPAQUE, 1);
}

Test(sqlscan_lexer, begin_atomic_bodies_do_not_split)
{
	check("CREATE FUNCTION f() RETURNS int LANGUAGE sql\n"
	      "BEGIN ATOMIC\n"
	      "  SELECT 1;\n"
	      "  SELECT CASE WHEN true THEN 1 ELSE 2 END;\n"
	      "END; LISTEN x",
	      SQL_PIN_LISTEN, "x", 0, 2);
	check("CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END;"
	      "COMMIT",
	      SQL_PIN_NONE, "", SQL_EFFECT_TRANSACTION_CONTROL, 2);
}

Test(sqlscan_lexer, leading_noise_is_skipped)
{
	pins("  \t\r\n LISTEN x", SQL_PIN_LISTEN, "x");
	pins("-- hello\n/* there */ LISTEN x", SQL_PIN_LISTEN, "x");
	pins("(((LISTEN x)))", SQL_PIN_LISTEN, "x");
	pins("\f\vLISTEN\tx\n", SQL_PIN_LISTEN, "x");
}

Test(sqlscan_lexer, utf8_identifiers)
{
	harmless("SELECT 1 AS \xc3\xa9t\xc3\xa9");
	pins("LISTEN \xc3\xa9v\xc3\xa9nements", SQL_PIN_LISTEN, "\xc3\xa9v\xc3\xa9nements");
}

Test(sqlscan_lexer, long_utf8_detail_is_cut_between_characters)
{
	char sql[128] = "LISTEN ab";
	struct sql_scan_result r;

	for (int i = 0; i < 40; i++)
		strcat(sql, "\xc3\xa9");
	r = scan_with(sql, tracked);
	cr_assert_eq(r.pin, SQL_PIN_LISTEN);
	/* 63 bytes would end inside the 31st two-byte character, so 62 are kept. */
	cr_assert_eq(strlen(r.pin_detail), 62);
	cr_assert_eq((unsigned char)r.pin_detail[61], 0xa9);
}

/* ------------------------------------------------------------ several statements */

Test(sqlscan_multi, pinning_statement_second_or_third)
{
	check("SELECT 1; LISTEN x; SELECT 2", SQL_PIN_LISTEN, "x", 0, 3);
	check("SELECT 1; SELECT 2; PREPARE p AS SELECT 1", SQL_PIN_PREPARE, "p", 0, 3);
	check("SELECT 1;\nSELECT pg_advisory_lock(2)", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock", 0, 2);
	check("SET search_path = a; SET work_mem = 1", SQL_PIN_SET, "work_mem", SQL_EFFECT_SET_TRACKED, 2);
}

Test(sqlscan_multi, first_cause_wins)
{
	check("LISTEN a; PREPARE p AS SELECT 1", SQL_PIN_LISTEN, "a", 0, 2);
	check("SELECT set_config('a', 'b', false), pg_advisory_lock(1)", SQL_PIN_SET, "a", 0, 1);
	check("SELECT pg_advisory_lock(1), set_config('a', 'b', false)", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock",
	      0, 1);
	check("PREPARE p AS SELECT pg_advisory_lock(1)", SQL_PIN_PREPARE, "p", 0, 1);
}

Test(sqlscan_multi, effects_accumulate)
{
	check("BEGIN; SET search_path = x; UNLISTEN *; DISCARD ALL; DEALLOCATE ALL; RESET ALL; COMMIT", SQL_PIN_NONE,
	      "",
	      SQL_EFFECT_TRANSACTION_CONTROL | SQL_EFFECT_SET_TRACKED | SQL_EFFECT_UNLISTEN | SQL_EFFECT_DISCARD_ALL |
		      SQL_EFFECT_DEALLOCATE_ALL | SQL_EFFECT_RESET_ALL,
	      7);
	check("LISTEN x; COMMIT", SQL_PIN_LISTEN, "x", SQL_EFFECT_TRANSACTION_CONTROL, 2);
}

Test(sqlscan_multi, empty_statements_are_not_counted)
{
	check("", SQL_PIN_NONE, "", 0, 0);
	check("   \n\t ", SQL_PIN_NONE, "", 0, 0);
	check(";;;", SQL_PIN_NONE, "", 0, 0);
	check("-- only a comment", SQL_PIN_NONE, "", 0, 0);
	check("/* c */ ; /* d */ ;", SQL_PIN_NONE, "", 0, 0);
	check(";; SELECT 1;; ; SELECT 2 ;", SQL_PIN_NONE, "", 0, 2);
}

/* ------------------------------------------------------------ malformed and truncated input */

Test(sqlscan_malformed, unterminated_tokens_end_the_scan)
{
	check("SELECT 'abc", SQL_PIN_NONE, "", 0, 1);
	check("SELECT 'abc; LISTEN x", SQL_PIN_NONE, "", 0, 1);
	check("LISTEN x; SELECT 'abc", SQL_PIN_LISTEN, "x", 0, 2);
	check("SELECT E'abc\\", SQL_PIN_NONE, "", 0, 1);
	check("SELECT $$abc; LISTEN x", SQL_PIN_NONE, "", 0, 1);
	check("SELECT $t$abc $t", SQL_PIN_NONE, "", 0, 1);
	check("SELECT \"abc", SQL_PIN_NONE, "", 0, 1);
	check("/* abc", SQL_PIN_NONE, "", 0, 0);
	check("/* a /* b */ LISTEN x", SQL_PIN_NONE, "", 0, 0);
	check("LISTEN x /* unterminated", SQL_PIN_LISTEN, "x", 0, 1);
	check("SELECT 1 -- no newline", SQL_PIN_NONE, "", 0, 1);
	check("SELECT $ab", SQL_PIN_NONE, "", 0, 1);
	check("SELECT 1 /", SQL_PIN_NONE, "", 0, 1);
	check("SELECT 1 -", SQL_PIN_NONE, "", 0, 1);
	check("SELECT U&", SQL_PIN_NONE, "", 0, 1);
	check("SELECT E", SQL_PIN_NONE, "", 0, 1);
	check("SELECT $", SQL_PIN_NONE, "", 0, 1);
}

Test(sqlscan_malformed, incomplete_commands_do_not_crash)
{
	static const char *const texts[] = {
		"SET", "SET SESSION", "SET LOCAL", "SET TIME", "SET SESSION CHARACTERISTICS", "RESET", "DECLARE",
		"DECLARE c", "DEALLOCATE", "DEALLOCATE PREPARE", "LISTEN", "LOAD", "PREPARE", "EXECUTE", "CREATE",
		"CREATE TEMP", "CREATE OR", "EXPLAIN", "EXPLAIN (", "EXPLAIN (ANALYZE", "UPDATE", "SELECT set_config(",
		"SELECT set_config('a', 'b', false", "SELECT pg_advisory_lock", "SELECT * INTO TEMP",
		"CREATE TABLE pg_temp.", ")))", "SELECT )))(((",
	};

	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		struct sql_scan_result r = scan_with(texts[i], tracked);

		cr_assert_eq(r.statements, 1, "[%s]", texts[i]);
	}
	/* The few that pin do so on what is there. */
	harmless("SET");
	pins("LISTEN", SQL_PIN_LISTEN, "");
	pins("CREATE TEMP", SQL_PIN_TEMP_OBJECT, "");
	pins("SELECT pg_advisory_lock(", SQL_PIN_ADVISORY_LOCK, "pg_advisory_lock");
	pins("SET SESSION CHARACTERISTICS", SQL_PIN_SET, "default_transaction_isolation");
}

Test(sqlscan_malformed, nul_byte_ends_the_text)
{
	static const char text[] = "LISTEN a\0; LISTEN b";
	struct sql_scan_result r = scan_bytes(text, sizeof(text) - 1, tracked);

	cr_assert_eq(r.pin, SQL_PIN_LISTEN);
	cr_assert_str_eq(r.pin_detail, "a");
	cr_assert_eq(r.statements, 1);

	r = scan_bytes("SELECT 1\0LISTEN x", 17, tracked);
	cr_assert_eq(r.pin, SQL_PIN_NONE);
	cr_assert_eq(r.statements, 1);
}

Test(sqlscan_malformed, null_text_with_zero_length)
{
	struct sql_scan_result r;

	sql_scan(NULL, 0, tracked, 0, &r);
	cr_assert_eq(r.pin, SQL_PIN_NONE);
	cr_assert_eq(r.statements, 0);
	cr_assert_eq(r.effects, 0);
}

/* Every prefix of a text full of openers and closers, each in an exact-length buffer. */
Test(sqlscan_malformed, every_prefix_is_scanned_safely)
{
	static const char text[] =
		"/* c /* n */ */ SELECT E'a\\'b', 'c''d', U&'x', U&\"y\", \"q\"\"i\", $t$ ; $ $t$, $1, a$$b,\n"
		"  $$x$$ -- tail\n; LISTEN ch; SET myapp.x = 1; SELECT set_config('a', 'b', false);\n"
		"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; END;\n"
		"EXPLAIN (ANALYZE) SELECT pg_catalog.pg_advisory_lock(1) INTO TEMP TABLE t; CREATE TABLE pg_temp.x ();"
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1; X'1' B'0' N'n' e";
	int last_statements = 0;

	for (size_t len = 0; len <= sizeof(text) - 1; len++) {
		struct sql_scan_result r = scan_bytes(text, len, tracked);

		cr_assert_geq(r.statements, 0);
		cr_assert_leq(r.statements, 10);
		last_statements = r.statements;
	}
	cr_assert_eq(last_statements, 9);
}

/* A fixed-seed generator keeps the random texts the same on every run. */
static uint32_t next_random(uint32_t *state)
{
	*state = *state * 1103515245u + 12345u;
	return *state >> 16;
}

Test(sqlscan_malformed, random_texts_from_tricky_bytes)
{
	static const char alphabet[] = "'\"$-/*;()\\&eEuUxXbBnN tT1_a.\n\0\x80=,LISTEN";
	char buf[96];
	uint32_t state = 12345;

	for (int round = 0; round < 20000; round++) {
		size_t len = next_random(&state) % sizeof(buf);

		for (size_t i = 0; i < len; i++)
			buf[i] = alphabet[next_random(&state) % (sizeof(alphabet) - 1)];
		struct sql_scan_result r = scan_bytes(buf, len, round % 2 ? tracked : NULL);

		cr_assert_geq(r.statements, 0);
		cr_assert_leq((size_t)r.statements, len);
		cr_assert_leq(r.pin, SQL_PIN_TOO_LONG);
	}
}

/* ------------------------------------------------------------ reason texts */

Test(sqlscan_text, every_reason_has_distinct_text)
{
	for (int a = SQL_PIN_NONE; a <= SQL_PIN_TOO_LONG; a++) {
		cr_assert_not_null(sql_pin_reason_text(a));
		for (int b = a + 1; b <= SQL_PIN_TOO_LONG; b++)
			cr_assert_str_neq(sql_pin_reason_text(a), sql_pin_reason_text(b));
	}
	cr_assert_str_eq(sql_pin_reason_text(SQL_PIN_PREPARE), "SQL-level PREPARE");
	cr_assert_str_eq(sql_pin_reason_text(SQL_PIN_CURSOR_WITH_HOLD), "cursor WITH HOLD");
	cr_assert_str_eq(sql_pin_reason_text(SQL_PIN_ADVISORY_LOCK), "session-level advisory lock");
	cr_assert_str_eq(sql_pin_reason_text(SQL_PIN_SET), "SET of a parameter pgmux does not track");
	cr_assert_str_eq(sql_pin_reason_text((enum sql_pin_reason)99), "unknown pin reason");
}

/* ------------------------------------------------------------ LISTEN texts pgmux answers (sqlscan_listen.c) */

static int listen_parse(const char *sql, struct sql_listen_command *cmds)
{
	return sql_listen_parse(sql, strlen(sql), cmds, SQL_LISTEN_MAX_COMMANDS);
}

Test(sqlscan_listen, names_resolve_as_postgresql_resolves_them)
{
	struct sql_listen_command c[SQL_LISTEN_MAX_COMMANDS];

	cr_assert_eq(listen_parse("LISTEN Foo", c), 1);
	cr_expect_eq(c[0].kind, SQL_LISTEN);
	cr_expect_str_eq(c[0].channel, "foo");
	cr_assert_eq(listen_parse("listen \"Foo\"\"Bar\" ;", c), 1);
	cr_expect_str_eq(c[0].channel, "Foo\"Bar");
	cr_assert_eq(listen_parse("/* hi */ LISTEN a; unlisten B;;UNLISTEN *", c), 3);
	cr_expect_eq(c[1].kind, SQL_UNLISTEN);
	cr_expect_str_eq(c[1].channel, "b");
	cr_expect_eq(c[2].kind, SQL_UNLISTEN_ALL);
	cr_expect_str_eq(c[2].channel, "");
	/* An unreserved keyword is a name; "cache" is one. */
	cr_assert_eq(listen_parse("LISTEN cache", c), 1);
	cr_expect_str_eq(c[0].channel, "cache");
}

Test(sqlscan_listen, anything_else_is_the_servers)
{
	struct sql_listen_command c[SQL_LISTEN_MAX_COMMANDS];
	static const char *const others[] = {
		"LISTEN",                  /* no name */
		"LISTEN a b",              /* syntax error */
		"LISTEN a; SELECT 1",      /* another statement */
		"LISTEN select",           /* a reserved word */
		"LISTEN 'a'",              /* a string */
		"LISTEN U&\"a\"",          /* escapes: the server's */
		"LISTEN \"\"",             /* zero-length name */
		"LISTEN \"a",              /* unterminated */
		"LISTEN a; '",             /* unterminated after */
		"LISTEN a -- trailing comment",
		"NOTIFY a",
		"",
		"LISTEN aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", /* 65 bytes: truncated by the server */
	};

	for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
		cr_expect_eq(listen_parse(others[i], c), 0, "%s", others[i]);
	cr_expect_eq(sql_listen_parse("LISTEN a; LISTEN b", 18, c, 1), 0, "more than max commands");
	cr_expect_eq(sql_listen_parse("LISTEN a\0; SELECT 1", 19, c, 1), 1, "a NUL ends the text");
}

Test(sqlscan_listen, find_passes_over_other_statements)
{
	struct sql_listen_command c[SQL_LISTEN_MAX_COMMANDS];
	const char *reset = "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL; UNLISTEN \"X\"";

	cr_assert_eq(sql_listen_find(reset, strlen(reset), c, SQL_LISTEN_MAX_COMMANDS), 2);
	cr_expect_eq(c[0].kind, SQL_UNLISTEN_ALL);
	cr_expect_eq(c[1].kind, SQL_UNLISTEN);
	cr_expect_str_eq(c[1].channel, "X");
	cr_expect_eq(sql_listen_parse(reset, strlen(reset), c, SQL_LISTEN_MAX_COMMANDS), 0);
}
