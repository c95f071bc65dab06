/*
 * uplink_http.c - HTTP delivery to the platform: one POST per outbox message
 * (libcurl multi interface, on the core loop: curl's sockets are watched by
 * the loop's epoll and curl's timeout is one loop timer; no thread, no
 * blocking call). libcurl's global state is made on the first HTTP uplink
 * (http_global_init()); main's curl_global_cleanup() at exit undoes it.
 *
 * Request: POST url, Content-Type: application/json, the body as rendered by
 * wire_render() ("id" first, "delayed" when late), and when a secret is
 * configured X-CGW-Signature: sha256=<lowercase hex HMAC-SHA256 of the body>
 * (OpenSSL libcrypto). Redirects are not followed; TLS peers and host names
 * are always verified; at most RESP_KEEP bytes of a response body are kept.
 *
 * Outcome, from the status line when one arrived, else from curl:
 *   2xx                          STORE_ACK_OK
 *   408, 429, 5xx, 1xx/3xx,
 *   network error or timeout     STORE_ACK_RETRY (Retry-After honoured on 429/503)
 *   other 4xx, alarm or status   STORE_ACK_RETRY after REFUSED_RETRY_MS..MAX: an
 *                                alarm or a device state is never a dead letter
 *                                (a 401 from a rotated key must not lose a fire
 *                                alarm); counted as `refused`
 *   other 4xx, event, telemetry  STORE_ACK_ERROR: dead letter "HTTP 400: <body>"
 *                                (`cgwctl dead-letters replay` sends it again)
 * A 3xx is retried rather than dead-lettered: the message was not refused,
 * the URL is wrong, and the operator's fix should not find the alarms gone.
 * "Retry-After: 0" is obeyed once per message; after that a retry waits at
 * least RETRY_AFTER_FLOOR_MS, so a server cannot talk us into a hot loop.
 * status().connected: the last answer was 2xx (true before any request); a
 * RETRY makes it false, a 4xx refusal leaves it as it was.
 *
 * Order and concurrency. Each lane has its own window of
 * min(inflight, HTTP_WINDOW_MAX) requests and the alarm lane is filled first,
 * so an alarm never waits for a telemetry slot. Concurrent requests travel
 * on separate connections and may reach the server in any order, so at most
 * one request per (lane, device) is in flight: per device, the server sees a
 * message only after the previous one was answered, which is the order the
 * spec promises. A lane is dispatched in seq order and stops at the first
 * message whose device is busy (the cursor cannot pass a message not sent),
 * so a burst from many devices goes out in parallel, one device's backlog
 * one by one. After a RETRY of seq S the lane sends nothing new until its
 * in-flight requests are answered, then its cursor goes back to S - 1;
 * store_fetch() stops at the first row not due, so S goes first again, once
 * its backoff has passed. Later messages of other devices may have been
 * delivered meanwhile: order across devices is not kept, as with any retry.
 *
 * Backed-off rows become due with no event to say so: a 1 s tick re-pumps.
 *
 * Episodes, not messages, are logged (daemon/episode.h): once when requests
 * start failing (with the reason and the backlog), at most once a minute
 * while they go on, and once when they succeed again (how long, how many
 * messages got through since, how many are queued); the same for a server
 * that refuses messages (4xx), with how many it refused, retried and
 * dead-lettered. An episode ends HTTP_QUIET_MS after its trouble was last
 * seen, so a server that fails every few requests makes two lines, not two
 * per failure; the status (connected, last_error) follows every request.
 * Logs name host:port, never the URL (it may carry a token) nor the key.
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "episode.h"
#include "log.h"
#include "secret.h"
#include "uplink.h"
#include "wire.h"

#define HTTP_WINDOW_MAX 8         /* requests in flight per lane */
#define RESP_KEEP 4096            /* bytes of a response body kept */
#define REASON_BODY_MAX 100       /* bytes of it quoted in a dead letter */
#define KEY_MAX 4096              /* bytes of HMAC key */
#define TICK_MS 1000              /* re-pump for rows whose backoff ended */
#define RETRY_AFTER_FLOOR_MS 1000 /* a message retried again waits at least this */
#define HTTP_QUIET_MS 30000       /* an episode ends after this long without its trouble */
#define REFUSED_RETRY_MS 1000     /* a refused alarm or state: first retry after about */
#define REFUSED_RETRY_MAX_MS 5000 /* and at most: it must go out soon after the fix */

struct req {
	struct req *next; /* the lane's in-flight list */
	CURL *easy;
	struct curl_slist *headers;
	char *body;
	char *device; /* NULL for gateway-level messages */
	uint64_t seq;
	uint32_t attempts; /* failed attempts before this one */
	uint8_t lane;
	size_t resp_len;
	char resp[RESP_KEEP];
	char errbuf[CURL_ERROR_SIZE];
};

struct lane {
	uint64_t cursor;    /* highest seq dispatched */
	uint64_t rewind_to; /* cursor to restore once the lane is idle */
	bool rewinding;
	unsigned inflight;
	struct req *reqs;
};

/* A socket curl asked us to watch. */
struct sock {
	int fd;
	struct sock *next;
};

struct uplink {
	struct uplink_env env;
	const struct cfg_uplink *cfg;
	int64_t store_id;
	CURLM *multi;
	struct loop_timer *curl_timer; /* curl's own timeout */
	struct loop_timer *tick;
	struct sock *socks;
	unsigned budget;
	bool closing;
	struct episode bad_payload;
	struct lane lane[CGW_LANE_COUNT];
	unsigned char *key;
	size_t key_len;
	/* health */
	bool connected; /* last request answered (2xx), or none yet */
	int64_t since_ms;
	struct episode failing;              /* requests fail (RETRY) */
	struct episode refusing;             /* the server refuses messages (4xx) */
	int64_t ok_since_ms;                 /* first 2xx since the last failure, 0 none */
	uint64_t acked_at_fail;              /* u->acked when the failing episode began */
	uint64_t refused_kept, refused_dead; /* of the refusing episode */
	uint64_t sent, acked, retried, rejected, refused;
	char last_error[128];
	struct store_item items[HTTP_WINDOW_MAX];
};

static void pump(struct uplink *u);

/* ------------------------------------------------------------ helpers */

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 if invalid
 * (overlong, surrogate, beyond U+10FFFF, or cut short). */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	size_t len;
	uint32_t cp;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		len = 2;
		cp = p[0] & 0x1f;
	} else if ((p[0] & 0xf0) == 0xe0) {
		len = 3;
		cp = p[0] & 0x0f;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		len = 4;
		cp = p[0] & 0x07;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
	    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return len;
}

/* Up to `max` bytes of a server's response made safe for a log line, a TEXT
 * column and a JSON status: control bytes become spaces, bytes that are not
 * UTF-8 become '?', and a character cut at the end is dropped. */
static void snip(char *out, size_t outlen, const char *in, size_t inlen, size_t max)
{
	size_t n = inlen < max ? inlen : max, k = 0;

	if (n >= outlen)
		n = outlen - 1;
	if (n < inlen) {
		size_t i = n;
		/* back up over continuation bytes to the lead byte, then drop the
		 * sequence if it does not fit whole */
		while (i > 0 && ((unsigned char)in[i] & 0xc0) == 0x80)
			i--;
		n = i;
	}
	for (size_t i = 0; i < n;) {
		const unsigned char *c = (const unsigned char *)in + i;
		size_t l = utf8_len(c, n - i);
		if (l == 0) {
			out[k++] = '?';
			i++;
		} else if (l == 1) {
			out[k++] = (*c < 0x20 || *c == 0x7f) ? ' ' : (char)*c;
			i++;
		} else {
			memcpy(out + k, c, l);
			k += l;
			i += l;
		}
	}
	while (k > 0 && out[k - 1] == ' ')
		k--;
	out[k] = '\0';
}

/* Copies what fits, never half a UTF-8 character; the truncation is wanted
 * (curl's messages can be long). */
static void copy(char *dst, size_t n, const char *src)
{
	size_t k = strnlen(src, n - 1);

	while (k > 0 && ((unsigned char)src[k] & 0xc0) == 0x80)
		k--;

	memcpy(dst, src, k);
	dst[k] = '\0';
}

static uint64_t queued(struct uplink *u)
{
	struct store_stats st;
	uint64_t depth = 0;

	if (store_stats(u->env.store, &st) < 0)
		return 0;
	for (size_t i = 0; i < st.n_uplinks; i++)
		if (st.uplink[i].id == u->store_id)
			for (int l = 0; l < CGW_LANE_COUNT; l++)
				depth += st.uplink[i].lane[l].depth;
	return depth;
}

static bool device_busy(const struct lane *ln, const char *device)
{
	for (const struct req *r = ln->reqs; r; r = r->next)
		if (device ? (r->device && !strcmp(r->device, device)) : !r->device)
			return true;
	return false;
}

/* Retry-After: delay-seconds or an HTTP-date (RFC 9110 10.2.3); -1 if absent
 * or unreadable. */
static int64_t retry_after(CURL *e, int64_t now_ms)
{
	struct curl_header *h = NULL;
	const char *v;
	int64_t ms = 0;

	if (curl_easy_header(e, "Retry-After", 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h->value)
		return -1;
	v = h->value;
	while (*v == ' ' || *v == '\t')
		v++;
	if (*v >= '0' && *v <= '9') {
		for (; *v >= '0' && *v <= '9'; v++) {
			ms = ms * 10 + (*v - '0') * 1000;
			if (ms > STORE_RETRY_AFTER_MAX_MS) {
				/* the store clamps it anyway; only avoid overflow */
				return STORE_RETRY_AFTER_MAX_MS;
			}
		}
		while (*v == ' ' || *v == '\t')
			v++;
		return *v ? -1 : ms;
	}
	time_t t = curl_getdate(v, NULL);
	if (t < 0)
		return -1;
	ms = (int64_t)t * 1000 - now_ms;
	if (ms < 0)
		return 0;
	return ms > STORE_RETRY_AFTER_MAX_MS ? STORE_RETRY_AFTER_MAX_MS : ms;
}

/* ------------------------------------------------------- curl <-> loop */

static void after_io(struct uplink *u);

static void on_sock(struct loop *l, int fd, uint32_t ev, void *arg)
{
	struct uplink *u = arg;
	int flags = 0, running = 0;

	(void)l;
	if (ev & EPOLLIN)
		flags |= CURL_CSELECT_IN;
	if (ev & EPOLLOUT)
		flags |= CURL_CSELECT_OUT;
	if (ev & (EPOLLERR | EPOLLHUP))
		flags |= CURL_CSELECT_ERR;
	curl_multi_socket_action(u->multi, fd, flags, &running);
	after_io(u);
}

static void on_curl_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	struct uplink *u = arg;
	int running = 0;

	(void)l;
	(void)t;
	curl_multi_socket_action(u->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	after_io(u);
}

static int on_curl_socket(CURL *e, curl_socket_t fd, int what, void *arg, void *sockp)
{
	struct uplink *u = arg;
	struct sock *s = sockp;
	uint32_t ev = 0;

	(void)e;
	if (what == CURL_POLL_REMOVE) {
		if (!s)
			return 0;
		loop_del_fd(u->env.loop, fd);
		for (struct sock **p = &u->socks; *p; p = &(*p)->next) {
			if (*p == s) {
				*p = s->next;
				break;
			}
		}
		free(s);
		curl_multi_assign(u->multi, fd, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		ev |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev |= EPOLLOUT;
	if (s)
		return loop_mod_fd(u->env.loop, fd, ev) < 0 ? -1 : 0;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -1;
	if (loop_add_fd(u->env.loop, fd, ev, on_sock, u) < 0) {
		free(s);
		return -1;
	}
	s->fd = fd;
	s->next = u->socks;
	u->socks = s;
	curl_multi_assign(u->multi, fd, s);
	return 0;
}

static int on_curl_timeout(CURLM *m, long ms, void *arg)
{
	struct uplink *u = arg;

	(void)m;
	/* curl must not be re-entered from here: act on the next loop turn */
	if (ms < 0)
		loop_timer_at(u->curl_timer, -1);
	else
		loop_timer_in(u->curl_timer, ms);
	return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct req *r = arg;
	size_t n = size * nmemb, room = RESP_KEEP - r->resp_len;

	/* the rest is read and dropped: the timeout bounds a server that talks
	 * forever, and aborting would turn an accepted message into a retry */
	if (room) {
		memcpy(r->resp + r->resp_len, data, n < room ? n : room);
		r->resp_len += n < room ? n : room;
	}
	return n;
}

/* ------------------------------------------------------------ outcomes */

static void req_free(struct req *r)
{
	if (!r)
		return;
	if (r->easy)
		curl_easy_cleanup(r->easy);
	curl_slist_free_all(r->headers);
	free(r->body);
	free(r->device);
	free(r);
}

/* Reports an outcome. A RETRY, or an ack the store could not record (the
 * row is still there: it goes again, a duplicate at worst), rewinds the lane
 * to just before this message once the lane is idle. -ENOENT: the row was
 * evicted while in flight; nothing to send again. */
static void ack(struct uplink *u, const struct req *r, enum store_ack_result res,
		int64_t retry_after_ms, const char *reason, int64_t now)
{
	struct lane *ln = &u->lane[r->lane];
	int rc = store_ack(u->env.store, u->store_id, r->lane, r->seq, res, retry_after_ms, reason,
			   now);

	if (rc == -ENOENT || (rc == 0 && res != STORE_ACK_RETRY))
		return;
	if (rc < 0)
		log_debug("uplink", "[%s] ack of %llu: %s", u->cfg->name,
			  (unsigned long long)r->seq, store_errmsg(u->env.store));
	if (!ln->rewinding || r->seq - 1 < ln->rewind_to)
		ln->rewind_to = r->seq - 1;
	ln->rewinding = true;
}

/* Closes the episodes whose trouble has not come back for HTTP_QUIET_MS
 * while requests succeed, so that a server failing one request in four logs
 * two lines, not two per failure. The time reported is up to the first
 * success. */
static void end_episodes(struct uplink *u, int64_t now)
{
	if (!u->ok_since_ms)
		return;
	if (u->failing.active && episode_good(&u->failing, now))
		log_notice("uplink",
			   "[%s] %s:%lld accepts messages again; requests failed for "
			   "%lld s (%llu failed attempts); %llu messages delivered since, "
			   "%llu queued",
			   u->cfg->name, u->cfg->host, (long long)u->cfg->port,
			   (long long)((u->ok_since_ms - u->failing.started_ms + 999) / 1000),
			   (unsigned long long)u->failing.total,
			   (unsigned long long)(u->acked - u->acked_at_fail),
			   (unsigned long long)queued(u));
	if (u->refusing.active && episode_good(&u->refusing, now))
		log_notice("uplink",
			   "[%s] %s:%lld takes messages again; it refused %llu in %lld s: "
			   "%llu alarms and device states were kept and retried, %llu went "
			   "to the dead-letter table",
			   u->cfg->name, u->cfg->host, (long long)u->cfg->port,
			   (unsigned long long)u->refusing.total,
			   (long long)(episode_duration_ms(&u->refusing) / 1000),
			   (unsigned long long)u->refused_kept,
			   (unsigned long long)u->refused_dead);
}

static void outcome_ok(struct uplink *u, struct req *r, int64_t now)
{
	if (!u->ok_since_ms)
		u->ok_since_ms = now;
	if (!u->connected) {
		u->connected = true;
		u->since_ms = now;
	}
	u->last_error[0] = '\0';
	u->acked++;
	ack(u, r, STORE_ACK_OK, -1, NULL, now);
}

static void outcome_retry(struct uplink *u, struct req *r, const char *why, int64_t delay_ms,
			  int64_t now)
{
	u->retried++;
	copy(u->last_error, sizeof(u->last_error), why);
	if (u->connected) {
		u->connected = false;
		u->since_ms = now;
	}
	u->ok_since_ms = 0;
	switch (episode_bad(&u->failing, now)) {
	case EPISODE_STARTED:
		u->acked_at_fail = u->acked;
		log_warn("uplink",
			 "[%s] POST to %s:%lld failing: %s; backlog %llu, retried with backoff",
			 u->cfg->name, u->cfg->host, (long long)u->cfg->port, why,
			 (unsigned long long)queued(u));
		break;
	case EPISODE_SUMMARY:
		log_warn("uplink",
			 "[%s] POST to %s:%lld still failing: %s (%llu attempts in %lld s)",
			 u->cfg->name, u->cfg->host, (long long)u->cfg->port, why,
			 (unsigned long long)u->failing.summary_count,
			 (long long)(u->failing.summary_window_ms / 1000));
		break;
	default:
		break;
	}
	/* a server that keeps saying "Retry-After: 0" must not get a hot loop */
	if (delay_ms >= 0 && r->attempts > 0 && delay_ms < RETRY_AFTER_FLOOR_MS)
		delay_ms = RETRY_AFTER_FLOOR_MS;
	ack(u, r, STORE_ACK_RETRY, delay_ms, NULL, now);
}

/* A 4xx. An alarm or a device state is kept and retried (soon: the fix is
 * usually a key or a URL, and the duty room must then get it at once); an
 * event or telemetry goes to the dead-letter table. */
static void outcome_refused(struct uplink *u, struct req *r, const char *why, int64_t now)
{
	bool keep = r->lane == CGW_LANE_ALARM || r->lane == CGW_LANE_STATUS;
	enum episode_say say;

	u->ok_since_ms = 0;
	copy(u->last_error, sizeof(u->last_error), why);
	say = episode_bad(&u->refusing, now);
	if (say == EPISODE_STARTED)
		u->refused_kept = u->refused_dead = 0;
	if (keep) {
		u->refused++;
		u->refused_kept++;
	} else {
		u->rejected++;
		u->refused_dead++;
	}
	if (say == EPISODE_STARTED)
		log_err("uplink",
			"[%s] %s:%lld refused message %s:%llu (%s, %s): alarms and device "
			"states are kept and retried until it takes them; events and "
			"telemetry go to the dead-letter table (cgwctl dead-letters)",
			u->cfg->name, u->cfg->host, (long long)u->cfg->port, u->env.cfg->gateway.id,
			(unsigned long long)r->seq, cgw_lane_name((enum cgw_lane)r->lane), why);
	else if (say == EPISODE_SUMMARY)
		log_err("uplink",
			"[%s] %s:%lld still refuses messages: %s (%llu in the last %lld s; "
			"%llu alarms and states kept, %llu dead letters in this episode)",
			u->cfg->name, u->cfg->host, (long long)u->cfg->port, why,
			(unsigned long long)u->refusing.summary_count,
			(long long)(u->refusing.summary_window_ms / 1000),
			(unsigned long long)u->refused_kept, (unsigned long long)u->refused_dead);
	if (keep) {
		uint32_t sh = r->attempts > 8 ? 8 : r->attempts;
		int64_t win = (int64_t)REFUSED_RETRY_MS << sh;
		if (win > REFUSED_RETRY_MAX_MS)
			win = REFUSED_RETRY_MAX_MS;
		/* half fixed, half jitter: never a hot loop, never long */
		ack(u, r, STORE_ACK_RETRY, win / 2 + random() % (win / 2 + 1), NULL, now);
	} else {
		ack(u, r, STORE_ACK_ERROR, -1, why, now);
	}
}

static void finish(struct uplink *u, struct req *r, CURLcode res)
{
	struct lane *ln = &u->lane[r->lane];
	int64_t now = cgw_now_ms();
	long code = 0;
	char why[160], body[REASON_BODY_MAX + 1];

	curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
	snip(body, sizeof(body), r->resp, r->resp_len, REASON_BODY_MAX);
	/* The status line is the server's decision even if the rest of the
	 * response was lost. */
	if (code >= 200 && code < 300) {
		outcome_ok(u, r, now);
	} else if (code >= 400 && code < 500 && code != 408 && code != 429) {
		snprintf(why, sizeof(why), "HTTP %ld: %s", code, body);
		outcome_refused(u, r, why, now);
	} else if (code >= 100) {
		int64_t delay = code == 429 || code == 503 ? retry_after(r->easy, now) : -1;
		if (code >= 300 && code < 400)
			snprintf(why, sizeof(why), "HTTP %ld (redirects are not followed)", code);
		else
			snprintf(why, sizeof(why), "HTTP %ld: %s", code, body);
		outcome_retry(u, r, why, delay, now);
	} else {
		copy(why, sizeof(why), r->errbuf[0] ? r->errbuf : curl_easy_strerror(res));
		outcome_retry(u, r, why, -1, now);
	}

	curl_multi_remove_handle(u->multi, r->easy);
	for (struct req **p = &ln->reqs; *p; p = &(*p)->next) {
		if (*p == r) {
			*p = r->next;
			break;
		}
	}
	ln->inflight--;
	req_free(r);
}

static void after_io(struct uplink *u)
{
	CURLMsg *m;
	int left;

	while ((m = curl_multi_info_read(u->multi, &left))) {
		if (m->msg != CURLMSG_DONE)
			continue;
		char *priv = NULL;
		CURLcode res = m->data.result;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
		if (priv)
			finish(u, (struct req *)(void *)priv, res);
	}
	pump(u);
}

/* -------------------------------------------------------------- sending */

static int sign(const struct uplink *u, const char *body, size_t len, char *hdr, size_t hdrlen)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	static const char hex[] = "0123456789abcdef";
	size_t k;

	if (!HMAC(EVP_sha256(), u->key, (int)u->key_len, (const unsigned char *)body, len, md,
		  &mdlen))
		return -EIO;
	k = (size_t)snprintf(hdr, hdrlen, "X-CGW-Signature: sha256=");
	if (k + 2 * (size_t)mdlen >= hdrlen)
		return -ENOSPC;
	for (unsigned i = 0; i < mdlen; i++) {
		hdr[k++] = hex[md[i] >> 4];
		hdr[k++] = hex[md[i] & 15];
	}
	hdr[k] = '\0';
	return 0;
}

/* wire_render() returns NULL both for a payload that is not an object and
 * when out of memory; only the first is the message's fault. */
static bool looks_like_object(const char *p)
{
	while (*p == ' ' || *p == '\n' || *p == '\t')
		p++;
	return *p == '{' && strrchr(p, '}');
}

/* 0 sent, 1 consumed without a request (dead letter), or a negative errno
 * (nothing changed: try again later). */
static int send_one(struct uplink *u, int lane, const struct store_item *it, int64_t now)
{
	const struct cfg_uplink *c = u->cfg;
	struct req *r;
	char sig[128];
	struct curl_slist *h;

	if (!looks_like_object(it->payload)) {
		/* our own bug, not the server's: say so once per episode */
		log_episode_bad(&u->bad_payload, cgw_mono_ms(), LOG_ERR, "uplink",
				"[%s] message %s:%llu is not a JSON object; moved to the "
				"dead-letter table",
				u->cfg->name, u->env.cfg->gateway.id, (unsigned long long)it->seq);
		u->rejected++;
		store_ack(u->env.store, u->store_id, lane, it->seq, STORE_ACK_ERROR, -1,
			  "payload is not a JSON object", now);
		return 1;
	}
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->seq = it->seq;
	r->lane = (uint8_t)lane;
	r->attempts = it->attempts;
	r->body = wire_render(u->env.cfg->gateway.id, it->seq, it->payload, it->ts_ms, now,
			      c->late_after_ms);
	r->device = it->device ? strdup(it->device) : NULL;
	r->easy = curl_easy_init();
	if (!r->body || (it->device && !r->device) || !r->easy)
		goto nomem;

	h = curl_slist_append(NULL, "Content-Type: application/json");
	if (!h)
		goto nomem;
	r->headers = h;
	/* no "Expect: 100-continue" round trip for a big alarm */
	if (!(h = curl_slist_append(r->headers, "Expect:")))
		goto nomem;
	if (u->key) {
		if (sign(u, r->body, strlen(r->body), sig, sizeof(sig)) < 0)
			goto nomem;
		if (!(h = curl_slist_append(r->headers, sig)))
			goto nomem;
	}

	CURL *e = r->easy;
	curl_easy_setopt(e, CURLOPT_PRIVATE, r);
	curl_easy_setopt(e, CURLOPT_URL, c->url);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(r->body));
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "cgwd");
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075700
	/* a request that ends (timeout, close, reload) while its name is still
	 * resolving must not join the resolver thread on the core loop: libcurl
	 * waits for it unless told to leave it */
	curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L);
#endif
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	if (c->ca_file)
		curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
	if (c->cert_file)
		curl_easy_setopt(e, CURLOPT_SSLCERT, c->cert_file);
	if (c->key_file)
		curl_easy_setopt(e, CURLOPT_SSLKEY, c->key_file);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
	if (curl_multi_add_handle(u->multi, e) != CURLM_OK)
		goto nomem;

	r->next = u->lane[lane].reqs;
	u->lane[lane].reqs = r;
	u->lane[lane].inflight++;
	u->sent++;
	return 0;
nomem:
	req_free(r);
	return -ENOMEM;
}

/* Fill every lane's window, alarms first. */
static void pump(struct uplink *u)
{
	int64_t now = cgw_now_ms();

	if (u->closing)
		return;
	for (int l = 0; l < CGW_LANE_COUNT; l++) {
		struct lane *ln = &u->lane[l];

		if (!(u->cfg->send_mask & (1u << l)))
			continue;
		if (ln->rewinding) {
			if (ln->inflight)
				continue;
			ln->cursor = ln->rewind_to;
			ln->rewinding = false;
		}
		while (ln->inflight < u->budget) {
			size_t want = u->budget - ln->inflight, n = 0, i;
			int rc = 0;

			if (store_fetch(u->env.store, u->store_id, l, ln->cursor, want, now,
					u->items, &n) < 0 ||
			    n == 0)
				break;
			for (i = 0; i < n; i++) {
				const struct store_item *it = &u->items[i];
				if (device_busy(ln, it->device))
					break;
				rc = send_one(u, l, it, now);
				if (rc < 0)
					break;
				ln->cursor = it->seq;
			}
			store_items_clear(u->items, n);
			if (rc < 0 && strcmp(u->last_error, "out of memory") != 0) {
				snprintf(u->last_error, sizeof(u->last_error), "out of memory");
				log_err("uplink", "[%s] cannot start a request: out of memory",
					u->cfg->name);
			}
			if (i < n || n < want)
				break;
		}
	}
}

static void on_tick(struct loop *l, struct loop_timer *t, void *arg)
{
	struct uplink *u = arg;

	(void)l;
	loop_timer_in(t, TICK_MS);
	end_episodes(u, cgw_now_ms());
	pump(u);
}

static void http_kick(struct uplink *u)
{
	pump(u);
}

/* ------------------------------------------------------------ open/close */

/* The whole file, less one trailing newline ("\n" or "\r\n"). */
int uplink_http_check_resolver(long features, const char *version, char *why, size_t len)
{
	if (features & CURL_VERSION_ASYNCHDNS) {
		if (len)
			why[0] = '\0';
		return 0;
	}
	snprintf(why, len,
		 "libcurl %s resolves host names synchronously (no AsynchDNS): every HTTP "
		 "request may stall the core loop, and every alarm with it, while a name "
		 "resolves; use a libcurl built with the threaded or c-ares resolver, or an "
		 "address in the url",
		 version ? version : "?");
	return -ENOTSUP;
}

static int read_key(const char *path, unsigned char **key, size_t *len, char *err, size_t errlen)
{
	unsigned char *buf = NULL;
	size_t n = 0;
	int fd = secret_open(path, err, errlen), r;

	if (fd < 0)
		return fd;
	buf = malloc(KEY_MAX + 1);
	if (!buf) {
		r = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	for (;;) {
		ssize_t k = read(fd, buf + n, KEY_MAX + 1 - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = -errno;
			snprintf(err, errlen, "%s: %s", path, strerror(errno));
			goto out;
		}
		if (k == 0)
			break;
		n += (size_t)k;
		if (n > KEY_MAX) {
			snprintf(err, errlen, "%s: longer than %d bytes", path, KEY_MAX);
			r = -EFBIG;
			goto out;
		}
	}
	if (n && buf[n - 1] == '\n') {
		n--;
		if (n && buf[n - 1] == '\r')
			n--;
	}
	if (!n) {
		snprintf(err, errlen, "%s is empty", path);
		r = -EINVAL;
		goto out;
	}
	*key = buf;
	*len = n;
	buf = NULL;
	r = 0;
out:
	if (buf) {
		explicit_bzero(buf, KEY_MAX + 1);
		free(buf);
	}
	close(fd);
	return r;
}

static void http_close(struct uplink *u);

/*
 * curl_global_init() on the first HTTP uplink, not at start: it initialises
 * OpenSSL (its configuration, providers and tables: about 3 MB resident)
 * that a gateway without an HTTP uplink never uses. It runs on the core
 * thread, the only one that calls libcurl; OpenSSL's own initialisation is
 * run-once and safe beside a libmosquitto TLS connect on another thread.
 */
static int http_global_init(void)
{
	static bool done;

	if (!done && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -ENOMEM;
	done = true;
	return 0;
}

static int http_open(const struct uplink_env *env, const struct cfg_uplink *cfg, int64_t store_id,
		     struct uplink **out)
{
	struct uplink *u;
	char err[512];
	int r = -ENOMEM, lanes = 0;

	*out = NULL;
	if (!cfg->url)
		return -EINVAL;
	if (http_global_init() < 0) {
		log_err("uplink", "[%s] libcurl could not be initialised", cfg->name);
		return -ENOMEM;
	}
	u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;
	u->env = *env;
	u->cfg = cfg;
	u->store_id = store_id;
	u->connected = true;
	u->since_ms = cgw_now_ms();
	u->failing.quiet_ms = HTTP_QUIET_MS;
	u->refusing.quiet_ms = HTTP_QUIET_MS;
	u->budget = cfg->inflight > HTTP_WINDOW_MAX ?
			    HTTP_WINDOW_MAX :
			    (cfg->inflight < 1 ? 1 : (unsigned)cfg->inflight);
	if (cfg->hmac_secret_file) {
		r = read_key(cfg->hmac_secret_file, &u->key, &u->key_len, err, sizeof(err));
		if (r < 0) {
			log_err("uplink", "[%s] hmac_secret_file %s", cfg->name, err);
			goto fail;
		}
		r = -ENOMEM;
	}
	const curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
	if (uplink_http_check_resolver(cv ? cv->features : 0, cv ? cv->version : NULL, err,
				       sizeof(err)) < 0)
		log_warn("uplink", "[%s] %s", cfg->name, err);
	u->multi = curl_multi_init();
	u->curl_timer = loop_timer_new(env->loop, on_curl_timer, u);
	u->tick = loop_timer_new(env->loop, on_tick, u);
	if (!u->multi || !u->curl_timer || !u->tick)
		goto fail;
	for (int l = 0; l < CGW_LANE_COUNT; l++)
		lanes += !!(cfg->send_mask & (1u << l));
	curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
	curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u);
	curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, on_curl_timeout);
	curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u);
	/* keep a connection per request slot warm */
	curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, (long)u->budget * (lanes ? lanes : 1));
	if (!cfg->tls && cfg->insecure)
		log_warn("uplink",
			 "[%s] insecure: true: plaintext HTTP to %s; alarms cross the "
			 "network unencrypted",
			 cfg->name, cfg->host ? cfg->host : "?");
	/* the backlog left by the last run goes out on the first loop turn */
	loop_timer_in(u->tick, 0);
	*out = u;
	return 0;
fail:
	http_close(u);
	return r;
}

static void http_close(struct uplink *u)
{
	if (!u)
		return;
	/* In-flight messages are not acknowledged: they stay in the outbox and
	 * are sent again by the next uplink on this store (same id). */
	u->closing = true;
	for (int l = 0; l < CGW_LANE_COUNT; l++) {
		while (u->lane[l].reqs) {
			struct req *r = u->lane[l].reqs;
			u->lane[l].reqs = r->next;
			curl_multi_remove_handle(u->multi, r->easy);
			req_free(r);
		}
		u->lane[l].inflight = 0;
	}
	if (u->multi)
		curl_multi_cleanup(u->multi);
	/* curl reports closed sockets as it closes them; whatever it did not */
	while (u->socks) {
		struct sock *s = u->socks;
		u->socks = s->next;
		loop_del_fd(u->env.loop, s->fd);
		free(s);
	}
	loop_timer_free(u->curl_timer);
	loop_timer_free(u->tick);
	if (u->key) {
		explicit_bzero(u->key, KEY_MAX + 1);
		free(u->key);
	}
	free(u);
}

static void http_status(const struct uplink *u, struct uplink_status *st)
{
	memset(st, 0, sizeof(*st));
	st->name = u->cfg->name;
	st->type = "http";
	st->connected = u->connected;
	st->since_ms = u->since_ms;
	st->sent = u->sent;
	st->acked = u->acked;
	st->retried = u->retried;
	st->rejected = u->rejected;
	st->refused = u->refused;
	for (int l = 0; l < CGW_LANE_COUNT; l++)
		st->inflight[l] = u->lane[l].inflight;
	snprintf(st->last_error, sizeof(st->last_error), "%s", u->last_error);
}

const struct uplink_ops uplink_http_ops = {
	.type = "http",
	.open = http_open,
	.close = http_close,
	.kick = http_kick,
	.status = http_status,
};
