#!/usr/bin/env bash
# The shipped Modbus profiles on their simulated devices, end to end through
# cgwd to the platform topics: door-io (forced open vs. a door opened with the
# exit button or after an unlock command, tamper), camera-relay (intrusion,
# video loss), fire-station (pressure thresholds with on_delay, a writable pump
# coil). The smoke detector is covered by alarm_e2e.sh; the MQTT profiles by
# mqtt_ingest.sh.
. "$(dirname "$0")/../lib.sh"
export CGW_PROFILES_DIR=$TOP/config/profiles
mq=$(free_port); mb=$(free_port)
start_mosquitto "$mq"
mkdir -p "$TMP/state"
cat >"$TMP/devices.yaml" <<Y
buses: [{name: io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms}]
devices:
  - {id: door-a, name: 1号楼东门, profile: door-io, bus: io, unit: 2, poll: 100ms, location: {building: "1"}}
  - {id: door-b, name: 1号楼西门, profile: door-io, bus: io, unit: 3, poll: 100ms}
  - {id: door-c, name: 1号楼北门, profile: door-io, bus: io, unit: 5, poll: 100ms}
  - {id: cam-1, name: 北门摄像机, profile: camera-relay, bus: io, unit: 4, poll: 100ms}
  - {id: station, name: 3号楼微型消防站, profile: fire-station, bus: io, unit: 1, poll: 100ms}
Y
printf 'gateway: {id: sim, site: s, state_dir: %s}\ninclude: [devices.yaml]\n' "$TMP" >"$TMP/sim.yaml"
cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-p, site: s, state_dir: $TMP/state}
include: [devices.yaml]
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
uplinks: [{name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq"}]
Y
bg_start "$CGW_BUILD/cgw-sim" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" </dev/null >"$TMP/sim.log" 2>&1
wait_for 5 test -S "$TMP/sim.sock" || not_ok "simulator starts"
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock"; }
for p in hydrant_pressure sprinkler_pressure; do sim set station $p 0.35 >/dev/null; done
sim set station tank_level 3 >/dev/null
sim set station extinguisher_1 true >/dev/null
sim set station extinguisher_2 true >/dev/null
bg_start mosquitto_sub -p "$mq" -q 1 -v -t 'cgw/#' >"$TMP/sub.txt" 2>/dev/null
bg_start "$CGW_BUILD/cgwd" -c "$TMP/cgw.yaml" -f 2>"$TMP/cgwd.log"
raised() { grep "/device/$1/alarm .*\"alarm\":\"$2\".*\"event\":\"raised\"" "$TMP/sub.txt"; }
has_raised() { raised "$@" >/dev/null; }
export -f raised; export TMP
check "all five devices online" wait_for 15 bash -c "[ \$(grep -c '/state .*\"online\"' '$TMP/sub.txt') -ge 5 ]"

# door-io: opened with nothing before it -> forced open, critical
sim set door-a door_open true >/dev/null
check "door-io: a door opened with no exit button or unlock is forced open" wait_for 10 has_raised door-a forced_open
check "door-io: forced open is critical and says where" bash -c "raised door-a forced_open | grep -q '\"severity\":\"critical\".*1号楼东门 门被强行打开'"
# door-io: exit button first, then the door opens -> no alarm
sim set door-b exit_button true >/dev/null
check "door-io: the exit button press is seen" wait_for 10 grep -q '/device/door-b/telemetry .*"exit_button":true' "$TMP/sub.txt"
sim set door-b exit_button false >/dev/null
sim set door-b door_open true >/dev/null
check "door-io: the door opening after it is seen" wait_for 10 grep -q '/device/door-b/telemetry .*"door_open":true' "$TMP/sub.txt"
# door-io: a remote unlock (write to the relay coil), then the door opens -> no alarm
mosquitto_pub -p "$mq" -q 1 -t cgw/s/gw-p/cmd/door-c -m '{"id":"u1","action":"write","point":"lock_relay","value":true}'
check "door-io: remote unlock accepted" wait_for 10 grep -q '/cmd/door-c/result .*"command_id":"u1".*"result":"ok"' "$TMP/sub.txt"
check "door-io: the relay coil is on in the device" bash -c "[ \"\$(echo get door-c lock_relay | socat -t 2 - UNIX-CONNECT:'$TMP/sim.sock')\" = true ]"
wait_for 10 grep -q '/device/door-c/telemetry .*"lock_relay":true' "$TMP/sub.txt"
sim set door-c door_open true >/dev/null
check "door-io: the door opening after the unlock is seen" wait_for 10 grep -q '/device/door-c/telemetry .*"door_open":true' "$TMP/sub.txt"
# give the engine the same time it had for door-a; nothing may have been raised
wait_for 5 grep -q "/device/cam-1/telemetry" "$TMP/sub.txt"
check "door-io: no forced open after an exit button" bash -c "! raised door-b forced_open"
check "door-io: no forced open after a remote unlock" bash -c "! raised door-c forced_open"
sim set door-a tamper true >/dev/null
check "door-io: tamper" wait_for 10 has_raised door-a tamper

# camera-relay
sim set cam-1 intrusion true >/dev/null
check "camera-relay: intrusion is a critical alarm" wait_for 10 bash -c "raised cam-1 intrusion | grep -q '\"severity\":\"critical\"'"
sim set cam-1 video_loss true >/dev/null
check "camera-relay: video loss after its 5 s on_delay" wait_for 15 has_raised cam-1 video_loss

# fire-station: low pressure (below 0.15 MPa for 5 s), high pressure, call point
sim set station hydrant_pressure 0.11 >/dev/null
check "fire-station: hydrant pressure low" wait_for 15 bash -c "raised station hydrant_low | grep -q '消火栓水压低 0.11MPa'"
sim set station sprinkler_pressure 1.2 >/dev/null
check "fire-station: sprinkler pressure high" wait_for 15 has_raised station sprinkler_high
sim set station call_point true >/dev/null
check "fire-station: manual call point is a critical fire alarm" wait_for 10 bash -c "raised station call_point | grep -q '\"severity\":\"critical\"'"
sim set station hydrant_pressure 0.35 >/dev/null
check "fire-station: pressure back: hydrant_low clears" wait_for 15 grep -q '/device/station/alarm .*"alarm":"hydrant_low".*"event":"cleared"' "$TMP/sub.txt"
done_testing
