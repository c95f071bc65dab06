#!/usr/bin/env bash
# A real full filesystem: the state directory on a small tmpfs in a private
# mount namespace (needs root). Fire alarms get through whatever the disk does.
#  1. sustained telemetry with the platform down: db + WAL stay under max_size;
#  2. the filesystem filled by another file: a fire alarm raised then reaches
#     the platform after it returns, and one raised with the platform up
#     arrives within 2 s;
#  3. the filler removed: the store recovers by itself, the outbox drains,
#     /healthz is 200 again, the outage is logged once at its start and end;
#  4. SIGKILL while the disk is full: the stored alarm is delivered after the
#     restart (sync: normal, then sync: full);
#  5. a start with the disk already full: cgwd comes up, raises a fire alarm
#     and delivers it;
#  6. the same with no store file yet (not even room to make one): it works
#     from memory and makes the file when room returns.
if [ -z "${CGW_FULL_DISK_NS:-}" ]; then
	if [ "$(id -u)" != 0 ] || ! unshare -m true 2>/dev/null; then
		echo "skipped: needs root"
		echo "1..0 # SKIP needs root (unshare -m, mount -t tmpfs)"
		exit 0
	fi
	CGW_FULL_DISK_NS=1 exec unshare -m --propagation private bash "$0" "$@"
fi
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
SIM=$CGW_BUILD/cgw-sim
CTL=$CGW_BUILD/cgwctl
export CGW_PROFILES_DIR=$TOP/config/profiles
CAP=$((512 * 1024))
mq=$(free_port)
mbl=$(free_port) # Modbus: the telemetry load (meters, churning)
mbf=$(free_port) # Modbus: the fire detectors (quiet until told)
http=$(free_port)
ST=$TMP/state
mkdir -p "$ST" "$TMP/profiles"
mount -t tmpfs -o size=4m,mode=0750 cgw-full-disk "$ST" || { not_ok "mount a tmpfs"; done_testing; exit; }

# meters: registers that move, no alarm rules (the load is telemetry only)
cat >"$TMP/profiles/meter.yaml" <<'P'
profile: meter
class: service
points:
P
for i in $(seq 0 11); do
	echo "  - {name: p$i, table: holding, address: $i, type: uint16, report_every: 100ms}" >>"$TMP/profiles/meter.yaml"
done
{
	echo "profile_dirs: [$TMP/profiles]"
	echo "buses:"
	echo "  - {name: load, type: modbus-tcp, host: 127.0.0.1, port: $mbl, timeout: 300ms}"
	echo "devices:"
	for u in $(seq 1 30); do
		echo "  - {id: meter-$u, name: 表$u, profile: meter, bus: load, unit: $u, poll: 100ms}"
	done
} >"$TMP/load.yaml"
{
	echo "buses:"
	echo "  - {name: fire, type: modbus-tcp, host: 127.0.0.1, port: $mbf, timeout: 300ms}"
	echo "devices:"
	for u in $(seq 1 6); do
		echo "  - {id: smoke-$u, name: 烟感$u, profile: smoke-detector, bus: fire, unit: $u, poll: 100ms}"
	done
} >"$TMP/fire.yaml"
printf 'gateway: {id: sim, site: s, state_dir: %s}\ninclude: [load.yaml]\n' "$TMP" >"$TMP/sim-load.yaml"
printf 'gateway: {id: sim, site: s, state_dir: %s}\ninclude: [fire.yaml]\n' "$TMP" >"$TMP/sim-fire.yaml"
write_cfg() { # sync
	cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-d, site: s, state_dir: $ST}
include: [load.yaml, fire.yaml]
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: true, listen: "127.0.0.1:$http"}
store: {max_size: 512KB, min_free: 256KB, sync: $1}
uplinks: [{name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq", late_after: 1h}]
Y
}
write_cfg normal
mkdir -p "$TMP/mq" # the broker keeps the subscriber's session across its restarts
# (log_type debug: the broker's log shows what cgwd delivered, also before
# the subscriber is back on a broker that just started)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nuser root\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type debug\n' "$mq" "$TMP/mq" >"$TMP/mosq.conf"
start_platform() { bg_start mosquitto -c "$TMP/mosq.conf" >>"$TMP/mosq.log" 2>&1; PLAT_PID=$BG_PID; wait_for 5 port_open "$mq"; }
stop_platform() { kill -TERM "$PLAT_PID"; wait "$PLAT_PID" 2>/dev/null; }
bg_start "$SIM" -c "$TMP/sim-load.yaml" --control "$TMP/siml.sock" </dev/null >"$TMP/siml.log" 2>&1
bg_start "$SIM" -c "$TMP/sim-fire.yaml" --control "$TMP/simf.sock" </dev/null >"$TMP/simf.log" 2>&1
wait_for 5 test -S "$TMP/simf.sock" && wait_for 5 test -S "$TMP/siml.sock" || not_ok "simulators start"
siml() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/siml.sock"; }
simf() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/simf.sock"; }
start_cgwd() { bg_start "$CGWD" -c "$TMP/cgw.yaml" -f 2>>"$TMP/cgwd.log"; CGWD_PID=$BG_PID; }
ctl() { "$CTL" -s "$TMP/cgwd.sock" "$@"; }
state() { ctl --json status | sed -n 's/.*"state": *"\([a-z_]*\)".*/\1/p' | tail -1; }
healthz() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/healthz")" = "$1" ]; }
fill() { dd if=/dev/zero of="$ST/filler" bs=16k 2>/dev/null; sync; } # until ENOSPC
free_kb() { df -k --output=avail "$ST" | tail -1 | tr -d ' '; }
raised() { grep -q "/device/$1/alarm .*\"alarm\":\"smoke\".*\"event\":\"raised\"" "$TMP/sub.txt"; }
sub_start() { bg_start mosquitto_sub -p "$mq" -i full-sub -c -q 1 -v -t 'cgw/#' >>"$TMP/sub.txt" 2>/dev/null; SUB_PID=$BG_PID; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---- 1. sustained telemetry, the platform down ----------------------------
start_cgwd
wait_for 10 test -S "$TMP/cgwd.sock" || not_ok "cgwd starts"
siml churn 100 >/dev/null # every meter register moves every second
max=0 maxall=0 evicted=0
end=$(($(date +%s) + 10))
while [ "$(date +%s)" -lt $end ]; do
	db=$(stat -c %s "$ST/cgw.db" 2>/dev/null || echo 0)
	wal=$(stat -c %s "$ST/cgw.db-wal" 2>/dev/null || echo 0)
	shm=$(stat -c %s "$ST/cgw.db-shm" 2>/dev/null || echo 0)
	[ $((db + wal)) -gt $max ] && max=$((db + wal))
	[ $((db + wal + shm)) -gt $maxall ] && { maxall=$((db + wal + shm)); worst="db $db, WAL $wal, SHM $shm"; }
	sleep 0.05
done
evicted=$(ctl --json status | grep -o '"evicted_telemetry": *[0-9]*' | tr -dc 0-9)
diag "sustained load: largest db+WAL $max bytes, db+WAL+SHM $maxall bytes ($worst), cap $CAP; ${evicted:-0} evicted"
check "the load reached the cap (telemetry evicted: ${evicted:-0})" test "${evicted:-0}" -gt 0
check "db + WAL stayed under max_size ($max <= $CAP)" test "$max" -le "$CAP"
check "db + WAL + SHM stayed under max_size ($maxall <= $CAP)" test "$maxall" -le "$CAP"
check "the alarm reserve is held next to the store" test "$(stat -c %s "$ST/cgw.db-reserve" 2>/dev/null || echo 0)" -gt 0

# ---- 2. the filesystem filled by another file --------------------------------
fill
diag "filled: $(free_kb) KB free; status: $(state)"
t0=$(now_ms)
simf set smoke-1 status 1 >/dev/null
check "cgwd commits or holds the fire alarm on the full disk" wait_for 5 bash -c \
	"grep -q 'smoke-1: smoke raised\|alarm for smoke-1 held in memory' '$TMP/cgwd.log'"
check "status says the disk is full or the store at its cap" bash -c "ctl() { '$CTL' -s '$TMP/cgwd.sock' \"\$@\"; }; ctl status | grep -q 'store *\(at_cap\|disk_full\|memory_only\)'"
check "status shows free space, WAL, reserve, alarms in memory" bash -c \
	"'$CTL' -s '$TMP/cgwd.sock' status | grep -q 'free (floor .*alarm reserve .*alarms held in memory'"
check "/metrics shows the store's state and free space" bash -c \
	"curl -s http://127.0.0.1:$http/metrics | grep -q '^cgw_store_fs_free_bytes' && curl -s http://127.0.0.1:$http/metrics | grep -q '^cgw_store_state{state=\"ok\"}'"
start_platform
sub_start
# cgwd may deliver it before the subscriber is back: the broker's log says so too
reached() { raised "$1" || grep -q "Received PUBLISH from .*'[^']*/device/$1/alarm'" "$TMP/mosq.log"; }
check "the alarm raised on the full disk reaches the platform when it returns" wait_for 20 reached smoke-1
t1=$(now_ms)
simf set smoke-2 status 1 >/dev/null
wait_for 10 raised smoke-2
t2=$(now_ms)
check "with the platform up, a fire alarm on the full disk arrives within 2 s ($((t2 - t1)) ms)" \
	test $((t2 - t1)) -le 2300 # (poll 100ms + margin for a loaded machine)
check "cgwd is still up" kill -0 "$CGWD_PID"

# ---- 3. room returns -------------------------------------------------------------
rm -f "$ST/filler"
check "the store recovers by itself: /healthz 200" wait_for 20 healthz 200
check "status: ok or at its cap again" bash -c "s=\$('$CTL' -s '$TMP/cgwd.sock' --json status | grep -o '\"state\": *\"[a-z_]*\"' | tail -1); echo \"\$s\" | grep -q '\"ok\"\|\"at_cap\"'"
siml churn 0 >/dev/null
# (the meters report every poll: what was waiting at the recovery drains)
back=$(($(date +%s) * 1000))
check "the outbox drains" wait_for 40 bash -c \
	"[ \"\$(sqlite3 '$ST/cgw.db' 'select count(*) from delivery d join msg m on m.seq = d.seq where m.ts_ms < $back' 2>/dev/null)\" = 0 ]"
starts=$(grep -c "store disk_full\|store memory_only" "$TMP/cgwd.log")
ends=$(grep -c "store writes again" "$TMP/cgwd.log")
flaps=$(grep -c "commit failed\|commits again" "$TMP/cgwd.log")
diag "full-disk log lines: $starts at start, $ends at end, $flaps commit-failed/commits-again"
check "the outage is logged once at its start and once at its end, no flapping" \
	test "$starts" -le 1 -a "$ends" -eq "$starts" -a "$flaps" -eq 0
acked=$(sqlite3 "$ST/cgw.db" "select count(*) from delivery where lane=0" 2>/dev/null)
check "no delivered alarm is left pending (${acked:-?} alarm rows)" test "${acked:-1}" -eq 0

# ---- 4. SIGKILL while the disk is full ---------------------------------------------
for sync in normal full; do
	dev=smoke-3; [ $sync = full ] && dev=smoke-4
	kill -TERM "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
	write_cfg $sync
	start_cgwd
	wait_for 10 test -S "$TMP/cgwd.sock"
	stop_platform
	siml churn 100 >/dev/null
	sleep 1 # some telemetry in flight
	fill
	simf set $dev status 1 >/dev/null
	check "sync $sync: the fire alarm is stored on the full disk" wait_for 10 bash -c \
		"[ \"\$(sqlite3 '$ST/cgw.db' \"select count(*) from msg where lane=0 and device='$dev'\" 2>/dev/null)\" -ge 1 ]"
	kill -KILL "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
	start_cgwd
	check "sync $sync: cgwd restarts on the full disk" wait_for 10 test -S "$TMP/cgwd.sock"
	start_platform
	check "sync $sync: the stored alarm is delivered after the restart" wait_for 20 raised $dev
	siml churn 0 >/dev/null
	rm -f "$ST/filler"
	wait_for 20 healthz 200
done

# ---- 5. a start with the disk already full -------------------------------------------
kill -TERM "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
fill
diag "before the start: $(free_kb) KB free"
start_cgwd
check "cgwd starts on a full disk" wait_for 10 test -S "$TMP/cgwd.sock"
check "cgwd keeps running" bash -c "sleep 1; kill -0 $CGWD_PID"
simf set smoke-5 status 1 >/dev/null
check "a fire alarm raised after a start on a full disk is delivered" wait_for 10 raised smoke-5
diag "state after the full start: $(state)"
rm -f "$ST/filler"
check "and it recovers by itself" wait_for 20 healthz 200

# ---- 6. a first start (no store yet) on a full disk ------------------------------------
kill -TERM "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
umount "$ST"
mount -t tmpfs -o size=1m,mode=0750 cgw-full-disk "$ST"
fill
start_cgwd
check "cgwd starts with no room for a store at all" wait_for 10 test -S "$TMP/cgwd.sock"
check "it says it works from memory" wait_for 5 grep -q "store memory_only" "$TMP/cgwd.log"
simf set smoke-6 status 1 >/dev/null
check "a fire alarm raised then is delivered from memory" wait_for 10 raised smoke-6
rm -f "$ST/filler"
check "room returns: the store file is made, /healthz 200" wait_for 20 healthz 200
# (device states restated once the store writes again may still be in flight)
check "the alarm held in memory is in the store now, delivered" wait_for 10 bash -c \
	"[ \"\$(sqlite3 '$ST/cgw.db' \"select count(*) from msg where device='smoke-6' and topic like '%/alarm'\")\" = 0 ] && [ -s '$ST/cgw.db' ]"
kill -TERM "$CGWD_PID"; wait "$CGWD_PID" 2>/dev/null
umount "$ST" 2>/dev/null
done_testing
