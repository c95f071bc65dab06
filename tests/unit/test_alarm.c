/* Unit tests of the alarm engine: rule forms, delays, states, suppression,
 * restore, messages and JSON. A fake clock: every call gets its times. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "alarm.h"
#include "config.h"
#include "wire.h"

#define W0 1700000000000LL /* wall = W0 + mono in these tests */

/* the test profile "tp" (class security): point and rule indexes */
enum { P_TEMP, P_PRESS, P_STATUS, P_FLAG, P_WORD, P_DOOR, P_LOCK, P_COUNT };
enum { R_HOT, R_LOW, R_ST_ALARM, R_ST_NOTNORMAL, R_FLAG, R_BIT3, R_FORCED, R_LATCHED };
/* "fp" (class fire) */
enum { FP_SMOKE, FP_TEMP };
enum { FR_SMOKE, FR_HEAT, FR_WARM };
/* devices of the base configuration */
enum { D1, D2, F1, S1 };

static const char TP_YAML[] =
	"profile: tp\n"
	"class: security\n"
	"points:\n"
	"  - {name: temp, topic: s, json: temp, type: number, unit: °C}\n"
	"  - {name: press, topic: s, json: press, type: number, unit: MPa}\n"
	"  - {name: status, topic: s, json: status, type: number, enum: {0: normal, 1: alarm, 2: fault}}\n"
	"  - {name: flag, topic: s, json: flag, type: bool}\n"
	"  - {name: word, topic: s, json: word, type: number}\n"
	"  - {name: door, topic: s, json: door, type: bool}\n"
	"  - {name: lock, topic: s, json: lock, type: number, enum: {0: locked, 1: unlocked}}\n"
	"  - {name: count, topic: s, json: count, type: number}\n"
	"alarms:\n"
	"  - {name: hot, point: temp, above: 57, deadband: 2, severity: critical,\n"
	"     message: '{name} 温度过高 {value}{unit} {location.building}号楼{location.room}'}\n"
	"  - {name: low, point: press, below: 0.15, deadband: 0.02, on_delay: 5s, off_delay: 2s}\n"
	"  - {name: st_alarm, point: status, equals: alarm, message: '{name} {alarm} {value}'}\n"
	"  - {name: st_notnormal, point: status, not_equals: normal, severity: minor}\n"
	"  - {name: flag_on, point: flag, equals: true, severity: warning}\n"
	"  - {name: bit3, point: word, bit: 3, severity: minor}\n"
	"  - name: forced\n"
	"    point: door\n"
	"    equals: true\n"
	"    message: '{name} 门被强行打开'\n"
	"    unless: [{point: lock, equals: unlocked, within: 5s}]\n"
	"  - {name: latched, point: count, equals: 7, latch: true}\n";

static const char FP_YAML[] =
	"profile: fp\n"
	"class: fire\n"
	"points:\n"
	"  - {name: smoke, topic: s, json: smoke, type: bool}\n"
	"  - {name: temp, topic: s, json: temp, type: number, unit: °C}\n"
	"alarms:\n"
	"  - {name: smoke, point: smoke, equals: true, severity: critical, message: '{name} 烟感报警'}\n"
	"  - {name: heat, point: temp, above: 60, on_delay: 3s, severity: critical}\n"
	"  - {name: warm, point: temp, above: 40, severity: minor,\n"
	"     clear_message: '{name} 温度恢复 {value}{unit}'}\n";

struct rec {
	char id[160], event[16], note[160], by[32], msg[ALARM_MESSAGE_MAX], rule[32], val[64];
	int state, severity, rule_idx;
	uint32_t dev;
	bool shelved, suppressed, chattering, critical_fire, flood;
	unsigned chatter_count;
	int64_t ts, raised_at;
	char *json;
};

struct fx {
	char dir[64];
	struct cgw_config *cfg;
	struct alarm_engine *e;
	struct rec r[512];
	size_t n;
	int floods;
	bool flood_on;
	unsigned flood_count;
};

static struct fx F;

static void on_emit(void *arg, const struct alarm_change *c)
{
	struct fx *f = arg;
	struct rec *r;

	assert_true(f->n < sizeof(f->r) / sizeof(f->r[0]));
	r = &f->r[f->n++];
	memset(r, 0, sizeof(*r));
	snprintf(r->id, sizeof(r->id), "%s", c->alarm_id);
	snprintf(r->event, sizeof(r->event), "%s", c->event);
	snprintf(r->note, sizeof(r->note), "%s", c->note ? c->note : "");
	snprintf(r->by, sizeof(r->by), "%s", c->by ? c->by : "");
	snprintf(r->msg, sizeof(r->msg), "%s", c->message);
	snprintf(r->rule, sizeof(r->rule), "%s", c->rule_name);
	alarm_render(f->cfg, c->device, c->rule, "{value}", c->value, r->val, sizeof(r->val));
	r->state = c->state;
	r->severity = c->severity;
	r->rule_idx = c->rule;
	r->dev = c->device;
	r->shelved = c->shelved;
	r->suppressed = c->suppressed;
	r->chattering = c->chattering;
	r->chatter_count = c->chatter_count;
	r->critical_fire = c->critical_fire;
	r->flood = c->flood;
	r->ts = c->ts_ms;
	r->raised_at = c->raised_at_ms;
	assert_string_equal(c->device_id, f->cfg->devices[c->device].id);
	struct wire_msg m;
	assert_int_equal(wire_alarm(f->cfg, c, &m), 0);
	r->json = m.payload;
	assert_non_null(r->json);
}

static void on_flood(void *arg, bool active, unsigned n, int64_t wall)
{
	struct fx *f = arg;

	(void)wall;
	f->floods++;
	f->flood_on = active;
	f->flood_count = n;
}

static void write_file(const char *dir, const char *name, const char *text)
{
	char path[128];
	FILE *fp;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
}

/* Load a configuration with the test profiles and `devices` (YAML list items). */
static struct cgw_config *load_cfg(const char *devices)
{
	struct cfg_errors errs = {0};
	struct cgw_config *cfg = NULL;
	char *text;

	assert_true(asprintf(&text,
			     "gateway: {id: gw, site: s}\n"
			     "profile_dirs: [%s]\n"
			     "buses:\n"
			     "  - {name: mq, type: mqtt, url: 'mqtt://127.0.0.1:1883'}\n"
			     "  - {name: rtu, type: modbus-rtu, device: /dev/null}\n"
			     "devices:\n%s",
			     F.dir, devices) > 0);
	config_load_string("t.yaml", text, strlen(text), &cfg, &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.v[i]);
	cfg_errors_free(&errs);
	free(text);
	assert_non_null(cfg);
	return cfg;
}

static const char BASE_DEVICES[] =
	"  - {id: d1, name: 3号楼3层东侧门, profile: tp, bus: mq, topic: t/d1,\n"
	"     location: {building: '3', floor: '3'}}\n"
	"  - {id: d2, name: 二号设备, profile: tp, bus: mq, topic: t/d2}\n"
	"  - {id: f1, name: 3号楼烟感, profile: fp, bus: mq, topic: t/f1, location: {building: '3'}}\n"
	"  - {id: s1, name: 3号楼3层东侧楼梯间烟感, profile: smoke-detector, bus: rtu, unit: 3,\n"
	"     location: {building: '3', floor: '3', room: 东侧楼梯间}}\n";

static int group_setup(void **state)
{
	(void)state;
	snprintf(F.dir, sizeof(F.dir), "/tmp/cgw-test-alarm-XXXXXX");
	if (!mkdtemp(F.dir))
		return -1;
	write_file(F.dir, "tp.yaml", TP_YAML);
	write_file(F.dir, "fp.yaml", FP_YAML);
	setenv("CGW_PROFILES_DIR", "config/profiles", 1);
	return 0;
}

static int group_teardown(void **state)
{
	char path[128];

	(void)state;
	snprintf(path, sizeof(path), "%s/tp.yaml", F.dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/fp.yaml", F.dir);
	unlink(path);
	rmdir(F.dir);
	return 0;
}

static void reset_records(void)
{
	for (size_t i = 0; i < F.n; i++)
		free(F.r[i].json);
	F.n = 0;
	F.floods = 0;
	F.flood_on = false;
	F.flood_count = 0;
}

static void engine_up(const char *devices)
{
	reset_records();
	F.cfg = load_cfg(devices);
	assert_int_equal(alarm_engine_new(F.cfg, on_emit, &F, &F.e), 0);
	alarm_engine_set_flood_cb(F.e, on_flood);
}

static int setup(void **state)
{
	(void)state;
	engine_up(BASE_DEVICES);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	alarm_engine_free(F.e);
	config_free(F.cfg);
	F.e = NULL;
	F.cfg = NULL;
	reset_records();
	return 0;
}

/* Feeding helpers: t is the monotonic ms; wall = W0 + t. */
static void rd(uint32_t dev, uint32_t pt, struct cgw_value v, enum cgw_quality q, int64_t t)
{
	alarm_on_reading(F.e, dev, pt, &v, q, W0 + t, t);
}

static void num(uint32_t dev, uint32_t pt, double d, int64_t t)
{
	rd(dev, pt, (struct cgw_value){.type = CGW_V_DOUBLE, .d = d}, CGW_Q_GOOD, t);
}

static void uin(uint32_t dev, uint32_t pt, uint64_t u, int64_t t)
{
	rd(dev, pt, (struct cgw_value){.type = CGW_V_UINT, .u = u}, CGW_Q_GOOD, t);
}

static void bol(uint32_t dev, uint32_t pt, bool b, int64_t t)
{
	rd(dev, pt, (struct cgw_value){.type = CGW_V_BOOL, .b = b}, CGW_Q_GOOD, t);
}

static void tick(int64_t t)
{
	alarm_tick(F.e, W0 + t, t);
}

static const struct rec *last(void)
{
	assert_true(F.n > 0);
	return &F.r[F.n - 1];
}

static void check(const struct rec *r, const char *rule, const char *event, int state)
{
	assert_string_equal(r->rule, rule);
	assert_string_equal(r->event, event);
	assert_int_equal(r->state, state);
}

/* ---- rule forms ---------------------------------------------------------------- */

static void test_above_deadband(void **state)
{
	(void)state;
	num(D1, P_TEMP, 57.0, 0); /* not above */
	assert_int_equal(F.n, 0);
	num(D1, P_TEMP, 57.1, 1000);
	assert_int_equal(F.n, 1);
	check(last(), "hot", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(last()->id, "d1/hot/1700000001000");
	assert_int_equal(last()->raised_at, W0 + 1000);
	assert_int_equal(last()->severity, CFG_SEV_CRITICAL);
	assert_false(last()->critical_fire); /* class security */
	num(D1, P_TEMP, 58, 2000);
	num(D1, P_TEMP, 56, 3000); /* inside the deadband: still active */
	num(D1, P_TEMP, 55.01, 4000);
	assert_int_equal(F.n, 1);
	num(D1, P_TEMP, 55.0, 5000); /* clears at <= 57 - 2 */
	assert_int_equal(F.n, 2);
	check(last(), "hot", "cleared", ALARM_CLEARED_UNACKED);
	assert_string_equal(last()->id, "d1/hot/1700000001000");
	assert_string_equal(last()->val, "55");
	assert_int_equal(last()->ts, W0 + 5000);
	/* back above: the same occurrence returns (not acked yet) */
	num(D1, P_TEMP, 56.9, 6000);
	assert_int_equal(F.n, 2);
	num(D1, P_TEMP, 57.5, 7000);
	check(last(), "hot", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(last()->id, "d1/hot/1700000001000");
	/* the other device is independent */
	assert_int_equal(alarm_active_count(F.e, -1), 1);
}

static void test_below_delays(void **state)
{
	(void)state;
	/* below 0.15, deadband 0.02, on_delay 5s, off_delay 2s */
	num(D1, P_PRESS, 0.10, 0);
	assert_int_equal(F.n, 0);
	assert_int_equal(alarm_next_deadline(F.e), 5000);
	tick(4999);
	assert_int_equal(F.n, 0);
	tick(5000);
	assert_int_equal(F.n, 1);
	check(last(), "low", "raised", ALARM_ACTIVE_UNACKED);
	assert_int_equal(last()->raised_at, W0 + 5000);
	assert_string_equal(last()->val, "0.1");
	assert_int_equal(alarm_next_deadline(F.e), -1);
	num(D1, P_PRESS, 0.16, 6000); /* inside the deadband (< 0.17) */
	assert_int_equal(alarm_next_deadline(F.e), -1);
	num(D1, P_PRESS, 0.17, 7000); /* gone: off_delay starts */
	assert_int_equal(alarm_next_deadline(F.e), 9000);
	num(D1, P_PRESS, 0.12, 8000); /* back before off_delay: interrupted */
	assert_int_equal(alarm_next_deadline(F.e), -1);
	tick(9000);
	assert_int_equal(F.n, 1);
	num(D1, P_PRESS, 0.30, 10000);
	tick(11999);
	assert_int_equal(F.n, 1);
	tick(12000);
	assert_int_equal(F.n, 2);
	check(last(), "low", "cleared", ALARM_CLEARED_UNACKED);
	assert_int_equal(last()->ts, W0 + 12000);
}

static void test_on_delay_interrupted(void **state)
{
	(void)state;
	num(D1, P_PRESS, 0.10, 0);
	num(D1, P_PRESS, 0.14, 2000); /* still true: the delay is not restarted */
	assert_int_equal(alarm_next_deadline(F.e), 5000);
	num(D1, P_PRESS, 0.20, 4000); /* interrupted */
	assert_int_equal(alarm_next_deadline(F.e), -1);
	tick(60000);
	assert_int_equal(F.n, 0);
	/* held again: a fresh delay */
	num(D1, P_PRESS, 0.10, 61000);
	assert_int_equal(alarm_next_deadline(F.e), 66000);
	/* a reading after the deadline, before any tick: raised first, on the old value */
	num(D1, P_PRESS, 0.5, 70000);
	assert_int_equal(F.n, 1);
	check(&F.r[0], "low", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(F.r[0].val, "0.1");
	assert_int_equal(alarm_next_deadline(F.e), 72000); /* and the clear's off_delay runs */
}

static void test_equals_enum(void **state)
{
	(void)state;
	uin(D1, P_STATUS, 0, 0);
	assert_int_equal(F.n, 0);
	uin(D1, P_STATUS, 1, 1000); /* raw 1 = alarm: both rules on status */
	assert_int_equal(F.n, 2);
	check(&F.r[0], "st_alarm", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(F.r[0].val, "alarm");
	assert_string_equal(F.r[0].msg, "3号楼3层东侧门 st_alarm alarm");
	assert_int_equal(F.r[0].severity, CFG_SEV_MAJOR); /* the default */
	check(&F.r[1], "st_notnormal", "raised", ALARM_ACTIVE_UNACKED);
	uin(D1, P_STATUS, 2, 2000); /* fault: alarm clears, not-normal stays */
	assert_int_equal(F.n, 3);
	check(last(), "st_alarm", "cleared", ALARM_CLEARED_UNACKED);
	uin(D1, P_STATUS, 0, 3000);
	assert_int_equal(F.n, 4);
	check(last(), "st_notnormal", "cleared", ALARM_CLEARED_UNACKED);
	/* a raw value with no word: equals no word, so it is "not normal" */
	uin(D1, P_STATUS, 7, 4000);
	assert_int_equal(F.n, 5);
	check(last(), "st_notnormal", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(last()->val, "7");
	/* the word itself (an MQTT payload) compares too; so does a signed raw */
	rd(D2, P_STATUS, (struct cgw_value){.type = CGW_V_STRING, .s = (char *)"alarm"}, CGW_Q_GOOD,
	   5000);
	assert_int_equal(F.n, 7);
	check(&F.r[5], "st_alarm", "raised", ALARM_ACTIVE_UNACKED);
	assert_int_equal(F.r[5].dev, D2);
	rd(D2, P_STATUS, (struct cgw_value){.type = CGW_V_INT, .i = 0}, CGW_Q_GOOD, 6000);
	assert_int_equal(F.n, 9);
}

static void test_bool_and_bit(void **state)
{
	(void)state;
	bol(D1, P_FLAG, false, 0);
	assert_int_equal(F.n, 0);
	bol(D1, P_FLAG, true, 1000);
	check(last(), "flag_on", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(last()->val, "true");
	assert_int_equal(last()->severity, CFG_SEV_WARNING);
	bol(D1, P_FLAG, false, 2000);
	check(last(), "flag_on", "cleared", ALARM_CLEARED_UNACKED);
	assert_int_equal(F.n, 2);

	uin(D1, P_WORD, 7, 3000); /* bits 0-2 */
	assert_int_equal(F.n, 2);
	uin(D1, P_WORD, 8, 4000);
	check(last(), "bit3", "raised", ALARM_ACTIVE_UNACKED);
	uin(D1, P_WORD, 0xF7, 5000);
	check(last(), "bit3", "cleared", ALARM_CLEARED_UNACKED);
	rd(D1, P_WORD, (struct cgw_value){.type = CGW_V_INT, .i = -8}, CGW_Q_GOOD, 6000);
	check(last(), "bit3", "raised", ALARM_ACTIVE_UNACKED); /* two's complement */
	assert_int_equal(F.n, 5);
	num(D1, P_WORD, 8.5, 7000); /* not an integer: ignored */
	assert_int_equal(F.n, 5);
	num(D1, P_WORD, 16.0, 8000); /* an integral double is fine */
	check(last(), "bit3", "cleared", ALARM_CLEARED_UNACKED);
}

static void test_bad_quality_ignored(void **state)
{
	(void)state;
	struct cgw_value hot = {.type = CGW_V_DOUBLE, .d = 80};

	rd(D1, P_TEMP, hot, CGW_Q_BAD, 0);
	rd(D1, P_TEMP, hot, CGW_Q_STALE, 0);
	num(D1, P_TEMP, NAN, 0);
	rd(D1, P_TEMP, (struct cgw_value){.type = CGW_V_STRING, .s = (char *)"80"}, CGW_Q_GOOD, 0);
	rd(D1, P_TEMP, (struct cgw_value){.type = CGW_V_NONE}, CGW_Q_GOOD, 0);
	assert_int_equal(F.n, 0);
	/* a bad reading neither interrupts nor restarts a delay */
	num(D1, P_PRESS, 0.10, 1000);
	rd(D1, P_PRESS, (struct cgw_value){.type = CGW_V_DOUBLE, .d = 0.5}, CGW_Q_BAD, 3000);
	rd(D1, P_PRESS, (struct cgw_value){.type = CGW_V_DOUBLE, .d = 0.1}, CGW_Q_STALE, 4000);
	assert_int_equal(alarm_next_deadline(F.e), 6000);
	tick(6000);
	check(last(), "low", "raised", ALARM_ACTIVE_UNACKED);
	/* nor clears */
	num(D1, P_TEMP, 60, 7000);
	rd(D1, P_TEMP, (struct cgw_value){.type = CGW_V_DOUBLE, .d = 20}, CGW_Q_BAD, 8000);
	assert_int_equal(F.n, 2);
	check(last(), "hot", "raised", ALARM_ACTIVE_UNACKED);
	/* out-of-range indexes are ignored */
	num(99, P_TEMP, 60, 9000);
	num(D1, 99, 60, 9000);
	alarm_on_device_state(F.e, 99, false, W0, 9000);
	assert_int_equal(F.n, 2);
}

/* ---- states ---------------------------------------------------------------------- */

static void test_state_ack_then_clear(void **state)
{
	(void)state;
	num(D1, P_TEMP, 60, 0);
	char id[160];
	snprintf(id, sizeof(id), "%s", last()->id);
	assert_int_equal(alarm_ack(F.e, id, "duty-1", W0 + 100), 0);
	assert_int_equal(F.n, 2);
	check(last(), "hot", "acknowledged", ALARM_ACTIVE_ACKED);
	assert_string_equal(last()->by, "duty-1");
	assert_string_equal(last()->id, id);
	assert_int_equal(last()->ts, W0 + 100);
	assert_int_equal(alarm_ack(F.e, id, "duty-1", W0 + 200), -EALREADY);
	assert_int_equal(F.n, 2);
	num(D1, P_TEMP, 20, 1000);
	check(last(), "hot", "cleared", ALARM_NORMAL);
	assert_string_equal(last()->id, id);
	assert_int_equal(alarm_ack(F.e, id, "duty-1", W0 + 300), -ENOENT);
	assert_int_equal(alarm_ack(F.e, "d1/hot", "duty-1", W0 + 300), -ENOENT);
	assert_int_equal(F.n, 3);
	/* a new occurrence: a new id */
	num(D1, P_TEMP, 60, 2000);
	assert_string_not_equal(last()->id, id);
	assert_string_equal(last()->id, "d1/hot/1700000002000");
	/* an old id does not ack the new occurrence */
	assert_int_equal(alarm_ack(F.e, id, "x", W0 + 2100), -ENOENT);
	/* DEVICE/RULE acks the current one */
	assert_int_equal(alarm_ack(F.e, "d1/hot", "x", W0 + 2100), 0);
	check(last(), "hot", "acknowledged", ALARM_ACTIVE_ACKED);
	assert_int_equal(alarm_ack(F.e, "nodev/hot", "x", 0), -ENOENT);
	assert_int_equal(alarm_ack(F.e, "d1/norule", "x", 0), -ENOENT);
	assert_int_equal(alarm_ack(F.e, "d1", "x", 0), -ENOENT);
	assert_int_equal(alarm_ack(F.e, "", "x", 0), -ENOENT);
}

/* Every event says in words what happened: never the raise text alone. */
static void test_event_texts(void **state)
{
	(void)state;
	bol(F1, FP_SMOKE, true, 0);
	check(last(), "smoke", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(last()->msg, "3号楼烟感 烟感报警");
	assert_int_equal(alarm_ack(F.e, "f1/smoke", "duty", W0 + 1000), 0);
	assert_string_equal(last()->msg, "3号楼烟感 烟感报警 已确认");
	bol(F1, FP_SMOKE, false, 2000);
	check(last(), "smoke", "cleared", ALARM_NORMAL);
	assert_string_equal(last()->msg, "3号楼烟感 烟感报警 已恢复");
	assert_non_null(strstr(last()->json, "\"message\":\"3号楼烟感 烟感报警 已恢复\""));
	/* clear_message, rendered with the value at the clear */
	num(F1, FP_TEMP, 45, 3000);
	check(last(), "warm", "raised", ALARM_ACTIVE_UNACKED);
	num(F1, FP_TEMP, 30, 4000);
	check(last(), "warm", "cleared", ALARM_CLEARED_UNACKED);
	assert_string_equal(last()->msg, "3号楼烟感 温度恢复 30°C");
	/* shelving */
	uin(D2, P_STATUS, 1, 5000); /* st_alarm, then st_notnormal */
	check(&F.r[F.n - 2], "st_alarm", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(F.r[F.n - 2].msg, "二号设备 st_alarm alarm");
	assert_int_equal(alarm_shelve(F.e, D2, true, "duty", W0 + 6000), 0);
	assert_string_equal(F.r[F.n - 2].event, "shelved");
	assert_string_equal(F.r[F.n - 2].msg, "二号设备 st_alarm alarm 已屏蔽");
	assert_int_equal(alarm_shelve(F.e, D2, false, "duty", W0 + 7000), 0);
	assert_string_equal(F.r[F.n - 2].event, "unshelved");
	assert_string_equal(F.r[F.n - 2].msg, "二号设备 st_alarm alarm 已解除屏蔽");
	/* the implicit offline alarm */
	alarm_on_device_state(F.e, D1, false, W0 + 8000, 8000);
	tick(100000);
	check(last(), "offline", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(last()->msg, "3号楼3层东侧门 通信中断");
	alarm_on_device_state(F.e, D1, true, W0 + 200000, 200000);
	check(last(), "offline", "cleared", ALARM_CLEARED_UNACKED);
	assert_string_equal(last()->msg, "3号楼3层东侧门 通信恢复");
}

static void test_state_clear_then_ack(void **state)
{
	(void)state;
	num(D1, P_TEMP, 60, 0);
	num(D1, P_TEMP, 20, 1000);
	check(last(), "hot", "cleared", ALARM_CLEARED_UNACKED);
	assert_int_equal(alarm_active_count(F.e, -1), 0);
	assert_int_equal(alarm_ack(F.e, "d1/hot/1700000000000", "duty", W0 + 2000), 0);
	assert_int_equal(F.n, 3);
	check(last(), "hot", "acknowledged", ALARM_NORMAL);
	assert_string_equal(last()->id, "d1/hot/1700000000000");
	assert_int_equal(alarm_ack(F.e, "d1/hot/1700000000000", "duty", W0 + 2000), -ENOENT);
	/* nothing more happens while normal */
	num(D1, P_TEMP, 20, 3000);
	tick(100000);
	assert_int_equal(F.n, 3);
}

static void test_latch(void **state)
{
	(void)state;
	num(D1, P_COUNT, 7, 0);
	check(last(), "latched", "raised", ALARM_ACTIVE_UNACKED);
	num(D1, P_COUNT, 0, 1000); /* the condition ends: stays active */
	assert_int_equal(F.n, 1);
	assert_int_equal(alarm_active_count(F.e, -1), 1);
	assert_int_equal(alarm_ack(F.e, "d1/latched", "duty", W0 + 2000), 0);
	assert_int_equal(F.n, 2); /* one change: acknowledged, straight to normal */
	check(last(), "latched", "acknowledged", ALARM_NORMAL);
	assert_int_equal(alarm_active_count(F.e, -1), 0);
	/* acked while the condition holds: active-acked, clears when it ends */
	num(D1, P_COUNT, 7, 3000);
	check(last(), "latched", "raised", ALARM_ACTIVE_UNACKED);
	assert_int_equal(alarm_ack(F.e, "d1/latched", "duty", W0 + 4000), 0);
	check(last(), "latched", "acknowledged", ALARM_ACTIVE_ACKED);
	num(D1, P_COUNT, 0, 5000);
	check(last(), "latched", "cleared", ALARM_NORMAL);
	assert_int_equal(F.n, 5);
}

static void test_shelve(void **state)
{
	(void)state;
	num(D1, P_TEMP, 60, 0);
	assert_int_equal(alarm_shelve(F.e, D1, true, "maint", W0 + 1000), 0);
	assert_int_equal(F.n, 2);
	check(last(), "hot", "shelved", ALARM_ACTIVE_UNACKED);
	assert_true(last()->shelved);
	assert_string_equal(last()->by, "maint");
	assert_non_null(strstr(last()->json, "\"state\":\"shelved\""));
	assert_true(alarm_device_shelved(F.e, D1));
	assert_int_equal(alarm_shelve(F.e, D1, true, "maint", W0 + 1000), -EALREADY);
	assert_int_equal(alarm_shelve(F.e, 99, true, "maint", W0 + 1000), -ENOENT);
	/* still evaluated and reported, as shelved */
	uin(D1, P_STATUS, 1, 2000);
	assert_int_equal(F.n, 4);
	check(&F.r[2], "st_alarm", "raised", ALARM_ACTIVE_UNACKED);
	assert_true(F.r[2].shelved);
	assert_false(F.r[2].suppressed);
	/* another device is not shelved */
	num(D2, P_TEMP, 60, 2500);
	assert_false(last()->shelved);
	/* an occurrence that ends is reported normal, not shelved */
	num(D1, P_TEMP, 20, 3000);
	check(last(), "hot", "cleared", ALARM_CLEARED_UNACKED);
	assert_true(last()->shelved);
	assert_int_equal(alarm_ack(F.e, "d1/hot", "duty", W0 + 3100), 0);
	check(last(), "hot", "acknowledged", ALARM_NORMAL);
	assert_false(last()->shelved);
	assert_non_null(strstr(last()->json, "\"state\":\"normal\""));
	size_t before = F.n;
	/* unshelving re-reports every alarm of it that is not normal */
	assert_int_equal(alarm_shelve(F.e, D1, false, "maint", W0 + 4000), 0);
	assert_int_equal(F.n, before + 2);
	for (size_t i = before; i < F.n; i++) {
		assert_string_equal(F.r[i].event, "unshelved");
		assert_false(F.r[i].shelved);
		assert_int_equal(F.r[i].state, ALARM_ACTIVE_UNACKED);
		assert_true(strstr(F.r[i].json, "\"state\":\"active-unacked\"") != NULL);
	}
	assert_false(alarm_device_shelved(F.e, D1));
	assert_int_equal(alarm_shelve(F.e, D1, false, "maint", W0 + 4000), -EALREADY);
}

/* ---- fire, chatter, flood ---------------------------------------------------------- */

static void test_fire_never_suppressed(void **state)
{
	(void)state;
	bol(F1, FP_SMOKE, true, 0);
	assert_int_equal(alarm_shelve(F.e, F1, true, "maint", W0 + 10), 0);
	assert_int_equal(F.n, 1); /* the fire alarm is not shelved */
	bol(F1, FP_SMOKE, false, 1000);
	check(last(), "smoke", "cleared", ALARM_CLEARED_UNACKED);
	assert_false(last()->shelved);
	assert_true(last()->critical_fire);
	assert_non_null(strstr(last()->note, "never suppressed"));
	/* chattering: every toggle still goes out */
	for (int i = 0; i < 20; i++)
		bol(F1, FP_SMOKE, i % 2 == 0, 2000 + i * 500);
	assert_int_equal(F.n, 22);
	for (size_t i = 0; i < F.n; i++) {
		assert_false(F.r[i].suppressed);
		assert_false(F.r[i].chattering);
		assert_false(F.r[i].shelved);
		assert_true(F.r[i].critical_fire);
	}
	assert_string_equal(last()->id, F.r[0].id); /* one occurrence, never acked */
	/* its on_delay still applies */
	num(F1, FP_TEMP, 65, 20000);
	assert_int_equal(F.n, 23); /* the minor "warm" (shelved), not yet heat */
	check(last(), "warm", "raised", ALARM_ACTIVE_UNACKED);
	assert_true(last()->shelved);
	assert_false(last()->critical_fire);
	tick(22999);
	assert_int_equal(F.n, 23);
	tick(23000);
	check(last(), "heat", "raised", ALARM_ACTIVE_UNACKED);
	assert_false(last()->shelved);
	assert_true(last()->critical_fire);
}

static void test_chatter(void **state)
{
	(void)state;
	/* five toggles in a minute go out one by one */
	for (int i = 0; i < 5; i++)
		bol(D1, P_FLAG, i % 2 == 0, i * 1000);
	assert_int_equal(F.n, 5);
	for (size_t i = 0; i < 5; i++) {
		assert_false(F.r[i].suppressed);
		assert_false(F.r[i].chattering);
	}
	/* the sixth: chattering, with the count, once */
	bol(D1, P_FLAG, false, 5000);
	assert_int_equal(F.n, 6);
	check(last(), "flag_on", "cleared", ALARM_CLEARED_UNACKED);
	assert_true(last()->chattering);
	assert_false(last()->suppressed);
	assert_int_equal(last()->chatter_count, 6);
	assert_string_equal(last()->note, "chattering: 6 toggles in 60 s");
	assert_non_null(strstr(last()->json, "\"chattering\":true,\"chatter_count\":6"));
	/* the next toggles are stored, not sent */
	for (int i = 0; i < 3; i++)
		bol(D1, P_FLAG, i % 2 == 0, 6000 + i * 1000);
	assert_int_equal(F.n, 9);
	for (size_t i = 6; i < 9; i++) {
		assert_true(F.r[i].suppressed);
		assert_true(F.r[i].chattering);
	}
	assert_int_equal(last()->chatter_count, 9);
	check(last(), "flag_on", "raised", ALARM_ACTIVE_UNACKED);
	/* quiet for the window: the state, which differs from the last sent, goes out */
	assert_int_equal(alarm_next_deadline(F.e), 8000 + 60000);
	tick(67999);
	assert_int_equal(F.n, 9);
	tick(68000);
	assert_int_equal(F.n, 10);
	check(last(), "flag_on", "raised", ALARM_ACTIVE_UNACKED);
	assert_false(last()->suppressed);
	assert_false(last()->chattering);
	assert_string_equal(last()->note, "chattering ended: 9 toggles");
	assert_int_equal(alarm_next_deadline(F.e), -1);
	/* ack, then toggles spread wider than the window do not chatter */
	assert_int_equal(alarm_ack(F.e, "d1/flag_on", "duty", W0 + 70000), 0);
	for (int i = 0; i < 8; i++)
		bol(D1, P_FLAG, i % 2 == 1, 80000 + i * 13000);
	for (size_t i = 11; i < F.n; i++) {
		assert_false(F.r[i].suppressed);
		assert_false(F.r[i].chattering);
	}
	assert_int_equal(F.n, 19);
}

static void test_chatter_ack_and_end_sent(void **state)
{
	(void)state;
	/* six toggles: chattering; then an ack goes out; the end of that seen
	 * occurrence goes out; the following new occurrence is suppressed */
	for (int i = 0; i < 6; i++)
		bol(D1, P_FLAG, i % 2 == 0, i * 1000);
	assert_true(last()->chattering);
	bol(D1, P_FLAG, true, 6000); /* suppressed raise: active-unacked */
	assert_true(last()->suppressed);
	assert_int_equal(alarm_ack(F.e, "d1/flag_on", "duty", W0 + 6500), 0);
	check(last(), "flag_on", "acknowledged", ALARM_ACTIVE_ACKED);
	assert_false(last()->suppressed);
	char id[160];
	snprintf(id, sizeof(id), "%s", last()->id);
	bol(D1, P_FLAG, false, 7000); /* ends the occurrence the platform knows */
	check(last(), "flag_on", "cleared", ALARM_NORMAL);
	assert_false(last()->suppressed);
	bol(D1, P_FLAG, true, 8000); /* a new occurrence while chattering */
	check(last(), "flag_on", "raised", ALARM_ACTIVE_UNACKED);
	assert_true(last()->suppressed);
	assert_string_not_equal(last()->id, id);
	size_t n = F.n;
	tick(8000 + 60000);
	assert_int_equal(F.n, n + 1);
	check(last(), "flag_on", "raised", ALARM_ACTIVE_UNACKED);
	assert_false(last()->suppressed);
}

static void test_flood(void **state)
{
	char devs[4096];
	size_t len = 0;

	(void)state;
	teardown(NULL);
	for (int i = 0; i < 14; i++)
		len += (size_t)snprintf(
			devs + len, sizeof(devs) - len,
			"  - {id: x%d, name: 设备%d, profile: tp, bus: mq, topic: t/x%d}\n", i, i,
			i);
	snprintf(devs + len, sizeof(devs) - len,
		 "  - {id: f1, name: 烟感, profile: fp, bus: mq, topic: t/f1}\n");
	engine_up(devs);
	/* ten new alarms in ten minutes: no flood */
	for (int i = 0; i < 10; i++)
		bol((uint32_t)i, P_FLAG, true, i * 1000);
	assert_int_equal(F.n, 10);
	assert_false(alarm_flood_active(F.e));
	assert_int_equal(F.floods, 0);
	/* a clear and a return of the same occurrence are not new alarms */
	bol(0, P_FLAG, false, 10000);
	bol(0, P_FLAG, true, 11000);
	assert_false(alarm_flood_active(F.e));
	/* the eleventh: a flood; new warnings wait */
	bol(10, P_FLAG, true, 12000);
	assert_true(alarm_flood_active(F.e));
	assert_int_equal(F.floods, 1);
	assert_true(F.flood_on);
	assert_int_equal(F.flood_count, 11);
	assert_true(last()->suppressed);
	assert_true(last()->flood);
	/* critical and major go out, with flood set; fire too */
	num(11, P_TEMP, 60, 13000);
	check(last(), "hot", "raised", ALARM_ACTIVE_UNACKED);
	assert_false(last()->suppressed);
	assert_true(last()->flood);
	assert_non_null(strstr(last()->json, "\"flood\":true"));
	uin(13, P_STATUS, 1, 13500); /* a major one goes out, the minor one waits */
	check(&F.r[F.n - 2], "st_alarm", "raised", ALARM_ACTIVE_UNACKED);
	assert_false(F.r[F.n - 2].suppressed);
	check(last(), "st_notnormal", "raised", ALARM_ACTIVE_UNACKED);
	assert_true(last()->suppressed);
	bol(14, FP_SMOKE, true, 14000);
	assert_false(last()->suppressed);
	assert_true(last()->critical_fire);
	/* changes of alarms already sent still go out */
	bol(1, P_FLAG, false, 15000);
	check(last(), "flag_on", "cleared", ALARM_CLEARED_UNACKED);
	assert_false(last()->suppressed);
	uin(12, P_WORD, 8, 16000); /* minor: waits */
	assert_true(last()->suppressed);
	assert_int_equal(F.flood_count, 11);
	/* it ends when fewer than 5 new alarms are in the trailing 10 minutes */
	int64_t t5 = 13000; /* the 5 latest new alarms: 13000, 13500 (two), 14000, 16000 */
	assert_int_equal(alarm_next_deadline(F.e), t5 + 600000);
	size_t n = F.n;
	tick(t5 + 599999);
	assert_true(alarm_flood_active(F.e));
	tick(t5 + 600000);
	assert_false(alarm_flood_active(F.e));
	assert_int_equal(F.floods, 2);
	assert_false(F.flood_on);
	assert_int_equal(F.flood_count, 16);
	/* what waited is sent now */
	assert_int_equal(F.n, n + 3);
	for (size_t i = n; i < F.n; i++) {
		assert_false(F.r[i].suppressed);
		assert_false(F.r[i].flood);
		assert_string_equal(F.r[i].event, "raised");
		assert_string_equal(F.r[i].note, "reported after the alarm flood");
	}
	assert_int_equal(alarm_next_deadline(F.e), -1);
}

/* ---- unless -------------------------------------------------------------------------- */

static void test_unless_no_unlock(void **state)
{
	(void)state;
	uin(D1, P_LOCK, 0, 0); /* locked */
	bol(D1, P_DOOR, true, 20000);
	check(last(), "forced", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(last()->msg, "3号楼3层东侧门 门被强行打开");
}

static void test_unless_unlocked_now(void **state)
{
	(void)state;
	uin(D1, P_LOCK, 1, 0); /* unlocked, still */
	bol(D1, P_DOOR, true, 20000);
	assert_int_equal(F.n, 0);
}

static void test_unless_within(void **state)
{
	(void)state;
	uin(D1, P_LOCK, 1, 0);       /* unlock pulse */
	uin(D1, P_LOCK, 0, 1000);    /* relocked */
	bol(D1, P_DOOR, true, 3000); /* opened 2 s after: not forced */
	assert_int_equal(F.n, 0);
	bol(D1, P_DOOR, true, 4000);
	tick(10000);
	assert_int_equal(F.n, 0);
	/* the excuse holds for this occurrence only */
	bol(D1, P_DOOR, false, 11000);
	bol(D1, P_DOOR, true, 20000); /* opened 19 s after the relock: forced */
	check(last(), "forced", "raised", ALARM_ACTIVE_UNACKED);
	assert_int_equal(F.n, 1);
	/* another device's unlock does not excuse this one */
	uin(D2, P_LOCK, 1, 30000);
	bol(D1, P_DOOR, false, 30000);
	bol(D1, P_DOOR, true, 30500);
	check(last(), "forced", "raised", ALARM_ACTIVE_UNACKED);
}

static void test_unless_too_early(void **state)
{
	(void)state;
	uin(D1, P_LOCK, 1, 0);
	uin(D1, P_LOCK, 0, 500);
	bol(D1, P_DOOR, true, 10000); /* 9.5 s after the relock, within 5s: forced */
	check(last(), "forced", "raised", ALARM_ACTIVE_UNACKED);
	/* a bad lock reading is no excuse */
	bol(D1, P_DOOR, false, 11000);
	rd(D1, P_LOCK, (struct cgw_value){.type = CGW_V_UINT, .u = 1}, CGW_Q_BAD, 11500);
	bol(D1, P_DOOR, true, 12000);
	assert_int_equal(F.n, 3);
	check(last(), "forced", "raised", ALARM_ACTIVE_UNACKED);
}

/* ---- offline, restore, ids ------------------------------------------------------------- */

static void test_offline(void **state)
{
	(void)state;
	alarm_on_device_state(F.e, D1, true, W0, 0);
	assert_int_equal(F.n, 0);
	alarm_on_device_state(F.e, D1, false, W0 + 1000, 1000);
	assert_int_equal(F.n, 1);
	check(last(), "offline", "raised", ALARM_ACTIVE_UNACKED);
	assert_int_equal(last()->rule_idx, ALARM_OFFLINE_RULE);
	assert_int_equal(last()->severity, CFG_SEV_MAJOR);
	assert_string_equal(last()->id, "d1/offline/1700000001000");
	assert_string_equal(last()->msg, "3号楼3层东侧门 通信中断");
	assert_non_null(strstr(last()->json, "\"value\":null"));
	alarm_on_device_state(F.e, D1, false, W0 + 2000, 2000);
	assert_int_equal(F.n, 1);
	alarm_on_device_state(F.e, D1, true, W0 + 3000, 3000);
	check(last(), "offline", "cleared", ALARM_CLEARED_UNACKED);
	assert_int_equal(alarm_ack(F.e, "d1/offline", "duty", W0 + 4000), 0);
	check(last(), "offline", "acknowledged", ALARM_NORMAL);
}

static void test_restore(void **state)
{
	struct alarm_record recs[] = {
		{"d1/hot/1699999990000", "d1", "hot", ALARM_ACTIVE_UNACKED, 1699999990000, false},
		{"d1/offline/1699999991000", "d1", "offline", ALARM_ACTIVE_ACKED, 1699999991000,
		 false},
		{"d1/st_alarm/1699999992000", "d1", "st_alarm", ALARM_CLEARED_UNACKED,
		 1699999992000, false},
		{"gone/hot/1", "gone", "hot", ALARM_ACTIVE_UNACKED, 1, false},
		{"d1/removed/1", "d1", "removed", ALARM_ACTIVE_UNACKED, 1, false},
		{"d1/low/1", "d1", "low", ALARM_NORMAL, 1, false},
		{"d1/hot/1699999999999", "d1", "hot", ALARM_ACTIVE_UNACKED, 1699999999999, false},
		{"d2/latched/1699999993000", "d2", "latched", ALARM_ACTIVE_UNACKED, 1699999993000,
		 true},
	};
	bool kept[8];

	(void)state;
	assert_int_equal(alarm_restore(F.e, recs, 8, kept), 4);
	assert_true(kept[0] && kept[1] && kept[2] && kept[7]);
	assert_false(kept[3] || kept[4] || kept[5] || kept[6]);
	assert_int_equal(F.n, 0); /* restoring emits nothing */
	assert_true(alarm_device_shelved(F.e, D2));
	assert_int_equal(alarm_active_count(F.e, -1), 3);
	assert_int_equal(alarm_active_count(F.e, CFG_SEV_CRITICAL), 1);
	assert_int_equal(alarm_active_count(F.e, CFG_SEV_MAJOR), 2);
	/* still hot: not raised again */
	num(D1, P_TEMP, 60, 0);
	assert_int_equal(F.n, 0);
	/* then it ends: an ordinary clear */
	num(D1, P_TEMP, 20, 1000);
	check(last(), "hot", "cleared", ALARM_CLEARED_UNACKED);
	assert_string_equal(last()->id, "d1/hot/1699999990000");
	assert_string_equal(last()->note, "");
	/* the offline alarm: online at start, acked before: normal, with the note */
	alarm_on_device_state(F.e, D1, true, W0 + 2000, 2000);
	check(last(), "offline", "cleared", ALARM_NORMAL);
	assert_string_equal(last()->id, "d1/offline/1699999991000");
	assert_string_equal(last()->note, "condition ended while cgwd was not running");
	/* cleared-unacked, condition back: raised again, same occurrence */
	uin(D1, P_STATUS, 1, 3000);
	assert_int_equal(F.n, 4);
	check(&F.r[2], "st_alarm", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(F.r[2].id, "d1/st_alarm/1699999992000");
	assert_int_equal(F.r[2].raised_at, 1699999992000);
	/* latched and unacked: stays until acked, even though the condition is gone */
	num(D2, P_COUNT, 0, 4000);
	assert_int_equal(F.n, 4);
	assert_int_equal(alarm_ack(F.e, "d2/latched/1699999993000", "duty", W0 + 5000), 0);
	check(last(), "latched", "acknowledged", ALARM_NORMAL);
	assert_true(alarm_ack(F.e, "d2/latched", "duty", W0 + 5000) == -ENOENT);
	/* a bad pointer is refused */
	assert_int_equal(alarm_restore(F.e, NULL, 1, NULL), -EINVAL);
}

static void test_restore_cleared_while_down(void **state)
{
	struct alarm_record rec = {"d1/hot/1699999990000", "d1",          "hot",
				   ALARM_ACTIVE_UNACKED,   1699999990000, false};

	(void)state;
	assert_int_equal(alarm_restore(F.e, &rec, 1, NULL), 1);
	/* a bad reading first: no decision */
	rd(D1, P_TEMP, (struct cgw_value){.type = CGW_V_DOUBLE, .d = 20}, CGW_Q_STALE, 0);
	assert_int_equal(F.n, 0);
	num(D1, P_TEMP, 20, 1000);
	assert_int_equal(F.n, 1);
	check(last(), "hot", "cleared", ALARM_CLEARED_UNACKED);
	assert_string_equal(last()->note, "condition ended while cgwd was not running");
	assert_string_equal(last()->id, "d1/hot/1699999990000");
	assert_int_equal(last()->raised_at, 1699999990000);
	assert_non_null(
		strstr(last()->json, "\"note\":\"condition ended while cgwd was not running\""));
	/* the next occurrence has a new id even if the wall clock went back */
	assert_int_equal(alarm_ack(F.e, "d1/hot", "duty", W0), 0);
	alarm_on_reading(F.e, D1, P_TEMP, &(struct cgw_value){.type = CGW_V_DOUBLE, .d = 70},
			 CGW_Q_GOOD, 1699999980000, 2000);
	check(last(), "hot", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(last()->id, "d1/hot/1699999990001");
}

static void test_alarm_id_unique(void **state)
{
	char ids[6][160];

	(void)state;
	/* three occurrences in the same wall millisecond */
	for (int i = 0; i < 3; i++) {
		alarm_on_reading(F.e, D1, P_TEMP,
				 &(struct cgw_value){.type = CGW_V_DOUBLE, .d = 70}, CGW_Q_GOOD, W0,
				 i * 10);
		snprintf(ids[i], sizeof(ids[i]), "%s", last()->id);
		assert_int_equal(alarm_ack(F.e, ids[i], "d", W0), 0);
		assert_string_equal(last()->id, ids[i]);
		alarm_on_reading(F.e, D1, P_TEMP,
				 &(struct cgw_value){.type = CGW_V_DOUBLE, .d = 20}, CGW_Q_GOOD, W0,
				 i * 10 + 5);
		check(last(), "hot", "cleared", ALARM_NORMAL);
		assert_string_equal(last()->id, ids[i]);
	}
	/* the same rule on other devices */
	num(D2, P_TEMP, 70, 0);
	snprintf(ids[3], sizeof(ids[3]), "%s", last()->id);
	alarm_on_device_state(F.e, D1, false, W0, 0);
	snprintf(ids[4], sizeof(ids[4]), "%s", last()->id);
	alarm_on_device_state(F.e, D2, false, W0, 0);
	snprintf(ids[5], sizeof(ids[5]), "%s", last()->id);
	for (int i = 0; i < 6; i++)
		for (int j = 0; j < i; j++)
			assert_string_not_equal(ids[i], ids[j]);
	assert_string_equal(ids[0], "d1/hot/1700000000000");
	assert_string_equal(ids[1], "d1/hot/1700000000001");
	assert_string_equal(ids[2], "d1/hot/1700000000002");
}

/* ---- text, JSON, queries --------------------------------------------------------------- */

static void test_message(void **state)
{
	char buf[ALARM_MESSAGE_MAX];
	struct cgw_value v = {.type = CGW_V_DOUBLE, .d = 573 * 0.1};

	(void)state;
	num(D1, P_TEMP, 573 * 0.1, 0);
	/* {value} compact, {unit}, {location.*}; a key the device lacks renders empty
	 * (unknown placeholders and a lone brace never get here: the configuration
	 * check refuses them; alarm_render() below leaves them as they are) */
	assert_string_equal(last()->msg, "3号楼3层东侧门 温度过高 57.3°C 3号楼");
	alarm_render(F.cfg, D2, R_HOT, "{name}/{device}/{alarm}/{location.building}", &v, buf,
		     sizeof(buf));
	assert_string_equal(buf, "二号设备/d2/hot/");
	alarm_render(F.cfg, D1, R_HOT, "{bogus} {", &v, buf, sizeof(buf));
	assert_string_equal(buf, "{bogus} {");
	/* truncation on a character boundary */
	alarm_render(F.cfg, D1, R_HOT, "{name}", &v, buf, 8);
	assert_string_equal(buf, "3号楼"); /* 1 + 3 + 3 bytes: the next character does not fit */
	alarm_render(F.cfg, D1, R_HOT, "{name}", &v, buf, 7);
	assert_string_equal(buf, "3号");
	char *big = malloc(8000);
	assert_non_null(big);
	for (int i = 0; i < 2000; i++)
		memcpy(big + i * 3, "烟", 3);
	big[6000] = '\0';
	size_t n = alarm_render(F.cfg, D1, R_HOT, big, &v, buf, sizeof(buf));
	assert_true(n < sizeof(buf) && n % 3 == 0 && n == strlen(buf));
	json_t *j = json_string(buf); /* valid UTF-8 */
	assert_non_null(j);
	json_decref(j);
	free(big);
	/* no value yet */
	alarm_render(F.cfg, D2, R_HOT, "[{value}][{unit}]", NULL, buf, sizeof(buf));
	assert_string_equal(buf, "[?][°C]");
	alarm_render(F.cfg, D1, ALARM_OFFLINE_RULE, "{alarm} {unit}{value}", NULL, buf,
		     sizeof(buf));
	assert_string_equal(buf, "offline ?");
	/* values */
	const struct cfg_profile *pr = cfg_device_profile(F.cfg, &F.cfg->devices[D1]);
	struct cfg_point f32 = {.type = CGW_T_FLOAT32};
	alarm_format_value(&f32, &(struct cgw_value){.type = CGW_V_DOUBLE, .d = (double)0.12f}, buf,
			   sizeof(buf));
	assert_string_equal(buf, "0.12");
	alarm_format_value(NULL, &(struct cgw_value){.type = CGW_V_DOUBLE, .d = 0.1 + 0.2}, buf,
			   sizeof(buf));
	assert_string_equal(buf, "0.3");
	alarm_format_value(NULL, &(struct cgw_value){.type = CGW_V_DOUBLE, .d = 1234567.5}, buf,
			   sizeof(buf));
	assert_string_equal(buf, "1234567.5");
	alarm_format_value(NULL, &(struct cgw_value){.type = CGW_V_INT, .i = -42}, buf,
			   sizeof(buf));
	assert_string_equal(buf, "-42");
	alarm_format_value(&pr->points[P_STATUS], &(struct cgw_value){.type = CGW_V_UINT, .u = 2},
			   buf, sizeof(buf));
	assert_string_equal(buf, "fault");
	alarm_format_value(&pr->points[P_STATUS], &(struct cgw_value){.type = CGW_V_UINT, .u = 9},
			   buf, sizeof(buf));
	assert_string_equal(buf, "9");
}

static void test_json(void **state)
{
	json_error_t err;
	json_t *o;

	(void)state;
	num(D1, P_TEMP, 573 * 0.1, 0);
	assert_int_equal(alarm_ack(F.e, "d1/hot", "值班员", W0 + 500), 0);
	o = json_loads(F.r[0].json, 0, &err);
	assert_non_null(o);
	assert_null(json_object_get(o, "id"));
	assert_int_equal(json_integer_value(json_object_get(o, "ts")), W0);
	assert_string_equal(json_string_value(json_object_get(o, "device")), "d1");
	assert_string_equal(json_string_value(json_object_get(o, "name")), "3号楼3层东侧门");
	assert_string_equal(json_string_value(json_object_get(o, "alarm")), "hot");
	assert_string_equal(json_string_value(json_object_get(o, "alarm_id")),
			    "d1/hot/1700000000000");
	assert_string_equal(json_string_value(json_object_get(o, "event")), "raised");
	assert_string_equal(json_string_value(json_object_get(o, "state")), "active-unacked");
	assert_string_equal(json_string_value(json_object_get(o, "severity")), "critical");
	assert_true(json_real_value(json_object_get(o, "value")) == 57.3);
	assert_non_null(strstr(F.r[0].json, "\"value\":57.3,"));
	json_t *loc = json_object_get(o, "location");
	assert_true(json_is_object(loc));
	assert_int_equal(json_object_size(loc), 2);
	assert_string_equal(json_string_value(json_object_get(loc, "building")), "3");
	assert_string_equal(json_string_value(json_object_get(loc, "floor")), "3");
	assert_string_equal(json_string_value(json_object_get(o, "message")), F.r[0].msg);
	assert_int_equal(json_integer_value(json_object_get(o, "raised_at")), W0);
	assert_null(json_object_get(o, "by"));
	assert_null(json_object_get(o, "note"));
	assert_null(json_object_get(o, "chattering"));
	assert_null(json_object_get(o, "flood"));
	json_decref(o);

	o = json_loads(F.r[1].json, 0, &err);
	assert_non_null(o);
	assert_string_equal(json_string_value(json_object_get(o, "event")), "acknowledged");
	assert_string_equal(json_string_value(json_object_get(o, "state")), "active-acked");
	assert_string_equal(json_string_value(json_object_get(o, "by")), "值班员");
	assert_int_equal(json_integer_value(json_object_get(o, "ts")), W0 + 500);
	assert_int_equal(json_integer_value(json_object_get(o, "raised_at")), W0);
	json_decref(o);

	/* enum values as their word; a device without location: {} */
	uin(D2, P_STATUS, 1, 1000);
	o = json_loads(last()->json, 0, &err);
	assert_non_null(o);
	assert_string_equal(json_string_value(json_object_get(o, "value")), "alarm");
	assert_int_equal(json_object_size(json_object_get(o, "location")), 0);
	json_decref(o);
	/* bool and integer values */
	bol(D2, P_FLAG, true, 2000);
	assert_non_null(strstr(last()->json, "\"value\":true"));
	uin(D2, P_WORD, 8, 3000);
	assert_non_null(strstr(last()->json, "\"value\":8,"));
	struct wire_msg m;
	assert_int_equal(wire_alarm(NULL, NULL, &m), -EINVAL);
}

struct fe {
	int n;
	char ids[8][160];
};

static void collect(void *arg, const struct alarm_change *c)
{
	struct fe *fe = arg;

	assert_null(c->event);
	assert_true(c->state != ALARM_NORMAL);
	assert_int_equal(c->ts_ms, c->raised_at_ms);
	if (fe->n < 8)
		snprintf(fe->ids[fe->n], sizeof(fe->ids[0]), "%s", c->alarm_id);
	fe->n++;
}

static void test_queries(void **state)
{
	struct fe fe = {0};

	(void)state;
	num(D1, P_TEMP, 60, 0);    /* critical */
	uin(D2, P_STATUS, 1, 0);   /* major + minor */
	bol(D2, P_FLAG, true, 0);  /* warning */
	bol(D2, P_FLAG, false, 1); /* -> cleared-unacked: not active */
	assert_int_equal(alarm_active_count(F.e, -1), 3);
	assert_int_equal(alarm_active_count(F.e, CFG_SEV_CRITICAL), 1);
	assert_int_equal(alarm_active_count(F.e, CFG_SEV_MAJOR), 1);
	assert_int_equal(alarm_active_count(F.e, CFG_SEV_MINOR), 1);
	assert_int_equal(alarm_active_count(F.e, CFG_SEV_WARNING), 0);
	alarm_foreach(F.e, collect, &fe);
	assert_int_equal(fe.n, 4);
	assert_string_equal(fe.ids[0], "d1/hot/1700000000000");
	assert_string_equal(alarm_state_name(ALARM_CLEARED_UNACKED), "cleared-unacked");
	for (int s = 0; s < 4; s++)
		assert_int_equal(alarm_state_from_name(alarm_state_name((enum alarm_state)s)), s);
	assert_int_equal(alarm_state_from_name("shelved"), -1);
	assert_int_equal(alarm_state_from_name(NULL), -1);
}

static void test_deadline_order(void **state)
{
	(void)state;
	/* several delays at once: the earliest is next, and each fires in order */
	num(D1, P_PRESS, 0.1, 3000); /* due 8000 */
	num(D2, P_PRESS, 0.1, 1000); /* due 6000 */
	num(F1, FP_TEMP, 70, 2000);  /* heat due 5000; warm raised now */
	assert_int_equal(F.n, 1);
	assert_int_equal(alarm_next_deadline(F.e), 5000);
	num(F1, FP_TEMP, 20, 2500); /* heat interrupted, warm cleared */
	assert_int_equal(alarm_next_deadline(F.e), 6000);
	tick(7000);
	assert_int_equal(F.n, 3);
	assert_int_equal(last()->dev, D2);
	assert_int_equal(last()->ts, W0 + 7000);
	assert_int_equal(alarm_next_deadline(F.e), 8000);
	tick(100000);
	assert_int_equal(F.n, 4);
	assert_int_equal(last()->dev, D1);
	assert_int_equal(alarm_next_deadline(F.e), -1);
}

static void test_shipped_smoke_detector(void **state)
{
	(void)state;
	/* status is uint16 with an enum: the core passes the raw integer */
	rd(S1, 0, (struct cgw_value){.type = CGW_V_UINT, .u = 1}, CGW_Q_GOOD, 0);
	check(last(), "smoke", "raised", ALARM_ACTIVE_UNACKED);
	assert_true(last()->critical_fire);
	assert_string_equal(last()->msg, "3号楼3层东侧楼梯间烟感 烟感报警");
	assert_string_equal(last()->val, "alarm");
	rd(S1, 0, (struct cgw_value){.type = CGW_V_UINT, .u = 0}, CGW_Q_GOOD, 1000);
	assert_int_equal(F.n, 1); /* latched */
	/* overheat: above 57 for 3 s */
	num(S1, 2, 573 * 0.1, 2000);
	assert_int_equal(F.n, 1);
	tick(5000);
	check(last(), "overheat", "raised", ALARM_ACTIVE_UNACKED);
	assert_string_equal(last()->msg, "3号楼3层东侧楼梯间烟感 温度过高 57.3°C");
}

static void test_new_errors(void **state)
{
	struct alarm_engine *e = NULL;

	(void)state;
	assert_int_equal(alarm_engine_new(NULL, on_emit, NULL, &e), -EINVAL);
	assert_int_equal(alarm_engine_new(F.cfg, NULL, NULL, &e), -EINVAL);
	assert_null(e);
	alarm_engine_free(NULL);
	alarm_tick(NULL, 0, 0);
	assert_int_equal(alarm_next_deadline(NULL), -1);
	assert_false(alarm_flood_active(NULL));
}

/* ---- reload: state carried over ------------------------------------------------- */

static void test_adopt(void **state)
{
	struct cgw_config *oc = F.cfg, *nc;
	struct alarm_engine *oe = F.e, *ne = NULL;
	/* reordered, f1 removed, d1 renamed (same profile), s1 on the same profile */
	static const char NEW_DEVICES[] =
		"  - {id: d2, name: 二号设备, profile: tp, bus: mq, topic: t/d2}\n"
		"  - {id: s1, name: 3号楼3层东侧楼梯间烟感, profile: smoke-detector, bus: rtu, unit: 3}\n"
		"  - {id: d1, name: 东侧门, profile: tp, bus: mq, topic: t/d1b}\n"
		"  - {id: f1x, name: x, profile: fp, bus: mq, topic: t/f1x}\n";

	(void)state;
	num(D1, P_PRESS, 0.10, 0); /* low: on_delay 5 s running */
	num(D1, P_TEMP, 60, 1000); /* hot raised ... */
	assert_int_equal(alarm_ack(F.e, "d1/hot", "duty", W0 + 1500), 0); /* ... and acked */
	assert_int_equal(alarm_shelve(F.e, D2, true, "duty", W0 + 1600), 0);
	num(D2, P_COUNT, 7, 1700); /* latched, shelved */
	num(D2, P_COUNT, 0, 1800); /* condition gone: the latch holds */
	bol(F1, FP_SMOKE, true, 1900);
	size_t before = F.n;

	nc = load_cfg(NEW_DEVICES);
	assert_int_equal(alarm_engine_new(nc, on_emit, &F, &ne), 0);
	/* a removed device's alarms end on the old engine, with the reason */
	assert_int_equal(alarm_retire(oe, F1, NULL, "the device was removed", W0 + 2000), 1);
	assert_int_equal(F.n, before + 1);
	check(last(), "smoke", "cleared", ALARM_NORMAL);
	assert_string_equal(last()->note, "the device was removed");
	assert_int_equal(alarm_retire(oe, F1, NULL, "again", W0 + 2000), 0);
	/* different id or shape: refused */
	assert_int_equal(alarm_adopt_device(ne, 3, oe, D1), -EINVAL);
	assert_int_equal(alarm_adopt_device(ne, 1, oe, D1), -EINVAL);
	assert_int_equal(alarm_adopt_device(ne, 0, oe, D2), 0);
	assert_int_equal(alarm_adopt_device(ne, 1, oe, S1), 0);
	assert_int_equal(alarm_adopt_device(ne, 2, oe, D1), 0);
	alarm_adopt_flood(ne, oe);
	F.cfg = nc;
	F.e = ne;
	alarm_engine_free(oe);
	config_free(oc);
	before = F.n;

	/* the on_delay runs on: due at 5000 as before the reload */
	assert_int_equal(alarm_next_deadline(F.e), 5000);
	tick(4999);
	assert_int_equal(F.n, before);
	tick(5000);
	assert_int_equal(F.n, before + 1);
	check(last(), "low", "raised", ALARM_ACTIVE_UNACKED);
	assert_int_equal(last()->dev, 2);
	assert_int_equal(last()->raised_at, W0 + 5000);
	/* the acknowledgement, the latch and the shelving are kept */
	assert_int_equal(alarm_ack(F.e, "d1/hot", "duty", W0 + 6000), -EALREADY);
	assert_true(alarm_device_shelved(F.e, 0));
	assert_false(alarm_device_shelved(F.e, 2));
	num(0, P_COUNT, 0, 6100);
	assert_int_equal(F.n, before + 1);
	assert_int_equal(alarm_ack(F.e, "d2/latched", "duty", W0 + 6200), 0);
	check(last(), "latched", "acknowledged", ALARM_NORMAL);
	assert_true(last()->json && strstr(last()->json, "\"name\":\"二号设备\""));
	/* the last value is known: the hot alarm clears on it without a new reading */
	num(2, P_TEMP, 20, 7000);
	check(last(), "hot", "cleared", ALARM_NORMAL);
	assert_string_equal(last()->id, "d1/hot/1700000001000");
	assert_int_equal(alarm_active_count(F.e, -1), 1); /* low */
}

/* alarm_format_value() prints doubles as "%.15g" (float32 points "%.7g",
 * whole numbers from 1e7 as "%.0f") without printf for ordinary values:
 * the text must be printf's, byte for byte, whatever the value. */
static void format_same(const struct cfg_point *pt, double d)
{
	char got[64], want[64];
	double z = d == 0 ? 0 : d;
	bool single = pt && pt->type == CGW_T_FLOAT32;

	if (single && fabs(z) >= 1e7 && fabs(z) < 1e15)
		snprintf(want, sizeof(want), "%.0f", z);
	else
		snprintf(want, sizeof(want), "%.*g", single ? 7 : 15, z);
	alarm_format_value(pt, &(struct cgw_value){.type = CGW_V_DOUBLE, .d = d}, got, sizeof(got));
	if (strcmp(got, want) != 0)
		fail_msg("%.17g: got %s, printf gives %s", d, got, want);
}

static void test_format_double_is_printf(void **state)
{
	struct cfg_point f32 = {.type = CGW_T_FLOAT32};
	uint64_t x = 0x9E3779B97F4A7C15ULL;

	(void)state;
	/* what sensors give: scaled registers, decimals, float32 readings */
	for (int i = -60000; i <= 60000; i++) {
		format_same(NULL, i * 0.1);
		format_same(NULL, i * 0.01);
		format_same(NULL, i * 0.001);
		format_same(NULL, i / 3.0);
		format_same(&f32, (float)(i * 0.1));
		format_same(&f32, (float)(i * 0.37));
	}
	/* around every power of ten and the tie points of each precision */
	for (int e = -6; e <= 16; e++) {
		double p = pow(10, e);
		for (int j = -40; j <= 40; j++) {
			format_same(NULL, nextafter(p, j < 0 ? 0 : INFINITY) + j * p * 1e-16);
			format_same(NULL, p * (1 + j * 1e-15));
			format_same(NULL, p * 5.5 + j * p * 1e-15);
			format_same(&f32, (float)(p * (1 + j * 1e-7)));
			format_same(&f32, (float)(p * 9.9999995 + j * p * 1e-8));
		}
	}
	/* any bits at all */
	for (int i = 0; i < 400000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		double d;
		memcpy(&d, &x, sizeof(d));
		if (!isfinite(d))
			continue;
		format_same(NULL, d);
		format_same(NULL, (double)(int64_t)(x >> 11) / (double)(1ULL << (x % 64)));
		format_same(&f32, (float)((double)(int64_t)(x >> 11) / (double)(1ULL << (x % 64))));
	}
	format_same(NULL, -0.0);
	format_same(NULL, 0.5);
	format_same(NULL, 0.00015);
	format_same(NULL, 999999999999999.5);
	format_same(&f32, 9999999.5);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
		cmocka_unit_test(test_format_double_is_printf),
		T(test_above_deadband),
		T(test_below_delays),
		T(test_on_delay_interrupted),
		T(test_equals_enum),
		T(test_bool_and_bit),
		T(test_bad_quality_ignored),
		T(test_state_ack_then_clear),
		T(test_state_clear_then_ack),
		T(test_event_texts),
		T(test_latch),
		T(test_shelve),
		T(test_fire_never_suppressed),
		T(test_chatter),
		T(test_chatter_ack_and_end_sent),
		T(test_flood),
		T(test_unless_no_unlock),
		T(test_unless_unlocked_now),
		T(test_unless_within),
		T(test_unless_too_early),
		T(test_offline),
		T(test_restore),
		T(test_restore_cleared_while_down),
		T(test_alarm_id_unique),
		T(test_message),
		T(test_json),
		T(test_queries),
		T(test_deadline_order),
		T(test_shipped_smoke_detector),
		T(test_new_errors),
		T(test_adopt),
#undef T
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
