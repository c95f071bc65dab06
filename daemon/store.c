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
 * alarm commit only marks the checkpoint as due.
 */
#include "store.h"

#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_BATCH_ROWS 512
#define DEFAULT_BUSY_MS 5000
#define PAGE_SIZE 4096
#define WAL_CKPT_PAGES_MAX 1000 /* SQLite's own default */
#define WAL_CKPT_PAGES_MIN 4
#define ADMIT_EVERY 32 /* size check every N non-alarm writes */
#define SOFT_PCT 90    /* non-alarm writes stop (or evict) above this % of the cap */
#define TARGET_PCT 85  /* eviction brings the store down to this % */
#define EVICT_CHUNK_MAX 20000
#define RETENTION_CHUNK 5000
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
	ST_COUNT
};

static const char *const sql_text[ST_COUNT] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_INS_MSG] = "INSERT INTO msg(lane, device, topic, ts_ms, payload, pending)"
		       " VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
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
	[ST_EVICT_DELIV] = "DELETE FROM delivery WHERE uplink IN (SELECT id FROM uplinks)"
			   " AND lane = ?1 AND seq <= ?2",
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
};
#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))
_Static_assert(N_MIGRATIONS == STORE_SCHEMA_VERSION, "one migration per schema version");

struct reg_uplink {
	int64_t id;
	unsigned mask;
	char name[NAME_MAX_LEN + 1];
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
	bool evicting;    /* inside an eviction episode */
	bool episode_new; /* it started since the last store_maintain() */

	int64_t avg_row_bytes; /* running average cost of one stored message */
	uint64_t rng;
	bool ready; /* opened: close may write the clean mark */
};

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
static int db_fail(struct store *s, const char *what, int rc)
{
	set_err(s, "%s: %s: %s", s->path, what, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
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
	/* Never wait for a reader here: it is the core loop. */
	sqlite3_busy_timeout(s->db, 0);
	int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, mode, &log, &done);
	sqlite3_busy_timeout(s->db, (int)s->o.busy_timeout_ms);
	s->ckpt_due = false;
	if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
		return 0; /* a reader holds the WAL; next time */
	if (rc != SQLITE_OK)
		return db_fail(s, "checkpoint", rc);
	s->wal_frames = log > done ? log - done : 0;
	return 0;
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
		return rc;
	}
	s->in_tx = false;
	s->pending = 0;
	s->committed_seq = s->last_seq;
	if (s->wal_frames >= s->ckpt_pages) {
		/* A failed checkpoint is not a failed commit: it is retried
		 * after the next commit and reported by store_maintain(). */
		if (may_checkpoint)
			checkpoint(s, SQLITE_CHECKPOINT_PASSIVE);
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

int store_flush(struct store *s)
{
	int rc = tx_commit(s, true);
	if (rc == 0 && s->ckpt_due)
		checkpoint(s, SQLITE_CHECKPOINT_PASSIVE); /* see tx_commit() */
	return rc;
}

int64_t store_flush_deadline_ms(const struct store *s)
{
	if (s->ckpt_due)
		return 0; /* already due */
	return s->in_tx ? s->deadline : -1;
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

int64_t store_size_bytes(struct store *s)
{
	int64_t pc = 0;
	if (cached_int(s, ST_PAGE_COUNT, &pc))
		return -1;
	return pc * PAGE_SIZE + wal_size(s);
}

/* Bytes that hold data: pages in use (free pages get reused first) plus the
 * WAL frames not yet checkpointed. The WAL file itself keeps its length
 * after a checkpoint until the next commit cuts it to journal_size_limit,
 * and store_maintain() truncates it, so counting the file here would only
 * count space that is about to be given back. */
static int used_bytes(struct store *s, int64_t *used)
{
	int64_t pc = 0, fl = 0;
	int rc = cached_int(s, ST_PAGE_COUNT, &pc);
	if (!rc)
		rc = cached_int(s, ST_FREELIST, &fl);
	if (rc)
		return rc;
	*used = (pc - fl) * PAGE_SIZE + (int64_t)s->wal_frames * (PAGE_SIZE + 24);
	return 0;
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
	while ((rc = sqlite3_step(st)) == SQLITE_ROW && nid < sizeof(ids) / sizeof(ids[0]))
		ids[nid++] = sqlite3_column_int64(st, 0);
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
	sqlite3_bind_int(dd, 1, lane);
	sqlite3_bind_int64(dd, 2, edge);
	return step_done(s, dd, "evict");
}

/* Evicts (telemetry, then events, then status) until used bytes <= target.
 * Inside a transaction. */
static int evict_to(struct store *s, int64_t target)
{
	static const enum cgw_lane order[] = {CGW_LANE_TELEMETRY, CGW_LANE_EVENT, CGW_LANE_STATUS};
	int64_t used = 0;
	int rc = used_bytes(s, &used);
	for (size_t li = 0; !rc && li < sizeof(order) / sizeof(order[0]) && used > target;) {
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
		rc = used_bytes(s, &used);
	}
	return rc;
}

/* Before a non-alarm write: keep it out of the alarm reserve. */
static int admit(struct store *s)
{
	if (s->o.max_size <= 0)
		return 0;
	if (s->admit_countdown > 0) {
		s->admit_countdown--;
		return 0;
	}
	s->admit_countdown = ADMIT_EVERY;
	int64_t used = 0;
	int rc = used_bytes(s, &used);
	if (rc)
		return rc;
	int64_t soft = s->o.max_size / 100 * SOFT_PCT;
	if (used <= soft)
		return 0;
	rc = evict_to(s, s->o.max_size / 100 * TARGET_PCT);
	if (rc)
		return rc;
	rc = used_bytes(s, &used);
	if (rc)
		return rc;
	if (used > soft) {
		s->admit_countdown = 0; /* check again next time */
		set_err(s,
			"%s: store is at its size cap (%" PRId64 " of %" PRId64
			" bytes); only alarms are accepted",
			s->path, used, s->o.max_size);
		return -ENOSPC;
	}
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
	if (clean == 0 && !s->o.sync_full) {
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
		exec(s, "ROLLBACK");
		return rc;
	}
	rc = exec(s, s->o.sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
	if (rc)
		return rc;
	rc = query_int(s, "SELECT seq FROM sqlite_sequence WHERE name = 'msg'", &seq);
	s->last_seq = s->committed_seq = (uint64_t)seq;
	return rc;
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
	bool fresh = false;

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

	rc = sqlite3_open_v2(path, &s->db,
			     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			     NULL);
	if (rc != SQLITE_OK) {
		rc = db_fail(s, "open", rc);
		goto fail;
	}
	sqlite3_busy_timeout(s->db, (int)s->o.busy_timeout_ms);

	int64_t version = 0;
	rc = check_identity(s, &fresh, &version);
	if (rc)
		goto fail;
	if (fresh) {
		/* Only before the first table (and before WAL) do these take effect. */
		char sql[96];
		snprintf(sql, sizeof(sql),
			 "PRAGMA page_size = %d; PRAGMA auto_vacuum = INCREMENTAL", PAGE_SIZE);
		rc = exec(s, sql);
		if (rc)
			goto fail;
	}
	{
		sqlite3_stmt *st = NULL;
		rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_step(st);
		bool wal = rc == SQLITE_ROW &&
			   strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
		sqlite3_finalize(st);
		if (!wal) {
			if (rc == SQLITE_ROW) {
				set_err(s, "%s: cannot switch to WAL mode", path);
				rc = -EIO;
			} else {
				rc = db_fail(s, "journal_mode=WAL", rc);
			}
			goto fail;
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
			goto fail;
	}
	if (version < N_MIGRATIONS) {
		rc = migrate(s, version);
		if (rc)
			goto fail;
	}
	{
		char sql[256];
		snprintf(sql, sizeof(sql),
			 "PRAGMA journal_size_limit = %" PRId64 ";"
			 "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -8192;"
			 "PRAGMA foreign_keys = OFF",
			 (int64_t)s->ckpt_pages * (PAGE_SIZE + 24) + 32);
		rc = exec(s, sql);
		if (rc)
			goto fail;
	}
	sqlite3_wal_hook(s->db, wal_hook, s); /* replaces SQLite's auto-checkpoint */
	rc = mark_open(s);
	if (!rc) /* start with an empty WAL: migrations may have filled it */
		rc = checkpoint(s, SQLITE_CHECKPOINT_TRUNCATE);
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
		store_flush(s);
		if (!s->in_tx && sqlite3_get_autocommit(s->db))
			exec(s,
			     "INSERT OR REPLACE INTO meta(key, value) VALUES('clean_close', '1')");
	}
	for (int i = 0; i < ST_COUNT; i++)
		sqlite3_finalize(s->st[i]);
	sqlite3_close(s->db);
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
		int rc = sqlite3_prepare_v2(
			s->db,
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
		r = &s->up[s->n_up++];
		memset(r, 0, sizeof(*r));
		r->id = uid;
		snprintf(r->name, sizeof(r->name), "%s", name);
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
	if (!n)
		return 0;
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

/* Inserts the message and its delivery rows into the open transaction. */
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
	int rc = step_done(s, im, "enqueue");
	if (rc)
		return rc;
	uint64_t sq = (uint64_t)sqlite3_last_insert_rowid(s->db);
	sqlite3_bind_int(id, 2, m->lane);
	sqlite3_bind_int64(id, 3, (int64_t)sq);
	for (size_t i = 0; i < nt; i++) {
		sqlite3_bind_int64(id, 1, targets[i]);
		rc = step_done(s, id, "enqueue delivery");
		if (rc)
			return rc;
	}
	s->last_seq = sq;
	*seq = sq;
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
	checkpoint(s, SQLITE_CHECKPOINT_PASSIVE);
	int rc = tx_begin(s, mono_ms);
	uint64_t n = 0;
	for (size_t i = 0; !rc && !n && i < sizeof(order) / sizeof(order[0]); i++) {
		rc = delete_oldest(s, order[i], 256, INT64_MAX, &n);
		note_eviction(s, order[i], n);
	}
	if (!rc && !n)
		rc = -ENOSPC; /* only alarms left: nothing to give up */
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
		if (s->up[i].mask & (1u << m->lane))
			targets[nt++] = s->up[i].id;
	if (!nt) {
		/* Nobody sends this lane: nothing to keep. */
		if (committed)
			*committed = true;
		return 0;
	}
	if (m->lane == CGW_LANE_ALARM) {
		rc = tx_begin(s, mono_ms);
		if (!rc)
			rc = insert_msg(s, m, targets, nt, &sq);
		if (!rc)
			rc = tx_commit(s, false);
		if (rc == -ENOSPC || rc == -EIO)
			rc = alarm_make_room(s, m, targets, nt, mono_ms, &sq);
		if (rc) {
			tx_abort(s);
			return rc;
		}
		if (committed)
			*committed = true;
		if (seq)
			*seq = sq;
		return 0;
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

int store_fetch(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t after_seq, size_t max,
		int64_t now_ms, struct store_item *items, size_t *n)
{
	*n = 0;
	if ((unsigned)lane >= CGW_LANE_COUNT || !items)
		return -EINVAL;
	if (!max || after_seq >= s->committed_seq)
		return 0;
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
	sqlite3_bind_int64(dm, 1, (int64_t)seq);
	rc = step_done(s, dm, "ack");
	if (rc || sqlite3_changes(s->db) > 0)
		return rc;
	sqlite3_bind_int64(dp, 1, (int64_t)seq);
	return step_done(s, dp, "ack");
}

int store_ack(struct store *s, int64_t uplink, enum cgw_lane lane, uint64_t seq,
	      enum store_ack_result result, int64_t retry_after_ms, const char *reason,
	      int64_t now_ms)
{
	if ((unsigned)lane >= CGW_LANE_COUNT)
		return -EINVAL;
	int rc = tx_begin(s, -1);
	if (rc)
		return rc;
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
		int64_t delay;
		if (retry_after_ms >= 0) {
			delay = retry_after_ms < STORE_RETRY_AFTER_MAX_MS ?
					retry_after_ms :
					STORE_RETRY_AFTER_MAX_MS;
		} else {
			int sh = attempts > 20 ? 20 : (int)attempts;
			int64_t win = (int64_t)STORE_BACKOFF_BASE_MS << sh;
			if (win > STORE_BACKOFF_CAP_MS)
				win = STORE_BACKOFF_CAP_MS;
			delay = (int64_t)(rng_next(s) % (uint64_t)(win + 1));
		}
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
	if (rc == -ENOENT || rc == -EINVAL)
		return rc; /* nothing was written; the batch goes on */
	if (rc) {
		tx_abort(s);
		return rc;
	}
	return batch_wrote(s, NULL);
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

int store_maintain(struct store *s, int64_t now_ms, struct store_maint_report *r)
{
	struct store_maint_report dummy;
	int64_t pc = 0, fl = 0;
	uint64_t n;
	int rc;

	if (!r)
		r = &dummy;
	memset(r, 0, sizeof(*r));
	rc = store_flush(s);
	if (rc)
		return rc;

	/* Retention, in chunks so that no transaction grows without bound. */
	if (s->o.telemetry_retention_ms > 0) {
		int64_t cutoff = now_ms - s->o.telemetry_retention_ms;
		do {
			rc = tx_begin(s, -1);
			if (!rc)
				rc = delete_oldest(s, CGW_LANE_TELEMETRY, RETENTION_CHUNK, cutoff,
						   &n);
			/* a chunk may end short of RETENTION_CHUNK (the edge is
			 * the smallest of the uplinks'); go on while it deletes */
			if (!rc)
				rc = tx_commit(s, true);
			if (rc)
				goto fail;
			r->expired += n;
			s->expired_total += n;
		} while (n > 0);
	}

	rc = tx_begin(s, -1);
	if (!rc)
		rc = trim_table(s, "dead_letter", STORE_DEAD_LETTER_KEEP);
	if (!rc)
		rc = trim_table(s, "quarantine", STORE_QUARANTINE_KEEP);
	if (!rc)
		rc = trim_table(s, "audit", STORE_AUDIT_KEEP);
	if (!rc)
		rc = cmdid_trim(s, now_ms);
	if (!rc && s->o.max_size > 0)
		rc = evict_to(s, s->o.max_size / 100 * TARGET_PCT);
	if (!rc)
		rc = tx_commit(s, true);
	if (rc)
		goto fail;

	/* Give free pages back to the file system once they are a good share
	 * of the file (they would be reused anyway), or when over the cap. */
	rc = cached_int(s, ST_PAGE_COUNT, &pc);
	if (!rc)
		rc = cached_int(s, ST_FREELIST, &fl);
	if (rc)
		goto fail;
	if (fl > 0 && (fl * 4 >= pc ||
		       (s->o.max_size > 0 && pc * PAGE_SIZE > s->o.max_size / 100 * TARGET_PCT))) {
		rc = exec(s, "PRAGMA incremental_vacuum");
		if (rc)
			goto fail;
	}
	rc = checkpoint(s, SQLITE_CHECKPOINT_TRUNCATE);
	if (rc)
		goto fail;

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
	r->over_cap = s->o.max_size > 0 && r->size_bytes > s->o.max_size;
	return 0;
fail:
	tx_abort(s);
	return rc;
}

/* ----------------------------------------------------------------- stats */

int store_stats(struct store *s, struct store_stats *st)
{
	int64_t pc = 0, v = 0;
	memset(st, 0, sizeof(*st));
	int rc = cached_int(s, ST_PAGE_COUNT, &pc);
	if (rc)
		return rc;
	st->db_bytes = pc * PAGE_SIZE;
	st->wal_bytes = wal_size(s);
	st->max_size = s->o.max_size;
	memcpy(st->evicted, s->evicted_total, sizeof(st->evicted));
	st->expired = s->expired_total;
	st->seq_high = s->last_seq > s->committed_seq ? s->last_seq : s->committed_seq;
	rc = query_int(s, "SELECT count(*) FROM dead_letter", &v);
	if (rc)
		return rc;
	st->dead_letters = (uint64_t)v;

	sqlite3_stmt *q = NULL;
	rc = sqlite3_prepare_v2(s->db,
				"SELECT count(*), (SELECT ts_ms FROM msg WHERE seq ="
				" (SELECT min(seq) FROM delivery WHERE uplink = ?1 AND lane = ?2))"
				" FROM delivery WHERE uplink = ?1 AND lane = ?2",
				-1, &q, NULL);
	if (rc != SQLITE_OK)
		return db_fail(s, "stats", rc);
	for (size_t i = 0; i < s->n_up; i++) {
		struct store_uplink_stats *u = &st->uplink[i];
		u->id = s->up[i].id;
		snprintf(u->name, sizeof(u->name), "%s", s->up[i].name);
		for (int l = 0; l < CGW_LANE_COUNT; l++) {
			sqlite3_bind_int64(q, 1, u->id);
			sqlite3_bind_int(q, 2, l);
			rc = sqlite3_step(q);
			if (rc == SQLITE_ROW) {
				u->lane[l].depth = (uint64_t)sqlite3_column_int64(q, 0);
				u->lane[l].oldest_ts_ms = sqlite3_column_type(q, 1) == SQLITE_NULL ?
								  -1 :
								  sqlite3_column_int64(q, 1);
			}
			sqlite3_reset(q);
			if (rc != SQLITE_ROW) {
				sqlite3_finalize(q);
				return db_fail(s, "stats", rc);
			}
		}
	}
	st->n_uplinks = s->n_up;
	sqlite3_finalize(q);
	return 0;
}

/* ---------------------------------------------------------- latest values */

int store_put_latest(struct store *s, const char *device, const char *point,
		     const struct cgw_value *v, enum cgw_quality q, int64_t ts_ms, int64_t mono_ms)
{
	if (!device || !point || !v)
		return -EINVAL;
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
