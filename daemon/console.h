/*
 * console.h - the web console (报警 alarm board, 设备 devices, 历史 history,
 * installer tools), served by cgwd itself on its own listener.
 *
 * Like metrics, behind the same front (http_front.h: connections accepted
 * and bounded by cgwd, handed to libmicrohttpd once they speak, MHD driven
 * by the core loop without a thread), so every request is answered on the
 * core thread from the core's own functions (core_alarms_json, core_status_json,
 * core_devices_json, core_command_reply, core_shelve) and nothing is shared
 * with another thread, except the password check: crypt(3) with yescrypt
 * takes tens of ms, so it runs on a short-lived thread per login (at most
 * CONSOLE_LOGIN_WORKERS at once) and the answer comes back through a pipe.
 *
 * Live updates are Server-Sent Events (GET /api/events): a connection whose
 * response is read from a callback, suspended while there is nothing to send
 * and resumed when an alarm changes (core_set_alarm_observer) or every 2 s
 * with the uplinks' state and a heartbeat, so that the page can tell a
 * gateway that stopped answering within 5 s.
 *
 * Security: accounts in a file written by `cgwctl user` (console_users.h),
 * sessions in memory only (a restart signs everyone out), cookies random
 * (256 bits), HttpOnly, SameSite=Strict, Secure with TLS; every POST carries
 * X-CSRF-Token (the session's; for the login the one GET /api/session gave
 * with a cookie: double submit); logins rate-limited per client address;
 * state changes in the command audit (source "console", by the user).
 * Requests are bounded: connections per address and in all (below), a
 * whole request within CONSOLE_REQUEST_MS (slow clients are dropped, an
 * open event stream or a scan waiting for its bus is not), 32 KiB of
 * memory each (request line and headers), 4 KiB of body.
 *
 * Ownership: borrows the core and the loop, which must outlive it.
 */
#ifndef CGW_CONSOLE_H
#define CGW_CONSOLE_H

#include "config.h"
#include "core.h"
#include "loop.h"

/* the front (http_front.h): connected but silent, per address and in all;
 * with MHD (being answered, streams included, or kept alive), per address
 * and in all: room for every stream and as many requests besides */
#define CONSOLE_PENDING_MAX 64
#define CONSOLE_PENDING_PER_ADDRESS 16
#define CONSOLE_MAX_STREAMS 32
#define CONSOLE_MAX_CONNECTIONS (2 * CONSOLE_MAX_STREAMS + 32)
#define CONSOLE_MAX_PER_ADDRESS (CONSOLE_MAX_STREAMS + 8)
#define CONSOLE_REQUEST_MS 2000 /* to send a whole request, head and body */
#define CONSOLE_BODY_MAX 4096
#define CONSOLE_LOGIN_WORKERS 2
#define CONSOLE_LOGIN_FAILS 5          /* failed logins from one address ... */
#define CONSOLE_LOGIN_WINDOW_MS 600000 /* ... within 10 minutes ... */
#define CONSOLE_LOGIN_LOCK_MS 60000    /* ... lock it out for a minute */
#define CONSOLE_SESSION_IDLE_MS (12LL * 3600 * 1000)
#define CONSOLE_HEARTBEAT_MS 2000

struct console;

/* 0 and *out (NULL when cfg->console.enabled is false), or a negative errno
 * (logged, module "console"). */
int console_open(struct core *c, struct loop *l, const struct cgw_config *cfg,
		 struct console **out);
void console_close(struct console *con);
/* True if `con` (NULL: none open) runs with cfg's console settings; a
 * reload re-opens it when not. */
bool console_matches(const struct console *con, const struct cgw_config *cfg);

#endif
