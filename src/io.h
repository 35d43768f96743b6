/*
 * io.h: the transport layer. A struct io is one socket, plain or TLS, with an
 * input and an output buffer and its libevent events (read; write once a
 * write would block). It moves bytes and reports what happened; it never
 * looks inside them. Nothing above this layer calls read(), write(),
 * SSL_read() or SSL_write().
 *
 * Contract: io_read() and io_flush() never block. When they cannot make
 * progress they arm the events that will let them, and the owner's callback
 * (one for both directions) is called again.
 */
#ifndef PGMUX_IO_H
#define PGMUX_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "iobuf.h"

enum io_status {
	IO_OK = 0,       /* made progress (read: bytes arrived; flush: everything written) */
	IO_AGAIN = 1,    /* nothing more now; the right event is armed */
	IO_EOF = 2,      /* peer closed cleanly */
	IO_ERROR = 3,    /* socket or TLS error; io->error says what */
};

struct io {
	SSL *ssl;        /* NULL for plaintext */
	struct event *ev_read;
	struct event *ev_write; /* made the first time a write would block (NULL until then) */
	int fd;
	bool ssl_owned;  /* we free it (client side); libpq owns the backend's */
	bool reading;    /* ev_read is added */
	bool writing;    /* ev_write is added */
	bool ssl_read_wants_write;  /* SSL_read returned WANT_WRITE */
	bool ssl_write_wants_read;  /* SSL_write returned WANT_READ */
	bool drained;               /* the last read took everything there was (a short read) */
	bool in_borrowed;           /* in is the worker's scratch buffer: io_close must not free it */
	int batch_slot;             /* 1 + its place in this thread's queue of sends (io_batch.c); 0: not queued */
	struct iobuf in;
	struct iobuf out;
	const char *error; /* "" until a failure; then its text, valid until the next failure on this thread */
	uint64_t bytes_read;    /* since io_init() or since its owner counted them and set them to 0
	                         * (the per-pool byte counts, client_stats.c) */
	uint64_t bytes_written;
};

void io_init(struct io *io, int fd);

/* Register the socket with base; cb gets (fd, EV_READ|EV_WRITE, arg). Reading starts enabled. */
int io_attach(struct io *io, struct event_base *base, event_callback_fn cb, void *arg);

/* Remove and free the events (the socket stays open). Safe when not attached. */
void io_detach(struct io *io);

static inline bool io_attached(const struct io *io)
{
	return io->ev_read != NULL;
}

/* Turn the read interest on or off (back-pressure when the peer's output is full). */
void io_want_read(struct io *io, bool on);

/* Run the owner's callback again soon, as if the socket were readable (fairness cap reached). */
void io_schedule_read(struct io *io);

/* Read what is available (up to limit bytes) into io->in. */
enum io_status io_read(struct io *io, size_t limit);

/* Write io->out; on IO_AGAIN the write event is armed and the rest stays queued. */
enum io_status io_flush(struct io *io);

static inline size_t io_pending_output(const struct io *io)
{
	return iobuf_len(&io->out);
}

/* Start TLS on an accepted socket (server side of the handshake). */
int io_start_tls_accept(struct io *io, SSL_CTX *ctx);

/* Drive the handshake: IO_OK when done, IO_AGAIN when waiting, IO_ERROR on failure. */
enum io_status io_tls_handshake(struct io *io);

/* Take over a connected socket whose TLS session someone else set up (libpq). */
void io_adopt_tls(struct io *io, SSL *ssl);

/*
 * Close: detach the events, free the TLS object if we own it, close the fd
 * if close_fd is set (libpq closes its own socket in PQfinish), free buffers.
 */
void io_close(struct io *io, bool close_fd);

/* Release buffer memory of an idle connection. */
void io_shrink(struct io *io);

/*
 * A connection that has been idle a while keeps only what it needs to be
 * woken: empty buffers, the write event (when not armed) and, with TLS,
 * OpenSSL's record buffers (when they hold nothing) go; each comes back on
 * the next use.
 */
void io_release_idle(struct io *io);

void io_set_nodelay(int fd);

/*
 * Batched sends (batch_sends; io_batch.c). A worker opens a batch before each
 * pass of its loop and ends it after: io_defer_flush() queues a plaintext
 * socket's output instead of sending it, and io_batch_end() sends all that
 * was queued with one io_uring_enter, without waiting, then calls each
 * done(arg), which flushes as usual (io_flush() finds the output gone, or
 * sends the rest, or arms the write event, or reports the error). The
 * queue and the ring are the calling thread's.
 */
typedef void (*io_flush_done_fn)(void *arg);

/* Open the batch (enabled: batch_sends); without io_uring the batch stays shut. */
void io_batch_begin(bool enabled);

/* Queue io's output for the end of the pass: false when the caller must flush now (no batch, TLS, full). */
bool io_defer_flush(struct io *io, io_flush_done_fn done, void *arg);

/*
 * Send io's queued output now, through its owner's done function, when
 * something must not overtake it (a cancel request for the statement in
 * it, a client about to move). Nothing if it is not queued.
 */
void io_batch_send_now(struct io *io);

/* Take io off the queue (io_detach() does, and flushes what it held). */
void io_batch_forget(struct io *io);

/* Send what was queued and run the owners' done functions; returns the sends made in the one call. */
int io_batch_end(void);

/* Free the calling thread's ring (a worker that stops). */
void io_batch_thread_exit(void);

/*
 * Listen on addr:port (addr numeric, or "*" for every address) with the given
 * backlog, close-on-exec and SO_REUSEADDR; accepted sockets go to cb (NULL:
 * none until one is set, as evhttp_bind_listener() does). NULL, with the
 * reason logged, when addr does not resolve or the port cannot be had.
 */
struct evconnlistener *io_listen(struct event_base *base, const char *addr, int port, int backlog,
				 evconnlistener_cb cb, void *arg);
/*
 * The same on a socket that listens already (one handed over by the process
 * pgmux -R replaces): it must be bound to port, or NULL is returned, logged,
 * and fd closed.
 */
struct evconnlistener *io_listen_inherited(struct event_base *base, int fd, int port, evconnlistener_cb cb,
					   void *arg);

#endif
