#!/usr/bin/env bash
# Alarm latency under adversity (issue 11): register change on a simulated
# smoke detector -> the platform's MQTT subscriber, at a 100 ms poll, over
# ADV_SAMPLES alarms per row (default 50), while something else goes wrong:
#   1 idle
#   2 another uplink's name server is silent (as root: a private mount
#     namespace with /etc/resolv.conf naming a UDP socket that never answers)
#   3 a 1,000,000-message backlog drains while /metrics and `cgwctl status`
#     are each requested 10 times a second
#   4 the LAN broker floods the MQTT ingest at the highest rate it sustains
#   5 an HTTP uplink whose server accepts and never answers
#   6 the store at its size cap, evicting
#   7 SIGHUP (reload) every 2 s
# Each row runs a fresh cgwd; per row: p50/p99/max latency, and the core
# loop's longest iteration from the stall meter (/metrics): within the
# samples (the histogram's bucket bound) and since that cgwd started (with
# the callback that took it). Target in every row: p99 <= poll + 50 ms,
# max <= poll + 200 ms, longest iteration <= 20 ms. Bounded: about 5 minutes.
. "$(dirname "$0")/../lib.sh"
SAMPLES=${ADV_SAMPLES:-50}
N_BACKLOG=${BENCH_BACKLOG_N:-1000000}
POLL_MS=100
CTL=$CGW_BUILD/cgwctl
mq=$(free_port) lan=$(free_port) mb=$(free_port) mport=$(free_port) hport=$(free_port)
export CGW_PROFILES_DIR=$TOP/config/profiles
URL=http://127.0.0.1:$mport

for u in $(seq 1 "$SAMPLES"); do
	echo "  - {id: smoke-$u, name: 烟感$u, profile: smoke-detector, bus: io, unit: $u, poll: ${POLL_MS}ms}"
done >"$TMP/devlist.yaml"
{
	echo "buses: [{name: io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms}]"
	echo "devices:"
	cat "$TMP/devlist.yaml"
} >"$TMP/devices.yaml"
printf 'gateway: {id: sim, site: s, state_dir: %s}\ninclude: [devices.yaml]\n' "$TMP" >"$TMP/sim.yaml"
start_mosquitto "$mq" || { echo "mosquitto did not start"; exit 1; }
PLATFORM_PID=$MOSQ_PID
start_mosquitto "$lan" || { echo "mosquitto (LAN) did not start"; exit 1; }
bg_start "$CGW_BUILD/cgw-sim" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" </dev/null >/dev/null 2>&1
wait_for 5 test -S "$TMP/sim.sock" || { echo "simulator did not start"; exit 1; }
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock" >/dev/null; }

# the config of a row: the base, plus extra YAML (uplinks, buses, store)
config() { # row extra-uplinks extra-buses extra-devices store-yaml
	cat >"$TMP/cgw-$1.yaml" <<Y
gateway: {id: gw-adv, site: s, state_dir: $TMP/state-$1}
control: {socket: $TMP/cgwd-$1.sock}
metrics: {enabled: true, listen: "127.0.0.1:$mport"}
store: {${5:-}}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq", inflight: 200}
$2
buses:
  - {name: io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms}
$3
devices:
$(cat "$TMP/devlist.yaml")
$4
Y
	mkdir -p "$TMP/state-$1"
}

start_cgwd() { # row [wrapper...]: starts cgwd, waits until it serves and polls
	local row=$1
	shift
	for u in $(seq 1 "$SAMPLES"); do sim set smoke-$u status 0; done
	bg_start "$@" "$CGW_BUILD/cgwd" -f -c "$TMP/cgw-$row.yaml" 2>"$TMP/cgwd-$row.log"
	CGWD_PID=$BG_PID
	wait_for 60 curl -sf --max-time 1 -o /dev/null "$URL/healthz" || return 1
	wait_for 30 grep -q "\[platform\] connected" "$TMP/cgwd-$row.log" || return 1
	sleep 1 # every detector polled and normal
}

stop_cgwd() {
	kill -TERM "$CGWD_PID" 2>/dev/null
	for _ in $(seq 100); do kill -0 "$CGWD_PID" 2>/dev/null || break; sleep 0.05; done
	kill -KILL "$CGWD_PID" 2>/dev/null
	wait "$CGWD_PID" 2>/dev/null
}

# cumulative histogram of iterations as "le count" lines
hist() { curl -sf --max-time 5 "$URL/metrics" | awk -F'[ "]' '/^cgw_loop_iteration_seconds_bucket/ { print $2, $4 }'; }
longest() { curl -sf --max-time 5 "$URL/metrics" | awk '$1 == "cgw_loop_longest_iteration_seconds" { printf "%.1f", $2 * 1000 }'; }

measure() { # row label: SAMPLES alarms, one per detector
	local row=$1 label=$2 lat=() miss=0 h0 h1 within since what
	bg_start mosquitto_sub -p "$mq" -q 1 -F '%U %t %p' -t 'cgw/+/+/device/+/alarm' >"$TMP/alarms-$row.txt" 2>/dev/null
	local sub=$BG_PID
	sleep 0.3
	h0=$(hist)
	for u in $(seq 1 "$SAMPLES"); do
		local t0 t1 pat="/smoke-$u/alarm .*\"alarm\":\"fault\".*\"event\":\"raised\""
		t0=$(date +%s.%N)
		sim set smoke-$u status 2
		if ! wait_for 10 grep -q "$pat" "$TMP/alarms-$row.txt"; then
			miss=$((miss + 1))
			continue
		fi
		t1=$(grep "$pat" "$TMP/alarms-$row.txt" | head -1 | cut -d' ' -f1)
		lat+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')")
		sleep 0.$((RANDOM % 2 + 1)) # spread the samples over the poll phase
	done
	h1=$(hist)
	kill "$sub" 2>/dev/null
	# the highest bucket that gained an iteration while the samples ran
	within=$(paste -d' ' <(echo "$h0") <(echo "$h1") | awk '
		{ le[NR] = $1; d[NR] = $4 - $2 } END {
			for (i = 1; i <= NR; i++) if (d[i] == d[NR]) { print le[i]; exit } }')
	since=$(longest)
	what=$(CGW_SOCKET="$TMP/cgwd-$row.sock" "$CTL" --json status 2>/dev/null |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["loop"]["longest_in"])' 2>/dev/null)
	printf '%s\n' "${lat[@]}" | sort -n | awk -v label="$label" -v poll="$POLL_MS" -v miss="$miss" \
		-v within="$within" -v since="$since" -v what="$what" -v row="$row" '
		{ v[NR] = $1 } END {
			if (NR == 0) { printf "%d %-44s no alarm arrived (%d missed)\n", row, label, miss; exit }
			p50 = v[int((NR + 1) * 0.5)]; p99 = v[NR > 1 ? int(NR * 0.99 + 0.5) : 1]
			w = within == "+Inf" ? "> 5000" : sprintf("<= %g", within * 1000)
			ok = p99 <= poll + 50 && v[NR] <= poll + 200 && within != "+Inf" && within * 1000 <= 20 && miss == 0
			printf "%d %-44s p50 %6.1f  p99 %6.1f  max %7.1f ms  n=%d%s  loop: longest %s ms during, %s ms since start (%s)  %s\n",
				row, label, p50, p99, v[NR], NR, miss ? sprintf(" (%d MISSED)", miss) : "",
				w, since, what, ok ? "meets target" : "MISSES target" }'
}

echo "alarm latency, register change -> platform subscriber; poll ${POLL_MS} ms; ${SAMPLES} alarms per row"
echo "target: p99 <= $((POLL_MS + 50)) ms, max <= $((POLL_MS + 200)) ms, longest loop iteration <= 20 ms"
echo "row condition                                    latency (ms)"

# ---- 1 idle
config 1 "" "" "" ""
if start_cgwd 1; then measure 1 "idle"; else echo "1 idle: cgwd did not start"; fi
stop_cgwd

# ---- 2 another uplink's name server is silent
if [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null; then
	dns=127.0.0.$((RANDOM % 200 + 20))
	bg_start python3 -c "
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('$dns', 53))
end = time.time() + 600
while time.time() < end:
    s.settimeout(1)
    try: s.recv(512)
    except OSError: pass
"
	printf 'nameserver %s\noptions timeout:5 attempts:2\n' "$dns" >"$TMP/resolv.conf"
	config 2 "  - {name: cloud, type: mqtt, url: \"mqtt://cloud.platform.example.net:1883\", insecure: true}" "" "" ""
	if start_cgwd 2 unshare -m sh -c "mount --bind '$TMP/resolv.conf' /etc/resolv.conf && exec \"\$0\" \"\$@\""; then
		measure 2 "another uplink's DNS silent"
	else
		echo "2 another uplink's DNS silent: cgwd did not come up within 60 s"
	fi
	stop_cgwd
else
	echo "2 another uplink's DNS silent: skipped: needs root"
fi

# ---- 3 a 1M backlog draining, /metrics and cgwctl status 10x/s each
config 3 "" "" "" ""
"$CGW_BUILD/tools/outbox_fill" "$TMP/state-3/cgw.db" platform "$N_BACKLOG" 50 >/dev/null
if start_cgwd 3; then
	(while :; do curl -s -o /dev/null --max-time 2 "$URL/metrics"; sleep 0.1; done) &
	p1=$!
	(while :; do "$CTL" -s "$TMP/cgwd-3.sock" status >/dev/null 2>&1; sleep 0.1; done) &
	p2=$!
	measure 3 "1M backlog draining, /metrics + status 10/s"
	kill $p1 $p2 2>/dev/null
	wait $p1 $p2 2>/dev/null
	left=$(curl -sf --max-time 5 "$URL/metrics" | awk '$1 ~ /^cgw_outbox_messages\{uplink="platform",lane="telemetry"/ { print $2 }')
	echo "  (backlog left at the end of row 3: ${left:-?} of $N_BACKLOG)"
fi
stop_cgwd
rm -f "$TMP"/state-3/cgw.db*

# ---- 4 a LAN-broker flood
config 4 "" "  - {name: lan, type: mqtt, url: \"mqtt://127.0.0.1:$lan\"}" \
	"  - {id: locker-1, name: 快递柜, profile: parcel-locker, bus: lan, topic: lockers/1}" ""
if start_cgwd 4; then
	bg_start "$CGW_BUILD/tools/mq_flood" "$lan" lockers/1/status 100000000 0 1000 \
		'{"mains":true,"battery":87,"occupied":3,"overdue":0,"tamper":false}' >/dev/null 2>&1
	flood=$BG_PID
	sleep 2
	m0=$(curl -sf --max-time 5 "$URL/metrics" | awk '$1 ~ /^cgw_mqtt_messages_total\{bus="lan",device="locker-1"/ { print $2 }')
	t0=$(date +%s.%N)
	measure 4 "LAN-broker flood"
	m1=$(curl -sf --max-time 5 "$URL/metrics" | awk '$1 ~ /^cgw_mqtt_messages_total\{bus="lan",device="locker-1"/ { print $2 }')
	t1=$(date +%s.%N)
	kill "$flood" 2>/dev/null
	echo "  (ingest took $(awk -v a="${m0:-0}" -v b="${m1:-0}" -v s="$t0" -v e="$t1" 'BEGIN { printf "%.0f", (b - a) / (e - s) }') msg/s from the flood during row 4)"
fi
stop_cgwd

# ---- 5 an HTTP uplink whose server accepts and never answers
bg_start python3 -c "
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $hport)); s.listen(128); held = []
end = time.time() + 600
s.settimeout(1)
while time.time() < end:
    try: held.append(s.accept()[0])
    except OSError: pass
"
blackhole=$BG_PID
wait_for 5 port_open "$hport"
config 5 "  - {name: duty, type: http, url: \"http://127.0.0.1:$hport/alarms\", send: [alarm, status, telemetry], timeout: 30s}" "" "" ""
if start_cgwd 5; then measure 5 "HTTP uplink: server accepts, never answers"; fi
stop_cgwd
kill "$blackhole" 2>/dev/null

# ---- 6 the store at its size cap, evicting: an archive uplink that never
# connects keeps every message, a backlog prefilled over the cap, and the LAN
# flood adds a changed reading with every message (so each one is stored:
# "%d" in mq_flood's payload), so that maintenance and enqueues evict
# throughout the samples. Printed: the store's state and what was evicted
# while the samples ran.
config 6 "  - {name: archive, type: mqtt, url: \"mqtt://127.0.0.1:1\", insecure: true}" \
	"  - {name: lan, type: mqtt, url: \"mqtt://127.0.0.1:$lan\"}" \
	"  - {id: locker-1, name: 快递柜, profile: parcel-locker, bus: lan, topic: lockers/1}" \
	"max_size: 16MB"
"$CGW_BUILD/tools/outbox_fill" "$TMP/state-6/cgw.db" archive 200000 50 >/dev/null
store_now() { # evicted telemetry, size in MB, state
	curl -sf --max-time 5 "$URL/metrics" | awk '
		$1 == "cgw_store_evicted_total{lane=\"telemetry\"}" { ev = $2 }
		$1 == "cgw_store_bytes" { mb = $2 / 1048576 }
		$1 ~ /^cgw_store_state\{/ && $2 == 1 { split($1, a, "\""); st = a[2] }
		END { printf "%d %.1f %s\n", ev, mb, st }'
}
if start_cgwd 6; then
	bg_start "$CGW_BUILD/tools/mq_flood" "$lan" lockers/1/status 100000000 0 1000 \
		'{"mains":true,"battery":%d,"occupied":3,"overdue":0,"tamper":false}' >/dev/null 2>&1
	flood=$BG_PID
	# until the store is at its cap and evicting
	wait_for 60 sh -c "curl -sf --max-time 2 '$URL/metrics' | grep -q '^cgw_store_state{state=\"at_cap\"} 1'"
	read -r ev0 mb0 st0 <<<"$(store_now)"
	measure 6 "store at its cap, evicting"
	read -r ev1 mb1 st1 <<<"$(store_now)"
	kill "$flood" 2>/dev/null
	echo "  (during row 6: $((ev1 - ev0)) telemetry messages evicted; store ${mb0} MB ($st0) before the samples, ${mb1} MB ($st1) after, cap 16 MB)"
fi
stop_cgwd

# ---- 7 SIGHUP every 2 s
config 7 "" "" "" ""
if start_cgwd 7; then
	(while kill -HUP "$CGWD_PID" 2>/dev/null; do sleep 2; done) &
	hup=$!
	measure 7 "SIGHUP every 2 s"
	kill "$hup" 2>/dev/null
	wait "$hup" 2>/dev/null
	echo "  (reloads during row 7: $(grep -c 'configuration reloaded' "$TMP/cgwd-7.log"))"
fi
stop_cgwd
