/*
 * metrics.c - /metrics and /healthz with libmicrohttpd, driven by the core
 * loop (MHD_USE_EPOLL without a thread: MHD_run() when its epoll fd is
 * readable or its timeout is due).
 *
 * Connections are accepted, bounded and handed to MHD by the HTTP front
 * (http_front.h), as the console's are: slow clients cannot keep a monitor
 * out, and a port in use is reported as exactly that. Here: at most
 * METRICS_PENDING_PER_IP / METRICS_PENDING_MAX connections that have sent
 * nothing yet, METRICS_PER_IP / METRICS_MAX_CONNECTIONS with MHD,
 * METRICS_REQUEST_MS to send a whole request, METRICS_CONN_MEMORY for its
 * head and METRICS_BODY_MAX of body (a GET carries none worth reading).
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

#include "http_front.h"
#include "log.h"
#include "model.h"

#define METRICS_PENDING_MAX 64     /* connected, nothing sent yet */
#define METRICS_PENDING_PER_IP 16  /* the same, per client address */
#define METRICS_MAX_CONNECTIONS 32 /* handed to MHD */
#define METRICS_PER_IP 8           /* the same, per client address */
#define METRICS_REQUEST_MS 2000    /* to send a whole request */
#define METRICS_CONN_TIMEOUT_S 10  /* MHD's: no progress at all */
#define METRICS_CONN_MEMORY (32 * 1024)
#define METRICS_BODY_MAX 1024
struct metrics {
	struct core *core;
	struct loop *loop;
	struct http_front *front;
	char listen[128];
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

static void http_metrics(struct sb *b, const struct metrics *m)
{
	struct http_front_stats hs;

	http_front_stats(m->front, &hs);
	family(b, "cgw_http_connections", "gauge", "Connections to this metrics server held now.");
	sample_num(b, "cgw_http_connections", NULL, hs.held);
	family(b, "cgw_http_connections_dropped_total", "counter",
	       "Connections to this metrics server dropped or refused: too slow to send "
	       "a request, or over the limits (per address, in all).");
	sample_num(b, "cgw_http_connections_dropped_total", NULL,
		   (double)(hs.dropped + hs.refused));
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

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	static int headers_seen;
	struct metrics *m = cls;

	(void)version;
	(void)upload_data;
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
		/* a body on a GET: ignored (the front bounds it) */
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

bool metrics_addr_loopback(const struct sockaddr_storage *ss)
{
	return (ss->ss_family == AF_INET &&
		(ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127) ||
	       (ss->ss_family == AF_INET6 &&
		IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr));
}

int metrics_open(struct core *c, struct loop *l, const struct cgw_config *cfg, struct metrics **out)
{
	struct sockaddr_storage ss;
	socklen_t len = 0;
	struct metrics *m;
	int r;

	*out = NULL;
	if (!cfg->metrics.enabled)
		return 0;
	if (metrics_parse_listen(cfg->metrics.listen, &ss, &len) < 0) {
		log_err("metrics",
			"listen '%s': not ADDRESS:PORT with a numeric IPv4 address or "
			"[IPv6] address (127.0.0.1:9273, [::1]:9273)",
			cfg->metrics.listen);
		return -EINVAL;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->core = c;
	m->loop = l;
	snprintf(m->listen, sizeof(m->listen), "%s", cfg->metrics.listen);
	struct http_front_conf hc = {
		.name = "metrics",
		.listen = m->listen,
		.addr = &ss,
		.addrlen = len,
		.pending_max = METRICS_PENDING_MAX,
		.pending_per_ip = METRICS_PENDING_PER_IP,
		.max = METRICS_MAX_CONNECTIONS,
		.per_ip = METRICS_PER_IP,
		.request_ms = METRICS_REQUEST_MS,
		.conn_timeout_s = METRICS_CONN_TIMEOUT_S,
		.conn_memory = METRICS_CONN_MEMORY,
		.body_max = METRICS_BODY_MAX,
		.handler = on_request,
		.arg = m,
	};
	r = http_front_open(l, &hc, &m->front);
	if (r < 0) {
		free(m);
		return r;
	}
	log_info("metrics", "serving http://%s/metrics and /healthz", m->listen);
	*out = m;
	return 0;
}

void metrics_close(struct metrics *m)
{
	if (!m)
		return;
	http_front_close(m->front);
	free(m);
}
