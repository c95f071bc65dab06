/* Unit tests of the wire module: the one value-to-JSON, ids in topics, the
 * status messages, the command result shapes, id splicing and retain. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "config.h"
#include "wire.h"

static char *dump(json_t *j)
{
	char *s = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(15));
	json_decref(j);
	assert_non_null(s);
	return s;
}

static void value_is(const struct cfg_point *pt, struct cgw_value v, const char *want)
{
	char *got = dump(wire_value_json(pt, &v));
	assert_string_equal(got, want);
	free(got);
}

static void test_values(void **state)
{
	struct cfg_enum en[] = {{0, "normal"}, {1, "alarm"}};
	struct cfg_point f32 = {.type = CGW_T_FLOAT32}, e = {.enums = en, .n_enums = 2};

	(void)state;
	/* uint64 above INT64_MAX: a positive number, never a negative one
	 * (the core's old copy sent -1 for 2^64-1) */
	char *s = dump(
		wire_value_json(NULL, &(struct cgw_value){.type = CGW_V_UINT, .u = UINT64_MAX}));
	assert_true(s[0] != '-');
	assert_true(strtod(s, NULL) > 1.8e19);
	free(s);
	value_is(NULL, (struct cgw_value){.type = CGW_V_UINT, .u = (uint64_t)INT64_MAX},
		 "9223372036854775807");
	value_is(NULL, (struct cgw_value){.type = CGW_V_INT, .i = -5}, "-5");
	value_is(NULL, (struct cgw_value){.type = CGW_V_BOOL, .b = true}, "true");
	value_is(NULL, (struct cgw_value){.type = CGW_V_DOUBLE, .d = 57.300000000000004}, "57.3");
	value_is(&f32, (struct cgw_value){.type = CGW_V_DOUBLE, .d = (double)0.12f}, "0.12");
	value_is(NULL, (struct cgw_value){.type = CGW_V_DOUBLE, .d = NAN}, "null");
	value_is(NULL, (struct cgw_value){.type = CGW_V_NONE}, "null");
	value_is(&e, (struct cgw_value){.type = CGW_V_UINT, .u = 1}, "\"alarm\"");
	value_is(&e, (struct cgw_value){.type = CGW_V_INT, .i = 7}, "7");
	value_is(NULL, (struct cgw_value){.type = CGW_V_STRING, .s = "a\"b\xff"}, "\"a\\\"b?\"");
	assert_string_equal((s = dump(wire_value_json(NULL, NULL))), "null");
	free(s);
}

/* wire_value_text() writes what json_dumps() writes for wire_value_json():
 * byte for byte, over the kinds of values and many numbers. */
static void text_matches_json(const struct cfg_point *pt, struct cgw_value v)
{
	char *want = dump(wire_value_json(pt, &v)), got[256];
	size_t n = wire_value_text(pt, &v, got, sizeof(got));
	assert_string_equal(got, want);
	assert_int_equal(n, strlen(want));
	/* cut short like snprintf: the length still says the whole */
	char small[4];
	assert_int_equal(wire_value_text(pt, &v, small, sizeof(small)), strlen(want));
	assert_int_equal(strlen(small), strlen(want) < 3 ? strlen(want) : 3);
	free(want);
}

static void test_value_text(void **state)
{
	struct cfg_enum en[] = {{0, "正常"}, {1, "a\"l\\arm\n"}};
	struct cfg_point f32 = {.type = CGW_T_FLOAT32}, e = {.enums = en, .n_enums = 2};
	const char *strs[] = {
		"",      "plain",    "闭合",         "a\"b\\c",          "\x01\x1f\t\r\n\b\f",
		"a\xff", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "/slash",
		"\x7f",  "€𝄞"};
	const double ds[] = {0,        -0.0,
			     1,        -1,
			     0.1,      57.300000000000004,
			     1e15,     1e16,
			     1e-5,     123456789012345678.0,
			     2.5e-300, -3.4e38,
			     1e7,      12345678.0,
			     0.12f,    1.0 / 3,
			     100,      4294967295.0};

	(void)state;
	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
		text_matches_json(NULL,
				  (struct cgw_value){.type = CGW_V_STRING, .s = (char *)strs[i]});
	for (size_t i = 0; i < sizeof(ds) / sizeof(ds[0]); i++) {
		text_matches_json(NULL, (struct cgw_value){.type = CGW_V_DOUBLE, .d = ds[i]});
		text_matches_json(&f32,
				  (struct cgw_value){.type = CGW_V_DOUBLE, .d = (float)ds[i]});
	}
	/* many more numbers: a fixed pseudo-random walk over magnitudes */
	uint64_t x = 88172645463325252ULL;
	for (int i = 0; i < 20000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		double d = (double)(int64_t)x / (double)(1ULL << (x % 60));
		text_matches_json(NULL, (struct cgw_value){.type = CGW_V_DOUBLE, .d = d});
		text_matches_json(&f32, (struct cgw_value){.type = CGW_V_DOUBLE, .d = (float)d});
		text_matches_json(NULL, (struct cgw_value){.type = CGW_V_INT, .i = (int64_t)x});
		text_matches_json(NULL, (struct cgw_value){.type = CGW_V_UINT, .u = x});
	}
	text_matches_json(NULL, (struct cgw_value){.type = CGW_V_DOUBLE, .d = INFINITY});
	/* 15 digits of -DBL_MAX round past it: null in both (found by fuzz_wire_text) */
	text_matches_json(NULL,
			  (struct cgw_value){.type = CGW_V_DOUBLE, .d = -1.7976931348623157e308});
	value_is(NULL, (struct cgw_value){.type = CGW_V_DOUBLE, .d = 1.7976931348623157e308},
		 "null");
	text_matches_json(NULL, (struct cgw_value){.type = CGW_V_UINT, .u = UINT64_MAX});
	text_matches_json(NULL, (struct cgw_value){.type = CGW_V_INT, .i = INT64_MIN});
	text_matches_json(NULL, (struct cgw_value){.type = CGW_V_BOOL, .b = false});
	text_matches_json(NULL, (struct cgw_value){.type = CGW_V_NONE});
	text_matches_json(&e, (struct cgw_value){.type = CGW_V_UINT, .u = 0});
	text_matches_json(&e, (struct cgw_value){.type = CGW_V_INT, .i = 1});
	text_matches_json(&e, (struct cgw_value){.type = CGW_V_INT, .i = 2});
	char out[8];
	assert_int_equal(wire_value_text(NULL, NULL, out, sizeof(out)), 4);
	assert_string_equal(out, "null");
}

/* The telemetry message written as text is the object jansson would dump:
 * ts, device, values in order, quality only for points not good. */
static void test_telemetry_text(void **state)
{
	struct cfg_device d = {.id = "smoke-1"};
	struct wire_field f[] = {{"status", "\"normal\"", NULL},
				 {"smoke", "0.1", NULL},
				 {"temp\"x", "null", "bad"},
				 {"batt", "null", "stale"}};
	struct wire_msg m;

	(void)state;
	assert_int_equal(wire_telemetry(&d, 1700000000123LL, f, 4, &m), 0);
	assert_string_equal(m.topic, "device/smoke-1/telemetry");
	assert_int_equal(m.lane, CGW_LANE_TELEMETRY);
	json_t *o = json_pack("{s:I,s:s,s:{s:s,s:f,s:n,s:n},s:{s:s,s:s}}", "ts",
			      (json_int_t)1700000000123LL, "device", "smoke-1", "values", "status",
			      "normal", "smoke", 0.1, "temp\"x", "batt", "quality", "temp\"x",
			      "bad", "batt", "stale");
	char *want = dump(o);
	assert_string_equal(m.payload, want);
	free(want);
	wire_msg_clear(&m);
	/* all good: no quality member; no points: an empty values object */
	assert_int_equal(wire_telemetry(&d, 5, f, 2, &m), 0);
	assert_string_equal(m.payload,
			    "{\"ts\":5,\"device\":\"smoke-1\",\"values\":{\"status\":\"normal\","
			    "\"smoke\":0.1}}");
	wire_msg_clear(&m);
	assert_int_equal(wire_telemetry(&d, 5, NULL, 0, &m), 0);
	assert_string_equal(m.payload, "{\"ts\":5,\"device\":\"smoke-1\",\"values\":{}}");
	wire_msg_clear(&m);
	assert_int_equal(wire_telemetry(NULL, 5, NULL, 0, &m), -EINVAL);
}

static void test_ids(void **state)
{
	(void)state;
	assert_true(wire_id_valid("xiangyang-garden"));
	assert_true(wire_id_valid("gw_1.north"));
	assert_false(wire_id_valid(""));
	assert_false(wire_id_valid("."));
	assert_false(wire_id_valid(".."));
	assert_false(wire_id_valid("a/b"));
	assert_false(wire_id_valid("a+"));
	assert_false(wire_id_valid("#"));
	assert_false(wire_id_valid("x\"y"));
	assert_false(wire_id_valid("向阳花园"));
	char long_id[80];
	memset(long_id, 'a', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	assert_false(wire_id_valid(long_id));
	long_id[WIRE_ID_MAX] = '\0';
	assert_true(wire_id_valid(long_id));
}

static struct cgw_config *cfg_of(void)
{
	struct cfg_errors errs = {0};
	struct cgw_config *cfg = NULL;
	static const char y[] = "gateway: {id: gw-1, site: garden, state_dir: /tmp}\n";

	config_load_string("t.yaml", y, strlen(y), &cfg, &errs);
	cfg_errors_free(&errs);
	assert_non_null(cfg);
	return cfg;
}

static void test_status(void **state)
{
	struct cgw_config *cfg = cfg_of();
	json_error_t err;
	char *b, *w, *bye;
	json_t *o;

	(void)state;
	b = wire_status(cfg, true, 41, 7, 1700000000000LL, NULL);
	w = wire_status(cfg, false, 40, 7, 1699999999000LL, NULL);
	bye = wire_status(cfg, false, 42, 7, 1700000001000LL, "stopped");
	assert_non_null(b);
	o = json_loads(b, 0, &err);
	assert_string_equal(json_string_value(json_object_get(o, "id")), "gw-1:41");
	assert_string_equal(json_string_value(json_object_get(o, "state")), "online");
	assert_int_equal(json_integer_value(json_object_get(o, "session")), 7);
	assert_int_equal(json_integer_value(json_object_get(o, "ts")), 1700000000000LL);
	assert_int_equal(json_integer_value(json_object_get(o, "protocol")), WIRE_PROTOCOL);
	assert_string_equal(json_string_value(json_object_get(o, "site")), "garden");
	json_decref(o);
	o = json_loads(w, 0, &err);
	assert_string_equal(json_string_value(json_object_get(o, "id")), "gw-1:40");
	assert_string_equal(json_string_value(json_object_get(o, "state")), "offline");
	assert_int_equal(json_integer_value(json_object_get(o, "session")), 7);
	assert_int_equal(json_integer_value(json_object_get(o, "ts")), 1699999999000LL);
	assert_null(json_object_get(o, "protocol"));
	json_decref(o);
	assert_non_null(strstr(bye, "\"reason\":\"stopped\""));
	free(b);
	free(w);
	free(bye);
	config_free(cfg);
}

static void test_results(void **state)
{
	struct wire_msg m;
	json_t *o;
	char *s;

	(void)state;
	o = wire_command_result(&(struct wire_result){.device = "d1",
						      .command_id = "c-1",
						      .result = "duplicate",
						      .first_result = "ok",
						      .ts_ms = 5});
	s = json_dumps(o, JSON_COMPACT);
	assert_string_equal(s, "{\"ts\":5,\"device\":\"d1\",\"command_id\":\"c-1\","
			       "\"result\":\"duplicate\",\"first\":{\"result\":\"ok\"}}");
	free(s);
	assert_int_equal(wire_command_result_msg("d1", true, o, 5, &m), 0);
	assert_string_equal(m.topic, "cmd/d1/result");
	assert_int_equal(m.lane, CGW_LANE_EVENT);
	wire_msg_clear(&m);
	/* a device that is not configured: behind everything else, and only a
	 * name that can be a topic level */
	assert_int_equal(wire_command_result_msg("x9", false, o, 5, &m), 0);
	assert_int_equal(m.lane, CGW_LANE_TELEMETRY);
	assert_null(m.device);
	wire_msg_clear(&m);
	assert_int_equal(wire_command_result_msg("a/#", false, o, 5, &m), -EINVAL);
	json_decref(o);
	o = wire_command_result(&(struct wire_result){.command_id = "rb",
						      .result = "rejected",
						      .detail = "why",
						      .ts_ms = 6});
	assert_int_equal(wire_command_result_msg(NULL, true, o, 6, &m), 0);
	assert_string_equal(m.topic, "result");
	assert_null(strstr(m.payload, "device"));
	assert_non_null(strstr(m.payload, "\"detail\":\"why\""));
	wire_msg_clear(&m);
	json_decref(o);
}

static void test_transport(void **state)
{
	const char *dev;
	char *s;

	(void)state;
	s = wire_render("gw", 12, "{\"ts\":1}", 1000, 1000, 30000);
	assert_string_equal(s, "{\"id\":\"gw:12\",\"ts\":1}");
	free(s);
	s = wire_render("gw", 13, "{\"ts\":1}", 1000, 40000, 30000);
	assert_string_equal(s, "{\"id\":\"gw:13\",\"ts\":1,\"delayed\":true}");
	free(s);
	assert_null(wire_render("gw", 1, "[1]", 0, 0, 0));
	s = wire_render("gw-1", UINT64_MAX, " { } ", 0, 0, 0);
	assert_string_equal(s, "{\"id\":\"gw-1:18446744073709551615\"}");
	free(s);
	s = wire_render("g", 0, "{\n \"a\":\"}\" }\n", 0, 5, 1);
	assert_string_equal(s, "{\"id\":\"g:0\",\"a\":\"}\",\"delayed\":true}");
	free(s);
	assert_true(wire_retained("status"));
	assert_true(wire_retained("device/d1/state"));
	assert_false(wire_retained("status/event"));
	assert_false(wire_retained("device/d1/alarm"));
	assert_false(wire_retained("device/state"));
	assert_int_equal(wire_command_topic("cmd", &dev), 1);
	assert_null(dev);
	assert_int_equal(wire_command_topic("cmd/d1", &dev), 1);
	assert_string_equal(dev, "d1");
	assert_int_equal(wire_command_topic("cmd/d1/result", &dev), 0);
	assert_int_equal(wire_command_topic("cmd/", &dev), 0);
	assert_int_equal(wire_command_topic("status", &dev), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_values),         cmocka_unit_test(test_value_text),
		cmocka_unit_test(test_telemetry_text), cmocka_unit_test(test_ids),
		cmocka_unit_test(test_status),         cmocka_unit_test(test_results),
		cmocka_unit_test(test_transport),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
