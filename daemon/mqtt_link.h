/*
 * mqtt_link.h - one MQTT connection on the core loop, shared by the platform
 * uplink (uplink_mqtt.c) and the LAN-broker ingest driver (mqtt_ingest.c):
 * connect, reconnect with backoff, keepalive, outage logging, read budget.
 *
 * Threads: everything here runs on the core loop, except name resolution and
 * the TCP connect. Each connect attempt builds a fresh libmosquitto handle
 * and hands it to a small detached thread that runs
 * mosquitto_connect_bind_async() (getaddrinfo + non-blocking connect + TLS
 * setup) and gives the handle back through an eventfd. The core thread never
 * touches the handle while the thread has it, and never waits for the thread:
 * an attempt that takes longer than connect_timeout_ms, or a link freed
 * meanwhile, abandons the thread, which destroys the handle itself when its
 * getaddrinfo() finally returns. At most MQTT_LINK_MAX_CONNECTORS such
 * threads live at once in the process.
 *
 * TLS: the handle is connected with the configured host NAME, so
 * libmosquitto sends it as SNI and checks the server certificate against it
 * (its verify callback compares the certificate with the host it was given
 * to connect to); resolving off the loop weakens nothing. The CA is the
 * configured ca_file, else the system's certificates.
 *
 * Writes: the handle is in libmosquitto's "threaded" mode, so a packet is
 * only queued when made (a PUBACK, a PUBLISH) and written when the link
 * writes: after each batch of reads, once the owner's read_done() has run (an
 * ingest commits what it received before the broker sees the PUBACKs: nothing
 * acknowledged is lost on a crash), in mqtt_link_flush(), and on the 1 s
 * timer.
 *
 * Reads: at most read_budget mosquitto_loop_read() calls per readable event
 * (one packet each for a subscriber), and no more once MQTT_LINK_READ_US have
 * passed (callbacks included: a store write, a PUBACK's ack); the rest stays in the socket for the
 * next turn of the loop, so a flood costs a bounded slice of each turn, and
 * the broker holds back (QoS 1: it sends no more than its in-flight window
 * before our PUBACKs).
 *
 * Reconnect: exponential backoff with full jitter, 0.5 s .. 60 s; it starts
 * over after a connection that lasted MQTT_LINK_STABLE_MS (one the broker
 * drops at once, e.g. a client id taken over, keeps backing off). While the
 * owner's urgent() says something is waiting (an alarm for the platform) the
 * next attempt comes within MQTT_LINK_PROBE_MS (jittered), and
 * mqtt_link_probe() starts one at once.
 *
 * Logging: an outage is one episode (episode.h): its start is logged once
 * ("connection to H:P lost: why" or "cannot connect to H:P: why"), further
 * failures are counted and summarised at most once a minute, the first
 * connect after it is logged once ("connected to H:P after N s"), and a link
 * that drops again within MQTT_LINK_STABLE_MS stays in the same episode.
 * Plaintext to a host that is not loopback is logged once at creation.
 *
 * Ownership: the link copies every string of its options. Callbacks run on
 * the core thread, from inside the link's own event handling: they may use
 * mqtt_link_mosq() to publish or subscribe, but must not free the link.
 */
#ifndef CGW_MQTT_LINK_H
#define CGW_MQTT_LINK_H

#include <mosquitto.h>
#include <stdbool.h>
#include <stdint.h>

#include "loop.h"

#define MQTT_LINK_RECONNECT_MIN_MS 500
#define MQTT_LINK_RECONNECT_MAX_MS 60000
#define MQTT_LINK_STABLE_MS 10000 /* a connection this old resets the backoff */
#define MQTT_LINK_PROBE_MS 2000   /* urgent: the next attempt within this */
#define MQTT_LINK_READ_BUDGET 64  /* default reads per readable event */
#define MQTT_LINK_READ_US 3000    /* and at most this long reading per event */
#define MQTT_LINK_MAX_CONNECTORS 16

struct mqtt_link;

struct mqtt_link_opts {
	const char *module; /* log module, e.g. "uplink" */
	const char *name;   /* instance in log lines, e.g. the uplink's name */
	const char *host;   /* as configured: resolved off the loop, TLS checks it */
	int port;
	bool tls;
	const char *ca_file, *cert_file, *key_file;
	const char *username, *password;
	bool insecure; /* plaintext to a host that is not loopback was allowed */
	const char *client_id;
	bool clean_session;
	int protocol;               /* 4 (3.1.1) or 5 */
	int keepalive_s;            /* 0: 30 */
	int64_t connect_timeout_ms; /* name, TCP, TLS and CONNACK together; 0: 10 s */
	const char *will_topic;     /* NULL: no will */
	const char *will_payload;   /* QoS 1 */
	bool will_retain;
	unsigned read_budget; /* 0: MQTT_LINK_READ_BUDGET */
	bool unlimited_send;  /* lift libmosquitto's own in-flight limit */
};

struct mqtt_link_cbs {
	void *arg;
	/* CONNACK accepted: subscribe, publish. */
	void (*up)(void *arg);
	/* The connection that was up is gone (not called by mqtt_link_free). */
	void (*down)(void *arg);
	void (*message)(void *arg, const struct mosquitto_message *msg);
	void (*published)(void *arg, int mid, int reason_code);
	void (*subscribed)(void *arg, int mid, int qos_count, const int *granted);
	/* A batch of packets was read; what they carried must be made durable
	 * now: their acknowledgements are written right after. May be NULL. */
	void (*read_done)(void *arg);
	/* Something is waiting that must not wait for the backoff. May be NULL. */
	bool (*urgent)(void *arg);
	/* The will of the next attempt (malloc'd, taken), called on the loop
	 * before each attempt; NULL return: will_payload. May be NULL. */
	char *(*will)(void *arg);
};

/* Creates the link and starts the first connect attempt (off the loop).
 * 0, -EINVAL (bad TLS files, options), -ENOMEM. */
int mqtt_link_new(struct loop *l, const struct mqtt_link_opts *o, const struct mqtt_link_cbs *cb,
		  struct mqtt_link **out);
/* Never blocks: an attempt in flight is abandoned to its thread. If the link
 * is up, a DISCONNECT is written first (no will). NULL is fine. */
void mqtt_link_free(struct mqtt_link *lk);

bool mqtt_link_up(const struct mqtt_link *lk);
/* The connected handle, or NULL while the link is not up. */
struct mosquitto *mqtt_link_mosq(struct mqtt_link *lk);
/* Write what is queued now (after publishing outside a callback). */
void mqtt_link_flush(struct mqtt_link *lk);
/* Several publishes follow: hold them in the socket (TCP_CORK) so that they
 * leave in as few segments as fit, one wake-up of the broker for a batch
 * instead of one per message. The link uncorks after its next write, which
 * mqtt_link_flush() and every read turn do: a corked link never waits for
 * the kernel's 200 ms cork timeout. */
void mqtt_link_cork(struct mqtt_link *lk);
/* Something urgent is waiting: if the link is down and idle, attempt within
 * a few hundred ms, then every MQTT_LINK_PROBE_MS while urgent() says so. */
void mqtt_link_probe(struct mqtt_link *lk);
/* Wall clock ms of the last connect or loss. */
int64_t mqtt_link_since_ms(const struct mqtt_link *lk);
/* Why the last attempt or connection failed ("" after a connect). */
const char *mqtt_link_last_error(const struct mqtt_link *lk);
/* Connector threads alive in the process now (abandoned ones included). */
unsigned mqtt_link_connectors(void);

#endif
