/*
 * alarm.h - the alarm engine: rules, delays, the ISA-18.2 state machine.
 *
 * A pure module: no I/O, no clock of its own, one thread (the core loop).
 * The core feeds it readings, device states and ticks, each with two times:
 *   wall_ms  ms since the epoch, goes into messages (ts, raised_at, alarm_id);
 *   mono_ms  CLOCK_MONOTONIC ms, the only clock used for delays and windows.
 * Every change of an alarm is reported once through the emit callback; the
 * core persists it (store_alarm_put / _delete) and hands it to the wire
 * module (wire_alarm()), which renders the message. The change's `message`
 * says in words what happened: the rule's message for a raise, its
 * clear_message (default: the message followed by 已恢复) for a clear, the
 * message followed by 已确认 / 已屏蔽 / 已解除屏蔽 for the others.
 *
 * States (per device and rule, plus the implicit `offline` rule per device):
 *   normal -> active-unacked            condition held for on_delay (raised)
 *   active-unacked -> active-acked      acknowledged
 *   active-acked -> normal              condition gone for off_delay (cleared)
 *   active-unacked -> cleared-unacked   condition gone before the ack (cleared)
 *   cleared-unacked -> normal           acknowledged
 *   cleared-unacked -> active-unacked   condition back before the ack (raised,
 *                                       same alarm_id: the occurrence goes on)
 * A latched rule does not leave active-unacked when its condition ends; the
 * ack then takes it straight to normal (one change, event acknowledged).
 * An alarm_id names one occurrence, from the raise to normal:
 * "{device}/{rule}/{raised_at_ms}", strictly increasing per device and rule.
 *
 * Conditions: above T (deadband D) is true when v > T and false again when
 * v <= T - D; below T: true when v < T, false when v >= T + D. equals /
 * not_equals compare with the rule's operand: enum points by their word (the
 * core passes the raw integer; a raw value with no word equals no word), bool
 * points by truth, numbers within 1e-9 relative. bit N: bit N of an integer.
 * Readings of bad or stale quality, NaN, or of a type the rule cannot compare
 * are ignored as if they had not come: they neither raise, clear nor restart a
 * delay (a delay already running completes on the last good reading).
 *
 * unless: when a condition becomes true (false -> true while not raised), the
 * rule is excused for this occurrence if a listed point has the value now, or
 * had it within `within` before. A point counts as having had the value until
 * the reading that showed it gone (drivers report changes, not every poll).
 * Readings are taken in the order the core passes them: a door reading
 * processed before an unlock of the same instant is not excused by it.
 *
 * Suppression never loses anything: every transition is emitted; those the
 * platform need not see now carry suppressed = true (the core stores them but
 * does not send them), and the current state is re-reported when the
 * suppression ends if it differs from what was last sent.
 * - Chatter: the 6th raise/clear of one alarm within 60 s is sent with
 *   chattering = true and the count; the following toggles are suppressed
 *   until the alarm has been quiet for 60 s.
 * - Flood (ISA-18.2): more than 10 new alarms in 10 min gateway-wide starts a
 *   flood, fewer than 5 in the trailing 10 min ends it (flood callback, and
 *   alarm_flood_active()). During a flood new minor and warning alarms are
 *   suppressed; critical and major ones are sent with flood = true.
 * - The end of an occurrence the platform has seen is always sent.
 * - Shelving a device: its alarms go on being evaluated and sent, reported
 *   with state "shelved" (shelved = true) so the platform does not annunciate.
 * Fire alarms (profile class fire and severity critical) are never suppressed
 * or shelved: only their own on_delay holds them back.
 *
 * Ownership: the engine borrows cfg, which must outlive it (on a reload the
 * core makes a new engine on the new configuration and carries each device
 * over with alarm_adopt_device(); see core.h). A struct
 * alarm_change and everything it points to is valid during the callback only.
 * Callbacks must not call back into the engine.
 */
#ifndef CGW_ALARM_H
#define CGW_ALARM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "model.h"

#define ALARM_OFFLINE_RULE (-1)       /* rule index of the implicit offline alarm */
#define ALARM_CHATTER_TOGGLES 5       /* more than this many raises/clears ... */
#define ALARM_CHATTER_WINDOW_MS 60000 /* ... within this window: chattering */
#define ALARM_FLOOD_START 10          /* more than this many new alarms ... */
#define ALARM_FLOOD_END 5             /* ... ends when fewer than this ... */
#define ALARM_FLOOD_WINDOW_MS 600000  /* ... within this window */
#define ALARM_MESSAGE_MAX 1024        /* rendered message, bytes with the NUL */
/* What follows the raise text when a rule has no clear_message, and for the
 * other events (the message then says in words what happened). */
#define ALARM_TEXT_CLEARED " 已恢复"
#define ALARM_TEXT_ACKED " 已确认"
#define ALARM_TEXT_SHELVED " 已屏蔽"
#define ALARM_TEXT_UNSHELVED " 已解除屏蔽"

/* The state without shelving (shelving is a flag on top). */
enum alarm_state { ALARM_NORMAL, ALARM_ACTIVE_UNACKED, ALARM_ACTIVE_ACKED, ALARM_CLEARED_UNACKED };

struct alarm_change {
	const char *alarm_id;
	uint32_t device; /* index into cfg->devices */
	const char *device_id;
	int rule;                      /* index into the profile's alarms, or ALARM_OFFLINE_RULE */
	const char *rule_name;         /* "offline" for the implicit one */
	const char *event;             /* raised | cleared | acknowledged | shelved | unshelved;
				   NULL in alarm_foreach() */
	enum alarm_state state;        /* where it stands now */
	bool shelved;                  /* reported as state "shelved" */
	int severity;                  /* enum cfg_severity */
	const struct cgw_value *value; /* last good value of the point, NULL if none */
	int64_t ts_ms;                 /* wall time of the change */
	int64_t raised_at_ms;
	const char *message; /* the rule's template rendered */
	const char *by;      /* who acknowledged / shelved, else NULL */
	const char *note;    /* e.g. "condition ended while cgwd was not running", or NULL */
	bool critical_fire;  /* class fire and severity critical: commit and send first */
	bool latched;        /* the rule latches */
	bool suppressed;     /* store, do not send (chatter / flood) */
	bool chattering;
	unsigned chatter_count; /* raises/clears counted in the chatter episode */
	bool flood;             /* emitted during an alarm flood */
};

typedef void (*alarm_emit_fn)(void *arg, const struct alarm_change *c);
/* A flood started (active) or ended; new_alarms: new alarms counted in it. */
typedef void (*alarm_flood_fn)(void *arg, bool active, unsigned new_alarms, int64_t wall_ms);

struct alarm_engine;

/* 0 and *out, -EINVAL (no cfg or emit), -ENOMEM, -E2BIG (too many rules). */
int alarm_engine_new(const struct cgw_config *cfg, alarm_emit_fn emit, void *arg,
		     struct alarm_engine **out);
void alarm_engine_free(struct alarm_engine *e);
/* Optional; called with the engine's arg. */
void alarm_engine_set_flood_cb(struct alarm_engine *e, alarm_flood_fn fn);

/* A reading of a point (index into the device's profile points). The value
 * is copied where needed; the caller keeps it. O(rules on that point). */
void alarm_on_reading(struct alarm_engine *e, uint32_t dev, uint32_t point,
		      const struct cgw_value *v, enum cgw_quality q, int64_t wall_ms,
		      int64_t mono_ms);
/* The implicit offline alarm (the driver already applied offline_after). */
void alarm_on_device_state(struct alarm_engine *e, uint32_t dev, bool online, int64_t wall_ms,
			   int64_t mono_ms);
/* Completes the delays and windows due at mono_ms. Call it when
 * alarm_next_deadline() is reached (and it does no harm more often). */
void alarm_tick(struct alarm_engine *e, int64_t wall_ms, int64_t mono_ms);
/* The earliest mono ms at which alarm_tick() has something to do, or -1. */
int64_t alarm_next_deadline(const struct alarm_engine *e);

/* Acknowledge by alarm_id, or by "DEVICE/RULE" (the current occurrence).
 * 0, -ENOENT (no such alarm, or it is normal), -EALREADY (already acked). */
int alarm_ack(struct alarm_engine *e, const char *alarm_id_or_device_rule, const char *by,
	      int64_t wall_ms);
/* Shelve or unshelve a device: one change (shelved / unshelved) per alarm of
 * it that is not normal. 0, -ENOENT (no such device), -EALREADY. */
int alarm_shelve(struct alarm_engine *e, uint32_t dev, bool shelve, const char *by,
		 int64_t wall_ms);
bool alarm_device_shelved(const struct alarm_engine *e, uint32_t dev);
bool alarm_flood_active(const struct alarm_engine *e);

/* Persistence: the core stores each change (state + shelved; deletes the
 * record when state is normal) and gives the records back at start, before
 * the first reading. A restored alarm keeps its id and is not raised again;
 * if the first good reading (or device state) shows its condition gone, it
 * clears with note "condition ended while cgwd was not running" (latched
 * unacked alarms stay active until acked). A record with shelved set shelves
 * its device. kept[i] (if kept is not NULL) says whether record i was taken;
 * records not taken (unknown device or rule, state normal, a second record
 * for the same alarm) are the caller's to delete. Returns how many were
 * taken, or -EINVAL. Emits nothing. */
struct alarm_record {
	const char *alarm_id, *device_id, *rule;
	enum alarm_state state;
	int64_t raised_at_ms;
	bool shelved;
};
int alarm_restore(struct alarm_engine *e, const struct alarm_record *r, size_t n, bool *kept);

/* Reload. alarm_adopt_device() carries everything the engine `old` knows
 * about its device `from` over to device `to` of e (a new engine on the new
 * configuration): every alarm's state and id, on/off delays and chatter
 * windows still running (on their original deadlines), the last values,
 * what `unless` points showed, and the device's shelving. The two devices
 * must have the same id and the same profile content (the core checks with
 * cfg_profile_equal()); -EINVAL otherwise, with nothing changed. Emits
 * nothing. alarm_adopt_flood() carries the gateway-wide flood window over.
 * alarm_retire() ends the device's alarms that are not normal (all of them,
 * or only rule_name's) because the configuration no longer has them: each
 * goes to normal with event "cleared" and `note` saying why (sent unless the
 * platform never saw the occurrence), and delays running stop. Returns how
 * many ended, or -EINVAL. */
int alarm_adopt_device(struct alarm_engine *e, uint32_t to, const struct alarm_engine *old,
		       uint32_t from);
void alarm_adopt_flood(struct alarm_engine *e, const struct alarm_engine *old);
int alarm_retire(struct alarm_engine *e, uint32_t dev, const char *rule_name, const char *note,
		 int64_t wall_ms);

/* Alarms in state active-unacked or active-acked (shelved included), of one
 * severity or all (-1). */
size_t alarm_active_count(const struct alarm_engine *e, int severity);
/* Calls fn for every alarm that is not normal, device by device (event NULL,
 * ts_ms = raised_at_ms). For cgwctl alarms and status. */
void alarm_foreach(const struct alarm_engine *e,
		   void (*fn)(void *arg, const struct alarm_change *c), void *arg);

/* "normal", "active-unacked", "active-acked", "cleared-unacked". */
const char *alarm_state_name(enum alarm_state s);
int alarm_state_from_name(const char *name); /* -1 if unknown */

/* Render a message template for device dev and rule (ALARM_OFFLINE_RULE too):
 * {name} {device} {alarm} {value} {unit} {location.KEY}; anything else in
 * braces is copied as is. Always NUL-terminates; truncates on a UTF-8
 * character boundary. Returns the length written. */
size_t alarm_render(const struct cgw_config *cfg, uint32_t dev, int rule, const char *tmpl,
		    const struct cgw_value *v, char *out, size_t size);
/* The enum word of v on an enum point (strings as they are), or NULL. */
const char *alarm_enum_label(const struct cfg_point *pt, const struct cgw_value *v);
/* The value as text: the enum word of an enum point, numbers compactly (57.3,
 * 0.12), true/false. Returns the length written. */
size_t alarm_format_value(const struct cfg_point *pt, const struct cgw_value *v, char *out,
			  size_t size);

#endif
