#!/bin/sh
# record-all.sh: records the transcripts of this directory from real clients
# talking to a real PostgreSQL through record.py's tap. Run it under the
# integration suite's throw-away server (from the top of the tree):
#
#   PGMUX_BIN=./pgmux tests/integration/pg-env.sh sh tests/transcripts/record-all.sh
#
# Each transcript is written again; a diff shows what a newer client changed.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=/usr/bin/python3 # Debian's, which has psycopg and asyncpg
UPSTREAM="$PGMUX_TEST_PGHOST:$PGMUX_TEST_PGPORT"
export PGUSER="$PGMUX_TEST_APPUSER" PGPASSWORD="$PGMUX_TEST_APPPASS" PGDATABASE=postgres

record() { # name title command...
	name=$1 title=$2
	shift 2
	"$PYTHON" "$HERE/record.py" --upstream "$UPSTREAM" --out "$HERE/$name.txt" --title "$title" -- "$@"
	echo "record-all: $name.txt: $(grep -c '^[0-9]' "$HERE/$name.txt") messages"
}

record psql "psql -f psql-session.sql: simple queries, transaction blocks, an error, COPY both ways, a notice" \
	psql -X -q -f "$HERE/psql-session.sql"
record pgbench-simple "pgbench -M simple -t 4 -c 1 (TPC-B like, one connection)" \
	pgbench -n -M simple -t 4 -c 1
record pgbench-extended "pgbench -M extended -t 4 -c 1: unnamed statements, Parse/Bind/Describe/Execute/Sync" \
	pgbench -n -M extended -t 4 -c 1
record pgbench-prepared "pgbench -M prepared -t 4 -c 1: named statements, each Parse once" \
	pgbench -n -M prepared -t 4 -c 1
record psycopg-pipeline "psycopg 3 pipeline mode, prepare_threshold=0: batches in flight, one failing" \
	"$PYTHON" "$HERE/psycopg-pipeline.py"
record asyncpg "asyncpg: its statement cache, executemany in a transaction, an error, prepare" \
	"$PYTHON" "$HERE/asyncpg-session.py"
