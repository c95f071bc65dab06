#!/usr/bin/env bash
# A misbehaving device stays its own problem. 20 good units and three bad
# ones on one Modbus TCP connection (cgw-sim): one answers just after its
# timeout, one answers twice, one answers as another unit. The good ones
# keep >= 99 % of their polls; the late, repeated and foreign answers are
# counted and never taken as data. Then the gateway keeps the session open
# but stops answering it: the connection is dropped and made again, and the
# devices come back without anyone restarting anything.
source "$(dirname "$0")/../lib.sh"

SIM=$CGW_BUILD/cgw-sim
POLL=$CGW_BUILD/tools/mb_poll
for b in "$SIM" "$POLL"; do
	[ -x "$b" ] || { not_ok "missing $b (make all)"; done_testing; exit 1; }
done
command -v socat >/dev/null || { not_ok "socat is not installed"; done_testing; exit 1; }

PORT=$(free_port)
mkdir -p "$TMP/profiles"
cat >"$TMP/profiles/smoke.yaml" <<'YAML'
profile: smoke
class: fire
points:
  - {name: status, table: holding, address: 0, type: uint16}
  - {name: temperature, table: input, address: 2, type: int16, scale: 0.1}
YAML
{
	echo "gateway: {id: gw-test, site: test, state_dir: $TMP}"
	echo "profile_dirs: [$TMP/profiles]"
	echo "buses:"
	echo "  - {name: gw, type: modbus-tcp, host: 127.0.0.1, port: $PORT, timeout: 200ms, retries: 0, offline_after: 3}"
	echo "devices:"
	for u in $(seq 1 20); do
		echo "  - {id: good-$u, name: 'Good $u', profile: smoke, bus: gw, unit: $u, poll: 500ms}"
	done
	echo "  - {id: late, name: Late, profile: smoke, bus: gw, unit: 21, poll: 500ms}"
	echo "  - {id: twice, name: Twice, profile: smoke, bus: gw, unit: 22, poll: 500ms}"
	echo "  - {id: liar, name: Liar, profile: smoke, bus: gw, unit: 23, poll: 500ms}"
} >"$TMP/cgw.yaml"

sim() { echo "$*" | socat -t 5 - "UNIX-CONNECT:$TMP/sim.sock"; }
seen() { grep -qxF -- "$1" "$TMP/poll.out"; }
fresh_stats() {
	local n; n=$(grep -c '^stats bus ' "$TMP/poll.out")
	echo stats >&4
	wait_for 5 bash -c "[ \$(grep -c '^stats bus ' '$TMP/poll.out') -gt $n ]"
}
# field DEVICE NAME: from the last stats block
field() { grep "^stats device $1 " "$TMP/poll.out" | tail -1 | sed -n "s/.* $2=\([0-9]*\).*/\1/p"; }
busfield() { grep '^stats bus gw ' "$TMP/poll.out" | tail -1 | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }

bg_start "$SIM" -c "$TMP/cgw.yaml" --control "$TMP/sim.sock" </dev/null >"$TMP/sim.out" 2>"$TMP/sim.err"
check "simulator listens" wait_for 10 port_open "$PORT"
for u in $(seq 1 20); do sim set good-$u temperature "$u.5" >/dev/null; done
sim set liar temperature 99.9 >/dev/null
sim set liar status 7 >/dev/null
check "one unit answers 250 ms late (timeout 200 ms)" test "$(sim late late 250)" = ok
check "one unit answers twice" test "$(sim twice twice on)" = ok
check "one unit answers as unit 5" test "$(sim as-unit liar 5)" = ok

mkfifo "$TMP/poll"
exec 4<>"$TMP/poll"
bg_start bash -c 'exec "$@" <"$0" >"$0.out" 2>"$0.err"' "$TMP/poll" "$POLL" -c "$TMP/cgw.yaml"
all_good_online() {
	for u in $(seq 1 20); do seen "state good-$u online" || return 1; done
}
check "the 20 good units online" wait_for 15 all_good_online
fresh_stats
declare -A due0 done0
for u in $(seq 1 20); do due0[$u]=$(field good-$u due); done0[$u]=$(field good-$u done); done
sleep 10
fresh_stats
due=0 done_=0 worst=100
for u in $(seq 1 20); do
	d=$(( $(field good-$u due) - ${due0[$u]} )); k=$(( $(field good-$u done) - ${done0[$u]} ))
	due=$((due + d)); done_=$((done_ + k))
	[ "$d" -gt 0 ] && [ $((k * 100 / d)) -lt "$worst" ] && worst=$((k * 100 / d))
done
diag "good units: $done_ of $due polls done in 10 s (worst unit $worst %)"
check "good units keep >= 99 % of their polls ($done_ of $due)" test $((done_ * 100)) -ge $((due * 99))
check "no good unit ever went offline" bash -c "! grep -q '^state good-[0-9]* offline' '$TMP/poll.out'"
check "the late unit is the one that is offline" seen "state late offline"
check "the unit that answers twice stays online" bash -c "! grep -qxF 'state twice offline' '$TMP/poll.out'"
check "the impostor's answers are not its data: offline" seen "state liar offline"
check "the impostor never had a good reading" bash -c "! grep -q '^reading liar .* good' '$TMP/poll.out'"
check "unit 5 never got the impostor's values" bash -c "! grep -qE '^reading good-5 (temperature 99.9|status 7) ' '$TMP/poll.out'"
check "unit 5 has its own" seen "reading good-5 temperature 5.5 good"
f=$(busfield foreign); st=$(busfield stale_bytes)
check "foreign answers counted ($f)" test "${f:-0}" -gt 0
check "stale bytes counted ($st)" test "${st:-0}" -gt 0
check "no good unit had a failed request" bash -c "! grep -E '^stats device good-' '$TMP/poll.out' | tail -20 | grep -vq 'timeouts=0 exceptions=0 crc=0'"
lines=$(wc -l <"$TMP/poll.err")
check "the log stays short ($lines lines in 10+ s)" test "$lines" -le 15

# the gateway keeps the session but stops answering: reconnect
sim late late off >/dev/null; sim twice twice off >/dev/null; sim as-unit liar off >/dev/null
check "the gateway's sessions hang" test "$(sim freeze)" = ok
check "a connection on which no device answers is dropped" \
	wait_for 15 grep -q 'no device answers on this connection' "$TMP/poll.err"
check "...and made again" wait_for 15 grep -q 'connected again' "$TMP/poll.err"
fresh_stats; r0=$(field good-1 done)
check "devices are read again on the new session" wait_for 15 bash -c "echo stats >&4; sleep 0.3; [ \$(grep '^stats device good-1 ' '$TMP/poll.out' | tail -1 | sed -n 's/.* done=\([0-9]*\).*/\1/p') -gt $((r0 + 2)) ]"

echo quit >&4
wait_for 10 grep -q '^summary ' "$TMP/poll.out"
if [ "$_tap_fail" -gt 0 ]; then
	diag "--- mb_poll stderr"; sed 's/^/# /' "$TMP/poll.err" | tail -30
	diag "--- sim stderr"; sed 's/^/# /' "$TMP/sim.err" | tail -10
fi
done_testing
