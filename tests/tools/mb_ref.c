/*
 * mb_ref - the physical reference of the Modbus benchmark: the least a
 * program can do to issue the same requests as the bus driver. For every
 * modbus-tcp (or modbus-rtu) bus of the configuration, one thread connects
 * and, every poll interval of the bus's devices, sends the planned reads
 * (modbus_plan.h, the same plan as the driver) back to back with plain
 * libmodbus calls: no decoding, no reporting, no queue.
 *
 * It is also the floor of the benches' memory comparison, so it holds what
 * a bare loop would: it links libmodbus alone and keeps no configuration.
 * The plan comes from the sibling tool mb_refplan (which links cgw's
 * configuration reader and planner), run once at start; only its request
 * lines are kept.
 *
 * SIGUSR1 prints "summary requests=N errors=N"; SIGTERM/SIGINT print it
 * and exit.
 *
 *   mb_ref -c FILE
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <modbus.h>

#define MAX_BUSES 256

struct req {
	uint8_t unit, table; /* 0 coil, 1 discrete, 2 input, 3 holding */
	uint16_t addr, count;
};

struct bus_run {
	char name[64];
	modbus_t *ctx;
	int64_t poll_ms;
	struct req *reqs;
	size_t n_reqs, cap_reqs;
	pthread_t th;
	bool started;
	atomic_bool *stop;
	atomic_uint_fast64_t requests, errors;
};

static void *bus_main(void *arg)
{
	struct bus_run *r = arg;
	uint16_t regs[MODBUS_MAX_READ_REGISTERS];
	uint8_t bits[MODBUS_MAX_READ_BITS];
	struct timespec next;

	if (modbus_connect(r->ctx) < 0) {
		fprintf(stderr, "mb_ref: bus %s: %s\n", r->name, modbus_strerror(errno));
		return NULL;
	}
	clock_gettime(CLOCK_MONOTONIC, &next);
	while (!atomic_load(r->stop)) {
		for (size_t i = 0; i < r->n_reqs && !atomic_load(r->stop); i++) {
			const struct req *q = &r->reqs[i];
			int rc;
			modbus_set_slave(r->ctx, q->unit);
			switch (q->table) {
			case 0:
				rc = modbus_read_bits(r->ctx, q->addr, q->count, bits);
				break;
			case 1:
				rc = modbus_read_input_bits(r->ctx, q->addr, q->count, bits);
				break;
			case 2:
				rc = modbus_read_input_registers(r->ctx, q->addr, q->count, regs);
				break;
			default:
				rc = modbus_read_registers(r->ctx, q->addr, q->count, regs);
			}
			atomic_fetch_add(&r->requests, 1);
			if (rc < 0)
				atomic_fetch_add(&r->errors, 1);
		}
		next.tv_sec += r->poll_ms / 1000;
		next.tv_nsec += (r->poll_ms % 1000) * 1000000;
		if (next.tv_nsec >= 1000000000) {
			next.tv_sec++;
			next.tv_nsec -= 1000000000;
		}
		/* short naps so SIGTERM is seen within 100 ms */
		for (;;) {
			struct timespec now, nap = {0, 100 * 1000000};
			clock_gettime(CLOCK_MONOTONIC, &now);
			int64_t left = (next.tv_sec - now.tv_sec) * 1000 +
				       (next.tv_nsec - now.tv_nsec) / 1000000;
			if (left <= 0 || atomic_load(r->stop))
				break;
			if (left < 100)
				nap.tv_nsec = left * 1000000;
			nanosleep(&nap, NULL);
		}
	}
	return NULL;
}

/* One "bus ..." line of mb_refplan: the bus's libmodbus context. */
static int bus_line(struct bus_run *r, const char *line)
{
	char type[8], where[256], parity[4];
	long long poll_ms, timeout_ms, port, data_bits, stop_bits;

	if (sscanf(line, "bus %7s %lld %lld %255s %lld %3s %lld %lld %63s", type, &poll_ms,
		   &timeout_ms, where, &port, parity, &data_bits, &stop_bits, r->name) != 9)
		return -1;
	r->poll_ms = poll_ms > 0 ? poll_ms : 1000;
	if (!strcmp(type, "rtu")) {
		r->ctx =
			modbus_new_rtu(where, (int)port, parity[0], (int)data_bits, (int)stop_bits);
	} else {
		char p[16];
		snprintf(p, sizeof(p), "%lld", port);
		r->ctx = modbus_new_tcp_pi(where, p);
	}
	if (!r->ctx)
		return -1;
	modbus_set_response_timeout(r->ctx, (uint32_t)(timeout_ms / 1000),
				    (uint32_t)(timeout_ms % 1000) * 1000);
	return 0;
}

static int req_line(struct bus_run *r, const char *line)
{
	unsigned unit, table, addr, count;

	if (sscanf(line, "req %u %u %u %u", &unit, &table, &addr, &count) != 4 || unit > 255 ||
	    table > 3 || addr > 65535 || count < 1 || count > MODBUS_MAX_READ_BITS)
		return -1;
	if (r->n_reqs == r->cap_reqs) {
		size_t cap = r->cap_reqs ? 2 * r->cap_reqs : 64;
		struct req *n = realloc(r->reqs, cap * sizeof(*n));
		if (!n)
			return -1;
		r->reqs = n;
		r->cap_reqs = cap;
	}
	r->reqs[r->n_reqs++] =
		(struct req){(uint8_t)unit, (uint8_t)table, (uint16_t)addr, (uint16_t)count};
	return 0;
}

/* Runs mb_refplan (next to this program) on the configuration. */
static int load_plan(const char *config, struct bus_run *runs, size_t *n)
{
	char self[PATH_MAX], cmd[2 * PATH_MAX + 64], line[512];
	ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	FILE *p;
	int rc = 0;

	if (len <= 0)
		return -1;
	self[len] = '\0';
	*strrchr(self, '/') = '\0';
	if (strchr(config, '\'') ||
	    snprintf(cmd, sizeof(cmd), "'%s/mb_refplan' -c '%s'", self, config) >= (int)sizeof(cmd))
		return -1;
	p = popen(cmd, "r");
	if (!p)
		return -1;
	while (fgets(line, sizeof(line), p)) {
		if (!strncmp(line, "bus ", 4)) {
			if (*n == MAX_BUSES || bus_line(&runs[*n], line) < 0) {
				rc = -1;
				break;
			}
			(*n)++;
		} else if (!strncmp(line, "req ", 4)) {
			if (!*n || req_line(&runs[*n - 1], line) < 0) {
				rc = -1;
				break;
			}
		}
	}
	if (pclose(p) != 0)
		rc = -1;
	return rc;
}

static void summary(struct bus_run *runs, size_t n)
{
	uint64_t req = 0, err = 0;

	for (size_t i = 0; i < n; i++) {
		req += atomic_load(&runs[i].requests);
		err += atomic_load(&runs[i].errors);
	}
	printf("summary requests=%" PRIu64 " errors=%" PRIu64 "\n", req, err);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static struct bus_run runs[MAX_BUSES];
	atomic_bool stop;
	size_t n = 0;
	sigset_t sigs;
	int sfd;

	if (argc != 3 || strcmp(argv[1], "-c")) {
		fprintf(stderr, "usage: mb_ref -c FILE\n");
		return 2;
	}
	if (load_plan(argv[2], runs, &n) < 0) {
		fprintf(stderr, "mb_ref: %s: no plan (mb_refplan failed)\n", argv[2]);
		return 2;
	}
	/* what stdio's and popen's setup left behind */
	malloc_trim(0);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGUSR1);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	atomic_init(&stop, false);
	for (size_t i = 0; i < n; i++) {
		runs[i].stop = &stop;
		runs[i].started = pthread_create(&runs[i].th, NULL, bus_main, &runs[i]) == 0;
	}
	for (;;) {
		struct signalfd_siginfo si;
		if (read(sfd, &si, sizeof(si)) != sizeof(si))
			continue;
		summary(runs, n);
		if (si.ssi_signo != SIGUSR1)
			break;
	}
	atomic_store(&stop, true);
	for (size_t i = 0; i < n; i++) {
		if (runs[i].started)
			pthread_join(runs[i].th, NULL);
		modbus_close(runs[i].ctx);
		modbus_free(runs[i].ctx);
		free(runs[i].reqs);
	}
	close(sfd);
	return 0;
}
