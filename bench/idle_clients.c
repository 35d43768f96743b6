/*
 * idle_clients.c: open N client connections to a PostgreSQL server (or a
 * pooler in front of one), complete the login of every one of them, print
 * "ready ..." on standard output, then keep them all open and idle until
 * standard input reaches end of file (or a signal ends the process).
 *
 * Used by bench/bench.sh to measure a pooler's resident memory per idle
 * client; pgbench cannot do this (it runs transactions on every connection).
 *
 * Connections are opened with libpq's non-blocking PQconnectStartParams and
 * PQconnectPoll, at most CONCURRENCY logins in flight at once, so the
 * listener's accept backlog never overflows. Every connection must reach
 * CONNECTION_OK, i.e. finish authentication (SCRAM) and receive
 * ReadyForQuery; any failure ends the program with status 1.
 *
 * Usage: idle_clients HOST PORT USER DBNAME N [CONCURRENCY [TIMEOUT_S]]
 *   The password comes from PGPASSWORD, as for any libpq program.
 *   sslmode is always "disable" (plaintext clients).
 *
 * Build: cc -O2 -Wall -o idle_clients idle_clients.c $(pkg-config --cflags --libs libpq)
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long parse_long(const char *s, const char *what, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *s == '\0' || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "idle_clients: bad %s '%s' (expected %ld..%ld)\n", what, s, min, max);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	const char *keys[] = {"host", "port", "user", "dbname", "sslmode", "application_name", NULL};
	const char *vals[7];
	PGconn **conns;
	PostgresPollingStatusType *want;
	int *inflight;	/* indexes into conns of the logins in progress */
	struct pollfd *pfd;
	long n, conc, timeout_s;
	long started = 0, done = 0;
	int ninflight = 0;
	double t0, deadline;
	char buf[256];

	if (argc < 6 || argc > 8) {
		fprintf(stderr, "usage: idle_clients HOST PORT USER DBNAME N [CONCURRENCY [TIMEOUT_S]]\n");
		return 2;
	}
	n = parse_long(argv[5], "N", 1, 1000000);
	conc = argc > 6 ? parse_long(argv[6], "CONCURRENCY", 1, 4096) : 64;
	timeout_s = argc > 7 ? parse_long(argv[7], "TIMEOUT_S", 1, 86400) : 600;
	if (conc > n)
		conc = n;

	vals[0] = argv[1];
	vals[1] = argv[2];
	vals[2] = argv[3];
	vals[3] = argv[4];
	vals[4] = "disable";
	vals[5] = "idle_clients";
	vals[6] = NULL;

	conns = calloc((size_t)n, sizeof *conns);
	want = calloc((size_t)n, sizeof *want);
	inflight = calloc((size_t)conc, sizeof *inflight);
	pfd = calloc((size_t)conc, sizeof *pfd);
	if (conns == NULL || want == NULL || inflight == NULL || pfd == NULL) {
		fprintf(stderr, "idle_clients: out of memory\n");
		return 1;
	}

	t0 = now_s();
	deadline = t0 + (double)timeout_s;
	while (done < n) {
		int i, r, timeout_ms;

		/* Top up the logins in flight. */
		while (ninflight < conc && started < n) {
			PGconn *c = PQconnectStartParams(keys, vals, 0);

			if (c == NULL || PQstatus(c) == CONNECTION_BAD) {
				fprintf(stderr, "idle_clients: connection %ld could not start: %s", started,
					c ? PQerrorMessage(c) : "out of memory\n");
				return 1;
			}
			conns[started] = c;
			want[started] = PGRES_POLLING_WRITING;
			inflight[ninflight++] = (int)started;
			started++;
		}

		for (i = 0; i < ninflight; i++) {
			int k = inflight[i];
			pfd[i].fd = PQsocket(conns[k]);
			pfd[i].events = want[k] == PGRES_POLLING_READING ? POLLIN : POLLOUT;
			pfd[i].revents = 0;
		}
		timeout_ms = (int)((deadline - now_s()) * 1000.0);
		if (timeout_ms <= 0) {
			fprintf(stderr, "idle_clients: timed out after %lds with %ld of %ld connections logged in\n",
				timeout_s, done, n);
			return 1;
		}
		if (timeout_ms > 1000)
			timeout_ms = 1000;
		r = poll(pfd, (nfds_t)ninflight, timeout_ms);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			perror("idle_clients: poll");
			return 1;
		}
		if (r == 0)
			continue;

		/* Advance every ready login; compact the in-flight list as logins finish. */
		for (i = 0; i < ninflight;) {
			int k = inflight[i];

			if (pfd[i].revents == 0) {
				i++;
				continue;
			}
			want[k] = PQconnectPoll(conns[k]);
			if (want[k] == PGRES_POLLING_FAILED) {
				fprintf(stderr, "idle_clients: connection %d failed after %ld logged in: %s", k, done,
					PQerrorMessage(conns[k]));
				return 1;
			}
			if (want[k] == PGRES_POLLING_OK) {
				done++;
				/* Move the last entry here; its pollfd goes with it. */
				ninflight--;
				inflight[i] = inflight[ninflight];
				pfd[i] = pfd[ninflight];
				continue;
			}
			i++;
		}
	}

	for (long k = 0; k < n; k++) {
		if (PQstatus(conns[k]) != CONNECTION_OK) {
			fprintf(stderr, "idle_clients: connection %ld is not OK: %s", k, PQerrorMessage(conns[k]));
			return 1;
		}
	}
	printf("ready %ld connections in %.1f s\n", n, now_s() - t0);
	fflush(stdout);

	/* Hold the connections, idle, until standard input is closed. */
	for (;;) {
		ssize_t got = read(STDIN_FILENO, buf, sizeof buf);
		if (got == 0)
			break;
		if (got < 0 && errno != EINTR) {
			perror("idle_clients: read stdin");
			break;
		}
	}
	for (long k = 0; k < n; k++)
		PQfinish(conns[k]);
	free(conns);
	free(want);
	free(inflight);
	free(pfd);
	return 0;
}
