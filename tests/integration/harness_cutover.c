/*
 * harness_cutover.c: the servers of the cutover tests (see harness_cutover.h).
 */
#include "harness_cutover.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

void h_exec_on(int port, const char *dbname, const char *sql)
{
	PGconn *su = h_connect_super_port(port, dbname);
	h_exec_ok(su, sql);
	PQfinish(su);
}

long long h_number_on(int port, const char *dbname, const char *sql)
{
	PGconn *su = h_connect_super_port(port, dbname);
	char *v = h_value_ok(su, sql);
	long long n = atoll(v);
	free(v);
	PQfinish(su);
	return n;
}

void h_make_shop(int port)
{
	const struct h_env *e = h_env();
	char sql[400];
	snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN PASSWORD '%s'", e->appuser, e->apppass);
	h_exec_on(port, "postgres", sql);
	snprintf(sql, sizeof(sql), "CREATE DATABASE " H_SHOP_DB " OWNER %s", e->appuser);
	h_exec_on(port, "postgres", sql);
	snprintf(sql, sizeof(sql),
		 "CREATE TABLE items (id bigserial PRIMARY KEY, client int NOT NULL, note text); "
		 "ALTER TABLE items OWNER TO %s",
		 e->appuser);
	h_exec_on(port, H_SHOP_DB, sql);
}

void h_subscribe(int publisher, int subscriber)
{
	const struct h_env *e = h_env();
	char sql[600];
	h_exec_on(publisher, H_SHOP_DB, "CREATE PUBLICATION pub FOR TABLE items");
	snprintf(sql, sizeof(sql),
		 "CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port=%d user=%s password=%s dbname=" H_SHOP_DB
		 " sslmode=disable' PUBLICATION pub",
		 publisher, e->superuser, e->superpass);
	h_exec_on(subscriber, H_SHOP_DB, sql);
	PGconn *su = h_connect_super_port(subscriber, H_SHOP_DB);
	cr_assert(h_poll_value(su, "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'", "0",
			       h_scaled_ms(20000)),
		  "the subscription did not finish its initial copy");
	PQfinish(su);
}

void h_start_inserts(struct h_cmd *bench, int port, int per_client, int rate)
{
	const struct h_env *e = h_env();
	char pgbench[600], script[600], portstr[16], pw[300], t[16], r[16], f[700];
	snprintf(pgbench, sizeof(pgbench), "%s/pgbench", e->pgbin);
	snprintf(script, sizeof(script), "%s/insert.sql", h_test_dir());
	h_write_file(script, "INSERT INTO items (client, note) VALUES (:client_id, 'through pgmux');\n", 0644);
	snprintf(f, sizeof(f), "--file=%s", script);
	snprintf(portstr, sizeof(portstr), "%d", port);
	snprintf(pw, sizeof(pw), "PGPASSWORD=%s", e->apppass);
	snprintf(t, sizeof(t), "%d", per_client);
	snprintf(r, sizeof(r), "%d", rate);
	const char *argv[] = {pgbench, "-n", "-c", "8", "-j", "2", "-t", t, "-R", r, f, "-h", "127.0.0.1", "-p",
			      portstr, "-U", e->appuser, H_SHOP_DB, NULL};
	const char *env[] = {pw, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30", NULL};
	cr_assert(h_cmd_start(bench, argv, env));
}

void h_shop_servers_start(struct h_pg *a, struct h_pg *b)
{
	cr_assert(h_pg_start_with(a, H_PUBLISHER_CONF), "server A did not start");
	cr_assert(h_pg_start(b), "server B did not start");
	h_make_shop(a->port);
	h_make_shop(b->port);
}

void h_secrets_dir_for_cutover(char *dir, size_t size)
{
	const struct h_env *e = h_env();
	const char *users[] = { e->appuser, e->superuser };
	char from[700], to[700];

	snprintf(dir, size, "%s/secrets", h_test_dir());
	cr_assert_eq(mkdir(dir, 0700), 0);
	for (int i = 0; i < 2; i++) {
		snprintf(from, sizeof(from), "%s/%s.json", e->secrets, users[i]);
		snprintf(to, sizeof(to), "%s/%s.json", dir, users[i]);
		char *text = h_read_file(from);
		cr_assert(text[0] != '\0', "cannot read %s", from);
		h_write_file(to, text, 0600);
		free(text);
	}
}
