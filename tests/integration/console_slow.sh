#!/usr/bin/env bash
# The console stays usable while slow HTTP clients hold connections to it
# (the front it shares with /metrics, daemon/http_front.c): 300 sockets that
# connect and never send, or trickle a request head (or a POST body) one byte
# a second and reconnect when closed. Meanwhile a real client still gets the
# login page promptly, a new event stream answers within a bound, and the
# duty room's event stream that was open before keeps its heartbeat: streams
# are long-lived answers, not slow requests. The loop never stalls.
. "$(dirname "$0")/../lib.sh"
export CGW_PROFILES_DIR=$TOP/config/profiles
CTL=$CGW_BUILD/cgwctl

mqtt_port=$(free_port)
wp=$(free_port)
mp=$(free_port)
URL=http://127.0.0.1:$wp
mkdir -p "$TMP/state"
start_mosquitto "$mqtt_port" || not_ok "mosquitto started"
cat >"$TMP/cgw.yaml" <<YAML
gateway: {id: gw-slow, site: s, state_dir: $TMP/state}
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: true, listen: "127.0.0.1:$mp"}
console: {enabled: true, listen: "127.0.0.1:$wp"}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mqtt_port"}
YAML
echo 'duty-pass-1' | "$CTL" user add duty1 duty -c "$TMP/cgw.yaml"
bg_start "$CGW_BUILD/cgwd" -f -c "$TMP/cgw.yaml" 2>"$TMP/daemon.log"
check "the console serves its page" wait_for 10 curl -sf -o /dev/null "$URL/"

# a session, as the duty room's browser has one
jar=$TMP/jar
t=$(curl -s -c "$jar" -b "$jar" "$URL/api/session" | sed -n 's/.*"login_csrf":"\([0-9a-f]*\)".*/\1/p')
code=$(curl -s -o /dev/null -w '%{http_code}' -c "$jar" -b "$jar" -H "X-CSRF-Token: $t" \
	-d 'user=duty1&password=duty-pass-1' "$URL/api/login")
check "duty1 signs in" test "$code" = 200

# the duty room's page, open before the flood: its stream must keep beating
bg_start curl -s -N -b "$jar" "$URL/api/events" -o "$TMP/events.txt"
EV_PID=$BG_PID
check "the duty room's event stream is open" wait_for 5 grep -q '^event: state' "$TMP/events.txt"

# probe N: N GETs of the login page, one every 100 ms; prints the slowest
# time and how many did not answer 200 within 2 s
probe() {
	local worst=0 failed=0 t code
	for _ in $(seq "$1"); do
		read -r code t < <(curl -s -o /dev/null --max-time 2 -w '%{http_code} %{time_total}\n' "$URL/")
		[ "$code" = 200 ] || failed=$((failed + 1))
		worst=$(awk -v a="$worst" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
		sleep 0.1
	done
	echo "$worst $failed"
}
# a new event stream: seconds until its first event (the board), 9 if none in 3 s
stream_first() {
	local t0=$EPOCHREALTIME
	timeout 3 curl -s -N -b "$jar" "$URL/api/events" 2>/dev/null | grep -m1 -q '^event: state' ||
		{ echo 9; return; }
	awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'
}
beats() { grep -c '^event: beat' "$TMP/events.txt"; }

slow() { # source addresses [--body] -> SLOW_PID, waits until every connection was tried
	bg_start python3 "$TOP/tests/tools/slow_clients.py" 127.0.0.1 "$wp" --count 300 \
		--seconds 20 --src "$@" >"$TMP/slow.out" 2>&1
	SLOW_PID=$BG_PID
	wait_for 10 grep -q ready "$TMP/slow.out"
	sleep 1 # let them settle in: trickling, reconnecting
}
flood() { # label, then slow()'s arguments
	local label=$1 worst failed first b0 b1
	shift
	slow "$@" || not_ok "slow clients started"
	b0=$(beats)
	read -r worst failed < <(probe 20)
	first=$(stream_first)
	b1=$(beats)
	diag "300 slow clients $label: login page slowest ${worst}s, $failed of 20 failed; a new stream's first event after ${first}s; the open stream beat $((b1 - b0)) times"
	check "login page answers with 300 slow clients $label ($failed of 20 failed)" test "$failed" -le "$MAX_FAILED"
	check "login page answers within 1 s with 300 slow clients $label (slowest ${worst}s)" \
		awk -v w="$worst" 'BEGIN { exit !(w < 1.0) }'
	check "a new event stream answers within 2 s with 300 slow clients $label (${first}s)" \
		awk -v w="$first" 'BEGIN { exit !(w < 2.0) }'
	check "the open event stream keeps its heartbeat through it ($((b1 - b0)) beats)" test $((b1 - b0)) -ge 1
	kill "$SLOW_PID" 2>/dev/null
	wait "$SLOW_PID" 2>/dev/null
}

MAX_FAILED=0
flood "from 10 other addresses" 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9,127.0.0.10,127.0.0.11
flood "trickling POST bodies from 10 other addresses" 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9,127.0.0.10,127.0.0.11 --body
# a flood from the real client's own address that reconnects at once can push
# out its connection before it has spoken on a loaded machine: best effort,
# as for /healthz (metrics_slow.sh)
MAX_FAILED=3
flood "from the client's own address" 127.0.0.1

check "the duty room's stream is still open" kill -0 "$EV_PID"
longest=$(curl -s --max-time 5 "http://127.0.0.1:$mp/metrics" | awk '$1 == "cgw_loop_longest_iteration_seconds" { print $2 }')
check "the loop never stalled serving them (longest iteration ${longest}s < 0.5 s)" \
	awk -v w="${longest:-1}" 'BEGIN { exit !(w < 0.5) }'
check "the slow clients were dropped, and said so once per episode" \
	bash -c "[ \$(grep -c 'console: 127.0.0.1:$wp: dropping connections' '$TMP/daemon.log') -ge 1 ] && [ \$(grep -c 'dropping connections' '$TMP/daemon.log') -le 6 ]"
big=$(python3 -c 'print("a" * 40000)')
code=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -H "X-Big: $big" "$URL/")
check "a request head over 32 KiB is refused (HTTP $code)" test "$code" = 431 -o "$code" = 413
check "and the console answers the next one" curl -sf --max-time 5 -o /dev/null "$URL/"
done_testing
