/*
 * uplink_mqtt.c - MQTT delivery to the platform (libmosquitto, on the core
 * loop: no library thread).
 *
 * QoS 1, persistent session (clean_session=false, stable client id). A row
 * leaves the outbox only when its PUBACK arrives (on_publish). Each lane has
 * its own in-flight budget and the alarm lane is always filled first, so an
 * alarm never queues behind telemetry: at most one lane's window of small
 * packets is ahead of it in the socket. libmosquitto's own in-flight limit is
 * lifted so it never holds back a packet we chose to send.
 *
 * After a disconnect nothing in flight is acknowledged: every lane cursor goes
 * back to 0 and the rows are sent again on the next connection (duplicates
 * carry the same id). The outage is logged once when it starts and once when
 * it ends.
 */
#include <errno.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "secret.h"
#include "uplink.h"

#define FETCH_MAX 64
#define RECONNECT_MIN_MS 500
#define RECONNECT_MAX_MS 60000

struct flight {
	uint64_t seq; /* 0: free slot */
	int mid;
	uint8_t lane;
};

struct uplink {
	struct uplink_env env;
	const struct cfg_uplink *cfg;
	int64_t store_id;
	struct mosquitto *mosq;
	char *prefix;
	char *password;
	int fd;
	bool watching_out;
	bool connected;
	bool connecting;
	bool ever_connected;
	int64_t since_ms;
	int64_t outage_start_ms;
	int64_t backoff_ms;
	struct loop_timer *timer;
	uint64_t cursor[CGW_LANE_COUNT];
	unsigned inflight[CGW_LANE_COUNT];
	unsigned budget;
	/* in-flight messages by mid: open addressing, size a power of two */
	struct flight *fl;
	size_t fl_size;
	uint64_t sent, acked;
	char last_error[128];
	char *cmd_topic_prefix; /* "P/cmd/" */
	struct store_item items[FETCH_MAX];
};

static void pump(struct uplink *u);
static void schedule_reconnect(struct uplink *u);
static void on_io(struct loop *l, int fd, uint32_t ev, void *arg);

static struct flight *fl_find(struct uplink *u, int mid)
{
	size_t mask = u->fl_size - 1;
	for (size_t i = (size_t)mid & mask, n = 0; n < u->fl_size; i = (i + 1) & mask, n++) {
		if (u->fl[i].seq == 0)
			return NULL;
		if (u->fl[i].mid == mid)
			return &u->fl[i];
	}
	return NULL;
}

static void fl_put(struct uplink *u, int mid, uint64_t seq, int lane)
{
	size_t mask = u->fl_size - 1;
	for (size_t i = (size_t)mid & mask;; i = (i + 1) & mask) {
		if (u->fl[i].seq == 0) {
			u->fl[i] = (struct flight){.seq = seq, .mid = mid, .lane = (uint8_t)lane};
			return;
		}
	}
}

/* Deletion with backward shift keeps probe chains intact. */
static void fl_del(struct uplink *u, struct flight *f)
{
	size_t mask = u->fl_size - 1;
	size_t i = (size_t)(f - u->fl), j = i;

	for (;;) {
		j = (j + 1) & mask;
		if (u->fl[j].seq == 0)
			break;
		size_t home = (size_t)u->fl[j].mid & mask;
		/* move j into i if home is not cyclically in (i, j] */
		if ((i <= j) ? (home <= i || home > j) : (home <= i && home > j)) {
			u->fl[i] = u->fl[j];
			i = j;
		}
	}
	u->fl[i].seq = 0;
}

static void fl_clear(struct uplink *u)
{
	memset(u->fl, 0, u->fl_size * sizeof(*u->fl));
	memset(u->inflight, 0, sizeof(u->inflight));
	memset(u->cursor, 0, sizeof(u->cursor));
}

static void watch(struct uplink *u)
{
	int fd = mosquitto_socket(u->mosq);
	bool want_out = mosquitto_want_write(u->mosq);

	if (fd != u->fd) {
		if (u->fd >= 0)
			loop_del_fd(u->env.loop, u->fd);
		u->fd = -1;
		u->watching_out = false;
	}
	if (fd < 0)
		return;
	if (u->fd < 0) {
		if (loop_add_fd(u->env.loop, fd, EPOLLIN | (want_out ? EPOLLOUT : 0), on_io, u) ==
		    0) {
			u->fd = fd;
			u->watching_out = want_out;
		}
		return;
	}
	if (want_out != u->watching_out) {
		loop_mod_fd(u->env.loop, fd, EPOLLIN | (want_out ? EPOLLOUT : 0));
		u->watching_out = want_out;
	}
}

static void drop_connection(struct uplink *u, const char *why)
{
	int64_t now = cgw_now_ms();

	if (u->fd >= 0) {
		loop_del_fd(u->env.loop, u->fd);
		u->fd = -1;
	}
	if (u->connected) {
		struct store_stats st;
		uint64_t depth = 0;
		if (store_stats(u->env.store, &st) == 0)
			for (size_t i = 0; i < st.n_uplinks; i++)
				if (st.uplink[i].id == u->store_id)
					for (int l = 0; l < CGW_LANE_COUNT; l++)
						depth += st.uplink[i].lane[l].depth;
		log_warn("uplink", "[%s] connection to %s:%lld lost (%s); %llu messages waiting",
			 u->cfg->name, u->cfg->host, (long long)u->cfg->port, why,
			 (unsigned long long)depth);
		u->outage_start_ms = now;
		u->since_ms = now;
	} else if (strcmp(u->last_error, why) != 0) {
		/* a connect that fails (TLS handshake, refused): once per reason */
		log_warn("uplink", "[%s] cannot connect to %s:%lld: %s", u->cfg->name, u->cfg->host,
			 (long long)u->cfg->port, why);
		if (!u->outage_start_ms)
			u->outage_start_ms = now;
	}
	snprintf(u->last_error, sizeof(u->last_error), "%s", why);
	u->connected = false;
	u->connecting = false;
	fl_clear(u);
	schedule_reconnect(u);
}

static void on_io(struct loop *l, int fd, uint32_t ev, void *arg)
{
	struct uplink *u = arg;
	int rc = MOSQ_ERR_SUCCESS;

	(void)l;
	(void)fd;
	if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
		rc = mosquitto_loop_read(u->mosq, 1);
	if (rc == MOSQ_ERR_SUCCESS && (ev & EPOLLOUT))
		rc = mosquitto_loop_write(u->mosq, 1);
	if (rc != MOSQ_ERR_SUCCESS) {
		drop_connection(u, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
		return;
	}
	if (u->connected)
		pump(u);
	watch(u);
}

static void on_connect(struct mosquitto *m, void *arg, int rc, int flags,
		       const mosquitto_property *props)
{
	struct uplink *u = arg;
	int64_t now = cgw_now_ms();
	char topic[512], birth[256];

	(void)m;
	(void)flags;
	(void)props;
	u->connecting = false;
	if (rc != 0) {
		char why[96];
		snprintf(why, sizeof(why), "refused: %s", mosquitto_connack_string(rc));
		if (!u->outage_start_ms || strcmp(u->last_error, why) != 0)
			log_err("uplink", "[%s] %s:%lld %s", u->cfg->name, u->cfg->host,
				(long long)u->cfg->port, why);
		snprintf(u->last_error, sizeof(u->last_error), "%s", why);
		mosquitto_disconnect(u->mosq);
		if (!u->outage_start_ms)
			u->outage_start_ms = now;
		fl_clear(u);
		schedule_reconnect(u);
		return;
	}
	u->connected = true;
	u->backoff_ms = 0;
	u->since_ms = now;
	u->last_error[0] = '\0';
	fl_clear(u);
	if (u->outage_start_ms)
		log_notice("uplink", "[%s] connected to %s:%lld after %lld s", u->cfg->name,
			   u->cfg->host, (long long)u->cfg->port,
			   (long long)((now - u->outage_start_ms) / 1000));
	else
		log_notice("uplink", "[%s] connected to %s:%lld", u->cfg->name, u->cfg->host,
			   (long long)u->cfg->port);
	u->outage_start_ms = 0;
	u->ever_connected = true;
	/* Backed-off rows go out now: the link is back. */
	store_uplink_rearm(u->env.store, u->store_id);

	snprintf(topic, sizeof(topic), "%s/status", u->prefix);
	snprintf(birth, sizeof(birth),
		 "{\"state\":\"online\",\"gateway\":\"%s\",\"site\":\"%s\",\"ts\":%lld}",
		 u->env.cfg->gateway.id, u->env.cfg->gateway.site, (long long)now);
	mosquitto_publish(u->mosq, NULL, topic, (int)strlen(birth), birth, 1, true);
	snprintf(topic, sizeof(topic), "%s/cmd/+", u->prefix);
	mosquitto_subscribe(u->mosq, NULL, topic, 1);
	pump(u);
}

static void on_publish(struct mosquitto *m, void *arg, int mid, int reason,
		       const mosquitto_property *props)
{
	struct uplink *u = arg;
	struct flight *f = fl_find(u, mid);

	(void)m;
	(void)props;
	if (!f)
		return; /* the birth message, or a flight from before a reconnect */
	int lane = f->lane;
	uint64_t seq = f->seq;
	fl_del(u, f);
	u->inflight[lane]--;
	if (reason >= 0x80) {
		/* MQTT 5: the broker refused this message (e.g. not authorized
		 * for the topic): retrying will not help. */
		char why[64];
		snprintf(why, sizeof(why), "PUBACK reason %d", reason);
		store_ack(u->env.store, u->store_id, lane, seq, STORE_ACK_ERROR, -1, why,
			  cgw_now_ms());
		return;
	}
	u->acked++;
	store_ack(u->env.store, u->store_id, lane, seq, STORE_ACK_OK, -1, NULL, cgw_now_ms());
}

static void on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg,
		       const mosquitto_property *props)
{
	struct uplink *u = arg;
	size_t pl = strlen(u->cmd_topic_prefix);

	(void)m;
	(void)props;
	if (strncmp(msg->topic, u->cmd_topic_prefix, pl) != 0 || strchr(msg->topic + pl, '/'))
		return;
	if (u->env.on_command)
		u->env.on_command(u->env.arg, u->cfg->name, msg->topic + pl, msg->payload,
				  (size_t)msg->payloadlen);
}

static void on_disconnect(struct mosquitto *m, void *arg, int rc, const mosquitto_property *props)
{
	struct uplink *u = arg;

	(void)m;
	(void)props;
	if (u->connected || u->connecting)
		drop_connection(u, rc == 0 ? "disconnected" : mosquitto_strerror(rc));
}

static void try_connect(struct uplink *u)
{
	int rc;

	u->connecting = true;
	rc = mosquitto_connect_bind_async(u->mosq, u->cfg->host, (int)u->cfg->port,
					  (int)(u->cfg->keepalive_ms / 1000), NULL);
	if (rc != MOSQ_ERR_SUCCESS) {
		const char *why = rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc);
		if (strcmp(u->last_error, why) != 0)
			log_warn("uplink", "[%s] cannot connect to %s:%lld: %s", u->cfg->name,
				 u->cfg->host, (long long)u->cfg->port, why);
		snprintf(u->last_error, sizeof(u->last_error), "%s", why);
		if (!u->outage_start_ms)
			u->outage_start_ms = cgw_now_ms();
		u->connecting = false;
		schedule_reconnect(u);
		return;
	}
	watch(u);
	/* the connect itself may take a while: the timer checks it */
	loop_timer_in(u->timer, 1000);
}

static void schedule_reconnect(struct uplink *u)
{
	uint32_t r = 0;

	/* exponential backoff with full jitter, so a fleet of gateways does not
	 * reconnect in step after a platform restart */
	u->backoff_ms = u->backoff_ms ? u->backoff_ms * 2 : RECONNECT_MIN_MS;
	if (u->backoff_ms > RECONNECT_MAX_MS)
		u->backoff_ms = RECONNECT_MAX_MS;
	if (getrandom(&r, sizeof(r), GRND_NONBLOCK) < 0)
		r = (uint32_t)cgw_mono_ms();
	loop_timer_in(u->timer, RECONNECT_MIN_MS / 2 + (int64_t)(r % (uint32_t)u->backoff_ms));
}

static void on_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	struct uplink *u = arg;

	(void)l;
	if (!u->connected && !u->connecting) {
		try_connect(u);
		return;
	}
	/* keepalive, and the PINGRESP check that detects a dead link */
	int rc = mosquitto_loop_misc(u->mosq);
	if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) {
		drop_connection(u, mosquitto_strerror(rc));
		return;
	}
	if (u->connecting && rc == MOSQ_ERR_NO_CONN) {
		drop_connection(u, "connect timed out");
		return;
	}
	if (u->connected)
		pump(u);
	watch(u);
	loop_timer_in(t, 1000);
}

/* Fill every lane's window, alarms first. */
static void pump(struct uplink *u)
{
	int64_t now = cgw_now_ms();

	if (!u->connected)
		return;
	for (int lane = 0; lane < CGW_LANE_COUNT; lane++) {
		if (!(u->cfg->send_mask & (1u << lane)))
			continue;
		/* Refill a lane once half its window is free, not per PUBACK: one
		 * store query per batch instead of one per message. The alarm
		 * lane goes out at once, always. */
		if (lane != CGW_LANE_ALARM && u->inflight[lane] > u->budget / 2)
			continue;
		while (u->inflight[lane] < u->budget) {
			size_t want = u->budget - u->inflight[lane], n = 0;
			if (want > FETCH_MAX)
				want = FETCH_MAX;
			if (store_fetch(u->env.store, u->store_id, lane, u->cursor[lane], want, now,
					u->items, &n) < 0 ||
			    n == 0)
				break;
			for (size_t i = 0; i < n; i++) {
				const struct store_item *it = &u->items[i];
				char topic[512];
				char *body = uplink_render(u->env.cfg->gateway.id, it->seq,
							   it->payload, it->ts_ms, now,
							   u->cfg->late_after_ms);
				int mid = 0, rc;
				/* retained: the gateway's and each device's current state */
				bool retain =
					strcmp(it->topic, "status") == 0 ||
					(strncmp(it->topic, "device/", 7) == 0 &&
					 strlen(it->topic) > 6 &&
					 !strcmp(it->topic + strlen(it->topic) - 6, "/state"));

				snprintf(topic, sizeof(topic), "%s/%s", u->prefix, it->topic);
				if (!body) {
					store_ack(u->env.store, u->store_id, lane, it->seq,
						  STORE_ACK_ERROR, -1,
						  "payload is not a JSON object", now);
					u->cursor[lane] = it->seq;
					continue;
				}
				rc = mosquitto_publish(u->mosq, &mid, topic, (int)strlen(body),
						       body, 1, retain);
				free(body);
				if (rc != MOSQ_ERR_SUCCESS) {
					store_items_clear(u->items, n);
					drop_connection(u, mosquitto_strerror(rc));
					return;
				}
				fl_put(u, mid, it->seq, lane);
				u->inflight[lane]++;
				u->cursor[lane] = it->seq;
				u->sent++;
			}
			store_items_clear(u->items, n);
			if (n < want)
				break;
		}
	}
	watch(u);
}

static void mqtt_kick(struct uplink *u)
{
	if (u->connected) {
		pump(u);
		/* write now rather than on the next loop turn: an alarm should
		 * not wait for epoll */
		mosquitto_loop_write(u->mosq, 1);
		watch(u);
	}
}

static void mqtt_close(struct uplink *u);

static int mqtt_open(const struct uplink_env *env, const struct cfg_uplink *cfg, int64_t store_id,
		     struct uplink **out)
{
	struct uplink *u = calloc(1, sizeof(*u));
	char topic[512], err[256];
	const char *will = "{\"state\":\"offline\"}";
	int r = -ENOMEM;

	*out = NULL;
	if (!u)
		return -ENOMEM;
	u->env = *env;
	u->cfg = cfg;
	u->store_id = store_id;
	u->fd = -1;
	u->budget = (unsigned)cfg->inflight;
	u->since_ms = cgw_now_ms();
	for (u->fl_size = 64; u->fl_size < (size_t)u->budget * CGW_LANE_COUNT * 2;)
		u->fl_size *= 2;
	u->fl = calloc(u->fl_size, sizeof(*u->fl));
	u->prefix = uplink_prefix(env->cfg, cfg->topic_prefix);
	if (!u->fl || !u->prefix || asprintf(&u->cmd_topic_prefix, "%s/cmd/", u->prefix) < 0)
		goto fail;
	u->mosq = mosquitto_new(cfg->client_id, false, u);
	if (!u->mosq)
		goto fail;
	mosquitto_int_option(u->mosq, MOSQ_OPT_PROTOCOL_VERSION,
			     cfg->protocol == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
	/* we bound the window per lane ourselves; libmosquitto must not
	 * queue behind its own limit */
	mosquitto_int_option(u->mosq, MOSQ_OPT_SEND_MAXIMUM, 65535);
	mosquitto_int_option(u->mosq, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_connect_v5_callback_set(u->mosq, on_connect);
	mosquitto_publish_v5_callback_set(u->mosq, on_publish);
	mosquitto_message_v5_callback_set(u->mosq, on_message);
	mosquitto_disconnect_v5_callback_set(u->mosq, on_disconnect);
	snprintf(topic, sizeof(topic), "%s/status", u->prefix);
	if (mosquitto_will_set(u->mosq, topic, (int)strlen(will), will, 1, true) !=
	    MOSQ_ERR_SUCCESS)
		goto fail;
	if (cfg->password_file) {
		u->password = secret_read(cfg->password_file, err, sizeof(err));
		if (!u->password) {
			log_err("uplink", "[%s] password_file %s", cfg->name, err);
			r = -EACCES;
			goto fail;
		}
	}
	if (cfg->username || u->password)
		mosquitto_username_pw_set(u->mosq, cfg->username, u->password);
	if (cfg->tls) {
		int rc = mosquitto_tls_set(u->mosq, cfg->ca_file,
					   cfg->ca_file ? NULL : "/etc/ssl/certs", cfg->cert_file,
					   cfg->key_file, NULL);
		if (rc == MOSQ_ERR_SUCCESS)
			rc = mosquitto_tls_opts_set(u->mosq, 1 /* SSL_VERIFY_PEER */, NULL, NULL);
		if (rc == MOSQ_ERR_SUCCESS)
			rc = mosquitto_tls_insecure_set(u->mosq, false); /* verify the host name */
		if (rc != MOSQ_ERR_SUCCESS) {
			log_err("uplink", "[%s] TLS setup: %s", cfg->name, mosquitto_strerror(rc));
			r = -EINVAL;
			goto fail;
		}
	} else if (cfg->insecure) {
		log_warn("uplink",
			 "[%s] insecure: true: plaintext MQTT to %s; credentials and "
			 "alarms cross the network unencrypted",
			 cfg->name, cfg->host);
	}
	u->timer = loop_timer_new(env->loop, on_timer, u);
	if (!u->timer)
		goto fail;
	try_connect(u);
	*out = u;
	return 0;
fail:
	mqtt_close(u);
	return r;
}

static void mqtt_close(struct uplink *u)
{
	if (!u)
		return;
	if (u->fd >= 0)
		loop_del_fd(u->env.loop, u->fd);
	if (u->mosq) {
		if (u->connected) {
			u->connected = false; /* a stop is not an outage: no log line */
			/* a clean disconnect publishes no will: say we are going */
			char topic[512];
			const char *bye = "{\"state\":\"offline\",\"reason\":\"stopped\"}";
			snprintf(topic, sizeof(topic), "%s/status", u->prefix);
			mosquitto_publish(u->mosq, NULL, topic, (int)strlen(bye), bye, 1, true);
			mosquitto_loop_write(u->mosq, 1);
			mosquitto_disconnect(u->mosq);
			mosquitto_loop_write(u->mosq, 1);
		}
		mosquitto_destroy(u->mosq);
	}
	loop_timer_free(u->timer);
	secret_free(u->password);
	free(u->fl);
	free(u->prefix);
	free(u->cmd_topic_prefix);
	free(u);
}

static void mqtt_status(const struct uplink *u, struct uplink_status *st)
{
	memset(st, 0, sizeof(*st));
	st->name = u->cfg->name;
	st->type = "mqtt";
	st->connected = u->connected;
	st->since_ms = u->since_ms;
	st->sent = u->sent;
	st->acked = u->acked;
	memcpy(st->inflight, u->inflight, sizeof(st->inflight));
	snprintf(st->last_error, sizeof(st->last_error), "%s", u->last_error);
}

const struct uplink_ops uplink_mqtt_ops = {
	.type = "mqtt",
	.open = mqtt_open,
	.close = mqtt_close,
	.kick = mqtt_kick,
	.status = mqtt_status,
};
