/*
 * driver.c - which driver serves which type of bus.
 */
#include "driver.h"

#include <stddef.h>

const struct driver_ops *driver_ops_for(int bus_type)
{
	switch (bus_type) {
	case CFG_BUS_MODBUS_RTU:
	case CFG_BUS_MODBUS_TCP:
	case CFG_BUS_MODBUS_RTU_TCP:
		return &modbus_driver_ops;
	case CFG_BUS_MQTT:
		return &mqtt_ingest_ops;
	}
	return NULL;
}
