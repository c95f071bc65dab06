/*
 * log.h - levelled logging with a per-module prefix.
 *
 * In the foreground, lines go to stderr as "LEVEL module: message"; otherwise
 * to the systemd journal with PRIORITY and CGW_MODULE fields. Thread-safe
 * (one write per line). Library-like code does not log; the caller that
 * decides what a failure means logs it once, with the instance:
 *   log_warn("modbus", "[rs485-1] unit 3: timeout");
 */
#ifndef CGW_LOG_H
#define CGW_LOG_H

#include <stdbool.h>
#include <syslog.h>

enum log_level {
	LOG_L_ERR = LOG_ERR,
	LOG_L_WARN = LOG_WARNING,
	LOG_L_NOTICE = LOG_NOTICE,
	LOG_L_INFO = LOG_INFO,
	LOG_L_DEBUG = LOG_DEBUG
};

void log_setup(bool to_stderr, int level);
int log_level_parse(const char *s); /* -1 if unknown: error|warn|notice|info|debug */
int log_get_level(void);
void log_msg(int level, const char *module, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_err(m, ...) log_msg(LOG_ERR, m, __VA_ARGS__)
#define log_warn(m, ...) log_msg(LOG_WARNING, m, __VA_ARGS__)
#define log_notice(m, ...) log_msg(LOG_NOTICE, m, __VA_ARGS__)
#define log_info(m, ...) log_msg(LOG_INFO, m, __VA_ARGS__)
#define log_debug(m, ...)                                   \
	do {                                                \
		if (log_get_level() >= LOG_DEBUG)           \
			log_msg(LOG_DEBUG, m, __VA_ARGS__); \
	} while (0)

#endif
