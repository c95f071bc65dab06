#!/usr/bin/env bash
# Alarm latency end to end (issue 7): from the simulated device's register
# change to the subscriber, p50/p99, idle and while a 1,000,000-message
# telemetry backlog drains. Target: p99 within poll interval + 50 ms in both.
# Poll interval here: 100 ms. Each of 40 detectors raises its fault alarm
# once (one detector per sample, so chatter suppression never applies).
. "$(dirname "$0")/../lib.sh"
N_BACKLOG=${BENCH_BACKLOG_N:-1000000}
SAMPLES=20
POLL_MS=100
mq=$(free_port); mb=$(free_port)
export CGW_PROFILES_DIR=$TOP/config/profiles
mkdir -p "$TMP/state"
{
	echo "buses: [{name: io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms}]"
	echo "devices:"
	for u in $(seq 1 $((2 * SAMPLES))); do
		echo "  - {id: smoke-$u, name: 烟感$u, profile: smoke-detector, bus: io, unit: $u, poll: ${POLL_MS}ms}"
	done
} >"$TMP/devices.yaml"
printf 'gateway: {id: sim, site: s, state_dir: %s}\ninclude: [devices.yaml]\n' "$TMP" >"$TMP/sim.yaml"
cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-lat, site: s, state_dir: $TMP/state}
include: [devices.yaml]
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
uplinks: [{name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq", inflight: 200}]
Y
start_mosquitto "$mq"
bg_start "$CGW_BUILD/cgw-sim" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" </dev/null >/dev/null 2>&1
wait_for 5 test -S "$TMP/sim.sock"
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock" >/dev/null; }
bg_start mosquitto_sub -p "$mq" -q 1 -F '%U %t %p' -t 'cgw/+/+/device/+/alarm' >"$TMP/alarms.txt" 2>/dev/null

measure() { # first-unit label -> prints p50/p99
	local first=$1 label=$2 lat=()
	for u in $(seq "$first" $((first + SAMPLES - 1))); do
		local t0
		t0=$(date +%s.%N)
		sim set smoke-$u status 2
		wait_for 10 grep -q "/smoke-$u/alarm .*\"alarm\":\"fault\".*\"event\":\"raised\"" "$TMP/alarms.txt" || { echo "smoke-$u: no alarm"; continue; }
		local t1
		t1=$(grep "/smoke-$u/alarm .*\"alarm\":\"fault\".*\"event\":\"raised\"" "$TMP/alarms.txt" | head -1 | cut -d' ' -f1)
		lat+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b - a) * 1000}')")
		sleep 0.$((RANDOM % 3 + 1)) # spread the samples over the poll phase
	done
	printf '%s\n' "${lat[@]}" | sort -n | awk -v label="$label" -v poll="$POLL_MS" '
		{ v[NR] = $1 } END {
			p50 = v[int((NR + 1) * 0.5)]; p99 = v[NR > 1 ? int(NR * 0.99 + 0.5) : 1]
			printf "%-40s p50 %6.1f ms  p99 %6.1f ms  max %6.1f ms  (n=%d; target p99 <= %d ms)\n",
				label, p50, p99, v[NR], NR, poll + 50 }'
}

bg_start "$CGW_BUILD/cgwd" -c "$TMP/cgw.yaml" -f 2>"$TMP/cgwd.log"
pid=$BG_PID
wait_for 10 grep -q "connected to" "$TMP/cgwd.log"
sleep 1 # devices come online
measure 1 "idle:"
kill -TERM $pid; wait $pid 2>/dev/null

# the backlog: built while cgwd is down, drained when it starts
"$CGW_BUILD/tools/outbox_fill" "$TMP/state/cgw.db" platform "$N_BACKLOG" 50
bg_start mosquitto_sub -p "$mq" -q 1 -t 'cgw/+/+/device/+/telemetry' -F '%U' >"$TMP/tele.txt" 2>/dev/null
bg_start "$CGW_BUILD/cgwd" -c "$TMP/cgw.yaml" -f 2>>"$TMP/cgwd.log"
pid=$BG_PID
wait_for 30 test -s "$TMP/tele.txt"
measure $((SAMPLES + 1)) "during a ${N_BACKLOG}-message drain:"
got=$(wc -l <"$TMP/tele.txt")
echo "telemetry delivered by the time the last sample arrived: $got (backlog $N_BACKLOG)"
