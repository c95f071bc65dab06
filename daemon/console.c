/*
 * console.c - the web console (see console.h).
 */
#include "console.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "alarm.h"
#include "commission.h"
#include "console_cert.h"
#include "console_parse.h"
#include "console_users.h"
#include "episode.h"
#include "http_front.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

#define TOKEN_HEX 64
#define MAX_SESSIONS 128
#define MAX_LIMITS 256
#define STREAM_BUF_MAX (512 * 1024)
#define CONN_MEMORY (32 * 1024)
#define CONN_TIMEOUT_S 15          /* idle; live pages are never idle (a beat every 2 s) */
#define FRONT_BODY_MAX (64 * 1024) /* over CONSOLE_BODY_MAX: 413; over this: dropped */
#define HISTORY_PAGE 500
#define HISTORY_CSV_MAX STORE_HISTORY_KEEP
#define BACKLOG_EVERY_MS 10000

/* the pages, built in (console_assets.S) */
extern const char console_index_html[], console_app_js[], console_style_css[];
extern const unsigned console_index_html_len, console_app_js_len, console_style_css_len;

struct session {
	char token[TOKEN_HEX + 1];
	char csrf[TOKEN_HEX + 1];
	char user[CONSOLE_NAME_MAX + 1];
	enum console_role role;
	int64_t seen_ms;
};

struct limit {
	char addr[INET6_ADDRSTRLEN];
	unsigned fails;
	int64_t first_ms, locked_until_ms, seen_ms;
};

struct stream {
	struct console *con;
	struct session *session; /* the stream ends when it does */
	char token[TOKEN_HEX + 1];
	struct MHD_Connection *conn;
	char *buf;
	size_t len, pos, cap;
	bool suspended, dead;
	struct stream *next;
};

struct req;

struct login_job {
	struct console *con;
	struct req *req; /* NULL when the connection went away */
	char user[CONSOLE_NAME_MAX + 1];
	char password[CONSOLE_FIELD_MAX];
	char hash[CONSOLE_HASH_MAX + 1];
	enum console_role role;
	bool known, ok;
	int slot;
};

struct req {
	struct console *con;
	struct MHD_Connection *conn;
	char body[CONSOLE_BODY_MAX];
	size_t len;
	bool too_big, started, suspended, waiting;
	bool scan;               /* the console's one scan in progress */
	struct req *prev, *next; /* every request, so that a close resumes them */
	struct login_job *job;
	json_t *result; /* a command's result, when it came */
	char addr[INET6_ADDRSTRLEN];
};

struct console {
	struct core *core;
	struct loop *loop;
	struct http_front *front;
	struct loop_timer *tick;
	bool tls, closing, dirty;
	char listen[128];
	char users_path[4096];
	char settings[8192 + 512];
	struct stat users_st;
	struct console_user users[CONSOLE_USERS_MAX];
	size_t n_users;
	char dummy_hash[CONSOLE_HASH_MAX + 1];
	struct session sessions[MAX_SESSIONS];
	struct limit limits[MAX_LIMITS];
	struct episode bad_login;
	struct stream *streams;
	size_t n_streams;
	char *last_state;
	json_t *backlog; /* uplink name -> messages waiting */
	int64_t backlog_due_ms;
	bool backlog_stale; /* alarms changed since the last count */
	char backlog_conn[64];
	int64_t next_beat_ms;
	/* login workers */
	int pipe_r, pipe_w;
	pthread_t workers[CONSOLE_LOGIN_WORKERS];
	bool busy[CONSOLE_LOGIN_WORKERS];
	uint64_t cmd_counter;
	struct req *scanning; /* one scan at a time from the console */
	struct req *reqs;
};

/* ---- small things ----------------------------------------------------------------- */

static int random_hex(char *out, size_t nhex)
{
	unsigned char b[64];
	size_t n = nhex / 2;

	if (n > sizeof(b) || getrandom(b, n, 0) != (ssize_t)n)
		return -EIO;
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
	out[nhex] = '\0';
	return 0;
}

static bool same_token(const char *a, const char *b)
{
	unsigned char d = 0;
	size_t la = strlen(a), lb = strlen(b);

	if (la != TOKEN_HEX || lb != TOKEN_HEX)
		return false;
	for (size_t i = 0; i < TOKEN_HEX; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

static const char *header(struct MHD_Connection *conn, const char *name)
{
	return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

static const char *arg(struct MHD_Connection *conn, const char *name)
{
	const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
	return v && *v ? v : NULL;
}

static void client_addr(struct MHD_Connection *conn, char *out, size_t len)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;

	snprintf(out, len, "?");
	if (sa && sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out,
			  (socklen_t)len);
	else if (sa && sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out,
			  (socklen_t)len);
}

static void location_words(const struct cfg_device *d, char *out, size_t len)
{
	size_t o = 0;

	out[0] = '\0';
	for (size_t i = 0; i < d->n_location && o < len; i++) {
		const char *k = d->location[i].key, *v = d->location[i].value;
		const char *suffix = !strcmp(k, "building") ? "号楼" :
				     !strcmp(k, "unit")     ? "单元" :
				     !strcmp(k, "floor")    ? "层" :
							      "";
		int n = snprintf(out + o, len - o, "%s%s%s", o ? " " : "", v, suffix);
		if (n < 0)
			break;
		o += (size_t)n;
	}
}

/* ---- responses -------------------------------------------------------------------- */

static void security_headers(struct console *con, struct MHD_Response *r)
{
	MHD_add_response_header(r, "Content-Security-Policy",
				"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
				"form-action 'self'; base-uri 'none'");
	MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(r, "X-Frame-Options", "DENY");
	MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
	if (con->tls)
		MHD_add_response_header(r, "Strict-Transport-Security", "max-age=31536000");
}

static enum MHD_Result send_buf(struct console *con, struct MHD_Connection *conn, unsigned status,
				const char *type, const void *body, size_t len, bool copy,
				const char *cookie)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(len, (void *)body,
					    copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	security_headers(con, r);
	if (cookie)
		MHD_add_response_header(r, MHD_HTTP_HEADER_SET_COOKIE, cookie);
	if (status == MHD_HTTP_TOO_MANY_REQUESTS)
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "60");
	ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

/* Takes the reference. */
static enum MHD_Result send_json(struct console *con, struct MHD_Connection *conn, unsigned status,
				 json_t *j, const char *cookie)
{
	char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
	enum MHD_Result ret;

	json_decref(j);
	if (!s)
		return send_buf(con, conn, 500, "text/plain", "out of memory\n", 14, false, NULL);
	ret = send_buf(con, conn, status, "application/json; charset=utf-8", s, strlen(s), true,
		       cookie);
	free(s);
	return ret;
}

static enum MHD_Result send_error(struct console *con, struct MHD_Connection *conn, unsigned status,
				  const char *msg)
{
	return send_json(con, conn, status, json_pack("{s:s}", "error", msg), NULL);
}

static void cookie_str(struct console *con, char *out, size_t len, const char *name,
		       const char *value, bool expire)
{
	snprintf(out, len, "%s=%s; Path=/; HttpOnly; SameSite=Strict%s%s", name, value,
		 con->tls ? "; Secure" : "", expire ? "; Max-Age=0" : "");
}

/* ---- accounts, sessions, rate limits ---------------------------------------------- */

static void users_reload(struct console *con)
{
	struct stat st;
	size_t n = 0;
	int r;

	if (stat(con->users_path, &st) < 0) {
		con->n_users = 0;
		memset(&con->users_st, 0, sizeof(con->users_st));
		return;
	}
	if (st.st_ino == con->users_st.st_ino &&
	    st.st_mtim.tv_sec == con->users_st.st_mtim.tv_sec &&
	    st.st_mtim.tv_nsec == con->users_st.st_mtim.tv_nsec &&
	    st.st_size == con->users_st.st_size)
		return;
	r = console_users_load(con->users_path, con->users, CONSOLE_USERS_MAX, &n);
	if (r < 0 && r != -E2BIG) {
		log_warn("console", "%s: %s", con->users_path, strerror(-r));
		return;
	}
	con->n_users = n;
	con->users_st = st;
	log_info("console", "%zu accounts in %s", n, con->users_path);
}

static const struct console_user *user_find(struct console *con, const char *name)
{
	for (size_t i = 0; i < con->n_users; i++)
		if (!strcmp(con->users[i].name, name))
			return &con->users[i];
	return NULL;
}

static struct session *session_get(struct console *con, struct MHD_Connection *conn)
{
	char tok[TOKEN_HEX + 2];
	int64_t now = cgw_mono_ms();

	if (console_cookie_get(header(conn, MHD_HTTP_HEADER_COOKIE), "cgw_session", tok,
			       sizeof(tok)) < 0)
		return NULL;
	for (size_t i = 0; i < MAX_SESSIONS; i++) {
		struct session *s = &con->sessions[i];
		if (!s->token[0] || !same_token(s->token, tok))
			continue;
		if (now - s->seen_ms > CONSOLE_SESSION_IDLE_MS) {
			memset(s, 0, sizeof(*s));
			return NULL;
		}
		/* an account deleted or demoted takes effect at once */
		users_reload(con);
		const struct console_user *u = user_find(con, s->user);
		if (!u) {
			memset(s, 0, sizeof(*s));
			return NULL;
		}
		s->role = u->role;
		s->seen_ms = now;
		return s;
	}
	return NULL;
}

static struct session *session_new(struct console *con, const char *user, enum console_role role)
{
	struct session *s = &con->sessions[0];

	for (size_t i = 0; i < MAX_SESSIONS; i++) {
		if (!con->sessions[i].token[0]) {
			s = &con->sessions[i];
			break;
		}
		if (con->sessions[i].seen_ms < s->seen_ms)
			s = &con->sessions[i]; /* full: the longest idle goes */
	}
	memset(s, 0, sizeof(*s));
	if (random_hex(s->token, TOKEN_HEX) < 0 || random_hex(s->csrf, TOKEN_HEX) < 0) {
		memset(s, 0, sizeof(*s));
		return NULL;
	}
	snprintf(s->user, sizeof(s->user), "%s", user);
	s->role = role;
	s->seen_ms = cgw_mono_ms();
	return s;
}

static struct limit *limit_get(struct console *con, const char *addr)
{
	struct limit *l = &con->limits[0];

	for (size_t i = 0; i < MAX_LIMITS; i++) {
		if (!strcmp(con->limits[i].addr, addr))
			return &con->limits[i];
		if (con->limits[i].seen_ms < l->seen_ms)
			l = &con->limits[i];
	}
	memset(l, 0, sizeof(*l));
	snprintf(l->addr, sizeof(l->addr), "%s", addr);
	return l;
}

static void audit(struct console *con, const char *user, const char *action, const char *device,
		  const char *request_json, const char *result, const char *detail)
{
	struct store *st = core_store(con->core);
	char id[64];

	if (!st)
		return;
	snprintf(id, sizeof(id), "web-%lld-%llu", (long long)cgw_now_ms(),
		 (unsigned long long)++con->cmd_counter);
	json_t *rq = json_loads(request_json ? request_json : "{}", 0, NULL);
	if (rq)
		json_object_set_new(rq, "by", json_string(user));
	char *s = rq ? json_dumps(rq, JSON_COMPACT) : NULL;
	struct store_audit a = {
		.ts_ms = cgw_now_ms(),
		.source = "console",
		.device = device,
		.command_id = id,
		.action = action,
		.request_json = s,
		.result = result,
		.detail = detail,
	};
	store_audit_add(st, &a);
	free(s);
	json_decref(rq);
}

/* ---- login workers ------------------------------------------------------------------ */

static void *login_worker(void *arg)
{
	struct login_job *j = arg;
	ssize_t w;

	j->ok = console_check_password(j->password, j->hash) && j->known;
	explicit_bzero(j->password, sizeof(j->password));
	do
		w = write(j->con->pipe_w, &j, sizeof(j));
	while (w < 0 && errno == EINTR);
	return NULL;
}

static void login_done(struct console *con, struct login_job *j)
{
	struct req *rq = j->req;
	int64_t now = cgw_mono_ms();

	pthread_join(con->workers[j->slot], NULL);
	con->busy[j->slot] = false;
	if (rq) {
		rq->job = NULL;
		struct limit *l = limit_get(con, rq->addr);
		l->seen_ms = now;
		if (j->ok) {
			struct session *s = session_new(con, j->user, j->role);
			l->fails = 0;
			if (s) {
				log_notice("console", "%s signed in from %s (%s)", j->user,
					   rq->addr, console_role_name(j->role));
				audit(con, j->user, "login", NULL, NULL, "ok", rq->addr);
				rq->result = json_pack("{s:i,s:s,s:s,s:s}", "status", 200, "user",
						       j->user, "role", console_role_name(j->role),
						       "token", s->token);
			} else {
				rq->result = json_pack("{s:i}", "status", 500);
			}
		} else {
			if (!l->fails || now - l->first_ms > CONSOLE_LOGIN_WINDOW_MS) {
				l->fails = 0;
				l->first_ms = now;
			}
			if (++l->fails >= CONSOLE_LOGIN_FAILS)
				l->locked_until_ms = now + CONSOLE_LOGIN_LOCK_MS;
			log_episode_bad(
				&con->bad_login, now, LOG_WARNING, "console",
				"failed login as '%s' from %s%s", j->user, rq->addr,
				l->locked_until_ms > now ? " (address locked out for 60 s)" : "");
			rq->result = json_pack("{s:i}", "status", 401);
		}
		if (rq->suspended) {
			rq->suspended = false;
			MHD_resume_connection(rq->conn);
		}
	}
	explicit_bzero(j, sizeof(*j));
	free(j);
}

static void on_pipe(struct loop *l, int fd, uint32_t events, void *arg)
{
	struct console *con = arg;
	struct login_job *j;

	(void)l;
	(void)events;
	while (read(fd, &j, sizeof(j)) == (ssize_t)sizeof(j))
		login_done(con, j);
	http_front_kick(con->front);
}

/* ---- the board: alarms and uplinks ------------------------------------------------- */

/* The backlog per uplink: a count over the outbox, whose cost grows with it,
 * so every BACKLOG_EVERY_MS, at once when an uplink's state changed (the
 * banner's number), and when alarms changed at most once a second. */
static void backlog_refresh(struct console *con, json_t *ups)
{
	int64_t now = cgw_mono_ms();
	json_t *u, *o;
	size_t i, k;
	char conn[64] = "";

	json_array_foreach(ups, i, u)
	{
		if (i < sizeof(conn) - 1)
			conn[i] = json_is_true(json_object_get(u, "connected")) ? '1' : '0';
	}
	/* an alarm changed: the outbox did too (at most once a second) */
	if (con->dirty)
		con->backlog_stale = true;
	bool news = con->backlog_stale && now >= con->backlog_due_ms - BACKLOG_EVERY_MS + 1000;
	if (con->backlog && now < con->backlog_due_ms && !news && !strcmp(conn, con->backlog_conn))
		return;
	json_t *q = core_queue_json(con->core), *b = json_object();
	json_array_foreach(q, k, o)
	{
		const char *key;
		json_t *lane;
		json_int_t n = 0;
		json_object_foreach(json_object_get(o, "lanes"), key, lane)
			n += json_integer_value(json_object_get(lane, "depth"));
		const char *name = json_string_value(json_object_get(o, "uplink"));
		if (name)
			json_object_set_new(b, name, json_integer(n));
	}
	json_decref(q);
	json_decref(con->backlog);
	con->backlog = b;
	con->backlog_due_ms = now + BACKLOG_EVERY_MS;
	con->backlog_stale = false;
	snprintf(con->backlog_conn, sizeof(con->backlog_conn), "%s", conn);
}

static json_t *board_json(struct console *con)
{
	const struct cgw_config *cfg = core_config(con->core);
	json_t *alarms = core_alarms_json(con->core), *ups = core_uplinks_json(con->core);
	json_t *a, *u;
	size_t i;
	char where[256];

	json_array_foreach(alarms, i, a)
	{
		long dev = cfg_find_device(cfg, json_string_value(json_object_get(a, "device")));
		if (dev < 0)
			continue;
		const struct cfg_device *d = &cfg->devices[dev];
		location_words(d, where, sizeof(where));
		json_object_set_new(a, "name", json_string(d->name ? d->name : d->id));
		json_object_set_new(a, "location", json_string(where));
		const char *b = cfg_device_location(d, "building");
		if (b)
			json_object_set_new(a, "building", json_string(b));
	}
	backlog_refresh(con, ups);
	json_array_foreach(ups, i, u)
	{
		const char *name = json_string_value(json_object_get(u, "name"));
		json_t *n = name ? json_object_get(con->backlog, name) : NULL;
		json_object_set_new(u, "backlog", json_integer(n ? json_integer_value(n) : 0));
	}
	return json_pack("{s:s,s:s,s:o,s:o}", "gateway", cfg->gateway.id, "site", cfg->gateway.site,
			 "alarms", alarms, "uplinks", ups);
}

/* ---- event streams -------------------------------------------------------------------- */

static void stream_push(struct stream *s, const char *text)
{
	size_t n = strlen(text);

	if (s->dead)
		return;
	if (s->len - s->pos + n > STREAM_BUF_MAX) {
		s->dead = true; /* a reader this slow is dropped; the page reconnects */
	} else {
		if (s->pos && s->pos == s->len)
			s->pos = s->len = 0;
		if (s->len + n > s->cap) {
			size_t cap = s->cap ? s->cap : 4096;
			while (cap < s->len + n)
				cap *= 2;
			char *nb = realloc(s->buf, cap);
			if (!nb) {
				s->dead = true;
				goto resume;
			}
			s->buf = nb;
			s->cap = cap;
		}
		memcpy(s->buf + s->len, text, n);
		s->len += n;
	}
resume:
	if (s->suspended) {
		s->suspended = false;
		MHD_resume_connection(s->conn);
	}
}

static void broadcast(struct console *con, const char *text)
{
	for (struct stream *s = con->streams; s; s = s->next)
		stream_push(s, text);
}

static char *state_event(struct console *con)
{
	json_t *b = board_json(con);
	char *j = json_dumps(b, JSON_COMPACT), *ev = NULL;

	json_decref(b);
	if (j && asprintf(&ev, "event: state\ndata: %s\n\n", j) < 0)
		ev = NULL;
	free(j);
	return ev;
}

static void on_tick(struct loop *l, struct loop_timer *t, void *arg)
{
	struct console *con = arg;
	int64_t now = cgw_mono_ms();
	char beat[96];

	(void)l;
	/* a page open on the board keeps its session alive; a session that
	 * ended (logout, account deleted) ends its streams */
	if (con->streams)
		users_reload(con);
	for (struct stream *s = con->streams; s; s = s->next) {
		if (s->session->token[0] && !user_find(con, s->session->user))
			memset(s->session, 0, sizeof(*s->session));
		if (strcmp(s->session->token, s->token)) {
			s->dead = true;
			if (s->suspended) {
				s->suspended = false;
				MHD_resume_connection(s->conn);
			}
		} else {
			s->session->seen_ms = now;
		}
	}
	if (con->streams) {
		char *ev = state_event(con);
		if (ev && (!con->last_state || strcmp(ev, con->last_state))) {
			broadcast(con, ev);
			free(con->last_state);
			con->last_state = ev;
		} else {
			free(ev);
		}
		if (now >= con->next_beat_ms) {
			snprintf(beat, sizeof(beat), "event: beat\ndata: %lld\n\n",
				 (long long)cgw_now_ms());
			broadcast(con, beat);
		}
	}
	con->dirty = false;
	if (now >= con->next_beat_ms)
		con->next_beat_ms = now + CONSOLE_HEARTBEAT_MS;
	loop_timer_at(t, con->next_beat_ms);
	http_front_kick(con->front);
}

static void on_alarm_change(void *arg, const struct alarm_change *ch)
{
	struct console *con = arg;

	(void)ch;
	/* not from inside the alarm engine's callback: a moment later */
	if (!con->dirty) {
		con->dirty = true;
		loop_timer_in(con->tick, 20);
	}
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct stream *s = cls;
	size_t n;

	(void)pos;
	if (s->dead || s->con->closing)
		return MHD_CONTENT_READER_END_WITH_ERROR;
	if (s->pos == s->len) {
		s->pos = s->len = 0;
		s->suspended = true;
		MHD_suspend_connection(s->conn);
		return 0;
	}
	n = s->len - s->pos < max ? s->len - s->pos : max;
	memcpy(buf, s->buf + s->pos, n);
	s->pos += n;
	return (ssize_t)n;
}

static void stream_free(void *cls)
{
	struct stream *s = cls;
	struct console *con = s->con;

	for (struct stream **p = &con->streams; *p; p = &(*p)->next)
		if (*p == s) {
			*p = s->next;
			break;
		}
	con->n_streams--;
	free(s->buf);
	free(s);
}

static enum MHD_Result open_stream(struct console *con, struct MHD_Connection *conn,
				   struct session *sess)
{
	struct MHD_Response *r;
	struct stream *s;
	enum MHD_Result ret;
	char *ev;

	if (con->n_streams >= CONSOLE_MAX_STREAMS)
		return send_error(con, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "too many pages open");
	s = calloc(1, sizeof(*s));
	if (!s)
		return MHD_NO;
	s->con = con;
	s->conn = conn;
	s->session = sess;
	memcpy(s->token, sess->token, sizeof(s->token));
	stream_push(s, "retry: 1000\n\n");
	ev = state_event(con);
	if (ev) {
		stream_push(s, ev);
		/* the others get it too if it is news, and the tick knows it */
		if (!con->last_state || strcmp(ev, con->last_state)) {
			broadcast(con, ev);
			free(con->last_state);
			con->last_state = ev;
			ev = NULL;
		}
	}
	free(ev);
	r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 8192, stream_read, s, stream_free);
	if (!r) {
		free(s->buf);
		free(s);
		return MHD_NO;
	}
	s->next = con->streams;
	con->streams = s;
	con->n_streams++;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
				"text/event-stream; charset=utf-8");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	security_headers(con, r);
	ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return ret;
}

/* ---- devices and history -------------------------------------------------------------- */

static json_t *value_json(const struct cfg_point *pt, const struct cgw_value *v)
{
	switch (v->type) {
	case CGW_V_BOOL:
		return json_boolean(v->b);
	case CGW_V_INT:
	case CGW_V_UINT: {
		int64_t raw = v->type == CGW_V_INT ? v->i : (int64_t)v->u;
		for (size_t i = 0; pt && i < pt->n_enums; i++)
			if (pt->enums[i].key == raw)
				return json_string(pt->enums[i].label);
		return json_integer((json_int_t)raw);
	}
	case CGW_V_DOUBLE:
		return json_real(v->d);
	case CGW_V_STRING:
		return json_string(v->s);
	default:
		return json_null();
	}
}

struct latest_ctx {
	const struct cgw_config *cfg;
	json_t *by_dev; /* id -> points array */
};

static int latest_cb(void *ctx, const struct store_latest *l)
{
	struct latest_ctx *x = ctx;
	long dev = cfg_find_device(x->cfg, l->device);
	const struct cfg_point *pt = NULL;

	if (dev < 0)
		return 0;
	const struct cfg_profile *pr = cfg_device_profile(x->cfg, &x->cfg->devices[dev]);
	for (size_t i = 0; i < pr->n_points && !pt; i++)
		if (!strcmp(pr->points[i].name, l->point))
			pt = &pr->points[i];
	json_t *arr = json_object_get(x->by_dev, l->device);
	if (!arr) {
		arr = json_array();
		json_object_set_new(x->by_dev, l->device, arr);
	}
	json_array_append_new(
		arr, json_pack("{s:s,s:o,s:s,s:I,s:s,s:b}", "name", l->point, "value",
			       value_json(pt, &l->value), "quality", cgw_quality_name(l->quality),
			       "ts", (json_int_t)l->ts_ms, "unit", pt && pt->unit ? pt->unit : "",
			       "writable", pt && pt->writable));
	return 0;
}

static json_t *devices_json(struct console *con)
{
	const struct cgw_config *cfg = core_config(con->core);
	json_t *devs = core_devices_json(con->core), *d;
	struct latest_ctx x = {cfg, json_object()};
	struct store *st = core_store(con->core);
	char where[256];
	size_t i;

	if (st)
		store_latest_foreach(st, NULL, latest_cb, &x);
	json_array_foreach(devs, i, d)
	{
		const char *id = json_string_value(json_object_get(d, "id"));
		long dev = cfg_find_device(cfg, id);
		if (dev < 0)
			continue;
		location_words(&cfg->devices[dev], where, sizeof(where));
		json_object_set_new(d, "location", json_string(where));
		const char *b = cfg_device_location(&cfg->devices[dev], "building");
		json_object_set_new(d, "building", json_string(b ? b : ""));
		json_t *pts = json_object_get(x.by_dev, id);
		json_object_set(d, "points", pts ? pts : json_array());
		if (!pts)
			json_decref(json_object_get(d, "points"));
		/* writable points without a value yet are writable all the same */
		const struct cfg_profile *pr = cfg_device_profile(cfg, &cfg->devices[dev]);
		json_t *w = json_array();
		for (size_t k = 0; k < pr->n_points; k++)
			if (pr->points[k].writable)
				json_array_append_new(w, json_string(pr->points[k].name));
		json_object_set_new(d, "writable", w);
	}
	json_decref(x.by_dev);
	return devs;
}

static int parse_day(const char *s, int64_t *ms)
{
	struct tm tm = {0};
	const char *e;

	if (!s)
		return 0;
	e = strptime(s, "%Y-%m-%d", &tm);
	if (!e || *e)
		return -EINVAL;
	tm.tm_isdst = -1;
	time_t t = mktime(&tm);
	if (t == (time_t)-1)
		return -EINVAL;
	*ms = (int64_t)t * 1000;
	return 0;
}

static int hist_json_cb(void *ctx, const struct store_history *h)
{
	json_array_append_new(ctx,
			      json_pack("{s:I,s:s,s:s,s:s?,s:s,s:s,s:s,s:s,s:s?,s:s?}", "ts",
					(json_int_t)h->ts_ms, "alarm_id", h->alarm_id, "device",
					h->device, "building", h->building, "alarm", h->rule,
					"event", h->event, "state", h->state, "severity",
					h->severity, "by", h->by, "message", h->message));
	return 0;
}

struct csv {
	char *p;
	size_t len, cap;
	bool oom;
};

static void csv_put(struct csv *c, const char *s, size_t n)
{
	if (c->oom)
		return;
	if (c->len + n + 1 > c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 65536;
		while (cap < c->len + n + 1)
			cap *= 2;
		char *np = realloc(c->p, cap);
		if (!np) {
			c->oom = true;
			return;
		}
		c->p = np;
		c->cap = cap;
	}
	memcpy(c->p + c->len, s, n);
	c->len += n;
}

/* RFC 4180 quoting; a cell that a spreadsheet would take for a formula is
 * prefixed with a quote mark. */
static void csv_cell(struct csv *c, const char *s, bool last)
{
	csv_put(c, "\"", 1);
	if (s && (*s == '=' || *s == '+' || *s == '-' || *s == '@'))
		csv_put(c, "'", 1);
	for (; s && *s; s++)
		csv_put(c, *s == '"' ? "\"\"" : s, *s == '"' ? 2 : 1);
	csv_put(c, last ? "\"\r\n" : "\",", last ? 3 : 2);
}

static int hist_csv_cb(void *ctx, const struct store_history *h)
{
	struct csv *c = ctx;
	char when[32];
	time_t t = (time_t)(h->ts_ms / 1000);
	struct tm tm;

	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime_r(&t, &tm));
	csv_cell(c, when, false);
	csv_cell(c, h->device, false);
	csv_cell(c, h->building, false);
	csv_cell(c, h->rule, false);
	csv_cell(c, h->event, false);
	csv_cell(c, h->state, false);
	csv_cell(c, h->severity, false);
	csv_cell(c, h->by, false);
	csv_cell(c, h->message, true);
	return 0;
}

static enum MHD_Result history(struct console *con, struct MHD_Connection *conn)
{
	struct store *st = core_store(con->core);
	struct store_history_filter f = {
		.device = arg(conn, "device"),
		.building = arg(conn, "building"),
		.severity = arg(conn, "severity"),
	};
	bool csv = arg(conn, "format") && !strcmp(arg(conn, "format"), "csv");
	int64_t to = 0;

	if (parse_day(arg(conn, "from"), &f.from_ms) < 0 || parse_day(arg(conn, "to"), &to) < 0)
		return send_error(con, conn, 400, "日期格式应为 YYYY-MM-DD");
	if (to)
		f.to_ms = to + 24 * 3600 * 1000; /* the whole day */
	if (!st)
		return send_error(con, conn, 503, "store not open");
	if (!csv) {
		json_t *arr = json_array();
		f.limit = HISTORY_PAGE;
		store_history_query(st, &f, hist_json_cb, arr);
		return send_json(con, conn, 200, json_pack("{s:o}", "history", arr), NULL);
	}
	struct csv c = {0};
	static const char head[] = "\xEF\xBB\xBF\"时间\",\"设备\",\"楼栋\",\"报警\",\"事件\","
				   "\"状态\",\"级别\",\"操作人\",\"内容\"\r\n";
	csv_put(&c, head, sizeof(head) - 1);
	f.limit = HISTORY_CSV_MAX;
	store_history_query(st, &f, hist_csv_cb, &c);
	if (c.oom) {
		free(c.p);
		return send_error(con, conn, 500, "out of memory");
	}
	struct MHD_Response *r = MHD_create_response_from_buffer(c.len, c.p, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(c.p);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/csv; charset=utf-8");
	MHD_add_response_header(r, "Content-Disposition",
				"attachment; filename=\"alarm-history.csv\"");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	security_headers(con, r);
	enum MHD_Result ret = MHD_queue_response(conn, 200, r);
	MHD_destroy_response(r);
	return ret;
}

/* ---- commands --------------------------------------------------------------------------- */

static void on_command_reply(void *arg, json_t *result)
{
	struct req *rq = arg;

	json_decref(rq->result);
	rq->result = json_deep_copy(result);
	if (rq->suspended) {
		rq->suspended = false;
		MHD_resume_connection(rq->conn);
		http_front_kick(rq->con->front);
	}
}

/* Runs a command through the same path as cgwctl and the platform (audited
 * there, with source "console" and by the user). */
static enum MHD_Result command(struct console *con, struct req *rq, struct session *s,
			       const char *device, json_t *cmd)
{
	char id[64];

	snprintf(id, sizeof(id), "web-%lld-%llu", (long long)cgw_now_ms(),
		 (unsigned long long)++con->cmd_counter);
	json_object_set_new(cmd, "id", json_string(id));
	json_object_set_new(cmd, "by", json_string(s->user));
	char *p = json_dumps(cmd, JSON_COMPACT);
	json_decref(cmd);
	if (!p)
		return send_error(con, rq->conn, 500, "out of memory");
	rq->waiting = true;
	core_command_reply(con->core, "console", device, p, strlen(p), on_command_reply, rq);
	free(p);
	if (!rq->result) {
		rq->suspended = true;
		MHD_suspend_connection(rq->conn);
		return MHD_YES;
	}
	return MHD_YES; /* answered by the next call (finish_command) */
}

/* Installer tools: a scan of a bus for the units that answer, or a probe of
 * a unit's registers, checked by commission_request() and run by
 * core_commission() exactly as cgwctl's (the bus's own worker reads, in the
 * gaps between polls; the core loop only waits for its answer). One scan at
 * a time from the console; the request waits, suspended, for the result. */
static enum MHD_Result commission(struct console *con, struct req *rq, struct session *s, bool scan)
{
	struct driver_commission dc;
	const char *bus = NULL, *what = scan ? "scan" : "probe";
	char why[CONSOLE_FIELD_MAX + 160];
	json_t *q = console_commission_form(rq->body, rq->len);
	char *text = NULL;
	int r;

	if (!q)
		return send_error(con, rq->conn, 500, "out of memory");
	text = json_dumps(q, JSON_COMPACT);
	if (commission_request(core_config(con->core), q, scan, &dc, &bus, why, sizeof(why)) < 0) {
		audit(con, s->user, what, NULL, text, "rejected", why);
		json_decref(q);
		free(text);
		return send_error(con, rq->conn, 400, why);
	}
	if (scan && con->scanning) {
		audit(con, s->user, what, NULL, text, "rejected", "a scan is in progress");
		json_decref(q);
		free(text);
		return send_error(con, rq->conn, MHD_HTTP_CONFLICT,
				  "另一个扫描正在进行，请等它完成");
	}
	r = core_commission(con->core, bus, &dc, on_command_reply, rq);
	if (r < 0) {
		commission_refusal(r, bus, why, sizeof(why));
		audit(con, s->user, what, NULL, text, "rejected", why);
		json_decref(q);
		free(text);
		return send_error(con, rq->conn, MHD_HTTP_CONFLICT, why);
	}
	log_notice("console", "%s %s bus %s", s->user, scan ? "scans" : "probes", bus);
	audit(con, s->user, what, NULL, text, "ok", "started");
	json_decref(q);
	free(text);
	rq->waiting = true;
	if (scan) {
		rq->scan = true;
		con->scanning = rq;
	}
	if (!rq->result) {
		rq->suspended = true;
		MHD_suspend_connection(rq->conn);
	}
	return MHD_YES;
}

static enum MHD_Result finish_command(struct console *con, struct req *rq)
{
	json_t *r = rq->result;
	const char *res = json_string_value(json_object_get(r, "result"));
	unsigned status = res && !strcmp(res, "ok")     ? 200 :
			  res && !strcmp(res, "failed") ? 502 :
							  409;

	rq->result = NULL;
	rq->waiting = false;
	if (rq->scan && con->scanning == rq)
		con->scanning = NULL;
	rq->scan = false;
	return send_json(con, rq->conn, status, r, NULL);
}

/* ---- requests ------------------------------------------------------------------------------ */

static enum MHD_Result login_start(struct console *con, struct req *rq)
{
	struct MHD_Connection *conn = rq->conn;
	struct limit *l = limit_get(con, rq->addr);
	int64_t now = cgw_mono_ms();
	struct login_job *j;
	int slot = -1;

	l->seen_ms = now;
	if (l->locked_until_ms > now) {
		log_episode_bad(&con->bad_login, now, LOG_WARNING, "console",
				"login from %s refused: locked out after failed logins", rq->addr);
		return send_error(con, conn, MHD_HTTP_TOO_MANY_REQUESTS,
				  "登录失败次数过多，请 1 分钟后再试");
	}
	for (int i = 0; i < CONSOLE_LOGIN_WORKERS; i++)
		if (!con->busy[i]) {
			slot = i;
			break;
		}
	if (slot < 0)
		return send_error(con, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "busy, try again");
	j = calloc(1, sizeof(*j));
	if (!j)
		return MHD_NO;
	if (console_form_get(rq->body, rq->len, "user", j->user, sizeof(j->user)) < 0 ||
	    console_form_get(rq->body, rq->len, "password", j->password, sizeof(j->password)) < 0) {
		free(j);
		return send_error(con, conn, 400, "需要用户名和密码");
	}
	users_reload(con);
	const struct console_user *u = user_find(con, j->user);
	/* an unknown name costs the same time as a wrong password */
	snprintf(j->hash, sizeof(j->hash), "%s", u ? u->hash : con->dummy_hash);
	j->known = u != NULL;
	j->role = u ? u->role : CONSOLE_DUTY;
	j->con = con;
	j->req = rq;
	j->slot = slot;
	if (pthread_create(&con->workers[slot], NULL, login_worker, j) != 0) {
		explicit_bzero(j, sizeof(*j));
		free(j);
		return send_error(con, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "busy, try again");
	}
	con->busy[slot] = true;
	rq->job = j;
	rq->suspended = true;
	MHD_suspend_connection(conn);
	return MHD_YES;
}

static enum MHD_Result login_finish(struct console *con, struct req *rq)
{
	json_t *r = rq->result;
	int status = (int)json_integer_value(json_object_get(r, "status"));
	char cookie[256];

	rq->result = NULL;
	if (status != 200) {
		json_decref(r);
		return send_error(con, rq->conn, status == 401 ? 401 : 500,
				  status == 401 ? "用户名或密码错误" : "internal error");
	}
	cookie_str(con, cookie, sizeof(cookie), "cgw_session",
		   json_string_value(json_object_get(r, "token")), false);
	json_object_del(r, "token");
	json_object_del(r, "status");
	return send_json(con, rq->conn, 200, r, cookie);
}

static bool csrf_ok(struct MHD_Connection *conn, const char *expected)
{
	const char *h = header(conn, "X-CSRF-Token");
	return h && expected && same_token(h, expected);
}

static enum MHD_Result post(struct console *con, struct req *rq, const char *url)
{
	struct MHD_Connection *conn = rq->conn;
	const char *ct = header(conn, MHD_HTTP_HEADER_CONTENT_TYPE);
	char device[CONSOLE_FIELD_MAX], v[CONSOLE_FIELD_MAX];
	struct session *s;

	if (rq->too_big)
		return send_error(con, conn, MHD_HTTP_CONTENT_TOO_LARGE, "request too large");
	if (!ct || strncmp(ct, "application/x-www-form-urlencoded", 33))
		return send_error(con, conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
				  "application/x-www-form-urlencoded only");
	if (!strcmp(url, "/api/login")) {
		char pre[TOKEN_HEX + 2];
		if (console_cookie_get(header(conn, MHD_HTTP_HEADER_COOKIE), "cgw_login", pre,
				       sizeof(pre)) < 0 ||
		    !csrf_ok(conn, pre))
			return send_error(con, conn, MHD_HTTP_FORBIDDEN,
					  "missing or wrong CSRF token (reload the page)");
		return login_start(con, rq);
	}
	s = session_get(con, conn);
	if (!s)
		return send_error(con, conn, MHD_HTTP_UNAUTHORIZED, "not signed in");
	if (!csrf_ok(conn, s->csrf))
		return send_error(con, conn, MHD_HTTP_FORBIDDEN,
				  "missing or wrong CSRF token (reload the page)");
	if (!strcmp(url, "/api/logout")) {
		char cookie[256];
		log_notice("console", "%s signed out", s->user);
		audit(con, s->user, "logout", NULL, NULL, "ok", rq->addr);
		memset(s, 0, sizeof(*s));
		cookie_str(con, cookie, sizeof(cookie), "cgw_session", "", true);
		return send_json(con, conn, 200, json_pack("{s:s}", "result", "ok"), cookie);
	}
	if (!strcmp(url, "/api/ack")) {
		if (console_form_get(rq->body, rq->len, "alarm", v, sizeof(v)) < 0 ||
		    !strchr(v, '/'))
			return send_error(con, conn, 400, "需要报警编号");
		/* the device is the alarm id's first part */
		snprintf(device, sizeof(device), "%.*s", (int)(strchr(v, '/') - v), v);
		return command(con, rq, s, device,
			       json_pack("{s:s,s:s}", "action", "ack", "alarm", v));
	}
	/* installer tools: the server decides, whatever the page shows */
	bool scan = !strcmp(url, "/api/scan"), probe = !strcmp(url, "/api/probe");
	bool tool = scan || probe || !strcmp(url, "/api/shelve") || !strcmp(url, "/api/write");
	if (tool && s->role < CONSOLE_INSTALLER) {
		log_notice("console", "%s (%s) refused %s", s->user, console_role_name(s->role),
			   url);
		audit(con, s->user, url + 5, NULL, NULL, "rejected", "role");
		return send_error(con, conn, MHD_HTTP_FORBIDDEN, "仅限安装调试人员");
	}
	if (scan || probe)
		return commission(con, rq, s, scan);
	if (tool) {
		if (console_form_get(rq->body, rq->len, "device", device, sizeof(device)) < 0)
			return send_error(con, conn, 400, "需要设备");
	}
	if (!strcmp(url, "/api/shelve")) {
		bool on = console_form_get(rq->body, rq->len, "on", v, sizeof(v)) == 0 &&
			  !strcmp(v, "1");
		char by[64];
		snprintf(by, sizeof(by), "console:%s", s->user);
		int r = core_shelve(con->core, device, on, by);
		audit(con, s->user, on ? "shelve" : "unshelve", device, NULL,
		      r == 0 ? "ok" : "rejected", r ? strerror(-r) : NULL);
		if (r == 0)
			log_notice("console", "%s %s device %s", s->user,
				   on ? "shelved" : "unshelved", device);
		if (r == 0)
			return send_json(con, conn, 200,
					 json_pack("{s:s,s:s,s:b}", "result", "ok", "device",
						   device, "shelved", on),
					 NULL);
		return send_error(con, conn, r == -ENOENT ? 404 : 409,
				  r == -ENOENT   ? "no such device" :
				  r == -EALREADY ? (on ? "already shelved" : "not shelved") :
						   strerror(-r));
	}
	if (!strcmp(url, "/api/write")) {
		char point[CONSOLE_FIELD_MAX];
		json_t *val;
		if (console_form_get(rq->body, rq->len, "point", point, sizeof(point)) < 0 ||
		    console_form_get(rq->body, rq->len, "value", v, sizeof(v)) < 0)
			return send_error(con, conn, 400, "需要点位和值");
		val = json_loads(v, JSON_DECODE_ANY, NULL);
		if (!val)
			val = json_string(v);
		return command(con, rq, s, device,
			       json_pack("{s:s,s:s,s:o}", "action", "write", "point", point,
					 "value", val));
	}
	return send_error(con, conn, MHD_HTTP_NOT_FOUND, "not found");
}

static enum MHD_Result get(struct console *con, struct req *rq, const char *url)
{
	struct MHD_Connection *conn = rq->conn;
	struct session *s;

	if (!strcmp(url, "/") || !strcmp(url, "/index.html"))
		return send_buf(con, conn, 200, "text/html; charset=utf-8", console_index_html,
				console_index_html_len, false, NULL);
	if (!strcmp(url, "/app.js"))
		return send_buf(con, conn, 200, "text/javascript; charset=utf-8", console_app_js,
				console_app_js_len, false, NULL);
	if (!strcmp(url, "/style.css"))
		return send_buf(con, conn, 200, "text/css; charset=utf-8", console_style_css,
				console_style_css_len, false, NULL);
	s = session_get(con, conn);
	if (!strcmp(url, "/api/session")) {
		if (s)
			return send_json(con, conn, 200,
					 json_pack("{s:s,s:s,s:s,s:s,s:s}", "user", s->user, "role",
						   console_role_name(s->role), "csrf", s->csrf,
						   "gateway", core_config(con->core)->gateway.id,
						   "site", core_config(con->core)->gateway.site),
					 NULL);
		char pre[TOKEN_HEX + 1], cookie[256];
		if (random_hex(pre, TOKEN_HEX) < 0)
			return send_error(con, conn, 500, "no randomness");
		cookie_str(con, cookie, sizeof(cookie), "cgw_login", pre, false);
		users_reload(con);
		return send_json(con, conn, 401,
				 json_pack("{s:s,s:b}", "login_csrf", pre, "accounts",
					   con->n_users > 0),
				 cookie);
	}
	if (!strncmp(url, "/api/", 5) && !s)
		return send_error(con, conn, MHD_HTTP_UNAUTHORIZED, "not signed in");
	if (!strcmp(url, "/api/events"))
		return open_stream(con, conn, s);
	if (!strcmp(url, "/api/board"))
		return send_json(con, conn, 200, board_json(con), NULL);
	if (!strcmp(url, "/api/devices"))
		return send_json(con, conn, 200, json_pack("{s:o}", "devices", devices_json(con)),
				 NULL);
	if (!strcmp(url, "/api/history"))
		return history(con, conn);
	return send_error(con, conn, MHD_HTTP_NOT_FOUND, "not found");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	struct console *con = cls;
	struct req *rq = *con_cls;
	bool is_get = !strcmp(method, MHD_HTTP_METHOD_GET) || !strcmp(method, MHD_HTTP_METHOD_HEAD);

	(void)version;
	if (!rq) {
		if (!is_get && strcmp(method, MHD_HTTP_METHOD_POST))
			return send_error(con, conn, MHD_HTTP_METHOD_NOT_ALLOWED,
					  "method not allowed");
		rq = calloc(1, sizeof(*rq));
		if (!rq)
			return MHD_NO;
		rq->con = con;
		rq->conn = conn;
		client_addr(conn, rq->addr, sizeof(rq->addr));
		rq->next = con->reqs;
		if (con->reqs)
			con->reqs->prev = rq;
		con->reqs = rq;
		*con_cls = rq;
		return MHD_YES;
	}
	if (*upload_data_size) {
		if (is_get || rq->len + *upload_data_size > sizeof(rq->body)) {
			rq->too_big = !is_get;
		} else {
			memcpy(rq->body + rq->len, upload_data, *upload_data_size);
			rq->len += *upload_data_size;
		}
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (con->closing)
		return MHD_NO;
	if (rq->job)
		return MHD_YES; /* spurious: still checking the password */
	if (rq->started && rq->result && !rq->waiting)
		return login_finish(con, rq);
	if (rq->started && rq->waiting) {
		if (!rq->result)
			return MHD_YES;
		return finish_command(con, rq);
	}
	if (rq->started)
		return MHD_NO;
	rq->started = true;
	if (is_get)
		return get(con, rq, url);
	enum MHD_Result r = post(con, rq, url);
	/* a command answered at once: answer now */
	if (r == MHD_YES && rq->waiting && rq->result && !rq->suspended)
		return finish_command(con, rq);
	return r;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct console *con = cls;
	struct req *rq = *con_cls;

	(void)conn;
	(void)toe;
	if (!rq)
		return;
	if (rq->job)
		rq->job->req = NULL;
	if (rq->waiting)
		core_cancel_replies(con->core, rq);
	if (con->scanning == rq)
		con->scanning = NULL; /* the page went away; the bus's worker finishes it */
	if (rq->prev)
		rq->prev->next = rq->next;
	else
		con->reqs = rq->next;
	if (rq->next)
		rq->next->prev = rq->prev;
	json_decref(rq->result);
	explicit_bzero(rq->body, sizeof(rq->body));
	free(rq);
	*con_cls = NULL;
}

static int read_file(const char *path, char **out)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t n = 0;

	if (!f)
		return -errno;
	buf = malloc(1 << 20);
	if (buf)
		n = fread(buf, 1, (1 << 20) - 1, f);
	fclose(f);
	if (!buf)
		return -ENOMEM;
	buf[n] = '\0';
	*out = buf;
	return 0;
}

static bool same(const char *a, const char *b)
{
	return !strcmp(a ? a : "", b ? b : "");
}

static void settings(const struct cgw_config *cfg, char *out, size_t len)
{
	snprintf(out, len, "%s\n%s\n%s\n%s\n%s", cfg->console.listen ?: "",
		 cfg->console.tls_cert ?: "", cfg->console.tls_key ?: "", cfg->console.users ?: "",
		 cfg->gateway.state_dir ?: "");
}

bool console_matches(const struct console *con, const struct cgw_config *cfg)
{
	char now[sizeof(con->settings)];

	if (!con || !cfg->console.enabled)
		return !con && !cfg->console.enabled;
	settings(cfg, now, sizeof(now));
	return same(now, con->settings);
}

int console_open(struct core *c, struct loop *l, const struct cgw_config *cfg, struct console **out)
{
	struct console *con = NULL;
	struct sockaddr_storage ss;
	socklen_t sl;
	char *cert = NULL, *key = NULL, fp[CONSOLE_FINGERPRINT_LEN] = "";
	unsigned flags = MHD_ALLOW_SUSPEND_RESUME;
	int pfd[2] = {-1, -1}, r;

	*out = NULL;
	if (!cfg->console.enabled)
		return 0;
	if (metrics_parse_listen(cfg->console.listen, &ss, &sl) < 0) {
		log_err("console", "listen '%s' is not ADDRESS:PORT", cfg->console.listen);
		return -EINVAL;
	}
	con = calloc(1, sizeof(*con));
	if (!con)
		return -ENOMEM;
	con->core = c;
	con->loop = l;
	con->pipe_r = con->pipe_w = -1;
	snprintf(con->listen, sizeof(con->listen), "%s", cfg->console.listen);
	settings(cfg, con->settings, sizeof(con->settings));
	if (cfg->console.users && *cfg->console.users)
		snprintf(con->users_path, sizeof(con->users_path), "%s", cfg->console.users);
	else
		snprintf(con->users_path, sizeof(con->users_path), "%s/console-users",
			 cfg->gateway.state_dir);
	con->tls = cfg->console.tls_cert && *cfg->console.tls_cert;
	if (con->tls) {
		if (!MHD_is_feature_supported(MHD_FEATURE_TLS)) {
			log_err("console", "this libmicrohttpd has no TLS: cannot serve %s",
				con->listen);
			r = -ENOTSUP;
			goto fail;
		}
		if ((r = read_file(cfg->console.tls_cert, &cert)) < 0 ||
		    (r = read_file(cfg->console.tls_key, &key)) < 0) {
			log_err("console", "tls_cert/tls_key: %s", strerror(-r));
			goto fail;
		}
		if (console_cert_fingerprint(cert, fp) == 0)
			log_notice("console", "TLS certificate %s, SHA-256 fingerprint %s",
				   cfg->console.tls_cert, fp);
		flags |= MHD_USE_TLS;
	} else if (!metrics_addr_loopback(&ss)) {
		/* a LAN address and no certificate: ours, made once and kept */
		char why[512];
		bool made = false;
		if (!MHD_is_feature_supported(MHD_FEATURE_TLS)) {
			log_err("console", "this libmicrohttpd has no TLS: cannot serve %s",
				con->listen);
			r = -ENOTSUP;
			goto fail;
		}
		r = console_cert_ensure(cfg->gateway.state_dir, cfg->gateway.id, &ss, &cert, &key,
					fp, &made, why, sizeof(why));
		if (r < 0) {
			log_err("console",
				"%s is not loopback and needs TLS, but there is no certificate: %s "
				"(or set console.tls_cert and tls_key)",
				con->listen, why);
			goto fail;
		}
		log_notice("console", "TLS certificate %s/%s (%s), SHA-256 fingerprint %s",
			   cfg->gateway.state_dir, CONSOLE_CERT_FILE,
			   made ? "made now, at the first start: check this fingerprint in the "
				  "browser" :
				  "made by cgwd at its first start",
			   fp);
		con->tls = true;
		flags |= MHD_USE_TLS;
	}
	r = console_hash_password("no account has this password", con->dummy_hash,
				  sizeof(con->dummy_hash));
	if (r < 0) {
		log_err("console", "crypt(3) has no yescrypt: %s", strerror(-r));
		goto fail;
	}
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		r = -errno;
		goto fail;
	}
	con->pipe_r = pfd[0];
	con->pipe_w = pfd[1];
	fcntl(con->pipe_r, F_SETFL, O_NONBLOCK);
	con->tick = loop_timer_new(l, on_tick, con);
	if (!con->tick) {
		r = -ENOMEM;
		goto fail;
	}
	/* accepted, bounded and handed to MHD by the front that /metrics uses:
	 * slow clients cannot keep the duty room out; an event stream is an
	 * answer, not a slow request, and is never pushed out */
	struct http_front_conf hc = {
		.name = "console",
		.listen = con->listen,
		.addr = &ss,
		.addrlen = sl,
		.pending_max = CONSOLE_PENDING_MAX,
		.pending_per_ip = CONSOLE_PENDING_PER_ADDRESS,
		.max = CONSOLE_MAX_CONNECTIONS,
		.per_ip = CONSOLE_MAX_PER_ADDRESS,
		.request_ms = CONSOLE_REQUEST_MS,
		.conn_timeout_s = CONN_TIMEOUT_S,
		.conn_memory = CONN_MEMORY,
		.body_max = FRONT_BODY_MAX,
		.mhd_flags = flags,
		.tls_cert = cert,
		.tls_key = key,
		.handler = on_request,
		.completed = on_completed,
		.arg = con,
	};
	r = http_front_open(l, &hc, &con->front);
	if (r < 0)
		goto fail;
	r = loop_add_fd(l, con->pipe_r, EPOLLIN, on_pipe, con);
	if (r < 0)
		goto fail;
	if (cert)
		explicit_bzero(key, strlen(key));
	free(cert);
	free(key);
	users_reload(con);
	core_set_alarm_observer(c, on_alarm_change, con);
	con->next_beat_ms = cgw_mono_ms() + CONSOLE_HEARTBEAT_MS;
	loop_timer_at(con->tick, con->next_beat_ms);
	char url[200];
	snprintf(url, sizeof(url), "%s://%s/", con->tls ? "https" : "http", con->listen);
	core_set_console(c, url, fp[0] ? fp : NULL);
	log_info("console", "serving %s://%s/ (%zu accounts%s)", con->tls ? "https" : "http",
		 con->listen, con->n_users,
		 con->n_users ? "" : "; create one with: cgwctl user add NAME admin");
	*out = con;
	return 0;
fail:
	if (key)
		explicit_bzero(key, strlen(key));
	free(cert);
	free(key);
	console_close(con);
	return r;
}

void console_close(struct console *con)
{
	if (!con)
		return;
	core_set_alarm_observer(con->core, NULL, NULL);
	core_set_console(con->core, NULL, NULL);
	/* the password checks still running end first */
	for (int i = 0; i < CONSOLE_LOGIN_WORKERS; i++)
		if (con->busy[i]) {
			struct login_job *j;
			pthread_join(con->workers[i], NULL);
			con->busy[i] = false;
			(void)j;
		}
	if (con->pipe_r >= 0) {
		struct login_job *j;
		int fl = fcntl(con->pipe_r, F_GETFL);
		fcntl(con->pipe_r, F_SETFL, fl | O_NONBLOCK);
		while (read(con->pipe_r, &j, sizeof(j)) == (ssize_t)sizeof(j)) {
			if (j->req)
				j->req->job = NULL;
			free(j);
		}
		loop_del_fd(con->loop, con->pipe_r);
		close(con->pipe_r);
	}
	if (con->pipe_w >= 0)
		close(con->pipe_w);
	con->closing = true;
	for (struct stream *s = con->streams; s; s = s->next)
		if (s->suspended) {
			s->suspended = false;
			MHD_resume_connection(s->conn);
		}
	/* MHD may not stop with a request suspended (a scan, a write waiting for
	 * its device, a login) */
	for (struct req *rq = con->reqs; rq; rq = rq->next)
		if (rq->suspended) {
			rq->suspended = false;
			MHD_resume_connection(rq->conn);
		}
	/* runs MHD once more and stops it: every request ends (on_completed,
	 * stream_free) while con is still whole */
	http_front_close(con->front);
	loop_timer_free(con->tick);
	free(con->last_state);
	json_decref(con->backlog);
	explicit_bzero(con->sessions, sizeof(con->sessions));
	free(con);
}
