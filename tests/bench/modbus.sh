#!/usr/bin/env bash
# Modbus benchmark (issue 4): 500 devices x 30 registers polled every 1 s
# from simulators on loopback TCP (10 buses x 50 units), by the bus drivers
# (build/tools/mb_poll, one worker thread per bus), and beside them in the
# same run by the physical reference (build/tools/mb_ref: plain libmodbus
# calls issuing the same planned requests, nothing else).
#
# Prints CPU % of one core (utime+stime from /proc/PID/stat over the
# window), RSS, achieved poll rate vs schedule, requests per cycle vs one
# request per point, and CPU per request relative to the reference.
# Targets: >= 99 % of scheduled polls, <= 10 % of one core, RSS <= 8 MB.
#
#   tests/bench/modbus.sh [BUILD_DIR]     (WINDOW=20 WARMUP=5 seconds)
# Exit status 1 if a target is missed.
set -u
export CGW_BUILD=${1:-${CGW_BUILD:-$(pwd)/build}}
CGW_BUILD=$(cd "$CGW_BUILD" && pwd)
source "$(dirname "$0")/../lib.sh"

WINDOW=${WINDOW:-20}
WARMUP=${WARMUP:-5}
SIM=$CGW_BUILD/cgw-sim
POLL=$CGW_BUILD/tools/mb_poll
REF=$CGW_BUILD/tools/mb_ref
for b in "$SIM" "$POLL" "$REF"; do
	[ -x "$b" ] || { echo "modbus bench: missing $b (make all)" >&2; exit 1; }
done
source "$(dirname "$0")/load500.lib"

# last "summary key=value" value printed by a tool
sumval() { grep '^summary ' "$1" | tail -1 | sed -n "s/.* $2=\([0-9]*\).*/\1/p"; }

load500_sim "$SIM"
bg_start "$POLL" -c "$TMP/cgw.yaml" --quiet </dev/null >"$TMP/poll.out" 2>"$TMP/poll.err"
POLL_PID=$BG_PID
bg_start "$REF" -c "$TMP/cgw.yaml" >"$TMP/ref.out" 2>"$TMP/ref.err"
REF_PID=$BG_PID
sleep "$WARMUP"

sample() { # -> P_T R_T P_REQ R_REQ P_DUE P_DONE T_MS
	local np nr
	np=$(grep -c '^summary ' "$TMP/poll.out"); nr=$(grep -c '^summary ' "$TMP/ref.out")
	T_MS=$(now_ms)
	P_T=$(ticks "$POLL_PID"); R_T=$(ticks "$REF_PID")
	kill -USR1 "$POLL_PID" "$REF_PID"
	wait_for 5 test "$(grep -c '^summary ' "$TMP/poll.out")" -gt "$np"
	wait_for 5 test "$(grep -c '^summary ' "$TMP/ref.out")" -gt "$nr"
	P_REQ=$(sumval "$TMP/poll.out" requests); R_REQ=$(sumval "$TMP/ref.out" requests)
	P_DUE=$(sumval "$TMP/poll.out" due); P_DONE=$(sumval "$TMP/poll.out" done)
	P_ITEMS=$(sumval "$TMP/poll.out" items); P_ERR=$(sumval "$TMP/poll.out" errors)
}
sample
p_t0=$P_T r_t0=$R_T p_req0=$P_REQ r_req0=$R_REQ due0=$P_DUE done0=$P_DONE items0=$P_ITEMS t0=$T_MS
sleep "$WINDOW"
sample
rss=$(rss_kb "$POLL_PID"); hwm=$(hwm_kb "$POLL_PID"); ref_rss=$(rss_kb "$REF_PID")
ref_mem=$(mem_breakdown "$REF_PID")
anon=$(anon_kb "$POLL_PID"); ref_anon=$(anon_kb "$REF_PID")
threads=$(awk '/^Threads:/ { print $2 }' "/proc/$POLL_PID/status")

awk -v hz="$HZ" -v wall=$((T_MS - t0)) \
	-v pt=$((P_T - p_t0)) -v rt=$((R_T - r_t0)) \
	-v preq=$((P_REQ - p_req0)) -v rreq=$((R_REQ - r_req0)) \
	-v due=$((P_DUE - due0)) -v done=$((P_DONE - done0)) -v items=$((P_ITEMS - items0)) \
	-v errors="$P_ERR" -v rss="$rss" -v hwm="$hwm" -v ref_rss="$ref_rss" -v threads="$threads" \
	-v anon="$anon" -v ref_anon="$ref_anon" \
	-v devices=$((BUSES * UNITS)) -v points=25 -v window="$WINDOW" '
function pct(t) { return 100 * (t / hz) / (wall / 1000) }
BEGIN {
	cpu = pct(pt); rcpu = pct(rt)
	rate = due ? 100 * done / due : 0
	if (rate > 100) rate = 100   # a snapshot may fall inside a cycle
	per_cycle = done ? preq / done : 0
	cpr = preq ? (pt / hz) / preq * 1e6 : 0     # us of CPU per request
	rcpr = rreq ? (rt / hz) / rreq * 1e6 : 0
	printf "modbus bench: %d devices x 30 registers (25 points), poll 1 s, %d buses x %d units, loopback TCP, %.1f s window\n", devices, 10, devices / 10, wall / 1000
	printf "  driver (mb_poll):  CPU %.2f %% of one core, RSS %.1f MB (peak %.1f MB), private %.1f MB, %d threads\n", cpu, rss / 1024, hwm / 1024, anon / 1024, threads
	printf "  poll rate:         %d of %d scheduled polls done = %.2f %% (errors since start: %d)\n", done, due, rate, errors
	printf "  requests:          %d in the window = %.2f per device cycle (one per point: %d)\n", preq, per_cycle, points
	printf "  items to the core: %d (%.0f/s)\n", items, items / (wall / 1000)
	printf "  reference (mb_ref): CPU %.2f %% of one core, %d requests, RSS %.1f MB, private %.1f MB\n", rcpu, rreq, ref_rss / 1024, ref_anon / 1024
	printf "  CPU per request:   driver %.1f us, reference %.1f us, ratio %.2f\n", cpr, rcpr, rcpr ? cpr / rcpr : 0
	miss = 0
	if (rate < 99) { print "  MISSED: poll rate < 99 %"; miss = 1 }
	if (cpu > 10) { print "  MISSED: CPU > 10 % of one core"; miss = 1 }
	if (anon > 8192) { print "  MISSED: private memory > 8 MB"; miss = 1 }
	if (rss > 8192) print "  note: RSS > 8 MB, of which " int((rss - anon) / 1024) " MB are shared library pages"
	exit miss
}'
rc=$?
echo "  reference memory:  $ref_mem"
kill -TERM "$POLL_PID" "$REF_PID" 2>/dev/null

# The whole daemon on the same load: drivers, core, alarm rules, store and
# the MQTT uplink to a local broker with a subscriber, over the same window.
mq=$(free_port)
start_mosquitto "$mq"
load500_cgwd_yaml "$mq"
bg_start mosquitto_sub -p "$mq" -q 1 -t 'cgw/#' >"$TMP/sub.out" 2>/dev/null
bg_start "$CGW_BUILD/cgwd" -c "$TMP/cgw.yaml" -f 2>"$TMP/cgwd.log"
D_PID=$BG_PID
sleep "$WARMUP"
d_t0=$(ticks "$D_PID"); d_ms0=$(now_ms); d_n0=$(wc -l <"$TMP/sub.out")
sleep "$WINDOW"
d_t1=$(ticks "$D_PID"); d_ms1=$(now_ms); d_n1=$(wc -l <"$TMP/sub.out")
awk -v hz="$HZ" -v t=$((d_t1 - d_t0)) -v ms=$((d_ms1 - d_ms0)) -v n=$((d_n1 - d_n0)) \
	-v rss="$(rss_kb "$D_PID")" -v hwm="$(hwm_kb "$D_PID")" -v anon="$(anon_kb "$D_PID")" 'BEGIN {
	printf "  whole cgwd (drivers + core + store + MQTT uplink): CPU %.2f %% of one core, RSS %.1f MB (peak %.1f MB), private %.1f MB, %.0f messages/s to the subscriber\n",
		100 * (t / hz) / (ms / 1000), rss / 1024, hwm / 1024, anon / 1024, n / (ms / 1000) }'
echo "  whole cgwd memory: $(mem_breakdown "$D_PID")"
kill -TERM "$D_PID" 2>/dev/null
exit $rc
