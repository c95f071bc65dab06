/*
 * control.c - the cgwctl socket: line-delimited JSON on a Unix stream
 * socket, on the core loop, never blocking it.
 *
 * A client is handled one request at a time: the next line is looked at only
 * once the previous response is written out and no command result is
 * pending. That keeps responses in order and bounds what a client can make
 * the daemon hold to one request (64 KiB) and one response.
 */
#include "control.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "commission.h"
#include "driver.h"
#include "episode.h"
#include "log.h"
#include "model.h"

#define CTL_MAX_CLIENTS 16
#define CTL_MAX_REQUEST (64 * 1024)
#define CTL_MAX_COMMAND 16384 /* what core_command_reply() accepts */
#define CTL_MAX_NAME 256      /* device, point, alarm names */
#define CTL_IDLE_MS 60000
#define CTL_REPLY_MS 30000
#define CTL_SCAN_MS (15 * 60000) /* a 247-unit scan between polls of a busy line */
#define CTL_RECORDS_DEFAULT 20
#define CTL_RECORDS_MAX 1000
#define CTL_ACCEPT_PAUSE_MS 1000
#define CTL_SOURCE "cgwctl"

struct client {
	struct control *ctl;
	int fd;
	char user[64];
	char *in;
	size_t in_len;
	char *out;
	size_t out_len, out_off;
	uint32_t events;  /* as registered with the loop */
	bool waiting;     /* a command result is due from the core */
	bool eof;         /* the peer will send nothing more */
	bool closing;     /* close once the output is written */
	bool in_pump;     /* client_pump() is on the stack */
	bool scanning;    /* waiting for a scan (CTL_SCAN_MS), not a command */
	int64_t deadline; /* mono ms: idle, or the command result */
};

struct control {
	struct core *core;
	struct loop *loop;
	int fd;
	char *path;
	dev_t dev;
	ino_t ino;
	bool accept_paused;
	int64_t accept_resume;
	struct episode accept_trouble;
	struct loop_timer *timer;
	struct client *clients[CTL_MAX_CLIENTS];
	long pid;
	long long t0;
	unsigned long long seq;
};

static void client_pump(struct client *cl);

/* ---- clients ------------------------------------------------------------------ */

static void arm_timer(struct control *ctl)
{
	int64_t due = ctl->accept_paused ? ctl->accept_resume : -1;

	for (size_t i = 0; i < CTL_MAX_CLIENTS; i++) {
		struct client *cl = ctl->clients[i];
		if (cl && (due < 0 || cl->deadline < due))
			due = cl->deadline;
	}
	loop_timer_at(ctl->timer, due);
}

static void client_free(struct client *cl)
{
	struct control *ctl = cl->ctl;

	if (cl->waiting)
		core_cancel_replies(ctl->core, cl);
	loop_del_fd(ctl->loop, cl->fd);
	close(cl->fd);
	for (size_t i = 0; i < CTL_MAX_CLIENTS; i++)
		if (ctl->clients[i] == cl)
			ctl->clients[i] = NULL;
	free(cl->in);
	free(cl->out);
	free(cl);
}

/* Queues one response line (obj is borrowed). */
static void respond(struct client *cl, json_t *obj)
{
	char *text = obj ? json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
	size_t n;
	char *nb;

	if (!text) {
		/* not even an error fits: the client learns it from the close */
		cl->closing = true;
		return;
	}
	n = strlen(text);
	nb = realloc(cl->out, cl->out_len + n + 1);
	if (!nb) {
		free(text);
		cl->closing = true;
		return;
	}
	cl->out = nb;
	memcpy(cl->out + cl->out_len, text, n);
	cl->out[cl->out_len + n] = '\n';
	cl->out_len += n + 1;
	free(text);
}

static void respond_status(struct client *cl, const char *result, const char *detail)
{
	json_t *o = json_pack("{s:s}", "result", result);

	if (o && detail)
		json_object_set_new(o, "detail", json_string(detail));
	respond(cl, o);
	json_decref(o);
}

static void on_reply(void *arg, json_t *result)
{
	struct client *cl = arg;

	if (!cl->waiting)
		return;
	cl->waiting = false;
	cl->deadline = cgw_mono_ms() + CTL_IDLE_MS;
	respond(cl, result);
	/* called from inside handle_request() (an immediate result) or later
	 * from the core (a write's outcome): only the latter drives the client */
	if (!cl->in_pump) {
		struct control *ctl = cl->ctl;
		client_pump(cl); /* may free cl */
		arm_timer(ctl);
	}
}

/* ---- requests ------------------------------------------------------------------ */

static const char *str_arg(json_t *req, const char *key)
{
	const char *s = json_string_value(json_object_get(req, key));

	return s && *s && strlen(s) <= CTL_MAX_NAME ? s : NULL;
}

static bool known_device(struct client *cl, const char *device)
{
	if (cfg_find_device(core_config(cl->ctl->core), device) >= 0)
		return true;
	char detail[CTL_MAX_NAME + 32];
	snprintf(detail, sizeof(detail), "no such device '%s'", device);
	respond_status(cl, "rejected", detail);
	return false;
}

/* Hands a command to the core; its result comes back through on_reply(). */
static void run_command(struct client *cl, const char *device, json_t *cmd)
{
	struct control *ctl = cl->ctl;
	char id[80];
	char *text;

	snprintf(id, sizeof(id), "ctl-%ld-%lld-%llu", ctl->pid, ctl->t0, ++ctl->seq);
	json_object_set_new(cmd, "id", json_string(id));
	json_object_set_new(cmd, "by", json_string(cl->user));
	text = json_dumps(cmd, JSON_COMPACT);
	if (!text) {
		respond_status(cl, "failed", "out of memory");
		return;
	}
	if (strlen(text) > CTL_MAX_COMMAND) {
		free(text);
		respond_status(cl, "rejected", "command longer than 16 KiB");
		return;
	}
	cl->waiting = true;
	cl->scanning = false;
	cl->deadline = cgw_mono_ms() + CTL_REPLY_MS;
	core_command_reply(ctl->core, CTL_SOURCE, device, text, strlen(text), on_reply, cl);
	free(text);
}

/* "DEVICE/RULE[/RAISED_AT]" names its device; a bare rule name is taken if
 * exactly one device has that alarm active. */
static void cmd_ack(struct client *cl, json_t *req)
{
	const char *alarm = str_arg(req, "alarm");
	char device[CTL_MAX_NAME + 1], detail[2 * CTL_MAX_NAME + 128];
	const char *key = alarm;
	json_t *all = NULL;

	if (!alarm) {
		respond_status(cl, "rejected", "ack needs \"alarm\": an alarm id or DEVICE/RULE");
		return;
	}
	if (strchr(alarm, '/')) {
		size_t n = (size_t)(strchr(alarm, '/') - alarm);
		memcpy(device, alarm, n);
		device[n] = '\0';
	} else {
		json_t *a, *match = NULL;
		size_t i, count = 0;
		all = core_alarms_json(cl->ctl->core);
		json_array_foreach(all, i, a)
		{
			const char *rule = json_string_value(json_object_get(a, "alarm"));
			if (rule && !strcmp(rule, alarm)) {
				match = a;
				count++;
			}
		}
		if (count != 1) {
			if (count == 0)
				snprintf(detail, sizeof(detail), "no such active alarm '%s'",
					 alarm);
			else
				snprintf(
					detail, sizeof(detail),
					"%zu devices have an alarm '%s': give DEVICE/%s or the alarm id",
					count, alarm, alarm);
			respond_status(cl, "rejected", detail);
			json_decref(all);
			return;
		}
		const char *dev = json_string_value(json_object_get(match, "device"));
		key = json_string_value(json_object_get(match, "alarm_id"));
		snprintf(device, sizeof(device), "%s", dev ? dev : "");
		if (!key)
			key = alarm;
	}
	if (!*device || cfg_find_device(core_config(cl->ctl->core), device) < 0) {
		snprintf(detail, sizeof(detail), "no such active alarm '%s' (no device '%s')",
			 alarm, device);
		respond_status(cl, "rejected", detail);
	} else {
		json_t *cmd = json_pack("{s:s,s:s}", "action", "ack", "alarm", key);
		if (cmd)
			run_command(cl, device, cmd);
		else
			respond_status(cl, "failed", "out of memory");
		json_decref(cmd);
	}
	json_decref(all);
}

static void cmd_point(struct client *cl, json_t *req, bool write)
{
	const char *device = str_arg(req, "device"), *point = str_arg(req, "point");
	json_t *value = json_object_get(req, "value"), *cmd;

	if (!device || !point) {
		respond_status(cl, "rejected",
			       write ? "write needs \"device\", \"point\" and \"value\"" :
				       "read needs \"device\" and \"point\"");
		return;
	}
	if (write && (!value || json_is_null(value))) {
		respond_status(cl, "rejected", "write needs \"value\"");
		return;
	}
	if (!known_device(cl, device))
		return;
	cmd = json_pack("{s:s,s:s}", "action", write ? "write" : "read", "point", point);
	if (cmd && write)
		json_object_set(cmd, "value", value);
	if (cmd)
		run_command(cl, device, cmd);
	else
		respond_status(cl, "failed", "out of memory");
	json_decref(cmd);
}

static void cmd_shelve(struct client *cl, json_t *req, bool shelve)
{
	const char *device = str_arg(req, "device");
	char by[96];
	int r;

	if (!device) {
		respond_status(cl, "rejected",
			       shelve ? "shelve needs \"device\"" : "unshelve needs \"device\"");
		return;
	}
	if (!known_device(cl, device))
		return;
	snprintf(by, sizeof(by), CTL_SOURCE ":%s", cl->user);
	r = core_shelve(cl->ctl->core, device, shelve, by);
	if (r == 0) {
		/* not a platform command, so not in the audit: the journal has it */
		log_notice("control", "%s %s device %s", cl->user, shelve ? "shelved" : "unshelved",
			   device);
		json_t *o = json_pack("{s:s,s:s,s:b}", "result", "ok", "device", device, "shelved",
				      shelve);
		respond(cl, o);
		json_decref(o);
	} else {
		respond_status(cl, "rejected",
			       r == -EALREADY ? (shelve ? "already shelved" : "not shelved") :
			       r == -ENOENT   ? "no such device" :
						strerror(-r));
	}
}

static void cmd_info(struct client *cl, const char *cmd, json_t *data);

/* ---- commissioning and records ----------------------------------------------------- */

/* An integer member in [lo, hi], or def when absent; -1 when invalid. */
static long long int_arg(json_t *req, const char *key, long long lo, long long hi, long long def)
{
	json_t *v = json_object_get(req, key);

	if (!v)
		return def;
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return -1;
	return json_integer_value(v);
}

/* scan / probe: checked by commission_request() (the console's too), run by
 * the bus's own worker. */
static void cmd_commission(struct client *cl, json_t *req, bool scan)
{
	struct driver_commission dc;
	char detail[CTL_MAX_NAME + 160];
	const char *bus = NULL, *units = str_arg(req, "units");
	int r;

	if (commission_request(core_config(cl->ctl->core), req, scan, &dc, &bus, detail,
			       sizeof(detail)) < 0) {
		respond_status(cl, "rejected", detail);
		return;
	}
	r = core_commission(cl->ctl->core, bus, &dc, on_reply, cl);
	if (r < 0) {
		commission_refusal(r, bus, detail, sizeof(detail));
		respond_status(cl, "rejected", detail);
		return;
	}
	log_notice("control", "%s %s bus %s%s%s", cl->user, scan ? "scans" : "probes", bus,
		   scan ? " units " : "", scan ? (units ? units : "1-247") : "");
	cl->waiting = true;
	cl->scanning = scan;
	cl->deadline = cgw_mono_ms() + (scan ? CTL_SCAN_MS : CTL_REPLY_MS);
}

/* audit / quarantine / dead-letters: {"last": N} newest first. */
static void cmd_records(struct client *cl, json_t *req, const char *cmd, const char *table)
{
	long long last = int_arg(req, "last", 1, CTL_RECORDS_MAX, CTL_RECORDS_DEFAULT);
	json_t *rows;

	if (last < 0) {
		respond_status(cl, "rejected", "\"last\": 1..1000");
		return;
	}
	rows = core_records_json(cl->ctl->core, table, (unsigned)last);
	if (!rows) {
		respond_status(cl, "failed", "the store could not be read (see the journal)");
		return;
	}
	cmd_info(cl, cmd, rows);
}

/* {"cmd":"replay","id":N} or {"cmd":"replay","all":true} */
static void cmd_replay(struct client *cl, json_t *req)
{
	json_t *jid = json_object_get(req, "id");
	bool all = json_is_true(json_object_get(req, "all"));
	int64_t id = json_is_integer(jid) ? (int64_t)json_integer_value(jid) : 0;
	uint64_t n = 0, skipped = 0;
	int r;

	if (all == (id > 0)) {
		respond_status(cl, "rejected",
			       "replay needs \"id\" (a positive integer) or \"all\": true");
		return;
	}
	r = core_dead_letter_replay(cl->ctl->core, all ? 0 : id, &n, &skipped);
	if (r < 0) {
		respond_status(
			cl, r == -ENOENT ? "rejected" : "failed",
			r == -ENOENT ?
				"no such dead letter" :
			r == -ENODEV ?
				"the uplink that refused it is gone or no longer takes its lane" :
				strerror(-r));
		return;
	}
	log_notice("control", "%s replayed %llu dead letter%s", cl->user, (unsigned long long)n,
		   n == 1 ? "" : "s");
	json_t *o = json_pack("{s:s,s:I,s:I}", "result", "ok", "replayed", (json_int_t)n, "skipped",
			      (json_int_t)skipped);
	respond(cl, o);
	json_decref(o);
}

static void cmd_info(struct client *cl, const char *cmd, json_t *data)
{
	json_t *o = json_pack("{s:s,s:o}", "result", "ok", cmd, data);

	if (!o) {
		respond_status(cl, "failed", "out of memory");
		return;
	}
	respond(cl, o);
	json_decref(o);
}

/* The core's status and the loop's stall meter. */
static json_t *status_json(struct control *ctl)
{
	json_t *st = core_status_json(ctl->core);
	struct loop_stats ls;

	loop_get_stats(ctl->loop, &ls);
	if (st)
		json_object_set_new(
			st, "loop",
			json_pack("{s:I,s:f,s:f,s:s,s:I,s:I}", "iterations",
				  (json_int_t)ls.iterations, "mean_iteration_s",
				  ls.iterations ? ls.sum_s / (double)ls.iterations : 0.0,
				  "longest_iteration_s", (double)ls.longest_ns / 1e9, "longest_in",
				  ls.longest_what, "longest_at", (json_int_t)ls.longest_at_ms,
				  "stalls", (json_int_t)ls.stalls));
	return st;
}

static void handle_request(struct client *cl, const char *line, size_t len)
{
	struct core *core = cl->ctl->core;
	json_error_t jerr;
	json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	const char *cmd = json_string_value(json_object_get(req, "cmd"));

	if (!req || !json_is_object(req) || !cmd) {
		char detail[220];
		snprintf(detail, sizeof(detail), "%s%s",
			 req ? "a request is a JSON object with \"cmd\"" : "not JSON: ",
			 req ? "" : jerr.text);
		respond_status(cl, "rejected", detail);
	} else if (!strcmp(cmd, "status")) {
		cmd_info(cl, cmd, status_json(cl->ctl));
	} else if (!strcmp(cmd, "devices")) {
		cmd_info(cl, cmd, core_devices_json(core));
	} else if (!strcmp(cmd, "alarms")) {
		cmd_info(cl, cmd, core_alarms_json(core));
	} else if (!strcmp(cmd, "queue")) {
		cmd_info(cl, cmd, core_queue_json(core));
	} else if (!strcmp(cmd, "replay")) {
		cmd_replay(cl, req);
	} else if (!strcmp(cmd, "ack")) {
		cmd_ack(cl, req);
	} else if (!strcmp(cmd, "read") || !strcmp(cmd, "write")) {
		cmd_point(cl, req, !strcmp(cmd, "write"));
	} else if (!strcmp(cmd, "shelve") || !strcmp(cmd, "unshelve")) {
		cmd_shelve(cl, req, !strcmp(cmd, "shelve"));
	} else if (!strcmp(cmd, "scan") || !strcmp(cmd, "probe")) {
		cmd_commission(cl, req, !strcmp(cmd, "scan"));
	} else if (!strcmp(cmd, "audit")) {
		cmd_records(cl, req, cmd, "audit");
	} else if (!strcmp(cmd, "quarantine")) {
		cmd_records(cl, req, cmd, "quarantine");
	} else if (!strcmp(cmd, "dead-letters")) {
		cmd_records(cl, req, cmd, "dead_letter");
	} else {
		respond_status(cl, "rejected",
			       "unknown cmd (status, devices, alarms, queue, ack, read, write, "
			       "shelve, unshelve, scan, probe, audit, quarantine, dead-letters, "
			       "replay)");
	}
	json_decref(req);
}

/* ---- I/O -------------------------------------------------------------------------- */

static void set_events(struct client *cl)
{
	uint32_t ev = 0;

	/* read only what we can hold and will look at; output first */
	if (!cl->eof && !cl->closing && cl->in_len <= CTL_MAX_REQUEST)
		ev |= EPOLLIN;
	if (cl->out_off < cl->out_len)
		ev |= EPOLLOUT;
	if (ev != cl->events && loop_mod_fd(cl->ctl->loop, cl->fd, ev) == 0)
		cl->events = ev;
}

/* 0, or -1 if the client is gone (freed). */
static int flush_out(struct client *cl)
{
	while (cl->out_off < cl->out_len) {
		ssize_t n = send(cl->fd, cl->out + cl->out_off, cl->out_len - cl->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			client_free(cl);
			return -1;
		}
		cl->out_off += (size_t)n;
		cl->deadline = cgw_mono_ms() + (cl->waiting ? CTL_REPLY_MS : CTL_IDLE_MS);
	}
	cl->out_off = cl->out_len = 0;
	return 0;
}

/* Moves the client on as far as it can go without blocking. */
static void client_pump(struct client *cl)
{
	cl->in_pump = true;
	for (;;) {
		if (flush_out(cl) < 0)
			return;
		if (cl->out_len) /* the socket is full: wait for EPOLLOUT */
			break;
		if (cl->closing) {
			client_free(cl);
			return;
		}
		if (cl->waiting)
			break;
		char *nl = cl->in_len ? memchr(cl->in, '\n', cl->in_len) : NULL;
		if (!nl && cl->in_len > CTL_MAX_REQUEST) {
			respond_status(cl, "rejected", "request line longer than 64 KiB");
			cl->closing = true;
			continue;
		}
		if (!nl && !(cl->eof && cl->in_len))
			break;
		/* the last line may lack its newline when the peer shut down */
		size_t len = nl ? (size_t)(nl - cl->in) : cl->in_len;
		size_t used = nl ? len + 1 : len;
		if (len && cl->in[len - 1] == '\r')
			len--;
		if (len)
			handle_request(cl, cl->in, len);
		memmove(cl->in, cl->in + used, cl->in_len - used);
		cl->in_len -= used;
	}
	if (cl->eof && !cl->waiting && !cl->out_len && !cl->in_len) {
		client_free(cl);
		return;
	}
	cl->in_pump = false;
	set_events(cl);
}

static void on_client(struct loop *l, int fd, uint32_t events, void *arg)
{
	struct client *cl = arg;
	char buf[4096];

	(void)l;
	if (events & (EPOLLERR | EPOLLHUP)) {
		/* the peer is gone: a pending result has nobody to go to */
		client_free(cl);
		return;
	}
	if (events & EPOLLIN) {
		/* at most one request past the limit is buffered */
		while (!cl->eof && cl->in_len <= CTL_MAX_REQUEST) {
			size_t room = CTL_MAX_REQUEST + 1 - cl->in_len;
			ssize_t n = recv(fd, buf, room < sizeof(buf) ? room : sizeof(buf),
					 MSG_DONTWAIT);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					break;
				client_free(cl);
				return;
			}
			if (n == 0) {
				cl->eof = true;
				break;
			}
			memcpy(cl->in + cl->in_len, buf, (size_t)n);
			cl->in_len += (size_t)n;
			if (!cl->waiting)
				cl->deadline = cgw_mono_ms() + CTL_IDLE_MS;
		}
	}
	struct control *ctl = cl->ctl;
	client_pump(cl); /* may free cl */
	arm_timer(ctl);
}

static void user_name(uid_t uid, char *out, size_t len)
{
	struct passwd pw, *res = NULL;
	char buf[2048];

	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) == 0 && res && res->pw_name)
		snprintf(out, len, "%s", res->pw_name);
	else
		snprintf(out, len, "uid:%u", (unsigned)uid);
}

static void reject_busy(int fd)
{
	static const char msg[] = "{\"result\":\"rejected\",\"detail\":\"too many cgwctl clients; "
				  "try again\"}\n";
	ssize_t n = send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);

	(void)n;
	close(fd);
}

static void on_accept(struct loop *l, int fd, uint32_t events, void *arg)
{
	struct control *ctl = arg;

	(void)events;
	for (;;) {
		int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct client *cl = NULL;
		struct ucred cred;
		socklen_t clen = sizeof(cred);
		size_t slot;

		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				/* out of fds: the connection stays queued and the
				 * listener would fire at once again, so pause it */
				/* out of fds lasts: once per episode, not every
				 * pause */
				log_episode_bad(&ctl->accept_trouble, cgw_mono_ms(), LOG_WARNING,
						"control", "accept on %s: %s; pausing for %d ms",
						ctl->path, strerror(errno), CTL_ACCEPT_PAUSE_MS);
				loop_mod_fd(l, fd, 0);
				ctl->accept_paused = true;
				ctl->accept_resume = cgw_mono_ms() + CTL_ACCEPT_PAUSE_MS;
				arm_timer(ctl);
			}
			return;
		}
		if (ctl->accept_trouble.active)
			log_episode_good(&ctl->accept_trouble, cgw_mono_ms(), "control",
					 "accept on %s works again", ctl->path);
		for (slot = 0; slot < CTL_MAX_CLIENTS && ctl->clients[slot]; slot++)
			;
		if (slot == CTL_MAX_CLIENTS) {
			reject_busy(cfd);
			continue;
		}
		cl = calloc(1, sizeof(*cl));
		if (cl)
			cl->in = malloc(CTL_MAX_REQUEST + 1);
		if (!cl || !cl->in || loop_add_fd(l, cfd, EPOLLIN, on_client, cl) < 0) {
			if (cl)
				free(cl->in);
			free(cl);
			close(cfd);
			continue;
		}
		cl->ctl = ctl;
		cl->fd = cfd;
		cl->events = EPOLLIN;
		cl->deadline = cgw_mono_ms() + CTL_IDLE_MS;
		if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0)
			user_name(cred.uid, cl->user, sizeof(cl->user));
		else
			snprintf(cl->user, sizeof(cl->user), "unknown");
		ctl->clients[slot] = cl;
		log_debug("control", "client %s connected", cl->user);
		arm_timer(ctl);
	}
}

static void on_timer(struct loop *l, struct loop_timer *t, void *arg)
{
	struct control *ctl = arg;
	int64_t now = cgw_mono_ms();

	(void)t;
	if (ctl->accept_paused && now >= ctl->accept_resume) {
		ctl->accept_paused = false;
		loop_mod_fd(l, ctl->fd, EPOLLIN);
	}
	for (size_t i = 0; i < CTL_MAX_CLIENTS; i++) {
		struct client *cl = ctl->clients[i];
		if (!cl || cl->deadline > now)
			continue;
		if (cl->waiting) {
			/* the device or the core never answered (a reload drops
			 * writes in flight): say so, the audit has the rest */
			core_cancel_replies(ctl->core, cl);
			cl->waiting = false;
			cl->deadline = now + CTL_IDLE_MS;
			respond_status(cl, "failed",
				       cl->scanning ?
					       "no result within 15 minutes; the scan may "
					       "still be running (see the journal)" :
					       "no result within 30 s; the command may still "
					       "complete (see the journal)");
			client_pump(cl);
		} else {
			log_debug("control", "client %s idle: closed", cl->user);
			client_free(cl);
		}
	}
	arm_timer(ctl);
}

/* ---- the socket -------------------------------------------------------------------- */

/* A socket file left by a cgwd that died is removed; one that answers
 * belongs to a running cgwd and is left alone. */
static int clear_stale(const char *path, const struct sockaddr_un *sa)
{
	struct stat st;
	int fd, r;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode)) {
		log_err("control", "%s exists and is not a socket; not touching it", path);
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	r = r == 0 || errno == EAGAIN ? -EADDRINUSE : errno == ECONNREFUSED ? 0 : -errno;
	close(fd);
	if (r == -EADDRINUSE) {
		log_err("control", "%s: another cgwd is answering on it", path);
		return r;
	}
	if (r < 0) {
		log_err("control", "%s: %s", path, strerror(-r));
		return r;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		r = -errno;
		log_err("control", "cannot remove the stale socket %s: %s", path, strerror(-r));
		return r;
	}
	return 0;
}

static int lookup_group(const char *name, gid_t *gid)
{
	struct group gr, *res = NULL;
	char buf[4096];
	int r = getgrnam_r(name, &gr, buf, sizeof(buf), &res);

	if (r != 0)
		return -r;
	if (!res)
		return -ENOENT;
	*gid = res->gr_gid;
	return 0;
}

int control_open(struct core *c, struct loop *l, const struct cgw_config *cfg, struct control **out)
{
	struct control *ctl = NULL;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	const char *path = cfg->control.socket;
	const char *group = cfg->control.group;
	struct stat st;
	gid_t gid = (gid_t)-1;
	int r;

	*out = NULL;
	if (!path || !*path || strlen(path) >= sizeof(sa.sun_path)) {
		log_err("control", "socket path '%s' is empty or longer than %zu bytes",
			path ? path : "", sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (group && *group && (r = lookup_group(group, &gid)) < 0) {
		log_err("control", "group '%s' for %s: %s", group, path,
			r == -ENOENT ? "no such group" : strerror(-r));
		return r;
	}
	ctl = calloc(1, sizeof(*ctl));
	if (!ctl)
		return -ENOMEM;
	ctl->core = c;
	ctl->loop = l;
	ctl->fd = -1;
	ctl->pid = (long)getpid();
	ctl->t0 = (long long)(cgw_now_ms() / 1000);
	ctl->path = strdup(path);
	ctl->timer = loop_timer_new(l, on_timer, ctl);
	if (!ctl->path || !ctl->timer) {
		r = -ENOMEM;
		goto fail;
	}
	r = clear_stale(path, &sa);
	if (r < 0)
		goto fail;
	ctl->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (ctl->fd < 0) {
		r = -errno;
		log_err("control", "socket: %s", strerror(-r));
		goto fail;
	}
	if (bind(ctl->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		log_err("control", "bind %s: %s", path, strerror(-r));
		goto fail;
	}
	/* bound under the daemon's umask, so nobody got in before this */
	if (chmod(path, 0660) < 0 || (gid != (gid_t)-1 && chown(path, (uid_t)-1, gid) < 0) ||
	    stat(path, &st) < 0) {
		r = -errno;
		log_err("control", "%s: setting mode 0660%s%s: %s", path,
			gid != (gid_t)-1 ? " and group " : "", gid != (gid_t)-1 ? group : "",
			strerror(-r));
		unlink(path);
		goto fail;
	}
	ctl->dev = st.st_dev;
	ctl->ino = st.st_ino;
	if (listen(ctl->fd, CTL_MAX_CLIENTS) < 0 ||
	    (r = loop_add_fd(l, ctl->fd, EPOLLIN, on_accept, ctl)) < 0) {
		r = r < 0 ? r : -errno;
		log_err("control", "listen on %s: %s", path, strerror(-r));
		unlink(path);
		goto fail;
	}
	log_info("control", "cgwctl socket %s", path);
	*out = ctl;
	return 0;
fail:
	if (ctl->fd >= 0)
		close(ctl->fd);
	loop_timer_free(ctl->timer);
	free(ctl->path);
	free(ctl);
	return r;
}

void control_close(struct control *ctl)
{
	struct stat st;

	if (!ctl)
		return;
	for (size_t i = 0; i < CTL_MAX_CLIENTS; i++)
		if (ctl->clients[i])
			client_free(ctl->clients[i]);
	loop_del_fd(ctl->loop, ctl->fd);
	close(ctl->fd);
	/* a cgwd started since may have replaced it: only remove our own */
	if (stat(ctl->path, &st) == 0 && st.st_dev == ctl->dev && st.st_ino == ctl->ino)
		unlink(ctl->path);
	loop_timer_free(ctl->timer);
	free(ctl->path);
	free(ctl);
}
