/*
 * driver.h - the interface between device drivers and the core.
 *
 * A driver serves one bus of the configuration (a serial line, a Modbus TCP
 * endpoint, or an MQTT broker on the LAN). It hands everything it learns to
 * the core as struct cgw_item: readings, events, device online/offline
 * changes and write results, through the core queue (daemon/queue.h) from a
 * worker thread, or through env->deliver from the core thread.
 *
 * Threads: Modbus drivers run one worker thread per bus (libmodbus blocks);
 * the MQTT ingest driver runs on the core loop. open/close/write/status are
 * called from the core thread only; a driver that has a thread synchronises
 * internally.
 *
 * Ownership: a driver borrows everything in its env for its whole life; the
 * core closes every driver before it frees the configuration or the queue.
 */
#ifndef CGW_DRIVER_H
#define CGW_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "loop.h"
#include "model.h"
#include "queue.h"

struct store;

struct driver_env {
	const struct cgw_config *cfg;
	size_t bus;          /* index into cfg->buses */
	struct queue *queue; /* to the core */
	struct loop *loop;   /* the core loop (drivers on the core thread only) */
	struct store *store; /* core thread only: quarantine of bad payloads */
	/* Drivers on the core thread (MQTT ingest) hand items straight to the
	 * core instead of the queue, which only the core drains and so could
	 * not wait for room: deliver() handles one item at once and takes its
	 * value (the caller's is reset); settle() commits what was delivered,
	 * and the driver calls it before it acknowledges anything to its
	 * source. NULL (tools, tests): the queue is used. */
	void (*deliver)(void *core, struct cgw_item *it);
	void (*settle)(void *core);
	void *core;
};

/* Per-device counters, for status and metrics. */
struct driver_dev_stats {
	uint32_t device; /* index into cfg->devices */
	bool online;
	int64_t last_ok_ms; /* wall clock of the last good read/message, 0 never */
	uint64_t requests, timeouts, exceptions, crc_errors, conn_errors, bad_payloads;
	uint64_t polls_due, polls_done; /* scheduled vs done (poll rate) */
	uint64_t line_us;               /* time the line spent on it (requests, timeouts) */
	double rtt_ms_avg;
	char last_error[96];
};

struct driver_stats {
	bool connected; /* the serial port is open / the TCP or MQTT connection is up */
	uint64_t requests, errors;
	/* answers that were not the answer to the request in flight (another
	 * unit or function, a late or repeated one): counted, dropped, never data */
	uint64_t foreign_answers, stale_bytes;
	/* per-line health (Modbus): the time the line was busy and the time it
	 * was measured over; a full round of every device's last cycle against
	 * the shortest poll on the line (0 when not known) */
	uint64_t line_us, elapsed_us;
	int64_t cycle_ms, schedule_ms;
	char last_error[128];
	size_t n_devices;
	struct driver_dev_stats *devices; /* malloc'd by status(); free() it */
};

/* Commissioning (cgwctl scan / probe): raw requests an installer asks of a
 * live bus, run by the bus's own worker between polls (never a second
 * client on the line). */
enum driver_commission_kind {
	DRV_SCAN,  /* which of `units` answer a one-register read of table/address */
	DRV_PROBE, /* read `count` registers (or bits) of one unit */
};

struct driver_commission {
	enum driver_commission_kind kind;
	uint8_t units[32];  /* SCAN: bitmap of unit ids 1..247 */
	uint8_t unit;       /* PROBE */
	int table;          /* enum cgw_table */
	uint16_t address;   /* 0-based protocol address */
	uint16_t count;     /* PROBE: 1..125 registers, 1..2000 bits */
	/* per request, one try; 0: the bus's timeout, but a scan does not wait
	 * a full second per absent unit (at most 200 ms) */
	int64_t timeout_ms;
};

struct driver;

struct driver_ops {
	const char *type;
	int (*open)(const struct driver_env *env, struct driver **out);
	/* Stops the driver (joins its thread) and frees it. NULL is fine. */
	void (*close)(struct driver *d);
	/* Queues a write of a `writable` point; the outcome arrives later as a
	 * CGW_ITEM_WRITE_RESULT item carrying `token`. Returns 0 if queued, or
	 * -ENOTSUP (driver cannot write), -EBUSY (write queue full), -EINVAL. */
	int (*write)(struct driver *d, uint32_t device, uint32_t point, const struct cgw_value *v,
		     uint64_t token);
	int (*status)(struct driver *d, struct driver_stats *st);
	/* Queues a commissioning request (NULL: the driver has none). The outcome
	 * arrives as a CGW_ITEM_COMMISSION_RESULT carrying `token`: result 0 and
	 * value a JSON text (see modbus.c), or a negative errno and a detail
	 * text. 0 if queued; -EBUSY (queue full, or a scan already running),
	 * -EINVAL. A scan runs only in the gaps between polls, a unit at a time,
	 * so polling keeps its schedule. */
	int (*commission)(struct driver *d, const struct driver_commission *req, uint64_t token);
};

extern const struct driver_ops modbus_driver_ops;
extern const struct driver_ops mqtt_ingest_ops;

/* The driver serving a bus (its type's ops), or NULL. */
const struct driver_ops *driver_ops_for(const struct cfg_bus *b);

#endif
