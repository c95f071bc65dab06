#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_GROUPS 64

bool secret_is_credential(const char *value)
{
	return value && !strncmp(value, SECRET_CREDENTIAL_PREFIX, strlen(SECRET_CREDENTIAL_PREFIX));
}

char *secret_path(const char *value, char *err, size_t errlen)
{
	const char *name, *dir;
	char *p;

	if (!secret_is_credential(value)) {
		p = strdup(value);
		if (!p)
			snprintf(err, errlen, "out of memory");
		return p;
	}
	name = value + strlen(SECRET_CREDENTIAL_PREFIX);
	if (!*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..") ||
	    strlen(name) > 255) {
		snprintf(err, errlen, "'%s': a credential name is one plain file name", value);
		return NULL;
	}
	dir = getenv("CREDENTIALS_DIRECTORY");
	if (!dir || !*dir) {
		snprintf(err, errlen,
			 "'%s': $CREDENTIALS_DIRECTORY is not set (cgwd was not started by "
			 "systemd with LoadCredential=%s:FILE)",
			 value, name);
		return NULL;
	}
	if (asprintf(&p, "%s/%s", dir, name) < 0) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	return p;
}

/* The service user's uid/gid, by name; -1 where there is no such account
 * (a development machine). */
static void service_ids(uid_t *uid, gid_t *gid)
{
	struct passwd pw, *pr = NULL;
	struct group gr, *gp = NULL;
	char buf[2048];

	*uid = (uid_t)-1;
	*gid = (gid_t)-1;
	if (getpwnam_r(SECRET_SERVICE_USER, &pw, buf, sizeof(buf), &pr) == 0 && pr)
		*uid = pr->pw_uid;
	if (getgrnam_r(SECRET_SERVICE_USER, &gr, buf, sizeof(buf), &gp) == 0 && gp)
		*gid = gp->gr_gid;
}

static bool in_own_groups(gid_t g)
{
	gid_t v[MAX_GROUPS];
	int n;

	if (g == getegid())
		return true;
	n = getgroups(MAX_GROUPS, v);
	for (int i = 0; i < n; i++)
		if (v[i] == g)
			return true;
	return false;
}

int secret_check_stat(const char *path, const struct stat *st, char *err, size_t errlen)
{
	unsigned mode = (unsigned)(st->st_mode & 07777);
	uid_t svc_uid, me = geteuid();
	gid_t svc_gid;
	const char *why = NULL;
	char what[96];

	service_ids(&svc_uid, &svc_gid);
	if (mode & 0007) {
		why = "is readable by others";
	} else if (mode & 0020) {
		why = "is writable by its group";
	} else if (st->st_uid != 0 && st->st_uid != me && st->st_uid != svc_uid) {
		snprintf(what, sizeof(what),
			 "is owned by uid %u, neither root nor the service user",
			 (unsigned)st->st_uid);
		why = what;
	} else if ((mode & 0040) && st->st_gid != svc_gid && !in_own_groups(st->st_gid)) {
		snprintf(what, sizeof(what), "is readable by group %u, not the service's",
			 (unsigned)st->st_gid);
		why = what;
	}
	if (!why)
		return 0;
	snprintf(err, errlen, "%s %s (mode %04o); fix: chown root:%s %s && chmod 0640 %s", path,
		 why, mode, SECRET_SERVICE_USER, path, path);
	return -EACCES;
}

int secret_open(const char *value, char *err, size_t errlen)
{
	char *path = secret_path(value, err, errlen);
	struct stat st;
	int fd, r;

	if (!path)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s is not a regular file", path);
		r = -EINVAL;
		goto out;
	}
	r = secret_check_stat(path, &st, err, errlen);
	if (r == 0) {
		r = fd;
		fd = -1;
	}
out:
	if (fd >= 0)
		close(fd);
	free(path);
	return r;
}

char *secret_read(const char *value, char *err, size_t errlen)
{
	char buf[1024];
	int fd = secret_open(value, err, errlen);
	ssize_t n;
	char *r;

	if (fd < 0)
		return NULL;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0) {
		snprintf(err, errlen, "%s: %s", value, strerror(errno));
		return NULL;
	}
	buf[n] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0';
	r = strdup(buf);
	explicit_bzero(buf, sizeof(buf));
	if (!r)
		snprintf(err, errlen, "out of memory");
	return r;
}

void secret_free(char *s)
{
	if (!s)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}
