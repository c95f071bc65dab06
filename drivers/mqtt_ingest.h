/*
 * mqtt_ingest.h - the MQTT ingest driver: devices that publish JSON to a
 * broker on the LAN (parcel lockers, access controllers, camera/NVR events).
 * The driver itself is `mqtt_ingest_ops` (driver.h); this header adds the
 * hooks that tests and tools use to drive it without a broker or a clock.
 *
 * Runs on the core loop over one mqtt_link (daemon/mqtt_link.h: the
 * connection, name resolution and connect off the loop, keepalive,
 * reconnects with backoff, outage logging); another timer watches the
 * staleness of devices. Everything it learns goes straight to the core
 * (driver_env.deliver), which handles it at once: nothing waits in the core
 * queue, so a queue that Modbus workers filled drops nothing of MQTT. A flood
 * is bounded instead: at most MI_READ_BUDGET messages per loop turn, the rest
 * stays in the socket (and at the broker: QoS 1). After each batch the
 * driver calls driver_env.settle (the core commits what it was handed), and
 * only then does the link write the batch's PUBACKs: a crash never loses a
 * message the broker let go of. Without deliver (tools, tests) items go to
 * the queue with queue_push(), dropped and counted when it is full.
 *
 * Subscriptions: one per distinct filter "{device topic}/{point topic}" (the
 * device topic alone when the point has no topic), QoS 1, renewed after
 * every reconnect. The session is persistent (clean_session: false unless
 * configured) under a stable client id, the bus's client_id, else
 * "{gateway}-{bus}": the broker keeps what devices publish while cgwd
 * restarts. A filter mosquitto refuses (a '#' in the middle, ...) or an
 * invalid json path is logged at open and that point is left out.
 *
 * Per message: the topic is looked up among the filters (exact ones by
 * binary search, those with + or # one by one: 2 us per 6-value message with
 * 3000 exact filters, 1000 lockers); the payload is
 * checked against max_payload before anything else, parsed once
 * (json_path.h: sizes, depth, conversions), and each matching point's path
 * is extracted and converted. Event points (`event: true`) become
 * CGW_ITEM_EVENT (every one), others CGW_ITEM_READING, stamped with the
 * payload's "ts" (ms) when plausible, else the time of arrival. Readings go
 * to the core as Modbus ones do: the first, a change beyond the point's
 * deadband (any change for bool, string and enum), an unchanged value again
 * after report_every, a bad-quality one once per episode, and everything
 * again after the device was offline. Rules for one device and one message:
 *   - a point whose path is absent is not updated, as long as another point
 *     of the device found its path in the same message (optional fields);
 *   - the message is bad for the device when it is over max_payload, not
 *     JSON, has none of the device's paths, or a present value that does not
 *     convert (wrong type, out of range); the values that did convert are
 *     still delivered;
 *   - an enum value outside the enum is delivered with quality bad and also
 *     counts as a bad payload (the installer must extend the enum).
 * A bad message is counted (driver_dev_stats.bad_payloads), kept in the
 * store's quarantine table (at most 10 per device per minute, truncated by
 * the store), and logged once per episode per device: the episode ends with
 * the next good message, which is logged too.
 *
 * Retained messages (delivered because we subscribed, not because the device
 * spoke now) update state points but are not replayed as events, and do not
 * count as a sign of life.
 *
 * Staleness: a device that sent nothing for its stale_after is reported
 * offline (CGW_ITEM_DEVICE_STATE online=false) once; its next message
 * reports it online first, then the values. A device starts unknown: never
 * offline before stale_after has passed since the driver opened, and online
 * at its first message. A broker outage does not stop the clock: devices the
 * gateway cannot hear go offline.
 *
 * write(): -ENOTSUP. The profile format has no command topic for MQTT points
 * (SPEC), so nothing can be written to an MQTT device yet.
 *
 * Security: TLS for mqtts:// (ssl://) with ca_file (default: the system CAs,
 * host name verified), cert_file/key_file for mutual TLS; username and a
 * password read once at open from password_file (refused if group/other
 * can read it; never logged; wiped at close). Plaintext to a broker that is
 * not on loopback is logged as a warning at open unless `insecure: true`.
 *
 * Limits: libmosquitto receives a whole packet before we see its size;
 * the broker's message_size_limit bounds memory, max_payload bounds parsing.
 */
#ifndef CGW_MQTT_INGEST_H
#define CGW_MQTT_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config_keys.h"
#include "driver.h"

#define MI_KEEPALIVE_S 30
#define MI_CONNECT_TIMEOUT_MS 10000
#define MI_READ_BUDGET 64 /* messages read per loop turn; the rest waits in the socket */
#define MI_QUARANTINE_BURST 10        /* quarantined payloads per device ... */
#define MI_QUARANTINE_WINDOW_MS 60000 /* ... per window */

/* Handle one message as if the broker had delivered it, at explicit times
 * (wall clock for timestamps, monotonic for staleness). Core thread only;
 * `d` must come from mqtt_ingest_ops.open. */
void mqtt_ingest_feed(struct driver *d, const char *topic, const void *payload, size_t len,
		      bool retained, int64_t wall_ms, int64_t mono_ms);

/* Run the staleness check at explicit times (the driver's own timer calls it
 * with the real clocks). */
void mqtt_ingest_check_stale(struct driver *d, int64_t wall_ms, int64_t mono_ms);

/* Distinct topic filters subscribed (after open), and the i-th of them
 * (borrowed; NULL past the end). */
size_t mqtt_ingest_filter_count(const struct driver *d);
const char *mqtt_ingest_filter(const struct driver *d, size_t i);

/* The `mqtt` bus type (mqtt_ingest_config.c) and its options. */
struct mqtt_bus_opts {
	char *url;
	char *client_id;
	char *username;
	char *password_file;
	char *ca_file, *cert_file, *key_file;
	int64_t stale_after_ms;
	int64_t max_payload;
	bool insecure;
	bool clean_session; /* false = persistent session (the default) */
	/* parsed from url by the check: where to connect */
	char *host;
	int64_t port;
	bool tls;
};
extern const struct cfg_bus_type mqtt_bus_type;
/* The options of an MQTT bus; NULL if the bus is of another type. */
const struct mqtt_bus_opts *mqtt_bus_opts(const struct cfg_bus *b);

#endif
