#!/usr/bin/env bash
# Runs every fuzz target for a while: tests/fuzz/run.sh DIR SECONDS.
# Corpora live in tests/fuzz/corpus-NAME (not committed); crashes are kept
# as crash-* files in the working directory and fail the run.
set -u
dir=$1 secs=${2:-30}
cd "$(dirname "$0")/../.."
fail=0
for f in "$dir"/fuzz_*; do
	[ -x "$f" ] || continue
	n=$(basename "$f")
	mkdir -p "tests/fuzz/corpus-$n"
	seeds=()
	[ -d "tests/fuzz/seeds-$n" ] && seeds=("tests/fuzz/seeds-$n")
	echo "== $n (${secs}s)"
	if ! "$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		"tests/fuzz/corpus-$n" "${seeds[@]}" 2>"build-fuzz/$n.log"; then
		echo "FAIL $n: see build-fuzz/$n.log"; tail -30 "build-fuzz/$n.log"; fail=1
	else
		grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "build-fuzz/$n.log" | tail -1
	fi
done
exit $fail
