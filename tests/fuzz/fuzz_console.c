/* libFuzzer target: what the web console parses itself: form bodies
 * (application/x-www-form-urlencoded), Cookie headers, the accounts file,
 * and the installer's scan/probe form through the check cgwctl's requests
 * pass too (console_commission_form, commission_request): what passes is
 * within the protocol's bounds.
 * The input is split at the first NUL: a key/cookie name, then the text. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "commission.h"
#include "console_parse.h"

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

static void commissioning(const char *body, size_t len)
{
	static struct cfg_bus buses[2] = {{.name = "fire-io"}, {.name = "io"}};
	static struct cgw_config cfg = {.buses = buses, .n_buses = 2};
	json_t *q = console_commission_form(body, len);

	CHECK(q);
	for (int scan = 0; scan < 2; scan++) {
		struct driver_commission dc;
		const char *bus = NULL;
		char why[700] = "";
		if (commission_request(&cfg, q, scan, &dc, &bus, why, sizeof(why)) < 0) {
			CHECK(why[0]);
			continue;
		}
		CHECK(bus && (!strcmp(bus, "fire-io") || !strcmp(bus, "io")));
		CHECK(dc.table >= 0 && dc.table <= 3);
		/* 10..10000 ms as asked, or 0: the bus's own */
		CHECK((dc.timeout_ms >= 10 && dc.timeout_ms <= 10000) || dc.timeout_ms == 0);
		if (scan) {
			CHECK(dc.kind == DRV_SCAN && !(dc.units[0] & 1));
		} else {
			CHECK(dc.kind == DRV_PROBE && dc.unit <= 247 && dc.count >= 1);
			CHECK((size_t)dc.address + dc.count <= 65536);
			CHECK(dc.count <= (dc.table <= 1 ? 2000 : 125));
		}
	}
	json_decref(q);
}

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
	commissioning(text, tlen);
	free(text);
	return 0;
}
