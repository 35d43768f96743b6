/*
 * stats.c: per-pool histograms and byte counts, failover and cutover times,
 * and the slow-borrow and long-transaction log lines (see stats.h). Workers
 * write only their own slot of a pool's statistics with relaxed stores
 * (histogram.c); a scrape or SHOW STATS adds the slots up. The process-wide
 * event times are written by one thread at a time (the monitor under the
 * pool lock, the main thread) and read with relaxed loads.
 */
#include "stats.h"

#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "client.h"
#include "log.h"
#include "pgmux.h"
#include "pool.h"
#include "proto.h"
#include "server.h"
#include "worker.h"

struct pool_stats *stats_pool_new(void)
{
	/* Workers start before any client can make a pool; at least one slot, in case. */
	int n = n_workers > 0 ? n_workers : 1;
	struct pool_stats *stats = NULL;

	if (posix_memalign((void **)&stats, 64, sizeof(*stats) + (size_t)n * sizeof(stats->slot[0])) != 0)
		abort();
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

/* The calling worker's slot of c's pool, or NULL (an admin session has no pool). */
static struct pool_stats_slot *slot_of(const struct client *c)
{
	if (c->pool == NULL || c->pool->stats == NULL || c->worker == NULL || c->worker->id >= c->pool->stats->n_slots)
		return NULL;
	return &c->pool->stats->slot[c->worker->id];
}

void stats_borrow_ended(struct client *c)
{
	struct pool_stats_slot *slot = slot_of(c);
	int threshold_ms = config_current()->log_slow_borrow_ms;
	uint64_t waited;

	if (c->borrow_start_usec == 0)
		return;
	waited = pgmux_now_usec() - c->borrow_start_usec;
	c->borrow_start_usec = 0;
	if (slot)
		histogram_record(&slot->borrow_wait, waited);
	if (threshold_ms > 0 && waited > (uint64_t)threshold_ms * 1000)
		log_client(LOG_LEVEL_INFO, c,
			   "slow borrow: waited %llu ms for a server connection (log_slow_borrow is %d ms)",
			   (unsigned long long)(waited / 1000), threshold_ms);
}

void stats_message_sent(struct client *c, struct server *s, uint8_t type)
{
	bool query = type == FE_QUERY || type == FE_SYNC || type == FE_FUNCTION_CALL;

	if (c->txn_start_usec == 0)
		c->txn_start_usec = pgmux_now_usec();
	/* Pipelined queries: the next one's clock starts when the one before it is answered. */
	if (query && s->outstanding == 0)
		s->query_sent_usec = pgmux_now_usec();
}

/* The bytes c moved since they were last counted go to its pool. */
static void count_bytes(struct client *c, struct pool_stats_slot *slot)
{
	__atomic_store_n(&slot->bytes_in, slot->bytes_in + (c->io.bytes_read - c->bytes_read_counted), __ATOMIC_RELAXED);
	__atomic_store_n(&slot->bytes_out, slot->bytes_out + (c->io.bytes_written - c->bytes_written_counted),
			 __ATOMIC_RELAXED);
	c->bytes_read_counted = c->io.bytes_read;
	c->bytes_written_counted = c->io.bytes_written;
}

void stats_ready_for_query(struct client *c, struct server *s)
{
	struct pool_stats_slot *slot = slot_of(c);
	int threshold_ms;
	uint64_t now = pgmux_now_usec(), took;

	if (s->query_sent_usec) {
		if (slot)
			histogram_record(&slot->query, now - s->query_sent_usec);
		s->query_sent_usec = s->outstanding > 0 ? now : 0;
	}
	if (s->outstanding > 0 || s->tx_status != 'I' || c->txn_start_usec == 0)
		return;
	took = now - c->txn_start_usec;
	c->txn_start_usec = 0;
	if (slot) {
		histogram_record(&slot->transaction, took);
		count_bytes(c, slot);
	}
	threshold_ms = config_current()->log_long_transaction_ms;
	if (threshold_ms > 0 && took > (uint64_t)threshold_ms * 1000)
		log_client(LOG_LEVEL_INFO, c, "long transaction: %llu ms from its first message to its end "
			   "(log_long_transaction is %d ms)", (unsigned long long)(took / 1000), threshold_ms);
}

static uint64_t failovers, last_failover_unix_usec, last_failover_outage_usec, last_cutover_unix_usec;

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

void stats_get_events(struct event_stats *out)
{
	out->failovers = __atomic_load_n(&failovers, __ATOMIC_RELAXED);
	out->last_failover_unix_usec = __atomic_load_n(&last_failover_unix_usec, __ATOMIC_RELAXED);
	out->last_failover_outage_usec = __atomic_load_n(&last_failover_outage_usec, __ATOMIC_RELAXED);
	out->last_cutover_unix_usec = __atomic_load_n(&last_cutover_unix_usec, __ATOMIC_RELAXED);
}
