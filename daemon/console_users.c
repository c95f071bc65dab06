/*
 * console_users.c - the accounts file and `cgwctl user` (console_users.h).
 *
 * Why crypt(3) from libxcrypt: it is the system's own password hashing (the
 * one /etc/shadow uses on Debian), yescrypt is memory-hard, and the hash
 * string carries its method and cost, so a later cost or method change
 * needs no format change here.
 */
#include "console_users.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "config.h"

#define USERS_FILE_MAX (CONSOLE_USERS_MAX * (CONSOLE_NAME_MAX + CONSOLE_HASH_MAX + 16) + 4096)
#define PASSWORD_MIN 8
#define PASSWORD_MAX 128

int console_users_load(const char *path, struct console_user *users, size_t max, size_t *n)
{
	char *buf = NULL;
	size_t len = 0;
	ssize_t k;
	int fd, r = 0;

	*n = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	buf = malloc(USERS_FILE_MAX);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	while ((k = read(fd, buf + len, USERS_FILE_MAX - len)) > 0)
		len += (size_t)k;
	if (k < 0) {
		r = -errno;
		goto out;
	}
	if (len == USERS_FILE_MAX) {
		r = -EFBIG;
		goto out;
	}
	r = console_users_parse(buf, len, users, max, n, NULL);
out:
	free(buf);
	close(fd);
	return r;
}

int console_users_save(const char *path, const struct console_user *users, size_t n)
{
	char tmp[4096], dirbuf[4096];
	struct stat st;
	FILE *f;
	int fd, r = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	snprintf(dirbuf, sizeof(dirbuf), "%s", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	/* cgwd (its own user) reads it: owned like the state directory */
	if (geteuid() == 0 && stat(dirname(dirbuf), &st) == 0 &&
	    fchown(fd, st.st_uid, st.st_gid) < 0) {
		r = -errno;
		close(fd);
		unlink(tmp);
		return r;
	}
	f = fdopen(fd, "w");
	if (!f) {
		r = -errno;
		close(fd);
		unlink(tmp);
		return r;
	}
	fprintf(f, "# cgw console accounts: NAME:ROLE:HASH (written by cgwctl user)\n");
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s:%s:%s\n", users[i].name, console_role_name(users[i].role),
			users[i].hash);
	if (fflush(f) != 0 || fsync(fileno(f)) < 0)
		r = -errno;
	if (fclose(f) != 0 && !r)
		r = -errno;
	if (!r && rename(tmp, path) < 0)
		r = -errno;
	if (r)
		unlink(tmp);
	return r;
}

int console_hash_password(const char *password, char *out, size_t outlen)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd;
	const char *h;
	int r = 0;

	if (!crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof(salt)))
		return -errno ? -errno : -EINVAL;
	cd = calloc(1, sizeof(*cd));
	if (!cd)
		return -ENOMEM;
	h = crypt_rn(password, salt, cd, sizeof(*cd));
	if (!h || h[0] == '*')
		r = -EINVAL;
	else if (strlen(h) >= outlen || strlen(h) > CONSOLE_HASH_MAX)
		r = -ENOSPC;
	else
		strcpy(out, h);
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return r;
}

bool console_check_password(const char *password, const char *hash)
{
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	const char *h;
	bool ok = false;

	if (!cd)
		return false;
	h = crypt_rn(password, hash, cd, sizeof(*cd));
	if (h && h[0] != '*' && strlen(h) == strlen(hash)) {
		unsigned char diff = 0;
		for (size_t i = 0; h[i]; i++)
			diff |= (unsigned char)(h[i] ^ hash[i]);
		ok = diff == 0;
	}
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return ok;
}

/* ---- cgwctl user ---- */

static int read_password(const char *prompt, char *out, size_t outlen)
{
	struct termios old, noecho;
	bool tty = isatty(STDIN_FILENO);
	size_t n;

	if (tty) {
		fprintf(stderr, "%s", prompt);
		if (tcgetattr(STDIN_FILENO, &old) == 0) {
			noecho = old;
			noecho.c_lflag &= ~(tcflag_t)ECHO;
			tcsetattr(STDIN_FILENO, TCSAFLUSH, &noecho);
		} else {
			tty = false;
		}
	}
	if (!fgets(out, (int)outlen, stdin))
		out[0] = '\0';
	if (tty) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fputc('\n', stderr);
	}
	n = strlen(out);
	while (n && (out[n - 1] == '\n' || out[n - 1] == '\r'))
		out[--n] = '\0';
	return (int)n;
}

static int new_password(char *hash, size_t hashlen)
{
	char p1[PASSWORD_MAX + 2], p2[PASSWORD_MAX + 2];
	int n, r;

	n = read_password("New password: ", p1, sizeof(p1));
	if (n < PASSWORD_MIN || n > PASSWORD_MAX) {
		fprintf(stderr, "cgwctl: a password has %d to %d characters\n", PASSWORD_MIN,
			PASSWORD_MAX);
		explicit_bzero(p1, sizeof(p1));
		return 1;
	}
	if (isatty(STDIN_FILENO)) {
		read_password("Again: ", p2, sizeof(p2));
		if (strcmp(p1, p2)) {
			fprintf(stderr, "cgwctl: the passwords differ\n");
			explicit_bzero(p1, sizeof(p1));
			explicit_bzero(p2, sizeof(p2));
			return 1;
		}
		explicit_bzero(p2, sizeof(p2));
	}
	r = console_hash_password(p1, hash, hashlen);
	explicit_bzero(p1, sizeof(p1));
	if (r < 0) {
		fprintf(stderr, "cgwctl: cannot hash the password: %s\n", strerror(-r));
		return 1;
	}
	return 0;
}

static int users_path(const char *config, char *out, size_t len)
{
	struct cgw_config *cfg = NULL;
	struct cfg_errors errs = {0};

	if (config_load(config, &cfg, &errs) < 0) {
		fprintf(stderr,
			"cgwctl: %s: not a valid configuration (cgwd --check-config -c %s); "
			"or give --users FILE\n",
			config, config);
		cfg_errors_free(&errs);
		return 2;
	}
	if (cfg->console.users && *cfg->console.users)
		snprintf(out, len, "%s", cfg->console.users);
	else
		snprintf(out, len, "%s/console-users", cfg->gateway.state_dir);
	config_free(cfg);
	cfg_errors_free(&errs);
	return 0;
}

static void user_usage(void)
{
	fprintf(stderr,
		"usage: cgwctl user add NAME ROLE | del NAME | passwd NAME | list\n"
		"       [--users FILE | -c CONFIG]\n"
		"ROLE: duty (view, acknowledge), installer (+ shelve, write), admin (+ accounts).\n"
		"The password is read from the terminal (twice) or from one line of stdin.\n");
}

int console_user_main(int argc, char **argv)
{
	static struct console_user users[CONSOLE_USERS_MAX];
	const char *config = "/etc/cgw/cgw.yaml", *file = NULL, *args[4];
	char path[4096];
	size_t n = 0, na = 0, k;
	int r;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--users") && i + 1 < argc)
			file = argv[++i];
		else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
			config = argv[++i];
		else if (na < 4)
			args[na++] = argv[i];
		else
			na = 5;
	}
	if (na == 0 || na > 3) {
		user_usage();
		return 2;
	}
	if (file) {
		snprintf(path, sizeof(path), "%s", file);
	} else if ((r = users_path(config, path, sizeof(path))) != 0) {
		return r;
	}
	r = console_users_load(path, users, CONSOLE_USERS_MAX, &n);
	if (r < 0) {
		fprintf(stderr, "cgwctl: %s: %s\n", path, strerror(-r));
		return 1;
	}
	const char *sub = args[0];
	if (!strcmp(sub, "list") && na == 1) {
		for (k = 0; k < n; k++)
			printf("%-32s %s\n", users[k].name, console_role_name(users[k].role));
		return 0;
	}
	if (na < 2) {
		user_usage();
		return 2;
	}
	const char *name = args[1];
	for (k = 0; k < n && strcmp(users[k].name, name); k++)
		;
	if (!strcmp(sub, "add") && na == 3) {
		int role = console_role_from_name(args[2]);
		if (!console_name_ok(name) || role < 0) {
			fprintf(stderr, "cgwctl: %s\n",
				role < 0 ? "ROLE is duty, installer or admin" :
					   "NAME: 1 to 32 of a-z 0-9 _ . -, starting with a letter "
					   "or digit");
			return 2;
		}
		if (k < n) {
			fprintf(stderr, "cgwctl: user %s exists (cgwctl user passwd %s)\n", name,
				name);
			return 1;
		}
		if (n == CONSOLE_USERS_MAX) {
			fprintf(stderr, "cgwctl: at most %d accounts\n", CONSOLE_USERS_MAX);
			return 1;
		}
		snprintf(users[n].name, sizeof(users[n].name), "%s", name);
		users[n].role = (enum console_role)role;
		if (new_password(users[n].hash, sizeof(users[n].hash)))
			return 1;
		n++;
	} else if (!strcmp(sub, "passwd") && na == 2) {
		if (k == n) {
			fprintf(stderr, "cgwctl: no user %s\n", name);
			return 1;
		}
		if (new_password(users[k].hash, sizeof(users[k].hash)))
			return 1;
	} else if (!strcmp(sub, "del") && na == 2) {
		if (k == n) {
			fprintf(stderr, "cgwctl: no user %s\n", name);
			return 1;
		}
		memmove(&users[k], &users[k + 1], (n - k - 1) * sizeof(users[0]));
		n--;
	} else {
		user_usage();
		return 2;
	}
	r = console_users_save(path, users, n);
	if (r < 0) {
		fprintf(stderr, "cgwctl: cannot write %s: %s\n", path, strerror(-r));
		return 1;
	}
	return 0;
}
