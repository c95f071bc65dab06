/* The core loop's stall meter: iterations land in the right histogram
 * buckets, the longest one is kept with the callback that took it, and a
 * stall is logged once per episode, naming the timer or fd callback. */
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
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"

static void busy_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) < 0)
		;
}

static void buckets_and_longest(void **state)
{
	struct loop_stats st = {0};
	uint64_t total = 0;

	(void)state;
	/* 50 us, 3 ms, 30 ms, 150 ms, 10 s */
	assert_false(loop_stats_record(&st, 50000, "a", 1));
	assert_false(loop_stats_record(&st, 3000000, "b", 2));
	assert_false(loop_stats_record(&st, 30000000, "c", 3));
	assert_true(loop_stats_record(&st, 150000000, "d", 4));
	assert_true(loop_stats_record(&st, 10000000000LL, "e", 5));
	/* exactly at a bound falls into that bucket (le = less or equal) */
	assert_false(loop_stats_record(&st, 1000000, "f", 6));
	assert_int_equal(st.iterations, 6);
	assert_int_equal(st.stalls, 2);
	assert_int_equal(st.bucket[0], 1);                 /* <= 0.1 ms */
	assert_int_equal(st.bucket[2], 1);                 /* <= 1 ms */
	assert_int_equal(st.bucket[4], 1);                 /* <= 5 ms */
	assert_int_equal(st.bucket[7], 1);                 /* <= 50 ms */
	assert_int_equal(st.bucket[9], 1);                 /* <= 250 ms */
	assert_int_equal(st.bucket[LOOP_HIST_BUCKETS], 1); /* +Inf */
	for (int i = 0; i <= LOOP_HIST_BUCKETS; i++)
		total += st.bucket[i];
	assert_int_equal(total, st.iterations);
	assert_int_equal(st.longest_ns, 10000000000LL);
	assert_string_equal(st.longest_what, "e");
	assert_int_equal(st.longest_at_ms, 5);
	assert_true(st.sum_s > 10.18 && st.sum_s < 10.19);
	for (int i = 1; i < LOOP_HIST_BUCKETS; i++)
		assert_true(loop_hist_bounds_s[i] > loop_hist_bounds_s[i - 1]);
}

/* ---- a real loop: a slow timer callback and a slow fd callback ---- */

struct fixture {
	int efd;
	int slow_ms;
	int fired;
	struct loop_timer *stop;
};

static void slow_timer_cb(struct loop *l, struct loop_timer *t, void *arg)
{
	struct fixture *f = arg;

	(void)l;
	(void)t;
	busy_ms(f->slow_ms);
	f->fired++;
}

static void quick_timer_cb(struct loop *l, struct loop_timer *t, void *arg)
{
	(void)l;
	(void)t;
	(void)arg;
}

static void slow_fd_cb(struct loop *l, int fd, uint32_t events, void *arg)
{
	struct fixture *f = arg;
	uint64_t v;

	(void)events;
	if (read(fd, &v, sizeof(v)) != sizeof(v))
		return;
	busy_ms(f->slow_ms);
	f->fired++;
	loop_stop(l); /* one event per run: the test writes the next one */
}

static void stop_cb(struct loop *l, struct loop_timer *t, void *arg)
{
	(void)t;
	(void)arg;
	loop_stop(l);
}

/* Runs the loop with stderr in a file; returns what was logged. */
static char *run_captured(struct loop *l)
{
	char path[] = "/tmp/cgw-test-loop-XXXXXX", *out = calloc(1, 65536);
	int fd = mkstemp(path), saved = dup(2);

	assert_true(fd >= 0 && saved >= 0 && out);
	unlink(path);
	fflush(stderr);
	dup2(fd, 2);
	assert_int_equal(loop_run(l), 0);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	ssize_t n = pread(fd, out, 65535, 0);
	assert_true(n >= 0);
	close(fd);
	return out;
}

static unsigned count(const char *hay, const char *needle)
{
	unsigned n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p++)
		n++;
	return n;
}

static void names_the_slow_callback(void **state)
{
	struct loop *l = NULL;
	struct fixture f = {.slow_ms = 130};
	struct loop_stats st;
	char *log;

	(void)state;
	log_setup(true, LOG_INFO);
	assert_int_equal(loop_new(&l), 0);
	struct loop_timer *slow = loop_timer_new(l, slow_timer_cb, &f);
	struct loop_timer *quick = loop_timer_new(l, quick_timer_cb, &f);
	f.stop = loop_timer_new(l, stop_cb, &f);
	assert_non_null(slow);
	loop_timer_in(slow, 0);
	loop_timer_in(quick, 0);
	loop_timer_in(f.stop, 400);
	log = run_captured(l);

	loop_get_stats(l, &st);
	assert_int_equal(f.fired, 1);
	assert_true(st.iterations >= 2);
	assert_int_equal(st.stalls, 1);
	assert_true(st.longest_ns >= 130 * 1000000LL);
	assert_true(st.longest_at_ms > 0);
	/* the timer's own name: file and callback, not "the timerfd" */
	assert_non_null(strstr(st.longest_what, "test_loop.c:slow_timer_cb"));
	assert_int_equal(count(log, "core loop stalled"), 1);
	assert_non_null(strstr(log, "slow_timer_cb"));
	free(log);
	loop_timer_free(slow);
	loop_timer_free(quick);
	loop_timer_free(f.stop);
	loop_free(l);
}

/* Ten stalls in a row from an fd callback: one warning, not ten, and every
 * stall is counted. */
static void one_warning_per_episode(void **state)
{
	struct loop *l = NULL;
	struct fixture f = {.slow_ms = 110};
	struct loop_stats st;
	uint64_t one = 1;
	char *log = NULL;

	(void)state;
	log_setup(true, LOG_INFO);
	f.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	assert_true(f.efd >= 0);
	assert_int_equal(loop_new(&l), 0);
	assert_int_equal(loop_add_fd(l, f.efd, EPOLLIN, slow_fd_cb, &f), 0);
	f.stop = loop_timer_new(l, stop_cb, &f); /* a bound, should the fd not fire */
	/* each write makes one readable event; the callback drains it */
	for (int i = 0; i < 10; i++) {
		assert_int_equal(write(f.efd, &one, sizeof(one)), sizeof(one));
		loop_timer_in(f.stop, 5000);
		/* run until the fd callback ran once more */
		int before = f.fired;
		char *chunk = run_captured(l);
		if (i == 0)
			log = chunk;
		else {
			assert_int_equal(count(chunk, "core loop stalled"), 0);
			free(chunk);
		}
		assert_int_equal(f.fired, before + 1);
	}
	loop_get_stats(l, &st);
	assert_int_equal(st.stalls, 10);
	assert_int_equal(count(log, "core loop stalled"), 1);
	assert_non_null(strstr(log, "test_loop.c:slow_fd_cb"));
	free(log);
	loop_del_fd(l, f.efd);
	loop_timer_free(f.stop);
	loop_free(l);
	close(f.efd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(buckets_and_longest),
		cmocka_unit_test(names_the_slow_callback),
		cmocka_unit_test(one_warning_per_episode),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
