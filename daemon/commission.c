#include "commission.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
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
