#!/usr/bin/env python3
"""PrivateChatRoom-Server: a private chat room in one file.

Run it, give your address to family or friends, and they join with the
PrivateChatRoom-App desktop client or any terminal client (`nc HOST 5050`).
Standard library only.  The wire contract is PROTOCOL.md; usage: README.md.

    python3 pcr_server.py                 # headless
    python3 pcr_server.py --gui           # with a window
    python3 pcr_server.py --connect HOST  # join a room from a terminal
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import errno
import heapq
import hmac
import ipaddress
import itertools
import logging
import logging.handlers
import os
import queue
import re
import selectors
import signal
import socket
import stat
import sys
import threading
import time
import traceback
import unicodedata
import urllib.request
import uuid
from typing import Callable

try:
    import resource
except ImportError:  # not on Windows: the open-files limit stays as it is
    resource = None
try:
    import ssl
except ImportError:  # Python built without OpenSSL: no --tls-cert
    ssl = None

VERSION = "2.0.0"

# ---------------------------------------------------------------------------
# 1. Constants and settings
# ---------------------------------------------------------------------------

DEFAULT_PORT = 5050
PORT_FILE = ".pcr_port"
LOG_FILE = ".privateChat_server.log"
LOG_FORMAT = "%(asctime)s:%(levelname)s:%(name)s:%(message)s"
DEFAULT_PUBLIC_IP_URL = "https://api.ipify.org"
RECV_SIZE = 65536
# Ctrl+C, a terminate, and the terminal going away (SSH dropped) all stop the room cleanly.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
PORT_FILE_BYTES = 64      # a port number, spaces and a line end fit with room to spare
MIN_KEY = 8               # a shorter room key is warned about: it can be guessed

log = logging.getLogger("pcr_server")


@dataclasses.dataclass
class Settings:
    """Everything the server can be told; the command line maps onto it."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    log_file: str = LOG_FILE
    public_ip_url: str = DEFAULT_PUBLIC_IP_URL
    handshake_timeout: float = 10.0   # seconds to give an alias
    max_line: int = 4096              # bytes in one chat line
    line_rate: float = 10.0           # lines per second per member; 0: off
    max_backlog: int = 1 << 20        # bytes waiting for one member
    max_clients: int = 10000
    max_per_ip: int = 16
    allow: tuple = ()                 # ip networks; empty: everyone
    welcome_delay: float = 0.6        # the App drops what comes before its window
    notice_gap: float = 0.2           # quiet time around a count line
    count_interval: float = 0.25      # at most one count line this often
    join_window: float = 0.05         # welcomes due this close together go as one
    fold_joins: int = 3               # more joins at once: one folded notice
    stop_flush: float = 2.0           # seconds to deliver the stop lines
    accept_pause: float = 0.5         # after EMFILE/ENFILE on accept
    churn_period: float = 60.0        # an address gets 4 x max_per_ip welcomes per this
    room_key: str = ""                # members join as name#KEY; empty: no key
    tls_cert: str = ""                # PEM files; empty: plain text
    tls_key: str = ""


def parse_port(text: str) -> int | None:
    """The port number written in `text`, or None if it is not 1 to 65535."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        return None
    return int(text)


def read_port_file(path: str = PORT_FILE) -> tuple[int, str | None]:
    """The port saved in `path`, or the default and a warning saying why not.

    A missing file is created holding the default; anything else that is
    not a regular file holding a port (a device, a pipe, a dangling link, a
    long file) is left alone.  At most PORT_FILE_BYTES are read.
    """
    try:
        text = read_small_file(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return DEFAULT_PORT, (f"{path} is a link to a file that does not exist; "
                                  f"left alone, using port {DEFAULT_PORT}")
        try:
            save_port_file(DEFAULT_PORT, path)
        except OSError as e:
            return DEFAULT_PORT, f"could not create {path} ({e.strerror}); using port {DEFAULT_PORT}"
        return DEFAULT_PORT, None
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        return DEFAULT_PORT, f"could not read {path} ({why}); using port {DEFAULT_PORT}"
    if len(text) > PORT_FILE_BYTES:
        return DEFAULT_PORT, (f"{path} is longer than a port number can be; "
                              f"left alone, using port {DEFAULT_PORT}")
    port = parse_port(text)
    if port is None:
        return DEFAULT_PORT, (f"{path} holds {text.strip()[:20]!r}, which is not a port number "
                              f"from 1 to 65535; using port {DEFAULT_PORT}")
    return port, None


def read_small_file(path: str, size: int = PORT_FILE_BYTES + 1) -> str:
    """At most `size` bytes of a regular file, as text; OSError for anything else."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))   # a pipe must not hold us
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file")
        return os.read(fd, size).decode("utf-8")
    finally:
        os.close(fd)


def short_key_warning(key: str) -> str:
    """A sentence when the room key is short enough to guess, else ""."""
    if not key or len(key) >= MIN_KEY:
        return ""
    return (f"the room key has only {len(key)} characters, which can be guessed; "
            f"a key of {MIN_KEY} or more is much safer")


def save_port_file(port: int, path: str = PORT_FILE) -> None:
    """Write the port to `path`, never through a link (OSError if it is one)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)   # a pipe with no reader must not hold us either
    with open(os.open(path, flags, 0o644), "w", encoding="utf-8") as f:
        f.write(f"{port}\n")


# ---------------------------------------------------------------------------
# 2. The protocol: pure functions on bytes and strings
# ---------------------------------------------------------------------------

ALIAS_PROMPT = b"ALIAS"
STOP_NOTICE = ("\n\t\t\tthe server has been stopped...\n"
               "\t\tplease close the app and relaunch once the server is online..\n")
MAX_NAME = 32

# Terminal escape sequences (CSI, OSC, DCS/PM/APC strings, two-byte ESC
# forms, 8-bit CSI) and every C0/C1 control but tab.
_UNSAFE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|[PX^_][^\x1b]*(?:\x1b\\)?|[ -/]*[0-~]?)"
    r"|\x9b[0-?]*[ -/]*[@-~]?|[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")


def joined_notice(name: str) -> str:
    return f"{name} joined the chat...\n"


def folded_join_notice(names: list[str]) -> str:
    """One line for many joins at once (a join storm)."""
    shown, more = ", ".join(names[:3]), len(names) - 3
    return f"{shown} and {more} {'other' if more == 1 else 'others'} joined the chat...\n"


def left_notice(name: str) -> str:
    return f"{name} has left the chat...\n"


def count_notice(n: int) -> str:
    return "1 person is online...\n" if n == 1 else f"{n} people are online...\n"


def clean_text(text: str) -> str:
    """Text with escape sequences and control characters (but tab) removed."""
    return _UNSAFE.sub("", text)


def clean_name(text: str) -> str:
    """A name as the room shows it: printable, one line, trimmed, short.

    Colons go too, so that no name can pose as another's line prefix, and a
    leading digit gets a `_` before it: the App takes any read that starts
    with a digit for the count.
    """
    text = clean_text(text.replace("\t", " "))
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C" and c != ":")
    text = _SPACES.sub(" ", text).strip()
    if text[:1].isdigit():
        text = "_" + text
    return text[:MAX_NAME].strip()


def numbered_name(name: str, n: int) -> str:
    """`name (n)`, still within MAX_NAME characters."""
    suffix = f" ({n})"
    return name[:MAX_NAME - len(suffix)].rstrip() + suffix


def split_alias(data: bytes) -> tuple[bytes, bytes]:
    """The alias (up to the first line end, else the whole read) and the rest."""
    end = data.find(b"\n")
    if end < 0:
        return data.rstrip(b"\r"), b""
    return data[:end].rstrip(b"\r"), data[end + 1:]


def split_key(alias: str) -> tuple[str, str]:
    """`name#KEY` -> (name, KEY); without a `#` the key is empty."""
    name, _, key = alias.partition("#")
    return name, key


def decode_line(raw: bytes) -> str:
    """A received line (without its newline) as text; bad UTF-8 replaced."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "replace")


def is_leave_line(text: str, claimed: str, name: str) -> bool:
    """True for the App's own goodbye, `\\t{alias} has left the chat...`."""
    return text in (f"\t{claimed} has left the chat...", f"\t{name} has left the chat...")


def relay_line(text: str, claimed: str, name: str) -> str | None:
    """The line the room hears: always `{name}: ...`; None if nothing is said.

    A line starting with the sender's claimed alias (the App's own prefix)
    has it replaced; any other line gets the name put in front.
    """
    prefix = claimed + ": "
    if claimed and text.startswith(prefix):
        text = text[len(prefix):]
    text = clean_text(text)
    if not text.strip():
        return None
    return f"{name}: {text}\n"


# ---------------------------------------------------------------------------
# 3. The event loop and the room
# ---------------------------------------------------------------------------

EVENT_READ, EVENT_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
MAX_NOTES = 16      # private lines waiting for one member
HOLD_SLACK = 0.01   # quiet gaps ending this close together are served in one go
WOULD_BLOCK = (BlockingIOError,) + (
    (ssl.SSLWantReadError, ssl.SSLWantWriteError) if ssl else ())


def log_fault(doing: str, error: Exception) -> None:
    """Log an unexpected error for the operator: its type and where it
    happened, not its message, which could quote what a member wrote."""
    where = "".join(traceback.format_tb(error.__traceback__))
    log.error("internal error while %s: %s\n%s", doing, type(error).__name__, where.rstrip())


class Timer:
    """A call due at a time on the loop's clock; cancel() makes it a no-op."""

    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable, args: tuple):
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """File events, timers and calls handed over from other threads.

    Handlers are registered as (function, object) and called as
    function(object, mask), so nothing per connection is allocated here.
    An error escaping a handler, timer or call is logged and the loop goes on.
    """

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Timer]] = []   # a heap
        self._seq = itertools.count()
        self.soon: collections.deque = collections.deque()
        self.now = time.monotonic()
        self.running = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, EVENT_READ, (self._drain_wake, None))

    def watch(self, sock, events: int, handler: Callable, obj) -> None:
        self.selector.register(sock, events, (handler, obj))

    def rewatch(self, sock, events: int, handler: Callable, obj) -> None:
        self.selector.modify(sock, events, (handler, obj))

    def unwatch(self, sock) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def call_at(self, when: float, fn: Callable, *args) -> Timer:
        """Run fn(*args) at `when` on the time.monotonic() clock."""
        timer = Timer(when, fn, args)
        heapq.heappush(self.timers, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, fn: Callable, *args) -> Timer:
        return self.call_at(time.monotonic() + delay, fn, *args)

    def call_soon(self, fn: Callable, *args) -> None:
        """Run fn(*args) at the end of this turn (loop thread only)."""
        self.soon.append((fn, args))

    def call_soon_threadsafe(self, fn: Callable, *args) -> None:
        """The one way for other threads (GUI, signals) to reach the loop."""
        self.soon.append((fn, args))
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full: the loop is awake anyway, or closed
            pass

    def _drain_wake(self, _obj, _mask) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def run(self) -> None:
        self.running = True
        select, timers, soon = self.selector.select, self.timers, self.soon
        while self.running:
            if soon:
                timeout = 0
            elif timers:
                timeout = max(0.0, timers[0][0] - time.monotonic())
            else:
                timeout = None
            events = select(timeout)
            self.now = time.monotonic()
            for key, mask in events:
                handler, obj = key.data
                try:
                    handler(obj, mask)
                except Exception as e:
                    log_fault(f"handling {handler.__name__}", e)
            while timers and timers[0][0] <= self.now:
                timer = heapq.heappop(timers)[2]
                if not timer.cancelled:
                    self._call(timer.fn, timer.args)
            for _ in range(len(soon)):
                self._call(*soon.popleft())

    @staticmethod
    def _call(fn: Callable, args: tuple) -> None:
        try:
            fn(*args)
        except Exception as e:
            log_fault(f"running {getattr(fn, '__name__', fn)}", e)

    def close(self) -> None:
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()


# Where a connection is in its life.
SECURING, NAMING, WELCOMING, IN_ROOM, GONE = "securing", "naming", "welcoming", "in room", "gone"


class Member:
    """One connection: its socket, its name, and where it is in the room stream."""

    __slots__ = ("sock", "ip", "port", "state", "claimed", "name", "since",
                 "ready_at", "pos", "notes", "sent_at", "quiet_until", "counted", "count_out",
                 "blocked", "held",
                 "reading", "events", "inbuf", "skipping", "tokens", "stamp",
                 "resume")

    def __init__(self, sock: socket.socket, ip: str, port: int, now: float):
        self.sock = sock
        self.ip, self.port = ip, port
        self.state = NAMING
        self.claimed = ""        # the alias as the client sent it
        self.name = ""           # the name the room knows
        self.since = now
        self.ready_at = 0.0
        self.pos = 0             # next byte of the room stream to send
        self.notes = None        # deque of (stream position, bytes) for this member only
        self.sent_at = 0.0       # when it was last sent anything
        self.quiet_until = 0.0   # nothing may follow a count line before this
        self.counted = 0         # the room's count serial this member has had
        self.count_out = b""     # what is left to send of its count line
        self.blocked = False     # kernel buffer full: waiting for writable
        self.held = False        # waiting out the quiet time around a count line
        self.reading = True
        self.events = EVENT_READ
        self.inbuf = b""
        self.skipping = False    # dropping the rest of an over-long line
        self.tokens = 0.0        # line-rate bucket
        self.stamp = now
        self.resume = None       # timer that lets a rate-limited member speak again

    def __repr__(self) -> str:
        return f"<Member {self.name or '?'} {self.ip}:{self.port} {self.state}>"


def plain_ip(address: str) -> str:
    """An IPv4-mapped IPv6 address as plain IPv4; others as they are."""
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address.split("%", 1)[0]


def address_group(ip: str) -> str:
    """What the per-address limits count: an IPv4 address, or an IPv6 /64
    (one home or phone gets a whole /64 to pick addresses from)."""
    if ":" not in ip:
        return ip
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class Room:
    """The members, their names, and the stream of everything broadcast.

    Broadcast appends a line once to `stream`, an append-only buffer shared
    by all members; each member keeps only its position in it and gets
    `stream[pos:]` in one send per loop turn.  What every member has had is
    trimmed off the front.

    Count lines are not in the stream: the App must read each alone, so a
    member is owed the latest count and gets it once it has everything else
    and `notice_gap` seconds have passed quietly; the next bytes wait as long
    again.  A busy member is never slowed by counts, and never gets a stale one.
    """

    def __init__(self, loop: Loop, settings: Settings, server: Server):
        self.loop = loop
        self.settings = settings
        self.server = server                     # closes members, sets interest
        self.members: dict[Member, None] = {}   # in the room, in join order
        self.names: dict[str, Member] = {}      # casefolded name -> member (welcoming too)
        self.arrivals: list[Member] = []        # named, waiting for their welcome
        self.stream = bytearray()
        self.base = 0                            # stream position of stream[0]
        self.gap = settings.notice_gap
        self.count_text = b""                    # the latest count line
        self.count_serial = 0                    # bumped with each new count line
        self.count_due = False                   # membership changed since the last count
        self.count_timer: Timer | None = None    # waits for the room to be quiet
        self.last_said = 0.0                     # when the stream or a note last grew
        self.count_at = -1e9
        self.held: list[tuple[float, int, Member]] = []   # a heap: members to come back to
        self.hold_seq = itertools.count()
        self.hold_timer: Timer | None = None
        self.closing = False
        self.flush_due = False
        self.presence_timer: Timer | None = None
        self.guests = 0
        self.numbered: dict[str, int] = {}       # casefolded name -> last number given

    # -- names ----------------------------------------------------------
    def reserve_name(self, wanted: str) -> str:
        """A free name close to `wanted` (empty -> guest-N, taken -> `x (2)`)."""
        if not wanted:
            self.guests += 1
            wanted = f"guest-{self.guests}"
        name, n = wanted, self.numbered.get(wanted.casefold(), 1)
        while name.casefold() in self.names:
            n += 1
            name = numbered_name(wanted, n)
        if n > 1:
            self.numbered[wanted.casefold()] = n
        return name

    # -- broadcast ------------------------------------------------------
    @property
    def end(self) -> int:
        return self.base + len(self.stream)

    def broadcast(self, text: str) -> None:
        self.stream += text.encode()
        self.last_said = self.loop.now
        self._flush_soon()

    def tell(self, member: Member, text: str) -> None:
        """A line for one member only, after what the room has sent so far."""
        if member.notes is None:
            member.notes = collections.deque()
        elif len(member.notes) >= MAX_NOTES:   # it is not reading them
            return
        member.notes.append((self.end, text.encode()))
        self.last_said = self.loop.now
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send every member what it has not had yet: usually one send each.

        The plain case (stream bytes only) is inlined here for speed;
        anything else goes through _send_member.
        """
        self.flush_due = False
        end, base, now = self.end, self.base, self.loop.now
        limit = self.settings.max_backlog
        low, slow, failed = end, [], []
        with memoryview(self.stream) as view:
            for m in self.members:
                pos = m.pos
                if (pos < end or m.notes) and not m.blocked:
                    if m.notes or m.count_out or now < m.quiet_until:
                        if not self._send_member(m, view):
                            failed.append(m)
                            continue
                    else:
                        try:
                            n = m.sock.send(view[pos - base:])
                        except WOULD_BLOCK:
                            n = 0
                        except OSError:
                            failed.append(m)
                            continue
                        m.sent_at = now
                        m.pos = pos = pos + n
                        if pos < end:
                            self._block(m)
                    pos = m.pos
                if m.blocked and end - pos > limit:   # the kernel refuses more, too
                    slow.append(m)
                elif pos < low:
                    low = pos
        for m in failed:
            self.server.drop(m, "connection lost while sending")
        for m in slow:
            self.server.drop(m, f"not reading: over {limit} bytes waiting")
        if low > self.base:
            del self.stream[:low - self.base]
            self.base = low

    def flush_member(self, m: Member) -> None:
        """Send one member what it can take now (it became writable)."""
        self._send_each((m,))

    def _send_each(self, members) -> None:
        """The careful path for each of `members`; drop those whose connection failed."""
        with memoryview(self.stream) as view:
            failed = [m for m in members if not self._send_member(m, view)]
        for m in failed:
            self.server.drop(m, "connection lost while sending")

    def _send_member(self, m: Member, view: memoryview) -> bool:
        """The careful path: notes, the count, the quiet gaps. False: dead."""
        end, base, now = self.end, self.base, self.loop.now
        try:
            while True:
                if m.count_out:   # a count line, once begun, goes out whole and alone
                    n = m.sock.send(m.count_out)
                    m.count_out = m.count_out[n:]
                    m.sent_at = now
                    if m.count_out:
                        break
                    m.quiet_until = now + self.gap
                    continue
                owed = m.counted != self.count_serial
                if not (m.notes or m.pos < end or owed):
                    break
                if now + HOLD_SLACK < m.quiet_until:
                    self._hold(m, m.quiet_until)
                    break
                notes = m.notes
                if notes and notes[0][0] <= m.pos:
                    data = notes[0][1]
                    n = m.sock.send(data)
                    m.sent_at = now
                    if n < len(data):
                        notes[0] = (notes[0][0], data[n:])
                        break
                    notes.popleft()
                    if not notes:
                        m.notes = None
                elif m.pos < end:
                    stop = min(end, notes[0][0]) if notes else end
                    n = m.sock.send(view[m.pos - base:stop - base])
                    m.sent_at = now
                    m.pos += n
                    if m.pos < stop:
                        break
                elif now + HOLD_SLACK < m.sent_at + self.gap:   # owed: wait for quiet
                    self._hold(m, m.sent_at + self.gap)
                    break
                else:
                    m.counted = self.count_serial
                    m.count_out = self.count_text
        except WOULD_BLOCK:
            pass
        except OSError:
            return False
        # waiting for the kernel, not for a quiet gap to end
        pending = m.pos < end or bool(m.notes) or bool(m.count_out)
        blocked = pending and now + HOLD_SLACK >= m.quiet_until
        if blocked != m.blocked:
            m.blocked = blocked
            self.server.set_interest(m)
        return True

    def _block(self, m: Member) -> None:
        if not m.blocked:
            m.blocked = True
            self.server.set_interest(m)

    def _hold(self, m: Member, until: float) -> None:
        """Come back to m at `until`: its gap is over (one timer for all)."""
        if m.held:
            return
        m.held = True
        heapq.heappush(self.held, (until, next(self.hold_seq), m))
        if self.hold_timer is None or self.hold_timer.when > until:
            if self.hold_timer:
                self.hold_timer.cancel()
            self.hold_timer = self.loop.call_at(until, self._release_held)

    def _release_held(self) -> None:
        """Send to the held members whose gap is over (give or take 10 ms)."""
        self.hold_timer = None
        now = self.loop.now = time.monotonic()
        held, due = self.held, []
        while held and held[0][0] <= now + HOLD_SLACK:
            m = heapq.heappop(held)[2]
            m.held = False
            due.append(m)
        self._send_each([m for m in due if m.state is IN_ROOM])
        if held and self.hold_timer is None:
            self.hold_timer = self.loop.call_at(held[0][0], self._release_held)

    # -- presence: joins, leaves and the count --------------------------
    def arrive(self, m: Member) -> None:
        """A named member enters once its welcome delay has passed."""
        m.state = WELCOMING
        m.ready_at = max(m.since + self.settings.welcome_delay, self.server.join_slot(m.ip))
        self.names[m.name.casefold()] = m
        self.arrivals.append(m)
        self._presence_at(m.ready_at)

    def leave(self, m: Member) -> None:
        """Forget a member; the room hears it left if it was in."""
        if self.names.get(m.name.casefold()) is m:
            del self.names[m.name.casefold()]
        if m.state is WELCOMING:
            self.arrivals.remove(m)
        elif m.state is IN_ROOM:
            del self.members[m]   # a held entry is skipped once m is gone
            if not self.closing:
                self.broadcast(left_notice(m.name))
                self.count_due = True
                self._presence_at(self.loop.now)

    def _presence_at(self, when: float) -> None:
        timer = self.presence_timer
        if timer is not None and timer.when <= when:
            return
        if timer is not None:
            timer.cancel()
        self.presence_timer = self.loop.call_at(when, self._presence)

    def _presence(self) -> None:
        """Welcome whoever is due (or nearly), then the count, at most so often."""
        self.presence_timer = None
        now = self.loop.now = time.monotonic()
        soon = now + self.settings.join_window
        due = [m for m in self.arrivals if m.ready_at <= soon]
        if due:
            self.arrivals = [m for m in self.arrivals if m.ready_at > soon]
            self._welcome(due)
        if self.count_due and not self.closing:
            next_count = self.count_at + self.settings.count_interval
            if now >= next_count:
                self._announce_count(now)
            else:
                self._presence_at(next_count)
        if self.arrivals:
            self._presence_at(min(m.ready_at for m in self.arrivals))

    def _announce_count(self, now: float) -> None:
        self.count_due = False
        self.count_at = now
        self.count_text = count_notice(len(self.members)).encode()
        self.count_serial += 1
        log.info("%d online", len(self.members))
        if self.count_timer is None:
            self.count_timer = self.loop.call_at(self.last_said + self.gap, self._deliver_count)

    def _deliver_count(self) -> None:
        """Once the room has been quiet for the gap, give the count to whoever
        is owed it; while it chats, this costs one timer per gap, not one per member."""
        self.count_timer = None
        now = self.loop.now = time.monotonic()
        if now + HOLD_SLACK < self.last_said + self.gap:
            self.count_timer = self.loop.call_at(self.last_said + self.gap, self._deliver_count)
            return
        serial = self.count_serial
        self._send_each([m for m in self.members
                         if m.counted != serial and not (m.blocked or m.held)])

    def _welcome(self, newcomers: list[Member]) -> None:
        folded = len(newcomers) > self.settings.fold_joins
        if folded:
            self.broadcast(folded_join_notice([m.name for m in newcomers]))
        for m in newcomers:
            m.state = IN_ROOM
            m.pos = self.end
            m.counted = self.count_serial   # owed only the count that includes it
            self.members[m] = None
            if folded:
                self.tell(m, joined_notice(m.name))
        self.count_due = True
        if not folded:
            for m in newcomers:
                self.broadcast(joined_notice(m.name))
        for m in newcomers:
            if m.name != split_key(m.claimed)[0].strip():
                self.tell(m, f"the room knows you as {m.name}\n")
            self.server.welcomed(m)
        log.info("joined: %s", ", ".join(f"{m.name} from {m.ip}" for m in newcomers))

    def stop_notice(self) -> None:
        """The last broadcast: the stop lines, and no more counts."""
        self.closing = True
        for m in self.members:
            m.counted = self.count_serial
        self.broadcast(STOP_NOTICE)

    def snapshot(self) -> list[tuple[str, str, float, str]]:
        """(name, ip, wall-clock join time, kind) of everyone in, in join order;
        kind is "App", "terminal" or "web" (for now always "terminal")."""
        offset = time.time() - time.monotonic()
        return [(m.name, m.ip, m.ready_at + offset, "terminal") for m in self.members]


class StartError(Exception):
    """The server cannot start; the message says why and what to do."""


# What to change when the address cannot be used, in the words of where it is said.
FLAG_ADVICE = {
    "host": "use --host 0.0.0.0 to listen on every network, or one of this machine's addresses",
    "port": "choose a port above 1023 with --port"}
# getaddrinfo's "no such name" errors (create_server hides the gaierror class)
NAME_ERRORS = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_AGAIN", "EAI_FAIL",
                                                  "EAI_NODATA", "EAI_ADDRFAMILY")
               if hasattr(socket, name)}


def bind_error_text(e: OSError, host: str, port: int, advice: dict = FLAG_ADVICE) -> str:
    """One sentence: why `host` port `port` cannot be listened on, and what to do."""
    if e.errno == errno.EADDRINUSE:
        return (f"Port {port} is already in use (is another server running?): "
                f"stop that program or choose another port.")
    if e.errno == errno.EADDRNOTAVAIL:
        return f"The address {host} is not on this machine: {advice['host']}."
    if e.errno == errno.EACCES:
        return (f"Not allowed to listen on port {port} (ports below 1024 need "
                f"administrator rights): {advice['port']}.")
    if isinstance(e, socket.gaierror) or e.errno in NAME_ERRORS:
        return f"Cannot find the address of {host!r}: {advice['host']}."
    reason = (e.strerror or str(e)).split(" (while attempting")[0]
    return f"Cannot listen on {host} port {port}: {reason}."


def tls_context(cert: str, key: str):
    """A server-side TLS 1.2+ context; raises StartError with a sentence."""
    if ssl is None:
        raise StartError("This Python has no ssl module, so it cannot encrypt; "
                         "run without --tls-cert.")
    problem = tls_files_problem(cert, key)
    if problem:
        raise StartError(problem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:   # an empty passphrase: a key that has one fails here rather than prompting
        context.load_cert_chain(cert, key or None, password=lambda: b"")
    except (OSError, ssl.SSLError) as e:
        if getattr(e, "reason", None) == "KEY_VALUES_MISMATCH":
            raise StartError(f"The key {key or cert} does not belong to the certificate {cert}: "
                             f"give the matching key with --tls-key FILE.") from None
        raise StartError(f"Cannot use the certificate {cert} with the key {key or cert}: one of "
                         f"them is damaged or locked with a passphrase; make a new pair "
                         f"(README, Privacy).") from None
    return context


def tls_files_problem(cert: str, key: str) -> str | None:
    """What reading the certificate and key files shows is wrong, in a sentence."""
    texts = {}
    for path in dict.fromkeys(p for p in (cert, key) if p):
        try:
            with open(path, "rb") as f:
                texts[path] = f.read(1 << 20)
        except OSError as e:
            return f"Cannot read {path} ({e.strerror}): check the file's name and permissions."
    if b"-----BEGIN CERTIFICATE-----" not in texts[cert]:
        return (f"{cert} holds no certificate (PEM text starting -----BEGIN CERTIFICATE-----): "
                f"give the certificate file with --tls-cert FILE.")
    if b"PRIVATE KEY-----" not in texts[key or cert]:
        if key:
            return f"{key} holds no private key: give the certificate's key with --tls-key FILE."
        return f"{cert} holds no private key; give it with --tls-key FILE."
    return None


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft open-files limit toward the hard one; return the soft limit."""
    if resource is None:
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else wanted


class Server:
    """Listens, accepts, reads members' lines and enforces the limits."""

    SPARE_FILES = 32   # descriptors kept for the log, the GUI and look-ups
    KEY_FAILURE_MEMORY = 60.0   # seconds after which wrong keys from an IP are forgotten

    def __init__(self, settings: Settings, loop: Loop | None = None):
        self.settings = settings
        self.loop = loop or Loop()
        self.room = Room(self.loop, settings, self)
        self.connections: set[Member] = set()
        self.per_ip: collections.Counter = collections.Counter()   # address_group -> connections
        self.recent: dict[str, tuple[float, float]] = {}   # address_group -> welcome tokens, time
        self.handshakes: collections.deque = collections.deque()   # (deadline, member)
        self.listener: socket.socket | None = None
        self.address: tuple[str, int] = ("", 0)
        self.capacity = settings.max_clients
        self.accept_error_logged = False
        self.stopping = False
        self.allow = [ipaddress.ip_network(n, strict=False) for n in settings.allow]
        self.tls = None                                  # ssl.SSLContext when encrypting
        self.key_failures: dict[str, tuple[int, float]] = {}   # ip -> (count, last time)

    # -- start and stop -------------------------------------------------
    def listen(self) -> tuple[str, int]:
        """Bind and listen; raises StartError with a sentence for the person."""
        s = self.settings
        if s.tls_cert:
            self.tls = tls_context(s.tls_cert, s.tls_key)
        try:
            family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
            dual = family == socket.AF_INET6 and s.host == "::" and socket.has_dualstack_ipv6()
            sock = socket.create_server((s.host, s.port), family=family, backlog=4096,
                                        dualstack_ipv6=dual)
        except OSError as e:
            raise StartError(bind_error_text(e, s.host, s.port)) from None
        sock.setblocking(False)
        self.listener = sock
        self.address = sock.getsockname()[:2]
        self.capacity = min(s.max_clients,
                            raise_open_files_limit(s.max_clients + self.SPARE_FILES) - self.SPARE_FILES)
        self.loop.watch(sock, EVENT_READ, self._on_accept, sock)
        self.loop.call_later(1.0, self._sweep_handshakes)
        log.info("listening on %s port %d (up to %d members)", self.address[0],
                 self.address[1], self.capacity)
        if self.tls:
            log.info("encrypted with TLS: PrivateChatRoom-App cannot join (it speaks no TLS); "
                     "members join with: python3 pcr_server.py --connect HOST:PORT --tls")
        if s.room_key:
            log.info("this room needs a key: members join as name#KEY")
        return self.address

    def serve(self) -> None:
        """Run the loop until stop() has finished."""
        self.loop.run()

    def stop(self) -> None:
        """Tell members the server stops, flush (bounded), close, end the loop."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping")
        if self.listener:
            self.loop.unwatch(self.listener)
            self.listener.close()
        for m in list(self.connections):
            if m.state is not IN_ROOM:
                self.drop(m, "server stopping")
            elif m.reading:
                m.reading = False
                self.set_interest(m)
        self.room.stop_notice()
        self._finish_stop(time.monotonic() + self.settings.stop_flush)

    def _finish_stop(self, deadline: float) -> None:
        room = self.room
        waiting = [m for m in room.members if m.pos < room.end or m.notes or m.count_out]
        if waiting and time.monotonic() < deadline:
            self.loop.call_later(0.02, self._finish_stop, deadline)
            return
        for m in list(self.connections):
            self._close(m)
        log.info("stopped")
        self.loop.running = False

    # -- accepting ------------------------------------------------------
    def _on_accept(self, listener: socket.socket, _mask: int) -> None:
        for _ in range(512):
            try:
                sock, addr = listener.accept()
            except WOULD_BLOCK:
                self.accept_error_logged = False   # backlog drained: the crunch is over
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(e)
                    return
                # a connection that failed before it was accepted; the next may not
                log.debug("accept failed: %s", e)
                continue
            self._admit(sock, plain_ip(addr[0]), addr[1])

    def _pause_accepting(self, e: OSError) -> None:
        if not self.accept_error_logged:
            log.error("cannot accept more connections (%s); pausing %.1f s",
                      e.strerror, self.settings.accept_pause)
            self.accept_error_logged = True
        self.loop.unwatch(self.listener)
        self.loop.call_later(self.settings.accept_pause, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self.stopping:
            self.loop.watch(self.listener, EVENT_READ, self._on_accept, self.listener)

    def _refusal(self, ip: str, group: str) -> str | None:
        """Why a new connection from `ip` is turned away, or None."""
        s = self.settings
        if self.allow:
            addr = ipaddress.ip_address(ip)
            if not any(addr.version == n.version and addr in n for n in self.allow):
                return ""
        if len(self.connections) >= self.capacity:
            return f"the room is full ({self.capacity} connections); please try again later\n"
        if self.per_ip[group] >= s.max_per_ip:
            return (f"too many connections from your address (at most {s.max_per_ip}); "
                    f"close one and try again\n")
        return None

    def join_slot(self, ip: str) -> float:
        """When a newcomer from `ip` may be welcomed, as far as its address goes.

        An address gets 4 x max_per_ip welcomes at once, then that many a
        minute; later ones wait their turn.  Reconnecting in a loop thus
        cannot flood the room with join and leave lines, and nobody is refused.
        """
        group, now = address_group(ip), self.loop.now
        burst = 4.0 * self.settings.max_per_ip
        rate = burst / self.settings.churn_period
        tokens, stamp = self.recent.get(group, (burst, now))
        tokens = min(burst, tokens + (now - stamp) * rate) - 1.0
        self.recent[group] = (tokens, now)
        return now if tokens >= 0 else now - tokens / rate

    def _admit(self, sock: socket.socket, ip: str, port: int) -> None:
        group = address_group(ip)
        refusal = self._refusal(ip, group)
        if refusal is not None:
            log.warning("refused %s: %s", ip, refusal.strip() or "not in --allow")
            # a TLS client could not read a plain line: it only sees the close
            self._send_and_close(sock, "" if self.tls else refusal)
            return
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            else:
                sock.send(ALIAS_PROMPT)
        except OSError:
            sock.close()
            return
        m = Member(sock, ip, port, self.loop.now)
        self.connections.add(m)
        self.per_ip[group] += 1
        self.handshakes.append((self.loop.now + self.settings.handshake_timeout, m))
        self.loop.watch(sock, EVENT_READ, self._on_member, m)
        log.debug("connection from %s port %d", ip, port)
        if self.tls:
            m.state = SECURING
            self._secure(m)

    def _secure(self, m: Member) -> None:
        """One step of the TLS handshake; then the ALIAS prompt."""
        try:
            m.sock.do_handshake()
            m.sock.send(ALIAS_PROMPT)
        except ssl.SSLWantReadError:
            m.reading, m.blocked = True, False
        except ssl.SSLWantWriteError:
            m.reading, m.blocked = False, True
        except (ssl.SSLError, OSError) as e:
            log.info("closed %s: TLS handshake failed (%s)", m.ip,
                     getattr(e, "reason", None) or e.__class__.__name__)
            self._close(m)
            return
        else:
            m.state = NAMING
            m.reading, m.blocked = True, False
        self.set_interest(m)

    @staticmethod
    def _send_and_close(sock: socket.socket, text: str) -> None:
        """Best effort: one line for the person, then a clean close."""
        try:
            sock.setblocking(False)
            if text:
                sock.send(text.encode())
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def _sweep_handshakes(self) -> None:
        """Close connections that gave no alias in time (checked every second)."""
        now = self.loop.now
        while self.handshakes and self.handshakes[0][0] <= now:
            _, m = self.handshakes.popleft()
            if m.state is SECURING or m.state is NAMING:
                log.info("closed %s: no alias within %g s", m.ip, self.settings.handshake_timeout)
                self._close(m)
        for group, (_, last) in list(self.key_failures.items()):
            if now - last > self.KEY_FAILURE_MEMORY:
                del self.key_failures[group]
        for group, (_, last) in list(self.recent.items()):
            if now - last > self.settings.churn_period:   # its bucket is full again
                del self.recent[group]
        if not self.stopping:
            self.loop.call_later(1.0, self._sweep_handshakes)

    # -- reading --------------------------------------------------------
    def _on_member(self, m: Member, mask: int) -> None:
        if m.state is GONE:   # closed earlier in this same turn
            return
        try:
            if m.state is SECURING:
                self._secure(m)
                return
            if mask & EVENT_WRITE:
                self.room.flush_member(m)
            if mask & EVENT_READ and m.state is not GONE and m.reading:
                self._read(m)
        except Exception as e:   # a bug met by one member costs that member only
            log_fault(f"serving {m.name or m.ip}", e)
            self.drop(m, "internal error")

    def _read(self, m: Member) -> None:
        while True:
            try:
                data = m.sock.recv(RECV_SIZE)
            except WOULD_BLOCK:
                return
            except OSError:
                self.drop(m, "connection reset")
                return
            if not data:
                if m.inbuf and m.state is IN_ROOM and not m.skipping:
                    self._say(m, m.inbuf)
                self.drop(m, "disconnected")
            elif m.state is NAMING:
                self._name(m, data)
            else:
                self._take_lines(m, m.inbuf + data if m.inbuf else data)
            # TLS may hold decrypted bytes that the selector cannot see
            if not (self.tls and m.reading and m.state is not GONE and m.sock.pending()):
                return

    def _name(self, m: Member, data: bytes) -> None:
        raw, rest = split_alias(data)
        m.claimed = wanted = decode_line(raw)
        key = self.settings.room_key
        if key:
            wanted, given = split_key(m.claimed)
            if not hmac.compare_digest(given.encode(), key.encode()):
                self._wrong_key(m)
                return
        m.name = self.room.reserve_name(clean_name(wanted))
        # typed ahead: whole lines wait for the welcome; an endless tail is cut
        whole = rest.rfind(b"\n") + 1
        m.inbuf = rest[:whole] + rest[whole:whole + self.settings.max_line + 2]
        m.tokens = self._burst()
        m.reading = False   # until welcomed: what it types waits in the kernel
        self.set_interest(m)
        self.room.arrive(m)

    def _wrong_key(self, m: Member) -> None:
        """Answer a wrong or missing key after a delay that grows per IP."""
        group = address_group(m.ip)
        count, last = self.key_failures.get(group, (0, 0.0))
        count += 1
        self.key_failures[group] = (count, self.loop.now)
        log.warning("wrong or missing room key from %s (attempt %d)", m.ip, count)
        m.reading = False
        self.set_interest(m)
        delay = min(0.25 * 2 ** (count - 1), 8.0)
        self.loop.call_later(delay, self._close, m,
                             "this room needs a key: join with your name followed by #KEY "
                             "(ask the host for the key)\n")

    def welcomed(self, m: Member) -> None:
        """Called once m is in the room: it may speak."""
        self._listen_again(m)

    def _listen_again(self, m: Member) -> None:
        """Read m again, starting with what it sent while it had to wait."""
        m.reading = True
        self.set_interest(m)
        if m.inbuf:
            data, m.inbuf = m.inbuf, b""
            self._take_lines(m, data)

    def _burst(self) -> float:
        """Lines a member may send at once before the rate applies."""
        return 2.0 * self.settings.line_rate

    def _take_lines(self, m: Member, buf: bytes) -> None:
        """Relay each whole line in buf; keep the rest; honour the limits."""
        s = self.settings
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if s.line_rate and not self._spend_token(m):
                m.inbuf = buf[start:]
                return
            line = buf[start:nl]
            start = nl + 1
            if m.skipping:
                m.skipping = False
            elif len(line) - line.endswith(b"\r") > s.max_line:
                self._too_long(m)
            elif not self._say(m, line):
                return
        rest = buf[start:]
        if len(rest) > s.max_line + 1:
            if not m.skipping:
                m.skipping = True
                self._too_long(m)
            rest = b""
        m.inbuf = rest

    def _too_long(self, m: Member) -> None:
        log.info("%s sent a line over %d bytes; not relayed", m.name, self.settings.max_line)
        self.room.tell(m, f"your line was longer than {self.settings.max_line} bytes "
                          f"and was not sent\n")

    def _spend_token(self, m: Member) -> bool:
        """Take one line from m's rate bucket; if empty, pause reading m."""
        rate = self.settings.line_rate
        now = self.loop.now
        m.tokens = min(self._burst(), m.tokens + (now - m.stamp) * rate)
        m.stamp = now
        if m.tokens >= 1.0:
            m.tokens -= 1.0
            return True
        if m.resume is None:
            m.reading = False
            self.set_interest(m)
            m.resume = self.loop.call_later((1.0 - m.tokens) / rate, self._resume_reading, m)
        return False

    def _resume_reading(self, m: Member) -> None:
        m.resume = None
        if m.state is IN_ROOM and not self.stopping:
            self._listen_again(m)

    def _say(self, m: Member, raw: bytes) -> bool:
        """Relay one line from m; False if the line was m's goodbye."""
        text = decode_line(raw)
        if is_leave_line(text, m.claimed, m.name):
            self.drop(m, "left")
            return False
        line = relay_line(text, m.claimed, m.name)
        if line is not None:
            self.room.broadcast(line)
        return True

    def disconnect(self, name: str) -> bool:
        """The host removes a member by name; False if nobody has that name."""
        m = self.room.names.get(name.casefold())
        if m is None or m.state is not IN_ROOM:
            return False
        self.drop(m, "disconnected by the host", "you have been disconnected by the host\n")
        return True

    # -- interest and closing -------------------------------------------
    def set_interest(self, m: Member) -> None:
        """Make the selector's interest match what m is waiting for."""
        if m.state is GONE:
            return
        events = (EVENT_READ if m.reading else 0) | (EVENT_WRITE if m.blocked else 0)
        if events == m.events:
            return
        if not events:
            self.loop.unwatch(m.sock)
        elif not m.events:
            self.loop.watch(m.sock, events, self._on_member, m)
        else:
            self.loop.rewatch(m.sock, events, self._on_member, m)
        m.events = events

    def drop(self, m: Member, reason: str, farewell: str = "") -> None:
        """Close m for good (after `farewell`); the room hears it left if it was in."""
        if m.state is GONE:
            return
        was_in = m.state is IN_ROOM
        self.room.leave(m)
        self._close(m, farewell)
        if was_in:
            log.info("%s (%s) left: %s", m.name, m.ip, reason)
        else:
            log.debug("connection from %s closed: %s", m.ip, reason)

    def _close(self, m: Member, farewell: str = "") -> None:
        """Release m's socket and counts (the room is told by drop())."""
        if m.state is GONE:
            return
        m.state = GONE
        if m.resume:
            m.resume.cancel()
        if m.events:
            self.loop.unwatch(m.sock)
        self._send_and_close(m.sock, farewell)
        self.connections.discard(m)
        group = address_group(m.ip)
        self.per_ip[group] -= 1
        if not self.per_ip[group]:
            del self.per_ip[group]


# ---------------------------------------------------------------------------
# 4. Host addresses
# ---------------------------------------------------------------------------

HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")


def host_from_text(text: str) -> str | None:
    """The listen address typed by a person (an IP or a host name), or None.

    Digits and dots alone are an IP address or nothing: no host name is all
    digits (`999.1.1.1` is a typo, not a name to look up).
    """
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        if not HOST_NAME.fullmatch(host) or host.replace(".", "").isdigit():
            return None
        return host


def host_port(host: str, port: int) -> str:
    """host:port as people write it ([v6]:port for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True if only this machine can reach `host` (127.x.x.x, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_network_host(host: str, private_ip: str) -> str:
    """What people on the same network connect to: the listen address when it
    is one address (or a name), else this machine's private IPv4."""
    try:
        return private_ip if ipaddress.ip_address(host).is_unspecified else host
    except ValueError:
        return host


def forward_advice(port: int) -> str:
    return f"forward TCP port {port} on your router to this machine first"


def bind_problem(host: str, port: int, advice: dict = FLAG_ADVICE,
                 held_port: int = 0) -> str | None:
    """Why this machine cannot listen on host:port, found by binding it for a
    moment; None if it can.  `held_port` is in use by this program: a restart frees it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as e:
        if e.errno == errno.EADDRINUSE and port == held_port:
            return None
        return bind_error_text(e, host, port, advice)
    return None


def private_ipv4() -> str:
    """The address of the interface that routes outward, or 'unknown'."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))   # UDP connect picks a route, sends nothing
            return s.getsockname()[0]
    except OSError:
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "unknown"


def mac_address() -> str:
    """This machine's MAC as aa:bb:cc:dd:ee:ff, or 'unknown' if Python made one up."""
    node = uuid.getnode()
    if node >> 40 & 1:   # the multicast bit: a random stand-in, not a real MAC
        return "unknown"
    return ":".join(f"{node >> shift & 0xff:02x}" for shift in range(40, -8, -8))


def fetch_public_ip(url: str, timeout: float = 4.0) -> str:
    """One GET to a what-is-my-IP service; raises OSError or ValueError."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        text = reply.read(100).decode("ascii", "replace").strip()
    return str(ipaddress.ip_address(text))


def look_up_public_ip(url: str, done: Callable[[str | None], None]) -> None:
    """Fetch the public IP in a background thread; call done(ip or None) there."""
    def work():
        try:
            ip = fetch_public_ip(url)
        except (OSError, ValueError) as e:
            log.warning("public IP unavailable (%s)", getattr(e, "reason", e))
            done(None)
            return
        log.info("public IPv4: %s", ip)
        done(ip)
    threading.Thread(target=work, name="public-ip", daemon=True).start()


# ---------------------------------------------------------------------------
# 5. Logging
# ---------------------------------------------------------------------------

class PrivateLogFile(logging.handlers.RotatingFileHandler):
    """The rotating log, each file created readable by its owner only: it holds addresses."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def setup_logging(log_file: str, console: bool = True) -> None:
    """Log to a rotating file (4 files of 60000 bytes at most) and to stderr."""
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.propagate = False
    if console:
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(stream)
    if log_file:
        try:
            handler = PrivateLogFile(log_file, maxBytes=60000, backupCount=3, encoding="utf-8")
        except OSError as e:
            log.warning("cannot write the log file %s (%s); logging to the screen only",
                        log_file, e.strerror)
        else:
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            log.addHandler(handler)


# ---------------------------------------------------------------------------
# 6. The GUI
# ---------------------------------------------------------------------------

TICK_MS = 100         # how often the window reads news from other threads
MEMBER_TICKS = 4      # ask the room who is in every 4 ticks
LOG_LINES = 3000      # log lines the window keeps
QUIT_GRACE = 3.0      # seconds past stop_flush before closing anyway

STOPPED, STARTING, RUNNING, STOPPING, ERROR = "stopped", "starting", "running", "stopping", "error"
STATE_LOOK = {        # badge colour and word
    STOPPED: ("#868e96", "Stopped"),
    STARTING: ("#e8890c", "Starting"),
    RUNNING: ("#2f9e44", "Running"),
    STOPPING: ("#e8890c", "Stopping"),
    ERROR: ("#e03131", "Error"),
}
WINDOW_BG = "#f3f4f6"
NOTE_WRAP = 440       # pixels: the notes under the addresses wrap here
COPIED_MS = 4000      # how long the window says what was copied
WINDOW_ADVICE = {     # bind_error_text's advice, in the window's own words
    "host": "set the listen address to 0.0.0.0 (every network) or to one of this machine's addresses",
    "port": "choose a port above 1023"}
ADDRESS_KINDS = {     # kind -> (its title, whom it is for, whose address it is)
    "private": ("Same network", "on the same network", "this computer's address on the network"),
    "public": ("Over the internet", "over the internet", "this computer's public address")}
UNKNOWN = {           # why an address is not known -> (what the window shows, what Copy says)
    "looking": ("looking up…", "{whose} is still being looked up"),
    "off": ("not looked up", "{whose} was not looked up; your router's status page shows it"),
    "failed": ("unknown (look-up failed)", "{whose} could not be found"),
}


def since_text(when: float) -> str:
    """A wall-clock time as the member list shows it: the date only if not today."""
    t = time.localtime(when)
    if t[:3] == time.localtime()[:3]:
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%d %b %H:%M", t)


def privacy_text(settings: Settings) -> str:
    """Whether the room is encrypted and needs a key, in a few words."""
    encrypted = "encrypted (TLS)" if settings.tls_cert else "not encrypted"
    return f"{encrypted}, {'room key' if settings.room_key else 'no room key'}"


def member_row(name: str, ip: str, since: float, kind: str) -> tuple[str, str, str, str]:
    """A member as the list shows it: alias, kind, IP address, online since."""
    return name, kind, ip, since_text(since)


def show_line(label, text: str) -> None:
    """Show a label with `text`, or take it off the window while there is none."""
    label.configure(text=text)
    if text:
        label.grid()
    else:
        label.grid_remove()


def log_tag(levelno: int) -> str:
    """The log panel's colour tag for a record's level."""
    if levelno >= logging.ERROR:
        return "ERROR"
    return "WARNING" if levelno >= logging.WARNING else ""


class LogFeed(logging.Handler):
    """Hands formatted log records to the window through a queue (any thread)."""

    def __init__(self):
        super().__init__()
        self.records: queue.Queue = queue.Queue()   # (levelno, text)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.put((record.levelno, self.format(record)))
        except Exception:
            self.handleError(record)


class FormDialog:
    """A small form: a message, labelled boxes (none for a question), OK and
    Cancel, a line for what is wrong.

    OK calls accept(*texts); a sentence back is shown and keeps the form
    open, None closes it.
    """

    def __init__(self, parent, title: str, fields: list[tuple[str, str]],
                 accept: Callable[..., str | None], message: str = "", ok_text: str = "OK"):
        import tkinter as tk
        from tkinter import ttk
        self.accept = accept
        self.top = top = tk.Toplevel(parent, background=WINDOW_BG)
        top.title(title)
        top.transient(parent)
        top.resizable(False, False)
        form = ttk.Frame(top, padding=16)
        form.grid(sticky="nsew")
        self.message = ttk.Label(form, text=message, wraplength=340)
        if message:
            self.message.grid(row=0, column=0, columnspan=2, sticky="w", pady=(0, 8))
        self.entries = []
        for row, (label, value) in enumerate(fields, start=1):
            ttk.Label(form, text=label).grid(row=row, column=0, sticky="w", padx=(0, 12), pady=4)
            entry = ttk.Entry(form, width=22)
            entry.insert(0, value)
            entry.grid(row=row, column=1, sticky="ew", pady=4)
            self.entries.append(entry)
        self.problem = ttk.Label(form, text="", style="Problem.TLabel", wraplength=340)
        self.problem.grid(row=len(fields) + 1, column=0, columnspan=2, sticky="w", pady=(6, 0))
        buttons = ttk.Frame(form)
        buttons.grid(row=len(fields) + 2, column=0, columnspan=2, sticky="e", pady=(10, 0))
        self.cancel_button = ttk.Button(buttons, text="Cancel", command=self.close)
        self.ok_button = ttk.Button(buttons, text=ok_text, style="Go.TButton", command=self.ok)
        self.cancel_button.grid(row=0, column=0, padx=(0, 8))
        self.ok_button.grid(row=0, column=1)
        top.bind("<Return>", lambda _event: self.ok())
        top.bind("<Escape>", lambda _event: self.close())
        top.protocol("WM_DELETE_WINDOW", self.close)
        if self.entries:
            self.entries[0].focus_set()
            self.entries[0].select_range(0, "end")
        else:
            self.ok_button.focus_set()

    def is_open(self) -> bool:
        return bool(self.top.winfo_exists())

    def ok(self) -> None:
        problem = self.accept(*(entry.get() for entry in self.entries))
        if problem:
            self.problem.configure(text=problem)
        else:
            self.close()

    def close(self) -> None:
        self.top.destroy()


def serve_in_thread(server: Server, inbox: queue.Queue) -> None:
    """The GUI's server thread: listen, serve until stopped, close the loop.

    Tells the window through `inbox`: ("listening", server, address) or
    ("failed", server, sentence).
    """
    try:
        try:
            address = server.listen()
        except StartError as e:
            log.error("%s", e)
            inbox.put(("failed", server, str(e)))
            return
        inbox.put(("listening", server, address))
        server.serve()
    except Exception:
        log.exception("the server stopped on an unexpected error")
    finally:
        server.loop.close()


class ServerWindow:
    """The server's window: start and stop, addresses, who is in, the log.

    Everything here runs on the Tk thread.  The server runs on a thread of
    its own; the window reaches it only through loop.call_soon_threadsafe
    and hears back through `inbox`, read every TICK_MS by after().
    """

    def __init__(self, root, settings: Settings):
        self.root = root
        self.settings = dataclasses.replace(settings)
        self.state = STOPPED
        self.problem = ""                 # why the server is in ERROR
        self.server: Server | None = None
        self.thread: threading.Thread | None = None
        self.listening: tuple[str, int] | None = None
        self.start_error: str | None = None
        self.restart_pending = False
        self.quitting = False
        self.quit_deadline = 0.0
        self.close_requested = False      # set by a signal handler
        self.closed = False
        self.inbox: queue.Queue = queue.Queue()   # (kind, ...) from other threads
        self.log_feed = LogFeed()
        self.ips: dict[str, str | None] = {"private": None, "public": None}   # kind -> IP, once known
        self.unknown = {"private": "looking",                                 # kind -> why not yet
                        "public": "looking" if settings.public_ip_url else "off"}
        self.mac = "looking up…"
        self.rows: dict[str, tuple] = {}   # tree item -> (name, ip, since, kind)
        self.dialog: FormDialog | None = None
        self.ticks = 0
        self.flash_id = None
        self._style()
        self._build()
        log.addHandler(self.log_feed)
        self._look_up_addresses()
        self._show_members([])
        self._show_state()
        root.update_idletasks()
        root.minsize(root.winfo_reqwidth(), root.winfo_reqheight())
        root.protocol("WM_DELETE_WINDOW", self.close)
        self.tick_id = root.after(TICK_MS, self._tick)

    # -- building -------------------------------------------------------
    def _style(self) -> None:
        from tkinter import font, ttk
        for name, size in (("TkDefaultFont", 10), ("TkTextFont", 10), ("TkHeadingFont", 10),
                           ("TkFixedFont", 10)):
            font.nametofont(name).configure(size=size)
        font.nametofont("TkHeadingFont").configure(weight="bold")
        line = font.nametofont("TkDefaultFont").metrics("linespace")
        style = ttk.Style(self.root)
        style.theme_use("clam")
        self.root.configure(background=WINDOW_BG)
        style.configure(".", background=WINDOW_BG)
        style.configure("TLabelframe.Label", font="TkHeadingFont", foreground="#343a40")
        style.configure("TButton", padding=(12, 4), background="#e9ecef",
                        lightcolor="#e9ecef", darkcolor="#e9ecef", bordercolor="#adb5bd")
        style.map("TButton", background=[("disabled", "#eceef0"), ("active", "#dee2e6")],
                  lightcolor=[("disabled", "#eceef0"), ("active", "#dee2e6")],
                  darkcolor=[("disabled", "#eceef0"), ("active", "#dee2e6")],
                  bordercolor=[("disabled", "#ced4da")])
        for name, colour, dark in (("Go", "#2f9e44", "#2b8a3e"), ("Halt", "#e03131", "#c92a2a")):
            style.configure(f"{name}.TButton", foreground="white", background=colour,
                            lightcolor=colour, darkcolor=colour, bordercolor=dark)
            style.map(f"{name}.TButton",
                      foreground=[("disabled", "#9aa0a6")],
                      background=[("disabled", "#eceef0"), ("active", dark)],
                      lightcolor=[("disabled", "#eceef0"), ("active", dark)],
                      darkcolor=[("disabled", "#eceef0"), ("active", dark)],
                      bordercolor=[("disabled", "#ced4da")])
        style.configure("Key.TLabel", foreground="#6c757d")
        style.configure("Value.TLabel", font="TkHeadingFont")
        style.configure("Note.TLabel", foreground="#495057")
        style.configure("Problem.TLabel", foreground="#c92a2a")
        style.configure("Treeview", rowheight=line + 8, fieldbackground="white",
                        bordercolor="#ced4da", lightcolor="white")
        style.configure("Treeview.Heading", padding=(6, 4), background="#e9ecef",
                        lightcolor="#e9ecef", darkcolor="#e9ecef", bordercolor="#ced4da")
        style.map("Treeview", background=[("selected", "#1c7ed6")])
        style.configure("TScrollbar", arrowsize=13, background="#dee2e6", troughcolor="#f1f3f5",
                        bordercolor="#ced4da", lightcolor="#dee2e6", darkcolor="#dee2e6",
                        arrowcolor="#495057")

    def _build(self) -> None:
        from tkinter import ttk
        self.root.title(f"PrivateChatRoom-Server v{VERSION}")
        self.root.columnconfigure(0, weight=1)
        self.root.rowconfigure(0, weight=1)
        frame = ttk.Frame(self.root, padding=12)
        frame.grid(sticky="nsew")
        frame.columnconfigure(1, weight=1)
        frame.rowconfigure(2, weight=1)
        frame.rowconfigure(3, weight=2)
        self._build_bar(frame)
        side = ttk.Frame(frame)
        side.grid(row=2, column=0, sticky="nsew", padx=(0, 10))
        self._build_join(side)
        self._build_info(side)
        self._build_members(frame)
        self._build_log(frame)

    def _build_bar(self, frame) -> None:
        import tkinter as tk
        from tkinter import ttk
        bar = ttk.Frame(frame)
        bar.grid(row=0, column=0, columnspan=2, sticky="ew")
        bar.columnconfigure(4, weight=1)
        self.start_button = ttk.Button(bar, text="Start server", style="Go.TButton",
                                       command=self.start)
        self.stop_button = ttk.Button(bar, text="Stop server", style="Halt.TButton",
                                      command=self.stop)
        self.port_button = ttk.Button(bar, text="Change port…", command=self.change_port)
        self.address_button = ttk.Button(bar, text="Set listen address…",
                                         command=self.set_listen_address)
        for column, button in enumerate((self.start_button, self.stop_button, self.port_button,
                                         self.address_button)):
            button.grid(row=0, column=column, padx=(0, 16 if column == 1 else 6))
        self.badge = tk.Label(bar, width=10, foreground="white", padx=10, pady=3,
                              font="TkHeadingFont")
        self.badge.grid(row=0, column=5, sticky="e")
        self.status_line = ttk.Label(frame, style="Note.TLabel")
        self.status_line.grid(row=1, column=0, columnspan=2, sticky="ew", pady=(10, 8))
        bar.update_idletasks()   # the bar is the narrowest the window gets: wrap there
        self.status_line.configure(wraplength=bar.winfo_reqwidth())

    def _build_join(self, side) -> None:
        """The two addresses, each with its Copy button, and what else friends need."""
        from tkinter import ttk
        box = ttk.Labelframe(side, text="How friends join", padding=(12, 8))
        box.grid(row=0, column=0, sticky="nsew")
        self.address_rows = rows = ttk.Frame(box)
        rows.grid(row=0, column=0, sticky="ew")
        rows.columnconfigure(1, weight=1)
        self.addresses: dict[str, ttk.Label] = {}
        self.copy_buttons: dict[str, ttk.Button] = {}
        for row, (kind, (title, _, _)) in enumerate(ADDRESS_KINDS.items()):
            ttk.Label(rows, text=title, style="Key.TLabel").grid(row=row, column=0, sticky="w",
                                                                 pady=3, padx=(0, 14))
            self.addresses[kind] = ttk.Label(rows, style="Value.TLabel", width=-21)
            self.addresses[kind].grid(row=row, column=1, sticky="w", pady=3)
            self.copy_buttons[kind] = ttk.Button(rows, text="Copy", width=9,
                                                 command=lambda kind=kind: self.copy_address(kind))
            self.copy_buttons[kind].grid(row=row, column=2, sticky="e", pady=3, padx=(10, 0))
        self.forward_note = ttk.Label(rows, style="Note.TLabel", wraplength=NOTE_WRAP)
        self.forward_note.grid(row=2, column=0, columnspan=3, sticky="w", pady=(0, 3))
        notes = []
        for row, style in enumerate(("Problem", "Note", "Note", "Problem", "Note"), start=1):
            notes.append(ttk.Label(box, style=f"{style}.TLabel", wraplength=NOTE_WRAP))
            notes[-1].grid(row=row, column=0, sticky="w", pady=(4, 0))
        (self.loopback_warning, self.tls_note, self.key_note, self.key_warning,
         self.copied_note) = notes
        self.copied_note.grid_remove()

    def _build_info(self, side) -> None:
        from tkinter import ttk
        box = ttk.Labelframe(side, text="This server", padding=(12, 8))
        box.grid(row=1, column=0, sticky="nsew", pady=(10, 0))
        self.info: dict[str, ttk.Label] = {}
        for row, (key, title) in enumerate((("mac", "MAC address"), ("listen", "Listening on"),
                                            ("privacy", "Privacy"),
                                            ("online", "Members online"))):
            ttk.Label(box, text=title, style="Key.TLabel").grid(row=row, column=0, sticky="w",
                                                                pady=3, padx=(0, 14))
            self.info[key] = ttk.Label(box, style="Value.TLabel")
            self.info[key].grid(row=row, column=1, sticky="w", pady=3)
        self.info["listen"].configure(width=-24)   # at least: keeps the panel steady

    def _build_members(self, frame) -> None:
        from tkinter import ttk
        self.members_box = box = ttk.Labelframe(frame, text="Online (0)", padding=(10, 8))
        box.grid(row=2, column=1, sticky="nsew")
        box.columnconfigure(0, weight=1)
        box.rowconfigure(0, weight=1)
        self.tree = ttk.Treeview(box, columns=("alias", "kind", "ip", "since"), show="headings",
                                 height=5, selectmode="extended")
        for column, title, width, stretch in (("alias", "Alias", 150, True),
                                              ("kind", "Kind", 80, False),
                                              ("ip", "IP address", 120, False),
                                              ("since", "Online since", 125, False)):
            self.tree.heading(column, text=title, anchor="w")
            self.tree.column(column, width=width, minwidth=70, stretch=stretch, anchor="w")
        scroll = ttk.Scrollbar(box, orient="vertical", command=self.tree.yview)
        self.tree.configure(yscrollcommand=scroll.set)
        self.tree.grid(row=0, column=0, sticky="nsew")
        scroll.grid(row=0, column=1, sticky="ns")
        self.tree.bind("<<TreeviewSelect>>", lambda _event: self._show_disconnect())
        self.disconnect_button = ttk.Button(box, text="Disconnect selected",
                                            command=self.disconnect_selected)
        self.disconnect_button.grid(row=1, column=0, columnspan=2, sticky="e", pady=(8, 0))

    def _build_log(self, frame) -> None:
        import tkinter as tk
        from tkinter import ttk
        box = ttk.Labelframe(frame, text="Server log", padding=(10, 8))
        box.grid(row=3, column=0, columnspan=2, sticky="nsew", pady=(10, 0))
        box.columnconfigure(0, weight=1)
        box.rowconfigure(0, weight=1)
        self.log_text = tk.Text(box, height=8, width=90, wrap="word", font="TkFixedFont",
                                background="white", foreground="#212529", relief="flat",
                                borderwidth=0, highlightthickness=1, highlightcolor="#ced4da",
                                highlightbackground="#ced4da", padx=8, pady=6, state="disabled")
        self.log_text.tag_configure("WARNING", foreground="#b35c00")
        self.log_text.tag_configure("ERROR", foreground="#c92a2a")
        scroll = ttk.Scrollbar(box, orient="vertical", command=self.log_text.yview)
        self.log_text.configure(yscrollcommand=scroll.set)
        self.log_text.grid(row=0, column=0, sticky="nsew")
        scroll.grid(row=0, column=1, sticky="ns")

    # -- starting and stopping ------------------------------------------
    def start(self) -> None:
        """Open the room with the current settings, on a thread of its own."""
        if self.state not in (STOPPED, ERROR) or self.thread is not None or self.quitting:
            return
        problem = bind_problem(self.settings.host, self.settings.port, WINDOW_ADVICE)
        if problem:   # said here in the window's words; the server would name a flag
            log.error("%s", problem)
            self._set_state(ERROR, problem)
            return
        self.server = Server(dataclasses.replace(self.settings))
        self.thread = threading.Thread(target=serve_in_thread, args=(self.server, self.inbox),
                                       name="server", daemon=True)
        self._set_state(STARTING)
        self.thread.start()

    def stop(self) -> None:
        """Ask the server to stop; _tick notices when its thread has ended."""
        if self.server is None or self.state == STOPPING:
            return
        self._set_state(STOPPING)
        self.server.loop.call_soon_threadsafe(self.server.stop)

    def _server_ended(self) -> None:
        """The server thread is gone: show why, then restart or close if asked."""
        self.server = self.thread = self.listening = None
        self._show_members([])
        problem, self.start_error = self.start_error, None
        restart, self.restart_pending = self.restart_pending, False
        if self.quitting:
            self._destroy()
        elif problem:
            self._set_state(ERROR, problem)
        elif self.state == STOPPING:
            self._set_state(STOPPED)
            if restart:
                self.start()
        else:
            self._set_state(ERROR, "The server stopped unexpectedly; the log below says why.")

    def close(self) -> None:
        """The window's X: stop the server the clean way, then close."""
        if self.closed:
            return
        if self.server is None:
            self._destroy()
            return
        self.quitting = True
        self.quit_deadline = time.monotonic() + self.settings.stop_flush + QUIT_GRACE
        self.stop()
        self._show_state()

    def _destroy(self) -> None:
        if self.thread is not None:
            log.warning("the server did not stop in time; closing anyway")
        self.closed = True
        self.dialog = None
        log.removeHandler(self.log_feed)
        for after_id in (self.tick_id, self.flash_id):
            if after_id:
                self.root.after_cancel(after_id)
        self.root.destroy()

    # -- news from other threads ------------------------------------------
    def _tick(self) -> None:
        """Every TICK_MS: new log lines, news from the server and look-ups."""
        ended = self.thread is not None and not self.thread.is_alive()   # before the inbox
        self._show_log_lines()
        self._read_inbox()
        if ended:
            self._server_ended()
        if self.close_requested:
            self.close_requested = False
            self.close()
        if self.quitting and not self.closed and time.monotonic() > self.quit_deadline:
            self._destroy()
        if self.closed:
            return
        self.ticks += 1
        if self.state == RUNNING and self.ticks % MEMBER_TICKS == 0:
            server, inbox = self.server, self.inbox
            server.loop.call_soon_threadsafe(
                lambda: inbox.put(("members", server, server.room.snapshot())))
        self.tick_id = self.root.after(TICK_MS, self._tick)

    def _read_inbox(self) -> None:
        while True:
            try:
                kind, *news = self.inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "public-ip":
                self._learn_ip("public", news[0])
            elif kind == "host":
                self._learn_ip("private", news[0])
                self.mac = news[1]
            elif news[0] is not self.server:
                continue   # from a server that has been replaced
            elif kind == "listening":
                self.listening = news[1]
                if self.state == STARTING:
                    self.state = RUNNING
            elif kind == "failed":
                self.start_error = news[1]
            elif kind == "members" and self.state == RUNNING:
                self._show_members(news[1])
            self._show_state()

    def _look_up_addresses(self) -> None:
        """Private IP and MAC on one thread, the public IP on another."""
        inbox = self.inbox   # threads hold the queue, never the window (Tk dies on its own thread)
        threading.Thread(target=lambda: inbox.put(("host", private_ipv4(), mac_address())),
                         name="host-addresses", daemon=True).start()
        if self.settings.public_ip_url:
            look_up_public_ip(self.settings.public_ip_url, lambda ip: inbox.put(("public-ip", ip)))

    def _learn_ip(self, kind: str, ip: str | None) -> None:
        try:
            self.ips[kind] = str(ipaddress.ip_address(ip or ""))
        except ValueError:
            self.unknown[kind] = "failed"

    def _show_log_lines(self) -> None:
        lines = []
        while True:
            try:
                lines.append(self.log_feed.records.get_nowait())
            except queue.Empty:
                break
        if not lines:
            return
        text = self.log_text
        following = text.yview()[1] >= 0.999   # keep the end in view only if it was
        text.configure(state="normal")
        for levelno, line in lines[-LOG_LINES:]:
            text.insert("end", line + "\n", log_tag(levelno))
        excess = int(text.index("end-1c").split(".")[0]) - 1 - LOG_LINES
        if excess > 0:
            text.delete("1.0", f"{excess + 1}.0")
        text.configure(state="disabled")
        if following:
            text.see("end")

    # -- who is online ----------------------------------------------------
    def _show_members(self, snapshot: list[tuple[str, str, float, str]]) -> None:
        """Make the list match the room: drop who left, add who came.

        `snapshot` holds (name, ip, wall-clock join time, kind) per member.
        """
        tree, rows = self.tree, self.rows
        now_in = {member[0]: tuple(member) for member in snapshot}
        for item, (name, ip, since, kind) in list(rows.items()):
            new = now_in.pop(name, None)
            if new is None:
                tree.delete(item)
                del rows[item]
            elif new[1] != ip or abs(new[2] - since) > 1.0 or new[3] != kind:   # left, came back
                tree.item(item, values=member_row(*new))
                rows[item] = new
        for member in now_in.values():
            rows[tree.insert("", "end", values=member_row(*member))] = member
        self.info["online"].configure(text=str(len(rows)))
        self.members_box.configure(text=f"Online ({len(rows)})")
        self._show_disconnect()

    def _show_disconnect(self) -> None:
        usable = self.state == RUNNING and any(i in self.rows for i in self.tree.selection())
        self.disconnect_button.state(["!disabled"] if usable else ["disabled"])

    def disconnect_selected(self) -> None:
        """Remove the selected members: each gets a line saying so, the room sees them leave."""
        if self.state != RUNNING:
            return
        for item in self.tree.selection():
            if item in self.rows:
                self.server.loop.call_soon_threadsafe(self.server.disconnect, self.rows[item][0])

    # -- address ----------------------------------------------------------
    def _ask(self, title: str, fields: list[tuple[str, str]], accept: Callable[..., str | None],
             **options) -> None:
        if self.dialog is not None and self.dialog.is_open():
            self.dialog.top.lift()
            return
        self.dialog = FormDialog(self.root, title, fields, accept, **options)

    def change_port(self) -> None:
        """Ask for a port, save it to .pcr_port; a running server restarts on it."""
        self._ask("Change port", [("Port (1 to 65535)", str(self.settings.port))], self._take_port)

    def set_listen_address(self) -> None:
        """Ask for the address and port to listen on (0.0.0.0: every interface)."""
        self._ask("Set listen address",
                  [("Address (0.0.0.0: all)", self.settings.host),
                   ("Port (1 to 65535)", str(self.settings.port))], self._take_address)

    def _take_port(self, port_text: str) -> str | None:
        port = parse_port(port_text)
        if port is None:
            return f"{port_text.strip()[:20]!r} is not a port number from 1 to 65535."
        return self._use_address(self.settings.host, port)

    def _take_address(self, host_text: str, port_text: str) -> str | None:
        host, port = host_from_text(host_text), parse_port(port_text)
        if host is None:
            return f"{host_text.strip()[:40]!r} is not an IP address or host name."
        if port is None:
            return f"{port_text.strip()[:20]!r} is not a port number from 1 to 65535."
        return self._use_address(host, port)

    def _use_address(self, host: str, port: int) -> str | None:
        """Listen at host:port from now on; a sentence if this machine cannot.

        Checked before a running room is stopped; a restart that would
        disconnect members is asked about first.
        """
        running = self.state in (STARTING, RUNNING)
        if (host, port) != (self.settings.host, self.settings.port):
            problem = bind_problem(host, port, WINDOW_ADVICE,
                                   held_port=self.settings.port if running else 0)
            if problem:
                return problem
            if running and self.rows:
                self.root.after_idle(self._confirm_restart, host, port)   # once this form closes
                return None
        self._apply_address(host, port)
        return None

    def _confirm_restart(self, host: str, port: int) -> None:
        names = [member[0] for member in self.rows.values()]
        who = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        self._ask("Restart the room?", [], lambda: self._apply_address(host, port),
                  message=f"The room will restart on {host_port(host, port)}. Everyone in it "
                          f"({who}) will be disconnected and must join again at the new address.",
                  ok_text="Restart")

    def _apply_address(self, host: str, port: int) -> None:
        """Listen there from the next start (now, if running); keep the port in .pcr_port."""
        try:
            save_port_file(port)
        except OSError as e:
            log.warning("could not save the port to %s (%s)", PORT_FILE, e.strerror)
        if (host, port) != (self.settings.host, self.settings.port):
            self.settings = dataclasses.replace(self.settings, host=host, port=port)
            log.info("listen address set to %s", host_port(host, port))
            if self.state in (STARTING, RUNNING):
                self.restart_pending = True
                self.stop()
        self._show_state()

    # -- how friends join -------------------------------------------------
    def _listen_address(self) -> tuple[str, int]:
        return self.listening or (self.settings.host, self.settings.port)

    def _address(self, kind: str) -> str | None:
        """The address friends join at, for `kind` ("private" or "public"); None if not known."""
        host, port = self._listen_address()
        ip = self.ips[kind] if kind == "public" else same_network_host(host, self.ips[kind] or "")
        return host_port(ip, port) if ip else None

    def copy_address(self, kind: str) -> None:
        """Put one of the friends' addresses on the clipboard and say which; nothing while closed."""
        address, (_, whom, whose) = self._address(kind), ADDRESS_KINDS[kind]
        if self.state != RUNNING:
            said = "Nothing copied: the room is closed. Press Start server first."
        elif address is None:
            said = "Nothing copied: " + UNKNOWN[self.unknown[kind]][1].format(whose=whose) + "."
        else:
            self.root.clipboard_clear()
            self.root.clipboard_append(address)
            self.copy_buttons[kind].configure(text="Copied ✓")
            said = f"Copied {address}: give it to friends who join {whom}."
        show_line(self.copied_note, said)
        if self.flash_id:
            self.root.after_cancel(self.flash_id)
        self.flash_id = self.root.after(COPIED_MS, self._copied_shown)

    def _copied_shown(self) -> None:
        self.flash_id = None
        for button in self.copy_buttons.values():
            button.configure(text="Copy")
        show_line(self.copied_note, "")

    def _show_join(self) -> None:
        """The addresses and the router advice, or the warning that nobody else can
        join; the key form and a short-key warning."""
        host, port = self._listen_address()
        for kind, label in self.addresses.items():
            label.configure(text=self._address(kind) or UNKNOWN[self.unknown[kind]][0])
        self.forward_note.configure(text=f"Over the internet: {forward_advice(port)}.")
        local = is_loopback(host)
        if local:
            self.address_rows.grid_remove()
        else:
            self.address_rows.grid()
        show_line(self.loopback_warning,
                  f"Only this computer can join: the listen address is {host}. To let friends "
                  f"in, use Set listen address… and choose 0.0.0.0 (every network)." if local else "")
        show_line(self.tls_note, "The room is encrypted: the App cannot join; friends use the "
                  "terminal client in pcr_server.py, with encryption on (see its README)."
                  if self.settings.tls_cert else "")
        key = self.settings.room_key
        show_line(self.key_note, "Friends join as name#KEY: their name, then # and the room key."
                  if key else "")
        warning = short_key_warning(key)
        show_line(self.key_warning, warning[:1].upper() + warning[1:] + "." if warning else "")

    # -- showing the state --------------------------------------------------
    def _set_state(self, state: str, problem: str = "") -> None:
        self.state, self.problem = state, problem
        self._show_state()

    def _show_state(self) -> None:
        """Buttons, badge, status line and info panel as the state says."""
        state = self.state
        can_start = state in (STOPPED, ERROR) and not self.quitting
        can_stop = state in (STARTING, RUNNING) and not self.quitting
        self.start_button.state(["!disabled"] if can_start else ["disabled"])
        self.stop_button.state(["!disabled"] if can_stop else ["disabled"])
        colour, word = STATE_LOOK[state]
        self.badge.configure(text=f"● {word}", background=colour)
        self.status_line.configure(text=self._status_sentence(),
                                   style="Problem.TLabel" if state == ERROR else "Note.TLabel")
        next_address = host_port(self.settings.host, self.settings.port)
        self._show_join()
        self.info["mac"].configure(text=self.mac)
        self.info["listen"].configure(
            text=host_port(*self.listening) if self.listening else f"off (next: {next_address})")
        self.info["privacy"].configure(text=privacy_text(self.settings))
        self._show_disconnect()

    def _status_sentence(self) -> str:
        host, port = self._listen_address()
        listen = host_port(host, port)
        if self.quitting:
            return "Stopping the server before closing…"
        if self.state == RUNNING and is_loopback(host):
            return f"The room is open, but only this computer can join it ({listen})."
        return {
            STOPPED: f"The room is closed. Start server opens it on {listen}.",
            STARTING: f"Starting on {listen}…",
            RUNNING: f"The room is open on port {port}. Give friends one of the addresses below.",
            STOPPING: "Stopping: members are being told the server stops…",
            ERROR: self.problem,
        }[self.state]


def run_gui(settings: Settings, warnings: list[str] | tuple = ()) -> int:
    """Run the server from a window until it is closed; 1 if no window can open.

    `warnings` (from reading the settings) are logged once the window's log
    panel can show them.
    """
    try:
        import tkinter
    except ImportError:
        print("The --gui window needs tkinter, which is not installed; install it "
              "(for example `sudo apt install python3-tk`) or run without --gui.", file=sys.stderr)
        return 1
    try:
        root = tkinter.Tk()
    except tkinter.TclError:
        print("No display is available for the --gui window; run without --gui to serve "
              "from the terminal.", file=sys.stderr)
        return 1
    root.withdraw()   # shown once a signal can close it the clean way
    window = ServerWindow(root, settings)
    for warning in warnings:
        log.warning("%s", warning)

    def request_close(*_):
        window.close_requested = True   # _tick acts on it within TICK_MS
    for sig in STOP_SIGNALS:
        signal.signal(sig, request_close)
    root.deiconify()
    root.mainloop()
    return 0


# ---------------------------------------------------------------------------
# 7. Terminal client
# ---------------------------------------------------------------------------

CONNECT_TIMEOUT = 10.0   # seconds to reach the server and to be asked for a name
LEAVE_WAIT = 2.0         # seconds for the goodbye to go out before closing anyway
MAX_REFUSAL = 4096       # bytes of a refusal worth showing
TLS_GUESS = 1.5          # seconds of silence before a plain client asks whether the room speaks TLS
STOP_LINE = STOP_NOTICE.strip("\n").split("\n")[0]   # the first of the stop lines
STOP_LINES = set(STOP_NOTICE.split("\n"))             # all of them, and the blank ones
STOP_SAID = "the server has been stopped; join again once it is back online"
KNOWN_AS = "the room knows you as "
# OpenSSL's verify codes for a certificate that does not list the name or address used
NAME_MISMATCH = {62, 64}


class ClientError(Exception):
    """The client cannot go on; the message is one sentence for the person."""


def server_address(text: str) -> tuple[str, int]:
    """HOST, HOST:PORT, [IPv6]:PORT or a bare IPv6 address -> (host, port).

    The port defaults to DEFAULT_PORT; raises ArgumentTypeError like port_number().
    """
    text = text.strip()
    port = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not HOST[:PORT] (an IPv6 address goes in brackets: [::1]:{DEFAULT_PORT})")
        if rest:
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:   # a host name, or an IPv6 address without a port
        host = text
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r} has no host name or address")
    return host, DEFAULT_PORT if port is None else port_number(port)


def alias_text(name: str) -> str:
    """The alias to send, which is also every line's prefix: one line, valid UTF-8."""
    return " ".join(name.encode("utf-8", "replace").decode().splitlines()).strip()


def online_count(line: str) -> int | None:
    """n if `line` is exactly the room's count line for n people, else None."""
    head = line.partition(" ")[0]
    if not (head.isascii() and head.isdigit() and len(head) < 10):
        return None
    n = int(head)
    return n if count_notice(n) == line + "\n" else None


def shown_line(text: str) -> str:
    """A line from the server as the terminal shows it: safe, counts in brackets."""
    text = clean_text(text)
    if online_count(text) is not None:
        return f"[{text.rstrip('.')}]"
    return text


def client_tls_context(ca: str | None, insecure: bool) -> ssl.SSLContext:
    """Checks the server's certificate and name against `ca` (else the system's
    store), unless `insecure`; raises OSError if `ca` cannot be used."""
    context = ssl.create_default_context(cafile=ca)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def open_connection(host: str, port: int, context: ssl.SSLContext | None) -> socket.socket:
    """A connected socket, TLS-wrapped if `context`; ClientError saying why not."""
    where = host_port(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except socket.gaierror as e:
        raise ClientError(f"Cannot find the host {host} ({e.strerror}).") from None
    except ConnectionRefusedError:
        raise ClientError(f"Cannot reach {where}: the connection was refused "
                          f"(is the server running, on that port?).") from None
    except TimeoutError:
        raise ClientError(f"Cannot reach {where}: no answer within {CONNECT_TIMEOUT:g} seconds "
                          f"(check the address and any firewall in between).") from None
    except OSError as e:
        raise ClientError(f"Cannot reach {where}: {e.strerror or e}.") from None
    if context is None:
        return sock
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as e:
        raise ClientError(unproven_text(e, host, port, context)) from None
    except (ssl.SSLEOFError, ConnectionError):   # how a TLS server turns people away
        raise ClientError(f"{where} closed the connection during the TLS handshake "
                          f"(the room may be full, or not open to your address).") from None
    except ssl.SSLError as e:
        if e.reason == "WRONG_VERSION_NUMBER":   # it answered in plain text
            raise ClientError(f"{where} is not an encrypted room: connect without --tls "
                              f"(and without --ca or --insecure).") from None
        raise ClientError(f"No encrypted connection with {where} ({e.reason or e}); "
                          f"is the server using TLS?") from None
    except OSError as e:
        raise ClientError(f"The encrypted connection with {where} failed: {e.strerror or e}.") from None


def unproven_text(e: ssl.SSLCertVerificationError, host: str, port: int,
                  context: ssl.SSLContext) -> str:
    """The sentence for a certificate that failed the check: what to do about it."""
    where = host_port(host, port)
    names = certificate_names(host, port, context) if e.verify_code in NAME_MISMATCH else []
    if names:
        return (f"The certificate of {where} lists {', '.join(names)}, not {host}: connect with "
                f"one of those, or ask the host for a certificate that lists the address you use.")
    return (f"The server at {where} could not prove who it is "
            f"({(e.verify_message or e.reason or '').rstrip('.')}); give its "
            f"certificate with --ca FILE, or skip the check with --insecure.")


def certificate_names(host: str, port: int, context: ssl.SSLContext) -> list[str]:
    """The names and addresses the server's certificate lists, from a second
    handshake that checks the certificate but not the name; [] if it fails.
    (It turns off the name check in `context`, which is not used again.)"""
    context.check_hostname = False
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as raw, \
                context.wrap_socket(raw) as tls:
            listed = tls.getpeercert().get("subjectAltName", ())
    except (OSError, ValueError):
        return []
    return [str(ipaddress.ip_address(value)) if kind == "IP Address" else value
            for kind, value in listed if kind in ("DNS", "IP Address")]


def speaks_tls(host: str, port: int) -> bool:
    """True if host:port completes a TLS handshake (nothing is checked: this only asks)."""
    if ssl is None:
        return False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=TLS_GUESS) as raw, \
                context.wrap_socket(raw):
            return True
    except (OSError, ValueError):
        return False


def quiet_for(sock: socket.socket, seconds: float) -> bool:
    """True if nothing arrives on `sock` (plain) within `seconds`."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, EVENT_READ)
        return not selector.select(seconds)


def answer_prompt(sock: socket.socket, alias: str, host: str, port: int, tls: bool) -> bytes:
    """Wait for ALIAS and answer with the alias; returns what came after ALIAS.

    ClientError if the server said something else instead (a refusal, shown
    as it is), nothing in time, or closed; or, for a plain connection that
    hears nothing at first, if the room turns out to speak TLS.
    """
    where = host_port(host, port)
    if not tls and quiet_for(sock, TLS_GUESS) and speaks_tls(host, port):
        raise ClientError(f"{where} is an encrypted room: add --tls "
                          f"(and --ca FILE with the host's certificate).")
    got = b""
    try:
        while len(got) < len(ALIAS_PROMPT) and ALIAS_PROMPT.startswith(got):
            data = sock.recv(RECV_SIZE)
            if not data:
                break
            got += data
        if got.startswith(ALIAS_PROMPT):
            sock.sendall(f"{alias}\n".encode())
            return got[len(ALIAS_PROMPT):]
        while got and len(got) < MAX_REFUSAL and (data := sock.recv(RECV_SIZE)):
            got += data
    except TimeoutError:
        if not got:
            hint = "" if tls else ", or does it need --tls"
            raise ClientError(f"{where} did not ask for a name within {CONNECT_TIMEOUT:g} seconds "
                              f"(is it a PrivateChatRoom server{hint}?).") from None
    except OSError:   # reset: show what was said before it
        pass
    if got.startswith(ALIAS_PROMPT):
        raise ClientError("the server closed the connection")
    said = clean_text(got.decode("utf-8", "replace").replace("\n", " ")).strip()
    if not said:   # how a server turns away an address outside its --allow
        hint = "" if tls else ", and does the room need --tls"
        said = (f"{where} closed the connection without asking for a name "
                f"(is your address allowed in{hint}?)")
    raise ClientError(said)


class ClientSession:
    """One stay in a room: the server's lines printed, typed lines sent.

    The socket is touched only on the loop's thread (a TLS connection must
    not be read and written from two threads at once).  Typed lines come in
    from a stdin thread through call_soon_threadsafe; the main thread only
    waits, so Ctrl+C reaches it on every platform.
    """

    def __init__(self, sock: socket.socket, alias: str, where: str, out, early: bytes,
                 typed_shows: bool = False):
        self.loop = Loop()
        self.sock = sock
        self.alias = alias
        self.name = split_key(alias)[0].strip()   # as the room knows us, unless it says otherwise
        self.where = where
        self.out = out
        self.early = early         # what came after ALIAS in the same read
        self.typed_shows = typed_shows   # a terminal shows typed lines: do not print their echo
        self.inbuf = b""
        self.outbuf = bytearray()
        self.events = EVENT_READ
        self.held: list[str] | None = []   # lines before the welcome: a refusal if it closes
        self.inside = False        # the room has sent us its count: we are in
        self.leave_asked = False   # input ended before we were in
        self.leaving = False
        self.stopped = False       # the server said it is stopping
        self.code = 1
        self.problem = ""          # the sentence for stderr when the stay ends badly
        self.over = threading.Event()

    def stay(self, stdin) -> int:
        """Run until the person leaves or the server goes; the exit code."""
        threading.Thread(target=self._run, name="pcr-client", daemon=True).start()
        threading.Thread(target=self._read_typed, args=(stdin,), name="pcr-client-stdin",
                         daemon=True).start()
        try:
            while not self.over.wait(0.5):   # timed, so Ctrl+C gets through on Windows too
                pass
        except KeyboardInterrupt:
            self.loop.call_soon_threadsafe(self.leave)
            self.over.wait(LEAVE_WAIT + 1.0)
            return 0
        if self.problem:
            print(self.problem, file=sys.stderr, flush=True)
        return self.code

    def _read_typed(self, stdin) -> None:
        """Hand each typed line to the loop; at the end of input, leave (stdin thread)."""
        try:
            for line in stdin:
                text = line.rstrip("\r\n")
                if text.strip():   # the room drops blank lines anyway
                    self.loop.call_soon_threadsafe(self.say, text)
        except (OSError, ValueError):   # unreadable input ends the stay like Ctrl+D
            pass
        self.loop.call_soon_threadsafe(self.end_of_input)

    # -- the loop's thread ----------------------------------------------
    def _run(self) -> None:
        try:
            self.sock.setblocking(False)
            self.loop.watch(self.sock, EVENT_READ, self._on_socket, None)
            self._take(self.early)
            self.loop.call_soon(self._read)   # TLS may hold decrypted bytes already
            self.loop.run()
        finally:
            self.loop.unwatch(self.sock)
            self.sock.close()
            self.loop.close()
            self.over.set()

    def _on_socket(self, _obj, mask: int) -> None:
        if mask & EVENT_WRITE:
            self._write()
        if mask & EVENT_READ and self.loop.running:
            self._read()

    def _read(self) -> None:
        while self.loop.running:
            try:
                data = self.sock.recv(RECV_SIZE)
            except WOULD_BLOCK:
                return
            except OSError:
                data = b""
            if not data:
                self._server_gone()
                return
            self._take(data)

    def _take(self, data: bytes) -> None:
        """Show each whole line that has arrived; keep the rest."""
        *lines, self.inbuf = (self.inbuf + data).split(b"\n")
        if len(self.inbuf) > RECV_SIZE:   # no real line is that long: show it anyway
            lines.append(self.inbuf)
            self.inbuf = b""
        for raw in lines:
            self._show(decode_line(raw))

    def _show(self, text: str) -> None:
        """One line from the room, as this person should see it (or not at all)."""
        if self.leaving:   # said goodbye: the rest is not for this person any more
            return
        if self.held is not None and not self._welcomed(text):
            if len(self.held) < MAX_NOTES:
                self.held.append(text)
            return
        if text == STOP_LINE:
            self.stopped, text = True, STOP_SAID
        elif text in STOP_LINES or (self.typed_shows and text.startswith(f"{self.name}: ")):
            return   # the App's stop text, or the echo of a line the terminal shows already
        self._print(shown_line(text))
        if not self.inside and text.startswith(KNOWN_AS):
            self.name = text[len(KNOWN_AS):]
        elif not self.inside and online_count(text) is not None:
            self._in()

    def _welcomed(self, text: str) -> bool:
        """Whether `text` shows the room let us in (a join line or the count); the
        lines held back until then are shown first."""
        if not text.endswith(" joined the chat...") and online_count(text) is None:
            return False
        held, self.held = self.held, None
        for line in held:
            self._print(shown_line(line))
        return True

    def _in(self) -> None:
        """The count has come: we are in the room, under the name it told us."""
        self.inside = True
        print(f"in the room as {self.name} at {self.where}; type a line and press Enter to "
              f"send it, Ctrl+D or Ctrl+C to leave", file=sys.stderr, flush=True)
        if self.leave_asked:
            self.leave()

    def _print(self, line: str) -> None:
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (OSError, ValueError):   # the output was closed (`| head`): leave
            self.leave(1)

    def _server_gone(self) -> None:
        if self.inbuf:
            self._show(decode_line(self.inbuf))
            self.inbuf = b""
        if self.leaving:
            pass
        elif self.held is not None:   # closed before letting us in: what it said is why
            refusal = " ".join(clean_text(line).strip() for line in self.held).strip()
            self.code = 1
            self.problem = refusal or "the server closed the connection before letting you in"
        else:
            self.code = 0 if self.stopped else 1
            self.problem = "" if self.stopped else "the server closed the connection"
        self._end()

    def _end(self) -> None:
        self.loop.running = False

    def end_of_input(self) -> None:
        """Ctrl+D: leave, once in the room (a refusal on the way must still be heard)."""
        if self.inside:
            self.leave()
        else:
            self.leave_asked = True

    def say(self, text: str) -> None:
        """Send a typed line as the App does, `{alias}: {text}` (the echo shows it)."""
        if not self.leaving:
            self._send(f"{self.alias}: {text}\n" if self.alias else f"{text}\n")

    def leave(self, code: int = 0) -> None:
        """Send the App's goodbye; end when the server closes, or LEAVE_WAIT after."""
        if self.leaving:
            return
        self.leaving, self.code = True, code
        self._send(f"\t{self.alias} has left the chat...\n")
        self.loop.call_later(LEAVE_WAIT, self._end)

    def _send(self, text: str) -> None:
        self.outbuf += text.encode("utf-8", "replace")
        self._write()

    def _write(self) -> None:
        """Send what the kernel takes now; watch for writable only while some is left."""
        try:
            while self.outbuf:
                del self.outbuf[:self.sock.send(self.outbuf)]
        except WOULD_BLOCK:
            pass
        except OSError:
            self._server_gone()
            return
        events = EVENT_READ | (EVENT_WRITE if self.outbuf else 0)
        if events != self.events:
            self.events = events
            self.loop.rewatch(self.sock, events, self._on_socket, None)


def join_room(host: str, port: int, context: ssl.SSLContext | None, alias: str,
              out, typed_shows: bool = False) -> ClientSession:
    """Connect, answer the prompt, and hand back the stay; ClientError if not let in."""
    sock = open_connection(host, port, context)
    try:
        early = answer_prompt(sock, alias, host, port, tls=context is not None)
    except BaseException:   # Ctrl+C too
        sock.close()
        raise
    secure = " over TLS" if context is not None else ""
    return ClientSession(sock, alias, host_port(host, port) + secure, out, early, typed_shows)


def ask_name(stdin, out) -> str | None:
    """A name typed at the prompt; None at the end of input."""
    while True:
        out.write("Your name: ")
        out.flush()
        line = stdin.readline()
        if not line:
            return None
        if line.strip():
            return line


def lenient(stream):
    """The standard stream, set to replace what it cannot decode or encode."""
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="replace")
    return stream


def run_client(address: str, name: str | None, tls: bool, ca: str | None, insecure: bool,
               stdin=None, stdout=None) -> int:
    """Join the room at `address` from a terminal; the exit code.

    0: the person left (end of input, Ctrl+C), or the server stopped and said so;
    1: the server could not be reached, refused, went away, or TLS failed;
    2: the address or the --ca file cannot be used.
    --ca and --insecure imply --tls.
    """
    stdin = lenient(sys.stdin) if stdin is None else stdin
    stdout = lenient(sys.stdout) if stdout is None else stdout
    try:
        host, port = server_address(address)
    except argparse.ArgumentTypeError as e:
        print(f"--connect: {e}.", file=sys.stderr)
        return 2
    context = None
    if tls or ca is not None or insecure:
        if ssl is None:
            print("This Python has no ssl module, so it cannot encrypt; run without --tls.",
                  file=sys.stderr)
            return 1
        try:
            context = client_tls_context(ca, insecure)
        except OSError as e:
            why = "it holds no PEM certificate" if isinstance(e, ssl.SSLError) else e.strerror
            print(f"Cannot use the --ca file {ca}: {why}.", file=sys.stderr)
            return 2
    if insecure:
        print("warning: --insecure: the server's certificate is not verified, so the chat is "
              "encrypted but anyone in between could pose as the server", file=sys.stderr, flush=True)
    try:
        if name is None:
            name = ask_name(stdin, stdout)
            if name is None:
                return 0
        typed_shows = stdin.isatty() and stdout.isatty()   # one terminal shows both
        session = join_room(host, port, context, alias_text(name), stdout, typed_shows)
        return session.stay(stdin)
    except ClientError as e:
        print(e, file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------------
# 8. Command line
# ---------------------------------------------------------------------------

def port_number(text: str) -> int:
    port = parse_port(text)
    if port is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return port


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """An argparse type: a number of `kind`, no smaller than `minimum`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is below {minimum}")
        return value
    return parse


def listen_host(text: str) -> str:
    host = host_from_text(text)
    if host is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address or host name "
                                         f"(0.0.0.0 listens on every network)")
    return host


def room_key(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the room key is empty: give one of at least "
                                         f"{MIN_KEY} characters, or leave --room-key out")
    return text


def networks(text: str) -> tuple:
    try:
        return tuple(str(ipaddress.ip_network(part.strip(), strict=False))
                     for part in text.split(",") if part.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_limit_options(p: argparse.ArgumentParser, d: Settings) -> None:
    limits = p.add_argument_group("limits")
    limits.add_argument("--handshake-timeout", type=at_least(0.1, float),
                        default=d.handshake_timeout, metavar="SECONDS",
                        help="time to give an alias (default: %(default)s)")
    limits.add_argument("--max-line", type=at_least(1), default=d.max_line, metavar="BYTES",
                        help="longest chat line (default: %(default)s)")
    limits.add_argument("--line-rate", type=at_least(0, float), default=d.line_rate, metavar="N",
                        help="lines per second per member, bursts of 2N; 0: no limit "
                             "(default: %(default)s)")
    limits.add_argument("--max-backlog", type=at_least(1024), default=d.max_backlog,
                        metavar="BYTES", help="output waiting for one member before it is "
                                              "disconnected (default: %(default)s)")
    limits.add_argument("--max-clients", type=at_least(1), default=d.max_clients, metavar="N",
                        help="connections at once (default: %(default)s)")
    limits.add_argument("--max-per-ip", type=at_least(1), default=d.max_per_ip, metavar="N",
                        help="connections from one address (default: %(default)s)")
    limits.add_argument("--allow", type=networks, default=(), metavar="CIDR[,CIDR...]",
                        help="only these networks may connect (default: everyone)")


def add_privacy_options(p: argparse.ArgumentParser) -> None:
    privacy = p.add_argument_group("privacy")
    key = privacy.add_mutually_exclusive_group()
    key.add_argument("--room-key", type=room_key, metavar="KEY",
                     help="members must join as name#KEY")
    key.add_argument("--room-key-file", metavar="PATH", help="read the room key from a file")
    privacy.add_argument("--tls-cert", default="", metavar="FILE",
                         help="encrypt with TLS using this certificate (PEM); the App cannot join then")
    privacy.add_argument("--tls-key", default="", metavar="FILE",
                         help="the certificate's private key (PEM), if not in --tls-cert")


def add_client_options(p: argparse.ArgumentParser) -> None:
    client = p.add_argument_group("joining a room from a terminal")
    client.add_argument("--connect", metavar="HOST[:PORT]",
                        help=f"join the room at HOST instead of running one (port {DEFAULT_PORT} "
                             f"unless given; IPv6 as [::1]:{DEFAULT_PORT})")
    client.add_argument("--name", help="your name in the room, NAME#KEY if it needs a key "
                                       "(asked for if not given)")
    client.add_argument("--tls", action="store_true",
                        help="encrypt, checking the server's certificate and name")
    trust = client.add_mutually_exclusive_group()
    trust.add_argument("--ca", metavar="FILE",
                       help="CA certificate(s) to trust for the server (default: the system's)")
    trust.add_argument("--insecure", action="store_true",
                       help="encrypt without checking the server's certificate (prints a warning)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="pcr_server.py",
        description="A private chat room server for PrivateChatRoom-App and terminal clients.")
    p.add_argument("--version", action="version", version=f"PrivateChatRoom-Server {VERSION}")
    p.add_argument("--gui", action="store_true", help="open a window to run the server")
    p.add_argument("--host", type=listen_host, default=d.host,
                   help="address to listen on (default: all IPv4 interfaces; '::' for IPv6)")
    p.add_argument("--port", type=port_number,
                   help=f"port to listen on (default: the number in {PORT_FILE}, else {DEFAULT_PORT})")
    p.add_argument("--log-file", default=d.log_file, help=f"log file (default: {LOG_FILE})")
    p.add_argument("--public-ip-url", default=d.public_ip_url,
                   help="service that answers with your public IP ('' turns the look-up off)")
    add_limit_options(p, d)
    add_privacy_options(p)
    add_client_options(p)
    args = p.parse_args(argv)
    if args.connect is None and (args.name is not None or args.tls or args.ca or args.insecure):
        p.error("--name, --tls, --ca and --insecure go with --connect")
    if args.connect is not None and args.gui:
        p.error("--gui runs a room; it does not go with --connect")
    if args.tls_key and not args.tls_cert:
        p.error("--tls-key needs --tls-cert")
    if args.room_key_file:
        args.room_key = read_room_key(p, args.room_key_file)
    args.room_key = args.room_key or ""
    return args


def read_room_key(p: argparse.ArgumentParser, path: str) -> str:
    """The first line of `path`; a usage error if there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            key = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        p.error(f"cannot read the room key from {path}: {e}")
    if not key:
        p.error(f"{path} holds no room key on its first line")
    return key


def settings_from(args: argparse.Namespace) -> tuple[Settings, list[str]]:
    """Settings from the command line, .pcr_port and defaults; plus warnings."""
    warnings = []
    port = args.port
    if port is None:
        port, warning = read_port_file()
        if warning:
            warnings.append(warning)
    names = {f.name for f in dataclasses.fields(Settings)}
    given = {k: v for k, v in vars(args).items() if k in names}
    given["port"] = port
    return Settings(**given), warnings


def join_banner(settings: Settings, address: tuple[str, int], private_ip: str) -> str:
    """What the host needs once the room is open: how friends join, the log, how to stop."""
    host, port = address
    if is_loopback(host):
        lines = [f"The room is open on {host_port(host, port)}, but nobody else can join: only "
                 f"this machine reaches {host}. Start with --host 0.0.0.0 to let friends in."]
    else:
        same = same_network_host(host, private_ip)
        lines = [f"The room is open on port {port}. How friends join:",
                 f"  same network:       {host_port(same, port) if same != 'unknown' else same}",
                 internet_line("looking up this machine's public address…" if settings.public_ip_url
                               else "not looked up: your router's status page shows this "
                                    "machine's public address", port)]
    if settings.tls_cert:
        lines.append("  encrypted:          the App cannot join; friends use "
                     "python3 pcr_server.py --connect ADDRESS --tls")
    if settings.room_key:
        lines.append("  with the room key:  friends join as name#KEY")
        if warning := short_key_warning(settings.room_key):
            lines.append(f"  warning: {warning}")
    if settings.public_ip_url:
        lines.append(f"At start the server asks {settings.public_ip_url} for this machine's "
                     f"public address; --public-ip-url '' turns that off.")
    lines.append(f"Log file: {os.path.abspath(settings.log_file)}" if settings.log_file
                 else "Log file: none (--log-file '')")
    lines.append("Ctrl+C stops the server.")
    return "\n".join(lines)


def internet_line(where: str, port: int) -> str:
    return f"  over the internet:  {where} ({forward_advice(port)})"


def tell(text: str) -> None:
    """Print for the host; a terminal that has gone away (hang-up) is no error."""
    try:
        print(text, flush=True)
    except (OSError, ValueError):
        pass


def announce(settings: Settings, address: tuple[str, int]) -> None:
    """Log this machine's addresses and print the banner; the internet address
    follows once the look-up answers."""
    private_ip = private_ipv4()
    log.info("private IPv4: %s, MAC: %s", private_ip, mac_address())
    tell(join_banner(settings, address, private_ip))
    port, local = address[1], is_loopback(address[0])

    def public_ip_known(ip: str | None) -> None:
        if not local:
            tell(internet_line(host_port(ip, port) if ip else "this machine's public address "
                               "could not be found; your router's status page shows it", port))
    if settings.public_ip_url:
        look_up_public_ip(settings.public_ip_url, public_ip_known)


def run_headless(settings: Settings) -> int:
    server = Server(settings)
    try:
        address = server.listen()
    except StartError as e:
        log.error("%s", e)
        return 1
    announce(settings, address)
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: server.loop.call_soon_threadsafe(server.stop))
    server.serve()
    server.loop.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.connect is not None:
        return run_client(args.connect, args.name, args.tls, args.ca, args.insecure)
    settings, warnings = settings_from(args)
    setup_logging(settings.log_file)
    log.info("PrivateChatRoom-Server %s starting", VERSION)
    if settings.tls_cert:
        try:   # said here, on the console, before any window opens
            tls_context(settings.tls_cert, settings.tls_key)
        except StartError as e:
            log.error("%s", e)
            return 1
    if args.gui:
        return run_gui(settings, warnings)
    for warning in warnings:
        log.warning("%s", warning)
    return run_headless(settings)


if __name__ == "__main__":
    sys.exit(main())
