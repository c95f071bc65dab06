#!/usr/bin/env bash
# System calls per Modbus request (issue 17): build/tools/mb_poll (the bus
# drivers alone feeding a consumer) and tests/tools/mb_ref (the bare
# libmodbus loop) side by side on the 500-device load of load500.lib, each
# under `strace -c -f -p PID` for WINDOW seconds after WARMUP; prints each
# one's calls per request by system call. Counts are exact where CPU % on a
# shared machine is not (strace slows both: read the counts, not the times).
# Not part of make test or bench.
#
#   tests/bench/profile/strace_driver.sh [BUILD_DIR]   (WARMUP=5 WINDOW=10)
set -u
export CGW_BUILD=${1:-${CGW_BUILD:-$(pwd)/build}}
CGW_BUILD=$(cd "$CGW_BUILD" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
source "$HERE/../load500.lib"
WARMUP=${WARMUP:-5}
WINDOW=${WINDOW:-10}
command -v strace >/dev/null || { echo "strace_driver: needs strace" >&2; exit 1; }

sumval() { grep '^summary ' "$1" | tail -1 | sed -n "s/.* $2=\([0-9]*\).*/\1/p"; }
summary() { # FILE PID: ask for a fresh summary line
	local n; n=$(grep -c '^summary ' "$1"); kill -USR1 "$2"
	wait_for 10 test "$(grep -c '^summary ' "$1")" -gt "$n"; }
load500_sim
bg_start "$CGW_BUILD/tools/mb_poll" -c "$TMP/cgw.yaml" --quiet </dev/null >"$TMP/poll.out" 2>"$TMP/poll.err"
poll=$BG_PID
bg_start "$CGW_BUILD/tools/mb_ref" -c "$TMP/cgw.yaml" >"$TMP/ref.out" 2>"$TMP/ref.err"
ref=$BG_PID
sleep "$WARMUP"
summary "$TMP/poll.out" "$poll"; summary "$TMP/ref.out" "$ref"
p0=$(sumval "$TMP/poll.out" requests); r0=$(sumval "$TMP/ref.out" requests)
due0=$(sumval "$TMP/poll.out" due); done0=$(sumval "$TMP/poll.out" done)
timeout -s INT "$WINDOW" strace -c -f -p "$poll" -o "$TMP/poll.strace" 2>/dev/null &
s1=$!
timeout -s INT "$WINDOW" strace -c -f -p "$ref" -o "$TMP/ref.strace" 2>/dev/null &
s2=$!
wait "$s1" "$s2"
summary "$TMP/poll.out" "$poll"; summary "$TMP/ref.out" "$ref"
p1=$(sumval "$TMP/poll.out" requests); r1=$(sumval "$TMP/ref.out" requests)
due1=$(sumval "$TMP/poll.out" due); done1=$(sumval "$TMP/poll.out" done)

per_request() { # STRACE_FILE REQUESTS NAME
	# strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall
	awk '$1 ~ /^[0-9.]+$/ && (NF == 5 || NF == 6) && $NF != "total" {
		print $NF, $4, NF == 6 ? $5 : 0 }' "$1" | sort -k2,2nr |
	awk -v req="$2" -v name="$3" '
	{ n++; s[n] = $1; c[n] = $2; e[n] = $3; tot += $2; if ($1 == "sendto") sent = $2 }
	END {
		# a request is one send in both: exact, where the summaries taken
		# around the window are not quite the strace window
		if (sent) req = sent
		printf "%s: %d requests (sendto), %.2f system calls per request\n", name, req, req ? tot / req : 0
		for (i = 1; i <= n; i++)
			printf "  %-12s %8d calls %6d errors  %5.2f per request\n", s[i], c[i], e[i], req ? c[i] / req : 0
	}'
}
echo "$((BUSES * UNITS)) devices x 30 registers at 1 s, ${WINDOW} s under strace -c -f"
echo "mb_poll polls done $((done1 - done0)) of $((due1 - due0)) due"
per_request "$TMP/poll.strace" $((p1 - p0)) "driver (mb_poll)"
per_request "$TMP/ref.strace" $((r1 - r0)) "bare loop (mb_ref)"
