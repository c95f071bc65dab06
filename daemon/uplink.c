#include "uplink.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct uplink_ops *uplink_ops_for(int type)
{
	switch (type) {
	case CFG_UPLINK_MQTT:
		return &uplink_mqtt_ops;
	case CFG_UPLINK_HTTP:
		return &uplink_http_ops;
	}
	return NULL;
}

char *uplink_render(const char *gateway, uint64_t seq, const char *payload, int64_t ts_ms,
		    int64_t now_ms, int64_t late_after_ms)
{
	/* The stored payload is a JSON object without "id"; splicing text is
	 * cheaper than a parse/dump cycle per message and keeps key order. */
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
	if (asprintf(&out, "{\"id\":\"%s:%llu\"%s%.*s%s}", gateway, (unsigned long long)seq,
		     inner ? "," : "", (int)inner, body, late ? ",\"delayed\":true" : "") < 0)
		return NULL;
	return out;
}

char *uplink_prefix(const struct cgw_config *cfg, const char *tp)
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
