/*
 * Modbus request planning: merging rules and limits, splitting after an
 * exception, and random plans against an independent checker (coverage,
 * limits, gaps, order, no missed merge) and, for one device, against the
 * optimal request count computed by dynamic programming.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "modbus_plan.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define HOLD CGW_TBL_HOLDING
#define INPUT CGW_TBL_INPUT
#define COIL CGW_TBL_COIL
#define DISC CGW_TBL_DISCRETE

static struct mb_span sp(uint32_t device, uint32_t point, uint8_t unit, enum cgw_table t,
			 uint16_t addr, uint16_t count)
{
	return (struct mb_span){.device = device,
				.point = point,
				.unit = unit,
				.table = t,
				.addr = addr,
				.count = count,
				.max_gap = MBP_DEFAULT_MAX_GAP,
				.max_regs = 0};
}

static struct mb_plan *build(const struct mb_span *s, size_t n)
{
	struct mb_plan *p = NULL;
	assert_int_equal(mbp_build(s, n, &p), 0);
	assert_non_null(p);
	return p;
}

static void req_is(const struct mb_plan *p, size_t i, uint8_t unit, enum cgw_table t,
		   uint16_t addr, uint16_t count, size_t nspans)
{
	const struct mb_req *r = mbp_req(p, i);
	assert_non_null(r);
	if (r->unit != unit || r->table != t || r->addr != addr || r->count != count ||
	    r->nspans != nspans)
		fail_msg("request %zu: unit %u table %d addr %u count %u nspans %zu; want unit %u "
			 "table %d addr %u count %u nspans %zu",
			 i, r->unit, r->table, r->addr, r->count, r->nspans, unit, t, addr, count,
			 nspans);
}

static void test_empty_plan(void **state)
{
	(void)state;
	struct mb_plan *p = build(NULL, 0);
	assert_int_equal(mbp_count(p), 0);
	assert_int_equal(mbp_span_count(p), 0);
	assert_null(mbp_req(p, 0));
	assert_null(mbp_span(p, 0));
	assert_int_equal(mbp_split(p, 0), -EINVAL);
	mbp_print(p, stdout); /* nothing */
	mbp_free(p);
	mbp_free(NULL);
	assert_int_equal(mbp_count(NULL), 0);
	assert_int_equal(mbp_build(NULL, 1, &p), -EINVAL);
}

static void test_contiguous_merge(void **state)
{
	(void)state;
	struct mb_span s[] = {sp(0, 0, 1, HOLD, 2, 2), sp(0, 1, 1, HOLD, 0, 1),
			      sp(0, 2, 1, HOLD, 4, 1), sp(0, 3, 1, HOLD, 1, 1)};
	struct mb_plan *p = build(s, 4);
	assert_int_equal(mbp_count(p), 1);
	req_is(p, 0, 1, HOLD, 0, 5, 4);
	/* the request's spans come in address order */
	assert_int_equal(mbp_span(p, 0)->point, 1);
	assert_int_equal(mbp_span(p, 1)->point, 3);
	assert_int_equal(mbp_span(p, 2)->point, 0);
	assert_int_equal(mbp_span(p, 3)->point, 2);
	mbp_free(p);

	/* max_gap 0 still merges contiguous ranges */
	for (int i = 0; i < 4; i++)
		s[i].max_gap = 0;
	p = build(s, 4);
	assert_int_equal(mbp_count(p), 1);
	req_is(p, 0, 1, HOLD, 0, 5, 4);
	mbp_free(p);
}

static void test_overlap_merge(void **state)
{
	(void)state;
	/* a uint32 at 10..11, its low word again as bits, a string 20..29
	 * containing a uint16 at 25 */
	struct mb_span s[] = {sp(0, 0, 1, INPUT, 10, 2), sp(0, 1, 1, INPUT, 11, 1),
			      sp(0, 2, 1, INPUT, 20, 10), sp(0, 3, 1, INPUT, 25, 1)};
	for (int i = 0; i < 4; i++)
		s[i].max_gap = 0;
	struct mb_plan *p = build(s, 4);
	assert_int_equal(mbp_count(p), 2);
	req_is(p, 0, 1, INPUT, 10, 2, 2);
	req_is(p, 1, 1, INPUT, 20, 10, 2);
	mbp_free(p);
}

static void test_gap_bridging(void **state)
{
	(void)state;
	/* gap = unread registers between 0 and the next point */
	struct mb_span s[2] = {sp(0, 0, 1, HOLD, 0, 1), sp(0, 1, 1, HOLD, 9, 1)};
	struct mb_plan *p = build(s, 2); /* gap 8 = max_gap: bridged */
	assert_int_equal(mbp_count(p), 1);
	req_is(p, 0, 1, HOLD, 0, 10, 2);
	mbp_free(p);

	s[1].addr = 10; /* gap 9 = max_gap + 1 */
	p = build(s, 2);
	assert_int_equal(mbp_count(p), 2);
	req_is(p, 0, 1, HOLD, 0, 1, 1);
	req_is(p, 1, 1, HOLD, 10, 1, 1);
	mbp_free(p);

	/* the gap counts from the end of a multi-register point */
	s[0].count = 4; /* 0..3 */
	s[1].addr = 12; /* gap 4..11 = 8 */
	p = build(s, 2);
	assert_int_equal(mbp_count(p), 1);
	req_is(p, 0, 1, HOLD, 0, 13, 2);
	mbp_free(p);

	/* max_gap 0: a single unread register is not bridged */
	s[0] = sp(0, 0, 1, HOLD, 0, 1);
	s[1] = sp(0, 1, 1, HOLD, 2, 1);
	s[0].max_gap = s[1].max_gap = 0;
	p = build(s, 2);
	assert_int_equal(mbp_count(p), 2);
	mbp_free(p);
	s[0].max_gap = s[1].max_gap = 1;
	p = build(s, 2);
	assert_int_equal(mbp_count(p), 1);
	mbp_free(p);

	/* bit tables bridge gaps in bits */
	s[0] = sp(0, 0, 1, COIL, 0, 1);
	s[1] = sp(0, 1, 1, COIL, 9, 1);
	p = build(s, 2);
	assert_int_equal(mbp_count(p), 1);
	req_is(p, 0, 1, COIL, 0, 10, 2);
	mbp_free(p);
}

static void test_register_limit(void **state)
{
	(void)state;
	struct mb_span s[200];
	struct mb_plan *p;

	for (int i = 0; i < 126; i++)
		s[i] = sp(0, (uint32_t)i, 1, HOLD, (uint16_t)i, 1);
	p = build(s, 126);
	assert_int_equal(mbp_count(p), 2);
	req_is(p, 0, 1, HOLD, 0, 125, 125);
	req_is(p, 1, 1, HOLD, 125, 1, 1);
	mbp_free(p);

	/* 63 uint32: 62 fit in 124 registers, the 63rd is never cut in two */
	for (int i = 0; i < 63; i++)
		s[i] = sp(0, (uint32_t)i, 1, INPUT, (uint16_t)(2 * i), 2);
	p = build(s, 63);
	assert_int_equal(mbp_count(p), 2);
	req_is(p, 0, 1, INPUT, 0, 124, 62);
	req_is(p, 1, 1, INPUT, 124, 2, 1);
	mbp_free(p);

	/* exactly 125 with a bridged gap */
	s[0] = sp(0, 0, 1, HOLD, 0, 120);
	s[1] = sp(0, 1, 1, HOLD, 123, 2);
	p = build(s, 2);
	assert_int_equal(mbp_count(p), 1);
	req_is(p, 0, 1, HOLD, 0, 125, 2);
	mbp_free(p);
	s[1].addr = 124; /* would be 126 */
	p = build(s, 2);
	assert_int_equal(mbp_count(p), 2);
	req_is(p, 1, 1, HOLD, 124, 2, 1);
	mbp_free(p);

	/* a point at the top of the address space */
	s[0] = sp(0, 0, 1, HOLD, 65534, 2);
	p = build(s, 1);
	req_is(p, 0, 1, HOLD, 65534, 2, 1);
	mbp_free(p);
}

static void test_bit_limit(void **state)
{
	(void)state;
	struct mb_span *s = calloc(4002, sizeof *s);
	assert_non_null(s);
	for (int i = 0; i < 2001; i++) {
		s[i] = sp(0, (uint32_t)i, 1, COIL, (uint16_t)i, 1);
		s[2001 + i] = sp(0, (uint32_t)(2001 + i), 1, DISC, (uint16_t)(5000 + i), 1);
		s[i].max_regs = 10; /* max_registers does not limit bit reads */
	}
	struct mb_plan *p = build(s, 4002);
	assert_int_equal(mbp_count(p), 4);
	req_is(p, 0, 1, COIL, 0, 2000, 2000);
	req_is(p, 1, 1, COIL, 2000, 1, 1);
	req_is(p, 2, 1, DISC, 5000, 2000, 2000);
	req_is(p, 3, 1, DISC, 7000, 1, 1);
	mbp_free(p);
	free(s);
}

static void test_max_registers(void **state)
{
	(void)state;
	struct mb_span s[20];
	struct mb_plan *p;

	for (int i = 0; i < 20; i++) {
		s[i] = sp(0, (uint32_t)i, 1, HOLD, (uint16_t)i, 1);
		s[i].max_regs = 10;
	}
	p = build(s, 20);
	assert_int_equal(mbp_count(p), 2);
	req_is(p, 0, 1, HOLD, 0, 10, 10);
	req_is(p, 1, 1, HOLD, 10, 10, 10);
	mbp_free(p);

	/* a smaller limit on one device leaves another device alone */
	for (int i = 10; i < 20; i++) {
		s[i] = sp(1, (uint32_t)i, 2, HOLD, (uint16_t)i, 1);
		s[i].max_regs = 3;
	}
	p = build(s, 20);
	assert_int_equal(mbp_count(p), 5);
	req_is(p, 0, 1, HOLD, 0, 10, 10);
	req_is(p, 1, 2, HOLD, 10, 3, 3);
	req_is(p, 4, 2, HOLD, 19, 1, 1);
	mbp_free(p);

	/* above the protocol limit means the protocol limit */
	for (int i = 0; i < 20; i++) {
		s[i] = sp(0, (uint32_t)i, 1, HOLD, (uint16_t)(i * 7), 7);
		s[i].max_regs = 1000;
	}
	p = build(s, 20);
	assert_int_equal(mbp_count(p), 2);
	req_is(p, 0, 1, HOLD, 0, 119, 17);
	mbp_free(p);
}

static void test_never_merged_across(void **state)
{
	(void)state;
	/* given out of order; same addresses everywhere */
	struct mb_span s[] = {
		sp(2, 0, 7, HOLD, 0, 1),  /* unit 7 */
		sp(0, 0, 3, INPUT, 1, 1), /* unit 3, input */
		sp(0, 1, 3, HOLD, 1, 1),  /* unit 3, holding */
		sp(0, 2, 3, HOLD, 0, 1),
		sp(1, 0, 3, HOLD, 2, 1),  /* another device on unit 3 */
		sp(0, 3, 3, COIL, 0, 1),
		sp(0, 4, 3, DISC, 0, 1),
	};
	struct mb_plan *p = build(s, sizeof s / sizeof s[0]);
	assert_int_equal(mbp_count(p), 6);
	/* by unit, device, table, address */
	req_is(p, 0, 3, COIL, 0, 1, 1);
	req_is(p, 1, 3, DISC, 0, 1, 1);
	req_is(p, 2, 3, INPUT, 1, 1, 1);
	req_is(p, 3, 3, HOLD, 0, 2, 2);
	req_is(p, 4, 3, HOLD, 2, 1, 1);
	assert_int_equal(mbp_req(p, 4)->device, 1);
	req_is(p, 5, 7, HOLD, 0, 1, 1);
	assert_int_equal(mbp_req(p, 5)->device, 2);
	mbp_free(p);
}

static void test_invalid_spans(void **state)
{
	(void)state;
	struct mb_plan *p = (struct mb_plan *)&p;
	const char *why = NULL;
	struct mb_span s;

	s = sp(0, 0, 1, HOLD, 0, 0);
	assert_int_equal(mbp_check_span(&s, &why), -EINVAL);
	assert_int_equal(mbp_build(&s, 1, &p), -EINVAL);
	assert_null(p);
	s = sp(0, 0, 1, HOLD, 65535, 2);
	assert_int_equal(mbp_check_span(&s, &why), -EINVAL);
	assert_non_null(strstr(why, "65535"));
	s.count = 1;
	assert_int_equal(mbp_check_span(&s, &why), 0);
	s = sp(0, 0, 1, HOLD, 0, 126);
	assert_int_equal(mbp_check_span(&s, &why), -EINVAL);
	s.count = 125;
	assert_int_equal(mbp_check_span(&s, &why), 0);
	s.max_regs = 64;
	assert_int_equal(mbp_check_span(&s, &why), -EINVAL);
	assert_non_null(strstr(why, "max_registers"));
	s = sp(0, 0, 1, COIL, 0, 2001);
	assert_int_equal(mbp_check_span(&s, &why), -EINVAL);
	s.count = 2000;
	assert_int_equal(mbp_check_span(&s, &why), 0);
	s.table = (enum cgw_table)9;
	assert_int_equal(mbp_check_span(&s, &why), -EINVAL);
}

/* Pointers into the plan are not kept across splits: copy. */
static struct mb_req req(const struct mb_plan *p, size_t i)
{
	const struct mb_req *r = mbp_req(p, i);
	assert_non_null(r);
	return *r;
}

static void test_split_at_gaps(void **state)
{
	(void)state;
	struct mb_span s[] = {sp(0, 0, 1, HOLD, 0, 1),  sp(0, 1, 1, HOLD, 1, 1),
			      sp(0, 2, 1, HOLD, 5, 1),  sp(0, 3, 1, HOLD, 6, 2),
			      sp(0, 4, 1, HOLD, 12, 1), sp(0, 5, 2, HOLD, 0, 1)};
	struct mb_plan *p = build(s, 6);
	assert_int_equal(mbp_count(p), 2);
	req_is(p, 0, 1, HOLD, 0, 13, 5);
	req_is(p, 1, 2, HOLD, 0, 1, 1);

	/* cut at every gap; the request after it is untouched */
	assert_int_equal(mbp_split(p, 0), 0);
	assert_int_equal(mbp_count(p), 4);
	req_is(p, 0, 1, HOLD, 0, 2, 2);
	req_is(p, 1, 1, HOLD, 5, 3, 2);
	req_is(p, 2, 1, HOLD, 12, 1, 1);
	req_is(p, 3, 2, HOLD, 0, 1, 1);
	assert_int_equal(req(p, 1).first_span, 2);
	assert_int_equal(req(p, 3).first_span, 5);

	/* then down to single points */
	assert_int_equal(mbp_split(p, 1), 0);
	req_is(p, 1, 1, HOLD, 5, 1, 1);
	req_is(p, 2, 1, HOLD, 6, 2, 1);
	assert_int_equal(mbp_split(p, 2), -ENOSPC); /* the uint32 is never cut */
	assert_int_equal(mbp_split(p, 0), 0);
	assert_int_equal(mbp_count(p), 6);
	for (size_t i = 0; i < 6; i++) {
		assert_int_equal(req(p, i).nspans, 1);
		assert_int_equal(req(p, i).first_span, i);
		assert_int_equal(mbp_split(p, i), -ENOSPC);
	}
	assert_int_equal(mbp_split(p, 6), -EINVAL);
	mbp_free(p);
}

static void test_split_halves(void **state)
{
	(void)state;
	struct mb_span s[8];
	for (int i = 0; i < 8; i++)
		s[i] = sp(0, (uint32_t)i, 1, INPUT, (uint16_t)(100 + i), 1);
	struct mb_plan *p = build(s, 8);
	assert_int_equal(mbp_count(p), 1);
	assert_int_equal(mbp_split(p, 0), 0);
	req_is(p, 0, 1, INPUT, 100, 4, 4);
	req_is(p, 1, 1, INPUT, 104, 4, 4);
	assert_int_equal(mbp_split(p, 1), 0);
	req_is(p, 1, 1, INPUT, 104, 2, 2);
	req_is(p, 2, 1, INPUT, 106, 2, 2);

	/* the split is kept: splitting everything until it stops takes 7 splits */
	int splits = 2;
	for (size_t i = 0; i < mbp_count(p);) {
		int rc = mbp_split(p, i);
		if (rc == -ENOSPC) {
			i++;
			continue;
		}
		assert_int_equal(rc, 0);
		splits++;
	}
	assert_int_equal(splits, 7);
	assert_int_equal(mbp_count(p), 8);
	for (size_t i = 0; i < 8; i++)
		req_is(p, i, 1, INPUT, (uint16_t)(100 + i), 1, 1);
	mbp_free(p);

	/* uneven points: the cut is at the boundary nearest the middle */
	struct mb_span u[] = {sp(0, 0, 1, HOLD, 0, 4), sp(0, 1, 1, HOLD, 4, 1),
			      sp(0, 2, 1, HOLD, 5, 4), sp(0, 3, 1, HOLD, 9, 1)};
	p = build(u, 4);
	assert_int_equal(mbp_split(p, 0), 0);
	req_is(p, 0, 1, HOLD, 0, 5, 2);
	req_is(p, 1, 1, HOLD, 5, 5, 2);
	mbp_free(p);
}

static void test_split_overlaps(void **state)
{
	(void)state;
	/* uint32 at 10, bits of register 11, and a second point reading
	 * exactly register 11 too */
	struct mb_span s[] = {sp(0, 0, 1, HOLD, 10, 2), sp(0, 1, 1, HOLD, 11, 1),
			      sp(0, 2, 1, HOLD, 11, 1)};
	struct mb_plan *p = build(s, 3);
	assert_int_equal(mbp_count(p), 1);
	assert_int_equal(mbp_split(p, 0), 0);
	assert_int_equal(mbp_count(p), 2);
	req_is(p, 0, 1, HOLD, 10, 2, 1);
	req_is(p, 1, 1, HOLD, 11, 1, 2);
	/* two points on the same register cannot be told apart by reading */
	assert_int_equal(mbp_split(p, 1), -ENOSPC);
	assert_int_equal(mbp_split(p, 0), -ENOSPC);
	mbp_free(p);

	/* a long point covers the gap between two short ones; once it is cut
	 * away, the short ones must not be read together across the gap */
	struct mb_span g[] = {sp(0, 0, 1, HOLD, 0, 20), sp(0, 1, 1, HOLD, 10, 1),
			      sp(0, 2, 1, HOLD, 19, 2)};
	p = build(g, 3);
	assert_int_equal(mbp_count(p), 1);
	req_is(p, 0, 1, HOLD, 0, 21, 3);
	assert_int_equal(mbp_split(p, 0), 0);
	assert_int_equal(mbp_count(p), 3);
	req_is(p, 0, 1, HOLD, 0, 20, 1);
	req_is(p, 1, 1, HOLD, 10, 1, 1);
	req_is(p, 2, 1, HOLD, 19, 2, 1);
	mbp_free(p);
}

static void test_print(void **state)
{
	(void)state;
	struct mb_span s[] = {sp(4, 0, 3, HOLD, 0, 1), sp(4, 1, 3, HOLD, 1, 2),
			      sp(4, 2, 3, COIL, 16, 1)};
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	assert_non_null(f);
	struct mb_plan *p = build(s, 3);
	mbp_print(p, f);
	fclose(f);
	assert_string_equal(buf, "unit 3 coil 16..16 (1 bits) device 4 points 2\n"
				 "unit 3 holding 0..2 (3 registers) device 4 points 0 1\n");
	free(buf);
	mbp_free(p);
}

/* --- random plans against an independent checker --- */

static uint64_t rng = 0x2545F4914F6CDD1Du;

static uint32_t rnd(uint32_t n)
{
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	return (uint32_t)(rng % n);
}

static uint32_t limit_of(const struct mb_span *s)
{
	if (s->table == COIL || s->table == DISC)
		return 2000;
	return s->max_regs && s->max_regs < 125 ? s->max_regs : 125;
}

/* A fast point (its own poll) keeps its own short read, first in the
 * device's requests, even when it sits between registers the device's
 * long read covers. */
static void test_fast_points_apart(void **state)
{
	(void)state;
	struct mb_span s[] = {
		sp(0, 0, 3, HOLD, 0, 1), sp(0, 1, 3, HOLD, 1, 1), /* alarm status: fast */
		sp(0, 2, 3, HOLD, 2, 2), sp(0, 3, 3, HOLD, 4, 1), /* analogue values */
		sp(0, 4, 3, COIL, 0, 1),                          /* fast too */
	};
	s[1].poll_ms = 500;
	s[4].poll_ms = 500;
	struct mb_plan *p = build(s, sizeof s / sizeof s[0]);
	assert_int_equal(mbp_count(p), 3);
	req_is(p, 0, 3, COIL, 0, 1, 1);
	req_is(p, 1, 3, HOLD, 1, 1, 1);
	assert_int_equal(mbp_req(p, 0)->poll_ms, 500);
	assert_int_equal(mbp_req(p, 1)->poll_ms, 500);
	/* the slow read bridges the fast point's register as a gap, never holds it */
	req_is(p, 2, 3, HOLD, 0, 5, 3);
	assert_int_equal(mbp_req(p, 2)->poll_ms, 0);
	for (size_t k = 0; k < mbp_req(p, 2)->nspans; k++)
		assert_int_not_equal(mbp_span(p, mbp_req(p, 2)->first_span + k)->point, 1);
	mbp_free(p);
}

static int key_cmp(const void *pa, const void *pb)
{
	const struct mb_span *a = pa, *b = pb;
	return memcmp(a, b, sizeof *a);
}

static bool same_group(const struct mb_span *a, const struct mb_req *r)
{
	return a->unit == r->unit && a->table == r->table && a->device == r->device &&
	       a->poll_ms == r->poll_ms;
}

/*
 * The invariants of any plan, split or not. `maximal`: no two adjacent
 * requests of the same device and table could have been one read (holds
 * for a fresh plan, not after splits).
 */
static void check_plan(const struct mb_plan *p, const struct mb_span *in, size_t n, bool maximal)
{
	struct mb_span *a = calloc(n + 1, sizeof *a), *b = calloc(n + 1, sizeof *b);
	size_t next = 0;

	assert_non_null(a);
	assert_non_null(b);
	/* the plan holds exactly the spans given (as a multiset) */
	assert_int_equal(mbp_span_count(p), n);
	for (size_t i = 0; i < n; i++)
		b[i] = *mbp_span(p, i);
	if (n) {
		memcpy(a, in, n * sizeof *a);
		qsort(a, n, sizeof *a, key_cmp);
		qsort(b, n, sizeof *b, key_cmp);
		assert_memory_equal(a, b, n * sizeof *a);
	}

	for (size_t i = 0; i < mbp_count(p); i++) {
		const struct mb_req *r = mbp_req(p, i);
		uint32_t lim = 2000, gap_ok = UINT32_MAX, end = 0, hull_end = 0;

		/* requests partition the spans, in order: each span in exactly one */
		assert_int_equal(r->first_span, next);
		assert_true(r->nspans >= 1);
		next += r->nspans;
		assert_true(next <= n);
		assert_true(r->count >= 1);
		assert_true((uint32_t)r->addr + r->count <= 65536);
		for (size_t k = 0; k < r->nspans; k++) {
			const struct mb_span *s = mbp_span(p, r->first_span + k);
			uint32_t s_end = (uint32_t)s->addr + s->count;
			assert_true(same_group(s, r));
			assert_true(s->addr >= r->addr);
			assert_true(s_end <= (uint32_t)r->addr + r->count);
			if (limit_of(s) < lim)
				lim = limit_of(s);
			if (s->max_gap < gap_ok)
				gap_ok = s->max_gap;
			if (k > 0) {
				assert_true(s->addr >= mbp_span(p, r->first_span + k - 1)->addr);
				if (s->addr > end && s->addr - end > gap_ok)
					fail_msg("request %zu bridges a gap of %u > %u", i,
						 s->addr - end, gap_ok);
			}
			if (s_end > end)
				end = s_end;
			hull_end = end;
		}
		/* tight: starts at its first point, ends at its last */
		assert_int_equal(r->addr, mbp_span(p, r->first_span)->addr);
		assert_int_equal((uint32_t)r->addr + r->count, hull_end);
		if (r->count > lim)
			fail_msg("request %zu reads %u > limit %u", i, r->count, lim);

		if (i > 0) {
			const struct mb_req *q = mbp_req(p, i - 1);
			/* order: unit, device, table, address */
			int c = q->unit != r->unit       ? (q->unit < r->unit ? -1 : 1)
				: q->device != r->device ? (q->device < r->device ? -1 : 1)
				: q->table != r->table   ? (q->table < r->table ? -1 : 1)
							 : (q->addr <= r->addr ? -1 : 1);
			assert_int_equal(c, -1);
			if (maximal && q->unit == r->unit && q->device == r->device &&
			    q->table == r->table) {
				/* merging the two would break a limit or bridge too much */
				uint32_t q_end = (uint32_t)q->addr + q->count;
				uint32_t r_end = (uint32_t)r->addr + r->count;
				uint32_t hull = (r_end > q_end ? r_end : q_end) - q->addr;
				uint32_t mlim = lim, mgap = gap_ok;
				for (size_t k = 0; k < q->nspans; k++) {
					const struct mb_span *s = mbp_span(p, q->first_span + k);
					if (limit_of(s) < mlim)
						mlim = limit_of(s);
					if (s->max_gap < mgap)
						mgap = s->max_gap;
				}
				bool gap_too_big = r->addr > q_end && r->addr - q_end > mgap;
				if (!gap_too_big && hull <= mlim)
					fail_msg("requests %zu and %zu could be one read", i - 1, i);
			}
		}
	}
	assert_int_equal(next, n);
	free(a);
	free(b);
}

static void random_spans(struct mb_span *s, size_t n, uint32_t addr_range)
{
	uint16_t gaps[4], regs[4];
	for (int d = 0; d < 4; d++) {
		gaps[d] = (uint16_t)rnd(12);
		regs[d] = rnd(3) == 0 ? 0 : (uint16_t)(4 + rnd(130));
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t d = rnd(4);
		enum cgw_table t = (enum cgw_table)rnd(4);
		static const uint16_t sizes[] = {1, 1, 1, 2, 2, 4, 3, 10};
		uint16_t count = t == COIL || t == DISC ? (uint16_t)(rnd(8) ? 1 : 1 + rnd(40))
							: sizes[rnd(8)];
		if (regs[d] && t != COIL && t != DISC && count > regs[d])
			count = regs[d];
		s[i] = (struct mb_span){
			.device = d,
			.point = (uint32_t)i,
			.unit = (uint8_t)(d % 3 + 1), /* devices 0 and 3 share unit 1 */
			.table = t,
			.addr = (uint16_t)rnd(addr_range),
			.count = count,
			.max_gap = gaps[d],
			.max_regs = regs[d],
		};
	}
}

static void test_random_plans(void **state)
{
	(void)state;
	enum { N = 400 };
	struct mb_span *s = calloc(N, sizeof *s);
	assert_non_null(s);

	for (int iter = 0; iter < 300; iter++) {
		size_t n = rnd(N + 1);
		random_spans(s, n, iter % 2 ? 600 : 65000);
		if (iter % 7 == 0) { /* densely packed bit points near the top */
			for (size_t i = 0; i < n; i++) {
				s[i].table = COIL;
				s[i].count = 1;
				s[i].addr = (uint16_t)(63000 + rnd(2535));
			}
		}
		struct mb_plan *p = build(s, n);
		check_plan(p, s, n, true);

		/* split random requests until nothing splits any more */
		size_t guard = 0;
		while (mbp_count(p) > 0) {
			size_t before = mbp_count(p), stuck = 0;
			for (size_t i = 0; i < before; i++) {
				const struct mb_req *r = mbp_req(p, i);
				const struct mb_span *f = mbp_span(p, r->first_span);
				bool one_range = true;
				for (size_t k = 1; k < r->nspans; k++) {
					const struct mb_span *g = mbp_span(p, r->first_span + k);
					one_range &= g->addr == f->addr && g->count == f->count;
				}
				stuck += one_range;
			}
			if (stuck == before) {
				for (size_t i = 0; i < before; i++)
					assert_int_equal(mbp_split(p, i), -ENOSPC);
				break;
			}
			size_t i;
			int rc;
			do
				rc = mbp_split(p, i = rnd((uint32_t)before));
			while (rc == -ENOSPC);
			assert_int_equal(rc, 0);
			assert_true(mbp_count(p) > before);
			check_plan(p, s, n, false);
			assert_true(++guard <= n);
		}
		mbp_free(p);
	}
	free(s);
}

/* For one device and table with non-overlapping points, the greedy plan must
 * use exactly as many reads as the best partition found by DP. */
static void test_optimal_count(void **state)
{
	(void)state;
	enum { N = 60 };
	struct mb_span s[N];
	size_t best[N + 1];

	for (int iter = 0; iter < 2000; iter++) {
		size_t n = 1 + rnd(N);
		uint16_t gap = (uint16_t)rnd(6), maxr = rnd(2) ? 0 : (uint16_t)(4 + rnd(40));
		uint32_t addr = rnd(100);
		for (size_t i = 0; i < n; i++) {
			uint16_t c = (uint16_t)(1 + rnd(4));
			if (maxr && c > maxr)
				c = maxr;
			s[i] = sp(0, (uint32_t)i, 1, HOLD, (uint16_t)addr, c);
			s[i].max_gap = gap;
			s[i].max_regs = maxr;
			addr += c + (rnd(3) ? rnd(3) : rnd(20)); /* stays far below 65535 */
		}
		uint32_t lim = maxr ? maxr : 125;
		best[0] = 0;
		for (size_t j = 1; j <= n; j++) {
			best[j] = SIZE_MAX;
			for (size_t i = j; i-- > 0;) { /* run i..j-1 as one read */
				if (i + 1 < j && s[i + 1].addr - (s[i].addr + s[i].count) > gap)
					break;
				if ((uint32_t)s[j - 1].addr + s[j - 1].count - s[i].addr > lim)
					break;
				if (best[i] + 1 < best[j])
					best[j] = best[i] + 1;
			}
		}
		struct mb_plan *p = build(s, n);
		if (mbp_count(p) != best[n])
			fail_msg("iteration %d: %zu reads, optimum %zu", iter, mbp_count(p), best[n]);
		mbp_free(p);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty_plan),         cmocka_unit_test(test_contiguous_merge),
		cmocka_unit_test(test_overlap_merge),      cmocka_unit_test(test_gap_bridging),
		cmocka_unit_test(test_register_limit),     cmocka_unit_test(test_bit_limit),
		cmocka_unit_test(test_max_registers),      cmocka_unit_test(test_never_merged_across),
		cmocka_unit_test(test_fast_points_apart),
		cmocka_unit_test(test_invalid_spans),      cmocka_unit_test(test_split_at_gaps),
		cmocka_unit_test(test_split_halves),       cmocka_unit_test(test_split_overlaps),
		cmocka_unit_test(test_print),              cmocka_unit_test(test_random_plans),
		cmocka_unit_test(test_optimal_count),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
