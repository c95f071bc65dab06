/*
 * uplink_mqtt.c - MQTT delivery to the platform, over one mqtt_link (the
 * connection, its reconnects and outage logging: mqtt_link.h; name
 * resolution and connect happen off the core loop).
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
 * carry the same id). While an alarm waits for this uplink and the link is
 * down, the link is probed every MQTT_LINK_PROBE_MS (jittered) instead of
 * after its backoff, so the alarm goes out within about that time after the
 * broker is back.
 *
 * Birth and will (rendered by wire_status()): before each connect attempt
 * the session counter grows and two ids are reserved in the store, one for
 * the will (set with the connect, so its ts is the connect time) and one for
 * the birth published when the broker accepts. After the birth, the core is
 * told (env.on_connect) and queues every device's current state for this
 * uplink, so that a broker that lost its retained messages gets them back.
 */
#include <errno.h>
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mqtt_link.h"
#include "secret.h"
#include "uplink.h"
#include "wire.h"

#define FETCH_MAX 64

struct flight {
	uint64_t seq; /* 0: free slot */
	int mid;
	uint8_t lane;
};

struct uplink {
	struct uplink_env env;
	const struct cfg_uplink *cfg;
	int64_t store_id;
	struct mqtt_link *link;
	char *prefix;
	char *password;
	bool ever_connected;
	uint64_t cursor[CGW_LANE_COUNT];
	unsigned inflight[CGW_LANE_COUNT];
	unsigned budget;
	/* in-flight messages by mid: open addressing, size a power of two */
	struct flight *fl;
	size_t fl_size;
	uint64_t sent, acked;
	char *cmd_topic_prefix; /* "P/" */
	uint64_t session;       /* of the current connection */
	uint64_t birth_seq;     /* id reserved for the birth of this connection */
	struct store_item items[FETCH_MAX];
};

static void pump(struct uplink *u);

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

static void on_up(void *arg)
{
	struct uplink *u = arg;
	struct mosquitto *m = mqtt_link_mosq(u->link);
	int64_t now = cgw_now_ms();
	char topic[512], *birth;

	fl_clear(u);
	u->ever_connected = true;
	/* Backed-off rows go out now: the link is back. */
	store_uplink_rearm(u->env.store, u->store_id);

	snprintf(topic, sizeof(topic), "%s/status", u->prefix);
	birth = wire_status(u->env.cfg, true, u->birth_seq, u->session, now, NULL);
	if (birth)
		mosquitto_publish(m, NULL, topic, (int)strlen(birth), birth, 1, true);
	free(birth);
	snprintf(topic, sizeof(topic), "%s/" WIRE_SUB_DEVICE_COMMANDS, u->prefix);
	mosquitto_subscribe(m, NULL, topic, 1);
	snprintf(topic, sizeof(topic), "%s/" WIRE_SUB_GATEWAY_COMMANDS, u->prefix);
	mosquitto_subscribe(m, NULL, topic, 1);
	if (u->env.on_connect)
		u->env.on_connect(u->env.arg, u->store_id);
	pump(u);
}

/* After a disconnect nothing in flight is acknowledged: sent again on the
 * next connection. */
static void on_down(void *arg)
{
	fl_clear(arg);
}

static void on_publish(void *arg, int mid, int reason)
{
	struct uplink *u = arg;
	struct flight *f = fl_find(u, mid);

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

static void on_message(void *arg, const struct mosquitto_message *msg)
{
	struct uplink *u = arg;
	size_t pl = strlen(u->cmd_topic_prefix);
	const char *device;

	if (strncmp(msg->topic, u->cmd_topic_prefix, pl) != 0 ||
	    !wire_command_topic(msg->topic + pl, &device))
		return;
	/* device NULL: a gateway command (P/cmd) */
	if (u->env.on_command)
		u->env.on_command(u->env.arg, u->cfg->name, device, msg->payload,
				  (size_t)msg->payloadlen);
}

/* PUBACKs read: refill the windows. */
static void on_read_done(void *arg)
{
	pump(arg);
}

/* An alarm waits in the outbox for this uplink: while the link is down it
 * is probed every MQTT_LINK_PROBE_MS instead of after the backoff. One
 * indexed row at most. */
static bool alarm_waiting(void *arg)
{
	struct uplink *u = arg;
	struct store_item it;
	size_t n = 0;

	if (!(u->cfg->send_mask & (1u << CGW_LANE_ALARM)))
		return false;
	if (store_fetch(u->env.store, u->store_id, CGW_LANE_ALARM, 0, 1, INT64_MAX, &it, &n) < 0)
		return false;
	store_items_clear(&it, n);
	return n > 0;
}

/* Fill every lane's window, alarms first. */
static void pump(struct uplink *u)
{
	int64_t now = cgw_now_ms();

	struct mosquitto *m = mqtt_link_mosq(u->link);

	if (!m)
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
			if (n > 1)
				mqtt_link_cork(u->link); /* uncorked by the write that follows */
			for (size_t i = 0; i < n; i++) {
				const struct store_item *it = &u->items[i];
				char topic[512];
				char *body = wire_render(u->env.cfg->gateway.id, it->seq,
							 it->payload, it->ts_ms, now,
							 u->cfg->late_after_ms);
				int mid = 0, rc;
				bool retain = wire_retained(it->topic);

				size_t lp = strlen(u->prefix), lt = strlen(it->topic);
				if (lp + 1 + lt < sizeof(topic)) { /* no printf per message */
					memcpy(topic, u->prefix, lp);
					topic[lp] = '/';
					memcpy(topic + lp + 1, it->topic, lt + 1);
				} else {
					snprintf(topic, sizeof(topic), "%s/%s", u->prefix,
						 it->topic);
				}
				if (!body) {
					store_ack(u->env.store, u->store_id, lane, it->seq,
						  STORE_ACK_ERROR, -1,
						  "payload is not a JSON object", now);
					u->cursor[lane] = it->seq;
					continue;
				}
				rc = mosquitto_publish(m, &mid, topic, (int)strlen(body), body, 1,
						       retain);
				free(body);
				if (rc != MOSQ_ERR_SUCCESS) {
					/* the link is going; it finds out on its next
					 * read or write, and the row is sent again */
					store_items_clear(u->items, n);
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
}

static void mqtt_kick(struct uplink *u)
{
	if (mqtt_link_up(u->link)) {
		pump(u);
		/* write now rather than on the next loop turn: an alarm should
		 * not wait for epoll */
		mqtt_link_flush(u->link);
	} else if (alarm_waiting(u)) {
		mqtt_link_probe(u->link);
	}
}

static void mqtt_close(struct uplink *u);

/* Before each connect attempt: a new session, ids for the will and the
 * birth, and the will itself. */
static char *next_will(void *arg)
{
	struct uplink *u = arg;
	uint64_t first = 0, session = 0;

	if (store_reserve_ids(u->env.store, 2, &first, &session) < 0)
		return NULL; /* the store says why elsewhere */
	u->session = session;
	u->birth_seq = first + 1;
	return wire_status(u->env.cfg, false, first, session, cgw_now_ms(), NULL);
}

/* A rebirth: the birth again, with a new id, in the same session. */
static void mqtt_announce(struct uplink *u)
{
	struct mosquitto *m = mqtt_link_mosq(u->link);
	char topic[512], *birth;
	uint64_t seq;

	if (!m || store_reserve_ids(u->env.store, 1, &seq, NULL) < 0)
		return;
	birth = wire_status(u->env.cfg, true, seq, u->session, cgw_now_ms(), NULL);
	snprintf(topic, sizeof(topic), "%s/status", u->prefix);
	if (birth)
		mosquitto_publish(m, NULL, topic, (int)strlen(birth), birth, 1, true);
	free(birth);
	mqtt_link_flush(u->link);
}

static int mqtt_open(const struct uplink_env *env, const struct cfg_uplink *cfg, int64_t store_id,
		     struct uplink **out)
{
	struct uplink *u = calloc(1, sizeof(*u));
	char topic[512], err[256];
	int r = -ENOMEM;

	*out = NULL;
	if (!u)
		return -ENOMEM;
	u->env = *env;
	u->cfg = cfg;
	u->store_id = store_id;
	u->budget = (unsigned)cfg->inflight;
	for (u->fl_size = 64; u->fl_size < (size_t)u->budget * CGW_LANE_COUNT * 2;)
		u->fl_size *= 2;
	u->fl = calloc(u->fl_size, sizeof(*u->fl));
	u->prefix = wire_prefix(env->cfg, cfg->topic_prefix);
	if (!u->fl || !u->prefix || asprintf(&u->cmd_topic_prefix, "%s/", u->prefix) < 0)
		goto fail;
	if (cfg->password_file) {
		u->password = secret_read(cfg->password_file, err, sizeof(err));
		if (!u->password) {
			log_err("uplink", "[%s] password_file %s", cfg->name, err);
			r = -EACCES;
			goto fail;
		}
	}
	snprintf(topic, sizeof(topic), "%s/status", u->prefix);
	struct mqtt_link_opts o = {
		.module = "uplink",
		.name = cfg->name,
		.host = cfg->host,
		.port = (int)cfg->port,
		.tls = cfg->tls,
		.ca_file = cfg->ca_file,
		.cert_file = cfg->cert_file,
		.key_file = cfg->key_file,
		.username = cfg->username,
		.password = u->password,
		.insecure = cfg->insecure,
		.client_id = cfg->client_id,
		.clean_session = false, /* the broker keeps our subscription to P/cmd */
		.protocol = (int)cfg->protocol,
		.keepalive_s = (int)(cfg->keepalive_ms / 1000),
		.connect_timeout_ms = cfg->timeout_ms,
		.will_topic = topic,
		.will_payload = "{\"state\":\"offline\"}", /* if the store fails */
		.will_retain = true,
		.read_budget = 0,
		/* we bound the window per lane ourselves; libmosquitto must not
		 * queue behind its own limit */
		.unlimited_send = true,
	};
	struct mqtt_link_cbs cb = {
		.arg = u,
		.up = on_up,
		.down = on_down,
		.message = on_message,
		.published = on_publish,
		.read_done = on_read_done,
		.urgent = alarm_waiting,
		.will = next_will,
	};
	r = mqtt_link_new(env->loop, &o, &cb, &u->link);
	if (r < 0)
		goto fail;
	*out = u;
	return 0;
fail:
	mqtt_close(u);
	return r;
}

static void mqtt_close(struct uplink *u)
{
	struct mosquitto *m;

	if (!u)
		return;
	m = mqtt_link_mosq(u->link);
	if (m) {
		/* a clean disconnect publishes no will: say we are going */
		char topic[512], *bye = NULL;
		uint64_t seq;
		if (store_reserve_ids(u->env.store, 1, &seq, NULL) == 0)
			bye = wire_status(u->env.cfg, false, seq, u->session, cgw_now_ms(),
					  "stopped");
		snprintf(topic, sizeof(topic), "%s/status", u->prefix);
		if (bye)
			mosquitto_publish(m, NULL, topic, (int)strlen(bye), bye, 1, true);
		free(bye);
		mqtt_link_flush(u->link);
	}
	mqtt_link_free(u->link); /* a stop is not an outage: no log line */
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
	st->connected = mqtt_link_up(u->link);
	st->since_ms = mqtt_link_since_ms(u->link);
	st->sent = u->sent;
	st->acked = u->acked;
	memcpy(st->inflight, u->inflight, sizeof(st->inflight));
	snprintf(st->last_error, sizeof(st->last_error), "%s", mqtt_link_last_error(u->link));
}

const struct uplink_ops uplink_mqtt_ops = {
	.type = "mqtt",
	.open = mqtt_open,
	.close = mqtt_close,
	.kick = mqtt_kick,
	.status = mqtt_status,
	.announce = mqtt_announce,
};
