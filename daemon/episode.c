#include "episode.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

static int64_t summary_ms(const struct episode *e)
{
	return e->summary_ms > 0 ? e->summary_ms : EPISODE_SUMMARY_MS;
}

static int64_t quiet_ms(const struct episode *e)
{
	return e->quiet_ms > 0 ? e->quiet_ms : EPISODE_QUIET_MS;
}

enum episode_say episode_bad(struct episode *e, int64_t now_ms)
{
	e->last_bad_ms = now_ms;
	if (!e->active) {
		e->active = true;
		e->started_ms = now_ms;
		e->last_line_ms = now_ms;
		e->total = 1;
		e->since_line = 0;
		return EPISODE_STARTED;
	}
	e->total++;
	e->since_line++;
	if (now_ms - e->last_line_ms >= summary_ms(e)) {
		e->summary_count = e->since_line;
		e->summary_window_ms = now_ms - e->last_line_ms;
		e->since_line = 0;
		e->last_line_ms = now_ms;
		return EPISODE_SUMMARY;
	}
	return EPISODE_SILENT;
}

bool episode_good(struct episode *e, int64_t now_ms)
{
	if (!e->active || now_ms - e->last_bad_ms < quiet_ms(e))
		return false;
	e->active = false;
	return true;
}

bool episode_expire(struct episode *e, int64_t now_ms)
{
	return episode_good(e, now_ms);
}

void episode_reset(struct episode *e)
{
	int64_t s = e->summary_ms, q = e->quiet_ms;

	memset(e, 0, sizeof(*e));
	e->summary_ms = s;
	e->quiet_ms = q;
}

int64_t episode_duration_ms(const struct episode *e)
{
	return e->last_bad_ms - e->started_ms;
}

enum episode_say log_episode_bad(struct episode *e, int64_t now_ms, int level, const char *module,
				 const char *fmt, ...)
{
	enum episode_say say = episode_bad(e, now_ms);
	char buf[1024];
	va_list ap;

	if (say == EPISODE_SILENT)
		return say;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (say == EPISODE_STARTED) {
		log_msg(level, module, "%s", buf);
	} else {
		log_msg(level, module, "%s (%llu times in the last %lld s)", buf,
			(unsigned long long)e->summary_count,
			(long long)(e->summary_window_ms / 1000));
	}
	return say;
}

bool log_episode_good(struct episode *e, int64_t now_ms, const char *module, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	if (!episode_good(e, now_ms))
		return false;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	log_msg(LOG_NOTICE, module, "%s (after %llu in %lld s)", buf, (unsigned long long)e->total,
		(long long)(episode_duration_ms(e) / 1000));
	return true;
}
