#!/usr/bin/env bash
# MQTT uplink against a real mosquitto on loopback: completeness and per-device
# order of a large backlog, a broker outage under load (nothing lost, backlog
# drains, late messages carry "delayed": true), retained birth and will.
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
FILL=$CGW_BUILD/tools/outbox_fill
N=${UPLINK_TEST_N:-100000}
export CGW_PROFILES_DIR=$TOP/config/profiles

port=$(free_port)
mkdir -p "$TMP/state" "$TMP/mq"
# persistence so that a restart keeps the subscriber's session and queue
cat >"$TMP/mosq.conf" <<C
listener $port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $TMP/mq/
user root
max_queued_messages 0
C
start_broker() { bg_start mosquitto -c "$TMP/mosq.conf" >>"$TMP/mosq.log" 2>&1; MOSQ_PID=$BG_PID; wait_for 5 port_open "$port"; }
start_broker || not_ok "mosquitto starts"

cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-up, site: s, state_dir: $TMP/state}
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$port", late_after: 2s, inflight: 200}
Y
# the subscriber: persistent session, QoS 1, so nothing is lost while the broker restarts
sub() { bg_start mosquitto_sub -h 127.0.0.1 -p "$port" -i test-sub -c -q 1 -v -t 'cgw/#' >>"$TMP/sub.txt" 2>/dev/null; SUB_PID=$BG_PID; }
sub
wait_for 5 grep -q "test-sub" "$TMP/mosq.log" || sleep 0.5

"$FILL" "$TMP/state/cgw.db" platform "$N" 50 || not_ok "outbox filled"
t0=$(date +%s%N)
bg_start "$CGWD" -c "$TMP/cgw.yaml" -f 2>"$TMP/cgwd.log"
CGWD_PID=$BG_PID
count() { grep -c '/telemetry ' "$TMP/sub.txt" 2>/dev/null || echo 0; }
check "birth message: retained online status" wait_for 10 grep -q '^cgw/s/gw-up/status {.*"state":"online"' "$TMP/sub.txt"
check "all $N backlog messages arrive" wait_for 120 bash -c "[ \$(grep -c '/telemetry ' '$TMP/sub.txt') -ge $N ]"
ms=$((($(date +%s%N) - t0) / 1000000))
diag "drained $N messages in $ms ms ($((N * 1000 / (ms > 0 ? ms : 1))) msg/s, including start-up)"
res=$(awk -v N="$N" -f "$TOP/tests/integration/check_stream.awk" "$TMP/sub.txt")
diag "$res"
check "none missing, per-device order kept, duplicates only with the same id" quiet \
	awk -v N="$N" -f "$TOP/tests/integration/check_stream.awk" "$TMP/sub.txt"
check "the outbox is empty after the PUBACKs" wait_for 10 bash -c \
	"[ \"\$(sqlite3 '$TMP/state/cgw.db' 'select count(*) from delivery' 2>/dev/null || sqlite3 '$TMP/state/cgw.db' 'select 1')\" = 0 ]"

# ---- broker outage under load ----------------------------------------------
: >"$TMP/sub.txt"
kill -TERM "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
M=$((N / 2))
"$FILL" "$TMP/state/cgw.db" platform "$M" 50
bg_start "$CGWD" -c "$TMP/cgw.yaml" -f 2>>"$TMP/cgwd.log"
CGWD_PID=$BG_PID
wait_for 30 bash -c "[ \$(grep -c '/telemetry ' '$TMP/sub.txt') -ge 2000 ]"
kill -TERM "$MOSQ_PID"; wait "$MOSQ_PID" 2>/dev/null
check "the outage is logged once when it starts" wait_for 10 grep -q "connection to 127.0.0.1:$port lost" "$TMP/cgwd.log"
sleep "${OUTAGE_SECONDS:-5}" # the outage itself: time is the point here
check "cgwd keeps running during the outage" kill -0 "$CGWD_PID"
start_broker
check "the reconnect is logged with the outage length" wait_for 30 grep -q "connected to 127.0.0.1:$port after" "$TMP/cgwd.log"
check "after the outage all $M messages arrive" wait_for 120 bash -c "[ \$(sort -u '$TMP/sub.txt' | grep -c '/telemetry ') -ge $M ]"
res=$(awk -v N="$M" -f "$TOP/tests/integration/check_stream.awk" "$TMP/sub.txt")
diag "$res"
check "outage: nothing lost, order kept, duplicates only with the same id" quiet \
	awk -v N="$M" -f "$TOP/tests/integration/check_stream.awk" "$TMP/sub.txt"
check "messages sent after the outage carry \"delayed\": true" grep -q '"delayed":true' "$TMP/sub.txt"
lost=$(grep -c "lost" "$TMP/cgwd.log")
check "the outage start is logged once, not per message ($lost)" test "$lost" -le 2

# ---- will: a killed cgwd is reported offline by the broker --------------------
: >"$TMP/sub.txt"
kill -KILL "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
check "will message: status offline after cgwd dies" wait_for 60 grep -q '^cgw/s/gw-up/status {.*"state":"offline"' "$TMP/sub.txt"

# ---- MQTT 5 --------------------------------------------------------------------
: >"$TMP/sub.txt"
sed -i 's|inflight: 200}|inflight: 200, protocol: 5}|' "$TMP/cgw.yaml"
"$FILL" "$TMP/state/cgw.db" platform 1000 10
bg_start "$CGWD" -c "$TMP/cgw.yaml" -f 2>>"$TMP/cgwd.log"
check "MQTT 5: a backlog of 1000 is delivered" wait_for 30 bash -c "[ \$(grep -c '/telemetry ' '$TMP/sub.txt') -ge 1000 ]"
check "MQTT 5: the session is version 5" grep -q "as gw-up (p5" "$TMP/mosq.log"
done_testing
