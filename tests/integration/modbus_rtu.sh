#!/usr/bin/env bash
# Modbus RTU end to end over a socat pseudo-terminal pair: cgw-sim answers
# as three units on one end, the bus driver (in mb_poll) polls the other.
# Values, a write, corrupt CRC frames (counted, never fatal), a silent unit,
# RS-485 mode refused by a pty (logged once), and the serial port vanishing
# and coming back (the driver reconnects, it never exits).
source "$(dirname "$0")/../lib.sh"

SIM=$CGW_BUILD/cgw-sim
POLL=$CGW_BUILD/tools/mb_poll
for b in "$SIM" "$POLL"; do
	[ -x "$b" ] || { not_ok "missing $b (make all)"; done_testing; exit 1; }
done
command -v socat >/dev/null || { not_ok "socat is not installed"; done_testing; exit 1; }

mkdir -p "$TMP/profiles"
cat >"$TMP/profiles/detector.yaml" <<'EOF'
profile: detector
class: fire
points:
  - {name: status, table: holding, address: 1, type: uint16, enum: {0: normal, 1: alarm}}
  - {name: smoke, table: input, address: 1, type: uint16, scale: 0.01}
  - {name: temperature, table: input, address: 2, type: int16, scale: 0.1}
  - {name: serial, table: holding, address: 10, type: 'string:8'}
  - {name: alarm_delay, table: holding, address: 20, type: uint32, order: CDAB, writable: true}
  - {name: buzzer, table: coil, address: 1, writable: true}
EOF
# the same devices on both ends of the line; address_base 1 on one of them
devices() {
	echo "devices:"
	echo "  - {id: det-1, name: 'Det 1', profile: detector, bus: rs485-1, unit: 1, poll: 200ms}"
	echo "  - {id: det-2, name: 'Det 2', profile: detector, bus: rs485-1, unit: 2, poll: 200ms}"
	echo "  - {id: det-9, name: 'Det 9', profile: detector, bus: rs485-1, unit: 9, poll: 200ms, address_base: 1}"
}
config() { # serial device
	echo "gateway: {id: gw-test, site: test, state_dir: $TMP}"
	echo "profile_dirs: [$TMP/profiles]"
	echo "buses:"
	echo "  - {name: rs485-1, type: modbus-rtu, device: $1, baud: 19200, parity: E, rs485: true, timeout: 150ms, retries: 1, offline_after: 2, frame_delay: 2ms}"
	devices
}
config "$TMP/ttyA" >"$TMP/poll.yaml"
config "$TMP/ttyB" >"$TMP/sim.yaml"

sim() { echo "$*" | socat -t 5 - "UNIX-CONNECT:$TMP/sim.sock"; }
seen() { grep -qxF -- "$1" "$TMP/poll.out"; }
count() { grep -cxF -- "$1" "$TMP/poll.out"; }
field() { # device key: the last stats value
	grep "^stats device $1 " "$TMP/poll.out" | tail -1 | sed -n "s/.* $2=\([0-9]*\).*/\1/p"
}
start_line() {
	bg_start socat pty,raw,echo=0,link="$TMP/ttyA" pty,raw,echo=0,link="$TMP/ttyB"
	SOCAT_PID=$BG_PID
	wait_for 5 test -e "$TMP/ttyA" -a -e "$TMP/ttyB"
}

# The driver starts before the line exists: it must wait and retry.
mkfifo "$TMP/poll"
exec 4<>"$TMP/poll"
bg_start bash -c 'exec "$@" <"$0" >"$0.out" 2>"$0.err"' "$TMP/poll" "$POLL" -c "$TMP/poll.yaml"
POLL_PID=$BG_PID
check "missing port is logged, the driver waits" \
	wait_for 10 grep -q 'cannot connect to .*ttyA.*retrying' "$TMP/poll.err"

check "socat pty pair" start_line
bg_start "$SIM" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" >"$TMP/sim.out" 2>"$TMP/sim.err"
SIM_PID=$BG_PID
check "simulator ready" wait_for 10 grep -qx ready "$TMP/sim.out"
sim set det-1 temperature -4.5 >/dev/null
sim set det-1 serial SN-0042 >/dev/null
sim set det-9 status 1 >/dev/null
sim set det-2 alarm_delay 70000 >/dev/null

check "units online once the port appears" wait_for 15 bash -c \
	"grep -qx 'state det-1 online' '$TMP/poll.out' && grep -qx 'state det-9 online' '$TMP/poll.out'"
check "negative scaled value" wait_for 5 seen "reading det-1 temperature -4.5 good"
check "string point" wait_for 5 seen "reading det-1 serial SN-0042 good"
check "address_base 1 applied" wait_for 5 seen "reading det-9 status 1 good"
check "uint32 CDAB" wait_for 5 seen "reading det-2 alarm_delay 70000 good"
check "RS-485 refused by a pty is logged once" \
	test "$(grep -c 'cannot switch to RS-485 mode' "$TMP/poll.err")" -eq 1

echo "write det-2 alarm_delay 123456" >&4
check "write over RTU (FC16)" wait_for 10 seen "write-result 1 0 -"
check "...landed in the device" test "$(sim get det-2 alarm_delay)" = 123456
echo "write det-9 buzzer true" >&4
check "coil write over RTU (FC05)" wait_for 10 seen "write-result 2 0 -"
check "...landed in the device" test "$(sim get det-9 buzzer)" = true

# corrupt CRC: counted as CRC errors, the unit goes offline, nothing crashes
check "corrupt CRC answers" test "$(sim garbage det-2 on)" = ok
check "corrupt CRC: unit offline" wait_for 10 bash -c "[ \$(grep -cxF 'state det-2 offline' '$TMP/poll.out') -ge 2 ]"
sim set det-1 smoke 0.35 >/dev/null
check "the other units are still read" wait_for 10 seen "reading det-1 smoke 0.35 good"
sim garbage det-2 off >/dev/null
check "unit back after the noise" wait_for 15 bash -c "[ \$(grep -cxF 'state det-2 online' '$TMP/poll.out') -ge 2 ]"
echo "stats" >&4
wait_for 5 grep -q '^stats device det-2 ' "$TMP/poll.out"
crc=$(field det-2 crc)
check "CRC errors counted ($crc)" test "${crc:-0}" -ge 2
check "CRC episode logged once" test "$(grep -c 'unit 2 (det-2): CRC error' "$TMP/poll.err")" -eq 1

# an answer from another unit (two devices set to one address, a neighbour
# answering late): counted as foreign, never as a CRC error, never as data
busfield() { grep "^stats bus rs485-1 " "$TMP/poll.out" | tail -1 | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }
fresh_stats() {
	local n; n=$(grep -c '^stats bus ' "$TMP/poll.out")
	echo "stats" >&4
	wait_for 5 bash -c "[ \$(grep -c '^stats bus ' '$TMP/poll.out') -gt $n ]"
}
fresh_stats
f0=$(busfield foreign) crc0=$(field det-2 crc)
off0=$(count "state det-2 offline")
check "answers as another unit" test "$(sim as-unit det-2 9)" = ok
sim set det-2 alarm_delay 4242 >/dev/null
check "...the unit goes offline: its own answer never comes" \
	wait_for 10 bash -c "[ \$(grep -cxF 'state det-2 offline' '$TMP/poll.out') -gt $off0 ]"
fresh_stats
check "...counted as foreign answers ($(busfield foreign) > $f0)" test "$(busfield foreign)" -gt "${f0:-0}"
check "...not as CRC errors ($(field det-2 crc) = $crc0)" test "$(field det-2 crc)" = "$crc0"
check "...never taken as data" bash -c "! grep -qxF 'reading det-2 alarm_delay 4242 good' '$TMP/poll.out'"
sim as-unit det-2 off >/dev/null
check "...the unit is back once it answers as itself" wait_for 15 seen "reading det-2 alarm_delay 4242 good"

check "silence a unit" test "$(sim silence det-9 on)" = ok
check "silent unit offline" wait_for 10 bash -c "[ \$(grep -cxF 'state det-9 offline' '$TMP/poll.out') -ge 2 ]"
check "its points stale" test "$(count "reading det-9 status - stale")" -ge 2
sim silence det-9 off >/dev/null
check "silent unit back" wait_for 15 bash -c "[ \$(grep -cxF 'state det-9 online' '$TMP/poll.out') -ge 2 ]"

# the line goes away (adapter unplugged) and comes back
kill -TERM "$SOCAT_PID"
check "lost port is logged" wait_for 10 grep -q 'connection lost' "$TMP/poll.err"
check "every unit goes offline" wait_for 10 bash -c \
	"[ \$(grep -cxF 'state det-1 offline' '$TMP/poll.out') -ge 1 ]"
check "mb_poll is still running" kill -0 "$POLL_PID"
check "socat pty pair again" start_line
check "reconnected" wait_for 20 grep -q 'connected again' "$TMP/poll.err"
check "units online again" wait_for 15 bash -c "[ \$(grep -cxF 'state det-1 online' '$TMP/poll.out') -ge 2 ]"

echo "quit" >&4
if wait_for 10 bash -c "! kill -0 $POLL_PID 2>/dev/null"; then
	wait "$POLL_PID"
	check "mb_poll quits with status 0" test $? -eq 0
else
	not_ok "mb_poll quits with status 0"
fi
if [ "$_tap_fail" -gt 0 ]; then
	diag "--- mb_poll stderr"; sed 's/^/# /' "$TMP/poll.err" | tail -30
	diag "--- sim stderr"; sed 's/^/# /' "$TMP/sim.err" | tail -10
fi
done_testing
