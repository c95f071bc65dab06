#include "loop.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "episode.h"
#include "log.h"
#include "model.h"

const double loop_hist_bounds_s[LOOP_HIST_BUCKETS] = {
	0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5};

struct watcher {
	int fd;
	loop_fd_cb cb;
	void *arg;
	const char *name;
	bool dead;
	struct watcher *next; /* all watchers; dead ones are reaped between batches */
};

struct loop_timer {
	struct loop *l;
	loop_timer_cb cb;
	void *arg;
	const char *name;
	int64_t due; /* -1: disarmed */
	struct loop_timer *next;
	bool dead;
};

struct loop {
	int epfd;
	int tfd; /* one timerfd, armed at the earliest due timer */
	int sfd; /* signalfd, or -1 */
	loop_signal_cb sig_cb;
	void *sig_arg;
	struct watcher *watchers;
	struct loop_timer *timers;
	int64_t armed; /* what tfd is armed for, -1 none */
	bool stop;
	/* the stall meter: the slowest callback of the current iteration */
	const char *slow_what;
	int64_t slow_ns;
	struct loop_stats stats;
	struct episode stall;
};

static int64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A callback that took ns: the iteration's culprit if it is the slowest. */
static void blame(struct loop *l, const char *what, int64_t ns)
{
	if (ns > l->slow_ns) {
		l->slow_ns = ns;
		l->slow_what = what;
	}
}

static void on_timerfd(struct loop *l, int fd, uint32_t ev, void *arg);

int loop_new(struct loop **out)
{
	struct loop *l = calloc(1, sizeof(*l));
	int r;

	if (!l)
		return -ENOMEM;
	l->sfd = -1;
	l->armed = -1;
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	l->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (l->epfd < 0 || l->tfd < 0) {
		r = -errno;
		goto fail;
	}
	r = loop_add_fd(l, l->tfd, EPOLLIN, on_timerfd, NULL);
	if (r < 0)
		goto fail;
	*out = l;
	return 0;
fail:
	loop_free(l);
	return r;
}

void loop_free(struct loop *l)
{
	if (!l)
		return;
	while (l->watchers) {
		struct watcher *w = l->watchers;
		l->watchers = w->next;
		free(w);
	}
	while (l->timers) {
		struct loop_timer *t = l->timers;
		l->timers = t->next;
		free(t);
	}
	if (l->sfd >= 0)
		close(l->sfd);
	if (l->tfd >= 0)
		close(l->tfd);
	if (l->epfd >= 0)
		close(l->epfd);
	free(l);
}

static struct watcher *find_watcher(struct loop *l, int fd)
{
	for (struct watcher *w = l->watchers; w; w = w->next)
		if (w->fd == fd && !w->dead)
			return w;
	return NULL;
}

int loop_add_fd_named(struct loop *l, int fd, uint32_t events, loop_fd_cb cb, void *arg,
		      const char *name)
{
	struct watcher *w = calloc(1, sizeof(*w));
	struct epoll_event ev = {.events = events};

	if (!w)
		return -ENOMEM;
	w->fd = fd;
	w->cb = cb;
	w->arg = arg;
	w->name = name;
	ev.data.ptr = w;
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int r = -errno;
		free(w);
		return r;
	}
	w->next = l->watchers;
	l->watchers = w;
	return 0;
}

int loop_mod_fd(struct loop *l, int fd, uint32_t events)
{
	struct watcher *w = find_watcher(l, fd);
	struct epoll_event ev = {.events = events};

	if (!w)
		return -ENOENT;
	ev.data.ptr = w;
	return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

void loop_del_fd(struct loop *l, int fd)
{
	struct watcher *w = find_watcher(l, fd);

	if (!w)
		return;
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
	w->dead = true; /* freed after the current batch: an event may still point at it */
}

static void on_signalfd(struct loop *l, int fd, uint32_t ev, void *arg)
{
	struct signalfd_siginfo si;

	(void)ev;
	(void)arg;
	while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		if (l->sig_cb)
			l->sig_cb(l, (int)si.ssi_signo, l->sig_arg);
}

int loop_signals(struct loop *l, const int *signos, int n, loop_signal_cb cb, void *arg)
{
	sigset_t set;

	sigemptyset(&set);
	for (int i = 0; i < n; i++)
		sigaddset(&set, signos[i]);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -errno;
	l->sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (l->sfd < 0)
		return -errno;
	l->sig_cb = cb;
	l->sig_arg = arg;
	return loop_add_fd(l, l->sfd, EPOLLIN, on_signalfd, NULL);
}

static void rearm(struct loop *l)
{
	int64_t next = -1;
	struct itimerspec its = {0};

	for (struct loop_timer *t = l->timers; t; t = t->next)
		if (!t->dead && t->due >= 0 && (next < 0 || t->due < next))
			next = t->due;
	if (next == l->armed)
		return;
	l->armed = next;
	if (next >= 0) {
		/* absolute time; 0 would disarm, so never ask for 0 */
		its.it_value.tv_sec = next / 1000;
		its.it_value.tv_nsec = (next % 1000) * 1000000 + 1;
	}
	timerfd_settime(l->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

struct loop_timer *loop_timer_new_named(struct loop *l, loop_timer_cb cb, void *arg,
					const char *name)
{
	struct loop_timer *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->l = l;
	t->cb = cb;
	t->arg = arg;
	t->name = name;
	t->due = -1;
	t->next = l->timers;
	l->timers = t;
	return t;
}

void loop_timer_at(struct loop_timer *t, int64_t mono_ms)
{
	t->due = mono_ms;
	rearm(t->l);
}

void loop_timer_in(struct loop_timer *t, int64_t ms)
{
	loop_timer_at(t, cgw_mono_ms() + (ms < 0 ? 0 : ms));
}

int64_t loop_timer_due(const struct loop_timer *t)
{
	return t->due;
}

void loop_timer_free(struct loop_timer *t)
{
	if (!t)
		return;
	t->dead = true;
	t->due = -1;
	rearm(t->l);
}

static void on_timerfd(struct loop *l, int fd, uint32_t ev, void *arg)
{
	uint64_t n;
	int64_t now = cgw_mono_ms();

	(void)ev;
	(void)arg;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return;
	l->armed = -1;
	/* A callback may re-arm timers; only fire those due at entry. */
	for (struct loop_timer *t = l->timers; t; t = t->next) {
		if (!t->dead && t->due >= 0 && t->due <= now) {
			int64_t t0 = mono_ns();
			t->due = -1;
			t->cb(l, t, t->arg);
			blame(l, t->name, mono_ns() - t0);
		}
	}
	rearm(l);
}

static void reap(struct loop *l)
{
	struct watcher **wp = &l->watchers;
	while (*wp) {
		if ((*wp)->dead) {
			struct watcher *w = *wp;
			*wp = w->next;
			free(w);
		} else {
			wp = &(*wp)->next;
		}
	}
	struct loop_timer **tp = &l->timers;
	while (*tp) {
		if ((*tp)->dead) {
			struct loop_timer *t = *tp;
			*tp = t->next;
			free(t);
		} else {
			tp = &(*tp)->next;
		}
	}
}

bool loop_stats_record(struct loop_stats *st, int64_t ns, const char *what, int64_t wall_ms)
{
	double s = (double)ns / 1e9;
	int b = 0;

	while (b < LOOP_HIST_BUCKETS && s > loop_hist_bounds_s[b])
		b++;
	st->bucket[b]++;
	st->iterations++;
	st->sum_s += s;
	if (ns > st->longest_ns) {
		st->longest_ns = ns;
		st->longest_at_ms = wall_ms;
		snprintf(st->longest_what, sizeof(st->longest_what), "%s", what ? what : "");
	}
	if (ns <= (int64_t)LOOP_STALL_MS * 1000000)
		return false;
	st->stalls++;
	return true;
}

void loop_get_stats(const struct loop *l, struct loop_stats *st)
{
	*st = l->stats;
}

/* After each iteration: into the histogram; a stall is logged once per
 * episode, with the callback that took the most of it. */
static void meter(struct loop *l, int64_t t0)
{
	int64_t ns = mono_ns() - t0, now = cgw_mono_ms();

	if (loop_stats_record(&l->stats, ns, l->slow_what,
			      ns > l->stats.longest_ns ? cgw_now_ms() : 0))
		log_episode_bad(&l->stall, now, LOG_WARNING, "loop",
				"core loop stalled: an iteration took %lld ms, %lld ms of it in %s "
				"(nothing else was read, raised or sent meanwhile)",
				(long long)(ns / 1000000), (long long)(l->slow_ns / 1000000),
				l->slow_what ? l->slow_what : "?");
	else if (l->stall.active)
		log_episode_good(&l->stall, now, "loop",
				 "core loop iterations are under %d ms again", LOOP_STALL_MS);
	l->slow_what = NULL;
	l->slow_ns = 0;
}

int loop_run(struct loop *l)
{
	struct epoll_event evs[64];

	l->stop = false;
	while (!l->stop) {
		int n = epoll_wait(l->epfd, evs, 64, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		int64_t t0 = mono_ns();
		for (int i = 0; i < n && !l->stop; i++) {
			struct watcher *w = evs[i].data.ptr;
			if (w->dead)
				continue;
			int64_t c0 = mono_ns();
			w->cb(l, w->fd, evs[i].events, w->arg);
			if (w->cb != on_timerfd) /* that one blamed each timer */
				blame(l, w->name, mono_ns() - c0);
		}
		reap(l);
		meter(l, t0);
	}
	return 0;
}

void loop_stop(struct loop *l)
{
	l->stop = true;
}
