/*
 * mb_poll - run the Modbus bus drivers of a configuration without the rest
 * of the daemon and print what they hand to the core, one line per item:
 *
 *   reading DEVICE POINT VALUE QUALITY     (VALUE "-" when there is none)
 *   state DEVICE online|offline
 *   write-result TOKEN RESULT DETAIL       (RESULT 0 or a negative errno)
 *
 * Commands on stdin, one per line:
 *   write DEVICE POINT VALUE  -> "write-queued TOKEN" or "write-error ERRNO TEXT"
 *   stats                     -> "stats bus ..." and "stats device ..." lines
 *   quit
 * At exit (quit, SIGTERM, --duration; the end of stdin is not an exit) it
 * prints the stats and "summary requests=N errors=N due=N done=N items=N";
 * SIGUSR1 prints the summary line alone (benchmarks sample it).
 *
 * Used by the integration tests (tests/integration/modbus_*.sh) and the
 * benchmark (tests/bench/modbus.sh).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "config.h"
#include "driver.h"
#include "log.h"
#include "queue.h"

#define MAX_BUSES 64
#define BATCH 256

struct run {
	struct cgw_config *cfg;
	struct queue *q;
	struct driver *drv[MAX_BUSES];
	size_t bus[MAX_BUSES];
	size_t n;
	bool quiet;
	uint64_t items, token;
};

static void usage(FILE *f)
{
	fputs("usage: mb_poll -c FILE [--bus NAME]... [--quiet] [--duration SECONDS] [-v]\n"
	      "\n"
	      "Runs the Modbus driver of every modbus bus in FILE (or only the --bus ones)\n"
	      "and prints every item it queues for the core. Reads commands on stdin:\n"
	      "write DEVICE POINT VALUE, stats, quit.\n"
	      "  --quiet   count items instead of printing them (benchmarks)\n",
	      f);
}

static void print_value(const struct cgw_value *v, FILE *out)
{
	char buf[64];

	switch (v->type) {
	case CGW_V_NONE:
		fputs("-", out);
		break;
	case CGW_V_BOOL:
		fputs(v->b ? "true" : "false", out);
		break;
	case CGW_V_INT:
		fprintf(out, "%" PRId64, v->i);
		break;
	case CGW_V_UINT:
		fprintf(out, "%" PRIu64, v->u);
		break;
	case CGW_V_DOUBLE:
		/* 15 significant digits: 35 * 0.01 prints as 0.35 */
		snprintf(buf, sizeof(buf), "%.15g", v->d);
		fputs(buf, out);
		break;
	case CGW_V_STRING:
		fputs(v->s, out);
		break;
	}
}

static int parse_value(const char *s, const struct cfg_point *pt, struct cgw_value *v)
{
	char *end;

	errno = 0;
	if (!strcasecmp(s, "true") || !strcasecmp(s, "false")) {
		v->type = CGW_V_BOOL;
		v->b = !strcasecmp(s, "true");
		return 0;
	}
	if (pt->type == CGW_T_STRING)
		return -EINVAL;
	if (strpbrk(s, ".eEnN")) {
		v->type = CGW_V_DOUBLE;
		v->d = strtod(s, &end);
	} else if (s[0] == '-') {
		v->type = CGW_V_INT;
		v->i = strtoll(s, &end, 0);
	} else {
		v->type = CGW_V_UINT;
		v->u = strtoull(s, &end, 0);
	}
	return errno || end == s || *end ? -EINVAL : 0;
}

static void print_item(struct run *r, const struct cgw_item *it)
{
	const struct cfg_device *d = &r->cfg->devices[it->device];
	const struct cfg_profile *pr = cfg_device_profile(r->cfg, d);

	switch (it->kind) {
	case CGW_ITEM_READING:
	case CGW_ITEM_EVENT:
		printf("%s %s %s ", it->kind == CGW_ITEM_READING ? "reading" : "event", d->id,
		       it->point < pr->n_points ? pr->points[it->point].name : "?");
		print_value(&it->value, stdout);
		printf(" %s\n", cgw_quality_name(it->quality));
		break;
	case CGW_ITEM_DEVICE_STATE:
		printf("state %s %s\n", d->id, it->online ? "online" : "offline");
		break;
	case CGW_ITEM_WRITE_RESULT:
		printf("write-result %" PRIu64 " %d ", it->token, it->result);
		print_value(&it->value, stdout);
		putchar('\n');
		break;
	case CGW_ITEM_CYCLE_END:
		printf("cycle-end %s\n", d->id);
		break;
	case CGW_ITEM_COMMISSION_RESULT:
		break;
	}
}

static void drain(struct run *r)
{
	struct cgw_item items[BATCH];
	size_t n;

	while ((n = queue_pop_batch(r->q, items, BATCH)) > 0) {
		for (size_t i = 0; i < n; i++) {
			if (!r->quiet)
				print_item(r, &items[i]);
			cgw_value_clear(&items[i].value);
		}
		r->items += n;
	}
}

static void print_summary(struct run *r);

static void print_stats(struct run *r, bool summary)
{
	for (size_t b = 0; b < r->n; b++) {
		struct driver_stats st;
		if (modbus_driver_ops.status(r->drv[b], &st) < 0)
			continue;
		printf("stats bus %s connected=%d requests=%" PRIu64 " errors=%" PRIu64
		       " foreign=%" PRIu64 " stale_bytes=%" PRIu64 " line_busy_ms=%" PRIu64
		       " cycle_ms=%lld schedule_ms=%lld last_error=\"%s\"\n",
		       r->cfg->buses[r->bus[b]].name, st.connected, st.requests, st.errors,
		       st.foreign_answers, st.stale_bytes, st.line_us / 1000,
		       (long long)st.cycle_ms, (long long)st.schedule_ms, st.last_error);
		for (size_t i = 0; i < st.n_devices; i++) {
			const struct driver_dev_stats *ds = &st.devices[i];
			if (summary && r->quiet)
				continue;
			printf("stats device %s online=%d requests=%" PRIu64 " timeouts=%" PRIu64
			       " exceptions=%" PRIu64 " crc=%" PRIu64 " conn=%" PRIu64
			       " due=%" PRIu64 " done=%" PRIu64 " rtt_ms=%.3f last_error=\"%s\"\n",
			       r->cfg->devices[ds->device].id, ds->online, ds->requests,
			       ds->timeouts, ds->exceptions, ds->crc_errors, ds->conn_errors,
			       ds->polls_due, ds->polls_done, ds->rtt_ms_avg, ds->last_error);
		}
		free(st.devices);
	}
	if (summary)
		print_summary(r);
	fflush(stdout);
}

static void print_summary(struct run *r)
{
	uint64_t req = 0, err = 0, due = 0, done = 0;

	for (size_t b = 0; b < r->n; b++) {
		struct driver_stats st;
		if (modbus_driver_ops.status(r->drv[b], &st) < 0)
			continue;
		req += st.requests;
		err += st.errors;
		for (size_t i = 0; i < st.n_devices; i++) {
			due += st.devices[i].polls_due;
			done += st.devices[i].polls_done;
		}
		free(st.devices);
	}
	printf("summary requests=%" PRIu64 " errors=%" PRIu64 " due=%" PRIu64 " done=%" PRIu64
	       " items=%" PRIu64 "\n",
	       req, err, due, done, r->items);
	fflush(stdout);
}

static void cmd_write(struct run *r, char **argv, int argc)
{
	struct cgw_value v = {.type = CGW_V_NONE};
	long di = argc == 4 ? cfg_find_device(r->cfg, argv[1]) : -1;
	const struct cfg_profile *pr;
	size_t p, b;
	int rc = -EINVAL;

	if (di < 0) {
		printf("write-error %d no such device\n", -EINVAL);
		return;
	}
	pr = cfg_device_profile(r->cfg, &r->cfg->devices[di]);
	for (p = 0; p < pr->n_points && strcmp(pr->points[p].name, argv[2]); p++)
		;
	for (b = 0; b < r->n && r->bus[b] != r->cfg->devices[di].bus; b++)
		;
	if (p < pr->n_points && b < r->n && parse_value(argv[3], &pr->points[p], &v) == 0)
		rc = modbus_driver_ops.write(r->drv[b], (uint32_t)di, (uint32_t)p, &v, ++r->token);
	cgw_value_clear(&v);
	if (rc < 0)
		printf("write-error %d %s\n", rc, strerror(-rc));
	else
		printf("write-queued %" PRIu64 "\n", r->token);
}

/* false on quit */
static bool run_line(struct run *r, char *line)
{
	char *argv[8], *save = NULL;
	int argc = 0;

	for (char *t = strtok_r(line, " \t\r\n", &save); t && argc < 8;
	     t = strtok_r(NULL, " \t\r\n", &save))
		argv[argc++] = t;
	if (argc == 0)
		return true;
	if (!strcmp(argv[0], "quit"))
		return false;
	if (!strcmp(argv[0], "write"))
		cmd_write(r, argv, argc);
	else if (!strcmp(argv[0], "stats"))
		print_stats(r, false);
	else
		printf("error: unknown command %s\n", argv[0]);
	fflush(stdout);
	return true;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
					     {"bus", required_argument, NULL, 'b'},
					     {"quiet", no_argument, NULL, 'q'},
					     {"duration", required_argument, NULL, 'd'},
					     {"verbose", no_argument, NULL, 'v'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	struct run r = {0};
	struct cfg_errors errs = {0};
	const char *config = NULL, *only[MAX_BUSES];
	size_t n_only = 0;
	char line[1024];
	size_t llen = 0;
	double duration = 0;
	bool stdin_open = true, go = true;
	int o, sfd, rc = 1;
	sigset_t sigs;

	while ((o = getopt_long(argc, argv, "c:b:qd:vh", opts, NULL)) != -1) {
		switch (o) {
		case 'c':
			config = optarg;
			break;
		case 'b':
			if (n_only < MAX_BUSES)
				only[n_only++] = optarg;
			break;
		case 'q':
			r.quiet = true;
			break;
		case 'd':
			duration = atof(optarg);
			break;
		case 'v':
			log_setup(true, LOG_DEBUG);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!config || optind != argc) {
		usage(stderr);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGUSR1);
	sigprocmask(SIG_BLOCK, &sigs, NULL); /* before the drivers start their threads */
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);

	if (config_load(config, &r.cfg, &errs) < 0) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.v[i]);
		cfg_errors_free(&errs);
		return 2;
	}
	/* the YAML parser's scratch memory is free now: give it back (RSS) */
	malloc_trim(0);
	if (queue_new(&r.q, 4096) < 0)
		goto out;
	for (size_t b = 0; b < r.cfg->n_buses && r.n < MAX_BUSES; b++) {
		const struct cfg_bus *bus = &r.cfg->buses[b];
		bool want = n_only == 0;
		struct driver_env env = {.cfg = r.cfg, .bus = b, .queue = r.q};
		for (size_t i = 0; i < n_only; i++)
			want |= !strcmp(only[i], bus->name);
		if (!want || driver_ops_for(bus) != &modbus_driver_ops)
			continue;
		if (driver_ops_for(bus)->open(&env, &r.drv[r.n]) < 0) {
			fprintf(stderr, "mb_poll: bus %s does not open\n", bus->name);
			goto out;
		}
		r.bus[r.n++] = b;
	}

	int64_t end = duration > 0 ? cgw_mono_ms() + (int64_t)(duration * 1000) : INT64_MAX;
	while (go) {
		struct pollfd pfd[3] = {{.fd = queue_fd(r.q), .events = POLLIN},
					{.fd = sfd, .events = POLLIN},
					{.fd = stdin_open ? STDIN_FILENO : -1, .events = POLLIN}};
		int64_t now = cgw_mono_ms();
		if (now >= end)
			break;
		int n = poll(pfd, 3, end == INT64_MAX ? -1 : (int)(end - now));
		if (n < 0 && errno != EINTR)
			break;
		if (pfd[0].revents & POLLIN)
			drain(&r);
		if (pfd[1].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR1) {
				drain(&r);
				print_summary(&r);
				continue;
			}
			break;
		}
		if (pfd[2].revents & (POLLIN | POLLHUP)) {
			ssize_t k = read(STDIN_FILENO, line + llen, sizeof(line) - 1 - llen);
			char *nl;
			if (k <= 0) {
				stdin_open = false;
				continue;
			}
			llen += (size_t)k;
			while (go && (nl = memchr(line, '\n', llen))) {
				size_t used = (size_t)(nl - line) + 1;
				*nl = '\0';
				go = run_line(&r, line);
				memmove(line, line + used, llen - used);
				llen -= used;
			}
			if (llen == sizeof(line) - 1)
				llen = 0;
		}
	}
	drain(&r);
	print_stats(&r, true);
	rc = 0;
out:
	for (size_t b = 0; b < r.n; b++)
		modbus_driver_ops.close(r.drv[b]);
	if (r.q) {
		drain(&r);
		queue_free(r.q);
	}
	config_free(r.cfg);
	close(sfd);
	return rc;
}
