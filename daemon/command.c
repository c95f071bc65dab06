#include "command.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static int optional_string(json_t *root, const char *key, const char **out, char *why,
			   size_t whylen)
{
	json_t *v = json_object_get(root, key);

	*out = NULL;
	if (!v)
		return 0;
	if (!json_is_string(v) || json_string_length(v) > 256 ||
	    strlen(json_string_value(v)) != json_string_length(v)) {
		snprintf(why, whylen, "\"%s\" must be a short string", key);
		return -EINVAL;
	}
	*out = json_string_value(v);
	return 0;
}

int command_parse(const char *payload, size_t len, struct command *out, char *why, size_t whylen)
{
	json_error_t jerr;
	json_t *id;
	const char *s;

	memset(out, 0, sizeof(*out));
	if (len > COMMAND_MAX_BYTES) {
		snprintf(why, whylen, "%zu bytes, more than %d", len, COMMAND_MAX_BYTES);
		return -EINVAL;
	}
	out->root = json_loadb(payload, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!out->root) {
		snprintf(why, whylen, "not JSON: %s", jerr.text);
		return -EINVAL;
	}
	if (!json_is_object(out->root)) {
		snprintf(why, whylen, "not a JSON object");
		goto bad;
	}
	id = json_object_get(out->root, "id");
	s = json_string_value(id);
	if (!s || !*s || json_string_length(id) > COMMAND_ID_MAX ||
	    strlen(s) != json_string_length(id)) {
		snprintf(why, whylen, "needs a string \"id\" of 1..%d characters", COMMAND_ID_MAX);
		goto bad;
	}
	for (const char *p = s; *p; p++) {
		if ((unsigned char)*p < 0x20) {
			snprintf(why, whylen, "\"id\" has control characters");
			goto bad;
		}
	}
	out->id = s;
	if (optional_string(out->root, "action", &out->action, why, whylen) < 0 ||
	    optional_string(out->root, "alarm", &out->alarm, why, whylen) < 0 ||
	    optional_string(out->root, "point", &out->point, why, whylen) < 0 ||
	    optional_string(out->root, "by", &out->by, why, whylen) < 0)
		goto bad;
	out->value = json_object_get(out->root, "value");
	return 0;
bad:
	command_clear(out);
	return -EINVAL;
}

void command_clear(struct command *c)
{
	json_decref(c->root);
	memset(c, 0, sizeof(*c));
}

char *command_dump(const struct command *c)
{
	return json_dumps(c->root, JSON_COMPACT | JSON_REAL_PRECISION(15));
}
