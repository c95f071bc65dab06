/*
 * secret.h - reading secrets (passwords, keys) from files.
 *
 * Where a secret comes from:
 *   - a file path, as configured; or
 *   - `credential:NAME`: systemd's credential NAME, handed to the service
 *     with `LoadCredential=NAME:/etc/cgw/secrets/FILE` and found in
 *     $CREDENTIALS_DIRECTORY/NAME (systemd.exec(5)).
 *
 * Who may read it (the layout a Debian admin uses): the owner is root or the
 * service user (`cgw`, or the user cgwd runs as), the group is the service's
 * (`cgw`, or cgwd's own groups), and the mode is at most 0640. A file that
 * others may read, or its group write, is refused with the exact fix
 * (`chown root:cgw F && chmod 0640 F`), and so is one owned by another user
 * or readable by another group. The first line is the secret. The caller owns the returned string
 * and frees it with secret_free(), which wipes it first. Secrets are never
 * logged. The user and group are looked up by name (local files on a
 * gateway), at configuration load and when an uplink opens.
 */
#ifndef CGW_SECRET_H
#define CGW_SECRET_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

#define SECRET_SERVICE_USER "cgw"
#define SECRET_CREDENTIAL_PREFIX "credential:"

/* Is `value` a `credential:NAME` reference? */
bool secret_is_credential(const char *value);

/* The file to open for `value` (malloc'd): the path itself, or
 * $CREDENTIALS_DIRECTORY/NAME. NULL with the reason in err: a NAME that is
 * not one plain file name, or no $CREDENTIALS_DIRECTORY (not started by
 * systemd with LoadCredential=). */
char *secret_path(const char *value, char *err, size_t errlen);

/* Is a file with this stat() fit to hold a secret? 0, or -EACCES with the
 * reason and the fix in err (`path` is only used in the message). */
int secret_check_stat(const char *path, const struct stat *st, char *err, size_t errlen);

/* Open `value` (secret_path()) for reading, O_CLOEXEC, after
 * secret_check_stat(). The fd, or negative errno with the reason in err. */
int secret_open(const char *value, char *err, size_t errlen);

/* The first line of `value` (malloc'd), or NULL with the reason in err. */
char *secret_read(const char *value, char *err, size_t errlen);
void secret_free(char *s);

#endif
