/*
 * dispatch.h: what a worker thread does with the work it is handed, on top
 * of the sessions it owns: a new connection, a cancel, an admin console
 * reply, a backend to open, migrate, retire or sweep, a KILL, the clients
 * whose wait for a backend ended, the freeing of closed clients and
 * servers, and the janitor's tick. worker.c runs the loop and calls these
 * through dispatch_worker_ops, which main passes to workers_start(): the
 * loop layer never calls up into the sessions.
 */
#ifndef PGMUX_DISPATCH_H
#define PGMUX_DISPATCH_H

#include "worker.h"

extern const struct worker_ops dispatch_worker_ops;

#endif
