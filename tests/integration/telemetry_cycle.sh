#!/usr/bin/env bash
# One telemetry message per device per poll cycle, whatever number of reads
# (register tables) the cycle took and however the bus workers' readings
# interleave in the core's queue: three Modbus TCP buses served by cgw-sim,
# devices whose points span four tables and report every cycle, plus the
# shipped smoke detector (three tables). And MQTT states coalesced by the
# core carry the ts of their newest value.
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
SIM=$CGW_BUILD/cgw-sim
export CGW_PROFILES_DIR=$TOP/config/profiles
mq=$(free_port)
start_mosquitto "$mq" || not_ok "mosquitto starts"
mkdir -p "$TMP/state" "$TMP/profiles"
# every point reports every cycle, from four tables: four reads per cycle
cat >"$TMP/profiles/quad.yaml" <<'Y'
profile: quad
class: service
points:
  - {name: level, table: holding, address: 0, type: uint16, report_every: 100ms}
  - {name: flow, table: input, address: 0, type: uint16, report_every: 100ms}
  - {name: pump, table: coil, address: 0, report_every: 100ms}
  - {name: door, table: discrete, address: 0, report_every: 100ms}
Y
cat >"$TMP/profiles/meter.yaml" <<'Y'
profile: meter
class: service
points:
  - {name: battery, topic: state, json: battery, type: number}
  - {name: mains, topic: state, json: mains, type: bool}
Y
{
	echo "profile_dirs: [$TMP/profiles]"
	echo "buses:"
	used=" $mq "
	for b in 1 2 3; do
		port=$(free_port)
		while [[ $used == *" $port "* ]]; do port=$(free_port); done # three distinct ports
		used="$used$port "
		echo "  - {name: bus-$b, type: modbus-tcp, host: 127.0.0.1, port: $port, timeout: 300ms}"
	done
	echo "devices:"
	for b in 1 2 3; do
		for u in 1 2 3 4; do
			echo "  - {id: q$b-$u, name: Q$b-$u, profile: quad, bus: bus-$b, unit: $u, poll: 300ms}"
		done
		echo "  - {id: smoke-$b, name: S$b, profile: smoke-detector, bus: bus-$b, unit: 9, poll: 300ms}"
	done
} >"$TMP/devices.yaml"
cat >"$TMP/sim.yaml" <<Y
gateway: {id: sim, site: s, state_dir: $TMP}
include: [devices.yaml]
Y
cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-t, site: garden, state_dir: $TMP/state}
include: [devices.yaml]
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
buses:
  - {name: lan, type: mqtt, url: "mqtt://127.0.0.1:$mq"}
devices:
  - {id: meter-1, name: M1, profile: meter, bus: lan, topic: lan/meter-1}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq"}
Y
P=cgw/garden/gw-t
bg_start "$SIM" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" >"$TMP/sim.log" 2>&1 </dev/null
wait_for 15 test -S "$TMP/sim.sock" || { not_ok "simulator starts"; sed 's/^/# /' "$TMP/sim.log"; }
bg_start mosquitto_sub -p "$mq" -v -q 1 -t "$P/device/+/telemetry" >"$TMP/sub.txt" 2>/dev/null
bg_start "$CGWD" -c "$TMP/cgw.yaml" -f 2>"$TMP/cgwd.log"
# a dozen cycles of every device (poll 300 ms)
check "telemetry of every device arrives" wait_for 20 bash -c \
	"[ \$(grep -c '^$P/device/q3-4/telemetry ' '$TMP/sub.txt') -ge 12 ]"

# analyse: every message complete, one per (device, ts)
python3 - "$TMP/sub.txt" "$P" >"$TMP/report" <<'PY'
import json, sys, collections
path, prefix = sys.argv[1], sys.argv[2]
points = {"quad": {"level", "flow", "pump", "door"},
          "smoke": {"status", "smoke", "temperature", "battery_low", "tamper"}}
msgs = collections.defaultdict(list)
for line in open(path, encoding="utf-8"):
    topic, _, payload = line.rstrip("\n").partition(" ")
    dev = topic[len(prefix) + len("/device/"):-len("/telemetry")]
    if dev.startswith("meter"):
        continue
    msgs[dev].append(json.loads(payload))
total = partial = 0
pairs = collections.Counter()
for dev, ms in msgs.items():
    kind = "smoke" if dev.startswith("smoke") else "quad"
    for i, m in enumerate(ms):
        pairs[(dev, m["ts"])] += 1
        # quad devices report every point every cycle; a smoke detector's
        # first message is its first cycle: every point
        if kind == "quad" or i == 0:
            total += 1
            if set(m["values"]) != points[kind]:
                partial += 1
                if partial <= 3:
                    print("# fragment:", dev, json.dumps(m, ensure_ascii=False))
multi = sum(1 for n in pairs.values() if n > 1)
print("messages", total, "fragments", partial, "pairs", len(pairs), "multi", multi,
      "devices", len(msgs))
PY
sed -n '/^#/p' "$TMP/report"
read -r _ total _ partial _ pairs _ multi _ ndev < <(grep '^messages' "$TMP/report")
diag "telemetry: $total messages checked, $partial fragments; $pairs (device, ts) pairs, $multi with more than one message"
check "all 15 devices sent telemetry ($ndev)" test "$ndev" -eq 15
check "every message holds the whole cycle, all tables ($partial fragments of $total)" \
	test "$total" -ge 100 -a "$partial" -eq 0
check "one message per (device, ts) ($multi of $pairs pairs came as several)" test "$multi" -eq 0

# ---- MQTT states coalesced: the ts of the newest value ----
now=$(($(date +%s%N) / 1000000))
for i in $(seq 0 19); do
	t=$((now - 60000 + i * 1000))
	echo "{\"ts\":$((t + 900)),\"battery\":$((i + 20)),\"mains\":true}"
	echo "{\"ts\":$((t + 950)),\"battery\":$((i + 50)),\"mains\":true}"
done | mosquitto_pub -p "$mq" -q 0 -t lan/meter-1/state -l
check "the meter's last value arrives" wait_for 10 grep -q "^$P/device/meter-1/telemetry .*\"battery\":69" "$TMP/sub.txt"
bad=$(python3 - "$TMP/sub.txt" "$P" "$now" <<'PY'
import json, sys
path, prefix, now = sys.argv[1], sys.argv[2], int(sys.argv[3])
bad = 0
for line in open(path, encoding="utf-8"):
    topic, _, payload = line.rstrip("\n").partition(" ")
    if topic != prefix + "/device/meter-1/telemetry":
        continue
    m = json.loads(payload)
    b = m["values"].get("battery")
    if not isinstance(b, (int, float)) or not (20 <= b < 70):
        continue
    i = int(b) - 20 if b < 50 else int(b) - 50
    want = now - 60000 + i * 1000 + (900 if b < 50 else 950)
    if m["ts"] != want:
        bad += 1
        print("# %s: battery %s with ts %+d ms from its own" % (payload, b, m["ts"] - want),
              file=sys.stderr)
print(bad)
PY
)
check "a coalesced state message carries the ts of its newest value ($bad wrong)" test "$bad" -eq 0
done_testing
