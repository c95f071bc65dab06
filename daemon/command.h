/*
 * command.h - the platform's command messages (P/cmd/{device}, cgwctl):
 * {"id": "...", "action": "ack"|"read"|"write", "alarm": ..., "point": ...,
 *  "value": ..., "by": ...}. Parsing is separate from running them so that
 * it can be tested and fuzzed on its own.
 *
 * Ownership: a parsed command owns its JSON tree; the strings point into
 * it and live until command_clear().
 */
#ifndef CGW_COMMAND_H
#define CGW_COMMAND_H

#include <jansson.h>
#include <stddef.h>

#define COMMAND_MAX_BYTES 16384
#define COMMAND_ID_MAX 128

struct command {
	json_t *root;
	char id[COMMAND_ID_MAX + 1]; /* 1..COMMAND_ID_MAX printable characters;
					"" when no id could be read */
	const char *action;          /* may be NULL (then rejected by the caller, with the id) */
	const char *alarm;           /* ack */
	const char *point;           /* read, write */
	const char *by;              /* who, optional */
	json_t *value;               /* write; borrowed from root */
};

/* 0, or -EINVAL with a reason in `why` (not JSON, too big, not an object, no
 * usable id, a field of the wrong type). On -EINVAL, out->id still holds the
 * command's id when one could be read (from the object, or for a payload
 * that is not JSON or too big, from a top-level "id" string without escapes
 * near its start), so that the refusal can be answered; "" when not. On
 * success the caller calls command_clear() (harmless after a failure). */
int command_parse(const char *payload, size_t len, struct command *out, char *why, size_t whylen);
void command_clear(struct command *c);
/* The request as compact JSON for the audit (malloc'd). */
char *command_dump(const struct command *c);

#endif
