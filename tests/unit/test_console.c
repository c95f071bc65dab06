/*
 * test_console.c - what the web console parses itself (form bodies, cookies,
 * the accounts file, the commissioning form), its password hashing, the
 * store's alarm history (its own retention, untouched by telemetry
 * eviction), and the certificate it makes for a LAN address.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commission.h"
#include "console_cert.h"
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

/* The installer's form becomes the request cgwctl sends, and the one check
 * (commission_request) takes or refuses both alike. */
static void test_commission_form(void **state)
{
	struct cfg_bus buses[2] = {{.name = "fire-io"}, {.name = "io"}};
	struct cgw_config cfg = {.buses = buses, .n_buses = 2};
	struct driver_commission dc;
	const char *bus = NULL, *b;
	char why[300];
	json_t *q;

	(void)state;
	b = "bus=fire-io&units=1-8&table=&address=0&timeout_ms=50&x=1";
	q = console_commission_form(b, strlen(b));
	assert_non_null(q);
	assert_true(json_is_integer(json_object_get(q, "address")));
	assert_int_equal(json_integer_value(json_object_get(q, "timeout_ms")), 50);
	assert_null(json_object_get(q, "table")); /* empty: absent, the default */
	assert_null(json_object_get(q, "x"));
	assert_int_equal(commission_request(&cfg, q, true, &dc, &bus, why, sizeof(why)), 0);
	assert_string_equal(bus, "fire-io");
	assert_int_equal(dc.kind, DRV_SCAN);
	assert_int_equal(dc.table, CGW_TBL_HOLDING);
	assert_int_equal(dc.timeout_ms, 50);
	assert_true(dc.units[0] & (1u << 1) && dc.units[1] & 1u && !(dc.units[1] & 2u));
	json_decref(q);

	/* a scan without timeout_ms: 0, the bus's (its driver caps a scan's) */
	b = "bus=io";
	q = console_commission_form(b, strlen(b));
	assert_int_equal(commission_request(&cfg, q, true, &dc, &bus, why, sizeof(why)), 0);
	assert_int_equal(dc.timeout_ms, 0);
	json_decref(q);

	static const char *const bad[] = {
		"bus=nowhere",            /* not configured */
		"units=1-8",              /* no bus */
		"bus=io&units=0-9",       /* unit 0 */
		"bus=io&table=registers", /* no such table */
		"bus=io&address=x1",      /* text for a number */
		"bus=io&address=65536",   /* beyond */
		"bus=io&timeout_ms=5",    /* under 10 ms */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		q = console_commission_form(bad[i], strlen(bad[i]));
		why[0] = '\0';
		assert_int_equal(commission_request(&cfg, q, true, &dc, &bus, why, sizeof(why)),
				 -EINVAL);
		assert_true(why[0]);
		json_decref(q);
	}
	static const char *const bad_probe[] = {
		"bus=io&unit=1&address=0",                         /* no table */
		"bus=io&table=holding&address=0",                  /* no unit */
		"bus=io&unit=248&table=holding&address=0",         /* unit over 247 */
		"bus=io&unit=1&table=holding&address=0&count=126", /* over 125 registers */
		"bus=io&unit=1&table=coil&address=65535&count=2",  /* past the table */
	};
	for (size_t i = 0; i < sizeof(bad_probe) / sizeof(bad_probe[0]); i++) {
		q = console_commission_form(bad_probe[i], strlen(bad_probe[i]));
		assert_int_equal(commission_request(&cfg, q, false, &dc, &bus, why, sizeof(why)),
				 -EINVAL);
		json_decref(q);
	}
	b = "bus=io&unit=1&table=coil&address=0&count=2000";
	q = console_commission_form(b, strlen(b));
	assert_int_equal(commission_request(&cfg, q, false, &dc, &bus, why, sizeof(why)), 0);
	assert_int_equal(dc.kind, DRV_PROBE);
	assert_int_equal(dc.count, 2000);
	assert_int_equal(dc.timeout_ms, 0); /* the bus's own */
	json_decref(q);
}

/* Made once, kept, the same fingerprint; a damaged pair is refused. */
static void test_cert(void **state)
{
	char dir[] = "/tmp/cgw-cert-XXXXXX", path[256], fp1[CONSOLE_FINGERPRINT_LEN],
	     fp2[CONSOLE_FINGERPRINT_LEN], why[512];
	struct sockaddr_storage ss = {0};
	struct sockaddr_in *a = (struct sockaddr_in *)&ss;
	char *cert = NULL, *key = NULL;
	bool made = false;
	struct stat st;
	FILE *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	a->sin_family = AF_INET;
	inet_pton(AF_INET, "192.0.2.7", &a->sin_addr);
	assert_int_equal(console_cert_ensure(dir, "gw-1", &ss, &cert, &key, fp1, &made, why,
					     sizeof(why)),
			 0);
	assert_true(made);
	assert_int_equal(strlen(fp1), 95);
	assert_non_null(strstr(cert, "BEGIN CERTIFICATE"));
	assert_non_null(strstr(key, "PRIVATE KEY"));
	assert_int_equal(console_cert_fingerprint(cert, fp2), 0);
	assert_string_equal(fp1, fp2);
	snprintf(path, sizeof(path), "%s/%s", dir, CONSOLE_KEY_FILE);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	free(cert);
	free(key);

	/* the next start: the same pair */
	assert_int_equal(console_cert_ensure(dir, "gw-1", &ss, &cert, &key, fp2, &made, why,
					     sizeof(why)),
			 0);
	assert_false(made);
	assert_string_equal(fp1, fp2);
	free(cert);
	free(key);

	/* a damaged certificate: an error that says what to do, nothing replaced */
	snprintf(path, sizeof(path), "%s/%s", dir, CONSOLE_CERT_FILE);
	f = fopen(path, "w");
	fputs("not a certificate\n", f);
	fclose(f);
	assert_int_equal(console_cert_ensure(dir, "gw-1", &ss, &cert, &key, fp2, &made, why,
					     sizeof(why)),
			 -EINVAL);
	assert_null(cert);
	assert_null(key);
	assert_non_null(strstr(why, "delete both"));
	assert_int_equal(console_cert_fingerprint("not a certificate", fp2), -EINVAL);

	/* only the key left (a making cut short): a new pair */
	unlink(path);
	assert_int_equal(console_cert_ensure(dir, "gw-1", &ss, &cert, &key, fp2, &made, why,
					     sizeof(why)),
			 0);
	assert_true(made);
	assert_string_not_equal(fp1, fp2);
	free(cert);
	free(key);
	unlink(path);
	snprintf(path, sizeof(path), "%s/%s", dir, CONSOLE_KEY_FILE);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_form),
		cmocka_unit_test(test_cookie),
		cmocka_unit_test(test_users_parse),
		cmocka_unit_test(test_password),
		cmocka_unit_test(test_users_file),
		cmocka_unit_test(test_history),
		cmocka_unit_test(test_commission_form),
		cmocka_unit_test(test_cert),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
