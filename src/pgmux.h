/*
 * pgmux.h: process-wide state shared by every thread, at the bottom of the
 * process layer (pgmux.c): the current configuration and its readers, the
 * process-wide counters and the clock. The configuration pointer is swapped
 * by the main thread on reload (control.c); a struct config is never
 * modified after it is published, so a worker may keep using the pointer it
 * loaded for the length of a callback. A replaced one is freed only after
 * every thread that reads configurations has passed a point where it holds
 * none (see config_reader_quiescent()).
 */
#ifndef PGMUX_PGMUX_H
#define PGMUX_PGMUX_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

extern struct config *pgmux_config_ptr;

static inline const struct config *config_current(void)
{
	/* Sequentially consistent, like the swap and the readers' passes: see pgmux.c. */
	return __atomic_load_n(&pgmux_config_ptr, __ATOMIC_SEQ_CST);
}

/*
 * Threads other than main that read the configuration (workers, the monitor)
 * take a reader number once, then call config_reader_quiescent() wherever
 * they hold no pointer into a struct config: between the passes of their
 * event loop.
 */
int config_reader_register(void);
void config_reader_quiescent(int reader);

/* Readers beyond this many (not possible with MAX_WORKERS) keep replaced configurations until exit. */
#define CONFIG_READERS_MAX 80 /* MAX_WORKERS workers and the monitor, with room to spare */

/* Each reader's pass count at one moment: when a configuration was replaced. */
struct config_readers_mark {
	uint64_t passes[CONFIG_READERS_MAX];
	int n_readers;
};

/*
 * Make next the current configuration (main thread) and note in *mark where
 * every reader was. Returns the configuration it replaced, which must stay
 * allocated until config_readers_passed(mark).
 */
struct config *config_publish(struct config *next, struct config_readers_mark *mark);

/* Has every reader passed a quiescent point since mark was taken? Then none holds what was replaced. */
bool config_readers_passed(const struct config_readers_mark *mark);

/* Client connections open across all workers (for graceful shutdown and caps). */
extern int64_t pgmux_client_count;

static inline int64_t pgmux_clients_open(void)
{
	return __atomic_load_n(&pgmux_client_count, __ATOMIC_RELAXED);
}

/*
 * Of those, the ones still logging in (startup, TLS handshake, password):
 * counted apart so that max_login_connections can keep connections that never
 * authenticate from taking every slot.
 */
extern int64_t pgmux_login_count;

static inline int64_t pgmux_logins_open(void)
{
	return __atomic_load_n(&pgmux_login_count, __ATOMIC_RELAXED);
}

/*
 * accept() failures for want of a descriptor (EMFILE, ENFILE, ENOBUFS,
 * ENOMEM); the main thread counts them, SHOW STATS and /metrics read them.
 */
extern uint64_t pgmux_accept_out_of_descriptors;

/* Monotonic clock in microseconds. */
uint64_t pgmux_now_usec(void);

/*
 * The same clock, read at most once per event-loop pass of a worker (the
 * first call after pgmux_pass_begin(), that is after epoll_wait returned)
 * and shared by everything handled in that pass, as PgBouncer and Redis
 * cache "now": a clock read costs some 40 ns on a virtual machine, and a
 * transaction asked for it eight times. A pass's value lags the true time
 * by at most the pass's own length; it is for statistics and idle checks,
 * never for a deadline that a loop waits on. On a thread that never calls
 * pgmux_pass_begin() it reads the clock every time. Values from different
 * threads, or from pgmux_now_usec(), may be out of order by a pass:
 * subtract them with pgmux_usec_since().
 */
extern __thread uint64_t pgmux_pass_usec;
extern __thread bool pgmux_pass_cached;

static inline uint64_t pgmux_pass_now_usec(void)
{
	if (pgmux_pass_usec == 0) {
		uint64_t now = pgmux_now_usec();

		if (!pgmux_pass_cached)
			return now;
		pgmux_pass_usec = now;
	}
	return pgmux_pass_usec;
}

/* A worker starts a loop pass: the next pgmux_pass_now_usec() reads the clock. */
static inline void pgmux_pass_begin(void)
{
	pgmux_pass_cached = true;
	pgmux_pass_usec = 0;
}

/* now - then, or 0 if then is later (two readings of the clock taken in different passes or threads). */
static inline uint64_t pgmux_usec_since(uint64_t then, uint64_t now)
{
	return now > then ? now - then : 0;
}

#endif
