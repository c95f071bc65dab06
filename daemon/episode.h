/*
 * episode.h - "log once per episode": one trouble that may repeat many times
 * (a device sending bad payloads, a broker refusing us, a full queue) is
 * logged when it starts, summarised with a count at most once per interval
 * while it goes on, and logged once more when it ends.
 *
 * An episode ends only after `quiet_ms` without the trouble AND a good
 * outcome reported after that, so a source that alternates good and bad
 * stays in one episode (200 good and 200 bad interleaved: one start line,
 * not 401 lines).
 *
 * Not thread-safe: one episode belongs to one thread (the core loop, or one
 * bus worker). Times are CLOCK_MONOTONIC ms (cgw_mono_ms()). Zero-initialised
 * is a valid, quiet episode with the default intervals.
 */
#ifndef CGW_EPISODE_H
#define CGW_EPISODE_H

#include <stdbool.h>
#include <stdint.h>

#define EPISODE_SUMMARY_MS 60000 /* default: at most one summary line a minute */
#define EPISODE_QUIET_MS 60000   /* default: this long without trouble ends it */

struct episode {
	int64_t summary_ms, quiet_ms; /* 0 = the defaults above */
	bool active;
	int64_t started_ms;   /* first trouble of this episode */
	int64_t last_bad_ms;  /* latest trouble */
	int64_t last_line_ms; /* last start or summary line */
	uint64_t total;       /* troubles in this episode */
	uint64_t since_line;  /* troubles not yet reported in a line */
	/* valid after EPISODE_SUMMARY: troubles since the previous line, and
	 * the time they span */
	uint64_t summary_count;
	int64_t summary_window_ms;
};

enum episode_say {
	EPISODE_SILENT,  /* counted; say nothing */
	EPISODE_STARTED, /* a new episode: log the trouble in full */
	EPISODE_SUMMARY, /* still going: log a summary (summary_count troubles
			    over summary_window_ms) */
};

/* One more occurrence of the trouble. */
enum episode_say episode_bad(struct episode *e, int64_t now_ms);
/* A good outcome. True once, when it ends the episode: log the end with
 * e->total and episode_duration_ms(). */
bool episode_good(struct episode *e, int64_t now_ms);
/* Ends an episode from a timer when no good outcome can be reported (e.g.
 * a device that went silent): true once, as episode_good(). */
bool episode_expire(struct episode *e, int64_t now_ms);
/* Forget everything (e.g. the source was removed). */
void episode_reset(struct episode *e);

/* From the first to the latest trouble of the (last) episode. */
int64_t episode_duration_ms(const struct episode *e);

/*
 * The usual use, logging for the caller:
 *   log_episode_bad(&dv->bad, now, LOG_WARNING, "mqtt", "[%s] %s: bad payload: %s", ...);
 * logs the line as given when an episode starts, and at most once per
 * interval "<line> (312 times in the last 60 s)"; and
 *   log_episode_good(&dv->bad, now, "mqtt", "[%s] %s: payloads good again", ...);
 * logs "<line> (after 312 in 95 s)" once when the episode ends.
 * Both return what episode_bad()/episode_good() decided.
 */
enum episode_say log_episode_bad(struct episode *e, int64_t now_ms, int level, const char *module,
				 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
bool log_episode_good(struct episode *e, int64_t now_ms, const char *module, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#endif
