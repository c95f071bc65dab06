/*
 * loop.h - the core event loop: epoll for fds, one timerfd for all timers,
 * signalfd for signals. Single-threaded; nothing here is thread-safe except
 * loop_wake() (an eventfd), which other threads may call.
 *
 * Ownership: the loop owns its watchers and timers; callers keep the handle
 * returned by loop_timer_new() and free it with loop_timer_free(). Callbacks
 * may add, remove or re-arm anything, including their own watcher.
 */
#ifndef CGW_LOOP_H
#define CGW_LOOP_H

#include <stdint.h>
#include <sys/epoll.h>

struct loop;
struct loop_timer;

typedef void (*loop_fd_cb)(struct loop *l, int fd, uint32_t events, void *arg);
typedef void (*loop_timer_cb)(struct loop *l, struct loop_timer *t, void *arg);
typedef void (*loop_signal_cb)(struct loop *l, int signo, void *arg);

int loop_new(struct loop **out);
void loop_free(struct loop *l);

int loop_add_fd(struct loop *l, int fd, uint32_t events, loop_fd_cb cb, void *arg);
int loop_mod_fd(struct loop *l, int fd, uint32_t events);
void loop_del_fd(struct loop *l, int fd);

/* Signals are blocked for the whole process (call before starting threads)
 * and delivered to cb from the loop. */
int loop_signals(struct loop *l, const int *signos, int n, loop_signal_cb cb, void *arg);

struct loop_timer *loop_timer_new(struct loop *l, loop_timer_cb cb, void *arg);
/* Fire once at a CLOCK_MONOTONIC time in ms (cgw_mono_ms()); -1 disarms. */
void loop_timer_at(struct loop_timer *t, int64_t mono_ms);
void loop_timer_in(struct loop_timer *t, int64_t ms);
int64_t loop_timer_due(const struct loop_timer *t); /* -1 if disarmed */
void loop_timer_free(struct loop_timer *t);

/* Run until loop_stop(); returns 0, or a negative errno from epoll. */
int loop_run(struct loop *l);
void loop_stop(struct loop *l);

#endif
