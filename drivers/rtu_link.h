/*
 * rtu_link.h - Modbus RTU frames over a TCP connection (a serial server in
 * transparent mode), for the Modbus bus worker.
 *
 * libmodbus has no RTU-over-TCP, so this is the transport the worker uses
 * for a modbus-rtu-tcp bus instead of a modbus_t; framing is rtu_frame.h.
 * It speaks libmodbus's error language (positive errno values, EMBX* for
 * exceptions, EMBBADCRC for a frame that never became an answer) so the
 * worker classifies both transports alike.
 *
 * What it does for a misbehaving device: before each request it drops
 * whatever is already waiting on the connection (a late or repeated answer
 * to an earlier request: counted as stale bytes); while waiting for the
 * answer it drops and counts well-formed frames that are not the answer
 * (another unit, another function, another size: foreign) and garbage, and
 * keeps waiting until the answer or the deadline. So a stale or foreign
 * answer is never taken as data and never costs the next request its poll.
 *
 * Threads: one link belongs to one worker thread; no locking. Blocking calls
 * are bounded by the timeouts given. Connecting resolves the name
 * (getaddrinfo): call it from the worker, never the core thread.
 */
#ifndef CGW_RTU_LINK_H
#define CGW_RTU_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "rtu_frame.h"

struct rtu_link_counters {
	uint64_t foreign;     /* well-formed frames that answered something else */
	uint64_t stale_bytes; /* bytes waiting before a request (late/repeated answers) */
	uint64_t garbage_bytes;
	uint64_t heartbeats; /* heartbeat packets dropped from the stream */
};

struct rtu_link;

/* NULL on allocation failure. host and port are copied. */
struct rtu_link *rtu_link_new(const char *host, int port);
void rtu_link_free(struct rtu_link *l);
/* 0, or a positive errno (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ...). */
int rtu_link_connect(struct rtu_link *l, int64_t timeout_ms);
void rtu_link_close(struct rtu_link *l);
/* Drop what is waiting on the connection now; counted as stale. */
void rtu_link_flush(struct rtu_link *l);
/* Send the frame (built by rtu_frame.h with its req) and wait up to
 * timeout_ms for its answer. On 0, a read's data bytes are copied to
 * data (at most cap; *len gets their number). Errors: ETIMEDOUT (nothing,
 * or only foreign frames), EMBBADCRC (bytes came but never the answer),
 * EMBXILFUN.. (the device's exception), ECONNRESET/EPIPE/ENOTCONN (the
 * connection is gone: the caller closes it). */
int rtu_link_transact(struct rtu_link *l, const uint8_t *frame, size_t flen,
		      const struct rtu_req *req, uint8_t *data, size_t cap, size_t *len,
		      int64_t timeout_ms);
void rtu_link_counters(const struct rtu_link *l, struct rtu_link_counters *c);
/* A connection made elsewhere (a dial-in DTU): the link owns fd from now
 * on and closes the one it had. `first` (n bytes, may be 0) were read from
 * it already (what followed the DTU's registration): they come first. */
void rtu_link_adopt(struct rtu_link *l, int fd, const uint8_t *first, size_t n);
/* Bytes the peer sends on its own (a DTU's heartbeat): dropped from the
 * stream wherever they arrive between frames, also when TCP delivers them
 * in pieces (the start of one stays until the rest comes, before a request
 * too) and counted as heartbeats, not stale bytes. n 0: none. Copied. */
int rtu_link_set_heartbeat(struct rtu_link *l, const uint8_t *hb, size_t n);

#endif
