/*
 * rtu_link.c - Modbus RTU frames over TCP (see rtu_link.h).
 */
#include "rtu_link.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <modbus.h>

#define RX_CAP (2 * RTU_MAX_ADU)

struct rtu_link {
	char *host;
	char port[8];
	int fd;
	uint8_t rx[RX_CAP];
	size_t rx_n;
	struct rtu_link_counters c;
	uint8_t hb[RTU_MAX_ADU];
	size_t hb_n;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct rtu_link *rtu_link_new(const char *host, int port)
{
	struct rtu_link *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->fd = -1;
	l->host = strdup(host ? host : "");
	if (!l->host) {
		free(l);
		return NULL;
	}
	snprintf(l->port, sizeof(l->port), "%d", port);
	return l;
}

void rtu_link_close(struct rtu_link *l)
{
	if (l && l->fd >= 0) {
		close(l->fd);
		l->fd = -1;
	}
	if (l)
		l->rx_n = 0;
}

void rtu_link_free(struct rtu_link *l)
{
	if (!l)
		return;
	rtu_link_close(l);
	free(l->host);
	free(l);
}

static int connect_one(const struct addrinfo *ai, int64_t deadline)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			ai->ai_protocol);
	int e = 0, one = 1;
	socklen_t el = sizeof(e);

	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int64_t left;
		if (errno != EINPROGRESS) {
			e = errno;
			goto fail;
		}
		left = deadline - now_ms();
		if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
			e = ETIMEDOUT;
			goto fail;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0)
			e = errno;
		if (e)
			goto fail;
	}
	/* requests are small and each waits for its answer: no Nagle delay */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
fail:
	close(fd);
	return -e;
}

int rtu_link_connect(struct rtu_link *l, int64_t timeout_ms)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC};
	struct addrinfo *res = NULL;
	int64_t deadline = now_ms() + timeout_ms;
	int r, e = EHOSTUNREACH;

	rtu_link_close(l);
	r = getaddrinfo(l->host, l->port, &hints, &res);
	if (r)
		return r == EAI_SYSTEM ? errno : EHOSTUNREACH;
	for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		int fd = connect_one(ai, deadline);
		if (fd >= 0) {
			l->fd = fd;
			e = 0;
			break;
		}
		e = -fd;
	}
	freeaddrinfo(res);
	return e;
}

/* A heartbeat in the stream is no frame: cut it out wherever it is. */
static void strip_heartbeats(struct rtu_link *l)
{
	if (!l->hb_n)
		return;
	for (size_t i = 0; i + l->hb_n <= l->rx_n;) {
		if (memcmp(l->rx + i, l->hb, l->hb_n)) {
			i++;
			continue;
		}
		memmove(l->rx + i, l->rx + i + l->hb_n, l->rx_n - i - l->hb_n);
		l->rx_n -= l->hb_n;
		l->c.heartbeats++;
	}
}

/* The bytes at the end of the buffer that may be a heartbeat still
 * arriving (TCP may deliver it in pieces): the longest end that is a proper
 * start of the heartbeat. */
static size_t hb_tail(const struct rtu_link *l)
{
	size_t k;

	if (!l->hb_n)
		return 0;
	k = l->hb_n - 1 < l->rx_n ? l->hb_n - 1 : l->rx_n;
	for (; k > 0; k--)
		if (!memcmp(l->rx + l->rx_n - k, l->hb, k))
			return k;
	return 0;
}

void rtu_link_adopt(struct rtu_link *l, int fd, const uint8_t *first, size_t n)
{
	int one = 1;

	rtu_link_close(l);
	l->fd = fd;
	l->rx_n = 0;
	if (n > RX_CAP)
		n = RX_CAP;
	if (n) {
		memcpy(l->rx, first, n);
		l->rx_n = n;
		strip_heartbeats(l);
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int rtu_link_set_heartbeat(struct rtu_link *l, const uint8_t *hb, size_t n)
{
	if (n > sizeof(l->hb))
		return -EINVAL;
	if (n)
		memcpy(l->hb, hb, n);
	l->hb_n = n;
	return 0;
}

/* Read what is there, waiting at most ms. 0 data read, ETIMEDOUT, or a
 * connection error. */
static int fill(struct rtu_link *l, int64_t ms)
{
	struct pollfd p = {.fd = l->fd, .events = POLLIN};
	ssize_t n;
	int r;

	if (l->fd < 0)
		return ENOTCONN;
	r = poll(&p, 1, ms < 0 ? 0 : (int)ms);
	if (r < 0)
		return errno == EINTR ? 0 : errno;
	if (r == 0)
		return ETIMEDOUT;
	if (l->rx_n == RX_CAP) {
		/* cannot happen: a full buffer always holds a frame or garbage */
		l->c.garbage_bytes += l->rx_n;
		l->rx_n = 0;
	}
	n = recv(l->fd, l->rx + l->rx_n, RX_CAP - l->rx_n, MSG_DONTWAIT);
	if (n == 0)
		return ECONNRESET;
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : errno;
	l->rx_n += (size_t)n;
	strip_heartbeats(l);
	return 0;
}

/* What waits is stale, but heartbeats are heartbeats, and the start of one
 * still arriving stays for the rest of it. */
void rtu_link_flush(struct rtu_link *l)
{
	if (!l || l->fd < 0)
		return;
	for (;;) {
		ssize_t n = recv(l->fd, l->rx + l->rx_n, RX_CAP - l->rx_n, MSG_DONTWAIT);
		size_t keep;

		if (n > 0) {
			l->rx_n += (size_t)n;
			strip_heartbeats(l);
		}
		keep = hb_tail(l);
		l->c.stale_bytes += l->rx_n - keep;
		memmove(l->rx, l->rx + l->rx_n - keep, keep);
		l->rx_n = keep;
		if (n <= 0)
			break;
	}
}

static void drop(struct rtu_link *l, size_t n)
{
	memmove(l->rx, l->rx + n, l->rx_n - n);
	l->rx_n -= n;
}

static int send_all(struct rtu_link *l, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = send(l->fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pfd = {.fd = l->fd, .events = POLLOUT};
				if (poll(&pfd, 1, 1000) <= 0)
					return ETIMEDOUT;
				continue;
			}
			return errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int rtu_link_transact(struct rtu_link *l, const uint8_t *frame, size_t flen,
		      const struct rtu_req *req, uint8_t *data, size_t cap, size_t *len,
		      int64_t timeout_ms)
{
	int64_t deadline;
	bool bytes = false;
	int e;

	*len = 0;
	if (!l || l->fd < 0)
		return ENOTCONN;
	rtu_link_flush(l);
	e = send_all(l, frame, flen);
	if (e)
		return e == EAGAIN ? ETIMEDOUT : e;
	deadline = now_ms() + timeout_ms;
	for (;;) {
		struct rtu_answer a;
		size_t used;
		size_t tail = hb_tail(l);
		enum rtu_scan_result r = rtu_scan(l->rx, l->rx_n, req, &a, &used);

		/* garbage that reaches into what may be a heartbeat still
		 * arriving: only what comes before it is garbage yet */
		if (r == RTU_GARBAGE && tail && used > l->rx_n - tail) {
			used = l->rx_n - tail;
			if (!used)
				r = RTU_NEED_MORE;
		}

		switch (r) {
		case RTU_ANSWER:
			if (a.len > cap)
				a.len = cap;
			if (a.len)
				memcpy(data, a.data, a.len);
			*len = a.len;
			drop(l, used);
			return 0;
		case RTU_EXCEPTION:
			drop(l, used);
			return a.exception >= 1 && a.exception <= 11 && a.exception != 9 ?
				       MODBUS_ENOBASE + a.exception :
				       EMBUNKEXC;
		case RTU_FOREIGN:
			l->c.foreign++;
			drop(l, used);
			continue;
		case RTU_GARBAGE:
			l->c.garbage_bytes += used;
			bytes = true;
			drop(l, used);
			continue;
		case RTU_NEED_MORE:
			break;
		}
		if (l->rx_n > tail) /* not only the start of a heartbeat */
			bytes = true;
		if (now_ms() >= deadline)
			return bytes ? EMBBADCRC : ETIMEDOUT;
		e = fill(l, deadline - now_ms());
		if (e == ETIMEDOUT)
			return bytes ? EMBBADCRC : ETIMEDOUT;
		if (e)
			return e;
	}
}

void rtu_link_counters(const struct rtu_link *l, struct rtu_link_counters *c)
{
	*c = l ? l->c : (struct rtu_link_counters){0};
}
