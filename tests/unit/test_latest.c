/* test_latest.c - the in-memory latest values (daemon/latest.c) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latest.h"

static void test_set_get_overwrite(void **state)
{
	struct latest *m;
	char s1[] = "闭合";
	struct cgw_value v = {.type = CGW_V_STRING, .s = s1};
	const struct latest_entry *e;

	(void)state;
	assert_int_equal(latest_new(0, &m), -EINVAL);
	assert_int_equal(latest_new(16, &m), 0);
	assert_null(latest_get(m, "d", "p"));
	assert_int_equal(latest_set(m, "d", "p", &v, CGW_Q_GOOD, 7, true), 0);
	s1[0] = 'X'; /* the map has its own copy */
	e = latest_get(m, "d", "p");
	assert_non_null(e);
	assert_string_equal(e->value.s, "闭合");
	assert_int_equal(e->ts_ms, 7);
	assert_true(e->dirty);
	assert_int_equal(latest_dirty_count(m), 1);
	/* the same key, a new value: one entry, the string freed (ASan) */
	v = (struct cgw_value){.type = CGW_V_INT, .i = -3};
	assert_int_equal(latest_set(m, "d", "p", &v, CGW_Q_BAD, 8, true), 0);
	assert_ptr_equal(latest_get(m, "d", "p"), e); /* entries never move */
	assert_int_equal(e->value.i, -3);
	assert_int_equal(e->quality, CGW_Q_BAD);
	assert_int_equal(latest_count(m), 1);
	assert_int_equal(latest_dirty_count(m), 1);
	latest_written(m, e);
	assert_false(e->dirty);
	assert_int_equal(latest_dirty_count(m), 0);
	latest_written(m, e); /* twice is harmless */
	assert_int_equal(latest_dirty_count(m), 0);
	/* "d"+"p" is not "dp"+"" nor ""+"dp" */
	assert_null(latest_get(m, "dp", ""));
	assert_null(latest_get(m, "", "dp"));
	latest_free(m);
}

/* Thousands of keys: growth keeps every entry where it was and findable. */
static void test_many_and_full(void **state)
{
	struct latest *m;
	struct cgw_value v = {.type = CGW_V_UINT};
	const struct latest_entry *first;
	char dev[32], pt[32];

	(void)state;
	assert_int_equal(latest_new(5000, &m), 0);
	for (int i = 0; i < 5000; i++) {
		snprintf(dev, sizeof(dev), "dev-%d", i / 25);
		snprintf(pt, sizeof(pt), "p%d", i % 25);
		v.u = (uint64_t)i;
		assert_int_equal(latest_set(m, dev, pt, &v, CGW_Q_GOOD, i, i % 2 == 0), 0);
		if (i == 0)
			first = latest_get(m, dev, pt);
	}
	assert_int_equal(latest_count(m), 5000);
	assert_int_equal(latest_dirty_count(m), 2500);
	assert_ptr_equal(latest_get(m, "dev-0", "p0"), first);
	for (int i = 0; i < 5000; i += 7) {
		snprintf(dev, sizeof(dev), "dev-%d", i / 25);
		snprintf(pt, sizeof(pt), "p%d", i % 25);
		const struct latest_entry *e = latest_get(m, dev, pt);
		assert_non_null(e);
		assert_int_equal(e->value.u, (uint64_t)i);
	}
	/* full: a new key is refused and nothing changes; known keys still set */
	assert_int_equal(latest_set(m, "new", "p", &v, CGW_Q_GOOD, 1, true), -ENOSPC);
	assert_null(latest_get(m, "new", "p"));
	assert_int_equal(latest_count(m), 5000);
	assert_int_equal(latest_set(m, "dev-1", "p1", &v, CGW_Q_GOOD, 1, true), 0);
	latest_redirty(m);
	assert_int_equal(latest_dirty_count(m), 5000);
	latest_free(m);
}

/* Collect orders by (device, point) byte-wise, as the table's key; filters
 * by device and by dirtiness. */
static void test_collect_order(void **state)
{
	struct latest *m;
	struct cgw_value v = {.type = CGW_V_BOOL, .b = true};
	const struct latest_entry **out;
	size_t n;
	const char *keys[][2] = {{"b", "p2"}, {"a", "z"}, {"b", "p10"}, {"a", "A"},
				 {"ab", "a"}, {"a", "é"}, {"B", "x"}};

	(void)state;
	assert_int_equal(latest_new(64, &m), 0);
	assert_int_equal(latest_collect(m, NULL, false, &out, &n), 0);
	assert_int_equal(n, 0);
	free(out);
	for (size_t i = 0; i < 7; i++)
		assert_int_equal(latest_set(m, keys[i][0], keys[i][1], &v, CGW_Q_GOOD, 1, i != 1),
				 0);
	assert_int_equal(latest_collect(m, NULL, false, &out, &n), 0);
	assert_int_equal(n, 7);
	const char *want[] = {"B/x", "a/A", "a/z", "a/é", "ab/a", "b/p10", "b/p2"};
	for (size_t i = 0; i < n; i++) {
		char k[64];
		snprintf(k, sizeof(k), "%s/%s", out[i]->device, out[i]->point);
		assert_string_equal(k, want[i]);
	}
	free(out);
	assert_int_equal(latest_collect(m, "a", false, &out, &n), 0);
	assert_int_equal(n, 3);
	free(out);
	assert_int_equal(latest_collect(m, "a", true, &out, &n), 0);
	assert_int_equal(n, 2); /* a/z was read from the table: clean */
	assert_string_equal(out[0]->point, "A");
	assert_string_equal(out[1]->point, "é");
	free(out);
	latest_free(m);
	latest_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_set_get_overwrite),
		cmocka_unit_test(test_many_and_full),
		cmocka_unit_test(test_collect_order),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
