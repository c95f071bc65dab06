/*
 * cgwd - community gateway daemon: process lifecycle.
 *
 * Parses arguments, loads the configuration (exit 2 when it is wrong), sets
 * up logging, the core loop and signals, starts the core and tells systemd
 * (READY, WATCHDOG, STATUS, STOPPING). SIGHUP reloads the configuration and
 * keeps the running one if the new one is broken; SIGTERM/SIGINT stop.
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <mosquitto.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "config.h"
#include "console.h"
#include "control.h"
#include "core.h"
#include "episode.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "model.h"
#include "mqtt_link.h"

#define CGW_VERSION "0.1.0"

struct daemon {
	struct loop *loop;
	struct core *core;
	struct control *control;
	struct metrics *metrics;
	struct console *console;
	const char *config_path;
	struct loop_timer *watchdog;
	struct loop_timer *status;
	uint64_t watchdog_ms;
	struct episode unhealthy; /* the watchdog is withheld */
	int exit_code;
};

static void usage(FILE *f)
{
	fputs("Usage: cgwd -c FILE [--foreground] [--log-level LEVEL]\n"
	      "       cgwd -c FILE --check-config [-v]\n"
	      "       cgwd --help-config\n"
	      "\n"
	      "cgwd collects what a residential community's safety devices report over\n"
	      "Modbus RTU/TCP and MQTT, keeps it in a SQLite store on the gateway, raises\n"
	      "alarms, and delivers alarms, events and telemetry to the community platform\n"
	      "over MQTT and HTTP, alarms first.\n"
	      "\n"
	      "Options:\n"
	      "  -c, --config FILE     main configuration file (YAML)\n"
	      "  -t, --check-config    check the configuration, print a summary, exit 0 or 2\n"
	      "  -v, --verbose         with --check-config: also show the Modbus request plan\n"
	      "  -f, --foreground      log to stderr instead of the journal\n"
	      "  -l, --log-level LEVEL error, warn, notice, info (default) or debug\n"
	      "      --help-config     list every configuration key with its type and default\n"
	      "  -h, --help            this text\n"
	      "  -V, --version         print the version\n"
	      "\n"
	      "Signals: SIGHUP reloads the configuration (a broken file is reported and the\n"
	      "running configuration kept); SIGTERM or SIGINT stop within 5 seconds.\n"
	      "\n"
	      "Exit status: 0 ok, 1 runtime failure, 2 bad configuration or usage.\n"
	      "See cgwd(8), cgw.yaml(5) and cgwctl(1).\n",
	      f);
}

static void print_errors(const struct cfg_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		fprintf(stderr, "%s\n", errs->v[i]);
}

static void log_config_warnings(const struct cgw_config *cfg)
{
	for (size_t i = 0; i < cfg->warnings.n; i++)
		log_warn("config", "%s", cfg->warnings.v[i]);
}

static void notify_status(struct daemon *d)
{
	char line[256];

	core_status_line(d->core, line, sizeof(line));
	sd_notifyf(0, "STATUS=%s", line);
}

static void on_watchdog(struct loop *l, struct loop_timer *t, void *arg)
{
	struct daemon *d = arg;

	(void)l;
	/* The loop turning is what we vouch for; the core reports a stuck
	 * store itself (it is the only writer). */
	if (core_healthy(d->core)) {
		sd_notify(0, "WATCHDOG=1");
		log_episode_good(&d->unhealthy, cgw_mono_ms(), "main",
				 "the store commits again: the watchdog is fed again");
	} else {
		log_episode_bad(&d->unhealthy, cgw_mono_ms(), LOG_ERR, "main",
				"the store does not commit: the watchdog is not fed, systemd "
				"will restart cgwd if this lasts");
	}
	loop_timer_in(t, (int64_t)d->watchdog_ms / 2);
}

static void on_status(struct loop *l, struct loop_timer *t, void *arg)
{
	(void)l;
	notify_status(arg);
	loop_timer_in(t, 10000);
}

static bool same_str(const char *a, const char *b)
{
	return (!a || !b) ? a == b : !strcmp(a, b);
}

/* A changed control socket (path or group) or metrics listener is opened
 * anew: the new one first where it can be (another path or address), so a
 * failure keeps the old one answering; the same path is closed first. */
static void rebind(struct daemon *d, const char *old_sock, const char *old_group, bool old_m_on,
		   const char *old_listen)
{
	const struct cgw_config *cfg = core_config(d->core);
	bool m_on = cfg->metrics.enabled;

	if (!console_matches(d->console, cfg)) {
		/* the same address is likely: closed first (sessions end) */
		console_close(d->console);
		d->console = NULL;
		if (cfg->console.enabled && console_open(d->core, d->loop, cfg, &d->console) < 0)
			log_warn("main", "console on %s not opened", cfg->console.listen);
		else
			log_notice("main", "console %s",
				   cfg->console.enabled ? "re-opened" : "closed");
	}

	if (!same_str(old_sock, cfg->control.socket) || !same_str(old_group, cfg->control.group)) {
		struct control *ctl = NULL;
		bool same_path = same_str(old_sock, cfg->control.socket);
		if (same_path) {
			control_close(d->control);
			d->control = NULL;
		}
		if (control_open(d->core, d->loop, cfg, &ctl) < 0) {
			log_warn("main", "control socket %s not opened%s", cfg->control.socket,
				 same_path || !d->control ? ": running without cgwctl" :
							    ": the old one stays");
		} else {
			control_close(d->control);
			d->control = ctl;
			log_notice("main", "control socket now %s", cfg->control.socket);
		}
	}
	if (old_m_on != m_on || (m_on && !same_str(old_listen, cfg->metrics.listen))) {
		struct metrics *m = NULL;
		if (!m_on) {
			metrics_close(d->metrics);
			d->metrics = NULL;
			log_notice("main", "metrics disabled");
		} else if (metrics_open(d->core, d->loop, cfg, &m) < 0) {
			log_warn("main", "metrics on %s not opened%s", cfg->metrics.listen,
				 d->metrics ? "; still answering on the old address" : "");
		} else {
			metrics_close(d->metrics);
			d->metrics = m;
			log_notice("main", "metrics now on %s", cfg->metrics.listen);
		}
	}
}

static void reload(struct daemon *d)
{
	struct cfg_errors errs = {0};
	struct cgw_config *cfg;
	const struct cgw_config *run = core_config(d->core);
	/* the running configuration is freed by a successful reload */
	char *old_sock = run->control.socket ? strdup(run->control.socket) : NULL;
	char *old_group = run->control.group ? strdup(run->control.group) : NULL;
	char *old_listen = run->metrics.listen ? strdup(run->metrics.listen) : NULL;
	bool old_m_on = run->metrics.enabled;

	sd_notify(0, "RELOADING=1");
	log_notice("main", "SIGHUP: reloading %s", d->config_path);
	if (config_load(d->config_path, &cfg, &errs) < 0) {
		for (size_t i = 0; i < errs.n; i++)
			log_err("config", "%s", errs.v[i]);
		log_err("main", "reload failed (%zu error%s): keeping the running configuration",
			errs.n, errs.n == 1 ? "" : "s");
		cfg_errors_free(&errs);
	} else if ((log_config_warnings(cfg), core_reload(d->core, cfg)) < 0) {
		log_err("main", "reload could not be applied: keeping the running configuration");
	} else {
		rebind(d, old_sock, old_group, old_m_on, old_listen);
		malloc_trim(0);
		log_notice("main", "configuration reloaded (%016llx)",
			   (unsigned long long)core_config(d->core)->hash);
	}
	free(old_sock);
	free(old_group);
	free(old_listen);
	sd_notify(0, "READY=1");
	notify_status(d);
}

static void on_signal(struct loop *l, int signo, void *arg)
{
	struct daemon *d = arg;

	switch (signo) {
	case SIGHUP:
		reload(d);
		break;
	case SIGTERM:
	case SIGINT:
		log_notice("main", "%s: stopping", strsignal(signo));
		sd_notify(0, "STOPPING=1");
		loop_stop(l);
		break;
	default:
		break;
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
					     {"check-config", no_argument, NULL, 't'},
					     {"verbose", no_argument, NULL, 'v'},
					     {"foreground", no_argument, NULL, 'f'},
					     {"log-level", required_argument, NULL, 'l'},
					     {"help", no_argument, NULL, 'h'},
					     {"version", no_argument, NULL, 'V'},
					     {"help-config", no_argument, NULL, 'H'},
					     {NULL, 0, NULL, 0}};
	static const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
	struct daemon d = {0};
	struct cfg_errors errs = {0};
	struct cgw_config *cfg = NULL;
	bool check = false, verbose = false, foreground = false;
	int level = LOG_INFO, c, r;

	/* The store holds the community's alarms and what its doors did: never
	 * world-readable, whatever the umask we were started with or the mode of
	 * a state directory made by hand (systemd sets UMask=0027 too). */
	umask(027);

	while ((c = getopt_long(argc, argv, "c:tvfl:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			d.config_path = optarg;
			break;
		case 't':
			check = true;
			break;
		case 'v':
			verbose = true;
			break;
		case 'f':
			foreground = true;
			break;
		case 'l':
			level = log_level_parse(optarg);
			if (level < 0) {
				fprintf(stderr,
					"cgwd: --log-level: '%s' is not one of error, warn, "
					"notice, info, debug\n",
					optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("cgwd %s\n", CGW_VERSION);
			return 0;
		case 'H':
			config_print_reference(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc || !d.config_path) {
		fprintf(stderr, "cgwd: %s\n",
			d.config_path ? "unexpected argument" : "-c FILE is required");
		usage(stderr);
		return 2;
	}

	/* In the foreground, stderr; otherwise the journal, whose API keeps the
	 * level and the module as fields. */
	log_setup(foreground || check, level);

	if (config_load(d.config_path, &cfg, &errs) < 0) {
		print_errors(&errs);
		fprintf(stderr, "cgwd: %s: %zu error%s\n", d.config_path, errs.n,
			errs.n == 1 ? "" : "s");
		cfg_errors_free(&errs);
		return 2;
	}
	/* the YAML parser leaves freed heap behind: give it back */
	malloc_trim(0);
	for (size_t i = 0; i < cfg->warnings.n; i++) {
		if (check)
			fprintf(stderr, "%s\n", cfg->warnings.v[i]);
		else
			log_warn("config", "%s", cfg->warnings.v[i]);
	}
	if (check) {
		config_print_summary(cfg, stdout);
		if (verbose)
			core_print_plan(cfg, stdout);
		config_free(cfg);
		return 0;
	}

	/* libcurl's global init waits for the first HTTP uplink (uplink_http.c):
	 * it loads OpenSSL, which a gateway without one never needs */
	mosquitto_lib_init();
	r = loop_new(&d.loop);
	if (r < 0) {
		log_err("main", "event loop: %s", strerror(-r));
		config_free(cfg);
		return 1;
	}
	/* Block signals before any thread starts, so only the loop sees them. */
	r = loop_signals(d.loop, sigs, 3, on_signal, &d);
	if (r < 0) {
		log_err("main", "signals: %s", strerror(-r));
		goto out;
	}
	signal(SIGPIPE, SIG_IGN);

	r = core_new(cfg, d.loop, &d.core);
	cfg = NULL; /* the core owns it now, also on failure */
	if (r < 0) {
		d.exit_code = 1;
		goto out;
	}
	/* cgwctl and metrics are for people; the daemon runs on without them */
	r = control_open(d.core, d.loop, core_config(d.core), &d.control);
	if (r < 0)
		log_warn("main", "running without the control socket (cgwctl): %s", strerror(-r));
	r = metrics_open(d.core, d.loop, core_config(d.core), &d.metrics);
	if (r < 0)
		log_warn("main", "running without metrics: %s", strerror(-r));
	r = console_open(d.core, d.loop, core_config(d.core), &d.console);
	if (r < 0)
		log_warn("main", "running without the web console: %s", strerror(-r));
	if (sd_watchdog_enabled(0, &d.watchdog_ms) > 0) {
		d.watchdog_ms /= 1000;
		if (d.watchdog_ms < 2)
			d.watchdog_ms = 2;
		d.watchdog = loop_timer_new(d.loop, on_watchdog, &d);
		loop_timer_in(d.watchdog, 0);
	}
	d.status = loop_timer_new(d.loop, on_status, &d);
	loop_timer_in(d.status, 10000);

	log_notice("main", "cgwd %s started: %s (%016llx)", CGW_VERSION, d.config_path,
		   (unsigned long long)core_config(d.core)->hash);
	sd_notify(0, "READY=1");
	notify_status(&d);

	r = loop_run(d.loop);
	if (r < 0) {
		log_err("main", "event loop: %s", strerror(-r));
		d.exit_code = 1;
	}
	sd_notify(0, "STOPPING=1");
out:
	control_close(d.control); /* before the core: it cancels pending replies */
	metrics_close(d.metrics);
	console_close(d.console); /* before the core: it cancels pending replies */
	core_free(d.core);
	config_free(cfg);
	loop_timer_free(d.watchdog);
	loop_timer_free(d.status);
	loop_free(d.loop);
	curl_global_cleanup(); /* nothing if no HTTP uplink ever initialised it */
	/* a connect abandoned in a hanging getaddrinfo() may still wake up and
	 * use libmosquitto's TLS state: leave it to the process exit */
	if (mqtt_link_connectors() == 0)
		mosquitto_lib_cleanup();
	if (!d.exit_code)
		log_notice("main", "stopped");
	return d.exit_code;
}
