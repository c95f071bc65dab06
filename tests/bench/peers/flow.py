#!/usr/bin/env python3
"""Writes the Node-RED flow for the peer benchmark: the same load as cgwd's
(every device of cgw.yaml polled for its 30 holding registers at 1 s), one
JSON message per device per cycle published at QoS 1 to the same broker.

    flow.py CGW_YAML MQTT_PORT > flows.json
It reads only the bus and device lines that tests/bench/peers/peers.sh writes.
"""
import json
import re
import sys

cfg, mqtt_port = sys.argv[1], int(sys.argv[2])
buses, devices = {}, []
for line in open(cfg, encoding="utf-8"):
    m = re.search(r"name: (\S+), type: modbus-tcp, host: ([\d.]+), port: (\d+)", line)
    if m:
        buses[m.group(1)] = (m.group(2), int(m.group(3)))
    m = re.search(r"id: (\S+),.* bus: (\S+), unit: (\d+)", line)
    if m:
        devices.append((m.group(1), m.group(2), int(m.group(3))))

# decoding as the bench profile: u0..u9 uint16, t10..t19 int16 * 0.1,
# f0..f4 float32 CDAB at 20, 22, ...
FUNC = r"""
const r = msg.payload;
if (!Array.isArray(r) || r.length < 30) return null;
const v = {};
for (let i = 0; i < 10; i++) v['u' + i] = r[i];
for (let i = 10; i < 20; i++) { let x = r[i]; if (x > 32767) x -= 65536; v['t' + i] = x / 10; }
const b = Buffer.alloc(4);
for (let i = 0; i < 5; i++) {
  b.writeUInt16BE(r[21 + 2 * i], 0); b.writeUInt16BE(r[20 + 2 * i], 2);
  v['f' + i] = b.readFloatBE(0);
}
msg.topic = 'nodered/bench/device/' + msg.topic + '/telemetry';
msg.payload = JSON.stringify({ts: Date.now(), values: v});
return msg;
"""

nodes = [{"id": "tab", "type": "tab", "label": "bench"}]
nodes.append({"id": "broker", "type": "mqtt-broker", "name": "bench", "broker": "127.0.0.1",
              "port": str(mqtt_port), "clientid": "nodered-bench", "usetls": False,
              "protocolVersion": "4", "keepalive": "60", "cleansession": True,
              "autoUnsubscribe": True})
nodes.append({"id": "fmt", "type": "function", "z": "tab", "name": "to json", "func": FUNC,
              "outputs": 1, "wires": [["out"]]})
nodes.append({"id": "out", "type": "mqtt out", "z": "tab", "name": "", "topic": "", "qos": "1",
              "retain": "false", "broker": "broker", "wires": []})
for name, (host, port) in buses.items():
    nodes.append({"id": "c-" + name, "type": "modbus-client", "name": name, "clienttype": "tcp",
                  "bufferCommands": True, "stateLogEnabled": False, "queueLogEnabled": False,
                  "failureLogEnabled": False, "tcpHost": host, "tcpPort": str(port),
                  "tcpType": "DEFAULT", "unit_id": 1, "commandDelay": 1, "clientTimeout": 1000,
                  "reconnectOnTimeout": True, "reconnectTimeout": 2000,
                  "parallelUnitIdsAllowed": True})
for dev, bus, unit in devices:
    nodes.append({"id": "r-" + dev, "type": "modbus-read", "z": "tab", "name": dev,
                  "topic": dev, "showStatusActivities": False, "logIOActivities": False,
                  "showErrors": False, "unitid": str(unit), "dataType": "HoldingRegister",
                  "adr": "0", "quantity": "30", "rate": "1", "rateUnit": "s",
                  "delayOnStart": False, "startDelayTime": "", "server": "c-" + bus,
                  "useIOFile": False, "ioFile": "", "useIOForPayload": False,
                  "emptyMsgOnFail": False, "wires": [["fmt"], []]})
json.dump(nodes, sys.stdout)
