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
		if (!c.id || !*c.id || strlen(c.id) > COMMAND_ID_MAX)
			abort();
		char *d = command_dump(&c);
		free(d);
		command_clear(&c);
	} else if (!why[0]) {
		abort(); /* a refusal must say why */
	}
	return 0;
}
