/*
 * test_console.c - what the web console parses itself (form bodies, cookies,
 * the accounts file), its password hashing, and the store's alarm history
 * (its own retention, untouched by telemetry eviction).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "console_parse.h"
#include "console_users.h"
#include "store.h"

static void test_form(void **state)
{
	char v[16];
	const char *b = "user=duty1&password=a+b%26c%3D&x&empty=&user=again";

	(void)state;
	assert_int_equal(console_form_get(b, strlen(b), "user", v, sizeof(v)), 0);
	assert_string_equal(v, "duty1"); /* the first occurrence */
	assert_int_equal(console_form_get(b, strlen(b), "password", v, sizeof(v)), 0);
	assert_string_equal(v, "a b&c=");
	assert_int_equal(console_form_get(b, strlen(b), "x", v, sizeof(v)), 0);
	assert_string_equal(v, "");
	assert_int_equal(console_form_get(b, strlen(b), "empty", v, sizeof(v)), 0);
	assert_string_equal(v, "");
	assert_int_equal(console_form_get(b, strlen(b), "use", v, sizeof(v)), -ENOENT);
	assert_int_equal(console_form_get(b, strlen(b), "nope", v, sizeof(v)), -ENOENT);
	/* malformed */
	assert_int_equal(console_form_get("a=%4", 4, "a", v, sizeof(v)), -EINVAL);
	assert_int_equal(console_form_get("a=%", 3, "a", v, sizeof(v)), -EINVAL);
	assert_int_equal(console_form_get("a=%zz", 5, "a", v, sizeof(v)), -EINVAL);
	assert_int_equal(console_form_get("a=%00x", 6, "a", v, sizeof(v)), -EINVAL);
	assert_int_equal(console_form_get("a=0123456789abcdef", 18, "a", v, sizeof(v)), -EINVAL);
	assert_int_equal(console_form_get("a=0123456789abcde", 17, "a", v, sizeof(v)), 0);
	/* the length counts, not a NUL */
	assert_int_equal(console_form_get("a=12&b=3", 4, "b", v, sizeof(v)), -ENOENT);
	assert_int_equal(console_form_get("a=12&b=3", 3, "a", v, sizeof(v)), 0);
	assert_string_equal(v, "1");
	assert_int_equal(console_form_get("", 0, "a", v, sizeof(v)), -ENOENT);
	assert_int_equal(console_form_get("&&&=", 4, "a", v, sizeof(v)), -ENOENT);
}

static void test_cookie(void **state)
{
	char v[8];

	(void)state;
	assert_int_equal(
		console_cookie_get("a=1; cgw_session=abc; b=2", "cgw_session", v, sizeof(v)), 0);
	assert_string_equal(v, "abc");
	assert_int_equal(console_cookie_get("cgw_session2=x;cgw_session=y ", "cgw_session", v,
					    sizeof(v)),
			 0);
	assert_string_equal(v, "y");
	assert_int_equal(console_cookie_get("xcgw_session=x", "cgw_session", v, sizeof(v)),
			 -ENOENT);
	assert_int_equal(console_cookie_get(NULL, "cgw_session", v, sizeof(v)), -ENOENT);
	assert_int_equal(console_cookie_get("", "cgw_session", v, sizeof(v)), -ENOENT);
	assert_int_equal(console_cookie_get(";;; ;", "cgw_session", v, sizeof(v)), -ENOENT);
	assert_int_equal(console_cookie_get("cgw_session=12345678", "cgw_session", v, sizeof(v)),
			 -EINVAL);
	assert_int_equal(console_cookie_get("cgw_session=", "cgw_session", v, sizeof(v)), 0);
	assert_string_equal(v, "");
}

static void test_users_parse(void **state)
{
	struct console_user u[3];
	size_t n = 0, bad = 0;
	const char *t = "# accounts\n"
			"duty1:duty:$y$j9T$abc$def\n"
			"\n"
			"Bad:duty:$y$x\n" /* upper case name */
			"x:root:$y$x\n"   /* no such role */
			"y:duty:plain\n"  /* not a crypt hash */
			"z:duty:$y$a:b\n" /* ':' in the hash */
			"nohash\n"
			"inst.1:installer:$y$j9T$x/y.z\r\n"
			"adm:admin:$6$salt$hash";

	(void)state;
	assert_int_equal(console_users_parse(t, strlen(t), u, 3, &n, &bad), 0);
	assert_int_equal(n, 3);
	assert_int_equal(bad, 5);
	assert_string_equal(u[0].name, "duty1");
	assert_int_equal(u[0].role, CONSOLE_DUTY);
	assert_string_equal(u[0].hash, "$y$j9T$abc$def");
	assert_string_equal(u[1].name, "inst.1");
	assert_int_equal(u[1].role, CONSOLE_INSTALLER);
	assert_string_equal(u[1].hash, "$y$j9T$x/y.z");
	assert_int_equal(u[2].role, CONSOLE_ADMIN);
	assert_int_equal(console_users_parse(t, strlen(t), u, 2, &n, NULL), -E2BIG);
	assert_int_equal(n, 2);
	assert_true(console_name_ok("a"));
	assert_true(console_name_ok("duty-1.b_c"));
	assert_false(console_name_ok(""));
	assert_false(console_name_ok("-a"));
	assert_false(console_name_ok("a b"));
	assert_false(console_name_ok("a:b"));
	assert_false(console_name_ok("abcdefghijabcdefghijabcdefghijabc")); /* 33 */
}

static void test_password(void **state)
{
	char h[CONSOLE_HASH_MAX + 1], h2[CONSOLE_HASH_MAX + 1];

	(void)state;
	assert_int_equal(console_hash_password("correct horse", h, sizeof(h)), 0);
	assert_memory_equal(h, "$y$", 3);
	assert_int_equal(console_hash_password("correct horse", h2, sizeof(h2)), 0);
	assert_string_not_equal(h, h2); /* salted */
	assert_true(console_check_password("correct horse", h));
	assert_false(console_check_password("correct hors", h));
	assert_false(console_check_password("", h));
	assert_false(console_check_password("correct horse", "*"));
	assert_false(console_check_password("correct horse", "$y$broken"));
	char small[8];
	assert_int_equal(console_hash_password("x", small, sizeof(small)), -ENOSPC);
}

static void test_users_file(void **state)
{
	char dir[] = "/tmp/cgw-console-XXXXXX", path[64];
	struct console_user u[2] = {{"a", CONSOLE_DUTY, "$y$1"}, {"b", CONSOLE_ADMIN, "$y$2"}},
			    r[4];
	size_t n = 9;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/users", dir);
	assert_int_equal(console_users_load(path, r, 4, &n), 0); /* none yet */
	assert_int_equal(n, 0);
	assert_int_equal(console_users_save(path, u, 2), 0);
	assert_int_equal(console_users_load(path, r, 4, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(r[1].name, "b");
	assert_int_equal(r[1].role, CONSOLE_ADMIN);
	unlink(path);
	rmdir(dir);
}

/* ---- the alarm history ---- */

struct count {
	size_t n;
	int64_t first_ts, last_ts;
	const char *only_device;
	bool other;
};

static int count_cb(void *ctx, const struct store_history *h)
{
	struct count *c = ctx;
	if (!c->n)
		c->first_ts = h->ts_ms;
	c->last_ts = h->ts_ms;
	if (c->only_device && strcmp(h->device, c->only_device))
		c->other = true;
	c->n++;
	return 0;
}

static void add_history(struct store *s, int from, int to)
{
	for (int i = from; i < to; i++) {
		char id[64];
		snprintf(id, sizeof(id), "dev-%d/smoke/%d", i % 3, i);
		struct store_history h = {
			.ts_ms = 1000000 + i,
			.alarm_id = id,
			.device = i % 3 ? "smoke-1" : "station-1",
			.building = i % 2 ? "3" : "5",
			.rule = "smoke",
			.event = i % 2 ? "raised" : "acknowledged",
			.state = "active-unacked",
			.severity = i % 3 ? "critical" : "minor",
			.by = i % 2 ? NULL : "console:duty1",
			.message = "3号楼 烟感报警",
		};
		assert_int_equal(store_history_add(s, &h), 0);
	}
}

static void test_history(void **state)
{
	char dir[] = "/tmp/cgw-console-XXXXXX", path[64];
	struct store *s = NULL;
	char err[256];
	const int64_t cap = 4 * 1024 * 1024;
	struct store_opts o = {.max_size = cap};
	int64_t up, mono = 0;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/store.db", dir);
	assert_int_equal(store_open(&s, path, &o, err, sizeof(err)), 0);
	assert_int_equal(store_uplink_register(s, "platform", 0xf, &up), 0);
	add_history(s, 0, 10500);
	/* telemetry floods the store past its cap: evicted, the history is not */
	char payload[512];
	memset(payload, 'x', sizeof(payload) - 1);
	payload[0] = '{';
	payload[sizeof(payload) - 2] = '}';
	payload[sizeof(payload) - 1] = 0;
	for (int i = 0; i < 20000; i++) {
		struct store_msg m = {.lane = CGW_LANE_TELEMETRY,
				      .device = "meter-1",
				      .topic = "device/meter-1/telemetry",
				      .ts_ms = i,
				      .payload = payload};
		int rc = store_enqueue(s, &m, mono++, NULL, NULL);
		assert_true(rc == 0 || rc == -ENOSPC);
		if (i % 2000 == 1999)
			assert_int_equal(store_maintain(s, 0, NULL), 0);
	}
	struct store_stats st;
	assert_int_equal(store_stats(s, &st), 0);
	assert_true(st.evicted[CGW_LANE_TELEMETRY] > 1000);
	struct store_history_filter all = {0};
	struct count c = {0};
	assert_int_equal(store_history_query(s, &all, count_cb, &c), 0);
	assert_int_equal(c.n, 10500);
	assert_int_equal(c.first_ts, 1000000 + 10499); /* newest first */
	assert_int_equal(c.last_ts, 1000000);

	/* filters */
	struct store_history_filter f = {.device = "station-1", .severity = "minor"};
	c = (struct count){.only_device = "station-1"};
	assert_int_equal(store_history_query(s, &f, count_cb, &c), 0);
	assert_int_equal(c.n, 3500);
	assert_false(c.other);
	f = (struct store_history_filter){.building = "3",
					  .from_ms = 1000000 + 100,
					  .to_ms = 1000000 + 200};
	c = (struct count){0};
	assert_int_equal(store_history_query(s, &f, count_cb, &c), 0);
	assert_int_equal(c.n, 50);
	f = (struct store_history_filter){.limit = 7};
	c = (struct count){0};
	assert_int_equal(store_history_query(s, &f, count_cb, &c), 0);
	assert_int_equal(c.n, 7);

	/* its own bound: the newest STORE_HISTORY_KEEP are kept */
	add_history(s, 10500, STORE_HISTORY_KEEP + 100);
	assert_int_equal(store_maintain(s, 0, NULL), 0);
	c = (struct count){0};
	assert_int_equal(store_history_query(s, &all, count_cb, &c), 0);
	assert_int_equal(c.n, STORE_HISTORY_KEEP);
	assert_int_equal(c.first_ts, 1000000 + STORE_HISTORY_KEEP + 99);
	assert_int_equal(c.last_ts, 1000000 + 100);
	/* bad rows are refused */
	struct store_history bad = {.alarm_id = "x"};
	assert_int_equal(store_history_add(s, &bad), -EINVAL);
	store_close(s);
	char p[96];
	static const char *const sfx[] = {"", "-wal", "-shm"};
	for (size_t i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s%s", path, sfx[i]);
		unlink(p);
	}
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_form),        cmocka_unit_test(test_cookie),
		cmocka_unit_test(test_users_parse), cmocka_unit_test(test_password),
		cmocka_unit_test(test_users_file),  cmocka_unit_test(test_history),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
