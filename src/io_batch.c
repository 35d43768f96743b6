/*
 * io_batch.c: the sends of one worker loop pass, made with one system call
 * (batch_sends; io.h, "Batched sends").
 *
 * During a pass, client_flush() and server_flush() queue a plaintext
 * socket's output here instead of sending it (io_defer_flush()). When the
 * pass is over, io_batch_end() puts one IORING_OP_SEND per queued socket in
 * the worker's io_uring and submits them all with one io_uring_enter (with
 * only one, its owner's flush sends it with send(2), the cheaper call). Each
 * send carries MSG_DONTWAIT, which makes the kernel complete it during the
 * submission itself, with what send(2) would have returned: the bytes taken,
 * or -EAGAIN when the socket's buffer is full, never a wait. No buffer is
 * therefore in the kernel's hands once the submission returns. Then every
 * owner's flush function runs as it would have after a send of its own:
 * with its output gone it finds nothing to write and does the rest (resume
 * the other side, arm the write event for what is left, close on an error,
 * which a send of its own reports again).
 *
 * The queue and the ring belong to the worker thread (thread-local): an io is
 * only ever touched by the thread whose loop it is attached to, and between
 * passes no io is queued. A socket that leaves its loop (io_detach(), which
 * io_close() calls) during the pass is taken off the queue and flushed at
 * once.
 *
 * Without io_uring (an old kernel, a seccomp profile that forbids it,
 * kernel.io_uring_disabled) every flush sends at once, as with batch_sends =
 * off; that is logged once per worker.
 */
#include "io.h"

#include <errno.h>
#include <liburing.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"

/* Sockets one pass can queue; a flush beyond that sends at once. Also the ring's size. */
#define IO_BATCH_MAX 256

struct io_deferred {
	struct io *io; /* NULL once it left the queue during the pass */
	io_flush_done_fn done;
	void *arg;
};

static __thread struct io_uring batch_ring;
static __thread int batch_ring_state; /* 0: not made yet; 1: ready; -1: unavailable on this thread */
static __thread bool batch_open;      /* between io_batch_begin() and io_batch_end() */
static __thread struct io_deferred batch_queue[IO_BATCH_MAX];
static __thread int batch_len;

static bool batch_ring_ready(void)
{
	int err;

	if (batch_ring_state != 0)
		return batch_ring_state > 0;
	/* One thread submits, and nothing completes outside the submission: no task work to wake up for. */
	err = io_uring_queue_init(IO_BATCH_MAX, &batch_ring, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN);
	if (err == -EINVAL)
		err = io_uring_queue_init(IO_BATCH_MAX, &batch_ring, 0);
	if (err < 0) {
		log_warning("batch_sends: io_uring is not available here (%s); this worker sends each socket's output "
			    "with its own system call",
			    strerror(-err));
		batch_ring_state = -1;
		return false;
	}
	batch_ring_state = 1;
	return true;
}

/* The ring is no use any more (the kernel did not keep to what a send with MSG_DONTWAIT promises). */
static void batch_ring_give_up(const char *why)
{
	log_warning("batch_sends: %s; this worker sends each socket's output with its own system call from now on",
		    why);
	io_uring_queue_exit(&batch_ring);
	batch_ring_state = -1;
}

void io_batch_begin(bool enabled)
{
	batch_open = enabled && batch_ring_state >= 0;
}

bool io_defer_flush(struct io *io, io_flush_done_fn done, void *arg)
{
	if (!batch_open || io->ssl || io->writing || io->out.failed || iobuf_len(&io->out) == 0)
		return false;
	if (io->batch_slot > 0)
		return true; /* queued already: the one send takes all of it */
	if (batch_len >= IO_BATCH_MAX || !batch_ring_ready())
		return false;
	batch_queue[batch_len] = (struct io_deferred){.io = io, .done = done, .arg = arg};
	io->batch_slot = ++batch_len;
	return true;
}

void io_batch_send_now(struct io *io)
{
	int at = io->batch_slot - 1;
	bool was_open = batch_open;
	struct io_deferred d;

	if (at < 0 || at >= batch_len || batch_queue[at].io != io)
		return;
	d = batch_queue[at];
	batch_queue[at].io = NULL;
	io->batch_slot = 0;
	/* The owner's flush, with the batch shut so that it sends rather than queues again. */
	batch_open = false;
	d.done(d.arg);
	batch_open = was_open;
}

void io_batch_forget(struct io *io)
{
	int at = io->batch_slot - 1;

	/* Only the thread that queued it has it in its queue (any other would be racing its owner). */
	if (at >= 0 && at < batch_len && batch_queue[at].io == io)
		batch_queue[at].io = NULL;
	io->batch_slot = 0;
}

/* The socket at place i of the queue if it is still there with output to send, else NULL. */
static struct io *queued_output(int i)
{
	struct io *io = batch_queue[i].io;

	return io != NULL && iobuf_len(&io->out) > 0 ? io : NULL;
}

/* Submits the queued sends and takes their results; returns how many went in the one submission. */
static int batch_submit(void)
{
	struct io_uring_cqe *cqe;
	int queued = 0, submitted, ret, live = 0;
	char why[96] = "";

	for (int i = 0; i < batch_len; i++)
		live += queued_output(i) != NULL;
	/* One socket to write to: its owner's own send() is the cheaper call (one client alone, light load). */
	if (live < 2)
		return 0;
	for (int i = 0; i < batch_len; i++) {
		struct io *io = queued_output(i);
		struct io_uring_sqe *sqe;

		if (io == NULL)
			continue;
		sqe = io_uring_get_sqe(&batch_ring);
		io_uring_prep_send(sqe, io->fd, iobuf_head(&io->out), iobuf_len(&io->out), MSG_NOSIGNAL | MSG_DONTWAIT);
		io_uring_sqe_set_data64(sqe, (uint64_t)i);
		queued++;
	}
	do
		ret = io_uring_submit(&batch_ring);
	while (ret == -EINTR);
	submitted = ret > 0 ? ret : 0;
	/* Some SQEs may sit unsubmitted with pointers into buffers that are about to change: the ring goes. */
	if (ret != queued)
		snprintf(why, sizeof(why), "io_uring_enter submitted %d of %d sends (%s)", submitted, queued,
			 ret < 0 ? strerror(-ret) : "short");
	if (io_uring_cq_ready(&batch_ring) < (unsigned)submitted) {
		struct io_uring_sync_cancel_reg reg = {.flags = IORING_ASYNC_CANCEL_ANY,
						       .timeout = {.tv_sec = -1, .tv_nsec = -1}};

		/* A send the kernel left pending holds a buffer: take it back before anything changes. */
		if (why[0] == '\0')
			snprintf(why, sizeof(why), "a send with MSG_DONTWAIT did not complete during its submission");
		(void)io_uring_register_sync_cancel(&batch_ring, &reg);
		(void)io_uring_wait_cqe_nr(&batch_ring, &cqe, (unsigned)submitted);
	}
	/* What each submitted send took is gone from its output (also on the way out: never sent twice). */
	for (int left = submitted; left > 0 && io_uring_peek_cqe(&batch_ring, &cqe) == 0; left--) {
		struct io *io = batch_queue[cqe->user_data].io;

		if (io && cqe->res > 0) {
			iobuf_consume(&io->out, (size_t)cqe->res);
			io->bytes_written += (uint64_t)cqe->res;
		}
		io_uring_cqe_seen(&batch_ring, cqe);
	}
	if (why[0] != '\0') {
		batch_ring_give_up(why);
		return 0;
	}
	return submitted;
}

int io_batch_end(void)
{
	int n = batch_len, sent = 0;

	batch_open = false;
	if (n == 0)
		return 0;
	if (batch_ring_state > 0)
		sent = batch_submit();
	/*
	 * Each owner's flush, as after a send of its own. They run with the
	 * batch closed, so what they write goes at once; one may close another
	 * queued socket (batch_queue[j].io becomes NULL), never add to the queue.
	 */
	for (int i = 0; i < n; i++) {
		struct io_deferred d = batch_queue[i];

		if (d.io == NULL)
			continue;
		d.io->batch_slot = 0;
		batch_queue[i].io = NULL;
		d.done(d.arg);
	}
	batch_len = 0;
	return sent;
}

void io_batch_thread_exit(void)
{
	batch_open = false;
	batch_len = 0;
	if (batch_ring_state > 0)
		io_uring_queue_exit(&batch_ring);
	batch_ring_state = 0;
}
