/*
 * commission.h - what an installer reads off a live bus (cgwctl probe /
 * scan): the raw words of a probe seen as every type and word order, so a
 * new device's map can be read with one command.
 */
#ifndef CGW_COMMISSION_H
#define CGW_COMMISSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config.h"
#include "driver.h"

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

/* A scan or a probe as an installer asks for it (cgwctl's control request,
 * the console's form), checked against cfg, into *dc for core_commission():
 *   scan:  {"bus", "units": "1-247", "table": "holding", "address": 0,
 *           "timeout_ms": 10..10000; absent: 0, the bus's own, at most 200
 *           for a scan (its driver knows it)}
 *   probe: {"bus", "unit": 0..247, "table", "address", "count": 4}
 * Only a bus of the configuration, by name. 0 and *bus (borrowed from req),
 * or -EINVAL with a reason for the installer in why. The one check both
 * front ends use, so that they accept exactly the same requests. */
int commission_request(const struct cgw_config *cfg, json_t *req, bool scan,
		       struct driver_commission *dc, const char **bus, char *why, size_t why_len);

/* core_commission()'s refusal (-EPROTOTYPE, -ENODEV, -EBUSY, ...) in words. */
void commission_refusal(int r, const char *bus, char *out, size_t len);

#endif
