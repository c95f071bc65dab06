/*
 * modbus_config.h - the Modbus bus types as the configuration knows them:
 * modbus-rtu (a local serial line), modbus-tcp, and modbus-rtu-tcp (RTU
 * frames over TCP: a serial server we connect to, or a DTU that dials in).
 * Their keys, defaults and checks are declared in modbus_config.c
 * (config_keys.h says how); the driver reads a bus's options with
 * modbus_opts().
 */
#ifndef CGW_MODBUS_CONFIG_H
#define CGW_MODBUS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "config_keys.h"

/* cfg_bus_type.variant of the three types */
enum modbus_transport { MB_SERIAL, MB_TCP, MB_RTU_TCP };

struct modbus_bus_opts {
	/* modbus-rtu */
	char *device;
	int64_t baud; /* also modbus-rtu-tcp: the line behind the serial server */
	int parity;   /* 0 N, 1 E, 2 O */
	int64_t data_bits, stop_bits;
	bool rs485;
	int64_t frame_delay_ms;
	/* modbus-tcp, modbus-rtu-tcp */
	char *host;
	int64_t port;
	/* modbus-rtu-tcp with listen: dial-in DTUs (the DTU connects to us) */
	char *listen;                /* ADDR:PORT; several buses may share one */
	char *reg_text, *reg_hex;    /* as written: register / register_hex */
	char *hb_text, *hb_hex;      /* heartbeat / heartbeat_hex */
	uint8_t *reg_id, *heartbeat; /* decoded by the check (owned) */
	size_t reg_len, heartbeat_len;
	/* all */
	int64_t timeout_ms, byte_timeout_ms, retries, offline_after, max_gap, max_registers;
};

extern const struct cfg_bus_type modbus_rtu_bus_type, modbus_tcp_bus_type, modbus_rtu_tcp_bus_type;

/* The options of a Modbus bus; NULL if the bus is of another driver. */
const struct modbus_bus_opts *modbus_opts(const struct cfg_bus *b);
/* The bus's transport (enum modbus_transport), or -1 if not Modbus. */
int modbus_transport(const struct cfg_bus *b);

#endif
