/* Unit tests of the configuration comparison a reload is decided on:
 * equal means equal in meaning (positions and indexes do not count), and a
 * change anywhere in a bus, device, profile or uplink is seen. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "config_diff.h"
#include "mqtt_ingest.h"

/* tests run from the top of the tree (tests/run.sh) */
#define CGW_TEST_PROFILES "config/profiles"

/* The base text, with %s slots: a prefix (comments shift every line), the
 * fire-io timeout, smoke-1's poll, the uplink's keepalive, the gateway site. */
static const char BASE[] = "%s"
			   "gateway: {id: gw, site: %s}\n"
			   "buses:\n"
			   "  - {name: fire-io, type: modbus-tcp, host: 127.0.0.1, port: 1502, "
			   "timeout: %s}\n"
			   "  - {name: door-io, type: modbus-tcp, host: 127.0.0.1, port: 1503}\n"
			   "devices:\n"
			   "  - {id: smoke-1, name: 烟感1, profile: smoke-detector, bus: fire-io, "
			   "unit: 1, poll: %s}\n"
			   "  - {id: smoke-2, name: 烟感2, profile: smoke-detector, bus: fire-io, "
			   "unit: 2}\n"
			   "  - {id: door-1, name: 门1, profile: door-io, bus: door-io, unit: 3}\n"
			   "uplinks:\n"
			   "  - {name: platform, type: mqtt, url: 'mqtt://127.0.0.1:1883', "
			   "keepalive: %s}\n";

static struct cgw_config *load(const char *prefix, const char *site, const char *timeout,
			       const char *poll, const char *keepalive)
{
	struct cfg_errors errs = {0};
	struct cgw_config *cfg = NULL;
	char *text;

	assert_true(asprintf(&text, BASE, prefix, site, timeout, poll, keepalive) > 0);
	config_load_string("t.yaml", text, strlen(text), &cfg, &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.v[i]);
	cfg_errors_free(&errs);
	free(text);
	assert_non_null(cfg);
	return cfg;
}

static struct cgw_config *base(void)
{
	return load("", "s", "1s", "1s", "30s");
}

static void test_identical_and_moved_lines(void **state)
{
	struct cgw_config *a = base(), *b = load("# a comment\n\n", "s", "1s", "1s", "30s");

	(void)state;
	assert_int_not_equal(a->devices[0].o.line, b->devices[0].o.line);
	for (size_t i = 0; i < a->n_buses; i++)
		assert_true(cfg_bus_equal(a, i, b, i));
	for (size_t i = 0; i < a->n_devices; i++)
		assert_true(cfg_device_equal(a, &a->devices[i], b, &b->devices[i]));
	assert_true(cfg_uplink_equal(a, &a->uplinks[0], b, &b->uplinks[0]));
	assert_false(cfg_store_differs(a, b));
	/* different devices, profiles: not equal */
	assert_false(cfg_device_equal(a, &a->devices[0], b, &b->devices[1]));
	assert_false(cfg_device_equal(a, &a->devices[0], b, &b->devices[2]));
	assert_false(cfg_bus_equal(a, 0, b, 1));
	config_free(a);
	config_free(b);
}

static void test_changed_device(void **state)
{
	struct cgw_config *a = base(), *b = load("", "s", "1s", "2s", "30s");

	(void)state;
	assert_false(cfg_device_equal(a, &a->devices[0], b, &b->devices[0]));
	assert_true(cfg_device_equal(a, &a->devices[1], b, &b->devices[1]));
	/* its profile is the same: its alarm state can be carried over */
	assert_true(cfg_profile_equal(&a->profiles[a->devices[0].profile],
				      &b->profiles[b->devices[0].profile]));
	/* its bus restarts, the other stays */
	assert_false(cfg_bus_equal(a, 0, b, 0));
	assert_true(cfg_bus_equal(a, 1, b, 1));
	assert_true(cfg_uplink_equal(a, &a->uplinks[0], b, &b->uplinks[0]));
	config_free(a);
	config_free(b);
}

static void test_changed_bus_and_uplink(void **state)
{
	struct cgw_config *a = base(), *b = load("", "s", "2s", "1s", "60s");

	(void)state;
	assert_false(cfg_bus_equal(a, 0, b, 0));
	assert_true(cfg_bus_equal(a, 1, b, 1));
	/* the devices on the other bus are untouched */
	assert_true(cfg_device_equal(a, &a->devices[2], b, &b->devices[2]));
	assert_false(cfg_uplink_equal(a, &a->uplinks[0], b, &b->uplinks[0]));
	config_free(a);
	config_free(b);
}

static void test_site_changes_uplinks_only(void **state)
{
	struct cgw_config *a = base(), *b = load("", "other", "1s", "1s", "30s");

	(void)state;
	assert_false(cfg_uplink_equal(a, &a->uplinks[0], b, &b->uplinks[0]));
	assert_true(cfg_bus_equal(a, 0, b, 0));
	assert_true(cfg_bus_equal(a, 1, b, 1));
	config_free(a);
	config_free(b);
}

static void test_device_removed_from_bus(void **state)
{
	struct cgw_config *a = base(), *b = base();

	(void)state;
	/* the bus's device list is part of it: one fewer is a change */
	b->devices[1].bus = 1;
	b->buses[0].n_devices--;
	b->buses[1].n_devices++;
	assert_false(cfg_bus_equal(a, 0, b, 0));
	assert_false(cfg_bus_equal(a, 1, b, 1));
	config_free(a);
	config_free(b);
}

static void test_profile_rule_change(void **state)
{
	struct cgw_config *a = base(), *b = base();
	struct cfg_profile *p = &b->profiles[b->devices[2].profile];

	(void)state;
	assert_true(p->n_alarms > 0);
	p->alarms[0].on_delay_ms += 1000;
	assert_false(cfg_device_equal(a, &a->devices[2], b, &b->devices[2]));
	assert_false(cfg_bus_equal(a, 1, b, 1));
	p->alarms[0].on_delay_ms -= 1000;
	assert_true(cfg_bus_equal(a, 1, b, 1));
	p->points[0].scale = 2;
	assert_false(cfg_bus_equal(a, 1, b, 1));
	p->points[0].scale = a->profiles[a->devices[2].profile].points[0].scale;
	assert_true(cfg_bus_equal(a, 1, b, 1));
	/* invalid: and range: change what a reading means: the device restarts */
	p->points[0].has_range = true;
	p->points[0].range_max = 1;
	assert_false(cfg_bus_equal(a, 1, b, 1));
	p->points[0].has_range = false;
	p->points[0].range_max = 0;
	assert_true(cfg_bus_equal(a, 1, b, 1));
	double inv = 65535;
	p->points[0].invalid = &inv;
	p->points[0].n_invalid = 1;
	assert_false(cfg_bus_equal(a, 1, b, 1));
	p->points[0].invalid = NULL;
	p->points[0].n_invalid = 0;
	config_free(a);
	config_free(b);
}

static struct cgw_config *load_buses(const char *buses)
{
	struct cfg_errors errs = {0};
	struct cgw_config *cfg = NULL;
	char *text;

	assert_true(asprintf(&text, "gateway: {id: gw, site: s}\nbuses:\n%s", buses) > 0);
	config_load_string("t.yaml", text, strlen(text), &cfg, &errs);
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.v[i]);
	cfg_errors_free(&errs);
	free(text);
	assert_non_null(cfg);
	return cfg;
}

/* A bus's options are compared through its type's table: every key counts
 * (baud here); a DTU registration counts as the bytes it decodes to, not
 * as it was written (text or hex). */
static void test_bus_options_through_table(void **state)
{
	struct cgw_config *a = load_buses(
		"  - {name: d, type: modbus-rtu-tcp, listen: 0.0.0.0:9001, register: AB, baud: 9600}\n");
	struct cgw_config *b =
		load_buses("  - {name: d, type: modbus-rtu-tcp, listen: 0.0.0.0:9001, "
			   "register_hex: '41 42', baud: 9600}\n");
	struct cgw_config *c = load_buses(
		"  - {name: d, type: modbus-rtu-tcp, listen: 0.0.0.0:9001, register: AB, baud: 19200}\n");
	struct cgw_config *d = load_buses(
		"  - {name: d, type: modbus-rtu-tcp, listen: 0.0.0.0:9001, register: AC, baud: 9600}\n");
	struct cgw_config *e = load_buses("  - {name: d, type: modbus-tcp, host: 127.0.0.1}\n");

	(void)state;
	assert_true(cfg_bus_equal(a, 0, b, 0));
	assert_false(cfg_bus_equal(a, 0, c, 0));
	assert_false(cfg_bus_equal(a, 0, d, 0));
	assert_false(cfg_bus_equal(a, 0, e, 0)); /* another type */
	config_free(a);
	config_free(b);
	config_free(c);
	config_free(d);
	config_free(e);
}

static void test_store_settings(void **state)
{
	struct cgw_config *a = base(), *b = base();

	(void)state;
	b->store.max_size++;
	assert_true(cfg_store_differs(a, b));
	config_free(a);
	config_free(b);
}

static void test_files_changed(void **state)
{
	char path[] = "/tmp/cgw-test-diff-XXXXXX";
	int fd = mkstemp(path);
	struct cfg_uplink u = {.password_file = path};
	struct mqtt_bus_opts mo = {.ca_file = path};
	struct cfg_bus bus = {.kind = &mqtt_bus_type, .opts = &mo};
	struct timespec before, after;

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	clock_gettime(CLOCK_REALTIME, &after);
	after.tv_sec += 2;
	before.tv_sec = 0;
	before.tv_nsec = 0;
	assert_false(cfg_uplink_files_changed_since(&u, &after));
	assert_true(cfg_uplink_files_changed_since(&u, &before));
	assert_false(cfg_bus_files_changed_since(&bus, &after));
	assert_true(cfg_bus_files_changed_since(&bus, &before));
	unlink(path);
	/* gone: counts as changed (the reopen will say what is wrong) */
	assert_true(cfg_uplink_files_changed_since(&u, &after));
	u.password_file = NULL;
	assert_false(cfg_uplink_files_changed_since(&u, &before));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_identical_and_moved_lines),
		cmocka_unit_test(test_changed_device),
		cmocka_unit_test(test_changed_bus_and_uplink),
		cmocka_unit_test(test_site_changes_uplinks_only),
		cmocka_unit_test(test_device_removed_from_bus),
		cmocka_unit_test(test_profile_rule_change),
		cmocka_unit_test(test_bus_options_through_table),
		cmocka_unit_test(test_store_settings),
		cmocka_unit_test(test_files_changed),
	};

	setenv("CGW_PROFILES_DIR", CGW_TEST_PROFILES, 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
