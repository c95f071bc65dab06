#!/usr/bin/env bash
# An HTTP endpoint that refuses (401, a rotated key) for a while: the fire
# alarm raised meanwhile is kept and retried, never dead-lettered, and arrives
# once the endpoint accepts again; telemetry refused meanwhile is
# dead-lettered, and `cgwctl dead-letters replay` sends it again.
. "$(dirname "$0")/../lib.sh"
CTL=$CGW_BUILD/cgwctl
export CGW_PROFILES_DIR=$TOP/config/profiles

hport=$(free_port)
sim_port=$(free_port)
mkdir -p "$TMP/state"
echo 401 >"$TMP/code"
cat >"$TMP/srv.py" <<'PY'
import http.server, json, sys, time
code_file, log = sys.argv[2], open(sys.argv[3], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        code = int(open(code_file).read())
        if 200 <= code < 300:
            log.write("%.3f %s\n" % (time.time(), body.decode()))
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"no")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
bg_start python3 "$TMP/srv.py" "$hport" "$TMP/code" "$TMP/posts"
wait_for 5 port_open "$hport" || not_ok "HTTP endpoint started"
cat >"$TMP/cgw.yaml" <<YAML
gateway: {id: gw-dl, site: s, state_dir: $TMP/state}
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
uplinks:
  - {name: duty, type: http, url: "http://127.0.0.1:$hport/hook", send: [alarm, status, telemetry]}
buses:
  - {name: tcp-1, type: modbus-tcp, host: 127.0.0.1, port: $sim_port, timeout: 200ms}
devices:
  - {id: smoke-1, name: 烟感一, profile: smoke-detector, bus: tcp-1, unit: 1, poll: 200ms}
YAML
bg_start "$CGW_BUILD/cgw-sim" -c "$TMP/cgw.yaml" --control "$TMP/sim.sock" >"$TMP/sim.log" 2>&1
wait_for 10 grep -q ready "$TMP/sim.log" || not_ok "simulator ready"
sim() { echo "$*" | socat -t 5 - "UNIX-CONNECT:$TMP/sim.sock"; }
bg_start "$CGW_BUILD/cgwd" -f -c "$TMP/cgw.yaml" 2>"$TMP/daemon.log"
ctl() { "$CTL" -s "$TMP/cgwd.sock" "$@"; }
dl_count() { ctl --json dead-letters 1000 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
# lanes as stored: 0 alarm, 1 event, 2 status, 3 telemetry
dl_lanes() { ctl --json dead-letters 1000 | python3 -c 'import json,sys; print(" ".join(sorted({str(d["lane"]) for d in json.load(sys.stdin)})))'; }
refused() { ctl --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["uplinks"][0]["refused"])'; }
export CTL TMP
export -f ctl dl_count refused

check "telemetry refused with 401 goes to the dead-letter table" wait_for 15 bash -c "[ \$(dl_count) -gt 0 ]"
sim set smoke-1 status 1 >/dev/null
check "the alarm (and the device state) refused with 401 is counted as refused" \
	wait_for 15 bash -c "[ \$(refused) -gt 1 ]"
sleep 3 # a few more refusals of the alarm
lanes=$(dl_lanes)
check "no alarm and no device state among the dead letters (lanes: $lanes)" test "$lanes" = 3
check "cgwctl status shows the refusals" bash -c "ctl status | grep -qE '^duty .* [0-9]+ retried, [0-9]+ dead'"
check "cgwctl dead-letters lists them" bash -c "ctl dead-letters | grep -q 'HTTP 401: no'"
n_log=$(grep -c 'refused message' "$TMP/daemon.log")
check "the refusals are logged once ($n_log lines)" test "$n_log" = 1

# the key is fixed: the alarm goes out within a few seconds
t0=$(date +%s.%N)
echo 200 >"$TMP/code"
has_alarm() { grep -q '"alarm":"smoke".*"event":"raised"\|"event":"raised".*"alarm":"smoke"' "$TMP/posts" 2>/dev/null; }
check "the alarm arrives once the endpoint accepts again" wait_for 15 has_alarm
t1=$(date +%s.%N)
late=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
check "within 6 s of the fix (${late} s)" awk -v l="$late" 'BEGIN { exit !(l <= 6) }'
check "the device state arrives too" wait_for 10 grep -q '"state":"online"' "$TMP/posts"

# replay one telemetry dead letter: it arrives, as a new message (new id)
# with its original ts
read -r id ts seq < <(ctl --json dead-letters 1000 | python3 -c 'import json,sys; d=json.load(sys.stdin)[-1]; print(d["id"], d["ts_ms"], d["seq"])')
before=$(dl_count)
check "cgwctl dead-letters replay $id" bash -c "ctl dead-letters replay $id | grep -qx 'replayed 1 dead letter'"
replayed() { grep "\"ts\":$ts," "$TMP/posts" | grep '"values"' | grep -vq "\"id\":\"gw-dl:$seq\""; }
check "the replayed telemetry arrives (ts $ts, a new id)" wait_for 10 replayed
check "it left the dead-letter table" test "$(dl_count)" = $((before - 1))
check "replay of an unknown id is refused" bash -c "! ctl dead-letters replay 999999999 2>/dev/null"
check "replay --all empties the table" bash -c "ctl dead-letters replay --all | grep -q '^replayed [1-9]'"
check "no dead letters left" wait_for 5 bash -c "[ \$(dl_count) = 0 ]"
done_testing
