#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "modbus_decode.h"
#include "modbus_plan.h"

struct core {
	struct cgw_config *cfg;
	struct loop *loop;
	int64_t started_ms;
};

static int ensure_dir(const char *path)
{
	struct stat st;

	if (stat(path, &st) == 0)
		return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	if (mkdir(path, 0750) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int core_new(struct cgw_config *cfg, struct loop *l, struct core **out)
{
	struct core *c = calloc(1, sizeof(*c));
	int r;

	*out = NULL;
	if (!c) {
		config_free(cfg);
		return -ENOMEM;
	}
	c->cfg = cfg;
	c->loop = l;
	c->started_ms = cgw_mono_ms();
	r = ensure_dir(cfg->gateway.state_dir);
	if (r < 0) {
		log_err("core", "state_dir %s: %s", cfg->gateway.state_dir, strerror(-r));
		core_free(c);
		return r;
	}
	*out = c;
	return 0;
}

void core_free(struct core *c)
{
	if (!c)
		return;
	config_free(c->cfg);
	free(c);
}

int core_reload(struct core *c, struct cgw_config *cfg)
{
	config_free(c->cfg);
	c->cfg = cfg;
	return 0;
}

const struct cgw_config *core_config(const struct core *c)
{
	return c->cfg;
}

bool core_healthy(const struct core *c)
{
	(void)c;
	return true;
}

void core_status_line(const struct core *c, char *buf, size_t len)
{
	snprintf(buf, len, "%zu buses, %zu devices, %zu uplinks", c->cfg->n_buses,
		 c->cfg->n_devices, c->cfg->n_uplinks);
}

void core_print_plan(const struct cgw_config *cfg, FILE *f)
{
	for (size_t b = 0; b < cfg->n_buses; b++) {
		const struct cfg_bus *bus = &cfg->buses[b];
		struct mb_span *spans = NULL;
		size_t n = 0;
		struct mb_plan *plan = NULL;

		if (bus->type == CFG_BUS_MQTT)
			continue;
		for (size_t i = 0; i < cfg->n_devices; i++) {
			const struct cfg_device *d = &cfg->devices[i];
			const struct cfg_profile *pr = cfg_device_profile(cfg, d);
			if (d->bus != b)
				continue;
			struct mb_span *ns = realloc(spans, (n + pr->n_points) * sizeof(*ns));
			if (!ns)
				break;
			spans = ns;
			for (size_t p = 0; p < pr->n_points; p++) {
				const struct cfg_point *pt = &pr->points[p];
				struct mb_format fmt = {.type = pt->type, .order = pt->order,
							.str_len = pt->str_len, .bit = (int)pt->bit};
				spans[n++] = (struct mb_span){
					.device = (uint32_t)i,
					.point = (uint32_t)p,
					.unit = (uint8_t)d->unit,
					.table = pt->table,
					.addr = (uint16_t)(pt->address - d->address_base),
					.count = (uint16_t)(pt->table >= CGW_TBL_INPUT ? mbd_reg_count(&fmt) : 1),
					.max_gap = (uint16_t)d->max_gap,
					.max_regs = (uint16_t)d->max_registers,
				};
			}
		}
		if (mbp_build(spans, n, &plan) == 0) {
			fprintf(f, "bus %s: %zu requests per cycle for %zu points\n", bus->name,
				mbp_count(plan), n);
			mbp_print(plan, f);
		}
		mbp_free(plan);
		free(spans);
	}
}
