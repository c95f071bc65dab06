#!/usr/bin/env bash
# Runs every test suite and sums them up in one closing line.
#
# Each suite speaks TAP ("ok N - name" / "not ok N - name"): the cmocka unit
# binaries (CMOCKA_MESSAGE_OUTPUT=TAP) and the shell/integration suites, which
# use tests/lib.sh. A suite that exits non-zero without reporting a failure
# (a crash, a sanitizer report) counts as one failure.
set -u
B=${1:-build}
export CGW_BUILD=$(cd "$B" && pwd)
export CMOCKA_MESSAGE_OUTPUT=TAP
cd "$(dirname "$0")/.."
logdir=$CGW_BUILD/test-logs
rm -rf "$logdir"; mkdir -p "$logdir"
pass=0 fail=0
failed_suites=()
# Sanitizer reports of every process (daemons started by the integration
# suites included) land here; any report is a failure, even from a process
# whose exit status nobody checks.
mkdir -p "$logdir/san"
export ASAN_OPTIONS="log_path=$logdir/san/asan:detect_leaks=1:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:log_path=$logdir/san/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

run_suite() { # name cmd...
	local name=$1; shift
	local log=$logdir/${name//\//_}.log
	local t0=$SECONDS
	timeout --kill-after=10 "${SUITE_TIMEOUT:-300}" "$@" </dev/null >"$log" 2>&1
	local rc=$?
	local p f
	p=$(grep -cE '^ok [0-9]+' "$log")
	f=$(grep -cE '^not ok [0-9]+' "$log")
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "not ok - $name exited with status $rc" >>"$log"; fi
	pass=$((pass + p)); fail=$((fail + f))
	printf '%-32s %4d passed, %d failed  (%ds)\n' "$name" "$p" "$f" $((SECONDS - t0))
	if [ "$f" -ne 0 ]; then
		failed_suites+=("$name")
		grep -E '^not ok|^# ' "$log" | grep -v '^# ok' | head -40 | sed 's/^/    /'
		echo "    (full log: $log)"
	fi
}

for t in "$CGW_BUILD"/tests/test_*; do
	[ -x "$t" ] || continue
	run_suite "unit/$(basename "$t")" "$t"
done
for t in tests/config/run.sh tests/integration/*.sh; do
	[ -f "$t" ] || continue
	run_suite "$(basename "$(dirname "$t")")/$(basename "$t" .sh)" bash "$t"
done

reports=$(ls "$logdir/san" 2>/dev/null | wc -l)
if [ "$reports" -gt 0 ]; then
	fail=$((fail + reports))
	failed_suites+=("sanitizers")
	echo "sanitizer reports: $reports (in $logdir/san)"
	head -n 20 "$logdir"/san/* | sed 's/^/    /'
else
	pass=$((pass + 1))
	printf '%-32s %4d passed, %d failed\n' "sanitizer reports (none)" 1 0
fi
[ ${#failed_suites[@]} -eq 0 ] || echo "failed suites: ${failed_suites[*]}"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
