/*
 * rtu_frame.h - Modbus RTU framing, pure: no I/O, no allocation, no state.
 *
 * An RTU frame is unit, function, body, CRC-16/MODBUS (low byte first). On
 * a serial line frames are delimited by silence; over a TCP byte stream (a
 * serial server in transparent mode, a 4G DTU) they are not, so a frame's
 * length must come from its function code and byte count, and a receiver
 * that starts in the middle of garbage must find the next real frame. This
 * module builds requests and finds, in a receive buffer, the answer to one
 * request:
 *   - rtu_build_*() write a request into a caller's buffer (<= RTU_MAX_ADU);
 *   - rtu_scan() looks at the start of the receive buffer and says what is
 *     there: the answer, an exception for it, a well-formed frame that
 *     answers something else (another unit, another function: a stale or
 *     foreign answer to count and drop), bytes that cannot start a frame
 *     (garbage, skip), or "need more bytes". It never reads beyond `n`.
 *
 * Every length comes from the buffer and is bounded by RTU_MAX_ADU (256,
 * the RTU limit); a byte count that does not match the request makes the
 * frame not an answer. The CRC decides: a candidate frame whose CRC fails is
 * treated as garbage one byte at a time, which is how the scan resynchronises.
 *
 * Modbus TCP frames carry their length in the MBAP header instead:
 * mbap_frame_length() cuts them out of a TCP stream for the Modbus TCP
 * transport, and rtu_match() then judges the PDU.
 */
#ifndef CGW_RTU_FRAME_H
#define CGW_RTU_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RTU_MAX_ADU 256
#define RTU_MAX_READ_REGS 125
#define RTU_MAX_READ_BITS 2000
#define RTU_MAX_WRITE_REGS 123
#define RTU_MAX_WRITE_BITS 1968

enum rtu_fn {
	RTU_FN_READ_COILS = 1,
	RTU_FN_READ_DISCRETE = 2,
	RTU_FN_READ_HOLDING = 3,
	RTU_FN_READ_INPUT = 4,
	RTU_FN_WRITE_COIL = 5,
	RTU_FN_WRITE_REG = 6,
	RTU_FN_WRITE_COILS = 15,
	RTU_FN_WRITE_REGS = 16,
};

/* What a request asked; rtu_scan() checks the answer against it. */
struct rtu_req {
	uint8_t unit, fn;
	uint16_t addr;
	uint16_t count; /* reads and multiple writes; the value for 5 and 6 */
};

enum rtu_scan_result {
	RTU_NEED_MORE, /* a frame may start here: read more (or time out) */
	RTU_ANSWER,    /* the answer to the request; payload in out */
	RTU_EXCEPTION, /* the device refused: out->exception holds the code */
	RTU_FOREIGN,   /* a valid frame that is not the answer: drop `consumed` bytes */
	RTU_GARBAGE,   /* `consumed` bytes that start no valid frame: drop them */
};

struct rtu_answer {
	uint8_t unit, fn;
	uint8_t exception;   /* RTU_EXCEPTION: the code */
	const uint8_t *data; /* reads: the data bytes (points into the buffer) */
	size_t len;          /* bytes at data */
};

uint16_t rtu_crc16(const uint8_t *p, size_t n);

/* Requests. Return the frame length, or -EINVAL (bad unit, function or count;
 * unit 0 is broadcast and never answered, so it is refused) or -ENOSPC. */
int rtu_build_read(uint8_t *buf, size_t cap, uint8_t unit, uint8_t fn, uint16_t addr,
		   uint16_t count, struct rtu_req *req);
int rtu_build_write_single(uint8_t *buf, size_t cap, uint8_t unit, uint8_t fn, uint16_t addr,
			   uint16_t value, struct rtu_req *req);
/* fn 16: n registers; fn 15: n coils packed LSB first in (n + 7) / 8 bytes of `data`. */
int rtu_build_write_multiple(uint8_t *buf, size_t cap, uint8_t unit, uint8_t fn, uint16_t addr,
			     uint16_t n, const uint8_t *data, size_t len, struct rtu_req *req);

/* The length a response frame starting at p will have: > 0, 0 if more bytes
 * are needed to tell, -EBADMSG if no response can start here. */
int rtu_response_length(const uint8_t *p, size_t n);
/* The same for a request frame (the simulator's and a DTU's side). */
int rtu_request_length(const uint8_t *p, size_t n);

/* Looks at buf[0..n) for the answer to req. *consumed is how many bytes the
 * caller should drop (the frame, or the garbage), 0 for RTU_NEED_MORE. */
enum rtu_scan_result rtu_scan(const uint8_t *buf, size_t n, const struct rtu_req *req,
			      struct rtu_answer *out, size_t *consumed);

/* rtu_scan()'s verdict on one frame a transport has already cut out and
 * checked (Modbus TCP: the MBAP header framed it and TCP carries no CRC):
 * buf[0..n) is unit, function and body, without the CRC. RTU_ANSWER,
 * RTU_EXCEPTION, RTU_FOREIGN, or RTU_GARBAGE when the length does not fit
 * the function (never RTU_NEED_MORE). */
enum rtu_scan_result rtu_match(const uint8_t *buf, size_t n, const struct rtu_req *req,
			       struct rtu_answer *out);

/* Modbus TCP framing (MBAP): the length of the frame (7-byte header with
 * transaction id, protocol id, length and unit, then the PDU) that starts
 * at p[0..n): > 0 (at most MBAP_MAX_FRAME), 0 if more bytes are needed to
 * tell, -EBADMSG if no frame can start here (protocol id not 0, length field
 * outside 2..254: the stream has lost its framing). Never reads beyond n. */
#define MBAP_MAX_FRAME 260
int mbap_frame_length(const uint8_t *p, size_t n);

#endif
