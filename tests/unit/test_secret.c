/* Secret files: the Debian layout (root:cgw 0640) is accepted, files others
 * may read or the group may write are refused with the exact fix, and
 * systemd credentials are found in $CREDENTIALS_DIRECTORY. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "secret.h"

struct fx {
	char dir[64];
	char path[128];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "/tmp/cgw-secret.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/platform.pass", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char p[160];

	unlink(f->path);
	snprintf(p, sizeof(p), "%s/cred", f->dir);
	unlink(p);
	unsetenv("CREDENTIALS_DIRECTORY");
	rmdir(f->dir);
	free(f);
	return 0;
}

static void write_secret(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	assert_int_equal(chmod(path, mode), 0);
}

static void test_own_group_0640_accepted(void **state)
{
	struct fx *f = *state;
	char err[512] = "";
	char *s;

	/* owner: us; group: our own group (the service's, when cgwd runs as cgw) */
	write_secret(f->path, "s3cret\nsecond line\n", 0640);
	s = secret_read(f->path, err, sizeof(err));
	assert_non_null(s);
	assert_string_equal(s, "s3cret");
	secret_free(s);
	write_secret(f->path, "s3cret\n", 0400);
	s = secret_read(f->path, err, sizeof(err));
	assert_non_null(s);
	secret_free(s);
}

static void test_root_cgw_0640_accepted(void **state)
{
	struct fx *f = *state;
	struct group *g = getgrnam(SECRET_SERVICE_USER);
	char err[512] = "";
	char *s;

	if (geteuid() != 0 || !g) {
		/* tests/integration/secrets.sh covers it in a mount namespace */
		print_message("skipped: needs root and a group '%s'\n", SECRET_SERVICE_USER);
		return;
	}
	write_secret(f->path, "s3cret\n", 0640);
	assert_int_equal(chown(f->path, 0, g->gr_gid), 0);
	s = secret_read(f->path, err, sizeof(err));
	assert_non_null(s);
	secret_free(s);
}

static void test_world_readable_refused_with_fix(void **state)
{
	struct fx *f = *state;
	char err[512] = "", want[512];

	write_secret(f->path, "s3cret\n", 0644);
	assert_null(secret_read(f->path, err, sizeof(err)));
	snprintf(want, sizeof(want),
		 "%s is readable by others (mode 0644); fix: chown root:cgw %s && chmod 0640 %s",
		 f->path, f->path, f->path);
	assert_string_equal(err, want);
	assert_int_equal(secret_open(f->path, err, sizeof(err)), -EACCES);
}

static void test_group_writable_refused(void **state)
{
	struct fx *f = *state;
	char err[512] = "";

	write_secret(f->path, "s3cret\n", 0660);
	assert_null(secret_read(f->path, err, sizeof(err)));
	assert_non_null(strstr(err, "is writable by its group (mode 0660)"));
	assert_non_null(strstr(err, "chown root:cgw"));
}

static void test_foreign_owner_or_group_refused(void **state)
{
	struct stat st = {.st_mode = S_IFREG | 0600, .st_uid = 4242, .st_gid = getegid()};
	char err[512] = "";

	(void)state;
	/* stat() checks need no chown: the policy is a function of the stat */
	if (geteuid() == 4242)
		return; /* the fixture ids collide with this machine: nothing to show */
	assert_int_equal(secret_check_stat("F", &st, err, sizeof(err)), -EACCES);
	assert_non_null(strstr(err, "owned by uid 4242"));
	st.st_uid = 0;
	st.st_mode = S_IFREG | 0640;
	st.st_gid = 4343;
	if (getgrgid(4343) && !strcmp(getgrgid(4343)->gr_name, SECRET_SERVICE_USER))
		return; /* the fixture ids collide with this machine: nothing to show */
	assert_int_equal(secret_check_stat("F", &st, err, sizeof(err)), -EACCES);
	assert_non_null(strstr(err, "readable by group 4343"));
	st.st_mode = S_IFREG | 0600; /* the group has no access: its gid does not matter */
	assert_int_equal(secret_check_stat("F", &st, err, sizeof(err)), 0);
}

static void test_credentials_directory(void **state)
{
	struct fx *f = *state;
	char err[512] = "", p[160];
	char *s;

	unsetenv("CREDENTIALS_DIRECTORY");
	assert_true(secret_is_credential("credential:platform.pass"));
	assert_false(secret_is_credential("/etc/cgw/secrets/platform.pass"));
	assert_null(secret_read("credential:cred", err, sizeof(err)));
	assert_non_null(strstr(err, "$CREDENTIALS_DIRECTORY is not set"));
	assert_non_null(strstr(err, "LoadCredential=cred:FILE"));

	/* systemd makes the credential the service user's, mode 0400 */
	setenv("CREDENTIALS_DIRECTORY", f->dir, 1);
	snprintf(p, sizeof(p), "%s/cred", f->dir);
	write_secret(p, "from-systemd\n", 0400);
	s = secret_read("credential:cred", err, sizeof(err));
	assert_non_null(s);
	assert_string_equal(s, "from-systemd");
	secret_free(s);
	/* one plain name only: no way out of the directory */
	assert_null(secret_read("credential:../platform.pass", err, sizeof(err)));
	assert_non_null(strstr(err, "one plain file name"));
	assert_null(secret_read("credential:", err, sizeof(err)));
	assert_null(secret_read("credential:missing", err, sizeof(err)));
	assert_non_null(strstr(err, "No such file"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_own_group_0640_accepted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_root_cgw_0640_accepted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_world_readable_refused_with_fix, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_group_writable_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_foreign_owner_or_group_refused, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_credentials_directory, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
