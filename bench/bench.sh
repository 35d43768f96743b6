#!/usr/bin/env bash
# bench/bench.sh: pgmux against PgBouncer (and against PostgreSQL directly),
# on one machine, over loopback. See bench/README.md, "PgBouncer comparison".
#
# One command:   bash bench/bench.sh        (root or a normal user)
#
# Environment:
#   ROUNDS=3            rounds per scenario; each round runs pgmux, PgBouncer and
#                       direct back to back (interleaved), the table shows medians
#   DURATION=10         seconds per pgbench run
#   SCENARIOS="1 2 3 4 5 6"   which scenarios to run (see README.md)
#   POOL_SIZE=16        server connections per pooler (pgmux max_connections,
#                       PgBouncer default_pool_size)
#   IDLE_CLIENTS=10000  idle client connections in scenario 5
#   BUSY_POLL_US=0      pgmux's busy_poll_us (pgmux's default, 0, is off)
#   PGMUX_WORKERS=2     pgmux's worker threads (pgmux's default: one per CPU)
#   SYSCALLS=1          count the system calls of each pooler during every pgbench
#                       run (perf stat on the syscalls tracepoints, all threads);
#                       0 leaves perf out
#   RELAY=1             add HAProxy (mode tcp, one thread, one server connection
#                       per client: a plain relay) as a reference target in
#                       scenarios 1 to 3; 0 leaves it out
#   WARMUP=5            seconds of unmeasured pgbench -S, direct, before scenario 1
#   PGMUX_BIN=path      the pgmux binary (default: <repo>/pgmux, built if missing)
#   PGMUX_COMMIT_OVERRIDE=text  label printed for that binary (default: the
#                       repository's HEAD commit, which a PGMUX_BIN snapshot may not match)
#   PGMUX_BASE_WORKERS=n  the base binary's worker threads (default: PGMUX_WORKERS),
#                       to compare two worker counts of one binary in one run
#   PGMUX_BASE_BIN=path another pgmux binary (an earlier commit, say), run with the
#                       same configuration as a fourth target in every round of
#                       scenarios 1, 2 and 4: the table gets a column and a ratio
#                       for it ("base"), measured interleaved in the same run
#   PGBIN=dir           PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
#   RESULTS=file        where to write the table (default bench/results-latest.txt)
#   KEEP=1              keep the scratch directory (configs, logs, pgbench output)
#
# Everything listens on 127.0.0.1 on free ports. PostgreSQL is a throw-away
# cluster in a new directory under $TMPDIR; Debian's pgbouncer service and
# configuration are never used. Every process this script starts is stopped by
# PID when it exits, whatever way it ends.

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
SCENARIOS=${SCENARIOS:-"1 2 3 4 5 6"}
POOL_SIZE=${POOL_SIZE:-16}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
WARMUP=${WARMUP:-5}
BUSY_POLL_US=${BUSY_POLL_US:-0}
SYSCALLS=${SYSCALLS:-1}
RELAY=${RELAY:-1}
PGMUX_WORKERS=${PGMUX_WORKERS:-2}
PGMUX_BASE_WORKERS=${PGMUX_BASE_WORKERS:-$PGMUX_WORKERS}
KEEP=${KEEP:-}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RESULTS=${RESULTS:-$HERE/results-latest.txt}
COMMAND_LINE="ROUNDS=$ROUNDS DURATION=$DURATION SCENARIOS=\"$SCENARIOS\" POOL_SIZE=$POOL_SIZE IDLE_CLIENTS=$IDLE_CLIENTS BUSY_POLL_US=$BUSY_POLL_US PGMUX_WORKERS=$PGMUX_WORKERS${PGMUX_BASE_BIN:+ PGMUX_BASE_WORKERS=$PGMUX_BASE_WORKERS} SYSCALLS=$SYSCALLS RELAY=$RELAY${PGMUX_BIN:+ PGMUX_BIN=$PGMUX_BIN} bash bench/bench.sh"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench.sh: error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------ argument checks
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$ROUNDS" && [ "$ROUNDS" -ge 1 ] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
is_uint "$DURATION" && [ "$DURATION" -ge 1 ] || die "DURATION must be a positive number of seconds (got '$DURATION')"
is_uint "$POOL_SIZE" && [ "$POOL_SIZE" -ge 1 ] || die "POOL_SIZE must be a positive integer (got '$POOL_SIZE')"
is_uint "$IDLE_CLIENTS" && [ "$IDLE_CLIENTS" -ge 1 ] || die "IDLE_CLIENTS must be a positive integer (got '$IDLE_CLIENTS')"
is_uint "$WARMUP" || die "WARMUP must be a number of seconds (got '$WARMUP')"
is_uint "$BUSY_POLL_US" && [ "$BUSY_POLL_US" -le 10000 ] || die "BUSY_POLL_US must be 0 to 10000 microseconds (got '$BUSY_POLL_US')"
is_uint "$PGMUX_WORKERS" && [ "$PGMUX_WORKERS" -ge 1 ] && [ "$PGMUX_WORKERS" -le 64 ] || die "PGMUX_WORKERS must be 1 to 64 (got '$PGMUX_WORKERS')"
is_uint "$PGMUX_BASE_WORKERS" && [ "$PGMUX_BASE_WORKERS" -ge 1 ] && [ "$PGMUX_BASE_WORKERS" -le 64 ] || die "PGMUX_BASE_WORKERS must be 1 to 64 (got '$PGMUX_BASE_WORKERS')"
for s in $SCENARIOS; do
	case $s in 1|2|3|4|5|6) ;; *) die "SCENARIOS may only list 1 to 6 (got '$s')" ;; esac
done
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# ------------------------------------------------------------ tools
find_pgbin() {
	if [ -n "${PGBIN:-}" ]; then
		[ -x "$PGBIN/initdb" ] || die "PGBIN=$PGBIN has no initdb"
		echo "$PGBIN"; return
	fi
	for d in /usr/lib/postgresql/15/bin $(pg_config --bindir 2>/dev/null || true); do
		if [ -x "$d/initdb" ]; then echo "$d"; return; fi
	done
	die "cannot find the PostgreSQL 15 server binaries (initdb); install postgresql-15 or set PGBIN"
}
PGBIN=$(find_pgbin)
for t in pgbench psql; do
	if [ -x "$PGBIN/$t" ]; then :; elif command -v "$t" >/dev/null; then :; else
		die "$t not found; install postgresql-client-15"
	fi
done
PGBENCH=$PGBIN/pgbench; [ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench)
PSQL=$PGBIN/psql; [ -x "$PSQL" ] || PSQL=$(command -v psql)
for t in openssl cc pkg-config awk setpriv; do
	command -v "$t" >/dev/null || die "$t not found (needed by this script)"
done
pkg-config --exists libpq || die "libpq's pkg-config file not found; install libpq-dev"

# Debian's package of a program: its path, installed with apt-get if missing
# (as root), without letting the package start its own service (a
# policy-rc.d that forbids starting services, removed again right after).
# find_or_install PROGRAM PACKAGE
find_or_install() {
	local prog=$1 pkg=$2 path created_policy= apt_rc
	path=$(command -v "$prog" || true)
	[ -n "$path" ] || { [ -x "/usr/sbin/$prog" ] && path=/usr/sbin/$prog; } || true
	if [ -z "$path" ]; then
		[ "$(id -u)" -eq 0 ] || die "$prog is not installed; run 'sudo apt-get install -y $pkg' or run this script as root"
		log "installing $pkg with apt-get (its service is not started)"
		if [ ! -e /usr/sbin/policy-rc.d ]; then
			printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
			chmod 755 /usr/sbin/policy-rc.d
			created_policy=1
		fi
		set +e
		DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" >&2
		apt_rc=$?
		set -e
		[ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d
		[ "$apt_rc" -eq 0 ] || die "apt-get install $pkg failed"
		path=$(command -v "$prog" || echo "/usr/sbin/$prog")
		[ -x "$path" ] || die "$prog still not found after installing $pkg"
	fi
	echo "$path"
}
PGBOUNCER=$(find_or_install pgbouncer pgbouncer)
# HAProxy, the plain-relay reference (RELAY=1; RELAY=0 leaves it out).
HAPROXY=
[ "$RELAY" = 1 ] && HAPROXY=$(find_or_install haproxy haproxy)

# perf, for the system-call counts (SYSCALLS=1): the tracepoints must be readable.
PERF=
if [ "$SYSCALLS" = 1 ]; then
	PERF=$(command -v perf || true)
	[ -n "$PERF" ] || die "perf not found (install linux-perf) or set SYSCALLS=0"
	"$PERF" stat -x, -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 ||
		die "perf cannot count the syscall tracepoints here (perf_event_paranoid, tracefs); set SYSCALLS=0"
fi

# pgmux: PGMUX_BIN, or the repository's binary, built if missing.
if [ -n "${PGMUX_BIN:-}" ]; then
	[ -x "$PGMUX_BIN" ] || die "PGMUX_BIN=$PGMUX_BIN is not an executable file"
	PGMUX=$PGMUX_BIN
else
	PGMUX=$REPO/pgmux
	if [ ! -x "$PGMUX" ]; then
		log "building pgmux in $REPO (autoreconf -fi && ./configure && make)"
		(cd "$REPO" && autoreconf -fi && ./configure && make) >&2 || die "building pgmux failed"
		[ -x "$PGMUX" ] || die "the build did not produce $PGMUX"
	fi
fi

# ------------------------------------------------------------ users, limits
if [ "$(id -u)" -eq 0 ]; then
	id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run PostgreSQL and PgBouncer"
	RUN_USER=postgres
	# setpriv and env exec the program, so a background "${AS_USER[@]}" cmd &
	# leaves the server's own PID in $! (runuser would fork).
	AS_USER=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME=/tmp)
else
	RUN_USER=$(id -un)
	AS_USER=()
fi
as_user() { "${AS_USER[@]}" "$@"; }

# Scenario 5 needs one descriptor per client in both the pooler and the client program.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
if want 5 && [ "$FD_LIMIT" != unlimited ] && [ "$FD_LIMIT" -lt $((IDLE_CLIENTS + 256)) ]; then
	die "the open-files limit is $FD_LIMIT (hard limit $(ulimit -Hn)); scenario 5 needs at least $((IDLE_CLIENTS + 256)). Raise it, lower IDLE_CLIENTS or leave 5 out of SCENARIOS"
fi

free_port() {
	perl -MSocket -e 'socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
		bind($s, pack_sockaddr_in(0, inet_aton("127.0.0.1"))) or die "bind: $!";
		my ($p) = unpack_sockaddr_in(getsockname($s)); print "$p\n";'
}
command -v perl >/dev/null || die "perl not found (used to pick free ports)"

# True while pid runs; a zombie counts as gone.
alive() {
	kill -0 "$1" 2>/dev/null || return 1
	local st
	st=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null || true)
	[ -n "$st" ] && [ "$st" != Z ]
}

# Stop one process we started: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
	local pid=$1 i
	[ -n "$pid" ] || return 0
	if alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 200; i++)); do alive "$pid" || break; sleep 0.05; done
		if alive "$pid"; then
			log "process $pid did not stop on SIGTERM; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------ teardown
WORK=
PGDATA=
MUX_PID=
BASE_PID=
PGB_PID=
RELAY_PID=
PERF_PID=
HELPER_PID=
HELPER_IN=
cleanup() {
	local status=$?
	set +e
	trap - EXIT
	if [ -n "$HELPER_IN" ]; then eval "exec $HELPER_IN>&-" 2>/dev/null; fi
	stop_pid "$HELPER_PID"
	if [ -n "$PERF_PID" ]; then kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null; fi
	stop_pid "$RELAY_PID"
	stop_pid "$MUX_PID"
	stop_pid "$BASE_PID"
	stop_pid "$PGB_PID"
	if [ -n "$PGDATA" ] && [ -f "$PGDATA/postmaster.pid" ]; then
		local pgpid
		pgpid=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null)
		as_user "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 30 stop >/dev/null 2>&1 ||
			as_user "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 10 stop >/dev/null 2>&1
		if [ -n "$pgpid" ] && alive "$pgpid"; then kill -KILL "$pgpid" 2>/dev/null; fi
	fi
	if [ "$status" -ne 0 ] && [ -n "$WORK" ] && [ -d "$WORK" ]; then
		for f in "$WORK/postgres.log" "$WORK/pgmux/pgmux.log" "$WORK/pgmux/stderr" \
			 "$WORK/pgb/pgbouncer.log" "$WORK/pgb/stderr"; do
			if [ -s "$f" ]; then
				printf '\n--- last lines of %s ---\n' "$f" >&2
				tail -n 15 "$f" >&2
			fi
		done
	fi
	if [ -n "$WORK" ] && [ -d "$WORK" ]; then
		if [ -n "$KEEP" ] || [ "$status" -ne 0 ]; then
			log "scratch directory kept: $WORK"
		else
			rm -rf "$WORK"
		fi
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ------------------------------------------------------------ scratch directory
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgmux-bench.XXXXXX")
chmod 755 "$WORK"
PGDATA=$WORK/pgdata
mkdir -p "$PGDATA" "$WORK/sock" "$WORK/tls" "$WORK/pgmux/secrets" "$WORK/pgb" "$WORK/relay" "$WORK/out"
chmod 700 "$PGDATA" "$WORK/pgmux/secrets"
touch "$WORK/postgres.log"
if [ "$RUN_USER" != "$(id -un)" ]; then
	chown -R "$RUN_USER" "$PGDATA" "$WORK/sock" "$WORK/tls" "$WORK/pgmux" "$WORK/pgb" "$WORK/relay" "$WORK/postgres.log"
fi

PW=$(openssl rand -hex 16)
PGPORT=$(free_port)
MUXPORT=$(free_port)
PGBPORT=$(free_port)
while [ "$MUXPORT" = "$PGPORT" ]; do MUXPORT=$(free_port); done
while [ "$PGBPORT" = "$PGPORT" ] || [ "$PGBPORT" = "$MUXPORT" ]; do PGBPORT=$(free_port); done
RELAYPORT=$(free_port)
while [ "$RELAYPORT" = "$PGPORT" ] || [ "$RELAYPORT" = "$MUXPORT" ] || [ "$RELAYPORT" = "$PGBPORT" ]; do
	RELAYPORT=$(free_port)
done
BASEPORT=$(free_port)
while [ "$BASEPORT" = "$RELAYPORT" ] || [ "$BASEPORT" = "$PGPORT" ] || [ "$BASEPORT" = "$MUXPORT" ] || [ "$BASEPORT" = "$PGBPORT" ]; do
	BASEPORT=$(free_port)
done

# One RSA-2048 self-signed certificate, used by pgmux, PgBouncer and PostgreSQL.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
	-keyout "$WORK/tls/server.key" -out "$WORK/tls/server.crt" >/dev/null 2>&1 ||
	die "openssl could not create the test certificate"
chmod 600 "$WORK/tls/server.key"
[ "$RUN_USER" = "$(id -un)" ] || chown "$RUN_USER" "$WORK/tls/server.key" "$WORK/tls/server.crt"

# ------------------------------------------------------------ PostgreSQL
log "starting PostgreSQL 15 on 127.0.0.1:$PGPORT (scratch dir $WORK)"
as_user "$PGBIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C \
	--auth-local=trust --auth-host=scram-sha-256 >"$WORK/initdb.log" 2>&1 ||
	{ cat "$WORK/initdb.log" >&2; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<EOF

# bench/bench.sh
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$WORK/sock'
max_connections = 200
shared_buffers = 128MB
password_encryption = scram-sha-256
# A throw-away benchmark cluster: no durability (fsync off). All three targets share it.
fsync = off
ssl = on
ssl_cert_file = '$WORK/tls/server.crt'
ssl_key_file = '$WORK/tls/server.key'
logging_collector = off
EOF
as_user "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w -t 60 start >/dev/null ||
	die "PostgreSQL did not start (see the log above)"

psql_admin() { as_user "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$WORK/sock" -p "$PGPORT" -U postgres "$@"; }
psql_admin -d postgres -c "create role bench login password '$PW'" -c "create database bench owner bench" ||
	die "could not create role and database bench"
VERIFIER=$(psql_admin -d postgres -Atc "select rolpassword from pg_authid where rolname = 'bench'")
[[ $VERIFIER == SCRAM-SHA-256\$* ]] || die "bench's password is not stored as a SCRAM verifier: $VERIFIER"

export PGPASSWORD=$PW PGCONNECT_TIMEOUT=10
log "pgbench -i -s 10"
"$PGBENCH" -i -s 10 -q -h 127.0.0.1 -p "$PGPORT" -U bench bench >"$WORK/out/pgbench-init.log" 2>&1 ||
	{ tail -n 20 "$WORK/out/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ------------------------------------------------------------ pooler configurations
# Equivalent settings: transaction pooling, POOL_SIZE server connections,
# SCRAM for clients (pgmux from bench's secret, PgBouncer from bench's SCRAM
# verifier), no TLS to the server, no per-connection logging (pgmux
# log_level = warning; PgBouncer log_connections/log_disconnections = 0), idle
# server connections kept (pgmux max_idle_connections_percent = 100, like
# PgBouncer, which keeps its pool until server_idle_timeout), the same accept
# backlog. $1: plain (TLS offered, not required) or tls (TLS required).
write_pgmux_conf() { # plain|tls [port file logfile workers]
	local require=false
	[ "$1" = tls ] && require=true
	cat >"${3:-$WORK/pgmux/pgmux.ini}" <<EOF
[pgmux]
listen_addr = 127.0.0.1
listen_port = ${2:-$MUXPORT}
workers = ${5:-$PGMUX_WORKERS}
busy_poll_us = $BUSY_POLL_US
client_tls_cert_file = $WORK/tls/server.crt
client_tls_key_file = $WORK/tls/server.key
require_tls = $require
client_auth = scram-sha-256
secrets_dir = $WORK/pgmux/secrets
logfile = ${4:-$WORK/pgmux/pgmux.log}
log_level = warning
max_client_connections = 20000
listen_backlog = 4096
admin_users = bench

[target]
hosts = 127.0.0.1:$PGPORT
server_tls = disable

[pool]
pool_mode = transaction
max_connections = $POOL_SIZE
max_idle_connections_percent = 100
EOF
}
printf '{"username": "bench", "password": "%s", "engine": "postgres"}\n' "$PW" >"$WORK/pgmux/secrets/bench.json"
chmod 600 "$WORK/pgmux/secrets/bench.json"

printf '"bench" "%s"\n' "$VERIFIER" >"$WORK/pgb/userlist.txt"
chmod 600 "$WORK/pgb/userlist.txt"
write_pgb_conf() {
	local sslmode=allow
	[ "$1" = tls ] && sslmode=require
	cat >"$WORK/pgb/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBPORT
unix_socket_dir =
listen_backlog = 4096
auth_type = scram-sha-256
auth_file = $WORK/pgb/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 20000
ignore_startup_parameters = extra_float_digits
server_tls_sslmode = disable
client_tls_sslmode = $sslmode
client_tls_cert_file = $WORK/tls/server.crt
client_tls_key_file = $WORK/tls/server.key
logfile = $WORK/pgb/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
}
if [ "$RUN_USER" != "$(id -un)" ]; then chown -R "$RUN_USER" "$WORK/pgmux" "$WORK/pgb"; fi

# Make sure $! is the server itself (setpriv and env exec it), not a wrapper:
# its CPU time and memory are what is measured, and it is what gets stopped.
check_comm() {
	local pid=$1 want=$2 comm i
	for ((i = 0; i < 100; i++)); do
		comm=$(head -z -n 1 "/proc/$pid/cmdline" 2>/dev/null | tr -d '\0' || true)
		[ "${comm##*/}" = "$want" ] && return 0
		alive "$pid" || die "$want exited at once; see $WORK/${want/pgbouncer/pgb}/"
		sleep 0.02
	done
	die "process $pid is '$comm', not $want"
}

# Wait until a login through port $1 works (at most 30 s), while pid $2 lives.
wait_ready() {
	local port=$1 pid=$2 name=$3 sslmode=$4 i
	for ((i = 0; i < 300; i++)); do
		alive "$pid" || die "$name exited while starting (port $port)"
		if PGCONNECT_TIMEOUT=2 "$PSQL" -X -Atq "host=127.0.0.1 port=$port user=bench dbname=bench sslmode=$sslmode" \
			-c 'select 1' >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	die "$name did not accept a login on 127.0.0.1:$port within 30 s"
}

start_pgmux() {
	write_pgmux_conf "$1"
	[ "$RUN_USER" = "$(id -un)" ] || chown "$RUN_USER" "$WORK/pgmux/pgmux.ini"
	# A simple command in the background, so that $! is pgmux's own PID.
	"${AS_USER[@]}" "$PGMUX" "$WORK/pgmux/pgmux.ini" >>"$WORK/pgmux/stderr" 2>&1 &
	MUX_PID=$!
	check_comm "$MUX_PID" pgmux
	local sslmode=disable
	[ "$1" = tls ] && sslmode=require
	wait_ready "$MUXPORT" "$MUX_PID" pgmux "$sslmode"
}
start_pgbouncer() {
	write_pgb_conf "$1"
	[ "$RUN_USER" = "$(id -un)" ] || chown "$RUN_USER" "$WORK/pgb/pgbouncer.ini"
	"${AS_USER[@]}" "$PGBOUNCER" "$WORK/pgb/pgbouncer.ini" >>"$WORK/pgb/stderr" 2>&1 &
	PGB_PID=$!
	check_comm "$PGB_PID" pgbouncer
	local sslmode=disable
	[ "$1" = tls ] && sslmode=require
	wait_ready "$PGBPORT" "$PGB_PID" PgBouncer "$sslmode"
}
stop_pgmux() { stop_pid "$MUX_PID"; MUX_PID=; }
# The baseline binary (PGMUX_BASE_BIN): the same configuration on its own port and log.
start_base() {
	[ -n "${PGMUX_BASE_BIN:-}" ] || return 0
	write_pgmux_conf "$1" "$BASEPORT" "$WORK/pgmux/base.ini" "$WORK/pgmux/base.log" "$PGMUX_BASE_WORKERS"
	[ "$RUN_USER" = "$(id -un)" ] || chown "$RUN_USER" "$WORK/pgmux/base.ini"
	"${AS_USER[@]}" "$PGMUX_BASE_BIN" "$WORK/pgmux/base.ini" >>"$WORK/pgmux/base.stderr" 2>&1 &
	BASE_PID=$!
	check_comm "$BASE_PID" pgmux
	local sslmode=disable
	[ "$1" = tls ] && sslmode=require
	wait_ready "$BASEPORT" "$BASE_PID" "pgmux (base)" "$sslmode"
}
stop_base() { [ -z "$BASE_PID" ] || stop_pid "$BASE_PID"; BASE_PID=; }
# The plain relay (RELAY=1): HAProxy in TCP mode with one thread, every client
# relayed to its own PostgreSQL connection; logins go through to PostgreSQL.
start_relay() {
	[ "$RELAY" = 1 ] || return 0
	cat >"$WORK/relay/haproxy.cfg" <<EOF
global
	nbthread 1
	maxconn 4096
defaults
	mode tcp
	timeout connect 10s
	timeout client 1h
	timeout server 1h
frontend bench
	bind 127.0.0.1:$RELAYPORT
	default_backend postgres
backend postgres
	server pg 127.0.0.1:$PGPORT
EOF
	[ "$RUN_USER" = "$(id -un)" ] || chown -R "$RUN_USER" "$WORK/relay"
	# -db: stay in the foreground, one process, so that $! is the relay itself.
	"${AS_USER[@]}" "$HAPROXY" -db -f "$WORK/relay/haproxy.cfg" >>"$WORK/relay/stderr" 2>&1 &
	RELAY_PID=$!
	check_comm "$RELAY_PID" haproxy
	wait_ready "$RELAYPORT" "$RELAY_PID" HAProxy disable
}
stop_relay() { [ -z "$RELAY_PID" ] || stop_pid "$RELAY_PID"; RELAY_PID=; }
stop_pgbouncer() { stop_pid "$PGB_PID"; PGB_PID=; }
start_poolers() { start_pgmux "$1"; start_pgbouncer "$1"; }
stop_poolers() { stop_pgmux; stop_pgbouncer; }

port_of() { case $1 in pgmux) echo "$MUXPORT" ;; base) echo "$BASEPORT" ;; pgbouncer) echo "$PGBPORT" ;; relay) echo "$RELAYPORT" ;; direct) echo "$PGPORT" ;; esac; }
pid_of() { case $1 in pgmux) echo "$MUX_PID" ;; base) echo "$BASE_PID" ;; pgbouncer) echo "$PGB_PID" ;; relay) echo "$RELAY_PID" ;; *) echo "" ;; esac; }
name_of() { case $1 in pgmux) echo pgmux ;; base) echo "pgmux (base)" ;; pgbouncer) echo PgBouncer ;; relay) echo "HAProxy (relay)" ;; direct) echo direct ;; esac; }

# utime + stime of every thread of a process, in clock ticks (/proc/PID/stat
# fields 14 and 15; the fields are counted after the parenthesised command name).
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# Times the process's threads went to sleep (voluntary context switches), all threads.
sleeps() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches:/ { n += $2 } END { print n + 0 }'; }

# ------------------------------------------------------------ results store
declare -A V=()   # key -> space-separated values, one per round
declare -A NOTE=()
add() { V[$1]="${V[$1]:-} $2"; }
note() { NOTE[$1]="${NOTE[$1]:+${NOTE[$1]}; }$2"; }
median() {
	tr ' ' '\n' | awk 'NF { a[++n] = $1 } END {
		if (n == 0) exit
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		if (n % 2) printf "%.6g\n", a[(n + 1) / 2]; else printf "%.6g\n", (a[n / 2] + a[n / 2 + 1]) / 2 }'
}
med() { printf '%s' "${V[$1]:-}" | median; }

# ------------------------------------------------------------ one pgbench run
# run_pgbench TARGET SSLMODE TAG PGBENCH-ARGS...
# Sets R_TPS, R_LAT_US, R_TXNS, R_CPU_US (pooler CPU per transaction, empty
# for direct), R_RC (pgbench's exit status), R_ABORTED (clients that aborted),
# R_OUT (the output file), and with SYSCALLS=1 R_SYS[name] (the pooler's system
# calls per transaction: total, and each of SYSCALL_NAMES; empty for direct).
# perf stat counts the syscalls tracepoints of every thread of the pooler from
# before pgbench starts until after it ends (its logins included); counting
# costs the pooler a little CPU per call, alike for every target.
SYSCALL_NAMES="sendto recvfrom io_uring_enter epoll_ctl epoll_wait futex read write"
declare -A R_SYS=()
perf_start() { # pid file
	local ev="-e raw_syscalls:sys_enter" s i
	for s in $SYSCALL_NAMES; do ev+=" -e syscalls:sys_enter_$s"; done
	rm -f "$2"
	# shellcheck disable=SC2086 # $ev is a list of options
	"$PERF" stat -x, -o "$2" $ev -p "$1" >/dev/null 2>&1 &
	PERF_PID=$!
	# perf writes its header line once it is attached.
	for ((i = 0; i < 100; i++)); do [ -s "$2" ] && break; sleep 0.02; done
	sleep 0.1
}
perf_stop() { # file txns: fills R_SYS
	kill -INT "$PERF_PID" 2>/dev/null || true
	wait "$PERF_PID" 2>/dev/null || true
	PERF_PID=
	R_SYS=()
	local name v
	while read -r name v; do R_SYS[$name]=$v; done < <(awk -F, -v n="$2" '
		$3 == "raw_syscalls:sys_enter" { printf "total %.3f\n", $1 / n }
		$3 ~ /^syscalls:sys_enter_/ { s = $3; sub(/^syscalls:sys_enter_/, "", s); printf "%s %.3f\n", s, $1 / n }' "$1")
}
run_pgbench() {
	local target=$1 sslmode=$2 tag=$3
	shift 3
	local port pid out err t0='' t1='' v0='' v1=''
	port=$(port_of "$target")
	pid=$(pid_of "$target")
	out=$WORK/out/$tag-$target.out
	err=$WORK/out/$tag-$target.err
	if [ -n "$pid" ]; then
		alive "$pid" || die "$(name_of "$target") (pid $pid) is not running before $tag"
		[ -z "$PERF" ] || perf_start "$pid" "$WORK/out/$tag-$target.perf"
		t0=$(cpu_ticks "$pid")
		v0=$(sleeps "$pid")
	fi
	R_RC=0
	PGSSLMODE=$sslmode "$PGBENCH" -n -h 127.0.0.1 -p "$port" -U bench "$@" bench >"$out" 2>"$err" || R_RC=$?
	if [ -n "$pid" ]; then
		alive "$pid" || die "$(name_of "$target") (pid $pid) died during $tag; see $WORK"
		t1=$(cpu_ticks "$pid")
		v1=$(sleeps "$pid")
	fi
	R_SYS=()
	R_OUT=$out
	R_TPS=$(awk '/^tps = / { print $3; exit }' "$out")
	R_LAT_US=$(awk '/^latency average = / { printf "%.1f", $4 * 1000; exit }' "$out")
	R_TXNS=$(awk -F': *' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$out")
	R_ABORTED=$(grep -c 'client [0-9]* .*aborted' "$err" || true)
	R_CPU_US=
	R_SLEEPS=
	if [ -n "$pid" ] && [ -n "$R_TXNS" ] && [ "$R_TXNS" -gt 0 ]; then
		R_CPU_US=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" -v n="$R_TXNS" 'BEGIN { printf "%.2f", (b - a) / hz * 1e6 / n }')
		R_SLEEPS=$(awk -v a="$v0" -v b="$v1" -v n="$R_TXNS" 'BEGIN { printf "%.3f", (b - a) / n }')
		[ -z "$PERF" ] || perf_stop "$WORK/out/$tag-$target.perf" "$R_TXNS"
	elif [ -n "$PERF_PID" ]; then
		kill -INT "$PERF_PID" 2>/dev/null || true
		wait "$PERF_PID" 2>/dev/null || true
		PERF_PID=
	fi
	if [ -z "$R_TPS" ]; then
		if [ "$R_RC" -eq 0 ]; then
			die "could not read pgbench's tps for $tag $target; see $out"
		fi
		R_TPS=0
	fi
	if [ "$R_RC" -ne 0 ] && [ "$R_ABORTED" -eq 0 ]; then
		log "pgbench exited with status $R_RC for $tag $(name_of "$target"):"
		tail -n 5 "$err" >&2
	fi
	local msg
	msg="$tag $(name_of "$target"): $R_TPS tps"
	[ -n "$R_LAT_US" ] && msg+=", latency $R_LAT_US us"
	[ -n "$R_CPU_US" ] && msg+=", pooler CPU $R_CPU_US us/txn"
	[ -n "${R_SYS[total]:-}" ] && msg+=", ${R_SYS[total]} syscalls/txn"
	[ "$R_RC" -ne 0 ] && msg+=", pgbench exit status $R_RC, $R_ABORTED clients aborted"
	log "$msg"
}

# add_syscalls SCENARIO TARGET: keep the last run's system calls per transaction.
add_syscalls() {
	local n
	for n in total $SYSCALL_NAMES; do
		[ -z "${R_SYS[$n]:-}" ] || add "$1.sys.$n.$2" "${R_SYS[$n]}"
	done
}

# ------------------------------------------------------------ machine description
MACHINE_CPUS=$(nproc)
MACHINE_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MACHINE_KERNEL=$(uname -sr)
MACHINE_MEM=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
PG_VERSION=$(psql_admin -d postgres -Atc 'select version()' | sed 's/ on .*//')
PGB_VERSION=$("$PGBOUNCER" --version 2>/dev/null | head -n 1)
PGMUX_COMMIT=unknown
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
	PGMUX_COMMIT=$(git -C "$REPO" rev-parse --short HEAD)
	if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no -- src 2>/dev/null)" ]; then
		PGMUX_COMMIT+=" (with uncommitted changes in src/)"
	fi
fi
PGMUX_COMMIT=${PGMUX_COMMIT_OVERRIDE:-$PGMUX_COMMIT}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
DATE_START=$(date -u '+%Y-%m-%d %H:%M UTC')
log "machine: $MACHINE_CPUS CPUs ($MACHINE_MODEL), $MACHINE_KERNEL; $PG_VERSION; $PGB_VERSION; pgmux $PGMUX_COMMIT ($PGMUX)"

if [ "$WARMUP" -gt 0 ]; then
	log "warm-up: ${WARMUP}s of pgbench -S, direct (not measured)"
	run_pgbench direct disable warmup -S -c 8 -j 2 -T "$WARMUP" >/dev/null 2>&1 || true
fi

TARGETS="pgmux pgbouncer direct"
# Scenarios 1 to 3 also run the plain relay (RELAY=1), 1, 2 and 4 the baseline
# binary, when there is one.
RELAY_TARGETS=$TARGETS
[ "$RELAY" = 1 ] && RELAY_TARGETS="pgmux pgbouncer relay direct"
BASE_TARGETS=$RELAY_TARGETS
if [ -n "${PGMUX_BASE_BIN:-}" ]; then
	[ -x "$PGMUX_BASE_BIN" ] || die "PGMUX_BASE_BIN=$PGMUX_BASE_BIN is not an executable file"
	BASE_TARGETS="pgmux base ${RELAY_TARGETS#pgmux }"
fi

# worker_spread_percent at work: clients pgmux moved between its workers, and
# how many take new clients at the end of the scenario; batch_sends at work:
# the sends made through io_uring and the system calls they took (SHOW STATS).
spread_note() {
	local moved
	moved=$("$PSQL" -X -At -F ' ' -h 127.0.0.1 -p "$MUXPORT" -U bench -d pgmux -c 'SHOW STATS' 2>/dev/null |
		awk '$1 == "clients_moved_between_workers" { m = $2 } $1 == "workers_taking_clients" { a = $2 }
		     $1 == "send_batches" { b = $2 } $1 == "batched_sends" { n = $2 }
		     END { if (m != "") printf "%d clients moved between workers; %d worker(s) taking clients at the end", m, a
		           if (b != "") printf "; batch_sends: %d sends in %d system calls (%.1f per call)", n, b, b ? n / b : 0 }' || true)
	note "$1.pgmux" "worker_spread_percent and batch_sends (SHOW STATS): ${moved:-not available (an older pgmux)}"
}

# ------------------------------------------------------------ scenario 1: pgbench -S, 32 clients
if want 1; then
	log "scenario 1: pgbench -S -c 32 -j 2 -T $DURATION, pool $POOL_SIZE"
	start_poolers plain
	start_base plain
	start_relay
	for ((r = 1; r <= ROUNDS; r++)); do
		for t in $BASE_TARGETS; do
			run_pgbench "$t" disable "s1-r$r" -S -c 32 -j 2 -T "$DURATION"
			add "s1.tps.$t" "$R_TPS"
			[ -n "$R_CPU_US" ] && add "s1.cpu.$t" "$R_CPU_US"
			[ -n "$R_SLEEPS" ] && add "s1.sleeps.$t" "$R_SLEEPS"
			add_syscalls s1 "$t"
			[ "$R_RC" -eq 0 ] || note "s1.$t" "round $r: pgbench exit $R_RC, $R_ABORTED clients aborted"
		done
	done
	# How often a backend moved between pgmux's two workers (all rounds, logins included).
	handoffs=$("$PSQL" -X -At -F ' ' -h 127.0.0.1 -p "$MUXPORT" -U bench -d pgmux -c 'SHOW STATS' 2>/dev/null |
		awk '$1 == "transactions" { t = $2 } $1 == "database_connection_handoffs" { h = $2 }
		     END { if (t > 0) printf "%d of %d transactions (%.2f per transaction)", h, t, h / t }' || true)
	note "s1.pgmux" "backends handed from one worker to the other (SHOW STATS): ${handoffs:-not available}"
	spread_note s1
	stop_poolers
	stop_base
	stop_relay
fi

# ------------------------------------------------------------ scenario 2: the same with -M prepared
if want 2; then
	log "scenario 2: pgbench -S -M prepared -c 32 -j 2 -T $DURATION, pool $POOL_SIZE"
	start_poolers plain
	start_base plain
	start_relay
	for ((r = 1; r <= ROUNDS; r++)); do
		for t in $BASE_TARGETS; do
			run_pgbench "$t" disable "s2-r$r" -S -M prepared -c 32 -j 2 -T "$DURATION"
			add "s2.tps.$t" "$R_TPS"
			add "s2.aborted.$t" "$R_ABORTED"
			[ -n "$R_CPU_US" ] && add "s2.cpu.$t" "$R_CPU_US"
			[ -n "$R_SLEEPS" ] && add "s2.sleeps.$t" "$R_SLEEPS"
			add_syscalls s2 "$t"
			if [ "$R_RC" -ne 0 ]; then
				first=$(grep -m1 'aborted' "$WORK/out/s2-r$r-$t.err" | sed 's/^pgbench: error: //' || true)
				note "s2.$t" "round $r: pgbench exit $R_RC, $R_ABORTED of 32 clients aborted, ${R_TXNS:-0} transactions done${first:+ (first error: $first)}"
			fi
		done
	done
	spread_note s2
	stop_poolers
	stop_base
	stop_relay
fi

# ------------------------------------------------------------ scenario 3: one client, latency
if want 3; then
	log "scenario 3: pgbench -S -c 1 -j 1 -T $DURATION: average latency"
	start_poolers plain
	start_relay
	for ((r = 1; r <= ROUNDS; r++)); do
		declare -A lat=()
		for t in $RELAY_TARGETS; do
			run_pgbench "$t" disable "s3-r$r" -S -c 1 -j 1 -T "$DURATION"
			[ -n "$R_LAT_US" ] || die "no latency average in $R_OUT"
			lat[$t]=$R_LAT_US
			add "s3.lat.$t" "$R_LAT_US"
			[ -n "$R_CPU_US" ] && add "s3.cpu.$t" "$R_CPU_US"
			add_syscalls s3 "$t"
		done
		for t in ${RELAY_TARGETS% direct}; do
			add "s3.added.$t" "$(awk -v a="${lat[$t]}" -v b="${lat[direct]}" 'BEGIN { printf "%.1f", a - b }')"
		done
		unset lat
	done
	stop_poolers
	stop_relay
fi

# ------------------------------------------------------------ scenario 4: connection per transaction, client TLS
if want 4; then
	log "scenario 4: pgbench -C -S -c 16 -j 2 -T $DURATION with client TLS (sslmode=require)"
	start_poolers tls
	start_base tls
	S4_TARGETS=$TARGETS
	[ -z "${PGMUX_BASE_BIN:-}" ] || S4_TARGETS="pgmux base ${TARGETS#pgmux }"
	for t in pgmux pgbouncer direct; do
		info=$(PGSSLMODE=require "$PSQL" -X -q "host=127.0.0.1 port=$(port_of "$t") user=bench dbname=bench" -c '\conninfo' 2>&1 | grep -o 'SSL connection.*' || true)
		note "s4.tls.$t" "${info:-no TLS information}"
	done
	for ((r = 1; r <= ROUNDS; r++)); do
		for t in $S4_TARGETS; do
			run_pgbench "$t" require "s4-r$r" -C -S -c 16 -j 2 -T "$DURATION"
			add "s4.tps.$t" "$R_TPS"
			[ -n "$R_CPU_US" ] && add "s4.cpu.$t" "$R_CPU_US"
			[ "$R_RC" -eq 0 ] || note "s4.$t" "round $r: pgbench exit $R_RC, $R_ABORTED clients aborted"
		done
	done
	spread_note s4
	stop_poolers
	stop_base
fi

# ------------------------------------------------------------ scenario 5: idle clients, resident memory
if want 5; then
	log "scenario 5: $IDLE_CLIENTS idle plaintext clients (SCRAM login each): resident memory per client"
	IDLE_BIN=$WORK/idle_clients
	# shellcheck disable=SC2046 # pkg-config's output is meant to be split into words
	cc -std=c11 -O2 -Wall -o "$IDLE_BIN" "$HERE/idle_clients.c" $(pkg-config --cflags --libs libpq) ||
		die "could not compile $HERE/idle_clients.c"
	for ((r = 1; r <= ROUNDS; r++)); do
		for t in pgmux pgbouncer; do
			# A fresh pooler for every measurement: memory freed by a previous
			# round's clients would otherwise be reused and hide the growth.
			"start_$t" plain
			pid=$(pid_of "$t")
			before=$(rss_kb "$pid")
			err=$WORK/out/s5-r$r-$t.err
			coproc IDLE { exec "$IDLE_BIN" 127.0.0.1 "$(port_of "$t")" bench bench "$IDLE_CLIENTS" 64 600 2>"$err"; }
			HELPER_PID=$IDLE_PID
			HELPER_OUT=${IDLE[0]}
			HELPER_IN=${IDLE[1]}
			line=
			if ! read -r -t 900 line <&"$HELPER_OUT" || [[ $line != ready* ]]; then
				cat "$err" >&2
				die "the idle-clients helper did not get $IDLE_CLIENTS connections through $(name_of "$t")"
			fi
			alive "$pid" || die "$(name_of "$t") died with $IDLE_CLIENTS clients connected"
			after=$(rss_kb "$pid")
			backends=$(psql_admin -d postgres -Atc "select count(*) from pg_stat_activity where usename = 'bench' and backend_type = 'client backend'")
			secs=$(awk '{ print $5 }' <<<"$line")
			per=$(awk -v a="$before" -v b="$after" -v n="$IDLE_CLIENTS" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
			log "s5-r$r $(name_of "$t"): VmRSS $before kB -> $after kB: $per bytes per idle client; $backends server connections (bench) held; logins took $secs s"
			add "s5.rss.$t" "$per"
			add "s5.backends.$t" "$backends"
			add "s5.login.$t" "$secs"
			eval "exec $HELPER_IN>&- $HELPER_OUT<&-"
			HELPER_IN=
			helper_rc=0
			wait "$HELPER_PID" || helper_rc=$?
			[ "$helper_rc" -eq 0 ] || [ "$helper_rc" -eq 127 ] ||
				die "the idle-clients helper failed (status $helper_rc) while closing its connections; see $err"
			HELPER_PID=
			"stop_$t"
		done
	done
fi

# ------------------------------------------------------------ scenario 6: TPC-B, 64 clients
if want 6; then
	log "scenario 6: pgbench (TPC-B) -c 64 -j 2 -T $DURATION, pool $POOL_SIZE"
	start_poolers plain
	for ((r = 1; r <= ROUNDS; r++)); do
		for t in $TARGETS; do
			psql_admin -d postgres -c checkpoint >/dev/null
			run_pgbench "$t" disable "s6-r$r" -c 64 -j 2 -T "$DURATION"
			add "s6.tps.$t" "$R_TPS"
			[ -n "$R_CPU_US" ] && add "s6.cpu.$t" "$R_CPU_US"
			[ "$R_RC" -eq 0 ] || note "s6.$t" "round $r: pgbench exit $R_RC, $R_ABORTED clients aborted"
		done
	done
	stop_poolers
fi

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------ the table
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f\n", a / b }'
}
fmt() {
	local v=$1 f=$2
	if [ -z "$v" ]; then echo "-"; else awk -v v="$v" -v f="$f" 'BEGIN { printf f "\n", v }'; fi
}
rows=()
row() { # label key format [no-direct-ratio]
	local label=$1 key=$2 f=$3 m b d
	local a
	local h
	m=$(med "$key.pgmux"); b=$(med "$key.pgbouncer"); d=$(med "$key.direct"); a=$(med "$key.base")
	h=$(med "$key.relay")
	[ -n "$m$b$d" ] || return 0
	rows+=("$(printf '%-46s %12s %12s %12s %12s %10s %10s %10s' "$label" "$(fmt "$m" "$f")" "$(fmt "$b" "$f")" \
		"$(fmt "$h" "$f")" "$(fmt "$d" "$f")" "$(ratio "$m" "$b")" "$(ratio "$m" "$h")" "$(ratio "$m" "$d")")$(
		[ -z "${PGMUX_BASE_BIN:-}" ] || printf ' %12s %10s' "$(fmt "$a" "$f")" "$(ratio "$m" "$a")")")
}
row "1. -S c32: tps"                          s1.tps  "%.0f"
row "1. -S c32: pooler CPU us/txn"            s1.cpu  "%.2f"
row "1. -S c32: pooler sleeps/txn"             s1.sleeps "%.3f"
sysrows() { # scenario label
	local n
	row "$2: syscalls/txn" "$1.sys.total" "%.2f"
	for n in $SYSCALL_NAMES; do row "$2:   $n/txn" "$1.sys.$n" "%.2f"; done
}
sysrows s1 "1. -S c32"
row "2. -S -M prepared c32: tps"              s2.tps  "%.0f"
row "2. -S -M prepared c32: aborted clients"  s2.aborted "%.0f"
row "2. -S -M prepared c32: pooler CPU us/txn" s2.cpu "%.2f"
row "2. -S -M prepared c32: pooler sleeps/txn" s2.sleeps "%.3f"
sysrows s2 "2. -M prepared c32"
row "3. -S c1: latency average us"            s3.lat  "%.1f"
row "3. -S c1: added latency over direct us"  s3.added "%.1f"
row "3. -S c1: pooler CPU us/txn"             s3.cpu  "%.2f"
sysrows s3 "3. -S c1"
row "4. -C -S c16 TLS: tps"                   s4.tps  "%.0f"
row "4. -C -S c16 TLS: pooler CPU us/txn"     s4.cpu  "%.2f"
row "5. $IDLE_CLIENTS idle clients: RSS bytes/client" s5.rss "%.0f"
row "5. idle: server connections held"        s5.backends "%.0f"
row "5. idle: seconds to log in all clients"  s5.login "%.1f"
row "6. TPC-B c64: tps"                       s6.tps  "%.0f"
row "6. TPC-B c64: pooler CPU us/txn"         s6.cpu  "%.2f"

# Targets from the brief.
targets=()
target() { # description value threshold op(ge|le)
	local desc=$1 v=$2 th=$3 op=$4 verdict
	if [ -z "$v" ] || [ "$v" = - ]; then verdict="not measured"
	elif awk -v v="$v" -v t="$th" -v op="$op" 'BEGIN { exit !((op == "ge") ? (v >= t) : (v <= t)) }'; then verdict=MET
	else verdict=MISSED; fi
	targets+=("$(printf '%-70s %-8s %-12s' "$desc" "$v" "$verdict")")
}
target "1. -S c32 tps, pgmux / PgBouncer >= 1.05" "$(ratio "$(med s1.tps.pgmux)" "$(med s1.tps.pgbouncer)")" 1.05 ge
target "1. -S c32 CPU per txn, pgmux / PgBouncer <= 0.95" "$(ratio "$(med s1.cpu.pgmux)" "$(med s1.cpu.pgbouncer)")" 0.95 le
target "1. -S c32 CPU per txn, pgmux / plain relay <= 1.0 (stretch)" "$(ratio "$(med s1.cpu.pgmux)" "$(med s1.cpu.relay)")" 1.0 le
target "1. -S c32 syscalls per txn, pgmux / PgBouncer < 1.0" "$(ratio "$(med s1.sys.total.pgmux)" "$(med s1.sys.total.pgbouncer)")" 0.999 le
target "2. -M prepared tps, pgmux / PgBouncer's -S simple tps >= 1.10" "$(ratio "$(med s2.tps.pgmux)" "$(med s1.tps.pgbouncer)")" 1.10 ge
target "3. one client, pgmux added latency over direct <= 15 us" "$(med s3.added.pgmux)" 15 le
target "4. -C TLS tps, pgmux / PgBouncer >= 1.0" "$(ratio "$(med s4.tps.pgmux)" "$(med s4.tps.pgbouncer)")" 1.0 ge
target "5. pgmux resident bytes per idle plaintext client <= 1024" "$(med s5.rss.pgmux)" 1024 le

pgmux_log_lines=$(cat "$WORK/pgmux/pgmux.log" "$WORK/pgmux/stderr" 2>/dev/null | wc -l)
pgb_warn_lines=$(cat "$WORK/pgb/pgbouncer.log" 2>/dev/null | grep -c -E ' (WARNING|ERROR|FATAL) ' || true)

{
	echo "pgmux vs PgBouncer vs PostgreSQL direct ($DATE_START)"
	echo "command:   $COMMAND_LINE"
	echo "machine:   $MACHINE_CPUS CPUs, $MACHINE_MODEL, $MACHINE_MEM RAM, $MACHINE_KERNEL"
	echo "software:  $PG_VERSION; $PGB_VERSION; pgmux $PGMUX_COMMIT ($PGMUX)"
	echo "setup:     pool $POOL_SIZE server connections, transaction pooling, SCRAM clients, no server TLS,"
	echo "           pgmux workers = $PGMUX_WORKERS; PostgreSQL fsync = off, shared_buffers = 128MB; everything on loopback"
	echo "load avg:  $LOAD_START at start, $LOAD_END at end (other processes on the machine add noise)"
	echo "medians of $ROUNDS interleaved rounds (pgmux, PgBouncer, relay, direct), $DURATION s per pgbench run"
	[ "$RELAY" = 1 ] && echo "relay:     $("$HAPROXY" -v 2>/dev/null | head -n 1), mode tcp, nbthread 1, one server connection per client (scenarios 1-3)"
	[ -n "$PERF" ] && echo "syscalls:  perf stat on raw_syscalls:sys_enter and syscalls:sys_enter_* (all threads), per pgbench transaction, logins included"
	echo
	printf '%-46s %12s %12s %12s %12s %10s %10s %10s' scenario pgmux PgBouncer relay direct mux/pgb mux/relay mux/direct
	[ -z "${PGMUX_BASE_BIN:-}" ] || printf ' %12s %10s' base mux/base
	echo
	[ -z "${PGMUX_BASE_BIN:-}" ] || echo "base:      $PGMUX_BASE_BIN${PGMUX_BASE_LABEL:+ ($PGMUX_BASE_LABEL)}, workers = $PGMUX_BASE_WORKERS"
	printf '%s\n' "${rows[@]}"
	echo
	printf '%-70s %-8s %-12s\n' "target" value verdict
	printf '%s\n' "${targets[@]}"
	echo
	echo "per-round values:"
	for k in $(printf '%s\n' "${!V[@]}" | sort -V); do printf '  %-22s %s\n' "$k" "${V[$k]# }"; done
	if [ "${#NOTE[@]}" -gt 0 ]; then
		echo
		echo "notes:"
		for k in $(printf '%s\n' "${!NOTE[@]}" | sort -V); do printf '  %s: %s\n' "$k" "${NOTE[$k]}"; done
	fi
	echo
	echo "pgmux log lines (log_level = warning): $pgmux_log_lines"
	if [ "$pgmux_log_lines" -gt 0 ]; then
		cat "$WORK/pgmux/pgmux.log" "$WORK/pgmux/stderr" 2>/dev/null | sed -E 's/^[^]]*\] //; s/[0-9]{4,}/#/g' |
			sort | uniq -c | sort -rn | head -n 8 | sed 's/^/  /'
	fi
	echo "PgBouncer WARNING/ERROR/FATAL log lines: $pgb_warn_lines"
	if [ "$pgb_warn_lines" -gt 0 ]; then
		grep -E ' (WARNING|ERROR|FATAL) ' "$WORK/pgb/pgbouncer.log" | sed -E 's/^[^]]*\] //; s/0x[0-9a-f]+/#/g; s/[0-9]{4,}/#/g' | sort | uniq -c | sort -rn | head -n 8 | sed 's/^/  /'
	fi
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
echo
cat "$RESULTS"
