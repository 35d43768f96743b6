/*
 * histogram.c: fixed-bucket latency histograms (see histogram.h). The
 * bounds follow a 1 / 2.5 / 5 progression from 100 us to 10 s, then 30 s
 * and 60 s, so that a query, a borrow, a login and a failover all land in
 * buckets narrow enough to read.
 */
#include "histogram.h"

const uint64_t histogram_bounds_usec[HISTOGRAM_BOUNDS] = {
	100,     250,     500,      1000,     2500,     5000,     10000,    25000,    50000,
	100000,  250000,  500000,   1000000,  2500000,  5000000,  10000000, 30000000, 60000000,
};

/* The bucket of usec: the first bound at or above it (binary search), or the +Inf bucket. */
static int bucket_of(uint64_t usec)
{
	int low = 0, high = HISTOGRAM_BOUNDS;

	while (low < high) {
		int mid = (low + high) / 2;

		if (usec <= histogram_bounds_usec[mid])
			high = mid;
		else
			low = mid + 1;
	}
	return low;
}

void histogram_record(struct histogram *h, uint64_t usec)
{
	int i = bucket_of(usec);

	/* One writer: a plain increment published with a relaxed store, which a reader never sees torn. */
	__atomic_store_n(&h->buckets[i], h->buckets[i] + 1, __ATOMIC_RELAXED);
	__atomic_store_n(&h->sum_usec, h->sum_usec + usec, __ATOMIC_RELAXED);
}

void histogram_add(struct histogram *into, const struct histogram *from)
{
	for (int i = 0; i <= HISTOGRAM_BOUNDS; i++)
		into->buckets[i] += __atomic_load_n(&from->buckets[i], __ATOMIC_RELAXED);
	into->sum_usec += __atomic_load_n(&from->sum_usec, __ATOMIC_RELAXED);
}

uint64_t histogram_count(const struct histogram *h)
{
	uint64_t count = 0;

	for (int i = 0; i <= HISTOGRAM_BOUNDS; i++)
		count += h->buckets[i];
	return count;
}

void histogram_cumulative(const struct histogram *h, uint64_t cumulative[HISTOGRAM_BOUNDS + 1])
{
	uint64_t running = 0;

	for (int i = 0; i <= HISTOGRAM_BOUNDS; i++) {
		running += h->buckets[i];
		cumulative[i] = running;
	}
}
