/*
 * core.c - the running daemon, on one thread: drains the driver queue,
 * applies alarm rules, writes the store, kicks the uplinks.
 *
 * The core is the only writer of the store. Readings of one device's poll
 * cycle become one telemetry message (gather.h). An alarm
 * change is committed on its own at once (store_enqueue commits the alarm
 * lane before it returns) and handed to the uplinks in the same turn of the
 * loop, ahead of anything queued behind it.
 */
#include "core.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "alarm.h"
#include "command.h"
#include "commission.h"
#include "config_diff.h"
#include "config_keys.h"
#include "driver.h"
#include "episode.h"
#include "gather.h"
#include "log.h"
#include "modbus_plan.h" /* MBP_MAX_REGS: commissioning answers */
#include "queue.h"
#include "store.h"
#include "uplink.h"
#include "wire.h"

#define QUEUE_CAPACITY 65536
#define POP_BATCH 512
/* While readings keep coming, the core drains its queue this often instead
 * of being woken per push; an urgent item (an input of an alarm rule, a
 * device state, an event, a command's outcome) still wakes it at once. */
#define DRAIN_MS 20
#define MAINTAIN_MS 10000
#define MAX_PENDING_WRITES 256
#define DEV_NONE UINT32_MAX
#define SHELF_KEY "shelved_devices" /* store meta: {"DEVICE": {"by": ..., "ts": ...}} */
#define SHELF_MAX (1u << 20)

/* A configuration that running drivers or uplinks were opened with (they
 * borrow it), and the queue its drivers push to. Items carry device indexes
 * of this configuration; `map` turns them into the running one's. */
struct gen {
	struct core *core;
	struct cgw_config *cfg;
	struct queue *queue;
	uint32_t *map; /* cfg device -> running device, DEV_NONE gone; NULL: identity */
	/* per profile, per point: a rule reads it (its readings wake the core
	 * at once; see on_queue). Read by producer threads: set before any
	 * driver of this generation starts, never changed after. */
	uint8_t *alarm_input;
	size_t *prof_first; /* index of each profile's first point in alarm_input */
	unsigned users;     /* drivers and uplinks opened on cfg */
	struct gen *next;
};

/* Per bus / uplink of the running configuration: which configuration it
 * was opened with and when (files it read may have changed since). */
struct bus_rt {
	struct gen *gen;
	size_t bus; /* index into gen->cfg->buses */
	struct timespec opened;
};

struct uplink_rt {
	struct gen *gen;
	int64_t store_id;
	struct timespec opened;
};

/* Per device of the running configuration. */
struct dev_rt {
	uint32_t local;   /* its index in its driver's configuration (writes, stats) */
	int8_t online;    /* the state last reported to the platform; -1 none yet */
	int64_t since_ms; /* since when (re-sent at every connect and at a rebirth) */
	bool adopted;     /* reload: alarm state carried over from the old engine */
};

#define MAX_PENDING_COMMISSIONS 16

/* A cgwctl scan/probe waiting for its bus worker. */
struct pending_commission {
	uint64_t token;
	enum driver_commission_kind kind;
	char bus[64];
	core_reply_fn reply;
	void *reply_arg;
};

struct pending_write {
	uint64_t token;
	char *source;
	char *command_id;
	uint32_t device;
	core_reply_fn reply;
	void *reply_arg;
};

struct core {
	struct cgw_config *cfg;
	struct loop *loop;
	struct store *store;
	struct queue *queue; /* the running configuration's: new drivers push here */
	struct gen *gens;    /* every configuration still in use; the first is cfg's */
	struct bus_rt *bus_rt;
	struct uplink_rt *uplink_rt;
	struct dev_rt *devs;
	struct alarm_engine *alarms;
	core_alarm_observer_fn observer; /* the console */
	void *observer_arg;
	struct uplink **uplinks;
	const struct uplink_ops **uplink_ops;
	size_t n_uplinks;
	struct driver **drivers; /* one per bus, NULL where none */
	struct loop_timer *flush_timer, *maint_timer, *alarm_timer; /* tele_timer below */
	struct loop_timer *drain_timer; /* drains the held queue (on_queue) */
	int64_t started_ms;
	char console_url[160], console_fp[100]; /* for cgwctl status; "" none */
	bool store_ok;
	struct episode commit_ep; /* commits that fail for another reason than room */
	struct episode disk_ep;   /* the store on a full disk (or from memory) */
	uint64_t lost_at_start[CGW_LANE_COUNT];
	uint64_t mem_at_start;
	int lock_fd;
	bool evicting;
	struct episode queue_full; /* the driver queue was found full */
	bool restate_owed;         /* an uplink connected while the disk was full */
	uint64_t write_token;
	struct pending_write writes[MAX_PENDING_WRITES];
	/* telemetry being gathered per device: one message per poll cycle */
	struct gather *gather;
	struct loop_timer *tele_timer;
	uint32_t *tele_due; /* scratch: n_devices */
	struct pending_commission comms[MAX_PENDING_COMMISSIONS];
	uint64_t readings, messages, enqueue_errors;
	uint64_t cmd_count[5];      /* by enum cmd_outcome */
	struct episode cmd_refused; /* every kind of refusal, one episode */
	/* readings made bad quality by the profile: `invalid:` sentinels and
	 * values outside `range:`; out-of-range logged once per episode */
	uint64_t values_invalid, values_out_of_range;
	struct episode range_episode;
	char **forget; /* restored alarms that no longer match the configuration */
	size_t n_forget;
	struct cgw_item items[POP_BATCH];
};

static void core_queue_stats(struct core *c, struct queue_stats *qs);
static void shelf_save(struct core *c, const char *device, bool shelve, const char *by);

static int ensure_dir(const char *path)
{
	struct stat st;

	if (stat(path, &st) == 0)
		return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	if (mkdir(path, 0750) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* ---- messages ------------------------------------------------------------- */

static void kick_uplinks(struct core *c)
{
	for (size_t i = 0; i < c->n_uplinks; i++)
		if (c->uplinks[i])
			c->uplink_ops[i]->kick(c->uplinks[i]);
}

static void arm_flush(struct core *c)
{
	int64_t due = c->store ? store_flush_deadline_ms(c->store) : -1;
	if (due >= 0 &&
	    (loop_timer_due(c->flush_timer) < 0 || due < loop_timer_due(c->flush_timer)))
		loop_timer_at(c->flush_timer, due);
}

/* Stores one message whose payload is a JSON object without "id". */
static int emit_text(struct core *c, enum cgw_lane lane, const char *device, const char *topic,
		     int64_t ts_ms, const char *payload)
{
	struct store_msg m = {.lane = lane,
			      .device = device,
			      .topic = topic,
			      .ts_ms = ts_ms,
			      .payload = payload};
	uint64_t seq = 0;
	bool committed = false;
	int r;

	r = store_enqueue(c->store, &m, cgw_mono_ms(), &seq, &committed);
	if (r < 0) {
		c->enqueue_errors++;
		/* -ENOSPC for telemetry at the cap is counted by the store's
		 * eviction report; anything else is worth a line */
		if (r != -ENOSPC || lane == CGW_LANE_ALARM)
			log_err("core", "store: %s message for %s not stored: %s",
				cgw_lane_name(lane), device ? device : "gateway",
				store_errmsg(c->store));
		return r;
	}
	c->messages++;
	if (lane == CGW_LANE_ALARM && !committed)
		log_warn("core",
			 "store: alarm for %s held in memory (%s); it is delivered from memory "
			 "and stored when room returns",
			 device ? device : "gateway", store_errmsg(c->store));
	arm_flush(c);
	return 0;
}

/* The store's full-disk episode: logged once when it starts and once when it
 * ends, with what it cost; the store's own probing ends it. */
static void restate_devices(struct core *c, int64_t uplink);

static void watch_store(struct core *c)
{
	enum store_state st = store_state(c->store);
	bool bad = st == STORE_DISK_FULL || st == STORE_MEMORY_ONLY;
	struct store_stats ss;
	int64_t now = cgw_mono_ms();

	if (bad && c->disk_ep.active)
		episode_bad(&c->disk_ep, now); /* counted (the end line says how long) */
	if (bad == c->disk_ep.active || store_stats(c->store, &ss) < 0)
		return;
	c->disk_ep.quiet_ms = 1; /* ends when the store says so */
	if (bad) {
		memcpy(c->lost_at_start, ss.lost, sizeof(ss.lost));
		c->mem_at_start = ss.alarms_in_memory_total;
		log_episode_bad(&c->disk_ep, now, LOG_ERR, "core",
				"store %s: %s; only alarms and device state are written, "
				"telemetry and events are not stored until room returns",
				store_state_name(st), store_trouble(c->store));
		return;
	}
	log_episode_good(
		&c->disk_ep, now, "core",
		"store writes again: %llu telemetry, %llu events, %llu status messages "
		"not stored; %llu alarms were held in memory",
		(unsigned long long)(ss.lost[CGW_LANE_TELEMETRY] -
				     c->lost_at_start[CGW_LANE_TELEMETRY]),
		(unsigned long long)(ss.lost[CGW_LANE_EVENT] - c->lost_at_start[CGW_LANE_EVENT]),
		(unsigned long long)(ss.lost[CGW_LANE_STATUS] - c->lost_at_start[CGW_LANE_STATUS]),
		(unsigned long long)(ss.alarms_in_memory_total - c->mem_at_start));
	if (c->restate_owed) {
		c->restate_owed = false;
		restate_devices(c, 0);
	}
}

/* Stores a message rendered by the wire module (cleared here). */
static int emit(struct core *c, int r, struct wire_msg *m)
{
	if (r == 0)
		r = emit_text(c, m->lane, m->device, m->topic, m->ts_ms, m->payload);
	wire_msg_clear(m);
	return r;
}

static void send_telemetry(struct core *c, uint32_t dev)
{
	const struct wire_field *f;
	size_t n;
	int64_t ts;
	struct wire_msg m;

	if (!gather_take(c->gather, dev, &f, &n, &ts))
		return;
	emit(c, wire_telemetry(&c->cfg->devices[dev], ts, f, n, &m), &m);
}

/* Sends what is due: after a drain (drain_end) the readings without a
 * cycle, always the cycles past their deadline; `all` sends everything
 * (stopping). Re-arms the deadline timer. */
static void flush_telemetry(struct core *c, bool drain_end, bool all)
{
	int64_t now = cgw_mono_ms(), next;
	size_t n;

	if (!c->gather)
		return;
	n = gather_pending(c->gather, c->tele_due, c->cfg->n_devices);
	for (size_t i = 0; i < n; i++)
		if (all || gather_due(c->gather, c->tele_due[i], drain_end, now))
			send_telemetry(c, c->tele_due[i]);
	next = gather_next_deadline(c->gather);
	if (next >= 0 && next != loop_timer_due(c->tele_timer))
		loop_timer_at(c->tele_timer, next);
}

static void on_tele_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	struct core *c = arg;

	(void)l;
	(void)t;
	flush_telemetry(c, false, false);
	kick_uplinks(c);
}

/* A reading the profile says is no reading: counted, and for range:
 * logged once per episode (a sensor stuck at its rail repeats). */
static void on_rejected_value(struct core *c, const struct cfg_device *d,
			      const struct cfg_point *pt, const struct cgw_value *v, int why)
{
	char val[64];

	if (why == CFG_VALUE_INVALID) {
		c->values_invalid++;
		return;
	}
	c->values_out_of_range++;
	alarm_format_value(pt, v, val, sizeof(val));
	switch (episode_bad(&c->range_episode, cgw_mono_ms())) {
	case EPISODE_STARTED:
		log_warn("core", "device %s: %s = %s is outside its range [%g, %g]: bad quality",
			 d->id, pt->name, val, pt->range_min, pt->range_max);
		break;
	case EPISODE_SUMMARY:
		log_warn("core",
			 "%llu more values outside their range in %lld s (latest: %s %s = %s)",
			 (unsigned long long)c->range_episode.summary_count,
			 (long long)(c->range_episode.summary_window_ms / 1000), d->id, pt->name,
			 val);
		break;
	case EPISODE_SILENT:
		break;
	}
}

static void on_reading(struct core *c, const struct cgw_item *it)
{
	const struct cfg_device *d = &c->cfg->devices[it->device];
	const struct cfg_profile *pr = cfg_device_profile(c->cfg, d);
	const struct cfg_point *pt;
	struct cgw_item bad;

	if (it->point >= pr->n_points)
		return;
	pt = &pr->points[it->point];
	c->readings++;
	if (it->quality == CGW_Q_GOOD) {
		int why = cfg_point_check_value(pt, &it->value);
		if (why != CFG_VALUE_OK) {
			on_rejected_value(c, d, pt, &it->value, why);
			bad = *it;
			bad.quality = CGW_Q_BAD;
			bad.value.type = CGW_V_NONE; /* a number, never a string: nothing to free */
			it = &bad;
		} else if (pt->has_range && episode_good(&c->range_episode, cgw_mono_ms())) {
			log_notice("core", "values back within range (%llu out of range in %lld s)",
				   (unsigned long long)c->range_episode.total,
				   (long long)(episode_duration_ms(&c->range_episode) / 1000));
		}
	}
	store_put_latest(c->store, d->id, pt->name, &it->value, it->quality, it->ts_ms,
			 cgw_mono_ms());
	alarm_on_reading(c->alarms, it->device, it->point, &it->value, it->quality, it->ts_ms,
			 cgw_mono_ms());
	/* one telemetry message per device per poll cycle (see gather.h) */
	if (!it->in_cycle && gather_splits(c->gather, it->device, it->ts_ms))
		send_telemetry(c, it->device);
	char text[256], *big = NULL;
	const char *json = "null";
	if (it->quality == CGW_Q_GOOD) {
		size_t len = wire_value_text(pt, &it->value, text, sizeof(text));
		json = text;
		if (len >= sizeof(text) && (big = malloc(len + 1)) != NULL) {
			wire_value_text(pt, &it->value, big, len + 1);
			json = big;
		} else if (len >= sizeof(text)) {
			json = "null"; /* out of memory: the point is sent without its value */
		}
	}
	gather_add(c->gather, it->device, pt->name, json,
		   it->quality == CGW_Q_GOOD ? NULL : cgw_quality_name(it->quality), it->ts_ms,
		   it->in_cycle, cgw_mono_ms());
	free(big);
}

static void on_event(struct core *c, const struct cgw_item *it)
{
	const struct cfg_device *d = &c->cfg->devices[it->device];
	const struct cfg_profile *pr = cfg_device_profile(c->cfg, d);
	struct wire_msg m;

	if (it->point >= pr->n_points)
		return;
	const struct cfg_point *pt = &pr->points[it->point];
	alarm_on_reading(c->alarms, it->device, it->point, &it->value, it->quality, it->ts_ms,
			 cgw_mono_ms());
	emit(c, wire_event(c->cfg, it->device, pt, &it->value, it->suppressed, it->ts_ms, &m), &m);
}

static void on_device_state(struct core *c, const struct cgw_item *it)
{
	const struct cfg_device *d = &c->cfg->devices[it->device];
	struct wire_msg m;

	/* a bus restarted by a reload finds its unchanged devices as they were:
	 * no new `since`, nothing to tell */
	if (c->devs[it->device].online == (int8_t)it->online)
		return;
	c->devs[it->device].online = (int8_t)it->online;
	log_notice("core", "device %s (%s) is %s", d->id, d->name,
		   it->online ? "online" : "offline");
	c->devs[it->device].since_ms = it->ts_ms;
	emit(c, wire_device_state(c->cfg, it->device, it->online, it->ts_ms, it->ts_ms, &m), &m);
	alarm_on_device_state(c->alarms, it->device, it->online, it->ts_ms, cgw_mono_ms());
}

/* ---- commands ----------------------------------------------------------------- */

/*
 * Every command gets exactly one result, on P/cmd/{device}/result (and to
 * the cgwctl client that sent it):
 *   ok / failed       executed (failed: the device or bus said no);
 *   rejected          not executed: unknown device, unknown action, no such
 *                     point or alarm, malformed with a readable id, too big;
 *   duplicate         the id was seen before: not executed again; carries
 *                     the first outcome ("first").
 * A command whose id cannot be read, or whose device name cannot be a topic
 * level, cannot be answered: it is counted (status "commands", metrics).
 * Executed commands are logged one line each (they are real actions and
 * rare); refusals of any kind share one episode: a line when they start, a
 * count at most once a minute, a line when they stop.
 * Replay protection is the store's command-id table (store_cmdid_claim):
 * executed ids are kept 7 days whatever number of refusals comes meanwhile.
 * Commands for unknown devices are not recorded there and only sampled into
 * the audit (one per log line of the episode).
 */
enum cmd_outcome { CMD_OK, CMD_FAILED, CMD_REJECTED, CMD_DUPLICATE, CMD_UNANSWERED, CMD_N };
static const char *const cmd_outcome_names[CMD_N] = {"ok", "failed", "rejected", "duplicate",
						     "unanswered"};

struct reply_to {
	core_reply_fn fn;
	void *arg;
};

/* What a command result says. `record`: the command is in the audit and the
 * id table (a known device's command that passed parsing). */
struct cmd_answer {
	const char *source, *device, *command_id;
	enum cmd_outcome outcome;
	const char *detail;
	json_t *extra;                   /* consumed; merged into the payload */
	const struct store_cmdid *first; /* duplicate: the first outcome */
	bool record;                     /* in the audit and the id table: set their result */
	bool known;                      /* a configured device */
	bool audited;                    /* already in the audit */
};

static void refusal_audit(struct core *c, const struct cmd_answer *a, const char *request)
{
	struct store_audit au = {.ts_ms = cgw_now_ms(),
				 .source = a->source,
				 .device = a->device,
				 .command_id = a->command_id && *a->command_id ? a->command_id : "",
				 .action = "?",
				 .request_json = request,
				 .result = cmd_outcome_names[a->outcome],
				 .detail = a->detail};
	/* a sample may repeat an id sampled before: then the first one stays */
	store_audit_add(c->store, &au);
}

/* Counts, records, logs and sends one command result. */
static void command_answer(struct core *c, const struct reply_to *rt, struct cmd_answer *a)
{
	int64_t now = cgw_now_ms();
	json_t *o = NULL;
	enum episode_say say = EPISODE_SILENT;
	bool refused = a->outcome != CMD_OK && a->outcome != CMD_FAILED;

	c->cmd_count[a->outcome]++;
	if (refused) {
		say = log_episode_bad(
			&c->cmd_refused, cgw_mono_ms(), LOG_WARNING, "core",
			"command %s from %s for %.64s refused (%s%s%s); commands "
			"refused so far: %llu",
			a->command_id && *a->command_id ? a->command_id : "(no id)", a->source,
			a->known || wire_id_valid(a->device) ? a->device : "(not a device name)",
			cmd_outcome_names[a->outcome], a->detail ? ": " : "",
			a->detail ? a->detail : "",
			(unsigned long long)(c->cmd_count[CMD_REJECTED] +
					     c->cmd_count[CMD_DUPLICATE] +
					     c->cmd_count[CMD_UNANSWERED]));
	} else {
		log_info("core", "command %s from %s for %s: %s%s%s", a->command_id, a->source,
			 a->device, cmd_outcome_names[a->outcome], a->detail ? ": " : "",
			 a->detail ? a->detail : "");
	}
	if (a->record) {
		store_audit_result(c->store, a->source, a->command_id,
				   cmd_outcome_names[a->outcome], a->detail);
		store_cmdid_result(c->store, a->source, a->command_id,
				   cmd_outcome_names[a->outcome], a->detail);
	} else if (refused && !a->audited && say != EPISODE_SILENT && a->outcome != CMD_DUPLICATE) {
		refusal_audit(c, a, NULL); /* sampled */
	}
	if (a->outcome != CMD_UNANSWERED)
		o = wire_command_result(&(struct wire_result){
			.device = a->device,
			.command_id = a->command_id,
			.result = cmd_outcome_names[a->outcome],
			.detail = a->detail,
			.first_result = a->first ? a->first->result : NULL,
			.first_detail = a->first && a->first->detail[0] ? a->first->detail : NULL,
			.first_ts_ms = a->first ? a->first->ts_ms : 0,
			.extra = a->extra,
			.ts_ms = now});
	else
		json_decref(a->extra);
	a->extra = NULL;
	if (rt && rt->fn) {
		if (o) {
			rt->fn(rt->arg, o);
		} else {
			json_t *r = json_pack("{s:s,s:s}", "result", "rejected", "detail",
					      a->detail ? a->detail : "refused");
			rt->fn(rt->arg, r);
			json_decref(r);
		}
	}
	if (o) {
		struct wire_msg m;
		emit(c, wire_command_result_msg(a->device, a->known, o, now, &m), &m);
		json_decref(o);
	}
}

/* The short form used by run_command for a recorded command. */
static void command_result(struct core *c, const struct reply_to *rt, const char *source,
			   const char *device, const char *command_id, const char *result,
			   const char *detail, json_t *extra)
{
	struct cmd_answer a = {.source = source,
			       .device = device,
			       .command_id = command_id,
			       .outcome = !strcmp(result, "ok")     ? CMD_OK :
					  !strcmp(result, "failed") ? CMD_FAILED :
								      CMD_REJECTED,
			       .detail = detail,
			       .extra = extra,
			       .record = true,
			       .known = true};
	command_answer(c, rt, &a);
}

static int parse_write_value(const struct cfg_point *pt, json_t *jv, struct cgw_value *out)
{
	if (json_is_boolean(jv)) {
		out->type = CGW_V_BOOL;
		out->b = json_is_true(jv);
		return 0;
	}
	if (json_is_integer(jv)) {
		out->type = CGW_V_INT;
		out->i = json_integer_value(jv);
		if (pt->type == CGW_T_BOOL && (out->i == 0 || out->i == 1)) {
			out->type = CGW_V_BOOL;
			out->b = out->i == 1;
		}
		return 0;
	}
	if (json_is_real(jv)) {
		out->type = CGW_V_DOUBLE;
		out->d = json_real_value(jv);
		return 0;
	}
	if (json_is_string(jv)) {
		/* an enum word */
		for (size_t i = 0; i < pt->n_enums; i++) {
			if (!strcmp(pt->enums[i].label, json_string_value(jv))) {
				out->type = CGW_V_INT;
				out->i = pt->enums[i].key;
				return 0;
			}
		}
	}
	return -EINVAL;
}

/* Runs one command. Returns the immediate result, or NULL when the outcome
 * will come later (a write in flight). */
static void run_command(struct core *c, const struct reply_to *rt, const char *source, uint32_t dev,
			const struct command *cmd)
{
	const struct cfg_device *d = &c->cfg->devices[dev];
	const struct cfg_profile *pr = cfg_device_profile(c->cfg, d);
	const char *action = cmd->action, *by = cmd->by, *command_id = cmd->id;
	char who[160];

	snprintf(who, sizeof(who), "%s%s%s", source, by ? ":" : "", by ? by : "");
	if (!action) {
		command_result(c, rt, source, d->id, command_id, "rejected", "no \"action\"", NULL);
		return;
	}
	if (!strcmp(action, "ack")) {
		const char *alarm = cmd->alarm;
		char key[256];
		if (!alarm) {
			command_result(c, rt, source, d->id, command_id, "rejected",
				       "ack needs \"alarm\": an alarm id or a rule name", NULL);
			return;
		}
		/* a rule name is taken as this device's occurrence of it; an
		 * alarm id must be one of this device's: P/cmd/{id} acts on
		 * device {id} only */
		size_t dl = strlen(d->id);
		if (!strchr(alarm, '/')) {
			snprintf(key, sizeof(key), "%s/%s", d->id, alarm);
		} else if (strncmp(alarm, d->id, dl) != 0 || alarm[dl] != '/') {
			command_result(c, rt, source, d->id, command_id, "rejected",
				       "the alarm is not one of this device's", NULL);
			return;
		} else {
			snprintf(key, sizeof(key), "%s", alarm);
		}
		int r = alarm_ack(c->alarms, key, who, cgw_now_ms());
		command_result(c, rt, source, d->id, command_id, r == 0 ? "ok" : "rejected",
			       r == -ENOENT   ? "no such active alarm" :
			       r == -EALREADY ? "already acknowledged" :
			       r < 0          ? strerror(-r) :
						NULL,
			       NULL);
		kick_uplinks(c);
		return;
	}
	if (!strcmp(action, "read") || !strcmp(action, "write")) {
		const char *point = cmd->point;
		const struct cfg_point *pt = NULL;
		size_t pidx = 0;
		for (size_t i = 0; point && i < pr->n_points && !pt; i++)
			if (!strcmp(pr->points[i].name, point)) {
				pt = &pr->points[i];
				pidx = i;
			}
		if (!pt) {
			command_result(c, rt, source, d->id, command_id, "rejected",
				       point ? "no such point" : "needs \"point\"", NULL);
			return;
		}
		if (!strcmp(action, "read")) {
			struct store_latest l;
			if (store_get_latest(c->store, d->id, pt->name, &l) < 0) {
				command_result(c, rt, source, d->id, command_id, "rejected",
					       "no value read yet", NULL);
				return;
			}
			json_t *extra = json_pack("{s:s,s:o,s:s,s:I}", "point", pt->name, "value",
						  wire_value_json(pt, &l.value), "quality",
						  cgw_quality_name(l.quality), "value_ts",
						  (json_int_t)l.ts_ms);
			cgw_value_clear(&l.value);
			command_result(c, rt, source, d->id, command_id, "ok", NULL, extra);
			return;
		}
		if (!pt->writable) {
			command_result(c, rt, source, d->id, command_id, "rejected",
				       "point is not writable", NULL);
			return;
		}
		struct cgw_value v = {0};
		if (parse_write_value(pt, cmd->value, &v) < 0) {
			command_result(c, rt, source, d->id, command_id, "rejected",
				       "\"value\" missing or not valid for this point", NULL);
			return;
		}
		struct driver *drv = c->drivers[d->bus];
		const struct driver_ops *ops = driver_ops_for(&c->cfg->buses[d->bus]);
		struct pending_write *pw = NULL;
		for (size_t i = 0; i < MAX_PENDING_WRITES && !pw; i++)
			if (!c->writes[i].token)
				pw = &c->writes[i];
		if (!drv || !ops->write || !pw) {
			command_result(c, rt, source, d->id, command_id, "failed",
				       !pw ? "too many writes in flight" : "bus is not running",
				       NULL);
			return;
		}
		uint64_t token = ++c->write_token;
		int r = ops->write(drv, c->devs[dev].local, (uint32_t)pidx, &v, token);
		cgw_value_clear(&v);
		if (r < 0) {
			command_result(c, rt, source, d->id, command_id, "failed", strerror(-r),
				       NULL);
			return;
		}
		pw->token = token;
		pw->source = strdup(source);
		pw->command_id = strdup(command_id);
		pw->device = dev;
		pw->reply = rt ? rt->fn : NULL;
		pw->reply_arg = rt ? rt->arg : NULL;
		return;
	}
	command_result(c, rt, source, d->id, command_id, "rejected",
		       "unknown action (ack, read, write)", NULL);
}

static void on_write_result(struct core *c, const struct cgw_item *it)
{
	for (size_t i = 0; i < MAX_PENDING_WRITES; i++) {
		struct pending_write *pw = &c->writes[i];
		if (pw->token != it->token)
			continue;
		struct reply_to rt = {pw->reply, pw->reply_arg};
		command_result(c, &rt, pw->source, c->cfg->devices[pw->device].id, pw->command_id,
			       it->result == 0 ? "ok" : "failed",
			       it->result == 0                ? NULL :
			       it->value.type == CGW_V_STRING ? it->value.s :
								strerror(-it->result),
			       NULL);
		free(pw->source);
		free(pw->command_id);
		memset(pw, 0, sizeof(*pw));
		return;
	}
}

static int record_row(void *ctx, const struct store_col *cols, size_t n)
{
	json_t *arr = ctx, *o = json_object();

	if (!o)
		return 1;
	for (size_t i = 0; i < n; i++) {
		const struct store_col *col = &cols[i];
		json_t *v = NULL;
		if (col->type == SQLITE_INTEGER) {
			v = json_integer((json_int_t)col->i);
		} else if (col->type == SQLITE_TEXT || col->type == SQLITE_BLOB) {
			v = json_stringn(col->p ? col->p : "", col->len);
			if (!v) { /* not UTF-8 (a quarantined payload): as hex */
				char *hex = malloc(2 * col->len + 5);
				if (hex) {
					memcpy(hex, "hex:", 4);
					for (size_t k = 0; k < col->len; k++)
						snprintf(hex + 4 + 2 * k, 3, "%02x",
							 ((const unsigned char *)col->p)[k]);
					hex[4 + 2 * col->len] = '\0';
					v = json_string(hex);
					free(hex);
				}
			}
		} else {
			v = json_null();
		}
		json_object_set_new(o, col->name, v ? v : json_null());
	}
	json_array_append_new(arr, o);
	return 0;
}

json_t *core_records_json(struct core *c, const char *table, unsigned last)
{
	json_t *arr = json_array();

	if (arr && store_recent(c->store, table, last, record_row, arr) < 0) {
		json_decref(arr);
		return NULL;
	}
	return arr;
}

int core_commission(struct core *c, const char *bus, const struct driver_commission *req,
		    core_reply_fn reply, void *arg)
{
	struct pending_commission *pc = NULL;
	const struct driver_ops *ops;
	long b = -1;
	int r;

	for (size_t i = 0; i < c->cfg->n_buses && b < 0; i++)
		if (!strcmp(c->cfg->buses[i].name, bus))
			b = (long)i;
	if (b < 0)
		return -ENOENT;
	ops = driver_ops_for(&c->cfg->buses[b]);
	if (!ops || !ops->commission)
		return -EPROTOTYPE;
	if (!c->drivers[b])
		return -ENODEV;
	for (size_t i = 0; i < MAX_PENDING_COMMISSIONS && !pc; i++)
		if (!c->comms[i].token)
			pc = &c->comms[i];
	if (!pc)
		return -EBUSY;
	uint64_t token = ++c->write_token;
	r = ops->commission(c->drivers[b], req, token);
	if (r < 0)
		return r;
	pc->token = token;
	pc->kind = req->kind;
	snprintf(pc->bus, sizeof(pc->bus), "%s", bus);
	pc->reply = reply;
	pc->reply_arg = arg;
	return 0;
}

/* The worker's JSON text, with a probe's words read as every type. */
static void on_commission_result(struct core *c, const struct cgw_item *it)
{
	for (size_t i = 0; i < MAX_PENDING_COMMISSIONS; i++) {
		struct pending_commission *pc = &c->comms[i];
		const char *what = pc->kind == DRV_SCAN ? "scan" : "probe";
		json_t *o = NULL, *data = NULL;

		if (!pc->token || pc->token != it->token)
			continue;
		if (it->result == 0 && it->value.type == CGW_V_STRING)
			data = json_loads(it->value.s, 0, NULL);
		if (data) {
			json_t *regs = json_object_get(data, "registers");
			if (json_is_array(regs) && json_array_size(regs) > 0) {
				uint16_t w[MBP_MAX_REGS];
				size_t n = json_array_size(regs) < MBP_MAX_REGS ?
						   json_array_size(regs) :
						   MBP_MAX_REGS;
				for (size_t k = 0; k < n; k++)
					w[k] = (uint16_t)json_integer_value(
						json_array_get(regs, k));
				json_object_set_new(data, "readings", commission_readings(w, n));
			}
			json_object_set_new(data, "bus", json_string(pc->bus));
			o = json_pack("{s:s,s:o}", "result", "ok", what, data);
		} else {
			o = json_pack("{s:s,s:s}", "result", "failed", "detail",
				      it->value.type == CGW_V_STRING ? it->value.s :
				      it->result < 0                 ? strerror(-it->result) :
								       "no result");
		}
		if (pc->reply && o)
			pc->reply(pc->reply_arg, o);
		json_decref(o);
		memset(pc, 0, sizeof(*pc));
		return;
	}
}

void core_command(struct core *c, const char *source, const char *device, const char *payload,
		  size_t len)
{
	core_command_reply(c, source, device, payload, len, NULL, NULL);
}

void core_cancel_replies(struct core *c, void *arg)
{
	for (size_t i = 0; i < MAX_PENDING_WRITES; i++)
		if (c->writes[i].token && c->writes[i].reply_arg == arg)
			c->writes[i].reply = NULL;
	for (size_t i = 0; i < MAX_PENDING_COMMISSIONS; i++)
		if (c->comms[i].token && c->comms[i].reply_arg == arg)
			c->comms[i].reply = NULL;
}

void core_command_reply(struct core *c, const char *source, const char *device, const char *payload,
			size_t len, core_reply_fn reply, void *arg)
{
	struct reply_to rtv = {reply, arg}, *rt = &rtv;
	struct command cmd;
	char why[160], *text;
	long dev = cfg_find_device(c->cfg, device);
	struct cmd_answer a = {.source = source, .device = device, .known = dev >= 0};
	struct store_cmdid first;
	int r;

	r = command_parse(payload, len, &cmd, why, sizeof(why));
	a.command_id = cmd.id;
	if (r < 0 || dev < 0) {
		/* refused before anything is recorded: answered when there is
		 * an id and a topic to answer on, else counted */
		a.detail = r < 0 ? why : "unknown device";
		a.outcome = *cmd.id && wire_id_valid(device) ? CMD_REJECTED : CMD_UNANSWERED;
		if (r == 0 && !cmd.action) /* the reason a platform can act on first */
			a.detail = "unknown device (and no \"action\")";
		if (r < 0 && !*cmd.id)
			snprintf(why + strlen(why), sizeof(why) - strlen(why),
				 "; no id to answer to");
		if (dev >= 0 && a.outcome == CMD_REJECTED) {
			/* a device of ours: every such command is in the audit */
			refusal_audit(c, &a, NULL);
			a.audited = true;
		}
		command_answer(c, rt, &a);
		command_clear(&cmd);
		kick_uplinks(c);
		return;
	}
	r = store_cmdid_claim(c->store, source, cmd.id, cgw_now_ms(), &first);
	if (r == -EEXIST) {
		/* QoS 1 redelivery or a replay: executed once already */
		a.outcome = CMD_DUPLICATE;
		a.detail = "this command id was already received; not executed again";
		a.first = &first;
		command_answer(c, rt, &a);
		command_clear(&cmd);
		kick_uplinks(c);
		return;
	}
	if (r < 0) {
		/* without the record a replay could run it twice: refuse */
		a.outcome = CMD_REJECTED;
		a.detail = "the store cannot record the command id; not executed";
		command_answer(c, rt, &a);
		command_clear(&cmd);
		kick_uplinks(c);
		return;
	}
	text = command_dump(&cmd);
	struct store_audit au = {.ts_ms = cgw_now_ms(),
				 .source = source,
				 .device = device,
				 .command_id = cmd.id,
				 .action = cmd.action ? cmd.action : "?",
				 .request_json = text,
				 .result = "pending"};
	/* an older row with this id (a sampled refusal, or one older than the
	 * id table keeps) is updated by the result: the id table decides */
	store_audit_add(c->store, &au);
	free(text);
	run_command(c, rt, source, (uint32_t)dev, &cmd);
	command_clear(&cmd);
	kick_uplinks(c);
}

/* ---- restate and rebirth ------------------------------------------------------- */

/* Queues m for one uplink (store id) only. */
static void emit_for(struct core *c, int64_t uplink, int r, struct wire_msg *m)
{
	struct store_msg sm = {.lane = m->lane,
			       .device = m->device,
			       .topic = m->topic,
			       .ts_ms = m->ts_ms,
			       .payload = m->payload,
			       .uplink = uplink};
	uint64_t seq;

	if (r == 0 && store_enqueue(c->store, &sm, cgw_mono_ms(), &seq, NULL) == 0)
		c->messages++;
	else
		c->enqueue_errors++;
	wire_msg_clear(m);
}

/* Every device's retained state again, for one uplink: a broker that lost
 * its retained messages (restarted without persistence) gets them back. */
static void restate_devices(struct core *c, int64_t uplink)
{
	int64_t now = cgw_now_ms();
	struct wire_msg m;
	size_t n = 0;

	for (size_t i = 0; c->devs && i < c->cfg->n_devices; i++) {
		const struct dev_rt *ds = &c->devs[i];
		if (ds->online < 0)
			continue;
		emit_for(c, uplink,
			 wire_device_state(c->cfg, (uint32_t)i, ds->online, ds->since_ms, now, &m),
			 &m);
		n++;
	}
	if (n)
		log_debug("core", "re-sent the state of %zu devices", n);
	arm_flush(c);
}

static void on_uplink_connect(void *arg, int64_t uplink)
{
	struct core *c = arg;
	enum store_state st = store_state(c->store);

	/* On a full disk the restated states could not be stored (and a batch
	 * of them failing with the disk has left telemetry behind the uplink's
	 * cursor): restate to every uplink once the store writes again. */
	if (st == STORE_DISK_FULL || st == STORE_MEMORY_ONLY) {
		c->restate_owed = true;
		return;
	}
	restate_devices(c, uplink);
}

struct restate_ctx {
	struct core *c;
	int64_t uplink, now;
	size_t n;
};

static void restate_alarm(void *arg, const struct alarm_change *ch)
{
	struct restate_ctx *x = arg;
	struct alarm_change rc = *ch;
	struct wire_msg m;

	/* no change, the state as it stands: the platform must not annunciate
	 * it again (it knows the alarm_id) */
	rc.event = "restated";
	rc.ts_ms = x->now;
	if (wire_alarm(x->c->cfg, &rc, &m) == 0) {
		struct store_msg sm = {.lane = m.lane,
				       .device = m.device,
				       .topic = m.topic,
				       .ts_ms = m.ts_ms,
				       .payload = m.payload,
				       .uplink = x->uplink};
		uint64_t seq;
		if (store_enqueue(x->c->store, &sm, cgw_mono_ms(), &seq, NULL) == 0)
			x->n++;
	}
	wire_msg_clear(&m);
}

/* A gateway command on P/cmd: {"id", "action": "rebirth"}. Idempotent, so
 * not de-duplicated; answered on P/result. */
static void gateway_command(struct core *c, size_t up, const char *payload, size_t len)
{
	struct command cmd;
	char why[160];
	int64_t now = cgw_now_ms();
	struct wire_msg m;
	const char *result = "ok", *detail = NULL;

	if (command_parse(payload, len, &cmd, why, sizeof(why)) < 0) {
		c->cmd_count[CMD_UNANSWERED]++; /* no id to answer to */
		return;
	}
	if (!cmd.action || strcmp(cmd.action, "rebirth") != 0) {
		result = "rejected";
		detail = "unknown gateway action (rebirth)";
	} else {
		struct restate_ctx x = {c, c->uplink_rt[up].store_id, now, 0};
		if (c->uplink_ops[up]->announce)
			c->uplink_ops[up]->announce(c->uplinks[up]);
		restate_devices(c, x.uplink);
		alarm_foreach(c->alarms, restate_alarm, &x);
		log_info("core", "rebirth for uplink %s: states and %zu alarms re-sent",
			 c->cfg->uplinks[up].name, x.n);
	}
	json_t *o = wire_command_result(&(struct wire_result){.command_id = cmd.id,
							      .result = result,
							      .detail = detail,
							      .ts_ms = now});
	emit_for(c, c->uplink_rt[up].store_id, wire_command_result_msg(NULL, true, o, now, &m), &m);
	json_decref(o);
	command_clear(&cmd);
	arm_flush(c);
	kick_uplinks(c);
}

static void on_uplink_command(void *arg, const char *uplink, const char *device,
			      const char *payload, size_t len)
{
	struct core *c = arg;
	char source[96];

	if (!device) {
		for (size_t i = 0; i < c->n_uplinks; i++)
			if (c->uplinks[i] && !strcmp(c->cfg->uplinks[i].name, uplink))
				gateway_command(c, i, payload, len);
		return;
	}
	snprintf(source, sizeof(source), "mqtt:%s", uplink);
	core_command(arg, source, device, payload, len);
}

/* ---- alarms ---------------------------------------------------------------------- */

/* The store's record of an alarm as a change leaves it. */
static struct store_alarm stored_alarm(const struct alarm_change *ch, const char *device)
{
	return (struct store_alarm){
		.alarm_id = ch->alarm_id,
		.device = device,
		.rule = ch->rule_name,
		.state = alarm_state_name(ch->state),
		.severity = cfg_severity_name(ch->severity),
		.raised_at_ms = ch->raised_at_ms,
		.updated_at_ms = ch->ts_ms,
		.latched = ch->latched,
		.shelved = ch->shelved,
	};
}

static void on_alarm(void *arg, const struct alarm_change *ch)
{
	struct core *c = arg;
	const struct cfg_device *d = &c->cfg->devices[ch->device];
	struct wire_msg m;

	struct store_alarm sa = stored_alarm(ch, d->id);
	if (ch->state == ALARM_NORMAL)
		store_alarm_delete(c->store, ch->alarm_id);
	else
		store_alarm_put(c->store, &sa);
	if (ch->event) {
		struct store_history h = {
			.ts_ms = ch->ts_ms,
			.alarm_id = ch->alarm_id,
			.device = d->id,
			.building = cfg_device_location(d, "building"),
			.rule = ch->rule_name,
			.event = ch->event,
			.state = ch->shelved ? "shelved" : alarm_state_name(ch->state),
			.severity = cfg_severity_name(ch->severity),
			.by = ch->by,
			.message = ch->message,
		};
		store_history_add(c->store, &h);
	}
	if (c->observer)
		c->observer(c->observer_arg, ch);
	if (ch->suppressed)
		return; /* chatter/flood: recorded, reported once elsewhere */

	if (emit(c, wire_alarm(c->cfg, ch, &m), &m) == 0) {
		if (ch->severity == CFG_SEV_CRITICAL)
			log_warn("alarm", "%s: %s %s: %s", d->id, ch->rule_name, ch->event,
				 ch->message);
		else
			log_info("alarm", "%s: %s %s", d->id, ch->rule_name, ch->event);
	}
	/* committed: out it goes, before anything else this turn */
	kick_uplinks(c);
}

static void on_flood(void *arg, bool active, unsigned new_alarms, int64_t wall_ms)
{
	struct core *c = arg;

	if (active)
		log_warn("alarm", "alarm flood: %u new alarms in 10 minutes", new_alarms);
	else
		log_notice("alarm", "alarm flood over (%u new alarms)", new_alarms);
	struct wire_msg m;
	emit(c,
	     wire_notice(active ? "alarm_flood" : "alarm_flood_over", wall_ms,
			 json_pack("{s:I}", "new_alarms", (json_int_t)new_alarms), &m),
	     &m);
	kick_uplinks(c);
}

static void arm_alarm_timer(struct core *c)
{
	int64_t due = alarm_next_deadline(c->alarms);
	loop_timer_at(c->alarm_timer, due);
}

static void on_alarm_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	struct core *c = arg;

	(void)l;
	(void)t;
	alarm_tick(c->alarms, cgw_now_ms(), cgw_mono_ms());
	arm_alarm_timer(c);
}

static int restore_one(void *ctx, const struct store_alarm *a)
{
	struct core *c = ctx;
	int st = alarm_state_from_name(a->state);
	struct alarm_record r = {
		.alarm_id = a->alarm_id,
		.device_id = a->device,
		.rule = a->rule,
		.state = st < 0 ? ALARM_ACTIVE_UNACKED : (enum alarm_state)st,
		.raised_at_ms = a->raised_at_ms,
		.shelved = a->shelved,
	};
	bool kept = false;
	long dev = cfg_find_device(c->cfg, a->device);

	if (dev >= 0 && c->devs[dev].adopted)
		return 0; /* carried over by a reload: the engine knows better */
	alarm_restore(c->alarms, &r, 1, &kept);
	if (!kept) { /* its device or rule is gone from the configuration */
		char **nv = realloc(c->forget, (c->n_forget + 1) * sizeof(*nv));
		if (nv) {
			c->forget = nv;
			c->forget[c->n_forget] = strdup(a->alarm_id);
			if (c->forget[c->n_forget])
				c->n_forget++;
		}
	}
	return 0;
}

/* ---- queue and timers -------------------------------------------------------------- */

/* One item from a driver of generation g, by whichever way it came (queue
 * or deliver); a driver kept across a reload speaks its configuration's
 * device index, mapped here to the running one. */
static void handle_item(struct gen *g, struct cgw_item *it)
{
	struct core *c = g->core;

	if (it->kind == CGW_ITEM_COMMISSION_RESULT) {
		on_commission_result(c, it); /* a bus's, by token: no device */
		return;
	}
	if (g->map)
		it->device = it->device < g->cfg->n_devices ? g->map[it->device] : DEV_NONE;
	if (it->device >= c->cfg->n_devices)
		return;
	switch (it->kind) {
	case CGW_ITEM_READING:
		on_reading(c, it);
		break;
	case CGW_ITEM_EVENT:
		on_event(c, it);
		break;
	case CGW_ITEM_DEVICE_STATE:
		on_device_state(c, it);
		break;
	case CGW_ITEM_WRITE_RESULT:
		on_write_result(c, it);
		break;
	case CGW_ITEM_CYCLE_END:
		gather_end_cycle(c->gather, it->device);
		send_telemetry(c, it->device);
		break;
	case CGW_ITEM_COMMISSION_RESULT:
		break;
	}
}

/* Runs on producer threads (queue.h): whether the item must wake the core
 * now. Readings of points no rule reads can wait for the next drain. */
static bool item_urgent(void *arg, const struct cgw_item *it)
{
	const struct gen *g = arg;

	if (it->kind == CGW_ITEM_CYCLE_END)
		return false;
	if (it->kind != CGW_ITEM_READING || !g->alarm_input || it->device >= g->cfg->n_devices)
		return true;
	const struct cfg_device *d = &g->cfg->devices[it->device];
	const struct cfg_profile *pr = cfg_device_profile(g->cfg, d);
	return it->point >= pr->n_points || g->alarm_input[g->prof_first[d->profile] + it->point];
}

/* Which points of each profile a rule reads (its point, its unless: points). */
static int gen_alarm_inputs(struct gen *g)
{
	const struct cgw_config *cfg = g->cfg;
	size_t total = 0;

	g->prof_first = calloc(cfg->n_profiles + 1, sizeof(*g->prof_first));
	if (!g->prof_first)
		return -ENOMEM;
	for (size_t p = 0; p < cfg->n_profiles; p++) {
		g->prof_first[p] = total;
		total += cfg->profiles[p].n_points;
	}
	g->alarm_input = calloc(total + 1, 1);
	if (!g->alarm_input)
		return -ENOMEM;
	for (size_t p = 0; p < cfg->n_profiles; p++) {
		const struct cfg_profile *pr = &cfg->profiles[p];
		uint8_t *in = g->alarm_input + g->prof_first[p];
		for (size_t a = 0; a < pr->n_alarms; a++) {
			const struct cfg_alarm *al = &pr->alarms[a];
			if (al->point_idx < pr->n_points)
				in[al->point_idx] = 1;
			for (size_t u = 0; u < al->n_unless; u++)
				if (al->unless[u].point_idx < pr->n_points)
					in[al->unless[u].point_idx] = 1;
		}
	}
	return 0;
}

/* Handles what the queue holds (bounded, so timers and uplinks keep their
 * turn); the number of items handled. */
static size_t drain(struct gen *g)
{
	struct core *c = g->core;
	size_t n, total = 0;
	int rounds = 0;

	while (rounds++ < 16 && (n = queue_pop_batch(g->queue, c->items, POP_BATCH)) > 0) {
		for (size_t i = 0; i < n; i++) {
			handle_item(g, &c->items[i]);
			cgw_value_clear(&c->items[i].value);
		}
		total += n;
	}
	return total;
}

static void after_drain(struct core *c);

static void on_queue(struct loop *l, int fd, uint32_t ev, void *arg)
{
	struct gen *g = arg;
	struct core *c = g->core;

	(void)l;
	(void)fd;
	(void)ev;
	/* without its urgent function (no memory for it) the queue is never
	 * held: an alarm input must not wait for the timer */
	if (drain(g) > 0 && g->queue == c->queue && c->drain_timer && g->alarm_input) {
		/* readings are coming: drain on the timer from now on, and
		 * let the producers push without waking the core */
		queue_hold(g->queue, true);
		if (loop_timer_due(c->drain_timer) < 0)
			loop_timer_in(c->drain_timer, DRAIN_MS);
	}
	after_drain(c);
}

static void on_drain_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	struct core *c = arg;

	(void)l;
	if (!c->gens || c->gens->queue != c->queue)
		return;
	if (drain(c->gens) > 0) {
		loop_timer_in(t, DRAIN_MS);
	} else {
		/* quiet: the next push wakes the core again */
		queue_hold(c->queue, false);
		return;
	}
	after_drain(c);
}

static void after_drain(struct core *c)
{
	flush_telemetry(c, true, false);
	arm_alarm_timer(c);
	arm_flush(c);
	kick_uplinks(c);
}

/* driver_env.deliver (arg: the driver's generation): a core-thread
 * driver's item, handled now. */
static void core_deliver(void *arg, struct cgw_item *it)
{
	struct gen *g = arg;

	if (g->core->store && g->core->alarms)
		handle_item(g, it);
	cgw_value_clear(&it->value);
}

static void flush_store(struct core *c);

/* driver_env.settle: commit what was delivered (the driver acknowledges it to
 * its source next), and send what it raised. */
static void core_settle(void *arg)
{
	struct core *c = ((struct gen *)arg)->core;

	if (!c->store)
		return;
	flush_telemetry(c, true, false);
	if (store_pending(c->store))
		flush_store(c);
	arm_alarm_timer(c);
	arm_flush(c);
	kick_uplinks(c);
}

static void flush_store(struct core *c)
{
	int64_t now = cgw_mono_ms();

	if (store_flush(c->store) < 0 && store_state(c->store) < STORE_DISK_FULL) {
		log_episode_bad(&c->commit_ep, now, LOG_ERR, "core", "store commit failed: %s",
				store_errmsg(c->store));
		c->store_ok = false;
	} else {
		if (!c->store_ok)
			log_episode_good(&c->commit_ep, now, "core", "store commits again");
		c->store_ok = true;
	}
}

static void on_flush_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	struct core *c = arg;

	(void)l;
	(void)t;
	flush_store(c);
	watch_store(c);
	arm_flush(c);
	kick_uplinks(c);
}

static void on_maint_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	struct core *c = arg;
	struct store_maint_report rep;
	struct queue_stats qs;

	(void)l;
	if (store_maintain(c->store, cgw_now_ms(), &rep) == 0) {
		uint64_t ev = rep.evicted[CGW_LANE_TELEMETRY] + rep.evicted[CGW_LANE_EVENT] +
			      rep.evicted[CGW_LANE_STATUS];
		if (rep.episode_started) {
			log_warn("core",
				 "store at its cap (%lld bytes): evicting oldest telemetry "
				 "(%llu messages so far)",
				 (long long)c->cfg->store.max_size, (unsigned long long)ev);
			struct wire_msg m;
			emit(c,
			     wire_notice("store_evicting", cgw_now_ms(),
					 json_pack("{s:I,s:I,s:I}", "telemetry_evicted",
						   (json_int_t)rep.evicted[CGW_LANE_TELEMETRY],
						   "events_evicted",
						   (json_int_t)rep.evicted[CGW_LANE_EVENT],
						   "size_bytes", (json_int_t)rep.size_bytes),
					 &m),
			     &m);
		}
		if (rep.episode_ended)
			log_notice("core", "store below its cap again");
	}
	log_episode_good(&c->cmd_refused, cgw_mono_ms(), "core", "commands are no longer refused");
	watch_store(c);
	arm_flush(c);
	core_queue_stats(c, &qs);
	if (qs.full)
		log_episode_bad(&c->queue_full, cgw_mono_ms(), LOG_WARNING, "core",
				"driver queue full (%zu items): bus workers are slowed down",
				qs.capacity);
	else
		log_episode_good(&c->queue_full, cgw_mono_ms(), "core",
				 "driver queue drains again");
	kick_uplinks(c);
	loop_timer_in(t, MAINTAIN_MS);
}

/* ---- lifecycle ------------------------------------------------------------------------ */

static void core_queue_stats(struct core *c, struct queue_stats *qs)
{
	memset(qs, 0, sizeof(*qs));
	for (struct gen *g = c->gens; g; g = g->next) {
		struct queue_stats s;
		if (!g->queue)
			continue;
		queue_get_stats(g->queue, &s);
		qs->capacity += s.capacity;
		qs->depth += s.depth;
		qs->high_water = s.high_water > qs->high_water ? s.high_water : qs->high_water;
		qs->waiting += s.waiting;
		qs->pushes += s.pushes;
		qs->drops += s.drops;
		qs->waits += s.waits;
		qs->full_episodes += s.full_episodes;
		qs->full = qs->full || s.full;
	}
}

/* A generation for cfg with its queue; the caller links it in. */
static int gen_new(struct core *c, struct gen **out)
{
	struct gen *g = calloc(1, sizeof(*g));
	int r;

	*out = NULL;
	if (!g)
		return -ENOMEM;
	g->core = c;
	/* CGW_TEST_QUEUE_CAPACITY: tests fill the queue with a few devices */
	const char *qcap = getenv("CGW_TEST_QUEUE_CAPACITY");
	r = queue_new(&g->queue, qcap ? strtoul(qcap, NULL, 10) : QUEUE_CAPACITY);
	if (r < 0 || (r = loop_add_fd(c->loop, queue_fd(g->queue), EPOLLIN, on_queue, g)) < 0) {
		log_err("core", "queue: %s", strerror(-r));
		queue_free(g->queue);
		free(g);
		return r;
	}
	*out = g;
	return 0;
}

/* g becomes the running configuration's generation (cfg taken). */
static void gen_push(struct core *c, struct gen *g, struct cgw_config *cfg)
{
	g->cfg = cfg;
	if (gen_alarm_inputs(g) == 0)
		queue_set_urgent(g->queue, item_urgent, g);
	/* else every push wakes the core, as without coalescing */
	if (c->queue)
		queue_hold(c->queue, false); /* the old generation's drains by its fd */
	g->next = c->gens;
	c->gens = g;
	c->cfg = cfg;
	c->queue = g->queue;
}

static void gen_free(struct core *c, struct gen *g)
{
	if (!g)
		return;
	loop_del_fd(c->loop, queue_fd(g->queue));
	queue_free(g->queue);
	free(g->map);
	free(g->alarm_input);
	free(g->prof_first);
	config_free(g->cfg);
	free(g);
}

/* Frees the configurations nothing uses any more (never the running one). */
static void gens_prune(struct core *c)
{
	for (struct gen **gp = &c->gens->next; *gp;) {
		struct gen *g = *gp;
		if (g->users) {
			gp = &g->next;
			continue;
		}
		*gp = g->next;
		gen_free(c, g);
	}
}

/* Handles what every driver queued so far. */
static void drain_all(struct core *c)
{
	if (!c->store || !c->alarms)
		return;
	for (struct gen *g = c->gens; g; g = g->next)
		on_queue(c->loop, -1, 0, g);
}

static void fail_commission(struct pending_commission *pc, const char *why)
{
	if (pc->token && pc->reply) {
		json_t *o = json_pack("{s:s,s:s}", "result", "failed", "detail", why);
		pc->reply(pc->reply_arg, o);
		json_decref(o);
	}
	memset(pc, 0, sizeof(*pc));
}

/* A write in flight that will get no answer from its device: its result
 * is "failed", on the result topic too (it goes out after a restart), and
 * in the audit and the id table. `device`: its id. */
static void fail_write(struct core *c, struct pending_write *pw, const char *device,
		       const char *why)
{
	if (pw->token && c->store) {
		struct reply_to rt = {pw->reply, pw->reply_arg};
		command_result(c, &rt, pw->source, device, pw->command_id, "failed", why, NULL);
	} else if (pw->token && pw->reply) {
		json_t *o = json_pack("{s:s,s:s,s:s}", "command_id", pw->command_id, "result",
				      "failed", "detail", why);
		pw->reply(pw->reply_arg, o);
		json_decref(o);
	}
	free(pw->source);
	free(pw->command_id);
	memset(pw, 0, sizeof(*pw));
}

static void close_bus(struct core *c, size_t b)
{
	if (!c->drivers || !c->drivers[b])
		return;
	driver_ops_for(&c->cfg->buses[b])->close(c->drivers[b]);
	c->drivers[b] = NULL;
	c->bus_rt[b].gen->users--;
	/* writes in flight on it get no answer now */
	for (size_t i = 0; i < MAX_PENDING_WRITES; i++)
		if (c->writes[i].token && c->cfg->devices[c->writes[i].device].bus == b)
			fail_write(c, &c->writes[i], c->cfg->devices[c->writes[i].device].id,
				   "the bus restarted before the device answered (reload)");
	for (size_t i = 0; i < MAX_PENDING_COMMISSIONS; i++)
		if (c->comms[i].token && !strcmp(c->comms[i].bus, c->cfg->buses[b].name))
			fail_commission(&c->comms[i], "the bus stopped or restarted (reload) "
						      "before it answered");
}

static void close_uplink(struct core *c, size_t i)
{
	if (!c->uplinks || !c->uplinks[i])
		return;
	c->uplink_ops[i]->close(c->uplinks[i]);
	c->uplinks[i] = NULL;
	c->uplink_rt[i].gen->users--;
}

static int open_store(struct core *c, const struct cgw_config *cfg)
{
	struct store_opts so = {
		.sync_full = cfg->store.sync == CFG_SYNC_FULL,
		.max_size = cfg->store.max_size,
		.min_free = cfg->store.min_free,
		.telemetry_retention_ms = cfg->store.telemetry_retention_ms,
		.batch_ms = (unsigned)cfg->store.batch_delay_ms,
	};
	char path[4096], err[256];
	struct statvfs fs;
	int r;

	r = ensure_dir(cfg->gateway.state_dir);
	if (r < 0) {
		log_err("core", "state_dir %s: %s", cfg->gateway.state_dir, strerror(-r));
		return r;
	}
	/* "50%": a share of the filesystem that holds the store */
	if (statvfs(cfg->gateway.state_dir, &fs) == 0) {
		int64_t total = (int64_t)fs.f_blocks * (int64_t)fs.f_frsize;
		if (so.max_size < 0)
			so.max_size = total / 100 * -so.max_size;
		if (so.min_free < 0)
			so.min_free = total / 100 * -so.min_free;
	}
	if (so.max_size < 0 || so.min_free < 0) {
		log_warn("core", "state_dir %s: filesystem size unknown; store without a cap",
			 cfg->gateway.state_dir);
		so.max_size = so.max_size < 0 ? 0 : so.max_size;
		so.min_free = so.min_free < 0 ? 0 : so.min_free;
	}
	/* room kept for alarms on a full disk: 1/16 of the cap, 128KB..4MB */
	so.reserve_size = so.max_size > 0 ? so.max_size / 16 : 4 << 20;
	so.reserve_size = so.reserve_size < (128 << 10) ? (128 << 10) :
			  so.reserve_size > (4 << 20)   ? (4 << 20) :
							  so.reserve_size;
	/* one cgwd per store: a second one would interleave seqs and deliveries */
	snprintf(path, sizeof(path), "%s/cgwd.lock", cfg->gateway.state_dir);
	c->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (c->lock_fd < 0 || flock(c->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		r = -errno;
		log_err("core", "%s: %s", path,
			r == -EWOULDBLOCK ? "another cgwd is running on this state_dir" :
					    strerror(-r));
		return r;
	}
	snprintf(path, sizeof(path), "%s/cgw.db", cfg->gateway.state_dir);
	r = store_open(&c->store, path, &so, err, sizeof(err));
	if (r < 0) {
		log_err("core", "store %s: %s", path, err);
		return r;
	}
	c->store_ok = true;
	log_info("core",
		 "store %s: cap %lld bytes, free-space floor %lld bytes, alarm reserve %lld bytes",
		 path, (long long)so.max_size, (long long)so.min_free, (long long)so.reserve_size);
	watch_store(c);
	arm_flush(c); /* a store opened on a full disk probes for room from now on */
	return 0;
}

static void close_store(struct core *c)
{
	store_close(c->store);
	c->store = NULL;
	if (c->lock_fd >= 0)
		close(c->lock_fd);
	c->lock_fd = -1;
}

/* ---- shelving, persisted: a device can be shelved with no alarm at all ---- */

static json_t *shelf_load(struct core *c)
{
	char *buf = malloc(SHELF_MAX);
	json_t *o = NULL;

	if (buf && store_meta_get(c->store, SHELF_KEY, buf, SHELF_MAX) == 0)
		o = json_loads(buf, 0, NULL);
	free(buf);
	if (!json_is_object(o)) {
		json_decref(o);
		o = json_object();
	}
	return o;
}

static void shelf_write(struct core *c, json_t *o)
{
	char *text = json_dumps(o, JSON_COMPACT);

	if (!text || strlen(text) >= SHELF_MAX || store_meta_set(c->store, SHELF_KEY, text) < 0 ||
	    store_flush(c->store) < 0)
		log_err("core", "store: shelving not persisted: %s",
			text ? store_errmsg(c->store) : "out of memory");
	free(text);
}

static void shelf_save(struct core *c, const char *device, bool shelve, const char *by)
{
	json_t *o = shelf_load(c);

	if (shelve)
		json_object_set_new(o, device,
				    json_pack("{s:s,s:I}", "by", by ? by : "", "ts",
					      (json_int_t)cgw_now_ms()));
	else
		json_object_del(o, device);
	shelf_write(c, o);
	json_decref(o);
}

/* Shelves the devices the store says are, except those a reload carried
 * over (their engine state is the truth); forgets unknown devices. Before
 * the alarms are restored, so nothing is emitted. */
static void shelf_apply(struct core *c)
{
	json_t *o = shelf_load(c), *v;
	const char *key;
	void *tmp;
	bool changed = false;

	json_object_foreach_safe(o, tmp, key, v)
	{
		long dev = cfg_find_device(c->cfg, key);
		if (dev < 0) {
			json_object_del(o, key);
			changed = true;
			continue;
		}
		if (c->devs[dev].adopted)
			continue;
		alarm_shelve(c->alarms, (uint32_t)dev, true,
			     json_string_value(json_object_get(v, "by")),
			     (int64_t)json_integer_value(json_object_get(v, "ts")));
	}
	if (changed)
		shelf_write(c, o);
	json_decref(o);
}

/* Alarms from the store for devices the engine does not know yet. */
static void restore_alarms(struct core *c)
{
	store_alarm_foreach(c->store, restore_one, c);
	/* deleted after the walk, not during it */
	for (size_t i = 0; i < c->n_forget; i++) {
		log_notice("core",
			   "alarm %s: its device or rule is no longer configured; forgotten",
			   c->forget[i]);
		store_alarm_delete(c->store, c->forget[i]);
		free(c->forget[i]);
	}
	free(c->forget);
	c->forget = NULL;
	c->n_forget = 0;
}

static int open_uplink(struct core *c, size_t i)
{
	const struct cfg_uplink *u = &c->cfg->uplinks[i];
	struct uplink_env env = {.loop = c->loop,
				 .store = c->store,
				 .cfg = c->cfg,
				 .on_command = on_uplink_command,
				 .on_connect = on_uplink_connect,
				 .arg = c};
	int r;

	r = store_uplink_register(c->store, u->name, u->send_mask, &c->uplink_rt[i].store_id);
	if (r < 0) {
		log_err("core", "store: uplink %s: %s", u->name, store_errmsg(c->store));
		return r;
	}
	c->uplink_ops[i] = uplink_ops_for(u->type);
	clock_gettime(CLOCK_REALTIME, &c->uplink_rt[i].opened);
	r = c->uplink_ops[i]->open(&env, u, c->uplink_rt[i].store_id, &c->uplinks[i]);
	if (r < 0) {
		log_err("core", "uplink %s: %s", u->name, strerror(-r));
		c->uplinks[i] = NULL;
		return r;
	}
	c->uplink_rt[i].gen = c->gens;
	c->gens->users++;
	return 0;
}

static void open_bus(struct core *c, size_t b)
{
	struct driver_env denv = {.cfg = c->cfg,
				  .bus = b,
				  .queue = c->queue,
				  .loop = c->loop,
				  .store = c->store,
				  .deliver = core_deliver,
				  .settle = core_settle,
				  .core = c->gens};
	int r;

	c->bus_rt[b].gen = c->gens;
	c->bus_rt[b].bus = b;
	clock_gettime(CLOCK_REALTIME, &c->bus_rt[b].opened);
	for (size_t i = 0; i < c->cfg->n_devices; i++)
		if (c->cfg->devices[i].bus == b)
			c->devs[i].local = (uint32_t)i;
	if (!c->cfg->buses[b].n_devices)
		return;
	r = driver_ops_for(&c->cfg->buses[b])->open(&denv, &c->drivers[b]);
	if (r < 0) {
		/* a bus that cannot start (port missing) must not take the
		 * others down; the driver retries by itself where it can */
		log_err("core", "bus %s: %s", c->cfg->buses[b].name, strerror(-r));
		c->drivers[b] = NULL;
		return;
	}
	c->gens->users++;
}

/* Per-bus, per-uplink and per-device arrays for cfg, all empty. */
struct rt_arrays {
	struct driver **drivers;
	struct bus_rt *bus_rt;
	struct uplink **uplinks;
	const struct uplink_ops **uplink_ops;
	struct uplink_rt *uplink_rt;
	struct dev_rt *devs;
};

static int rt_alloc(const struct cgw_config *cfg, struct rt_arrays *a)
{
	size_t nb = cfg->n_buses + 1, nu = cfg->n_uplinks + 1, nd = cfg->n_devices + 1;

	a->drivers = calloc(nb, sizeof(*a->drivers));
	a->bus_rt = calloc(nb, sizeof(*a->bus_rt));
	a->uplinks = calloc(nu, sizeof(*a->uplinks));
	a->uplink_ops = calloc(nu, sizeof(*a->uplink_ops));
	a->uplink_rt = calloc(nu, sizeof(*a->uplink_rt));
	a->devs = calloc(nd, sizeof(*a->devs));
	if (!a->drivers || !a->bus_rt || !a->uplinks || !a->uplink_ops || !a->uplink_rt || !a->devs)
		return -ENOMEM;
	for (size_t i = 0; i < nd; i++)
		a->devs[i].online = -1;
	return 0;
}

static void rt_free(struct rt_arrays *a)
{
	free(a->drivers);
	free(a->bus_rt);
	free(a->uplinks);
	free(a->uplink_ops);
	free(a->uplink_rt);
	free(a->devs);
	memset(a, 0, sizeof(*a));
}

static void rt_install(struct core *c, struct rt_arrays *a)
{
	struct rt_arrays old = {c->drivers,    c->bus_rt,    c->uplinks,
				c->uplink_ops, c->uplink_rt, c->devs};

	c->drivers = a->drivers;
	c->bus_rt = a->bus_rt;
	c->uplinks = a->uplinks;
	c->uplink_ops = a->uplink_ops;
	c->uplink_rt = a->uplink_rt;
	c->devs = a->devs;
	c->n_uplinks = c->cfg->n_uplinks;
	rt_free(&old);
	memset(a, 0, sizeof(*a));
}

static void stop_components(struct core *c)
{
	/* drivers first: nothing new arrives; then what they queued is handled */
	for (size_t i = 0; c->drivers && i < c->cfg->n_buses; i++)
		close_bus(c, i);
	drain_all(c);
	for (size_t i = 0; i < c->n_uplinks; i++)
		close_uplink(c, i);
	for (size_t i = 0; i < MAX_PENDING_WRITES; i++)
		if (c->writes[i].token)
			fail_write(c, &c->writes[i], c->cfg->devices[c->writes[i].device].id,
				   "the daemon stopped before the device answered");
	for (size_t i = 0; i < MAX_PENDING_COMMISSIONS; i++)
		fail_commission(&c->comms[i], "the daemon stopped before the bus answered");
	alarm_engine_free(c->alarms);
	c->alarms = NULL;
	if (c->store && c->gather)
		flush_telemetry(c, true, true); /* a cycle cut short goes out as it is */
	gather_free(c->gather);
	c->gather = NULL;
	free(c->tele_due);
	c->tele_due = NULL;
	loop_timer_at(c->tele_timer, -1);
	close_store(c);
}

/* Start: everything on the configuration of c->gens (c->cfg). */
static int start_components(struct core *c)
{
	const struct cgw_config *cfg = c->cfg;
	struct rt_arrays a = {0};
	int r;

	r = open_store(c, cfg);
	if (r < 0)
		return r;
	r = rt_alloc(cfg, &a);
	if (r < 0) {
		rt_free(&a);
		return r;
	}
	rt_install(c, &a);
	c->tele_due = calloc(cfg->n_devices ? cfg->n_devices : 1, sizeof(*c->tele_due));
	if (!c->tele_due || gather_new(cfg->n_devices, &c->gather) < 0) {
		log_err("core", "telemetry: out of memory");
		return -ENOMEM;
	}
	r = alarm_engine_new(cfg, on_alarm, c, &c->alarms);
	if (r < 0) {
		log_err("core", "alarm engine: %s", strerror(-r));
		return r;
	}
	alarm_engine_set_flood_cb(c->alarms, on_flood);
	shelf_apply(c);
	restore_alarms(c);

	/* uplinks: register every configured one, forget the others */
	for (size_t i = 0; i < cfg->n_uplinks; i++) {
		r = open_uplink(c, i);
		if (r < 0)
			return r;
	}
	store_uplink_prune(c->store);
	for (size_t i = 0; i < cfg->n_buses; i++)
		open_bus(c, i);
	loop_timer_in(c->maint_timer, MAINTAIN_MS);
	arm_alarm_timer(c);
	return 0;
}

int core_new(struct cgw_config *cfg, struct loop *l, struct core **out)
{
	struct core *c = calloc(1, sizeof(*c));
	int r;

	*out = NULL;
	if (!c) {
		config_free(cfg);
		return -ENOMEM;
	}
	c->loop = l;
	c->lock_fd = -1;
	c->started_ms = cgw_mono_ms();
	struct gen *g;
	r = gen_new(c, &g);
	if (r < 0) {
		config_free(cfg);
		free(c);
		return r;
	}
	gen_push(c, g, cfg);
	c->flush_timer = loop_timer_new(l, on_flush_timer, c);
	c->maint_timer = loop_timer_new(l, on_maint_timer, c);
	c->alarm_timer = loop_timer_new(l, on_alarm_timer, c);
	c->tele_timer = loop_timer_new(l, on_tele_timer, c);
	c->drain_timer = loop_timer_new(l, on_drain_timer, c);
	if (!c->flush_timer || !c->maint_timer || !c->alarm_timer || !c->tele_timer ||
	    !c->drain_timer) {
		core_free(c);
		return -ENOMEM;
	}
	r = start_components(c);
	if (r < 0) {
		core_free(c);
		return r;
	}
	*out = c;
	return 0;
}

void core_free(struct core *c)
{
	struct rt_arrays none = {0};

	if (!c)
		return;
	stop_components(c);
	rt_install(c, &none);
	loop_timer_free(c->flush_timer);
	loop_timer_free(c->maint_timer);
	loop_timer_free(c->alarm_timer);
	loop_timer_free(c->tele_timer);
	loop_timer_free(c->drain_timer);
	while (c->gens) {
		struct gen *g = c->gens;
		c->gens = g->next;
		gen_free(c, g);
	}
	free(c);
}

static long find_bus(const struct cgw_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_buses; i++)
		if (!strcmp(cfg->buses[i].name, name))
			return (long)i;
	return -1;
}

static long find_uplink(const struct cgw_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_uplinks; i++)
		if (!strcmp(cfg->uplinks[i].name, name))
			return (long)i;
	return -1;
}

static void persist_one(void *arg, const struct alarm_change *ch)
{
	struct core *c = arg;
	struct store_alarm sa = stored_alarm(ch, ch->device_id);
	store_alarm_put(c->store, &sa);
}

/* Ends the alarms the new configuration no longer has: of removed devices,
 * and of rules gone from a device's profile. On the old engine and
 * configuration, before the swap. */
static void retire_alarms(struct core *c, const struct cgw_config *nc)
{
	const struct cgw_config *oc = c->cfg;
	int64_t now = cgw_now_ms();

	for (size_t i = 0; i < oc->n_devices; i++) {
		const struct cfg_device *d = &oc->devices[i];
		const struct cfg_profile *op = cfg_device_profile(oc, d);
		long n = cfg_find_device(nc, d->id);

		if (n < 0) {
			alarm_retire(c->alarms, (uint32_t)i, NULL,
				     "the device was removed from the configuration", now);
			continue;
		}
		const struct cfg_profile *np = cfg_device_profile(nc, &nc->devices[n]);
		if (cfg_profile_equal(op, np))
			continue;
		for (size_t k = 0; k < op->n_alarms; k++) {
			bool kept = false;
			for (size_t m = 0; m < np->n_alarms && !kept; m++)
				kept = !strcmp(op->alarms[k].name, np->alarms[m].name);
			if (!kept)
				alarm_retire(c->alarms, (uint32_t)i, op->alarms[k].name,
					     "the rule was removed from the device's profile", now);
		}
	}
}

int core_reload(struct core *c, struct cgw_config *nc)
{
	struct cgw_config *oc = c->cfg;
	struct alarm_engine *ne = NULL, *oe = c->alarms;
	struct rt_arrays a = {0};
	struct gen *ng = NULL;
	struct gather *ngather = NULL;
	uint32_t *ntele_due = NULL;
	uint32_t *cur_map = NULL; /* the running generation's, to be */
	json_t *shelf = NULL;
	uint32_t *omap = NULL;                  /* old device -> new, DEV_NONE */
	long *bus_from = NULL, *up_from = NULL; /* new bus/uplink kept from old index, or -1 */
	bool store_moves = cfg_store_differs(oc, nc);
	size_t kept_buses = 0, kept_uplinks = 0;
	int r;

	/* 1. everything that can fail, before anything changes */
	r = alarm_engine_new(nc, on_alarm, c, &ne);
	if (r < 0) {
		log_err("core", "alarm engine: %s", strerror(-r));
		goto fail;
	}
	alarm_engine_set_flood_cb(ne, on_flood);
	omap = malloc((oc->n_devices + 1) * sizeof(*omap));
	bus_from = malloc((nc->n_buses + 1) * sizeof(*bus_from));
	up_from = malloc((nc->n_uplinks + 1) * sizeof(*up_from));
	cur_map = malloc((oc->n_devices + 1) * sizeof(*cur_map));
	r = -ENOMEM;
	ntele_due = calloc(nc->n_devices ? nc->n_devices : 1, sizeof(*ntele_due));
	if (!omap || !bus_from || !up_from || !cur_map || !ntele_due || rt_alloc(nc, &a) < 0 ||
	    gather_new(nc->n_devices, &ngather) < 0)
		goto fail;
	r = gen_new(c, &ng);
	if (r < 0)
		goto fail;
	for (size_t i = 0; i < oc->n_devices; i++)
		cur_map[i] = (uint32_t)i;

	/* 2. what stays: equal, running, and (the store staying) files unchanged */
	for (size_t b = 0; b < nc->n_buses; b++) {
		long o = find_bus(oc, nc->buses[b].name);
		bus_from[b] = -1;
		if (!store_moves && o >= 0 && c->drivers[o] &&
		    cfg_bus_equal(c->bus_rt[o].gen->cfg, c->bus_rt[o].bus, nc, b) &&
		    !cfg_bus_files_changed_since(&nc->buses[b], &c->bus_rt[o].opened))
			bus_from[b] = o;
	}
	for (size_t i = 0; i < nc->n_uplinks; i++) {
		long o = find_uplink(oc, nc->uplinks[i].name);
		up_from[i] = -1;
		if (!store_moves && o >= 0 && c->uplinks[o] &&
		    cfg_uplink_equal(oc, &oc->uplinks[o], nc, &nc->uplinks[i]) &&
		    !cfg_uplink_files_changed_since(&nc->uplinks[i], &c->uplink_rt[o].opened))
			up_from[i] = o;
	}

	/* 3. stop what goes: drivers, then what they queued is handled on the
	 * old configuration, then uplinks */
	for (size_t o = 0; o < oc->n_buses; o++) {
		bool kept = false;
		for (size_t b = 0; b < nc->n_buses && !kept; b++)
			kept = bus_from[b] == (long)o;
		if (!kept)
			close_bus(c, o);
	}
	drain_all(c);
	for (size_t o = 0; o < c->n_uplinks; o++) {
		bool kept = false;
		for (size_t i = 0; i < nc->n_uplinks && !kept; i++)
			kept = up_from[i] == (long)o;
		if (!kept)
			close_uplink(c, o);
		if (find_uplink(nc, oc->uplinks[o].name) < 0 &&
		    store_uplink_remove(c->store, oc->uplinks[o].name) < 0)
			log_err("core", "store: uplink %s: %s", oc->uplinks[o].name,
				store_errmsg(c->store));
	}
	retire_alarms(c, nc);

	/* 4. alarm state and device state carried over device by device */
	for (size_t i = 0; i < oc->n_devices; i++) {
		const struct cfg_device *d = &oc->devices[i];
		long n = cfg_find_device(nc, d->id);
		omap[i] = DEV_NONE;
		if (n < 0 || !cfg_profile_equal(cfg_device_profile(oc, d),
						cfg_device_profile(nc, &nc->devices[n])))
			continue;
		if (alarm_adopt_device(ne, (uint32_t)n, oe, (uint32_t)i) < 0)
			continue;
		omap[i] = (uint32_t)n;
		a.devs[n].adopted = true;
		/* an unchanged device keeps its state and `since`, even when a
		 * sibling's change restarts its bus */
		if (cfg_device_equal(oc, d, nc, &nc->devices[n])) {
			a.devs[n].online = c->devs[i].online;
			a.devs[n].since_ms = c->devs[i].since_ms;
		}
	}
	alarm_adopt_flood(ne, oe);
	for (size_t i = 0; i < MAX_PENDING_WRITES; i++) {
		struct pending_write *pw = &c->writes[i];
		if (!pw->token)
			continue;
		if (omap[pw->device] == DEV_NONE)
			fail_write(c, pw, oc->devices[pw->device].id,
				   "the device was removed before it answered (reload)");
		else
			pw->device = omap[pw->device];
	}
	/* telemetry gathered so far goes out on the old indexes: a cycle a
	 * kept driver is in the middle of is sent in two messages, once */
	flush_telemetry(c, true, true);
	gather_free(c->gather);
	free(c->tele_due);
	c->gather = ngather;
	c->tele_due = ntele_due;
	ngather = NULL;
	ntele_due = NULL;

	/* 5. the swap: items already queued by kept drivers, and all they send
	 * later, arrive with indexes of the configuration they were opened on */
	for (struct gen *g = c->gens; g; g = g->next) {
		if (!g->map) { /* the running configuration until now */
			g->map = cur_map;
			cur_map = NULL;
		}
		for (size_t i = 0; i < g->cfg->n_devices; i++)
			g->map[i] = g->map[i] == DEV_NONE ? DEV_NONE : omap[g->map[i]];
	}
	gen_push(c, ng, nc);
	ng = NULL;
	c->alarms = ne;
	ne = NULL;
	if (store_moves) {
		/* nothing runs on the store now: move, taking what is not in the
		 * outbox along (alarm states, shelving) */
		shelf = shelf_load(c);
		close_store(c);
		r = open_store(c, nc);
		if (r < 0) {
			log_err("core", "the new store settings could not be applied; the store "
					"stays where it was");
			close_store(c);
			open_store(c, oc);
		}
		shelf_write(c, shelf);
		json_decref(shelf);
		alarm_foreach(c->alarms, persist_one, c);
	}
	for (size_t b = 0; b < nc->n_buses; b++) {
		long o = bus_from[b];
		if (o < 0)
			continue;
		a.drivers[b] = c->drivers[o];
		a.bus_rt[b] = c->bus_rt[o];
		c->drivers[o] = NULL;
		kept_buses++;
		for (size_t i = 0; i < oc->n_devices; i++)
			if (oc->devices[i].bus == (size_t)o && omap[i] != DEV_NONE)
				a.devs[omap[i]].local = c->devs[i].local;
	}
	for (size_t i = 0; i < nc->n_uplinks; i++) {
		long o = up_from[i];
		if (o < 0)
			continue;
		a.uplinks[i] = c->uplinks[o];
		a.uplink_ops[i] = c->uplink_ops[o];
		a.uplink_rt[i] = c->uplink_rt[o];
		c->uplinks[o] = NULL;
		kept_uplinks++;
	}
	rt_install(c, &a);
	alarm_engine_free(oe);

	/* 6. the new engine learns what a reload did not carry over */
	shelf_apply(c);
	restore_alarms(c);

	/* 7. start what is new or changed */
	for (size_t i = 0; i < nc->n_uplinks; i++)
		if (up_from[i] < 0)
			open_uplink(c, i);
	for (size_t b = 0; b < nc->n_buses; b++)
		if (bus_from[b] < 0)
			open_bus(c, b);
	if (store_moves)
		store_uplink_prune(c->store);
	gens_prune(c);
	log_notice("core",
		   "reload: %zu of %zu buses and %zu of %zu uplinks kept running, the rest "
		   "(re)started%s",
		   kept_buses, nc->n_buses, kept_uplinks, nc->n_uplinks,
		   store_moves ? "; the store was reopened" : "");
	free(omap);
	free(bus_from);
	free(up_from);
	arm_alarm_timer(c);
	arm_flush(c);
	kick_uplinks(c);
	return 0;

fail:
	alarm_engine_free(ne);
	gather_free(ngather);
	free(ntele_due);
	gen_free(c, ng);
	free(cur_map);
	rt_free(&a);
	free(omap);
	free(bus_from);
	free(up_from);
	config_free(nc);
	return r;
}

const struct cgw_config *core_config(const struct core *c)
{
	return c->cfg;
}

bool core_healthy(const struct core *c)
{
	return c->store && c->store_ok && store_state(c->store) < STORE_DISK_FULL;
}

void core_status_line(const struct core *c, char *buf, size_t len)
{
	size_t up = 0;
	uint64_t depth = 0;
	struct store_stats st;

	for (size_t i = 0; i < c->n_uplinks; i++) {
		struct uplink_status us;
		if (!c->uplinks[i])
			continue;
		c->uplink_ops[i]->status(c->uplinks[i], &us);
		up += us.connected;
	}
	if (c->store && store_stats(c->store, &st) == 0)
		for (size_t i = 0; i < st.n_uplinks; i++)
			for (int l = 0; l < CGW_LANE_COUNT; l++)
				depth += st.uplink[i].lane[l].depth;
	snprintf(buf, len,
		 "%zu devices on %zu buses; %zu active alarms; outbox %llu; uplinks %zu/%zu up%s%s",
		 c->cfg->n_devices, c->cfg->n_buses,
		 c->alarms ? alarm_active_count(c->alarms, -1) : 0, (unsigned long long)depth, up,
		 c->n_uplinks, c->store ? "; store " : "",
		 c->store ? store_state_name(store_state(c->store)) : "");
}

/* ---- introspection ------------------------------------------------------------------ */

static json_t *lanes_json(const struct store_uplink_stats *u, int64_t now)
{
	json_t *o = json_object();
	for (int l = 0; l < CGW_LANE_COUNT; l++)
		json_object_set_new(
			o, cgw_lane_name(l),
			json_pack("{s:I,s:f}", "depth", (json_int_t)u->lane[l].depth,
				  "oldest_age_s",
				  u->lane[l].oldest_ts_ms < 0 ?
					  0.0 :
					  (double)(now - u->lane[l].oldest_ts_ms) / 1000.0));
	return o;
}

json_t *core_queue_json(struct core *c)
{
	struct store_stats st;
	json_t *arr = json_array();
	int64_t now = cgw_now_ms();

	if (!c->store || store_stats(c->store, &st) < 0)
		return arr;
	for (size_t i = 0; i < st.n_uplinks; i++)
		json_array_append_new(arr, json_pack("{s:s,s:o}", "uplink", st.uplink[i].name,
						     "lanes", lanes_json(&st.uplink[i], now)));
	return arr;
}

static void alarm_to_json(void *arg, const struct alarm_change *ch)
{
	json_t *arr = arg;
	json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:s,s:s,s:b,s:I,s:s}", "alarm_id",
					     ch->alarm_id, "device", ch->device_id, "alarm",
					     ch->rule_name, "state",
					     ch->shelved ? "shelved" : alarm_state_name(ch->state),
					     "severity", cfg_severity_name(ch->severity), "latched",
					     ch->latched, "raised_at", (json_int_t)ch->raised_at_ms,
					     "message", ch->message ? ch->message : ""));
}

json_t *core_alarms_json(struct core *c)
{
	json_t *arr = json_array();
	if (c->alarms)
		alarm_foreach(c->alarms, alarm_to_json, arr);
	return arr;
}

json_t *core_devices_json(struct core *c)
{
	json_t *arr = json_array();
	const struct cgw_config *cfg = c->cfg;

	for (size_t b = 0; b < cfg->n_buses; b++) {
		struct driver_stats ds = {0};
		const struct driver_ops *ops = driver_ops_for(&cfg->buses[b]);
		bool have = c->drivers && c->drivers[b] && ops->status &&
			    ops->status(c->drivers[b], &ds) == 0;
		for (size_t i = 0; i < cfg->n_devices; i++) {
			const struct cfg_device *d = &cfg->devices[i];
			const struct driver_dev_stats *s = NULL;
			if (d->bus != b)
				continue;
			for (size_t k = 0; have && k < ds.n_devices; k++)
				if (ds.devices[k].device == c->devs[i].local)
					s = &ds.devices[k];
			json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:b}", "id", d->id, "name", d->name,
					      "bus", cfg->buses[b].name, "profile",
					      cfg_device_profile(cfg, d)->name, "shelved",
					      c->alarms &&
						      alarm_device_shelved(c->alarms, (uint32_t)i));
			if (s) {
				json_object_set_new(o, "state",
						    json_string(s->online ? "online" : "offline"));
				json_object_set_new(o, "last_ok", json_integer(s->last_ok_ms));
				if (ds.line_us) {
					json_object_set_new(
						o, "line_ms",
						json_integer((json_int_t)(s->line_us / 1000)));
					json_object_set_new(
						o, "line_share",
						json_real((double)s->line_us / (double)ds.line_us));
				}
				json_object_set_new(
					o, "counters",
					json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f}",
						  "requests", (json_int_t)s->requests, "timeouts",
						  (json_int_t)s->timeouts, "exceptions",
						  (json_int_t)s->exceptions, "crc_errors",
						  (json_int_t)s->crc_errors, "conn_errors",
						  (json_int_t)s->conn_errors, "bad_payloads",
						  (json_int_t)s->bad_payloads, "polls_due",
						  (json_int_t)s->polls_due, "polls_done",
						  (json_int_t)s->polls_done, "rtt_ms_avg",
						  s->rtt_ms_avg));
				if (s->last_error[0])
					json_object_set_new(o, "last_error",
							    json_string(s->last_error));
			} else {
				json_object_set_new(o, "state", json_string("unknown"));
			}
			json_array_append_new(arr, o);
		}
		free(ds.devices);
	}
	return arr;
}

void core_set_console(struct core *c, const char *url, const char *fingerprint)
{
	snprintf(c->console_url, sizeof(c->console_url), "%s", url ? url : "");
	snprintf(c->console_fp, sizeof(c->console_fp), "%s", fingerprint ? fingerprint : "");
}

json_t *core_status_json(struct core *c)
{
	const struct cgw_config *cfg = c->cfg;
	struct store_stats st;
	char hash[17];
	json_t *o, *buses = json_array(), *ups = json_array(), *sev = json_object();

	snprintf(hash, sizeof(hash), "%016llx", (unsigned long long)cfg->hash);
	o = json_pack("{s:s,s:s,s:f,s:s,s:s,s:b}", "gateway", cfg->gateway.id, "site",
		      cfg->gateway.site, "uptime_s",
		      (double)(cgw_mono_ms() - c->started_ms) / 1000.0, "config", cfg->path,
		      "config_hash", hash, "healthy", core_healthy(c));
	if (o && c->console_url[0])
		json_object_set_new(o, "console",
				    json_pack("{s:s,s:s?}", "url", c->console_url, "tls_sha256",
					      c->console_fp[0] ? c->console_fp : NULL));
	for (size_t b = 0; b < cfg->n_buses; b++) {
		struct driver_stats ds = {0};
		const struct driver_ops *ops = driver_ops_for(&cfg->buses[b]);
		json_t *bo = json_pack("{s:s,s:s,s:I}", "name", cfg->buses[b].name, "type",
				       cfg_bus_type_name(&cfg->buses[b]), "devices",
				       (json_int_t)cfg->buses[b].n_devices);
		if (c->drivers && c->drivers[b] && ops->status &&
		    ops->status(c->drivers[b], &ds) == 0) {
			size_t online = 0;
			for (size_t k = 0; k < ds.n_devices; k++)
				online += ds.devices[k].online;
			json_object_set_new(bo, "connected", json_boolean(ds.connected));
			json_object_set_new(bo, "online", json_integer((json_int_t)online));
			json_object_set_new(bo, "requests", json_integer((json_int_t)ds.requests));
			json_object_set_new(bo, "errors", json_integer((json_int_t)ds.errors));
			if (ds.elapsed_us) {
				json_object_set_new(
					bo, "line_utilisation",
					json_real((double)ds.line_us / (double)ds.elapsed_us));
				json_object_set_new(bo, "line_busy_ms",
						    json_integer((json_int_t)(ds.line_us / 1000)));
				json_object_set_new(bo, "cycle_ms", json_integer(ds.cycle_ms));
				json_object_set_new(bo, "schedule_ms",
						    json_integer(ds.schedule_ms));
				json_object_set_new(bo, "foreign_answers",
						    json_integer((json_int_t)ds.foreign_answers));
				json_object_set_new(bo, "stale_bytes",
						    json_integer((json_int_t)ds.stale_bytes));
			}
			if (ds.last_error[0])
				json_object_set_new(bo, "last_error", json_string(ds.last_error));
			free(ds.devices);
		} else {
			json_object_set_new(bo, "connected", json_false());
			json_object_set_new(bo, "running",
					    json_boolean(c->drivers && c->drivers[b]));
		}
		json_array_append_new(buses, bo);
	}
	json_object_set_new(o, "buses", buses);
	for (size_t i = 0; i < c->n_uplinks; i++) {
		struct uplink_status us;
		if (!c->uplinks[i])
			continue;
		c->uplink_ops[i]->status(c->uplinks[i], &us);
		json_t *uo = json_pack("{s:s,s:s,s:b,s:I,s:I,s:I}", "name", us.name, "type",
				       us.type, "connected", us.connected, "since",
				       (json_int_t)us.since_ms, "sent", (json_int_t)us.sent,
				       "acked", (json_int_t)us.acked);
		json_object_set_new(uo, "retried", json_integer((json_int_t)us.retried));
		json_object_set_new(uo, "refused", json_integer((json_int_t)us.refused));
		json_object_set_new(uo, "dead_lettered", json_integer((json_int_t)us.rejected));
		if (us.last_error[0])
			json_object_set_new(uo, "last_error", json_string(us.last_error));
		json_array_append_new(ups, uo);
	}
	json_object_set_new(o, "uplinks", ups);
	json_object_set_new(o, "outbox", core_queue_json(c));
	if (c->store && store_stats(c->store, &st) == 0) {
		json_t *so = json_pack(
			"{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "state",
			store_state_name(st.state), "db_bytes", (json_int_t)st.db_bytes,
			"wal_bytes", (json_int_t)st.wal_bytes, "shm_bytes",
			(json_int_t)st.shm_bytes, "max_size", (json_int_t)st.max_size,
			"evicted_telemetry", (json_int_t)st.evicted[CGW_LANE_TELEMETRY],
			"evicted_events", (json_int_t)st.evicted[CGW_LANE_EVENT], "dead_letters",
			(json_int_t)st.dead_letters, "fs_free_bytes", (json_int_t)st.fs_free_bytes);
		json_object_update_new(
			so, json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f}", "min_free",
				      (json_int_t)st.min_free, "reserve_bytes",
				      (json_int_t)st.reserve_bytes, "reserve_size",
				      (json_int_t)st.reserve_size, "alarms_in_memory",
				      (json_int_t)st.alarms_in_memory, "alarms_in_memory_total",
				      (json_int_t)st.alarms_in_memory_total, "acks_held",
				      (json_int_t)st.acks_held, "lost_telemetry",
				      (json_int_t)st.lost[CGW_LANE_TELEMETRY], "lost_events",
				      (json_int_t)st.lost[CGW_LANE_EVENT], "disk_full_episodes",
				      (json_int_t)st.disk_full_episodes, "checkpoint_max_ms",
				      (double)st.ckpt_max_us / 1000.0));
		json_object_set_new(o, "store", so);
	}
	for (int s = 0; s < 4; s++)
		json_object_set_new(
			sev, cfg_severity_name(s),
			json_integer(c->alarms ? (json_int_t)alarm_active_count(c->alarms, s) : 0));
	json_object_set_new(o, "alarms_active", sev);
	json_object_set_new(o, "alarm_flood",
			    json_boolean(c->alarms && alarm_flood_active(c->alarms)));
	if (c->queue) {
		struct queue_stats qs;
		core_queue_stats(c, &qs);
		json_object_set_new(o, "queue",
				    json_pack("{s:I,s:I,s:I,s:I}", "depth", (json_int_t)qs.depth,
					      "high_water", (json_int_t)qs.high_water, "capacity",
					      (json_int_t)qs.capacity, "full_episodes",
					      (json_int_t)qs.full_episodes));
	}
	{
		json_t *cmds = json_object();
		for (int k = 0; k < CMD_N; k++)
			json_object_set_new(cmds, cmd_outcome_names[k],
					    json_integer((json_int_t)c->cmd_count[k]));
		json_object_set_new(o, "commands", cmds);
	}
	json_object_set_new(o, "readings", json_integer((json_int_t)c->readings));
	json_object_set_new(o, "values_invalid", json_integer((json_int_t)c->values_invalid));
	json_object_set_new(o, "values_out_of_range",
			    json_integer((json_int_t)c->values_out_of_range));
	json_object_set_new(o, "messages", json_integer((json_int_t)c->messages));
	return o;
}

int core_shelve(struct core *c, const char *device, bool shelve, const char *by)
{
	long dev = cfg_find_device(c->cfg, device);
	int r;

	if (dev < 0)
		return -ENOENT;
	r = alarm_shelve(c->alarms, (uint32_t)dev, shelve, by, cgw_now_ms());
	if (r == 0)
		shelf_save(c, c->cfg->devices[dev].id, shelve, by);
	kick_uplinks(c);
	return r;
}

/* `--check-config -v`: what each bus's driver will do (its type says). */
void core_print_plan(const struct cgw_config *cfg, FILE *f)
{
	for (size_t b = 0; b < cfg->n_buses; b++) {
		const struct cfg_bus_type *kind = cfg->buses[b].kind;
		if (kind && kind->print_plan)
			kind->print_plan(cfg, b, f);
	}
}

/* ---- dead letters ---- */

int core_dead_letter_replay(struct core *c, int64_t id, uint64_t *replayed, uint64_t *skipped)
{
	int r;

	*replayed = *skipped = 0;
	if (!c->store)
		return -ENODEV;
	r = store_dead_letter_replay(c->store, id, replayed, skipped);
	if (r < 0)
		return r;
	if (id > 0 && !*replayed)
		return *skipped ? -ENODEV : -ENOENT;
	if (*replayed) {
		log_notice("core", "%llu dead letter%s sent again%s", (unsigned long long)*replayed,
			   *replayed == 1 ? "" : "s",
			   *skipped ? " (some stay: their uplink is gone)" : "");
		kick_uplinks(c);
	}
	return 0;
}

void core_set_alarm_observer(struct core *c, core_alarm_observer_fn fn, void *arg)
{
	c->observer = fn;
	c->observer_arg = arg;
}

struct store *core_store(struct core *c)
{
	return c->store;
}

json_t *core_uplinks_json(struct core *c)
{
	json_t *ups = json_array();

	for (size_t i = 0; i < c->n_uplinks; i++) {
		struct uplink_status us;
		if (!c->uplinks[i])
			continue;
		c->uplink_ops[i]->status(c->uplinks[i], &us);
		json_array_append_new(ups,
				      json_pack("{s:s,s:b,s:I}", "name", us.name, "connected",
						us.connected, "since", (json_int_t)us.since_ms));
	}
	return ups;
}
