/*
 * handover.h: restart in place (pgmux -R). A running pgmux with a pidfile
 * listens on a unix socket beside it (PIDFILE.handover, mode 0600). A new
 * process, started with -R and the same configuration, finds the running
 * one through the pidfile, connects, and receives the listening sockets
 * (writer port, reader port, metrics port) over SCM_RIGHTS; it accepts on
 * them as soon as its own threads run, then says so, and only then does the
 * old process close its copies and drain. The sockets never close, so no
 * connection is refused; the kernel queues what neither process accepts yet.
 * A new process that fails before it says so leaves the old one as it was.
 */
#ifndef PGMUX_HANDOVER_H
#define PGMUX_HANDOVER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <event2/event.h>

/* The listening sockets handed over; -1 for one the running process does not have. */
struct handover_fds {
	int listen_fd;   /* listen_port */
	int readonly_fd; /* readonly_port */
	int metrics_fd;  /* metrics_port */
};

/*
 * The old side, on the main thread's loop: serve hand-over requests at
 * pidfile.handover. get_fds reports the current sockets; taken runs once a
 * new process (new_pid) accepts on them. Returns -1 (logged) on failure.
 */
int handover_listen(struct event_base *base, const char *pidfile, void (*get_fds)(struct handover_fds *out),
		    void (*taken)(pid_t new_pid));
/* Stop serving requests; the socket file is removed unless another process has taken it over. */
void handover_stop(void);

/*
 * The new side, at start-up (it blocks, for at most a few seconds): find the
 * process the pidfile names, ask it for its sockets. Returns 0 with out
 * filled, or -1 with the reason in err.
 */
int handover_receive(const char *pidfile, struct handover_fds *out, char *err, size_t errlen);
/* Tell the old process that this one accepts now: it stops accepting and drains. -1 if it is gone. */
int handover_confirm(void);

#endif
