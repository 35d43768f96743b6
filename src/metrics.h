/*
 * metrics.h: pgmux's counters and gauges for Prometheus, over HTTP.
 *
 * With metrics_port set, GET http://listen_addr:metrics_port/metrics returns
 * the text exposition format: the SHOW STATS counters, and per pool and per
 * instance what SHOW POOLS and SHOW TARGETS show. GET /healthz (200 while
 * the process runs) and GET /readyz (200 while it accepts clients and knows a
 * writer, 503 otherwise) are the probes of a load balancer or Kubernetes.
 * Runs on the main thread's loop.
 */
#ifndef PGMUX_METRICS_H
#define PGMUX_METRICS_H

#include <event2/event.h>

#include "config.h"

/*
 * Listen on metrics_port (nothing when it is 0), on inherited_fd when it is
 * not -1 (a socket handed over by the process pgmux -R replaces). -1,
 * logged, when the port cannot be had.
 */
int metrics_start(struct event_base *base, const struct config *cfg, int inherited_fd);
void metrics_stop(void);
/* The listening socket, or -1 (to hand it over). */
int metrics_listen_fd(void);

#endif
