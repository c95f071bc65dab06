/*
 * mqtt_link.c - one MQTT connection on the core loop (see mqtt_link.h).
 */
#include "mqtt_link.h"

#include <errno.h>
#include <mqtt_protocol.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "episode.h"
#include "log.h"
#include "model.h"

enum link_state {
	LK_IDLE,       /* waiting for the next attempt */
	LK_RESOLVING,  /* a connector thread has the handle */
	LK_CONNECTING, /* TCP/TLS/CONNACK on the loop */
	LK_UP,
};

/* One connect attempt, shared with its thread. Two references: the thread's
 * and the link's; the last one to let go frees it (and the handle, if the
 * link never took it back). */
struct job {
	atomic_int refs;
	struct mosquitto *mosq;
	char *host;
	int port, keepalive_s;
	int efd;
	int rc, err; /* written by the thread before the eventfd */
};

struct mqtt_link {
	struct loop *loop;
	struct mqtt_link_opts o; /* strings owned */
	struct mqtt_link_cbs cb;
	int state;
	struct mosquitto *mosq; /* while CONNECTING or UP */
	struct job *job;        /* while RESOLVING */
	int fd;                 /* the watched socket, -1 none */
	bool watching_out;
	bool corked; /* TCP_CORK set on the socket until the next do_write() */
	struct loop_timer *timer;
	int64_t deadline;   /* monotonic: end of the attempt in progress */
	int64_t up_mono;    /* monotonic, of the last CONNACK */
	int64_t since_ms;   /* wall clock of the last connect or loss */
	int64_t backoff_ms; /* current backoff ceiling; 0 = start over */
	int in_io;          /* depth of our calls into libmosquitto */
	bool fail_pending;  /* a callback asked to drop the connection */
	char fail_why[128];
	struct episode outage;
	bool announced; /* "connected after" was said in this episode */
	uint64_t flaps; /* losses after that, in this episode */
	char last_error[128];
};

static atomic_uint connectors;
static bool tls_warm;

static void on_timer(struct loop *l, struct loop_timer *t, void *arg);
static void on_io(struct loop *l, int fd, uint32_t ev, void *arg);

/* ---- small helpers ---------------------------------------------------------- */

static uint32_t rnd(void)
{
	uint32_t r = 0;

	if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r))
		r = (uint32_t)cgw_mono_ms() * 2654435761u;
	return r;
}

static const char *mosq_why(int rc, int err)
{
	if (rc == MOSQ_ERR_ERRNO)
		return strerror(err);
	if (rc == MOSQ_ERR_EAI)
		return gai_strerror(err);
	return mosquitto_strerror(rc);
}

static void unwatch(struct mqtt_link *lk)
{
	if (lk->fd >= 0)
		loop_del_fd(lk->loop, lk->fd);
	lk->fd = -1;
	lk->watching_out = false;
}

static void watch(struct mqtt_link *lk)
{
	int fd = lk->mosq ? mosquitto_socket(lk->mosq) : -1;
	bool want_out = fd >= 0 && mosquitto_want_write(lk->mosq);

	if (fd != lk->fd)
		unwatch(lk);
	if (fd < 0)
		return;
	if (lk->fd < 0) {
		if (loop_add_fd(lk->loop, fd, EPOLLIN | (want_out ? EPOLLOUT : 0), on_io, lk) ==
		    0) {
			lk->fd = fd;
			lk->watching_out = want_out;
		}
		return;
	}
	if (want_out != lk->watching_out &&
	    loop_mod_fd(lk->loop, fd, EPOLLIN | (want_out ? EPOLLOUT : 0)) == 0)
		lk->watching_out = want_out;
}

/* ---- the connector thread --------------------------------------------------- */

static void job_release(struct job *j)
{
	if (atomic_fetch_sub(&j->refs, 1) != 1)
		return;
	if (j->mosq)
		mosquitto_destroy(j->mosq);
	if (j->efd >= 0)
		close(j->efd);
	free(j->host);
	free(j);
}

static void *connector(void *arg)
{
	struct job *j = arg;
	uint64_t one = 1;

	errno = 0;
	j->rc = mosquitto_connect_bind_async(j->mosq, j->host, j->port, j->keepalive_s, NULL);
	j->err = errno;
	if (write(j->efd, &one, sizeof(one)) < 0) {
		/* cannot happen with a fresh eventfd; the deadline covers it */
	}
	atomic_fetch_sub(&connectors, 1);
	job_release(j);
	return NULL;
}

/* libmosquitto sets up its TLS library state (an ex_data index, a UI method)
 * lazily, at the first TLS connect, without a lock. Connector threads of two
 * TLS links could race there; so the first TLS connect of the process is
 * made here, on the core thread, to a listening socket of our own on
 * loopback: an address, so nothing is resolved, and no byte is exchanged. */
static void warm_tls(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	struct mosquitto *m = NULL;
	int s;

	if (tls_warm)
		return;
	tls_warm = true;
	s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return;
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(s, 1) == 0 &&
	    getsockname(s, (struct sockaddr *)&a, &len) == 0) {
		m = mosquitto_new(NULL, true, NULL);
		if (m && mosquitto_tls_set(m, NULL, "/etc/ssl/certs", NULL, NULL, NULL) ==
				 MOSQ_ERR_SUCCESS) {
			mosquitto_threaded_set(m, true);
			mosquitto_connect_async(m, "127.0.0.1", ntohs(a.sin_port), 60);
		}
		mosquitto_destroy(m);
	}
	close(s);
}

/* ---- attempts --------------------------------------------------------------- */

static void link_fail(struct mqtt_link *lk, const char *why);

static void on_connect_cb(struct mosquitto *m, void *arg, int rc, int flags,
			  const mosquitto_property *props);
static void on_disconnect_cb(struct mosquitto *m, void *arg, int rc,
			     const mosquitto_property *props);
static void on_publish_cb(struct mosquitto *m, void *arg, int mid, int reason,
			  const mosquitto_property *props);
static void on_message_cb(struct mosquitto *m, void *arg, const struct mosquitto_message *msg,
			  const mosquitto_property *props);
static void on_subscribe_cb(struct mosquitto *m, void *arg, int mid, int n, const int *granted,
			    const mosquitto_property *props);

/* A fresh handle with every option; NULL and *why on failure. */
static struct mosquitto *make_handle(struct mqtt_link *lk, const char **why)
{
	const struct mqtt_link_opts *o = &lk->o;
	struct mosquitto *m = mosquitto_new(o->client_id, o->clean_session, lk);
	int rc = MOSQ_ERR_SUCCESS;

	if (!m) {
		*why = strerror(errno ? errno : ENOMEM);
		return NULL;
	}
	mosquitto_threaded_set(m, true); /* we write, when we choose to */
	mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION,
			     o->protocol == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
	if (o->unlimited_send)
		mosquitto_int_option(m, MOSQ_OPT_SEND_MAXIMUM, 65535);
	mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_connect_v5_callback_set(m, on_connect_cb);
	mosquitto_disconnect_v5_callback_set(m, on_disconnect_cb);
	mosquitto_publish_v5_callback_set(m, on_publish_cb);
	mosquitto_message_v5_callback_set(m, on_message_cb);
	mosquitto_subscribe_v5_callback_set(m, on_subscribe_cb);
	if (o->will_topic) {
		char *w = lk->cb.will ? lk->cb.will(lk->cb.arg) : NULL;
		const char *p = w ? w : o->will_payload;
		rc = mosquitto_will_set(m, o->will_topic, (int)strlen(p), p, 1, o->will_retain);
		free(w);
	}
	if (rc == MOSQ_ERR_SUCCESS && (o->username || o->password))
		rc = mosquitto_username_pw_set(m, o->username, o->password);
	if (rc == MOSQ_ERR_SUCCESS && o->tls) {
		rc = mosquitto_tls_set(m, o->ca_file, o->ca_file ? NULL : "/etc/ssl/certs",
				       o->cert_file, o->key_file, NULL);
		if (rc == MOSQ_ERR_SUCCESS)
			rc = mosquitto_tls_opts_set(m, 1 /* SSL_VERIFY_PEER */, NULL, NULL);
		if (rc == MOSQ_ERR_SUCCESS)
			rc = mosquitto_tls_insecure_set(m, false); /* check the host name */
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		*why = mosquitto_strerror(rc);
		mosquitto_destroy(m);
		return NULL;
	}
	return m;
}

static void schedule(struct mqtt_link *lk)
{
	int64_t delay;

	/* exponential backoff with full jitter, so a fleet of gateways does not
	 * come back in step after a broker restart */
	lk->backoff_ms = lk->backoff_ms ? lk->backoff_ms * 2 : MQTT_LINK_RECONNECT_MIN_MS;
	if (lk->backoff_ms > MQTT_LINK_RECONNECT_MAX_MS)
		lk->backoff_ms = MQTT_LINK_RECONNECT_MAX_MS;
	delay = MQTT_LINK_RECONNECT_MIN_MS / 2 + (int64_t)(rnd() % (uint32_t)lk->backoff_ms);
	if (lk->cb.urgent && delay > MQTT_LINK_PROBE_MS / 2 && lk->cb.urgent(lk->cb.arg)) {
		/* within the probe interval, jittered, leaving room for the
		 * connect itself */
		int64_t probe =
			MQTT_LINK_PROBE_MS / 2 + (int64_t)(rnd() % (MQTT_LINK_PROBE_MS * 4 / 10));
		if (probe < delay)
			delay = probe;
	}
	lk->state = LK_IDLE;
	loop_timer_in(lk->timer, delay);
}

static void start_attempt(struct mqtt_link *lk)
{
	const char *why = NULL;
	struct mosquitto *m;
	struct job *j;
	pthread_attr_t attr;
	pthread_t th;
	int r;

	if (atomic_load(&connectors) >= MQTT_LINK_MAX_CONNECTORS) {
		link_fail(lk, "too many connects in flight (name resolution hangs?)");
		return;
	}
	if (lk->o.tls)
		warm_tls();
	m = make_handle(lk, &why);
	if (!m) {
		link_fail(lk, why);
		return;
	}
	j = calloc(1, sizeof(*j));
	if (!j || !(j->host = strdup(lk->o.host))) {
		free(j);
		mosquitto_destroy(m);
		link_fail(lk, strerror(ENOMEM));
		return;
	}
	j->mosq = m;
	j->port = lk->o.port;
	j->keepalive_s = lk->o.keepalive_s;
	j->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	atomic_init(&j->refs, 2);
	if (j->efd < 0 || loop_add_fd(lk->loop, j->efd, EPOLLIN, on_io, lk) < 0) {
		r = errno;
		atomic_store(&j->refs, 1);
		job_release(j);
		link_fail(lk, strerror(r ? r : EIO));
		return;
	}
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	atomic_fetch_add(&connectors, 1);
	r = pthread_create(&th, &attr, connector, j);
	pthread_attr_destroy(&attr);
	if (r != 0) {
		atomic_fetch_sub(&connectors, 1);
		loop_del_fd(lk->loop, j->efd);
		atomic_store(&j->refs, 1);
		job_release(j);
		link_fail(lk, strerror(r));
		return;
	}
	lk->job = j;
	lk->state = LK_RESOLVING;
	lk->deadline = cgw_mono_ms() + lk->o.connect_timeout_ms;
	loop_timer_at(lk->timer, lk->deadline);
}

/* Leave the attempt's thread to finish alone. */
static void abandon_job(struct mqtt_link *lk)
{
	if (!lk->job)
		return;
	loop_del_fd(lk->loop, lk->job->efd);
	job_release(lk->job);
	lk->job = NULL;
}

/* The thread is done: take the handle back. */
static void job_done(struct mqtt_link *lk)
{
	struct job *j = lk->job;
	uint64_t v;
	int rc, err;

	if (read(j->efd, &v, sizeof(v)) != (ssize_t)sizeof(v))
		return; /* spurious */
	rc = j->rc;
	err = j->err;
	lk->mosq = j->mosq;
	j->mosq = NULL;
	abandon_job(lk);
	if (rc != MOSQ_ERR_SUCCESS) {
		char why[160];
		snprintf(why, sizeof(why), "%s", mosq_why(rc, err));
		link_fail(lk, why);
		return;
	}
	lk->state = LK_CONNECTING;
	watch(lk); /* the CONNECT packet waits for the socket to be writable */
}

/* The attempt or the connection failed: log, tell the owner, retry later. */
static void link_fail(struct mqtt_link *lk, const char *why)
{
	int64_t now = cgw_mono_ms();
	bool was_up = lk->state == LK_UP;
	enum episode_say say;

	if (lk->in_io) {
		/* inside libmosquitto: the handle must outlive this call */
		if (!lk->fail_pending)
			snprintf(lk->fail_why, sizeof(lk->fail_why), "%s", why);
		lk->fail_pending = true;
		return;
	}
	lk->fail_pending = false;
	abandon_job(lk);
	unwatch(lk);
	if (lk->mosq) {
		mosquitto_destroy(lk->mosq);
		lk->mosq = NULL;
	}
	lk->corked = false;
	lk->state = LK_IDLE;
	snprintf(lk->last_error, sizeof(lk->last_error), "%s", why);
	if (was_up) {
		lk->since_ms = cgw_now_ms();
		/* a link that held a while starts the backoff over; one the
		 * broker drops at once does not */
		if (now - lk->up_mono >= MQTT_LINK_STABLE_MS)
			lk->backoff_ms = 0;
		if (lk->outage.active)
			lk->flaps++;
		say = log_episode_bad(&lk->outage, now, LOG_WARNING, lk->o.module,
				      "[%s] connection to %s:%d lost: %s; reconnecting", lk->o.name,
				      lk->o.host, lk->o.port, why);
	} else {
		say = log_episode_bad(&lk->outage, now, LOG_WARNING, lk->o.module,
				      "[%s] cannot connect to %s:%d: %s; retrying", lk->o.name,
				      lk->o.host, lk->o.port, why);
	}
	if (say == EPISODE_STARTED) {
		lk->announced = false;
		lk->flaps = 0;
	} else if (say == EPISODE_SILENT) {
		log_debug(lk->o.module, "[%s] %s:%d: %s", lk->o.name, lk->o.host, lk->o.port, why);
	}
	schedule(lk);
	if (was_up && lk->cb.down)
		lk->cb.down(lk->cb.arg);
}

static void check_pending_fail(struct mqtt_link *lk)
{
	if (lk->fail_pending && !lk->in_io) {
		char why[sizeof(lk->fail_why)];
		memcpy(why, lk->fail_why, sizeof(why));
		lk->fail_pending = false;
		link_fail(lk, why);
	}
}

/* ---- libmosquitto callbacks (inside our loop_read/write calls) ------------- */

static void on_connect_cb(struct mosquitto *m, void *arg, int rc, int flags,
			  const mosquitto_property *props)
{
	struct mqtt_link *lk = arg;
	int64_t now = cgw_mono_ms();

	(void)m;
	(void)flags;
	(void)props;
	if (rc != 0) {
		char why[96];
		snprintf(why, sizeof(why), "refused: %s", mosquitto_connack_string(rc));
		link_fail(lk, why);
		return;
	}
	lk->state = LK_UP;
	lk->up_mono = now;
	lk->since_ms = cgw_now_ms();
	lk->last_error[0] = '\0';
	if (!lk->outage.active)
		log_notice(lk->o.module, "[%s] connected to %s:%d", lk->o.name, lk->o.host,
			   lk->o.port);
	else if (!lk->announced)
		log_notice(lk->o.module, "[%s] connected to %s:%d after %lld s", lk->o.name,
			   lk->o.host, lk->o.port,
			   (long long)((now - lk->outage.started_ms) / 1000));
	else
		log_debug(lk->o.module, "[%s] connected to %s:%d again", lk->o.name, lk->o.host,
			  lk->o.port);
	lk->announced = lk->outage.active;
	loop_timer_in(lk->timer, 1000);
	if (lk->cb.up)
		lk->cb.up(lk->cb.arg);
}

static void on_disconnect_cb(struct mosquitto *m, void *arg, int rc,
			     const mosquitto_property *props)
{
	struct mqtt_link *lk = arg;

	(void)m;
	(void)props;
	if (lk->state == LK_UP || lk->state == LK_CONNECTING)
		link_fail(lk, rc == 0 ? "disconnected" : mosquitto_strerror(rc));
}

static void on_publish_cb(struct mosquitto *m, void *arg, int mid, int reason,
			  const mosquitto_property *props)
{
	struct mqtt_link *lk = arg;

	(void)m;
	(void)props;
	if (lk->cb.published && lk->state == LK_UP)
		lk->cb.published(lk->cb.arg, mid, reason);
}

static void on_message_cb(struct mosquitto *m, void *arg, const struct mosquitto_message *msg,
			  const mosquitto_property *props)
{
	struct mqtt_link *lk = arg;

	(void)m;
	(void)props;
	if (lk->cb.message && lk->state == LK_UP)
		lk->cb.message(lk->cb.arg, msg);
}

static void on_subscribe_cb(struct mosquitto *m, void *arg, int mid, int n, const int *granted,
			    const mosquitto_property *props)
{
	struct mqtt_link *lk = arg;

	(void)m;
	(void)props;
	if (lk->cb.subscribed && lk->state == LK_UP)
		lk->cb.subscribed(lk->cb.arg, mid, n, granted);
}

/* ---- events ------------------------------------------------------------------ */

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static bool more_to_read(int fd)
{
	int n = 0;
	return ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

static void set_cork(struct mqtt_link *lk, bool on)
{
	int fd = lk->mosq ? mosquitto_socket(lk->mosq) : -1, v = on;

	if (fd >= 0 && setsockopt(fd, IPPROTO_TCP, TCP_CORK, &v, sizeof(v)) == 0)
		lk->corked = on;
	else
		lk->corked = false; /* not TCP, or gone: nothing is held */
}

void mqtt_link_cork(struct mqtt_link *lk)
{
	if (lk && lk->state == LK_UP && !lk->corked)
		set_cork(lk, true);
}

static int do_write(struct mqtt_link *lk)
{
	int rc = MOSQ_ERR_SUCCESS;

	if (lk->mosq && mosquitto_want_write(lk->mosq)) {
		lk->in_io++;
		errno = 0;
		rc = mosquitto_loop_write(lk->mosq, 1);
		lk->in_io--;
		if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN)
			link_fail(lk, mosq_why(rc, errno));
	}
	/* what the publishes since the cork wrote leaves now */
	if (lk->corked)
		set_cork(lk, false);
	return rc;
}

static void on_io(struct loop *l, int fd, uint32_t ev, void *arg)
{
	struct mqtt_link *lk = arg;
	unsigned budget = lk->o.read_budget;
	int rc = MOSQ_ERR_SUCCESS;

	(void)l;
	if (lk->job && fd == lk->job->efd) {
		job_done(lk);
		return;
	}
	if (!lk->mosq || fd != lk->fd)
		return;
	if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
		/* a count and a time budget: whatever the callbacks cost per
		 * message (a store write, a PUBACK's ack), a turn stays short */
		int64_t until = mono_us() + MQTT_LINK_READ_US;
		for (unsigned n = 0; n < budget; n++) {
			lk->in_io++;
			errno = 0;
			rc = mosquitto_loop_read(lk->mosq, 1);
			lk->in_io--;
			if (rc != MOSQ_ERR_SUCCESS || lk->fail_pending || !more_to_read(fd) ||
			    mono_us() >= until)
				break;
		}
		if (rc != MOSQ_ERR_SUCCESS && !lk->fail_pending) {
			link_fail(lk, rc == MOSQ_ERR_CONN_LOST && errno == 0 ?
					      "connection closed by the broker" :
					      mosq_why(rc, errno));
			return;
		}
		check_pending_fail(lk);
		if (!lk->mosq)
			return;
		/* durable first, then the acknowledgements */
		if (lk->state == LK_UP && lk->cb.read_done)
			lk->cb.read_done(lk->cb.arg);
		if (!lk->mosq)
			return;
	}
	do_write(lk);
	check_pending_fail(lk);
	if (lk->mosq)
		watch(lk);
}

static void on_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	struct mqtt_link *lk = arg;
	int64_t now = cgw_mono_ms();
	int rc;

	(void)l;
	switch (lk->state) {
	case LK_IDLE:
		start_attempt(lk);
		return;
	case LK_RESOLVING:
		if (now >= lk->deadline)
			link_fail(lk, "connect timed out (name resolution or TCP)");
		else
			loop_timer_at(t, lk->deadline);
		return;
	case LK_CONNECTING:
		if (now >= lk->deadline) {
			link_fail(lk, "connect timed out (no CONNACK)");
			return;
		}
		do_write(lk);
		check_pending_fail(lk);
		if (lk->mosq) {
			watch(lk);
			loop_timer_at(t, lk->deadline < now + 1000 ? lk->deadline : now + 1000);
		}
		return;
	case LK_UP:
		break;
	}
	/* keepalive, and the PINGRESP check that finds a dead link */
	lk->in_io++;
	rc = mosquitto_loop_misc(lk->mosq);
	lk->in_io--;
	if (rc != MOSQ_ERR_SUCCESS) {
		check_pending_fail(lk);
		if (lk->mosq)
			link_fail(lk, rc == MOSQ_ERR_NO_CONN ? "connection closed" :
							       mosq_why(rc, errno));
		return;
	}
	check_pending_fail(lk);
	if (!lk->mosq)
		return;
	if (lk->outage.active && episode_good(&lk->outage, now)) {
		if (lk->flaps)
			log_notice(lk->o.module,
				   "[%s] connection to %s:%d steady again after %llu drops",
				   lk->o.name, lk->o.host, lk->o.port,
				   (unsigned long long)lk->flaps);
		lk->announced = false;
		lk->flaps = 0;
	}
	do_write(lk);
	check_pending_fail(lk);
	if (!lk->mosq)
		return;
	watch(lk);
	loop_timer_in(t, 1000);
}

/* ---- public ------------------------------------------------------------------ */

static char *dup_opt(const char *s, bool *oom)
{
	char *d;

	if (!s)
		return NULL;
	d = strdup(s);
	if (!d)
		*oom = true;
	return d;
}

static void free_opts(struct mqtt_link_opts *o)
{
	free((char *)o->module);
	free((char *)o->name);
	free((char *)o->host);
	free((char *)o->ca_file);
	free((char *)o->cert_file);
	free((char *)o->key_file);
	free((char *)o->username);
	if (o->password) {
		explicit_bzero((char *)o->password, strlen(o->password));
		free((char *)o->password);
	}
	free((char *)o->client_id);
	free((char *)o->will_topic);
	free((char *)o->will_payload);
}

int mqtt_link_new(struct loop *l, const struct mqtt_link_opts *o, const struct mqtt_link_cbs *cb,
		  struct mqtt_link **out)
{
	struct mqtt_link *lk;
	bool oom = false;
	const char *why = NULL;
	struct mosquitto *probe;

	*out = NULL;
	if (!l || !o || !o->host || !*o->host || o->port <= 0 || o->port > 65535 ||
	    (o->will_topic && !o->will_payload))
		return -EINVAL;
	lk = calloc(1, sizeof(*lk));
	if (!lk)
		return -ENOMEM;
	lk->loop = l;
	lk->fd = -1;
	lk->o = *o;
	lk->o.module = dup_opt(o->module ? o->module : "mqtt", &oom);
	lk->o.name = dup_opt(o->name ? o->name : "", &oom);
	lk->o.host = dup_opt(o->host, &oom);
	lk->o.ca_file = dup_opt(o->ca_file, &oom);
	lk->o.cert_file = dup_opt(o->cert_file, &oom);
	lk->o.key_file = dup_opt(o->key_file, &oom);
	lk->o.username = dup_opt(o->username, &oom);
	lk->o.password = dup_opt(o->password, &oom);
	lk->o.client_id = dup_opt(o->client_id, &oom);
	lk->o.will_topic = dup_opt(o->will_topic, &oom);
	lk->o.will_payload = dup_opt(o->will_payload, &oom);
	if (!lk->o.keepalive_s)
		lk->o.keepalive_s = 30;
	if (lk->o.connect_timeout_ms <= 0)
		lk->o.connect_timeout_ms = 10000;
	if (!lk->o.read_budget)
		lk->o.read_budget = MQTT_LINK_READ_BUDGET;
	if (cb)
		lk->cb = *cb;
	lk->outage.quiet_ms = MQTT_LINK_STABLE_MS;
	lk->since_ms = cgw_now_ms();
	lk->timer = loop_timer_new(l, on_timer, lk);
	if (oom || !lk->timer) {
		mqtt_link_free(lk);
		return -ENOMEM;
	}
	/* a handle now, so that a bad option (an unreadable CA file) is an
	 * error at open, not a retry forever */
	probe = make_handle(lk, &why);
	if (!probe) {
		log_err(lk->o.module, "[%s] MQTT setup: %s", lk->o.name, why);
		mqtt_link_free(lk);
		return -EINVAL;
	}
	mosquitto_destroy(probe);
	if (!o->tls && !cfg_is_loopback(o->host)) {
		if (o->insecure)
			log_notice(lk->o.module,
				   "[%s] plaintext MQTT to %s (insecure: true): credentials and "
				   "data cross the network unencrypted",
				   lk->o.name, lk->o.host);
		else
			log_warn(lk->o.module,
				 "[%s] plaintext MQTT to %s: credentials and data cross the "
				 "network unencrypted; use mqtts:// or set insecure: true",
				 lk->o.name, lk->o.host);
	}
	start_attempt(lk);
	*out = lk;
	return 0;
}

void mqtt_link_free(struct mqtt_link *lk)
{
	if (!lk)
		return;
	abandon_job(lk);
	unwatch(lk);
	if (lk->mosq) {
		if (lk->state == LK_UP) {
			/* a clean DISCONNECT: the broker publishes no will. Not up
			 * any more first: libmosquitto reports the disconnect it
			 * writes through our callback. */
			lk->state = LK_IDLE;
			lk->in_io++;
			mosquitto_disconnect(lk->mosq);
			mosquitto_loop_write(lk->mosq, 1);
		}
		mosquitto_destroy(lk->mosq);
	}
	loop_timer_free(lk->timer);
	free_opts(&lk->o);
	free(lk);
}

bool mqtt_link_up(const struct mqtt_link *lk)
{
	return lk && lk->state == LK_UP;
}

struct mosquitto *mqtt_link_mosq(struct mqtt_link *lk)
{
	return lk && lk->state == LK_UP ? lk->mosq : NULL;
}

void mqtt_link_flush(struct mqtt_link *lk)
{
	/* inside a read batch the write follows it anyway */
	if (!lk || lk->in_io)
		return;
	if (lk->state != LK_UP) {
		if (lk->corked)
			set_cork(lk, false);
		return;
	}
	do_write(lk);
	check_pending_fail(lk);
	if (lk->mosq)
		watch(lk);
}

void mqtt_link_probe(struct mqtt_link *lk)
{
	int64_t due, soon;

	if (!lk || lk->state != LK_IDLE)
		return;
	due = loop_timer_due(lk->timer);
	soon = cgw_mono_ms() + (int64_t)(rnd() % 250);
	if (due < 0 || due > soon + MQTT_LINK_PROBE_MS / 2)
		loop_timer_at(lk->timer, soon);
}

int64_t mqtt_link_since_ms(const struct mqtt_link *lk)
{
	return lk ? lk->since_ms : 0;
}

const char *mqtt_link_last_error(const struct mqtt_link *lk)
{
	return lk ? lk->last_error : "";
}

unsigned mqtt_link_connectors(void)
{
	return atomic_load(&connectors);
}
