#!/usr/bin/env python3
"""bench/load.py: the load tool of PrivateChatRoom-Server (standard library only).

It starts a chat room server (or attaches to a running one), fills the room
with members of three kinds, has some of them talk, checks that everybody
heard every line once and in order, and prints what that cost the server.
`python3 bench/load.py --help` lists every option and the usual workloads.

Map, top to bottom (one thread, one selector; each part uses only those above):
  1. settings    Workload: the parameters of one run; member kinds and roles;
                 Flood: the parameters of the two floods; loopback source addresses
  2. the wire    pure functions: the benchmark's lines, the App's read rules
                 (the count box, strict UTF-8), WebSocket frames, the upgrade
  3. members     Member and its kinds: LineMember (answers `alias\\n` like nc),
                 AppMember (bare alias, recv(1024), strict UTF-8, optional
                 typing pace), WebMember (WebSocket on the web port).  Each
                 owns its socket, its way through the door and its tally
  4. the crowd   Crowd: opens the members and runs the phases on the
                 selector: join -> talk -> drain; sweeps lazy readers
  5. the server  ServerProcess starts a --server-cmd on free ports; Gauge
                 reads a server's CPU and memory from /proc
  6. figures     percentiles, medians over rounds, the table and its ratios
  7. floods      issue 10's two measures, each a run of its own:
                 --flood-lines (members from many addresses send lines at once;
                 the server's RSS per connection) and --tls-flood (probes time
                 their lines while a Replayer process replays ClientHellos)
  8. main        the command line and the plan: rounds x servers x kinds
                 (or x one flood)
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import enum
import errno
import functools
import hashlib
import heapq
import ipaddress
import itertools
import json
import math
import multiprocessing
import operator
import os
import random
import re
import resource
import selectors
import shlex
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Callable

# ---------------------------------------------------------------------------
# 1. Settings
# ---------------------------------------------------------------------------

KINDS = ("line", "app", "web")
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
NEVER = 1 << 62   # a member's expected line count before the talk begins


@dataclasses.dataclass
class Workload:
    """What one run does; the same for every server and round of a comparison."""

    host: str = "127.0.0.1"
    clients: int = 100
    senders: int = 5
    messages: int = 100          # per sender
    rate: float = 0.0            # lines/s over all senders; 0: as the window allows
    window: int = 64             # a sender's lines not yet heard by the monitor
    lockstep: bool = False       # with a rate: all senders speak at the same moments
    line_bytes: int = 0          # length of `alias: text`; 0: no padding
    text: str = "ascii"          # padding: ascii, or utf8 (é日👋)
    probes: int = 20             # members that parse every line for latency
    lazy_ms: float = 100.0       # other members are read in one sweep this often
    verify: str = "order"        # order: every member checks order; count: counts only
    stalled: int = 0             # members that join and never read again
    away: int = 0                # web members whose connection drops before the talk; back after it
    tls: bool = False
    batch: int = 100             # members opened at once
    in_flight: int = 0           # members at the door (not yet prompted) at most; 0: no cap
    app_type_ms: float = 0.0     # the App types each character this long (v1.1.2: 70)
    app_window_ms: float = 40.0  # the App drops reads until its window is built
    timeout: float = 60.0        # per phase
    rcvbuf: int = 0              # members' receive buffer in bytes; 0: the kernel's


@dataclasses.dataclass
class Flood:
    """The two floods of issue 10: many addresses sending lines at once
    (--flood-lines), and ClientHellos replayed from one address while probes
    time their lines (--tls-flood)."""

    addresses: int = 63          # --flood-lines: from 127.0.0.2, 127.0.0.3, ...
    per_address: int = 16        # connections from each address
    size: int = 65536            # bytes of chat lines each sends at once
    settle: float = 2.0          # seconds from "sent" to "settled"
    probes: int = 5              # --tls-flood: members timing their own lines
    probe_ms: float = 100.0      # each probe says a line this often
    quiet_s: float = 5.0         # seconds timed without the flood
    flood_s: float = 10.0        # seconds timed during the flood
    flooder: str = "127.0.0.9"   # the flood's source address
    parallel: int = 4            # ClientHellos in flight at once
    probe_from: str = ""         # all probes from this address; "": one address each
    answer_wait: float = 0.2     # seconds a replayed hello waits for an answer
    members: int = 1000          # --photo-flood: members in the room (probes among them)
    pages: int = 50              # pages fetching the photo, each once every photo_every s
    photo_bytes: int = 1500000   # the photo's size
    photo_every: float = 1.0
    uploaders: int = 50          # then: pages sharing photos, all at once
    upload_every: float = 5.0    # each again this long after its last was answered (the room's rate)


def source_address(n: int, skip: str = "") -> str:
    """The n-th loopback source address: 127.0.0.2, 127.0.0.3, ... (Linux
    routes all of 127/8 to lo), passing over `skip`."""
    address = ipaddress.IPv4Address("127.0.0.2") + n
    if skip and address >= ipaddress.IPv4Address(skip):
        address += 1
    return str(address)

def spread_kinds(mix: dict[str, int], n: int) -> list[str]:
    """n member kinds in the proportions of `mix`, evenly interleaved."""
    total = sum(mix.values())
    given = dict.fromkeys(mix, 0)
    kinds = []
    for i in range(n):
        kind = max(mix, key=lambda k: (i + 1) * mix[k] / total - given[k])
        given[kind] += 1
        kinds.append(kind)
    return kinds


@dataclasses.dataclass
class Roles:
    """Who does what: the first members stall, the last ones talk, probes
    (at least one of each kind) parse every line, the monitor paces senders."""

    stalled: set
    senders: set
    probes: set
    monitor: int
    away: set


def plan_roles(kinds: list[str], w: Workload) -> Roles:
    n = len(kinds)
    stalled = set(range(w.stalled))
    senders = set(range(n - w.senders, n))
    listeners = [i for i in range(n) if i not in stalled and i not in senders]
    listeners = listeners or sorted(senders)   # all talk (--tls-flood): senders are probes
    probes: list[int] = []
    for kind in KINDS:   # one of each kind first, then in order
        first = next((i for i in listeners if kinds[i] == kind), None)
        if first is not None and len(probes) < max(1, w.probes):
            probes.append(first)
    probes += [i for i in listeners if i not in probes][:max(0, w.probes - len(probes))]
    # the monitor must read as soon as lines arrive: not a typing App
    eager = [i for i in probes if kinds[i] != "app" or not w.app_type_ms]
    monitor = (eager or probes)[0]
    plain_web = [i for i in listeners if kinds[i] == "web" and i not in probes and i != monitor]
    return Roles(stalled, senders, set(probes), monitor, set(plain_web[len(plain_web) - w.away:]
                                                            if w.away else ()))


# ---------------------------------------------------------------------------
# 2. The wire: pure functions
# ---------------------------------------------------------------------------

ALIAS_PROMPT = b"ALIAS"
SAYING = re.compile(rb"#(c\d+) (\d+) (\d+)")      # marker, sequence, time sent
SAYING_SEQ = re.compile(rb"#(c\d+) (\d+) ")
MARKER = b"#c"
UTF8_FILLER = "é日👋"
COUNT_LINE = re.compile(r"(?:1 person is|\d+ people are) online\.\.\.\n")
COUNT_TEXT = re.compile(r"(?:person is|people are) online\.\.\.")
JOIN_ENDS = (b" online...", b" others joined the chat...", b" other joined the chat...")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
RESET_ON_CLOSE = struct.pack("ii", 1, 0)   # struct linger, on with no wait: close sends RST
BY_SENDER, SEQ_OF = operator.itemgetter(0), operator.itemgetter(1)


@functools.lru_cache(maxsize=64)
def filler(size: int, text: str) -> str:
    """`size` bytes of padding: x's, or é日👋 repeated (x's to finish)."""
    if text == "ascii":
        return "x" * size
    chars, used = [], 0
    for ch in itertools.cycle(UTF8_FILLER):
        width = len(ch.encode())
        if used + width > size:
            break
        chars.append(ch)
        used += width
    return "".join(chars) + "x" * (size - used)


def saying(alias: str, seq: int, stamp: int, line_bytes: int, text: str) -> str:
    """What `alias` says: `#alias SEQ STAMP`, padded so that the relayed
    line `alias: ...` is `line_bytes` bytes long (without its newline)."""
    core = f"#{alias} {seq} {stamp}"
    room = line_bytes - len(alias) - 2 - len(core) - 1
    return core if room <= 0 else f"{core} {filler(room, text)}"


def is_welcome_line(line: bytes, alias: bytes) -> bool:
    """A line telling a newcomer it is in: its own join, a count, a folded join."""
    return line == alias + b" joined the chat..." or line.endswith(JOIN_ENDS)


def is_box_read(text: str) -> bool:
    """The App's own test: this read replaces the online box, whole."""
    return text[:1].isdigit() or text.endswith(" online...")


def mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 masking (XOR with the 4-byte key, repeated)."""
    n = len(payload)
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked frame as a browser sends it."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = random.randbytes(4)
    return head + key + mask(payload, key)


def server_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The whole frames at the start of buf as (first byte, payload), and
    how many bytes they took."""
    frames, pos, n = [], 0, len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        size, head = b1 & 0x7F, 2
        if size == 126:
            size, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
        elif size == 127:
            size, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
        key_at = pos + head
        if b1 & 0x80:   # servers must not mask; read it anyway
            head += 4
        if n - pos < head + size or n - pos < head:
            break
        payload = buf[pos + head:pos + head + size]
        if b1 & 0x80:
            payload = mask(payload, buf[key_at:key_at + 4])
        frames.append((b0, payload))
        pos += head + size
    return frames, pos


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def upgrade_request(host: str, port: int, key: str, tls: bool) -> bytes:
    """The browser's GET /ws, with an Origin matching its Host."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    origin = f"{'https' if tls else 'http'}://{where}"
    return (f"GET /ws HTTP/1.1\r\nHost: {where}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n").encode()


def upgrade_problem(head: bytes, key: str) -> str | None:
    """What is wrong with the server's answer to the upgrade, or None."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")
    if len(status) < 2 or status[1] != "101":
        return f"upgrade answered {lines[0][:40]!r}"
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if fields.get("sec-websocket-accept") != ws_accept(key):
        return "wrong Sec-WebSocket-Accept"
    return None


# ---------------------------------------------------------------------------
# 3. Members
# ---------------------------------------------------------------------------

class Stage(enum.Enum):
    CONNECTING = "connecting"    # TCP handshake under way
    SECURING = "securing"        # TLS handshake under way
    AT_DOOR = "at the door"      # waiting for the prompt (ALIAS, or upgrade + hello)
    NAMED = "named"              # alias given, waiting to be let in
    IN = "in the room"
    AWAY = "away"                # its connection dropped; the server holds its seat
    GONE = "gone"


DOOR = (Stage.CONNECTING, Stage.SECURING, Stage.AT_DOOR)


class Member:
    """One connection of the crowd and its tally of what it heard.

    The tally: `last` maps each sender to the last sequence number heard;
    numbers skipped are kept in `holes` until they come (late: an order
    error) or the run ends (lost).  A number heard twice is a duplicate.
    """

    kind = "line"
    recv_size = 262144
    __slots__ = ("crowd", "index", "alias", "alias_b", "sock", "stage", "events",
                 "reading", "tls_wants", "out", "inbuf", "probe", "stalled", "lazy",
                 "expected", "got", "last", "holes", "finished", "talks", "next_seq", "due")

    def __init__(self, crowd: Crowd, index: int, probe: bool, stalled: bool):
        self.crowd = crowd
        self.index = index
        self.alias = f"c{index}"
        self.alias_b = self.alias.encode()
        self.sock = None
        self.stage = Stage.CONNECTING
        self.events = 0              # what the selector watches now
        self.reading = True          # wants to read (not lazy, stalled or typing)
        self.tls_wants = WRITE
        self.out = bytearray()
        self.inbuf = b""
        self.probe, self.stalled, self.lazy = probe, stalled, False
        self.expected, self.got = NEVER, 0
        self.last: dict[bytes, int] = {}
        self.holes: dict[bytes, set] = {}
        self.finished = False
        self.talks, self.next_seq, self.due = False, 0, 0.0   # as a sender

    # -- the connection -------------------------------------------------
    def open(self, address: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.stalled:   # a small buffer: the server meets back-pressure soon
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        elif self.crowd.work.rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.crowd.work.rcvbuf)
        if self.crowd.sources:   # bound before connect: the server sees this address
            self.sock.bind((self.crowd.sources[self.index], 0))
        err = self.sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            self.crowd.counts["connect_failed"] += 1
            self.leave(by_server=False)
            return
        self.crowd.watch(self)

    def on_event(self, mask_: int) -> None:
        if self.stage is Stage.CONNECTING:
            self._connected()
        elif self.stage is Stage.SECURING:
            self._secure()
        else:
            if mask_ & WRITE:
                self.flush()
            if mask_ & READ and self.stage is not Stage.GONE:
                self.read()

    def _connected(self) -> None:
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.crowd.counts["connect_failed"] += 1
            self.leave(by_server=False)
        elif self.crowd.tls:
            self.crowd.unwatch(self)   # the TLS socket replaces this one
            self.sock = self.crowd.tls.wrap_socket(self.sock, do_handshake_on_connect=False)
            self.stage = Stage.SECURING
            self._secure()
        else:
            self.at_door()

    def _secure(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.tls_wants = READ
        except ssl.SSLWantWriteError:
            self.tls_wants = WRITE
        except OSError:
            self.crowd.counts["connect_failed"] += 1
            self.leave(by_server=False)
            return
        else:
            self.at_door()
            return
        self.crowd.watch(self)

    def at_door(self) -> None:
        """Connected (and secured): wait for the prompt."""
        self.stage = Stage.AT_DOOR
        self.crowd.watch(self)

    def named(self) -> None:
        self.stage = Stage.NAMED
        self.crowd.left_door()

    def let_in(self) -> None:
        self.stage = Stage.IN
        self.crowd.came_in(self)
        if self.stalled:   # from now on it never reads
            self.reading = False
            self.crowd.watch(self)

    def leave(self, by_server: bool = True) -> None:
        """The connection ended (the server closed it, or it never opened)."""
        if self.stage is Stage.GONE:
            return
        if self.stage in DOOR:
            self.crowd.left_door()
        if self.stage is not Stage.IN:
            self.crowd.never_in += 1
        self.stage = Stage.GONE
        self.crowd.unwatch(self)
        if self.sock is not None:
            self.sock.close()
        if by_server:
            self.crowd.counts["stalled_closed" if self.stalled else "closed_by_server"] += 1
        self.finish()

    # -- reading and writing --------------------------------------------
    def read(self) -> None:
        """Read what is waiting; each recv is handed to take()."""
        size = self.recv_size
        while True:
            try:
                data = self.sock.recv(size)
            except WOULD_BLOCK:
                return
            except OSError:
                self.leave()
                return
            if not data:
                self.leave()
                return
            self.take(data)
            if self.stage is Stage.GONE or not (self.reading or self.lazy):
                return   # gone, or an App typing what it read
            if len(data) < size and not (self.crowd.tls and self.sock.pending()):
                return

    def send(self, data: bytes) -> None:
        self.out += data
        self.flush()

    def flush(self) -> None:
        if self.out:
            try:
                del self.out[:self.sock.send(self.out)]
            except WOULD_BLOCK:
                pass
            except OSError:
                self.leave()
                return
        self.crowd.watch(self)

    def take(self, data: bytes) -> None:
        """What one recv brought (overridden per kind)."""
        raise NotImplementedError

    # -- the tally ------------------------------------------------------
    def hear(self, chunk: bytes) -> None:
        """Tally the sayings in `chunk` (whole lines or whole frames only).

        Sorted by sender (a stable sort keeps each sender's arrival order),
        each sender's numbers are compared at once with the run expected
        next; only a run that differs is walked number by number.
        """
        crowd = self.crowd
        if self.probe:
            found = SAYING.findall(chunk)
            now = time.monotonic_ns() - crowd.epoch
            crowd.latencies += [now - int(stamp) for _, _, stamp in found]
        elif crowd.verify_order:
            found = SAYING_SEQ.findall(chunk)
        else:
            self.got += chunk.count(MARKER)
            self._check_finished()
            return
        found.sort(key=BY_SENDER)
        last, tokens = self.last, crowd.seq_tokens
        for sender, run in itertools.groupby(found, BY_SENDER):
            seqs = list(map(SEQ_OF, run))
            first = last.get(sender, -1) + 1
            if seqs == tokens[first:first + len(seqs)]:
                last[sender] = first + len(seqs) - 1
                self.got += len(seqs)
            else:
                self._walk(sender, seqs)
        self._check_finished()

    def _walk(self, sender: bytes, seqs: list[bytes]) -> None:
        """The slow path: one sender's numbers that are not simply the next ones."""
        last = self.last
        for seq in map(int, seqs):
            prev = last.get(sender, -1)
            if seq == prev + 1:
                last[sender] = seq
                self.got += 1
            else:
                self.got += self._out_of_line(sender, seq, prev)

    def _out_of_line(self, sender: bytes, seq: int, prev: int) -> int:
        """A number that is not the next one: 1 if it is new, 0 if heard before."""
        if seq > prev:
            self.holes.setdefault(sender, set()).update(range(prev + 1, seq))
            self.last[sender] = seq
            return 1
        hole = self.holes.get(sender)
        if hole and seq in hole:
            hole.discard(seq)
            self.crowd.counts["order_errors"] += 1
            return 1
        self.crowd.counts["duplicates"] += 1
        return 0

    def _check_finished(self) -> None:
        if self.got >= self.expected:
            self.finish()

    def finish(self) -> None:
        if not self.finished and self.expected != NEVER:
            self.finished = True
            self.crowd.finished += 1

    # -- speaking -------------------------------------------------------
    def say(self, count: int) -> None:
        """Send the next `count` numbered lines, stamped now."""
        w = self.crowd.work
        stamp = time.monotonic_ns() - self.crowd.epoch
        first = self.next_seq
        self.next_seq += count
        self.send(self.lines([saying(self.alias, seq, stamp, w.line_bytes, w.text)
                              for seq in range(first, first + count)]))

    def lines(self, texts: list[str]) -> bytes:
        """The bytes that say `texts`, as this kind of client sends them."""
        return "".join(f"{self.alias}: {t}\n" for t in texts).encode()


class LineMember(Member):
    """A terminal client (nc): answers ALIAS with `alias\\n`, reads whole lines."""

    kind = "line"
    __slots__ = ()
    alias_end = b"\n"

    def take(self, data: bytes) -> None:
        if self.stage is Stage.IN:
            buf = self.inbuf + data if self.inbuf else data
            cut = buf.rfind(b"\n") + 1
            self.inbuf = buf[cut:]
            if cut and self.expected != NEVER:   # before the talk there is nothing to hear
                self.hear(buf[:cut])
            return
        self.inbuf += data
        if self.stage is Stage.AT_DOOR:
            self._answer_prompt()
        if self.stage is Stage.NAMED:
            self._look_for_welcome()

    def _answer_prompt(self) -> None:
        if len(self.inbuf) < len(ALIAS_PROMPT):
            if not ALIAS_PROMPT.startswith(self.inbuf):
                self._bad_prompt()
            return
        if not self.inbuf.startswith(ALIAS_PROMPT):
            self._bad_prompt()
            return
        self.inbuf = self.inbuf[len(ALIAS_PROMPT):]
        self.send(self.alias_b + self.alias_end)
        self.named()

    def _bad_prompt(self) -> None:
        self.crowd.counts["bad_prompts"] += 1
        self.leave(by_server=False)

    def _look_for_welcome(self) -> None:
        start = 0
        while (end := self.inbuf.find(b"\n", start)) >= 0:
            line = self.inbuf[start:end].rstrip(b"\r")
            start = end + 1
            if is_welcome_line(line, self.alias_b):
                rest, self.inbuf = self.inbuf[start:], b""
                self.let_in()
                if rest:
                    self.take(rest)
                return
        self.inbuf = self.inbuf[start:]


class AppMember(LineMember):
    """PrivateChatRoom-App v1.1.2: the bare alias, recv(1024), each read
    decoded strictly; a read starting with a digit or ending with
    " online..." goes to the online box whole.  With --app-type-ms it stops
    reading while it types what it read, as the App does."""

    kind = "app"
    recv_size = 1024
    alias_end = b""
    __slots__ = ("window_at", "prompted", "deaf")

    def __init__(self, crowd: Crowd, index: int, probe: bool, stalled: bool):
        super().__init__(crowd, index, probe, stalled)
        self.window_at = float("inf")   # its window is built (reads before are dropped)
        self.prompted = False
        self.deaf = False   # a read did not decode: the real App would hear no more

    def named(self) -> None:
        super().named()
        self.window_at = time.monotonic() + self.crowd.work.app_window_ms / 1000

    def take(self, data: bytes) -> None:
        self._judge_read(data)
        super().take(data)

    def _judge_read(self, data: bytes) -> None:
        """Count what would go wrong in the App for this one read."""
        counts = self.crowd.counts
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:   # the App's reader thread would die here
            self.crowd.fault("decode_errors", data.decode("utf-8", "backslashreplace"))
            if not self.deaf:
                self.deaf = True
                counts["deaf_apps"] += 1
            text = data.decode("utf-8", "replace")
        if not self.prompted:
            self.prompted = True
            if text != "ALIAS":
                counts["prompt_not_alone"] += 1
            return
        if time.monotonic() < self.window_at:
            counts["app_early_reads"] += 1
            return
        if is_box_read(text):
            if COUNT_LINE.fullmatch(text):
                counts["count_reads"] += 1
            else:
                self.crowd.fault("box_reads_not_count", text)
            return
        if COUNT_TEXT.search(text):
            self.crowd.fault("count_in_chat", text)
        if self.crowd.work.app_type_ms:
            self._type(len(text))

    def _type(self, characters: int) -> None:
        """Stop reading while the App types `characters` into its chat area."""
        self.reading = False
        self.crowd.watch(self)
        self.crowd.call_at(time.monotonic() + characters * self.crowd.work.app_type_ms / 1000,
                           self._typed)

    def _typed(self) -> None:
        if self.stage is not Stage.GONE:
            self.reading = True
            self.crowd.watch(self)


class WebMember(Member):
    """A browser on the web port: HTTP upgrade, masked frames, JSON messages;
    answers "hello" with its alias and is in at "welcome".  With --away it
    drops its connection (a reset, no close frame) and comes back: answers
    "hello" with its token and the mark of the last message it read."""

    kind = "web"
    __slots__ = ("key", "upgraded", "partial", "name", "token", "seen", "last_text")

    def __init__(self, crowd: Crowd, index: int, probe: bool, stalled: bool):
        super().__init__(crowd, index, probe, stalled)
        self.key = base64.b64encode(random.randbytes(16)).decode()
        self.upgraded = False
        self.partial: tuple[int, list] | None = None   # a fragmented message so far
        self.name = ""
        self.token = ""          # from "welcome": brings it back to its seat
        self.seen = 0            # the mark of the last message read
        self.last_text = b""     # the last message read (its mark is read when it drops)

    def at_door(self) -> None:
        super().at_door()
        host, port = self.crowd.web_address
        self.send(upgrade_request(host, port, self.key, bool(self.crowd.tls)))

    def drop_out(self) -> None:
        """The connection dies under the page: a reset, no close frame."""
        try:
            self.seen = json.loads(self.last_text)["at"]
        except (ValueError, KeyError, TypeError):
            pass
        self.crowd.unwatch(self)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        self.sock.close()
        self.stage, self.upgraded, self.inbuf, self.partial = Stage.AWAY, False, b"", None
        self.reading, self.lazy = True, False   # at the door again, it reads on events
        self.crowd.inside -= 1

    def take(self, data: bytes) -> None:
        buf = self.inbuf + data if self.inbuf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.inbuf = buf
                return
            problem = upgrade_problem(buf[:end], self.key)
            if problem:
                self.crowd.note_web_problem(problem)
                self.leave(by_server=False)
                return
            self.upgraded, buf = True, buf[end + 4:]
        frames, used = server_frames(buf)
        self.inbuf = buf[used:]
        texts = self._messages(frames)
        if self.stage is Stage.GONE:
            return
        if self.stage is not Stage.IN:
            texts = self._at_door(texts)
        if texts:
            self.last_text = texts[-1]
            if self.probe:
                self._check_json(texts)
            if self.expected != NEVER:   # before the talk there is nothing to hear
                self.hear(b"\n".join(texts))

    def _messages(self, frames: list[tuple[int, bytes]]) -> list[bytes]:
        """The text messages among `frames`; control frames answered here."""
        texts = []
        for b0, payload in frames:
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if opcode == PING:
                self.send(client_frame(PONG, payload))
            elif opcode == CLOSE:
                self.crowd.counts["web_close_codes"].append(int.from_bytes(payload[:2], "big"))
                self.send(client_frame(CLOSE, payload[:2]))
                self.leave()
                return []
            elif opcode == PONG:
                continue
            elif opcode == 0 and self.partial:   # a continuation
                self.partial[1].append(payload)
                if fin:
                    first, parts = self.partial
                    self.partial = None
                    if first == TEXT:
                        texts.append(b"".join(parts))
            elif not fin:
                self.partial = (opcode, [payload])
            elif opcode == TEXT:
                texts.append(payload)
            else:
                self.crowd.counts["web_bad_frames"] += 1
        return texts

    def _at_door(self, texts: list[bytes]) -> list[bytes]:
        """Handle hello / welcome / refused; return the messages after "welcome"."""
        for i, raw in enumerate(texts):
            try:
                message = json.loads(raw)
                kind = message["type"]
            except (ValueError, KeyError, TypeError):
                self.crowd.counts["web_bad_frames"] += 1
                continue
            if kind == "hello" and self.stage is Stage.AT_DOOR:
                if self.token:   # back for its seat
                    self.send(client_frame(BINARY, json.dumps(
                        {"resume": self.token, "seen": self.seen}).encode()))
                else:
                    self.send(client_frame(TEXT, self.alias_b))
                self.named()
            elif kind == "welcome":
                self.name = str(message.get("name", ""))
                self.token = str(message.get("token", ""))
                self.crowd.counts["web_back"] += bool(message.get("back"))
                self.let_in()
                return texts[i + 1:]
            elif kind == "lost":
                self.crowd.counts["web_seats_lost"] += 1
                self.leave(by_server=False)
                return []
            elif kind == "refused":
                self.crowd.counts["web_refused"] += 1
                self.leave(by_server=False)
                return []
        return []

    def _check_json(self, texts: list[bytes]) -> None:
        for raw in texts:
            try:
                if not isinstance(json.loads(raw).get("type"), str):
                    raise ValueError
            except (ValueError, AttributeError):
                self.crowd.counts["web_bad_frames"] += 1

    def lines(self, texts: list[str]) -> bytes:
        return b"".join(client_frame(TEXT, t.encode()) for t in texts)


MEMBER_KINDS = {"line": LineMember, "app": AppMember, "web": WebMember}

# ---------------------------------------------------------------------------
# 4. The crowd
# ---------------------------------------------------------------------------


def tool_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Crowd:
    """All members of one run, the selector they share, and the counts.

    Phases: join() opens everyone in batches and waits until each is in;
    talk() has the senders speak and waits until everyone heard everything.
    """

    def __init__(self, work: Workload, kinds: list[str], address: tuple[str, int],
                 web_address: tuple[str, int] | None, gauge: Gauge,
                 sources: list[str] | None = None):
        self.work = work
        self.sources = sources   # each member's source address, or None: the kernel's
        self.address, self.web_address = address, web_address
        self.gauge = gauge
        self.sel = selectors.DefaultSelector()
        self.tls = None
        if work.tls:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.tls.check_hostname = False
            self.tls.verify_mode = ssl.CERT_NONE
        self.verify_order = work.verify == "order"
        self.seq_tokens = [str(i).encode() for i in range(work.messages)]   # what in order looks like
        self.epoch = time.monotonic_ns()
        self.timers: list = []
        self.timer_seq = itertools.count()
        self.latencies: list[int] = []
        self.counts = {k: 0 for k in (
            "connect_failed", "bad_prompts", "closed_by_server", "stalled_closed",
            "duplicates", "order_errors", "decode_errors", "deaf_apps", "prompt_not_alone",
            "app_early_reads", "count_reads", "box_reads_not_count", "count_in_chat",
            "web_refused", "web_bad_frames", "web_back", "web_seats_lost")}
        self.counts["web_close_codes"] = []
        self.web_problems: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}   # App fault -> the first reads showing it
        self.at_the_door = 0     # opened, not yet prompted
        self.inside = 0
        self.never_in = 0        # gone before they were in
        self.last_in = 0.0
        self.finished = 0        # members that heard everything or left, in talk()
        roles = plan_roles(kinds, work)
        self.members = [MEMBER_KINDS[k](self, i, i in roles.probes, i in roles.stalled)
                        for i, k in enumerate(kinds)]
        self.away = [self.members[i] for i in sorted(roles.away)]
        self.senders = [self.members[i] for i in sorted(roles.senders)]
        for m in self.senders:
            m.talks = True
        self.monitor = self.members[roles.monitor]
        self.lazy: list[Member] = []   # read by sweeps, not on every event
        self.sweep_at = 0.0

    # -- the loop ---------------------------------------------------------
    def watch(self, m: Member) -> None:
        """Make the selector watch what m waits for now."""
        if m.stage is Stage.GONE:
            return
        if m.stage is Stage.CONNECTING:
            want = WRITE
        elif m.stage is Stage.SECURING:
            want = m.tls_wants
        else:
            want = (READ if m.reading else 0) | (WRITE if m.out else 0)
        if want == m.events:
            return
        if not m.events:
            self.sel.register(m.sock, want, m)
        elif not want:
            self.sel.unregister(m.sock)
        else:
            self.sel.modify(m.sock, want, m)
        m.events = want

    def unwatch(self, m: Member) -> None:
        if m.events:
            self.sel.unregister(m.sock)
            m.events = 0

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (when, next(self.timer_seq), fn))

    def turn(self, timeout: float) -> None:
        """One select (at most `timeout` seconds), the timers due, and the
        sweep of the lazy readers when it is due."""
        now = time.monotonic()
        if self.timers:
            timeout = min(timeout, self.timers[0][0] - now)
        if self.lazy:
            timeout = min(timeout, self.sweep_at - now)
        for key, events in self.sel.select(max(0.0, timeout)):
            key.data.on_event(events)
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            heapq.heappop(self.timers)[2]()
        if self.lazy and now >= self.sweep_at:
            self._sweep()

    def _sweep(self) -> None:
        """Read every lazy member once; forget those that need no more reading."""
        for m in self.lazy:
            if m.stage is Stage.IN and not m.finished:
                m.read()
        self.lazy = [m for m in self.lazy if m.stage is Stage.IN and not m.finished]
        period = self.work.lazy_ms / 1000
        if self.monitor.finished:   # the end is near: see it soon
            period = min(period, 0.01)
        self.sweep_at = time.monotonic() + period

    def left_door(self) -> None:
        self.at_the_door -= 1

    def came_in(self, m: Member) -> None:
        """m is in: from now on a plain listener is read by the sweep only."""
        self.inside += 1
        self.last_in = time.monotonic()
        if self.work.lazy_ms > 0 and m.kind != "app" and not (m.probe or m.stalled or m.talks):
            m.lazy, m.reading = True, False
            self.watch(m)
            if not self.lazy:
                self.sweep_at = self.last_in + self.work.lazy_ms / 1000
            self.lazy.append(m)

    def fault(self, name: str, read: str) -> None:
        """Count an App fault; keep the first few reads that showed it."""
        self.counts[name] += 1
        examples = self.examples.setdefault(name, [])
        if len(examples) < 3:
            examples.append(read if len(read) <= 160 else read[:70] + " ... " + read[-70:])

    def note_web_problem(self, problem: str) -> None:
        self.web_problems[problem] = self.web_problems.get(problem, 0) + 1

    # -- phase 1: join ----------------------------------------------------
    def join(self) -> dict:
        """Open every member (a batch at a time, never waiting while the
        door has room) and wait until each is in, or the timeout."""
        w = self.work
        start, cpu0 = time.monotonic(), self.gauge.cpu_s()
        deadline = start + w.timeout
        opened = 0
        while time.monotonic() < deadline:
            if opened < len(self.members) and (not w.in_flight or self.at_the_door < w.in_flight):
                for m in self.members[opened:opened + w.batch]:
                    self._open(m)
                opened += w.batch
                self.turn(0)
            elif self.inside + self.never_in >= len(self.members):
                break
            else:
                self.turn(deadline - time.monotonic())
        ok = self.inside == len(self.members)
        figures = {"connect_ok": ok, "joined": self.inside,
                   "connect_s": round((self.last_in if ok else time.monotonic()) - start, 3)}
        cpu1 = self.gauge.cpu_s()
        if cpu0 is not None and cpu1 is not None:
            figures["server_cpu_s_join"] = round(cpu1 - cpu0, 3)
        self._wait_for_app_windows(deadline)
        return figures

    def _wait_for_app_windows(self, deadline: float) -> None:
        """The talk starts once every App has built its window (its person
        could not see a line before)."""
        built = min(deadline, max((m.window_at for m in self.members if m.kind == "app"
                                   and m.stage is Stage.IN), default=0.0))
        while (now := time.monotonic()) < built:
            self.turn(built - now)

    def _open(self, m: Member) -> None:
        self.at_the_door += 1
        m.open(self.web_address if m.kind == "web" else self.address)

    # -- phase 2 and 3: talk, then drain ------------------------------------
    def talk(self) -> dict:
        """The senders say their lines; wait until every member heard them all."""
        w = self.work
        listeners = [m for m in self.members if not m.stalled and m.stage is Stage.IN]
        for m in listeners:
            m.expected = w.senders * w.messages
        interval = len(self.senders) / w.rate if w.rate else 0.0
        t0, cpu0, mine0 = time.monotonic(), self.gauge.cpu_s(), tool_cpu()
        for k, m in enumerate(self.senders):   # spread evenly over the interval
            m.due = t0 if w.lockstep else t0 + interval * k / len(self.senders)
        deadline = t0 + w.messages * interval + w.timeout
        said_at = None
        while self.finished < len(listeners) or said_at is None:
            now = time.monotonic()
            if said_at is None and self._prompt_senders(now, interval):
                said_at = now
                deadline = now + w.timeout
            if now >= deadline:
                break
            wake = deadline
            if interval and said_at is None:
                wake = min(wake, min(m.due for m in self.senders if m.stage is Stage.IN))
            self.turn(wake - now)
        elapsed = time.monotonic() - t0
        cpu1, mine1 = self.gauge.cpu_s(), tool_cpu()
        return self._talk_figures(listeners, elapsed, cpu0, cpu1, mine1 - mine0,
                                  self.finished >= len(listeners))

    def _prompt_senders(self, now: float, interval: float) -> bool:
        """Let each sender say what is due; True once all have said everything."""
        w, monitor = self.work, self.monitor
        for m in self.senders:
            left = w.messages - m.next_seq
            if left <= 0 or m.stage is not Stage.IN:
                continue
            if interval:
                count = 0
                while m.due <= now and count < left:
                    count += 1
                    m.due += interval
            elif monitor.stage is Stage.IN:
                heard = monitor.last.get(m.alias_b, -1) + 1
                count = min(left, w.window - (m.next_seq - heard))
            else:   # nobody to pace by
                count = left
            if count > 0:
                m.say(count)
        return all(m.next_seq >= w.messages or m.stage is not Stage.IN for m in self.senders)

    def _talk_figures(self, listeners: list[Member], elapsed: float, cpu0, cpu1,
                      tool_s: float, complete: bool) -> dict:
        delivered = sum(min(m.got, m.expected) for m in listeners)
        wanted = sum(m.expected for m in listeners)
        lost_by_kind: dict[str, int] = {}
        for m in listeners:
            lost_by_kind[m.kind] = lost_by_kind.get(m.kind, 0) + m.expected - min(m.got, m.expected)
        cpu = None if cpu0 is None else cpu1 - cpu0
        figures = {
            "complete": complete,
            "deliveries": delivered,
            "deliveries_expected": wanted,
            "lost": wanted - delivered,
            "lost_by_kind": lost_by_kind,
            "talk_s": round(elapsed, 3),
            "deliveries_per_s": round(delivered / elapsed, 1) if elapsed else None,
            "server_cpu_s": None if cpu is None else round(cpu, 3),
            "server_cpu_s_per_1M_deliveries":
                None if cpu is None or not delivered else round(cpu / delivered * 1e6, 3),
            "server_cpu_pct": None if cpu is None else round(100 * cpu / elapsed, 2),
            "tool_cpu_s": round(tool_s, 3),
        }
        figures.update(latency_figures(self.latencies))
        return figures

    # -- away: web members drop out before the talk, come back after it -----
    def go_away(self) -> dict:
        """The --away members' connections die (a reset, no close frame); the
        server's memory once it has noticed."""
        for m in self.away:
            m.drop_out()
        self.idle(1.0)
        return {"away": len(self.away), "server_rss_kib_away": self.gauge.rss_kib()}

    def come_back(self) -> dict:
        """The --away members come back for their seats and must get every
        line said meanwhile, once and in order."""
        w = self.work
        t0, deadline = time.monotonic(), time.monotonic() + w.timeout
        for m in self.away:
            m.expected, m.stage = w.senders * w.messages, Stage.CONNECTING
            self._open(m)
        while any(not m.finished and m.stage is not Stage.GONE for m in self.away) \
                and time.monotonic() < deadline:
            self.turn(deadline - time.monotonic())
        return {"lost_on_return": sum(m.expected - min(m.got, m.expected) for m in self.away),
                "back_s": round(time.monotonic() - t0, 3)}

    # -- the floods (issue 10) ----------------------------------------------
    def pour(self, data_of: Callable[[Member], bytes], seconds: float) -> int:
        """Every member in the room sends data_of(itself) at once; turn until
        the kernel took it all or `seconds` passed.  Bytes left unsent."""
        inside = [m for m in self.members if m.stage is Stage.IN]
        for m in inside:
            m.send(data_of(m))
        deadline = time.monotonic() + seconds
        while (now := time.monotonic()) < deadline and any(m.out for m in inside):
            self.turn(min(0.05, deadline - now))
        return sum(len(m.out) for m in inside if m.stage is Stage.IN)

    def idle(self, seconds: float) -> None:
        """Keep reading (and sweeping) for `seconds`."""
        deadline = time.monotonic() + seconds
        while (now := time.monotonic()) < deadline:
            self.turn(deadline - now)

    def pace(self, seconds: float, interval: float) -> dict:
        """Each sender says one line every `interval` s (slots missed are
        skipped, never made up) for `seconds`: the latencies heard meanwhile
        and the server's CPU % over that time."""
        first, t0, cpu0 = len(self.latencies), time.monotonic(), self.gauge.cpu_s()
        for m in self.members:
            m.expected = NEVER - 1   # tally every line from now on
        for k, m in enumerate(self.senders):   # spread evenly over the interval
            m.due = max(m.due, t0 + interval * k / len(self.senders))
        end = t0 + seconds
        while (now := time.monotonic()) < end:
            for m in self.senders:
                if m.stage is Stage.IN and m.due <= now:
                    m.say(1)
                    m.due += interval * (1 + (now - m.due) // interval)
            self.turn(min([end] + [m.due for m in self.senders]) - now)
        cpu1 = self.gauge.cpu_s()
        return {"latencies": self.latencies[first:],
                "cpu_pct": None if cpu0 is None or cpu1 is None
                else round(100 * (cpu1 - cpu0) / (time.monotonic() - t0), 1)}

    # -- the end ----------------------------------------------------------
    def drain_stalled(self, timeout: float = 5.0) -> None:
        """Read the stalled members dry to learn whether the server closed them."""
        deadline = time.monotonic() + timeout
        for m in self.members:
            while m.stalled and m.stage is not Stage.GONE and time.monotonic() < deadline:
                try:
                    data = m.sock.recv(1 << 20)
                except WOULD_BLOCK:
                    break
                except OSError:
                    data = b""
                if not data:
                    m.leave()

    def close(self) -> None:
        for m in self.members:
            if m.sock is not None and m.stage is not Stage.GONE:
                self.unwatch(m)
                m.sock.close()
                m.stage = Stage.GONE
        self.sel.close()

    def counted(self) -> dict:
        figures = dict(self.counts)
        figures["web_close_codes"] = sorted(set(figures["web_close_codes"]))
        if self.web_problems:
            figures["web_problems"] = self.web_problems
        if self.examples:
            figures["app_fault_examples"] = self.examples
        return figures


# ---------------------------------------------------------------------------
# 5. The server
# ---------------------------------------------------------------------------

class Gauge:
    """CPU seconds and resident memory of a server process (None without one)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int | None):
        self.pid = pid

    def cpu_s(self) -> float | None:
        """User + system CPU seconds, all threads, from /proc/PID/stat."""
        if not self.pid:
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self.TICK

    def rss_kib(self) -> int | None:
        if not self.pid:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None


class StartFailed(Exception):
    """The server did not start listening; the message says what it printed."""


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server started from a --server-cmd template on free ports:
    `{port}` is the line port, `{web_port}` the web port."""

    def __init__(self, label: str, template: str, host: str):
        self.label, self.template, self.host = label, template, host
        self.has_web = "{web_port}" in template
        self.proc: subprocess.Popen | None = None
        self.port = self.web_port = 0
        self.output = None

    def start(self, timeout: float = 15.0) -> None:
        self.port = free_port(self.host)
        self.web_port = free_port(self.host) if self.has_web else 0
        command = self.template.replace("{port}", str(self.port)).replace(
            "{web_port}", str(self.web_port))
        self.output = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(shlex.split(command), stdin=subprocess.DEVNULL,
                                     stdout=self.output, stderr=subprocess.STDOUT)
        for port in (self.port, self.web_port):
            if port and not self._wait_listening(port, time.monotonic() + timeout):
                text = self._printed()
                self.stop()
                raise StartFailed(f"{self.label}: not listening on port {port}: {text}")
        time.sleep(0.3)   # let start-up allocations settle before measuring memory

    def _wait_listening(self, port: int, deadline: float) -> bool:
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection((self.host, port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def _printed(self) -> str:
        self.output.seek(0)
        return self.output.read()[-400:].decode("utf-8", "replace").strip() or "(nothing printed)"

    def stop(self) -> None:
        """SIGTERM, a few seconds' grace, then SIGKILL."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.output:
            self.output.close()
            self.output = None


@dataclasses.dataclass
class Target:
    """A server to measure: one we start (process) or one we attach to."""

    label: str
    process: ServerProcess | None = None
    port: int = 0
    web_port: int = 0
    pid: int | None = None


# ---------------------------------------------------------------------------
# 6. Figures
# ---------------------------------------------------------------------------

def percentile(values: list[int], p: float) -> int | None:
    """Nearest-rank percentile of sorted `values`."""
    if not values:
        return None
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


def latency_figures(latencies_ns: list[int]) -> dict:
    ordered = sorted(latencies_ns)
    figures = {}
    for p in (50, 99, 99.9):
        v = percentile(ordered, p)
        figures[f"latency_p{p}_ms"] = None if v is None else round(v / 1e6, 3)
    figures["latency_max_ms"] = round(ordered[-1] / 1e6, 3) if ordered else None
    figures["latency_samples"] = len(ordered)
    return figures


# (name in the JSON, label in the table, ratio shown)
TABLE = (
    ("joined", "members in", False),
    ("connect_s", "connect s (all in)", True),
    ("server_cpu_s_join", "server CPU s (join)", True),
    ("server_kib_per_member", "server KiB per member", True),
    ("deliveries_per_s", "deliveries/s", True),
    ("server_cpu_s_per_1M_deliveries", "server CPU s per 1M deliveries", True),
    ("server_cpu_pct", "server CPU % (talk)", True),
    ("server_cpu_pct_run", "server CPU % (whole run)", True),
    ("latency_p50_ms", "latency p50 ms", True),
    ("latency_p99_ms", "latency p99 ms", True),
    ("latency_p99.9_ms", "latency p99.9 ms", True),
    ("latency_max_ms", "latency max ms", True),
    ("lost", "lost", False),
    ("duplicates", "duplicates", False),
    ("order_errors", "order errors", False),
    ("closed_by_server", "closed by server", False),
    ("stalled_closed", "stalled members closed", False),
    ("decode_errors", "App: decode errors", False),
    ("deaf_apps", "App: members deaf (reader died)", False),
    ("box_reads_not_count", "App: box reads not a count", False),
    ("count_in_chat", "App: count text in chat", False),
    ("prompt_not_alone", "App: prompt not alone", False),
    ("app_early_reads", "App: reads before its window", False),
    ("web_refused", "web: refused", False),
    ("web_bad_frames", "web: bad frames", False),
    ("away", "web: away during the talk", False),
    ("web_back", "web: back in their seats", False),
    ("lost_on_return", "web: missed lines not given back", False),
    ("back_s", "web: all back, s", True),
    ("tool_cpu_s", "load tool CPU s (talk)", False),
)
APP_ONLY = {"decode_errors", "deaf_apps", "box_reads_not_count", "count_in_chat", "prompt_not_alone",
            "app_early_reads"}
WEB_ONLY = {"web_refused", "web_bad_frames", "away", "web_back", "lost_on_return", "back_s"}


SUMMARY_EXTRA = ("deliveries", "deliveries_expected", "talk_s", "server_cpu_s", "server_rss_kib",
                 "server_rss_kib_away", "server_rss_kib_end", "count_reads", "latency_samples")


def summarize(runs: list[dict], table: tuple = TABLE, extra: tuple = SUMMARY_EXTRA) -> dict:
    """Median, min and max of each figure of the table over rounds."""
    summary = {}
    for key in [k for k, _, _ in table] + list(extra):
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))
                  and not isinstance(r.get(key), bool)]
        if values:
            summary[key] = {"median": round(statistics.median(values), 3),
                            "min": min(values), "max": max(values)}
    return summary


def number(value: float) -> str:
    """A figure as people read it: 1405789, 43.9, 0.043."""
    if abs(value) >= 1000:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.3g}"


def cell(stat: dict | None, rounds: int) -> str:
    if stat is None:
        return "-"
    text = number(stat["median"])
    if rounds > 1 and stat["min"] != stat["max"]:
        text += f" [{number(stat['min'])}-{number(stat['max'])}]"
    return text


def ratio(stat: dict | None, base: dict | None) -> str:
    if not stat or not base or not base["median"]:
        return ""
    return f" x{stat['median'] / base['median']:.2f}"


def print_table(columns: list[tuple[str, str]], summaries: dict, kinds_present: set,
                rounds: int, table: tuple = TABLE) -> None:
    """Figures down, (server, kind) across; ratios against the first server
    with the same kind, and against the first kind of the same server."""
    first_label = columns[0][0]
    first_kind = columns[0][1]
    heads = [f"{label}/{kind}" if len({k for _, k in columns}) > 1 else label
             for label, kind in columns]
    rows = []
    for key, title, show_ratio in table:
        if key in APP_ONLY and "app" not in kinds_present or key in WEB_ONLY and "web" not in kinds_present:
            continue
        row = [title]
        for label, kind in columns:
            stat = summaries[(label, kind)].get(key)
            text = cell(stat, rounds)
            same_kind = summaries.get((first_label, kind), {}).get(key)
            if show_ratio and label != first_label and same_kind:
                text += ratio(stat, same_kind)
            elif show_ratio and kind != first_kind:
                text += ratio(stat, summaries.get((label, first_kind), {}).get(key))
            row.append(text)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [["figure"] + heads]) for i in range(len(heads) + 1)]
    print("  ".join(h.ljust(w) for h, w in zip(["figure"] + heads, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    several_kinds = len({k for _, k in columns}) > 1
    print(f"(median of {rounds} round(s), [min-max]; xN: ratio to {first_label}"
          + (f" with the same kind, else to {first_kind} on the same server)" if several_kinds else ")"))


# ---------------------------------------------------------------------------
# 7. Floods (issue 10)
# ---------------------------------------------------------------------------

CHAT_LINE_BYTES = 100
BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)   # Linux: pick the port at connect


def chat_lines(alias: str, size: int) -> bytes:
    """`size` bytes of ordinary chat lines `alias: text`, about 100 bytes each."""
    head = f"{alias}: ".encode()
    body = max(1, CHAT_LINE_BYTES - len(head) - 1)
    data = (head + b"x" * body + b"\n") * (size // (len(head) + body + 1) + 1)
    return data[:size - 1] + b"\n" if size else b""


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed certificate for localhost (openssl): its and its key's paths."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def client_hello(server_name: str = "localhost") -> bytes:
    """A real ClientHello, made once in memory, to replay as it is."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class Replayer:
    """The TLS flood, in a process of its own: `parallel` connections from
    `source`, each sends the same ClientHello and waits for the server's
    first bytes (answered: it did the handshake's costly part), its close
    (refused) or `wait` seconds (no answer), then resets; again, as fast as
    it can, until `stop` is set."""

    def __init__(self, address: tuple[str, int], source: str, hello: bytes, parallel: int,
                 wait: float):
        self.address, self.source, self.hello = address, source, hello
        self.parallel, self.wait = parallel, wait
        self.sel = selectors.DefaultSelector()
        self.started: dict[socket.socket, float] = {}
        self.counts = dict.fromkeys(("attempts", "answered", "refused", "no_answer",
                                     "connect_failed"), 0)

    def run(self, stop, results) -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            for _ in range(self.parallel - len(self.started)):
                self._open()
            for key, _ in self.sel.select(0.02):
                self._on_event(key.fileobj, key.data)
            self._expire(time.monotonic())
        self.counts["seconds"] = round(time.monotonic() - t0, 3)
        results.send(self.counts)

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)   # no TIME_WAIT
        sock.setsockopt(socket.IPPROTO_IP, BIND_NO_PORT, 1)
        self.counts["attempts"] += 1
        try:
            sock.bind((self.source, 0))
            err = sock.connect_ex(self.address)
        except OSError as e:
            err = e.errno
        if err not in (0, errno.EINPROGRESS):
            self.counts["connect_failed"] += 1
            sock.close()
            return
        self.started[sock] = time.monotonic()
        self.sel.register(sock, WRITE, "connecting")

    def _on_event(self, sock: socket.socket, stage: str) -> None:
        if stage == "connecting":
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._end(sock, "connect_failed")
                return
            try:
                sock.send(self.hello)
            except OSError:
                self._end(sock, "refused")
                return
            self.started[sock] = time.monotonic()
            self.sel.modify(sock, READ, "hello sent")
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._end(sock, "answered" if data else "refused")

    def _expire(self, now: float) -> None:
        for sock in [s for s, at in self.started.items() if now - at > self.wait]:
            self._end(sock, "no_answer")

    def _end(self, sock: socket.socket, outcome: str) -> None:
        self.counts[outcome] += 1
        self.sel.unregister(sock)
        del self.started[sock]
        sock.close()


def replay_hellos(address: tuple[str, int], source: str, hello: bytes, parallel: int,
                  wait: float, stop, results) -> None:
    """The flooder process's body."""
    Replayer(address, source, hello, parallel, wait).run(stop, results)


class Flooder:
    """Starts and stops the Replayer's process (fork); keeps its counts."""

    def __init__(self, address: tuple[str, int], flood: Flood):
        context = multiprocessing.get_context("fork")
        self.stop_event = context.Event()
        self.results, sender = context.Pipe(duplex=False)
        self.proc = context.Process(target=replay_hellos, daemon=True, args=(
            address, flood.flooder, client_hello(), flood.parallel, flood.answer_wait,
            self.stop_event, sender))

    def start(self) -> None:
        self.proc.start()

    def stop(self) -> dict:
        self.stop_event.set()
        counts = self.results.recv() if self.results.poll(5.0) else {}
        self.proc.join(5.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        return counts


def synthetic_jpeg(size: int, width: int = 2048, height: int = 1536) -> bytes:
    """A photo of about `size` bytes shaped as a JPEG (SOF0, SOS, random scan
    data with its 0xFF bytes stuffed, the end marker): the server checks the
    shape and serves the bytes; it never decodes the picture."""
    frame = b"\xff\xc0" + struct.pack("!HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    scan = b"\xff\xda" + struct.pack("!HB", 12, 3) + b"\x01\x00\x02\x00\x03\x00" + b"\x00\x3f\x00"
    return b"\xff\xd8" + frame + scan + random.randbytes(size).replace(b"\xff", b"\xff\x00") + b"\xff\xd9"


def share_photo(address: tuple[str, int], photo: bytes, timeout: float) -> str:
    """A page joins and shares `photo` (`NUL photo BYTES`, then one binary
    message); the photo's path on the web port, once the room shows it."""
    key = base64.b64encode(random.randbytes(16)).decode()
    with socket.create_connection(address, timeout) as sock:
        sock.sendall(upgrade_request(address[0], address[1], key, False))
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536) or b"!"
        buf = buf[buf.index(b"\r\n\r\n") + 4:]
        sock.sendall(client_frame(0x1, b"photographer"))
        shared = False
        while True:
            frames, used = server_frames(buf)
            buf = buf[used:]
            for _, payload in frames:
                event = json.loads(payload) if payload[:1] == b"{" else {}
                if event.get("type") == "welcome" and not shared:
                    sock.sendall(client_frame(0x1, b"\x00photo %d" % len(photo)) + client_frame(0x2, photo))
                    shared = True
                elif event.get("type") in ("photo", "unshared"):
                    if "url" not in event:
                        raise StartFailed(f"the photo was refused: {event.get('text')}")
                    return event["url"]
            data = sock.recv(65536)
            if not data:
                raise StartFailed("the server closed the photographer's socket")
            buf += data


class PhotoPages:
    """The photo's readers, in a process of their own: `pages` connections,
    each fetching `path` whole, then again `every` s after it began, until
    `stop` is set; counts fetches and bytes."""

    def __init__(self, address: tuple[str, int], path: str, pages: int, every: float):
        self.address, self.request = address, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        self.pages, self.every = pages, every
        self.sel = selectors.DefaultSelector()
        self.due = [time.monotonic() + every * i / pages for i in range(pages)]
        self.counts = dict.fromkeys(("fetches", "bytes", "failed"), 0)

    def run(self, stop, results) -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            for page, due in enumerate(self.due):
                if due <= now:
                    self.due[page] = now + 1e9   # under way
                    self._open(page, now)
            for key, _ in self.sel.select(0.01):
                self._read(key.fileobj, *key.data)
        self.counts["seconds"] = round(time.monotonic() - t0, 3)
        results.send(self.counts)

    def _open(self, page: int, began: float) -> None:
        try:
            sock = socket.create_connection(self.address, 5.0)
            sock.sendall(self.request)
            sock.setblocking(False)
        except OSError:
            self.counts["failed"] += 1
            self.due[page] = began + self.every
            return
        self.sel.register(sock, READ, (page, began, [0]))

    def _read(self, sock: socket.socket, page: int, began: float, got: list[int]) -> None:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        got[0] += len(data)
        if data:
            return
        self.counts["fetches" if got[0] > 1000 else "failed"] += 1
        self.counts["bytes"] += got[0]
        self.sel.unregister(sock)
        sock.close()
        self.due[page] = began + self.every


def fetch_photo(address: tuple[str, int], path: str, pages: int, every: float, stop, results) -> None:
    """The photo pages' process body."""
    PhotoPages(address, path, pages, every).run(stop, results)


class PhotoUploads:
    """Pages sharing photos, in a process of their own (issue 30): `pages`
    WebSocket members join; once `go` is set each shares `photo` at once
    (`NUL photo BYTES`, then one binary message, written as the socket
    takes it), and again `every` s after the room answered (shown, or
    refused with why), until `stop` is set.  Each reads all the room sends
    it.  Counts photos shared, refusals by their words,
    and the bytes sent."""

    def __init__(self, address: tuple[str, int], photo: bytes, pages: int, every: float):
        self.address, self.every = address, every
        self.frames = client_frame(0x1, b"\x00photo %d" % len(photo)) + client_frame(0x2, photo)
        self.sel = selectors.DefaultSelector()
        self.names = [f"uploader{n}".encode() for n in range(pages)]
        self.counts: dict = {"shared": 0, "bytes": 0, "refused": {}}

    def run(self, go, stop, results) -> None:
        pages = [self._join(name) for name in self.names]
        results.send("joined")
        go.wait()
        t0 = time.monotonic()
        for page in pages:
            page["due"] = t0
        while not stop.is_set():
            now = time.monotonic()
            for page in pages:
                if page["due"] <= now:
                    page["due"], page["out"] = math.inf, memoryview(self.frames)
                    self.sel.modify(page["sock"], READ | WRITE, page)
            for key, events in self.sel.select(0.01):
                self._serve(key.data, events)
        self.counts["seconds"] = round(time.monotonic() - t0, 3)
        results.send(self.counts)

    def _join(self, name: bytes) -> dict:
        key = base64.b64encode(random.randbytes(16)).decode()
        sock = socket.create_connection(self.address, 10.0)
        sock.sendall(upgrade_request(self.address[0], self.address[1], key, False))
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536) or b"!"
        sock.sendall(client_frame(0x1, name))
        page = {"sock": sock, "name": name, "buf": buf[buf.index(b"\r\n\r\n") + 4:], "out": None,
                "due": math.inf}
        while b'"welcome"' not in page["buf"]:
            page["buf"] += sock.recv(65536) or b"!"
        sock.setblocking(False)
        self.sel.register(sock, READ, page)
        return page

    def _serve(self, page: dict, events: int) -> None:
        sock = page["sock"]
        if events & WRITE and page["out"] is not None:
            try:
                n = sock.send(page["out"][:1 << 18])
            except (BlockingIOError, InterruptedError):
                n = 0
            self.counts["bytes"] += n
            page["out"] = page["out"][n:] or None
            if page["out"] is None:
                self.sel.modify(sock, READ, page)
        if events & READ:
            try:
                data = sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            page["buf"] += data
            frames, used = server_frames(page["buf"])
            page["buf"] = page["buf"][used:]
            for _, payload in frames:   # (a phase is shorter than two pings: none answered)
                if b'"unshared"' in payload[:20]:
                    why = json.loads(payload)["text"]
                    self.counts["refused"][why] = self.counts["refused"].get(why, 0) + 1
                    page["due"] = time.monotonic() + self.every
                elif b'"photo"' in payload[:20] and json.loads(payload)["name"] == page["name"].decode():
                    self.counts["shared"] += 1
                    page["due"] = time.monotonic() + self.every


def upload_photos(address: tuple[str, int], photo: bytes, pages: int, every: float,
                  go, stop, results) -> None:
    """The uploading pages' process body."""
    PhotoUploads(address, photo, pages, every).run(go, stop, results)


def photo_flood(flood: Flood, target: Target, host: str, timeout: float) -> dict:
    """Issue 23: members chat (probes time their lines) in a full room, first
    alone, then while `pages` pages keep fetching a shared photo; issue 30:
    then while `uploaders` pages share photos, all at once."""
    lines = int((flood.quiet_s + 2 * flood.flood_s) * 1000 / flood.probe_ms) + 16
    work = Workload(host=host, clients=flood.members, senders=flood.probes, messages=lines,
                    probes=flood.probes, lazy_ms=100.0, timeout=timeout)
    port, gauge = started(target)
    web_port = target.process.web_port if target.process else target.web_port
    crowd = Crowd(work, ["line"] * flood.members, (host, port), None, gauge)
    result: dict = {"server": target.label, "members": flood.members, "pages": flood.pages}
    try:
        result.update(crowd.join())
        path = share_photo((host, web_port), synthetic_jpeg(flood.photo_bytes), timeout)
        crowd.idle(1.0)   # the photo's line reaches everyone
        result["server_rss_kib_before"] = gauge.rss_kib()
        interval = flood.probe_ms / 1000
        quiet = crowd.pace(flood.quiet_s, interval)
        context = multiprocessing.get_context("fork")
        stop, (results, sender) = context.Event(), context.Pipe(duplex=False)
        pages = context.Process(target=fetch_photo, daemon=True, args=(
            (host, web_port), path, flood.pages, flood.photo_every, stop, sender))
        pages.start()
        try:
            during = crowd.pace(flood.flood_s, interval)
        finally:
            stop.set()
            counts = results.recv() if results.poll(5.0) else {}
            pages.join(5.0)
        result["server_rss_kib_after"] = gauge.rss_kib()
        result.update(phase_latency(quiet["latencies"], "quiet"))
        result.update(phase_latency(during["latencies"], "photos"))
        result.update(server_cpu_pct_quiet=quiet["cpu_pct"], server_cpu_pct_photos=during["cpu_pct"])
        if result["latency_quiet_p99_ms"] and result["latency_photos_p99_ms"] is not None:
            result["p99_ratio"] = round(result["latency_photos_p99_ms"] / result["latency_quiet_p99_ms"], 2)
        seconds = counts.get("seconds") or 1.0
        result["photo_fetches_per_s"] = round(counts.get("fetches", 0) / seconds, 1)
        result["photo_mb_per_s"] = round(counts.get("bytes", 0) / seconds / 1e6, 1)
        result["photo_fetches_failed"] = counts.get("failed")
        if flood.uploaders:
            result.update(photo_uploads(flood, crowd, (host, web_port)))
            if result["latency_quiet_p99_ms"] and result["latency_uploads_p99_ms"] is not None:
                result["upload_p99_ratio"] = round(result["latency_uploads_p99_ms"]
                                                   / result["latency_quiet_p99_ms"], 2)
        result.update(flood_counts(crowd))
    finally:
        stopped(target, crowd)
    return result


def photo_uploads(flood: Flood, crowd: Crowd, address: tuple[str, int]) -> dict:
    """The photo flood's third phase: chat timed while `uploaders` pages share photos."""
    context = multiprocessing.get_context("fork")
    go, stop, (results, sender) = context.Event(), context.Event(), context.Pipe(duplex=False)
    uploads = context.Process(target=upload_photos, daemon=True, args=(
        address, synthetic_jpeg(flood.photo_bytes), flood.uploaders, flood.upload_every, go, stop, sender))
    uploads.start()
    try:
        while not results.poll(0.05):   # they join: the room hears it, then settles
            crowd.idle(0.05)
        results.recv()
        crowd.idle(1.0)
        rss_before = crowd.gauge.rss_kib()
        go.set()
        during = crowd.pace(flood.flood_s, flood.probe_ms / 1000)
    finally:
        stop.set()
        counts = results.recv() if results.poll(5.0) else {}
        uploads.join(5.0)
    seconds = counts.get("seconds") or 1.0
    result = phase_latency(during["latencies"], "uploads")
    result.update(server_cpu_pct_uploads=during["cpu_pct"], server_rss_kib_before_uploads=rss_before,
                  server_rss_kib_after_uploads=crowd.gauge.rss_kib(),
                  photos_shared_per_s=round(counts.get("shared", 0) / seconds, 1),
                  upload_mb_per_s=round(counts.get("bytes", 0) / seconds / 1e6, 1),
                  uploads_refused=sum(counts.get("refused", {}).values()),
                  uploads_refused_why=counts.get("refused"))
    return result


def phase_latency(latencies_ns: list[int], phase: str) -> dict:
    """p50, p90, p99 and max of one phase's latencies, in ms."""
    ordered = sorted(latencies_ns)
    figures = {}
    for p in (50, 90, 99, 100):
        v = percentile(ordered, p)
        figures[f"latency_{phase}_{'max' if p == 100 else f'p{p}'}_ms"] = \
            None if v is None else round(v / 1e6, 3)
    figures[f"latency_{phase}_samples"] = len(ordered)
    return figures


def log_of(template: str) -> str | None:
    """The --log-file a server command names, if any."""
    words = shlex.split(template)
    for i, word in enumerate(words):
        if word == "--log-file" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--log-file="):
            return word.partition("=")[2]
    return None


def log_mark(path: str | None) -> tuple[int, int, float]:
    """Where the log ends now: its inode and size (0, 0 if there is none), and the time."""
    try:
        st = os.stat(path)
    except (OSError, TypeError):
        return 0, 0, time.time()
    return st.st_ino, st.st_size, time.time()


def log_figures(path: str | None, mark: tuple[int, int, float]) -> dict:
    """Bytes and lines written since `mark`, following rotations (path.1,
    path.2, ...) back to the file that was the log then; log_complete is
    false if that file has been rotated away (the figures are then a floor)."""
    if path is None:
        return {}
    inode, offset, since = mark
    written, lines, rotations, found = 0, 0, 0, not inode
    for name in [path] + [f"{path}.{i}" for i in range(1, 10)]:
        try:
            with open(name, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != inode and st.st_mtime < since:
                    break   # older than the mark: not written by this run
                f.seek(offset if st.st_ino == inode else 0)
                data = f.read()
        except OSError:
            break
        written, lines = written + len(data), lines + data.count(b"\n")
        if st.st_ino == inode:
            found = True
            break
        rotations += 1
    return {"log_bytes": written, "log_lines": lines, "log_rotations": max(0, rotations - (not inode)),
            "log_complete": found}


def flood_counts(crowd: Crowd) -> dict:
    """The crowd's counts that a flood can show (no App or web members)."""
    counts = crowd.counted()
    return {k: counts[k] for k in ("connect_failed", "bad_prompts", "closed_by_server",
                                   "duplicates", "order_errors")}


def started(target: Target) -> tuple[int, Gauge]:
    """Start the target's server (if we run it): its line port and gauge."""
    if target.process:
        target.process.start()
        return target.process.port, Gauge(target.process.proc.pid)
    return target.port, Gauge(target.pid)


def stopped(target: Target, crowd: Crowd | None) -> None:
    if target.process:
        target.process.proc.terminate()   # before our sockets close: no leave storm
    if crowd:
        crowd.close()
    if target.process:
        target.process.stop()


def flood_lines(flood: Flood, target: Target, host: str, timeout: float) -> dict:
    """Many addresses, each with many members, each sending flood.size
    bytes of lines at once: the server's memory per flood connection."""
    n = flood.addresses * flood.per_address
    work = Workload(host=host, clients=n, senders=0, messages=1, probes=0, lazy_ms=20.0,
                    batch=64, in_flight=256, timeout=timeout, rcvbuf=65536)
    sources = [source_address(i // flood.per_address) for i in range(n)]
    path = log_of(target.process.template) if target.process else None
    log0 = log_mark(path)
    port, gauge = started(target)
    crowd = Crowd(work, ["line"] * n, (host, port), None, gauge, sources)
    result: dict = {"server": target.label, "flood_connections": n}
    try:
        rss = {"before": gauge.rss_kib()}
        result.update(crowd.join())
        rss["joined"] = gauge.rss_kib()
        cpu0, t0 = gauge.cpu_s(), time.monotonic()
        result["unsent_kib"] = round(crowd.pour(lambda m: chat_lines(m.alias, flood.size),
                                                min(timeout, 10.0)) / 1024, 1)
        result["send_s"] = round(time.monotonic() - t0, 3)
        rss["sent"] = gauge.rss_kib()
        crowd.idle(flood.settle)
        rss["settled"] = gauge.rss_kib()
        cpu1 = gauge.cpu_s()
        result.update(memory_figures(rss, n))
        if cpu0 is not None and cpu1 is not None:
            result["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / (time.monotonic() - t0), 1)
        result.update(flood_counts(crowd))
        result.update(log_figures(path, log0))   # before the stop lines
    finally:
        stopped(target, crowd)
    return result


def memory_figures(rss: dict, n: int) -> dict:
    """RSS at each moment, and growth per flood connection since "joined"."""
    figures = {f"server_rss_kib_{when}": kib for when, kib in rss.items()}
    for when in ("sent", "settled"):
        if rss["joined"] is not None and rss[when] is not None:
            figures[f"kib_per_conn_{when}"] = round((rss[when] - rss["joined"]) / n, 2)
    if rss["before"] is not None and rss["joined"] is not None:
        figures["kib_per_conn_joined"] = round((rss["joined"] - rss["before"]) / n, 2)
    return figures


def tls_flood(flood: Flood, target: Target, host: str, timeout: float) -> dict:
    """Probes time their lines, first in a quiet room, then while ClientHellos
    are replayed at the server from one address."""
    lines = int((flood.quiet_s + flood.flood_s) * 1000 / flood.probe_ms) + 16
    work = Workload(host=host, clients=flood.probes, senders=flood.probes, messages=lines,
                    probes=flood.probes, lazy_ms=0.0, tls=True, timeout=timeout)
    sources = [flood.probe_from or source_address(i, skip=flood.flooder)
               for i in range(flood.probes)]
    path = log_of(target.process.template) if target.process else None
    log0 = log_mark(path)
    port, gauge = started(target)
    crowd = Crowd(work, ["line"] * flood.probes, (host, port), None, gauge, sources)
    result: dict = {"server": target.label, "probes": flood.probes}
    try:
        result.update(crowd.join())
        if result["connect_ok"]:
            result.update(timed_phases(crowd, flood, (host, port)))
        result.update(flood_counts(crowd))
        result.update(log_figures(path, log0))   # before the stop lines
    finally:
        stopped(target, crowd)
    return result


def timed_phases(crowd: Crowd, flood: Flood, address: tuple[str, int]) -> dict:
    """Quiet, then flooded: latencies, server CPU %, what the flood got."""
    interval = flood.probe_ms / 1000
    quiet = crowd.pace(flood.quiet_s, interval)
    flooder = Flooder(address, flood)
    first = len(crowd.latencies)
    flooder.start()
    try:
        during = crowd.pace(flood.flood_s, interval)
    finally:
        counts = flooder.stop()
    crowd.idle(1.0)   # the last lines come in: they count as flooded
    said = sum(m.next_seq for m in crowd.senders)
    heard = sum(m.got for m in crowd.members)
    figures = {"server_cpu_pct_quiet": quiet["cpu_pct"], "server_cpu_pct_flood": during["cpu_pct"],
               "lines_said": said, "lines_missing": said * len(crowd.members) - heard}
    figures.update(phase_latency(quiet["latencies"], "quiet"))
    figures.update(phase_latency(crowd.latencies[first:], "flood"))
    seconds = counts.get("seconds") or 0
    figures.update({f"flood_{k}": v for k, v in counts.items()})
    if seconds:
        for k in ("attempts", "answered", "refused"):
            figures[f"flood_{k}_per_s"] = round(counts[k] / seconds, 1)
    return figures


FLOOD_LINES_TABLE = (
    ("joined", "flood connections in", False),
    ("connect_s", "connect s (all in)", True),
    ("server_rss_kib_before", "server RSS KiB before", True),
    ("server_rss_kib_joined", "server RSS KiB joined", True),
    ("server_rss_kib_sent", "server RSS KiB sent", True),
    ("server_rss_kib_settled", "server RSS KiB settled", True),
    ("kib_per_conn_joined", "KiB per conn (join)", True),
    ("kib_per_conn_sent", "KiB per conn joined->sent", True),
    ("kib_per_conn_settled", "KiB per conn joined->settled", True),
    ("unsent_kib", "KiB the kernel did not take", False),
    ("send_s", "s to send", True),
    ("server_cpu_pct", "server CPU % (send+settle)", True),
    ("closed_by_server", "flood connections closed", False),
    ("log_lines", "log lines written (to the stop)", False),
    ("log_bytes", "log bytes written (to the stop)", False),
    ("log_rotations", "log rotations", False),
)
TLS_FLOOD_TABLE = (
    ("joined", "probes in", False),
    ("latency_quiet_p50_ms", "latency quiet p50 ms", True),
    ("latency_quiet_p90_ms", "latency quiet p90 ms", True),
    ("latency_quiet_p99_ms", "latency quiet p99 ms", True),
    ("latency_quiet_max_ms", "latency quiet max ms", True),
    ("latency_flood_p50_ms", "latency flood p50 ms", True),
    ("latency_flood_p90_ms", "latency flood p90 ms", True),
    ("latency_flood_p99_ms", "latency flood p99 ms", True),
    ("latency_flood_max_ms", "latency flood max ms", True),
    ("server_cpu_pct_quiet", "server CPU % quiet", True),
    ("server_cpu_pct_flood", "server CPU % flood", True),
    ("flood_attempts_per_s", "flood connections/s", True),
    ("flood_answered_per_s", "handshakes done/s", True),
    ("flood_answered", "handshakes done", True),
    ("flood_refused", "refused (closed, no bytes)", True),
    ("flood_no_answer", "no answer in time", False),
    ("flood_connect_failed", "connect failed", False),
    ("lines_missing", "probe lines missing (1 s after)", False),
    ("closed_by_server", "probes closed by server", False),
    ("log_lines", "log lines written (to the stop)", False),
    ("log_bytes", "log bytes written (to the stop)", False),
    ("log_rotations", "log rotations", False),
)
PHOTO_FLOOD_TABLE = (
    ("joined", "members in", False),
    ("latency_quiet_p50_ms", "chat p50 ms, no photos", True),
    ("latency_quiet_p99_ms", "chat p99 ms, no photos", True),
    ("latency_photos_p50_ms", "chat p50 ms, photos fetched", True),
    ("latency_photos_p99_ms", "chat p99 ms, photos fetched", True),
    ("p99_ratio", "p99 with / without photos", True),
    ("photo_fetches_per_s", "photo fetches/s", True),
    ("photo_mb_per_s", "photo MB/s served", True),
    ("photo_fetches_failed", "photo fetches failed", False),
    ("uploads_refused", "uploads refused (JSON: why)", False),
    ("latency_uploads_p50_ms", "chat p50 ms, photos uploaded", True),
    ("latency_uploads_p99_ms", "chat p99 ms, photos uploaded", True),
    ("upload_p99_ratio", "p99 uploading / without photos", True),
    ("photos_shared_per_s", "photos shared/s", True),
    ("upload_mb_per_s", "photo MB/s uploaded", True),
    ("server_cpu_pct_quiet", "server CPU % no photos", True),
    ("server_cpu_pct_photos", "server CPU % photos", True),
    ("server_cpu_pct_uploads", "server CPU % uploads", True),
    ("server_rss_kib_before", "server RSS KiB before", True),
    ("server_rss_kib_after", "server RSS KiB after", True),
    ("server_rss_kib_before_uploads", "server RSS KiB before uploads", True),
    ("server_rss_kib_after_uploads", "server RSS KiB after uploads", True),
    ("closed_by_server", "members closed by server", False),
)
FLOODS = {"flood-lines": (flood_lines, FLOOD_LINES_TABLE),
          "tls-flood": (tls_flood, TLS_FLOOD_TABLE),
          "photo-flood": (photo_flood, PHOTO_FLOOD_TABLE)}


# ---------------------------------------------------------------------------
# 8. Main
# ---------------------------------------------------------------------------

EXAMPLES = """\
workloads (SERVER is e.g. "python3 pcr_server.py --host 127.0.0.1 --port {port}
  --public-ip-url '' --log-file /tmp/lt.log --max-per-ip 100000 --line-rate 0";
  add --web-port {web_port} once the server has it):
  burst      --clients 1000 --senders 10 --messages 300 --server-cmd "SERVER"
  steady     --clients 1000 --senders 10 --messages 50 --rate 100 --server-cmd "SERVER"
             (lines spread evenly in time; --lockstep: all senders at once, as pcr_load.py)
  join       --clients 1000 --senders 1 --messages 1 --server-cmd "SERVER"
             (10000: --clients 10000 --batch 500; the tool raises its open-files limit
             to the hard limit, `ulimit -Hn`, and needs --clients + 64)
  stalled    --clients 100 --stalled 5 --senders 5 --messages 3000 --line-bytes 1000 --server-cmd "SERVER"
             (15 MB for each stalled member: more than the kernel buffers, 4 MiB + a bit,
             and the server's --max-backlog; stalled_closed says whether it cut them)
  quiet room --quiet-room --server-cmd "SERVER"   (= --kind app --clients 100 --senders 1
             --messages 12 --rate 0.2 --line-bytes 40 --app-type-ms 70; see server CPU %)
  App split  --kind app --text utf8 --line-bytes 300 --clients 20 --senders 2 --messages 20
             (add --app-type-ms 70 to read at the App's typing pace: slow by design)
  web cost   --compare-kinds line,web --clients 1000 --senders 10 --messages 100 --server-cmd "SERVER"
  away       --kind web --clients 1000 --away 100 --senders 10 --messages 300 --server-cmd "SERVER"
             (100 web members drop out before the talk and come back for their seats
             after it; compare CPU per delivery with --away 0)
  mixed      --mix line=900,app=100 --clients 1000 ...
  TLS        --tls --server-cmd "SERVER --tls-cert /tmp/c.pem --tls-key /tmp/k.pem"
  side by side, 3 rounds:  --rounds 3 --server-cmd "this=SERVER"
             --server-cmd "c_ref=/tmp/c_ref {port}"
             --server-cmd "asyncio=python3 bench/asyncio_ref.py {port}"
  (build c_ref: cc -O2 -D_GNU_SOURCE -o /tmp/c_ref bench/c_ref.c)

floods (issue 10; DEFAULT is the server with its default limits: "python3 pcr_server.py
  --host 127.0.0.1 --port {port} --public-ip-url '' --log-file /tmp/flood.log"):
  lines      --flood-lines --server-cmd "now=DEFAULT" --server-cmd "before=python3 /tmp/old.py ..."
             63 addresses (127.0.0.2 ...) x 16 members join as terminals, then each sends
             64 KiB of ~100-byte chat lines at once and reads what comes (in sweeps, a
             64 KiB receive buffer).  Server RSS before, joined, sent (the kernel took
             every byte), settled (--flood-settle later); KiB per connection from joined
  TLS        --tls-flood --server-cmd "DEFAULT --tls-cert {cert} --tls-key {key}"
             (no --tls-cert/--tls-key: a self-signed pair is made with openssl.)  5 TLS
             probes, one address each from 127.0.0.2 (5 x 10 lines/s from one address is
             over the 40 lines/s per address: --probe-from shows that), each say a stamped
             line every 100 ms: 5 s quiet, then 10 s while a process from 127.0.0.9 replays
             one real ClientHello 4 connections at a time: connect, hello, wait for bytes
             (answered: the server did the handshake), a close (refused) or 0.2 s, reset.
             Latency p50/p90/p99/max (lines heard in the 1 s after the flood count as
             flooded), server CPU % per phase, answered and refused per second
  Both report the lines and bytes the log gained up to the stop (following rotations).

member kinds:
  line  answers ALIAS with `alias\\n` like nc; reads whole lines
  app   answers with the bare alias like PrivateChatRoom-App v1.1.2; reads with
        recv(1024), decodes each read strictly (decode_errors); a read that starts
        with a digit or ends with " online..." is a box read and must be exactly one
        count line (box_reads_not_count); count text inside other reads is
        count_in_chat; reads before its window is built are app_early_reads
  web   WebSocket client on the web port: GET /ws upgrade, masked frames, answers
        pings, sends its alias after "hello", is in at "welcome"

phases (each bounded by --timeout; the talk by its planned length + --timeout):
  join   open members --batch at a time with no wait in between (unless --in-flight
         are at the door, not yet prompted); a member is in at its own join line, a
         count line or a folded join line (web: "welcome").  connect_s: until the last
         one is in.  The talk then waits until every App's window is built
  talk   the last --senders members say --messages lines each: `cN: #cN SEQ TIME`
         padded to --line-bytes, at --rate lines/s in all, or as fast as --window
         lines in flight per sender allow (in flight: not yet heard by the monitor)
  drain  until every member heard every line (its own too) or the timeout

checks: every member tallies each sender's numbers (lost, duplicates, order_errors;
  --verify count: non-probes only count); probes and senders read on every event,
  other line and web members in one sweep every --lazy-ms; App members always read
  on events, one recv(1024) per App read.  closed_by_server: non-stalled members the
  server closed; stalled_closed: stalled ones (read dry at the end to find out).

figures: connect_s, server_cpu_s_join (the server's CPU until all are in),
  server_kib_per_member (RSS growth over the join / members),
  server CPU s per 1M deliveries and CPU % over the talk (from /proc/PID/stat,
  all threads), server_cpu_pct_run (join + talk), deliveries/s, latency
  p50/p99/p99.9/max (probes; with --app-type-ms an App probe's includes its typing),
  tool_cpu_s (this tool's CPU in the talk: if it nears talk_s the tool is the
  bottleneck), App and web counts, app_fault_examples (the first reads showing each
  App fault).  Earlier lines: a table, medians over --rounds with [min-max] and
  ratios.  The last line printed is one JSON object with everything: the workload,
  every run (server, kind, round), and with --rounds > 1 the medians.
"""


def positive(kind: type) -> Callable[[str], float]:
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative")
        return value
    return parse


def parse_mix(text: str) -> dict[str, int]:
    """`line=900,app=100` -> {"line": 900, "app": 100}."""
    mix = {}
    for part in text.split(","):
        kind, _, count = part.partition("=")
        kind, count = kind.strip(), count.strip()
        if kind not in KINDS or not count.isdigit() or int(count) == 0:
            raise argparse.ArgumentTypeError(f"{part!r}: want KIND=COUNT, KIND one of {KINDS}")
        mix[kind] = int(count)
    return mix


def parse_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",")]
    if not kinds or any(k not in KINDS for k in kinds):
        raise argparse.ArgumentTypeError(f"want kinds from {KINDS}, comma-separated")
    return kinds


def parse_server_cmd(text: str, n: int) -> tuple[str, str]:
    """`LABEL=CMD` or just `CMD` (labelled s1, s2, ...)."""
    match = re.match(r"([A-Za-z0-9_.+-]+)=(.*)", text)
    if match and " " not in match.group(1):
        return match.group(1), match.group(2)
    return f"s{n}", text


QUIET_ROOM = {"kind": "app", "clients": 100, "senders": 1, "messages": 12, "rate": 0.2,
              "line_bytes": 40, "app_type_ms": 70.0}
DEFAULTS = {"kind": "line", "clients": 100, "senders": 5, "messages": 100, "rate": 0.0,
            "line_bytes": 0, "app_type_ms": 0.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="load.py", description="Load tool for PrivateChatRoom-Server: line, App and "
        "web members; cost, latency and correctness; several servers side by side.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_argument_group("servers")
    s.add_argument("--server-cmd", action="append", default=[], metavar="[LABEL=]CMD",
                   help="start this server for each run ({port}, {web_port}: free ports); "
                        "give several to compare them, fresh server each run")
    s.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    s.add_argument("--port", type=int, default=0, help="attach to a running server's line port")
    s.add_argument("--web-port", type=int, default=0, help="... and its web port")
    s.add_argument("--pid", type=int, help="the attached server's process id (CPU, memory)")
    s.add_argument("--rounds", type=int, default=1, help="repeat the whole comparison R times")
    m = p.add_argument_group("members")
    m.add_argument("--clients", type=int, help="members (default: 100)")
    m.add_argument("--kind", choices=KINDS, help="kind of every member (default: line)")
    m.add_argument("--mix", type=parse_mix, metavar="KIND=N,...",
                   help="members of several kinds, e.g. line=900,app=100 (shares of --clients)")
    m.add_argument("--compare-kinds", type=parse_kinds, metavar="KIND,KIND",
                   help="run the workload once per kind (all members of that kind), e.g. line,web")
    m.add_argument("--stalled", type=int, default=0, help="members that join and never read")
    m.add_argument("--away", type=int, default=0,
                   help="web members whose connection drops (a reset, no close frame) before "
                        "the talk and who come back for their seats after it: each must get "
                        "every line said meanwhile (the server needs --web-grace)")
    m.add_argument("--tls", action="store_true", help="speak TLS on both ports (no certificate check)")
    m.add_argument("--batch", type=int, default=100, help="members opened at once (default: 100)")
    m.add_argument("--in-flight", type=int, default=0,
                   help="open no more while this many are not yet prompted (default: 0, no cap; "
                        "a server with a short listen backlog may need one)")
    m.add_argument("--app-type-ms", type=positive(float),
                   help="App members stop reading this long per character of chat they read, "
                        "as the App types it (App v1.1.2: 70; default: 0)")
    m.add_argument("--app-window-ms", type=positive(float), default=40.0,
                   help="App reads sooner than this after the alias are counted as dropped "
                        "(app_early_reads; default: 40)")
    t = p.add_argument_group("talk")
    t.add_argument("--senders", type=int, help="members that speak (default: 5)")
    t.add_argument("--messages", type=int, help="lines per sender (default: 100)")
    t.add_argument("--rate", type=positive(float),
                   help="lines per second over all senders; 0: as fast as --window allows")
    t.add_argument("--lockstep", action="store_true",
                   help="with --rate: all senders speak at the same moments (the server gets "
                        "--senders lines per turn, as with pcr_load.py), not spread evenly")
    t.add_argument("--window", type=int, default=64,
                   help="a sender's lines in flight without --rate (default: 64)")
    t.add_argument("--line-bytes", type=int, help="pad each relayed line to this many bytes")
    t.add_argument("--text", choices=("ascii", "utf8"), default="ascii",
                   help="padding: x's, or é日👋 (2-, 3- and 4-byte characters)")
    t.add_argument("--quiet-room", action="store_true",
                   help="App readers in a quiet room: " + " ".join(
                       f"--{k.replace('_', '-')} {v}" for k, v in QUIET_ROOM.items())
                   + " unless given")
    c = p.add_argument_group("checks and output")
    c.add_argument("--probes", type=int, default=20,
                   help="members that read on every event and time every line (default: 20)")
    c.add_argument("--lazy-ms", type=positive(float), default=100.0,
                   help="other line and web members are read in one sweep this often during "
                        "the talk, so the tool costs less than the server; 0: on every event")
    c.add_argument("--verify", choices=("order", "count"), default="order",
                   help="order: every member checks every sender's order (default); "
                        "count: non-probes only count lines (cheaper)")
    c.add_argument("--timeout", type=positive(float), default=60.0, help="seconds per phase")
    c.add_argument("--json", action="store_true", help="print only the JSON line")
    add_flood_options(p)
    return p


def add_flood_options(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("floods (issue 10; run the server with its default limits)")
    which = f.add_mutually_exclusive_group()
    which.add_argument("--flood-lines", action="store_true",
                       help="members from many addresses each send --flood-bytes of chat "
                            "lines at once: the server's memory per connection")
    which.add_argument("--photo-flood", action="store_true",
                       help="issue 23: --photo-members chat (probes time their lines), first "
                            "alone, then while --photo-pages keep fetching a shared photo, then "
                            "(issue 30) while --photo-uploaders share photos at once; "
                            "{web_port} in --server-cmd")
    which.add_argument("--tls-flood", action="store_true",
                       help="TLS probes time their lines, quiet and then while one address "
                            "replays ClientHellos; {cert} and {key} in --server-cmd")
    d = Flood()
    f.add_argument("--flood-addresses", type=int, default=d.addresses,
                   help="source addresses 127.0.0.2, 127.0.0.3, ... (default: %(default)s)")
    f.add_argument("--flood-per-address", type=int, default=d.per_address,
                   help="members from each (default: %(default)s)")
    f.add_argument("--flood-bytes", type=int, default=d.size,
                   help="bytes of lines each sends at once (default: %(default)s)")
    f.add_argument("--flood-settle", type=positive(float), default=d.settle,
                   help="seconds from sent to settled (default: %(default)s)")
    f.add_argument("--tls-cert", help="the certificate for {cert} (default: a self-signed one, "
                                      "made with openssl in a temporary directory)")
    f.add_argument("--tls-key", help="its key, for {key} (default: --tls-cert)")
    f.add_argument("--flood-probes", type=int, default=d.probes,
                   help="probes, one source address each from 127.0.0.2 (passing over "
                        "--flooder), each within the per-address line rate (default: %(default)s)")
    f.add_argument("--probe-from", metavar="ADDRESS",
                   help="all probes from this one address instead (5 x 10 lines/s is over "
                        "the server's default 40 lines/s per address)")
    f.add_argument("--probe-ms", type=positive(float), default=d.probe_ms,
                   help="each probe says a line this often (default: %(default)s)")
    f.add_argument("--quiet-s", type=positive(float), default=d.quiet_s,
                   help="seconds timed without the flood (default: %(default)s)")
    f.add_argument("--flood-s", type=positive(float), default=d.flood_s,
                   help="seconds timed during the flood (default: %(default)s)")
    f.add_argument("--flooder", default=d.flooder,
                   help="the flood's source address (default: %(default)s)")
    f.add_argument("--flood-parallel", type=int, default=d.parallel,
                   help="ClientHellos in flight at once (default: %(default)s)")
    f.add_argument("--photo-members", type=int, default=d.members,
                   help="--photo-flood: members in the room (default: %(default)s)")
    f.add_argument("--photo-pages", type=int, default=d.pages,
                   help="pages fetching the photo (default: %(default)s)")
    f.add_argument("--photo-bytes", type=int, default=d.photo_bytes,
                   help="the photo's size (default: %(default)s)")
    f.add_argument("--photo-every", type=positive(float), default=d.photo_every,
                   help="each page fetches it again this long after it began (default: %(default)s)")
    f.add_argument("--photo-uploaders", type=int, default=d.uploaders,
                   help="pages sharing photos in the third phase; 0: none (default: %(default)s)")
    f.add_argument("--upload-every", type=positive(float), default=d.upload_every,
                   help="each shares again this long after its last was answered "
                        "(default: %(default)s, the room's photo rate)")


def workload_from(a: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[Workload, list[dict]]:
    """The workload and the member plans (one per compared kind)."""
    preset = QUIET_ROOM if a.quiet_room else DEFAULTS
    if a.mix and a.clients is None:
        a.clients = sum(a.mix.values())
    for key, value in preset.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.mix and a.compare_kinds:
        p.error("give --mix or --compare-kinds, not both")
    w = Workload(host=a.host, clients=a.clients, senders=a.senders, messages=a.messages,
                 rate=a.rate, window=a.window, lockstep=a.lockstep, line_bytes=a.line_bytes, text=a.text,
                 probes=a.probes, lazy_ms=a.lazy_ms, verify=a.verify, stalled=a.stalled, away=a.away,
                 tls=a.tls, batch=max(1, a.batch), in_flight=max(0, a.in_flight),
                 app_type_ms=a.app_type_ms, app_window_ms=a.app_window_ms, timeout=a.timeout)
    if w.senders < 1 or w.clients < w.senders + w.stalled + 1:
        p.error("need --senders >= 1 and --clients >= --senders + --stalled + 1")
    if a.compare_kinds:
        mixes = [{k: 1} for k in a.compare_kinds]
    else:
        mixes = [a.mix or {a.kind: 1}]
    return w, mixes


def targets_from(a: argparse.Namespace, p: argparse.ArgumentParser) -> list[Target]:
    if a.server_cmd and a.port:
        p.error("give --server-cmd or --port, not both")
    if a.server_cmd:
        named = [parse_server_cmd(text, n + 1) for n, text in enumerate(a.server_cmd)]
        if len({label for label, _ in named}) < len(named):
            p.error("two --server-cmd have the same label")
        return [Target(label, ServerProcess(label, cmd, a.host)) for label, cmd in named]
    if not a.port and not a.web_port:
        p.error("give --server-cmd, or --port/--web-port of a running server")
    return [Target("server", None, a.port, a.web_port, a.pid)]


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return wanted
    except (ValueError, OSError):
        return soft


def run_once(w: Workload, target: Target, mix: dict[str, int]) -> dict:
    """One fresh server (if we start it), one crowd, all phases: the figures."""
    kinds = spread_kinds(mix, w.clients)
    result: dict = {"server": target.label, "kinds": {k: kinds.count(k) for k in mix}}
    process = target.process
    if process and "web" in mix and not process.has_web:
        return {**result, "skipped": "the command has no {web_port}"}
    if not process and "web" in mix and not target.web_port:
        return {**result, "skipped": "no --web-port"}
    if process:
        process.start()
        port, web_port, gauge = process.port, process.web_port, Gauge(process.proc.pid)
    else:
        port, web_port, gauge = target.port, target.web_port, Gauge(target.pid)
    crowd = Crowd(w, kinds, (w.host, port), (w.host, web_port) if web_port else None, gauge)
    try:
        rss0, cpu0, t0 = gauge.rss_kib(), gauge.cpu_s(), time.monotonic()
        result.update(crowd.join())
        rss1 = gauge.rss_kib()
        if rss0 is not None and rss1 is not None:
            result["server_rss_kib"] = rss1
            result["server_kib_per_member"] = round((rss1 - rss0) / w.clients, 2)
        if result["connect_ok"] and w.away:
            result.update(crowd.go_away())
        if result["connect_ok"]:
            result.update(crowd.talk())
            result["server_rss_kib_end"] = gauge.rss_kib()
            if w.away:
                result.update(crowd.come_back())
            cpu1 = gauge.cpu_s()
            if cpu0 is not None and cpu1 is not None:
                result["server_cpu_pct_run"] = round(100 * (cpu1 - cpu0) / (time.monotonic() - t0), 2)
        crowd.drain_stalled()
        result.update(crowd.counted())
    finally:
        if process:
            process.proc.terminate()   # before our sockets close: no leave storm
        crowd.close()
        if process:
            process.stop()
    return result


def good(result: dict) -> bool:
    return bool(result.get("connect_ok") and result.get("complete") and not result.get("lost")
                and not result.get("duplicates") and not result.get("order_errors")
                and not result.get("closed_by_server") and not result.get("lost_on_return"))


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.flood_lines or a.tls_flood or a.photo_flood:
        return flood_main(a, p)
    w, mixes = workload_from(a, p)
    targets = targets_from(a, p)
    files = raise_open_files_limit()
    if w.clients + 64 > files:
        p.error(f"{w.clients} members need more open files than {files} (raise ulimit -n -H)")
    runs: list[dict] = []
    total = a.rounds * len(targets) * len(mixes)
    for rnd, target, mix in itertools.product(range(1, a.rounds + 1), targets, mixes):
        kind = "+".join(mix) if len(mix) == 1 or not a.mix else "mix"
        print(f"run {len(runs) + 1}/{total}: {target.label}, {kind}, round {rnd} ...",
              file=sys.stderr, flush=True)
        try:
            result = run_once(w, target, mix)
        except StartFailed as e:
            result = {"server": target.label, "error": str(e)}
        result.update(kind=kind, round=rnd)
        runs.append(result)
    report(a, w, runs)
    return 0 if all(good(r) or r.get("skipped") for r in runs) else 1


def report(a: argparse.Namespace, w: Workload, runs: list[dict]) -> None:
    columns = list(dict.fromkeys((r["server"], r["kind"]) for r in runs))
    summaries = {col: summarize([r for r in runs if (r["server"], r["kind"]) == col
                                 and "connect_ok" in r] or [{}]) for col in columns}
    kinds_present = {k for r in runs for k in r.get("kinds", {})}
    if not a.json:
        print_table(columns, summaries, kinds_present, a.rounds)
        for r in runs:
            if "error" in r or "skipped" in r:
                print(f"{r['server']}/{r['kind']} round {r['round']}: "
                      f"{r.get('error') or r.get('skipped')}")
    everything = {"workload": dataclasses.asdict(w), "runs": runs}
    if a.rounds > 1:
        everything["summary"] = {f"{label}/{kind}": s for (label, kind), s in summaries.items()}
    print(json.dumps(everything, ensure_ascii=False))


def flood_from(a: argparse.Namespace) -> Flood:
    return Flood(addresses=a.flood_addresses, per_address=a.flood_per_address, size=a.flood_bytes,
                 settle=a.flood_settle, probes=a.flood_probes, probe_from=a.probe_from or "",
                 probe_ms=a.probe_ms, quiet_s=a.quiet_s, flood_s=a.flood_s, flooder=a.flooder,
                 parallel=max(1, a.flood_parallel), members=a.photo_members, pages=a.photo_pages,
                 photo_bytes=a.photo_bytes, photo_every=a.photo_every, uploaders=a.photo_uploaders,
                 upload_every=a.upload_every)


def flood_main(a: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    """--flood-lines or --tls-flood: rounds x servers, a table, the JSON line."""
    flood = flood_from(a)
    name = "flood-lines" if a.flood_lines else "tls-flood" if a.tls_flood else "photo-flood"
    with tempfile.TemporaryDirectory(prefix="pcr-flood-") as tmp:
        if a.tls_flood and any("{cert}" in c or "{key}" in c for c in a.server_cmd):
            cert, key = (a.tls_cert, a.tls_key or a.tls_cert) if a.tls_cert else make_certificate(tmp)
            a.server_cmd = [c.replace("{cert}", cert).replace("{key}", key) for c in a.server_cmd]
        targets = targets_from(a, p)
        needed = (flood.addresses * flood.per_address if a.flood_lines
                  else flood.members + flood.pages + flood.uploaders if a.photo_flood
                  else flood.probes)
        if needed + 64 > raise_open_files_limit():
            p.error(f"{needed} connections need more open files (raise ulimit -n -H)")
        runs = []
        run, table = FLOODS[name]
        for rnd, target in itertools.product(range(1, a.rounds + 1), targets):
            print(f"{name}: {target.label}, round {rnd} ...", file=sys.stderr, flush=True)
            try:
                result = run(flood, target, a.host, a.timeout)
            except StartFailed as e:
                result = {"server": target.label, "error": str(e)}
            runs.append({**result, "kind": name, "round": rnd})
    flood_report(a, flood, name, table, runs)
    return 0 if all(r.get("connect_ok") for r in runs) else 1


def flood_report(a: argparse.Namespace, flood: Flood, name: str, table: tuple,
                 runs: list[dict]) -> None:
    columns = list(dict.fromkeys((r["server"], name) for r in runs))
    summaries = {col: summarize([r for r in runs if r["server"] == col[0] and "joined" in r]
                                or [{}], table, ()) for col in columns}
    if not a.json:
        print_table(columns, summaries, set(), a.rounds, table)
        for r in runs:
            if "error" in r:
                print(f"{r['server']} round {r['round']}: {r['error']}")
    everything = {"workload": name, "flood": dataclasses.asdict(flood), "runs": runs}
    if a.rounds > 1:
        everything["summary"] = {label: s for (label, _), s in summaries.items()}
    print(json.dumps(everything, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
