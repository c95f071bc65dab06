/*
 * libFuzzer target for rtu_frame: the first 6 bytes are a request (unit,
 * function, address, count), the rest is what arrived on the connection.
 * Scanning like a receiver (drop garbage and foreign frames, stop at an
 * answer, an exception or "need more") must never read past the buffer,
 * always make progress, and only ever hand out an answer whose CRC is good,
 * whose unit and function are the request's and whose size fits the count.
 * The same bytes cut as a Modbus TCP stream (mbap_frame_length) must give
 * lengths within the MBAP limits and never read past the buffer.
 */
#include "rtu_frame.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rtu_req req;
	uint8_t frame[RTU_MAX_ADU];
	uint8_t *buf;
	size_t n, off = 0;

	if (size < 6)
		return 0;
	req = (struct rtu_req){.unit = data[0],
			       .fn = data[1],
			       .addr = (uint16_t)(data[2] << 8 | data[3]),
			       .count = (uint16_t)(data[4] << 8 | data[5])};
	/* building never overflows and always gives a frame the other side can size */
	{
		int len = rtu_build_read(frame, sizeof frame, req.unit, req.fn, req.addr, req.count,
					 NULL);
		if (len > 0)
			CHECK(rtu_request_length(frame, (size_t)len) == len);
	}
	n = size - 6;
	buf = malloc(n ? n : 1); /* exactly sized: ASan sees any overread */
	if (!buf)
		return 0;
	memcpy(buf, data + 6, n);
	(void)rtu_request_length(buf, n);
	/* the buffer as a Modbus TCP stream: cut frame after frame like the
	 * worker; a length is never beyond MBAP_MAX_FRAME and never needs more
	 * once the 6 header bytes are there */
	for (size_t at = 0;;) {
		int fl = mbap_frame_length(buf + at, n - at);

		if (fl < 0)
			break;
		if (fl == 0) {
			CHECK(n - at < 6);
			break;
		}
		CHECK(fl >= 8 && fl <= MBAP_MAX_FRAME);
		if ((size_t)fl > n - at)
			break;
		CHECK(buf[at + 2] == 0 && buf[at + 3] == 0);
		at += (size_t)fl;
	}
	/* the whole buffer as one frame a transport cut out (Modbus TCP) */
	{
		struct rtu_answer a;
		enum rtu_scan_result r = rtu_match(buf, n, &req, &a);

		CHECK(r != RTU_NEED_MORE);
		if (r == RTU_ANSWER || r == RTU_EXCEPTION) {
			CHECK(n >= 3 && buf[0] == req.unit);
			if (r == RTU_EXCEPTION)
				CHECK(n == 3 && buf[1] == (req.fn | 0x80));
			else if (req.fn >= 1 && req.fn <= 4)
				CHECK(a.data == buf + 3 && a.data + a.len == buf + n);
		}
	}
	for (;;) {
		struct rtu_answer a;
		size_t used = 0;
		enum rtu_scan_result r = rtu_scan(buf + off, n - off, &req, &a, &used);

		CHECK(used <= n - off);
		if (r == RTU_NEED_MORE) {
			CHECK(used == 0);
			break;
		}
		CHECK(used > 0);
		if (r == RTU_ANSWER || r == RTU_EXCEPTION) {
			const uint8_t *f = buf + off;
			uint16_t crc = rtu_crc16(f, used - 2);
			CHECK(f[used - 2] == (crc & 0xFF) && f[used - 1] == crc >> 8);
			CHECK(f[0] == req.unit);
			if (r == RTU_EXCEPTION) {
				CHECK(used == 5 && f[1] == (req.fn | 0x80));
			} else {
				CHECK(f[1] == req.fn);
				if (req.fn >= 1 && req.fn <= 4) {
					unsigned want = req.fn <= 2 ? (req.count + 7u) / 8u :
								      2u * req.count;
					CHECK(a.len == want && a.data == f + 3);
					CHECK(a.data + a.len <= buf + n);
				}
			}
			break;
		}
		off += used;
	}
	free(buf);
	return 0;
}
