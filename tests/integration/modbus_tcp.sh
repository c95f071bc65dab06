#!/usr/bin/env bash
# Modbus TCP end to end: cgw-sim serves 12 units on one loopback port, the
# bus driver runs in mb_poll (tests/tools/mb_poll.c), which prints every
# item the driver hands to the core. Values, many units, a unit going silent
# (offline, then online), exception responses (one bad register does not
# blind the device), a corrupt answer, a write that lands in the simulator.
source "$(dirname "$0")/../lib.sh"

SIM=$CGW_BUILD/cgw-sim
POLL=$CGW_BUILD/tools/mb_poll
for b in "$SIM" "$POLL"; do
	[ -x "$b" ] || { not_ok "missing $b (make all)"; done_testing; exit 1; }
done
command -v socat >/dev/null || { not_ok "socat is not installed"; done_testing; exit 1; }

PORT=$(free_port)
mkdir -p "$TMP/profiles"
cat >"$TMP/profiles/smoke.yaml" <<'EOF'
profile: smoke
class: fire
points:
  - {name: status, table: holding, address: 0, type: uint16, enum: {0: normal, 1: alarm, 2: fault}}
  - {name: temperature, table: input, address: 2, type: int16, scale: 0.1, deadband: 0.2}
  - {name: pressure, table: holding, address: 4, type: float32, order: CDAB}
  - {name: setpoint, table: holding, address: 10, type: uint16, writable: true}
  - {name: relay, table: coil, address: 3, writable: true}
  - {name: tamper, table: discrete, address: 0}
EOF
{
	echo "gateway: {id: gw-test, site: test, state_dir: $TMP}"
	echo "profile_dirs: [$TMP/profiles]"
	echo "buses:"
	echo "  - {name: fire-io, type: modbus-tcp, host: 127.0.0.1, port: $PORT, timeout: 200ms, retries: 0, offline_after: 2}"
	echo "devices:"
	for u in $(seq 1 12); do
		echo "  - {id: smoke-$u, name: 'Smoke $u', profile: smoke, bus: fire-io, unit: $u, poll: 100ms}"
	done
} >"$TMP/cgw.yaml"

sim() { echo "$*" | socat -t 5 - "UNIX-CONNECT:$TMP/sim.sock"; }
seen() { grep -qxF -- "$1" "$TMP/poll.out"; }
# count LINE: how many times the exact line was printed
count() { grep -cxF -- "$1" "$TMP/poll.out"; }

bg_start "$SIM" -c "$TMP/cgw.yaml" --control "$TMP/sim.sock" >"$TMP/sim.out" 2>"$TMP/sim.err"
SIM_PID=$BG_PID
check "simulator listens on port $PORT" wait_for 10 port_open "$PORT"
check "simulator takes commands" test "$(sim set smoke-3 temperature 23.5)" = ok
sim set smoke-3 pressure 1.25 >/dev/null
sim set smoke-1 status 1 >/dev/null

# mb_poll reads commands from a fifo that fd 4 keeps open. The redirection
# is inside `bash -c`: an asynchronous command without its own redirection
# gets /dev/null as stdin.
mkfifo "$TMP/poll"
exec 4<>"$TMP/poll"
bg_start bash -c 'exec "$@" <"$0" >"$0.out" 2>"$0.err"' "$TMP/poll" "$POLL" -c "$TMP/cgw.yaml"
POLL_PID=$BG_PID

all_online() {
	for u in $(seq 1 12); do seen "state smoke-$u online" || return 1; done
}
check "all 12 units online" wait_for 15 all_online
check "int16 with scale decoded" seen "reading smoke-3 temperature 23.5 good"
check "float32 CDAB decoded" seen "reading smoke-3 pressure 1.25 good"
check "enum point sent as its raw integer" seen "reading smoke-1 status 1 good"
check "coil and discrete read" seen "reading smoke-12 tamper false good"

sim set smoke-5 temperature 30.1 >/dev/null
check "a changed value is reported" wait_for 10 seen "reading smoke-5 temperature 30.1 good"
sim set smoke-5 temperature 30.2 >/dev/null
sim set smoke-5 status 2 >/dev/null
wait_for 10 seen "reading smoke-5 status 2 good"
check "a change within the deadband is not reported" \
	test "$(grep -c '^reading smoke-5 temperature' "$TMP/poll.out")" -eq 2

# a unit goes silent: offline once, stale once per point, others carry on
check "silence a unit" test "$(sim silence smoke-4 on)" = ok
check "silent unit goes offline" wait_for 10 seen "state smoke-4 offline"
check "its points are stale, with no value" seen "reading smoke-4 temperature - stale"
sim set smoke-6 temperature 19.5 >/dev/null
check "other units keep being polled" wait_for 10 seen "reading smoke-6 temperature 19.5 good"
check "offline is reported once" test "$(count "state smoke-4 offline")" -eq 1
check "stale is reported once per episode" test "$(count "reading smoke-4 temperature - stale")" -eq 1
sim silence smoke-4 off >/dev/null
check "unit back online" wait_for 15 seen "state smoke-4 online"
check "its values are sent again" wait_for 5 bash -c "[ \$(grep -cxF 'reading smoke-4 temperature 0 good' '$TMP/poll.out') -eq 2 ]"

# exception 2 on one register of a merged read: only that point is bad
sim exception smoke-7 4 >/dev/null
check "illegal address: that point is bad" wait_for 10 seen "reading smoke-7 pressure - bad"
sim set smoke-7 status 1 >/dev/null
check "the rest of the device is still read" wait_for 10 seen "reading smoke-7 status 1 good"
sim exception smoke-7 4 off >/dev/null
check "the point recovers when the register answers" wait_for 10 seen "reading smoke-7 pressure 0 good"
# another exception code: the points are stale, the device stays online
sim exception smoke-8 0 4 >/dev/null
check "server failure exception: stale" wait_for 10 seen "reading smoke-8 status - stale"
check "...and the device is not offline" bash -c "! grep -qxF 'state smoke-8 offline' '$TMP/poll.out'"
sim exception smoke-8 0 off >/dev/null

# a write lands in the simulator and its result comes back
echo "write smoke-2 setpoint 42" >&4
check "write queued" wait_for 5 seen "write-queued 1"
check "write result ok" wait_for 10 seen "write-result 1 0 -"
check "write landed in the device" test "$(sim get smoke-2 setpoint)" = 42
echo "write smoke-2 relay true" >&4
wait_for 10 seen "write-result 2 0 -"
check "coil write landed" test "$(sim get smoke-2 relay)" = true
check "written value read back" wait_for 10 seen "reading smoke-2 setpoint 42 good"
echo "write smoke-2 status 1" >&4
check "a point that is not writable is refused" wait_for 5 bash -c "grep -q '^write-error -22' '$TMP/poll.out'"

# corrupt answers are counted, not fatal
sim garbage smoke-9 on >/dev/null
check "corrupt answers make the unit offline" wait_for 10 seen "state smoke-9 offline"
sim garbage smoke-9 off >/dev/null
check "and it comes back" wait_for 15 bash -c "[ \$(grep -cxF 'state smoke-9 online' '$TMP/poll.out') -ge 2 ]"
echo "stats" >&4
check "stats printed" wait_for 5 bash -c "grep -q '^stats device smoke-9 ' '$TMP/poll.out'"
# the simulator's corrupt TCP answer carries a transaction id nobody sent:
# a foreign answer, counted and dropped (the unit then times out)
foreign=$(grep '^stats bus fire-io ' "$TMP/poll.out" | tail -1 | sed -n 's/.* foreign=\([0-9]*\).*/\1/p')
check "answers with a foreign transaction id counted ($foreign)" test "${foreign:-0}" -gt 0
exc=$(grep '^stats device smoke-7 ' "$TMP/poll.out" | tail -1 | sed -n 's/.* exceptions=\([0-9]*\).*/\1/p')
check "exceptions counted ($exc)" test "${exc:-0}" -gt 0
tmo=$(grep '^stats device smoke-4 ' "$TMP/poll.out" | tail -1 | sed -n 's/.* timeouts=\([0-9]*\).*/\1/p')
check "timeouts counted ($tmo)" test "${tmo:-0}" -gt 0
check "timeout logged once for the episode" test "$(grep -c 'unit 4 (smoke-4): timeout' "$TMP/poll.err")" -eq 1

# the simulator serves several clients at once
sim set smoke-10 temperature 12.5 >/dev/null
bg_start "$POLL" -c "$TMP/cgw.yaml" -d 3 </dev/null >"$TMP/poll2.out" 2>"$TMP/poll2.err"
check "a second client is served too" wait_for 10 grep -qxF "reading smoke-10 temperature 12.5 good" "$TMP/poll2.out"

echo "quit" >&4
if wait_for 10 bash -c "! kill -0 $POLL_PID 2>/dev/null"; then
	wait "$POLL_PID"
	check "mb_poll quits with status 0" test $? -eq 0
else
	not_ok "mb_poll quits with status 0"
fi
check "summary printed" grep -q '^summary requests=' "$TMP/poll.out"
kill -TERM "$SIM_PID"
if wait_for 10 bash -c "! kill -0 $SIM_PID 2>/dev/null"; then
	wait "$SIM_PID"
	check "simulator exits cleanly on SIGTERM" test $? -eq 0
else
	not_ok "simulator exits cleanly on SIGTERM"
fi
if [ "$_tap_fail" -gt 0 ]; then
	diag "--- mb_poll stderr"; sed 's/^/# /' "$TMP/poll.err" | tail -30
	diag "--- sim stderr"; sed 's/^/# /' "$TMP/sim.err" | tail -10
fi
done_testing
