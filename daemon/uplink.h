/*
 * uplink.h - delivery to the platform. An uplink takes messages from the
 * store's outbox lane by lane (alarm first), sends them, and reports each
 * outcome back to the store (OK / RETRY / ERROR); only then are rows deleted
 * or re-scheduled. Uplinks run on the core loop; nothing here is threaded.
 *
 * Uplinks only transport: what goes on the wire (payloads, topics, retain,
 * birth and will) is rendered by the wire module (wire.h).
 *
 * Ownership: an uplink borrows the store, the loop and its config entry for
 * its whole life (the core frees uplinks before any of them).
 */
#ifndef CGW_UPLINK_H
#define CGW_UPLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "loop.h"
#include "store.h"

struct uplink;

/* What an uplink needs from the core. */
struct uplink_env {
	struct loop *loop;
	struct store *store;
	const struct cgw_config *cfg;
	/* A command arrived on P/cmd/{device} (MQTT uplinks). The core answers
	 * through the outbox (P/cmd/{device}/result). */
	void (*on_command)(void *arg, const char *uplink, const char *device, const char *payload,
			   size_t len);
	/* The uplink (re)connected (MQTT: after the birth, before anything
	 * queued): the core re-sends every device's retained state to it
	 * (store_msg.uplink = store_id). May be NULL. */
	void (*on_connect)(void *arg, int64_t store_id);
	void *arg;
};

struct uplink_status {
	const char *name;
	const char *type;
	bool connected;
	int64_t since_ms; /* wall clock of the last connect/disconnect */
	uint64_t sent, acked, retried;
	uint64_t rejected; /* refused for good: in the dead-letter table */
	uint64_t refused;  /* refused (HTTP 4xx) but kept: alarms and device states, retried */
	unsigned inflight[CGW_LANE_COUNT];
	char last_error[128];
};

struct uplink_ops {
	const char *type;
	int (*open)(const struct uplink_env *env, const struct cfg_uplink *cfg, int64_t store_id,
		    struct uplink **out);
	void (*close)(struct uplink *u);
	void (*kick)(struct uplink *u); /* new messages are in the outbox */
	void (*status)(const struct uplink *u, struct uplink_status *st);
	/* Publish the birth message again (a rebirth request); may be NULL. */
	void (*announce)(struct uplink *u);
};

extern const struct uplink_ops uplink_mqtt_ops;
extern const struct uplink_ops uplink_http_ops;

/* libcurl must resolve host names off the calling thread (its threaded or
 * c-ares resolver: CURL_VERSION_ASYNCHDNS in `features`), or every HTTP
 * request would block the core loop in getaddrinfo(). 0 if it does;
 * -ENOTSUP with the reason in words (naming `version`) if not. The HTTP
 * uplink checks it at open and logs a warning when it fails. */
int uplink_http_check_resolver(long features, const char *version, char *why, size_t len);

/* The table of uplink types, by config type. */
const struct uplink_ops *uplink_ops_for(int type);

#endif
