/*
 * sim_main.c - cgw-sim: arguments, configuration, the control channel.
 *
 * The device logic lives in the modules (sim_modbus.c); this file reads
 * command lines from stdin and from an optional UNIX socket and hands each
 * to the modules in turn (see sim.h).
 */
#include "sim.h"
#include "sim_ext.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

#define MAX_CONTROL_CLIENTS 16
#define MAX_LINE 1024
#define MAX_ARGS 64

static struct sim_mqtt *g_mqtt;

struct client {
	int fd;
	char buf[MAX_LINE];
	size_t len;
};

static void usage(FILE *f)
{
	fputs("usage: cgw-sim -c FILE [--control PATH] [--strict] [--churn PERCENT] [--wire-time] [-v]\n"
	      "\n"
	      "Simulates the devices of a cgw configuration: listens on host:port of every\n"
	      "modbus-tcp bus and answers on the serial device of every modbus-rtu bus.\n"
	      "Prints \"ready\" on stdout once every bus is served.\n"
	      "\n"
	      "  -c, --config FILE    the configuration (cgw.yaml format)\n"
	      "      --control PATH   also take commands on this UNIX socket\n"
	      "      --strict         every unit answers exception 2 for addresses no point covers\n"
	      "      --churn PERCENT  every second, change this % of every unit's registers\n"
	      "      --wire-time      serial RTU buses too hold each answer for its wire time\n"
	      "      --scenario FILE  play a scenario file (incidents on a timeline)\n"
	      "      --speed X        play the scenario X times faster\n"
	      "  -v, --verbose        log at debug level\n"
	      "\n"
	      "Commands (stdin or the socket), one per line, one reply line each:\n"
	      "  set DEVICE POINT VALUE | get DEVICE POINT | raw DEVICE TABLE ADDR WORD...\n"
	      "  silence DEVICE on|off | garbage DEVICE on|off | strict DEVICE on|off\n"
	      "  exception DEVICE ADDR [CODE|off] | count DEVICE | churn PERCENT | quit\n"
	      "  publish DEVICE SUBTOPIC PAYLOAD | publish-raw DEVICE SUBTOPIC HEX (MQTT devices)\n",
	      f);
}

/* Runs one line; false when it asks the simulator to quit. */
static bool run_line(struct sim_modbus *mb, char *line, FILE *out)
{
	char *argv[MAX_ARGS], *save = NULL, orig[MAX_LINE];
	int argc = 0;

	snprintf(orig, sizeof(orig), "%s", line);
	for (char *t = strtok_r(line, " \t\r\n", &save); t && argc < MAX_ARGS;
	     t = strtok_r(NULL, " \t\r\n", &save))
		argv[argc++] = t;
	if (argc == 0)
		return true;
	if (!strcmp(argv[0], "quit")) {
		fputs("ok\n", out);
		return false;
	}
	if (!strcmp(argv[0], "ping")) {
		fputs("pong\n", out);
		return true;
	}
	if (sim_mqtt_command(g_mqtt, argc, argv, orig, out) != -ENOENT)
		return true;
	if (sim_modbus_command(mb, argc, argv, out) == -ENOENT)
		fprintf(out, "error: unknown command or device: %s%s%s\n", argv[0],
			argc > 1 ? " " : "", argc > 1 ? argv[1] : "");
	return true;
}

/* Lines complete in c->buf: run them, reply on fd. False on quit. */
static bool drain_lines(struct sim_modbus *mb, struct client *c, int out_fd)
{
	bool go = true;
	char *nl;

	while (go && (nl = memchr(c->buf, '\n', c->len))) {
		char *reply = NULL;
		size_t rlen = 0;
		FILE *f = open_memstream(&reply, &rlen);
		size_t used = (size_t)(nl - c->buf) + 1;

		*nl = '\0';
		if (f) {
			go = run_line(mb, c->buf, f);
			fclose(f);
			for (size_t off = 0; off < rlen;) {
				ssize_t w =
					out_fd == STDOUT_FILENO ?
						write(out_fd, reply + off, rlen - off) :
						send(out_fd, reply + off, rlen - off, MSG_NOSIGNAL);
				if (w <= 0)
					break;
				off += (size_t)w;
			}
			free(reply);
		}
		memmove(c->buf, c->buf + used, c->len - used);
		c->len -= used;
	}
	if (c->len == sizeof(c->buf))
		c->len = 0; /* a line longer than MAX_LINE: drop it */
	return go;
}

/* A scenario step: run like a typed command; errors go to the log. */
static void scenario_exec(void *arg, const char *line)
{
	char buf[MAX_LINE], *reply = NULL;
	size_t rlen = 0;
	FILE *f = open_memstream(&reply, &rlen);

	if (!f)
		return;
	snprintf(buf, sizeof(buf), "%s", line);
	run_line(arg, buf, f);
	fclose(f);
	if (reply && strncmp(reply, "error", 5) == 0)
		log_warn("scenario", "%s: %.*s", line, (int)strcspn(reply, "\n"), reply);
	free(reply);
}

static int listen_control(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 8) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
					     {"control", required_argument, NULL, 'C'},
					     {"strict", no_argument, NULL, 'S'},
					     {"churn", required_argument, NULL, 'R'},
					     {"wire-time", no_argument, NULL, 'W'},
					     {"verbose", no_argument, NULL, 'v'},
					     {"help", no_argument, NULL, 'h'},
					     {"scenario", required_argument, NULL, 'P'},
					     {"speed", required_argument, NULL, 'X'},
					     {NULL, 0, NULL, 0}};
	struct sim_modbus_opts mopts = {0};
	const char *config = NULL, *control = NULL, *scenario = NULL;
	double speed = 1.0;
	struct sim_scenario *scen = NULL;
	struct cgw_config *cfg = NULL;
	struct cfg_errors errs = {0};
	struct sim_modbus *mb = NULL;
	struct client clients[MAX_CONTROL_CLIENTS], in = {.fd = STDIN_FILENO};
	size_t nc = 0;
	int lfd = -1, sfd = -1, rc = 1, o;
	bool stdin_open = true, go = true;
	sigset_t sigs;

	while ((o = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
		switch (o) {
		case 'c':
			config = optarg;
			break;
		case 'C':
			control = optarg;
			break;
		case 'S':
			mopts.strict = true;
			break;
		case 'R':
			mopts.churn_pct = atoi(optarg);
			break;
		case 'W':
			mopts.wire_time = true;
			break;
		case 'v':
			log_setup(true, LOG_DEBUG);
			break;
		case 'P':
			scenario = optarg;
			break;
		case 'X':
			speed = atof(optarg);
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
	signal(SIGPIPE, SIG_IGN);
	if (fcntl(STDIN_FILENO, F_GETFD) < 0)
		stdin_open = false; /* started with stdin closed */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);

	if (config_load(config, &cfg, &errs) < 0) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.v[i]);
		cfg_errors_free(&errs);
		return 2;
	}
	if (control) {
		lfd = listen_control(control);
		if (lfd < 0) {
			fprintf(stderr, "cgw-sim: control socket %s: %s\n", control,
				strerror(-lfd));
			goto out;
		}
	}
	if (sim_modbus_start(cfg, &mopts, &mb) < 0)
		goto out;
	if (sim_mqtt_start(cfg, &g_mqtt) < 0)
		goto out;
	if (scenario && sim_scenario_start(scenario, speed, scenario_exec, mb, &scen) < 0)
		goto out;
	printf("ready\n");
	fflush(stdout);

	while (go) {
		struct pollfd pfd[3 + MAX_CONTROL_CLIENTS];
		size_t n = 0;

		pfd[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
		pfd[n++] = (struct pollfd){.fd = stdin_open ? STDIN_FILENO : -1, .events = POLLIN};
		pfd[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
		for (size_t i = 0; i < nc; i++)
			pfd[n++] = (struct pollfd){.fd = clients[i].fd, .events = POLLIN};
		if (poll(pfd, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[0].revents & POLLIN)
			break; /* SIGTERM / SIGINT */
		if (pfd[1].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) {
			ssize_t r = read(STDIN_FILENO, in.buf + in.len, sizeof(in.buf) - in.len);
			if (r <= 0)
				stdin_open = false; /* run on without a terminal */
			else {
				in.len += (size_t)r;
				go = drain_lines(mb, &in, STDOUT_FILENO);
			}
		}
		for (size_t i = nc; go && i-- > 0;) {
			if (!(pfd[3 + i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			struct client *c = &clients[i];
			ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
			if (r <= 0) {
				close(c->fd);
				clients[i] = clients[--nc];
				continue;
			}
			c->len += (size_t)r;
			go = drain_lines(mb, c, c->fd);
		}
		if (go && lfd >= 0 && (pfd[2].revents & POLLIN)) {
			int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0 && nc < MAX_CONTROL_CLIENTS)
				clients[nc++] = (struct client){.fd = c};
			else if (c >= 0)
				close(c);
		}
	}
	rc = 0;
out:
	for (size_t i = 0; i < nc; i++)
		close(clients[i].fd);
	if (lfd >= 0) {
		close(lfd);
		unlink(control);
	}
	sim_scenario_stop(scen);
	sim_mqtt_stop(g_mqtt);
	sim_modbus_stop(mb);
	config_free(cfg);
	if (sfd >= 0)
		close(sfd);
	return rc;
}
