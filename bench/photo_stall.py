#!/usr/bin/env python3
"""How long one small photo holds the room's loop when many terminals are in
(issue 30: each terminal's link line was a part of the shared stream that
every other terminal stepped over, so the cost grew with the square of the
terminals).

For each pcr_server.py given (`--server NAME=PATH`, the version before and
this one, say), and each count of terminals: an in-process room on
127.0.0.1, that many terminals joined over real sockets, one page sharing a
2 KB JPEG; measured is the CPU time the loop's thread spends on the
events, timers and end-of-turn calls from the photo's bytes to the last
terminal's link line (thread time, not the wall clock: the machine is
shared).  Standard library only; run from the repository's root:

    python3 bench/photo_stall.py --server before=/tmp/before/pcr_server.py \\
        --server now=pcr_server.py --terminals 2000 4000 --rounds 3
"""

import argparse
import importlib.util
import json
import os
import random
import resource
import socket
import statistics
import struct
import sys
import threading
import time

# A 2 KB picture shaped as a JPEG (a frame header, a scan, the end), as bench/load.py's:
# every version of the room takes it; none decodes it.
JPEG = (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x08\x00\x08\x01\x01\x11\x00"
        b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + bytes(range(1, 255)) * 8 + b"\xff\xd9")


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(f"pcr_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def masked(opcode: int, payload: bytes) -> bytes:
    n, key = len(payload), random.randbytes(4)
    head = bytes((0x80 | opcode, 0x80 | n)) if n < 126 else \
        bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
    keys = (key * (n // 4 + 1))[:n]
    return head + key + (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def read_until(sock: socket.socket, needle: bytes, buf: bytes = b"") -> bytes:
    sock.settimeout(30)
    while needle not in buf:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"closed while waiting for {needle!r}")
        buf += data
    return buf


def measure(pcr, terminals: int) -> float:
    """CPU seconds of the loop's thread for one photo shared among `terminals`."""
    server = pcr.Server(pcr.Settings(host="127.0.0.1", port=0, web_port=0, public_ip_url="",
                                     log_file="", max_per_ip=terminals + 16, line_rate=0))
    spent: list[float] = []
    handle, call = server._on_event, server.loop._call

    def timed(fn):
        def run(*args):
            start = time.thread_time()
            fn(*args)
            spent.append(time.thread_time() - start)
        return run
    server._on_event, server.loop._call = timed(handle), timed(call)
    server.listen()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    socks = []
    try:
        for n in range(terminals):
            sock = socket.create_connection(server.address, 30)
            read_until(sock, b"ALIAS")
            sock.sendall(b"t%d\n" % n)
            socks.append(sock)
        for sock in socks:
            read_until(sock, b"%d people are online...\n" % terminals)
        page = socket.create_connection(server.web_address, 30)
        page.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        page.sendall(masked(0x1, b"page"))
        read_until(page, b'"welcome"')
        for sock in socks:
            read_until(sock, b"%d people are online...\n" % (terminals + 1))
        time.sleep(0.5)
        del spent[:]
        page.sendall(masked(0x1, b"\x00photo %d" % len(JPEG)) + masked(0x2, JPEG))
        for sock in socks:
            read_until(sock, b"page shared a photo: ")
        time.sleep(0.2)   # the loop's turn is over
        return sum(spent)
    finally:
        for sock in socks:
            sock.close()
        server.loop.call_soon_threadsafe(server.stop)
        thread.join(10)
        server.loop.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--terminals", type=int, nargs="+", default=[2000, 4000])
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if 2 * max(a.terminals) + 64 > hard:
        p.error(f"{max(a.terminals)} terminals need {2 * max(a.terminals) + 64} open files (ulimit -n -H)")
    commit = os.popen("git rev-parse --short HEAD").read().strip()   # what was loaded
    servers = {name: load(path, name) for name, path in (s.split("=", 1) for s in a.server)}
    results = {}
    for terminals in a.terminals:
        for rnd in range(a.rounds):
            for name, pcr in servers.items():
                print(f"{name}, {terminals} terminals, round {rnd + 1} ...", file=sys.stderr, flush=True)
                results.setdefault(f"{name}/{terminals}", []).append(round(measure(pcr, terminals), 4))
    print(f"{'terminals':>10} " + " ".join(f"{name:>22}" for name in servers))
    for terminals in a.terminals:
        cells = [results[f"{name}/{terminals}"] for name in servers]
        print(f"{terminals:>10} " + " ".join(
            f"{statistics.median(c):>9.3f} s [{min(c):.3f}-{max(c):.3f}]" for c in cells))
    print(json.dumps({"cpu_s": results, "git": commit}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
