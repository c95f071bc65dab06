#!/usr/bin/env bash
# The community device profiles end to end, each on the simulator (which
# serves every profile's own register map / topics) through cgwd to the
# platform topics: gas-detector (GB 15322: low/high alarm, fault, 0xFFFF and
# out-of-range concentrations as bad quality), electrical-fire (GB 14287:
# residual current above 300 mA, cable temperature per channel), fire-water-
# level (GB 50974: low/high level, pump fault), sos-button-io and sos-button
# (red emergency / green service, Modbus DI and MQTT), flood-sensor.
. "$(dirname "$0")/../lib.sh"
export CGW_PROFILES_DIR=$TOP/config/profiles
mq=$(free_port); mb=$(free_port)
start_mosquitto "$mq"
mkdir -p "$TMP/state"
cat >"$TMP/devices.yaml" <<Y
buses:
  - {name: io, type: modbus-tcp, host: 127.0.0.1, port: $mb, timeout: 300ms}
  - {name: lan, type: mqtt, url: "mqtt://127.0.0.1:$mq"}
devices:
  - {id: gas-1, name: 食堂厨房可燃气体探测器, profile: gas-detector, bus: io, unit: 1, poll: 100ms}
  - {id: efire-1, name: 3号楼配电间电气火灾探测器, profile: electrical-fire, bus: io, unit: 2, poll: 100ms}
  - {id: pool-1, name: 地下消防水池, profile: fire-water-level, bus: io, unit: 3, poll: 100ms}
  - {id: sos-1, name: 5号楼301室一键呼叫, profile: sos-button-io, bus: io, unit: 4, poll: 100ms}
  - {id: flood-1, name: 地下泵房水浸, profile: flood-sensor, bus: io, unit: 5, poll: 100ms}
  - {id: sos-2, name: 5号楼302室一键呼叫, profile: sos-button, bus: lan, topic: sos/5-302}
Y
printf 'gateway: {id: sim, site: s, state_dir: %s}\ninclude: [devices.yaml]\n' "$TMP" >"$TMP/sim.yaml"
cat >"$TMP/cgw.yaml" <<Y
gateway: {id: gw-c, site: s, state_dir: $TMP/state}
include: [devices.yaml]
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
uplinks: [{name: platform, type: mqtt, url: "mqtt://127.0.0.1:$mq"}]
Y
bg_start "$CGW_BUILD/cgw-sim" -c "$TMP/sim.yaml" --control "$TMP/sim.sock" </dev/null >"$TMP/sim.log" 2>&1
wait_for 5 test -S "$TMP/sim.sock" || not_ok "simulator starts"
sim() { echo "$*" | socat -t 2 - UNIX-CONNECT:"$TMP/sim.sock"; }
# normal life first
sim set gas-1 concentration 0 >/dev/null
sim set gas-1 low_setpoint 25 >/dev/null
sim set gas-1 high_setpoint 50 >/dev/null
sim set efire-1 residual_current 40 >/dev/null
for c in 1 2 3 4; do sim set efire-1 cable_temp_$c 31.5 >/dev/null; done
sim set pool-1 level 3.2 >/dev/null
sim set pool-1 pump_auto true >/dev/null
bg_start mosquitto_sub -p "$mq" -q 1 -v -t 'cgw/#' >"$TMP/sub.txt" 2>/dev/null
bg_start "$CGW_BUILD/cgwd" -c "$TMP/cgw.yaml" -f 2>"$TMP/cgwd.log"
raised() { grep "/device/$1/alarm .*\"alarm\":\"$2\".*\"event\":\"raised\"" "$TMP/sub.txt"; }
has_raised() { raised "$@" >/dev/null; }
says() { raised "$1" "$2" | grep -q "\"severity\":\"$3\".*\"message\":\"$4\""; }
tele() { grep -q "/device/$1/telemetry .*$2" "$TMP/sub.txt"; }
export -f raised has_raised; export TMP
check "the five Modbus devices are online" wait_for 15 bash -c "[ \$(grep -c '/device/[a-z]*-1/state .*\"online\"' '$TMP/sub.txt') -ge 5 ]"

# Order matters: more than 10 new alarms in 10 minutes is an alarm flood
# (ISA-18.2), which holds back new minor ones; every minor alarm here is
# raised among the first 10.
# ---- sos-button-io (Modbus DI)
sim set sos-1 green true >/dev/null
check "sos (DI): green is a service call, minor" wait_for 10 says sos-1 service minor "5号楼301室一键呼叫 服务呼叫"
sim set sos-1 red true >/dev/null
check "sos (DI): red is an emergency, critical" wait_for 10 says sos-1 emergency critical "5号楼301室一键呼叫 紧急呼叫，请立即前往"

# ---- sos-button (MQTT)
sim publish sos-2 press '{"button":"red","ts":1764000000000}' >/dev/null
check "sos (MQTT): red press is an emergency, critical" wait_for 10 says sos-2 emergency critical "5号楼302室一键呼叫 紧急呼叫，请立即前往"
sim publish sos-2 press '{"button":"green"}' >/dev/null
check "sos (MQTT): green press is a service call" wait_for 10 says sos-2 service minor "5号楼302室一键呼叫 服务呼叫"
sim publish sos-2 status '{"battery":12,"tamper":false}' >/dev/null
check "sos (MQTT): battery low" wait_for 10 bash -c "raised sos-2 battery_low | grep -q '呼叫按钮电量低 12%'"
sim publish sos-2 status '{"battery":-1,"tamper":false}' >/dev/null
check "sos (MQTT): battery -1 (unknown) is bad quality" \
	wait_for 10 tele sos-2 '"battery":null.*"quality":{"battery":"bad"}'

# ---- flood-sensor
sim set flood-1 state 1 >/dev/null
check "flood: water detected, major" wait_for 10 says flood-1 flood major "地下泵房水浸 水浸报警，发现积水"
sim set flood-1 state 0 >/dev/null
check "flood: dry again: the alarm clears" wait_for 10 grep -q '/device/flood-1/alarm .*"alarm":"flood".*"event":"cleared"' "$TMP/sub.txt"

# ---- fire-water-level (GB 50974)
check "pool: level in m" wait_for 10 tele pool-1 '"level":3.2'
sim set pool-1 level 0.8 >/dev/null
sim set pool-1 level_state 1 >/dev/null
check "pool: low level, major" wait_for 10 says pool-1 level_low major "地下消防水池 消防水池水位低于低水位"
sim set pool-1 pump_fault true >/dev/null
check "pool: fire pump fault" wait_for 10 says pool-1 pump_fault major "地下消防水池 消防泵故障"
sim set pool-1 level_state 2 >/dev/null
check "pool: high level" wait_for 10 has_raised pool-1 level_high
check "pool: pump in auto: no manual alarm" bash -c "! has_raised pool-1 pump_manual"

# ---- electrical-fire (GB 14287)
sim set efire-1 fault true >/dev/null
check "efire: detector fault" wait_for 10 says efire-1 fault minor "3号楼配电间电气火灾探测器 电气火灾监控探测器故障"
sim set efire-1 residual_current 280 >/dev/null
check "efire: 280 mA reaches the platform" wait_for 10 tele efire-1 '"residual_current":280'
sim set efire-1 residual_current 350 >/dev/null
check "efire: residual current above 300 mA held 2 s: critical" \
	wait_for 15 says efire-1 residual_current critical "3号楼配电间电气火灾探测器 剩余电流超限 350mA"
check "efire: not raised at 280 mA" bash -c "[ \$(raised efire-1 residual_current | wc -l) -eq 1 ]"
sim set efire-1 cable_temp_3 85 >/dev/null
check "efire: cable temperature channel 3 over 70 °C" \
	wait_for 15 says efire-1 cable_temp_3 major "3号楼配电间电气火灾探测器 第3路线缆温度过高 85°C"
check "efire: other channels quiet" bash -c "! has_raised efire-1 cable_temp_1 && ! has_raised efire-1 cable_temp_2"
sim raw efire-1 input 1 0x8000 >/dev/null
check "efire: an open probe (-32768) is bad quality" \
	wait_for 10 tele efire-1 '"cable_temp_1":null.*"quality":{"cable_temp_1":"bad"}'

# ---- gas-detector (GB 15322)
check "gas: concentration in %LEL in telemetry" wait_for 10 tele gas-1 '"low_setpoint":25'
sim set gas-1 concentration 27.5 >/dev/null
sim set gas-1 status 1 >/dev/null
check "gas: low alarm, major, says where and what" wait_for 10 says gas-1 gas_low major "食堂厨房可燃气体探测器 可燃气体浓度达到低限报警值"
check "gas: the concentration reaches the platform" wait_for 10 tele gas-1 '"concentration":27.5'
sim set gas-1 concentration 55 >/dev/null
sim set gas-1 status 2 >/dev/null
check "gas: high alarm, critical" wait_for 10 says gas-1 gas_high critical "食堂厨房可燃气体探测器 可燃气体浓度达到高限报警值，请立即处置"
sim raw gas-1 input 0 0xFFFF >/dev/null
check "gas: 0xFFFF (warming up) is bad quality, never 6553.5 %LEL" \
	wait_for 10 tele gas-1 '"concentration":null.*"quality":{"concentration":"bad"}'
check "gas: no telemetry ever carried 6553.5" bash -c "! grep -q '6553.5' '$TMP/sub.txt'"
sim raw gas-1 input 0 1500 >/dev/null
check "gas: 150 %LEL is outside range [0, 100]: counted" \
	wait_for 10 bash -c "'$CGW_BUILD/cgwctl' -s '$TMP/cgwd.sock' --json status | grep -q '\"values_out_of_range\": *[1-9]'"
check "gas: the out-of-range value is logged once with the device and point" \
	grep -q 'device gas-1: concentration = 150.*outside its range \[0, 100\]' "$TMP/cgwd.log"
check "gas: invalid sentinels counted" \
	bash -c "'$CGW_BUILD/cgwctl' -s '$TMP/cgwd.sock' --json status | grep -q '\"values_invalid\": *[1-9]'"
sim set gas-1 status 3 >/dev/null
check "gas: detector fault" wait_for 10 says gas-1 fault major "食堂厨房可燃气体探测器 可燃气体探测器故障"
sim set gas-1 valve_closed true >/dev/null
check "gas: shut-off valve closed" wait_for 10 has_raised gas-1 valve

done_testing
