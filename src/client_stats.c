/*
 * client_stats.c: where a client's transactions, queries and borrow waits
 * are recorded into its pool's statistics (stats.h), on the worker that owns
 * the client, in that worker's slot: relaxed stores, no lock.
 */
#include "client_stats.h"

#include "client.h"
#include "log.h"
#include "pgmux.h"
#include "pool.h"
#include "proto.h"
#include "server.h"
#include "stats.h"
#include "worker.h"

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
	waited = pgmux_usec_since(c->borrow_start_usec, pgmux_pass_now_usec());
	c->borrow_start_usec = 0;
	if (slot)
		histogram_record(&slot->borrow_wait, waited);
	if (threshold_ms > 0 && waited > (uint64_t)threshold_ms * 1000)
		log_client(LOG_LEVEL_INFO, c,
			   "slow borrow: waited %llu ms for a server connection (log_slow_borrow is %d ms)",
			   (unsigned long long)(waited / 1000), threshold_ms);
}

/* The bytes c moved since they were last counted go to its pool (and its io counts from zero again). */
static void count_bytes(struct client *c, struct pool_stats_slot *slot)
{
	__atomic_store_n(&slot->bytes_in, slot->bytes_in + c->io.bytes_read, __ATOMIC_RELAXED);
	__atomic_store_n(&slot->bytes_out, slot->bytes_out + c->io.bytes_written, __ATOMIC_RELAXED);
	c->io.bytes_read = 0;
	c->io.bytes_written = 0;
}

void stats_ready_for_query(struct client *c, struct server *s)
{
	struct pool_stats_slot *slot = slot_of(c);
	int threshold_ms;
	uint64_t now = pgmux_pass_now_usec(), took;

	if (s->query_sent_usec) {
		if (slot)
			histogram_record(&slot->query, pgmux_usec_since(s->query_sent_usec, now));
		s->query_sent_usec = s->replies.outstanding > 0 ? now : 0;
	}
	if (s->replies.outstanding > 0 || s->tx_status != 'I' || c->txn_start_usec == 0)
		return;
	took = pgmux_usec_since(c->txn_start_usec, now);
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
