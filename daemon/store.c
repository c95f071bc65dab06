/*
 * store.c - the SQLite store. See store.h for the contract.
 *
 * Layout: a message is one `msg` row (seq AUTOINCREMENT, so a seq is never
 * handed out twice) plus one `delivery` row per uplink that must still send
 * it; msg.pending counts those rows so the last ack deletes the message
 * without a scan. delivery is keyed (uplink, lane, seq) so a fetch is one
 * range scan in seq order.
 *
 * WAL checkpoints are ours, not SQLite's automatic ones: the automatic
 * checkpoint runs inside the COMMIT that crosses the threshold, which would
 * put a checkpoint (and its fsyncs) into an alarm's commit latency. We
 * checkpoint after batch commits and in store_flush()/store_maintain(); an
 * alarm commit only marks the checkpoint as due. With a WAL of 64 pages or
 * more per checkpoint, the checkpoint itself runs on a worker thread with a
 * connection of its own (struct ckpt_worker): the core only asks.
 */
#include "store.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "latest.h"

#define DEFAULT_BATCH_ROWS 512
#define DEFAULT_BUSY_MS 5000
#define PAGE_SIZE 4096
#define WAL_CKPT_PAGES_MAX 256 /* 1 MB: one PASSIVE pass stays ~20 ms on the core loop */
#define WAL_CKPT_PAGES_MIN 4
#define CKPT_WORKER_MIN_PAGES 64 /* caps from 4 MB: checkpoints on the worker */
#define ADMIT_EVERY 32           /* size check every N non-alarm writes */
#define SOFT_PCT 90         /* non-alarm writes stop (or evict) above this % of the data budget */
#define TARGET_PCT 85       /* eviction brings the store down to this % */
#define SHM_EST 32768       /* the WAL index of a WAL kept under 4096 frames */
#define EVICT_CHUNK_MAX 256 /* rows per eviction statement: a few ms */
#define CGW_STR_(x) #x
#define CGW_STR(x) CGW_STR_(x)
#define VACUUM_OVER_PAGES 1024 /* the same, with the file over the cap */
#define VACUUM_STEP_PAGES 128  /* free pages given back per maintenance */
#define EVICT_STEP_MS 5        /* eviction work per step on the core loop */
#define EVICT_GAP_MS \
	15 /* and this long between steps: many enqueues or flushes in one turn evict once */
#define EVICT_AHEAD_PCT 87 /* maintenance evicts from here, ahead of SOFT_PCT */
#define RETENTION_CHUNK 1000
#define RETENTION_STEP_MS 10  /* retention work per call on the core loop */
#define LATEST_STEP_ROWS 256  /* latest rows written down per store_flush() */
#define LATEST_MAX (1u << 20) /* points kept in memory; beyond, written through */
#define NAME_MAX_LEN 63

enum st {
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_INS_MSG,
	ST_INS_DELIV,
	ST_FETCH,
	ST_DEL_DELIV,
	ST_DEL_MSG_LAST,
	ST_DEC_PENDING,
	ST_GET_ATTEMPTS,
	ST_SET_RETRY,
	ST_INS_DEAD,
	ST_PUT_LATEST,
	ST_GET_LATEST,
	ST_PUT_ALARM,
	ST_DEL_ALARM,
	ST_INS_AUDIT,
	ST_UPD_AUDIT,
	ST_INS_CMDID,
	ST_GET_CMDID,
	ST_UPD_CMDID,
	ST_INS_QUAR,
	ST_META_GET,
	ST_META_SET,
	ST_PAGE_COUNT,
	ST_FREELIST,
	ST_UPLINK_IDS,
	ST_LANE_NTH,
	ST_LANE_FRESH,
	ST_EVICT_DELIV,
	ST_EVICT_MSG,
	ST_OLDEST,
	ST_COUNT
};

static const char *const sql_text[ST_COUNT] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	/* The seq is ours (see next_seq()): above anything stored and anything
	 * held in memory; AUTOINCREMENT still records the highest. */
	[ST_INS_MSG] = "INSERT INTO msg(lane, device, topic, ts_ms, payload, pending, seq)"
		       " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
	[ST_INS_DELIV] = "INSERT INTO delivery(uplink, lane, seq) VALUES(?1, ?2, ?3)",
	[ST_FETCH] = "SELECT d.seq, d.attempts, d.next_attempt_ms, m.ts_ms, m.device, m.topic,"
		     " m.payload FROM delivery d JOIN msg m ON m.seq = d.seq"
		     " WHERE d.uplink = ?1 AND d.lane = ?2 AND d.seq > ?3 AND d.seq <= ?4"
		     " ORDER BY d.seq LIMIT ?5",
	[ST_DEL_DELIV] = "DELETE FROM delivery WHERE uplink = ?1 AND lane = ?2 AND seq = ?3",
	[ST_DEL_MSG_LAST] = "DELETE FROM msg WHERE seq = ?1 AND pending <= 1",
	[ST_DEC_PENDING] = "UPDATE msg SET pending = pending - 1 WHERE seq = ?1",
	[ST_GET_ATTEMPTS] =
		"SELECT attempts FROM delivery WHERE uplink = ?1 AND lane = ?2 AND seq = ?3",
	[ST_SET_RETRY] = "UPDATE delivery SET attempts = attempts + 1, next_attempt_ms = ?4"
			 " WHERE uplink = ?1 AND lane = ?2 AND seq = ?3",
	[ST_INS_DEAD] = "INSERT INTO dead_letter(seq, uplink, lane, device, topic, ts_ms, payload,"
			" attempts, reason, failed_at_ms)"
			" SELECT m.seq, d.uplink, m.lane, m.device, m.topic, m.ts_ms, m.payload,"
			" d.attempts + 1, ?4, ?5 FROM delivery d JOIN msg m ON m.seq = d.seq"
			" WHERE d.uplink = ?1 AND d.lane = ?2 AND d.seq = ?3",
	[ST_PUT_LATEST] =
		"INSERT OR REPLACE INTO latest(device, point, vtype, value, quality, ts_ms)"
		" VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
	[ST_GET_LATEST] = "SELECT vtype, value, quality, ts_ms FROM latest"
			  " WHERE device = ?1 AND point = ?2",
	[ST_PUT_ALARM] = "INSERT OR REPLACE INTO alarms(alarm_id, device, rule, state, severity,"
			 " raised_at, updated_at, value, latched, shelved, last_seq)"
			 " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
	[ST_DEL_ALARM] = "DELETE FROM alarms WHERE alarm_id = ?1",
	[ST_INS_AUDIT] = "INSERT INTO audit(ts_ms, source, device, command_id, action, request,"
			 " result, detail) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
	[ST_UPD_AUDIT] = "UPDATE audit SET result = ?3, detail = ?4"
			 " WHERE source = ?1 AND command_id = ?2",
	[ST_INS_CMDID] = "INSERT INTO command_ids(source, command_id, ts_ms, kept, result)"
			 " VALUES(?1, ?2, ?3, 1, 'pending')",
	[ST_GET_CMDID] = "SELECT ts_ms, result, detail FROM command_ids"
			 " WHERE source = ?1 AND command_id = ?2",
	[ST_UPD_CMDID] = "UPDATE command_ids SET result = ?3, detail = ?4, kept = ?5"
			 " WHERE source = ?1 AND command_id = ?2",
	[ST_INS_QUAR] = "INSERT INTO quarantine(ts_ms, bus, device, topic, reason, payload,"
			" payload_len) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
	[ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
	[ST_META_SET] = "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)",
	[ST_PAGE_COUNT] = "PRAGMA page_count",
	[ST_FREELIST] = "PRAGMA freelist_count",
	/* Eviction and retention walk a lane from its head through the
	 * delivery key, so msg needs no index of its own. */
	[ST_UPLINK_IDS] = "SELECT id FROM uplinks ORDER BY id",
	[ST_LANE_NTH] = "SELECT seq FROM delivery WHERE uplink = ?1 AND lane = ?2"
			" ORDER BY seq LIMIT 1 OFFSET ?3",
	[ST_LANE_FRESH] = "SELECT d.seq FROM delivery d JOIN msg m ON m.seq = d.seq"
			  " WHERE d.uplink = ?1 AND d.lane = ?2 AND m.ts_ms >= ?3"
			  " AND d.seq <= ?4 ORDER BY d.seq LIMIT 1",
	[ST_EVICT_MSG] = "DELETE FROM msg WHERE seq IN (SELECT seq FROM delivery"
			 " WHERE uplink IN (SELECT id FROM uplinks) AND lane = ?1 AND seq <= ?2)",
	[ST_EVICT_DELIV] = "DELETE FROM delivery WHERE uplink = ?1 AND lane = ?2 AND seq <= ?3",
	[ST_OLDEST] = "SELECT d.seq, m.ts_ms FROM delivery d JOIN msg m ON m.seq = d.seq"
		      " WHERE d.uplink = ?1 AND d.lane = ?2 ORDER BY d.seq LIMIT 1",
};

/* Forward migrations: migrations[i] takes user_version i to i + 1. Never edit
 * one that has shipped; append. */
static const char *const migrations[] = {
	/* v0 -> v1 */
	"CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;"
	"CREATE TABLE uplinks(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);"
	"CREATE TABLE msg(seq INTEGER PRIMARY KEY AUTOINCREMENT, lane INTEGER NOT NULL,"
	" device TEXT, topic TEXT NOT NULL, ts_ms INTEGER NOT NULL, payload TEXT NOT NULL,"
	" pending INTEGER NOT NULL);"
	"CREATE TABLE delivery(uplink INTEGER NOT NULL, lane INTEGER NOT NULL,"
	" seq INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
	" next_attempt_ms INTEGER NOT NULL DEFAULT 0,"
	" PRIMARY KEY(uplink, lane, seq)) WITHOUT ROWID;"
	"CREATE INDEX delivery_backoff ON delivery(uplink, next_attempt_ms)"
	" WHERE next_attempt_ms > 0;"
	"CREATE TABLE dead_letter(id INTEGER PRIMARY KEY, seq INTEGER NOT NULL,"
	" uplink INTEGER NOT NULL, lane INTEGER NOT NULL, device TEXT, topic TEXT NOT NULL,"
	" ts_ms INTEGER NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL,"
	" reason TEXT, failed_at_ms INTEGER NOT NULL);"
	"CREATE TABLE latest(device TEXT NOT NULL, point TEXT NOT NULL, vtype INTEGER NOT NULL,"
	" value, quality INTEGER NOT NULL, ts_ms INTEGER NOT NULL,"
	" PRIMARY KEY(device, point)) WITHOUT ROWID;"
	"CREATE TABLE audit(id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, source TEXT NOT NULL,"
	" device TEXT, command_id TEXT NOT NULL, action TEXT NOT NULL, request TEXT,"
	" result TEXT, detail TEXT, UNIQUE(source, command_id));"
	"CREATE TABLE quarantine(id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, bus TEXT,"
	" device TEXT, topic TEXT, reason TEXT, payload BLOB, payload_len INTEGER NOT NULL);"
	"CREATE TABLE alarms(alarm_id TEXT PRIMARY KEY, device TEXT NOT NULL, rule TEXT NOT NULL,"
	" state TEXT NOT NULL, severity TEXT NOT NULL, raised_at INTEGER NOT NULL,"
	" updated_at INTEGER NOT NULL, value TEXT, latched INTEGER NOT NULL DEFAULT 0,"
	" shelved INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;",
	/* v1 -> v2: replay protection on its own, kept by age, not by the
	 * audit's row count (a flood of refused commands trimmed the audit and
	 * a replayed write ran again). The audit's history seeds it. */
	"CREATE TABLE command_ids(source TEXT NOT NULL, command_id TEXT NOT NULL,"
	" ts_ms INTEGER NOT NULL, kept INTEGER NOT NULL, result TEXT, detail TEXT,"
	" PRIMARY KEY(source, command_id)) WITHOUT ROWID;"
	"CREATE INDEX command_ids_age ON command_ids(kept, ts_ms);"
	"INSERT OR IGNORE INTO command_ids(source, command_id, ts_ms, kept, result, detail)"
	" SELECT source, command_id, ts_ms, coalesce(result, '') <> 'rejected', result, detail"
	" FROM audit;",
	/* v2 -> v3: the local alarm history (console). No index: the table is
	 * bounded (STORE_HISTORY_KEEP) and read newest first by rowid, and
	 * every page counts against a small store's cap. */
	"CREATE TABLE alarm_history(id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL,"
	" alarm_id TEXT NOT NULL, device TEXT NOT NULL, building TEXT, rule TEXT NOT NULL,"
	" event TEXT NOT NULL, state TEXT NOT NULL, severity TEXT NOT NULL, by_who TEXT,"
	" message TEXT);",
};
#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))
_Static_assert(N_MIGRATIONS == STORE_SCHEMA_VERSION, "one migration per schema version");

/* Depth and head of one (uplink, lane): committed figures plus what the
 * open transaction changed (dropped on rollback). The head is a cache,
 * re-read through the delivery key (one seek) when it was acked or
 * evicted. */
struct lane_cnt {
	int64_t depth, delta;
	uint64_t oldest_seq;
	int64_t oldest_ts;
	bool oldest_ok;
};

struct reg_uplink {
	int64_t id;
	unsigned mask;
	char name[NAME_MAX_LEN + 1];
	struct lane_cnt cnt[CGW_LANE_COUNT];
	int64_t looked_ms[CGW_LANE_COUNT]; /* wall ms of the last query of an empty lane */
};

/* An ack that could not be written (disk full, or its batch rolled back). */
struct held_ack {
	uint64_t seq; /* 0: free slot */
	int64_t uplink;
	int8_t lane;
	int8_t result;
	char *reason;
};

/* An alarm that could not be committed: delivered from memory. */
struct mem_alarm {
	uint64_t seq;
	int64_t ts_ms;
	char *device, *topic, *payload;
	size_t n_owed;
	int64_t owed[STORE_MAX_UPLINKS]; /* uplink ids that still have to send it */
	int64_t next_ms[STORE_MAX_UPLINKS];
	uint32_t attempts[STORE_MAX_UPLINKS];
};

struct store {
	sqlite3 *db;
	char *path;
	char *wal_path;
	sqlite3_stmt *st[ST_COUNT];
	struct store_opts o;
	char err[512];

	bool in_tx;
	unsigned pending;       /* writes in the open transaction */
	int64_t deadline;       /* mono ms by which the open batch must commit */
	uint64_t last_seq;      /* highest seq handed out (maybe not committed) */
	uint64_t committed_seq; /* highest committed seq: fetch never goes beyond */

	int wal_frames; /* WAL frames after the last commit (wal hook) */
	int ckpt_pages; /* checkpoint once the WAL holds this many frames */
	bool ckpt_due;  /* an alarm commit crossed ckpt_pages */
	unsigned admit_countdown;

	struct reg_uplink up[STORE_MAX_UPLINKS];
	size_t n_up;

	uint64_t evicted_total[CGW_LANE_COUNT];
	uint64_t evicted_unreported[CGW_LANE_COUNT];
	uint64_t expired_total;
	uint64_t expired_unreported;
	int64_t expire_cutoff; /* wall ms: telemetry older goes */
	bool expire_more;      /* retention not done yet */
	bool evict_more;       /* above EVICT_AHEAD_PCT: store_flush() evicts */
	int64_t evict_at;      /* mono ms: no eviction step before (one per turn) */
	bool evicting;         /* inside an eviction episode */
	bool episode_new;      /* it started since the last store_maintain() */

	int64_t avg_row_bytes; /* running average cost of one stored message */
	uint64_t rng;
	bool ready; /* opened: close may write the clean mark */

	/* full disk */
	char *reserve_path;
	int reserve_fd;
	int64_t reserve_held;
	bool disk_full;    /* a commit met ENOSPC; left only by a successful probe */
	bool memory_only;  /* the open mark could not be written */
	bool in_memory_db; /* not even the file could be made: an empty one in RAM */
	bool at_floor;     /* free space below min_free at the last look */
	int64_t probe_at;  /* mono ms of the next recovery attempt */
	char trouble[512]; /* why, in words */
	uint64_t lost[CGW_LANE_COUNT];
	uint64_t tx_msgs[CGW_LANE_COUNT]; /* messages in the open batch */
	uint64_t disk_full_episodes;
	int64_t ckpt_max_us;
	struct ckpt_worker *ck; /* checkpoints off the core thread; NULL: inline */
	/* acks of the open batch (to hold if it rolls back), and held acks */
	struct held_ack *tx_acks;
	size_t n_tx_acks, cap_tx_acks;
	struct held_ack *held; /* open addressing, HELD_SLOTS */
	size_t n_held;
	struct mem_alarm mem[STORE_MEM_ALARMS_MAX];
	size_t n_mem;
	uint64_t mem_total;
	uint64_t seq_floor; /* no new message gets a seq at or below this */
	uint64_t session;   /* the gateway session last handed out (0: read meta) */

	/* latest values, written behind (see store.h) */
	struct latest *latest;
	bool latest_partial;            /* the map is not all of the table */
	const struct latest_entry **lw; /* the dirty entries being written, key order */
	size_t lw_n, lw_i;              /* their number, the next one */
	int64_t latest_due;             /* mono ms of the next write-down; -1: none */
	unsigned tx_latest;             /* latest rows in the open batch */
	uint64_t latest_written_total;
};

#define HELD_SLOTS (STORE_HELD_ACKS_MAX * 2)

/* ---------------------------------------------------------------- errors */

static int map_rc(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_DONE:
	case SQLITE_ROW:
		return 0;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	case SQLITE_NOTADB:
		return STORE_E_NOTDB;
	case SQLITE_READONLY:
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_CANTOPEN:
		return -ENOENT;
	case SQLITE_TOOBIG:
		return -EMSGSIZE;
	default:
		return -EIO;
	}
}

__attribute__((format(printf, 2, 3))) static void set_err(struct store *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->err, sizeof(s->err), fmt, ap);
	va_end(ap);
}

/* Records an SQLite failure and returns it as a negative errno. */
static void go_disk_full(struct store *s, const char *why);
struct mem_alarm;
static int mem_owed(const struct mem_alarm *a, int64_t uplink);
static void mem_drop(struct store *s, size_t i);

static int db_fail(struct store *s, const char *what, int rc)
{
	set_err(s, "%s: %s: %s", s->path, what, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
	if (map_rc(rc) == -ENOSPC && s->ready)
		go_disk_full(s, s->err);
	return map_rc(rc);
}

const char *store_errmsg(const struct store *s)
{
	return s ? s->err : "no store";
}

/* ------------------------------------------------------------ statements */

static sqlite3_stmt *stmt(struct store *s, enum st id)
{
	if (!s->st[id]) {
		int rc = sqlite3_prepare_v3(s->db, sql_text[id], -1, SQLITE_PREPARE_PERSISTENT,
					    &s->st[id], NULL);
		if (rc != SQLITE_OK) {
			db_fail(s, "prepare", rc);
			s->st[id] = NULL;
		}
	}
	return s->st[id];
}

/* Steps a statement that returns no rows, resets it. */
static int step_done(struct store *s, sqlite3_stmt *st, const char *what)
{
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		return db_fail(s, what, rc);
	return 0;
}

static int exec(struct store *s, const char *sql)
{
	char *msg = NULL;
	int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
	if (rc != SQLITE_OK) {
		set_err(s, "%s: %s: %s", s->path, sql, msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		if (map_rc(rc) == -ENOSPC && s->ready)
			go_disk_full(s, s->err);
		return map_rc(rc);
	}
	return 0;
}

/* Runs a statement returning one integer (e.g. a PRAGMA); *v untouched if no row. */
static int query_int(struct store *s, const char *sql, int64_t *v)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
	if (rc == SQLITE_OK) {
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			*v = sqlite3_column_int64(st, 0);
			rc = SQLITE_OK;
		} else if (rc == SQLITE_DONE) {
			rc = SQLITE_OK;
		}
	}
	sqlite3_finalize(st);
	return rc == SQLITE_OK ? 0 : db_fail(s, sql, rc);
}

static int cached_int(struct store *s, enum st id, int64_t *v)
{
	sqlite3_stmt *st = stmt(s, id);
	if (!st)
		return -EIO;
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*v = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	return rc == SQLITE_ROW ? 0 : db_fail(s, sql_text[id], rc);
}

static void bind_text(sqlite3_stmt *st, int i, const char *v)
{
	if (v)
		sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

/* -------------------------------------------------------------- counters */

static struct reg_uplink *reg_by_id(struct store *s, int64_t id)
{
	for (size_t i = 0; i < s->n_up; i++)
		if (s->up[i].id == id)
			return &s->up[i];
	return NULL;
}

static void cnt_add(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t seq,
		    int64_t ts_ms)
{
	struct reg_uplink *r = reg_by_id(s, uplink);
	if (!r)
		return;
	struct lane_cnt *c = &r->cnt[lane];
	if (c->depth + c->delta <= 0) {
		c->oldest_seq = seq;
		c->oldest_ts = ts_ms;
		c->oldest_ok = true;
	}
	c->delta++;
}

/* n rows of the lane at or below `upto` left (upto = the one seq for an ack). */
static void cnt_sub(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t upto, int64_t n)
{
	struct reg_uplink *r = reg_by_id(s, uplink);
	if (!r || n <= 0)
		return;
	struct lane_cnt *c = &r->cnt[lane];
	c->delta -= n;
	if (c->oldest_ok && c->oldest_seq <= upto)
		c->oldest_ok = false;
}

static void cnt_settle(struct store *s, bool commit)
{
	for (size_t i = 0; i < s->n_up; i++)
		for (int l = 0; l < CGW_LANE_COUNT; l++) {
			struct lane_cnt *c = &s->up[i].cnt[l];
			if (commit) {
				c->depth += c->delta;
				if (c->depth < 0)
					c->depth = 0;
			} else if (c->delta) {
				c->oldest_ok = false;
			}
			c->delta = 0;
		}
}

/* ------------------------------------------------------------ held acks */

static size_t held_slot(uint64_t seq, int64_t uplink, int lane)
{
	uint64_t h = seq * 0x9E3779B97F4A7C15ULL ^ (uint64_t)uplink * 0xC2B2AE3D27D4EB4FULL ^
		     (uint64_t)lane;
	return (size_t)(h >> 17) % HELD_SLOTS;
}

static struct held_ack *held_find(struct store *s, int64_t uplink, int lane, uint64_t seq)
{
	if (!s->held || !s->n_held)
		return NULL;
	for (size_t i = held_slot(seq, uplink, lane), k = 0; k < HELD_SLOTS;
	     k++, i = (i + 1) % HELD_SLOTS) {
		struct held_ack *h = &s->held[i];
		if (!h->seq)
			return NULL;
		if (h->seq == seq && h->uplink == uplink && h->lane == lane)
			return h;
	}
	return NULL;
}

/* Takes `reason` (malloc'ed or NULL). */
static int held_put(struct store *s, int64_t uplink, int lane, uint64_t seq, int result,
		    char *reason)
{
	struct held_ack *h = held_find(s, uplink, lane, seq);
	if (h) {
		free(h->reason);
		h->result = (int8_t)result;
		h->reason = reason;
		return 0;
	}
	if (!s->held) {
		s->held = calloc(HELD_SLOTS, sizeof(*s->held));
		if (!s->held) {
			free(reason);
			return -ENOMEM;
		}
	}
	if (s->n_held >= STORE_HELD_ACKS_MAX) {
		free(reason);
		return -ENOSPC;
	}
	size_t i = held_slot(seq, uplink, lane);
	while (s->held[i].seq)
		i = (i + 1) % HELD_SLOTS;
	s->held[i] = (struct held_ack){.seq = seq,
				       .uplink = uplink,
				       .lane = (int8_t)lane,
				       .result = (int8_t)result,
				       .reason = reason};
	s->n_held++;
	return 0;
}

static void held_clear(struct store *s)
{
	for (size_t i = 0; s->held && i < HELD_SLOTS; i++)
		free(s->held[i].reason);
	if (s->held)
		memset(s->held, 0, HELD_SLOTS * sizeof(*s->held));
	s->n_held = 0;
}

/* ---------------------------------------------------------- the disk */

static int64_t fs_free(const struct store *s)
{
	struct statvfs v;
	if (statvfs(s->path, &v) < 0)
		return -1;
	return (int64_t)v.f_bavail * (int64_t)v.f_frsize;
}

static int64_t file_size(const char *path)
{
	struct stat sb;
	return path && stat(path, &sb) == 0 ? (int64_t)sb.st_size : 0;
}

/* Makes the reserve whole (when there is room for it). */
static void reserve_make(struct store *s)
{
	if (s->o.reserve_size <= 0 || !s->reserve_path || s->reserve_held >= s->o.reserve_size)
		return;
	if (s->reserve_fd < 0)
		s->reserve_fd = open(s->reserve_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->reserve_fd < 0)
		return;
	if (posix_fallocate(s->reserve_fd, 0, (off_t)s->o.reserve_size) == 0) {
		s->reserve_held = s->o.reserve_size;
	} else {
		if (ftruncate(s->reserve_fd, 0) < 0) {
			/* nothing else to do: it holds what it holds */
		}
		s->reserve_held = 0;
	}
}

/* Gives the reserve back to the filesystem at once. */
static bool reserve_release(struct store *s)
{
	if (s->reserve_held <= 0 || s->reserve_fd < 0)
		return false;
	if (ftruncate(s->reserve_fd, 0) < 0)
		return false;
	s->reserve_held = 0;
	return true;
}

/* Enters the disk-full state (from a commit that met ENOSPC). */
static void go_disk_full(struct store *s, const char *why)
{
	if (!s->disk_full) {
		s->disk_full = true;
		s->disk_full_episodes++;
		snprintf(s->trouble, sizeof(s->trouble), "%s", why);
	}
	s->probe_at = cgw_mono_ms() + STORE_PROBE_MS;
}

/* ---------------------------------------------------------- transactions */

static int wal_hook(void *ctx, sqlite3 *db, const char *name, int frames)
{
	(void)db;
	(void)name;
	((struct store *)ctx)->wal_frames = frames;
	return SQLITE_OK;
}

static int checkpoint(struct store *s, int mode)
{
	int log = 0, done = 0;
	struct timespec t0, t1;
	/* Never wait for a reader here: it is the core loop. The WAL is kept
	 * to 1/16 of the cap (at most 1000 pages), so one PASSIVE pass copies a
	 * bounded number of pages; its time is measured and shown in status. */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	sqlite3_busy_timeout(s->db, 0);
	int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, mode, &log, &done);
	sqlite3_busy_timeout(s->db, (int)s->o.busy_timeout_ms);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	int64_t us = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
	if (us > s->ckpt_max_us)
		s->ckpt_max_us = us;
	s->ckpt_due = false;
	if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
		return 0; /* a reader holds the WAL; next time */
	if (rc != SQLITE_OK) {
		rc = db_fail(s, "checkpoint", rc);
		if (rc == -ENOSPC)
			go_disk_full(s, s->err);
		return rc;
	}
	s->wal_frames = log > done ? log - done : 0;
	return 0;
}

/* The checkpoint worker: a thread with a connection of its own that runs
 * PASSIVE checkpoints, so that their page copies and fsyncs (tens of ms
 * under load) never run on the core loop. SQLite allows a checkpoint from
 * any connection in WAL mode; a PASSIVE one takes no lock a writer needs, so
 * the core's commits go on meanwhile. Only the core writes data: the worker
 * copies committed WAL frames into the database file and nothing else.
 * The core asks (ckpt_request()), the worker coalesces requests, and the core
 * collects the outcome at its next flush or maintenance (ckpt_collect()). */
struct ckpt_worker {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	sqlite3 *db;
	pid_t pid; /* the process that has the thread (not a fork's child) */
	bool want, want_truncate, busy, stop, have;
	int rc, log, done;
	int64_t us;
};

static void *ckpt_main(void *arg)
{
	struct ckpt_worker *w = arg;
	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (!w->want && !w->stop)
			pthread_cond_wait(&w->cv, &w->mu);
		if (w->stop)
			break;
		bool truncate = w->want_truncate;
		w->want = w->want_truncate = false;
		w->busy = true;
		pthread_mutex_unlock(&w->mu);
		int log = 0, done = 0;
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		int rc = sqlite3_wal_checkpoint_v2(w->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log,
						   &done);
		/* The file back to nothing: after the PASSIVE pass copied the
		 * pages, the write lock this takes is held only for the few
		 * frames since and the truncation; busy (the core writing):
		 * next time. */
		if (truncate && rc == SQLITE_OK && log == done)
			rc = sqlite3_wal_checkpoint_v2(w->db, NULL, SQLITE_CHECKPOINT_TRUNCATE,
						       &log, &done);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		pthread_mutex_lock(&w->mu);
		w->busy = false;
		w->have = true;
		pthread_cond_broadcast(&w->cv); /* ckpt_quiesce() */
		w->rc = rc;
		w->log = log;
		w->done = done;
		int64_t us = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000 +
			     (t1.tv_nsec - t0.tv_nsec) / 1000;
		if (us > w->us)
			w->us = us;
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static void ckpt_stop(struct store *s)
{
	struct ckpt_worker *w = s->ck;
	if (!w)
		return;
	s->ck = NULL;
	if (w->pid != getpid())
		return; /* a forked child: the thread and its connection are the parent's */
	pthread_mutex_lock(&w->mu);
	w->stop = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->th, NULL);
	sqlite3_close(w->db);
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

/* Starts the worker; without one (a small cap, no memory, no thread, no
 * second connection) checkpoints run inline. Under a small cap (below
 * CKPT_WORKER_MIN_PAGES frames per checkpoint) the WAL's share is a few
 * pages that a burst would outgrow while the worker runs, and an inline
 * checkpoint copies only those few pages. */
static void ckpt_start(struct store *s)
{
	if (s->ckpt_pages < CKPT_WORKER_MIN_PAGES)
		return;
	struct ckpt_worker *w = calloc(1, sizeof(*w));
	if (!w)
		return;
	if (sqlite3_open_v2(s->path, &w->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
		    SQLITE_OK ||
	    sqlite3_exec(w->db,
			 s->o.sync_full ? "PRAGMA synchronous = FULL" :
					  "PRAGMA synchronous = NORMAL",
			 NULL, NULL, NULL) != SQLITE_OK) {
		sqlite3_close(w->db);
		free(w);
		return;
	}
	sqlite3_busy_timeout(w->db, 0);
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	/* no signal for the worker: whatever the process blocks later (a
	 * signalfd) must not land on this thread */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int prc = pthread_create(&w->th, NULL, ckpt_main, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (prc != 0) {
		sqlite3_close(w->db);
		pthread_cond_destroy(&w->cv);
		pthread_mutex_destroy(&w->mu);
		free(w);
		return;
	}
	w->pid = getpid();
	s->ck = w;
}

/* The worker, if this process has it (a forked child does not). */
static struct ckpt_worker *ckpt_worker(const struct store *s)
{
	return s->ck && s->ck->pid == getpid() ? s->ck : NULL;
}

/* Takes the worker's outcome, if any: its time into the status figure, a
 * full disk into the disk-full state. */
static void ckpt_collect(struct store *s)
{
	struct ckpt_worker *w = ckpt_worker(s);
	if (!w)
		return;
	pthread_mutex_lock(&w->mu);
	bool have = w->have;
	int rc = w->rc;
	int64_t us = w->us;
	w->have = false;
	pthread_mutex_unlock(&w->mu);
	if (us > s->ckpt_max_us)
		s->ckpt_max_us = us;
	if (!have || rc == SQLITE_OK || rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
		return;
	int e = db_fail(s, "checkpoint", rc);
	if (e == -ENOSPC)
		go_disk_full(s, s->err);
}

/* Waits until the worker is idle: before a checkpoint on the core that must
 * not meet the worker's checkpoint lock (a full disk, an alarm to make room
 * for). Rare paths: correctness before latency. */
static void ckpt_quiesce(struct store *s)
{
	struct ckpt_worker *w = ckpt_worker(s);
	if (!w)
		return;
	pthread_mutex_lock(&w->mu);
	w->want = false;
	while (w->busy)
		pthread_cond_wait(&w->cv, &w->mu);
	pthread_mutex_unlock(&w->mu);
	ckpt_collect(s);
}

/* A PASSIVE checkpoint: on the worker when there is one, else inline. The
 * worker's checkpoint runs while writes go on; should the WAL reach its
 * share of the cap meanwhile (a flood faster than the disk), or the disk be
 * full, the core checkpoints itself: the WAL's share of the cap holds. */
static void ckpt_request(struct store *s)
{
	struct ckpt_worker *w = ckpt_worker(s);
	s->ckpt_due = false;
	if (w && s->disk_full) {
		ckpt_quiesce(s);
		w = NULL;
	} else if (w && s->wal_frames >= 4 * s->ckpt_pages) {
		/* The worker ran while the WAL grew, so it never found the
		 * WAL copied to its end at a batch's start, and it cannot
		 * start over: a pass here, between batches, copies what came
		 * since the worker's last one; busy (the worker is at it):
		 * next commit. */
		pthread_mutex_lock(&w->mu);
		bool busy = w->busy || w->want;
		pthread_mutex_unlock(&w->mu);
		if (!busy)
			w = NULL;
	}
	if (!w) {
		checkpoint(s, SQLITE_CHECKPOINT_PASSIVE);
		return;
	}
	ckpt_collect(s);
	pthread_mutex_lock(&w->mu);
	w->want = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* mono_ms < 0: read the clock (only when a batch starts). */
static int tx_begin(struct store *s, int64_t mono_ms)
{
	if (s->in_tx)
		return 0;
	if (mono_ms < 0)
		mono_ms = cgw_mono_ms();
	sqlite3_stmt *st = stmt(s, ST_BEGIN);
	if (!st)
		return -EIO;
	int rc = step_done(s, st, "begin");
	if (rc)
		return rc;
	s->in_tx = true;
	s->pending = 0;
	s->deadline = mono_ms + s->o.batch_ms;
	return 0;
}

/* Throws the open batch away (after a failure inside it). */
static void tx_abort(struct store *s)
{
	if (!s->in_tx)
		return;
	if (!sqlite3_get_autocommit(s->db)) {
		sqlite3_stmt *st = stmt(s, ST_ROLLBACK);
		if (st) {
			sqlite3_step(st);
			sqlite3_reset(st);
		}
	}
	s->in_tx = false;
	s->pending = 0;
	s->last_seq = s->committed_seq;
	cnt_settle(s, false);
	if (s->tx_latest) {
		/* latest rows of this batch were marked written: not so */
		latest_redirty(s->latest);
		s->tx_latest = 0;
		if (s->latest_due < 0)
			s->latest_due = cgw_mono_ms() + STORE_LATEST_WRITE_MS;
	}
	for (int l = 0; l < CGW_LANE_COUNT; l++) {
		s->lost[l] += s->tx_msgs[l];
		s->tx_msgs[l] = 0;
	}
	/* The uplinks were told these rows were delivered: keep that. */
	for (size_t i = 0; i < s->n_tx_acks; i++) {
		struct held_ack *a = &s->tx_acks[i];
		held_put(s, a->uplink, a->lane, a->seq, a->result, a->reason);
	}
	s->n_tx_acks = 0;
}

static void tx_settled(struct store *s)
{
	s->in_tx = false;
	s->pending = 0;
	s->committed_seq = s->last_seq;
	s->tx_latest = 0;
	cnt_settle(s, true);
	memset(s->tx_msgs, 0, sizeof(s->tx_msgs));
	for (size_t i = 0; i < s->n_tx_acks; i++)
		free(s->tx_acks[i].reason);
	s->n_tx_acks = 0;
}

/* Commits the open batch. may_checkpoint: false on the alarm path, whose
 * latency must not include a checkpoint. */
static int tx_commit(struct store *s, bool may_checkpoint)
{
	if (!s->in_tx)
		return 0;
	sqlite3_stmt *st = stmt(s, ST_COMMIT);
	int rc = st ? step_done(s, st, "commit") : -EIO;
	if (rc) {
		char keep[sizeof(s->err)];
		memcpy(keep, s->err, sizeof(keep));
		tx_abort(s);
		memcpy(s->err, keep, sizeof(keep));
		if (rc == -ENOSPC)
			go_disk_full(s, keep);
		return rc;
	}
	tx_settled(s);
	if (s->wal_frames >= s->ckpt_pages) {
		/* A failed checkpoint is not a failed commit: it is retried
		 * after the next commit and reported by store_maintain(). */
		if (may_checkpoint)
			ckpt_request(s);
		else
			s->ckpt_due = true;
	}
	return 0;
}

/* After a write joined the batch: commit if it is full. */
static int batch_wrote(struct store *s, bool *committed)
{
	if (++s->pending < s->o.batch_rows) {
		if (committed)
			*committed = false;
		return 0;
	}
	int rc = tx_commit(s, true);
	if (committed)
		*committed = rc == 0;
	return rc;
}

static void probe(struct store *s);

static int expire_step(struct store *s);
static int evict_step(struct store *s);
static int latest_step(struct store *s, int64_t mono_ms, bool all);
static int latest_load(struct store *s);

int store_flush(struct store *s)
{
	int rc = latest_step(s, cgw_mono_ms(), false);
	if (rc)
		tx_abort(s);
	rc = tx_commit(s, true);
	if (rc == 0 && s->ckpt_due)
		ckpt_request(s); /* see tx_commit() */
	ckpt_collect(s);
	if (rc == 0 && s->expire_more && !s->disk_full && !s->memory_only)
		rc = expire_step(s);
	else if (rc == 0 && s->evict_more && !s->disk_full && !s->memory_only && !s->in_tx)
		rc = evict_step(s);
	probe(s);
	return rc;
}

static bool troubled(const struct store *s)
{
	return s->disk_full || s->memory_only || s->n_held || s->n_mem;
}

int64_t store_flush_deadline_ms(const struct store *s)
{
	if (s->ckpt_due)
		return 0; /* already due */
	int64_t d = s->in_tx ? s->deadline : -1;
	if (troubled(s) && (d < 0 || s->probe_at < d))
		d = s->probe_at;
	if (!s->disk_full && !s->memory_only && (s->lw || s->latest_due >= 0)) {
		/* the latest values' write-down: its time, or its next step */
		int64_t e = s->lw ? cgw_mono_ms() + 2 * RETENTION_STEP_MS : s->latest_due;
		if (d < 0 || e < d)
			d = e;
	}
	if ((s->expire_more || s->evict_more) && !s->disk_full && !s->memory_only) {
		int64_t e = cgw_mono_ms() + 2 * RETENTION_STEP_MS; /* leave the loop its turn */
		if (d < 0 || e < d)
			d = e;
	}
	return d;
}

unsigned store_pending(const struct store *s)
{
	return s->in_tx ? s->pending : 0;
}

/* ------------------------------------------------------------------ size */

static int64_t wal_size(const struct store *s)
{
	struct stat sb;
	return stat(s->wal_path, &sb) == 0 ? (int64_t)sb.st_size : 0;
}

static int64_t shm_size(const struct store *s)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s-shm", s->path);
	return file_size(p);
}

int64_t store_size_bytes(struct store *s)
{
	int64_t pc = 0;
	if (cached_int(s, ST_PAGE_COUNT, &pc))
		return -1;
	return pc * PAGE_SIZE + wal_size(s) + shm_size(s);
}

/* The WAL's share of the cap: it is checkpointed at ckpt_pages frames, but
 * a batch, an eviction and a checkpoint a reader held back can take it
 * beyond that before it starts over (measured up to 3.4x under a sustained
 * load at a 512KB cap): four times. */
static int64_t wal_share(const struct store *s)
{
	return 4 * (int64_t)s->ckpt_pages * (PAGE_SIZE + 24);
}

/* What the data pages may use of the cap: the rest is the WAL's share and
 * the WAL index. */
static int64_t data_budget(const struct store *s, int64_t cap)
{
	int64_t b = cap - wal_share(s) - SHM_EST;
	return b > cap / 4 ? b : cap / 4;
}

/* Bytes that hold data: pages in use (free pages get reused first) plus the
 * WAL frames not yet checkpointed. The WAL file itself keeps its length
 * after a checkpoint until the next commit cuts it to journal_size_limit,
 * and store_maintain() truncates it, so counting the file here would only
 * count space that is about to be given back. */
/* Pages in use only: what eviction can give back (a WAL past its share
 * wants a checkpoint, and the WAL an eviction writes must not make it evict
 * more: counted in, a large eviction emptied the lane). */
static int data_bytes(struct store *s, int64_t *used)
{
	int64_t pc = 0, fl = 0;
	int rc = cached_int(s, ST_PAGE_COUNT, &pc);
	if (!rc)
		rc = cached_int(s, ST_FREELIST, &fl);
	if (!rc)
		*used = (pc - fl) * PAGE_SIZE;
	return rc;
}

static int used_bytes(struct store *s, int64_t *used)
{
	int64_t pc = 0, fl = 0;
	int rc = cached_int(s, ST_PAGE_COUNT, &pc);
	if (!rc)
		rc = cached_int(s, ST_FREELIST, &fl);
	if (rc)
		return rc;
	*used = (pc - fl) * PAGE_SIZE;
	/* a WAL beyond its share counts against the data */
	int64_t over = wal_size(s) - wal_share(s);
	if (over > 0)
		*used += over;
	return 0;
}

/* The cap in force: max_size, or, with the filesystem below its floor, the
 * store's present size plus what is left above the floor (it may not grow
 * into the floor). 0: no cap. */
static int64_t cap_now(struct store *s)
{
	int64_t cap = s->o.max_size;
	if (s->o.min_free <= 0)
		return cap;
	int64_t fr = fs_free(s);
	s->at_floor = fr >= 0 && fr < s->o.min_free;
	if (!s->at_floor)
		return cap;
	int64_t pc = 0;
	if (cached_int(s, ST_PAGE_COUNT, &pc))
		return cap;
	int64_t here = pc * PAGE_SIZE + wal_size(s) + shm_size(s);
	if (cap <= 0 || here < cap)
		cap = here;
	return cap;
}

static void note_eviction(struct store *s, enum cgw_lane lane, uint64_t n)
{
	if (!n)
		return;
	s->evicted_total[lane] += n;
	s->evicted_unreported[lane] += n;
	if (!s->evicting) {
		s->evicting = true;
		s->episode_new = true;
	}
}

/* One integer from a cached statement with up to four integer params (a
 * statement with fewer ignores the rest); *found false if no row. */
static int stmt_int4(struct store *s, enum st id, int64_t a, int64_t b, int64_t c, int64_t d,
		     int64_t *v, bool *found)
{
	sqlite3_stmt *st = stmt(s, id);
	if (!st)
		return -EIO;
	sqlite3_bind_int64(st, 1, a);
	sqlite3_bind_int64(st, 2, b);
	sqlite3_bind_int64(st, 3, c);
	if (sqlite3_bind_parameter_count(st) >= 4)
		sqlite3_bind_int64(st, 4, d);
	int rc = sqlite3_step(st);
	*found = rc == SQLITE_ROW;
	if (*found)
		*v = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : db_fail(s, sql_text[id], rc);
}

/* Deletes, from the head of `lane` (lowest seqs first), up to about max_rows
 * messages, only while they are older than `before` (INT64_MAX: any age),
 * with all their deliveries. Every stored message has a delivery row for
 * each uplink that still owes it, so the lane's messages are the union of
 * its delivery rows; the edge is the smallest of the per-uplink edges.
 * Inside a transaction. *n = messages deleted. */
static int delete_oldest(struct store *s, enum cgw_lane lane, int64_t max_rows, int64_t before,
			 uint64_t *n)
{
	int64_t ids[256];
	size_t nid = 0;
	int rc;
	*n = 0;
	sqlite3_stmt *st = stmt(s, ST_UPLINK_IDS);
	if (!st)
		return -EIO;
	while (nid < sizeof(ids) / sizeof(ids[0]) && (rc = sqlite3_step(st)) == SQLITE_ROW)
		ids[nid++] = sqlite3_column_int64(st, 0);
	if (nid == sizeof(ids) / sizeof(ids[0]))
		rc = SQLITE_DONE;
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return db_fail(s, "evict", rc);

	int64_t edge = INT64_MAX;
	bool any = false;
	for (size_t i = 0; i < nid; i++) {
		int64_t v = 0, e = INT64_MAX;
		bool found;
		rc = stmt_int4(s, ST_LANE_NTH, ids[i], lane, 0, 0, &v, &found);
		if (rc)
			return rc;
		if (!found)
			continue; /* this uplink owes nothing in the lane */
		any = true;
		rc = stmt_int4(s, ST_LANE_NTH, ids[i], lane, max_rows - 1, 0, &v, &found);
		if (rc)
			return rc;
		if (found)
			e = v;
		if (before != INT64_MAX) {
			/* only within the chunk: a long expired run costs
			 * O(chunk) per call, not O(run) */
			rc = stmt_int4(s, ST_LANE_FRESH, ids[i], lane, before, e, &v, &found);
			if (rc)
				return rc;
			if (found && v - 1 < e)
				e = v - 1;
		}
		if (e < edge)
			edge = e;
	}
	if (!any || edge < 1)
		return 0;
	sqlite3_stmt *dm = stmt(s, ST_EVICT_MSG), *dd = stmt(s, ST_EVICT_DELIV);
	if (!dm || !dd)
		return -EIO;
	sqlite3_bind_int(dm, 1, lane);
	sqlite3_bind_int64(dm, 2, edge);
	rc = step_done(s, dm, "evict");
	if (rc)
		return rc;
	*n = (uint64_t)sqlite3_changes64(s->db);
	/* per uplink, so that each one's depth counter follows */
	for (size_t i = 0; i < nid; i++) {
		sqlite3_bind_int64(dd, 1, ids[i]);
		sqlite3_bind_int(dd, 2, lane);
		sqlite3_bind_int64(dd, 3, edge);
		rc = step_done(s, dd, "evict");
		if (rc)
			return rc;
		cnt_sub(s, ids[i], lane, (uint64_t)edge, sqlite3_changes64(s->db));
	}
	return 0;
}

/* Evicts (telemetry, then events, then status) until used bytes <= target,
 * in statements of at most EVICT_CHUNK_MAX rows, until mono deadline_ms
 * (< 0: no deadline); s->evict_more says whether it stopped short. Inside a
 * transaction. */
static int evict_to(struct store *s, int64_t target, int64_t deadline_ms, bool pages_only)
{
	static const enum cgw_lane order[] = {CGW_LANE_TELEMETRY, CGW_LANE_EVENT, CGW_LANE_STATUS};
	int64_t used = 0;
	int rc = (pages_only ? data_bytes(s, &used) : used_bytes(s, &used));
	size_t li = 0;
	for (; !rc && li < sizeof(order) / sizeof(order[0]) && used > target;) {
		if (deadline_ms >= 0 && cgw_mono_ms() >= deadline_ms)
			break;
		/* Rows to drop, from the running average row cost (pages are
		 * not full: a quarter more), plus a few so that a round or two
		 * suffice. */
		int64_t per_row = s->avg_row_bytes * 5 / 4;
		if (per_row < 64)
			per_row = 64;
		int64_t rows = (used - target) / per_row + 16;
		if (rows > EVICT_CHUNK_MAX)
			rows = EVICT_CHUNK_MAX;
		uint64_t n = 0;
		rc = delete_oldest(s, order[li], rows, INT64_MAX, &n);
		if (rc)
			return rc;
		note_eviction(s, order[li], n);
		if (n == 0)
			li++; /* lane is empty */
		rc = (pages_only ? data_bytes(s, &used) : used_bytes(s, &used));
	}
	s->evict_more = !rc && used > target && li < sizeof(order) / sizeof(order[0]);
	return rc;
}

/* The eviction target: TARGET_PCT of the data budget; 0: no cap. */
static int64_t evict_target(struct store *s, int64_t *soft, int64_t *ahead)
{
	int64_t cap = cap_now(s);
	if (cap <= 0)
		return 0;
	int64_t budget = data_budget(s, cap);
	if (soft)
		*soft = budget / 100 * SOFT_PCT;
	if (ahead)
		*ahead = budget / 100 * EVICT_AHEAD_PCT;
	return budget / 100 * TARGET_PCT;
}

/* Eviction ahead of need, from store_flush(): one bounded step in a
 * transaction of its own; the checkpoint its commit may call for waits for
 * the next turn (ckpt_due). */
static int evict_step(struct store *s)
{
	int64_t target = evict_target(s, NULL, NULL), now = cgw_mono_ms();
	if (target <= 0) {
		s->evict_more = false;
		return 0;
	}
	if (now < s->evict_at)
		return 0;
	int rc = tx_begin(s, now);
	if (!rc)
		rc = evict_to(s, target, now + EVICT_STEP_MS, false);
	s->evict_at = cgw_mono_ms() + EVICT_GAP_MS;
	if (!rc)
		rc = tx_commit(s, false);
	if (rc) {
		tx_abort(s);
		s->evict_more = false; /* store_maintain() tries again */
	}
	return rc;
}

/* Before a non-alarm write: keep it out of the alarm reserve. Maintenance
 * evicts from EVICT_AHEAD_PCT in bounded steps (store_flush()), so a write
 * rarely finds the store above SOFT_PCT; when one does, it evicts one
 * bounded step itself (one per EVICT_GAP_MS: a turn that writes a thousand
 * readings evicts once, unless they pass the data budget), and is refused
 * only beyond the data budget. A store opened over its cap is brought under
 * it in store_open(), before the loop runs. */
static int admit(struct store *s)
{
	if (s->o.max_size <= 0 && s->o.min_free <= 0)
		return 0;
	if (s->admit_countdown > 0) {
		s->admit_countdown--;
		return 0;
	}
	s->admit_countdown = ADMIT_EVERY;
	int64_t soft = 0, ahead = 0;
	int64_t target = evict_target(s, &soft, &ahead);
	if (target <= 0)
		return 0;
	int64_t used = 0;
	int rc = used_bytes(s, &used);
	if (rc)
		return rc;
	if (used > ahead)
		s->evict_more = true;
	if (used <= soft)
		return 0;
	int64_t now = cgw_mono_ms(), budget = soft / SOFT_PCT * 100;
	if (now >= s->evict_at || used > budget) {
		rc = evict_to(s, target, now + EVICT_STEP_MS, false);
		s->evict_at = cgw_mono_ms() + EVICT_GAP_MS;
		if (rc)
			return rc;
		rc = used_bytes(s, &used);
		if (rc)
			return rc;
	}
	/* Above SOFT_PCT with a step just taken (this turn's, or this one's
	 * not enough): maintenance is on it, and the write may use the band
	 * up to the data budget meanwhile; beyond that only alarms. */
	if (used > budget) {
		s->admit_countdown = 0; /* check again next time */
		set_err(s,
			"%s: store is at its %s (%" PRId64 " of %" PRId64
			" bytes for data); only alarms are accepted",
			s->path, s->at_floor ? "free-space floor" : "size cap", used, budget);
		return -ENOSPC;
	}
	if (used > soft)
		s->admit_countdown = 0;
	return 0;
}

/* ------------------------------------------------------------------ open */

static uint64_t rng_next(struct store *s)
{
	uint64_t x = s->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	s->rng = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static int migrate(struct store *s, int64_t from)
{
	int rc = exec(s, "BEGIN IMMEDIATE");
	if (rc)
		return rc;
	for (int64_t v = from; v < N_MIGRATIONS; v++) {
		char sql[64];
		rc = exec(s, migrations[v]);
		if (rc)
			goto fail;
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %" PRId64, v + 1);
		rc = exec(s, sql);
		if (rc)
			goto fail;
	}
	{
		char sql[64];
		snprintf(sql, sizeof(sql), "PRAGMA application_id = %d", STORE_APPLICATION_ID);
		rc = exec(s, sql);
		if (rc)
			goto fail;
	}
	return exec(s, "COMMIT");
fail:;
	char keep[sizeof(s->err)];
	memcpy(keep, s->err, sizeof(keep));
	if (!sqlite3_get_autocommit(s->db)) /* a failed COMMIT has rolled back already */
		exec(s, "ROLLBACK");
	memcpy(s->err, keep, sizeof(keep));
	return rc;
}

/* The file must be an SQLite database that is empty or a cgw store no newer
 * than us. Reads only: nothing is written to a file that fails. */
static int check_identity(struct store *s, bool *fresh, int64_t *version)
{
	int64_t app = 0, uv = 0, nobj = 0;
	int rc = query_int(s, "SELECT count(*) FROM sqlite_schema", &nobj);
	if (!rc)
		rc = query_int(s, "PRAGMA application_id", &app);
	if (!rc)
		rc = query_int(s, "PRAGMA user_version", &uv);
	if (rc == STORE_E_NOTDB) {
		set_err(s, "%s: not an SQLite database (is this the store file?)", s->path);
		return rc;
	}
	if (rc)
		return rc;
	*fresh = app == 0 && uv == 0 && nobj == 0;
	*version = uv;
	if (!*fresh && app != STORE_APPLICATION_ID) {
		set_err(s,
			"%s: an SQLite database but not a cgw store (application_id 0x%08" PRIx32
			", %" PRId64 " schema objects); refusing to touch it",
			s->path, (uint32_t)app, nobj);
		return STORE_E_FOREIGN;
	}
	if (uv > N_MIGRATIONS) {
		set_err(s, "%s: store schema v%" PRId64 " is newer than this cgwd (v%d)", s->path,
			uv, N_MIGRATIONS);
		return STORE_E_NEWER;
	}
	return 0;
}

/* A store not closed cleanly under synchronous=NORMAL may have lost its last
 * commits to a power cut, and their seqs may already have been sent: skip
 * ahead so that they are never handed out again. The "open" mark is made
 * durable with a FULL commit before any message is written. */
static int mark_open(struct store *s)
{
	int64_t clean = 1, seq = 0;
	int rc = query_int(s, "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'clean_close'",
			   &clean);
	if (rc)
		return rc;
	rc = exec(s, "PRAGMA synchronous = FULL; BEGIN IMMEDIATE");
	if (rc)
		return rc;
	/* Also with sync FULL: alarms held in memory on a full disk had seqs
	 * that no commit recorded. */
	if (clean == 0) {
		char sql[160];
		snprintf(sql, sizeof(sql),
			 "UPDATE sqlite_sequence SET seq = seq + %d WHERE name = 'msg'",
			 STORE_SEQ_GAP);
		rc = exec(s, sql);
		if (!rc && sqlite3_changes(s->db) == 0) {
			snprintf(sql, sizeof(sql),
				 "INSERT INTO sqlite_sequence(name, seq) VALUES('msg', %d)",
				 STORE_SEQ_GAP);
			rc = exec(s, sql);
		}
	}
	if (!rc)
		rc = exec(s, "INSERT OR REPLACE INTO meta(key, value) VALUES('clean_close', '0')");
	if (!rc)
		rc = exec(s, "COMMIT");
	if (rc) {
		char keep[sizeof(s->err)];
		memcpy(keep, s->err, sizeof(keep));
		if (!sqlite3_get_autocommit(s->db))
			exec(s, "ROLLBACK");
		exec(s,
		     s->o.sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
		memcpy(s->err, keep, sizeof(keep));
		return rc;
	}
	rc = exec(s, s->o.sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
	if (rc)
		return rc;
	rc = query_int(s, "SELECT seq FROM sqlite_sequence WHERE name = 'msg'", &seq);
	s->last_seq = s->committed_seq = (uint64_t)seq;
	return rc;
}

static void close_db(struct store *s)
{
	for (int i = 0; i < ST_COUNT; i++) {
		sqlite3_finalize(s->st[i]);
		s->st[i] = NULL;
	}
	sqlite3_close(s->db);
	s->db = NULL;
}

/* Opens the file, checks it, migrates it, sets it up. */
static int open_db(struct store *s, const char *path)
{
	int rc;
	rc = sqlite3_open_v2(path, &s->db,
			     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			     NULL);
	if (rc != SQLITE_OK) {
		rc = db_fail(s, "open", rc);
		return rc;
	}
	sqlite3_busy_timeout(s->db, (int)s->o.busy_timeout_ms);

	int64_t version = 0;
	bool fresh = false;
	rc = check_identity(s, &fresh, &version);
	if (rc)
		return rc;
	if (fresh) {
		/* Only before the first table (and before WAL) do these take effect. */
		char sql[96];
		snprintf(sql, sizeof(sql),
			 "PRAGMA page_size = %d; PRAGMA auto_vacuum = INCREMENTAL", PAGE_SIZE);
		rc = exec(s, sql);
		if (rc)
			return rc;
	}
	{
		sqlite3_stmt *st = NULL;
		rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_step(st);
		bool wal = rc == SQLITE_ROW &&
			   (strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0 ||
			    s->in_memory_db);
		sqlite3_finalize(st);
		if (!wal) {
			if (rc == SQLITE_ROW) {
				set_err(s, "%s: cannot switch to WAL mode", path);
				rc = -EIO;
			} else {
				rc = db_fail(s, "journal_mode=WAL", rc);
			}
			return rc;
		}
	}
	if (fresh) {
		/* An empty file that already has a header (made by someone else,
		 * or an open killed half-way) keeps its auto_vacuum until VACUUM. */
		int64_t av = 0;
		rc = query_int(s, "PRAGMA auto_vacuum", &av);
		if (!rc && av != 2)
			rc = exec(s, "PRAGMA auto_vacuum = INCREMENTAL; VACUUM");
		if (rc)
			return rc;
	}
	if (version < N_MIGRATIONS) {
		rc = migrate(s, version);
		if (rc)
			return rc;
	}
	{
		/* The page cache stays filled to its size after any backlog:
		 * 2 MB (512 pages) holds the outbox's working set (the B-tree's
		 * inner pages and the ends being appended and consumed); 8 MB
		 * drained no faster (tests/bench/uplink.sh) and doubled cgwd's
		 * memory after an outage. */
		char sql[256];
		snprintf(sql, sizeof(sql),
			 "PRAGMA journal_size_limit = %" PRId64 ";"
			 "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -2048;"
			 "PRAGMA foreign_keys = OFF",
			 (int64_t)s->ckpt_pages * (PAGE_SIZE + 24) + 32);
		rc = exec(s, sql);
		if (rc)
			return rc;
	}
	return 0;
}

static void copy_err(char *err, size_t errlen, const char *msg)
{
	if (err && errlen)
		snprintf(err, errlen, "%s", msg);
}

int store_open(struct store **out, const char *path, const struct store_opts *opts, char *err,
	       size_t errlen)
{
	struct store *s = NULL;
	int rc;

	*out = NULL;
	copy_err(err, errlen, "");
	if (!path || !*path) {
		copy_err(err, errlen, "store: no path");
		return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		copy_err(err, errlen, "store: out of memory");
		return -ENOMEM;
	}
	s->reserve_fd = -1;
	if (opts)
		s->o = *opts;
	if (!s->o.batch_rows)
		s->o.batch_rows = DEFAULT_BATCH_ROWS;
	if (!s->o.batch_ms || s->o.batch_ms > STORE_BATCH_MS_MAX)
		s->o.batch_ms = STORE_BATCH_MS_MAX;
	if (!s->o.busy_timeout_ms || s->o.busy_timeout_ms > INT_MAX)
		s->o.busy_timeout_ms = DEFAULT_BUSY_MS;
	if (s->o.max_size < 0)
		s->o.max_size = 0;
	if (s->o.telemetry_retention_ms < 0)
		s->o.telemetry_retention_ms = 0;
	s->rng = s->o.rng_seed;
	if (!s->rng && getrandom(&s->rng, sizeof(s->rng), GRND_NONBLOCK) != sizeof(s->rng))
		s->rng = (uint64_t)cgw_mono_ms() ^ ((uint64_t)getpid() << 32);
	if (!s->rng)
		s->rng = 0x9E3779B97F4A7C15ULL;

	/* The WAL may hold at most ~1/16 of the cap between checkpoints. */
	s->ckpt_pages = WAL_CKPT_PAGES_MAX;
	if (s->o.max_size > 0) {
		int64_t p = s->o.max_size / 16 / PAGE_SIZE;
		s->ckpt_pages = (int)(p < WAL_CKPT_PAGES_MIN ? WAL_CKPT_PAGES_MIN :
				      p > WAL_CKPT_PAGES_MAX ? WAL_CKPT_PAGES_MAX :
							       p);
	}

	/* One batch's WAL frames must stay a small share of a small cap. */
	if (s->o.max_size > 0) {
		int64_t rows = s->o.max_size / 16 / 512;
		if (rows < 16)
			rows = 16;
		if ((int64_t)s->o.batch_rows > rows)
			s->o.batch_rows = (unsigned)rows;
	}

	s->path = strdup(path);
	s->wal_path = malloc(strlen(path) + 5);
	if (!s->path || !s->wal_path) {
		rc = -ENOMEM;
		set_err(s, "store: out of memory");
		goto fail;
	}
	sprintf(s->wal_path, "%s-wal", path);
	s->reserve_path = malloc(strlen(path) + 9);
	s->cap_tx_acks = s->o.batch_rows + 1;
	s->tx_acks = calloc(s->cap_tx_acks, sizeof(*s->tx_acks));
	if (!s->reserve_path || !s->tx_acks) {
		rc = -ENOMEM;
		set_err(s, "store: out of memory");
		goto fail;
	}
	sprintf(s->reserve_path, "%s-reserve", path);

	rc = open_db(s, path);
	if ((rc == -ENOSPC || rc == -EIO) && s->o.reserve_size > 0) {
		/* A full disk at start: the reserve left by the last run gives
		 * the room to open (WAL index, recovery). */
		close_db(s);
		int fd = open(s->reserve_path, O_WRONLY | O_CLOEXEC);
		if (fd >= 0) {
			if (ftruncate(fd, 0) < 0) {
				/* then it does not help */
			}
			close(fd);
		}
		rc = open_db(s, path);
	}
	if ((rc == -ENOSPC || rc == -EIO) && file_size(path) == 0) {
		/* Not even a new file can be made: start from an empty store in
		 * memory (memory-only: alarms held, nothing else kept) and move
		 * to the file when room returns (see probe()). */
		snprintf(s->trouble, sizeof(s->trouble), "%s", s->err);
		close_db(s);
		s->in_memory_db = true;
		rc = open_db(s, ":memory:");
		if (!rc)
			rc = mark_open(s);
		if (rc)
			goto fail;
		rc = latest_new(s->o.latest_max ? s->o.latest_max : LATEST_MAX, &s->latest);
		if (rc)
			goto fail;
		s->latest_due = -1;
		s->seq_floor = STORE_SEQ_GAP;
		s->memory_only = true;
		s->disk_full_episodes++;
		s->probe_at = cgw_mono_ms() + STORE_PROBE_MS;
		s->ready = true;
		*out = s;
		return 0;
	}
	if (rc)
		goto fail;
	sqlite3_wal_hook(s->db, wal_hook, s); /* replaces SQLite's auto-checkpoint */
	rc = mark_open(s);
	if (rc == -ENOSPC || rc == -EIO) {
		/* The file reads but cannot be written: work from memory
		 * (stored messages are still sent; alarms are held in memory)
		 * until room returns. Seqs start past a gap, as after a crash:
		 * nothing here records which ones are handed out. */
		int64_t seq = 0;
		snprintf(s->trouble, sizeof(s->trouble), "%s", s->err);
		rc = query_int(s, "SELECT seq FROM sqlite_sequence WHERE name = 'msg'", &seq);
		if (rc)
			goto fail;
		s->last_seq = s->committed_seq = (uint64_t)seq;
		s->seq_floor = (uint64_t)seq + STORE_SEQ_GAP;
		s->memory_only = true;
		s->disk_full_episodes++;
		s->probe_at = cgw_mono_ms() + STORE_PROBE_MS;
	} else if (!rc) {
		/* start with an empty WAL: migrations may have filled it */
		rc = checkpoint(s, SQLITE_CHECKPOINT_TRUNCATE);
		if (rc == -ENOSPC)
			rc = 0; /* the disk-full state says it */
		reserve_make(s);
		/* over the cap already (a lowered cap, a copied file): under
		 * it now, before the loop runs, not in steps of its turns */
		int64_t target = evict_target(s, NULL, NULL);
		if (!rc && target > 0 && s->o.max_size > 0 && !s->at_floor) {
			rc = tx_begin(s, -1);
			bool was = s->evicting;
			if (!rc)
				rc = evict_to(s, target, -1, true);
			if (!rc)
				rc = tx_commit(s, true);
			/* and the file down to what it holds */
			if (!rc && s->evicting && !was)
				rc = exec(s, "PRAGMA incremental_vacuum");
			if (!rc && s->evicting && !was)
				rc = checkpoint(s, SQLITE_CHECKPOINT_TRUNCATE);
			if (rc)
				tx_abort(s);
			if (rc == -ENOSPC)
				rc = 0; /* the disk-full state says it */
		}
		if (!rc)
			ckpt_start(s);
	}
	if (!rc)
		rc = latest_load(s);
	if (rc)
		goto fail;
	s->ready = true;
	*out = s;
	return 0;
fail:
	copy_err(err, errlen, s->err[0] ? s->err : "store: cannot open");
	store_close(s);
	return rc;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	if (s->db && s->ready) {
		s->probe_at = 0; /* a last chance for what is held */
		if (latest_step(s, cgw_mono_ms(), true))
			tx_abort(s);
		store_flush(s);
		/* Held alarms had seqs no commit recorded: the next open must
		 * skip past them, as after a crash. */
		if (!s->in_tx && sqlite3_get_autocommit(s->db) && !troubled(s))
			exec(s,
			     "INSERT OR REPLACE INTO meta(key, value) VALUES('clean_close', '1')");
	}
	ckpt_stop(s); /* before the last connection closes: it checkpoints */
	if (s->db)
		close_db(s);
	held_clear(s);
	free(s->held);
	free(s->lw);
	latest_free(s->latest);
	while (s->n_mem)
		mem_drop(s, s->n_mem - 1);
	for (size_t i = 0; i < s->n_tx_acks; i++)
		free(s->tx_acks[i].reason);
	free(s->tx_acks);
	if (s->reserve_fd >= 0)
		close(s->reserve_fd);
	free(s->reserve_path);
	free(s->path);
	free(s->wal_path);
	free(s);
}

/* --------------------------------------------------------------- uplinks */

static struct reg_uplink *reg_find(struct store *s, const char *name)
{
	for (size_t i = 0; i < s->n_up; i++)
		if (strcmp(s->up[i].name, name) == 0)
			return &s->up[i];
	return NULL;
}

/* The one count(*) of an uplink's deliveries: when it is registered (at
 * open, or at a reload). From then on the counters follow every change. */
static int recount(struct store *s, struct reg_uplink *r)
{
	int rc = tx_commit(s, true);
	if (rc)
		return rc;
	sqlite3_stmt *st = NULL;
	rc = sqlite3_prepare_v2(
		s->db, "SELECT lane, count(*) FROM delivery WHERE uplink = ?1 GROUP BY lane", -1,
		&st, NULL);
	if (rc != SQLITE_OK)
		return db_fail(s, "count deliveries", rc);
	sqlite3_bind_int64(st, 1, r->id);
	memset(r->cnt, 0, sizeof(r->cnt));
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int l = sqlite3_column_int(st, 0);
		if (l >= 0 && l < CGW_LANE_COUNT)
			r->cnt[l].depth = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : db_fail(s, "count deliveries", rc);
}

int store_uplink_register(struct store *s, const char *name, unsigned lane_mask, int64_t *id)
{
	if (!name || !*name || strlen(name) > NAME_MAX_LEN) {
		set_err(s, "uplink name must be 1..%d bytes", NAME_MAX_LEN);
		return -EINVAL;
	}
	struct reg_uplink *r = reg_find(s, name);
	if (!r) {
		if (s->n_up >= STORE_MAX_UPLINKS) {
			set_err(s, "more than %d uplinks", STORE_MAX_UPLINKS);
			return -E2BIG;
		}
		int64_t uid = -1;
		sqlite3_stmt *st = NULL;
		int rc = sqlite3_prepare_v2(s->db, "SELECT id FROM uplinks WHERE name = ?1", -1,
					    &st, NULL);
		if (rc == SQLITE_OK) {
			sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
			if (sqlite3_step(st) == SQLITE_ROW)
				uid = sqlite3_column_int64(st, 0);
		}
		sqlite3_finalize(st);
		st = NULL;
		if (uid >= 0)
			goto have;
		rc = sqlite3_prepare_v2(s->db,
					"INSERT INTO uplinks(name) VALUES(?1)"
					" ON CONFLICT(name) DO UPDATE SET name = name RETURNING id",
					-1, &st, NULL);
		if (rc == SQLITE_OK) {
			sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
			rc = sqlite3_step(st);
			if (rc == SQLITE_ROW)
				uid = sqlite3_column_int64(st, 0);
			/* finalize before commit: a RETURNING statement must finish */
			while (rc == SQLITE_ROW)
				rc = sqlite3_step(st);
		}
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE || uid < 0)
			return db_fail(s, "register uplink", rc);
have:
		r = &s->up[s->n_up++];
		memset(r, 0, sizeof(*r));
		r->id = uid;
		snprintf(r->name, sizeof(r->name), "%s", name);
		rc = recount(s, r);
		if (rc) {
			s->n_up--;
			return rc;
		}
	}
	r->mask = lane_mask & ((1u << CGW_LANE_COUNT) - 1);
	if (id)
		*id = r->id;
	return 0;
}

/* Drops every delivery of uplink `id`, and the messages that were waiting
 * only for it. Inside a transaction. */
static int drop_uplink_rows(struct store *s, int64_t id)
{
	static const char *const sql[] = {
		"DELETE FROM msg WHERE pending <= 1 AND seq IN"
		" (SELECT seq FROM delivery WHERE uplink = ?1)",
		"UPDATE msg SET pending = pending - 1 WHERE seq IN"
		" (SELECT seq FROM delivery WHERE uplink = ?1)",
		"DELETE FROM delivery WHERE uplink = ?1",
	};
	for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
		sqlite3_stmt *st = NULL;
		int rc = sqlite3_prepare_v2(s->db, sql[i], -1, &st, NULL);
		if (rc == SQLITE_OK) {
			sqlite3_bind_int64(st, 1, id);
			rc = sqlite3_step(st);
		}
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE)
			return db_fail(s, "drop uplink deliveries", rc);
	}
	return 0;
}

int store_uplink_remove(struct store *s, const char *name)
{
	int64_t id = -1;
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(s->db, "SELECT id FROM uplinks WHERE name = ?1", -1, &st, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW)
			id = sqlite3_column_int64(st, 0);
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return db_fail(s, "remove uplink", rc);
	struct reg_uplink *r = reg_find(s, name);
	if (r) {
		*r = s->up[--s->n_up];
	}
	if (id < 0)
		return -ENOENT;
	if (s->disk_full || s->memory_only)
		return -ENOSPC;
	rc = tx_begin(s, -1);
	if (!rc)
		rc = drop_uplink_rows(s, id);
	if (!rc)
		rc = tx_commit(s, true);
	if (rc)
		tx_abort(s);
	return rc;
}

int store_uplink_prune(struct store *s)
{
	int64_t ids[64];
	size_t n = 0;
	sqlite3_stmt *st = NULL;
	/* More than 64 stale uplinks: the rest go on the next call. */
	int rc = sqlite3_prepare_v2(s->db, "SELECT id FROM uplinks ORDER BY id", -1, &st, NULL);
	while (rc == SQLITE_OK || rc == SQLITE_ROW) {
		rc = sqlite3_step(st);
		if (rc != SQLITE_ROW)
			break;
		int64_t id = sqlite3_column_int64(st, 0);
		bool live = false;
		for (size_t i = 0; i < s->n_up; i++)
			live |= s->up[i].id == id;
		if (!live && n < sizeof(ids) / sizeof(ids[0]))
			ids[n++] = id;
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return db_fail(s, "prune uplinks", rc);
	if (!n || s->disk_full || s->memory_only)
		return 0; /* (on a full disk: at the next start) */
	rc = tx_begin(s, -1);
	for (size_t i = 0; !rc && i < n; i++)
		rc = drop_uplink_rows(s, ids[i]);
	if (!rc)
		rc = tx_commit(s, true);
	if (rc)
		tx_abort(s);
	return rc;
}

int store_uplink_rearm(struct store *s, int64_t uplink)
{
	for (size_t i = 0; i < s->n_mem; i++) {
		int o = mem_owed(&s->mem[i], uplink);
		if (o >= 0)
			s->mem[i].next_ms[o] = 0;
	}
	if (s->disk_full || s->memory_only)
		return 0;
	int rc = tx_begin(s, -1);
	if (rc)
		return rc;
	sqlite3_stmt *st = NULL;
	rc = sqlite3_prepare_v2(s->db,
				"UPDATE delivery SET next_attempt_ms = 0"
				" WHERE uplink = ?1 AND next_attempt_ms > 0",
				-1, &st, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, uplink);
		rc = sqlite3_step(st);
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		rc = db_fail(s, "rearm", rc);
		tx_abort(s);
		return rc;
	}
	return batch_wrote(s, NULL);
}

/* ---------------------------------------------------------------- outbox */

static uint64_t next_seq(const struct store *s)
{
	return (s->last_seq > s->seq_floor ? s->last_seq : s->seq_floor) + 1;
}

/* Inserts the message and its delivery rows into the open transaction, with
 * the seq *seq if it is not 0 (a held alarm going to disk), else the next. */
static int insert_msg(struct store *s, const struct store_msg *m, const int64_t *targets, size_t nt,
		      uint64_t *seq)
{
	sqlite3_stmt *im = stmt(s, ST_INS_MSG), *id = stmt(s, ST_INS_DELIV);
	if (!im || !id)
		return -EIO;
	size_t ld = m->device ? strlen(m->device) : 0, lt = strlen(m->topic),
	       lp = strlen(m->payload);
	if (ld > INT_MAX / 4 || lt > INT_MAX / 4 || lp > INT_MAX / 4) {
		set_err(s, "enqueue: message too large");
		return -EMSGSIZE;
	}
	/* record + rowid + delivery rows, roughly */
	int64_t cost = (int64_t)(ld + lt + lp) + 32 + 24 * (int64_t)nt;
	s->avg_row_bytes = s->avg_row_bytes ? (s->avg_row_bytes * 15 + cost) / 16 : cost;
	sqlite3_bind_int(im, 1, m->lane);
	if (m->device)
		sqlite3_bind_text(im, 2, m->device, (int)ld, SQLITE_STATIC);
	else
		sqlite3_bind_null(im, 2);
	sqlite3_bind_text(im, 3, m->topic, (int)lt, SQLITE_STATIC);
	sqlite3_bind_int64(im, 4, m->ts_ms);
	sqlite3_bind_text(im, 5, m->payload, (int)lp, SQLITE_STATIC);
	sqlite3_bind_int(im, 6, (int)nt);
	uint64_t sq = *seq ? *seq : next_seq(s);
	sqlite3_bind_int64(im, 7, (int64_t)sq);
	int rc = step_done(s, im, "enqueue");
	if (rc)
		return rc;
	sqlite3_bind_int(id, 2, m->lane);
	sqlite3_bind_int64(id, 3, (int64_t)sq);
	for (size_t i = 0; i < nt; i++) {
		sqlite3_bind_int64(id, 1, targets[i]);
		rc = step_done(s, id, "enqueue delivery");
		if (rc)
			return rc;
		cnt_add(s, targets[i], m->lane, sq, m->ts_ms);
	}
	if (sq > s->last_seq)
		s->last_seq = sq;
	s->tx_msgs[m->lane]++;
	*seq = sq;
	return 0;
}

/* ---- alarms held in memory ---- */

static void mem_free(struct mem_alarm *a)
{
	free(a->device);
	free(a->topic);
	free(a->payload);
	memset(a, 0, sizeof(*a));
}

static void mem_drop(struct store *s, size_t i)
{
	mem_free(&s->mem[i]);
	memmove(&s->mem[i], &s->mem[i + 1], (s->n_mem - i - 1) * sizeof(s->mem[0]));
	s->n_mem--;
	memset(&s->mem[s->n_mem], 0, sizeof(s->mem[0]));
}

static struct mem_alarm *mem_find(struct store *s, uint64_t seq)
{
	for (size_t i = 0; i < s->n_mem; i++)
		if (s->mem[i].seq == seq)
			return &s->mem[i];
	return NULL;
}

static int mem_owed(const struct mem_alarm *a, int64_t uplink)
{
	for (size_t i = 0; i < a->n_owed; i++)
		if (a->owed[i] == uplink)
			return (int)i;
	return -1;
}

/* Keeps an alarm that could not be committed; it gets a seq no stored
 * message will ever get (seq_floor moves past it). */
static int mem_hold(struct store *s, const struct store_msg *m, const int64_t *targets, size_t nt,
		    uint64_t *seq)
{
	if (s->n_mem >= STORE_MEM_ALARMS_MAX) {
		set_err(s, "%s: %d alarms already held in memory", s->trouble,
			STORE_MEM_ALARMS_MAX);
		return -ENOSPC;
	}
	struct mem_alarm *a = &s->mem[s->n_mem];
	memset(a, 0, sizeof(*a));
	a->device = m->device ? strdup(m->device) : NULL;
	a->topic = strdup(m->topic);
	a->payload = strdup(m->payload);
	if ((m->device && !a->device) || !a->topic || !a->payload) {
		mem_free(a);
		set_err(s, "alarm: out of memory");
		return -ENOMEM;
	}
	a->seq = next_seq(s);
	a->ts_ms = m->ts_ms;
	a->n_owed = nt;
	memcpy(a->owed, targets, nt * sizeof(*targets));
	s->seq_floor = a->seq;
	s->n_mem++;
	s->mem_total++;
	if (s->probe_at <= 0)
		s->probe_at = cgw_mono_ms() + STORE_PROBE_MS;
	*seq = a->seq;
	return 0;
}

/* The disk is full and an alarm did not fit: the pending batch is lost
 * anyway, so start over with a transaction that first frees room inside the
 * file (older telemetry, else events, else status) and stores the alarm in
 * it, after a checkpoint so that the WAL can be rewritten from its start
 * instead of growing. */
static int alarm_make_room(struct store *s, const struct store_msg *m, const int64_t *targets,
			   size_t nt, int64_t mono_ms, uint64_t *seq)
{
	static const enum cgw_lane order[] = {CGW_LANE_TELEMETRY, CGW_LANE_EVENT, CGW_LANE_STATUS};
	char why[sizeof(s->err)];
	memcpy(why, s->err, sizeof(why));
	tx_abort(s);
	ckpt_quiesce(s);
	checkpoint(s, SQLITE_CHECKPOINT_PASSIVE);
	int rc = tx_begin(s, mono_ms);
	uint64_t n = 0;
	for (size_t i = 0; !rc && !n && i < sizeof(order) / sizeof(order[0]); i++) {
		rc = delete_oldest(s, order[i], 256, INT64_MAX, &n);
		note_eviction(s, order[i], n);
	}
	if (!rc && !n)
		rc = -ENOSPC; /* only alarms left: nothing to give up */
	*seq = 0;
	if (!rc)
		rc = insert_msg(s, m, targets, nt, seq);
	if (!rc)
		rc = tx_commit(s, false);
	if (rc) {
		tx_abort(s);
		set_err(s, "%s (and no room could be made for the alarm)", why);
	}
	return rc;
}

/* One alarm in a transaction of its own (with the pending batch). */
static int try_alarm(struct store *s, const struct store_msg *m, const int64_t *targets, size_t nt,
		     int64_t mono_ms, uint64_t *sq)
{
	*sq = 0;
	int rc = tx_begin(s, mono_ms);
	if (!rc)
		rc = insert_msg(s, m, targets, nt, sq);
	if (!rc)
		rc = tx_commit(s, false);
	if (rc)
		tx_abort(s);
	return rc;
}

static bool disk_trouble(int rc)
{
	return rc == -ENOSPC || rc == -EIO;
}

static int enqueue_alarm(struct store *s, const struct store_msg *m, const int64_t *targets,
			 size_t nt, int64_t mono_ms, uint64_t *sq, bool *committed)
{
	int rc = -ENOSPC;
	*committed = false;
	if (!s->memory_only) {
		rc = try_alarm(s, m, targets, nt, mono_ms, sq);
		/* The disk is full: give the reserve back, let the WAL start
		 * over if it can, and try again. */
		if (disk_trouble(rc) && reserve_release(s)) {
			ckpt_quiesce(s);
			checkpoint(s, SQLITE_CHECKPOINT_PASSIVE);
			rc = try_alarm(s, m, targets, nt, mono_ms, sq);
		}
		if (disk_trouble(rc))
			rc = alarm_make_room(s, m, targets, nt, mono_ms, sq);
		if (rc == -EINVAL || rc == -EMSGSIZE)
			return rc;
	}
	if (rc == 0) {
		*committed = true;
		return 0;
	}
	/* Not even that: delivered from memory, stored when room returns. */
	char why[sizeof(s->err)];
	snprintf(why, sizeof(why), "%s", s->memory_only ? s->trouble : s->err);
	tx_abort(s);
	if (!s->disk_full && !s->memory_only)
		go_disk_full(s, why);
	rc = mem_hold(s, m, targets, nt, sq);
	if (rc == 0)
		set_err(s, "%s", why);
	return rc;
}

int store_enqueue(struct store *s, const struct store_msg *m, int64_t mono_ms, uint64_t *seq,
		  bool *committed)
{
	int64_t targets[STORE_MAX_UPLINKS];
	size_t nt = 0;
	uint64_t sq = 0;
	int rc;

	if (seq)
		*seq = 0;
	if (committed)
		*committed = false;
	if (!m || (unsigned)m->lane >= CGW_LANE_COUNT || !m->topic || !m->payload) {
		set_err(s, "enqueue: bad message");
		return -EINVAL;
	}
	for (size_t i = 0; i < s->n_up; i++)
		if ((s->up[i].mask & (1u << m->lane)) && (!m->uplink || m->uplink == s->up[i].id))
			targets[nt++] = s->up[i].id;
	if (!nt) {
		/* Nobody sends this lane: nothing to keep. */
		if (committed)
			*committed = true;
		return 0;
	}
	if (m->lane == CGW_LANE_ALARM) {
		bool c = false;
		rc = enqueue_alarm(s, m, targets, nt, mono_ms, &sq, &c);
		if (rc)
			return rc;
		if (committed)
			*committed = c;
		if (seq)
			*seq = sq;
		return 0;
	}
	/* A full disk keeps its last room for alarms and device state. */
	if (s->memory_only || (s->disk_full && m->lane != CGW_LANE_STATUS)) {
		s->lost[m->lane]++;
		set_err(s, "%s", s->trouble);
		return -ENOSPC;
	}
	rc = tx_begin(s, mono_ms);
	if (rc)
		return rc;
	rc = admit(s);
	if (rc == -ENOSPC)
		return rc; /* refused; the batch stays as it was */
	if (!rc)
		rc = insert_msg(s, m, targets, nt, &sq);
	if (rc) {
		tx_abort(s);
		return rc;
	}
	rc = batch_wrote(s, committed);
	if (!rc && seq)
		*seq = sq;
	return rc;
}

void store_items_clear(struct store_item *items, size_t n)
{
	for (size_t i = 0; items && i < n; i++) {
		free(items[i].buf_);
		memset(&items[i], 0, sizeof(items[i]));
	}
}

static int fetch_db(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t after_seq,
		    size_t max, int64_t now_ms, struct store_item *items, size_t *n);
static int fetch_mem(struct store *s, int64_t uplink, uint64_t after_seq, size_t max,
		     int64_t now_ms, struct store_item *items, size_t *k);

/* Whether the uplink's lane may hold committed rows: its counter says so
 * (an uplink pumps every lane at each turn; most of them are empty). The
 * table is asked anyway every EMPTY_RECHECK_MS, so that a counter gone
 * wrong could delay a message, never strand it; and always for the alarm
 * lane, whose messages may not wait even that long. */
#define EMPTY_RECHECK_MS 10000
static bool lane_may_hold(struct store *s, int64_t uplink, enum cgw_lane lane, int64_t now_ms)
{
	if (lane == CGW_LANE_ALARM)
		return true;
	for (size_t i = 0; i < s->n_up; i++) {
		struct reg_uplink *r = &s->up[i];
		if (r->id != uplink)
			continue;
		if (r->cnt[lane].depth > 0)
			return true;
		if (now_ms - r->looked_ms[lane] < EMPTY_RECHECK_MS && now_ms >= r->looked_ms[lane])
			return false;
		r->looked_ms[lane] = now_ms;
		return true;
	}
	return true; /* not registered here: ask the table */
}

int store_fetch(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t after_seq, size_t max,
		int64_t now_ms, struct store_item *items, size_t *n)
{
	*n = 0;
	if ((unsigned)lane >= CGW_LANE_COUNT || !items)
		return -EINVAL;
	if (!max)
		return 0;
	size_t k = 0;
	int rc = 0;
	if (after_seq < s->committed_seq && lane_may_hold(s, uplink, lane, now_ms)) {
		rc = fetch_db(s, uplink, lane, after_seq, max, now_ms, items, &k);
		if (rc)
			return rc;
	}
	if (lane == CGW_LANE_ALARM && s->n_mem) {
		rc = fetch_mem(s, uplink, after_seq, max, now_ms, items, &k);
		if (rc) {
			store_items_clear(items, k);
			return rc;
		}
	}
	*n = k;
	return 0;
}

static int fill_item(struct store_item *it, uint64_t seq, enum cgw_lane lane, int64_t ts_ms,
		     uint32_t attempts, const char *dev, const char *top, const char *pay)
{
	size_t ld = dev ? strlen(dev) + 1 : 0, lt = strlen(top) + 1, lp = strlen(pay) + 1;
	char *buf = malloc(ld + lt + lp);
	if (!buf)
		return -ENOMEM;
	it->seq = seq;
	it->lane = lane;
	it->attempts = attempts;
	it->ts_ms = ts_ms;
	it->buf_ = buf;
	it->device = NULL;
	if (dev) {
		memcpy(buf, dev, ld);
		it->device = buf;
		buf += ld;
	}
	memcpy(buf, top, lt);
	it->topic = buf;
	buf += lt;
	memcpy(buf, pay, lp);
	it->payload = buf;
	return 0;
}

/* Adds the due held alarms of the uplink after after_seq, keeping seq
 * order and at most `max` items. */
static int fetch_mem(struct store *s, int64_t uplink, uint64_t after_seq, size_t max,
		     int64_t now_ms, struct store_item *items, size_t *k)
{
	for (size_t i = 0; i < s->n_mem; i++) {
		struct mem_alarm *a = &s->mem[i];
		int o = mem_owed(a, uplink);
		if (a->seq <= after_seq || o < 0 || a->next_ms[o] > now_ms)
			continue;
		/* where it goes in seq order */
		size_t at = *k;
		while (at > 0 && items[at - 1].seq > a->seq)
			at--;
		if (at >= max)
			continue;
		if (*k == max) { /* the last one makes room */
			store_items_clear(&items[max - 1], 1);
			(*k)--;
		}
		memmove(&items[at + 1], &items[at], (*k - at) * sizeof(*items));
		memset(&items[at], 0, sizeof(*items));
		int rc = fill_item(&items[at], a->seq, CGW_LANE_ALARM, a->ts_ms, a->attempts[o],
				   a->device, a->topic, a->payload);
		if (rc) {
			memmove(&items[at], &items[at + 1], (*k - at) * sizeof(*items));
			set_err(s, "fetch: out of memory");
			return rc;
		}
		(*k)++;
	}
	return 0;
}

static int fetch_db(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t after_seq,
		    size_t max, int64_t now_ms, struct store_item *items, size_t *n)
{
	*n = 0;
	sqlite3_stmt *st = stmt(s, ST_FETCH);
	if (!st)
		return -EIO;
	sqlite3_bind_int64(st, 1, uplink);
	sqlite3_bind_int(st, 2, lane);
	sqlite3_bind_int64(st, 3, (int64_t)after_seq);
	sqlite3_bind_int64(st, 4, (int64_t)s->committed_seq);
	sqlite3_bind_int64(st, 5, max > INT_MAX ? INT_MAX : (int64_t)max);
	int rc;
	size_t k = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int64_t next = sqlite3_column_int64(st, 2);
		/* A next attempt further away than any backoff we set means the
		 * clock went back: treat it as due rather than stall the lane. */
		if (next > now_ms && next - now_ms <= STORE_RETRY_AFTER_MAX_MS)
			break;
		/* delivered, but the ack is waiting for room on the disk */
		if (s->n_held && held_find(s, uplink, lane, (uint64_t)sqlite3_column_int64(st, 0)))
			continue;
		const char *dev = (const char *)sqlite3_column_text(st, 4);
		size_t ld = dev ? (size_t)sqlite3_column_bytes(st, 4) + 1 : 0;
		const char *top = (const char *)sqlite3_column_text(st, 5);
		size_t lt = (size_t)sqlite3_column_bytes(st, 5) + 1;
		const char *pay = (const char *)sqlite3_column_text(st, 6);
		size_t lp = (size_t)sqlite3_column_bytes(st, 6) + 1;
		char *buf = malloc(ld + lt + lp);
		if (!buf || !top || !pay) {
			free(buf);
			sqlite3_reset(st);
			store_items_clear(items, k);
			set_err(s, "fetch: out of memory");
			return -ENOMEM;
		}
		struct store_item *it = &items[k++];
		it->seq = (uint64_t)sqlite3_column_int64(st, 0);
		it->lane = lane;
		it->attempts = (uint32_t)sqlite3_column_int64(st, 1);
		it->ts_ms = sqlite3_column_int64(st, 3);
		it->buf_ = buf;
		char *p = buf;
		it->device = NULL;
		if (dev) {
			memcpy(p, dev, ld);
			it->device = p;
			p += ld;
		}
		memcpy(p, top, lt);
		it->topic = p;
		p += lt;
		memcpy(p, pay, lp);
		it->payload = p;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		store_items_clear(items, k);
		return db_fail(s, "fetch", rc);
	}
	*n = k;
	return 0;
}

static int bind3(sqlite3_stmt *st, int64_t uplink, enum cgw_lane lane, uint64_t seq)
{
	sqlite3_bind_int64(st, 1, uplink);
	sqlite3_bind_int(st, 2, lane);
	sqlite3_bind_int64(st, 3, (int64_t)seq);
	return 0;
}

/* Removes one delivery row and the message if it was its last. */
static int drop_delivery(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t seq)
{
	sqlite3_stmt *dd = stmt(s, ST_DEL_DELIV), *dm = stmt(s, ST_DEL_MSG_LAST),
		     *dp = stmt(s, ST_DEC_PENDING);
	if (!dd || !dm || !dp)
		return -EIO;
	bind3(dd, uplink, lane, seq);
	int rc = step_done(s, dd, "ack");
	if (rc)
		return rc;
	if (sqlite3_changes(s->db) == 0) {
		set_err(s, "ack: no delivery of seq %" PRIu64 " for uplink %" PRId64, seq, uplink);
		return -ENOENT;
	}
	cnt_sub(s, uplink, lane, seq, 1);
	sqlite3_bind_int64(dm, 1, (int64_t)seq);
	rc = step_done(s, dm, "ack");
	if (rc || sqlite3_changes(s->db) > 0)
		return rc;
	sqlite3_bind_int64(dp, 1, (int64_t)seq);
	return step_done(s, dp, "ack");
}

static int64_t backoff_ms(struct store *s, int64_t attempts, int64_t retry_after_ms)
{
	if (retry_after_ms >= 0)
		return retry_after_ms < STORE_RETRY_AFTER_MAX_MS ? retry_after_ms :
								   STORE_RETRY_AFTER_MAX_MS;
	int sh = attempts > 20 ? 20 : (int)attempts;
	int64_t win = (int64_t)STORE_BACKOFF_BASE_MS << sh;
	if (win > STORE_BACKOFF_CAP_MS)
		win = STORE_BACKOFF_CAP_MS;
	return (int64_t)(rng_next(s) % (uint64_t)(win + 1));
}

/* An alarm held in memory is never a dead letter: an ERROR is retried. */
static int ack_mem(struct store *s, struct mem_alarm *a, int64_t uplink,
		   enum store_ack_result result, int64_t retry_after_ms, int64_t now_ms)
{
	int o = mem_owed(a, uplink);
	if (o < 0) {
		set_err(s, "ack: no delivery of seq %" PRIu64 " for uplink %" PRId64, a->seq,
			uplink);
		return -ENOENT;
	}
	if (result == STORE_ACK_OK) {
		a->n_owed--;
		a->owed[o] = a->owed[a->n_owed];
		a->next_ms[o] = a->next_ms[a->n_owed];
		a->attempts[o] = a->attempts[a->n_owed];
		if (!a->n_owed)
			mem_drop(s, (size_t)(a - s->mem));
		return 0;
	}
	a->next_ms[o] = now_ms + backoff_ms(s, a->attempts[o], retry_after_ms);
	a->attempts[o]++;
	return 0;
}

int store_ack(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t seq,
	      enum store_ack_result result, int64_t retry_after_ms, const char *reason,
	      int64_t now_ms)
{
	if ((unsigned)lane >= CGW_LANE_COUNT)
		return -EINVAL;
	/* an alarm is never a dead letter, whatever the uplink says */
	if (result == STORE_ACK_ERROR && lane == CGW_LANE_ALARM)
		result = STORE_ACK_RETRY;
	if (lane == CGW_LANE_ALARM && s->n_mem) {
		struct mem_alarm *a = mem_find(s, seq);
		if (a)
			return ack_mem(s, a, uplink, result, retry_after_ms, now_ms);
	}
	if (s->disk_full || s->memory_only) {
		/* Nothing can be written: remember it, apply it when room
		 * returns. A retry needs no remembering (the row stays due). */
		if (result == STORE_ACK_RETRY)
			return 0;
		char *why = reason ? strdup(reason) : NULL;
		int r = held_put(s, uplink, lane, seq, result, why);
		if (r)
			set_err(s, "ack: %d acks already held in memory", STORE_HELD_ACKS_MAX);
		return r;
	}
	int rc = tx_begin(s, -1);
	if (rc)
		return rc;
	if (result != STORE_ACK_RETRY && s->n_tx_acks < s->cap_tx_acks) {
		/* kept until the batch commits: if it rolls back, held */
		struct held_ack *t = &s->tx_acks[s->n_tx_acks];
		*t = (struct held_ack){.seq = seq,
				       .uplink = uplink,
				       .lane = (int8_t)lane,
				       .result = (int8_t)result,
				       .reason = reason ? strdup(reason) : NULL};
		s->n_tx_acks++;
	}
	switch (result) {
	case STORE_ACK_OK:
		rc = drop_delivery(s, uplink, lane, seq);
		break;
	case STORE_ACK_RETRY: {
		sqlite3_stmt *ga = stmt(s, ST_GET_ATTEMPTS), *sr = stmt(s, ST_SET_RETRY);
		if (!ga || !sr) {
			rc = -EIO;
			break;
		}
		bind3(ga, uplink, lane, seq);
		int r = sqlite3_step(ga);
		int64_t attempts = r == SQLITE_ROW ? sqlite3_column_int64(ga, 0) : -1;
		sqlite3_reset(ga);
		if (r != SQLITE_ROW && r != SQLITE_DONE) {
			rc = db_fail(s, "ack", r);
			break;
		}
		if (attempts < 0) {
			set_err(s, "ack: no delivery of seq %" PRIu64 " for uplink %" PRId64, seq,
				uplink);
			rc = -ENOENT;
			break;
		}
		int64_t delay = backoff_ms(s, attempts, retry_after_ms);
		bind3(sr, uplink, lane, seq);
		sqlite3_bind_int64(sr, 4, now_ms + delay);
		rc = step_done(s, sr, "ack retry");
		break;
	}
	case STORE_ACK_ERROR: {
		sqlite3_stmt *dl = stmt(s, ST_INS_DEAD);
		if (!dl) {
			rc = -EIO;
			break;
		}
		bind3(dl, uplink, lane, seq);
		bind_text(dl, 4, reason);
		sqlite3_bind_int64(dl, 5, now_ms);
		rc = step_done(s, dl, "dead letter");
		if (!rc)
			rc = drop_delivery(s, uplink, lane, seq);
		break;
	}
	default:
		rc = -EINVAL;
	}
	if (rc == -ENOENT || rc == -EINVAL) {
		/* nothing was written; the batch goes on */
		if (result != STORE_ACK_RETRY && s->n_tx_acks > 0 &&
		    s->tx_acks[s->n_tx_acks - 1].seq == seq) {
			s->n_tx_acks--;
			free(s->tx_acks[s->n_tx_acks].reason);
		}
		return rc;
	}
	if (rc) {
		tx_abort(s);
		return rc;
	}
	return batch_wrote(s, NULL);
}

/* ------------------------------------------------------------- recovery */

/* Inside a transaction: the held acks, then the held alarms. */
static int write_held(struct store *s)
{
	int rc = 0;
	for (size_t i = 0; !rc && s->held && i < HELD_SLOTS; i++) {
		struct held_ack *h = &s->held[i];
		if (!h->seq)
			continue;
		if (h->result == STORE_ACK_ERROR) {
			sqlite3_stmt *dl = stmt(s, ST_INS_DEAD);
			if (!dl)
				return -EIO;
			bind3(dl, h->uplink, h->lane, h->seq);
			bind_text(dl, 4, h->reason);
			sqlite3_bind_int64(dl, 5, cgw_now_ms());
			rc = step_done(s, dl, "dead letter");
		}
		if (!rc)
			rc = drop_delivery(s, h->uplink, h->lane, h->seq);
		if (rc == -ENOENT)
			rc = 0; /* gone meanwhile (evicted) */
	}
	for (size_t i = 0; !rc && i < s->n_mem; i++) {
		struct mem_alarm *a = &s->mem[i];
		struct store_msg m = {.lane = CGW_LANE_ALARM,
				      .device = a->device,
				      .topic = a->topic,
				      .ts_ms = a->ts_ms,
				      .payload = a->payload};
		int64_t t[STORE_MAX_UPLINKS];
		size_t nt = 0;
		for (size_t k = 0; k < a->n_owed; k++)
			if (reg_by_id(s, a->owed[k]))
				t[nt++] = a->owed[k];
		uint64_t sq = a->seq;
		if (nt)
			rc = insert_msg(s, &m, t, nt, &sq);
	}
	return rc;
}

static int mark_open(struct store *s);
static void close_db(struct store *s);
static int open_db(struct store *s, const char *path);

/* Started in memory (no file could be made): make the file now, with the
 * registered uplinks under the same ids. On failure, back to memory. */
static int put_uplinks(struct store *s)
{
	int rc = 0;
	for (size_t i = 0; !rc && i < s->n_up; i++) {
		sqlite3_stmt *st = NULL;
		rc = sqlite3_prepare_v2(s->db,
					"INSERT OR IGNORE INTO uplinks(id, name) VALUES(?1, ?2)",
					-1, &st, NULL);
		if (rc == SQLITE_OK) {
			sqlite3_bind_int64(st, 1, s->up[i].id);
			sqlite3_bind_text(st, 2, s->up[i].name, -1, SQLITE_STATIC);
			rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -EIO;
		} else {
			rc = -EIO;
		}
		sqlite3_finalize(st);
	}
	return rc;
}

static int move_to_file(struct store *s)
{
	close_db(s);
	s->in_memory_db = false;
	int rc = open_db(s, s->path);
	if (!rc)
		rc = exec(s, "BEGIN IMMEDIATE");
	if (!rc)
		rc = put_uplinks(s);
	if (!rc)
		rc = exec(s, "COMMIT");
	if (!rc) {
		sqlite3_wal_hook(s->db, wal_hook, s);
		return 0;
	}
	close_db(s);
	s->in_memory_db = true;
	if (open_db(s, ":memory:") == 0 && mark_open(s) == 0)
		put_uplinks(s);
	return -ENOSPC;
}

/* While in trouble, about once a second: if the filesystem has room again,
 * write what was held and go back to normal. */
static void probe(struct store *s)
{
	if (!troubled(s) || s->in_tx)
		return;
	int64_t now = cgw_mono_ms();
	if (now < s->probe_at)
		return;
	s->probe_at = now + STORE_PROBE_MS;
	if (s->disk_full || s->memory_only) {
		int64_t need = (s->o.min_free > 0 ? s->o.min_free : 0) +
			       (s->o.reserve_size > 0 ? s->o.reserve_size : 0) + 16 * PAGE_SIZE;
		int64_t fr = fs_free(s);
		if (fr >= 0 && fr < need)
			return; /* not yet: no flapping on the last few pages */
	}
	if (s->in_memory_db && move_to_file(s))
		return;
	if (s->memory_only) {
		if (mark_open(s))
			return;
		s->memory_only = false;
	}
	int rc = tx_begin(s, now);
	if (!rc)
		rc = write_held(s);
	if (!rc)
		rc = tx_commit(s, true);
	if (rc) {
		/* the held acks were not journalled in tx_acks and the held
		 * alarms are still in memory: nothing is lost */
		memset(s->tx_msgs, 0, sizeof(s->tx_msgs));
		tx_abort(s);
		return;
	}
	held_clear(s);
	while (s->n_mem)
		mem_drop(s, s->n_mem - 1);
	s->disk_full = false;
	reserve_make(s);
}

/* ----------------------------------------------------------- maintenance */

static int trim_table(struct store *s, const char *table, int keep)
{
	char sql[192];
	snprintf(
		sql, sizeof(sql),
		"DELETE FROM %s WHERE id <= (SELECT id FROM %s ORDER BY id DESC LIMIT 1 OFFSET %d)",
		table, table, keep);
	return exec(s, sql);
}

static int cmdid_trim(struct store *s, int64_t now_ms);

/* Expires telemetry in chunks (no transaction grows without bound) for at
 * most RETENTION_STEP_MS: a million expired rows must not stall the core
 * loop; store_flush() goes on with it (store_flush_deadline_ms() asks). */
static int expire_step(struct store *s)
{
	int64_t t0 = cgw_mono_ms();
	uint64_t n = 0;
	while (s->expire_more) {
		int rc = tx_begin(s, -1);
		if (!rc)
			rc = delete_oldest(s, CGW_LANE_TELEMETRY, RETENTION_CHUNK, s->expire_cutoff,
					   &n);
		if (!rc)
			rc = tx_commit(s, true);
		if (rc)
			return rc;
		s->expired_total += n;
		s->expired_unreported += n;
		/* a chunk may end short of RETENTION_CHUNK (the edge is the
		 * smallest of the uplinks'); go on while it deletes */
		s->expire_more = n > 0;
		if (cgw_mono_ms() - t0 >= RETENTION_STEP_MS)
			break;
	}
	return 0;
}

int store_maintain(struct store *s, int64_t now_ms, struct store_maint_report *r)
{
	struct store_maint_report dummy;
	int64_t pc = 0, fl = 0;
	int rc;

	if (!r)
		r = &dummy;
	memset(r, 0, sizeof(*r));
	rc = store_flush(s);
	if (rc)
		return rc;
	if (s->disk_full || s->memory_only)
		return 0; /* nothing is written but what store_flush() probes */

	/* Retention: a bounded step now, the rest from store_flush(). */
	if (s->o.telemetry_retention_ms > 0) {
		s->expire_cutoff = now_ms - s->o.telemetry_retention_ms;
		s->expire_more = true;
		rc = expire_step(s);
		if (rc)
			goto fail;
	}
	r->expired = s->expired_unreported;
	s->expired_unreported = 0;

	rc = tx_begin(s, -1);
	if (!rc)
		rc = trim_table(s, "dead_letter", STORE_DEAD_LETTER_KEEP);
	if (!rc)
		rc = trim_table(s, "quarantine", STORE_QUARANTINE_KEEP);
	if (!rc)
		rc = trim_table(s, "audit", STORE_AUDIT_KEEP);
	if (!rc)
		rc = cmdid_trim(s, now_ms);
	if (!rc)
		rc = trim_table(s, "alarm_history", STORE_HISTORY_KEEP);
	int64_t cap = cap_now(s);
	if (!rc && cap > 0) { /* a bounded step; store_flush() goes on with it */
		rc = evict_to(s, data_budget(s, cap) / 100 * TARGET_PCT,
			      cgw_mono_ms() + EVICT_STEP_MS, false);
		s->evict_at = cgw_mono_ms() + EVICT_GAP_MS;
	}
	if (!rc)
		rc = tx_commit(s, false);
	if (rc)
		goto fail;
	if (s->at_floor || s->disk_full)
		goto report; /* keep the room the files have: they could not grow back */

	/* Give free pages back to the file system once they are a good share
	 * of the file (they would be reused anyway), or when over the cap. */
	rc = cached_int(s, ST_PAGE_COUNT, &pc);
	if (!rc)
		rc = cached_int(s, ST_FREELIST, &fl);
	if (rc)
		goto fail;
	if (fl > 0 && (fl * 4 >= pc ||
		       (s->o.max_size > 0 && pc * PAGE_SIZE > s->o.max_size / 100 * TARGET_PCT))) {
		/* bounded: a few ms per maintenance; the next one goes on */
		rc = exec(s, pc * PAGE_SIZE > cap && cap > 0 ?
				     "PRAGMA incremental_vacuum(" CGW_STR(VACUUM_OVER_PAGES) ")" :
				     "PRAGMA incremental_vacuum(" CGW_STR(VACUUM_STEP_PAGES) ")");
		if (rc)
			goto fail;
	}
	/* The WAL file back to nothing: on the worker when there is one. */
	if (!ckpt_worker(s)) {
		rc = checkpoint(s, SQLITE_CHECKPOINT_TRUNCATE);
	} else {
		struct ckpt_worker *w = ckpt_worker(s);
		ckpt_collect(s);
		pthread_mutex_lock(&w->mu);
		w->want = w->want_truncate = true;
		pthread_cond_signal(&w->cv);
		pthread_mutex_unlock(&w->mu);
	}
	if (rc)
		goto fail;
	reserve_make(s);
report:;
	bool evicted_now = false;
	for (int l = 0; l < CGW_LANE_COUNT; l++) {
		r->evicted[l] = s->evicted_unreported[l];
		evicted_now |= s->evicted_unreported[l] > 0;
		s->evicted_unreported[l] = 0;
	}
	r->episode_started = s->episode_new;
	s->episode_new = false;
	if (s->evicting && !evicted_now) {
		s->evicting = false;
		r->episode_ended = true;
	}
	r->size_bytes = store_size_bytes(s);
	r->over_cap = cap > 0 && r->size_bytes > cap;
	return 0;
fail:
	tx_abort(s);
	return rc;
}

/* ----------------------------------------------------------------- stats */

const char *store_state_name(enum store_state st)
{
	switch (st) {
	case STORE_OK:
		return "ok";
	case STORE_AT_CAP:
		return "at_cap";
	case STORE_DISK_FULL:
		return "disk_full";
	case STORE_MEMORY_ONLY:
		return "memory_only";
	}
	return "?";
}

enum store_state store_state(const struct store *s)
{
	if (s->memory_only)
		return STORE_MEMORY_ONLY;
	if (s->disk_full || s->n_mem)
		return STORE_DISK_FULL;
	if (s->evicting || s->at_floor)
		return STORE_AT_CAP;
	return STORE_OK;
}

const char *store_trouble(const struct store *s)
{
	return s->trouble[0] ? s->trouble : "no trouble";
}

/* The head of one (uplink, lane), through the delivery key: one seek. */
static void lane_head(struct store *s, int64_t uplink, enum cgw_lane lane, struct lane_cnt *c)
{
	sqlite3_stmt *st = stmt(s, ST_OLDEST);
	if (!st)
		return;
	sqlite3_bind_int64(st, 1, uplink);
	sqlite3_bind_int(st, 2, lane);
	if (sqlite3_step(st) == SQLITE_ROW) {
		c->oldest_seq = (uint64_t)sqlite3_column_int64(st, 0);
		c->oldest_ts = sqlite3_column_int64(st, 1);
		c->oldest_ok = true;
	}
	sqlite3_reset(st);
}

int store_stats(struct store *s, struct store_stats *st)
{
	int64_t pc = 0, v = 0;
	memset(st, 0, sizeof(*st));
	int rc = cached_int(s, ST_PAGE_COUNT, &pc);
	if (rc)
		return rc;
	st->state = store_state(s);
	st->db_bytes = pc * PAGE_SIZE;
	st->wal_bytes = wal_size(s);
	st->shm_bytes = shm_size(s);
	st->fs_free_bytes = fs_free(s);
	st->min_free = s->o.min_free;
	st->reserve_bytes = s->reserve_held;
	st->reserve_size = s->o.reserve_size;
	st->alarms_in_memory = s->n_mem;
	st->alarms_in_memory_total = s->mem_total;
	st->acks_held = s->n_held;
	memcpy(st->lost, s->lost, sizeof(st->lost));
	st->disk_full_episodes = s->disk_full_episodes;
	st->ckpt_max_us = s->ckpt_max_us;
	st->max_size = s->o.max_size;
	memcpy(st->evicted, s->evicted_total, sizeof(st->evicted));
	st->expired = s->expired_total;
	st->seq_high = s->last_seq > s->committed_seq ? s->last_seq : s->committed_seq;
	if (s->seq_floor > st->seq_high)
		st->seq_high = s->seq_floor;
	/* bounded table (STORE_DEAD_LETTER_KEEP rows) */
	rc = query_int(s, "SELECT count(*) FROM dead_letter", &v);
	if (rc)
		return rc;
	st->dead_letters = (uint64_t)v;

	for (size_t i = 0; i < s->n_up; i++) {
		struct store_uplink_stats *u = &st->uplink[i];
		struct reg_uplink *r = &s->up[i];
		u->id = r->id;
		snprintf(u->name, sizeof(u->name), "%s", r->name);
		for (int l = 0; l < CGW_LANE_COUNT; l++) {
			struct lane_cnt *c = &r->cnt[l];
			int64_t d = c->depth + c->delta;
			u->lane[l].depth = d > 0 ? (uint64_t)d : 0;
			u->lane[l].oldest_ts_ms = -1;
			if (d > 0 && !c->oldest_ok)
				lane_head(s, r->id, l, c);
			if (d > 0 && c->oldest_ok)
				u->lane[l].oldest_ts_ms = c->oldest_ts;
		}
		/* alarms held in memory wait in the alarm lane too */
		for (size_t k = 0; k < s->n_mem; k++) {
			const struct mem_alarm *a = &s->mem[k];
			if (mem_owed(a, r->id) < 0)
				continue;
			struct store_lane_stats *ls = &u->lane[CGW_LANE_ALARM];
			ls->depth++;
			if (ls->oldest_ts_ms < 0 || a->ts_ms < ls->oldest_ts_ms)
				ls->oldest_ts_ms = a->ts_ms;
		}
	}
	st->n_uplinks = s->n_up;
	return 0;
}

/* ---------------------------------------------------------- latest values */

static int read_latest(sqlite3_stmt *st, int col, struct store_latest *l, bool own);

/* One row of the latest table, joining the batch. */
static int put_latest_row(struct store *s, const char *device, const char *point,
			  const struct cgw_value *v, enum cgw_quality q, int64_t ts_ms,
			  int64_t mono_ms)
{
	int rc = tx_begin(s, mono_ms);
	if (rc)
		return rc;
	sqlite3_stmt *st = stmt(s, ST_PUT_LATEST);
	if (!st) {
		tx_abort(s);
		return -EIO;
	}
	sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, point, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 3, v->type);
	switch (v->type) {
	case CGW_V_BOOL:
		sqlite3_bind_int(st, 4, v->b);
		break;
	case CGW_V_INT:
		sqlite3_bind_int64(st, 4, v->i);
		break;
	case CGW_V_UINT: /* the bit pattern; vtype says how to read it back */
		sqlite3_bind_int64(st, 4, (int64_t)v->u);
		break;
	case CGW_V_DOUBLE: /* SQLite turns NaN into NULL; read back as NaN */
		sqlite3_bind_double(st, 4, v->d);
		break;
	case CGW_V_STRING:
		bind_text(st, 4, v->s);
		break;
	default:
		sqlite3_bind_null(st, 4);
	}
	sqlite3_bind_int(st, 5, q);
	sqlite3_bind_int64(st, 6, ts_ms);
	rc = step_done(s, st, "put latest");
	if (rc) {
		tx_abort(s);
		return rc;
	}
	return batch_wrote(s, NULL);
}

int store_put_latest(struct store *s, const char *device, const char *point,
		     const struct cgw_value *v, enum cgw_quality q, int64_t ts_ms, int64_t mono_ms)
{
	if (!device || !point || !v)
		return -EINVAL;
	int rc = latest_set(s->latest, device, point, v, q, ts_ms, true);
	if (rc == 0) {
		if (s->latest_due < 0)
			s->latest_due =
				(mono_ms >= 0 ? mono_ms : cgw_mono_ms()) + STORE_LATEST_WRITE_MS;
		return 0;
	}
	if (rc != -ENOSPC)
		return rc;
	/* more points than the map holds: this one goes to the table now */
	s->latest_partial = true;
	return put_latest_row(s, device, point, v, q, ts_ms, mono_ms);
}

/* Writes the dirty latest entries down, in key order (one page of the
 * table for many points), LATEST_STEP_ROWS per call unless `all`. Only
 * while data can be written; the entries stay dirty otherwise. */
static int latest_step(struct store *s, int64_t mono_ms, bool all)
{
	int rc = 0;

	if (s->disk_full || s->memory_only || !s->latest)
		return 0;
	if (!s->lw && latest_dirty_count(s->latest) &&
	    (all || (s->latest_due >= 0 && mono_ms >= s->latest_due))) {
		rc = latest_collect(s->latest, NULL, true, &s->lw, &s->lw_n);
		if (rc)
			return rc;
		s->lw_i = 0;
		s->latest_due = -1;
	}
	if (!s->lw)
		return 0;
	size_t stop = all || s->lw_n - s->lw_i < LATEST_STEP_ROWS ? s->lw_n :
								    s->lw_i + LATEST_STEP_ROWS;
	for (; s->lw_i < stop; s->lw_i++) {
		const struct latest_entry *e = s->lw[s->lw_i];
		if (!e->dirty)
			continue;
		rc = put_latest_row(s, e->device, e->point, &e->value, e->quality, e->ts_ms,
				    mono_ms);
		if (rc)
			return rc; /* the rest of the walk waits for the next turn */
		latest_written(s->latest, e);
		s->tx_latest++;
		s->latest_written_total++;
	}
	free(s->lw);
	s->lw = NULL;
	s->lw_n = s->lw_i = 0;
	if (latest_dirty_count(s->latest) && s->latest_due < 0)
		s->latest_due = mono_ms + STORE_LATEST_WRITE_MS;
	return 0;
}

/* At open: the table into the map (clean). A table larger than the map
 * leaves it partial: lookups then fall back to the table. */
static int latest_load(struct store *s)
{
	sqlite3_stmt *st = NULL;
	int rc = latest_new(s->o.latest_max ? s->o.latest_max : LATEST_MAX, &s->latest);

	s->latest_due = -1;
	if (rc)
		return rc;
	rc = sqlite3_prepare_v2(s->db,
				"SELECT device, point, vtype, value, quality, ts_ms FROM latest",
				-1, &st, NULL);
	if (rc != SQLITE_OK)
		return db_fail(s, "latest", rc);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_latest l;
		const char *dev = (const char *)sqlite3_column_text(st, 0);
		const char *pt = (const char *)sqlite3_column_text(st, 1);
		if (!dev || !pt)
			continue;
		read_latest(st, 2, &l, false);
		int r = latest_set(s->latest, dev, pt, &l.value, l.quality, l.ts_ms, false);
		if (r == -ENOSPC) {
			s->latest_partial = true;
			break;
		}
		if (r) {
			sqlite3_finalize(st);
			return r;
		}
	}
	rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : db_fail(s, "latest", rc);
	sqlite3_finalize(st);
	return rc;
}

/* Reads columns (vtype, value, quality, ts) starting at col into l. The
 * string is copied when own is set, else points into the statement. */
static int read_latest(sqlite3_stmt *st, int col, struct store_latest *l, bool own)
{
	int t = sqlite3_column_int(st, col);
	bool null = sqlite3_column_type(st, col + 1) == SQLITE_NULL;
	memset(&l->value, 0, sizeof(l->value));
	l->value.type = CGW_V_NONE;
	switch (t) {
	case CGW_V_BOOL:
		l->value.type = CGW_V_BOOL;
		l->value.b = sqlite3_column_int(st, col + 1) != 0;
		break;
	case CGW_V_INT:
		l->value.type = CGW_V_INT;
		l->value.i = sqlite3_column_int64(st, col + 1);
		break;
	case CGW_V_UINT:
		l->value.type = CGW_V_UINT;
		l->value.u = (uint64_t)sqlite3_column_int64(st, col + 1);
		break;
	case CGW_V_DOUBLE:
		l->value.type = CGW_V_DOUBLE;
		l->value.d = null ? NAN : sqlite3_column_double(st, col + 1);
		break;
	case CGW_V_STRING: {
		const char *txt = (const char *)sqlite3_column_text(st, col + 1);
		if (!txt)
			txt = "";
		l->value.type = CGW_V_STRING;
		l->value.s = own ? strdup(txt) : (char *)txt;
		if (!l->value.s) {
			l->value.type = CGW_V_NONE;
			return -ENOMEM;
		}
		break;
	}
	default:
		break;
	}
	int qq = sqlite3_column_int(st, col + 2);
	l->quality = qq == CGW_Q_BAD ? CGW_Q_BAD : qq == CGW_Q_STALE ? CGW_Q_STALE : CGW_Q_GOOD;
	l->ts_ms = sqlite3_column_int64(st, col + 3);
	return 0;
}

int store_get_latest(struct store *s, const char *device, const char *point,
		     struct store_latest *out)
{
	memset(out, 0, sizeof(*out));
	if (!device || !point)
		return -EINVAL;
	const struct latest_entry *e = latest_get(s->latest, device, point);
	if (e) {
		if (cgw_value_copy(&out->value, &e->value) < 0)
			return -ENOMEM;
		out->quality = e->quality;
		out->ts_ms = e->ts_ms;
		return 0;
	}
	if (!s->latest_partial)
		return -ENOENT;
	sqlite3_stmt *st = stmt(s, ST_GET_LATEST);
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, point, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	int ret = 0;
	if (rc == SQLITE_ROW)
		ret = read_latest(st, 0, out, true);
	else if (rc == SQLITE_DONE)
		ret = -ENOENT;
	else
		ret = db_fail(s, "get latest", rc);
	sqlite3_reset(st);
	out->device = NULL;
	out->point = NULL;
	return ret;
}

int store_latest_foreach(struct store *s, const char *device,
			 int (*cb)(void *ctx, const struct store_latest *l), void *ctx)
{
	if (!s->latest_partial) {
		const struct latest_entry **v;
		size_t n;
		int ret = latest_collect(s->latest, device, false, &v, &n);
		for (size_t i = 0; !ret && i < n; i++) {
			struct store_latest l = {.device = v[i]->device,
						 .point = v[i]->point,
						 .value = v[i]->value,
						 .quality = v[i]->quality,
						 .ts_ms = v[i]->ts_ms};
			ret = cb(ctx, &l);
		}
		free(v);
		return ret;
	}
	/* the map is not all of it: the table, with what is dirty written in */
	int wr = latest_step(s, cgw_mono_ms(), true);
	if (wr)
		return wr;
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(s->db,
				    "SELECT device, point, vtype, value, quality, ts_ms FROM latest"
				    " WHERE ?1 IS NULL OR device = ?1 ORDER BY device, point",
				    -1, &st, NULL);
	if (rc != SQLITE_OK)
		return db_fail(s, "latest", rc);
	bind_text(st, 1, device);
	int ret = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_latest l;
		read_latest(st, 2, &l, false);
		l.device = (const char *)sqlite3_column_text(st, 0);
		l.point = (const char *)sqlite3_column_text(st, 1);
		ret = cb(ctx, &l);
		if (ret)
			break;
	}
	if (!ret && rc != SQLITE_DONE)
		ret = db_fail(s, "latest", rc);
	sqlite3_finalize(st);
	return ret;
}

/* ---------------------------------------------------------------- alarms */

int store_alarm_put(struct store *s, const struct store_alarm *a)
{
	if (!a || !a->alarm_id || !a->device || !a->rule || !a->state || !a->severity)
		return -EINVAL;
	int rc = tx_begin(s, -1);
	if (rc)
		return rc;
	sqlite3_stmt *st = stmt(s, ST_PUT_ALARM);
	if (!st) {
		tx_abort(s);
		return -EIO;
	}
	sqlite3_bind_text(st, 1, a->alarm_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a->device, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, a->rule, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, a->state, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, a->severity, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, a->raised_at_ms);
	sqlite3_bind_int64(st, 7, a->updated_at_ms);
	bind_text(st, 8, a->value_json);
	sqlite3_bind_int(st, 9, a->latched);
	sqlite3_bind_int(st, 10, a->shelved);
	sqlite3_bind_int64(st, 11, (int64_t)a->last_seq);
	rc = step_done(s, st, "put alarm");
	if (rc) {
		tx_abort(s);
		return rc;
	}
	return batch_wrote(s, NULL);
}

int store_alarm_delete(struct store *s, const char *alarm_id)
{
	if (!alarm_id)
		return -EINVAL;
	int rc = tx_begin(s, -1);
	if (rc)
		return rc;
	sqlite3_stmt *st = stmt(s, ST_DEL_ALARM);
	if (!st) {
		tx_abort(s);
		return -EIO;
	}
	sqlite3_bind_text(st, 1, alarm_id, -1, SQLITE_STATIC);
	rc = step_done(s, st, "delete alarm");
	if (rc) {
		tx_abort(s);
		return rc;
	}
	if (sqlite3_changes(s->db) == 0)
		return -ENOENT;
	return batch_wrote(s, NULL);
}

int store_alarm_foreach(struct store *s, int (*cb)(void *ctx, const struct store_alarm *a),
			void *ctx)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(s->db,
				    "SELECT alarm_id, device, rule, state, severity, raised_at,"
				    " updated_at, value, latched, shelved, last_seq FROM alarms"
				    " ORDER BY raised_at, alarm_id",
				    -1, &st, NULL);
	if (rc != SQLITE_OK)
		return db_fail(s, "alarms", rc);
	int ret = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_alarm a = {
			.alarm_id = (const char *)sqlite3_column_text(st, 0),
			.device = (const char *)sqlite3_column_text(st, 1),
			.rule = (const char *)sqlite3_column_text(st, 2),
			.state = (const char *)sqlite3_column_text(st, 3),
			.severity = (const char *)sqlite3_column_text(st, 4),
			.raised_at_ms = sqlite3_column_int64(st, 5),
			.updated_at_ms = sqlite3_column_int64(st, 6),
			.value_json = (const char *)sqlite3_column_text(st, 7),
			.latched = sqlite3_column_int(st, 8) != 0,
			.shelved = sqlite3_column_int(st, 9) != 0,
			.last_seq = (uint64_t)sqlite3_column_int64(st, 10),
		};
		ret = cb(ctx, &a);
		if (ret)
			break;
	}
	if (!ret && rc != SQLITE_DONE)
		ret = db_fail(s, "alarms", rc);
	sqlite3_finalize(st);
	return ret;
}

/* ----------------------------------------------------------------- audit */

int store_audit_add(struct store *s, const struct store_audit *a)
{
	if (!a || !a->source || !a->command_id || !a->action)
		return -EINVAL;
	int rc = tx_begin(s, -1);
	if (rc)
		return rc;
	sqlite3_stmt *st = stmt(s, ST_INS_AUDIT);
	if (!st) {
		tx_abort(s);
		return -EIO;
	}
	sqlite3_bind_int64(st, 1, a->ts_ms);
	sqlite3_bind_text(st, 2, a->source, -1, SQLITE_STATIC);
	bind_text(st, 3, a->device);
	sqlite3_bind_text(st, 4, a->command_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, a->action, -1, SQLITE_STATIC);
	bind_text(st, 6, a->request_json);
	bind_text(st, 7, a->result);
	bind_text(st, 8, a->detail);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	if ((rc & 0xff) == SQLITE_CONSTRAINT) {
		/* The statement is undone alone; the batch goes on. */
		set_err(s, "audit: duplicate command id '%s' from %s", a->command_id, a->source);
		return -EEXIST;
	}
	if (rc != SQLITE_DONE) {
		rc = db_fail(s, "audit", rc);
		tx_abort(s);
		return rc;
	}
	return tx_commit(s, true);
}

int store_audit_result(struct store *s, const char *source, const char *command_id,
		       const char *result, const char *detail)
{
	if (!source || !command_id)
		return -EINVAL;
	int rc = tx_begin(s, -1);
	if (rc)
		return rc;
	sqlite3_stmt *st = stmt(s, ST_UPD_AUDIT);
	if (!st) {
		tx_abort(s);
		return -EIO;
	}
	sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, command_id, -1, SQLITE_STATIC);
	bind_text(st, 3, result);
	bind_text(st, 4, detail);
	rc = step_done(s, st, "audit result");
	if (rc) {
		tx_abort(s);
		return rc;
	}
	bool found = sqlite3_changes(s->db) > 0;
	rc = tx_commit(s, true);
	return rc ? rc : found ? 0 : -ENOENT;
}

/* ------------------------------------------------------------ quarantine */

int store_quarantine(struct store *s, int64_t ts_ms, const char *bus, const char *device,
		     const char *topic, const char *reason, const void *payload, size_t len,
		     int64_t mono_ms)
{
	if (!payload && len)
		return -EINVAL;
	int rc = tx_begin(s, mono_ms);
	if (rc)
		return rc;
	sqlite3_stmt *st = stmt(s, ST_INS_QUAR);
	if (!st) {
		tx_abort(s);
		return -EIO;
	}
	size_t keep = len < STORE_QUARANTINE_MAX_PAYLOAD ? len : STORE_QUARANTINE_MAX_PAYLOAD;
	sqlite3_bind_int64(st, 1, ts_ms);
	bind_text(st, 2, bus);
	bind_text(st, 3, device);
	bind_text(st, 4, topic);
	bind_text(st, 5, reason);
	sqlite3_bind_blob(st, 6, payload ? payload : "", (int)keep, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, len > INT64_MAX ? INT64_MAX : (int64_t)len);
	rc = step_done(s, st, "quarantine");
	if (rc) {
		tx_abort(s);
		return rc;
	}
	return batch_wrote(s, NULL);
}

/* ------------------------------------------------------------------ meta */

int store_meta_get(struct store *s, const char *key, char *buf, size_t len)
{
	if (!key || !buf || !len)
		return -EINVAL;
	sqlite3_stmt *st = stmt(s, ST_META_GET);
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st), ret = 0;
	if (rc == SQLITE_ROW) {
		const char *v = (const char *)sqlite3_column_text(st, 0);
		if (!v)
			v = "";
		if (strlen(v) >= len)
			ret = -ENOSPC;
		else
			memcpy(buf, v, strlen(v) + 1);
	} else if (rc == SQLITE_DONE) {
		ret = -ENOENT;
	} else {
		ret = db_fail(s, "meta", rc);
	}
	sqlite3_reset(st);
	return ret;
}

int store_meta_set(struct store *s, const char *key, const char *value)
{
	if (!key)
		return -EINVAL;
	int rc = tx_begin(s, -1);
	if (rc)
		return rc;
	sqlite3_stmt *st = stmt(s, ST_META_SET);
	if (!st) {
		tx_abort(s);
		return -EIO;
	}
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	bind_text(st, 2, value);
	rc = step_done(s, st, "meta");
	if (rc) {
		tx_abort(s);
		return rc;
	}
	return batch_wrote(s, NULL);
}

/* ----------------------------------------------------------- command ids */

/* Executed ids go by age only; refused ones also by count, so that no
 * number of refused commands can push an executed id out. */
static int cmdid_trim(struct store *s, int64_t now_ms)
{
	char sql[256];
	int rc;

	snprintf(sql, sizeof(sql), "DELETE FROM command_ids WHERE kept IN (0, 1) AND ts_ms < %lld",
		 (long long)(now_ms - STORE_CMDID_RETENTION_MS));
	rc = exec(s, sql);
	if (rc)
		return rc;
	snprintf(sql, sizeof(sql),
		 "DELETE FROM command_ids WHERE kept = 0 AND ts_ms <= (SELECT ts_ms FROM"
		 " command_ids WHERE kept = 0 ORDER BY ts_ms DESC LIMIT 1 OFFSET %d)",
		 STORE_CMDID_REFUSED_KEEP);
	return exec(s, sql);
}

static void copy_col(sqlite3_stmt *st, int col, char *buf, size_t len)
{
	const unsigned char *t = sqlite3_column_text(st, col);

	snprintf(buf, len, "%s", t ? (const char *)t : "");
}

int store_cmdid_claim(struct store *s, const char *source, const char *command_id, int64_t now_ms,
		      struct store_cmdid *first)
{
	sqlite3_stmt *st;
	int rc;

	if (!source || !command_id)
		return -EINVAL;
	st = stmt(s, ST_GET_CMDID);
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, command_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		if (first) {
			first->ts_ms = sqlite3_column_int64(st, 0);
			copy_col(st, 1, first->result, sizeof(first->result));
			copy_col(st, 2, first->detail, sizeof(first->detail));
		}
		sqlite3_reset(st);
		return -EEXIST;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		return db_fail(s, "command ids", rc);
	rc = tx_begin(s, -1);
	if (rc)
		return rc;
	st = stmt(s, ST_INS_CMDID);
	if (!st) {
		tx_abort(s);
		return -EIO;
	}
	sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, command_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, now_ms);
	rc = step_done(s, st, "command ids");
	if (rc) {
		tx_abort(s);
		return rc;
	}
	/* committed before the command acts: a crash cannot make it run twice */
	return tx_commit(s, true);
}

int store_cmdid_result(struct store *s, const char *source, const char *command_id,
		       const char *result, const char *detail)
{
	sqlite3_stmt *st;
	int rc;

	if (!source || !command_id || !result)
		return -EINVAL;
	rc = tx_begin(s, -1);
	if (rc)
		return rc;
	st = stmt(s, ST_UPD_CMDID);
	if (!st) {
		tx_abort(s);
		return -EIO;
	}
	sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, command_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, result, -1, SQLITE_STATIC);
	bind_text(st, 4, detail);
	sqlite3_bind_int(st, 5, strcmp(result, "rejected") != 0);
	rc = step_done(s, st, "command ids");
	if (rc) {
		tx_abort(s);
		return rc;
	}
	/* joins the batch: the outcome is also in the result message and the
	 * audit; what must be durable at once is the claim */
	return batch_wrote(s, NULL);
}

int store_recent(struct store *s, const char *table, unsigned limit,
		 int (*cb)(void *ctx, const struct store_col *cols, size_t ncols), void *ctx)
{
	static const char *const tables[] = {"audit", "quarantine", "dead_letter"};
	struct store_col cols[16];
	sqlite3_stmt *st = NULL;
	char sql[96];
	bool known = false;
	int rc;

	for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++)
		known |= table && !strcmp(table, tables[i]);
	if (!s || !known || limit < 1 || limit > 1000 || !cb)
		return -EINVAL;
	snprintf(sql, sizeof(sql), "SELECT * FROM %s ORDER BY id DESC LIMIT ?1", table);
	rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return db_fail(s, sql, rc);
	sqlite3_bind_int(st, 1, (int)limit);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int n = sqlite3_column_count(st);
		if (n > 16)
			n = 16;
		for (int c = 0; c < n; c++) {
			struct store_col *col = &cols[c];
			col->name = sqlite3_column_name(st, c);
			col->type = sqlite3_column_type(st, c);
			col->i = 0;
			col->p = NULL;
			col->len = 0;
			if (col->type == SQLITE_INTEGER) {
				col->i = sqlite3_column_int64(st, c);
			} else if (col->type == SQLITE_TEXT || col->type == SQLITE_BLOB) {
				col->p = col->type == SQLITE_TEXT ?
						 (const void *)sqlite3_column_text(st, c) :
						 sqlite3_column_blob(st, c);
				col->len = (size_t)sqlite3_column_bytes(st, c);
			} else if (col->type == SQLITE_FLOAT) {
				col->type = SQLITE_INTEGER; /* no REAL columns in these tables */
				col->i = (int64_t)sqlite3_column_double(st, c);
			}
		}
		if (cb(ctx, cols, (size_t)n))
			break;
	}
	rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
	sqlite3_finalize(st);
	return rc == SQLITE_OK ? 0 : db_fail(s, sql, rc);
}

/* ---------------------------------------------------------- dead letters */

/* A replayed dead letter becomes a new message (a new seq, so the uplink's
 * cursor, long past the old one, finds it; its "ts" is the original, so it
 * goes out marked "delayed") for the one uplink that refused it, which must
 * still be registered for its lane. The dead letter is deleted in the same
 * transaction. insert_msg() is the enqueue path's own insert. */
int store_dead_letter_replay(struct store *s, int64_t id, uint64_t *replayed, uint64_t *skipped)
{
	sqlite3_stmt *st = NULL, *del = NULL;
	uint64_t n = 0, skip = 0;
	int rc = tx_commit(s, true); /* the pending batch first, on its own */

	*replayed = *skipped = 0;
	if (rc)
		return rc;
	if (s->disk_full || s->memory_only) {
		set_err(s, "replay: the store cannot write now (disk full)");
		return -ENOSPC;
	}
	rc = sqlite3_prepare_v2(s->db,
				"SELECT d.id, u.name, d.lane, d.device, d.topic, d.ts_ms, d.payload"
				" FROM dead_letter d LEFT JOIN uplinks u ON u.id = d.uplink"
				" WHERE ?1 <= 0 OR d.id = ?1 ORDER BY d.id",
				-1, &st, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(s->db, "DELETE FROM dead_letter WHERE id = ?1", -1, &del,
					NULL);
	if (rc != SQLITE_OK) {
		rc = db_fail(s, "replay", rc);
		goto out;
	}
	sqlite3_bind_int64(st, 1, id);
	rc = tx_begin(s, -1);
	if (rc)
		goto out;
	int step;
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		const char *up = (const char *)sqlite3_column_text(st, 1);
		int lane = sqlite3_column_int(st, 2);
		struct reg_uplink *r = up ? reg_find(s, up) : NULL;
		uint64_t seq = 0; /* a new one */

		if (!r || lane < 0 || lane >= CGW_LANE_COUNT || !(r->mask & (1u << lane))) {
			skip++; /* that uplink is gone, or no longer takes the lane */
			continue;
		}
		struct store_msg m = {
			.lane = (enum cgw_lane)lane,
			.device = (const char *)sqlite3_column_text(st, 3),
			.topic = (const char *)sqlite3_column_text(st, 4),
			.ts_ms = sqlite3_column_int64(st, 5),
			.payload = (const char *)sqlite3_column_text(st, 6),
		};
		if (!m.topic || !m.payload) {
			skip++;
			continue;
		}
		rc = insert_msg(s, &m, &r->id, 1, &seq);
		if (!rc) {
			sqlite3_bind_int64(del, 1, sqlite3_column_int64(st, 0));
			rc = step_done(s, del, "replay");
		}
		if (rc)
			break;
		n++;
	}
	if (!rc && step != SQLITE_DONE && step != SQLITE_ROW)
		rc = db_fail(s, "replay", step);
	sqlite3_reset(st);
	if (!rc)
		rc = tx_commit(s, true);
	else
		tx_abort(s);
	if (!rc) {
		*replayed = n;
		*skipped = skip;
	}
out:
	sqlite3_finalize(st);
	sqlite3_finalize(del);
	return rc;
}

/* ----------------------------------------------------------- alarm history */

int store_history_add(struct store *s, const struct store_history *h)
{
	static const char sql[] =
		"INSERT INTO alarm_history(ts_ms, alarm_id, device, building, rule, event, state,"
		" severity, by_who, message) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
	sqlite3_stmt *st = NULL;
	int rc;

	if (!h || !h->alarm_id || !h->device || !h->rule || !h->event || !h->state || !h->severity)
		return -EINVAL;
	rc = tx_begin(s, cgw_mono_ms());
	if (rc)
		return rc;
	rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return db_fail(s, "history", rc);
	sqlite3_bind_int64(st, 1, h->ts_ms);
	sqlite3_bind_text(st, 2, h->alarm_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, h->device, -1, SQLITE_STATIC);
	bind_text(st, 4, h->building);
	sqlite3_bind_text(st, 5, h->rule, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, h->event, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 7, h->state, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 8, h->severity, -1, SQLITE_STATIC);
	bind_text(st, 9, h->by);
	bind_text(st, 10, h->message);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return db_fail(s, "history", rc);
	return batch_wrote(s, NULL);
}

static const char *col_text(sqlite3_stmt *st, int i)
{
	return (const char *)sqlite3_column_text(st, i);
}

int store_history_query(struct store *s, const struct store_history_filter *f,
			int (*cb)(void *ctx, const struct store_history *h), void *ctx)
{
	static const char sql[] =
		"SELECT ts_ms, alarm_id, device, building, rule, event, state, severity, by_who,"
		" message FROM alarm_history WHERE (?1 IS NULL OR device = ?1)"
		" AND (?2 IS NULL OR building = ?2) AND (?3 IS NULL OR severity = ?3)"
		" AND ts_ms >= ?4 AND ts_ms < ?5 ORDER BY id DESC LIMIT ?6";
	sqlite3_stmt *st = NULL;
	int rc, r = 0;

	rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return db_fail(s, "history", rc);
	bind_text(st, 1, f->device);
	bind_text(st, 2, f->building);
	bind_text(st, 3, f->severity);
	sqlite3_bind_int64(st, 4, f->from_ms);
	sqlite3_bind_int64(st, 5, f->to_ms > 0 ? f->to_ms : INT64_MAX);
	sqlite3_bind_int64(st, 6, f->limit > 0 ? (int64_t)f->limit : STORE_HISTORY_KEEP);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_history h = {
			.ts_ms = sqlite3_column_int64(st, 0),
			.alarm_id = col_text(st, 1),
			.device = col_text(st, 2),
			.building = col_text(st, 3),
			.rule = col_text(st, 4),
			.event = col_text(st, 5),
			.state = col_text(st, 6),
			.severity = col_text(st, 7),
			.by = col_text(st, 8),
			.message = col_text(st, 9),
		};
		r = cb(ctx, &h);
		if (r)
			break;
	}
	if (!r && rc != SQLITE_DONE)
		r = db_fail(s, "history", rc);
	sqlite3_finalize(st);
	return r;
}

/* Ids for the birth and will when nothing can be written: past every seq
 * handed out (seq_floor moves past them, as for held alarms). A close in
 * this state is not marked clean, so the next open skips past them too. */
static void reserve_in_memory(struct store *s, unsigned n, uint64_t *first, uint64_t *session)
{
	char buf[32];

	*first = next_seq(s);
	s->seq_floor = *first + n - 1;
	if (session) {
		if (!s->session && store_meta_get(s, "session", buf, sizeof(buf)) == 0)
			s->session = strtoull(buf, NULL, 10);
		*session = ++s->session;
	}
}

int store_reserve_ids(struct store *s, unsigned n, uint64_t *first, uint64_t *session)
{
	char sql[160], buf[32];
	uint64_t sess = 0, base;
	int rc;

	if (!n || !first)
		return -EINVAL;
	if (troubled(s)) {
		reserve_in_memory(s, n, first, session);
		return 0;
	}
	rc = tx_begin(s, -1);
	if (rc)
		goto memory;
	/* past what this batch inserted and what was handed out from memory */
	base = next_seq(s) - 1;
	snprintf(sql, sizeof(sql), "UPDATE sqlite_sequence SET seq = %llu WHERE name = 'msg'",
		 (unsigned long long)(base + n));
	rc = exec(s, sql);
	if (!rc && sqlite3_changes(s->db) == 0) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO sqlite_sequence(name, seq) VALUES('msg', %llu)",
			 (unsigned long long)(base + n));
		rc = exec(s, sql);
	}
	if (!rc && session) {
		if (store_meta_get(s, "session", buf, sizeof(buf)) == 0)
			sess = strtoull(buf, NULL, 10);
		if (s->session > sess)
			sess = s->session; /* counted in memory while the disk was full */
		snprintf(buf, sizeof(buf), "%llu", (unsigned long long)(sess + 1));
		rc = store_meta_set(s, "session", buf);
	}
	if (rc)
		goto memory;
	s->last_seq = base + n;
	rc = tx_commit(s, false);
	if (rc)
		goto memory; /* the batch is counted as lost by the commit */
	*first = base + 1;
	if (session)
		*session = s->session = sess + 1;
	return 0;
memory:
	/* a failed write aborts the batch the normal way (counted, acks held) */
	tx_abort(s);
	reserve_in_memory(s, n, first, session);
	return 0;
}
