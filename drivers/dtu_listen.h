/*
 * dtu_listen.h - dial-in DTUs: listening ports shared by modbus-rtu-tcp
 * buses, and the hand-over of each DTU's connection to its bus.
 *
 * A 4G DTU connects to the gateway and sends its registration packet (a
 * configured string or bytes, e.g. its IMEI) once; then the connection
 * carries RTU frames. One listening port may serve several buses: each bus
 * registers the identity it waits for; the acceptor thread of the port
 * reads the registration of every new connection (bounded: DTU_REG_WAIT_MS,
 * at most CFG_DTU_ID_MAX bytes) and hands the connection to the bus whose
 * identity it is, waking that bus's worker through its eventfd. A second
 * connection with the same identity replaces the first: the worker takes
 * the newest. A registration nobody waits for is refused (closed) and
 * logged once per episode of the port.
 *
 * Threads: dtu_attach/dtu_detach from the thread that opens and closes the
 * drivers (the core); dtu_take from the bus's worker; the acceptor thread is
 * internal. Everything shared is under one mutex.
 */
#ifndef CGW_DTU_LISTEN_H
#define CGW_DTU_LISTEN_H

#include <stddef.h>
#include <stdint.h>

#define DTU_REG_WAIT_MS 10000 /* a new connection has this long to register */
#define DTU_REST_MAX 128      /* bytes a DTU sends after its registration in one read */

struct dtu_slot;

/* Waits for the DTU with this identity on listen ("ADDR:PORT"); the port is
 * opened by the first bus that uses it. wake_fd (an eventfd) is written
 * when a connection arrives. 0, or -errno (the port cannot be opened). */
int dtu_attach(const char *listen, const uint8_t *id, size_t id_len, int wake_fd,
	       struct dtu_slot **out);
/* Stops waiting; the last bus of a port closes it. NULL is fine. */
void dtu_detach(struct dtu_slot *s);
/* The newest connection handed to this slot, or -1. The caller owns it.
 * What the DTU sent after its registration in the same read (the start of
 * a heartbeat...) is copied to rest (DTU_REST_MAX bytes of room), *rest_n
 * its length: it belongs to the stream the caller reads next. */
int dtu_take(struct dtu_slot *s, uint8_t *rest, size_t *rest_n);

#endif
