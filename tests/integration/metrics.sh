#!/usr/bin/env bash
# The metrics endpoint of a running daemon: Prometheus text format (HELP and
# TYPE for every family, escaped label values), the numbers follow what
# happens (device online/offline, Modbus timeouts, alarms, uplink), /healthz,
# 404/405 elsewhere; a port in use or metrics switched off leave the daemon
# running.
. "$(dirname "$0")/../lib.sh"
CTL=$CGW_BUILD/cgwctl
SIM=$CGW_BUILD/cgw-sim
export CGW_PROFILES_DIR=$TOP/config/profiles
DAEMON=("$CGW_BUILD/cgwd" -f -c)

mqtt_port=$(free_port)
sim_port=$(free_port)
port=$(free_port)
URL=http://127.0.0.1:$port
mkdir -p "$TMP/state" "$TMP/state2" "$TMP/state3"
start_mosquitto "$mqtt_port" || not_ok "mosquitto started"
write_config() { # file state_dir socket metrics-yaml
	cat >"$1" <<YAML
gateway: {id: gw-met, site: north, state_dir: $2}
control: {socket: $3}
metrics: $4
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mqtt_port"}
buses:
  - {name: tcp-1, type: modbus-tcp, host: 127.0.0.1, port: $sim_port, timeout: 100ms, retries: 0, offline_after: 2}
  - {name: 'spare "b"\\1', type: modbus-tcp, host: 127.0.0.1, port: 1}
devices:
  - {id: smoke-1, name: 烟感一, profile: smoke-detector, bus: tcp-1, unit: 1, poll: 100ms}
YAML
}
write_config "$TMP/cgw.yaml" "$TMP/state" "$TMP/cgwd.sock" "{enabled: true, listen: \"127.0.0.1:$port\"}"
bg_start "$SIM" -c "$TMP/cgw.yaml" --control "$TMP/sim.sock" >"$TMP/sim.log" 2>&1
wait_for 10 grep -q ready "$TMP/sim.log" || not_ok "simulator ready"
sim() { echo "$*" | socat -t 5 - "UNIX-CONNECT:$TMP/sim.sock"; }
quiet() { "$@" >/dev/null 2>&1; }

bg_start "${DAEMON[@]}" "$TMP/cgw.yaml" 2>"$TMP/daemon.log"
DPID=$BG_PID
check "the daemon serves /healthz" wait_for 10 curl -sf -o /dev/null "$URL/healthz"

# ---- /healthz, 404, 405 -------------------------------------------------------------
code=$(curl -s -o "$TMP/body" -w '%{http_code}' "$URL/healthz")
check "/healthz: 200 ok (got $code)" bash -c "[ '$code' = 200 ] && [ \"\$(cat '$TMP/body')\" = ok ]"
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/nothing-here")
check "another path: 404 (got $code)" test "$code" = 404
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/")
check "/: 404 (got $code)" test "$code" = 404
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST --data x=1 "$URL/metrics")
check "POST /metrics: 405 (got $code)" test "$code" = 405
code=$(curl -s -o /dev/null -w '%{http_code}' -I "$URL/metrics")
check "HEAD /metrics: 200 (got $code)" test "$code" = 200

# ---- /metrics: format ----------------------------------------------------------------
scrape() { curl -sf "$URL/metrics" >"$TMP/m"; }
has() { scrape && grep -qE "$1" "$TMP/m"; }
check "metrics: the device comes online" wait_for 10 has '^cgw_device_online\{device="smoke-1"\} 1$'
check "metrics: the uplink is connected" wait_for 10 has '^cgw_uplink_connected\{uplink="platform"\} 1$'
ctype=$(curl -s -o /dev/null -w '%{content_type}' "$URL/metrics")
check "metrics: text format 0.0.4 ($ctype)" bash -c "[[ '$ctype' == 'text/plain; version=0.0.4'* ]]"
check "metrics: cgw_up has HELP and TYPE" bash -c "grep -q '^# HELP cgw_up ' '$TMP/m' && grep -qx '# TYPE cgw_up gauge' '$TMP/m'"
check "metrics: cgw_up 1" grep -qx 'cgw_up 1' "$TMP/m"
# every sample belongs to the family announced just before it, every family once,
# HELP then TYPE, a known type, names and labels well formed, values numbers
check "metrics: every sample under its own HELP and TYPE, well formed" awk '
	/^# HELP / { if (seen[$3]++) { print "family twice: " $3; bad = 1 } help = $3; next }
	/^# TYPE / { if ($3 != help) { print "TYPE without HELP: " $3; bad = 1 }
		     if ($4 !~ /^(gauge|counter|histogram)$/) { print "type " $4; bad = 1 }
		     fam = $3; type = $4; next }
	/^#/ { next }
	{
		name = $1; sub(/\{.*/, "", name)
		if (type == "histogram" && (name == fam "_bucket" || name == fam "_sum" || name == fam "_count"))
			name = fam
		if (name != fam) { print "sample outside its family: " $0; bad = 1 }
		if (type == "counter" && name !~ /_total$/) { print "counter without _total: " name; bad = 1 }
		if (name !~ /^cgw_[a-z_]+$/) { print "name: " name; bad = 1 }
		if ($0 ~ /\{/ && $0 !~ /^[a-z_]+\{([a-z_]+="([^"\\]|\\.)*",?)+\} /) { print "labels: " $0; bad = 1 }
		if ($NF !~ /^(-?[0-9.]+(e[-+]?[0-9]+)?|NaN|[-+]Inf)$/) { print "value: " $0; bad = 1 }
	}
	END { exit bad }' "$TMP/m"
for name in cgw_uptime_seconds 'cgw_modbus_requests_total\{bus="tcp-1",device="smoke-1"\}' \
	'cgw_modbus_errors_total\{bus="tcp-1",device="smoke-1",kind="timeout"\}' \
	'cgw_modbus_errors_total\{bus="tcp-1",device="smoke-1",kind="exception"\}' \
	'cgw_modbus_errors_total\{bus="tcp-1",device="smoke-1",kind="crc"\}' \
	'cgw_modbus_errors_total\{bus="tcp-1",device="smoke-1",kind="connection"\}' \
	'cgw_outbox_messages\{uplink="platform",lane="alarm"\}' \
	'cgw_outbox_oldest_seconds\{uplink="platform",lane="telemetry"\}' \
	'cgw_alarms_active\{severity="critical"\}' 'cgw_alarms_active\{severity="warning"\}' \
	cgw_store_bytes cgw_store_max_bytes 'cgw_store_evicted_total\{lane="telemetry"\}' \
	'cgw_uplink_sent_total\{uplink="platform"\}' 'cgw_uplink_acked_total\{uplink="platform"\}' \
	cgw_readings_total cgw_queue_depth 'cgw_loop_iteration_seconds_bucket\{le="0.001"\}' \
	'cgw_loop_iteration_seconds_bucket\{le="\+Inf"\}' cgw_loop_iteration_seconds_count \
	cgw_loop_longest_iteration_seconds cgw_loop_stalls_total 'cgw_bus_connected\{bus="tcp-1",type="modbus-tcp"\}'; do
	check "metrics: $(echo "$name" | tr -d '\\')" grep -qE "^$name [0-9.e+-]+\$" "$TMP/m"
done
undoc=$(awk '/^# TYPE / { print $3 }' "$TMP/m" | while read -r n; do
	grep -q "^\.BR\? $n\( \|\$\)" "$TOP/docs/cgwd.8" || echo "$n"
done)
check "metrics: every family is documented in cgwd(8)${undoc:+ (not: $undoc)}" test -z "$undoc"
fs_total=$(($(stat -f -c %b "$TMP/state") * $(stat -f -c %S "$TMP/state")))
check "metrics: the store cap by default half the filesystem ($((fs_total / 100 * 50)))" \
	grep -qx "cgw_store_max_bytes $((fs_total / 100 * 50))" "$TMP/m"
check "metrics: the store's state and the free space" bash -c \
	"grep -qx 'cgw_store_state{state=\"ok\"} 1' '$TMP/m' && grep -qE '^cgw_store_fs_free_bytes [1-9]' '$TMP/m'"
check "metrics: label values escaped (\" and \\)" \
	grep -qF 'cgw_bus_connected{bus="spare \"b\"\\1",type="modbus-tcp"} 0' "$TMP/m"
check "metrics: gateway and site in cgw_info" \
	grep -qF 'cgw_info{gateway="gw-met",site="north",config_hash="' "$TMP/m"
up1=$(awk '$1 == "cgw_uptime_seconds" { print $2 }' "$TMP/m")
reads1=$(awk '$1 == "cgw_readings_total" { print $2 }' "$TMP/m")
check "metrics: uptime goes on" bash -c \
	"curl -sf '$URL/metrics' | awk -v u=$up1 '\$1 == \"cgw_uptime_seconds\" && \$2 > u { f = 1 } END { exit !f }'"

# ---- the numbers follow events ----------------------------------------------------------
sim set smoke-1 status 1 >/dev/null
check "metrics: a critical alarm is counted" wait_for 10 has '^cgw_alarms_active\{severity="critical"\} 1$'
check "metrics: the reading that raised it is counted" bash -c \
	"curl -sf '$URL/metrics' | awk -v r=$reads1 '\$1 == \"cgw_readings_total\" && \$2 > r { f = 1 } END { exit !f }'"
sim silence smoke-1 on >/dev/null
check "metrics: a silent device's timeouts are counted" wait_for 10 has \
	'^cgw_modbus_errors_total\{bus="tcp-1",device="smoke-1",kind="timeout"\} [1-9][0-9]*$'
check "metrics: a silent device goes offline" wait_for 10 has '^cgw_device_online\{device="smoke-1"\} 0$'
sim silence smoke-1 off >/dev/null
check "metrics: and back online" wait_for 10 has '^cgw_device_online\{device="smoke-1"\} 1$'
kill -KILL "$MOSQ_PID"
check "metrics: the uplink is down when the broker is" wait_for 60 has '^cgw_uplink_connected\{uplink="platform"\} 0$'
check "/healthz: still 200 without the broker (the store is what matters)" curl -sf -o /dev/null "$URL/healthz"

# ---- a port in use; metrics off -----------------------------------------------------
port2=$(free_port)
bg_start socat TCP-LISTEN:"$port2",bind=127.0.0.1,reuseaddr,fork SYSTEM:'echo busy'
OCC=$BG_PID
wait_for 5 port_open "$port2"
write_config "$TMP/busy.yaml" "$TMP/state2" "$TMP/busy.sock" "{enabled: true, listen: \"127.0.0.1:$port2\"}"
bg_start "${DAEMON[@]}" "$TMP/busy.yaml" 2>"$TMP/busy.log"
BPID=$BG_PID
check "port in use: a clear log line" wait_for 10 grep -q "127.0.0.1:$port2: Address already in use" "$TMP/busy.log"
check "port in use: the daemon keeps running and answers cgwctl" wait_for 10 quiet "$CTL" -s "$TMP/busy.sock" status
check "port in use: it is still running" kill -0 "$BPID"
kill -TERM "$BPID"
wait "$BPID"
rc=$?
check "port in use: stops cleanly (exit $rc)" test "$rc" -eq 0
kill "$OCC" 2>/dev/null

port3=$(free_port)
write_config "$TMP/off.yaml" "$TMP/state3" "$TMP/off.sock" "{enabled: false, listen: \"127.0.0.1:$port3\"}"
bg_start "${DAEMON[@]}" "$TMP/off.yaml" 2>"$TMP/off.log"
OPID=$BG_PID
wait_for 10 test -S "$TMP/off.sock"
check "metrics off: the daemon runs" wait_for 10 quiet "$CTL" -s "$TMP/off.sock" status
check "metrics off: nothing listens on the port" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$port3) 2>/dev/null"
kill -TERM "$OPID"
wait "$OPID"

kill -TERM "$DPID"
wait "$DPID"
rc=$?
check "SIGTERM: exit 0 (got $rc)" test "$rc" -eq 0
check "SIGTERM: the port is free again" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null"
if grep -qE 'ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:' "$TMP"/*.log; then
	not_ok "no sanitizer reports"
	grep -hE -A5 'Sanitizer|runtime error' "$TMP"/*.log | head -30 | sed 's/^/# /'
else
	ok "no sanitizer reports"
fi
done_testing
