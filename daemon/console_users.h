/*
 * console_users.h - the console's accounts file and `cgwctl user`.
 *
 * The file (console.users, by default STATE_DIR/console-users) holds a line
 * "NAME:ROLE:HASH" per account, HASH from crypt(3) with yescrypt ("$y$").
 * cgwctl writes it (atomically: a temporary file renamed over it, mode 0640,
 * owned like the state directory when run as root); cgwd only reads it, again
 * whenever it changed, so accounts take effect without a restart. There are
 * no default accounts: the console lets nobody in until the first is made.
 */
#ifndef CGW_CONSOLE_USERS_H
#define CGW_CONSOLE_USERS_H

#include <stdbool.h>
#include <stddef.h>

#include "console_parse.h"

/* Reads the file. 0 (a missing file is no accounts), or a negative errno. */
int console_users_load(const char *path, struct console_user *users, size_t max, size_t *n);
/* Writes it atomically. */
int console_users_save(const char *path, const struct console_user *users, size_t n);
/* crypt(3) with a fresh yescrypt salt. 0 or a negative errno. */
int console_hash_password(const char *password, char *out, size_t outlen);
/* Constant-time comparison of crypt(password, hash) with hash. Slow (tens of
 * ms) by design: not on the core thread. */
bool console_check_password(const char *password, const char *hash);

/* `cgwctl user add NAME ROLE | del NAME | passwd NAME | list [--users FILE]
 * [-c CONFIG]`: argv[0] is "user". Exit status as cgwctl's. */
int console_user_main(int argc, char **argv);

#endif
