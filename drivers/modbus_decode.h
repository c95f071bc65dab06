/*
 * modbus_decode.h - pure conversion between Modbus registers/bits and
 * struct cgw_value, for every point type of a profile. No I/O, no global
 * state, no libmodbus: safe to call from any thread and easy to fuzz.
 *
 * Byte and word order (enum cgw_order, see model.h). Registers are given
 * as libmodbus returns them (host-order uint16_t, high byte first on the
 * wire). Two independent switches describe every order:
 *   word swap (CDAB, DCBA): the registers come least significant first;
 *   byte swap (BADC, DCBA): the two bytes inside each register are swapped.
 * For 64-bit values the same switches give ABCDEFGH (ABCD), GHEFCDAB (CDAB),
 * BADCFEHG (BADC) and HGFEDCBA (DCBA). For one-register types (int16,
 * uint16, bits, bool) word swap has no effect and byte swap swaps the two
 * bytes. float32 123.456 = 0x42F6E979 reads as {0x42F6,0xE979} in ABCD,
 * {0xE979,0x42F6} in CDAB, {0xF642,0x79E9} in BADC, {0x79E9,0xF642} in DCBA.
 *
 * Decoded value types:
 *   bool, or any 16-bit type with bit >= 0  -> CGW_V_BOOL
 *   int16/int32/int64                       -> CGW_V_INT
 *   uint16/uint32/uint64, bits              -> CGW_V_UINT
 *   float32/float64                         -> CGW_V_DOUBLE
 *   any number with scale != 1 or offset != 0 -> CGW_V_DOUBLE (raw * scale + offset)
 *   string:N                                -> CGW_V_STRING (heap, caller frees
 *                                              with cgw_value_clear())
 * A NaN or infinite float (or a scaled result that overflows) is quality
 * CGW_Q_BAD with no value (CGW_V_NONE): the device answered, the value is
 * unusable.
 *
 * string:N: N bytes, two per register, high byte first (order ABCD) or low
 * byte first (BADC); CDAB/DCBA are refused for strings. The string ends at
 * the first NUL (fixed-size fields are NUL-padded, and what follows a NUL
 * is padding even when not zero), then trailing spaces are trimmed. Bytes
 * that are control characters or not valid UTF-8 become '?', so the result
 * is always printable UTF-8 (it goes into JSON) and never longer than N.
 *
 * bit (0..15, -1 = none) selects one bit of the 16-bit value that the
 * point's type and order decode to (bit 0 = least significant).
 */
#ifndef CGW_MODBUS_DECODE_H
#define CGW_MODBUS_DECODE_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

/* Longest string:N: a string must fit in one read (125 registers). */
#define MBD_STRING_MAX 250

/* How one point's registers become a value. */
struct mb_format {
	enum cgw_ptype type;
	enum cgw_order order;
	unsigned str_len; /* N of string:N, else ignored */
	int bit;          /* 0..15, or -1 for none */
	double scale;     /* applied first (multiply); 1 = none, never 0 */
	double offset;    /* applied second (add); 0 = none */
};

/* Defaults of a point: uint16, ABCD, no bit, no scaling. */
#define MB_FORMAT_INIT                                                                  \
	{                                                                               \
		.type = CGW_T_UINT16, .order = CGW_ORDER_ABCD, .str_len = 0, .bit = -1, \
		.scale = 1.0, .offset = 0.0                                             \
	}

/*
 * Validate a format for a point in `table`: returns 0, or -EINVAL with *why
 * (if why is not NULL) set to a static English message for the installer,
 * e.g. "bit needs a 16-bit type". Points in coil/discrete tables must be bool
 * without bit, scale or offset. The decoders and encoders run the same check.
 */
int mbd_check_format(const struct mb_format *f, enum cgw_table table, const char **why);

/* Registers the value occupies: 1, 2 or 4, ceil(N/2) for string:N; 0 when
 * the format is invalid. A point of a coil/discrete table occupies 1 bit. */
unsigned mbd_reg_count(const struct mb_format *f);

/*
 * Decode one point from regs[0 .. mbd_reg_count(f)-1]. Returns 0 with *out
 * set and *q = CGW_Q_GOOD, or 0 with out->type = CGW_V_NONE and
 * *q = CGW_Q_BAD for an unusable value (NaN/Inf); -EINVAL for an invalid
 * format or nregs < mbd_reg_count(f) (never reads past nregs), -ENOMEM.
 * *out is overwritten without being cleared first: it must not own a string.
 */
int mbd_decode_regs(const struct mb_format *f, const uint16_t *regs, size_t nregs,
		    struct cgw_value *out, enum cgw_quality *q);

/*
 * Decode bit idx of a coil/discrete read into a CGW_V_BOOL. `bits` is
 * libmodbus's layout: one byte per bit (modbus_read_bits /
 * modbus_read_input_bits), non-zero = on. -EINVAL if idx >= nbits.
 */
int mbd_decode_bit(const uint8_t *bits, size_t nbits, size_t idx, struct cgw_value *out);

/*
 * Encode a value for a register write (FC06 for one register, FC16 for
 * more): the inverse of mbd_decode_regs, scale and offset included
 * (raw = (value - offset) / scale). On success regs[0 .. *nregs_out-1] hold
 * the registers to write. Accepted inputs: BOOL/INT/UINT/DOUBLE for numeric
 * types and bool (bool accepts only true/false/0/1), STRING for string:N
 * (at most N bytes; the rest is NUL-padded).
 *
 * Integer types: a DOUBLE (or any scaled value) must land on an integer
 * within a rounding tolerance (1e-9 relative, at most 1e-3 absolute, at
 * least a few ulps); it is rounded to that integer. So 23.5 with scale 0.1
 * writes 235, but 23.55 with scale 0.1 is refused rather than silently
 * rounded.
 *
 * bit >= 0 is a read-modify-write: on entry regs[0] must hold the register's
 * current content; the bit is set or cleared in it and one register results.
 *
 * Returns 0; -ERANGE when the value is outside the type's range (or a
 * string is longer than N); -EDOM when it is NaN/infinite or not an integer
 * for an integer type; -EINVAL for an invalid format or a value type that
 * does not fit the point (a string for a number); -ENOSPC if cap is too small.
 */
int mbd_encode_regs(const struct mb_format *f, const struct cgw_value *in, uint16_t *regs,
		    size_t cap, unsigned *nregs_out);

/* Encode a value for a coil write (FC05): true/false, 0/1 (INT, UINT or
 * DOUBLE). Returns 0 with *on set, -ERANGE for other numbers, -EINVAL for
 * other value types. */
int mbd_encode_bit(const struct cgw_value *in, uint8_t *on);

/* Parse `order:` ("ABCD", "CDAB", "BADC", "DCBA", or the 64-bit spellings
 * "ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"; case-insensitive).
 * 0 or -EINVAL. */
int mbd_parse_order(const char *s, enum cgw_order *out);

/* Parse `type:` ("bool", "int16", ..., "float64", "bits", "string:N" with N
 * 1..MBD_STRING_MAX in plain decimal). *str_len is N for strings, else 0.
 * "number" is MQTT only and refused here. 0 or -EINVAL. */
int mbd_parse_type(const char *s, enum cgw_ptype *t, unsigned *str_len);

/* Names as written in profiles ("uint16", "string", "CDAB"); "?" if unknown. */
const char *mbd_type_name(enum cgw_ptype t);
const char *mbd_order_name(enum cgw_order o);

#endif
