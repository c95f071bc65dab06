#!/usr/bin/env bash
# make run: the demo community. Starts a local mosquitto (unless one already
# answers on the demo port), the simulator playing 9 devices with scripted
# incidents (Modbus RTU over a socat pseudo-terminal pair, Modbus TCP, MQTT),
# and cgwd in the foreground. Ctrl-C stops everything.
set -eu
B=$(cd "${1:-build}" && pwd)
TOP=$(cd "$(dirname "$0")/../.." && pwd)
cd "$TOP"
DIR=$B/demo
MQPORT=${DEMO_MQTT_PORT:-1883}
MBPORT=${DEMO_MODBUS_PORT:-15020}
METRICSPORT=${DEMO_METRICS_PORT:-9273}
export CGW_PROFILES_DIR=$TOP/config/profiles
mkdir -p "$DIR"
# one demo at a time: a second `make run` must not delete the running one's
# store (the lock is held by this shell and its children until they exit)
exec 9>"$DIR/demo.lock"
if ! flock -n 9; then
	echo "demo: a demo is already running from $DIR (its data is left alone); stop it first"
	exit 1
fi
# a fresh community each time: alarms latched in an earlier run (never
# acknowledged) would otherwise stay active and the fire would not be new
rm -rf "$DIR/state"
mkdir -p "$DIR/sim" "$DIR/state"
pids=()
cleanup() {
	trap - EXIT INT TERM
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { for _ in $(seq 100); do "$@" && return 0; sleep 0.05; done; return 1; }

if port_open "$MQPORT"; then
	echo "demo: using the MQTT broker already on 127.0.0.1:$MQPORT"
else
	printf 'listener %s 127.0.0.1\nallow_anonymous true\nuser root\n' "$MQPORT" >"$DIR/mosquitto.conf"
	mosquitto -c "$DIR/mosquitto.conf" >"$DIR/mosquitto.log" 2>&1 &
	pids+=($!)
	wait_for port_open "$MQPORT" || { echo "demo: mosquitto did not start (see $DIR/mosquitto.log)"; exit 1; }
fi
if port_open "$MBPORT"; then
	echo "demo: port $MBPORT is taken; set DEMO_MODBUS_PORT to a free port"
	exit 1
fi

# the RS-485 line: a pseudo-terminal pair
rm -f "$DIR/ttyGW" "$DIR/ttySIM"
socat pty,raw,echo=0,link="$DIR/ttyGW" pty,raw,echo=0,link="$DIR/ttySIM" 2>"$DIR/socat.log" &
pids+=($!)
wait_for test -e "$DIR/ttyGW" -a -e "$DIR/ttySIM"

fill() { sed -e "s|@DIR@|$DIR|g" -e "s|@MQPORT@|$MQPORT|g" -e "s|@MBPORT@|$MBPORT|g" -e "s|@METRICSPORT@|$METRICSPORT|g" "$@"; }
fill config/demo/cgw.yaml >"$DIR/cgw.yaml"
fill config/demo/devices.yaml >"$DIR/devices.yaml"
fill config/demo/sim.yaml >"$DIR/sim/sim.yaml"
fill config/demo/devices.yaml | sed "s|$DIR/ttyGW|$DIR/ttySIM|" >"$DIR/sim/devices.yaml"

"$B/cgw-sim" -c "$DIR/sim/sim.yaml" --scenario config/demo/scenario.yaml \
	--control "$DIR/sim.sock" </dev/null 2>"$DIR/sim.log" >/dev/null &
pids+=($!)
wait_for test -S "$DIR/sim.sock" || { echo "demo: the simulator did not start (see $DIR/sim.log)"; exit 1; }

cat <<TXT

  cgw demo: 9 simulated devices of 向阳花园 (smoke detectors on RS-485, a fire
  station, a door module, a camera relay over Modbus TCP; a parcel locker, an
  access controller and an NVR over MQTT) report to cgwd, which delivers to the
  broker on 127.0.0.1:$MQPORT. In another terminal, watch what the platform gets:

      mosquitto_sub -p $MQPORT -v -t 'cgw/#'

  Within a minute: telemetry, card and parcel events, then a fire alarm at 20 s
  ("3号楼3层东侧楼梯间烟感 烟感报警"), low hydrant pressure, a forced door, an invalid
  card, a forced locker, an intrusion, a detector going offline; conditions
  clear at ~95 s and the story repeats every 2 minutes. Latched alarms (the
  fire, the forced door) stay active until someone acknowledges them:

      $B/cgwctl -s $DIR/cgwd.sock status      (and: devices, alarms, queue)
      $B/cgwctl -s $DIR/cgwd.sock ack smoke-b3-3f-01/smoke
      curl -s http://127.0.0.1:$METRICSPORT/metrics | grep cgw_alarms_active

  The simulator narrates on $DIR/sim.log. Ctrl-C stops the demo.

TXT
"$B/cgwd" -c "$DIR/cgw.yaml" --foreground &
pids+=($!)
wait "${pids[-1]}"
