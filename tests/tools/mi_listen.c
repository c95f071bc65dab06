/*
 * mi_listen - run the MQTT ingest driver of one configuration on a loop, with
 * a store in a temporary directory, and print what it hands to the core, one
 * line per queue item:
 *
 *   state DEVICE online|offline
 *   reading DEVICE POINT VALUE QUALITY ts=MS
 *   event DEVICE POINT VALUE ts=MS
 *
 * VALUE is true/false, a number, the enum word when the point has one, or
 * the string as it is (null when there is no value). On SIGUSR1, and once
 * more at exit, it prints the driver's status and the quarantine:
 *
 *   status connected=0|1 messages=N errors=N
 *   bad DEVICE N                       (bad payloads per device)
 *   quarantined DEVICE TOPIC LEN REASON
 *   quarantine N                       (rows; always the last line)
 *
 * Usage: mi_listen -c CONFIG [-b BUS] [-l LEVEL]
 *   -b  the MQTT bus to run (default: the first one)
 *   -l  log level on stderr (default info)
 * Stops on SIGTERM or SIGINT (exit 0). Exit 2 for a bad configuration, 1 for
 * anything else. Used by tests/integration/mqtt_ingest.sh; the daemon wires
 * the same driver into the core.
 */
#include <errno.h>
#include <mosquitto.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "driver.h"
#include "log.h"
#include "loop.h"
#include "mqtt_ingest.h"
#include "queue.h"
#include "store.h"

#define BATCH 256

struct app {
	struct cgw_config *cfg;
	size_t bus;
	struct loop *loop;
	struct queue *q;
	struct store *store;
	struct driver *drv;
	struct loop_timer *flush_timer;
	char dir[64];
	char db[128];
	struct cgw_item items[BATCH];
};

static void print_value(const struct cfg_point *pt, const struct cgw_value *v)
{
	int64_t raw;

	switch (v->type) {
	case CGW_V_NONE:
		fputs("null", stdout);
		return;
	case CGW_V_BOOL:
		fputs(v->b ? "true" : "false", stdout);
		return;
	case CGW_V_INT:
	case CGW_V_UINT:
		raw = v->type == CGW_V_INT ? v->i : (int64_t)v->u;
		for (size_t i = 0; i < pt->n_enums; i++) {
			if (pt->enums[i].key == raw) {
				fputs(pt->enums[i].label, stdout);
				return;
			}
		}
		if (v->type == CGW_V_INT)
			printf("%lld", (long long)v->i);
		else
			printf("%llu", (unsigned long long)v->u);
		return;
	case CGW_V_DOUBLE:
		printf("%.15g", v->d);
		return;
	case CGW_V_STRING:
		fputs(v->s, stdout);
		return;
	}
}

static void print_items(struct app *a)
{
	size_t n;

	while ((n = queue_pop_batch(a->q, a->items, BATCH)) > 0) {
		for (size_t i = 0; i < n; i++) {
			struct cgw_item *it = &a->items[i];
			const struct cfg_device *d = &a->cfg->devices[it->device];
			const struct cfg_profile *pr = cfg_device_profile(a->cfg, d);
			const struct cfg_point *pt =
				it->point < pr->n_points ? &pr->points[it->point] : NULL;

			switch (it->kind) {
			case CGW_ITEM_DEVICE_STATE:
				printf("state %s %s\n", d->id, it->online ? "online" : "offline");
				break;
			case CGW_ITEM_READING:
			case CGW_ITEM_EVENT:
				if (!pt)
					break;
				printf("%s %s %s ",
				       it->kind == CGW_ITEM_EVENT ? "event" : "reading", d->id,
				       pt->name);
				print_value(pt, &it->value);
				if (it->kind == CGW_ITEM_READING)
					printf(" %s", cgw_quality_name(it->quality));
				printf(" ts=%lld\n", (long long)it->ts_ms);
				break;
			case CGW_ITEM_WRITE_RESULT:
				printf("write_result %s token=%llu result=%d\n", d->id,
				       (unsigned long long)it->token, it->result);
				break;
			case CGW_ITEM_CYCLE_END:
			case CGW_ITEM_COMMISSION_RESULT:
				break;
			}
			cgw_value_clear(&it->value);
		}
	}
	fflush(stdout);
}

static void print_report(struct app *a)
{
	struct driver_stats st;
	sqlite3 *db = NULL;
	sqlite3_stmt *q = NULL;
	long rows = -1;

	if (a->drv && mqtt_ingest_ops.status(a->drv, &st) == 0) {
		printf("status connected=%d messages=%llu errors=%llu\n", st.connected,
		       (unsigned long long)st.requests, (unsigned long long)st.errors);
		for (size_t i = 0; i < st.n_devices; i++)
			printf("bad %s %llu\n", a->cfg->devices[st.devices[i].device].id,
			       (unsigned long long)st.devices[i].bad_payloads);
		free(st.devices);
	}
	store_flush(a->store);
	if (sqlite3_open_v2(a->db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(
		    db, "SELECT device, topic, payload_len, reason FROM quarantine ORDER BY id", -1,
		    &q, NULL) == SQLITE_OK) {
		rows = 0;
		while (sqlite3_step(q) == SQLITE_ROW) {
			rows++;
			printf("quarantined %s %s %lld %s\n", sqlite3_column_text(q, 0),
			       sqlite3_column_text(q, 1), (long long)sqlite3_column_int64(q, 2),
			       sqlite3_column_text(q, 3));
		}
	}
	sqlite3_finalize(q);
	sqlite3_close(db);
	printf("quarantine %ld\n", rows);
	fflush(stdout);
}

static void on_queue(struct loop *l, int fd, uint32_t ev, void *arg)
{
	(void)l;
	(void)fd;
	(void)ev;
	print_items(arg);
}

static void on_flush(struct loop *l, struct loop_timer *t, void *arg)
{
	struct app *a = arg;

	(void)l;
	store_flush(a->store);
	loop_timer_in(t, 100);
}

static void on_signal(struct loop *l, int signo, void *arg)
{
	struct app *a = arg;

	if (signo == SIGUSR1) {
		print_items(a);
		print_report(a);
		return;
	}
	loop_stop(l);
}

int main(int argc, char **argv)
{
	struct app a = {.bus = SIZE_MAX};
	struct cfg_errors errs = {0};
	const char *path = NULL, *bus = NULL;
	int level = LOG_INFO, opt, rc = 1;
	char err[256];
	static const int sigs[] = {SIGTERM, SIGINT, SIGUSR1};

	while ((opt = getopt(argc, argv, "c:b:l:h")) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 'b':
			bus = optarg;
			break;
		case 'l':
			level = log_level_parse(optarg);
			if (level < 0) {
				fprintf(stderr, "mi_listen: unknown log level '%s'\n", optarg);
				return 2;
			}
			break;
		default:
			fprintf(stderr, "usage: mi_listen -c CONFIG [-b BUS] [-l LEVEL]\n");
			return opt == 'h' ? 0 : 2;
		}
	}
	if (!path) {
		fprintf(stderr, "usage: mi_listen -c CONFIG [-b BUS] [-l LEVEL]\n");
		return 2;
	}
	log_setup(true, level);
	if (config_load(path, &a.cfg, &errs) < 0) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.v[i]);
		cfg_errors_free(&errs);
		return 2;
	}
	for (size_t i = 0; i < a.cfg->n_buses && a.bus == SIZE_MAX; i++)
		if (mqtt_bus_opts(&a.cfg->buses[i]) &&
		    (!bus || !strcmp(bus, a.cfg->buses[i].name)))
			a.bus = i;
	if (a.bus == SIZE_MAX) {
		fprintf(stderr, "mi_listen: %s: no MQTT bus%s%s\n", path, bus ? " named " : "",
			bus ? bus : "");
		config_free(a.cfg);
		return 2;
	}
	mosquitto_lib_init();
	snprintf(a.dir, sizeof(a.dir), "%s/mi_listen.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(a.dir)) {
		perror("mi_listen: mkdtemp");
		goto out;
	}
	snprintf(a.db, sizeof(a.db), "%s/cgw.db", a.dir);
	if (store_open(&a.store, a.db, NULL, err, sizeof(err)) < 0) {
		fprintf(stderr, "mi_listen: store: %s\n", err);
		goto out;
	}
	if (loop_new(&a.loop) < 0 || queue_new(&a.q, 4096) < 0 ||
	    loop_signals(a.loop, sigs, 3, on_signal, &a) < 0 ||
	    loop_add_fd(a.loop, queue_fd(a.q), EPOLLIN, on_queue, &a) < 0 ||
	    !(a.flush_timer = loop_timer_new(a.loop, on_flush, &a))) {
		fprintf(stderr, "mi_listen: setup failed\n");
		goto out;
	}
	loop_timer_in(a.flush_timer, 100);
	struct driver_env env = {.cfg = a.cfg,
				 .bus = a.bus,
				 .queue = a.q,
				 .loop = a.loop,
				 .store = a.store};
	int r = mqtt_ingest_ops.open(&env, &a.drv);
	if (r < 0) {
		fprintf(stderr, "mi_listen: open: %s\n", strerror(-r));
		goto out;
	}
	if (loop_run(a.loop) < 0)
		goto out;
	rc = 0;
out:
	if (a.q)
		print_items(&a);
	if (a.store)
		print_report(&a);
	mqtt_ingest_ops.close(a.drv);
	if (a.q)
		print_items(&a);
	loop_timer_free(a.flush_timer);
	queue_free(a.q);
	loop_free(a.loop);
	store_close(a.store);
	if (a.dir[0] && a.db[0]) {
		char p[160];
		static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};
		for (size_t i = 0; i < 4; i++) {
			snprintf(p, sizeof(p), "%s%s", a.db, sfx[i]);
			unlink(p);
		}
		rmdir(a.dir);
	}
	config_free(a.cfg);
	mosquitto_lib_cleanup();
	return rc;
}
