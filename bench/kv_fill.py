#!/usr/bin/env python3
"""Fill a memcached-protocol server with a known data set, or check it.

    kv_fill.py fill  HOST:PORT --bytes N [--value-size S] [--prefix P]
    kv_fill.py check HOST:PORT --bytes N [--value-size S] [--prefix P] [--sample K]
    kv_fill.py hold  HOST:PORT --connections C

`fill` stores N bytes of values as keys P0, P1, ... (S bytes each, content
derived from the key, so `check` can verify any of them without keeping
them). Sets are pipelined in batches with a `mn` after each batch, so every
set is acknowledged before the script moves on and a SERVER_ERROR stops it.
`check` reads a random sample of K keys (default 2000) with multigets and
exits 1 if any is missing or holds the wrong bytes. `hold` opens C
connections, checks each answers `version`, prints "ready", waits for a line
on stdin, then checks every connection again on the same socket (exit 1 if
any was lost): connections held across live upgrades.

Only the standard library: raw sockets, the text protocol.
"""

import argparse
import hashlib
import random
import socket
import sys
import time

BATCH = 200


def value_for(prefix: str, i: int, size: int) -> bytes:
    seed = hashlib.blake2b(f"{prefix}{i}".encode(), digest_size=32).digest()
    return (seed * (size // len(seed) + 1))[:size]


class Conn:
    def __init__(self, addr: str):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def line(self) -> bytes:
        while True:
            nl = self.buf.find(b"\r\n")
            if nl >= 0:
                out = bytes(self.buf[:nl])
                del self.buf[: nl + 2]
                return out
            self._fill()

    def block(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[: n + 2]
        return out


def fill(args) -> int:
    conn = Conn(args.addr)
    count = args.bytes // args.value_size
    started = time.monotonic()
    last = started
    for first in range(0, count, BATCH):
        out = bytearray()
        for i in range(first, min(first + BATCH, count)):
            out += b"set %s%d 0 0 %d noreply\r\n" % (args.prefix.encode(), i, args.value_size)
            out += value_for(args.prefix, i, args.value_size) + b"\r\n"
        out += b"mn\r\n"
        conn.send(bytes(out))
        reply = conn.line()
        if reply != b"MN":
            print(f"kv_fill: batch at key {first}: {reply!r}", file=sys.stderr)
            return 1
        now = time.monotonic()
        if now - last >= 5:
            last = now
            done = min(first + BATCH, count) * args.value_size
            print(f"kv_fill: {done >> 20} MiB of {args.bytes >> 20} MiB", file=sys.stderr)
    took = time.monotonic() - started
    print(f"kv_fill: stored {count} keys ({count * args.value_size >> 20} MiB) in {took:.1f} s", file=sys.stderr)
    return 0


def check(args) -> int:
    conn = Conn(args.addr)
    count = args.bytes // args.value_size
    rng = random.Random(1)
    sample = sorted(rng.sample(range(count), min(args.sample, count)))
    bad = 0
    for first in range(0, len(sample), 100):
        keys = sample[first : first + 100]
        conn.send(b"get " + b" ".join(b"%s%d" % (args.prefix.encode(), i) for i in keys) + b"\r\n")
        got = {}
        while True:
            line = conn.line()
            if line == b"END":
                break
            parts = line.split(b" ")
            if parts[0] != b"VALUE":
                print(f"kv_fill: unexpected reply {line[:80]!r}", file=sys.stderr)
                return 1
            got[parts[1].decode()] = conn.block(int(parts[3]))
        for i in keys:
            key = f"{args.prefix}{i}"
            if got.get(key) != value_for(args.prefix, i, args.value_size):
                bad += 1
                if bad <= 5:
                    print(f"kv_fill: {key} {'missing' if key not in got else 'holds wrong bytes'}", file=sys.stderr)
    print(f"kv_fill: checked {len(sample)} of {count} keys, {bad} bad", file=sys.stderr)
    return 1 if bad else 0


def hold(args) -> int:
    conns = [Conn(args.addr) for _ in range(args.connections)]

    def ask_all() -> int:
        lost = 0
        for c in conns:
            try:
                c.send(b"version\r\n")
                if not c.line().startswith(b"VERSION "):
                    lost += 1
            except (OSError, ConnectionError):
                lost += 1
        return lost

    lost = ask_all()
    print("ready" if lost == 0 else f"lost {lost}", flush=True)
    sys.stdin.readline()
    lost = ask_all()
    print(f"held {len(conns)} connections, {lost} lost", flush=True)
    return 1 if lost else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["fill", "check", "hold"])
    p.add_argument("addr", help="HOST:PORT of the server")
    p.add_argument("--bytes", type=int, default=0, help="bytes of values in the data set (fill, check)")
    p.add_argument("--value-size", type=int, default=1000, help="bytes per value (default 1000)")
    p.add_argument("--prefix", default="fill", help="key prefix (default fill)")
    p.add_argument("--sample", type=int, default=2000, help="keys to read in check mode (default 2000)")
    p.add_argument("--connections", type=int, default=100, help="connections to hold (default 100)")
    args = p.parse_args()
    if args.mode == "hold":
        return hold(args)
    if args.value_size <= 0 or args.bytes < args.value_size:
        p.error("--bytes must hold at least one value of --value-size bytes")
    return fill(args) if args.mode == "fill" else check(args)


if __name__ == "__main__":
    sys.exit(main())
