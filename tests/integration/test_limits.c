/*
 * test_limits.c: the limits on what clients can make pgmux hold. First what
 * one client can make pgmux hold is bounded (issue 16): each test runs a
 * hostile pattern against a real pgmux in transaction pooling and checks
 * three things: pgmux's resident memory (VmRSS in /proc/PID/status) grows
 * by less than a stated bound, a bystander client keeps getting answers
 * meanwhile, and pgmux is still running at the end. Where a limit is
 * reached, the client over it must get an error naming the option that sets
 * it. Then the limits on clients themselves: max_client_connections,
 * idle_client_timeout and max_packet_size.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct pgmux px;

/*
 * Trust, no TLS, transaction pooling with two backends and one worker: the
 * bystander shares the hostile client's event loop, so a worker kept busy by
 * it would show in the bystander's answers.
 */
static void start_limits_pgmux_workers(int max_connections, const char *extra_pool, int workers)
{
	char pool[512];

	snprintf(pool, sizeof(pool), "max_idle_connections_percent = 100\n%s", extra_pool ? extra_pool : "");
	pgmux_start_trust(&px, "transaction", max_connections, workers, NULL, pool);
}

static void start_limits_pgmux_of(int max_connections, const char *extra_pool)
{
	start_limits_pgmux_workers(max_connections, extra_pool, 1);
}

static void start_limits_pgmux(const char *extra_pool)
{
	start_limits_pgmux_of(2, extra_pool);
}

/* pgmux's resident memory in kB (under valgrind, valgrind's, which holds pgmux's heap). */
static long rss_kb(void)
{
	char path[64], *status, *at;
	long kb = -1;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)px.pid);
	status = h_read_file(path);
	at = strstr(status, "VmRSS:");
	if (at)
		kb = strtol(at + 6, NULL, 10);
	free(status);
	cr_assert(kb > 0, "could not read VmRSS of pgmux (pid %d)", (int)px.pid);
	return kb;
}

/*
 * The bound on RSS growth a test states, looser under valgrind (its own
 * bookkeeping grows too), none under a sanitizer (AddressSanitizer keeps
 * freed memory in quarantine, 256 MB by default).
 */
static long rss_bound_kb(long mb)
{
	if (h_under_sanitizer())
		return LONG_MAX / 2;
	return (h_under_valgrind() ? 3 : 1) * mb * 1024;
}

/* The bystander must answer a SELECT now. */
static void bystander_answers(PGconn *bystander, const char *when)
{
	char *v = h_query_value(bystander, "select 1");

	if (v == NULL)
		pgmux_dump_logs(&px);
	cr_assert(v != NULL && strcmp(v, "1") == 0, "the bystander got no answer %s", when);
	free(v);
}

/* The messages a client may be sent before an error that ends it: answers to what it sent before. */
#define REPLIES "123CDINSTZnst"

/* A Query of len bytes of body whose text is "select length('xxx...')" (answer: its length). */
static size_t msg_query_of_size(struct h_buf *b, size_t len)
{
	const char *head = "select length('", *tail = "')";
	size_t x = len - strlen(head) - strlen(tail) - 1;

	h_buf_u8(b, 'Q');
	h_buf_i32(b, (int64_t)(4 + len));
	h_buf_put(b, head, strlen(head));
	for (size_t i = 0; i < x; i++)
		h_buf_u8(b, 'x');
	h_buf_put(b, tail, strlen(tail));
	h_buf_u8(b, 0);
	return x;
}

/* ================================================================ replies owed to a client */

TestSuite(limits, .fini = h_teardown, .timeout = 240);

/*
 * Counts the messages of a byte stream read piecewise: the type of each is
 * noted as its header arrives, its body skipped.
 */
struct msg_counter {
	uint8_t header[5];
	size_t have;          /* bytes of header seen */
	uint64_t skip;        /* body bytes still to skip */
	uint64_t by_type[256];
	uint64_t total;
};

static void count_bytes(struct msg_counter *m, const uint8_t *p, size_t n)
{
	while (n > 0) {
		if (m->skip > 0) {
			size_t k = n < m->skip ? n : (size_t)m->skip;

			m->skip -= k;
			p += k;
			n -= k;
			continue;
		}
		m->header[m->have++] = *p++;
		n--;
		if (m->have == 5) {
			m->by_type[m->header[0]]++;
			m->total++;
			m->skip = h_get_u32(m->header + 1) - 4;
			m->have = 0;
		}
	}
}

/* Read what is there now (non-blocking) into m; false at EOF or error. */
static bool drain_now(int fd, struct msg_counter *m)
{
	uint8_t chunk[65536];

	for (;;) {
		ssize_t n = recv(fd, chunk, sizeof(chunk), MSG_DONTWAIT);

		if (n > 0) {
			count_bytes(m, chunk, (size_t)n);
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		if (n < 0 && errno == EINTR)
			continue;
		return false;
	}
}

/*
 * A flood: chunk (whole messages) sent again and again, without blocking.
 * off is where the chunk in progress stands; sent counts every byte that
 * went; rss_max is the highest resident memory of pgmux seen meanwhile.
 */
struct flood {
	struct h_buf chunk;
	size_t off;
	size_t sent;
	long rss_max;
};

/* Send until pgmux stops taking the flood for a second, or limit bytes went (nothing stopped it). */
static void flood_until_held(int fd, struct flood *f, size_t limit)
{
	long long stalled_since = 0;

	f->rss_max = rss_kb();
	while (f->sent < limit) {
		ssize_t n = send(fd, f->chunk.p + f->off, f->chunk.len - f->off, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n > 0) {
			f->sent += (size_t)n;
			f->off = (f->off + (size_t)n) % f->chunk.len;
			stalled_since = 0;
			continue;
		}
		cr_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR),
			  "pgmux closed the connection during the flood: %s", strerror(errno));
		if (stalled_since == 0)
			stalled_since = h_now_ms();
		else if (h_now_ms() - stalled_since > 1000)
			break;
		long rss = rss_kb();
		if (rss > f->rss_max)
			f->rss_max = rss;
		h_sleep_ms(20);
	}
	f->rss_max = rss_kb() > f->rss_max ? rss_kb() : f->rss_max;
}

/* Send the rest of the chunk in progress, so that only whole messages went; what comes back goes to got. */
static void flood_finish(int fd, struct flood *f, struct msg_counter *got)
{
	while (f->off != 0) {
		ssize_t n = send(fd, f->chunk.p + f->off, f->chunk.len - f->off, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n > 0) {
			f->sent += (size_t)n;
			f->off = (f->off + (size_t)n) % f->chunk.len;
		} else {
			cr_assert(drain_now(fd, got), "pgmux closed the connection");
			h_sleep_ms(5);
		}
	}
}

/* Read into got until want messages of type came, at most 60 s (scaled). */
static void read_answers(int fd, struct msg_counter *got, uint8_t type, uint64_t want)
{
	long long deadline = h_now_ms() + h_scaled_ms(60000);

	while (got->by_type[type] < want && h_now_ms() < deadline) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};

		(void)poll(&pfd, 1, 100);
		cr_assert(drain_now(fd, got), "pgmux closed the connection while answering the flood");
	}
}

/*
 * Issue 16: Close messages sent behind a long statement each queued a reply
 * entry of ~112 bytes for 8 bytes read, and nothing stopped pgmux reading:
 * +266 MB after 19 MB sent. Now pgmux stops reading the client at
 * max_pending_replies, so the client's sends block (as against PostgreSQL
 * itself), pgmux stays small and the bystander on the same worker is
 * answered; once the statement ends every Close gets its CloseComplete, in
 * order, and the session goes on.
 */
Test(limits, close_flood_behind_a_sleep_is_back_pressured)
{
	const size_t flood_limit = 40u << 20;
	struct flood f = {0};
	struct msg_counter got = {0};
	PGconn *bystander;
	long rss_before;
	size_t closes_sent;
	int fd;

	start_limits_pgmux(NULL);
	bystander = h_app_session(&px, "disable", NULL);
	bystander_answers(bystander, "before the flood");
	fd = h_raw_session(&px, NULL, NULL);
	rss_before = rss_kb();

	struct h_buf q = {0};
	h_msg_query(&q, "select pg_sleep(3)");
	h_send_buf(fd, &q);
	h_buf_free(&q);
	/* 8,192 Closes (72 kB) a chunk: a whole number of messages. */
	for (int i = 0; i < 8192; i++)
		h_msg_target(&f.chunk, 'C', 'S', "s");

	/* Send until pgmux stops taking them for a second (or 40 MB went, the amount). */
	flood_until_held(fd, &f, flood_limit);
	cr_assert_lt(f.sent, flood_limit, "pgmux read all %zu bytes of Close messages: nothing stopped it", f.sent);
	cr_assert_lt(f.rss_max - rss_before, rss_bound_kb(24),
		     "pgmux grew by %ld kB for %zu bytes of Close messages (bound %ld kB)", f.rss_max - rss_before, f.sent,
		     rss_bound_kb(24));
	/* Paused on the hostile client, the worker still serves the bystander. */
	for (int i = 0; i < 20; i++)
		bystander_answers(bystander, "while the flood was held back");

	/* Finish the last Close, then every one must be answered, after the statement's own replies. */
	flood_finish(fd, &f, &got);
	closes_sent = f.sent / 8;
	read_answers(fd, &got, '3', closes_sent);
	cr_assert_eq(got.by_type['3'], closes_sent, "%zu Closes sent, %llu CloseComplete received", closes_sent,
		     (unsigned long long)got.by_type['3']);
	cr_assert_eq(got.by_type['Z'], 1, "the statement's ReadyForQuery");
	cr_assert_eq(got.by_type['E'], 0, "no error for a client within its bounds");

	/* The session goes on. */
	cr_assert(h_raw_query(fd, "select 42"), "select 42 failed after the flood");
	close(fd);
	h_buf_free(&f.chunk);
	bystander_answers(bystander, "after the flood");
	PQfinish(bystander);
	cr_assert(pgmux_running(&px), "pgmux exited");
	h_stop_expect_clean_exit(&px);
}

/*
 * A client that sends and never reads: Syncs outside a transaction are
 * answered by pgmux alone (ReadyForQuery), so the answers would pile up in
 * pgmux. It stops reading the client once 256 kB wait for it.
 */
Test(limits, unread_output_stops_reading_the_client)
{
	const size_t flood_limit = 40u << 20;
	struct flood f = {0};
	struct msg_counter got = {0};
	PGconn *bystander;
	long rss_before;
	int fd;

	start_limits_pgmux(NULL);
	bystander = h_app_session(&px, "disable", NULL);
	fd = h_raw_session(&px, NULL, NULL);
	rss_before = rss_kb();
	for (int i = 0; i < 8192; i++)
		h_msg_sync(&f.chunk);
	flood_until_held(fd, &f, flood_limit);
	cr_assert_lt(f.sent, flood_limit, "pgmux read all %zu bytes of Syncs from a client that reads nothing", f.sent);
	cr_assert_lt(f.rss_max - rss_before, rss_bound_kb(16), "pgmux grew by %ld kB (bound %ld kB)",
		     f.rss_max - rss_before, rss_bound_kb(16));
	for (int i = 0; i < 20; i++)
		bystander_answers(bystander, "while the client did not read");
	/* Reading resumes as the client reads: every Sync is answered. */
	flood_finish(fd, &f, &got);
	read_answers(fd, &got, 'Z', f.sent / 5);
	cr_assert_eq(got.by_type['Z'], f.sent / 5, "%zu Syncs sent, %llu ReadyForQuery received", f.sent / 5,
		     (unsigned long long)got.by_type['Z']);
	close(fd);
	h_buf_free(&f.chunk);
	bystander_answers(bystander, "after the flood");
	PQfinish(bystander);
	cr_assert(pgmux_running(&px), "pgmux exited");
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ the size of a message held whole */

/*
 * Issue 16: a 200 MB Query was buffered whole (+338 MB RSS). The default
 * max_buffered_message_size is now far below PostgreSQL's 1 GB, and a
 * client that announces more is refused at the header, before pgmux holds
 * any of it.
 */
Test(limits, a_huge_query_is_refused_at_its_header)
{
	PGconn *bystander;
	struct h_buf b = {0};
	long rss_before;
	int fd;

	start_limits_pgmux(NULL);
	bystander = h_app_session(&px, "disable", NULL);
	fd = h_raw_session(&px, NULL, NULL);
	rss_before = rss_kb();
	h_buf_u8(&b, 'Q');
	h_buf_i32(&b, 4 + (200u << 20));
	for (int i = 0; i < 65536; i++)
		h_buf_u8(&b, 'x');
	h_send_buf(fd, &b);
	h_buf_free(&b);
	h_raw_expect_fatal(fd, "54000", "max_buffered_message_size", REPLIES, "a message over max_buffered_message_size");
	cr_assert_lt(rss_kb() - rss_before, rss_bound_kb(8), "pgmux grew by %ld kB", rss_kb() - rss_before);
	bystander_answers(bystander, "after the refused message");
	PQfinish(bystander);
	cr_assert(pgmux_running(&px), "pgmux exited");
	h_stop_expect_clean_exit(&px);
}

/*
 * The limit is exact, and it applies only to what pgmux holds: a Query of
 * exactly max_buffered_message_size runs, one byte more is refused, and
 * COPY data far larger streams through.
 */
Test(limits, max_buffered_message_size_is_exact_and_copy_streams)
{
	const size_t limit = 256 * 1024;
	PGconn *bystander, *copier;
	struct h_buf b = {0};
	char want[32], *got;
	int fd;

	start_limits_pgmux("max_buffered_message_size = 256kB");
	bystander = h_app_session(&px, "disable", NULL);

	fd = h_raw_session(&px, NULL, NULL);
	snprintf(want, sizeof(want), "%zu", msg_query_of_size(&b, limit));
	h_send_buf(fd, &b);
	cr_assert(h_raw_read_until_ready(fd, &got), "a Query of exactly max_buffered_message_size failed");
	cr_assert(got && strcmp(got, want) == 0, "a Query of exactly max_buffered_message_size: got %s, want %s",
		  got ? got : "an error", want);
	free(got);
	b.len = 0;
	msg_query_of_size(&b, limit + 1);
	h_send_buf(fd, &b);
	h_raw_expect_fatal(fd, "54000", "max_buffered_message_size", REPLIES, "a message over max_buffered_message_size");
	h_buf_free(&b);
	bystander_answers(bystander, "after the refused message");

	/* 4 MB of COPY data in one CopyData message: 16 times the limit, streamed. */
	copier = h_app_session(&px, "disable", NULL);
	h_exec_ok(copier, "begin");
	h_exec_ok(copier, "create temp table big (t text) on commit drop");
	PGresult *r = PQexec(copier, "copy big from stdin");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN, "copy: %s", PQerrorMessage(copier));
	PQclear(r);
	size_t n = 4u << 20;
	char *line = malloc(n + 1);
	memset(line, 'y', n);
	line[n] = '\n';
	cr_assert_eq(PQputCopyData(copier, line, (int)n + 1), 1, "%s", PQerrorMessage(copier));
	free(line);
	cr_assert_eq(PQputCopyEnd(copier, NULL), 1, "%s", PQerrorMessage(copier));
	r = PQgetResult(copier);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "copy of 4 MB: %s", PQerrorMessage(copier));
	PQclear(r);
	while ((r = PQgetResult(copier)) != NULL)
		PQclear(r);
	h_expect_value(copier, "select length(t) from big", "4194304");
	h_exec_ok(copier, "commit");
	PQfinish(copier);
	bystander_answers(bystander, "after the copy");
	PQfinish(bystander);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ named statements per client */

/* A 4 kB statement text, distinct for each i. */
static void statement_text(char *sql, size_t cap, int i)
{
	int n = snprintf(sql, cap, "select %d as n, '", i);

	while ((size_t)n < 4096 - 3 && (size_t)n < cap - 3)
		sql[n++] = 'z';
	snprintf(sql + n, cap - (size_t)n, "'");
}

/*
 * Issue 16: 30,000 named statements of 4 kB from one client grew pgmux by
 * 330 MB while the backend kept 100. With max_client_prepared_statements
 * (default 1000) the Parse of one more is refused with 54000 naming the
 * option, pgmux stays small, and the bystander does not notice.
 */
Test(limits, named_statements_per_client_are_capped)
{
	PGconn *bystander, *hoarder;
	static char sql[4200];
	char name[32];
	long rss_before;
	int i;

	start_limits_pgmux(NULL);
	bystander = h_app_session(&px, "disable", NULL);
	hoarder = h_app_session(&px, "disable", NULL);
	rss_before = rss_kb();
	for (i = 0; i < 30000; i++) {
		PGresult *r;

		statement_text(sql, sizeof(sql), i);
		snprintf(name, sizeof(name), "s%d", i);
		r = PQprepare(hoarder, name, sql, 0, NULL);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);

			cr_assert_eq(i, 1000, "statement %d refused (%s), the limit is 1000", i,
				     PQresultErrorMessage(r));
			/* libpq reports a FATAL before the close with the connection's message, without fields. */
			cr_assert(code == NULL || strcmp(code, "54000") == 0, "SQLSTATE %s", code);
			cr_assert(strstr(PQerrorMessage(hoarder), "FATAL") &&
					  strstr(PQerrorMessage(hoarder), "max_client_prepared_statements"),
				  "message: %s", PQerrorMessage(hoarder));
			PQclear(r);
			break;
		}
		PQclear(r);
		if (i % 100 == 0)
			bystander_answers(bystander, "while a client prepared statements");
	}
	cr_assert_eq(i, 1000, "all %d statements were accepted", i);
	cr_assert_neq(PQstatus(hoarder), CONNECTION_OK, "the client over the limit is disconnected");
	cr_assert_lt(rss_kb() - rss_before, rss_bound_kb(32), "pgmux grew by %ld kB for 1000 statements of 4 kB",
		     rss_kb() - rss_before);
	PQfinish(hoarder);
	bystander_answers(bystander, "after the client over the limit left");
	PQfinish(bystander);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ pools created by logins */

/* How many pools SHOW POOLS lists. */
static int pool_count(PGconn *admin)
{
	PGresult *r = PQexec(admin, "SHOW POOLS");
	int n;

	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "SHOW POOLS: %s", PQerrorMessage(admin));
	n = PQntuples(r);
	PQclear(r);
	return n;
}

struct pools_back {
	PGconn *admin;
	int want;
};

static bool pools_back_to(void *arg)
{
	struct pools_back *b = arg;

	return pool_count(b->admin) <= b->want;
}

/*
 * Issue 16: 300 logins naming made-up databases left 300 pools, never
 * freed. A pool that no client holds and that has no connection is freed
 * now: the count of pools comes back to what it was, pgmux stays small, and
 * the bystander's own pool (it stays logged in) is untouched.
 */
Test(limits, pools_of_made_up_databases_are_freed)
{
	int logins = h_under_valgrind() ? 60 : 300;
	PGconn *bystander, *admin;
	long rss_before;
	int before;

	start_limits_pgmux(NULL);
	bystander = h_app_session(&px, "disable", NULL);
	bystander_answers(bystander, "before the logins");
	admin = h_admin_session(&px);
	before = pool_count(admin);
	cr_assert_eq(before, 1, "the bystander's pool, and only it, before the logins");
	rss_before = rss_kb();
	for (int i = 0; i < logins; i++) {
		char extra[64];
		PGconn *conn;

		snprintf(extra, sizeof(extra), "dbname=no_such_db_%d", i);
		conn = h_connect_app(px.port, "disable", extra);
		cr_assert_neq(PQstatus(conn), CONNECTION_OK, "a login to a database that does not exist succeeded");
		cr_assert(strstr(PQerrorMessage(conn), "does not exist"), "login %d: %s", i, PQerrorMessage(conn));
		PQfinish(conn);
		if (i % 50 == 0)
			bystander_answers(bystander, "during the logins");
	}
	struct pools_back back = {admin, before};
	bool freed = h_poll_until(pools_back_to, &back, h_scaled_ms(10000));
	cr_assert(freed, "%d pools listed %d s after %d failed logins (%d before)", pool_count(admin),
		  h_scaled_ms(10000) / 1000, logins, before);
	cr_assert_lt(rss_kb() - rss_before, rss_bound_kb(16), "pgmux grew by %ld kB", rss_kb() - rss_before);
	/* The bystander's pool is still there and serves it. */
	bystander_answers(bystander, "after the pools were freed");
	cr_assert_eq(pool_count(admin), 1);
	/* A pool freed comes back when a client needs it again. */
	PGconn *again = h_app_session(&px, "disable", NULL);
	h_expect_value(again, "select 2", "2");
	PQfinish(again);
	PQfinish(admin);
	PQfinish(bystander);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ a bystander's own baseline */

struct bystander_run {
	int queries;
	double p99_ms;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Run "select 1" on conn for ms milliseconds: how many answered, and the 99th percentile latency. */
static struct bystander_run bystander_measure(PGconn *conn, int ms)
{
	static double lat[1 << 20];
	struct bystander_run run = {0, 0};
	long long end = h_now_ms() + ms;
	struct timespec t0, t1;

	while (h_now_ms() < end && run.queries < (int)(sizeof(lat) / sizeof(lat[0]))) {
		PGresult *r;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		r = PQexec(conn, "select 1");
		clock_gettime(CLOCK_MONOTONIC, &t1);
		cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "the bystander's select 1 failed: %s",
			     PQerrorMessage(conn));
		PQclear(r);
		lat[run.queries++] = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	}
	cr_assert_gt(run.queries, 0, "the bystander got no answer in %d ms", ms);
	qsort(lat, (size_t)run.queries, sizeof(lat[0]), cmp_double);
	run.p99_ms = lat[(size_t)run.queries * 99 / 100];
	return run;
}

/*
 * The bystander under a hostile pattern against its own baseline: at least
 * a sixth of the throughput, a p99 at most 20 times as long but under 15 ms
 * allowed (generous: two cores, other tests, valgrind). Before the fixes the stalled clients of
 * issue 16 left it no backend at all, and self-termination cut its
 * throughput 16-fold and multiplied its p99 a hundredfold.
 */
static void bystander_within_baseline(struct bystander_run base, struct bystander_run under, const char *what)
{
	cr_log_info("%s: bystander %d queries, p99 %.3f ms; baseline %d queries, p99 %.3f ms", what, under.queries,
		    under.p99_ms, base.queries, base.p99_ms);
	/* A sixth of the baseline: the faults cost more than 90 % (issue 16: 36,474 to 2,316 queries). */
	cr_assert_geq(under.queries * 6, base.queries, "%s: the bystander ran %d queries, %d without it", what,
		      under.queries, base.queries);
	/*
	 * 20 times the baseline, but never under 15 ms: on two CPUs, the
	 * backends PostgreSQL forks and ends for the other client delay a few
	 * of the bystander's queries by milliseconds whatever pgmux does. The
	 * faults these tests guard against cost 20 ms and more (issue 16: 21.7
	 * ms, and 117 ms in this test before the fix).
	 */
	double bound = base.p99_ms * 20 > 15.0 ? base.p99_ms * 20 : 15.0;

	cr_assert_leq(under.p99_ms, bound, "%s: the bystander's p99 was %.3f ms, %.3f ms without it (bound %.1f ms)",
		      what, under.p99_ms, base.p99_ms, bound);
}

/* ================================================================ a client that stalls mid-message */

/*
 * Issue 16: two clients each sent a Query header and 3 bytes, then
 * stalled: both backends of a pool of two stayed borrowed until they
 * disconnected, and a third client's login timed out with 53300. A backend
 * is now borrowed only once the message (and its batch) is whole: the
 * third client logs in and its throughput and p99 stay near its baseline;
 * when the stalled clients finish their messages they are answered.
 */
Test(limits, clients_stalled_mid_message_hold_no_backend)
{
	const char *sql = "select 'stalled'";
	int ms = h_scaled_ms(2000);
	struct h_buf q = {0};
	int stalled[2];
	PGconn *bystander;
	struct bystander_run base, under;

	start_limits_pgmux("connection_borrow_timeout = 10s");
	bystander = h_app_session(&px, "disable", NULL);
	base = bystander_measure(bystander, ms);
	PQfinish(bystander);

	h_msg_query(&q, sql);
	for (int i = 0; i < 2; i++) {
		stalled[i] = h_raw_session(&px, NULL, NULL);
		cr_assert(h_raw_send(stalled[i], q.p, 8), "could not send to pgmux"); /* the header and 3 bytes of the text */
	}
	h_sleep_ms(200);
	/* A new login (which needs a backend) and a steady load beside the stalled clients. */
	bystander = h_app_session(&px, "disable", NULL);
	under = bystander_measure(bystander, ms);
	bystander_within_baseline(base, under, "two clients stalled mid-message");

	for (int i = 0; i < 2; i++) {
		char *v;

		cr_assert(h_raw_send(stalled[i], q.p + 8, q.len - 8), "could not send to pgmux");
		cr_assert(h_raw_read_until_ready(stalled[i], &v), "the stalled client %d got an error once it finished", i);
		cr_assert(v && strcmp(v, "stalled") == 0, "the stalled client %d got %s once it finished", i,
			  v ? v : "an error");
		free(v);
		close(stalled[i]);
	}
	h_buf_free(&q);
	PQfinish(bystander);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ idle_transaction_timeout */

/*
 * With idle_transaction_timeout, a client that sits inside a transaction
 * holds its backend only that long: it is closed with FATAL 25P03 naming
 * the option, its backend closed (rolling the transaction back), and a
 * client waiting for the only backend gets it. A client whose statement
 * runs longer than the timeout is not idle and is left alone.
 */
Test(limits, idle_transaction_timeout_frees_the_backend)
{
	PGconn *idler, *waiter, *busy, *super;
	long long t0, waited;
	PGresult *r;

	start_limits_pgmux_of(1, "idle_transaction_timeout = 1s\nconnection_borrow_timeout = 30s");
	/* A statement longer than the timeout, in a transaction, is work, not idleness. */
	busy = h_app_session(&px, "disable", NULL);
	h_exec_ok(busy, "begin");
	h_exec_ok(busy, "select pg_sleep(2.5)");
	h_expect_value(busy, "select 'still here'", "still here");
	h_exec_ok(busy, "commit");
	PQfinish(busy);

	/* The only backend, held in an open transaction by a client that then says nothing. */
	idler = h_app_session(&px, "disable", NULL);
	h_exec_ok(idler, "begin");
	h_exec_ok(idler, "create temp table left_open (i int)");
	t0 = h_now_ms();
	/* Logging in needs a backend: it waits for the idler's. */
	waiter = h_app_session(&px, "disable", NULL);
	waited = h_now_ms() - t0;
	cr_assert_geq(waited, 900, "a backend was free after %lld ms: the idler was closed too early", waited);
	cr_assert_lt(waited, h_scaled_ms(8000), "the idler held the backend for %lld ms", waited);
	h_expect_value(waiter, "select 3", "3");

	/* The idler was told why. */
	r = PQexec(idler, "select 1");
	cr_assert_neq(PQresultStatus(r), PGRES_TUPLES_OK, "the idle transaction survived the timeout");
	cr_assert(strstr(PQerrorMessage(idler), "idle_transaction_timeout"), "the idler got: %s",
		  PQerrorMessage(idler));
	PQclear(r);
	/* Its transaction was rolled back with its backend: its temp table is gone. */
	super = h_connect_super_direct();
	cr_assert(h_poll_value(super, "select count(*) from pg_class where relname = 'left_open'", "0",
			       h_scaled_ms(5000)),
		  "the idle transaction's temp table is still there");
	PQfinish(super);
	PQfinish(idler);
	PQfinish(waiter);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ a client that terminates its own backends */

struct terminator {
	pthread_t thread;
	atomic_bool stop;
	atomic_int terminated;
	char *conninfo;
};

/* Loop "select pg_terminate_backend(pg_backend_pid())" on one session through pgmux until told to stop. */
static void *terminator_main(void *arg)
{
	struct terminator *t = arg;
	PGconn *conn = PQconnectdb(t->conninfo);

	while (!atomic_load(&t->stop) && PQstatus(conn) == CONNECTION_OK) {
		PGresult *r = PQexec(conn, "select pg_terminate_backend(pg_backend_pid())");

		/* With transaction pooling the session survives: its statement fails with ERROR 57P01. */
		if (PQresultStatus(r) != PGRES_TUPLES_OK)
			atomic_fetch_add(&t->terminated, 1);
		PQclear(r);
	}
	PQfinish(conn);
	return NULL;
}

/*
 * Issue 16: a client looping pg_terminate_backend(pg_backend_pid()) cut a
 * bystander's select 1 loop from 36,474 to 2,316 queries in 4 s and raised
 * its p99 from 0.21 to 21.7 ms: each FATAL made the whole instance suspect,
 * and every borrow then dropped the idle backends and waited for a health
 * check. One backend's end is now that backend's business: the bystander
 * keeps its throughput and p99 near its own baseline, and the instance is
 * never reported as having lost a connection.
 */
Test(limits, a_client_terminating_its_own_backends_does_not_slow_others)
{
	int ms = h_scaled_ms(3000);
	struct terminator t = {0};
	struct bystander_run base, under;
	PGconn *bystander;

	/*
	 * Two backends, as in the issue: one for each client. Two workers, as
	 * by default on this machine (one per CPU): the two clients land on
	 * different ones (round robin). On one worker the bystander would wait
	 * for the SCRAM computation of each new backend login the terminating
	 * client causes, which libpq does on that worker's loop (a limit of
	 * pgmux's backend connections, not of this rule).
	 */
	start_limits_pgmux_workers(2, NULL, 2);
	bystander = h_app_session(&px, "disable", NULL);
	base = bystander_measure(bystander, ms);

	t.conninfo = h_conninfo(px.port, "app", h_env()->apppass, "disable", NULL);
	cr_assert_eq(pthread_create(&t.thread, NULL, terminator_main, &t), 0);
	/* Once it is under way. */
	for (long long end = h_now_ms() + h_scaled_ms(10000); atomic_load(&t.terminated) < 3 && h_now_ms() < end;)
		h_sleep_ms(10);
	int before = atomic_load(&t.terminated);
	under = bystander_measure(bystander, ms);
	int during = atomic_load(&t.terminated) - before;
	atomic_store(&t.stop, true);
	pthread_join(t.thread, NULL);
	free(t.conninfo);

	cr_assert_geq(before, 3, "the terminating client never got going");
	cr_assert_geq(during, 10, "the terminating client ended only %d backends while the bystander ran", during);
	/*
	 * Not under valgrind: each new backend connection's SCRAM exchange runs
	 * in libpq on the worker's loop, which valgrind slows some fifty times,
	 * so there the terminating client's own connections stall the worker
	 * whatever the pool does. The bystander must still have been answered
	 * (bystander_measure() fails otherwise).
	 */
	if (!h_under_valgrind() && !h_under_sanitizer())
		bystander_within_baseline(base, under, "a client terminating its own backends");
	PQfinish(bystander);
	cr_assert(pgmux_running(&px), "pgmux exited");
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ clients: how many, and how long idle */

TestSuite(client_limits, .fini = h_teardown, .timeout = 120);

/* A client that must get in; retried while pgmux still counts a client that just left. */
static PGconn *app_eventually(void)
{
	long long deadline = h_now_ms() + h_scaled_ms(5000);
	for (;;) {
		PGconn *conn = h_connect_app(px.port, "disable", NULL);
		if (PQstatus(conn) == CONNECTION_OK)
			return conn;
		if (h_now_ms() >= deadline) {
			pgmux_dump_logs(&px);
			cr_assert_fail("no connection within 5 s: %s", PQerrorMessage(conn));
		}
		PQfinish(conn);
		h_sleep_ms(20);
	}
}

Test(client_limits, max_client_connections)
{
	pgmux_start_transaction(&px, 2, "max_client_connections = 5", NULL);
	PGconn *c[5];
	for (int i = 0; i < 5; i++)
		c[i] = app_eventually();
	for (int i = 0; i < 5; i++)
		h_expect_value(c[i], "select 1", "1");

	PGconn *sixth = h_connect_app(px.port, "disable", NULL);
	cr_assert_neq(PQstatus(sixth), CONNECTION_OK, "a 6th client got in with max_client_connections = 5");
	const char *err = PQerrorMessage(sixth);
	cr_assert(strstr(err, "FATAL") != NULL && strstr(err, "max_client_connections") != NULL,
		  "the 6th client's error does not name max_client_connections: %s", err);
	PQfinish(sixth);

	/* the SQLSTATE, read from the raw ErrorResponse */
	int fd = h_raw_connect(px.port, 2000);
	cr_assert(fd >= 0);
	uint8_t buf[256];
	const char *params[] = {"user", "app", "database", "postgres", NULL};
	size_t len = h_build_startup(buf, sizeof(buf), 196608, params);
	cr_assert(h_raw_send(fd, buf, len));
	h_raw_expect_fatal(fd, "53300", NULL, NULL, "a 6th client");

	for (int i = 0; i < 5; i++)
		h_expect_value(c[i], "select 2", "2");
	PQfinish(c[0]);
	PGconn *again = app_eventually();
	h_expect_value(again, "select 'in again'", "in again");
	PQfinish(again);
	for (int i = 1; i < 5; i++)
		PQfinish(c[i]);
	h_stop_expect_clean_exit(&px);
}

Test(client_limits, idle_client_timeout)
{
	pgmux_start_transaction(&px, 2, "idle_client_timeout = 1s", NULL);
	PGconn *idle = h_app_session(&px, "disable", NULL), *busy = h_app_session(&px, "disable", NULL);
	struct h_notices n = {0};
	PQsetNoticeReceiver(idle, h_record_notices, &n);
	h_expect_value(idle, "select 1", "1");
	long long t0 = h_now_ms();
	cr_assert_eq(PQsendQuery(busy, "select pg_sleep(2)"), 1);

	/* The idle one is closed: an ErrorResponse 57P05 (a notice to libpq while idle), then EOF. */
	bool closed = false;
	long long deadline = t0 + h_scaled_ms(5000);
	while (!closed && h_now_ms() < deadline) {
		struct pollfd pfd = {.fd = PQsocket(idle), .events = POLLIN};
		poll(&pfd, 1, (int)(deadline - h_now_ms()));
		closed = !PQconsumeInput(idle) || PQstatus(idle) == CONNECTION_BAD;
		(void)PQisBusy(idle); /* parses what came: the ErrorResponse goes to the notice receiver */
	}
	long long took = h_now_ms() - t0;
	if (!closed)
		pgmux_dump_logs(&px);
	cr_assert(closed, "an idle client was still connected %lld ms after its last query (idle_client_timeout = 1s)",
		  took);
	cr_assert_geq(took, 900, "the idle client was closed after %lld ms, before idle_client_timeout = 1s", took);
	cr_assert_str_eq(n.sqlstate, "57P05", "the idle client was closed with SQLSTATE \"%s\", expected 57P05",
			 n.sqlstate);
	cr_assert_str_eq(n.severity, "FATAL");

	/* The one whose query ran longer than the timeout was not idle. */
	PGresult *r = h_get_result(busy, h_scaled_ms(10000));
	cr_assert_not_null(r, "pg_sleep(2) gave no result");
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "a client busy in pg_sleep(2) was cut off: %s",
		     PQerrorMessage(busy));
	PQclear(r);
	h_drain_results(busy);
	PQfinish(idle);
	PQfinish(busy);

	PGconn *fresh = h_app_session(&px, "disable", NULL);
	h_expect_value(fresh, "select 'fresh'", "fresh");
	PQfinish(fresh);
	h_stop_expect_clean_exit(&px);
}

/* ================================================================ max_packet_size */

#define MAX_PACKET_SIZE 8192

static void init_max_packet(const char *pool_mode)
{
	struct pgmux_options o;
	pgmux_options_default(&o);
	o.extra_pgmux = "max_packet_size = 8kB";
	o.pool_mode = pool_mode;
	/* One backend: a refused client that kept its backend would stop everyone else. */
	o.max_connections = 1;
	pgmux_start_ok(&px, &o);
}

static void init_max_packet_session(void)
{
	init_max_packet("session");
}

static void init_max_packet_transaction(void)
{
	init_max_packet("transaction");
}

#define MAX_PACKET_MESSAGE "exceeds max_packet_size"

/* "select length('xxx...')" whose text is text_len bytes long (malloc'd). */
static char *query_of_length(size_t text_len)
{
	static const char head[] = "select length('", tail[] = "')";
	size_t fixed = strlen(head) + strlen(tail);
	cr_assert_gt(text_len, fixed);
	char *q = malloc(text_len + 1);
	cr_assert_not_null(q);
	memcpy(q, head, strlen(head));
	memset(q + strlen(head), 'x', text_len - fixed);
	memcpy(q + text_len - strlen(tail), tail, strlen(tail) + 1);
	return q;
}

/*
 * The first result of a query sent with PQsend* must be pgmux's FATAL 54000
 * for an oversized message (the first: PQexec would return libpq's own
 * "connection closed" result that follows it); the connection is then closed.
 */
static void expect_too_large(PGconn *conn, int sent, const char *what)
{
	cr_assert_eq(sent, 1, "%s: not sent: %s", what, PQerrorMessage(conn));
	PGresult *r = h_get_result(conn, h_scaled_ms(5000));
	cr_assert_not_null(r, "%s: no result", what);
	cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "%s: status %s, expected an error", what,
		     PQresStatus(PQresultStatus(r)));
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	const char *severity = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	cr_assert(state && strcmp(state, "54000") == 0, "%s: SQLSTATE %s, expected 54000: %s", what,
		  state ? state : "(none)", PQerrorMessage(conn));
	cr_assert(severity && strcmp(severity, "FATAL") == 0, "%s: severity %s", what, severity ? severity : "(none)");
	cr_assert(strstr(PQresultErrorMessage(r), MAX_PACKET_MESSAGE) != NULL, "%s: message %s", what,
		  PQresultErrorMessage(r));
	PQclear(r);
	h_drain_results(conn);
	PGresult *after = PQexec(conn, "select 1");
	cr_assert_neq(PQresultStatus(after), PGRES_TUPLES_OK, "%s: the connection still works", what);
	PQclear(after);
	cr_assert_eq(PQstatus(conn), CONNECTION_BAD, "%s: the connection was not closed", what);
}

/* The largest Query ('Q': text and its NUL) passes; one byte more is refused, and only that client goes. */
static void query_limit_test(void)
{
	PGconn *conn = h_app_session(&px, "require", NULL);
	char *q = query_of_length(MAX_PACKET_SIZE - 1);
	char want[16];
	snprintf(want, sizeof(want), "%zu", MAX_PACKET_SIZE - 1 - strlen("select length('')"));
	h_expect_value(conn, q, want);
	free(q);

	q = query_of_length(MAX_PACKET_SIZE);
	expect_too_large(conn, PQsendQuery(conn, q), "a Query one byte over max_packet_size");
	free(q);
	PQfinish(conn);
	cr_assert(h_file_wait_contains(px.logfile, MAX_PACKET_MESSAGE, h_scaled_ms(2000)),
		  "pgmux's log does not say why the client was closed");
	h_expect_serves_new_client(&px);
}

TestSuite(max_packet, .init = init_max_packet_session, .fini = h_teardown, .timeout = 120);

Test(max_packet, query_over_the_limit_is_refused_with_54000)
{
	query_limit_test();
	h_stop_expect_clean_exit(&px);
}

TestSuite(max_packet_txn, .init = init_max_packet_transaction, .fini = h_teardown, .timeout = 120);

Test(max_packet_txn, query_over_the_limit_is_refused_with_54000)
{
	query_limit_test();
	h_stop_expect_clean_exit(&px);
}

/*
 * An oversized message is refused before a backend is borrowed for it: while
 * another client's transaction holds the only backend, the sender gets 54000
 * at once rather than after waiting for that backend.
 */
Test(max_packet_txn, refused_without_waiting_for_a_backend)
{
	/* Both log in first: a login borrows a backend too. */
	PGconn *holder = h_app_session(&px, "require", NULL);
	PGconn *conn = h_app_session(&px, "require", NULL);
	h_exec_ok(holder, "begin");
	h_expect_value(holder, "select 1", "1");

	char *q = query_of_length(MAX_PACKET_SIZE);
	long long t0 = h_now_ms();
	expect_too_large(conn, PQsendQuery(conn, q), "a Query one byte over max_packet_size, all backends busy");
	long long waited = h_now_ms() - t0;
	free(q);
	PQfinish(conn);
	cr_assert_lt(waited, h_scaled_ms(1000), "the oversized Query was refused only after %lld ms", waited);

	h_expect_value(holder, "select 2", "2");
	h_exec_ok(holder, "commit");
	PQfinish(holder);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}

/* A Parse (name, text, NUL, int16 0) checked the same way; a session in a transaction keeps working. */
Test(max_packet_txn, parse_over_the_limit_is_refused_with_54000)
{
	size_t parse_overhead = 1 + 1 + 2; /* the unnamed statement's NUL, the text's NUL, no parameter types */
	PGconn *conn = h_app_session(&px, "require", NULL);
	char *q = query_of_length(MAX_PACKET_SIZE - parse_overhead);
	PGresult *r = PQprepare(conn, "", q, 0, NULL);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "a Parse of exactly max_packet_size: %s",
		     PQerrorMessage(conn));
	PQclear(r);
	free(q);

	q = query_of_length(MAX_PACKET_SIZE - parse_overhead + 1);
	expect_too_large(conn, PQsendPrepare(conn, "", q, 0, NULL), "a Parse one byte over max_packet_size");
	free(q);
	PQfinish(conn);
	h_expect_serves_new_client(&px);
	h_stop_expect_clean_exit(&px);
}
