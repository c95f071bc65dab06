#!/usr/bin/env bash
# Uplink throughput (issue 7): backlog drain rate through cgwd's MQTT uplink
# to a subscriber on a local mosquitto, beside a mosquitto bridge (no
# storage) forwarding the same number of messages of the same size in the
# same run. Prints figures and the ratio.
. "$(dirname "$0")/../lib.sh"
N=${BENCH_UPLINK_N:-200000}
CGWD=$CGW_BUILD/cgwd
ms_now() { echo $(($(date +%s%N) / 1000000)); }
count() { local n; n=$(grep -c "$1" "$2" 2>/dev/null); echo "${n:-0}"; }
wait_count() { # pattern file n timeout_s
	local deadline=$(($(date +%s) + $4))
	while [ "$(count "$1" "$2")" -lt "$3" ]; do
		[ "$(date +%s)" -ge $deadline ] && return 1
		sleep 0.05
	done
}

# --- cgwd: drain a backlog of N telemetry messages ---
# every broker in this bench: no queue limit (the default 1000 drops QoS 1
# messages of a slow consumer) and TCP_NODELAY, the same for both sides
BROKER_OPTS='user root\nmax_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\n'
p1=$(free_port)
printf "listener %s 127.0.0.1\nallow_anonymous true\n$BROKER_OPTS" "$p1" >"$TMP/p1.conf"
bg_start mosquitto -c "$TMP/p1.conf" >/dev/null 2>&1; wait_for 5 port_open "$p1"
mkdir -p "$TMP/state"
cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-bench, site: s, state_dir: $TMP/state}
metrics: {enabled: false}
control: {socket: $TMP/sock}
uplinks: [{name: platform, type: mqtt, url: "mqtt://127.0.0.1:$p1", inflight: 500}]
Y
"$CGW_BUILD/tools/outbox_fill" "$TMP/state/cgw.db" platform "$N" 50
bg_start mosquitto_sub -p "$p1" -q 1 -v -t 'cgw/+/+/device/#' >"$TMP/sub1" 2>/dev/null
sleep 0.3
t0=$(ms_now)
bg_start "$CGWD" -c "$TMP/cgw.yaml" -f 2>"$TMP/cgwd.log"
pid=$BG_PID
wait_count telemetry "$TMP/sub1" "$N" 120 || echo "cgwd: only $(count telemetry "$TMP/sub1") of $N arrived"
t1=$(ms_now)
cpu=$(awk '{print $14 + $15}' /proc/$pid/stat)
rss=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
kill -TERM $pid
cg_ms=$((t1 - t0))
size=$(head -1 "$TMP/sub1" | cut -d' ' -f2- | wc -c)

# --- reference: mosquitto bridge A -> B, same count and size, QoS 1 ---
pa=$(free_port); pb=$(free_port)
printf "listener %s 127.0.0.1\nallow_anonymous true\n$BROKER_OPTS" "$pb" >"$TMP/b.conf"
bg_start mosquitto -c "$TMP/b.conf" >/dev/null 2>&1; wait_for 5 port_open "$pb"
printf "listener %s 127.0.0.1\nallow_anonymous true\n${BROKER_OPTS}connection br\naddress 127.0.0.1:%s\ntopic ref/# out 1\n" "$pa" "$pb" >"$TMP/a.conf"
bg_start mosquitto -c "$TMP/a.conf" >/dev/null 2>&1; wait_for 5 port_open "$pa"
bg_start mosquitto_sub -p "$pb" -q 1 -t 'ref/#' >"$TMP/sub2" 2>/dev/null
sleep 1 # the bridge connects by itself; nothing to poll for
t0=$(ms_now)
"$CGW_BUILD/tools/mq_flood" "$pa" ref/dev/telemetry "$N" $((size - 1)) 500
wait_count x "$TMP/sub2" "$N" 120 || echo "bridge: only $(count x "$TMP/sub2") of $N arrived"
t1=$(ms_now)
br_ms=$((t1 - t0))

rate() { echo $((N * 1000 / ($1 > 0 ? $1 : 1))); }
echo "messages:                 $N of ~$size bytes, QoS 1, 50 devices"
echo "cgwd backlog drain:       $(rate $cg_ms) msg/s ($cg_ms ms; store -> PUBACK -> delete -> subscriber)"
echo "mosquitto bridge (ref):   $(rate $br_ms) msg/s ($br_ms ms; QoS 1 publisher, window 500 -> bridge -> subscriber, no storage)"
echo "ratio cgwd / bridge:      $(awk -v a="$br_ms" -v b="$cg_ms" 'BEGIN{printf "%.2f", a / b}')   (target >= 0.5)"
echo "cgwd CPU for the drain:   $(awk -v t="$cpu" -v ms="$cg_ms" 'BEGIN{printf "%.0f%% of one core", t * 1000 / ms}')  (clock ticks at 100 Hz)"
echo "cgwd peak RSS:            ${rss} kB"
