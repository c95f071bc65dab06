/*
 * test_bus_type.c - a type of bus declared outside daemon/: the registry
 * below replaces drivers/bus_types.c in this binary (the linker takes this
 * definition of cfg_bus_types and never pulls that member of libcgw.a), and
 * adds `toy`, a type with two keys, declared in this file alone. The loader,
 * the reload diff and --help-config handle it without a change: what
 * config_keys.h promises a driver.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "config_diff.h"
#include "config_keys.h"
#include "modbus_config.h"
#include "mqtt_ingest.h"

struct toy_opts {
	char *address;
	int64_t speed;
};

static const struct cfg_key toy_keys[] = {
	{"address", K_STR, CFG_OFF(struct toy_opts, address), NULL, 0, 0, 0, NULL, NULL,
	 "where the toy is"},
	{"speed", K_INT, CFG_OFF(struct toy_opts, speed), "5", 0, 1, 10, NULL, NULL,
	 "how fast it goes"},
};

static int toy_check(struct cfg_loader *ld, struct cfg_bus *b)
{
	const struct toy_opts *o = b->opts;

	if (o->speed == 7) {
		cfg_bus_error(ld, b, "speed", "speed 7 is not for toys");
		return 1;
	}
	return 0;
}

static void toy_device_defaults(const struct cfg_bus *b, struct cfg_device *d)
{
	if (d->timeout_ms < 0)
		d->timeout_ms = ((const struct toy_opts *)b->opts)->speed * 100;
}

static const struct cfg_bus_type toy_bus_type = {
	.name = "toy",
	.help = "a bus that exists in this test only",
	.keys = toy_keys,
	.n_keys = sizeof(toy_keys) / sizeof(toy_keys[0]),
	.opts_size = sizeof(struct toy_opts),
	.required = "address",
	.devices = CFG_DEVICES_MODBUS,
	.check = toy_check,
	.device_defaults = toy_device_defaults,
};

const struct cfg_bus_type *const cfg_bus_types[] = {
	&modbus_rtu_bus_type,     &modbus_tcp_bus_type, &mqtt_bus_type,
	&modbus_rtu_tcp_bus_type, &toy_bus_type,        NULL,
};

static struct cgw_config *load(const char *buses, struct cfg_errors *errs)
{
	struct cgw_config *cfg = NULL;
	char *text;

	memset(errs, 0, sizeof(*errs));
	assert_true(asprintf(&text,
			     "gateway: {id: g, site: s}\n"
			     "buses:\n%s"
			     "devices:\n"
			     "  - {id: d1, name: d, profile: smoke-detector, bus: t, unit: 1}\n",
			     buses) > 0);
	config_load_string("t.yaml", text, strlen(text), &cfg, errs);
	free(text);
	return cfg;
}

static bool has_error(const struct cfg_errors *e, const char *msg)
{
	for (size_t i = 0; i < e->n; i++)
		if (strstr(e->v[i], msg))
			return true;
	for (size_t i = 0; i < e->n; i++)
		print_error("  got: %s\n", e->v[i]);
	return false;
}

static void test_toy_loads(void **state)
{
	struct cfg_errors errs;
	struct cgw_config *cfg = load("  - {name: t, type: toy, address: here, speed: 3}\n", &errs);

	(void)state;
	for (size_t i = 0; i < errs.n; i++)
		print_error("%s\n", errs.v[i]);
	assert_non_null(cfg);
	assert_ptr_equal(cfg->buses[0].kind, &toy_bus_type);
	assert_string_equal(cfg_bus_type_name(&cfg->buses[0]), "toy");
	assert_string_equal(((struct toy_opts *)cfg->buses[0].opts)->address, "here");
	assert_int_equal(((struct toy_opts *)cfg->buses[0].opts)->speed, 3);
	assert_int_equal(cfg->devices[0].timeout_ms, 300); /* the type's device defaults */
	assert_int_equal(cfg->buses[0].n_devices, 1);
	config_free(cfg);

	cfg = load("  - {name: t, type: toy, address: here}\n", &errs);
	assert_non_null(cfg);
	assert_int_equal(((struct toy_opts *)cfg->buses[0].opts)->speed, 5); /* default */
	config_free(cfg);
}

static void test_toy_errors(void **state)
{
	struct cfg_errors errs;
	struct cgw_config *cfg;

	(void)state;
	/* the type's check, at the line of its key */
	cfg = load("  - name: t\n    type: toy\n    address: here\n    speed: 7\n", &errs);
	assert_null(cfg);
	assert_true(has_error(&errs, "t.yaml:6: bus 't': speed 7 is not for toys"));
	cfg_errors_free(&errs);
	/* its range, from its table */
	cfg = load("  - {name: t, type: toy, address: here, speed: 11}\n", &errs);
	assert_null(cfg);
	assert_true(has_error(&errs, "t.yaml:3: speed: 11 is out of range (1..10)"));
	cfg_errors_free(&errs);
	/* its required key */
	cfg = load("  - {name: t, type: toy}\n", &errs);
	assert_null(cfg);
	assert_true(has_error(&errs, "t.yaml:3: bus 't': missing required key 'address'"));
	cfg_errors_free(&errs);
	/* another type's key on a toy, a toy's key on another type */
	cfg = load("  - {name: t, type: toy, address: here, baud: 9600}\n", &errs);
	assert_null(cfg);
	assert_true(has_error(&errs, "t.yaml:3: bus 't': key 'baud' does not apply to a toy bus"));
	cfg_errors_free(&errs);
	cfg = load("  - {name: t, type: modbus-tcp, host: h, speed: 3}\n", &errs);
	assert_null(cfg);
	assert_true(has_error(&errs, "key 'speed' does not apply to a modbus-tcp bus"));
	cfg_errors_free(&errs);
	/* the list of types comes from the registry */
	cfg = load("  - {name: t, type: tyo, address: here}\n", &errs);
	assert_null(cfg);
	assert_true(has_error(
		&errs,
		"type: 'tyo' is not one of: modbus-rtu, modbus-tcp, mqtt, modbus-rtu-tcp, toy"));
	cfg_errors_free(&errs);
	/* and the hints too */
	cfg = load("  - {name: t, type: toy, address: here, sped: 3}\n", &errs);
	assert_null(cfg);
	assert_true(has_error(&errs, "unknown key 'sped' in bus (did you mean 'speed'?)"));
	cfg_errors_free(&errs);
}

/* a reload compares the toy's keys through its table */
static void test_toy_diff(void **state)
{
	struct cfg_errors errs;
	struct cgw_config *a = load("  - {name: t, type: toy, address: here, speed: 3}\n", &errs);
	struct cgw_config *b = load("  - {name: t, type: toy, address: here, speed: 3}\n", &errs);
	struct cgw_config *c = load("  - {name: t, type: toy, address: here, speed: 4}\n", &errs);
	struct cgw_config *d = load("  - {name: t, type: toy, address: there, speed: 3}\n", &errs);

	(void)state;
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(c);
	assert_non_null(d);
	assert_true(cfg_bus_equal(a, 0, b, 0));
	assert_false(cfg_bus_equal(a, 0, c, 0));
	assert_false(cfg_bus_equal(a, 0, d, 0));
	config_free(a);
	config_free(b);
	config_free(c);
	config_free(d);
}

/* --help-config documents it, with the types each key applies to */
static void test_toy_reference(void **state)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	(void)state;
	assert_non_null(f);
	config_print_reference(f);
	fclose(f);
	assert_non_null(strstr(buf, "        toy: a bus that exists in this test only\n"));
	assert_non_null(strstr(buf, "  speed                an integer; default: 5\n"
				    "      toy: how fast it goes\n"));
	assert_non_null(strstr(buf, "      modbus-tcp, modbus-rtu-tcp: TCP port\n"));
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_toy_loads),
		cmocka_unit_test(test_toy_errors),
		cmocka_unit_test(test_toy_diff),
		cmocka_unit_test(test_toy_reference),
	};
	setenv("CGW_PROFILES_DIR", "config/profiles", 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
