/*
 * modbus_plan.c - merge point ranges into reads, split reads that the device
 * refuses. See the header for the rules.
 *
 * The request array is allocated once with room for one request per span:
 * a request always covers at least one span, so splitting can never need
 * more, and mbp_split() cannot fail for lack of memory in the bus worker.
 */
#include "modbus_plan.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

struct mb_plan {
	struct mb_span *spans; /* sorted by (unit, device, table, addr, count, point) */
	size_t nspans;
	struct mb_req *reqs; /* room for max(nspans, 1) */
	size_t nreqs;
};

static bool bit_table(enum cgw_table t)
{
	return t == CGW_TBL_COIL || t == CGW_TBL_DISCRETE;
}

/* Largest read that may contain span s. */
static uint32_t span_limit(const struct mb_span *s)
{
	if (bit_table(s->table))
		return MBP_MAX_BITS;
	if (s->max_regs == 0 || s->max_regs > MBP_MAX_REGS)
		return MBP_MAX_REGS;
	return s->max_regs;
}

static uint32_t span_end(const struct mb_span *s)
{
	return (uint32_t)s->addr + s->count;
}

static const char *table_name(enum cgw_table t)
{
	switch (t) {
	case CGW_TBL_COIL:
		return "coil";
	case CGW_TBL_DISCRETE:
		return "discrete";
	case CGW_TBL_INPUT:
		return "input";
	case CGW_TBL_HOLDING:
		return "holding";
	}
	return "?";
}

int mbp_check_span(const struct mb_span *s, const char **why)
{
	const char *msg = NULL;

	if (!s)
		msg = "no span";
	else if ((unsigned)s->table > CGW_TBL_HOLDING)
		msg = "unknown table";
	else if (s->count == 0)
		msg = "point covers no address";
	else if (span_end(s) > 65536)
		msg = "point extends past address 65535";
	else if (s->count > span_limit(s))
		msg = bit_table(s->table) ? "point is larger than one read (2000 bits)" :
		      s->max_regs && s->max_regs < MBP_MAX_REGS ?
					    "point is larger than the device's max_registers" :
					    "point is larger than one read (125 registers)";
	if (msg && why)
		*why = msg;
	return msg ? -EINVAL : 0;
}

static int cmp_u64(uint64_t a, uint64_t b)
{
	return (a > b) - (a < b);
}

/* Fast spans first (shortest poll first), then those at the device's poll. */
static uint64_t poll_key(const struct mb_span *s)
{
	return s->poll_ms ? s->poll_ms : UINT64_MAX;
}

static int span_cmp(const void *pa, const void *pb)
{
	const struct mb_span *a = pa, *b = pb;
	int c;

	if ((c = cmp_u64(a->unit, b->unit)) || (c = cmp_u64(a->device, b->device)) ||
	    (c = cmp_u64(poll_key(a), poll_key(b))) || (c = cmp_u64(a->table, b->table)) ||
	    (c = cmp_u64(a->addr, b->addr)) || (c = cmp_u64(a->count, b->count)))
		return c;
	return cmp_u64(a->point, b->point);
}

static bool same_group(const struct mb_span *a, const struct mb_span *b)
{
	return a->unit == b->unit && a->device == b->device && a->poll_ms == b->poll_ms &&
	       a->table == b->table;
}

static bool same_range(const struct mb_span *a, const struct mb_span *b)
{
	return a->addr == b->addr && a->count == b->count;
}

/* The request covering spans[first .. first+n-1] (sorted, one group). */
static struct mb_req make_req(const struct mb_plan *p, size_t first, size_t n)
{
	const struct mb_span *s = p->spans + first;
	uint32_t end = 0;

	for (size_t i = 0; i < n; i++)
		if (span_end(&s[i]) > end)
			end = span_end(&s[i]);
	return (struct mb_req){
		.unit = s->unit,
		.table = s->table,
		.addr = s->addr,
		.count = (uint16_t)(end - s->addr),
		.first_span = first,
		.nspans = n,
		.device = s->device,
		.poll_ms = s->poll_ms,
	};
}

int mbp_build(const struct mb_span *spans, size_t n, struct mb_plan **out)
{
	struct mb_plan *p = NULL;
	int rc = -EINVAL;

	if (!out || (n > 0 && !spans))
		goto fail;
	*out = NULL;
	for (size_t i = 0; i < n; i++)
		if (mbp_check_span(&spans[i], NULL) < 0)
			goto fail;
	rc = -ENOMEM;
	p = calloc(1, sizeof *p);
	if (!p)
		goto fail;
	p->spans = calloc(n ? n : 1, sizeof *p->spans);
	p->reqs = calloc(n ? n : 1, sizeof *p->reqs);
	if (!p->spans || !p->reqs)
		goto fail;
	if (n > 0)
		memcpy(p->spans, spans, n * sizeof *spans);
	p->nspans = n;
	qsort(p->spans, n, sizeof *p->spans, span_cmp);

	/* Greedy in address order: extend the open request while the next span
	 * keeps it within the gap and size limits (the tightest of its spans). */
	size_t first = 0;
	uint32_t end = 0, gap_ok = 0, lim = 0;
	for (size_t i = 0; i < n; i++) {
		const struct mb_span *s = &p->spans[i];
		uint32_t start = p->spans[first].addr;
		uint32_t new_end = span_end(s) > end ? span_end(s) : end;
		uint32_t new_lim = span_limit(s) < lim ? span_limit(s) : lim;
		uint32_t new_gap = s->max_gap < gap_ok ? s->max_gap : gap_ok;

		if (i > 0 && same_group(s, &p->spans[first]) &&
		    (s->addr <= end || s->addr - end <= new_gap) && new_end - start <= new_lim) {
			end = new_end, lim = new_lim, gap_ok = new_gap;
			continue;
		}
		if (i > 0)
			p->reqs[p->nreqs++] = make_req(p, first, i - first);
		first = i;
		end = span_end(s), lim = span_limit(s), gap_ok = s->max_gap;
	}
	if (n > 0)
		p->reqs[p->nreqs++] = make_req(p, first, n - first);
	*out = p;
	return 0;
fail:
	mbp_free(p);
	return rc;
}

void mbp_free(struct mb_plan *p)
{
	if (!p)
		return;
	free(p->spans);
	free(p->reqs);
	free(p);
}

size_t mbp_count(const struct mb_plan *p)
{
	return p ? p->nreqs : 0;
}

const struct mb_req *mbp_req(const struct mb_plan *p, size_t i)
{
	return p && i < p->nreqs ? &p->reqs[i] : NULL;
}

size_t mbp_span_count(const struct mb_plan *p)
{
	return p ? p->nspans : 0;
}

const struct mb_span *mbp_span(const struct mb_plan *p, size_t i)
{
	return p && i < p->nspans ? &p->spans[i] : NULL;
}

/*
 * Cut spans s[0 .. n-1] (of the request starting at span index `base`) into
 * pieces: at boundary `single` (0: none) and wherever a piece would bridge
 * unread addresses. The second rule matters after a cut through
 * overlapping points: a piece may lose the long point that covered a gap.
 * Writes the pieces to out (if not NULL); returns how many.
 */
static size_t cut_pieces(const struct mb_plan *p, size_t base, size_t n, size_t single,
			 struct mb_req *out)
{
	const struct mb_span *s = p->spans + base;
	size_t pieces = 0, first = 0;
	uint32_t end = span_end(&s[0]);

	for (size_t k = 1; k <= n; k++) {
		if (k < n && k != single && s[k].addr <= end) {
			if (span_end(&s[k]) > end)
				end = span_end(&s[k]);
			continue;
		}
		if (out)
			out[pieces] = make_req(p, base + first, k - first);
		pieces++;
		first = k;
		if (k < n)
			end = span_end(&s[k]);
	}
	return pieces;
}

int mbp_split(struct mb_plan *p, size_t ri)
{
	const struct mb_span *s;
	struct mb_req r;
	size_t n, ngaps = 0, single = 0, pieces, best_any = 0, best_touch = 0;
	uint64_t dist_any = UINT64_MAX, dist_touch = UINT64_MAX;
	uint32_t end = 0;
	uint64_t mid2;

	if (!p || ri >= p->nreqs)
		return -EINVAL;
	r = p->reqs[ri];
	s = p->spans + r.first_span;
	n = r.nspans;
	mid2 = 2 * (uint64_t)r.addr + r.count; /* twice the middle address */

	for (size_t k = 1; k < n; k++) {
		uint64_t a2 = 2 * (uint64_t)s[k].addr;
		uint64_t d = a2 > mid2 ? a2 - mid2 : mid2 - a2;
		if (span_end(&s[k - 1]) > end)
			end = span_end(&s[k - 1]);
		if (s[k].addr > end)
			ngaps++;
		if (s[k].addr >= end && d < dist_touch)
			dist_touch = d, best_touch = k;
		if (!same_range(&s[k], &s[k - 1]) && d < dist_any)
			dist_any = d, best_any = k;
	}
	if (dist_any == UINT64_MAX)
		return -ENOSPC; /* one point, or every point reads the same range */
	/* Unread addresses are the likely culprit: cut at every gap. Without
	 * gaps, halve, preferring a cut that does not read any address twice. */
	if (ngaps == 0)
		single = dist_touch != UINT64_MAX ? best_touch : best_any;
	pieces = cut_pieces(p, r.first_span, n, single, NULL);

	/* n spans make at most n requests in total: the room is there. */
	memmove(&p->reqs[ri + pieces], &p->reqs[ri + 1], (p->nreqs - ri - 1) * sizeof *p->reqs);
	p->nreqs += pieces - 1;
	cut_pieces(p, r.first_span, n, single, &p->reqs[ri]);
	return 0;
}

void mbp_print(const struct mb_plan *p, FILE *f)
{
	if (!p || !f)
		return;
	for (size_t i = 0; i < p->nreqs; i++) {
		const struct mb_req *r = &p->reqs[i];
		fprintf(f, "unit %u %s %u..%u (%u %s) device %u points", (unsigned)r->unit,
			table_name(r->table), (unsigned)r->addr, (unsigned)r->addr + r->count - 1,
			(unsigned)r->count, bit_table(r->table) ? "bits" : "registers",
			(unsigned)r->device);
		for (size_t j = 0; j < r->nspans; j++)
			fprintf(f, " %u", (unsigned)p->spans[r->first_span + j].point);
		fputc('\n', f);
	}
}
