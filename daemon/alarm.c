/*
 * alarm.c - the alarm engine (see alarm.h for the semantics).
 *
 * Layout: each profile is compiled once into rules with their comparison
 * operands resolved (enum words to raw keys) and two CSR indexes, point ->
 * rules on it and point -> `unless` entries watching it, so a reading costs
 * O(rules on its point). Every device has one slot per rule plus one for the
 * implicit offline rule, laid out contiguously (device base + rule index).
 *
 * Per slot the condition is kept twice: `raw` is the instantaneous condition
 * (with the deadband's hysteresis) and `qual` the qualified one, which
 * follows raw once it has differed for on_delay (raw true) or off_delay (raw
 * false). Only qual drives the state machine. Pending delays and chatter
 * windows are deadlines in one indexed min-heap of slots, so alarm_tick() and
 * alarm_next_deadline() cost O(log n) per due slot, not O(slots).
 */
#include "alarm.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOPOS UINT32_MAX
#define VALUE_MAX 256 /* longest string value kept for messages */
#define CHATTER_RING (ALARM_CHATTER_TOGGLES + 1)
#define FLOOD_RING (ALARM_FLOOD_START + 1)
#define DELAY_MAX ((int64_t)1 << 50) /* ~35000 years: mono + delay cannot overflow */

static const char NOTE_RESTORED[] = "condition ended while cgwd was not running";
static const char NOTE_SHELVED_FIRE[] = "device shelved; fire alarms are never suppressed";
static const char OFFLINE_TEMPLATE[] = "{name} 通信中断";
static const char OFFLINE_CLEAR_TEMPLATE[] = "{name} 通信恢复";

/* An equals / not_equals / unless comparison, resolved against its point. */
struct cmp {
	const struct cgw_value *op;
	const struct cfg_point *pt;
	int64_t key; /* enum points: the raw value of the operand's word */
	bool has_key;
};

struct crule {
	const struct cfg_alarm *a; /* NULL: the offline rule */
	const struct cfg_point *pt;
	uint32_t pt_idx;
	const char *name;
	const char *tmpl;
	const char *clear_tmpl; /* NULL: tmpl followed by CLEARED */
	int op;
	double thr, deadband;
	uint64_t bit;
	struct cmp cmp;
	int64_t on_delay, off_delay;
	uint32_t unl_off, n_unl; /* this rule's unless entries in the profile's flat list */
	int severity;
	bool latch, critical_fire;
};

struct cprofile {
	struct crule *rules; /* n_rules + 1: the last is offline */
	size_t n_rules;      /* the profile's alarms */
	size_t n_points;
	uint32_t *pt_rule_off; /* n_points + 1 */
	uint32_t *pt_rules;
	uint32_t *pt_unl_off; /* n_points + 1 */
	uint32_t *pt_unls;    /* flat unless indexes watching the point */
	struct cmp *unl_cmp;  /* n_unl */
	int64_t *unl_within;
	int32_t *pt_val; /* value slot of the point (-1: no rule on it) */
	uint32_t n_unl, n_val;
};

/* What an `unless` point last showed. */
struct unl_state {
	int64_t last; /* mono when it was last seen leaving the value; INT64_MIN: never */
	bool now;     /* the last good reading had the value */
};

struct val_slot {
	struct cgw_value v;
	bool valid;
};

struct slot {
	char *id; /* alarm_id of the current (or last) occurrence; "" none */
	size_t id_cap;
	int64_t raised_at, last_raised;
	int64_t t_change; /* mono: raw started to differ from qual */
	int64_t deadline; /* heap key; -1: not in the heap */
	int64_t chatter_last;
	int64_t toggles[CHATTER_RING];
	uint32_t heap_pos;
	uint32_t dev;
	int32_t rule; /* index into the profile's crules (offline = n_rules) */
	unsigned chatter_count;
	uint8_t n_tog, tog_head;
	uint8_t state, rep_state; /* now; last sent to the platform */
	bool raw, qual;
	bool pending;  /* raw != qual and a delay runs */
	bool excused;  /* raw true but this occurrence is excused by `unless` */
	bool restored; /* from alarm_restore(), no good reading since */
	bool seen;     /* a message about this occurrence was sent */
	bool chattering;
};

struct dev_rt {
	const struct cprofile *cp;
	uint32_t slot_base, unl_base, val_base;
	bool shelved;
};

struct alarm_engine {
	const struct cgw_config *cfg;
	alarm_emit_fn emit;
	alarm_flood_fn flood_fn;
	void *arg;
	struct cprofile *cps;
	struct dev_rt *devs;
	struct slot *slots;
	size_t n_slots;
	char *ids;
	struct unl_state *unl;
	struct val_slot *vals;
	uint32_t *heap;
	size_t heap_n;
	int64_t flood_ring[FLOOD_RING];
	unsigned flood_n, flood_head, flood_count;
	bool flood;
	char msg[ALARM_MESSAGE_MAX];
	char note[256];
};

/* ---- values ------------------------------------------------------------------ */

static bool num_of(const struct cgw_value *v, double *d)
{
	switch (v->type) {
	case CGW_V_BOOL:
		*d = v->b;
		return true;
	case CGW_V_INT:
		*d = (double)v->i;
		return true;
	case CGW_V_UINT:
		*d = (double)v->u;
		return true;
	case CGW_V_DOUBLE:
		if (isnan(v->d))
			return false;
		*d = v->d;
		return true;
	default:
		return false;
	}
}

static bool int_of(const struct cgw_value *v, int64_t *i)
{
	switch (v->type) {
	case CGW_V_BOOL:
		*i = v->b;
		return true;
	case CGW_V_INT:
		*i = v->i;
		return true;
	case CGW_V_UINT:
		if (v->u > INT64_MAX)
			return false;
		*i = (int64_t)v->u;
		return true;
	case CGW_V_DOUBLE:
		if (!isfinite(v->d) || v->d != floor(v->d) || fabs(v->d) >= 9.2e18)
			return false;
		*i = (int64_t)v->d;
		return true;
	default:
		return false;
	}
}

static bool bits_of(const struct cgw_value *v, uint64_t *u)
{
	int64_t i;

	if (v->type == CGW_V_UINT) {
		*u = v->u;
		return true;
	}
	if (!int_of(v, &i))
		return false;
	*u = (uint64_t)i;
	return true;
}

const char *alarm_enum_label(const struct cfg_point *pt, const struct cgw_value *v)
{
	int64_t k;

	if (v->type == CGW_V_STRING)
		return v->s;
	if (!int_of(v, &k))
		return NULL;
	for (size_t i = 0; i < pt->n_enums; i++)
		if (pt->enums[i].key == k)
			return pt->enums[i].label;
	return NULL;
}

static void cmp_init(struct cmp *c, const struct cgw_value *op, const struct cfg_point *pt)
{
	c->op = op;
	c->pt = pt;
	c->has_key = false;
	if (op->type != CGW_V_STRING || !pt->n_enums)
		return;
	for (size_t i = 0; i < pt->n_enums; i++) {
		if (!strcmp(pt->enums[i].label, op->s)) {
			c->key = pt->enums[i].key;
			c->has_key = true;
			return;
		}
	}
}

/* 1 equal, 0 not, -1 not comparable (ignored like a bad reading). */
static int cmp_match(const struct cmp *c, const struct cgw_value *v)
{
	const struct cgw_value *op = c->op;
	double a, b;
	int64_t k;

	switch (op->type) {
	case CGW_V_STRING:
		if (v->type == CGW_V_STRING)
			return strcmp(v->s, op->s) == 0;
		if (!c->pt->n_enums || !int_of(v, &k))
			return -1;
		/* a raw value with no word in the enum equals no word */
		return c->has_key && k == c->key;
	case CGW_V_BOOL:
		if (!num_of(v, &a))
			return -1;
		return (a != 0) == op->b;
	case CGW_V_DOUBLE:
	case CGW_V_INT:
	case CGW_V_UINT:
		if (!num_of(v, &a) || !num_of(op, &b))
			return -1;
		return fabs(a - b) <= 1e-9 * fmax(1.0, fmax(fabs(a), fabs(b)));
	default:
		return -1;
	}
}

/* The rule's instantaneous condition given the previous one (hysteresis). */
static int rule_eval(const struct crule *r, const struct cgw_value *v, bool prev)
{
	double d;
	uint64_t u;
	int m;

	switch (r->op) {
	case CFG_OP_ABOVE:
		if (!num_of(v, &d))
			return -1;
		return prev ? d > r->thr - r->deadband : d > r->thr;
	case CFG_OP_BELOW:
		if (!num_of(v, &d))
			return -1;
		return prev ? d < r->thr + r->deadband : d < r->thr;
	case CFG_OP_EQUALS:
		return cmp_match(&r->cmp, v);
	case CFG_OP_NOT_EQUALS:
		m = cmp_match(&r->cmp, v);
		return m < 0 ? -1 : !m;
	case CFG_OP_BIT:
		if (!bits_of(v, &u))
			return -1;
		return (int)((u >> r->bit) & 1u);
	default:
		return -1;
	}
}

static void value_store(struct val_slot *vs, const struct cgw_value *v)
{
	if (v->type == CGW_V_STRING) {
		if (vs->valid && vs->v.type == CGW_V_STRING && !strncmp(vs->v.s, v->s, VALUE_MAX) &&
		    strlen(vs->v.s) == strnlen(v->s, VALUE_MAX))
			return;
		char *c = strndup(v->s, VALUE_MAX);
		cgw_value_clear(&vs->v);
		vs->valid = c != NULL;
		if (c) {
			vs->v.type = CGW_V_STRING;
			vs->v.s = c;
		}
		return;
	}
	cgw_value_clear(&vs->v);
	vs->v = *v;
	vs->valid = true;
}

/* ---- text -------------------------------------------------------------------- */

struct sbuf {
	char *p;
	size_t len, size;
	bool full;
};

/* Append n bytes; on overflow cut on a UTF-8 character boundary and stop. */
static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	size_t room;

	if (b->full || !b->size)
		return;
	room = b->size - 1 - b->len;
	if (n > room) {
		n = room;
		while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
			n--;
		b->full = true;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
	if (s)
		sb_add(b, s, strlen(s));
}

/* snprintf(out, size, "%.*g", prec, d) for the values sensors give, without
 * printf's arbitrary precision (it was the core's largest cost per reading):
 * d times an exact power of ten is rounded to prec digits when the product
 * is clearly away from a rounding tie; otherwise, and outside 1e-4 <= |d| <
 * 10^prec, it returns 0 and the caller prints. test_alarm compares it with
 * snprintf on millions of values. */
static size_t fast_g(double d, int prec, char *out, size_t size)
{
	static const double p10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
				     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
				     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
	double a = fabs(d), scaled, fl;
	char digits[32], *p = digits;
	int e = -4, k;
	uint64_t n, div;

	if (!(a >= 1e-4) || a >= p10[prec] || size < 32)
		return 0;
	while (e + 1 < prec && a >= (e + 1 >= 0 ? p10[e + 1] : 1.0 / p10[-(e + 1)]))
		e++;
	/* e = floor(log10(a)); the comparison with 1/10^j is exact enough:
	 * a value that close to a power of ten is a tie case below or prints
	 * the same either way */
	k = prec - 1 - e;
	if (k > 22 || k < 0)
		return 0;
	scaled = a * p10[k];
	fl = floor(scaled);
	/* the product is within half an ulp of the true one: keep well away
	 * from .5, and from the digit count changing */
	double frac = scaled - fl, ulp = scaled * 0x1p-52;
	if (fabs(frac - 0.5) <= 4 * ulp + 1e-9 || scaled < p10[prec - 1])
		return 0;
	n = (uint64_t)fl + (frac > 0.5);
	if (n >= (uint64_t)p10[prec]) { /* 9.99..95 rounded up to 10 */
		if (e + 1 >= prec)
			return 0;
		n /= 10;
		k--;
	}
	if (d < 0)
		*p++ = '-';
	div = (uint64_t)p10[k];
	uint64_t fp = n % div;
	char t[24];
	int w;
	p += cgw_u64_text(n / div, p);
	if (fp) {
		/* k digits, leading zeros included, trailing ones dropped */
		for (w = k; w > 0; w--, fp /= 10)
			t[w - 1] = (char)('0' + fp % 10);
		w = k;
		while (w > 0 && t[w - 1] == '0')
			w--;
		*p++ = '.';
		memcpy(p, t, (size_t)w);
		p += w;
	}
	*p = '\0';
	memcpy(out, digits, (size_t)(p - digits) + 1);
	return (size_t)(p - digits);
}

static size_t fmt_double(double d, bool single, char *out, size_t size)
{
	int n;
	size_t f;

	if (d == 0)
		d = 0; /* no "-0" */
	if (!(single && fabs(d) >= 1e7) && (f = fast_g(d, single ? 7 : 15, out, size)) > 0)
		return f;
	/* a float32 carries ~7 digits: 0.12f is 0.1199999973 as a double */
	if (single && fabs(d) >= 1e7 && fabs(d) < 1e15)
		n = snprintf(out, size, "%.0f", d);
	else
		n = snprintf(out, size, "%.*g", single ? 7 : 15, d);
	return n < 0 ? 0 : (size_t)n >= size ? size - 1 : (size_t)n;
}

size_t alarm_format_value(const struct cfg_point *pt, const struct cgw_value *v, char *out,
			  size_t size)
{
	struct sbuf b = {out, 0, size, false};
	char num[48];
	const char *label;

	if (!size)
		return 0;
	out[0] = '\0';
	if (!v)
		return 0;
	if (pt && pt->n_enums && (label = alarm_enum_label(pt, v)) != NULL) {
		sb_str(&b, label);
		return b.len;
	}
	switch (v->type) {
	case CGW_V_BOOL:
		sb_str(&b, v->b ? "true" : "false");
		break;
	case CGW_V_INT:
		snprintf(num, sizeof(num), "%" PRId64, v->i);
		sb_str(&b, num);
		break;
	case CGW_V_UINT:
		snprintf(num, sizeof(num), "%" PRIu64, v->u);
		sb_str(&b, num);
		break;
	case CGW_V_DOUBLE:
		fmt_double(v->d, pt && pt->type == CGW_T_FLOAT32, num, sizeof(num));
		sb_str(&b, num);
		break;
	case CGW_V_STRING:
		sb_str(&b, v->s);
		break;
	default:
		break;
	}
	return b.len;
}

static const struct cfg_point *rule_point(const struct cfg_profile *pr, int rule)
{
	if (rule < 0 || (size_t)rule >= pr->n_alarms || pr->alarms[rule].point_idx >= pr->n_points)
		return NULL;
	return &pr->points[pr->alarms[rule].point_idx];
}

size_t alarm_render(const struct cgw_config *cfg, uint32_t dev, int rule, const char *tmpl,
		    const struct cgw_value *v, char *out, size_t size)
{
	struct sbuf b = {out, 0, size, false};
	const struct cfg_device *d;
	const struct cfg_profile *pr;
	const struct cfg_point *pt;
	const char *p, *lit;
	char val[VALUE_MAX + 64];

	if (!size)
		return 0;
	out[0] = '\0';
	if (!cfg || dev >= cfg->n_devices || !tmpl)
		return 0;
	d = &cfg->devices[dev];
	pr = cfg_device_profile(cfg, d);
	pt = rule_point(pr, rule);
	for (p = lit = tmpl; *p && !b.full;) {
		const char *q;
		size_t kl;

		if (*p != '{' || !(q = strchr(p + 1, '}')) || (kl = (size_t)(q - p - 1)) > 64) {
			p++;
			continue;
		}
		const char *k = p + 1;
		const char *rep = NULL;
		char key[72];
		bool known = true;

		if (kl == 4 && !memcmp(k, "name", 4)) {
			rep = d->name;
		} else if (kl == 6 && !memcmp(k, "device", 6)) {
			rep = d->id;
		} else if (kl == 5 && !memcmp(k, "alarm", 5)) {
			rep = rule >= 0 && (size_t)rule < pr->n_alarms ? pr->alarms[rule].name :
									 "offline";
		} else if (kl == 5 && !memcmp(k, "value", 5)) {
			rep = v ? (alarm_format_value(pt, v, val, sizeof(val)), val) : "?";
		} else if (kl == 4 && !memcmp(k, "unit", 4)) {
			rep = pt && pt->unit ? pt->unit : "";
		} else if (kl > 9 && !memcmp(k, "location.", 9)) {
			memcpy(key, k + 9, kl - 9);
			key[kl - 9] = '\0';
			rep = cfg_device_location(d, key);
			if (!rep)
				rep = ""; /* a device without that key: nothing, not "{...}" */
		} else {
			known = false;
		}
		if (!known) {
			p = q + 1; /* left as is: stays part of the literal run */
			continue;
		}
		sb_add(&b, lit, (size_t)(p - lit));
		sb_str(&b, rep);
		p = lit = q + 1;
	}
	sb_add(&b, lit, strlen(lit));
	return b.len;
}

/* ---- compile ------------------------------------------------------------------ */

static void cprofile_free(struct cprofile *cp)
{
	free(cp->rules);
	free(cp->pt_rule_off);
	free(cp->pt_rules);
	free(cp->pt_unl_off);
	free(cp->pt_unls);
	free(cp->unl_cmp);
	free(cp->unl_within);
	free(cp->pt_val);
}

static int64_t clamp_delay(int64_t ms)
{
	return ms < 0 ? 0 : ms > DELAY_MAX ? DELAY_MAX : ms;
}

static int cprofile_build(struct cprofile *cp, const struct cfg_profile *pr)
{
	size_t np = pr->n_points, nr = pr->n_alarms, nu = 0;

	if (np >= UINT32_MAX / 2 || nr >= UINT32_MAX / 2)
		return -E2BIG;
	for (size_t r = 0; r < nr; r++)
		nu += pr->alarms[r].n_unless;
	if (nu >= UINT32_MAX / 2)
		return -E2BIG;
	cp->n_rules = nr;
	cp->n_points = np;
	cp->n_unl = (uint32_t)nu;
	cp->rules = calloc(nr + 1, sizeof(*cp->rules));
	cp->pt_rule_off = calloc(np + 1, sizeof(uint32_t));
	cp->pt_rules = calloc(nr + 1, sizeof(uint32_t));
	cp->pt_unl_off = calloc(np + 1, sizeof(uint32_t));
	cp->pt_unls = calloc(nu + 1, sizeof(uint32_t));
	cp->unl_cmp = calloc(nu + 1, sizeof(*cp->unl_cmp));
	cp->unl_within = calloc(nu + 1, sizeof(int64_t));
	cp->pt_val = calloc(np + 1, sizeof(int32_t));
	if (!cp->rules || !cp->pt_rule_off || !cp->pt_rules || !cp->pt_unl_off || !cp->pt_unls ||
	    !cp->unl_cmp || !cp->unl_within || !cp->pt_val)
		return -ENOMEM;

	uint32_t uo = 0;
	for (size_t r = 0; r < nr; r++) {
		const struct cfg_alarm *a = &pr->alarms[r];
		struct crule *cr = &cp->rules[r];

		cr->a = a;
		cr->name = a->name;
		cr->tmpl = a->message ? a->message : "{name} {alarm}";
		cr->clear_tmpl = a->clear_message;
		cr->pt = a->point_idx < np ? &pr->points[a->point_idx] : NULL;
		cr->pt_idx = (uint32_t)a->point_idx;
		cr->op = a->op;
		cr->thr = a->threshold;
		cr->deadband = a->deadband > 0 ? a->deadband : 0;
		cr->bit = a->bit >= 0 && a->bit < 64 ? (uint64_t)a->bit : 0;
		cr->on_delay = clamp_delay(a->on_delay_ms);
		cr->off_delay = clamp_delay(a->off_delay_ms);
		cr->severity = a->severity;
		cr->latch = a->latch;
		cr->critical_fire = pr->class == CFG_CLASS_FIRE && a->severity == CFG_SEV_CRITICAL;
		if (cr->pt)
			cmp_init(&cr->cmp, &a->operand, cr->pt);
		cr->unl_off = uo;
		cr->n_unl = (uint32_t)a->n_unless;
		for (size_t k = 0; k < a->n_unless; k++, uo++) {
			const struct cfg_unless *un = &a->unless[k];
			if (un->point_idx < np)
				cmp_init(&cp->unl_cmp[uo], &un->operand,
					 &pr->points[un->point_idx]);
			cp->unl_within[uo] = clamp_delay(un->within_ms);
		}
	}
	struct crule *off = &cp->rules[nr];
	off->name = "offline";
	off->tmpl = OFFLINE_TEMPLATE;
	off->clear_tmpl = OFFLINE_CLEAR_TEMPLATE;
	off->severity = CFG_SEV_MAJOR;

	/* CSR: count, prefix sum, fill */
	for (size_t r = 0; r < nr; r++)
		if (cp->rules[r].pt)
			cp->pt_rule_off[pr->alarms[r].point_idx + 1]++;
	for (size_t k = 0; k < nu; k++)
		if (cp->unl_cmp[k].pt)
			cp->pt_unl_off[(size_t)(cp->unl_cmp[k].pt - pr->points) + 1]++;
	for (size_t p = 0; p < np; p++) {
		cp->pt_rule_off[p + 1] += cp->pt_rule_off[p];
		cp->pt_unl_off[p + 1] += cp->pt_unl_off[p];
	}
	uint32_t *fill = calloc(np + 1, sizeof(uint32_t));
	if (!fill)
		return -ENOMEM;
	for (size_t r = 0; r < nr; r++) {
		size_t p = pr->alarms[r].point_idx;
		if (cp->rules[r].pt)
			cp->pt_rules[cp->pt_rule_off[p] + fill[p]++] = (uint32_t)r;
	}
	memset(fill, 0, (np + 1) * sizeof(uint32_t));
	for (size_t k = 0; k < nu; k++) {
		if (!cp->unl_cmp[k].pt)
			continue;
		size_t p = (size_t)(cp->unl_cmp[k].pt - pr->points);
		cp->pt_unls[cp->pt_unl_off[p] + fill[p]++] = (uint32_t)k;
	}
	free(fill);
	for (size_t p = 0; p < np; p++)
		cp->pt_val[p] = cp->pt_rule_off[p + 1] > cp->pt_rule_off[p] ? (int32_t)cp->n_val++ :
									      -1;
	return 0;
}

static const struct crule *slot_rule(const struct alarm_engine *e, const struct slot *s)
{
	return &e->devs[s->dev].cp->rules[s->rule];
}

static const struct cgw_value *slot_value(const struct alarm_engine *e, const struct slot *s)
{
	const struct dev_rt *dr = &e->devs[s->dev];
	const struct crule *cr = &dr->cp->rules[s->rule];
	const struct val_slot *vs;
	int32_t vi;

	if (!cr->pt)
		return NULL;
	vi = dr->cp->pt_val[cr->pt_idx];
	if (vi < 0)
		return NULL;
	vs = &e->vals[dr->val_base + (uint32_t)vi];
	return vs->valid ? &vs->v : NULL;
}

int alarm_engine_new(const struct cgw_config *cfg, alarm_emit_fn emit, void *arg,
		     struct alarm_engine **out)
{
	struct alarm_engine *e;
	size_t n_slots = 0, n_unl = 0, n_val = 0, id_bytes = 0;
	int r = -ENOMEM;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!cfg || !emit)
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->cfg = cfg;
	e->emit = emit;
	e->arg = arg;
	e->cps = calloc(cfg->n_profiles + 1, sizeof(*e->cps));
	e->devs = calloc(cfg->n_devices + 1, sizeof(*e->devs));
	if (!e->cps || !e->devs)
		goto fail;
	for (size_t i = 0; i < cfg->n_profiles; i++)
		if ((r = cprofile_build(&e->cps[i], &cfg->profiles[i])) < 0)
			goto fail;
	r = -E2BIG;
	for (size_t i = 0; i < cfg->n_devices; i++) {
		const struct cfg_device *d = &cfg->devices[i];
		struct dev_rt *dr = &e->devs[i];

		if (d->profile >= cfg->n_profiles)
			goto fail;
		dr->cp = &e->cps[d->profile];
		dr->slot_base = (uint32_t)n_slots;
		dr->unl_base = (uint32_t)n_unl;
		dr->val_base = (uint32_t)n_val;
		n_slots += dr->cp->n_rules + 1;
		n_unl += dr->cp->n_unl;
		n_val += dr->cp->n_val;
		for (size_t k = 0; k <= dr->cp->n_rules; k++)
			id_bytes += strlen(d->id) + strlen(dr->cp->rules[k].name) + 24;
		if (n_slots >= UINT32_MAX / 2 || n_unl >= UINT32_MAX / 2 || n_val >= INT32_MAX / 2)
			goto fail;
	}
	r = -ENOMEM;
	e->n_slots = n_slots;
	e->slots = calloc(n_slots + 1, sizeof(*e->slots));
	e->heap = calloc(n_slots + 1, sizeof(*e->heap));
	e->ids = calloc(id_bytes + 1, 1);
	e->unl = calloc(n_unl + 1, sizeof(*e->unl));
	e->vals = calloc(n_val + 1, sizeof(*e->vals));
	if (!e->slots || !e->heap || !e->ids || !e->unl || !e->vals)
		goto fail;
	char *idp = e->ids;
	for (size_t i = 0; i < cfg->n_devices; i++) {
		const struct dev_rt *dr = &e->devs[i];
		for (size_t k = 0; k <= dr->cp->n_rules; k++) {
			struct slot *s = &e->slots[dr->slot_base + k];
			s->dev = (uint32_t)i;
			s->rule = (int32_t)k;
			s->heap_pos = NOPOS;
			s->deadline = -1;
			s->last_raised = INT64_MIN;
			s->id = idp;
			s->id_cap = strlen(cfg->devices[i].id) + strlen(dr->cp->rules[k].name) + 24;
			idp += s->id_cap;
		}
	}
	for (size_t i = 0; i < n_unl; i++)
		e->unl[i].last = INT64_MIN;
	*out = e;
	return 0;
fail:
	alarm_engine_free(e);
	return r;
}

void alarm_engine_free(struct alarm_engine *e)
{
	size_t n_val = 0;

	if (!e)
		return;
	if (e->cps) {
		for (size_t i = 0; i < e->cfg->n_profiles; i++)
			cprofile_free(&e->cps[i]);
	}
	if (e->vals && e->devs) {
		for (size_t i = 0; i < e->cfg->n_devices; i++)
			n_val += e->devs[i].cp ? e->devs[i].cp->n_val : 0;
		for (size_t i = 0; i < n_val; i++)
			cgw_value_clear(&e->vals[i].v);
	}
	free(e->cps);
	free(e->devs);
	free(e->slots);
	free(e->heap);
	free(e->ids);
	free(e->unl);
	free(e->vals);
	free(e);
}

void alarm_engine_set_flood_cb(struct alarm_engine *e, alarm_flood_fn fn)
{
	if (e)
		e->flood_fn = fn;
}

/* ---- deadlines: an indexed min-heap of slots ------------------------------------ */

static int64_t hkey(const struct alarm_engine *e, size_t i)
{
	return e->slots[e->heap[i]].deadline;
}

static void heap_swap(struct alarm_engine *e, size_t i, size_t j)
{
	uint32_t t = e->heap[i];

	e->heap[i] = e->heap[j];
	e->heap[j] = t;
	e->slots[e->heap[i]].heap_pos = (uint32_t)i;
	e->slots[e->heap[j]].heap_pos = (uint32_t)j;
}

static void sift_up(struct alarm_engine *e, size_t i)
{
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (hkey(e, p) <= hkey(e, i))
			break;
		heap_swap(e, i, p);
		i = p;
	}
}

static void sift_down(struct alarm_engine *e, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < e->heap_n && hkey(e, l) < hkey(e, m))
			m = l;
		if (r < e->heap_n && hkey(e, r) < hkey(e, m))
			m = r;
		if (m == i)
			return;
		heap_swap(e, i, m);
		i = m;
	}
}

static void heap_set(struct alarm_engine *e, struct slot *s, int64_t deadline)
{
	size_t pos = s->heap_pos;

	if (deadline < 0) {
		s->deadline = -1;
		if (pos == NOPOS)
			return;
		size_t last = --e->heap_n;
		if (pos != last) {
			heap_swap(e, pos, last);
			sift_down(e, pos);
			sift_up(e, pos);
		}
		s->heap_pos = NOPOS;
		return;
	}
	s->deadline = deadline;
	if (pos == NOPOS) {
		pos = e->heap_n++;
		e->heap[pos] = (uint32_t)(s - e->slots);
		s->heap_pos = (uint32_t)pos;
		sift_up(e, pos);
		return;
	}
	sift_up(e, pos);
	sift_down(e, s->heap_pos);
}

static void reschedule(struct alarm_engine *e, struct slot *s)
{
	const struct crule *cr = slot_rule(e, s);
	int64_t d = -1;

	if (s->pending)
		d = s->t_change + (s->raw ? cr->on_delay : cr->off_delay);
	if (s->chattering) {
		int64_t c = s->chatter_last + ALARM_CHATTER_WINDOW_MS;
		if (d < 0 || c < d)
			d = c;
	}
	if (d != s->deadline || (d >= 0) != (s->heap_pos != NOPOS))
		heap_set(e, s, d);
}

/* ---- emitting ----------------------------------------------------------------- */

static void note_add(char *buf, size_t size, const char *s)
{
	size_t n = strlen(buf);

	if (!s || !*s)
		return;
	snprintf(buf + n, size - n, "%s%s", n ? "; " : "", s);
}

static void fill_change(const struct alarm_engine *e, const struct slot *s, struct alarm_change *c,
			char *msg, size_t msg_size)
{
	const struct cfg_device *d = &e->cfg->devices[s->dev];
	const struct dev_rt *dr = &e->devs[s->dev];
	const struct crule *cr = &dr->cp->rules[s->rule];

	memset(c, 0, sizeof(*c));
	c->alarm_id = s->id;
	c->device = s->dev;
	c->device_id = d->id;
	c->rule = (size_t)s->rule < dr->cp->n_rules ? s->rule : ALARM_OFFLINE_RULE;
	c->rule_name = cr->name;
	c->state = (enum alarm_state)s->state;
	c->shelved = dr->shelved && !cr->critical_fire && s->state != ALARM_NORMAL;
	c->severity = cr->severity;
	c->value = slot_value(e, s);
	c->raised_at_ms = s->raised_at;
	c->critical_fire = cr->critical_fire;
	c->latched = cr->latch;
	c->chattering = s->chattering;
	c->chatter_count = s->chattering ? s->chatter_count : 0;
	c->flood = e->flood;
	alarm_render(e->cfg, s->dev, c->rule, cr->tmpl, c->value, msg, msg_size);
	c->message = msg;
}

/* Every event reads right on its own: a clear says that the condition
 * cleared (the rule's clear_message, or the raise text followed by 已恢复),
 * an acknowledgement or a shelving says so; never the bare raise text again. */
static void event_message(const struct alarm_engine *e, const struct slot *s, const char *event,
			  char *msg, size_t size)
{
	const struct crule *cr = slot_rule(e, s);
	const char *suffix = NULL;
	size_t n, k;

	if (!strcmp(event, "cleared")) {
		if (cr->clear_tmpl) {
			alarm_render(e->cfg, s->dev,
				     (size_t)s->rule < e->devs[s->dev].cp->n_rules ?
					     s->rule :
					     ALARM_OFFLINE_RULE,
				     cr->clear_tmpl, slot_value(e, s), msg, size);
			return;
		}
		suffix = ALARM_TEXT_CLEARED;
	} else if (!strcmp(event, "acknowledged")) {
		suffix = ALARM_TEXT_ACKED;
	} else if (!strcmp(event, "shelved")) {
		suffix = ALARM_TEXT_SHELVED;
	} else if (!strcmp(event, "unshelved")) {
		suffix = ALARM_TEXT_UNSHELVED;
	}
	if (!suffix)
		return;
	n = strlen(msg);
	k = strlen(suffix);
	if (k + 1 >= size)
		return;
	if (n + k + 1 > size) {
		/* make room on a UTF-8 character boundary */
		n = size - k - 1;
		while (n > 0 && ((unsigned char)msg[n] & 0xC0) == 0x80)
			n--;
	}
	memcpy(msg + n, suffix, k + 1);
}

static void emit(struct alarm_engine *e, struct slot *s, const char *event, int64_t wall,
		 const char *by, const char *note, bool suppressed)
{
	const struct crule *cr = slot_rule(e, s);
	struct alarm_change c;

	fill_change(e, s, &c, e->msg, sizeof(e->msg));
	event_message(e, s, event, e->msg, sizeof(e->msg));
	c.event = event;
	c.ts_ms = wall;
	c.by = by;
	c.suppressed = suppressed;
	e->note[0] = '\0';
	note_add(e->note, sizeof(e->note), note);
	if (e->devs[s->dev].shelved && cr->critical_fire)
		note_add(e->note, sizeof(e->note), NOTE_SHELVED_FIRE);
	c.note = e->note[0] ? e->note : NULL;
	if (!suppressed) {
		s->seen = true;
		s->rep_state = s->state;
	}
	e->emit(e->arg, &c);
}

static int64_t flood_end_at(const struct alarm_engine *e)
{
	unsigned i = (e->flood_head + FLOOD_RING - ALARM_FLOOD_END) % FLOOD_RING;
	return e->flood_ring[i] + ALARM_FLOOD_WINDOW_MS;
}

static void flood_new_alarm(struct alarm_engine *e, int64_t wall, int64_t mono)
{
	e->flood_ring[e->flood_head] = mono;
	e->flood_head = (e->flood_head + 1) % FLOOD_RING;
	if (e->flood_n < FLOOD_RING)
		e->flood_n++;
	if (e->flood) {
		e->flood_count++;
		return;
	}
	/* head is now the oldest of the last FLOOD_RING */
	if (e->flood_n == FLOOD_RING &&
	    mono - e->flood_ring[e->flood_head] < ALARM_FLOOD_WINDOW_MS) {
		e->flood = true;
		e->flood_count = FLOOD_RING;
		if (e->flood_fn)
			e->flood_fn(e->arg, true, e->flood_count, wall);
	}
}

/* Minor and warning alarms the platform has not seen wait out a flood. */
static bool flood_holds(const struct alarm_engine *e, const struct slot *s, const struct crule *cr)
{
	return e->flood && !cr->critical_fire && cr->severity >= CFG_SEV_MINOR && !s->seen;
}

/* Send the current state if what was last sent differs (end of chatter or flood). */
static void catch_up(struct alarm_engine *e, struct slot *s, int64_t wall, const char *note)
{
	const struct crule *cr = slot_rule(e, s);
	bool active = s->state == ALARM_ACTIVE_UNACKED || s->state == ALARM_ACTIVE_ACKED;

	if (s->state == ALARM_NORMAL || (s->seen && s->rep_state == s->state) ||
	    flood_holds(e, s, cr) || s->chattering)
		return;
	emit(e, s, active ? "raised" : "cleared", wall, NULL, note, false);
}

static void new_occurrence(struct alarm_engine *e, struct slot *s, int64_t wall)
{
	const char *dev = e->cfg->devices[s->dev].id;
	int64_t ts = wall;

	if (s->last_raised != INT64_MIN && ts <= s->last_raised)
		ts = s->last_raised + 1; /* ids never repeat, even if the wall clock steps back */
	s->last_raised = ts;
	s->raised_at = ts;
	snprintf(s->id, s->id_cap, "%s/%s/%" PRId64, dev, slot_rule(e, s)->name, ts);
	s->seen = false;
	s->rep_state = ALARM_NORMAL;
}

/* A raise or clear driven by the condition. */
static void cond_transition(struct alarm_engine *e, struct slot *s, uint8_t to, const char *event,
			    int64_t wall, int64_t mono, const char *note)
{
	const struct crule *cr = slot_rule(e, s);
	bool sup = false;
	char buf[96];

	if (s->state == ALARM_NORMAL && to != ALARM_NORMAL) {
		new_occurrence(e, s, wall);
		flood_new_alarm(e, wall, mono);
	}
	s->state = to;
	buf[0] = '\0';
	if (!cr->critical_fire) {
		s->toggles[s->tog_head] = mono;
		s->tog_head = (uint8_t)((s->tog_head + 1) % CHATTER_RING);
		if (s->n_tog < CHATTER_RING)
			s->n_tog++;
		s->chatter_last = mono;
		if (s->chattering) {
			s->chatter_count++;
			sup = true;
		} else if (s->n_tog == CHATTER_RING &&
			   mono - s->toggles[s->tog_head] < ALARM_CHATTER_WINDOW_MS) {
			s->chattering = true;
			s->chatter_count = CHATTER_RING;
			snprintf(buf, sizeof(buf), "chattering: %u toggles in %d s",
				 s->chatter_count, ALARM_CHATTER_WINDOW_MS / 1000);
		}
		if (flood_holds(e, s, cr))
			sup = true;
		/* the end of an occurrence the platform knows is always sent */
		if (to == ALARM_NORMAL && s->seen)
			sup = false;
	}
	if (note)
		note_add(buf, sizeof(buf), note);
	emit(e, s, event, wall, NULL, buf, sup);
}

/* qual takes raw's value: the state machine moves. */
static void qualify(struct alarm_engine *e, struct slot *s, int64_t wall, int64_t mono,
		    const char *note)
{
	const struct crule *cr = slot_rule(e, s);

	s->qual = s->raw;
	s->pending = false;
	if (s->qual) {
		if (s->state == ALARM_NORMAL || s->state == ALARM_CLEARED_UNACKED)
			cond_transition(e, s, ALARM_ACTIVE_UNACKED, "raised", wall, mono, note);
	} else if (s->state == ALARM_ACTIVE_UNACKED && !cr->latch) {
		cond_transition(e, s, ALARM_CLEARED_UNACKED, "cleared", wall, mono, note);
	} else if (s->state == ALARM_ACTIVE_ACKED) {
		cond_transition(e, s, ALARM_NORMAL, "cleared", wall, mono, note);
	}
}

static bool unless_excuses(const struct alarm_engine *e, const struct slot *s,
			   const struct crule *cr, int64_t mono)
{
	const struct dev_rt *dr = &e->devs[s->dev];

	for (uint32_t k = 0; k < cr->n_unl; k++) {
		uint32_t u = cr->unl_off + k;
		const struct unl_state *st = &e->unl[dr->unl_base + u];
		if (st->now || (st->last != INT64_MIN && mono - st->last <= dr->cp->unl_within[u]))
			return true;
	}
	return false;
}

/* Due delays and chatter windows of one slot. */
static void slot_due(struct alarm_engine *e, struct slot *s, int64_t wall, int64_t mono)
{
	const struct crule *cr = slot_rule(e, s);

	if (s->pending && s->t_change + (s->raw ? cr->on_delay : cr->off_delay) <= mono)
		qualify(e, s, wall, mono, NULL);
	if (s->chattering && s->chatter_last + ALARM_CHATTER_WINDOW_MS <= mono) {
		char note[64];
		snprintf(note, sizeof(note), "chattering ended: %u toggles", s->chatter_count);
		s->chattering = false;
		s->n_tog = 0;
		catch_up(e, s, wall, note);
		s->chatter_count = 0;
	}
	reschedule(e, s);
}

/* A new instantaneous condition c from a good reading. */
static void slot_eval(struct alarm_engine *e, struct slot *s, bool c, int64_t wall, int64_t mono)
{
	const struct crule *cr = slot_rule(e, s);

	if (s->restored) {
		s->restored = false;
		if (s->qual && !c) {
			s->raw = false;
			s->excused = false;
			qualify(e, s, wall, mono, NOTE_RESTORED);
			reschedule(e, s);
			return;
		}
	}
	if (c == s->raw)
		return;
	s->raw = c;
	s->pending = false;
	if (c) {
		if (!s->qual && cr->n_unl && unless_excuses(e, s, cr, mono)) {
			s->excused = true;
		} else if (!s->qual) {
			s->t_change = mono;
			s->pending = true;
			if (cr->on_delay == 0)
				qualify(e, s, wall, mono, NULL);
		}
	} else {
		s->excused = false;
		if (s->qual) {
			s->t_change = mono;
			s->pending = true;
			if (cr->off_delay == 0)
				qualify(e, s, wall, mono, NULL);
		}
	}
	reschedule(e, s);
}

/* ---- feeding ------------------------------------------------------------------- */

void alarm_on_reading(struct alarm_engine *e, uint32_t dev, uint32_t point,
		      const struct cgw_value *v, enum cgw_quality q, int64_t wall_ms,
		      int64_t mono_ms)
{
	const struct dev_rt *dr;
	const struct cprofile *cp;
	uint32_t r0, r1;

	if (!e || !v || q != CGW_Q_GOOD || dev >= e->cfg->n_devices)
		return;
	if (v->type == CGW_V_NONE || (v->type == CGW_V_DOUBLE && isnan(v->d)) ||
	    (v->type == CGW_V_STRING && !v->s))
		return;
	dr = &e->devs[dev];
	cp = dr->cp;
	if (point >= cp->n_points)
		return;

	for (uint32_t k = cp->pt_unl_off[point]; k < cp->pt_unl_off[point + 1]; k++) {
		uint32_t u = cp->pt_unls[k];
		struct unl_state *st = &e->unl[dr->unl_base + u];
		int m = cmp_match(&cp->unl_cmp[u], v);
		if (m > 0) {
			st->now = true;
		} else if (m == 0 && st->now) {
			st->now = false;
			st->last = mono_ms;
		}
	}
	r0 = cp->pt_rule_off[point];
	r1 = cp->pt_rule_off[point + 1];
	if (r0 == r1)
		return;
	/* delays that ran out before this reading complete on the old value */
	for (uint32_t k = r0; k < r1; k++) {
		struct slot *s = &e->slots[dr->slot_base + cp->pt_rules[k]];
		if (s->deadline >= 0 && s->deadline <= mono_ms)
			slot_due(e, s, wall_ms, mono_ms);
	}
	value_store(&e->vals[dr->val_base + (uint32_t)cp->pt_val[point]], v);
	for (uint32_t k = r0; k < r1; k++) {
		uint32_t r = cp->pt_rules[k];
		struct slot *s = &e->slots[dr->slot_base + r];
		int c = rule_eval(&cp->rules[r], v, s->raw);
		if (c >= 0)
			slot_eval(e, s, c != 0, wall_ms, mono_ms);
	}
}

void alarm_on_device_state(struct alarm_engine *e, uint32_t dev, bool online, int64_t wall_ms,
			   int64_t mono_ms)
{
	struct slot *s;

	if (!e || dev >= e->cfg->n_devices)
		return;
	s = &e->slots[e->devs[dev].slot_base + e->devs[dev].cp->n_rules];
	if (s->deadline >= 0 && s->deadline <= mono_ms)
		slot_due(e, s, wall_ms, mono_ms);
	slot_eval(e, s, !online, wall_ms, mono_ms);
}

static void flood_end(struct alarm_engine *e, int64_t wall)
{
	e->flood = false;
	if (e->flood_fn)
		e->flood_fn(e->arg, false, e->flood_count, wall);
	for (size_t i = 0; i < e->n_slots; i++)
		catch_up(e, &e->slots[i], wall, "reported after the alarm flood");
	e->flood_count = 0;
}

void alarm_tick(struct alarm_engine *e, int64_t wall_ms, int64_t mono_ms)
{
	if (!e)
		return;
	while (e->heap_n && hkey(e, 0) <= mono_ms) {
		struct slot *s = &e->slots[e->heap[0]];
		slot_due(e, s, wall_ms, mono_ms);
		/* slot_due leaves no deadline <= mono_ms behind; this guards the loop */
		if (s->heap_pos != NOPOS && s->deadline <= mono_ms)
			heap_set(e, s, -1);
	}
	if (e->flood && flood_end_at(e) <= mono_ms)
		flood_end(e, wall_ms);
}

int64_t alarm_next_deadline(const struct alarm_engine *e)
{
	int64_t d = -1;

	if (!e)
		return -1;
	if (e->heap_n)
		d = hkey(e, 0);
	if (e->flood) {
		int64_t f = flood_end_at(e);
		if (d < 0 || f < d)
			d = f;
	}
	return d;
}

/* ---- operators ----------------------------------------------------------------- */

int alarm_ack(struct alarm_engine *e, const char *key, const char *by, int64_t wall_ms)
{
	const char *slash;
	char devid[128];
	struct slot *found = NULL;
	long dev;

	if (!e || !key)
		return -EINVAL;
	slash = strchr(key, '/');
	if (!slash || (size_t)(slash - key) >= sizeof(devid))
		return -ENOENT;
	memcpy(devid, key, (size_t)(slash - key));
	devid[slash - key] = '\0';
	dev = cfg_find_device(e->cfg, devid);
	if (dev < 0)
		return -ENOENT;
	const struct dev_rt *dr = &e->devs[dev];
	for (size_t k = 0; k <= dr->cp->n_rules && !found; k++) {
		struct slot *s = &e->slots[dr->slot_base + k];
		if (!strcmp(dr->cp->rules[k].name, slash + 1) ||
		    (s->state != ALARM_NORMAL && !strcmp(s->id, key)))
			found = s;
	}
	if (!found || found->state == ALARM_NORMAL)
		return -ENOENT;
	if (found->state == ALARM_ACTIVE_ACKED)
		return -EALREADY;
	if (found->state == ALARM_CLEARED_UNACKED || (slot_rule(e, found)->latch && !found->qual))
		found->state = ALARM_NORMAL;
	else
		found->state = ALARM_ACTIVE_ACKED;
	emit(e, found, "acknowledged", wall_ms, by, NULL, false);
	return 0;
}

int alarm_shelve(struct alarm_engine *e, uint32_t dev, bool shelve, const char *by, int64_t wall_ms)
{
	struct dev_rt *dr;

	if (!e)
		return -EINVAL;
	if (dev >= e->cfg->n_devices)
		return -ENOENT;
	dr = &e->devs[dev];
	if (dr->shelved == shelve)
		return -EALREADY;
	dr->shelved = shelve;
	for (size_t k = 0; k <= dr->cp->n_rules; k++) {
		struct slot *s = &e->slots[dr->slot_base + k];
		if (s->state != ALARM_NORMAL && !dr->cp->rules[k].critical_fire)
			emit(e, s, shelve ? "shelved" : "unshelved", wall_ms, by, NULL, false);
	}
	return 0;
}

bool alarm_device_shelved(const struct alarm_engine *e, uint32_t dev)
{
	return e && dev < e->cfg->n_devices && e->devs[dev].shelved;
}

bool alarm_flood_active(const struct alarm_engine *e)
{
	return e && e->flood;
}

/* ---- persistence ---------------------------------------------------------------- */

static int dev_cmp(const void *a, const void *b, void *arg)
{
	const struct cgw_config *cfg = arg;

	return strcmp(cfg->devices[*(const uint32_t *)a].id, cfg->devices[*(const uint32_t *)b].id);
}

static long find_dev_sorted(const struct cgw_config *cfg, const uint32_t *idx, const char *id)
{
	size_t lo = 0, hi = cfg->n_devices;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(cfg->devices[idx[mid]].id, id);
		if (!c)
			return idx[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

int alarm_restore(struct alarm_engine *e, const struct alarm_record *r, size_t n, bool *kept)
{
	uint32_t *idx;
	int taken = 0;

	if (!e || (n && !r))
		return -EINVAL;
	idx = malloc((e->cfg->n_devices + 1) * sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	for (size_t i = 0; i < e->cfg->n_devices; i++)
		idx[i] = (uint32_t)i;
	qsort_r(idx, e->cfg->n_devices, sizeof(*idx), dev_cmp, (void *)e->cfg);
	for (size_t i = 0; i < n; i++) {
		const struct alarm_record *rec = &r[i];
		const struct cprofile *cp;
		struct slot *s = NULL;
		long dev;

		if (kept)
			kept[i] = false;
		if (!rec->alarm_id || !rec->device_id || !rec->rule ||
		    (rec->state != ALARM_ACTIVE_UNACKED && rec->state != ALARM_ACTIVE_ACKED &&
		     rec->state != ALARM_CLEARED_UNACKED))
			continue;
		dev = find_dev_sorted(e->cfg, idx, rec->device_id);
		if (dev < 0)
			continue;
		cp = e->devs[dev].cp;
		for (size_t k = 0; k <= cp->n_rules && !s; k++)
			if (!strcmp(cp->rules[k].name, rec->rule))
				s = &e->slots[e->devs[dev].slot_base + k];
		if (!s || s->state != ALARM_NORMAL || strlen(rec->alarm_id) >= s->id_cap)
			continue;
		memcpy(s->id, rec->alarm_id, strlen(rec->alarm_id) + 1);
		s->state = (uint8_t)rec->state;
		s->rep_state = s->state;
		s->seen = true;
		s->raised_at = rec->raised_at_ms;
		if (s->last_raised == INT64_MIN || rec->raised_at_ms > s->last_raised)
			s->last_raised = rec->raised_at_ms;
		s->qual = s->raw = rec->state != ALARM_CLEARED_UNACKED;
		s->pending = s->excused = false;
		s->restored = true;
		reschedule(e, s);
		if (rec->shelved)
			e->devs[dev].shelved = true;
		if (kept)
			kept[i] = true;
		taken++;
	}
	free(idx);
	return taken;
}

/* ---- reload: carrying state over ------------------------------------------------ */

int alarm_adopt_device(struct alarm_engine *e, uint32_t to, const struct alarm_engine *old,
		       uint32_t from)
{
	const struct dev_rt *od, *nd;

	if (!e || !old || to >= e->cfg->n_devices || from >= old->cfg->n_devices)
		return -EINVAL;
	od = &old->devs[from];
	nd = &e->devs[to];
	if (od->cp->n_rules != nd->cp->n_rules || od->cp->n_unl != nd->cp->n_unl ||
	    od->cp->n_val != nd->cp->n_val ||
	    strcmp(old->cfg->devices[from].id, e->cfg->devices[to].id))
		return -EINVAL;
	for (size_t k = 0; k <= nd->cp->n_rules; k++) {
		const struct slot *os = &old->slots[od->slot_base + k];
		struct slot *s = &e->slots[nd->slot_base + k];

		if (strcmp(od->cp->rules[k].name, nd->cp->rules[k].name) ||
		    strlen(os->id) >= s->id_cap)
			return -EINVAL;
	}
	for (size_t k = 0; k <= nd->cp->n_rules; k++) {
		const struct slot *os = &old->slots[od->slot_base + k];
		struct slot *s = &e->slots[nd->slot_base + k];

		memcpy(s->id, os->id, strlen(os->id) + 1);
		s->raised_at = os->raised_at;
		s->last_raised = os->last_raised;
		s->t_change = os->t_change;
		s->chatter_last = os->chatter_last;
		memcpy(s->toggles, os->toggles, sizeof(s->toggles));
		s->chatter_count = os->chatter_count;
		s->n_tog = os->n_tog;
		s->tog_head = os->tog_head;
		s->state = os->state;
		s->rep_state = os->rep_state;
		s->raw = os->raw;
		s->qual = os->qual;
		s->pending = os->pending;
		s->excused = os->excused;
		s->restored = os->restored;
		s->seen = os->seen;
		s->chattering = os->chattering;
		heap_set(e, s, os->deadline);
	}
	memcpy(&e->unl[nd->unl_base], &old->unl[od->unl_base], nd->cp->n_unl * sizeof(*e->unl));
	for (size_t i = 0; i < nd->cp->n_val; i++) {
		const struct val_slot *ov = &old->vals[od->val_base + i];
		struct val_slot *v = &e->vals[nd->val_base + i];

		cgw_value_clear(&v->v);
		v->valid = ov->valid && cgw_value_copy(&v->v, &ov->v) == 0;
	}
	e->devs[to].shelved = od->shelved;
	return 0;
}

void alarm_adopt_flood(struct alarm_engine *e, const struct alarm_engine *old)
{
	if (!e || !old)
		return;
	memcpy(e->flood_ring, old->flood_ring, sizeof(e->flood_ring));
	e->flood_n = old->flood_n;
	e->flood_head = old->flood_head;
	e->flood_count = old->flood_count;
	e->flood = old->flood;
}

int alarm_retire(struct alarm_engine *e, uint32_t dev, const char *rule_name, const char *note,
		 int64_t wall_ms)
{
	const struct dev_rt *dr;
	int n = 0;

	if (!e || dev >= e->cfg->n_devices)
		return -EINVAL;
	dr = &e->devs[dev];
	for (size_t k = 0; k <= dr->cp->n_rules; k++) {
		struct slot *s = &e->slots[dr->slot_base + k];

		if (rule_name && strcmp(dr->cp->rules[k].name, rule_name))
			continue;
		heap_set(e, s, -1);
		s->pending = s->chattering = false;
		if (s->state == ALARM_NORMAL)
			continue;
		s->raw = s->qual = false;
		s->state = ALARM_NORMAL;
		/* what the platform never saw it need not see end */
		emit(e, s, "cleared", wall_ms, NULL, note, !s->seen);
		n++;
	}
	return n;
}

/* ---- queries -------------------------------------------------------------------- */

size_t alarm_active_count(const struct alarm_engine *e, int severity)
{
	size_t n = 0;

	if (!e)
		return 0;
	for (size_t i = 0; i < e->n_slots; i++) {
		const struct slot *s = &e->slots[i];
		if ((s->state == ALARM_ACTIVE_UNACKED || s->state == ALARM_ACTIVE_ACKED) &&
		    (severity < 0 || slot_rule(e, s)->severity == severity))
			n++;
	}
	return n;
}

void alarm_foreach(const struct alarm_engine *e,
		   void (*fn)(void *arg, const struct alarm_change *c), void *arg)
{
	char msg[ALARM_MESSAGE_MAX];
	struct alarm_change c;

	if (!e || !fn)
		return;
	for (size_t i = 0; i < e->n_slots; i++) {
		const struct slot *s = &e->slots[i];
		if (s->state == ALARM_NORMAL)
			continue;
		fill_change(e, s, &c, msg, sizeof(msg));
		c.ts_ms = s->raised_at;
		fn(arg, &c);
	}
}

static const char *const state_names[] = {"normal", "active-unacked", "active-acked",
					  "cleared-unacked"};

const char *alarm_state_name(enum alarm_state s)
{
	return (unsigned)s < 4 ? state_names[s] : "?";
}

int alarm_state_from_name(const char *name)
{
	for (int i = 0; name && i < 4; i++)
		if (!strcmp(name, state_names[i]))
			return i;
	return -1;
}
