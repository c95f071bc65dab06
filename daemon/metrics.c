/*
 * metrics.c - /metrics and /healthz with libmicrohttpd, driven by the core
 * loop (MHD_USE_EPOLL without a thread: MHD_run() when its epoll fd is
 * readable or its timeout is due).
 *
 * The listening socket is made here rather than by MHD, so that a port in
 * use is reported as exactly that, and connections are accepted here and
 * handed to MHD (MHD_add_connection), so that slow clients cannot keep a
 * monitor out. MHD alone would stop accepting at its connection limit and
 * leave /healthz in the listen backlog behind clients that connect and
 * never finish a request (300 of them made /healthz time out). Here:
 *   - a new connection waits here (pending) until it sends its first byte,
 *     and only then goes to MHD, which reads its request in the same loop
 *     turn: a monitor's request, sent whole at once, is answered at once;
 *   - at most METRICS_PENDING_PER_IP / METRICS_PENDING_MAX pending, and
 *     METRICS_PER_IP / METRICS_MAX_CONNECTIONS with MHD, per client address
 *     and in all: a connection over a limit pushes out the oldest one still
 *     waiting for its request (of its address first), so the newest wins and
 *     a slow client holds a slot only until someone needs it;
 *   - a client has METRICS_REQUEST_MS to send a whole request (headers),
 *     from its connect or from the end of its previous answer; then it is
 *     dropped, however it trickles;
 *   - a request (headers, URL) fits in METRICS_CONN_MEMORY, a GET carries
 *     no body worth reading (more than METRICS_BODY_MAX bytes: dropped), and
 *     an answer not taken within METRICS_CONN_TIMEOUT_S is dropped.
 * A connection is dropped with shutdown(): MHD sees the end of the stream,
 * closes it and tells us (MHD_CONNECTION_NOTIFY_CLOSED).
 *
 * Every request is answered within one MHD_run() on the core thread: reads
 * and writes are non-blocking, so a request costs what building its answer
 * costs (core_status_json(), the store's figures) and never waits on the
 * client.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "episode.h"
#include "log.h"
#include "model.h"

#define METRICS_PENDING_MAX 64     /* connected, nothing sent yet */
#define METRICS_PENDING_PER_IP 16  /* the same, per client address */
#define METRICS_MAX_CONNECTIONS 32 /* handed to MHD */
#define METRICS_PER_IP 8           /* the same, per client address */
#define METRICS_REQUEST_MS 2000    /* to send a whole request */
#define METRICS_SWEEP_MS 250
#define METRICS_ACCEPT_BUDGET 16  /* accepts per loop turn */
#define METRICS_CONN_TIMEOUT_S 10 /* MHD's: no progress at all */
#define METRICS_CONN_MEMORY (32 * 1024)
#define METRICS_BODY_MAX 1024
/* slots: pending, with MHD, and dropped but not yet closed by MHD */
#define METRICS_SLOTS (METRICS_PENDING_MAX + 2 * METRICS_MAX_CONNECTIONS + METRICS_ACCEPT_BUDGET)

enum mc_state { MC_PENDING, MC_MHD, MC_DROPPED };

struct mconn {
	struct metrics *m;
	int fd; /* -1: free slot */
	enum mc_state state;
	unsigned char ip[16];
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int64_t waiting_ms; /* mono: since when a request is awaited, -1 answering */
	size_t body;        /* bytes of body seen on the current request */
};

struct metrics {
	struct core *core;
	struct loop *loop;
	struct MHD_Daemon *mhd;
	int epfd;
	int lfd; /* our listening socket */
	struct loop_timer *timer;
	struct loop_timer *sweep;
	char listen[128];
	struct mconn conn[METRICS_SLOTS];
	uint64_t accepted, dropped, refused;
	struct episode dropping;
};

/* ---- text building ------------------------------------------------------------ */

struct sb {
	char *p;
	size_t len, cap;
	bool oom;
};

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sb *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = true;
			return;
		}
		if (b->p && (size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? b->cap * 2 : 8192;
		while (cap < b->len + (size_t)n + 1)
			cap *= 2;
		char *np = realloc(b->p, cap);
		if (!np) {
			b->oom = true;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
}

/* A label value: backslash, double quote and newline are escaped. */
static void sb_label_value(struct sb *b, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\')
			sb_printf(b, "\\\\");
		else if (*v == '"')
			sb_printf(b, "\\\"");
		else if (*v == '\n')
			sb_printf(b, "\\n");
		else
			sb_printf(b, "%c", *v);
	}
}

static void family(struct sb *b, const char *name, const char *type, const char *help)
{
	sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample; labels are NULL-terminated key, value pairs. A value that is
 * missing (not a number or boolean) is left out. */
static void sample(struct sb *b, const char *name, const char *const *labels, const json_t *v)
{
	char num[40];

	if (json_is_integer(v)) {
		snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
	} else if (json_is_real(v)) {
		double d = json_real_value(v);
		if (isnan(d))
			snprintf(num, sizeof(num), "NaN");
		else if (isinf(d))
			snprintf(num, sizeof(num), "%cInf", d < 0 ? '-' : '+');
		else
			snprintf(num, sizeof(num), "%.15g", d);
	} else if (json_is_boolean(v)) {
		snprintf(num, sizeof(num), "%d", json_is_true(v));
	} else {
		return;
	}
	sb_printf(b, "%s", name);
	if (labels && labels[0]) {
		sb_printf(b, "{");
		for (size_t i = 0; labels[i] && labels[i + 1]; i += 2) {
			sb_printf(b, "%s%s=\"", i ? "," : "", labels[i]);
			sb_label_value(b, labels[i + 1]);
			sb_printf(b, "\"");
		}
		sb_printf(b, "}");
	}
	sb_printf(b, " %s\n", num);
}

static void sample_num(struct sb *b, const char *name, const char *const *labels, double v)
{
	json_t *j = json_real(v);

	sample(b, name, labels, j);
	json_decref(j);
}

static const char *jstr(const json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : "";
}

/* ---- /metrics ------------------------------------------------------------------- */

/* One family with a sample per array item: labelled by the item's `idkey`
 * (as label `label`), valued by its `field`. */
static void per_item(struct sb *b, const json_t *arr, const char *name, const char *type,
		     const char *help, const char *label, const char *idkey, const char *field)
{
	size_t i;
	json_t *x;

	family(b, name, type, help);
	json_array_foreach(arr, i, x)
	{
		const char *labels[] = {label, jstr(x, idkey), NULL};
		sample(b, name, labels, json_object_get(x, field));
	}
}

static bool bus_is_modbus(const json_t *buses, const char *bus)
{
	size_t i;
	json_t *b;

	json_array_foreach(buses, i, b)
	{
		if (!strcmp(jstr(b, "name"), bus))
			return strncmp(jstr(b, "type"), "modbus", 6) == 0;
	}
	return false;
}

/* One family over the devices: per device, counters[key] (or the device's
 * own key when counter is false), on Modbus or MQTT buses. */
static void device_family(struct sb *b, json_t *devices, json_t *buses, const char *name,
			  const char *type, const char *help, const char *key, bool modbus,
			  const char *kind)
{
	size_t i;
	json_t *d;
	bool any = false;

	json_array_foreach(devices, i, d)
	{
		json_t *v = json_object_get(json_object_get(d, "counters"), key);
		if (!v || bus_is_modbus(buses, jstr(d, "bus")) != modbus)
			continue;
		if (!any)
			family(b, name, type, help);
		any = true;
		const char *labels[] = {"bus",         jstr(d, "bus"),       "device",
					jstr(d, "id"), kind ? "kind" : NULL, kind,
					NULL};
		sample(b, name, labels, v);
	}
}

static void modbus_errors(struct sb *b, json_t *devices, json_t *buses)
{
	static const char *const kinds[][2] = {{"timeouts", "timeout"},
					       {"exceptions", "exception"},
					       {"crc_errors", "crc"},
					       {"conn_errors", "connection"}};
	size_t i;
	json_t *d;
	bool any = false;

	json_array_foreach(devices, i, d)
	{
		json_t *c = json_object_get(d, "counters");
		if (!c || !bus_is_modbus(buses, jstr(d, "bus")))
			continue;
		if (!any)
			family(b, "cgw_modbus_errors_total", "counter",
			       "Failed Modbus requests by kind: timeout, exception, crc, connection.");
		any = true;
		for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
			const char *labels[] = {"bus",  jstr(d, "bus"), "device", jstr(d, "id"),
						"kind", kinds[k][1],    NULL};
			sample(b, "cgw_modbus_errors_total", labels,
			       json_object_get(c, kinds[k][0]));
		}
	}
}

static void devices_metrics(struct sb *b, json_t *devices, json_t *buses)
{
	size_t i;
	json_t *d;

	family(b, "cgw_device_online", "gauge",
	       "1 if the device answers (Modbus) or reports (MQTT), 0 if it is offline or not yet known.");
	json_array_foreach(devices, i, d)
	{
		const char *labels[] = {"device", jstr(d, "id"), NULL};
		sample_num(b, "cgw_device_online", labels, !strcmp(jstr(d, "state"), "online"));
	}
	per_item(b, devices, "cgw_device_shelved", "gauge",
		 "1 if the device's alarms are shelved (maintenance).", "device", "id", "shelved");
	family(b, "cgw_device_last_ok_timestamp_seconds", "gauge",
	       "When the device last answered or reported, seconds since the epoch (0: never).");
	json_array_foreach(devices, i, d)
	{
		json_t *t = json_object_get(d, "last_ok");
		const char *labels[] = {"device", jstr(d, "id"), NULL};
		if (json_is_integer(t))
			sample_num(b, "cgw_device_last_ok_timestamp_seconds", labels,
				   (double)json_integer_value(t) / 1000.0);
	}
	device_family(b, devices, buses, "cgw_modbus_requests_total", "counter",
		      "Modbus requests sent to the device.", "requests", true, NULL);
	modbus_errors(b, devices, buses);
	device_family(b, devices, buses, "cgw_modbus_polls_due_total", "counter",
		      "Poll cycles of the device that were due.", "polls_due", true, NULL);
	device_family(b, devices, buses, "cgw_modbus_polls_done_total", "counter",
		      "Poll cycles of the device that were done.", "polls_done", true, NULL);
	device_family(b, devices, buses, "cgw_modbus_line_share", "gauge",
		      "The device's share of its line's busy time.", "line_share", true, NULL);
	bool any = false;
	json_array_foreach(devices, i, d)
	{
		json_t *v = json_object_get(json_object_get(d, "counters"), "rtt_ms_avg");
		if (!json_is_number(v) || !bus_is_modbus(buses, jstr(d, "bus")))
			continue;
		if (!any)
			family(b, "cgw_modbus_response_seconds", "gauge",
			       "Average time the device takes to answer a Modbus request.");
		any = true;
		const char *labels[] = {"bus", jstr(d, "bus"), "device", jstr(d, "id"), NULL};
		sample_num(b, "cgw_modbus_response_seconds", labels, json_number_value(v) / 1000.0);
	}
	device_family(b, devices, buses, "cgw_mqtt_messages_total", "counter",
		      "MQTT messages received for the device.", "requests", false, NULL);
	device_family(b, devices, buses, "cgw_mqtt_bad_payloads_total", "counter",
		      "MQTT payloads for the device that could not be used (quarantined).",
		      "bad_payloads", false, NULL);
}

static void status_metrics(struct sb *b, json_t *st)
{
	json_t *buses = json_object_get(st, "buses"), *ups = json_object_get(st, "uplinks");
	json_t *outbox = json_object_get(st, "outbox"), *store = json_object_get(st, "store");
	json_t *sev = json_object_get(st, "alarms_active"), *q = json_object_get(st, "queue");
	json_t *x, *lanes, *lane;
	const char *key;
	size_t i;

	family(b, "cgw_info", "gauge", "The gateway, its site and the hash of its configuration.");
	{
		const char *labels[] = {"gateway",     jstr(st, "gateway"),
					"site",        jstr(st, "site"),
					"config_hash", jstr(st, "config_hash"),
					NULL};
		sample_num(b, "cgw_info", labels, 1);
	}
	family(b, "cgw_healthy", "gauge",
	       "1 if the store commits and is not on a full disk (what /healthz reports), else 0.");
	sample(b, "cgw_healthy", NULL, json_object_get(st, "healthy"));
	family(b, "cgw_uptime_seconds", "gauge", "Seconds since cgwd started.");
	sample(b, "cgw_uptime_seconds", NULL, json_object_get(st, "uptime_s"));

	family(b, "cgw_bus_connected", "gauge",
	       "1 if the bus is up: serial port open, TCP or MQTT connection established.");
	json_array_foreach(buses, i, x)
	{
		const char *labels[] = {"bus", jstr(x, "name"), "type", jstr(x, "type"), NULL};
		sample(b, "cgw_bus_connected", labels, json_object_get(x, "connected"));
	}
	per_item(b, buses, "cgw_bus_devices", "gauge", "Devices configured on the bus.", "bus",
		 "name", "devices");
	per_item(b, buses, "cgw_bus_devices_online", "gauge", "Devices of the bus that are online.",
		 "bus", "name", "online");
	per_item(b, buses, "cgw_bus_line_utilisation", "gauge",
		 "Modbus: share of the time the line (or connection) was busy with requests.",
		 "bus", "name", "line_utilisation");
	per_item(b, buses, "cgw_bus_line_busy_ms_total", "counter",
		 "Modbus: milliseconds the line was busy with requests, timeouts included.", "bus",
		 "name", "line_busy_ms");
	per_item(b, buses, "cgw_bus_cycle_ms", "gauge",
		 "Modbus: line time of one round of every device's last poll cycle.", "bus", "name",
		 "cycle_ms");
	per_item(b, buses, "cgw_bus_schedule_ms", "gauge",
		 "Modbus: the shortest poll on the line; cycle_ms above it means polls are missed.",
		 "bus", "name", "schedule_ms");
	per_item(b, buses, "cgw_bus_foreign_answers_total", "counter",
		 "Modbus: answers that were not the answer to the request (another unit, a late or "
		 "repeated one): counted and dropped.",
		 "bus", "name", "foreign_answers");

	per_item(b, ups, "cgw_uplink_connected", "gauge",
		 "1 if the uplink is connected (MQTT) or its last request succeeded (HTTP).",
		 "uplink", "name", "connected");
	per_item(b, ups, "cgw_uplink_sent_total", "counter", "Messages the uplink sent.", "uplink",
		 "name", "sent");
	per_item(b, ups, "cgw_uplink_acked_total", "counter",
		 "Messages the platform confirmed (PUBACK or 2xx); only these leave the store.",
		 "uplink", "name", "acked");
	per_item(b, ups, "cgw_uplink_refused_total", "counter",
		 "Alarms and device states an HTTP endpoint refused (4xx): kept and retried, "
		 "never dead letters.",
		 "uplink", "name", "refused");

	family(b, "cgw_outbox_messages", "gauge",
	       "Messages waiting in the store for the uplink, by lane.");
	json_array_foreach(outbox, i, x)
	{
		lanes = json_object_get(x, "lanes");
		json_object_foreach(lanes, key, lane)
		{
			const char *labels[] = {"uplink", jstr(x, "uplink"), "lane", key, NULL};
			sample(b, "cgw_outbox_messages", labels, json_object_get(lane, "depth"));
		}
	}
	family(b, "cgw_outbox_oldest_seconds", "gauge",
	       "Age of the oldest message waiting for the uplink, by lane (0: none).");
	json_array_foreach(outbox, i, x)
	{
		lanes = json_object_get(x, "lanes");
		json_object_foreach(lanes, key, lane)
		{
			const char *labels[] = {"uplink", jstr(x, "uplink"), "lane", key, NULL};
			sample(b, "cgw_outbox_oldest_seconds", labels,
			       json_object_get(lane, "oldest_age_s"));
		}
	}

	family(b, "cgw_alarms_active", "gauge", "Alarms that are not normal, by severity.");
	json_object_foreach(sev, key, x)
	{
		const char *labels[] = {"severity", key, NULL};
		sample(b, "cgw_alarms_active", labels, x);
	}
	family(b, "cgw_alarm_flood", "gauge", "1 while an alarm flood is on (ISA-18.2).");
	sample(b, "cgw_alarm_flood", NULL, json_object_get(st, "alarm_flood"));

	if (store) {
		json_t *db = json_object_get(store, "db_bytes"),
		       *wal = json_object_get(store, "wal_bytes"),
		       *shm = json_object_get(store, "shm_bytes");
		family(b, "cgw_store_bytes", "gauge",
		       "Size of the store: database, WAL and WAL index.");
		sample_num(b, "cgw_store_bytes", NULL,
			   (double)(json_integer_value(db) + json_integer_value(wal) +
				    json_integer_value(shm)));
		family(b, "cgw_store_wal_bytes", "gauge", "Size of the store's WAL file.");
		sample(b, "cgw_store_wal_bytes", NULL, wal);
		family(b, "cgw_store_state", "gauge",
		       "1 for the store's state: ok, at_cap, disk_full (only alarms are written) "
		       "or memory_only (the file cannot be written).");
		{
			static const char *const states[] = {"ok", "at_cap", "disk_full",
							     "memory_only"};
			for (size_t k = 0; k < 4; k++) {
				const char *l[] = {"state", states[k], NULL};
				sample_num(b, "cgw_store_state", l,
					   !strcmp(jstr(store, "state"), states[k]));
			}
		}
		family(b, "cgw_store_fs_free_bytes", "gauge",
		       "Free space of the filesystem that holds the store.");
		sample(b, "cgw_store_fs_free_bytes", NULL, json_object_get(store, "fs_free_bytes"));
		family(b, "cgw_store_min_free_bytes", "gauge",
		       "The free-space floor (store.min_free): below it the store stops growing.");
		sample(b, "cgw_store_min_free_bytes", NULL, json_object_get(store, "min_free"));
		family(b, "cgw_store_reserve_bytes", "gauge",
		       "Room held for alarms on a full disk (the reserve file), now.");
		sample(b, "cgw_store_reserve_bytes", NULL, json_object_get(store, "reserve_bytes"));
		family(b, "cgw_store_alarms_in_memory", "gauge",
		       "Alarms that could not be stored, held in memory and delivered from there.");
		sample(b, "cgw_store_alarms_in_memory", NULL,
		       json_object_get(store, "alarms_in_memory"));
		family(b, "cgw_store_alarms_in_memory_total", "counter",
		       "Alarms that had to be held in memory (disk full).");
		sample(b, "cgw_store_alarms_in_memory_total", NULL,
		       json_object_get(store, "alarms_in_memory_total"));
		family(b, "cgw_store_acks_held", "gauge",
		       "Deliveries confirmed while the disk was full, waiting to be written.");
		sample(b, "cgw_store_acks_held", NULL, json_object_get(store, "acks_held"));
		family(b, "cgw_store_lost_total", "counter",
		       "Messages not stored because the disk was full, by lane.");
		{
			const char *lt[] = {"lane", "telemetry", NULL},
				   *le[] = {"lane", "event", NULL};
			sample(b, "cgw_store_lost_total", lt,
			       json_object_get(store, "lost_telemetry"));
			sample(b, "cgw_store_lost_total", le,
			       json_object_get(store, "lost_events"));
		}
		family(b, "cgw_store_disk_full_total", "counter",
		       "Times the store met a full disk (or opened on one).");
		sample(b, "cgw_store_disk_full_total", NULL,
		       json_object_get(store, "disk_full_episodes"));
		family(b, "cgw_store_checkpoint_max_seconds", "gauge",
		       "Longest WAL checkpoint since start (it runs on the core loop).");
		sample_num(b, "cgw_store_checkpoint_max_seconds", NULL,
			   json_number_value(json_object_get(store, "checkpoint_max_ms")) / 1000.0);
		family(b, "cgw_store_max_bytes", "gauge", "The store's size cap (store.max_size).");
		sample(b, "cgw_store_max_bytes", NULL, json_object_get(store, "max_size"));
		family(b, "cgw_store_evicted_total", "counter",
		       "Undelivered messages evicted to keep the store under its cap, by lane.");
		{
			const char *lt[] = {"lane", "telemetry", NULL},
				   *le[] = {"lane", "event", NULL};
			sample(b, "cgw_store_evicted_total", lt,
			       json_object_get(store, "evicted_telemetry"));
			sample(b, "cgw_store_evicted_total", le,
			       json_object_get(store, "evicted_events"));
		}
		family(b, "cgw_store_dead_letters", "gauge",
		       "Messages an uplink refused for good (HTTP 4xx), kept aside.");
		sample(b, "cgw_store_dead_letters", NULL, json_object_get(store, "dead_letters"));
	}

	{
		json_t *cmds = json_object_get(st, "commands");
		family(b, "cgw_commands_total", "counter",
		       "Platform and cgwctl commands, by result (unanswered: no id or no "
		       "topic to answer on).");
		json_object_foreach(cmds, key, x)
		{
			const char *labels[] = {"result", key, NULL};
			sample(b, "cgw_commands_total", labels, x);
		}
	}
	family(b, "cgw_readings_total", "counter", "Point readings the core processed.");
	sample(b, "cgw_readings_total", NULL, json_object_get(st, "readings"));
	family(b, "cgw_values_rejected_total", "counter",
	       "Readings made bad quality by their profile: an invalid: sentinel, or outside "
	       "range:.");
	sample(b, "cgw_values_rejected_total", (const char *const[]){"reason", "invalid", NULL},
	       json_object_get(st, "values_invalid"));
	sample(b, "cgw_values_rejected_total", (const char *const[]){"reason", "range", NULL},
	       json_object_get(st, "values_out_of_range"));
	family(b, "cgw_messages_total", "counter", "Messages the core stored for delivery.");
	sample(b, "cgw_messages_total", NULL, json_object_get(st, "messages"));
	if (q) {
		family(b, "cgw_queue_depth", "gauge",
		       "Items waiting in the queue from the drivers to the core.");
		sample(b, "cgw_queue_depth", NULL, json_object_get(q, "depth"));
		family(b, "cgw_queue_capacity", "gauge", "Capacity of the driver queue.");
		sample(b, "cgw_queue_capacity", NULL, json_object_get(q, "capacity"));
		family(b, "cgw_queue_high_water", "gauge",
		       "Highest depth the driver queue has reached.");
		sample(b, "cgw_queue_high_water", NULL, json_object_get(q, "high_water"));
		family(b, "cgw_queue_full_total", "counter",
		       "Times the driver queue was full (the drivers were slowed down).");
		sample(b, "cgw_queue_full_total", NULL, json_object_get(q, "full_episodes"));
	}
}

/* The stall meter: a Prometheus histogram of core-loop iterations. */
static void loop_metrics(struct sb *b, const struct loop *l)
{
	struct loop_stats ls;
	uint64_t cum = 0;

	loop_get_stats(l, &ls);
	family(b, "cgw_loop_iteration_seconds", "histogram",
	       "Time the core loop spent on one iteration (everything it did between two "
	       "waits); while it runs nothing else is read, raised or sent.");
	for (int i = 0; i <= LOOP_HIST_BUCKETS; i++) {
		char le[32];
		cum += ls.bucket[i];
		if (i < LOOP_HIST_BUCKETS)
			snprintf(le, sizeof(le), "%g", loop_hist_bounds_s[i]);
		else
			snprintf(le, sizeof(le), "+Inf");
		const char *labels[] = {"le", le, NULL};
		sample_num(b, "cgw_loop_iteration_seconds_bucket", labels, (double)cum);
	}
	sample_num(b, "cgw_loop_iteration_seconds_sum", NULL, ls.sum_s);
	sample_num(b, "cgw_loop_iteration_seconds_count", NULL, (double)ls.iterations);
	family(b, "cgw_loop_longest_iteration_seconds", "gauge",
	       "The longest core-loop iteration since cgwd started.");
	sample_num(b, "cgw_loop_longest_iteration_seconds", NULL, (double)ls.longest_ns / 1e9);
	family(b, "cgw_loop_stalls_total", "counter",
	       "Core-loop iterations longer than 100 ms (each logged once per episode).");
	sample_num(b, "cgw_loop_stalls_total", NULL, (double)ls.stalls);
}

static unsigned held(const struct metrics *m)
{
	unsigned n = 0;

	for (size_t i = 0; i < METRICS_SLOTS; i++)
		n += m->conn[i].fd >= 0 && m->conn[i].state != MC_DROPPED;
	return n;
}

static void http_metrics(struct sb *b, const struct metrics *m)
{
	family(b, "cgw_http_connections", "gauge", "Connections to this metrics server held now.");
	sample_num(b, "cgw_http_connections", NULL, held(m));
	family(b, "cgw_http_connections_dropped_total", "counter",
	       "Connections to this metrics server dropped or refused: too slow to send "
	       "a request, or over the limits (per address, in all).");
	sample_num(b, "cgw_http_connections_dropped_total", NULL,
		   (double)(m->dropped + m->refused));
}

static char *render_metrics(struct metrics *m, size_t *len)
{
	struct core *c = m->core;
	struct sb b = {0};
	json_t *st = core_status_json(c), *devices = core_devices_json(c);

	family(&b, "cgw_up", "gauge", "1: cgwd is running and its core loop answers.");
	sample_num(&b, "cgw_up", NULL, 1);
	loop_metrics(&b, m->loop);
	http_metrics(&b, m);
	if (st)
		status_metrics(&b, st);
	if (st && devices)
		devices_metrics(&b, devices, json_object_get(st, "buses"));
	json_decref(st);
	json_decref(devices);
	if (b.oom || !b.p) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}

/* ---- HTTP ------------------------------------------------------------------------ */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
			     char *body, size_t len)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
	char *body = strdup(text);

	if (!body)
		return MHD_NO;
	return reply(conn, status, "text/plain; charset=utf-8", body, strlen(body));
}

static struct mconn *conn_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return ci ? ci->socket_context : NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	static int headers_seen;
	struct metrics *m = cls;
	struct mconn *mc = conn_of(conn);

	(void)version;
	(void)upload_data;
	/* the whole request head is in: the slow-client clock stops */
	if (mc && !*con_cls) {
		mc->waiting_ms = -1;
		mc->body = 0;
	}
	/* anything but GET and HEAD is refused before its body is read (and
	 * the connection closed) */
	if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
		return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
	/* answering at the first call, with only the headers seen, would make
	 * MHD close the connection; scrapers like to keep it */
	if (!*con_cls) {
		*con_cls = &headers_seen;
		return MHD_YES;
	}
	if (*upload_data_size) {
		/* a body on a GET: ignored, up to a bound */
		if (mc && (mc->body += *upload_data_size) > METRICS_BODY_MAX)
			return MHD_NO;
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (!strcmp(url, "/metrics")) {
		size_t len = 0;
		char *body = render_metrics(m, &len);
		if (!body)
			return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
		return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body,
			     len);
	}
	if (!strcmp(url, "/healthz")) {
		/* the loop is alive: it is the thread answering this */
		if (core_healthy(m->core))
			return reply_text(conn, MHD_HTTP_OK, "ok\n");
		return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
				  "unhealthy: the store does not commit, or only alarms on a full "
				  "disk (see cgwctl status)\n");
	}
	return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics or /healthz\n");
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[256];
	size_t n;

	(void)cls;
	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	/* peers that go away mid-request are no news */
	log_debug("metrics", "%s", line);
}

/* ---- connections: accepted here, handed to MHD ------------------------------------ */

static void ip_key(const struct sockaddr_storage *ss, unsigned char ip[16])
{
	memset(ip, 0, 16);
	if (ss->ss_family == AF_INET6)
		memcpy(ip, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
	else if (ss->ss_family == AF_INET)
		memcpy(ip + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
}

static void drop(struct metrics *m, struct mconn *c)
{
	char who[INET6_ADDRSTRLEN] = "?";

	if (c->addr.ss_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&c->addr)->sin_addr, who, sizeof(who));
	else if (c->addr.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&c->addr)->sin6_addr, who,
			  sizeof(who));
	/* slow clients or a flood: once per episode, the first culprit named */
	log_episode_bad(&m->dropping, cgw_mono_ms(), LOG_NOTICE, "metrics",
			"%s: dropping connections that send no request within %d ms or go "
			"over the limits (first from %s); /metrics and /healthz still answer",
			m->listen, METRICS_REQUEST_MS, who);
	m->dropped++;
	if (c->state == MC_PENDING) {
		loop_del_fd(m->loop, c->fd);
		close(c->fd);
		c->fd = -1;
		return;
	}
	/* MHD reads the end of the stream on its next run and closes it */
	shutdown(c->fd, SHUT_RDWR);
	c->state = MC_DROPPED;
}

static void run_mhd(struct metrics *m);
static bool make_room(struct metrics *m, enum mc_state state, const unsigned char ip[16]);

static bool has_data(int fd)
{
	char b;

	return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

/* A pending connection has something to say: MHD takes it, and reads its
 * request at once. */
static void promote(struct metrics *m, struct mconn *c)
{
	int fd = c->fd;

	loop_del_fd(m->loop, fd);
	if (!has_data(fd) || !make_room(m, MC_MHD, c->ip)) {
		/* gone before saying anything, or no room */
		close(fd);
		c->fd = -1;
		return;
	}
	c->state = MC_MHD;
	if (MHD_add_connection(m->mhd, fd, (struct sockaddr *)&c->addr, c->addrlen) != MHD_YES)
		c->fd = -1; /* MHD closed it */
	run_mhd(m);
}

static void on_pending(struct loop *l, int fd, uint32_t events, void *arg)
{
	struct mconn *c = arg;

	(void)l;
	(void)fd;
	(void)events;
	promote(c->m, c);
}

struct by_ip {
	const unsigned char *ip;
	unsigned n;
	struct mconn *oldest; /* waiting */
};

/* Makes room for one more connection from `ip` in `state`. Over the
 * per-address limit, the oldest waiting connection of that address goes;
 * over the total, the oldest waiting one of the address that holds the most
 * (so one address's flood never pushes out another's monitor). False if
 * there is none to push out (every one is being answered). */
static bool make_room(struct metrics *m, enum mc_state state, const unsigned char ip[16])
{
	unsigned per_ip = state == MC_PENDING ? METRICS_PENDING_PER_IP : METRICS_PER_IP;
	unsigned max = state == MC_PENDING ? METRICS_PENDING_MAX : METRICS_MAX_CONNECTIONS;

	for (;;) {
		/* per address seen: a connection of it (its key), how many, the
		 * oldest waiting one */
		struct by_ip by[METRICS_SLOTS];
		size_t n_by = 0, own = SIZE_MAX, hog = SIZE_MAX;
		unsigned n_all = 0;

		for (size_t i = 0; i < METRICS_SLOTS; i++) {
			struct mconn *c = &m->conn[i];
			size_t k;
			if (c->fd < 0 || c->state != state)
				continue;
			n_all++;
			for (k = 0; k < n_by && memcmp(by[k].ip, c->ip, 16); k++)
				;
			if (k == n_by)
				by[n_by++] = (struct by_ip){.ip = c->ip};
			by[k].n++;
			if (c->waiting_ms >= 0 &&
			    (!by[k].oldest || c->waiting_ms < by[k].oldest->waiting_ms))
				by[k].oldest = c;
		}
		for (size_t k = 0; k < n_by; k++) {
			if (!memcmp(by[k].ip, ip, 16))
				own = k;
			if (by[k].oldest && (hog == SIZE_MAX || by[k].n > by[hog].n))
				hog = k;
		}
		unsigned n_ip = own == SIZE_MAX ? 0 : by[own].n;
		struct mconn *v;
		if (n_ip >= per_ip)
			v = by[own].oldest;
		else if (n_all >= max)
			v = hog == SIZE_MAX ? NULL :
			    own != SIZE_MAX && by[own].oldest && by[own].n >= by[hog].n ?
					      by[own].oldest :
					      by[hog].oldest;
		else
			return true;
		if (!v)
			return false;
		/* one that has spoken meanwhile is not pushed out but handed
		 * on: a monitor's request may be in the socket already */
		if (v->state == MC_PENDING && has_data(v->fd))
			promote(m, v);
		else
			drop(m, v);
	}
}

static void on_accept(struct loop *l, int fd, uint32_t events, void *arg)
{
	struct metrics *m = arg;
	int64_t now = cgw_mono_ms();

	(void)events;
	for (int k = 0; k < METRICS_ACCEPT_BUDGET; k++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int cfd = accept4(fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct mconn *c = NULL;
		unsigned char ip[16];

		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break; /* EAGAIN; out of fds: the next event tries again */
		}
		ip_key(&ss, ip);
		make_room(m, MC_PENDING, ip); /* pending ones are all waiting */
		for (size_t i = 0; i < METRICS_SLOTS && !c; i++)
			if (m->conn[i].fd < 0)
				c = &m->conn[i];
		if (!c || loop_add_fd(l, cfd, EPOLLIN | EPOLLRDHUP, on_pending, c) < 0) {
			m->refused++;
			close(cfd);
			continue;
		}
		*c = (struct mconn){.m = m, .fd = cfd, .state = MC_PENDING, .waiting_ms = now};
		memcpy(c->ip, ip, 16);
		memcpy(&c->addr, &ss, len);
		c->addrlen = len;
		m->accepted++;
	}
	if (loop_timer_due(m->sweep) < 0)
		loop_timer_in(m->sweep, METRICS_SWEEP_MS);
}

/* Drops the connections that had METRICS_REQUEST_MS to send a request. */
static void on_sweep(struct loop *l, struct loop_timer *t, void *arg)
{
	struct metrics *m = arg;
	int64_t now = cgw_mono_ms();
	bool any = false;

	(void)l;
	for (size_t i = 0; i < METRICS_SLOTS; i++) {
		struct mconn *c = &m->conn[i];
		if (c->fd < 0 || c->state == MC_DROPPED)
			continue;
		if (c->waiting_ms >= 0 && now - c->waiting_ms >= METRICS_REQUEST_MS)
			drop(m, c);
		else
			any = true;
	}
	run_mhd(m);
	if (any)
		loop_timer_in(t, METRICS_SWEEP_MS);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode toe)
{
	struct metrics *m = cls;
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	int fd = ci ? ci->connect_fd : -1;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		for (size_t i = 0; i < METRICS_SLOTS; i++)
			if (m->conn[i].fd == fd && fd >= 0)
				*socket_context = &m->conn[i];
		return;
	}
	struct mconn *c = *socket_context;
	if (c)
		c->fd = -1;
}

/* An answer was sent (or the request ended otherwise): the next request on a
 * kept connection has METRICS_REQUEST_MS from now. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct metrics *m = cls;
	struct mconn *c = conn_of(conn);

	(void)con_cls;
	if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && m->dropping.active)
		log_episode_good(&m->dropping, cgw_mono_ms(), "metrics",
				 "%s: no connection dropped for a minute", m->listen);
	if (c && c->fd >= 0) {
		c->waiting_ms = cgw_mono_ms();
		c->body = 0;
	}
}

static void run_mhd(struct metrics *m)
{
	MHD_UNSIGNED_LONG_LONG t = 0;

	MHD_run(m->mhd);
	if (MHD_get_timeout(m->mhd, &t) == MHD_YES)
		loop_timer_in(m->timer, t > 60000 ? 60000 : (int64_t)t);
	else
		loop_timer_at(m->timer, -1);
}

static void on_epoll(struct loop *l, int fd, uint32_t events, void *arg)
{
	(void)l;
	(void)fd;
	(void)events;
	run_mhd(arg);
}

static void on_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	(void)l;
	(void)t;
	run_mhd(arg);
}

/* ---- lifecycle ------------------------------------------------------------------- */

int metrics_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[INET6_ADDRSTRLEN + 2];
	const char *colon, *hs = s;
	size_t hl;
	char *end;
	long port;

	memset(ss, 0, sizeof(*ss));
	if (!s || !(colon = strrchr(s, ':')))
		return -EINVAL;
	hl = (size_t)(colon - s);
	if (s[0] == '[') { /* [v6]:port */
		if (hl < 2 || s[hl - 1] != ']')
			return -EINVAL;
		hs = s + 1;
		hl -= 2;
	}
	if (hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, hs, hl);
	host[hl] = '\0';
	if (colon[1] < '0' || colon[1] > '9') /* strtol would take " 80", "+80" */
		return -EINVAL;
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || port < 1 || port > 65535)
		return -EINVAL;
	if (s[0] == '[') {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
			return -EINVAL;
		*len = sizeof(*a6);
		return 0;
	}
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	a4->sin_family = AF_INET;
	a4->sin_port = htons((uint16_t)port);
	if (!*host || !strcmp(host, "*"))
		a4->sin_addr.s_addr = htonl(INADDR_ANY);
	else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
		return -EINVAL;
	*len = sizeof(*a4);
	return 0;
}

static int listen_socket(const char *listen_s, int *out)
{
	struct sockaddr_storage ss;
	socklen_t len = 0;
	int fd, one = 1, r;

	if (metrics_parse_listen(listen_s, &ss, &len) < 0) {
		log_err("metrics",
			"listen '%s': not ADDRESS:PORT with a numeric IPv4 address or "
			"[IPv6] address (127.0.0.1:9273, [::1]:9273)",
			listen_s);
		return -EINVAL;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		log_err("metrics", "%s: socket: %s", listen_s, strerror(-r));
		return r;
	}
	/* a restart must not wait for TIME_WAIT; it still cannot take a port
	 * another process listens on */
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 128) < 0) {
		r = -errno;
		log_err("metrics", "cannot listen on %s: %s%s", listen_s, strerror(-r),
			r == -EADDRINUSE ? " (another program has this port; set metrics.listen)" :
					   "");
		close(fd);
		return r;
	}
	*out = fd;
	return 0;
}

int metrics_open(struct core *c, struct loop *l, const struct cgw_config *cfg, struct metrics **out)
{
	struct metrics *m = NULL;
	const union MHD_DaemonInfo *info;
	int fd = -1, r;

	*out = NULL;
	if (!cfg->metrics.enabled)
		return 0;
	r = listen_socket(cfg->metrics.listen, &fd);
	if (r < 0)
		return r;
	m = calloc(1, sizeof(*m));
	if (!m) {
		r = -ENOMEM;
		goto fail;
	}
	m->core = c;
	m->loop = l;
	m->epfd = -1;
	m->lfd = -1;
	for (size_t i = 0; i < METRICS_SLOTS; i++)
		m->conn[i].fd = -1;
	snprintf(m->listen, sizeof(m->listen), "%s", cfg->metrics.listen);
	m->timer = loop_timer_new(l, on_timer, m);
	m->sweep = loop_timer_new(l, on_sweep, m);
	if (!m->timer || !m->sweep) {
		r = -ENOMEM;
		goto fail;
	}
	/* no listening socket for MHD: on_accept() hands it each connection */
	m->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET, 0,
				  NULL, NULL, on_request, m, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, m,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_SLOTS,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_CONN_TIMEOUT_S,
				  MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)METRICS_CONN_MEMORY,
				  MHD_OPTION_NOTIFY_CONNECTION, on_connection, m,
				  MHD_OPTION_NOTIFY_COMPLETED, on_completed, m, MHD_OPTION_END);
	if (!m->mhd) {
		log_err("metrics", "%s: libmicrohttpd did not start", m->listen);
		r = -EIO;
		goto fail;
	}
	info = MHD_get_daemon_info(m->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	if (!info || info->epoll_fd < 0) {
		log_err("metrics", "%s: libmicrohttpd has no epoll fd", m->listen);
		r = -EIO;
		goto fail;
	}
	r = loop_add_fd(l, info->epoll_fd, EPOLLIN, on_epoll, m);
	if (r < 0) {
		log_err("metrics", "%s: %s", m->listen, strerror(-r));
		goto fail;
	}
	m->epfd = info->epoll_fd;
	r = loop_add_fd(l, fd, EPOLLIN, on_accept, m);
	if (r < 0) {
		log_err("metrics", "%s: %s", m->listen, strerror(-r));
		goto fail;
	}
	m->lfd = fd;
	fd = -1;
	run_mhd(m);
	log_info("metrics", "serving http://%s/metrics and /healthz", m->listen);
	*out = m;
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	metrics_close(m);
	return r;
}

void metrics_close(struct metrics *m)
{
	if (!m)
		return;
	if (m->lfd >= 0) {
		loop_del_fd(m->loop, m->lfd);
		close(m->lfd);
	}
	for (size_t i = 0; i < METRICS_SLOTS; i++) {
		if (m->conn[i].fd >= 0 && m->conn[i].state == MC_PENDING) {
			loop_del_fd(m->loop, m->conn[i].fd);
			close(m->conn[i].fd);
		}
	}
	if (m->epfd >= 0)
		loop_del_fd(m->loop, m->epfd);
	if (m->mhd)
		MHD_stop_daemon(m->mhd);
	loop_timer_free(m->timer);
	loop_timer_free(m->sweep);
	free(m);
}
