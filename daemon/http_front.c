/*
 * http_front.c - accept, bound and hand connections to libmicrohttpd on the
 * core loop (see http_front.h).
 *
 * Every request is answered within MHD_run() on the core thread: reads and
 * writes are non-blocking, so a request costs what building its answer costs
 * and never waits on the client.
 */
#include "http_front.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "episode.h"
#include "log.h"
#include "model.h"

#define FRONT_SWEEP_MS 250
#define FRONT_ACCEPT_BUDGET 16 /* accepts per loop turn */
#define FRONT_SLOTS_MAX 1024

enum hc_state { HC_PENDING, HC_MHD, HC_DROPPED };

struct hconn {
	struct http_front *f;
	int fd; /* -1: free slot */
	enum hc_state state;
	unsigned char ip[16];
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int64_t waiting_ms; /* mono: since when a request is awaited, -1 answering */
	size_t body;        /* bytes of body seen on the current request */
	bool in_request;    /* the handler saw this request's head */
};

struct http_front {
	struct loop *loop;
	struct MHD_Daemon *mhd;
	int epfd;
	int lfd;
	struct loop_timer *timer, *sweep;
	char name[32];
	char listen[128];
	struct http_front_conf conf; /* name, listen, addr, tls_*: not kept */
	struct hconn *conn;
	size_t n_slots;
	uint64_t accepted, dropped, refused;
	struct episode dropping;
};

static void run_mhd(struct http_front *f);
static bool make_room(struct http_front *f, enum hc_state state, const unsigned char ip[16]);

static struct hconn *conn_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return ci ? ci->socket_context : NULL;
}

/* ---- MHD's callbacks, around the owner's ---------------------------------------- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	struct http_front *f = cls;
	struct hconn *c = conn_of(conn);

	if (c && *upload_data_size) {
		if ((c->body += *upload_data_size) > f->conf.body_max)
			return MHD_NO; /* MHD closes it */
	} else if (c && c->in_request) {
		/* the whole request is in (a call without data after its head):
		 * the slow-client clock stops until the answer ends */
		c->waiting_ms = -1;
	}
	if (c)
		c->in_request = true;
	return f->conf.handler(f->conf.arg, conn, url, method, version, upload_data,
			       upload_data_size, con_cls);
}

/* An answer was sent (or the request ended otherwise): the next request on a
 * kept connection has request_ms from now. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct http_front *f = cls;
	struct hconn *c = conn_of(conn);

	if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && f->dropping.active)
		log_episode_good(&f->dropping, cgw_mono_ms(), f->name,
				 "%s: no connection dropped for a minute", f->listen);
	if (c && c->fd >= 0) {
		c->waiting_ms = cgw_mono_ms();
		c->body = 0;
		c->in_request = false;
		if (loop_timer_due(f->sweep) < 0)
			loop_timer_in(f->sweep, FRONT_SWEEP_MS);
	}
	if (f->conf.completed)
		f->conf.completed(f->conf.arg, conn, con_cls, toe);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode toe)
{
	struct http_front *f = cls;
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	int fd = ci ? ci->connect_fd : -1;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		for (size_t i = 0; i < f->n_slots; i++)
			if (f->conn[i].fd == fd && fd >= 0 && f->conn[i].state == HC_MHD)
				*socket_context = &f->conn[i];
		return;
	}
	struct hconn *c = *socket_context;
	if (c)
		c->fd = -1;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct http_front *f = cls;
	char line[256];
	size_t n;

	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	/* peers that go away mid-request are no news */
	log_debug(f->name, "%s", line);
}

/* ---- connections: accepted here, handed to MHD ------------------------------------ */

static void ip_key(const struct sockaddr_storage *ss, unsigned char ip[16])
{
	memset(ip, 0, 16);
	if (ss->ss_family == AF_INET6)
		memcpy(ip, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
	else if (ss->ss_family == AF_INET)
		memcpy(ip + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
}

static void drop(struct http_front *f, struct hconn *c)
{
	char who[INET6_ADDRSTRLEN] = "?";

	if (c->addr.ss_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&c->addr)->sin_addr, who, sizeof(who));
	else if (c->addr.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&c->addr)->sin6_addr, who,
			  sizeof(who));
	/* slow clients or a flood: once per episode, the first culprit named */
	log_episode_bad(&f->dropping, cgw_mono_ms(), LOG_NOTICE, f->name,
			"%s: dropping connections that send no request within %lld ms or go "
			"over the limits (first from %s); the others are still answered",
			f->listen, (long long)f->conf.request_ms, who);
	f->dropped++;
	if (c->state == HC_PENDING) {
		loop_del_fd(f->loop, c->fd);
		close(c->fd);
		c->fd = -1;
		return;
	}
	/* MHD reads the end of the stream on its next run and closes it */
	shutdown(c->fd, SHUT_RDWR);
	c->state = HC_DROPPED;
}

static bool has_data(int fd)
{
	char b;

	return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

/* A pending connection has something to say: MHD takes it, and reads its
 * request at once. */
static void promote(struct http_front *f, struct hconn *c)
{
	int fd = c->fd;

	loop_del_fd(f->loop, fd);
	if (!has_data(fd) || !make_room(f, HC_MHD, c->ip)) {
		/* gone before saying anything, or no room */
		close(fd);
		c->fd = -1;
		return;
	}
	c->state = HC_MHD;
	c->in_request = false;
	c->body = 0;
	if (MHD_add_connection(f->mhd, fd, (struct sockaddr *)&c->addr, c->addrlen) != MHD_YES)
		c->fd = -1; /* MHD closed it */
	run_mhd(f);
}

static void on_pending(struct loop *l, int fd, uint32_t events, void *arg)
{
	struct hconn *c = arg;

	(void)l;
	(void)fd;
	(void)events;
	promote(c->f, c);
}

struct by_ip {
	const unsigned char *ip;
	unsigned n;
	struct hconn *oldest; /* waiting */
};

/* Makes room for one more connection from `ip` in `state`. Over the
 * per-address limit, the oldest waiting connection of that address goes;
 * over the total, the oldest waiting one of the address that holds the most
 * (so one address's flood never pushes out another's monitor). False if
 * there is none to push out (every one is being answered). */
static bool make_room(struct http_front *f, enum hc_state state, const unsigned char ip[16])
{
	unsigned per_ip = state == HC_PENDING ? f->conf.pending_per_ip : f->conf.per_ip;
	unsigned max = state == HC_PENDING ? f->conf.pending_max : f->conf.max;
	struct by_ip *by = calloc(f->n_slots, sizeof(*by));
	bool ok = false;

	if (!by)
		return false;
	for (;;) {
		/* per address seen: a connection of it (its key), how many, the
		 * oldest waiting one */
		size_t n_by = 0, own = SIZE_MAX, hog = SIZE_MAX;
		unsigned n_all = 0;

		for (size_t i = 0; i < f->n_slots; i++) {
			struct hconn *c = &f->conn[i];
			size_t k;
			if (c->fd < 0 || c->state != state)
				continue;
			n_all++;
			for (k = 0; k < n_by && memcmp(by[k].ip, c->ip, 16); k++)
				;
			if (k == n_by)
				by[n_by++] = (struct by_ip){.ip = c->ip};
			by[k].n++;
			if (c->waiting_ms >= 0 &&
			    (!by[k].oldest || c->waiting_ms < by[k].oldest->waiting_ms))
				by[k].oldest = c;
		}
		for (size_t k = 0; k < n_by; k++) {
			if (!memcmp(by[k].ip, ip, 16))
				own = k;
			if (by[k].oldest && (hog == SIZE_MAX || by[k].n > by[hog].n))
				hog = k;
		}
		unsigned n_ip = own == SIZE_MAX ? 0 : by[own].n;
		struct hconn *v;
		if (n_ip >= per_ip)
			v = by[own].oldest;
		else if (n_all >= max)
			v = hog == SIZE_MAX ? NULL :
			    own != SIZE_MAX && by[own].oldest && by[own].n >= by[hog].n ?
					      by[own].oldest :
					      by[hog].oldest;
		else {
			ok = true;
			break;
		}
		if (!v)
			break;
		/* one that has spoken meanwhile is not pushed out but handed
		 * on: a monitor's request may be in the socket already */
		if (v->state == HC_PENDING && has_data(v->fd))
			promote(f, v);
		else
			drop(f, v);
		memset(by, 0, f->n_slots * sizeof(*by));
	}
	free(by);
	return ok;
}

static void on_accept(struct loop *l, int fd, uint32_t events, void *arg)
{
	struct http_front *f = arg;
	int64_t now = cgw_mono_ms();

	(void)events;
	for (int k = 0; k < FRONT_ACCEPT_BUDGET; k++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int cfd = accept4(fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct hconn *c = NULL;
		unsigned char ip[16];

		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break; /* EAGAIN; out of fds: the next event tries again */
		}
		ip_key(&ss, ip);
		make_room(f, HC_PENDING, ip); /* pending ones are all waiting */
		for (size_t i = 0; i < f->n_slots && !c; i++)
			if (f->conn[i].fd < 0)
				c = &f->conn[i];
		if (!c || loop_add_fd(l, cfd, EPOLLIN | EPOLLRDHUP, on_pending, c) < 0) {
			f->refused++;
			close(cfd);
			continue;
		}
		*c = (struct hconn){.f = f, .fd = cfd, .state = HC_PENDING, .waiting_ms = now};
		memcpy(c->ip, ip, 16);
		memcpy(&c->addr, &ss, len);
		c->addrlen = len;
		f->accepted++;
	}
	if (loop_timer_due(f->sweep) < 0)
		loop_timer_in(f->sweep, FRONT_SWEEP_MS);
}

/* Drops the connections that had request_ms to send a request. */
static void on_sweep(struct loop *l, struct loop_timer *t, void *arg)
{
	struct http_front *f = arg;
	int64_t now = cgw_mono_ms();
	bool any = false;

	(void)l;
	for (size_t i = 0; i < f->n_slots; i++) {
		struct hconn *c = &f->conn[i];
		if (c->fd < 0 || c->state == HC_DROPPED)
			continue;
		if (c->waiting_ms >= 0 && now - c->waiting_ms >= f->conf.request_ms)
			drop(f, c);
		else if (c->waiting_ms >= 0)
			any = true;
	}
	run_mhd(f);
	if (any)
		loop_timer_in(t, FRONT_SWEEP_MS);
}

static void run_mhd(struct http_front *f)
{
	MHD_UNSIGNED_LONG_LONG t = 0;

	MHD_run(f->mhd);
	if (MHD_get_timeout(f->mhd, &t) == MHD_YES)
		loop_timer_in(f->timer, t > 60000 ? 60000 : (int64_t)t);
	else
		loop_timer_at(f->timer, -1);
}

static void on_epoll(struct loop *l, int fd, uint32_t events, void *arg)
{
	(void)l;
	(void)fd;
	(void)events;
	run_mhd(arg);
}

static void on_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	(void)l;
	(void)t;
	run_mhd(arg);
}

void http_front_kick(struct http_front *f)
{
	if (f)
		loop_timer_in(f->timer, 0);
}

void http_front_stats(const struct http_front *f, struct http_front_stats *st)
{
	memset(st, 0, sizeof(*st));
	if (!f)
		return;
	for (size_t i = 0; i < f->n_slots; i++)
		st->held += f->conn[i].fd >= 0 && f->conn[i].state != HC_DROPPED;
	st->accepted = f->accepted;
	st->dropped = f->dropped;
	st->refused = f->refused;
}

/* ---- lifecycle ------------------------------------------------------------------- */

static int listen_socket(struct http_front *f, const struct http_front_conf *conf, int *out)
{
	int fd, one = 1, r;

	fd = socket(conf->addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		log_err(f->name, "%s: socket: %s", f->listen, strerror(-r));
		return r;
	}
	/* a restart must not wait for TIME_WAIT; it still cannot take a port
	 * another process listens on */
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (conf->addr->ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)conf->addr, conf->addrlen) < 0 ||
	    listen(fd, 128) < 0) {
		r = -errno;
		bool inuse = r == -EADDRINUSE;
		log_err(f->name, "cannot listen on %s: %s%s%s%s", f->listen, strerror(-r),
			inuse ? " (another program has this port; set " : "", inuse ? f->name : "",
			inuse ? ".listen)" : "");
		close(fd);
		return r;
	}
	*out = fd;
	return 0;
}

int http_front_open(struct loop *l, const struct http_front_conf *conf, struct http_front **out)
{
	struct http_front *f = NULL;
	const union MHD_DaemonInfo *info;
	unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET;
	bool tls = conf->mhd_flags & MHD_USE_TLS;
	int fd = -1, r;

	*out = NULL;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->loop = l;
	f->epfd = -1;
	f->lfd = -1;
	f->conf = *conf;
	f->conf.name = f->conf.listen = f->conf.tls_cert = f->conf.tls_key = NULL;
	f->conf.addr = NULL;
	snprintf(f->name, sizeof(f->name), "%s", conf->name);
	snprintf(f->listen, sizeof(f->listen), "%s", conf->listen);
	/* slots: pending, with MHD, and dropped but not yet closed by MHD */
	f->n_slots = (size_t)conf->pending_max + 2 * (size_t)conf->max + FRONT_ACCEPT_BUDGET;
	if (f->n_slots > FRONT_SLOTS_MAX)
		f->n_slots = FRONT_SLOTS_MAX;
	f->conn = calloc(f->n_slots, sizeof(*f->conn));
	f->timer = loop_timer_new(l, on_timer, f);
	f->sweep = loop_timer_new(l, on_sweep, f);
	if (!f->conn || !f->timer || !f->sweep) {
		r = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < f->n_slots; i++)
		f->conn[i].fd = -1;
	r = listen_socket(f, conf, &fd);
	if (r < 0)
		goto fail;
	if (conf->addr->ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* no listening socket for MHD: on_accept() hands it each connection */
	f->mhd = MHD_start_daemon(flags | conf->mhd_flags, 0, NULL, NULL, on_request, f,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, f,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)f->n_slots,
				  MHD_OPTION_CONNECTION_TIMEOUT, conf->conn_timeout_s,
				  MHD_OPTION_CONNECTION_MEMORY_LIMIT, conf->conn_memory,
				  MHD_OPTION_NOTIFY_CONNECTION, on_connection, f,
				  MHD_OPTION_NOTIFY_COMPLETED, on_completed, f,
				  tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, conf->tls_cert,
				  MHD_OPTION_HTTPS_MEM_KEY, conf->tls_key, MHD_OPTION_END);
	if (!f->mhd) {
		log_err(f->name, "%s: libmicrohttpd did not start%s", f->listen,
			tls ? " (is the certificate or key unreadable PEM?)" : "");
		r = -EIO;
		goto fail;
	}
	info = MHD_get_daemon_info(f->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	if (!info || info->epoll_fd < 0) {
		log_err(f->name, "%s: libmicrohttpd has no epoll fd", f->listen);
		r = -EIO;
		goto fail;
	}
	r = loop_add_fd(l, info->epoll_fd, EPOLLIN, on_epoll, f);
	if (r < 0) {
		log_err(f->name, "%s: %s", f->listen, strerror(-r));
		goto fail;
	}
	f->epfd = info->epoll_fd;
	r = loop_add_fd(l, fd, EPOLLIN, on_accept, f);
	if (r < 0) {
		log_err(f->name, "%s: %s", f->listen, strerror(-r));
		goto fail;
	}
	f->lfd = fd;
	fd = -1;
	run_mhd(f);
	*out = f;
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	http_front_close(f);
	return r;
}

void http_front_close(struct http_front *f)
{
	if (!f)
		return;
	if (f->lfd >= 0) {
		loop_del_fd(f->loop, f->lfd);
		close(f->lfd);
	}
	for (size_t i = 0; f->conn && i < f->n_slots; i++) {
		if (f->conn[i].fd >= 0 && f->conn[i].state == HC_PENDING) {
			loop_del_fd(f->loop, f->conn[i].fd);
			close(f->conn[i].fd);
			f->conn[i].fd = -1;
		}
	}
	if (f->epfd >= 0)
		loop_del_fd(f->loop, f->epfd);
	if (f->mhd) {
		MHD_run(f->mhd); /* resumed connections leave the suspended list */
		MHD_stop_daemon(f->mhd);
	}
	loop_timer_free(f->timer);
	loop_timer_free(f->sweep);
	free(f->conn);
	free(f);
}
