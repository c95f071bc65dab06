/*
 * test_uplink_http.c - the HTTP uplink against a real HTTP server.
 *
 * The server is libmicrohttpd on 127.0.0.1, on a port the kernel picks, in
 * this process (thread per connection, so a slow answer holds only its own
 * request). It answers by a script, one entry per request in arrival order
 * (code, Retry-After, Location, body, delay), then 200, and records every
 * request (path, headers, body, the code it answered, arrival time).
 * The uplink runs on the real core loop over a real store in a temp dir;
 * each test runs the loop until a condition holds (checked every 5 ms by a
 * loop timer) or a deadline passes, which fails the test.
 *
 * The expected signature is computed outside the code under test:
 *   echo -n '{"id":"gw-test:1","a":1}' | openssl dgst -sha256 -hmac key
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four above first */
#include <cmocka.h>

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "model.h"
#include "store.h"
#include "uplink.h"

#define GW "gw-test"
#define SIG_1 "sha256=0374ac303afd48579dfcef2f7697faaf4824804af9b2e4afd368aae0c707dede"
#define MAX_REQS 1024
#define SCRIPT_MAX 256

/* ------------------------------------------------------------ the sink */

struct answer {
	unsigned code; /* 0: 200 */
	const char *retry_after;
	const char *location;
	const char *body; /* NULL: "ok" */
	size_t body_len;  /* 0: strlen(body) */
	int delay_ms;
};

struct seen {
	char path[64];
	char method[8];
	char ctype[64];
	char sig[128];
	char *body;
	size_t len;
	unsigned code;
	int64_t t_ms;
};

struct sink {
	struct MHD_Daemon *d;
	unsigned port;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stopping;
	struct answer script[SCRIPT_MAX];
	size_t n_script;
	int delay_ms; /* for every request */
	struct seen reqs[MAX_REQS];
	size_t n;
};

struct upload {
	char *buf;
	size_t len;
};

static void hdr(struct MHD_Connection *c, const char *name, char *out, size_t len)
{
	const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
	snprintf(out, len, "%s", v ? v : "");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *data,
				  size_t *size, void **con_cls)
{
	struct sink *s = cls;
	struct upload *up = *con_cls;
	struct answer a = {0};
	struct MHD_Response *resp;
	enum MHD_Result ret;

	(void)version;
	if (!up) {
		*con_cls = up = calloc(1, sizeof(*up));
		return up ? MHD_YES : MHD_NO;
	}
	if (*size) {
		char *nb = realloc(up->buf, up->len + *size + 1);
		if (!nb)
			return MHD_NO;
		memcpy(nb + up->len, data, *size);
		up->buf = nb;
		up->len += *size;
		up->buf[up->len] = '\0';
		*size = 0;
		return MHD_YES;
	}

	pthread_mutex_lock(&s->mu);
	size_t idx = s->n;
	if (idx < s->n_script)
		a = s->script[idx];
	if (!a.code)
		a.code = 200;
	if (!a.delay_ms)
		a.delay_ms = s->delay_ms;
	if (idx < MAX_REQS) {
		struct seen *r = &s->reqs[idx];
		snprintf(r->path, sizeof(r->path), "%s", url);
		snprintf(r->method, sizeof(r->method), "%s", method);
		hdr(c, "Content-Type", r->ctype, sizeof(r->ctype));
		hdr(c, "X-CGW-Signature", r->sig, sizeof(r->sig));
		r->body = up->buf ? strdup(up->buf) : strdup("");
		r->len = up->len;
		r->code = a.code;
		r->t_ms = cgw_mono_ms();
		s->n++;
	}
	if (a.delay_ms > 0) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += a.delay_ms / 1000;
		until.tv_nsec += (long)(a.delay_ms % 1000) * 1000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		while (!s->stopping && pthread_cond_timedwait(&s->cv, &s->mu, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&s->mu);

	const char *body = a.body ? a.body : "ok";
	size_t blen = a.body_len ? a.body_len : strlen(body);
	resp = MHD_create_response_from_buffer(blen, (void *)(uintptr_t)body,
					       MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	if (a.retry_after)
		MHD_add_response_header(resp, "Retry-After", a.retry_after);
	if (a.location)
		MHD_add_response_header(resp, "Location", a.location);
	ret = MHD_queue_response(c, a.code, resp);
	MHD_destroy_response(resp);
	return ret;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct upload *up = *con_cls;

	(void)cls;
	(void)c;
	(void)toe;
	if (up) {
		free(up->buf);
		free(up);
		*con_cls = NULL;
	}
}

/* Plain HTTP, or HTTPS when key and cert (PEM text) are given. */
static void sink_start(struct sink *s, const char *key, const char *cert)
{
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_port = 0,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION;

	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->stopping = false;
	s->n = 0;
	if (key)
		s->d = MHD_start_daemon(flags | MHD_USE_TLS, 0, NULL, NULL, on_request, s,
					MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_NOTIFY_COMPLETED,
					on_completed, s, MHD_OPTION_CONNECTION_TIMEOUT, 30u,
					MHD_OPTION_HTTPS_MEM_KEY, key, MHD_OPTION_HTTPS_MEM_CERT,
					cert, MHD_OPTION_END);
	else
		s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR,
					&sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
					MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
	assert_non_null(s->d);
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
	assert_non_null(di);
	s->port = di->port;
	assert_true(s->port > 0);
}

static void sink_stop(struct sink *s)
{
	if (!s->d)
		return;
	pthread_mutex_lock(&s->mu);
	s->stopping = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	MHD_stop_daemon(s->d);
	s->d = NULL;
	for (size_t i = 0; i < s->n && i < MAX_REQS; i++)
		free(s->reqs[i].body);
	s->n = 0;
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
}

static size_t sink_count(struct sink *s)
{
	pthread_mutex_lock(&s->mu);
	size_t n = s->n;
	pthread_mutex_unlock(&s->mu);
	return n;
}

/* ------------------------------------------------------------ fixture */

struct fx {
	char dir[64];
	char path[96];
	char keypath[128];
	char url[128];
	char host[16];
	char ca[128];
	char *tls_key, *tls_cert;
	char gw_id[16], gw_site[16], up_name[16];
	struct store *st;
	int64_t uid;
	struct loop *loop;
	struct cgw_config gcfg;
	struct cfg_uplink ucfg;
	struct sink sink;
	struct uplink *u;
	struct loop_timer *check, *deadline;
	bool (*until)(struct fx *f);
	void (*hook)(struct fx *f); /* called at every check */
	bool timed_out;
	/* test_alarm_overtakes_backlog */
	uint64_t alarm_seq;
	size_t seen_at_alarm;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char err[256];

	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "/tmp/cgw-http-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/store.db", f->dir);
	snprintf(f->keypath, sizeof(f->keypath), "%s/hmac.key", f->dir);
	struct store_opts o = {.rng_seed = 42};
	assert_int_equal(store_open(&f->st, f->path, &o, err, sizeof(err)), 0);
	assert_int_equal(loop_new(&f->loop), 0);
	sink_start(&f->sink, NULL, NULL);

	snprintf(f->gw_id, sizeof(f->gw_id), GW);
	snprintf(f->gw_site, sizeof(f->gw_site), "site");
	snprintf(f->up_name, sizeof(f->up_name), "duty");
	snprintf(f->host, sizeof(f->host), "127.0.0.1");
	snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u/hook", f->sink.port);
	f->gcfg.gateway.id = f->gw_id;
	f->gcfg.gateway.site = f->gw_site;
	f->ucfg.name = f->up_name;
	f->ucfg.type = CFG_UPLINK_HTTP;
	f->ucfg.url = f->url;
	f->ucfg.host = f->host;
	f->ucfg.port = f->sink.port;
	f->ucfg.send_mask = 1u << CGW_LANE_ALARM;
	f->ucfg.timeout_ms = 5000;
	f->ucfg.late_after_ms = 30000;
	f->ucfg.inflight = 100;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char p[160];
	static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};

	if (f->u)
		uplink_http_ops.close(f->u);
	loop_timer_free(f->check);
	loop_timer_free(f->deadline);
	sink_stop(&f->sink);
	store_close(f->st);
	loop_free(f->loop);
	for (size_t i = 0; i < 4; i++) {
		snprintf(p, sizeof(p), "%s%s", f->path, sfx[i]);
		unlink(p);
	}
	unlink(f->keypath);
	snprintf(p, sizeof(p), "%s/tls.key", f->dir);
	unlink(p);
	unlink(f->ca);
	free(f->tls_key);
	free(f->tls_cert);
	rmdir(f->dir);
	free(f);
	return 0;
}

static void open_uplink(struct fx *f, unsigned store_lanes)
{
	assert_int_equal(store_uplink_register(f->st, "duty", store_lanes, &f->uid), 0);
	assert_int_equal(uplink_http_ops.open(&(struct uplink_env){.loop = f->loop,
								   .store = f->st,
								   .cfg = &f->gcfg},
					      &f->ucfg, f->uid, &f->u),
			 0);
	assert_non_null(f->u);
}

static uint64_t put(struct fx *f, enum cgw_lane lane, const char *device, const char *payload,
		    int64_t ts_ms)
{
	char topic[96];
	uint64_t seq = 0;

	snprintf(topic, sizeof(topic), "device/%s/%s", device ? device : "gw", cgw_lane_name(lane));
	struct store_msg m = {.lane = lane,
			      .device = device,
			      .topic = topic,
			      .ts_ms = ts_ms,
			      .payload = payload};
	assert_int_equal(store_enqueue(f->st, &m, cgw_mono_ms(), &seq, NULL), 0);
	assert_int_equal(store_flush(f->st), 0); /* only alarms commit at once */
	assert_true(seq > 0);
	return seq;
}

static uint64_t depth(struct fx *f, int lane)
{
	struct store_stats st;
	uint64_t d = 0;

	assert_int_equal(store_stats(f->st, &st), 0);
	for (size_t i = 0; i < st.n_uplinks; i++)
		if (st.uplink[i].id == f->uid)
			for (int l = 0; l < CGW_LANE_COUNT; l++)
				if (lane < 0 || l == lane)
					d += st.uplink[i].lane[l].depth;
	return d;
}

static struct uplink_status status(struct fx *f)
{
	struct uplink_status st;
	uplink_http_ops.status(f->u, &st);
	return st;
}

static bool idle(struct fx *f)
{
	struct uplink_status st = status(f);
	for (int l = 0; l < CGW_LANE_COUNT; l++)
		if (st.inflight[l])
			return false;
	return true;
}

static bool all_delivered(struct fx *f)
{
	return idle(f) && depth(f, -1) == 0;
}

static void on_check(struct loop *l, struct loop_timer *t, void *arg)
{
	struct fx *f = arg;

	if (f->hook)
		f->hook(f);
	if (f->until(f))
		loop_stop(l);
	else
		loop_timer_in(t, 5);
}

static void on_deadline(struct loop *l, struct loop_timer *t, void *arg)
{
	struct fx *f = arg;

	(void)t;
	f->timed_out = true;
	loop_stop(l);
}

/* Runs the loop until `until` holds; fails the test after max_ms. */
static void run(struct fx *f, bool (*until)(struct fx *f), int64_t max_ms)
{
	if (!f->check) {
		f->check = loop_timer_new(f->loop, on_check, f);
		f->deadline = loop_timer_new(f->loop, on_deadline, f);
	}
	f->until = until;
	f->timed_out = false;
	uplink_http_ops.kick(f->u);
	loop_timer_in(f->check, 0);
	loop_timer_in(f->deadline, max_ms);
	assert_int_equal(loop_run(f->loop), 0);
	loop_timer_at(f->check, -1);
	loop_timer_at(f->deadline, -1);
	if (f->timed_out)
		fail_msg("condition not reached within %lld ms (%zu requests seen)",
			 (long long)max_ms, sink_count(&f->sink));
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
	assert_int_equal(chmod(path, mode), 0);
}

/* ---- a second connection to the store file ---- */

static int64_t peek_int(struct fx *f, const char *sql)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int64_t v = -1;

	assert_int_equal(store_flush(f->st), 0);
	assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

static void peek_text(struct fx *f, const char *sql, char *buf, size_t len)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;

	buf[0] = '\0';
	assert_int_equal(store_flush(f->st), 0);
	assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
		snprintf(buf, len, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	sqlite3_close(db);
}

/* ---- what the uplink logs (to stderr) ---- */

static int capture_begin(struct fx *f, char *path, size_t len)
{
	int saved;

	snprintf(path, len, "%s/stderr.log", f->dir);
	fflush(stderr);
	saved = dup(2);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(saved >= 0 && fd >= 0);
	dup2(fd, 2);
	close(fd);
	return saved;
}

/* Restores stderr, echoes what was logged, and counts lines containing `what`. */
static int capture_end(int saved, const char *path, const char *what)
{
	char line[1024];
	int n = 0;

	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	while (fgets(line, sizeof(line), fp)) {
		fputs(line, stderr);
		n += strstr(line, what) != NULL;
	}
	fclose(fp);
	unlink(path);
	return n;
}

static uint64_t body_seq(const char *body)
{
	const char *p = strstr(body, "\"id\":\"" GW ":");
	assert_non_null(p);
	return strtoull(p + strlen("\"id\":\"" GW ":"), NULL, 10);
}

/* ------------------------------------------------------------ tests */

static bool one_request_done(struct fx *f)
{
	return sink_count(&f->sink) >= 1 && idle(f) && status(f).sent >= 1;
}

static void test_post_signed(void **state)
{
	struct fx *f = *state;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	char hex[2 * EVP_MAX_MD_SIZE + 8];

	write_file(f->keypath, "key\n", 0600);
	f->ucfg.hmac_secret_file = f->keypath;
	open_uplink(f, 1u << CGW_LANE_ALARM);
	assert_int_equal(put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms()), 1);
	run(f, all_delivered, 10000);

	assert_int_equal(f->sink.n, 1);
	struct seen *r = &f->sink.reqs[0];
	assert_string_equal(r->method, "POST");
	assert_string_equal(r->path, "/hook");
	assert_string_equal(r->ctype, "application/json");
	assert_string_equal(r->body, "{\"id\":\"gw-test:1\",\"a\":1}");
	/* the key is "key": the newline was trimmed */
	assert_string_equal(r->sig, SIG_1);
	HMAC(EVP_sha256(), "key", 3, (const unsigned char *)r->body, r->len, md, &mdlen);
	assert_int_equal(mdlen, 32);
	snprintf(hex, sizeof(hex), "sha256=");
	for (unsigned i = 0; i < mdlen; i++)
		snprintf(hex + 7 + 2 * i, 3, "%02x", md[i]);
	assert_string_equal(r->sig, hex);

	struct uplink_status st = status(f);
	assert_string_equal(st.type, "http");
	assert_true(st.connected);
	assert_int_equal(st.sent, 1);
	assert_int_equal(st.acked, 1);
	assert_int_equal(st.retried, 0);
	assert_int_equal(st.rejected, 0);
}

static void test_no_secret_no_signature(void **state)
{
	struct fx *f = *state;

	open_uplink(f, 1u << CGW_LANE_ALARM);
	/* produced long ago: marked delayed */
	put(f, CGW_LANE_ALARM, NULL, "{\"a\":2}", cgw_now_ms() - 60000);
	run(f, all_delivered, 10000);
	assert_int_equal(f->sink.n, 1);
	assert_string_equal(f->sink.reqs[0].sig, "");
	assert_string_equal(f->sink.reqs[0].body,
			    "{\"id\":\"gw-test:1\",\"a\":2,\"delayed\":true}");
}

static void test_secret_file_checked(void **state)
{
	struct fx *f = *state;
	struct uplink *u = (struct uplink *)1;
	struct uplink_env env = {.loop = f->loop, .store = f->st, .cfg = &f->gcfg};

	assert_int_equal(store_uplink_register(f->st, "duty", 1, &f->uid), 0);
	f->ucfg.hmac_secret_file = f->keypath;
	write_file(f->keypath, "key\n", 0660);
	assert_int_equal(uplink_http_ops.open(&env, &f->ucfg, f->uid, &u), -EACCES);
	assert_null(u);
	write_file(f->keypath, "key\n", 0604);
	assert_int_equal(uplink_http_ops.open(&env, &f->ucfg, f->uid, &u), -EACCES);
	write_file(f->keypath, "\n", 0600);
	assert_int_equal(uplink_http_ops.open(&env, &f->ucfg, f->uid, &u), -EINVAL);
	unlink(f->keypath);
	assert_int_equal(uplink_http_ops.open(&env, &f->ucfg, f->uid, &u), -ENOENT);
	assert_null(u);
}

/* A 500 (with a big body, read but bounded) then 200: sent again, once. */
static void test_5xx_retried(void **state)
{
	struct fx *f = *state;
	static char big[1 << 20];

	memset(big, 'x', sizeof(big));
	f->sink.script[0] = (struct answer){.code = 500, .body = big, .body_len = sizeof(big)};
	f->sink.n_script = 1;
	open_uplink(f, 1u << CGW_LANE_ALARM);
	put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, all_delivered, 10000);

	assert_int_equal(f->sink.n, 2);
	assert_string_equal(f->sink.reqs[0].body, f->sink.reqs[1].body);
	struct uplink_status st = status(f);
	assert_true(st.connected);
	assert_int_equal(st.sent, 2);
	assert_int_equal(st.retried, 1);
	assert_int_equal(st.acked, 1);
	assert_string_equal(st.last_error, "");
	assert_int_equal(peek_int(f, "SELECT count(*) FROM dead_letter"), 0);
	assert_int_equal(peek_int(f, "SELECT count(*) FROM msg"), 0);
}

/* 408 and 429 are retried like 5xx; a 3xx is not followed and retried.
 * Three devices, so the three first attempts go in parallel and each
 * message is refused once, whichever code it meets. */
static void test_retryable_codes(void **state)
{
	struct fx *f = *state;
	char dev[32];

	f->sink.script[0] = (struct answer){.code = 408};
	f->sink.script[1] = (struct answer){.code = 429, .retry_after = "0"};
	f->sink.script[2] = (struct answer){.code = 302, .location = "/elsewhere"};
	f->sink.n_script = 3;
	open_uplink(f, 1u << CGW_LANE_ALARM);
	for (int i = 0; i < 3; i++) {
		snprintf(dev, sizeof(dev), "smoke-%d", i);
		put(f, CGW_LANE_ALARM, dev, "{\"a\":1}", cgw_now_ms());
	}
	run(f, all_delivered, 15000);

	assert_int_equal(f->sink.n, 6);
	for (size_t i = 0; i < 6; i++)
		assert_string_equal(f->sink.reqs[i].path, "/hook");
	assert_int_equal(status(f).retried, 3);
	assert_int_equal(status(f).acked, 3);
	assert_int_equal(peek_int(f, "SELECT count(*) FROM dead_letter"), 0);
}

/* Other 4xx for telemetry: dead letter with the start of the body; the next
 * one goes on. */
static void test_4xx_dead_letter(void **state)
{
	struct fx *f = *state;
	char body[400], reason[512], want[160], sql[128];

	snprintf(body, sizeof(body), "bad field \"x\"\r\n%0300d", 0);
	f->sink.script[0] = (struct answer){.code = 400, .body = body};
	/* not UTF-8, then a character cut by the 100-byte limit */
	char body2[128];
	snprintf(body2, sizeof(body2), "\xff%097d\xe4\xb8\xad\xe6\x96\x87", 0);
	f->sink.script[1] = (struct answer){.code = 404, .body = body2};
	f->sink.n_script = 2;
	f->ucfg.send_mask = 1u << CGW_LANE_TELEMETRY;
	open_uplink(f, f->ucfg.send_mask);
	char logpath[128];
	int saved = capture_begin(f, logpath, sizeof(logpath));
	uint64_t s1 = put(f, CGW_LANE_TELEMETRY, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, one_request_done, 10000);
	uint64_t s2 = put(f, CGW_LANE_TELEMETRY, "smoke-1", "{\"a\":2}", cgw_now_ms());
	uint64_t s3 = put(f, CGW_LANE_TELEMETRY, "smoke-1", "{\"a\":3}", cgw_now_ms());
	run(f, all_delivered, 10000);
	/* one episode: logged once, though a success came between */
	assert_int_equal(capture_end(saved, logpath, "refused message"), 1);

	assert_int_equal(f->sink.n, 3);
	assert_int_equal(body_seq(f->sink.reqs[2].body), s3);
	struct uplink_status st = status(f);
	assert_int_equal(st.rejected, 2);
	assert_int_equal(st.acked, 1);
	assert_int_equal(st.retried, 0);
	assert_true(st.connected);
	assert_int_equal(peek_int(f, "SELECT count(*) FROM dead_letter"), 2);
	/* control bytes blanked, 100 bytes of the body */
	snprintf(want, sizeof(want), "HTTP 400: bad field \"x\"  %0*d", 100 - 15, 0);
	snprintf(sql, sizeof(sql), "SELECT reason FROM dead_letter WHERE seq = %llu",
		 (unsigned long long)s1);
	peek_text(f, sql, reason, sizeof(reason));
	assert_string_equal(reason, want);
	snprintf(sql, sizeof(sql), "SELECT reason FROM dead_letter WHERE seq = %llu",
		 (unsigned long long)s2);
	peek_text(f, sql, reason, sizeof(reason));
	snprintf(want, sizeof(want), "HTTP 404: ?%097d", 0);
	assert_string_equal(reason, want);
}

/* A stored payload that is not an object (a bug upstream) is dead-lettered
 * without a request; the next message goes on. */
static void test_bad_payload(void **state)
{
	struct fx *f = *state;
	char reason[128];

	f->ucfg.send_mask = 1u << CGW_LANE_TELEMETRY;
	open_uplink(f, f->ucfg.send_mask);
	uint64_t bad = put(f, CGW_LANE_TELEMETRY, "smoke-1", "[1,2]", cgw_now_ms());
	uint64_t good = put(f, CGW_LANE_TELEMETRY, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, all_delivered, 10000);
	assert_int_equal(f->sink.n, 1);
	assert_int_equal(body_seq(f->sink.reqs[0].body), good);
	assert_int_equal(status(f).rejected, 1);
	peek_text(f, "SELECT seq || ' ' || reason FROM dead_letter", reason, sizeof(reason));
	char want[128];
	snprintf(want, sizeof(want), "%llu payload is not a JSON object", (unsigned long long)bad);
	assert_string_equal(reason, want);
}

/* A 4xx for an alarm or a device state (a rotated key: 401) is never a dead
 * letter: both are retried soon, counted as refused, logged once, and
 * delivered once the endpoint takes them again; telemetry refused meanwhile
 * is dead-lettered. */
static void test_4xx_alarm_kept(void **state)
{
	struct fx *f = *state;
	char logpath[128];

	for (int i = 0; i < 6; i++)
		f->sink.script[i] = (struct answer){.code = 401, .body = "key expired"};
	f->sink.n_script = 6;
	f->ucfg.send_mask = 1u << CGW_LANE_ALARM | 1u << CGW_LANE_STATUS;
	open_uplink(f, f->ucfg.send_mask);
	int saved = capture_begin(f, logpath, sizeof(logpath));
	uint64_t a = put(f, CGW_LANE_ALARM, "smoke-1", "{\"alarm\":\"smoke\"}", cgw_now_ms());
	uint64_t st = put(f, CGW_LANE_STATUS, "smoke-1", "{\"state\":\"online\"}", cgw_now_ms());
	run(f, all_delivered, 30000);
	assert_int_equal(capture_end(saved, logpath, "refused message"), 1);
	assert_int_equal(peek_int(f, "SELECT count(*) FROM dead_letter"), 0);
	struct uplink_status us = status(f);
	assert_true(us.refused >= 4);
	assert_int_equal(us.rejected, 0);
	assert_int_equal(us.acked, 2);
	/* the last two requests are the alarm and the state, accepted */
	bool got_a = false, got_st = false;
	for (size_t i = 6; i < f->sink.n; i++) {
		got_a |= body_seq(f->sink.reqs[i].body) == a;
		got_st |= body_seq(f->sink.reqs[i].body) == st;
	}
	assert_true(got_a && got_st);
}

static bool retried_once(struct fx *f)
{
	return idle(f) && status(f).retried >= 1;
}

static bool retried_twice(struct fx *f)
{
	return idle(f) && status(f).retried >= 2;
}

static int64_t next_attempt(struct fx *f)
{
	return peek_int(f, "SELECT next_attempt_ms FROM delivery");
}

static bool retried_thrice(struct fx *f)
{
	return idle(f) && status(f).retried >= 3;
}

/* Retry-After in seconds and as an HTTP-date decides the next attempt
 * (clamped by the store to STORE_RETRY_AFTER_MAX_MS). */
static void test_retry_after(void **state)
{
	struct fx *f = *state;
	char date[64];
	time_t later = time(NULL) + 1800;
	struct tm tm;

	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&later, &tm));
	f->sink.script[0] = (struct answer){.code = 429, .retry_after = "1200"};
	f->sink.script[1] = (struct answer){.code = 503, .retry_after = date};
	f->sink.script[2] = (struct answer){.code = 503, .retry_after = "86400"};
	f->sink.n_script = 3;
	open_uplink(f, 1u << CGW_LANE_ALARM);
	put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, retried_once, 10000);
	int64_t at = next_attempt(f) - cgw_now_ms();
	assert_true(at > 1200000 - 10000 && at <= 1200000);
	struct uplink_status st = status(f);
	assert_false(st.connected);
	assert_string_equal(st.last_error, "HTTP 429: ok");
	assert_int_equal(f->sink.n, 1);

	/* make it due again to see the date form */
	assert_int_equal(store_uplink_rearm(f->st, f->uid), 0);
	run(f, retried_twice, 10000);
	at = next_attempt(f) - cgw_now_ms();
	assert_true(at > 1800000 - 10000 && at <= 1800000 + 1000);
	assert_int_equal(f->sink.n, 2);

	assert_int_equal(store_uplink_rearm(f->st, f->uid), 0);
	run(f, retried_thrice, 10000);
	at = next_attempt(f) - cgw_now_ms();
	assert_true(at > STORE_RETRY_AFTER_MAX_MS - 10000 && at <= STORE_RETRY_AFTER_MAX_MS);
	assert_int_equal(f->sink.n, 3);
}

static bool n_seen_3(struct fx *f)
{
	return sink_count(&f->sink) >= 3 && all_delivered(f);
}

/* "Retry-After: 0" is obeyed once; a message refused again waits >= 1 s. */
static void test_retry_after_floor(void **state)
{
	struct fx *f = *state;

	f->sink.script[0] = (struct answer){.code = 503, .retry_after = "0"};
	f->sink.script[1] = (struct answer){.code = 503, .retry_after = "0"};
	f->sink.n_script = 2;
	open_uplink(f, 1u << CGW_LANE_ALARM);
	put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, n_seen_3, 10000);
	assert_int_equal(f->sink.n, 3);
	assert_true(f->sink.reqs[2].t_ms - f->sink.reqs[1].t_ms >= 990);
}

/* A server slower than the timeout: the request is abandoned and retried. */
static void test_timeout_retried(void **state)
{
	struct fx *f = *state;

	f->ucfg.timeout_ms = 300;
	f->sink.script[0] = (struct answer){.code = 200, .delay_ms = 10000};
	f->sink.n_script = 1;
	open_uplink(f, 1u << CGW_LANE_ALARM);
	put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, retried_once, 10000);
	assert_false(status(f).connected);
	assert_non_null(strstr(status(f).last_error, "imed out"));
	run(f, all_delivered, 10000);
	assert_int_equal(f->sink.n, 2);
	assert_int_equal(status(f).acked, 1);
	assert_true(status(f).connected);
}

/* Nothing listens: a network error is a retry; the message stays. */
static void test_connection_refused(void **state)
{
	struct fx *f = *state;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	/* a port that was free a moment ago and is not listened on */
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u/hook", ntohs(sa.sin_port));
	open_uplink(f, 1u << CGW_LANE_ALARM);
	put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, retried_once, 10000);
	close(fd);
	struct uplink_status st = status(f);
	assert_false(st.connected);
	assert_true(st.last_error[0] != '\0');
	assert_int_equal(st.acked, 0);
	assert_int_equal(depth(f, -1), 1);
	assert_int_equal(f->sink.n, 0);
}

/* Only the lanes in send_mask go out. */
static void test_send_mask(void **state)
{
	struct fx *f = *state;

	open_uplink(f, (1u << CGW_LANE_COUNT) - 1);
	put(f, CGW_LANE_TELEMETRY, "meter-1", "{\"t\":1}", cgw_now_ms());
	put(f, CGW_LANE_EVENT, "door-1", "{\"e\":1}", cgw_now_ms());
	assert_int_equal(store_flush(f->st), 0);
	put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, one_request_done, 10000);
	/* every lane was looked at in the pump that sent the alarm */
	assert_int_equal(f->sink.n, 1);
	assert_non_null(strstr(f->sink.reqs[0].body, "\"a\":1"));
	assert_int_equal(depth(f, CGW_LANE_ALARM), 0);
	assert_int_equal(depth(f, -1), 2);
}

static void enqueue_alarm_mid_backlog(struct fx *f)
{
	if (f->alarm_seq || sink_count(&f->sink) < 40)
		return;
	f->seen_at_alarm = sink_count(&f->sink);
	f->alarm_seq = put(f, CGW_LANE_ALARM, "smoke-9", "{\"fire\":true}", cgw_now_ms());
	uplink_http_ops.kick(f->u);
}

/* An alarm raised while a telemetry backlog drains does not wait for it. */
static void test_alarm_overtakes_backlog(void **state)
{
	struct fx *f = *state;
	char dev[32], pl[64];
	const int n_tele = 300;

	f->ucfg.send_mask = (1u << CGW_LANE_ALARM) | (1u << CGW_LANE_TELEMETRY);
	f->sink.delay_ms = 20;
	open_uplink(f, f->ucfg.send_mask);
	for (int i = 0; i < n_tele; i++) {
		snprintf(dev, sizeof(dev), "meter-%d", i % 30);
		snprintf(pl, sizeof(pl), "{\"t\":%d}", i);
		put(f, CGW_LANE_TELEMETRY, dev, pl, cgw_now_ms());
	}
	assert_int_equal(store_flush(f->st), 0);
	f->hook = enqueue_alarm_mid_backlog;
	run(f, all_delivered, 60000);

	assert_true(f->alarm_seq > 0);
	assert_int_equal(f->sink.n, n_tele + 1);
	size_t at = SIZE_MAX;
	for (size_t i = 0; i < f->sink.n; i++)
		if (body_seq(f->sink.reqs[i].body) == f->alarm_seq)
			at = i;
	assert_true(at != SIZE_MAX);
	/* ahead of it at most what was in flight, and what was started while
	 * its connection was being set up: two telemetry windows */
	print_message("# alarm enqueued after %zu requests, arrived as #%zu of %d\n",
		      f->seen_at_alarm, at, n_tele + 1);
	assert_true(at <= f->seen_at_alarm + 16);
	assert_true(n_tele + 1 - at > 200);
}

/* Per device, the server sees a message only after the one before it was
 * accepted, across retries; devices go in parallel; nothing is lost or sent
 * again after a 2xx. */
static void test_order_per_device(void **state)
{
	struct fx *f = *state;
	enum { NDEV = 3, NMSG = 45 };
	uint64_t seqs[NDEV][NMSG / NDEV];
	size_t next[NDEV] = {0}, failed = 0;
	char dev[32], pl[32];

	for (size_t i = 0; i < SCRIPT_MAX; i++)
		if (i % 4 == 1)
			f->sink.script[i] = (struct answer){.code = 503, .retry_after = "0"};
	f->sink.n_script = SCRIPT_MAX;
	f->ucfg.inflight = 100; /* the window is 8 */
	open_uplink(f, 1u << CGW_LANE_ALARM);
	for (int i = 0; i < NMSG; i++) {
		snprintf(dev, sizeof(dev), "smoke-%d", i % NDEV);
		snprintf(pl, sizeof(pl), "{\"n\":%d}", i);
		seqs[i % NDEV][i / NDEV] = put(f, CGW_LANE_ALARM, dev, pl, cgw_now_ms());
	}
	char logpath[128];
	int saved = capture_begin(f, logpath, sizeof(logpath));
	run(f, all_delivered, 30000);
	/* one in four fails: one episode, one line */
	assert_int_equal(capture_end(saved, logpath, "failing"), 1);

	for (size_t i = 0; i < f->sink.n; i++) {
		const struct seen *r = &f->sink.reqs[i];
		uint64_t s = body_seq(r->body);
		int d = -1;
		for (int k = 0; k < NDEV && d < 0; k++)
			for (int j = 0; j < NMSG / NDEV; j++)
				if (seqs[k][j] == s)
					d = k;
		assert_true(d >= 0);
		assert_true(next[d] < NMSG / NDEV);
		if (s != seqs[d][next[d]])
			fail_msg(
				"request %zu: seq %llu of device %d while %llu was not accepted yet",
				i, (unsigned long long)s, d, (unsigned long long)seqs[d][next[d]]);
		if (r->code == 200)
			next[d]++;
		else
			failed++;
	}
	for (int d = 0; d < NDEV; d++)
		assert_int_equal(next[d], NMSG / NDEV);
	assert_true(failed > 0);
	assert_int_equal(f->sink.n, NMSG + failed);
	assert_int_equal(status(f).acked, NMSG);
	assert_int_equal(status(f).retried, failed);
}

/* One device, a window of 8 and a failure in the middle: strictly one by
 * one, and the lane's order holds across the retry. */
static void test_order_one_device(void **state)
{
	struct fx *f = *state;
	uint64_t seqs[10];
	char pl[32];

	f->sink.script[3] = (struct answer){.code = 500};
	f->sink.n_script = 4;
	open_uplink(f, 1u << CGW_LANE_ALARM);
	for (int i = 0; i < 10; i++) {
		snprintf(pl, sizeof(pl), "{\"n\":%d}", i);
		seqs[i] = put(f, CGW_LANE_ALARM, "door-1", pl, cgw_now_ms());
	}
	run(f, all_delivered, 15000);
	assert_int_equal(f->sink.n, 11);
	for (size_t i = 0, k = 0; i < f->sink.n; i++) {
		assert_int_equal(body_seq(f->sink.reqs[i].body), seqs[k]);
		if (f->sink.reqs[i].code == 200)
			k++;
	}
	assert_int_equal(body_seq(f->sink.reqs[3].body), seqs[3]);
	assert_int_equal(body_seq(f->sink.reqs[4].body), seqs[3]);
}

static bool two_seen(struct fx *f)
{
	return sink_count(&f->sink) >= 2;
}

/* Closing with requests in flight leaves the messages in the outbox. */
static void test_close_in_flight(void **state)
{
	struct fx *f = *state;

	f->sink.delay_ms = 10000;
	open_uplink(f, 1u << CGW_LANE_ALARM);
	put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms());
	put(f, CGW_LANE_ALARM, "smoke-2", "{\"a\":2}", cgw_now_ms());
	run(f, two_seen, 10000);
	assert_int_equal(status(f).inflight[CGW_LANE_ALARM], 2);
	uplink_http_ops.close(f->u);
	f->u = NULL;
	assert_int_equal(depth(f, -1), 2);
}

/* ---- TLS ---- */

static char *slurp(const char *path)
{
	FILE *fp = fopen(path, "r");
	char *buf = calloc(1, 65536);
	size_t n;

	assert_non_null(fp);
	assert_non_null(buf);
	n = fread(buf, 1, 65535, fp);
	fclose(fp);
	assert_true(n > 0);
	return buf;
}

/* A self-signed certificate for "localhost" only (not for 127.0.0.1), made
 * by the openssl tool; the sink is restarted with it. */
static void https_sink(struct fx *f)
{
	char cmd[512], key[128];

	snprintf(key, sizeof(key), "%s/tls.key", f->dir);
	snprintf(f->ca, sizeof(f->ca), "%s/tls.pem", f->dir);
	snprintf(cmd, sizeof(cmd),
		 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
		 "-keyout %s -out %s -days 2 -subj /CN=cgw-test "
		 "-addext subjectAltName=DNS:localhost >/dev/null 2>&1",
		 key, f->ca);
	if (system(cmd) != 0)
		skip(); /* no openssl tool */
	f->tls_key = slurp(key);
	f->tls_cert = slurp(f->ca);
	sink_stop(&f->sink);
	sink_start(&f->sink, f->tls_key, f->tls_cert);
	f->ucfg.tls = true;
	f->ucfg.port = f->sink.port;
}

static void test_https_verified(void **state)
{
	struct fx *f = *state;

	https_sink(f);
	snprintf(f->url, sizeof(f->url), "https://localhost:%u/hook", f->sink.port);
	f->ucfg.ca_file = f->ca;
	open_uplink(f, 1u << CGW_LANE_ALARM);
	put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, all_delivered, 10000);
	assert_int_equal(f->sink.n, 1);
	assert_string_equal(f->sink.reqs[0].body, "{\"id\":\"gw-test:1\",\"a\":1}");
}

/* Not signed by a CA we trust: nothing is sent, the message waits. */
static void test_https_unknown_ca(void **state)
{
	struct fx *f = *state;

	https_sink(f);
	snprintf(f->url, sizeof(f->url), "https://localhost:%u/hook", f->sink.port);
	open_uplink(f, 1u << CGW_LANE_ALARM);
	put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, retried_once, 10000);
	assert_int_equal(f->sink.n, 0);
	assert_false(status(f).connected);
	assert_non_null(strstr(status(f).last_error, "certificate"));
	assert_int_equal(depth(f, -1), 1);
}

/* A trusted certificate for another name. */
static void test_https_wrong_host(void **state)
{
	struct fx *f = *state;

	https_sink(f);
	snprintf(f->url, sizeof(f->url), "https://127.0.0.1:%u/hook", f->sink.port);
	f->ucfg.ca_file = f->ca;
	open_uplink(f, 1u << CGW_LANE_ALARM);
	put(f, CGW_LANE_ALARM, "smoke-1", "{\"a\":1}", cgw_now_ms());
	run(f, retried_once, 10000);
	assert_int_equal(f->sink.n, 0);
	assert_non_null(strstr(status(f).last_error, "127.0.0.1"));
	assert_int_equal(depth(f, -1), 1);
}

/* The resolver check: names the problem without AsynchDNS, silent with it,
 * and the libcurl this is linked with has it (Debian's does: the threaded
 * resolver), so a build that lost it fails here. */
static void test_resolver_check(void **state)
{
	char why[512];
	const curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);

	(void)state;
	assert_int_equal(uplink_http_check_resolver(CURL_VERSION_SSL, "7.0-test", why, sizeof(why)),
			 -ENOTSUP);
	assert_non_null(strstr(why, "7.0-test"));
	assert_non_null(strstr(why, "AsynchDNS"));
	assert_non_null(strstr(why, "core loop"));
	assert_int_equal(uplink_http_check_resolver(CURL_VERSION_SSL | CURL_VERSION_ASYNCHDNS,
						    "7.0-test", why, sizeof(why)),
			 0);
	assert_string_equal(why, "");
	assert_non_null(cv);
	assert_int_equal(uplink_http_check_resolver(cv->features, cv->version, why, sizeof(why)),
			 0);
}

int main(void)
{
	static const char *const proxies[] = {"http_proxy",  "https_proxy", "HTTP_PROXY",
					      "HTTPS_PROXY", "all_proxy",   "ALL_PROXY"};
	for (size_t i = 0; i < sizeof(proxies) / sizeof(proxies[0]); i++)
		unsetenv(proxies[i]);
	log_setup(true, LOG_NOTICE);
	curl_global_init(CURL_GLOBAL_DEFAULT);
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_post_signed),         T(test_no_secret_no_signature),
		T(test_secret_file_checked), T(test_5xx_retried),
		T(test_retryable_codes),     T(test_4xx_dead_letter),
		T(test_retry_after),         T(test_retry_after_floor),
		T(test_timeout_retried),     T(test_connection_refused),
		T(test_send_mask),           T(test_alarm_overtakes_backlog),
		T(test_order_per_device),    T(test_order_one_device),
		T(test_close_in_flight),     T(test_https_verified),
		T(test_https_unknown_ca),    T(test_https_wrong_host),
		T(test_bad_payload),         cmocka_unit_test(test_resolver_check),
		T(test_4xx_alarm_kept),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	curl_global_cleanup();
	return rc;
}
