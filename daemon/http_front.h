/*
 * http_front.h - the front of cgwd's HTTP servers (/metrics and the web
 * console): a listening socket of its own, connections accepted and bounded
 * here and handed to libmicrohttpd once they speak, and MHD driven by the
 * core loop (its epoll fd watched, its timeouts a loop timer, no thread).
 *
 * Why: MHD alone stops accepting at its connection limit and leaves everyone
 * else in the listen backlog behind clients that connect and never finish a
 * request (300 of them kept /healthz and the console's login page out).
 * Here:
 *   - a new connection waits (pending) until it sends its first byte and
 *     only then goes to MHD, which reads its request in the same loop turn;
 *   - at most pending_per_ip / pending_max pending and per_ip / max with
 *     MHD, per client address and in all: a connection over a limit pushes
 *     out the oldest one still waiting for its request (of its own address
 *     first, else of the address holding the most), so the newest wins and a
 *     slow client holds a slot only until someone needs it;
 *   - a client has request_ms to send a whole request, head and body, from
 *     its connect or from the end of its previous answer; then it is
 *     dropped, however it trickles. A request that is complete is never
 *     dropped by the clock: an answer that takes long (a scan) or never ends
 *     (an event stream) holds its slot until it ends, and is never pushed
 *     out for a newcomer (it is not waiting);
 *   - a body over body_max bytes is dropped; a head over conn_memory is
 *     refused by MHD (431).
 * A connection is dropped with shutdown(): MHD sees the end of the stream,
 * closes it and tells the front.
 *
 * The owner's handler and completion callback are MHD's own
 * (MHD_AccessHandlerCallback, MHD_RequestCompletedCallback), called on the
 * core thread from MHD_run(); *con_cls is the owner's. From outside MHD's
 * callbacks (a core reply, a worker's pipe), after MHD_resume_connection(),
 * the owner calls http_front_kick(): MHD runs on the next loop turn, never
 * from inside itself.
 *
 * Ownership: the front borrows the loop, which must outlive it, and copies
 * what it keeps from conf (the TLS key and certificate are MHD's after
 * open). http_front_close() resumes nothing: an owner that suspends
 * connections resumes them first (MHD refuses to stop with one suspended);
 * it runs MHD once more, stops it (the completion callback runs for every
 * request still open) and closes every socket. http_front_open() logs the
 * precise reason of a failure (module conf->name); the caller decides what
 * it means.
 */
#ifndef CGW_HTTP_FRONT_H
#define CGW_HTTP_FRONT_H

#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "loop.h"

struct http_front;

struct http_front_conf {
	const char *name;   /* module name in logs: "metrics", "console" */
	const char *listen; /* as configured, for logs */
	const struct sockaddr_storage *addr;
	socklen_t addrlen;
	unsigned pending_max, pending_per_ip; /* connected, nothing sent yet */
	unsigned max, per_ip;                 /* with MHD: being answered or kept alive */
	int64_t request_ms;                   /* to send a whole request */
	unsigned conn_timeout_s;              /* MHD's: no progress at all */
	size_t conn_memory;                   /* MHD's per connection: the request head */
	size_t body_max;                      /* bytes of body per request */
	unsigned mhd_flags;                   /* more MHD_USE_* (TLS, suspend/resume) */
	const char *tls_cert, *tls_key;       /* PEM text when mhd_flags has MHD_USE_TLS */
	MHD_AccessHandlerCallback handler;
	MHD_RequestCompletedCallback completed; /* may be NULL */
	void *arg;                              /* both callbacks' cls */
};

/* 0 and *out, or a negative errno: -EADDRINUSE, -EADDRNOTAVAIL, -EACCES, -EIO
 * (MHD did not start), -ENOMEM. */
int http_front_open(struct loop *l, const struct http_front_conf *conf, struct http_front **out);
void http_front_close(struct http_front *f);

/* Runs MHD on the next loop turn (after a resume, from outside MHD). */
void http_front_kick(struct http_front *f);

struct http_front_stats {
	unsigned held;             /* connections held now, pending or with MHD */
	uint64_t accepted;         /* since open */
	uint64_t dropped, refused; /* too slow, over a limit; no slot at all */
};
void http_front_stats(const struct http_front *f, struct http_front_stats *st);

#endif
