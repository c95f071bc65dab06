/* latest.c - see latest.h */
#include "latest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 256 /* entries per allocation: entries never move */

struct latest {
	size_t max;
	/* entries, in chunks of CHUNK */
	struct latest_entry **chunks;
	size_t n_chunks, n;
	size_t dirty;
	/* open addressing over entries: slot = entry index + 1, 0 empty; a
	 * probe compares the entry's hash first, its strings only on a match */
	uint32_t *slots;
	size_t n_slots; /* a power of two, at least twice n */
	/* interned strings: slot = pointer or NULL */
	char **names;
	size_t n_names, names_slots;
};

static uint32_t hash_str(uint32_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static uint32_t hash_key(const char *device, const char *point)
{
	return hash_str(hash_str(2166136261u, device) * 16777619u, point);
}

static struct latest_entry *entry_at(const struct latest *m, size_t i)
{
	return &m->chunks[i / CHUNK][i % CHUNK];
}

int latest_new(size_t max_entries, struct latest **out)
{
	struct latest *m;

	*out = NULL;
	if (!max_entries)
		return -EINVAL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->max = max_entries;
	*out = m;
	return 0;
}

void latest_free(struct latest *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n; i++)
		cgw_value_clear(&entry_at(m, i)->value);
	for (size_t c = 0; c < m->n_chunks; c++)
		free(m->chunks[c]);
	free(m->chunks);
	free(m->slots);
	for (size_t i = 0; i < m->names_slots; i++)
		free(m->names[i]);
	free(m->names);
	free(m);
}

/* ---- interned names ----------------------------------------------------- */

static int names_grow(struct latest *m)
{
	size_t ns = m->names_slots ? m->names_slots * 2 : 64;
	char **t = calloc(ns, sizeof(*t));

	if (!t)
		return -ENOMEM;
	for (size_t i = 0; i < m->names_slots; i++) {
		if (!m->names[i])
			continue;
		size_t j = hash_str(2166136261u, m->names[i]) & (ns - 1);
		while (t[j])
			j = (j + 1) & (ns - 1);
		t[j] = m->names[i];
	}
	free(m->names);
	m->names = t;
	m->names_slots = ns;
	return 0;
}

static const char *intern(struct latest *m, const char *s)
{
	if ((m->n_names + 1) * 2 > m->names_slots && names_grow(m) < 0)
		return NULL;
	size_t j = hash_str(2166136261u, s) & (m->names_slots - 1);
	while (m->names[j]) {
		if (strcmp(m->names[j], s) == 0)
			return m->names[j];
		j = (j + 1) & (m->names_slots - 1);
	}
	m->names[j] = strdup(s);
	if (!m->names[j])
		return NULL;
	m->n_names++;
	return m->names[j];
}

/* ---- entries ------------------------------------------------------------ */

static size_t find_slot(const struct latest *m, uint32_t h, const char *device, const char *point)
{
	size_t j = h & (m->n_slots - 1);

	while (m->slots[j]) {
		const struct latest_entry *e = entry_at(m, m->slots[j] - 1);
		if (e->hash == h && strcmp(e->device, device) == 0 && strcmp(e->point, point) == 0)
			return j;
		j = (j + 1) & (m->n_slots - 1);
	}
	return j;
}

static int slots_grow(struct latest *m)
{
	size_t ns = m->n_slots ? m->n_slots * 2 : 256;
	uint32_t *t = calloc(ns, sizeof(*t));

	if (!t)
		return -ENOMEM;
	for (size_t i = 0; i < m->n; i++) {
		size_t j = entry_at(m, i)->hash & (ns - 1);
		while (t[j])
			j = (j + 1) & (ns - 1);
		t[j] = (uint32_t)(i + 1);
	}
	free(m->slots);
	m->slots = t;
	m->n_slots = ns;
	return 0;
}

const struct latest_entry *latest_get(const struct latest *m, const char *device, const char *point)
{
	if (!m || !m->n || !device || !point)
		return NULL;
	size_t j = find_slot(m, hash_key(device, point), device, point);
	return m->slots[j] ? entry_at(m, m->slots[j] - 1) : NULL;
}

static struct latest_entry *add_entry(struct latest *m, const char *device, const char *point)
{
	struct latest_entry *e;

	if (m->n >= m->max || m->n >= UINT32_MAX - 1) {
		errno = ENOSPC;
		return NULL;
	}
	errno = ENOMEM;
	if ((m->n + 1) * 2 > m->n_slots && slots_grow(m) < 0)
		return NULL;
	if (m->n == m->n_chunks * CHUNK) {
		struct latest_entry **c = realloc(m->chunks, (m->n_chunks + 1) * sizeof(*c));
		if (!c)
			return NULL;
		m->chunks = c;
		m->chunks[m->n_chunks] = calloc(CHUNK, sizeof(struct latest_entry));
		if (!m->chunks[m->n_chunks])
			return NULL;
		m->n_chunks++;
	}
	const char *dn = intern(m, device), *pn = intern(m, point);
	if (!dn || !pn)
		return NULL;
	e = entry_at(m, m->n);
	memset(e, 0, sizeof(*e));
	e->device = dn;
	e->point = pn;
	e->value.type = CGW_V_NONE;
	e->hash = hash_key(device, point);
	size_t j = find_slot(m, e->hash, device, point);
	m->slots[j] = (uint32_t)(++m->n);
	return e;
}

int latest_set(struct latest *m, const char *device, const char *point, const struct cgw_value *v,
	       enum cgw_quality q, int64_t ts_ms, bool dirty)
{
	struct latest_entry *e;
	struct cgw_value copy;

	if (!m || !device || !point || !v)
		return -EINVAL;
	if (cgw_value_copy(&copy, v) < 0)
		return -ENOMEM;
	e = (struct latest_entry *)latest_get(m, device, point);
	if (!e) {
		e = add_entry(m, device, point);
		if (!e) {
			cgw_value_clear(&copy);
			return errno == ENOSPC ? -ENOSPC : -ENOMEM;
		}
	}
	cgw_value_clear(&e->value);
	e->value = copy;
	e->quality = (uint8_t)q;
	e->ts_ms = ts_ms;
	if (dirty && !e->dirty)
		m->dirty++;
	else if (!dirty && e->dirty)
		m->dirty--;
	e->dirty = dirty;
	return 0;
}

void latest_written(struct latest *m, const struct latest_entry *e)
{
	struct latest_entry *w = (struct latest_entry *)e;

	if (m && w && w->dirty) {
		w->dirty = false;
		m->dirty--;
	}
}

void latest_redirty(struct latest *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n; i++)
		entry_at(m, i)->dirty = true;
	m->dirty = m->n;
}

size_t latest_count(const struct latest *m)
{
	return m ? m->n : 0;
}

size_t latest_dirty_count(const struct latest *m)
{
	return m ? m->dirty : 0;
}

static int by_key(const void *a, const void *b)
{
	const struct latest_entry *x = *(const struct latest_entry *const *)a;
	const struct latest_entry *y = *(const struct latest_entry *const *)b;
	int c = x->device == y->device ? 0 : strcmp(x->device, y->device);
	return c ? c : x->point == y->point ? 0 : strcmp(x->point, y->point);
}

int latest_collect(const struct latest *m, const char *device, bool dirty_only,
		   const struct latest_entry ***out, size_t *n)
{
	const struct latest_entry **v;
	size_t k = 0;

	*out = NULL;
	*n = 0;
	if (!m || !m->n)
		return 0;
	v = malloc(m->n * sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < m->n; i++) {
		const struct latest_entry *e = entry_at(m, i);
		if ((dirty_only && !e->dirty) || (device && strcmp(e->device, device) != 0))
			continue;
		v[k++] = e;
	}
	qsort(v, k, sizeof(*v), by_key);
	*out = v;
	*n = k;
	return 0;
}
