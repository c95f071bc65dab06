#!/usr/bin/env bash
# Memory of cgwd on the 500-device load (issue 17: PSS <= 8 MB at 500
# devices), where it goes, and whether it grows.
#
# The load of tests/bench/load500.lib (500 Modbus TCP devices x 30 registers
# at 1 s, 10 buses x 50 units, one simulator), delivered over the MQTT uplink
# to a local mosquitto with a subscriber, as in modbus.sh and peers.sh.
#   1. the bare libmodbus loop (tests/tools/mb_ref) alone: the floor;
#   2. cgwd: PSS and its breakdown (tests/bench/smaps.awk) after WARMUP, then
#      PSS every SAMPLE seconds for DURATION seconds: growth in the steady
#      state is a leak or a cache without a bound;
#   3. a broker outage of OUTAGE seconds (the backlog goes to the store),
#      then the broker back until the backlog is delivered: the peak during
#      the outage and what is left after the drain.
# Each breakdown line is PSS, private memory, and PSS by kind of mapping.
# PSS divides a shared library's pages among the processes that map it: the
# simulator (linked with the same libraries) halves cgwd's share of most of
# them; on a gateway where cgwd alone maps them, count their RSS (in brackets).
#
#   tests/bench/memory.sh [BUILD_DIR]  (WARMUP=20 DURATION=120 SAMPLE=30 OUTAGE=30;
#                                       the 5-minute figure: DURATION=300 OUTAGE=60)
# Exit status 1 if cgwd's PSS in the steady state is above 8 MB.
set -u
export CGW_BUILD=${1:-${CGW_BUILD:-$(pwd)/build}}
CGW_BUILD=$(cd "$CGW_BUILD" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../lib.sh"
source "$HERE/load500.lib"
WARMUP=${WARMUP:-20}
DURATION=${DURATION:-120}
SAMPLE=${SAMPLE:-30}
OUTAGE=${OUTAGE:-30}

load500_sim
mq=$(free_port)
start_mosquitto "$mq"
bg_start mosquitto_sub -p "$mq" -q 1 -t 'cgw/#' >"$TMP/sub.out" 2>/dev/null
load500_cgwd_yaml "$mq" "$TMP/cgwd.yaml"
stop() { kill -TERM "$1" 2>/dev/null; for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done; kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
# messages waiting in cgwd's outbox, all lanes
backlog() {
	"$CGW_BUILD/cgwctl" -s "$TMP/cgwd.sock" --json status 2>/dev/null | python3 -c '
import json, sys
st = json.load(sys.stdin)
print(sum(l.get("depth", 0) for o in st.get("outbox", []) for l in o.get("lanes", {}).values()))'
}
backlog_below() { local n; n=$(backlog); [ -n "$n" ] && [ "$n" -lt "$1" ] && return 0; sleep 1; return 1; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo "memory bench: 500 devices x 30 registers at 1 s (10 buses x 50 units), MQTT uplink to a local broker"
bg_start "$CGW_BUILD/tools/mb_ref" -c "$TMP/cgw.yaml" >"$TMP/ref.out" 2>&1
sleep "$WARMUP"
echo "  bare loop (mb_ref) after ${WARMUP} s: $(mem_breakdown "$BG_PID")"
stop "$BG_PID"

bg_start "$CGW_BUILD/cgwd" -c "$TMP/cgwd.yaml" -f 2>"$TMP/cgwd.log"
D=$BG_PID
sleep "$WARMUP"
echo "  cgwd after ${WARMUP} s:            $(mem_breakdown "$D")"
first=$(pss_kb "$D"); max=$first; t=0
while [ "$t" -lt "$DURATION" ]; do
	sleep "$SAMPLE"; t=$((t + SAMPLE))
	kill -0 "$D" 2>/dev/null || { echo "memory bench: cgwd died" >&2; exit 1; }
	p=$(pss_kb "$D"); [ "$p" -gt "$max" ] && max=$p
	echo "    +${t} s: PSS $(mb "$p") MB, private $(mb "$(awk '/^Private_(Clean|Dirty):/ { s += $2 } END { print s }' "/proc/$D/smaps_rollup")") MB"
done
last=$(pss_kb "$D")
echo "  cgwd after $((WARMUP + DURATION)) s:           $(mem_breakdown "$D")"
echo "  steady state over ${DURATION} s: PSS $(mb "$first") -> $(mb "$last") MB (max $(mb "$max")), growth $((last - first)) kB"
rc=0
if [ "$max" -gt 8192 ]; then echo "  MISSED: PSS > 8 MB in the steady state"; rc=1; else echo "  target PSS <= 8 MB in the steady state: met"; fi

if [ "$OUTAGE" -gt 0 ]; then
	kill -TERM "$MOSQ_PID"; wait "$MOSQ_PID" 2>/dev/null
	sleep "$OUTAGE"
	echo "  cgwd at the end of a ${OUTAGE} s broker outage (backlog $(backlog)): $(mem_breakdown "$D")"
	start_mosquitto "$mq"
	t0=$(now_ms)
	wait_for 600 backlog_below 1000
	echo "  cgwd once the backlog is delivered ($(( ($(now_ms) - t0) / 1000 )) s): $(mem_breakdown "$D")"
fi
exit $rc
