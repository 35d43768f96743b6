/*
 * io.c: non-blocking socket and TLS I/O for struct io (see io.h). Writes are
 * attempted directly and the write event is armed only for what the kernel
 * would not take, as Redis does; TLS retries remember which direction
 * OpenSSL asked for.
 */
#include "io.h"

#include <errno.h>
#include <stdarg.h>
#include <netdb.h>
#include <stdio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "log.h"

#define IO_READ_CHUNK 16384

/*
 * The text of the last failure on this thread: io->error points here after
 * one. Every caller reads it at once (to log, or as a close reason), before
 * anything else on its thread can fail, so one buffer per thread does where
 * a buffer in each struct io cost 128 bytes per connection.
 */
static __thread char io_error_text[128];

static void io_set_error(struct io *io, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void io_set_error(struct io *io, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(io_error_text, sizeof(io_error_text), fmt, ap);
	va_end(ap);
	io->error = io_error_text;
}

void io_init(struct io *io, int fd)
{
	memset(io, 0, sizeof(*io));
	io->fd = fd;
	io->error = "";
	iobuf_init(&io->in);
	iobuf_init(&io->out);
}

static bool io_arm_write(struct io *io);

int io_attach(struct io *io, struct event_base *base, event_callback_fn cb, void *arg)
{
	io->ev_read = event_new(base, io->fd, EV_READ | EV_PERSIST, cb, arg);
	if (io->ev_read == NULL)
		return -1;
	io->reading = io->writing = false;
	io_want_read(io, true);
	/* Output queued while detached, or a TLS retry, still needs the write event. */
	if ((iobuf_len(&io->out) > 0 || io->ssl_read_wants_write) && !io_arm_write(io)) {
		io_detach(io);
		return -1;
	}
	return 0;
}

void io_detach(struct io *io)
{
	/* Leaving the loop in the middle of a pass: what was queued goes now, on the loop it was meant for. */
	if (io->batch_slot > 0) {
		io_batch_forget(io);
		(void)io_flush(io);
	}
	if (io->ev_read) {
		event_free(io->ev_read);
		io->ev_read = NULL;
	}
	if (io->ev_write) {
		event_free(io->ev_write);
		io->ev_write = NULL;
	}
	io->reading = io->writing = false;
}

void io_want_read(struct io *io, bool on)
{
	if (io->ev_read == NULL || io->reading == on)
		return;
	if (on) {
		event_add(io->ev_read, NULL);
		/* Bytes OpenSSL already decrypted will not wake the socket again. */
		if (io->ssl && SSL_has_pending(io->ssl))
			event_active(io->ev_read, EV_READ, 1);
	} else {
		event_del(io->ev_read);
	}
	io->reading = on;
}

void io_schedule_read(struct io *io)
{
	if (io->ev_read)
		event_active(io->ev_read, EV_READ, 1);
}

/*
 * The write event exists only once a write would have blocked: most
 * connections never need one, and an idle one keeps only its read event.
 * It is made like the read event (same loop, callback and argument).
 * Returns false when it cannot be made (out of memory).
 */
static bool io_arm_write(struct io *io)
{
	if (io->ev_read == NULL || io->writing)
		return true;
	if (io->ev_write == NULL) {
		io->ev_write = event_new(event_get_base(io->ev_read), io->fd, EV_WRITE,
					 event_get_callback(io->ev_read), event_get_callback_arg(io->ev_read));
		if (io->ev_write == NULL)
			return false;
	}
	event_add(io->ev_write, NULL);
	io->writing = true;
	return true;
}

/* The write event is one-shot; note that it fired or is no longer needed. */
static void io_disarm_write(struct io *io)
{
	if (io->ev_write && io->writing) {
		event_del(io->ev_write);
		io->writing = false;
	}
}

static void io_ssl_error(struct io *io, const char *what, int ret, int err)
{
	unsigned long e = ERR_get_error();

	if (e != 0)
		io_set_error(io, "%s: %s", what, ERR_reason_error_string(e));
	else if (err == SSL_ERROR_SYSCALL && ret == 0)
		io_set_error(io, "%s: unexpected EOF", what);
	else if (err == SSL_ERROR_SYSCALL)
		io_set_error(io, "%s: %s", what, strerror(errno));
	else
		io_set_error(io, "%s: TLS error %d", what, err);
	/* OpenSSL's error queue is per thread: leave nothing for the next caller. */
	ERR_clear_error();
}

enum io_status io_read(struct io *io, size_t limit)
{
	size_t room = limit < IO_READ_CHUNK ? limit : IO_READ_CHUNK;
	uint8_t *p;

	if (room == 0)
		return IO_AGAIN;
	p = iobuf_reserve(&io->in, room);
	if (p == NULL) {
		io_set_error(io, "out of memory for its input");
		return IO_ERROR;
	}
	if (io->ssl) {
		int n, err;

		io->ssl_read_wants_write = false;
		ERR_clear_error();
		n = SSL_read(io->ssl, p, (int)room);
		if (n > 0) {
			iobuf_commit(&io->in, (size_t)n);
			io->bytes_read += (uint64_t)n;
			/* Decrypted bytes still inside OpenSSL would not wake the socket. */
			io->drained = (size_t)n < room && !SSL_has_pending(io->ssl);
			return IO_OK;
		}
		err = SSL_get_error(io->ssl, n);
		switch (err) {
		case SSL_ERROR_WANT_READ:
			return IO_AGAIN;
		case SSL_ERROR_WANT_WRITE:
			io->ssl_read_wants_write = true;
			if (!io_arm_write(io)) {
				io_set_error(io, "out of memory for its write event");
				return IO_ERROR;
			}
			return IO_AGAIN;
		case SSL_ERROR_ZERO_RETURN:
			return IO_EOF;
		default:
			if (err == SSL_ERROR_SYSCALL && n == 0 && ERR_peek_error() == 0) {
				ERR_clear_error();
				return IO_EOF;
			}
			io_ssl_error(io, "TLS read", n, err);
			return IO_ERROR;
		}
	}
	for (;;) {
		ssize_t n = recv(io->fd, p, room, 0);

		if (n > 0) {
			iobuf_commit(&io->in, (size_t)n);
			io->bytes_read += (uint64_t)n;
			/*
			 * A short read emptied the socket: reading again would only
			 * return EAGAIN. The event is level-triggered, so anything that
			 * arrives later wakes us again.
			 */
			io->drained = (size_t)n < room;
			return IO_OK;
		}
		if (n == 0)
			return IO_EOF;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return IO_AGAIN;
		io_set_error(io, "read: %s", strerror(errno));
		return IO_ERROR;
	}
}

enum io_status io_flush(struct io *io)
{
	/* Something meant for the peer was lost: the stream cannot go on. */
	if (io->out.failed) {
		io_set_error(io, "out of memory for its output");
		return IO_ERROR;
	}
	while (iobuf_len(&io->out) > 0) {
		size_t len = iobuf_len(&io->out);

		if (io->ssl) {
			int n, err;

			io->ssl_write_wants_read = false;
			ERR_clear_error();
			n = SSL_write(io->ssl, iobuf_head(&io->out), len > INT32_MAX ? INT32_MAX : (int)len);
			if (n > 0) {
				iobuf_consume(&io->out, (size_t)n);
				io->bytes_written += (uint64_t)n;
				continue;
			}
			err = SSL_get_error(io->ssl, n);
			if (err == SSL_ERROR_WANT_WRITE)
				goto would_block;
			if (err == SSL_ERROR_WANT_READ) {
				/* The read event (always on while output is pending) will retry. */
				io->ssl_write_wants_read = true;
				io_want_read(io, true);
				return IO_AGAIN;
			}
			io_ssl_error(io, "TLS write", n, err);
			return IO_ERROR;
		} else {
			ssize_t n = send(io->fd, iobuf_head(&io->out), len, MSG_NOSIGNAL);

			if (n >= 0) {
				iobuf_consume(&io->out, (size_t)n);
				io->bytes_written += (uint64_t)n;
				continue;
			}
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				goto would_block;
			io_set_error(io, "write: %s", strerror(errno));
			return IO_ERROR;
		}
	}
	if (!io->ssl_read_wants_write)
		io_disarm_write(io);
	return IO_OK;

would_block:
	if (!io_arm_write(io)) {
		io_set_error(io, "out of memory for its write event");
		return IO_ERROR;
	}
	return IO_AGAIN;
}

int io_start_tls_accept(struct io *io, SSL_CTX *ctx)
{
	io->ssl = SSL_new(ctx);
	if (io->ssl == NULL) {
		io_ssl_error(io, "SSL_new", 0, 0);
		return -1;
	}
	io->ssl_owned = true;
	SSL_set_fd(io->ssl, io->fd);
	SSL_set_accept_state(io->ssl);
	SSL_set_mode(io->ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
	/* One recv per batch of records, not one for each record's header and another for its body. */
	SSL_set_read_ahead(io->ssl, 1);
	return 0;
}

enum io_status io_tls_handshake(struct io *io)
{
	int n, err;

	ERR_clear_error();
	n = SSL_do_handshake(io->ssl);
	if (n == 1) {
		io_disarm_write(io);
		return IO_OK;
	}
	err = SSL_get_error(io->ssl, n);
	if (err == SSL_ERROR_WANT_READ) {
		io_disarm_write(io);
		io_want_read(io, true);
		return IO_AGAIN;
	}
	if (err == SSL_ERROR_WANT_WRITE) {
		if (!io_arm_write(io)) {
			io_set_error(io, "out of memory for its write event");
			return IO_ERROR;
		}
		return IO_AGAIN;
	}
	io_ssl_error(io, "TLS handshake", n, err);
	return IO_ERROR;
}

void io_adopt_tls(struct io *io, SSL *ssl)
{
	io->ssl = ssl;
	io->ssl_owned = false;
	SSL_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
	SSL_set_read_ahead(ssl, 1);
}

void io_close(struct io *io, bool close_fd)
{
	io_detach(io);
	if (io->ssl && io->ssl_owned) {
		/* One non-blocking attempt at close_notify; a peer that is gone does not care. */
		ERR_clear_error();
		SSL_set_quiet_shutdown(io->ssl, 0);
		if (SSL_shutdown(io->ssl) < 0)
			ERR_clear_error();
		SSL_free(io->ssl);
	}
	io->ssl = NULL;
	if (close_fd && io->fd >= 0)
		close(io->fd);
	io->fd = -1;
	if (!io->in_borrowed)
		iobuf_free(&io->in);
	iobuf_free(&io->out);
}

void io_shrink(struct io *io)
{
	iobuf_shrink(&io->in);
	iobuf_shrink(&io->out);
}

void io_release_idle(struct io *io)
{
	if (io->ev_write && !io->writing) {
		event_free(io->ev_write);
		io->ev_write = NULL;
	}
	if (!io->in_borrowed && iobuf_len(&io->in) == 0 && !io->in.failed)
		iobuf_free(&io->in);
	if (iobuf_len(&io->out) == 0 && !io->out.failed)
		iobuf_free(&io->out);
	/*
	 * Some 20 to 40 KB with TLS. OpenSSL keeps them if they hold unread
	 * data; before 3.0.14 it could free them while a record was half read
	 * (CVE-2024-4741), so older libraries keep them.
	 */
	if (io->ssl && OpenSSL_version_num() >= 0x300000e0L && !SSL_has_pending(io->ssl))
		SSL_free_buffers(io->ssl);
}

void io_set_nodelay(int fd)
{
	int on = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
}

struct evconnlistener *io_listen(struct event_base *base, const char *addr, int port, int backlog,
				 evconnlistener_cb cb, void *arg)
{
	struct addrinfo hints, *res = NULL;
	struct evconnlistener *listener;
	char service[16];
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	snprintf(service, sizeof(service), "%d", port);
	rc = getaddrinfo(strcmp(addr, "*") == 0 ? NULL : addr, service, &hints, &res);
	if (rc != 0) {
		log_error("listen_addr %s: %s", addr, gai_strerror(rc));
		return NULL;
	}
	listener = evconnlistener_new_bind(base, cb, arg,
					   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, backlog,
					   res->ai_addr, (int)res->ai_addrlen);
	freeaddrinfo(res);
	if (listener == NULL)
		log_error("cannot listen on %s:%d: %s", addr, port, strerror(errno));
	return listener;
}

struct evconnlistener *io_listen_inherited(struct event_base *base, int fd, int port, evconnlistener_cb cb,
					   void *arg)
{
	struct sockaddr_storage bound;
	socklen_t len = sizeof(bound);
	struct evconnlistener *listener;
	int bound_port = 0;

	if (getsockname(fd, (struct sockaddr *)&bound, &len) == 0) {
		if (bound.ss_family == AF_INET)
			bound_port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
		else if (bound.ss_family == AF_INET6)
			bound_port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
	}
	if (bound_port != port) {
		log_error("the socket handed over listens on port %d, not %d: a port cannot change in a restart in "
			  "place (-R); restart pgmux instead",
			  bound_port, port);
		close(fd);
		return NULL;
	}
	evutil_make_socket_nonblocking(fd);
	/* Backlog 0: it listens already, with the backlog the first process gave it. */
	listener = evconnlistener_new(base, cb, arg, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (listener == NULL) {
		log_error("cannot accept on the socket handed over for port %d: %s", port, strerror(errno));
		close(fd);
	}
	return listener;
}
