#!/usr/bin/env bash
# make soak (not in CI): the demo community at 10x speed for SOAK_MINUTES
# (default 30); cgwd's RSS and open fds are printed at the start and the end,
# and every minute, so a leak shows as a slope.
set -u
B=$(cd "${1:-build}" && pwd)
. "$(dirname "$0")/lib.sh"
cd "$TOP"
MIN=${SOAK_MINUTES:-30}
mq=$(free_port); mb=$(free_port)
D=$TMP/demo
mkdir -p "$D/sim" "$D/state"
start_mosquitto "$mq"
bg_start socat pty,raw,echo=0,link="$D/ttyGW" pty,raw,echo=0,link="$D/ttySIM"
wait_for 5 test -e "$D/ttyGW"
fill() { sed -e "s|@DIR@|$D|g" -e "s|@MQPORT@|$mq|g" -e "s|@MBPORT@|$mb|g" -e "s|@METRICSPORT@|$(free_port)|g" "$@"; }
fill config/demo/cgw.yaml >"$D/cgw.yaml"
fill config/demo/devices.yaml >"$D/devices.yaml"
fill config/demo/sim.yaml >"$D/sim/sim.yaml"
fill config/demo/devices.yaml | sed "s|$D/ttyGW|$D/ttySIM|" >"$D/sim/devices.yaml"
export CGW_PROFILES_DIR=$TOP/config/profiles
bg_start "$B/cgw-sim" -c "$D/sim/sim.yaml" --scenario config/demo/scenario.yaml --speed 10 --churn 20 </dev/null >/dev/null 2>"$D/sim.log"
bg_start "$B/cgwd" -c "$D/cgw.yaml" -f 2>"$D/cgwd.log"
pid=$BG_PID
bg_start mosquitto_sub -p "$mq" -t 'cgw/#' >/dev/null
sample() { echo "$(date +%T) rss_kb=$(awk '/VmRSS/{print $2}' /proc/$pid/status) fds=$(ls /proc/$pid/fd | wc -l)"; }
sleep 5
echo "start: $(sample)"
for m in $(seq "$MIN"); do sleep 60; echo "  min $m: $(sample)"; done
echo "end:   $(sample)"
