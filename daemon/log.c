#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-journal.h>
#include <time.h>
#include <unistd.h>

static bool log_stderr = true;
static int log_level = LOG_INFO;

static const char *const level_names[] = {
	[LOG_EMERG] = "emerg",  [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit", [LOG_ERR] = "error",
	[LOG_WARNING] = "warn", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

void log_setup(bool to_stderr, int level)
{
	/* without a journal to write to (a container, a plain shell), stderr
	 * is the only place a line can still be read */
	if (!to_stderr && access("/run/systemd/journal/socket", W_OK) != 0)
		to_stderr = true;
	log_stderr = to_stderr;
	log_level = level;
}

int log_get_level(void)
{
	return log_level;
}

int log_level_parse(const char *s)
{
	if (strcmp(s, "warning") == 0)
		return LOG_WARNING;
	for (int i = LOG_ERR; i <= LOG_DEBUG; i++)
		if (strcmp(s, level_names[i]) == 0)
			return i;
	return -1;
}

void log_msg(int level, const char *module, const char *fmt, ...)
{
	char buf[2048];
	va_list ap;

	if (level > log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);

	if (log_stderr) {
		struct timespec ts;
		struct tm tm;
		char tbuf[32];

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		strftime(tbuf, sizeof(tbuf), "%H:%M:%S", &tm);
		/* One fprintf per line: stdio locks the stream, so lines from
		 * bus threads never interleave. */
		fprintf(stderr, "%s.%03ld %-6s %s: %s\n", tbuf, ts.tv_nsec / 1000000,
			level_names[level & 7], module, buf);
	} else {
		sd_journal_send("MESSAGE=%s: %s", module, buf, "PRIORITY=%d", level,
				"CGW_MODULE=%s", module, "SYSLOG_IDENTIFIER=cgwd", NULL);
	}
}
