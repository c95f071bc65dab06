/*
 * modbus_plan.h - which Modbus reads cover the points of one bus. Pure:
 * no I/O, no libmodbus; one plan belongs to one bus worker (not locked).
 *
 * Every point becomes a span (unit, table, address range). Spans are merged
 * into as few reads as the protocol allows:
 *   - only spans of the same device, hence the same unit, the same poll
 *     (poll_ms: a fast point, e.g. an alarm status read every 500 ms, keeps
 *     its own short read instead of riding in the device's long one) and
 *     the same table share a read. Devices are kept apart even when two share a unit
 *     id: the device is what the worker schedules (its poll interval), counts
 *     offline and configures (max_gap, max_registers), and a read that mixes
 *     two devices would tie their schedules and their failures together;
 *   - contiguous and overlapping ranges always merge; a gap of unread
 *     addresses is bridged when it is at most the spans' max_gap (0: never);
 *   - a read never exceeds 125 registers (input/holding) or 2000 bits
 *     (coil/discrete), nor the spans' max_regs for register tables
 *     (max_registers counts registers: bit tables are not limited by it;
 *     a device that refuses large bit reads is handled by mbp_split);
 *   - a span is never cut: a 32-bit point is always read in one request.
 * Requests are ordered by (unit, device, fast first, table, address): with one device per
 * unit this is (unit, table, address), and one device's requests are always
 * adjacent. The spans covered by a request are a contiguous run of the plan's
 * sorted spans, ordered by address.
 *
 * When a read gets exception 2 (illegal data address), the worker calls
 * mbp_split() on that request. The plan keeps the split, so later cycles use
 * the smaller reads, until the plan is rebuilt (configuration reload).
 */
#ifndef CGW_MODBUS_PLAN_H
#define CGW_MODBUS_PLAN_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define MBP_MAX_REGS 125      /* FC03/FC04 limit (libmodbus MODBUS_MAX_READ_REGISTERS) */
#define MBP_MAX_BITS 2000     /* FC01/FC02 limit (libmodbus MODBUS_MAX_READ_BITS) */
#define MBP_DEFAULT_MAX_GAP 8 /* what the configuration uses when max_gap is not set */

/* One point's range. The caller fills it from the configuration. */
struct mb_span {
	uint32_t device; /* index into cfg->devices */
	uint32_t point;  /* index into the device's points */
	uint8_t unit;    /* Modbus unit id */
	enum cgw_table table;
	uint16_t addr;     /* 0-based protocol address (address_base already applied) */
	uint16_t count;    /* registers, or bits for coil/discrete (mbd_reg_count()) */
	uint16_t max_gap;  /* unread addresses that may be bridged; taken literally, 0 = none */
	uint16_t max_regs; /* per-request register limit; 0 or > 125 = 125 */
	uint32_t poll_ms;  /* 0: the device's poll; else this point is read this often */
};

/* One read. Its spans are mbp_span(p, first_span .. first_span + nspans - 1);
 * span s's data starts at offset s->addr - addr in the read's buffer. */
struct mb_req {
	uint8_t unit;
	enum cgw_table table;
	uint16_t addr;
	uint16_t count; /* registers or bits to read, >= 1 */
	size_t first_span, nspans;
	uint32_t device;  /* every span of a request belongs to this device */
	uint32_t poll_ms; /* its spans' poll_ms */
};

struct mb_plan; /* owns its sorted copy of the spans and its requests */

/* Is this span plannable on its own? 0, or -EINVAL with *why (static
 * English, for the installer): count 0, past address 65535, larger than a
 * read can be (125 registers / 2000 bits / max_regs), unknown table. */
int mbp_check_span(const struct mb_span *s, const char **why);

/* Build the plan from n spans (n may be 0; spans is copied). 0 with *out set
 * (the caller frees it with mbp_free), -EINVAL if a span fails
 * mbp_check_span(), -ENOMEM. */
int mbp_build(const struct mb_span *spans, size_t n, struct mb_plan **out);
void mbp_free(struct mb_plan *p);

size_t mbp_count(const struct mb_plan *p);                       /* requests */
const struct mb_req *mbp_req(const struct mb_plan *p, size_t i); /* NULL if out of range */
size_t mbp_span_count(const struct mb_plan *p);
const struct mb_span *mbp_span(const struct mb_plan *p, size_t i); /* NULL if out of range */

/*
 * Narrow request req_index after a Modbus exception 2. If it bridges gaps,
 * it is cut at every gap (unread addresses are the likely culprit);
 * otherwise it is halved at the span boundary nearest the middle (some
 * devices refuse reads that cross internal blocks). Repeated calls get down
 * to one request per point. The pieces replace the request in place, in
 * address order: they are requests req_index .. req_index + k - 1 where
 * k = 1 + (mbp_count() after - mbp_count() before); later indices shift.
 * Never allocates.
 * Returns 0 if split; -ENOSPC if the request cannot be narrowed (one point,
 * or points that all read the same range): the caller marks that request's
 * points bad; -EINVAL for a bad index. Pointers from mbp_req() are
 * invalidated by a split.
 */
int mbp_split(struct mb_plan *p, size_t req_index);

/* One line per request, for `cgwd --check-config -v`:
 * "unit 3 holding 0..9 (10 registers) device 0 points 0 1 2". */
void mbp_print(const struct mb_plan *p, FILE *f);

#endif
