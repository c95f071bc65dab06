/*
 * cgwctl - ask a running cgwd how it is, and tell it what to do.
 *
 * One request per run over the control socket (daemon/control.h: a JSON
 * object per line each way). Tables for people, --json for scripts.
 * Exit status: 0 ok, 1 the command failed or was rejected, 2 usage,
 * 3 cgwd cannot be reached.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "console_users.h"

#define CGW_VERSION "0.1.0"
#define DEFAULT_SOCKET "/run/cgw/cgwd.sock"
#define DEFAULT_TIMEOUT_S 40 /* the daemon gives up on a write after 30 s */
#define MAX_RESPONSE (256u << 20)

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

static const char *const lanes[] = {"alarm", "event", "status", "telemetry"};
static const char *const severities[] = {"critical", "major", "minor", "warning"};

static void usage(FILE *f)
{
	fputs("Usage: cgwctl [-s SOCKET] [--json] COMMAND [ARGUMENT...]\n"
	      "\n"
	      "cgwctl asks the running cgwd (the community gateway daemon) how it is, and\n"
	      "acknowledges alarms, shelves devices, reads and writes points through it.\n"
	      "\n"
	      "Commands:\n"
	      "  status                    uptime, configuration file and hash, store size,\n"
	      "                            active alarms by severity, buses and their health,\n"
	      "                            uplinks and since when they are up or down, and the\n"
	      "                            outbox per uplink and lane\n"
	      "  devices                   every device: state, last good read, error counts\n"
	      "  alarms                    every alarm that is not normal, worst first\n"
	      "  queue                     undelivered messages and the oldest one's age, per\n"
	      "                            uplink and lane\n"
	      "  ack ALARM                 acknowledge an alarm: DEVICE/RULE (its current\n"
	      "                            occurrence), its alarm id DEVICE/RULE/RAISED_AT, or a\n"
	      "                            bare RULE that is active on one device only\n"
	      "  shelve DEVICE             shelve the device's alarms for maintenance: they are\n"
	      "                            still evaluated and sent, marked \"shelved\" (fire\n"
	      "                            alarms are never shelved)\n"
	      "  unshelve DEVICE           end the shelving\n"
	      "  user add NAME ROLE | del NAME | passwd NAME | list\n"
	      "                            web console accounts (roles duty, installer,\n"
	      "                            admin), in the accounts file: --users FILE, or\n"
	      "                            the one -c CONFIG names (console.users)\n"
	      "  read DEVICE POINT         the last value read from the point\n"
	      "  write DEVICE POINT VALUE  write a point marked writable in its profile, and wait\n"
	      "                            for the device's answer. VALUE is taken as JSON if it\n"
	      "                            parses (true, 1, 2.5, \"text\"), else as a string (an\n"
	      "                            enum word such as unlocked)\n"
	      "\n"
	      "Commissioning, on the live daemon, through the bus's own worker between polls\n"
	      "(never a second client on the line; only a bus named in cgw.yaml):\n"
	      "  scan BUS [UNITS]          which unit ids answer (a one-register read of\n"
	      "                            holding 0), with what exception or timeout; UNITS\n"
	      "                            like 1-247 (the default) or 1,3,5-9. One unit at a\n"
	      "                            time, only in the idle time between polls, so live\n"
	      "                            devices keep their schedule\n"
	      "  probe BUS UNIT TABLE ADDRESS [COUNT]\n"
	      "                            read COUNT (default 4) registers or bits from TABLE\n"
	      "                            (coil, discrete, input, holding) at the 0-based\n"
	      "                            ADDRESS, and show them as uint16/int16, int32,\n"
	      "                            uint32 and float32 in all four word/byte orders,\n"
	      "                            int64, uint64 and float64, and ASCII\n"
	      "\n"
	      "Records (newest first, N of them, default 20):\n"
	      "  audit [N]                 the command audit: who asked what, and the result\n"
	      "  quarantine [N]            MQTT payloads set aside as malformed, and why\n"
	      "  dead-letters [list] [N]   messages an HTTP endpoint refused for good (events\n"
	      "                            and telemetry; alarms and device states are never\n"
	      "                            dead letters: they are retried)\n"
	      "  dead-letters replay ID|--all\n"
	      "                            send a dead letter (or all) again, to the uplink that\n"
	      "                            refused it, as a new message (a new id, its own ts)\n"
	      "\n"
	      "ack, read and write are recorded in cgwd's command audit with your user name,\n"
	      "exactly like commands from the platform.\n"
	      "\n"
	      "Options:\n"
	      "  -s, --socket PATH     cgwd's control socket (default: $CGW_SOCKET, else\n"
	      "                        " DEFAULT_SOCKET ")\n"
	      "  -j, --json            print the daemon's JSON instead of tables, for scripts\n"
	      "  -t, --timeout SECONDS how long to wait for the answer (default 40; scan 960)\n"
	      "  -h, --help            this text\n"
	      "  -V, --version         print the version\n"
	      "\n"
	      "The socket is mode 0660 and belongs to cgwd's group (control.group in\n"
	      "cgw.yaml, normally cgw): add yourself with `usermod -aG cgw USER`.\n"
	      "\n"
	      "Exit status: 0 ok; 1 the command failed or was rejected (the reason is on\n"
	      "stderr); 2 usage; 3 cgwd cannot be reached.\n"
	      "\n"
	      "Examples:\n"
	      "  cgwctl status\n"
	      "  cgwctl ack smoke-b3-3f-01/smoke\n"
	      "  cgwctl write door-b3-east lock '\"unlocked\"'\n"
	      "  cgwctl --json devices\n"
	      "\n"
	      "See cgwctl(1), cgwd(8), cgw.yaml(5).\n",
	      f);
}

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("cgwctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'cgwctl --help'.\n", stderr);
	return EXIT_USAGE;
}

/* ---- talking to cgwd ------------------------------------------------------------ */

/* Sends one request and reads one response line. Returns EXIT_OK and
 * *resp, or EXIT_UNREACHABLE after saying why. */
static int transact(const char *path, json_t *req, int timeout_s, json_t **resp)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char *text = NULL, *buf = NULL;
	size_t len = 0, cap = 0, off = 0, tlen;
	int fd = -1, rc = EXIT_UNREACHABLE;
	struct timespec t0;
	json_error_t jerr;

	*resp = NULL;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "cgwctl: socket path too long: %s\n", path);
		return EXIT_UNREACHABLE;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "cgwctl: socket: %s\n", strerror(errno));
		return EXIT_UNREACHABLE;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == ENOENT || errno == ECONNREFUSED)
			fprintf(stderr, "cgwctl: cgwd is not running (no socket at %s)\n", path);
		else if (errno == EACCES || errno == EPERM)
			fprintf(stderr,
				"cgwctl: cannot use %s: permission denied; are you in group cgw?\n",
				path);
		else
			fprintf(stderr, "cgwctl: cannot connect to cgwd at %s: %s\n", path,
				strerror(errno));
		goto out;
	}
	text = json_dumps(req, JSON_COMPACT);
	if (!text) {
		fprintf(stderr, "cgwctl: out of memory\n");
		goto out;
	}
	tlen = strlen(text);
	text[tlen++] = '\n'; /* replaces the NUL: the length is what counts */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct timespec now;
		struct pollfd p = {.fd = fd, .events = off < tlen ? POLLOUT : POLLIN};
		clock_gettime(CLOCK_MONOTONIC, &now);
		long long left =
			(long long)timeout_s * 1000 -
			((now.tv_sec - t0.tv_sec) * 1000LL + (now.tv_nsec - t0.tv_nsec) / 1000000);
		if (left <= 0) {
			fprintf(stderr, "cgwctl: cgwd did not answer within %d s\n", timeout_s);
			goto out;
		}
		int n = poll(&p, 1, left > 60000 ? 60000 : (int)left);
		if (n < 0 && errno != EINTR) {
			fprintf(stderr, "cgwctl: poll: %s\n", strerror(errno));
			goto out;
		}
		if (n <= 0)
			continue;
		if (off < tlen) {
			ssize_t w = send(fd, text + off, tlen - off, MSG_NOSIGNAL);
			if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) {
				/* cgwd answered and closed before reading us (too
				 * many clients): read what it said */
				off = tlen;
				continue;
			}
			if (w < 0 && errno != EINTR && errno != EAGAIN) {
				fprintf(stderr, "cgwctl: sending to cgwd: %s\n", strerror(errno));
				goto out;
			}
			off += w > 0 ? (size_t)w : 0;
			continue;
		}
		if (len + 65536 + 1 > cap) {
			if (cap >= MAX_RESPONSE) {
				fprintf(stderr, "cgwctl: the answer is larger than %u MiB\n",
					MAX_RESPONSE >> 20);
				goto out;
			}
			char *nb = realloc(buf, cap ? cap * 2 : 131072);
			if (!nb) {
				fprintf(stderr, "cgwctl: out of memory\n");
				goto out;
			}
			buf = nb;
			cap = cap ? cap * 2 : 131072;
		}
		ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r <= 0) {
			fprintf(stderr,
				"cgwctl: cgwd closed the connection without an answer%s%s\n",
				r < 0 ? ": " : "", r < 0 ? strerror(errno) : "");
			goto out;
		}
		len += (size_t)r;
		char *nl = memchr(buf + len - (size_t)r, '\n', (size_t)r);
		if (!nl)
			continue;
		*resp = json_loadb(buf, (size_t)(nl - buf), 0, &jerr);
		if (!json_is_object(*resp)) {
			fprintf(stderr, "cgwctl: cgwd's answer is not a JSON object: %s\n",
				*resp ? "unexpected type" : jerr.text);
			json_decref(*resp);
			*resp = NULL;
			goto out;
		}
		rc = EXIT_OK;
		break;
	}
out:
	free(text);
	free(buf);
	close(fd);
	return rc;
}

/* ---- formatting -------------------------------------------------------------------- */

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
	va_list ap;
	char *s = NULL;

	va_start(ap, f);
	if (vasprintf(&s, f, ap) < 0)
		s = NULL;
	va_end(ap);
	if (!s) {
		fputs("cgwctl: out of memory\n", stderr);
		exit(EXIT_FAILED);
	}
	return s;
}

static const char *jstr(const json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : "";
}

static long long jint(const json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	return json_is_number(v) ? (long long)json_number_value(v) : 0;
}

/* Columns on a terminal: CJK and other wide characters take two, combining
 * marks none (device names are often Chinese). Independent of the locale. */
static size_t display_width(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t w = 0;

	while (*p) {
		uint32_t c;
		int n;
		if (*p < 0x80) {
			c = *p;
			n = 1;
		} else if ((*p & 0xe0) == 0xc0) {
			c = *p & 0x1f;
			n = 2;
		} else if ((*p & 0xf0) == 0xe0) {
			c = *p & 0x0f;
			n = 3;
		} else if ((*p & 0xf8) == 0xf0) {
			c = *p & 0x07;
			n = 4;
		} else {
			w++;
			p++;
			continue;
		}
		int i;
		for (i = 1; i < n && (p[i] & 0xc0) == 0x80; i++)
			c = (c << 6) | (p[i] & 0x3f);
		p += i;
		if (i < n) {
			w++;
			continue;
		}
		if ((c >= 0x300 && c <= 0x36f) || c == 0x200b || (c >= 0xfe00 && c <= 0xfe0f))
			continue;
		if ((c >= 0x1100 && c <= 0x115f) || (c >= 0x2e80 && c <= 0xa4cf && c != 0x303f) ||
		    (c >= 0xac00 && c <= 0xd7a3) || (c >= 0xf900 && c <= 0xfaff) ||
		    (c >= 0xfe30 && c <= 0xfe4f) || (c >= 0xff00 && c <= 0xff60) ||
		    (c >= 0xffe0 && c <= 0xffe6) || (c >= 0x1f300 && c <= 0x1f64f) ||
		    (c >= 0x20000 && c <= 0x3fffd))
			w += 2;
		else
			w += 1;
	}
	return w;
}

#define MAX_COLS 12

struct table {
	size_t ncols, nrows;
	const char *head[MAX_COLS];
	char **cells; /* nrows * ncols, owned */
};

static void table_init(struct table *t, size_t ncols, ...)
{
	va_list ap;

	memset(t, 0, sizeof(*t));
	t->ncols = ncols;
	va_start(ap, ncols);
	for (size_t i = 0; i < ncols; i++)
		t->head[i] = va_arg(ap, const char *);
	va_end(ap);
}

/* Takes ncols strings made by fmt(). */
static void table_row(struct table *t, ...)
{
	va_list ap;
	char **nc = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(*nc));

	if (!nc) {
		fputs("cgwctl: out of memory\n", stderr);
		exit(EXIT_FAILED);
	}
	t->cells = nc;
	va_start(ap, t);
	for (size_t i = 0; i < t->ncols; i++)
		t->cells[t->nrows * t->ncols + i] = va_arg(ap, char *);
	va_end(ap);
	t->nrows++;
}

static void print_cell(const char *s, size_t width, bool last)
{
	fputs(s, stdout);
	if (last)
		return;
	for (size_t w = display_width(s); w < width + 2; w++)
		putchar(' ');
}

static void table_print(struct table *t)
{
	size_t width[MAX_COLS];

	for (size_t c = 0; c < t->ncols; c++) {
		width[c] = display_width(t->head[c]);
		for (size_t r = 0; r < t->nrows; r++) {
			size_t w = display_width(t->cells[r * t->ncols + c]);
			if (w > width[c])
				width[c] = w;
		}
	}
	for (size_t c = 0; c < t->ncols; c++)
		print_cell(t->head[c], width[c], c + 1 == t->ncols);
	putchar('\n');
	for (size_t r = 0; r < t->nrows; r++) {
		char **row = t->cells + r * t->ncols;
		size_t last = t->ncols - 1;
		while (last && !*row[last]) /* no trailing blanks */
			last--;
		for (size_t c = 0; c <= last; c++)
			print_cell(row[c], width[c], c == last);
		putchar('\n');
	}
	for (size_t i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	t->cells = NULL;
	t->nrows = 0;
}

static char *fmt_duration(double secs)
{
	long long s = secs < 0 ? 0 : (long long)(secs + 0.5);

	if (s < 60)
		return fmt("%llds", s);
	if (s < 3600)
		return fmt("%lldm %02llds", s / 60, s % 60);
	if (s < 86400)
		return fmt("%lldh %02lldm", s / 3600, s % 3600 / 60);
	return fmt("%lldd %02lldh", s / 86400, s % 86400 / 3600);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* "2024-05-01 12:00:03 (3m 10s ago)" from ms since the epoch. */
static char *fmt_when(long long ms)
{
	char day[32], *ago, *s;
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	if (ms <= 0)
		return fmt("never");
	localtime_r(&t, &tm);
	strftime(day, sizeof(day), "%Y-%m-%d %H:%M:%S", &tm);
	ago = fmt_duration(now_s() - (double)ms / 1000.0);
	s = fmt("%s (%s ago)", day, ago);
	free(ago);
	return s;
}

static char *fmt_ago(long long ms)
{
	char *d, *s;

	if (ms <= 0)
		return fmt("never");
	d = fmt_duration(now_s() - (double)ms / 1000.0);
	s = fmt("%s ago", d);
	free(d);
	return s;
}

static char *fmt_bytes(long long b)
{
	static const char *const unit[] = {"B", "KB", "MB", "GB", "TB"};
	double v = (double)b;
	int u = 0;

	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	return u ? fmt("%.1f %s", v, unit[u]) : fmt("%lld B", b);
}

/* A JSON value as a person reads it: strings bare. */
static char *fmt_value(const json_t *v)
{
	char *s;

	if (json_is_string(v))
		return fmt("%s", json_string_value(v));
	s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
	if (!s)
		return fmt("-");
	char *r = fmt("%s", s);
	free(s);
	return r;
}

/* ---- the commands' output ------------------------------------------------------------ */

static void show_status(json_t *st)
{
	json_t *store = json_object_get(st, "store"), *sev = json_object_get(st, "alarms_active");
	json_t *q = json_object_get(st, "queue"), *x;
	struct table t;
	size_t i;
	char *up = fmt_duration(json_number_value(json_object_get(st, "uptime_s")));

	printf("gateway   %s at site %s\n", jstr(st, "gateway"), jstr(st, "site"));
	printf("uptime    %s, %s\n", up,
	       json_is_true(json_object_get(st, "healthy")) ?
		       "healthy" :
		       "UNHEALTHY: the store does not commit, or only alarms (disk full)");
	free(up);
	printf("config    %s (hash %s)\n", jstr(st, "config"), jstr(st, "config_hash"));
	json_t *con = json_object_get(st, "console");
	if (con && json_object_get(con, "tls_sha256"))
		printf("console   %s, certificate SHA-256 %s\n", jstr(con, "url"),
		       jstr(con, "tls_sha256"));
	else if (con)
		printf("console   %s\n", jstr(con, "url"));
	if (store) {
		long long used = jint(store, "db_bytes") + jint(store, "wal_bytes") +
				 jint(store, "shm_bytes");
		long long max = jint(store, "max_size");
		char *u = fmt_bytes(used), *m = fmt_bytes(max),
		     *w = fmt_bytes(jint(store, "wal_bytes")),
		     *fr = fmt_bytes(jint(store, "fs_free_bytes")),
		     *mf = fmt_bytes(jint(store, "min_free")),
		     *rv = fmt_bytes(jint(store, "reserve_bytes")),
		     *rs = fmt_bytes(jint(store, "reserve_size"));
		printf("store     %s: %s of %s (%lld%%), WAL %s; evicted %lld telemetry, %lld events; "
		       "%lld dead letters\n",
		       jstr(store, "state"), u, m, max > 0 ? used * 100 / max : 0, w,
		       jint(store, "evicted_telemetry"), jint(store, "evicted_events"),
		       jint(store, "dead_letters"));
		printf("disk      %s free (floor %s); alarm reserve %s of %s; %lld alarms held in "
		       "memory; not stored for a full disk: %lld telemetry, %lld events\n",
		       fr, mf, rv, rs, jint(store, "alarms_in_memory"),
		       jint(store, "lost_telemetry"), jint(store, "lost_events"));
		free(u);
		free(m);
		free(w);
		free(fr);
		free(mf);
		free(rv);
		free(rs);
	}
	printf("alarms    ");
	long long total = 0;
	for (i = 0; i < 4; i++) {
		total += jint(sev, severities[i]);
		printf("%s%lld %s", i ? ", " : "", jint(sev, severities[i]), severities[i]);
	}
	printf("%s%s\n", total ? "" : " (none active)",
	       json_is_true(json_object_get(st, "alarm_flood")) ? "; ALARM FLOOD" : "");
	printf("readings  %lld processed, %lld messages stored", jint(st, "readings"),
	       jint(st, "messages"));
	if (q)
		printf("; driver queue %lld of %lld", jint(q, "depth"), jint(q, "capacity"));
	printf("\n");
	json_t *lp = json_object_get(st, "loop");
	if (lp) {
		printf("loop      longest iteration %.1f ms%s%s, mean %.3f ms; %lld over 100 ms\n",
		       json_number_value(json_object_get(lp, "longest_iteration_s")) * 1000.0,
		       *jstr(lp, "longest_in") ? " in " : "", jstr(lp, "longest_in"),
		       json_number_value(json_object_get(lp, "mean_iteration_s")) * 1000.0,
		       jint(lp, "stalls"));
	}

	json_t *buses = json_object_get(st, "buses");
	if (json_array_size(buses)) {
		printf("\n");
		table_init(&t, 10, "BUS", "TYPE", "DEVICES", "ONLINE", "STATE", "REQUESTS",
			   "ERRORS", "LINE", "CYCLE/SCHED", "LAST ERROR");
		json_array_foreach(buses, i, x)
		{
			bool running = !json_is_false(json_object_get(x, "running"));
			table_row(&t, fmt("%s", jstr(x, "name")), fmt("%s", jstr(x, "type")),
				  fmt("%lld", jint(x, "devices")),
				  json_object_get(x, "online") ? fmt("%lld", jint(x, "online")) :
								 fmt("-"),
				  fmt("%s", json_is_true(json_object_get(x, "connected")) ?
						    "connected" :
					    running ? "disconnected" :
						      "not running"),
				  fmt("%lld", jint(x, "requests")), fmt("%lld", jint(x, "errors")),
				  json_is_number(json_object_get(x, "line_utilisation")) ?
					  fmt("%.1f%%", 100.0 * json_number_value(json_object_get(
									x, "line_utilisation"))) :
					  fmt("-"),
				  json_object_get(x, "cycle_ms") ?
					  fmt("%lld/%lld ms", jint(x, "cycle_ms"),
					      jint(x, "schedule_ms")) :
					  fmt("-"),
				  fmt("%s", jstr(x, "last_error")));
		}
		table_print(&t);
	}

	json_t *ups = json_object_get(st, "uplinks");
	if (json_array_size(ups)) {
		printf("\n");
		table_init(&t, 8, "UPLINK", "TYPE", "STATE", "SINCE", "SENT", "ACKED", "REFUSED",
			   "LAST ERROR");
		json_array_foreach(ups, i, x)
		{
			table_row(&t, fmt("%s", jstr(x, "name")), fmt("%s", jstr(x, "type")),
				  fmt("%s", json_is_true(json_object_get(x, "connected")) ?
						    "connected" :
						    "down"),
				  fmt_when(jint(x, "since")), fmt("%lld", jint(x, "sent")),
				  fmt("%lld", jint(x, "acked")),
				  jint(x, "refused") || jint(x, "dead_lettered") ?
					  fmt("%lld retried, %lld dead", jint(x, "refused"),
					      jint(x, "dead_lettered")) :
					  fmt("-"),
				  fmt("%s", jstr(x, "last_error")));
		}
		table_print(&t);
	}

	json_t *outbox = json_object_get(st, "outbox");
	if (json_array_size(outbox)) {
		printf("\n");
		table_init(&t, 5, "OUTBOX", "ALARM", "EVENT", "STATUS", "TELEMETRY");
		json_array_foreach(outbox, i, x)
		{
			char *cell[4];
			for (size_t l = 0; l < 4; l++) {
				json_t *lane =
					json_object_get(json_object_get(x, "lanes"), lanes[l]);
				long long depth = jint(lane, "depth");
				if (depth) {
					char *age = fmt_duration(json_number_value(
						json_object_get(lane, "oldest_age_s")));
					cell[l] = fmt("%lld (oldest %s)", depth, age);
					free(age);
				} else {
					cell[l] = fmt("0");
				}
			}
			table_row(&t, fmt("%s", jstr(x, "uplink")), cell[0], cell[1], cell[2],
				  cell[3]);
		}
		table_print(&t);
	}
}

static void show_devices(json_t *devs)
{
	struct table t;
	size_t i;
	json_t *d;

	if (!json_array_size(devs)) {
		printf("no devices configured\n");
		return;
	}
	table_init(&t, 11, "DEVICE", "NAME", "BUS", "PROFILE", "STATE", "LAST GOOD", "READS",
		   "ERRORS", "TIMEOUTS", "LINE", "LAST ERROR");
	json_array_foreach(devs, i, d)
	{
		json_t *c = json_object_get(d, "counters");
		long long errors = jint(c, "timeouts") + jint(c, "exceptions") +
				   jint(c, "crc_errors") + jint(c, "conn_errors") +
				   jint(c, "bad_payloads");
		bool shelved = json_is_true(json_object_get(d, "shelved"));
		table_row(&t, fmt("%s", jstr(d, "id")), fmt("%s", jstr(d, "name")),
			  fmt("%s", jstr(d, "bus")), fmt("%s", jstr(d, "profile")),
			  fmt("%s%s", jstr(d, "state"), shelved ? ", shelved" : ""),
			  c ? fmt_ago(jint(d, "last_ok")) : fmt("-"),
			  c ? fmt("%lld", jint(c, "requests")) : fmt("-"),
			  c ? fmt("%lld", errors) : fmt("-"),
			  c ? fmt("%lld", jint(c, "timeouts")) : fmt("-"),
			  json_is_number(json_object_get(d, "line_share")) ?
				  fmt("%.1f%%",
				      100.0 * json_number_value(json_object_get(d, "line_share"))) :
				  fmt("-"),
			  fmt("%s", jstr(d, "last_error")));
	}
	table_print(&t);
}

static int severity_rank(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (!strcmp(s, severities[i]))
			return i;
	return 4;
}

static int cmp_alarm(const void *a, const void *b)
{
	const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
	int d = severity_rank(jstr(x, "severity")) - severity_rank(jstr(y, "severity"));

	if (d)
		return d;
	long long tx = jint(x, "raised_at"), ty = jint(y, "raised_at");
	return tx < ty ? -1 : tx > ty;
}

static void show_alarms(json_t *alarms)
{
	size_t n = json_array_size(alarms), i;
	json_t **v;
	struct table t;

	if (!n) {
		printf("no active alarms\n");
		return;
	}
	v = calloc(n, sizeof(*v));
	if (!v)
		exit(EXIT_FAILED);
	for (i = 0; i < n; i++)
		v[i] = json_array_get(alarms, i);
	qsort(v, n, sizeof(*v), cmp_alarm);
	table_init(&t, 5, "SEVERITY", "STATE", "ALARM", "RAISED", "MESSAGE");
	for (i = 0; i < n; i++)
		table_row(&t, fmt("%s", jstr(v[i], "severity")),
			  fmt("%s%s", jstr(v[i], "state"),
			      json_is_true(json_object_get(v[i], "latched")) ? ", latched" : ""),
			  fmt("%s/%s", jstr(v[i], "device"), jstr(v[i], "alarm")),
			  fmt_when(jint(v[i], "raised_at")), fmt("%s", jstr(v[i], "message")));
	table_print(&t);
	free(v);
}

static void show_queue(json_t *q)
{
	struct table t;
	size_t i;
	json_t *x;

	if (!json_array_size(q)) {
		printf("no uplinks\n");
		return;
	}
	table_init(&t, 4, "UPLINK", "LANE", "MESSAGES", "OLDEST");
	json_array_foreach(q, i, x)
	{
		for (size_t l = 0; l < 4; l++) {
			json_t *lane = json_object_get(json_object_get(x, "lanes"), lanes[l]);
			long long depth = jint(lane, "depth");
			table_row(&t, fmt("%s", jstr(x, "uplink")), fmt("%s", lanes[l]),
				  fmt("%lld", depth),
				  depth ? fmt_duration(json_number_value(
						  json_object_get(lane, "oldest_age_s"))) :
					  fmt("-"));
		}
	}
	table_print(&t);
}

/* ---- main ------------------------------------------------------------------------------ */

struct opts {
	const char *socket;
	bool json;
	int timeout_s;
	bool timeout_set;
	char **args;
	int nargs;
};

static int parse_args(int argc, char **argv, struct opts *o)
{
	bool rest = false;

	o->args = calloc((size_t)argc + 1, sizeof(*o->args));
	if (!o->args)
		return EXIT_FAILED;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = NULL;
		/* a negative number is a VALUE, not an option */
		if (rest || a[0] != '-' || !a[1] || (a[1] >= '0' && a[1] <= '9') || a[1] == '.') {
			o->args[o->nargs++] = argv[i];
			continue;
		}
		if (!strcmp(a, "--")) {
			rest = true;
			continue;
		}
		if (!strcmp(a, "--all")) { /* dead-letters replay --all */
			o->args[o->nargs++] = argv[i];
			continue;
		}
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			exit(EXIT_OK);
		}
		if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			printf("cgwctl %s\n", CGW_VERSION);
			exit(EXIT_OK);
		}
		if (!strcmp(a, "-j") || !strcmp(a, "--json")) {
			o->json = true;
			continue;
		}
		char opt = 0;
		if (!strcmp(a, "-s") || !strcmp(a, "--socket"))
			opt = 's';
		else if (!strcmp(a, "-t") || !strcmp(a, "--timeout"))
			opt = 't';
		else if (!strncmp(a, "--socket=", 9))
			opt = 's', val = a + 9;
		else if (!strncmp(a, "--timeout=", 10))
			opt = 't', val = a + 10;
		else if (a[1] == 's' || a[1] == 't')
			opt = a[1], val = a + 2;
		else
			return usage_error("unknown option '%s'", a);
		if (!val) {
			if (i + 1 >= argc)
				return usage_error("option '%s' needs a value", a);
			val = argv[++i];
		}
		if (opt == 's') {
			o->socket = val;
		} else {
			char *end;
			long t = strtol(val, &end, 10);
			if (*end || end == val || t < 1 || t > 3600)
				return usage_error(
					"--timeout: '%s' is not a number of seconds (1..3600)",
					val);
			o->timeout_s = (int)t;
			o->timeout_set = true;
		}
	}
	return EXIT_OK;
}

static const struct {
	const char *name;
	int nargs, max_args; /* max_args 0: exactly nargs */
	const char *args;
	bool records; /* a list of records: the data is under the command's name */
} commands[] = {
	{"status", 0, 0, "", false},
	{"devices", 0, 0, "", false},
	{"alarms", 0, 0, "", false},
	{"queue", 0, 0, "", false},
	{"ack", 1, 0, " ALARM", false},
	{"shelve", 1, 0, " DEVICE", false},
	{"unshelve", 1, 0, " DEVICE", false},
	{"read", 2, 0, " DEVICE POINT", false},
	{"write", 3, 0, " DEVICE POINT VALUE", false},
	{"scan", 1, 2, " BUS [UNITS]", true},
	{"probe", 4, 5, " BUS UNIT TABLE ADDRESS [COUNT]", true},
	{"audit", 0, 1, " [N]", true},
	{"quarantine", 0, 1, " [N]", true},
	{"dead-letters", 0, 2, " [list [N] | replay ID|--all]", true},
};

/* A whole number in [lo, hi], or -1. */
static long long count_arg(const char *s, long long lo, long long hi)
{
	char *end;
	long long v;

	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtoll(s, &end, 0);
	return errno || *end || v < lo || v > hi ? -1 : v;
}

/* The request for the command line (counts checked already); NULL with a
 * usage message printed for a bad argument. */
static json_t *build_request(const char *cmd, char **a, int n)
{
	json_t *req = json_pack("{s:s}", "cmd", cmd);
	long long v;

	if (!req)
		return NULL;
	if (!strcmp(cmd, "replay")) {
		if (!strcmp(a[1], "--all"))
			json_object_set_new(req, "all", json_true());
		else
			json_object_set_new(req, "id", json_integer(atoll(a[1])));
	} else if (!strcmp(cmd, "scan")) {
		json_object_set_new(req, "bus", json_string(a[0]));
		if (n > 1)
			json_object_set_new(req, "units", json_string(a[1]));
	} else if (!strcmp(cmd, "probe")) {
		json_object_set_new(req, "bus", json_string(a[0]));
		json_object_set_new(req, "table", json_string(a[2]));
		if ((v = count_arg(a[1], 0, 247)) < 0) {
			usage_error("probe: UNIT '%s' is not a unit id (0..247)", a[1]);
			goto bad;
		}
		json_object_set_new(req, "unit", json_integer(v));
		if ((v = count_arg(a[3], 0, 65535)) < 0) {
			usage_error("probe: ADDRESS '%s' is not 0..65535 (0-based)", a[3]);
			goto bad;
		}
		json_object_set_new(req, "address", json_integer(v));
		if (n > 4) {
			if ((v = count_arg(a[4], 1, 2000)) < 0) {
				usage_error("probe: COUNT '%s' is not a number of registers", a[4]);
				goto bad;
			}
			json_object_set_new(req, "count", json_integer(v));
		}
	} else if (!strcmp(cmd, "audit") || !strcmp(cmd, "quarantine") ||
		   !strcmp(cmd, "dead-letters")) {
		if (n > 0 && !strcmp(cmd, "dead-letters") && !strcmp(a[0], "list"))
			a++, n--;
		if (n > 1) {
			usage_error("usage: cgwctl %s [N]", cmd);
			goto bad;
		}
		if (n == 1) {
			if ((v = count_arg(a[0], 1, 1000)) < 0) {
				usage_error("%s: N '%s' is not 1..1000", cmd, a[0]);
				goto bad;
			}
			json_object_set_new(req, "last", json_integer(v));
		}
	}
	if (!strcmp(cmd, "ack")) {
		json_object_set_new(req, "alarm", json_string(a[0]));
	} else if (!strcmp(cmd, "shelve") || !strcmp(cmd, "unshelve")) {
		json_object_set_new(req, "device", json_string(a[0]));
	} else if (!strcmp(cmd, "read") || !strcmp(cmd, "write")) {
		json_object_set_new(req, "device", json_string(a[0]));
		json_object_set_new(req, "point", json_string(a[1]));
		if (!strcmp(cmd, "write")) {
			json_t *jv = json_loads(a[2], JSON_DECODE_ANY, NULL);
			json_object_set_new(req, "value", jv ? jv : json_string(a[2]));
		}
	}
	return req;
bad:
	json_decref(req);
	return NULL;
}

static void show_result(const char *cmd, char **a, json_t *resp)
{
	if (!strcmp(cmd, "dead-letters")) {
		printf("replayed %lld dead letter%s", jint(resp, "replayed"),
		       jint(resp, "replayed") == 1 ? "" : "s");
		if (jint(resp, "skipped"))
			printf(" (%lld stay: their uplink is gone or no longer takes the lane)",
			       jint(resp, "skipped"));
		printf("\n");
	} else if (!strcmp(cmd, "ack")) {
		printf("acknowledged %s\n", a[0]);
	} else if (!strcmp(cmd, "shelve") || !strcmp(cmd, "unshelve")) {
		printf("%s: alarms %s\n", a[0], cmd[0] == 's' ? "shelved" : "unshelved");
	} else if (!strcmp(cmd, "read")) {
		char *v = fmt_value(json_object_get(resp, "value"));
		char *ago = fmt_ago(jint(resp, "value_ts"));
		printf("%s %s = %s (%s, read %s)\n", a[0], a[1], v, jstr(resp, "quality"), ago);
		free(v);
		free(ago);
	} else if (!strcmp(cmd, "write")) {
		printf("%s %s: written\n", a[0], a[1]);
	}
}

/* "1-5,9" from the units that timed out. */
static char *fmt_ranges(const bool *set, int lo, int hi)
{
	char *s = fmt("%s", ""), *n;

	for (int u = lo; u <= hi; u++) {
		int e = u;
		if (!set[u])
			continue;
		while (e + 1 <= hi && set[e + 1])
			e++;
		n = e > u ? fmt("%s%s%d-%d", s, *s ? "," : "", u, e) :
			    fmt("%s%s%d", s, *s ? "," : "", u);
		free(s);
		s = n;
		u = e;
	}
	return s;
}

static char *fmt_outcome(const json_t *o)
{
	const char *r = jstr(o, "result");

	if (!strcmp(r, "ok"))
		return fmt("answers");
	if (!strcmp(r, "exception"))
		return fmt("answers with %s", jstr(o, "detail"));
	if (!strcmp(r, "timeout"))
		return fmt("no answer (timeout)");
	return fmt("%s: %s", r, jstr(o, "detail"));
}

static void show_scan(json_t *sc)
{
	json_t *units = json_object_get(sc, "units"), *u;
	bool quiet[256] = {false};
	struct table t;
	size_t i, n_quiet = 0, n_ans = 0;

	printf("bus %s: %zu unit%s probed (a read of %s %lld, %lld ms each)\n", jstr(sc, "bus"),
	       json_array_size(units), json_array_size(units) == 1 ? "" : "s", jstr(sc, "table"),
	       jint(sc, "address"), jint(sc, "timeout_ms"));
	table_init(&t, 2, "UNIT", "ANSWER");
	json_array_foreach(units, i, u)
	{
		long long id = jint(u, "unit");
		if (!strcmp(jstr(u, "result"), "timeout") && id > 0 && id < 256) {
			quiet[id] = true;
			n_quiet++;
			continue;
		}
		n_ans += strcmp(jstr(u, "result"), "error") != 0;
		table_row(&t, fmt("%lld", id), fmt_outcome(u));
	}
	if (t.nrows)
		table_print(&t);
	else
		printf("no unit answered\n");
	if (n_quiet) {
		char *r = fmt_ranges(quiet, 1, 255);
		printf("no answer (timeout): %zu unit%s: %s\n", n_quiet, n_quiet == 1 ? "" : "s",
		       r);
		free(r);
	}
	(void)n_ans;
}

static char *fmt_reading(const json_t *v)
{
	if (!v || json_is_null(v))
		return fmt("NaN");
	if (json_is_real(v))
		return fmt("%.9g", json_real_value(v));
	return fmt_value(v);
}

static void show_probe(json_t *p)
{
	static const char *const orders[] = {"ABCD", "CDAB", "BADC", "DCBA"};
	static const char *const wide[] = {"int32", "uint32", "float32",
					   "int64", "uint64", "float64"};
	json_t *regs = json_object_get(p, "registers"), *bits = json_object_get(p, "bits");
	json_t *rd = json_object_get(p, "readings"), *x;
	long long a0 = jint(p, "address");
	struct table t;
	size_t i;

	printf("bus %s unit %lld %s %lld..%lld: ", jstr(p, "bus"), jint(p, "unit"),
	       jstr(p, "table"), a0, a0 + jint(p, "count") - 1);
	if (strcmp(jstr(p, "result"), "ok")) {
		char *o = fmt_outcome(p);
		printf("%s\n", o);
		free(o);
		return;
	}
	if (bits) {
		printf("%zu bits\n", json_array_size(bits));
		table_init(&t, 2, "ADDRESS", "VALUE");
		json_array_foreach(bits, i, x)
			table_row(&t, fmt("%lld", a0 + (long long)i),
				  fmt("%s", json_integer_value(x) ? "1 (on)" : "0 (off)"));
		table_print(&t);
		return;
	}
	printf("%zu registers\n", json_array_size(regs));
	table_init(&t, 5, "ADDRESS", "HEX", "UINT16", "INT16", "ASCII");
	json_array_foreach(regs, i, x)
	{
		unsigned w = (unsigned)json_integer_value(x);
		char hi = (char)(w >> 8), lo = (char)(w & 0xff);
		table_row(&t, fmt("%lld", a0 + (long long)i), fmt("0x%04X", w), fmt("%u", w),
			  fmt("%d", (int)(int16_t)w),
			  fmt("%c%c", hi >= 0x20 && hi < 0x7f ? hi : '.',
			      lo >= 0x20 && lo < 0x7f ? lo : '.'));
	}
	table_print(&t);
	printf("\nfrom address %lld, in each word/byte order:\n", a0);
	table_init(&t, 5, "TYPE", "ABCD", "CDAB", "BADC", "DCBA");
	for (size_t k = 0; k < sizeof(wide) / sizeof(wide[0]); k++) {
		json_t *by = json_object_get(rd, wide[k]);
		if (!by)
			continue;
		table_row(&t, fmt("%s", wide[k]), fmt_reading(json_object_get(by, orders[0])),
			  fmt_reading(json_object_get(by, orders[1])),
			  fmt_reading(json_object_get(by, orders[2])),
			  fmt_reading(json_object_get(by, orders[3])));
	}
	if (t.nrows)
		table_print(&t);
	printf("ascii: \"%s\"\n", jstr(rd, "ascii"));
}

static char *fmt_ms(const json_t *row, const char *key)
{
	long long ms = jint(row, key);
	char day[32];
	time_t tt = (time_t)(ms / 1000);
	struct tm tm;

	if (ms <= 0)
		return fmt("-");
	localtime_r(&tt, &tm);
	strftime(day, sizeof(day), "%Y-%m-%d %H:%M:%S", &tm);
	return fmt("%s", day);
}

/* At most n display characters, for wide tables. */
static char *fmt_cut(const char *s, size_t n)
{
	size_t len = strlen(s), k = 0, chars = 0;

	while (k < len && chars < n) {
		k++;
		while (k < len && ((unsigned char)s[k] & 0xC0) == 0x80)
			k++;
		chars++;
	}
	return k < len ? fmt("%.*s...", (int)k, s) : fmt("%s", s);
}

static void show_records(const char *cmd, json_t *rows)
{
	struct table t;
	size_t i;
	json_t *r;

	if (!json_array_size(rows)) {
		printf("no %s records\n", !strcmp(cmd, "audit") ? "audit" : cmd);
		return;
	}
	if (!strcmp(cmd, "audit")) {
		table_init(&t, 7, "TIME", "SOURCE", "DEVICE", "COMMAND", "ACTION", "RESULT",
			   "DETAIL");
		json_array_foreach(rows, i, r)
			table_row(&t, fmt_ms(r, "ts_ms"), fmt("%s", jstr(r, "source")),
				  fmt("%s", jstr(r, "device")), fmt("%s", jstr(r, "command_id")),
				  fmt("%s", jstr(r, "action")), fmt("%s", jstr(r, "result")),
				  fmt("%s", jstr(r, "detail")));
	} else if (!strcmp(cmd, "quarantine")) {
		table_init(&t, 7, "TIME", "BUS", "DEVICE", "TOPIC", "REASON", "BYTES", "PAYLOAD");
		json_array_foreach(rows, i, r)
			table_row(&t, fmt_ms(r, "ts_ms"), fmt("%s", jstr(r, "bus")),
				  fmt("%s", jstr(r, "device")), fmt("%s", jstr(r, "topic")),
				  fmt("%s", jstr(r, "reason")), fmt("%lld", jint(r, "payload_len")),
				  fmt_cut(jstr(r, "payload"), 40));
	} else {
		table_init(&t, 7, "FAILED", "SEQ", "DEVICE", "TOPIC", "ATTEMPTS", "REASON",
			   "PAYLOAD");
		json_array_foreach(rows, i, r)
			table_row(&t, fmt_ms(r, "failed_at_ms"), fmt("%lld", jint(r, "seq")),
				  fmt("%s", jstr(r, "device")), fmt("%s", jstr(r, "topic")),
				  fmt("%lld", jint(r, "attempts")), fmt("%s", jstr(r, "reason")),
				  fmt_cut(jstr(r, "payload"), 40));
	}
	table_print(&t);
}

int main(int argc, char **argv)
{
	struct opts o = {.timeout_s = DEFAULT_TIMEOUT_S};
	json_t *req = NULL, *resp = NULL;
	const char *cmd;
	size_t k;
	int rc;

	/* accounts of the web console: a file, not the running daemon */
	if (argc > 1 && !strcmp(argv[1], "user"))
		return console_user_main(argc - 1, argv + 1);
	rc = parse_args(argc, argv, &o);
	if (rc != EXIT_OK)
		goto out;
	if (!o.socket)
		o.socket = getenv("CGW_SOCKET") && *getenv("CGW_SOCKET") ? getenv("CGW_SOCKET") :
									   DEFAULT_SOCKET;
	if (o.nargs == 0) {
		rc = usage_error("no command given (status, devices, alarms, queue, ack, shelve, "
				 "unshelve, read, write, scan, probe, audit, quarantine, "
				 "dead-letters)");
		goto out;
	}
	cmd = o.args[0];
	for (k = 0; k < sizeof(commands) / sizeof(commands[0]); k++)
		if (!strcmp(cmd, commands[k].name))
			break;
	if (k == sizeof(commands) / sizeof(commands[0])) {
		rc = usage_error("unknown command '%s'", cmd);
		goto out;
	}
	bool replay = !strcmp(cmd, "dead-letters") && o.nargs == 3 && !strcmp(o.args[1], "replay");
	if (replay && strcmp(o.args[2], "--all") && atoll(o.args[2]) <= 0) {
		rc = usage_error("dead-letters replay: '%s' is not a dead letter's ID (or --all)",
				 o.args[2]);
		goto out;
	}
	if (o.nargs - 1 < commands[k].nargs ||
	    o.nargs - 1 > (commands[k].max_args ? commands[k].max_args : commands[k].nargs)) {
		rc = usage_error("usage: cgwctl %s%s", cmd, commands[k].args);
		goto out;
	}
	req = build_request(replay ? "replay" : cmd, o.args + 1, o.nargs - 1);
	if (!req) {
		rc = EXIT_USAGE;
		goto out;
	}
	if (!strcmp(cmd, "scan") && !o.timeout_set)
		o.timeout_s = 960; /* the daemon allows a scan 15 minutes */
	rc = transact(o.socket, req, o.timeout_s, &resp);
	if (rc != EXIT_OK)
		goto out;

	const char *result = jstr(resp, "result");
	json_t *data = json_object_get(resp, cmd);
	bool info = (commands[k].nargs == 0 || commands[k].records) && !replay;
	if (strcmp(result, "ok") || (info && !data)) {
		if (o.json)
			json_dumpf(resp, stdout, JSON_INDENT(2) | JSON_ENCODE_ANY);
		if (o.json)
			putchar('\n');
		fprintf(stderr, "cgwctl: %s", cmd);
		for (int i = 1; i < o.nargs && i < 3; i++) /* not the VALUE */
			fprintf(stderr, " %s", o.args[i]);
		fprintf(stderr, ": %s: %s\n", *result ? result : "no result",
			*jstr(resp, "detail") ? jstr(resp, "detail") : "no reason given");
		rc = EXIT_FAILED;
		goto out;
	}
	if (o.json) {
		json_dumpf(info ? data : resp, stdout, JSON_INDENT(2) | JSON_ENCODE_ANY);
		putchar('\n');
	} else if (!strcmp(cmd, "status")) {
		show_status(data);
	} else if (!strcmp(cmd, "devices")) {
		show_devices(data);
	} else if (!strcmp(cmd, "alarms")) {
		show_alarms(data);
	} else if (!strcmp(cmd, "queue")) {
		show_queue(data);
	} else if (!strcmp(cmd, "scan")) {
		show_scan(data);
	} else if (!strcmp(cmd, "probe")) {
		show_probe(data);
	} else if (commands[k].records && !replay) {
		show_records(cmd, data);
	} else {
		show_result(cmd, o.args + 1, resp);
	}
	if (fflush(stdout) != 0) {
		fprintf(stderr, "cgwctl: writing output: %s\n", strerror(errno));
		rc = EXIT_FAILED;
	}
out:
	json_decref(req);
	json_decref(resp);
	free(o.args);
	return rc;
}
