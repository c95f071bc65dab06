#include "gather.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define INLINE_TEXT 40 /* a value's text up to this size needs no allocation */

/* Where a field's text lives: inline, or on the heap when longer. */
struct text {
	char inl[INLINE_TEXT];
	char *heap;
	bool on_heap; /* the text is in heap (kept for reuse), else in inl */
};

/* A message's fields and their texts (cap of each allocated). */
struct bufs {
	struct wire_field *f;
	struct text *t;
	size_t cap;
};

#define POOL_MAX 16 /* spare bufs kept for the next devices (no malloc per cycle) */

struct acc {
	struct bufs b; /* n used; only while something is gathered */
	size_t n;
	bool active;      /* something gathered */
	int64_t ts_ms;    /* the newest value's */
	int64_t first_ms; /* the oldest value's */
	int64_t deadline; /* monotonic */
	bool in_cycle, ended;
	size_t pos; /* index in g->order, valid while active */
};

struct gather {
	struct acc *a;
	size_t n;
	uint32_t *order; /* devices with something gathered, in start order */
	size_t n_order;
	struct bufs last; /* the last gather_take()'s: valid until the next one */
	struct bufs pool[POOL_MAX];
	size_t n_pool;
};

static void bufs_free(struct bufs *b)
{
	for (size_t k = 0; b->t && k < b->cap; k++)
		free(b->t[k].heap);
	free(b->f);
	free(b->t);
	memset(b, 0, sizeof(*b));
}

/* Gives b back: kept for another device, or freed. */
static void bufs_put(struct gather *g, struct bufs *b)
{
	if (!b->f && !b->t)
		return;
	if (g->n_pool < POOL_MAX)
		g->pool[g->n_pool++] = *b;
	else
		bufs_free(b);
	memset(b, 0, sizeof(*b));
}

int gather_new(size_t n_devices, struct gather **out)
{
	struct gather *g = calloc(1, sizeof(*g));

	*out = NULL;
	if (!g)
		return -ENOMEM;
	g->n = n_devices;
	g->a = calloc(n_devices ? n_devices : 1, sizeof(*g->a));
	g->order = calloc(n_devices ? n_devices : 1, sizeof(*g->order));
	if (!g->a || !g->order) {
		gather_free(g);
		return -ENOMEM;
	}
	*out = g;
	return 0;
}

void gather_free(struct gather *g)
{
	if (!g)
		return;
	for (size_t i = 0; g->a && i < g->n; i++)
		bufs_free(&g->a[i].b);
	bufs_free(&g->last);
	for (size_t i = 0; i < g->n_pool; i++)
		bufs_free(&g->pool[i]);
	free(g->a);
	free(g->order);
	free(g);
}

/* The field of `point` in a, added at the end if new. */
static struct wire_field *field(struct acc *a, const char *point, size_t *k)
{
	struct bufs *b = &a->b;

	for (size_t i = 0; i < a->n; i++) {
		if (b->f[i].name == point || strcmp(b->f[i].name, point) == 0) {
			*k = i;
			return &b->f[i];
		}
	}
	if (a->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 8;
		struct wire_field *f = realloc(b->f, cap * sizeof(*f));
		if (!f)
			return NULL;
		b->f = f;
		struct text *t = realloc(b->t, cap * sizeof(*t));
		if (!t)
			return NULL;
		memset(t + b->cap, 0, (cap - b->cap) * sizeof(*t));
		b->t = t;
		b->cap = cap;
	}
	*k = a->n;
	b->f[a->n] = (struct wire_field){.name = point};
	return &b->f[a->n++];
}

int gather_add(struct gather *g, uint32_t dev, const char *point, const char *json,
	       const char *quality, int64_t ts_ms, bool in_cycle, int64_t mono_ms)
{
	struct acc *a;
	struct wire_field *f;
	struct text *t;
	size_t k, len;

	if (dev >= g->n || !point || !json)
		return -EINVAL;
	a = &g->a[dev];
	if (!a->active) {
		a->active = true;
		a->n = 0;
		if (!a->b.f && !a->b.t && g->n_pool) /* the arrays of a device sent earlier */
			a->b = g->pool[--g->n_pool];
		a->ts_ms = ts_ms;
		a->first_ms = ts_ms;
		a->deadline = mono_ms + GATHER_MAX_MS;
		a->in_cycle = in_cycle;
		a->ended = false;
		a->pos = g->n_order;
		g->order[g->n_order++] = dev;
	}
	/* a reading without a cycle joining a cycle's (or the reverse) makes
	 * the message wait for the cycle's end: never longer than the deadline */
	a->in_cycle = a->in_cycle || in_cycle;
	if (ts_ms > a->ts_ms)
		a->ts_ms = ts_ms; /* latest wins, and says when */
	if (ts_ms < a->first_ms)
		a->first_ms = ts_ms;
	f = field(a, point, &k);
	if (!f)
		return -ENOMEM;
	t = &a->b.t[k];
	len = strlen(json);
	/* f->json is set by gather_take(): the arrays may move until then */
	if (len < sizeof(t->inl)) {
		memcpy(t->inl, json, len + 1);
		t->on_heap = false;
	} else {
		char *h = realloc(t->heap, len + 1);
		if (!h) {
			memcpy(t->inl, "null", 5);
			t->on_heap = false;
			return -ENOMEM;
		}
		memcpy(h, json, len + 1);
		t->heap = h;
		t->on_heap = true;
	}
	f->quality = quality; /* a good value clears the point's bad quality */
	return 0;
}

bool gather_splits(const struct gather *g, uint32_t dev, int64_t ts_ms)
{
	const struct acc *a;

	if (dev >= g->n || !g->a[dev].active)
		return false;
	a = &g->a[dev];
	return !a->in_cycle && ts_ms - a->first_ms > GATHER_SPAN_MS;
}

void gather_end_cycle(struct gather *g, uint32_t dev)
{
	if (dev < g->n && g->a[dev].active)
		g->a[dev].ended = true;
}

bool gather_due(const struct gather *g, uint32_t dev, bool drain_end, int64_t mono_ms)
{
	const struct acc *a;

	if (dev >= g->n || !g->a[dev].active)
		return false;
	a = &g->a[dev];
	return a->ended || (!a->in_cycle && drain_end) || mono_ms >= a->deadline;
}

size_t gather_pending(const struct gather *g, uint32_t *devs, size_t max)
{
	for (size_t i = 0; i < g->n_order && i < max; i++)
		devs[i] = g->order[i];
	return g->n_order;
}

bool gather_take(struct gather *g, uint32_t dev, const struct wire_field **fields, size_t *n,
		 int64_t *ts_ms)
{
	struct acc *a;

	if (dev >= g->n || !g->a[dev].active)
		return false;
	a = &g->a[dev];
	for (size_t i = 0; i < a->n; i++)
		a->b.f[i].json = a->b.t[i].on_heap ? a->b.t[i].heap : a->b.t[i].inl;
	/* the arrays go with the message: memory is held only while a device
	 * has something gathered, plus a few spares */
	bufs_put(g, &g->last);
	g->last = a->b;
	memset(&a->b, 0, sizeof(a->b));
	*fields = g->last.f;
	*n = a->n;
	*ts_ms = a->ts_ms;
	/* out of the order list: the last one takes its place */
	g->order[a->pos] = g->order[--g->n_order];
	g->a[g->order[a->pos]].pos = a->pos;
	a->active = false;
	return true;
}

int64_t gather_next_deadline(const struct gather *g)
{
	int64_t best = -1;

	for (size_t i = 0; i < g->n_order; i++) {
		const struct acc *a = &g->a[g->order[i]];
		if (a->ended || !a->in_cycle)
			continue;
		if (best < 0 || a->deadline < best)
			best = a->deadline;
	}
	return best;
}
