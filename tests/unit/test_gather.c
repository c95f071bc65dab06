/* Telemetry gathering: one message per poll cycle; coalescing keeps the
 * newest value and the newest ts. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gather.h"

static const struct wire_field *fld(const struct wire_field *f, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(f[i].name, name) == 0)
			return &f[i];
	return NULL;
}

static long jint(const struct wire_field *f, size_t n, const char *name)
{
	const struct wire_field *x = fld(f, n, name);
	assert_non_null(x);
	return strtol(x->json, NULL, 10);
}

/* A cycle of three reads (three tables) is one message, due at its end and
 * not before, whatever else arrives meanwhile. */
static void test_cycle(void **state)
{
	struct gather *g;
	const struct wire_field *v;
	size_t nv;
	int64_t ts;
	uint32_t devs[4];

	(void)state;
	assert_int_equal(gather_new(3, &g), 0);
	assert_int_equal(gather_add(g, 0, "status", "\"normal\"", NULL, 1000, true, 5), 0);
	assert_int_equal(gather_add(g, 1, "status", "\"normal\"", NULL, 1000, true, 5), 0);
	assert_int_equal(gather_add(g, 0, "smoke", "0.1", NULL, 1000, true, 6), 0);
	/* another device's reading and the end of a drain do not cut device 0 */
	assert_false(gather_due(g, 0, true, 7));
	assert_int_equal(gather_add(g, 0, "battery_low", "false", NULL, 1000, true, 8), 0);
	assert_int_equal(gather_pending(g, devs, 4), 2);
	gather_end_cycle(g, 0);
	assert_true(gather_due(g, 0, false, 9));
	assert_false(gather_due(g, 1, false, 9));
	assert_true(gather_take(g, 0, &v, &nv, &ts));
	assert_int_equal(nv, 3);
	for (size_t i = 0; i < nv; i++)
		assert_null(v[i].quality);
	/* in the order first gathered, as text */
	assert_string_equal(v[0].name, "status");
	assert_string_equal(v[0].json, "\"normal\"");
	assert_string_equal(v[2].json, "false");
	assert_true(ts == 1000);
	assert_false(gather_take(g, 0, &v, &nv, &ts));
	assert_int_equal(gather_pending(g, devs, 4), 1);
	assert_int_equal(devs[0], 1);
	/* a cycle never closed goes out at its deadline */
	assert_true(gather_next_deadline(g) == 5 + GATHER_MAX_MS);
	assert_false(gather_due(g, 1, true, 4 + GATHER_MAX_MS));
	assert_true(gather_due(g, 1, false, 5 + GATHER_MAX_MS));
	gather_free(g); /* frees what is still gathered */
}

/* MQTT states that arrive together are coalesced, latest wins, and the
 * message says when the newest value was taken: battery 22 at T+900 and 33
 * at T+950 go out as {"ts": T+950, "battery": 33}. */
static void test_coalesced_ts(void **state)
{
	struct gather *g;
	const struct wire_field *v;
	size_t nv;
	int64_t ts, t = 1700000000000LL;

	(void)state;
	assert_int_equal(gather_new(1, &g), 0);
	assert_int_equal(gather_add(g, 0, "battery", "22", NULL, t + 900, false, 1), 0);
	assert_int_equal(gather_add(g, 0, "battery", "33", NULL, t + 950, false, 2), 0);
	assert_false(gather_due(g, 0, false, 3));
	assert_true(gather_due(g, 0, true, 3)); /* no cycle: due at the end of the drain */
	assert_true(gather_take(g, 0, &v, &nv, &ts));
	assert_true(ts == t + 950);
	assert_int_equal(jint(v, nv, "battery"), 33);
	/* an older value arriving late does not make the message older */
	assert_int_equal(gather_add(g, 0, "door", "\"open\"", NULL, t + 2000, false, 4), 0);
	assert_int_equal(gather_add(g, 0, "battery", "30", NULL, t + 1500, false, 4), 0);
	assert_true(gather_take(g, 0, &v, &nv, &ts));
	assert_true(ts == t + 2000);
	/* a backlog does not merge seconds of history: beyond GATHER_SPAN_MS a
	 * new message starts */
	assert_int_equal(gather_add(g, 0, "battery", "1", NULL, t + 5000, false, 5), 0);
	assert_false(gather_splits(g, 0, t + 5000 + GATHER_SPAN_MS));
	assert_true(gather_splits(g, 0, t + 5001 + GATHER_SPAN_MS));
	assert_true(gather_take(g, 0, &v, &nv, &ts));
	assert_false(gather_splits(g, 0, t + 9000)); /* nothing gathered */
	/* a cycle is never split by time */
	assert_int_equal(gather_add(g, 0, "battery", "1", NULL, t, true, 5), 0);
	assert_false(gather_splits(g, 0, t + 10 * GATHER_SPAN_MS));
	gather_free(g);
}

/* A good value replaces a bad one of the same point, quality included. */
static void test_quality(void **state)
{
	struct gather *g;
	const struct wire_field *v;
	size_t nv;
	int64_t ts;

	(void)state;
	assert_int_equal(gather_new(1, &g), 0);
	assert_int_equal(gather_add(g, 0, "a", "null", "stale", 1, true, 1), 0);
	assert_int_equal(gather_add(g, 0, "b", "null", "bad", 1, true, 1), 0);
	assert_int_equal(gather_add(g, 0, "a", "4", NULL, 2, true, 1), 0);
	gather_end_cycle(g, 0);
	assert_true(gather_take(g, 0, &v, &nv, &ts));
	assert_int_equal(nv, 2);
	assert_null(fld(v, nv, "a")->quality);
	assert_string_equal(fld(v, nv, "b")->quality, "bad");
	assert_string_equal(fld(v, nv, "b")->json, "null");
	assert_int_equal(jint(v, nv, "a"), 4);
	/* a long text (a string point) and then a short one: both kept whole */
	char longtext[200];
	memset(longtext, 'x', sizeof(longtext) - 1);
	longtext[0] = '"';
	longtext[sizeof(longtext) - 2] = '"';
	longtext[sizeof(longtext) - 1] = '\0';
	assert_int_equal(gather_add(g, 0, "s", longtext, NULL, 3, false, 1), 0);
	assert_int_equal(gather_add(g, 0, "t", "1", NULL, 3, false, 1), 0);
	assert_true(gather_take(g, 0, &v, &nv, &ts));
	assert_string_equal(fld(v, nv, "s")->json, longtext);
	assert_int_equal(gather_add(g, 0, "s", "\"y\"", NULL, 4, false, 1), 0);
	assert_true(gather_take(g, 0, &v, &nv, &ts));
	assert_int_equal(nv, 1);
	assert_string_equal(v[0].json, "\"y\"");
	/* out of range: refused */
	assert_int_equal(gather_add(g, 5, "a", "1", NULL, 1, true, 1), -22);
	gather_free(g);
	gather_free(NULL);
}

/* More points than the first allocation holds: every text survives the
 * growth (the arrays move; the texts are found again at take). */
static void test_many_points(void **state)
{
	struct gather *g;
	const struct wire_field *v;
	size_t nv;
	int64_t ts;
	char names[40][16], val[16];

	(void)state;
	assert_int_equal(gather_new(1, &g), 0);
	for (int i = 0; i < 40; i++) {
		snprintf(names[i], sizeof(names[i]), "p%d", i);
		snprintf(val, sizeof(val), "%d", i * 7);
		assert_int_equal(gather_add(g, 0, names[i], val, NULL, 1, true, 1), 0);
	}
	assert_true(gather_take(g, 0, &v, &nv, &ts));
	assert_int_equal(nv, 40);
	for (int i = 0; i < 40; i++) {
		snprintf(val, sizeof(val), "%d", i * 7);
		assert_string_equal(v[i].name, names[i]);
		assert_string_equal(v[i].json, val);
	}
	gather_free(g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cycle),
		cmocka_unit_test(test_coalesced_ts),
		cmocka_unit_test(test_quality),
		cmocka_unit_test(test_many_points),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
