/*
 * model.h - the data model shared by drivers, the alarm engine, the store and
 * the uplinks.
 *
 * Ownership: a struct cgw_value of type CGW_V_STRING owns its `s` (heap,
 * NUL-terminated); cgw_value_clear() frees it. Everything else is plain data.
 * Readings refer to devices and points by index into the configuration the
 * driver was opened with (struct cgw_config); a driver kept running across a
 * reload keeps its configuration and queue, and the core maps its indexes to
 * the running configuration's (see core.h), so an index is never read
 * against the wrong config.
 */
#ifndef CGW_MODEL_H
#define CGW_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Point value types, as written in profiles (`type:`). */
enum cgw_ptype {
	CGW_T_BOOL,
	CGW_T_INT16,
	CGW_T_UINT16,
	CGW_T_INT32,
	CGW_T_UINT32,
	CGW_T_INT64,
	CGW_T_UINT64,
	CGW_T_FLOAT32,
	CGW_T_FLOAT64,
	CGW_T_STRING, /* string:N, N bytes = ceil(N/2) registers */
	CGW_T_BITS,   /* a 16-bit register as a bit field (uint) */
	CGW_T_NUMBER, /* MQTT only: any JSON number, as double */
};

/* Word/byte order of multi-register values: A is the most significant byte
 * on the wire. ABCD = big endian (Modbus default); CDAB = word swapped;
 * BADC = byte swapped within words; DCBA = little endian. For 64-bit values
 * the same rule extends to eight bytes (ABCDEFGH, GHEFCDAB, BADCFEHG,
 * HGFEDCBA). */
enum cgw_order { CGW_ORDER_ABCD, CGW_ORDER_CDAB, CGW_ORDER_BADC, CGW_ORDER_DCBA };

/* Modbus tables. */
enum cgw_table { CGW_TBL_COIL, CGW_TBL_DISCRETE, CGW_TBL_INPUT, CGW_TBL_HOLDING };

/* A decoded value. */
enum cgw_vtype { CGW_V_NONE, CGW_V_BOOL, CGW_V_INT, CGW_V_UINT, CGW_V_DOUBLE, CGW_V_STRING };

struct cgw_value {
	enum cgw_vtype type;
	union {
		bool b;
		int64_t i;
		uint64_t u;
		double d;
		char *s;
	};
};

enum cgw_quality {
	CGW_Q_GOOD,
	CGW_Q_BAD,   /* the device answered but the value is unusable (NaN, bad enum) */
	CGW_Q_STALE, /* the device could not be read; the last value is old */
};

/* Outbox lanes, in delivery priority order. */
enum cgw_lane {
	CGW_LANE_ALARM,
	CGW_LANE_EVENT,
	CGW_LANE_STATUS,
	CGW_LANE_TELEMETRY,
	CGW_LANE_COUNT
};

/* What a driver hands to the core. */
enum cgw_item_kind {
	CGW_ITEM_READING,      /* a polled/received value of a point */
	CGW_ITEM_EVENT,        /* something that happened (card swipe, parcel picked up) */
	CGW_ITEM_DEVICE_STATE, /* device went online/offline */
	CGW_ITEM_WRITE_RESULT, /* outcome of a write: token, result (0 or -errno), detail */
	CGW_ITEM_CYCLE_END,    /* the device's poll cycle is complete (after its last reading) */
	CGW_ITEM_COMMISSION_RESULT, /* outcome of a scan/probe: token, result, JSON text */
};

struct cgw_item {
	enum cgw_item_kind kind;
	uint32_t device; /* index into cfg->devices */
	uint32_t point;  /* index into the device's profile points (READING/EVENT) */
	enum cgw_quality quality;
	bool online;            /* DEVICE_STATE */
	int64_t ts_ms;          /* source timestamp, ms since the epoch (UTC) */
	struct cgw_value value; /* READING/EVENT; WRITE_RESULT: detail text or NONE */
	uint64_t token;         /* WRITE_RESULT: the token given to the write */
	int result;             /* WRITE_RESULT: 0 or a negative errno */
	uint32_t suppressed; /* EVENT: events of the point held back since the last (rate_limit) */
	/* READING: part of a poll cycle that a CGW_ITEM_CYCLE_END of the same
	 * device will close (Modbus): the core gathers the device's readings
	 * until then into one telemetry message. Readings without it (MQTT)
	 * are gathered per drain of the queue. */
	bool in_cycle;
};

static inline void cgw_value_clear(struct cgw_value *v)
{
	if (v->type == CGW_V_STRING)
		free(v->s);
	v->type = CGW_V_NONE;
}

/* Whether b differs from a beyond `deadband` (numbers) or at all (others). */
bool cgw_value_changed(const struct cgw_value *a, const struct cgw_value *b, double deadband);
/* A deep copy (strings duplicated); 0 or -ENOMEM (dst then NONE). */
int cgw_value_copy(struct cgw_value *dst, const struct cgw_value *src);
const char *cgw_lane_name(enum cgw_lane lane);
/* v in decimal ("%llu" without printf, for the per-reading paths) into out,
 * which has room for 21 bytes; NUL-terminated; returns the length. */
size_t cgw_u64_text(uint64_t v, char *out);
int cgw_lane_from_name(const char *name); /* -1 if unknown */
const char *cgw_quality_name(enum cgw_quality q);
int64_t cgw_now_ms(void);  /* CLOCK_REALTIME in ms */
int64_t cgw_mono_ms(void); /* CLOCK_MONOTONIC in ms */

#endif
