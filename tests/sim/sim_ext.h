/*
 * sim_ext.h - the simulator's MQTT devices and scripted scenarios, beside
 * the Modbus module (sim.h).
 */
#ifndef CGW_SIM_EXT_H
#define CGW_SIM_EXT_H

#include <stdio.h>

#include "config.h"

/* ---- sim_mqtt.c: devices on mqtt buses publish to their broker ---- */
struct sim_mqtt;
/* Connects to the broker of every mqtt bus that has devices (reconnecting by
 * itself). 0 and *out (NULL when there is no mqtt bus), or a negative errno. */
int sim_mqtt_start(const struct cgw_config *cfg, struct sim_mqtt **out);
void sim_mqtt_stop(struct sim_mqtt *m);
/*
 *   publish DEVICE SUBTOPIC PAYLOAD...   publish PAYLOAD (the rest of the line)
 *                                        on DEVICE's topic + "/" + SUBTOPIC, QoS 1
 *   publish-raw DEVICE SUBTOPIC HEX      publish bytes given in hex (binary junk)
 * One reply line; -ENOENT when the verb or the device is not an MQTT one.
 * argv[] is the whitespace-split line; `line` is the whole original line.
 */
int sim_mqtt_command(struct sim_mqtt *m, int argc, char **argv, const char *line, FILE *out);

/* ---- sim_scenario.c: a scenario file plays incidents on a timeline ---- */
/*
 * scenario: NAME
 * repeat: 2m            # start over after this long (optional)
 * steps:
 *   - {at: 0s, do: "set station-b3 hydrant_pressure 0.35"}
 *   - {every: 10s, do: "publish locker-1 status {\"mains\": true}"}
 *   - {at: 20s, do: "set smoke-b3-3f-01 status 1", say: "fire alarm in building 3"}
 * Every `do` is a simulator command line, run as if typed on the control
 * channel; `say` is printed to stderr when the step runs (the demo's
 * narration).
 */
typedef void (*sim_exec_fn)(void *arg, const char *line);
struct sim_scenario;
/* Loads and starts it in a thread; `speed` > 1 plays it faster. */
int sim_scenario_start(const char *path, double speed, sim_exec_fn exec, void *arg,
		       struct sim_scenario **out);
void sim_scenario_stop(struct sim_scenario *s);

#endif
