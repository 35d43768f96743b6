/*
 * pgmux.h: process-wide state shared by every thread: the current
 * configuration and the shutdown flags. The configuration pointer is swapped
 * by the main thread on reload; a struct config is never modified after it is
 * published, so a worker may keep using the pointer it loaded for the length
 * of a callback. A replaced one is freed only after every thread that reads
 * configurations has passed a point where it holds none (see
 * config_reader_quiescent()).
 */
#ifndef PGMUX_PGMUX_H
#define PGMUX_PGMUX_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

extern struct config *pgmux_config_ptr;

static inline const struct config *config_current(void)
{
	/* Sequentially consistent, like the swap and the readers' passes: see control.c. */
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

/* Client connections open across all workers (for graceful shutdown and caps). */
extern int64_t pgmux_client_count;

static inline int64_t pgmux_clients_open(void)
{
	return __atomic_load_n(&pgmux_client_count, __ATOMIC_RELAXED);
}

/* Monotonic clock in microseconds. */
uint64_t pgmux_now_usec(void);

#endif
