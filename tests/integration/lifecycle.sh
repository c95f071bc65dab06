#!/usr/bin/env bash
# The daemon's lifecycle: start, SIGHUP with a broken file (keeps running on
# the old configuration), SIGHUP with a good file (applies it), SIGTERM
# (exit 0 within 5 s).
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
export CGW_PROFILES_DIR=$TOP/config/profiles
mkdir -p "$TMP/state"
port=$(free_port)
start_mosquitto "$port" || not_ok "mosquitto started"
write_config() { # site
	cat >"$TMP/cgw.yaml" <<YAML
gateway: {id: gw-test, site: $1, state_dir: $TMP/state}
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
uplinks:
  - {name: platform, type: mqtt, url: "mqtt://127.0.0.1:$port"}
YAML
}
write_config site-a
bg_start "$CGWD" -c "$TMP/cgw.yaml" --foreground --log-level debug 2>"$TMP/log"
pid=$BG_PID
check "cgwd starts and logs that it started" wait_for 10 grep -q "started" "$TMP/log"


# a broken file: the daemon logs why and keeps running
echo "gateway: {id: gw-test, site: [oops" >"$TMP/cgw.yaml"
kill -HUP "$pid"
check "broken reload is logged with FILE:LINE" wait_for 10 grep -q "$TMP/cgw.yaml:[0-9]*:[0-9]*: YAML" "$TMP/log"
check "broken reload keeps the running configuration" wait_for 5 grep -q "keeping the running configuration" "$TMP/log"
check "still running after a broken reload" kill -0 "$pid"

# a good file is applied
write_config site-b
kill -HUP "$pid"
check "a good reload is applied" wait_for 10 grep -q "configuration reloaded" "$TMP/log"

# SIGTERM: exit 0 within 5 s
t0=$(date +%s%N)
kill -TERM "$pid"
rc=124
for _ in $(seq 500); do
	if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; rc=$?; break; fi
	sleep 0.01
done
ms=$((($(date +%s%N) - t0) / 1000000))
check "SIGTERM: exit status 0 (got $rc)" test "$rc" -eq 0
check "SIGTERM: stopped within 5 s (${ms} ms)" test "$ms" -lt 5000
check "logs that it stopped" grep -q "stopped" "$TMP/log"

# bad configuration at start: exit 2, FILE:LINE on stderr
echo "gateway: {id: gw-test, site: s, colour: red}" >"$TMP/bad.yaml"
"$CGWD" -c "$TMP/bad.yaml" --foreground 2>"$TMP/err"
rc=$?
check "a broken file at start: exit 2 (got $rc)" test "$rc" -eq 2
check "a broken file at start: FILE:LINE message" grep -q "^$TMP/bad.yaml:1: unknown key 'colour' in gateway" "$TMP/err"
done_testing
