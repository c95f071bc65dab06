/*
 * bus_types.c - every type of bus the configuration knows (config_keys.h):
 * a new type is its descriptor, beside its driver, and a line here.
 * The order is that of the `type:` words in messages and --help-config.
 */
#include "config_keys.h"
#include "modbus_config.h"
#include "mqtt_ingest.h"

const struct cfg_bus_type *const cfg_bus_types[] = {
	&modbus_rtu_bus_type, &modbus_tcp_bus_type, &mqtt_bus_type, &modbus_rtu_tcp_bus_type, NULL,
};
