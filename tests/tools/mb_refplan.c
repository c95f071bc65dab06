/*
 * mb_refplan - the plan half of the bench's bare libmodbus loop (mb_ref):
 * reads a cgw configuration and prints, for every modbus-tcp and
 * modbus-rtu bus with devices, the requests the driver would issue
 * (modbus_plan.h, the same plan as the driver), as text:
 *
 *   bus tcp POLL_MS TIMEOUT_MS HOST PORT - 0 0 NAME
 *   bus rtu POLL_MS TIMEOUT_MS DEVICE BAUD PARITY(N|E|O) DATA_BITS STOP_BITS NAME
 *   req UNIT TABLE(0 coil, 1 discrete, 2 input, 3 holding) ADDR COUNT
 *
 * mb_ref runs it and keeps only these lines, so the reference process links
 * libmodbus alone and holds no configuration: the floor of the benches'
 * CPU and memory comparisons.
 *
 *   mb_refplan -c FILE     exit 2 on a configuration error
 */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "modbus_config.h"
#include "modbus_driver.h"
#include "modbus_plan.h"

int main(int argc, char **argv)
{
	struct cgw_config *cfg = NULL;
	struct cfg_errors errs = {0};

	if (argc != 3 || strcmp(argv[1], "-c")) {
		fprintf(stderr, "usage: mb_refplan -c FILE\n");
		return 2;
	}
	if (config_load(argv[2], &cfg, &errs) < 0) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.v[i]);
		cfg_errors_free(&errs);
		return 2;
	}
	for (size_t b = 0; b < cfg->n_buses; b++) {
		const struct cfg_bus *bus = &cfg->buses[b];
		const struct modbus_bus_opts *o = modbus_opts(bus);
		int transport = modbus_transport(bus);
		struct mb_plan *plan = NULL;
		int64_t poll_ms = 1000;

		if (!o || (transport != MB_TCP && transport != MB_SERIAL) || !bus->n_devices)
			continue;
		/* the bus's cycle: the poll interval of its last device */
		for (size_t i = 0; i < cfg->n_devices; i++)
			if (cfg->devices[i].bus == b)
				poll_ms = cfg->devices[i].poll_ms;
		if (modbus_bus_plan(cfg, b, &plan, NULL) < 0) {
			fprintf(stderr, "mb_refplan: bus %s: no plan\n", bus->name);
			continue;
		}
		if (transport == MB_SERIAL)
			printf("bus rtu %lld %lld %s %lld %c %lld %lld %s\n", (long long)poll_ms,
			       (long long)o->timeout_ms, o->device, (long long)o->baud,
			       o->parity == 1 ? 'E' :
			       o->parity == 2 ? 'O' :
						'N',
			       (long long)o->data_bits, (long long)o->stop_bits, bus->name);
		else
			printf("bus tcp %lld %lld %s %lld - 0 0 %s\n", (long long)poll_ms,
			       (long long)o->timeout_ms, o->host, (long long)o->port, bus->name);
		for (size_t i = 0; i < mbp_count(plan); i++) {
			const struct mb_req *q = mbp_req(plan, i);
			printf("req %u %d %u %u\n", (unsigned)q->unit, (int)q->table,
			       (unsigned)q->addr, (unsigned)q->count);
		}
		mbp_free(plan);
	}
	config_free(cfg);
	return fflush(stdout) == 0 ? 0 : 1;
}
