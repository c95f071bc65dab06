#!/usr/bin/env bash
# The MQTT ingest driver against a real mosquitto, with mosquitto_pub as the
# devices and build/tools/mi_listen printing what the driver hands to the
# core: every shipped MQTT profile (parcel-locker, access-controller,
# camera-events) gives the right points and events; malformed payloads are
# counted and quarantined while other devices keep flowing; stale_after
# takes a silent device offline and its next message brings it back; a
# broker restart is survived (reconnect, resubscribe, messages flow again);
# TLS with a CA and a password file. Sequencing is by waiting for output
# lines, never by sleeping.
. "$(dirname "$0")/../lib.sh"
MI=$CGW_BUILD/tools/mi_listen
export CGW_PROFILES_DIR=$TOP/config/profiles
OUT=$TMP/out
LOG=$TMP/log

if [ ! -x "$MI" ]; then
	not_ok "mi_listen is built ($MI)"
	done_testing
	exit 1
fi
port=$(free_port)
start_mosquitto "$port" || not_ok "mosquitto started on $port"
cat >"$TMP/cgw.yaml" <<YAML
gateway: {id: gw-test, site: test, state_dir: $TMP}
buses:
  - {name: lan, type: mqtt, url: "mqtt://127.0.0.1:$port", max_payload: 4KB}
devices:
  - {id: locker-1, name: 北门快递柜, profile: parcel-locker, bus: lan, topic: lockers/north}
  - {id: locker-2, name: 南门快递柜, profile: parcel-locker, bus: lan, topic: lockers/south}
  - {id: acs-1, name: 1号楼门禁, profile: access-controller, bus: lan, topic: access/b1}
  - {id: cam-1, name: 南门摄像机, profile: camera-events, bus: lan, topic: cameras/south-gate}
  - {id: quiet-1, name: 西门快递柜, profile: parcel-locker, bus: lan, topic: lockers/west,
     stale_after: 1s}
YAML

bg_start "$MI" -c "$TMP/cgw.yaml" -l info >"$OUT" 2>"$LOG"
mi=$BG_PID
check "mi_listen connects and subscribes" wait_for 10 grep -q "subscribed to 18 topic filters" "$LOG"

pub() { mosquitto_pub -p "$port" -q 1 -t "$1" -m "$2"; }
# seen LINE: a line of the output starts with LINE (then " ts=..." or ends)
seen() { grep -q "^$1\( ts=.*\)\?\$" "$OUT"; }
count() { grep -c -- "$1" "$2"; }
has_n() { [ "$(count "$1" "$2")" -eq "$3" ]; } # PATTERN FILE N: exactly N lines
expect() { # description line...: wait for each line
	local d=$1 l; shift
	for l in "$@"; do
		if ! wait_for 5 seen "$l"; then not_ok "$d (missing: $l)"; return; fi
	done
	ok "$d"
}

# ---- parcel-locker
pub lockers/north/status '{"mains":true,"battery":87,"occupied":41,"free":19,"overdue":3,"tamper":false,"ts":1763700000000}'
expect "parcel-locker status: online, then every status point" \
	"state locker-1 online" \
	"reading locker-1 mains true good ts=1763700000000" \
	"reading locker-1 battery 87 good" "reading locker-1 occupied 41 good" \
	"reading locker-1 overdue 3 good" "reading locker-1 tamper false good"
check "the online state comes before the values" \
	test "$(grep -m1 -n 'locker-1' "$OUT" | cut -d: -f2-)" = "state locker-1 online"
pub lockers/north/door '{"compartment":"A07","state":"open","forced":true}'
pub lockers/north/parcel '{"compartment":"A07","action":"picked_up","code":"8812"}'
expect "parcel-locker door and parcel: forced value, door and parcel events" \
	"reading locker-1 forced true good" "event locker-1 door open" \
	"event locker-1 parcel picked_up"
pub lockers/north/status '{"mains":true,"battery":87,"occupied":41,"free":19,"overdue":3,"tamper":false}'
pub lockers/north/status '{"mains":true,"battery":86,"occupied":41,"free":19,"overdue":3,"tamper":false}'
expect "an unchanged status is not repeated; a change is sent" "reading locker-1 battery 86 good"
check "unchanged values were sent once" test "$(count '^reading locker-1 mains ' "$OUT")" -eq 1

# ---- access-controller
pub access/b1/card '{"ts":1763700001000,"card":"0012345678","result":"granted"}'
pub access/b1/card '{"card":"0099999999","result":"invalid"}'
pub access/b1/card '{"card":"0012345678","result":"duress"}'
pub access/b1/door '{"state":"open","forced":true}'
pub access/b1/status '{"lock":"unlocked","tamper":false}'
expect "access-controller: card events, door event, forced, lock, tamper" \
	"state acs-1 online" \
	"event acs-1 card granted ts=1763700001000" "event acs-1 card_no 0012345678 ts=1763700001000" \
	"event acs-1 card invalid" "event acs-1 card_no 0099999999" "event acs-1 card duress" \
	"event acs-1 door open" "reading acs-1 forced true good" \
	"reading acs-1 lock unlocked good" "reading acs-1 tamper false good"

# ---- camera-events
for t in intrusion line_crossing tamper video_loss; do pub "cameras/south-gate/$t" '{"active":true}'; done
pub cameras/south-gate/motion '{"active":true}'
pub cameras/south-gate/motion '{"active":false}'
pub cameras/south-gate/heartbeat '{"uptime":12345}'
expect "camera-events: alarm points, motion events (rate-limited), heartbeat" \
	"reading cam-1 intrusion true good" "reading cam-1 line_crossing true good" \
	"reading cam-1 tamper true good" "reading cam-1 video_loss true good" \
	"event cam-1 motion true" "reading cam-1 uptime 12345 good"
check "camera-events: a second motion event within 30 s is held back" \
	bash -c "! grep -q 'event cam-1 motion false' '$OUT'"

# ---- malformed payloads on locker-2 while locker-1 keeps flowing
printf '{"mains":true%5000s}' "" >"$TMP/huge.json"
printf '\x89PNG\r\n\x1a\n\x00\x00\xff\xfe' >"$TMP/binary"
pub lockers/south/status '{"mains":'
mosquitto_pub -p "$port" -q 1 -t lockers/south/status -f "$TMP/huge.json"
pub lockers/south/status '{"mains":"yes","battery":"full"}'
mosquitto_pub -p "$port" -q 1 -t lockers/south/status -f "$TMP/binary"
pub lockers/north/status '{"mains":false,"battery":86}'
# one connection, in order: once this is seen, the bad ones were handled
expect "another device keeps flowing" "reading locker-1 mains false good"
kill -USR1 "$mi"
check "a report follows SIGUSR1" wait_for 5 grep -q "^quarantine " "$OUT"
check "four bad payloads counted for locker-2" grep -qx "bad locker-2 4" "$OUT"
check "none for locker-1" grep -qx "bad locker-1 0" "$OUT"
check "four payloads quarantined" grep -qx "quarantine 4" "$OUT"
check "quarantine: invalid JSON" grep -q "^quarantined locker-2 lockers/south/status 9 invalid JSON" "$OUT"
check "quarantine: over max_payload, with its real size" \
	grep -q "^quarantined locker-2 lockers/south/status 5014 payload of 5014 bytes is larger than max_payload" "$OUT"
check "quarantine: wrong type names the point" \
	grep -q "^quarantined locker-2 lockers/south/status 32 point mains: 'yes' is not a boolean" "$OUT"
check "quarantine: binary" grep -q "^quarantined locker-2 lockers/south/status 12 binary payload" "$OUT"
check "nothing of locker-2 reached the core" test "$(count '^reading locker-2' "$OUT")" -eq 0
check "the episode is logged once" test "$(count 'locker-2: bad payload' "$LOG")" -eq 1
pub lockers/south/status '{"mains":true}'
expect "locker-2 recovers with a good payload" "reading locker-2 mains true good"
# one good payload right after bad ones does not end the episode: a device
# that alternates stays one episode (it ends after a quiet minute, which the
# unit test covers); the bad one after it is counted, not logged
sleep 0.5
check "no end line for a good payload right after the bad ones" \
	test "$(count 'locker-2: good payloads again' "$LOG")" -eq 0
pub lockers/south/status 'nope'
pub lockers/south/status '{"mains":false}'
expect "locker-2 flows between bad payloads" "reading locker-2 mains false good"
check "alternating good and bad stays one episode: logged once" \
	test "$(count 'locker-2: bad payload' "$LOG")" -eq 1

# ---- staleness: quiet-1 (stale_after 1s) said nothing since the start
check "a silent device goes offline after stale_after" wait_for 5 seen "state quiet-1 offline"
pub lockers/west/status '{"mains":true}'
expect "its next message brings it back online, then its value" \
	"state quiet-1 online" "reading quiet-1 mains true good"
check "and silent again, offline again" wait_for 5 has_n '^state quiet-1 offline' "$OUT" 2
check "online came between the two offlines" \
	test "$(grep '^state quiet-1' "$OUT" | tr '\n' ' ')" = "state quiet-1 offline state quiet-1 online state quiet-1 offline "
check "devices with the default stale_after stay online" test "$(count '^state locker-1 offline' "$OUT")" -eq 0

# ---- broker restart: reconnect, resubscribe, messages flow again
kill -TERM "$MOSQ_PID"
wait_for 5 bash -c "! kill -0 $MOSQ_PID"
check "the loss is logged" wait_for 5 grep -q "connection to 127.0.0.1:$port lost" "$LOG"
start_mosquitto "$port" || not_ok "mosquitto restarted on $port"
check "reconnects and subscribes again" wait_for 10 has_n 'subscribed to 18 topic filters' "$LOG" 2
check "the end of the outage is logged" grep -q "connected to 127.0.0.1:$port after" "$LOG"
check "the outage is logged once (one warning)" \
	test "$(grep -c 'warn.*mqtt-ingest.*\(lost\|cannot connect\)' "$LOG")" -eq 1
pub lockers/north/status '{"mains":true,"battery":55}'
expect "messages after the restart arrive" "reading locker-1 battery 55 good"

kill -TERM "$mi"
rc=124
for _ in $(seq 500); do
	if ! kill -0 "$mi" 2>/dev/null; then wait "$mi"; rc=$?; break; fi
	sleep 0.01
done
check "mi_listen stops cleanly on SIGTERM (exit $rc)" test "$rc" -eq 0
check "final report printed" test "$(tail -1 "$OUT")" = "quarantine 5"
if grep -q "ERROR: \(AddressSanitizer\|LeakSanitizer\)\|runtime error" "$LOG"; then
	not_ok "no sanitizer reports"
	grep -A5 "Sanitizer\|runtime error" "$LOG" | sed 's/^/# /' | head -20
else
	ok "no sanitizer reports"
fi

# ---- TLS with a private CA, user name and password file
tport=$(free_port)
(
	cd "$TMP" || exit 1
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
		-subj "/CN=cgw test CA" 2>/dev/null &&
	openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj "/CN=127.0.0.1" \
		2>/dev/null &&
	printf 'subjectAltName=IP:127.0.0.1\n' >srv.ext &&
	openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem \
		-days 2 -extfile srv.ext 2>/dev/null
) || not_ok "test certificates made"
mosquitto_passwd -c -b "$TMP/passwd" gw s3cret-pass 2>/dev/null || not_ok "password file made"
printf 's3cret-pass\n' >"$TMP/lan.pass"
chmod 0600 "$TMP/lan.pass" "$TMP/srv.key"
# as root, mosquitto would drop to user mosquitto and not read these files
[ "$(id -u)" -eq 0 ] && echo "user root" >"$TMP/tls.conf"
cat >>"$TMP/tls.conf" <<CONF
listener $tport 127.0.0.1
cafile $TMP/ca.pem
certfile $TMP/srv.pem
keyfile $TMP/srv.key
allow_anonymous false
password_file $TMP/passwd
persistence false
CONF
bg_start mosquitto -c "$TMP/tls.conf" >"$TMP/mosquitto-tls.log" 2>&1
wait_for 5 port_open "$tport" || not_ok "TLS mosquitto started"
cat >"$TMP/tls.yaml" <<YAML
gateway: {id: gw-test, site: test, state_dir: $TMP}
buses:
  - {name: lan-tls, type: mqtt, url: "mqtts://127.0.0.1:$tport", ca_file: $TMP/ca.pem,
     username: gw, password_file: $TMP/lan.pass}
devices:
  - {id: locker-t, name: 东门快递柜, profile: parcel-locker, bus: lan-tls, topic: lockers/east}
YAML
bg_start "$MI" -c "$TMP/tls.yaml" -l info >"$TMP/tls.out" 2>"$TMP/tls.log"
check "TLS: connects with CA and password, subscribes" \
	wait_for 10 grep -q "subscribed to 3 topic filters" "$TMP/tls.log"
mosquitto_pub -h 127.0.0.1 -p "$tport" --cafile "$TMP/ca.pem" -u gw -P s3cret-pass -q 1 \
	-t lockers/east/status -m '{"mains":true}'
check "TLS: a message arrives" wait_for 5 grep -q "^reading locker-t mains true good" "$TMP/tls.out"
check "TLS: the password is not logged" bash -c "! grep -q s3cret '$TMP/tls.log' '$LOG'"
done_testing
