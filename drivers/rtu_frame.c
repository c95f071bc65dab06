/*
 * rtu_frame.c - Modbus RTU framing (see rtu_frame.h).
 */
#include "rtu_frame.h"

#include <errno.h>
#include <string.h>

#define RTU_MAX_BYTE_COUNT 250 /* 125 registers or 2000 coils */

/* CRC-16/MODBUS (reflected 0xA001) of every byte value: one lookup per byte
 * instead of eight shifts (the line's answers are checked byte by byte). */
static const uint16_t crc_table[256] = {
#define C1(c) ((c)&1 ? ((c) >> 1) ^ 0xA001 : (c) >> 1)
#define C8(c) C1(C1(C1(C1(C1(C1(C1(C1(c))))))))
#define R4(i) C8(i), C8(i + 1), C8(i + 2), C8(i + 3)
#define R16(i) R4(i), R4(i + 4), R4(i + 8), R4(i + 12)
#define R64(i) R16(i), R16(i + 16), R16(i + 32), R16(i + 48)
	R64(0u), R64(64u), R64(128u), R64(192u)
#undef R64
#undef R16
#undef R4
#undef C8
#undef C1
};

uint16_t rtu_crc16(const uint8_t *p, size_t n)
{
	uint16_t crc = 0xFFFF;

	for (size_t i = 0; i < n; i++)
		crc = (uint16_t)((crc >> 8) ^ crc_table[(crc ^ p[i]) & 0xFF]);
	return crc;
}

static size_t put_crc(uint8_t *buf, size_t n)
{
	uint16_t crc = rtu_crc16(buf, n);

	buf[n] = (uint8_t)(crc & 0xFF);
	buf[n + 1] = (uint8_t)(crc >> 8);
	return n + 2;
}

static bool crc_ok(const uint8_t *p, size_t len)
{
	uint16_t crc = rtu_crc16(p, len - 2);

	return p[len - 2] == (crc & 0xFF) && p[len - 1] == (crc >> 8);
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)(v & 0xFF);
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static bool unit_ok(uint8_t unit)
{
	return unit >= 1 && unit <= 247;
}

int rtu_build_read(uint8_t *buf, size_t cap, uint8_t unit, uint8_t fn, uint16_t addr,
		   uint16_t count, struct rtu_req *req)
{
	unsigned max;

	if (!buf || !unit_ok(unit))
		return -EINVAL;
	if (fn == RTU_FN_READ_COILS || fn == RTU_FN_READ_DISCRETE)
		max = RTU_MAX_READ_BITS;
	else if (fn == RTU_FN_READ_HOLDING || fn == RTU_FN_READ_INPUT)
		max = RTU_MAX_READ_REGS;
	else
		return -EINVAL;
	if (count < 1 || count > max || (uint32_t)addr + count > 0x10000)
		return -EINVAL;
	if (cap < 8)
		return -ENOSPC;
	buf[0] = unit;
	buf[1] = fn;
	put16(buf + 2, addr);
	put16(buf + 4, count);
	if (req)
		*req = (struct rtu_req){.unit = unit, .fn = fn, .addr = addr, .count = count};
	return (int)put_crc(buf, 6);
}

int rtu_build_write_single(uint8_t *buf, size_t cap, uint8_t unit, uint8_t fn, uint16_t addr,
			   uint16_t value, struct rtu_req *req)
{
	if (!buf || !unit_ok(unit))
		return -EINVAL;
	if (fn != RTU_FN_WRITE_COIL && fn != RTU_FN_WRITE_REG)
		return -EINVAL;
	if (fn == RTU_FN_WRITE_COIL && value != 0 && value != 0xFF00)
		return -EINVAL;
	if (cap < 8)
		return -ENOSPC;
	buf[0] = unit;
	buf[1] = fn;
	put16(buf + 2, addr);
	put16(buf + 4, value);
	if (req)
		*req = (struct rtu_req){.unit = unit, .fn = fn, .addr = addr, .count = value};
	return (int)put_crc(buf, 6);
}

int rtu_build_write_multiple(uint8_t *buf, size_t cap, uint8_t unit, uint8_t fn, uint16_t addr,
			     uint16_t n, const uint8_t *data, size_t len, struct rtu_req *req)
{
	size_t want;

	if (!buf || !data || !unit_ok(unit))
		return -EINVAL;
	if (fn == RTU_FN_WRITE_REGS) {
		if (n < 1 || n > RTU_MAX_WRITE_REGS)
			return -EINVAL;
		want = 2u * n;
	} else if (fn == RTU_FN_WRITE_COILS) {
		if (n < 1 || n > RTU_MAX_WRITE_BITS)
			return -EINVAL;
		want = (n + 7u) / 8u;
	} else {
		return -EINVAL;
	}
	if (len != want || (uint32_t)addr + n > 0x10000)
		return -EINVAL;
	if (cap < 9 + want)
		return -ENOSPC;
	buf[0] = unit;
	buf[1] = fn;
	put16(buf + 2, addr);
	put16(buf + 4, n);
	buf[6] = (uint8_t)want;
	memcpy(buf + 7, data, want);
	if (req)
		*req = (struct rtu_req){.unit = unit, .fn = fn, .addr = addr, .count = n};
	return (int)put_crc(buf, 7 + want);
}

int rtu_response_length(const uint8_t *p, size_t n)
{
	uint8_t fn;

	if (n < 1)
		return 0;
	if (!unit_ok(p[0]))
		return -EBADMSG;
	if (n < 2)
		return 0;
	fn = p[1];
	if (fn & 0x80)
		return fn == 0x80 ? -EBADMSG : 5;
	switch (fn) {
	case RTU_FN_READ_COILS:
	case RTU_FN_READ_DISCRETE:
	case RTU_FN_READ_HOLDING:
	case RTU_FN_READ_INPUT:
		if (n < 3)
			return 0;
		if (p[2] == 0 || p[2] > RTU_MAX_BYTE_COUNT)
			return -EBADMSG;
		if ((fn == RTU_FN_READ_HOLDING || fn == RTU_FN_READ_INPUT) && p[2] % 2)
			return -EBADMSG;
		return 5 + p[2];
	case RTU_FN_WRITE_COIL:
	case RTU_FN_WRITE_REG:
	case RTU_FN_WRITE_COILS:
	case RTU_FN_WRITE_REGS:
		return 8;
	}
	return -EBADMSG;
}

int rtu_request_length(const uint8_t *p, size_t n)
{
	if (n < 1)
		return 0;
	if (p[0] > 247)
		return -EBADMSG;
	if (n < 2)
		return 0;
	switch (p[1]) {
	case RTU_FN_READ_COILS:
	case RTU_FN_READ_DISCRETE:
	case RTU_FN_READ_HOLDING:
	case RTU_FN_READ_INPUT:
	case RTU_FN_WRITE_COIL:
	case RTU_FN_WRITE_REG:
		return 8;
	case RTU_FN_WRITE_COILS:
	case RTU_FN_WRITE_REGS:
		if (n < 7)
			return 0;
		if (p[6] == 0 || p[6] > 246)
			return -EBADMSG;
		return 9 + p[6];
	}
	return -EBADMSG;
}

/* A frame of `len` bytes at buf, CRC already checked: is it the answer? */
static enum rtu_scan_result classify(const uint8_t *buf, size_t len, const struct rtu_req *req,
				     struct rtu_answer *out)
{
	uint8_t fn = buf[1];

	*out = (struct rtu_answer){.unit = buf[0], .fn = fn};
	if (buf[0] != req->unit)
		return RTU_FOREIGN;
	if (fn == (req->fn | 0x80)) {
		out->exception = buf[2];
		return RTU_EXCEPTION;
	}
	if (fn != req->fn)
		return RTU_FOREIGN;
	switch (fn) {
	case RTU_FN_READ_COILS:
	case RTU_FN_READ_DISCRETE:
		if (buf[2] != (req->count + 7u) / 8u)
			return RTU_FOREIGN;
		break;
	case RTU_FN_READ_HOLDING:
	case RTU_FN_READ_INPUT:
		if (buf[2] != 2u * req->count)
			return RTU_FOREIGN;
		break;
	default: /* writes echo address and value or count */
		if (len != 8 || get16(buf + 2) != req->addr || get16(buf + 4) != req->count)
			return RTU_FOREIGN;
		return RTU_ANSWER;
	}
	out->data = buf + 3;
	out->len = buf[2];
	return RTU_ANSWER;
}

enum rtu_scan_result rtu_scan(const uint8_t *buf, size_t n, const struct rtu_req *req,
			      struct rtu_answer *out, size_t *consumed)
{
	size_t first_partial = SIZE_MAX;
	struct rtu_answer dummy;

	if (!out)
		out = &dummy;
	*out = (struct rtu_answer){0};
	*consumed = 0;
	if (!buf || !req || n == 0)
		return RTU_NEED_MORE;
	for (size_t i = 0; i < n; i++) {
		int len = rtu_response_length(buf + i, n - i);

		if (len < 0)
			continue;
		if (len == 0 || (size_t)len > n - i) {
			/* the start of our answer: wait for the rest rather than hunt
			 * inside it for something that happens to have a good CRC */
			if (i == 0 && buf[0] == req->unit && (n < 2 || (buf[1] & 0x7F) == req->fn))
				return RTU_NEED_MORE;
			if (first_partial == SIZE_MAX)
				first_partial = i;
			continue;
		}
		if (!crc_ok(buf + i, (size_t)len))
			continue;
		if (i > 0) {
			*consumed = i;
			return RTU_GARBAGE;
		}
		*consumed = (size_t)len;
		return classify(buf, (size_t)len, req, out);
	}
	if (first_partial == 0)
		return RTU_NEED_MORE;
	*consumed = first_partial == SIZE_MAX ? n : first_partial;
	return RTU_GARBAGE;
}

enum rtu_scan_result rtu_match(const uint8_t *buf, size_t n, const struct rtu_req *req,
			       struct rtu_answer *out)
{
	struct rtu_answer dummy;
	int len;

	if (!out)
		out = &dummy;
	*out = (struct rtu_answer){0};
	if (!buf || !req || n < 2 || n > RTU_MAX_ADU - 2)
		return RTU_GARBAGE;
	len = rtu_response_length(buf, n);
	if (len <= 0 || (size_t)len != n + 2)
		return RTU_GARBAGE;
	return classify(buf, (size_t)len, req, out);
}

int mbap_frame_length(const uint8_t *p, size_t n)
{
	unsigned len;

	if (!p)
		return 0;
	if ((n > 2 && p[2]) || (n > 3 && p[3]))
		return -EBADMSG;
	if (n < 6)
		return 0;
	len = (unsigned)p[4] << 8 | p[5];
	if (len < 2 || len > MBAP_MAX_FRAME - 6)
		return -EBADMSG;
	return 6 + (int)len;
}
