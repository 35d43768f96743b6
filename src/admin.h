/*
 * admin.h: the admin console. A client that logs in to the database "pgmux"
 * as one of admin_users gets a session that pgmux answers itself, over the
 * simple and the extended protocol, with results psql renders as tables:
 * SHOW HELP|POOLS|CLIENTS|SERVERS|TARGETS|STATS|CONFIG|VERSION, PAUSE and
 * RESUME [instance], RELOAD, CUTOVER TO 'host:port, ...', KILL client_id,
 * SHUTDOWN.
 */
#ifndef PGMUX_ADMIN_H
#define PGMUX_ADMIN_H

#include <stdbool.h>

struct client;

#define ADMIN_DATABASE "pgmux"

/* Finish the login of an authenticated admin client (ParameterStatus, ReadyForQuery). */
void admin_login(struct client *c);

/* Act on the admin client's buffered messages. Returns false if c was closed. */
bool admin_process_input(struct client *c);

/* The main thread finished a RELOAD, CUTOVER or SHUTDOWN this client asked for. */
void admin_reply(struct client *c, bool ok, const char *text);

void admin_session_free(struct client *c);

#endif
