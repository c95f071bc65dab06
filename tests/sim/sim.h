/*
 * sim.h - cgw-sim, the device simulator of the integration tests and the
 * benchmarks.
 *
 * The simulator reads a configuration in the daemon's own format (a cgw.yaml
 * with buses, devices and profiles) and plays the devices: for a modbus-tcp
 * bus it LISTENS on host:port and serves every device of the bus by its unit
 * id; for a modbus-rtu bus it opens the serial device (one end of a socat
 * pty pair in the tests) and answers as every unit on the line; for a
 * modbus-rtu-tcp bus it listens on host:port and answers RTU frames there,
 * each held back for its time on the wire at the bus's baud.
 *
 * It is driven by line commands (stdin, or a UNIX socket with --control);
 * each command gets one reply line: "ok", "error: ...", or the value asked
 * for. sim_main.c owns the control channel and hands each command to the
 * modules in turn; a module answers -ENOENT for a verb or a device that is
 * not its own, so further modules (MQTT devices, scripted scenarios) plug in
 * beside sim_modbus without touching it.
 *
 * Threads: each module runs its own threads; commands arrive on the main
 * thread and the module synchronises internally.
 */
#ifndef CGW_SIM_H
#define CGW_SIM_H

#include <stdbool.h>
#include <stdio.h>

#include "config.h"
#include "model.h"

/* ---- sim_modbus.c: every modbus-rtu/tcp bus of the configuration ---- */

struct sim_modbus;

struct sim_modbus_opts {
	bool strict;    /* start every unit strict (see "strict" below) */
	int churn_pct;  /* every second, this % of each unit's registers changes (benchmarks) */
	bool wire_time; /* modbus-rtu buses too hold each answer for its time on the wire */
};

/* Opens every Modbus bus (listening sockets, serial devices) and starts one
 * thread per bus. The config is borrowed until sim_modbus_stop(). 0, or a
 * negative errno (logged with the bus name). */
int sim_modbus_start(const struct cgw_config *cfg, const struct sim_modbus_opts *opts,
		     struct sim_modbus **out);
/* Stops the threads and frees everything. NULL is fine. */
void sim_modbus_stop(struct sim_modbus *m);

/*
 * One control command, argv[0] the verb. Devices are named by id, points
 * by name; addresses are written as in the profile (address_base applies).
 *   set DEVICE POINT VALUE         encode like the device would (order, scale)
 *   get DEVICE POINT               print the decoded value ("bad" for NaN)
 *   raw DEVICE TABLE ADDR WORD...  store raw registers/bits (e.g. a NaN)
 *   silence DEVICE on|off          stop/resume answering
 *   garbage DEVICE on|off          answer with a corrupt frame (bad CRC on RTU,
 *                                  wrong transaction id on TCP)
 *   exception DEVICE ADDR [CODE]   reads/writes touching ADDR get exception CODE
 *                                  (default 2); "exception DEVICE ADDR off" clears
 *   strict DEVICE on|off           addresses no point covers get exception 2
 *   twice DEVICE on|off            send every answer twice
 *   late DEVICE MS|off             hold every answer back MS ms (past a timeout)
 *   as-unit DEVICE UNIT|off        answer with another unit id (CRC still good)
 *   count DEVICE                   requests the unit received so far
 *   churn PERCENT                  change this % of registers every second
 *   freeze                         TCP buses: never answer the clients connected
 *                                  now (a gateway whose sessions hang); new
 *                                  connections are answered
 * Writes exactly one reply line to out. Returns 0 when handled (even if the
 * reply is an error), -ENOENT when the verb or the device is not Modbus.
 */
int sim_modbus_command(struct sim_modbus *m, int argc, char **argv, FILE *out);

/* ---- helpers shared by the modules (sim_modbus.c) ---- */

/* Parse a command-line value for a point of type t: true/false/on/off for
 * bool, integers (signed or not), decimals, or the text for strings. */
int sim_parse_value(const char *s, enum cgw_ptype t, struct cgw_value *out);
/* Print a value the way the tests compare it: 23.5, -3, true, text. */
void sim_print_value(const struct cgw_value *v, FILE *out);

#endif
