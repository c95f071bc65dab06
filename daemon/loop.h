/*
 * loop.h - the core event loop: epoll for fds, one timerfd for all timers,
 * signalfd for signals. Single-threaded; nothing here is thread-safe except
 * loop_wake() (an eventfd), which other threads may call.
 *
 * Ownership: the loop owns its watchers and timers; callers keep the handle
 * returned by loop_timer_new() and free it with loop_timer_free(). Callbacks
 * may add, remove or re-arm anything, including their own watcher.
 *
 * The stall meter: every iteration (from epoll_wait() returning to the next
 * call) is timed into a histogram, and every callback is timed so that a slow
 * iteration can name what it was doing. Watchers and timers are named at
 * registration: loop_add_fd() and loop_timer_new() are macros that pass
 * "file.c:callback" (the *_named() forms take a name, which the loop does not
 * copy: a string literal, or one that outlives the registration). An
 * iteration longer than LOOP_STALL_MS logs a warning once per episode
 * (daemon/episode.h), naming the slowest callback of that iteration.
 */
#ifndef CGW_LOOP_H
#define CGW_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>

struct loop;
struct loop_timer;

typedef void (*loop_fd_cb)(struct loop *l, int fd, uint32_t events, void *arg);
typedef void (*loop_timer_cb)(struct loop *l, struct loop_timer *t, void *arg);
typedef void (*loop_signal_cb)(struct loop *l, int signo, void *arg);

int loop_new(struct loop **out);
void loop_free(struct loop *l);

/* "daemon/metrics.c:on_timer": the source file (as given to the compiler)
 * and the callback's name */
#define LOOP_NAME(cb) (__FILE__ ":" #cb)

int loop_add_fd_named(struct loop *l, int fd, uint32_t events, loop_fd_cb cb, void *arg,
		      const char *name);
#define loop_add_fd(l, fd, events, cb, arg) loop_add_fd_named(l, fd, events, cb, arg, LOOP_NAME(cb))
int loop_mod_fd(struct loop *l, int fd, uint32_t events);
void loop_del_fd(struct loop *l, int fd);

/* Signals are blocked for the whole process (call before starting threads)
 * and delivered to cb from the loop. */
int loop_signals(struct loop *l, const int *signos, int n, loop_signal_cb cb, void *arg);

struct loop_timer *loop_timer_new_named(struct loop *l, loop_timer_cb cb, void *arg,
					const char *name);
#define loop_timer_new(l, cb, arg) loop_timer_new_named(l, cb, arg, LOOP_NAME(cb))
/* Fire once at a CLOCK_MONOTONIC time in ms (cgw_mono_ms()); -1 disarms. */
void loop_timer_at(struct loop_timer *t, int64_t mono_ms);
void loop_timer_in(struct loop_timer *t, int64_t ms);
int64_t loop_timer_due(const struct loop_timer *t); /* -1 if disarmed */
void loop_timer_free(struct loop_timer *t);

/* Run until loop_stop(); returns 0, or a negative errno from epoll. */
int loop_run(struct loop *l);
void loop_stop(struct loop *l);

/* ---- the stall meter ---- */
#define LOOP_STALL_MS 100 /* an iteration longer than this is logged (per episode) */
#define LOOP_HIST_BUCKETS 13
/* Upper bounds (seconds) of the histogram's buckets, ascending; a last,
 * implicit bucket is +Inf. */
extern const double loop_hist_bounds_s[LOOP_HIST_BUCKETS];

struct loop_stats {
	uint64_t iterations;
	uint64_t bucket[LOOP_HIST_BUCKETS + 1]; /* per bucket, not cumulative; last: +Inf */
	double sum_s;                           /* all iterations together */
	int64_t longest_ns;                     /* the longest iteration since start */
	int64_t longest_at_ms;                  /* when it ended (wall clock), 0 none */
	char longest_what[80];                  /* its slowest callback, "" none */
	uint64_t stalls;                        /* iterations over LOOP_STALL_MS */
};
void loop_get_stats(const struct loop *l, struct loop_stats *st);

/* One iteration of `ns` whose slowest callback was `what` (may be NULL):
 * what the loop does after each iteration; exposed for tests. Returns true
 * when it is a stall (over LOOP_STALL_MS). */
bool loop_stats_record(struct loop_stats *st, int64_t ns, const char *what, int64_t wall_ms);

#endif
