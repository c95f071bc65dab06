/*
 * modbus_decode.c - registers <-> values. Pure functions, see the header for
 * the contract (orders, value types, strings, rounding on writes).
 */
#include "modbus_decode.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const type_names[] = {
	[CGW_T_BOOL] = "bool",     [CGW_T_INT16] = "int16",     [CGW_T_UINT16] = "uint16",
	[CGW_T_INT32] = "int32",   [CGW_T_UINT32] = "uint32",   [CGW_T_INT64] = "int64",
	[CGW_T_UINT64] = "uint64", [CGW_T_FLOAT32] = "float32", [CGW_T_FLOAT64] = "float64",
	[CGW_T_STRING] = "string", [CGW_T_BITS] = "bits",       [CGW_T_NUMBER] = "number",
};

static const char *const order_names[] = {
	[CGW_ORDER_ABCD] = "ABCD",
	[CGW_ORDER_CDAB] = "CDAB",
	[CGW_ORDER_BADC] = "BADC",
	[CGW_ORDER_DCBA] = "DCBA",
};

/* The 64-bit spellings of the same four orders, same index. */
static const char *const order_names64[] = {
	[CGW_ORDER_ABCD] = "ABCDEFGH",
	[CGW_ORDER_CDAB] = "GHEFCDAB",
	[CGW_ORDER_BADC] = "BADCFEHG",
	[CGW_ORDER_DCBA] = "HGFEDCBA",
};

/* Registers of a numeric type; 0 for string (variable) and non-Modbus types. */
static unsigned type_words(enum cgw_ptype t)
{
	switch (t) {
	case CGW_T_BOOL:
	case CGW_T_INT16:
	case CGW_T_UINT16:
	case CGW_T_BITS:
		return 1;
	case CGW_T_INT32:
	case CGW_T_UINT32:
	case CGW_T_FLOAT32:
		return 2;
	case CGW_T_INT64:
	case CGW_T_UINT64:
	case CGW_T_FLOAT64:
		return 4;
	case CGW_T_STRING:
	case CGW_T_NUMBER:
		break;
	}
	return 0;
}

static bool is_signed(enum cgw_ptype t)
{
	return t == CGW_T_INT16 || t == CGW_T_INT32 || t == CGW_T_INT64;
}

static bool is_float(enum cgw_ptype t)
{
	return t == CGW_T_FLOAT32 || t == CGW_T_FLOAT64;
}

static bool is_scaled(const struct mb_format *f)
{
	return f->scale != 1.0 || f->offset != 0.0;
}

static bool word_swap(enum cgw_order o)
{
	return o == CGW_ORDER_CDAB || o == CGW_ORDER_DCBA;
}

static bool byte_swap(enum cgw_order o)
{
	return o == CGW_ORDER_BADC || o == CGW_ORDER_DCBA;
}

static uint16_t swab16(uint16_t w)
{
	return (uint16_t)(w << 8 | w >> 8);
}

/* The n registers (1, 2 or 4) as one big-endian number. */
static uint64_t get_raw(const uint16_t *regs, unsigned n, enum cgw_order o)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++) {
		uint16_t w = regs[word_swap(o) ? n - 1 - i : i];
		v = v << 16 | (byte_swap(o) ? swab16(w) : w);
	}
	return v;
}

static void put_raw(uint16_t *regs, unsigned n, enum cgw_order o, uint64_t v)
{
	for (unsigned i = 0; i < n; i++) {
		uint16_t w = (uint16_t)(v >> (16 * (n - 1 - i)));
		regs[word_swap(o) ? n - 1 - i : i] = byte_swap(o) ? swab16(w) : w;
	}
}

/* Two's complement of the low `bits` bits, without implementation-defined
 * conversions. */
/* A float32 as the shortest decimal that reads back as the same float, so
 * that 0.35f is reported as 0.35 rather than 0.3499999940395355. */
static double float_as_decimal_slow(float fl)
{
	char buf[32];

	for (int prec = 6; prec <= 9; prec++) {
		snprintf(buf, sizeof(buf), "%.*g", prec, (double)fl);
		if (strtof(buf, NULL) == fl)
			return strtod(buf, NULL);
	}
	return fl;
}

/* Exact powers of ten in a double: 10^0 .. 10^22. */
static const double pow10_exact[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
				     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
				     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* The same value as float_as_decimal_slow() without printf and strtod (they
 * were most of the driver's instructions per request). For `prec` digits the
 * printed decimal is m * 10^-k with m = |x| * 10^k rounded to an integer;
 * |x| * 10^k is computed in a double (a 24-bit float times an exact power of
 * ten, error at most 2^-24 for m < 10^9), so m is exact unless the product
 * lies that close to a rounding tie, and m / 10^k (or m * 10^-k) is one
 * correctly rounded operation on exact operands: what strtod() gives for the
 * digits. Near a tie, or outside the exact powers, the slow path decides. */
static double float_as_decimal(float fl)
{
	double x = fl, a = fabs(x);
	int e;

	if (!isfinite(fl) || fl == 0.0f)
		return fl;
	e = (int)floor(log10(a));
	for (int prec = 6; prec <= 9; prec++) {
		int k = prec - 1 - e;
		double p, m, frac, cand;

		float f;

		if (k < 0 || k > 22) /* 10^6 and more, or tiny: rare, exactness unclear */
			return float_as_decimal_slow(fl);
		p = pow10_exact[k];
		m = a * p;
		frac = m - floor(m);
		if (fabs(frac - 0.5) < 1.0 / (1 << 20))
			return float_as_decimal_slow(fl); /* near a tie: which way printf went */
		m = nearbyint(m);
		if (m < pow10_exact[prec - 1] || m > pow10_exact[prec])
			return float_as_decimal_slow(fl); /* log10() missed the decade */
		cand = m / p;
		f = (float)cand;
		if ((double)f != cand) {
			/* decimal -> double -> float rounds twice; strtof() once: they
			 * differ only when the double is a float midpoint */
			float g = nextafterf(f, cand > (double)f ? INFINITY : 0.0f);
			if (((double)f + (double)g) / 2 == cand)
				return float_as_decimal_slow(fl);
		}
		if (f == (float)a)
			return x < 0 ? -cand : cand;
	}
	return fl;
}

static int64_t to_signed(uint64_t v, unsigned bits)
{
	if (bits < 64) {
		uint64_t sign = UINT64_C(1) << (bits - 1);
		v &= (sign << 1) - 1;
		return (int64_t)(v ^ sign) - (int64_t)sign;
	}
	if (v <= INT64_MAX)
		return (int64_t)v;
	return -(int64_t)~v - 1;
}

static uint64_t umax_of(unsigned bits)
{
	return bits == 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1;
}

static int64_t smax_of(unsigned bits)
{
	return (int64_t)(umax_of(bits) >> 1);
}

int mbd_check_format(const struct mb_format *f, enum cgw_table table, const char **why)
{
	const char *msg = NULL;
	bool bit_table = table == CGW_TBL_COIL || table == CGW_TBL_DISCRETE;

	if (!f)
		msg = "no format";
	else if ((unsigned)table > CGW_TBL_HOLDING)
		msg = "unknown table";
	else if ((unsigned)f->order > CGW_ORDER_DCBA)
		msg = "unknown order";
	else if (f->type != CGW_T_STRING && type_words(f->type) == 0)
		msg = "type not supported for Modbus";
	else if (!isfinite(f->scale) || f->scale == 0.0)
		msg = "scale must be a finite, non-zero number";
	else if (!isfinite(f->offset))
		msg = "offset must be a finite number";
	else if (bit_table && f->type != CGW_T_BOOL)
		msg = "a coil or discrete input point must be bool";
	else if (bit_table && f->bit != -1)
		msg = "bit applies to registers, not to coils or discrete inputs";
	else if (f->bit < -1 || f->bit > 15)
		msg = "bit must be 0..15";
	else if (f->bit >= 0 && type_words(f->type) != 1)
		msg = "bit needs a 16-bit type (bool, int16, uint16, bits)";
	else if (is_scaled(f) && (f->type == CGW_T_BOOL || f->type == CGW_T_STRING ||
				  f->type == CGW_T_BITS || f->bit >= 0))
		msg = "scale and offset apply only to numbers";
	else if (f->type == CGW_T_STRING && (f->str_len < 1 || f->str_len > MBD_STRING_MAX))
		msg = "string length must be 1..250";
	else if (f->type == CGW_T_STRING && word_swap(f->order))
		msg = "a string's order must be ABCD or BADC";
	if (msg && why)
		*why = msg;
	return msg ? -EINVAL : 0;
}

unsigned mbd_reg_count(const struct mb_format *f)
{
	if (!f)
		return 0;
	if (f->type == CGW_T_STRING)
		return f->str_len >= 1 && f->str_len <= MBD_STRING_MAX ? (f->str_len + 1) / 2 : 0;
	return type_words(f->type);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid.
 * Refuses overlong forms, surrogates and code points above U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xBF;
	size_t len;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		len = 3;
	else if (c >= 0xF0 && c <= 0xF4)
		len = 4;
	else
		return 0;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return len;
}

static int decode_string(const struct mb_format *f, const uint16_t *regs, struct cgw_value *out)
{
	unsigned char raw[MBD_STRING_MAX];
	size_t n = 0, len = 0;
	char *s;

	for (unsigned i = 0; i < f->str_len; i++) {
		uint16_t w = regs[i / 2];
		bool high = (i % 2 == 0) == (f->order == CGW_ORDER_ABCD);
		raw[i] = (unsigned char)(high ? w >> 8 : w & 0xFF);
	}
	while (n < f->str_len && raw[n] != 0)
		n++;
	s = malloc(n + 1);
	if (!s)
		return -ENOMEM;
	for (size_t i = 0; i < n;) {
		size_t k = utf8_seq(raw + i, n - i);
		if (k == 0 || (k == 1 && (raw[i] < 0x20 || raw[i] == 0x7F))) {
			s[len++] = '?';
			i++;
			continue;
		}
		memcpy(s + len, raw + i, k);
		len += k;
		i += k;
	}
	while (len > 0 && s[len - 1] == ' ')
		len--;
	s[len] = '\0';
	out->type = CGW_V_STRING;
	out->s = s;
	return 0;
}

int mbd_decode_regs(const struct mb_format *f, const uint16_t *regs, size_t nregs,
		    struct cgw_value *out, enum cgw_quality *q)
{
	unsigned n;
	uint64_t raw;
	double d;

	if (out)
		out->type = CGW_V_NONE;
	if (q)
		*q = CGW_Q_BAD;
	if (!out || !regs || mbd_check_format(f, CGW_TBL_HOLDING, NULL) < 0)
		return -EINVAL;
	n = mbd_reg_count(f);
	if (nregs < n)
		return -EINVAL;

	if (f->type == CGW_T_STRING) {
		int rc = decode_string(f, regs, out);
		if (rc == 0 && q)
			*q = CGW_Q_GOOD;
		return rc;
	}

	raw = get_raw(regs, n, f->order);
	if (f->bit >= 0 || f->type == CGW_T_BOOL) {
		out->type = CGW_V_BOOL;
		out->b = f->bit >= 0 ? (raw >> f->bit) & 1 : raw != 0;
	} else if (f->type == CGW_T_FLOAT32 || f->type == CGW_T_FLOAT64) {
		if (f->type == CGW_T_FLOAT32) {
			uint32_t u = (uint32_t)raw;
			float fl;
			memcpy(&fl, &u, sizeof fl);
			d = float_as_decimal(fl);
		} else {
			memcpy(&d, &raw, sizeof d);
		}
		if (is_scaled(f)) /* unscaled: keep -0.0 as it came */
			d = d * f->scale + f->offset;
		if (!isfinite(d))
			return 0; /* bad quality, no value */
		out->type = CGW_V_DOUBLE;
		out->d = d;
	} else if (is_signed(f->type)) {
		int64_t i = to_signed(raw, 16 * n);
		if (is_scaled(f)) {
			d = (double)i * f->scale + f->offset;
			if (!isfinite(d))
				return 0;
			out->type = CGW_V_DOUBLE;
			out->d = d;
		} else {
			out->type = CGW_V_INT;
			out->i = i;
		}
	} else {
		if (is_scaled(f)) {
			d = (double)raw * f->scale + f->offset;
			if (!isfinite(d))
				return 0;
			out->type = CGW_V_DOUBLE;
			out->d = d;
		} else {
			out->type = CGW_V_UINT;
			out->u = raw;
		}
	}
	if (q)
		*q = CGW_Q_GOOD;
	return 0;
}

int mbd_decode_bit(const uint8_t *bits, size_t nbits, size_t idx, struct cgw_value *out)
{
	if (!out)
		return -EINVAL;
	out->type = CGW_V_NONE;
	if (!bits || idx >= nbits)
		return -EINVAL;
	out->type = CGW_V_BOOL;
	out->b = bits[idx] != 0;
	return 0;
}

/* A truth value from true/false or 0/1; -ERANGE for other numbers. */
static int value_bool(const struct cgw_value *in, bool *b)
{
	switch (in->type) {
	case CGW_V_BOOL:
		*b = in->b;
		return 0;
	case CGW_V_INT:
		if (in->i != 0 && in->i != 1)
			return -ERANGE;
		*b = in->i == 1;
		return 0;
	case CGW_V_UINT:
		if (in->u > 1)
			return -ERANGE;
		*b = in->u == 1;
		return 0;
	case CGW_V_DOUBLE:
		if (isnan(in->d))
			return -EDOM;
		if (in->d != 0.0 && in->d != 1.0)
			return -ERANGE;
		*b = in->d == 1.0;
		return 0;
	case CGW_V_NONE:
	case CGW_V_STRING:
		break;
	}
	return -EINVAL;
}

/* raw to the integer it stands for, tolerating the rounding error of
 * (value - offset) / scale but not a real fraction. */
static int nearest_integer(double raw, double *r)
{
	double n = round(raw);
	double a = fabs(raw);
	double tol = fmin(1e-9 * fmax(1.0, a), 1e-3);

	tol = fmax(tol, 4 * (nextafter(a, INFINITY) - a));
	if (fabs(raw - n) > tol)
		return -EDOM;
	*r = n;
	return 0;
}

/* An integer register value from an exact INT/UINT/BOOL (unscaled). */
static int exact_integer(const struct mb_format *f, const struct cgw_value *in, unsigned bits,
			 uint64_t *raw)
{
	bool sgn = is_signed(f->type);
	int64_t i = 0;
	uint64_t u = 0;
	bool neg = false;

	if (in->type == CGW_V_BOOL)
		u = in->b;
	else if (in->type == CGW_V_UINT)
		u = in->u;
	else if (in->i < 0)
		neg = true, i = in->i;
	else
		u = (uint64_t)in->i;

	if (neg) {
		if (!sgn || i < -smax_of(bits) - 1)
			return -ERANGE;
		*raw = (uint64_t)i & umax_of(bits); /* two's complement, well defined */
		return 0;
	}
	if (u > (sgn ? (uint64_t)smax_of(bits) : umax_of(bits)))
		return -ERANGE;
	*raw = u;
	return 0;
}

static int value_double(const struct cgw_value *in, double *d)
{
	switch (in->type) {
	case CGW_V_BOOL:
		*d = in->b;
		return 0;
	case CGW_V_INT:
		*d = (double)in->i;
		return 0;
	case CGW_V_UINT:
		*d = (double)in->u;
		return 0;
	case CGW_V_DOUBLE:
		if (!isfinite(in->d))
			return -EDOM;
		*d = in->d;
		return 0;
	case CGW_V_NONE:
	case CGW_V_STRING:
		break;
	}
	return -EINVAL;
}

static int encode_number(const struct mb_format *f, const struct cgw_value *in, unsigned n,
			 uint64_t *raw)
{
	unsigned bits = 16 * n;
	double d, r;
	int rc;

	if (!is_float(f->type) && !is_scaled(f) && in->type != CGW_V_DOUBLE) {
		if (in->type != CGW_V_BOOL && in->type != CGW_V_INT && in->type != CGW_V_UINT)
			return -EINVAL;
		return exact_integer(f, in, bits, raw);
	}
	rc = value_double(in, &d);
	if (rc < 0)
		return rc;
	d = (d - f->offset) / f->scale;
	if (!isfinite(d))
		return -ERANGE;

	if (f->type == CGW_T_FLOAT32) {
		float fl;
		uint32_t u;
		/* in range if it rounds to a finite float: the shortest decimal
		 * of FLT_MAX (3.4028235e+38, what a read reports) is a little
		 * above it and must write back as FLT_MAX */
		if (fabs(d) >= 0x1.ffffffp+127)
			return -ERANGE;
		fl = (float)d;
		memcpy(&u, &fl, sizeof u);
		*raw = u;
		return 0;
	}
	if (f->type == CGW_T_FLOAT64) {
		memcpy(raw, &d, sizeof d);
		return 0;
	}

	rc = nearest_integer(d, &r);
	if (rc < 0)
		return rc;
	/* Powers of two are exact doubles: compare against 2^(bits-1), 2^bits. */
	if (is_signed(f->type)) {
		double lim = ldexp(1.0, (int)bits - 1);
		if (r < -lim || r >= lim)
			return -ERANGE;
		*raw = (uint64_t)(int64_t)r & umax_of(bits);
	} else {
		if (r < 0 || r >= ldexp(1.0, (int)bits))
			return -ERANGE;
		*raw = (uint64_t)r;
	}
	return 0;
}

static int encode_string(const struct mb_format *f, const struct cgw_value *in, uint16_t *regs)
{
	size_t len;

	if (in->type != CGW_V_STRING || !in->s)
		return -EINVAL;
	len = strlen(in->s);
	if (len > f->str_len)
		return -ERANGE;
	for (unsigned i = 0; i < (f->str_len + 1) / 2; i++) {
		unsigned char a = 2 * i < len ? (unsigned char)in->s[2 * i] : 0;
		unsigned char b = 2 * i + 1 < len ? (unsigned char)in->s[2 * i + 1] : 0;
		regs[i] = f->order == CGW_ORDER_ABCD ? (uint16_t)(a << 8 | b) :
						       (uint16_t)(b << 8 | a);
	}
	return 0;
}

int mbd_encode_regs(const struct mb_format *f, const struct cgw_value *in, uint16_t *regs,
		    size_t cap, unsigned *nregs_out)
{
	unsigned n;
	uint64_t raw = 0;
	int rc;

	if (!in || !regs || mbd_check_format(f, CGW_TBL_HOLDING, NULL) < 0)
		return -EINVAL;
	n = mbd_reg_count(f);
	if (cap < n)
		return -ENOSPC;

	if (f->type == CGW_T_STRING) {
		rc = encode_string(f, in, regs);
	} else if (f->bit >= 0 || f->type == CGW_T_BOOL) {
		bool b;
		rc = value_bool(in, &b);
		if (rc == 0 && f->bit >= 0) {
			raw = get_raw(regs, 1, f->order);
			raw = b ? raw | (UINT64_C(1) << f->bit) : raw & ~(UINT64_C(1) << f->bit);
		} else {
			raw = b;
		}
		if (rc == 0)
			put_raw(regs, 1, f->order, raw);
	} else {
		rc = encode_number(f, in, n, &raw);
		if (rc == 0)
			put_raw(regs, n, f->order, raw);
	}
	if (rc == 0 && nregs_out)
		*nregs_out = n;
	return rc;
}

int mbd_encode_bit(const struct cgw_value *in, uint8_t *on)
{
	bool b;
	int rc;

	if (!in || !on)
		return -EINVAL;
	rc = value_bool(in, &b);
	if (rc == 0)
		*on = b;
	return rc;
}

int mbd_parse_order(const char *s, enum cgw_order *out)
{
	if (!s || !out)
		return -EINVAL;
	for (unsigned i = 0; i <= CGW_ORDER_DCBA; i++) {
		if (strcasecmp(s, order_names[i]) == 0 || strcasecmp(s, order_names64[i]) == 0) {
			*out = (enum cgw_order)i;
			return 0;
		}
	}
	return -EINVAL;
}

int mbd_parse_type(const char *s, enum cgw_ptype *t, unsigned *str_len)
{
	static const char prefix[] = "string:";
	unsigned n = 0;
	size_t digits = 0;

	if (!s || !t || !str_len)
		return -EINVAL;
	if (strncmp(s, prefix, sizeof prefix - 1) == 0) {
		for (s += sizeof prefix - 1; *s >= '0' && *s <= '9' && digits < 4; s++, digits++)
			n = n * 10 + (unsigned)(*s - '0');
		if (*s != '\0' || digits == 0 || n < 1 || n > MBD_STRING_MAX)
			return -EINVAL;
		*t = CGW_T_STRING;
		*str_len = n;
		return 0;
	}
	for (unsigned i = 0; i < sizeof type_names / sizeof type_names[0]; i++) {
		if (i == CGW_T_STRING || i == CGW_T_NUMBER || strcmp(s, type_names[i]) != 0)
			continue;
		*t = (enum cgw_ptype)i;
		*str_len = 0;
		return 0;
	}
	return -EINVAL;
}

const char *mbd_type_name(enum cgw_ptype t)
{
	return (unsigned)t < sizeof type_names / sizeof type_names[0] ? type_names[t] : "?";
}

const char *mbd_order_name(enum cgw_order o)
{
	return (unsigned)o <= CGW_ORDER_DCBA ? order_names[o] : "?";
}
