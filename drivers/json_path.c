/*
 * json_path.c - a point's value out of an MQTT JSON payload (see json_path.h).
 */
#include "json_path.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void set_why(char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_why(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	if (!why || !whylen)
		return;
	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
	/* reasons end up in logs and in the store: keep them printable ASCII
	 * even when they quote a binary payload */
	for (char *p = why; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
			*p = '?';
}

/* Nesting depth, without trusting the text to be JSON: brackets inside
 * strings do not count. jansson recurses per level, so this runs first. */
static bool too_deep(const unsigned char *p, size_t len)
{
	int depth = 0;
	bool in_str = false, esc = false;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = p[i];
		if (in_str) {
			if (esc)
				esc = false;
			else if (c == '\\')
				esc = true;
			else if (c == '"')
				in_str = false;
			continue;
		}
		if (c == '"') {
			in_str = true;
		} else if (c == '[' || c == '{') {
			if (++depth > JP_MAX_DEPTH)
				return true;
		} else if ((c == ']' || c == '}') && depth > 0) {
			depth--;
		}
	}
	return false;
}

int jp_parse(const void *buf, size_t len, size_t max_len, json_t **out, char *why, size_t whylen)
{
	json_error_t err;
	const unsigned char *nul;

	*out = NULL;
	if (len > max_len) {
		set_why(why, whylen, "payload of %zu bytes is larger than max_payload (%zu)", len,
			max_len);
		return -EFBIG;
	}
	if (len == 0 || !buf) {
		set_why(why, whylen, "empty payload");
		return -ENODATA;
	}
	nul = memchr(buf, 0, len);
	if (nul) {
		set_why(why, whylen, "binary payload (NUL byte at offset %zu)",
			(size_t)(nul - (const unsigned char *)buf));
		return -EILSEQ;
	}
	if (too_deep(buf, len)) {
		set_why(why, whylen, "nested deeper than %d levels", JP_MAX_DEPTH);
		return -ELOOP;
	}
	*out = json_loadb(buf, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
	if (!*out) {
		if (json_error_code(&err) == json_error_out_of_memory) {
			set_why(why, whylen, "out of memory");
			return -ENOMEM;
		}
		set_why(why, whylen, "invalid JSON at byte %d: %s", err.position, err.text);
		return -EILSEQ;
	}
	return 0;
}

int jp_path_check(const char *path, const char **why)
{
	size_t len, seg = 0, segs = 0;

	if (!path || !*path)
		return 0;
	len = strlen(path);
	if (len > JP_PATH_MAX) {
		if (why)
			*why = "path is longer than 255 bytes";
		return -EINVAL;
	}
	for (size_t i = 0; i <= len; i++) {
		if (path[i] == '.' || path[i] == '\0') {
			if (seg == 0) {
				if (why)
					*why = "path has an empty segment (leading, trailing or "
					       "doubled '.')";
				return -EINVAL;
			}
			seg = 0;
			segs++;
		} else {
			seg++;
		}
	}
	if (segs > JP_MAX_DEPTH) {
		if (why)
			*why = "path is deeper than a payload may be nested";
		return -EINVAL;
	}
	return 0;
}

/* A segment of 1..9 decimal digits as an array index (no sign, no
 * leading zero except "0" itself), or -1. */
static long seg_index(const char *s, size_t n)
{
	long v = 0;

	if (n == 0 || n > 9 || (n > 1 && s[0] == '0'))
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

int jp_get(const json_t *root, const char *path, json_t **out)
{
	const json_t *cur = root;
	const char *p = path;

	*out = NULL;
	if (jp_path_check(path, NULL) < 0)
		return -EINVAL;
	if (!root)
		return -ENOENT;
	while (p && *p) {
		const char *dot = strchr(p, '.');
		size_t n = dot ? (size_t)(dot - p) : strlen(p);

		if (json_is_object(cur)) {
			cur = json_object_getn(cur, p, n);
		} else if (json_is_array(cur)) {
			long idx = seg_index(p, n);
			cur = idx >= 0 ? json_array_get(cur, (size_t)idx) : NULL;
		} else {
			cur = NULL;
		}
		if (!cur)
			return -ENOENT;
		p = dot ? dot + 1 : NULL;
	}
	*out = (json_t *)cur;
	return 0;
}

/* A string holding a number: 1 integer (*i), 2 real (*d), 0 not a number,
 * -1 a number too large for a double. */
static int num_text(const char *s, size_t len, int64_t *i, double *d)
{
	char buf[72];
	size_t p = 0, start;
	bool real = false;

	if (len == 0 || len >= sizeof(buf))
		return 0;
	if (s[p] == '-')
		p++;
	start = p;
	while (p < len && s[p] >= '0' && s[p] <= '9')
		p++;
	if (p == start)
		return 0;
	if (p < len && s[p] == '.') {
		start = ++p;
		while (p < len && s[p] >= '0' && s[p] <= '9')
			p++;
		if (p == start)
			return 0;
		real = true;
	}
	if (p < len && (s[p] == 'e' || s[p] == 'E')) {
		p++;
		if (p < len && (s[p] == '+' || s[p] == '-'))
			p++;
		start = p;
		while (p < len && s[p] >= '0' && s[p] <= '9')
			p++;
		if (p == start)
			return 0;
		real = true;
	}
	if (p != len)
		return 0;
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (!real) {
		errno = 0;
		long long v = strtoll(buf, NULL, 10);
		if (errno == 0) {
			*i = v;
			return 1;
		}
		/* beyond int64: let the range checks see it as a real */
	}
	*d = strtod(buf, NULL);
	return isfinite(*d) ? 2 : -1;
}

/* A JSON number, or a string holding one: 1 integer, 2 real, 0 not a
 * number, -1 out of range. */
static int as_number(const json_t *j, int64_t *i, double *d)
{
	if (json_is_integer(j)) {
		*i = json_integer_value(j);
		return 1;
	}
	if (json_is_real(j)) {
		*d = json_real_value(j);
		return 2;
	}
	if (json_is_string(j))
		return num_text(json_string_value(j), json_string_length(j), i, d);
	return 0;
}

/* A real that is an integer within [lo, hi] (both exactly representable or
 * bounds of int64). */
static bool real_to_int(double d, double lo, double hi_excl, int64_t *out)
{
	if (!(d >= lo && d < hi_excl) || d != floor(d))
		return false;
	*out = (int64_t)d;
	return true;
}

static const char *json_kind(const json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
	case JSON_REAL:
		return "a number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	case JSON_NULL:
		return "null";
	}
	return "?";
}

static int conv_enum(const json_t *j, const struct cfg_point *pt, struct cgw_value *out, char *why,
		     size_t whylen)
{
	int64_t i = 0;
	double d = 0;
	int k;

	if (json_is_string(j)) {
		const char *s = json_string_value(j);
		for (size_t e = 0; e < pt->n_enums; e++) {
			if (strcmp(pt->enums[e].label, s) == 0) {
				out->type = CGW_V_INT;
				out->i = pt->enums[e].key;
				return 0;
			}
		}
	}
	k = as_number(j, &i, &d);
	if (k == 0) {
		if (json_is_string(j)) {
			set_why(why, whylen, "'%.40s' is not one of the point's words",
				json_string_value(j));
			return 1;
		}
		set_why(why, whylen, "expected an enum word or integer, got %s", json_kind(j));
		return -EINVAL;
	}
	if (k == 2 && !real_to_int(d, -9223372036854775808.0, 9223372036854775808.0, &i)) {
		set_why(why, whylen, "enum value %g is not an integer", d);
		return -ERANGE;
	}
	if (k < 0) {
		set_why(why, whylen, "enum value out of range");
		return -ERANGE;
	}
	out->type = CGW_V_INT;
	out->i = i;
	for (size_t e = 0; e < pt->n_enums; e++)
		if (pt->enums[e].key == i)
			return 0;
	set_why(why, whylen, "value %lld is not in the point's enum", (long long)i);
	return 1;
}

static int conv_bool(const json_t *j, struct cgw_value *out, char *why, size_t whylen)
{
	int64_t i = 0;
	double d = 0;

	out->type = CGW_V_BOOL;
	if (json_is_boolean(j)) {
		out->b = json_is_true(j);
		return 0;
	}
	if (json_is_string(j)) {
		const char *s = json_string_value(j);
		if (!strcmp(s, "true") || !strcmp(s, "false")) {
			out->b = s[0] == 't';
			return 0;
		}
	}
	if ((json_is_integer(j) || json_is_string(j)) && as_number(j, &i, &d) == 1 &&
	    (i == 0 || i == 1)) {
		out->b = i == 1;
		return 0;
	}
	out->type = CGW_V_NONE;
	if (json_is_string(j))
		set_why(why, whylen, "'%.40s' is not a boolean (true/false/0/1)",
			json_string_value(j));
	else if (json_is_number(j))
		set_why(why, whylen, "%g is not a boolean (true/false/0/1)", json_number_value(j));
	else
		set_why(why, whylen, "expected a boolean, got %s", json_kind(j));
	return -EINVAL;
}

static bool unsigned_type(int t)
{
	return t == CGW_T_UINT16 || t == CGW_T_UINT32 || t == CGW_T_UINT64 || t == CGW_T_BITS;
}

static int conv_number(const json_t *j, const struct cfg_point *pt, struct cgw_value *out,
		       char *why, size_t whylen)
{
	int64_t i = 0;
	double d = 0;
	int k = as_number(j, &i, &d);
	bool scaled = pt->scale != 1.0 || pt->offset != 0.0;

	if (k == 0) {
		if (json_is_string(j))
			set_why(why, whylen, "'%.40s' is not a number", json_string_value(j));
		else
			set_why(why, whylen, "expected a number, got %s", json_kind(j));
		return -EINVAL;
	}
	if (k < 0) {
		set_why(why, whylen, "number out of range");
		return -ERANGE;
	}
	if (pt->type == CGW_T_NUMBER || pt->type == CGW_T_FLOAT32 || pt->type == CGW_T_FLOAT64) {
		double v = k == 1 ? (double)i : d;
		if (pt->type == CGW_T_FLOAT32 && fabs(v) > FLT_MAX) {
			set_why(why, whylen, "%g is out of range for float32", v);
			return -ERANGE;
		}
		if (scaled)
			v = v * pt->scale + pt->offset;
		if (!isfinite(v)) {
			set_why(why, whylen, "scaled value out of range");
			return -ERANGE;
		}
		out->type = CGW_V_DOUBLE;
		out->d = v;
		return 0;
	}

	/* integer types */
	double lo, hi; /* inclusive */
	switch (pt->type) {
	case CGW_T_INT16:
		lo = INT16_MIN, hi = INT16_MAX;
		break;
	case CGW_T_UINT16:
	case CGW_T_BITS:
		lo = 0, hi = UINT16_MAX;
		break;
	case CGW_T_INT32:
		lo = INT32_MIN, hi = INT32_MAX;
		break;
	case CGW_T_UINT32:
		lo = 0, hi = UINT32_MAX;
		break;
	case CGW_T_UINT64:
		lo = 0, hi = -1; /* up to INT64_MAX: checked below */
		break;
	default: /* int64 */
		lo = -1, hi = -1;
		break;
	}
	if (k == 2) {
		double v = d;
		if (!real_to_int(v, -9223372036854775808.0, 9223372036854775808.0, &i)) {
			set_why(why, whylen, "%g is not an integer", v);
			return -ERANGE;
		}
	}
	if (hi >= 0 && ((double)i < lo || (double)i > hi)) {
		set_why(why, whylen, "%lld is out of range for the point's type", (long long)i);
		return -ERANGE;
	}
	if (pt->type == CGW_T_UINT64 && i < 0) {
		set_why(why, whylen, "%lld is out of range for uint64", (long long)i);
		return -ERANGE;
	}
	if (scaled) {
		double v = (double)i * pt->scale + pt->offset;
		if (!isfinite(v)) {
			set_why(why, whylen, "scaled value out of range");
			return -ERANGE;
		}
		out->type = CGW_V_DOUBLE;
		out->d = v;
	} else if (unsigned_type(pt->type)) {
		out->type = CGW_V_UINT;
		out->u = (uint64_t)i;
	} else {
		out->type = CGW_V_INT;
		out->i = i;
	}
	return 0;
}

static int conv_string(const json_t *j, const struct cfg_point *pt, struct cgw_value *out,
		       char *why, size_t whylen)
{
	size_t max = pt->str_len ? pt->str_len : JP_STRING_MAX;
	char num[40];
	const char *s;
	size_t len;

	if (json_is_string(j)) {
		s = json_string_value(j);
		len = json_string_length(j);
	} else if (json_is_integer(j)) {
		len = (size_t)snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(j));
		s = num;
	} else if (json_is_real(j)) {
		double d = json_real_value(j);
		len = (size_t)snprintf(num, sizeof(num), "%.15g", d);
		if (strtod(num, NULL) != d)
			len = (size_t)snprintf(num, sizeof(num), "%.17g", d);
		s = num;
	} else if (json_is_boolean(j)) {
		s = json_is_true(j) ? "true" : "false";
		len = strlen(s);
	} else {
		set_why(why, whylen, "expected a string, got %s", json_kind(j));
		return -EINVAL;
	}
	if (len > max) {
		set_why(why, whylen, "string of %zu bytes is longer than %zu", len, max);
		return -E2BIG;
	}
	char *c = malloc(len + 1);
	if (!c) {
		set_why(why, whylen, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < len; i++)
		c[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
	c[len] = '\0';
	out->type = CGW_V_STRING;
	out->s = c;
	return 0;
}

int jp_convert(const json_t *j, const struct cfg_point *pt, struct cgw_value *out, char *why,
	       size_t whylen)
{
	int r;

	out->type = CGW_V_NONE;
	if (why && whylen)
		why[0] = '\0';
	if (!j) {
		set_why(why, whylen, "no value");
		return -EINVAL;
	}
	if (pt->n_enums)
		r = conv_enum(j, pt, out, why, whylen);
	else if (pt->type == CGW_T_BOOL)
		r = conv_bool(j, out, why, whylen);
	else if (pt->type == CGW_T_STRING)
		r = conv_string(j, pt, out, why, whylen);
	else
		r = conv_number(j, pt, out, why, whylen);
	if (r < 0)
		out->type = CGW_V_NONE;
	return r;
}

int64_t jp_timestamp(const json_t *root, int64_t now_ms)
{
	const json_t *ts = json_is_object(root) ? json_object_get(root, "ts") : NULL;
	int64_t v;

	if (json_is_integer(ts)) {
		v = json_integer_value(ts);
	} else if (json_is_real(ts)) {
		double d = json_real_value(ts);
		if (!(d >= (double)JP_TS_MIN_MS && d < 9.0e15))
			return now_ms;
		v = (int64_t)d;
	} else {
		return now_ms;
	}
	if (v < JP_TS_MIN_MS || v > now_ms + JP_TS_AHEAD_MS)
		return now_ms;
	return v;
}
