#!/usr/bin/env bash
# The dead-slave test. 30 detectors on one simulated 9600-baud RS-485 line
# (cgw-sim's modbus-rtu-tcp bus holds every answer for its time on the wire),
# 3 of them dead and 1 answering just before its timeout. The live ones keep
# >= 99 % of their polls on schedule, and the fast alarm point of a detector
# on that line (poll: 500ms on its rule) is read within poll + 100 ms of a
# change, whatever else holds the line.
source "$(dirname "$0")/../lib.sh"

SIM=$CGW_BUILD/cgw-sim
POLL=$CGW_BUILD/tools/mb_poll
for b in "$SIM" "$POLL"; do
	[ -x "$b" ] || { not_ok "missing $b (make all)"; done_testing; exit 1; }
done
command -v socat >/dev/null || { not_ok "socat is not installed"; done_testing; exit 1; }

PORT=$(free_port)
mkdir -p "$TMP/profiles"
cat >"$TMP/profiles/det.yaml" <<'YAML'
profile: det
class: fire
points:
  - {name: status, table: holding, address: 0, type: uint16, enum: {0: normal, 1: alarm}}
  - {name: smoke, table: input, address: 1, type: uint16, scale: 0.01}
  - {name: temperature, table: input, address: 2, type: int16, scale: 0.1}
YAML
cat >"$TMP/profiles/det-fast.yaml" <<'YAML'
profile: det-fast
class: fire
points:
  - {name: status, table: holding, address: 0, type: uint16, enum: {0: normal, 1: alarm}}
  - {name: smoke, table: input, address: 1, type: uint16, scale: 0.01}
  - {name: temperature, table: input, address: 2, type: int16, scale: 0.1}
alarms:
  - {name: smoke, point: status, equals: alarm, severity: critical, poll: 500ms}
YAML
{
	echo "gateway: {id: gw-test, site: test, state_dir: $TMP}"
	echo "profile_dirs: [$TMP/profiles]"
	echo "buses:"
	echo "  - {name: line, type: modbus-rtu-tcp, host: 127.0.0.1, port: $PORT, baud: 9600, timeout: 300ms, retries: 1, offline_after: 3}"
	echo "devices:"
	for u in $(seq 1 30); do
		p=det; [ "$u" = 1 ] && p=det-fast
		echo "  - {id: det-$u, name: 'Detector $u', profile: $p, bus: line, unit: $u, poll: 3s}"
	done
} >"$TMP/cgw.yaml"
DEAD="7 15 23"
SLOW=11

sim() { echo "$*" | socat -t 5 - "UNIX-CONNECT:$TMP/sim.sock"; }
seen() { grep -qxF -- "$1" "$TMP/poll.out"; }
count() { grep -cxF -- "$1" "$TMP/poll.out"; }
fresh_stats() {
	local n; n=$(grep -c '^stats bus ' "$TMP/poll.out")
	echo stats >&4
	wait_for 5 bash -c "[ \$(grep -c '^stats bus ' '$TMP/poll.out') -gt $n ]"
}
field() { grep "^stats device $1 " "$TMP/poll.out" | tail -1 | sed -n "s/.* $2=\([0-9]*\).*/\1/p"; }
live() { for u in $(seq 1 30); do case " $DEAD " in *" $u "*) ;; *) echo "$u" ;; esac; done; }

bg_start "$SIM" -c "$TMP/cgw.yaml" --control "$TMP/sim.sock" </dev/null >"$TMP/sim.out" 2>"$TMP/sim.err"
check "simulated 9600-baud line listens" wait_for 10 port_open "$PORT"
for u in $DEAD; do sim silence det-$u on >/dev/null; done
# 230 ms late + about 20 ms on the wire: just inside its 300 ms timeout
check "detector $SLOW answers just before its timeout" test "$(sim late det-$SLOW 230)" = ok

mkfifo "$TMP/poll"
exec 4<>"$TMP/poll"
bg_start bash -c 'exec "$@" <"$0" >"$0.out" 2>"$0.err"' "$TMP/poll" "$POLL" -c "$TMP/cgw.yaml"
dead_offline() { for u in $DEAD; do seen "state det-$u offline" || return 1; done; }
check "the 3 dead detectors are found offline" wait_for 40 dead_offline
check "the slow one is online" seen "state det-$SLOW online"

fresh_stats
declare -A due0 done0
for u in $(live); do due0[$u]=$(field det-$u due); done0[$u]=$(field det-$u done); done

# fast alarm point: a change is read within its poll + 100 ms
worst=0 lat=""
for i in 1 2 3 4 5 6; do
	v=$((i % 2))
	n=$(count "reading det-1 status $v good")
	sleep 0.$((RANDOM % 5 + 1)) # anywhere in the 500 ms grid
	t0=$(date +%s%N)
	sim set det-1 status $v >/dev/null
	wait_for 5 bash -c "[ \$(grep -cxF 'reading det-1 status $v good' '$TMP/poll.out') -gt $n ]"
	ms=$((($(date +%s%N) - t0) / 1000000))
	lat="$lat $ms"
	[ "$ms" -gt "$worst" ] && worst=$ms
done
diag "fast alarm point latencies (ms):$lat"
check "fast alarm point read within poll + 100 ms (worst $worst ms)" test "$worst" -le 600

sleep 12
fresh_stats
due=0 done_=0
for u in $(live); do
	due=$((due + $(field det-$u due) - ${due0[$u]}))
	done_=$((done_ + $(field det-$u done) - ${done0[$u]}))
done
diag "live detectors: $done_ of $due polls on schedule"
check "live detectors keep >= 99 % of their polls on schedule ($done_ of $due)" \
	test $((done_ * 100)) -ge $((due * 99))
check "no live detector went offline" \
	bash -c "! grep -E '^state det-[0-9]+ offline\$' '$TMP/poll.out' | grep -qvE '^state det-(7|15|23) offline\$'"
probes=0
for u in $DEAD; do probes=$((probes + $(field det-$u timeouts))); done
diag "timeouts of the dead detectors: $probes"

echo quit >&4
wait_for 10 grep -q '^summary ' "$TMP/poll.out"
if [ "$_tap_fail" -gt 0 ]; then
	diag "--- mb_poll stderr"; sed 's/^/# /' "$TMP/poll.err" | tail -30
	diag "--- sim stderr"; sed 's/^/# /' "$TMP/sim.err" | tail -10
fi
done_testing
