#!/usr/bin/env bash
# Dial-in DTUs: modbus-rtu-tcp buses with `listen:`. Two DTUs share one
# listening port and are told apart by their registration packets (one as
# text, one as hex); a heartbeat between the frames is dropped; an unknown
# registration is refused and logged once; a second connection with the
# same identity replaces the first. The DTUs are tests/tools/dtu_client.py.
source "$(dirname "$0")/../lib.sh"

POLL=$CGW_BUILD/tools/mb_poll
DTU=$TOP/tests/tools/dtu_client.py
[ -x "$POLL" ] || { not_ok "missing $POLL (make all)"; done_testing; exit 1; }

PORT=$(free_port)
mkdir -p "$TMP/profiles"
cat >"$TMP/profiles/meter.yaml" <<'YAML'
profile: meter
class: service
points:
  - {name: level, table: holding, address: 0, type: uint16}
  - {name: pressure, table: input, address: 3, type: uint16}
YAML
cat >"$TMP/cgw.yaml" <<YAML
gateway: {id: gw-test, site: test, state_dir: $TMP}
profile_dirs: [$TMP/profiles]
buses:
  - {name: pump-a, type: modbus-rtu-tcp, listen: "127.0.0.1:$PORT", register: "861234567890123", heartbeat: "HBHB", timeout: 300ms, retries: 0, offline_after: 2}
  - {name: pump-b, type: modbus-rtu-tcp, listen: "127.0.0.1:$PORT", register_hex: "A5 00 01 02", timeout: 300ms, retries: 0, offline_after: 2}
devices:
  - {id: tank-a, name: Tank A, profile: meter, bus: pump-a, unit: 1, poll: 200ms}
  - {id: tank-b, name: Tank B, profile: meter, bus: pump-b, unit: 4, poll: 200ms}
YAML
seen() { grep -qxF -- "$1" "$TMP/poll.out"; }

check "configuration with two DTUs on one port checks" quiet "$CGW_BUILD/cgwd" -c "$TMP/cgw.yaml" --check-config
mkfifo "$TMP/poll"
exec 4<>"$TMP/poll"
bg_start bash -c 'exec "$@" <"$0" >"$0.out" 2>"$0.err"' "$TMP/poll" "$POLL" -c "$TMP/cgw.yaml"
check "the gateway listens for DTUs" wait_for 10 port_open "$PORT"

bg_start /usr/bin/python3 "$DTU" "$PORT" 861234567890123 1000 HBHB </dev/null >"$TMP/dtu-a.out" 2>&1
DTU_A=$BG_PID
bg_start /usr/bin/python3 "$DTU" "$PORT" hex:A5000102 2000 </dev/null >"$TMP/dtu-b.out" 2>&1
check "DTU A (text registration) is read" wait_for 10 seen "reading tank-a level 1000 good"
check "...its input registers too" wait_for 5 seen "reading tank-a pressure 1003 good"
check "DTU B (hex registration) on the same port is read" wait_for 10 seen "reading tank-b level 2000 good"
sleep 1.5
echo stats >&4
wait_for 5 grep -q '^stats device tank-a ' "$TMP/poll.out"
crc=$(grep '^stats device tank-a ' "$TMP/poll.out" | tail -1 | sed -n 's/.* crc=\([0-9]*\).*/\1/p')
tmo=$(grep '^stats device tank-a ' "$TMP/poll.out" | tail -1 | sed -n 's/.* timeouts=\([0-9]*\).*/\1/p')
check "heartbeats between frames cost no poll (crc=$crc timeouts=$tmo)" test "$crc$tmo" = 00
# a device may have gone offline before its DTU dialled in; never since
offline_since_online() { # DEVICE: prints the offline lines after its first online
	sed -n "/^state $1 online\$/,\$p" "$TMP/poll.out" | grep -c "^state $1 offline\$"
}
check "no device offline once its DTU is in" \
	test "$(offline_since_online tank-a)$(offline_since_online tank-b)" = 00

# an unknown registration: refused, logged once however often it tries
for i in 1 2 3; do
	/usr/bin/python3 "$DTU" "$PORT" 869999999999999 5000 </dev/null >"$TMP/dtu-x$i.out" 2>&1 &
	_bg_pids+=($!)
done
check "unknown registration refused (connection closed)" \
	wait_for 10 bash -c "grep -qx closed '$TMP/dtu-x1.out' && grep -qx closed '$TMP/dtu-x3.out'"
check "...and logged once for the episode" \
	test "$(grep -c 'DTU connection refused: unknown registration' "$TMP/poll.err")" -eq 1
check "the log names what it refused" grep -q "'869999999999999'" "$TMP/poll.err"

# the same identity again: the new connection replaces the old one
bg_start /usr/bin/python3 "$DTU" "$PORT" 861234567890123 3000 HBHB </dev/null >"$TMP/dtu-a2.out" 2>&1
check "the second connection of DTU A is read" wait_for 10 seen "reading tank-a level 3000 good"
check "...and the first one is closed" wait_for 10 grep -qx closed "$TMP/dtu-a.out"
check "the replacement is logged" grep -q 'dialled in again' "$TMP/poll.err"
check "DTU B is not disturbed" bash -c "! grep -qx closed '$TMP/dtu-b.out'"

echo quit >&4
wait_for 10 grep -q '^summary ' "$TMP/poll.out"
if [ "$_tap_fail" -gt 0 ]; then
	diag "--- mb_poll stderr"; sed 's/^/# /' "$TMP/poll.err" | tail -30
fi
done_testing
