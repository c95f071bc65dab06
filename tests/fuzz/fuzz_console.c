/* libFuzzer target: what the web console parses itself: form bodies
 * (application/x-www-form-urlencoded), Cookie headers, the accounts file.
 * The input is split at the first NUL: a key/cookie name, then the text. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "console_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct console_user users[CONSOLE_USERS_MAX];
	const char *nul = memchr(data, 0, size);
	char key[64], out[CONSOLE_FIELD_MAX], *text;
	size_t klen = nul ? (size_t)(nul - (const char *)data) : 0, n = 0, bad = 0;
	size_t tlen = nul ? size - klen - 1 : size;

	if (klen >= sizeof(key))
		return 0;
	memcpy(key, data, klen);
	key[klen] = '\0';
	/* exactly tlen bytes, no terminator: overreads show */
	text = malloc(tlen ? tlen : 1);
	if (!text)
		return 0;
	memcpy(text, nul ? (const char *)nul + 1 : (const char *)data, tlen);

	for (size_t cap = 1; cap <= sizeof(out); cap *= 8) {
		int r = console_form_get(text, tlen, key, out, cap);
		if (r == 0 && strlen(out) >= cap)
			abort();
		if (r != 0 && r != -ENOENT && r != -EINVAL)
			abort();
	}
	if (console_users_parse(text, tlen, users, CONSOLE_USERS_MAX, &n, &bad) == 0) {
		for (size_t i = 0; i < n; i++)
			if (!console_name_ok(users[i].name) || users[i].hash[0] != '$' ||
			    strchr(users[i].hash, ':'))
				abort();
	}
	/* a header value is a C string */
	char *h = malloc(tlen + 1);
	if (h) {
		memcpy(h, text, tlen);
		h[tlen] = '\0';
		if (console_cookie_get(h, key[0] ? key : "cgw_session", out, 65) == 0 &&
		    strlen(out) > 64)
			abort();
		free(h);
	}
	free(text);
	return 0;
}
