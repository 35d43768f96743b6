/*
 * stats.h: what pgmux measures for /metrics and SHOW STATS beyond the
 * workers' plain counters: per-pool latency histograms (transactions,
 * queries, borrow waits) and byte counts, kept per worker so that recording
 * takes no lock; failovers; the "slow borrow" and "long transaction" log
 * lines. The recording points are client_stats.h's (the client module
 * knows the client and its server; this module knows neither).
 */
#ifndef PGMUX_STATS_H
#define PGMUX_STATS_H

#include <stdint.h>

#include "histogram.h"

/* One worker's share of a pool's statistics; only that worker writes it. */
struct pool_stats_slot {
	struct histogram transaction; /* first message of a transaction to the ReadyForQuery that ends it */
	struct histogram query;       /* a Query, Sync or FunctionCall to its ReadyForQuery */
	struct histogram borrow_wait; /* asking for a server connection to having one */
	uint64_t bytes_in;            /* from the pool's clients, counted at each transaction's end */
	uint64_t bytes_out;           /* to them */
} __attribute__((aligned(64)));   /* no two workers write the same cache line */

/* A pool's statistics: a slot per worker, added up when someone asks. */
struct pool_stats {
	uint64_t created_usec; /* for the per-second averages of SHOW STATS */
	int n_slots;
	struct pool_stats_slot slot[];
};

/* For a new pool (a slot per worker running now), and when it is freed. */
struct pool_stats *stats_pool_new(void);
void stats_pool_free(struct pool_stats *stats);

/* Every worker's slot of stats added up (relaxed loads; any thread). */
void stats_pool_sum(const struct pool_stats *stats, struct pool_stats_slot *out);

/*
 * A writer was found (pool.c, under the pool lock) at found_usec; lost_usec
 * is when the previous one was lost, or 0 when there was none (start-up):
 * then it is no failover.
 */
void stats_writer_found(uint64_t lost_usec, uint64_t found_usec);
/* A cutover ended (control.c, main thread). */
void stats_cutover_ended(void);
/*
 * A transaction's first batch went to another backend because the one it
 * was sent to had ended its session before answering (57P05; any worker).
 */
void stats_first_batch_resent(void);

struct event_stats {
	uint64_t failovers;
	uint64_t last_failover_unix_usec; /* wall clock; 0: none yet */
	uint64_t last_failover_outage_usec;
	uint64_t last_cutover_unix_usec;  /* wall clock; 0: none yet */
	uint64_t resends;                 /* stats_first_batch_resent() */
};

void stats_get_events(struct event_stats *out);

#endif
