#!/usr/bin/env bash
# Platform commands through the real processes (cgw-sim over Modbus TCP ->
# cgwd -> mosquitto): every command gets exactly one result, or is counted
# when it cannot be answered; refusals are logged once per episode, not per
# command; a replay after a flood of 200,000 refused commands is still a
# duplicate and does not run; a command on P/cmd/{id} acts on device {id}
# only.
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
SIM=$CGW_BUILD/cgw-sim
CTL=$CGW_BUILD/cgwctl
export CGW_PROFILES_DIR=$TOP/config/profiles
FLOOD=${FLOOD:-200000}
mq=$(free_port)
mb=$(free_port)
http=$(free_port)
# the flood must reach cgwd whole: no per-client queue limit on this broker
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nuser root\n' \
	"$mq" >"$TMP/mosquitto.conf"
bg_start mosquitto -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1
wait_for 5 port_open "$mq" || not_ok "mosquitto starts"
mkdir -p "$TMP/state"
cat >"$TMP/devices.yaml" <<Y
buses:
  - {name: fire-io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms, retries: 0}
devices:
  - {id: smoke-1, name: 一号烟感, profile: smoke-detector, bus: fire-io, unit: 3, poll: 200ms}
  - {id: smoke-2, name: 二号烟感, profile: smoke-detector, bus: fire-io, unit: 4, poll: 200ms}
  - {id: station-1, name: 微型消防站, profile: fire-station, bus: fire-io, unit: 1, poll: 200ms}
Y
cat >"$TMP/sim.yaml" <<Y
gateway: {id: sim, site: s, state_dir: $TMP}
include: [devices.yaml]
Y
cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-cmd, site: garden, state_dir: $TMP/state}
include: [devices.yaml]
control: {socket: $TMP/cgwd.sock}
metrics: {listen: "127.0.0.1:$http"}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq"}
Y
P=cgw/garden/gw-cmd
bg_start "$SIM" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" >"$TMP/sim.log" 2>&1 </dev/null
wait_for 15 test -S "$TMP/sim.sock" || { not_ok "simulator starts"; sed 's/^/# /' "$TMP/sim.log"; }
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock"; }
sim set station-1 hydrant_pressure 0.35 >/dev/null
# what a platform sees: results of our devices, alarms (not the flood's results)
bg_start mosquitto_sub -p "$mq" -v -q 1 -t "$P/cmd/smoke-1/result" -t "$P/cmd/smoke-2/result" \
	-t "$P/cmd/station-1/result" -t "$P/cmd/no-such-device/result" -t "$P/device/+/alarm" \
	>"$TMP/sub.txt" 2>/dev/null
bg_start "$CGWD" -c "$TMP/cgw.yaml" -f 2>"$TMP/cgwd.log"
CGWD_PID=$BG_PID
pub() { mosquitto_pub -p "$mq" -q 1 -t "$P/cmd/$1" -m "$2"; }
# result DEVICE ID: the result lines for command ID
result() { grep "^$P/cmd/$1/result .*\"command_id\":\"$2\"" "$TMP/sub.txt"; }
has_result() { result "$1" "$2" | grep -q "\"result\":\"$3\""; }
status_commands() { "$CTL" -s "$TMP/cgwd.sock" --json status | python3 -c "import json,sys; print(json.load(sys.stdin)['commands']['$1'])"; }
at_least() { [ "$(status_commands "$1")" -ge "$2" ]; }
export P TMP CTL
export -f result has_result
wait_for 15 bash -c "'$CTL' -s '$TMP/cgwd.sock' read station-1 tank_level >/dev/null 2>&1" ||
	not_ok "cgwd reads the devices"

# ---- duplicate: answered, with the first outcome; not executed again ----
pub station-1 '{"id":"w-1","action":"write","point":"pump_start","value":true}'
check "write: ok" wait_for 10 has_result station-1 w-1 ok
check "write: landed in the device" bash -c "[ \"\$(echo get station-1 pump_start | socat -t 2 - UNIX-CONNECT:'$TMP/sim.sock')\" = true ]"
sim set station-1 pump_start false >/dev/null
pub station-1 '{"id":"w-1","action":"write","point":"pump_start","value":true}'
check "a repeated id is answered duplicate" wait_for 10 has_result station-1 w-1 duplicate
check "the duplicate carries the first outcome" bash -c "result station-1 w-1 | grep duplicate | grep -q '\"first\":{[^}]*\"result\":\"ok\"'"
check "a repeated id is not executed again" bash -c "[ \"\$(echo get station-1 pump_start | socat -t 2 - UNIX-CONNECT:'$TMP/sim.sock')\" = false ]"
n=$(result station-1 w-1 | wc -l)
check "one result per received command (2 received, $n results)" test "$n" -eq 2

# ---- unknown device ----
pub no-such-device '{"id":"u-1","action":"read","point":"x"}'
check "unknown device: rejected with a reason" wait_for 10 bash -c "has_result no-such-device u-1 rejected && result no-such-device u-1 | grep -q 'unknown device'"

# ---- unknown action ----
pub station-1 '{"id":"x-1","action":"format-disk"}'
check "unknown action: rejected with a reason" wait_for 10 bash -c "has_result station-1 x-1 rejected && result station-1 x-1 | grep -q 'unknown action'"

# ---- malformed, with a readable id ----
pub station-1 '{"id":"m-1","action":"read","point":'
check "malformed JSON with a readable id: rejected with a reason" wait_for 10 bash -c "has_result station-1 m-1 rejected && result station-1 m-1 | grep -q 'not JSON'"
pub station-1 '{"id":"m-2","action":["read"]}'
check "a field of the wrong type: rejected with a reason" wait_for 10 bash -c "has_result station-1 m-2 rejected && result station-1 m-2 | grep -q 'action'"

# ---- oversized ----
big=$(python3 -c 'print("{\"id\":\"big-1\",\"action\":\"read\",\"point\":\"tank_level\",\"pad\":\"" + "x" * 20000 + "\"}")')
pub station-1 "$big"
check "oversized: rejected with a reason" wait_for 10 bash -c "has_result station-1 big-1 rejected && result station-1 big-1 | grep -q 'bytes'"

# ---- no id: nothing to answer to, counted ----
before=$(status_commands unanswered)
pub station-1 '{"action":"read","point":"tank_level"}'
pub station-1 'garbage'
check "commands without a readable id are counted (status)" wait_for 10 at_least unanswered $((before + 2))
check "and in the metrics" bash -c "curl -sf http://127.0.0.1:$http/metrics | grep -q '^cgw_commands_total{result=\"unanswered\"} [1-9]'"

# ---- a command on P/cmd/{id} acts on {id} only ----
sim set smoke-2 status 1 >/dev/null
check "smoke-2 alarm raised" wait_for 10 bash -c "grep '^$P/device/smoke-2/alarm ' '$TMP/sub.txt' | grep -q '\"event\":\"raised\"'"
aid=$(grep "^$P/device/smoke-2/alarm " "$TMP/sub.txt" | grep '"event":"raised"' | head -1 | sed -n 's/.*"alarm_id":"\([^"]*\)".*/\1/p')
pub smoke-1 "{\"id\":\"xd-1\",\"action\":\"ack\",\"alarm\":\"$aid\"}"
pub smoke-1 '{"id":"xd-2","action":"ack","alarm":"smoke-2/smoke"}'
check "an alarm id of another device is refused" wait_for 10 has_result smoke-1 xd-1 rejected
check "DEVICE/RULE of another device is refused" wait_for 10 has_result smoke-1 xd-2 rejected
pub smoke-2 '{"id":"own-1","action":"ack","alarm":"smoke"}'
wait_for 10 has_result smoke-2 own-1 ok
n=$(grep "^$P/device/smoke-2/alarm " "$TMP/sub.txt" | grep -c '"event":"acknowledged"')
check "smoke-2's alarm acknowledged once, by its own topic ($n)" test "$n" -eq 1
check "the audit has no ack of smoke-2 by smoke-1" \
	test "$(sqlite3 "$TMP/state/cgw.db" "select count(*) from audit where device='smoke-1' and result='ok'")" -eq 0

# ---- refusals of every kind, many of them: one episode in the log ----
for i in $(seq 50); do echo "{\"id\":\"burst-$i\",\"action\":\"format-disk\"}"; done |
	mosquitto_pub -p "$mq" -q 1 -t "$P/cmd/station-1" -l
check "50 unknown actions: 50 results" wait_for 15 bash -c "[ \$(grep -c '\"command_id\":\"burst-' '$TMP/sub.txt') -eq 50 ]"
n=$(grep -c 'burst-' "$TMP/cgwd.log")
check "50 unknown actions: not a log line each ($n lines)" test "$n" -le 1

# ---- a flood of refused commands does not flush the replay protection ----
before=$(status_commands rejected)
t0=$(date +%s%N)
python3 -c "
import sys
w = sys.stdout.write
for i in range($FLOOD):
    w('{\"id\":\"junk-%d\",\"action\":\"write\",\"point\":\"pump_start\",\"value\":true}\n' % i)
" | mosquitto_pub -p "$mq" -q 0 -t "$P/cmd/no-such-device" -l
check "$FLOOD refused commands for an unknown device are all answered" \
	wait_for 120 at_least rejected $((before + FLOOD))
diag "flood of $FLOOD refused commands handled in $((($(date +%s%N) - t0) / 1000000)) ms"
audit=$(sqlite3 "$TMP/state/cgw.db" "select count(*) from audit where device='no-such-device'")
check "refused commands for an unknown device are sampled, not each audited ($audit rows)" test "$audit" -lt 100
# the store trims at its maintenance pass, every 10 s: the replay comes after one
sleep 11
pub station-1 '{"id":"w-1","action":"write","point":"pump_start","value":true}'
check "the replay after the flood is answered duplicate" wait_for 10 bash -c "[ \$(result station-1 w-1 | grep -c duplicate) -eq 2 ]"
check "the replayed write did not run again" bash -c "[ \"\$(echo get station-1 pump_start | socat -t 2 - UNIX-CONNECT:'$TMP/sim.sock')\" = false ]"

lines=$(grep -c "refused" "$TMP/cgwd.log")
grep "refused" "$TMP/cgwd.log" | head -5 | sed 's/^/# /'
check "every refusal above (more than $FLOOD, of every kind) is logged in at most 4 lines, not one per command ($lines)" \
	test "$lines" -le 4
n=$(grep -c "no-such-device\|junk-" "$TMP/cgwd.log")
check "the flood of $FLOOD commands for an unknown device: at most 2 log lines ($n)" test "$n" -le 2
check "the refusal lines carry a count" grep -q "refused so far" "$TMP/cgwd.log"
done_testing
