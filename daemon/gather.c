#include "gather.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct acc {
	json_t *values, *quality;
	int64_t ts_ms;    /* the newest value's */
	int64_t first_ms; /* the oldest value's */
	int64_t deadline; /* monotonic */
	bool in_cycle, ended;
	size_t pos; /* index in g->order, valid while values != NULL */
};

struct gather {
	struct acc *a;
	size_t n;
	uint32_t *order; /* devices with something gathered, in start order */
	size_t n_order;
};

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
	for (size_t i = 0; g->a && i < g->n; i++) {
		json_decref(g->a[i].values);
		json_decref(g->a[i].quality);
	}
	free(g->a);
	free(g->order);
	free(g);
}

int gather_add(struct gather *g, uint32_t dev, const char *point, json_t *value,
	       const char *quality, int64_t ts_ms, bool in_cycle, int64_t mono_ms)
{
	struct acc *a;

	if (dev >= g->n || !point || !value) {
		json_decref(value);
		return -EINVAL;
	}
	a = &g->a[dev];
	if (!a->values) {
		a->values = json_object();
		if (!a->values) {
			json_decref(value);
			return -ENOMEM;
		}
		a->quality = NULL;
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
	if (json_object_set_new(a->values, point, value) < 0)
		return -ENOMEM;
	if (quality) {
		if (!a->quality)
			a->quality = json_object();
		if (a->quality)
			json_object_set_new(a->quality, point, json_string(quality));
	} else if (a->quality) {
		json_object_del(a->quality, point);
	}
	return 0;
}

bool gather_splits(const struct gather *g, uint32_t dev, int64_t ts_ms)
{
	const struct acc *a;

	if (dev >= g->n || !g->a[dev].values)
		return false;
	a = &g->a[dev];
	return !a->in_cycle && ts_ms - a->first_ms > GATHER_SPAN_MS;
}

void gather_end_cycle(struct gather *g, uint32_t dev)
{
	if (dev < g->n && g->a[dev].values)
		g->a[dev].ended = true;
}

bool gather_due(const struct gather *g, uint32_t dev, bool drain_end, int64_t mono_ms)
{
	const struct acc *a;

	if (dev >= g->n || !g->a[dev].values)
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

bool gather_take(struct gather *g, uint32_t dev, json_t **values, json_t **quality, int64_t *ts_ms)
{
	struct acc *a;

	if (dev >= g->n || !g->a[dev].values)
		return false;
	a = &g->a[dev];
	*values = a->values;
	*quality = a->quality && json_object_size(a->quality) ? a->quality : NULL;
	if (!*quality)
		json_decref(a->quality);
	*ts_ms = a->ts_ms;
	/* out of the order list: the last one takes its place */
	g->order[a->pos] = g->order[--g->n_order];
	g->a[g->order[a->pos]].pos = a->pos;
	memset(a, 0, sizeof(*a));
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
