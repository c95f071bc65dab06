/*
 * wire.h - the platform contract in code: every topic, payload, retain flag
 * and id that cgwd puts on the wire, in one place (docs/protocol.md and
 * schema/ describe the same; change them together).
 *
 * Pure: no I/O, no clock of its own, no store. The core and the alarm engine
 * hand it what happened; it renders a struct wire_msg (topic suffix, lane,
 * JSON payload without "id") that the core stores in the outbox. Uplinks only
 * transport: at send time wire_render() adds "id" (and "delayed"), and
 * wire_retained() says whether a topic is retained. The birth and will
 * messages are not stored: the MQTT uplink renders them at each connect with
 * ids it reserved (store_reserve_ids()).
 *
 * Topics are suffixes under the uplink's prefix P (wire_prefix()):
 *   status                   retained  birth / will / bye (kind status)
 *   status/event             -         gateway notices (store evicting, alarm flood)
 *   device/{id}/state        retained  device online/offline with since
 *   device/{id}/telemetry    -         one device's readings of one poll cycle
 *   device/{id}/event        -         a thing that happened (card swipe)
 *   device/{id}/alarm        -         an alarm change
 *   cmd/{id}                 (in)      commands for device {id}
 *   cmd                      (in)      gateway commands (rebirth)
 *   cmd/{id}/result          -         the result of a device command
 *   result                   -         the result of a gateway command
 * Ids in topics (gateway, site, device) pass wire_id_valid(): config rejects
 * any other at load time, so nothing is escaped at run time.
 *
 * Ownership: a wire_msg owns its payload (wire_msg_clear()); `device` is
 * borrowed from the configuration.
 */
#ifndef CGW_WIRE_H
#define CGW_WIRE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "model.h"

/* The protocol version in the birth message. Within a version fields and
 * enum values may be added (consumers ignore what they do not know); a
 * removal, rename or change of type or meaning takes a new version. */
#define WIRE_PROTOCOL 1
#define WIRE_TOPIC_MAX 160
#define WIRE_ID_MAX 64

struct alarm_change;

struct wire_msg {
	enum cgw_lane lane;
	const char *device; /* NULL for gateway-level messages */
	char topic[WIRE_TOPIC_MAX];
	int64_t ts_ms;
	char *payload; /* JSON object without "id"; malloc'd */
};
void wire_msg_clear(struct wire_msg *m);

/* An id that may go into a topic and a message id: 1..64 of [A-Za-z0-9._-],
 * not "." or "..". Used by config for gateway.id, gateway.site, device ids. */
bool wire_id_valid(const char *id);

/* The one value-to-JSON of the product (new reference): enum points as their
 * word, bool as true/false, integers exactly (uint64 above 2^63-1 as a number
 * with 15 significant digits), floats with the digits the point carries
 * (float32: 7), NaN/inf as null, strings (bytes that are not UTF-8 become
 * '?'). pt may be NULL. v may be NULL (null). */
json_t *wire_value_json(const struct cfg_point *pt, const struct cgw_value *v);
/* A JSON string even from bytes that are not UTF-8; NULL gives null. */
json_t *wire_str(const char *s);
/* The text json_dumps() writes for wire_value_json()'s value, byte for
 * byte, without building it (the telemetry path renders every reading).
 * Like snprintf: returns the length of the whole text; it was cut (and
 * buf is NUL-terminated) when that is >= size. */
size_t wire_value_text(const struct cfg_point *pt, const struct cgw_value *v, char *buf,
		       size_t size);

/* One point of a telemetry message: its value as JSON text
 * (wire_value_text(), or "null") and, when not good, its quality name. */
struct wire_field {
	const char *name;
	const char *json;
	const char *quality; /* NULL: good */
};

/* ---- payloads: 0, -ENOMEM or -EINVAL; *out filled on success ---- */
int wire_device_state(const struct cgw_config *cfg, uint32_t dev, bool online, int64_t since_ms,
		      int64_t ts_ms, struct wire_msg *out);
/* One device's readings of one cycle: values {point: json} in the order
 * given, quality {point: "bad"|"stale"} when any is not good. Written as
 * text (no JSON tree): the same bytes json_dumps() gives the same object. */
int wire_telemetry(const struct cfg_device *d, int64_t ts_ms, const struct wire_field *f, size_t n,
		   struct wire_msg *out);
int wire_event(const struct cgw_config *cfg, uint32_t dev, const struct cfg_point *pt,
	       const struct cgw_value *v, uint32_t suppressed, int64_t ts_ms, struct wire_msg *out);
int wire_alarm(const struct cgw_config *cfg, const struct alarm_change *c, struct wire_msg *out);
/* A gateway notice on status/event: {"ts", "event", ...fields}; fields
 * (may be NULL) is consumed. */
int wire_notice(const char *event, int64_t ts_ms, json_t *fields, struct wire_msg *out);

/* The command result object (new reference): {"ts", "device" (absent for a
 * gateway command), "command_id", "result", "detail"?, "first"?, ...extra}
 * (schema/command-result.json).
 * result is ok | rejected | failed | duplicate; rejected and failed carry a
 * detail (the reason); duplicate carries "first": the first execution's
 * {"result", "detail"?}. extra (may be NULL) is consumed. */
struct wire_result {
	const char *device; /* NULL: a gateway command */
	const char *command_id;
	const char *result;
	const char *detail;
	const char *first_result; /* duplicate: what the first execution gave */
	const char *first_detail;
	int64_t first_ts_ms; /* when it was first seen; 0: not given */
	json_t *extra;       /* e.g. point, value, quality, value_ts of a read */
	int64_t ts_ms;
};
json_t *wire_command_result(const struct wire_result *r);
/* The message for a result object (borrowed): cmd/{device}/result, or
 * result for a gateway command (device NULL). Results travel in the event
 * lane; those for a device that is not configured (known false; its name
 * passed wire_id_valid()) in the telemetry lane, behind everything else, so
 * that a flood of them never delays a real result. */
int wire_command_result_msg(const char *device, bool known, json_t *result, int64_t ts_ms,
			    struct wire_msg *out);

/* ---- status (birth, will, bye): complete payloads with "id" ---- */
/* state "online" (birth: with protocol, gateway, site) or "offline" (will,
 * and the bye of a clean stop with reason "stopped"). session grows at every
 * start and connect; the will and the birth of one connection carry the same
 * session. malloc'd, NULL on ENOMEM. */
char *wire_status(const struct cgw_config *cfg, bool online, uint64_t seq, uint64_t session,
		  int64_t ts_ms, const char *reason);

/* ---- transport helpers ---- */
/* The stored payload as sent: "id":"{gateway}:{seq}" first, and
 * "delayed":true when it was produced more than late_after_ms before now.
 * malloc'd; NULL if the payload is not a JSON object or on ENOMEM. */
char *wire_render(const char *gateway, uint64_t seq, const char *payload, int64_t ts_ms,
		  int64_t now_ms, int64_t late_after_ms);
/* Whether a message on this topic suffix is published retained. */
bool wire_retained(const char *topic);
/* topic_prefix with {site} and {gateway} filled in, without a trailing '/';
 * malloc'd. */
char *wire_prefix(const struct cgw_config *cfg, const char *topic_prefix);
/* Topic suffixes cgwd subscribes to for commands ("cmd/+" and "cmd"). */
#define WIRE_SUB_DEVICE_COMMANDS "cmd/+"
#define WIRE_SUB_GATEWAY_COMMANDS "cmd"
/* For an incoming command topic suffix ("cmd/x" or "cmd"): 1 and *device
 * set (NULL for a gateway command) when it is one, else 0. */
int wire_command_topic(const char *suffix, const char **device);

#endif
