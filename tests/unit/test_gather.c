/* Telemetry gathering: one message per poll cycle; coalescing keeps the
 * newest value and the newest ts. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */
#include <stdlib.h>
#include <string.h>

#include "gather.h"

static int64_t jint(json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

/* A cycle of three reads (three tables) is one message, due at its end and
 * not before, whatever else arrives meanwhile. */
static void test_cycle(void **state)
{
	struct gather *g;
	json_t *v, *q;
	int64_t ts;
	uint32_t devs[4];

	(void)state;
	assert_int_equal(gather_new(3, &g), 0);
	assert_int_equal(gather_add(g, 0, "status", json_string("normal"), NULL, 1000, true, 5), 0);
	assert_int_equal(gather_add(g, 1, "status", json_string("normal"), NULL, 1000, true, 5), 0);
	assert_int_equal(gather_add(g, 0, "smoke", json_real(0.1), NULL, 1000, true, 6), 0);
	/* another device's reading and the end of a drain do not cut device 0 */
	assert_false(gather_due(g, 0, true, 7));
	assert_int_equal(gather_add(g, 0, "battery_low", json_false(), NULL, 1000, true, 8), 0);
	assert_int_equal(gather_pending(g, devs, 4), 2);
	gather_end_cycle(g, 0);
	assert_true(gather_due(g, 0, false, 9));
	assert_false(gather_due(g, 1, false, 9));
	assert_true(gather_take(g, 0, &v, &q, &ts));
	assert_int_equal(json_object_size(v), 3);
	assert_null(q);
	assert_true(ts == 1000);
	json_decref(v);
	assert_false(gather_take(g, 0, &v, &q, &ts));
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
	json_t *v, *q;
	int64_t ts, t = 1700000000000LL;

	(void)state;
	assert_int_equal(gather_new(1, &g), 0);
	assert_int_equal(gather_add(g, 0, "battery", json_integer(22), NULL, t + 900, false, 1), 0);
	assert_int_equal(gather_add(g, 0, "battery", json_integer(33), NULL, t + 950, false, 2), 0);
	assert_false(gather_due(g, 0, false, 3));
	assert_true(gather_due(g, 0, true, 3)); /* no cycle: due at the end of the drain */
	assert_true(gather_take(g, 0, &v, &q, &ts));
	assert_true(ts == t + 950);
	assert_int_equal(jint(v, "battery"), 33);
	json_decref(v);
	/* an older value arriving late does not make the message older */
	assert_int_equal(gather_add(g, 0, "door", json_string("open"), NULL, t + 2000, false, 4),
			 0);
	assert_int_equal(gather_add(g, 0, "battery", json_integer(30), NULL, t + 1500, false, 4),
			 0);
	assert_true(gather_take(g, 0, &v, &q, &ts));
	assert_true(ts == t + 2000);
	json_decref(v);
	/* a backlog does not merge seconds of history: beyond GATHER_SPAN_MS a
	 * new message starts */
	assert_int_equal(gather_add(g, 0, "battery", json_integer(1), NULL, t + 5000, false, 5), 0);
	assert_false(gather_splits(g, 0, t + 5000 + GATHER_SPAN_MS));
	assert_true(gather_splits(g, 0, t + 5001 + GATHER_SPAN_MS));
	assert_true(gather_take(g, 0, &v, &q, &ts));
	json_decref(v);
	assert_false(gather_splits(g, 0, t + 9000)); /* nothing gathered */
	/* a cycle is never split by time */
	assert_int_equal(gather_add(g, 0, "battery", json_integer(1), NULL, t, true, 5), 0);
	assert_false(gather_splits(g, 0, t + 10 * GATHER_SPAN_MS));
	gather_free(g);
}

/* A good value replaces a bad one of the same point, quality included. */
static void test_quality(void **state)
{
	struct gather *g;
	json_t *v, *q;
	int64_t ts;

	(void)state;
	assert_int_equal(gather_new(1, &g), 0);
	assert_int_equal(gather_add(g, 0, "a", json_null(), "stale", 1, true, 1), 0);
	assert_int_equal(gather_add(g, 0, "b", json_null(), "bad", 1, true, 1), 0);
	assert_int_equal(gather_add(g, 0, "a", json_integer(4), NULL, 2, true, 1), 0);
	gather_end_cycle(g, 0);
	assert_true(gather_take(g, 0, &v, &q, &ts));
	assert_non_null(q);
	assert_int_equal(json_object_size(q), 1);
	assert_string_equal(json_string_value(json_object_get(q, "b")), "bad");
	assert_int_equal(jint(v, "a"), 4);
	json_decref(v);
	json_decref(q);
	/* out of range: refused, value freed */
	assert_int_equal(gather_add(g, 5, "a", json_integer(1), NULL, 1, true, 1), -22);
	gather_free(g);
	gather_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cycle),
		cmocka_unit_test(test_coalesced_ts),
		cmocka_unit_test(test_quality),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
