/*
 * RTU framing. The vectors are the worked examples of the Modbus
 * specification and of the usual Modbus references (unit 0x11), written out
 * byte by byte, CRC included; the malformed inputs are built by hand from
 * them (cut, corrupted, prefixed with garbage, answered by another unit).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rtu_frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void test_crc(void **state)
{
	static const uint8_t a[] = {0x01, 0x03, 0x00, 0x00, 0x00, 0x0A};
	static const uint8_t b[] = {0x11, 0x03, 0x00, 0x6B, 0x00, 0x03};
	(void)state;
	assert_int_equal(rtu_crc16(a, sizeof a), 0xCDC5);
	assert_int_equal(rtu_crc16(b, sizeof b), 0x8776);
	assert_int_equal(rtu_crc16(NULL, 0), 0xFFFF);
}

/* The table-driven CRC against the bitwise definition, over every byte
 * value and a long frame. */
static void test_crc_table(void **state)
{
	uint8_t buf[RTU_MAX_ADU];
	(void)state;
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (uint8_t)(i * 37 + 11);
	for (size_t n = 0; n <= sizeof buf; n++) {
		uint16_t crc = 0xFFFF;
		for (size_t i = 0; i < n; i++) {
			crc ^= buf[i];
			for (int b = 0; b < 8; b++)
				crc = crc & 1 ? (uint16_t)((crc >> 1) ^ 0xA001) :
						(uint16_t)(crc >> 1);
		}
		assert_int_equal(rtu_crc16(buf, n), crc);
	}
}

/* A frame the transport cut out (Modbus TCP, no CRC): the same verdicts as
 * rtu_scan() on the same frame with its CRC, and malformed lengths refused. */
static void test_match(void **state)
{
	struct rtu_req req = {.unit = 0x11, .fn = 3, .addr = 0x6B, .count = 3};
	struct rtu_answer a;
	static const uint8_t ok[] = {0x11, 0x03, 0x06, 0x02, 0x2B, 0x00, 0x00, 0x00, 0x64};
	static const uint8_t exc[] = {0x11, 0x83, 0x02};
	static const uint8_t other_unit[] = {0x12, 0x03, 0x06, 0, 0, 0, 0, 0, 0};
	static const uint8_t other_count[] = {0x11, 0x03, 0x04, 0, 0, 0, 0};
	static const uint8_t other_fn[] = {0x11, 0x04, 0x06, 0, 0, 0, 0, 0, 0};
	(void)state;

	assert_int_equal(rtu_match(ok, sizeof ok, &req, &a), RTU_ANSWER);
	assert_ptr_equal(a.data, ok + 3);
	assert_int_equal(a.len, 6);
	assert_int_equal(rtu_match(exc, sizeof exc, &req, &a), RTU_EXCEPTION);
	assert_int_equal(a.exception, 2);
	assert_int_equal(rtu_match(other_unit, sizeof other_unit, &req, &a), RTU_FOREIGN);
	assert_int_equal(rtu_match(other_count, sizeof other_count, &req, &a), RTU_FOREIGN);
	assert_int_equal(rtu_match(other_fn, sizeof other_fn, &req, &a), RTU_FOREIGN);
	/* cut short, one byte too many, odd register byte count, nothing */
	assert_int_equal(rtu_match(ok, sizeof ok - 1, &req, &a), RTU_GARBAGE);
	{
		uint8_t longer[sizeof ok + 1];
		memcpy(longer, ok, sizeof ok);
		longer[sizeof ok] = 0;
		assert_int_equal(rtu_match(longer, sizeof longer, &req, &a), RTU_GARBAGE);
	}
	{
		static const uint8_t odd[] = {0x11, 0x03, 0x05, 0, 0, 0, 0, 0};
		assert_int_equal(rtu_match(odd, sizeof odd, &req, &a), RTU_GARBAGE);
	}
	assert_int_equal(rtu_match(exc, 2, &req, &a), RTU_GARBAGE);
	assert_int_equal(rtu_match(NULL, 0, &req, &a), RTU_GARBAGE);
	/* the same frame with its CRC through rtu_scan() agrees */
	{
		uint8_t f[sizeof ok + 2];
		uint16_t crc = rtu_crc16(ok, sizeof ok);
		size_t used;
		memcpy(f, ok, sizeof ok);
		f[sizeof ok] = crc & 0xFF;
		f[sizeof ok + 1] = crc >> 8;
		assert_int_equal(rtu_scan(f, sizeof f, &req, &a, &used), RTU_ANSWER);
		assert_int_equal(used, sizeof f);
	}
}

static void test_build(void **state)
{
	uint8_t buf[RTU_MAX_ADU];
	struct rtu_req req;
	static const uint8_t rd[] = {0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87};
	static const uint8_t coils[] = {0x11, 0x01, 0x00, 0x13, 0x00, 0x25, 0x0E, 0x84};
	static const uint8_t input[] = {0x11, 0x04, 0x00, 0x08, 0x00, 0x01, 0xB2, 0x98};
	static const uint8_t wc[] = {0x11, 0x05, 0x00, 0xAC, 0xFF, 0x00, 0x4E, 0x8B};
	static const uint8_t wr[] = {0x01, 0x06, 0x00, 0x01, 0x00, 0x03, 0x98, 0x0B};
	static const uint8_t wm[] = {0x11, 0x10, 0x00, 0x01, 0x00, 0x02, 0x04,
				     0x00, 0x0A, 0x01, 0x02, 0xC6, 0xF0};
	static const uint8_t regs[] = {0x00, 0x0A, 0x01, 0x02};
	(void)state;

	assert_int_equal(rtu_build_read(buf, sizeof buf, 0x11, 3, 0x6B, 3, &req), 8);
	assert_memory_equal(buf, rd, 8);
	assert_int_equal(req.unit, 0x11);
	assert_int_equal(req.fn, 3);
	assert_int_equal(req.count, 3);
	assert_int_equal(rtu_build_read(buf, sizeof buf, 0x11, 1, 0x13, 0x25, NULL), 8);
	assert_memory_equal(buf, coils, 8);
	assert_int_equal(rtu_build_read(buf, sizeof buf, 0x11, 4, 8, 1, NULL), 8);
	assert_memory_equal(buf, input, 8);
	assert_int_equal(rtu_build_write_single(buf, sizeof buf, 0x11, 5, 0xAC, 0xFF00, NULL), 8);
	assert_memory_equal(buf, wc, 8);
	assert_int_equal(rtu_build_write_single(buf, sizeof buf, 1, 6, 1, 3, NULL), 8);
	assert_memory_equal(buf, wr, 8);
	assert_int_equal(rtu_build_write_multiple(buf, sizeof buf, 0x11, 16, 1, 2, regs, 4, &req),
			 13);
	assert_memory_equal(buf, wm, 13);

	/* bounds: unit 0 (broadcast, never answered) and 248+, counts, functions, space */
	assert_int_equal(rtu_build_read(buf, sizeof buf, 0, 3, 0, 1, NULL), -EINVAL);
	assert_int_equal(rtu_build_read(buf, sizeof buf, 248, 3, 0, 1, NULL), -EINVAL);
	assert_int_equal(rtu_build_read(buf, sizeof buf, 1, 3, 0, 0, NULL), -EINVAL);
	assert_int_equal(rtu_build_read(buf, sizeof buf, 1, 3, 0, 126, NULL), -EINVAL);
	assert_int_equal(rtu_build_read(buf, sizeof buf, 1, 1, 0, 2000, NULL), 8);
	assert_int_equal(rtu_build_read(buf, sizeof buf, 1, 1, 0, 2001, NULL), -EINVAL);
	assert_int_equal(rtu_build_read(buf, sizeof buf, 1, 3, 0xFFFF, 2, NULL), -EINVAL);
	assert_int_equal(rtu_build_read(buf, sizeof buf, 1, 7, 0, 1, NULL), -EINVAL);
	assert_int_equal(rtu_build_read(buf, 7, 1, 3, 0, 1, NULL), -ENOSPC);
	assert_int_equal(rtu_build_write_single(buf, sizeof buf, 1, 5, 0, 1, NULL), -EINVAL);
	assert_int_equal(rtu_build_write_multiple(buf, sizeof buf, 1, 16, 0, 2, regs, 3, NULL),
			 -EINVAL);
	assert_int_equal(rtu_build_write_multiple(buf, 12, 1, 16, 0, 2, regs, 4, NULL), -ENOSPC);
	assert_int_equal(rtu_build_write_multiple(buf, sizeof buf, 1, 15, 0, 9, regs, 2, NULL), 11);
}

static void test_lengths(void **state)
{
	static const uint8_t rd[] = {0x11, 0x03, 0x06};
	static const uint8_t exc[] = {0x01, 0x83};
	static const uint8_t wm[] = {0x11, 0x10, 0, 1, 0, 2, 4};
	static const uint8_t odd[] = {0x11, 0x03, 0x05};
	static const uint8_t big[] = {0x11, 0x03, 252};
	static const uint8_t zero[] = {0x00, 0x03};
	static const uint8_t fn7[] = {0x11, 0x07};
	(void)state;
	assert_int_equal(rtu_response_length(rd, 0), 0);
	assert_int_equal(rtu_response_length(rd, 1), 0);
	assert_int_equal(rtu_response_length(rd, 2), 0);
	assert_int_equal(rtu_response_length(rd, 3), 11);
	assert_int_equal(rtu_response_length(exc, 2), 5);
	assert_int_equal(rtu_response_length(wm, 2), 8);
	assert_int_equal(rtu_response_length(odd, 3), -EBADMSG);
	assert_int_equal(rtu_response_length(big, 3), -EBADMSG);
	assert_int_equal(rtu_response_length(zero, 2), -EBADMSG);
	assert_int_equal(rtu_response_length(fn7, 2), -EBADMSG);
	assert_int_equal(rtu_request_length(rd, 2), 8);
	assert_int_equal(rtu_request_length(wm, 6), 0);
	assert_int_equal(rtu_request_length(wm, 7), 13);
	assert_int_equal(rtu_request_length(zero, 2), 8); /* broadcast request */
	assert_int_equal(rtu_request_length(fn7, 2), -EBADMSG);
}

/* The spec's read-holding answer to 11 03 00 6B 00 03. */
static const uint8_t answer[] = {0x11, 0x03, 0x06, 0xAE, 0x41, 0x56, 0x52, 0x43, 0x40, 0x49, 0xAD};
static const struct rtu_req rd_req = {.unit = 0x11, .fn = 3, .addr = 0x6B, .count = 3};

/* Scan like a receiver does: drop garbage and foreign frames, count them. */
static enum rtu_scan_result scan_all(const uint8_t *buf, size_t n, const struct rtu_req *req,
				     struct rtu_answer *a, size_t *garbage, size_t *foreign)
{
	size_t off = 0;

	*garbage = *foreign = 0;
	for (;;) {
		size_t used;
		enum rtu_scan_result r = rtu_scan(buf + off, n - off, req, a, &used);
		if (r == RTU_GARBAGE) {
			assert_true(used > 0 && used <= n - off);
			*garbage += used;
		} else if (r == RTU_FOREIGN) {
			assert_true(used >= 5);
			(*foreign)++;
		} else {
			if (r == RTU_NEED_MORE)
				assert_int_equal(used, 0);
			else
				assert_true(off + used <= n);
			return r;
		}
		off += used;
	}
}

static void test_scan_answer(void **state)
{
	struct rtu_answer a;
	size_t used, g, f;
	uint8_t *heap = malloc(sizeof answer);
	(void)state;

	/* exactly sized heap block: a read past the end is caught under ASan */
	memcpy(heap, answer, sizeof answer);
	assert_int_equal(rtu_scan(heap, sizeof answer, &rd_req, &a, &used), RTU_ANSWER);
	assert_int_equal(used, sizeof answer);
	assert_int_equal(a.len, 6);
	assert_ptr_equal(a.data, heap + 3);
	assert_int_equal(a.data[0], 0xAE);
	/* every truncation waits for more */
	for (size_t n = 0; n < sizeof answer; n++) {
		assert_int_equal(rtu_scan(heap, n, &rd_req, &a, &used), RTU_NEED_MORE);
		assert_int_equal(used, 0);
	}
	free(heap);

	/* garbage before the answer is skipped, whatever it looks like */
	{
		uint8_t buf[64];
		static const uint8_t junk[] = {0x00, 0xFF, 0x11, 0x03, 0x00, 0x55, 0x11};
		memcpy(buf, junk, sizeof junk);
		memcpy(buf + sizeof junk, answer, sizeof answer);
		assert_int_equal(scan_all(buf, sizeof junk + sizeof answer, &rd_req, &a, &g, &f),
				 RTU_ANSWER);
		assert_int_equal(g, sizeof junk);
		assert_int_equal(f, 0);
		assert_int_equal(a.data[5], 0x40);
	}
	/* garbage that looks like the start of a long frame does not hide the answer */
	{
		uint8_t buf[64] = {0x05, 0x04, 0xF0};
		memcpy(buf + 3, answer, sizeof answer);
		assert_int_equal(scan_all(buf, 3 + sizeof answer, &rd_req, &a, &g, &f), RTU_ANSWER);
		assert_int_equal(g, 3);
	}
}

static void test_scan_bad(void **state)
{
	uint8_t buf[64];
	struct rtu_answer a;
	size_t used, g, f;
	(void)state;

	/* wrong CRC: never an answer; once complete it is garbage */
	memcpy(buf, answer, sizeof answer);
	buf[sizeof answer - 1] ^= 0x01;
	assert_int_not_equal(scan_all(buf, sizeof answer, &rd_req, &a, &g, &f), RTU_ANSWER);
	memcpy(buf, answer, sizeof answer);
	buf[4] ^= 0x80; /* a data bit flipped on the line */
	assert_int_equal(scan_all(buf, sizeof answer, &rd_req, &a, &g, &f), RTU_NEED_MORE);
	/* ... and is dropped when the next frame (the real answer) follows */
	memcpy(buf + sizeof answer, answer, sizeof answer);
	assert_int_equal(scan_all(buf, 2 * sizeof answer, &rd_req, &a, &g, &f), RTU_ANSWER);
	assert_int_equal(g, sizeof answer);

	/* another unit's answer (same function, same size) is foreign, then ours */
	{
		static const uint8_t other[] = {0x12, 0x03, 0x06, 0, 1, 0, 2, 0, 3};
		uint16_t crc = rtu_crc16(other, sizeof other);
		memcpy(buf, other, sizeof other);
		buf[9] = crc & 0xFF;
		buf[10] = crc >> 8;
		assert_int_equal(rtu_scan(buf, 11, &rd_req, &a, &used), RTU_FOREIGN);
		assert_int_equal(used, 11);
		assert_int_equal(a.unit, 0x12);
		memcpy(buf + 11, answer, sizeof answer);
		assert_int_equal(scan_all(buf, 11 + sizeof answer, &rd_req, &a, &g, &f),
				 RTU_ANSWER);
		assert_int_equal(f, 1);
		assert_int_equal(g, 0);
	}
	/* our unit, but the answer to a read of another size: a stale answer */
	{
		struct rtu_req two = rd_req;
		two.count = 2;
		assert_int_equal(rtu_scan(answer, sizeof answer, &two, &a, &used), RTU_FOREIGN);
		assert_int_equal(used, sizeof answer);
	}
	/* another function of ours (a write echo while we read) is foreign */
	{
		static const uint8_t echo[] = {0x11, 0x06, 0x00, 0x01, 0x00, 0x03, 0x9A, 0x9B};
		uint8_t e[8];
		uint16_t crc = rtu_crc16(echo, 6);
		memcpy(e, echo, 6);
		e[6] = crc & 0xFF;
		e[7] = crc >> 8;
		assert_int_equal(rtu_scan(e, 8, &rd_req, &a, &used), RTU_FOREIGN);
		struct rtu_req w = {.unit = 0x11, .fn = 6, .addr = 1, .count = 3};
		assert_int_equal(rtu_scan(e, 8, &w, &a, &used), RTU_ANSWER);
		w.count = 4; /* echo of another value */
		assert_int_equal(rtu_scan(e, 8, &w, &a, &used), RTU_FOREIGN);
	}
	/* pure garbage is dropped entirely */
	{
		static const uint8_t junk[] = {0x00, 0x00, 0xF8, 0xFF, 0x00};
		assert_int_equal(rtu_scan(junk, sizeof junk, &rd_req, &a, &used), RTU_GARBAGE);
		assert_int_equal(used, sizeof junk);
	}
}

static void test_scan_exception(void **state)
{
	static const uint8_t exc[] = {0x01, 0x83, 0x02, 0xC0, 0xF1};
	struct rtu_req req = {.unit = 1, .fn = 3, .addr = 0, .count = 1};
	struct rtu_answer a;
	size_t used;
	(void)state;

	assert_int_equal(rtu_scan(exc, sizeof exc, &req, &a, &used), RTU_EXCEPTION);
	assert_int_equal(a.exception, 2);
	assert_int_equal(used, 5);
	/* an exception to another function is not ours */
	req.fn = 4;
	assert_int_equal(rtu_scan(exc, sizeof exc, &req, &a, &used), RTU_FOREIGN);
	/* nor one from another unit */
	req.fn = 3;
	req.unit = 2;
	assert_int_equal(rtu_scan(exc, sizeof exc, &req, &a, &used), RTU_FOREIGN);
}

static void test_scan_other_answers(void **state)
{
	static const uint8_t coils[] = {0x11, 0x01, 0x05, 0xCD, 0x6B, 0xB2, 0x0E, 0x1B, 0x45, 0xE6};
	static const uint8_t input[] = {0x11, 0x04, 0x02, 0x00, 0x0A, 0xF8, 0xF4};
	static const uint8_t wm[] = {0x11, 0x10, 0x00, 0x01, 0x00, 0x02, 0x12, 0x98};
	struct rtu_req rc = {.unit = 0x11, .fn = 1, .addr = 0x13, .count = 0x25};
	struct rtu_req ri = {.unit = 0x11, .fn = 4, .addr = 8, .count = 1};
	struct rtu_req rw = {.unit = 0x11, .fn = 16, .addr = 1, .count = 2};
	struct rtu_answer a;
	size_t used;
	(void)state;

	assert_int_equal(rtu_scan(coils, sizeof coils, &rc, &a, &used), RTU_ANSWER);
	assert_int_equal(a.len, 5);
	assert_int_equal(a.data[0], 0xCD);
	rc.count = 41; /* 6 bytes expected */
	assert_int_equal(rtu_scan(coils, sizeof coils, &rc, &a, &used), RTU_FOREIGN);
	assert_int_equal(rtu_scan(input, sizeof input, &ri, &a, &used), RTU_ANSWER);
	assert_int_equal(a.data[1], 0x0A);
	assert_int_equal(rtu_scan(wm, sizeof wm, &rw, &a, &used), RTU_ANSWER);
	assert_int_equal(a.len, 0);
}

/* Modbus TCP framing: the MBAP header gives the length; a header that
 * cannot be one (protocol id not 0, length outside 2..254) is refused as
 * soon as its bytes are there, and nothing past n is read. */
static void test_mbap_frame_length(void **state)
{
	(void)state;
	/* tid 0x1234, protocol 0, length 6: unit + PDU of 5 bytes */
	const uint8_t ok[] = {0x12, 0x34, 0, 0, 0, 6, 1, 3, 2, 0, 7};
	const uint8_t longest[] = {0, 1, 0, 0, 0, 254};
	const uint8_t too_long[] = {0, 1, 0, 0, 0, 255};
	const uint8_t huge[] = {0, 1, 0, 0, 0xFF, 0xFF};
	const uint8_t too_short[] = {0, 1, 0, 0, 0, 1};
	const uint8_t zero[] = {0, 1, 0, 0, 0, 0};
	const uint8_t proto_hi[] = {0, 1, 1, 0};
	const uint8_t proto_lo[] = {0, 1, 0, 2, 0, 6};

	for (size_t n = 0; n < 6; n++)
		assert_int_equal(mbap_frame_length(ok, n), 0); /* need more */
	assert_int_equal(mbap_frame_length(ok, 6), 12);
	assert_int_equal(mbap_frame_length(ok, sizeof ok), 12);
	assert_int_equal(mbap_frame_length(longest, sizeof longest), MBAP_MAX_FRAME);
	assert_int_equal(mbap_frame_length(too_long, sizeof too_long), -EBADMSG);
	assert_int_equal(mbap_frame_length(huge, sizeof huge), -EBADMSG);
	assert_int_equal(mbap_frame_length(too_short, sizeof too_short), -EBADMSG);
	assert_int_equal(mbap_frame_length(zero, sizeof zero), -EBADMSG);
	/* a bad protocol id is known from its first byte on */
	assert_int_equal(mbap_frame_length(proto_hi, 2), 0);
	assert_int_equal(mbap_frame_length(proto_hi, 3), -EBADMSG);
	assert_int_equal(mbap_frame_length(proto_lo, 3), 0);
	assert_int_equal(mbap_frame_length(proto_lo, 4), -EBADMSG);
	assert_int_equal(mbap_frame_length(NULL, 0), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc),
		cmocka_unit_test(test_crc_table),
		cmocka_unit_test(test_match),
		cmocka_unit_test(test_build),
		cmocka_unit_test(test_lengths),
		cmocka_unit_test(test_scan_answer),
		cmocka_unit_test(test_scan_bad),
		cmocka_unit_test(test_scan_exception),
		cmocka_unit_test(test_scan_other_answers),
		cmocka_unit_test(test_mbap_frame_length),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
