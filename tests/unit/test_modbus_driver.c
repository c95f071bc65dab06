/*
 * test_modbus_driver.c - the Modbus bus worker against a libmodbus TCP
 * server running in a thread of this test on a free loopback port.
 *
 * Sequencing never sleeps: the test waits (bounded) on the queue's eventfd
 * for the items it expects, or on the driver's statistics (polls done) for
 * "nothing was sent during N polls".
 */
/* cmocka.h needs these first */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
/* clang-format on */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <modbus.h>

#include "config.h"
#include "driver.h"
#include "log.h"
#include "modbus_config.h"
#include "modbus_decode.h"
#include "mqtt_ingest.h"
#include "queue.h"

#define NUNITS 10
#define LOG_MAX 512  /* request times kept per unit */
#define WAIT_MS 8000 /* generous: sanitizers and valgrind are slow */

/* ---- a small Modbus TCP server ---------------------------------------------------------- */

struct srv {
	int lfd, stop_fd[2];
	uint16_t port;
	pthread_t th;
	pthread_mutex_t lock;
	modbus_t *ctx;
	modbus_mapping_t *map[NUNITS];
	bool silent[NUNITS];
	int exc_addr[NUNITS]; /* holding address that answers exception 2, -1 none */
	bool kick;            /* drop every client connection */
	uint64_t requests[NUNITS];
	bool twice[NUNITS];              /* answer, then answer again with every register 0xBEEF */
	int delay_ms[NUNITS];            /* answer this late (the server serves others meanwhile) */
	int64_t req_ms[NUNITS][LOG_MAX]; /* monotonic ms of the first LOG_MAX requests */
	/* one delayed answer at a time */
	bool held;
	int held_fd, held_len;
	int64_t held_at;
	uint8_t held_req[MODBUS_TCP_MAX_ADU_LENGTH];
};

/* The second answer of a `twice` unit: same transaction, other values. */
static void reply_twice(struct srv *s, int unit, const uint8_t *req, int rc)
{
	modbus_mapping_t *m = s->map[unit];
	uint16_t hold[32], in[8];

	memcpy(hold, m->tab_registers, sizeof(hold));
	memcpy(in, m->tab_input_registers, sizeof(in));
	for (int i = 0; i < 32; i++)
		m->tab_registers[i] = 0xBEEF;
	for (int i = 0; i < 8; i++)
		m->tab_input_registers[i] = 0xBEEF;
	modbus_reply(s->ctx, req, rc, m);
	memcpy(m->tab_registers, hold, sizeof(hold));
	memcpy(m->tab_input_registers, in, sizeof(in));
}

static void *srv_main(void *arg)
{
	struct srv *s = arg;
	int clients[16];
	size_t nc = 0;
	uint8_t req[MODBUS_TCP_MAX_ADU_LENGTH];

	for (;;) {
		struct pollfd pfd[18];
		pfd[0] = (struct pollfd){.fd = s->stop_fd[0], .events = POLLIN};
		pfd[1] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
		for (size_t i = 0; i < nc; i++)
			pfd[2 + i] = (struct pollfd){.fd = clients[i], .events = POLLIN};
		int wait = 50;
		pthread_mutex_lock(&s->lock);
		if (s->held) {
			int64_t left = s->held_at - cgw_mono_ms();
			wait = left < 0 ? 0 : left < 50 ? (int)left : 50;
		}
		pthread_mutex_unlock(&s->lock);
		if (poll(pfd, 2 + nc, wait) < 0)
			break;
		if (pfd[0].revents)
			break;
		pthread_mutex_lock(&s->lock);
		bool kick = s->kick;
		s->kick = false;
		if (s->held && cgw_mono_ms() >= s->held_at) {
			modbus_set_socket(s->ctx, s->held_fd);
			modbus_reply(s->ctx, s->held_req, s->held_len, s->map[s->held_req[6]]);
			s->held = false;
		}
		pthread_mutex_unlock(&s->lock);
		if (kick) {
			while (nc)
				close(clients[--nc]);
			continue;
		}
		for (size_t i = nc; i-- > 0;) {
			if (!pfd[2 + i].revents)
				continue;
			modbus_set_socket(s->ctx, clients[i]);
			int rc = modbus_receive(s->ctx, req);
			if (rc < 0) {
				close(clients[i]);
				clients[i] = clients[--nc];
				continue;
			}
			if (rc == 0)
				continue;
			int unit = req[6], fc = req[7], addr = (req[8] << 8) | req[9];
			int n = (fc == 5 || fc == 6) ? 1 : (req[10] << 8) | req[11];
			pthread_mutex_lock(&s->lock);
			if (unit < NUNITS && s->map[unit]) {
				if (s->requests[unit] < LOG_MAX)
					s->req_ms[unit][s->requests[unit]] = cgw_mono_ms();
				s->requests[unit]++;
				if (s->silent[unit]) {
					/* no answer */
				} else if (s->delay_ms[unit] && !s->held) {
					s->held = true;
					s->held_fd = clients[i];
					s->held_len = rc;
					s->held_at = cgw_mono_ms() + s->delay_ms[unit];
					memcpy(s->held_req, req, (size_t)rc);
				} else if ((fc == 3 || fc == 6 || fc == 16) &&
					   s->exc_addr[unit] >= addr &&
					   s->exc_addr[unit] < addr + n) {
					modbus_reply_exception(
						s->ctx, req, MODBUS_EXCEPTION_ILLEGAL_DATA_ADDRESS);
				} else {
					modbus_reply(s->ctx, req, rc, s->map[unit]);
					if (s->twice[unit])
						reply_twice(s, unit, req, rc);
				}
			}
			pthread_mutex_unlock(&s->lock);
		}
		if ((pfd[1].revents & POLLIN) && nc < 16) {
			int c = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0)
				clients[nc++] = c;
		}
	}
	while (nc)
		close(clients[--nc]);
	return NULL;
}

static void srv_start(struct srv *s)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);

	memset(s, 0, sizeof(*s));
	s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s->lfd >= 0);
	assert_int_equal(bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0); /* port 0: free */
	assert_int_equal(listen(s->lfd, 8), 0);
	assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&sa, &len), 0);
	s->port = ntohs(sa.sin_port);
	assert_int_equal(pipe2(s->stop_fd, O_CLOEXEC), 0);
	pthread_mutex_init(&s->lock, NULL);
	s->ctx = modbus_new_tcp("127.0.0.1", s->port); /* only for framing replies */
	assert_non_null(s->ctx);
	for (int u = 1; u < NUNITS; u++) {
		s->map[u] = modbus_mapping_new(8, 8, 32, 8);
		assert_non_null(s->map[u]);
		s->exc_addr[u] = -1;
	}
	assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
}

static void srv_stop(struct srv *s)
{
	ssize_t w = write(s->stop_fd[1], "x", 1);
	(void)w;
	pthread_join(s->th, NULL);
	close(s->stop_fd[0]);
	close(s->stop_fd[1]);
	close(s->lfd);
	modbus_set_socket(s->ctx, -1);
	modbus_free(s->ctx);
	for (int u = 1; u < NUNITS; u++)
		modbus_mapping_free(s->map[u]);
	pthread_mutex_destroy(&s->lock);
}

/* ---- fixture: config, queue, driver, collected items -------------------------------------- */

struct fx {
	struct srv srv;
	char dir[64];
	struct cgw_config *cfg;
	struct queue *q;
	struct driver *drv;
	struct cgw_item *items;
	size_t n, cap;
};

static const char *const profile_tdev =
	"profile: tdev\n"
	"class: fire\n"
	"points:\n"
	"  - {name: status, table: holding, address: 0, type: uint16, enum: {0: normal, 1: alarm}}\n"
	"  - {name: temp, table: holding, address: 1, type: int16, scale: 0.1, deadband: 1.0, "
	"report_every: 1h}\n"
	"  - {name: flow, table: holding, address: 2, type: float32, order: CDAB, report_every: 200ms}\n"
	"  - {name: label, table: holding, address: 4, type: 'string:6'}\n"
	"  - {name: flag3, table: holding, address: 8, type: bits, bit: 3, writable: true}\n"
	"  - {name: setpoint, table: holding, address: 10, type: uint16, scale: 0.5, writable: true}\n"
	"  - {name: big, table: holding, address: 12, type: int32, writable: true}\n"
	"  - {name: relay, table: coil, address: 0, writable: true}\n"
	"  - {name: door, table: discrete, address: 1}\n"
	"  - {name: counter, table: input, address: 0, type: uint32}\n";

static const char *const profile_based =
	"profile: based\n"
	"class: service\n"
	"points:\n"
	"  - {name: v, table: holding, address: 1, type: uint16}\n";

enum {
	P_STATUS,
	P_TEMP,
	P_FLOW,
	P_LABEL,
	P_FLAG3,
	P_SETPOINT,
	P_BIG,
	P_RELAY,
	P_DOOR,
	P_COUNTER,
	NPOINTS
};

static void write_file(const char *dir, const char *name, const char *text)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct cfg_errors errs = {0};
	char yaml[2048];
	int r;

	assert_non_null(f);
	log_setup(true, LOG_WARNING);
	srv_start(&f->srv);
	snprintf(f->dir, sizeof(f->dir), "/tmp/cgw-mbtest.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	write_file(f->dir, "tdev.yaml", profile_tdev);
	write_file(f->dir, "based.yaml", profile_based);
	snprintf(yaml, sizeof(yaml),
		 "gateway: {id: gw-t, site: t, state_dir: %s}\n"
		 "profile_dirs: [%s]\n"
		 "buses:\n"
		 "  - {name: lan, type: modbus-tcp, host: 127.0.0.1, port: %u, timeout: 250ms,"
		 " retries: 1, offline_after: 2}\n"
		 "devices:\n"
		 "  - {id: d1, name: D1, profile: tdev, bus: lan, unit: 1, poll: 50ms}\n"
		 "  - {id: d2, name: D2, profile: tdev, bus: lan, unit: 2, poll: 50ms}\n"
		 "  - {id: d3, name: D3, profile: based, bus: lan, unit: 3, poll: 50ms,"
		 " address_base: 1}\n",
		 f->dir, f->dir, f->srv.port);
	r = config_load_string("test.yaml", yaml, strlen(yaml), &f->cfg, &errs);
	for (size_t i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.v[i]);
	cfg_errors_free(&errs);
	assert_int_equal(r, 0);
	assert_int_equal(queue_new(&f->q, 1024), 0);
	*state = f;
	return 0;
}

static void fx_open(struct fx *f)
{
	struct driver_env env = {.cfg = f->cfg, .bus = 0, .queue = f->q};
	assert_int_equal(modbus_driver_ops.open(&env, &f->drv), 0);
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	char path[128];

	modbus_driver_ops.close(f->drv);
	srv_stop(&f->srv);
	for (size_t i = 0; i < f->n; i++)
		cgw_value_clear(&f->items[i].value);
	free(f->items);
	queue_free(f->q);
	config_free(f->cfg);
	snprintf(path, sizeof(path), "%s/tdev.yaml", f->dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/based.yaml", f->dir);
	unlink(path);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* Wait up to ms for items and collect them. */
static void pump(struct fx *f, int ms)
{
	struct pollfd pfd = {.fd = queue_fd(f->q), .events = POLLIN};
	struct cgw_item batch[64];
	size_t n;

	if (poll(&pfd, 1, ms) <= 0)
		return;
	while ((n = queue_pop_batch(f->q, batch, 64)) > 0) {
		if (f->n + n > f->cap) {
			f->cap = (f->n + n) * 2;
			f->items = realloc(f->items, f->cap * sizeof(*f->items));
			assert_non_null(f->items);
		}
		memcpy(f->items + f->n, batch, n * sizeof(*batch));
		f->n += n;
	}
}

struct match {
	enum cgw_item_kind kind;
	long device, point; /* -1: any */
	int quality;        /* -1: any */
	int online;         /* -1: any */
	uint64_t token;     /* WRITE_RESULT: 0 any */
};

static bool matches(const struct cgw_item *it, const struct match *m)
{
	return it->kind == m->kind && (m->device < 0 || it->device == (uint32_t)m->device) &&
	       (m->point < 0 || it->point == (uint32_t)m->point) &&
	       (m->quality < 0 || it->quality == (enum cgw_quality)m->quality) &&
	       (m->online < 0 || it->online == (m->online != 0)) &&
	       (!m->token || it->token == m->token);
}

/* The index of the first item at or after *from that matches, waiting for
 * it up to WAIT_MS; *from moves past it. Fails the test if none comes. */
static struct cgw_item *expect(struct fx *f, size_t *from, struct match m)
{
	int64_t end = cgw_mono_ms() + WAIT_MS;

	for (;;) {
		for (size_t i = *from; i < f->n; i++) {
			if (matches(&f->items[i], &m)) {
				*from = i + 1;
				return &f->items[i];
			}
		}
		int64_t left = end - cgw_mono_ms();
		if (left <= 0)
			break;
		pump(f, (int)left);
	}
	fail_msg("no item kind %d device %ld point %ld quality %d online %d within %d ms", m.kind,
		 m.device, m.point, m.quality, m.online, WAIT_MS);
	return NULL;
}

static size_t count(struct fx *f, size_t from, struct match m)
{
	size_t n = 0;
	for (size_t i = from; i < f->n; i++)
		n += matches(&f->items[i], &m);
	return n;
}

static struct match reading(long dev, long point)
{
	return (struct match){.kind = CGW_ITEM_READING,
			      .device = dev,
			      .point = point,
			      .quality = CGW_Q_GOOD,
			      .online = -1};
}

static struct match dstate(long dev, bool online)
{
	return (struct match){.kind = CGW_ITEM_DEVICE_STATE,
			      .device = dev,
			      .point = -1,
			      .quality = -1,
			      .online = online};
}

static struct driver_dev_stats dev_stats(struct fx *f, uint32_t dev)
{
	struct driver_stats st;
	struct driver_dev_stats ds = {0};

	assert_int_equal(modbus_driver_ops.status(f->drv, &st), 0);
	for (size_t i = 0; i < st.n_devices; i++)
		if (st.devices[i].device == dev)
			ds = st.devices[i];
	free(st.devices);
	return ds;
}

/* Wait until the device has answered n more polls than now (collecting items). */
static void wait_polls(struct fx *f, uint32_t dev, uint64_t n)
{
	uint64_t target = dev_stats(f, dev).polls_done + n;
	int64_t end = cgw_mono_ms() + WAIT_MS;

	while (dev_stats(f, dev).polls_done < target) {
		assert_true(cgw_mono_ms() < end);
		pump(f, 10);
	}
	pump(f, 0);
}

/* Requests per answered poll between two snapshots, rounded: a snapshot
 * may fall inside a cycle. */
static uint64_t per_cycle(const struct driver_dev_stats *a, const struct driver_dev_stats *b)
{
	uint64_t polls = b->polls_done - a->polls_done;
	return (b->requests - a->requests + polls / 2) / polls;
}

static void set_reg(struct fx *f, int unit, int addr, uint16_t v)
{
	pthread_mutex_lock(&f->srv.lock);
	f->srv.map[unit]->tab_registers[addr] = v;
	pthread_mutex_unlock(&f->srv.lock);
}

static uint16_t get_reg(struct fx *f, int unit, int addr)
{
	pthread_mutex_lock(&f->srv.lock);
	uint16_t v = f->srv.map[unit]->tab_registers[addr];
	pthread_mutex_unlock(&f->srv.lock);
	return v;
}

static void set_float_cdab(struct fx *f, int unit, int addr, double d)
{
	struct mb_format fmt = MB_FORMAT_INIT;
	struct cgw_value v = {.type = CGW_V_DOUBLE, .d = d};
	uint16_t regs[2];
	unsigned n;

	fmt.type = CGW_T_FLOAT32;
	fmt.order = CGW_ORDER_CDAB;
	assert_int_equal(mbd_encode_regs(&fmt, &v, regs, 2, &n), 0);
	set_reg(f, unit, addr, regs[0]);
	set_reg(f, unit, addr + 1, regs[1]);
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_values_decoded(void **state)
{
	struct fx *f = *state;
	size_t at = 0;
	struct cgw_item *it;

	set_reg(f, 1, 0, 1);                       /* status alarm */
	set_reg(f, 1, 1, (uint16_t)(int16_t)-235); /* temp -23.5 */
	set_float_cdab(f, 1, 2, 123.456);
	set_reg(f, 1, 4, ('A' << 8) | 'B');
	set_reg(f, 1, 5, ('C' << 8) | 0);
	set_reg(f, 1, 8, 1u << 3);
	set_reg(f, 1, 10, 40); /* setpoint 20.0 */
	set_reg(f, 1, 12, 0xFFFF);
	set_reg(f, 1, 13, 0xFFFE); /* big -2 */
	f->srv.map[1]->tab_bits[0] = 1;
	f->srv.map[1]->tab_input_bits[1] = 1;
	f->srv.map[1]->tab_input_registers[0] = 1;
	f->srv.map[1]->tab_input_registers[1] = 4464; /* 70000 */
	f->srv.map[3]->tab_registers[0] = 77;         /* d3's address 1, base 1 */
	fx_open(f);

	it = expect(f, &at, reading(0, P_STATUS));
	assert_int_equal(it->value.type, CGW_V_UINT); /* enums go raw */
	assert_int_equal(it->value.u, 1);
	at = 0;
	it = expect(f, &at, reading(0, P_TEMP));
	assert_int_equal(it->value.type, CGW_V_DOUBLE);
	assert_true(fabs(it->value.d - -23.5) < 1e-9);
	at = 0;
	it = expect(f, &at, reading(0, P_FLOW));
	assert_true(fabs(it->value.d - 123.456) < 1e-4);
	at = 0;
	it = expect(f, &at, reading(0, P_LABEL));
	assert_int_equal(it->value.type, CGW_V_STRING);
	assert_string_equal(it->value.s, "ABC");
	at = 0;
	it = expect(f, &at, reading(0, P_FLAG3));
	assert_int_equal(it->value.type, CGW_V_BOOL);
	assert_true(it->value.b);
	at = 0;
	it = expect(f, &at, reading(0, P_SETPOINT));
	assert_true(fabs(it->value.d - 20.0) < 1e-9);
	at = 0;
	it = expect(f, &at, reading(0, P_BIG));
	assert_int_equal(it->value.i, -2);
	at = 0;
	it = expect(f, &at, reading(0, P_RELAY));
	assert_true(it->value.b);
	at = 0;
	it = expect(f, &at, reading(0, P_DOOR));
	assert_true(it->value.b);
	at = 0;
	it = expect(f, &at, reading(0, P_COUNTER));
	assert_int_equal(it->value.u, 70000);
	at = 0;
	it = expect(f, &at, reading(2, 0));
	assert_int_equal(it->value.u, 77);
	at = 0;
	expect(f, &at, dstate(0, true));
	at = 0;
	expect(f, &at, dstate(2, true));
	assert_true(it->ts_ms > 0);

	/* holding 0..13 is one read (gaps bridged), then coil, discrete, input */
	wait_polls(f, 0, 1);
	struct driver_dev_stats a = dev_stats(f, 0);
	wait_polls(f, 0, 20);
	struct driver_dev_stats b = dev_stats(f, 0);
	assert_int_equal(per_cycle(&a, &b), 4);
	assert_int_equal(b.timeouts + b.exceptions + b.crc_errors + b.conn_errors, 0);
	assert_true(b.online);
	assert_true(b.rtt_ms_avg > 0);
}

static void test_deadband_and_report_every(void **state)
{
	struct fx *f = *state;
	size_t at = 0, mark;
	struct cgw_item *it;

	set_reg(f, 1, 1, 100); /* temp 10.0, deadband 1.0 */
	set_float_cdab(f, 1, 2, 5.0);
	fx_open(f);
	it = expect(f, &at, reading(0, P_TEMP));
	assert_true(fabs(it->value.d - 10.0) < 1e-9);

	/* within the deadband: nothing during several polls */
	set_reg(f, 1, 1, 109);
	wait_polls(f, 0, 1); /* the change is in effect from the next poll */
	mark = f->n;
	wait_polls(f, 0, 5);
	assert_int_equal(count(f, mark, reading(0, P_TEMP)), 0);
	/* the deadband is against the last value sent, not the last read */
	set_reg(f, 1, 1, 111);
	at = mark;
	it = expect(f, &at, reading(0, P_TEMP));
	assert_true(fabs(it->value.d - 11.1) < 1e-9);

	/* unchanged flow is re-sent every 200 ms, not every 50 ms poll */
	at = 0;
	struct cgw_item *first = expect(f, &at, reading(0, P_FLOW));
	int64_t t0 = first->ts_ms;
	it = expect(f, &at, reading(0, P_FLOW));
	int64_t t1 = it->ts_ms;
	it = expect(f, &at, reading(0, P_FLOW));
	assert_true(fabs(it->value.d - 5.0) < 1e-9);
	assert_true(t1 - t0 >= 190);
	assert_true(it->ts_ms - t1 >= 190);
	/* unchanged status (report_every 1m) is not re-sent */
	assert_int_equal(count(f, 0, reading(0, P_STATUS)), 1);
}

static void test_offline_and_back(void **state)
{
	struct fx *f = *state;
	size_t at = 0, mark;
	struct match stale = {.kind = CGW_ITEM_READING,
			      .device = 1,
			      .point = -1,
			      .quality = CGW_Q_STALE,
			      .online = -1};

	fx_open(f);
	expect(f, &at, dstate(1, true));
	wait_polls(f, 1, 1);
	mark = f->n;
	pthread_mutex_lock(&f->srv.lock);
	f->srv.silent[2] = true;
	pthread_mutex_unlock(&f->srv.lock);

	at = mark;
	expect(f, &at, dstate(1, false));
	/* every point is stale once, with no value */
	for (long p = 0; p < NPOINTS; p++) {
		size_t a2 = mark;
		struct cgw_item *it = expect(f, &a2,
					     (struct match){.kind = CGW_ITEM_READING,
							    .device = 1,
							    .point = p,
							    .quality = CGW_Q_STALE,
							    .online = -1});
		assert_int_equal(it->value.type, CGW_V_NONE);
	}
	/* offline_after 2, retries 1: two failed cycles of two timed-out tries */
	struct driver_dev_stats ds = dev_stats(f, 1);
	assert_true(ds.timeouts >= 4);
	assert_false(ds.online);
	assert_string_equal(ds.last_error, "timeout");

	/* the other device keeps going while d2 is offline */
	wait_polls(f, 0, 3);
	/* probed, not polled every 50 ms: one try every 1 s (4 timeouts) */
	uint64_t req0 = dev_stats(f, 1).requests;
	int64_t t0 = cgw_mono_ms(), end = t0 + WAIT_MS;
	while (dev_stats(f, 1).requests == req0) {
		assert_true(cgw_mono_ms() < end);
		pump(f, 10);
	}
	wait_polls(f, 0, 2); /* the bus served d1 again: the probe is over */
	assert_int_equal(dev_stats(f, 1).requests - req0, 1);
	req0 = dev_stats(f, 1).requests;
	wait_polls(f, 0, 6);
	assert_int_equal(dev_stats(f, 1).requests, req0);
	/* and no repeated stale items */
	assert_int_equal(count(f, mark, stale), NPOINTS);
	assert_int_equal(count(f, mark, dstate(1, false)), 1);

	pthread_mutex_lock(&f->srv.lock);
	f->srv.silent[2] = false;
	f->srv.map[2]->tab_registers[0] = 1;
	pthread_mutex_unlock(&f->srv.lock);
	mark = f->n;
	at = mark;
	expect(f, &at, dstate(1, true));
	at = mark;
	struct cgw_item *it = expect(f, &at, reading(1, P_STATUS));
	assert_int_equal(it->value.u, 1);
	/* every point is sent again after the episode, unchanged or not */
	at = mark;
	expect(f, &at, reading(1, P_TEMP));
	assert_true(dev_stats(f, 1).online);
	assert_int_equal(count(f, 0, dstate(0, false)), 0);
}

/* The time of the next probe of device dev (its request count moves by one). */
static int64_t next_probe(struct fx *f, uint32_t dev)
{
	uint64_t req = dev_stats(f, dev).requests;
	int64_t end = cgw_mono_ms() + WAIT_MS;

	while (dev_stats(f, dev).requests == req) {
		assert_true(cgw_mono_ms() < end);
		pump(f, 5);
	}
	assert_int_equal(dev_stats(f, dev).requests, req + 1); /* one try: one timeout */
	return cgw_mono_ms();
}

static void set_silent(struct fx *f, int unit, bool silent)
{
	pthread_mutex_lock(&f->srv.lock);
	f->srv.silent[unit] = silent;
	pthread_mutex_unlock(&f->srv.lock);
}

/* An offline device is probed on a back-off: 4 timeouts (1 s here) after it
 * went offline, then 2 s, 4 s... later, one try each; once it answered, a
 * new episode starts from the short interval again. (The fixed interval
 * probed a dead device every second for ever.) */
static void test_offline_backoff(void **state)
{
	struct fx *f = *state;
	size_t at = 0;
	int64_t t0, t1, t2;

	fx_open(f);
	expect(f, &at, dstate(1, true));
	set_silent(f, 2, true);
	expect(f, &at, dstate(1, false));
	t0 = next_probe(f, 1);
	t1 = next_probe(f, 1);
	t2 = next_probe(f, 1);
	print_message("probe gaps %lld ms, %lld ms\n", (long long)(t1 - t0), (long long)(t2 - t1));
	/* 2 s then 4 s; probes keep a grid, so a late one shortens the next gap */
	assert_true(t1 - t0 >= 1400);
	assert_true(t2 - t1 >= 2800);
	assert_true(t2 - t1 >= t1 - t0 + 1000);

	set_silent(f, 2, false);
	int64_t end = cgw_mono_ms() + 8000 + WAIT_MS; /* the next probe is 8 s away */
	while (!count(f, at, dstate(1, true))) {
		assert_true(cgw_mono_ms() < end);
		pump(f, 50);
	}
	expect(f, &at, dstate(1, true));
	set_silent(f, 2, true);
	expect(f, &at, dstate(1, false));
	t0 = next_probe(f, 1);
	t1 = next_probe(f, 1);
	print_message("after an answer: probe gap %lld ms\n", (long long)(t1 - t0));
	assert_true(t1 - t0 < 3000); /* 2 s, not the 16 s the last episode had reached */
}

static void test_split_after_exception(void **state)
{
	struct fx *f = *state;
	size_t at = 0, mark;
	struct cgw_item *it;
	struct match bad = {.kind = CGW_ITEM_READING,
			    .device = 0,
			    .point = P_FLAG3,
			    .quality = CGW_Q_BAD,
			    .online = -1};

	f->srv.exc_addr[1] = 8; /* flag3: the device does not have register 8 */
	set_reg(f, 1, 0, 1);
	set_reg(f, 1, 12, 0);
	set_reg(f, 1, 13, 9);
	fx_open(f);

	it = expect(f, &at, bad);
	assert_int_equal(it->value.type, CGW_V_NONE);
	/* the rest of the merged read still comes through */
	at = 0;
	it = expect(f, &at, reading(0, P_STATUS));
	assert_int_equal(it->value.u, 1);
	at = 0;
	it = expect(f, &at, reading(0, P_BIG));
	assert_int_equal(it->value.i, 9);
	at = 0;
	expect(f, &at, dstate(0, true));

	/* bad once per episode; the split is kept: one exception per cycle */
	wait_polls(f, 0, 2);
	struct driver_dev_stats a = dev_stats(f, 0);
	mark = f->n;
	wait_polls(f, 0, 20);
	struct driver_dev_stats b = dev_stats(f, 0);
	assert_int_equal(count(f, 0, bad), 1);
	assert_true(b.exceptions - a.exceptions + 1 >= b.polls_done - a.polls_done);
	assert_true(b.exceptions - a.exceptions <= b.polls_done - a.polls_done + 1);
	/* holding 0..6, 8, 10, 12..13 + coil + discrete + input */
	assert_int_equal(per_cycle(&a, &b), 7);
	assert_true(b.online);
	assert_int_equal(count(f, mark,
			       (struct match){.kind = CGW_ITEM_READING,
					      .device = 0,
					      .point = P_STATUS,
					      .quality = -1,
					      .online = -1}),
			 0);

	/* the register appears: the point is good again */
	pthread_mutex_lock(&f->srv.lock);
	f->srv.exc_addr[1] = -1;
	pthread_mutex_unlock(&f->srv.lock);
	at = mark;
	expect(f, &at, reading(0, P_FLAG3));
}

static void test_writes(void **state)
{
	struct fx *f = *state;
	size_t at = 0;
	struct cgw_item *it;
	struct cgw_value v;

	set_reg(f, 1, 8, 0x8001);
	fx_open(f);
	expect(f, &at, dstate(0, true));

	v = (struct cgw_value){.type = CGW_V_DOUBLE, .d = 21.5}; /* scale 0.5 -> 43 */
	assert_int_equal(modbus_driver_ops.write(f->drv, 0, P_SETPOINT, &v, 101), 0);
	v = (struct cgw_value){.type = CGW_V_BOOL, .b = true}; /* bit 3 of 0x8001 */
	assert_int_equal(modbus_driver_ops.write(f->drv, 0, P_FLAG3, &v, 102), 0);
	v = (struct cgw_value){.type = CGW_V_INT, .i = -100000}; /* two registers: FC16 */
	assert_int_equal(modbus_driver_ops.write(f->drv, 0, P_BIG, &v, 103), 0);
	v = (struct cgw_value){.type = CGW_V_BOOL, .b = true};
	assert_int_equal(modbus_driver_ops.write(f->drv, 0, P_RELAY, &v, 104), 0);
	v = (struct cgw_value){.type = CGW_V_UINT, .u = 70000}; /* too big for uint16 */
	assert_int_equal(modbus_driver_ops.write(f->drv, 0, P_SETPOINT, &v, 105), 0);

	for (uint64_t tok = 101; tok <= 104; tok++) {
		size_t a2 = 0;
		it = expect(f, &a2,
			    (struct match){.kind = CGW_ITEM_WRITE_RESULT,
					   .device = 0,
					   .point = -1,
					   .quality = -1,
					   .online = -1,
					   .token = tok});
		assert_int_equal(it->result, 0);
		assert_int_equal(it->value.type, CGW_V_NONE);
	}
	assert_int_equal(get_reg(f, 1, 10), 43);
	assert_int_equal(get_reg(f, 1, 8), 0x8009);
	assert_int_equal((int32_t)(((uint32_t)get_reg(f, 1, 12) << 16) | get_reg(f, 1, 13)),
			 -100000);
	assert_int_equal(f->srv.map[1]->tab_bits[0], 1);
	at = 0;
	it = expect(f, &at,
		    (struct match){.kind = CGW_ITEM_WRITE_RESULT,
				   .device = 0,
				   .point = -1,
				   .quality = -1,
				   .online = -1,
				   .token = 105});
	assert_int_equal(it->result, -ERANGE);
	assert_int_equal(it->value.type, CGW_V_STRING);
	/* the new value is read back and reported */
	at = 0;
	expect(f, &at, reading(0, P_SETPOINT));
	it = expect(f, &at, reading(0, P_SETPOINT));
	assert_true(fabs(it->value.d - 21.5) < 1e-9);

	/* refused at once: not writable, not on this bus, no such point */
	v = (struct cgw_value){.type = CGW_V_UINT, .u = 1};
	assert_int_equal(modbus_driver_ops.write(f->drv, 0, P_STATUS, &v, 1), -EINVAL);
	assert_int_equal(modbus_driver_ops.write(f->drv, 0, NPOINTS, &v, 1), -EINVAL);
	assert_int_equal(modbus_driver_ops.write(f->drv, 99, 0, &v, 1), -EINVAL);
}

static void test_write_queue_full_and_close(void **state)
{
	struct fx *f = *state;
	size_t at = 0;
	int busy = 0, queued = 0;
	struct cgw_value v = {.type = CGW_V_UINT, .u = 1};

	fx_open(f);
	expect(f, &at, dstate(1, true));
	pthread_mutex_lock(&f->srv.lock);
	f->srv.silent[2] = true;
	pthread_mutex_unlock(&f->srv.lock);
	/* each write to the silent device blocks the worker 2 x 250 ms */
	for (int i = 0; i < 40; i++) {
		int r = modbus_driver_ops.write(f->drv, 1, P_SETPOINT, &v, (uint64_t)(i + 1));
		if (r == -EBUSY)
			busy++;
		else if (r == 0)
			queued++;
		else
			fail_msg("write: %d", r);
	}
	assert_true(busy > 0);
	assert_true(queued >= 32 && queued <= 35);
	at = 0;
	struct cgw_item *it = expect(f, &at,
				     (struct match){.kind = CGW_ITEM_WRITE_RESULT,
						    .device = 1,
						    .point = -1,
						    .quality = -1,
						    .online = -1,
						    .token = 1});
	assert_int_equal(it->result, -ETIMEDOUT);
	assert_string_equal(it->value.s, "timeout");

	/* close stops within the request in progress, with writes still queued */
	int64_t t0 = cgw_mono_ms();
	modbus_driver_ops.close(f->drv);
	f->drv = NULL;
	assert_true(cgw_mono_ms() - t0 < 1500);
}

static void test_reconnect(void **state)
{
	struct fx *f = *state;
	size_t at = 0;

	fx_open(f);
	expect(f, &at, dstate(0, true));
	wait_polls(f, 0, 2);
	pthread_mutex_lock(&f->srv.lock);
	f->srv.kick = true; /* the server drops the connection */
	pthread_mutex_unlock(&f->srv.lock);
	/* the worker notices, reconnects and polls again */
	int64_t end = cgw_mono_ms() + WAIT_MS;
	uint64_t conn = 0;
	while ((conn = dev_stats(f, 0).conn_errors + dev_stats(f, 1).conn_errors +
		       dev_stats(f, 2).conn_errors) == 0) {
		assert_true(cgw_mono_ms() < end);
		pump(f, 10);
	}
	wait_polls(f, 0, 3);
	struct driver_stats st;
	assert_int_equal(modbus_driver_ops.status(f->drv, &st), 0);
	assert_true(st.connected);
	assert_true(st.errors >= 1);
	assert_int_equal(st.n_devices, 3);
	free(st.devices);
	/* a dropped connection is not a device failure: nobody went offline */
	assert_int_equal(count(f, 0, dstate(0, false)), 0);
}

static void test_open_refuses(void **state)
{
	struct fx *f = *state;
	struct driver_env env = {.cfg = f->cfg, .bus = 5, .queue = f->q};
	struct driver *d = (struct driver *)1;

	assert_int_equal(modbus_driver_ops.open(&env, &d), -EINVAL);
	assert_null(d);
	modbus_driver_ops.close(NULL);
	struct cfg_bus rtu = {.kind = &modbus_rtu_bus_type}, tcp = {.kind = &modbus_tcp_bus_type},
		       rtu_tcp = {.kind = &modbus_rtu_tcp_bus_type},
		       mqtt = {.kind = &mqtt_bus_type}, none = {0};
	assert_ptr_equal(driver_ops_for(&rtu), &modbus_driver_ops);
	assert_ptr_equal(driver_ops_for(&tcp), &modbus_driver_ops);
	assert_ptr_equal(driver_ops_for(&rtu_tcp), &modbus_driver_ops);
	assert_ptr_equal(driver_ops_for(&mqtt), &mqtt_ingest_ops);
	assert_null(driver_ops_for(&none));
}

/* One cycle of a device whose points span four tables (four requests): its
 * readings carry one ts and in_cycle, and exactly one cycle end follows the
 * last of them, so the core makes one telemetry message of them. */
static void test_cycle_end(void **state)
{
	struct fx *f = *state;
	size_t at = 0, n = 0;
	int64_t ts = -1;

	fx_open(f);
	expect(f, &at,
	       (struct match){.kind = CGW_ITEM_CYCLE_END,
			      .device = 0,
			      .point = -1,
			      .quality = -1,
			      .online = -1});
	for (size_t i = 0; i + 1 < at; i++) {
		const struct cgw_item *it = &f->items[i];
		if (it->device != 0)
			continue;
		assert_int_not_equal(it->kind, CGW_ITEM_CYCLE_END);
		if (it->kind != CGW_ITEM_READING)
			continue;
		assert_true(it->in_cycle);
		if (ts < 0)
			ts = it->ts_ms;
		assert_true(it->ts_ms == ts); /* one time for the cycle */
		n++;
	}
	assert_int_equal(n, 10); /* the first cycle reports every point, of every table */
	/* later cycles: one end per cycle that reported something, never more */
	wait_polls(f, 0, 5);
	size_t ends = count(f, 0,
			    (struct match){.kind = CGW_ITEM_CYCLE_END,
					   .device = 0,
					   .point = -1,
					   .quality = -1,
					   .online = -1});
	assert_true(ends >= 2); /* flow: report_every 200ms */
	assert_true(ends <= dev_stats(f, 0).polls_done + 1);
}

/* Replace the fixture's configuration: n devices of `profile` polled every
 * poll_ms on one Modbus TCP bus (units 1..n, ids d1..dn). */
static void fx_config(struct fx *f, const char *bus_opts, int n, const char *profile, int poll_ms)
{
	struct cfg_errors errs = {0};
	char yaml[4096];
	int len, r;

	config_free(f->cfg);
	f->cfg = NULL;
	len = snprintf(yaml, sizeof(yaml),
		       "gateway: {id: gw-t, site: t, state_dir: %s}\n"
		       "profile_dirs: [%s]\n"
		       "buses:\n"
		       "  - {name: lan, type: modbus-tcp, host: 127.0.0.1, port: %u, %s}\n"
		       "devices:\n",
		       f->dir, f->dir, f->srv.port, bus_opts);
	for (int u = 1; u <= n; u++)
		len += snprintf(yaml + len, sizeof(yaml) - (size_t)len,
				"  - {id: d%d, name: D%d, profile: %s, bus: lan, unit: %d, "
				"poll: %dms}\n",
				u, u, profile, u, poll_ms);
	assert_true(len < (int)sizeof(yaml));
	r = config_load_string("test.yaml", yaml, strlen(yaml), &f->cfg, &errs);
	for (size_t i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.v[i]);
	cfg_errors_free(&errs);
	assert_int_equal(r, 0);
}

/* A unit that answers twice: the second answer (same transaction, every
 * register 0xBEEF) arrives behind the first, and nothing is flushed before
 * the next request any more. It is counted as stale bytes, never taken as
 * data (no reading carries 0xBEEF), and costs neither that unit nor its
 * neighbour a failed request. */
static void test_stale_answer_not_data(void **state)
{
	struct fx *f = *state;
	struct driver_stats st;
	size_t at = 0;

	for (int u = 1; u <= 2; u++) {
		set_reg(f, u, 10, 20); /* setpoint 10.0 */
		set_reg(f, u, 12, 0);  /* big 0 */
		set_reg(f, u, 13, 0);
	}
	pthread_mutex_lock(&f->srv.lock);
	f->srv.twice[1] = true;
	pthread_mutex_unlock(&f->srv.lock);
	fx_open(f);
	expect(f, &at, dstate(0, true));
	expect(f, &at, dstate(1, true));
	wait_polls(f, 0, 20);
	wait_polls(f, 1, 20);

	assert_int_equal(modbus_driver_ops.status(f->drv, &st), 0);
	free(st.devices);
	assert_true(st.stale_bytes > 0);
	for (uint32_t dev = 0; dev < 2; dev++) {
		struct driver_dev_stats ds = dev_stats(f, dev);
		assert_int_equal(ds.timeouts + ds.crc_errors + ds.exceptions + ds.conn_errors, 0);
		assert_true(ds.online);
	}
	assert_int_equal(count(f, 0, dstate(0, false)), 0);
	for (size_t i = 0; i < f->n; i++) {
		const struct cgw_item *it = &f->items[i];
		if (it->kind != CGW_ITEM_READING || it->device > 1)
			continue;
		if (it->point == P_SETPOINT)
			assert_true(it->quality == CGW_Q_GOOD && fabs(it->value.d - 10.0) < 1e-9);
		if (it->point == P_BIG)
			assert_true(it->quality == CGW_Q_GOOD && it->value.i == 0);
		if (it->point == P_STATUS)
			assert_true(it->value.u != 0xBEEF);
	}
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

/* 8 devices at 400 ms on Modbus TCP: the stagger puts them two to a slot
 * 100 ms apart, so the worker wakes about 4 times a poll, not 8 (requests
 * more than 40 ms apart count as separate wake-ups; the old even stagger
 * had them 50 ms apart), and every device stays on its own fixed grid:
 * request k of a unit comes at its first one + k polls, late by at most a
 * loaded machine's jitter, early by at most the grouping window. */
static void test_grouped_wakeups(void **state)
{
	enum { N = 8, P = 400 };
	struct fx *f = *state;
	int64_t all[N * LOG_MAX], first = 0, last = INT64_MAX;
	size_t n_all = 0, bursts = 0;
	uint64_t k_max = LOG_MAX;

	fx_config(f, "timeout: 250ms", N, "based", P);
	fx_open(f);
	wait_polls(f, N - 1, 8);
	pthread_mutex_lock(&f->srv.lock);
	for (int u = 1; u <= N; u++)
		if (f->srv.requests[u] < k_max)
			k_max = f->srv.requests[u];
	for (int u = 1; u <= N; u++) {
		const int64_t *t = f->srv.req_ms[u];
		int64_t lo = INT64_MAX, hi = INT64_MIN;
		/* the grid: t[k] - k * P stays put (from the second request on) */
		for (uint64_t k = 1; k < k_max; k++) {
			int64_t off = t[k] - (int64_t)k * P;
			lo = off < lo ? off : lo;
			hi = off > hi ? off : hi;
			if (k + 1 < k_max)
				assert_true(t[k + 1] - t[k] <= P + 150);
		}
		if (hi - lo > 150)
			fail_msg("unit %d drifts off its grid: %lld ms", u, (long long)(hi - lo));
		first = t[1] > first ? t[1] : first;
		last = t[k_max - 1] < last ? t[k_max - 1] : last;
	}
	for (int u = 1; u <= N; u++)
		for (uint64_t k = 1; k < k_max; k++)
			if (f->srv.req_ms[u][k] >= first && f->srv.req_ms[u][k] <= last)
				all[n_all++] = f->srv.req_ms[u][k];
	pthread_mutex_unlock(&f->srv.lock);
	assert_true(k_max >= 8 && last - first >= 3 * P);
	qsort(all, n_all, sizeof(all[0]), cmp_i64);
	for (size_t i = 0; i < n_all; i++)
		bursts += i == 0 || all[i] - all[i - 1] > 40;
	/* 4 a poll when grouped, 8 when not; a margin for the ends */
	if ((int64_t)bursts * P > 5 * (last - first) + 2 * P)
		fail_msg("%zu wake-ups for %zu requests in %lld ms (polls of %d ms)", bursts, n_all,
			 (long long)(last - first), P);
}

/* Items held for one hand-over wait at most a few ms: a unit that answers
 * 700 ms late, polled in the same wake-up right after another, does not
 * hold that one's new value back for its answer. */
static void test_slow_answer_does_not_hold(void **state)
{
	struct fx *f = *state;
	int64_t t0, t_req = 0, t_recv = 0;
	size_t at = 0;

	fx_config(f, "timeout: 1s, retries: 0", 3, "based", 100);
	pthread_mutex_lock(&f->srv.lock);
	f->srv.delay_ms[2] = 700;
	pthread_mutex_unlock(&f->srv.lock);
	fx_open(f);
	expect(f, &at, dstate(0, true));
	expect(f, &at, dstate(1, true));
	t0 = cgw_mono_ms();
	set_reg(f, 1, 1, 4242);
	for (int64_t end = t0 + WAIT_MS; !t_recv && cgw_mono_ms() < end;) {
		pump(f, 10);
		for (size_t i = at; i < f->n && !t_recv; i++) {
			const struct cgw_item *it = &f->items[i];
			if (it->kind == CGW_ITEM_READING && it->device == 0 &&
			    it->value.type == CGW_V_UINT && it->value.u == 4242)
				t_recv = cgw_mono_ms();
		}
		at = f->n;
	}
	assert_true(t_recv > 0);
	pthread_mutex_lock(&f->srv.lock);
	for (uint64_t k = 0; k < f->srv.requests[1] && k < LOG_MAX && !t_req; k++)
		if (f->srv.req_ms[1][k] >= t0)
			t_req = f->srv.req_ms[1][k];
	pthread_mutex_unlock(&f->srv.lock);
	assert_true(t_req > 0);
	if (t_recv - t_req >= 300)
		fail_msg("the reading took %lld ms from its request to the consumer",
			 (long long)(t_recv - t_req));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_values_decoded, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_deadband_and_report_every, fx_setup,
						fx_teardown),
		cmocka_unit_test_setup_teardown(test_offline_and_back, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_offline_backoff, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_split_after_exception, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_writes, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_write_queue_full_and_close, fx_setup,
						fx_teardown),
		cmocka_unit_test_setup_teardown(test_reconnect, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_open_refuses, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_cycle_end, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_stale_answer_not_data, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_grouped_wakeups, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_slow_answer_does_not_hold, fx_setup,
						fx_teardown),
	};
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests_name("modbus_driver", tests, NULL, NULL);
}
