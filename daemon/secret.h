/*
 * secret.h - reading secrets (passwords) from files.
 *
 * A secret file must be private to its owner (no group/other bits): one
 * readable by others is refused, as the configuration check does. The
 * first line is the secret. The caller owns the returned string and should
 * secret_free() it, which wipes it first. Secrets are never logged.
 */
#ifndef CGW_SECRET_H
#define CGW_SECRET_H

#include <stddef.h>

/* The first line of `path` (malloc'd), or NULL with the reason in err. */
char *secret_read(const char *path, char *err, size_t errlen);
void secret_free(char *s);

#endif
