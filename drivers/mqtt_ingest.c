/*
 * mqtt_ingest.c - the MQTT ingest driver (see mqtt_ingest.h): subscribes to
 * the topics of the devices of one MQTT bus and turns their JSON payloads
 * into readings, events and device states for the core. Runs on the core
 * loop, driven like the MQTT uplink (no libmosquitto thread).
 */
#include "mqtt_ingest.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "episode.h"
#include "json_path.h"
#include "log.h"
#include "mqtt_link.h"
#include "secret.h"
#include "store.h"

#define MOD "mqtt-ingest"
#define SUB_CHUNK 32       /* filters per SUBSCRIBE packet */
#define STATE_RETRY_MS 200 /* a device state the full queue refused is retried */
#define WHY_MAX 160

enum mi_dstate { MI_UNKNOWN, MI_ONLINE, MI_OFFLINE };

struct mi_target {
	uint32_t dev;   /* index into driver.devs */
	uint32_t point; /* index into the device's profile points */
};

struct mi_filter {
	char *filter;
	struct mi_target *t;
	size_t n, cap;
	bool refused_logged;
};

/* What was last sent of a state point (events are always sent). */
struct mi_pstate {
	struct cgw_value last; /* owns its string */
	int64_t last_sent;     /* monotonic */
	bool sent;             /* a good value was sent and nothing since voids it */
	bool bad_sent;         /* a bad-quality reading was sent for this episode */
	uint32_t suppressed;   /* events held back by the point's rate_limit */
};

struct mi_dev {
	uint32_t device; /* index into cfg->devices */
	const struct cfg_device *cfg;
	const struct cfg_profile *pr;
	struct mi_pstate *pts; /* one per profile point */
	int64_t stale_ms;
	int64_t last_mono;          /* last live message (monotonic), 0 none yet */
	int state;                  /* enum mi_dstate, as last reported to the core */
	struct episode bad_episode; /* bad payloads: logged once per episode */
	uint64_t msgs, bad;
	int64_t last_ok_ms;
	char last_error[96];
	int64_t quar_start;
	unsigned quar_n;
	/* scratch for the message being handled */
	uint64_t gen;
	unsigned found, missing, errors;
	bool done;
	char why[WHY_MAX];
};

struct driver {
	struct driver_env env;
	const struct cfg_bus *bus;
	const struct mqtt_bus_opts *opts; /* the bus's */
	struct mqtt_link *link;
	char *client_id;
	char *password;
	struct loop_timer *stale_timer;
	struct mi_filter *filters;
	size_t n_filters;
	size_t *hits; /* scratch: filters matching the message being handled */
	/* filters without wildcards, sorted by text (binary search), and the
	 * others (matched one by one) */
	size_t *exact, n_exact;
	size_t *wild, n_wild;
	struct mi_dev *devs;
	size_t n_devs;
	int *sub_mids; /* mid of each SUBSCRIBE packet (SUB_CHUNK filters each) */
	size_t n_chunks, chunks_acked;
	int64_t start_mono;
	uint64_t messages, bad, drops, gen;
	char last_error[128];
};

/* ---- helpers --------------------------------------------------------------- */

/* Core-thread delivery: straight to the core, which takes the item (nothing
 * can be dropped here); without it (tests, tools) the queue. */
static void push(struct driver *d, struct cgw_item *it)
{
	if (d->env.deliver) {
		d->env.deliver(d->env.core, it);
		cgw_value_clear(&it->value);
		return;
	}
	if (queue_push(d->env.queue, it) < 0) {
		/* full or closed: the core logs the full episode; we count */
		d->drops++;
		cgw_value_clear(&it->value);
	}
}

/* A state point's reading goes to the core as Modbus readings do: the first
 * one, a change beyond the deadband (any change for bool, string, enum),
 * report_every after the last one sent, and a bad one once per episode.
 * Devices that publish the same status every few seconds do not flood the
 * telemetry. Takes it->value. */
static void report(struct driver *d, struct mi_dev *dv, struct cgw_item *it, int64_t mono_ms)
{
	const struct cfg_point *pt = &dv->pr->points[it->point];
	struct mi_pstate *ps = &dv->pts[it->point];
	struct cgw_value copy;

	if (it->quality != CGW_Q_GOOD) {
		ps->sent = false;
		if (ps->bad_sent) {
			cgw_value_clear(&it->value);
			return;
		}
		ps->bad_sent = true;
		push(d, it);
		return;
	}
	ps->bad_sent = false;
	if (ps->sent && !cgw_value_changed(&ps->last, &it->value, pt->deadband) &&
	    !(pt->report_every_ms > 0 && mono_ms - ps->last_sent >= pt->report_every_ms)) {
		cgw_value_clear(&it->value);
		return;
	}
	if (cgw_value_copy(&copy, &it->value) < 0) {
		cgw_value_clear(&it->value);
		return;
	}
	cgw_value_clear(&ps->last);
	ps->last = copy;
	ps->last_sent = mono_ms;
	ps->sent = true;
	push(d, it);
}

/* ---- staleness ------------------------------------------------------------- */

static bool push_state(struct driver *d, struct mi_dev *dv, bool online, int64_t wall_ms)
{
	struct cgw_item it = {.kind = CGW_ITEM_DEVICE_STATE,
			      .device = dv->device,
			      .online = online,
			      .ts_ms = wall_ms,
			      .quality = CGW_Q_GOOD};

	if (d->env.deliver) {
		d->env.deliver(d->env.core, &it);
	} else if (queue_push(d->env.queue, &it) < 0) {
		d->drops++;
		return false;
	}
	dv->state = online ? MI_ONLINE : MI_OFFLINE;
	return true;
}

static void arm_stale(struct driver *d, int64_t due)
{
	int64_t cur = loop_timer_due(d->stale_timer);

	if (cur < 0 || due < cur)
		loop_timer_at(d->stale_timer, due);
}

void mqtt_ingest_check_stale(struct driver *d, int64_t wall_ms, int64_t mono_ms)
{
	int64_t next = -1;

	for (size_t i = 0; i < d->n_devs; i++) {
		struct mi_dev *dv = &d->devs[i];
		int64_t due;

		if (dv->state == MI_OFFLINE)
			continue;
		due = (dv->last_mono ? dv->last_mono : d->start_mono) + dv->stale_ms;
		if (mono_ms >= due) {
			if (push_state(d, dv, false, wall_ms)) {
				/* values after its return are news again */
				for (size_t p = 0; p < dv->pr->n_points; p++)
					dv->pts[p].sent = dv->pts[p].bad_sent = false;
				continue;
			}
			due = mono_ms + STATE_RETRY_MS;
		}
		if (next < 0 || due < next)
			next = due;
	}
	loop_timer_at(d->stale_timer, next);
}

static void on_stale_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	struct driver *d = arg;

	(void)l;
	(void)t;
	mqtt_ingest_check_stale(d, cgw_now_ms(), cgw_mono_ms());
	if (d->env.settle)
		d->env.settle(d->env.core);
}

/* A live message from the device: online first, then its values. */
static void alive(struct driver *d, struct mi_dev *dv, int64_t wall_ms, int64_t mono_ms)
{
	dv->last_mono = mono_ms;
	if (dv->state != MI_ONLINE)
		push_state(d, dv, true, wall_ms);
	arm_stale(d, mono_ms + dv->stale_ms);
}

/* ---- messages -------------------------------------------------------------- */

/* A topic for a log line: wildcard filters let a device choose levels of
 * it, and a log line must stay one line. */
static const char *printable(const char *s, char *buf, size_t len)
{
	size_t i = 0;

	for (; s[i] && i + 1 < len; i++)
		buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	buf[i] = '\0';
	return buf;
}

static void bad_payload(struct driver *d, struct mi_dev *dv, const char *topic, const void *payload,
			size_t len, const char *why, int64_t wall_ms, int64_t mono_ms)
{
	dv->bad++;
	d->bad++;
	snprintf(dv->last_error, sizeof(dv->last_error), "%s", why);
	char t[128];
	log_episode_bad(&dv->bad_episode, mono_ms, LOG_WARNING, MOD,
			"[%s] %s: bad payload on %s: %s (kept in the quarantine; more bad "
			"payloads from this device are counted and summarised)",
			d->bus->name, dv->cfg->id, printable(topic, t, sizeof(t)), why);
	if (!d->env.store)
		return;
	/* a device spewing garbage must not fill the store's batch: the
	 * counters say how many, a few samples say what */
	if (dv->quar_n == 0 || mono_ms - dv->quar_start >= MI_QUARANTINE_WINDOW_MS) {
		dv->quar_start = mono_ms;
		dv->quar_n = 0;
	}
	if (dv->quar_n >= MI_QUARANTINE_BURST)
		return;
	dv->quar_n++;
	store_quarantine(d->env.store, wall_ms, d->bus->name, dv->cfg->id, topic, why, payload, len,
			 mono_ms);
}

static void good_payload(struct driver *d, struct mi_dev *dv, int64_t wall_ms, int64_t mono_ms)
{
	dv->last_ok_ms = wall_ms;
	if (dv->bad_episode.active)
		log_episode_good(&dv->bad_episode, mono_ms, MOD, "[%s] %s: good payloads again",
				 d->bus->name, dv->cfg->id);
}

static void set_dev_why(struct mi_dev *dv, bool is_error, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* The first conversion error wins over a missing path: it is the more
 * useful thing to tell the installer. */
static void set_dev_why(struct mi_dev *dv, bool is_error, const char *fmt, ...)
{
	va_list ap;

	if (dv->why[0] && (!is_error || dv->errors > 1))
		return;
	va_start(ap, fmt);
	vsnprintf(dv->why, sizeof(dv->why), fmt, ap);
	va_end(ap);
}

static void handle_point(struct driver *d, struct mi_dev *dv, uint32_t point, const json_t *root,
			 bool retained, int64_t ts_ms, int64_t mono_ms)
{
	const struct cfg_point *pt = &dv->pr->points[point];
	struct cgw_item it = {.device = dv->device, .point = point, .ts_ms = ts_ms};
	char why[128];
	json_t *node;
	int r;

	if (jp_get(root, pt->json, &node) < 0) {
		dv->missing++;
		set_dev_why(dv, false, "point %s: nothing at '%s'", pt->name,
			    pt->json && *pt->json ? pt->json : "(whole payload)");
		return;
	}
	if (pt->event && retained) {
		/* a retained event is an old event replayed by the broker */
		dv->found++;
		return;
	}
	r = jp_convert(node, pt, &it.value, why, sizeof(why));
	if (r < 0) {
		dv->errors++;
		set_dev_why(dv, true, "point %s: %s", pt->name, why);
		return;
	}
	if (r > 0) {
		dv->errors++;
		set_dev_why(dv, true, "point %s: %s", pt->name, why);
	} else {
		dv->found++;
	}
	it.kind = pt->event ? CGW_ITEM_EVENT : CGW_ITEM_READING;
	it.quality = r == 0 ? CGW_Q_GOOD : CGW_Q_BAD;
	if (pt->event) {
		struct mi_pstate *ps = &dv->pts[point];
		if (pt->rate_limit_ms > 0 && ps->sent &&
		    mono_ms - ps->last_sent < pt->rate_limit_ms) {
			/* counted, and said with the next one that goes out */
			ps->suppressed++;
			cgw_value_clear(&it.value);
			return;
		}
		it.suppressed = ps->suppressed;
		ps->suppressed = 0;
		ps->sent = true;
		ps->last_sent = mono_ms;
		push(d, &it);
	} else {
		report(d, dv, &it, mono_ms);
	}
}

void mqtt_ingest_feed(struct driver *d, const char *topic, const void *payload, size_t len,
		      bool retained, int64_t wall_ms, int64_t mono_ms)
{
	size_t nhits = 0;
	uint64_t gen = ++d->gen;
	json_t *root = NULL;
	char why[WHY_MAX];
	int perr;

	d->messages++;
	/* a topic is one exact filter at most, plus any wildcard ones */
	for (size_t lo = 0, hi = d->n_exact; lo < hi;) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(topic, d->filters[d->exact[mid]].filter);
		if (c == 0) {
			d->hits[nhits++] = d->exact[mid];
			break;
		}
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	for (size_t w = 0; w < d->n_wild; w++) {
		bool match = false;
		if (mosquitto_topic_matches_sub(d->filters[d->wild[w]].filter, topic, &match) ==
			    MOSQ_ERR_SUCCESS &&
		    match)
			d->hits[nhits++] = d->wild[w];
	}
	if (!nhits)
		return;

	/* every device this message is for: reset its scratch, and it is
	 * alive (before its values, so the core sees it online first) */
	for (size_t h = 0; h < nhits; h++) {
		const struct mi_filter *f = &d->filters[d->hits[h]];
		for (size_t k = 0; k < f->n; k++) {
			struct mi_dev *dv = &d->devs[f->t[k].dev];
			if (dv->gen == gen)
				continue;
			dv->gen = gen;
			dv->found = dv->missing = dv->errors = 0;
			dv->done = false;
			dv->why[0] = '\0';
			dv->msgs++;
			if (!retained)
				alive(d, dv, wall_ms, mono_ms);
		}
	}

	/* max_payload is checked by jp_parse before anything is parsed */
	perr = jp_parse(payload, len, (size_t)d->opts->max_payload, &root, why, sizeof(why));
	if (perr == 0) {
		int64_t ts = jp_timestamp(root, wall_ms);
		for (size_t h = 0; h < nhits; h++) {
			const struct mi_filter *f = &d->filters[d->hits[h]];
			for (size_t k = 0; k < f->n; k++)
				handle_point(d, &d->devs[f->t[k].dev], f->t[k].point, root,
					     retained, ts, mono_ms);
		}
	}

	for (size_t h = 0; h < nhits; h++) {
		const struct mi_filter *f = &d->filters[d->hits[h]];
		for (size_t k = 0; k < f->n; k++) {
			struct mi_dev *dv = &d->devs[f->t[k].dev];
			if (dv->done)
				continue;
			dv->done = true;
			if (perr < 0)
				bad_payload(d, dv, topic, payload, len, why, wall_ms, mono_ms);
			else if (dv->errors || !dv->found)
				bad_payload(d, dv, topic, payload, len, dv->why, wall_ms, mono_ms);
			else
				good_payload(d, dv, wall_ms, mono_ms);
		}
	}
	json_decref(root);
}

/* ---- connection ------------------------------------------------------------ */

static void subscribe_all(struct driver *d)
{
	struct mosquitto *m = mqtt_link_mosq(d->link);
	char *subs[SUB_CHUNK];

	d->n_chunks = 0;
	d->chunks_acked = 0;
	for (size_t i = 0; m && i < d->n_filters; i += SUB_CHUNK) {
		size_t n = d->n_filters - i < SUB_CHUNK ? d->n_filters - i : SUB_CHUNK;
		int mid = 0;

		for (size_t k = 0; k < n; k++)
			subs[k] = d->filters[i + k].filter;
		/* QoS 1: with the persistent session the broker keeps what the
		 * devices send while we are away */
		if (mosquitto_subscribe_multiple(m, &mid, (int)n, subs, 1, 0, NULL) !=
		    MOSQ_ERR_SUCCESS)
			return; /* the link is going: subscribed again at the next connect */
		d->sub_mids[d->n_chunks++] = mid;
	}
}

static void on_up(void *arg)
{
	subscribe_all(arg);
}

static void on_subscribe(void *arg, int mid, int qos_count, const int *granted)
{
	struct driver *d = arg;

	for (size_t c = 0; c < d->n_chunks; c++) {
		if (d->sub_mids[c] != mid)
			continue;
		for (int k = 0; k < qos_count && c * SUB_CHUNK + (size_t)k < d->n_filters; k++) {
			struct mi_filter *f = &d->filters[c * SUB_CHUNK + (size_t)k];
			if (granted[k] >= 0x80 && !f->refused_logged) {
				/* an ACL, most likely: the devices behind it stay silent */
				log_err(MOD, "[%s] the broker refused the subscription to '%s'",
					d->bus->name, f->filter);
				snprintf(d->last_error, sizeof(d->last_error),
					 "subscription to %.90s refused", f->filter);
				f->refused_logged = true;
			}
		}
		if (++d->chunks_acked == d->n_chunks)
			log_info(MOD, "[%s] subscribed to %zu topic filters", d->bus->name,
				 d->n_filters);
		return;
	}
}

static void on_message(void *arg, const struct mosquitto_message *msg)
{
	mqtt_ingest_feed(arg, msg->topic, msg->payload,
			 msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0, msg->retain,
			 cgw_now_ms(), cgw_mono_ms());
}

/* What this batch of messages carried is committed before the link writes
 * their PUBACKs: a crash now loses nothing the broker let go of. */
static void on_read_done(void *arg)
{
	struct driver *d = arg;

	if (d->env.settle)
		d->env.settle(d->env.core);
}

/* ---- setup ----------------------------------------------------------------- */

static int add_target(struct driver *d, const char *filter, uint32_t dev, uint32_t point)
{
	struct mi_filter *f = NULL;

	for (size_t i = 0; i < d->n_filters && !f; i++)
		if (!strcmp(d->filters[i].filter, filter))
			f = &d->filters[i];
	if (!f) {
		f = &d->filters[d->n_filters];
		f->filter = strdup(filter);
		if (!f->filter)
			return -ENOMEM;
		d->n_filters++;
	}
	if (f->n == f->cap) {
		size_t cap = f->cap ? f->cap * 2 : 4;
		struct mi_target *t = realloc(f->t, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		f->t = t;
		f->cap = cap;
	}
	f->t[f->n++] = (struct mi_target){.dev = dev, .point = point};
	return 0;
}

static int cmp_filter(const void *a, const void *b, void *arg)
{
	const struct mi_filter *f = arg;
	return strcmp(f[*(const size_t *)a].filter, f[*(const size_t *)b].filter);
}

/* The devices of this bus and the filters of their points. */
static int build(struct driver *d)
{
	const struct cgw_config *cfg = d->env.cfg;
	size_t n_points = 0;

	for (size_t i = 0; i < cfg->n_devices; i++) {
		if (cfg->devices[i].bus != d->env.bus)
			continue;
		d->n_devs++;
		n_points += cfg_device_profile(cfg, &cfg->devices[i])->n_points;
	}
	d->devs = calloc(d->n_devs ? d->n_devs : 1, sizeof(*d->devs));
	d->filters = calloc(n_points ? n_points : 1, sizeof(*d->filters));
	d->hits = calloc(n_points ? n_points : 1, sizeof(*d->hits));
	d->sub_mids = calloc(n_points / SUB_CHUNK + 1, sizeof(*d->sub_mids));
	if (!d->devs || !d->filters || !d->hits || !d->sub_mids)
		return -ENOMEM;

	size_t k = 0;
	for (size_t i = 0; i < cfg->n_devices; i++) {
		const struct cfg_device *cd = &cfg->devices[i];
		if (cd->bus != d->env.bus)
			continue;
		struct mi_dev *dv = &d->devs[k];
		dv->device = (uint32_t)i;
		dv->cfg = cd;
		dv->pr = cfg_device_profile(cfg, cd);
		dv->pts = calloc(dv->pr->n_points ? dv->pr->n_points : 1, sizeof(*dv->pts));
		if (!dv->pts)
			return -ENOMEM;
		dv->stale_ms = cd->stale_after_ms > 0 ? cd->stale_after_ms :
							d->opts->stale_after_ms;
		if (dv->stale_ms <= 0)
			dv->stale_ms = 5 * 60 * 1000;
		for (size_t p = 0; p < dv->pr->n_points; p++) {
			const struct cfg_point *pt = &dv->pr->points[p];
			const char *base = cd->topic ? cd->topic : "";
			const char *rel = pt->topic ? pt->topic : "";
			const char *why = NULL;
			char *filter;
			int r;

			if (asprintf(&filter, "%s%s%s", base, *base && *rel ? "/" : "", rel) < 0)
				return -ENOMEM;
			if (!*filter || mosquitto_sub_topic_check(filter) != MOSQ_ERR_SUCCESS) {
				log_err(MOD,
					"[%s] %s: point %s: '%s' is not a valid MQTT topic filter; "
					"the point is left out",
					d->bus->name, cd->id, pt->name, filter);
				free(filter);
				continue;
			}
			if (jp_path_check(pt->json, &why) < 0) {
				log_err(MOD,
					"[%s] %s: point %s: json '%s': %s; the point is left out",
					d->bus->name, cd->id, pt->name, pt->json, why);
				free(filter);
				continue;
			}
			r = add_target(d, filter, (uint32_t)k, (uint32_t)p);
			free(filter);
			if (r < 0)
				return r;
		}
		k++;
	}
	d->exact = calloc(d->n_filters ? d->n_filters : 1, sizeof(*d->exact));
	d->wild = calloc(d->n_filters ? d->n_filters : 1, sizeof(*d->wild));
	if (!d->exact || !d->wild)
		return -ENOMEM;
	for (size_t f = 0; f < d->n_filters; f++) {
		if (strpbrk(d->filters[f].filter, "+#"))
			d->wild[d->n_wild++] = f;
		else
			d->exact[d->n_exact++] = f;
	}
	qsort_r(d->exact, d->n_exact, sizeof(*d->exact), cmp_filter, d->filters);
	return 0;
}

static void mi_close(struct driver *d);

static int mi_open(const struct driver_env *env, struct driver **out)
{
	struct driver *d;
	char err[256];
	int r = -ENOMEM;

	*out = NULL;
	if (!env || !env->cfg || env->bus >= env->cfg->n_buses || (!env->queue && !env->deliver) ||
	    !env->loop)
		return -EINVAL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->env = *env;
	d->bus = &env->cfg->buses[env->bus];
	d->opts = mqtt_bus_opts(d->bus);
	if (!d->opts) {
		free(d);
		return -EINVAL;
	}
	d->start_mono = cgw_mono_ms();
	r = build(d);
	if (r < 0)
		goto fail;
	r = -ENOMEM;
	if (d->opts->client_id && *d->opts->client_id)
		d->client_id = strdup(d->opts->client_id);
	else if (asprintf(&d->client_id, "%s-%s",
			  env->cfg->gateway.id ? env->cfg->gateway.id : "cgw", d->bus->name) < 0)
		d->client_id = NULL;
	if (!d->client_id)
		goto fail;
	if (d->opts->password_file) {
		d->password = secret_read(d->opts->password_file, err, sizeof(err));
		if (!d->password) {
			log_err(MOD, "[%s] password_file %s", d->bus->name, err);
			r = -EACCES;
			goto fail;
		}
	}
	d->stale_timer = loop_timer_new(env->loop, on_stale_timer, d);
	if (!d->stale_timer)
		goto fail;
	log_info(MOD, "[%s] %zu devices, %zu topic filters, broker %s:%lld%s, client id %s%s",
		 d->bus->name, d->n_devs, d->n_filters, d->opts->host, (long long)d->opts->port,
		 d->opts->tls ? " (TLS)" : "", d->client_id,
		 d->opts->clean_session ? " (clean session)" : "");
	mqtt_ingest_check_stale(d, cgw_now_ms(), d->start_mono);
	struct mqtt_link_opts o = {
		.module = MOD,
		.name = d->bus->name,
		.host = d->opts->host, /* the configuration parsed the url */
		.port = (int)d->opts->port,
		.tls = d->opts->tls,
		.ca_file = d->opts->ca_file,
		.cert_file = d->opts->cert_file,
		.key_file = d->opts->key_file,
		.username = d->opts->username,
		.password = d->password,
		.insecure = d->opts->insecure,
		.client_id = d->client_id,
		/* persistent by default: the broker keeps the devices' QoS 1
		 * messages while cgwd restarts */
		.clean_session = d->opts->clean_session,
		.protocol = 4,
		.keepalive_s = MI_KEEPALIVE_S,
		.connect_timeout_ms = MI_CONNECT_TIMEOUT_MS,
		.read_budget = MI_READ_BUDGET,
	};
	struct mqtt_link_cbs cb = {
		.arg = d,
		.up = on_up,
		.message = on_message,
		.subscribed = on_subscribe,
		.read_done = on_read_done,
	};
	r = mqtt_link_new(env->loop, &o, &cb, &d->link);
	if (r < 0)
		goto fail;
	*out = d;
	return 0;
fail:
	mi_close(d);
	return r;
}

static void mi_close(struct driver *d)
{
	if (!d)
		return;
	mqtt_link_free(d->link);
	loop_timer_free(d->stale_timer);
	secret_free(d->password);
	for (size_t i = 0; d->filters && i < d->n_filters; i++) {
		free(d->filters[i].filter);
		free(d->filters[i].t);
	}
	for (size_t i = 0; d->devs && i < d->n_devs; i++) {
		for (size_t p = 0; d->devs[i].pts && p < d->devs[i].pr->n_points; p++)
			cgw_value_clear(&d->devs[i].pts[p].last);
		free(d->devs[i].pts);
	}
	free(d->filters);
	free(d->hits);
	free(d->exact);
	free(d->wild);
	free(d->sub_mids);
	free(d->devs);
	free(d->client_id);
	free(d);
}

static int mi_write(struct driver *d, uint32_t device, uint32_t point, const struct cgw_value *v,
		    uint64_t token)
{
	(void)d;
	(void)device;
	(void)point;
	(void)v;
	(void)token;
	return -ENOTSUP;
}

static int mi_status(struct driver *d, struct driver_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->connected = mqtt_link_up(d->link);
	st->requests = d->messages;
	st->errors = d->bad + d->drops;
	snprintf(st->last_error, sizeof(st->last_error), "%s",
		 d->last_error[0] ? d->last_error : mqtt_link_last_error(d->link));
	if (!d->n_devs)
		return 0;
	st->devices = calloc(d->n_devs, sizeof(*st->devices));
	if (!st->devices)
		return -ENOMEM;
	st->n_devices = d->n_devs;
	for (size_t i = 0; i < d->n_devs; i++) {
		const struct mi_dev *dv = &d->devs[i];
		struct driver_dev_stats *ds = &st->devices[i];
		ds->device = dv->device;
		ds->online = dv->state == MI_ONLINE;
		ds->last_ok_ms = dv->last_ok_ms;
		ds->requests = dv->msgs;
		ds->bad_payloads = dv->bad;
		snprintf(ds->last_error, sizeof(ds->last_error), "%s", dv->last_error);
	}
	return 0;
}

size_t mqtt_ingest_filter_count(const struct driver *d)
{
	return d ? d->n_filters : 0;
}

const char *mqtt_ingest_filter(const struct driver *d, size_t i)
{
	return d && i < d->n_filters ? d->filters[i].filter : NULL;
}

const struct driver_ops mqtt_ingest_ops = {
	.type = "mqtt",
	.open = mi_open,
	.close = mi_close,
	.write = mi_write,
	.status = mi_status,
};
