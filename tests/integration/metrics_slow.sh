#!/usr/bin/env bash
# /healthz stays answerable while slow HTTP clients hold connections: 300
# sockets that connect and never send, or trickle a header one byte a second
# (and reconnect when closed). A monitor on another address, and one on the
# same address as the slow clients, must get /healthz promptly, and the core
# loop must not stall while it serves them.
. "$(dirname "$0")/../lib.sh"
export CGW_PROFILES_DIR=$TOP/config/profiles

mqtt_port=$(free_port)
port=$(free_port)
URL=http://127.0.0.1:$port
mkdir -p "$TMP/state"
start_mosquitto "$mqtt_port" || not_ok "mosquitto started"
cat >"$TMP/cgw.yaml" <<YAML
gateway: {id: gw-slow, site: s, state_dir: $TMP/state}
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: true, listen: "127.0.0.1:$port"}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mqtt_port"}
YAML
bg_start "$CGW_BUILD/cgwd" -f -c "$TMP/cgw.yaml" 2>"$TMP/daemon.log"
check "the daemon serves /healthz" wait_for 10 curl -sf -o /dev/null "$URL/healthz"

# probe N: N /healthz requests, one every 100 ms; prints the slowest time and
# how many did not answer 200 within 2 s
probe() {
	local worst=0 failed=0 t code
	for _ in $(seq "$1"); do
		read -r code t < <(curl -s -o /dev/null --max-time 2 -w '%{http_code} %{time_total}\n' "$URL/healthz")
		[ "$code" = 200 ] || failed=$((failed + 1))
		worst=$(awk -v a="$worst" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
		sleep 0.1
	done
	echo "$worst $failed"
}

slow() { # source addresses -> SLOW_PID, waits until every connection was tried
	bg_start python3 "$TOP/tests/tools/slow_clients.py" 127.0.0.1 "$port" --count 300 \
		--seconds 20 --src "$1" >"$TMP/slow.out" 2>&1
	SLOW_PID=$BG_PID
	wait_for 10 grep -q ready "$TMP/slow.out"
	sleep 1 # let them settle in: trickling, reconnecting
}

# 1. slow clients from ten other addresses
slow 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9,127.0.0.10,127.0.0.11 ||
	not_ok "slow clients started"
read -r worst failed < <(probe 20)
diag "300 slow clients from 10 other addresses: /healthz slowest ${worst}s, $failed of 20 failed"
check "/healthz answers every time with 300 slow clients elsewhere ($failed of 20 failed)" test "$failed" = 0
check "/healthz answers within 0.5 s with 300 slow clients elsewhere (slowest ${worst}s)" \
	awk -v w="$worst" 'BEGIN { exit !(w < 0.5) }'
kill "$SLOW_PID" 2>/dev/null
wait "$SLOW_PID" 2>/dev/null

# 2. slow clients from the monitor's own address
slow 127.0.0.1 || not_ok "slow clients started"
read -r worst failed < <(probe 20)
diag "300 slow clients from the monitor's address: /healthz slowest ${worst}s, $failed of 20 failed"
# a flood from the monitor's own address that reconnects at once (over 1,000
# connections a second here) can push out the monitor's connection before it
# has spoken when the loaded machine is slow to read it: best effort, at
# least 17 of 20 (before the bounds: 0 of 20)
check "/healthz answers with 300 slow clients on its own address ($failed of 20 failed)" \
	test "$failed" -le 3
check "/healthz answers within 1 s with 300 slow clients on its own address (slowest ${worst}s)" \
	awk -v w="$worst" 'BEGIN { exit !(w < 1.0) }'
wait "$SLOW_PID" 2>/dev/null
diag "slow clients: $(tail -1 "$TMP/slow.out")"

# the server held them off without stalling the loop, and says so
curl -sf --max-time 5 "$URL/metrics" >"$TMP/m"
check "metrics: the slow connections were dropped and counted" \
	grep -qE '^cgw_http_connections_dropped_total [1-9][0-9]*$' "$TMP/m"
longest=$(awk '$1 == "cgw_loop_longest_iteration_seconds" { print $2 }' "$TMP/m")
diag "$("$CGW_BUILD/cgwctl" -s "$TMP/cgwd.sock" status | grep '^loop')"
# a client that could hold the loop would show as seconds (the 2 s request
# deadline); the bound leaves room for a busy machine descheduling cgwd, and
# make bench's adversity rows measure the loop against its 20 ms target
check "the loop never stalled serving them (longest iteration ${longest}s < 0.5 s)" \
	awk -v w="${longest:-1}" 'BEGIN { exit !(w < 0.5) }'
big=$(python3 -c 'print("a" * 40000)')
code=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -H "X-Big: $big" "$URL/healthz")
check "a request head over 32 KiB is refused (HTTP $code)" test "$code" = 431 -o "$code" = 413
check "and the server answers the next one" curl -sf --max-time 5 -o /dev/null "$URL/healthz"
done_testing
