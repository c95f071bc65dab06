/*
 * metrics.h - Prometheus metrics and a health check over HTTP.
 *
 * libmicrohttpd without a thread of its own, behind the HTTP front it shares
 * with the console (http_front.h: its epoll fd watched by the core loop, its
 * timeouts a loop timer), so every request is answered on the core thread, from core_status_json() and core_devices_json(), and
 * nothing here is shared with another thread.
 *
 *   GET /metrics   text format 0.0.4 (cgw_up, cgw_uptime_seconds,
 *                  cgw_modbus_requests_total{bus,device}, ...)
 *   GET /healthz   200 "ok", or 503 and the reason when the core is not
 *                  healthy (store commits failing)
 *   anything else  404 (405 for methods other than GET and HEAD)
 *
 * Bounds (slow clients cannot keep a monitor out; see http_front.h): 16
 * connections per client address and 64 in all that have sent nothing yet,
 * 8 and 32 being answered, 2 s to send a whole request, 32 KiB for its head;
 * a new connection over a limit pushes out the oldest waiting one.
 *
 * Ownership: metrics borrows the core and the loop, which must outlive it;
 * nothing is kept from cfg. metrics_open() logs the precise reason of a
 * failure itself (module "metrics"): the caller decides what it means (a
 * port in use should not stop the daemon).
 */
#ifndef CGW_METRICS_H
#define CGW_METRICS_H

#include <stdbool.h>
#include <sys/socket.h>

#include "config.h"
#include "core.h"
#include "loop.h"

struct metrics;

/* 0 and *out (NULL when cfg->metrics.enabled is false), or a negative
 * errno: -EINVAL (listen is not ADDRESS:PORT), -EADDRINUSE, -EACCES, ... */
int metrics_open(struct core *c, struct loop *l, const struct cgw_config *cfg,
		 struct metrics **out);
void metrics_close(struct metrics *m);

/* "127.0.0.1:9273", "[::1]:9273", "0.0.0.0:9273", "[::]:9273", ":9273"
 * (all IPv4 addresses): numeric addresses only, port 1..65535. 0 or -EINVAL.
 * For the configuration check as well. */
int metrics_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/* 127.0.0.0/8 or ::1: a listener only this machine reaches. */
bool metrics_addr_loopback(const struct sockaddr_storage *ss);

#endif
