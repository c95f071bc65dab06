/* Unit tests of the configuration loader: parsers, defaults, cross checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "modbus_config.h"

/* tests run from the top of the tree (tests/run.sh) */
#define CGW_TEST_PROFILES "config/profiles"

static void test_durations(void **state)
{
	int64_t ms;

	(void)state;
	assert_int_equal(cfg_parse_duration("500ms", &ms), 0);
	assert_int_equal(ms, 500);
	assert_int_equal(cfg_parse_duration("5s", &ms), 0);
	assert_int_equal(ms, 5000);
	assert_int_equal(cfg_parse_duration("2m", &ms), 0);
	assert_int_equal(ms, 120000);
	assert_int_equal(cfg_parse_duration("1h", &ms), 0);
	assert_int_equal(ms, 3600000);
	assert_int_equal(cfg_parse_duration("7d", &ms), 0);
	assert_int_equal(ms, 7 * 86400000LL);
	assert_int_equal(cfg_parse_duration("1.5s", &ms), 0);
	assert_int_equal(ms, 1500);
	/* a bare number is ambiguous: refused */
	assert_int_not_equal(cfg_parse_duration("5", &ms), 0);
	assert_int_not_equal(cfg_parse_duration("5 s", &ms), 0);
	assert_int_not_equal(cfg_parse_duration("-5s", &ms), 0);
	assert_int_not_equal(cfg_parse_duration("s", &ms), 0);
	assert_int_not_equal(cfg_parse_duration("5y", &ms), 0);
	assert_int_not_equal(cfg_parse_duration("", &ms), 0);
	assert_int_not_equal(cfg_parse_duration("99999999999999999999d", &ms), 0);
}

static void test_sizes(void **state)
{
	int64_t b;

	(void)state;
	assert_int_equal(cfg_parse_size("64MB", &b), 0);
	assert_int_equal(b, 64LL << 20);
	assert_int_equal(cfg_parse_size("512KB", &b), 0);
	assert_int_equal(b, 512LL << 10);
	assert_int_equal(cfg_parse_size("2GB", &b), 0);
	assert_int_equal(b, 2LL << 30);
	assert_int_equal(cfg_parse_size("100", &b), 0);
	assert_int_equal(b, 100);
	assert_int_not_equal(cfg_parse_size("64XB", &b), 0);
	assert_int_not_equal(cfg_parse_size("MB", &b), 0);
	assert_int_not_equal(cfg_parse_size("-1MB", &b), 0);
	/* a share of the filesystem: -percent, resolved where it is used */
	assert_int_equal(cfg_parse_size("50%", &b), 0);
	assert_int_equal(b, -50);
	assert_int_not_equal(cfg_parse_size("0%", &b), 0);
	assert_int_not_equal(cfg_parse_size("101%", &b), 0);
	assert_int_not_equal(cfg_parse_size("2.5%", &b), 0);
	assert_int_not_equal(cfg_parse_size("%", &b), 0);
}

static struct cgw_config *load(const char *text, struct cfg_errors *errs)
{
	struct cgw_config *cfg = NULL;

	memset(errs, 0, sizeof(*errs));
	config_load_string("t.yaml", text, strlen(text), &cfg, errs);
	return cfg;
}

static void test_defaults(void **state)
{
	struct cfg_errors errs;
	struct cgw_config *cfg =
		load("gateway: {id: g, site: s}\n"
		     "buses: [{name: b, type: modbus-tcp, host: 127.0.0.1}]\n"
		     "uplinks: [{name: u, type: mqtt, url: 'mqtt://127.0.0.1'},\n"
		     "          {name: h, type: http, url: 'http://localhost:8080/x'}]\n",
		     &errs);

	(void)state;
	assert_non_null(cfg);
	assert_int_equal(errs.n, 0);
	assert_string_equal(cfg->gateway.state_dir, "/var/lib/cgw");
	assert_int_equal(cfg->store.max_size, -50); /* 50% of the filesystem */
	assert_int_equal(cfg->store.min_free, -1);  /* 1% */
	assert_int_equal(cfg->store.telemetry_retention_ms, 7 * 86400000LL);
	assert_int_equal(cfg->store.sync, CFG_SYNC_NORMAL);
	assert_ptr_equal(cfg->buses[0].kind, &modbus_tcp_bus_type);
	assert_int_equal(modbus_opts(&cfg->buses[0])->port, 502);
	assert_int_equal(modbus_opts(&cfg->buses[0])->timeout_ms, 1000);
	assert_int_equal(modbus_opts(&cfg->buses[0])->max_gap, 8);
	assert_int_equal(modbus_opts(&cfg->buses[0])->offline_after, 3);
	assert_string_equal(cfg->uplinks[0].topic_prefix, "cgw/{site}/{gateway}");
	assert_string_equal(cfg->uplinks[0].client_id, "g");
	assert_int_equal(cfg->uplinks[0].port, 1883);
	assert_false(cfg->uplinks[0].tls);
	assert_int_equal(cfg->uplinks[0].send_mask, 0xf);
	assert_int_equal(cfg->uplinks[1].send_mask, 1u << CGW_LANE_ALARM);
	assert_int_equal(cfg->uplinks[1].port, 8080);
	assert_int_equal(cfg->uplinks[0].late_after_ms, 30000);
	assert_true(cfg->metrics.enabled);
	assert_string_equal(cfg->control.socket, "/run/cgw/cgwd.sock");
	config_free(cfg);
}

static void test_profile_resolution(void **state)
{
	struct cfg_errors errs;
	struct cgw_config *cfg;

	(void)state;
	setenv("CGW_PROFILES_DIR", CGW_TEST_PROFILES, 1);
	cfg = load("gateway: {id: g, site: s}\n"
		   "buses: [{name: b, type: modbus-rtu, device: /dev/null, max_gap: 2}]\n"
		   "devices:\n"
		   "  - {id: d1, name: 烟感, profile: smoke-detector, bus: b, unit: 3, poll: 2s,\n"
		   "     location: {building: '3', floor: '3'}}\n",
		   &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.v[i]);
	assert_non_null(cfg);
	const struct cfg_device *d = &cfg->devices[0];
	const struct cfg_profile *pr = cfg_device_profile(cfg, d);
	assert_string_equal(pr->name, "smoke-detector");
	assert_int_equal(pr->class, CFG_CLASS_FIRE);
	assert_int_equal(d->poll_ms, 2000);
	assert_int_equal(d->max_gap, 2); /* inherited from the bus */
	assert_int_equal(d->retries, 1); /* the bus default */
	assert_string_equal(cfg_device_location(d, "floor"), "3");
	assert_null(cfg_device_location(d, "room"));
	/* the smoke alarm compares the enum word */
	const struct cfg_alarm *a = &pr->alarms[0];
	assert_string_equal(a->name, "smoke");
	assert_int_equal(a->op, CFG_OP_EQUALS);
	assert_int_equal(a->operand.type, CGW_V_STRING);
	assert_string_equal(a->operand.s, "alarm");
	assert_string_equal(pr->points[a->point_idx].name, "status");
	assert_true(a->latch);
	assert_int_equal(a->severity, CFG_SEV_CRITICAL);
	/* overheat: above with deadband and on_delay */
	const struct cfg_alarm *o = &pr->alarms[2];
	assert_int_equal(o->op, CFG_OP_ABOVE);
	assert_true(o->threshold == 57.0);
	assert_true(o->deadband == 2.0);
	assert_int_equal(o->on_delay_ms, 3000);
	assert_int_equal(cfg_find_device(cfg, "d1"), 0);
	assert_int_equal(cfg_find_device(cfg, "nope"), -1);
	config_free(cfg);
}

static void test_all_errors_reported(void **state)
{
	struct cfg_errors errs;
	struct cgw_config *cfg = load("gateway: {id: g, site: s, colour: red}\n"
				      "store: {max_size: big}\n"
				      "buses:\n"
				      "  - {name: b, type: can-bus}\n",
				      &errs);

	(void)state;
	assert_null(cfg);
	assert_int_equal(errs.n, 3);
	assert_string_equal(errs.v[0], "t.yaml:1: unknown key 'colour' in gateway");
	assert_string_equal(
		errs.v[1],
		"t.yaml:2: max_size: expected a size like 512KB, 64MB or 2GB, got 'big'");
	assert_string_equal(
		errs.v[2],
		"t.yaml:4: type: 'can-bus' is not one of: modbus-rtu, modbus-tcp, mqtt, modbus-rtu-tcp");
	cfg_errors_free(&errs);
}

static void test_wrong_shapes(void **state)
{
	static const char *const bad[] = {
		"gateway: [1, 2]\n",
		"gateway: {id: g, site: s}\ndevices: {id: x}\n",
		"gateway: {id: g, site: s}\nbuses: [[1]]\n",
		"gateway: {id: g, site: s}\nuplinks: [{name: u, type: mqtt, url: {a: 1}}]\n",
		"gateway: {id: g, site: s}\nprofile_dirs: 7\n",
		"gateway: {id: g, site: s}\ninclude: {a: b}\n",
		"gateway: {id: 'bad id/with slash', site: s}\n",
		"gateway: {id: g, site: s}\nuplinks: [{name: u, type: mqtt, url: 'mqtt://:99'}]\n",
		"gateway: {id: g, site: s}\nuplinks: [{name: u, type: mqtt, url: 'mqtt://h:0'}]\n",
		"gateway: {id: g, site: s}\nuplinks: [{name: u, type: mqtt, url: 'mqtt://[::1'}]\n",
		"gateway: {id: g, site: s}\nuplinks: [{name: u, type: http, url: 'http://h', send: [sms]}]\n",
		"gateway: {id: g, site: s}\n? [a]\n: b\n",
		"gateway: {id: g, site: s}\nbuses: [{name: b, type: mqtt, url: 'mqtt://127.0.0.1'}]\n"
		"devices: [{id: d, name: n, profile: '../../etc/passwd', bus: b, topic: t}]\n",
		"\t- broken",
		"&a [*a]",
		/* libfyaml 0.7 loops forever on this: refused before parsing */
		"a: b\n% - {nam\xff\xff\n",
		"gateway: {id: g, site: \"\xc0\xaf\"}\n",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct cfg_errors errs;
		struct cgw_config *cfg = load(bad[i], &errs);
		if (cfg)
			fail_msg("accepted: %s", bad[i]);
		assert_true(errs.n > 0);
		for (size_t j = 0; j < errs.n; j++)
			assert_true(strncmp(errs.v[j], "t.yaml:", 7) == 0);
		cfg_errors_free(&errs);
	}
}

static void test_ipv6_and_tls_urls(void **state)
{
	struct cfg_errors errs;
	struct cgw_config *cfg =
		load("gateway: {id: g, site: s}\n"
		     "uplinks:\n"
		     "  - {name: a, type: mqtt, url: 'mqtt://[::1]:1999'}\n"
		     "  - {name: b, type: mqtt, url: 'mqtts://platform.example.net'}\n"
		     "  - {name: c, type: mqtt, url: 'mqtt://10.1.2.3', insecure: true}\n",
		     &errs);

	(void)state;
	assert_non_null(cfg);
	assert_string_equal(cfg->uplinks[0].host, "::1");
	assert_int_equal(cfg->uplinks[0].port, 1999);
	assert_true(cfg->uplinks[1].tls);
	assert_int_equal(cfg->uplinks[1].port, 8883);
	assert_true(cfg->uplinks[2].insecure);
	config_free(cfg);
}

/* Loopback means loopback: names and addresses, parsed, never a prefix. */
static void test_loopback_is_parsed(void **state)
{
	static const char *const local[] = {
		"localhost", "LocalHost",       "127.0.0.1",        "127.255.3.4", "::1",
		"[::1]",     "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", NULL};
	static const char *const remote[] = {"127.0.0.1.nip.io",
					     "127.attacker.example",
					     "localhost.example",
					     "localhost.",
					     "0177.0.0.1",
					     "127.1",
					     "2130706433",
					     "0x7f.0.0.1",
					     "127.0.0.1 ",
					     " 127.0.0.1",
					     "128.0.0.1",
					     "::2",
					     "[::1",
					     "::ffff:10.0.0.1",
					     "::127.0.0.1",
					     "[127.0.0.1]",
					     "",
					     "localhost:1883",
					     "127.0.0.01",
					     NULL};

	(void)state;
	for (int i = 0; local[i]; i++)
		if (!cfg_is_loopback(local[i]))
			fail_msg("'%s' must count as loopback", local[i]);
	for (int i = 0; remote[i]; i++)
		if (cfg_is_loopback(remote[i]))
			fail_msg("'%s' must not count as loopback", remote[i]);
	assert_false(cfg_is_loopback(NULL));
}

/* The same rule decides for MQTT and HTTP uplinks: a near miss needs TLS or
 * insecure: true. */
static void test_plaintext_near_misses_refused(void **state)
{
	static const char *const hosts[] = {"127.0.0.1.nip.io", "127.attacker.example",
					    "localhost.example", "0177.0.0.1", NULL};
	char text[512];
	struct cfg_errors errs;

	(void)state;
	for (int i = 0; hosts[i]; i++) {
		for (int http = 0; http < 2; http++) {
			snprintf(text, sizeof(text),
				 "gateway: {id: g, site: s}\n"
				 "uplinks:\n"
				 "  - {name: a, type: %s, url: '%s://%s:1999'}\n",
				 http ? "http" : "mqtt", http ? "http" : "mqtt", hosts[i]);
			struct cgw_config *cfg = load(text, &errs);
			if (cfg)
				fail_msg("plaintext %s to %s accepted", http ? "http" : "mqtt",
					 hosts[i]);
			cfg_errors_free(&errs);
			snprintf(text, sizeof(text),
				 "gateway: {id: g, site: s}\n"
				 "uplinks:\n"
				 "  - {name: a, type: %s, url: '%s://%s:1999', insecure: true}\n",
				 http ? "http" : "mqtt", http ? "http" : "mqtt", hosts[i]);
			cfg = load(text, &errs);
			assert_non_null(cfg);
			config_free(cfg);
			cfg_errors_free(&errs);
		}
	}
}

static void test_invalid_and_range(void **state)
{
	struct cfg_errors errs;
	struct cgw_config *cfg;
	struct cgw_value v;

	(void)state;
	setenv("CGW_PROFILES_DIR", CGW_TEST_PROFILES, 1);
	cfg = load("gateway: {id: g, site: s}\n"
		   "profile_dirs: [tests/config/profiles]\n"
		   "buses: [{name: b, type: modbus-tcp, host: 127.0.0.1}]\n"
		   "devices: [{id: d1, name: n, profile: validity, bus: b}]\n",
		   &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.v[i]);
	assert_non_null(cfg);
	const struct cfg_profile *pr = cfg_device_profile(cfg, &cfg->devices[0]);
	const struct cfg_point *t = &pr->points[0], *l = &pr->points[1], *dn = &pr->points[2];
	/* int16 * 0.1: raw 0x7FFF is 3276.7, raw -32768 is -3276.8 */
	v = (struct cgw_value){.type = CGW_V_DOUBLE, .d = 3276.7};
	assert_int_equal(cfg_point_check_value(t, &v), CFG_VALUE_INVALID);
	v.d = -3276.8;
	assert_int_equal(cfg_point_check_value(t, &v), CFG_VALUE_INVALID);
	v.d = 23.5;
	assert_int_equal(cfg_point_check_value(t, &v), CFG_VALUE_OK);
	v.d = 125.1; /* outside range: bad, not a value */
	assert_int_equal(cfg_point_check_value(t, &v), CFG_VALUE_OUT_OF_RANGE);
	v.d = -40.0; /* the limits are in range */
	assert_int_equal(cfg_point_check_value(t, &v), CFG_VALUE_OK);
	/* uint16: -1 is the register 0xFFFF */
	v = (struct cgw_value){.type = CGW_V_UINT, .u = 65535};
	assert_int_equal(cfg_point_check_value(l, &v), CFG_VALUE_INVALID);
	v.u = 101;
	assert_int_equal(cfg_point_check_value(l, &v), CFG_VALUE_OUT_OF_RANGE);
	v.u = 100;
	assert_int_equal(cfg_point_check_value(l, &v), CFG_VALUE_OK);
	v = (struct cgw_value){.type = CGW_V_DOUBLE, .d = -9999.0};
	assert_int_equal(cfg_point_check_value(dn, &v), CFG_VALUE_INVALID);
	v.d = 1e6; /* no range: anything else is a value */
	assert_int_equal(cfg_point_check_value(dn, &v), CFG_VALUE_OK);
	v = (struct cgw_value){.type = CGW_V_BOOL, .b = true};
	assert_int_equal(cfg_point_check_value(dn, &v), CFG_VALUE_OK);
	config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_durations),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_profile_resolution),
		cmocka_unit_test(test_all_errors_reported),
		cmocka_unit_test(test_wrong_shapes),
		cmocka_unit_test(test_ipv6_and_tls_urls),
		cmocka_unit_test(test_loopback_is_parsed),
		cmocka_unit_test(test_plaintext_near_misses_refused),
		cmocka_unit_test(test_invalid_and_range),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
