#!/usr/bin/python3
"""A dial-in DTU for the tests: connects to the gateway, sends its
registration packet, then answers RTU requests on that connection, with a
heartbeat between them if asked.

  dtu_client.py PORT IDENTITY BASE [HEARTBEAT]
      IDENTITY and HEARTBEAT: text, or hex:A501...
      holding and input register a of any unit read as BASE + a.
Prints "registered" once the packet is sent and "closed" when the gateway
closes the connection; then exits.
"""
import select
import socket
import sys
import time


def crc16(b):
    c = 0xFFFF
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
    return bytes([c & 0xFF, c >> 8])


def packet(s):
    return bytes.fromhex(s[4:]) if s.startswith("hex:") else s.encode()


def main():
    port, ident, base = int(sys.argv[1]), packet(sys.argv[2]), int(sys.argv[3])
    hb = packet(sys.argv[4]) if len(sys.argv) > 4 else b""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(ident)
    print("registered", flush=True)
    buf = b""
    next_hb = time.monotonic() + 0.2
    while True:
        r, _, _ = select.select([s], [], [], 0.05)
        if hb and time.monotonic() >= next_hb:
            s.sendall(hb)
            next_hb = time.monotonic() + 0.2
        if not r:
            continue
        try:
            data = s.recv(512)
        except ConnectionError:
            data = b""
        if not data:
            print("closed", flush=True)
            return
        buf += data
        while len(buf) >= 8:
            req, buf = buf[:8], buf[8:]
            if crc16(req[:6]) != req[6:8]:
                buf = b""
                break
            unit, fn = req[0], req[1]
            addr, count = req[2] << 8 | req[3], req[4] << 8 | req[5]
            if fn in (3, 4):
                body = bytes([unit, fn, 2 * count]) + b"".join(
                    (base + addr + i).to_bytes(2, "big") for i in range(count))
            else:
                body = bytes([unit, fn | 0x80, 1])
            s.sendall(body + crc16(body))


if __name__ == "__main__":
    sys.stdin.close()
    main()
