/* libFuzzer target: platform command parsing (P/cmd/{device} payloads). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct command c;
	char why[128];

	if (command_parse((const char *)data, size, &c, why, sizeof(why)) == 0) {
		if (!*c.id || strlen(c.id) > COMMAND_ID_MAX)
			abort();
		char *d = command_dump(&c);
		free(d);
		command_clear(&c);
	} else if (!why[0] || c.root || strlen(c.id) > COMMAND_ID_MAX) {
		abort(); /* a refusal must say why, and hold nothing but an id */
	} else {
		for (const char *p = c.id; *p; p++)
			if ((unsigned char)*p < 0x20)
				abort(); /* an id read from junk is still printable */
	}
	return 0;
}
