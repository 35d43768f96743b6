#!/bin/sh
# run-tests.sh: runs pgmux's test suites for `make check` (the source checks
# of tests/check-modules.sh, the packaging checks of tests/check-contrib.sh, every unit test binary, then the integration
# suite against a throw-away PostgreSQL set up by tests/integration/pg-env.sh)
# and `make check-valgrind` (integration only, with PGMUX_VALGRIND set). Shows
# each binary's output, adds up criterion's "Synthesis" lines (a check script
# counts as one test), and ends with exactly one line "N passed, N failed".
#
# Usage: run-tests.sh [integration]
# Environment: PGMUX_BIN (the daemon), TOP_SRCDIR, TOP_BUILDDIR, optional PGMUX_VALGRIND,
# optional PGMUX_TEST_FILTER (a criterion --filter pattern for the integration suite).

set -u

MODE=${1:-all}
HERE=$(cd "$(dirname "$0")" && pwd)
TOP_SRCDIR=${TOP_SRCDIR:-$(dirname "$HERE")}
TOP_BUILDDIR=${TOP_BUILDDIR:-$(pwd)}
PGMUX_BIN=${PGMUX_BIN:-$TOP_BUILDDIR/pgmux}
PGMUX_VALGRIND=${PGMUX_VALGRIND:-}
[ "$PGMUX_VALGRIND" = no ] && PGMUX_VALGRIND=
export PGMUX_BIN PGMUX_VALGRIND TOP_SRCDIR TOP_BUILDDIR

case "$MODE" in
all | integration) ;;
*) echo "usage: $0 [integration]" >&2; exit 2 ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgmux-run-tests.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ESC=$(printf '\033')
total_passed=0
total_failed=0
summary=

# run_suite NAME COMMAND...: run, show the output as it comes, then count.
run_suite() {
	name=$1
	shift
	out=$WORK/output
	: >"$out"
	echo "=== $name"
	# A pipe keeps the output live; the command's status travels through a file.
	{
		"$@" 2>&1
		echo $? >"$WORK/status"
	} | tee "$out"
	status=$(cat "$WORK/status" 2>/dev/null || echo 1)

	line=$(sed "s/$ESC\\[[0-9;]*[A-Za-z]//g" "$out" | grep 'Synthesis: Tested:' | tail -n 1)
	if [ -z "$line" ]; then
		echo "=== $name: no test summary (exit status $status); counted as 1 failure"
		total_failed=$((total_failed + 1))
		summary="$summary
  $name: died without a summary (exit status $status)"
		return
	fi
	num() { echo "$line" | sed -n "s/.*$1: *\\([0-9][0-9]*\\).*/\\1/p"; }
	tested=$(num Tested)
	passing=$(num Passing)
	failing=$(num Failing)
	crashing=$(num Crashing)
	: "${tested:=0}" "${passing:=0}" "${failing:=0}" "${crashing:=0}"
	# criterion counts crashes among the failures; be safe if a version does not.
	[ "$crashing" -gt "$failing" ] && failing=$((failing + crashing))
	if [ "$status" -ne 0 ] && [ "$failing" -eq 0 ]; then
		echo "=== $name: exit status $status although no test failed; counted as 1 failure"
		failing=1
	fi
	total_passed=$((total_passed + passing))
	total_failed=$((total_failed + failing))
	summary="$summary
  $name: $passing passed, $failing failed (of $tested)"
}

# run_check NAME COMMAND...: a script that passes or fails as a whole, counted as one test.
run_check() {
	name=$1
	shift
	echo "=== $name"
	if "$@" 2>&1; then
		total_passed=$((total_passed + 1))
		summary="$summary
  $name: passed"
	else
		total_failed=$((total_failed + 1))
		summary="$summary
  $name: FAILED"
	fi
}

if [ "$MODE" = all ]; then
	# No include cycle between modules, no source file over 1,200 lines.
	run_check check-modules sh "$TOP_SRCDIR/tests/check-modules.sh" "$TOP_SRCDIR/src"
	# contrib/: the systemd unit verifies, the Kubernetes example parses and checks, the Dockerfile reads right.
	run_check check-contrib sh "$TOP_SRCDIR/tests/check-contrib.sh" "$TOP_SRCDIR" "$PGMUX_BIN"
	found=0
	for bin in "$TOP_BUILDDIR"/tests/unit/test_*; do
		[ -f "$bin" ] && [ -x "$bin" ] || continue
		case "$bin" in *.c | *.h | *.o | *.log | *.trs | *.sh) continue ;; esac
		found=1
		run_suite "unit/$(basename "$bin")" "$bin" --color=never -S
	done
	if [ "$found" -eq 0 ]; then
		echo "=== no unit test binaries in $TOP_BUILDDIR/tests/unit; counted as 1 failure"
		total_failed=$((total_failed + 1))
	fi
fi

integration=$TOP_BUILDDIR/tests/integration/test_integration
if [ ! -x "$integration" ]; then
	echo "=== $integration is missing; counted as 1 failure"
	total_failed=$((total_failed + 1))
elif [ ! -x "$PGMUX_BIN" ]; then
	echo "=== PGMUX_BIN=$PGMUX_BIN is not an executable; integration suite counted as 1 failure"
	total_failed=$((total_failed + 1))
else
	[ -n "$PGMUX_VALGRIND" ] && echo "=== pgmux runs under $PGMUX_VALGRIND"
	# One test at a time: several tests time cancels and waits to the second.
	if [ -n "${PGMUX_TEST_FILTER:-}" ]; then
		echo "=== only the integration tests matching $PGMUX_TEST_FILTER"
		run_suite integration sh "$TOP_SRCDIR/tests/integration/pg-env.sh" \
			"$integration" --color=never -S -j1 --filter "$PGMUX_TEST_FILTER"
	else
		run_suite integration sh "$TOP_SRCDIR/tests/integration/pg-env.sh" \
			"$integration" --color=never -S -j1
	fi
fi

echo "=== summary:$summary"
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
