#!/usr/bin/env python3
"""Slow HTTP clients: N connections to HOST:PORT that never finish a request.

Half of them send nothing at all; the other half trickle a request header one
byte per second and never end it. A connection the server closes is opened
again after --reconnect-ms, as a real slow client (or slowloris) would, so the
pressure holds. Source addresses are spread over --src addresses (loopback
aliases such as 127.0.0.2 work without configuration on Linux).

With --body, the trickling half sends a whole POST head at once and then
trickles its body instead (a request that never completes after its head).

Prints "ready" once every connection was attempted, then at the end one line
"connects N closed_by_server N". Runs for at most --seconds; bounded in every
way (no thread, one select loop).
"""
import argparse
import errno
import selectors
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--src", default="127.0.0.2", help="comma-separated source addresses")
    ap.add_argument("--reconnect-ms", type=int, default=100)
    ap.add_argument("--body", action="store_true", help="trickle a POST body, not the head")
    a = ap.parse_args()
    srcs = a.src.split(",")
    sel = selectors.DefaultSelector()
    conns = {}  # sock -> [index, trickle, next_byte_time]
    pending = []  # (time, index) to reconnect
    header = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100000
    head = 0  # bytes sent at once
    if a.body:
        pre = (b"POST /api/login HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3000\r\n\r\n")
        header = pre + b"a" * 3000
        head = len(pre)
    stats = {"connects": 0, "closed": 0}

    def open_one(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((srcs[i % len(srcs)], 0))
            s.connect_ex((a.host, a.port))
        except OSError:
            s.close()
            pending.append((time.monotonic() + a.reconnect_ms / 1000, i))
            return
        stats["connects"] += 1
        conns[s] = [i, i % 2 == 1, time.monotonic(), 0]
        sel.register(s, selectors.EVENT_READ)

    for i in range(a.count):
        open_one(i)
    print("ready", flush=True)
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        now = time.monotonic()
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:  # closed by the server (or refused)
                stats["closed"] += 1
                i = conns.pop(s)[0]
                sel.unregister(s)
                s.close()
                pending.append((now + a.reconnect_ms / 1000, i))
        for s, c in list(conns.items()):
            if c[1] and now >= c[2] and c[3] < len(header):
                try:
                    n = head if c[3] == 0 and head else 1
                    c[3] += s.send(header[c[3]:c[3] + n])
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.ENOTCONN):
                        pass
                c[2] = now + 1.0
        due = [p for p in pending if p[0] <= now]
        pending[:] = [p for p in pending if p[0] > now]
        for _, i in due:
            open_one(i)
    print("connects %d closed_by_server %d" % (stats["connects"], stats["closed"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
