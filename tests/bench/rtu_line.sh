#!/usr/bin/env bash
# RS-485 line efficiency (issue 15). 30 devices on one simulated 9600-baud
# line (cgw-sim holds every answer for its time on the wire: 11 bits a
# byte), each read as one request of 10 holding registers (8 + 25 bytes on
# the wire = 37.8 ms). Polled faster than the line can go, the share of the
# line's capacity spent on good frames is compared across:
#   - cgw's modbus-rtu-tcp bus (our RTU framing over TCP, as to a serial server);
#   - cgw's modbus-rtu bus (libmodbus on a pty pair, the simulator timing the wire);
#   - a bare libmodbus RTU loop (tests/tools/mb_ref) on the same pty line.
# Then, at a 3 s poll on the modbus-rtu-tcp line, the line time of one round
# of every device against the schedule and the polls done on schedule, with
# 0, 1 and 3 dead devices.
#
#   tests/bench/rtu_line.sh [BUILD_DIR]     (WINDOW=12 seconds)
# Exit status 1 if live devices keep < 99 % of their polls with dead ones.
set -u
export CGW_BUILD=${1:-${CGW_BUILD:-$(pwd)/build}}
CGW_BUILD=$(cd "$CGW_BUILD" && pwd)
source "$(dirname "$0")/../lib.sh"

WINDOW=${WINDOW:-12}
SIM=$CGW_BUILD/cgw-sim
POLL=$CGW_BUILD/tools/mb_poll
REF=$CGW_BUILD/tools/mb_ref
for b in "$SIM" "$POLL" "$REF"; do
	[ -x "$b" ] || { echo "rtu_line bench: missing $b (make all)" >&2; exit 1; }
done
FRAME_MS=$(awk 'BEGIN { printf "%.4f", 33 * 11 * 1000 / 9600 }')
mkdir -p "$TMP/profiles"
cat >"$TMP/profiles/reg10.yaml" <<'YAML'
profile: reg10
class: service
points:
  - {name: r0, table: holding, address: 0, type: uint16}
  - {name: r9, table: holding, address: 9, type: uint16}
YAML
# conf FILE BUSLINE POLL
conf() {
	{
		echo "gateway: {id: gw-bench, site: bench, state_dir: $TMP}"
		echo "profile_dirs: [$TMP/profiles]"
		echo "buses:"
		echo "  - $2"
		echo "devices:"
		for u in $(seq 1 30); do
			echo "  - {id: d$u, name: 'D $u', profile: reg10, bus: line, unit: $u, poll: $3}"
		done
	} >"$1"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
sumval() { grep '^summary ' "$1" | tail -1 | sed -n "s/.* $2=\([0-9]*\).*/\1/p"; }
# run a poller for exactly WINDOW seconds from its start (connection
# included, so a slight underestimate) -> GOOD (answered reads) and MS
run_for() { # OUT command...
	local out=$1 t0; shift
	t0=$(now_ms)
	timeout -s TERM "$WINDOW" "$@" </dev/null >"$out" 2>/dev/null
	MS=$(( $(now_ms) - t0 ))
	GOOD=$(( $(sumval "$out" requests) - $(sumval "$out" errors) ))
}
eff() { awk -v g="$1" -v ms="$2" -v f="$FRAME_MS" 'BEGIN { printf "%.1f %%", 100 * g * f / ms }'; }

echo "rtu_line bench: 30 devices x 10 registers on a simulated 9600-baud line, one read = 33 bytes = $FRAME_MS ms on the wire, ${WINDOW} s windows"

# 1. modbus-rtu-tcp, saturated (poll 100 ms)
P=$(free_port)
conf "$TMP/tcp.yaml" "{name: line, type: modbus-rtu-tcp, host: 127.0.0.1, port: $P, baud: 9600, timeout: 300ms, retries: 0}" 100ms
bg_start "$SIM" -c "$TMP/tcp.yaml" </dev/null >/dev/null 2>&1; SIM_PID=$BG_PID
wait_for 10 port_open "$P"
run_for "$TMP/p1.out" "$POLL" -c "$TMP/tcp.yaml" --quiet
echo "  cgw modbus-rtu-tcp:         $GOOD good reads in $MS ms: line efficiency $(eff "$GOOD" "$MS")"
kill -TERM "$SIM_PID"; wait "$SIM_PID" 2>/dev/null

# 2. and 3. modbus-rtu over a pty pair; the simulator times the wire
if command -v socat >/dev/null; then
	bg_start socat pty,raw,echo=0,link="$TMP/ttyS" pty,raw,echo=0,link="$TMP/ttyG"
	wait_for 5 test -e "$TMP/ttyG"
	conf "$TMP/sim-rtu.yaml" "{name: line, type: modbus-rtu, device: $TMP/ttyS, baud: 9600, timeout: 300ms, retries: 0}" 100ms
	conf "$TMP/gw-rtu.yaml" "{name: line, type: modbus-rtu, device: $TMP/ttyG, baud: 9600, timeout: 300ms, retries: 0}" 100ms
	bg_start "$SIM" -c "$TMP/sim-rtu.yaml" --wire-time </dev/null >/dev/null 2>&1; SIM_PID=$BG_PID
	sleep 1
	run_for "$TMP/p2.out" "$POLL" -c "$TMP/gw-rtu.yaml" --quiet
	echo "  cgw modbus-rtu (libmodbus): $GOOD good reads in $MS ms: line efficiency $(eff "$GOOD" "$MS")"
	run_for "$TMP/r.out" "$REF" -c "$TMP/gw-rtu.yaml"
	echo "  bare libmodbus RTU loop:    $GOOD good reads in $MS ms: line efficiency $(eff "$GOOD" "$MS")"
	kill -TERM "$SIM_PID"; wait "$SIM_PID" 2>/dev/null
fi

# 4. cycle time against the schedule (poll 3 s) with 0, 1, 3 dead devices
rc=0
for dead in 0 1 3; do
	P=$(free_port)
	conf "$TMP/c$dead.yaml" "{name: line, type: modbus-rtu-tcp, host: 127.0.0.1, port: $P, baud: 9600, timeout: 300ms, retries: 1, offline_after: 3}" 3s
	bg_start "$SIM" -c "$TMP/c$dead.yaml" --control "$TMP/sim$dead.sock" </dev/null >/dev/null 2>&1; SIM_PID=$BG_PID
	wait_for 10 port_open "$P"
	for u in $(seq 1 "$dead"); do
		echo "silence d$((u * 7)) on" | socat -t 5 - "UNIX-CONNECT:$TMP/sim$dead.sock" >/dev/null
	done
	excl=none; [ "$dead" = 1 ] && excl=7; [ "$dead" = 3 ] && excl='7|14|21'
	rm -f "$TMP/cf$dead"; mkfifo "$TMP/cf$dead"
	exec 5<>"$TMP/cf$dead"
	bg_start bash -c 'exec "$@" <"$0" >"$0.out" 2>/dev/null' "$TMP/cf$dead" "$POLL" -c "$TMP/c$dead.yaml"
	PC=$BG_PID
	sleep 12 # the dead ones are found offline (3 failed cycles)
	live_sum() { # FIELD: over the live devices, from the last stats block
		grep '^stats device ' "$TMP/cf$dead.out" | tail -30 | grep -vE "^stats device d($excl) " |
			sed -n "s/.* $1=\([0-9]*\).*/\1/p" | awk '{ s += $1 } END { print s + 0 }'
	}
	echo stats >&5; sleep 0.5
	due0=$(live_sum due); done0=$(live_sum done)
	sleep "$WINDOW"
	echo stats >&5; sleep 0.5
	due=$(( $(live_sum due) - due0 )); done_=$(( $(live_sum done) - done0 ))
	cyc=$(grep '^stats bus line ' "$TMP/cf$dead.out" | tail -1 | sed -n 's/.* cycle_ms=\([0-9]*\).*/\1/p')
	echo quit >&5; wait "$PC" 2>/dev/null; exec 5>&-
	# a snapshot may fall inside a cycle: done can run one ahead of due
	pct=$(awk -v d="$done_" -v l="$due" 'BEGIN { p = l ? 100 * d / l : 0; if (p > 100) p = 100; printf "%.2f", p }')
	echo "  $dead dead: line time of one round ${cyc} ms against a 3000 ms schedule; live devices: $done_ of $due polls on schedule ($pct %)"
	awk -v p="$pct" 'BEGIN { exit !(p < 99) }' && { echo "  MISSED: < 99 % with $dead dead"; rc=1; }
	kill -TERM "$SIM_PID"; wait "$SIM_PID" 2>/dev/null
done
exit $rc
