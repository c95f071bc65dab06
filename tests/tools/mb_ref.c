/*
 * mb_ref - the physical reference of the Modbus benchmark: the least a
 * program can do to issue the same requests as the bus driver. For every
 * modbus-tcp bus of the configuration, one thread connects and, every poll
 * interval of the bus's first device, sends the planned reads
 * (modbus_plan.h, the same plan as the driver) back to back with plain
 * libmodbus calls: no decoding, no reporting, no queue.
 *
 * SIGUSR1 prints "summary requests=N errors=N"; SIGTERM/SIGINT print it
 * and exit.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <modbus.h>

#include "config.h"
#include "modbus_config.h"
#include "modbus_decode.h"
#include "modbus_driver.h"
#include "modbus_plan.h"

struct bus_run {
	const struct cgw_config *cfg;
	size_t bus;
	pthread_t th;
	atomic_bool *stop;
	atomic_uint_fast64_t requests, errors;
};

static struct mb_plan *plan_for(const struct cgw_config *cfg, size_t bus, int64_t *poll_ms)
{
	struct mb_plan *plan = NULL;

	*poll_ms = 1000;
	for (size_t i = 0; i < cfg->n_devices; i++)
		if (cfg->devices[i].bus == bus)
			*poll_ms = cfg->devices[i].poll_ms;
	if (modbus_bus_plan(cfg, bus, &plan, NULL) < 0)
		return NULL;
	return plan;
}

static void *bus_main(void *arg)
{
	struct bus_run *r = arg;
	const struct cfg_bus *cb = &r->cfg->buses[r->bus];
	const struct modbus_bus_opts *b = modbus_opts(cb);
	char port[16];
	int64_t poll_ms;
	struct mb_plan *plan = plan_for(r->cfg, r->bus, &poll_ms);
	modbus_t *ctx;
	uint16_t regs[MBP_MAX_REGS];
	uint8_t bits[MBP_MAX_BITS];
	struct timespec next;

	snprintf(port, sizeof(port), "%lld", (long long)b->port);
	if (modbus_transport(cb) == MB_SERIAL)
		ctx = modbus_new_rtu(b->device, (int)b->baud,
				     b->parity == 1 ? 'E' :
				     b->parity == 2 ? 'O' :
						      'N',
				     (int)b->data_bits, (int)b->stop_bits);
	else
		ctx = modbus_new_tcp_pi(b->host, port);
	if (ctx)
		modbus_set_response_timeout(ctx, (uint32_t)(b->timeout_ms / 1000),
					    (uint32_t)(b->timeout_ms % 1000) * 1000);
	if (!plan || !ctx || modbus_connect(ctx) < 0) {
		fprintf(stderr, "mb_ref: bus %s: %s\n", cb->name, modbus_strerror(errno));
		goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &next);
	while (!atomic_load(r->stop)) {
		for (size_t i = 0; i < mbp_count(plan) && !atomic_load(r->stop); i++) {
			const struct mb_req *q = mbp_req(plan, i);
			int rc;
			modbus_set_slave(ctx, q->unit);
			switch (q->table) {
			case CGW_TBL_COIL:
				rc = modbus_read_bits(ctx, q->addr, q->count, bits);
				break;
			case CGW_TBL_DISCRETE:
				rc = modbus_read_input_bits(ctx, q->addr, q->count, bits);
				break;
			case CGW_TBL_INPUT:
				rc = modbus_read_input_registers(ctx, q->addr, q->count, regs);
				break;
			default:
				rc = modbus_read_registers(ctx, q->addr, q->count, regs);
			}
			atomic_fetch_add(&r->requests, 1);
			if (rc < 0)
				atomic_fetch_add(&r->errors, 1);
		}
		next.tv_sec += poll_ms / 1000;
		next.tv_nsec += (poll_ms % 1000) * 1000000;
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
out:
	if (ctx) {
		modbus_close(ctx);
		modbus_free(ctx);
	}
	mbp_free(plan);
	return NULL;
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
	struct cgw_config *cfg = NULL;
	struct cfg_errors errs = {0};
	struct bus_run *runs;
	atomic_bool stop;
	size_t n = 0;
	sigset_t sigs;
	int sfd;

	if (argc != 3 || strcmp(argv[1], "-c")) {
		fprintf(stderr, "usage: mb_ref -c FILE\n");
		return 2;
	}
	if (config_load(argv[2], &cfg, &errs) < 0) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.v[i]);
		cfg_errors_free(&errs);
		return 2;
	}
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGUSR1);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	atomic_init(&stop, false);
	runs = calloc(cfg->n_buses ? cfg->n_buses : 1, sizeof(*runs));
	for (size_t b = 0; runs && b < cfg->n_buses; b++) {
		if ((modbus_transport(&cfg->buses[b]) != MB_TCP &&
		     modbus_transport(&cfg->buses[b]) != MB_SERIAL) ||
		    !cfg->buses[b].n_devices)
			continue;
		runs[n] = (struct bus_run){.cfg = cfg, .bus = b, .stop = &stop};
		if (pthread_create(&runs[n].th, NULL, bus_main, &runs[n]) == 0)
			n++;
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
	for (size_t i = 0; i < n; i++)
		pthread_join(runs[i].th, NULL);
	free(runs);
	config_free(cfg);
	close(sfd);
	return 0;
}
