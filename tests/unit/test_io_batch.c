/*
 * test_io_batch.c: batched sends (src/io_batch.c) on socket pairs. What a
 * pass queued arrives after io_batch_end(), with one submission; a full
 * socket takes what it has room for and the loop never waits; a socket that
 * leaves the loop, or is closed, during the pass is taken off the queue; an
 * error is reported by the owner's own flush; nothing is queued with the
 * batch shut, for TLS, or beyond the queue's size.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "io.h"

#define PAIRS 3

struct end {
	struct io io;
	int peer;
	int done_calls;
	enum io_status flushed; /* what the owner's io_flush() said after the batch */
};

static void set_nonblocking(int fd)
{
	cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

static void open_end(struct end *e)
{
	int sv[2];

	memset(e, 0, sizeof(*e));
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0, "socketpair: %s", strerror(errno));
	set_nonblocking(sv[0]);
	set_nonblocking(sv[1]);
	io_init(&e->io, sv[0]);
	e->peer = sv[1];
	e->flushed = -1;
}

static void close_end(struct end *e)
{
	if (e->io.fd >= 0)
		io_close(&e->io, true);
	if (e->peer >= 0)
		close(e->peer);
}

/* The owner's side of the flush, as client_flush() and server_flush() do it. */
static void done(void *arg)
{
	struct end *e = arg;

	e->done_calls++;
	e->flushed = io_flush(&e->io);
}

static void put(struct end *e, const char *text)
{
	iobuf_append(&e->io.out, text, strlen(text));
}

/* What the peer has received, NUL-terminated. */
static size_t drain_peer(struct end *e, char *buf, size_t size)
{
	size_t got = 0;
	ssize_t n;

	while (got + 1 < size && (n = recv(e->peer, buf + got, size - 1 - got, 0)) > 0)
		got += (size_t)n;
	buf[got] = '\0';
	return got;
}

/* io_uring may be forbidden where the tests run (a container's seccomp profile): then the batch stays shut. */
static bool have_batching(void)
{
	struct end e;
	bool queued;

	open_end(&e);
	put(&e, "x");
	io_batch_begin(true);
	queued = io_defer_flush(&e.io, done, &e);
	io_batch_end();
	close_end(&e);
	return queued;
}

/* Two sockets with output queued in an open batch (a's owner flushes with done_a). */
static void queue_pair(struct end *a, const char *to_a, io_flush_done_fn done_a, struct end *b, const char *to_b)
{
	if (!have_batching())
		cr_skip_test("io_uring is not available here");
	open_end(a);
	open_end(b);
	io_batch_begin(true);
	put(a, to_a);
	put(b, to_b);
	cr_assert(io_defer_flush(&a->io, done_a, a));
	cr_assert(io_defer_flush(&b->io, done, b));
}

static void setup(void)
{
	signal(SIGPIPE, SIG_IGN);
}

TestSuite(io_batch, .init = setup);

Test(io_batch, queued_output_goes_at_the_end_of_the_pass)
{
	struct end e[PAIRS];
	char buf[64];

	if (!have_batching())
		cr_skip_test("io_uring is not available here");
	for (int i = 0; i < PAIRS; i++)
		open_end(&e[i]);
	io_batch_begin(true);
	for (int i = 0; i < PAIRS; i++) {
		char text[16];

		snprintf(text, sizeof(text), "reply %d;", i);
		put(&e[i], text);
		cr_assert(io_defer_flush(&e[i].io, done, &e[i]));
		/* More output for the same socket during the pass: the one send takes all of it. */
		put(&e[i], "more");
		cr_assert(io_defer_flush(&e[i].io, done, &e[i]));
		cr_assert_eq(e[i].io.batch_slot, i + 1);
	}
	/* Nothing has gone yet. */
	for (int i = 0; i < PAIRS; i++)
		cr_assert_eq(drain_peer(&e[i], buf, sizeof(buf)), 0);

	cr_assert_eq(io_batch_end(), PAIRS, "one send per queued socket");
	for (int i = 0; i < PAIRS; i++) {
		char want[32];

		snprintf(want, sizeof(want), "reply %d;more", i);
		drain_peer(&e[i], buf, sizeof(buf));
		cr_expect_str_eq(buf, want);
		cr_expect_eq(e[i].done_calls, 1);
		cr_expect_eq(e[i].flushed, IO_OK);
		cr_expect_eq(iobuf_len(&e[i].io.out), 0);
		cr_expect_eq(e[i].io.bytes_written, strlen(want));
		cr_expect_eq(e[i].io.batch_slot, 0);
		close_end(&e[i]);
	}
	/* An empty pass sends nothing. */
	io_batch_begin(true);
	cr_expect_eq(io_batch_end(), 0);
}

Test(io_batch, a_full_socket_takes_what_it_has_room_for)
{
	struct end e, small;
	static char big[4 << 20];
	struct timespec t0, t1;
	size_t total = 0;
	char sink[65536];
	ssize_t n;

	if (!have_batching())
		cr_skip_test("io_uring is not available here");
	open_end(&e);
	open_end(&small);
	memset(big, 'b', sizeof(big));
	iobuf_append(&e.io.out, big, sizeof(big));
	put(&small, "small");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	io_batch_begin(true);
	cr_assert(io_defer_flush(&e.io, done, &e));
	cr_assert(io_defer_flush(&small.io, done, &small));
	cr_assert_eq(io_batch_end(), 2);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	/* Partly sent, and the rest waits for the write event: no wait in the pass. */
	cr_expect_gt(e.io.bytes_written, 0);
	cr_expect_lt(e.io.bytes_written, sizeof(big));
	cr_expect_eq(iobuf_len(&e.io.out), sizeof(big) - e.io.bytes_written);
	cr_expect_eq(e.done_calls, 1);
	cr_expect_eq(e.flushed, IO_AGAIN);
	cr_expect_lt((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec), 1000000000L);
	/* What went is what arrives, in order. */
	while ((n = recv(e.peer, sink, sizeof(sink), 0)) > 0) {
		for (ssize_t i = 0; i < n; i++)
			cr_assert_eq(sink[i], 'b');
		total += (size_t)n;
	}
	cr_expect_eq(total, e.io.bytes_written);
	cr_expect_eq(small.flushed, IO_OK);
	cr_expect_eq(small.io.bytes_written, 5);
	close_end(&e);
	close_end(&small);
}

Test(io_batch, a_socket_that_leaves_the_loop_goes_off_the_queue_and_flushes_now)
{
	struct end a, b;
	char buf[64];

	queue_pair(&a, "to a", done, &b, "to b");
	io_detach(&a.io); /* a client moved, or a backend handed to another worker */
	cr_expect_eq(a.io.batch_slot, 0);
	drain_peer(&a, buf, sizeof(buf));
	cr_expect_str_eq(buf, "to a", "flushed at once by io_detach()");
	cr_expect_eq(io_batch_end(), 0, "one socket left: its owner's flush sends it, not the ring");
	cr_expect_eq(a.done_calls, 0, "its owner's done function is not called for it");
	cr_expect_eq(b.done_calls, 1);
	drain_peer(&b, buf, sizeof(buf));
	cr_expect_str_eq(buf, "to b");
	close_end(&a);
	close_end(&b);
}

/* The done function of one socket closes another queued one (a client closed when its backend fails). */
static struct end *close_target;

static void done_and_close_other(void *arg)
{
	done(arg);
	if (close_target) {
		io_close(&close_target->io, true);
		close_target = NULL;
	}
}

Test(io_batch, a_socket_closed_during_the_pass_or_by_an_earlier_owner_is_skipped)
{
	struct end a, b, c;
	char buf[64];

	if (!have_batching())
		cr_skip_test("io_uring is not available here");
	open_end(&a);
	open_end(&b);
	open_end(&c);
	io_batch_begin(true);
	put(&a, "to a");
	put(&b, "to b");
	put(&c, "to c");
	cr_assert(io_defer_flush(&a.io, done_and_close_other, &a));
	cr_assert(io_defer_flush(&b.io, done, &b));
	cr_assert(io_defer_flush(&c.io, done, &c));
	io_close(&b.io, true); /* closed in the pass: io_close() detaches, which takes it off the queue */
	close_target = &c;     /* c is closed by a's owner after the sends */
	cr_expect_eq(io_batch_end(), 2);
	cr_expect_eq(a.done_calls, 1);
	cr_expect_eq(b.done_calls, 0);
	cr_expect_eq(c.done_calls, 0);
	drain_peer(&a, buf, sizeof(buf));
	cr_expect_str_eq(buf, "to a");
	drain_peer(&c, buf, sizeof(buf));
	cr_expect_str_eq(buf, "to c", "c's send was made before its owner closed it");
	close_end(&a);
	close(b.peer);
	close(c.peer);
}

Test(io_batch, an_error_is_reported_by_the_owners_flush)
{
	struct end e, fine;
	char buf[16];

	queue_pair(&e, "nobody reads this", done, &fine, "fine");
	close(e.peer);
	e.peer = -1;
	cr_expect_eq(io_batch_end(), 2);
	drain_peer(&fine, buf, sizeof(buf));
	cr_expect_str_eq(buf, "fine");
	close_end(&fine);
	cr_expect_eq(e.done_calls, 1);
	cr_expect_eq(e.flushed, IO_ERROR, "the peer is gone: EPIPE from the owner's own send");
	cr_expect_neq(e.io.error[0], '\0');
	close_end(&e);
}

Test(io_batch, nothing_is_queued_with_the_batch_shut_for_tls_or_beyond_the_queue)
{
	enum { MANY = 300 };
	static struct end e[MANY];
	int queued = 0;

	open_end(&e[0]);
	put(&e[0], "x");
	/* batch_sends = off, or between passes. */
	io_batch_begin(false);
	cr_expect_not(io_defer_flush(&e[0].io, done, &e[0]));
	io_batch_end();
	cr_expect_not(io_defer_flush(&e[0].io, done, &e[0]));
	close_end(&e[0]);
	if (!have_batching())
		cr_skip_test("io_uring is not available here");

	for (int i = 0; i < MANY; i++) {
		open_end(&e[i]);
		put(&e[i], "y");
	}
	io_batch_begin(true);
	/* A TLS socket writes through OpenSSL, at once. */
	e[0].io.ssl = (SSL *)&e[0];
	cr_expect_not(io_defer_flush(&e[0].io, done, &e[0]));
	e[0].io.ssl = NULL;
	/* Nothing to send: nothing to queue. */
	iobuf_reset(&e[1].io.out);
	cr_expect_not(io_defer_flush(&e[1].io, done, &e[1]));
	for (int i = 2; i < MANY; i++)
		queued += io_defer_flush(&e[i].io, done, &e[i]);
	cr_expect_eq(queued, 256, "the queue holds 256 sockets; the owner of any other flushes at once");
	cr_expect_eq(io_batch_end(), 256);
	for (int i = 0; i < MANY; i++)
		close_end(&e[i]);
}

/* A cancel request must not overtake the statement it is for: io_batch_send_now() sends it first. */
static bool batch_open_in_done;

static void done_tries_to_queue_again(void *arg)
{
	struct end *e = arg;

	/* The owner's flush runs with the batch shut: it sends, it does not queue again. */
	batch_open_in_done = io_defer_flush(&e->io, done, e);
	done(arg);
}

Test(io_batch, send_now_sends_one_queued_socket_through_its_owner)
{
	struct end a, b;
	char buf[64];

	queue_pair(&a, "statement", done_tries_to_queue_again, &b, "reply");
	io_batch_send_now(&a.io);
	cr_expect_not(batch_open_in_done);
	cr_expect_eq(a.done_calls, 1);
	cr_expect_eq(a.flushed, IO_OK);
	cr_expect_eq(a.io.batch_slot, 0);
	drain_peer(&a, buf, sizeof(buf));
	cr_expect_str_eq(buf, "statement", "sent before the end of the pass");
	cr_expect_eq(drain_peer(&b, buf, sizeof(buf)), 0, "the other socket still waits");
	/* Not queued: nothing happens. */
	io_batch_send_now(&a.io);
	cr_expect_eq(a.done_calls, 1);
	/* The batch is still open for the rest of the pass. */
	put(&a, "more");
	cr_expect(io_defer_flush(&a.io, done, &a));
	cr_expect_eq(io_batch_end(), 2);
	drain_peer(&a, buf, sizeof(buf));
	cr_expect_str_eq(buf, "more");
	drain_peer(&b, buf, sizeof(buf));
	cr_expect_str_eq(buf, "reply");
	close_end(&a);
	close_end(&b);
}

/* One socket to write to in a pass (one client alone): its owner sends it with send(2), the cheaper call. */
Test(io_batch, a_pass_with_one_socket_to_write_to_sends_as_before)
{
	struct end e;
	char buf[16];

	if (!have_batching())
		cr_skip_test("io_uring is not available here");
	open_end(&e);
	io_batch_begin(true);
	put(&e, "alone");
	cr_assert(io_defer_flush(&e.io, done, &e));
	cr_expect_eq(drain_peer(&e, buf, sizeof(buf)), 0);
	cr_expect_eq(io_batch_end(), 0, "no submission for one send");
	cr_expect_eq(e.done_calls, 1);
	cr_expect_eq(e.flushed, IO_OK);
	drain_peer(&e, buf, sizeof(buf));
	cr_expect_str_eq(buf, "alone");
	close_end(&e);
}
