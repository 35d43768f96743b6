#!/usr/bin/env bash
# failover.sh: measures what a writing client sees during a failover, through
# pgmux and without it. Each run builds a fresh primary + streaming standby on
# loopback ports, puts pgmux in front (transaction pooling, both instances in
# [target] hosts), and starts two clients that INSERT every 10 ms:
#   pgmux   one libpq connection to pgmux's listen_port, never reconnected by
#           the client itself (pgmux is expected to keep it up);
#   direct  a libpq client of the instances themselves, with the multi-host
#           string "host=127.0.0.1,127.0.0.1 port=P1,P2
#           target_session_attrs=read-write" and a reconnect-and-retry loop.
# After a warm-up the primary is stopped with pg_ctl stop -m immediate and the
# standby promoted with pg_ctl promote; the script then reports, per client,
# the time from promotion to its first successful write on the new writer and
# how many write attempts failed. Not part of `make check`.
#
# Usage: bench/failover.sh [RUNS]          (default 3 runs)
# Environment: PGMUX_BIN (default ./pgmux), PGBIN (PostgreSQL's bin directory),
#   HEALTH_CHECK_INTERVAL (default 250ms), HEALTH_CHECK_TIMEOUT (default 500ms),
#   WARMUP_MS (default 2000), KEEP=1 keeps the scratch directory.
# Works as root (PostgreSQL then runs as the "postgres" user) and as a normal user.

set -euo pipefail

RUNS=${1:-3}
PGMUX_BIN=${PGMUX_BIN:-./pgmux}
HEALTH_CHECK_INTERVAL=${HEALTH_CHECK_INTERVAL:-250ms}
HEALTH_CHECK_TIMEOUT=${HEALTH_CHECK_TIMEOUT:-500ms}
WARMUP_MS=${WARMUP_MS:-2000}
APPUSER=app
APPPASS=app-secret-pw

log() { printf 'failover.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ -x "$PGMUX_BIN" ] || die "PGMUX_BIN=$PGMUX_BIN is not an executable (build pgmux first)"
PGMUX_BIN=$(cd "$(dirname "$PGMUX_BIN")" && pwd)/$(basename "$PGMUX_BIN")
if [ -z "${PGBIN:-}" ]; then
	for d in /usr/lib/postgresql/15/bin "$(pg_config --bindir 2>/dev/null || true)" \
		$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
		if [ -n "$d" ] && [ -x "$d/initdb" ]; then PGBIN=$d; break; fi
	done
fi
[ -n "${PGBIN:-}" ] && [ -x "$PGBIN/initdb" ] || die "cannot find PostgreSQL's initdb; set PGBIN"
command -v cc >/dev/null || die "a C compiler (cc) is needed for the load client"
command -v pg_config >/dev/null || die "pg_config is needed to build the load client against libpq"

if [ "$(id -u)" -eq 0 ]; then
	id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user"
	as_pg() { runuser -u postgres -- "$@"; }
	PGOWNER=postgres
else
	as_pg() { "$@"; }
	PGOWNER=$(id -un)
fi

now_ms() { date +%s%3N; }
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------ cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgmux-failover-bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()          # clients and pgmux: our own children
PGDATAS=()       # clusters whose postmaster may still run

alive() { kill -0 "$1" 2>/dev/null; }

stop_cluster() { # datadir: stop its postmaster by the PID it recorded
	local dir=$1 pid
	[ -f "$dir/postmaster.pid" ] || return 0
	pid=$(head -n 1 "$dir/postmaster.pid")
	[ -n "$pid" ] && alive "$pid" || return 0
	kill -QUIT "$pid" 2>/dev/null || true # immediate shutdown
	for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
	local status=$? pid dir
	set +e
	for pid in "${PIDS[@]}"; do
		if alive "$pid"; then kill -TERM "$pid" 2>/dev/null; fi
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
		alive "$pid" && kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	for dir in "${PGDATAS[@]}"; do stop_cluster "$dir"; done
	if [ -n "${KEEP:-}" ]; then log "keeping $WORK"; else rm -rf "$WORK"; fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ the load client
# One INSERT every 10 ms; prints "ok <epoch ms> <server port>" or
# "fail <epoch ms> <SQLSTATE or connect> <message>" per attempt. Reconnects
# (with the same connection string) only when its connection is broken.
cat >"$WORK/writer.c" <<'EOF'
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }
static void quiet(void *arg, const char *msg) { (void)arg; (void)msg; }
static long long ms(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
static const char *line(const char *s)
{
	static char buf[200];
	snprintf(buf, sizeof(buf), "%s", s ? s : "");
	for (char *p = buf; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	return buf;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: writer CONNINFO LABEL\n");
		return 2;
	}
	char sql[200];
	snprintf(sql, sizeof(sql), "INSERT INTO bench_writes (client, port) VALUES ('%s', inet_server_port()) RETURNING port", argv[2]);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	setvbuf(stdout, NULL, _IOLBF, 0);
	PGconn *conn = NULL;
	long long next = ms(CLOCK_MONOTONIC);
	while (!stop) {
		if (conn == NULL) {
			conn = PQconnectdb(argv[1]);
			if (PQstatus(conn) != CONNECTION_OK) {
				printf("fail %lld connect %s\n", ms(CLOCK_REALTIME), line(PQerrorMessage(conn)));
				PQfinish(conn);
				conn = NULL;
			} else {
				PQsetNoticeProcessor(conn, quiet, NULL);
			}
		}
		if (conn != NULL) {
			PGresult *r = PQexec(conn, sql);
			if (PQresultStatus(r) == PGRES_TUPLES_OK)
				printf("ok %lld %s\n", ms(CLOCK_REALTIME), PQgetvalue(r, 0, 0));
			else {
				const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
				printf("fail %lld %s %s\n", ms(CLOCK_REALTIME), state ? state : "lost", line(PQerrorMessage(conn)));
			}
			PQclear(r);
			if (PQstatus(conn) != CONNECTION_OK) {
				PQfinish(conn);
				conn = NULL;
			}
		}
		next += 10;
		long long left = next - ms(CLOCK_MONOTONIC);
		if (left < 0)
			next = ms(CLOCK_MONOTONIC); /* behind: no burst to catch up */
		else {
			struct timespec ts = { left / 1000, (left % 1000) * 1000000L };
			nanosleep(&ts, NULL);
		}
	}
	PQfinish(conn);
	return 0;
}
EOF
cc -O2 -o "$WORK/writer" "$WORK/writer.c" -I"$(pg_config --includedir)" -L"$(pg_config --libdir)" -lpq ||
	die "cannot build the load client"

# ------------------------------------------------------------ one run
SECRETS=$WORK/secrets
mkdir -p "$SECRETS"
chmod 700 "$SECRETS"
printf '{"username": "%s", "password": "%s", "engine": "postgres"}\n' "$APPUSER" "$APPPASS" >"$SECRETS/$APPUSER.json"
chmod 600 "$SECRETS/$APPUSER.json"

RESULTS=$WORK/results
: >"$RESULTS"

start_pg() { # datadir logfile
	as_pg "$PGBIN/pg_ctl" -D "$1" -l "$2" -w -t 60 start >/dev/null || { tail -n 20 "$2" >&2; die "PostgreSQL did not start ($1)"; }
}

wait_value() { # port sql want timeout_s: poll a superuser query until it returns want
	local end=$(($(date +%s) + $4)) v
	while :; do
		v=$(PGPASSWORD=$SUPERPASS "$PGBIN/psql" -X -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2" 2>/dev/null || true)
		[ "$v" = "$3" ] && return 0
		[ "$(date +%s)" -lt "$end" ] || return 1
		sleep 0.02
	done
}

# First "ok" line with the given port at or after a time, from a client's output; empty if none.
first_ok_on() { awk -v port="$2" -v after="$3" '$1 == "ok" && $3 == port && $2 >= after { print $2; exit }' "$1"; }

run_once() {
	local run=$1 dir=$WORK/run$run p1 p2 listen
	mkdir -p "$dir"
	chmod 755 "$dir"
	[ "$PGOWNER" = "$(id -un)" ] || chown "$PGOWNER" "$dir"
	p1=$(free_port); p2=$(free_port); listen=$(free_port)
	SUPERPASS="bench-$RANDOM$RANDOM"

	# Primary: SCRAM for everyone, trust for the standby's replication connection.
	printf '%s\n' "$SUPERPASS" >"$dir/pwfile"
	[ "$PGOWNER" = "$(id -un)" ] || chown "$PGOWNER" "$dir/pwfile"
	as_pg "$PGBIN/initdb" -D "$dir/primary" -U postgres --pwfile="$dir/pwfile" --auth-host=scram-sha-256 \
		--auth-local=scram-sha-256 -E UTF8 --locale=C -N >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; die "initdb failed"; }
	rm -f "$dir/pwfile"
	cat >>"$dir/primary/postgresql.conf" <<-EOF
		listen_addresses = '127.0.0.1'
		port = $p1
		unix_socket_directories = ''
		wal_level = replica
		max_wal_senders = 4
		hot_standby = on
		fsync = off
		synchronous_commit = off
		shared_buffers = 32MB
	EOF
	cat >"$dir/primary/pg_hba.conf" <<-EOF
		host replication all 127.0.0.1/32 trust
		host all all 127.0.0.1/32 scram-sha-256
	EOF
	PGDATAS+=("$dir/primary" "$dir/standby")
	start_pg "$dir/primary" "$dir/primary.log"
	PGPASSWORD=$SUPERPASS "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$p1" -U postgres -d postgres >/dev/null <<-EOF
		CREATE ROLE $APPUSER LOGIN PASSWORD '$APPPASS';
		CREATE TABLE bench_writes (id bigserial PRIMARY KEY, client text NOT NULL, port int NOT NULL,
			at timestamptz NOT NULL DEFAULT clock_timestamp());
		ALTER TABLE bench_writes OWNER TO $APPUSER;
	EOF

	# Standby: a base backup with -R, on its own port.
	as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$p1" -U postgres -D "$dir/standby" -R -c fast -X stream -w \
		>"$dir/basebackup.log" 2>&1 || { cat "$dir/basebackup.log" >&2; die "pg_basebackup failed"; }
	printf 'port = %s\n' "$p2" >>"$dir/standby/postgresql.conf"
	start_pg "$dir/standby" "$dir/standby.log"
	wait_value "$p2" "select pg_is_in_recovery()" t 30 || die "the standby is not in recovery"
	wait_value "$p1" "select count(*) from pg_stat_replication where state = 'streaming'" 1 30 ||
		die "the standby does not stream"

	# pgmux in front of both.
	cat >"$dir/pgmux.ini" <<-EOF
		[pgmux]
		listen_addr = 127.0.0.1
		listen_port = $listen
		workers = 2
		client_auth = scram-sha-256
		secrets_dir = $SECRETS
		logfile = $dir/pgmux.log
		log_level = info
		[target]
		hosts = 127.0.0.1:$p1, 127.0.0.1:$p2
		server_tls = disable
		health_check_interval = $HEALTH_CHECK_INTERVAL
		health_check_timeout = $HEALTH_CHECK_TIMEOUT
		health_check_user = $APPUSER
		[pool]
		pool_mode = transaction
		max_connections = 20
		connection_borrow_timeout = 30s
	EOF
	"$PGMUX_BIN" "$dir/pgmux.ini" >"$dir/pgmux.stderr" 2>&1 &
	local pgmux_pid=$!
	PIDS+=("$pgmux_pid")
	local end=$(($(date +%s) + 20))
	until PGPASSWORD=$APPPASS "$PGBIN/psql" -X -At -h 127.0.0.1 -p "$listen" -U "$APPUSER" -d postgres \
		-c 'select 1' >/dev/null 2>&1; do
		alive "$pgmux_pid" || { cat "$dir/pgmux.stderr" "$dir/pgmux.log" >&2; die "pgmux exited"; }
		[ "$(date +%s)" -lt "$end" ] || die "pgmux does not answer on port $listen"
		sleep 0.02
	done

	# The two clients.
	PGPASSWORD=$APPPASS "$WORK/writer" \
		"host=127.0.0.1 port=$listen user=$APPUSER dbname=postgres sslmode=disable connect_timeout=5" \
		pgmux >"$dir/pgmux.out" 2>&1 &
	local c1=$!
	PGPASSWORD=$APPPASS "$WORK/writer" \
		"host=127.0.0.1,127.0.0.1 port=$p1,$p2 user=$APPUSER dbname=postgres sslmode=disable connect_timeout=2 target_session_attrs=read-write" \
		direct >"$dir/direct.out" 2>&1 &
	local c2=$!
	PIDS+=("$c1" "$c2")

	# Warm up until both have written, and for WARMUP_MS.
	local t0
	t0=$(now_ms)
	end=$(($(date +%s) + 20))
	until [ -n "$(first_ok_on "$dir/pgmux.out" "$p1" 0)" ] && [ -n "$(first_ok_on "$dir/direct.out" "$p1" 0)" ] &&
		[ $(($(now_ms) - t0)) -ge "$WARMUP_MS" ]; do
		[ "$(date +%s)" -lt "$end" ] || die "the clients do not write (see $dir/*.out)"
		sleep 0.02
	done

	local crashed promoted
	as_pg "$PGBIN/pg_ctl" -D "$dir/primary" -m immediate -w -t 30 stop >/dev/null
	crashed=$(now_ms)
	as_pg "$PGBIN/pg_ctl" -D "$dir/standby" -w -t 30 promote >/dev/null
	promoted=$(now_ms)

	# Until both have written on the new writer (at most 30 s), then one more second.
	end=$(($(date +%s) + 30))
	until [ -n "$(first_ok_on "$dir/pgmux.out" "$p2" 0)" ] && [ -n "$(first_ok_on "$dir/direct.out" "$p2" 0)" ]; do
		[ "$(date +%s)" -lt "$end" ] || break
		sleep 0.02
	done
	sleep 1
	kill -TERM "$c1" "$c2"
	wait "$c1" "$c2" || true
	kill -TERM "$pgmux_pid"
	wait "$pgmux_pid" || true

	local who first last_old fails kinds
	for who in pgmux direct; do
		first=$(first_ok_on "$dir/$who.out" "$p2" 0)
		last_old=$(awk -v port="$p1" '$1 == "ok" && $3 == port { t = $2 } END { print t }' "$dir/$who.out")
		fails=$(awk '$1 == "fail" { n++ } END { print n + 0 }' "$dir/$who.out")
		kinds=$(awk '$1 == "fail" { k[$3]++ } END { for (s in k) { printf "%s%sx%d", sep, s, k[s]; sep = " " } }' \
			"$dir/$who.out" | tr ' ' ',')
		if [ -n "$first" ]; then
			printf '%s %s %s %s %s %s %s\n' "$run" "$who" "$((promoted - crashed))" "$((first - promoted))" \
				"$((first - last_old))" "$fails" "${kinds:--}" >>"$RESULTS"
		else
			printf '%s %s %s none none %s %s\n' "$run" "$who" "$((promoted - crashed))" "$fails" "${kinds:--}" \
				>>"$RESULTS"
		fi
	done
	grep -h "failover: writer is now" "$dir/pgmux.log" | sed 's/^/    pgmux log: /' >&2 || true
	stop_cluster "$dir/standby"
	stop_cluster "$dir/primary"
}

for run in $(seq "$RUNS"); do
	log "run $run of $RUNS"
	run_once "$run"
done

echo
echo "Failover: INSERT every 10 ms; pg_ctl stop -m immediate on the primary, then pg_ctl promote on the standby."
echo "health_check_interval = $HEALTH_CHECK_INTERVAL, health_check_timeout = $HEALTH_CHECK_TIMEOUT; $(nproc) CPUs; $("$PGBIN/postgres" --version)"
echo
printf '%-4s %-7s %11s %29s %16s %16s  %s\n' run client "promote/ms" "first write after promote/ms" \
	"write outage/ms" "failed attempts" "failures by SQLSTATE"
while read -r run who promote first outage fails kinds; do
	printf '%-4s %-7s %11s %29s %16s %16s  %s\n' "$run" "$who" "$promote" "$first" "$outage" "$fails" "$kinds"
done <"$RESULTS"
echo
echo "promote: how long pg_ctl promote took (the same for both clients of a run)."
echo "first write after promote: from pg_ctl promote returning to the client's first successful INSERT on the"
echo "new writer (negative: before pg_ctl, which polls every 100 ms, noticed). write outage: from the last"
echo "successful INSERT on the old primary to the first on the new writer, crash and promotion included."
