/*
 * dtu_listen.c - dial-in DTUs (see dtu_listen.h).
 */
#include "dtu_listen.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "episode.h"
#include "log.h"
#include "metrics.h"

#define DTU_ID_MAX 128
#define DTU_PENDING 16 /* connections that have not registered yet, per port */
_Static_assert(DTU_REST_MAX >= DTU_ID_MAX, "what follows a registration fits dtu_take's rest");

struct dtu_port;

struct dtu_slot {
	struct dtu_port *port;
	uint8_t id[DTU_ID_MAX];
	size_t id_len;
	int wake_fd;
	int pending;              /* the newest connection, not taken yet */
	uint8_t rest[DTU_ID_MAX]; /* what it sent after its registration in the same read */
	size_t rest_n;
	struct dtu_slot *next;
};

struct dtu_port {
	char listen[128];
	int fd, stop_fd;
	pthread_t thread;
	int refs;
	struct dtu_slot *slots;
	struct episode unknown; /* acceptor thread only */
	struct dtu_port *next;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dtu_port *g_ports;

/* The identity for people: text if it is printable, else hex. */
static void show_id(const uint8_t *id, size_t n, char *buf, size_t len)
{
	bool text = n > 0;
	size_t o = 0;

	for (size_t i = 0; i < n; i++)
		text &= id[i] >= 0x20 && id[i] < 0x7F;
	if (text) {
		snprintf(buf, len, "'%.*s'", (int)(n < 64 ? n : 64), (const char *)id);
		return;
	}
	buf[0] = '\0';
	for (size_t i = 0; i < n && o + 4 < len && i < 32; i++)
		o += (size_t)snprintf(buf + o, len - o, "%s%02X", i ? " " : "", id[i]);
}

/* A registration in buf: the slot it names (1), "maybe, read more" (0), or
 * nobody's (-1). Under g_lock. */
static int match(struct dtu_port *p, const uint8_t *buf, size_t n, struct dtu_slot **out)
{
	bool maybe = false;

	for (struct dtu_slot *s = p->slots; s; s = s->next) {
		if (n >= s->id_len && !memcmp(buf, s->id, s->id_len)) {
			*out = s;
			return 1;
		}
		if (n < s->id_len && !memcmp(buf, s->id, n))
			maybe = true;
	}
	return maybe ? 0 : -1;
}

struct pend {
	int fd;
	int64_t deadline;
	size_t len;
	uint8_t buf[DTU_ID_MAX];
};

static void refuse(struct dtu_port *p, struct pend *c, const char *why)
{
	char id[200];

	show_id(c->buf, c->len, id, sizeof(id));
	log_episode_bad(&p->unknown, cgw_mono_ms(), LOG_WARNING, "modbus",
			"[%s] DTU connection refused: %s%s%s", p->listen, why, c->len ? " " : "",
			c->len ? id : "");
	close(c->fd);
	c->fd = -1;
}

static void hand_over(struct dtu_port *p, struct pend *c)
{
	struct dtu_slot *s = NULL;
	int m;

	pthread_mutex_lock(&g_lock);
	m = match(p, c->buf, c->len, &s);
	if (m == 1) {
		uint64_t one = 1;
		if (s->pending >= 0)
			close(s->pending); /* replaced before its bus took it */
		s->pending = c->fd;
		c->fd = -1;
		/* the DTU may send on at once (a heartbeat): the link gets it */
		s->rest_n = c->len - s->id_len;
		memcpy(s->rest, c->buf + s->id_len, s->rest_n);
		if (write(s->wake_fd, &one, sizeof(one)) < 0) {
			/* saturated eventfd: it is readable anyway */
		}
	}
	pthread_mutex_unlock(&g_lock);
	if (m == 1)
		episode_good(&p->unknown, cgw_mono_ms());
	else if (m < 0 || c->len == sizeof(c->buf))
		refuse(p, c, "unknown registration");
}

static void *acceptor(void *arg)
{
	struct dtu_port *p = arg;
	struct pend pend[DTU_PENDING];
	size_t np = 0;

	for (;;) {
		struct pollfd pfd[2 + DTU_PENDING];
		int64_t now = cgw_mono_ms(), wait = 1000;

		pfd[0] = (struct pollfd){.fd = p->stop_fd, .events = POLLIN};
		pfd[1] = (struct pollfd){.fd = p->fd, .events = POLLIN};
		for (size_t i = 0; i < np; i++) {
			pfd[2 + i] = (struct pollfd){.fd = pend[i].fd, .events = POLLIN};
			if (pend[i].deadline - now < wait)
				wait = pend[i].deadline - now;
		}
		if (poll(pfd, 2 + np, wait < 0 ? 0 : (int)wait) < 0 && errno != EINTR)
			break;
		if (pfd[0].revents)
			break;
		now = cgw_mono_ms();
		for (size_t i = 0; i < np; i++) {
			struct pend *c = &pend[i];
			if (pfd[2 + i].revents) {
				ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len,
						 MSG_DONTWAIT);
				if (r > 0) {
					c->len += (size_t)r;
					hand_over(p, c);
				} else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
					close(c->fd);
					c->fd = -1;
				}
			}
			if (c->fd >= 0 && now >= c->deadline)
				refuse(p, c, "no registration within 10 s");
		}
		for (size_t i = np; i-- > 0;)
			if (pend[i].fd < 0)
				pend[i] = pend[--np];
		if (pfd[1].revents & POLLIN) {
			int c = accept4(p->fd, NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0 && np < DTU_PENDING)
				pend[np++] = (struct pend){.fd = c,
							   .deadline = now + DTU_REG_WAIT_MS,
							   .len = 0};
			else if (c >= 0)
				close(c); /* a burst of connections that do not register */
		}
	}
	for (size_t i = 0; i < np; i++)
		close(pend[i].fd);
	return NULL;
}

static int open_port(const char *addr, struct dtu_port **out)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	struct dtu_port *p;
	sigset_t all, old;
	int one = 1, r;

	if (metrics_parse_listen(addr, &ss, &sl) < 0)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	snprintf(p->listen, sizeof(p->listen), "%s", addr);
	p->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	p->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (p->fd < 0 || p->stop_fd < 0 ||
	    setsockopt(p->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(p->fd, (struct sockaddr *)&ss, sl) < 0 || listen(p->fd, 16) < 0) {
		r = -errno;
		goto fail;
	}
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&p->thread, NULL, acceptor, p);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r)
		goto fail;
	*out = p;
	return 0;
fail:
	if (p->fd >= 0)
		close(p->fd);
	if (p->stop_fd >= 0)
		close(p->stop_fd);
	free(p);
	return r;
}

int dtu_attach(const char *listen, const uint8_t *id, size_t id_len, int wake_fd,
	       struct dtu_slot **out)
{
	struct dtu_port *p;
	struct dtu_slot *s;
	int r = 0;

	*out = NULL;
	if (!listen || !id || !id_len || id_len > DTU_ID_MAX)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	memcpy(s->id, id, id_len);
	s->id_len = id_len;
	s->wake_fd = wake_fd;
	s->pending = -1;
	pthread_mutex_lock(&g_lock);
	for (p = g_ports; p && strcmp(p->listen, listen); p = p->next)
		;
	if (!p) {
		r = open_port(listen, &p);
		if (r == 0) {
			p->next = g_ports;
			g_ports = p;
		}
	}
	if (r == 0) {
		p->refs++;
		s->port = p;
		s->next = p->slots;
		p->slots = s;
	}
	pthread_mutex_unlock(&g_lock);
	if (r) {
		free(s);
		return r;
	}
	*out = s;
	return 0;
}

void dtu_detach(struct dtu_slot *s)
{
	struct dtu_port *p, *stop = NULL;

	if (!s)
		return;
	pthread_mutex_lock(&g_lock);
	p = s->port;
	for (struct dtu_slot **pp = &p->slots; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
	if (--p->refs == 0) {
		for (struct dtu_port **pp = &g_ports; *pp; pp = &(*pp)->next) {
			if (*pp == p) {
				*pp = p->next;
				break;
			}
		}
		stop = p;
	}
	pthread_mutex_unlock(&g_lock);
	if (s->pending >= 0)
		close(s->pending);
	free(s);
	if (stop) {
		uint64_t one = 1;
		if (write(stop->stop_fd, &one, sizeof(one)) < 0) {
			/* a fresh eventfd: cannot fail */
		}
		pthread_join(stop->thread, NULL);
		close(stop->fd);
		close(stop->stop_fd);
		free(stop);
	}
}

int dtu_take(struct dtu_slot *s, uint8_t *rest, size_t *rest_n)
{
	int fd;

	pthread_mutex_lock(&g_lock);
	fd = s->pending;
	s->pending = -1;
	*rest_n = fd >= 0 ? s->rest_n : 0;
	if (*rest_n)
		memcpy(rest, s->rest, *rest_n);
	s->rest_n = 0;
	pthread_mutex_unlock(&g_lock);
	return fd;
}
