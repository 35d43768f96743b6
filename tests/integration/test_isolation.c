/*
 * test_isolation.c: no client of a transaction pool sees session state that
 * another client left on a shared backend, by any route, and the client that
 * left it keeps it (issue 16). Each route runs code pgmux cannot read (a DO
 * block, a function of the database's own, an expression where set_config()
 * takes its is_local, a parameter): pgmux verifies the session after such a
 * transaction, carries what it can read back, pins what it cannot carry, and
 * RESETs ALL before anyone else uses the backend.
 *
 * A pool of two: a client that runs one transaction after another client's
 * is served that client's backend (the most recently used idle one), so the
 * fresh clients here do use the backend that the owner left.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct pgmux px;

/* The functions the tests create: left behind, they would make every later suite's writes opaque. */
static void drop_functions(void)
{
	PGconn *su = h_connect_super_direct();

	if (PQstatus(su) == CONNECTION_OK) {
		PQclear(PQexec(su, "DROP TABLE IF EXISTS public.isolation_audit"));
		PQclear(PQexec(su, "DROP FUNCTION IF EXISTS public.set_tenant(text), public.set_hidden(text), "
				   "public.isolation_audit_trigger()"));
	}
	PQfinish(su);
}

static void fini(void)
{
	h_teardown();
	drop_functions();
}

TestSuite(isolation, .fini = fini, .timeout = 120);

/* What a session shows of the state the routes change, with the backend it ran on. */
#define CHECK_SQL                                                                                             \
	"select pg_backend_pid(), coalesce(current_setting('app.tenant', true), '') || '|' || current_user || " \
	"'|' || current_setting('search_path')"
#define FRESH "|app|\"$user\", public"

static void start(int backends)
{
	PGconn *su = h_connect_super_direct();

	h_exec_ok(su, "DROP ROLE IF EXISTS isolation_other");
	h_exec_ok(su, "CREATE ROLE isolation_other");
	h_exec_ok(su, "GRANT isolation_other TO app");
	h_exec_ok(su, "CREATE SCHEMA IF NOT EXISTS elsewhere");
	h_exec_ok(su, "GRANT USAGE ON SCHEMA elsewhere TO app");
	h_exec_ok(su, "CREATE OR REPLACE FUNCTION public.set_tenant(t text) RETURNS text LANGUAGE sql "
		      "AS $$ SELECT pg_catalog.set_config('app.tenant', t, false) $$");
	PQfinish(su);
	pgmux_start_transaction(&px, backends, NULL, NULL);
}

static char *check(PGconn *conn, int *pid)
{
	PGresult *r = PQexec(conn, CHECK_SQL);
	char *v;

	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
	*pid = atoi(PQgetvalue(r, 0, 0));
	v = strdup(PQgetvalue(r, 0, 1));
	PQclear(r);
	return v;
}

/*
 * The owner sees want; then six fresh clients see nothing of it; then the
 * owner sees want_after (want, but for what pgmux cannot read back).
 */
static void route_after(const char *what, void (*act)(PGconn *a), const char *want, const char *want_after, bool pins)
{
	PGconn *a = h_app_session(&px, "disable", NULL);
	int pa, pid, shared = 0;
	char *v;

	act(a);
	v = check(a, &pa);
	cr_assert_str_eq(v, want, "%s: the owner sees \"%s\", expected \"%s\"", what, v, want);
	free(v);
	for (int i = 0; i < 6; i++) {
		PGconn *f = h_app_session(&px, "disable", NULL);

		v = check(f, &pid);
		cr_assert_str_eq(v, FRESH, "%s: fresh client %d on backend %d (the owner's: %d) sees \"%s\"", what, i,
				 pid, pa, v);
		free(v);
		shared += pid == pa;
		PQfinish(f);
	}
	if (pins)
		cr_assert_eq(shared, 0, "%s: a fresh client was served the owner's pinned backend", what);
	else
		cr_assert_gt(shared, 0, "%s: no fresh client used the owner's backend %d: the test proves nothing",
			     what, pa);
	for (int i = 0; i < 2; i++) {
		v = check(a, &pid);
		cr_assert_str_eq(v, want_after, "%s: after the others, the owner sees \"%s\", expected \"%s\"", what,
				 v, want_after);
		free(v);
	}
	PQfinish(a);
}

static void route(const char *what, void (*act)(PGconn *a), const char *want, bool pins)
{
	route_after(what, act, want, want, pins);
}

static void do_set_config(PGconn *a)
{
	h_exec_ok(a, "DO $$ BEGIN PERFORM set_config('app.tenant', '42', false); END $$");
}

static void function_set_config(PGconn *a)
{
	free(h_value_ok(a, "SELECT public.set_tenant('42')"));
}

static void expression_is_local(PGconn *a)
{
	free(h_value_ok(a, "SELECT set_config('app.tenant', '42', 1=0)"));
}

static void bound_parameters(PGconn *a)
{
	const char *values[3] = {"app.tenant", "42", "false"};
	PGresult *r = PQexecParams(a, "SELECT set_config($1, $2, $3::boolean)", 3, NULL, values, NULL, NULL, 0);

	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(a));
	PQclear(r);
}

static void do_set_role(PGconn *a)
{
	h_exec_ok(a, "DO $$ BEGIN EXECUTE 'SET ROLE isolation_other'; END $$");
}

static void do_search_path(PGconn *a)
{
	h_exec_ok(a, "DO $$ BEGIN EXECUTE 'SET search_path = elsewhere'; END $$");
}

static void do_quoted_value(PGconn *a)
{
	h_exec_ok(a, "DO $$ BEGIN PERFORM set_config('app.tenant', E'it''s \\\\ a\\nline \u00fc', false); END $$");
}

static void do_dynamic_name(PGconn *a)
{
	h_exec_ok(a, "DO $$ BEGIN PERFORM set_config('app.' || 'tenant', '42', false); END $$");
}

Test(isolation, do_block_set_config)
{
	start(2);
	route("DO set_config", do_set_config, "42" FRESH, false);
	h_stop_expect_clean_exit(&px);
}

Test(isolation, function_that_calls_set_config)
{
	start(2);
	route("SELECT public.set_tenant()", function_set_config, "42" FRESH, false);
	h_stop_expect_clean_exit(&px);
}

Test(isolation, set_config_with_an_expression_for_is_local)
{
	start(2);
	route("set_config(.., 1=0)", expression_is_local, "42" FRESH, false);
	h_stop_expect_clean_exit(&px);
}

Test(isolation, set_config_with_bound_parameters_pins)
{
	start(2);
	route("set_config($1, $2, $3)", bound_parameters, "42" FRESH, true);
	h_stop_expect_clean_exit(&px);
}

Test(isolation, role_set_in_a_do_block_pins)
{
	start(2);
	route("DO SET ROLE", do_set_role, "|isolation_other|\"$user\", public", true);
	h_stop_expect_clean_exit(&px);
}

Test(isolation, search_path_set_in_a_do_block)
{
	start(2);
	route("DO SET search_path", do_search_path, "|app|elsewhere", false);
	h_stop_expect_clean_exit(&px);
}

Test(isolation, quotes_backslashes_newlines_and_non_ascii_are_carried_exactly)
{
	start(2);
	route("DO set_config of a quoted value", do_quoted_value, "it's \\ a\nline \u00fc" FRESH, false);
	h_stop_expect_clean_exit(&px);
}

/* A set_config() whose name is no literal, in a text pgmux reads (a DO block): pinned. */
Test(isolation, a_name_made_at_run_time_in_a_do_block_pins)
{
	start(2);
	route("DO set_config of a name made at run time", do_dynamic_name, "42" FRESH, true);
	h_stop_expect_clean_exit(&px);
}

/*
 * A name made at run time in a function's body, and named in no text at all:
 * pgmux cannot read it back, so the owner loses it to the RESET ALL that
 * keeps it from everyone else.
 */
Test(isolation, a_name_in_no_text_reaches_no_one_else)
{
	static const char check_hidden[] = "select coalesce(current_setting('zz' || '.hidden', true), '')";
	PGconn *su, *a;

	start(2);
	su = h_connect_super_direct();
	h_exec_ok(su, "CREATE OR REPLACE FUNCTION public.set_hidden(t text) RETURNS text LANGUAGE sql "
		      "AS $$ SELECT pg_catalog.set_config('zz' || '.hidden', t, false) $$");
	PQfinish(su);
	a = h_app_session(&px, "disable", NULL);
	free(h_value_ok(a, "SELECT public.set_hidden('42')"));
	for (int i = 0; i < 6; i++) {
		PGconn *f = h_app_session(&px, "disable", NULL);
		char *v = h_value_ok(f, check_hidden);

		cr_assert_str_eq(v, "", "fresh client %d sees the owner's hidden setting \"%s\"", i, v);
		free(v);
		PQfinish(f);
	}
	PQfinish(a);
	h_stop_expect_clean_exit(&px);
}

/*
 * A trigger's function runs on a plain INSERT, with no call in the text. A
 * database with such code (a function whose body may change the session)
 * makes pgmux treat writes as code it cannot read.
 */
static void insert_with_trigger(PGconn *a)
{
	h_exec_ok(a, "INSERT INTO public.isolation_audit VALUES ('42')");
}

Test(isolation, trigger_that_calls_set_config)
{
	PGconn *su = h_connect_super_direct();

	h_exec_ok(su, "CREATE TABLE IF NOT EXISTS public.isolation_audit (tenant text)");
	h_exec_ok(su, "GRANT INSERT ON public.isolation_audit TO app");
	h_exec_ok(su, "CREATE OR REPLACE FUNCTION public.isolation_audit_trigger() RETURNS trigger LANGUAGE plpgsql "
		      "AS $$ BEGIN PERFORM pg_catalog.set_config('app.tenant', NEW.tenant, false); RETURN NEW; END $$");
	h_exec_ok(su, "CREATE OR REPLACE TRIGGER isolation_audit BEFORE INSERT ON public.isolation_audit "
		      "FOR EACH ROW EXECUTE FUNCTION public.isolation_audit_trigger()");
	PQfinish(su);
	start(2);
	route("INSERT that fires a trigger", insert_with_trigger, "42" FRESH, false);
	h_stop_expect_clean_exit(&px);
}

/*
 * DEALLOCATE ALL in a DO block dropped the statements pgmux kept on the
 * backend for every client: another client's Bind then failed with 26000
 * until the backend was recycled. Now the session that did it is pinned (the
 * count of prepared statements is not what pgmux expects), and the others
 * never use that backend again.
 */
Test(isolation, deallocate_all_in_a_do_block)
{
	PGconn *a, *b;
	PGresult *r;

	start(1);
	b = h_app_session(&px, "disable", NULL);
	r = PQprepare(b, "mine", "SELECT 7", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(b));
	PQclear(r);
	r = PQexecPrepared(b, "mine", 0, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(b));
	PQclear(r);

	a = h_app_session(&px, "disable", NULL);
	h_exec_ok(a, "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$");
	free(h_value_ok(a, "SELECT 1")); /* still a's own backend */
	PQfinish(a);
	for (int i = 0; i < 3; i++) {
		r = PQexecPrepared(b, "mine", 0, NULL, NULL, NULL, 0);
		cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "run %d of another client's statement: %s", i,
			     PQerrorMessage(b));
		cr_assert_str_eq(PQgetvalue(r, 0, 0), "7");
		PQclear(r);
	}
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}

/*
 * PostgreSQL keeps the unnamed statement until the next Parse of it: a
 * backend kept the one its last client left, and another client's Bind of
 * the unnamed statement, with no Parse of its own, ran that client's text
 * (found by the issue 15 stress test). Now that client gets 26000, as on a
 * session of its own, and the owner still finds its own in a later
 * transaction, on whatever backend.
 */
Test(isolation, unnamed_statement_of_another_client)
{
	PGconn *a, *b;
	PGresult *r;
	const char *state;

	start(1);
	a = h_app_session(&px, "disable", NULL);
	b = h_app_session(&px, "disable", NULL);
	r = PQprepare(a, "", "SELECT 'secret of a'::text", 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(a));
	PQclear(r);

	r = PQexecPrepared(b, "", 0, NULL, NULL, NULL, 0);
	state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert(PQresultStatus(r) == PGRES_FATAL_ERROR && state && strcmp(state, "26000") == 0,
		  "a Bind of the unnamed statement without a Parse got %s%s%s", PQresStatus(PQresultStatus(r)),
		  PQntuples(r) > 0 ? ": " : "", PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "");
	PQclear(r);
	r = PQdescribePrepared(b, "");
	state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert(PQresultStatus(r) == PGRES_FATAL_ERROR && state && strcmp(state, "26000") == 0,
		  "a Describe of the unnamed statement without a Parse: %s", PQresStatus(PQresultStatus(r)));
	PQclear(r);

	/* The owner's is still its own, in a later transaction. */
	r = PQexecPrepared(a, "", 0, NULL, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "the owner's unnamed statement: %s", PQerrorMessage(a));
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "secret of a");
	PQclear(r);
	/* A Query destroys it, as directly. */
	free(h_value_ok(a, "SELECT 1"));
	r = PQexecPrepared(a, "", 0, NULL, NULL, NULL, 0);
	state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	cr_assert(PQresultStatus(r) == PGRES_FATAL_ERROR && state && strcmp(state, "26000") == 0,
		  "the unnamed statement outlived a Query");
	PQclear(r);
	PQfinish(a);
	PQfinish(b);
	h_stop_expect_clean_exit(&px);
}
