/*
 * latest.h - the latest value of every (device, point), in memory, with
 * what has changed since it was last written down.
 *
 * The store keeps the `latest` table's rows here and writes them behind
 * (store.h says when): a reading changes one entry in memory, not a row per
 * reading in a transaction of its own, and the rows written down are those
 * that changed, in key order, so one page of the table is written once for
 * many points.
 *
 * Pure data structure: no SQLite, no clock (callers pass mono_ms), no
 * threads. Device ids and point names are interned: one copy of each, kept
 * until latest_free().
 *
 * Ownership: latest_set() copies the value (a string is duplicated). The
 * entries returned by latest_get() and latest_collect() belong to the map;
 * an entry never moves, so a pointer to it stays valid until latest_free()
 * (its value changes with each latest_set() of its key).
 *
 * Bounds: at most `max_entries` entries; latest_set() of a new key beyond
 * that returns -ENOSPC and changes nothing (the caller writes that value
 * through and remembers the map is no longer complete).
 */
#ifndef CGW_LATEST_H
#define CGW_LATEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

struct latest_entry {
	const char *device, *point; /* interned */
	struct cgw_value value;     /* owned */
	int64_t ts_ms;
	uint32_t hash;   /* of the key (the map's) */
	uint8_t quality; /* enum cgw_quality */
	bool dirty;      /* changed since it was last written down */
};

struct latest;

/* 0, -EINVAL (max_entries 0), -ENOMEM. */
int latest_new(size_t max_entries, struct latest **out);
void latest_free(struct latest *m); /* NULL is fine */

/* Sets the entry of (device, point). dirty: the value is new (it must be
 * written down); false when it was read from the table. 0, -EINVAL, -ENOMEM,
 * -ENOSPC (a new key and the map is full). */
int latest_set(struct latest *m, const char *device, const char *point, const struct cgw_value *v,
	       enum cgw_quality q, int64_t ts_ms, bool dirty);
/* The entry, or NULL. */
const struct latest_entry *latest_get(const struct latest *m, const char *device,
				      const char *point);
/* The entry's current value was written down: not dirty any more. */
void latest_written(struct latest *m, const struct latest_entry *e);

/* Every entry is to be written down again (a batch that held some of them
 * was rolled back). */
void latest_redirty(struct latest *m);

size_t latest_count(const struct latest *m);
size_t latest_dirty_count(const struct latest *m);

/* Fills *out (malloc'd, the caller frees it) with the entries of `device`
 * (all if NULL; dirty ones only if dirty_only) ordered by (device, point),
 * byte-wise as SQLite's BINARY collation orders the table's key. *n is
 * their number. 0 or -ENOMEM. */
int latest_collect(const struct latest *m, const char *device, bool dirty_only,
		   const struct latest_entry ***out, size_t *n);

#endif
