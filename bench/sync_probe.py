#!/usr/bin/env python3
"""Timing probes for bench/sync.sh: write files into client A's folder and time their arrival,
complete, in client B's folder (a received file appears by rename, so existing means complete).

  sync_probe.py latency A B COUNT SIZE    one file at a time: write on A, poll B every 0.5 ms;
                                          prints one latency in ms per line
  sync_probe.py bulk A B COUNT SIZE       COUNT files written on A as fast as possible; prints the
                                          seconds until all are on B with the right size
  sync_probe.py arrive B NAME SIZE        polls until B/NAME has SIZE bytes; prints the epoch time
                                          (seconds) it was first seen complete

Every wait has a deadline (DEADLINE seconds, default 120); a miss exits 1.
"""

import os
import sys
import time

DEADLINE = float(os.environ.get("DEADLINE", "120"))
POLL = 0.0005


def die(msg):
    print(f"sync_probe.py: {msg}", file=sys.stderr)
    sys.exit(1)


def payload(i, size):
    head = f"file {i} ".encode()
    return (head * (size // len(head) + 1))[:size]


def wait_size(path, size, deadline):
    while True:
        try:
            if os.stat(path).st_size == size:
                return time.time()
        except FileNotFoundError:
            pass
        if time.time() > deadline:
            die(f"{path} did not arrive with {size} bytes in time")
        time.sleep(POLL)


def latency(a, b, count, size):
    os.makedirs(os.path.join(a, "lat"), exist_ok=True)
    for i in range(count):
        name = os.path.join("lat", f"f{i:04d}")
        data = payload(i, size)
        t0 = time.time()
        with open(os.path.join(a, name), "wb") as f:
            f.write(data)
        t1 = wait_size(os.path.join(b, name), size, t0 + DEADLINE)
        print(f"{(t1 - t0) * 1000:.2f}", flush=True)


def bulk(a, b, count, size):
    os.makedirs(os.path.join(a, "bulk"), exist_ok=True)
    names = [os.path.join("bulk", f"f{i:05d}") for i in range(count)]
    t0 = time.time()
    for i, name in enumerate(names):
        with open(os.path.join(a, name), "wb") as f:
            f.write(payload(i, size))
    deadline = t0 + DEADLINE
    for name in names:
        wait_size(os.path.join(b, name), size, deadline)
    print(f"{time.time() - t0:.3f}")


def arrive(b, name, size):
    print(f"{wait_size(os.path.join(b, name), size, time.time() + DEADLINE):.6f}")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    cmd, args = argv[1], argv[2:]
    if cmd in ("latency", "bulk") and len(args) == 4:
        (latency if cmd == "latency" else bulk)(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "arrive" and len(args) == 3:
        arrive(args[0], args[1], int(args[2]))
    else:
        die(f"bad arguments: {' '.join(argv[1:])} (try --help)")


if __name__ == "__main__":
    main(sys.argv)
