/*
 * The MQTT ingest driver without a broker: messages are fed through
 * mqtt_ingest_feed() and staleness is checked with mqtt_ingest_check_stale()
 * at explicit times, so nothing here sleeps. The driver is opened for real
 * (its broker is a closed port that the loop never gets to poll), with a
 * real queue and a real store in a temp dir; what reaches the core is read
 * back from the queue, the quarantine from the database file, the logging
 * from stderr redirected to a file.
 */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include "config.h"
#include "driver.h"
#include "episode.h"
#include "log.h"
#include "loop.h"
#include "mqtt_ingest.h"
#include "queue.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <mosquitto.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QCAP 64

static const char locker_profile[] =
	"profile: t-locker\n"
	"class: service\n"
	"points:\n"
	"  - {name: mains, topic: status, json: mains, type: bool}\n"
	"  - {name: battery, topic: status, json: power.battery, type: number, deadband: 1,"
	" report_every: 1m}\n"
	"  - {name: tamper, topic: status, json: tamper, type: bool}\n"
	"  - {name: door, topic: door/+, json: state, enum: {0: closed, 1: open}}\n"
	"  - {name: parcel, topic: parcel, json: action, type: string, event: true}\n"
	"  - {name: raw, topic: raw, type: int16}\n"
	/* (an invalid filter such as x/#/y is refused by the configuration
	 * check now; this point keeps the indices of the ones after it) */
	"  - {name: note, topic: status, json: note, type: string}\n"
	"  - {name: first_id, topic: list, json: items.0.id, type: string}\n"
	"  - {name: motion, topic: motion, json: active, type: bool, event: true,"
	" rate_limit: 30s}\n";

/* one point on every locker's status: overlaps the lockers' own filters */
static const char watcher_profile[] =
	"profile: t-watcher\n"
	"class: service\n"
	"points:\n"
	"  - {name: any_mains, topic: +/status, json: mains, type: bool}\n";

struct fx {
	char dir[64];
	char db[128];
	struct cgw_config *cfg;
	struct loop *loop;
	struct queue *q;
	struct store *store;
	struct driver *d;
	int saved_stderr;
	char logpath[128];
	int64_t wall, mono; /* the test's clocks */
	struct cgw_item items[QCAP];
	size_t n;
};

static void write_file(const char *dir, const char *name, const char *text)
{
	char p[256];
	FILE *f;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	f = fopen(p, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	struct cfg_errors errs = {0};
	char *yaml = NULL;
	char err[256];
	int r;

	assert_non_null(fx);
	strcpy(fx->dir, "/tmp/cgw-test-mi.XXXXXX");
	assert_non_null(mkdtemp(fx->dir));
	write_file(fx->dir, "t-locker.yaml", locker_profile);
	write_file(fx->dir, "t-watcher.yaml", watcher_profile);
	r = asprintf(&yaml,
		     "gateway: {id: gw-t, site: s, state_dir: %s}\n"
		     "profile_dirs: [%s]\n"
		     "buses:\n"
		     "  - {name: lan, type: mqtt, url: \"mqtt://127.0.0.1:1\", stale_after: 10s,"
		     " max_payload: 1KB}\n"
		     "devices:\n"
		     "  - {id: a, name: A, profile: t-locker, bus: lan, topic: lockers/a}\n"
		     "  - {id: b, name: B, profile: t-locker, bus: lan, topic: lockers/b,"
		     " stale_after: 2s}\n"
		     "  - {id: w, name: W, profile: t-watcher, bus: lan, topic: lockers}\n",
		     fx->dir, fx->dir);
	assert_true(r > 0);
	r = config_load_string("test.yaml", yaml, strlen(yaml), &fx->cfg, &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.v[i]);
	assert_int_equal(r, 0);
	cfg_errors_free(&errs);
	free(yaml);

	snprintf(fx->logpath, sizeof(fx->logpath), "%s/log", fx->dir);
	fflush(stderr);
	fx->saved_stderr = dup(2);
	int lfd = open(fx->logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(lfd >= 0);
	dup2(lfd, 2);
	close(lfd);
	log_setup(true, LOG_DEBUG);

	snprintf(fx->db, sizeof(fx->db), "%s/cgw.db", fx->dir);
	assert_int_equal(store_open(&fx->store, fx->db, NULL, err, sizeof(err)), 0);
	assert_int_equal(loop_new(&fx->loop), 0);
	assert_int_equal(queue_new(&fx->q, QCAP), 0);
	struct driver_env env = {.cfg = fx->cfg,
				 .bus = 0,
				 .queue = fx->q,
				 .loop = fx->loop,
				 .store = fx->store};
	assert_int_equal(mqtt_ingest_ops.open(&env, &fx->d), 0);
	fx->wall = 1763700000000LL;
	fx->mono = cgw_mono_ms();
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;
	char cmd[128];

	mqtt_ingest_ops.close(fx->d);
	for (size_t i = 0; i < fx->n; i++)
		cgw_value_clear(&fx->items[i].value);
	queue_free(fx->q);
	loop_free(fx->loop);
	store_close(fx->store);
	config_free(fx->cfg);
	fflush(stderr);
	dup2(fx->saved_stderr, 2);
	close(fx->saved_stderr);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", fx->dir);
	if (system(cmd) != 0)
		print_error("cannot remove %s\n", fx->dir);
	free(fx);
	return 0;
}

/* Feed one message (time advances by 1 ms) and collect what it queued. */
static void feedr(struct fx *fx, const char *topic, const void *p, size_t len, bool retained)
{
	for (size_t i = 0; i < fx->n; i++)
		cgw_value_clear(&fx->items[i].value);
	fx->wall++;
	fx->mono++;
	mqtt_ingest_feed(fx->d, topic, p, len, retained, fx->wall, fx->mono);
	fx->n = queue_pop_batch(fx->q, fx->items, QCAP);
}

static void feed(struct fx *fx, const char *topic, const char *payload)
{
	feedr(fx, topic, payload, strlen(payload), false);
}

static void stale(struct fx *fx, int64_t mono)
{
	for (size_t i = 0; i < fx->n; i++)
		cgw_value_clear(&fx->items[i].value);
	mqtt_ingest_check_stale(fx->d, fx->wall, mono);
	fx->n = queue_pop_batch(fx->q, fx->items, QCAP);
}

static long dev_idx(struct fx *fx, const char *id)
{
	long i = cfg_find_device(fx->cfg, id);
	assert_true(i >= 0);
	return i;
}

static long pt_idx(struct fx *fx, const char *dev, const char *point)
{
	const struct cfg_profile *pr =
		cfg_device_profile(fx->cfg, &fx->cfg->devices[dev_idx(fx, dev)]);
	for (size_t i = 0; i < pr->n_points; i++)
		if (!strcmp(pr->points[i].name, point))
			return (long)i;
	fail_msg("no point %s", point);
	return -1;
}

/* The item for (dev, point) among the collected ones, or NULL. */
static const struct cgw_item *find(struct fx *fx, const char *dev, const char *point)
{
	long d = dev_idx(fx, dev), p = pt_idx(fx, dev, point);
	const struct cgw_item *hit = NULL;
	for (size_t i = 0; i < fx->n; i++) {
		const struct cgw_item *it = &fx->items[i];
		if ((it->kind == CGW_ITEM_READING || it->kind == CGW_ITEM_EVENT) &&
		    it->device == (uint32_t)d && it->point == (uint32_t)p) {
			assert_null(hit); /* once per message */
			hit = it;
		}
	}
	return hit;
}

/* -1 no state item for dev, else its online flag. */
static int state_of(struct fx *fx, const char *dev)
{
	long d = dev_idx(fx, dev);
	int r = -1;
	for (size_t i = 0; i < fx->n; i++)
		if (fx->items[i].kind == CGW_ITEM_DEVICE_STATE &&
		    fx->items[i].device == (uint32_t)d) {
			assert_int_equal(r, -1);
			r = fx->items[i].online;
		}
	return r;
}

static uint64_t bad_count(struct fx *fx, const char *dev)
{
	struct driver_stats st;
	uint64_t n = UINT64_MAX;
	long d = dev_idx(fx, dev);

	assert_int_equal(mqtt_ingest_ops.status(fx->d, &st), 0);
	for (size_t i = 0; i < st.n_devices; i++)
		if (st.devices[i].device == (uint32_t)d)
			n = st.devices[i].bad_payloads;
	free(st.devices);
	assert_true(n != UINT64_MAX);
	return n;
}

static long quarantined(struct fx *fx, const char *dev, long *max_kept, long *max_len)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	long n = -1;

	assert_int_equal(store_flush(fx->store), 0);
	assert_int_equal(sqlite3_open_v2(fx->db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(
		sqlite3_prepare_v2(db,
				   "SELECT count(*), max(length(payload)), max(payload_len)"
				   " FROM quarantine WHERE device = ?1 AND bus = 'lan'",
				   -1, &st, NULL),
		SQLITE_OK);
	sqlite3_bind_text(st, 1, dev, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		n = sqlite3_column_int64(st, 0);
		if (max_kept)
			*max_kept = sqlite3_column_int64(st, 1);
		if (max_len)
			*max_len = sqlite3_column_int64(st, 2);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

static int log_count(struct fx *fx, const char *needle)
{
	char line[4096];
	int n = 0;
	FILE *f = fopen(fx->logpath, "r");

	assert_non_null(f);
	while (fgets(line, sizeof(line), f))
		if (strstr(line, needle))
			n++;
	fclose(f);
	return n;
}

static void test_filters(void **state)
{
	struct fx *fx = *state;
	size_t n = mqtt_ingest_filter_count(fx->d);
	static const char *const want[] = {
		"lockers/a/status", "lockers/a/door/+", "lockers/a/parcel", "lockers/a/raw",
		"lockers/a/list",   "lockers/a/motion", "lockers/b/status", "lockers/b/door/+",
		"lockers/b/parcel", "lockers/b/raw",    "lockers/b/list",   "lockers/b/motion",
		"lockers/+/status"};

	/* the status points of a device share one filter */
	assert_int_equal(n, sizeof(want) / sizeof(want[0]));
	for (size_t i = 0; i < n; i++)
		assert_string_equal(mqtt_ingest_filter(fx->d, i), want[i]);
	assert_null(mqtt_ingest_filter(fx->d, n));
	assert_int_equal(mqtt_ingest_ops.write(fx->d, 0, 0, NULL, 1), -ENOTSUP);
}

static void test_values(void **state)
{
	struct fx *fx = *state;
	const struct cgw_item *it;

	feed(fx, "lockers/a/status",
	     "{\"mains\":true,\"power\":{\"battery\":87.5},\"tamper\":0,\"ts\":1763699990000}");
	/* online first, then the values, stamped with the payload's ts */
	assert_true(fx->n >= 1);
	assert_int_equal(fx->items[0].kind, CGW_ITEM_DEVICE_STATE);
	assert_int_equal(fx->items[0].device, dev_idx(fx, "a"));
	assert_true(fx->items[0].online);
	it = find(fx, "a", "mains");
	assert_non_null(it);
	assert_int_equal(it->kind, CGW_ITEM_READING);
	assert_int_equal(it->quality, CGW_Q_GOOD);
	assert_int_equal(it->value.type, CGW_V_BOOL);
	assert_true(it->value.b);
	assert_true(it->ts_ms == 1763699990000LL);
	it = find(fx, "a", "battery");
	assert_non_null(it);
	assert_true(it->value.type == CGW_V_DOUBLE && it->value.d == 87.5);
	it = find(fx, "a", "tamper");
	assert_true(it && it->value.type == CGW_V_BOOL && !it->value.b);
	/* the watcher's overlapping filter got it too */
	it = find(fx, "w", "any_mains");
	assert_true(it && it->value.b);
	assert_int_equal(state_of(fx, "w"), 1);
	assert_int_equal(fx->n, 6); /* a online, 3 values, w online, 1 value */

	/* second message: no state item any more; no ts: time of arrival */
	feed(fx, "lockers/a/door/A07", "{\"state\":\"open\",\"compartment\":\"A07\"}");
	assert_int_equal(fx->n, 1);
	it = find(fx, "a", "door");
	assert_non_null(it);
	assert_true(it->value.type == CGW_V_INT && it->value.i == 1); /* the key of "open" */
	assert_int_equal(it->quality, CGW_Q_GOOD);
	assert_true(it->ts_ms == fx->wall);

	/* events */
	feed(fx, "lockers/a/parcel", "{\"action\":\"picked_up\",\"code\":\"1234\"}");
	assert_int_equal(fx->n, 1);
	assert_int_equal(fx->items[0].kind, CGW_ITEM_EVENT);
	assert_string_equal(fx->items[0].value.s, "picked_up");

	/* whole payload, bare JSON value; array index */
	feed(fx, "lockers/a/raw", "-12");
	it = find(fx, "a", "raw");
	assert_true(it && it->value.type == CGW_V_INT && it->value.i == -12);
	feed(fx, "lockers/a/list", "{\"items\":[{\"id\":\"A1\"},{\"id\":\"A2\"}]}");
	it = find(fx, "a", "first_id");
	assert_true(it && !strcmp(it->value.s, "A1"));

	/* topics of nobody: nothing */
	feed(fx, "lockers/a/other", "{}");
	assert_int_equal(fx->n, 0);
	feed(fx, "lockers/a/door/A07/x", "{\"state\":\"open\"}");
	assert_int_equal(fx->n, 0);

	assert_int_equal(bad_count(fx, "a"), 0);
	assert_int_equal(quarantined(fx, "a", NULL, NULL), 0);
}

static void test_optional_fields(void **state)
{
	struct fx *fx = *state;

	/* one of three status fields: the others are not updated, not bad */
	feed(fx, "lockers/a/status", "{\"mains\":false}");
	assert_non_null(find(fx, "a", "mains"));
	assert_null(find(fx, "a", "battery"));
	assert_null(find(fx, "a", "tamper"));
	assert_int_equal(bad_count(fx, "a"), 0);
	/* none of them: bad */
	feed(fx, "lockers/a/status", "{\"voltage\":220}");
	assert_null(find(fx, "a", "mains"));
	assert_int_equal(bad_count(fx, "a"), 1);
	assert_int_equal(quarantined(fx, "a", NULL, NULL), 1);
	/* the watcher found nothing in it either: bad for it too; but a
	 * message with its path is good for it, whoever else it is for */
	assert_int_equal(bad_count(fx, "w"), 1);
	feed(fx, "lockers/b/status", "{\"mains\":true}");
	assert_int_equal(bad_count(fx, "w"), 1);
	assert_int_equal(bad_count(fx, "b"), 0);
}

static void test_malformed(void **state)
{
	struct fx *fx = *state;
	char big[3000];
	static const unsigned char binary[] = {0x89, 'P', 'N', 'G', 0, 1, 2, 0xff, '{'};
	long kept = 0, len = 0;

	memset(big, ' ', sizeof(big));
	memcpy(big, "{\"mains\":true", 13);
	big[sizeof(big) - 1] = '}';

	feed(fx, "lockers/a/status", "{\"mains\":");                  /* invalid JSON */
	feedr(fx, "lockers/a/status", big, sizeof(big), false);       /* over max_payload */
	feed(fx, "lockers/a/status", "{\"mains\":\"yes\"}");          /* wrong type */
	feedr(fx, "lockers/a/status", binary, sizeof(binary), false); /* binary */
	feed(fx, "lockers/a/status", "");                             /* empty */
	feed(fx, "lockers/a/raw", "70000");                           /* out of int16 */
	feed(fx, "lockers/a/door/A1", "{\"state\":\"ajar\"}");        /* not in the enum */
	/* the enum miss is still delivered, as a bad-quality reading */
	const struct cgw_item *it = find(fx, "a", "door");
	assert_non_null(it);
	assert_int_equal(it->quality, CGW_Q_BAD);

	assert_int_equal(bad_count(fx, "a"), 7);
	assert_int_equal(quarantined(fx, "a", &kept, &len), 7);
	assert_int_equal(kept, STORE_QUARANTINE_MAX_PAYLOAD); /* the store truncates */
	assert_int_equal(len, sizeof(big));                   /* and keeps the real size */
	/* one warning for the whole episode */
	assert_int_equal(log_count(fx, "] a: bad payload on"), 1);

	/* meanwhile another device flows */
	feed(fx, "lockers/b/status", "{\"mains\":true}");
	it = find(fx, "b", "mains");
	assert_true(it && it->value.b && it->quality == CGW_Q_GOOD);
	assert_int_equal(bad_count(fx, "b"), 0);

	/* a mixed message: the good value is delivered, the message is bad */
	feed(fx, "lockers/a/status", "{\"mains\":true,\"tamper\":\"maybe\"}");
	assert_non_null(find(fx, "a", "mains"));
	assert_null(find(fx, "a", "tamper"));
	assert_int_equal(bad_count(fx, "a"), 8);

	/* a good message right after does not end the episode (a device that
	 * alternates stays one episode); one after a quiet minute does, and the
	 * next bad one is logged again */
	feed(fx, "lockers/a/status", "{\"mains\":true}");
	assert_int_equal(log_count(fx, "] a: good payloads again"), 0);
	fx->mono += EPISODE_QUIET_MS;
	feed(fx, "lockers/a/status", "{\"mains\":true}");
	assert_int_equal(log_count(fx, "] a: good payloads again (after 8 in 0 s)"), 1);
	feed(fx, "lockers/a/status", "nope");
	assert_int_equal(log_count(fx, "] a: bad payload on"), 2);

	/* the reason is kept for status */
	struct driver_stats st;
	assert_int_equal(mqtt_ingest_ops.status(fx->d, &st), 0);
	assert_int_equal(st.n_devices, 3);
	for (size_t i = 0; i < st.n_devices; i++)
		if (st.devices[i].device == (uint32_t)dev_idx(fx, "a"))
			assert_non_null(strstr(st.devices[i].last_error, "invalid JSON"));
	assert_int_equal(st.errors, 9 + 6); /* a's, and w's share of the status topic */
	assert_false(st.connected);
	free(st.devices);
}

static void test_quarantine_bounded(void **state)
{
	struct fx *fx = *state;

	for (int i = 0; i < 3 * MI_QUARANTINE_BURST; i++)
		feed(fx, "lockers/b/raw", "\"x\"");
	/* every one counted, a sample kept */
	assert_int_equal(bad_count(fx, "b"), 3 * MI_QUARANTINE_BURST);
	assert_int_equal(quarantined(fx, "b", NULL, NULL), MI_QUARANTINE_BURST);
	fx->mono += MI_QUARANTINE_WINDOW_MS;
	feed(fx, "lockers/b/raw", "\"x\"");
	assert_int_equal(quarantined(fx, "b", NULL, NULL), MI_QUARANTINE_BURST + 1);
	/* the start line, and a minute later one summary with the count */
	assert_int_equal(log_count(fx, "] b: bad payload on"), 2);
	assert_int_equal(log_count(fx, "(30 times in the last 60 s)"), 1);
}

/* The case: 200 good and 200 bad payloads interleaved from one
 * device, 50 ms apart, made 401 log lines; now one episode: a start line,
 * a summary a minute in, and one end line after a quiet minute. */
static void test_alternating_one_episode(void **state)
{
	struct fx *fx = *state;

	for (int i = 0; i < 200; i++) {
		feed(fx, "lockers/a/status", "{\"mains\":true}");
		fx->mono += 50;
		feed(fx, "lockers/a/status", "not json");
		fx->mono += 50;
	}
	assert_int_equal(bad_count(fx, "a"), 200);
	assert_int_equal(log_count(fx, "] a: "), 1);
	fx->mono += EPISODE_QUIET_MS;
	feed(fx, "lockers/a/status", "{\"mains\":true}");
	assert_int_equal(log_count(fx, "] a: good payloads again (after 200 in 20 s)"), 1);
	assert_int_equal(log_count(fx, "] a: "), 2);
}

static void test_stale(void **state)
{
	struct fx *fx = *state;
	int64_t t0 = fx->mono; /* ~ when the driver opened */

	/* unknown devices are not offline before stale_after (b: 2 s) */
	stale(fx, t0 + 1000);
	assert_int_equal(fx->n, 0);
	stale(fx, t0 + 2100);
	assert_int_equal(fx->n, 1);
	assert_int_equal(state_of(fx, "b"), 0);
	stale(fx, t0 + 3000); /* once */
	assert_int_equal(fx->n, 0);

	/* a message: online, then its value */
	fx->mono = t0 + 4000;
	feed(fx, "lockers/b/raw", "5");
	assert_int_equal(fx->n, 2);
	assert_int_equal(fx->items[0].kind, CGW_ITEM_DEVICE_STATE);
	assert_true(fx->items[0].online);
	assert_int_equal(fx->items[1].kind, CGW_ITEM_READING);
	stale(fx, t0 + 5000);
	assert_int_equal(fx->n, 0);
	stale(fx, t0 + 6001 + 1); /* 2 s after the message */
	assert_int_equal(state_of(fx, "b"), 0);

	/* a bad payload still shows the device is alive */
	fx->mono = t0 + 7000;
	feed(fx, "lockers/b/raw", "garbage");
	assert_int_equal(state_of(fx, "b"), 1);

	/* the others: 10 s */
	stale(fx, t0 + 10100);
	assert_int_equal(state_of(fx, "a"), 0);
	assert_int_equal(state_of(fx, "w"), 0);
	assert_int_equal(state_of(fx, "b"), 0);
	assert_int_equal(fx->n, 3);

	struct driver_stats st;
	assert_int_equal(mqtt_ingest_ops.status(fx->d, &st), 0);
	for (size_t i = 0; i < st.n_devices; i++)
		assert_false(st.devices[i].online);
	free(st.devices);
}

static void test_retained(void **state)
{
	struct fx *fx = *state;
	const char *ev = "{\"action\":\"stored\"}";

	/* a retained state is taken, a retained event is an old one: not
	 * replayed; neither is a sign of life */
	feedr(fx, "lockers/a/status", "{\"mains\":false}", 15, true);
	assert_int_equal(fx->n, 2); /* a's and w's values, no state */
	assert_int_equal(state_of(fx, "a"), -1);
	assert_non_null(find(fx, "a", "mains"));
	feedr(fx, "lockers/a/parcel", ev, strlen(ev), true);
	assert_int_equal(fx->n, 0);
	assert_int_equal(bad_count(fx, "a"), 0);
	feedr(fx, "lockers/a/parcel", ev, strlen(ev), false);
	assert_int_equal(fx->n, 2);
	assert_int_equal(state_of(fx, "a"), 1);
	assert_int_equal(fx->items[1].kind, CGW_ITEM_EVENT);
}

static void test_rate_limit(void **state)
{
	struct fx *fx = *state;
	const char *on = "{\"active\":true}";

	/* the first motion event goes out; the next ones within 30 s are
	 * counted; the first after the interval says how many were held */
	feed(fx, "lockers/a/status", "{\"mains\":true}"); /* online first */
	feed(fx, "lockers/b/status", "{\"mains\":true}");
	feed(fx, "lockers/a/motion", on);
	assert_int_equal(fx->n, 1);
	assert_int_equal(fx->items[0].kind, CGW_ITEM_EVENT);
	assert_int_equal(fx->items[0].suppressed, 0);
	for (int i = 0; i < 5; i++) {
		fx->mono += 1000;
		feed(fx, "lockers/a/motion", on);
		assert_int_equal(fx->n, 0);
	}
	fx->mono += 30000;
	feed(fx, "lockers/a/motion", on);
	assert_int_equal(fx->n, 1);
	assert_int_equal(fx->items[0].suppressed, 5);
	/* another device's motion has its own interval */
	feed(fx, "lockers/b/motion", on);
	assert_int_equal(fx->n, 1);
	assert_int_equal(fx->items[0].suppressed, 0);
	/* events without a rate_limit are never held back */
	for (int i = 0; i < 3; i++) {
		feed(fx, "lockers/a/parcel", "{\"action\":\"stored\"}");
		assert_int_equal(fx->n, 1);
	}
}

static void test_report_changes(void **state)
{
	struct fx *fx = *state;
	const struct cgw_item *it;

	/* a device repeating its status: only news reach the core */
	feed(fx, "lockers/a/status", "{\"mains\":true,\"power\":{\"battery\":80}}");
	assert_non_null(find(fx, "a", "mains"));
	assert_non_null(find(fx, "a", "battery"));
	feed(fx, "lockers/a/status", "{\"mains\":true,\"power\":{\"battery\":80.5}}");
	assert_null(find(fx, "a", "mains"));   /* same */
	assert_null(find(fx, "a", "battery")); /* within the deadband of 1 */
	feed(fx, "lockers/a/status", "{\"mains\":false,\"power\":{\"battery\":81.5}}");
	assert_non_null(find(fx, "a", "mains"));
	it = find(fx, "a", "battery"); /* 1.5 from the last value sent */
	assert_true(it && it->value.d == 81.5);
	feed(fx, "lockers/a/status", "{\"mains\":false,\"power\":{\"battery\":81.5}}");
	assert_int_equal(fx->n, 0);
	/* report_every: the unchanged value again after a minute */
	fx->mono += 60000;
	feed(fx, "lockers/a/status", "{\"mains\":false,\"power\":{\"battery\":81.5}}");
	assert_non_null(find(fx, "a", "battery"));
	assert_non_null(find(fx, "a", "mains")); /* default report_every: 1m too */
	feed(fx, "lockers/a/status", "{\"mains\":false,\"power\":{\"battery\":81.5}}");
	assert_int_equal(fx->n, 0);

	/* a bad-quality reading once per episode, then the good value again */
	feed(fx, "lockers/a/door/A1", "{\"state\":\"open\"}");
	assert_non_null(find(fx, "a", "door"));
	feed(fx, "lockers/a/door/A1", "{\"state\":\"ajar\"}");
	it = find(fx, "a", "door");
	assert_true(it && it->quality == CGW_Q_BAD);
	feed(fx, "lockers/a/door/A1", "{\"state\":\"ajar\"}");
	assert_null(find(fx, "a", "door"));
	feed(fx, "lockers/a/door/A1", "{\"state\":\"open\"}");
	it = find(fx, "a", "door");
	assert_true(it && it->quality == CGW_Q_GOOD && it->value.i == 1);

	/* events are never held back */
	feed(fx, "lockers/a/parcel", "{\"action\":\"stored\"}");
	assert_non_null(find(fx, "a", "parcel"));
	feed(fx, "lockers/a/parcel", "{\"action\":\"stored\"}");
	assert_non_null(find(fx, "a", "parcel"));

	/* after an offline spell, the first values are news again */
	stale(fx, fx->mono + 10001);
	assert_int_equal(state_of(fx, "a"), 0);
	fx->mono += 10002;
	feed(fx, "lockers/a/status", "{\"mains\":false,\"power\":{\"battery\":81.5}}");
	assert_int_equal(state_of(fx, "a"), 1);
	assert_non_null(find(fx, "a", "mains"));
	assert_non_null(find(fx, "a", "battery"));
}

static void test_queue_full(void **state)
{
	struct fx *fx = *state;
	struct driver_stats st;

	/* nobody drains: pushes fail, nothing leaks, nothing blocks */
	for (int i = 0; i < 2 * QCAP; i++)
		mqtt_ingest_feed(fx->d, "lockers/a/parcel", "{\"action\":\"stored\"}", 19, false,
				 fx->wall, fx->mono);
	assert_int_equal(mqtt_ingest_ops.status(fx->d, &st), 0);
	assert_int_equal(st.requests, 2 * QCAP);
	assert_true(st.errors >= QCAP); /* the drops */
	free(st.devices);
	fx->n = queue_pop_batch(fx->q, fx->items, QCAP);
	assert_int_equal(fx->n, QCAP);
}

struct sink {
	size_t items, events, settles;
};

static void sink_deliver(void *core, struct cgw_item *it)
{
	struct sink *k = core;

	k->items++;
	k->events += it->kind == CGW_ITEM_EVENT;
	cgw_value_clear(&it->value); /* the core owns it */
}

static void sink_settle(void *core)
{
	((struct sink *)core)->settles++;
}

/* The core-thread way: every item goes straight to the core, none is
 * dropped however many come, and the queue is not used at all. */
static void test_direct_delivery(void **state)
{
	struct fx *fx = *state;
	struct sink k = {0};
	struct driver *d = NULL;
	struct driver_stats st;
	struct driver_env env = {.cfg = fx->cfg,
				 .bus = 0,
				 .loop = fx->loop,
				 .store = fx->store,
				 .deliver = sink_deliver,
				 .settle = sink_settle,
				 .core = &k};

	assert_int_equal(mqtt_ingest_ops.open(&env, &d), 0);
	for (int i = 0; i < 4 * QCAP; i++)
		mqtt_ingest_feed(d, "lockers/a/parcel", "{\"action\":\"stored\"}", 19, false,
				 fx->wall, fx->mono);
	assert_int_equal(k.events, 4 * QCAP);
	assert_int_equal(k.items, 4 * QCAP + 1); /* and "online" first */
	assert_int_equal(mqtt_ingest_ops.status(d, &st), 0);
	assert_int_equal(st.errors, 0);
	free(st.devices);
	assert_int_equal(queue_pop_batch(fx->q, fx->items, QCAP), 0);
	mqtt_ingest_ops.close(d);
}

int main(void)
{
	mosquitto_lib_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_filters, setup, teardown),
		cmocka_unit_test_setup_teardown(test_values, setup, teardown),
		cmocka_unit_test_setup_teardown(test_optional_fields, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alternating_one_episode, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quarantine_bounded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retained, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rate_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_report_changes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_direct_delivery, setup, teardown),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	mosquitto_lib_cleanup();
	return r;
}
