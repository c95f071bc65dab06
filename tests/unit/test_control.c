/*
 * Unit tests of the control socket (a real core on a loop, in-process; the
 * test's client sockets are watched by the same loop) and of the metrics
 * listen address parser.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "control.h"
#include "core.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

#define MAX_PEERS 20

struct peer {
	int fd;
	char buf[256 * 1024];
	size_t len;
	bool eof;
};

struct fx {
	char dir[64];
	char sock[128];
	struct loop *loop;
	struct core *core;
	struct control *ctl;
	struct loop_timer *deadline;
	bool timed_out;
	struct peer *waiting; /* the peer whose lines we wait for */
	size_t want_lines;
	struct peer peers[MAX_PEERS];
};

/* ---- metrics_parse_listen ------------------------------------------------------- */

static void test_listen_parse(void **state)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
	socklen_t len;

	(void)state;
	assert_int_equal(metrics_parse_listen("127.0.0.1:9273", &ss, &len), 0);
	assert_int_equal(ss.ss_family, AF_INET);
	assert_int_equal(len, sizeof(*a4));
	assert_int_equal(ntohs(a4->sin_port), 9273);
	assert_int_equal(ntohl(a4->sin_addr.s_addr), 0x7f000001);
	assert_int_equal(metrics_parse_listen("[::1]:80", &ss, &len), 0);
	assert_int_equal(ss.ss_family, AF_INET6);
	assert_int_equal(len, sizeof(*a6));
	assert_int_equal(ntohs(a6->sin6_port), 80);
	assert_true(IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr));
	assert_int_equal(metrics_parse_listen("[::]:65535", &ss, &len), 0);
	assert_int_equal(metrics_parse_listen(":9273", &ss, &len), 0);
	assert_int_equal(a4->sin_addr.s_addr, htonl(INADDR_ANY));
	assert_int_equal(metrics_parse_listen("0.0.0.0:1", &ss, &len), 0);

	static const char *const bad[] = {
		"",
		"9273",
		"127.0.0.1",
		"127.0.0.1:",
		"127.0.0.1:0",
		"127.0.0.1:65536",
		"127.0.0.1:-1",
		"127.0.0.1:80x",
		"localhost:9273",
		"::1:9273",
		"[::1]",
		"[::1:9273",
		"::1]:9273",
		"[127.0.0.1]:80",
		"1.2.3:80",
		"[]:80",
		"127.0.0.1: 80",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (metrics_parse_listen(bad[i], &ss, &len) != -EINVAL)
			fail_msg("'%s' was accepted", bad[i]);
	}
	assert_int_equal(metrics_parse_listen(NULL, &ss, &len), -EINVAL);
}

/* ---- a core with its control socket ------------------------------------------------ */

static void on_deadline(struct loop *l, struct loop_timer *t, void *arg)
{
	struct fx *f = arg;

	(void)t;
	f->timed_out = true;
	loop_stop(l);
}

static size_t count_lines(const struct peer *p)
{
	size_t n = 0;

	for (size_t i = 0; i < p->len; i++)
		n += p->buf[i] == '\n';
	return n;
}

static void on_peer(struct loop *l, int fd, uint32_t events, void *arg)
{
	struct fx *f = arg;
	struct peer *p = NULL;

	(void)events;
	for (size_t i = 0; i < MAX_PEERS; i++)
		if (f->peers[i].fd == fd)
			p = &f->peers[i];
	assert_non_null(p);
	for (;;) {
		ssize_t n = read(fd, p->buf + p->len, sizeof(p->buf) - 1 - p->len);
		if (n > 0) {
			p->len += (size_t)n;
			p->buf[p->len] = '\0';
			continue;
		}
		if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			p->eof = true;
			loop_del_fd(l, fd);
		}
		break;
	}
	if (p == f->waiting && (p->eof || count_lines(p) >= f->want_lines))
		loop_stop(l);
}

/* Runs the loop until the peer has `lines` lines (or is closed), or ms. */
static void run(struct fx *f, struct peer *p, size_t lines, int64_t ms)
{
	f->waiting = p;
	f->want_lines = lines;
	f->timed_out = false;
	loop_timer_in(f->deadline, ms);
	if (!p || p->eof || count_lines(p) < lines)
		assert_int_equal(loop_run(f->loop), 0);
	loop_timer_at(f->deadline, -1);
}

static struct peer *peer_connect(struct fx *f)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct peer *p = NULL;

	for (size_t i = 0; i < MAX_PEERS && !p; i++)
		if (f->peers[i].fd < 0)
			p = &f->peers[i];
	assert_non_null(p);
	p->len = 0;
	p->eof = false;
	p->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(p->fd >= 0);
	assert_true(strlen(f->sock) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, f->sock, strlen(f->sock) + 1);
	/* the listen backlog takes it before the loop accepts */
	assert_int_equal(connect(p->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	fcntl(p->fd, F_SETFL, O_NONBLOCK);
	assert_int_equal(loop_add_fd(f->loop, p->fd, EPOLLIN, on_peer, f), 0);
	return p;
}

static void peer_send(struct peer *p, const char *s, size_t n)
{
	assert_int_equal(write(p->fd, s, n), (ssize_t)n);
}

static void peer_close(struct fx *f, struct peer *p)
{
	if (!p->eof)
		loop_del_fd(f->loop, p->fd);
	close(p->fd);
	p->fd = -1;
}

/* The n-th (0-based) line the peer got. */
static const char *line(struct peer *p, size_t n, char *out, size_t len)
{
	const char *s = p->buf;

	for (; n && s; n--) {
		s = strchr(s, '\n');
		if (s)
			s++;
	}
	assert_non_null(s);
	const char *e = strchr(s, '\n');
	assert_non_null(e);
	snprintf(out, len, "%.*s", (int)(e - s), s);
	return out;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct cfg_errors errs = {0};
	struct cgw_config *cfg = NULL;
	char yaml[512];

	assert_non_null(f);
	for (size_t i = 0; i < MAX_PEERS; i++)
		f->peers[i].fd = -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/cgw-test-control.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->sock, sizeof(f->sock), "%s/cgwd.sock", f->dir);
	/* an uplink to a port nobody listens on: it only retries */
	snprintf(yaml, sizeof(yaml),
		 "gateway: {id: gw-unit, site: s, state_dir: %s}\n"
		 "control: {socket: %s}\n"
		 "metrics: {enabled: false}\n"
		 "uplinks:\n"
		 "  - {name: platform, type: mqtt, url: \"mqtt://127.0.0.1:1\"}\n",
		 f->dir, f->sock);
	if (config_load_string("test.yaml", yaml, strlen(yaml), &cfg, &errs) < 0) {
		for (size_t i = 0; i < errs.n; i++)
			print_error("%s\n", errs.v[i]);
		fail();
	}
	assert_int_equal(loop_new(&f->loop), 0);
	f->deadline = loop_timer_new(f->loop, on_deadline, f);
	assert_int_equal(core_new(cfg, f->loop, &f->core), 0);
	assert_int_equal(control_open(f->core, f->loop, core_config(f->core), &f->ctl), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char path[256];

	for (size_t i = 0; i < MAX_PEERS; i++)
		if (f->peers[i].fd >= 0)
			peer_close(f, &f->peers[i]);
	control_close(f->ctl);
	core_free(f->core);
	loop_timer_free(f->deadline);
	loop_free(f->loop);
	/* the store's files, the socket if a test left one */
	static const char *const files[] = {"cgw.db", "cgw.db-wal", "cgw.db-shm", "cgwd.sock",
					    "other"};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", f->dir, files[i]);
		unlink(path);
	}
	rmdir(f->dir);
	free(f);
	return 0;
}

/* ---- the tests ------------------------------------------------------------------- */

static void test_socket_mode(void **state)
{
	struct fx *f = *state;
	struct stat st;

	assert_int_equal(stat(f->sock, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0660);
	/* closing removes it */
	control_close(f->ctl);
	f->ctl = NULL;
	assert_int_equal(stat(f->sock, &st), -1);
}

static void test_pipelined_in_order(void **state)
{
	struct fx *f = *state;
	struct peer *p = peer_connect(f);
	static const char req[] =
		"{\"cmd\":\"queue\"}\n{\"cmd\":\"alarms\"}\n{\"cmd\":\"nope\"}\r\n"
		"\n{\"cmd\":\"devices\"}\n";
	char l[4096];

	peer_send(p, req, sizeof(req) - 1);
	run(f, p, 4, 5000);
	assert_false(f->timed_out);
	assert_int_equal(count_lines(p), 4); /* the empty line gets no answer */
	assert_non_null(strstr(line(p, 0, l, sizeof(l)),
			       "\"result\":\"ok\",\"queue\":[{\"uplink\":\"platform\""));
	assert_string_equal(line(p, 1, l, sizeof(l)), "{\"result\":\"ok\",\"alarms\":[]}");
	assert_non_null(strstr(line(p, 2, l, sizeof(l)),
			       "\"result\":\"rejected\",\"detail\":\"unknown cmd"));
	assert_string_equal(line(p, 3, l, sizeof(l)), "{\"result\":\"ok\",\"devices\":[]}");
}

static void test_split_request(void **state)
{
	struct fx *f = *state;
	struct peer *p = peer_connect(f);
	char l[65536];

	peer_send(p, "{\"cmd\":\"sta", 11);
	run(f, p, 1, 200);
	assert_true(f->timed_out); /* half a line: nothing yet */
	assert_int_equal(p->len, 0);
	peer_send(p, "tus\"}\n", 6);
	run(f, p, 1, 5000);
	assert_false(f->timed_out);
	line(p, 0, l, sizeof(l));
	assert_non_null(strstr(l, "{\"result\":\"ok\",\"status\":{\"gateway\":\"gw-unit\""));
	assert_non_null(strstr(l, "\"config_hash\":"));
}

static void test_bad_requests(void **state)
{
	struct fx *f = *state;
	struct peer *p = peer_connect(f);
	static const char req[] =
		"[1,2]\n"
		"{\"cmd\":5}\n"
		"{\"cmd\":\"status\",\"cmd\":\"alarms\"}\n"
		"{\"cmd\":\"ack\"}\n"
		"{\"cmd\":\"ack\",\"alarm\":\"smoke\"}\n"
		"{\"cmd\":\"ack\",\"alarm\":\"nodev/smoke\"}\n"
		"{\"cmd\":\"read\",\"device\":\"nodev\",\"point\":\"x\"}\n"
		"{\"cmd\":\"read\",\"device\":\"nodev\"}\n"
		"{\"cmd\":\"write\",\"device\":\"nodev\",\"point\":\"x\"}\n"
		"{\"cmd\":\"write\",\"device\":\"nodev\",\"point\":\"x\",\"value\":1}\n"
		"{\"cmd\":\"shelve\"}\n"
		"{\"cmd\":\"unshelve\",\"device\":\"nodev\"}\n";
	static const char *const want[] = {
		"{\"result\":\"rejected\",\"detail\":\"a request is a JSON object with \\\"cmd\\\"\"}",
		"{\"result\":\"rejected\",\"detail\":\"a request is a JSON object with \\\"cmd\\\"\"}",
		NULL, /* duplicate key: not JSON we take */
		"{\"result\":\"rejected\",\"detail\":\"ack needs \\\"alarm\\\": an alarm id or DEVICE/RULE\"}",
		"{\"result\":\"rejected\",\"detail\":\"no such active alarm 'smoke'\"}",
		"{\"result\":\"rejected\",\"detail\":\"no such active alarm 'nodev/smoke' (no device 'nodev')\"}",
		"{\"result\":\"rejected\",\"detail\":\"no such device 'nodev'\"}",
		"{\"result\":\"rejected\",\"detail\":\"read needs \\\"device\\\" and \\\"point\\\"\"}",
		"{\"result\":\"rejected\",\"detail\":\"write needs \\\"value\\\"\"}",
		"{\"result\":\"rejected\",\"detail\":\"no such device 'nodev'\"}",
		"{\"result\":\"rejected\",\"detail\":\"shelve needs \\\"device\\\"\"}",
		"{\"result\":\"rejected\",\"detail\":\"no such device 'nodev'\"}",
	};
	size_t n = sizeof(want) / sizeof(want[0]);
	char l[1024];

	peer_send(p, req, sizeof(req) - 1);
	run(f, p, n, 5000);
	assert_false(f->timed_out);
	assert_int_equal(count_lines(p), n);
	for (size_t i = 0; i < n; i++) {
		line(p, i, l, sizeof(l));
		if (want[i])
			assert_string_equal(l, want[i]);
		else
			assert_non_null(
				strstr(l, "{\"result\":\"rejected\",\"detail\":\"not JSON: "));
	}
}

static void test_oversized_request(void **state)
{
	struct fx *f = *state;
	struct peer *p = peer_connect(f);
	size_t n = 70 * 1024, off = 0;
	char *big = malloc(n);
	char l[256];

	assert_non_null(big);
	memset(big, 'x', n);
	/* the socket buffer may not take it all at once: feed it as read */
	while (off < n) {
		ssize_t w = write(p->fd, big + off, n - off);
		if (w > 0)
			off += (size_t)w;
		else
			run(f, p, 1, 50);
		if (p->eof)
			break;
	}
	free(big);
	run(f, p, 1, 5000);
	assert_false(f->timed_out);
	assert_string_equal(
		line(p, 0, l, sizeof(l)),
		"{\"result\":\"rejected\",\"detail\":\"request line longer than 64 KiB\"}");
	/* and the connection is closed */
	run(f, p, 2, 5000);
	assert_true(p->eof);
}

static void test_last_line_without_newline(void **state)
{
	struct fx *f = *state;
	struct peer *p = peer_connect(f);
	char l[256];

	peer_send(p, "{\"cmd\":\"alarms\"}", 16);
	shutdown(p->fd, SHUT_WR);
	run(f, p, 1, 5000);
	assert_false(f->timed_out);
	assert_string_equal(line(p, 0, l, sizeof(l)), "{\"result\":\"ok\",\"alarms\":[]}");
	run(f, p, 2, 5000);
	assert_true(p->eof); /* closed once answered */
}

static void test_client_limit(void **state)
{
	struct fx *f = *state;
	struct peer *p[17];
	char l[256];

	for (size_t i = 0; i < 16; i++) {
		p[i] = peer_connect(f);
		peer_send(p[i], "{\"cmd\":\"alarms\"}\n", 17);
		run(f, p[i], 1, 5000);
		assert_false(f->timed_out);
	}
	p[16] = peer_connect(f);
	run(f, p[16], 1, 5000);
	assert_false(f->timed_out);
	assert_string_equal(
		line(p[16], 0, l, sizeof(l)),
		"{\"result\":\"rejected\",\"detail\":\"too many cgwctl clients; try again\"}");
	run(f, p[16], 2, 5000);
	assert_true(p[16]->eof);
	peer_close(f, p[16]);
	/* one leaves: there is room again */
	peer_close(f, p[0]);
	run(f, NULL, 0, 100);
	p[0] = peer_connect(f);
	peer_send(p[0], "{\"cmd\":\"alarms\"}\n", 17);
	run(f, p[0], 1, 5000);
	assert_string_equal(line(p[0], 0, l, sizeof(l)), "{\"result\":\"ok\",\"alarms\":[]}");
}

static void test_stale_and_live_socket(void **state)
{
	struct fx *f = *state;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct control *other = NULL;
	struct cgw_config cfg2;
	char other_path[160];
	int fd, r;

	/* a second control on the live socket is refused, and leaves it alone */
	cfg2 = *core_config(f->core);
	assert_int_equal(control_open(f->core, f->loop, &cfg2, &other), -EADDRINUSE);
	assert_null(other);
	struct peer *p = peer_connect(f);
	peer_send(p, "{\"cmd\":\"alarms\"}\n", 17);
	run(f, p, 1, 5000);
	assert_false(f->timed_out);

	/* a socket nobody listens on (a cgwd that died) is replaced */
	snprintf(other_path, sizeof(other_path), "%s/other", f->dir);
	assert_true(strlen(other_path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, other_path, strlen(other_path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	cfg2.control.socket = other_path;
	assert_int_equal(control_open(f->core, f->loop, &cfg2, &other), 0);
	control_close(other);
	other = NULL;

	/* a file that is not a socket is not touched */
	fd = open(other_path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	close(fd);
	r = control_open(f->core, f->loop, &cfg2, &other);
	assert_int_equal(r, -EEXIST);
	assert_int_equal(access(other_path, F_OK), 0);

	/* an unknown group is refused before anything is made */
	unlink(other_path);
	cfg2.control.group = "no-such-group-cgw";
	assert_int_equal(control_open(f->core, f->loop, &cfg2, &other), -ENOENT);
	assert_int_equal(access(other_path, F_OK), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_listen_parse),
		cmocka_unit_test_setup_teardown(test_socket_mode, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pipelined_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_split_request, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
		cmocka_unit_test_setup_teardown(test_oversized_request, setup, teardown),
		cmocka_unit_test_setup_teardown(test_last_line_without_newline, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale_and_live_socket, setup, teardown),
	};
	int r;

	log_setup(true, LOG_CRIT); /* the failures tested here are logged as errors */
	mosquitto_lib_init();
	r = cmocka_run_group_tests(tests, NULL, NULL);
	mosquitto_lib_cleanup();
	return r;
}
