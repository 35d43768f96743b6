/*
 * harness_cutover.h: servers for the cutover tests that need a new target
 * which copies the old writer (test_cutover_catchup.c,
 * test_cutover_secretsmgr.c): the shop database with its items table, and a
 * logical subscription of one server to another's items.
 */
#ifndef PGMUX_TEST_HARNESS_CUTOVER_H
#define PGMUX_TEST_HARNESS_CUTOVER_H

#include "harness.h"

#define H_SHOP_DB "shop"
/* A publisher needs logical WAL; quick to notice a gone subscriber. */
#define H_PUBLISHER_CONF \
	"wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\nwal_sender_timeout = 5s\n"

/* Run sql as the superuser on the server at port, in dbname; fails the test on error. */
void h_exec_on(int port, const char *dbname, const char *sql);
/* The number sql returns as the superuser on the server at port, in dbname. */
long long h_number_on(int port, const char *dbname, const char *sql);
/* The app role and the shop database (owned by app) with the items table, on the server at port. */
void h_make_shop(int port);
/* The server at subscriber subscribes to the items of the one at publisher and has copied what was there. */
void h_subscribe(int publisher, int subscriber);
/* pgbench through pgmux at port: 8 clients, each inserting per_client rows (one per transaction) at rate per second. */
void h_start_inserts(struct h_cmd *bench, int port, int per_client, int rate);
/* Servers a (a publisher, H_PUBLISHER_CONF) and b, each with the shop database; no replication yet. */
void h_shop_servers_start(struct h_pg *a, struct h_pg *b);
/* A secrets_dir of the test's own (into dir): the app's and the superuser's secrets (the superuser: cutover_user). */
void h_secrets_dir_for_cutover(char *dir, size_t size);

#endif
