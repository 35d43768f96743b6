/*
 * test_cutover_pause.c: what a cutover's pause covers. The control
 * connections (to the old writer and the new target) log in before pgmux
 * pauses, so a cutover with nothing to wait for pauses only for the drain,
 * the WAL-position check and the switch; one that cannot open them is
 * abandoned without pausing at all. The suite's one server serves as both
 * the old and the new instance, under two names (localhost, 127.0.0.1).
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct pgmux px;

static void fini_cutover_pause(void)
{
	h_teardown();
}

TestSuite(cutover_pause, .fini = fini_cutover_pause, .timeout = 60);

static int by_value(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return (x > y) - (x < y);
}

/*
 * Idle CUTOVER TOs, back and forth between the two names: each is a full
 * cutover (control connections, drain, WAL position and target state, switch)
 * with nothing in flight. The pause each took is printed (min, median, max) and
 * must be well under what its logins alone took before they moved out of it.
 */
Test(cutover_pause, an_idle_cutover_pauses_only_for_the_switch)
{
	enum { RUNS = 6 };
	struct pgmux_options o;
	long long pause_ms[RUNS];
	char sql[128];

	pgmux_options_console(&o);
	o.tls = false;
	/* The same server: nothing replicates to it, and nothing needs to. */
	o.extra_target = "health_check_interval = 250ms\ncutover_require_catchup = false";
	pgmux_start_ok(&px, &o);
	PGconn *admin = h_admin_session(&px);
	for (int i = 0; i < RUNS; i++) {
		snprintf(sql, sizeof(sql), "CUTOVER TO '%s:%d'", i % 2 ? "127.0.0.1" : "localhost", h_env()->pgport);
		PGresult *r = PQexec(admin, sql);
		cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", sql, PQresultErrorMessage(r));
		PQclear(r);
		pause_ms[i] = h_admin_stat(admin, "last_cutover_pause_ms");
		cr_expect_geq(pause_ms[i], 0);
	}
	cr_expect_eq(h_admin_stat(admin, "cutovers"), RUNS);
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	/* Each cutover says how long its control connections took, before its pause. */
	cr_expect_eq(h_file_count(px.logfile, "the control connections took"), RUNS);
	qsort(pause_ms, RUNS, sizeof(pause_ms[0]), by_value);
	fprintf(stderr, "cutover_pause: %d idle CUTOVER TOs paused new transactions for min %lld, median %lld, max %lld ms\n",
		RUNS, pause_ms[0], pause_ms[RUNS / 2], pause_ms[RUNS - 1]);
	/* Drain (a 20 ms tick or two), two one-row queries and the switch; generous for a loaded machine. */
	cr_expect_lt(pause_ms[RUNS / 2], h_scaled_ms(500), "the median pause is %lld ms", pause_ms[RUNS / 2]);

	/* Clients work on the last target. */
	PGconn *app = h_app_session(&px, "disable", NULL);
	char *one = h_value_ok(app, "SELECT 1");
	cr_expect_str_eq(one, "1");
	free(one);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

/*
 * A new target where nothing listens: the control connection cannot open, so
 * with cutover_require_catchup (the default) the cutover is refused before
 * anything is paused, and a client never waits for it.
 */
Test(cutover_pause, no_control_connection_fails_before_pausing)
{
	struct pgmux_options o;
	char sql[128];

	pgmux_options_console(&o);
	o.tls = false;
	pgmux_start_ok(&px, &o);
	PGconn *admin = h_admin_session(&px);
	snprintf(sql, sizeof(sql), "CUTOVER TO '127.0.0.1:%d'", h_free_port());
	long long t0 = h_now_ms();
	PGresult *r = PQexec(admin, sql);
	long long took = h_now_ms() - t0;
	cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "CUTOVER TO a closed port succeeded");
	cr_expect(strstr(PQresultErrorMessage(r), "before pausing") != NULL, "the error: %s", PQresultErrorMessage(r));
	PQclear(r);
	cr_expect_lt(took, h_scaled_ms(2000), "the refusal took %lld ms", took);
	cr_expect_eq(h_admin_stat(admin, "cutovers_abandoned"), 1);
	cr_expect_eq(h_admin_stat(admin, "last_cutover_pause_ms"), 0);
	cr_expect_eq(h_admin_stat(admin, "paused"), 0);
	cr_expect_eq(h_file_count(px.logfile, "paused all instances"), 0, "pgmux paused for a cutover it refused");

	PGconn *app = h_app_session(&px, "disable", NULL);
	char *port = h_value_ok(app, "SELECT inet_server_port()");
	cr_expect_eq(atoi(port), h_env()->pgport);
	free(port);
	PQfinish(app);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}
