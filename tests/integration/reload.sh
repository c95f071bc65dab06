#!/usr/bin/env bash
# Reload without a ripple, through the real processes (cgw-sim on Modbus TCP ->
# cgwd -> mosquitto -> subscriber):
# - shelving survives a restart (a device shelved with no alarm at all);
# - an identical file during an alarm's on_delay and while a device is
#   shelved: the platform sees nothing (no status offline/online, no device
#   state), the shelved device's next alarm is still "shelved", and the
#   on_delay alarm raises on its original schedule;
# - a changed uplink reconnects alone, the other does not flap;
# - a changed device: only its state is told again, its siblings on the same
#   (restarted) bus and the other bus keep theirs; its shelving stays;
# - a removed device's active alarm is cleared, with the reason in words;
# - a kept bus's devices moved to other indexes: their reports land right;
# - a changed metrics.listen and control.socket are re-bound;
# - a broken file changes nothing.
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
SIM=$CGW_BUILD/cgw-sim
CTL=$CGW_BUILD/cgwctl
export CGW_PROFILES_DIR=$TOP/config/profiles
mq=$(free_port)
mb1=$(free_port)
mb2=$(free_port)
m1=$(free_port)
m2=$(free_port)
start_mosquitto "$mq" || not_ok "mosquitto starts"
mkdir -p "$TMP/state"

# devices.yaml: DOOR1_POLL [without-door-1]. door-1 comes first: removing it
# moves every other device to another index, on buses that keep running.
write_devices() {
	cat >"$TMP/devices.yaml" <<Y
buses:
  - {name: fire-io, type: modbus-tcp, host: 127.0.0.1, port: $mb1, timeout: 300ms, retries: 0, offline_after: 3}
  - {name: door-io, type: modbus-tcp, host: 127.0.0.1, port: $mb2, timeout: 300ms, retries: 0, offline_after: 3}
  - {name: lan, type: mqtt, url: "mqtt://127.0.0.1:$mq"}
devices:
Y
	if [ -z "${2:-}" ]; then
		cat >>"$TMP/devices.yaml" <<Y
  - {id: door-1, name: 1号楼单元门, profile: door-io, bus: door-io, unit: 2, poll: $1}
Y
	fi
	cat >>"$TMP/devices.yaml" <<Y
  - {id: locker-1, name: 北门快递柜, profile: parcel-locker, bus: lan, topic: lockers/north}
  - {id: station-1, name: 1号楼微型消防站, profile: fire-station, bus: fire-io, unit: 1, poll: 200ms}
  - {id: door-2, name: 2号楼单元门, profile: door-io, bus: door-io, unit: 3, poll: 200ms}
Y
}
SOCK=$TMP/cgwd.sock
BACKUP_KA=30s
write_config() { # METRICS_PORT
	cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-rl, site: garden, state_dir: $TMP/state}
include: [devices.yaml]
control: {socket: $SOCK}
metrics: {enabled: true, listen: "127.0.0.1:$1"}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq"}
  - {name: backup, type: mqtt, url: "mqtt://127.0.0.1:$mq", client_id: gw-rl-backup, topic_prefix: "backup/{site}/{gateway}", keepalive: $BACKUP_KA}
Y
}
write_devices 200ms
write_config "$m1"
cat >"$TMP/sim.yaml" <<Y
gateway: {id: sim, site: s, state_dir: $TMP}
include: [devices.yaml]
Y
P=cgw/garden/gw-rl
bg_start "$SIM" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" >"$TMP/sim.log" 2>&1 </dev/null
wait_for 5 test -S "$TMP/sim.sock" || { not_ok "simulator starts"; sed "s/^/# /" "$TMP/sim.log"; }
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock"; }
for p in "hydrant_pressure 0.35" "sprinkler_pressure 0.4" "tank_level 3" "extinguisher_1 true" \
	"extinguisher_2 true"; do
	sim set station-1 $p >/dev/null
done

bg_start mosquitto_sub -p "$mq" -v -q 1 -t 'cgw/#' >"$TMP/sub.txt" 2>/dev/null
bg_start mosquitto_sub -p "$mq" -v -q 1 -t 'backup/+/+/status' >"$TMP/backup.txt" 2>/dev/null
start_cgwd() {
	bg_start "$CGWD" -c "$TMP/cgw.yaml" -f --log-level debug 2>>"$TMP/cgwd.log"
	CGWD_PID=$BG_PID
}
ctl() { "$CTL" -s "$SOCK" "$@"; }
# lines of the subscription after line $MARK
since_mark() { tail -n +"$((MARK + 1))" "$TMP/sub.txt"; }
mark() { MARK=$(wc -l <"$TMP/sub.txt"); }
seen_after_mark() { since_mark | grep -q "$@"; }
count() { grep -c "$1" "$TMP/cgwd.log"; }
count_above() { test "$(count "$1")" -gt "$2"; }
hup_and_wait() { # the reload is applied
	local n
	n=$(count "configuration reloaded")
	kill -HUP "$CGWD_PID"
	wait_for 15 count_above "configuration reloaded" "$n"
}
online() { # device: its retained state after MARK says online
	seen_after_mark "^$P/device/$1/state .*\"state\":\"online\""
}
not_after_mark() { ! since_mark | grep -q "$@"; }
all_online() { local dev; for dev in "$@"; do online "$dev" || return 1; done; }
both_report() { # telemetry is by exception: a value changed after MARK
	seen_after_mark "^$P/device/station-1/telemetry .*\"tank_level\":$1" &&
		seen_after_mark "^$P/device/door-2/telemetry .*\"exit_button\":$2"
}
locker() { # battery: the locker reports it; it arrives as locker-1's
	mosquitto_pub -p "$mq" -q 1 -t lockers/north/status -m "{\"mains\":true,\"battery\":$1}"
}
locker_reports() { seen_after_mark "^$P/device/locker-1/telemetry .*\"battery\":$1"; }
shelved() { ctl --json devices | jq -e --arg d "$1" '.[] | select(.id == $d) | .shelved' >/dev/null; }
field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }

MARK=0
start_cgwd
wait_for 10 count_above "\[lan\] subscribed" 0
locker 80
check "all four devices come online" wait_for 20 all_online station-1 door-1 door-2 locker-1

# ---- shelving with no alarm survives a restart ----------------------------------------
check "door-1 shelved (no alarm active)" quiet ctl shelve door-1
kill -TERM "$CGWD_PID"
wait_for 10 bash -c "! kill -0 $CGWD_PID 2>/dev/null"
mark
start_cgwd
wait_for 10 count_above "\[lan\] subscribed" 1
check "cgwd restarts" wait_for 20 all_online station-1 door-1
locker 81
check "the locker reports after the restart" wait_for 10 all_online locker-1
check "door-1 is still shelved after a restart" shelved door-1

# ---- an identical file during an on_delay, with a device shelved --------------------
ctl shelve door-1 >/dev/null 2>&1 # (already, unless the restart lost it)
sim set station-1 extinguisher_1 false >/dev/null
mark
check "the station reports extinguisher_1 missing" \
	wait_for 10 seen_after_mark "^$P/device/station-1/telemetry .*\"extinguisher_1\":false"
t_missing=$(since_mark | grep -m1 "^$P/device/station-1/telemetry .*\"extinguisher_1\":false" | field ts)
# the rule holds the alarm back for 10 s: reload 4 s into it (deliberately)
sleep 4
mark
check "identical file: the reload is applied" hup_and_wait
sim set door-1 tamper true >/dev/null
check "door-1 tamper alarm raised after the reload" \
	wait_for 10 seen_after_mark "^$P/device/door-1/alarm .*\"alarm\":\"tamper\".*\"event\":\"raised\""
line=$(since_mark | grep -m1 "^$P/device/door-1/alarm .*\"alarm\":\"tamper\"")
check "door-1 is still shelved: its alarm says state shelved" grep -q '"state":"shelved"' <<<"$line"
check "the on_delay alarm is raised" \
	wait_for 20 seen_after_mark "^$P/device/station-1/alarm .*\"alarm\":\"extinguisher_1_missing\".*\"event\":\"raised\""
raised=$(since_mark | grep -m1 "^$P/device/station-1/alarm .*extinguisher_1_missing" | field raised_at)
delay=$((raised - t_missing))
diag "extinguisher_1 missing at $t_missing, raised at $raised: ${delay} ms (on_delay 10 s, reload at ~4 s)"
check "the on_delay ran on its original schedule (${delay} ms < 12500 ms)" test "$delay" -lt 12500
check "the platform saw no status change (no offline/online)" not_after_mark "^$P/status "
check "the platform saw no device state" not_after_mark "^$P/device/[^/]*/state "
check "nothing unshelved" not_after_mark "unshelved"
check "the log says every bus and uplink kept running" grep -q "reload: 3 of 3 buses and 2 of 2 uplinks kept running" "$TMP/cgwd.log"
locker 82
check "the MQTT bus kept running: the locker's report arrives as its own" wait_for 10 locker_reports 82

# ---- a changed device: only it starts again -------------------------------------------
write_devices 300ms
mark
check "changed device: the reload is applied" hup_and_wait
check "door-1 (changed) tells its state again" wait_for 10 online door-1
m=$MARK
mark
# both others are polled after door-1 came back: had they been restarted,
# their state would be out by now
sim set station-1 tank_level 2.5 >/dev/null
sim set door-2 exit_button true >/dev/null
check "station-1 and door-2 report on after it" wait_for 10 both_report 2.5 true
sim set door-2 tamper true >/dev/null
check "door-2 (same restarted bus) is polled: its alarm arrives" \
	wait_for 10 seen_after_mark "^$P/device/door-2/alarm .*\"event\":\"raised\""
MARK=$m
check "station-1 (other bus) kept its state and since" not_after_mark "^$P/device/station-1/state "
check "door-2 (unchanged, on the restarted bus) kept its state and since" not_after_mark "^$P/device/door-2/state "
check "no status change" not_after_mark "^$P/status "
check "door-1 is still shelved after its change" shelved door-1
check "door-1's tamper alarm is still active" bash -c "'$CTL' -s '$SOCK' --json alarms | jq -e '.[] | select(.alarm_id | startswith(\"door-1/tamper/\"))' >/dev/null"

# ---- a changed uplink reconnects alone ---------------------------------------------------
check "door-2's tamper alarm acknowledged" quiet ctl ack door-2/tamper
BACKUP_KA=20s
write_config "$m1"
mark
b0=$(grep -c '"state":"online"' "$TMP/backup.txt")
check "changed uplink: the reload is applied" hup_and_wait
check "the changed uplink (backup) reconnects: a new online" \
	wait_for 10 bash -c "test \$(grep -c '\"state\":\"online\"' '$TMP/backup.txt') -gt $b0"
check "the other uplink (platform) did not flap" not_after_mark "^$P/status "

# ---- a removed device: its alarm is cleared, with the reason ---------------------------
write_devices 300ms without-door-1
mark
check "removed device: the reload is applied" hup_and_wait
check "door-1's alarm is cleared" \
	wait_for 10 seen_after_mark "^$P/device/door-1/alarm .*\"alarm\":\"tamper\".*\"event\":\"cleared\""
line=$(since_mark | grep -m1 "^$P/device/door-1/alarm .*\"event\":\"cleared\"")
check "the clear says the device was removed" grep -q '"note":"[^"]*removed from the configuration' <<<"$line"
check "the clear goes to normal" grep -q '"state":"normal"' <<<"$line"
check "cgwctl alarms no longer lists door-1" bash -c "! '$CTL' -s '$SOCK' --json alarms | grep -q door-1"
check "door-2's alarm is untouched, still acknowledged" bash -c "'$CTL' -s '$SOCK' --json alarms | jq -e '.[] | select(.alarm_id | startswith(\"door-2/tamper/\")) | select(.state == \"active-acked\")' >/dev/null"
# every device moved one index down, on the two buses that kept running
sim set station-1 tank_level 1.5 >/dev/null
sim set door-2 exit_button true >/dev/null
locker 83
check "kept buses after the re-indexing: each report lands on its own device" \
	wait_for 10 both_report 1.5 true
check "the kept MQTT bus too" wait_for 10 locker_reports 83
check "no state told again for the moved devices" not_after_mark "^$P/device/[^/]*/state "

# ---- a changed metrics.listen and control.socket are re-bound --------------------------
check "metrics answer on the first address" quiet curl -sf "http://127.0.0.1:$m1/metrics"
SOCK=$TMP/cgwd-2.sock
write_config "$m2"
check "metrics.listen and control.socket changed: the reload is applied" hup_and_wait
check "metrics answer on the new address" wait_for 5 quiet curl -sf "http://127.0.0.1:$m2/metrics"
check "the old address is closed" bash -c "! curl -sf http://127.0.0.1:$m1/metrics >/dev/null"
check "cgwctl answers on the new control socket" quiet ctl status
check "the old control socket is gone" test ! -e "$TMP/cgwd.sock"

# ---- a broken file changes nothing ------------------------------------------------------
cp "$TMP/cgw.yaml" "$TMP/cgw.good"
echo "gateway: {id: gw-rl, site: [oops" >"$TMP/cgw.yaml"
mark
n=$(count "keeping the running configuration")
kill -HUP "$CGWD_PID"
check "broken file: logged, running configuration kept" \
	wait_for 10 count_above "keeping the running configuration" "$n"
sim set station-1 tank_level 2 >/dev/null
sim set door-2 exit_button false >/dev/null
check "broken file: polling goes on" wait_for 10 both_report 2 false
check "broken file: no status or device state" not_after_mark "^$P/status \|/state "
check "broken file: metrics still on the new address" quiet curl -sf "http://127.0.0.1:$m2/metrics"
check "broken file: cgwctl still answers" quiet ctl status
check "still running" kill -0 "$CGWD_PID"
done_testing
