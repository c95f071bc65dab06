#!/usr/bin/env bash
# The fault suite (bounded; FAULT_KILLS=20 FAULT_SECONDS=60 for the long run,
# `make test-faults`): things break on purpose and nothing acknowledged is lost.
#  1. cgwd is SIGKILLed at random moments under load and restarted: every
#     message reaches the subscriber once the link is up, ids stay unique per
#     message, per-device order is kept, the store stays intact.
#  2. the store hits its size cap with the platform down: telemetry is evicted,
#     status says so, an alarm raised meanwhile is still delivered.
#  3. a storm of malformed MQTT payloads and Modbus garbage while a fire alarm
#     is raised: the alarm is delivered, the bad input counted and quarantined.
#  4. the LAN broker goes away and comes back: ingest recovers, logged once.
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
SIM=$CGW_BUILD/cgw-sim
CTL=$CGW_BUILD/cgwctl
KILLS=${FAULT_KILLS:-3}
STORM_S=${FAULT_SECONDS:-5}
export CGW_PROFILES_DIR=$TOP/config/profiles
mq=$(free_port)   # platform broker
lan=$(free_port)  # LAN broker (MQTT devices)
mb=$(free_port)   # Modbus TCP simulator
mkdir -p "$TMP/state" "$TMP/mq"
cat >"$TMP/mosq.conf" <<C
listener $mq 127.0.0.1
allow_anonymous true
persistence true
persistence_location $TMP/mq/
user root
C
start_platform() { bg_start mosquitto -c "$TMP/mosq.conf" >>"$TMP/mosq.log" 2>&1; PLAT_PID=$BG_PID; wait_for 5 port_open "$mq"; }
start_lan() { printf 'listener %s 127.0.0.1\nallow_anonymous true\nuser root\n' "$lan" >"$TMP/lan.conf"; bg_start mosquitto -c "$TMP/lan.conf" >>"$TMP/lan.log" 2>&1; LAN_PID=$BG_PID; wait_for 5 port_open "$lan"; }
start_platform
start_lan
{
	echo "buses:"
	echo "  - {name: io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms}"
	echo "  - {name: lan, type: mqtt, url: \"mqtt://127.0.0.1:$lan\", stale_after: 1h}"
	echo "devices:"
	for u in $(seq 1 20); do
		echo "  - {id: smoke-$u, name: 烟感$u, profile: smoke-detector, bus: io, unit: $u, poll: 100ms}"
	done
	echo "  - {id: locker-1, name: 快递柜, profile: parcel-locker, bus: lan, topic: lockers/1}"
} >"$TMP/devices.yaml"
printf 'gateway: {id: sim, site: s, state_dir: %s}\ninclude: [devices.yaml]\n' "$TMP" >"$TMP/sim.yaml"
write_cfg() { # max_size
	cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-f, site: s, state_dir: $TMP/state}
include: [devices.yaml]
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
store: {max_size: $1}
uplinks: [{name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq", late_after: 1h}]
Y
}
write_cfg 512MB
bg_start "$SIM" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" </dev/null >"$TMP/sim.log" 2>&1
wait_for 5 test -S "$TMP/sim.sock" || not_ok "simulator starts"
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock"; }
for u in $(seq 1 20); do sim set smoke-$u temperature 20 >/dev/null; done
sim churn 100 >/dev/null # every register moves every second: a steady telemetry load
bg_start mosquitto_sub -p "$mq" -i fault-sub -c -q 1 -v -t 'cgw/#' >>"$TMP/sub.txt" 2>/dev/null
start_cgwd() { bg_start "$CGWD" -c "$TMP/cgw.yaml" -f 2>>"$TMP/cgwd.log"; CGWD_PID=$BG_PID; }

# ---- 1. SIGKILL under load -------------------------------------------------
start_cgwd
for i in $(seq "$KILLS"); do
	wait_for 10 test -S "$TMP/cgwd.sock"
	sleep "0.$((RANDOM % 9 + 1))" # a random moment is the point of this test
	kill -KILL "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
	start_cgwd
done
sim churn 0 >/dev/null
# churn moved every register, status words too: put the detectors back to normal
for u in $(seq 1 20); do sim set smoke-$u status 0 >/dev/null; done
check "after $KILLS SIGKILLs: the outbox drains completely" wait_for 60 bash -c \
	"[ \"\$(sqlite3 '$TMP/state/cgw.db' 'select count(*) from delivery' 2>/dev/null)\" = 0 ]"
check "the store passes integrity_check" bash -c "[ \"\$(sqlite3 '$TMP/state/cgw.db' 'pragma integrity_check')\" = ok ]"
# ids: one id is one message (a duplicate id carries the same payload)
dup_bad=$(grep -h '/telemetry \|/alarm \|/state ' "$TMP/sub.txt" | sed 's/^[^ ]* //' | sort -u |
	sed -n 's/^{"id":"\([^"]*\)".*/\1/p' | sort | uniq -d | wc -l)
check "no id names two different messages ($dup_bad)" test "$dup_bad" -eq 0
# per device, telemetry arrives in the order it was produced (seq and ts rising)
order_bad=$(grep -h '/telemetry ' "$TMP/sub.txt" | awk '{
	match($0, /"id":"gw-f:[0-9]+"/); seq = substr($0, RSTART + 11, RLENGTH - 12) + 0
	if (seen[seq]++) next
	dev = $1; if ((dev in last) && seq < last[dev]) bad++; last[dev] = seq } END { print bad + 0 }')
check "per-device order kept across the kills ($order_bad out of order)" test "$order_bad" -eq 0
n=$(grep -c '/telemetry ' "$TMP/sub.txt")
diag "$n telemetry messages delivered across $KILLS kills"

# ---- 2. the store at its cap while the platform is down ---------------------
kill -TERM "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
write_cfg 256KB
kill -TERM "$PLAT_PID"; wait "$PLAT_PID" 2>/dev/null
start_cgwd
sim churn 100 >/dev/null
check "at the cap: telemetry is evicted and status says so" wait_for 60 bash -c \
	"'$CTL' -s '$TMP/cgwd.sock' --json status | grep -q '\"evicted_telemetry\": *[1-9]'"
check "the eviction is logged once when it starts" wait_for 20 grep -q "evicting oldest telemetry" "$TMP/cgwd.log"
sim churn 0 >/dev/null
for u in $(seq 1 20); do sim set smoke-$u status 0 >/dev/null; done
# (smoke alarms latch, and churn already raised them: a fresh fire alarm is
# the heat rule: above 57 °C for 3 s, critical)
sim set smoke-7 temperature 80 >/dev/null
check "the alarm is committed at the cap" wait_for 10 bash -c \
	"sqlite3 '$TMP/state/cgw.db' \"select count(*) from alarms where device='smoke-7' and rule='overheat'\" | grep -q 1"
size=$(( $(stat -c %s "$TMP/state/cgw.db") + $(stat -c %s "$TMP/state/cgw.db-wal" 2>/dev/null || echo 0) ))
diag "store on disk: $size bytes for a 256KB cap"
: >"$TMP/sub.txt"
start_platform
check "the alarm raised at the cap is delivered when the platform returns" \
	wait_for 60 grep -q '/device/smoke-7/alarm .*"alarm":"overheat".*"event":"raised"' "$TMP/sub.txt"
check "the eviction episode was reported as a status message" \
	wait_for 30 grep -q '/status/event .*"store_evicting"' "$TMP/sub.txt"
sim set smoke-7 temperature 20 >/dev/null

# ---- 3. bad input storm while a fire alarm is raised --------------------------
kill -TERM "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
write_cfg 512MB
start_cgwd
wait_for 10 test -S "$TMP/cgwd.sock"
: >"$TMP/sub.txt"
sim garbage smoke-3 on >/dev/null
log_before=$(wc -l <"$TMP/cgwd.log")
end=$(($(date +%s) + STORM_S))
( while [ "$(date +%s)" -lt $end ]; do
	mosquitto_pub -p "$lan" -t lockers/1/status -m '{"mains": tru' 2>/dev/null
	mosquitto_pub -p "$lan" -t lockers/1/status -m '[1,2,3]' 2>/dev/null
	head -c 300 /dev/urandom | mosquitto_pub -p "$lan" -t lockers/1/door -s 2>/dev/null
done ) &
storm=$!
sleep 1 # the storm is under way
sim set smoke-12 temperature 90 >/dev/null
check "during the storm the fire alarm is delivered" \
	wait_for 30 grep -q '/device/smoke-12/alarm .*"alarm":"overheat".*"event":"raised"' "$TMP/sub.txt"
wait $storm
sim garbage smoke-3 off >/dev/null
check "cgwd survived the storm" kill -0 "$CGWD_PID"
q=$(sqlite3 "$TMP/state/cgw.db" "select count(*) from quarantine")
check "malformed payloads are quarantined ($q rows)" test "$q" -gt 0
bad=$("$CTL" -s "$TMP/cgwd.sock" --json devices | grep -o '"bad_payloads": *[0-9]*' | tr -dc '0-9\n'  | sort -n | tail -1)
check "malformed payloads are counted ($bad)" test "${bad:-0}" -gt 0
mosquitto_pub -p "$lan" -t lockers/1/status -m '{"mains":true,"battery":90,"occupied":3,"overdue":0,"tamper":false}'
check "the locker still flows after the storm" wait_for 10 grep -q '/device/locker-1/telemetry .*"battery":90' "$TMP/sub.txt"
lines=$(tail -n +$((log_before + 1)) "$TMP/cgwd.log" | grep -c "bad payload")
diag "bad-payload log lines during the storm: $lines, for ${bad:-0} bad payloads"
check "bad payloads are logged per episode, not per message ($lines lines)" test "$lines" -le 3

# ---- 4. the LAN broker goes away and comes back ------------------------------
kill -TERM "$LAN_PID"; wait "$LAN_PID" 2>/dev/null
check "LAN broker outage logged" wait_for 10 grep -q "mqtt-ingest.*lost\|mqtt-ingest.*cannot" "$TMP/cgwd.log"
start_lan
check "LAN broker back: reconnected" wait_for 30 bash -c "grep 'mqtt-ingest' '$TMP/cgwd.log' | tail -3 | grep -q 'connected'"
mosquitto_pub -p "$lan" -t lockers/1/status -m '{"mains":true,"battery":77,"occupied":3,"overdue":0,"tamper":false}'
check "messages flow again after the LAN broker returned" wait_for 10 grep -q '/device/locker-1/telemetry .*"battery":77' "$TMP/sub.txt"
done_testing
