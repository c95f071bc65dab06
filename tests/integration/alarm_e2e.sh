#!/usr/bin/env bash
# End to end through the real processes: a simulated smoke detector and fire
# station (cgw-sim, Modbus TCP on loopback) -> cgwd -> mosquitto -> subscriber.
# Alarm raised -> acknowledged through the command topic -> cleared, the same
# alarm never raised twice; platform commands (write lands in the device,
# refusals, redelivery executed once, read); a silent device goes offline and
# comes back; alarms survive a restart without being raised again.
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
SIM=$CGW_BUILD/cgw-sim
export CGW_PROFILES_DIR=$TOP/config/profiles
mq=$(free_port)
mb=$(free_port)
start_mosquitto "$mq" || not_ok "mosquitto starts"
mkdir -p "$TMP/state"
cat >"$TMP/devices.yaml" <<Y
buses:
  - {name: fire-io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms, retries: 0, offline_after: 2}
devices:
  - id: smoke-b3-3f-01
    name: 3号楼3层东侧楼梯间烟感
    profile: smoke-detector
    bus: fire-io
    unit: 3
    poll: 200ms
    location: {building: "3", floor: "3", room: 东侧楼梯间}
  - id: station-b3
    name: 3号楼微型消防站
    profile: fire-station
    bus: fire-io
    unit: 1
    poll: 200ms
    location: {building: "3", floor: "1"}
Y
cat >"$TMP/sim.yaml" <<Y
gateway: {id: sim, site: s, state_dir: $TMP}
include: [devices.yaml]
Y
cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-e2e, site: garden, state_dir: $TMP/state}
include: [devices.yaml]
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq"}
Y
P=cgw/garden/gw-e2e
bg_start "$SIM" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" >"$TMP/sim.log" 2>&1 </dev/null
wait_for 5 test -S "$TMP/sim.sock" || { not_ok "simulator starts"; sed "s/^/# /" "$TMP/sim.log"; }
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock"; }
sim set station-b3 hydrant_pressure 0.35 >/dev/null
sim set station-b3 sprinkler_pressure 0.4 >/dev/null
sim set station-b3 tank_level 3 >/dev/null
sim set station-b3 extinguisher_1 true >/dev/null
sim set station-b3 extinguisher_2 true >/dev/null
sim set smoke-b3-3f-01 temperature 23.5 >/dev/null

bg_start mosquitto_sub -p "$mq" -v -q 1 -t 'cgw/#' >"$TMP/sub.txt" 2>/dev/null
start_cgwd() { bg_start "$CGWD" -c "$TMP/cgw.yaml" -f --log-level debug 2>>"$TMP/cgwd.log"; CGWD_PID=$BG_PID; }
start_cgwd
pub() { mosquitto_pub -p "$mq" -q 1 -t "$1" -m "$2"; }
alarms() { grep "^$P/device/smoke-b3-3f-01/alarm " "$TMP/sub.txt"; }

check "telemetry of the smoke detector arrives, values decoded" \
	wait_for 15 grep -q "^$P/device/smoke-b3-3f-01/telemetry .*\"temperature\":23.5" "$TMP/sub.txt"
check "telemetry carries the enum word" grep -q "^$P/device/smoke-b3-3f-01/telemetry .*\"status\":\"normal\"" "$TMP/sub.txt"
check "device state is retained online" wait_for 5 grep -q "^$P/device/smoke-b3-3f-01/state .*\"state\":\"online\"" "$TMP/sub.txt"

# ---- fire: raised, in plain words, with location ----
t0=$(date +%s%N)
sim set smoke-b3-3f-01 status 1 >/dev/null
check "smoke alarm raised on the platform topic" wait_for 10 bash -c "grep '^$P/device/smoke-b3-3f-01/alarm ' '$TMP/sub.txt' | grep -q '\"event\":\"raised\"'"
diag "register change -> subscriber: $((($(date +%s%N) - t0) / 1000000)) ms (poll 200 ms)"
line=$(alarms | grep '"event":"raised"' | head -1)
check "alarm says where in plain words" grep -q '"message":"3号楼3层东侧楼梯间烟感 烟感报警"' <<<"$line"
check "alarm carries state, severity, location, raised_at, id" bash -c "grep -q '\"state\":\"active-unacked\"' <<<'$line' && grep -q '\"severity\":\"critical\"' <<<'$line' && grep -q '\"location\":{' <<<'$line' && grep -q '\"raised_at\":' <<<'$line' && grep -q '\"id\":\"gw-e2e:' <<<'$line'"
aid=$(sed -n 's/.*"alarm_id":"\([^"]*\)".*/\1/p' <<<"$line")
diag "alarm_id $aid"

# ---- acknowledged through the command topic ----
pub "$P/cmd/smoke-b3-3f-01" '{"id":"ack-1","action":"ack","alarm":"smoke","by":"duty-room"}'
check "ack: command result ok" wait_for 10 grep -q "^$P/cmd/smoke-b3-3f-01/result .*\"command_id\":\"ack-1\".*\"result\":\"ok\"" "$TMP/sub.txt"
check "ack: acknowledged message, same alarm_id" wait_for 10 bash -c "grep '^$P/device/smoke-b3-3f-01/alarm ' '$TMP/sub.txt' | grep '\"event\":\"acknowledged\"' | grep -q '\"alarm_id\":\"$aid\"'"

# ---- clears ----
sim set smoke-b3-3f-01 status 0 >/dev/null
check "cleared message, state normal, same alarm_id" wait_for 10 bash -c "grep '^$P/device/smoke-b3-3f-01/alarm ' '$TMP/sub.txt' | grep '\"event\":\"cleared\"' | grep '\"state\":\"normal\"' | grep -q '\"alarm_id\":\"$aid\"'"
n=$(alarms | grep '"alarm":"smoke"' | grep -c '"event":"raised"')
check "the smoke alarm was raised exactly once (got $n)" test "$n" -eq 1

# ---- commands ----
pub "$P/cmd/station-b3" '{"id":"w-1","action":"write","point":"pump_start","value":true}'
check "write: result ok" wait_for 10 grep -q "^$P/cmd/station-b3/result .*\"command_id\":\"w-1\".*\"result\":\"ok\"" "$TMP/sub.txt"
check "write: the value landed in the device" bash -c "[ \"\$(echo get station-b3 pump_start | socat -t 2 - UNIX-CONNECT:'$TMP/sim.sock')\" = true ]"
pub "$P/cmd/station-b3" '{"id":"w-2","action":"write","point":"hydrant_pressure","value":2}'
check "write to a point not marked writable is refused" wait_for 10 grep -q "^$P/cmd/station-b3/result .*\"command_id\":\"w-2\".*\"result\":\"rejected\".*not writable" "$TMP/sub.txt"
pub "$P/cmd/station-b3" '{"id":"x-1","action":"format-disk"}'
check "an unknown action is refused" wait_for 10 grep -q "^$P/cmd/station-b3/result .*\"command_id\":\"x-1\".*\"result\":\"rejected\"" "$TMP/sub.txt"
pub "$P/cmd/station-b3" '{"id":"r-1","action":"read","point":"hydrant_pressure"}'
wait_for 10 grep -q "\"command_id\":\"r-1\"" "$TMP/sub.txt"; grep "\"command_id\":\"r-1\"" "$TMP/sub.txt" | sed "s/^/# /"
check "read: the latest value" wait_for 10 grep -q "^$P/cmd/station-b3/result .*\"command_id\":\"r-1\".*\"value\":0.35" "$TMP/sub.txt"
# redelivery of an executed command: once only
sim set station-b3 pump_start false >/dev/null
pub "$P/cmd/station-b3" '{"id":"w-1","action":"write","point":"pump_start","value":true}'
pub "$P/cmd/station-b3" '{"id":"w-3","action":"read","point":"tank_level"}'
wait_for 10 grep -q '"command_id":"w-3"' "$TMP/sub.txt"
n=$(grep '"command_id":"w-1"' "$TMP/sub.txt" | grep -v '"result":"duplicate"' | grep -c '"result":"ok"')
check "a redelivered command id is executed once (ok results: $n)" test "$n" -eq 1
check "the redelivery is answered duplicate" wait_for 10 bash -c "grep '\"command_id\":\"w-1\"' '$TMP/sub.txt' | grep -q '\"result\":\"duplicate\"'"
check "a redelivered write is not written again" bash -c "[ \"\$(echo get station-b3 pump_start | socat -t 2 - UNIX-CONNECT:'$TMP/sim.sock')\" = false ]"
check "every command is in the audit" bash -c "[ \$(sqlite3 '$TMP/state/cgw.db' 'select count(*) from audit') -ge 5 ]"

# ---- a silent device goes offline and comes back ----
sim silence smoke-b3-3f-01 on >/dev/null
check "silent device: offline alarm" wait_for 15 bash -c "grep '^$P/device/smoke-b3-3f-01/alarm ' '$TMP/sub.txt' | grep '\"alarm\":\"offline\"' | grep -q '\"event\":\"raised\"'"
check "silent device: retained state offline" wait_for 5 grep -q "^$P/device/smoke-b3-3f-01/state .*\"state\":\"offline\"" "$TMP/sub.txt"
check "telemetry marks the values stale, not re-stamped" wait_for 5 grep -q "^$P/device/smoke-b3-3f-01/telemetry .*\"quality\":{.*\"stale\"" "$TMP/sub.txt"
sim silence smoke-b3-3f-01 off >/dev/null
check "device back: offline alarm cleared" wait_for 15 bash -c "grep '^$P/device/smoke-b3-3f-01/alarm ' '$TMP/sub.txt' | grep '\"alarm\":\"offline\"' | grep -q '\"event\":\"cleared\"'"

# ---- restart: an active alarm is restored, not raised again ----
sim set smoke-b3-3f-01 status 2 >/dev/null
check "fault alarm raised" wait_for 10 bash -c "grep '^$P/device/smoke-b3-3f-01/alarm ' '$TMP/sub.txt' | grep '\"alarm\":\"fault\"' | grep -q '\"event\":\"raised\"'"
kill -TERM "$CGWD_PID"; wait "$CGWD_PID"
start_cgwd
wait_for 10 grep -c "started" "$TMP/cgwd.log" >/dev/null
sleep 1.5 # several poll cycles with the fault still present: nothing may be raised again
n=$(alarms | grep '"alarm":"fault"' | grep -c '"event":"raised"')
check "after a restart the active alarm is not raised again (raised: $n)" test "$n" -eq 1
sim set smoke-b3-3f-01 status 0 >/dev/null
check "the restored alarm clears with its own id" wait_for 10 bash -c "grep '^$P/device/smoke-b3-3f-01/alarm ' '$TMP/sub.txt' | grep '\"alarm\":\"fault\"' | grep -q '\"event\":\"cleared\"'"
done_testing
