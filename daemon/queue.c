#include "queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Slots an emptied ring keeps resident; the pages past them go back to the
 * kernel (288 KB of items: a burst well beyond a normal drain's depth). */
#define QUEUE_KEEP_SLOTS 4096

struct queue {
	pthread_mutex_t lock;
	pthread_cond_t not_full; /* producers in queue_push_wait() */
	int efd;
	bool closed;
	bool signalled; /* the eventfd was written and not read since */
	bool hold;      /* the consumer drains on its own timer: wake it only if urgent */
	bool (*urgent)(void *arg, const struct cgw_item *it);
	void *urgent_arg;
	size_t cap;
	size_t head; /* index of the oldest item */
	size_t count;
	size_t used;           /* slots [0, used) written since the ring was last given back */
	struct queue_stats st; /* depth and capacity are filled in on read */
	struct cgw_item ring[];
};

/* The whole pages of ring slots [from, to), or false if there are none. */
static bool ring_pages(struct queue *q, size_t from, size_t to, uintptr_t *start, size_t *len)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t lo = ((uintptr_t)&q->ring[from] + pg - 1) & ~(pg - 1);
	uintptr_t hi = (uintptr_t)&q->ring[to] & ~(pg - 1);

	if (hi <= lo)
		return false;
	*start = lo;
	*len = hi - lo;
	return true;
}

int queue_new(struct queue **qp, size_t capacity)
{
	struct queue *q = NULL;
	pthread_condattr_t ca;
	int rc;

	*qp = NULL;
	if (capacity == 0 || capacity > QUEUE_MAX_CAPACITY)
		return -EINVAL;
	q = calloc(1, sizeof(*q) + capacity * sizeof(q->ring[0]));
	if (!q)
		return -ENOMEM;
	q->cap = capacity;
	{
		/* Only the slots the load reaches become resident (see
		 * queue_pop_batch): no huge pages that would make a whole 2 MB
		 * of the ring resident on the first item. */
		uintptr_t start;
		size_t len;
		if (ring_pages(q, 0, capacity, &start, &len))
			(void)madvise((void *)start, len, MADV_NOHUGEPAGE);
	}
	q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->efd < 0) {
		rc = -errno;
		goto fail;
	}
	rc = -pthread_mutex_init(&q->lock, NULL);
	if (rc)
		goto fail_fd;
	/* Timeouts must not jump with the wall clock (NTP, RTC-less boards). */
	rc = -pthread_condattr_init(&ca);
	if (rc)
		goto fail_mutex;
	rc = -pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (!rc)
		rc = -pthread_cond_init(&q->not_full, &ca);
	pthread_condattr_destroy(&ca);
	if (rc)
		goto fail_mutex;
	*qp = q;
	return 0;

fail_mutex:
	pthread_mutex_destroy(&q->lock);
fail_fd:
	close(q->efd);
fail:
	free(q);
	return rc;
}

void queue_free(struct queue *q)
{
	if (!q)
		return;
	for (size_t i = 0; i < q->count; i++)
		cgw_value_clear(&q->ring[(q->head + i) % q->cap].value);
	pthread_cond_destroy(&q->not_full);
	pthread_mutex_destroy(&q->lock);
	close(q->efd);
	free(q);
}

int queue_fd(const struct queue *q)
{
	return q->efd;
}

/* A producer found the queue full. */
static void note_full_locked(struct queue *q)
{
	if (!q->st.full) {
		q->st.full = true;
		q->st.full_episodes++;
	}
}

/* Under the lock. It cannot fail: the counter is reset on every drain, so
 * it never nears its limit. */
static void signal_locked(struct queue *q)
{
	uint64_t one = 1;
	ssize_t n = write(q->efd, &one, sizeof(one));
	(void)n;
	q->signalled = true;
}

void queue_set_urgent(struct queue *q, bool (*urgent)(void *arg, const struct cgw_item *it),
		      void *arg)
{
	pthread_mutex_lock(&q->lock);
	q->urgent = urgent;
	q->urgent_arg = arg;
	pthread_mutex_unlock(&q->lock);
}

void queue_hold(struct queue *q, bool hold)
{
	pthread_mutex_lock(&q->lock);
	q->hold = hold;
	if (!hold && q->count > 0 && !q->signalled)
		signal_locked(q);
	pthread_mutex_unlock(&q->lock);
}

static void put_locked(struct queue *q, struct cgw_item *item)
{
	size_t tail = q->head + q->count;

	if (tail >= q->cap)
		tail -= q->cap;
	if (tail >= q->used)
		q->used = tail + 1;
	q->ring[tail] = *item;
	item->value.type = CGW_V_NONE;
	q->st.pushes++;
	if (++q->count > q->st.high_water)
		q->st.high_water = q->count;
	/* Unheld, the eventfd is readable exactly while the queue is
	 * non-empty. Held, only once an urgent item (or half the capacity)
	 * is in. */
	if (!q->signalled && (!q->hold || q->count >= q->cap / 2 ||
			      (q->urgent && q->urgent(q->urgent_arg, &q->ring[tail]))))
		signal_locked(q);
}

int queue_push(struct queue *q, struct cgw_item *item)
{
	int rc = 0;

	pthread_mutex_lock(&q->lock);
	if (q->closed) {
		rc = -EPIPE;
	} else if (q->count == q->cap) {
		note_full_locked(q);
		q->st.drops++;
		rc = -EAGAIN;
	} else {
		put_locked(q, item);
	}
	pthread_mutex_unlock(&q->lock);
	return rc;
}

/* The deadline of a wait of timeout_ms (> 0) on the monotonic clock. */
static struct timespec deadline_in(int timeout_ms)
{
	struct timespec deadline;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += timeout_ms / 1000;
	deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (deadline.tv_nsec >= 1000000000) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000;
	}
	return deadline;
}

int queue_push_many_wait(struct queue *q, struct cgw_item *items, size_t n, int timeout_ms,
			 size_t *pushed)
{
	struct timespec deadline = {0};
	bool timed_out = false, waited = false;
	size_t done = 0;
	int rc = 0;

	if (timeout_ms > 0)
		deadline = deadline_in(timeout_ms);
	pthread_mutex_lock(&q->lock);
	while (done < n) {
		if (q->closed) {
			rc = -EPIPE;
			break;
		}
		if (q->count < q->cap) {
			put_locked(q, &items[done++]);
			continue;
		}
		note_full_locked(q);
		if (timeout_ms == 0 || timed_out) {
			q->st.drops++;
			rc = timeout_ms == 0 ? -EAGAIN : -ETIMEDOUT;
			break;
		}
		if (!waited) {
			q->st.waits++;
			waited = true;
		}
		q->st.waiting++;
		if (timeout_ms < 0)
			pthread_cond_wait(&q->not_full, &q->lock);
		else if (pthread_cond_timedwait(&q->not_full, &q->lock, &deadline))
			timed_out = true; /* ETIMEDOUT, or EINVAL: never spin */
		q->st.waiting--;
	}
	pthread_mutex_unlock(&q->lock);
	if (pushed)
		*pushed = done;
	return rc;
}

int queue_push_wait(struct queue *q, struct cgw_item *item, int timeout_ms)
{
	struct timespec deadline = {0};
	bool timed_out = false;
	int rc = 0;

	if (timeout_ms == 0)
		return queue_push(q, item);
	if (timeout_ms > 0)
		deadline = deadline_in(timeout_ms);

	pthread_mutex_lock(&q->lock);
	if (!q->closed && q->count == q->cap) {
		note_full_locked(q);
		q->st.waits++;
		q->st.waiting++;
		while (!q->closed && q->count == q->cap && !timed_out) {
			if (timeout_ms < 0)
				pthread_cond_wait(&q->not_full, &q->lock);
			else if (pthread_cond_timedwait(&q->not_full, &q->lock, &deadline))
				timed_out = true; /* ETIMEDOUT, or EINVAL: never spin */
		}
		q->st.waiting--;
	}
	/* Room wins over a timeout that expired at the same moment. */
	if (q->closed) {
		rc = -EPIPE;
	} else if (q->count == q->cap) {
		q->st.drops++;
		rc = -ETIMEDOUT;
	} else {
		put_locked(q, item);
	}
	pthread_mutex_unlock(&q->lock);
	return rc;
}

size_t queue_pop_batch(struct queue *q, struct cgw_item *items, size_t max)
{
	size_t n;

	pthread_mutex_lock(&q->lock);
	n = q->count < max ? q->count : max;
	for (size_t i = 0; i < n; i++) {
		items[i] = q->ring[q->head];
		if (++q->head == q->cap)
			q->head = 0;
	}
	q->count -= n;
	if (q->count == 0) {
		/* An empty ring starts again at slot 0, so the slots (and pages)
		 * it touches are its high-water mark, not its capacity. After a
		 * burst past QUEUE_KEEP_SLOTS the pages beyond go back to the
		 * kernel (they read as zeros if reached again). */
		uintptr_t start;
		size_t len;

		q->head = 0;
		if (q->used > QUEUE_KEEP_SLOTS) {
			if (ring_pages(q, QUEUE_KEEP_SLOTS, q->used, &start, &len))
				(void)madvise((void *)start, len, MADV_DONTNEED);
			q->used = QUEUE_KEEP_SLOTS;
		}
	}
	if (q->count == 0 && q->signalled) {
		/* Reset the wake-up, once: a consumer that pops until it gets
		 * nothing costs no read() that finds it already reset. */
		uint64_t v;
		ssize_t r = read(q->efd, &v, sizeof(v));
		(void)r;
		q->signalled = false;
	}
	if (q->st.full && q->count <= q->cap / 2)
		q->st.full = false;
	/* Only when someone waits: no futex call per batch under load. */
	if (n > 0 && q->st.waiting > 0)
		pthread_cond_broadcast(&q->not_full);
	pthread_mutex_unlock(&q->lock);
	return n;
}

void queue_close(struct queue *q)
{
	pthread_mutex_lock(&q->lock);
	q->closed = true;
	pthread_cond_broadcast(&q->not_full);
	pthread_mutex_unlock(&q->lock);
}

void queue_get_stats(struct queue *q, struct queue_stats *st)
{
	pthread_mutex_lock(&q->lock);
	*st = q->st;
	st->capacity = q->cap;
	st->depth = q->count;
	pthread_mutex_unlock(&q->lock);
}
