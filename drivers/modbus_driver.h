/*
 * modbus_driver.h - what the Modbus driver shares beyond driver_ops: how a
 * configured point becomes a decoding format and a span of the request
 * plan, and the plan of a whole bus (for `cgwd --check-config -v` and the
 * benchmark's reference client).
 */
#ifndef CGW_MODBUS_DRIVER_H
#define CGW_MODBUS_DRIVER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "modbus_decode.h"
#include "modbus_plan.h"

struct mb_format modbus_point_format(const struct cfg_point *pt);
/* The span of point p of device dev (index into cfg->devices). */
struct mb_span modbus_point_span(const struct cfg_device *cd, uint32_t dev, uint32_t p,
				 const struct cfg_point *pt);
/* The request plan of every point of every device on the bus; *npoints
 * (may be NULL) gets the number of points planned. 0 or -ENOMEM/-EINVAL. */
int modbus_bus_plan(const struct cgw_config *cfg, size_t bus, struct mb_plan **out,
		    size_t *npoints);
/* The plan of every Modbus bus, for people. */
void modbus_print_plan(const struct cgw_config *cfg, FILE *f);

#endif
