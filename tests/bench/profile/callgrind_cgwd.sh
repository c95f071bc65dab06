#!/usr/bin/env bash
# Instructions per telemetry message of the whole cgwd (issue 17): cgwd under
# valgrind --tool=callgrind on the load of tests/bench/load500.lib with BUSES
# buses of UNITS devices (default 2 x 50: callgrind runs the threads one at a
# time, and 100 devices keep up under it), the MQTT uplink to a local
# mosquitto and a subscriber. Instrumentation is on only for WINDOW seconds
# after WARMUP (start, connects and the first cycles are left out); the
# instructions are divided by the messages the subscriber got meanwhile.
# Exact where wall-clock CPU on a shared machine is not: use it to compare
# before and after a change. Not part of make test or bench.
#
#   tests/bench/profile/callgrind_cgwd.sh [BUILD_DIR]   (WARMUP=15 WINDOW=20 NTOP=30)
set -u
export CGW_BUILD=${1:-${CGW_BUILD:-$(pwd)/build}}
CGW_BUILD=$(cd "$CGW_BUILD" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
BUSES=${BUSES:-2}
source "$HERE/../load500.lib"
WARMUP=${WARMUP:-15}
WINDOW=${WINDOW:-20}
command -v valgrind >/dev/null || { echo "callgrind: needs valgrind" >&2; exit 1; }

load500_sim
mq=$(free_port)
start_mosquitto "$mq"
bg_start mosquitto_sub -p "$mq" -q 1 -t 'cgw/#' >"$TMP/sub.out" 2>/dev/null
load500_cgwd_yaml "$mq"
bg_start valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.out" \
	"$CGW_BUILD/cgwd" -c "$TMP/cgw.yaml" -f </dev/null 2>"$TMP/cgwd.log"
pid=$BG_PID
sleep "$WARMUP"
n0=$(wc -l <"$TMP/sub.out")
callgrind_control -i on "$pid" >/dev/null 2>&1
sleep "$WINDOW"
callgrind_control -i off "$pid" >/dev/null 2>&1
n1=$(wc -l <"$TMP/sub.out")
kill -TERM "$pid"
wait_for 60 test -s "$TMP/cg.out"
sleep 1
cp "$TMP/cg.out" "${CG_KEEP:-/dev/null}" 2>/dev/null
total=$(callgrind_annotate "$TMP/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "cgwd under callgrind, $((BUSES * UNITS)) devices x 30 registers at 1 s, MQTT uplink, ${WINDOW} s instrumented"
awk -v t="$total" -v m=$((n1 - n0)) 'BEGIN { printf "messages %d, instructions %d total, %.0f per message\n", m, t, m ? t / m : 0 }'
echo
echo "## top functions (inclusive)"
callgrind_annotate --inclusive=yes "$TMP/cg.out" 2>/dev/null | grep -E '^ *[0-9,]+ \(' |
	grep -v '^ *[0-9,]* ([0-9. ]*%)  \*' | head -"${NTOP:-30}"
echo
echo "## top functions (self)"
callgrind_annotate "$TMP/cg.out" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | head -"${NTOP:-30}"
