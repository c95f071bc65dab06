/*
 * test_rtu_link.c - the RTU-over-TCP link against a peer on a socketpair:
 * a DTU's heartbeat is cut out of the stream even when TCP delivers it in
 * two pieces (before a request, or while the request waits for its
 * answer), and an answer that merely ends like a heartbeat starts is taken
 * at once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dtu_listen.h"
#include "rtu_frame.h"
#include "rtu_link.h"

#define MAX_PARTS 4

/* After the request arrives, the peer sends each part, pausing between. */
struct peer {
	int fd;
	const uint8_t *part[MAX_PARTS];
	size_t len[MAX_PARTS];
	int pause_ms;
};

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *peer_main(void *arg)
{
	struct peer *p = arg;
	struct pollfd pfd = {.fd = p->fd, .events = POLLIN};
	uint8_t req[64];

	if (poll(&pfd, 1, 5000) <= 0 || recv(p->fd, req, sizeof(req), 0) <= 0)
		return NULL;
	for (int i = 0; i < MAX_PARTS && p->part[i]; i++) {
		if (i)
			sleep_ms(p->pause_ms); /* separate reads on the other side */
		if (send(p->fd, p->part[i], p->len[i], MSG_NOSIGNAL) != (ssize_t)p->len[i])
			break;
	}
	return NULL;
}

/* Answer of unit 1 to a read of one holding register: 0x1234. */
static size_t answer(uint8_t *a)
{
	uint16_t crc;

	a[0] = 1;
	a[1] = RTU_FN_READ_HOLDING;
	a[2] = 2;
	a[3] = 0x12;
	a[4] = 0x34;
	crc = rtu_crc16(a, 5);
	a[5] = (uint8_t)(crc & 0xFF);
	a[6] = (uint8_t)(crc >> 8);
	return 7;
}

struct fx {
	int sv[2];
	struct rtu_link *l;
	uint8_t frame[16];
	int flen;
	struct rtu_req req;
};

static void fx_init(struct fx *f, const uint8_t *hb, size_t hb_n)
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, f->sv), 0);
	f->l = rtu_link_new("", 0);
	assert_non_null(f->l);
	rtu_link_adopt(f->l, f->sv[0], NULL, 0);
	assert_int_equal(rtu_link_set_heartbeat(f->l, hb, hb_n), 0);
	f->flen = rtu_build_read(f->frame, sizeof(f->frame), 1, RTU_FN_READ_HOLDING, 0, 1, &f->req);
	assert_true(f->flen > 0);
}

static int fx_transact(struct fx *f, struct peer *p, int64_t timeout_ms, int64_t *took_ms)
{
	pthread_t th;
	uint8_t data[8];
	size_t len = 0;
	int64_t t0;
	int e;

	p->fd = f->sv[1];
	assert_int_equal(pthread_create(&th, NULL, peer_main, p), 0);
	t0 = mono_ms();
	e = rtu_link_transact(f->l, f->frame, (size_t)f->flen, &f->req, data, sizeof(data), &len,
			      timeout_ms);
	if (took_ms)
		*took_ms = mono_ms() - t0;
	pthread_join(th, NULL);
	if (!e) {
		assert_int_equal(len, 2);
		assert_int_equal(data[0], 0x12);
		assert_int_equal(data[1], 0x34);
	}
	return e;
}

static void fx_free(struct fx *f)
{
	rtu_link_free(f->l); /* closes sv[0] */
	close(f->sv[1]);
}

static const uint8_t PING[] = {'P', 'I', 'N', 'G'};

/* the heartbeat comes in two reads while the request waits */
static void test_heartbeat_split_in_wait(void **state)
{
	struct fx f;
	uint8_t a[8];
	size_t an = answer(a);
	struct peer p = {.part = {PING, PING + 2, a}, .len = {2, 2, an}, .pause_ms = 50};
	struct rtu_link_counters c;

	(void)state;
	fx_init(&f, PING, sizeof(PING));
	assert_int_equal(fx_transact(&f, &p, 2000, NULL), 0);
	rtu_link_counters(f.l, &c);
	assert_int_equal(c.heartbeats, 1);
	assert_int_equal(c.garbage_bytes, 0);
	assert_int_equal(c.foreign, 0);
	fx_free(&f);
}

/* its first half arrives between two requests (the flush before the next
 * request must not throw it away), the second half after the request */
static void test_heartbeat_split_across_request(void **state)
{
	struct fx f;
	uint8_t a[8];
	size_t an = answer(a);
	struct peer p = {.part = {PING + 1, a}, .len = {3, an}, .pause_ms = 50};
	struct rtu_link_counters c;

	(void)state;
	fx_init(&f, PING, sizeof(PING));
	assert_int_equal(send(f.sv[1], PING, 1, 0), 1);
	sleep_ms(20);
	assert_int_equal(fx_transact(&f, &p, 2000, NULL), 0);
	rtu_link_counters(f.l, &c);
	assert_int_equal(c.heartbeats, 1);
	assert_int_equal(c.garbage_bytes, 0);
	assert_int_equal(c.stale_bytes, 0);
	fx_free(&f);
}

/* a whole heartbeat between requests is a heartbeat too, not a stale answer */
static void test_heartbeat_between_requests(void **state)
{
	struct fx f;
	uint8_t a[8];
	size_t an = answer(a);
	struct peer p = {.part = {a}, .len = {an}};
	struct rtu_link_counters c;

	(void)state;
	fx_init(&f, PING, sizeof(PING));
	assert_int_equal(send(f.sv[1], PING, sizeof(PING), 0), (ssize_t)sizeof(PING));
	sleep_ms(20);
	assert_int_equal(fx_transact(&f, &p, 2000, NULL), 0);
	rtu_link_counters(f.l, &c);
	assert_int_equal(c.heartbeats, 1);
	assert_int_equal(c.stale_bytes, 0);
	fx_free(&f);
}

/* an answer whose last byte is how the heartbeat starts is no heartbeat:
 * taken at once, not held until the timeout */
static void test_answer_ending_like_heartbeat(void **state)
{
	struct fx f;
	uint8_t a[8], hb[3];
	size_t an = answer(a);
	struct peer p = {.part = {a}, .len = {an}};
	int64_t took;

	(void)state;
	hb[0] = a[an - 1];
	hb[1] = hb[2] = 0xEE;
	fx_init(&f, hb, sizeof(hb));
	assert_int_equal(fx_transact(&f, &p, 3000, &took), 0);
	assert_true(took < 1500);
	fx_free(&f);
}

/* a heartbeat split in two and nothing else: the request times out, and the
 * heartbeat is still a heartbeat */
static void test_heartbeat_only(void **state)
{
	struct fx f;
	struct peer p = {.part = {PING, PING + 3}, .len = {3, 1}, .pause_ms = 50};
	struct rtu_link_counters c;

	(void)state;
	fx_init(&f, PING, sizeof(PING));
	assert_int_equal(fx_transact(&f, &p, 300, NULL), ETIMEDOUT);
	rtu_link_counters(f.l, &c);
	assert_int_equal(c.heartbeats, 1);
	assert_int_equal(c.garbage_bytes, 0);
	fx_free(&f);
}

/* A DTU that registers and starts its heartbeat in the same TCP segment:
 * the acceptor hands the bytes after the registration on with the
 * connection, and the link completes the heartbeat with what follows. */
static void test_dtu_registration_then_heartbeat(void **state)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	static const uint8_t hello[] = {'I', 'M', 'E', 'I', '-', '1', 'P', 'I'};
	struct pollfd pfd;
	struct dtu_slot *slot = NULL;
	uint8_t rest[DTU_REST_MAX], a[8];
	size_t rest_n = 0, an = answer(a);
	struct peer p = {.part = {PING + 2, a}, .len = {2, an}, .pause_ms = 50};
	struct rtu_link_counters c;
	char listen[64];
	struct fx f;
	int s, wake, fd;

	(void)state;
	/* a free port */
	s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s >= 0);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(s, (struct sockaddr *)&sa, &sl), 0);
	close(s);
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
	wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	assert_true(wake >= 0);
	assert_int_equal(dtu_attach(listen, hello, 6, wake, &slot), 0);

	s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(send(s, hello, sizeof(hello), 0), (ssize_t)sizeof(hello));
	pfd = (struct pollfd){.fd = wake, .events = POLLIN};
	assert_int_equal(poll(&pfd, 1, 5000), 1);
	fd = dtu_take(slot, rest, &rest_n);
	assert_true(fd >= 0);
	assert_int_equal(rest_n, 2);
	assert_memory_equal(rest, "PI", 2);

	f.sv[0] = fd;
	f.sv[1] = s;
	f.l = rtu_link_new("", 0);
	assert_non_null(f.l);
	assert_int_equal(rtu_link_set_heartbeat(f.l, PING, sizeof(PING)), 0);
	rtu_link_adopt(f.l, fd, rest, rest_n);
	f.flen = rtu_build_read(f.frame, sizeof(f.frame), 1, RTU_FN_READ_HOLDING, 0, 1, &f.req);
	assert_int_equal(fx_transact(&f, &p, 2000, NULL), 0);
	rtu_link_counters(f.l, &c);
	assert_int_equal(c.heartbeats, 1);
	assert_int_equal(c.garbage_bytes, 0);
	assert_int_equal(c.stale_bytes, 0);
	fx_free(&f);
	dtu_detach(slot);
	close(wake);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_heartbeat_split_in_wait),
		cmocka_unit_test(test_heartbeat_split_across_request),
		cmocka_unit_test(test_heartbeat_between_requests),
		cmocka_unit_test(test_answer_ending_like_heartbeat),
		cmocka_unit_test(test_heartbeat_only),
		cmocka_unit_test(test_dtu_registration_then_heartbeat),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
