/* libFuzzer target: the telemetry text writer (wire_value_text(),
 * wire_telemetry()) against jansson. A string value taken from the input
 * (any bytes: invalid UTF-8, control characters, quotes) and a number made
 * from its first 8 bytes must come out as json_dumps() writes them, and the
 * telemetry message with that string as a point name must parse as JSON. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const struct cfg_point *pt, const struct cgw_value *v)
{
	json_t *j = wire_value_json(pt, v);
	char *want = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(15));
	size_t n = wire_value_text(pt, v, NULL, 0);
	char *got = malloc(n + 1);

	if (!want || !got)
		abort();
	wire_value_text(pt, v, got, n + 1);
	if (strcmp(want, got) != 0)
		abort();
	json_decref(j);
	free(want);
	free(got);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfg_point f32 = {.type = CGW_T_FLOAT32};
	char *s = malloc(size + 1);
	uint64_t bits = 0;
	double d;

	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0'; /* a C string: up to the first NUL */
	same(NULL, &(struct cgw_value){.type = CGW_V_STRING, .s = s});
	memcpy(&bits, data, size < sizeof(bits) ? size : sizeof(bits));
	memcpy(&d, &bits, sizeof(d));
	same(NULL, &(struct cgw_value){.type = CGW_V_DOUBLE, .d = d});
	same(&f32, &(struct cgw_value){.type = CGW_V_DOUBLE, .d = (float)d});
	same(NULL, &(struct cgw_value){.type = CGW_V_INT, .i = (int64_t)bits});
	same(NULL, &(struct cgw_value){.type = CGW_V_UINT, .u = bits});

	struct cfg_device dev = {.id = "dev-1"};
	struct wire_field f[2] = {{s, "1", NULL}, {"q", "null", "bad"}};
	struct wire_msg m;
	if (wire_telemetry(&dev, 1, f, 2, &m) == 0) {
		json_error_t err;
		json_t *o = json_loads(m.payload, 0, &err);
		if (!o || !json_is_object(json_object_get(o, "values")))
			abort();
		json_decref(o);
		wire_msg_clear(&m);
	}
	free(s);
	return 0;
}
