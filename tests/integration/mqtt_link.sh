#!/usr/bin/env bash
# The MQTT connection layer (daemon/mqtt_link.c) through the real processes:
#  A. a nameserver that never answers (as root: a private mount namespace
#     with its own /etc/resolv.conf): an MQTT uplink, an HTTP uplink and the
#     LAN-broker ingest all use host names that hit it, and still start-up is
#     immediate and fire alarms reach the working uplink within 2 s of the
#     register change, while the resolver is being asked;
#  B. the platform broker stopped, a fire alarm raised during the outage,
#     the broker back on the same port: the alarm arrives within 2 s;
#  C. an ingest flood while the core queue is full (a tiny queue, busy Modbus
#     devices): everything the LAN broker delivered reaches the platform;
#  D. cgwd SIGKILLed while a device publishes at QoS 1, restarted: every
#     message reaches the platform (persistent session, PUBACK after commit).
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
SIM=$CGW_BUILD/cgw-sim
CTL=$CGW_BUILD/cgwctl
export CGW_PROFILES_DIR=$TOP/config/profiles
now_ms() { echo $(($(date +%s%N) / 1000000)); }

mq=$(free_port)  # the platform broker
lan=$(free_port) # the LAN broker
mb=$(free_port)  # the simulated Modbus devices
mkdir -p "$TMP/mqp" "$TMP/profiles"
# persistence: a restarted platform broker keeps the subscriber's session
cat >"$TMP/platform.conf" <<C
listener $mq 127.0.0.1
allow_anonymous true
persistence true
persistence_location $TMP/mqp/
user root
max_queued_messages 0
C
start_platform() { bg_start mosquitto -c "$TMP/platform.conf" >>"$TMP/platform.log" 2>&1; PLAT_PID=$BG_PID; wait_for 5 port_open "$mq"; }
start_platform || not_ok "platform broker starts"
# the LAN broker queues without limit, so what it delivered is what was sent
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\nmax_queued_messages 0\n' \
	"$lan" >"$TMP/lan.conf"
bg_start mosquitto -c "$TMP/lan.conf" >"$TMP/lan.log" 2>&1
wait_for 5 port_open "$lan" || not_ok "LAN broker starts"

NDET=16
{
	echo "buses:"
	echo "  - {name: fire-io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms}"
	echo "devices:"
	for u in $(seq 1 $NDET); do
		echo "  - {id: smoke-$u, name: $u号烟感, profile: smoke-detector, bus: fire-io, unit: $u, poll: 100ms}"
	done
} >"$TMP/modbus.yaml"
printf 'gateway: {id: sim, site: s, state_dir: %s}\ninclude: [modbus.yaml]\n' "$TMP" >"$TMP/sim.yaml"
cat >"$TMP/profiles/counter.yaml" <<Y
profile: counter
class: service
points:
  - {name: n, topic: seq, json: n, type: uint32, event: true}
Y
bg_start "$SIM" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" </dev/null >"$TMP/sim.log" 2>&1
wait_for 5 test -S "$TMP/sim.sock" || not_ok "simulator starts"
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock" >/dev/null; }

P=cgw/s
bg_start mosquitto_sub -p "$mq" -i plat-sub -c -q 1 -F '%U %t %p' -t 'cgw/#' >"$TMP/sub.txt" 2>/dev/null
wait_for 5 grep -q plat-sub "$TMP/platform.log"

# raised_at GATEWAY DEVICE: receipt time (s.ns) of its first raised smoke alarm
raised_at() { grep " $P/$1/device/$2/alarm .*\"alarm\":\"smoke\".*\"event\":\"raised\"" "$TMP/sub.txt" | head -1 | cut -d' ' -f1; }
has_raised() { test -n "$(raised_at "$1" "$2")"; }
# distinct counter values the platform got from GATEWAY's DEVICE, and >= N
values() { grep " $P/$1/device/$2/event " "$TMP/sub.txt" | sed -n 's/.*"value":\([0-9]*\).*/\1/p' | sort -un | wc -l; }
values_ge() { test "$(values "$1" "$2")" -ge "$3"; }
ms_between() { awk -v a="$1" -v b="${2:-0}" 'BEGIN{printf "%.0f", b ? (b - a) * 1000 : 999999}'; }

# config GATEWAY EXTRA-UPLINKS EXTRA-BUSES EXTRA-DEVICES > file
config() {
	cat <<Y
gateway: {id: $1, site: s, state_dir: $TMP/$1}
profile_dirs: [$TMP/profiles]
control: {socket: $TMP/$1.sock}
metrics: {enabled: false}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq"}
${2:-}
buses:
  - {name: fire-io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms}
${3:-}
devices:
$(for u in $(seq 1 $NDET); do echo "  - {id: smoke-$u, name: $u号烟感, profile: smoke-detector, bus: fire-io, unit: $u, poll: 100ms}"; done)
${4:-}
Y
}

# ---- A. a silent nameserver ------------------------------------------------
dns_ip=127.0.0.77
part_a() {
	cat >"$TMP/helper.py" <<'PY'
import socket, sys, time
mode, where, out = sys.argv[1], sys.argv[2], open(sys.argv[3], "a", buffering=1)
if mode == "dns":  # reads every query, never answers
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((where, 53))
else:  # sd_notify: what cgwd tells its service manager, with the time
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(where)
out.write("listening\n")
while True:
    d = s.recv(4096)
    out.write("%d %s\n" % (time.time() * 1000, d.decode(errors="replace").replace("\n", " ")))
PY
	bg_start python3 "$TMP/helper.py" dns "$dns_ip" "$TMP/dns.txt"
	bg_start python3 "$TMP/helper.py" notify "$TMP/notify.sock" "$TMP/notify.txt"
	wait_for 5 grep -q listening "$TMP/notify.txt" || not_ok "notify listener starts"
	if ! wait_for 5 grep -q listening "$TMP/dns.txt"; then
		echo "skipped: cannot bind a silent nameserver on $dns_ip:53"
		return
	fi
	printf 'nameserver %s\noptions timeout:5 attempts:2\n' "$dns_ip" >"$TMP/resolv.conf"
	mkdir -p "$TMP/gw-dns"
	config gw-dns \
		"  - {name: backup, type: mqtt, url: \"mqtts://platform.cgw-dns-test.example:8883\"}
  - {name: duty-room, type: http, url: \"https://alerts.cgw-dns-test.example/api/alarms\"}" \
		"  - {name: lan, type: mqtt, url: \"mqtt://lan-broker.cgw-dns-test.example:1883\", insecure: true}" \
		"  - {id: locker-1, name: 北门快递柜, profile: parcel-locker, bus: lan, topic: lockers/north}" \
		>"$TMP/gw-dns.yaml"
	t_start=$(now_ms)
	bg_start unshare -m --propagation private sh -c \
		"mount --bind '$TMP/resolv.conf' /etc/resolv.conf && NOTIFY_SOCKET='$TMP/notify.sock' exec '$CGWD' -c '$TMP/gw-dns.yaml' -f --log-level info" \
		2>"$TMP/gw-dns.log"
	dpid=$BG_PID
	wait_for 10 grep -q "READY=1" "$TMP/notify.txt"
	ready=$(($(grep -m1 "READY=1" "$TMP/notify.txt" | cut -d' ' -f1) - t_start))
	check "start-up is not held by the resolver: READY after $ready ms (< 1500)" test "$ready" -lt 1500
	check "the first poll reaches the working uplink within 3 s of the start" \
		wait_for 3 grep -q "$P/gw-dns/device/smoke-1/telemetry" "$TMP/sub.txt"
	first=$(($(awk '/gw-dns\/device\/smoke-1\/telemetry/{printf "%.0f", $1 * 1000; exit}' "$TMP/sub.txt") - t_start))
	diag "READY $ready ms, first telemetry $first ms after the start"
	check "the silent nameserver is being asked" wait_for 5 test "$(grep -vc listening "$TMP/dns.txt")" -gt 0
	# one fire alarm every ~1.5 s for 24 s: across several 10 s resolver
	# timeouts of each of the three clients that use host names, and a reload
	worst=0 n=0 late=0
	t_end=$(($(now_ms) + 24000))
	for u in $(seq 1 $NDET); do
		[ "$(now_ms)" -ge "$t_end" ] && break
		if [ "$u" -eq 8 ]; then # a reload half-way: every client is closed and opened again
			r0=$(now_ms)
			kill -HUP "$dpid"
			wait_for 5 grep -q "configuration reloaded" "$TMP/gw-dns.log"
			reload=$(($(now_ms) - r0))
		fi
		t0=$(date +%s.%N)
		sim set "smoke-$u" status 1
		if ! wait_for 5 has_raised gw-dns "smoke-$u"; then
			late=$((late + 1)); diag "smoke-$u: no alarm within 5 s"; continue
		fi
		lat=$(ms_between "$t0" "$(raised_at gw-dns "smoke-$u")")
		n=$((n + 1)); [ "$lat" -gt "$worst" ] && worst=$lat
		[ "$lat" -gt 2000 ] && late=$((late + 1))
		# cgwctl answers at once too: the loop is not waiting anywhere
		c0=$(now_ms); "$CTL" -s "$TMP/gw-dns.sock" status >/dev/null; c=$(($(now_ms) - c0))
		[ "$c" -gt 1000 ] && { late=$((late + 1)); diag "cgwctl status took $c ms"; }
		sleep 1
	done
	check "a reload with connects stuck in the resolver is prompt (${reload:-?} ms)" test "${reload:-99999}" -lt 2000
	queries=$(grep -vc listening "$TMP/dns.txt")
	diag "$n fire alarms over 24 s, worst register change -> platform $worst ms; $queries resolver queries meanwhile"
	check "every fire alarm reached the platform within 2 s while the resolver hangs ($n alarms, worst $worst ms)" \
		test "$late" -eq 0 -a "$n" -ge 8
	check "the resolver was asked again and again meanwhile ($queries queries)" test "$queries" -ge 6
	tasks=$(ls /proc/"$dpid"/task 2>/dev/null | wc -l)
	check "connector threads stay bounded ($tasks threads in cgwd)" test "$tasks" -le 30
	check "the unresolvable uplink's outage is logged once per start (a reload is one)" \
		test "$(grep -c 'backup\] cannot connect' "$TMP/gw-dns.log")" -le 2
	t0=$(now_ms); kill -TERM "$dpid"
	wait_for 10 bash -c "! kill -0 $dpid"
	stop=$(($(now_ms) - t0))
	check "stops promptly with connects stuck in the resolver ($stop ms)" test "$stop" -lt 5000
}
if [ "$(id -u)" -ne 0 ] || ! unshare -m --propagation private true 2>/dev/null; then
	echo "skipped: needs root"
else
	part_a
fi

# ---- B. the platform broker comes back: the waiting alarm within 2 s --------
config gw-re >"$TMP/gw-re.yaml"
mkdir -p "$TMP/gw-re"
for u in $(seq 1 $NDET); do sim set "smoke-$u" status 0; done
bg_start "$CGWD" -c "$TMP/gw-re.yaml" -f 2>"$TMP/gw-re.log"
rpid=$BG_PID
check "B: connected" wait_for 10 grep -q "connected to 127.0.0.1:$mq" "$TMP/gw-re.log"
wait_for 5 grep -q "$P/gw-re/device/smoke-2/telemetry" "$TMP/sub.txt"
kill -TERM "$PLAT_PID"; wait "$PLAT_PID" 2>/dev/null
check "B: the outage is seen" wait_for 10 grep -q "connection to 127.0.0.1:$mq lost" "$TMP/gw-re.log"
sleep 12 # a long enough outage that the backoff has grown past 2 s
sim set smoke-2 status 1
check "B: the alarm is raised during the outage" wait_for 5 \
	bash -c "'$CTL' -s '$TMP/gw-re.sock' alarms | grep -q smoke-2"
sleep 3
start_platform || not_ok "B: platform broker restarts"
back=$(date +%s.%N)
check "B: the alarm arrives after the broker is back" wait_for 10 has_raised gw-re smoke-2
lat=$(ms_between "$back" "$(raised_at gw-re smoke-2)")
diag "broker back -> alarm at the subscriber: $lat ms"
check "B: within 2 s (+0.5 s margin) of the broker's return ($lat ms)" test "$lat" -le 2500
kill -TERM "$rpid"; wait "$rpid" 2>/dev/null

# ---- C. ingest flood while the core queue is full --------------------------
N=3000
mkdir -p "$TMP/gw-fl"
config gw-fl "" "  - {name: lan, type: mqtt, url: \"mqtt://127.0.0.1:$lan\"}" \
	"  - {id: ctr-1, name: 计数器, profile: counter, bus: lan, topic: flood}" >"$TMP/gw-fl.yaml"
bg_start mosquitto_sub -p "$lan" -i lan-count -q 1 -t flood/seq -F '%p' >"$TMP/lan-sub.txt" 2>/dev/null
CGW_TEST_QUEUE_CAPACITY=1 bg_start "$CGWD" -c "$TMP/gw-fl.yaml" -f 2>"$TMP/gw-fl.log"
fpid=$BG_PID
check "C: ingest subscribed" wait_for 10 grep -q "lan\] subscribed to 1 topic filters" "$TMP/gw-fl.log"
qfull() { "$CTL" -s "$TMP/gw-fl.sock" --json status | tr -d ' \n' | sed -n 's/.*"full_episodes":\([0-9]*\).*/\1/p'; }
qfull_gt() { test "$(qfull)" -gt "$1"; }
sim churn 100 # every second every register moves: the one-item queue overflows
wait_for 10 qfull_gt 0
f0=$(qfull)
# the flood, in six bursts over ~3 s, so that it spans several churn rounds
seq 1 $N | sed 's/.*/{"n":&}/' >"$TMP/flood"
split -n l/6 "$TMP/flood" "$TMP/flood."
for f in "$TMP"/flood.*; do
	mosquitto_pub -p "$lan" -q 1 -t flood/seq -l <"$f" || not_ok "C: flood published"
	sleep 0.5
done
wait_for 60 values_ge gw-fl ctr-1 $N
f1=$(qfull)
sim churn 0
delivered=$(sort -u "$TMP/lan-sub.txt" | wc -l)
got=$(values gw-fl ctr-1)
diag "LAN broker delivered $delivered distinct, the platform got $got distinct; queue full episodes $f0 -> $f1 (capacity 1)"
check "C: the core queue overflowed during the flood ($f0 -> $f1 episodes)" test "${f1:-0}" -gt "${f0:-0}"
check "C: all $delivered messages the LAN broker delivered reached the platform ($got)" \
	test "$got" -eq "$delivered" -a "$delivered" -eq $N
kill -TERM "$fpid"; wait "$fpid" 2>/dev/null

# ---- D. SIGKILL while a device publishes at QoS 1 ---------------------------
M=1500
mkdir -p "$TMP/gw-k"
config gw-k "" "  - {name: lan, type: mqtt, url: \"mqtt://127.0.0.1:$lan\"}" \
	"  - {id: ctr-2, name: 计数器2, profile: counter, bus: lan, topic: kill}" >"$TMP/gw-k.yaml"
start_k() { bg_start "$CGWD" -c "$TMP/gw-k.yaml" -f 2>>"$TMP/gw-k.log"; KPID=$BG_PID; }
start_k
wait_for 10 grep -q "lan\] subscribed to 1 topic filters" "$TMP/gw-k.log"
# the device: 1500 messages at QoS 1, ~500 a second
(for i in $(seq 1 $M); do echo "{\"n\":$i}"; [ $((i % 50)) -eq 0 ] && sleep 0.1; done) |
	mosquitto_pub -p "$lan" -q 1 -t kill/seq -l &
devpid=$!
for k in 1 2 3; do
	wait_for 20 values_ge gw-k ctr-2 $((k * M / 4))
	kill -KILL "$KPID"; wait "$KPID" 2>/dev/null
	sleep 0.3
	start_k
done
wait "$devpid"
wait_for 60 values_ge gw-k ctr-2 $M
check "D: every message published during 3 SIGKILLs reached the platform ($(values gw-k ctr-2) of $M)" \
	values_ge gw-k ctr-2 $M
check "D: the client id is stable ({gateway}-{bus}), the session persistent" \
	grep -q "client id gw-k-lan" "$TMP/gw-k.log"
kill -TERM "$KPID"; wait "$KPID" 2>/dev/null
done_testing
