/*
 * core.h - the running daemon: configuration, store, queue, drivers, alarm
 * engine and uplinks, all driven from the one core loop.
 *
 * Ownership: core_new() takes the configuration (also on failure); a
 * successful core_reload() takes the new one and frees the old one.
 */
#ifndef CGW_CORE_H
#define CGW_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "config.h"
#include "loop.h"

struct core;

int core_new(struct cgw_config *cfg, struct loop *l, struct core **out);
void core_free(struct core *c);
int core_reload(struct core *c, struct cgw_config *cfg);
const struct cgw_config *core_config(const struct core *c);
bool core_healthy(const struct core *c);
void core_status_line(const struct core *c, char *buf, size_t len);

/* A command (JSON: {"id":..., "action": "ack"|"read"|"write", ...}) for a
 * device, from `source` ("mqtt:platform", "cgwctl"). Executed once per
 * (source, id); recorded in the audit; the result goes out on
 * P/cmd/{device}/result. */
void core_command(struct core *c, const char *source, const char *device, const char *payload,
		  size_t len);

/* `cgwd --check-config -v`: the Modbus request plan of every bus. */
void core_print_plan(const struct cgw_config *cfg, FILE *f);

#endif
