/*
 * control.h - the local control socket that cgwctl talks to.
 *
 * A Unix stream socket (cfg->control.socket, mode 0660, group
 * cfg->control.group if set) served on the core loop. The protocol is one
 * JSON object per line each way; every request gets exactly one response,
 * in order:
 *
 *   {"cmd":"status"}  {"cmd":"devices"}  {"cmd":"alarms"}  {"cmd":"queue"}
 *       -> {"result":"ok","status"|"devices"|"alarms"|"queue": <core_*_json()>}
 *   {"cmd":"ack","alarm":"DEVICE/RULE[/RAISED_AT]" | "RULE"}
 *   {"cmd":"read","device":D,"point":P}
 *   {"cmd":"write","device":D,"point":P,"value":<any JSON>}
 *       -> the core's command result ({"result":"ok"|"rejected"|"failed",
 *          "detail", "command_id", ...}); these run through
 *          core_command_reply() with source "cgwctl", a fresh command id and
 *          "by": the peer's user name (SO_PEERCRED), so they are audited
 *          like platform commands. A write answers once the device did.
 *   {"cmd":"shelve","device":D}  {"cmd":"unshelve","device":D}
 *       -> {"result":"ok"} or {"result":"rejected","detail":...}
 *   {"cmd":"scan","bus":B[,"units":"1-247","table","address","timeout_ms"]}
 *   {"cmd":"probe","bus":B,"unit":U,"table":T,"address":A[,"count":N]}
 *       -> {"result":"ok","scan"|"probe":{...}} (core_commission()), answered
 *          once the bus's worker did (a scan: up to 15 minutes)
 *   {"cmd":"audit"|"quarantine"|"dead-letters"[,"last":N]}
 *       -> {"result":"ok",CMD:[rows, newest first]} (core_records_json())
 * Anything else -> {"result":"rejected","detail":...}.
 *
 * Bounds: 16 clients, 64 KiB per request line, one request in progress per
 * client (later lines wait), 60 s idle and 30 s for a write's result.
 *
 * Ownership: the control borrows the core and the loop, which must outlive
 * it; it copies what it needs from cfg (which a reload may free).
 * control_close() cancels replies still pending in the core, closes every
 * client and removes the socket file if it is still ours.
 *
 * control_open() logs the precise reason of a failure itself (module
 * "control"); the caller only decides what it means.
 */
#ifndef CGW_CONTROL_H
#define CGW_CONTROL_H

#include "config.h"
#include "core.h"
#include "loop.h"

struct control;

/* 0 and *out, or a negative errno: -EADDRINUSE (another cgwd answers on the
 * socket), -EEXIST (the path is not a socket), -ENAMETOOLONG, -ENOENT
 * (unknown group), or what socket/bind/chmod/chown said. */
int control_open(struct core *c, struct loop *l, const struct cgw_config *cfg,
		 struct control **out);
void control_close(struct control *ctl);

#endif
