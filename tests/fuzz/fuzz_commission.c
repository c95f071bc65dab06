/*
 * libFuzzer target for what cgwctl's scan/probe requests hand the daemon:
 * commission_parse_units() on arbitrary text (the UNITS argument), and
 * commission_readings() on arbitrary words (a probe's answer). Checks: a
 * parse that succeeds sets only ids 1..247, and at least one; readings is an
 * object whose "ascii" has two printable characters per word.
 */
#include "commission.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char text[1100];
	uint8_t map[32];
	uint16_t regs[125];
	const char *why = NULL;
	size_t n = size < sizeof(text) - 1 ? size : sizeof(text) - 1;

	memcpy(text, data, n);
	text[n] = '\0';
	if (commission_parse_units(text, map, &why) == 0) {
		bool any = false;
		CHECK(!(map[0] & 1));                /* unit 0 */
		for (unsigned u = 248; u < 256; u++) /* beyond 247 */
			CHECK(!(map[u / 8] & (1u << (u % 8))));
		for (size_t i = 0; i < 32; i++)
			any |= map[i] != 0;
		CHECK(any);
	} else {
		CHECK(why && *why);
	}
	size_t nw = size / 2 > 125 ? 125 : size / 2;
	for (size_t i = 0; i < nw; i++)
		regs[i] = (uint16_t)(data[2 * i] << 8 | data[2 * i + 1]);
	json_t *r = commission_readings(regs, nw);
	CHECK(r && json_is_object(r));
	const char *a = json_string_value(json_object_get(r, "ascii"));
	CHECK(a && strlen(a) == 2 * nw);
	for (size_t i = 0; i < 2 * nw; i++)
		CHECK(a[i] >= 0x20 && a[i] < 0x7f);
	char *dump = json_dumps(r, JSON_COMPACT);
	CHECK(dump);
	free(dump);
	json_decref(r);
	return 0;
}
