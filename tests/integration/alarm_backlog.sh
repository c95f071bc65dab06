#!/usr/bin/env bash
# Alarms first: with a large telemetry backlog queued and the broker just
# back, a fire alarm raised on a simulated detector reaches the subscriber
# before the backlog has drained (it does not queue behind it).
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
SIM=$CGW_BUILD/cgw-sim
N=${BACKLOG_N:-200000}
export CGW_PROFILES_DIR=$TOP/config/profiles
mq=$(free_port)
mb=$(free_port)
mkdir -p "$TMP/state"
cat >"$TMP/devices.yaml" <<Y
buses: [{name: fire-io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms}]
devices:
  - {id: smoke-1, name: 3号楼3层东侧楼梯间烟感, profile: smoke-detector, bus: fire-io, unit: 3, poll: 100ms}
Y
printf 'gateway: {id: sim, site: s, state_dir: %s}\ninclude: [devices.yaml]\n' "$TMP" >"$TMP/sim.yaml"
cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-bl, site: s, state_dir: $TMP/state}
include: [devices.yaml]
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
uplinks: [{name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq"}]
Y
bg_start "$SIM" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" </dev/null >"$TMP/sim.log" 2>&1
wait_for 5 test -S "$TMP/sim.sock" || not_ok "simulator starts"
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock" >/dev/null; }

# the backlog: the broker is down while it builds up
"$CGW_BUILD/tools/outbox_fill" "$TMP/state/cgw.db" platform "$N" 50 || not_ok "backlog queued"
bg_start "$CGWD" -c "$TMP/cgw.yaml" -f 2>"$TMP/cgwd.log"
check "cgwd runs with the broker down" wait_for 10 grep -q "cannot connect" "$TMP/cgwd.log"

# the broker comes back; the subscriber sees the drain begin
start_mosquitto "$mq"
bg_start mosquitto_sub -p "$mq" -q 1 -v -t 'cgw/#' >"$TMP/sub.txt" 2>/dev/null
check "the backlog starts to drain" wait_for 30 bash -c "[ \$(grep -c '/telemetry ' '$TMP/sub.txt') -ge 1000 ]"
before=$(grep -c '/telemetry ' "$TMP/sub.txt")
t0=$(date +%s%N)
sim set smoke-1 status 1
check "the fire alarm arrives" wait_for 60 grep -q '/device/smoke-1/alarm .*"event":"raised"' "$TMP/sub.txt"
ms=$((($(date +%s%N) - t0) / 1000000))
pos=$(grep -n '/device/smoke-1/alarm ' "$TMP/sub.txt" | head -1 | cut -d: -f1)
tele_before=$(head -n "$pos" "$TMP/sub.txt" | grep -c '/telemetry ')
diag "alarm raised after $before telemetry had arrived; it arrived after $tele_before of $N telemetry, $ms ms after the register changed (poll 100 ms)"
check "the alarm overtook the backlog ($tele_before of $N telemetry ahead of it)" test "$tele_before" -lt "$N"
# how fast is a figure for `make bench`, not a pass/fail here
done_testing
