/*
 * client_stats.h: the client module's recording points for the pool
 * statistics of stats.h (histograms, byte counts) and the slow-borrow and
 * long-transaction log lines.
 */
#ifndef PGMUX_CLIENT_STATS_H
#define PGMUX_CLIENT_STATS_H

#include <stdint.h>

struct client;
struct server;

/*
 * Recording points, on the worker that owns the client or server:
 * - a client got its server connection (client_link()): the wait since
 *   borrow_start_usec, and a log line when it passed log_slow_borrow;
 * - a client's message goes to its server: a transaction's clock starts
 *   with the first (client_relay()), a query's with a Query, Sync or
 *   FunctionCall when none was in flight (server_count_message());
 * - the server's ReadyForQuery goes to the client (the server's
 *   ready_for_query callback, which is this function): a query is over; with
 *   nothing in flight and status idle, the transaction too (and its log
 *   line when it passed log_long_transaction).
 */
void stats_borrow_ended(struct client *c);
void stats_ready_for_query(struct client *c, struct server *s);

#endif
