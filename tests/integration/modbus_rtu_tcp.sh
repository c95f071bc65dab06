#!/usr/bin/env bash
# modbus-rtu-tcp (RTU frames over TCP, as a serial server in transparent mode
# carries them) against an independent implementation: Debian's pymodbus
# serving RTU frames over TCP, behind a proxy that misbehaves on the link
# (tests/tools/rtu_tcp_peer.py). The bus driver runs in mb_poll, which prints
# every item it hands to the core. Values of every table, a write, an
# exception, then garbage, a bad CRC, truncated answers, answers as another
# unit, answers sent twice and late answers on that link.
source "$(dirname "$0")/../lib.sh"

POLL=$CGW_BUILD/tools/mb_poll
PEER=$TOP/tests/tools/rtu_tcp_peer.py
[ -x "$POLL" ] || { not_ok "missing $POLL (make all)"; done_testing; exit 1; }
if ! /usr/bin/python3 -c 'import pymodbus' 2>/dev/null; then
	not_ok "python3-pymodbus is not installed (make deps)"; done_testing; exit 1
fi

SRV_PORT=$(free_port)
PX_PORT=$(free_port)
while [ "$PX_PORT" = "$SRV_PORT" ]; do PX_PORT=$(free_port); done
mkdir -p "$TMP/profiles"
cat >"$TMP/profiles/io.yaml" <<'YAML'
profile: io
class: service
points:
  - {name: h0, table: holding, address: 0, type: uint16}
  - {name: h2, table: holding, address: 2, type: uint16, writable: true}
  - {name: in1, table: input, address: 1, type: uint16}
  - {name: c1, table: coil, address: 1}
  - {name: d0, table: discrete, address: 0}
YAML
cat >"$TMP/profiles/beyond.yaml" <<'YAML'
profile: beyond
class: service
points:
  - {name: ok, table: holding, address: 0, type: uint16}
  - {name: missing, table: holding, address: 40, type: uint16}
YAML
cat >"$TMP/cgw.yaml" <<YAML
gateway: {id: gw-test, site: test, state_dir: $TMP}
profile_dirs: [$TMP/profiles]
buses:
  - {name: ss, type: modbus-rtu-tcp, host: 127.0.0.1, port: $PX_PORT, baud: 19200, timeout: 250ms, retries: 0, offline_after: 2}
devices:
  - {id: a, name: A, profile: io, bus: ss, unit: 1, poll: 100ms}
  - {id: b, name: B, profile: io, bus: ss, unit: 2, poll: 100ms}
  - {id: c, name: C, profile: beyond, bus: ss, unit: 3, poll: 100ms}
YAML
: >"$TMP/faults"
fault() { echo "$*" >"$TMP/faults"; }
seen() { grep -qxF -- "$1" "$TMP/poll.out"; }
count() { grep -cxF -- "$1" "$TMP/poll.out"; }
# stat DEVICE|bus FIELD: the last printed value of a statistics field
stat() {
	local pat="^stats device $1 "
	[ "$1" = bus ] && pat="^stats bus ss "
	grep "$pat" "$TMP/poll.out" | tail -1 | sed -n "s/.* $2=\([0-9]*\).*/\1/p"
}
fresh_stats() { # prints stats and waits until they are in the output
	local n; n=$(grep -c '^stats bus ' "$TMP/poll.out")
	echo stats >&4
	wait_for 5 bash -c "[ \$(grep -c '^stats bus ' '$TMP/poll.out') -gt $n ]"
}

check "cgw configuration accepts a modbus-rtu-tcp bus" quiet "$CGW_BUILD/cgwd" -c "$TMP/cgw.yaml" --check-config
bg_start /usr/bin/python3 "$PEER" server "$SRV_PORT" </dev/null >"$TMP/srv.log" 2>&1
bg_start /usr/bin/python3 "$PEER" proxy "$PX_PORT" "$SRV_PORT" "$TMP/faults" </dev/null >"$TMP/px.log" 2>&1
check "pymodbus RTU-over-TCP server listens" wait_for 15 port_open "$SRV_PORT"
check "fault proxy listens" wait_for 15 port_open "$PX_PORT"

mkfifo "$TMP/poll"
exec 4<>"$TMP/poll"
bg_start bash -c 'exec "$@" <"$0" >"$0.out" 2>"$0.err"' "$TMP/poll" "$POLL" -c "$TMP/cgw.yaml"

check "unit 1 online" wait_for 15 seen "state a online"
check "holding register read" wait_for 5 seen "reading a h0 100 good"
check "another unit's holding register" wait_for 5 seen "reading b h0 200 good"
check "input register read" seen "reading a in1 1001 good"
check "coil read" seen "reading a c1 true good"
check "discrete input read" seen "reading a d0 false good"
check "exception 2 from pymodbus marks that point bad" wait_for 5 seen "reading c missing - bad"
check "...and the rest of the device is read" seen "reading c ok 300 good"
echo "write a h2 4242" >&4
check "write result ok" wait_for 10 seen "write-result 1 0 -"
check "written value read back from pymodbus" wait_for 10 seen "reading a h2 4242 good"

# garbage before every answer of unit 1: the framer resynchronises, nothing is lost
fresh_stats; d0=$(stat a done)
fault "1 garbage"
sleep 1.5
fresh_stats
check "garbage before the answers: unit 1 keeps every poll ($(stat a done) > $d0)" \
	test "$(stat a done)" -ge $((d0 + 8))
check "...and is never offline" bash -c "! grep -qxF 'state a offline' '$TMP/poll.out'"

# a bad CRC: never data; the unit goes offline, the others carry on
fault "2 badcrc"
check "bad CRC: unit 2 offline" wait_for 10 seen "state b offline"
check "bad CRC: its points stale, no value taken" seen "reading b h0 - stale"
fresh_stats
check "bad CRC counted as invalid frames ($(stat b crc))" test "$(stat b crc)" -gt 0
fault ""
check "unit 2 back when its answers are good again" wait_for 10 bash -c "[ \$(grep -cxF 'state b online' '$TMP/poll.out') -ge 2 ]"

# truncated answers: an invalid frame, not a hang
fault "2 truncate"
check "truncated answers: unit 2 offline" wait_for 10 bash -c "[ \$(grep -cxF 'state b offline' '$TMP/poll.out') -ge 2 ]"
fresh_stats; c1=$(stat b crc)
fault ""
wait_for 10 bash -c "[ \$(grep -cxF 'state b online' '$TMP/poll.out') -ge 3 ]"

# answers as another unit: counted as foreign, never taken as data
fresh_stats; f0=$(stat bus foreign)
from=$(wc -l <"$TMP/poll.out")
fault "2 wrongunit"
check "wrong unit: unit 2 offline" wait_for 10 bash -c "[ \$(grep -cxF 'state b offline' '$TMP/poll.out') -ge 3 ]"
fresh_stats
check "wrong-unit answers counted as foreign ($(stat bus foreign) > $f0)" test "$(stat bus foreign)" -gt "$f0"
to=$(wc -l <"$TMP/poll.out")
check "no value of unit 2 taken while it answered as another unit" \
	bash -c "! sed -n '$((from + 1)),${to}p' '$TMP/poll.out' | grep -q '^reading b .* good'"
fault ""
wait_for 10 bash -c "[ \$(grep -cxF 'state b online' '$TMP/poll.out') -ge 4 ]"

# twice: the repeated answer is dropped; no neighbour loses a poll
fresh_stats; da=$(stat a done) ; db=$(stat b done); s0=$(stat bus stale_bytes)
offl=$(grep -c 'offline$' "$TMP/poll.out")
fault "1 twice"
sleep 2
fresh_stats
check "answer sent twice: no device goes offline" test "$(grep -c 'offline$' "$TMP/poll.out")" -eq "$offl"
check "the repeat is dropped as stale ($(stat bus stale_bytes) > $s0)" test "$(stat bus stale_bytes)" -gt "$s0"
check "neighbour keeps its polls ($(stat b done) - $db)" test "$(stat b done)" -ge $((db + 12))

# late: unit 1 answers just after its timeout; the late answer is never
# taken for unit 2's
fault "1 late:300"
check "late answers: unit 1 offline" wait_for 10 seen "state a offline"
fresh_stats; db=$(stat b done); fb=$(( $(stat b timeouts) + $(stat b crc) ))
sleep 2
fresh_stats
# the line is busy for the late device's timeouts (so some of b's 100 ms
# slots pass), but no answer of b is lost to a's late ones
check "neighbour of a late device has no failed request" \
	test $(( $(stat b timeouts) + $(stat b crc) )) -eq "$fb"
check "neighbour of a late device keeps being polled" test "$(stat b done)" -ge $((db + 8))
check "neighbour of a late device never offline" test "$(grep -cxF 'state b offline' "$TMP/poll.out")" -eq 3
fault ""

echo quit >&4
wait_for 10 grep -q '^summary ' "$TMP/poll.out"
check "summary printed" grep -q '^summary requests=' "$TMP/poll.out"
if [ "$_tap_fail" -gt 0 ]; then
	diag "--- mb_poll stderr"; sed 's/^/# /' "$TMP/poll.err" | tail -30
	diag "--- peers"; sed 's/^/# /' "$TMP/srv.log" "$TMP/px.log" | tail -20
fi
done_testing
