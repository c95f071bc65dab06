/*
 * store.h - the SQLite store: outbox (store-and-forward), latest values,
 * alarms, dead letters, command audit, quarantine.
 *
 * One SQLite file in WAL mode, one connection, used only by the core loop
 * thread (the store is not thread-safe; nothing else writes the file).
 *
 * Time: calls take the time they need explicitly so tests need no sleeps.
 * `now_ms` is wall-clock ms since the epoch (cgw_now_ms()): it is stored
 * (next_attempt_ms, dead-letter time) and must survive a reboot. `mono_ms` is
 * CLOCK_MONOTONIC ms (cgw_mono_ms()) and only drives the commit timer.
 *
 * Batching: non-alarm messages, latest values, acks, quarantine rows and
 * alarm-table updates go into one open transaction that is committed when it
 * holds `batch_rows` writes, when store_flush() is called (the core arms a
 * timer at store_flush_deadline_ms()), or when an alarm is enqueued: an alarm
 * enqueue commits the pending batch together with the alarm before it
 * returns. The audit calls also commit at once.
 *
 * Durability: "committed" means the COMMIT returned. With sync NORMAL a
 * committed transaction survives a crash of cgwd; with sync FULL it also
 * survives power loss. Because NORMAL may lose the last commits on power
 * loss, a store that was not closed cleanly skips STORE_SEQ_GAP sequence
 * numbers at the next open (NORMAL only), so that an id already sent can
 * never be handed to a different message.
 *
 * Message ids: every stored message gets a `seq` from an AUTOINCREMENT
 * column: it never repeats on this store, even after rows are deleted. The
 * payload given to store_enqueue() is a JSON object without "id"; the uplink
 * adds "id":"{gateway}:{seq}" (and "delayed":true when late) at send time.
 *
 * Delivery: a message is stored once and has one delivery row per uplink
 * registered (store_uplink_register) for its lane. An uplink keeps, per lane,
 * a cursor in memory: the highest seq it has fetched. store_fetch() returns
 * the due rows after the cursor in seq order and stops at the first row
 * whose next attempt is in the future, so per-lane (and so per-device)
 * order is kept. After a RETRY the uplink rewinds that lane's cursor to
 * seq - 1 once nothing later in the lane is in flight; at reconnect it sets
 * every cursor to 0 (that is all the in-flight state there is: none of it is
 * persistent) and may call store_uplink_rearm() to make backed-off rows due
 * at once. Fetch never returns a row that is not committed yet.
 *
 * Outbox figures: the depth and oldest message of every (uplink, lane) are
 * counters kept by the store (updated on enqueue, ack, eviction, expiry and
 * prune, counted once when an uplink is registered), so store_stats() costs
 * microseconds at any backlog.
 *
 * A full disk (see store_state):
 * - size: db + WAL + SHM are counted against max_size; the WAL is
 *   checkpointed after batch commits once it holds 1/16 of the cap (PASSIVE:
 *   it never waits for a reader) and truncated by store_maintain(). From a
 *   4 MB cap (or without one) a worker thread does it on a connection of
 *   its own, so the core loop never waits for a checkpoint's fsyncs; the
 *   core checkpoints itself only when the WAL outgrows its share meanwhile,
 *   or on a full disk. Only the core writes data;
 * - eviction runs in bounded steps (at most ~5 ms, one per 15 ms) from
 *   store_flush() once the data reach ~87% of their budget, ahead of the
 *   ~90% at which a write would have to evict itself; a store opened over
 *   its cap is brought under it by store_open();
 * - floor: when the filesystem's free space falls below min_free, the store
 *   behaves as at its cap at its current size (evicts telemetry to make room,
 *   grows no file), before SQLite meets ENOSPC;
 * - reserve: a file `<path>-reserve` of reserve_size bytes is kept allocated
 *   next to the store; when a commit meets ENOSPC it is given back at once so
 *   that alarms (and alarm state) can still be committed, and it is made
 *   again when room returns;
 * - disk full: after ENOSPC only alarm-lane messages and alarm-table writes
 *   are written; other messages are refused (counted as lost), acks are held
 *   in memory (a held ack hides its row from fetch) and applied later;
 * - memory: an alarm that cannot be committed even then is held in a
 *   bounded in-memory queue (STORE_MEM_ALARMS_MAX) with a seq that no stored
 *   message will ever get; fetch returns it like a stored row and ack clears
 *   it, and it is written to the file when room returns;
 * - recovery: store_flush() probes about once a second while in trouble and,
 *   when the filesystem has room again, applies held acks, stores held
 *   alarms, re-makes the reserve and goes back to ok by itself.
 * A store whose file cannot be written at open (a full disk at start) opens
 * in the memory-only state and works the same way.
 *
 * Errors: functions return 0 or a negative errno; store_errmsg() says why in
 * words. store_open() writes its reason into the caller's buffer.
 */
#ifndef CGW_STORE_H
#define CGW_STORE_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* store_open() failures that need their own message (all negative errnos). */
#define STORE_E_NOTDB (-EILSEQ)          /* the file is not an SQLite database */
#define STORE_E_FOREIGN (-EMEDIUMTYPE)   /* SQLite, but not a cgw store */
#define STORE_E_NEWER (-EPROTONOSUPPORT) /* written by a newer cgwd */
/* Other notable returns: -ENOSPC (cap reached for a non-alarm message, or the
 * disk is full), -EEXIST (duplicate audit command id), -ENOENT (no such row). */

#define STORE_SCHEMA_VERSION 3
#define STORE_APPLICATION_ID 0x43475731 /* "CGW1" */
#define STORE_SEQ_GAP 1000000           /* seqs skipped after an unclean NORMAL close */
#define STORE_MAX_UPLINKS 16
#define STORE_QUARANTINE_MAX_PAYLOAD 1024
#define STORE_BATCH_MS_MAX 50
#define STORE_MEM_ALARMS_MAX 256   /* alarms held in memory at most */
#define STORE_HELD_ACKS_MAX 16384  /* acks held in memory while the disk is full */
#define STORE_PROBE_MS 1000        /* recovery attempts while in trouble */
#define STORE_LATEST_WRITE_MS 30000 /* latest values are written down this late at most */

enum store_state {
	STORE_OK,
	STORE_AT_CAP,      /* evicting at max_size or at the free-space floor */
	STORE_DISK_FULL,   /* a commit met ENOSPC: only alarms are written */
	STORE_MEMORY_ONLY, /* the file cannot be written; alarms held in memory */
};
const char *store_state_name(enum store_state st); /* "ok", "at_cap", ... */

struct store;

struct store_opts {
	bool sync_full;       /* synchronous=FULL (fsync every commit) */
	int64_t max_size;     /* bytes, db + WAL + SHM; 0 = unlimited */
	int64_t min_free;     /* bytes the filesystem keeps free; below: as at the cap; 0 = none */
	int64_t reserve_size; /* bytes of the alarm reserve file; 0 = none */
	int64_t telemetry_retention_ms; /* 0 = keep until delivered or evicted */
	unsigned batch_rows;            /* commit at this many pending writes; 0 = 512
					   (capped lower for a small max_size) */
	unsigned batch_ms;              /* commit deadline after the first write; 0 or >50 = 50 */
	unsigned busy_timeout_ms;       /* 0 = 5000 */
	uint64_t rng_seed;              /* backoff jitter; 0 = from getrandom() */
	size_t latest_max;              /* latest values kept in memory; 0 = 1M (tests) */
};

/* Opens (creating and migrating if needed) the store at `path`. `opts` may be
 * NULL for defaults. On failure returns a negative errno (STORE_E_* for the
 * cases above), writes a one-line reason into err (if errlen > 0) and leaves
 * *out NULL. */
int store_open(struct store **out, const char *path, const struct store_opts *opts, char *err,
	       size_t errlen);
/* Commits the pending batch, marks the store closed cleanly, closes.
 * store_close(NULL) is fine. */
void store_close(struct store *s);
/* Why the last failing call failed (never NULL; owned by the store). */
const char *store_errmsg(const struct store *s);

/* ---- uplinks ---- */
/* Gets or creates the stable id of the uplink `name` and (re)sets which lanes
 * it receives (bit 1<<lane). Messages enqueued afterwards get a delivery row
 * for it. At most STORE_MAX_UPLINKS registered at once. */
int store_uplink_register(struct store *s, const char *name, unsigned lane_mask, int64_t *id);
/* Drops the pending deliveries of every uplink known to the file but not
 * registered since store_open() (call after registering the configuration's
 * uplinks at start and after a reload). Messages left with no delivery are
 * deleted. Commits. */
int store_uplink_prune(struct store *s);
/* Forgets the uplink `name` now (unregisters it and drops its deliveries). */
int store_uplink_remove(struct store *s, const char *name);
/* Makes every backed-off delivery of the uplink due now (e.g. at reconnect).
 * Joins the batch. */
int store_uplink_rearm(struct store *s, int64_t uplink);

/* ---- outbox ---- */
struct store_msg {
	enum cgw_lane lane;
	const char *device;  /* may be NULL (gateway-level messages) */
	const char *topic;   /* topic suffix under the uplink prefix, e.g. "device/x/alarm" */
	int64_t ts_ms;       /* when it was produced (wall clock) */
	const char *payload; /* JSON object, without "id" */
	int64_t uplink;      /* 0: every uplink of the lane; else only this one */
};

/* Stores a message for every registered uplink of its lane. *seq gets its id
 * (0 if no uplink takes that lane: nothing is stored). *committed (may be NULL)
 * says whether it is durable on return: true for an alarm (the call
 * returns after COMMIT returned) unless the alarm had to be held in memory
 * (the disk is full: *seq is still valid and the alarm is delivered like a
 * stored one); for other lanes only when this write completed a batch. A non-alarm message that would take the store above
 * ~90% of max_size first evicts the oldest telemetry, then events, then
 * status (one bounded step); it is refused with -ENOSPC only if the data
 * are still above their budget after it. Alarms use
 * the remaining reserve and are never refused for the cap; if the disk itself
 * is full, an alarm gives up older non-alarm messages inside the file to get
 * in. On any other error the whole pending batch is rolled back (none of it
 * had been reported committed). */
int store_enqueue(struct store *s, const struct store_msg *m, int64_t mono_ms, uint64_t *seq,
		  bool *committed);
/* Commits the pending batch (if any), asks for a deferred WAL checkpoint,
 * and runs one bounded step of retention or eviction when one is due. */
int store_flush(struct store *s);
/* Monotonic ms by which store_flush() must run (<= batch_ms after the
 * batch's first write; 0 = now, when an alarm commit left a WAL checkpoint
 * to do), or -1 if nothing is pending. */
int64_t store_flush_deadline_ms(const struct store *s);
/* Writes waiting in the open batch. */
unsigned store_pending(const struct store *s);

/* One fetched message. The store allocates the strings (one block); free
 * with store_items_clear(). */
struct store_item {
	uint64_t seq;
	enum cgw_lane lane;
	int64_t ts_ms;
	uint32_t attempts;  /* failed attempts so far */
	const char *device; /* NULL if none */
	const char *topic;
	const char *payload;
	void *buf_;
};

/* Fills up to `max` items of (uplink, lane) with seq > after_seq, in seq
 * order, stopping at the first row not due at now_ms. *n gets the count. */
int store_fetch(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t after_seq, size_t max,
		int64_t now_ms, struct store_item *items, size_t *n);
void store_items_clear(struct store_item *items, size_t n);

enum store_ack_result {
	STORE_ACK_OK,    /* delivered: delete the delivery (and the message when none is left) */
	STORE_ACK_RETRY, /* try again later (backoff, or retry_after_ms) */
	STORE_ACK_ERROR, /* rejected for good: move to dead_letter with `reason`
			    (for the alarm lane it is taken as RETRY: an alarm is
			    never a dead letter) */
};

#define STORE_BACKOFF_BASE_MS 1000
#define STORE_BACKOFF_CAP_MS (5 * 60 * 1000)
#define STORE_RETRY_AFTER_MAX_MS (60 * 60 * 1000) /* a Retry-After is clamped to this */

/* Reports the outcome of one delivery. RETRY: attempts+1 and next attempt at
 * now + random[0, min(cap, base * 2^attempts)] (full jitter), or at
 * now + retry_after_ms when retry_after_ms >= 0 (e.g. HTTP Retry-After).
 * `reason` (ERROR; may be NULL) is kept in the dead letter. Joins the batch,
 * so many acks share one transaction. -ENOENT if there is no such delivery
 * (already acked, or evicted while in flight). */
int store_ack(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t seq,
	      enum store_ack_result result, int64_t retry_after_ms, const char *reason,
	      int64_t now_ms);

/* ---- size cap and retention ---- */
struct store_maint_report {
	uint64_t evicted[CGW_LANE_COUNT]; /* removed for the cap by this call and by
					     enqueues since the previous call */
	uint64_t expired;                 /* telemetry removed for age by this call */
	bool episode_started;             /* the first eviction after a time without: report once */
	bool episode_ended; /* an episode ended: no eviction was needed in this call */
	bool over_cap;      /* still above max_size (only alarms/status left) */
	int64_t size_bytes; /* db + wal after the call */
};
/* Commits the pending batch; deletes telemetry older than the retention
 * (from the head of the lane, in seq order: a message with an odd old ts
 * behind newer ones goes when it reaches the head); evicts telemetry
 * oldest-first, then events, then (only if unavoidable) status - never
 * alarms - down to ~85% of max_size; trims dead_letter, quarantine and audit
 * to their bounds; gives free pages back (incremental_vacuum) and
 * checkpoints and truncates the WAL, so that db + WAL are under max_size on
 * return unless only alarms are left (over_cap). Between calls the WAL may
 * exceed its share by about one batch. `r` may be NULL. Call it every few
 * seconds to a minute. */
int store_maintain(struct store *s, int64_t now_ms, struct store_maint_report *r);

/* ---- stats ---- */
struct store_lane_stats {
	uint64_t depth;
	int64_t oldest_ts_ms; /* ts of the next message to send (lowest seq); -1 if none */
};
struct store_uplink_stats {
	int64_t id;
	char name[64];
	struct store_lane_stats lane[CGW_LANE_COUNT];
};
struct store_stats {
	enum store_state state;
	int64_t db_bytes;                /* page_count * page_size */
	int64_t wal_bytes;               /* WAL file size */
	int64_t shm_bytes;               /* WAL index file size */
	int64_t fs_free_bytes;           /* free space of the filesystem (statvfs); -1 unknown */
	int64_t min_free;                /* the floor */
	int64_t reserve_bytes;           /* alarm reserve held now */
	int64_t reserve_size;            /* what it is when whole */
	uint64_t alarms_in_memory;       /* held in memory now */
	uint64_t alarms_in_memory_total; /* ever held in memory since open */
	uint64_t acks_held;              /* acks waiting for room */
	uint64_t lost[CGW_LANE_COUNT];   /* messages not stored for a full disk, since open */
	uint64_t disk_full_episodes;     /* since open */
	int64_t ckpt_max_us;             /* longest WAL checkpoint since open */
	int64_t max_size;
	uint64_t evicted[CGW_LANE_COUNT]; /* since open */
	uint64_t expired;                 /* since open */
	uint64_t seq_high;                /* highest seq ever handed out */
	uint64_t dead_letters;            /* rows in dead_letter */
	size_t n_uplinks;                 /* registered */
	struct store_uplink_stats uplink[STORE_MAX_UPLINKS];
};
int store_stats(struct store *s, struct store_stats *st);
/* The state alone (no I/O). */
enum store_state store_state(const struct store *s);
/* Why the store is (or last was) in trouble, in words. */
const char *store_trouble(const struct store *s);
/* page_count * page_size + WAL file size. */
int64_t store_size_bytes(struct store *s);

/* ---- latest values ----
 * The latest value of every point is kept in memory (latest.h) and written
 * behind: a value is written down within STORE_LATEST_WRITE_MS (plus the
 * steps of LATEST_STEP_ROWS rows it takes) of its first change since the
 * last write-down, all dirty points in key order, and at store_close(). A
 * crash of cgwd or a power loss can lose the last STORE_LATEST_WRITE_MS of
 * latest values, never a message: every reading is in the outbox anyway.
 * Reads (get, foreach) see every value at once. While the disk is full the
 * values stay in memory and are written when room returns. */
/* Never waits for SQLite unless the map is full (then: joins the batch).
 * The value is copied. */
int store_put_latest(struct store *s, const char *device, const char *point,
		     const struct cgw_value *v, enum cgw_quality q, int64_t ts_ms, int64_t mono_ms);
struct store_latest {
	const char *device, *point; /* valid during a foreach callback only */
	struct cgw_value value;     /* store_get_latest(): the caller owns it (cgw_value_clear) */
	enum cgw_quality quality;
	int64_t ts_ms;
};
/* -ENOENT if the point has no value. */
int store_get_latest(struct store *s, const char *device, const char *point,
		     struct store_latest *out);
/* Calls cb for each latest value (of `device`, or all if NULL), ordered by
 * device and point; the value belongs to the store (do not clear). A non-zero
 * return from cb stops the walk and is returned. */
int store_latest_foreach(struct store *s, const char *device,
			 int (*cb)(void *ctx, const struct store_latest *l), void *ctx);

/* ---- active alarms (for the alarm engine across restarts) ---- */
struct store_alarm {
	const char *alarm_id; /* stable for one occurrence */
	const char *device;
	const char *rule;
	const char *state; /* "active-unacked", ... */
	const char *severity;
	int64_t raised_at_ms;
	int64_t updated_at_ms;
	const char *value_json; /* may be NULL */
	bool latched;
	bool shelved;
	uint64_t last_seq; /* seq of the last message about it */
};
/* Insert or replace by alarm_id; joins the batch (so put before enqueueing the
 * alarm message, and the alarm's commit carries both). */
int store_alarm_put(struct store *s, const struct store_alarm *a);
int store_alarm_delete(struct store *s, const char *alarm_id); /* -ENOENT if absent */
/* Pointers are valid during the callback only. Non-zero from cb stops. */
int store_alarm_foreach(struct store *s, int (*cb)(void *ctx, const struct store_alarm *a),
			void *ctx);

/* ---- command audit ---- */
struct store_audit {
	int64_t ts_ms;
	const char *source;     /* "mqtt:platform", "cgwctl", ... */
	const char *device;     /* may be NULL */
	const char *command_id; /* unique per source */
	const char *action;     /* "ack", "write", ... */
	const char *request_json;
	const char *result; /* "ok", "rejected", "pending", ... */
	const char *detail; /* may be NULL */
};
/* Records a command; commits at once. -EEXIST if (source, command_id) was
 * already recorded (a duplicate command: do not execute it again). Only the
 * newest STORE_AUDIT_KEEP rows are kept. */
#define STORE_AUDIT_KEEP 100000
int store_audit_add(struct store *s, const struct store_audit *a);
/* Sets the outcome of a recorded command; commits. -ENOENT if unknown. */
int store_audit_result(struct store *s, const char *source, const char *command_id,
		       const char *result, const char *detail);

/* ---- command ids (replay protection) ---- */
/* Every command id the core executed (or refused for a device it has) is
 * kept per source: executed ones for STORE_CMDID_RETENTION_MS whatever else
 * happens; refused ones ("rejected") also only the newest
 * STORE_CMDID_REFUSED_KEEP. Commands for unknown devices are not recorded
 * (a flood of them costs nothing here). store_maintain() trims. */
#define STORE_CMDID_RETENTION_MS (7LL * 24 * 3600 * 1000)
#define STORE_CMDID_REFUSED_KEEP 100000
struct store_cmdid {
	int64_t ts_ms;    /* when it was first seen */
	char result[16];  /* "ok", "failed", "rejected", "pending" (a write in flight) */
	char detail[256]; /* "" if none */
};
/* 0: a new id, recorded as "pending" and committed before the call returns,
 * so the caller may execute it. -EEXIST: seen before; *first (may be NULL)
 * says when and with what result. */
int store_cmdid_claim(struct store *s, const char *source, const char *command_id, int64_t now_ms,
		      struct store_cmdid *first);
/* The outcome of a claimed id ("rejected" makes it a refused one). Joins the
 * batch. */
int store_cmdid_result(struct store *s, const char *source, const char *command_id,
		       const char *result, const char *detail);

/* ---- quarantine (malformed MQTT payloads) ---- */
#define STORE_QUARANTINE_KEEP 1000
#define STORE_DEAD_LETTER_KEEP 10000
/* Keeps the first STORE_QUARANTINE_MAX_PAYLOAD bytes of the payload and its
 * real length. Joins the batch. */
int store_quarantine(struct store *s, int64_t ts_ms, const char *bus, const char *device,
		     const char *topic, const char *reason, const void *payload, size_t len,
		     int64_t mono_ms);

/* ---- reading the records back (cgwctl audit / quarantine / dead-letters) ---- */
struct store_col {
	const char *name; /* the column's name */
	int type;         /* SQLITE_INTEGER, SQLITE_TEXT, SQLITE_BLOB or SQLITE_NULL */
	int64_t i;        /* SQLITE_INTEGER */
	const void *p;    /* SQLITE_TEXT (UTF-8 as stored) or SQLITE_BLOB */
	size_t len;
};
/* The newest `limit` (1..1000) rows of `table` ("audit", "quarantine" or
 * "dead_letter"), newest first, one cb per row (pointers valid during the
 * call only; non-zero from cb stops). Costs `limit` rows, not the table:
 * it walks the primary key backwards. 0, -EINVAL, -EIO. */
int store_recent(struct store *s, const char *table, unsigned limit,
		 int (*cb)(void *ctx, const struct store_col *cols, size_t ncols), void *ctx);

/* ---- dead letters ---- */
/* Sends dead letters again (id > 0: that one, else all): each becomes a new
 * message (new seq, same payload and ts) for the uplink that refused it, and
 * leaves the dead-letter table; one whose uplink is gone or no longer takes
 * its lane stays and is counted in *skipped. Commits the pending batch, then
 * the replay, at once. */
int store_dead_letter_replay(struct store *s, int64_t id, uint64_t *replayed, uint64_t *skipped);

/* ---- local alarm history (the console's 历史) ----
 * Every alarm change (raised, acknowledged, cleared, shelved, ...) with who
 * and when, in its own table: telemetry eviction never touches it, and only
 * the newest STORE_HISTORY_KEEP rows are kept (store_maintain). */
#define STORE_HISTORY_KEEP 20000
struct store_history {
	int64_t ts_ms;
	const char *alarm_id, *device, *building /* may be NULL */, *rule, *event, *state,
		*severity, *by /* may be NULL */, *message /* may be NULL */;
};
/* Joins the batch. */
int store_history_add(struct store *s, const struct store_history *h);
struct store_history_filter {
	const char *device, *building, *severity; /* NULL: any */
	int64_t from_ms, to_ms;                   /* [from, to); to 0: no end */
	unsigned limit;                           /* 0: STORE_HISTORY_KEEP */
};
/* Newest first; pointers valid during the callback only; non-zero from cb
 * stops and is returned. */
int store_history_query(struct store *s, const struct store_history_filter *f,
			int (*cb)(void *ctx, const struct store_history *h), void *ctx);

/* Reserves n message ids (seqs) for messages that are not stored (the MQTT
 * birth and will) and, when session is not NULL, increments the persistent
 * session counter (meta "session") and gives its new value. Commits (with
 * the pending batch) before it returns, so an id handed out is never handed
 * out again. *first gets the first of the n ids. */
int store_reserve_ids(struct store *s, unsigned n, uint64_t *first, uint64_t *session);

/* ---- meta key/value ---- */
/* -ENOENT if absent; -ENOSPC if the value does not fit (len includes NUL). */
int store_meta_get(struct store *s, const char *key, char *buf, size_t len);
int store_meta_set(struct store *s, const char *key, const char *value); /* joins the batch */

#endif
