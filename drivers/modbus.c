/*
 * modbus.c - the Modbus bus worker (modbus_driver_ops).
 *
 * One driver serves one modbus-rtu, modbus-tcp or modbus-rtu-tcp bus with one
 * thread, because libmodbus calls block. The thread owns the connection (a
 * modbus_t, or for RTU frames over TCP, which libmodbus cannot do, an
 * rtu_link: rtu_link.h), the request plan
 * (modbus_plan.h) and every per-device and per-point state; it polls each
 * device on its schedule, decodes (modbus_decode.h) and hands readings,
 * device state changes and write results to the core through the queue.
 *
 * Threads: open/close/write/status run on the core thread. They share with
 * the worker only what is under d->lock (the write ring and the statistics)
 * and two atomics (stop, pending writes). Devices, points and formats are
 * built in open() and read-only afterwards, so write() may validate against
 * them without the lock.
 *
 * Scheduling: each device is polled every `poll`, on a fixed grid (a late
 * poll does not shift the next one); devices with the same interval start
 * staggered across it: evenly on an RTU line, on a grid of MB_STAGGER_MS
 * (100 ms) on Modbus TCP, where the devices that share a slot are polled
 * back to back in one wake-up of the worker. A wake-up also serves every
 * slot (a cycle, a fast point) due within MB_GROUP_MS (5 ms) of it: such a
 * read comes up to 5 ms early, never later, and its grid stays where it
 * was. Among the slots served, fast points still come first. A cycle
 * reads all the device's requests; a request that times out (or gets a
 * corrupt frame) is retried `retries` times, then the cycle fails and the
 * rest of the device's requests are skipped, so a dead device costs one
 * timeout per attempt, not one per request. After
 * `offline_after` failed cycles in a row the device is offline and probed
 * (one try, no retries: one timeout per probe): first a poll (but at least
 * 4 timeouts) later, then at twice the last interval after each failed
 * probe, up to MB_OFFLINE_POLL_MAX_MS, until it answers again; a device
 * that goes offline again starts from the short interval. A slot that
 * passes while the worker is busy elsewhere is skipped, not queued:
 * polls_due counts every slot (when its cycle ends, or when it is skipped),
 * polls_done the cycles the device answered.
 *
 * Exceptions: a device that answers with an exception is alive. Exception 2
 * (illegal data address) on a merged read splits it (mbp_split) and the
 * pieces are read at once; the plan keeps the split. A request that cannot
 * be split further marks its points CGW_Q_BAD; other exceptions mark them
 * CGW_Q_STALE. Either is sent once per episode, with no value.
 *
 * Reporting: a good value goes to the core when it is the first one (or the
 * first after a failure), when it moved more than the point's deadband from
 * the last value sent (any change for bool and string), or when
 * report_every passed since it was last sent. A full queue blocks the worker
 * (queue_push_wait) instead of dropping a reading. Items go to the core in
 * batches (one lock, at most one wake-up of the core each): on an RTU line
 * before every request; on Modbus TCP, where a request is a network round
 * trip, what one wake-up reads goes as one batch, and no item waits in the
 * worker longer than MB_HOLD_US (2 ms): an answer slower than that has the
 * batch handed over while it waits.
 *
 * Writes are queued to the worker (MB_WRITE_QUEUE deep) and run between two
 * poll requests, never during one; a successful write makes the device's
 * next poll immediate so the new value shows up quickly.
 *
 * Commissioning (cgwctl probe / scan) takes the same queue. A probe is one
 * read, run like a write. A scan is kept aside and probes one unit at a
 * time, only when the worker is idle and the next poll is further away than
 * the unit's timeout plus MB_SCAN_MARGIN_MS, and at most one unit every
 * MB_SCAN_GAP_MS: live devices keep their schedule, the scan takes what is
 * left of the line.
 */
#include "driver.h"
#include "modbus_driver.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <modbus.h>

#include "dtu_listen.h"
#include "episode.h"
#include "log.h"
#include "modbus_config.h"
#include "modbus_decode.h"
#include "modbus_plan.h"
#include "rtu_link.h"

#define MB_WRITE_QUEUE 32       /* writes waiting for the worker, per bus */
#define MB_PUSH_SLICE_MS 200    /* a blocked push re-checks `stop` this often */
#define MB_PENDING 64           /* items held for one hand-over to the core */
#define MB_HOLD_US 2000         /* Modbus TCP: longest an item waits in the worker */
#define MB_GROUP_MS 5           /* slots this close are served in one wake-up */
#define MB_STAGGER_MS 100       /* Modbus TCP: the initial stagger's grid */
#define MB_STALE_TIDS 16        /* Modbus TCP: answers to this many requests back are stale */
#define MB_RECONNECT_MIN_MS 500 /* first reconnect delay; doubles per failure */
#define MB_RECONNECT_MAX_MS 30000
#define MB_OFFLINE_POLL_MAX_MS 60000 /* an offline device's probes back off to this */
#define MB_STACK_SIZE (512 * 1024)
#define MB_SCAN_MARGIN_MS 20 /* idle time a scan probe leaves before the next poll */
#define MB_SCAN_GAP_MS 10    /* at most one scan probe this often */
#define MB_SCAN_MAX_UNIT 247

enum mb_errkind { MBE_NONE, MBE_TIMEOUT, MBE_EXCEPTION, MBE_FRAME, MBE_CONN, MBE_OTHER };

enum mb_op {
	OP_READ_COILS,
	OP_READ_DISCRETE,
	OP_READ_INPUT,
	OP_READ_HOLDING,
	OP_WRITE_COIL,
	OP_WRITE_REG,
	OP_WRITE_REGS
};

enum mb_devstate { DEV_UNKNOWN, DEV_OFFLINE, DEV_ONLINE };

struct mb_write {
	uint32_t device, point;
	struct cgw_value v; /* owned */
	uint64_t token;
	bool commission; /* not a write: comm is a probe or a scan to start */
	struct driver_commission comm;
};

/* A scan in progress (worker only). */
struct mb_scan {
	bool active;
	uint64_t token;
	struct driver_commission req; /* units: those still to probe */
	int next;                     /* next unit id to consider */
	int64_t next_at;              /* monotonic ms: not before */
	char *json;                   /* the results so far: a JSON array's items */
	size_t len, cap;
	bool oom;
};

/* What the core was last told about a point. */
struct mb_pstate {
	struct cgw_value last; /* last good value sent (owns its string) */
	int64_t last_sent;     /* monotonic ms */
	bool sent;             /* `last` is what the core has, and it is good */
	bool failed;           /* inside a failure episode; fail_q was sent */
	bool logged;           /* this episode was logged at point level */
	bool raw_ok;           /* `raw` is the last read, decoded and reported good */
	enum cgw_quality fail_q;
	uint64_t raw; /* its registers at the last good read (numbers and bools) */
};

struct mb_dev {
	uint32_t index; /* into cfg->devices */
	const struct cfg_device *cfg;
	const struct cfg_profile *prof;
	struct mb_pstate *pts;   /* per profile point */
	size_t req_first, req_n; /* its requests in the plan (adjacent) */
	int64_t next_due;        /* monotonic ms; INT64_MAX: nothing to poll */
	int64_t fast_ms;         /* its fastest point's poll (0: none faster than the device) */
	int64_t next_fast;       /* monotonic ms: next read of its fast requests alone */
	unsigned failed_cycles;
	int64_t probe_ms; /* offline: the interval to its next probe (doubles per failed probe) */
	enum mb_devstate state;
	bool refresh;          /* poll now, off schedule (after a write) */
	int64_t cycle_ts;      /* wall time of the cycle's first answer, 0 before */
	bool cycle_readings;   /* the cycle handed readings to the core */
	bool io_fault;         /* a failed-cycle episode is going on (logged) */
	uint64_t silent_epoch; /* d->answer_epoch + 1 when it timed out since the last answer */
	char label[64];        /* "unit 3 (smoke-1)" */
	struct driver_dev_stats st; /* under d->lock */
	int64_t cycle_us;           /* under d->lock: its last full cycle on the line */
	uint64_t rtt_n;             /* under d->lock */
};

struct driver {
	const struct cgw_config *cfg;
	const struct cfg_bus *bus;
	const struct modbus_bus_opts *mo; /* the bus's options */
	struct queue *q;
	char tag[80]; /* "[rs485-1]" */

	/* worker only */
	modbus_t *ctx;                  /* modbus-rtu, modbus-tcp */
	struct rtu_link *link;          /* modbus-rtu-tcp */
	struct dtu_slot *dtu;           /* modbus-rtu-tcp listen: our DTU's connection comes here */
	uint16_t tid;                   /* modbus-tcp: the last transaction id sent */
	uint64_t foreign, stale_bytes;  /* modbus-tcp, modbus-rtu (the link counts its own) */
	uint8_t rx[2 * MBAP_MAX_FRAME]; /* modbus-tcp: received, not yet framed */
	size_t rx_n;
	/* a connection on which no device answers any more: devices that timed
	 * out since the last answer (each counted once, by answer_epoch) */
	uint64_t answer_epoch;
	size_t silent_devs, n_pollable;
	struct episode silent_conn;
	int64_t silence_us; /* between frames on an RTU line: 3.5 characters + frame_delay */
	bool rtu, connected, conn_fault, rs485_logged;
	bool answered; /* a request was answered on this connection */
	bool in_fast;  /* serving fast points between the requests of a cycle */
	bool any_fast; /* some device has points polled faster than itself */
	int64_t reconnect_at, backoff;
	int cur_unit, cur_timeout;
	int64_t last_frame_end; /* monotonic us */
	struct mb_plan *plan;
	uint16_t regs[MBP_MAX_REGS];
	uint8_t bits[MBP_MAX_BITS];
	/* items for the core not handed over yet: flushed before anything that
	 * may wait (a connect, the idle wait; a request on a line; on Modbus TCP
	 * a wait for an answer once the oldest is MB_HOLD_US old) */
	struct cgw_item pend[MB_PENDING];
	size_t n_pend;
	int64_t pend_since; /* monotonic us: when the oldest pending item came */

	/* read-only after open */
	struct mb_dev *devs;
	size_t n_devs;
	uint32_t *dev_map; /* cfg device index -> index in devs, UINT32_MAX if not ours */

	int64_t started_us; /* for the line's utilisation */
	pthread_t thread;
	bool thread_started;
	int wake_fd; /* eventfd: writes and stop */
	atomic_bool stop;
	atomic_uint pending; /* writes in the ring */

	struct mb_scan scan; /* worker only */

	pthread_mutex_t lock; /* the ring and the statistics */
	struct mb_write ring[MB_WRITE_QUEUE];
	size_t ring_head, ring_n;
	struct driver_stats bst; /* n_devices and devices unused */
};

/* ---- small helpers ------------------------------------------------------------------ */

/* Formats are not stored: 32 bytes a point add up at 10,000s of points. */
struct mb_format modbus_point_format(const struct cfg_point *pt)
{
	return (struct mb_format){.type = pt->type,
				  .order = pt->order,
				  .str_len = pt->str_len,
				  .bit = (int)pt->bit,
				  .scale = pt->scale,
				  .offset = pt->offset};
}

struct mb_span modbus_point_span(const struct cfg_device *cd, uint32_t dev, uint32_t p,
				 const struct cfg_point *pt)
{
	struct mb_format f = modbus_point_format(pt);

	return (struct mb_span){
		.device = dev,
		.point = p,
		.unit = (uint8_t)cd->unit,
		.table = pt->table,
		.addr = (uint16_t)(pt->address - cd->address_base),
		.count = (uint16_t)(pt->table >= CGW_TBL_INPUT ? mbd_reg_count(&f) : 1),
		.max_gap = (uint16_t)cd->max_gap,
		.max_regs = (uint16_t)cd->max_registers,
		.poll_ms = pt->poll_ms > 0 && pt->poll_ms < cd->poll_ms ? (uint32_t)pt->poll_ms : 0,
	};
}

int modbus_bus_plan(const struct cgw_config *cfg, size_t bus, struct mb_plan **out, size_t *npoints)
{
	struct mb_span *spans = NULL;
	size_t n = 0;
	int r;

	*out = NULL;
	for (size_t i = 0; i < cfg->n_devices; i++) {
		const struct cfg_device *d = &cfg->devices[i];
		const struct cfg_profile *pr = cfg_device_profile(cfg, d);
		struct mb_span *ns;

		if (d->bus != bus || pr->mqtt)
			continue;
		ns = realloc(spans, (n + pr->n_points + 1) * sizeof(*ns));
		if (!ns) {
			free(spans);
			return -ENOMEM;
		}
		spans = ns;
		for (size_t p = 0; p < pr->n_points; p++)
			spans[n++] = modbus_point_span(d, (uint32_t)i, (uint32_t)p, &pr->points[p]);
	}
	r = mbp_build(spans, n, out);
	free(spans);
	if (npoints)
		*npoints = n;
	return r;
}

void modbus_print_plan(const struct cgw_config *cfg, FILE *f)
{
	for (size_t b = 0; b < cfg->n_buses; b++) {
		struct mb_plan *plan;
		size_t n;

		if (!modbus_opts(&cfg->buses[b]))
			continue;
		if (modbus_bus_plan(cfg, b, &plan, &n) == 0) {
			fprintf(f, "bus %s: %zu requests per cycle for %zu points\n",
				cfg->buses[b].name, mbp_count(plan), n);
			mbp_print(plan, f);
		}
		mbp_free(plan);
	}
}

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static bool stopping(struct driver *d)
{
	return atomic_load_explicit(&d->stop, memory_order_relaxed);
}

static void wake(struct driver *d)
{
	uint64_t one = 1;
	ssize_t n = write(d->wake_fd, &one, sizeof(one));
	(void)n; /* EAGAIN only if the counter is saturated: it is readable then */
}

/* Truncating copy for status texts: cut, never overflow, never in the
 * middle of a UTF-8 character (status ends up in JSON). */
static void copy_text(char *dst, size_t len, const char *src)
{
	size_t n = strnlen(src, len - 1);

	while (n > 0 && src[n] && ((unsigned char)src[n] & 0xC0) == 0x80)
		n--;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static enum mb_errkind classify(int e)
{
	if (e == 0)
		return MBE_NONE;
	if (e == ETIMEDOUT)
		return MBE_TIMEOUT;
	if (e >= EMBXILFUN && e <= EMBXGTAR)
		return MBE_EXCEPTION;
	if (e == EMBBADCRC || e == EMBBADDATA || e == EMBBADEXC || e == EMBUNKEXC ||
	    e == EMBMDATA || e == EMBBADSLAVE)
		return MBE_FRAME;
	switch (e) {
	case ECONNRESET:
	case ECONNREFUSED:
	case ECONNABORTED:
	case EPIPE:
	case ENOTCONN:
	case EBADF:
	case EIO:
	case ENXIO:
	case ENODEV:
	case ESHUTDOWN:
	case ENETDOWN:
	case ENETUNREACH:
	case EHOSTUNREACH:
		return MBE_CONN;
	}
	return MBE_OTHER;
}

static const char *exception_name(int code)
{
	switch (code) {
	case 1:
		return "illegal function";
	case 2:
		return "illegal data address";
	case 3:
		return "illegal data value";
	case 4:
		return "server device failure";
	case 5:
		return "acknowledge";
	case 6:
		return "server device busy";
	case 8:
		return "memory parity error";
	case 10:
		return "gateway path unavailable";
	case 11:
		return "gateway target failed to respond";
	}
	return "unknown";
}

static void describe(int e, char *buf, size_t len)
{
	switch (classify(e)) {
	case MBE_NONE:
		snprintf(buf, len, "ok");
		break;
	case MBE_TIMEOUT:
		snprintf(buf, len, "timeout");
		break;
	case MBE_EXCEPTION:
		snprintf(buf, len, "exception %d (%s)", e - MODBUS_ENOBASE,
			 exception_name(e - MODBUS_ENOBASE));
		break;
	case MBE_FRAME:
		snprintf(buf, len, "%s",
			 e == EMBBADCRC   ? "CRC error" :
			 e == EMBBADSLAVE ? "response from another unit" :
					    "invalid response frame");
		break;
	case MBE_CONN:
		snprintf(buf, len, "connection: %s", strerror(e));
		break;
	case MBE_OTHER:
		snprintf(buf, len, "%s", modbus_strerror(e));
		break;
	}
}

/* The negative errno a write result carries for a libmodbus error. */
static int result_of(int e)
{
	switch (classify(e)) {
	case MBE_NONE:
		return 0;
	case MBE_TIMEOUT:
		return -ETIMEDOUT;
	case MBE_EXCEPTION:
		return -EREMOTEIO;
	case MBE_FRAME:
		return -EBADMSG;
	case MBE_CONN:
		return -ENOTCONN;
	case MBE_OTHER:
		break;
	}
	return e > 0 && e < MODBUS_ENOBASE ? -e : -EIO;
}

static const char *table_name(int t)
{
	static const char *const names[] = {"coil", "discrete", "input", "holding"};
	return (unsigned)t < 4 ? names[t] : "?";
}

/* The first probe of a device that just went offline: a poll later, but at
 * least 4 timeouts (one try each) apart, so that probing a dead device takes
 * at most a quarter of the line from the start. */
static int64_t offline_first_interval(const struct mb_dev *dev)
{
	int64_t p = dev->cfg->poll_ms;
	return p > 4 * dev->cfg->timeout_ms ? p : 4 * dev->cfg->timeout_ms;
}

/* The interval to the next probe of an offline device: each probe the
 * device failed doubles it (`grow`; not one that found no connection), up
 * to MB_OFFLINE_POLL_MAX_MS (or the first interval, if that is longer); an
 * answer ends it (the device is polled again). */
static int64_t offline_interval(struct mb_dev *dev, bool grow)
{
	int64_t i = dev->probe_ms > 0 ? dev->probe_ms : offline_first_interval(dev);
	int64_t cap = offline_first_interval(dev);

	if (cap < MB_OFFLINE_POLL_MAX_MS)
		cap = MB_OFFLINE_POLL_MAX_MS;
	if (grow)
		dev->probe_ms = i * 2 < cap ? i * 2 : cap;
	return i;
}

/* Hand the pending items to the core in one go: one lock and at most one
 * wake-up of the core per request or cycle instead of one per item. Waits
 * while the queue is full (the worker slows down rather than losing data)
 * but gives up when the driver stops or the queue is closed. */
static void flush(struct driver *d)
{
	size_t done = 0, at = 0;
	int r;

	while (at < d->n_pend) {
		r = queue_push_many_wait(d->q, d->pend + at, d->n_pend - at, MB_PUSH_SLICE_MS,
					 &done);
		at += done;
		if (r != -ETIMEDOUT || stopping(d))
			break;
	}
	for (size_t i = at; i < d->n_pend; i++) /* given up: the values are ours */
		cgw_value_clear(&d->pend[i].value);
	d->n_pend = 0;
}

/* Queue an item for the core (see flush()); the item's value is always
 * consumed. */
static void push(struct driver *d, struct cgw_item *it)
{
	if (d->n_pend == MB_PENDING)
		flush(d);
	if (!d->n_pend)
		d->pend_since = mono_us();
	d->pend[d->n_pend++] = *it;
	it->value.type = CGW_V_NONE;
}

/* Before a request. An RTU line holds the worker tens of ms a request: the
 * items go to the core now. A Modbus TCP answer takes a round trip of a
 * network, so what one wake-up reads (several devices back to back) goes in
 * one hand-over, one wake-up of the core: items wait up to MB_HOLD_US, and
 * tcp_receive() hands them over if an answer takes longer than that. */
static void flush_before_request(struct driver *d)
{
	if (d->n_pend && (d->rtu || d->link || mono_us() - d->pend_since >= MB_HOLD_US))
		flush(d);
}

/* ---- statistics ----------------------------------------------------------------------- */

static void account(struct driver *d, struct mb_dev *dev, int e, int64_t rtt_us)
{
	enum mb_errkind k = classify(e);

	pthread_mutex_lock(&d->lock);
	d->bst.requests++;
	dev->st.requests++;
	if (rtt_us > 0) {
		dev->st.line_us += (uint64_t)rtt_us;
		d->bst.line_us += (uint64_t)rtt_us;
	}
	if (k == MBE_NONE || k == MBE_EXCEPTION) {
		/* answered: a round trip; a running mean needs no sum to overflow */
		dev->rtt_n++;
		dev->st.rtt_ms_avg +=
			((double)rtt_us / 1000.0 - dev->st.rtt_ms_avg) / (double)dev->rtt_n;
	}
	if (k != MBE_NONE) {
		char what[64], line[192];
		d->bst.errors++;
		if (k == MBE_TIMEOUT)
			dev->st.timeouts++;
		else if (k == MBE_EXCEPTION)
			dev->st.exceptions++;
		else if (k == MBE_FRAME)
			dev->st.crc_errors++;
		else if (k == MBE_CONN)
			dev->st.conn_errors++;
		describe(e, what, sizeof(what));
		copy_text(dev->st.last_error, sizeof(dev->st.last_error), what);
		snprintf(line, sizeof(line), "%s: %s", dev->label, what);
		copy_text(d->bst.last_error, sizeof(d->bst.last_error), line);
	}
	pthread_mutex_unlock(&d->lock);
}

/* Foreign and stale answers into the statistics. */
static void match_account(struct driver *d)
{
	struct rtu_link_counters c = {.foreign = d->foreign, .stale_bytes = d->stale_bytes};

	if (d->link)
		rtu_link_counters(d->link, &c);
	pthread_mutex_lock(&d->lock);
	d->bst.foreign_answers = c.foreign;
	d->bst.stale_bytes = c.stale_bytes;
	pthread_mutex_unlock(&d->lock);
}

static void bus_error(struct driver *d, const char *what)
{
	pthread_mutex_lock(&d->lock);
	d->bst.errors++;
	d->bst.connected = d->connected;
	copy_text(d->bst.last_error, sizeof(d->bst.last_error), what);
	pthread_mutex_unlock(&d->lock);
}

/* ---- connection ----------------------------------------------------------------------- */

static void set_timeout(struct driver *d, int64_t ms)
{
	if (d->cur_timeout == ms)
		return;
	if (d->link) {
		d->cur_timeout = (int)ms; /* given to each request */
		return;
	}
	modbus_set_response_timeout(d->ctx, (uint32_t)(ms / 1000), (uint32_t)(ms % 1000) * 1000);
	d->cur_timeout = (int)ms;
}

static const char *endpoint(const struct driver *d, char *buf, size_t len)
{
	if (d->rtu)
		snprintf(buf, len, "%s", d->mo->device);
	else if (d->dtu)
		snprintf(buf, len, "DTU on %s", d->mo->listen);
	else
		snprintf(buf, len, "%s:%lld", d->mo->host, (long long)d->mo->port);
	return buf;
}

/* The transport: libmodbus's modbus_t, or our RTU-over-TCP link. 0 or -1
 * with errno, as libmodbus. */
static int conn_open(struct driver *d)
{
	int e;

	d->rx_n = 0;
	if (!d->link)
		return modbus_connect(d->ctx);
	if (d->dtu) {
		uint8_t rest[DTU_REST_MAX];
		size_t rest_n;
		int fd = dtu_take(d->dtu, rest, &rest_n);
		if (fd < 0) {
			errno = ENOTCONN; /* the DTU has not dialled in (yet, or again) */
			return -1;
		}
		rtu_link_adopt(d->link, fd, rest, rest_n);
		return 0;
	}
	e = rtu_link_connect(d->link, d->mo->timeout_ms);
	if (!e)
		return 0;
	errno = e;
	return -1;
}

static void conn_close(struct driver *d)
{
	d->rx_n = 0;
	if (d->link)
		rtu_link_close(d->link);
	else
		modbus_close(d->ctx);
}

static void tcp_flush(struct driver *d);

static void conn_flush(struct driver *d)
{
	if (d->link)
		rtu_link_flush(d->link);
	else if (!d->rtu)
		tcp_flush(d);
	else
		modbus_flush(d->ctx);
}

static void schedule_reconnect(struct driver *d)
{
	d->reconnect_at = cgw_mono_ms() + d->backoff;
	d->backoff = d->backoff * 2 > MB_RECONNECT_MAX_MS ? MB_RECONNECT_MAX_MS : d->backoff * 2;
}

static void try_connect(struct driver *d)
{
	char ep[160], what[200];
	int e;

	/* libmodbus bounds a TCP connect by the response timeout */
	set_timeout(d, d->mo->timeout_ms);
	if (conn_open(d) == 0) {
		d->connected = true;
		d->answered = false;
		d->cur_unit = -1;
		if (d->rtu && d->mo->rs485 &&
		    modbus_rtu_set_serial_mode(d->ctx, MODBUS_RTU_RS485) < 0 && !d->rs485_logged) {
			log_warn(
				"modbus",
				"%s %s: cannot switch to RS-485 mode (%s); using the port as it is",
				d->tag, d->mo->device, modbus_strerror(errno));
			d->rs485_logged = true;
		}
		pthread_mutex_lock(&d->lock);
		d->bst.connected = true;
		pthread_mutex_unlock(&d->lock);
		if (d->conn_fault)
			log_notice("modbus", "%s %s: connected again", d->tag,
				   endpoint(d, ep, sizeof(ep)));
		else
			log_info("modbus", "%s %s: connected", d->tag, endpoint(d, ep, sizeof(ep)));
		d->conn_fault = false;
		return;
	}
	e = errno;
	if (d->dtu) {
		/* no backoff: the DTU's connection wakes the worker when it comes */
		if (!d->conn_fault) { /* asked at every turn of the worker: say it once */
			snprintf(what, sizeof(what), "%s: waiting for the DTU to dial in",
				 endpoint(d, ep, sizeof(ep)));
			bus_error(d, what);
			log_info("modbus", "%s %s", d->tag, what);
		}
		d->conn_fault = true;
		d->reconnect_at = INT64_MAX;
		return;
	}
	snprintf(what, sizeof(what), "cannot connect to %s: %s", endpoint(d, ep, sizeof(ep)),
		 modbus_strerror(e));
	bus_error(d, what);
	if (!d->conn_fault)
		log_warn("modbus", "%s %s; retrying with backoff", d->tag, what);
	d->conn_fault = true;
	schedule_reconnect(d);
}

static void disconnect(struct driver *d, int e)
{
	char ep[160], what[200];

	conn_close(d);
	d->connected = false;
	snprintf(what, sizeof(what), "%s: connection lost: %s", endpoint(d, ep, sizeof(ep)),
		 modbus_strerror(e));
	bus_error(d, what);
	if (!d->conn_fault)
		log_warn("modbus", "%s %s; reconnecting", d->tag, what);
	d->conn_fault = true;
	/* A connection that worked is retried at once (a gateway that closed an
	 * idle connection must not cost every device a cycle); one that never
	 * answered backs off, so a peer that accepts and drops cannot make us spin. */
	if (d->answered)
		d->reconnect_at = cgw_mono_ms();
	else
		schedule_reconnect(d);
}

/* A TCP connection (a gateway or serial server) on which every device
 * timed out since the last answer is dropped and made again with backoff:
 * a gateway that accepted the session and then stopped answering may well
 * answer a new one. A serial port has nothing to gain from reopening. */
static void note_silence(struct driver *d, struct mb_dev *dev, enum mb_errkind k)
{
	char ep[160];

	if (k == MBE_NONE || k == MBE_EXCEPTION) {
		d->answer_epoch++;
		d->silent_devs = 0;
		if (d->silent_conn.active)
			log_episode_good(&d->silent_conn, cgw_mono_ms(), "modbus",
					 "%s %s: devices answer again", d->tag,
					 endpoint(d, ep, sizeof(ep)));
		return;
	}
	if (k != MBE_TIMEOUT || d->rtu || dev->silent_epoch == d->answer_epoch + 1)
		return;
	dev->silent_epoch = d->answer_epoch + 1;
	d->silent_devs++;
	/* every device that is not already offline (or every one, when all are) */
	size_t live = 0;
	for (size_t i = 0; i < d->n_devs; i++)
		live += d->devs[i].req_n && d->devs[i].state != DEV_OFFLINE;
	if (d->silent_devs < (live ? live : d->n_pollable))
		return;
	log_episode_bad(&d->silent_conn, cgw_mono_ms(), LOG_WARNING, "modbus",
			"%s %s: no device answers on this connection (%zu timed out); "
			"reconnecting with backoff",
			d->tag, endpoint(d, ep, sizeof(ep)), d->silent_devs);
	conn_close(d);
	d->connected = false;
	d->conn_fault = true; /* the reconnect says "connected again" */
	d->silent_devs = 0;
	d->answer_epoch++;
	bus_error(d, "no device answers on this connection; reconnecting");
	schedule_reconnect(d);
}

/* ---- one request ---------------------------------------------------------------------- */

static int select_device(struct driver *d, const struct mb_dev *dev)
{
	if (d->cur_unit != (int)dev->cfg->unit) {
		if (!d->link && modbus_set_slave(d->ctx, (int)dev->cfg->unit) < 0)
			return errno ? errno : EINVAL;
		d->cur_unit = (int)dev->cfg->unit;
	}
	set_timeout(d, dev->cfg->timeout_ms);
	return 0;
}

/* The silence an RTU line needs between frames: 3.5 characters at its baud
 * (11 bits a character; a fixed 1750 us above 19200 baud, as the standard
 * says), which libmodbus does not keep, plus `frame_delay` for devices that
 * need more. None on Modbus TCP. */
static int64_t line_silence_us(const struct cfg_bus *bus)
{
	const struct modbus_bus_opts *mo = modbus_opts(bus);
	int64_t us;

	if (modbus_transport(bus) != MB_SERIAL && modbus_transport(bus) != MB_RTU_TCP)
		return 0;
	us = mo->baud > 19200 ? 1750 : (int64_t)(3.5 * 11 * 1e6) / (mo->baud > 0 ? mo->baud : 9600);
	return us + mo->frame_delay_ms * 1000;
}

static void frame_gap(struct driver *d)
{
	int64_t until;

	if (d->silence_us <= 0)
		return;
	until = d->last_frame_end + d->silence_us;
	for (int64_t now = mono_us(); now < until && !stopping(d); now = mono_us()) {
		int64_t us = until - now > 100000 ? 100000 : until - now;
		struct timespec ts = {.tv_sec = 0, .tv_nsec = us * 1000};
		nanosleep(&ts, NULL);
	}
}

/* The request of op as an RTU frame for `unit` (our own framing serves RTU
 * over TCP, and gives Modbus TCP its PDU and answer checks). Length or -1. */
static int build_frame(const struct driver *d, enum mb_op op, int addr, int n, uint8_t unit,
		       uint8_t *frame, size_t cap, struct rtu_req *req)
{
	uint8_t data[2 * RTU_MAX_WRITE_REGS];
	uint16_t a = (uint16_t)addr, c = (uint16_t)n;
	int flen = -1;

	if (addr < 0 || addr > 0xFFFF || n < 1 || n > MBP_MAX_BITS)
		return -1;
	switch (op) {
	case OP_READ_COILS:
		flen = rtu_build_read(frame, cap, unit, RTU_FN_READ_COILS, a, c, req);
		break;
	case OP_READ_DISCRETE:
		flen = rtu_build_read(frame, cap, unit, RTU_FN_READ_DISCRETE, a, c, req);
		break;
	case OP_READ_INPUT:
		flen = rtu_build_read(frame, cap, unit, RTU_FN_READ_INPUT, a, c, req);
		break;
	case OP_READ_HOLDING:
		flen = rtu_build_read(frame, cap, unit, RTU_FN_READ_HOLDING, a, c, req);
		break;
	case OP_WRITE_COIL:
		flen = rtu_build_write_single(frame, cap, unit, RTU_FN_WRITE_COIL, a,
					      d->bits[0] ? 0xFF00 : 0, req);
		break;
	case OP_WRITE_REG:
		flen = rtu_build_write_single(frame, cap, unit, RTU_FN_WRITE_REG, a, d->regs[0],
					      req);
		break;
	case OP_WRITE_REGS:
		if (n > RTU_MAX_WRITE_REGS)
			return -1;
		for (int i = 0; i < n; i++) {
			data[2 * i] = (uint8_t)(d->regs[i] >> 8);
			data[2 * i + 1] = (uint8_t)(d->regs[i] & 0xFF);
		}
		flen = rtu_build_write_multiple(frame, cap, unit, RTU_FN_WRITE_REGS, a, c, data,
						2 * (size_t)n, req);
		break;
	}
	return flen < 0 ? -1 : flen;
}

/* A read's data bytes into d->regs / d->bits, as libmodbus would. */
static void unpack(struct driver *d, enum mb_op op, int n, const uint8_t *data, size_t len)
{
	if (op == OP_READ_COILS || op == OP_READ_DISCRETE) {
		for (int i = 0; i < n && (size_t)i / 8 < len; i++)
			d->bits[i] = (uint8_t)((data[i / 8] >> (i % 8)) & 1);
	} else if (op == OP_READ_INPUT || op == OP_READ_HOLDING) {
		for (int i = 0; i < n && (size_t)(2 * i + 1) < len; i++)
			d->regs[i] = (uint16_t)(data[2 * i] << 8 | data[2 * i + 1]);
	}
}

static int exception_errno(uint8_t code)
{
	return code >= 1 && code <= 11 && code != 9 ? MODBUS_ENOBASE + code : EMBUNKEXC;
}

/* One request as RTU frames over TCP (rtu_link.h). */
static int link_call(struct driver *d, enum mb_op op, int addr, int n)
{
	uint8_t frame[RTU_MAX_ADU], data[RTU_MAX_ADU];
	struct rtu_req req;
	size_t len = 0;
	int flen, e;

	if (d->cur_unit < 1 || d->cur_unit > 247)
		return EINVAL;
	flen = build_frame(d, op, addr, n, (uint8_t)d->cur_unit, frame, sizeof(frame), &req);
	if (flen < 0)
		return EINVAL;
	e = rtu_link_transact(d->link, frame, (size_t)flen, &req, data, sizeof(data), &len,
			      d->cur_timeout);
	if (!e)
		unpack(d, op, n, data, len);
	return e;
}

/* One request on a serial RTU line. libmodbus sends it (CRC, RS-485) and
 * reads frames (CRC checked); the matching is ours, as on TCP: libmodbus's
 * read calls fail a request on an answer from another unit (a second device
 * with the same address, a late answer of a neighbour) as a frame error.
 * Such an answer is counted as foreign and dropped, never taken as data,
 * and the wait goes on until the request's own answer or the timeout. */
static int serial_call(struct driver *d, enum mb_op op, int addr, int n)
{
	uint8_t frame[RTU_MAX_ADU], rsp[MODBUS_RTU_MAX_ADU_LENGTH];
	struct rtu_req req;
	int64_t deadline;
	int flen, e = ETIMEDOUT;

	if (d->cur_unit < 1 || d->cur_unit > 247)
		return EINVAL;
	flen = build_frame(d, op, addr, n, (uint8_t)d->cur_unit, frame, sizeof(frame), &req);
	if (flen < 0)
		return EINVAL;
	/* libmodbus adds the CRC */
	if (modbus_send_raw_request(d->ctx, frame, flen - 2) < 0)
		return errno ? errno : EIO;
	deadline = mono_us() + (int64_t)d->cur_timeout * 1000;
	for (;;) {
		int64_t left = deadline - mono_us();
		struct rtu_answer a;
		int rc;

		if (left <= 0)
			break;
		modbus_set_response_timeout(d->ctx, (uint32_t)(left / 1000000),
					    (uint32_t)(left % 1000000));
		rc = modbus_receive_confirmation(d->ctx, rsp);
		if (rc < 0) {
			e = errno ? errno : EIO;
			break;
		}
		/* 0: libmodbus dropped a frame of another unit (its own filter) */
		if (rc < 4 || rsp[0] != (uint8_t)d->cur_unit) {
			d->foreign++;
			continue;
		}
		/* libmodbus checked the CRC: the frame without it */
		enum rtu_scan_result r = rtu_match(rsp, (size_t)rc - 2, &req, &a);
		if (r == RTU_FOREIGN) { /* our unit, another function: a late answer */
			d->foreign++;
			continue;
		}
		if (r == RTU_ANSWER) {
			unpack(d, op, n, a.data, a.len);
			e = 0;
		} else {
			e = r == RTU_EXCEPTION ? exception_errno(a.exception) : EMBBADDATA;
		}
		break;
	}
	modbus_set_response_timeout(d->ctx, (uint32_t)(d->cur_timeout / 1000),
				    (uint32_t)(d->cur_timeout % 1000) * 1000);
	return e;
}

/* Bytes from the Modbus TCP connection into d->rx: 0 when some came,
 * ETIMEDOUT at the deadline (monotonic us), or the connection's errno.
 * While it waits, items held for the core are handed over once they are
 * MB_HOLD_US old: a slow answer never holds a reading back longer. */
static int tcp_receive(struct driver *d, int fd, int64_t deadline)
{
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int64_t now = mono_us(), until = deadline;
		bool hold = d->n_pend > 0 && d->pend_since + MB_HOLD_US < deadline;
		struct timespec ts;
		ssize_t n;
		int r;

		if (now >= deadline)
			return ETIMEDOUT;
		if (hold)
			until = d->pend_since + MB_HOLD_US;
		if (now >= until) {
			flush(d);
			continue;
		}
		ts = (struct timespec){.tv_sec = (until - now) / 1000000,
				       .tv_nsec = (until - now) % 1000000 * 1000};
		r = ppoll(&p, 1, &ts, NULL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno;
		if (r == 0)
			continue; /* the hold or the deadline: seen above */
		n = recv(fd, d->rx + d->rx_n, sizeof(d->rx) - d->rx_n, MSG_DONTWAIT);
		if (n == 0)
			return ECONNRESET;
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : errno;
		d->rx_n += (size_t)n;
		return 0;
	}
}

static void rx_drop(struct driver *d, size_t n)
{
	memmove(d->rx, d->rx + n, d->rx_n - n);
	d->rx_n -= n;
}

/* What waits on a Modbus TCP connection, dropped and counted as stale:
 * after a timeout or an invalid frame, a late or broken answer must not be
 * taken for the next one. */
static void tcp_flush(struct driver *d)
{
	int fd = modbus_get_socket(d->ctx);

	d->stale_bytes += d->rx_n;
	d->rx_n = 0;
	while (fd >= 0) {
		ssize_t n = recv(fd, d->rx, sizeof(d->rx), MSG_DONTWAIT);
		if (n <= 0)
			break;
		d->stale_bytes += (uint64_t)n;
	}
}

/* One request on Modbus TCP. libmodbus connects; the request, the framing
 * of the answers (MBAP: mbap_frame_length) and the matching are ours,
 * because libmodbus's read calls take an answer from another unit as data
 * and fail a request on a stale answer (a device that answered late or
 * twice) instead of waiting for its own, and they cost six system calls an
 * answer (select and recv for header, function and body) where one poll
 * and one recv do. Frames stay whole in d->rx across requests, so nothing
 * is flushed before a request: an answer with one of the MB_STALE_TIDS
 * transaction ids sent before (a late or repeated answer) is counted as
 * stale bytes and dropped, one with any other id or from another unit is
 * counted as foreign and dropped, and the wait goes on until the request's
 * own answer or the timeout. */
static int tcp_call(struct driver *d, enum mb_op op, int addr, int n)
{
	uint8_t frame[RTU_MAX_ADU], adu[MODBUS_TCP_MAX_ADU_LENGTH], fake[RTU_MAX_ADU];
	struct rtu_req req;
	int64_t deadline;
	size_t plen;
	int flen, fd, e;
	uint16_t tid, age;

	/* the PDU is the RTU frame without unit and CRC; unit 1 stands in for
	 * the TCP unit ids RTU has no room for (0, 248..255), checked apart */
	flen = build_frame(d, op, addr, n, 1, frame, sizeof(frame), &req);
	if (flen < 0 || d->cur_unit < 0 || d->cur_unit > 255)
		return EINVAL;
	plen = (size_t)flen - 3;
	tid = ++d->tid;
	adu[0] = (uint8_t)(tid >> 8);
	adu[1] = (uint8_t)(tid & 0xFF);
	adu[2] = adu[3] = 0;
	adu[4] = (uint8_t)((plen + 1) >> 8);
	adu[5] = (uint8_t)((plen + 1) & 0xFF);
	adu[6] = (uint8_t)d->cur_unit;
	memcpy(adu + 7, frame + 1, plen);
	fd = modbus_get_socket(d->ctx);
	if (fd < 0)
		return ENOTCONN;
	if (send(fd, adu, 7 + plen, MSG_NOSIGNAL) != (ssize_t)(7 + plen))
		return errno ? errno : EIO;
	deadline = mono_us() + (int64_t)d->cur_timeout * 1000;
	for (;;) {
		int fl = mbap_frame_length(d->rx, d->rx_n);
		struct rtu_answer a;

		if (fl < 0) { /* the stream lost its framing: nothing in it is ours */
			e = EMBBADDATA;
			break;
		}
		if (fl == 0 || (size_t)fl > d->rx_n) {
			e = tcp_receive(d, fd, deadline);
			if (e)
				break;
			continue;
		}
		age = (uint16_t)(tid - ((d->rx[0] << 8) | d->rx[1]));
		if (age > 0 && age <= MB_STALE_TIDS) { /* a late or repeated answer */
			d->stale_bytes += (uint64_t)fl;
			rx_drop(d, (size_t)fl);
			continue;
		}
		if (age || d->rx[6] != (uint8_t)d->cur_unit) {
			d->foreign++;
			rx_drop(d, (size_t)fl);
			continue;
		}
		/* TCP framed it and carries no CRC: check the PDU as an RTU
		 * frame of unit 1 (see above), without computing one */
		fake[0] = 1;
		memcpy(fake + 1, d->rx + 7, (size_t)fl - 7);
		switch (fl < 9 ? RTU_GARBAGE : rtu_match(fake, (size_t)fl - 6, &req, &a)) {
		case RTU_ANSWER:
			unpack(d, op, n, a.data, a.len);
			e = 0;
			break;
		case RTU_EXCEPTION:
			e = exception_errno(a.exception);
			break;
		default: /* our transaction, but not an answer to it */
			e = EMBBADDATA;
			break;
		}
		rx_drop(d, (size_t)fl);
		break;
	}
	return e;
}

static int call(struct driver *d, enum mb_op op, int addr, int n)
{
	flush_before_request(d); /* nothing read waits behind line time */
	if (d->link)
		return link_call(d, op, addr, n);
	if (!d->rtu)
		return tcp_call(d, op, addr, n);
	return serial_call(d, op, addr, n);
}

/* One request with its retries. 0, or the libmodbus errno of the last
 * attempt. A connection error closes the connection. */
static int transact(struct driver *d, struct mb_dev *dev, enum mb_op op, int addr, int n)
{
	/* an offline device gets one try: probing it must not eat the line */
	int64_t retries = dev->state == DEV_OFFLINE ? 0 : dev->cfg->retries;
	int e = 0;

	flush_before_request(d);
	for (int64_t t = 0; t <= retries; t++) {
		int64_t t0;
		if (t > 0 && stopping(d))
			break;
		frame_gap(d);
		t0 = mono_us();
		e = call(d, op, addr, n);
		d->last_frame_end = mono_us();
		account(d, dev, e, d->last_frame_end - t0);
		match_account(d);
		note_silence(d, dev, classify(e));
		switch (classify(e)) {
		case MBE_NONE:
		case MBE_EXCEPTION:
			d->backoff = MB_RECONNECT_MIN_MS;
			d->answered = true;
			return e;
		case MBE_CONN:
			disconnect(d, e);
			return e;
		case MBE_OTHER:
			return e;
		case MBE_TIMEOUT:
		case MBE_FRAME:
			if (!d->connected) /* note_silence() dropped the connection */
				return e;
			/* a late or broken answer must not be taken for the next one */
			conn_flush(d);
			break;
		}
	}
	return e;
}

/* ---- reporting ------------------------------------------------------------------------ */

static void fail_point(struct driver *d, struct mb_dev *dev, size_t p, enum cgw_quality q)
{
	struct mb_pstate *ps = &dev->pts[p];
	struct cgw_item it = {.kind = CGW_ITEM_READING,
			      .device = dev->index,
			      .point = (uint32_t)p,
			      .quality = q,
			      .ts_ms = dev->cycle_ts ? dev->cycle_ts : cgw_now_ms(),
			      .in_cycle = true};

	ps->raw_ok = false;
	if (ps->failed && ps->fail_q == q)
		return;
	dev->cycle_readings = true;
	ps->failed = true;
	ps->fail_q = q;
	ps->sent = false;
	cgw_value_clear(&ps->last);
	push(d, &it);
}

/* Takes ownership of *v. */
static void report(struct driver *d, struct mb_dev *dev, size_t p, struct cgw_value *v,
		   enum cgw_quality q, int64_t now, int64_t ts)
{
	struct mb_pstate *ps = &dev->pts[p];
	const struct cfg_point *pt = &dev->prof->points[p];
	struct cgw_item it = {.kind = CGW_ITEM_READING,
			      .device = dev->index,
			      .point = (uint32_t)p,
			      .quality = CGW_Q_GOOD,
			      .ts_ms = ts,
			      .in_cycle = true};
	bool due;

	if (q != CGW_Q_GOOD || v->type == CGW_V_NONE) {
		cgw_value_clear(v);
		fail_point(d, dev, p, CGW_Q_BAD);
		return;
	}
	due = !ps->sent || cgw_value_changed(&ps->last, v, pt->deadband) ||
	      (pt->report_every_ms > 0 && now - ps->last_sent >= pt->report_every_ms);
	if (ps->failed && ps->logged)
		log_notice("modbus", "%s %s: point %s readable again", d->tag, dev->label,
			   pt->name);
	ps->failed = false;
	ps->logged = false;
	if (!due || cgw_value_copy(&it.value, v) < 0) {
		cgw_value_clear(v);
		return;
	}
	cgw_value_clear(&ps->last);
	ps->last = *v;
	v->type = CGW_V_NONE;
	ps->last_sent = now;
	ps->sent = true;
	dev->cycle_readings = true;
	push(d, &it);
}

/* The registers of one numeric point as they came, for comparing reads:
 * decoding (a float32 to its shortest decimal costs a printf and two strtod)
 * and the deadband check are skipped when they did not change. */
static uint64_t raw_regs(const uint16_t *regs, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++)
		v = v << 16 | regs[i];
	return v;
}

/* Decode every point a successful read covers. A point whose registers are
 * those of its last good read decodes to the same value, which report()
 * already judged: unless its report_every is due, nothing to do. */
static void deliver(struct driver *d, struct mb_dev *dev, const struct mb_req *r)
{
	int64_t now = cgw_mono_ms(), ts;
	bool regs = r->table != CGW_TBL_COIL && r->table != CGW_TBL_DISCRETE;

	/* one time for the whole cycle: its readings are one telemetry message */
	if (!dev->cycle_ts)
		dev->cycle_ts = cgw_now_ms();
	ts = dev->cycle_ts;

	for (size_t k = 0; k < r->nspans; k++) {
		const struct mb_span *s = mbp_span(d->plan, r->first_span + k);
		size_t off = (size_t)(s->addr - r->addr);
		struct mb_pstate *ps = &dev->pts[s->point];
		const struct cfg_point *pt = &dev->prof->points[s->point];
		struct cgw_value v = {.type = CGW_V_NONE};
		enum cgw_quality q = CGW_Q_GOOD;
		uint64_t raw = 0;
		bool cacheable = false;
		int rc;

		if (!regs) {
			rc = mbd_decode_bit(d->bits, r->count, off, &v);
		} else {
			struct mb_format f = modbus_point_format(pt);
			cacheable = f.type != CGW_T_STRING && s->count <= 4 &&
				    off + s->count <= r->count;
			if (cacheable) {
				raw = raw_regs(d->regs + off, s->count);
				if (ps->raw_ok && ps->raw == raw && ps->sent &&
				    !(pt->report_every_ms > 0 &&
				      now - ps->last_sent >= pt->report_every_ms))
					continue;
			}
			rc = mbd_decode_regs(&f, d->regs + off, r->count - off, &v, &q);
		}
		if (rc < 0)
			q = CGW_Q_BAD;
		report(d, dev, s->point, &v, q, now, ts);
		ps->raw_ok = cacheable && !ps->failed && ps->sent;
		ps->raw = raw;
	}
}

/* A request the device answered with an exception. */
static void fail_request(struct driver *d, struct mb_dev *dev, const struct mb_req *r, int e,
			 enum cgw_quality q)
{
	bool fresh = false;
	char what[64];

	for (size_t k = 0; k < r->nspans; k++) {
		const struct mb_span *s = mbp_span(d->plan, r->first_span + k);
		struct mb_pstate *ps = &dev->pts[s->point];
		if (!ps->logged)
			fresh = true;
		ps->logged = true;
		fail_point(d, dev, s->point, q);
	}
	if (!fresh)
		return;
	describe(e, what, sizeof(what));
	log_warn("modbus", "%s %s: %s reading %s %u..%u (point %s%s); marked %s", d->tag,
		 dev->label, what, table_name(r->table), (unsigned)r->addr,
		 (unsigned)(r->addr + r->count - 1),
		 dev->prof->points[mbp_span(d->plan, r->first_span)->point].name,
		 r->nspans > 1 ? " and others" : "", cgw_quality_name(q));
}

static void update_ranges(struct driver *d)
{
	for (size_t i = 0; i < d->n_devs; i++)
		d->devs[i].req_n = 0;
	for (size_t i = 0; i < mbp_count(d->plan); i++) {
		struct mb_dev *dev = &d->devs[d->dev_map[mbp_req(d->plan, i)->device]];
		if (!dev->req_n)
			dev->req_first = i;
		dev->req_n++;
	}
	d->n_pollable = 0;
	d->any_fast = false;
	for (size_t i = 0; i < d->n_devs; i++) {
		struct mb_dev *dev = &d->devs[i];
		d->n_pollable += dev->req_n > 0;
		dev->fast_ms = 0;
		for (size_t k = dev->req_first; k < dev->req_first + dev->req_n; k++) {
			uint32_t pm = mbp_req(d->plan, k)->poll_ms;
			if (pm && (!dev->fast_ms || pm < dev->fast_ms))
				dev->fast_ms = pm;
		}
		d->any_fast |= dev->fast_ms > 0;
	}
}

static void set_state(struct driver *d, struct mb_dev *dev, enum mb_devstate s)
{
	struct cgw_item it = {.kind = CGW_ITEM_DEVICE_STATE,
			      .device = dev->index,
			      .online = s == DEV_ONLINE,
			      .ts_ms = cgw_now_ms()};

	if (dev->state == s)
		return;
	dev->state = s;
	pthread_mutex_lock(&d->lock);
	dev->st.online = s == DEV_ONLINE;
	pthread_mutex_unlock(&d->lock);
	push(d, &it);
}

/* ---- writes ------------------------------------------------------------------------- */

static void exec_write(struct driver *d, struct mb_write *w)
{
	struct mb_dev *dev = &d->devs[d->dev_map[w->device]];
	const struct cfg_point *pt = &dev->prof->points[w->point];
	const struct mb_format fmt = modbus_point_format(pt), *f = &fmt;
	int addr = (int)(pt->address - dev->cfg->address_base);
	struct cgw_item it = {.kind = CGW_ITEM_WRITE_RESULT,
			      .device = w->device,
			      .point = w->point,
			      .token = w->token};
	const char *why = NULL;
	char what[96];
	int e = 0, r = 0;

	if (!d->connected) {
		r = -ENOTCONN;
		why = "bus not connected";
	} else if ((e = select_device(d, dev)) != 0) {
		r = -EINVAL;
		why = "unit id not usable";
	} else if (pt->table == CGW_TBL_COIL) {
		r = mbd_encode_bit(&w->v, &d->bits[0]);
		if (r == 0)
			e = transact(d, dev, OP_WRITE_COIL, addr, 1);
	} else {
		unsigned n = 0;
		/* one bit of a register: read-modify-write */
		if (f->bit >= 0)
			e = transact(d, dev, OP_READ_HOLDING, addr, 1);
		if (!e)
			r = mbd_encode_regs(f, &w->v, d->regs, MBP_MAX_REGS, &n);
		if (!e && !r)
			e = transact(d, dev, n == 1 ? OP_WRITE_REG : OP_WRITE_REGS, addr, (int)n);
	}
	if (!r && e)
		r = result_of(e);
	if (r && !why) {
		if (e)
			describe(e, what, sizeof(what));
		else
			snprintf(what, sizeof(what), "value not valid for this point: %s",
				 strerror(-r));
		why = what;
	}
	if (why) {
		it.value.s = strdup(why);
		it.value.type = it.value.s ? CGW_V_STRING : CGW_V_NONE;
		log_warn("modbus", "%s %s: write of %s failed: %s", d->tag, dev->label, pt->name,
			 why);
	} else {
		dev->refresh = true;
	}
	it.result = r;
	it.ts_ms = cgw_now_ms();
	push(d, &it);
}

/* ---- commissioning ------------------------------------------------------------------ */

static enum mb_op read_op(enum cgw_table t);

static void jbuf_add(struct mb_scan *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends to a growing JSON text (worker only; libjansson stays in the core). */
static void jbuf_add(struct mb_scan *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->json ? b->json + b->len : NULL, b->json ? b->cap - b->len : 0, fmt,
			      ap);
		va_end(ap);
		if (n < 0) {
			b->oom = true;
			return;
		}
		if (b->json && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
		char *nj = realloc(b->json, cap);
		if (!nj) {
			b->oom = true;
			return;
		}
		b->json = nj;
		b->cap = cap;
	}
}

/* One raw read for commissioning: one try, its own timeout, not counted
 * against any device. 0 or the libmodbus errno. */
static int commission_read(struct driver *d, int unit, int table, int addr, int n,
			   int64_t timeout_ms)
{
	int e;

	if (!d->connected)
		return ENOTCONN;
	if (d->cur_unit != unit) {
		if (modbus_set_slave(d->ctx, unit) < 0)
			return errno ? errno : EINVAL;
		d->cur_unit = unit;
	}
	set_timeout(d, timeout_ms);
	frame_gap(d);
	e = call(d, read_op(table), addr, n);
	d->last_frame_end = cgw_mono_ms();
	switch (classify(e)) {
	case MBE_NONE:
	case MBE_EXCEPTION:
		d->answered = true;
		break;
	case MBE_CONN:
		disconnect(d, e);
		break;
	case MBE_TIMEOUT:
	case MBE_FRAME:
		conn_flush(d); /* a late answer must not be taken for the next one */
		break;
	case MBE_OTHER:
		break;
	}
	return e;
}

/* "result" and "detail" of one outcome, as JSON members. */
static void outcome_json(struct mb_scan *b, int e)
{
	char what[96];

	describe(e, what, sizeof(what));
	switch (classify(e)) {
	case MBE_NONE:
		jbuf_add(b, "\"result\":\"ok\"");
		break;
	case MBE_EXCEPTION:
		jbuf_add(b, "\"result\":\"exception\",\"code\":%d,\"detail\":\"%s\"",
			 e - MODBUS_ENOBASE, what);
		break;
	case MBE_TIMEOUT:
		jbuf_add(b, "\"result\":\"timeout\"");
		break;
	default:
		/* strerror/modbus_strerror texts: no quotes or backslashes */
		jbuf_add(b, "\"result\":\"error\",\"detail\":\"%s\"", what);
		break;
	}
}

static void commission_done(struct driver *d, uint64_t token, struct mb_scan *b, int r,
			    const char *why)
{
	struct cgw_item it = {.kind = CGW_ITEM_COMMISSION_RESULT,
			      .token = token,
			      .result = r,
			      .ts_ms = cgw_now_ms()};

	if (!r && b->oom)
		r = -ENOMEM, why = "out of memory";
	if (r) {
		it.value.s = strdup(why ? why : strerror(-r));
	} else {
		it.value.s = b->json;
		b->json = NULL;
	}
	it.result = r;
	it.value.type = it.value.s ? CGW_V_STRING : CGW_V_NONE;
	free(b->json);
	b->json = NULL;
	b->len = b->cap = 0;
	b->oom = false;
	push(d, &it);
}

static void exec_probe(struct driver *d, const struct mb_write *w)
{
	const struct driver_commission *c = &w->comm;
	struct mb_scan b = {0};
	bool bits = c->table == CGW_TBL_COIL || c->table == CGW_TBL_DISCRETE;
	int e = commission_read(d, c->unit, c->table, c->address, c->count, c->timeout_ms);

	if (e == ENOTCONN) {
		commission_done(d, w->token, &b, -ENOTCONN, "bus not connected");
		return;
	}
	jbuf_add(&b, "{\"unit\":%u,\"table\":\"%s\",\"address\":%u,\"count\":%u,",
		 (unsigned)c->unit, table_name(c->table), (unsigned)c->address, (unsigned)c->count);
	outcome_json(&b, e);
	if (!e) {
		jbuf_add(&b, ",\"%s\":[", bits ? "bits" : "registers");
		for (unsigned i = 0; i < c->count; i++)
			jbuf_add(&b, "%s%u", i ? "," : "",
				 bits ? (unsigned)(d->bits[i] != 0) : (unsigned)d->regs[i]);
		jbuf_add(&b, "]");
	}
	jbuf_add(&b, "}");
	commission_done(d, w->token, &b, 0, NULL);
}

static void exec_commission(struct driver *d, const struct mb_write *w)
{
	struct mb_scan b = {0};

	if (w->comm.kind == DRV_PROBE) {
		exec_probe(d, w);
		return;
	}
	if (d->scan.active) {
		commission_done(d, w->token, &b, -EBUSY, "a scan is already running on this bus");
		return;
	}
	d->scan = (struct mb_scan){.active = true, .token = w->token, .req = w->comm, .next = 1};
	jbuf_add(&d->scan, "{\"table\":\"%s\",\"address\":%u,\"timeout_ms\":%lld,\"units\":[",
		 table_name(w->comm.table), (unsigned)w->comm.address,
		 (long long)w->comm.timeout_ms);
	log_notice("modbus", "%s scan started (one unit at a time, between polls)", d->tag);
}

/* One scan probe when the line is idle long enough. 0 if it probed (or
 * ended the scan); else the time it wants the worker back (INT64_MAX: at
 * the next poll). `due` is the next poll. */
static int64_t scan_step(struct driver *d, int64_t now, int64_t due)
{
	struct mb_scan *sc = &d->scan;
	unsigned answered = 0;
	int e;

	if (!sc->active || stopping(d))
		return INT64_MAX;
	while (sc->next <= MB_SCAN_MAX_UNIT &&
	       !(sc->req.units[sc->next / 8] & (1u << (sc->next % 8))))
		sc->next++;
	if (sc->next > MB_SCAN_MAX_UNIT) {
		jbuf_add(sc, "]}");
		for (size_t i = 0; i + 8 < sc->len; i++)
			answered += !strncmp(sc->json + i, "\"result\":\"ok", 13) ||
				    !strncmp(sc->json + i, "\"result\":\"exc", 14);
		log_notice("modbus", "%s scan done: %u unit%s answered", d->tag, answered,
			   answered == 1 ? "" : "s");
		sc->active = false;
		commission_done(d, sc->token, sc, 0, NULL);
		return 0;
	}
	if (!d->connected)
		return INT64_MAX; /* the worker reconnects; the scan waits */
	if (now < sc->next_at)
		return sc->next_at;
	if (due != INT64_MAX && due - now < sc->req.timeout_ms + MB_SCAN_MARGIN_MS)
		return INT64_MAX; /* not enough idle time before the next poll */
	e = commission_read(d, sc->next, sc->req.table, sc->req.address, 1, sc->req.timeout_ms);
	if (e == ENOTCONN)
		return INT64_MAX;
	jbuf_add(sc, "%s{\"unit\":%d,", sc->len && sc->json[sc->len - 1] == '[' ? "" : ",",
		 sc->next);
	outcome_json(sc, e);
	jbuf_add(sc, "}");
	sc->next++;
	sc->next_at = cgw_mono_ms() + MB_SCAN_GAP_MS;
	return 0;
}

static void scan_abort(struct driver *d)
{
	free(d->scan.json);
	d->scan = (struct mb_scan){0};
}

static void run_writes(struct driver *d)
{
	while (atomic_load_explicit(&d->pending, memory_order_acquire) && !stopping(d)) {
		struct mb_write w;
		pthread_mutex_lock(&d->lock);
		w = d->ring[d->ring_head];
		d->ring[d->ring_head].v.type = CGW_V_NONE;
		d->ring_head = (d->ring_head + 1) % MB_WRITE_QUEUE;
		d->ring_n--;
		atomic_fetch_sub(&d->pending, 1);
		pthread_mutex_unlock(&d->lock);
		if (w.commission)
			exec_commission(d, &w);
		else
			exec_write(d, &w);
		cgw_value_clear(&w.v);
	}
}

/* ---- one poll cycle ------------------------------------------------------------------ */

static enum mb_op read_op(enum cgw_table t)
{
	switch (t) {
	case CGW_TBL_COIL:
		return OP_READ_COILS;
	case CGW_TBL_DISCRETE:
		return OP_READ_DISCRETE;
	case CGW_TBL_INPUT:
		return OP_READ_INPUT;
	case CGW_TBL_HOLDING:
		break;
	}
	return OP_READ_HOLDING;
}

static void finish_cycle(struct driver *d, struct mb_dev *dev, int fail_e)
{
	char what[64];

	if (fail_e) {
		describe(fail_e, what, sizeof(what));
		dev->failed_cycles++;
		/* a lost or missing connection is logged once for the bus, not per device */
		if (!dev->io_fault && fail_e != ENOTCONN && classify(fail_e) != MBE_CONN) {
			log_warn("modbus", "%s %s: %s", d->tag, dev->label, what);
			dev->io_fault = true;
		}
		if (dev->state != DEV_OFFLINE &&
		    dev->failed_cycles >= (unsigned)dev->cfg->offline_after) {
			log_warn("modbus", "%s %s: offline after %u failed polls (%s)", d->tag,
				 dev->label, dev->failed_cycles, what);
			set_state(d, dev, DEV_OFFLINE);
			dev->probe_ms = 0; /* probes start a poll (or 4 timeouts) apart */
			for (size_t p = 0; p < dev->prof->n_points; p++)
				fail_point(d, dev, p, CGW_Q_STALE);
		}
		return;
	}
	pthread_mutex_lock(&d->lock);
	dev->st.last_ok_ms = cgw_now_ms();
	pthread_mutex_unlock(&d->lock);
	if (dev->state == DEV_OFFLINE)
		log_notice("modbus", "%s %s: online again", d->tag, dev->label);
	else if (dev->io_fault)
		log_notice("modbus", "%s %s: answering again after %u failed polls", d->tag,
			   dev->label, dev->failed_cycles);
	dev->io_fault = false;
	dev->failed_cycles = 0;
	set_state(d, dev, DEV_ONLINE);
}

/* Closes the cycle for the core: it sends what the cycle read as one
 * telemetry message, however many requests and tables it took. */
static void end_cycle(struct driver *d, struct mb_dev *dev)
{
	struct cgw_item it = {.kind = CGW_ITEM_CYCLE_END, .device = dev->index};

	if (dev->cycle_readings)
		push(d, &it);
	flush_before_request(d); /* the next request or the idle wait would */
	dev->cycle_readings = false;
	dev->cycle_ts = 0;
}

static void poll_device(struct driver *d, struct mb_dev *dev, bool scheduled, bool fast_only);
static void reschedule_fast(struct mb_dev *dev, int64_t now);

/* Before a request that may hold the line for up to horizon_ms (its
 * timeouts), read the fast points whose slot comes up meanwhile: early
 * rather than late, so an alarm status read every 500 ms is never more than
 * its poll (plus its own short read) old, whatever sits on the line. The
 * look-ahead is at most half a fast poll; an early read moves the next slot
 * with it, so two reads are never more than the fast poll apart. */
static void run_fast_due(struct driver *d, int64_t horizon_ms, const struct mb_dev *busy)
{
	if (d->in_fast || !d->any_fast) /* no scan of the bus per request without them */
		return;
	d->in_fast = true;
	while (d->connected && !stopping(d)) {
		int64_t now = cgw_mono_ms();
		struct mb_dev *f = NULL;

		for (size_t i = 0; i < d->n_devs; i++) {
			struct mb_dev *x = &d->devs[i];
			int64_t h = horizon_ms < x->fast_ms / 2 ? horizon_ms : x->fast_ms / 2;
			/* busy: its cycle is on; it read its fast points first */
			if (x != busy && x->fast_ms && x->state != DEV_OFFLINE &&
			    x->next_fast <= now + h && (!f || x->next_fast < f->next_fast))
				f = x;
		}
		if (!f)
			break;
		poll_device(d, f, false, true);
		reschedule_fast(f, now);
	}
	d->in_fast = false;
}

/* fast_only: only the requests of fast points (a slot of their own poll). */
static void poll_cycle(struct driver *d, struct mb_dev *dev, bool scheduled, bool fast_only)
{
	int fail_e = 0;
	int64_t t0 = mono_us();

	if (!d->connected) {
		fail_e = ENOTCONN;
		pthread_mutex_lock(&d->lock);
		dev->st.conn_errors++;
		snprintf(dev->st.last_error, sizeof(dev->st.last_error), "bus not connected");
		pthread_mutex_unlock(&d->lock);
	}
	for (size_t i = dev->req_first; !fail_e && i < dev->req_first + dev->req_n;) {
		const struct mb_req *r;
		int e;

		run_writes(d); /* between requests, never during one */
		run_fast_due(d,
			     dev->cfg->timeout_ms *
				     (dev->state == DEV_OFFLINE ? 1 : 1 + dev->cfg->retries),
			     dev);
		if (stopping(d))
			return;
		if (!d->connected) {
			fail_e = ENOTCONN;
			break;
		}
		e = select_device(d, dev);
		if (e) {
			fail_e = e;
			break;
		}
		r = mbp_req(d->plan, i);
		if (fast_only && !r->poll_ms) {
			i++;
			continue;
		}
		e = transact(d, dev, read_op(r->table), r->addr, r->count);
		if (stopping(d))
			return;
		if (!e) {
			deliver(d, dev, r);
			i++;
			continue;
		}
		if (classify(e) != MBE_EXCEPTION) {
			fail_e = e;
			break;
		}
		if (e == EMBXILADD) {
			char span[48];
			snprintf(span, sizeof(span), "%s %u..%u", table_name(r->table),
				 (unsigned)r->addr, (unsigned)(r->addr + r->count - 1));
			if (mbp_split(d->plan, i) == 0) {
				/* read the pieces now; the plan keeps them */
				log_info("modbus",
					 "%s %s: exception 2 reading %s; splitting the read",
					 d->tag, dev->label, span);
				update_ranges(d);
				continue;
			}
			fail_request(d, dev, r, e, CGW_Q_BAD);
		} else {
			fail_request(d, dev, r, e, CGW_Q_STALE);
		}
		i++;
	}
	if (!fast_only || scheduled) {
		pthread_mutex_lock(&d->lock);
		if (!fast_only)
			dev->cycle_us = mono_us() - t0;
		/* counted with its outcome: a snapshot of the statistics never
		 * finds a slot due whose cycle is still running */
		if (scheduled) {
			dev->st.polls_due++;
			dev->st.polls_done += !fail_e;
		}
		pthread_mutex_unlock(&d->lock);
	}
	finish_cycle(d, dev, fail_e);
}

static void poll_device(struct driver *d, struct mb_dev *dev, bool scheduled, bool fast_only)
{
	dev->cycle_ts = 0;
	dev->cycle_readings = false;
	poll_cycle(d, dev, scheduled, fast_only);
	end_cycle(d, dev);
}

/* ---- the worker ----------------------------------------------------------------------- */

/* Devices with the same interval start staggered across it: evenly on a
 * line (RTU, RTU over TCP: it stays evenly loaded). On Modbus TCP a request
 * costs a network round trip, not line time, and a wake-up of the worker
 * costs more than the request: the slots are put on a grid of
 * MB_STAGGER_MS, so that the devices sharing a slot are polled back to back
 * in one wake-up (50 devices at 1 s: 10 wake-ups of 5, not 50 of 1). Each
 * device keeps its own fixed grid either way. */
static void schedule_initial(struct driver *d, int64_t start)
{
	for (size_t i = 0; i < d->n_devs; i++) {
		struct mb_dev *dev = &d->devs[i];
		int64_t p = dev->cfg->poll_ms, slots;
		size_t k = 0, n = 0;

		if (!dev->req_n) {
			dev->next_due = INT64_MAX; /* no Modbus points: nothing to ask */
			continue;
		}
		for (size_t j = 0; j < d->n_devs; j++) {
			if (d->devs[j].cfg->poll_ms != dev->cfg->poll_ms || !d->devs[j].req_n)
				continue;
			if (j < i)
				k++;
			n++;
		}
		slots = d->rtu || d->link ? (int64_t)n : p / MB_STAGGER_MS;
		if (slots < 1)
			slots = 1;
		if (slots >= (int64_t)n)
			dev->next_due = start + p * (int64_t)k / (int64_t)n;
		else
			dev->next_due = start + p * ((int64_t)k * slots / (int64_t)n) / slots;
		dev->next_fast = dev->next_due + dev->fast_ms;
	}
}

/* The device to poll next: 0 and *dev set when one is due now, else the
 * time of the next slot. Among the slots due now, fast points come first
 * (an alarm status read every 500 ms must not queue behind a cycle of
 * analogue values), then full cycles, and last the devices that failed
 * their last two cycles: a dying detector goes to the back of the line, so
 * it delays nobody who answers. */
static int64_t pick_next(struct driver *d, int64_t now, struct mb_dev **out, bool *fast)
{
	struct mb_dev *best[3] = {NULL, NULL, NULL};
	int64_t best_t[3] = {INT64_MAX, INT64_MAX, INT64_MAX}, next = INT64_MAX;

	for (size_t i = 0; i < d->n_devs; i++) {
		struct mb_dev *dev = &d->devs[i];
		int64_t t = dev->refresh && d->connected ? now : dev->next_due;
		bool f = false;
		int cls;

		if (dev->fast_ms && dev->state != DEV_OFFLINE && d->connected &&
		    dev->next_fast < t) {
			t = dev->next_fast;
			f = true;
		}
		if (t < next)
			next = t;
		if (t > now)
			continue;
		cls = dev->failed_cycles >= 2 ? 2 : f ? 0 : 1;
		if (t < best_t[cls]) {
			best_t[cls] = t;
			best[cls] = dev;
			if (cls == 2 || cls == 0)
				*fast = f;
		}
	}
	for (int c = 0; c < 3; c++) {
		if (best[c]) {
			*out = best[c];
			if (c == 1)
				*fast = false;
			else if (c == 0)
				*fast = true;
			return 0;
		}
	}
	*out = NULL;
	return next;
}

/* The next slot of a device's fast points, after a read that started at
 * `now`: a fast poll after an early read, else on their own grid. */
static void reschedule_fast(struct mb_dev *dev, int64_t now)
{
	if (now < dev->next_fast) {
		dev->next_fast = now + dev->fast_ms;
		return;
	}
	dev->next_fast += dev->fast_ms;
	if (dev->next_fast <= now)
		dev->next_fast += ((now - dev->next_fast) / dev->fast_ms + 1) * dev->fast_ms;
}

static void reschedule(struct driver *d, struct mb_dev *dev)
{
	int64_t now = cgw_mono_ms();
	int64_t step = dev->state == DEV_OFFLINE ? offline_interval(dev, d->connected) :
						   dev->cfg->poll_ms;
	uint64_t missed = 0;

	dev->next_due += step;
	if (dev->next_due <= now) {
		missed = (uint64_t)((now - dev->next_due) / step) + 1;
		dev->next_due += (int64_t)missed * step;
	}
	if (missed) {
		pthread_mutex_lock(&d->lock);
		dev->st.polls_due += missed;
		pthread_mutex_unlock(&d->lock);
	}
}

static void wait_wake(struct driver *d, int64_t ms)
{
	struct pollfd pfd = {.fd = d->wake_fd, .events = POLLIN};

	flush(d);
	if (ms > 60000)
		ms = 60000;
	if (ms < 0)
		ms = 0;
	if (poll(&pfd, 1, (int)ms) > 0) {
		uint64_t v;
		ssize_t n = read(d->wake_fd, &v, sizeof(v));
		(void)n;
	}
}

/* A DTU that dialled in again (same identity) replaces its old connection;
 * while we wait for one, its arrival is what reconnects. */
static void dtu_replace(struct driver *d)
{
	uint8_t rest[DTU_REST_MAX];
	size_t rest_n;
	int fd;

	if (!d->dtu || !d->connected || (fd = dtu_take(d->dtu, rest, &rest_n)) < 0)
		return;
	log_notice("modbus", "%s DTU on %s dialled in again; the new connection replaces the old",
		   d->tag, d->mo->listen);
	rtu_link_adopt(d->link, fd, rest, rest_n);
	d->answered = false;
}

static void *worker(void *arg)
{
	struct driver *d = arg;

	schedule_initial(d, cgw_mono_ms());
	while (!stopping(d)) {
		struct mb_dev *next = NULL;
		int64_t now, due = INT64_MAX;
		bool fast = false;

		run_writes(d);
		now = cgw_mono_ms();
		dtu_replace(d);
		if (!d->connected && (now >= d->reconnect_at || d->dtu)) {
			flush(d);
			try_connect(d);
			now = cgw_mono_ms();
		}
		/* slots within MB_GROUP_MS are served now, early rather than
		 * in a wake-up each */
		due = pick_next(d, now + MB_GROUP_MS, &next, &fast);
		if (next && fast) {
			poll_device(d, next, false, true);
			reschedule_fast(next, now);
			continue;
		}
		if (next) {
			bool scheduled = next->next_due <= now + MB_GROUP_MS;
			next->refresh = false;
			poll_device(d, next, scheduled, false);
			if (scheduled)
				reschedule(d, next);
			if (next->fast_ms) /* the cycle read them too, first thing */
				reschedule_fast(next, now);
			continue;
		}
		int64_t scan_at = scan_step(d, now, due); /* the idle line: commissioning */
		if (scan_at == 0)
			continue;
		if (scan_at < due)
			due = scan_at;
		if (!d->connected && d->reconnect_at < due)
			due = d->reconnect_at;
		wait_wake(d, due == INT64_MAX ? 60000 : due - now);
	}
	flush(d);
	return NULL;
}

/* ---- driver_ops ----------------------------------------------------------------------- */

static void mb_free(struct driver *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n_pend; i++)
		cgw_value_clear(&d->pend[i].value);
	for (size_t i = 0; i < d->n_devs; i++) {
		struct mb_dev *dev = &d->devs[i];
		for (size_t p = 0; dev->pts && p < dev->prof->n_points; p++)
			cgw_value_clear(&dev->pts[p].last);
		free(dev->pts);
	}
	for (size_t i = 0; i < d->ring_n; i++)
		cgw_value_clear(&d->ring[(d->ring_head + i) % MB_WRITE_QUEUE].v);
	scan_abort(d);
	free(d->devs);
	free(d->dev_map);
	mbp_free(d->plan);
	dtu_detach(d->dtu);
	rtu_link_free(d->link);
	if (d->ctx) {
		modbus_close(d->ctx);
		modbus_free(d->ctx);
	}
	if (d->wake_fd >= 0)
		close(d->wake_fd);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

static void mb_close(struct driver *d)
{
	if (!d)
		return;
	if (d->thread_started) {
		atomic_store(&d->stop, true);
		wake(d);
		pthread_join(d->thread, NULL);
	}
	mb_free(d);
}

/* Devices of the bus, their formats and their spans. */
static int build_devices(struct driver *d, size_t bus, struct mb_span **spans_out, size_t *n_out)
{
	const struct cgw_config *cfg = d->cfg;
	struct mb_span *spans = NULL;
	size_t n = 0, cap = 0, ndev = 0;

	for (size_t i = 0; i < cfg->n_devices; i++)
		ndev += cfg->devices[i].bus == bus;
	d->dev_map = malloc((cfg->n_devices ? cfg->n_devices : 1) * sizeof(*d->dev_map));
	d->devs = calloc(ndev ? ndev : 1, sizeof(*d->devs));
	if (!d->dev_map || !d->devs)
		return -ENOMEM;
	for (size_t i = 0; i < cfg->n_devices; i++) {
		const struct cfg_device *cd = &cfg->devices[i];
		struct mb_dev *dev;

		d->dev_map[i] = UINT32_MAX;
		if (cd->bus != bus)
			continue;
		d->dev_map[i] = (uint32_t)d->n_devs;
		dev = &d->devs[d->n_devs++];
		dev->index = (uint32_t)i;
		dev->cfg = cd;
		dev->prof = cfg_device_profile(cfg, cd);
		dev->state = DEV_UNKNOWN;
		dev->st.device = (uint32_t)i;
		snprintf(dev->label, sizeof(dev->label), "unit %lld (%s)", (long long)cd->unit,
			 cd->id);
		if (cd->unit > 247 && (d->rtu || cd->unit != 255))
			/* libmodbus refuses it: the device will fail every poll and go offline */
			log_err("modbus", "%s %s: unit id %lld is reserved (use 1..247%s)", d->tag,
				dev->label, (long long)cd->unit,
				d->rtu ? "" : ", or 0 or 255 on TCP");
		dev->pts = calloc(dev->prof->n_points ? dev->prof->n_points : 1, sizeof(*dev->pts));
		if (!dev->pts)
			goto nomem;
		if (cap - n < dev->prof->n_points) {
			size_t ncap = (n + dev->prof->n_points) * 2;
			struct mb_span *ns = realloc(spans, ncap * sizeof(*ns));
			if (!ns)
				goto nomem;
			spans = ns;
			cap = ncap;
		}
		for (size_t p = 0; p < dev->prof->n_points; p++) {
			const struct cfg_point *pt = &dev->prof->points[p];
			const struct mb_format fmt = modbus_point_format(pt), *f = &fmt;
			struct mb_span s;
			const char *why = NULL;

			s = modbus_point_span(cd, (uint32_t)i, (uint32_t)p, pt);

			if (pt->mqtt || mbd_check_format(f, pt->table, &why) < 0 ||
			    mbp_check_span(&s, &why) < 0) {
				/* the configuration checks this; never poll what cannot be decoded */
				log_err("modbus", "%s %s: point %s cannot be polled: %s", d->tag,
					dev->label, pt->name, why ? why : "not a Modbus point");
				continue;
			}
			spans[n++] = s;
		}
	}
	*spans_out = spans;
	*n_out = n;
	return 0;
nomem:
	free(spans);
	return -ENOMEM;
}

static int mb_open(const struct driver_env *env, struct driver **out)
{
	const struct cfg_bus *bus;
	const struct modbus_bus_opts *mo;
	struct driver *d = NULL;
	struct mb_span *spans = NULL;
	size_t nspans = 0;
	sigset_t all, old;
	pthread_attr_t attr;
	int r;

	*out = NULL;
	if (!env || !env->cfg || !env->queue || env->bus >= env->cfg->n_buses)
		return -EINVAL;
	bus = &env->cfg->buses[env->bus];
	mo = modbus_opts(bus);
	if (!mo)
		return -EINVAL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->wake_fd = -1;
	r = -pthread_mutex_init(&d->lock, NULL);
	if (r) {
		free(d);
		return r;
	}
	d->cfg = env->cfg;
	d->bus = bus;
	d->mo = mo;
	d->q = env->queue;
	d->rtu = modbus_transport(bus) == MB_SERIAL;
	d->started_us = mono_us();
	d->silence_us = line_silence_us(bus);
	d->backoff = MB_RECONNECT_MIN_MS;
	d->cur_unit = d->cur_timeout = -1;
	snprintf(d->tag, sizeof(d->tag), "[%s]", bus->name);
	atomic_init(&d->stop, false);
	atomic_init(&d->pending, 0);

	r = build_devices(d, env->bus, &spans, &nspans);
	if (r < 0)
		goto fail;
	r = mbp_build(spans, nspans, &d->plan);
	if (r < 0)
		goto fail;
	update_ranges(d);

	if (d->rtu) {
		char parity = mo->parity == 1 ? 'E' : mo->parity == 2 ? 'O' : 'N';
		d->ctx = modbus_new_rtu(mo->device, (int)mo->baud, parity, (int)mo->data_bits,
					(int)mo->stop_bits);
	} else if (modbus_transport(bus) == MB_RTU_TCP) {
		d->link = rtu_link_new(mo->host, (int)mo->port);
		if (!d->link) {
			r = -ENOMEM;
			goto fail;
		}
		rtu_link_set_heartbeat(d->link, mo->heartbeat, mo->heartbeat_len);
	} else {
		char port[16];
		snprintf(port, sizeof(port), "%lld", (long long)mo->port);
		d->ctx = modbus_new_tcp_pi(mo->host, port);
	}
	if (!d->ctx && !d->link) {
		int e = errno;
		r = e == ENOMEM ? -ENOMEM : -EINVAL;
		log_err("modbus", "%s cannot set up the %s bus: %s", d->tag, d->rtu ? "RTU" : "TCP",
			modbus_strerror(e));
		goto fail;
	}
	if (d->ctx && mo->byte_timeout_ms > 0)
		modbus_set_byte_timeout(d->ctx, (uint32_t)(mo->byte_timeout_ms / 1000),
					(uint32_t)(mo->byte_timeout_ms % 1000) * 1000);
	d->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->wake_fd < 0) {
		r = -errno;
		goto fail;
	}
	if (d->link && mo->listen) {
		r = dtu_attach(mo->listen, mo->reg_id, mo->reg_len, d->wake_fd, &d->dtu);
		if (r < 0) {
			log_err("modbus", "%s cannot listen for the DTU on %s: %s", d->tag,
				mo->listen, strerror(-r));
			goto fail;
		}
	}

	/* The worker takes no signals: the core loop handles them. */
	r = -pthread_attr_init(&attr);
	if (r)
		goto fail;
	pthread_attr_setstacksize(&attr, MB_STACK_SIZE);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&d->thread, &attr, worker, d);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (r)
		goto fail;
	d->thread_started = true;
	free(spans);
	*out = d;
	return 0;

fail:
	free(spans);
	mb_free(d);
	return r;
}

static int mb_write(struct driver *d, uint32_t device, uint32_t point, const struct cgw_value *v,
		    uint64_t token)
{
	const struct mb_dev *dev;
	const struct cfg_point *pt;
	struct mb_write w = {.device = device, .point = point, .token = token};
	int r;

	if (!d || !v || device >= d->cfg->n_devices || d->dev_map[device] == UINT32_MAX)
		return -EINVAL;
	dev = &d->devs[d->dev_map[device]];
	if (point >= dev->prof->n_points)
		return -EINVAL;
	pt = &dev->prof->points[point];
	if (!pt->writable || (pt->table != CGW_TBL_COIL && pt->table != CGW_TBL_HOLDING))
		return -EINVAL;
	r = cgw_value_copy(&w.v, v);
	if (r < 0)
		return r;
	pthread_mutex_lock(&d->lock);
	if (d->ring_n == MB_WRITE_QUEUE) {
		pthread_mutex_unlock(&d->lock);
		cgw_value_clear(&w.v);
		return -EBUSY;
	}
	d->ring[(d->ring_head + d->ring_n) % MB_WRITE_QUEUE] = w;
	d->ring_n++;
	atomic_fetch_add_explicit(&d->pending, 1, memory_order_release);
	pthread_mutex_unlock(&d->lock);
	wake(d);
	return 0;
}

static int mb_commission(struct driver *d, const struct driver_commission *req, uint64_t token)
{
	struct mb_write w = {.token = token, .commission = true};

	if (!d || !req || req->table < CGW_TBL_COIL || req->table > CGW_TBL_HOLDING ||
	    req->timeout_ms < 0 || req->timeout_ms > 10000)
		return -EINVAL;
	if (req->kind == DRV_PROBE &&
	    (req->unit > MB_SCAN_MAX_UNIT || req->count < 1 ||
	     req->count > (req->table >= CGW_TBL_INPUT ? MBP_MAX_REGS : MBP_MAX_BITS) ||
	     req->address + req->count > 65536))
		return -EINVAL;
	w.comm = *req;
	if (!w.comm.timeout_ms) {
		w.comm.timeout_ms = d->mo->timeout_ms > 0 ? d->mo->timeout_ms : 1000;
		if (req->kind == DRV_SCAN && w.comm.timeout_ms > 200)
			w.comm.timeout_ms = 200;
	}
	pthread_mutex_lock(&d->lock);
	if (d->ring_n == MB_WRITE_QUEUE) {
		pthread_mutex_unlock(&d->lock);
		return -EBUSY;
	}
	d->ring[(d->ring_head + d->ring_n) % MB_WRITE_QUEUE] = w;
	d->ring_n++;
	atomic_fetch_add_explicit(&d->pending, 1, memory_order_release);
	pthread_mutex_unlock(&d->lock);
	wake(d);
	return 0;
}

static int mb_status(struct driver *d, struct driver_stats *st)
{
	struct driver_dev_stats *devs;

	if (!d || !st)
		return -EINVAL;
	devs = calloc(d->n_devs ? d->n_devs : 1, sizeof(*devs));
	if (!devs)
		return -ENOMEM;
	pthread_mutex_lock(&d->lock);
	*st = d->bst;
	st->cycle_ms = 0;
	st->schedule_ms = 0;
	for (size_t i = 0; i < d->n_devs; i++) {
		devs[i] = d->devs[i].st;
		st->cycle_ms += d->devs[i].cycle_us;
		if (d->devs[i].req_n &&
		    (!st->schedule_ms || d->devs[i].cfg->poll_ms < st->schedule_ms))
			st->schedule_ms = d->devs[i].cfg->poll_ms;
	}
	pthread_mutex_unlock(&d->lock);
	st->cycle_ms /= 1000;
	st->elapsed_us = (uint64_t)(mono_us() - d->started_us);
	st->n_devices = d->n_devs;
	st->devices = devs;
	return 0;
}

const struct driver_ops modbus_driver_ops = {
	.type = "modbus",
	.open = mb_open,
	.close = mb_close,
	.write = mb_write,
	.status = mb_status,
	.commission = mb_commission,
};
