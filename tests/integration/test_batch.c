/*
 * test_batch.c: batch_sends (src/io_batch.c). Every other suite runs with it
 * on, pgmux's default; these tests look at what it must not change when the
 * sends of a pass go out together: a switch by reload under pgbench's TPC-B
 * in every query protocol (no failed transaction, tables that add up, no
 * batch while it is off), a result far larger than the socket's buffer sent
 * to a client that does not read (the rest waits for the write event; the
 * other clients of that worker go on), and a COPY far larger than the
 * backend's buffer.
 */
#include "harness.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct pgmux px;
static struct pgmux_options opts;

TestSuite(batch, .fini = h_teardown, .timeout = 120);

static void start_batch(int max_connections, bool batch_sends, const char *metrics)
{
	static char extra[160];

	h_wait_no_app_backends();
	pgmux_options_default(&opts);
	opts.pool_mode = "transaction";
	opts.max_connections = max_connections;
	opts.admin_users = h_env()->superuser;
	snprintf(extra, sizeof(extra), "batch_sends = %s\n%s", batch_sends ? "true" : "false", metrics ? metrics : "");
	opts.extra_pgmux = extra;
	opts.extra_pool = "max_idle_connections_percent = 100\nconnection_borrow_timeout = 20s";
	pgmux_start_ok(&px, &opts);
}

static void set_batch_sends(bool on)
{
	static char extra[64];

	snprintf(extra, sizeof(extra), "batch_sends = %s", on ? "true" : "false");
	opts.extra_pgmux = extra;
	pgmux_reload(&px, &opts);
	/* A worker reads the setting when a pass begins: one more pass of each and it holds. */
	h_sleep_ms(200);
}

#define MODES 3

/*
 * TPC-B in the simple, extended and prepared protocols at once, 6 clients
 * each over 4 backends, while reloads switch batch_sends off and on. While it
 * is on the passes batch their sends (several per call under this load);
 * while it is off not one does; and no transaction fails or goes astray.
 */
Test(batch, pgbench_while_batch_sends_is_switched_off_and_on)
{
	char metrics[64];
	int metrics_port = h_free_port();

	snprintf(metrics, sizeof(metrics), "metrics_port = %d", metrics_port);
	start_batch(4, true, metrics);
	PGconn *admin = h_admin_session(&px);
	PGconn *super = h_connect_super_direct();
	struct h_bank before = h_bank_totals(super);

	static const char *const modes[MODES] = {"simple", "extended", "prepared"};
	const int seconds = h_under_valgrind() ? 30 : 10;
	char duration[16];
	snprintf(duration, sizeof(duration), "%d", seconds);
	struct h_cmd runs[MODES];
	for (int i = 0; i < MODES; i++) {
		const char *args[] = {"-n", "-M", modes[i], "-c", "6", "-j", "1", "-T", duration, NULL};
		cr_assert(h_pgbench_start(&runs[i], px.port, "disable", "postgres", args), "pgbench -M %s", modes[i]);
	}
	long long stop_at = h_now_ms() + (seconds - 2) * 1000LL;
	int on_windows = 0, off_windows = 0;
	long long batched_on = 0, calls_on = 0;
	bool on = true;

	h_sleep_ms(500);
	while (h_now_ms() < stop_at) {
		long long b0 = h_admin_stat(admin, "send_batches"), s0 = h_admin_stat(admin, "batched_sends");
		h_sleep_ms(700);
		long long b1 = h_admin_stat(admin, "send_batches"), s1 = h_admin_stat(admin, "batched_sends");
		if (on) {
			cr_expect_gt(b1, b0, "no batch in 700 ms with batch_sends on");
			cr_expect_geq(s1 - s0, b1 - b0);
			batched_on += s1 - s0;
			calls_on += b1 - b0;
			on_windows++;
		} else {
			cr_expect_eq(b1, b0, "%lld batches with batch_sends off", b1 - b0);
			cr_expect_eq(s1, s0);
			off_windows++;
		}
		on = !on;
		set_batch_sends(on);
	}
	long processed = h_pgbench_modes_wait(runs, modes, MODES);
	cr_log_info("batch: %d windows on (%lld sends in %lld calls), %d off, %ld transactions", on_windows,
		    batched_on, calls_on, off_windows, processed);
	cr_assert_geq(on_windows, 2);
	cr_assert_geq(off_windows, 2);
	/* 18 clients over 4 backends: most passes have more than one socket to write to. */
	cr_expect_gt(batched_on, calls_on, "%lld sends in %lld calls: nothing was batched", batched_on, calls_on);

	/* The metrics say the same (SHOW STATS's own reply is a batched send: read it on both sides of the scrape). */
	long long batches_before = h_admin_stat(admin, "send_batches"), sends_before = h_admin_stat(admin, "batched_sends");
	char *body = h_scrape(metrics_port);
	long long batches_after = h_admin_stat(admin, "send_batches"), sends_after = h_admin_stat(admin, "batched_sends");
	long long batches = (long long)h_sample(body, "pgmux_send_batches_total");
	long long sends = (long long)h_sample(body, "pgmux_batched_sends_total");
	cr_expect(batches >= batches_before && batches <= batches_after, "pgmux_send_batches_total %lld, SHOW STATS %lld, %lld",
		  batches, batches_before, batches_after);
	cr_expect(sends >= sends_before && sends <= sends_after, "pgmux_batched_sends_total %lld, SHOW STATS %lld, %lld",
		  sends, sends_before, sends_after);
	free(body);

	struct h_bank after = h_bank_totals(super);
	h_expect_bank_adds_up(&before, &after, processed);
	for (int i = 0; i < MODES; i++)
		h_cmd_free(&runs[i]);
	PQfinish(super);
	PQfinish(admin);
	h_stop_expect_clean_exit(&px);
}

#define BIG_ROWS 1000
#define ROW_CHARS 32000 /* repeat(md5(i::text), 1000) */

/*
 * 32 MB of result for a raw client that reads nothing for a while: the
 * output queued for the end of each pass goes as far as the socket takes,
 * and the rest waits for the write event. The worker meanwhile serves
 * another client of its own at once, and the big result then arrives whole
 * and in order.
 */
Test(batch, a_result_larger_than_the_socket_for_a_client_that_does_not_read)
{
	pgmux_start_trust(&px, "transaction", 2, 1, "batch_sends = true", NULL);
	int fd = h_raw_session(&px, "big", NULL);
	char sql[128];

	snprintf(sql, sizeof(sql), "select i, repeat(md5(i::text), 1000) from generate_series(1, %d) i", BIG_ROWS);
	struct h_buf q = {0};
	h_msg_query(&q, sql);
	h_send_buf(fd, &q);
	h_buf_free(&q);
	/* Not read for a while: the socket's buffers fill, and pgmux's sends return less than was asked. */
	h_sleep_ms(500);
	PGconn *other = h_app_session(&px, "disable", NULL);
	for (int i = 0; i < 20; i++) {
		long long t0 = h_now_ms();
		h_expect_value(other, "select 41 + 1", "42");
		cr_expect_lt(h_now_ms() - t0, h_scaled_ms(2000), "another client of the same worker waited");
	}

	int rows = 0;
	bool complete = false, ready = false;
	for (;;) {
		char type;
		char *body = NULL;
		size_t len = 0;
		enum h_msg_result r = h_raw_read_message(fd, &type, &body, &len, h_scaled_ms(20000));

		cr_assert_eq(r, H_MSG_OK, "the result stopped after %d rows", rows);
		if (type == 'D') {
			/* int16 columns; int32 length + text, twice */
			const unsigned char *p = (const unsigned char *)body + 2;
			uint32_t l1 = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
			char num[16];

			cr_assert_lt(l1, sizeof(num));
			memcpy(num, p + 4, l1);
			num[l1] = '\0';
			cr_assert_eq(atoi(num), rows + 1, "row %d came as row %s", rows + 1, num);
			p += 4 + l1;
			uint32_t l2 = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
			cr_assert_eq(l2, ROW_CHARS, "row %d: %u characters", rows + 1, l2);
			for (uint32_t k = 32; k < l2; k++)
				if (p[4 + k] != p[4 + k % 32])
					cr_assert_fail("row %d: character %u differs from the md5 it repeats", rows + 1, k);
			rows++;
		} else if (type == 'C') {
			complete = true;
		} else if (type == 'Z') {
			ready = true;
		} else {
			cr_assert(type == 'T', "unexpected message '%c'", type);
		}
		free(body);
		if (ready)
			break;
	}
	cr_expect(complete);
	cr_expect_eq(rows, BIG_ROWS);
	/* The session goes on. */
	cr_assert(h_raw_query(fd, "select 1"));
	close(fd);
	PQfinish(other);
	h_stop_expect_clean_exit(&px);
}

/* COPY FROM STDIN of 40 MB through pgmux: every row arrives, through sends the backend takes in parts. */
Test(batch, a_copy_larger_than_the_backends_buffer)
{
	pgmux_start_transaction(&px, 2, "batch_sends = true", NULL);
	PGconn *super = h_connect_super_direct();
	h_exec_ok(super, "drop table if exists batch_copy");
	h_exec_ok(super, "create table batch_copy (i int, t text)");
	h_exec_ok(super, "grant all on batch_copy to public");
	PGconn *c = h_app_session(&px, "disable", NULL);
	PGresult *r = PQexec(c, "copy batch_copy from stdin");
	cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN, "%s", PQerrorMessage(c));
	PQclear(r);

	enum { COPY_ROWS = 10000, TEXT = 4000 };
	static char line[TEXT + 32];
	long long sum = 0;
	for (int i = 1; i <= COPY_ROWS; i++) {
		int n = snprintf(line, sizeof(line), "%d\t", i);
		memset(line + n, 'a' + i % 26, TEXT);
		line[n + TEXT] = '\n';
		cr_assert_eq(PQputCopyData(c, line, n + TEXT + 1), 1, "%s", PQerrorMessage(c));
		sum += i;
	}
	cr_assert_eq(PQputCopyEnd(c, NULL), 1);
	r = PQgetResult(c);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(c));
	cr_expect_str_eq(PQcmdTuples(r), "10000");
	PQclear(r);
	while ((r = PQgetResult(c)) != NULL)
		PQclear(r);

	char want[64];
	snprintf(want, sizeof(want), "%d %lld %lld", COPY_ROWS, sum, (long long)COPY_ROWS * TEXT);
	h_expect_value(super,
		       "select count(*) || ' ' || sum(i) || ' ' || sum(length(t)) from batch_copy "
		       "where t = repeat(chr(97 + i % 26), 4000)",
		       want);
	h_expect_value(c, "select count(*) from batch_copy", "10000");
	h_exec_ok(super, "drop table batch_copy");
	PQfinish(c);
	PQfinish(super);
	h_stop_expect_clean_exit(&px);
}
