#!/usr/bin/env bash
# The platform contract (docs/protocol.md) as a platform sees it, through the
# real processes: simulated detectors (cgw-sim, Modbus TCP) -> cgwd ->
# mosquitto (no persistence) -> subscriber.
#   birth and will carry id, ts and a session that pairs them, and the
#   session grows at every start; the birth carries the protocol version;
#   after a broker restart that lost every retained message, each device's
#   retained state is back; a rebirth on P/cmd re-sends status, every
#   state and the active alarms, answered on P/result; acknowledged and
#   cleared alarm messages say in words what happened, never the raise
#   text alone. Every message received is validated against schema/ by
#   done_testing (tests/lib.sh).
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
SIM=$CGW_BUILD/cgw-sim
export CGW_PROFILES_DIR=$TOP/config/profiles
mq=$(free_port)
mb=$(free_port)
start_mosquitto "$mq" || not_ok "mosquitto starts"
mkdir -p "$TMP/state"
NDEV=5
{
	echo "buses:"
	echo "  - {name: fire-io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms, retries: 0, offline_after: 2}"
	echo "devices:"
	for i in 1 2 3 4; do
		echo "  - {id: smoke-$i, name: 3号楼${i}层东侧楼梯间烟感, profile: smoke-detector, bus: fire-io, unit: $((i + 2)), poll: 200ms, location: {building: \"3\", floor: \"$i\"}}"
	done
	echo "  - {id: station-b3, name: 3号楼微型消防站, profile: fire-station, bus: fire-io, unit: 1, poll: 200ms}"
} >"$TMP/devices.yaml"
cat >"$TMP/sim.yaml" <<Y
gateway: {id: sim, site: s, state_dir: $TMP}
include: [devices.yaml]
Y
cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-wire, site: garden, state_dir: $TMP/state}
include: [devices.yaml]
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq"}
Y
P=cgw/garden/gw-wire
bg_start "$SIM" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" >"$TMP/sim.log" 2>&1 </dev/null
wait_for 5 test -S "$TMP/sim.sock" || { not_ok "simulator starts"; sed "s/^/# /" "$TMP/sim.log"; }
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock"; }
for i in 1 2 3 4; do sim set smoke-$i temperature 23.5 >/dev/null; done
sim set station-b3 hydrant_pressure 0.35 >/dev/null
sim set station-b3 sprinkler_pressure 0.4 >/dev/null
sim set station-b3 tank_level 3 >/dev/null
sim set station-b3 extinguisher_1 true >/dev/null
sim set station-b3 extinguisher_2 true >/dev/null

sub() { bg_start mosquitto_sub -p "$mq" -v -q 1 -t 'cgw/#' >>"$TMP/sub.txt" 2>/dev/null; }
sub
start_cgwd() { bg_start "$CGWD" -c "$TMP/cgw.yaml" -f --log-level debug 2>>"$TMP/cgwd.log"; CGWD_PID=$BG_PID; }
start_cgwd
pub() { mosquitto_pub -p "$mq" -q 1 -t "$1" -m "$2"; }
# jf FIELD: the field of the JSON payload of the `topic payload` line on stdin
jf() { python3 -c 'import json,sys
o=json.loads(sys.stdin.readline().split(" ",1)[1])
v=o.get(sys.argv[1], "")
print(json.dumps(v) if isinstance(v, (dict, list)) else v)' "$1"; }
status_lines() { grep "^$P/status {.*\"state\":\"$1\"" "$TMP/sub.txt"; }
n_online() { status_lines online | wc -l; }
states() { grep -c "^$P/device/[^/]*/state " "$TMP/sub.txt"; }
all_online() { [ "$(grep "^$P/device/[^/]*/state .*\"online\"" "$TMP/sub.txt" | cut -d' ' -f1 | sort -u | wc -l)" -eq "$NDEV" ]; }

# ---- birth ----
check "birth: retained status online" wait_for 10 bash -c "grep -q '^$P/status {.*\"state\":\"online\"' '$TMP/sub.txt'"
birth=$(status_lines online | tail -1)
diag "$birth"
check "birth carries id {gateway}:{seq}" grep -qE '^gw-wire:[0-9]+$' <<<"$(jf id <<<"$birth")"
check "birth carries ts" grep -qE '^[0-9]{13}$' <<<"$(jf ts <<<"$birth")"
check "birth carries the protocol version 1" test "$(jf protocol <<<"$birth")" = 1
s1=$(jf session <<<"$birth")
check "birth carries a session number ($s1)" grep -qE '^[0-9]+$' <<<"$s1"
check "every device's state arrives online" wait_for 15 all_online

# ---- broker restart without persistence: every retained state comes back ----
kill -TERM "$MOSQ_PID"; wait "$MOSQ_PID" 2>/dev/null
start_mosquitto "$mq" || not_ok "mosquitto restarts"
retained_states() {
	rm -f "$TMP/retained.txt"
	mosquitto_sub -p "$mq" -v -t "$P/device/+/state" -W 1 >"$TMP/retained.txt" 2>/dev/null
	[ "$(grep -c '"state":"online"' "$TMP/retained.txt")" -eq "$NDEV" ]
}
check "after a broker restart without persistence every device's retained state is back" \
	wait_for 20 retained_states
diag "retained states after the restart: $(grep -c . "$TMP/retained.txt") of $NDEV"
wait_for 10 bash -c "[ \$(grep -c '^$P/status {.*\"online\"' '$TMP/sub.txt') -ge 2 ]"
s2=$(status_lines online | tail -1 | jf session)
check "the session grows at a reconnect ($s1 -> $s2)" test "$s2" -gt "$s1"

# ---- will: cgwd dies; the broker says offline, paired with the birth ----
kill -KILL "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
check "will: status offline after cgwd dies" wait_for 20 bash -c "grep -q '^$P/status {.*\"state\":\"offline\"' '$TMP/sub.txt'"
will=$(status_lines offline | tail -1)
diag "$will"
check "will carries id and ts" bash -c "[ -n '$(jf id <<<"$will")' ] && [ '$(jf ts <<<"$will")' -gt 0 ]"
check "will carries the session of the birth it ends ($s2)" bash -c "[ -n '$s2' ] && [ '$(jf session <<<"$will")' = '$s2' ]"
check "will ids differ from birth ids" test "$(jf id <<<"$will")" != "$(status_lines online | tail -1 | jf id)"

# ---- a start: a new session ----
start_cgwd
check "birth after a restart" wait_for 10 bash -c "[ \$(grep -c '^$P/status {.*\"online\"' '$TMP/sub.txt') -ge 3 ]"
s3=$(status_lines online | tail -1 | jf session)
check "the session grows at every start ($s2 -> $s3)" test "$s3" -gt "$s2"
stored=$(sqlite3 "$TMP/state/cgw.db" "select value from meta where key='session'" 2>/dev/null)
check "the session is kept in the store ($stored)" bash -c "[ -n '$stored' ] && [ -n '$s3' ] && [ '$stored' -ge '$s3' ]"

# ---- alarm texts ----
sim set smoke-1 status 1 >/dev/null
check "smoke alarm raised" wait_for 10 bash -c "grep '^$P/device/smoke-1/alarm ' '$TMP/sub.txt' | grep -q '\"event\":\"raised\"'"
raised=$(grep "^$P/device/smoke-1/alarm " "$TMP/sub.txt" | grep '"event":"raised"' | head -1)
aid=$(jf alarm_id <<<"$raised")
check "raise text" test "$(jf message <<<"$raised")" = "3号楼1层东侧楼梯间烟感 烟感报警"

# ---- rebirth ----
n_on=$(n_online)
n_st=$(states)
pub "$P/cmd" '{"id":"rb-1","action":"rebirth"}'
check "rebirth: answered ok on P/result" wait_for 10 grep -q "^$P/result {.*\"command_id\":\"rb-1\".*\"result\":\"ok\"" "$TMP/sub.txt"
check "rebirth: status published again" wait_for 10 bash -c "[ \$(grep -c '^$P/status {.*\"online\"' '$TMP/sub.txt') -gt $n_on ]"
check "rebirth: every device's state published again" wait_for 10 bash -c "[ \$(grep -c '^$P/device/[^/]*/state ' '$TMP/sub.txt') -ge $((n_st + NDEV)) ]"
check "rebirth: the active alarm re-sent as restated, same alarm_id" wait_for 10 bash -c "grep '^$P/device/smoke-1/alarm ' '$TMP/sub.txt' | grep '\"event\":\"restated\"' | grep -q '\"alarm_id\":\"$aid\"'"
pub "$P/cmd" '{"id":"rb-2","action":"self-destruct"}'
check "an unknown gateway action is rejected with a reason" wait_for 10 grep -q "^$P/result {.*\"command_id\":\"rb-2\".*\"result\":\"rejected\".*\"detail\"" "$TMP/sub.txt"

# ---- acknowledged and cleared say so ----
pub "$P/cmd/smoke-1" '{"id":"ack-1","action":"ack","alarm":"smoke","by":"duty-room"}'
check "acknowledged: says so in words" wait_for 10 bash -c "grep '^$P/device/smoke-1/alarm ' '$TMP/sub.txt' | grep '\"event\":\"acknowledged\"' | grep -q '\"message\":\"3号楼1层东侧楼梯间烟感 烟感报警 已确认\"'"
sim set smoke-1 status 0 >/dev/null
check "cleared: arrives" wait_for 10 bash -c "grep '^$P/device/smoke-1/alarm ' '$TMP/sub.txt' | grep -q '\"event\":\"cleared\"'"
cleared=$(grep "^$P/device/smoke-1/alarm " "$TMP/sub.txt" | grep '"event":"cleared"' | tail -1)
diag "cleared: $(jf message <<<"$cleared")"
check "cleared: says the alarm cleared, not the raise text again" \
	test "$(jf message <<<"$cleared")" = "3号楼1层东侧楼梯间烟感 烟感报警 已恢复"

# ---- the contract's documents hang together ----
refs_ok() {
	local r
	for r in $(sed -n 's/.*\$ref: "\([a-z-]*\.json\)".*/\1/p' "$TOP/schema/asyncapi.yaml"); do
		[ -f "$TOP/schema/$r" ] || { echo "# asyncapi.yaml: $r missing"; return 1; }
	done
	for r in "$TOP"/schema/*.json; do
		grep -q "$(basename "$r")" "$TOP/docs/protocol.md" || [ "$(basename "$r")" = common.json ] ||
			{ echo "# protocol.md does not link $(basename "$r")"; return 1; }
	done
}
check "asyncapi.yaml refers to schemas that exist; protocol.md links every schema" refs_ok
done_testing
