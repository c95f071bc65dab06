/*
 * queue.h - the bounded queue from driver threads to the core loop.
 *
 * Many producers (one Modbus worker per bus, ...), one consumer (the core
 * loop). Items are struct cgw_item, copied in and out by value.
 *
 * Wake-up: queue_fd() is an eventfd the core loop polls for POLLIN. It becomes
 * readable when the queue goes from empty to non-empty and is reset by
 * queue_pop_batch() when that call leaves the queue empty, so a busy queue
 * costs no syscall per item. It is level-like: while items remain after a
 * batch, it stays readable.
 *
 * Ownership:
 * - queue_push()/queue_push_wait() copy *item. On success (0) a CGW_V_STRING
 *   value's `s` belongs to the queue and the caller's item->value is reset to
 *   CGW_V_NONE, so cgw_value_clear(&item->value) after any push is always
 *   right. On failure nothing changed: the caller still owns the string and
 *   may retry or free it.
 * - queue_pop_batch() hands the popped items, strings included, to the caller.
 * - queue_free() frees the strings of items still queued.
 *
 * Coalescing: a consumer that drains on a timer of its own while items
 * keep coming may hold the queue (queue_hold): pushes then wake it only for
 * an item that queue_set_urgent()'s function calls urgent, or once the
 * queue is half full; queue_hold(q, false) wakes it at once if items wait.
 * The urgent function runs on the producer's thread under the queue's lock:
 * it may only read what does not change while producers run.
 *
 * Full queue: queue_push() never blocks and refuses with -EAGAIN (a drop).
 * queue_push_wait() blocks up to a timeout for room, so a producer that must
 * not lose data (alarms) slows down instead. Both count into the stats. A
 * full episode starts when a producer finds the queue full and ends when the
 * consumer has drained it to half its capacity (not merely one free slot, so
 * a queue hovering at the brim is one episode, not thousands): the core logs
 * once per episode by watching full_episodes change and `full` go false.
 *
 * Memory: the ring is allocated for its capacity but only the slots the
 * load reaches become resident: a queue that empties starts again at slot 0,
 * and after a burst the pages past the first few thousand slots go back to
 * the kernel once it is empty.
 *
 * Shutdown: queue_close() makes pushes fail with -EPIPE and wakes producers
 * blocked in queue_push_wait(); items already queued can still be popped.
 * Join every producer before queue_free().
 */
#ifndef CGW_QUEUE_H
#define CGW_QUEUE_H

#include "model.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Upper bound on the capacity: it comes from the configuration. */
#define QUEUE_MAX_CAPACITY (1u << 20)

struct queue;

struct queue_stats {
	size_t capacity;
	size_t depth;           /* items queued now */
	size_t high_water;      /* most items ever queued at once */
	size_t waiting;         /* producers blocked in queue_push_wait() now */
	uint64_t pushes;        /* items accepted */
	uint64_t drops;         /* pushes refused because full (-EAGAIN, -ETIMEDOUT) */
	uint64_t waits;         /* queue_push_wait() calls that found it full and blocked */
	uint64_t full_episodes; /* times producers started finding it full */
	bool full;              /* inside a full episode now */
};

/* 0 and *qp set, or -EINVAL (capacity 0 or above QUEUE_MAX_CAPACITY),
 * -ENOMEM, or the negative errno of eventfd(). */
int queue_new(struct queue **qp, size_t capacity);
/* Frees queued items' strings. No producer may be using q. NULL is fine. */
void queue_free(struct queue *q);

/* The eventfd to poll for POLLIN (EFD_CLOEXEC|EFD_NONBLOCK). The queue owns
 * it: do not read, write or close it. */
int queue_fd(const struct queue *q);

/* Consumer side, see "Coalescing" above. */
void queue_set_urgent(struct queue *q, bool (*urgent)(void *arg, const struct cgw_item *it),
		      void *arg);
void queue_hold(struct queue *q, bool hold);

/* 0, -EAGAIN (full: counted as a drop) or -EPIPE (closed). */
int queue_push(struct queue *q, struct cgw_item *item);
/* Like queue_push(), but when full waits for room: up to timeout_ms, or until
 * room or queue_close() if timeout_ms < 0; timeout_ms == 0 is queue_push().
 * 0, -ETIMEDOUT (still full: counted as a drop) or -EPIPE (closed, also while
 * waiting). */
int queue_push_wait(struct queue *q, struct cgw_item *item, int timeout_ms);

/* Like queue_push_wait() for items[0..n) in order, under one lock and with
 * at most one wake-up of the consumer (a producer hands over what one poll
 * read at once, not item by item). When full it waits for room, up to
 * timeout_ms for the whole call (< 0: no limit; 0: no wait). *pushed (may be
 * NULL) is how many were accepted, the first ones: their values belong to
 * the queue (reset to CGW_V_NONE in items[]); the rest are still the
 * caller's. 0 when all were, -EAGAIN (timeout 0) or -ETIMEDOUT (still full:
 * one drop counted) or -EPIPE (closed). */
int queue_push_many_wait(struct queue *q, struct cgw_item *items, size_t n, int timeout_ms,
			 size_t *pushed);

/* Moves up to max items, oldest first, into items[] and returns how many
 * (0 if empty). Consumer only: one thread. Resets the eventfd when the queue
 * is left empty. */
size_t queue_pop_batch(struct queue *q, struct cgw_item *items, size_t max);

/* Refuse further pushes (-EPIPE) and wake blocked producers. Idempotent. */
void queue_close(struct queue *q);

void queue_get_stats(struct queue *q, struct queue_stats *st);

#endif
