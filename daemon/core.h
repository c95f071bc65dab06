/*
 * core.h - the running daemon: configuration, store, queue, drivers, alarm
 * engine and uplinks, all driven from the one core loop.
 *
 * Ownership: core_new() takes the configuration (also on failure), and so
 * does core_reload() (freed at once on failure; on success the running one
 * is replaced and freed as soon as nothing opened on it runs any more).
 *
 * Reload (SIGHUP) applies the difference, and a failure changes nothing:
 * - Compared object by object (config_diff.h): a bus is kept running when
 *   it is equal (fields, gateway id, the same devices in the same order, each
 *   equal with its profile) and no file it reads changed since it opened; an
 *   uplink when it is equal (fields, gateway id and site) and its files did
 *   not change. Everything else is closed (drivers first), what the drivers
 *   queued is handled on the old configuration, and then opened anew; a
 *   removed uplink's deliveries are dropped (store_uplink_remove). A change
 *   of state_dir or of the store section reopens the store, and then every
 *   bus and uplink starts again (they borrow the store).
 * - Generations: drivers and uplinks borrow the configuration they were
 *   opened with, so a kept one keeps its own (struct gen), and a kept
 *   driver's items, already queued or not, carry device indexes of it. Each
 *   generation has its own queue and a map from its device indexes to the
 *   running configuration's (DEV_NONE: gone, the item is dropped); maps are
 *   composed at every reload, and a generation nothing runs on is freed.
 *   Writes go to a driver with the device's index in its generation.
 * - Alarms: a device with the same id and the same profile content has its
 *   alarm state carried over to the new engine (alarm_adopt_device): states,
 *   ids, acknowledgements, latches, shelving, and on/off delays and chatter
 *   windows still running, on their original schedule; the flood window too.
 *   Alarms of removed devices, and of rules gone from a device's profile, are
 *   cleared first, on the old configuration, with a note saying why. Other
 *   devices are restored from the store as at start.
 * - Device state: the state last told to the platform is kept per device; an
 *   unchanged device on a bus restarted because of a sibling keeps it, and
 *   the restarted driver's report of the same state is not told again (no new
 *   `since`). A changed device starts afresh.
 * - Shelving is persisted (store meta "shelved_devices", with who and when)
 *   and applied at start and to devices not carried over, so a device
 *   shelved with no alarm at all stays shelved across reloads and restarts.
 *   Acknowledgements and latches persist with each alarm (store_alarm).
 * The control socket and metrics listener belong to main.c, which re-binds
 * them when their settings change.
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

/* Commissioning (cgwctl scan / probe) on bus `bus` through its own worker.
 * The reply gets {"result":"ok","scan"|"probe":{..., "bus"}} (a probe's
 * words also as "readings", commission_readings()) or {"result":"failed",
 * "detail"}. 0 if queued; -ENOENT no such bus, -EPROTOTYPE not a Modbus bus,
 * -ENODEV the bus has no device (so no worker), -EBUSY, -EINVAL. */
/* The newest `last` (1..1000) rows of "audit", "quarantine" or
 * "dead_letter", newest first, one object per row with the table's columns
 * (a payload that is not UTF-8 as "hex:..."). NULL on a bad table or a
 * store error. */
json_t *core_records_json(struct core *c, const char *table, unsigned last);

struct driver_commission;
int core_commission(struct core *c, const char *bus, const struct driver_commission *req,
		    core_reply_fn reply, void *arg);

/* What cgwctl status shows of the web console: its URL and its TLS
 * certificate's SHA-256 fingerprint (NULL: none). Copied; url NULL: no
 * console. */
void core_set_console(struct core *c, const char *url, const char *fingerprint);

/* Introspection for cgwctl, metrics and health (new references). */
json_t *
core_status_json(struct core *c); /* uptime, config, buses, uplinks, outbox, store, alarms */
json_t *core_devices_json(struct core *c); /* per device: state, last good read, error counts */
json_t *core_alarms_json(struct core *c);  /* every alarm that is not normal */
json_t *core_queue_json(struct core *c);   /* outbox depth and oldest age per uplink and lane */
/* Sends dead letters (messages an uplink refused for good) again: id > 0
 * that one, else all. 0, or a negative errno (-ENOENT: no such dead letter;
 * -ENODEV: its uplink is gone). */
int core_dead_letter_replay(struct core *c, int64_t id, uint64_t *replayed, uint64_t *skipped);

/* Only name, connected and since of each uplink: no store query, cheap. */
json_t *core_uplinks_json(struct core *c);
/* Shelve or unshelve a device's alarms (maintenance), persisted at once.
 * -ENOENT unknown device, -EALREADY. */
int core_shelve(struct core *c, const char *device, bool shelve, const char *by);

/* Told of every alarm change after it is stored (the console's live board);
 * NULL to stop. One observer. The change is valid during the call only. */
struct alarm_change;
typedef void (*core_alarm_observer_fn)(void *arg, const struct alarm_change *ch);
void core_set_alarm_observer(struct core *c, core_alarm_observer_fn fn, void *arg);
/* The store, for the console's history (may be NULL while it is reopened). */
struct store;
struct store *core_store(struct core *c);

/* `cgwd --check-config -v`: the Modbus request plan of every bus. */
void core_print_plan(const struct cgw_config *cfg, FILE *f);

#endif
