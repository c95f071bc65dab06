#include "model.h"

#include <string.h>
#include <time.h>

static const char *const lane_names[CGW_LANE_COUNT] = {"alarm", "event", "status", "telemetry"};

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
