/*
 * test_histogram.c: unit tests for histogram.c: which bucket a value lands
 * in (bounds are inclusive), the cumulative counts Prometheus wants, the sum,
 * and adding histograms up as a scrape does.
 */
#include <criterion/criterion.h>

#include <string.h>

#include "histogram.h"

Test(histogram, bounds_run_from_100_us_to_60_s_in_increasing_order)
{
	cr_assert_eq(histogram_bounds_usec[0], 100);
	cr_assert_eq(histogram_bounds_usec[HISTOGRAM_BOUNDS - 1], 60000000);
	for (int i = 1; i < HISTOGRAM_BOUNDS; i++)
		cr_assert_gt(histogram_bounds_usec[i], histogram_bounds_usec[i - 1]);
}

Test(histogram, a_value_lands_in_the_first_bucket_whose_bound_holds_it)
{
	struct histogram h;
	uint64_t cumulative[HISTOGRAM_BOUNDS + 1];

	memset(&h, 0, sizeof(h));
	histogram_record(&h, 0);        /* <= 100 us */
	histogram_record(&h, 100);      /* <= 100 us: bounds are inclusive, as Prometheus' le */
	histogram_record(&h, 101);      /* <= 250 us */
	histogram_record(&h, 100500);   /* a pg_sleep(0.1): <= 250 ms, not <= 100 ms */
	histogram_record(&h, 60000000); /* <= 60 s */
	histogram_record(&h, 60000001); /* +Inf */
	cr_assert_eq(h.buckets[0], 2);
	cr_assert_eq(h.buckets[1], 1);
	cr_assert_eq(h.buckets[9], 0, "100.5 ms is over the 100 ms bound");
	cr_assert_eq(h.buckets[10], 1);
	cr_assert_eq(h.buckets[HISTOGRAM_BOUNDS - 1], 1);
	cr_assert_eq(h.buckets[HISTOGRAM_BOUNDS], 1);
	cr_assert_eq(histogram_count(&h), 6);
	cr_assert_eq(h.sum_usec, 0 + 100 + 101 + 100500 + 60000000ull + 60000001ull);
	histogram_cumulative(&h, cumulative);
	cr_assert_eq(cumulative[0], 2);
	cr_assert_eq(cumulative[1], 3);
	cr_assert_eq(cumulative[9], 3);
	cr_assert_eq(cumulative[10], 4);
	cr_assert_eq(cumulative[HISTOGRAM_BOUNDS - 1], 5);
	cr_assert_eq(cumulative[HISTOGRAM_BOUNDS], 6, "+Inf counts everything");
}

Test(histogram, adding_up_keeps_every_bucket_and_the_sum)
{
	struct histogram a, b, total;

	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	memset(&total, 0, sizeof(total));
	for (int i = 0; i < 5; i++)
		histogram_record(&a, 3000);
	for (int i = 0; i < 3; i++)
		histogram_record(&b, 2000000);
	histogram_add(&total, &a);
	histogram_add(&total, &b);
	cr_assert_eq(total.buckets[5], 5, "3 ms: <= 5 ms");
	cr_assert_eq(total.buckets[13], 3, "2 s: <= 2.5 s");
	cr_assert_eq(histogram_count(&total), 8);
	cr_assert_eq(total.sum_usec, 5 * 3000 + 3 * 2000000);
}
