/*
 * gather.h - a device's readings gathered into one telemetry message.
 *
 * A pure module (no I/O, no clock of its own, one thread: the core loop).
 * Readings of one poll cycle (Modbus: `in_cycle`, closed by the driver's
 * cycle end) are gathered until gather_end_cycle() says the cycle is
 * complete, or until GATHER_MAX_MS passed (a driver that stopped mid-cycle).
 * Readings without a cycle (MQTT) are gathered while they arrive together
 * (one drain of the core queue) and are due at the end of the drain.
 *
 * Coalescing: a point read twice before its device's message goes out
 * keeps its latest value (latest wins; a good value also clears the point's
 * earlier bad quality), and the message's ts is the newest of its values'.
 * Readings without a cycle coalesce only within GATHER_SPAN_MS of the
 * message's oldest value (gather_splits() says when to send first), so that
 * a backlog does not merge seconds of history into one message.
 * Only states are gathered; events never are (the core sends each one).
 *
 * Values are kept as JSON text (wire_value_text()), ready for
 * wire_telemetry(): no JSON tree per reading.
 *
 * Ownership: gather_add() copies the value's text; the point name is
 * borrowed and must outlive the gathered value (the running configuration's:
 * the core sends everything gathered before a reload frees it). The fields
 * gather_take() hands out stay valid until the next gather_take() or
 * gather_free(). A device holds memory only while it has something
 * gathered (a few spare arrays are kept for the next ones).
 */
#ifndef CGW_GATHER_H
#define CGW_GATHER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

#define GATHER_MAX_MS 5000  /* a cycle not closed by then goes out as it is */
#define GATHER_SPAN_MS 1000 /* readings without a cycle coalesce within this span */

struct gather;

/* 0 and *out, or -ENOMEM. n_devices: device indexes are 0..n_devices-1. */
int gather_new(size_t n_devices, struct gather **out);
void gather_free(struct gather *g); /* NULL is fine */

/* A point's value read at ts_ms, as JSON text (copied); quality NULL when
 * good, else its name ("bad", "stale"; borrowed: a constant). in_cycle: a
 * cycle end will come. mono_ms: now (CLOCK_MONOTONIC), for the deadline.
 * 0, -EINVAL or -ENOMEM. */
int gather_add(struct gather *g, uint32_t dev, const char *point, const char *json,
	       const char *quality, int64_t ts_ms, bool in_cycle, int64_t mono_ms);
/* Whether a reading without a cycle at ts_ms must not join the device's
 * gathered message (it is more than GATHER_SPAN_MS newer than the message's
 * oldest value): send that message first. */
bool gather_splits(const struct gather *g, uint32_t dev, int64_t ts_ms);
/* The device's cycle is complete: its message is due now. */
void gather_end_cycle(struct gather *g, uint32_t dev);
/* Whether the device has a message due: its cycle ended, or it has no
 * cycle and the drain ended (drain_end), or GATHER_MAX_MS passed. */
bool gather_due(const struct gather *g, uint32_t dev, bool drain_end, int64_t mono_ms);
/* The devices with something gathered (in no particular order); up to max
 * of them into devs. Returns how many there are. */
size_t gather_pending(const struct gather *g, uint32_t *devs, size_t max);
/* Takes the device's gathered values: *fields (one per point, in the order
 * the points were first gathered; see Ownership), *n, *ts_ms (the newest
 * value's). False if nothing is gathered. */
bool gather_take(struct gather *g, uint32_t dev, const struct wire_field **fields, size_t *n,
		 int64_t *ts_ms);
/* The earliest deadline (CLOCK_MONOTONIC ms) of a cycle not ended, or -1. */
int64_t gather_next_deadline(const struct gather *g);

#endif
