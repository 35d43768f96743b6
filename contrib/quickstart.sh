#!/usr/bin/env bash
# quickstart.sh: a one-command demo of pgmux on a Debian 12 machine.
#
#   sudo bash contrib/quickstart.sh          (from the repository's top directory)
#
# It installs whatever build dependencies are missing, builds pgmux, starts a
# throw-away PostgreSQL 15 in a new temporary directory with a role "app",
# puts pgmux (TLS required, SCRAM, transaction pooling) in front of it, and runs
# psql through pgmux to show the session. Both servers are left running for
# you to try; the stop.sh it writes into the temporary directory stops them
# and removes the directory. With --stop (or QUICKSTART_STOP=1) everything
# is stopped and removed before the script ends.
#
# As root, PostgreSQL and pgmux run as the "postgres" user. Each run makes a
# new directory on new free ports, so running it again is harmless.
set -euo pipefail

usage() {
	cat <<-'EOF'
		usage: sudo bash contrib/quickstart.sh [--stop]
		  --stop   stop pgmux and PostgreSQL and remove the demo directory at the end
		           (the same as QUICKSTART_STOP=1)
	EOF
}

STOP_AT_END=${QUICKSTART_STOP:-0}
for arg in "$@"; do
	case "$arg" in
	--stop) STOP_AT_END=1 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done
[ "$STOP_AT_END" = 1 ] || STOP_AT_END=0

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$TOP"
[ -f configure.ac ] && [ -f src/main.c ] || { echo "quickstart: $TOP is not the pgmux source tree" >&2; exit 1; }

if [ -t 1 ]; then BOLD=$(printf '\033[1m'); PLAIN=$(printf '\033[0m'); else BOLD=; PLAIN=; fi
step() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$PLAIN"; }
die() { printf 'quickstart: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------ packages
PACKAGES=(
	build-essential autoconf automake libtool pkg-config
	libevent-dev libssl-dev libpq-dev libinih-dev libjansson-dev libcurl4-openssl-dev liburing-dev
	postgresql-15 postgresql-contrib postgresql-client-15
	openssl perl ca-certificates procps util-linux
)
missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	step "Installing ${missing[*]}"
	[ "$(id -u)" -eq 0 ] || die "these packages are missing: ${missing[*]}; run me with sudo"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q </dev/null
	apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
	step "All build dependencies are installed"
fi

PGBIN=/usr/lib/postgresql/15/bin
[ -x "$PGBIN/initdb" ] || die "$PGBIN/initdb not found; is postgresql-15 installed?"

# ------------------------------------------------------------ build
step "Building pgmux"
if [ ! -x configure ]; then
	autoreconf -fi
fi
if [ ! -f Makefile ]; then
	./configure --quiet
fi
make -s -j"$(nproc)" pgmux
"$TOP/pgmux" -V

# ------------------------------------------------------------ who runs what
if [ "$(id -u)" -eq 0 ]; then
	id postgres >/dev/null 2>&1 || die "there is no 'postgres' user (it comes with postgresql-15)"
	RUN_AS=postgres
	as_user() { runuser -u postgres -- "$@"; }
else
	RUN_AS=$(id -un)
	as_user() { "$@"; }
fi

# A free loopback TCP port: bind port 0 and ask the kernel which it chose.
free_port() {
	perl -MSocket -e 'socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
		bind($s, pack_sockaddr_in(0, inet_aton("127.0.0.1"))) or die "bind: $!";
		my ($p) = unpack_sockaddr_in(getsockname($s)); print "$p\n";'
}

# ------------------------------------------------------------ demo directory
DIR=$(mktemp -d "${TMPDIR:-/tmp}/pgmux-quickstart.XXXXXX")
DIR=$(cd "$DIR" && pwd -P)
chmod 755 "$DIR"
PGDATA_DIR=$DIR/pgdata
SOCKDIR=$DIR/pgsock
PGMUX_DIR=$DIR/pgmux
SECRETS=$PGMUX_DIR/secrets
mkdir -p "$PGDATA_DIR" "$SOCKDIR" "$PGMUX_DIR" "$SECRETS" "$DIR/bin"
chmod 700 "$PGDATA_DIR" "$PGMUX_DIR" "$SECRETS"
# The user running the servers may not be able to reach the source tree.
cp "$TOP/pgmux" "$DIR/bin/pgmux"
chmod 755 "$DIR/bin/pgmux"
PGMUX_BIN=$DIR/bin/pgmux

# Until the demo is up, any failure stops what was started and removes $DIR.
READY=0
on_exit() {
	status=$?
	if [ "$READY" -eq 0 ] && [ -x "$DIR/stop.sh" ]; then
		echo "quickstart: failed (status $status); cleaning up" >&2
		for f in "$PGMUX_DIR/pgmux.log" "$DIR/postgres.log"; do
			[ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 20 "$f" >&2; }
		done
		bash "$DIR/stop.sh" >&2 || true
	elif [ "$READY" -eq 0 ]; then
		rm -rf "$DIR"
	fi
	exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PGPORT=$(free_port)
PGMUX_PORT=$(free_port)
while [ "$PGMUX_PORT" = "$PGPORT" ]; do PGMUX_PORT=$(free_port); done
METRICS_PORT=$(free_port)
while [ "$METRICS_PORT" = "$PGPORT" ] || [ "$METRICS_PORT" = "$PGMUX_PORT" ]; do METRICS_PORT=$(free_port); done
SUPERPASS=$(openssl rand -hex 16)
APPPASS=$(openssl rand -hex 12)

# stop.sh first, so that a failure below can use it too. It stops pgmux and
# PostgreSQL by the PIDs in their pid files, then removes the directory.
cat >"$DIR/stop.sh" <<EOF
#!/usr/bin/env bash
# Stops the pgmux quick-start demo in $DIR and removes the directory.
set -u
cd /
DIR='$DIR'
# Running, and not a zombie waiting for its parent to reap it.
alive() { kill -0 "\$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/\$1/status" 2>/dev/null; }
wait_gone() { for _ in \$(seq 1 100); do alive "\$1" || return 0; sleep 0.1; done; return 1; }
pid=\$(cat "\$DIR/pgmux/pgmux.pid" 2>/dev/null || true)
if [ -n "\$pid" ] && alive "\$pid" && [ "\$(readlink /proc/\$pid/exe 2>/dev/null)" = "\$DIR/bin/pgmux" ]; then
	echo "stopping pgmux (pid \$pid)"
	kill -TERM "\$pid"
	wait_gone "\$pid" || kill -KILL "\$pid" 2>/dev/null
fi
pid=\$(head -n 1 "\$DIR/pgdata/postmaster.pid" 2>/dev/null || true)
if [ -n "\$pid" ] && alive "\$pid"; then
	echo "stopping PostgreSQL (pid \$pid)"
	kill -INT "\$pid" # PostgreSQL's fast shutdown
	wait_gone "\$pid" || kill -KILL "\$pid" 2>/dev/null
	wait_gone "\$pid" || true
fi
rm -rf "\$DIR"
echo "removed \$DIR"
EOF
chmod 755 "$DIR/stop.sh"

# ------------------------------------------------------------ TLS certificate
step "Creating a self-signed TLS certificate for pgmux"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 \
	-keyout "$PGMUX_DIR/server.key" -out "$PGMUX_DIR/server.crt" \
	-subj "/CN=localhost" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" 2>/dev/null ||
	die "openssl could not create the certificate"
chmod 600 "$PGMUX_DIR/server.key"
echo "$PGMUX_DIR/server.crt"

# ------------------------------------------------------------ PostgreSQL
step "Starting PostgreSQL 15 on 127.0.0.1:$PGPORT (data in $PGDATA_DIR)"
printf '%s\n' "$SUPERPASS" >"$DIR/pwfile"
chmod 600 "$DIR/pwfile"
touch "$DIR/postgres.log"
if [ "$RUN_AS" != "$(id -un)" ]; then
	chown -R "$RUN_AS" "$DIR/pwfile" "$DIR/postgres.log" "$PGDATA_DIR" "$SOCKDIR"
fi
as_user "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --pwfile="$DIR/pwfile" \
	--auth=scram-sha-256 -E UTF8 --locale=C >"$DIR/initdb.log" 2>&1 ||
	{ cat "$DIR/initdb.log" >&2; die "initdb failed"; }
rm -f "$DIR/pwfile"
# PostgreSQL uses pgmux's certificate too, so pgmux's own connections use TLS.
cp "$PGMUX_DIR/server.crt" "$PGMUX_DIR/server.key" "$PGDATA_DIR/"
[ "$RUN_AS" = "$(id -un)" ] || chown "$RUN_AS" "$PGDATA_DIR/server.crt" "$PGDATA_DIR/server.key"
cat >>"$PGDATA_DIR/postgresql.conf" <<EOF

# ---- pgmux quick start
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$SOCKDIR'
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
EOF
as_user "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$DIR/postgres.log" -w -t 60 start >/dev/null ||
	die "PostgreSQL did not start"
PG_PID=$(head -n 1 "$PGDATA_DIR/postmaster.pid")
echo "PostgreSQL pid $PG_PID"

PGPASSWORD=$SUPERPASS "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$PGPORT" \
	-U postgres -d postgres -c "CREATE ROLE app LOGIN PASSWORD '$APPPASS'" >/dev/null ||
	die "cannot create the role app"
echo "created role app"

# ------------------------------------------------------------ pgmux
step "Starting pgmux on 127.0.0.1:$PGMUX_PORT"
cat >"$SECRETS/app.json" <<EOF
{"username": "app", "password": "$APPPASS", "engine": "postgres", "host": "127.0.0.1", "port": $PGPORT, "dbname": "postgres"}
EOF
chmod 600 "$SECRETS/app.json"
cat >"$PGMUX_DIR/pgmux.ini" <<EOF
; pgmux quick-start configuration (contrib/quickstart.sh); see pgmux.ini(5).
[pgmux]
listen_addr = 127.0.0.1
listen_port = $PGMUX_PORT
metrics_port = $METRICS_PORT
client_tls_cert_file = $PGMUX_DIR/server.crt
client_tls_key_file = $PGMUX_DIR/server.key
require_tls = true
client_auth = scram-sha-256
secrets_dir = $SECRETS
logfile = $PGMUX_DIR/pgmux.log
log_level = info
pidfile = $PGMUX_DIR/pgmux.pid

[target]
hosts = 127.0.0.1:$PGPORT
server_tls = require

[pool]
pool_mode = transaction
max_connections = 20
EOF
touch "$PGMUX_DIR/pgmux.log"
[ "$RUN_AS" = "$(id -un)" ] || chown -R "$RUN_AS" "$PGMUX_DIR"

# -d: pgmux checks the file, detaches and writes its pid file.
as_user "$PGMUX_BIN" -d "$PGMUX_DIR/pgmux.ini" || die "pgmux refused to start (see above)"
# pg_isready counts any answer, even the refused login it provokes, as up.
PGMUX_PID=
up=0
for _ in $(seq 1 300); do
	if [ -z "$PGMUX_PID" ] && [ -s "$PGMUX_DIR/pgmux.pid" ]; then
		PGMUX_PID=$(cat "$PGMUX_DIR/pgmux.pid")
	fi
	if [ -n "$PGMUX_PID" ]; then
		kill -0 "$PGMUX_PID" 2>/dev/null || die "pgmux (pid $PGMUX_PID) exited"
		if "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGMUX_PORT" -t 1; then
			up=1
			break
		fi
	fi
	sleep 0.1
done
[ "$up" -eq 1 ] || die "pgmux did not accept connections within 30 seconds"
echo "pgmux pid $PGMUX_PID is accepting connections"

# ------------------------------------------------------------ the demo
CONNSTR="host=127.0.0.1 port=$PGMUX_PORT sslmode=require user=app dbname=postgres"
QUERY="select current_user, inet_server_port() as backend_port, ssl as backend_tls, version as backend_tls_version from pg_stat_ssl where pid = pg_backend_pid()"

step "A psql session through pgmux"
printf '$ PGPASSWORD=%s psql "%s" \\\n    -c '"'"'\\conninfo'"'"' \\\n    -c "%s"\n' "$APPPASS" "$CONNSTR" "$QUERY"
PGPASSWORD=$APPPASS "$PGBIN/psql" -X "$CONNSTR" -c '\conninfo' -c "$QUERY"
cat <<EOF
("SSL connection" is psql's TLS session with pgmux; backend_port $PGPORT and
backend_tls show that pgmux reached PostgreSQL, itself over TLS.)
EOF

step "A client without TLS is refused (require_tls = true)"
printf '$ psql "host=127.0.0.1 port=%s sslmode=disable user=app dbname=postgres" -c "select 1"\n' "$PGMUX_PORT"
if PGPASSWORD=$APPPASS PGCONNECT_TIMEOUT=10 "$PGBIN/psql" -X \
	"host=127.0.0.1 port=$PGMUX_PORT sslmode=disable user=app dbname=postgres" -c "select 1" 2>&1; then
	die "a plaintext client got in although require_tls = true"
fi

step "Prometheus metrics (metrics_port = $METRICS_PORT)"
printf '$ curl -s http://127.0.0.1:%s/metrics | grep -E %s\n' "$METRICS_PORT" "'^pgmux_(transactions_total|client_connections_received_total|target_up)'"
# bash's /dev/tcp, so that the demo needs no curl.
exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT" || die "nothing listens on metrics_port $METRICS_PORT"
printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
grep -E '^pgmux_(transactions_total|client_connections_received_total|target_up)' <&3 || die "no metrics from pgmux"
exec 3<&-

READY=1
if [ "$STOP_AT_END" = 1 ]; then
	step "Stopping (--stop)"
	bash "$DIR/stop.sh"
	exit 0
fi

step "pgmux and PostgreSQL are running"
SUDO_HINT=
[ "$(id -u)" -eq 0 ] && SUDO_HINT="sudo "
cat <<EOF
Connect through pgmux yourself:
  PGPASSWORD=$APPPASS psql "$CONNSTR"

pgmux:       pid $PGMUX_PID, 127.0.0.1:$PGMUX_PORT, config $PGMUX_DIR/pgmux.ini
             metrics http://127.0.0.1:$METRICS_PORT/metrics
             log $PGMUX_DIR/pgmux.log
PostgreSQL:  pid $PG_PID, 127.0.0.1:$PGPORT, log $DIR/postgres.log
Secrets:     $SECRETS/app.json

Reload pgmux after editing its config or secrets:  ${SUDO_HINT}kill -HUP $PGMUX_PID
Stop both and remove $DIR:
  ${SUDO_HINT}bash $DIR/stop.sh
EOF
