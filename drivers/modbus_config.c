/*
 * modbus_config.c - the keys and checks of the Modbus bus types (see
 * modbus_config.h and config_keys.h). The three types share the rows of one
 * options struct; each lists the rows that apply to it.
 */
#include "modbus_config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "driver.h"
#include "metrics.h"
#include "modbus_driver.h"

static const char *const parities[] = {"N", "E", "O", NULL};

#define O(f) CFG_OFF(struct modbus_bus_opts, f)

/* rows, by what they describe */
#define K_DEVICE                                                       \
	{                                                              \
		"device", K_STR, O(device), NULL, 0, 0, 0, NULL, NULL, \
			"serial device, e.g. /dev/ttyUSB0"             \
	}
#define K_BAUD                                                               \
	{                                                                    \
		"baud", K_INT, O(baud), "9600", 0, 300, 4000000, NULL, NULL, \
			"baud rate of the line (frame timing)"               \
	}
#define K_SERIAL                                                                           \
	{"parity", K_CHOICE, O(parity), "N", 0, 0, 0, parities, NULL, "N, E or O"},        \
		{"data_bits", K_INT, O(data_bits), "8", 0, 5, 8, NULL, NULL, "data bits"}, \
		{"stop_bits", K_INT, O(stop_bits), "1", 0, 1, 2, NULL, NULL, "stop bits"}, \
	{                                                                                  \
		"rs485", K_BOOL, O(rs485), "false", 0, 0, 0, NULL, NULL,                   \
			"switch the port to RS-485 mode (if the driver supports it)"       \
	}
#define K_FRAME_DELAY                                                                         \
	{                                                                                     \
		"frame_delay", K_DURATION, O(frame_delay_ms), "0ms", 0, 0, 10000, NULL, NULL, \
			"extra quiet time between frames (slow devices)"                      \
	}
#define K_TCP                                                                        \
	{"host", K_STR, O(host), NULL, 0, 0, 0, NULL, NULL, "host name or address"}, \
	{                                                                            \
		"port", K_INT, O(port), "502", 0, 1, 65535, NULL, NULL, "TCP port"   \
	}
#define K_DTU                                                                                      \
	{"listen",                                                                                 \
	 K_STR,                                                                                    \
	 O(listen),                                                                                \
	 NULL,                                                                                     \
	 0,                                                                                        \
	 0,                                                                                        \
	 0,                                                                                        \
	 NULL,                                                                                     \
	 NULL,                                                                                     \
	 "ADDRESS:PORT to accept a dial-in DTU on, instead of host/port (buses may share one; "    \
	 "each DTU is told apart by its registration)"},                                           \
		{"register",                                                                       \
		 K_STR,                                                                            \
		 O(reg_text),                                                                      \
		 NULL,                                                                             \
		 KF_NOCMP,                                                                         \
		 0,                                                                                \
		 0,                                                                                \
		 NULL,                                                                             \
		 NULL,                                                                             \
		 "with listen: the registration packet the DTU sends on connect (e.g. its "        \
		 "IMEI)"},                                                                         \
		{"register_hex",                                                                   \
		 K_STR,                                                                            \
		 O(reg_hex),                                                                       \
		 NULL,                                                                             \
		 KF_NOCMP,                                                                         \
		 0,                                                                                \
		 0,                                                                                \
		 NULL,                                                                             \
		 NULL,                                                                             \
		 "with listen: the registration packet in hex, e.g. 'A5 01 02'"},                  \
		{"heartbeat", K_STR,                                                               \
		 O(hb_text),  NULL,                                                                \
		 KF_NOCMP,    0,                                                                   \
		 0,           NULL,                                                                \
		 NULL,        "with listen: the DTU's heartbeat packet, dropped from the stream"}, \
	{                                                                                          \
		"heartbeat_hex", K_STR, O(hb_hex), NULL, KF_NOCMP, 0, 0, NULL, NULL,               \
			"with listen: the heartbeat packet in hex"                                 \
	}
#define K_MODBUS                                                                                    \
	{"timeout", K_DURATION, O(timeout_ms), "1s", 0, 10, 60000, NULL, NULL, "response timeout"}, \
		{"byte_timeout",                                                                    \
		 K_DURATION,                                                                        \
		 O(byte_timeout_ms),                                                                \
		 "0ms",                                                                             \
		 0,                                                                                 \
		 0,                                                                                 \
		 10000,                                                                             \
		 NULL,                                                                              \
		 NULL,                                                                              \
		 "timeout between bytes of a response (0: libmodbus's default)"},                   \
		{"retries",  K_INT,                                                                 \
		 O(retries), "1",                                                                   \
		 0,          0,                                                                     \
		 10,         NULL,                                                                  \
		 NULL,       "retries of a failed request before the cycle counts as failed"},      \
		{"offline_after",                                                                   \
		 K_INT,                                                                             \
		 O(offline_after),                                                                  \
		 "3",                                                                               \
		 0,                                                                                 \
		 1,                                                                                 \
		 1000,                                                                              \
		 NULL,                                                                              \
		 NULL,                                                                              \
		 "failed poll cycles before a device is offline"},                                  \
		{"max_gap",  K_INT,                                                                 \
		 O(max_gap), "8",                                                                   \
		 0,          0,                                                                     \
		 124,        NULL,                                                                  \
		 NULL,       "registers bridged when merging reads (0: merge only adjacent)"},      \
	{                                                                                           \
		"max_registers", K_INT, O(max_registers), "125", 0, 1, 125, NULL, NULL,             \
			"largest read, in registers"                                                \
	}

static const struct cfg_key rtu_keys[] = {K_DEVICE, K_BAUD, K_SERIAL, K_FRAME_DELAY, K_MODBUS};
static const struct cfg_key tcp_keys[] = {K_TCP, K_MODBUS};
static const struct cfg_key rtu_tcp_keys[] = {K_TCP, K_BAUD, K_FRAME_DELAY, K_DTU, K_MODBUS};

const struct modbus_bus_opts *modbus_opts(const struct cfg_bus *b)
{
	return modbus_transport(b) >= 0 ? b->opts : NULL;
}

int modbus_transport(const struct cfg_bus *b)
{
	if (!b || !b->kind || !b->opts)
		return -1;
	if (b->kind == &modbus_rtu_bus_type || b->kind == &modbus_tcp_bus_type ||
	    b->kind == &modbus_rtu_tcp_bus_type)
		return b->kind->variant;
	return -1;
}

#define CFG_DTU_ID_MAX 128

/* A packet given as text or as hex (at most one of them): errors found. */
static int dtu_packet(struct cfg_loader *ld, const struct cfg_bus *b, const char *key,
		      const char *text, const char *hex, bool required, uint8_t **out, size_t *len)
{
	char hkey[32];

	snprintf(hkey, sizeof(hkey), "%s_hex", key);
	if (text && hex) {
		cfg_bus_error(ld, b, hkey, "give '%s' or '%s', not both", key, hkey);
		return 1;
	}
	if (!text && !hex) {
		if (!required)
			return 0;
		cfg_bus_error(ld, b, NULL,
			      "a bus that listens for a DTU needs '%s' (or '%s'): the registration "
			      "that tells its DTU apart",
			      key, hkey);
		return 1;
	}
	if (text) {
		*len = strlen(text);
		*out = (uint8_t *)strdup(text);
		if (!*out || !*len) {
			cfg_bus_error(ld, b, key, "empty '%s'", key);
			return 1;
		}
	} else if (cfg_parse_hex(hex, out, len) < 0) {
		cfg_bus_error(ld, b, hkey, "%s '%s' is not hex bytes (e.g. 'A5 01 02')", hkey, hex);
		return 1;
	}
	if (*len > CFG_DTU_ID_MAX) {
		cfg_bus_error(ld, b, hex ? hkey : key, "%s is %zu bytes; at most %d", key, *len,
			      CFG_DTU_ID_MAX);
		return 1;
	}
	return 0;
}

/* modbus-rtu-tcp: a serial server we connect to (host), or a DTU that dials
 * in (listen + its registration). */
static int check_rtu_tcp(struct cfg_loader *ld, struct cfg_bus *b)
{
	static const char *const dial_in[] = {"register", "register_hex", "heartbeat",
					      "heartbeat_hex", NULL};
	struct modbus_bus_opts *m = b->opts;
	struct cgw_config *cfg = cfg_loading(ld);
	struct sockaddr_storage ss;
	socklen_t sl;
	int nerr = 0;

	if (!m->listen) {
		for (int i = 0; dial_in[i]; i++) {
			if (cfg_bus_given(b, dial_in[i])) {
				cfg_bus_error(ld, b, dial_in[i],
					      "key '%s' is for a bus that listens for a DTU",
					      dial_in[i]);
				nerr++;
			}
		}
		return nerr;
	}
	if (cfg_bus_given(b, "host") || cfg_bus_given(b, "port")) {
		const char *k = cfg_bus_given(b, "host") ? "host" : "port";
		cfg_bus_error(ld, b, k,
			      "'%s' and 'listen' exclude each other (connect, or be connected to)",
			      k);
		nerr++;
	}
	if (metrics_parse_listen(m->listen, &ss, &sl) < 0) {
		cfg_bus_error(ld, b, "listen",
			      "listen '%s' is not ADDRESS:PORT (e.g. 0.0.0.0:9001)", m->listen);
		nerr++;
	}
	nerr += dtu_packet(ld, b, "register", m->reg_text, m->reg_hex, true, &m->reg_id,
			   &m->reg_len);
	nerr += dtu_packet(ld, b, "heartbeat", m->hb_text, m->hb_hex, false, &m->heartbeat,
			   &m->heartbeat_len);
	for (const struct cfg_bus *o = cfg->buses; !nerr && o < b; o++) {
		const struct modbus_bus_opts *om = o->opts;
		if (o->kind != b->kind || !om)
			continue;
		if (om->listen && !strcmp(om->listen, m->listen) && om->reg_len == m->reg_len &&
		    !memcmp(om->reg_id, m->reg_id, m->reg_len)) {
			cfg_bus_error(ld, b, m->reg_text ? "register" : "register_hex",
				      "bus '%s' already waits for this registration on %s", o->name,
				      m->listen);
			nerr++;
		}
	}
	return nerr;
}

static void device_defaults(const struct cfg_bus *b, struct cfg_device *d)
{
	const struct modbus_bus_opts *m = b->opts;

	if (d->timeout_ms < 0)
		d->timeout_ms = m->timeout_ms;
	if (d->retries < 0)
		d->retries = m->retries;
	if (d->offline_after < 0)
		d->offline_after = m->offline_after;
	if (d->max_gap < 0)
		d->max_gap = m->max_gap;
	if (d->max_registers < 0)
		d->max_registers = m->max_registers;
}

/* Two buses on one serial line or one TCP endpoint share their unit ids; a
 * DTU that dials in is a line of its own. */
static void endpoint(const struct cfg_bus *b, char *buf, size_t cap)
{
	const struct modbus_bus_opts *m = b->opts;

	if (m->device)
		snprintf(buf, cap, "serial line %s", m->device);
	else if (!m->listen)
		snprintf(buf, cap, "endpoint %s:%lld", m->host ? m->host : "?", (long long)m->port);
}

static const char *where(const struct cfg_bus *b)
{
	const struct modbus_bus_opts *m = b->opts;

	return m->device ? m->device : m->listen ? m->listen : m->host;
}

/* `--check-config -v`: the bus's requests, with the device and the points
 * (by name, at their address) each one reads. */
static void print_plan(const struct cgw_config *cfg, size_t b, FILE *f)
{
	static const char *const tables[] = {"coil", "discrete", "input", "holding"};
	struct mb_plan *plan = NULL;
	size_t n;

	if (modbus_bus_plan(cfg, b, &plan, &n) < 0)
		return;
	fprintf(f, "bus %s: %zu requests per cycle for %zu points\n", cfg->buses[b].name,
		mbp_count(plan), n);
	for (size_t i = 0; i < mbp_count(plan); i++) {
		const struct mb_req *r = mbp_req(plan, i);
		const struct cfg_device *d = &cfg->devices[r->device];
		const struct cfg_profile *pr = cfg_device_profile(cfg, d);
		bool bits = r->table == CGW_TBL_COIL || r->table == CGW_TBL_DISCRETE;

		fprintf(f, "  unit %u %s %u..%u (%u %s) %s:", (unsigned)r->unit,
			r->table < 4 ? tables[r->table] : "?", (unsigned)r->addr,
			(unsigned)(r->addr + r->count - 1), (unsigned)r->count,
			bits ? "bits" : "registers", d->id);
		for (size_t j = 0; j < r->nspans; j++) {
			const struct mb_span *sp = mbp_span(plan, r->first_span + j);
			fprintf(f, "%s %s@%u", j ? "," : "", pr->points[sp->point].name,
				(unsigned)sp->addr);
		}
		fputc('\n', f);
	}
	mbp_free(plan);
}

static void opts_free(void *opts)
{
	struct modbus_bus_opts *m = opts;

	free(m->reg_id);
	free(m->heartbeat);
}

static bool bytes_eq(const uint8_t *a, size_t na, const uint8_t *b, size_t nb)
{
	return na == nb && (!na || !memcmp(a, b, na));
}

/* register/heartbeat are compared as the bytes they decode to, not as
 * written (text or hex) */
static bool opts_equal(const void *pa, const void *pb)
{
	const struct modbus_bus_opts *a = pa, *b = pb;

	return bytes_eq(a->reg_id, a->reg_len, b->reg_id, b->reg_len) &&
	       bytes_eq(a->heartbeat, a->heartbeat_len, b->heartbeat, b->heartbeat_len);
}

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define MODBUS_COMMON                                                             \
	.opts_size = sizeof(struct modbus_bus_opts), .ops = &modbus_driver_ops,   \
	.device_defaults = device_defaults, .endpoint = endpoint, .where = where, \
	.print_plan = print_plan, .free = opts_free, .equal = opts_equal

const struct cfg_bus_type modbus_rtu_bus_type = {
	.name = "modbus-rtu",
	.help = "Modbus RTU on a local serial port",
	.keys = rtu_keys,
	.n_keys = N(rtu_keys),
	.required = "device",
	.devices = CFG_DEVICES_RTU,
	.variant = MB_SERIAL,
	MODBUS_COMMON,
};

const struct cfg_bus_type modbus_tcp_bus_type = {
	.name = "modbus-tcp",
	.help = "Modbus TCP to a device or a gateway",
	.keys = tcp_keys,
	.n_keys = N(tcp_keys),
	.required = "host",
	.devices = CFG_DEVICES_MODBUS,
	.variant = MB_TCP,
	MODBUS_COMMON,
};

const struct cfg_bus_type modbus_rtu_tcp_bus_type = {
	.name = "modbus-rtu-tcp",
	.help = "RTU frames over TCP: a serial server in transparent mode (host), or a DTU "
		"that dials in (listen)",
	.keys = rtu_tcp_keys,
	.n_keys = N(rtu_tcp_keys),
	.required = "host",
	.instead = "listen",
	.devices = CFG_DEVICES_RTU,
	.variant = MB_RTU_TCP,
	.check = check_rtu_tcp,
	MODBUS_COMMON,
};
