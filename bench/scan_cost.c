/*
 * scan_cost.c: what sql_scan() costs on the texts of a common workload
 * (pgbench's TPC-B statements and an ORM-style SELECT), for
 * bench/scan-cost.sh, which builds it against two revisions of sqlscan.c and
 * counts instructions with callgrind (repeatable on a busy machine).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "sqlscan.h"

#define ROUNDS 2000 /* per pass; scan-cost.sh divides by 2 x ROUNDS x the number of texts */

static const char *const carried[] = {
	"application_name", "client_encoding", "DateStyle", "IntervalStyle", "TimeZone", "standard_conforming_strings",
	NULL,
};

static const char *const texts[] = {
	"BEGIN;",
	"UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
	"SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
	"UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;",
	"UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;",
	"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
	"END;",
	"SELECT u.id, u.name, count(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id "
	"WHERE u.created_at > now() - interval '1 day' AND lower(u.email) = lower($1) "
	"GROUP BY u.id, u.name ORDER BY u.id LIMIT 50",
};

int main(void)
{
	size_t n = sizeof(texts) / sizeof(texts[0]);
	struct sql_scan_result r;
	unsigned sink = 0;

	/* Two passes (the first warms the caches); the second is timed. */
	for (int pass = 0; pass < 2; pass++) {
		struct timespec a, b;

		clock_gettime(CLOCK_MONOTONIC, &a);
		for (int i = 0; i < ROUNDS; i++) {
			for (size_t t = 0; t < n; t++) {
				sql_scan(texts[t], strlen(texts[t]), carried, SQL_SCAN_CARRY_SETS, &r);
				sink += r.effects;
			}
		}
		clock_gettime(CLOCK_MONOTONIC, &b);
		if (pass == 1)
			printf("%.1f ns per text (effects checksum %u)\n",
			       ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (ROUNDS * (double)n),
			       sink);
	}
	return 0;
}
