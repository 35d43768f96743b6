#!/bin/sh
# pg-env.sh: sets up one throw-away PostgreSQL (plus certificates and a
# secrets directory for pgmux) for the whole integration suite, runs the
# command given as arguments with PGMUX_TEST_* variables describing it, then
# stops PostgreSQL by PID and removes everything, whatever way the command ends.
#
# Usage: PGMUX_BIN=/path/pgmux [PGMUX_VALGRIND=/usr/bin/valgrind] pg-env.sh CMD [ARGS...]
# Works as root (PostgreSQL then runs as the "postgres" user) and as a normal user.
# PGMUX_TEST_KEEP=1 keeps the scratch directory (logs, per-test pgmux configs).

set -eu

log() { printf 'pg-env: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ $# -ge 1 ] || die "usage: pg-env.sh COMMAND [ARGS...]"

# ------------------------------------------------------------ binaries
find_pgbin() {
	if [ -n "${PGMUX_TEST_PGBIN:-}" ] && [ -x "$PGMUX_TEST_PGBIN/initdb" ]; then
		echo "$PGMUX_TEST_PGBIN"; return
	fi
	if [ -x /usr/lib/postgresql/15/bin/initdb ]; then
		echo /usr/lib/postgresql/15/bin; return
	fi
	if command -v pg_config >/dev/null 2>&1; then
		d=$(pg_config --bindir 2>/dev/null || true)
		if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
	fi
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
		if [ -x "$d/initdb" ]; then echo "$d"; return; fi
	done
	d=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
	[ -x "$d/initdb" ] && { echo "$d"; return; }
	return 1
}
PGBIN=$(find_pgbin) || die "cannot find PostgreSQL server binaries (initdb)"
command -v openssl >/dev/null 2>&1 || die "openssl not found"

# A free loopback TCP port: bind port 0 and ask the kernel which it chose.
free_port() {
	if command -v perl >/dev/null 2>&1; then
		perl -MSocket -e 'socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
			bind($s, pack_sockaddr_in(0, inet_aton("127.0.0.1"))) or die "bind: $!";
			my ($p) = unpack_sockaddr_in(getsockname($s)); print "$p\n";'
	else
		python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
	fi
}

# ------------------------------------------------------------ who runs postgres
if [ "$(id -u)" -eq 0 ]; then
	id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run PostgreSQL"
	PGUSER_OS=postgres
	as_pg() { runuser -u postgres -- "$@"; }
else
	PGUSER_OS=$(id -un)
	as_pg() { "$@"; }
fi

# ------------------------------------------------------------ teardown
TESTDIR=
PGDATA_DIR=
PG_PID=
# True while pid runs; a zombie (its parent, maybe a PID 1 that never reaps,
# has not collected it yet) counts as gone.
alive() {
	kill -0 "$1" 2>/dev/null || return 1
	state=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null || true)
	[ "$state" != Z ]
}
cleanup() {
	status=$?
	set +e
	if [ -n "$PGDATA_DIR" ] && [ -f "$PGDATA_DIR/postmaster.pid" ]; then
		PG_PID=$(head -n 1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null)
	fi
	if [ -n "$PG_PID" ] && alive "$PG_PID"; then
		# pg_ctl reads the postmaster's PID from postmaster.pid and signals it.
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 20 stop >/dev/null 2>&1 ||
			as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w -t 10 stop >/dev/null 2>&1
		if alive "$PG_PID"; then
			log "postgres (pid $PG_PID) did not stop; killing it"
			kill -KILL "$PG_PID" 2>/dev/null
		fi
	fi
	if [ "$status" -ne 0 ] && [ -n "$TESTDIR" ] && [ -f "$TESTDIR/postgres.log" ] &&
	   [ -z "${PGMUX_TEST_QUIET_PGLOG:-}" ] && [ "${PG_READY:-0}" -eq 0 ]; then
		log "PostgreSQL log follows:"
		tail -n 50 "$TESTDIR/postgres.log" >&2
	fi
	if [ -n "$TESTDIR" ] && [ -d "$TESTDIR" ]; then
		if [ -n "${PGMUX_TEST_KEEP:-}" ]; then
			log "keeping $TESTDIR"
		else
			rm -rf "$TESTDIR"
		fi
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ------------------------------------------------------------ directories
TESTDIR=$(mktemp -d "${TMPDIR:-/tmp}/pgmux-it.XXXXXX")
chmod 755 "$TESTDIR" # postgres (when we are root) must reach its data and socket dirs
PGDATA_DIR=$TESTDIR/pgdata
SOCKDIR=$TESTDIR/pgsock
CERTDIR=$TESTDIR/certs
SECRETS=$TESTDIR/secrets
mkdir -p "$PGDATA_DIR" "$SOCKDIR" "$CERTDIR" "$SECRETS"
chmod 700 "$PGDATA_DIR" "$SECRETS"
touch "$TESTDIR/postgres.log"
if [ "$PGUSER_OS" != "$(id -un)" ]; then
	chown "$PGUSER_OS" "$PGDATA_DIR" "$SOCKDIR" "$TESTDIR/postgres.log"
fi

# ------------------------------------------------------------ certificates
# One CA signs a certificate for pgmux's client side and one for PostgreSQL.
make_cert() { # name CN
	cat >"$CERTDIR/$1.ext" <<-EOF
		basicConstraints = CA:FALSE
		keyUsage = digitalSignature, keyEncipherment
		extendedKeyUsage = serverAuth
		subjectAltName = IP:127.0.0.1, DNS:localhost
	EOF
	openssl req -new -newkey rsa:2048 -nodes -keyout "$CERTDIR/$1.key" \
		-subj "/CN=$2" -out "$CERTDIR/$1.csr" 2>/dev/null
	openssl x509 -req -in "$CERTDIR/$1.csr" -CA "$CERTDIR/ca.pem" -CAkey "$CERTDIR/ca.key" \
		-CAcreateserial -days 7 -sha256 -extfile "$CERTDIR/$1.ext" \
		-out "$CERTDIR/$1.pem" 2>/dev/null
	chmod 600 "$CERTDIR/$1.key"
}
openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$CERTDIR/ca.key" -days 7 -sha256 \
	-subj "/CN=pgmux test CA" -addext "basicConstraints=critical,CA:TRUE" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" -out "$CERTDIR/ca.pem" 2>/dev/null ||
	die "openssl: cannot create the CA"
make_cert pgmux 127.0.0.1 || die "openssl: cannot create pgmux's certificate"
make_cert postgres 127.0.0.1 || die "openssl: cannot create PostgreSQL's certificate"
chmod 755 "$CERTDIR"
chmod 644 "$CERTDIR"/*.pem

# ------------------------------------------------------------ cluster
SUPERUSER=postgres
SUPERPASS="super-$(openssl rand -hex 8)"
APPUSER=app
APPPASS=app-secret-pw
PGPORT=$(free_port) || die "cannot find a free port"

printf '%s\n' "$SUPERPASS" >"$TESTDIR/pwfile"
chmod 600 "$TESTDIR/pwfile"
if [ "$PGUSER_OS" != "$(id -un)" ]; then chown "$PGUSER_OS" "$TESTDIR/pwfile"; fi
as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U "$SUPERUSER" --pwfile="$TESTDIR/pwfile" \
	--auth=scram-sha-256 -E UTF8 --locale=C -N >"$TESTDIR/initdb.log" 2>&1 ||
	{ cat "$TESTDIR/initdb.log" >&2; die "initdb failed"; }
rm -f "$TESTDIR/pwfile"

# PostgreSQL insists that its key belongs to it and is private.
cp "$CERTDIR/postgres.pem" "$CERTDIR/postgres.key" "$PGDATA_DIR/"
mv "$PGDATA_DIR/postgres.pem" "$PGDATA_DIR/server.crt"
mv "$PGDATA_DIR/postgres.key" "$PGDATA_DIR/server.key"
chmod 600 "$PGDATA_DIR/server.key"
if [ "$PGUSER_OS" != "$(id -un)" ]; then
	chown "$PGUSER_OS" "$PGDATA_DIR/server.crt" "$PGDATA_DIR/server.key"
fi

# Later settings win, so appending is enough.
cat >>"$PGDATA_DIR/postgresql.conf" <<EOF

# ---- pgmux integration tests (pg-env.sh)
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$SOCKDIR'
max_connections = 100
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF

as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$TESTDIR/postgres.log" -w -t 60 start >/dev/null ||
	die "PostgreSQL did not start"
PG_PID=$(head -n 1 "$PGDATA_DIR/postmaster.pid")
log "PostgreSQL pid $PG_PID on 127.0.0.1:$PGPORT, dir $TESTDIR"

# Superuser session over the Unix socket.
PSQL_SUPER() {
	PGPASSWORD=$SUPERPASS PGSSLMODE=disable PGCONNECT_TIMEOUT=10 \
		"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$PGPORT" -U "$SUPERUSER" -d postgres "$@"
}
PSQL_SUPER <<EOF >/dev/null || die "cannot create the test roles"
CREATE ROLE $APPUSER LOGIN PASSWORD '$APPPASS';
GRANT CREATE, USAGE ON SCHEMA public TO $APPUSER;
EOF
PGPASSWORD=$SUPERPASS PGSSLMODE=disable "$PGBIN/pgbench" -i -s 1 -q \
	-h "$SOCKDIR" -p "$PGPORT" -U "$SUPERUSER" postgres >"$TESTDIR/pgbench-init.log" 2>&1 ||
	{ cat "$TESTDIR/pgbench-init.log" >&2; die "pgbench -i failed"; }
PSQL_SUPER <<EOF >/dev/null || die "cannot hand the pgbench tables to $APPUSER"
ALTER TABLE pgbench_accounts OWNER TO $APPUSER;
ALTER TABLE pgbench_branches OWNER TO $APPUSER;
ALTER TABLE pgbench_tellers OWNER TO $APPUSER;
ALTER TABLE pgbench_history OWNER TO $APPUSER;
EOF

# ------------------------------------------------------------ secrets for pgmux
write_secret() { # file user password
	cat >"$SECRETS/$1.json" <<-EOF
		{"username": "$2", "password": "$3", "engine": "postgres", "host": "127.0.0.1", "port": $PGPORT, "dbname": "postgres"}
	EOF
	chmod 600 "$SECRETS/$1.json"
}
write_secret "$APPUSER" "$APPUSER" "$APPPASS"
write_secret "$SUPERUSER" "$SUPERUSER" "$SUPERPASS"
PG_READY=1

# ------------------------------------------------------------ run the suite
export PGMUX_TEST_DIR="$TESTDIR"
export PGMUX_TEST_PGHOST=127.0.0.1
export PGMUX_TEST_PGPORT="$PGPORT"
export PGMUX_TEST_PGSOCKDIR="$SOCKDIR"
export PGMUX_TEST_SUPERUSER="$SUPERUSER"
export PGMUX_TEST_SUPERPASS="$SUPERPASS"
export PGMUX_TEST_APPUSER="$APPUSER"
export PGMUX_TEST_APPPASS="$APPPASS"
export PGMUX_TEST_SECRETS="$SECRETS"
export PGMUX_TEST_CERT="$CERTDIR/pgmux.pem"
export PGMUX_TEST_KEY="$CERTDIR/pgmux.key"
export PGMUX_TEST_CA="$CERTDIR/ca.pem"
export PGMUX_TEST_PGBIN="$PGBIN"
export PGMUX_BIN="${PGMUX_BIN:-}"
export PGMUX_VALGRIND="${PGMUX_VALGRIND:-}"
# Keep the clients' own defaults from leaking into the tests.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE PGSSLMODE PGSERVICE \
	PGOPTIONS PGAPPNAME PGSSLROOTCERT PGREQUIRESSL PGCONNECT_TIMEOUT 2>/dev/null || true
PATH="$PGBIN:$PATH"
export PATH

set +e
"$@"
status=$?
set -e
exit "$status"
