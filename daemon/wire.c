/*
 * wire.c - every topic and payload cgwd sends; see wire.h and
 * docs/protocol.md. JSON is built with jansson, except the telemetry
 * message, the one rendered for every reading: it is written as text by the
 * small writer below, whose output tests/unit/test_wire.c and a fuzz target
 * compare with jansson's for the same values, byte for byte.
 */
#include "wire.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alarm.h"

#define DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

void wire_msg_clear(struct wire_msg *m)
{
	if (!m)
		return;
	free(m->payload);
	m->payload = NULL;
}

bool wire_id_valid(const char *s)
{
	size_t n;

	if (!s || !*s || (n = strlen(s)) > WIRE_ID_MAX)
		return false;
	if (!strcmp(s, ".") || !strcmp(s, ".."))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
			return false;
	return true;
}

json_t *wire_str(const char *s)
{
	json_t *j;
	char *c;

	if (!s)
		return json_null();
	j = json_string(s);
	if (j)
		return j;
	c = strdup(s);
	if (!c)
		return NULL;
	for (unsigned char *p = (unsigned char *)c; *p; p++)
		if (*p >= 0x80)
			*p = '?';
	j = json_string(c);
	free(c);
	return j;
}

json_t *wire_value_json(const struct cfg_point *pt, const struct cgw_value *v)
{
	const char *label;
	char num[48];

	if (!v)
		return json_null();
	if (pt && pt->n_enums && (label = alarm_enum_label(pt, v)) != NULL)
		return wire_str(label);
	switch (v->type) {
	case CGW_V_BOOL:
		return json_boolean(v->b);
	case CGW_V_INT:
		return json_integer((json_int_t)v->i);
	case CGW_V_UINT:
		/* jansson integers are int64: above that a number, never a
		 * negative one */
		return v->u <= INT64_MAX ? json_integer((json_int_t)v->u) : json_real((double)v->u);
	case CGW_V_DOUBLE:
		if (!isfinite(v->d))
			return json_null();
		/* the same digits as the alarm message: 57.3, not 57.300000000000004 */
		alarm_format_value(pt, v, num, sizeof(num));
		double d = strtod(num, NULL);
		/* within an ulp of DBL_MAX 15 digits round past it: no number */
		return isfinite(d) ? json_real(d) : json_null();
	case CGW_V_STRING:
		return wire_str(v->s);
	default:
		return json_null();
	}
}

/* ---- the telemetry writer ------------------------------------------------ */

static int topic(struct wire_msg *out, const char *fmt, const char *id);

/* A growing text buffer; `oom` once an allocation failed (then the text is
 * dropped as a whole). */
struct tbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void tb_need(struct tbuf *b, size_t more)
{
	if (b->oom || b->len + more + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + more + 1)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p) {
		b->oom = true;
		return;
	}
	b->p = p;
	b->cap = cap;
}

static void tb_put(struct tbuf *b, const char *s, size_t n)
{
	tb_need(b, n);
	if (b->oom)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void tb_str(struct tbuf *b, const char *s)
{
	tb_put(b, s, strlen(s));
}

/* Whether s is UTF-8 as jansson accepts it (no overlong forms, no
 * surrogates, nothing above U+10FFFF). */
static bool utf8_ok(const unsigned char *s)
{
	while (*s) {
		unsigned c = *s++, n, cp;
		if (c < 0x80)
			continue;
		if (c >= 0xC2 && c <= 0xDF) {
			n = 1;
			cp = c & 0x1F;
		} else if (c >= 0xE0 && c <= 0xEF) {
			n = 2;
			cp = c & 0x0F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		for (unsigned i = 0; i < n; i++, s++) {
			if ((*s & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (*s & 0x3F);
		}
		if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
	}
	return true;
}

/* A JSON string, escaped as jansson's dump escapes it; bytes that are not
 * UTF-8 as '?' (wire_str()). Returns the length written or needed. */
static size_t json_string_text(const char *s, char *out, size_t size)
{
	bool ok = utf8_ok((const unsigned char *)s);
	size_t len = 0;

#define PUT(ch)                          \
	do {                             \
		if (len + 1 < size)      \
			out[len] = (ch); \
		len++;                   \
	} while (0)
	PUT('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		unsigned c = *p;
		const char *esc = NULL;
		char u[8];
		switch (c) {
		case '"':
			esc = "\\\"";
			break;
		case '\\':
			esc = "\\\\";
			break;
		case '\b':
			esc = "\\b";
			break;
		case '\f':
			esc = "\\f";
			break;
		case '\n':
			esc = "\\n";
			break;
		case '\r':
			esc = "\\r";
			break;
		case '\t':
			esc = "\\t";
			break;
		default:
			if (c < 0x20) {
				snprintf(u, sizeof(u), "\\u%04X", c);
				esc = u;
			} else if (c >= 0x80 && !ok) {
				c = '?';
			}
		}
		if (esc)
			for (; *esc; esc++)
				PUT(*esc);
		else
			PUT((char)c);
	}
	PUT('"');
#undef PUT
	if (size)
		out[len < size ? len : size - 1] = '\0';
	return len;
}

/* A number as jansson dumps a real with JSON_REAL_PRECISION(15), from the
 * digits %g gave: ".0" when they look like an integer, the exponent without
 * '+' and leading zeros (1e+15 -> 1e15, 1e-05 -> 1e-5). */
static size_t real_text(const char *digits, char *buf, size_t size)
{
	char t[64];
	size_t n = strlen(digits);
	char *e;

	if (n >= sizeof(t) - 2)
		n = sizeof(t) - 3;
	memcpy(t, digits, n);
	t[n] = '\0';
	e = strchr(t, 'e');
	if (!e && !strchr(t, '.')) {
		if (n + 2 < sizeof(t)) {
			memcpy(t + n, ".0", 3);
			n += 2;
		}
	} else if (e) {
		char *start = e + 1, *end = e + 2;
		if (*start == '-')
			start++;
		while (*end == '0')
			end++;
		if (end != start) {
			memmove(start, end, n - (size_t)(end - t) + 1);
			n -= (size_t)(end - start);
		}
	}
	if (size) {
		size_t c = n < size ? n : size - 1;
		memcpy(buf, t, c);
		buf[c] = '\0';
	}
	return n;
}

/* An integer in decimal (as "%lld" / "%llu", without printf). */
static size_t int_text(bool neg, uint64_t mag, char *buf, size_t size)
{
	char t[24];
	size_t n;

	t[0] = '-';
	n = cgw_u64_text(mag, t + neg) + neg;
	if (size) {
		size_t c = n < size ? n : size - 1;
		memcpy(buf, t, c);
		buf[c] = '\0';
	}
	return n;
}

size_t wire_value_text(const struct cfg_point *pt, const struct cgw_value *v, char *buf,
		       size_t size)
{
	const char *label;
	char num[48];

	if (!v)
		return (size_t)snprintf(buf, size, "null");
	if (pt && pt->n_enums && (label = alarm_enum_label(pt, v)) != NULL)
		return json_string_text(label, buf, size);
	switch (v->type) {
	case CGW_V_BOOL:
		return (size_t)snprintf(buf, size, "%s", v->b ? "true" : "false");
	case CGW_V_INT:
		return int_text(v->i < 0, v->i < 0 ? 0 - (uint64_t)v->i : (uint64_t)v->i, buf,
				size);
	case CGW_V_UINT:
		if (v->u <= INT64_MAX)
			return int_text(false, v->u, buf, size);
		snprintf(num, sizeof(num), "%.15g", (double)v->u);
		return real_text(num, buf, size);
	case CGW_V_DOUBLE:
		if (!isfinite(v->d))
			return (size_t)snprintf(buf, size, "null");
		/* the digits wire_value_json() reads back: at most 15, so
		 * jansson's %.15g of them gives them again */
		alarm_format_value(pt, v, num, sizeof(num));
		if (fabs(v->d) >= 1e308 && !isfinite(strtod(num, NULL)))
			return (size_t)snprintf(buf, size, "null"); /* as wire_value_json() */
		return real_text(num, buf, size);
	case CGW_V_STRING:
		return json_string_text(v->s, buf, size);
	default:
		return (size_t)snprintf(buf, size, "null");
	}
}

/* Appends s as a JSON string: written into the room there is, and only
 * when it did not fit written again after the buffer grew. */
static void tb_jstr(struct tbuf *b, const char *s)
{
	size_t room = b->oom ? 0 : b->cap - b->len;
	size_t len = json_string_text(s, room ? b->p + b->len : NULL, room);

	if (len >= room) {
		tb_need(b, len);
		if (b->oom)
			return;
		json_string_text(s, b->p + b->len, len + 1);
	}
	b->len += len;
}

int wire_telemetry(const struct cfg_device *d, int64_t ts_ms, const struct wire_field *f, size_t n,
		   struct wire_msg *out)
{
	struct tbuf b = {0};
	char num[32];
	bool any_bad = false;

	memset(out, 0, sizeof(*out));
	if (!d || topic(out, "device/%s/telemetry", d->id) < 0)
		return -EINVAL;
	tb_str(&b, "{\"ts\":");
	tb_put(&b, num,
	       int_text(ts_ms < 0, ts_ms < 0 ? 0 - (uint64_t)ts_ms : (uint64_t)ts_ms, num,
			sizeof(num)));
	tb_str(&b, ",\"device\":");
	tb_jstr(&b, d->id);
	tb_str(&b, ",\"values\":{");
	for (size_t i = 0; i < n; i++) {
		if (i)
			tb_put(&b, ",", 1);
		tb_jstr(&b, f[i].name);
		tb_put(&b, ":", 1);
		tb_str(&b, f[i].json ? f[i].json : "null");
		any_bad = any_bad || f[i].quality;
	}
	tb_put(&b, "}", 1);
	if (any_bad) {
		bool first = true;
		tb_str(&b, ",\"quality\":{");
		for (size_t i = 0; i < n; i++) {
			if (!f[i].quality)
				continue;
			if (!first)
				tb_put(&b, ",", 1);
			first = false;
			tb_jstr(&b, f[i].name);
			tb_put(&b, ":", 1);
			tb_jstr(&b, f[i].quality);
		}
		tb_put(&b, "}", 1);
	}
	tb_put(&b, "}", 1);
	if (b.oom) {
		free(b.p);
		return -ENOMEM;
	}
	out->lane = CGW_LANE_TELEMETRY;
	out->device = d->id;
	out->ts_ms = ts_ms;
	out->payload = b.p;
	return 0;
}

static json_t *location_json(const struct cfg_device *d)
{
	json_t *loc = json_object();
	for (size_t i = 0; loc && i < d->n_location; i++)
		json_object_set_new(loc, d->location[i].key, wire_str(d->location[i].value));
	return loc;
}

/* Dumps obj (consumed) into out. */
static int finish(struct wire_msg *out, enum cgw_lane lane, const char *device, int64_t ts_ms,
		  json_t *obj)
{
	out->lane = lane;
	out->device = device;
	out->ts_ms = ts_ms;
	out->payload = obj ? json_dumps(obj, DUMP_FLAGS) : NULL;
	json_decref(obj);
	return out->payload ? 0 : -ENOMEM;
}

static int topic(struct wire_msg *out, const char *fmt, const char *id)
{
	int n = snprintf(out->topic, sizeof(out->topic), fmt, id);
	return n < 0 || (size_t)n >= sizeof(out->topic) ? -EINVAL : 0;
}

int wire_device_state(const struct cgw_config *cfg, uint32_t dev, bool online, int64_t since_ms,
		      int64_t ts_ms, struct wire_msg *out)
{
	const struct cfg_device *d;

	memset(out, 0, sizeof(*out));
	if (!cfg || dev >= cfg->n_devices)
		return -EINVAL;
	d = &cfg->devices[dev];
	if (topic(out, "device/%s/state", d->id) < 0)
		return -EINVAL;
	return finish(out, CGW_LANE_STATUS, d->id, ts_ms,
		      json_pack("{s:I,s:s,s:o,s:s,s:I}", "ts", (json_int_t)ts_ms, "device", d->id,
				"name", wire_str(d->name), "state", online ? "online" : "offline",
				"since", (json_int_t)since_ms));
}

int wire_event(const struct cgw_config *cfg, uint32_t dev, const struct cfg_point *pt,
	       const struct cgw_value *v, uint32_t suppressed, int64_t ts_ms, struct wire_msg *out)
{
	const struct cfg_device *d;
	json_t *o;

	memset(out, 0, sizeof(*out));
	if (!cfg || dev >= cfg->n_devices || !pt)
		return -EINVAL;
	d = &cfg->devices[dev];
	if (topic(out, "device/%s/event", d->id) < 0)
		return -EINVAL;
	o = json_pack("{s:I,s:s,s:o,s:s,s:o,s:o}", "ts", (json_int_t)ts_ms, "device", d->id, "name",
		      wire_str(d->name), "event", pt->name, "value", wire_value_json(pt, v),
		      "location", location_json(d));
	if (o && suppressed) /* rate_limit: how many were held back since the last one */
		json_object_set_new(o, "suppressed", json_integer(suppressed));
	return finish(out, CGW_LANE_EVENT, d->id, ts_ms, o);
}

static const struct cfg_point *rule_point(const struct cfg_profile *pr, int rule)
{
	if (rule < 0 || (size_t)rule >= pr->n_alarms || pr->alarms[rule].point_idx >= pr->n_points)
		return NULL;
	return &pr->points[pr->alarms[rule].point_idx];
}

int wire_alarm(const struct cgw_config *cfg, const struct alarm_change *c, struct wire_msg *out)
{
	const struct cfg_device *d;
	const struct cfg_profile *pr;
	json_t *o, *loc;
	int err = 0;

	memset(out, 0, sizeof(*out));
	if (!cfg || !c || c->device >= cfg->n_devices)
		return -EINVAL;
	d = &cfg->devices[c->device];
	pr = cfg_device_profile(cfg, d);
	if (topic(out, "device/%s/alarm", d->id) < 0)
		return -EINVAL;
	o = json_object();
	loc = location_json(d);
	if (!o || !loc) {
		json_decref(o);
		json_decref(loc);
		return -ENOMEM;
	}
	err |= json_object_set_new(o, "ts", json_integer(c->ts_ms));
	err |= json_object_set_new(o, "device", wire_str(d->id));
	err |= json_object_set_new(o, "name", wire_str(d->name));
	err |= json_object_set_new(o, "alarm", wire_str(c->rule_name));
	err |= json_object_set_new(o, "alarm_id", wire_str(c->alarm_id));
	err |= json_object_set_new(o, "event", wire_str(c->event));
	err |= json_object_set_new(o, "state",
				   wire_str(c->shelved ? "shelved" : alarm_state_name(c->state)));
	err |= json_object_set_new(o, "severity", wire_str(cfg_severity_name(c->severity)));
	err |= json_object_set_new(o, "value", wire_value_json(rule_point(pr, c->rule), c->value));
	err |= json_object_set_new(o, "location", loc);
	err |= json_object_set_new(o, "message", wire_str(c->message ? c->message : ""));
	err |= json_object_set_new(o, "raised_at", json_integer(c->raised_at_ms));
	if (c->by)
		err |= json_object_set_new(o, "by", wire_str(c->by));
	if (c->note)
		err |= json_object_set_new(o, "note", wire_str(c->note));
	if (c->chattering) {
		err |= json_object_set_new(o, "chattering", json_true());
		err |= json_object_set_new(o, "chatter_count", json_integer(c->chatter_count));
	}
	if (c->flood)
		err |= json_object_set_new(o, "flood", json_true());
	if (err) {
		json_decref(o);
		return -ENOMEM;
	}
	return finish(out, CGW_LANE_ALARM, d->id, c->ts_ms, o);
}

int wire_notice(const char *event, int64_t ts_ms, json_t *fields, struct wire_msg *out)
{
	json_t *o = json_pack("{s:I,s:s}", "ts", (json_int_t)ts_ms, "event", event);

	memset(out, 0, sizeof(*out));
	snprintf(out->topic, sizeof(out->topic), "status/event");
	if (o && fields)
		json_object_update(o, fields);
	json_decref(fields);
	return finish(out, CGW_LANE_STATUS, NULL, ts_ms, o);
}

json_t *wire_command_result(const struct wire_result *r)
{
	json_t *o = json_pack("{s:I}", "ts", (json_int_t)r->ts_ms);

	/* the order of the first releases: ts, device, command_id, result */
	if (o && r->device)
		json_object_set_new(o, "device", wire_str(r->device));
	if (o) {
		json_object_set_new(o, "command_id", wire_str(r->command_id));
		json_object_set_new(o, "result", json_string(r->result ? r->result : "failed"));
	}
	if (o && r->detail)
		json_object_set_new(o, "detail", wire_str(r->detail));
	if (o && r->first_result) {
		json_t *f = json_object();
		if (f && r->first_ts_ms)
			json_object_set_new(f, "ts", json_integer(r->first_ts_ms));
		if (f)
			json_object_set_new(f, "result", json_string(r->first_result));
		if (f && r->first_detail)
			json_object_set_new(f, "detail", wire_str(r->first_detail));
		json_object_set_new(o, "first", f);
	}
	if (o && r->extra)
		json_object_update(o, r->extra);
	json_decref(r->extra);
	return o;
}

int wire_command_result_msg(const char *device, bool known, json_t *result, int64_t ts_ms,
			    struct wire_msg *out)
{
	memset(out, 0, sizeof(*out));
	if (device && !wire_id_valid(device))
		return -EINVAL;
	if (device ? topic(out, "cmd/%s/result", device) < 0 : topic(out, "%s", "result") < 0)
		return -EINVAL;
	json_incref(result);
	return finish(out, known ? CGW_LANE_EVENT : CGW_LANE_TELEMETRY, known ? device : NULL,
		      ts_ms, result);
}

char *wire_status(const struct cgw_config *cfg, bool online, uint64_t seq, uint64_t session,
		  int64_t ts_ms, const char *reason)
{
	char id[WIRE_ID_MAX + 24];
	json_t *o;
	char *out;

	snprintf(id, sizeof(id), "%s:%llu", cfg->gateway.id, (unsigned long long)seq);
	o = json_pack("{s:s,s:I,s:s,s:I,s:s,s:s}", "id", id, "ts", (json_int_t)ts_ms, "state",
		      online ? "online" : "offline", "session", (json_int_t)session, "gateway",
		      cfg->gateway.id, "site", cfg->gateway.site);
	if (o && online)
		json_object_set_new(o, "protocol", json_integer(WIRE_PROTOCOL));
	if (o && reason)
		json_object_set_new(o, "reason", wire_str(reason));
	out = o ? json_dumps(o, DUMP_FLAGS) : NULL;
	json_decref(o);
	return out;
}

char *wire_render(const char *gateway, uint64_t seq, const char *payload, int64_t ts_ms,
		  int64_t now_ms, int64_t late_after_ms)
{
	/* The stored payload is a JSON object without "id" (rendered here, so
	 * its shape is known); splicing is cheaper than a parse/dump cycle per
	 * message and keeps key order. The gateway id passed wire_id_valid(). */
	const char *body = payload, *end;
	bool late = late_after_ms > 0 && now_ms - ts_ms > late_after_ms;
	char *out;
	size_t inner;

	while (*body == ' ' || *body == '\n' || *body == '\t')
		body++;
	end = strrchr(body, '}');
	if (*body != '{' || !end)
		return NULL;
	body++;
	inner = (size_t)(end - body);
	while (inner && (body[inner - 1] == ' ' || body[inner - 1] == '\n'))
		inner--;
	while (inner && (*body == ' ' || *body == '\n')) {
		body++;
		inner--;
	}
	/* {"id":"GW:SEQ"[,INNER][,"delayed":true]}, copied (no printf of the
	 * whole payload per message) */
	char num[24];
	size_t lg = strlen(gateway), ln = int_text(false, seq, num, sizeof(num));
	static const char delayed[] = ",\"delayed\":true";
	size_t len = 7 + lg + 1 + ln + 1 + (inner ? 1 + inner : 0) +
		     (late ? sizeof(delayed) - 1 : 0) + 1;
	char *p = out = malloc(len + 1);
	if (!out)
		return NULL;
	memcpy(p, "{\"id\":\"", 7);
	p += 7;
	memcpy(p, gateway, lg);
	p += lg;
	*p++ = ':';
	memcpy(p, num, ln);
	p += ln;
	*p++ = '"';
	if (inner) {
		*p++ = ',';
		memcpy(p, body, inner);
		p += inner;
	}
	if (late) {
		memcpy(p, delayed, sizeof(delayed) - 1);
		p += sizeof(delayed) - 1;
	}
	*p++ = '}';
	*p = '\0';
	return out;
}

bool wire_retained(const char *t)
{
	size_t n = strlen(t);

	/* the gateway's and each device's current state */
	return !strcmp(t, "status") ||
	       (!strncmp(t, "device/", 7) && n > 13 && !strcmp(t + n - 6, "/state"));
}

char *wire_prefix(const struct cgw_config *cfg, const char *tp)
{
	size_t cap = strlen(tp) + strlen(cfg->gateway.id) * 4 + strlen(cfg->gateway.site) * 4 + 1;
	char *out = malloc(cap), *o = out;

	if (!out)
		return NULL;
	while (*tp) {
		if (!strncmp(tp, "{site}", 6)) {
			o += sprintf(o, "%s", cfg->gateway.site);
			tp += 6;
		} else if (!strncmp(tp, "{gateway}", 9)) {
			o += sprintf(o, "%s", cfg->gateway.id);
			tp += 9;
		} else {
			*o++ = *tp++;
		}
	}
	*o = '\0';
	/* no trailing slash: topics are prefix + "/" + suffix */
	while (o > out && o[-1] == '/')
		*--o = '\0';
	return out;
}

int wire_command_topic(const char *s, const char **device)
{
	*device = NULL;
	if (!strcmp(s, "cmd"))
		return 1;
	if (strncmp(s, "cmd/", 4) != 0 || !s[4] || strchr(s + 4, '/'))
		return 0;
	*device = s + 4;
	return 1;
}
