/*
 * admin.h: the admin console. A client that logs in to the database "pgmux"
 * (ADMIN_DATABASE) as one of admin_users gets a session that pgmux answers
 * itself, over the simple and the extended protocol, with results psql
 * renders as tables: SHOW HELP|POOLS|CLIENTS|SERVERS|TARGETS|STATS|CONFIG|
 * VERSION, PAUSE and RESUME [instance], RELOAD, CUTOVER TO 'host:port, ...',
 * KILL client_id, SHUTDOWN. client.c runs it through admin_console, which
 * main installs at start-up (client_set_console()).
 */
#ifndef PGMUX_ADMIN_H
#define PGMUX_ADMIN_H

#include <stdbool.h>

struct client;
struct client_console;

/* Login, input and end of an admin console session, for client_set_console(). */
extern const struct client_console admin_console;

/* The main thread finished a RELOAD, CUTOVER or SHUTDOWN this client asked for. */
void admin_reply(struct client *c, bool ok, const char *text);

#endif
