/*
 * sim_modbus.c - simulated Modbus devices on TCP and RTU buses.
 *
 * Every unit id of a bus has its own modbus_mapping_t, sized to cover the
 * points of the devices with that unit (addresses past the end get
 * exception 2 from libmodbus, as real devices do). All mappings and unit
 * flags are under one mutex: bus threads answer under it, commands change
 * values under it.
 *
 * TCP: one thread per bus polls the listening socket and every client;
 * libmodbus reads a request and modbus_reply() answers from the unit's
 * mapping. RTU: libmodbus's server side filters on one slave id, so this
 * file frames RTU requests itself (length from the function code, CRC
 * checked) and still answers with modbus_reply(). modbus-rtu-tcp: the same
 * RTU frames on TCP clients (a serial server in transparent mode), and each
 * answer is held back for its time on the wire at the bus's baud (request
 * plus answer, 11 bits a byte), so one simulated 9600-baud line is as slow
 * as a real one.
 *
 * Answers are written by modbus_reply() into a socketpair and then sent on,
 * so a unit can misbehave like real devices do: answer late, answer twice,
 * or answer as another unit.
 */
#include "sim.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <modbus.h>

#include "log.h"
#include "modbus_config.h"
#include "modbus_decode.h"

#define SIM_MAX_CLIENTS 64
#define SIM_MAX_EXC 16
#define SIM_RTU_GAP_MS 50 /* a partial RTU frame older than this is noise */

struct sim_unit {
	uint8_t id;
	modbus_mapping_t *map;
	uint8_t *defined[4]; /* per table, 1 where a point lives (strict) */
	unsigned size[4];    /* per table */
	bool silent, garbage, strict;
	bool twice;  /* send every answer twice */
	int late_ms; /* hold every answer back this long */
	int as_unit; /* answer with this unit id (0: its own) */
	struct {
		uint16_t addr;
		int code;
	} exc[SIM_MAX_EXC];
	size_t n_exc;
	uint64_t requests;
};

struct sim_bus {
	struct sim_modbus *m;
	const struct cfg_bus *cfg;
	const struct modbus_bus_opts *mo; /* cfg's options */
	bool rtu;           /* RTU frames: serial (modbus-rtu) or TCP (modbus-rtu-tcp) */
	bool rtu_tcp;       /* RTU frames on TCP clients */
	atomic_bool freeze; /* TCP: stop answering the clients connected now */
	int cap[2];         /* socketpair: modbus_reply() writes into [1], we read [0] */
	modbus_t *ctx;
	int fd; /* listening socket (TCP) or serial port (RTU) */
	pthread_t thread;
	bool started;
	struct sim_unit *units[256];
};

struct sim_modbus {
	const struct cgw_config *cfg;
	pthread_mutex_t lock;
	struct sim_bus *buses;
	size_t n_buses;
	int stop_fd;
	atomic_bool stop;
	atomic_int churn_pct;
	bool wire_time;
};

static const char *const table_names[] = {"coil", "discrete", "input", "holding"};

/* ---- values ----------------------------------------------------------------------------- */

int sim_parse_value(const char *s, enum cgw_ptype t, struct cgw_value *out)
{
	char *end;

	*out = (struct cgw_value){.type = CGW_V_NONE};
	if (t == CGW_T_STRING) {
		out->s = strdup(s);
		if (!out->s)
			return -ENOMEM;
		out->type = CGW_V_STRING;
		return 0;
	}
	if (!strcasecmp(s, "true") || !strcasecmp(s, "on")) {
		out->type = CGW_V_BOOL;
		out->b = true;
		return 0;
	}
	if (!strcasecmp(s, "false") || !strcasecmp(s, "off")) {
		out->type = CGW_V_BOOL;
		out->b = false;
		return 0;
	}
	errno = 0;
	if (!strpbrk(s, ".eEnN")) {
		if (s[0] == '-') {
			out->i = strtoll(s, &end, 0);
			out->type = CGW_V_INT;
		} else {
			out->u = strtoull(s, &end, 0);
			out->type = CGW_V_UINT;
		}
	} else {
		out->d = strtod(s, &end);
		out->type = CGW_V_DOUBLE;
	}
	if (errno || end == s || *end) {
		out->type = CGW_V_NONE;
		return -EINVAL;
	}
	return 0;
}

void sim_print_value(const struct cgw_value *v, FILE *out)
{
	char buf[64];

	switch (v->type) {
	case CGW_V_NONE:
		fputs("bad", out);
		break;
	case CGW_V_BOOL:
		fputs(v->b ? "true" : "false", out);
		break;
	case CGW_V_INT:
		fprintf(out, "%" PRId64, v->i);
		break;
	case CGW_V_UINT:
		fprintf(out, "%" PRIu64, v->u);
		break;
	case CGW_V_DOUBLE:
		/* the shortest text that reads back as the same double */
		for (int prec = 6; prec <= 17; prec++) {
			snprintf(buf, sizeof(buf), "%.*g", prec, v->d);
			if (strtod(buf, NULL) == v->d || prec == 17)
				break;
		}
		fputs(buf, out);
		break;
	case CGW_V_STRING:
		fputs(v->s, out);
		break;
	}
}

/* ---- units ----------------------------------------------------------------------------- */

static struct mb_format point_format(const struct cfg_point *pt)
{
	return (struct mb_format){.type = pt->type,
				  .order = pt->order,
				  .str_len = pt->str_len,
				  .bit = (int)pt->bit,
				  .scale = pt->scale,
				  .offset = pt->offset};
}

static unsigned point_count(const struct cfg_point *pt)
{
	struct mb_format f = point_format(pt);
	return pt->table >= CGW_TBL_INPUT ? mbd_reg_count(&f) : 1;
}

static void unit_free(struct sim_unit *u)
{
	if (!u)
		return;
	modbus_mapping_free(u->map);
	for (int t = 0; t < 4; t++)
		free(u->defined[t]);
	free(u);
}

/* Units of one bus, sized from the points of their devices. */
static int build_units(struct sim_bus *b, size_t bus_index, bool strict)
{
	const struct cgw_config *cfg = b->m->cfg;

	for (size_t i = 0; i < cfg->n_devices; i++) {
		const struct cfg_device *d = &cfg->devices[i];
		const struct cfg_profile *pr = cfg_device_profile(cfg, d);
		struct sim_unit *u;

		if (d->bus != bus_index)
			continue;
		u = b->units[d->unit];
		if (!u) {
			u = b->units[d->unit] = calloc(1, sizeof(*u));
			if (!u)
				return -ENOMEM;
			u->id = (uint8_t)d->unit;
			u->strict = strict;
		}
		for (size_t p = 0; p < pr->n_points; p++) {
			const struct cfg_point *pt = &pr->points[p];
			unsigned end = (unsigned)(pt->address - d->address_base) + point_count(pt);
			if (pt->mqtt || pt->table < 0 || pt->table > 3)
				continue;
			if (end > u->size[pt->table])
				u->size[pt->table] = end;
		}
	}
	for (size_t i = 0; i < cfg->n_devices; i++) {
		const struct cfg_device *d = &cfg->devices[i];
		const struct cfg_profile *pr = cfg_device_profile(cfg, d);
		struct sim_unit *u = d->bus == bus_index ? b->units[d->unit] : NULL;

		if (!u)
			continue;
		if (!u->map) {
			u->map = modbus_mapping_new((int)u->size[CGW_TBL_COIL],
						    (int)u->size[CGW_TBL_DISCRETE],
						    (int)u->size[CGW_TBL_HOLDING],
						    (int)u->size[CGW_TBL_INPUT]);
			if (!u->map)
				return -ENOMEM;
			for (int t = 0; t < 4; t++) {
				u->defined[t] = calloc(u->size[t] ? u->size[t] : 1, 1);
				if (!u->defined[t])
					return -ENOMEM;
			}
		}
		for (size_t p = 0; p < pr->n_points; p++) {
			const struct cfg_point *pt = &pr->points[p];
			unsigned a = (unsigned)(pt->address - d->address_base);
			if (pt->mqtt || pt->table < 0 || pt->table > 3)
				continue;
			memset(u->defined[pt->table] + a, 1, point_count(pt));
		}
	}
	return 0;
}

/* ---- answering ------------------------------------------------------------------------- */

static uint16_t crc16(const uint8_t *p, size_t n)
{
	uint16_t crc = 0xFFFF;

	for (size_t i = 0; i < n; i++) {
		crc ^= p[i];
		for (int k = 0; k < 8; k++)
			crc = (crc & 1) ? (uint16_t)((crc >> 1) ^ 0xA001) : (uint16_t)(crc >> 1);
	}
	return crc;
}

static int fc_table(int fc)
{
	switch (fc) {
	case 1:
	case 5:
	case 15:
		return CGW_TBL_COIL;
	case 2:
		return CGW_TBL_DISCRETE;
	case 4:
		return CGW_TBL_INPUT;
	case 3:
	case 6:
	case 16:
		return CGW_TBL_HOLDING;
	}
	return -1;
}

/* A frame of the right length that the client must refuse. */
static void send_garbage(struct sim_bus *b, int fd, const uint8_t *req, int hl, int count)
{
	uint8_t out[300];
	int fc = req[hl], n = 0, body;

	switch (fc) {
	case 1:
	case 2:
		body = 1 + (count + 7) / 8;
		break;
	case 3:
	case 4:
		body = 1 + 2 * count;
		break;
	default:
		body = 4;
	}
	if (body > 252)
		body = 252;
	if (b->rtu) {
		out[n++] = req[0];
		out[n++] = (uint8_t)fc;
		memset(out + n, 0, (size_t)body);
		out[n] = (uint8_t)(body - 1);
		n += body;
		uint16_t crc = crc16(out, (size_t)n) ^ 0x5A5A; /* wrong on purpose */
		out[n++] = (uint8_t)(crc & 0xFF);
		out[n++] = (uint8_t)(crc >> 8);
		ssize_t w = write(fd, out, (size_t)n);
		(void)w;
	} else {
		/* a transaction id the client did not send */
		out[n++] = (uint8_t)~req[0];
		out[n++] = (uint8_t)~req[1];
		out[n++] = 0;
		out[n++] = 0;
		out[n++] = (uint8_t)((body + 2) >> 8);
		out[n++] = (uint8_t)(body + 2);
		out[n++] = req[6];
		out[n++] = (uint8_t)fc;
		memset(out + n, 0, (size_t)body);
		out[n] = (uint8_t)(body - 1);
		n += body;
		ssize_t w = send(fd, out, (size_t)n, MSG_NOSIGNAL);
		(void)w;
	}
}

static void put(int fd, const uint8_t *p, size_t n)
{
	ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
	if (w < 0 && errno == ENOTSOCK)
		w = write(fd, p, n);
	(void)w;
}

static void sleep_us(int64_t us)
{
	struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
	while (us > 0 && nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Send on what modbus_reply() wrote into the socketpair, the way the unit
 * misbehaves (u is a copy taken under the lock). */
static void emit(struct sim_bus *b, int fd, const struct sim_unit *u, int hl, int req_len)
{
	uint8_t out[MODBUS_TCP_MAX_ADU_LENGTH + MODBUS_RTU_MAX_ADU_LENGTH];
	ssize_t n = recv(b->cap[0], out, sizeof(out), MSG_DONTWAIT);

	if (n <= 0)
		return;
	if ((b->rtu_tcp || (b->rtu && b->m->wire_time)) && b->mo->baud > 0)
		sleep_us(((int64_t)req_len + n) * 11 * 1000000 / b->mo->baud);
	if (u->late_ms > 0)
		sleep_us((int64_t)u->late_ms * 1000);
	if (u->as_unit > 0) {
		out[hl - 1] = (uint8_t)u->as_unit;
		if (b->rtu && n >= 4) {
			uint16_t crc = crc16(out, (size_t)n - 2);
			out[n - 2] = (uint8_t)(crc & 0xFF);
			out[n - 1] = (uint8_t)(crc >> 8);
		}
	}
	put(fd, out, (size_t)n);
	if (u->twice)
		put(fd, out, (size_t)n);
}

/* Answer one complete request (header length hl) on fd. */
static void answer(struct sim_bus *b, int fd, const uint8_t *req, int len)
{
	int hl = modbus_get_header_length(b->ctx);
	uint8_t unit = req[hl - 1];
	int fc = req[hl], table = fc_table(fc);
	int addr = (req[hl + 1] << 8) | req[hl + 2];
	int count = 1;
	struct sim_unit *u;
	int exc = 0;

	if (fc == 1 || fc == 2 || fc == 3 || fc == 4 || fc == 15 || fc == 16)
		count = (req[hl + 3] << 8) | req[hl + 4];
	pthread_mutex_lock(&b->m->lock);
	u = b->units[unit];
	if (!u || unit == 0) {
		/* nobody with that id on this line: silence, like a real bus */
		pthread_mutex_unlock(&b->m->lock);
		return;
	}
	u->requests++;
	if (u->silent)
		goto out;
	if (u->garbage) {
		send_garbage(b, fd, req, hl, count);
		goto out;
	}
	for (size_t i = 0; i < u->n_exc && !exc; i++)
		if (u->exc[i].addr >= addr && u->exc[i].addr < addr + count)
			exc = u->exc[i].code;
	if (!exc && u->strict && table >= 0) {
		for (int a = addr; a < addr + count && !exc; a++)
			if ((unsigned)a < u->size[table] && !u->defined[table][a])
				exc = MODBUS_EXCEPTION_ILLEGAL_DATA_ADDRESS;
	}
	modbus_set_socket(b->ctx, b->cap[1]);
	modbus_set_slave(b->ctx, unit);
	if (exc)
		modbus_reply_exception(b->ctx, req, (unsigned)exc);
	else
		modbus_reply(b->ctx, req, len, u->map);
	modbus_set_socket(b->ctx, b->rtu && !b->rtu_tcp ? b->fd : -1);
	{
		struct sim_unit how = *u;
		pthread_mutex_unlock(&b->m->lock);
		emit(b, fd, &how, hl, len);
		return;
	}
out:
	pthread_mutex_unlock(&b->m->lock);
}

/* Every second, churn_pct % of each unit's registers move by one. */
static void churn(struct sim_bus *b)
{
	int pct = atomic_load(&b->m->churn_pct);

	if (pct <= 0)
		return;
	pthread_mutex_lock(&b->m->lock);
	for (int id = 0; id < 256; id++) {
		struct sim_unit *u = b->units[id];
		if (!u)
			continue;
		for (int i = 0; i < u->map->nb_registers; i++)
			if (rand() % 100 < pct)
				u->map->tab_registers[i]++;
		for (int i = 0; i < u->map->nb_input_registers; i++)
			if (rand() % 100 < pct)
				u->map->tab_input_registers[i]++;
	}
	pthread_mutex_unlock(&b->m->lock);
}

static int tick_timeout(int64_t *next_churn)
{
	int64_t now = cgw_mono_ms();
	if (now >= *next_churn)
		*next_churn = now + 1000;
	return (int)(*next_churn - now);
}

static void serve_tcp(struct sim_bus *b)
{
	struct pollfd pfd[2 + SIM_MAX_CLIENTS];
	int clients[SIM_MAX_CLIENTS];
	bool frozen[SIM_MAX_CLIENTS];
	size_t nc = 0;
	uint8_t req[MODBUS_TCP_MAX_ADU_LENGTH];
	int64_t next_churn = cgw_mono_ms() + 1000;

	/* a client that stops mid-request must not hang the bus */
	modbus_set_indication_timeout(b->ctx, 1, 0);
	while (!atomic_load(&b->m->stop)) {
		pfd[0] = (struct pollfd){.fd = b->m->stop_fd, .events = POLLIN};
		pfd[1] = (struct pollfd){.fd = b->fd, .events = POLLIN};
		for (size_t i = 0; i < nc; i++)
			pfd[2 + i] = (struct pollfd){.fd = clients[i], .events = POLLIN};
		int n = poll(pfd, 2 + nc, tick_timeout(&next_churn));
		if (n < 0 && errno != EINTR)
			break;
		if (cgw_mono_ms() >= next_churn)
			churn(b);
		if (atomic_exchange(&b->freeze, false))
			for (size_t i = 0; i < nc; i++)
				frozen[i] = true;
		if (n <= 0)
			continue;
		for (size_t i = nc; i-- > 0;) {
			if (!(pfd[2 + i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			modbus_set_socket(b->ctx, clients[i]);
			int rc = modbus_receive(b->ctx, req);
			if (rc > 0 && !frozen[i]) {
				answer(b, clients[i], req, rc);
			} else if (rc < 0) {
				close(clients[i]);
				nc--;
				clients[i] = clients[nc];
				frozen[i] = frozen[nc];
			}
		}
		if (pfd[1].revents & POLLIN) {
			int c = accept4(b->fd, NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0 && nc < SIM_MAX_CLIENTS) {
				frozen[nc] = false;
				clients[nc++] = c;
			} else if (c >= 0) {
				close(c);
			}
		}
	}
	for (size_t i = 0; i < nc; i++)
		close(clients[i]);
	modbus_set_socket(b->ctx, -1);
}

/* Bytes of the RTU request that starts buf, 0 if not known yet, -1 if this
 * cannot be the start of a request. */
static int rtu_frame_len(const uint8_t *buf, size_t len)
{
	if (len < 2)
		return 0;
	switch (buf[1]) {
	case 1:
	case 2:
	case 3:
	case 4:
	case 5:
	case 6:
		return 8;
	case 15:
	case 16:
		return len < 7 ? 0 : 9 + buf[6];
	}
	return -1;
}

static void reopen_rtu(struct sim_bus *b)
{
	bool logged = false;

	modbus_close(b->ctx);
	b->fd = -1;
	while (!atomic_load(&b->m->stop)) {
		struct pollfd pfd = {.fd = b->m->stop_fd, .events = POLLIN};
		if (modbus_connect(b->ctx) == 0) {
			b->fd = modbus_get_socket(b->ctx);
			log_info("sim", "bus %s: %s open again", b->cfg->name, b->mo->device);
			return;
		}
		if (!logged)
			log_info("sim", "bus %s: %s gone; reopening", b->cfg->name, b->mo->device);
		logged = true;
		poll(&pfd, 1, 200);
	}
}

static void serve_rtu(struct sim_bus *b)
{
	uint8_t buf[MODBUS_RTU_MAX_ADU_LENGTH * 2];
	size_t len = 0;
	int64_t last_byte = 0, next_churn = cgw_mono_ms() + 1000;

	while (!atomic_load(&b->m->stop)) {
		struct pollfd pfd[2] = {{.fd = b->m->stop_fd, .events = POLLIN},
					{.fd = b->fd, .events = POLLIN}};
		int timeout = tick_timeout(&next_churn);
		if (len && timeout > SIM_RTU_GAP_MS)
			timeout = SIM_RTU_GAP_MS;
		int n = poll(pfd, 2, timeout);
		if (n < 0 && errno != EINTR)
			break;
		if (cgw_mono_ms() >= next_churn)
			churn(b);
		if (len && cgw_mono_ms() - last_byte > SIM_RTU_GAP_MS)
			len = 0; /* silence ends a frame: what we have is noise */
		if (n <= 0)
			continue;
		ssize_t r = -1;
		if (pfd[1].revents & POLLIN)
			r = read(b->fd, buf + len, sizeof(buf) - len);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (r <= 0) {
			/* the port went away (socat pair torn down): reopen it when it is back */
			len = 0;
			reopen_rtu(b);
			continue;
		}
		len += (size_t)r;
		last_byte = cgw_mono_ms();
		for (;;) {
			int need = rtu_frame_len(buf, len);
			if (need < 0) {
				len = 0;
				break;
			}
			if (need == 0 || len < (size_t)need)
				break;
			uint16_t crc = (uint16_t)(buf[need - 2] | (buf[need - 1] << 8));
			if (crc16(buf, (size_t)need - 2) == crc)
				answer(b, b->fd, buf, need);
			else
				need = (int)len; /* resynchronise on the next gap */
			memmove(buf, buf + need, len - (size_t)need);
			len -= (size_t)need;
		}
	}
}

/* RTU frames from TCP clients, one at a time like the line behind a serial
 * server. A client's partial frame older than SIM_RTU_GAP_MS is noise. */
static void serve_rtu_tcp(struct sim_bus *b)
{
	struct pollfd pfd[2 + SIM_MAX_CLIENTS];
	struct {
		int fd;
		size_t len;
		int64_t last;
		uint8_t buf[MODBUS_RTU_MAX_ADU_LENGTH * 2];
	} *cl = calloc(SIM_MAX_CLIENTS, sizeof(*cl));
	size_t nc = 0;

	if (!cl)
		return;
	while (!atomic_load(&b->m->stop)) {
		pfd[0] = (struct pollfd){.fd = b->m->stop_fd, .events = POLLIN};
		pfd[1] = (struct pollfd){.fd = b->fd, .events = POLLIN};
		for (size_t i = 0; i < nc; i++)
			pfd[2 + i] = (struct pollfd){.fd = cl[i].fd, .events = POLLIN};
		int n = poll(pfd, 2 + nc, SIM_RTU_GAP_MS);
		if (n < 0 && errno != EINTR)
			break;
		for (size_t i = nc; n > 0 && i-- > 0;) {
			if (!(pfd[2 + i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			if (cl[i].len && cgw_mono_ms() - cl[i].last > SIM_RTU_GAP_MS)
				cl[i].len = 0;
			ssize_t r = recv(cl[i].fd, cl[i].buf + cl[i].len,
					 sizeof(cl[i].buf) - cl[i].len, MSG_DONTWAIT);
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (r <= 0) {
				close(cl[i].fd);
				memmove(&cl[i], &cl[nc - 1], sizeof(cl[i]));
				nc--;
				continue;
			}
			cl[i].len += (size_t)r;
			cl[i].last = cgw_mono_ms();
			for (;;) {
				int need = rtu_frame_len(cl[i].buf, cl[i].len);
				if (need < 0) {
					cl[i].len = 0;
					break;
				}
				if (need == 0 || cl[i].len < (size_t)need)
					break;
				uint16_t crc = (uint16_t)(cl[i].buf[need - 2] |
							  (cl[i].buf[need - 1] << 8));
				if (crc16(cl[i].buf, (size_t)need - 2) == crc)
					answer(b, cl[i].fd, cl[i].buf, need);
				else
					need = (int)cl[i].len;
				memmove(cl[i].buf, cl[i].buf + need, cl[i].len - (size_t)need);
				cl[i].len -= (size_t)need;
			}
		}
		if (n > 0 && (pfd[1].revents & POLLIN)) {
			int c = accept4(b->fd, NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0 && nc < SIM_MAX_CLIENTS) {
				cl[nc].fd = c;
				cl[nc++].len = 0;
			} else if (c >= 0) {
				close(c);
			}
		}
	}
	for (size_t i = 0; i < nc; i++)
		close(cl[i].fd);
	free(cl);
}

static void *bus_thread(void *arg)
{
	struct sim_bus *b = arg;

	if (b->rtu_tcp)
		serve_rtu_tcp(b);
	else if (b->rtu)
		serve_rtu(b);
	else
		serve_tcp(b);
	return NULL;
}

static int open_bus(struct sim_bus *b)
{
	const struct cfg_bus *cb = b->cfg;
	const struct modbus_bus_opts *c = b->mo;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b->cap) < 0)
		return -errno;
	if (b->rtu_tcp) {
		char port[16];
		struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE},
				*res = NULL;
		int one = 1;
		/* an RTU context only frames answers: it never opens a port */
		b->ctx = modbus_new_rtu("/dev/null", (int)c->baud, 'N', 8, 1);
		snprintf(port, sizeof(port), "%lld", (long long)c->port);
		if (!b->ctx || getaddrinfo(c->host, port, &hints, &res) != 0)
			return -EINVAL;
		b->fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (b->fd < 0 ||
		    setsockopt(b->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
		    bind(b->fd, res->ai_addr, res->ai_addrlen) < 0 || listen(b->fd, 16) < 0) {
			int e = errno;
			freeaddrinfo(res);
			return -e;
		}
		freeaddrinfo(res);
		log_info("sim", "bus %s: RTU over TCP on %s:%s at %lld baud", cb->name, c->host,
			 port, (long long)c->baud);
	} else if (b->rtu) {
		char parity = c->parity == 1 ? 'E' : c->parity == 2 ? 'O' : 'N';
		b->ctx = modbus_new_rtu(c->device, (int)c->baud, parity, (int)c->data_bits,
					(int)c->stop_bits);
		if (!b->ctx || modbus_connect(b->ctx) < 0)
			return -errno;
		b->fd = modbus_get_socket(b->ctx);
		log_info("sim", "bus %s: serving RTU on %s", cb->name, c->device);
	} else {
		char port[16];
		snprintf(port, sizeof(port), "%lld", (long long)c->port);
		b->ctx = modbus_new_tcp_pi(c->host, port);
		if (!b->ctx)
			return -errno;
		b->fd = modbus_tcp_pi_listen(b->ctx, 16);
		if (b->fd < 0)
			return -errno;
		log_info("sim", "bus %s: listening on %s:%s", cb->name, c->host, port);
	}
	return 0;
}

int sim_modbus_start(const struct cgw_config *cfg, const struct sim_modbus_opts *opts,
		     struct sim_modbus **out)
{
	struct sim_modbus *m = calloc(1, sizeof(*m));
	sigset_t all, old;
	int r = 0;

	*out = NULL;
	if (!m)
		return -ENOMEM;
	m->cfg = cfg;
	m->stop_fd = -1;
	pthread_mutex_init(&m->lock, NULL);
	atomic_init(&m->stop, false);
	atomic_init(&m->churn_pct, opts ? opts->churn_pct : 0);
	m->wire_time = opts && opts->wire_time;
	m->buses = calloc(cfg->n_buses ? cfg->n_buses : 1, sizeof(*m->buses));
	m->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!m->buses || m->stop_fd < 0) {
		r = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < cfg->n_buses; i++) {
		struct sim_bus *b = &m->buses[m->n_buses];
		if (!modbus_opts(&cfg->buses[i]))
			continue;
		m->n_buses++;
		b->m = m;
		b->cfg = &cfg->buses[i];
		b->mo = modbus_opts(b->cfg);
		b->rtu_tcp = modbus_transport(b->cfg) == MB_RTU_TCP;
		atomic_init(&b->freeze, false);
		b->rtu = modbus_transport(b->cfg) == MB_SERIAL || b->rtu_tcp;
		b->fd = -1;
		b->cap[0] = b->cap[1] = -1;
		r = build_units(b, i, opts && opts->strict);
		if (r == 0)
			r = open_bus(b);
		if (r < 0) {
			log_err("sim", "bus %s: %s", b->cfg->name, strerror(-r));
			goto fail;
		}
	}
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (size_t i = 0; i < m->n_buses && !r; i++) {
		r = -pthread_create(&m->buses[i].thread, NULL, bus_thread, &m->buses[i]);
		m->buses[i].started = r == 0;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r)
		goto fail;
	*out = m;
	return 0;
fail:
	sim_modbus_stop(m);
	return r;
}

void sim_modbus_stop(struct sim_modbus *m)
{
	uint64_t one = 1;

	if (!m)
		return;
	atomic_store(&m->stop, true);
	if (m->stop_fd >= 0 && write(m->stop_fd, &one, sizeof(one)) < 0) {
		/* cannot happen with a fresh eventfd; threads still see `stop` on their tick */
	}
	for (size_t i = 0; i < m->n_buses; i++) {
		struct sim_bus *b = &m->buses[i];
		if (b->started)
			pthread_join(b->thread, NULL);
		if (b->ctx) {
			if ((!b->rtu || b->rtu_tcp) && b->fd >= 0)
				close(b->fd);
			modbus_set_socket(b->ctx, b->rtu && !b->rtu_tcp ? b->fd : -1);
			modbus_close(b->ctx);
			modbus_free(b->ctx);
		} else if (b->fd >= 0) {
			close(b->fd);
		}
		for (int k = 0; k < 2; k++)
			if (b->cap[k] >= 0)
				close(b->cap[k]);
		for (int u = 0; u < 256; u++)
			unit_free(b->units[u]);
	}
	free(m->buses);
	if (m->stop_fd >= 0)
		close(m->stop_fd);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

/* ---- commands -------------------------------------------------------------------------- */

/* The unit and device of a device id, or NULL when it is not one of ours. */
static struct sim_unit *find_unit(struct sim_modbus *m, const char *id,
				  const struct cfg_device **dev)
{
	long di = cfg_find_device(m->cfg, id);

	if (di < 0)
		return NULL;
	*dev = &m->cfg->devices[di];
	for (size_t i = 0; i < m->n_buses; i++)
		if (m->buses[i].cfg == &m->cfg->buses[(*dev)->bus])
			return m->buses[i].units[(*dev)->unit];
	return NULL;
}

static const struct cfg_point *find_point(const struct cgw_config *cfg, const struct cfg_device *d,
					  const char *name)
{
	const struct cfg_profile *pr = cfg_device_profile(cfg, d);

	for (size_t p = 0; p < pr->n_points; p++)
		if (!strcmp(pr->points[p].name, name))
			return &pr->points[p];
	return NULL;
}

static uint16_t *reg_table(struct sim_unit *u, int table)
{
	return table == CGW_TBL_INPUT ? u->map->tab_input_registers : u->map->tab_registers;
}

static uint8_t *bit_table(struct sim_unit *u, int table)
{
	return table == CGW_TBL_DISCRETE ? u->map->tab_input_bits : u->map->tab_bits;
}

/* Called with the lock held. */
static int point_set(struct sim_unit *u, const struct cfg_device *d, const struct cfg_point *pt,
		     const struct cgw_value *v)
{
	struct mb_format f = point_format(pt);
	unsigned a = (unsigned)(pt->address - d->address_base), n = 0;
	uint16_t regs[MBD_STRING_MAX / 2 + 4];

	if (pt->table == CGW_TBL_COIL || pt->table == CGW_TBL_DISCRETE) {
		uint8_t on;
		int r = mbd_encode_bit(v, &on);
		if (r == 0)
			bit_table(u, pt->table)[a] = on;
		return r;
	}
	regs[0] = reg_table(u, pt->table)[a]; /* a bit point changes one bit of it */
	int r = mbd_encode_regs(&f, v, regs, sizeof(regs) / sizeof(regs[0]), &n);
	if (r == 0)
		memcpy(reg_table(u, pt->table) + a, regs, n * sizeof(regs[0]));
	return r;
}

static int point_get(struct sim_unit *u, const struct cfg_device *d, const struct cfg_point *pt,
		     struct cgw_value *v)
{
	struct mb_format f = point_format(pt);
	unsigned a = (unsigned)(pt->address - d->address_base);
	enum cgw_quality q;

	if (pt->table == CGW_TBL_COIL || pt->table == CGW_TBL_DISCRETE)
		return mbd_decode_bit(bit_table(u, pt->table) + a, 1, 0, v);
	return mbd_decode_regs(&f, reg_table(u, pt->table) + a, u->size[pt->table] - a, v, &q);
}

static int on_off(const char *s, bool *out)
{
	if (!strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "1"))
		*out = true;
	else if (!strcmp(s, "off") || !strcmp(s, "false") || !strcmp(s, "0"))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

static int parse_addr(const struct cfg_device *d, const char *s, uint16_t *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 0);
	if (errno || end == s || *end || v - d->address_base < 0 || v - d->address_base > 65535)
		return -EINVAL;
	*out = (uint16_t)(v - d->address_base);
	return 0;
}

static int cmd_unit(struct sim_modbus *m, struct sim_unit *u, const struct cfg_device *d, int argc,
		    char **argv, FILE *out)
{
	const char *verb = argv[0];
	bool flag = false;

	if (!strcmp(verb, "set") || !strcmp(verb, "get")) {
		const struct cfg_point *pt = argc >= 3 ? find_point(m->cfg, d, argv[2]) : NULL;
		struct cgw_value v = {.type = CGW_V_NONE};
		int r;
		if (!pt || (!strcmp(verb, "set") && argc != 4)) {
			fprintf(out, "error: usage: %s DEVICE POINT%s (no such point?)\n", verb,
				verb[0] == 's' ? " VALUE" : "");
			return 0;
		}
		if (verb[0] == 's' && sim_parse_value(argv[3], pt->type, &v) < 0) {
			fprintf(out, "error: '%s' is not a value for %s\n", argv[3], pt->name);
			return 0;
		}
		pthread_mutex_lock(&m->lock);
		r = verb[0] == 's' ? point_set(u, d, pt, &v) : point_get(u, d, pt, &v);
		pthread_mutex_unlock(&m->lock);
		if (r < 0)
			fprintf(out, "error: %s\n", strerror(-r));
		else if (verb[0] == 's')
			fputs("ok\n", out);
		else {
			sim_print_value(&v, out);
			fputc('\n', out);
		}
		cgw_value_clear(&v);
		return 0;
	}
	if (!strcmp(verb, "raw")) {
		int t = -1;
		uint16_t a;
		for (int i = 0; argc >= 5 && i < 4; i++)
			if (!strcmp(argv[2], table_names[i]))
				t = i;
		if (t < 0 || parse_addr(d, argv[3], &a) < 0 ||
		    a + (unsigned)(argc - 4) > u->size[t]) {
			fputs("error: usage: raw DEVICE coil|discrete|input|holding ADDR WORD...\n",
			      out);
			return 0;
		}
		pthread_mutex_lock(&m->lock);
		for (int i = 4; i < argc; i++) {
			unsigned long w = strtoul(argv[i], NULL, 0);
			if (t >= CGW_TBL_INPUT)
				reg_table(u, t)[a + i - 4] = (uint16_t)w;
			else
				bit_table(u, t)[a + i - 4] = w != 0;
		}
		pthread_mutex_unlock(&m->lock);
		fputs("ok\n", out);
		return 0;
	}
	if (!strcmp(verb, "silence") || !strcmp(verb, "garbage") || !strcmp(verb, "strict")) {
		if (argc != 3 || on_off(argv[2], &flag) < 0) {
			fprintf(out, "error: usage: %s DEVICE on|off\n", verb);
			return 0;
		}
		pthread_mutex_lock(&m->lock);
		if (verb[0] == 's' && verb[1] == 'i')
			u->silent = flag;
		else if (verb[0] == 'g')
			u->garbage = flag;
		else
			u->strict = flag;
		pthread_mutex_unlock(&m->lock);
		fputs("ok\n", out);
		return 0;
	}
	if (!strcmp(verb, "exception")) {
		uint16_t a;
		int code = MODBUS_EXCEPTION_ILLEGAL_DATA_ADDRESS;
		bool clear = argc == 4 && !strcmp(argv[3], "off");
		if (argc < 3 || argc > 4 || parse_addr(d, argv[2], &a) < 0 ||
		    (argc == 4 && !clear && ((code = atoi(argv[3])) < 1 || code > 11))) {
			fputs("error: usage: exception DEVICE ADDR [CODE|off]\n", out);
			return 0;
		}
		pthread_mutex_lock(&m->lock);
		for (size_t i = 0; i < u->n_exc; i++)
			if (u->exc[i].addr == a)
				u->exc[i--] = u->exc[--u->n_exc];
		if (!clear && u->n_exc < SIM_MAX_EXC) {
			u->exc[u->n_exc].addr = a;
			u->exc[u->n_exc++].code = code;
		}
		pthread_mutex_unlock(&m->lock);
		fputs("ok\n", out);
		return 0;
	}
	if (!strcmp(verb, "twice")) {
		if (argc != 3 || on_off(argv[2], &flag) < 0) {
			fputs("error: usage: twice DEVICE on|off\n", out);
			return 0;
		}
		pthread_mutex_lock(&m->lock);
		u->twice = flag;
		pthread_mutex_unlock(&m->lock);
		fputs("ok\n", out);
		return 0;
	}
	if (!strcmp(verb, "late") || !strcmp(verb, "as-unit")) {
		bool off = argc == 3 && !strcmp(argv[2], "off");
		int v = argc == 3 && !off ? atoi(argv[2]) : 0;
		if (argc != 3 || (!off && (v < 1 || v > (verb[0] == 'l' ? 60000 : 255)))) {
			fprintf(out, "error: usage: %s DEVICE %s|off\n", verb,
				verb[0] == 'l' ? "MS" : "UNIT");
			return 0;
		}
		pthread_mutex_lock(&m->lock);
		if (verb[0] == 'l')
			u->late_ms = v;
		else
			u->as_unit = v;
		pthread_mutex_unlock(&m->lock);
		fputs("ok\n", out);
		return 0;
	}
	if (!strcmp(verb, "count")) {
		pthread_mutex_lock(&m->lock);
		uint64_t n = u->requests;
		pthread_mutex_unlock(&m->lock);
		fprintf(out, "%" PRIu64 "\n", n);
		return 0;
	}
	return -ENOENT;
}

int sim_modbus_command(struct sim_modbus *m, int argc, char **argv, FILE *out)
{
	static const char *const verbs[] = {"set",     "get",       "raw",    "silence",
					    "garbage", "exception", "strict", "count",
					    "twice",   "late",      "as-unit"};
	const struct cfg_device *d = NULL;
	struct sim_unit *u;
	bool known = false;

	if (!m || argc < 1)
		return -ENOENT;
	if (!strcmp(argv[0], "freeze")) {
		/* a gateway that keeps its sessions open but stops answering them */
		for (size_t i = 0; i < m->n_buses; i++)
			if (!m->buses[i].rtu)
				atomic_store(&m->buses[i].freeze, true);
		fputs("ok\n", out);
		return 0;
	}
	if (!strcmp(argv[0], "churn")) {
		int pct = argc == 2 ? atoi(argv[1]) : -1;
		if (pct < 0 || pct > 100) {
			fputs("error: usage: churn PERCENT\n", out);
			return 0;
		}
		atomic_store(&m->churn_pct, pct);
		fputs("ok\n", out);
		return 0;
	}
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		known |= !strcmp(argv[0], verbs[i]);
	if (!known || argc < 2)
		return -ENOENT;
	u = find_unit(m, argv[1], &d);
	if (!u)
		return -ENOENT;
	return cmd_unit(m, u, d, argc, argv, out);
}
