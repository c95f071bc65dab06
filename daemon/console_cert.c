/*
 * console_cert.c - the console's generated certificate (see console_cert.h).
 */
#include "console_cert.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define PEM_MAX (64 * 1024)

#define WHY(...) snprintf(why, why_len, __VA_ARGS__)

static int read_text(const char *path, char **out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;
	char *buf = NULL;
	size_t n = 0;
	ssize_t k;

	*out = NULL;
	if (fd < 0)
		return -errno;
	buf = malloc(PEM_MAX + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (n < PEM_MAX && (k = read(fd, buf + n, PEM_MAX - n)) != 0) {
		if (k < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			break;
		}
		n += (size_t)k;
	}
	close(fd);
	if (r < 0 || n == PEM_MAX) {
		free(buf);
		return r < 0 ? r : -EFBIG;
	}
	buf[n] = '\0';
	*out = buf;
	return 0;
}

/* path.tmp with mode, written whole and synced, then renamed to path. */
static int write_file(const char *path, const char *text, mode_t mode)
{
	char tmp[4200];
	size_t len = strlen(text), off = 0;
	int fd, r = 0;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
		return -ENAMETOOLONG;
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0)
		return -errno;
	if (fchmod(fd, mode) < 0) /* whatever the umask */
		r = -errno;
	while (!r && off < len) {
		ssize_t k = write(fd, text + off, len - off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			r = -errno;
		else
			off += (size_t)k;
	}
	if (!r && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && !r)
		r = -errno;
	if (!r && rename(tmp, path) < 0)
		r = -errno;
	if (r)
		unlink(tmp);
	return r;
}

static char *bio_text(BIO *b)
{
	char *p = NULL, *out;
	long n = BIO_get_mem_data(b, &p);

	if (n <= 0 || !(out = malloc((size_t)n + 1)))
		return NULL;
	memcpy(out, p, (size_t)n);
	out[n] = '\0';
	return out;
}

static void hex_fingerprint(const unsigned char *md, unsigned n,
			    char fingerprint[CONSOLE_FINGERPRINT_LEN])
{
	fingerprint[0] = '\0';
	for (unsigned i = 0; i < n && i < 32; i++)
		sprintf(fingerprint + 3 * i, "%02X%s", md[i], i + 1 < n && i < 31 ? ":" : "");
}

static int x509_fingerprint(X509 *x, char fingerprint[CONSOLE_FINGERPRINT_LEN])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned n = 0;

	if (X509_digest(x, EVP_sha256(), md, &n) != 1 || n != 32)
		return -EINVAL;
	hex_fingerprint(md, n, fingerprint);
	return 0;
}

int console_cert_fingerprint(const char *cert_pem, char fingerprint[CONSOLE_FINGERPRINT_LEN])
{
	BIO *b = BIO_new_mem_buf(cert_pem, -1);
	X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
	int r = x ? x509_fingerprint(x, fingerprint) : -EINVAL;

	X509_free(x);
	BIO_free(b);
	return r;
}

/* "IP:a,IP:b,..." for the SAN: the listen address, or every address of the
 * machine (not loopback) when it is a wildcard. */
static void san_addresses(const struct sockaddr_storage *ss, char *out, size_t len)
{
	char ip[INET6_ADDRSTRLEN];
	size_t o = 0;
	bool any4 = ss->ss_family == AF_INET &&
		    ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
	bool any6 = ss->ss_family == AF_INET6 &&
		    IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
	struct ifaddrs *ifs = NULL;

	out[0] = '\0';
	if (!any4 && !any6) {
		if (ss->ss_family == AF_INET)
			inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, ip,
				  sizeof(ip));
		else
			inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, ip,
				  sizeof(ip));
		snprintf(out, len, "IP:%s", ip);
		return;
	}
	if (getifaddrs(&ifs) < 0)
		return;
	for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
		const struct sockaddr *a = i->ifa_addr;
		if (!a || (a->sa_family != (any4 ? AF_INET : AF_INET6)))
			continue;
		if (a->sa_family == AF_INET) {
			const struct in_addr *in = &((const struct sockaddr_in *)a)->sin_addr;
			if ((ntohl(in->s_addr) >> 24) == 127)
				continue;
			inet_ntop(AF_INET, in, ip, sizeof(ip));
		} else {
			const struct in6_addr *in = &((const struct sockaddr_in6 *)a)->sin6_addr;
			if (IN6_IS_ADDR_LOOPBACK(in) || IN6_IS_ADDR_LINKLOCAL(in))
				continue;
			inet_ntop(AF_INET6, in, ip, sizeof(ip));
		}
		int n = snprintf(out + o, len - o, "%sIP:%s", o ? "," : "", ip);
		if (n < 0 || (size_t)n >= len - o) {
			out[o] = '\0';
			break;
		}
		o += (size_t)n;
	}
	freeifaddrs(ifs);
}

static int add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *e;
	int ok;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (!e)
		return -EINVAL;
	ok = X509_add_ext(x, e, -1);
	X509_EXTENSION_free(e);
	return ok ? 0 : -ENOMEM;
}

/* A DNS name in the SAN must be a host name: the gateway's id, if it is one. */
static bool dns_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > 63 || s[0] == '-' || s[n - 1] == '-')
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-'))
			return false;
	return true;
}

static int make_pair(const char *gateway, const struct sockaddr_storage *listen, char **cert_pem,
		     char **key_pem, char *why, size_t why_len)
{
	EVP_PKEY *key = NULL;
	X509 *x = NULL;
	X509_NAME *name;
	BIO *kb = NULL, *cb = NULL;
	unsigned char serial[16];
	BIGNUM *bn = NULL;
	char san[2048], addrs[1800];
	int r = -EIO;

	*cert_pem = *key_pem = NULL;
	key = EVP_EC_gen("P-256");
	x = X509_new();
	if (!key || !x) {
		WHY("cannot make an EC P-256 key");
		goto out;
	}
	if (getrandom(serial, sizeof(serial), 0) != (ssize_t)sizeof(serial)) {
		WHY("no randomness for the serial number");
		goto out;
	}
	serial[0] &= 0x7f; /* positive */
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	name = X509_get_subject_name(x);
	if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) ||
	    X509_set_version(x, 2) != 1 ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)gateway,
					-1, -1, 0) ||
	    !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"cgw", -1,
					-1, 0) ||
	    X509_set_issuer_name(x, name) != 1 ||
	    !X509_gmtime_adj(X509_getm_notBefore(x), -3600) || /* clocks a little behind */
	    !X509_gmtime_adj(X509_getm_notAfter(x), (long)CONSOLE_CERT_DAYS * 86400) ||
	    X509_set_pubkey(x, key) != 1) {
		WHY("cannot build the certificate");
		goto out;
	}
	san_addresses(listen, addrs, sizeof(addrs));
	snprintf(san, sizeof(san), "%s%s%s%s", dns_name_ok(gateway) ? "DNS:" : "",
		 dns_name_ok(gateway) ? gateway : "", dns_name_ok(gateway) && *addrs ? "," : "",
		 addrs);
	if ((*san && add_ext(x, NID_subject_alt_name, san) < 0) ||
	    add_ext(x, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
	    add_ext(x, NID_key_usage, "critical,digitalSignature") < 0 ||
	    add_ext(x, NID_ext_key_usage, "serverAuth") < 0 ||
	    add_ext(x, NID_subject_key_identifier, "hash") < 0) {
		WHY("cannot add the certificate's extensions (subjectAltName %s)", san);
		goto out;
	}
	if (X509_sign(x, key, EVP_sha256()) <= 0) {
		WHY("cannot sign the certificate");
		goto out;
	}
	kb = BIO_new(BIO_s_mem());
	cb = BIO_new(BIO_s_mem());
	if (!kb || !cb || PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL) != 1 ||
	    PEM_write_bio_X509(cb, x) != 1 || !(*key_pem = bio_text(kb)) ||
	    !(*cert_pem = bio_text(cb))) {
		WHY("cannot write the certificate or key as PEM");
		goto out;
	}
	r = 0;
out:
	if (r < 0) {
		if (*key_pem)
			explicit_bzero(*key_pem, strlen(*key_pem));
		free(*key_pem);
		free(*cert_pem);
		*key_pem = *cert_pem = NULL;
	}
	BIO_free(kb);
	BIO_free(cb);
	BN_free(bn);
	X509_free(x);
	EVP_PKEY_free(key);
	return r;
}

/* The pair loads, and the key is the certificate's. */
static int check_pair(const char *cert_pem, const char *key_pem, char *why, size_t why_len)
{
	BIO *cb = BIO_new_mem_buf(cert_pem, -1), *kb = BIO_new_mem_buf(key_pem, -1);
	X509 *x = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
	EVP_PKEY *k = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
	int r = 0;

	if (!x)
		WHY("%s is not a PEM certificate", CONSOLE_CERT_FILE), r = -EINVAL;
	else if (!k)
		WHY("%s is not a PEM private key", CONSOLE_KEY_FILE), r = -EINVAL;
	else if (X509_check_private_key(x, k) != 1)
		WHY("%s is not the key of %s", CONSOLE_KEY_FILE, CONSOLE_CERT_FILE), r = -EINVAL;
	EVP_PKEY_free(k);
	X509_free(x);
	BIO_free(cb);
	BIO_free(kb);
	return r;
}

int console_cert_ensure(const char *dir, const char *gateway, const struct sockaddr_storage *listen,
			char **cert_pem, char **key_pem, char fingerprint[CONSOLE_FINGERPRINT_LEN],
			bool *made, char *why, size_t why_len)
{
	char cpath[4096], kpath[4096];
	struct stat cs, ks;
	bool have_c, have_k;
	int r;

	*cert_pem = *key_pem = NULL;
	*made = false;
	if ((size_t)snprintf(cpath, sizeof(cpath), "%s/%s", dir, CONSOLE_CERT_FILE) >=
		    sizeof(cpath) - 8 ||
	    (size_t)snprintf(kpath, sizeof(kpath), "%s/%s", dir, CONSOLE_KEY_FILE) >=
		    sizeof(kpath) - 8) {
		WHY("state_dir '%s' is too long", dir);
		return -ENAMETOOLONG;
	}
	have_c = stat(cpath, &cs) == 0;
	have_k = stat(kpath, &ks) == 0;
	if (have_c && have_k) {
		if ((r = read_text(cpath, cert_pem)) < 0 || (r = read_text(kpath, key_pem)) < 0) {
			WHY("cannot read %s: %s", *cert_pem ? kpath : cpath, strerror(-r));
			goto fail;
		}
		if ((ks.st_mode & 077) != 0) {
			WHY("%s can be read by others (mode %04o): chmod 600 it", kpath,
			    (unsigned)(ks.st_mode & 07777));
			r = -EPERM;
			goto fail;
		}
		if ((r = check_pair(*cert_pem, *key_pem, why, why_len)) < 0) {
			size_t n = strlen(why);
			snprintf(why + n, why_len - n,
				 " (in %s; delete both files to have a new pair made)", dir);
			goto fail;
		}
	} else {
		/* neither, or one left by a making cut short: a new pair */
		if ((r = make_pair(gateway, listen, cert_pem, key_pem, why, why_len)) < 0)
			goto fail;
		if ((r = write_file(kpath, *key_pem, 0600)) < 0 ||
		    (r = write_file(cpath, *cert_pem, 0644)) < 0) {
			WHY("cannot write the console's certificate and key in %s: %s", dir,
			    strerror(-r));
			goto fail;
		}
		*made = true;
	}
	if ((r = console_cert_fingerprint(*cert_pem, fingerprint)) < 0) {
		WHY("%s: no fingerprint", cpath);
		goto fail;
	}
	return 0;
fail:
	if (*key_pem)
		explicit_bzero(*key_pem, strlen(*key_pem));
	free(*key_pem);
	free(*cert_pem);
	*cert_pem = *key_pem = NULL;
	return r;
}
