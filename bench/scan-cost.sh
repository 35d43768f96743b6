#!/bin/sh
# bench/scan-cost.sh: instructions sql_scan() spends per statement text on a
# common workload (bench/scan_cost.c), at two revisions of the repository,
# counted by callgrind: what a change to the scanner costs every Query and
# Parse in transaction pooling.
#
#   sh bench/scan-cost.sh [BASE_REV [NEW_REV]]   (defaults: HEAD~1 and the work tree)
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:-HEAD~1}
NEW=${2:-}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/scan-cost.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
command -v valgrind >/dev/null || { echo "scan-cost: valgrind not found" >&2; exit 1; }

# extract REV DIR: the scanner's sources at REV (the work tree when REV is empty)
extract() {
	mkdir -p "$2"
	for f in sqlscan.c sqlscan.h sqllex.c sqllex.h sqlnames.c sqlnames.h; do
		if [ -z "$1" ]; then
			[ -f "$REPO/src/$f" ] && cp "$REPO/src/$f" "$2/"
		else
			git -C "$REPO" show "$1:src/$f" >"$2/$f" 2>/dev/null || rm -f "$2/$f"
		fi
	done
}

# count LABEL DIR: build and print instructions per text
count() {
	srcs="$2/sqlscan.c"
	[ -f "$2/sqllex.c" ] && srcs="$srcs $2/sqllex.c"
	[ -f "$2/sqlnames.c" ] && srcs="$srcs $2/sqlnames.c"
	# shellcheck disable=SC2086
	cc -O2 -std=c11 -D_GNU_SOURCE -I"$2" -o "$2/scan_cost" "$REPO/bench/scan_cost.c" $srcs
	total=$(valgrind --tool=callgrind --callgrind-out-file="$2/cg.out" "$2/scan_cost" 2>&1 >/dev/null |
		sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
	# scan_cost.c scans its 8 texts 2000 times in each of two passes.
	awk -v l="$1" -v t="$total" 'BEGIN { printf "%-24s %10.0f instructions per text\n", l, t / 32000 }'
}

extract "$BASE" "$WORK/base"
extract "$NEW" "$WORK/new"
count "base ($BASE)" "$WORK/base"
count "new (${NEW:-work tree})" "$WORK/new"
