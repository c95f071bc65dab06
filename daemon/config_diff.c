/*
 * config_diff.c - comparing two configurations object by object (see
 * config_diff.h).
 */
#include "config_diff.h"
#include "config_keys.h"

#include <string.h>
#include <sys/stat.h>

#if defined(__x86_64__) && defined(__linux__)
/* A new field must be compared below: update the comparison, then the size. */
_Static_assert(sizeof(struct cfg_point) == 400, "cfg_point changed: compare it");
_Static_assert(sizeof(struct cfg_unless) == 256, "cfg_unless changed: compare it");
_Static_assert(sizeof(struct cfg_alarm) == 360, "cfg_alarm changed: compare it");
_Static_assert(sizeof(struct cfg_profile) == 280, "cfg_profile changed: compare it");
_Static_assert(sizeof(struct cfg_bus) == 448, "cfg_bus changed: compare it");
_Static_assert(sizeof(struct cfg_device) == 352, "cfg_device changed: compare it");
_Static_assert(sizeof(struct cfg_uplink) == 368, "cfg_uplink changed: compare it");
#endif

static bool str_eq(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return !strcmp(a, b);
}

static bool dbl_eq(double a, double b)
{
	return !memcmp(&a, &b, sizeof(a));
}

static bool value_eq(const struct cgw_value *a, const struct cgw_value *b)
{
	if (a->type != b->type)
		return false;
	switch (a->type) {
	case CGW_V_NONE:
		return true;
	case CGW_V_BOOL:
		return a->b == b->b;
	case CGW_V_INT:
		return a->i == b->i;
	case CGW_V_UINT:
		return a->u == b->u;
	case CGW_V_DOUBLE:
		return dbl_eq(a->d, b->d);
	case CGW_V_STRING:
		return str_eq(a->s, b->s);
	}
	return false;
}

static bool point_eq(const struct cfg_point *a, const struct cfg_point *b)
{
	if (!str_eq(a->name, b->name) || a->mqtt != b->mqtt || a->table != b->table ||
	    a->address != b->address || a->type != b->type || a->str_len != b->str_len ||
	    a->order != b->order || !dbl_eq(a->scale, b->scale) || !dbl_eq(a->offset, b->offset) ||
	    a->bit != b->bit || !str_eq(a->topic, b->topic) || !str_eq(a->json, b->json) ||
	    a->event != b->event || a->rate_limit_ms != b->rate_limit_ms ||
	    a->n_enums != b->n_enums || !str_eq(a->unit, b->unit) || a->writable != b->writable ||
	    !dbl_eq(a->deadband, b->deadband) || a->report_every_ms != b->report_every_ms ||
	    a->n_invalid != b->n_invalid || a->has_range != b->has_range ||
	    !dbl_eq(a->range_min, b->range_min) || !dbl_eq(a->range_max, b->range_max) ||
	    a->poll_ms != b->poll_ms)
		return false;
	for (size_t i = 0; i < a->n_invalid; i++)
		if (!dbl_eq(a->invalid[i], b->invalid[i]))
			return false;
	for (size_t i = 0; i < a->n_enums; i++)
		if (a->enums[i].key != b->enums[i].key ||
		    !str_eq(a->enums[i].label, b->enums[i].label))
			return false;
	return true;
}

static bool unless_eq(const struct cfg_unless *a, const struct cfg_unless *b)
{
	return str_eq(a->point, b->point) && a->point_idx == b->point_idx &&
	       str_eq(a->operand_text, b->operand_text) && value_eq(&a->operand, &b->operand) &&
	       a->within_ms == b->within_ms;
}

static bool alarm_eq(const struct cfg_alarm *a, const struct cfg_alarm *b)
{
	if (!str_eq(a->name, b->name) || !str_eq(a->point, b->point) ||
	    a->point_idx != b->point_idx || a->op != b->op || !dbl_eq(a->threshold, b->threshold) ||
	    !value_eq(&a->operand, &b->operand) || !str_eq(a->operand_text, b->operand_text) ||
	    a->bit != b->bit || !dbl_eq(a->deadband, b->deadband) ||
	    a->on_delay_ms != b->on_delay_ms || a->off_delay_ms != b->off_delay_ms ||
	    a->poll_ms != b->poll_ms || a->severity != b->severity ||
	    !str_eq(a->message, b->message) || !str_eq(a->clear_message, b->clear_message) ||
	    a->latch != b->latch || a->n_unless != b->n_unless)
		return false;
	for (size_t i = 0; i < a->n_unless; i++)
		if (!unless_eq(&a->unless[i], &b->unless[i]))
			return false;
	return true;
}

bool cfg_profile_equal(const struct cfg_profile *a, const struct cfg_profile *b)
{
	if (!str_eq(a->name, b->name) || !str_eq(a->path, b->path) || a->class != b->class ||
	    !str_eq(a->description, b->description) || a->n_points != b->n_points ||
	    a->n_alarms != b->n_alarms || a->mqtt != b->mqtt)
		return false;
	for (size_t i = 0; i < a->n_points; i++)
		if (!point_eq(&a->points[i], &b->points[i]))
			return false;
	for (size_t i = 0; i < a->n_alarms; i++)
		if (!alarm_eq(&a->alarms[i], &b->alarms[i]))
			return false;
	return true;
}

bool cfg_device_equal(const struct cgw_config *ca, const struct cfg_device *a,
		      const struct cgw_config *cb, const struct cfg_device *b)
{
	if (!str_eq(a->id, b->id) || !str_eq(a->name, b->name) ||
	    !str_eq(a->profile_name, b->profile_name) || !str_eq(a->bus_name, b->bus_name) ||
	    a->unit != b->unit || a->poll_ms != b->poll_ms || a->timeout_ms != b->timeout_ms ||
	    a->retries != b->retries || a->offline_after != b->offline_after ||
	    a->max_gap != b->max_gap || a->max_registers != b->max_registers ||
	    a->address_base != b->address_base || !str_eq(a->topic, b->topic) ||
	    a->stale_after_ms != b->stale_after_ms || a->n_location != b->n_location)
		return false;
	for (size_t i = 0; i < a->n_location; i++)
		if (!str_eq(a->location[i].key, b->location[i].key) ||
		    !str_eq(a->location[i].value, b->location[i].value))
			return false;
	if (a->profile >= ca->n_profiles || b->profile >= cb->n_profiles)
		return false;
	return cfg_profile_equal(&ca->profiles[a->profile], &cb->profiles[b->profile]);
}

static bool strlist_eq(const struct cfg_strlist *a, const struct cfg_strlist *b)
{
	if (a->n != b->n)
		return false;
	for (size_t i = 0; i < a->n; i++)
		if (!str_eq(a->v[i], b->v[i]))
			return false;
	return true;
}

/* A type's options, key by key through its table (a new key is compared
 * without a line here), then what its check derived (the type's equal). */
static bool opts_eq(const struct cfg_bus_type *kind, const void *a, const void *b)
{
	for (size_t i = 0; i < kind->n_keys; i++) {
		const struct cfg_key *k = &kind->keys[i];
		const char *fa = (const char *)a + k->off, *fb = (const char *)b + k->off;
		bool eq = false;
		if (k->flags & KF_NOCMP)
			continue;
		switch (k->type) {
		case K_STR:
			eq = str_eq(*(char *const *)(const void *)fa,
				    *(char *const *)(const void *)fb);
			break;
		case K_INT:
		case K_DURATION:
		case K_SIZE:
			eq = *(const int64_t *)(const void *)fa ==
			     *(const int64_t *)(const void *)fb;
			break;
		case K_DOUBLE:
			eq = dbl_eq(*(const double *)(const void *)fa,
				    *(const double *)(const void *)fb);
			break;
		case K_BOOL:
			eq = *(const bool *)(const void *)fa == *(const bool *)(const void *)fb;
			break;
		case K_CHOICE:
			eq = *(const int *)(const void *)fa == *(const int *)(const void *)fb;
			break;
		case K_STRLIST:
			eq = strlist_eq((const struct cfg_strlist *)(const void *)fa,
					(const struct cfg_strlist *)(const void *)fb);
			break;
		case K_CUSTOM: /* only the type knows: its equal hook */
			eq = true;
			break;
		}
		if (!eq)
			return false;
	}
	return !kind->equal || kind->equal(a, b);
}

static bool bus_fields_eq(const struct cfg_bus *a, const struct cfg_bus *b)
{
	return str_eq(a->name, b->name) && a->kind == b->kind && a->n_devices == b->n_devices &&
	       (!a->kind || opts_eq(a->kind, a->opts, b->opts));
}

bool cfg_bus_equal(const struct cgw_config *ca, size_t a, const struct cgw_config *cb, size_t b)
{
	size_t i = 0, j = 0;

	if (a >= ca->n_buses || b >= cb->n_buses || !bus_fields_eq(&ca->buses[a], &cb->buses[b]) ||
	    !str_eq(ca->gateway.id, cb->gateway.id))
		return false;
	/* the same devices in the same order: the driver's plan is built from them */
	for (;;) {
		while (i < ca->n_devices && ca->devices[i].bus != a)
			i++;
		while (j < cb->n_devices && cb->devices[j].bus != b)
			j++;
		if (i == ca->n_devices || j == cb->n_devices)
			return i == ca->n_devices && j == cb->n_devices;
		if (!cfg_device_equal(ca, &ca->devices[i], cb, &cb->devices[j]))
			return false;
		i++;
		j++;
	}
}

bool cfg_uplink_equal(const struct cgw_config *ca, const struct cfg_uplink *a,
		      const struct cgw_config *cb, const struct cfg_uplink *b)
{
	return str_eq(ca->gateway.id, cb->gateway.id) &&
	       str_eq(ca->gateway.site, cb->gateway.site) && str_eq(a->name, b->name) &&
	       a->type == b->type && str_eq(a->url, b->url) && str_eq(a->client_id, b->client_id) &&
	       str_eq(a->username, b->username) && str_eq(a->password_file, b->password_file) &&
	       str_eq(a->ca_file, b->ca_file) && str_eq(a->cert_file, b->cert_file) &&
	       str_eq(a->key_file, b->key_file) && str_eq(a->topic_prefix, b->topic_prefix) &&
	       a->insecure == b->insecure && a->send_mask == b->send_mask &&
	       str_eq(a->hmac_secret_file, b->hmac_secret_file) &&
	       a->late_after_ms == b->late_after_ms && a->timeout_ms == b->timeout_ms &&
	       a->keepalive_ms == b->keepalive_ms && a->inflight == b->inflight &&
	       a->protocol == b->protocol && str_eq(a->host, b->host) && a->port == b->port &&
	       a->tls == b->tls;
}

bool cfg_store_differs(const struct cgw_config *a, const struct cgw_config *b)
{
	return !str_eq(a->gateway.state_dir, b->gateway.state_dir) ||
	       a->store.max_size != b->store.max_size || a->store.min_free != b->store.min_free ||
	       a->store.telemetry_retention_ms != b->store.telemetry_retention_ms ||
	       a->store.batch_delay_ms != b->store.batch_delay_ms || a->store.sync != b->store.sync;
}

static bool after(const struct timespec *t, const struct timespec *since)
{
	return t->tv_sec > since->tv_sec ||
	       (t->tv_sec == since->tv_sec && t->tv_nsec >= since->tv_nsec);
}

static bool file_changed_since(const char *path, const struct timespec *since)
{
	struct stat st;

	if (!path)
		return false;
	if (stat(path, &st) < 0)
		return true;
	return after(&st.st_mtim, since) || after(&st.st_ctim, since);
}

bool cfg_bus_files_changed_since(const struct cfg_bus *b, const struct timespec *since)
{
	if (!b->kind || !b->opts)
		return false;
	for (size_t i = 0; i < b->kind->n_keys; i++) {
		const struct cfg_key *k = &b->kind->keys[i];
		if (k->type == K_STR && (k->flags & (KF_SECRET | KF_FILE)) &&
		    file_changed_since(
			    *(char *const *)(const void *)((const char *)b->opts + k->off), since))
			return true;
	}
	return false;
}

bool cfg_uplink_files_changed_since(const struct cfg_uplink *u, const struct timespec *since)
{
	return file_changed_since(u->password_file, since) ||
	       file_changed_since(u->ca_file, since) || file_changed_since(u->cert_file, since) ||
	       file_changed_since(u->key_file, since) ||
	       file_changed_since(u->hmac_secret_file, since);
}
