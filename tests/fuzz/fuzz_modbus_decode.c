/*
 * libFuzzer target for modbus_decode: the first bytes choose a format (type,
 * order, string length, bit, scale, offset; invalid ones included), the rest
 * are registers (big-endian pairs, in a heap block of exactly that size) and
 * coil bits. Besides "no crash, no out-of-bounds read", it checks:
 *   - an unscaled number decodes and re-encodes to the same registers;
 *   - a decoded string is printable, at most N bytes, and survives
 *     encode + decode unchanged;
 *   - a value of good quality is never NaN/Inf.
 */
#include "modbus_decode.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                \
	do {                                                                                    \
		if (!(c))                                                                       \
			abort();                                                                \
	} while (0)

static void check_string(const struct mb_format *f, const struct cgw_value *v)
{
	size_t len = strlen(v->s);
	uint16_t regs[MBD_STRING_MAX / 2];
	unsigned n = 0;
	struct cgw_value again;
	enum cgw_quality q;

	CHECK(len <= f->str_len);
	CHECK(len == 0 || v->s[len - 1] != ' ');
	for (size_t i = 0; i < len; i++)
		CHECK((unsigned char)v->s[i] >= 0x20 && v->s[i] != 0x7F);
	CHECK(mbd_encode_regs(f, v, regs, sizeof regs / sizeof regs[0], &n) == 0);
	CHECK(n == mbd_reg_count(f));
	CHECK(mbd_decode_regs(f, regs, n, &again, &q) == 0);
	CHECK(q == CGW_Q_GOOD && again.type == CGW_V_STRING && strcmp(again.s, v->s) == 0);
	cgw_value_clear(&again);
}

static void check_round_trip(const struct mb_format *f, const struct cgw_value *v,
			     const uint16_t *regs)
{
	uint16_t out[4];
	unsigned n = 0;

	if (f->type == CGW_T_BOOL || f->bit >= 0 || f->scale != 1.0 || f->offset != 0.0)
		return; /* bool collapses to 0/1; scaled values are rounded */
	CHECK(mbd_encode_regs(f, v, out, 4, &n) == 0);
	CHECK(n == mbd_reg_count(f) && memcmp(out, regs, n * sizeof out[0]) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const double scales[] = {1, 0.1, -2, 0, 1e308, NAN, 1e-300, 10};
	static const double offsets[] = {0, 5, -273.15, INFINITY};
	struct mb_format f = MB_FORMAT_INIT;
	struct cgw_value v;
	enum cgw_quality q;
	uint16_t *regs;
	uint8_t *bits;
	size_t nregs, nbits, idx;
	int rc;

	if (size < 6)
		return 0;
	f.type = (enum cgw_ptype)(data[0] % 13);  /* 12 = no such type */
	f.order = (enum cgw_order)(data[1] % 5); /* 4 = no such order */
	f.str_len = data[2];
	f.bit = (int)(data[3] % 19) - 2; /* -2 .. 16 */
	f.scale = scales[data[4] & 7];
	f.offset = offsets[(data[4] >> 3) & 3];
	idx = data[5];
	data += 6;
	size -= 6;

	/* Registers: exactly nregs in the heap block, so ASan sees any overread. */
	nregs = size / 2;
	regs = malloc(nregs ? nregs * sizeof *regs : 1);
	if (!regs)
		return 0;
	for (size_t i = 0; i < nregs; i++)
		regs[i] = (uint16_t)(data[2 * i] << 8 | data[2 * i + 1]);
	rc = mbd_decode_regs(&f, regs, nregs, &v, &q);
	if (rc == 0) {
		CHECK(nregs >= mbd_reg_count(&f));
		CHECK(mbd_check_format(&f, CGW_TBL_HOLDING, NULL) == 0);
		if (q == CGW_Q_GOOD) {
			CHECK(v.type != CGW_V_NONE);
			if (v.type == CGW_V_DOUBLE)
				CHECK(isfinite(v.d));
			if (v.type == CGW_V_STRING)
				check_string(&f, &v);
			else
				check_round_trip(&f, &v, regs);
		} else {
			CHECK(v.type == CGW_V_NONE);
		}
		cgw_value_clear(&v);
	} else {
		CHECK(rc == -EINVAL || rc == -ENOMEM);
		CHECK(v.type == CGW_V_NONE);
	}

	/* Bits, libmodbus layout: one byte per bit. */
	nbits = size;
	bits = malloc(nbits ? nbits : 1);
	if (bits) {
		memcpy(bits, data, nbits);
		rc = mbd_decode_bit(bits, nbits, idx, &v);
		CHECK(rc == (idx < nbits ? 0 : -EINVAL));
		if (rc == 0)
			CHECK(v.type == CGW_V_BOOL && v.b == (bits[idx] != 0));
		free(bits);
	}

	/* The same bytes as configuration text. */
	char text[32];
	size_t tl = size < sizeof text - 1 ? size : sizeof text - 1;
	enum cgw_ptype t;
	enum cgw_order o;
	unsigned len;
	memcpy(text, data, tl);
	text[tl] = '\0';
	if (mbd_parse_type(text, &t, &len) == 0) {
		f.type = t;
		f.str_len = len;
		CHECK(t != CGW_T_STRING || (len >= 1 && len <= MBD_STRING_MAX));
		CHECK(mbd_reg_count(&f) > 0);
	}
	if (mbd_parse_order(text, &o) == 0)
		CHECK((unsigned)o <= CGW_ORDER_DCBA);

	free(regs);
	return 0;
}
