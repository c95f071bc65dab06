/*
 * commission.h - what an installer reads off a live bus (cgwctl probe /
 * scan): the raw words of a probe seen as every type and word order, so a
 * new device's map can be read with one command.
 */
#ifndef CGW_COMMISSION_H
#define CGW_COMMISSION_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* regs[0..n-1] from the probed address on, read as: uint16/int16 (the first
 * word), int32/uint32/float32 in ABCD, CDAB, BADC and DCBA (the first two),
 * int64/uint64/float64 in the same four orders (the first four), and the
 * ASCII of all of them (high byte first; '.' for what is not printable). A
 * type needs enough words; one that does not fit is left out. NaN and
 * infinities are null. A new reference, NULL on allocation failure. */
json_t *commission_readings(const uint16_t *regs, size_t n);

/* Parse UNITS as "1-247", "3", "1,3,5-9" into a bitmap of ids 1..247.
 * 0, or -EINVAL with a reason in why. */
int commission_parse_units(const char *s, uint8_t bitmap[32], const char **why);

#endif
