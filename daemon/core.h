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

#include <jansson.h>

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

/* The same, and the result object ({"command_id", "result": "ok"|"rejected"|
 * "failed", "detail", ...}) is also given to reply(arg, result) when known;
 * for a write that is after the device answered. The result is borrowed
 * for the call. A caller that goes away first calls core_cancel_replies(). */
typedef void (*core_reply_fn)(void *arg, json_t *result);
void core_command_reply(struct core *c, const char *source, const char *device, const char *payload,
			size_t len, core_reply_fn reply, void *arg);
void core_cancel_replies(struct core *c, void *arg);

/* Introspection for cgwctl, metrics and health (new references). */
json_t *
core_status_json(struct core *c); /* uptime, config, buses, uplinks, outbox, store, alarms */
json_t *core_devices_json(struct core *c); /* per device: state, last good read, error counts */
json_t *core_alarms_json(struct core *c);  /* every alarm that is not normal */
json_t *core_queue_json(struct core *c);   /* outbox depth and oldest age per uplink and lane */
/* Shelve or unshelve a device's alarms (maintenance). -ENOENT unknown device. */
int core_shelve(struct core *c, const char *device, bool shelve, const char *by);

/* `cgwd --check-config -v`: the Modbus request plan of every bus. */
void core_print_plan(const struct cgw_config *cfg, FILE *f);

#endif
