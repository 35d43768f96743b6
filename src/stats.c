/*
 * stats.c: per-pool histograms and byte counts, failover and cutover times,
 * (see stats.h; the recording points and the slow-borrow and long-transaction
 * log lines are client_stats.c's, in the client module). Workers
 * write only their own slot of a pool's statistics with relaxed stores
 * (histogram.c); a scrape or SHOW STATS adds the slots up. The process-wide
 * event times are written by one thread at a time (the monitor under the
 * pool lock, the main thread) and read with relaxed loads.
 */
#include "stats.h"

#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "log.h"
#include "pgmux.h"
#include "util.h"
#include "worker.h"

struct pool_stats *stats_pool_new(void)
{
	/* Workers start before any client can make a pool; at least one slot, in case. */
	int n = n_workers > 0 ? n_workers : 1;
	struct pool_stats *stats = NULL;

	if (posix_memalign((void **)&stats, 64, sizeof(*stats) + (size_t)n * sizeof(stats->slot[0])) != 0)
		out_of_memory("a pool's counters");
	memset(stats, 0, sizeof(*stats) + (size_t)n * sizeof(stats->slot[0]));
	stats->n_slots = n;
	stats->created_usec = pgmux_now_usec();
	return stats;
}

void stats_pool_free(struct pool_stats *stats)
{
	free(stats);
}

void stats_pool_sum(const struct pool_stats *stats, struct pool_stats_slot *out)
{
	memset(out, 0, sizeof(*out));
	for (int i = 0; i < stats->n_slots; i++) {
		const struct pool_stats_slot *slot = &stats->slot[i];

		histogram_add(&out->transaction, &slot->transaction);
		histogram_add(&out->query, &slot->query);
		histogram_add(&out->borrow_wait, &slot->borrow_wait);
		out->bytes_in += __atomic_load_n(&slot->bytes_in, __ATOMIC_RELAXED);
		out->bytes_out += __atomic_load_n(&slot->bytes_out, __ATOMIC_RELAXED);
	}
}

static uint64_t failovers, last_failover_unix_usec, last_failover_outage_usec, last_cutover_unix_usec, resends;

static uint64_t unix_now_usec(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000000 + (uint64_t)tv.tv_usec;
}

void stats_writer_found(uint64_t lost_usec, uint64_t found_usec)
{
	if (lost_usec == 0)
		return;
	__atomic_store_n(&last_failover_outage_usec, found_usec - lost_usec, __ATOMIC_RELAXED);
	__atomic_store_n(&last_failover_unix_usec, unix_now_usec(), __ATOMIC_RELAXED);
	__atomic_add_fetch(&failovers, 1, __ATOMIC_RELAXED);
}

void stats_cutover_ended(void)
{
	__atomic_store_n(&last_cutover_unix_usec, unix_now_usec(), __ATOMIC_RELAXED);
}

void stats_first_batch_resent(void)
{
	__atomic_add_fetch(&resends, 1, __ATOMIC_RELAXED);
}

void stats_get_events(struct event_stats *out)
{
	out->failovers = __atomic_load_n(&failovers, __ATOMIC_RELAXED);
	out->last_failover_unix_usec = __atomic_load_n(&last_failover_unix_usec, __ATOMIC_RELAXED);
	out->last_failover_outage_usec = __atomic_load_n(&last_failover_outage_usec, __ATOMIC_RELAXED);
	out->last_cutover_unix_usec = __atomic_load_n(&last_cutover_unix_usec, __ATOMIC_RELAXED);
	out->resends = __atomic_load_n(&resends, __ATOMIC_RELAXED);
}
