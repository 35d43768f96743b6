/*
 * cutover.h: moving pgmux to new instances without losing what the old
 * writer committed (CUTOVER TO, or a reload that changes hosts). On the main
 * thread: pause, let the transactions in flight end, wait until the new
 * target has caught up with the old writer, then switch the pools and
 * resume; or, when that cannot happen within cutover_timeout, go back to the
 * old instances as if nothing had been asked.
 */
#ifndef PGMUX_CUTOVER_H
#define PGMUX_CUTOVER_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

struct target_host;
struct worker;

/* What SHOW STATS and the metrics report about cutovers. */
struct cutover_stats {
	int count;                  /* cutovers that switched */
	int abandoned;              /* cutovers abandoned (the log says why) */
	bool in_progress;
	uint64_t last_pause_ms;     /* how long new transactions waited */
	uint64_t last_catchup_ms;   /* of that, how long the new target took to catch up */
	int last_in_flight;         /* transactions still running when it began */
	int last_waited;            /* clients waiting when the pools moved */
	int last_pinned;            /* pinned sessions left on the old instances */
	char last_hosts[256];
	char last_abandon_reason[256];
};

/*
 * Set up on the main thread's base. publish_hosts makes hosts the running
 * configuration's (in memory): an abandoned cutover puts the old ones back.
 */
int cutover_init(struct event_base *base, void (*publish_hosts)(const struct target_host *hosts, int n_hosts));
void cutover_cleanup(void);

/*
 * Begin moving from the instances before[0..n_before) to hosts (takes hosts;
 * copies before). When it is over, the worker w gets the admin reply for
 * client_id (w may be NULL). A cutover already under way starts its checks
 * again for the newest hosts; whoever asked hears when it ends.
 */
void cutover_begin(struct target_host *hosts, int n_hosts, const struct target_host *before, int n_before,
		   struct worker *w, uint64_t client_id);

bool cutover_in_progress(void);

/* Workers yet to handle WORKER_MSG_CUTOVER (each decrements it once done); atomic. */
extern int cutover_workers_pending;

void cutover_get_stats(struct cutover_stats *out);

/* "X/Y" (pg_lsn's text) as a number; false when text is not one. */
bool cutover_parse_lsn(const char *text, uint64_t *out);

#endif
