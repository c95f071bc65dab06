#!/usr/bin/env bash
# cgwctl against a running daemon: the control socket (mode, stale socket,
# bounds, bad input), every command's table and --json, ack/read/write
# through the core (unknown alarm, non-writable point, a write that reaches
# the simulated device), shelving, exit codes and the messages for a daemon
# that is not running or a socket we may not use.
. "$(dirname "$0")/../lib.sh"
CTL=$CGW_BUILD/cgwctl
SIM=$CGW_BUILD/cgw-sim
export CGW_PROFILES_DIR=$TOP/config/profiles
DAEMON=("$CGW_BUILD/cgwd" -f -c)

SOCK=$TMP/cgwd.sock
mqtt_port=$(free_port)
sim_port=$(free_port)
mkdir -p "$TMP/state"
start_mosquitto "$mqtt_port" || not_ok "mosquitto started"
cat >"$TMP/cgw.yaml" <<YAML
gateway: {id: gw-ctl, site: site-ctl, state_dir: $TMP/state}
control: {socket: $SOCK}
metrics: {enabled: false}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mqtt_port"}
buses:
  - {name: tcp-1, type: modbus-tcp, host: 127.0.0.1, port: $sim_port, timeout: 200ms, retries: 0}
devices:
  - {id: smoke-1, name: 3号楼3层东侧楼梯间烟感, profile: smoke-detector, bus: tcp-1, unit: 1, poll: 100ms,
     location: {building: "3", floor: "3"}}
  - {id: door-1, name: 3号楼东门, profile: door-io, bus: tcp-1, unit: 2, poll: 100ms}
YAML
bg_start "$SIM" -c "$TMP/cgw.yaml" --control "$TMP/sim.sock" >"$TMP/sim.log" 2>&1
wait_for 10 grep -q ready "$TMP/sim.log" || not_ok "simulator ready"
sim() { echo "$*" | socat -t 5 - "UNIX-CONNECT:$TMP/sim.sock"; }

start_daemon() {
	bg_start "${DAEMON[@]}" "$TMP/cgw.yaml" -l debug 2>>"$TMP/daemon.log"
	DPID=$BG_PID
	wait_for 10 test -S "$SOCK"
}
ctl() { "$CTL" -s "$SOCK" "$@"; }
quiet() { "$@" >/dev/null 2>&1; }
# run: sets OUT, ERR and RC of a cgwctl run
run() { "$CTL" "$@" >"$TMP/out" 2>"$TMP/err"; RC=$?; OUT=$(cat "$TMP/out"); ERR=$(cat "$TMP/err"); }

check "the daemon starts and makes the socket" start_daemon
check "socket mode is 0660 (got $(stat -c %a "$SOCK" 2>/dev/null))" test "$(stat -c %a "$SOCK" 2>/dev/null)" = 660

# ---- status ----------------------------------------------------------------------
check "status: the uplink is up" wait_for 10 bash -c "'$CTL' -s '$SOCK' status | grep -q '^platform  *mqtt  *connected'"
run -s "$SOCK" status
check "status: exit 0 (got $RC)" test "$RC" -eq 0
check "status: uptime and health" grep -qE '^uptime +[0-9]+s, healthy$' "$TMP/out"
hash=$("$CGW_BUILD/cgwd" --check-config -c "$TMP/cgw.yaml" 2>/dev/null | grep -oE '[0-9a-f]{16}' | head -1)
check "status: the config file and its hash" grep -qE "^config +$TMP/cgw.yaml \(hash [0-9a-f]{16}\)" "$TMP/out"
[ -n "$hash" ] && check "status: the hash is the one --check-config prints" grep -q "$hash" "$TMP/out"
check "status: store state and size against its cap" grep -qE '^store +ok: [0-9.]+ [KMG]?B of [0-9.]+ [KMG]?B' "$TMP/out"
check "status: free space, its floor, the alarm reserve, alarms in memory" \
	grep -qE '^disk +[0-9.]+ [KMG]?B free \(floor [0-9.]+ [KMG]?B\); alarm reserve [0-9.]+ [KMG]?B of [0-9.]+ [KMG]?B; 0 alarms held in memory' "$TMP/out"
check "status: active alarms by severity" grep -qE '^alarms +0 critical, 0 major, 0 minor, 0 warning' "$TMP/out"
check "status: bus table with health" grep -qE '^tcp-1 +modbus-tcp +2 +[0-2] +connected' "$TMP/out"
check "status: uplink table says since when" grep -qE '^platform +mqtt +connected +[0-9-]+ [0-9:]+ \([0-9]+s ago\)' "$TMP/out"
check "status: outbox per lane" grep -qE '^OUTBOX +ALARM +EVENT +STATUS +TELEMETRY$' "$TMP/out"
check "status: header columns line up with the rows" \
	test "$(grep '^BUS ' "$TMP/out" | grep -bo 'STATE' | cut -d: -f1)" = "$(grep '^tcp-1 ' "$TMP/out" | grep -bo 'connected' | cut -d: -f1)"
run -s "$SOCK" --json status
check "status --json: exit 0" test "$RC" -eq 0
check "status --json: the daemon's JSON" grep -q '"uptime_s": ' "$TMP/out"
check "status --json: buses, uplinks, outbox, store" \
	bash -c "grep -q '\"buses\": \\[' '$TMP/out' && grep -q '\"uplinks\": \\[' '$TMP/out' && grep -q '\"outbox\": \\[' '$TMP/out' && grep -q '\"max_size\": [1-9]' '$TMP/out' && grep -q '\"state\": \"ok\"' '$TMP/out'"
check "CGW_SOCKET names the socket" quiet env CGW_SOCKET="$SOCK" "$CTL" status

# ---- devices ---------------------------------------------------------------------
check "devices: both online" wait_for 10 bash -c "[ \$('$CTL' -s '$SOCK' devices | grep -cE '^(smoke|door)-1 .* online ') -eq 2 ]"
run -s "$SOCK" devices
check "devices: header" grep -qE '^DEVICE +NAME +BUS +PROFILE +STATE +LAST GOOD +READS +ERRORS +TIMEOUTS +LINE +LAST ERROR$' "$TMP/out"
check "devices: the name in plain words" grep -q '^smoke-1 *3号楼3层东侧楼梯间烟感 *tcp-1 *smoke-detector *online' "$TMP/out"
# wide characters take two columns: the BUS column starts at the same display column on every line
hdr=$(grep '^DEVICE' "$TMP/out" | awk '{ print index($0, "BUS") }')
row=$(grep '^door-1' "$TMP/out" | sed 's/3号楼东门/123456789/' | awk '{ print index($0, "tcp-1") }')
check "devices: columns aligned with wide characters (BUS at $hdr, door-1's bus at $row)" test "$hdr" = "$row"
run -s "$SOCK" --json devices
check "devices --json: per device state and counters" \
	bash -c "grep -q '\"id\": \"smoke-1\"' '$TMP/out' && grep -q '\"timeouts\": ' '$TMP/out'"

# ---- alarms and ack ---------------------------------------------------------------
run -s "$SOCK" alarms
check "alarms: none at first" test "$OUT" = "no active alarms"
sim set smoke-1 status 1 >/dev/null
sim set door-1 tamper 1 >/dev/null
check "alarms: the smoke alarm shows" wait_for 10 bash -c "'$CTL' -s '$SOCK' alarms | grep -q '^critical  *active-unacked, latched  *smoke-1/smoke '"
wait_for 5 bash -c "'$CTL' -s '$SOCK' alarms | grep -q 'door-1/tamper'"
run -s "$SOCK" alarms
check "alarms: worst first" test "$(sed -n 2p "$TMP/out" | awk '{print $1}')" = critical
check "alarms: the message in plain words" grep -q '3号楼3层东侧楼梯间烟感 烟感报警' "$TMP/out"
run -s "$SOCK" status
check "status: active alarms by severity" grep -qE '^alarms +1 critical, 1 major, 0 minor, 0 warning' "$TMP/out"
run -s "$SOCK" --json alarms
check "alarms --json: alarm ids" grep -qE '"alarm_id": "smoke-1/smoke/[0-9]+"' "$TMP/out"
run -s "$SOCK" ack smoke-1/smoke
check "ack DEVICE/RULE: exit 0 (got $RC: $ERR)" test "$RC" -eq 0
check "ack: says so" test "$OUT" = "acknowledged smoke-1/smoke"
check "ack: the alarm is acknowledged" bash -c "'$CTL' -s '$SOCK' alarms | grep -q 'active-acked, latched  *smoke-1/smoke'"
run -s "$SOCK" ack smoke-1/smoke
check "ack again: exit 1 (got $RC)" test "$RC" -eq 1
check "ack again: already acknowledged" grep -q 'already acknowledged' "$TMP/err"
run -s "$SOCK" ack smoke-1/no_such_rule
check "ack of an unknown alarm: exit 1 (got $RC)" test "$RC" -eq 1
check "ack of an unknown alarm: clear message ($ERR)" test "$ERR" = "cgwctl: ack smoke-1/no_such_rule: rejected: no such active alarm"
run -s "$SOCK" ack nowhere/smoke
check "ack on an unknown device: exit 1 and says so" bash -c "[ $RC -eq 1 ] && grep -q \"no device 'nowhere'\" '$TMP/err'"
aid=$(grep -oE '"alarm_id": "door-1/tamper/[0-9]+"' <("$CTL" -s "$SOCK" --json alarms) | cut -d'"' -f4)
run -s "$SOCK" ack tamper
check "ack by a bare rule name active on one device: exit 0 (got $RC: $ERR)" test "$RC" -eq 0
sim set smoke-1 status 0 >/dev/null
sim set door-1 tamper 0 >/dev/null
check "the acknowledged alarms end" wait_for 10 bash -c "'$CTL' -s '$SOCK' alarms | grep -q '^no active alarms$'"
[ -n "$aid" ] && check "ack by alarm id of an alarm that ended: exit 1" bash -c "! '$CTL' -s '$SOCK' ack '$aid' 2>/dev/null"

# ---- read and write --------------------------------------------------------------
run -s "$SOCK" read smoke-1 status
check "read: exit 0 (got $RC: $ERR)" test "$RC" -eq 0
check "read: value, quality and age ($OUT)" grep -qE '^smoke-1 status = normal \(good, read [0-9]+s ago\)$' "$TMP/out"
run -s "$SOCK" --json read smoke-1 temperature
check "read --json: the core's result" bash -c "grep -q '\"result\": \"ok\"' '$TMP/out' && grep -q '\"command_id\": \"ctl-' '$TMP/out'"
run -s "$SOCK" read smoke-1 no_such_point
check "read of an unknown point: exit 1, no such point" bash -c "[ $RC -eq 1 ] && grep -q 'no such point' '$TMP/err'"
run -s "$SOCK" write smoke-1 status 1
check "write to a non-writable point: exit 1 (got $RC)" test "$RC" -eq 1
check "write to a non-writable point: refused ($ERR)" test "$ERR" = "cgwctl: write smoke-1 status: rejected: point is not writable"
check "write to a non-writable point: the device is untouched" test "$(sim get smoke-1 status)" = 0
audited() { [ "$(sqlite3 "$TMP/state/cgw.db" "select count(*) from audit where source = 'cgwctl' and $1" 2>/dev/null)" -ge 1 ]; }
me=$(id -un)
check "a refused write is in the audit, with the user" wait_for 5 audited \
	"action = 'write' and result = 'rejected' and detail = 'point is not writable' and request like '%\"by\":\"$me\"%'"
check "an ack is in the audit" audited "action = 'ack' and result = 'ok' and device = 'smoke-1'"
run -s "$SOCK" write door-1 lock_relay true
check "write a writable point: exit 0 (got $RC: $ERR)" test "$RC" -eq 0
check "write: says so" test "$OUT" = "door-1 lock_relay: written"
check "write: the device has the value" test "$(sim get door-1 lock_relay)" = true
run -s "$SOCK" write door-1 lock_relay 0
check "write a JSON number: exit 0 and written" bash -c "[ $RC -eq 0 ] && [ \"\$(echo 'get door-1 lock_relay' | socat -t 5 - UNIX-CONNECT:$TMP/sim.sock)\" = false ]"
run -s "$SOCK" write door-1 lock_relay some-word
check "write a word that is no value of the point: exit 1" test "$RC" -eq 1
# a device that does not answer: the write fails once the bus timeout passes
sim silence door-1 on >/dev/null
run -s "$SOCK" write door-1 lock_relay true
check "write to a silent device: exit 1 (got $RC: $ERR)" test "$RC" -eq 1
check "write to a silent device: failed" grep -q ': failed: ' "$TMP/err"
# a client that goes away before its write's result: the daemon carries on
printf '{"cmd":"write","device":"door-1","point":"lock_relay","value":true}\n' |
	socat -t 0.02 - "UNIX-CONNECT:$SOCK" >/dev/null 2>&1
sleep 0.5 # longer than the bus timeout: the result comes back to nobody
check "a client gone before its write's result: the daemon still answers" quiet ctl status
sim silence door-1 off >/dev/null

# ---- shelving ----------------------------------------------------------------------
run -s "$SOCK" shelve door-1
check "shelve: exit 0" bash -c "[ $RC -eq 0 ] && [ '$OUT' = 'door-1: alarms shelved' ]"
# door-1 was silent a moment ago: its next good poll brings it back online
check "devices: shows the shelving" wait_for 10 bash -c "'$CTL' -s '$SOCK' devices | grep -q '^door-1 .* online, shelved '"
run -s "$SOCK" shelve door-1
check "shelve twice: exit 1, already shelved" bash -c "[ $RC -eq 1 ] && grep -q 'already shelved' '$TMP/err'"
run -s "$SOCK" unshelve door-1
check "unshelve: exit 0" test "$RC" -eq 0
run -s "$SOCK" shelve nosuch
check "shelve an unknown device: exit 1" bash -c "[ $RC -eq 1 ] && grep -q \"no such device 'nosuch'\" '$TMP/err'"

# ---- queue -------------------------------------------------------------------------
run -s "$SOCK" queue
check "queue: exit 0 and a row per lane" bash -c "[ $RC -eq 0 ] && [ \$(grep -cE '^platform +(alarm|event|status|telemetry) +[0-9]+ ' '$TMP/out') -eq 4 ]"
run -s "$SOCK" --json queue
check "queue --json: depth and oldest age" bash -c "grep -q '\"depth\": ' '$TMP/out' && grep -q '\"oldest_age_s\": ' '$TMP/out'"

# ---- usage ---------------------------------------------------------------------------
run -s "$SOCK"
check "no command: exit 2" test "$RC" -eq 2
run -s "$SOCK" frobnicate
check "unknown command: exit 2 and says which" bash -c "[ $RC -eq 2 ] && grep -q \"unknown command 'frobnicate'\" '$TMP/err'"
run -s "$SOCK" ack
check "missing argument: exit 2 and the command's usage" bash -c "[ $RC -eq 2 ] && grep -q 'usage: cgwctl ack ALARM' '$TMP/err'"
run -s "$SOCK" read smoke-1 a b
check "extra argument: exit 2" test "$RC" -eq 2
run --bogus status
check "unknown option: exit 2" test "$RC" -eq 2
run --help
check "--help: exit 0 and every command" bash -c "[ $RC -eq 0 ] && for c in status devices alarms queue 'ack ALARM' 'shelve DEVICE' 'unshelve DEVICE' 'read DEVICE POINT' 'write DEVICE POINT VALUE' 'Exit status'; do grep -q \"\$c\" '$TMP/out' || exit 1; done"

# ---- the protocol, raw ---------------------------------------------------------------
printf 'not json\n{"cmd":"nope"}\n{"cmd":"status"}\n' | socat -t 5 - "UNIX-CONNECT:$SOCK" >"$TMP/raw"
check "raw: one response line per request" test "$(wc -l <"$TMP/raw")" -eq 3
check "raw: bad JSON rejected, the connection goes on" bash -c \
	"sed -n 1p '$TMP/raw' | grep -q '\"result\":\"rejected\",\"detail\":\"not JSON' && sed -n 2p '$TMP/raw' | grep -q 'unknown cmd' && sed -n 3p '$TMP/raw' | grep -q '^{\"result\":\"ok\",\"status\":{'"
head -c 70000 /dev/zero | tr '\0' 'x' | socat -t 5 - "UNIX-CONNECT:$SOCK" >"$TMP/raw" 2>/dev/null
check "raw: a request over 64 KiB is refused" grep -q 'longer than 64 KiB' "$TMP/raw"
# 16 clients at most: the 17th is told, and a freed slot is usable again
holders=()
for _ in $(seq 16); do
	bg_start socat EXEC:"sleep 30" "UNIX-CONNECT:$SOCK"
	holders+=("$BG_PID")
done
# a holder that raced a connection of an earlier check still being closed by
# the daemon was refused itself: start it again until all 16 hold a slot
full_and_refused() {
	local i
	for i in "${!holders[@]}"; do
		if ! kill -0 "${holders[$i]}" 2>/dev/null; then
			bg_start socat EXEC:"sleep 30" "UNIX-CONNECT:$SOCK"
			holders[$i]=$BG_PID
			return 1
		fi
	done
	"$CTL" -s "$SOCK" status 2>&1 | grep -q 'too many cgwctl clients'
}
if wait_for 10 full_and_refused; then
	ok "client bound: the 17th client is refused"
else
	not_ok "client bound: the 17th client is refused"
	"$CTL" -s "$SOCK" status 2>&1 | head -3 | sed 's/^/# /'
	diag "holders alive: $(for p in "${holders[@]}"; do kill -0 "$p" 2>/dev/null && echo -n x; done)"
fi
kill "${holders[@]}" 2>/dev/null
check "client bound: slots free again when clients leave" wait_for 10 quiet ctl status
check "the daemon is still running after all that" kill -0 "$DPID"

# ---- permissions -----------------------------------------------------------------
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
	chmod 755 "$TMP" # let nobody reach the socket itself, not stop at the directory
	setpriv --reuid=65534 --regid=65534 --clear-groups "$CTL" -s "$SOCK" status >/dev/null 2>"$TMP/err"
	RC=$?
	chmod 700 "$TMP"
	check "no permission: exit 3 (got $RC)" test "$RC" -eq 3
	check "no permission: clear message" grep -qx "cgwctl: cannot use $SOCK: permission denied; are you in group cgw?" "$TMP/err"
else
	ok "no permission: # SKIP needs root and setpriv"
	ok "no permission: clear message # SKIP"
fi

# ---- a second daemon, a stale socket, no daemon --------------------------------
# its own store, the same socket
mkdir -p "$TMP/state2"
sed "s|state_dir: $TMP/state}|state_dir: $TMP/state2}|" "$TMP/cgw.yaml" >"$TMP/second.yaml"
"${DAEMON[@]}" "$TMP/second.yaml" 2>"$TMP/second.log" &
second=$!
check "a second daemon does not take the live socket" wait_for 10 grep -q "$SOCK: another cgwd is answering on it" "$TMP/second.log"
kill "$second" 2>/dev/null
wait "$second" 2>/dev/null
check "the first daemon still answers on it" quiet ctl status

kill -TERM "$DPID"
wait "$DPID"
rc=$?
check "SIGTERM: the daemon exits 0 (got $rc)" test "$rc" -eq 0
check "SIGTERM: the socket file is removed" test ! -e "$SOCK"
run -s "$SOCK" status
check "daemon not running: exit 3 (got $RC)" test "$RC" -eq 3
check "daemon not running: clear message" test "$ERR" = "cgwctl: cgwd is not running (no socket at $SOCK)"

start_daemon
kill -KILL "$DPID"
wait "$DPID" 2>/dev/null
check "killed: a stale socket is left" test -S "$SOCK"
run -s "$SOCK" status
check "stale socket: exit 3 and 'not running'" bash -c "[ $RC -eq 3 ] && grep -q 'cgwd is not running' '$TMP/err'"
check "a new daemon replaces the stale socket" start_daemon
check "and answers on it" wait_for 5 quiet ctl status
kill -TERM "$DPID"
wait "$DPID"
rc=$?
check "exit 0 again (got $rc)" test "$rc" -eq 0
if grep -qE 'ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:' "$TMP/daemon.log"; then
	not_ok "no sanitizer reports"
	grep -E -A5 'Sanitizer|runtime error' "$TMP/daemon.log" | head -30 | sed 's/^/# /'
else
	ok "no sanitizer reports"
fi
done_testing
