#!/usr/bin/env bash
# bench/relay-cost.sh: instructions pgmux spends per transaction, counted by
# callgrind, for two pgmux binaries on the same workloads: what a change to the
# relay costs, independent of the machine's load (tps and CPU time on a shared
# 2-core machine vary by 20 % from round to round; instruction counts by a
# fraction of a percent).
#
#   bash bench/relay-cost.sh BASE_PGMUX NEW_PGMUX
#
# Workloads, each through transaction pooling with 4 backends and 8 clients
# (trust on both sides, no TLS, so that login and TLS costs stay out):
#   -S          pgbench -S, simple protocol
#   -S prepared pgbench -S -M prepared
#   tpcb prep.  pgbench's TPC-B (writes, multi-statement transactions), -M prepared
# Each is run twice, with T1 and T2 transactions per client; the difference of
# the two totals over the difference of the transaction counts is the cost of
# one transaction, start-up and connection set-up cancelled out.
#
# Environment: T1=50 T2=250 (transactions per client), WORKLOADS="-S -S tpcb"
# (the labels' first words: "-S" runs both -S workloads), PGBIN (PostgreSQL
# server binaries, default /usr/lib/postgresql/15/bin), KEEP=1 (keep the
# scratch directory with callgrind's profiles, cg.*.out, for callgrind_annotate).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bash bench/relay-cost.sh BASE_PGMUX NEW_PGMUX" >&2; exit 2; }
BASE_BIN=$(realpath "$1")
NEW_BIN=$(realpath "$2")
T1=${T1:-50}
T2=${T2:-250}
WORKLOADS=${WORKLOADS:--S tpcb}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
command -v valgrind >/dev/null || { echo "relay-cost: valgrind not found" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "relay-cost: pgbench not found" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/relay-cost.XXXXXX")
chmod 755 "$WORK"
PG_STARTED=
MUX_PID=
AS_USER=()
[ "$(id -u)" -eq 0 ] && AS_USER=(runuser -u postgres --)

cleanup() {
	[ -z "$MUX_PID" ] || { kill "$MUX_PID" 2>/dev/null; wait "$MUX_PID" 2>/dev/null || true; }
	[ -z "$PG_STARTED" ] || "${AS_USER[@]}" "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
	[ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

alive() { kill -0 "$1" 2>/dev/null; }

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PGPORT=$(free_port)
MUXPORT=$(free_port)
mkdir -p "$WORK/pgdata" "$WORK/sock"
[ "$(id -u)" -eq 0 ] && chown postgres "$WORK" "$WORK/pgdata" "$WORK/sock"
"${AS_USER[@]}" "$PGBIN/initdb" -D "$WORK/pgdata" -U postgres --auth=trust >"$WORK/initdb.log" 2>&1 ||
	{ cat "$WORK/initdb.log" >&2; exit 1; }
"${AS_USER[@]}" "$PGBIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w start \
	-o "-p $PGPORT -k $WORK/sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" >/dev/null
PG_STARTED=1
pgbench -i -q -s 1 -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >"$WORK/init.log" 2>&1 ||
	{ cat "$WORK/init.log" >&2; exit 1; }

mkdir -p "$WORK/secrets"
chmod 700 "$WORK/secrets"
printf '{"username": "postgres", "password": "unused", "engine": "postgres"}\n' >"$WORK/secrets/postgres.json"
chmod 600 "$WORK/secrets/postgres.json"
cat >"$WORK/pgmux.ini" <<EOF
[pgmux]
listen_addr = 127.0.0.1
listen_port = $MUXPORT
workers = 2
client_auth = trust
secrets_dir = $WORK/secrets
logfile = $WORK/pgmux.log
log_level = warning

[target]
hosts = 127.0.0.1:$PGPORT
server_tls = disable
health_check_interval = 60s

[pool]
pool_mode = transaction
max_connections = 4
max_idle_connections_percent = 100
EOF

# cost BIN PGBENCH_ARGS...: instructions for T1 and T2 transactions per client
run_once() { # BIN TXNS ARGS... -> prints callgrind's total
	local bin=$1 txns=$2 out
	shift 2
	out="$WORK/cg.$RANDOM"
	valgrind --tool=callgrind --callgrind-out-file="$out.out" --log-file="$out.log" \
		"$bin" "$WORK/pgmux.ini" >/dev/null 2>&1 &
	MUX_PID=$!
	for _ in $(seq 1 300); do
		alive "$MUX_PID" || { echo "relay-cost: pgmux exited; see $WORK/pgmux.log and $out.log" >&2; exit 1; }
		psql -X -q -h 127.0.0.1 -p "$MUXPORT" -U postgres -c 'select 1' postgres >/dev/null 2>&1 && break
		sleep 0.1
	done
	pgbench -n -c 8 -j 2 -t "$txns" -h 127.0.0.1 -p "$MUXPORT" -U postgres "$@" postgres >"$out.pgbench" 2>&1 ||
		{ cat "$out.pgbench" >&2; exit 1; }
	grep -q "number of failed transactions: 0" "$out.pgbench" ||
		! grep -q "number of failed transactions" "$out.pgbench" || { cat "$out.pgbench" >&2; exit 1; }
	kill -INT "$MUX_PID"
	wait "$MUX_PID" || true
	MUX_PID=
	sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out.log"
}

cost() { # BIN ARGS... -> instructions per transaction
	local bin=$1 a b
	shift
	a=$(run_once "$bin" "$T1" "$@")
	b=$(run_once "$bin" "$T2" "$@")
	awk -v a="$a" -v b="$b" -v n=$(((T2 - T1) * 8)) 'BEGIN { printf "%.0f", (b - a) / n }'
}

printf 'pgmux instructions per transaction (callgrind; 8 clients, 4 backends, transaction pooling)\n'
printf 'base: %s\nnew:  %s\n\n' "$BASE_BIN" "$NEW_BIN"
printf '%-22s %12s %12s %8s\n' workload base new new/base
for w in "-S|-S -M simple" "-S prepared|-S -M prepared" "tpcb prepared|-M prepared"; do
	label=${w%%|*}
	[[ " $WORKLOADS " == *" ${label%% *} "* ]] || continue
	# shellcheck disable=SC2086
	base=$(cost "$BASE_BIN" ${w#*|})
	# shellcheck disable=SC2086
	new=$(cost "$NEW_BIN" ${w#*|})
	awk -v l="$label" -v b="$base" -v n="$new" 'BEGIN { printf "%-22s %12d %12d %8.3f\n", l, b, n, n / b }'
done
