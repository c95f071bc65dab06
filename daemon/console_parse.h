/*
 * console_parse.h - what the web console parses itself: form bodies
 * (application/x-www-form-urlencoded), Cookie headers, the accounts file, and
 * the installer's commissioning form.
 * Pure functions on bounded input, fuzzed by tests/fuzz/fuzz_console.c.
 */
#ifndef CGW_CONSOLE_PARSE_H
#define CGW_CONSOLE_PARSE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#define CONSOLE_FIELD_MAX 512 /* a decoded form value, bytes with the NUL */
#define CONSOLE_NAME_MAX 32   /* an account name */
#define CONSOLE_HASH_MAX 160  /* a crypt(3) hash */
#define CONSOLE_USERS_MAX 256 /* accounts in the file */

/* The value of `key` in a urlencoded body of `len` bytes (not NUL-terminated),
 * decoded ('+' is a space, %XX a byte) into out. 0, -ENOENT (absent), or
 * -EINVAL (a bad escape, a NUL byte, longer than outlen - 1). The first
 * occurrence counts. */
int console_form_get(const char *body, size_t len, const char *key, char *out, size_t outlen);

/* The value of cookie `name` in a Cookie header value. 0, -ENOENT, -EINVAL
 * (does not fit in outlen). */
int console_cookie_get(const char *header, const char *name, char *out, size_t outlen);

enum console_role { CONSOLE_DUTY, CONSOLE_INSTALLER, CONSOLE_ADMIN };
const char *console_role_name(enum console_role r);
int console_role_from_name(const char *s); /* -1 if unknown */

/* [a-z0-9_.-]{1,32}, starting with a letter or digit. */
bool console_name_ok(const char *s);

struct console_user {
	char name[CONSOLE_NAME_MAX + 1];
	enum console_role role;
	char hash[CONSOLE_HASH_MAX + 1];
};

/* The accounts file: a line "NAME:ROLE:HASH" per account, '#' comments and
 * blank lines ignored. Parses `len` bytes into users (up to `max`); *n gets
 * the count. Lines that are not valid are skipped and counted in *bad
 * (may be NULL). 0 or -E2BIG (more than max accounts). */
int console_users_parse(const char *text, size_t len, struct console_user *users, size_t max,
			size_t *n, size_t *bad);

/* The commissioning form (bus, units, table, address, unit, count,
 * timeout_ms; absent or empty fields left out) as the request object that
 * commission_request() checks for cgwctl too: a field that is a decimal
 * integer (address, unit, count, timeout_ms) as a JSON integer, anything
 * else as text, which the check refuses where a number belongs. A new
 * reference; NULL on allocation failure. */
json_t *console_commission_form(const char *body, size_t len);

#endif
