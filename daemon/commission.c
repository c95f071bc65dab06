#include "commission.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "modbus_decode.h"

static json_t *value_json(const struct cgw_value *v)
{
	switch (v->type) {
	case CGW_V_INT:
		return json_integer((json_int_t)v->i);
	case CGW_V_UINT:
		/* JSON integers are signed 64-bit here: beyond, as a decimal */
		return v->u <= INT64_MAX ? json_integer((json_int_t)v->u) : json_real((double)v->u);
	case CGW_V_DOUBLE:
		return isfinite(v->d) ? json_real(v->d) : json_null();
	default:
		return json_null();
	}
}

static json_t *decode(const uint16_t *regs, size_t n, enum cgw_ptype t, enum cgw_order o)
{
	struct mb_format f = MB_FORMAT_INIT;
	struct cgw_value v = {.type = CGW_V_NONE};
	enum cgw_quality q;

	f.type = t;
	f.order = o;
	if (mbd_decode_regs(&f, regs, n, &v, &q) < 0)
		return NULL;
	json_t *j = value_json(&v);
	cgw_value_clear(&v);
	return j;
}

json_t *commission_readings(const uint16_t *regs, size_t n)
{
	static const enum cgw_ptype wide[] = {CGW_T_INT32, CGW_T_UINT32, CGW_T_FLOAT32,
					      CGW_T_INT64, CGW_T_UINT64, CGW_T_FLOAT64};
	static const enum cgw_order orders[] = {CGW_ORDER_ABCD, CGW_ORDER_CDAB, CGW_ORDER_BADC,
						CGW_ORDER_DCBA};
	json_t *o = json_object();
	char *ascii;

	if (!o)
		return NULL;
	if (n >= 1) {
		json_object_set_new(o, "uint16", decode(regs, n, CGW_T_UINT16, CGW_ORDER_ABCD));
		json_object_set_new(o, "int16", decode(regs, n, CGW_T_INT16, CGW_ORDER_ABCD));
	}
	for (size_t t = 0; t < sizeof(wide) / sizeof(wide[0]); t++) {
		struct mb_format f = MB_FORMAT_INIT;
		f.type = wide[t];
		if (n < mbd_reg_count(&f))
			continue;
		json_t *byorder = json_object();
		for (size_t k = 0; byorder && k < 4; k++) {
			json_t *v = decode(regs, n, wide[t], orders[k]);
			if (v)
				json_object_set_new(byorder, mbd_order_name(orders[k]), v);
		}
		if (byorder)
			json_object_set_new(o, mbd_type_name(wide[t]), byorder);
	}
	ascii = malloc(2 * n + 1);
	if (ascii) {
		for (size_t i = 0; i < n; i++) {
			unsigned char hi = regs[i] >> 8, lo = regs[i] & 0xff;
			ascii[2 * i] = hi >= 0x20 && hi < 0x7f ? (char)hi : '.';
			ascii[2 * i + 1] = lo >= 0x20 && lo < 0x7f ? (char)lo : '.';
		}
		ascii[2 * n] = '\0';
		json_object_set_new(o, "ascii", json_string(ascii));
		free(ascii);
	}
	return o;
}

static int parse_unit(const char **p, long *out)
{
	char *end;

	if (!isdigit((unsigned char)**p))
		return -EINVAL;
	errno = 0;
	*out = strtol(*p, &end, 10);
	if (errno || *out < 1 || *out > 247)
		return -ERANGE;
	*p = end;
	return 0;
}

int commission_parse_units(const char *s, uint8_t bitmap[32], const char **why)
{
	const char *p = s;
	bool any = false;

	memset(bitmap, 0, 32);
	if (!s || !*s || strlen(s) > 1024) {
		*why = "UNITS is empty or too long (e.g. 1-247, or 1,3,5-9)";
		return -EINVAL;
	}
	while (*p) {
		long a, b;
		int r = parse_unit(&p, &a);
		if (r == 0 && *p == '-') {
			p++;
			r = parse_unit(&p, &b);
		} else {
			b = a;
		}
		if (r < 0 || a > b || (*p && *p != ',')) {
			*why = r == -ERANGE ?
				       "unit ids are 1..247" :
				       "UNITS is a list of ids and ranges (e.g. 1-247, or 1,3,5-9)";
			return -EINVAL;
		}
		for (long u = a; u <= b; u++)
			bitmap[u / 8] |= (uint8_t)(1u << (u % 8));
		any = true;
		if (*p == ',')
			p++;
	}
	if (!any) {
		*why = "no unit ids in UNITS";
		return -EINVAL;
	}
	return 0;
}

static int table_arg(const char *s)
{
	static const char *const names[] = {"coil", "discrete", "input", "holding"};

	for (int i = 0; s && i < 4; i++)
		if (!strcmp(s, names[i]))
			return i;
	return -1;
}

/* An integer member in [lo, hi], or def when absent; -1 when invalid. */
static long long int_arg(json_t *req, const char *key, long long lo, long long hi, long long def)
{
	json_t *v = json_object_get(req, key);

	if (!v)
		return def;
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return -1;
	return json_integer_value(v);
}

static const char *str_arg(json_t *req, const char *key)
{
	const char *s = json_string_value(json_object_get(req, key));

	return s && *s && strlen(s) <= 256 ? s : NULL;
}

#define WHY(...)                                     \
	do {                                         \
		snprintf(why, why_len, __VA_ARGS__); \
		return -EINVAL;                      \
	} while (0)

int commission_request(const struct cgw_config *cfg, json_t *req, bool scan,
		       struct driver_commission *dc, const char **bus_out, char *why,
		       size_t why_len)
{
	const char *bus = str_arg(req, "bus"), *units = str_arg(req, "units");
	const char *tname = str_arg(req, "table"), *uwhy = NULL;
	long long v;
	long b = -1;

	memset(dc, 0, sizeof(*dc));
	dc->kind = scan ? DRV_SCAN : DRV_PROBE;
	if (!bus)
		WHY("%s", scan ? "scan needs \"bus\": a bus of cgw.yaml, by name" :
				 "probe needs \"bus\", \"unit\", \"table\" and \"address\"");
	for (size_t i = 0; i < cfg->n_buses && b < 0; i++)
		if (!strcmp(cfg->buses[i].name, bus))
			b = (long)i;
	if (b < 0)
		WHY("no bus '%s' in the configuration: only a bus the installer named in "
		    "cgw.yaml is scanned or probed",
		    bus);
	dc->table = tname ? table_arg(tname) : (scan ? CGW_TBL_HOLDING : -1);
	if (dc->table < 0)
		WHY("\"table\": coil, discrete, input or holding");
	if ((v = int_arg(req, "address", 0, 65535, scan ? 0 : -1)) < 0)
		WHY("\"address\": 0..65535 (0-based protocol address)");
	dc->address = (uint16_t)v;
	/* 0: the bus's timeout, which its driver knows (a scan: at most 200 ms) */
	if ((v = int_arg(req, "timeout_ms", 10, 10000, 0)) < 0)
		WHY("\"timeout_ms\": 10..10000");
	dc->timeout_ms = v;
	if (scan) {
		if (commission_parse_units(units ? units : "1-247", dc->units, &uwhy) < 0)
			WHY("%s", uwhy);
	} else {
		bool bits = dc->table == CGW_TBL_COIL || dc->table == CGW_TBL_DISCRETE;
		if ((v = int_arg(req, "unit", 0, 247, -1)) < 0)
			WHY("probe needs \"unit\": 0..247");
		dc->unit = (uint8_t)v;
		if ((v = int_arg(req, "count", 1, bits ? 2000 : 125, 4)) < 0 ||
		    dc->address + v > 65536)
			WHY("%s", bits ? "\"count\": 1..2000 bits within the table" :
					 "\"count\": 1..125 registers within the table");
		dc->count = (uint16_t)v;
	}
	*bus_out = bus;
	return 0;
}

void commission_refusal(int r, const char *bus, char *out, size_t len)
{
	snprintf(out, len, "bus '%s': %s", bus,
		 r == -EPROTOTYPE ? "not a Modbus bus" :
		 r == -ENODEV     ? "not running (a bus without devices is not opened: "
				    "add one device on it)" :
		 r == -EBUSY      ? "busy: a scan is running on it, or too many scans and "
				    "probes in flight" :
				    strerror(-r));
}
