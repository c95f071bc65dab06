#include "command.h"

#include <errno.h>
#include <stdbool.h>
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

static bool id_usable(const char *s, size_t n)
{
	if (n == 0 || n > COMMAND_ID_MAX || strlen(s) != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

/* For a payload that is not JSON (cut short, a stray byte) or too big: a
 * top-level "id" whose value is a plain string, found by a small scanner
 * that knows strings, nesting and keys, looking at no more than
 * COMMAND_SCAN_BYTES. Two "id" keys at the top: none. */
#define COMMAND_SCAN_BYTES 65536
static void scan_id(const char *p, size_t len, char *id)
{
	int depth = 0;
	bool want_key = false, found = false;
	char cand[COMMAND_ID_MAX + 1];

	id[0] = '\0';
	if (len > COMMAND_SCAN_BYTES)
		len = COMMAND_SCAN_BYTES;
	for (size_t i = 0; i < len; i++) {
		char ch = p[i];
		if (ch == '"') {
			size_t j = i + 1, start = j;
			bool esc = false;
			while (j < len && (esc || p[j] != '"')) {
				esc = !esc && p[j] == '\\';
				j++;
			}
			if (j >= len)
				return; /* cut inside a string */
			if (depth == 1 && want_key && j - start == 2 &&
			    !memcmp(p + start, "id", 2)) {
				size_t k = j + 1, vs;
				while (k < len && strchr(" \t\r\n", p[k]))
					k++;
				if (k < len && p[k] == ':')
					k++;
				while (k < len && strchr(" \t\r\n", p[k]))
					k++;
				if (found)
					goto none; /* two ids: which one? */
				found = true;
				if (k < len && p[k] == '"') {
					vs = ++k;
					while (k < len && p[k] != '"' && p[k] != '\\')
						k++;
					if (k < len && p[k] == '"' && k - vs <= COMMAND_ID_MAX) {
						memcpy(cand, p + vs, k - vs);
						cand[k - vs] = '\0';
						if (id_usable(cand, k - vs))
							memcpy(id, cand, k - vs + 1);
					}
				}
			}
			want_key = false;
			i = j;
			continue;
		}
		if (ch == '{') {
			depth++;
			want_key = depth == 1;
		} else if (ch == '[') {
			depth++;
			want_key = false;
		} else if (ch == '}' || ch == ']') {
			depth--;
		} else if (ch == ',') {
			want_key = depth == 1;
		} else if (ch == ':') {
			want_key = false;
		}
	}
	return;
none:
	id[0] = '\0';
}

int command_parse(const char *payload, size_t len, struct command *out, char *why, size_t whylen)
{
	json_error_t jerr;
	json_t *id;
	const char *s;

	memset(out, 0, sizeof(*out));
	if (len > COMMAND_MAX_BYTES) {
		snprintf(why, whylen, "%zu bytes, more than %d", len, COMMAND_MAX_BYTES);
		scan_id(payload, len, out->id);
		return -EINVAL;
	}
	out->root = json_loadb(payload, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!out->root) {
		snprintf(why, whylen, "not JSON: %s", jerr.text);
		/* a duplicate key is JSON jansson refuses: no id then */
		if (!strstr(jerr.text, "duplicate"))
			scan_id(payload, len, out->id);
		return -EINVAL;
	}
	if (!json_is_object(out->root)) {
		snprintf(why, whylen, "not a JSON object");
		goto bad;
	}
	id = json_object_get(out->root, "id");
	s = json_string_value(id);
	if (!s || !id_usable(s, json_string_length(id))) {
		snprintf(why, whylen, "needs a string \"id\" of 1..%d printable characters",
			 COMMAND_ID_MAX);
		goto bad;
	}
	memcpy(out->id, s, json_string_length(id) + 1);
	if (optional_string(out->root, "action", &out->action, why, whylen) < 0 ||
	    optional_string(out->root, "alarm", &out->alarm, why, whylen) < 0 ||
	    optional_string(out->root, "point", &out->point, why, whylen) < 0 ||
	    optional_string(out->root, "by", &out->by, why, whylen) < 0)
		goto bad;
	out->value = json_object_get(out->root, "value");
	return 0;
bad:
	json_decref(out->root);
	out->root = NULL;
	out->action = out->alarm = out->point = out->by = NULL;
	out->value = NULL;
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
