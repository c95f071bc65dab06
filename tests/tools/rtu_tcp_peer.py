#!/usr/bin/python3
"""Peers for the modbus-rtu-tcp tests: an independent RTU-over-TCP server
(Debian's python3-pymodbus with its RTU framer) and a fault proxy that sits
between cgw and that server and misbehaves on the link.

  rtu_tcp_peer.py server PORT
      units 1..3; holding 0..9 = 100*unit + address, input 0..9 = 1000 + address,
      coils 0..9 alternate (address 1, 3, ... on), discrete inputs all off.
      Registers from 10 on do not exist: reading them is exception 2.
  rtu_tcp_peer.py proxy PORT UPSTREAM_PORT FAULTS_FILE
      forwards requests; each answer from UPSTREAM is cut out by its length and
      passed through the fault set for its unit in FAULTS_FILE (re-read for
      every answer; lines "UNIT MODE", MODE one of: garbage (junk before the
      answer), badcrc, truncate, wrongunit (answers as unit+100, good CRC),
      twice (the answer, then again), late:MS (delayed)).
"""
import asyncio
import os
import sys


def crc16(b):
    c = 0xFFFF
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
    return bytes([c & 0xFF, c >> 8])


def resp_len(b):
    if len(b) < 2:
        return 0
    fn = b[1]
    if fn & 0x80:
        return 5
    if fn in (1, 2, 3, 4):
        return 5 + b[2] if len(b) >= 3 else 0
    return 8


def req_len(b):
    if len(b) < 2:
        return 0
    if b[1] in (15, 16):
        return 9 + b[6] if len(b) >= 7 else 0
    return 8


def server(port):
    from pymodbus.datastore import (ModbusSequentialDataBlock, ModbusServerContext,
                                    ModbusSlaveContext)
    from pymodbus.server import StartAsyncTcpServer
    from pymodbus.transaction import ModbusRtuFramer

    slaves = {}
    for u in (1, 2, 3):
        # pymodbus's sequential blocks are addressed from 1 for address 0
        slaves[u] = ModbusSlaveContext(
            di=ModbusSequentialDataBlock(1, [0] * 10),
            co=ModbusSequentialDataBlock(1, [i % 2 for i in range(10)]),
            hr=ModbusSequentialDataBlock(1, [100 * u + i for i in range(10)]),
            ir=ModbusSequentialDataBlock(1, [1000 + i for i in range(10)]),
            zero_mode=False)
    ctx = ModbusServerContext(slaves=slaves, single=False)
    asyncio.run(StartAsyncTcpServer(context=ctx, address=("127.0.0.1", port),
                                    framer=ModbusRtuFramer))


def faults(path):
    f = {}
    try:
        with open(path) as fh:
            for line in fh:
                p = line.split()
                if len(p) == 2:
                    f[int(p[0])] = p[1]
    except OSError:
        pass
    return f


async def pipe_client(reader, writer, up_port, path):
    ur, uw = await asyncio.open_connection("127.0.0.1", up_port)
    buf = b""
    try:
        while True:
            data = await reader.read(512)
            if not data:
                break
            buf += data
            while len(buf) >= 2 and req_len(buf) and len(buf) >= req_len(buf):
                n = req_len(buf)
                req, buf = buf[:n], buf[n:]
                uw.write(req)
                await uw.drain()
                ans = b""
                while not resp_len(ans) or len(ans) < resp_len(ans):
                    more = await ur.read(512)
                    if not more:
                        return
                    ans += more
                mode = faults(path).get(req[0], "")
                if mode == "garbage":
                    ans = b"\x00\xff\x07" + bytes([req[0], req[1], 0xF0]) + ans
                elif mode == "badcrc":
                    ans = ans[:-1] + bytes([ans[-1] ^ 0x55])
                elif mode == "truncate":
                    ans = ans[:len(ans) // 2]
                elif mode == "wrongunit":
                    body = bytes([(ans[0] + 100) % 248]) + ans[1:-2]
                    ans = body + crc16(body)
                elif mode == "twice":
                    ans = ans + ans
                elif mode.startswith("late:"):
                    await asyncio.sleep(int(mode[5:]) / 1000)
                writer.write(ans)
                await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        uw.close()


def proxy(port, up_port, path):
    async def main():
        srv = await asyncio.start_server(
            lambda r, w: pipe_client(r, w, up_port, path), "127.0.0.1", port)
        async with srv:
            await srv.serve_forever()
    asyncio.run(main())


if __name__ == "__main__":
    sys.stdin.close()
    if sys.argv[1] == "server":
        server(int(sys.argv[2]))
    elif sys.argv[1] == "proxy":
        proxy(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit("usage: rtu_tcp_peer.py server PORT | proxy PORT UPSTREAM FAULTS")
