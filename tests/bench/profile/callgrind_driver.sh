#!/usr/bin/env bash
# Instructions per Modbus request of the bus drivers alone (issue 17):
# build/tools/mb_poll under valgrind --tool=callgrind on the 500-device load
# (BUSES x UNITS, default 10 x 50, 30 registers, poll 1 s), instrumentation
# switched on only for WINDOW seconds after WARMUP (config loading and the
# connects are left out), then the instructions per request and the top
# functions (self, inclusive). Exact where wall-clock CPU is noisy: use it to
# compare before and after a change. Not part of make test or bench.
#
#   tests/bench/profile/callgrind_driver.sh [BUILD_DIR]   (WARMUP=4 WINDOW=10)
set -u
export CGW_BUILD=${1:-${CGW_BUILD:-$(pwd)/build}}
CGW_BUILD=$(cd "$CGW_BUILD" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
source "$HERE/../load500.lib"
WARMUP=${WARMUP:-4}
WINDOW=${WINDOW:-10}
command -v valgrind >/dev/null || { echo "callgrind: needs valgrind" >&2; exit 1; }

sumval() { grep '^summary ' "$1" | tail -1 | sed -n "s/.* $2=\([0-9]*\).*/\1/p"; }
load500_sim
bg_start valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.out" \
	"$CGW_BUILD/tools/mb_poll" -c "$TMP/cgw.yaml" --quiet </dev/null >"$TMP/poll.out" 2>"$TMP/poll.err"
pid=$BG_PID
sleep "$WARMUP"
summary() { local n; n=$(grep -c '^summary ' "$TMP/poll.out"); kill -USR1 "$pid"
	wait_for 10 test "$(grep -c '^summary ' "$TMP/poll.out")" -gt "$n"; }
summary; req0=$(sumval "$TMP/poll.out" requests); due0=$(sumval "$TMP/poll.out" due); done0=$(sumval "$TMP/poll.out" done)
callgrind_control -i on "$pid" >/dev/null 2>&1
sleep "$WINDOW"
callgrind_control -i off "$pid" >/dev/null 2>&1
summary; req1=$(sumval "$TMP/poll.out" requests); due1=$(sumval "$TMP/poll.out" due); done1=$(sumval "$TMP/poll.out" done)
kill -TERM "$pid"; wait_for 30 test -s "$TMP/cg.out"; sleep 1
cp "$TMP/cg.out" "${CG_KEEP:-/dev/null}" 2>/dev/null
total=$(callgrind_annotate "$TMP/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "mb_poll under callgrind, $((BUSES * UNITS)) devices x 30 registers at 1 s, ${WINDOW} s instrumented"
echo "requests $((req1 - req0)), polls done $((done1 - done0)) of $((due1 - due0)) due"
awk -v t="$total" -v r=$((req1 - req0)) 'BEGIN { printf "instructions: %d total, %.0f per request\n", t, r ? t / r : 0 }'
echo
echo "## top functions (self)"
callgrind_annotate "$TMP/cg.out" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | head -${NTOP:-25}
echo
echo "## top functions (inclusive)"
callgrind_annotate --inclusive=yes "$TMP/cg.out" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | head -${NTOP:-25}
