/*
 * harness_spread.h: following clients between pgmux's workers
 * (worker_spread_percent) for test_spread.c and test_spread_edges.c: which
 * worker SHOW CLIENTS lists a libpq session on, how the app's clients are
 * placed, and traffic that runs until chosen clients reach a worker.
 */
#ifndef PGMUX_TEST_HARNESS_SPREAD_H
#define PGMUX_TEST_HARNESS_SPREAD_H

#include "harness.h"

/*
 * Start p (options into o) with two workers, pool_mode over max_connections
 * backends (kept while idle), the admin console and worker_spread_percent =
 * spread; extra_pgmux as in struct pgmux_options.
 */
void h_spread_start(struct pgmux *p, struct pgmux_options *o, const char *pool_mode, int max_connections, int spread,
		    const char *extra_pgmux);

/* Column col of conn's row in SHOW CLIENTS (malloc'd), or NULL when it is not listed. */
char *h_client_cell(PGconn *admin, PGconn *conn, const char *col);
/* The worker that serves conn now (SHOW CLIENTS), or -1 when it is not listed. */
int h_worker_of(PGconn *admin, PGconn *conn);

/* The clients of database dbname in SHOW CLIENTS: how many on each of two workers, and pinned. */
struct h_placement {
	int on[2];
	int elsewhere;
	int pinned;
};
struct h_placement h_placement_of(PGconn *admin, const char *dbname);

/* One short transaction (a statement of its own) on each of conns. */
void h_one_round(PGconn *const *conns, int n);
/*
 * Keep busy running (a transaction each per round, pause_ms between rounds)
 * until every one of movers is on worker want, at most timeout_ms (scaled).
 * pause_ms 0 keeps worker 0 busy enough for worker_spread_percent = 1 to
 * spread; a few milliseconds keep the load low enough to gather.
 */
bool h_run_until_on(PGconn *admin, PGconn *const *busy, int n_busy, PGconn *const *movers, int n_movers, int want,
		    int pause_ms, int timeout_ms);
/* h_run_until_on() within 15 s that must succeed (else SHOW CLIENTS and the logs go to stderr). */
void h_move_to(PGconn *admin, PGconn *const *busy, int n_busy, PGconn *const *movers, int n_movers, int want,
	       int pause_ms, const char *what);
/* The pause between rounds while gathering: light traffic. */
int h_gather_pause_ms(void);
/* n idle sessions of p (they never end a transaction, so never move): room in worker 0's quota for others. */
void h_open_idle(const struct pgmux *p, PGconn **out, int n);
void h_close_all(PGconn **conns, int n);

#endif
