/*
 * histogram.h: latency histograms with fixed buckets from 100 us to 60 s,
 * for the Prometheus endpoint and SHOW STATS. A histogram has one writer
 * (the worker thread that owns it) and any number of readers: the writer
 * stores with relaxed atomics, so recording takes no lock and no
 * read-modify-write instruction, and a reader (a scrape) adds the workers'
 * histograms up with relaxed loads when asked.
 */
#ifndef PGMUX_HISTOGRAM_H
#define PGMUX_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

/* The upper bounds of the finite buckets, in microseconds; one more bucket holds the rest (+Inf). */
#define HISTOGRAM_BOUNDS 18
extern const uint64_t histogram_bounds_usec[HISTOGRAM_BOUNDS];

struct histogram {
	uint64_t buckets[HISTOGRAM_BOUNDS + 1]; /* not cumulative: [i] counts bounds[i-1] < v <= bounds[i] */
	uint64_t sum_usec;
};

/* Count one observation of usec microseconds. Only h's owning thread may call it. */
void histogram_record(struct histogram *h, uint64_t usec);

/* Add from (read with relaxed loads, from any thread) to into (the caller's own copy). */
void histogram_add(struct histogram *into, const struct histogram *from);

/* How many observations h holds (its own copy: plain reads). */
uint64_t histogram_count(const struct histogram *h);

/*
 * The cumulative count at or below each bound, as Prometheus' _bucket{le=...}
 * wants it: cumulative[i] for bounds[i], cumulative[HISTOGRAM_BOUNDS] for +Inf.
 */
void histogram_cumulative(const struct histogram *h, uint64_t cumulative[HISTOGRAM_BOUNDS + 1]);

#endif
