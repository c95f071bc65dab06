/*
 * The driver -> core queue: order, bounds, ownership of string values,
 * blocking pushes, the eventfd wake-up, many producers, shutdown.
 *
 * Threads are sequenced by observing the queue itself (stats.waiting tells
 * that a producer is blocked inside queue_push_wait()), never by sleeping.
 * cmocka's assertions longjmp, so helper threads only record what they saw
 * and the main thread asserts.
 */
/* cmocka.h needs these first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "queue.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct cgw_item uint_item(uint32_t device, uint64_t seq)
{
	struct cgw_item it = {
		.kind = CGW_ITEM_READING,
		.device = device,
		.quality = CGW_Q_GOOD,
		.value = {.type = CGW_V_UINT, .u = seq},
	};
	return it;
}

static struct cgw_item str_item(uint32_t device, const char *s)
{
	struct cgw_item it = {
		.kind = CGW_ITEM_EVENT,
		.device = device,
		.value = {.type = CGW_V_STRING, .s = strdup(s)},
	};
	assert_non_null(it.value.s);
	return it;
}

static bool fd_readable(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

/* Wait until n producers are blocked in queue_push_wait(); false after 10 s. */
static bool wait_for_waiting(struct queue *q, size_t n)
{
	int64_t deadline = cgw_mono_ms() + 10000;
	struct queue_stats st;

	for (;;) {
		queue_get_stats(q, &st);
		if (st.waiting == n)
			return true;
		if (cgw_mono_ms() > deadline)
			return false;
		sched_yield();
	}
}

static void test_new_rejects_bad_capacity(void **state)
{
	struct queue *q = (struct queue *)1;

	(void)state;
	assert_int_equal(queue_new(&q, 0), -EINVAL);
	assert_null(q);
	assert_int_equal(queue_new(&q, QUEUE_MAX_CAPACITY + 1), -EINVAL);
	assert_int_equal(queue_new(&q, 1), 0);
	assert_true(queue_fd(q) >= 0);
	assert_true(fcntl(queue_fd(q), F_GETFD) & FD_CLOEXEC);
	assert_true(fcntl(queue_fd(q), F_GETFL) & O_NONBLOCK);
	queue_free(q);
	queue_free(NULL);
}

static void test_fifo_single_producer(void **state)
{
	struct queue *q;
	struct cgw_item out[16];
	struct queue_stats st;
	uint64_t next = 0, seq = 0;

	(void)state;
	assert_int_equal(queue_new(&q, 8), 0);
	assert_int_equal(queue_pop_batch(q, out, 16), 0);
	/* Three items stay queued throughout, so head and tail wrap around
	 * the ring (a queue that empties starts again at slot 0). */
	for (int i = 0; i < 3; i++) {
		struct cgw_item it = uint_item(0, seq++);
		assert_int_equal(queue_push(q, &it), 0);
	}
	for (int round = 0; round < 5; round++) {
		for (int i = 0; i < 5; i++) {
			struct cgw_item it = uint_item(0, seq++);
			assert_int_equal(queue_push(q, &it), 0);
		}
		/* Pop in uneven batches. */
		size_t n = queue_pop_batch(q, out, 2);
		assert_int_equal(n, 2);
		n += queue_pop_batch(q, out + 2, 3);
		assert_int_equal(n, 5);
		for (size_t i = 0; i < n; i++) {
			assert_int_equal(out[i].value.type, CGW_V_UINT);
			assert_int_equal(out[i].value.u, next);
			next++;
		}
	}
	assert_int_equal(queue_pop_batch(q, out, 16), 3);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(out[i].value.u, next++);
	queue_get_stats(q, &st);
	assert_int_equal(st.capacity, 8);
	assert_int_equal(st.depth, 0);
	assert_int_equal(st.high_water, 8);
	assert_int_equal(st.pushes, 28);
	assert_int_equal(st.drops, 0);
	assert_int_equal(st.full_episodes, 0);
	queue_free(q);
}

/* Resident memory of this process in KB (/proc/self/statm). */
static long resident_kb(void)
{
	long size = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	assert_non_null(f);
	assert_int_equal(fscanf(f, "%ld %ld", &size, &res), 2);
	fclose(f);
	return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/*
 * The ring is allocated for its capacity (65536 items, ~4.5 MB) but only
 * what the load reaches stays resident: a queue that passes one item at a
 * time touches a few pages however many items go through, and the pages of
 * a burst go back to the kernel once the burst is drained. Order and
 * values survive both.
 */
static void test_ring_memory_follows_depth(void **state)
{
	enum { CAP = 65536, BURST = 60000 };
	struct queue *q;
	struct cgw_item out[64];
	long base, after_trickle, in_burst, after_burst;
	uint64_t seq = 0, next = 0;

	(void)state;
	assert_int_equal(queue_new(&q, CAP), 0);
	base = resident_kb();
	/* 3 x the capacity through the queue, one item at a time: before,
	 * the head walked the whole ring and made all of it resident. */
	for (int i = 0; i < 3 * CAP; i++) {
		struct cgw_item it = uint_item(0, seq++);
		assert_int_equal(queue_push(q, &it), 0);
		assert_int_equal(queue_pop_batch(q, out, 64), 1);
		assert_int_equal(out[0].value.u, next++);
	}
	after_trickle = resident_kb();
	/* A burst makes its slots resident (the measure sees the ring)... */
	for (int i = 0; i < BURST; i++) {
		struct cgw_item it = uint_item(0, seq++);
		assert_int_equal(queue_push(q, &it), 0);
	}
	in_burst = resident_kb();
	for (size_t n; (n = queue_pop_batch(q, out, 64)) > 0;)
		for (size_t i = 0; i < n; i++)
			assert_int_equal(out[i].value.u, next++);
	assert_int_equal(next, seq);
	/* ...and gives them back once drained. */
	after_burst = resident_kb();
	print_message(
		"resident KB: base %ld, after the trickle %ld, in the burst %ld, after it %ld\n",
		base, after_trickle, in_burst, after_burst);
	assert_true(after_trickle - base < 512);
	assert_true(in_burst - base > 3000);
	assert_true(after_burst - base < 1024);
	/* The queue still works past the released pages: another burst. */
	for (int i = 0; i < BURST; i++) {
		struct cgw_item it = uint_item(0, seq++);
		assert_int_equal(queue_push(q, &it), 0);
	}
	for (size_t n; (n = queue_pop_batch(q, out, 64)) > 0;)
		for (size_t i = 0; i < n; i++) {
			assert_int_equal(out[i].value.type, CGW_V_UINT);
			assert_int_equal(out[i].value.u, next++);
		}
	assert_int_equal(next, seq);
	queue_free(q);
}

static void test_full_eagain_and_string_ownership(void **state)
{
	struct queue *q;
	struct cgw_item a = str_item(1, "first");
	struct cgw_item b = str_item(2, "second");
	struct cgw_item c = str_item(3, "third");
	char *c_str = c.value.s;
	struct cgw_item out[4];
	struct queue_stats st;

	(void)state;
	assert_int_equal(queue_new(&q, 2), 0);
	assert_int_equal(queue_push(q, &a), 0);
	/* Moved into the queue: the caller's copy no longer owns the string. */
	assert_int_equal(a.value.type, CGW_V_NONE);
	assert_int_equal(queue_push(q, &b), 0);
	assert_int_equal(b.value.type, CGW_V_NONE);

	assert_int_equal(queue_push(q, &c), -EAGAIN);
	/* Refused: the caller still owns it, untouched. */
	assert_int_equal(c.value.type, CGW_V_STRING);
	assert_ptr_equal(c.value.s, c_str);
	assert_string_equal(c.value.s, "third");
	assert_int_equal(queue_push(q, &c), -EAGAIN);

	queue_get_stats(q, &st);
	assert_int_equal(st.depth, 2);
	assert_int_equal(st.high_water, 2);
	assert_int_equal(st.pushes, 2);
	assert_int_equal(st.drops, 2);
	assert_int_equal(st.full_episodes, 1);
	assert_true(st.full);

	assert_int_equal(queue_pop_batch(q, out, 4), 2);
	assert_int_equal(out[0].device, 1);
	assert_string_equal(out[0].value.s, "first");
	assert_int_equal(out[1].device, 2);
	assert_string_equal(out[1].value.s, "second");
	/* The popped strings are the caller's now. */
	cgw_value_clear(&out[0].value);
	cgw_value_clear(&out[1].value);

	assert_int_equal(queue_push(q, &c), 0);
	cgw_value_clear(&c.value); /* harmless after a successful push */
	/* queue_free() frees what is still queued (ASan/valgrind see a leak if not). */
	queue_free(q);
}

static void test_full_episodes_hysteresis(void **state)
{
	struct queue *q;
	struct cgw_item it, out[4];
	struct queue_stats st;

	(void)state;
	assert_int_equal(queue_new(&q, 4), 0);
	for (int i = 0; i < 4; i++) {
		it = uint_item(0, (uint64_t)i);
		assert_int_equal(queue_push(q, &it), 0);
	}
	queue_get_stats(q, &st);
	/* Full but nobody was refused yet: no episode. */
	assert_int_equal(st.full_episodes, 0);
	assert_false(st.full);

	it = uint_item(0, 99);
	assert_int_equal(queue_push(q, &it), -EAGAIN);
	/* One slot freed and taken again: the same episode goes on. */
	assert_int_equal(queue_pop_batch(q, out, 1), 1);
	assert_int_equal(queue_push(q, &it), 0);
	assert_int_equal(queue_push(q, &it), -EAGAIN);
	queue_get_stats(q, &st);
	assert_int_equal(st.full_episodes, 1);
	assert_true(st.full);
	assert_int_equal(st.drops, 2);

	/* Drained to half: the episode is over, the next refusal starts another. */
	assert_int_equal(queue_pop_batch(q, out, 2), 2);
	queue_get_stats(q, &st);
	assert_false(st.full);
	for (int i = 0; i < 2; i++)
		assert_int_equal(queue_push(q, &it), 0);
	assert_int_equal(queue_push(q, &it), -EAGAIN);
	queue_get_stats(q, &st);
	assert_int_equal(st.full_episodes, 2);
	assert_int_equal(st.drops, 3);
	queue_free(q);
}

static void test_push_wait_times_out(void **state)
{
	struct queue *q;
	struct cgw_item it = uint_item(0, 1), late = str_item(0, "late");
	struct queue_stats st;
	int64_t t0, dt;

	(void)state;
	assert_int_equal(queue_new(&q, 1), 0);
	assert_int_equal(queue_push_wait(q, &it, 50), 0); /* room: no wait */
	t0 = cgw_mono_ms();
	assert_int_equal(queue_push_wait(q, &late, 50), -ETIMEDOUT);
	dt = cgw_mono_ms() - t0;
	assert_true(dt >= 50);
	assert_true(dt < 5000);
	assert_int_equal(late.value.type, CGW_V_STRING);
	assert_string_equal(late.value.s, "late");
	/* 0 does not block at all: same as queue_push(). */
	assert_int_equal(queue_push_wait(q, &late, 0), -EAGAIN);

	queue_get_stats(q, &st);
	assert_int_equal(st.waits, 1);
	assert_int_equal(st.drops, 2);
	assert_int_equal(st.waiting, 0);
	assert_int_equal(st.pushes, 1);
	cgw_value_clear(&late.value);
	queue_free(q);
}

struct waiter {
	struct queue *q;
	struct cgw_item item;
	int timeout_ms;
	int rc;
	pthread_t thread;
	bool done; /* under done_lock */
};

/* Waiters say they are done through a condition variable rather than
 * pthread_timedjoin_np(), which helgrind does not see as synchronisation. */
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;

static void *waiter_main(void *arg)
{
	struct waiter *w = arg;

	w->rc = queue_push_wait(w->q, &w->item, w->timeout_ms);
	pthread_mutex_lock(&done_lock);
	w->done = true;
	pthread_cond_broadcast(&done_cond);
	pthread_mutex_unlock(&done_lock);
	return NULL;
}

static void waiter_start(struct waiter *w, struct queue *q)
{
	w->q = q;
	w->done = false;
	assert_int_equal(pthread_create(&w->thread, NULL, waiter_main, w), 0);
}

/* Join a waiter; fail instead of hanging if it never wakes up. */
static void waiter_join_within(struct waiter *w, int seconds)
{
	struct timespec deadline;
	bool done;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += seconds;
	pthread_mutex_lock(&done_lock);
	while (!w->done && pthread_cond_timedwait(&done_cond, &done_lock, &deadline) == 0)
		;
	done = w->done;
	pthread_mutex_unlock(&done_lock);
	if (!done)
		fail_msg("producer still blocked after %d s", seconds);
	assert_int_equal(pthread_join(w->thread, NULL), 0);
}

/* A producer blocked on a full queue gets in as soon as the consumer pops,
 * long before its timeout. */
static void push_wait_woken_by_pop(int timeout_ms)
{
	struct queue *q;
	struct cgw_item it = uint_item(0, 1), out[2];
	struct waiter w = {.item = str_item(7, "waited"), .timeout_ms = timeout_ms};
	struct queue_stats st;
	int64_t t0;

	assert_int_equal(queue_new(&q, 1), 0);
	assert_int_equal(queue_push(q, &it), 0);
	waiter_start(&w, q);
	assert_true(wait_for_waiting(q, 1));

	t0 = cgw_mono_ms();
	assert_int_equal(queue_pop_batch(q, out, 2), 1);
	assert_int_equal(out[0].value.u, 1);
	waiter_join_within(&w, 10);
	/* Woken by the pop, not by its 20 s timeout. */
	assert_true(cgw_mono_ms() - t0 < 5000);
	assert_int_equal(w.rc, 0);
	assert_int_equal(w.item.value.type, CGW_V_NONE);

	assert_int_equal(queue_pop_batch(q, out, 2), 1);
	assert_int_equal(out[0].device, 7);
	assert_string_equal(out[0].value.s, "waited");
	cgw_value_clear(&out[0].value);
	queue_get_stats(q, &st);
	assert_int_equal(st.waits, 1);
	assert_int_equal(st.drops, 0);
	assert_int_equal(st.pushes, 2);
	queue_free(q);
}

static void test_push_wait_woken_by_pop(void **state)
{
	(void)state;
	push_wait_woken_by_pop(20000);
}

static void test_push_wait_forever_woken_by_pop(void **state)
{
	(void)state;
	push_wait_woken_by_pop(-1);
}

static void test_eventfd_wakeup(void **state)
{
	struct queue *q;
	struct cgw_item it, out[4];
	uint64_t counter = 0;

	(void)state;
	assert_int_equal(queue_new(&q, 4), 0);
	assert_false(fd_readable(queue_fd(q)));
	it = uint_item(0, 0);
	assert_int_equal(queue_push(q, &it), 0);
	assert_true(fd_readable(queue_fd(q)));
	it = uint_item(0, 1);
	assert_int_equal(queue_push(q, &it), 0);
	/* Items remain after a partial batch: still readable. */
	assert_int_equal(queue_pop_batch(q, out, 1), 1);
	assert_true(fd_readable(queue_fd(q)));
	assert_int_equal(queue_pop_batch(q, out, 4), 1);
	assert_false(fd_readable(queue_fd(q)));
	/* A pop on an empty queue leaves it quiet. */
	assert_int_equal(queue_pop_batch(q, out, 4), 0);
	assert_false(fd_readable(queue_fd(q)));

	/* Only the empty -> non-empty push writes: three pushes, one wake-up.
	 * (Reading the fd here is for the test only; the queue is dropped.) */
	for (int i = 0; i < 3; i++) {
		it = uint_item(0, (uint64_t)i);
		assert_int_equal(queue_push(q, &it), 0);
	}
	assert_int_equal(read(queue_fd(q), &counter, sizeof(counter)), sizeof(counter));
	assert_int_equal(counter, 1);
	queue_free(q);
}

/* Held, the queue wakes its consumer only for an urgent item or at half
 * its capacity; released, at once if items wait. */
static struct cgw_item point_item(uint32_t point)
{
	struct cgw_item it = uint_item(0, point);
	it.point = point;
	return it;
}

static bool odd_point_urgent(void *arg, const struct cgw_item *it)
{
	(*(int *)arg)++;
	return it->point % 2 == 1;
}

static void test_hold_wakes_only_for_urgent(void **state)
{
	struct queue *q;
	struct cgw_item it, out[8];
	int calls = 0;

	(void)state;
	assert_int_equal(queue_new(&q, 8), 0);
	queue_set_urgent(q, odd_point_urgent, &calls);
	/* unheld: the first push wakes, without asking */
	it = point_item(0);
	assert_int_equal(queue_push(q, &it), 0);
	assert_true(fd_readable(queue_fd(q)));
	assert_int_equal(calls, 0);
	assert_int_equal(queue_pop_batch(q, out, 8), 1);
	assert_false(fd_readable(queue_fd(q)));

	queue_hold(q, true);
	it = point_item(2);
	assert_int_equal(queue_push(q, &it), 0);
	it = point_item(4);
	assert_int_equal(queue_push(q, &it), 0);
	assert_false(fd_readable(queue_fd(q))); /* waits for the consumer's timer */
	it = point_item(3);
	assert_int_equal(queue_push(q, &it), 0);
	assert_true(fd_readable(queue_fd(q))); /* urgent: at once */
	assert_int_equal(queue_pop_batch(q, out, 8), 3);
	assert_false(fd_readable(queue_fd(q)));
	/* half full wakes too: a burst never waits for the timer */
	for (int i = 0; i < 3; i++) {
		it = point_item(10);
		assert_int_equal(queue_push(q, &it), 0);
	}
	assert_false(fd_readable(queue_fd(q)));
	it = point_item(12);
	assert_int_equal(queue_push(q, &it), 0);
	assert_true(fd_readable(queue_fd(q)));
	assert_int_equal(queue_pop_batch(q, out, 8), 4);
	/* released with items waiting: readable at once; empty: quiet */
	it = point_item(6);
	assert_int_equal(queue_push(q, &it), 0);
	assert_false(fd_readable(queue_fd(q)));
	queue_hold(q, false);
	assert_true(fd_readable(queue_fd(q)));
	assert_int_equal(queue_pop_batch(q, out, 8), 1);
	assert_false(fd_readable(queue_fd(q)));
	queue_hold(q, false);
	assert_false(fd_readable(queue_fd(q)));
	queue_free(q);
}

/* Many producers, one consumer. */
#define PRODUCERS 4
#define PER_PRODUCER 100000
#define STRING_EVERY 997

struct producer {
	struct queue *q;
	uint32_t id;
	uint64_t refused; /* -EAGAIN / -ETIMEDOUT seen, each retried */
	int err;          /* first unexpected return code */
};

/* A batch goes in under one wake-up; on a full queue it takes what fits,
 * oldest first, and leaves the rest (and their strings) to the caller. */
static void test_push_many(void **state)
{
	struct queue *q;
	struct cgw_item in[5], out[8];
	struct queue_stats st;
	uint64_t counter = 0;
	size_t done = 99;

	(void)state;
	assert_int_equal(queue_new(&q, 4), 0);
	for (int i = 0; i < 3; i++)
		in[i] = uint_item(1, (uint64_t)i);
	assert_int_equal(queue_push_many_wait(q, in, 3, 0, &done), 0);
	assert_int_equal(done, 3);
	assert_int_equal(read(queue_fd(q), &counter, sizeof(counter)), sizeof(counter));
	assert_int_equal(counter, 1); /* one wake-up for three items */
	assert_int_equal(queue_pop_batch(q, out, 8), 3);
	for (int i = 0; i < 3; i++)
		assert_int_equal(out[i].value.u, (uint64_t)i);

	in[0] = uint_item(1, 10);
	in[1] = str_item(1, "kept");
	in[2] = str_item(1, "not kept");
	in[3] = uint_item(1, 13);
	in[4] = uint_item(1, 14);
	assert_int_equal(queue_push(q, &in[4]), 0);
	assert_int_equal(queue_push(q, &in[4]), 0);
	/* two free slots, no wait: the first two go in */
	assert_int_equal(queue_push_many_wait(q, in, 4, 0, &done), -EAGAIN);
	assert_int_equal(done, 2);
	assert_int_equal(in[1].value.type, CGW_V_NONE); /* the queue's now */
	assert_int_equal(in[2].value.type, CGW_V_STRING);
	assert_string_equal(in[2].value.s, "not kept");
	/* with a timeout, still full: -ETIMEDOUT, one drop */
	assert_int_equal(queue_push_many_wait(q, in + 2, 2, 50, &done), -ETIMEDOUT);
	assert_int_equal(done, 0);
	queue_get_stats(q, &st);
	assert_int_equal(st.drops, 2);
	assert_true(st.full);
	cgw_value_clear(&in[2].value);
	assert_int_equal(queue_pop_batch(q, out, 8), 4);
	assert_int_equal(out[2].value.u, 10);
	assert_string_equal(out[3].value.s, "kept");
	cgw_value_clear(&out[3].value);
	queue_close(q);
	in[0] = uint_item(1, 20);
	assert_int_equal(queue_push_many_wait(q, in, 1, -1, &done), -EPIPE);
	assert_int_equal(done, 0);
	queue_free(q);
}

static void *producer_main(void *arg)
{
	struct producer *p = arg;

	for (uint64_t seq = 0; seq < PER_PRODUCER && !p->err; seq++) {
		struct cgw_item it = uint_item(p->id, seq);
		char buf[32];
		int rc;

		if (seq % STRING_EVERY == 0) {
			snprintf(buf, sizeof(buf), "%u:%llu", (unsigned)p->id,
				 (unsigned long long)seq);
			it.value.type = CGW_V_STRING;
			it.value.s = strdup(buf);
		}
		/* Half the producers block, half spin on the non-blocking push. */
		for (;;) {
			if (p->id % 2)
				rc = queue_push_wait(p->q, &it, 1000);
			else
				rc = queue_push(p->q, &it);
			if (rc != -EAGAIN && rc != -ETIMEDOUT)
				break;
			p->refused++;
			sched_yield();
		}
		if (rc)
			p->err = rc;
		cgw_value_clear(&it.value);
	}
	return NULL;
}

struct consumer {
	struct queue *q;
	uint64_t next[PRODUCERS];
	uint64_t received;
	const char *err; /* first failure */
};

static void *consumer_main(void *arg)
{
	struct consumer *c = arg;
	struct cgw_item batch[256];
	struct pollfd pfd = {.fd = queue_fd(c->q), .events = POLLIN};

	while (c->received < (uint64_t)PRODUCERS * PER_PRODUCER && !c->err) {
		/* A lost wake-up shows as a 30 s stall. */
		if (poll(&pfd, 1, 30000) != 1) {
			c->err = "no wake-up within 30 s";
			break;
		}
		size_t n = queue_pop_batch(c->q, batch, 256);
		for (size_t i = 0; i < n; i++) {
			struct cgw_item *it = &batch[i];
			uint64_t seq = 0;

			if (it->device >= PRODUCERS) {
				c->err = "bad producer id";
			} else if (it->value.type == CGW_V_STRING) {
				unsigned id;
				unsigned long long s = 0;
				if (sscanf(it->value.s, "%u:%llu", &id, &s) != 2 ||
				    id != it->device)
					c->err = "bad string payload";
				seq = s;
			} else {
				seq = it->value.u;
			}
			if (!c->err && seq != c->next[it->device])
				c->err = "producer order broken, or an item lost or duplicated";
			if (!c->err)
				c->next[it->device]++;
			cgw_value_clear(&it->value);
			c->received++;
		}
	}
	if (c->err)
		queue_close(c->q); /* so that the producers give up too */
	return NULL;
}

static void test_many_producers_one_consumer(void **state)
{
	struct queue *q;
	struct producer prod[PRODUCERS];
	struct consumer cons = {0};
	pthread_t pt[PRODUCERS], ct;
	struct queue_stats st;
	uint64_t refused = 0;

	(void)state;
	/* Small, so producers keep hitting the full queue. */
	assert_int_equal(queue_new(&q, 64), 0);
	cons.q = q;
	assert_int_equal(pthread_create(&ct, NULL, consumer_main, &cons), 0);
	for (uint32_t i = 0; i < PRODUCERS; i++) {
		prod[i] = (struct producer){.q = q, .id = i};
		assert_int_equal(pthread_create(&pt[i], NULL, producer_main, &prod[i]), 0);
	}
	for (int i = 0; i < PRODUCERS; i++)
		assert_int_equal(pthread_join(pt[i], NULL), 0);
	assert_int_equal(pthread_join(ct, NULL), 0);
	if (cons.err)
		fail_msg("consumer: %s", cons.err);
	for (int i = 0; i < PRODUCERS; i++) {
		assert_int_equal(prod[i].err, 0);
		refused += prod[i].refused;
	}
	for (int i = 0; i < PRODUCERS; i++)
		assert_int_equal(cons.next[i], PER_PRODUCER);
	assert_int_equal(cons.received, (uint64_t)PRODUCERS * PER_PRODUCER);

	queue_get_stats(q, &st);
	assert_int_equal(st.depth, 0);
	assert_int_equal(st.pushes, (uint64_t)PRODUCERS * PER_PRODUCER);
	assert_int_equal(st.drops, refused);
	assert_true(st.high_water <= 64);
	assert_false(fd_readable(queue_fd(q)));
	print_message("# high water %zu/64, refused pushes %llu, waits %llu, full episodes %llu\n",
		      st.high_water, (unsigned long long)refused, (unsigned long long)st.waits,
		      (unsigned long long)st.full_episodes);
	queue_free(q);
}

static void test_close_wakes_waiting_producers(void **state)
{
	struct queue *q;
	struct cgw_item it = uint_item(0, 42), out[4];
	struct waiter w[2] = {
		{.item = str_item(1, "one"), .timeout_ms = -1},
		{.item = str_item(2, "two"), .timeout_ms = 20000},
	};
	int64_t t0;

	(void)state;
	assert_int_equal(queue_new(&q, 1), 0);
	assert_int_equal(queue_push(q, &it), 0);
	for (int i = 0; i < 2; i++)
		waiter_start(&w[i], q);
	assert_true(wait_for_waiting(q, 2));

	t0 = cgw_mono_ms();
	queue_close(q);
	for (int i = 0; i < 2; i++) {
		waiter_join_within(&w[i], 10);
		assert_int_equal(w[i].rc, -EPIPE);
		/* Refused: the strings are still the producers'. */
		assert_int_equal(w[i].item.value.type, CGW_V_STRING);
		cgw_value_clear(&w[i].item.value);
	}
	assert_true(cgw_mono_ms() - t0 < 5000);

	it = uint_item(0, 43);
	assert_int_equal(queue_push(q, &it), -EPIPE);
	assert_int_equal(queue_push_wait(q, &it, 1000), -EPIPE);
	queue_close(q); /* idempotent */
	/* What was queued before close is still delivered. */
	assert_int_equal(queue_pop_batch(q, out, 4), 1);
	assert_int_equal(out[0].value.u, 42);
	assert_int_equal(queue_push(q, &it), -EPIPE); /* room now, still closed */
	queue_free(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_new_rejects_bad_capacity),
		cmocka_unit_test(test_fifo_single_producer),
		cmocka_unit_test(test_ring_memory_follows_depth),
		cmocka_unit_test(test_push_many),
		cmocka_unit_test(test_full_eagain_and_string_ownership),
		cmocka_unit_test(test_full_episodes_hysteresis),
		cmocka_unit_test(test_push_wait_times_out),
		cmocka_unit_test(test_push_wait_woken_by_pop),
		cmocka_unit_test(test_push_wait_forever_woken_by_pop),
		cmocka_unit_test(test_eventfd_wakeup),
		cmocka_unit_test(test_hold_wakes_only_for_urgent),
		cmocka_unit_test(test_many_producers_one_consumer),
		cmocka_unit_test(test_close_wakes_waiting_producers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
