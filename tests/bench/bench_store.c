/*
 * bench_store.c - throughput and alarm latency of the SQLite store.
 *
 *   build/bench/bench_store [DIR]   (DIR: where to put the files; default $TMPDIR or /tmp)
 *
 * Prints one `name: value unit` line per figure:
 *   telemetry_pipeline   enqueue -> fetch -> ack(OK, delete), batched, msg/s
 *   raw_insert           plain INSERT of the same rows in one transaction, rows/s
 *   pipeline_vs_raw      the ratio of the two
 *   alarm_single         alarms enqueued one by one, each committed, msg/s
 *                        (and its p99), with sync NORMAL and with FULL
 *   alarm_latency_p50/p99/max  enqueue-to-committed of an alarm while
 *                        telemetry floods the store (interleaved, one thread)
 * Exit status 1 if a target is missed (>= 50000 msg/s, ratio >= 0.3,
 * p99 <= 5 ms), so `make bench` notices.
 */
#include <errno.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "model.h"
#include "store.h"

#define PIPE_MSGS 300000
#define CHUNK 2000
#define ALARMS_SINGLE 3000
#define ALARMS_FULL 300 /* synchronous=FULL: an fsync each */
#define FLOOD_ALARMS 3000
#define FLOOD_EVERY 100 /* one alarm per this many telemetry messages */

static const char *const DEVICE = "smoke-b3-3f-01";
static const char *const TOPIC = "device/smoke-b3-3f-01/telemetry";

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void payload_for(char *buf, size_t len, int i)
{
	snprintf(buf, len,
		 "{\"ts\":%" PRId64 ",\"values\":{\"temperature\":%.1f,\"smoke\":%.2f,"
		 "\"battery\":3.1,\"status\":\"normal\"}}",
		 (int64_t)1700000000000 + i, 20.0 + (i % 100) / 10.0, (i % 37) / 100.0);
}

static void die(const char *what, struct store *s, int rc)
{
	fprintf(stderr, "bench_store: %s: %d %s\n", what, rc, s ? store_errmsg(s) : "");
	exit(2);
}

static void rm_db(const char *path)
{
	char p[512];
	static const char *const sfx[] = {"", "-wal", "-shm"};
	for (int i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s%s", path, sfx[i]);
		unlink(p);
	}
}

static struct store *open_store(const char *path, int64_t *up, bool full)
{
	struct store *s = NULL;
	char err[256];
	struct store_opts o = {.sync_full = full};
	rm_db(path);
	int rc = store_open(&s, path, &o, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "bench_store: %s\n", err);
		exit(2);
	}
	rc = store_uplink_register(s, "platform", (1u << CGW_LANE_COUNT) - 1, up);
	if (rc)
		die("register", s, rc);
	return s;
}

/* Fetches and acks everything of the lane after *cursor. */
static size_t drain(struct store *s, int64_t up, enum cgw_lane lane, uint64_t *cursor,
		    struct store_item *it, size_t cap)
{
	size_t total = 0;
	for (;;) {
		size_t n = 0;
		int rc = store_fetch(s, up, lane, *cursor, cap, 0, it, &n);
		if (rc)
			die("fetch", s, rc);
		if (!n)
			break;
		for (size_t i = 0; i < n; i++) {
			rc = store_ack(s, up, lane, it[i].seq, STORE_ACK_OK, -1, NULL, 0);
			if (rc)
				die("ack", s, rc);
		}
		*cursor = it[n - 1].seq;
		total += n;
		store_items_clear(it, n);
	}
	return total;
}

static double bench_pipeline(const char *path)
{
	int64_t up;
	struct store *s = open_store(path, &up, false);
	static struct store_item it[500];
	char payload[256];
	uint64_t cursor = 0;
	size_t delivered = 0;
	double t0 = now_s();
	for (int done = 0; done < PIPE_MSGS; done += CHUNK) {
		for (int i = 0; i < CHUNK; i++) {
			payload_for(payload, sizeof(payload), done + i);
			struct store_msg m = {.lane = CGW_LANE_TELEMETRY,
					      .device = DEVICE,
					      .topic = TOPIC,
					      .ts_ms = 1700000000000 + done + i,
					      .payload = payload};
			int rc = store_enqueue(s, &m, cgw_mono_ms(), NULL, NULL);
			if (rc)
				die("enqueue", s, rc);
		}
		int rc = store_flush(s);
		if (rc)
			die("flush", s, rc);
		delivered += drain(s, up, CGW_LANE_TELEMETRY, &cursor, it, 500);
		rc = store_flush(s);
		if (rc)
			die("flush", s, rc);
	}
	double dt = now_s() - t0;
	if (delivered != PIPE_MSGS) {
		fprintf(stderr, "bench_store: delivered %zu of %d\n", delivered, PIPE_MSGS);
		exit(2);
	}
	store_close(s);
	rm_db(path);
	return PIPE_MSGS / dt;
}

static double bench_raw(const char *path)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	char payload[256];
	rm_db(path);
	if (sqlite3_open(path, &db) != SQLITE_OK ||
	    sqlite3_exec(db,
			 "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
			 "CREATE TABLE m(seq INTEGER PRIMARY KEY, lane INTEGER, device TEXT,"
			 " topic TEXT, ts_ms INTEGER, payload TEXT)",
			 NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db,
			       "INSERT INTO m(lane, device, topic, ts_ms, payload)"
			       " VALUES(?1, ?2, ?3, ?4, ?5)",
			       -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "bench_store: raw: %s\n", sqlite3_errmsg(db));
		exit(2);
	}
	double t0 = now_s();
	sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
	for (int i = 0; i < PIPE_MSGS; i++) {
		payload_for(payload, sizeof(payload), i);
		sqlite3_bind_int(st, 1, CGW_LANE_TELEMETRY);
		sqlite3_bind_text(st, 2, DEVICE, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, TOPIC, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, 1700000000000 + i);
		sqlite3_bind_text(st, 5, payload, -1, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_DONE) {
			fprintf(stderr, "bench_store: raw insert: %s\n", sqlite3_errmsg(db));
			exit(2);
		}
		sqlite3_reset(st);
	}
	sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	double dt = now_s() - t0;
	sqlite3_finalize(st);
	sqlite3_close(db);
	rm_db(path);
	return PIPE_MSGS / dt;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* count alarms, each committed alone; *p99 = its latency (ms) */
static double bench_alarm_single(const char *path, bool full, int count, double *p99)
{
	int64_t up;
	struct store *s = open_store(path, &up, full);
	char payload[256];
	double *lat = calloc((size_t)count, sizeof(*lat));
	if (!lat)
		die("calloc", NULL, -ENOMEM);
	double t0 = now_s();
	for (int i = 0; i < count; i++) {
		snprintf(payload, sizeof(payload),
			 "{\"device\":\"%s\",\"alarm\":\"smoke\",\"event\":\"raised\","
			 "\"state\":\"active-unacked\",\"severity\":\"critical\",\"n\":%d}",
			 DEVICE, i);
		struct store_msg m = {.lane = CGW_LANE_ALARM,
				      .device = DEVICE,
				      .topic = "device/smoke-b3-3f-01/alarm",
				      .ts_ms = i,
				      .payload = payload};
		bool c = false;
		double t = now_s();
		int rc = store_enqueue(s, &m, cgw_mono_ms(), NULL, &c);
		lat[i] = (now_s() - t) * 1e3;
		if (rc || !c)
			die("alarm", s, rc);
	}
	double dt = now_s() - t0;
	store_close(s);
	rm_db(path);
	qsort(lat, (size_t)count, sizeof(*lat), cmp_d);
	*p99 = lat[count * 99 / 100];
	free(lat);
	return count / dt;
}

/* Telemetry at full rate, acked as it goes (as an uplink would), with one
 * alarm every FLOOD_EVERY messages; measures each alarm's enqueue call. */
static void bench_alarm_latency(const char *path, double *p50, double *p99, double *max,
				double *tele_rate)
{
	int64_t up;
	struct store *s = open_store(path, &up, false);
	static struct store_item it[500];
	static double lat[FLOOD_ALARMS];
	char payload[256];
	uint64_t cursor = 0;
	long tele = 0;
	double t0 = now_s();
	for (int a = 0; a < FLOOD_ALARMS; a++) {
		for (int i = 0; i < FLOOD_EVERY; i++, tele++) {
			payload_for(payload, sizeof(payload), (int)tele);
			struct store_msg m = {.lane = CGW_LANE_TELEMETRY,
					      .device = DEVICE,
					      .topic = TOPIC,
					      .ts_ms = tele,
					      .payload = payload};
			int64_t mono = cgw_mono_ms();
			int rc = store_enqueue(s, &m, mono, NULL, NULL);
			if (rc)
				die("enqueue", s, rc);
			int64_t dl = store_flush_deadline_ms(s);
			if (dl >= 0 && dl <= mono && (rc = store_flush(s)))
				die("flush", s, rc);
		}
		if (a % 10 == 9)
			drain(s, up, CGW_LANE_TELEMETRY, &cursor, it, 500);
		snprintf(payload, sizeof(payload),
			 "{\"device\":\"%s\",\"alarm\":\"smoke\",\"event\":\"raised\",\"n\":%d}",
			 DEVICE, a);
		struct store_msg m = {.lane = CGW_LANE_ALARM,
				      .device = DEVICE,
				      .topic = "device/smoke-b3-3f-01/alarm",
				      .ts_ms = a,
				      .payload = payload};
		bool c = false;
		double t = now_s();
		int rc = store_enqueue(s, &m, cgw_mono_ms(), NULL, &c);
		lat[a] = (now_s() - t) * 1e3;
		if (rc || !c)
			die("alarm", s, rc);
		/* the checkpoint an alarm commit defers runs from the timer */
		if (store_flush_deadline_ms(s) == 0 && (rc = store_flush(s)))
			die("flush", s, rc);
	}
	*tele_rate = (double)tele / (now_s() - t0);
	store_close(s);
	rm_db(path);
	qsort(lat, FLOOD_ALARMS, sizeof(lat[0]), cmp_d);
	*p50 = lat[FLOOD_ALARMS / 2];
	*p99 = lat[FLOOD_ALARMS * 99 / 100];
	*max = lat[FLOOD_ALARMS - 1];
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : getenv("TMPDIR");
	char tmpl[512], path[600];
	snprintf(tmpl, sizeof(tmpl), "%s/cgw-bench-XXXXXX", dir && *dir ? dir : "/tmp");
	if (!mkdtemp(tmpl)) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(path, sizeof(path), "%s/store.db", tmpl);

	double pipe = bench_pipeline(path);
	double raw = bench_raw(path);
	double single_p99, full_p99;
	double single = bench_alarm_single(path, false, ALARMS_SINGLE, &single_p99);
	double full = bench_alarm_single(path, true, ALARMS_FULL, &full_p99);
	double p50, p99, mx, flood;
	bench_alarm_latency(path, &p50, &p99, &mx, &flood);
	rmdir(tmpl);

	printf("telemetry_pipeline: %.0f msg/s\n", pipe);
	printf("raw_insert: %.0f rows/s\n", raw);
	printf("pipeline_vs_raw: %.2f ratio\n", pipe / raw);
	printf("alarm_single: %.0f msg/s\n", single);
	printf("alarm_single_p99: %.3f ms\n", single_p99);
	printf("alarm_single_full: %.0f msg/s\n", full);
	printf("alarm_single_full_p99: %.3f ms\n", full_p99);
	printf("alarm_latency_p50: %.3f ms\n", p50);
	printf("alarm_latency_p99: %.3f ms\n", p99);
	printf("alarm_latency_max: %.3f ms\n", mx);
	printf("flood_telemetry: %.0f msg/s\n", flood);
	int miss = pipe < 50000 || pipe / raw < 0.3 || p99 > 5.0;
	if (miss)
		printf("targets: missed (>= 50000 msg/s, >= 0.3 of raw, p99 <= 5 ms)\n");
	return miss;
}
