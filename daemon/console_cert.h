/*
 * console_cert.h - the console's TLS certificate when none is configured:
 * made once, at the first start, in the state directory, and kept.
 *
 * A console on a LAN address speaks only TLS. Without tls_cert/tls_key,
 * cgwd makes a self-signed certificate at its first start (EC P-256,
 * SHA-256; subject CN and O the gateway's id and "cgw"; subjectAltName the
 * gateway's id as a DNS name and the listen address, or every address of
 * the machine for a wildcard listen; valid CONSOLE_CERT_DAYS) and its key,
 * STATE_DIR/console-cert.pem and STATE_DIR/console-key.pem (mode 0600,
 * owned by the user cgwd runs as). Later starts load them again, so the
 * fingerprint an installer once checked in the browser stays the same. The
 * SHA-256 fingerprint is logged at every start and shown by cgwctl status.
 *
 * Files are written to temporary names and renamed, the key first: a
 * certificate file always has its key beside it. A pair that exists but
 * does not load (damaged, edited, a key that is not the certificate's) is
 * an error, never silently replaced: the installer decides (delete both to
 * make a new one).
 *
 * Runs once at start (or at a reload that opens the console), on the core
 * thread before the console serves: key generation takes a few ms.
 */
#ifndef CGW_CONSOLE_CERT_H
#define CGW_CONSOLE_CERT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define CONSOLE_CERT_DAYS 3650
#define CONSOLE_CERT_FILE "console-cert.pem"
#define CONSOLE_KEY_FILE "console-key.pem"
/* "AB:CD:...": 32 bytes as hex pairs with colons, and the NUL */
#define CONSOLE_FINGERPRINT_LEN (32 * 3)

/* Loads dir's certificate and key, or makes them when neither exists (or
 * only one: a pair cut short at its making). 0 and *cert_pem, *key_pem (PEM
 * text, the caller frees; the key should be wiped), fingerprint, *made (true
 * if made now); or a negative errno, and a reason for a person in why. */
int console_cert_ensure(const char *dir, const char *gateway, const struct sockaddr_storage *listen,
			char **cert_pem, char **key_pem, char fingerprint[CONSOLE_FINGERPRINT_LEN],
			bool *made, char *why, size_t why_len);

/* The SHA-256 fingerprint of the first certificate in a PEM text.
 * 0 or -EINVAL. */
int console_cert_fingerprint(const char *cert_pem, char fingerprint[CONSOLE_FINGERPRINT_LEN]);

#endif
