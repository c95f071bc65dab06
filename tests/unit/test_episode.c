/* The "log once per episode" helper: alternation stays one episode, repeats
 * are summarised with counts at most once per interval, the end is said once. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
/* clang-format on */

#include "episode.h"

static void alternation_is_one_episode(void **state)
{
	struct episode e = {0};
	unsigned lines = 0;
	int64_t t = 1000;

	(void)state;
	/* 200 good and 200 bad payloads from one device, interleaved, 100 ms apart */
	for (int i = 0; i < 200; i++) {
		if (episode_bad(&e, t) != EPISODE_SILENT)
			lines++;
		t += 50;
		if (episode_good(&e, t))
			lines++;
		t += 50;
	}
	/* 20 s of trouble: one start line, no summary yet, no end yet */
	assert_int_equal(lines, 1);
	assert_true(e.active);
	assert_int_equal(e.total, 200);
	/* a minute of good outcomes ends it, once */
	assert_false(episode_good(&e, t + 30000));
	assert_true(episode_good(&e, t + EPISODE_QUIET_MS));
	assert_false(episode_good(&e, t + EPISODE_QUIET_MS + 1));
	assert_false(e.active);
}

static void summaries_carry_counts(void **state)
{
	struct episode e = {.summary_ms = 10000, .quiet_ms = 5000};
	unsigned starts = 0, summaries = 0;
	uint64_t summarised = 0;

	(void)state;
	/* one trouble every 100 ms for 35 s */
	for (int64_t t = 0; t < 35000; t += 100) {
		enum episode_say s = episode_bad(&e, t);
		if (s == EPISODE_STARTED)
			starts++;
		if (s == EPISODE_SUMMARY) {
			summaries++;
			summarised += e.summary_count;
			assert_int_equal(e.summary_window_ms, 10000);
		}
	}
	assert_int_equal(starts, 1);
	assert_int_equal(summaries, 3);
	assert_int_equal(summarised, 300);
	assert_int_equal(e.total, 350);
	assert_int_equal(episode_duration_ms(&e), 34900);
	/* the next trouble after the end starts a new episode */
	assert_true(episode_expire(&e, 34900 + 5000));
	assert_int_equal(episode_bad(&e, 50000), EPISODE_STARTED);
	assert_int_equal(e.total, 1);
}

static void reset_keeps_intervals(void **state)
{
	struct episode e = {.summary_ms = 7, .quiet_ms = 9};

	(void)state;
	episode_bad(&e, 1);
	episode_reset(&e);
	assert_false(e.active);
	assert_int_equal(e.summary_ms, 7);
	assert_int_equal(e.quiet_ms, 9);
	assert_false(episode_good(&e, 100));
}

static void logging_wrappers(void **state)
{
	struct episode e = {.summary_ms = 1000, .quiet_ms = 1000};

	(void)state;
	assert_int_equal(log_episode_bad(&e, 0, 4, "test", "dev-%d: bad", 1), EPISODE_STARTED);
	assert_int_equal(log_episode_bad(&e, 500, 4, "test", "dev-%d: bad", 1), EPISODE_SILENT);
	assert_int_equal(log_episode_bad(&e, 1000, 4, "test", "dev-%d: bad", 1), EPISODE_SUMMARY);
	assert_int_equal(e.summary_count, 2);
	assert_false(log_episode_good(&e, 1500, "test", "dev-%d: good again", 1));
	assert_true(log_episode_good(&e, 2000, "test", "dev-%d: good again", 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(alternation_is_one_episode),
		cmocka_unit_test(summaries_carry_counts),
		cmocka_unit_test(reset_keeps_intervals),
		cmocka_unit_test(logging_wrappers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
