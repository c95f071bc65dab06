/*
 * config.c - YAML (libfyaml) to struct cgw_config, with FILE:LINE errors.
 *
 * Every section is described by a table of keys (name, type, default, help);
 * one generic walker applies the table to a YAML mapping, so unknown keys,
 * wrong types and missing required keys are reported the same way
 * everywhere. Cross-references (device -> bus, device -> profile,
 * alarm -> point) are resolved after every file is read, using the key lines
 * recorded in each object's struct cfg_obj.
 */
#include "config.h"
#include "config_keys.h"
#include "secret.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <libfyaml.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mosquitto.h>

#include "json_path.h"
#include "metrics.h"
#include "modbus_decode.h"
#include "wire.h"

#ifndef CGW_DATADIR
#define CGW_DATADIR "/usr/local/share/cgw"
#endif

#define MAX_ERRORS 200
#define MAX_INCLUDE_DEPTH 8
#define MAX_FILE_SIZE (4 << 20)

struct keytab {
	const char *what; /* "device", "bus", ... for messages */
	const struct cfg_key *keys;
	size_t n;
};

/* A key of another type of bus given to a bus: said when the bus is checked. */
struct bus_stray {
	size_t bus;
	const char *key; /* the other type's table's */
	int line;
};

struct cfg_loader {
	struct cgw_config *cfg;
	struct cfg_errors *errs;
	const char *file;     /* current file (interned) */
	const char *base_dir; /* directory of the current file, for relative paths */
	int depth;
	/* which singleton sections were set, and where */
	struct cfg_obj *seen_gateway, *seen_store, *seen_control, *seen_metrics, *seen_console;
	bool yaml_failed;         /* a file did not parse: what it held is unknown */
	struct bus_stray *strays; /* keys of another type of bus, for its check */
	size_t n_strays;
};

/* ---- errors ------------------------------------------------------------ */

static void err_vat(struct cfg_loader *ld, const char *file, int line, int col, const char *fmt,
		    va_list ap) __attribute__((format(printf, 5, 0)));

/* "FILE:LINE: message", or "FILE:LINE:COL: message" when col > 0. */
static void err_vat(struct cfg_loader *ld, const char *file, int line, int col, const char *fmt,
		    va_list ap)
{
	struct cfg_errors *e = ld->errs;
	char msg[768], pos[24] = "", *s;

	if (e->n >= MAX_ERRORS)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (e->n == MAX_ERRORS - 1)
		snprintf(msg, sizeof(msg), "too many errors, giving up");
	if (col > 0)
		snprintf(pos, sizeof(pos), ":%d", col);
	if (asprintf(&s, "%s:%d%s: %s", file ? file : "?", line, pos, msg) < 0)
		return;
	char **nv = realloc(e->v, (e->n + 1) * sizeof(*nv));
	if (!nv) {
		free(s);
		return;
	}
	e->v = nv;
	e->v[e->n++] = s;
}

static void err_at(struct cfg_loader *ld, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void err_at(struct cfg_loader *ld, const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	err_vat(ld, file, line, 0, fmt, ap);
	va_end(ap);
}

static void err_at_col(struct cfg_loader *ld, const char *file, int line, int col, const char *fmt,
		       ...) __attribute__((format(printf, 5, 6)));

static void err_at_col(struct cfg_loader *ld, const char *file, int line, int col, const char *fmt,
		       ...)
{
	va_list ap;

	va_start(ap, fmt);
	err_vat(ld, file, line, col, fmt, ap);
	va_end(ap);
}

static int strlist_push(struct cfg_strlist *l, char *s);

/* A warning: the configuration loads, but something is probably a mistake.
 * "FILE:LINE: warning: message" in cfg->warnings (check-config prints them,
 * the daemon logs them). */
static void warn_at(struct cfg_loader *ld, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void warn_at(struct cfg_loader *ld, const char *file, int line, const char *fmt, ...)
{
	char msg[512], *s;
	va_list ap;

	if (ld->cfg->warnings.n >= MAX_ERRORS)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (asprintf(&s, "%s:%d: warning: %s", file ? file : "?", line, msg) < 0)
		return;
	if (strlist_push(&ld->cfg->warnings, s) < 0)
		free(s);
}

void cfg_errors_free(struct cfg_errors *errs)
{
	if (!errs)
		return;
	for (size_t i = 0; i < errs->n; i++)
		free(errs->v[i]);
	free(errs->v);
	errs->v = NULL;
	errs->n = 0;
}

static int node_line(struct fy_node *n)
{
	if (!n)
		return 0;
	if (fy_node_is_scalar(n) || fy_node_is_alias(n)) {
		struct fy_token *t = fy_node_get_scalar_token(n);
		const struct fy_mark *m = t ? fy_token_start_mark(t) : NULL;
		return m ? m->line + 1 : 0;
	}
	if (fy_node_is_mapping(n)) {
		void *it = NULL;
		struct fy_node_pair *p = fy_node_mapping_iterate(n, &it);
		return p ? node_line(fy_node_pair_key(p)) : 0;
	}
	if (fy_node_is_sequence(n)) {
		void *it = NULL;
		return node_line(fy_node_sequence_iterate(n, &it));
	}
	return 0;
}

static void err_node(struct cfg_loader *ld, struct fy_node *n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void err_node(struct cfg_loader *ld, struct fy_node *n, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	err_at(ld, ld->file, node_line(n), "%s", msg);
}

/* ---- small parsers ------------------------------------------------------ */

/* A scalar's text, NUL-terminated in a caller buffer; NULL if not a scalar. */
static const char *scalar(struct fy_node *n, char *buf, size_t cap)
{
	size_t len;
	const char *s;

	if (!n || !fy_node_is_scalar(n))
		return NULL;
	s = fy_node_get_scalar(n, &len);
	if (!s)
		return NULL;
	if (len >= cap)
		len = cap - 1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	return buf;
}

static char *scalar_dup(struct fy_node *n)
{
	size_t len;
	const char *s;

	if (!n || !fy_node_is_scalar(n))
		return NULL;
	s = fy_node_get_scalar(n, &len);
	return s ? strndup(s, len) : NULL;
}

static int parse_i64(const char *s, int64_t *out)
{
	char *end;
	int base = 10;

	if (!*s)
		return -EINVAL;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		base = 16;
	errno = 0;
	long long v = strtoll(s, &end, base);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_double(const char *s, double *out)
{
	char *end;

	if (!*s)
		return -EINVAL;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || *end || !isfinite(v))
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_bool(const char *s, bool *out)
{
	if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
		*out = true;
		return 0;
	}
	if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) {
		*out = false;
		return 0;
	}
	return -EINVAL;
}

int cfg_parse_duration(const char *s, int64_t *ms)
{
	static const struct {
		const char *u;
		int64_t mul;
	} units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
	char *end;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s)
		return -EINVAL;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(end, units[i].u) == 0) {
			double r = v * (double)units[i].mul;
			if (r > (double)INT64_MAX / 2)
				return -ERANGE;
			*ms = (int64_t)llround(r);
			return 0;
		}
	}
	return -EINVAL;
}

int cfg_parse_size(const char *s, int64_t *bytes)
{
	static const struct {
		const char *u;
		int64_t mul;
	} units[] = {{"", 1},           {"B", 1},           {"KB", 1024},      {"KiB", 1024},
		     {"MB", 1 << 20},   {"MiB", 1 << 20},   {"GB", 1LL << 30}, {"GiB", 1LL << 30},
		     {"TB", 1LL << 40}, {"TiB", 1LL << 40}, {"k", 1024},       {"K", 1024},
		     {"M", 1 << 20},    {"G", 1LL << 30}};
	char *end;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s)
		return -EINVAL;
	if (strcmp(end, "%") == 0) {
		/* a share of the filesystem, resolved by its user: -percent */
		if (v <= 0 || v > 100 || v != (double)(int64_t)v)
			return -ERANGE;
		*bytes = -(int64_t)v;
		return 0;
	}
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(end, units[i].u) == 0) {
			double r = v * (double)units[i].mul;
			if (r > (double)INT64_MAX / 2)
				return -ERANGE;
			*bytes = (int64_t)llround(r);
			return 0;
		}
	}
	return -EINVAL;
}

/* Edit distance for "did you mean" hints; names are short. */
static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	size_t row[64];

	if (la >= 63 || lb >= 63)
		return 99;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t prev = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t cur = row[j];
			size_t sub = prev + (a[i - 1] != b[j - 1]);
			size_t del = row[j] + 1, ins = row[j - 1] + 1;
			row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
			prev = cur;
		}
	}
	return row[lb];
}

static const struct cfg_key *key_find(const struct keytab *t, const char *name, size_t *idx)
{
	for (size_t i = 0; i < t->n; i++) {
		if (strcmp(t->keys[i].name, name) == 0) {
			*idx = i;
			return &t->keys[i];
		}
	}
	return NULL;
}

static const char *key_suggest(const struct keytab *t, const char *name)
{
	const char *best = NULL;
	size_t bestd = 3;

	for (size_t i = 0; i < t->n; i++) {
		size_t d = edit_distance(name, t->keys[i].name);
		if (d < bestd) {
			bestd = d;
			best = t->keys[i].name;
		}
	}
	return best;
}

static int choice_index(const char *const *choices, const char *s)
{
	for (int i = 0; choices[i]; i++)
		if (strcmp(choices[i], s) == 0)
			return i;
	return -1;
}

static void choices_join(const char *const *choices, char *buf, size_t cap)
{
	size_t len = 0;

	buf[0] = '\0';
	for (int i = 0; choices[i] && len < cap; i++)
		len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", choices[i]);
}

static const char *ktype_name(enum ktype t)
{
	switch (t) {
	case K_STR:
		return "a string";
	case K_INT:
		return "an integer";
	case K_DOUBLE:
		return "a number";
	case K_BOOL:
		return "true or false";
	case K_DURATION:
		return "a duration like 500ms, 5s, 2m, 1h, 7d";
	case K_SIZE:
		return "a size like 64MB";
	case K_CHOICE:
		return "one of the listed words";
	case K_STRLIST:
		return "a list of strings";
	case K_CUSTOM:
		return "a value";
	}
	return "?";
}

static void strlist_free(struct cfg_strlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

static int strlist_push(struct cfg_strlist *l, char *s)
{
	char **nv = realloc(l->v, (l->n + 1) * sizeof(*nv));
	if (!nv) {
		free(s);
		return -ENOMEM;
	}
	l->v = nv;
	l->v[l->n++] = s;
	return 0;
}

/* Apply one scalar text to a field. Returns 0, or -EINVAL with an error
 * reported at `at`. `fromdef` marks the table's own defaults (bugs). */
static int set_field(struct cfg_loader *ld, const struct cfg_key *k, void *obj, const char *text,
		     struct fy_node *at)
{
	char *field = (char *)obj + k->off;
	char list[256];
	int64_t i;
	double d;
	bool b;
	int r;

	switch (k->type) {
	case K_STR: {
		char **p = (char **)(void *)field;
		free(*p);
		*p = strdup(text);
		return *p ? 0 : -ENOMEM;
	}
	case K_INT:
		if (parse_i64(text, &i) < 0) {
			err_node(ld, at, "%s: expected an integer, got '%s'", k->name, text);
			return -EINVAL;
		}
		goto range;
	case K_DURATION:
		r = cfg_parse_duration(text, &i);
		if (r < 0) {
			err_node(ld, at,
				 "%s: expected a duration like 500ms, 5s, 2m, 1h or 7d, got '%s'",
				 k->name, text);
			return -EINVAL;
		}
		goto range;
	case K_SIZE:
		r = cfg_parse_size(text, &i);
		if (r < 0) {
			err_node(ld, at, "%s: expected a size like 512KB, 64MB or 2GB, got '%s'",
				 k->name, text);
			return -EINVAL;
		}
		goto range;
	case K_DOUBLE:
		if (parse_double(text, &d) < 0) {
			err_node(ld, at, "%s: expected a number, got '%s'", k->name, text);
			return -EINVAL;
		}
		*(double *)(void *)field = d;
		return 0;
	case K_BOOL:
		if (parse_bool(text, &b) < 0) {
			err_node(ld, at, "%s: expected true or false, got '%s'", k->name, text);
			return -EINVAL;
		}
		*(bool *)(void *)field = b;
		return 0;
	case K_CHOICE:
		r = choice_index(k->choices, text);
		if (r < 0) {
			choices_join(k->choices, list, sizeof(list));
			err_node(ld, at, "%s: '%s' is not one of: %s", k->name, text, list);
			return -EINVAL;
		}
		*(int *)(void *)field = r;
		return 0;
	case K_STRLIST: {
		struct cfg_strlist *l = (struct cfg_strlist *)(void *)field;
		char *s = strdup(text);
		return s ? strlist_push(l, s) : -ENOMEM;
	}
	case K_CUSTOM:
		return 0;
	}
	return -EINVAL;
range:
	if ((k->min || k->max) && (i < k->min || i > k->max)) {
		if (k->type == K_INT)
			err_node(ld, at, "%s: %lld is out of range (%lld..%lld)", k->name,
				 (long long)i, (long long)k->min, (long long)k->max);
		else
			err_node(ld, at, "%s: '%s' is out of range", k->name, text);
		return -EINVAL;
	}
	*(int64_t *)(void *)field = i;
	return 0;
}

static void apply_defaults(struct cfg_loader *ld, const struct keytab *t, void *obj)
{
	for (size_t i = 0; i < t->n; i++) {
		const struct cfg_key *k = &t->keys[i];
		if (k->def && k->type != K_CUSTOM)
			set_field(ld, k, obj, k->def, NULL);
	}
}

/* Apply one key's value (vn, under key node kn) to obj. Errors found. */
static int apply_key(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *kn,
		     struct fy_node *vn, void *obj)
{
	char vbuf[4096];
	int nerr = 0;

	if (k->type == K_CUSTOM)
		return k->custom(ld, k, vn, obj) < 0;
	if (k->type == K_STRLIST) {
		struct cfg_strlist *l = (struct cfg_strlist *)(void *)((char *)obj + k->off);
		strlist_free(l);
		if (vn && fy_node_is_sequence(vn)) {
			void *sit = NULL;
			struct fy_node *e;
			while ((e = fy_node_sequence_iterate(vn, &sit))) {
				const char *s = scalar(e, vbuf, sizeof(vbuf));
				if (!s) {
					err_node(ld, e, "%s: expected a list of strings", k->name);
					nerr++;
					continue;
				}
				set_field(ld, k, obj, s, e);
			}
			return nerr;
		}
		/* a single string is a list of one */
	}
	if (!vn || fy_node_is_null(vn)) {
		err_node(ld, kn, "%s: missing value (expected %s)", k->name, ktype_name(k->type));
		return 1;
	}
	const char *v = scalar(vn, vbuf, sizeof(vbuf));
	if (!v) {
		err_node(ld, vn, "%s: expected %s, got a %s", k->name, ktype_name(k->type),
			 fy_node_is_mapping(vn) ? "mapping" : "list");
		return 1;
	}
	return set_field(ld, k, obj, v, vn) < 0;
}

static void err_unknown_key(struct cfg_loader *ld, struct fy_node *kn, const char *kname,
			    const char *what, const char *hint)
{
	if (hint)
		err_node(ld, kn, "unknown key '%s' in %s (did you mean '%s'?)", kname, what, hint);
	else
		err_node(ld, kn, "unknown key '%s' in %s", kname, what);
}

static int check_required(struct cfg_loader *ld, const struct keytab *t, const struct cfg_obj *o)
{
	int nerr = 0;

	for (size_t i = 0; i < t->n; i++) {
		if ((t->keys[i].flags & KF_REQUIRED) && !o->key_line[i]) {
			err_at(ld, ld->file, o->line, "%s: missing required key '%s'", t->what,
			       t->keys[i].name);
			nerr++;
		}
	}
	return nerr;
}

/* Walk a mapping against a key table. Returns the number of errors. */
static int parse_map(struct cfg_loader *ld, const struct keytab *t, struct fy_node *map, void *obj,
		     struct cfg_obj *o)
{
	char kbuf[128];
	void *it = NULL;
	struct fy_node_pair *p;
	int nerr = 0;

	o->file = ld->file;
	o->line = node_line(map);
	apply_defaults(ld, t, obj);
	if (!fy_node_is_mapping(map)) {
		err_node(ld, map, "%s: expected a mapping of keys", t->what);
		return 1;
	}
	while ((p = fy_node_mapping_iterate(map, &it))) {
		struct fy_node *kn = fy_node_pair_key(p), *vn = fy_node_pair_value(p);
		const char *kname = scalar(kn, kbuf, sizeof(kbuf));
		const struct cfg_key *k;
		size_t idx;

		if (!kname) {
			err_node(ld, kn, "%s: keys must be plain words", t->what);
			nerr++;
			continue;
		}
		k = key_find(t, kname, &idx);
		if (!k) {
			err_unknown_key(ld, kn, kname, t->what, key_suggest(t, kname));
			nerr++;
			continue;
		}
		o->key_line[idx] = node_line(kn);
		nerr += apply_key(ld, k, kn, vn, obj);
	}
	return nerr + check_required(ld, t, o);
}

static int key_line(const struct keytab *t, const struct cfg_obj *o, const char *name)
{
	size_t idx;

	if (!key_find(t, name, &idx))
		return o->line;
	return o->key_line[idx] ? o->key_line[idx] : o->line;
}

static bool key_given(const struct keytab *t, const struct cfg_obj *o, const char *name)
{
	size_t idx;
	return key_find(t, name, &idx) && o->key_line[idx];
}

/* Paths in the configuration are relative to the file that names them. */
static char *resolve_path(const char *base_dir, const char *p)
{
	char *r;

	if (p[0] == '/' || !base_dir || !*base_dir || strcmp(base_dir, ".") == 0)
		return strdup(p);
	if (asprintf(&r, "%s/%s", base_dir, p) < 0)
		return NULL;
	return r;
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (!slash)
		return strdup(".");
	if (slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

static const char *intern_file(struct cfg_loader *ld, const char *path)
{
	struct cfg_strlist *f = &ld->cfg->files;

	for (size_t i = 0; i < f->n; i++)
		if (strcmp(f->v[i], path) == 0)
			return f->v[i];
	char *s = strdup(path);
	if (!s || strlist_push(f, s) < 0)
		return NULL;
	return f->v[f->n - 1];
}

/* ---- tables -------------------------------------------------------------- */

#define OFF CFG_OFF

static const char *const uplink_types[] = {"mqtt", "http", NULL};
static const char *const classes[] = {"fire", "security", "access", "service", NULL};
static const char *const severities[] = {"critical", "major", "minor", "warning", NULL};
static const char *const tables[] = {"coil", "discrete", "input", "holding", NULL};
static const char *const orders[] = {"ABCD", "CDAB", "BADC", "DCBA", NULL};
static const char *const syncs[] = {"normal", "full", NULL};

const char *cfg_severity_name(int s)
{
	return s >= 0 && s < 4 ? severities[s] : "?";
}

const char *cfg_class_name(int c)
{
	return c >= 0 && c < 4 ? classes[c] : "?";
}

static int custom_location(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			   void *obj);
static int custom_send(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
		       void *obj);
static int custom_enum(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
		       void *obj);
static int custom_type(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
		       void *obj);
static int custom_invalid(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			  void *obj);
static int custom_range(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			void *obj);
static int custom_points(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			 void *obj);
static int custom_alarms(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			 void *obj);
static int custom_scalar_text(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			      void *obj);
static int custom_unless(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			 void *obj);
static int custom_unless_equals(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
				void *obj);

static const struct cfg_key gateway_keys[] = {
	{"id", K_STR, offsetof(struct cgw_config, gateway.id), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "unique gateway id; goes into every topic and message id"},
	{"site", K_STR, offsetof(struct cgw_config, gateway.site), NULL, KF_REQUIRED, 0, 0, NULL,
	 NULL, "community (site) id, used in topic prefixes"},
	{"state_dir", K_STR, offsetof(struct cgw_config, gateway.state_dir), "/var/lib/cgw", 0, 0,
	 0, NULL, NULL, "directory of the SQLite store (cgw.db)"},
};

static const struct cfg_key store_keys[] = {
	{"max_size", K_SIZE, offsetof(struct cgw_config, store.max_size), "50%", 0, 0, 0, NULL,
	 NULL,
	 "size cap of the store (database, WAL and its index), or a share of the filesystem "
	 "holding state_dir; telemetry is evicted oldest-first, then events; alarms never"},
	{"min_free", K_SIZE, offsetof(struct cgw_config, store.min_free), "1%", 0, 0, 0, NULL, NULL,
	 "free space the filesystem keeps (or a share of it); below it the store stops growing "
	 "and evicts as at its cap, before the disk is full"},
	{"telemetry_retention", K_DURATION,
	 offsetof(struct cgw_config, store.telemetry_retention_ms), "7d", 0, 0, 0, NULL, NULL,
	 "undelivered telemetry older than this is dropped"},
	{"sync", K_CHOICE, offsetof(struct cgw_config, store.sync), "normal", 0, 0, 0, syncs, NULL,
	 "normal (survives a crash of cgwd) or full (fsync every commit; survives power loss)"},
	{"batch_delay", K_DURATION, offsetof(struct cgw_config, store.batch_delay_ms), "50ms", 0, 1,
	 50, NULL, NULL,
	 "longest a reading waits for its batch commit (at most 50ms); alarms never wait"},
};

static const struct cfg_key control_keys[] = {
	{"socket", K_STR, offsetof(struct cgw_config, control.socket), "/run/cgw/cgwd.sock", 0, 0,
	 0, NULL, NULL, "Unix socket for cgwctl (mode 0660)"},
	{"group", K_STR, offsetof(struct cgw_config, control.group), "", 0, 0, 0, NULL, NULL,
	 "group that may use the socket (empty: the daemon's group)"},
};

static const struct cfg_key metrics_keys[] = {
	{"enabled", K_BOOL, offsetof(struct cgw_config, metrics.enabled), "true", 0, 0, 0, NULL,
	 NULL, "serve Prometheus metrics and /healthz"},
	{"listen", K_STR, offsetof(struct cgw_config, metrics.listen), "127.0.0.1:9273", 0, 0, 0,
	 NULL, NULL, "address:port of the metrics endpoint"},
};

static const struct cfg_key console_keys[] = {
	{"enabled", K_BOOL, offsetof(struct cgw_config, console.enabled), "false", 0, 0, 0, NULL,
	 NULL, "serve the web console (duty room, installers); off until configured"},
	{"listen", K_STR, offsetof(struct cgw_config, console.listen), "127.0.0.1:8443", 0, 0, 0,
	 NULL, NULL,
	 "address:port of the console; other than loopback only over TLS (tls_cert, or one "
	 "made at the first start)"},
	{"tls_cert", K_STR, offsetof(struct cgw_config, console.tls_cert), "", 0, 0, 0, NULL, NULL,
	 "PEM certificate file: serve HTTPS (with tls_key); empty on a LAN address: "
	 "STATE_DIR/console-cert.pem, made at the first start (fingerprint in the log)"},
	{"tls_key", K_STR, offsetof(struct cgw_config, console.tls_key), "", 0, 0, 0, NULL, NULL,
	 "PEM private key file of tls_cert"},
	{"users", K_STR, offsetof(struct cgw_config, console.users), "", 0, 0, 0, NULL, NULL,
	 "accounts file written by cgwctl user (empty: STATE_DIR/console-users)"},
};

static const struct cfg_key uplink_keys[] = {
	{"name", K_STR, OFF(struct cfg_uplink, name), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "unique uplink name"},
	{"type", K_CHOICE, OFF(struct cfg_uplink, type), NULL, KF_REQUIRED, 0, 0, uplink_types,
	 NULL, "mqtt or http"},
	{"url", K_STR, OFF(struct cfg_uplink, url), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "mqtt://, mqtts://, http:// or https:// URL"},
	{"client_id", K_STR, OFF(struct cfg_uplink, client_id), NULL, 0, 0, 0, NULL, NULL,
	 "MQTT client id (default: the gateway id); stable, for the persistent session"},
	{"username", K_STR, OFF(struct cfg_uplink, username), NULL, 0, 0, 0, NULL, NULL,
	 "MQTT user name"},
	{"password_file", K_STR, OFF(struct cfg_uplink, password_file), NULL, KF_SECRET, 0, 0, NULL,
	 NULL, "file holding the MQTT password (0640 root:cgw at most), or credential:NAME"},
	{"ca_file", K_STR, OFF(struct cfg_uplink, ca_file), NULL, KF_FILE, 0, 0, NULL, NULL,
	 "CA bundle to verify the server (default: the system's)"},
	{"cert_file", K_STR, OFF(struct cfg_uplink, cert_file), NULL, KF_FILE, 0, 0, NULL, NULL,
	 "client certificate for mutual TLS"},
	{"key_file", K_STR, OFF(struct cfg_uplink, key_file), NULL, KF_SECRET, 0, 0, NULL, NULL,
	 "client key for mutual TLS (0640 root:cgw at most), or credential:NAME"},
	{"topic_prefix", K_STR, OFF(struct cfg_uplink, topic_prefix), "cgw/{site}/{gateway}", 0, 0,
	 0, NULL, NULL, "MQTT topic prefix; {site} and {gateway} are filled in"},
	{"insecure", K_BOOL, OFF(struct cfg_uplink, insecure), "false", 0, 0, 0, NULL, NULL,
	 "allow plaintext to a host that is not loopback (logged at every start)"},
	{"send", K_CUSTOM, OFF(struct cfg_uplink, send_mask), NULL, 0, 0, 0, NULL, custom_send,
	 "classes to deliver: alarm, event, telemetry, status (mqtt: all; http: [alarm])"},
	{"hmac_secret_file", K_STR, OFF(struct cfg_uplink, hmac_secret_file), NULL, KF_SECRET, 0, 0,
	 NULL, NULL,
	 "HTTP: key for X-CGW-Signature: sha256=<HMAC of the body> (0640 root:cgw at most), or credential:NAME"},
	{"late_after", K_DURATION, OFF(struct cfg_uplink, late_after_ms), "30s", 0, 0, 0, NULL,
	 NULL, "a message sent later than this after it was produced carries \"delayed\": true"},
	{"timeout", K_DURATION, OFF(struct cfg_uplink, timeout_ms), "10s", 0, 100, 600000, NULL,
	 NULL, "HTTP request timeout / MQTT connect timeout"},
	{"keepalive", K_DURATION, OFF(struct cfg_uplink, keepalive_ms), "30s", 0, 5000, 3600000,
	 NULL, NULL, "MQTT keepalive"},
	{"inflight", K_INT, OFF(struct cfg_uplink, inflight), "100", 0, 1, 10000, NULL, NULL,
	 "messages in flight (unconfirmed) at once, per lane"},
	{"protocol", K_INT, OFF(struct cfg_uplink, protocol), "4", 0, 4, 5, NULL, NULL,
	 "MQTT protocol: 4 (3.1.1) or 5"},
};

/* The keys every bus has; the rest are its type's (config_keys.h). */
static int custom_bus_type(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			   void *obj);
static const struct cfg_key bus_keys[] = {
	{"name", K_STR, OFF(struct cfg_bus, name), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "unique bus name"},
	{"type", K_CUSTOM, 0, NULL, KF_REQUIRED, 0, 0, NULL, custom_bus_type,
	 "the type of bus; the keys below say which types they apply to"},
};

static const struct cfg_key device_keys[] = {
	{"id", K_STR, OFF(struct cfg_device, id), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "unique device id (topics, messages)"},
	{"name", K_STR, OFF(struct cfg_device, name), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "what the duty room reads: plain words that say where"},
	{"profile", K_STR, OFF(struct cfg_device, profile_name), NULL, KF_REQUIRED, 0, 0, NULL,
	 NULL, "profile name (a file NAME.yaml in profile_dirs or the shipped profiles)"},
	{"bus", K_STR, OFF(struct cfg_device, bus_name), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "the bus the device is on"},
	{"unit", K_INT, OFF(struct cfg_device, unit), "1", 0, 0, 255, NULL, NULL,
	 "modbus: unit (slave) id; required on modbus-rtu"},
	{"poll", K_DURATION, OFF(struct cfg_device, poll_ms), "1s", 0, 50, 86400000, NULL, NULL,
	 "modbus: poll interval"},
	{"timeout", K_DURATION, OFF(struct cfg_device, timeout_ms), NULL, 0, 10, 60000, NULL, NULL,
	 "modbus: response timeout (default: the bus's)"},
	{"retries", K_INT, OFF(struct cfg_device, retries), NULL, 0, 0, 10, NULL, NULL,
	 "modbus: retries (default: the bus's)"},
	{"offline_after", K_INT, OFF(struct cfg_device, offline_after), NULL, 0, 1, 1000, NULL,
	 NULL, "modbus: failed cycles before offline (default: the bus's)"},
	{"max_gap", K_INT, OFF(struct cfg_device, max_gap), NULL, 0, 0, 124, NULL, NULL,
	 "modbus: registers bridged when merging (default: the bus's)"},
	{"max_registers", K_INT, OFF(struct cfg_device, max_registers), NULL, 0, 1, 125, NULL, NULL,
	 "modbus: largest read this device accepts (default: the bus's)"},
	{"address_base", K_INT, OFF(struct cfg_device, address_base), "0", 0, 0, 1, NULL, NULL,
	 "modbus: 1 if the profile's addresses count from 1"},
	{"topic", K_STR, OFF(struct cfg_device, topic), NULL, 0, 0, 0, NULL, NULL,
	 "mqtt: base topic; the profile's topics are relative to it"},
	{"stale_after", K_DURATION, OFF(struct cfg_device, stale_after_ms), NULL, 0, 1000,
	 0x7fffffff, NULL, NULL,
	 "mqtt: offline after this long without a message (default: bus's)"},
	{"location", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, custom_location,
	 "where the device is: building, floor, room, ... (used in alarm messages)"},
};

static const struct cfg_key profile_keys[] = {
	{"profile", K_STR, OFF(struct cfg_profile, name), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "the profile's name; must match its file name"},
	{"class", K_CHOICE, OFF(struct cfg_profile, class), NULL, KF_REQUIRED, 0, 0, classes, NULL,
	 "fire, security, access or service"},
	{"description", K_STR, OFF(struct cfg_profile, description), NULL, 0, 0, 0, NULL, NULL,
	 "what device model this is"},
	{"points", K_CUSTOM, 0, NULL, KF_REQUIRED, 0, 0, NULL, custom_points,
	 "the device's data points"},
	{"alarms", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, custom_alarms, "alarm rules"},
};

static const struct cfg_key point_keys[] = {
	{"name", K_STR, OFF(struct cfg_point, name), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "point name, unique in the profile"},
	{"table", K_CHOICE, OFF(struct cfg_point, table), NULL, 0, 0, 0, tables, NULL,
	 "modbus: coil, discrete, input or holding"},
	{"address", K_INT, OFF(struct cfg_point, address), NULL, 0, 0, 65535, NULL, NULL,
	 "modbus: register or bit address (0-based unless the device sets address_base: 1)"},
	{"type", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, custom_type,
	 "bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, string:N, bits; "
	 "mqtt also: number, string"},
	{"order", K_CHOICE, OFF(struct cfg_point, order), "ABCD", 0, 0, 0, orders, NULL,
	 "modbus: byte order of multi-register values"},
	{"scale", K_DOUBLE, OFF(struct cfg_point, scale), "1", 0, 0, 0, NULL, NULL,
	 "value = raw * scale + offset"},
	{"offset", K_DOUBLE, OFF(struct cfg_point, offset), "0", 0, 0, 0, NULL, NULL,
	 "value = raw * scale + offset"},
	{"bit", K_INT, OFF(struct cfg_point, bit), "-1", 0, -1, 15, NULL, NULL,
	 "modbus: one bit (0..15) of a register, as bool"},
	{"poll", K_DURATION, OFF(struct cfg_point, poll_ms), NULL, 0, 50, 86400000, NULL, NULL,
	 "modbus: read this point more often than its device (an alarm status at 500ms while "
	 "analogue values stay at the device's poll); it gets its own short request"},
	{"enum", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, custom_enum,
	 "map of raw integer -> word, e.g. {0: normal, 1: alarm}"},
	{"unit", K_STR, OFF(struct cfg_point, unit), NULL, 0, 0, 0, NULL, NULL,
	 "engineering unit, e.g. MPa"},
	{"writable", K_BOOL, OFF(struct cfg_point, writable), "false", 0, 0, 0, NULL, NULL,
	 "commands may write this point"},
	{"deadband", K_DOUBLE, OFF(struct cfg_point, deadband), "0", 0, 0, 0, NULL, NULL,
	 "report a change only beyond this"},
	{"invalid", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, custom_invalid,
	 "raw values that mean \"no reading\" (e.g. [0xFFFF, -32768]): bad quality, never a "
	 "value"},
	{"range", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, custom_range,
	 "[min, max] of a valid value (after scale/offset); outside: bad quality, counted"},
	{"report_every", K_DURATION, OFF(struct cfg_point, report_every_ms), "1m", 0, 0, 0, NULL,
	 NULL, "re-send an unchanged good value this often"},
	{"topic", K_STR, OFF(struct cfg_point, topic), NULL, 0, 0, 0, NULL, NULL,
	 "mqtt: topic relative to the device's topic (+ and # allowed)"},
	{"json", K_STR, OFF(struct cfg_point, json), NULL, 0, 0, 0, NULL, NULL,
	 "mqtt: dotted path into the JSON payload, e.g. door.state (empty: whole payload)"},
	{"event", K_BOOL, OFF(struct cfg_point, event), "false", 0, 0, 0, NULL, NULL,
	 "mqtt: something that happens (card swipe) rather than a state"},
	{"rate_limit", K_DURATION, OFF(struct cfg_point, rate_limit_ms), "0ms", 0, 0, 0, NULL, NULL,
	 "events: at most one per this interval; the ones between are counted, not sent "
	 "(camera motion)"},
};

static const struct cfg_key alarm_keys[] = {
	{"name", K_STR, OFF(struct cfg_alarm, name), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "alarm name, unique in the profile"},
	{"point", K_STR, OFF(struct cfg_alarm, point), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "the point the rule watches"},
	{"above", K_DOUBLE, OFF(struct cfg_alarm, threshold), NULL, 0, 0, 0, NULL, NULL,
	 "active while value > this"},
	{"below", K_DOUBLE, OFF(struct cfg_alarm, threshold), NULL, 0, 0, 0, NULL, NULL,
	 "active while value < this"},
	{"equals", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, custom_scalar_text,
	 "active while value == this (a number, true/false, or an enum word)"},
	{"not_equals", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, custom_scalar_text,
	 "active while value != this"},
	{"bit", K_INT, OFF(struct cfg_alarm, bit), NULL, 0, 0, 63, NULL, NULL,
	 "active while this bit of the value is set"},
	{"deadband", K_DOUBLE, OFF(struct cfg_alarm, deadband), "0", 0, 0, 0, NULL, NULL,
	 "above/below: clears only this far back past the threshold"},
	{"on_delay", K_DURATION, OFF(struct cfg_alarm, on_delay_ms), "0ms", 0, 0, 0, NULL, NULL,
	 "the condition must hold this long before the alarm is raised"},
	{"off_delay", K_DURATION, OFF(struct cfg_alarm, off_delay_ms), "0ms", 0, 0, 0, NULL, NULL,
	 "the condition must be gone this long before the alarm clears"},
	{"poll", K_DURATION, OFF(struct cfg_alarm, poll_ms), NULL, 0, 50, 86400000, NULL, NULL,
	 "modbus: read the rule's point at least this often (as the point's poll)"},
	{"severity", K_CHOICE, OFF(struct cfg_alarm, severity), "major", 0, 0, 0, severities, NULL,
	 "critical, major, minor or warning"},
	{"message", K_STR, OFF(struct cfg_alarm, message), "{name} {alarm}", 0, 0, 0, NULL, NULL,
	 "text template: {name} {alarm} {value} {unit} {location.KEY}"},
	{"clear_message", K_STR, OFF(struct cfg_alarm, clear_message), NULL, 0, 0, 0, NULL, NULL,
	 "text template of the clear (default: the message followed by 已恢复)"},
	{"latch", K_BOOL, OFF(struct cfg_alarm, latch), "false", 0, 0, 0, NULL, NULL,
	 "stays active until acknowledged, even after the condition ends"},
	{"unless", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, custom_unless,
	 "list of {point, equals, within}: not raised when another point has (or had, within "
	 "that time) that value as the condition starts (door opened after an unlock)"},
};

static const struct cfg_key unless_keys[] = {
	{"point", K_STR, OFF(struct cfg_unless, point), NULL, KF_REQUIRED, 0, 0, NULL, NULL,
	 "the other point"},
	{"equals", K_CUSTOM, 0, NULL, KF_REQUIRED, 0, 0, NULL, custom_unless_equals,
	 "the value that excuses the condition"},
	{"within", K_DURATION, OFF(struct cfg_unless, within_ms), "0ms", 0, 0, 0, NULL, NULL,
	 "how long before the condition the value still counts"},
};

static const struct cfg_key top_keys[];

#define TAB(what, arr)                                  \
	{                                               \
		what, arr, sizeof(arr) / sizeof(arr[0]) \
	}
static const struct keytab gateway_tab = TAB("gateway", gateway_keys);
static const struct keytab store_tab = TAB("store", store_keys);
static const struct keytab control_tab = TAB("control", control_keys);
static const struct keytab metrics_tab = TAB("metrics", metrics_keys);
static const struct keytab console_tab = TAB("console", console_keys);
static const struct keytab uplink_tab = TAB("uplink", uplink_keys);
static const struct keytab bus_tab = TAB("bus", bus_keys);
static const struct keytab device_tab = TAB("device", device_keys);
static const struct keytab profile_tab = TAB("profile", profile_keys);
static const struct keytab point_tab = TAB("point", point_keys);
static const struct keytab alarm_tab = TAB("alarm", alarm_keys);
static const struct keytab unless_tab = TAB("unless", unless_keys);

/* ---- custom keys ---------------------------------------------------------- */

static int custom_location(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			   void *obj)
{
	struct cfg_device *d = obj;
	void *it = NULL;
	struct fy_node_pair *p;
	int nerr = 0;

	(void)k;
	if (!val || !fy_node_is_mapping(val)) {
		err_node(ld, val,
			 "location: expected a mapping like {building: \"3\", floor: \"3\"}");
		return -EINVAL;
	}
	while ((p = fy_node_mapping_iterate(val, &it))) {
		struct fy_node *kn = fy_node_pair_key(p), *vn = fy_node_pair_value(p);
		char *key = scalar_dup(kn), *v = scalar_dup(vn);
		if (!key || !v) {
			err_node(ld, v ? kn : vn, "location: keys and values must be plain text");
			free(key);
			free(v);
			nerr++;
			continue;
		}
		struct cfg_kv *nv = realloc(d->location, (d->n_location + 1) * sizeof(*nv));
		if (!nv) {
			free(key);
			free(v);
			return -ENOMEM;
		}
		d->location = nv;
		d->location[d->n_location].key = key;
		d->location[d->n_location].value = v;
		d->n_location++;
	}
	return nerr ? -EINVAL : 0;
}

static int custom_send(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
		       void *obj)
{
	struct cfg_uplink *u = obj;
	char buf[64];
	void *it = NULL;
	struct fy_node *e;
	int nerr = 0;

	(void)k;
	u->send_mask = 0;
	if (!val || !fy_node_is_sequence(val)) {
		err_node(ld, val,
			 "send: expected a list of classes: alarm, event, telemetry, status");
		return -EINVAL;
	}
	while ((e = fy_node_sequence_iterate(val, &it))) {
		const char *s = scalar(e, buf, sizeof(buf));
		int lane = s ? cgw_lane_from_name(s) : -1;
		if (lane < 0) {
			err_node(ld, e, "send: '%s' is not one of: alarm, event, telemetry, status",
				 s ? s : "?");
			nerr++;
			continue;
		}
		u->send_mask |= 1u << lane;
	}
	return nerr ? -EINVAL : 0;
}

static int custom_enum(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
		       void *obj)
{
	struct cfg_point *pt = obj;
	char buf[64];
	void *it = NULL;
	struct fy_node_pair *p;
	int nerr = 0;

	(void)k;
	if (!val || !fy_node_is_mapping(val)) {
		err_node(ld, val, "enum: expected a mapping like {0: normal, 1: alarm}");
		return -EINVAL;
	}
	while ((p = fy_node_mapping_iterate(val, &it))) {
		struct fy_node *kn = fy_node_pair_key(p), *vn = fy_node_pair_value(p);
		const char *ks = scalar(kn, buf, sizeof(buf));
		int64_t key;
		char *label;

		if (!ks || parse_i64(ks, &key) < 0) {
			err_node(ld, kn, "enum: key '%s' is not an integer", ks ? ks : "?");
			nerr++;
			continue;
		}
		label = scalar_dup(vn);
		if (!label || !*label) {
			err_node(ld, vn ? vn : kn, "enum: value of %lld must be a word",
				 (long long)key);
			free(label);
			nerr++;
			continue;
		}
		for (size_t i = 0; i < pt->n_enums; i++) {
			if (pt->enums[i].key == key || strcmp(pt->enums[i].label, label) == 0) {
				err_node(ld, kn, "enum: %lld: '%s' duplicates an earlier entry",
					 (long long)key, label);
				nerr++;
			}
		}
		struct cfg_enum *nv = realloc(pt->enums, (pt->n_enums + 1) * sizeof(*nv));
		if (!nv) {
			free(label);
			return -ENOMEM;
		}
		pt->enums = nv;
		pt->enums[pt->n_enums].key = key;
		pt->enums[pt->n_enums].label = label;
		pt->n_enums++;
	}
	return nerr ? -EINVAL : 0;
}

/* A number as written: integers (also 0x...) exactly, else a decimal. */
static int parse_number(const char *s, double *out)
{
	int64_t i;

	if (parse_i64(s, &i) == 0) {
		*out = (double)i;
		return 0;
	}
	return parse_double(s, out);
}

static int custom_invalid(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			  void *obj)
{
	struct cfg_point *pt = obj;
	struct fy_node *n;
	void *it = NULL;
	char buf[64];
	int nerr = 0;

	(void)k;
	if (!val || (!fy_node_is_sequence(val) && !fy_node_is_scalar(val))) {
		err_node(ld, val, "invalid: expected a number or a list like [0xFFFF, -32768]");
		return -EINVAL;
	}
	for (n = fy_node_is_scalar(val) ? val : fy_node_sequence_iterate(val, &it); n;
	     n = fy_node_is_scalar(val) ? NULL : fy_node_sequence_iterate(val, &it)) {
		const char *t = scalar(n, buf, sizeof(buf));
		double d;
		if (!t || parse_number(t, &d) < 0) {
			err_node(ld, n, "invalid: '%s' is not a number", t ? t : "?");
			nerr++;
			continue;
		}
		if (pt->n_invalid >= 16) {
			err_node(ld, n, "invalid: at most 16 values");
			return -EINVAL;
		}
		double *nv = realloc(pt->invalid, (pt->n_invalid + 1) * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		pt->invalid = nv;
		pt->invalid[pt->n_invalid++] = d;
	}
	return nerr ? -EINVAL : 0;
}

static int custom_range(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			void *obj)
{
	struct cfg_point *pt = obj;
	struct fy_node *a, *b;
	char ba[64], bb[64];
	const char *ta, *tb;
	void *it = NULL;

	(void)k;
	if (!val || !fy_node_is_sequence(val) || fy_node_sequence_item_count(val) != 2) {
		err_node(ld, val, "range: expected [min, max], e.g. [0, 100]");
		return -EINVAL;
	}
	a = fy_node_sequence_iterate(val, &it);
	b = fy_node_sequence_iterate(val, &it);
	ta = scalar(a, ba, sizeof(ba));
	tb = scalar(b, bb, sizeof(bb));
	if (!ta || !tb || parse_number(ta, &pt->range_min) < 0 ||
	    parse_number(tb, &pt->range_max) < 0) {
		err_node(ld, val, "range: min and max must be numbers");
		return -EINVAL;
	}
	if (!(pt->range_min < pt->range_max)) {
		err_node(ld, val, "range: min %g is not below max %g", pt->range_min,
			 pt->range_max);
		return -EINVAL;
	}
	pt->has_range = true;
	return 0;
}

static int custom_type(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
		       void *obj)
{
	struct cfg_point *pt = obj;
	char buf[64];
	const char *s = scalar(val, buf, sizeof(buf));
	enum cgw_ptype t;
	unsigned len = 0;

	(void)k;
	if (s && strcmp(s, "number") == 0) {
		pt->type = CGW_T_NUMBER;
		return 0;
	}
	if (s && strcmp(s, "string") == 0) { /* MQTT: any string */
		pt->type = CGW_T_STRING;
		pt->str_len = 0;
		return 0;
	}
	if (!s || mbd_parse_type(s, &t, &len) < 0) {
		err_node(
			ld, val,
			"type: '%s' is not one of: bool, int16, uint16, int32, uint32, int64, uint64, "
			"float32, float64, string:N, bits, number, string",
			s ? s : "?");
		return -EINVAL;
	}
	pt->type = (int)t;
	pt->str_len = len;
	return 0;
}

/* equals/not_equals keep the scalar's text; it is resolved against the
 * point's type and enum once the whole profile is read. */
static int custom_scalar_text(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			      void *obj)
{
	struct cfg_alarm *a = obj;
	char *s = scalar_dup(val);

	if (!s) {
		err_node(ld, val, "%s: expected a number, true/false or a word", k->name);
		return -EINVAL;
	}
	free(a->operand_text);
	a->operand_text = s;
	a->op = strcmp(k->name, "equals") == 0 ? CFG_OP_EQUALS : CFG_OP_NOT_EQUALS;
	return 0;
}

static int custom_unless_equals(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
				void *obj)
{
	struct cfg_unless *u = obj;
	char *s = scalar_dup(val);

	if (!s) {
		err_node(ld, val, "%s: expected a number, true/false or a word", k->name);
		return -EINVAL;
	}
	free(u->operand_text);
	u->operand_text = s;
	return 0;
}

static int parse_seq(struct cfg_loader *ld, const struct keytab *t, struct fy_node *seq, void **arr,
		     size_t *n, size_t size, size_t obj_off, void (*init)(void *obj));

static int custom_unless(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			 void *obj)
{
	struct cfg_alarm *a = obj;
	void *arr = a->unless;
	int r;

	(void)k;
	r = parse_seq(ld, &unless_tab, val, &arr, &a->n_unless, sizeof(struct cfg_unless),
		      offsetof(struct cfg_unless, o), NULL);
	a->unless = arr;
	return r ? -EINVAL : 0;
}

/* Parse a sequence of mappings into a growing array of `size`-byte objects,
 * each starting with a struct cfg_obj at offset `obj_off`. */
static int parse_seq(struct cfg_loader *ld, const struct keytab *t, struct fy_node *seq, void **arr,
		     size_t *n, size_t size, size_t obj_off, void (*init)(void *obj))
{
	void *it = NULL;
	struct fy_node *e;
	int nerr = 0;

	if (!seq || !fy_node_is_sequence(seq)) {
		err_node(ld, seq, "%ss: expected a list", t->what);
		return 1;
	}
	while ((e = fy_node_sequence_iterate(seq, &it))) {
		char *na = realloc(*arr, (*n + 1) * size);
		if (!na)
			return nerr + 1;
		*arr = na;
		void *obj = na + *n * size;
		memset(obj, 0, size);
		if (init)
			init(obj);
		(*n)++;
		nerr += parse_map(ld, t, e, obj, (struct cfg_obj *)(void *)((char *)obj + obj_off));
	}
	return nerr;
}

static void device_init(void *obj)
{
	struct cfg_device *d = obj;
	d->timeout_ms = d->retries = d->offline_after = d->max_gap = d->max_registers = -1;
	d->stale_after_ms = -1;
	d->bus = SIZE_MAX; /* until resolved */
	d->profile = SIZE_MAX;
}

/* ---- buses: common keys, then the type's (config_keys.h) ----------------- */

const struct cfg_bus_type *cfg_bus_type_find(const char *name)
{
	for (size_t i = 0; cfg_bus_types[i]; i++)
		if (!strcmp(cfg_bus_types[i]->name, name))
			return cfg_bus_types[i];
	return NULL;
}

const char *cfg_bus_type_name(const struct cfg_bus *b)
{
	return b && b->kind ? b->kind->name : "?";
}

static struct keytab kind_tab(const struct cfg_bus_type *kind)
{
	return (struct keytab){"bus", kind->keys, kind->n_keys};
}

/* A key of some type of bus (the first that has it), or NULL. */
static const struct cfg_key *any_bus_key(const char *name)
{
	for (size_t i = 0; cfg_bus_types[i]; i++) {
		struct keytab t = kind_tab(cfg_bus_types[i]);
		size_t idx;
		const struct cfg_key *k = key_find(&t, name, &idx);
		if (k)
			return k;
	}
	return NULL;
}

static const char *bus_key_suggest(const char *name)
{
	const char *best = key_suggest(&bus_tab, name);
	size_t bestd = best ? edit_distance(name, best) : 3;

	for (size_t i = 0; cfg_bus_types[i]; i++) {
		struct keytab t = kind_tab(cfg_bus_types[i]);
		const char *h = key_suggest(&t, name);
		if (h && edit_distance(name, h) < bestd) {
			bestd = edit_distance(name, h);
			best = h;
		}
	}
	return best;
}

static void types_join(char *buf, size_t cap)
{
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; cfg_bus_types[i] && len < cap; i++)
		len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? ", " : "",
					cfg_bus_types[i]->name);
}

/* `type:` picks the type, whose options struct gets its defaults. */
static int custom_bus_type(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			   void *obj)
{
	struct cfg_bus *b = obj;
	const struct cfg_bus_type *kind;
	char buf[128], list[256];
	const char *v;

	if (!val || fy_node_is_null(val)) {
		err_node(ld, val, "%s: missing value (expected %s)", k->name, ktype_name(K_CHOICE));
		return -EINVAL;
	}
	v = scalar(val, buf, sizeof(buf));
	if (!v) {
		err_node(ld, val, "%s: expected %s, got a %s", k->name, ktype_name(K_CHOICE),
			 fy_node_is_mapping(val) ? "mapping" : "list");
		return -EINVAL;
	}
	kind = cfg_bus_type_find(v);
	if (!kind) {
		types_join(list, sizeof(list));
		err_node(ld, val, "%s: '%s' is not one of: %s", k->name, v, list);
		return -EINVAL;
	}
	b->opts = calloc(1, kind->opts_size);
	if (!b->opts)
		return -ENOMEM;
	b->kind = kind;
	b->opts_o.file = b->o.file;
	b->opts_o.line = b->o.line;
	struct keytab t = kind_tab(kind);
	apply_defaults(ld, &t, b->opts);
	return 0;
}

/* A bus: `type:` first, for it says what the other keys are; a key of
 * another type is kept for the check ("does not apply to"). */
static int parse_bus(struct cfg_loader *ld, struct fy_node *map, struct cfg_bus *b, size_t bus)
{
	char kbuf[128];
	void *it = NULL;
	struct fy_node_pair *p;
	int nerr = 0;

	b->o.file = ld->file;
	b->o.line = node_line(map);
	if (!fy_node_is_mapping(map)) {
		err_node(ld, map, "%s: expected a mapping of keys", bus_tab.what);
		return 1;
	}
	while ((p = fy_node_mapping_iterate(map, &it))) {
		const char *kname = scalar(fy_node_pair_key(p), kbuf, sizeof(kbuf));
		size_t idx;
		if (kname && !strcmp(kname, "type") && key_find(&bus_tab, kname, &idx)) {
			b->o.key_line[idx] = node_line(fy_node_pair_key(p));
			nerr += apply_key(ld, &bus_keys[idx], fy_node_pair_key(p),
					  fy_node_pair_value(p), b);
			break;
		}
	}
	it = NULL;
	while ((p = fy_node_mapping_iterate(map, &it))) {
		struct fy_node *kn = fy_node_pair_key(p), *vn = fy_node_pair_value(p);
		const char *kname = scalar(kn, kbuf, sizeof(kbuf));
		const struct cfg_key *k;
		size_t idx;

		if (!kname) {
			err_node(ld, kn, "%s: keys must be plain words", bus_tab.what);
			nerr++;
			continue;
		}
		if (!strcmp(kname, "type"))
			continue;
		k = key_find(&bus_tab, kname, &idx);
		if (k) {
			b->o.key_line[idx] = node_line(kn);
			nerr += apply_key(ld, k, kn, vn, b);
			continue;
		}
		if (b->kind) {
			struct keytab t = kind_tab(b->kind);
			k = key_find(&t, kname, &idx);
			if (k) {
				b->opts_o.key_line[idx] = node_line(kn);
				nerr += apply_key(ld, k, kn, vn, b->opts);
				continue;
			}
		}
		k = any_bus_key(kname);
		if (k) { /* another type's: said at the check, when the type is known */
			struct bus_stray *ns;
			if (!b->kind)
				continue;
			ns = realloc(ld->strays, (ld->n_strays + 1) * sizeof(*ns));
			if (!ns)
				return nerr + 1;
			ld->strays = ns;
			ns[ld->n_strays++] = (struct bus_stray){bus, k->name, node_line(kn)};
			continue;
		}
		err_unknown_key(ld, kn, kname, bus_tab.what, bus_key_suggest(kname));
		nerr++;
	}
	return nerr + check_required(ld, &bus_tab, &b->o);
}

static int parse_buses(struct cfg_loader *ld, struct fy_node *seq)
{
	struct cgw_config *cfg = ld->cfg;
	void *it = NULL;
	struct fy_node *e;
	int nerr = 0;

	if (!seq || !fy_node_is_sequence(seq)) {
		err_node(ld, seq, "%ss: expected a list", bus_tab.what);
		return 1;
	}
	while ((e = fy_node_sequence_iterate(seq, &it))) {
		struct cfg_bus *nb = realloc(cfg->buses, (cfg->n_buses + 1) * sizeof(*nb));
		if (!nb)
			return nerr + 1;
		cfg->buses = nb;
		memset(&nb[cfg->n_buses], 0, sizeof(*nb));
		cfg->n_buses++;
		nerr += parse_bus(ld, e, &nb[cfg->n_buses - 1], cfg->n_buses - 1);
	}
	return nerr;
}

struct cgw_config *cfg_loading(struct cfg_loader *ld)
{
	return ld->cfg;
}

bool cfg_bus_given(const struct cfg_bus *b, const char *key)
{
	if (!b->kind)
		return false;
	struct keytab t = kind_tab(b->kind);
	return key_given(&t, &b->opts_o, key);
}

static void bus_verr(struct cfg_loader *ld, bool warn, const struct cfg_bus *b, const char *key,
		     const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

static void bus_verr(struct cfg_loader *ld, bool warn, const struct cfg_bus *b, const char *key,
		     const char *fmt, va_list ap)
{
	char msg[640];
	int line = b->o.line;

	if (key && b->kind) {
		struct keytab t = kind_tab(b->kind);
		line = key_line(&t, &b->opts_o, key);
	}
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (warn)
		warn_at(ld, b->o.file, line, "bus '%s': %s", b->name, msg);
	else
		err_at(ld, b->o.file, line, "bus '%s': %s", b->name, msg);
}

void cfg_bus_error(struct cfg_loader *ld, const struct cfg_bus *b, const char *key, const char *fmt,
		   ...)
{
	va_list ap;

	va_start(ap, fmt);
	bus_verr(ld, false, b, key, fmt, ap);
	va_end(ap);
}

void cfg_bus_warn(struct cfg_loader *ld, const struct cfg_bus *b, const char *key, const char *fmt,
		  ...)
{
	va_list ap;

	va_start(ap, fmt);
	bus_verr(ld, true, b, key, fmt, ap);
	va_end(ap);
}

static void uplink_init(void *obj)
{
	((struct cfg_uplink *)obj)->type = -1;
}

static void alarm_init(void *obj)
{
	struct cfg_alarm *a = obj;
	a->op = -1;
	a->bit = -1;
}

static void point_init(void *obj)
{
	struct cfg_point *p = obj;
	p->table = -1;
	p->address = -1;
	p->type = -1;
}

static int custom_points(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			 void *obj)
{
	struct cfg_profile *pr = obj;
	void *arr = pr->points;
	int r;

	(void)k;
	r = parse_seq(ld, &point_tab, val, &arr, &pr->n_points, sizeof(struct cfg_point),
		      offsetof(struct cfg_point, o), point_init);
	pr->points = arr;
	return r ? -EINVAL : 0;
}

static int custom_alarms(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			 void *obj)
{
	struct cfg_profile *pr = obj;
	void *arr = pr->alarms;
	int r;

	(void)k;
	r = parse_seq(ld, &alarm_tab, val, &arr, &pr->n_alarms, sizeof(struct cfg_alarm),
		      offsetof(struct cfg_alarm, o), alarm_init);
	pr->alarms = arr;
	/* above/below write to the same field; record which one was given */
	for (size_t i = 0; i < pr->n_alarms; i++) {
		struct cfg_alarm *a = &pr->alarms[i];
		if (key_given(&alarm_tab, &a->o, "above"))
			a->op = CFG_OP_ABOVE;
		else if (key_given(&alarm_tab, &a->o, "below"))
			a->op = CFG_OP_BELOW;
		else if (key_given(&alarm_tab, &a->o, "bit"))
			a->op = CFG_OP_BIT;
	}
	return r ? -EINVAL : 0;
}

/* ---- files ------------------------------------------------------------------ */

static int read_file_text(const char *path, char **text, size_t *len, int *err)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t n = 0, cap = 0;

	if (!f) {
		*err = errno;
		return -1;
	}
	for (;;) {
		if (n + 4096 + 1 > cap) {
			cap = cap ? cap * 2 : 8192;
			if (cap > MAX_FILE_SIZE + 8192) {
				*err = EFBIG;
				goto fail;
			}
			char *nb = realloc(buf, cap);
			if (!nb) {
				*err = ENOMEM;
				goto fail;
			}
			buf = nb;
		}
		size_t r = fread(buf + n, 1, cap - n - 1, f);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(f)) {
		*err = errno ? errno : EIO;
		goto fail;
	}
	fclose(f);
	buf[n] = '\0';
	*text = buf;
	*len = n;
	return 0;
fail:
	free(buf);
	fclose(f);
	return -1;
}

static void hash_update(uint64_t *h, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		*h ^= (unsigned char)p[i];
		*h *= 0x100000001b3ULL;
	}
}

/* libfyaml 0.7 does not collect diagnostics for us; it prints
 * "FILE:LINE:COL: error: MESSAGE" lines through this callback, and we keep
 * the first error's line and message. */
struct yaml_diag {
	int line, col;
	char msg[256];
};

static void on_yaml_diag(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
	struct yaml_diag *yd = user;
	char text[512];
	const char *e, *p;
	int colons = 0;

	(void)diag;
	if (yd->msg[0] || len == 0)
		return;
	if (len >= sizeof(text))
		len = sizeof(text) - 1;
	memcpy(text, buf, len);
	text[len] = '\0';
	e = strstr(text, ": error: ");
	if (!e)
		return;
	/* walk back over ":COL" and ":LINE" */
	for (p = e - 1; p > text && colons < 2; p--)
		if (*p == ':')
			colons++;
	if (colons == 2) {
		const char *c = strchr(p + 2, ':');
		yd->line = atoi(p + 2);
		yd->col = c && c < e ? atoi(c + 1) : 0;
	}
	snprintf(yd->msg, sizeof(yd->msg), "%.*s", (int)strcspn(e + 9, "\n"), e + 9);
}

/* Offset of the first byte that is not valid UTF-8 (or a NUL), or len.
 * YAML is UTF-8 text, and libfyaml 0.7 can loop forever on some invalid
 * sequences (found by fuzz_config), so they never reach it. */
static size_t utf8_invalid_at(const unsigned char *p, size_t len)
{
	size_t i = 0;

	while (i < len) {
		unsigned char c = p[i];
		size_t n;
		uint32_t cp;

		if (c == 0)
			return i;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			n = 1, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			n = 2, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			n = 3, cp = c & 0x07;
		else
			return i;
		for (size_t k = 1; k <= n; k++) {
			if (i + k >= len || (p[i + k] & 0xc0) != 0x80)
				return i;
			cp = (cp << 6) | (p[i + k] & 0x3f);
		}
		/* overlong forms, surrogates, beyond U+10FFFF */
		if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return i;
		i += n + 1;
	}
	return len;
}

/* The key that starts at LINE:COL (1-based) of text, for "duplicate key":
 * a plain scalar up to ':' (or ',' '}' in flow), or a quoted one. */
static bool yaml_key_at(const char *text, size_t len, int line, int col, char *out, size_t cap)
{
	size_t i = 0, n = 0;
	char quote = 0;

	if (line < 1 || col < 1 || cap < 2)
		return false;
	for (int l = 1; l < line && i < len; i++)
		l += text[i] == '\n';
	for (int c = 1; c < col && i < len && text[i] != '\n'; c++)
		i++;
	if (i < len && (text[i] == '"' || text[i] == '\''))
		quote = text[i++];
	else if (i > 0 && (text[i - 1] == '"' || text[i - 1] == '\''))
		quote = text[i - 1]; /* the column of a quoted key is its first character */
	for (; i < len && n < cap - 1; i++) {
		char ch = text[i];
		if (ch == '\n' || (quote && ch == quote) ||
		    (!quote && (ch == ':' || ch == ',' || ch == '}' || ch == '#')))
			break;
		out[n++] = ch;
	}
	while (n > 0 && !quote && (out[n - 1] == ' ' || out[n - 1] == '\t'))
		n--;
	out[n] = '\0';
	return n > 0;
}

/* Parse YAML text into a document; syntax errors become FILE:LINE:COL errors. */
static struct fy_document *parse_yaml(struct cfg_loader *ld, const char *file, const char *text,
				      size_t len)
{
	struct yaml_diag yd = {0};
	char key[128];
	struct fy_diag_cfg dcfg;
	struct fy_diag *diag;
	struct fy_parse_cfg pcfg;
	struct fy_document *doc;
	size_t bad = utf8_invalid_at((const unsigned char *)text, len);

	if (bad < len) {
		int line = 1;
		for (size_t i = 0; i < bad; i++)
			line += text[i] == '\n';
		err_at(ld, file, line, "not UTF-8 text (byte 0x%02x); YAML files must be UTF-8",
		       (unsigned char)text[bad]);
		ld->yaml_failed = true;
		return NULL;
	}
	fy_diag_cfg_default(&dcfg);
	dcfg.fp = NULL;
	dcfg.output_fn = on_yaml_diag;
	dcfg.user = &yd;
	dcfg.colorize = false;
	diag = fy_diag_create(&dcfg);
	if (!diag)
		return NULL;
	memset(&pcfg, 0, sizeof(pcfg));
	pcfg.flags = FYPCF_QUIET | FYPCF_DEFAULT_VERSION_1_2 | FYPCF_JSON_NONE;
	pcfg.diag = diag;
	doc = fy_document_build_from_string(&pcfg, text, len);
	if (!doc || !fy_document_root(doc)) {
		ld->yaml_failed = true;
		if (yd.msg[0] && !strcmp(yd.msg, "duplicate key") &&
		    yaml_key_at(text, len, yd.line, yd.col, key, sizeof(key)))
			err_at_col(ld, file, yd.line ? yd.line : 1, yd.col,
				   "YAML: duplicate key '%s' (a key may appear once in a mapping)",
				   key);
		else if (yd.msg[0])
			err_at_col(ld, file, yd.line ? yd.line : 1, yd.col, "YAML: %s", yd.msg);
		else
			err_at(ld, file, 1, "the file is empty");
		fy_document_destroy(doc);
		doc = NULL;
	}
	fy_diag_unref(diag);
	return doc;
}

static int load_file(struct cfg_loader *ld, const char *path, int line_of_ref,
		     const char *ref_file);

/* glob() reports unreadable directories here; a directory that does not
 * exist (devices.d/ not created yet) is no error: it matches nothing. */
static _Thread_local int glob_err;

static int on_glob_error(const char *path, int err)
{
	(void)path;
	if (err != ENOENT && err != ENOTDIR && !glob_err)
		glob_err = err;
	return 0;
}

static int handle_include(struct cfg_loader *ld, struct fy_node *val)
{
	struct cfg_strlist globs = {0};
	char buf[PATH_MAX];
	void *it = NULL;
	struct fy_node *e;
	int nerr = 0;

	if (val && fy_node_is_scalar(val)) {
		strlist_push(&globs, scalar_dup(val));
	} else if (val && fy_node_is_sequence(val)) {
		while ((e = fy_node_sequence_iterate(val, &it))) {
			if (!scalar(e, buf, sizeof(buf))) {
				err_node(ld, e, "include: expected a list of file globs");
				nerr++;
				continue;
			}
			strlist_push(&globs, strdup(buf));
		}
	} else {
		err_node(ld, val, "include: expected a list of file globs");
		return 1;
	}
	int line = node_line(val);
	for (size_t i = 0; i < globs.n; i++) {
		char *pattern = resolve_path(ld->base_dir, globs.v[i]);
		glob_t g;
		int r;

		if (!pattern)
			continue;
		glob_err = 0;
		r = glob(pattern, GLOB_MARK, on_glob_error, &g);
		if (r == 0 || r == GLOB_NOMATCH) {
			if (glob_err) {
				/* a directory that exists but cannot be read */
				err_at(ld, ld->file, line, "include: %s: %s", pattern,
				       strerror(glob_err));
				nerr++;
			}
		}
		if (r == GLOB_NOMATCH) {
			/* an empty devices.d/ is fine; a named file that is missing is not */
			if (!strpbrk(globs.v[i], "*?[")) {
				err_at(ld, ld->file, line, "include: %s: no such file", pattern);
				nerr++;
			}
		} else if (r != 0) {
			err_at(ld, ld->file, line, "include: %s: cannot read", pattern);
			nerr++;
		} else {
			for (size_t j = 0; j < g.gl_pathc; j++) {
				const char *p = g.gl_pathv[j];
				size_t pl = strlen(p);
				if (pl && p[pl - 1] == '/')
					continue; /* a directory */
				nerr += load_file(ld, p, line, ld->file);
			}
			globfree(&g);
		}
		free(pattern);
	}
	strlist_free(&globs);
	return nerr;
}

static int singleton(struct cfg_loader *ld, struct fy_node *kn, const char *what,
		     struct cfg_obj **seen, struct cfg_obj *o)
{
	if (*seen) {
		err_node(ld, kn, "%s: already set at %s:%d", what, (*seen)->file, (*seen)->line);
		return 1;
	}
	*seen = o;
	return 0;
}

/* Top-level keys: the table exists for documentation and hints; dispatch is
 * by name because each section has its own shape. */
static const struct cfg_key top_keys[] = {
	{"include", K_STRLIST, 0, NULL, 0, 0, 0, NULL, NULL,
	 "file globs to read too, relative to this file (devices.d/*.yaml)"},
	{"gateway", K_CUSTOM, 0, NULL, KF_REQUIRED, 0, 0, NULL, NULL, "this gateway"},
	{"profile_dirs", K_STRLIST, 0, NULL, 0, 0, 0, NULL, NULL,
	 "directories searched for profiles, in order, before the shipped ones"},
	{"store", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, NULL, "the SQLite store"},
	{"control", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, NULL, "the cgwctl socket"},
	{"metrics", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, NULL, "the metrics endpoint"},
	{"console", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, NULL, "the web console"},
	{"uplinks", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, NULL, "where messages are delivered"},
	{"buses", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, NULL, "Modbus lines and MQTT brokers"},
	{"devices", K_CUSTOM, 0, NULL, 0, 0, 0, NULL, NULL, "the devices"},
};
static const struct keytab top_tab = {"the top level", top_keys,
				      sizeof(top_keys) / sizeof(top_keys[0])};

static int parse_top(struct cfg_loader *ld, struct fy_node *root)
{
	struct cgw_config *cfg = ld->cfg;
	char kbuf[64], vbuf[PATH_MAX];
	void *it = NULL;
	struct fy_node_pair *p;
	struct fy_node *include = NULL;
	int nerr = 0;

	if (!fy_node_is_mapping(root)) {
		err_node(ld, root,
			 "expected a mapping of sections (gateway:, buses:, devices:, ...)");
		return 1;
	}
	while ((p = fy_node_mapping_iterate(root, &it))) {
		struct fy_node *kn = fy_node_pair_key(p), *vn = fy_node_pair_value(p);
		const char *k = scalar(kn, kbuf, sizeof(kbuf));
		void *arr;

		if (!k) {
			err_node(ld, kn, "keys must be plain words");
			nerr++;
		} else if (!strcmp(k, "include")) {
			include = vn;
		} else if (!strcmp(k, "gateway")) {
			if (!singleton(ld, kn, "gateway", &ld->seen_gateway, &cfg->gateway.o))
				nerr += parse_map(ld, &gateway_tab, vn, cfg, &cfg->gateway.o);
			else
				nerr++;
		} else if (!strcmp(k, "store")) {
			if (!singleton(ld, kn, "store", &ld->seen_store, &cfg->store.o))
				nerr += parse_map(ld, &store_tab, vn, cfg, &cfg->store.o);
			else
				nerr++;
		} else if (!strcmp(k, "control")) {
			if (!singleton(ld, kn, "control", &ld->seen_control, &cfg->control.o))
				nerr += parse_map(ld, &control_tab, vn, cfg, &cfg->control.o);
			else
				nerr++;
		} else if (!strcmp(k, "metrics")) {
			if (!singleton(ld, kn, "metrics", &ld->seen_metrics, &cfg->metrics.o))
				nerr += parse_map(ld, &metrics_tab, vn, cfg, &cfg->metrics.o);
			else
				nerr++;
		} else if (!strcmp(k, "console")) {
			if (!singleton(ld, kn, "console", &ld->seen_console, &cfg->console.o))
				nerr += parse_map(ld, &console_tab, vn, cfg, &cfg->console.o);
			else
				nerr++;
		} else if (!strcmp(k, "profile_dirs")) {
			void *sit = NULL;
			struct fy_node *e;
			if (!vn || !fy_node_is_sequence(vn)) {
				err_node(ld, vn ? vn : kn,
					 "profile_dirs: expected a list of directories");
				nerr++;
				continue;
			}
			while ((e = fy_node_sequence_iterate(vn, &sit))) {
				if (!scalar(e, vbuf, sizeof(vbuf))) {
					err_node(ld, e,
						 "profile_dirs: expected a list of directories");
					nerr++;
					continue;
				}
				strlist_push(&cfg->profile_dirs, resolve_path(ld->base_dir, vbuf));
			}
		} else if (!strcmp(k, "uplinks")) {
			arr = cfg->uplinks;
			nerr += parse_seq(ld, &uplink_tab, vn, &arr, &cfg->n_uplinks,
					  sizeof(struct cfg_uplink), offsetof(struct cfg_uplink, o),
					  uplink_init);
			cfg->uplinks = arr;
		} else if (!strcmp(k, "buses")) {
			nerr += parse_buses(ld, vn);
		} else if (!strcmp(k, "devices")) {
			arr = cfg->devices;
			nerr += parse_seq(ld, &device_tab, vn, &arr, &cfg->n_devices,
					  sizeof(struct cfg_device), offsetof(struct cfg_device, o),
					  device_init);
			cfg->devices = arr;
		} else {
			const char *hint = key_suggest(&top_tab, k);
			if (hint)
				err_node(ld, kn,
					 "unknown key '%s' at the top level (did you mean '%s'?)",
					 k, hint);
			else
				err_node(ld, kn, "unknown key '%s' at the top level", k);
			nerr++;
		}
	}
	/* Includes are read after this file's own keys, in glob order, so
	 * devices keep the order an installer reads them in. */
	if (include)
		nerr += handle_include(ld, include);
	return nerr;
}

static int load_text(struct cfg_loader *ld, const char *path, const char *text, size_t len)
{
	struct fy_document *doc;
	const char *saved_file = ld->file, *saved_dir = ld->base_dir;
	char *dir;
	int nerr;

	ld->file = intern_file(ld, path);
	hash_update(&ld->cfg->hash, text, len);
	doc = parse_yaml(ld, ld->file, text, len);
	if (!doc) {
		ld->file = saved_file;
		return 1;
	}
	dir = dir_of(path);
	ld->base_dir = dir;
	ld->depth++;
	nerr = parse_top(ld, fy_document_root(doc));
	ld->depth--;
	ld->base_dir = saved_dir;
	ld->file = saved_file;
	free(dir);
	fy_document_destroy(doc);
	return nerr;
}

static int load_file(struct cfg_loader *ld, const char *path, int line_of_ref, const char *ref_file)
{
	char *text;
	size_t len;
	int err, nerr;

	for (size_t i = 0; i < ld->cfg->files.n; i++) {
		if (strcmp(ld->cfg->files.v[i], path) == 0) {
			err_at(ld, ref_file, line_of_ref,
			       "include: %s is read twice (an include loop?)", path);
			return 1;
		}
	}
	if (ld->depth >= MAX_INCLUDE_DEPTH) {
		err_at(ld, ref_file, line_of_ref, "include: nested deeper than %d files",
		       MAX_INCLUDE_DEPTH);
		return 1;
	}
	if (read_file_text(path, &text, &len, &err) < 0) {
		if (ref_file)
			err_at(ld, ref_file, line_of_ref, "include: %s: %s", path, strerror(err));
		else
			err_at(ld, path, 0, "cannot read: %s", strerror(err));
		ld->yaml_failed = true; /* nothing more to say about a file we cannot read */
		return 1;
	}
	nerr = load_text(ld, path, text, len);
	free(text);
	return nerr;
}

/* ---- profiles ------------------------------------------------------------------- */

/* The shipped profiles: beside the binary, so that an install under any
 * PREFIX finds its own (PREFIX/sbin/cgwd -> PREFIX/share/cgw/profiles), and
 * a build tree finds the sources' (build/cgwd -> config/profiles). */
static char *shipped_profiles_dir(void)
{
	static const char *const rel[] = {"../share/cgw/profiles", "../config/profiles"};
	char exe[PATH_MAX];
	const char *env = getenv("CGW_PROFILES_DIR");
	ssize_t n;

	if (env && *env)
		return strdup(env);
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		char *slash;
		exe[n] = '\0';
		slash = strrchr(exe, '/');
		if (slash) {
			*slash = '\0';
			for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
				char *p, *real;
				if (asprintf(&p, "%s/%s", exe, rel[i]) < 0)
					continue;
				real = realpath(p, NULL); /* NULL if it does not exist */
				free(p);
				if (real)
					return real;
			}
		}
	}
	return strdup(CGW_DATADIR "/profiles");
}

/* Names that go into topics, message ids and file names: the wire module's
 * rule. */
static bool valid_name(const char *s)
{
	return wire_id_valid(s);
}

/* The closest profile name on disk, for "did you mean". */
static char *suggest_profile(const struct cgw_config *cfg, const char *shipped, const char *name)
{
	char *best = NULL;
	size_t bestd = 4;

	for (size_t i = 0; i <= cfg->profile_dirs.n; i++) {
		const char *dir = i < cfg->profile_dirs.n ? cfg->profile_dirs.v[i] : shipped;
		char *pattern;
		glob_t g;

		if (asprintf(&pattern, "%s/*.yaml", dir) < 0)
			continue;
		if (glob(pattern, 0, NULL, &g) == 0) {
			for (size_t j = 0; j < g.gl_pathc; j++) {
				const char *b = strrchr(g.gl_pathv[j], '/');
				char *n = strdup(b ? b + 1 : g.gl_pathv[j]);
				if (!n)
					continue;
				n[strlen(n) - 5] = '\0';
				size_t d = edit_distance(name, n);
				if (d < bestd) {
					bestd = d;
					free(best);
					best = n;
				} else {
					free(n);
				}
			}
			globfree(&g);
		}
		free(pattern);
	}
	return best;
}

/* An equals/not_equals text as a value of the point's kind. */
static int resolve_operand(struct cfg_loader *ld, const char *file, int line, const char *alarm,
			   const struct cfg_point *pt, const char *t, struct cgw_value *out)
{
	if (pt->n_enums) {
		bool okv = false;
		for (size_t j = 0; j < pt->n_enums; j++)
			okv |= strcmp(pt->enums[j].label, t) == 0;
		out->type = CGW_V_STRING;
		out->s = strdup(t);
		if (!okv) {
			char list[512];
			size_t len = 0;
			for (size_t j = 0; j < pt->n_enums && len < sizeof(list); j++)
				len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s",
							j ? ", " : "", pt->enums[j].label);
			err_at(ld, file, line, "alarm '%s': '%s' is not a value of point '%s' (%s)",
			       alarm, t, pt->name, list);
			return 1;
		}
		return 0;
	}
	if (pt->type == CGW_T_BOOL) {
		bool b = false;
		out->type = CGW_V_BOOL;
		if (parse_bool(t, &b) < 0) {
			err_at(ld, file, line,
			       "alarm '%s': point '%s' is bool; compare with true or false", alarm,
			       pt->name);
			return 1;
		}
		out->b = b;
		return 0;
	}
	if (pt->type == CGW_T_STRING) {
		out->type = CGW_V_STRING;
		out->s = strdup(t);
		return 0;
	}
	double d = 0;
	out->type = CGW_V_DOUBLE;
	if (parse_double(t, &d) < 0) {
		err_at(ld, file, line, "alarm '%s': point '%s' is numeric; '%s' is not a number",
		       alarm, pt->name, t);
		return 1;
	}
	out->d = d;
	return 0;
}

/* Resolve equals/not_equals operands against the point, and check each rule
 * form fits its point. */
/* invalid:/range: make sense for numbers only; an `invalid:` raw value is
 * turned into what the point decodes it to (0xFFFF on an int16 is -1; -1 on
 * a uint16 is 65535; then scale and offset), so the core compares values. */
static int check_validity(struct cfg_loader *ld, struct cfg_point *pt)
{
	const struct cfg_obj *o = &pt->o;
	bool numeric = pt->type != CGW_T_BOOL && pt->type != CGW_T_STRING && pt->bit < 0;
	int nerr = 0;

	if (!numeric && (pt->n_invalid || pt->has_range)) {
		err_at(ld, o->file, key_line(&point_tab, o, pt->n_invalid ? "invalid" : "range"),
		       "point '%s': %s is for numeric points", pt->name,
		       pt->n_invalid ? "invalid" : "range");
		return 1;
	}
	for (size_t i = 0; i < pt->n_invalid && !pt->mqtt; i++) {
		double v = pt->invalid[i];
		int bits = 0;
		bool sig = false, integer = true;
		switch (pt->type) {
		case CGW_T_INT16:
			bits = 16, sig = true;
			break;
		case CGW_T_UINT16:
		case CGW_T_BITS:
			bits = 16;
			break;
		case CGW_T_INT32:
			bits = 32, sig = true;
			break;
		case CGW_T_UINT32:
			bits = 32;
			break;
		case CGW_T_INT64:
			bits = 64, sig = true;
			break;
		case CGW_T_UINT64:
			bits = 64;
			break;
		default:
			integer = false;
			break;
		}
		if (integer && v != floor(v)) {
			err_at(ld, o->file, key_line(&point_tab, o, "invalid"),
			       "point '%s': invalid: %g is not a raw %s value", pt->name, v,
			       mbd_type_name(pt->type));
			nerr++;
			continue;
		}
		if (integer && bits < 64) {
			double span = ldexp(1, bits), half = ldexp(1, bits - 1);
			if (sig && v >= half && v < span)
				v -= span; /* the register's bit pattern, as the signed value */
			else if (!sig && v < 0 && v >= -half)
				v += span;
			if (v < (sig ? -half : 0) || v >= (sig ? half : span)) {
				err_at(ld, o->file, key_line(&point_tab, o, "invalid"),
				       "point '%s': invalid: %g does not fit the type %s", pt->name,
				       pt->invalid[i], mbd_type_name(pt->type));
				nerr++;
				continue;
			}
		}
		if (pt->scale != 1.0 || pt->offset != 0.0)
			v = v * pt->scale + pt->offset;
		pt->invalid[i] = v;
	}
	return nerr;
}

int cfg_point_check_value(const struct cfg_point *pt, const struct cgw_value *v)
{
	double x;

	if (!pt->n_invalid && !pt->has_range)
		return CFG_VALUE_OK;
	switch (v->type) {
	case CGW_V_INT:
		x = (double)v->i;
		break;
	case CGW_V_UINT:
		x = (double)v->u;
		break;
	case CGW_V_DOUBLE:
		x = v->d;
		break;
	default:
		return CFG_VALUE_OK;
	}
	for (size_t i = 0; i < pt->n_invalid; i++)
		if (fabs(x - pt->invalid[i]) <= 1e-9 * fmax(1.0, fabs(pt->invalid[i])))
			return CFG_VALUE_INVALID;
	if (pt->has_range && (x < pt->range_min || x > pt->range_max))
		return CFG_VALUE_OUT_OF_RANGE;
	return CFG_VALUE_OK;
}

static unsigned point_regs(const struct cfg_point *pt)
{
	struct mb_format f = {.type = pt->type, .order = pt->order, .str_len = pt->str_len};

	if (pt->table < CGW_TBL_INPUT)
		return 1;
	return mbd_reg_count(&f);
}

/* Two points of one profile reading the same registers as different things
 * is usually a map typed wrong (a float32 at 10 and a uint16 at 11). Bit
 * points of one register (a status word) are the exception. A warning: some
 * devices do mirror a value in two forms. */
static void check_overlaps(struct cfg_loader *ld, const struct cfg_profile *pr)
{
	for (size_t i = 0; i < pr->n_points; i++) {
		const struct cfg_point *a = &pr->points[i];
		if (a->mqtt || !a->name || a->table < 0 || a->address < 0 || a->type < 0)
			continue;
		for (size_t j = 0; j < i; j++) {
			const struct cfg_point *b = &pr->points[j];
			if (b->mqtt || !b->name || b->table != a->table || b->address < 0 ||
			    b->type < 0)
				continue;
			int64_t ae = a->address + point_regs(a), be = b->address + point_regs(b);
			if (a->address >= be || b->address >= ae)
				continue;
			bool abit = a->bit >= 0 || a->type == CGW_T_BITS;
			bool bbit = b->bit >= 0 || b->type == CGW_T_BITS;
			if (abit && bbit && a->address == b->address && ae == be)
				continue; /* bits of one word */
			if (a->table < CGW_TBL_INPUT && a->address == b->address &&
			    a->bit != b->bit)
				continue;
			warn_at(ld, a->o.file, key_line(&point_tab, &a->o, "address"),
				"point '%s' (%s %lld..%lld) overlaps point '%s' (%s %lld..%lld, line "
				"%d): the same registers read as two things",
				a->name, tables[a->table], (long long)a->address, (long long)ae - 1,
				b->name, tables[b->table], (long long)b->address, (long long)be - 1,
				b->o.line);
			break;
		}
	}
}

/* Characters (not bytes) from s to end: what an installer counts. */
static size_t utf8_chars(const char *s, const char *end)
{
	size_t n = 0;

	for (; s < end; s++)
		n += ((unsigned char)*s & 0xc0) != 0x80;
	return n;
}

/* The placeholders a message template may use (alarm_format_message()). */
static const char *const template_keys[] = {"name", "device", "alarm", "value", "unit", NULL};

/* Check a message template: balanced braces and known placeholders; a
 * {location.KEY} is checked against the devices later (check_locations()).
 * Any rule key that holds a template is checked with it. */
static int check_template(struct cfg_loader *ld, const char *file, int line, const char *what,
			  const char *tmpl)
{
	int nerr = 0;

	for (const char *p = tmpl; p && *p; p++) {
		if (*p == '}') {
			err_at(ld, file, line, "%s: '}' without a '{' at character %zu of \"%s\"",
			       what, utf8_chars(tmpl, p) + 1, tmpl);
			return nerr + 1;
		}
		if (*p != '{')
			continue;
		const char *q = p + 1 + strcspn(p + 1, "{}");
		if (*q != '}') {
			err_at(ld, file, line, "%s: '{' without a '}' at character %zu of \"%s\"",
			       what, utf8_chars(tmpl, p) + 1, tmpl);
			return nerr + 1;
		}
		size_t kl = (size_t)(q - p - 1);
		char key[72];
		snprintf(key, sizeof(key), "%.*s", (int)(kl < 64 ? kl : 64), p + 1);
		bool known = choice_index(template_keys, key) >= 0 ||
			     (kl > 9 && kl <= 64 && !strncmp(key, "location.", 9));
		if (!known) {
			const char *best = NULL;
			size_t bd = 3;
			for (size_t i = 0; template_keys[i]; i++) {
				size_t dd = edit_distance(key, template_keys[i]);
				if (dd < bd)
					bd = dd, best = template_keys[i];
			}
			if (!best && !strncmp(key, "loc", 3))
				best = "location.KEY";
			err_at(ld, file, line,
			       "%s: unknown placeholder {%s}%s%s%s (known: {name} {device} {alarm} "
			       "{value} {unit} {location.KEY})",
			       what, key, best ? " (did you mean {" : "", best ? best : "",
			       best ? "}?)" : "");
			nerr++;
		}
		p = q;
	}
	return nerr;
}

static int check_profile(struct cfg_loader *ld, struct cfg_profile *pr)
{
	int nerr = 0;
	size_t n_mqtt = 0;

	for (size_t i = 0; i < pr->n_points; i++) {
		struct cfg_point *pt = &pr->points[i];
		const struct cfg_obj *o = &pt->o;
		bool mb = key_given(&point_tab, o, "table") || key_given(&point_tab, o, "address");
		bool mq = key_given(&point_tab, o, "topic") || key_given(&point_tab, o, "json") ||
			  key_given(&point_tab, o, "event") ||
			  key_given(&point_tab, o, "rate_limit");

		if (!pt->name)
			continue;
		for (size_t j = 0; j < i; j++) {
			if (pr->points[j].name && strcmp(pr->points[j].name, pt->name) == 0) {
				err_at(ld, o->file, key_line(&point_tab, o, "name"),
				       "point '%s' is defined twice (first at line %d)", pt->name,
				       pr->points[j].o.line);
				nerr++;
			}
		}
		if (mb && mq) {
			err_at(ld, o->file, o->line,
			       "point '%s': mixes Modbus keys (table, address) with MQTT keys "
			       "(topic, json, event)",
			       pt->name);
			nerr++;
			continue;
		}
		pt->mqtt = !mb;
		if (pt->mqtt) {
			const char *why = NULL;
			n_mqtt++;
			if (pt->type < 0)
				pt->type = CGW_T_NUMBER;
			if (pt->topic && mosquitto_sub_topic_check(pt->topic) != MOSQ_ERR_SUCCESS) {
				err_at(ld, o->file, key_line(&point_tab, o, "topic"),
				       "point '%s': '%s' is not a valid MQTT topic filter",
				       pt->name, pt->topic);
				nerr++;
			}
			if (key_given(&point_tab, o, "poll")) {
				err_at(ld, o->file, key_line(&point_tab, o, "poll"),
				       "point '%s': poll is for Modbus points (MQTT devices send)",
				       pt->name);
				nerr++;
			}
			if (pt->rate_limit_ms > 0 && !pt->event) {
				err_at(ld, o->file, key_line(&point_tab, o, "rate_limit"),
				       "point '%s': rate_limit is for event: true points",
				       pt->name);
				nerr++;
			}
			if (pt->json && *pt->json && jp_path_check(pt->json, &why) < 0) {
				err_at(ld, o->file, key_line(&point_tab, o, "json"),
				       "point '%s': json path '%s': %s", pt->name, pt->json,
				       why ? why : "invalid");
				nerr++;
			}
			if (!pt->topic && !key_given(&point_tab, o, "json")) {
				err_at(ld, o->file, o->line,
				       "point '%s': needs table and address (Modbus) or topic/json (MQTT)",
				       pt->name);
				nerr++;
			}
			continue;
		}
		if (pt->table < 0 || pt->address < 0) {
			err_at(ld, o->file, o->line, "point '%s': missing required key '%s'",
			       pt->name, pt->table < 0 ? "table" : "address");
			nerr++;
			continue;
		}
		if (pt->table == CGW_TBL_COIL || pt->table == CGW_TBL_DISCRETE) {
			if (pt->type >= 0 && pt->type != CGW_T_BOOL) {
				err_at(ld, o->file, key_line(&point_tab, o, "type"),
				       "point '%s': a %s is one bit; its type can only be bool",
				       pt->name, tables[pt->table]);
				nerr++;
			}
			pt->type = CGW_T_BOOL;
		} else if (pt->type < 0) {
			pt->type = pt->bit >= 0 ? CGW_T_UINT16 : CGW_T_UINT16;
		} else if (pt->type == CGW_T_NUMBER || (pt->type == CGW_T_STRING && !pt->str_len)) {
			err_at(ld, o->file, key_line(&point_tab, o, "type"),
			       "point '%s': type %s is for MQTT points; Modbus needs a register type",
			       pt->name, pt->type == CGW_T_NUMBER ? "number" : "string");
			nerr++;
		}
		struct mb_format f = {.type = pt->type,
				      .order = pt->order,
				      .str_len = pt->str_len,
				      .bit = (int)pt->bit,
				      .scale = pt->scale,
				      .offset = pt->offset};
		const char *why = NULL;
		if (pt->type != CGW_T_NUMBER && mbd_check_format(&f, pt->table, &why) < 0) {
			err_at(ld, o->file, o->line, "point '%s': %s", pt->name,
			       why ? why : "invalid");
			nerr++;
		}
		unsigned regs = pt->table >= CGW_TBL_INPUT ? mbd_reg_count(&f) : 1;
		if (pt->address + regs > 65536) {
			err_at(ld, o->file, key_line(&point_tab, o, "address"),
			       "point '%s': address %lld + %u registers runs past 65535", pt->name,
			       (long long)pt->address, regs);
			nerr++;
		}
		if (pt->writable && pt->type == CGW_T_STRING) {
			err_at(ld, o->file, key_line(&point_tab, o, "writable"),
			       "point '%s': string points cannot be written", pt->name);
			nerr++;
		}
		if (pt->writable && pt->table == CGW_TBL_DISCRETE) {
			err_at(ld, o->file, key_line(&point_tab, o, "writable"),
			       "point '%s': discrete inputs are read-only (use a coil)", pt->name);
			nerr++;
		}
		if (pt->writable && pt->table == CGW_TBL_INPUT) {
			err_at(ld, o->file, key_line(&point_tab, o, "writable"),
			       "point '%s': input registers are read-only (use a holding register)",
			       pt->name);
			nerr++;
		}
	}
	pr->mqtt = pr->n_points > 0 && n_mqtt == pr->n_points;
	check_overlaps(ld, pr);
	for (size_t i = 0; i < pr->n_points; i++)
		if (pr->points[i].name && pr->points[i].type >= 0)
			nerr += check_validity(ld, &pr->points[i]);
	if (n_mqtt && n_mqtt != pr->n_points) {
		err_at(ld, pr->o.file, pr->o.line,
		       "profile '%s': mixes Modbus and MQTT points; a device speaks one of them",
		       pr->name ? pr->name : "?");
		nerr++;
	}

	for (size_t i = 0; i < pr->n_alarms; i++) {
		struct cfg_alarm *a = &pr->alarms[i];
		const struct cfg_obj *o = &a->o;
		int forms = key_given(&alarm_tab, o, "above") + key_given(&alarm_tab, o, "below") +
			    key_given(&alarm_tab, o, "equals") +
			    key_given(&alarm_tab, o, "not_equals") +
			    key_given(&alarm_tab, o, "bit");
		const struct cfg_point *pt = NULL;

		if (!a->name || !a->point)
			continue;
		if (a->message && key_given(&alarm_tab, o, "message")) {
			char what[96];
			snprintf(what, sizeof(what), "alarm '%s': message", a->name);
			nerr += check_template(ld, o->file, key_line(&alarm_tab, o, "message"),
					       what, a->message);
		}
		if (!strcmp(a->name, "offline")) {
			err_at(ld, o->file, key_line(&alarm_tab, o, "name"),
			       "alarm 'offline' is implicit on every device; choose another name");
			nerr++;
		}
		for (size_t j = 0; j < i; j++) {
			if (pr->alarms[j].name && strcmp(pr->alarms[j].name, a->name) == 0) {
				err_at(ld, o->file, key_line(&alarm_tab, o, "name"),
				       "alarm '%s' is defined twice (first at line %d)", a->name,
				       pr->alarms[j].o.line);
				nerr++;
			}
		}
		if (forms != 1) {
			err_at(ld, o->file, o->line,
			       "alarm '%s': needs exactly one of above, below, equals, not_equals, bit "
			       "(has %d)",
			       a->name, forms);
			nerr++;
			continue;
		}
		for (size_t j = 0; j < pr->n_points && !pt; j++) {
			if (pr->points[j].name && strcmp(pr->points[j].name, a->point) == 0) {
				pt = &pr->points[j];
				a->point_idx = j;
			}
		}
		if (!pt) {
			err_at(ld, o->file, key_line(&alarm_tab, o, "point"),
			       "alarm '%s': no point named '%s' in this profile", a->name,
			       a->point);
			nerr++;
			continue;
		}
		if (a->poll_ms > 0 && pt->mqtt) {
			err_at(ld, o->file, key_line(&alarm_tab, o, "poll"),
			       "alarm '%s': poll is for rules on Modbus points", a->name);
			nerr++;
		} else if (a->poll_ms > 0 && (pt->poll_ms <= 0 || a->poll_ms < pt->poll_ms)) {
			pr->points[a->point_idx].poll_ms = a->poll_ms; /* the fastest reader wins */
		}
		if ((a->op == CFG_OP_ABOVE || a->op == CFG_OP_BELOW) &&
		    (pt->type == CGW_T_BOOL || pt->type == CGW_T_STRING || pt->n_enums)) {
			err_at(ld, o->file, o->line,
			       "alarm '%s': above/below need a numeric point; '%s' is %s", a->name,
			       pt->name, pt->n_enums ? "an enum" : "not a number");
			nerr++;
		}
		if (a->op == CFG_OP_EQUALS || a->op == CFG_OP_NOT_EQUALS)
			nerr += resolve_operand(ld, o->file,
						key_line(&alarm_tab, o,
							 a->op == CFG_OP_EQUALS ? "equals" :
										  "not_equals"),
						a->name, pt, a->operand_text, &a->operand);
		for (size_t u = 0; u < a->n_unless; u++) {
			struct cfg_unless *un = &a->unless[u];
			const struct cfg_point *up = NULL;
			if (!un->point || !un->operand_text)
				continue;
			for (size_t j = 0; j < pr->n_points && !up; j++) {
				if (pr->points[j].name && !strcmp(pr->points[j].name, un->point)) {
					up = &pr->points[j];
					un->point_idx = j;
				}
			}
			if (!up) {
				err_at(ld, un->o.file, key_line(&unless_tab, &un->o, "point"),
				       "alarm '%s': unless: no point named '%s' in this profile",
				       a->name, un->point);
				nerr++;
				continue;
			}
			nerr += resolve_operand(ld, un->o.file,
						key_line(&unless_tab, &un->o, "equals"), a->name,
						up, un->operand_text, &un->operand);
		}
		if (a->op == CFG_OP_BIT &&
		    (pt->type == CGW_T_BOOL || pt->type == CGW_T_STRING ||
		     pt->type == CGW_T_FLOAT32 || pt->type == CGW_T_FLOAT64)) {
			err_at(ld, o->file, key_line(&alarm_tab, o, "bit"),
			       "alarm '%s': bit needs an integer point", a->name);
			nerr++;
		}
	}
	return nerr;
}

static long find_profile(struct cgw_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_profiles; i++)
		if (strcmp(cfg->profiles[i].name, name) == 0)
			return (long)i;
	return -1;
}

/* Find and load profile `name`; -1 when not found (error reported). */
static long load_profile(struct cfg_loader *ld, const char *name, const char *ref_file,
			 int ref_line)
{
	struct cgw_config *cfg = ld->cfg;
	char *path = NULL, *text = NULL, *shipped;
	size_t len;
	int err;
	long idx = find_profile(cfg, name);

	if (idx >= 0)
		return idx;
	if (!valid_name(name)) {
		err_at(ld, ref_file, ref_line, "profile '%s': not a valid profile name", name);
		return -1;
	}
	shipped = shipped_profiles_dir();
	for (size_t i = 0; i <= cfg->profile_dirs.n && !path; i++) {
		const char *dir = i < cfg->profile_dirs.n ? cfg->profile_dirs.v[i] : shipped;
		char *p;
		if (asprintf(&p, "%s/%s.yaml", dir, name) < 0)
			break;
		if (access(p, F_OK) == 0)
			path = p;
		else
			free(p);
	}
	if (!path) {
		char *hint = suggest_profile(cfg, shipped, name);
		err_at(ld, ref_file, ref_line, "unknown profile '%s' (looked in %s%s)%s%s%s", name,
		       cfg->profile_dirs.n ? "profile_dirs and " : "", shipped,
		       hint ? "; did you mean '" : "", hint ? hint : "", hint ? "'?" : "");
		free(hint);
		free(shipped);
		return -1;
	}
	free(shipped);
	if (read_file_text(path, &text, &len, &err) < 0) {
		err_at(ld, ref_file, ref_line, "profile '%s': %s: %s", name, path, strerror(err));
		free(path);
		return -1;
	}

	struct cfg_profile *np = realloc(cfg->profiles, (cfg->n_profiles + 1) * sizeof(*np));
	if (!np) {
		free(path);
		free(text);
		return -1;
	}
	cfg->profiles = np;
	struct cfg_profile *pr = &cfg->profiles[cfg->n_profiles++];
	memset(pr, 0, sizeof(*pr));
	pr->path = path;

	const char *saved = ld->file;
	ld->file = intern_file(ld, path);
	hash_update(&cfg->hash, text, len);
	struct fy_document *doc = parse_yaml(ld, ld->file, text, len);
	int nerr = 1;
	if (doc) {
		nerr = parse_map(ld, &profile_tab, fy_document_root(doc), pr, &pr->o);
		fy_document_destroy(doc);
	}
	if (!pr->name)
		pr->name = strdup(name);
	else if (strcmp(pr->name, name) != 0) {
		err_at(ld, ld->file, key_line(&profile_tab, &pr->o, "profile"),
		       "profile: '%s' does not match the file name (%s.yaml)", pr->name, name);
		free(pr->name);
		pr->name = strdup(name);
		nerr++;
	}
	nerr += check_profile(ld, pr);
	ld->file = saved;
	free(text);
	return (long)(cfg->n_profiles - 1);
}

/* ---- cross checks ----------------------------------------------------------------- */

static int check_file(struct cfg_loader *ld, const char *file, int line, const char *key,
		      char **path, bool secret)
{
	struct stat st;
	char *dir, *abs;
	int fd;

	if (!*path)
		return 0;
	if (secret && secret_is_credential(*path)) {
		char why[512], *cp = secret_path(*path, why, sizeof(why));
		if (!cp && !getenv("CREDENTIALS_DIRECTORY") && strchr(why, '$')) {
			/* checked outside the service: only systemd can tell */
			warn_at(ld, file, line,
				"%s: '%s' not checked: $CREDENTIALS_DIRECTORY is only set for the "
				"service (LoadCredential=)",
				key, *path);
			return 0;
		}
		if (!cp) {
			err_at(ld, file, line, "%s: %s", key, why);
			return 1;
		}
		fd = secret_open(*path, why, sizeof(why));
		if (fd < 0) {
			free(cp);
			err_at(ld, file, line, "%s: %s", key, why);
			return 1;
		}
		close(fd);
		/* from here on a path like any other (libmosquitto, libcurl take paths) */
		free(*path);
		*path = cp;
		return 0;
	}
	dir = dir_of(file);
	abs = resolve_path(dir, *path);
	free(dir);
	if (!abs)
		return 1;
	free(*path);
	*path = abs;
	fd = open(abs, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err_at(ld, file, line, "%s: cannot read %s: %s", key, abs, strerror(errno));
		return 1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		err_at(ld, file, line, "%s: %s is not a regular file", key, abs);
		close(fd);
		return 1;
	}
	close(fd);
	if (secret) {
		char why[768];
		if (secret_check_stat(abs, &st, why, sizeof(why)) < 0) {
			err_at(ld, file, line, "%s: %s", key, why);
			return 1;
		}
	}
	return 0;
}

static int check_files(struct cfg_loader *ld, const struct keytab *t, void *obj, struct cfg_obj *o)
{
	int nerr = 0;

	for (size_t i = 0; i < t->n; i++) {
		const struct cfg_key *k = &t->keys[i];
		if (!(k->flags & (KF_SECRET | KF_FILE)) || !o->key_line[i])
			continue;
		nerr += check_file(ld, o->file, o->key_line[i], k->name,
				   (char **)(void *)((char *)obj + k->off), k->flags & KF_SECRET);
	}
	return nerr;
}

/* Only what cannot be made to point elsewhere: the name "localhost" and
 * addresses, parsed (inet_pton), not prefix-matched: "127.attacker.example"
 * or "127.0.0.1.nip.io" are names a resolver may send anywhere. inet_pton
 * takes only the canonical dotted quad, so "0177.0.0.1" or "127.1" (which
 * the resolver would read as 127.0.0.1) count as remote: the safe side. An
 * IPv4-mapped ::ffff:127.x.y.z is an address on the loopback net too. */
bool cfg_is_loopback(const char *host)
{
	unsigned char a[sizeof(struct in6_addr)];
	char buf[INET6_ADDRSTRLEN + 2];
	size_t n;

	if (!host)
		return false;
	if (!strcasecmp(host, "localhost"))
		return true;
	if (inet_pton(AF_INET, host, a) == 1)
		return a[0] == 127;
	n = strlen(host);
	if (n >= 2 && host[0] == '[' && host[n - 1] == ']') { /* as written in a URL */
		if (n - 2 >= sizeof(buf))
			return false;
		memcpy(buf, host + 1, n - 2);
		buf[n - 2] = '\0';
		host = buf;
	}
	if (inet_pton(AF_INET6, host, a) == 1) {
		static const unsigned char lo6[16] = {[15] = 1};
		static const unsigned char mapped[12] = {[10] = 0xff, [11] = 0xff};
		return !memcmp(a, lo6, 16) || (!memcmp(a, mapped, 12) && a[12] == 127);
	}
	return false;
}

/* scheme://host[:port][/path] -> host, port, tls. */
int cfg_parse_url(const char *url, char **host, int64_t *port, bool *tls, bool *http)
{
	static const struct {
		const char *scheme;
		bool tls, http;
		int port;
	} schemes[] = {{"mqtt", false, false, 1883}, {"tcp", false, false, 1883},
		       {"mqtts", true, false, 8883}, {"ssl", true, false, 8883},
		       {"http", false, true, 80},    {"https", true, true, 443}};
	const char *sep = strstr(url, "://");
	const char *h, *end, *colon;
	size_t i;

	if (!sep)
		return -EINVAL;
	for (i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
		if (strlen(schemes[i].scheme) == (size_t)(sep - url) &&
		    !strncmp(url, schemes[i].scheme, (size_t)(sep - url)))
			break;
	if (i == sizeof(schemes) / sizeof(schemes[0]))
		return -EINVAL;
	*tls = schemes[i].tls;
	*http = schemes[i].http;
	h = sep + 3;
	end = h + strcspn(h, "/?#");
	if (*h == '[') { /* IPv6 literal */
		const char *rb = memchr(h, ']', (size_t)(end - h));
		if (!rb)
			return -EINVAL;
		*host = strndup(h + 1, (size_t)(rb - h - 1));
		colon = rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
	} else {
		colon = memchr(h, ':', (size_t)(end - h));
		*host = strndup(h, (size_t)((colon ? colon : end) - h));
	}
	if (!*host)
		return -ENOMEM;
	if (!**host) {
		free(*host);
		*host = NULL;
		return -EINVAL;
	}
	*port = schemes[i].port;
	if (colon) {
		char pbuf[8];
		size_t pl = (size_t)(end - colon - 1);
		int64_t p;
		if (pl == 0 || pl >= sizeof(pbuf))
			goto bad;
		memcpy(pbuf, colon + 1, pl);
		pbuf[pl] = '\0';
		if (parse_i64(pbuf, &p) < 0 || p < 1 || p > 65535)
			goto bad;
		*port = p;
	}
	return 0;
bad:
	free(*host);
	*host = NULL;
	return -EINVAL;
}

/* "A5 01 ff" or "a501ff" -> bytes. -EINVAL if not hex. */
int cfg_parse_hex(const char *s, uint8_t **out, size_t *len)
{
	size_t n = 0, cap = strlen(s) / 2 + 1;
	uint8_t *b = malloc(cap);
	int hi = -1;

	if (!b)
		return -ENOMEM;
	for (; *s; s++) {
		int v;
		if (*s == ' ' || *s == ':' || *s == '-')
			continue;
		if (*s >= '0' && *s <= '9')
			v = *s - '0';
		else if ((*s | 0x20) >= 'a' && (*s | 0x20) <= 'f')
			v = (*s | 0x20) - 'a' + 10;
		else
			goto bad;
		if (hi < 0) {
			hi = v;
		} else {
			b[n++] = (uint8_t)(hi << 4 | v);
			hi = -1;
		}
	}
	if (hi >= 0 || n == 0)
		goto bad;
	*out = b;
	*len = n;
	return 0;
bad:
	free(b);
	return -EINVAL;
}

/* The keys of another type given to the bus, the type's required key,
 * its own check, and its files. Nothing here asks which type it is. */
static int check_bus(struct cfg_loader *ld, size_t i)
{
	struct cfg_bus *b = &ld->cfg->buses[i];
	const struct cfg_bus_type *kind = b->kind;
	int nerr = 0;

	if (!kind)
		return 0;
	for (size_t j = 0; j < ld->n_strays; j++) {
		if (ld->strays[j].bus != i)
			continue;
		err_at(ld, b->o.file, ld->strays[j].line,
		       "bus '%s': key '%s' does not apply to a %s bus", b->name, ld->strays[j].key,
		       kind->name);
		nerr++;
	}
	if (kind->required && !cfg_bus_given(b, kind->required) &&
	    !(kind->instead && cfg_bus_given(b, kind->instead))) {
		err_at(ld, b->o.file, b->o.line, "bus '%s': missing required key '%s'%s%s%s",
		       b->name, kind->required, kind->instead ? " (or '" : "",
		       kind->instead ? kind->instead : "", kind->instead ? "')" : "");
		nerr++;
	} else if (kind->check) {
		nerr += kind->check(ld, b);
	}
	struct keytab t = kind_tab(kind);
	nerr += check_files(ld, &t, b->opts, &b->opts_o);
	return nerr;
}

/* The console listens on loopback in the clear, anywhere else only with TLS:
 * the configured certificate, or one cgwd makes at its first start in the
 * state directory (console_cert.h). */
static int check_console(struct cfg_loader *ld, const struct cgw_config *cfg)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *cert = cfg->console.tls_cert, *key = cfg->console.tls_key;
	int line = key_line(&console_tab, &cfg->console.o, "listen");

	if (!cfg->console.listen || metrics_parse_listen(cfg->console.listen, &ss, &sl) < 0) {
		err_at(ld, cfg->console.o.file, line,
		       "console: listen '%s' is not ADDRESS:PORT (e.g. 127.0.0.1:8443)",
		       cfg->console.listen ? cfg->console.listen : "");
		return 1;
	}
	if ((cert && *cert) != (key && *key)) {
		err_at(ld, cfg->console.o.file, key_line(&console_tab, &cfg->console.o, "tls_cert"),
		       "console: tls_cert and tls_key go together (or neither: on a LAN address "
		       "cgwd then makes its own at the first start)");
		return 1;
	}
	return 0;
}

static int check_uplink(struct cfg_loader *ld, struct cfg_uplink *u)
{
	const struct cfg_obj *o = &u->o;
	int nerr = 0;
	bool http;

	if (!u->url || u->type < 0)
		return 0;
	if (cfg_parse_url(u->url, &u->host, &u->port, &u->tls, &http) < 0) {
		err_at(ld, o->file, key_line(&uplink_tab, o, "url"),
		       "uplink '%s': url '%s' is not scheme://host[:port] with scheme mqtt, mqtts, "
		       "http or https",
		       u->name, u->url);
		return 1;
	}
	if (http != (u->type == CFG_UPLINK_HTTP)) {
		err_at(ld, o->file, key_line(&uplink_tab, o, "url"),
		       "uplink '%s': type %s needs a %s URL", u->name, uplink_types[u->type],
		       u->type == CFG_UPLINK_HTTP ? "http:// or https://" : "mqtt:// or mqtts://");
		nerr++;
	}
	if (!u->tls && !u->insecure && !cfg_is_loopback(u->host)) {
		err_at(ld, o->file, key_line(&uplink_tab, o, "url"),
		       "uplink '%s': plaintext to %s, which is not this machine; use %s or set "
		       "insecure: true",
		       u->name, u->host, http ? "https://" : "mqtts://");
		nerr++;
	}
	if (!key_given(&uplink_tab, o, "send"))
		u->send_mask = u->type == CFG_UPLINK_HTTP ? 1u << CGW_LANE_ALARM :
							    (1u << CGW_LANE_COUNT) - 1;
	if (u->type == CFG_UPLINK_HTTP) {
		static const char *const mqtt_only[] = {
			"client_id", "username", "password_file", "topic_prefix", "keepalive",
			"protocol",  NULL};
		for (int i = 0; mqtt_only[i]; i++) {
			if (key_given(&uplink_tab, o, mqtt_only[i])) {
				err_at(ld, o->file, key_line(&uplink_tab, o, mqtt_only[i]),
				       "uplink '%s': key '%s' does not apply to an http uplink",
				       u->name, mqtt_only[i]);
				nerr++;
			}
		}
	} else if (key_given(&uplink_tab, o, "hmac_secret_file")) {
		err_at(ld, o->file, key_line(&uplink_tab, o, "hmac_secret_file"),
		       "uplink '%s': key 'hmac_secret_file' does not apply to an mqtt uplink",
		       u->name);
		nerr++;
	}
	if (u->type == CFG_UPLINK_MQTT && u->topic_prefix &&
	    mosquitto_pub_topic_check(u->topic_prefix) != MOSQ_ERR_SUCCESS) {
		err_at(ld, o->file, key_line(&uplink_tab, o, "topic_prefix"),
		       "uplink '%s': topic_prefix '%s': no wildcards (+ #) in a topic prefix",
		       u->name, u->topic_prefix);
		nerr++;
	}
	if (!u->client_id && ld->cfg->gateway.id)
		u->client_id = strdup(ld->cfg->gateway.id);
	nerr += check_files(ld, &uplink_tab, u, &u->o);
	return nerr;
}

static int check_device(struct cfg_loader *ld, struct cfg_device *d)
{
	struct cgw_config *cfg = ld->cfg;
	const struct cfg_obj *o = &d->o;
	int nerr = 0;
	long pidx;
	const struct cfg_bus *b = NULL;

	if (!d->id)
		return 0;
	if (!valid_name(d->id)) {
		err_at(ld, o->file, key_line(&device_tab, o, "id"),
		       "device id '%s': use letters, digits, '-', '_' and '.' only (it goes into "
		       "topics)",
		       d->id);
		nerr++;
	}
	for (size_t i = 0; i < cfg->n_buses; i++) {
		if (d->bus_name && cfg->buses[i].name && !strcmp(cfg->buses[i].name, d->bus_name)) {
			b = &cfg->buses[i];
			d->bus = i;
		}
	}
	if (d->bus_name && !b) {
		err_at(ld, o->file, key_line(&device_tab, o, "bus"),
		       "device '%s': unknown bus '%s'", d->id, d->bus_name);
		nerr++;
	}
	if (!d->profile_name)
		return nerr;
	pidx = load_profile(ld, d->profile_name, o->file, key_line(&device_tab, o, "profile"));
	if (pidx < 0)
		return nerr + 1;
	d->profile = (size_t)pidx;
	if (!b)
		return nerr;
	const struct cfg_profile *pr = &cfg->profiles[pidx];
	if (!b->kind)
		return nerr;
	bool mqtt_bus = b->kind->devices == CFG_DEVICES_MQTT;
	bool rtu_units = b->kind->devices == CFG_DEVICES_RTU;
	if (pr->n_points && pr->mqtt != mqtt_bus) {
		err_at(ld, o->file, key_line(&device_tab, o, "profile"),
		       "device '%s': profile '%s' has %s points but bus '%s' is %s", d->id,
		       pr->name, pr->mqtt ? "MQTT" : "Modbus", b->name, b->kind->name);
		nerr++;
	}
	if (mqtt_bus) {
		static const char *const modbus_only[] = {
			"unit",    "poll",          "timeout",      "retries", "offline_after",
			"max_gap", "max_registers", "address_base", NULL};
		for (int i = 0; modbus_only[i]; i++) {
			if (key_given(&device_tab, o, modbus_only[i])) {
				err_at(ld, o->file, key_line(&device_tab, o, modbus_only[i]),
				       "device '%s': key '%s' does not apply to a device on an mqtt bus",
				       d->id, modbus_only[i]);
				nerr++;
			}
		}
		if (!d->topic) {
			err_at(ld, o->file, o->line,
			       "device '%s': missing required key 'topic' (on an mqtt bus)", d->id);
			nerr++;
		} else if (mosquitto_pub_topic_check(d->topic) != MOSQ_ERR_SUCCESS) {
			err_at(ld, o->file, key_line(&device_tab, o, "topic"),
			       "device '%s': topic '%s': no wildcards or empty levels in a device topic",
			       d->id, d->topic);
			nerr++;
		}
	} else {
		if (key_given(&device_tab, o, "topic") ||
		    key_given(&device_tab, o, "stale_after")) {
			const char *k = key_given(&device_tab, o, "topic") ? "topic" :
									     "stale_after";
			err_at(ld, o->file, key_line(&device_tab, o, k),
			       "device '%s': key '%s' does not apply to a device on a modbus bus",
			       d->id, k);
			nerr++;
		}
		if (rtu_units && !key_given(&device_tab, o, "unit")) {
			err_at(ld, o->file, o->line,
			       "device '%s': missing required key 'unit' (on a %s bus)", d->id,
			       b->kind->name);
			nerr++;
		}
		if (rtu_units && (d->unit == 0 || d->unit > 247)) {
			err_at(ld, o->file, key_line(&device_tab, o, "unit"),
			       "device '%s': unit %lld: RTU unit ids are 1..247 (0 is broadcast)",
			       d->id, (long long)d->unit);
			nerr++;
		} else if (d->unit > 247 && d->unit != 255) {
			err_at(ld, o->file, key_line(&device_tab, o, "unit"),
			       "device '%s': unit %lld: Modbus unit ids are 0..247, or 255 on TCP",
			       d->id, (long long)d->unit);
			nerr++;
		}
		for (size_t i = 0; d->address_base && i < pr->n_points; i++) {
			if (pr->points[i].address == 0) {
				err_at(ld, o->file, key_line(&device_tab, o, "address_base"),
				       "device '%s': address_base is 1 but point '%s' has address 0",
				       d->id, pr->points[i].name);
				nerr++;
			}
		}
	}
	if (b->kind->device_defaults)
		b->kind->device_defaults(b, d);
	return nerr;
}

static int check_unique(struct cfg_loader *ld, const char *what, const struct keytab *t, void *arr,
			size_t n, size_t size, size_t name_off, size_t obj_off, const char *key)
{
	int nerr = 0;

	for (size_t i = 0; i < n; i++) {
		char *oi = (char *)arr + i * size;
		const char *ni = *(char **)(void *)(oi + name_off);
		const struct cfg_obj *o = (const struct cfg_obj *)(void *)(oi + obj_off);
		if (!ni)
			continue;
		for (size_t j = 0; j < i; j++) {
			char *oj = (char *)arr + j * size;
			const char *nj = *(char **)(void *)(oj + name_off);
			const struct cfg_obj *oo = (const struct cfg_obj *)(void *)(oj + obj_off);
			if (nj && !strcmp(ni, nj)) {
				err_at(ld, o->file, key_line(t, o, key),
				       "duplicate %s '%s' (first defined at %s:%d)", what, ni,
				       oo->file, oo->line);
				nerr++;
				break;
			}
		}
	}
	return nerr;
}

/* Where a Modbus bus's frames go: two buses on one serial line or one TCP
 * endpoint share their unit ids. */
static void bus_endpoint(const struct cfg_bus *b, char *buf, size_t cap)
{
	buf[0] = '\0';
	if (b->kind->endpoint)
		b->kind->endpoint(b, buf, cap);
}

/* Devices with unit ids: on a bus of a known type that addresses by unit. */
static bool has_units(const struct cgw_config *cfg, size_t bus)
{
	return bus < cfg->n_buses && cfg->buses[bus].kind &&
	       cfg->buses[bus].kind->devices != CFG_DEVICES_MQTT;
}

/* Two devices answering to one unit id on one line: the classic site
 * mistake (detectors ship at address 1); both would answer, or one never. */
static int check_units(struct cfg_loader *ld)
{
	struct cgw_config *cfg = ld->cfg;
	int nerr = 0;

	for (size_t i = 0; i < cfg->n_devices; i++) {
		const struct cfg_device *d = &cfg->devices[i];
		char ei[300], ej[300];
		if (!has_units(cfg, d->bus))
			continue;
		bus_endpoint(&cfg->buses[d->bus], ei, sizeof(ei));
		for (size_t j = 0; j < i; j++) {
			const struct cfg_device *e = &cfg->devices[j];
			if (!has_units(cfg, e->bus) || e->unit != d->unit)
				continue;
			bus_endpoint(&cfg->buses[e->bus], ej, sizeof(ej));
			if (e->bus != d->bus && (!*ei || strcmp(ei, ej)))
				continue;
			int line = key_line(&device_tab, &d->o, "unit");
			if (e->bus == d->bus)
				err_at(ld, d->o.file, line ? line : d->o.line,
				       "device '%s': unit %lld on bus '%s' is already device '%s' "
				       "(%s:%d); give each device on a line its own unit id",
				       d->id, (long long)d->unit, cfg->buses[d->bus].name, e->id,
				       e->o.file, e->o.line);
			else
				err_at(ld, d->o.file, line ? line : d->o.line,
				       "device '%s': unit %lld on %s (bus '%s') is already device '%s' "
				       "on bus '%s' (%s:%d); buses sharing a line share unit ids",
				       d->id, (long long)d->unit, ei, cfg->buses[d->bus].name,
				       e->id, cfg->buses[e->bus].name, e->o.file, e->o.line);
			nerr++;
			break;
		}
	}
	return nerr;
}

/* {location.KEY} in a template: some device of the profile should have KEY,
 * or the duty room gets an alarm that does not say where: an error when
 * KEY is a near miss of a key the devices have ({location.bulding}), a
 * warning when none has anything like it. */
static int check_locations(struct cfg_loader *ld)
{
	struct cgw_config *cfg = ld->cfg;
	int nerr = 0;

	for (size_t p = 0; p < cfg->n_profiles; p++) {
		const struct cfg_profile *pr = &cfg->profiles[p];
		for (size_t a = 0; a < pr->n_alarms; a++) {
			const struct cfg_alarm *al = &pr->alarms[a];
			const char *m = al->message;
			if (!m || !key_given(&alarm_tab, &al->o, "message"))
				continue;
			while ((m = strstr(m, "{location."))) {
				const char *k = m + 10;
				size_t kl = strcspn(k, "{}");
				bool used = false, found = false;
				const char *best = NULL;
				size_t bd = 3;
				char key[72];

				m = k + kl;
				if (*m != '}' || kl == 0 || kl > 64)
					continue;
				snprintf(key, sizeof(key), "%.*s", (int)kl, k);
				for (size_t i = 0; i < cfg->n_devices && !found; i++) {
					const struct cfg_device *d = &cfg->devices[i];
					if (d->profile != p)
						continue;
					used = true;
					for (size_t j = 0; j < d->n_location; j++) {
						size_t dd = edit_distance(key, d->location[j].key);
						if (dd == 0)
							found = true;
						else if (dd < bd)
							bd = dd, best = d->location[j].key;
					}
				}
				if (!used || found)
					continue;
				if (!best) { /* not a typo: the devices just do not say it */
					warn_at(ld, al->o.file,
						key_line(&alarm_tab, &al->o, "message"),
						"alarm '%s': message: {location.%s}: no device of "
						"profile '%s' has location key '%s'; it renders empty",
						al->name, key, pr->name, key);
					continue;
				}
				err_at(ld, al->o.file, key_line(&alarm_tab, &al->o, "message"),
				       "alarm '%s': message: {location.%s}: no device of profile '%s' "
				       "has location key '%s' (did you mean {location.%s}?)",
				       al->name, key, pr->name, key, best);
				nerr++;
			}
		}
	}
	return nerr;
}

static int check_all(struct cfg_loader *ld)
{
	struct cgw_config *cfg = ld->cfg;
	int nerr = 0;

	if (!ld->seen_gateway && !ld->yaml_failed) {
		err_at(ld, cfg->path, 1,
		       "missing required section 'gateway' (id, site, state_dir)");
		nerr++;
	} else if (cfg->gateway.id && !valid_name(cfg->gateway.id)) {
		err_at(ld, cfg->gateway.o.file, key_line(&gateway_tab, &cfg->gateway.o, "id"),
		       "gateway id '%s': use letters, digits, '-', '_' and '.' only",
		       cfg->gateway.id);
		nerr++;
	}
	if (ld->seen_gateway && cfg->gateway.site && !valid_name(cfg->gateway.site)) {
		err_at(ld, cfg->gateway.o.file, key_line(&gateway_tab, &cfg->gateway.o, "site"),
		       "gateway site '%s': use letters, digits, '-', '_' and '.' only (it goes into "
		       "topics)",
		       cfg->gateway.site);
		nerr++;
	}
	nerr += check_unique(ld, "uplink", &uplink_tab, cfg->uplinks, cfg->n_uplinks,
			     sizeof(struct cfg_uplink), offsetof(struct cfg_uplink, name),
			     offsetof(struct cfg_uplink, o), "name");
	nerr += check_unique(ld, "bus", &bus_tab, cfg->buses, cfg->n_buses, sizeof(struct cfg_bus),
			     offsetof(struct cfg_bus, name), offsetof(struct cfg_bus, o), "name");
	nerr += check_unique(ld, "device id", &device_tab, cfg->devices, cfg->n_devices,
			     sizeof(struct cfg_device), offsetof(struct cfg_device, id),
			     offsetof(struct cfg_device, o), "id");
	for (size_t i = 0; i < cfg->n_uplinks; i++)
		nerr += check_uplink(ld, &cfg->uplinks[i]);
	for (size_t i = 0; i < cfg->n_buses; i++)
		nerr += check_bus(ld, i);
	for (size_t i = 0; i < cfg->n_devices; i++) {
		nerr += check_device(ld, &cfg->devices[i]);
		if (cfg->devices[i].bus < cfg->n_buses)
			cfg->buses[cfg->devices[i].bus].n_devices++;
	}
	nerr += check_units(ld);
	nerr += check_locations(ld);
	if (cfg->metrics.listen && ld->seen_metrics) {
		struct sockaddr_storage ss;
		socklen_t sl;
		if (metrics_parse_listen(cfg->metrics.listen, &ss, &sl) < 0) {
			err_at(ld, cfg->metrics.o.file,
			       key_line(&metrics_tab, &cfg->metrics.o, "listen"),
			       "metrics: listen '%s' is not ADDRESS:PORT (e.g. 127.0.0.1:9273)",
			       cfg->metrics.listen);
			nerr++;
		}
	}
	if (ld->seen_console)
		nerr += check_console(ld, cfg);
	if (cfg->n_uplinks > 32) {
		err_at(ld, cfg->path, 1, "at most 32 uplinks");
		nerr++;
	}
	return nerr;
}

/* ---- public ------------------------------------------------------------------------ */

static int finish(struct cfg_loader *ld, int nerr, struct cgw_config **out)
{
	if (!nerr)
		nerr = check_all(ld);
	else
		check_all(ld); /* still report cross-reference errors */
	free(ld->strays);
	ld->strays = NULL;
	ld->n_strays = 0;
	if (nerr || ld->errs->n) {
		if (!ld->errs->n)
			err_at(ld, ld->cfg->path, 0, "invalid configuration");
		config_free(ld->cfg);
		return -EINVAL;
	}
	*out = ld->cfg;
	return 0;
}

static struct cgw_config *config_new(const char *path)
{
	struct cgw_config *cfg = calloc(1, sizeof(*cfg));

	if (!cfg)
		return NULL;
	cfg->path = strdup(path);
	cfg->hash = 0xcbf29ce484222325ULL;
	return cfg;
}

static void set_section_defaults(struct cfg_loader *ld)
{
	struct cgw_config *cfg = ld->cfg;

	/* Sections that may be left out still get their defaults. */
	if (!ld->seen_store)
		apply_defaults(ld, &store_tab, cfg);
	if (!ld->seen_control)
		apply_defaults(ld, &control_tab, cfg);
	if (!ld->seen_metrics)
		apply_defaults(ld, &metrics_tab, cfg);
	if (!ld->seen_console)
		apply_defaults(ld, &console_tab, cfg);
	if (!cfg->gateway.state_dir)
		cfg->gateway.state_dir = strdup("/var/lib/cgw");
}

int config_load(const char *path, struct cgw_config **out, struct cfg_errors *errs)
{
	struct cfg_loader ld = {.errs = errs};
	int nerr;

	*out = NULL;
	ld.cfg = config_new(path);
	if (!ld.cfg)
		return -ENOMEM;
	nerr = load_file(&ld, path, 0, NULL);
	set_section_defaults(&ld);
	return finish(&ld, nerr, out);
}

int config_load_string(const char *name, const char *text, size_t len, struct cgw_config **out,
		       struct cfg_errors *errs)
{
	struct cfg_loader ld = {.errs = errs};
	int nerr;

	*out = NULL;
	ld.cfg = config_new(name);
	if (!ld.cfg)
		return -ENOMEM;
	nerr = load_text(&ld, name, text, len);
	set_section_defaults(&ld);
	return finish(&ld, nerr, out);
}

static void free_strs(void *obj, const struct keytab *t)
{
	for (size_t i = 0; i < t->n; i++) {
		const struct cfg_key *k = &t->keys[i];
		if (k->type == K_STR)
			free(*(char **)(void *)((char *)obj + k->off));
		else if (k->type == K_STRLIST)
			strlist_free((struct cfg_strlist *)(void *)((char *)obj + k->off));
	}
}

static void profile_free(struct cfg_profile *pr)
{
	for (size_t j = 0; j < pr->n_points; j++) {
		struct cfg_point *pt = &pr->points[j];
		free_strs(pt, &point_tab);
		for (size_t k = 0; k < pt->n_enums; k++)
			free(pt->enums[k].label);
		free(pt->enums);
		free(pt->invalid);
	}
	for (size_t j = 0; j < pr->n_alarms; j++) {
		free_strs(&pr->alarms[j], &alarm_tab);
		free(pr->alarms[j].operand_text);
		cgw_value_clear(&pr->alarms[j].operand);
		for (size_t u = 0; u < pr->alarms[j].n_unless; u++) {
			struct cfg_unless *un = &pr->alarms[j].unless[u];
			free_strs(un, &unless_tab);
			free(un->operand_text);
			cgw_value_clear(&un->operand);
		}
		free(pr->alarms[j].unless);
	}
	free(pr->points);
	free(pr->alarms);
	free(pr->name);
	free(pr->description);
	free(pr->path);
}

void config_free(struct cgw_config *cfg)
{
	if (!cfg)
		return;
	free_strs(cfg, &gateway_tab);
	free_strs(cfg, &store_tab);
	free_strs(cfg, &control_tab);
	free_strs(cfg, &metrics_tab);
	free_strs(cfg, &console_tab);
	strlist_free(&cfg->profile_dirs);
	for (size_t i = 0; i < cfg->n_uplinks; i++) {
		free_strs(&cfg->uplinks[i], &uplink_tab);
		free(cfg->uplinks[i].host);
	}
	for (size_t i = 0; i < cfg->n_buses; i++) {
		struct cfg_bus *b = &cfg->buses[i];
		free_strs(b, &bus_tab);
		if (b->kind && b->opts) {
			struct keytab t = kind_tab(b->kind);
			free_strs(b->opts, &t);
			if (b->kind->free)
				b->kind->free(b->opts);
		}
		free(b->opts);
	}
	for (size_t i = 0; i < cfg->n_devices; i++) {
		struct cfg_device *d = &cfg->devices[i];
		free_strs(d, &device_tab);
		for (size_t j = 0; j < d->n_location; j++) {
			free(d->location[j].key);
			free(d->location[j].value);
		}
		free(d->location);
	}
	for (size_t i = 0; i < cfg->n_profiles; i++)
		profile_free(&cfg->profiles[i]);
	free(cfg->uplinks);
	free(cfg->buses);
	free(cfg->devices);
	free(cfg->profiles);
	strlist_free(&cfg->files);
	strlist_free(&cfg->warnings);
	free(cfg->path);
	free(cfg);
}

const struct cfg_profile *cfg_device_profile(const struct cgw_config *cfg,
					     const struct cfg_device *d)
{
	return &cfg->profiles[d->profile];
}

const char *cfg_device_location(const struct cfg_device *d, const char *key)
{
	for (size_t i = 0; i < d->n_location; i++)
		if (!strcmp(d->location[i].key, key))
			return d->location[i].value;
	return NULL;
}

long cfg_find_device(const struct cgw_config *cfg, const char *id)
{
	for (size_t i = 0; i < cfg->n_devices; i++)
		if (!strcmp(cfg->devices[i].id, id))
			return (long)i;
	return -1;
}

void config_print_summary(const struct cgw_config *cfg, FILE *f)
{
	size_t points = 0, rules = 0;

	for (size_t i = 0; i < cfg->n_devices; i++) {
		const struct cfg_profile *pr = cfg_device_profile(cfg, &cfg->devices[i]);
		points += pr->n_points;
		rules += pr->n_alarms + 1; /* + the implicit offline alarm */
	}
	fprintf(f, "configuration OK: %s (%zu file%s)\n", cfg->path, cfg->files.n,
		cfg->files.n == 1 ? "" : "s");
	fprintf(f, "gateway %s, site %s, store %s\n", cfg->gateway.id, cfg->gateway.site,
		cfg->gateway.state_dir);
	fprintf(f, "buses: %zu\n", cfg->n_buses);
	for (size_t i = 0; i < cfg->n_buses; i++) {
		const struct cfg_bus *b = &cfg->buses[i];
		size_t bp = 0;
		for (size_t j = 0; j < cfg->n_devices; j++)
			if (cfg->devices[j].bus == i)
				bp += cfg_device_profile(cfg, &cfg->devices[j])->n_points;
		const char *where = b->kind->where ? b->kind->where(b) : NULL;
		fprintf(f, "  %-16s %-10s %-24s %zu device%s, %zu points\n", b->name, b->kind->name,
			where ? where : "", b->n_devices, b->n_devices == 1 ? "" : "s", bp);
	}
	fprintf(f, "devices: %zu, points: %zu, alarm rules: %zu (incl. one offline alarm each)\n",
		cfg->n_devices, points, rules);
	fprintf(f, "profiles: %zu\n", cfg->n_profiles);
	for (size_t i = 0; i < cfg->n_profiles; i++)
		fprintf(f, "  %-20s %-8s %zu points, %zu alarms  (%s)\n", cfg->profiles[i].name,
			classes[cfg->profiles[i].class], cfg->profiles[i].n_points,
			cfg->profiles[i].n_alarms, cfg->profiles[i].path);
	fprintf(f, "uplinks: %zu\n", cfg->n_uplinks);
	for (size_t i = 0; i < cfg->n_uplinks; i++) {
		const struct cfg_uplink *u = &cfg->uplinks[i];
		char lanes[64] = "";
		for (int l = 0; l < CGW_LANE_COUNT; l++)
			if (u->send_mask & (1u << l))
				snprintf(lanes + strlen(lanes), sizeof(lanes) - strlen(lanes),
					 "%s%s", *lanes ? "," : "", cgw_lane_name(l));
		fprintf(f, "  %-16s %-5s %s  send: %s%s\n", u->name, uplink_types[u->type], u->url,
			lanes, u->insecure ? "  (insecure)" : "");
	}
}

static void print_key(FILE *f, const struct cfg_key *k, const char *choices, const char *applies)
{
	const char *ty = choices ? choices : ktype_name(k->type);
	char buf[256];

	if (k->type == K_CHOICE) {
		choices_join(k->choices, buf, sizeof(buf));
		ty = buf;
	}
	fprintf(f, "  %-20s %s%s%s%s\n      %s%s%s\n", k->name, ty,
		(k->flags & KF_REQUIRED) ? "; required" : "", k->def ? "; default: " : "",
		k->def ? (*k->def ? k->def : "\"\"") : "", applies ? applies : "",
		applies ? ": " : "", k->help);
}

static void print_tab(FILE *f, const struct keytab *t)
{
	fprintf(f, "%s:\n", t->what);
	for (size_t i = 0; i < t->n; i++)
		print_key(f, &t->keys[i], NULL, NULL);
}

/* The bus's own keys, then every type's, once each, with the types it
 * applies to (from the registry: a new type documents itself). */
static void print_bus_tab(FILE *f)
{
	char list[256];

	types_join(list, sizeof(list));
	fprintf(f, "%s:\n", bus_tab.what);
	for (size_t i = 0; i < bus_tab.n; i++)
		print_key(f, &bus_keys[i], strcmp(bus_keys[i].name, "type") ? NULL : list, NULL);
	for (size_t i = 0; cfg_bus_types[i]; i++)
		fprintf(f, "        %s: %s\n", cfg_bus_types[i]->name, cfg_bus_types[i]->help);
	for (size_t i = 0; cfg_bus_types[i]; i++) {
		const struct cfg_bus_type *kind = cfg_bus_types[i];
		for (size_t j = 0; j < kind->n_keys; j++) {
			const struct cfg_key *k = &kind->keys[j];
			char applies[256] = "";
			size_t len = 0, idx;
			bool seen = false;
			for (size_t m = 0; m < i && !seen; m++) {
				struct keytab t = kind_tab(cfg_bus_types[m]);
				seen = key_find(&t, k->name, &idx) != NULL;
			}
			if (seen)
				continue;
			for (size_t m = i; cfg_bus_types[m] && len < sizeof(applies); m++) {
				struct keytab t = kind_tab(cfg_bus_types[m]);
				if (key_find(&t, k->name, &idx))
					len += (size_t)snprintf(applies + len,
								sizeof(applies) - len, "%s%s",
								len ? ", " : "",
								cfg_bus_types[m]->name);
			}
			print_key(f, k, NULL, applies);
		}
	}
}

void config_print_reference(FILE *f)
{
	const struct keytab *tabs[] = {&top_tab,     &gateway_tab, &store_tab,  &control_tab,
				       &metrics_tab, &console_tab, &uplink_tab, &bus_tab,
				       &device_tab,  &profile_tab, &point_tab,  &alarm_tab,
				       &unless_tab};
	for (size_t i = 0; i < sizeof(tabs) / sizeof(tabs[0]); i++) {
		if (tabs[i] == &bus_tab)
			print_bus_tab(f);
		else
			print_tab(f, tabs[i]);
		fputc('\n', f);
	}
}
