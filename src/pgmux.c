/*
 * pgmux.c: process-wide state (see pgmux.h): the published configuration and
 * the pass counts of the threads that read it, the counters every thread
 * bumps, and the monotonic clock. It calls nothing above it: control.c
 * decides when to publish and when to free, the workers and the monitor
 * report their passes.
 */
#include "pgmux.h"

#include <time.h>

struct config *pgmux_config_ptr;
int64_t pgmux_client_count;
int64_t pgmux_login_count;
uint64_t pgmux_accept_out_of_descriptors;

__thread uint64_t pgmux_pass_usec;
__thread bool pgmux_pass_cached;

uint64_t pgmux_now_usec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/*
 * Config readers. A reader bumps its count between loop passes; the main
 * thread swaps the pointer, then reads the counts (all sequentially
 * consistent). A count that moved after that read was bumped after the swap,
 * so the reader's earlier uses of the old configuration are over and its
 * later loads see the new one. Readers past CONFIG_READERS_MAX (not possible
 * with MAX_WORKERS) would only keep old configurations until exit.
 */
static struct {
	uint64_t passes;
	char pad[64 - sizeof(uint64_t)]; /* a cache line each: workers bump theirs on every pass */
} reader_passes[CONFIG_READERS_MAX] __attribute__((aligned(64)));
static int n_readers_registered;

int config_reader_register(void)
{
	return __atomic_fetch_add(&n_readers_registered, 1, __ATOMIC_SEQ_CST);
}

void config_reader_quiescent(int reader)
{
	if (reader >= 0 && reader < CONFIG_READERS_MAX)
		__atomic_fetch_add(&reader_passes[reader].passes, 1, __ATOMIC_SEQ_CST);
}

struct config *config_publish(struct config *next, struct config_readers_mark *mark)
{
	struct config *old = (struct config *)config_current();

	__atomic_store_n(&pgmux_config_ptr, next, __ATOMIC_SEQ_CST);
	/* The counts are read after the swap: see reader_passes. */
	mark->n_readers = __atomic_load_n(&n_readers_registered, __ATOMIC_SEQ_CST);
	if (mark->n_readers > CONFIG_READERS_MAX)
		mark->n_readers = CONFIG_READERS_MAX;
	for (int i = 0; i < mark->n_readers; i++)
		mark->passes[i] = __atomic_load_n(&reader_passes[i].passes, __ATOMIC_SEQ_CST);
	return old;
}

bool config_readers_passed(const struct config_readers_mark *mark)
{
	if (__atomic_load_n(&n_readers_registered, __ATOMIC_SEQ_CST) > CONFIG_READERS_MAX)
		return false;
	for (int i = 0; i < mark->n_readers; i++)
		if (__atomic_load_n(&reader_passes[i].passes, __ATOMIC_SEQ_CST) == mark->passes[i])
			return false;
	return true;
}
