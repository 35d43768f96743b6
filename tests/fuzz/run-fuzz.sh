#!/bin/sh
# run-fuzz.sh: runs each libFuzzer harness given for FUZZ_SECONDS seconds (for
# `make fuzz` and CI). A harness starts from a copy of its checked-in corpus
# (tests/fuzz/corpus/NAME), so the checked-in seeds stay small; the inputs it
# finds stay in a temporary directory. A harness passes if libFuzzer ends
# without a crash, a leak, a sanitizer report, a timeout or running out of
# memory; the input that failed is kept under tests/fuzz/artifacts/ in the
# build tree and shown in hex. Ends with exactly one line "N passed, N failed".
#
# Usage: run-fuzz.sh TOP_SRCDIR HARNESS...
# Environment: FUZZ_SECONDS (default 60), FUZZ_ARTIFACTS (default tests/fuzz/artifacts).

set -u

TOP_SRCDIR=$1
shift
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
ARTIFACTS=${FUZZ_ARTIFACTS:-tests/fuzz/artifacts}
mkdir -p "$ARTIFACTS" || exit 1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgmux-fuzz.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stack traces for UBSan reports too; ASan's leak check is on by default.
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export UBSAN_OPTIONS

passed=0
failed=0
summary=

for bin in "$@"; do
	name=$(basename "$bin")
	short=${name#fuzz_}
	seeds=$TOP_SRCDIR/tests/fuzz/corpus/$short
	corpus=$WORK/$short
	log=$WORK/$short.log
	mkdir -p "$corpus" "$ARTIFACTS/$short"
	rm -f "$ARTIFACTS/$short"/*
	dict=
	[ -f "$TOP_SRCDIR/tests/fuzz/$short.dict" ] && dict=-dict=$TOP_SRCDIR/tests/fuzz/$short.dict
	echo "=== $name: ${FUZZ_SECONDS}s from $(ls "$seeds" 2>/dev/null | wc -l) seeds"
	if [ ! -x "$bin" ]; then
		echo "=== $name: $bin is missing"
		failed=$((failed + 1))
		summary="$summary
  $name: missing"
		continue
	fi
	# The first directory receives what the run finds; the seeds are only read.
	"$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
		-print_final_stats=1 -artifact_prefix="$ARTIFACTS/$short/" $dict "$corpus" "$seeds" \
		>"$log" 2>&1
	status=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	cov=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
	if [ "$status" -eq 0 ]; then
		passed=$((passed + 1))
		echo "=== $name: passed (${runs:-?} runs, ${cov:-?} coverage points, $(ls "$corpus" | wc -l) new inputs)"
		summary="$summary
  $name: passed, ${runs:-?} runs"
	else
		failed=$((failed + 1))
		echo "=== $name: FAILED (libFuzzer exit status $status); the end of its output:"
		tail -n 60 "$log"
		for f in "$ARTIFACTS/$short"/*; do
			[ -f "$f" ] || continue
			echo "--- $f (replay: $bin $f)"
			od -A d -t x1z "$f" | head -n 40
		done
		summary="$summary
  $name: FAILED (exit status $status)"
	fi
done

echo "=== fuzz summary:$summary"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
