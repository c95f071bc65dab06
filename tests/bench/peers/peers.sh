#!/usr/bin/env bash
# make bench-peers (issue 17): cgwd beside a peer on the same load, in one run.
#
# 500 Modbus TCP devices x 30 registers at 1 s (10 buses x 50 units) from one
# simulator, each system publishing to the same local mosquitto:
#   - the bare libmodbus loop (tests/tools/mb_ref): the same requests, nothing
#     decoded, stored or sent: the physical floor;
#   - cgwd, the whole pipeline (drivers, alarm rules, SQLite store, MQTT uplink);
#   - Node-RED with node-red-contrib-modbus (installed by make bench-peers from
#     the npm registry into BUILD/peers, versions pinned in package.json): one
#     modbus-read per device, one JSON message per device per cycle, QoS 1,
#     nothing stored.
# Each runs alone for WINDOW seconds after WARMUP, REPEAT times in turn; the
# median of each figure is printed, with the ratios the issue names.
#
#   tests/bench/peers/peers.sh [BUILD_DIR]   (WINDOW=60 WARMUP=10 REPEAT=3)
set -u
export CGW_BUILD=${1:-${CGW_BUILD:-$(pwd)/build}}
CGW_BUILD=$(cd "$CGW_BUILD" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
source "$HERE/../load500.lib"
WINDOW=${WINDOW:-60}
WARMUP=${WARMUP:-10}
REPEAT=${REPEAT:-3}
NR=$CGW_BUILD/peers/node_modules/node-red/red.js
[ -f "$NR" ] || { echo "bench-peers: Node-RED is not installed in $CGW_BUILD/peers (make bench-peers)" >&2; exit 1; }

load500_sim
mq=$(free_port)
start_mosquitto "$mq"
bg_start mosquitto_sub -p "$mq" -q 0 -t '#' -F '%t' >"$TMP/sub.out" 2>/dev/null

# cgwd's configuration: the load plus the uplink
load500_cgwd_yaml "$mq" "$TMP/cgwd.yaml"
# Node-RED: the flow, no editor, warnings only
mkdir -p "$TMP/nr"
python3 "$HERE/flow.py" "$TMP/cgw.yaml" "$mq" >"$TMP/nr/flows.json"
nrport=$(free_port)
cat >"$TMP/nr/settings.js" <<JS
module.exports = {
  uiHost: "127.0.0.1", uiPort: $nrport, httpAdminRoot: false, httpNodeRoot: false,
  flowFile: "flows.json", credentialSecret: false, disableEditor: true,
  logging: { console: { level: "warn", metrics: false, audit: false } },
  externalModules: { autoInstall: false }
};
JS

# measure NAME PID: one window; appends "NAME cpu_pct pss_kb msgs_per_s" to $TMP/rows
measure() {
	local name=$1 pid=$2 t0 t1 ms0 ms1 n0 n1
	sleep "$WARMUP"
	kill -0 "$pid" 2>/dev/null || { echo "bench-peers: $name died" >&2; return 1; }
	t0=$(ticks "$pid"); ms0=$(now_ms); n0=$(wc -l <"$TMP/sub.out")
	sleep "$WINDOW"
	t1=$(ticks "$pid"); ms1=$(now_ms); n1=$(wc -l <"$TMP/sub.out")
	awk -v name="$name" -v hz="$HZ" -v t=$((t1 - t0)) -v ms=$((ms1 - ms0)) -v n=$((n1 - n0)) \
		-v pss="$(pss_kb "$pid")" 'BEGIN {
		printf "%s %.3f %d %.1f\n", name, 100 * (t / hz) / (ms / 1000), pss, n / (ms / 1000) }' >>"$TMP/rows"
	tail -1 "$TMP/rows" | awk '{ printf "  %-8s CPU %6.2f %% of one core, PSS %6.1f MB, %7.1f messages/s\n", $1, $2, $3 / 1024, $4 }' >&2
	[ "$name" = nodered ] || echo "           memory: $(mem_breakdown "$pid")" >&2
}
stop() { kill -TERM "$1" 2>/dev/null; for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done; kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null; }

for r in $(seq 1 "$REPEAT"); do
	echo "round $r of $REPEAT (${WINDOW} s windows)" >&2
	bg_start "$CGW_BUILD/tools/mb_ref" -c "$TMP/cgw.yaml" >"$TMP/ref.out" 2>&1
	measure bare "$BG_PID"; stop "$BG_PID"
	rm -rf "$TMP/state"/*
	bg_start "$CGW_BUILD/cgwd" -c "$TMP/cgwd.yaml" -f 2>"$TMP/cgwd.log"
	measure cgwd "$BG_PID"; stop "$BG_PID"
	(cd "$TMP/nr" && exec node "$NR" --userDir "$TMP/nr" --settings "$TMP/nr/settings.js" flows.json) >"$TMP/nr.log" 2>&1 &
	pid=$!; _bg_pids+=("$pid")
	measure nodered "$pid"; stop "$pid"
done

# medians, the table and the ratios
echo "500 devices x 30 registers at 1 s (10 buses x 50 units), loopback, median of $REPEAT x ${WINDOW} s"
echo "| system | CPU, % of one core | CPU-s per 1k polls | PSS | messages/s |"
echo "|---|---|---|---|---|"
sort -k1,1 -k2,2n "$TMP/rows" | awk -v rep="$REPEAT" '
{ n[$1]++; c[$1, n[$1]] = $2; p[$1, n[$1]] = $3; m[$1, n[$1]] = $4 }
function med(a, name,   i, j, k, v, t) { k = n[name]; for (i = 1; i <= k; i++) v[i] = a[name, i]
	for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
	return v[int((k + 1) / 2)] }
END {
	split("bare cgwd nodered", order, " ")
	label["bare"] = "bare libmodbus loop (mb_ref), nothing stored or sent"
	label["cgwd"] = "**cgwd**, whole pipeline"
	label["nodered"] = "Node-RED 4.1.8 + node-red-contrib-modbus 5.23.3"
	for (i = 1; i <= 3; i++) { s = order[i]; if (!n[s]) continue
		C[s] = med(c, s); P[s] = med(p, s); M[s] = med(m, s)
		printf "| %s | %.2f %% | %.3f | %.1f MB | %.0f |\n", label[s], C[s], C[s] / 100 / 500 * 1000, P[s] / 1024, M[s] }
	printf "\nratios: cgwd CPU / bare loop CPU = %.2f (target <= 2); cgwd CPU / Node-RED CPU = %.2f (target <= 0.5); cgwd PSS %.1f MB (target <= 8 MB)\n",
		C["bare"] ? C["cgwd"] / C["bare"] : 0, C["nodered"] ? C["cgwd"] / C["nodered"] : 0, P["cgwd"] / 1024
}'
