/*
 * libFuzzer target for json_path: the payload of an MQTT device and the path
 * and point type of a profile. Input layout:
 *   byte 0      point type (enum cgw_ptype, modulo)
 *   byte 1      flags: bit 0 enum {0: closed, 1: open, 7: fault}, bit 1
 *               scale 0.1 offset -40, bits 4-7 string:N (N = value)
 *   bytes 2..   the path, up to the first '\n' (at most 300 bytes)
 *   the rest    the payload (a heap block of exactly its size)
 * Besides "no crash, no out-of-bounds read, no leak", it checks the promises
 * of json_path.h: max_payload is enforced before parsing, a refused parse
 * leaves nothing, a converted value has the type the point implies (a string
 * printable and within its bound, a double finite), a failed conversion
 * leaves CGW_V_NONE, and a timestamp is either the payload's plausible "ts"
 * or now.
 */
#include "json_path.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                 \
	do {                     \
		if (!(c))        \
			abort(); \
	} while (0)

static int expected_vtype(const struct cfg_point *pt)
{
	if (pt->n_enums)
		return CGW_V_INT;
	if (pt->type == CGW_T_BOOL)
		return CGW_V_BOOL;
	if (pt->type == CGW_T_STRING)
		return CGW_V_STRING;
	if (pt->scale != 1.0 || pt->offset != 0.0)
		return CGW_V_DOUBLE;
	switch (pt->type) {
	case CGW_T_INT16:
	case CGW_T_INT32:
	case CGW_T_INT64:
		return CGW_V_INT;
	case CGW_T_UINT16:
	case CGW_T_UINT32:
	case CGW_T_UINT64:
	case CGW_T_BITS:
		return CGW_V_UINT;
	default:
		return CGW_V_DOUBLE;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct cfg_enum enums[] = {{0, (char *)"closed"},
					  {1, (char *)"open"},
					  {7, (char *)"fault"}};
	const int64_t now = 1763700000000LL;
	struct cfg_point pt;
	char path[301];
	size_t plen = 0, off;
	json_t *root = NULL, *node = NULL;
	char why[160];
	uint8_t *payload;

	if (size < 2)
		return 0;
	memset(&pt, 0, sizeof(pt));
	pt.name = (char *)"p";
	pt.type = data[0] % (CGW_T_NUMBER + 1);
	pt.scale = (data[1] & 2) ? 0.1 : 1.0;
	pt.offset = (data[1] & 2) ? -40.0 : 0.0;
	pt.str_len = data[1] >> 4;
	if (data[1] & 1) {
		pt.enums = enums;
		pt.n_enums = 3;
	}
	for (off = 2; off < size && data[off] != '\n' && plen < sizeof(path) - 1; off++)
		path[plen++] = data[off] ? (char)data[off] : '.';
	path[plen] = '\0';
	if (off < size && data[off] == '\n')
		off++;
	size -= off;
	payload = malloc(size ? size : 1);
	if (!payload)
		return 0;
	memcpy(payload, data + off, size);
	pt.json = path;

	/* the size limit holds whatever the bytes are */
	if (size > 0)
		CHECK(jp_parse(payload, size, size - 1, &root, why, sizeof(why)) == -EFBIG &&
		      !root);

	int r = jp_parse(payload, size, 4096, &root, why, sizeof(why));
	if (r < 0) {
		CHECK(root == NULL);
		CHECK(r == -EFBIG || r == -ENODATA || r == -ELOOP || r == -EILSEQ || r == -ENOMEM);
		for (const char *c = why; *c; c++)
			CHECK(*c >= 0x20 && *c < 0x7f);
		free(payload);
		return 0;
	}
	CHECK(root != NULL);

	int64_t ts = jp_timestamp(root, now);
	CHECK(ts == now || (ts >= JP_TS_MIN_MS && ts <= now + JP_TS_AHEAD_MS));

	r = jp_get(root, path, &node);
	CHECK(r == 0 || r == -ENOENT || r == -EINVAL);
	CHECK((r == 0) == (node != NULL));
	if (r == 0 && jp_path_check(path, NULL) == 0) {
		struct cgw_value v;
		int c = jp_convert(node, &pt, &v, why, sizeof(why));
		if (c < 0) {
			CHECK(v.type == CGW_V_NONE);
			CHECK(why[0] != '\0');
		} else if (c == 1) {
			CHECK(pt.n_enums);
			CHECK(v.type == CGW_V_INT || v.type == CGW_V_NONE);
		} else {
			CHECK(c == 0);
			CHECK((int)v.type == expected_vtype(&pt));
			if (v.type == CGW_V_DOUBLE)
				CHECK(isfinite(v.d));
			if (v.type == CGW_V_STRING) {
				size_t len = strlen(v.s);
				CHECK(len <= (pt.str_len ? pt.str_len : JP_STRING_MAX));
				for (size_t i = 0; i < len; i++)
					CHECK((unsigned char)v.s[i] >= 0x20 && v.s[i] != 0x7f);
			}
			if (v.type == CGW_V_UINT && pt.type == CGW_T_UINT16)
				CHECK(v.u <= 65535);
			if (v.type == CGW_V_INT && pt.type == CGW_T_INT16)
				CHECK(v.i >= -32768 && v.i <= 32767);
			if (v.type == CGW_V_INT && pt.n_enums)
				CHECK(v.i == 0 || v.i == 1 || v.i == 7);
		}
		cgw_value_clear(&v);
	}
	json_decref(root);
	free(payload);
	return 0;
}
