/*
 * handover.c: restart in place (see handover.h). The exchange on the unix
 * socket, both sides:
 *
 *   new -> old   HANDOVER_REQUEST (a fixed line naming the protocol version)
 *   old -> new   struct handover_message, the sockets as SCM_RIGHTS
 *   new -> old   'G' once its own listeners and threads run
 *
 * The old side runs on the main thread's loop and never blocks (the socket
 * is non-blocking and every message is a few bytes). The new side runs at
 * start-up, before any thread, and may block for HANDOVER_TIMEOUT_MS.
 * Only a process of the same user (or root) is served.
 */
#include "handover.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

#define HANDOVER_REQUEST "PGMUX-HANDOVER 1\n"
#define HANDOVER_MAGIC 0x50474d31u /* "PGM1" */
#define HANDOVER_TIMEOUT_MS 10000
#define HANDOVER_TAKE_TIMEOUT_SEC 60 /* how long the old side waits for the new one's 'G' */

/* What the old side sends with the sockets: where each one is in the SCM_RIGHTS array, or -1. */
struct handover_message {
	uint32_t magic;
	int32_t listen_index;
	int32_t readonly_index;
	int32_t metrics_index;
};

static struct {
	struct event_base *base;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int listen_fd;
	struct event *listen_event;
	int conn_fd; /* the new process asking; one at a time */
	struct event *conn_event;
	pid_t conn_pid;
	char request[sizeof(HANDOVER_REQUEST)];
	size_t have;
	bool sent; /* the sockets went to conn_fd */
	bool given_away;
	void (*get_fds)(struct handover_fds *out);
	void (*taken)(pid_t new_pid);
} H = { .listen_fd = -1, .conn_fd = -1 };

static int new_side_fd = -1;

static int socket_path(const char *pidfile, char *out, size_t len)
{
	int n = snprintf(out, len, "%s.handover", pidfile);

	return n > 0 && (size_t)n < len ? 0 : -1;
}

/* ---------------------------------------------------------------- old side */

static void close_conn(void)
{
	if (H.conn_event) {
		event_free(H.conn_event);
		H.conn_event = NULL;
	}
	if (H.conn_fd >= 0)
		close(H.conn_fd);
	H.conn_fd = -1;
	H.have = 0;
	H.sent = false;
}

static int send_sockets(void)
{
	struct handover_fds fds;
	struct handover_message message = { HANDOVER_MAGIC, -1, -1, -1 };
	int list[3], n = 0;
	union {
		char buf[CMSG_SPACE(sizeof(list))];
		struct cmsghdr align;
	} control;
	struct iovec iov = { &message, sizeof(message) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cmsg;

	H.get_fds(&fds);
	if (fds.listen_fd >= 0) {
		message.listen_index = n;
		list[n++] = fds.listen_fd;
	}
	if (fds.readonly_fd >= 0) {
		message.readonly_index = n;
		list[n++] = fds.readonly_fd;
	}
	if (fds.metrics_fd >= 0) {
		message.metrics_index = n;
		list[n++] = fds.metrics_fd;
	}
	memset(&control, 0, sizeof(control));
	if (n > 0) {
		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
		cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
		memcpy(CMSG_DATA(cmsg), list, sizeof(int) * (size_t)n);
	}
	return sendmsg(H.conn_fd, &msg, MSG_NOSIGNAL) == (ssize_t)sizeof(message) ? 0 : -1;
}

static void on_conn(evutil_socket_t fd, short what, void *arg)
{
	char buf[sizeof(HANDOVER_REQUEST)];
	ssize_t n;

	(void)arg;
	if (what & EV_TIMEOUT) {
		log_warning("restart: process %d did not take the sockets over within %d s; this one goes on",
			    (int)H.conn_pid, HANDOVER_TAKE_TIMEOUT_SEC);
		close_conn();
		return;
	}
	n = read(fd, buf, H.sent ? 1 : sizeof(HANDOVER_REQUEST) - 1 - H.have);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		if (H.sent)
			log_warning("restart: process %d went away before it took the sockets over; this one goes on",
				    (int)H.conn_pid);
		close_conn();
		return;
	}
	if (!H.sent) {
		memcpy(H.request + H.have, buf, (size_t)n);
		H.have += (size_t)n;
		if (H.have < sizeof(HANDOVER_REQUEST) - 1)
			return;
		if (memcmp(H.request, HANDOVER_REQUEST, sizeof(HANDOVER_REQUEST) - 1) != 0) {
			log_warning("restart: process %d sent something other than a hand-over request; ignored",
				    (int)H.conn_pid);
			close_conn();
			return;
		}
		if (send_sockets() != 0) {
			log_error("restart: cannot send the listening sockets to process %d: %s", (int)H.conn_pid,
				  strerror(errno));
			close_conn();
			return;
		}
		H.sent = true;
		log_info("restart: listening sockets sent to process %d; accepting until it takes over",
			 (int)H.conn_pid);
		return;
	}
	if (buf[0] != 'G') {
		log_warning("restart: process %d answered something unexpected; this one goes on", (int)H.conn_pid);
		close_conn();
		return;
	}
	{
		pid_t new_pid = H.conn_pid;

		/* Its socket file is the new process's from now on: leave it be. */
		H.given_away = true;
		close_conn();
		handover_stop();
		H.taken(new_pid);
	}
}

static void on_listen(evutil_socket_t fd, short what, void *arg)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct timeval limit = { HANDOVER_TAKE_TIMEOUT_SEC, 0 };
	int conn;

	(void)what;
	(void)arg;
	conn = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (conn < 0)
		return;
	if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
	    (cred.uid != geteuid() && cred.uid != 0)) {
		log_warning("restart: a hand-over request from another user refused");
		close(conn);
		return;
	}
	if (H.conn_fd >= 0) {
		log_warning("restart: process %d asks for the sockets while process %d has them; refused",
			    (int)cred.pid, (int)H.conn_pid);
		close(conn);
		return;
	}
	H.conn_fd = conn;
	H.conn_pid = cred.pid;
	H.conn_event = event_new(H.base, conn, EV_READ | EV_PERSIST, on_conn, NULL);
	if (H.conn_event == NULL || event_add(H.conn_event, &limit) != 0)
		close_conn();
}

int handover_listen(struct event_base *base, const char *pidfile, void (*get_fds)(struct handover_fds *out),
		    void (*taken)(pid_t new_pid))
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	mode_t old_mask;
	int rc;

	if (socket_path(pidfile, H.path, sizeof(H.path)) != 0) {
		log_error("restart: the path %s.handover is too long for a unix socket", pidfile);
		return -1;
	}
	memcpy(addr.sun_path, H.path, sizeof(H.path));
	H.base = base;
	H.get_fds = get_fds;
	H.taken = taken;
	H.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (H.listen_fd < 0) {
		log_error("restart: cannot create %s: %s", H.path, strerror(errno));
		return -1;
	}
	unlink(H.path); /* a process that was killed leaves its file behind */
	old_mask = umask(0077);
	rc = bind(H.listen_fd, (struct sockaddr *)&addr, sizeof(addr));
	umask(old_mask);
	if (rc != 0 || listen(H.listen_fd, 4) != 0) {
		log_error("restart: cannot listen on %s: %s", H.path, strerror(errno));
		close(H.listen_fd);
		H.listen_fd = -1;
		return -1;
	}
	H.listen_event = event_new(base, H.listen_fd, EV_READ | EV_PERSIST, on_listen, NULL);
	if (H.listen_event == NULL || event_add(H.listen_event, NULL) != 0) {
		log_error("restart: cannot watch %s", H.path);
		handover_stop();
		return -1;
	}
	return 0;
}

void handover_stop(void)
{
	close_conn();
	if (H.listen_event) {
		event_free(H.listen_event);
		H.listen_event = NULL;
	}
	if (H.listen_fd >= 0) {
		close(H.listen_fd);
		H.listen_fd = -1;
		if (!H.given_away)
			unlink(H.path);
	}
}

/* ---------------------------------------------------------------- new side */

static pid_t read_pidfile(const char *pidfile, char *err, size_t errlen)
{
	char text[32];
	long pid;
	char *end;
	ssize_t n;
	int fd = open(pidfile, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		snprintf(err, errlen, "-R: cannot read pidfile %s: %s", pidfile, strerror(errno));
		return -1;
	}
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	text[n > 0 ? n : 0] = '\0';
	pid = strtol(text, &end, 10);
	if (n <= 0 || pid <= 0 || (*end != '\n' && *end != '\0')) {
		snprintf(err, errlen, "-R: pidfile %s does not hold a process id", pidfile);
		return -1;
	}
	if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
		snprintf(err, errlen, "-R: no process %ld runs (pidfile %s); start pgmux without -R", pid, pidfile);
		return -1;
	}
	return (pid_t)pid;
}

int handover_receive(const char *pidfile, struct handover_fds *out, char *err, size_t errlen)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct timeval limit = { HANDOVER_TIMEOUT_MS / 1000, 0 };
	struct handover_message message;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	union {
		char buf[CMSG_SPACE(sizeof(int) * 3)];
		struct cmsghdr align;
	} control;
	struct iovec iov = { &message, sizeof(message) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			      .msg_controllen = sizeof(control.buf) };
	struct cmsghdr *cmsg;
	int received[3] = { -1, -1, -1 }, n_received = 0;
	const int32_t *indexes[3] = { &message.listen_index, &message.readonly_index, &message.metrics_index };
	int *slots[3] = { &out->listen_fd, &out->readonly_fd, &out->metrics_fd };
	pid_t pid;
	ssize_t n;

	out->listen_fd = out->readonly_fd = out->metrics_fd = -1;
	if ((pid = read_pidfile(pidfile, err, errlen)) < 0)
		return -1;
	if (socket_path(pidfile, addr.sun_path, sizeof(addr.sun_path)) != 0) {
		snprintf(err, errlen, "-R: the path %s.handover is too long for a unix socket", pidfile);
		return -1;
	}
	new_side_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (new_side_fd < 0 || connect(new_side_fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		snprintf(err, errlen, "-R: cannot reach process %d at %s: %s", (int)pid, addr.sun_path,
			 strerror(errno));
		goto fail;
	}
	if (getsockopt(new_side_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid != pid) {
		snprintf(err, errlen, "-R: %s is not served by process %d, which pidfile %s names", addr.sun_path,
			 (int)pid, pidfile);
		goto fail;
	}
	setsockopt(new_side_fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
	setsockopt(new_side_fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
	if (write(new_side_fd, HANDOVER_REQUEST, sizeof(HANDOVER_REQUEST) - 1) != sizeof(HANDOVER_REQUEST) - 1) {
		snprintf(err, errlen, "-R: cannot ask process %d for its sockets: %s", (int)pid, strerror(errno));
		goto fail;
	}
	do
		n = recvmsg(new_side_fd, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	for (cmsg = CMSG_FIRSTHDR(&msg); n > 0 && cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
		if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
			n_received = (int)((cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			if (n_received > 3)
				n_received = 3;
			memcpy(received, CMSG_DATA(cmsg), sizeof(int) * (size_t)n_received);
		}
	}
	if (n != (ssize_t)sizeof(message) || message.magic != HANDOVER_MAGIC || (msg.msg_flags & MSG_CTRUNC)) {
		snprintf(err, errlen, "-R: process %d did not send its sockets%s%s", (int)pid, n < 0 ? ": " : "",
			 n < 0 ? strerror(errno) : "");
		goto fail_fds;
	}
	for (int i = 0; i < 3; i++) {
		int32_t index = *indexes[i];

		if (index >= n_received || index < -1) {
			snprintf(err, errlen, "-R: process %d sent a broken hand-over message", (int)pid);
			goto fail_fds;
		}
		if (index >= 0)
			*slots[i] = received[index];
	}
	return 0;

fail_fds:
	for (int i = 0; i < n_received; i++)
		close(received[i]);
	out->listen_fd = out->readonly_fd = out->metrics_fd = -1;
fail:
	if (new_side_fd >= 0)
		close(new_side_fd);
	new_side_fd = -1;
	return -1;
}

int handover_confirm(void)
{
	int rc = -1;

	if (new_side_fd < 0)
		return -1;
	if (write(new_side_fd, "G", 1) == 1)
		rc = 0;
	close(new_side_fd);
	new_side_fd = -1;
	return rc;
}
