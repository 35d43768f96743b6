/*
 * harness_spread.c: following clients between workers (see harness_spread.h).
 */
#include "harness_spread.h"

#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

void h_spread_start(struct pgmux *p, struct pgmux_options *o, const char *pool_mode, int max_connections, int spread,
		    const char *extra_pgmux)
{
	h_wait_no_app_backends();
	pgmux_options_default(o);
	o->pool_mode = pool_mode;
	o->max_connections = max_connections;
	o->workers = 2;
	o->worker_spread_percent = spread;
	o->admin_users = h_env()->superuser;
	o->extra_pgmux = extra_pgmux;
	o->extra_pool = "max_idle_connections_percent = 100\nconnection_borrow_timeout = 20s";
	pgmux_start_ok(p, o);
}

/* The "address:port" SHOW CLIENTS lists conn under. */
static void peer_of(PGconn *conn, char *out, size_t n)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);

	cr_assert_eq(getsockname(PQsocket(conn), (struct sockaddr *)&sa, &len), 0, "getsockname");
	snprintf(out, n, "127.0.0.1:%d", ntohs(sa.sin_port));
}

char *h_client_cell(PGconn *admin, PGconn *conn, const char *col)
{
	char peer[64];

	peer_of(conn, peer, sizeof(peer));
	return h_admin_cell(admin, "SHOW CLIENTS", "address", peer, col);
}

int h_worker_of(PGconn *admin, PGconn *conn)
{
	char *v = h_client_cell(admin, conn, "worker");
	int w = v ? atoi(v) : -1;

	free(v);
	return w;
}

struct h_placement h_placement_of(PGconn *admin, const char *dbname)
{
	struct h_placement pl = {{0, 0}, 0, 0};
	PGresult *r = h_rows_ok(admin, "SHOW CLIENTS");
	int db = PQfnumber(r, "database"), wk = PQfnumber(r, "worker"), pin = PQfnumber(r, "pinned");

	cr_assert(db >= 0 && wk >= 0 && pin >= 0, "SHOW CLIENTS lacks database, worker or pinned");
	for (int i = 0; i < PQntuples(r); i++) {
		if (strcmp(PQgetvalue(r, i, db), dbname) != 0)
			continue;
		int w = atoi(PQgetvalue(r, i, wk));
		if (w == 0 || w == 1)
			pl.on[w]++;
		else
			pl.elsewhere++;
		if (PQgetvalue(r, i, pin)[0] != '\0')
			pl.pinned++;
	}
	PQclear(r);
	return pl;
}

void h_one_round(PGconn *const *conns, int n)
{
	for (int i = 0; i < n; i++)
		h_expect_value(conns[i], "select 1", "1");
}

bool h_run_until_on(PGconn *admin, PGconn *const *busy, int n_busy, PGconn *const *movers, int n_movers, int want,
		    int pause_ms, int timeout_ms)
{
	long long deadline = h_now_ms() + h_scaled_ms(timeout_ms);

	for (int round = 0;; round++) {
		h_one_round(busy, n_busy);
		if (pause_ms)
			h_sleep_ms(pause_ms);
		if (round % 4 != 3)
			continue;
		bool all = true;
		for (int i = 0; i < n_movers && all; i++)
			all = h_worker_of(admin, movers[i]) == want;
		if (all)
			return true;
		if (h_now_ms() > deadline)
			return false;
	}
}

void h_move_to(PGconn *admin, PGconn *const *busy, int n_busy, PGconn *const *movers, int n_movers, int want,
	       int pause_ms, const char *what)
{
	bool moved = h_run_until_on(admin, busy, n_busy, movers, n_movers, want, pause_ms, 15000);

	if (!moved) {
		PGresult *r = h_rows_ok(admin, "SHOW CLIENTS");
		for (int i = 0; i < PQntuples(r); i++)
			fprintf(stderr, "client %s %s/%s worker %s pinned '%s'\n", PQgetvalue(r, i, 0),
				PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, PQfnumber(r, "worker")),
				PQgetvalue(r, i, PQfnumber(r, "pinned")));
		PQclear(r);
		fprintf(stderr, "workers_taking_clients %lld, clients_moved_between_workers %lld\n",
			h_admin_stat(admin, "workers_taking_clients"), h_admin_stat(admin, "clients_moved_between_workers"));
		h_dump_current_logs();
	}
	cr_assert(moved, "%s: the clients did not reach worker %d within %d ms", what, want, h_scaled_ms(15000));
}

int h_gather_pause_ms(void)
{
	return h_under_valgrind() ? 40 : 5;
}

void h_open_idle(const struct pgmux *p, PGconn **out, int n)
{
	for (int i = 0; i < n; i++) {
		out[i] = h_app_session(p, "disable", NULL);
		h_expect_value(out[i], "select 1", "1");
	}
}

void h_close_all(PGconn **conns, int n)
{
	for (int i = 0; i < n; i++)
		PQfinish(conns[i]);
}
