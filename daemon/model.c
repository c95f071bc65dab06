#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const lane_names[CGW_LANE_COUNT] = {"alarm", "event", "status", "telemetry"};

size_t cgw_u64_text(uint64_t v, char *out)
{
	char t[20];
	size_t w = 0, n;

	do {
		t[w++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (n = 0; w; n++)
		out[n] = t[--w];
	out[n] = '\0';
	return n;
}

const char *cgw_lane_name(enum cgw_lane lane)
{
	return (unsigned)lane < CGW_LANE_COUNT ? lane_names[lane] : "?";
}

int cgw_lane_from_name(const char *name)
{
	for (int i = 0; i < CGW_LANE_COUNT; i++)
		if (strcmp(name, lane_names[i]) == 0)
			return i;
	return -1;
}

const char *cgw_quality_name(enum cgw_quality q)
{
	switch (q) {
	case CGW_Q_GOOD:
		return "good";
	case CGW_Q_BAD:
		return "bad";
	case CGW_Q_STALE:
		return "stale";
	}
	return "?";
}

static int64_t clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cgw_now_ms(void)
{
	return clock_ms(CLOCK_REALTIME);
}

int64_t cgw_mono_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

/* Whether b differs from a enough to report: numbers beyond the deadband,
 * anything else on any change. */
bool cgw_value_changed(const struct cgw_value *a, const struct cgw_value *b, double deadband)
{
	double x, y;

	if (a->type != b->type)
		return true;
	switch (a->type) {
	case CGW_V_NONE:
		return false;
	case CGW_V_BOOL:
		return a->b != b->b;
	case CGW_V_STRING:
		return strcmp(a->s, b->s) != 0;
	case CGW_V_INT:
		if (a->i == b->i)
			return false;
		x = (double)a->i, y = (double)b->i;
		break;
	case CGW_V_UINT:
		if (a->u == b->u)
			return false;
		x = (double)a->u, y = (double)b->u;
		break;
	case CGW_V_DOUBLE:
		if (a->d == b->d)
			return false;
		x = a->d, y = b->d;
		break;
	default:
		return true;
	}
	return !(deadband > 0) || fabs(x - y) > deadband;
}

int cgw_value_copy(struct cgw_value *dst, const struct cgw_value *src)
{
	*dst = *src;
	if (src->type == CGW_V_STRING) {
		dst->s = strdup(src->s);
		if (!dst->s) {
			dst->type = CGW_V_NONE;
			return -ENOMEM;
		}
	}
	return 0;
}
