"""The behaviour of pcr_server.py, as a specification.

Real sockets on 127.0.0.1, port 0, short settable time-outs; every wait is
bounded.  Run: python3 -m unittest -v test_pcr_server

The helpers come first (clients, a server per test, the browser, the home
network of namespaces); then the tests, in the order of the sections of
pcr_server.py they test, each section's socket-free tests first.
"""

import ast
import asyncio
import base64
import contextlib
import email.utils
import errno
import functools
import gc
import hashlib
import http.server
import io
import ipaddress
import itertools
import json
import locale
import os
import random
import re
import select
import selectors
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import unittest
import urllib.parse
import urllib.request
import zlib
from typing import Callable
from unittest import mock

import pcr_server as pcr

try:
    import resource
except ImportError:   # Windows: no limits to set on a child
    resource = None

HERE = os.path.dirname(os.path.abspath(__file__))


SERVER = os.path.join(HERE, "pcr_server.py")


WAIT = 5.0   # the longest any single expectation may take
START_WAIT = 6 * WAIT   # a new Python process's start-up: over 15 s, once, under Wine


WINDOWS = sys.platform == "win32"


# Short delays and a fast App so the suite runs fast; the rules are the same.
FAST = dict(host="127.0.0.1", port=0, public_ip_url="", log_file="",
            welcome_delay=0.05, count_interval=0.03, stop_flush=1.0,
            app_char_time=0.001, app_margin=0.03, door_wait=0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_and_the_next() -> int:
    """A free port whose next one is free too (the window serves its page on
    port + 1, which may be another connection's own port)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except (OSError, OverflowError):
                continue
        return port
    raise AssertionError("no two free ports in a row")


class Client:
    """A test member: a real socket with bounded reads."""

    def __init__(self, port: int, host: str = "127.0.0.1", family=socket.AF_INET,
                 rcvbuf: int = 0, source: str = ""):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf:   # before connect, or the window is already large
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:   # another address of this machine (all of 127/8 is loopback)
            self.sock.bind((source, 0))
        self.sock.settimeout(WAIT)
        self.sock.connect((host, port))
        self.buf = b""
        self.reads: list[bytes] = []   # every recv() as it came, for framing checks

    def recv_some(self, timeout: float = WAIT) -> bytes:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        self.reads.append(data)
        self.buf += data
        return data

    def read_until(self, needle: bytes, timeout: float = WAIT) -> bytes:
        """Everything up to and including `needle`; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        searched = 0
        while self.buf.find(needle, searched) < 0:
            searched = max(0, len(self.buf) - len(needle) + 1)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {needle!r}; got {self.buf[-300:]!r}")
            try:
                if not self.recv_some(left):
                    raise AssertionError(f"closed while waiting for {needle!r}; got {self.buf[-300:]!r}")
            except socket.timeout:
                continue
        cut = self.buf.index(needle) + len(needle)
        got, self.buf = self.buf[:cut], self.buf[cut:]
        return got

    def read_for(self, seconds: float) -> bytes:
        """Everything that arrives within `seconds` (or until closed)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                if not self.recv_some(left):
                    break
            except socket.timeout:
                break
            except ConnectionResetError:
                break
        got, self.buf = self.buf, b""
        return got

    def read_to_close(self, timeout: float = WAIT) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.recv_some(deadline - time.monotonic()):
                    got, self.buf = self.buf, b""
                    return got
            except socket.timeout:
                break
            except ConnectionResetError:
                got, self.buf = self.buf, b""
                return got
        raise AssertionError(f"not closed by the server; got {self.buf[-300:]!r}")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, alias: bytes) -> None:
        """Wait for the ALIAS prompt and answer it."""
        self.read_until(b"ALIAS")
        self.send(alias)

    def join(self, alias: str, raw: bytes | None = None) -> "Client":
        """Answer the prompt as a terminal does and wait for the room's count line."""
        self.answer(raw if raw is not None else alias.encode() + b"\n")
        self.read_until(b" online...\n")
        return self

    def reset(self) -> None:
        """Close abruptly: the peer gets an RST, not a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class AppClient:
    """PrivateChatRoom-App's reader, built from PROTOCOL.md ("The App's reader, exactly").

    It connects, waits `typing` seconds (its user typing a name in a dialog)
    before it reads at all, then loops: recv(1024), strict UTF-8 (a decode
    error ends the reader, as it ends the App's), answer "ALIAS" with the
    bare alias, drop reads until its window is up (`window` seconds after
    the alias), put a read that begins with a digit or ends with
    " online..." into the count box, and type any other read into the chat
    area at `char_time` a character before reading again.
    """

    def __init__(self, port: int, alias: str, char_time: float, typing: float = 0.0,
                 window: float = 0.03):
        self.sock = socket.create_connection(("127.0.0.1", port), WAIT)
        self.sock.settimeout(None)
        self.alias, self.char_time, self.window = alias, char_time, window
        self.box = ""                                    # the count box
        self.boxes: list[tuple[float, str]] = []         # every (time, text) it showed
        self.chat = ""                                   # the chat area
        self.reads: list[tuple[float, bytes]] = []       # every read, as it came
        self.dropped: list[bytes] = []                   # reads before the window was up
        self.error: Exception | None = None              # what ended the reader
        self.named_at: float | None = None
        self.ended = False
        self.changed = threading.Condition()
        threading.Thread(target=self._run, args=(typing,), daemon=True).start()

    def _run(self, typing: float) -> None:
        time.sleep(typing)
        try:
            while True:
                data = self.sock.recv(1024)
                if not data:   # the App loops on b"" for ever; the emulator stops
                    break
                self._show(data)
        except (OSError, UnicodeDecodeError) as e:
            self.error = e
        finally:
            with self.changed:
                self.ended = True
                self.changed.notify_all()

    def _show(self, data: bytes) -> None:
        now = time.monotonic()
        message = data.decode("utf-8")   # strict, as the App's
        self.reads.append((now, data))
        if message == "ALIAS":
            self.sock.sendall(self.alias.encode())
            self.named_at = now
        if self.named_at is None or now < self.named_at + self.window:
            self.dropped.append(data)
        elif message[:1].isdigit() or message.endswith(" online..."):
            with self.changed:
                self.box = message
                self.boxes.append((now, message))
                self.changed.notify_all()
        else:
            time.sleep(len(message) * self.char_time)   # typed, a character at a time
            with self.changed:
                self.chat += message
                self.changed.notify_all()

    def wait(self, done: Callable[["AppClient"], bool], what: str, timeout: float = WAIT) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: done(self) or self.ended, timeout) or not done(self):
                raise AssertionError(f"{self.alias}: no {what} within {timeout} s; box {self.box!r}, "
                                     f"chat ...{self.chat[-300:]!r}, error {self.error!r}")

    def wait_box(self, text: str, timeout: float = WAIT) -> None:
        self.wait(lambda app: app.box == text, f"box {text!r}", timeout)

    def wait_chat(self, text: str, timeout: float = WAIT) -> None:
        self.wait(lambda app: text in app.chat, f"chat {text!r}", timeout)

    def leave(self) -> None:
        """Close the window: the App's goodbye line, then the close."""
        self.sock.sendall(f"\t{self.alias} has left the chat...\n".encode())
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class ServerCase(unittest.TestCase):
    """Starts an in-process server on a thread for each test."""

    settings: dict = {}

    def start(self, **overrides) -> pcr.Server:
        log_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, log_dir, True)
        self.log_path = os.path.join(log_dir, "server.log")
        pcr.setup_logging(self.log_path, console=False)
        server = pcr.Server(pcr.Settings(**{**FAST, **self.settings, **overrides}))
        server.listen()
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        self.server = server
        self.port = server.address[1]

        def stop():
            server.loop.call_soon_threadsafe(server.stop)
            thread.join(WAIT)
            self.assertFalse(thread.is_alive(), "server did not stop")
            server.loop.close()
        self.addCleanup(stop)
        return server

    def start_on_ipv6(self, **overrides) -> pcr.Server:
        """A room on ::1 alone; the test is skipped where this machine has no IPv6 loopback."""
        try:
            return self.start(host="::1", **overrides)
        except pcr.StartError as e:
            self.skipTest(f"no IPv6 loopback: {e}")

    def connect(self, **kw) -> Client:
        c = Client(self.port, **kw)
        self.addCleanup(c.close)
        return c

    def member(self, alias: str) -> Client:
        """A terminal member, in the room."""
        return self.connect().join(alias)

    def app(self, alias: str, typing: float = 0.0, **kw) -> AppClient:
        """An App member (reading at the server's App pace unless told otherwise)."""
        kw.setdefault("char_time", self.server.settings.app_char_time)
        a = AppClient(self.port, alias, typing=typing, **kw)
        self.addCleanup(a.close)
        return a

    def ann_and_bob(self) -> tuple[Client, Client]:
        """A room with two members, ann having seen them both counted."""
        self.start()
        ann, bob = self.member("ann"), self.member("bob")
        ann.read_until(b"2 people are online...\n")
        return ann, bob

    def on_loop(self, fn, *args):
        """Run fn on the server's loop thread and return its result."""
        done, box = threading.Event(), []
        self.server.loop.call_soon_threadsafe(lambda: (box.append(fn(*args)), done.set()))
        self.assertTrue(done.wait(WAIT), "loop did not answer")
        return box[0]

    def wait_on_loop(self, fn, what: str, timeout: float = WAIT):
        """Ask the loop fn() until it is true; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while not (got := self.on_loop(fn)):
            self.assertLess(time.monotonic(), deadline, f"no {what}")
            time.sleep(0.02)
        return got

    def assert_app_shows_well(self, app: AppClient) -> None:
        """Nothing the App could get wrong: no decode error, every box read a
        count line alone, no count text in the chat area."""
        self.assertIsNone(app.error)
        for _, box in app.boxes:
            self.assertRegex(box.encode(), rb"^\d+ (person is|people are) online\.\.\.\n$")
        self.assertNotRegex(app.chat, r"(?m)^\d+ (person is|people are) online\.\.\.$")

    def log_text(self) -> str:
        for h in pcr.log.handlers:
            h.flush()
        with open(self.log_path, encoding="utf-8") as f:
            return f.read()

    def stopped_log(self, server: pcr.Server, summed: str) -> str:
        """The log once the server has stopped and said `summed`."""
        server.loop.call_soon_threadsafe(server.stop)
        deadline = time.monotonic() + WAIT
        while summed not in self.log_text():
            self.assertLess(time.monotonic(), deadline, f"no {summed!r} in the log")
            time.sleep(0.02)
        return self.log_text()


COUNT_LINE = re.compile(rb"\d+ (person is|people are) online\.\.\.\n")


# Windows sends Ctrl+Break only to processes on the sender's console (Wine not at
# all), so there the server is run under a stand-in for the key: a line on its
# standard input raises SIGBREAK in it, as the console's Ctrl+Break does.
CTRL_BREAK_ON_INPUT = ("import runpy, signal, sys, threading; threading.Thread(daemon=True, "
                       "target=lambda: sys.stdin.readline() and signal.raise_signal(signal.SIGBREAK)"
                       ").start(); sys.argv[:] = sys.argv[1:]; runpy.run_path(sys.argv[0], "
                       "run_name='__main__')")


def run_server(*args, cwd=None, **kw) -> subprocess.Popen:
    command = [sys.executable, SERVER, *args]
    if WINDOWS:
        command[1:1] = ["-c", CTRL_BREAK_ON_INPUT]
        kw.setdefault("stdin", subprocess.PIPE)
    return subprocess.Popen(command, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    """Stop a run_server() room as its host would: Ctrl+C (or `sig`); on Windows Ctrl+Break."""
    if WINDOWS:
        proc.stdin.write("break\n")
        proc.stdin.flush()
    else:
        proc.send_signal(sig)


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not listen")


def collect(pipe, buf: bytearray, changed: threading.Condition) -> threading.Event:
    """Add what a child writes to `pipe` to `buf`, on a thread (Windows cannot
    select() on a pipe), with Windows' CR LF read as LF; the event is set
    once the pipe has closed."""
    pipe = getattr(pipe, "buffer", pipe)   # the bytes under a text pipe
    ended = threading.Event()

    def run() -> None:
        held = b""
        while chunk := pipe.read1(65536):
            chunk, held = held + chunk, b""
            if chunk.endswith(b"\r"):   # its LF may come in the next read
                chunk, held = chunk[:-1], b"\r"
            with changed:
                buf.extend(chunk.replace(b"\r\n", b"\n"))
                changed.notify_all()
        with changed:
            buf.extend(held)
            ended.set()
            changed.notify_all()
    threading.Thread(target=run, daemon=True).start()
    return ended


def printed_until(proc: subprocess.Popen, needle: str, timeout: float = START_WAIT) -> str:
    """What proc has printed on stdout so far, once `needle` is in it (bounded)."""
    if not hasattr(proc, "printed"):
        proc.printed, proc.printed_changed = bytearray(), threading.Condition()
        proc.printed_all = collect(proc.stdout, proc.printed, proc.printed_changed)
    want = needle.encode()
    with proc.printed_changed:
        if not proc.printed_changed.wait_for(
                lambda: want in proc.printed or proc.printed_all.is_set(), timeout):
            raise AssertionError(f"timed out waiting for {needle!r}; printed {bytes(proc.printed)!r}")
        if want not in proc.printed:
            raise AssertionError(f"stdout closed before {needle!r}; printed {bytes(proc.printed)!r}")
        return proc.printed.decode(locale.getpreferredencoding(False))   # as a console shows it


# The certificates the tests ask for, by the names they list.
CERTIFICATE_NAMES = ("DNS:localhost,IP:127.0.0.1", "DNS:myroom.example,IP:203.0.113.7")


MADE_AHEAD = 3   # of each: a test may need two that differ


# A folder of certificates made ahead (make_certificates_ahead), for a Python
# that cannot run openssl: Windows CPython under Wine.
CERTIFICATES = os.environ.get("PCR_TEST_CERTIFICATES")


_taken = {names: 0 for names in CERTIFICATE_NAMES}


def make_certificate(directory: str, names: str = CERTIFICATE_NAMES[0]) -> tuple[str, str]:
    """A self-signed certificate (for localhost and 127.0.0.1 unless told), made
    with openssl, or else the next one made ahead in PCR_TEST_CERTIFICATES."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", f"subjectAltName={names}"],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        if not CERTIFICATES:
            raise unittest.SkipTest(f"cannot make a test certificate with openssl: {e}")
        made = os.path.join(CERTIFICATES, f"{CERTIFICATE_NAMES.index(names)}-"
                                          f"{_taken[names] % MADE_AHEAD}")
        _taken[names] += 1
        shutil.copy(os.path.join(made, "cert.pem"), cert)
        shutil.copy(os.path.join(made, "key.pem"), key)
    return cert, key


def class_certificates(cls, n: int = 1) -> list[tuple[str, str]]:
    """`n` certificates (make_certificate's) for a test class, removed after its tests;
    SkipTest without the ssl module."""
    if pcr.ssl is None:
        raise unittest.SkipTest("no ssl module")
    folder = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, folder, True)
    made = []
    for i in range(n):
        os.makedirs(os.path.join(folder, str(i)))
        made.append(make_certificate(os.path.join(folder, str(i))))
    return made


def make_certificates_ahead(folder: str) -> None:
    """Fill `folder` for PCR_TEST_CERTIFICATES, where openssl runs (.ci/run does)."""
    for i, names in enumerate(CERTIFICATE_NAMES):
        for k in range(MADE_AHEAD):
            os.makedirs(os.path.join(folder, f"{i}-{k}"), exist_ok=True)
            make_certificate(os.path.join(folder, f"{i}-{k}"), names)


class ClientProcess:
    """`pcr_server.py --connect ...` run as a person would, through pipes.

    Everything it prints is collected by two threads; every read is bounded, by
    START_WAIT: what it is waited for may include its own start-up.
    """

    def __init__(self, address: str, name: str | None = None, tls: bool = False,
                 ca: str | None = None, insecure: bool = False, env: dict | None = None,
                 prefix: list[str] | tuple = ()):
        args = [*prefix, sys.executable, SERVER, "--connect", address]   # prefix: ip netns exec NS
        args += ["--name", name] if name is not None else []
        args += ["--tls"] * tls + ["--insecure"] * insecure + (["--ca", ca] if ca else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
        self.out, self.err = bytearray(), bytearray()
        self.seen = 0   # how far read_until has read
        self.changed = threading.Condition()
        self.readers = [collect(self.proc.stdout, self.out, self.changed),
                        collect(self.proc.stderr, self.err, self.changed)]

    def read_until(self, needle: str, timeout: float = START_WAIT) -> str:
        """Its output up to and including `needle`; fails after `timeout`."""
        want = needle.encode()
        with self.changed:
            if not self.changed.wait_for(lambda: want in self.out[self.seen:], timeout):
                raise AssertionError(f"timed out waiting for {needle!r}; got "
                                     f"{bytes(self.out[-300:])!r}, stderr {bytes(self.err)!r}")
            cut = self.out.index(want, self.seen) + len(want)
            got, self.seen = bytes(self.out[self.seen:cut]), cut
        return got.decode()

    def said(self, needle: str, timeout: float = START_WAIT) -> str:
        """Its stderr, once it holds `needle`; fails after `timeout`."""
        want = needle.encode()
        with self.changed:
            if not self.changed.wait_for(lambda: want in self.err, timeout):
                raise AssertionError(f"timed out waiting for {needle!r} on stderr; got "
                                     f"{bytes(self.err)!r}, stdout {bytes(self.out[-300:])!r}")
            return self.err.decode()

    def type(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def end_input(self) -> None:
        """Ctrl+D."""
        self.proc.stdin.close()

    def wait(self, timeout: float = START_WAIT) -> int:
        """The exit code, once it has exited and said everything."""
        code = self.proc.wait(timeout)
        for ended in self.readers:
            ended.wait(WAIT)
        return code

    def output(self) -> str:
        with self.changed:
            return self.out.decode()

    def errors(self) -> str:
        with self.changed:
            return self.err.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(START_WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()


class FakeRoom:
    """A one-connection stand-in server: ALIAS, then `{alias} joined the chat...` and the count.

    Keeps what the client sends until its leave line (or sends `reply` and
    closes instead); speaks TLS if given a context.
    """

    def __init__(self, test: unittest.TestCase, context=None, reply: bytes | None = None):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, args=(context, reply), daemon=True)
        self.thread.start()
        test.addCleanup(self.listener.close)

    def _serve(self, context, reply: bytes | None) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            conn.settimeout(WAIT)
            if context is not None:
                conn = context.wrap_socket(conn, server_side=True)
            conn.sendall(b"ALIAS")
            self._receive_until(conn, b"\n")
            if reply is not None:
                conn.sendall(reply)
                return
            conn.sendall(self.received.split(b"\n")[0] + b" joined the chat...\n1 person is online...\n")
            self._receive_until(conn, b" has left the chat...\n")
        except OSError:   # the client refused the handshake, or went
            pass
        finally:
            conn.close()

    def _receive_until(self, conn: socket.socket, needle: bytes) -> None:
        while needle not in self.received and (data := conn.recv(4096)):
            self.received += data

    def done(self) -> bytes:
        """Everything the client sent, once the connection is over."""
        self.thread.join(WAIT)
        if self.thread.is_alive():
            raise AssertionError("the fake room is still talking")
        return self.received


try:
    from websockets.sync.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed
except ImportError:   # a test tool only: the server never imports it
    ws_connect = None


NO_WEBSOCKETS = "the websockets package is not installed (pip install websockets)"


class WebMember:
    """A web member speaking the page's protocol through an independent
    RFC 6455 client (the websockets package)."""

    def __init__(self, port: int, alias: str | None = None, origin: str | None = None,
                 host: str = "127.0.0.1", secure=None):
        """`secure`: an ssl client context for wss (--https, --tls-cert)."""
        if secure is not None and sys.version_info < (3, 11):
            # websockets 16 (the newest for Python 3.10) reads a TLS 1.3 socket on a thread
            # of its own while it sends its request: about 1 connection in 20 here, the
            # request never left it (the server had the handshake and not a byte more).
            # TLS 1.2 has no tickets after the handshake to race on; Chromium and the
            # tests' own TLS clients speak TLS 1.3 to the room.
            secure.maximum_version = pcr.ssl.TLSVersion.TLSv1_2
        self.ws = ws_connect(f"{'wss' if secure else 'ws'}://{pcr.host_port(host, port)}/ws",
                             origin=origin, open_timeout=WAIT, ssl=secure)
        self.ws.__enter__()   # as `with` would (websockets 17 warns otherwise); close() ends it
        self.token = ""   # the last welcome's: brings this member back to its seat
        self.seen = 0     # the mark of the last event read: what it missed starts after it
        self.hello = self.next()
        if alias is not None:
            self.ws.send(alias)

    def next(self, timeout: float = WAIT) -> dict:
        message = json.loads(self.ws.recv(timeout))
        self.token = message.get("token", self.token)
        self.seen = message.get("at", self.seen)
        return message

    def ask_seat_back(self, token: str, seen: int) -> None:
        """The page's request for its seat: a binary message, before any name."""
        self.ws.send(json.dumps({"resume": token, "seen": seen}).encode())

    def until_quiet(self, quiet: float = 0.5) -> list[dict]:
        """Every message until none comes for `quiet` seconds."""
        events = []
        with contextlib.suppress(TimeoutError):
            while True:
                events.append(self.next(quiet))
        return events

    def act(self, **action) -> None:
        """What the page does to a line (a reply, a reaction, an edit, a deletion, "typing"):
        a text with NUL first, then the action as JSON."""
        self.ws.send("\x00" + json.dumps(action, ensure_ascii=False))

    def lose(self) -> None:
        """The connection dies under the page (a reset, no close frame)."""
        self.ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.socket.shutdown(socket.SHUT_RDWR)   # wakes the library's reader; then the reset
        reader = getattr(self.ws, "recv_events_thread", None)
        if reader is not None:   # closed under a thread still polling it, Wine's wineserver may abort
            reader.join(WAIT)
        self.ws.socket.close()

    def until(self, kind: str, timeout: float = WAIT, **match) -> dict:
        """The next message of this kind (and these fields); fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.01, deadline - time.monotonic()))
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return message

    def close_code(self) -> int:
        """The server's close code, once it closes."""
        try:
            while True:
                self.ws.recv(WAIT)
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None

    def close(self) -> None:
        self.ws.close()


def raw_upgrade(port: int, extra: str = "", source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """A WebSocket opened by hand, to send what no library would; (socket, response)."""
    sock = socket.create_connection(("127.0.0.1", port), WAIT, source_address=(source, 0))
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        got += sock.recv(4096)
    return sock, got


def http_get(port: int, request: bytes, host: str = "127.0.0.1") -> bytes:
    """Send a raw request; everything the server answers before it closes."""
    with socket.create_connection((host, port), WAIT) as sock:
        sock.sendall(request)
        got = b""
        while data := sock.recv(65536):
            got += data
    return got


class WebCase(ServerCase):
    """A room with its page, and web members spoken for by the websockets package."""

    settings = {"web_port": 0}

    def setUp(self):
        if ws_connect is None:
            self.skipTest(NO_WEBSOCKETS)

    @property
    def web(self) -> int:
        return self.server.web_address[1]

    def web_member(self, alias: str | None, **kw) -> WebMember:
        w = WebMember(self.web, alias, **kw)
        self.addCleanup(w.close)
        return w

    def assert_chats_on(self, wendy: WebMember, tom: Client, text: str = "still here") -> None:
        """The page is still in the room: its line reaches the terminal and comes back."""
        wendy.ws.send(text)
        tom.read_until(f"wendy: {text}\n".encode())
        wendy.until("chat", name="wendy", text=text)

    def wendy_and_tom(self, **overrides) -> tuple[WebMember, Client]:
        """tom at a terminal and wendy on the page, both counted."""
        self.start(**overrides)
        tom = self.member("tom")
        wendy = self.web_member("wendy")
        wendy.until("count", n=2)
        tom.read_until(b"wendy joined the chat...\n2 people are online...\n")
        return wendy, tom


try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:   # a test tool only: the server never imports it
    webdriver = None


NO_BROWSER = ("the browser tests need Chromium, its driver and selenium "
              "(apt install chromium chromium-driver; pip install selenium)")


SCREENSHOTS = os.environ.get("PCR_SCREENSHOTS")   # a folder: keep the page's screenshots there


def start_chromium(profile: str) -> "webdriver.Chrome":
    """Headless Chromium with its profile in `profile`, driven by selenium; SkipTest if it cannot."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if webdriver is None or not chromium or not driver:
        raise unittest.SkipTest(NO_BROWSER)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=Service(driver))
    except WebDriverException as e:
        raise unittest.SkipTest(f"Chromium did not start ({e.msg}); {NO_BROWSER}")


class BrowserCase(ServerCase):
    """The page in a real browser: headless Chromium, driven by selenium
    (one browser for each class of tests)."""

    settings = {"web_port": 0}

    @classmethod
    def setUpClass(cls):
        profile = tempfile.mkdtemp()
        cls.addClassCleanup(shutil.rmtree, profile, True)
        cls.driver = start_chromium(profile)
        cls.addClassCleanup(cls.driver.quit)
        cls.driver.set_page_load_timeout(WAIT * 2)
        cls.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",   # a phone
                                   {"width": 360, "height": 740, "deviceScaleFactor": 1,
                                    "mobile": True})

    def setUp(self):
        self.driver.get("about:blank")
        self.driver.get_log("browser")   # start each test with an empty console

    def open_page(self, port: int | None = None) -> None:
        """The page, from the room's web port or from `port` (a proxy in front of it)."""
        self.driver.get(f"http://127.0.0.1:{port or self.server.web_address[1]}/")

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).get_attribute("textContent")

    def wait_for(self, done: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        WebDriverWait(self.driver, timeout).until(lambda _: done(), message=f"no {what}")

    def join_as(self, name: str, key: str = "") -> None:
        self.wait_for(lambda: self.find("#name").is_displayed(), "name form")
        self.find("#name").send_keys(name)
        if key:
            self.wait_for(lambda: self.find("#key").is_displayed(), "key field")
            self.find("#key").send_keys(key)
        self.find("#join-button").click()

    def say(self, text: str) -> None:
        self.find("#message").send_keys(text + Keys.ENTER)

    def listed(self) -> list[str]:
        """The names in the page's list of who is online (without its "(you)"), read
        in one go: the list may be drawn again between two reads of it."""
        texts = self.driver.execute_script(
            "return [...document.querySelectorAll('#people-list li')].map(li => li.textContent)")
        return [text.replace("(you)", "").strip() for text in texts]

    def assert_no_policy_violations(self) -> None:
        console = [e["message"] for e in self.driver.get_log("browser")]
        self.assertEqual([m for m in console if "Content Security Policy" in m], [])


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of `port`, the network between a phone
    and the room: the test can freeze it (nothing goes through, as when a
    network hangs), cut it (every connection reset, new ones refused) and
    restore it.  One thread relays; each change is made by that thread."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.state = "open"
        self.peers: dict[socket.socket, socket.socket] = {}   # each end -> the other
        self.asked: list[tuple[str, threading.Event]] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _set(self, state: str) -> None:
        done = threading.Event()
        self.asked.append((state, done))
        assert done.wait(WAIT), f"the proxy did not {state}"

    def freeze(self) -> None:
        self._set("frozen")

    def cut(self) -> None:
        self._set("cut")

    def restore(self) -> None:
        self._set("open")

    def close(self) -> None:
        self.running = False
        self.thread.join(WAIT)

    def _run(self) -> None:
        while self.running:
            while self.asked:
                self.state, done = self.asked.pop(0)
                if self.state == "cut":
                    self._reset_all()
                done.set()
            watched = [self.listener] if self.state != "frozen" else []
            if self.state == "open":
                watched += list(self.peers)
            for sock in select.select(watched, [], [], 0.02)[0] if watched else time.sleep(0.02) or []:
                if sock is self.listener:
                    self._accept()
                elif sock in self.peers:
                    self._relay(sock)
        self._reset_all()
        self.listener.close()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        if self.state == "cut":
            self._reset(conn)
            return
        upstream = socket.create_connection(("127.0.0.1", self.target), WAIT)
        self.peers[conn], self.peers[upstream] = upstream, conn

    def passing(self, data: bytes) -> bytes:
        """What goes through, as it goes through."""
        return data

    def _relay(self, sock: socket.socket) -> None:
        other = self.peers[sock]
        try:
            data = sock.recv(65536)
            if data:
                other.sendall(self.passing(data))
                return
        except OSError:
            pass
        for end in (sock, other):   # one side closed: so does the other
            del self.peers[end]
            end.close()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _reset_all(self) -> None:
        for sock in list(self.peers):
            self._reset(sock)
        self.peers.clear()


class PhonePageCase(BrowserCase):
    """Wendy's page in headless Chromium, through a proxy the test controls,
    and tom at a terminal (issues 16 and 26)."""

    GRACE = 6.0
    Proxy = CuttableProxy

    def wendy_through_a_proxy(self, **overrides) -> tuple[CuttableProxy, Client]:
        """tom at a terminal; Wendy's page through the proxy, in the room."""
        self.start(**{"web_grace": self.GRACE, **overrides})
        proxy = self.Proxy(self.server.web_address[1])
        self.addCleanup(proxy.close)
        tom = self.member("tom")
        self.open_page(proxy.port)
        self.join_as("Wendy")
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        tom.read_until(b"Wendy joined the chat...\n2 people are online...\n")
        return proxy, tom

    def log_lines(self) -> list[str]:
        """Everything the page's log shows, a line an item (a line's buttons only
        show while it has the focus)."""
        return [e.get_attribute("innerText")
                for e in self.driver.find_elements(By.CSS_SELECTOR, "#log li")]

    def bubbles(self) -> list[str]:
        """The chat lines the page shows, oldest first."""
        return [e.get_attribute("textContent")
                for e in self.driver.find_elements(By.CSS_SELECTOR, "#log .text")]

    def seat(self) -> dict:
        return json.loads(self.driver.execute_script("return sessionStorage.getItem('pcr-seat')") or "{}")

    def lines_from(self, tom: Client, prefix: str, n: int) -> list[str]:
        """tom says n lines: prefix 0, prefix 1, ..."""
        said = [f"{prefix} {k}" for k in range(n)]
        for text in said:
            tom.send(f"tom: {text}\n".encode())
        tom.read_until(f"tom: {said[-1]}\n".encode())
        return said


def unused_display() -> int:
    """An X display number nobody is serving."""
    for n in range(99, 400):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            return n
    raise unittest.SkipTest("no free X display number")


_xvfb_displays: dict[str, str] = {}   # screen size -> its display
_xvfb_watchdogs: list[subprocess.Popen] = []   # kept, or Python warns that each still runs


def start_xvfb(size: str = "1280x800") -> str:
    """A private virtual screen of `size` for the window tests, or SkipTest saying why not.

    One of each size per test process, ended by a watchdog only after this
    process has exited: Tk keeps its X connection until exit, and Xlib
    aborts the whole process if the server goes away under it.
    """
    if size in _xvfb_displays:
        return _xvfb_displays[size]
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise unittest.SkipTest("no DISPLAY and no Xvfb to make one")
    for _ in range(3):   # another Xvfb may take the number first
        n = unused_display()
        watchdog = (f'"$0" :{n} -screen 0 {size}x24 -nolisten tcp >/dev/null 2>&1 & x=$!; '
                    f'while kill -0 {os.getpid()} 2>/dev/null && kill -0 $x 2>/dev/null; '
                    f'do sleep 1; done; kill $x 2>/dev/null')
        proc = subprocess.Popen(["sh", "-c", watchdog, xvfb], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(f"/tmp/.X11-unix/X{n}"):
                _xvfb_watchdogs.append(proc)
                _xvfb_displays[size] = f":{n}"
                return _xvfb_displays[size]
            time.sleep(0.05)
    raise unittest.SkipTest("Xvfb did not start")


class PublicIpService:
    """A what-is-my-IP service on loopback that answers with `ip`."""

    def __init__(self, ip: str):
        class Answer(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(ip.encode())

            def log_message(self, *args):
                pass
        self.http = http.server.HTTPServer(("127.0.0.1", 0), Answer)
        self.url = f"http://127.0.0.1:{self.http.server_port}/"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


PROC_ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
wlan0\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0
wlan0\t0002A8C0\t00000000\t0000\t0\t0\t600\t00FFFFFF\t0\t0\t0
"""


ROUTE_PRINT = """===========================================================================
IPv4 Route Table
===========================================================================
Active Routes:
Network Destination        Netmask          Gateway       Interface  Metric
          0.0.0.0          0.0.0.0      192.168.1.1    192.168.1.20     25
        127.0.0.0        255.0.0.0         On-link         127.0.0.1    331
      192.168.1.0    255.255.255.0         On-link      192.168.1.20    281
===========================================================================
Persistent Routes:
  Network Address          Netmask  Gateway Address  Metric
          0.0.0.0          0.0.0.0      10.9.9.9  Default
===========================================================================
"""


PROC_IPV6_ROUTE = """2a0f0077000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001    wlan0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001    wlan0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003    wlan0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000002 00000800 00000001 00000000 00000003     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001       lo
"""


ROUTE_PRINT6 = """===========================================================================
IPv6 Route Table
===========================================================================
Active Routes:
 If Metric Network Destination      Gateway
 12    281 ::/0                     fe80::1
  1    331 ::1/128                  On-link
 12    281 2a0f:77:1::/64           On-link
 12    281 fe80::/64                On-link
===========================================================================
Persistent Routes:
  None
"""


ROUTE_GET = """   route to: default
destination: default
       mask: default
    gateway: 192.168.0.254
  interface: en0
      flags: <UP,GATEWAY,DONE,STATIC,PRCLONING>
"""


IGD_DESCRIPTION = b"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType>
<deviceList><device><deviceList><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<controlURL>/ctl/v1</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>
<controlURL>/ctl/IPConn</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPv6FirewallControl:1</serviceType>
<controlURL>/ctl/IP6FCtl</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"""


def soap_reply(action: str, fields: dict[str, str]) -> bytes:
    """A router's SOAP answer to `action`, with its out-arguments."""
    inner = "".join(f"<{name}>{value}</{name}>" for name, value in fields.items())
    return (f'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
            f'<s:Body><u:{action}Response xmlns:u="urn:x">{inner}</u:{action}Response></s:Body>'
            f'</s:Envelope>').encode()


def soap_fault(code: int, description: str) -> bytes:
    return (f'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
            f'<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>'
            f'<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>{code}</errorCode>'
            f'<errorDescription>{description}</errorDescription></UPnPError></detail></s:Fault>'
            f'</s:Body></s:Envelope>').encode()


def natpmp_answer(opcode: int, result: int, body: bytes = b"") -> bytes:
    return struct.pack("!BBHI", 0, 128 + opcode, result, 1234) + body


def pcp_answer(nonce: bytes, result: int = 0, port: int = 5050, external_port: int = 5050,
               external_ip: str = "203.0.113.7", lifetime: int = 3600) -> bytes:
    header = struct.pack("!BBBBII12x", 2, 128 + 1, 0, result, lifetime, 99)
    return header + struct.pack("!12sB3xHH16s", nonce, 6, port, external_port,
                                pcr.pcp_address(external_ip))


class LoopbackHttp:
    """A one-shot HTTP server on 127.0.0.1 that sends `reply` slowly or not (no router, no discovery)."""

    def __init__(self, reply: bytes, pause: float = 0.0):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, args=(reply, pause), daemon=True)
        self.thread.start()

    def _serve(self, reply: bytes, pause: float) -> None:
        with self.listener, self.listener.accept()[0] as conn:
            conn.settimeout(WAIT)
            conn.recv(4096)
            try:
                for at in range(0, len(reply), 65536):
                    conn.sendall(reply[at:at + 65536])
                    self.sent = at + len(reply[at:at + 65536])
                    time.sleep(pause)
            except OSError:
                pass

    def close(self) -> None:
        self.thread.join(WAIT * 2)


def router_result(outcome, **fields) -> pcr.RouterResult:
    fields = {"lan_ip": "192.168.1.20", "ports": (5050,), "mac": "aa:bb:cc:dd:ee:ff", **fields}
    return pcr.RouterResult(outcome, **fields)


class FakeWay:
    """A router way without a network: records what it was asked."""

    def __init__(self, name="UPnP", external_ip="203.0.113.7", refuse=(), moved=None,
                 no_public=False):
        self.name, self.external_ip, self.refuse, self.no_public = name, external_ip, refuse, no_public
        self.moved = moved or {}
        self.asked: list[tuple] = []

    def forward(self, port, wanted, lease, deadline, exact=False):
        self.asked.append(("forward", port, wanted, lease) + (("exact",) if exact else ()))
        if port in self.refuse or wanted in self.refuse:
            raise pcr.RouterRefused(self.name, "port taken", no_public=self.no_public)
        return self.moved.get(port, wanted), lease

    def renew(self, port, external_port, lease, deadline):
        self.asked.append(("renew", port, external_port, lease))
        return self.moved.get(("renew", port), external_port), lease

    def remove(self, port, external_port, deadline):
        self.asked.append(("remove", port, external_port))

    def external_address(self, deadline):
        return self.external_ip


HOME_NUMBERS = itertools.count(1)


ROUTER_SAYS = 12.0   # the server's sentence comes within ROUTER_OPEN_TIME, start-up included
# A router speaking both PCP and UPnP is asked both ways at once, and the first to answer
# forwards the ports (or opens the IPv6 firewall): PCP as a rule, UPnP on a loaded machine.
EITHER_WAY = r"(?:PCP|UPnP)"


# Asks as the server does, for tests of the parts the command line does not set:
# argv: the folder of pcr_server.py, lease seconds, protocols, seconds to keep.
MAPPER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import pcr_server as pcr
router = pcr.RouterPorts([5050], lease=float(sys.argv[2]), protocols=tuple(sys.argv[3].split(",")))
print(pcr.router_sentence(router.open()), flush=True)
time.sleep(float(sys.argv[4]))
router.close()
print("closed", flush=True)
"""


# The same for the router's IPv6 firewall: argv: the folder of pcr_server.py, this
# machine's IPv6 address, lease seconds, protocols, seconds to keep.
MAPPER6 = """
import sys, time
sys.path.insert(0, sys.argv[1])
import pcr_server as pcr
holes = pcr.Pinholes([5050], sys.argv[2], lease=float(sys.argv[3]), protocols=tuple(sys.argv[4].split(",")))
print(pcr.pinhole_sentence(holes.open()), flush=True)
time.sleep(float(sys.argv[5]))
holes.close()
print("closed", flush=True)
"""


# A phone outside opening the page: joins over its WebSocket at argv[1] (HOST:PORT) as
# argv[2], says argv[3] and prints "said" once the room has relayed it.
PAGE_GUEST = """
import json, sys
from websockets.sync.client import connect
where, name, text = sys.argv[1:4]
with connect(f"ws://{where}/ws", origin=f"http://{where}", open_timeout=5) as ws:
    ws.recv(5)
    ws.send(name)
    while True:
        event = json.loads(ws.recv(5))
        if event["type"] == "welcome":
            ws.send(text)
        elif event["type"] == "chat" and event["text"] == text:
            print("said", flush=True)
            break
"""


# A host on the LAN that answers every SSDP search with two bad answers: a
# LOCATION on another host (argv[1]), and a 10 MB description of its own.
HOSTILE_HOST = """
import socket, struct, sys, threading
other, me = sys.argv[1], sys.argv[2]
def serve_big():
    with socket.create_server(("0.0.0.0", 8081)) as listener:
        conn, _ = listener.accept()
        conn.settimeout(15)
        conn.recv(4096)
        sent = 0
        try:
            conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: text/xml\\r\\n\\r\\n<root>")
            while sent < 10 << 20:
                conn.sendall(b"<a/>" * 16384)
                sent += 65536
            print("big: all 10 MB sent", flush=True)
        except OSError:
            print(f"big: cut after {sent} bytes", flush=True)
threading.Thread(target=serve_big, daemon=True).start()
ssdp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ssdp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ssdp.bind(("", 1900))
ssdp.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                socket.inet_aton("239.255.255.250") + socket.inet_aton(me))
print("ready", flush=True)
while True:
    data, peer = ssdp.recvfrom(2048)
    if data.startswith(b"M-SEARCH"):
        for location in (f"http://{other}:8080/rootDesc.xml", f"http://{me}:8081/big.xml"):
            ssdp.sendto(("HTTP/1.1 200 OK\\r\\nCACHE-CONTROL: max-age=120\\r\\nEXT:\\r\\n"
                         "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\\r\\n"
                         f"LOCATION: {location}\\r\\n\\r\\n").encode(), peer)
"""


# Prints a line for every TCP connection to argv[1] (a port): nobody should come.
TRAP = """
import socket, sys
with socket.create_server(("0.0.0.0", int(sys.argv[1]))) as listener:
    print("ready", flush=True)
    while True:
        conn, peer = listener.accept()
        print(f"contacted by {peer[0]}", flush=True)
        conn.close()
"""


# Prints a line for every packet to the router's NAT-PMP/PCP port or SSDP.
ROUTER_EAR = """
import select, socket, sys
control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
control.bind(("0.0.0.0", 5351))
ssdp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ssdp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ssdp.bind(("", 1900))
ssdp.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                socket.inet_aton("239.255.255.250") + socket.inet_aton(sys.argv[1]))
print("ready", flush=True)
while True:
    for sock in select.select([control, ssdp], [], [])[0]:
        data, peer = sock.recvfrom(2048)
        print(f"heard on {sock.getsockname()[1]} from {peer[0]}", flush=True)
"""


MINIUPNPD_CONF = """ext_ifname=rwan
listening_ip=br0
port=0
enable_upnp={upnp}
enable_natpmp={natpmp}
secure_mode=yes
system_uptime=yes
min_lifetime=2
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b
upnp_table_name=pcr_filter
upnp_nat_table_name=pcr_nat
upnp_forward_chain=pcr_forward
upnp_nat_chain=pcr_prerouting
upnp_nat_postrouting_chain=pcr_postrouting
allow 1024-65535 192.168.77.0/24 1024-65535
{port_80}deny 0-65535 0.0.0.0/0 0-65535
"""
PORT_80_RULE = "allow 80 192.168.77.0/24 1024-65535\n"


# The router's firewall: LAN out, replies back in; in from the WAN only what
# miniupnpd opens in its chains (made first: miniupnpd fills them, never makes them).
ROUTER_RULES = """
table inet pcr_filter {
  chain pcr_forward { }
  chain forward { type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "br0" accept
    jump pcr_forward; }
}
table inet pcr_nat {
  chain pcr_prerouting { }
  chain pcr_postrouting { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump pcr_prerouting; }
  chain postrouting { type nat hook postrouting priority 100; policy accept;
    oifname "rwan" masquerade
    jump pcr_postrouting; }
}
"""


# The router's IPv6 (issue 34): IGDv2 (its WANIPv6FirewallControl: pinholes) and the WAN
# side for IPv6; PCP over IPv6 comes with enable_natpmp.
MINIUPNPD_IPV6 = """ext_ifname6=rwan
force_igd_desc_v1=no
"""


# A router whose PCP does not answer over IPv6 (miniupnpd answers it even without
# enable_natpmp): pinholes then come from UPnP alone.
NO_PCP6 = """table ip6 pcr_no_pcp {
  chain in { type filter hook input priority 0; udp dport 5351 drop; }
}
"""


@functools.lru_cache(maxsize=None)
def namespaces_missing(*tools: str) -> str:
    """Why network namespaces (and `tools`) cannot be had here; "" if they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    missing = [tool for tool in ("ip", *tools) if not shutil.which(tool)]
    if missing:
        return f"not installed or not on PATH: {', '.join(missing)} (.ci/run installs them)"
    name = f"pcr{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=WAIT)
    if made.returncode:
        return f"cannot make network namespaces here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=WAIT)
    return ""


def home_network_missing() -> str:
    """Why a home network of namespaces, with its router, cannot be built here; "" if it can."""
    return namespaces_missing("nft", "miniupnpd", "upnpc", "natpmpc")


class HomeNetwork:
    """A home network built from namespaces, torn down when the test ends:
    lan (this machine, 192.168.77.20), router (192.168.77.1 inside, `wan_ip`
    outside; nftables NAT, miniupnpd when started), wan (a friend, .2 beside
    the router's WAN address) and, if asked, other (a second LAN host,
    192.168.77.66).  With `ipv6`, IPv6 as a home gets it too (_build_ipv6).
    No namespace is connected to this machine's own network."""

    LAN_IP, ROUTER_IP, OTHER_IP = "192.168.77.20", "192.168.77.1", "192.168.77.66"
    # A global-looking prefix that lives only in the namespaces (miniupnpd refuses
    # documentation ones): the home's /64 and the link to the friend.
    LAN_IP6, ROUTER_IP6, FRIEND_IP6 = "2a0f:77:1::20", "2a0f:77:1::1", "2a0f:77:ffff::2"

    def __init__(self, case: unittest.TestCase, wan_ip: str = "11.0.0.1", other_host: bool = False,
                 ipv6: bool = False):
        self.case, self.wan_ip, self.ipv6 = case, wan_ip, ipv6
        self.friend_ip = wan_ip.rsplit(".", 1)[0] + ".2"
        tag = f"pcr{os.getpid()}n{next(HOME_NUMBERS)}"
        self.ns = {role: f"{tag}-{role}" for role in ("lan", "router", "wan", "other")
                   if role != "other" or other_host}
        self.dir = tempfile.mkdtemp()
        case.addCleanup(shutil.rmtree, self.dir, True)
        self.procs: list[subprocess.Popen] = []
        self.made: list[str] = []
        self.description_url = ""   # miniupnpd's, once started with UPnP
        case.addCleanup(self.tear_down)   # also when building fails half-way
        self._build()

    def ip(self, *args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=WAIT)
        if done.returncode:
            raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")

    def run(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A command inside the namespace `role`, bounded."""
        done = subprocess.run(self.inside(role, *args), capture_output=True, text=True,
                              timeout=ROUTER_SAYS)
        if check and done.returncode:
            raise AssertionError(f"{args}: {done.returncode} {done.stdout} {done.stderr}")
        return done

    def inside(self, role: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[role], *args]

    def _build(self) -> None:
        for name in self.ns.values():
            self.ip("netns", "add", name)
            self.made.append(name)
            self.ip("-n", name, "link", "set", "lo", "up")
        lan, router, wan = self.ns["lan"], self.ns["router"], self.ns["wan"]
        self.ip("link", "add", "lan0", "netns", lan, "type", "veth", "peer", "name", "rlan", "netns", router)
        self.ip("link", "add", "rwan", "netns", router, "type", "veth", "peer", "name", "wan0", "netns", wan)
        self.ip("-n", router, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        self.ip("-n", router, "link", "set", "rlan", "master", "br0", "up")
        self.ip("-n", router, "addr", "add", f"{self.ROUTER_IP}/24", "dev", "br0")
        self.ip("-n", router, "addr", "add", f"{self.wan_ip}/24", "dev", "rwan")
        for name, device, address in ((router, "br0", None), (router, "rwan", None),
                                      (lan, "lan0", self.LAN_IP), (wan, "wan0", self.friend_ip)):
            if address:
                self.ip("-n", name, "addr", "add", f"{address}/24", "dev", device)
            self.ip("-n", name, "link", "set", device, "up")
        self.ip("-n", lan, "route", "add", "default", "via", self.ROUTER_IP)
        if "other" in self.ns:
            other = self.ns["other"]
            self.ip("link", "add", "oth0", "netns", other, "type", "veth", "peer", "name", "roth",
                    "netns", router)
            self.ip("-n", router, "link", "set", "roth", "master", "br0", "up")
            self.ip("-n", other, "addr", "add", f"{self.OTHER_IP}/24", "dev", "oth0")
            self.ip("-n", other, "link", "set", "oth0", "up")
            self.ip("-n", other, "route", "add", "default", "via", self.ROUTER_IP)
        self.run("router", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = os.path.join(self.dir, "router.nft")
        with open(rules, "w") as f:
            f.write(ROUTER_RULES)
        self.run("router", "nft", "-f", rules)
        if self.ipv6:
            self._build_ipv6()

    def _build_ipv6(self) -> None:
        """The home's /64 on the LAN with the router's link-local fe80::1 as the way out
        (as a router's advertisement gives it), the friend's on the WAN side, forwarding
        on; the router's firewall (ROUTER_RULES, for both families) drops new inbound IPv6."""
        lan, router, wan = self.ns["lan"], self.ns["router"], self.ns["wan"]
        for name, device, address in ((router, "br0", f"{self.ROUTER_IP6}/64"), (router, "br0", "fe80::1/64"),
                                      (router, "rwan", "2a0f:77:ffff::1/64"),
                                      (lan, "lan0", f"{self.LAN_IP6}/64"), (wan, "wan0", f"{self.FRIEND_IP6}/64")):
            self.ip("-n", name, "addr", "add", address, "dev", device, "nodad")
        self.ip("-n", lan, "-6", "route", "add", "default", "via", "fe80::1", "dev", "lan0")
        self.ip("-n", wan, "-6", "route", "add", "2a0f:77:1::/64", "via", "2a0f:77:ffff::1")
        self.ip("-n", router, "-6", "route", "add", "default", "via", self.FRIEND_IP6)
        self.run("router", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

    def start(self, role: str, *args: str, name: str) -> str:
        """Start a program in `role` that prints to a file; the file's path."""
        path = os.path.join(self.dir, f"{name}.out")
        with open(path, "w") as out:
            self.procs.append(subprocess.Popen(self.inside(role, *args), stdout=out,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        return path

    def printed(self, path: str, needle: str, timeout: float = WAIT) -> str:
        """The file's text once `needle` is in it; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} in {os.path.basename(path)}: {text[-2000:]!r}")
            time.sleep(0.05)

    def start_router(self, upnp: bool = True, natpmp: bool = True, port_80: bool = False) -> str:
        """miniupnpd in the router namespace; its log's path.  `port_80`: it may forward
        its port 80 too (--https), which the default rules keep for the router's own."""
        conf = os.path.join(self.dir, "miniupnpd.conf")
        with open(conf, "w") as f:
            f.write(MINIUPNPD_CONF.format(upnp="yes" if upnp else "no",
                                          natpmp="yes" if natpmp else "no",
                                          port_80=PORT_80_RULE if port_80 else "")
                    + MINIUPNPD_IPV6 * self.ipv6)
        if self.ipv6 and not natpmp:
            rules = os.path.join(self.dir, "no-pcp6.nft")
            with open(rules, "w") as f:
                f.write(NO_PCP6)
            self.run("router", "nft", "-f", rules)
        log_path = self.start("router", "miniupnpd", "-d", "-f", conf, "-P",
                              os.path.join(self.dir, "miniupnpd.pid"), name="miniupnpd")
        text = self.printed(log_path, "HTTP listening on port" if upnp
                            else "Listening for NAT-PMP/PCP traffic")
        if upnp:
            port = re.search(r"HTTP listening on port (\d+)", text).group(1)
            self.description_url = f"http://{self.ROUTER_IP}:{port}/rootDesc.xml"
            if natpmp:
                self.printed(log_path, "Listening for NAT-PMP/PCP traffic")
        return log_path

    def start_ca(self, nonce_reject: int = 5, validity: int = 0) -> str:
        """pebble, Let's Encrypt's test CA, on the friend's side (the internet): its
        validator checks port 80 of the router's WAN address.  `nonce_reject`: the
        percentage of nonces it refuses (badNonce); `validity`: its certificates'
        seconds (0: its own default, years).  Sets `acme` (its directory) and `ca_file`
        (its https certificate: --acme-ca-file); its log's path."""
        self.ca_file, key = os.path.join(self.dir, "pebble.pem"), os.path.join(self.dir, "pebble.key")
        made = openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                       "-nodes", "-keyout", key, "-out", self.ca_file, "-days", "2", "-subj",
                       "/CN=pebble", "-addext", f"subjectAltName=IP:{self.friend_ip}")
        assert made.returncode == 0, made.stderr
        conf = os.path.join(self.dir, "pebble.json")
        with open(conf, "w") as f:
            json.dump({"pebble": {
                "listenAddress": f"{self.friend_ip}:14000",
                "managementListenAddress": f"{self.friend_ip}:15000",
                "certificate": self.ca_file, "privateKey": key, "httpPort": 80, "tlsPort": 443,
                "ocspResponderURL": "", "externalAccountBindingRequired": False,
                **({"certificateValidityPeriod": validity} if validity else {})}}, f)
        log_path = self.start("wan", "env", "PEBBLE_VA_NOSLEEP=1",
                              f"PEBBLE_WFE_NONCEREJECT={nonce_reject}", "pebble", "-config", conf,
                              name="pebble")
        self.printed(log_path, "ACME directory available at")
        self.acme = f"https://{self.friend_ip}:14000/dir"
        return log_path

    def ca_root(self) -> str:
        """The PEM of the root that signs pebble's certificates (a new one at each start)."""
        return self.run("wan", sys.executable, "-c", (
            "import ssl, sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], "
            "context=ssl.create_default_context(cafile=sys.argv[2]), timeout=5).read().decode())"),
            f"https://{self.friend_ip}:15000/roots/0", self.ca_file).stdout

    def room(self, *args: str) -> subprocess.Popen:
        """pcr_server.py on the LAN host, port 5050 (and no page, unless --web-port is
        given); killed at the end if still running."""
        page = () if "--web-port" in args else ("--web-port", "off")
        proc = subprocess.Popen(
            self.inside("lan", sys.executable, SERVER, "--port", "5050", "--public-ip-url", "",
                        "--log-file", "", *page, *args),
            cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def mappings(self, role: str = "lan") -> list[tuple[int, str, int]]:
        """(external port, internal address, internal port) of every TCP mapping, as
        miniupnpc's upnpc lists them (asked from `role`)."""
        listed = self.run(role, "upnpc", "-u", self.description_url, "-l").stdout
        return [(int(e), ip, int(i)) for e, ip, i in
                re.findall(r"^\s*\d+\s+TCP\s+(\d+)->([\d.]+):(\d+)", listed, re.MULTILINE)]

    def nat_rules(self) -> str:
        """The router's forwarding rules that miniupnpd made (nftables)."""
        return self.run("router", "nft", "list", "chain", "inet", "pcr_nat", "pcr_prerouting").stdout

    def public_address(self) -> str:
        """The router's external address as natpmpc (libnatpmp) hears it."""
        said = self.run("lan", "natpmpc", "-g", self.ROUTER_IP, check=False).stdout
        found = re.search(r"Public IP address : ([\d.]+)", said)
        return found.group(1) if found else ""

    def pinholes(self) -> list[int]:
        """The ports the router's IPv6 firewall lets in to the LAN host: miniupnpd's
        pinholes, as nftables prints them (the IPv6 destination as raw payload)."""
        rules = self.run("router", "nft", "list", "chain", "inet", "pcr_filter", "pcr_forward").stdout
        host = ipaddress.IPv6Address(self.LAN_IP6).packed.hex()
        return sorted(int(port) for port in re.findall(rf"th dport (\d+) @nh,192,128 0x{host}\b", rules))

    def friend(self, port: int, name: str = "friend", over_ipv6: bool = False) -> ClientProcess:
        """A member on the internet side, joining through the router's WAN address, or
        over IPv6 at the LAN host's own address."""
        where = f"[{self.LAN_IP6}]" if over_ipv6 else self.wan_ip
        c = ClientProcess(f"{where}:{port}", name=name, prefix=self.inside("wan"))
        self.case.addCleanup(c.close)
        return c

    def at_home(self, name: str) -> ClientProcess:
        c = ClientProcess("127.0.0.1:5050", name=name, prefix=self.inside("lan"))
        self.case.addCleanup(c.close)
        return c

    def reaches_from_wan(self, port: int, path: str = "", host: str = "", role: str = "wan") -> str:
        """What the friend's side (or `role`) gets from the router's WAN address (or `host`):
        "refused", "timeout", or for `path` an HTTP status and size."""
        code = ("import socket, sys, urllib.request\n"
                "try:\n"
                "    if sys.argv[3]:\n"
                "        h = f'[{sys.argv[1]}]' if ':' in sys.argv[1] else sys.argv[1]\n"
                "        r = urllib.request.urlopen(f'http://{h}:{sys.argv[2]}{sys.argv[3]}', timeout=3)\n"
                "        print(r.status, len(r.read()))\n"
                "    else:\n"
                "        socket.create_connection((sys.argv[1], int(sys.argv[2])), 3).close()\n"
                "        print('connected')\n"
                "except ConnectionRefusedError:\n    print('refused')\n"
                "except OSError as e:\n    print('timeout' if 'timed out' in str(e) else e)\n")
        return self.run(role, sys.executable, "-c", code, host or self.wan_ip, str(port),
                        path).stdout.strip()

    def tear_down(self) -> None:
        """Kill what was started, then delete the namespaces (and all in them)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=START_WAIT)
        for name in self.made:
            delete_namespace(name)


def delete_namespace(name: str) -> None:
    """Kill what runs in the network namespace `name` (only ever a test's own), then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                          timeout=WAIT).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=WAIT)


CUT_OFF = """table inet cut {
    chain in { type filter hook input priority 0; policy drop; }
    chain out { type filter hook output priority 0; policy drop; }
}
"""


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each whole unmasked frame in `data`."""
    frames = []
    while len(data) >= 2:
        length, at = data[1] & 0x7F, 2
        if length == 126:
            length, at = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, at = int.from_bytes(data[2:10], "big"), 10
        if len(data) < at + length:
            break
        frames.append((data[0] & 0x0F, data[at:at + length]))
        data = data[at + length:]
    return frames


try:
    from PIL import Image
except ImportError:   # a test tool only: the server never imports it
    Image = None


try:
    import zxingcpp
except ImportError:   # a test tool only: the server never imports it
    zxingcpp = None


if Image is None:     # zxing-cpp reads the pictures pillow makes
    zxingcpp = None


NO_ZXING = "zxing-cpp and pillow are not installed (pip install zxing-cpp pillow)"


NO_ZBAR = "zbar's zbarimg is not installed (apt install zbar-tools)"


BLOCKS = {"█": (True, True), "▀": (True, False), "▄": (False, True), " ": (False, False)}


def code_image(modules: list, scale: int = 2) -> "Image.Image":
    """A code as printed: dark modules black on white, with a quiet zone of 4."""
    side = len(modules) + 8
    image = Image.new("L", (side, side), 255)
    for r, row in enumerate(modules):
        for c, dark in enumerate(row):
            if dark:
                image.putpixel((c + 4, r + 4), 0)
    return image.resize((side * scale, side * scale), Image.NEAREST)


SGR_CODE = re.compile(r"\x1b\[([0-9;]*)m")


# A terminal's themes: (text, background) as grey levels; and the grey each colour
# code shows (30-37 text, 40-47 background, 90-97 and 100-107 their bright forms)
THEMES = {"light": (0, 255), "dark": (229, 0)}
PALETTE = {0: 0, 7: 229, 60: 77, 67: 255}   # black, white, bright black, bright white; others 128


def terminal_image(text: str, theme: str = "dark", colours: bool = True,
                   cell: tuple[int, int] = (8, 16)) -> "Image.Image":
    """The block-character lines of `text` as a terminal with `theme` shows them:
    a block in the text's colour, the rest in the background's, each set by the
    SGR codes in the text (or left to the theme, without `colours`)."""
    default = THEMES[theme]
    rows = []
    for line in text.splitlines():
        if not line or not set(SGR_CODE.sub("", line)) <= set(BLOCKS):
            continue
        cells, ink, paper = [], *default
        for i, part in enumerate(SGR_CODE.split(line)):
            if i % 2 == 0:
                cells += [(BLOCKS[char], ink, paper) for char in part]
                continue
            for code in map(int, filter(None, part.split(";"))) if colours else ():
                if code == 0:
                    ink, paper = default
                elif 30 <= code <= 37 or 90 <= code <= 97:
                    ink = PALETTE.get(code - 30, 128)
                elif 40 <= code <= 47 or 100 <= code <= 107:
                    paper = PALETTE.get(code - 40, 128)
        rows.append(cells)
    width, height = cell
    image = Image.new("L", (width * max(map(len, rows)) + 40, height * len(rows) + 40), default[1])
    for y, row in enumerate(rows):
        for x, (halves, ink, paper) in enumerate(row):
            for half, lit in enumerate(halves):
                top = 20 + y * height + half * height // 2
                image.paste(ink if lit else paper,
                            (20 + x * width, top, 20 + (x + 1) * width, top + height // 2))
    return image


def console_image(text: str) -> "Image.Image":
    """Block characters as a terminal with light text on a dark background shows them."""
    return terminal_image(text, "dark")


def zxing_read(image) -> list:
    """What zxing-cpp reads in `image`: (text, error correction level) for each code."""
    return [(found.text, found.ec_level)
            for found in zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)]


def zbar_read(images: list, folder: str) -> list[str]:
    """What zbarimg reads in each image, in order, one run for all (texts without line ends)."""
    paths = []
    for i, image in enumerate(images):
        paths.append(os.path.join(folder, f"{i}.png"))
        image.save(paths[-1])
    done = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", *paths],
                          capture_output=True, timeout=120, env={**os.environ, "LC_ALL": "C.UTF-8"})
    return done.stdout.decode("utf-8", "replace").split("\n")[:-1]


def sample_text(size: int) -> str:
    """`size` bytes of printable ASCII, different for each size (the link's characters among them)."""
    return "".join(chr(32 + (i * 37 + size * 11) % 95) for i in range(size))


def test_net_missing() -> str:
    """Why a network namespace with an address of its own cannot be made here; "" if it can."""
    return namespaces_missing()


class TestNet:
    """A network namespace of its own, deleted when the test ends: loopback and one
    interface at 192.0.2.10 (TEST-NET-1), a veth pair with both ends inside, so a room
    in it is on a network while no packet leaves it and nothing of this machine's changes."""

    IP = "192.0.2.10"

    def __init__(self, case: unittest.TestCase):
        self.name = f"pcr{os.getpid()}n{next(HOME_NUMBERS)}-qr"
        self.dir = tempfile.mkdtemp()
        case.addCleanup(shutil.rmtree, self.dir, True)
        case.addCleanup(delete_namespace, self.name)   # also when building fails half-way
        for args in (("netns", "add", self.name), ("-n", self.name, "link", "set", "lo", "up"),
                     ("-n", self.name, "link", "add", "net0", "type", "veth", "peer", "name", "net1"),
                     ("-n", self.name, "addr", "add", f"{self.IP}/24", "dev", "net0"),
                     ("-n", self.name, "link", "set", "net0", "up"),
                     ("-n", self.name, "link", "set", "net1", "up")):
            done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=WAIT)
            if done.returncode:
                raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")

    def inside(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def room(self, *args: str, **kw) -> subprocess.Popen:
        """pcr_server.py in the namespace, port 5050, its page on 5051."""
        return subprocess.Popen(self.inside(sys.executable, SERVER, "--port", "5050", "--web-port",
                                            "5051", "--public-ip-url", "", "--log-file", "", *args),
                                cwd=self.dir, **kw)


def on_a_terminal(case: unittest.TestCase, args: list[str], columns: int = 80, cwd=None, env=None
                  ) -> tuple[subprocess.Popen, int, bytearray, threading.Condition]:
    """pcr_server.py with `args` on a pseudo-terminal `columns` wide, which is its
    controlling terminal (Ctrl+C typed there reaches it); (process, the
    terminal's leader, all it shows, a condition notified as it grows)."""
    import fcntl
    import pty
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    proc = subprocess.Popen([sys.executable, SERVER, *args], stdin=follower, stdout=follower,
                            stderr=follower, close_fds=True, cwd=cwd, env=env,
                            preexec_fn=own_terminal)
    os.close(follower)
    shown, changed = bytearray(), threading.Condition()

    def read() -> None:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:   # the terminal's other side closed
                data = b""
            with changed:
                shown.extend(data)
                changed.notify_all()
            if not data:
                return
    threading.Thread(target=read, daemon=True).start()

    def end() -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(START_WAIT)
        os.close(leader)
    case.addCleanup(end)
    return proc, leader, shown, changed


def shown_until(shown: bytearray, changed: threading.Condition, needle: bytes,
                timeout: float = WAIT) -> bytes:
    """All a terminal shows, once it shows `needle` (bounded)."""
    with changed:
        if not changed.wait_for(lambda: needle in shown, timeout):
            raise AssertionError(f"no {needle!r} on the terminal; it shows {bytes(shown)!r}")
        return bytes(shown)


def read_terminal(fd: int, needle: bytes, timeout: float = WAIT * 2) -> bytes:
    """What a pty's master `fd` gives until `needle` (bounded)."""
    got, deadline = b"", time.monotonic() + timeout
    while needle not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"timed out waiting for {needle!r}; got {got!r}")
        try:
            got += os.read(fd, 65536)
        except OSError:   # the other side closed
            raise AssertionError(f"the terminal closed before {needle!r}; got {got!r}") from None
    return got


# On the namespace's Tk thread: the window's code as the room starts, the page
# goes off, the port changes, the page comes back, the room goes to loopback
# only; a screenshot at each step.  argv: this folder, the screenshots' folder, the key.
WINDOW_STEPS = """
import json, subprocess, sys, time, tkinter
sys.path.insert(0, sys.argv[1])
import pcr_server as pcr
root = tkinter.Tk()
pcr.setup_logging("", console=False)   # the log panel shows what a room logs
w = pcr.ServerWindow(root, pcr.Settings(port=5050, public_ip_url="", log_file="", room_key=sys.argv[3]))
def until(done):
    end = time.monotonic() + 20
    while not done():
        if time.monotonic() > end:
            sys.exit(f"timed out at {name}")
        root.update()
        time.sleep(0.02)
def step(shown):
    until(lambda: w.view.invite_code.link == shown and (shown is None or w.page_listening))
    for _ in range(20):
        root.update()
        time.sleep(0.02)
    shot = f"{sys.argv[2]}/{name}.png"
    subprocess.run(["import", "-window", "root", shot], check=True, timeout=30)
    canvas = w.view.invite_code.canvas
    print(json.dumps({"step": name, "shot": shot, "link": shown, "window": [root.winfo_width(),
        root.winfo_height()], "canvas": canvas.winfo_width() if canvas.winfo_ismapped() else 0}),
        flush=True)
def link(port):
    return pcr.invitation(f"http://192.0.2.10:{port}/", sys.argv[3])
name = "page-off"; w.view.start_button.invoke(); until(lambda: w.state == pcr.RoomState.RUNNING)
step(None)
name = "page-on"; w.view.page_switch.invoke(); step(link(5051))
name = "page-off-again"; w.view.page_switch.invoke(); step(None)
name = "new-port"; w._take_port("5060"); until(lambda: w.listening == ("0.0.0.0", 5060))
w.view.page_switch.invoke(); step(link(5061))
name = "loopback"; w._take_address("127.0.0.1", "5060"); until(lambda: w.listening == ("127.0.0.1", 5060))
step(None)
w.close()
until(lambda: w.closed)
"""


# In the namespace: Chromium opens the link, joins with a name alone and
# says what its address bar shows, then what the history kept of the link.  argv: this folder, the link, the name.
# On a screen of the test's size: the window of a room with a key once it runs, after
# a Copy click, after a port change; at each step its geometry as xdotool reads it, the
# widgets given less than they ask (clipped) and how far its upper part scrolls.
# argv: this folder, the room's port, the port it moves to, the address it listens on.
WINDOW_FIT = """
import json, subprocess, sys, time, tkinter
sys.path.insert(0, sys.argv[1])
import pcr_server as pcr
root = tkinter.Tk()
pcr.setup_logging("", console=False)
port, moved = int(sys.argv[2]), int(sys.argv[3])
w = pcr.ServerWindow(root, pcr.Settings(host=sys.argv[4], port=port, web_port=port + 1, public_ip_url="",
                                        log_file="", room_key="tulip", history=20))
def until(done, what):
    end = time.monotonic() + 20
    while not done():
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {what}")
        root.update()
        time.sleep(0.02)
def clipped(widget):
    found = []
    for child in widget.winfo_children():
        if child.winfo_ismapped() and child.winfo_class() in ("TLabel", "TButton", "TCheckbutton") \\
                and (child.winfo_width() < child.winfo_reqwidth()
                     or child.winfo_height() < child.winfo_reqheight()):
            found.append(f"{child.winfo_class()} {str(child.cget('text'))[:40]!r}")
        found += clipped(child)
    return found
def step(name):
    for _ in range(25):
        root.update()
        time.sleep(0.02)
    shell = subprocess.run(["xdotool", "getwindowgeometry", "--shell", str(int(root.wm_frame(), 16))],
                           capture_output=True, text=True, timeout=20, check=True).stdout
    at = dict(line.split("=", 1) for line in shell.split())
    area = w.view.upper
    print(json.dumps({"step": name, **{k: int(at[k]) for k in ("X", "Y", "WIDTH", "HEIGHT")},
                      "clipped": clipped(root), "scrolls": area.canvas.cget("scrollregion"),
                      "holds": area.inner.winfo_reqheight(), "wider": [
                          name for name, wants, has in (("upper part", area.inner, area.canvas),
                                                        ("window", root.grid_slaves()[0], root))
                          if wants.winfo_reqwidth() > has.winfo_width()]}), flush=True)
w.view.start_button.invoke()
until(lambda: w.state == pcr.RoomState.RUNNING and w.page_listening, "the room")
step("started with a key")
w.view.copy_buttons["page"].invoke()
step("copied")
w.view.port_button.invoke()
w.dialog.entries[0].delete(0, "end")
w.dialog.entries[0].insert(0, str(moved))
w.dialog.ok()
until(lambda: w.state == pcr.RoomState.RUNNING and w.listening[1] == moved, "the new port")
step("new port")
w.close()
until(lambda: w.closed, "the window to close")
"""


BROWSER_STEPS = """
import json, sys, tempfile
sys.path.insert(0, sys.argv[1])
import test_pcr_server as t
driver = t.start_chromium(tempfile.mkdtemp())
try:
    driver.get(sys.argv[2])
    wait = t.WebDriverWait(driver, t.WAIT * 2)
    wait.until(lambda d: d.find_element(t.By.CSS_SELECTOR, "#name").is_displayed())
    name = driver.find_element(t.By.CSS_SELECTOR, "#name")
    name.clear()
    name.send_keys(sys.argv[3])
    driver.find_element(t.By.CSS_SELECTOR, "#join-button").click()
    wait.until(lambda d: d.find_element(t.By.CSS_SELECTOR, "#chat").is_displayed())
    seen = {"address": driver.current_url, "people": driver.find_element(
        t.By.CSS_SELECTOR, "#people-list").get_attribute("textContent")}
    driver.back()      # the page before, then the link's own entry in the history again
    driver.forward()
    seen["history"] = driver.current_url
    print(json.dumps(seen), flush=True)
finally:
    driver.quit()
"""


def stage_of(server: pcr.Server, name: str) -> "pcr.Stage | None":
    """Where the member with this name is in its life; None once it is gone
    (on the loop's thread)."""
    m = server.room.find(name)
    return m.stage if m is not None else None


class KeptPageProxy(CuttableProxy):
    """The proxy, serving the page so that a browser may keep it in its
    back/forward cache: the room serves it no-store, which Chromium never
    keeps (other browsers may)."""

    def passing(self, data: bytes) -> bytes:
        return data.replace(b"Cache-Control: no-store", b"Cache-Control: no-cache")


AXE = os.environ.get("PCR_AXE", "")   # axe.min.js of axe-core 4.x (.ci/run fetches it)


NO_AXE = ("no axe-core: set PCR_AXE to the axe.min.js of `npm pack axe-core@4` "
          "(.ci/run does this itself)")


# Before the page's script: every WebSocket it opens is kept in window.pcrSockets,
# so that a test can hand the page an event as if the room had sent it.
KEEP_SOCKETS = """(function () {
  const Real = window.WebSocket;
  function Kept(url, protocols) {
    const ws = new Real(url, protocols);
    window.pcrSockets.push(ws);
    return ws;
  }
  window.pcrSockets = [];
  Kept.prototype = Real.prototype;
  Object.assign(Kept, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = Kept;
})();"""


# What a reader of the page could not see whole: the page scrolling sideways,
# something past the window's edges, text running out of its box or clipped.
CUT_OFF_SCRIPT = """const cut = [], width = document.documentElement.clientWidth;
const what = function (el) { return el.tagName + (el.id ? '#' + el.id : '') + '.' + el.className; };
if (document.documentElement.scrollWidth > width) { cut.push('the page scrolls sideways'); }
for (const el of document.querySelectorAll('body *')) {
  if (!el.getClientRects().length || el.closest('.visually-hidden')) { continue; }
  const box = el.getBoundingClientRect(), style = getComputedStyle(el);
  if (box.left < -0.5 || box.right > width + 0.5) { cut.push(what(el) + ' is past the edge'); }
  if (style.display !== 'inline' && el.scrollWidth > el.clientWidth + 1
      && style.overflowX !== 'auto' && style.overflowX !== 'scroll') {
    cut.push(what(el) + ' runs out of its box');
  }
}
return cut;"""


NO_PIL = "the photo tests need pillow (pip install pillow)"


def picture(fmt: str = "JPEG", size: tuple[int, int] = (320, 240), noise: bool = False,
            **save) -> bytes:
    """A picture made by PIL, in `fmt`, saved with `save` (exif=, comment=, pnginfo=...)."""
    if noise:
        image = Image.merge("RGB", [Image.effect_noise(size, 80) for _ in range(3)])
    else:
        image = Image.linear_gradient("L").resize(size).convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def camera_exif() -> bytes:
    """EXIF as a phone's camera writes it: the camera, and where the photo was taken."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "PhoneMaker", "Camera 12"             # Make, Model
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}   # GPSInfo
    return exif.tobytes()


def camera_jpeg(size: tuple[int, int] = (4000, 3000)) -> bytes:
    """A camera's JPEG: camera and GPS EXIF, and a comment."""
    return picture("JPEG", size, quality=90, exif=camera_exif(), comment=b"taken at home")


def assert_plain_picture(test: unittest.TestCase, data: bytes, fmt: str, most: int = 2048) -> "Image.Image":
    """`data` decodes as a `fmt` picture of at most `most` px a side, without EXIF or text."""
    image = Image.open(io.BytesIO(data))
    image.load()
    test.assertEqual(image.format, fmt)
    test.assertLessEqual(max(image.size), most)
    test.assertEqual(dict(image.getexif()), {})
    test.assertNotIn(b"PhoneMaker", data)
    test.assertNotIn(b"taken at home", data)
    test.assertNotIn(b"Exif\x00\x00", data)
    return image


def jpeg_segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack("!H", len(body) + 2) + body


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG up to its first scan's header."""
    headers = jpeg_headers(data)[0]
    return headers[:[marker for marker, _, _ in headers].index(0xDA) + 1]


def jpeg_headers(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """(marker, start, end) of every segment of a JPEG, scans' headers included
    (each scan's data runs from its header's end to the next one's start), and
    where its EOI is."""
    found, pos = [], 2
    while data[pos + 1] != 0xD9:
        end = pos + 2 + struct.unpack_from("!H", data, pos + 2)[0]
        found.append((data[pos + 1], pos, end))
        pos = pcr.jpeg_scan_end(data, end) if data[pos + 1] == 0xDA else end
    return found, pos


def jpeg_markers(data: bytes) -> list[int]:
    """Every marker of a JPEG, segments and scans, in order (EOI last)."""
    return [marker for marker, _, _ in jpeg_headers(data)[0]] + [0xD9]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))


def png_chunks(data: bytes) -> list[bytes]:
    return [kind for kind, _ in png_chunk_bodies(data)]


def png_chunk_bodies(data: bytes) -> list[tuple[bytes, bytes]]:
    """(kind, data) of each of a PNG's chunks."""
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from("!I4s", data, pos)
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) & 1)


def webp_of(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def webp_chunks(data: bytes, start: int = 12, stop: int | None = None) -> list[tuple[bytes, bytes]]:
    """(kind, payload) of a WebP's chunks (or of an ANMF's, from `start` to `stop`)."""
    chunks, pos, stop = [], start, len(data) if stop is None else stop
    while pos + 8 <= stop:
        kind, length = struct.unpack_from("<4sI", data, pos)
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 8 + length + (length & 1)
    return chunks


def without_image_data(data: bytes, fmt: str) -> bytes:
    """A picture's bytes less its compressed pixels (JPEG scans, PNG IDAT, WebP
    VP8/VP8L/ALPH): what is left is where metadata can be.  A noise picture's
    pixels are random bytes, in which 'GPS' turns up now and then (in 1 of 200
    640x480 JPEGs here)."""
    if fmt == "JPEG":
        headers, eoi = jpeg_headers(data)
        return data[:2] + b"".join(data[start:end] for _, start, end in headers) + data[eoi:]
    if fmt == "PNG":
        return data[:8] + b"".join(
            struct.pack("!I", len(body)) + kind + (b"" if kind == b"IDAT" else body)
            for kind, body in png_chunk_bodies(data))
    assert fmt == "WEBP", fmt
    return data[:12] + b"".join(kind + (b"" if kind in (b"VP8 ", b"VP8L", b"ALPH") else body)
                                for kind, body in webp_chunks(data))


def crafted_photos(size: int = pcr.MAX_PHOTO) -> dict[str, bytes]:
    """The shapes of issue 30, each `size` bytes: what a hostile page could send to
    keep the loop busy (the first four made the old cleaner take seconds each)."""
    frame = jpeg_segment(0xC0, struct.pack("!BHHB", 8, 100, 100, 1) + b"\x01\x11\x00")
    scan = jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    head = png_chunk(b"IHDR", struct.pack("!IIBBBBB", 100, 100, 8, 2, 0, 0, 0))
    return {
        "JPEG of 4-byte APP0 segments": b"\xff\xd8" + b"\xff\xe0\x00\x02" * ((size - 2) // 4),
        "PNG of empty chunks": pcr.PNG_SIGNATURE + head + png_chunk(b"abCd", b"") * ((size - 33) // 12),
        "WebP of 8-byte chunks": webp_of(riff_chunk(b"abcd", b"") * ((size - 12) // 8)),
        "JPEG whose scan is FF 00 pairs": b"\xff\xd8" + frame + scan
                                          + b"\xff\x00" * ((size - 40) // 2) + b"\xff\xd9",
        "JPEG whose scan is restarts": b"\xff\xd8" + frame + scan
                                       + b"\xff\xd0" * ((size - 40) // 2) + b"\xff\xd9",
        "JPEG of fill bytes": b"\xff\xd8" + frame + scan + b"\x00" + b"\xff" * (size - 40) + b"\xd9",
        "JPEG of tiny scans": b"\xff\xd8" + frame + (scan + b"\x00") * ((size - 15) // 11),
        "PNG of empty IDATs": pcr.PNG_SIGNATURE + head + png_chunk(b"IDAT", b"") * ((size - 45) // 12)
                              + png_chunk(b"IEND", b""),
        "JPEG whose first SOF is 60000 px": b"\xff\xd8" + jpeg_segment(
            0xC0, struct.pack("!BHHB", 8, 60000, 60000, 1) + b"\x01\x11\x00") + frame + scan
            + bytes(size - 60) + b"\xff\xd9",
    }


def crafted_answers() -> dict:
    """What the room answers each of crafted_photos(): why it refuses it, or the
    size it shares it at."""
    return {"JPEG of 4-byte APP0 segments": pcr.TOO_MANY_PIECES,
            "PNG of empty chunks": pcr.TOO_MANY_PIECES,
            "WebP of 8-byte chunks": pcr.TOO_MANY_PIECES,
            "JPEG whose scan is FF 00 pairs": (100, 100),
            "JPEG whose scan is restarts": (100, 100),
            "JPEG of fill bytes": (100, 100),
            "JPEG of tiny scans": pcr.TOO_MANY_PIECES,
            "PNG of empty IDATs": pcr.TOO_MANY_PIECES,
            "JPEG whose first SOF is 60000 px": pcr.TOO_WIDE}


def share(page: "WebMember", data: bytes, announced: int | None = None) -> None:
    """What the page sends for a photo: `NUL photo BYTES`, then the bytes as one binary message."""
    page.ws.send(f"\x00photo {len(data) if announced is None else announced}")
    page.ws.send(data)


def photo_link(line: bytes) -> str:
    """The address in a terminal's `NAME shared a photo: LINK` line."""
    return re.search(rb"shared a photo: (\S+)\n", line).group(1).decode()


def fetch(url: str) -> tuple[str, dict[str, str], bytes]:
    """GET `url` (http://127.0.0.1:PORT/... or http://[::1]:PORT/...): (status line, headers, body)."""
    host, port, path = re.fullmatch(r"http://(127\.0\.0\.1|\[::1\]):(\d+)(/.*)", url).groups()
    got = http_get(int(port), f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode(),
                   host.strip("[]"))
    head, _, body = got.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


class RawPage:
    """A page member over a raw socket, to send what no library would (frames
    written by hand, a frame cut short); it answers pings while it reads."""

    def __init__(self, test: unittest.TestCase, port: int, name: str | None = None,
                 source: str = "127.0.0.1"):
        self.sock, response = raw_upgrade(port, source=source)
        test.addCleanup(self.sock.close)
        self.buf = response.partition(b"\r\n\r\n")[2]
        if name is not None:
            self.send(name.encode())
            self.until("welcome")

    def send(self, payload: bytes, opcode: int = 0x1, fin: bool = True) -> None:
        self.sock.sendall(WebSocketFramesTest.masked(payload, opcode, fin))

    def share(self, data: bytes, announced: int | None = None, sent: int | None = None) -> None:
        """A photo as the page sends it, or the first `sent` bytes of its one frame."""
        self.send(b"\x00photo %d" % (len(data) if announced is None else announced))
        frame = WebSocketFramesTest.masked(data, 0x2)
        self.sock.sendall(frame if sent is None else frame[:len(frame) - len(data) + sent])

    def next(self, timeout: float = WAIT) -> dict | int:
        """The next event, or the close code once the server closes."""
        deadline = time.monotonic() + timeout
        while True:
            frames = server_frames(self.buf)
            if frames:
                opcode, payload = frames[0]
                self.buf = self.buf[len(pcr.ws_frame(payload, opcode)):]
                if opcode == pcr.WS_CLOSE:
                    return struct.unpack("!H", payload[:2])[0]
                if opcode == pcr.WS_PING:
                    self.send(payload, pcr.WS_PONG)
                elif opcode == pcr.WS_TEXT:
                    return json.loads(payload)
                continue
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("closed without a close frame")
            self.buf += data

    def until(self, kind: str, timeout: float = WAIT) -> dict:
        while True:
            event = self.next(timeout)
            if isinstance(event, int):
                raise AssertionError(f"closed with {event} while waiting for {kind}")
            if event["type"] == kind:
                return event

    def close_code(self) -> int:
        while not isinstance(code := self.next(), int):
            pass
        return code


def loop_stalls(server: pcr.Server) -> list[float]:
    """From now on, the CPU time the loop's thread takes for each event on a
    member's socket: how long one member can hold the room up (the loop's own
    stall, not the wall clock).  Set before the members connect."""
    stalls, handle = [], server._on_event

    def timed(m, mask):
        start = time.thread_time()
        handle(m, mask)
        stalls.append(time.thread_time() - start)
    server._on_event = timed
    return stalls


def rss(pid: int) -> int:
    """A process's resident memory, in bytes (Linux)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------
# The file's own shape
# ---------------------------------------------------------------------------


class FileShapeTest(unittest.TestCase):
    """pcr_server.py reads top-down (issue 17): numbered sections, each using
    only those above it, the module's map naming them, the page last."""

    SECTION = re.compile(r"^# (\d+)\. (.+)$")

    @classmethod
    def setUpClass(cls):
        with open(pcr.__file__, encoding="utf-8") as f:
            cls.source = f.read()
        cls.tree = ast.parse(cls.source)
        lines = cls.source.splitlines()
        cls.sections = [(i + 1, int(m.group(1)), m.group(2)) for i, line in enumerate(lines)
                        if (m := cls.SECTION.match(line)) and lines[i - 1].startswith("# ----")]

    def section_of(self, line: int) -> int:
        number = 0
        for start, n, _ in self.sections:
            if start <= line:
                number = n
        return number

    def test_sections_are_numbered_in_order_and_named_in_the_map(self):
        numbers = [n for _, n, _ in self.sections]
        self.assertEqual(numbers, list(range(1, len(numbers) + 1)))
        self.assertGreaterEqual(len(numbers), 8)
        for _, n, title in self.sections:
            self.assertRegex(pcr.__doc__, rf"(?m)^\s+{n}\. {re.escape(title)}",
                             f"section {n} ({title}) not in the map")

    def test_no_section_uses_a_later_one(self):
        """The page data at the end is the one exception: code may read it when it runs."""
        defined = {}   # top-level name -> its section
        for node in self.tree.body:
            targets = []
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                targets = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    targets += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
            for name in targets:
                defined.setdefault(name, self.section_of(node.lineno))
        later, page = [], self.sections[-1][1]

        def visit(node, here: int, local: frozenset, running: bool) -> None:
            if isinstance(node, (ast.FunctionDef, ast.Lambda)):   # its own names shadow
                args = node.args
                names = {a.arg for a in args.args + args.kwonlyargs + args.posonlyargs}
                names |= {a.arg for a in (args.vararg, args.kwarg) if a}
                names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                          and isinstance(n.ctx, ast.Store)}
                local, running = local | names, True
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) \
                    and node.id not in local and defined.get(node.id, 0) > here \
                    and not (running and defined[node.id] == page):
                later.append(f"line {node.lineno}: {node.id} (section {defined[node.id]}) "
                             f"used in section {here}")
            for child in ast.iter_child_nodes(node):
                visit(child, here, local, running)

        for node in self.tree.body:
            visit(node, self.section_of(node.lineno), frozenset(), False)
        self.assertEqual(later, [])
        self.assertGreater(len(defined), 100)   # the walk saw the file

    def test_no_class_is_over_450_lines(self):
        sizes = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(self.tree)
                 if isinstance(node, ast.ClassDef)}
        self.assertGreater(sizes["Server"], 100)   # the walk saw the classes
        self.assertEqual({name: n for name, n in sizes.items() if n > 450}, {})

    def test_the_web_kind_is_told_apart_in_at_most_four_places(self):
        places = [node.lineno for node in ast.walk(self.tree) if isinstance(node, ast.Attribute)
                  and node.attr == "WEB" and isinstance(node.value, ast.Name)
                  and node.value.id == "Kind"]
        self.assertGreaterEqual(len(places), 1)
        self.assertLessEqual(len(places), 4, f"Kind.WEB on lines {places}")

    def test_a_section_of_its_own_is_the_router_client(self):
        self.assertTrue([title for _, _, title in self.sections if "router" in title.lower()],
                        [title for _, _, title in self.sections])

    def test_no_class_attribute_is_assigned_at_module_level(self):
        assigned = []
        for node in self.tree.body:
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                    and getattr(node.value.func, "id", "") == "setattr":
                targets = node.value.args[:1]
            else:
                continue
            assigned += [f"line {node.lineno}: {ast.unparse(target)}" for target in targets
                         if isinstance(target, ast.Attribute) or isinstance(node, ast.Expr)]
        self.assertEqual(assigned, [])

    def test_the_page_is_the_last_section_a_raw_string_with_one_script_and_no_backslash(self):
        last_start, _, title = self.sections[-1]
        self.assertIn("page", title)
        page_at = self.source.index('PAGE_HTML = r"""')
        self.assertGreater(page_at, self.source.index(self.source.splitlines()[last_start - 1]))
        self.assertNotIn("\\", pcr.PAGE_HTML)
        self.assertEqual(len(re.findall(r"<script\b", pcr.PAGE_HTML)), 1)
        self.assertEqual(len(re.findall(r"</script>", pcr.PAGE_HTML)), 1)
        server = pcr.Server(pcr.Settings())   # the page is handed to the door as it is built
        self.addCleanup(server.loop.close)
        self.assertEqual(server.door.page.body, pcr.PAGE_HTML.encode())


# ---------------------------------------------------------------------------
# 2. The protocol: pure functions, no sockets
# ---------------------------------------------------------------------------


class ProtocolTextTest(unittest.TestCase):
    """The pure protocol functions."""

    def test_count_line_singular_and_plural(self):
        self.assertEqual(pcr.count_notice(1), "1 person is online...\n")
        self.assertEqual(pcr.count_notice(3), "3 people are online...\n")

    def test_join_and_leave_lines(self):
        self.assertEqual(pcr.joined_notice(["ann"]), "ann joined the chat...\n")
        self.assertEqual(pcr.left_notice("ann"), "ann has left the chat...\n")

    def test_folded_join_line_never_starts_with_a_digit(self):
        line = pcr.joined_notice(["a", "b", "c", "d", "e"])
        self.assertEqual(line, "a, b, c and 2 others joined the chat...\n")
        line = pcr.joined_notice(["a", "b", "c", "d"])
        self.assertEqual(line, "a, b, c and 1 other joined the chat...\n")

    def test_alias_is_up_to_the_first_line_end_or_the_whole_read(self):
        self.assertEqual(pcr.split_alias(b"bob"), (b"bob", b"", False))   # the App's way
        self.assertEqual(pcr.split_alias(b"bob\r\nhi\n"), (b"bob", b"hi\n", True))

    def test_own_prefix_is_taken_off_in_any_of_its_forms(self):
        forms = pcr.alias_forms(" dup ", "dup (2)")
        for line in (" dup : hi", "dup: hi", "dup (2): hi"):
            self.assertEqual(pcr.said_text(line, forms), "hi", line)
        keyed = pcr.alias_forms("bob#K", "bob")
        self.assertEqual(pcr.said_text("bob#K: hi", keyed), "hi")
        self.assertEqual(pcr.said_text("bob: hi", keyed), "hi")

    def test_other_lines_keep_what_they_say(self):
        self.assertEqual(pcr.said_text("bob: hi", pcr.alias_forms("ann", "ann")), "bob: hi")
        self.assertEqual(pcr.said_text("dupe: hi", pcr.alias_forms("dup", "dup")), "dupe: hi")

    def test_blank_lines_are_not_relayed(self):
        self.assertIsNone(pcr.said_text("ann:  ", pcr.alias_forms("ann", "ann")))

    def test_escape_sequences_and_controls_are_removed(self):
        self.assertEqual(pcr.clean_text("a\x1b[31mred\x1b[0m\x07\tb\x1b]0;title\x07c\x9b2J"),
                         "ared\tbc")

    def test_bidi_overrides_isolates_and_line_separators_go_from_text(self):
        self.assertEqual(pcr.clean_text("a\u202eb\u2066c\u2069d\u2028e\u2029f\u202ag"), "abcdefg")

    def test_names_lose_controls_format_characters_and_colons(self):
        self.assertEqual(pcr.clean_name("  e\u202eve\x00:  x\u200b "), "eve x")
        self.assertEqual(len(pcr.clean_name("n" * 100)), pcr.MAX_NAME)

    def test_numbered_names_stay_short(self):
        self.assertEqual(pcr.numbered_name("ann", 2), "ann (2)")
        self.assertEqual(len(pcr.numbered_name("n" * 32, 12)), pcr.MAX_NAME)

    def test_leave_line_is_recognised_by_alias_or_name(self):
        forms = pcr.alias_forms(" ann#k", "ann")
        self.assertTrue(pcr.is_leave_line("\t ann#k has left the chat...", forms))
        self.assertTrue(pcr.is_leave_line("\tann has left the chat...", forms))
        self.assertFalse(pcr.is_leave_line("\tbob has left the chat...", forms))
        self.assertFalse(pcr.is_leave_line("ann has left the chat...", forms))


    def test_who_lists_the_room_and_never_starts_with_a_digit(self):
        self.assertEqual(pcr.who_notice(["ann", "bob"]), "in the room now (2): ann, bob\n")
        many = pcr.who_notice([f"m{i}" for i in range(pcr.WHO_SHOWN + 2)])
        self.assertTrue(many.endswith(f"m{pcr.WHO_SHOWN - 1} and 2 others\n"), many)


class LookAlikeNamesTest(unittest.TestCase):
    """Names are told apart by what they look like (issue 10)."""

    def test_invisible_code_points_are_dropped_from_names(self):
        for invisible in ("\u034f", "\ufe0f", "\u3164", "\u115f", "\u2800", "\U000e0100",
                          "\u17b4", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"):
            with self.subTest(code=hex(ord(invisible))):
                self.assertEqual(pcr.clean_name(f"ali{invisible}ce{invisible}"), "alice")

    def test_look_alikes_look_alike(self):
        for other in ("ALICE", "\uff41\uff4c\uff49\uff43\uff45", "\U0001d5ba\U0001d5c5\U0001d5c2\U0001d5bc\U0001d5be",
                      "\u0430lice", "\u0410LICE", "al\u0456c\u0435"):
            with self.subTest(name=other):
                self.assertEqual(pcr.name_look(pcr.clean_name(other)), pcr.name_look("alice"))
        self.assertNotEqual(pcr.name_look("alicia"), pcr.name_look("alice"))

    def test_bidi_and_separators_go_from_names(self):
        self.assertEqual(pcr.clean_name("e\u202eve\u2066x\u2028y"), "evexy")

    def test_combining_marks_and_more_look_alikes_look_alike(self):
        for other in ("\u00e1lice", "a\u0301lice", "\u0301alice", "\u0251lice", "\u1d00lice"[1:] and "al\u0269ce"):
            with self.subTest(name=other):
                self.assertEqual(pcr.name_look(other), pcr.name_look("alice"))
        self.assertEqual(pcr.name_look("\u0475iv\u0430"), pcr.name_look("viva"))   # Cyrillic izhitsa

    def test_no_name_can_pass_for_a_line_of_the_rooms_own(self):
        """Folded as look-alikes are (issue 30): a Cyrillic ѵ, a combining accent before
        the bracket, other brackets; and the other first words the room itself writes."""
        posing = ("[pri\u0475ate] alice to bob", "\u0301[private] alice to bob", "\u27e6private\u27e7 ann",
                  "\uff3bPRIVATE\uff3d ann", "[\u0440riv\u0430te] ann", "[pri\u200bvate] ann",
                  "anna shared a photo", "Anna Shared A Ph\u043eto", "in the room now (3)", "commands")
        for name in posing:
            with self.subTest(name=name):
                cleaned = pcr.clean_name(name)
                self.assertTrue(cleaned.startswith("_"), cleaned)
                self.assertIsNone(pcr.ROOM_LINE.match(pcr.name_look(cleaned)))
        for name in ("[AFK] bob", "alice", "photographer", "commander", "in the room", "private eye"):
            self.assertEqual(pcr.clean_name(name), name)
        self.assertIn(re.escape(pcr.PRIVATE_TAG), pcr.ROOM_FORMS)   # one list, for every kind of line

    def test_tr39_look_alikes_cannot_pass_for_the_rooms_lines(self):
        """Letters and brackets Unicode TR39 lists as look-alikes of the room's
        words fold as those (QA finding 10): no name reads as a private line, a
        reply, a reaction or the answer to /who."""
        for odd, plain in (("\ua647", "i"), ("\u0433", "r"), ("\u2228", "v"), ("\u2768", "("),
                           ("\ufd3e", "("), ("\u026a", "i"), ("\uab47", "r"), ("\u237a", "a")):
            with self.subTest(look_alike=hex(ord(odd))):
                self.assertEqual(pcr.name_look(odd), plain)
        posing = ("[pr\ua647vate] ann to bob", "[p\u0433ivate] ann to bob", "[pri\u2228ate] ann",
                  'ann \u2768to bob\uff1a "are we', "ann \ufd3eto bob", "ann \u0433eacted \U0001f44d to bob",
                  "\u026an the room now (2)", "ann \uab47eacted \u2764 to bob", "\u237ann shared \u237a photo")
        for name in posing:
            with self.subTest(name=name):
                cleaned = pcr.clean_name(name)
                self.assertTrue(cleaned.startswith("_"), cleaned)
                self.assertIsNone(pcr.ROOM_LINE.match(pcr.name_look(cleaned)), cleaned)

    def test_colon_look_alikes_go_from_names_as_colons_do(self):
        """No name can carry another's line prefix (`bob꞉ ...`) in any colon (QA finding 10)."""
        for colon in (":", "\ua789", "\uff1a", "\u2236", "\u02d0", "\u02f8", "\u205a", "\ufe30",
                      "\ufe13", "\ufe55", "\u0589", "\u16ec", "\ua4fd", "\u1803", "\u1809"):
            with self.subTest(colon=hex(ord(colon))):
                self.assertEqual(pcr.clean_name(f"bob{colon} new phone"), "bob new phone")

    def test_a_numbered_name_cannot_pass_for_the_rooms_lines_either(self):
        for name in ("anna shared a photo", "in the room now"):
            self.assertTrue(pcr.ROOM_LINE.match(pcr.name_look(pcr.numbered_name(name, 2))))
            self.assertTrue(pcr.clean_name(name).startswith("_"))


class MessengerTextTest(unittest.TestCase):
    """What line readers read of replies, reactions, edits and deletions, what a
    page's action may say, and names that cannot forge those lines (issue 33)."""

    QUESTION = "are we meeting at five, or would six be better for everyone?"

    def test_the_line_forms_are_the_issues(self):
        quote = pcr.answered_text("bob", pcr.first_words("are we meeting at five on the 2nd of May, or later?"))
        self.assertEqual(quote, 'bob: "are we meeting at five on the 2nd of…"')
        self.assertEqual(pcr.reply_notice("anna", 'bob: "are we meeting at five…"', "yes, at five"),
                         'anna (to bob: "are we meeting at five…"): yes, at five\n')
        self.assertEqual(pcr.reaction_notice("anna", "👍", 'bob: "are we meeting at five…"', True),
                         'anna reacted 👍 to bob: "are we meeting at five…"\n')
        self.assertEqual(pcr.reaction_notice("anna", "👍", "bob: a photo", False),
                         "anna took back 👍 from bob: a photo\n")
        self.assertEqual(pcr.edit_notice("anna", "the cake is in the fridge"),
                         'anna edited: "the cake is in the fridge"\n')
        self.assertEqual(pcr.delete_notice("anna"), "anna deleted a line\n")
        self.assertEqual(pcr.answered_text("bob", ""), "bob: a deleted line")
        self.assertEqual(pcr.answered_text("bob", "the cake is in the fridge", edited=True),
                         'bob: "the cake is in the fridge" (edited)')
        self.assertEqual(pcr.answered_text("bob", "", edited=True), "bob: a deleted line")

    def test_a_quote_is_about_forty_characters_cut_after_a_word(self):
        self.assertEqual(pcr.first_words("yes"), "yes")
        self.assertEqual(pcr.first_words("x" * 40), "x" * 40)
        cut = pcr.first_words(self.QUESTION)
        self.assertEqual(cut, "are we meeting at five, or would six be…")
        self.assertLessEqual(len(cut), 41)
        self.assertEqual(pcr.first_words("y" * 100), "y" * 40 + "…")   # one long word
        self.assertEqual(pcr.first_words("  two\tspaces  "), "two spaces")

    def test_no_line_form_begins_with_a_digit_for_the_app(self):
        for line in (pcr.reply_notice("_2pac", pcr.answered_text("bob", "5 pm?"), "5"),
                     pcr.reaction_notice("ann", "😂", pcr.answered_text("_3", "1"), True),
                     pcr.edit_notice("ann", "3 people are online..."), pcr.delete_notice("ann")):
            self.assertFalse(line[:1].isdigit(), line)
            self.assertFalse(line.rstrip("\n").endswith(" online..."), line)

    def test_a_page_action_is_one_json_object_with_a_line_id(self):
        good = pcr.page_action('{"act": "react", "id": 7, "emoji": "👍"}')
        self.assertEqual((good["act"], good["id"], good["emoji"], good["text"]), ("react", 7, "👍", ""))
        self.assertEqual(pcr.page_action('{"act": "typing"}')["id"], 0)
        for bad in ("", "hello", "[1]", '{"act": "shout", "id": 1}', '{"act": "edit", "id": "1"}',
                    '{"act": "edit", "id": 0}', '{"act": "edit", "id": -3}', '{"act": "edit", "id": true}',
                    '{"act": "edit", "id": 1.0}', '{"act": "edit", "id": 1, "text": 5}',
                    '{"act": "react", "id": 1, "emoji": ["x"]}', "[" * 5000, '{"a":' * 3000):
            with self.subTest(bad=bad[:40]):
                self.assertIsNone(pcr.page_action(bad))

    def test_what_a_page_sends_as_json_is_always_utf8(self):
        """JSON may escape a lone surrogate, which no UTF-8 can hold: it comes in as U+FFFD,
        as bad UTF-8 in a line does; a pair stays the character it makes."""
        action = pcr.page_action('{"act": "edit", "id": 1, "text": "six \\ud800 \\ud83d\\ude00 \\udfff"}')
        self.assertEqual(action["text"], "six \ufffd \U0001f600 \ufffd")
        self.assertEqual(pcr.page_action('{"act": "react", "id": 1, "emoji": "\\ud83d"}')["emoji"], "\ufffd")
        self.assertIsNone(pcr.page_action('{"act\\udc00": "edit", "id": 1}'))
        self.assertEqual(pcr.resume_request(b'{"resume": "12.\\ud800", "seen": 0}'), ("12", "\ufffd", 0))
        self.assertIsNone(pcr.resume_request(b'{"resume": "1\\udc002.ab", "seen": 0}'))

    def test_a_scrubbed_frame_keeps_its_length_and_mark_and_loses_only_the_words(self):
        frame = pcr.ws_marked_event(1000, "chat", id=5, name="anna", text="my PIN is 4711",
                                    reply={"id": 3, "name": "bob", "text": "what is your PIN?"})
        begin, stop = pcr.ws_frame_span(frame, 0)
        scrubbed = frame[:begin] + pcr.ws_scrubbed(frame[begin:stop], 5)
        self.assertEqual(len(scrubbed), len(frame))
        self.assertTrue(pcr.ws_marked_at(scrubbed, 0, 1000))
        event = json.loads(scrubbed[begin:])
        self.assertEqual(event, {"type": "chat", "id": 5, "name": "anna", "at": 1000 + len(frame),
                                 "reply": {"id": 3, "name": "bob", "text": "what is your PIN?"}})
        quoted = json.loads(pcr.ws_scrubbed(frame[begin:stop], 3))   # the line it answers changed
        self.assertEqual((quoted["text"], quoted["reply"]), ("my PIN is 4711", {"id": 3, "name": "bob"}))
        long = pcr.ws_marked_event(0, "edit", id=9, name="x", text="é" * 40000)   # a 64-bit length
        begin, stop = pcr.ws_frame_span(long, 0)
        self.assertEqual((begin, stop), (10, len(long)))
        self.assertNotIn("text", json.loads(pcr.ws_scrubbed(long[begin:stop], 9)))

    def test_no_name_can_forge_a_reply_a_reaction_or_an_edit(self):
        """The room's line forms about lines are in the one list of its own forms (ROOM_FORMS)."""
        for name in ("anna reacted 👍 to bob", "anna edited", "anna (to bob", "anna took back 👍 from bob",
                     "ANNA EDITED", "\uff41nna \uff45dited", "anna r\u0435acted x", "anna\u00a8edited",
                     "anna\u00a0(to bob", "anna  e\u0301dited", "(to bob", "bob shared a photo"):
            with self.subTest(name=name):
                cleaned = pcr.clean_name(name)
                self.assertIsNone(pcr.ROOM_LINE.match(pcr.name_look(cleaned)), cleaned)
                self.assertNotIn(" ", cleaned)
                self.assertTrue(cleaned.startswith("_"), cleaned)
        for name in ("Ted (today)", "alice (2)", "Anna Edith", "Edited Ann", "bob reacts", "Mary Ann"):
            with self.subTest(name=name):
                self.assertEqual(pcr.clean_name(name), name)
        self.assertEqual(pcr.clean_name("anna reacted 👍 to bob"), "_anna_reacted_👍_to_bob")
        self.assertEqual(pcr.clean_name("the very long name of one edited too"),   # cut at 32: a form,
                         "_the very long name of one edite")                       # broken by the `_`
        for form in (r".*\(to\s", r".*\sreacted\s", r".*\stook back\s", r".*\sedited$"):
            self.assertIn(form, pcr.ROOM_FORMS)

    def test_the_window_is_said_in_minutes_or_seconds(self):
        self.assertEqual(pcr.Settings().edit_window, 900)
        self.assertEqual(pcr.duration_words(900), "15 minutes")
        self.assertEqual(pcr.duration_words(60), "1 minute")
        self.assertEqual(pcr.duration_words(1), "1 second")
        self.assertEqual(pcr.duration_words(0.5), "0.5 seconds")
        self.assertEqual(pcr.duration_words(90), "90 seconds")


class AppPieceTest(unittest.TestCase):
    """app_cut: what one App read may hold (PROTOCOL.md, "The App's reader, exactly")."""

    def test_whole_lines_up_to_one_read(self):
        lines = b"".join(b"ann: %04d %s\n" % (i, b"x" * 40) for i in range(40))
        cut = pcr.app_cut(lines)
        self.assertLessEqual(cut, pcr.APP_READ)
        self.assertEqual(lines[cut - 1:cut], b"\n")
        self.assertGreater(cut, pcr.APP_READ - 60)

    def test_a_long_line_is_cut_between_characters(self):
        line = ("ann: " + "\u00e9\u65e5\U0001f44b" * 300 + "\n").encode()
        cut = pcr.app_cut(line)
        self.assertLessEqual(cut, pcr.APP_READ)
        line[:cut].decode("utf-8")   # whole characters: strict decoding holds
        line[cut:].decode("utf-8")

    def test_no_piece_of_a_long_line_looks_like_a_count(self):
        line = b"mallory: " + b"x" * (pcr.APP_READ - 9) + b"99 people are online...\n"
        cut = pcr.app_cut(line)
        self.assertFalse(line[cut:cut + 1].isdigit(), line[cut:cut + 30])
        tail = b"mallory: " + b"y" * 1010 + b" online...zz\n"
        self.assertFalse(tail[:pcr.app_cut(tail)].endswith(b" online..."))

    def test_a_run_of_digits_longer_than_a_read_is_still_cut(self):
        line = b"ann: " + b"7" * 3000 + b"\n"
        self.assertEqual(pcr.app_cut(line), pcr.APP_READ)


class WebSocketFramesTest(unittest.TestCase):
    """RFC 6455 framing, as pure functions."""

    @staticmethod
    def masked(payload: bytes, opcode: int = 0x1, fin: bool = True, mask=b"\x37\xfa\x21\x3d") -> bytes:
        n = len(payload)
        if n < 126:
            head = bytes([0x80 * fin | opcode, 0x80 | n])
        elif n < 65536:
            head = bytes([0x80 * fin | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 * fin | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        if n <= 4096:
            return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")   # the same, as one big XOR: fast
        return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")

    def test_accept_key_from_the_rfc(self):
        self.assertEqual(pcr.ws_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_server_frames_use_7_16_and_64_bit_lengths(self):
        self.assertEqual(pcr.ws_frame(b"Hello"), b"\x81\x05Hello")   # the RFC's example
        self.assertEqual(pcr.ws_frame(b"x" * 256)[:4], b"\x81\x7e\x01\x00")
        self.assertEqual(pcr.ws_frame(b"x" * 65536)[:10], b"\x81\x7f" + (65536).to_bytes(8, "big"))

    def test_masked_frames_of_each_length_are_read(self):
        reader = pcr.FrameReader(100000)
        for n in (0, 5, 125, 126, 65535, 65536):
            payload = bytes(i % 251 for i in range(n))
            self.assertEqual(reader.feed(self.masked(payload, 0x2)), [(0x2, payload)], n)

    def test_the_rfcs_masked_hello(self):
        reader = pcr.FrameReader(100)
        self.assertEqual(reader.feed(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"),
                         [(0x1, b"Hello")])

    def test_frames_arriving_a_byte_at_a_time(self):
        reader, got = pcr.FrameReader(100), []
        for byte in self.masked(b"Hello") + self.masked(b"again"):
            got += reader.feed(bytes([byte]))
        self.assertEqual(got, [(0x1, b"Hello"), (0x1, b"again")])

    def test_fragments_make_one_message_and_controls_may_come_between(self):
        reader = pcr.FrameReader(100)
        data = (self.masked(b"Hel", fin=False) + self.masked(b"ping", pcr.WS_PING)
                + self.masked(b"l", 0x0, fin=False) + self.masked(b"o", 0x0))
        self.assertEqual(reader.feed(data), [(pcr.WS_PING, b"ping"), (0x1, b"Hello")])

    def test_bad_frames_are_refused_with_the_rfcs_codes(self):
        cases = [
            (b"\x81\x05Hello", pcr.WS_PROTOCOL_ERROR),                     # not masked
            (self.masked(b"x")[:0] + bytes([0xC1]) + self.masked(b"x")[1:], pcr.WS_PROTOCOL_ERROR),  # RSV1
            (self.masked(b"x", 0x3), pcr.WS_PROTOCOL_ERROR),                # reserved opcode
            (self.masked(b"x" * 126, pcr.WS_PING), pcr.WS_PROTOCOL_ERROR),  # long control frame
            (self.masked(b"x", pcr.WS_PING, fin=False), pcr.WS_PROTOCOL_ERROR),
            (self.masked(b"x", 0x0), pcr.WS_PROTOCOL_ERROR),                # continuation of nothing
            (self.masked(b"a", fin=False) + self.masked(b"b"), pcr.WS_PROTOCOL_ERROR),
            (self.masked(b"x" * 101), pcr.WS_TOO_BIG),
            (self.masked(b"x" * 60, fin=False) + self.masked(b"x" * 60, 0x0), pcr.WS_TOO_BIG),
        ]
        for data, code in cases:
            with self.subTest(data=data[:8]), self.assertRaises(pcr.WsError) as e:
                pcr.FrameReader(100).feed(data)
            self.assertEqual(e.exception.code, code)

    def test_an_oversized_frame_is_refused_from_its_header_alone(self):
        with self.assertRaises(pcr.WsError) as e:
            pcr.FrameReader(4096).feed(b"\x81\xff" + (1 << 40).to_bytes(8, "big"))
        self.assertEqual(e.exception.code, pcr.WS_TOO_BIG)

    def test_close_payloads(self):
        self.assertEqual(pcr.ws_close_code(b""), pcr.WS_NORMAL)
        self.assertEqual(pcr.ws_close_code(b"\x03\xe9bye"), 1001)
        for bad, code in ((b"\x03", pcr.WS_PROTOCOL_ERROR), (b"\x03\xed", pcr.WS_PROTOCOL_ERROR),
                          (b"\x03\xe8\xff", pcr.WS_BAD_DATA)):
            with self.assertRaises(pcr.WsError) as e:
                pcr.ws_close_code(bad)
            self.assertEqual(e.exception.code, code)
        self.assertEqual(pcr.ws_close(1001, "bye"), b"\x88\x05\x03\xe9bye")


class FrameDropTest(unittest.TestCase):
    """FrameReader drops a message past its limit as it comes, and reads on."""

    masked = staticmethod(WebSocketFramesTest.masked)

    def test_a_long_message_is_said_once_and_the_next_one_is_read(self):
        reader = pcr.FrameReader(100, 1000)
        data = self.masked(b"x" * 500) + self.masked(b"next")
        got = []
        for at in range(0, len(data), 7):   # in pieces, as a network gives it
            got += reader.feed(data[at:at + 7])
        self.assertEqual(got, [(0x1, None), (0x1, b"next")])

    def test_fragments_of_a_long_message_go_and_controls_between_stay(self):
        reader = pcr.FrameReader(100, 1000)
        data = (self.masked(b"x" * 60, fin=False) + self.masked(b"p", pcr.WS_PING)
                + self.masked(b"x" * 60, 0x0, fin=False) + self.masked(b"x", 0x0)
                + self.masked(b"ok"))
        self.assertEqual(reader.feed(data), [(pcr.WS_PING, b"p"), (0x1, None), (0x1, b"ok")])

    def test_past_what_it_drops_it_refuses(self):
        with self.assertRaises(pcr.WsError) as e:
            pcr.FrameReader(100, 1000).feed(self.masked(b"x" * 1001))
        self.assertEqual(e.exception.code, pcr.WS_TOO_BIG)


class PhotoBytesTest(unittest.TestCase):
    """What the server takes as a photo: a JPEG, PNG or WebP by its own bytes,
    its metadata stripped, at most 2048 px on its long side (issue 23)."""

    def setUp(self):
        if Image is None:
            self.skipTest(NO_PIL)

    def test_a_jpeg_loses_its_exif_and_comment_and_keeps_its_pixels(self):
        for progressive in (False, True):
            data = picture("JPEG", (640, 480), quality=90, exif=camera_exif(),
                           comment=b"taken at home", progressive=progressive)
            self.assertIn(b"PhoneMaker", data)
            ext, body, width, height = pcr.clean_photo(data)
            self.assertEqual((ext, width, height), ("jpg", 640, 480))
            image = assert_plain_picture(self, body, "JPEG")
            self.assertEqual(image.tobytes(), Image.open(io.BytesIO(data)).tobytes())

    def test_a_png_loses_its_text_and_exif_chunks(self):
        from PIL import PngImagePlugin
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "taken at home")
        info.add_text("Author", "PhoneMaker", zip=True)
        info.add_itxt("Where", "PhoneMaker street")
        data = picture("PNG", (64, 48), pnginfo=info, exif=camera_exif())
        for chunk in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
            self.assertIn(chunk, data)
        ext, body, width, height = pcr.clean_photo(data)
        self.assertEqual((ext, width, height), ("png", 64, 48))
        for chunk in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
            self.assertNotIn(chunk, body)
        assert_plain_picture(self, body, "PNG")

    def test_a_webp_loses_its_exif_and_xmp_and_says_so_in_its_header(self):
        for lossless in (False, True):
            data = picture("WEBP", (64, 48), lossless=lossless, exif=camera_exif(),
                           xmp=b"<x:xmpmeta>taken at home</x:xmpmeta>")
            self.assertIn(b"XMP ", data)
            ext, body, width, height = pcr.clean_photo(data)
            self.assertEqual((ext, width, height), ("webp", 64, 48))
            self.assertEqual(struct.unpack_from("<I", body, 4)[0], len(body) - 8)   # RIFF size
            self.assertNotIn(b"EXIF", body)
            self.assertNotIn(b"XMP ", body)
            self.assertEqual(body[20] & 0x0C, 0)   # VP8X: neither "has EXIF" nor "has XMP"
            assert_plain_picture(self, body, "WEBP")
        plain = picture("WEBP", (64, 48))
        self.assertEqual(pcr.clean_photo(plain)[1:], (plain, 64, 48))

    def test_anything_that_is_not_a_picture_by_its_own_bytes_is_refused_saying_why(self):
        jpeg = picture("JPEG")
        cases = [
            (b"<!DOCTYPE html><html><script>alert(1)</script></html>", pcr.NOT_A_PICTURE),
            (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
             pcr.NOT_A_PICTURE),
            (b"GIF89a" + bytes(100), pcr.NOT_A_PICTURE),
            (b"", pcr.NOT_A_PICTURE),
            (jpeg[:len(jpeg) // 2], pcr.DAMAGED),                      # cut short
            (jpeg[:300], pcr.DAMAGED),
            (picture("PNG")[:-20], pcr.DAMAGED),
            (picture("WEBP")[:-9], pcr.DAMAGED),
            (picture("PNG").replace(b"IHDR", b"IHDX"), pcr.DAMAGED),   # a CRC that does not match
            (picture("JPEG", (3000, 20)), pcr.TOO_WIDE),
            (picture("PNG", (20, 2049)), pcr.TOO_WIDE),
            (picture("WEBP", (2100, 20)), pcr.TOO_WIDE),
        ]
        for data, why in cases:
            with self.subTest(data=data[:16]), self.assertRaises(pcr.PhotoRefused) as refused:
                pcr.clean_photo(data)
            self.assertEqual(str(refused.exception), why)

    def test_bytes_cut_or_garbled_anywhere_are_refused_never_an_error(self):
        rng = random.Random(23)
        for fmt in ("JPEG", "PNG", "WEBP"):
            data = picture(fmt, (96, 64), noise=True)
            for _ in range(300):
                garbled = bytearray(data[:rng.randrange(len(data))] if rng.random() < 0.5 else data)
                for _ in range(rng.randrange(4)):
                    garbled[rng.randrange(len(garbled))] = rng.randrange(256)
                try:
                    pcr.clean_photo(bytes(garbled))
                except pcr.PhotoRefused:
                    pass

    def test_the_announcement_is_slash_photo_and_a_size(self):
        self.assertEqual(pcr.photo_announcement(b"\x00photo 612345"), 612345)
        for text in (b"\x00photo", b"\x00photo 0", b"\x00photo -1", b"\x00photo 12 ", b"\x00photo x",
                     b"\x00photos 5", b"\x00photo 12345678901", b"/photo 5"):
            self.assertIsNone(pcr.photo_announcement(text), text)


class PhotoAllowListTest(unittest.TestCase):
    """The cleaner keeps only what a decoder needs, whatever the rest is called or
    holds, reads exactly one frame header, and costs what the picture is worth
    (issue 30).  Each hiding place is built here, in a picture pillow made."""

    def setUp(self):
        if Image is None:
            self.skipTest(NO_PIL)

    def assert_same_picture(self, cleaned: bytes, original: bytes, fmt: str) -> "Image.Image":
        image = assert_plain_picture(self, cleaned, fmt)
        self.assertEqual(image.tobytes(), Image.open(io.BytesIO(original)).convert(image.mode).tobytes())
        for hidden in (b"52.0", b"GPS", b"<x:xmpmeta", b"Exif\x00\x00", b"PhoneMaker"):
            self.assertNotIn(hidden, without_image_data(cleaned, fmt))
        return image

    # -- JPEG ------------------------------------------------------------------------
    def test_a_jfxx_thumbnail_with_its_own_gps_exif_goes(self):
        thumbnail = picture("JPEG", (32, 24), exif=camera_exif())
        jpeg = picture("JPEG", (320, 240), noise=True)
        crafted = jpeg[:20] + jpeg_segment(0xE0, b"JFXX\x00\x10" + thumbnail) + jpeg[20:]
        self.assertEqual(Image.open(io.BytesIO(thumbnail)).getexif().get_ifd(0x8825)[2], (52.0, 31.0, 12.0))
        cleaned = pcr.clean_photo(crafted)[1]
        self.assertNotIn(b"JFXX", cleaned)
        self.assertEqual(dict(Image.open(io.BytesIO(cleaned)).getexif().get_ifd(0x8825)), {})
        self.assert_same_picture(cleaned, jpeg, "JPEG")

    def test_exif_hidden_in_app0_dht_or_dri_goes(self):
        jpeg, exif = picture("JPEG", (320, 240), noise=True), b"Exif\x00\x00" + camera_exif()
        segments = jpeg_segments(jpeg)
        app0 = next(s for s in segments if s[0] == 0xE0)
        dht = next(s for s in segments if s[0] == 0xC4)
        scan = segments[-1]
        for place, crafted in (
                ("APP0", jpeg[:app0[1]] + jpeg_segment(0xE0, jpeg[app0[1] + 4:app0[2]] + exif)
                 + jpeg[app0[2]:]),
                ("DHT", jpeg[:dht[1]] + jpeg_segment(0xC4, jpeg[dht[1] + 4:dht[2]] + exif) + jpeg[dht[2]:]),
                ("DRI", jpeg[:scan[1]] + jpeg_segment(0xDD, b"\x00\x00" + exif) + jpeg[scan[1]:])):
            with self.subTest(place=place):
                self.assertIn(b"PhoneMaker", crafted)
                self.assert_same_picture(pcr.clean_photo(crafted)[1], jpeg, "JPEG")

    def test_a_jpeg_keeps_only_what_decoders_need_and_nothing_after_its_end(self):
        for progressive in (False, True):   # a progressive one: several scans, tables between them
            jpeg = picture("JPEG", (640, 480), noise=True, quality=90, exif=camera_exif(),
                           comment=b"taken at home", progressive=progressive)
            segments = jpeg_segments(jpeg)
            crafted = (jpeg[:segments[1][1]] + jpeg_segment(0xE3, b"Meta" + camera_exif())
                       + jpeg_segment(0xEF, b"maker notes") + jpeg[segments[1][1]:] + b"Exif\x00\x00" + camera_exif())
            ext, cleaned, width, height = pcr.clean_photo(crafted)
            self.assertEqual((ext, width, height), ("jpg", 640, 480))
            self.assertTrue(cleaned.endswith(b"\xff\xd9"))
            markers = jpeg_markers(cleaned)
            self.assertLessEqual(set(markers), {0xE0, 0xE2, 0xEE, 0xDB, 0xC0, 0xC1, 0xC2, 0xC4, 0xDD, 0xDA, 0xD9})
            self.assertEqual(markers.count(0xDA), jpeg_markers(jpeg).count(0xDA), progressive)
            self.assertEqual(markers.count(0xC0 + 2 * progressive), 1)
            self.assertEqual(cleaned[2:20], pcr.JFIF_APP0)   # our own: no thumbnail, no density
            self.assert_same_picture(cleaned, jpeg, "JPEG")

    def test_a_colour_profile_is_kept_without_its_date_device_or_words(self):
        from PIL import ImageCms
        profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
        profile[24:36] = struct.pack("!6H", 2026, 5, 4, 13, 14, 15)       # made at this time
        profile[48:56] = b"APPLiPhn"                                       # with this device
        for fmt in ("JPEG", "PNG", "WEBP"):
            with self.subTest(fmt=fmt):
                image = self.assert_same_picture(pcr.clean_photo(picture(fmt, icc_profile=bytes(profile)))[1],
                                                 picture(fmt), fmt)
                kept = image.info["icc_profile"]
                self.assertEqual((len(kept), kept[24:36], kept[48:56]), (len(profile), bytes(12), bytes(8)))
                self.assertNotIn(b"sRGB built-in", kept)   # lcms' description, emptied
                ImageCms.ImageCmsProfile(io.BytesIO(kept))   # still a profile, with its colours
                colours = [(offset, size) for offset, size in (struct.unpack_from(
                    "!II", profile, 136 + 12 * n) for n in range(int.from_bytes(profile[128:132], "big")))
                    if bytes(profile[offset:offset + 4]) in pcr.ICC_COLOUR]
                self.assertGreaterEqual(len(colours), 6)   # the primaries, the white, the curves
                self.assertEqual([kept[o:o + n] for o, n in colours], [profile[o:o + n] for o, n in colours])

    def test_a_jpeg_has_exactly_one_frame_header_read_before_its_scan(self):
        jpeg = picture("JPEG", (320, 240))
        segments = jpeg_segments(jpeg)
        frame = next(s for s in segments if s[0] == 0xC0)
        body = bytearray(jpeg[frame[1] + 4:frame[2]])
        huge = bytes(body[:1]) + struct.pack("!HH", 60000, 60000) + bytes(body[5:])
        scan = segments[-1][1]
        cases = {   # decoders read the first frame header: the size is taken from it
            "a first SOF of 60000 px, a second of 320": (
                jpeg[:frame[1]] + jpeg_segment(0xC0, huge) + jpeg[frame[1]:], pcr.TOO_WIDE),
            "two SOFs": (jpeg[:scan] + jpeg[frame[1]:frame[2]] + jpeg[scan:], pcr.TWO_PICTURES),
            "a SOF after the scan": (jpeg[:-2] + jpeg[frame[1]:frame[2]] + jpeg[-2:], pcr.TWO_PICTURES),
            "a scan before any SOF": (jpeg[:frame[1]] + jpeg[frame[2]:], pcr.DAMAGED),
            "an arithmetic SOF9": (jpeg[:frame[1]] + b"\xff\xc9" + jpeg[frame[1] + 2:], pcr.UNSHOWN_JPEG),
        }
        for name, (data, why) in cases.items():
            with self.subTest(name), self.assertRaises(pcr.PhotoRefused) as refused:
                pcr.clean_photo(data)
            self.assertEqual(str(refused.exception), why)

    # -- PNG -------------------------------------------------------------------------
    def test_a_png_keeps_only_its_critical_and_colour_chunks(self):
        png = picture("PNG", (64, 48), noise=True)
        exif = b"Exif\x00\x00" + camera_exif()
        hidden = (png_chunk(b"tIME", struct.pack("!HBBBBB", 2026, 5, 4, 13, 14, 15))
                  + png_chunk(b"exIf", exif) + png_chunk(b"zxIf", zlib.compress(exif))
                  + png_chunk(b"eXIf", exif) + png_chunk(b"pHYs", struct.pack("!IIB", 2835, 2835, 1))
                  + png_chunk(b"gAMA", struct.pack("!I", 45455) + b"PhoneMaker")   # too long: goes
                  + png_chunk(b"prVt", b"<x:xmpmeta>PhoneMaker</x:xmpmeta>"))
        crafted = png[:33] + hidden + png[33:] + png_chunk(b"tEXt", b"Comment\x00PhoneMaker") + b"trailing"
        ext, cleaned, width, height = pcr.clean_photo(crafted)
        self.assertEqual((ext, width, height), ("png", 64, 48))
        self.assertEqual(png_chunks(cleaned), [b"IHDR", b"pHYs", *png_chunks(png)[1:]])
        self.assertTrue(cleaned.endswith(png_chunk(b"IEND", b"")))
        self.assertNotIn(b"2026", cleaned)
        self.assert_same_picture(cleaned, png, "PNG")

    def test_a_png_has_exactly_one_ihdr(self):
        png = picture("PNG", (64, 48))
        with self.assertRaises(pcr.PhotoRefused) as refused:
            pcr.clean_photo(png[:33] + png[8:33] + png[33:])
        self.assertEqual(str(refused.exception), pcr.TWO_PICTURES)

    # -- WebP ------------------------------------------------------------------------
    def test_a_webp_keeps_only_its_image_chunks_and_cleans_each_animation_frame(self):
        exif = b"Exif\x00\x00" + camera_exif()
        frames = [Image.effect_noise((64, 48), 20 + 20 * i).convert("RGB") for i in range(3)]
        out = io.BytesIO()
        frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
        animated = out.getvalue()
        chunks = webp_chunks(animated)
        crafted = b""
        for kind, payload in chunks:   # EXIF inside each frame, and exif and xmp chunks between
            if kind == b"ANMF":
                payload = payload[:16] + riff_chunk(b"EXIF", exif) + payload[16:]
            crafted += riff_chunk(kind, payload) + riff_chunk(b"exif", exif) + riff_chunk(b"xmp ", b"PhoneMaker")
        ext, cleaned, width, height = pcr.clean_photo(webp_of(crafted) + b"trailing EXIF")
        self.assertEqual((ext, width, height), ("webp", 64, 48))
        self.assertEqual([kind for kind, _ in webp_chunks(cleaned)], [kind for kind, _ in chunks])
        self.assertEqual(struct.unpack_from("<I", cleaned, 4)[0], len(cleaned) - 8)
        for kind, payload in webp_chunks(cleaned):
            if kind == b"ANMF":
                self.assertEqual([k for k, _ in webp_chunks(payload, 16)], [b"VP8L"])
        image = Image.open(io.BytesIO(cleaned))
        self.assertEqual(image.n_frames, 3)
        for n in range(3):
            image.seek(n)
            original = Image.open(io.BytesIO(animated))
            original.seek(n)
            self.assertEqual(image.convert("RGB").tobytes(), original.convert("RGB").tobytes())
        self.assertNotIn(b"PhoneMaker", cleaned)

    def test_a_webp_has_one_bitstream_consistent_with_its_canvas(self):
        still = webp_chunks(picture("WEBP", (64, 48), exif=camera_exif()))
        vp8x, vp8 = dict(still)[b"VP8X"], dict(still)[b"VP8 "]
        small = dict(webp_chunks(picture("WEBP", (32, 24))))[b"VP8 "]
        cases = {
            "two bitstreams": (webp_of(riff_chunk(b"VP8 ", vp8) + riff_chunk(b"VP8 ", vp8)), pcr.TWO_PICTURES),
            "a canvas larger than its bitstream": (
                webp_of(riff_chunk(b"VP8X", vp8x) + riff_chunk(b"VP8 ", small)), pcr.DAMAGED),
            "a canvas and no bitstream": (webp_of(riff_chunk(b"VP8X", vp8x)), pcr.DAMAGED),
        }
        for name, (data, why) in cases.items():
            with self.subTest(name), self.assertRaises(pcr.PhotoRefused) as refused:
                pcr.clean_photo(data)
            self.assertEqual(str(refused.exception), why)

    # -- what it costs -------------------------------------------------------------
    def test_crafted_shapes_are_answered_with_little_transient_memory(self):
        """The CPU each costs is measured in the server, as the loop's own stall
        (PhotoAttackTest); here, the memory: under 64 MiB past the input."""
        import tracemalloc
        answers = {}
        for name, data in crafted_photos().items():
            tracemalloc.start()
            try:
                answers[name] = pcr.clean_photo(data)[2:]
            except pcr.PhotoRefused as e:
                answers[name] = str(e)
            finally:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            self.assertLess(peak, 64 << 20, name)
        self.assertEqual(answers, crafted_answers())

    def test_a_camera_like_file_has_few_pieces_before_its_image(self):
        jpeg = camera_jpeg((2048, 1536))
        self.assertLess(len(jpeg_segments(jpeg)), pcr.HEAD_PIECES // 2)
        head = jpeg[:jpeg_segments(jpeg)[1][1]]
        many = head + jpeg_segment(0xE5, b"x") * pcr.HEAD_PIECES + jpeg[len(head):]
        with self.assertRaises(pcr.PhotoRefused) as refused:
            pcr.clean_photo(many)
        self.assertEqual(str(refused.exception), pcr.TOO_MANY_PIECES)
        pcr.clean_photo(head + jpeg_segment(0xE5, b"x") * (pcr.HEAD_PIECES // 2) + jpeg[len(head):])


class PhotoFramesTest(unittest.TestCase):
    """One binary message announced, with an Upload of its own that its bytes go
    into as they come; one longer than announced is skipped unread and the
    connection reads on (issues 23 and 30)."""

    masked = staticmethod(WebSocketFramesTest.masked)

    @staticmethod
    def announced(size: int) -> tuple:
        """A frame reader with an upload of `size` announced, and the upload."""
        reader, upload = pcr.FrameReader(100), pcr.Upload(size)
        reader.announce(upload)
        return reader, upload

    def test_an_announced_binary_message_may_be_larger_than_a_line_once(self):
        reader, upload = self.announced(5000)
        photo = bytes(range(256)) * 19
        self.assertEqual(reader.feed(self.masked(photo, 0x2)), [(pcr.WS_ANNOUNCED, upload)])
        self.assertEqual(bytes(upload.view()), photo)
        with self.assertRaises(pcr.WsError) as e:   # the next one was not announced
            reader.feed(self.masked(photo, 0x2))
        self.assertEqual(e.exception.code, pcr.WS_TOO_BIG)

    def test_its_bytes_go_into_the_upload_as_they_come_never_held_by_the_reader(self):
        reader, upload = self.announced(300000)
        photo = os.urandom(300000)
        data = self.masked(photo[:100001], 0x2, fin=False) + self.masked(photo[100001:], 0x0)
        got = []
        for i in range(0, len(data), 4096):   # as a network gives it
            got += reader.feed(data[i:i + 4096])
            self.assertLess(len(reader.buf), 4096 + 14)
            self.assertGreaterEqual(upload.filled, i - 28)
        self.assertEqual(got, [(pcr.WS_ANNOUNCED, upload)])
        self.assertEqual(bytes(upload.view()), photo)

    def test_fragments_of_an_announced_message_make_one_photo(self):
        reader, upload = self.announced(300)
        data = (self.masked(b"a" * 150, 0x2, fin=False) + self.masked(b"ping", pcr.WS_PING)
                + self.masked(b"b" * 150, 0x0))
        self.assertEqual(reader.feed(data), [(pcr.WS_PING, b"ping"), (pcr.WS_ANNOUNCED, upload)])
        self.assertEqual(bytes(upload.view()), b"a" * 150 + b"b" * 150)

    def test_a_message_larger_than_announced_is_refused_from_its_header_and_skipped(self):
        for frames in ([self.masked(b"x" * 70000, 0x2)],
                       [self.masked(b"x" * 600, 0x2, fin=False), self.masked(b"x" * 600, 0x0)]):
            (reader, upload), got = self.announced(1000), []
            data = b"".join(frames) + self.masked(b"still here")
            for i in range(0, len(data), 4096):
                got += reader.feed(data[i:i + 4096])
                self.assertLess(len(reader.buf), 4096 + 14)   # never held
            self.assertEqual(got, [(pcr.WS_ANNOUNCED, upload), (pcr.WS_TEXT, b"still here")])
            self.assertTrue(upload.over)

    def test_a_header_declaring_a_gigabyte_is_refused_at_once(self):
        reader, upload = self.announced(pcr.MAX_PHOTO)
        got = reader.feed(b"\x82\xff" + (1 << 30).to_bytes(8, "big") + b"mask" + b"x" * 1000)
        self.assertEqual(got, [(pcr.WS_ANNOUNCED, upload)])
        self.assertTrue(upload.over)
        self.assertEqual(len(reader.buf), 0)

    def test_a_64_bit_length_with_its_top_bit_set_is_a_protocol_error(self):
        for announce in (False, True):   # RFC 6455 §5.2: "the most significant bit MUST be 0"
            reader = pcr.FrameReader(100)
            if announce:
                reader.announce(pcr.Upload(1000))
            with self.subTest(announced=announce), self.assertRaises(pcr.WsError) as e:
                reader.feed(b"\x82\xff" + (1 << 63 | 5).to_bytes(8, "big") + b"mask" + b"x" * 5)
            self.assertEqual(e.exception.code, pcr.WS_PROTOCOL_ERROR)

    def test_a_refused_announcement_skips_its_message_unsaid(self):
        reader = pcr.FrameReader(100)
        reader.announce(None)
        self.assertEqual(reader.feed(self.masked(b"x" * 5000, 0x2) + self.masked(b"hi")),
                         [(pcr.WS_TEXT, b"hi")])

    def test_an_upload_released_on_its_way_skips_the_rest_unsaid(self):
        reader, upload = self.announced(10000)
        data = self.masked(b"y" * 10000, 0x2) + self.masked(b"hi")
        self.assertEqual(reader.feed(data[:3000]), [])
        upload.release()   # too slow, say
        self.assertEqual(reader.feed(data[3000:]), [(pcr.WS_TEXT, b"hi")])

    def test_a_second_announcement_releases_the_first_upload(self):
        released = []
        reader, first = pcr.FrameReader(100), pcr.Upload(100, released.append)
        reader.announce(first)
        second = pcr.Upload(100)
        reader.announce(second)
        self.assertEqual(released, [first])
        self.assertIsNone(first.buffer)
        self.assertEqual(reader.feed(self.masked(b"z" * 50, 0x2)), [(pcr.WS_ANNOUNCED, second)])


# ---------------------------------------------------------------------------
# 3. The event loop and the transport
# ---------------------------------------------------------------------------


class FaultTest(ServerCase):
    """A bug met by one member costs that member, not the room."""

    def test_an_unexpected_error_drops_that_member_and_the_room_goes_on(self):
        server = self.start()
        ann, bob = self.member("ann"), self.member("bob")
        ann.read_until(b"2 people are online...\n")
        say = server._say

        def broken(m, raw):
            if m.name == "bob":   # a bug whose message quotes the line
                raise RuntimeError(raw.decode())
            return say(m, raw)
        server._say = broken
        bob.send(b"bob: this meets the bug\n")
        self.assertTrue(bob.read_to_close().endswith(pcr.INTERNAL_ERROR.encode()))   # told, then closed
        got = ann.read_until(b"1 person is online...\n")
        self.assertEqual(got.count(b"bob has left the chat...\n"), 1)
        ann.send(b"ann: still here\n")
        ann.read_until(b"ann: still here\n")
        self.assertIn('internal error while serving "bob": RuntimeError', self.log_text())
        self.assertNotIn("this meets the bug", self.log_text())

    def test_a_bug_met_again_and_again_is_logged_once_then_summed(self):
        server = self.start()
        ann = self.member("ann")
        say = server._say

        def broken(m, raw):
            if m.name == "bob":   # a bug that many members can meet, one after the other
                raise RuntimeError(raw.decode())
            return say(m, raw)
        server._say = broken
        for _ in range(20):
            bob = self.member("bob")
            bob.send(b"bob: this meets the bug\n")
            bob.read_to_close()
        ann.send(b"ann: still here\n")
        ann.read_until(b"ann: still here\n")
        self.assertEqual(self.log_text().count("internal error while serving"), 1)
        self.assertRegex(self.stopped_log(server, "more times in"),
                         r"internal error: RuntimeError in broken \(test_pcr_server\.py "
                         r"line \d+\) \(19 more times in \d+ s\)")
        self.assertNotIn("this meets the bug", self.log_text())

    def test_an_unexpected_error_in_a_timer_is_logged_and_the_loop_goes_on(self):
        server = self.start()
        server.loop.call_soon_threadsafe(lambda: 1 / 0)
        self.member("ann")
        self.assertIn("ZeroDivisionError", self.log_text())


class DeadMembersTest(unittest.TestCase):
    """A member whose machine vanished (its packets dropped) leaves within the
    keepalive window, quiet room or talking; a quiet live member stays
    (issue 15; needs root and network namespaces)."""

    KEEPALIVE = 2   # seconds; probes 1 s apart, 5 of them: gone within 2 + 5 s

    def setUp(self):
        if reason := home_network_missing():
            self.skipTest(reason)
        self.home = HomeNetwork(self, other_host=True)
        room = self.home.room("--keepalive", str(self.KEEPALIVE))
        printed_until(room, "Ctrl+C stops the server.")
        self.witness = self.home.at_home("witness")
        self.witness.read_until("[1 person is online]\n")
        self.victim = ClientProcess(f"{HomeNetwork.LAN_IP}:5050", name="victim",
                                    prefix=self.home.inside("other"))
        self.addCleanup(self.victim.close)
        self.witness.read_until("[2 people are online]\n")

    def window(self) -> float:
        return self.KEEPALIVE + 5 * max(1, round(self.KEEPALIVE / 6))

    def cut_the_victim_off(self) -> float:
        rules = os.path.join(self.home.dir, "cut.nft")
        with open(rules, "w") as f:
            f.write(CUT_OFF)
        self.home.run("other", "nft", "-f", rules)
        return time.monotonic()

    def test_a_quiet_live_member_stays_and_a_vanished_one_leaves(self):
        time.sleep(self.window() + 1)   # a quiet room: only keepalive probes go by
        self.witness.type("/who\n")
        self.witness.read_until("in the room now (2): witness, victim\n")
        cut = self.cut_the_victim_off()
        self.witness.read_until("victim has left the chat...\n", timeout=self.window() + WAIT)
        self.assertLess(time.monotonic() - cut, self.window() + 3)
        self.witness.read_until("[1 person is online]\n")

    def test_a_vanished_member_leaves_a_talking_room_too(self):
        cut = self.cut_the_victim_off()
        deadline = time.monotonic() + self.window() + WAIT
        n = 0
        while "victim has left the chat..." not in self.witness.output():
            self.assertLess(time.monotonic(), deadline, "the victim is still in the room")
            n += 1
            self.witness.type(f"line {n}\n")   # unacknowledged data for the victim
            time.sleep(0.3)
        self.assertLess(time.monotonic() - cut, self.window() + 3)


# ---------------------------------------------------------------------------
# 4. The room and its outlets
# ---------------------------------------------------------------------------


class PresenceTest(ServerCase):
    """Terminals get the count in the stream, right after what it counts."""

    def test_a_terminal_reads_the_join_line_then_the_count_that_includes_it(self):
        self.start(count_interval=0.25)
        ann = self.member("ann")
        for n, name in enumerate(("bob", "cy", "dee"), start=2):
            self.member(name)
            got = ann.read_until(b" online...\n")
            self.assertTrue(got.endswith(f"{name} joined the chat...\n{n} people are online...\n"
                                         .encode()), got)

    def test_after_a_leave_the_next_count_is_the_current_one(self):
        self.start(count_interval=0.25)
        ann = self.member("ann")
        for _ in range(3):   # one who gives a name and goes at once, again and again
            quick = self.connect()
            quick.answer(b"quick\n")
            quick.close()
            got = ann.read_until(b"quick has left the chat...\n")
            got += ann.read_until(b" online...\n")
            after_leave = got[got.rindex(b"quick has left"):]
            self.assertEqual(COUNT_LINE.findall(after_leave), [b"person is"], got)
            self.assertTrue(after_leave.endswith(b"1 person is online...\n"), got)

    def test_in_a_busy_room_a_terminal_gets_the_new_count_within_half_a_second(self):
        self.start(count_interval=0.25, line_rate=0)
        watcher, chatter = self.member("watch"), self.member("chat")
        watcher.read_until(b"2 people are online...\n")
        stop = threading.Event()

        def chat():   # a line every 10 ms: the room is never quiet
            k = 0
            while not stop.is_set():
                chatter.send(b"chat: %d\n" % k)
                k += 1
                time.sleep(0.01)
        threading.Thread(target=chat, daemon=True).start()
        self.addCleanup(stop.set)
        for n, change in ((3, "join"), (2, "leave"), (3, "join")):
            if change == "join":
                newcomer = self.connect()
                t0 = time.monotonic()
                newcomer.answer(b"new\n")
            else:
                t0 = time.monotonic()
                newcomer.close()
            watcher.read_until(f"{n} {'people are'} online...\n".encode(), timeout=WAIT)
            self.assertLess(time.monotonic() - t0, 0.5, change)

    def test_newcomer_gets_a_count_even_when_the_number_is_unchanged(self):
        self.start(count_interval=0.5)
        self.member("ann")
        bob = self.member("bob")
        bob.close()   # one leaves and one comes within one count interval
        carl = self.connect()
        carl.answer(b"carl\n")
        carl.read_until(b"carl joined the chat...\n")
        carl.read_until(b"2 people are online...\n")

    def test_join_storm_is_folded_and_each_newcomer_sees_its_own_line(self):
        # the six answers must come within one count interval: under Wine they
        # once took over 0.3 s
        self.start(welcome_delay=1.0, fold_joins=3, count_interval=1.0)
        host = self.member("host")
        crowd = [self.connect() for _ in range(6)]
        for c in crowd:   # each is asked after the door's wait: all asked first, then all answer
            c.read_until(b"ALIAS")
        for i, c in enumerate(crowd):
            c.send(f"p{i}".encode())
        got = host.read_until(b"7 people are online...\n")
        self.assertRegex(got, rb"p\d, p\d, p\d and \d others? joined the chat...\n")
        self.assertLess(got.count(b"joined the chat"), 6)
        for i, c in enumerate(crowd):
            mine = c.read_until(b"7 people are online...\n")
            self.assertTrue(mine.startswith(f"p{i} joined the chat...\n".encode()), mine)

    def test_newcomers_welcomed_in_one_turn_each_see_their_own_join_first(self):
        self.start(welcome_delay=3.0, fold_joins=3)
        host = self.member("host")
        ann, bob = self.connect(), self.connect()
        ann.answer(b"ann")
        bob.answer(b"bob")
        room = self.server.room
        self.wait_on_loop(lambda: len(room.arrivals) == 2, "two waiting to be welcomed")
        # the loop is busy until both are due: one turn welcomes them both
        self.on_loop(lambda: time.sleep(max(0.0, max(m.ready_at for m in room.arrivals)
                                                 - time.monotonic() + 0.05)))
        host.read_until(b"ann joined the chat...\nbob joined the chat...\n3 people are online...\n")
        self.assertEqual(ann.read_until(b"3 people are online...\n"),   # bob came after her
                         b"ann joined the chat...\nbob joined the chat...\n3 people are online...\n")
        self.assertEqual(bob.read_until(b"3 people are online...\n"),
                         b"bob joined the chat...\n3 people are online...\n")


class AppReaderTest(ServerCase):
    """PrivateChatRoom-App members get what their App can show (issue 9):
    one read at a time, when the App is free; the count alone and current;
    no read that splits a character or looks like a count."""

    def test_an_app_whose_user_takes_30_s_to_type_a_name_joins_at_the_real_pace(self):
        self.start(**{k: v for k, v in FAST.items() if k not in (
            "welcome_delay", "count_interval", "app_char_time", "app_margin", "door_wait")})
        tom = self.member("tom")
        ann = self.app("ann", typing=30.0, char_time=0.07, window=0.05)
        ann.wait_chat("ann joined the chat...\n", timeout=30 + WAIT)
        ann.wait_box("2 people are online...\n")
        tom.read_until(b"ann joined the chat...\n2 people are online...\n")
        tom.send(b"tom: hello ann\n")
        ann.wait_chat("tom: hello ann\n")
        self.assertEqual(ann.dropped, [b"ALIAS"])
        self.assert_app_shows_well(ann)
        self.assertIn('joined: "ann" (App) from 127.0.0.1', self.log_text())

    def test_the_welcome_counts_from_the_alias_not_the_connection(self):
        self.start(welcome_delay=0.3)
        ann = self.app("ann", typing=1.0, window=0.2)   # its window is built 0.2 s after the alias
        ann.wait_chat("ann joined the chat...\n")
        ann.wait_box("1 person is online...\n")
        self.assertEqual(ann.dropped, [b"ALIAS"])
        self.assertGreaterEqual(ann.reads[1][0] - ann.named_at, 0.3 - 0.02)

    def test_apps_joining_one_after_another_see_the_count_between_the_joins(self):
        """Five Apps join 1 s apart at the App's real pace: the first App's box
        shows the current count right after each piece it types, before the
        next queued join (it used to stay empty until every join was typed)."""
        real = pcr.Settings()
        self.start(welcome_delay=real.welcome_delay, app_char_time=real.app_char_time,
                   app_margin=real.app_margin)
        names = ("ann", "bob", "cy", "dee", "eve")
        ann = self.app("ann", char_time=0.07, window=0.05)
        ann.wait_chat("ann joined the chat...\n", timeout=WAIT)
        for name in names[1:]:
            time.sleep(1.0)   # the scenario: one join a second, whatever the server does
            self.app(name, char_time=0.07, window=0.05)
        ann.wait_chat("eve joined the chat...\n", timeout=30)
        ann.wait_box("5 people are online...\n", timeout=WAIT)
        self.assert_app_shows_well(ann)
        shown = [(at, data.decode()) for at, data in ann.reads[1:]]   # after ALIAS
        first_box = next(at for at, text in shown if text[:1].isdigit())
        typing = len("ann joined the chat...\n") * 0.07 * (1 + pcr.APP_SLACK) + 0.5
        self.assertLess(first_box - ann.named_at, 1.0 + typing + 2.0, "the first count came late")
        typed, box = 0, 0
        for _, text in shown:
            if text[:1].isdigit():   # never below the joins already typed
                box = int(text.split()[0])
                self.assertGreaterEqual(box, typed)
            else:   # a queued join waits for the count that includes the joins typed
                if "joined the chat" in text and typed:
                    self.assertGreaterEqual(box, typed, f"a stale box before {text!r}")
                typed += text.count("joined the chat")

    def test_apps_joining_and_leaving_see_each_line_once_and_the_right_count(self):
        self.start(app_margin=0.05)
        apps = {}
        for name in ("ann", "bob", "cy", "dee"):
            apps[name] = self.app(name)
            for app in apps.values():
                app.wait_box(pcr.count_notice(len(apps)), timeout=2 + 0.5)
        apps.pop("cy").leave()
        apps.pop("bob").close()   # a crash: no goodbye
        for app in apps.values():   # the count may come before a line it counts, never stale
            app.wait_chat("bob has left the chat...\n", timeout=2 + 0.5)
            app.wait_box("2 people are online...\n", timeout=2 + 0.5)
        for name, app in apps.items():
            self.assert_app_shows_well(app)
            self.assertEqual(app.chat.count(f"{name} joined the chat...\n"), 1)
            self.assertEqual(app.chat.count("cy has left the chat...\n"), 1)
            self.assertEqual(app.chat.count("bob has left the chat...\n"), 1)
        self.assertEqual(apps["ann"].chat.count("joined the chat...\n"), 4)
        self.assertEqual(apps["dee"].chat.count("joined the chat...\n"), 1)

    def test_a_busy_room_of_terminals_never_mixes_counts_and_chat_for_apps(self):
        # The margin is the time the server leaves each App to come back to recv()
        # after a count: a Wine leg on a loaded machine took over 0.02 s once, and
        # its App read the count and the next line together.
        self.start(line_rate=0, app_margin=0.15, count_interval=0.1)
        stayers = [self.app("ann"), self.app("bob")]
        for app in stayers:
            app.wait_box("2 people are online...\n")
        talkers = [self.member(f"t{i}") for i in range(3)]
        n = 60

        def talk(i, c):   # bursts of lines, as people chat
            for k in range(n):
                c.send(f"t{i}: line {k} {'x' * (k % 30)}\n".encode())
                time.sleep(0.01 if k % 10 else 0.15)
        threads = [threading.Thread(target=talk, args=(i, c), daemon=True)
                   for i, c in enumerate(talkers)]
        for thread in threads:
            thread.start()
        for i in range(3):   # Apps come and go meanwhile
            guest = self.app(f"guest{i}")
            guest.wait_chat(f"guest{i} joined the chat...\n")
            guest.leave() if i % 2 else guest.close()
        for thread in threads:
            thread.join(WAIT)
        for app in stayers:
            app.wait_chat(f"t2: line {n - 1} ", timeout=30)
            app.wait_box("5 people are online...\n")
            self.assert_app_shows_well(app)
            for i in range(3):
                said = re.findall(rf"^t{i}: line (\d+) x*$", app.chat, re.M)
                self.assertEqual([int(k) for k in said], list(range(n)), app.alias)

    def test_kilobytes_of_multibyte_text_reach_an_app_whole(self):
        self.start(line_rate=0)
        ann = self.app("ann")
        ann.wait_box("1 person is online...\n")
        tom = self.member("tom")
        lines = [f"tom: {k} " + "\u00e9\u65e5\U0001f44b\u0439" * (20 + 70 * k) for k in range(6)]
        tom.send("".join(line + "\n" for line in lines).encode())   # up to 4 KB a line, 12 KB in all
        ann.wait_chat(lines[-1] + "\n", timeout=10)
        self.assert_app_shows_well(ann)
        for line in lines:
            self.assertIn(line + "\n", ann.chat)
        self.assertTrue(all(len(data) <= 1024 for _, data in ann.reads))

    def test_a_line_whose_byte_1024_starts_a_count_never_reaches_a_box(self):
        self.start()
        ann = self.app("ann")
        ann.wait_box("1 person is online...\n")
        tom = self.member("tom")
        ann.wait_box("2 people are online...\n")
        head = b"tom: "
        fake = head + b"z" * (1024 - len(head)) + b"99 people are online..."
        self.assertEqual(fake[1024:1026], b"99")
        tom.send(fake + b"\n")
        ann.wait_chat(fake.decode() + "\n")
        tom.send(b"tom: " + b"7" * 3000 + b"\n")   # digits longer than a read: a line break, not a count
        ann.wait(lambda app: app.chat.replace("\n", "").count("7") >= 3000, "every 7")
        self.assertEqual(ann.box, "2 people are online...\n")
        self.assert_app_shows_well(ann)
        self.assertEqual(ann.chat.replace("\n", "").count("7"), 3000)

    def test_digits_longer_than_a_read_never_reach_the_box_from_history_or_a_private_line(self):
        """The history is sent to a newcomer for it alone, and a private line is
        for two: a run of digits in either is broken onto a new line too."""
        self.start(history=5, line_rate=0, app_char_time=0.0002)
        tom = self.member("tom")
        tom.send(b"tom: x" + b"1" * 3000 + b"\n")
        tom.read_until(b"1\n")
        ann = self.app("ann")
        ann.wait(lambda app: app.chat.replace("\n", "").count("1") >= 3000, "the history's digits")
        ann.wait_box("2 people are online...\n")
        tom.send(b"/msg ann " + b"8" * 3000 + b"\n")
        ann.wait(lambda app: app.chat.replace("\n", "").count("8") >= 3000, "the private line's digits")
        self.assert_app_shows_well(ann)
        self.assertEqual(ann.chat.replace("\n", "").count("1"), 3000)
        self.assertIn("tom: x111", ann.chat)
        self.assertIn("[private] tom to ann: 888", ann.chat)

    def test_nothing_follows_an_apps_count_within_its_margin(self):
        self.start(app_margin=0.3, max_line=10)
        ann = self.app("ann")
        ann.wait_box("1 person is online...\n")
        ann.sock.sendall(b"ann: far too long\n")   # answered by a note for ann alone
        ann.wait_chat("longer than 10 bytes")
        box_at = ann.boxes[-1][0]
        later = [at for at, data in ann.reads if at > box_at]
        self.assertGreater(later[0] - box_at, 0.3 - 0.05)

    def test_stop_lines_reach_an_app_after_its_count_was_read_alone(self):
        server = self.start(app_margin=0.3)
        ann = self.app("ann")
        ann.wait_box("1 person is online...\n")
        server.loop.call_soon_threadsafe(server.stop)
        ann.wait_chat("the server has been stopped...")
        self.assertEqual(ann.box, "1 person is online...\n")
        self.assertTrue(ann.chat.endswith(pcr.STOP_NOTICE), ann.chat)
        self.assertGreater(ann.reads[-1][0] - ann.boxes[-1][0], 0.3 - 0.05)

    def test_an_app_that_falls_behind_is_told_and_disconnected_at_the_backlog_limit(self):
        self.start(max_backlog=16 * 1024, app_char_time=0.01, line_rate=0)
        ann = self.app("ann", char_time=0.01)
        ann.wait_box("1 person is online...\n")
        tom, bob = self.member("tom"), self.member("bob")
        for k in range(40):   # 40 KB: an hour of typing for an App at 0.01 s a character
            tom.send(b"tom: %d %s\n" % (k, b"w" * 1000))
        got = bob.read_until(b"ann has left the chat...\n")
        got += bob.read_until(b"tom: 39 ")
        self.assertEqual(got.count(b"tom: "), 40)   # nobody else waited
        ann.wait_chat("you were disconnected: the room says more than your App can show", timeout=10)
        self.assertIn("App not keeping up", self.log_text())
        self.assert_app_shows_well(ann)

    def test_an_alias_with_spaces_is_still_its_own_prefix(self):
        self.start()
        dup = self.app(" dup ")
        dup.wait_box("1 person is online...\n")
        dup.sock.sendall(b" dup : hello\n")
        dup.sock.sendall(b"dup: again\n")
        dup.wait_chat("dup: again\n")
        self.assertIn("dup: hello\n", dup.chat)
        self.assertNotIn("dup (2)", dup.chat)
        self.assertNotIn("dup: dup", dup.chat)

    def test_who_is_answered_to_the_asker_alone(self):
        self.start()
        ann = self.app("ann")
        ann.wait_box("1 person is online...\n")
        tom = self.member("tom")
        ann.sock.sendall(b"ann: /who\n")
        ann.wait_chat("in the room now (2): ann, tom\n")
        tom.send(b"tom: /who\n")
        tom.read_until(b"in the room now (2): ann, tom\n")
        tom.send(b"tom: marker\n")
        ann.wait_chat("tom: marker\n")
        self.assertEqual(ann.chat.count("in the room now"), 1)


class HistoryTest(ServerCase):
    """--history N: the room keeps its last N chat lines, in memory only, and a
    newcomer of any kind gets them before its own join line (issue 16)."""

    def said_before(self, history: int, **overrides) -> Client:
        """A room keeping `history` lines where tom said one, two, three, and
        bob came and went."""
        self.start(history=history, **overrides)
        tom = self.member("tom")
        for text in ("one", "two"):
            tom.send(f"tom: {text}\n".encode())
        self.member("bob").close()
        tom.read_until(b"bob has left the chat...\n")
        tom.send(b"tom: three\n")
        tom.read_until(b"tom: three\n")
        return tom

    def test_a_terminal_newcomer_gets_the_last_lines_then_its_own_join(self):
        self.said_before(2)
        zoe = self.connect()
        zoe.answer(b"zoe\n")
        self.assertEqual(zoe.read_until(b"zoe joined the chat...\n"),
                         b"tom: two\ntom: three\nzoe joined the chat...\n")
        self.assertNotIn("tom: t", self.log_text())

    def test_nothing_is_kept_unless_asked(self):
        self.assertEqual(pcr.Settings().history, 0)
        self.assertEqual(pcr.parse_args([]).history, 0)
        self.said_before(pcr.parse_args([]).history)
        zoe = self.connect()
        zoe.answer(b"zoe\n")
        self.assertEqual(zoe.read_until(b"zoe joined the chat...\n"), b"zoe joined the chat...\n")

    def test_a_web_newcomer_gets_them_as_earlier_lines_before_its_join(self):
        if ws_connect is None:
            self.skipTest(NO_WEBSOCKETS)
        self.said_before(5, web_port=0)
        page = WebMember(self.server.web_address[1], "wendy")
        self.addCleanup(page.close)
        self.assertEqual(page.next()["type"], "welcome")
        self.assertEqual(page.next(), {"type": "history", "lines": [
            {"id": n, "name": "tom", "text": text} for n, text in enumerate(("one", "two", "three"), 1)]})
        self.assertEqual(page.next()["names"], ["wendy"])

    def test_an_app_gets_them_paced_whole_lines_a_read_at_a_time(self):
        self.start(history=4, line_rate=0, app_char_time=0.0005)
        tom = self.member("tom")
        lines = [f"tom: {k} " + "\u00e9\u65e5\U0001f44b" * 60 for k in range(4)]   # 600 bytes each
        tom.send("".join(line + "\n" for line in lines).encode())
        tom.read_until(lines[-1].encode() + b"\n")
        ann = self.app("ann")
        ann.wait_box("2 people are online...\n")
        ann.wait_chat("ann joined the chat...\n")
        self.assertEqual(ann.chat, "".join(line + "\n" for line in lines) + "ann joined the chat...\n")
        self.assert_app_shows_well(ann)
        chat_reads = [data for _, data in ann.reads if data != b"ALIAS" and data not in ann.dropped]
        self.assertGreater(len(chat_reads), 2)
        self.assertTrue(all(len(data) <= 1024 and data.endswith(b"\n") for data in chat_reads))

    def test_the_banner_and_the_window_say_newcomers_see_the_last_lines(self):
        settings = pcr.Settings(history=20, public_ip_url="")
        banner = pcr.join_banner(settings, pcr.friends_join(settings, ("0.0.0.0", 5050),
                                                            "192.168.1.5", None, None))
        self.assertIn("  history:            newcomers see the last 20 chat lines "
                      "(kept in memory only)\n", banner)
        self.assertIn("newcomers see the last 20 chat lines", pcr.privacy_text(settings))
        self.assertNotIn("history", pcr.join_banner(pcr.Settings(public_ip_url=""), pcr.friends_join(
            pcr.Settings(), ("0.0.0.0", 5050), "192.168.1.5", None, None)))


class ChatTest(ServerCase):
    """Relaying lines."""

    def test_sender_gets_its_own_line_back(self):
        self.start()
        ann = self.member("ann")
        ann.send(b"ann: hello\n")
        self.assertEqual(ann.read_until(b"\n"), b"ann: hello\n")

    def test_line_without_the_name_gets_it_put_in_front(self):
        self.start()
        ann = self.member("ann")
        ann.send(b"hello\n")
        ann.read_until(b"ann: hello\n")

    def test_line_claiming_another_name_is_corrected(self):
        self.start()
        ann, bob = self.member("ann"), self.member("bob")
        bob.send(b"ann: I am ann\n")
        ann.read_until(b"bob: ann: I am ann\n")

    def test_a_line_split_across_many_writes_is_relayed_once_whole(self):
        ann, bob = self.ann_and_bob()
        for ch in b"ann: one whole line\n":
            ann.send(bytes([ch]))
            time.sleep(0.002)
        got = bob.read_until(b"line\n")
        self.assertTrue(got.endswith(b"ann: one whole line\n"))
        self.assertEqual(got.count(b"one whole"), 1)

    def test_lines_are_whole_and_in_order_with_several_senders(self):
        self.start(line_rate=0)
        senders = [self.member(f"s{i}") for i in range(4)]
        watcher = self.member("watch")
        n = 200

        def talk(i, c):
            for k in range(n):
                c.send(f"s{i}: {k} {'x' * (k % 50)}\n".encode())
        threads = [threading.Thread(target=talk, args=(i, c)) for i, c in enumerate(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        seen = {f"s{i}": -1 for i in range(4)}
        deadline = time.monotonic() + WAIT
        while any(v < n - 1 for v in seen.values()) and time.monotonic() < deadline:
            line = watcher.read_until(b"\n").decode()
            if ": " not in line or line.split(": ")[0] not in seen:
                continue
            name, rest = line.split(": ", 1)
            k, pad = rest.rstrip("\n").split(" ")
            self.assertEqual(int(k), seen[name] + 1, line)
            self.assertEqual(pad, "x" * (int(k) % 50))
            seen[name] = int(k)
        self.assertEqual(set(seen.values()), {n - 1})

    def test_utf8_text_passes_through(self):
        self.start()
        ann = self.member("ann")
        ann.send("ann: héllo 👋 日本\n".encode())
        ann.read_until("ann: héllo 👋 日本\n".encode())


class LeavingTest(ServerCase):
    """Exactly one leave line and the right count, however a member goes."""

    def expect_one_leave(self, watcher: Client, name: str, count: bytes):
        got = watcher.read_until(count)
        got += watcher.read_for(0.3)
        self.assertEqual(got.count(f"{name} has left the chat...\n".encode()), 1, got)
        self.assertEqual(got.count(b"online..."), 1, got)

    def test_app_leave_line_then_close(self):
        ann, bob = self.ann_and_bob()
        bob.send(b"\tbob has left the chat...\n")
        bob.close()
        self.expect_one_leave(ann, "bob", b"1 person is online...\n")

    def test_abrupt_close_sends_one_leave_line(self):
        ann, bob = self.ann_and_bob()
        bob.reset()
        self.expect_one_leave(ann, "bob", b"1 person is online...\n")

    def test_plain_close_sends_one_leave_line(self):
        ann, bob = self.ann_and_bob()
        bob.close()
        self.expect_one_leave(ann, "bob", b"1 person is online...\n")

    def test_half_closed_member_still_gets_its_last_line_relayed(self):
        ann, bob = self.ann_and_bob()
        bob.send(b"bob: bye now")
        bob.sock.shutdown(socket.SHUT_WR)
        ann.read_until(b"bob: bye now\n")
        self.expect_one_leave(ann, "bob", b"1 person is online...\n")


class NamesTest(ServerCase):
    """The server is the authority on names."""

    def test_duplicate_name_is_numbered_and_told(self):
        self.start()
        self.member("ann")
        ann2 = self.connect()
        ann2.answer(b"ANN")
        ann2.read_until(b"ANN (2) joined the chat...\n")
        ann2.read_until(b"the room knows you as ANN (2)\n")
        ann2.send(b"ANN: hi\n")
        ann2.read_until(b"ANN (2): hi\n")

    def test_a_name_never_starts_with_a_digit(self):
        self.start()
        watcher = self.member("watch")
        c = self.connect()
        c.answer(b"5 people are online...")
        got = watcher.read_until(b"joined the chat...\n")
        self.assertFalse(got.split(b"\n")[-2][:1].isdigit(), got)
        c.read_until(b"the room knows you as _5 people are online...\n")

    def test_in_a_room_without_a_key_a_key_in_the_name_is_dropped_unseen(self):
        self.start()
        watcher = self.member("watch")
        bob = self.connect()
        bob.answer(b"bob#famkey\n")
        bob.send(b"bob#famkey: hi\n")
        got = watcher.read_until(b"bob: hi\n")
        got += bob.read_until(b"bob: hi\n")
        self.assertIn(b"bob joined the chat...\n", got)
        self.assertNotIn(b"famkey", got)
        self.assertNotIn("famkey", self.log_text())

    def test_look_alike_names_read_as_no_line_of_the_rooms_nor_anothers(self):
        """What a terminal reads from members named in TR39 look-alikes (QA finding 10)."""
        self.start()
        watcher = self.member("watch")
        for name, said, read in (("[p\u0433ivate] ann to watch", "the key is under the mat",
                                  "_[p\u0433ivate] ann to watch: the key is under the mat\n"),
                                 ("\u026an the room now (2)", "ann, bob", "_\u026an the room now (2): ann, bob\n"),
                                 ("bob\ua789 new phone, what is the PIN", "?",
                                  "bob new phone, what is the PIN: ?\n")):
            with self.subTest(name=name):
                forger = self.connect()
                forger.answer(name.encode() + b"\n")
                forger.read_until(b"the room knows you as ")
                forger.send(said.encode() + b"\n")
                watcher.read_until(read.encode())

    def test_empty_alias_becomes_guest(self):
        self.start()
        c = self.connect()
        c.answer(b"  \n")
        c.read_until(b"guest-1 joined the chat...\n")

    def test_name_is_cleaned_but_the_claimed_alias_is_still_its_prefix(self):
        self.start()
        c = self.connect()
        c.read_until(b"ALIAS")
        raw = "  \x1b[31mzoe\u202e:\x07 " + "z" * 40
        c.send(raw.encode())
        name = "zoe " + "z" * 28
        c.read_until(f"{name} joined the chat...\n".encode())
        c.send(f"{raw}: hello\n".encode())
        c.read_until(f"{name}: hello\n".encode())


class TextSafetyTest(ServerCase):
    """Everything sent is valid UTF-8, without controls or escapes."""

    def test_invalid_utf8_is_replaced(self):
        self.start()
        ann = self.member("ann")
        ann.send(b"ann: bad \xff\xfe\xc3 end\n")
        got = ann.read_until(b"end\n")
        self.assertEqual(got.decode("utf-8"), "ann: bad \ufffd\ufffd\ufffd end\n")

    def test_controls_and_escapes_are_removed_tabs_kept(self):
        self.start()
        ann = self.member("ann")
        ann.send(b"ann: a\x00b\x1b[2Jc\td\x7f\r\n")
        ann.read_until(b"ann: abc\td\n")

    def test_a_long_run_of_blanks_cannot_push_words_to_a_row_of_their_own(self):
        """`mallory: ok` + 69 spaces + `bob: ...` read on an 80-column terminal puts
        `bob: ...` at the start of a row: a run of more than four blanks (spaces,
        tabs, blank and invisible characters) arrives as four spaces (QA finding 11)."""
        self.start()
        watcher, mallory = self.member("watch"), self.member("mallory")
        for pad in (" " * 69, "\t" * 9, " \u200b" * 35, "\u3000\u2800\u3164 \u00a0\u2003" * 12):
            with self.subTest(pad=repr(pad[:4])):
                mallory.send(f"ok{pad}bob: I forgot the door code\n".encode())
                watcher.read_until(b"mallory: ok    bob: I forgot the door code\n")
        mallory.send(b"four    spaces and\ttabs\t\tstay\n")
        watcher.read_until(b"mallory: four    spaces and\ttabs\t\tstay\n")
        england, wales = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f", \
            "\U0001f3f4\U000e0067\U000e0062\U000e0077\U000e006c\U000e0073\U000e007f"
        for words in (f"come on {england}! and {wales}", "zero-width, no column: a\u200b\u200c\u200d\u2060\u200bb"):
            with self.subTest(words=words):   # characters that take no column are no blank
                mallory.send(f"{words}\n".encode())
                watcher.read_until(f"mallory: {words}\n".encode())

    def test_invalid_utf8_alias_is_safe(self):
        self.start()
        c = self.connect()
        c.answer(b"\xffbo\xc3b\n")
        got = c.read_until(b"joined the chat...\n")
        self.assertEqual(got.decode("utf-8"), "\ufffdbo\ufffdb joined the chat...\n")


class PrivateLineTest(WebCase):
    """/msg NAME TEXT reaches that member alone, whatever it reads with, and
    the sender sees what went; /help answers the asker alone (issue 24)."""

    settings = {"web_port": 0, "web_grace": 3.0}

    def setUp(self):   # the terminal and App tests need no websockets package
        pass

    def needs_websockets(self) -> None:
        if ws_connect is None:
            self.skipTest(NO_WEBSOCKETS)

    def members(self, *names: str) -> list[Client]:
        """Terminal members, each having seen them all counted."""
        clients = [self.member(name) for name in names]
        for c in clients[:-1]:   # the last one's join read its count
            c.read_until(f"{len(names)} people are online...\n".encode())
        return clients

    def marker_after(self, sender: Client, *readers: Client) -> list[bytes]:
        """What each reader got up to a line the sender says now: what came
        before it, for the reader's eyes."""
        sender.send(b"marker\n")
        return [reader.read_until(b": marker\n") for reader in readers]

    # -- the protocol's words ----------------------------------------------------
    def test_the_rest_of_msg_is_read_with_the_longest_name_first(self):
        def readings(request: str) -> list[tuple[str, str]]:
            return [(name, text) for name, _, text in pcr.private_readings(request)]
        self.assertEqual(readings("ann (2)  hi  there "),
                         [("ann (2)  hi", "there"), ("ann (2)", "hi  there"), ("ann", "(2)  hi  there")])
        self.assertEqual(readings(" bob "), [])
        self.assertEqual(readings(""), [])
        self.assertEqual(readings('"bob can" you come?'), [("bob can", "you come?")])
        self.assertEqual(readings('"bob can"'), [])
        self.assertEqual(len(pcr.private_readings("x " * 2000)), pcr.READABLE_NAME // 2)
        self.assertEqual(pcr.private_notice("ann", "bob", "meet at six"),
                         "[private] ann to bob: meet at six\n")

    def test_reading_msg_copies_no_more_than_the_longest_name_allows(self):
        """`/msg` then 2,040 one-letter words (or quotes): the readings tried end
        past READABLE_NAME characters, so what is copied is those readings' texts,
        not the rest of the line once at every space (QA finding 7)."""
        import tracemalloc
        for request in ("a " * 2040, '"a ' + 'a" ' * 1360):
            with self.subTest(request=request[:8]):
                tracemalloc.start()
                try:
                    readings = pcr.private_readings(request)
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                self.assertTrue(0 < len(readings) <= pcr.READABLE_NAME // 2 + 1, len(readings))
                self.assertLess(peak, 2 * (pcr.READABLE_NAME // 2 + 1) * len(request))

    def test_msg_folds_its_first_words_once_however_many_readings_they_give(self):
        """/msg then 1,360 two-byte words: what name_look is given to find NAME
        is the first READABLE_NAME characters once (each reading's look is the
        one before it and the word it adds), not every reading whole (QA finding 7)."""
        self.start()
        ann, bob = self.members("ann", "bob")
        looked = []
        real_look = pcr.name_look

        def counted_look(name: str) -> str:
            looked.append(len(name))
            return real_look(name)
        with mock.patch.object(pcr, "name_look", counted_look):
            ann.send(("/msg " + "\u00e9 " * 1360 + "\n").encode())
            ann.read_until(b"/who lists who is\n")
            words = sum(looked)
            ann.send("/msg b\u00f6b hi\n".encode())   # a reading's look is what the room looks up
            bob.read_until("[private] ann to bob: hi\n".encode())
        self.assertLess(words, 4 * pcr.READABLE_NAME)
        self.assertEqual([(name, look) for name, look, _ in pcr.private_readings('"x\u00a0y " z" w')],
                         [('x\u00a0y " z', pcr.name_look('x\u00a0y " z')), ("x\u00a0y", "x y")])

    def test_no_name_can_pose_as_a_private_line(self):
        for name in ("[private] ann to bob", "[PRIVATE] ann", "\uff3bprivate\uff3d ann", "[pr\u0456vate]"):
            with self.subTest(name=name):
                cleaned = pcr.clean_name(name)
                self.assertTrue(cleaned.startswith("_"), cleaned)
        self.assertEqual(pcr.clean_name("[AFK] bob"), "[AFK] bob")

    # -- terminals -----------------------------------------------------------------
    def test_terminals_send_and_receive_private_lines_and_bob_finds_bob(self):
        self.start()
        ann, bob, cy = self.members("ann", "bob", "cy")
        ann.send(b"ann: /msg BOB meet at six\n")
        self.assertEqual(bob.read_until(b"meet at six\n").splitlines()[-1],
                         b"[private] ann to bob: meet at six")
        self.assertIn(b"[private] ann to bob: meet at six\n", ann.read_until(b"meet at six\n"))
        bob.send(b"/msg \xd0\xb0nn   and at  seven\n")   # a Cyrillic a: the room's look of ann
        ann.read_until(b"[private] bob to ann: and at  seven\n")
        bob.read_until(b"[private] bob to ann: and at  seven\n")
        for got in self.marker_after(ann, cy, bob):
            self.assertNotIn(b"private", got)
        self.assertNotIn("six", self.log_text())
        self.assertNotIn("seven", self.log_text())

    def test_a_name_with_spaces_or_a_number_is_found_whole(self):
        self.start()
        ann, ann2, mary = self.members("ann", "ann", "mary jo")
        mary.send(b'/msg "ann (2)" hello\n/msg Mary Jo note to self\n')
        ann2.read_until(b"[private] mary jo to ann (2): hello\n")
        mary.read_until(b"[private] mary jo to ann (2): hello\n")
        self.assertEqual(mary.read_until(b"self\n"), b"[private] mary jo to mary jo: note to self\n")
        for got in self.marker_after(mary, ann, mary):
            self.assertNotIn(b"private", got)

    def test_words_that_could_name_two_members_go_to_nobody_until_quoted(self):
        self.start()
        ann, bob, bob_can = self.members("ann", "bob", "bob can")
        ann.send(b"/msg bob can you come?\n")
        self.assertEqual(ann.read_until(b"TEXT\n"),
                         b'nothing was sent: that could be for "bob can" or "bob"; say which in quotes, '
                         b'as in /msg "bob can" TEXT\n')
        for got in self.marker_after(ann, bob, bob_can):
            self.assertNotIn(b"come", got)
        ann.send(b'/msg "bob can" you come?\n/msg "BOB" you too?\n')
        bob_can.read_until(b"[private] ann to bob can: you come?\n")
        bob.read_until(b"[private] ann to bob: you too?\n")
        ann.read_until(b"[private] ann to bob can: you come?\n[private] ann to bob: you too?\n")
        ann.send(b"/msg bob can't wait\n")   # "bob can't" is nobody's: bob alone is meant
        bob.read_until(b"[private] ann to bob: can't wait\n")
        self.assertNotIn(b"wait", self.marker_after(ann, bob_can)[0])
        self.assertIn('"bob can"', pcr.HELP_TEXT)

    def test_an_unknown_name_is_named_back_to_the_sender_alone(self):
        self.start()
        ann, bob = self.members("ann", "bob")
        ann.send(b"/msg bobby are you there\n")
        self.assertEqual(ann.read_until(b"who is\n"),
                         b'nobody called "bobby" is in the room; /who lists who is\n')
        self.assertNotIn(b"bobby", self.marker_after(ann, bob)[0])

    def test_msg_without_a_name_or_a_text_gets_the_usage(self):
        self.start()
        ann, bob = self.members("ann", "bob")
        for line in (b"/msg\n", b"/msg bob\n", b"ann: /msg   bob  \n"):
            with self.subTest(line=line):
                ann.send(line)
                self.assertEqual(ann.read_until(b"TEXT\n"), pcr.MSG_USAGE.encode())
        self.assertNotIn(b"msg", self.marker_after(ann, bob)[0])

    def test_help_answers_the_asker_alone(self):
        self.start()
        ann, bob = self.members("ann", "bob")
        ann.send(b"ann: /help\n")
        help_text = ann.read_until(b"\n")
        self.assertEqual(help_text, pcr.HELP_TEXT.encode())
        for command in (b"/who", b"/msg NAME TEXT", b"/help"):
            self.assertIn(command, help_text)
        self.assertNotIn(b"commands", self.marker_after(ann, bob)[0])

    def test_nothing_private_is_logged_nor_kept_for_a_newcomers_history(self):
        self.start(history=10)
        ann, bob = self.members("ann", "bob")
        ann.send(b"for the room\n/msg bob between us\n")
        bob.read_until(b"[private] ann to bob: between us\n")
        zoe = self.connect()
        zoe.answer(b"zoe\n")
        self.assertEqual(zoe.read_until(b"zoe joined the chat...\n"),
                         b"ann: for the room\nzoe joined the chat...\n")
        self.assertNotIn(b"between us", self.marker_after(ann, zoe)[0])
        self.assertNotIn("between us", self.log_text())

    # -- the App -------------------------------------------------------------------
    def test_an_app_sends_and_receives_private_lines_paced_among_the_rooms(self):
        self.start(line_rate=0)
        ann = self.app("ann")
        ann.wait_box("1 person is online...\n")
        tom, bob = self.member("tom"), self.member("bob")
        ann.wait_box("3 people are online...\n")
        said = []
        for k in range(40):
            tom.send(f"tom: line {k} ".encode() + ("\u00e9\u65e5" * 20).encode() + b"\n")
            said.append(f"tom: line {k} " + "\u00e9\u65e5" * 20 + "\n")
            if k % 10 == 5:
                tom.send(f"/msg ANN for ann {k}\n/msg bob for bob {k}\n".encode())
                said.append(f"[private] tom to ann: for ann {k}\n")
        tom.send(b"tom: the end\n")
        ann.wait_chat("tom: the end\n")
        shown = ann.chat[ann.chat.index("tom: line 0 "):]
        self.assertEqual(shown, "".join(said) + "tom: the end\n")
        self.assertNotIn("for bob", ann.chat)
        self.assert_app_shows_well(ann)
        self.assertTrue(all(len(data) <= 1024 for _, data in ann.reads))
        ann.sock.sendall(b"ann: /msg tom from the App\n")
        tom.read_until(b"[private] ann to tom: from the App\n")
        ann.wait_chat("[private] ann to tom: from the App\n")
        ann.sock.sendall(b"ann: /help\n")
        ann.wait_chat(pcr.HELP_TEXT)
        self.assertNotIn(b"from the App", self.marker_after(tom, bob)[0])
        self.assert_app_shows_well(ann)

    # -- pages -----------------------------------------------------------------------
    def test_pages_send_and_receive_private_lines(self):
        self.needs_websockets()
        self.start()
        tom = self.member("tom")
        wendy, walt = self.web_member("wendy"), self.web_member("walt")
        wendy.until("count", n=3)
        walt.until("count", n=3)
        tom.send(b"/msg WENDY hello page\n")
        got = wendy.until("private")
        self.assertEqual({k: v for k, v in got.items() if k != "at"},
                         {"type": "private", "kind": "private", "from": "tom", "to": "wendy",
                          "text": "hello page", "id": got["id"]})
        self.assertIsInstance(got["id"], int)
        self.assertEqual(got["at"], wendy.seen)
        tom.read_until(b"[private] tom to wendy: hello page\n")
        wendy.ws.send("/msg walt psst")
        self.assertEqual(walt.until("private")["text"], "psst")
        mine = wendy.until("private")
        self.assertEqual((mine["from"], mine["to"], mine["text"]), ("wendy", "walt", "psst"))
        wendy.ws.send("/msg nobody hi")
        self.assertEqual(wendy.until("note")["text"], 'nobody called "nobody" is in the room; /who lists who is')
        wendy.ws.send("/help")
        self.assertEqual(wendy.until("note")["text"], pcr.HELP_TEXT.rstrip("\n"))
        tom.send(b"marker\n")
        before = []
        while (message := walt.next())["type"] != "chat":
            before.append(message)
        self.assertEqual(message["text"], "marker")
        self.assertEqual(before, [])
        self.assertNotIn(b"psst", tom.read_until(b"tom: marker\n"))
        self.assertNotIn("psst", self.log_text())

    def test_a_page_that_is_away_gets_its_private_lines_on_return(self):
        self.needs_websockets()
        self.start()
        tom = self.member("tom")
        wendy = self.web_member("wendy")
        wendy.until("count", n=2)
        token, seen = wendy.token, wendy.seen
        wendy.lose()
        self.wait_on_loop(lambda: self.server.room.find("wendy").stage is pcr.Stage.AWAY, "wendy away")
        tom.send(b"/msg wendy while you were away\nand for the room\n")
        tom.read_until(b"tom: and for the room\n")
        page = self.web_member(None)
        page.ask_seat_back(token, seen)
        self.assertTrue(page.until("welcome")["back"])
        self.assertEqual(page.next()["text"], "while you were away")
        self.assertEqual(page.next()["text"], "and for the room")
        page.ws.send("/msg tom got it")
        tom.read_until(b"[private] wendy to tom: got it\n")
        self.assertEqual(page.until("private")["text"], "got it")


class MessengerTest(WebCase):
    """Reply, react, edit, delete and who is typing, over the raw protocol
    (issue 33): ids from the room, each action one line for terminals and
    the App, the server decides, and what history and a page that is away
    are given holds only the new words."""

    settings = {"web_port": 0, "web_grace": 5.0}
    QUESTION = "are we meeting at five, or would six be better for everyone?"
    QUOTE = '"are we meeting at five, or would six be…"'

    def wendy_tom_and_paul(self, **overrides) -> tuple[WebMember, Client, WebMember]:
        """tom at a terminal, wendy and paul on pages, all counted."""
        wendy, tom = self.wendy_and_tom(**overrides)
        paul = self.web_member("paul")
        for page in (wendy, paul):
            page.until("count", n=3)
        tom.read_until(b"3 people are online...\n")
        return wendy, tom, paul

    def said_by(self, page: WebMember, text: str) -> int:
        """page says `text`; the id the room gave that line."""
        page.ws.send(text)
        return page.until("chat", text=text)["id"]

    def nothing_more(self, tom: Client, page: WebMember | None = None) -> bytes:
        """What tom (and the page) got before a line said now: nothing else came meanwhile."""
        tom.send(b"marker\n")
        if page is not None:
            self.assertEqual(page.next()["text"], "marker")
        return tom.read_until(b"tom: marker\n")[:-len(b"tom: marker\n")]

    def test_lines_get_small_ids_from_the_room_never_reused_and_the_room_keeps_a_bounded_number(self):
        wendy, tom = self.wendy_and_tom()
        ids = [self.said_by(wendy, text) for text in ("one", "two")]
        tom.send(b"/msg wendy three\n")
        ids.append(wendy.until("private")["id"])
        self.assertEqual(ids, [1, 2, 3])
        with mock.patch.object(pcr, "LINES_KEPT", 3), mock.patch.object(pcr, "REACTIONS_KEPT", 4):
            ids += [self.said_by(wendy, f"line {k}") for k in range(4)]
            self.assertEqual(self.on_loop(lambda: list(self.server.room.transcript.lines)), [5, 6, 7])
            for line, emoji in ((5, "👍"), (5, "😂"), (6, "👍"), (6, "😮"), (7, "🙏")):   # a fifth:
                wendy.act(act="react", id=line, emoji=emoji)                     # the oldest line goes
                wendy.until("react", id=line, emoji=emoji)
            transcript = self.on_loop(lambda: self.server.room.transcript)
            self.assertEqual((list(transcript.lines), transcript.reactions), ([6, 7], 3))
        self.assertEqual(ids, list(range(1, 8)))
        self.assertEqual(self.said_by(wendy, "after"), 8)

    def test_a_reply_reaches_every_kind_of_member_as_one_line(self):
        wendy, tom, paul = self.wendy_tom_and_paul()
        amy = self.app("amy")
        amy.wait_box("4 people are online...\n")
        tom.send(f"tom: {self.QUESTION}\n".encode())
        asked = wendy.until("chat", name="tom")["id"]
        wendy.act(act="reply", id=asked, text="yes, at five")
        line = f'wendy (to tom: {self.QUOTE}): yes, at five\n'
        tom.read_until(line.encode())
        reply = paul.until("chat", name="wendy")
        self.assertEqual(reply, {"type": "chat", "id": asked + 1, "name": "wendy", "text": "yes, at five",
                                 "reply": {"id": asked, "name": "tom", "text": self.QUOTE.strip('"')},
                                 "at": paul.seen})
        amy.wait_chat(line)
        self.assertEqual(amy.box, "4 people are online...\n")
        self.assert_app_shows_well(amy)
        wendy.act(act="reply", id=asked, text="and a second line\nof more words")   # its next lines are lines
        tom.read_until(b'wendy (to tom: ' + self.QUOTE.encode() + b'): and a second line\nwendy: of more words\n')

    def test_a_replys_further_lines_keep_to_the_line_rate_like_any_other_line(self):
        """One reply of 600 lines far over --line-rate (10 a second, 20 at once; QA
        finding 2): a terminal gets only what the rate allows, in order, and the
        room stays responsive; the rest waits its turn, it is not lost."""
        wendy, tom, paul = self.wendy_tom_and_paul()
        rate = self.server.settings.line_rate
        tom.send(b"ask me\n")
        asked = wendy.until("chat", name="tom")["id"]
        started = time.monotonic()
        wendy.act(act="reply", id=asked, text="\n".join(str(k) for k in range(1, 601)))
        heard = tom.read_until(b'wendy (to tom: "ask me"): 1\n')
        tom.send(b"tom: still heard\n")
        heard += tom.read_until(b"tom: still heard\n")
        paul.ws.send("paul too")
        heard += tom.read_until(b"paul: paul too\n") + tom.read_for(0.5)
        elapsed = time.monotonic() - started
        numbers = [int(line[len(b"wendy: "):]) for line in heard.splitlines() if line.startswith(b"wendy: ")]
        self.assertEqual(numbers, list(range(2, 2 + len(numbers))))   # in order, none skipped
        self.assertGreater(len(numbers), 2 * rate)   # the burst at once, then at the rate
        self.assertLessEqual(1 + len(numbers), 2 * rate + rate * elapsed + 1)
        paul.until("chat", name="wendy", text=str(len(numbers) + 1))   # pages get them too
        wendy.lose()   # the rest would take a minute: the server reads no goodbye before it

    def test_a_page_whose_lines_wait_for_the_rate_is_not_taken_for_gone(self):
        """While a long reply's lines wait their turn, the server reads nothing
        from that page, its pongs neither: no ping goes unanswered for it."""
        wendy, tom = self.wendy_and_tom(web_ping=0.5, web_grace=0, line_rate=10.0)
        asked = self.said_by(wendy, "first")
        wendy.act(act="reply", id=asked, text="\n".join(f"item {k}" for k in range(60)))
        heard = tom.read_until(b"wendy: item 59\n", timeout=WAIT * 3)
        self.assertNotIn(b"left the chat", heard)
        self.assertEqual(heard.count(b"item "), 60)

    def test_what_is_done_to_a_private_line_stays_between_its_two(self):
        wendy, tom, paul = self.wendy_tom_and_paul()
        tom.send(b"/msg wendy psst, come at six\n")
        secret = wendy.until("private")["id"]
        wendy.act(act="reply", id=secret, text="ok")
        tom.read_until(b'[private] wendy to tom (to tom: "psst, come at six"): ok\n')
        mine = wendy.until("private", text="ok")
        self.assertEqual((mine["from"], mine["to"], mine["reply"]["id"]), ("wendy", "tom", secret))
        wendy.act(act="react", id=secret, emoji="👍")
        tom.read_until(b'[private] wendy reacted \xf0\x9f\x91\x8d to tom: "psst, come at six"\n')
        wendy.act(act="edit", id=mine["id"], text="ok, six it is")
        tom.read_until(b'[private] wendy edited: "ok, six it is"\n')
        wendy.act(act="delete", id=mine["id"])
        tom.read_until(b"[private] wendy deleted a line\n")
        paul.act(act="react", id=secret, emoji="😂")   # paul never saw it: for him it is not there
        self.assertEqual(paul.until("note")["text"],
                         "that line is no longer kept in the room, so it cannot be reacted to")
        self.assertEqual(self.nothing_more(tom, paul), b"")

    def test_a_reply_of_several_lines_to_a_private_line_stays_between_its_two_as_one_line(self):
        wendy, tom, paul = self.wendy_tom_and_paul()
        tom.send(b"/msg wendy psst, come at six\n")
        secret = wendy.until("private")["id"]
        wendy.act(act="reply", id=secret, text="ok\nmy second line\nand a third")
        tom.read_until(b'[private] wendy to tom (to tom: "psst, come at six"): ok my second line and a third\n')
        self.assertEqual(wendy.until("private")["text"], "ok my second line and a third")
        self.assertEqual(self.nothing_more(tom, paul), b"")   # nothing of it went to the room

    def test_a_private_line_between_two_pages_is_edited_for_both(self):
        wendy, tom, paul = self.wendy_tom_and_paul()
        wendy.ws.send("/msg paul the key is under the mat")
        secret = paul.until("private")["id"]
        wendy.until("private", id=secret)
        wendy.act(act="edit", id=secret, text="the key is with the neighbour")
        for page in (paul, wendy):   # each its own copy, with the new words
            self.assertEqual(page.until("edit")["text"], "the key is with the neighbour")
        self.assertNotIn(b"under the mat", self.on_loop(lambda: bytes(self.server.webs.stream.buf)))
        wendy.act(act="delete", id=secret)
        for page in (paul, wendy):
            self.assertEqual(page.until("delete")["id"], secret)
        self.assertNotIn(b"neighbour", self.on_loop(lambda: bytes(self.server.webs.stream.buf)))
        self.assertEqual(self.nothing_more(tom), b"")

    def test_reactions_count_who_and_a_second_tap_takes_one_back(self):
        wendy, tom, paul = self.wendy_tom_and_paul()
        tom.send(b"hi all\n")
        line = wendy.until("chat", name="tom")["id"]
        wendy.act(act="react", id=line, emoji="👍")
        tom.read_until('wendy reacted 👍 to tom: "hi all"\n'.encode())
        event = paul.until("react")
        self.assertEqual({k: v for k, v in event.items() if k != "at"}, {
            "type": "react", "id": line, "emoji": "👍", "name": "wendy", "on": True, "n": 1, "names": ["wendy"]})
        paul.act(act="react", id=line, emoji="👍")
        self.assertEqual(paul.until("react")["names"], ["wendy", "paul"])
        wendy.act(act="react", id=line, emoji="👍")
        tom.read_until('wendy took back 👍 from tom: "hi all"\n'.encode())
        event = paul.until("react", name="wendy")
        self.assertEqual((event["on"], event["n"], event["names"]), (False, 1, ["paul"]))
        wendy.act(act="react", id=line, emoji="❤")   # without its variation selector
        tom.read_until('wendy reacted ❤️ to tom: "hi all"\n'.encode())
        wendy.act(act="react", id=line, emoji="👎")
        self.assertEqual(wendy.until("note")["text"], "a reaction is one of 👍 ❤️ 😂 😮 😢 🙏")

    def test_a_flood_of_reactions_and_typing_notices_is_bounded_and_slows_nobody_else(self):
        wendy, tom, paul = self.wendy_tom_and_paul(line_rate=0)   # only the flood's own limits
        tom.send(b"react to me\n")
        line = paul.until("chat", name="tom")["id"]
        started = time.monotonic()
        for _ in range(100):
            wendy.act(act="react", id=line, emoji="😂")
            wendy.act(act="typing")
        tom.send(b"tom: still here\n")
        wendy.ws.send("after the flood")   # said after the flood: the flood is all read by then
        heard = tom.read_until(b"wendy: after the flood\n")
        if b"tom: still here\n" not in heard:   # its own line may come after
            heard += tom.read_until(b"tom: still here\n")
        elapsed = time.monotonic() - started
        reactions = heard.count("wendy reacted 😂".encode()) + heard.count("wendy took back 😂".encode())
        self.assertGreaterEqual(reactions, 2)
        self.assertLessEqual(reactions, pcr.Gate.REACT_BURST + pcr.Gate.REACT_RATE * elapsed + 1)
        self.assertNotIn(b"typing", heard)   # terminals are never told
        events, lines = [], set()
        while lines != {"still here", "after the flood"}:   # tom's line reaches pages too
            event = paul.next()
            events.append(event["type"])
            lines |= {event["text"]} if event["type"] == "chat" else set()
        self.assertGreaterEqual(events.count("typing"), 1)
        self.assertLessEqual(events.count("typing"), pcr.Gate.TYPING_BURST + pcr.Gate.TYPING_RATE * elapsed + 1)
        self.assertEqual(events.count("react"), reactions)
        self.assertIn("you are reacting to that line too fast; wait a few seconds",
                      [e.get("text") for e in wendy.until_quiet() if e["type"] == "note"])

    def test_only_the_sender_edits_or_deletes_and_unknown_ids_get_one_sentence(self):
        wendy, tom, paul = self.wendy_tom_and_paul()
        line = self.said_by(wendy, "my line")
        tom.read_until(b"wendy: my line\n")
        paul.act(act="edit", id=line, text="paul's words")
        self.assertEqual(paul.until("note")["text"], "only the member who sent a line can edit it")
        paul.act(act="delete", id=line)
        self.assertEqual(paul.until("note")["text"], "only the member who sent a line can delete it")
        for action, sentence in (
                ({"act": "edit", "id": 99999, "text": "x"}, "that line is no longer kept in the room, so it cannot be edited"),
                ({"act": "delete", "id": 99999}, "that line is no longer kept in the room, so it cannot be deleted"),
                ({"act": "react", "id": 99999, "emoji": "👍"}, "that line is no longer kept in the room, so it cannot be reacted to"),
                ({"act": "edit", "id": line, "text": " \t "}, "an edit needs words: to take a line back, delete it"),
                ({"act": "shout", "id": line}, "the room did not understand what your page sent; reload the page")):
            with self.subTest(action=action):
                wendy.act(**action)
                self.assertEqual(wendy.until("note")["text"], sentence)
        wendy.ws.send("\x00not json at all")
        self.assertEqual(wendy.until("note")["text"], "the room did not understand what your page sent; reload the page")
        self.assertEqual(self.nothing_more(tom), b"")
        wendy.act(act="delete", id=line)
        tom.read_until(b"wendy deleted a line\n")
        wendy.act(act="delete", id=line)
        self.assertEqual(wendy.until("note")["text"], "that line was deleted, so it cannot be deleted")

    def test_past_the_window_a_line_can_no_longer_be_edited_or_deleted(self):
        wendy, tom = self.wendy_and_tom(edit_window=0.4)
        line = self.said_by(wendy, "the cake is in the frige")
        wendy.act(act="edit", id=line, text="the cake is in the fridge")
        tom.read_until(b'wendy edited: "the cake is in the fridge"\n')
        time.sleep(0.5)   # the window, a setting, runs out
        wendy.act(act="edit", id=line, text="too late")
        self.assertEqual(wendy.until("note")["text"], "a line can be edited only within 0.4 seconds of sending it")
        wendy.act(act="delete", id=line)
        self.assertEqual(wendy.until("note")["text"], "a line can be deleted only within 0.4 seconds of sending it")
        wendy.act(act="react", id=line, emoji="🙏")   # reactions and replies have no window
        tom.read_until('wendy reacted 🙏 to wendy: "the cake is in the fridge" (edited)\n'.encode())

    def test_the_window_is_fifteen_minutes(self):
        wendy, tom = self.wendy_and_tom()
        line = self.said_by(wendy, "one")
        said = self.on_loop(lambda: self.server.room.transcript.get(line))
        self.on_loop(lambda: setattr(said, "at", said.at - 899))   # 14 min 59 s ago
        wendy.act(act="edit", id=line, text="still mine to change")
        tom.read_until(b'wendy edited: "still mine to change"\n')
        self.on_loop(lambda: setattr(said, "at", said.at - 2))     # 15 min 1 s ago
        wendy.act(act="edit", id=line, text="too late")
        self.assertEqual(wendy.until("note")["text"], "a line can be edited only within 15 minutes of sending it")

    def test_edits_and_deletions_reach_every_member_as_one_line_and_the_log_never_has_the_words(self):
        wendy, tom, paul = self.wendy_tom_and_paul()
        amy = self.app("amy")
        amy.wait_box("4 people are online...\n")
        line = self.said_by(wendy, "the cake is in the frige")
        wendy.act(act="edit", id=line, text="the cake is in the fridge")
        tom.read_until(b'wendy edited: "the cake is in the fridge"\n')
        self.assertEqual({k: v for k, v in paul.until("edit").items() if k != "at"},
                         {"type": "edit", "id": line, "name": "wendy", "text": "the cake is in the fridge"})
        pin = self.said_by(wendy, "my PIN is 4711")
        wendy.act(act="delete", id=pin)
        tom.read_until(b"wendy: my PIN is 4711\nwendy deleted a line\n")
        self.assertEqual({k: v for k, v in paul.until("delete").items() if k != "at"},
                         {"type": "delete", "id": pin, "name": "wendy"})
        amy.wait_chat('wendy edited: "the cake is in the fridge"\n')
        amy.wait_chat("wendy deleted a line\n")
        self.assert_app_shows_well(amy)
        self.assertEqual(amy.box, "4 people are online...\n")
        log = self.log_text()
        self.assertNotIn("4711", log)
        self.assertNotIn("fridge", log)

    def test_a_page_away_and_newcomers_are_given_only_the_new_words(self):
        self.start(history=10, web_grace=5.0)
        tom = self.member("tom")
        wendy, walt, paul = (self.web_member(name) for name in ("wendy", "walt", "paul"))
        paul.until("count", n=4)
        token, seen = paul.token, paul.seen
        paul.lose()
        self.wait_on_loop(lambda: self.server.room.find("paul").stage is pcr.Stage.AWAY, "paul away")
        code = self.said_by(wendy, "the door code is 4711")
        walt.until("chat", text="the door code is 4711")
        walt.act(act="reply", id=code, text="thanks!")
        thanks = wendy.until("chat", name="walt")["id"]
        wendy.act(act="react", id=thanks, emoji="👍")
        wendy.act(act="edit", id=code, text="the door code is on the fridge")
        wendy.until("edit")
        pin = self.said_by(wendy, "oops: my PIN 1234")
        wendy.act(act="delete", id=pin)
        wendy.until("delete")
        tom.read_until(b"wendy deleted a line\n")
        kept = self.on_loop(lambda: bytes(self.server.webs.stream.buf))
        for words in (b"4711", b"1234"):
            self.assertNotIn(words, kept)
        back = self.web_member(None)
        back.ask_seat_back(token, seen)
        self.assertTrue(back.until("welcome")["back"])
        missed = back.until_quiet()
        told = json.dumps(missed, ensure_ascii=False)
        self.assertNotIn("4711", told)
        self.assertNotIn("1234", told)
        self.assertEqual([(e["type"], e.get("id")) for e in missed],
                         [("chat", code), ("chat", thanks), ("react", thanks), ("edit", code),
                          ("chat", pin), ("delete", pin)])
        self.assertEqual(missed[3]["text"], "the door code is on the fridge")
        self.assertEqual(missed[1]["reply"], {"id": code, "name": "wendy"})   # its quote: from the edit

        nina = self.web_member("nina")
        self.assertEqual(nina.until("history")["lines"], [
            {"id": code, "name": "wendy", "text": "the door code is on the fridge", "edited": True},
            {"id": thanks, "name": "walt", "text": "thanks!", "reactions": {"👍": {"n": 1, "names": ["wendy"]}},
             "reply": {"id": code, "name": "wendy", "text": "the door code is on the fridge", "edited": True}},
            {"id": pin, "name": "wendy", "deleted": True}])
        zed = self.connect()
        zed.answer(b"zed\n")
        self.assertEqual(zed.read_until(b"zed joined the chat...\n").decode(),
                         'wendy: the door code is on the fridge (edited)\n'
                         'walt (to wendy: "the door code is on the fridge" (edited)): thanks!\n'
                         'wendy deleted a line\nzed joined the chat...\n')

    def test_a_replys_quote_is_scrubbed_once_not_at_every_edit(self):
        """A line answered 20 times, edited twice while a page is away (the stream keeps
        every frame for it): the first edit takes its words out of the 20 replies'
        quotes, the second has only the line's own frame left to rewrite (QA finding 12:
        each edit rewrote every reply's frame again).  A reply edited first still has
        the quote in its first frame: that goes too."""
        wendy, tom, paul = self.wendy_tom_and_paul(line_rate=0)
        paul.lose()
        self.wait_on_loop(lambda: self.server.room.find("paul").stage is pcr.Stage.AWAY, "paul away")
        line = self.said_by(wendy, "the first words")
        for k in range(20):
            wendy.act(act="reply", id=line, text=f"answer {k}")
        first = wendy.until("chat", text="answer 0")["id"]
        wendy.until("chat", text="answer 19")
        wendy.act(act="edit", id=first, text="answer zero")
        wendy.until("edit", text="answer zero")
        for words, frames in (("second words", 21), ("third words", 1)):
            with mock.patch.object(pcr, "ws_scrubbed", wraps=pcr.ws_scrubbed) as scrubbed:
                wendy.act(act="edit", id=line, text=words)
                wendy.until("edit", text=words)
                self.assertEqual(scrubbed.call_count, frames, words)
        kept = self.on_loop(lambda: bytes(self.server.webs.stream.buf))
        self.assertNotIn(b"first words", kept)
        self.assertNotIn(b"second words", kept)
        self.assertEqual(kept.count(b"answer "), 20)   # 19 replies and the edit
        wendy.act(act="delete", id=line)
        wendy.until("delete", id=line)
        self.assertNotIn(b"third words", self.on_loop(lambda: bytes(self.server.webs.stream.buf)))

    def test_a_quote_of_an_edited_line_says_it_was_edited(self):
        """A reply keeps quoting the line it answered, in that line's new words once
        it is edited: a line reader (live, or a newcomer given --history) reads
        `(edited)` after the quote, and a page `edited: true` in `reply` (QA finding
        13: `bob (to mallory: "do you agree that you owe me 500 euros?"): yes`)."""
        wendy, tom, paul = self.wendy_tom_and_paul(history=10)
        asked = self.said_by(wendy, "shall we meet at five?")
        paul.act(act="reply", id=asked, text="yes")
        tom.read_until(b'paul (to wendy: "shall we meet at five?"): yes\n')
        wendy.act(act="edit", id=asked, text="do you agree that you owe me 500 euros?")
        tom.read_until(b'wendy edited: "do you agree that you owe me 500 euros?"\n')
        paul.act(act="react", id=asked, emoji="👍")
        tom.read_until('paul reacted 👍 to wendy: "do you agree that you owe me 500 euros?" (edited)\n'.encode())
        wendy.act(act="reply", id=asked, text="you do")
        tom.read_until(b'wendy (to wendy: "do you agree that you owe me 500 euros?" (edited)): you do\n')
        self.assertEqual(paul.until("chat", text="you do")["reply"], {
            "id": asked, "name": "wendy", "text": "do you agree that you owe me 500 euros?", "edited": True})
        zed = self.connect()
        zed.answer(b"zed\n")
        self.assertEqual(zed.read_until(b"zed joined the chat...\n").decode(),
                         "wendy: do you agree that you owe me 500 euros? (edited)\n"
                         'paul (to wendy: "do you agree that you owe me 500 euros?" (edited)): yes\n'
                         'wendy (to wendy: "do you agree that you owe me 500 euros?" (edited)): you do\n'
                         "zed joined the chat...\n")
        nina = self.web_member("nina")
        quotes = [said.get("reply") for said in nina.until("history")["lines"]]
        self.assertEqual(quotes[1], {"id": asked, "name": "wendy", "edited": True,
                                     "text": "do you agree that you owe me 500 euros?"})
        wendy.act(act="delete", id=asked)   # a deleted line's quote: deleted, no longer edited
        tom.read_until(b"wendy deleted a line\n")
        paul.act(act="reply", id=asked, text="gone")
        tom.read_until(b"paul (to wendy: a deleted line): gone\n")

    def test_a_lone_surrogate_from_a_page_harms_nobody(self):
        """An edit (or a reply) whose JSON escapes a lone surrogate ("\\ud800") can
        never make a line the room cannot send: an innocent page reacting to it, a
        newcomer terminal and a newcomer page given it in --history all read it, with
        U+FFFD in its place; nor can a request for a seat back."""
        self.start(history=10, web_grace=5.0)
        tom = self.member("tom")
        wendy, paul = self.web_member("wendy"), self.web_member("paul")
        paul.until("count", n=3)
        line = self.said_by(wendy, "see you at five")
        wendy.ws.send("\x00" + json.dumps({"act": "edit", "id": line, "text": "see you at six \ud800"}))
        tom.read_until('wendy edited: "see you at six \ufffd"\n'.encode())
        paul.act(act="react", id=line, emoji="👍")
        self.assertEqual(paul.until("react")["id"], line)
        tom.read_until('paul reacted 👍 to wendy: "see you at six \ufffd" (edited)\n'.encode())
        paul.ws.send("\x00" + json.dumps({"act": "reply", "id": line, "text": "ok \udfff"}))
        tom.read_until('paul (to wendy: "see you at six \ufffd" (edited)): ok \ufffd\n'.encode())
        zed = self.connect()
        zed.answer(b"zed\n")
        heard = zed.read_until(b"zed joined the chat...\n").decode()
        self.assertIn("wendy: see you at six \ufffd", heard)
        self.assertIn('paul (to wendy: "see you at six \ufffd" (edited)): ok \ufffd\n', heard)
        zed.send(b"zed is here\n")
        tom.read_until(b"zed: zed is here\n")
        nina = self.web_member("nina")
        self.assertEqual([said.get("text") for said in nina.until("history")["lines"]],
                         ["see you at six \ufffd", "ok \ufffd", "zed is here"])
        nina.ws.send("nina is here")
        tom.read_until(b"nina: nina is here\n")
        back = self.web_member(None)   # a request for wendy's seat with such a secret
        back.ws.send(json.dumps({"resume": wendy.token.split(".")[0] + ".\ud800", "seen": 0}).encode())
        self.assertEqual(back.until("lost")["text"], pcr.SEAT_GONE)
        back.ws.send("walt")
        back.until("welcome")
        self.assert_chats_on(wendy, tom)
        self.assertNotIn("internal error", self.log_text())

    def test_a_reply_to_a_line_no_longer_kept_goes_as_a_new_line_or_if_private_comes_back(self):
        wendy, tom = self.wendy_and_tom()
        with mock.patch.object(pcr, "LINES_KEPT", 2):
            first = self.said_by(wendy, "one")
            for text in ("two", "three"):
                self.said_by(wendy, text)
            wendy.act(act="reply", id=first, text="late answer")
            tom.read_until(b"wendy: late answer\n")   # a new line, whole
            self.assertEqual(wendy.until("note")["text"],
                             "the line you answered is no longer kept, so yours was sent as a new line")
            wendy.act(act="reply", id=first, text="a private answer", private=True)
            self.assertEqual({k: v for k, v in wendy.until("note").items()},
                             {"type": "note", "words": "a private answer", "text":
                              "the private line you answered is no longer kept, so your reply was not sent"})
            self.assertEqual(self.nothing_more(tom), b"")
            wendy.act(act="react", id=first, emoji="👍")
            self.assertEqual(wendy.until("note")["text"],
                             "that line is no longer kept in the room, so it cannot be reacted to")

    def test_a_private_reply_to_someone_who_left_is_not_sent_and_comes_back(self):
        wendy, tom = self.wendy_and_tom()
        ann = self.member("ann")
        ann.send(b"/msg wendy see you\n")
        secret = wendy.until("private")["id"]
        ann.close()
        tom.read_until(b"ann has left the chat...\n")
        wendy.act(act="reply", id=secret, text="bye")
        self.assertEqual(wendy.until("note"), {"type": "note", "words": "bye", "text":
                                               "ann is not in the room now, so your private reply was not sent"})

    def test_old_style_commands_nul_lines_and_names_forge_nothing(self):
        wendy, tom = self.wendy_and_tom()
        tom.send(f"tom: {self.QUESTION}\n".encode())
        asked = wendy.until("chat", name="tom")["id"]
        forged = ["/react 1 👍", "/edit 1 hacked", "/delete 1", "/reply 1 hi", "/typing",
                  '\x00{"act": "delete", "id": 1}']
        for text in forged:
            tom.send(f"{text}\n".encode())
        heard = tom.read_until('tom: {"act": "delete", "id": 1}\n'.encode()).decode()
        for text in forged:
            self.assertIn(f"tom: {text.lstrip(chr(0))}\n", heard)
        self.assertEqual([wendy.until("chat")["text"] for _ in forged], [t.lstrip("\x00") for t in forged])
        said = self.on_loop(lambda: self.server.room.transcript.get(asked))
        self.assertEqual((said.text, said.deleted, said.reactions), (self.QUESTION, False, None))
        for name, text in (("tom reacted 👍 to tom", self.QUOTE), ("tom edited", '"hacked"'),
                           ("tom (to tom", self.QUOTE + "): yes"), ("tom took back 👍 from tom", self.QUOTE)):
            with self.subTest(name=name):
                forger = self.member(name)
                forger.send(f"{name}: {text}\n".encode())   # its own name first, as the App writes
                line = tom.read_until(f": {text}\n".encode()).decode().splitlines()[-1]
                self.assertEqual(line, f"_{name.replace(' ', '_')}: {text}")
                forger.close()

    def test_a_deleted_photo_is_gone_from_the_room(self):
        if Image is None:
            self.skipTest(NO_PIL)
        wendy, tom = self.wendy_and_tom()
        share(wendy, picture("JPEG", (64, 48)))
        photo = wendy.until("photo")
        link = photo_link(tom.read_until(b".jpg\n"))
        wendy.act(act="edit", id=photo["id"], text="a caption")
        self.assertEqual(wendy.until("note")["text"], "a photo cannot be edited: delete it and share another")
        wendy.act(act="reply", id=photo["id"], text="nice")
        tom.read_until(b"wendy (to wendy: a photo): nice\n")
        wendy.act(act="delete", id=photo["id"])
        tom.read_until(b"wendy deleted a line\n")
        self.assertTrue(fetch(link)[0].startswith("HTTP/1.1 404"))
        self.assertEqual(self.on_loop(lambda: self.server.room.album.size), 0)

    def test_typing_reaches_pages_alone(self):
        wendy, tom, paul = self.wendy_tom_and_paul()
        wendy.act(act="typing")
        self.assertEqual({k: v for k, v in paul.until("typing").items() if k != "at"},
                         {"type": "typing", "name": "wendy"})
        self.assertEqual(self.nothing_more(tom), b"")


# ---------------------------------------------------------------------------
# 5. The gate
# ---------------------------------------------------------------------------


class LimitsTest(ServerCase):
    """Each limit: enforced in the loop, logged, told to the person."""

    def test_too_long_line_is_refused_and_the_member_stays(self):
        self.start(max_line=100)
        ann, bob = self.member("ann"), self.member("bob")
        ann.send(b"ann: " + b"x" * 200 + b"\n")
        ann.read_until(b"your line was longer than 100 bytes and was not sent\n")
        ann.send(b"ann: short\n")
        got = bob.read_until(b"ann: short\n")
        self.assertNotIn(b"xxxx", got)
        self.assertIn("over 100 bytes", self.log_text())

    def test_endless_bytes_without_newline_do_not_grow_a_buffer(self):
        server = self.start(max_line=1000)
        ann, bob = self.member("ann"), self.member("bob")
        for _ in range(200):
            ann.send(b"y" * 1000)
        ann.read_until(b"longer than 1000 bytes")
        inbuf = self.on_loop(lambda: max(len(m.transport.inbuf) for m in server.connections))
        self.assertLessEqual(inbuf, 1001)
        ann.send(b"\nann: after\n")
        got = bob.read_until(b"ann: after\n")
        self.assertNotIn(b"yyy", got)

    def test_flooding_member_is_slowed_not_cut(self):
        self.start(line_rate=50)
        ann, bob = self.member("ann"), self.member("bob")
        t0 = time.monotonic()
        ann.send(b"".join(b"ann: %d\n" % i for i in range(200)))
        bob.send(b"bob: still heard\n")
        got = ann.read_until(b"ann: 199\n")
        elapsed = time.monotonic() - t0
        self.assertLess(got.index(b"bob: still heard\n"), got.index(b"ann: 150\n"))   # not behind the flood
        numbers = [int(l.split(b": ")[1]) for l in got.split(b"\n") if l.startswith(b"ann: ")]
        self.assertEqual(numbers, list(range(200)))
        self.assertGreater(elapsed, 1.5)   # 100 over the burst at 50 a second

    def test_member_that_does_not_read_is_cut_and_others_get_everything(self):
        server = self.start(max_backlog=64 * 1024, line_rate=0)
        stalled = self.connect(rcvbuf=4096)
        stalled.join("stall")
        # A small send buffer on the server's side too: Linux grows it to 4 MB, and
        # then the kernel alone may hold all but a few KB of the 3 MB sent below.
        self.on_loop(lambda: [m.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                              for m in server.connections if m.name == "stall"])
        ann, bob = self.member("ann"), self.member("bob")
        line = b"ann: " + b"z" * 1000 + b" %d\n"
        total = 3000
        reader_done = threading.Event()
        got = []

        def read_all():
            got.append(bob.read_until(b" %d\n" % (total - 1), timeout=30))
            reader_done.set()
        threading.Thread(target=read_all, daemon=True).start()
        threading.Thread(target=ann.read_until, args=(b" %d\n" % (total - 1), 30), daemon=True).start()
        for i in range(total):
            ann.send(line % i)
        self.assertTrue(reader_done.wait(30))
        numbers = [int(l.rsplit(b" ", 1)[1]) for l in got[0].split(b"\n") if l.startswith(b"ann: ")]
        self.assertEqual(numbers, list(range(total)))
        self.assertEqual((got[0] + bob.read_for(0.3)).count(b"stall has left the chat...\n"), 1)
        self.assertIn("not reading", self.log_text())
        stream = self.on_loop(lambda: len(server.terminals.stream.buf))
        self.assertLess(stream, 64 * 1024 + pcr.READ_SIZE)   # the cap plus one read

    def test_reconnecting_in_a_loop_is_welcomed_ever_later_not_refused(self):
        self.start(max_per_ip=2, churn_period=4.0)   # 8 welcomes at once, then 2 a second
        watcher = self.member("watch")
        t0 = time.monotonic()
        for i in range(7):
            self.member(f"churn{i}").close()
        quick = time.monotonic() - t0
        for i in range(7, 10):
            self.member(f"churn{i}").close()
        slowed = time.monotonic() - t0 - quick
        self.assertGreater(slowed, 0.8)    # 3 more at 2 a second, after the burst
        got = watcher.read_until(b"churn9 has left the chat...\n")
        self.assertEqual(got.count(b"has left the chat..."), 10)

    def test_room_full_is_told_then_closed(self):
        self.start(max_clients=2)
        self.member("a"), self.member("b")
        c = self.connect()
        got = c.read_to_close()
        self.assertEqual(got, b"the room is full (2 connections); please try again later\n")
        self.assertIn("room is full", self.log_text())

    def test_too_many_from_one_address_is_told_then_closed(self):
        self.start(max_per_ip=2)
        self.member("a"), self.member("b")
        got = self.connect().read_to_close()
        self.assertIn(b"too many connections from your address (at most 2)", got)

    def test_address_outside_allow_is_closed_at_once(self):
        self.start(allow=("10.0.0.0/8", "fd00::/8"))
        self.assertEqual(self.connect().read_to_close(), b"")
        self.assertIn("not in --allow", self.log_text())

    def test_address_inside_allow_joins(self):
        self.start(allow=("10.0.0.0/8", "127.0.0.0/8"))
        self.member("ann")

    def test_ipv6_listener_and_allow(self):
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        try:
            self.start(host="::1", allow=("::1/128",))
        except pcr.StartError as e:
            self.skipTest(f"no IPv6 loopback: {e}")
        c = Client(self.port, host="::1", family=socket.AF_INET6)
        self.addCleanup(c.close)
        c.join("six")

    def test_ipv4_on_a_dual_stack_room_is_ipv4_everywhere(self):
        """A room on `::` (the default) gets IPv4 as IPv4-mapped IPv6: the log, --allow and
        the per-address limit see the plain IPv4 address."""
        if not socket.has_dualstack_ipv6():
            self.skipTest("no dual-stack IPv6 here")
        self.start(host="::", allow=("127.0.0.0/8",), max_per_ip=1)
        self.member("four")
        self.assertIn('joined: "four" (terminal) from 127.0.0.1\n', self.log_text())
        self.assertIn(b"too many connections from your address (at most 1)", self.connect().read_to_close())
        member = self.wait_on_loop(lambda: self.server.room.find("four"), "four in")
        self.assertEqual((member.ip, member.group), ("127.0.0.1", "127.0.0.1"))
        six = Client(self.port, host="::1", family=socket.AF_INET6)   # not in --allow
        self.addCleanup(six.close)
        self.assertEqual(six.read_to_close(), b"")


class HardeningTest(ServerCase):
    """The second security review's findings, each shown and closed (issue 10)."""

    def test_look_alike_names_get_a_number_like_any_taken_name(self):
        self.start()
        self.member("alice")
        for n, twin in enumerate(("ali\u034fce", "ALICE\ufe0f", "\uff41\uff4c\uff49\uff43\uff45",
                                  "\U0001d5ba\U0001d5c5\U0001d5c2\U0001d5bc\U0001d5be",
                                  "\u0430lice", "alice\u200b"), start=2):
            c = self.connect()
            c.answer(twin.encode() + b"\n")
            got = c.read_until(b" online...\n")
            self.assertIn(f" ({n}) joined the chat...".encode(), got, twin)

    def test_bidi_overrides_never_reach_the_room(self):
        self.start()
        ann = self.member("ann")
        ann.send("ann: abc\u202edef\u2066x\u2028y\n".encode())
        ann.read_until("ann: abcdefxy\n".encode())

    def test_a_reconnect_loop_over_the_cap_is_summed_up_in_the_log(self):
        self.start(max_per_ip=2, log_summary=0.5)
        self.member("a"), self.member("b")
        for _ in range(200):   # the third connection, again and again
            self.connect().read_to_close()
        time.sleep(1.2)   # the summary comes once per interval
        refusals = [line for line in self.log_text().splitlines() if "refused 127.0.0.1" in line]
        self.assertLessEqual(len(refusals), 6, refusals)
        self.assertRegex(refusals[-1], r"\(\d+ more times? in \d+ s\)$")
        told = [re.search(r"\((\d+) more times?", line) for line in refusals]
        self.assertEqual(sum(int(n.group(1)) if n else 1 for n in told), 200)   # every refusal

    def test_what_is_summed_up_is_logged_when_the_server_stops(self):
        server = self.start(max_per_ip=1)
        self.member("a")
        for _ in range(3):
            self.connect().read_to_close()
        self.assertRegex(self.stopped_log(server, "INFO:pcr_server:stopped"),
                         r"refused 127\.0\.0\.1: too many connections .*"
                         r"\(2 more times in \d+ s\)")

    def test_names_in_the_log_are_quoted(self):
        self.start()
        self.member("x from 10.9.8.7")
        self.assertIn('joined: "x from 10.9.8.7" (terminal) from 127.0.0.1', self.log_text())

    def test_a_member_held_back_by_its_rate_keeps_no_more_of_an_endless_line_than_shows_it(self):
        server = self.start(max_line=100, line_rate=1)
        ann = self.member("ann")
        ann.send(b"a\n" * 3 + b"x" * 3000)   # the third line waits for its rate; then no newline
        self.wait_on_loop(lambda: any(not m.transport.reading for m in server.connections),
                          "ann held back")
        held = self.on_loop(lambda: max(len(m.transport.inbuf) - m.transport.inbuf.rfind(b"\n") - 1
                                        for m in server.connections))
        self.assertLessEqual(held, 100 + 2)
        ann.read_until(b"your line was longer than 100 bytes and was not sent\n")

    def test_what_a_connection_can_make_the_server_hold_is_about_one_line_and_one_read(self):
        server = self.start(max_line=1000)
        addresses = [f"127.0.0.{n}" for n in range(2, 10)]
        members, arriving = [], []
        for address in addresses:
            for k in range(14):   # with the two below: the per-address cap, and no more
                c = Client(self.port, source=address)
                self.addCleanup(c.close)
                members.append(c.join(f"f{address[-1]}x{k}"))
            for k in range(2):   # Apps waiting for their welcome, typing ahead
                c = Client(self.port, source=address)
                self.addCleanup(c.close)
                arriving.append(c)
        line = b"flood: " + b"w" * 90 + b"\n"
        for c in members:
            c.send(line * 600)   # 58 KiB each, rate limited
        for c in arriving:
            c.answer(b"late" + line * 600)
        self.wait_on_loop(lambda: sum(not m.transport.reading for m in server.connections)
                          >= len(members) + len(arriving), "every flooder held back")
        held = self.on_loop(lambda: sorted(len(m.transport.inbuf) for m in server.connections))
        self.assertLessEqual(held[-1], pcr.READ_SIZE + 1000 + 1, held[-5:])
        self.assertLessEqual(sum(held), len(held) * (pcr.READ_SIZE + 1001))

    def test_the_line_rate_holds_per_address_too(self):
        self.start(line_rate=5)   # 5 a second per member, 20 per address
        watcher = self.member("watch")
        talkers = [Client(self.port, source="127.0.0.7").join(f"t{k}") for k in range(8)]
        for c in talkers:
            self.addCleanup(c.close)
        t0 = time.monotonic()
        for c in talkers:   # each within its own burst of 10 twice over: 160 lines at once
            c.send(b"".join(b"%d\n" % i for i in range(20)))
        got = b""
        while got.count(b": ") < 160:
            got += watcher.read_until(b"\n", timeout=20)
        elapsed = time.monotonic() - t0
        self.assertGreater(elapsed, (160 - 40) / 20 - 1.0)   # 40 at once, then 20 a second

    def test_connecting_too_often_is_refused_before_any_tls_handshake(self):
        if pcr.ssl is None:
            self.skipTest("no ssl module")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        cert, key = make_certificate(directory)
        self.start(tls_cert=cert, tls_key=key, max_per_ip=2)   # 16 at once, then 8 a second
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        done = refused = 0
        t0 = time.monotonic()
        for _ in range(64):   # a handshake flood from one address, as fast as this machine goes
            raw = socket.create_connection(("127.0.0.1", self.port), WAIT, source_address=("127.0.0.8", 0))
            try:
                with context.wrap_socket(raw) as tls:
                    tls.recv(5)
                    done += 1
            except (ssl.SSLError, OSError):
                refused += 1
            raw.close()
        allowed = 16 + 8 * (time.monotonic() - t0) + 1   # counted by the flood's own time
        self.assertLessEqual(done, allowed, (done, refused))
        ok = self.connect()   # another address is not slowed
        if refused:   # none only on a machine so loaded that 64 handshakes took 6 s
            self.assertIn("connecting too often", self.log_text())

    def test_the_record_of_numbered_names_does_not_grow(self):
        server = self.start(max_per_ip=1000)
        for _ in range(3):
            crowd = [self.member("x") for _ in range(5)]
            for c in crowd:
                c.close()
        self.member("y").close()
        self.member("z")
        self.wait_on_loop(lambda: sorted(server.room.bases) == ["z"], "only z on record")


class PatienceTest(ServerCase):
    """Silent connections may be Apps whose users are typing a name (issue 9)."""

    def test_the_default_handshake_time_out_is_minutes(self):
        self.assertGreaterEqual(pcr.Settings().handshake_timeout, 300)

    def test_at_the_per_address_cap_the_oldest_silent_connection_makes_room(self):
        self.start(max_per_ip=3)
        named = self.member("ann")
        silent = [self.connect() for _ in range(2)]
        for c in silent:
            c.read_until(b"ALIAS")
        late = self.connect()
        late.join("bob")   # let in: the oldest silent one was closed
        silent[0].read_to_close()
        silent[1].send(b"cy\n")   # the other is still there
        silent[1].read_until(b"cy joined the chat...\n")
        self.assertIn("closed a silent connection from 127.0.0.1 to make room", self.log_text())
        named.send(b"ann: fine\n")
        named.read_until(b"ann: fine\n")

    def test_at_the_total_cap_the_address_with_most_silent_connections_makes_room(self):
        self.start(max_unnamed=4)
        crowd = [Client(self.port, source="127.0.0.3") for _ in range(3)]
        lone = Client(self.port, source="127.0.0.4")
        for c in crowd + [lone]:
            self.addCleanup(c.close)
            c.read_until(b"ALIAS")
        newcomer = self.connect()
        newcomer.read_until(b"ALIAS")
        crowd[0].read_to_close()   # the oldest of the address holding the most
        lone.send(b"lone\n")
        lone.read_until(b"lone joined the chat...\n")

    def test_many_addresses_of_one_network_make_room_before_a_lone_app(self):
        """An App waits silent while its user types a name; a crowd of one silent
        connection per address, all from one network (a /24 here, an IPv6 /48 as
        cheaply), is closed before it (hostile QA, finding 8)."""
        self.start(max_unnamed=4)
        app = Client(self.port, source="127.0.0.9")   # the oldest silent connection
        crowd = [Client(self.port, source=f"127.1.0.{n}") for n in (1, 2, 3)]
        for c in [app] + crowd:
            self.addCleanup(c.close)
            c.read_until(b"ALIAS")
        for n in (4, 5, 6):   # the crowd goes on coming, each from an address of its own
            more = Client(self.port, source=f"127.1.0.{n}")
            self.addCleanup(more.close)
            more.read_until(b"ALIAS")
            crowd.pop(0).read_to_close()   # the crowd's oldest makes room, each time
        app.send(b"ann\n")
        app.read_until(b"ann joined the chat...\n")

    def test_the_network_an_address_counts_in_when_room_is_made(self):
        for group, network in (("192.0.2.7", "192.0.2.0/24"),
                               ("2001:db8:1:2::/64", "2001:db8:1::/48"),
                               ("2001:db8:1:ffff::/64", "2001:db8:1::/48")):
            self.assertEqual(pcr.address_network(group), network)


class RoomKeyTest(ServerCase):
    """--room-key: name#KEY, never echoed, never logged."""

    settings = {"room_key": "s3cret-K"}

    def test_right_key_joins_under_the_name_alone(self):
        self.start()
        c = self.connect()
        c.answer(b"ann#s3cret-K")
        got = c.read_until(b" online...\n")
        self.assertIn(b"ann joined the chat...\n", got)
        c.send(b"ann#s3cret-K: hello\n")
        got += c.read_until(b"ann: hello\n")
        self.assertNotIn(b"s3cret", got)
        self.assertNotIn("s3cret", self.log_text())

    def test_app_leave_line_with_key_is_one_leave_without_the_key(self):
        self.start()
        bob = self.connect()
        bob.answer(b"bob#s3cret-K")
        bob.read_until(b" online...\n")
        ann = self.connect()
        ann.answer(b"ann#s3cret-K")
        ann.read_until(b"2 people are online...\n")
        ann.send(b"\tann#s3cret-K has left the chat...\n")
        ann.close()
        got = bob.read_until(b"1 person is online...\n") + bob.read_for(0.2)
        self.assertEqual(got.count(b"ann has left the chat...\n"), 1, got)
        self.assertNotIn(b"s3cret", got)

    def test_wrong_key_is_told_and_closed_and_logged(self):
        self.start()
        c = self.connect()
        c.answer(b"ann#guess")
        got = c.read_to_close()
        self.assertEqual(got, b"that room key is wrong: check it with the host and try again\n")
        self.assertIn("wrong or missing room key from 127.0.0.1", self.log_text())
        self.assertNotIn("guess", self.log_text())

    def test_missing_key_is_refused(self):
        self.start()
        c = self.connect()
        c.answer(b"ann\n")
        self.assertIn(b"this room needs a key", c.read_to_close())

    def test_after_a_wrong_key_an_address_is_checked_one_try_at_a_time_ever_slower(self):
        self.start(max_per_ip=100)
        first = self.connect()
        first.answer(b"x#nope\n")
        self.assertIn(b"is wrong", first.read_to_close())
        guesses = [self.connect() for _ in range(4)]
        t0 = time.monotonic()
        for c in guesses:   # four guesses at once: checked 0.25, 0.5, 1 s apart
            c.answer(b"x#guess\n")
        answered = []
        for c in guesses:
            self.assertIn(b"is wrong", c.read_to_close(timeout=10))
            answered.append(time.monotonic() - t0)
        self.assertGreater(answered[-1], 0.25 + 0.5 + 1.0 - 0.1, answered)
        self.assertLess(answered[0], answered[-1] - 1.0, answered)   # the first long before the last
        self.assertIn("wrong or missing room key from 127.0.0.1", self.log_text())


class SelectorLimitTest(ServerCase):
    """Where the selector is select() (Windows: 512 sockets), the room holds what
    it can watch and refuses the rest like a full room; a failing select() costs
    a log line, not the room (issue 18)."""

    def start_on_select(self, limit: int = pcr.SELECT_LIMIT, selector=selectors.SelectSelector,
                        **overrides) -> pcr.Server:
        patches = (mock.patch.object(pcr.selectors, "DefaultSelector", selector),
                   mock.patch.object(pcr, "SELECT_LIMIT", limit))
        for patch in patches:
            patch.start()
            self.addCleanup(patch.stop)
        return self.start(**overrides)

    def test_beyond_what_select_can_watch_connections_are_refused_as_in_a_full_room(self):
        server = self.start_on_select(60, max_per_ip=1000)
        capacity = 60 - 1 - 2 - pcr.Gate.REFUSING
        self.assertEqual(server.gate.capacity, capacity)
        self.assertIn(f"(up to {capacity} members)", self.log_text())
        members = [self.member(f"m{i}") for i in range(capacity)]
        late = self.connect()
        self.assertIn(b"the room is full", late.read_to_close())
        members[0].send(b"still chatting\n")
        members[-1].read_until(b"m0: still chatting\n")

    def test_a_member_who_leaves_and_comes_back_at_once_is_not_refused_for_its_address(self):
        # A Windows CI run refused such a member: its new connection and the end
        # of its old one came in one turn, and select() reported the listening
        # socket first (its order is the order of a set of handles).  Here the
        # loop is held while both happen, and its selector puts accepting first.
        class AcceptingFirst(selectors.SelectSelector):
            def select(self, timeout=None):
                return sorted(super().select(timeout),
                              key=lambda event: event[0].data[0].__name__ != "_on_accept")
        self.start_on_select(selector=AcceptingFirst, max_per_ip=2)
        watcher = self.member("watch")
        old = self.member("again")
        for i in range(5):
            held, go = threading.Event(), threading.Event()
            self.server.loop.call_soon_threadsafe(lambda: (held.set(), go.wait(WAIT)))
            self.assertTrue(held.wait(WAIT))
            old.close()
            new = Client(self.port)   # the kernel completes it: the loop is held
            self.addCleanup(new.close)
            go.set()
            old = new.join(f"again{i}")
        got = watcher.read_until(b"again3 has left the chat...\n")
        self.assertEqual(got.count(b"has left the chat..."), 5)
        self.assertNotIn("too many connections", self.log_text())

    @unittest.skipUnless(WINDOWS, "select() holds 512 sockets where Windows builds it so; "
                                  "the test above keeps the same rule at a smaller cap")
    def test_under_windows_600_connections_leave_the_room_chatting(self):
        server = self.start(max_per_ip=1000)
        capacity = pcr.SELECT_LIMIT - 1 - 2 - pcr.Gate.REFUSING   # the real cap, about 477
        self.assertEqual(server.gate.capacity, capacity)
        ann, bob = self.member("ann"), self.member("bob")
        crowd, refused = [], 0
        for i in range(598):
            sock = socket.create_connection(("127.0.0.1", self.port), WAIT)
            self.addCleanup(sock.close)
            sock.settimeout(WAIT)
            first = sock.recv(4096)
            if first.startswith(b"the room is full"):
                refused += 1
            else:
                self.assertEqual(first, b"ALIAS")
                sock.sendall(b"m%d\n" % i)
                crowd.append(sock)
        # about 598 - 475 refused: one not yet named when the room filled may
        # have made room for a newcomer instead
        self.assertGreater(refused, 598 - (capacity - 2) - 20)
        self.assertLessEqual(self.on_loop(lambda: len(server.connections)), capacity)
        ann.send(b"still chatting\n")
        bob.read_until(b"ann: still chatting\n", timeout=2 * WAIT)
        self.assertNotIn("the selector failed", self.log_text())
        # the crowd leaves before the server stops: under Wine, its leaving and
        # the stop took longer than the WAIT a stop is given, once (1.6 s alone)
        for sock in crowd:
            sock.close()
        self.wait_on_loop(lambda: len(server.connections) == 2, "the crowd gone", timeout=60)

    def test_a_failing_select_is_logged_and_the_room_goes_on(self):
        server = self.start()
        ann = self.member("ann")
        real = server.loop.selector.select
        failures = iter([ValueError("too many file descriptors in select()")])

        def select(timeout=None):
            for error in failures:
                raise error
            return real(timeout)
        self.on_loop(setattr, server.loop.selector, "select", select)
        ann.send(b"hello\n")   # wakes the loop: its next select fails once
        ann.read_until(b"ann: hello\n")
        self.assertIn("the selector failed (ValueError: too many file descriptors in select())",
                      self.log_text())


# ---------------------------------------------------------------------------
# 6. The server and its doors
# ---------------------------------------------------------------------------


class SentenceTest(unittest.TestCase):
    """Sentences by their exact text (issue 31): no double full stop after a
    label that ends in "…", and summed log lines that count tries."""

    def test_no_sentence_ends_in_a_full_stop_after_a_label_that_ends_in_dots(self):
        errors = [OSError(errno.EADDRINUSE, "in use"), OSError(errno.EADDRNOTAVAIL, "not here"),
                  OSError(errno.EACCES, "denied"), socket.gaierror(socket.EAI_NONAME, "no name")]
        said = [pcr.bind_error_text(e, "0.0.0.0", 5050, advice, in_use)
                for advice in (pcr.WINDOW_ADVICE, pcr.FLAG_ADVICE) for e in errors
                for in_use in ("in use", "page in use")]
        self.assertIn("Port 5050 is already in use (is another server running?): stop that program "
                      "or choose another port with Change port…", said)
        self.assertEqual([text for text in said if "…." in text or ".." in text], [])
        self.assertTrue(all(text.endswith(("…", ".")) for text in said), said)

    def test_summed_lines_count_a_browsers_tries_not_its_connections(self):
        https = "closed 192.0.2.9: a browser asked for https on the page's port; start with --tls-cert for https"
        flood = "refused 192.0.2.8: you are connecting too often"
        with self.assertLogs(pcr.log, "WARNING") as logged:
            tally = pcr.Tally(60.0)
            for start in (0.0, 5.0):   # two tries of a browser, each a burst of 18 connections
                for i in range(18):
                    tally.add(start + i * 0.05, https, tries=True)
            for t in (1.0, 2.0, 3.0):
                tally.add(t, flood)
            tally.flush(61.0)
            tally.add(70.0, flood)
            tally.flush(200.0)
        self.assertEqual([record.getMessage() for record in logged.records],
                         [https, flood, f"{https} (1 more try in 61 s)",
                          f"{flood} (2 more times in 60 s)", f"{flood} (1 more time in 139 s)"])


class HandshakeTest(ServerCase):
    """Joining, as PROTOCOL.md describes it."""

    def test_first_read_is_exactly_alias(self):
        self.start()
        c = self.connect()
        self.assertEqual(c.recv_some(), b"ALIAS")
        time.sleep(0.2)   # nothing more may follow before the alias
        c.sock.setblocking(False)
        with self.assertRaises(BlockingIOError):
            c.sock.recv(10)

    def test_join_line_then_count_line_as_separate_reads(self):
        self.start()
        c = self.connect()
        c.answer(b"ann")
        c.read_until(b"1 person is online...\n")
        join_reads = [r for r in c.reads if b"joined" in r]
        count_reads = [r for r in c.reads if b"online" in r]
        self.assertEqual(join_reads, [b"ann joined the chat...\n"])
        self.assertEqual(count_reads, [b"1 person is online...\n"])

    def test_welcome_waits_for_the_app_window(self):
        self.start(welcome_delay=0.5)
        c = self.connect()
        t0 = time.monotonic()
        c.answer(b"ann")
        c.read_until(b"ann joined the chat...\n")
        self.assertGreaterEqual(time.monotonic() - t0, 0.45)

    def test_everyone_sees_the_newcomer_and_the_new_count(self):
        self.start()
        ann = self.member("ann")
        self.member("bob")
        ann.read_until(b"bob joined the chat...\n")
        ann.read_until(b"2 people are online...\n")

    def test_terminal_client_alias_with_crlf(self):
        self.start()
        c = self.connect()
        c.answer(b"tom\r\nhello\r\n")
        c.read_until(b"tom joined the chat...\n")
        c.read_until(b"tom: hello\n")

    def test_endless_bytes_right_after_the_name_are_cut_and_told(self):
        self.start(max_line=100)
        c = self.connect()
        c.answer(b"tom\n" + b"q" * 5000)
        c.read_until(b"your line was longer than 100 bytes and was not sent\n")
        c.send(b"\ntom: fine\n")
        got = c.read_until(b"tom: fine\n")
        self.assertNotIn(b"qqq", got)

    def test_lines_typed_right_after_the_name_are_all_relayed(self):
        self.start(line_rate=0)
        c = self.connect()
        c.answer(b"tom\n" + b"".join(b"line %d %s\n" % (i, b"p" * 90) for i in range(100)))
        got = c.read_until(b"tom: line 99 ")
        self.assertEqual(got.count(b"tom: line "), 100)

    def test_dual_stack_listener_takes_ipv4_and_ipv6(self):
        if not socket.has_dualstack_ipv6():
            self.skipTest("no dual-stack IPv6 here")
        self.start(host="::")
        self.member("four")
        six = Client(self.port, host="::1", family=socket.AF_INET6)
        self.addCleanup(six.close)
        six.join("six")

    def test_silent_connection_is_closed_after_the_handshake_timeout(self):
        self.start(handshake_timeout=0.5)
        c = self.connect()
        t0 = time.monotonic()
        c.read_until(b"ALIAS")
        c.read_to_close(timeout=5)
        self.assertLess(time.monotonic() - t0, 4.0)

    def test_many_half_open_connections_do_not_stop_a_join(self):
        self.start(max_per_ip=1000)
        idle = [self.connect() for _ in range(300)]
        self.member("ann")
        self.assertEqual(len(idle), 300)


class HostDoorsTest(ServerCase):
    """What a browser sends to the wrong door never joins the room (issue 27)."""

    settings = {"web_port": 0}

    def assert_closed_within(self, c: Client, seconds: float) -> bytes:
        t0 = time.monotonic()
        got = c.read_to_close(timeout=seconds)
        self.assertLess(time.monotonic() - t0, seconds)
        return got

    def test_a_browser_at_the_rooms_port_is_closed_at_once_and_never_a_member(self):
        self.start()
        ann = self.member("ann")
        browser = self.connect()
        browser.read_until(b"ALIAS")
        browser.send(b"GET / HTTP/1.1\r\nHost: 192.0.2.2:5050\r\nUser-Agent: Mozilla/5.0 (iPhone)\r\n"
                     b"Accept: text/html\r\n\r\n")
        self.assert_closed_within(browser, 4.0)
        ann.send(b"ann: after the browser\n")
        got = ann.read_until(b"ann: after the browser\n")
        self.assertNotIn(b"GET", got)
        self.assertNotIn(b"Mozilla", got)
        self.assertEqual(self.on_loop(lambda: [m.name for m in self.server.room.members]), ["ann"])
        log = self.log_text()
        self.assertIn(f"closed 127.0.0.1: a browser came to the room's port; the page is on port "
                      f"{self.server.web_address[1]}", log)
        self.assertNotIn('"GET', log)   # never named, never a member

    def test_what_counts_as_a_browser_request(self):
        for data in (b"GET / HTTP/1.1\r\nHost: x\r\n", b"POST /ws?x=1 HTTP/1.0\n", b"GET / HTTP/1.1"):
            self.assertTrue(pcr.browser_request(data), data)
        for data in (b"GET", b"GET\n", b"ann\n", b"GET / HTTP/1.1 is my name\n", b"get / http/1.1\r\n",
                     b"GET / HTTP"):
            self.assertFalse(pcr.browser_request(data), data)

    def test_an_alias_that_is_a_method_name_still_joins(self):
        self.start()
        self.member("GET")
        app = self.app("POST")
        app.wait_box("2 people are online...\n")

    def test_a_tls_hello_at_the_plain_rooms_port_is_never_a_member(self):
        self.start()
        c = self.connect()
        c.read_until(b"ALIAS")
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32))
        self.assert_closed_within(c, 4.0)
        self.assertEqual(self.on_loop(lambda: list(self.server.room.members)), [])

    def test_https_to_the_plain_page_port_is_closed_at_once(self):
        self.start()
        context = pcr.ssl.SSLContext(pcr.ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, pcr.ssl.CERT_NONE
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.server.web_address[1]), WAIT) as raw:
            raw.settimeout(3.0)
            with self.assertRaises((pcr.ssl.SSLError, ConnectionError)):
                context.wrap_socket(raw)
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertIn("a browser asked for https on the page's port; start with --https or "
                      "--tls-cert for https", self.log_text())


class RoomDoorTest(WebCase):
    """No wrong door (issue 31): the first bytes at the room's port choose its
    door, so a browser gets the page there; the App, which never speaks first,
    gets ALIAS once the wait is over; the page's port says where the room is."""

    REAL = pcr.Settings().door_wait   # the wait as it ships

    def page_request(self, port: int, path: str = "/") -> bytes:
        return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: text/html\r\n\r\n" % (
            path.encode(), port)

    def test_the_app_is_asked_for_its_alias_after_the_real_wait_within_0_3_s(self):
        self.assertLessEqual(self.REAL, 0.1)
        self.start(door_wait=self.REAL)
        t0 = time.monotonic()
        c = self.connect()
        self.assertEqual(c.recv_some(), b"ALIAS")
        self.assertGreater(time.monotonic() - t0, self.REAL / 2)   # it waited for a browser
        self.assertLess(time.monotonic() - t0, 0.3)
        t0 = time.monotonic()
        app = self.app("ann", char_time=0.001)   # the App's reader, as PROTOCOL.md tells it
        app.wait_box("1 person is online...\n")
        self.assertLess(app.reads[0][0] - t0, 0.3)
        self.assertEqual(app.reads[0][1], b"ALIAS")
        self.assert_app_shows_well(app)

    def test_a_client_that_speaks_first_is_asked_at_once_and_what_it_sent_is_its_name(self):
        self.start(door_wait=60.0)   # only what it sends can end the wait in time
        tom = self.connect()
        tom.send(b"tom\ntom: early bird\n")
        got = tom.read_until(b"tom: early bird\n")
        self.assertTrue(got.startswith(b"ALIAStom joined the chat...\n"), got)

    def test_a_browser_at_the_rooms_port_is_sent_on_to_the_page_at_once(self):
        self.start(door_wait=60.0)
        for host in ("127.0.0.1", "[::1]", "myroom.example"):   # the host it asked for, the page's port
            got = http_get(self.port, b"GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), self.port))
            self.assertTrue(got.startswith(b"HTTP/1.1 301 Moved Permanently\r\n"), got[:200])
            self.assertIn(b"\r\nLocation: http://%s:%d/\r\n" % (host.encode(), self.web), got)
            self.assertIn(b"\r\nCache-Control: max-age=600\r\n", got)   # kept a while: see _to_page_port
        self.assertEqual(self.on_loop(lambda: list(self.server.room.members)), [])

    def test_over_the_internet_the_redirect_goes_to_the_routers_port_for_the_page(self):
        self.start()
        self.on_loop(self.server.door.photos.heard_internet_page, "http://203.0.113.7:6061/")
        member = pcr.Member("93.184.216.34", "93.184.216.34", 0.0)   # a member from the internet
        member.transport = pcr.Transport(socket.socket(), self.server.loop)
        self.addCleanup(member.transport.sock.close)
        with mock.patch.object(self.server.door, "_answer") as answer:
            self.server.door._to_page_port(member, "203.0.113.7:5050")
        self.assertIn(("Location", "http://203.0.113.7:6061/"), answer.call_args.kwargs["headers"])

    def test_a_request_that_comes_in_pieces_is_still_a_browsers(self):
        self.start(door_wait=60.0)
        with socket.create_connection(("127.0.0.1", self.port), WAIT) as sock:
            request = self.page_request(self.port, "/room")
            sock.sendall(request[:7])   # "GET /ro"
            time.sleep(0.1)
            sock.sendall(request[7:])
            sock.settimeout(WAIT)
            got = b""
            while data := sock.recv(65536):
                got += data
        self.assertTrue(got.startswith(b"HTTP/1.1 200 OK\r\n"), got)
        self.assertTrue(got.endswith(b'{"port": %d}' % self.port), got)

    def test_the_pages_websocket_at_the_rooms_port_joins_the_room(self):
        self.start()
        tom = self.member("tom")
        wendy = WebMember(self.port, "wendy", origin=f"http://127.0.0.1:{self.port}")
        self.addCleanup(wendy.close)
        wendy.until("count", n=2)
        tom.read_until(b"wendy joined the chat...\n2 people are online...\n")
        tom.send(b"tom: hi wendy\n")
        self.assertEqual(wendy.until("chat", name="tom")["text"], "hi wendy")
        self.assertEqual(self.on_loop(lambda: self.server.room.snapshot()[1][3]), "web")

    def test_a_tls_hello_first_at_the_plain_rooms_port_is_closed_without_alias(self):
        self.start(door_wait=60.0)
        c = self.connect()
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32))
        t0 = time.monotonic()
        self.assertEqual(c.read_to_close(timeout=4.0), b"")
        self.assertLess(time.monotonic() - t0, 4.0)
        self.assertIn("it speaks TLS to a room that is not encrypted", self.log_text())

    def test_with_the_page_off_a_browser_at_the_rooms_port_is_told_so(self):
        self.start(web_port=None)
        got = http_get(self.port, self.page_request(self.port))
        self.assertTrue(got.startswith(b"HTTP/1.1 404 Not Found\r\n"), got)
        self.assertTrue(got.endswith(pcr.PAGE_IS_OFF.encode()), got)

    def test_the_pages_port_and_the_rooms_say_where_the_room_is(self):
        self.start()
        for port in (self.web, self.port):
            got = http_get(port, self.page_request(port, "/room"))
            self.assertEqual(pcr.http_reply(got), (200, b'{"port": %d}' % self.port))
            self.assertIn(b"Content-Type: application/json\r\n", got)

    def test_a_line_client_at_the_pages_port_is_told_the_rooms_port(self):
        self.start()
        c = Client(self.web)
        self.addCleanup(c.close)
        c.send(b"ann\n")
        self.assertEqual(c.read_to_close(), b"this port is the chat page's, for a browser; the App "
                                            b"and terminals join at port %d\n" % self.port)


class StopTest(ServerCase):

    def test_stop_lines_then_close(self):
        server = self.start()
        ann = self.member("ann")
        server.loop.call_soon_threadsafe(server.stop)
        got = ann.read_to_close()
        self.assertTrue(got.endswith(pcr.STOP_NOTICE.encode()), got)


class ChaosTest(ServerCase):
    """Random abuse while well-behaved members check every line."""

    def test_random_abuse_loses_nothing_for_good_members(self):
        rng = random.Random(1234)
        server = self.start(max_line=2000, max_backlog=256 * 1024, line_rate=200,
                            max_per_ip=1000, handshake_timeout=1.0)
        good = [self.member(f"good{i}") for i in range(3)]
        good[0].read_until(b"3 people are online...\n")
        per = 150
        want = {f"good{i}": per - 1 for i in range(3)}
        results, errors = {}, []

        def check(i, g):   # every good line once, in order, whatever else arrives
            seen = {name: -1 for name in want}
            deadline = time.monotonic() + 30
            try:
                while seen != want and time.monotonic() < deadline:
                    line = g.read_until(b"\n", timeout=30).decode("utf-8")
                    name, _, rest = line.partition(": ")
                    if name in seen:
                        if int(rest) != seen[name] + 1:
                            errors.append(f"good{i} got {line!r} after {seen[name]}")
                        seen[name] = int(rest)
            except Exception as e:
                errors.append(f"good{i}: {e}")
            results[i] = seen

        def chaos(seed):
            r = random.Random(seed)
            while not stop.is_set():
                try:
                    c = Client(self.port)
                    c.recv_some(0.5)
                    if r.random() < 0.8:     # else: never names itself
                        c.send(bytes(r.randrange(256) for _ in range(r.randrange(1, 40))))
                    for _ in range(r.randrange(0, 20)):
                        choice = r.random()
                        if choice < 0.3:
                            c.send(bytes(r.randrange(256) for _ in range(r.randrange(1, 300))))
                        elif choice < 0.5:
                            c.send(b"x" * r.randrange(1000, 5000))
                        elif choice < 0.7:
                            c.send(b"burst\n" * r.randrange(1, 100))
                        else:
                            c.send(b"\n")
                    c.reset() if r.random() < 0.5 else c.close()
                except OSError:
                    pass

        stop = threading.Event()
        checkers = [threading.Thread(target=check, args=(i, g), daemon=True) for i, g in enumerate(good)]
        vandals = [threading.Thread(target=chaos, args=(rng.random(),), daemon=True) for _ in range(4)]
        for t in checkers + vandals:
            t.start()
        for k in range(per):
            for i, g in enumerate(good):
                g.send(f"good{i}: {k}\n".encode())
            time.sleep(0.01)
        for t in checkers:
            t.join(40)
        stop.set()
        for t in vandals:
            t.join(WAIT)
        self.assertEqual(errors, [])
        self.assertEqual(results, {i: want for i in range(3)})
        sizes = self.on_loop(lambda: (
            len(server.terminals.stream.buf),
            max((len(m.transport.inbuf) for m in server.connections), default=0),
            max((len(m.transport.inbuf) - m.transport.inbuf.rfind(b"\n") - 1
                 for m in server.connections), default=0)))
        self.assertLess(sizes[0], 256 * 1024 + pcr.READ_SIZE)
        self.assertLessEqual(sizes[1], pcr.READ_SIZE + 2002)   # one read and one line waiting their turn
        self.assertLessEqual(sizes[2], 2002)                    # bytes without a newline


class TlsTest(ServerCase):
    """--tls-cert/--tls-key: TLS 1.2+, handshake inside the loop."""

    @classmethod
    def setUpClass(cls):
        if pcr.ssl is None:
            raise unittest.SkipTest("no ssl module")
        cls.dir = tempfile.mkdtemp()
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.cert, cls.key = make_certificate(cls.dir)

    def start(self, **overrides):
        return super().start(tls_cert=self.cert, tls_key=self.key, **overrides)

    def tls_member(self, alias: str) -> Client:
        import ssl
        context = ssl.create_default_context(cafile=self.cert)
        c = Client.__new__(Client)
        raw = socket.create_connection(("127.0.0.1", self.port), WAIT)
        c.sock = context.wrap_socket(raw, server_hostname="localhost")
        c.buf, c.reads = b"", []
        self.addCleanup(c.close)
        return c.join(alias)

    def test_round_trip_over_tls(self):
        self.start()
        ann, bob = self.tls_member("ann"), self.tls_member("bob")
        ann.read_until(b"2 people are online...\n")
        bob.send(b"bob: over TLS\n")
        ann.read_until(b"bob: over TLS\n")
        self.assertEqual(ann.sock.version() in ("TLSv1.2", "TLSv1.3"), True)

    def test_a_browser_at_the_encrypted_rooms_port_is_sent_to_the_page_over_https(self):
        self.start(door_wait=60.0, web_port=0)   # its request, after the handshake, chooses the page
        import ssl
        context = ssl.create_default_context(cafile=self.cert)
        with urllib.request.urlopen(f"https://localhost:{self.port}/", timeout=WAIT,
                                    context=context) as reply:   # sent on to the page's port
            self.assertEqual(reply.url, f"https://localhost:{self.server.web_address[1]}/")
            self.assertEqual(reply.read(), pcr.PAGE_HTML.encode())

    def test_plain_client_on_a_tls_port_is_closed_and_logged(self):
        self.start()
        c = self.connect()
        c.send(b"ann\nann: hello\n")
        c.read_to_close()
        self.tls_member("ok")   # the server is still fine
        self.assertIn("TLS handshake failed", self.log_text())

    def test_stalled_tls_handshake_does_not_block_others(self):
        self.start(handshake_timeout=8.0)
        stuck = self.connect()
        stuck.send(b"\x16\x03\x01")   # the start of a ClientHello, then nothing
        t0 = time.monotonic()
        self.tls_member("ann")
        self.assertLess(time.monotonic() - t0, 6.0)   # not after the stuck one's time-out
        stuck.read_to_close(timeout=8.0 + WAIT)

    def test_tls_1_1_is_refused(self):
        import ssl
        self.start()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ValueError, ssl.SSLError):
            self.skipTest("this OpenSSL cannot even offer TLS 1.1")
        raw = socket.create_connection(("127.0.0.1", self.port), WAIT)
        with self.assertRaises((ssl.SSLError, OSError)):
            context.wrap_socket(raw).recv(5)
        raw.close()

    def test_bad_certificate_is_one_clear_sentence(self):
        with self.assertRaises(pcr.StartError) as e:
            super().start(tls_cert=os.path.join(self.dir, "missing.pem"))
        self.assertIn("Cannot read", str(e.exception))
        self.assertIn("missing.pem (No such file or directory)", str(e.exception))


class HttpsDoorTest(WebCase):
    """--https on the page's port: TLS with the certificate in place, or plain http,
    told apart by the first byte; the CA's http-01 answers; https for members from
    outside (308); a new certificate for new connections, nobody dropped."""

    @classmethod
    def setUpClass(cls):
        cls.certificates = class_certificates(cls, 2)

    def start(self, **overrides):
        return super().start(https=True, **overrides)

    def certify(self, n: int = 0) -> None:
        context = pcr.tls_context(*self.certificates[n])
        self.on_loop(self.server.door.secure.certified, context, "127.0.0.1")

    def client(self, n: int = 0):
        return pcr.ssl.create_default_context(cafile=self.certificates[n][0])

    def https(self, request: bytes, n: int = 0) -> tuple[bytes, bytes]:
        """(the certificate the page's port showed, what it answered) over TLS."""
        with socket.create_connection(("127.0.0.1", self.web), WAIT) as raw, \
                self.client(n).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            shown = tls.getpeercert(binary_form=True)
            tls.sendall(request)
            got = b""
            while data := tls.recv(65536):
                got += data
            return shown, got

    def get(self, path: str = "/", host: str = "") -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{self.web}'}\r\n\r\n").encode()

    def test_one_port_serves_https_and_http_and_the_rooms_port_stays_plain(self):
        self.start()
        self.assertTrue(http_get(self.web, self.get()).startswith(b"HTTP/1.1 200 OK"))
        with self.assertRaises((pcr.ssl.SSLError, OSError)):   # before its certificate: http alone
            self.https(self.get())
        self.wait_on_loop(lambda: "its certificate is not in place yet" in self.log_text(), "log")
        self.certify()
        shown, page = self.https(self.get())
        self.assertTrue(page.startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(pcr.PAGE_HTML.encode()[:200], page)
        self.assertTrue(http_get(self.web, self.get()).startswith(b"HTTP/1.1 200 OK"))   # same network
        tom = self.member("tom")   # the App's port speaks no TLS
        wendy = WebMember(self.web, "wendy", origin=f"https://127.0.0.1:{self.web}",
                          secure=self.client())
        self.addCleanup(wendy.close)
        wendy.until("count", n=2)
        tom.send(b"over https, wendy?\n")
        wendy.until("chat", name="tom", text="over https, wendy?")
        wendy.ws.send("yes")
        tom.read_until(b"wendy: yes\n")

    def test_the_cas_look_is_answered_over_http_while_it_is_asked(self):
        self.start()
        path = f"{pcr.ACME_CHALLENGE}tok3n_-A"
        self.on_loop(self.server.door.secure.answer, "tok3n_-A", "tok3n_-A.thumbprint")
        answer = http_get(self.web, self.get(path))
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(answer.endswith(b"\r\n\r\ntok3n_-A.thumbprint"))
        self.assertIn(b"404", http_get(self.web, self.get(f"{pcr.ACME_CHALLENGE}other")).split(b"\r\n")[0])
        self.on_loop(self.server.door.secure.answer, "tok3n_-A", None)
        self.assertIn(b"404", http_get(self.web, self.get(path)).split(b"\r\n")[0])

    def test_a_member_from_outside_is_sent_to_https_but_the_cas_look_is_not(self):
        self.start()
        self.on_loop(self.server.door.secure.answer, "tok", "tok.thumb")
        with mock.patch.object(pcr.SecurePage, "outside", staticmethod(lambda m: True)):
            self.assertTrue(http_get(self.web, self.get()).startswith(b"HTTP/1.1 200"))   # no certificate yet
            self.certify()
            for host, location in ((f"11.0.0.1:5051", "https://127.0.0.1:5051/p/x.jpg?a=1"),
                                   ("11.0.0.1", f"https://127.0.0.1:{self.web}/p/x.jpg?a=1")):
                with self.subTest(host=host):
                    moved = http_get(self.web, self.get("/p/x.jpg?a=1", host)).decode()
                    self.assertTrue(moved.startswith("HTTP/1.1 308 Permanent Redirect\r\n"), moved)
                    self.assertIn(f"\r\nLocation: {location}\r\n", moved)
            at_the_rooms = http_get(self.port, self.get("/", f"11.0.0.1:{self.port}")).decode()
            self.assertIn(f"\r\nLocation: https://127.0.0.1:{self.web}/\r\n", at_the_rooms)   # not 5050
            self.assertTrue(http_get(self.web, self.get(f"{pcr.ACME_CHALLENGE}tok")).endswith(b"tok.thumb"))
            self.assertTrue(self.https(self.get())[1].startswith(b"HTTP/1.1 200 OK"))   # already https
            bent = http_get(self.web, b"GET /a\nSet-Cookie:x HTTP/1.1\r\nHost: h:1\r\n\r\n").decode()
            self.assertIn("\r\nLocation: https://127.0.0.1:1/\r\n", bent)   # nothing of it in a header
            self.on_loop(self.server.door.secure.certified, None, None)   # it ran out, say
            self.assertTrue(http_get(self.web, self.get()).startswith(b"HTTP/1.1 200 OK"))

    def test_outside_is_a_global_address_not_in_this_machines_ipv6_network(self):
        def member(ip: str, here: str):
            sock = mock.Mock()
            sock.getsockname.return_value = (here, 5051)
            return mock.Mock(ip=ip, transport=mock.Mock(sock=sock))
        outside = pcr.SecurePage.outside
        self.assertTrue(outside(member("11.0.0.2", "192.168.77.20")))
        self.assertFalse(outside(member("192.168.77.30", "192.168.77.20")))
        self.assertFalse(outside(member("127.0.0.1", "127.0.0.1")))
        self.assertFalse(outside(member("100.64.1.2", "192.168.77.20")))   # a carrier's own
        self.assertFalse(outside(member("2a0f:77::30", "2a0f:77::20")))     # the same /64: home
        self.assertTrue(outside(member("2a0f:78::30", "2a0f:77::20")))

    def test_a_new_certificate_reaches_new_connections_and_nobody_is_dropped(self):
        self.start()
        self.certify(0)
        tom = self.member("tom")
        wendy = WebMember(self.web, "wendy", origin=f"https://127.0.0.1:{self.web}",
                          secure=self.client(0))
        self.addCleanup(wendy.close)
        wendy.until("count", n=2)
        first = self.https(self.get(), 0)[0]
        self.certify(1)
        second = self.https(self.get(), 1)[0]
        self.assertNotEqual(first, second)
        with open(self.certificates[1][0]) as f:
            self.assertEqual(second, pcr.pem_blocks(f.read(), "CERTIFICATE")[0])
        tom.send(b"still there?\n")
        wendy.until("chat", name="tom", text="still there?")
        wendy.ws.send("yes, on the old one")
        tom.read_until(b"wendy: yes, on the old one\n")


class WebPageTest(WebCase):
    """--web-port: the page, its WebSocket, and web members like any other (issue 12)."""

    # -- HTTP -------------------------------------------------------------------
    def test_the_page_comes_with_its_security_headers(self):
        self.start()
        got = http_get(self.web, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.web}\r\n\r\n".encode())
        head, _, body = got.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"), head)
        self.assertEqual(body, pcr.PAGE_HTML.encode())
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
        self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
        self.assertEqual(headers["Referrer-Policy"], "no-referrer")
        csp = headers["Content-Security-Policy"]
        self.assertIn("default-src 'none'", csp)
        self.assertIn(f"ws://127.0.0.1:{self.web}", csp)
        for tag in ("script", "style"):
            code = re.search(rf"<{tag}>(.*?)</{tag}>", pcr.PAGE_HTML, re.S).group(1)
            digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
            self.assertIn(f"{tag}-src 'sha256-{digest}'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertNotRegex(pcr.PAGE_HTML, r"(?i)\b(src|href)\s*=\s*[\"']?(https?:|//)|\son[a-z]+=")

    def test_anything_else_is_refused_with_the_right_status(self):
        self.start()
        for request, status in ((b"GET /secret HTTP/1.1\r\nHost: a\r\n\r\n", b"404"),
                                (b"POST / HTTP/1.1\r\nHost: a\r\n\r\n", b"405"),
                                (b"GET / HTTP/1.1\r\n\r\n", b"400"),
                                (b"hello\r\n\r\n", b"400"),
                                (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 9000 + b"\r\n\r\n", b"431"),
                                (b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n", b"400")):
            with self.subTest(request=request[:30]):
                self.assertTrue(http_get(self.web, request).startswith(b"HTTP/1.1 " + status))
        self.member("ann")   # none of it cost the room anything

    def test_a_socket_opened_by_another_sites_page_is_refused(self):
        self.start()
        sock, got = raw_upgrade(self.web, "Origin: http://evil.example\r\n")
        sock.close()
        self.assertTrue(got.startswith(b"HTTP/1.1 403"), got)
        ok = self.web_member("ann", origin=f"http://127.0.0.1:{self.web}")
        ok.until("welcome", name="ann")

    # -- members ------------------------------------------------------------------
    def test_a_web_member_chats_with_a_terminal_member(self):
        self.start()
        tom = self.member("tom")
        wendy = self.web_member("wendy")
        self.assertEqual(wendy.hello, {"type": "hello", "key": False, "max_line": 4096, "photos": True,
                                       "edit_window": 900})
        self.assertEqual(wendy.until("welcome")["name"], "wendy")
        wendy.until("join", names=["wendy"])
        self.assertEqual(wendy.until("count")["n"], 2)
        tom.read_until(b"wendy joined the chat...\n2 people are online...\n")
        tom.send(b"tom: hi <b>wendy</b>\n")
        self.assertEqual(wendy.until("chat")["text"], "hi <b>wendy</b>")
        wendy.ws.send("hello tom\nand again")
        tom.read_until(b"wendy: hello tom\nwendy: and again\n")
        wendy.ws.send("/who")
        self.assertEqual(wendy.until("who")["names"], ["tom", "wendy"])
        wendy.close()
        tom.read_until(b"wendy has left the chat...\n1 person is online...\n")
        log = self.log_text()
        self.assertIn('joined: "wendy" (web) from 127.0.0.1', log)
        self.assertNotIn("hello tom", log)

    def test_names_are_the_rooms_for_web_members_too(self):
        self.start()
        self.member("ann")
        twin = self.web_member("\u0430nn")   # a Cyrillic а
        self.assertEqual(twin.until("welcome")["name"], "\u0430nn (2)")
        self.assertIn("the room knows you as", twin.until("note")["text"])

    def test_a_wrong_key_is_refused_with_its_sentence(self):
        self.start(room_key="s3cret-K")
        guess = self.web_member("wendy#nope")
        self.assertTrue(guess.hello["key"])
        refusal = guess.until("refused")["text"]
        self.assertIn("that room key is wrong", refusal)
        self.assertNotIn("#KEY", refusal)
        self.assertEqual(guess.close_code(), pcr.WS_POLICY)
        right = self.web_member("wendy#s3cret-K")
        self.assertEqual(right.until("welcome")["name"], "wendy")

    def test_a_full_room_tells_the_page_why(self):
        self.start(max_clients=1)
        self.member("ann")
        late = self.web_member(None)
        self.assertIn("the room is full", late.until("refused")["text"])
        self.assertEqual(late.close_code(), pcr.WS_TRY_LATER)

    def test_the_host_can_disconnect_a_web_member(self):
        server = self.start()
        wendy = self.web_member("wendy")
        wendy.until("count")
        self.assertEqual(self.on_loop(server.room.snapshot)[0][3], "web")
        self.assertTrue(self.on_loop(server.disconnect, "wendy"))
        self.assertIn("disconnected by the host", wendy.until("note")["text"])
        self.assertEqual(wendy.close_code(), pcr.WS_POLICY)

    def test_a_server_stop_says_so_and_closes_going_away(self):
        server = self.start()
        wendy = self.web_member("wendy")
        wendy.until("count")
        server.loop.call_soon_threadsafe(server.stop)
        wendy.until("stop")
        self.assertEqual(wendy.close_code(), pcr.WS_GOING_AWAY)

    def test_pings_are_answered(self):
        self.start()
        wendy = self.web_member("wendy")
        wendy.until("count")
        self.assertTrue(wendy.ws.ping(b"are you there").wait(WAIT))

    def test_a_page_that_never_answers_a_ping_leaves_and_one_that_answers_stays(self):
        self.start(web_ping=0.3, web_grace=0)
        ann = self.member("ann")
        wendy = self.web_member("wendy")   # the websockets package answers pings
        sock, got = raw_upgrade(self.web)   # a page whose connection is gone: it answers nothing
        self.addCleanup(sock.close)
        self.assertTrue(got.startswith(b"HTTP/1.1 101"), got)
        sock.sendall(WebSocketFramesTest.masked(b"ghost"))
        ann.read_until(b"ghost joined the chat...\n")
        started = time.monotonic()
        ann.read_until(b"ghost has left the chat...\n")
        self.assertLess(time.monotonic() - started, 0.3 * 2 + 2.0)
        self.assertIn("no answer to a ping", self.log_text())
        wendy.until("leave", name="ghost")
        time.sleep(1.0)   # more pings go by: wendy answers them
        ann.send(b"/who\n")
        ann.read_until(b"in the room now (2): ann, wendy\n")

    def test_bad_frames_close_with_the_rfcs_codes_and_cost_the_room_nothing(self):
        self.start(max_line=100)
        ann = self.member("ann")
        mask = b"\x01\x02\x03\x04"

        def masked(opcode: int, payload: bytes) -> bytes:
            return (bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
                    + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        for frames, code in ((b"\x81\x02hi", pcr.WS_PROTOCOL_ERROR),          # not masked
                             (masked(0x2, b"\x00\x01"), pcr.WS_UNSUPPORTED),  # binary
                             (masked(0x1, b"caf\xc3"), pcr.WS_BAD_DATA),      # not UTF-8
                             (masked(0x1, b"x" * 101), pcr.WS_TOO_BIG),
                             (masked(0x1, b"bob") + masked(0x1, b"x" * 101), pcr.WS_TOO_BIG)):
            with self.subTest(code=code):
                sock, got = raw_upgrade(self.web)
                self.assertTrue(got.startswith(b"HTTP/1.1 101"), got)
                sock.sendall(frames)
                closing = b""
                while data := sock.recv(4096):
                    closing += data
                sock.close()
                at = closing.rindex(b"\x88")
                self.assertEqual(int.from_bytes(closing[at + 2:at + 4], "big"), code, closing)
        ann.send(b"ann: still here\n")
        ann.read_until(b"ann: still here\n")

    def test_a_web_member_is_rate_limited_like_any_member(self):
        self.start(line_rate=5)
        tom = self.member("tom")
        wendy = self.web_member("wendy")
        wendy.until("count")
        t0 = time.monotonic()
        for k in range(30):
            wendy.ws.send(f"line {k}")
        tom.read_until(b"wendy: line 29\n", timeout=10)
        self.assertGreater(time.monotonic() - t0, (30 - 10) / 5 - 0.5)   # 10 at once, then 5 a second

    def test_the_page_and_its_socket_over_tls(self):
        if pcr.ssl is None:
            self.skipTest("no ssl module")
        import ssl
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        cert, key = make_certificate(directory)
        self.start(tls_cert=cert, tls_key=key)
        context = ssl.create_default_context(cafile=cert)
        with socket.create_connection(("127.0.0.1", self.web), WAIT) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            self.assertTrue(tls.recv(100).startswith(b"HTTP/1.1 200 OK"))
        # websockets' asyncio client: its threaded one reads and writes one TLS
        # connection from two threads at once, and now and then loses its request
        from websockets.asyncio.client import connect

        async def join() -> dict:
            async with connect(f"wss://127.0.0.1:{self.web}/ws", ssl=context,
                               server_hostname="localhost", open_timeout=WAIT,
                               origin=f"https://127.0.0.1:{self.web}") as ws:
                self.assertEqual(json.loads(await ws.recv())["type"], "hello")
                await ws.send("wendy")
                while (message := json.loads(await ws.recv()))["type"] != "welcome":
                    pass
                return message
        self.assertEqual(asyncio.run(asyncio.wait_for(join(), WAIT))["name"], "wendy")


class HostWebTest(WebCase):
    """The page's members on a first evening: long messages, keys (issue 27)."""

    def test_an_over_long_message_gets_the_note_and_costs_no_seat(self):
        self.start(max_line=100)
        tom = self.member("tom")
        wendy = self.web_member("wendy")
        wendy.until("welcome")
        tom.read_until(b"wendy joined the chat...\n")
        wendy.ws.send("x" * 5000)
        self.assertIn("longer than 100 bytes", wendy.until("note")["text"])
        wendy.ws.send("still here")
        got = tom.read_until(b"wendy: still here\n")
        self.assertNotIn(b"left", got)
        self.assertNotIn(b"joined", got)
        self.assertNotIn(b"xxxx", got)
        self.assertIn("wendy", self.on_loop(lambda: [m.name for m in self.server.room.members]))

    def test_an_over_long_name_still_closes_the_socket(self):
        self.start(max_line=100)
        wendy = self.web_member(None)
        wendy.ws.send("x" * 5000)
        self.assertEqual(wendy.close_code(), pcr.WS_TOO_BIG)

    def test_a_page_without_the_key_is_never_told_to_type_name_hash_key(self):
        self.start(room_key="s3cret-K")
        refusal = self.web_member("wendy").until("refused")["text"]
        self.assertIn("this room needs a key", refusal)
        self.assertNotIn("#", refusal)


class StrictWebSocketTest(WebCase):
    """RFC 6455 as a strict endpoint keeps it (issue 24): each case closes
    with its code at once, and then the TCP connection."""

    masked = staticmethod(WebSocketFramesTest.masked)

    def setUp(self):   # raw sockets: no websockets package needed
        pass

    def close_after(self, *frames: bytes, then: tuple[bytes, bytes] = (b"", b"")
                    ) -> tuple[int, list[tuple[int, bytes]]]:
        """Send these frames on a fresh WebSocket (and once what the server
        sent holds then[0], then[1]); the server's close code, and every frame
        it sent, once it has closed the TCP connection."""
        sock, got = raw_upgrade(self.web)
        self.addCleanup(sock.close)
        self.assertTrue(got.startswith(b"HTTP/1.1 101"), got)
        got = got.partition(b"\r\n\r\n")[2]
        sock.sendall(b"".join(frames))
        deadline = time.monotonic() + WAIT
        while True:
            if then[0] and then[0] in got:
                sock.sendall(then[1])
                then = (b"", b"")
            self.assertLess(time.monotonic(), deadline, f"the TCP connection stays open: {got[-200:]!r}")
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                break
            got += data
        frames = server_frames(got)
        closes = [payload for opcode, payload in frames if opcode == pcr.WS_CLOSE]
        self.assertEqual(len(closes), 1, frames)
        self.assertEqual(frames[-1][0], pcr.WS_CLOSE)
        return struct.unpack("!H", closes[0][:2])[0], frames

    def test_every_reserved_opcode_closes_with_1002(self):
        self.start()
        for opcode in (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF):
            with self.subTest(opcode=hex(opcode)):
                code, _ = self.close_after(self.masked(b"x", opcode))
                self.assertEqual(code, pcr.WS_PROTOCOL_ERROR)
        self.member("ann")   # and the room goes on

    def test_bad_utf_8_in_a_single_frame_closes_with_1007(self):
        self.start()
        code, _ = self.close_after(self.masked(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"))
        self.assertEqual(code, pcr.WS_BAD_DATA)

    def test_bad_utf_8_in_a_middle_fragment_closes_at_once_without_the_last(self):
        self.start()
        code, _ = self.close_after(self.masked(b"hello ", fin=False),
                                   self.masked(b"w\xf4\x90\x80\x80rld", 0x0, fin=False))
        self.assertEqual(code, pcr.WS_BAD_DATA)

    def test_bad_utf_8_closes_at_once_even_before_the_rest_of_its_frame(self):
        self.start()
        frame = self.masked(b"name \xed\xa0\x80" + b"x" * 40)
        code, _ = self.close_after(frame[:2 + 4 + 12])   # the frame's last 36 bytes never come
        self.assertEqual(code, pcr.WS_BAD_DATA)

    def test_bad_utf_8_in_the_first_fragment_closes_at_once(self):
        self.start()
        code, _ = self.close_after(self.masked(b"\xc0\xafname", fin=False))
        self.assertEqual(code, pcr.WS_BAD_DATA)

    def test_a_character_split_across_fragments_is_good_text(self):
        self.start()
        kappa = "\u03ba".encode()
        code, frames = self.close_after(self.masked(b"an" + kappa[:1], fin=False),
                                        self.masked(kappa[1:] + b"a", 0x0),
                                        then=(b'"welcome"', self.masked(b"\x03\xe8", pcr.WS_CLOSE)))
        self.assertEqual(code, pcr.WS_NORMAL)
        self.assertIn({"type": "welcome", "name": "an\u03baa"},
                      [{k: v for k, v in json.loads(p).items() if k in ("type", "name")}
                       for opcode, p in frames if opcode == pcr.WS_TEXT])

    def test_a_close_for_a_broken_protocol_says_why_in_a_sentence(self):
        """1002, 1003, 1007, 1009 and 1011 each close with a short sentence as the
        reason (QA finding 14: they came with none), and a binary message over
        --max-line before the name closes with 1009, as a text does (it was 1003)."""
        self.start(max_line=100)
        for frames, code, words in (
                ((self.masked(b"x", 0x3),), pcr.WS_PROTOCOL_ERROR, "reserved opcode 0x3"),
                ((self.masked(b"abc", pcr.WS_BINARY),), pcr.WS_UNSUPPORTED, "binary messages"),
                ((self.masked(b"\xff\xfe"),), pcr.WS_BAD_DATA, "not UTF-8"),
                ((self.masked(b"x" * 500),), pcr.WS_TOO_BIG, "over 100 bytes before the name"),
                ((self.masked(b"x" * 500, pcr.WS_BINARY),), pcr.WS_TOO_BIG, "over 100 bytes before the name"),
                ((self.masked(b"ann"),), pcr.WS_BAD_DATA, "not UTF-8")):   # in the room: then bad text
            with self.subTest(code=code, words=words):
                closed, sent = self.close_after(*frames, then=(b'"welcome"', self.masked(b"\xff")))
                reason = [p for opcode, p in sent if opcode == pcr.WS_CLOSE][0][2:].decode()
                self.assertEqual(closed, code)
                self.assertIn(words, reason)
                self.assertTrue(reason.endswith("; reload the page"), reason)
                self.assertLessEqual(len(reason.encode()), 123)
                told = json.loads([p for opcode, p in sent if opcode == pcr.WS_TEXT][-1])   # first, as an event
                in_room = frames == (self.masked(b"ann"),)
                self.assertEqual((told["type"], told["text"]), ("note" if in_room else "refused", reason))
        with mock.patch.object(self.server.door, "act", side_effect=RuntimeError("a bug")):
            closed, sent = self.close_after(self.masked(b"bob"), then=(b'"welcome"', self.masked(b'\x00{"act": "typing"}')))
        reason = [p for opcode, p in sent if opcode == pcr.WS_CLOSE][0][2:].decode()
        self.assertEqual((closed, reason), (pcr.WS_INTERNAL, pcr.INTERNAL_ERROR.strip()))
        self.member("cy")   # and the room goes on

    def test_the_frame_reader_checks_text_fragment_by_fragment(self):
        reader = pcr.FrameReader(100)
        self.assertEqual(reader.feed(self.masked(b"\xe2\x82", fin=False)), [])
        with self.assertRaises(pcr.WsError) as e:   # the text ends inside a character
            reader.feed(self.masked(b"", 0x0))
        self.assertEqual(e.exception.code, pcr.WS_BAD_DATA)
        reader = pcr.FrameReader(100)
        self.assertEqual(reader.feed(self.masked(b"\xe2", fin=False) + self.masked(b"\x82", 0x0, fin=False)
                                     + self.masked(b"\xac!", 0x0)), [(pcr.WS_TEXT, "\u20ac!".encode())])
        self.assertEqual(reader.feed(self.masked(b"\xff\xfe", pcr.WS_BINARY)), [(pcr.WS_BINARY, b"\xff\xfe")])
        self.assertEqual(reader.feed(self.masked(b"ok")), [(pcr.WS_TEXT, b"ok")])

    def test_bad_utf_8_is_refused_before_the_rest_of_its_frame_comes(self):
        frame = self.masked("\u03ba\u1f79\u03c3".encode() + b"\xf4\x90\x80\x80" + b"x" * 50)
        with self.assertRaises(pcr.WsError) as e:
            pcr.FrameReader(100).feed(frame[:2 + 4 + 10])
        self.assertEqual(e.exception.code, pcr.WS_BAD_DATA)
        text = "\u00e9\u65e5\U0001f44b and more ".encode() * 3
        for mask in (b"\x00\x00\x00\x00", b"\x37\xfa\x21\x3d", b"\xff\x01\x80\x7f"):
            reader, got = pcr.FrameReader(1000), []
            data = self.masked(text[:40], fin=False, mask=mask) + self.masked(text[40:], 0x0, mask=mask)
            for byte in data:   # every cut, inside characters and inside the mask's cycle
                got += reader.feed(bytes([byte]))
            self.assertEqual(got, [(pcr.WS_TEXT, text)], mask)


class ControlFrameFloodTest(WebCase):
    """Pings and pongs cannot flood the room (QA finding 3): before a name, a
    page that never reads what it asks for is closed once the server keeps
    64 KiB for it; pings are answered with one pong for the most recent of
    those read together (RFC 6455 §5.5.3), and each ping or pong is taken
    from the line rate (before a name, its address's), so a flood waits as a
    flood of lines does."""

    masked = staticmethod(WebSocketFramesTest.masked)

    def setUp(self):   # raw sockets: no websockets package needed
        pass

    def test_a_page_that_pings_before_its_name_and_never_reads_is_closed_at_64_kib_kept(self):
        server = self.start(line_rate=0)   # no rate: the cap alone holds it
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", self.web))
        sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.web}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        page = lambda: [m for m in server.connections if m.transport.frame_reader is not None]
        self.wait_on_loop(page, "the page's WebSocket")
        self.on_loop(lambda: page()[0].transport.sock.setsockopt(   # the kernel keeps little
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096))
        pings, most = self.masked(b"p" * 125, pcr.WS_PING) * 500, 0
        deadline = time.monotonic() + WAIT * 4
        while True:
            try:
                sock.sendall(pings)
            except OSError:   # closed by the server
                break
            kept = self.on_loop(lambda: [len(m.transport.out) for m in page()])
            if not kept:
                break
            most = max(most, kept[0])
            self.assertLessEqual(most, (64 << 10) + 127, "kept without bound for a page that reads nothing")
            self.assertLess(time.monotonic(), deadline, f"still open, {most} bytes kept")
        self.wait_on_loop(lambda: not page(), "the page closed")
        self.assertGreater(most, 32 << 10)   # it was closed for what it made the server keep
        self.member("ann")   # the room goes on

    def test_pings_read_together_get_one_pong_for_the_most_recent(self):
        self.start(line_rate=0)   # no rate: all read at once
        sock, got = raw_upgrade(self.web)
        self.addCleanup(sock.close)
        got = got.partition(b"\r\n\r\n")[2]
        sock.sendall(b"".join(self.masked(b"%d" % i, pcr.WS_PING) for i in range(600))
                     + self.masked(b"wendy"))   # 5.4 KB: two reads, or a few
        while b'"welcome"' not in got:   # after every pong
            data = sock.recv(65536)
            self.assertTrue(data, "closed before its welcome")
            got += data
        pongs = [payload for opcode, payload in server_frames(got) if opcode == pcr.WS_PONG]
        self.assertTrue(1 <= len(pongs) <= 6, pongs)   # one a read, not one a ping
        self.assertEqual(pongs[-1], b"599")

    def test_pings_before_a_name_are_taken_from_the_address_line_rate(self):
        server = self.start(line_rate=10)   # an address: a burst of 80, then 40 a second
        sock, got = raw_upgrade(self.web)
        self.addCleanup(sock.close)
        sock.sendall(self.masked(b"", pcr.WS_PING) * 100)
        self.wait_on_loop(lambda: [m for m in server.connections if m.stage is pcr.Stage.NAMING
                                   and not m.transport.reading], "the page held back")
        sock.sendall(self.masked(b"wendy"))   # read after the pings, when the rate allows
        while b'"welcome"' not in got:
            data = sock.recv(65536)
            self.assertTrue(data, "closed before its welcome")
            got += data

    def test_pings_and_pongs_in_the_room_are_taken_from_the_line_rate(self):
        server = self.start(line_rate=10)   # a burst of 20, then 10 a second
        tom = self.member("tom")
        page = RawPage(self, self.web, "wendy")
        for opcode in (pcr.WS_PING, pcr.WS_PONG):
            with self.subTest(opcode=opcode):
                page.sock.sendall(self.masked(b"", opcode) * 40)   # 20 at once, 20 in 2 s
                self.wait_on_loop(lambda: [m for m in server.connections if m.name == "wendy"
                                           and not m.transport.reading], "the page held back")
                page.send(b"after the flood")   # comes after them, when its rate allows
                tom.read_until(b"wendy: after the flood\n", timeout=WAIT * 2)


class LogFloodTest(WebCase):
    """The log cannot be flooded away (QA finding 4): what a page or a
    member can repeat (a request for a seat nested past Python's limit, a
    message over --max-line) is logged once and summed up, without a
    traceback, and a page is told in a sentence why it was closed."""

    masked = staticmethod(WebSocketFramesTest.masked)

    def setUp(self):   # raw sockets: no websockets package needed
        pass

    def closed_after(self, frame: bytes) -> list[tuple[int, bytes]]:
        """Every frame the server sends a fresh WebSocket after `frame`, until it closes the connection."""
        sock, got = raw_upgrade(self.web)
        self.addCleanup(sock.close)
        got = got.partition(b"\r\n\r\n")[2]
        sock.sendall(frame)
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                got += data
        return server_frames(got)

    def test_nested_requests_for_a_seat_close_with_1003_and_a_sentence_and_are_summed(self):
        server = self.start()
        before = len(self.log_text().splitlines())
        for _ in range(30):
            frames = self.closed_after(self.masked(b"[" * 4000, pcr.WS_BINARY))
            self.assertEqual(frames[-1][0], pcr.WS_CLOSE, frames)
            code, reason = struct.unpack("!H", frames[-1][1][:2])[0], frames[-1][1][2:].decode()
            self.assertEqual(code, pcr.WS_UNSUPPORTED)
            said = [json.loads(p) for opcode, p in frames if opcode == pcr.WS_TEXT]
            self.assertTrue(reason.strip(), "a close with no reason")   # said first, as the refusal
            self.assertEqual([e["text"] for e in said if e["type"] == "refused"], [reason])
        log = self.log_text()
        self.assertNotIn("RecursionError", log)
        self.assertNotIn("internal error", log)
        self.assertLessEqual(len(log.splitlines()) - before, 2, log.splitlines()[before:])
        self.assertIn("(29 more times in", self.stopped_log(server, "more times in"))

    def test_messages_over_max_line_from_a_page_are_summed_in_the_log(self):
        server = self.start(max_line=100)
        page = RawPage(self, self.web, "wendy")
        for _ in range(200):
            page.send(b"x" * 101)
        page.send(b"still here")
        while page.until("chat").get("text") != "still here":
            pass
        told = [line for line in self.log_text().splitlines() if "sent a line over" in line]
        self.assertEqual(len(told), 1, told[:5])
        self.assertIn('"wendy" sent a line over 100 bytes; not relayed (199 more times in',
                      self.stopped_log(server, "(199 more times"))


class CloseMeaningTest(WebCase):
    """What a page's closing means (issue 26): only a close with 1000 (or no
    code) is a leave; any other close, or none, is away and keeps the seat;
    and a page not given its seat back hears truthfully why."""

    settings = {"web_port": 0, "web_grace": 60.0}

    def stage(self, name: str) -> "pcr.Stage | None":
        return self.on_loop(stage_of, self.server, name)

    def test_only_1000_is_a_leave(self):
        self.assertTrue(pcr.ws_close_is_leave(pcr.WS_NORMAL))
        self.assertEqual(pcr.ws_close_code(b""), pcr.WS_NORMAL)   # no code: the same goodbye
        for code in (1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4000, 4999):
            self.assertFalse(pcr.ws_close_is_leave(code), code)

    def test_a_close_with_1000_is_a_leave_at_once_and_ends_the_seat(self):
        wendy, tom = self.wendy_and_tom()
        token, seen = wendy.token, wendy.seen
        wendy.ws.close(1000)
        tom.read_until(b"wendy has left the chat...\n1 person is online...\n", timeout=1.0)
        page = self.web_member(None)
        page.ask_seat_back(token, seen)
        self.assertEqual(page.until("lost")["text"], pcr.SEAT_GONE)

    def test_a_close_frame_with_no_code_is_a_leave_at_once(self):
        self.start()
        tom = self.member("tom")
        sock, _ = raw_upgrade(self.web)
        self.addCleanup(sock.close)
        sock.sendall(WebSocketFramesTest.masked(b"ghost"))
        tom.read_until(b"ghost joined the chat...\n")
        sock.sendall(WebSocketFramesTest.masked(b"", pcr.WS_CLOSE))
        tom.read_until(b"ghost has left the chat...\n", timeout=1.0)

    def test_any_other_close_is_away_and_the_seat_is_kept(self):
        # a browser waking a frozen page, the page stepping away, an error
        for code in (1001, 4000, 1011):
            with self.subTest(code=code):
                wendy, tom = self.wendy_and_tom()
                token = wendy.token
                wendy.ws.close(code)
                self.assertEqual(wendy.ws.protocol.close_rcvd.code, code)   # answered in kind
                self.wait_on_loop(lambda: stage_of(self.server, "wendy") is pcr.Stage.AWAY,
                                  "wendy away")
                tom.send(b"tom: while you were away\n/who\n")
                said = tom.read_until(b"in the room now (2): tom, wendy (away)\n")
                page = self.web_member(None)
                page.ask_seat_back(token, wendy.seen)
                self.assertTrue(page.until("welcome", name="wendy")["back"])
                self.assertEqual(page.until("chat")["text"], "while you were away")
                page.ws.send("back")
                said += tom.read_until(b"wendy: back\n")
                self.assertNotIn(b"left", said)
                self.assertNotIn(b"joined", said)
                self.assertIn(f'"wendy" (127.0.0.1) is away: its page closed with {code}',
                              self.log_text())

    def test_a_connection_that_ends_without_a_close_frame_is_away(self):
        self.start()
        tom = self.member("tom")
        sock, _ = raw_upgrade(self.web)
        sock.sendall(WebSocketFramesTest.masked(b"ghost"))
        tom.read_until(b"ghost joined the chat...\n")
        sock.close()   # a plain TCP close: no close frame (1006)
        self.wait_on_loop(lambda: stage_of(self.server, "ghost") is pcr.Stage.AWAY, "ghost away")
        self.assertNotIn(b"left", tom.read_for(0.3))

    def test_a_connection_that_stays_open_stays_in_the_room_past_the_grace(self):
        wendy, tom = self.wendy_and_tom(web_grace=0.5, web_ping=0.2)
        time.sleep(0.5 * 4)   # a frozen page: its browser still answers the pings
        self.assertIs(self.stage("wendy"), pcr.Stage.IN_ROOM)
        self.assertNotIn(b"left", tom.read_for(0.3))

    def test_with_no_grace_any_close_is_a_leave(self):
        wendy, tom = self.wendy_and_tom(web_grace=0)
        wendy.ws.close(1001)
        tom.read_until(b"wendy has left the chat...\n1 person is online...\n", timeout=1.0)

    def test_a_seat_whose_grace_ran_out_says_so_and_whether_its_name_was_taken(self):
        wendy, tom = self.wendy_and_tom(web_grace=0.5)
        token, seen = wendy.token, wendy.seen
        wendy.lose()
        tom.read_until(b"wendy has left the chat...\n", timeout=WAIT)
        page = self.web_member(None)
        page.ask_seat_back(token, seen)
        self.assertEqual(page.until("lost")["text"], pcr.GRACE_RAN_OUT.format(0.5))
        self.assertIn("away longer than 0.5 s", pcr.GRACE_RAN_OUT.format(0.5))
        self.member("wendy")   # a newcomer takes the name
        later = self.web_member(None)
        later.ask_seat_back(token, seen)
        self.assertEqual(later.until("lost")["text"], pcr.NAME_TAKEN.format(0.5))
        later.ws.send("wendy")
        self.assertEqual(later.until("welcome")["name"], "wendy (2)")

    def test_a_token_from_before_a_restart_says_the_room_was_restarted(self):
        wendy, _ = self.wendy_and_tom()
        self.start()   # another run of the room
        page = self.web_member(None)
        page.ask_seat_back(wendy.token, wendy.seen)
        self.assertEqual(page.until("lost")["text"], pcr.ROOM_RESTARTED)
        self.assertIn("restarted", pcr.ROOM_RESTARTED)


class WebGraceTest(WebCase):
    """--web-grace: a page whose connection is lost keeps its seat, away, and
    gets what it missed, once and in order, when it comes back (issue 16)."""

    settings = {"web_port": 0, "web_grace": 3.0}

    def away(self, wendy: WebMember, tom: Client) -> None:
        """wendy's connection dies; the room notices and holds her seat."""
        wendy.lose()
        self.wait_on_loop(lambda: self.server.room.find("wendy").stage is pcr.Stage.AWAY,
                          "wendy away")

    def back(self, token: str, seen: int) -> WebMember:
        page = self.web_member(None)
        page.ask_seat_back(token, seen)
        return page

    def test_the_grace_is_two_minutes_unless_told_and_0_turns_it_off(self):
        self.assertEqual(pcr.Settings().web_grace, 120.0)
        self.assertEqual(pcr.settings_from(pcr.parse_args(["--port", "5050"]))[0].web_grace, 120.0)
        self.assertEqual(pcr.parse_args(["--web-grace", "0"]).web_grace, 0.0)
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(SystemExit):
            pcr.parse_args(["--web-grace", "-1"])

    def test_a_lost_connection_is_away_and_comes_back_as_the_same_member(self):
        wendy, tom = self.wendy_and_tom()
        token, seen = wendy.token, wendy.seen
        self.assertRegex(token, r"^\d+\.[0-9a-f]{32}$")   # 128 random bits after the seat's number
        self.away(wendy, tom)
        for k in range(3):
            tom.send(f"tom: while you were away {k}\n".encode())
        tom.send(b"/who\n")
        said = tom.read_until(b"in the room now (2): tom, wendy (away)\n")
        self.assertNotIn(b"left", said)
        self.assertEqual(self.on_loop(self.server.room.snapshot)[1][3], "web, away")
        page = self.back(token, seen)
        welcome = page.until("welcome")
        self.assertEqual((welcome["name"], welcome["back"], welcome["missed"]), ("wendy", True, True))
        self.assertNotEqual(welcome["token"], token)
        missed = [page.until("chat")["text"] for _ in range(3)]
        self.assertEqual(missed, [f"while you were away {k}" for k in range(3)])
        page.ws.send("I am back")
        got = tom.read_until(b"wendy: I am back\n")
        self.assertNotIn(b"joined", got)
        self.assertNotIn(b"left", got)
        tom.send(b"/who\n")
        tom.read_until(b"in the room now (2): tom, wendy\n")
        with self.assertRaises(TimeoutError):   # every missed line came once
            page.until("chat", timeout=0.5, text="while you were away 0")
        log = self.log_text()
        self.assertIn('"wendy" (127.0.0.1) is away: disconnected', log)
        self.assertIn('"wendy" is back, from 127.0.0.1', log)
        self.assertNotIn("while you were away", log)
        self.assertNotIn(token.split(".")[1], log)
        self.assertNotIn(welcome["token"].split(".")[1], log)

    def test_what_was_missed_starts_from_what_the_page_last_saw(self):
        wendy, tom = self.wendy_and_tom()
        tom.send(b"tom: one\n")
        wendy.until("chat", text="one")
        shown = wendy.seen   # the page showed "one", and no more: its phone fell asleep
        tom.send(b"tom: two\ntom: three\n")
        wendy.until("chat", text="three")   # in its socket, never shown
        self.away(wendy, tom)
        page = self.back(wendy.token, shown)
        self.assertTrue(page.until("welcome")["missed"])
        self.assertEqual([page.until("chat")["text"] for _ in range(2)], ["two", "three"])

    def test_a_second_connection_with_the_token_takes_the_seat_and_the_older_is_closed(self):
        wendy, tom = self.wendy_and_tom()
        phone = self.back(wendy.token, wendy.seen)   # the same page, now on mobile data
        self.assertEqual(phone.until("welcome")["back"], True)
        self.assertIn("carries on over a newer connection", wendy.until("note")["text"])
        self.assertEqual(wendy.close_code(), pcr.WS_POLICY)
        phone.ws.send("still me")
        got = tom.read_until(b"wendy: still me\n")
        self.assertNotIn(b"left", got)
        self.assertNotIn(b"joined", got)
        self.assertEqual(self.on_loop(lambda: len(self.server.connections)), 2)

    def test_the_token_is_replaced_at_each_return_and_an_old_one_is_refused(self):
        wendy, tom = self.wendy_and_tom()
        first = wendy.token
        self.away(wendy, tom)
        page = self.back(first, wendy.seen)
        second = page.until("welcome")["token"]
        self.assertNotEqual(second, first)
        stranger = self.back(first, wendy.seen)
        self.assertEqual(stranger.until("lost")["text"], pcr.SEAT_GONE)
        forged = self.back(second.split(".")[0] + "." + "0" * 32, wendy.seen)
        self.assertEqual(forged.until("lost")["text"], pcr.SEAT_GONE)
        stranger.ws.send("wendy")   # refused, it names itself: a newcomer, with a number
        self.assertEqual(stranger.until("welcome")["name"], "wendy (2)")
        page.ws.send("the seat is still mine")
        tom.read_until(b"wendy: the seat is still mine\n")

    def test_a_request_for_a_seat_is_never_taken_for_a_name_nor_a_name_for_one(self):
        wendy, tom = self.wendy_and_tom()
        text = self.web_member(json.dumps({"resume": wendy.token, "seen": wendy.seen}))
        self.assertNotEqual(text.until("welcome")["name"], "wendy")   # a text is a name
        tom.read_until(b"joined the chat...\n")
        late = self.web_member("zoe")
        late.until("welcome")
        late.ask_seat_back(wendy.token, wendy.seen)   # after the name: not a request
        self.assertEqual(late.close_code(), pcr.WS_UNSUPPORTED)
        wendy.ws.send("nobody took my seat")
        tom.read_until(b"wendy: nobody took my seat\n")

    def test_a_page_away_longer_than_the_grace_leaves_once(self):
        wendy, tom = self.wendy_and_tom(web_grace=1.0)
        token, seen = wendy.token, wendy.seen
        lost = time.monotonic()
        self.away(wendy, tom)
        got = tom.read_until(b"wendy has left the chat...\n1 person is online...\n", timeout=WAIT)
        self.assertGreater(time.monotonic() - lost, 1.0 - 0.1)
        self.assertNotIn(b"left", got[:-len(b"wendy has left the chat...\n1 person is online...\n")])
        self.assertIn('"wendy" (127.0.0.1) left: away for more than 1 s', self.log_text())
        page = self.back(token, seen)
        self.assertEqual(page.until("lost")["text"], pcr.GRACE_RAN_OUT.format(1))
        page.ws.send("wendy")
        self.assertNotIn("back", page.until("welcome", name="wendy"))
        tom.read_until(b"wendy joined the chat...\n")
        self.assertEqual(tom.read_for(0.3).count(b"left"), 0)

    def test_a_ping_left_unanswered_is_away_then_gone_after_the_grace(self):
        self.start(web_ping=0.3, web_grace=1.0)
        ann = self.member("ann")
        sock, got = raw_upgrade(self.web)   # a page that answers nothing: its phone hangs
        self.addCleanup(sock.close)
        sock.sendall(WebSocketFramesTest.masked(b"ghost"))
        ann.read_until(b"ghost joined the chat...\n")
        started = time.monotonic()
        self.wait_on_loop(lambda: self.server.room.find("ghost").stage is pcr.Stage.AWAY,
                          "ghost away", timeout=0.3 * 2 + 2.0)
        ann.send(b"/who\n")
        ann.read_until(b"in the room now (2): ann, ghost (away)\n")
        ann.read_until(b"ghost has left the chat...\n1 person is online...\n", timeout=WAIT)
        self.assertGreater(time.monotonic() - started, 0.3 + 1.0 - 0.1)
        log = self.log_text()
        self.assertIn('"ghost" (127.0.0.1) is away: no answer to a ping within 0.3 s', log)
        self.assertIn('"ghost" (127.0.0.1) left: away for more than 1 s', log)

    def test_a_deliberate_leave_and_the_hosts_disconnect_are_leaves_at_once(self):
        wendy, tom = self.wendy_and_tom(web_grace=60.0)
        wendy.close()   # the page's own close frame
        tom.read_until(b"wendy has left the chat...\n", timeout=1.0)
        zoe = self.web_member("zoe")
        zoe.until("count", n=2)
        zoe.lose()
        self.wait_on_loop(lambda: self.server.room.find("zoe").stage is pcr.Stage.AWAY, "zoe away")
        self.assertTrue(self.on_loop(self.server.disconnect, "zoe"))   # the window's Disconnect
        tom.read_until(b"zoe has left the chat...\n1 person is online...\n", timeout=1.0)
        self.assertIsNone(self.on_loop(self.server.room.find, "zoe"))

    def test_turning_the_page_off_ends_the_seats_held(self):
        wendy, tom = self.wendy_and_tom(web_grace=60.0)
        self.away(wendy, tom)
        self.on_loop(self.server.close_page)
        tom.read_until(b"wendy has left the chat...\n1 person is online...\n", timeout=1.0)

    def test_with_no_grace_a_lost_connection_is_a_leave_at_once(self):
        wendy, tom = self.wendy_and_tom(web_grace=0)
        self.assertEqual(wendy.token, "")
        wendy.lose()
        tom.read_until(b"wendy has left the chat...\n1 person is online...\n", timeout=1.0)

    def test_a_seat_past_the_backlog_ends_as_a_leave_and_the_page_hears_why(self):
        wendy, tom = self.wendy_and_tom(max_backlog=2048, line_rate=0)
        token, seen = wendy.token, wendy.seen
        self.away(wendy, tom)
        for k in range(30):
            tom.send(f"tom: {k:02} {'x' * 100}\n".encode())
        tom.read_until(b"wendy has left the chat...\n")
        tom.read_until(b"1 person is online...\n")   # within count_interval: maybe after more lines
        page = self.back(token, seen)
        self.assertEqual(page.until("lost")["text"], pcr.MISSED_TOO_MUCH)
        page.ws.send("wendy")
        self.assertEqual(page.until("welcome")["name"], "wendy")
        self.assertIn('"wendy" (127.0.0.1) left: missed over 2048 bytes while away', self.log_text())

    def test_a_page_that_saw_too_little_of_a_long_stay_missed_too_much(self):
        wendy, tom = self.wendy_and_tom(max_backlog=2048, line_rate=0)
        token, seen = wendy.token, wendy.seen
        for k in range(30):   # read by the page's socket, never shown
            tom.send(f"tom: {k:02} {'x' * 100}\n".encode())
        wendy.until("chat", text=f"29 {'x' * 100}")
        self.away(wendy, tom)
        page = self.back(token, seen)
        self.assertEqual(page.until("lost")["text"], pcr.MISSED_TOO_MUCH)
        tom.read_until(b"wendy has left the chat...\n1 person is online...\n")

    def test_a_name_asked_for_during_the_grace_gets_a_number_and_none_of_the_missed_lines(self):
        wendy, tom = self.wendy_and_tom()
        self.away(wendy, tom)
        tom.send(b"tom: only for wendy\n")
        tom.read_until(b"tom: only for wendy\n")
        twin = self.connect()
        twin.answer(b"wendy\n")
        got = twin.read_until(b"the room knows you as wendy (2)\n")
        self.assertNotIn(b"only for wendy", got + twin.read_for(0.3))
        page = self.back(wendy.token, wendy.seen)
        self.assertEqual(page.until("welcome")["name"], "wendy")
        self.assertEqual(page.until("chat")["text"], "only for wendy")

    def test_coming_back_does_not_replay_the_history(self):
        wendy, tom = self.wendy_and_tom(history=5)
        tom.send(b"tom: before\n")
        wendy.until("chat", text="before")
        self.away(wendy, tom)
        tom.send(b"tom: after\n")
        page = self.back(wendy.token, wendy.seen)
        page.until("welcome")
        self.assertEqual(page.next(), {"type": "chat", "id": 2, "name": "tom", "text": "after",
                                       "at": page.seen})


class PhotoShareTest(WebCase):
    """A page shares a photo: pages show it, terminals and Apps get its link,
    the server takes only clean pictures and serves them from memory (issue 23)."""

    settings = {"web_port": 0, "photo_rate": 50.0}

    def setUp(self):
        super().setUp()
        if Image is None:
            self.skipTest(NO_PIL)

    def test_photos_are_kept_64_mib_unless_told_and_0_turns_sharing_off(self):
        self.assertEqual(pcr.Settings().photos, 64)
        self.assertEqual(pcr.settings_from(pcr.parse_args(["--port", "5050"]))[0].photos, 64)
        self.assertEqual(pcr.parse_args(["--photos", "0"]).photos, 0)
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(SystemExit):
            pcr.parse_args(["--photos", "-1"])
        self.assertIn("photos shared on the page: kept in memory only (up to 64 MiB), gone when "
                      "the room stops", pcr.privacy_text(pcr.Settings(web_port=0)))
        self.assertNotIn("photos", pcr.privacy_text(pcr.Settings()))   # no page, no photos
        self.assertNotIn("photos", pcr.privacy_text(pcr.Settings(web_port=0, photos=0)))

    def test_a_page_shares_a_photo_pages_show_it_and_a_terminal_gets_its_link(self):
        wendy, tom = self.wendy_and_tom()
        paul = self.web_member("paul")
        paul.until("welcome")
        tom.read_until(b"3 people are online...\n")
        data = camera_jpeg((2048, 1536))
        share(wendy, data)
        event = paul.until("photo")
        self.assertEqual(event["name"], "wendy")
        self.assertRegex(event["url"], r"^/p/[0-9a-f]{32}\.jpg$")
        self.assertEqual((event["width"], event["height"]), (2048, 1536))
        self.assertEqual(wendy.until("photo")["url"], event["url"])   # her own, like her lines
        line = tom.read_until(b"\n", WAIT)
        self.assertEqual(line, f"wendy shared a photo: http://127.0.0.1:{self.web}{event['url']}\n"
                               .encode())
        status, headers, body = fetch(photo_link(line))
        self.assertEqual(status, "HTTP/1.1 200 OK")
        self.assertEqual(headers["Content-Type"], "image/jpeg")
        self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
        self.assertEqual(headers["Content-Security-Policy"], "default-src 'none'")
        self.assertEqual(headers["Cache-Control"], "private")
        self.assertEqual(int(headers["Content-Length"]), len(body))
        assert_plain_picture(self, body, "JPEG")
        self.assert_chats_on(wendy, tom)

    def test_one_photo_served_to_many_at_once_is_one_copy_in_memory(self):
        wendy, tom = self.wendy_and_tom()
        share(wendy, picture("JPEG", (2048, 1600), noise=True, quality=92))
        url = wendy.until("photo")["url"]
        photo = self.on_loop(lambda: self.server.room.album.get(url[3:]))
        readers = []
        for _ in range(8):   # they ask for it and read nothing yet
            sock = socket.socket()
            self.addCleanup(sock.close)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(WAIT)
            sock.connect(("127.0.0.1", self.web))
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            readers.append(sock)
        waiting = self.wait_on_loop(lambda: [m.transport.out for m in self.server.connections
                                             if m.stage is pcr.Stage.ANSWERED and m.transport.out]
                                    if len([m for m in self.server.connections if m.stage is
                                            pcr.Stage.ANSWERED]) == 8 else None, "answers waiting")
        for out in waiting:   # what waits for each is a view into the album's one copy
            self.assertIsInstance(out, memoryview)
            self.assertIs(out.obj, photo.body.obj)
        for sock in readers:
            got = b""
            while data := sock.recv(1 << 20):
                got += data
            self.assertTrue(got.endswith(bytes(photo.body)))
        self.assert_chats_on(wendy, tom)

    def test_an_answer_still_sending_a_photo_the_album_lets_go_is_cut(self):
        wendy, tom = self.wendy_and_tom(photos=4)
        share(wendy, picture("JPEG", (2048, 1600), noise=True, quality=92))
        url = wendy.until("photo")["url"]
        first = self.on_loop(lambda: self.server.room.album.get(url[3:]).body.obj)
        sock = socket.socket()   # asks for it and reads nothing
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", self.web))
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        holding = lambda: [m for m in self.server.connections
                           if isinstance(m.transport.out, memoryview) and m.transport.out.obj is first]
        self.wait_on_loop(holding, "the answer waiting for its reader")
        while self.on_loop(lambda: self.server.room.album.get(url[3:])):   # more photos: it goes
            share(wendy, picture("JPEG", (2048, 1600), noise=True, quality=92))
            wendy.until("photo")
        self.wait_on_loop(lambda: not holding(), "the answer cut")   # its memory goes back
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(1 << 20):
                got += data
        self.assertLess(len(got), len(first))   # cut short: the reader knows it from its length
        self.assert_chats_on(wendy, tom)

    def test_a_page_member_typing_slash_photo_says_it_like_any_line(self):
        wendy, tom = self.wendy_and_tom()
        wendy.ws.send("/photo 5")   # typed: only the page's own NUL-led text announces a photo
        tom.read_until(b"wendy: /photo 5\n")
        self.assert_chats_on(wendy, tom)

    def test_over_ipv6_the_page_works_and_a_terminal_gets_the_link_at_its_ipv6_address(self):
        self.start_on_ipv6()
        tom = self.connect(host="::1", family=socket.AF_INET6).join("tom")
        wendy = self.web_member("wendy", host="::1")
        wendy.until("count", n=2)
        tom.read_until(b"2 people are online...\n")
        share(wendy, camera_jpeg((640, 480)))
        url = wendy.until("photo")["url"]
        line = tom.read_until(b"\n", WAIT)
        self.assertEqual(line, f"wendy shared a photo: http://[::1]:{self.web}{url}\n".encode())
        status, headers, body = fetch(photo_link(line))
        self.assertEqual(status, "HTTP/1.1 200 OK")
        self.assertEqual(int(headers["Content-Length"]), len(body))
        status, _, page = fetch(f"http://[::1]:{self.web}/")
        self.assertEqual(status, "HTTP/1.1 200 OK")
        self.assertIn(b"<script", page)
        self.assert_chats_on(wendy, tom)

    def test_a_member_from_the_internet_gets_the_pages_internet_link(self):
        self.start()
        self.member("tom")
        desk = self.server.door.photos
        self.on_loop(lambda: desk.heard_internet_page("http://203.0.113.9:5051/"))
        member, seen = self.wait_on_loop(lambda: self.server.room.find("tom"), "tom in"), {}
        for ip in ("127.0.0.1", "192.168.1.7", "93.184.216.34"):
            with mock.patch.object(member, "ip", ip):
                seen[ip] = self.on_loop(lambda: desk.page_at(member))
        self.assertEqual(seen["127.0.0.1"], f"http://127.0.0.1:{self.web}/")   # where it connected to
        self.assertEqual(seen["192.168.1.7"], f"http://127.0.0.1:{self.web}/")
        self.assertEqual(seen["93.184.216.34"], "http://203.0.113.9:5051/")   # through the router

    def test_hostile_uploads_are_refused_and_the_page_chats_on(self):
        from PIL import PngImagePlugin
        wendy, tom = self.wendy_and_tom()
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "<script>alert(1)</script>")
        jpeg = picture("JPEG", noise=True)
        refused = [
            (b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>", None, "not a JPEG"),
            (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', None, "not a JPEG"),
            (jpeg[:len(jpeg) // 2], None, "damaged or cut short"),
            (os.urandom(20 << 20), None, "larger than 8 MiB"),            # announced as it is
            (os.urandom(20 << 20), 100000, "longer than the 100000 bytes announced"),   # as less
            (picture("PNG", (4000, 3000)), None, "2048 pixels"),
        ]
        for data, announced, why in refused:
            with self.subTest(data=data[:12], announced=announced):
                share(wendy, data, announced)
                self.assertIn(why, wendy.until("unshared")["text"])
                self.assert_chats_on(wendy, tom)
        share(wendy, picture("PNG", pnginfo=info))   # a PNG with a tEXt chunk: shared without it
        url = wendy.until("photo")["url"]
        status, headers, body = fetch(f"http://127.0.0.1:{self.web}{url}")
        self.assertEqual((headers["Content-Type"], body.find(b"tEXt"), body.find(b"script")),
                         ("image/png", -1, -1))
        tom.read_until(b"wendy shared a photo: ")
        self.assert_chats_on(wendy, tom)
        self.assertEqual(self.on_loop(lambda: len(self.server.room.album.photos)), 1)

    def test_a_frame_declaring_a_gigabyte_is_refused_before_it_is_read(self):
        wendy, tom = self.wendy_and_tom()
        sock, _ = raw_upgrade(self.web)
        self.addCleanup(sock.close)
        masked = WebSocketFramesTest.masked
        sock.sendall(masked(b"mallory"))
        got = b""
        while b'"welcome"' not in got:
            got += sock.recv(65536)
        sock.sendall(masked(b"\x00photo 5000000")
                     + b"\x82\xff" + (1 << 30).to_bytes(8, "big") + b"mask" + os.urandom(100000))
        while b'"unshared"' not in got:
            got += sock.recv(65536)
        self.assertIn(b"longer than the 5000000 bytes announced", got)
        self.assert_chats_on(wendy, tom)
        wendy.ws.send("\x00photo 1073741824")   # announced as a gigabyte: refused as it is said
        self.assertIn("larger than 8 MiB", wendy.until("unshared")["text"])
        self.assert_chats_on(wendy, tom)

    def test_uploads_from_outside_the_room_are_refused(self):
        wendy, tom = self.wendy_and_tom()
        data = picture("JPEG", (32, 32))
        for announced in (False, True):   # a photo before the name: the socket closes
            before_joining = self.web_member(None)
            share(before_joining, data) if announced else before_joining.ws.send(data)
            self.assertEqual(before_joining.close_code(), pcr.WS_UNSUPPORTED)
        unannounced = self.web_member("mallory")   # bytes without their announcement
        unannounced.until("welcome")
        unannounced.ws.send(data)
        self.assertEqual(unannounced.close_code(), pcr.WS_UNSUPPORTED)
        for method in ("POST", "PUT"):
            got = http_get(self.web, f"{method} /p/x.jpg HTTP/1.1\r\nHost: a\r\nContent-Length: "
                                     f"{len(data)}\r\n\r\n".encode() + data)
            self.assertTrue(got.startswith(b"HTTP/1.1 405"), got[:40])
        self.assertEqual(self.on_loop(lambda: len(self.server.room.album.photos)), 0)
        self.assert_chats_on(wendy, tom)

    def test_unknown_and_evicted_photos_and_any_other_path_are_404(self):
        wendy, tom = self.wendy_and_tom(photos=1)
        big = picture("JPEG", (1024, 1024), noise=True, quality=90)
        self.assertGreater(len(big), (1 << 20) // 2)
        share(wendy, big)
        first = wendy.until("photo")["url"]
        self.assertEqual(fetch(f"http://127.0.0.1:{self.web}{first}")[0], "HTTP/1.1 200 OK")
        share(wendy, big)
        second = wendy.until("photo")["url"]
        for path in (first, first[:-4] + ".png", first[:-1], "/p/", "/p/" + "0" * 32 + ".jpg",
                     second + "/x", "/p/../" + second[3:], "/photo", second.upper()):
            with self.subTest(path=path):
                self.assertEqual(fetch(f"http://127.0.0.1:{self.web}{path}")[0], "HTTP/1.1 404 Not Found")
        self.assertEqual(fetch(f"http://127.0.0.1:{self.web}{second}?x=1")[0], "HTTP/1.1 200 OK")

    def test_the_photo_rate_is_a_burst_of_three_then_one_every_five_seconds(self):
        self.assertEqual(pcr.Settings().photo_rate, 0.2)
        wendy, tom = self.wendy_and_tom(photo_rate=0.2)
        data = picture("JPEG")
        for _ in range(3):
            share(wendy, data)
            wendy.until("photo")
        share(wendy, data)
        self.assertIn("too fast", wendy.until("unshared")["text"])
        self.assert_chats_on(wendy, tom)

    def test_with_photos_0_nothing_is_shared(self):
        self.start(photos=0)
        tom = self.member("tom")
        wendy = self.web_member("wendy")
        self.assertIs(wendy.hello["photos"], False)
        wendy.until("count", n=2)
        share(wendy, picture("JPEG"))
        self.assertEqual(wendy.until("unshared")["text"],
                         "your photo was not shared: photo sharing is off in this room")
        self.assert_chats_on(wendy, tom)
        self.assertNotIn(b"shared a photo", tom.read_for(0.2))

    def test_an_app_gets_the_link_paced_like_any_line(self):
        wendy, tom = self.wendy_and_tom()
        app = self.app("anna")
        tom.read_until(b"3 people are online...\n")
        share(wendy, picture("JPEG"))
        url = wendy.until("photo")["url"]
        app.wait_chat(f"wendy shared a photo: http://127.0.0.1:{self.web}{url}\n")
        self.assert_app_shows_well(app)

    def test_a_page_away_gets_the_photo_when_it_is_back(self):
        wendy, tom = self.wendy_and_tom(web_grace=5.0)
        paul = self.web_member("paul")
        paul.until("welcome")
        tom.read_until(b"3 people are online...\n")
        paul.until("count", n=3)
        token, seen = paul.token, paul.seen
        paul.lose()
        self.wait_on_loop(lambda: self.server.room.find("paul").stage is pcr.Stage.AWAY, "paul away")
        share(wendy, picture("JPEG"))
        url = wendy.until("photo")["url"]
        back = self.web_member(None)
        back.ask_seat_back(token, seen)
        self.assertTrue(back.until("welcome")["back"])
        self.assertEqual(back.until("photo")["url"], url)

    def test_history_keeps_photo_lines_and_says_when_a_photo_is_no_longer_kept(self):
        wendy, tom = self.wendy_and_tom(history=10, photos=1)
        big = picture("JPEG", (1024, 1024), noise=True, quality=90)
        share(wendy, big)
        first = wendy.until("photo")["url"]
        wendy.ws.send("between")
        wendy.until("chat", text="between")
        newcomer = self.connect()
        newcomer.answer(b"nina\n")
        line = newcomer.read_until(b"nina joined the chat...\n")
        self.assertIn(f"wendy shared a photo: http://127.0.0.1:{self.web}{first}\nwendy: between\n"
                      .encode(), line)
        page = self.web_member("pia")
        self.assertEqual(page.until("history")["lines"], [
            {"id": 1, "name": "wendy", "url": first, "width": 1024, "height": 1024},
            {"id": 2, "name": "wendy", "text": "between"}])
        share(wendy, big)   # the album holds one: the first goes, its line stays and says so
        second = wendy.until("photo")["url"]
        late = self.web_member("lea")
        self.assertEqual(late.until("history")["lines"], [
            {"id": 1, "name": "wendy", "gone": True},
            {"id": 2, "name": "wendy", "text": "between"},
            {"id": 3, "name": "wendy", "url": second, "width": 1024, "height": 1024}])
        newest = self.connect()
        newest.answer(b"ned\n")
        self.assertIn(f"wendy shared a photo: This photo is no longer kept.\nwendy: between\n"
                      f"wendy shared a photo: http://127.0.0.1:{self.web}{second}\n".encode(),
                      newest.read_until(b"ned joined the chat...\n"))

    def test_the_log_says_who_shared_how_much_never_the_bytes_nor_the_token(self):
        wendy, tom = self.wendy_and_tom()
        data = picture("JPEG", (640, 480), noise=True, quality=95)
        share(wendy, data)
        url = wendy.until("photo")["url"]
        kib = -(-len(pcr.clean_photo(data)[1]) // 1024)
        share(wendy, b"<html>")
        wendy.until("unshared")
        self.assert_chats_on(wendy, tom)
        log = self.log_text()
        self.assertIn(f'"wendy" shared a photo ({kib} KiB)', log)
        self.assertIn("refused a photo from 127.0.0.1: it is not a JPEG, PNG or WebP picture", log)
        self.assertNotIn(url[3:35], log)
        self.assertIn("photos shared on it are kept in memory only (up to 64 MiB)", log)

    def test_turning_the_page_off_forgets_the_photos(self):
        wendy, tom = self.wendy_and_tom()
        share(wendy, picture("JPEG"))
        wendy.until("photo")
        self.on_loop(self.server.close_page)
        self.assertEqual(self.on_loop(lambda: len(self.server.room.album.photos)), 0)


class PhotoUploadTest(WebCase):
    """A photo's bytes go into one buffer of the size announced, which goes back
    as soon as the photo is done, refused, or its member leaves or is away; the
    room's photo bytes are bounded; a slow phone keeps its photo; each lie in
    the photo protocol gets its own reason and code (issue 30)."""

    settings = {"web_port": 0, "photo_rate": 50.0}

    def setUp(self):
        super().setUp()
        if Image is None:
            self.skipTest(NO_PIL)

    @property
    def desk(self) -> pcr.PhotoDesk:
        return self.server.door.photos

    def coming(self) -> tuple[int, int]:
        """(uploads under way, their bytes as announced): on the loop."""
        return len(self.desk.uploads), self.desk.coming

    def test_each_lie_in_the_photo_protocol_gets_its_reason_and_its_code(self):
        wendy, tom = self.wendy_and_tom()
        page, jpeg = RawPage(self, self.web, "mallory"), picture("JPEG", noise=True)
        page.share(jpeg, announced=len(jpeg) - 1000)
        self.assertEqual(page.until("unshared")["text"], "your photo was not shared: it is longer "
                                                         f"than the {len(jpeg) - 1000} bytes announced")
        page.send(b"\x00photo 5000")   # announced twice: the first goes, the bytes are the second's
        page.share(jpeg)
        self.assertEqual(page.until("unshared")["text"],
                         "your photo was not shared: another photo was announced before its bytes came")
        self.assertEqual(page.until("photo")["width"], 320)
        self.assertEqual(self.on_loop(self.coming), (0, 0))
        page.sock.sendall(b"\x82\xff" + (1 << 63 | 5).to_bytes(8, "big") + b"mask" + b"x" * 5)
        self.assertEqual(page.close_code(), pcr.WS_PROTOCOL_ERROR)   # RFC 6455 §5.2
        unannounced = RawPage(self, self.web, "eve")
        unannounced.send(jpeg, pcr.WS_BINARY)
        self.assertEqual(unannounced.close_code(), pcr.WS_UNSUPPORTED)
        log = self.wait_on_loop(lambda: "without their announcement" in self.log_text() and self.log_text(),
                                "the log")
        self.assertIn("a 64-bit length with its top bit set", log)
        self.assert_chats_on(wendy, tom)

    def test_100_unfinished_uploads_stay_within_the_room_wide_bound(self):
        self.start(photos=4, max_per_ip=200)   # 4 MiB kept at most, and 4 MiB coming in
        tom = self.member("tom")
        pages = [RawPage(self, self.web, f"page{n}") for n in range(100)]
        photo = os.urandom(1 << 20)
        answers = []
        for page in pages:   # each announces a MiB and sends half of it
            page.share(photo, sent=1 << 19)
        for page in pages[4:]:
            answers.append(page.until("unshared")["text"])
        self.assertEqual(set(answers), {"your photo was not shared: the room is taking in other "
                                        "photos just now; try again in a moment"})
        self.assertEqual(self.on_loop(self.coming), (4, 4 << 20))
        self.wait_on_loop(lambda: sum(u.filled for u in self.desk.uploads) == 4 << 19, "the halves in")
        self.assertEqual(self.on_loop(lambda: self.server.room.album.size), 0)
        for page in pages[:4]:
            page.sock.close()
        self.wait_on_loop(lambda: self.coming() == (0, 0), "the buffers back")
        jpeg = picture("JPEG")   # tried again in a moment (its refused frame sent whole): shared
        pages[4].sock.sendall(bytes(1 << 19))
        pages[4].share(jpeg)
        self.assertEqual(pages[4].until("photo")["name"], "page4")
        tom.read_until(b"page4 shared a photo: ")

    def test_one_address_holds_only_its_share_of_the_photos_coming_in(self):
        """Eight pages at one address announce 8 MiB each and send nothing more:
        they get the address's share of the 64 MiB coming in (a quarter: two of
        them), the others are told the room is busy, and a member at another
        address still shares a photo (QA finding 6)."""
        self.start(max_per_ip=32)
        tom = self.member("tom")
        pages = [RawPage(self, self.web, f"mallory{n}") for n in range(8)]
        for page in pages:
            page.send(b"\x00photo %d" % pcr.MAX_PHOTO)
        for page in pages[2:]:
            self.assertEqual(page.until("unshared")["text"], "your photo was not shared: the room is "
                                                             "taking in other photos just now; try again in a moment")
        self.assertEqual(self.on_loop(self.coming), (2, 2 * pcr.MAX_PHOTO))
        wendy = RawPage(self, self.web, "wendy", source="127.0.0.2")
        wendy.share(picture("JPEG"))
        self.assertEqual(wendy.until("photo")["name"], "wendy")
        tom.read_until(b"wendy shared a photo: ")
        pages[0].sock.close()   # its upload goes: the address's share has room again
        self.wait_on_loop(lambda: self.coming() == (1, pcr.MAX_PHOTO), "its buffer back")
        pages[2].share(picture("JPEG"))
        while pages[2].until("photo")["name"] != "mallory2":   # wendy's came first
            pass

    def test_an_unfinished_upload_goes_when_its_member_leaves_or_is_away(self):
        self.start(web_grace=30.0)
        photo = os.urandom(1 << 20)
        for ending in ("leaves", "is away"):
            with self.subTest(ending):
                page = RawPage(self, self.web, "wendy")
                page.share(photo, sent=1 << 18)
                self.wait_on_loop(lambda: self.coming() == (1, 1 << 20) and next(iter(
                    self.desk.uploads)).filled == 1 << 18, "a quarter in")
                if ending == "leaves":
                    page.sock.sendall(b"x" * 100 + WebSocketFramesTest.masked(b"", pcr.WS_CLOSE))
                    page.sock.shutdown(socket.SHUT_WR)   # the rest of the frame never comes
                else:
                    page.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    page.sock.close()
                self.wait_on_loop(lambda: self.coming() == (0, 0), "its buffer back")
                if ending == "is away":
                    self.assertIs(stage_of(self.server, "wendy"), pcr.Stage.AWAY)
                self.on_loop(lambda: self.server.disconnect("wendy"))

    def test_a_slow_phone_keeps_its_photo_and_its_seat(self):
        """Bytes coming in are life: no ping time-out while the photo's one frame comes
        at the pace or faster (here 1 KiB/s, pinged every second, sent at 8 KiB/s)."""
        self.start(web_ping=1.0, photo_pace=1024)
        tom = self.member("tom")
        page = RawPage(self, self.web, "wendy")
        jpeg = picture("JPEG", (300, 200), noise=True, quality=80)
        self.assertGreater(len(jpeg), 24 << 10)   # three ping intervals and more
        frame = WebSocketFramesTest.masked(jpeg, pcr.WS_BINARY)
        page.send(b"\x00photo %d" % len(jpeg))
        for at in range(0, len(frame), 1024):
            page.sock.sendall(frame[at:at + 1024])
            time.sleep(1 / 8)
        self.assertEqual(page.until("photo")["name"], "wendy")
        tom.read_until(b"wendy shared a photo: ")
        self.assertIs(stage_of(self.server, "wendy"), pcr.Stage.IN_ROOM)
        self.assertNotIn("no answer to a ping", self.log_text())

    def test_a_photo_slower_than_the_pace_goes(self):
        self.assertEqual(pcr.Settings().photo_pace, 4096)   # the real pace: 4 KiB a second
        self.assertEqual(pcr.TOO_SLOW.format(4096 / 1024), "it came in slower than 4 KiB a second")
        self.start(web_ping=0.5, photo_pace=1024)
        page = RawPage(self, self.web, "wendy")
        page.share(os.urandom(100000), sent=100)
        self.assertEqual(page.until("unshared")["text"],
                         "your photo was not shared: it came in slower than 1 KiB a second")
        self.assertEqual(self.on_loop(self.coming), (0, 0))

    def test_history_keeps_a_photos_line_and_token_never_its_bytes(self):
        wendy, tom = self.wendy_and_tom(history=50, photos=1, photo_rate=1000.0)
        photos = [picture("JPEG", (700, 700 - n), noise=True, quality=90) for n in range(5)]
        for data in photos:   # about 400 KB each: the album keeps two
            share(wendy, data)
            wendy.until("photo")
        history = self.on_loop(lambda: [(said.photo, said.photo.kept) for said in self.server.room.history])
        self.assertEqual([kept for _, kept in history], [False, False, False, True, True])
        self.assertEqual([photo.body is None for photo, _ in history], [True, True, True, False, False])
        self.assertEqual(len({photo.file for photo, _ in history}), 5)   # their tokens stay
        page = self.web_member("pia")
        self.assertEqual([line.get("gone", False) for line in page.until("history")["lines"]],
                         [True, True, True, False, False])

    def test_a_photo_link_is_one_part_of_the_terminals_stream_per_address(self):
        """Not one part per terminal, which every other terminal stepped over: one
        small photo stalled the loop for seconds with thousands of terminals."""
        wendy, tom = self.wendy_and_tom(max_per_ip=64)
        terminals = [self.member(f"t{n}") for n in range(20)]
        desk = self.server.door.photos
        self.on_loop(lambda: desk.heard_internet_page("http://203.0.113.9:5051/"))
        far = self.wait_on_loop(lambda: self.server.room.find("t0"), "t0 in")
        parts, add_part = [], pcr.Stream.add_part

        def counted(stream: pcr.Stream, data: bytes, readers) -> None:
            parts.append(len(readers))
            add_part(stream, data, readers)
        with mock.patch.object(far, "ip", "93.184.216.34"), \
                mock.patch.object(pcr.Stream, "add_part", counted):   # t0 came from the internet
            share(wendy, picture("JPEG"))
            url = wendy.until("photo")["url"]
            terminals[0].read_until(b"wendy shared a photo: ")
            self.assertEqual(terminals[0].read_until(b"\n"), f"http://203.0.113.9:5051{url}\n".encode())
        self.assertEqual(sorted(parts), [1, 20])   # t0's link, and the others' (tom's too)
        for t in (tom, *terminals[1:]):
            t.read_until(f"wendy shared a photo: http://127.0.0.1:{self.web}{url}\n".encode())
        self.assert_chats_on(wendy, tom)


class PhotoAttackTest(WebCase):
    """The crafted photos of issue 30, each 8 MiB, through a real room: each is
    answered (shared or refused) holding the loop for under 0.3 s of its CPU
    (its own stall, not the wall clock), and the room chats on."""

    settings = {"web_port": 0, "photo_rate": 50.0}

    def assert_answered_holding_the_loop_briefly(self, *shapes: str) -> None:
        self.start()
        stalls = loop_stalls(self.server)
        tom = self.member("tom")
        wendy = self.web_member("wendy")
        wendy.until("count", n=2)
        crafted, expected = crafted_photos(), crafted_answers()
        for shape in shapes:
            with self.subTest(shape):
                del stalls[:]
                share(wendy, crafted[shape])
                while (answer := wendy.next(WAIT * 4))["type"] not in ("photo", "unshared"):
                    pass
                self.assertEqual(answer.get("text") or (answer["width"], answer["height"]),
                                 pcr.NOT_SHARED.format(expected[shape])
                                 if isinstance(expected[shape], str) else expected[shape])
                self.assertLess(max(stalls), 0.3, f"{shape}: {answer}")
                self.assert_chats_on(wendy, tom)
        self.assertEqual(self.on_loop(lambda: self.server.door.photos.coming), 0)

    def test_a_jpeg_of_4_byte_app0_segments(self):
        self.assert_answered_holding_the_loop_briefly("JPEG of 4-byte APP0 segments")

    def test_a_png_of_empty_chunks(self):
        self.assert_answered_holding_the_loop_briefly("PNG of empty chunks")

    def test_a_webp_of_8_byte_chunks(self):
        self.assert_answered_holding_the_loop_briefly("WebP of 8-byte chunks")

    def test_a_scan_of_ff_00_pairs(self):
        self.assert_answered_holding_the_loop_briefly("JPEG whose scan is FF 00 pairs")

    def test_a_first_sof_of_60000_px_then_one_of_100(self):
        self.assert_answered_holding_the_loop_briefly("JPEG whose first SOF is 60000 px")

    def test_restarts_fill_bytes_tiny_scans_and_empty_idats(self):
        self.assert_answered_holding_the_loop_briefly(
            "JPEG whose scan is restarts", "JPEG of fill bytes", "JPEG of tiny scans", "PNG of empty IDATs")


class PhotoMemoryTest(unittest.TestCase):
    """--photos MB bounds the memory photos take, measured as the server's
    resident memory in a process of its own: a dozen photos past a small
    album cost less than 24 MiB (issue 23), and the buffers of uploads that
    were dropped go back to the system (issue 30)."""

    def setUp(self):
        if Image is None or ws_connect is None:
            self.skipTest(NO_PIL if Image is None else NO_WEBSOCKETS)
        if not os.path.exists("/proc/self/statm"):
            self.skipTest("the server's memory is read from /proc")

    def serve(self, *args: str) -> tuple[subprocess.Popen, int]:
        """A room in a process of its own; (the process, the page's port)."""
        port = free_port_and_the_next()
        log_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, log_dir, True)
        proc = run_server("--host", "127.0.0.1", "--port", str(port), "--web-port", str(port + 1),
                          "--public-ip-url", "", "--log-file", os.path.join(log_dir, "log"), *args)
        self.addCleanup(proc.communicate, timeout=WAIT)
        self.addCleanup(interrupt, proc)
        wait_listening(port + 1, proc)
        return proc, port + 1

    def test_with_photos_4_the_oldest_goes_and_memory_stays_bounded(self):
        proc, web = self.serve("--photos", "4", "--history", "50")
        photos = [picture("JPEG", (1024, 1024 - i), noise=True, quality=93) for i in range(13)]
        self.assertTrue(all(700 << 10 < len(p) < 2 << 20 for p in photos), [len(p) for p in photos])
        watcher = WebMember(web, "watcher")   # sees each photo shared, in order
        self.addCleanup(watcher.close)
        pages = []
        for i in range(5):   # each page shares at most its burst of three
            page = WebMember(web, f"page{i}")
            self.addCleanup(page.close)
            page.until("welcome")
            pages.append(page)
        share(pages[0], photos[0])
        first = watcher.until("photo")["url"]
        start = rss(proc.pid)
        self.assertEqual(fetch(f"http://127.0.0.1:{web}{first}")[0], "HTTP/1.1 200 OK")
        for i, data in enumerate(photos[1:], 1):
            share(pages[i // 3], data)
            last = watcher.until("photo", name=f"page{i // 3}")["url"]
        grown = rss(proc.pid) - start
        self.assertEqual(fetch(f"http://127.0.0.1:{web}{first}")[0], "HTTP/1.1 404 Not Found")
        self.assertEqual(fetch(f"http://127.0.0.1:{web}{last}")[0], "HTTP/1.1 200 OK")
        self.assertLess(grown, 24 << 20)
        pages[0].ws.send("still here")
        for page in (watcher, *pages):   # each reads all it was sent: the room goes on
            page.until("chat", text="still here")

    def test_dropped_uploads_give_their_memory_back_to_the_system(self):
        """Eight pages announce 8 MiB each, send all but its last byte, and go: the
        server's resident memory grows by their 64 MiB, and comes back."""
        proc, web = self.serve("--photos", "64")
        pages = [RawPage(self, web, f"page{n}", source=f"127.0.0.{1 + n // 2}")   # an address holds
                 for n in range(8)]                                               # a quarter at most
        photo = os.urandom(pcr.MAX_PHOTO)
        start = rss(proc.pid)
        for page in pages:
            page.share(photo, sent=len(photo) - 1)
        deadline = time.monotonic() + WAIT * 4
        while rss(proc.pid) - start < 56 << 20:   # their bytes are in
            self.assertLess(time.monotonic(), deadline, f"grown {(rss(proc.pid) - start) >> 20} MiB")
            time.sleep(0.05)
        for page in pages:
            page.sock.close()
        deadline = time.monotonic() + WAIT
        while rss(proc.pid) - start > 16 << 20:
            self.assertLess(time.monotonic(), deadline, f"still {(rss(proc.pid) - start) >> 20} MiB more")
            time.sleep(0.05)


# ---------------------------------------------------------------------------
# 7. Host addresses: which IPv6 address friends are given, where the room listens
# ---------------------------------------------------------------------------

# /proc/net/if_inet6 of a laptop with privacy addresses: address, interface index,
# prefix length, scope, flags (0x01 temporary, 0x20 deprecated, 0x40 tentative,
# 0x80 permanent), interface.
IF_INET6 = """fe80000000000000a1b2c3fffed4e5f6 03 40 20 80    wlan0
2a0f00770001000058e3c1a97bd2f00e 03 40 00 01    wlan0
2a0f0077000100001122334455667788 03 40 00 21    wlan0
fd12345678900001a1b2c3fffed4e5f6 03 40 00 00    wlan0
2a0f0077000100000000000000000020 03 40 00 00    wlan0
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000005 04 40 00 80     eth0
2a0f0077000200000000000000000009 05 40 00 c0     usb0
"""
TEMPORARY, STABLE = "2a0f:77:1:0:58e3:c1a9:7bd2:f00e", "2a0f:77:1::20"


class HostIpv6Test(unittest.TestCase):
    """The IPv6 address friends on the internet are given (issue 34): global and stable."""

    def test_a_stable_address_is_given_rather_than_the_temporary_one_the_system_chose(self):
        self.assertEqual(pcr.stable_ipv6(TEMPORARY, IF_INET6), STABLE)
        self.assertEqual(pcr.stable_ipv6(STABLE, IF_INET6), STABLE)

    def test_never_link_local_unique_local_documentation_deprecated_or_tentative(self):
        for chosen in ("fe80::a1b2:c3ff:fed4:e5f6", "fd12:3456:7890:1:a1b2:c3ff:fed4:e5f6",
                       "2001:db8::5", "2a0f:77:2::9", "::1"):
            with self.subTest(chosen=chosen):
                self.assertIsNone(pcr.stable_ipv6(chosen, IF_INET6))
        temporary_only = "\n".join(row for row in IF_INET6.splitlines() if "0020 03" not in row)
        self.assertIsNone(pcr.stable_ipv6(TEMPORARY, temporary_only))   # deprecated stable: none
        deprecated = IF_INET6.replace("0000000000000020 03 40 00 00", "0000000000000020 03 40 00 20")
        self.assertIsNone(pcr.stable_ipv6(TEMPORARY, deprecated))

    def test_unlisted_the_systems_choice_is_taken_if_it_is_global(self):
        self.assertEqual(pcr.stable_ipv6("2a0f:77:9::1", IF_INET6), "2a0f:77:9::1")
        self.assertEqual(pcr.stable_ipv6("2a0f:77:9::1", ""), "2a0f:77:9::1")
        self.assertIsNone(pcr.stable_ipv6("fd00::2", ""))

    def test_which_addresses_the_internet_reaches(self):
        for ip in ("2a0f:77:1::20", "2001:4860:4860::8888", "2606:4700::1111"):
            self.assertTrue(pcr.internet_ipv6_address(ip), ip)
        for ip in ("fe80::1", "fe80::1%eth0", "fd00::2", "fc00::1", "2001:db8::1", "::1", "::",
                   "::ffff:203.0.113.7", "203.0.113.7", "ff02::c", "not an address"):
            self.assertFalse(pcr.internet_ipv6_address(ip), ip)

    def test_friends_get_the_ipv6_address_only_of_a_room_listening_on_ipv6(self):
        self.assertEqual(pcr.ipv6_host("::", STABLE), STABLE)
        self.assertIsNone(pcr.ipv6_host("::", None))
        self.assertEqual(pcr.ipv6_host("2a0f:77:1::21", STABLE), "2a0f:77:1::21")
        for host in ("0.0.0.0", "192.168.1.20", "127.0.0.1", "::1", "localhost", "fd00::2"):
            self.assertIsNone(pcr.ipv6_host(host, STABLE), host)

    def test_no_host_listens_on_every_network_ipv6_and_ipv4_where_it_can(self):
        for dual, host in ((True, "::"), (False, "0.0.0.0")):
            with self.subTest(dual=dual), mock.patch.object(socket, "has_dualstack_ipv6", return_value=dual):
                self.assertEqual(pcr.every_network(), host)
                self.assertEqual(pcr.settings_from(pcr.parse_args(["--port", "5050"]))[0].host, host)
        self.assertEqual(pcr.settings_from(pcr.parse_args(["--host", "0.0.0.0"]))[0].host, "0.0.0.0")
        self.assertEqual(pcr.Settings().host, "0.0.0.0")   # made here, as ever, and in tests
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            pcr.parse_args(["--help"])
        self.assertIn("0.0.0.0 IPv4 alone", " ".join(out.getvalue().split()))


# ---------------------------------------------------------------------------
# 8. The router client: the pure parts first, then the real router (miniupnpd)
# in network namespaces the tests make; nothing is sent anywhere else
# ---------------------------------------------------------------------------


class RouterPacketTest(unittest.TestCase):
    """NAT-PMP (RFC 6886) and PCP (RFC 6887) packets, built and read without a network."""

    def test_natpmp_mapping_request_asks_for_tcp_and_the_same_port(self):
        self.assertEqual(pcr.natpmp_map_request(5050, 5050, 3600),
                         bytes([0, 2, 0, 0]) + struct.pack("!HHI", 5050, 5050, 3600))

    def test_natpmp_removal_has_lifetime_and_suggested_port_zero(self):
        self.assertEqual(pcr.natpmp_map_request(5050, 5050, 0),
                         bytes([0, 2, 0, 0]) + struct.pack("!HHI", 5050, 0, 0))

    def test_natpmp_answers_are_read(self):
        self.assertEqual(pcr.natpmp_address(natpmp_answer(0, 0, bytes([11, 0, 0, 1]))),
                         (0, "11.0.0.1"))
        self.assertEqual(pcr.natpmp_address(natpmp_answer(0, 3)), (3, ""))
        got = pcr.natpmp_mapping(natpmp_answer(2, 0, struct.pack("!HHI", 5050, 5051, 7200)))
        self.assertEqual(got, (0, 5050, 5051, 7200))
        self.assertEqual(pcr.natpmp_mapping(natpmp_answer(2, 2)), (2, 0, 0, 0))

    def test_anything_but_the_awaited_natpmp_answer_is_not_taken(self):
        for data in (b"", b"\x00", natpmp_answer(1, 0, b"\x00" * 8),   # a UDP mapping's answer
                     natpmp_answer(2, 0, b"\x00" * 3), b"\x02\x82\x00\x00" + b"\x00" * 12):
            with self.subTest(data=data), self.assertRaises(ValueError):
                pcr.natpmp_mapping(data)

    def test_pcp_map_request_names_this_machine_the_port_and_tcp(self):
        nonce = bytes(range(12))
        request = pcr.pcp_map_request("192.168.1.20", 5050, 5050, 3600, nonce)
        self.assertEqual(len(request), 60)
        self.assertEqual(request[:4], bytes([2, 1, 0, 0]))
        self.assertEqual(struct.unpack("!I", request[4:8])[0], 3600)
        self.assertEqual(request[8:24], b"\x00" * 10 + b"\xff\xff" + bytes([192, 168, 1, 20]))
        self.assertEqual(request[24:36], nonce)
        self.assertEqual(request[36], 6)
        self.assertEqual(struct.unpack("!HH", request[40:44]), (5050, 5050))
        self.assertEqual(request[44:60], b"\x00" * 10 + b"\xff\xff" + b"\x00" * 4)

    def test_pcp_map_request_for_an_ipv6_pinhole_names_this_machines_ipv6_address(self):
        nonce = bytes(range(12))
        request = pcr.pcp_map_request("2a0f:77:1::20", 5051, 5051, 7200, nonce)
        self.assertEqual(request, bytes([2, 1, 0, 0]) + struct.pack("!I", 7200)
                         + bytes.fromhex("2a0f0077000100000000000000000020") + nonce
                         + bytes([6, 0, 0, 0]) + struct.pack("!HH", 5051, 5051) + b"\x00" * 16)
        removal = pcr.pcp_map_request("2a0f:77:1::20", 5051, 5051, 0, nonce)
        self.assertEqual(removal[4:8], b"\x00" * 4)
        self.assertEqual(removal[24:36], nonce)   # the same nonce names the same pinhole

    def test_pcp_announce_asks_whether_pcp_is_spoken_and_maps_nothing(self):
        self.assertEqual(pcr.pcp_announce_request("2a0f:77:1::20"),
                         bytes([2, 0, 0, 0, 0, 0, 0, 0]) + bytes.fromhex("2a0f0077000100000000000000000020"))
        self.assertEqual(pcr.port_control_probe(bytes([2, 128, 0, 0]) + b"\x00" * 20), (0, None))

    def test_a_pinhole_answer_names_this_machines_ipv6_address(self):
        nonce = os.urandom(12)
        self.assertEqual(pcr.pcp_mapping(pcp_answer(nonce, external_ip="2a0f:77:1::20"), nonce),
                         (0, 5050, 5050, 3600, "2a0f:77:1::20"))
        self.assertEqual(pcr.pcp_mapping(pcp_answer(nonce, external_ip="::"), nonce)[4], "")

    def test_pcp_answers_are_read_and_matched_by_nonce(self):
        nonce = os.urandom(12)
        self.assertEqual(pcr.pcp_mapping(pcp_answer(nonce, external_port=5051), nonce),
                         (0, 5050, 5051, 3600, "203.0.113.7"))
        with self.assertRaises(ValueError):
            pcr.pcp_mapping(pcp_answer(os.urandom(12)), nonce)
        self.assertEqual(pcr.pcp_mapping(pcp_answer(nonce, result=8), nonce)[0], 8)

    def test_a_natpmp_only_gateway_answering_pcp_means_unsupported_version(self):
        self.assertEqual(pcr.pcp_mapping(natpmp_answer(1, 1), b"x" * 12)[0],
                         pcr.PCP_UNSUPPORTED_VERSION)

    def test_the_probe_tells_an_address_none_or_not_known(self):
        self.assertEqual(pcr.port_control_probe(natpmp_answer(0, 0, bytes([11, 0, 0, 1]))),
                         (0, "11.0.0.1"))
        self.assertEqual(pcr.port_control_probe(natpmp_answer(0, 3)), (3, ""))   # CGNAT
        self.assertEqual(pcr.port_control_probe(natpmp_answer(0, 2)), (2, None))
        self.assertEqual(pcr.port_control_probe(b"\x02\x80\x00\x01" + b"\x00" * 20), (0, None))

    @unittest.skipUnless(hasattr(socket, "AF_UNIX"), "a datagram socketpair (no network) needs AF_UNIX")
    def test_udp_exchange_resends_and_skips_answers_it_does_not_await(self):
        ours, gateway = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)   # no network
        self.addCleanup(ours.close)
        self.addCleanup(gateway.close)

        def answer_the_second_request():
            gateway.settimeout(WAIT)
            first, second = gateway.recv(100), gateway.recv(100)
            gateway.send(b"noise")
            gateway.send(first + second)
        thread = threading.Thread(target=answer_the_second_request)
        thread.start()

        def read(data: bytes) -> bytes:
            if data == b"noise":
                raise ValueError("not ours")
            return data
        started = time.monotonic()
        got = pcr.udp_exchange(ours, b"ask", read, time.monotonic() + WAIT)
        thread.join(WAIT)
        self.assertEqual(got, b"askask")
        self.assertGreaterEqual(time.monotonic() - started, 0.2)   # the resend came after 250 ms

    @unittest.skipUnless(hasattr(socket, "AF_UNIX"), "a datagram socketpair (no network) needs AF_UNIX")
    def test_udp_exchange_gives_up_at_its_deadline(self):
        ours, gateway = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(ours.close)
        self.addCleanup(gateway.close)
        started = time.monotonic()
        with self.assertRaises(TimeoutError):
            pcr.udp_exchange(ours, b"ask", bytes, started + 0.6)
        self.assertLess(time.monotonic() - started, 3.0)   # without it, the resends never end


class UpnpTextTest(unittest.TestCase):
    """SSDP, the device description and SOAP, read and written without a network."""

    def test_the_search_asks_the_ssdp_group_for_a_gateway(self):
        text = pcr.ssdp_search(pcr.IGD_DEVICES[0]).decode()
        self.assertTrue(text.startswith("M-SEARCH * HTTP/1.1\r\n"))
        self.assertIn("HOST: 239.255.255.250:1900\r\n", text)
        self.assertIn('MAN: "ssdp:discover"\r\n', text)
        self.assertIn("ST: urn:schemas-upnp-org:device:InternetGatewayDevice:2\r\n", text)
        self.assertTrue(text.endswith("\r\n\r\n"))

    def test_the_ipv6_search_asks_this_links_ssdp_group_for_a_firewall(self):
        text = pcr.ssdp_search(pcr.FIREWALL_SERVICE, ("ff02::c", 1900, 0, 3)).decode()
        self.assertIn("HOST: [ff02::c]:1900\r\n", text)
        self.assertIn("ST: urn:schemas-upnp-org:service:WANIPv6FirewallControl:1\r\n", text)
        self.assertEqual(pcr.UpnpFirewall.TARGETS,
                         ("urn:schemas-upnp-org:device:InternetGatewayDevice:2", pcr.FIREWALL_SERVICE))

    def test_an_ipv6_router_is_believed_on_its_own_address_only(self):
        self.assertEqual(pcr.url_on_host("http://[2a0f:77:1::1]:5000/rootDesc.xml", "2a0f:77:1::1"),
                         (5000, "/rootDesc.xml"))
        self.assertEqual(pcr.url_on_host("http://[fe80::1%25eth0]:5000/d.xml", "fe80::1%3"),
                         (5000, "/d.xml"))
        for url in ("http://[2a0f:77:1::2]:5000/d.xml", "http://[fe80::2]:5000/d.xml",
                    "http://192.168.1.1:5000/d.xml"):
            self.assertIsNone(pcr.url_on_host(url, "2a0f:77:1::1"), url)
        self.assertEqual(pcr.igd_service(IGD_DESCRIPTION, "http://[2a0f:77:1::1]:5000/rootDesc.xml",
                                         pcr.UpnpFirewall.SERVICES),
                         (pcr.FIREWALL_SERVICE, "http://[2a0f:77:1::1]:5000/ctl/IP6FCtl"))

    def test_pinholes_are_asked_for_in_igdv2s_words_from_this_machines_ipv6_address(self):
        asked = []

        def http_exchange(host, port, path, deadline, body=None, headers=None, source=""):
            asked.append((host, port, path, source, headers["SOAPAction"], body.decode()))
            action = headers["SOAPAction"].strip('"').split("#")[1]
            if action == "UpdatePinhole" and len(asked) == 2:   # the router lost it (a restart)
                return 500, soap_fault(704, "NoSuchEntry")
            return 200, soap_reply(action, {"UniqueID": str(len(asked))} if action == "AddPinhole" else {})
        way = pcr.UpnpFirewall("2a0f:77:1::1", 5000, "/ctl/IP6FCtl", pcr.FIREWALL_SERVICE, STABLE)
        with mock.patch.object(pcr, "http_exchange", http_exchange):
            self.assertEqual(way.forward(5050, 5050, 100000, time.monotonic() + WAIT), (5050, 86400))
            self.assertEqual(way.renew(5050, 5050, 3600, time.monotonic() + WAIT), (5050, 3600))
            self.assertEqual(way.renew(5050, 5050, 3600, time.monotonic() + WAIT), (5050, 3600))
            way.remove(5050, 5050, time.monotonic() + WAIT)
            self.assertEqual(way.external_address(0), STABLE)
        service = 'xmlns:u="urn:schemas-upnp-org:service:WANIPv6FirewallControl:1"'
        add = (f"<u:AddPinhole {service}><RemoteHost></RemoteHost><RemotePort>0</RemotePort>"
               f"<InternalClient>{STABLE}</InternalClient><InternalPort>5050</InternalPort>"
               f"<Protocol>6</Protocol><LeaseTime>86400</LeaseTime></u:AddPinhole>")
        self.assertEqual([a[:4] for a in asked], [("2a0f:77:1::1", 5000, "/ctl/IP6FCtl", STABLE)] * 5)
        self.assertEqual([a[4] for a in asked], [f'"{pcr.FIREWALL_SERVICE}#{action}"' for action in (
            "AddPinhole", "UpdatePinhole", "AddPinhole", "UpdatePinhole", "DeletePinhole")])
        self.assertIn(add, asked[0][5])
        self.assertIn(f"<u:UpdatePinhole {service}><UniqueID>1</UniqueID><NewLeaseTime>3600"
                      f"</NewLeaseTime></u:UpdatePinhole>", asked[1][5])
        self.assertIn("<UniqueID>3</UniqueID>", asked[3][5])   # the new pinhole's
        self.assertIn(f"<u:DeletePinhole {service}><UniqueID>3</UniqueID></u:DeletePinhole>", asked[4][5])

    def test_a_refused_pinhole_says_why(self):
        way = pcr.UpnpFirewall("2a0f:77:1::1", 5000, "/ctl/IP6FCtl", pcr.FIREWALL_SERVICE, STABLE)
        answer = (500, soap_fault(606, "Action not authorized"))
        with mock.patch.object(pcr, "http_exchange", return_value=answer), \
                self.assertRaises(pcr.RouterRefused) as refused:
            way.forward(5050, 5050, 3600, time.monotonic() + WAIT)
        self.assertEqual((refused.exception.protocol, refused.exception.reason),
                         ("UPnP", "Action not authorized (606)"))
        self.assertIn("takes no pinholes", pcr.upnp_reason(pcr.UpnpError(703, "InboundPinholeNotAllowed")))

    def test_only_a_search_answer_gives_a_location(self):
        answer = b"HTTP/1.1 200 OK\r\nST: x\r\nLocation: http://192.168.1.1:5000/d.xml\r\n\r\n"
        self.assertEqual(pcr.ssdp_location(answer), "http://192.168.1.1:5000/d.xml")
        self.assertIsNone(pcr.ssdp_location(answer.replace(b"200 OK", b"404 No")))
        self.assertIsNone(pcr.ssdp_location(b"NOTIFY * HTTP/1.1\r\nLOCATION: http://x/\r\n\r\n"))
        self.assertIsNone(pcr.ssdp_location(b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n"))
        self.assertIsNone(pcr.ssdp_location(b"HTTP/1.1 200 OK\r\nLOCATION: http://x/\x1b[2J\r\n\r\n"))

    def test_a_url_must_be_plain_http_on_the_host_that_answered(self):
        self.assertEqual(pcr.url_on_host("http://192.168.1.1:5000/rootDesc.xml", "192.168.1.1"),
                         (5000, "/rootDesc.xml"))
        self.assertEqual(pcr.url_on_host("http://192.168.1.1/ctl?x=1", "192.168.1.1"), (80, "/ctl?x=1"))
        for url in ("http://192.168.1.99:5000/d.xml", "https://192.168.1.1/d.xml",
                    "http://192.168.1.1@203.0.113.9/d.xml", "http://192.168.1.1.example.com/",
                    "file:///etc/passwd", "http://192.168.1.1:99999/", "//192.168.1.1/d.xml"):
            with self.subTest(url=url):
                self.assertIsNone(pcr.url_on_host(url, "192.168.1.1"))

    def test_the_best_wan_service_is_found_and_its_url_resolved(self):
        self.assertEqual(pcr.igd_service(IGD_DESCRIPTION, "http://192.168.1.1:5000/rootDesc.xml"),
                         ("urn:schemas-upnp-org:service:WANIPConnection:2",
                          "http://192.168.1.1:5000/ctl/IPConn"))
        based = IGD_DESCRIPTION.replace(b"<device>", b"<URLBase>http://192.168.1.1:6000/</URLBase>"
                                        b"<device>", 1)
        self.assertEqual(pcr.igd_service(based, "http://192.168.1.1:5000/d.xml")[1],
                         "http://192.168.1.1:6000/ctl/IPConn")
        ppp = IGD_DESCRIPTION.replace(b"WANIPConnection", b"WANPPPConnection")
        self.assertEqual(pcr.igd_service(ppp, "http://192.168.1.1/")[0],
                         "urn:schemas-upnp-org:service:WANPPPConnection:1")
        self.assertIsNone(pcr.igd_service(IGD_DESCRIPTION.replace(b"WAN", b"LAN"), "http://h/"))

    def test_xml_with_a_doctype_or_entities_is_refused_unparsed(self):
        laughs = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
                  b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><root>&b;</root>')
        outside = b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://203.0.113.9/x.dtd"><root/>'
        in_utf16 = laughs.replace(b'version="1.0"', b'version="1.0" encoding="UTF-16"').decode().encode("utf-16")
        for text in (laughs, outside, in_utf16, b"<root><!ENTITY x 'y'></root>", b"not xml at all"):
            with self.subTest(text=text[:40]), self.assertRaises(ValueError):
                pcr.igd_service(text, "http://192.168.1.1/")
        with self.assertRaises(ValueError):
            pcr.soap_answer(laughs, "GetExternalIPAddress")

    def test_soap_body_names_the_service_and_escapes_values(self):
        body = pcr.soap_body("urn:schemas-upnp-org:service:WANIPConnection:1", "AddPortMapping",
                             {"NewExternalPort": 5050, "NewPortMappingDescription": "a<b&c"}).decode()
        self.assertIn('<u:AddPortMapping xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">',
                      body)
        self.assertIn("<NewExternalPort>5050</NewExternalPort><NewPortMappingDescription>"
                      "a&lt;b&amp;c</NewPortMappingDescription>", body)
        root = pcr.xml_root(body.encode())   # well-formed
        self.assertEqual(pcr.local_name(root), "Envelope")

    def test_soap_answers_and_faults_are_read(self):
        ok = (b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
              b'<s:Body><u:GetExternalIPAddressResponse xmlns:u="urn:x"><NewExternalIPAddress>'
              b'203.0.113.7</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body>'
              b'</s:Envelope>')
        self.assertEqual(pcr.soap_answer(ok, "GetExternalIPAddress"),
                         {"NewExternalIPAddress": "203.0.113.7"})
        fault = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
                 b'<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>'
                 b'<detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718'
                 b'</errorCode><errorDescription>ConflictInMappingEntry</errorDescription>'
                 b'</UPnPError></detail></s:Fault></s:Body></s:Envelope>')
        with self.assertRaises(pcr.UpnpError) as e:
            pcr.soap_answer(fault, "AddPortMapping")
        self.assertEqual((e.exception.code, e.exception.description), (718, "ConflictInMappingEntry"))
        self.assertIn("another machine", pcr.upnp_reason(e.exception))
        self.assertIn("outlive the room", pcr.upnp_reason(pcr.UpnpError(725, "")))
        with self.assertRaises(ValueError):
            pcr.soap_answer(ok, "AddPortMapping")

    def test_http_replies_are_whole_only_with_their_announced_length(self):
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more"
        self.assertTrue(pcr.http_reply_complete(reply))
        self.assertFalse(pcr.http_reply_complete(reply[:-12]))
        self.assertFalse(pcr.http_reply_complete(b"HTTP/1.1 200 OK\r\n\r\nno length"))
        self.assertEqual(pcr.http_reply(reply), (200, b"hello"))
        self.assertEqual(pcr.http_reply(b"HTTP/1.0 302 Found\r\nLocation: http://x/\r\n\r\n"),
                         (302, b""))
        with self.assertRaises(ValueError):
            pcr.http_reply(b"SSH-2.0-OpenSSH\r\n\r\n")


class RouterAddressTest(unittest.TestCase):
    """The default gateway, this machine's network, and which addresses are public."""

    def test_linux_routes_give_the_lowest_metric_default_gateway(self):
        routes = pcr.proc_routes(PROC_ROUTE)
        self.assertEqual(pcr.default_gateway(routes), "10.0.0.1")
        self.assertEqual(len(routes), 4)   # the route that is not up is left out

    def test_windows_and_macos_routes_give_the_default_gateway(self):
        self.assertEqual(pcr.default_gateway(pcr.route_print_routes(ROUTE_PRINT)), "192.168.1.1")
        self.assertEqual(pcr.default_gateway(pcr.route_get_routes(ROUTE_GET)), "192.168.0.254")
        self.assertIsNone(pcr.default_gateway(pcr.route_get_routes("route: not in table\n")))
        self.assertIsNone(pcr.default_gateway([]))

    def test_this_machines_network_is_its_on_link_route(self):
        routes = pcr.proc_routes(PROC_ROUTE)
        self.assertEqual([str(n) for n in pcr.own_networks(routes, "192.168.1.20")], ["192.168.1.0/24"])
        self.assertEqual([str(n) for n in pcr.own_networks(pcr.route_print_routes(ROUTE_PRINT),
                                                           "192.168.1.20")], ["192.168.1.0/24"])
        self.assertEqual([str(n) for n in pcr.own_networks([], "172.20.5.9")], ["172.20.5.0/24"])

    def test_answers_are_believed_from_the_gateway_or_this_network_only(self):
        networks = pcr.own_networks(pcr.proc_routes(PROC_ROUTE), "192.168.1.20")
        self.assertTrue(pcr.answer_allowed("192.168.1.1", "192.168.1.1", networks))
        self.assertTrue(pcr.answer_allowed("192.168.1.66", "192.168.1.1", networks))
        self.assertTrue(pcr.answer_allowed("10.0.0.1", "10.0.0.1", networks))   # the gateway
        for ip in ("192.168.2.1", "203.0.113.9", "10.0.0.2", "not an address", "::1"):
            with self.subTest(ip=ip):
                self.assertFalse(pcr.answer_allowed(ip, "10.0.0.1", networks))

    def test_ipv6_routes_give_the_gateway_with_its_link_and_this_machines_network(self):
        routes = pcr.proc_routes6(PROC_IPV6_ROUTE)
        self.assertEqual(pcr.default_gateway(routes), "fe80::1%wlan0")
        self.assertEqual([str(n) for n in pcr.own_networks(routes, STABLE)], ["2a0f:77:1::/64"])
        self.assertEqual([str(n) for n in pcr.own_networks([], "2a0f:77:9::5")], ["2a0f:77:9::/64"])
        self.assertEqual(pcr.default_gateway(pcr.route_print_routes6(ROUTE_PRINT6)), "fe80::1%12")
        self.assertEqual(pcr.default_gateway(pcr.route_get_routes(ROUTE_GET.replace(
            "192.168.0.254", "fe80::1%en0"))), "fe80::1%en0")

    def test_ipv6_answers_are_believed_from_the_gateway_or_this_network_only(self):
        networks = pcr.own_networks(pcr.proc_routes6(PROC_IPV6_ROUTE), STABLE) + [pcr.LINK_LOCAL]
        for ip in ("fe80::1", "2a0f:77:1::1", "fe80::99"):
            self.assertTrue(pcr.answer_allowed(ip, "fe80::1%wlan0", networks), ip)
        for ip in ("2a0f:77:2::1", "2001:db8::1", "192.168.1.1", "::1"):
            self.assertFalse(pcr.answer_allowed(ip, "fe80::1%wlan0", networks), ip)
        self.assertTrue(pcr.public_address(STABLE))
        self.assertFalse(pcr.public_address("fd00::2"))

    def test_public_addresses_and_the_rest(self):
        for ip in ("11.0.0.1", "203.0.113.7", "81.2.69.160"):
            self.assertTrue(pcr.public_address(ip), ip)
        for ip in ("", "0.0.0.0", "100.64.0.1", "100.127.255.254", "10.1.2.3", "172.16.0.1",
                   "192.168.0.2", "169.254.1.1", "127.0.0.1", "239.255.255.250", "garbage"):
            self.assertFalse(pcr.public_address(ip), ip)
        self.assertTrue(pcr.private_router_address("192.168.0.2"))
        self.assertFalse(pcr.private_router_address("100.64.0.1"))   # shared: CGNAT, not a router of yours
        self.assertFalse(pcr.private_router_address(""))


class RouterSentenceTest(unittest.TestCase):
    """What the host is told, for each thing a router can do."""

    def test_forwarded_gives_the_address_friends_use(self):
        result = router_result(pcr.RouterOutcome.FORWARDED, protocol="UPnP",
                               external_ip="203.0.113.7", forwarded={5050: 5050})
        self.assertEqual(pcr.router_sentence(result),
                         "over the internet:  203.0.113.7:5050 (your router forwards it: UPnP)")
        self.assertEqual(result.address(5050), "203.0.113.7:5050")
        self.assertIsNone(result.address(5051))

    def test_forwarded_with_the_page_and_a_port_the_router_chose(self):
        result = router_result(pcr.RouterOutcome.FORWARDED, protocol="PCP", ports=(5050, 5051),
                               external_ip="203.0.113.7", forwarded={5050: 5050, 5051: 40001})
        self.assertEqual(pcr.router_sentence(result),
                         "over the internet:  203.0.113.7:5050, the page on port 40001 (your router "
                         "forwards both: PCP; its port 40001 leads to 5051 here)")
        self.assertEqual(result.address(5051), "203.0.113.7:40001")

    def test_no_public_address_is_called_cgnat_with_what_helps(self):
        for external, reason in (("100.64.0.1", ""), ("", "network failure"), ("10.0.0.2", "")):
            result = router_result(pcr.RouterOutcome.NO_PUBLIC, protocol="NAT-PMP",
                                   external_ip=external, reason=reason)
            text = pcr.router_sentence(result)
            with self.subTest(external=external):
                self.assertIn("CGNAT", text)
                self.assertIn("Friends outside cannot reach this room", text)
                self.assertIn("ask your provider for a public IPv4 address", text)
                self.assertIn("same network still can", text)
                self.assertIn(reason, text)
                self.assertIsNone(result.address(5050))

    def test_a_private_router_address_and_another_public_one_is_double_nat(self):
        result = router_result(pcr.RouterOutcome.NO_PUBLIC, protocol="UPnP",
                               external_ip="192.168.0.2", forwarded={5050: 5050})
        self.assertTrue(result.needs_public_ip())
        text = pcr.router_sentence(result, public_ip="203.0.113.7")
        self.assertIn("double NAT", text)
        self.assertIn("forward TCP port 5050 to 192.168.0.2", text)
        self.assertIn("203.0.113.7", text)
        self.assertNotIn("CGNAT", text)
        self.assertIn("CGNAT", pcr.router_sentence(result))   # without the look-up it cannot tell
        shared = router_result(pcr.RouterOutcome.NO_PUBLIC, protocol="UPnP", external_ip="100.64.0.1")
        self.assertFalse(shared.needs_public_ip())
        self.assertIn("CGNAT", pcr.router_sentence(shared, public_ip="203.0.113.7"))

    def test_no_answer_names_what_was_tried_and_the_manual_way(self):
        result = router_result(pcr.RouterOutcome.NO_ANSWER)
        self.assertEqual(pcr.router_sentence(result),
                         "no router answered UPnP, NAT-PMP or PCP: forward TCP port 5050 to "
                         "192.168.1.20 by hand (MAC aa:bb:cc:dd:ee:ff)")
        two = router_result(pcr.RouterOutcome.NO_ANSWER, ports=(5050, 5051), tried=("PCP", "NAT-PMP"))
        self.assertEqual(pcr.router_sentence(two),
                         "no router answered NAT-PMP or PCP: forward TCP ports 5050 and 5051 to "
                         "192.168.1.20 by hand (MAC aa:bb:cc:dd:ee:ff)")

    def test_a_refusal_gives_its_reason_and_the_manual_way(self):
        result = router_result(pcr.RouterOutcome.REFUSED, protocol="UPnP",
                               reason="ConflictInMappingEntry (718)")
        self.assertEqual(pcr.router_sentence(result),
                         "the router refused to forward port 5050 (UPnP: ConflictInMappingEntry "
                         "(718)): forward TCP port 5050 to 192.168.1.20 by hand (MAC aa:bb:cc:dd:ee:ff)")


class Ipv6RouterSentenceTest(unittest.TestCase):
    """What the host is told of the router's IPv6 firewall, and how friends with IPv6 join."""

    def pinholes(self, outcome, **fields) -> pcr.RouterResult:
        return router_result(outcome, lan_ip=STABLE, ports=(5050, 5051), tried=pcr.PINHOLE_PROTOCOLS,
                             **fields)

    def test_the_ipv6_firewall_opened_refused_or_silent_is_one_sentence(self):
        opened = self.pinholes(pcr.RouterOutcome.FORWARDED, protocol="UPnP", external_ip=STABLE,
                               forwarded={5050: 5050, 5051: 5051})
        self.assertEqual(pcr.pinhole_sentence(opened), "your router's IPv6 firewall lets TCP ports "
                                                       "5050 and 5051 in to 2a0f:77:1::20 (UPnP)")
        refused = self.pinholes(pcr.RouterOutcome.REFUSED, protocol="UPnP",
                                reason="Action not authorized (606)")
        self.assertEqual(pcr.pinhole_sentence(refused),
                         "the router would not open its IPv6 firewall (UPnP: Action not authorized "
                         "(606)): let TCP ports 5050 and 5051 in to 2a0f:77:1::20 by hand on the router")
        silent = self.pinholes(pcr.RouterOutcome.NO_ANSWER)
        self.assertEqual(pcr.pinhole_sentence(silent),
                         "no router answered about its IPv6 firewall (UPnP or PCP): if it keeps "
                         "friends with IPv6 out, let TCP ports 5050 and 5051 in to 2a0f:77:1::20 by "
                         "hand on the router")

    def join(self, pinholes, ipv6: str | None = STABLE, **kw) -> pcr.FriendsJoin:
        cgnat = router_result(pcr.RouterOutcome.NO_PUBLIC, protocol="PCP", ports=(5050, 5051),
                              external_ip="100.64.0.1", reason="no resources", ipv6=pinholes)
        return pcr.friends_join(pcr.Settings(public_ip_url="", **kw), ("::", 5050), "192.168.1.20",
                                None, 5051, cgnat, None, ipv6)

    def test_behind_cgnat_the_sentence_ends_with_the_way_that_works_over_ipv6(self):
        join = self.join(self.pinholes(pcr.RouterOutcome.FORWARDED, protocol="PCP", external_ip=STABLE,
                                       forwarded={5050: 5050, 5051: 5051}))
        self.assertIn("probably CGNAT or a second router", join.router)
        self.assertTrue(join.router.endswith(
            "Friends on the same network still can join; friends with IPv6 can join at "
            "http://[2a0f:77:1::20]:5051/ (for a browser or a phone) or [2a0f:77:1::20]:5050 "
            "(for a terminal)."), join.router)
        self.assertEqual(join.firewall, "your router's IPv6 firewall lets TCP ports 5050 and 5051 "
                                        "in to 2a0f:77:1::20 (PCP)")
        shut = self.join(self.pinholes(pcr.RouterOutcome.NO_ANSWER), tls_cert="cert.pem")
        self.assertTrue(shut.router.endswith(
            "friends with IPv6 can join at https://[2a0f:77:1::20]:5051/ (for a browser or a phone) or "
            "[2a0f:77:1::20]:5050 (for a terminal) once your router's firewall lets them in."), shut.router)
        self.assertTrue(self.join(None, ipv6=None).router.endswith("same network still can join."))

    def test_friends_get_ipv6_links_for_the_page_and_terminals_and_the_code_stays_on_the_lan(self):
        join = pcr.friends_join(pcr.Settings(room_key="long-enough-key"), ("::", 5050), "192.168.1.20",
                                "203.0.113.7", 5051, ipv6=STABLE)
        self.assertEqual((join.ipv6, join.page_ipv6),
                         ("[2a0f:77:1::20]:5050", "http://[2a0f:77:1::20]:5051/"))
        self.assertEqual((join.internet, join.page_internet),
                         ("203.0.113.7:5050", "http://203.0.113.7:5051/"))
        self.assertEqual(join.invite, "http://192.168.1.20:5051/#key=long-enough-key")
        self.assertEqual(join.firewall, "")   # the router was not asked
        four = pcr.friends_join(pcr.Settings(), ("0.0.0.0", 5050), "192.168.1.20", None, 5051, ipv6=STABLE)
        self.assertEqual((four.ipv6, four.page_ipv6), (None, None))


class RouterHttpTest(unittest.TestCase):
    """http_exchange: bounded in size and time, no redirects (loopback only)."""

    def serve(self, reply: bytes, pause: float = 0.0) -> LoopbackHttp:
        server = LoopbackHttp(reply, pause)
        self.addCleanup(server.close)
        return server

    def test_a_description_larger_than_64_kib_is_refused_after_64_kib(self):
        server = self.serve(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (10 << 20))
        with self.assertRaisesRegex(ValueError, "more than 65536 bytes"):
            pcr.http_exchange("127.0.0.1", server.port, "/d.xml", time.monotonic() + WAIT)
        server.close()
        self.assertLess(server.sent, 10 << 20)

    def test_an_announced_large_answer_is_refused_too(self):
        server = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n" + b"x" * 200000)
        with self.assertRaises(ValueError):
            pcr.http_exchange("127.0.0.1", server.port, "/d.xml", time.monotonic() + WAIT)

    def test_a_slow_answer_ends_at_the_deadline(self):
        server = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", pause=5.0)
        started = time.monotonic()
        with self.assertRaises(TimeoutError):
            pcr.http_exchange("127.0.0.1", server.port, "/d.xml", started + 0.5)
        self.assertLess(time.monotonic() - started, 3.0)   # not when the answer comes

    def test_a_redirect_is_not_followed(self):
        server = self.serve(b"HTTP/1.1 301 Moved\r\nLocation: http://203.0.113.9/\r\n"
                            b"Content-Length: 0\r\n\r\n")
        self.assertEqual(pcr.http_exchange("127.0.0.1", server.port, "/", time.monotonic() + WAIT),
                         (301, b""))


class RouterPortsTest(unittest.TestCase):
    """RouterPorts' own rules, with stand-in ways: nothing is sent anywhere."""

    def router(self, *ways, **kw) -> pcr.RouterPorts:
        router = pcr.RouterPorts([5050, 5051], gateway="192.168.1.1", **kw)
        patches = [mock.patch.object(pcr, "lan_address", return_value="192.168.1.20"),
                   mock.patch.object(pcr.RouterPorts, "_search", lambda *_: iter(ways))]
        for patch in patches:
            patch.start()
            self.addCleanup(patch.stop)
        self.addCleanup(router.close)
        return router

    def test_close_removes_every_mapping_it_made_and_nothing_else(self):
        way = FakeWay(moved={5051: 40001})
        router = self.router(way)
        result = router.open()
        self.assertEqual(result.outcome, pcr.RouterOutcome.FORWARDED)
        self.assertEqual(result.forwarded, {5050: 5050, 5051: 40001})
        router.close()
        self.assertEqual([a for a in way.asked if a[0] == "remove"],
                         [("remove", 5050, 5050), ("remove", 5051, 40001)])
        router.close()   # twice is harmless and removes nothing more
        self.assertEqual(len([a for a in way.asked if a[0] == "remove"]), 2)

    def test_the_same_external_port_is_asked_for_with_a_finite_lease(self):
        way = FakeWay()
        self.router(way, lease=1234).open()
        self.assertEqual(way.asked[:2], [("forward", 5050, 5050, 1234), ("forward", 5051, 5051, 1234)])

    def test_all_or_none_a_refused_page_port_takes_the_rooms_back(self):
        refusing, working = FakeWay("PCP", refuse=(5051,)), FakeWay("UPnP")
        result = self.router(refusing, working).open()
        self.assertIn(("remove", 5050, 5050), refusing.asked)
        self.assertEqual((result.outcome, result.protocol), (pcr.RouterOutcome.FORWARDED, "UPnP"))

    def test_a_refusal_alone_is_the_result(self):
        result = self.router(FakeWay("UPnP", refuse=(5050,))).open()
        self.assertEqual((result.outcome, result.reason), (pcr.RouterOutcome.REFUSED, "port taken"))

    def test_a_refusal_for_want_of_a_public_address_is_no_public(self):
        result = self.router(FakeWay("NAT-PMP", refuse=(5050,), no_public=True, external_ip="")).open()
        self.assertEqual(result.outcome, pcr.RouterOutcome.NO_PUBLIC)
        result = self.router(FakeWay("UPnP", refuse=(5050,), external_ip="100.64.0.1")).open()
        self.assertEqual((result.outcome, result.external_ip),
                         (pcr.RouterOutcome.NO_PUBLIC, "100.64.0.1"))

    def test_no_way_is_no_answer(self):
        result = self.router().open()
        self.assertEqual(result.outcome, pcr.RouterOutcome.NO_ANSWER)

    def test_the_lease_is_renewed_before_it_runs_out_and_a_moved_port_is_told(self):
        way, told = FakeWay(moved={("renew", 5050): 5099}), []
        router = self.router(way, lease=2.0, on_change=told.append)
        router.open()
        deadline = time.monotonic() + WAIT
        while not told and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn(("renew", 5050, 5050, 2), way.asked)
        self.assertEqual(told[0].forwarded, {5050: 5099, 5051: 5051})
        router.close()
        self.assertIn(("remove", 5050, 5099), way.asked)

    def test_with_https_the_routers_port_80_leads_to_the_page_and_goes_with_the_rest(self):
        way = FakeWay()
        router = self.router(way, lease=1234, challenge=5051)
        result = router.open()
        self.assertEqual((result.outcome, result.port_80), (pcr.RouterOutcome.FORWARDED, "forwarded"))
        self.assertEqual(way.asked[2], ("forward", 5051, 80, 1234, "exact"))   # that port, or none
        self.assertEqual(result.forwarded, {5050: 5050, 5051: 5051})
        self.assertIn("; and its port 80 to the page, for https)", pcr.router_sentence(result))
        router.close()
        self.assertIn(("remove", 5051, 80), way.asked)
        refused = self.router(FakeWay(refuse=(80,)), challenge=5051).open()
        self.assertEqual((refused.outcome, refused.port_80), (pcr.RouterOutcome.FORWARDED, "port taken"))
        self.assertIn("; not its port 80 (port taken))", pcr.router_sentence(refused))

    def test_a_new_address_on_the_routers_internet_side_is_told(self):
        way, told = FakeWay(external_ip="11.0.0.1"), []
        router = self.router(way, lease=2.0, on_change=told.append)
        router.open()
        way.external_ip = "11.0.0.9"   # the provider gave the home another address
        deadline = time.monotonic() + WAIT
        while not told and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual((told[0].external_ip, told[0].forwarded), ("11.0.0.9", {5050: 5050, 5051: 5051}))

    def test_pinholes_are_asked_alongside_kept_and_removed_with_the_mappings(self):
        hole, told = FakeWay("PCP", external_ip=STABLE), []
        pinholes = pcr.Pinholes([5050, 5051], STABLE, lease=2.0, gateway="fe80::1%eth0")
        for patch in (mock.patch.object(pcr.Pinholes, "_search", lambda *_: iter([hole])),
                      mock.patch.object(pcr, "read_routes", return_value=[])):
            patch.start()
            self.addCleanup(patch.stop)
        way = FakeWay()
        router = self.router(way, pinholes=pinholes, on_change=told.append)
        result = router.open()
        self.assertEqual((result.outcome, result.ipv6.outcome, result.ipv6.protocol),
                         (pcr.RouterOutcome.FORWARDED, pcr.RouterOutcome.FORWARDED, "PCP"))
        self.assertEqual((result.ipv6.lan_ip, result.ipv6.forwarded), (STABLE, {5050: 5050, 5051: 5051}))
        deadline = time.monotonic() + WAIT
        while ("renew", 5051, 5051, 2) not in hole.asked and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn(("renew", 5051, 5051, 2), hole.asked)   # before the 2 s lease ran out
        router.close()
        self.assertEqual([a for a in hole.asked if a[0] == "remove"],
                         [("remove", 5050, 5050), ("remove", 5051, 5051)])
        self.assertIn(("remove", 5050, 5050), way.asked)

    def test_a_router_with_no_ipv6_firewall_control_is_said_and_the_ipv4_answer_stands(self):
        pinholes = pcr.Pinholes([5050, 5051], STABLE, gateway="fe80::1%eth0")
        with mock.patch.object(pcr.Pinholes, "_search", lambda *_: iter([])), \
                mock.patch.object(pcr, "read_routes", return_value=[]):
            result = self.router(FakeWay(), pinholes=pinholes).open()
        self.assertEqual((result.outcome, result.ipv6.outcome),
                         (pcr.RouterOutcome.FORWARDED, pcr.RouterOutcome.NO_ANSWER))
        self.assertIn("no router answered about its IPv6 firewall", pcr.pinhole_sentence(result.ipv6))

    def test_closed_before_the_router_answers_maps_nothing(self):
        way = FakeWay()
        router = self.router(way)
        router.close()
        self.assertNotEqual(router.open().outcome, pcr.RouterOutcome.FORWARDED)
        self.assertEqual(way.asked, [])


class UpnpOptionTest(unittest.TestCase):
    """--upnp on the command line; off unless given."""

    def test_off_by_default_and_on_with_the_flag(self):
        self.assertFalse(pcr.Settings().upnp)
        self.assertFalse(pcr.settings_from(pcr.parse_args(["--port", "5050"]))[0].upnp)
        self.assertTrue(pcr.settings_from(pcr.parse_args(["--port", "5050", "--upnp"]))[0].upnp)

    def test_help_says_what_it_does(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            pcr.parse_args(["--help"])
        self.assertIn("ask the router to forward the room's port with UPnP / NAT-PMP / PCP",
                      " ".join(out.getvalue().split()))

    def test_a_room_only_this_machine_reaches_asks_no_router(self):
        heard = []
        with mock.patch.object(pcr, "RouterPorts") as router:   # were it asked, nothing is sent
            self.assertIsNone(pcr.ask_router(pcr.Settings(), ("127.0.0.1", 5050), None,
                                             lambda *said: heard.append(said)))
        router.assert_not_called()
        self.assertEqual(heard, [])


class RouterForwardingTest(unittest.TestCase):
    """--upnp against miniupnpd, the router daemon of OpenWrt and many home routers,
    in a home network the test builds (needs root and network namespaces)."""

    def setUp(self):
        if reason := home_network_missing():
            self.skipTest(reason)

    def home(self, **kw) -> HomeNetwork:
        return HomeNetwork(self, **kw)

    def chat_through_the_router(self, home: HomeNetwork, port: int = 5050) -> None:
        ann = home.at_home("ann")
        ann.read_until("[1 person is online]\n")
        friend = home.friend(port)
        friend.read_until("[2 people are online]\n")
        friend.type("hello from outside\n")
        ann.read_until("friend: hello from outside\n")
        ann.type("welcome in\n")
        friend.read_until("ann: welcome in\n")

    def test_a_friend_on_the_internet_joins_through_the_router_and_the_page_is_forwarded(self):
        home = self.home()
        home.start_router()
        room = home.room("--upnp", "--web-port", "5051")
        said = printed_until(room, "over the internet:  11.0.0.1:5050, the page on port 5051 "
                                   "(your router forwards both: ", ROUTER_SAYS)
        self.assertRegex(said, rf"forwards both: {EITHER_WAY}\)")
        self.assertEqual(sorted(home.mappings()), [(5050, home.LAN_IP, 5050), (5051, home.LAN_IP, 5051)])
        self.assertEqual(home.public_address(), "11.0.0.1")
        self.chat_through_the_router(home)
        self.assertRegex(home.reaches_from_wan(5051, "/"), r"^200 \d{4,}$")

    def test_nothing_is_forwarded_after_the_room_stops(self):
        home = self.home()
        home.start_router()
        home.run("lan", "upnpc", "-u", home.description_url, "-e", "not ours", "-a", home.LAN_IP,
                 "6000", "6000", "TCP")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with self.subTest(signal=sig.name):
                room = home.room("--upnp", "--web-port", "5051")
                printed_until(room, "(your router forwards both: ", ROUTER_SAYS)   # EITHER_WAY
                self.assertEqual(home.reaches_from_wan(5050), "connected")
                room.send_signal(sig)
                self.assertEqual(room.wait(WAIT * 2), 0)
                self.assertEqual(home.mappings(), [(6000, home.LAN_IP, 6000)])   # not ours: kept
                self.assertNotIn("5050", home.nat_rules())
                self.assertEqual(home.reaches_from_wan(5050), "refused")
                self.assertEqual(home.reaches_from_wan(5051), "refused")

    def test_a_natpmp_and_pcp_router_without_upnp(self):
        home = self.home()
        home.start_router(upnp=False)
        room = home.room("--upnp")
        printed_until(room, "over the internet:  11.0.0.1:5050 (your router forwards it: PCP)",
                      ROUTER_SAYS)
        self.assertIn(f"dnat ip to {home.LAN_IP}:5050", home.nat_rules())
        self.assertEqual(home.public_address(), "11.0.0.1")
        self.chat_through_the_router(home)
        room.send_signal(signal.SIGTERM)
        self.assertEqual(room.wait(WAIT * 2), 0)
        self.assertNotIn("dnat", home.nat_rules())

    def test_natpmp_alone_maps_renews_and_removes(self):
        home = self.home()
        home.start_router(upnp=False)
        mapper = home.start("lan", sys.executable, "-c", MAPPER, HERE, "3", "NAT-PMP", "5",
                            name="mapper")
        home.printed(mapper, "over the internet:  11.0.0.1:5050 (your router forwards it: NAT-PMP)",
                     ROUTER_SAYS)
        time.sleep(4)   # past the 3 s lease: renewed, or the router would have dropped it
        self.assertIn(f"dnat ip to {home.LAN_IP}:5050", home.nat_rules())
        home.printed(mapper, "closed", ROUTER_SAYS)
        self.assertNotIn("dnat", home.nat_rules())

    def test_a_upnp_router_without_natpmp(self):
        home = self.home()
        home.start_router(natpmp=False)
        room = home.room("--upnp")
        printed_until(room, "over the internet:  11.0.0.1:5050 (your router forwards it: UPnP)",
                      ROUTER_SAYS)
        self.assertEqual(home.mappings(), [(5050, home.LAN_IP, 5050)])
        listed = home.run("lan", "upnpc", "-u", home.description_url, "-l").stdout
        self.assertIn("'PrivateChatRoom'", listed)
        self.chat_through_the_router(home)
        room.send_signal(signal.SIGTERM)
        self.assertEqual(room.wait(WAIT * 2), 0)
        self.assertEqual(home.mappings(), [])

    def test_the_upnp_lease_is_renewed_before_it_runs_out(self):
        home = self.home()
        home.start_router(natpmp=False)
        mapper = home.start("lan", sys.executable, "-c", MAPPER, HERE, "3", "UPnP", "6",
                            name="mapper")
        home.printed(mapper, "(your router forwards it: UPnP)", ROUTER_SAYS)
        time.sleep(4)
        self.assertEqual(home.mappings(), [(5050, home.LAN_IP, 5050)])
        lease = re.search(r"'PrivateChatRoom' '' (\d+)",
                          home.run("lan", "upnpc", "-u", home.description_url, "-l").stdout)
        self.assertLessEqual(int(lease.group(1)), 3)   # finite, as asked
        home.printed(mapper, "closed", ROUTER_SAYS)
        self.assertEqual(home.mappings(), [])

    def test_a_port_forwarded_to_another_machine_is_left_alone(self):
        home = self.home(other_host=True)
        home.start_router()
        home.run("other", "upnpc", "-u", home.description_url, "-e", "someone else", "-a",
                 home.OTHER_IP, "8000", "5050", "TCP")
        room = home.room("--upnp")
        said = printed_until(room, "here)", ROUTER_SAYS)
        port = int(re.search(r"over the internet:  11\.0\.0\.1:(\d+) \(your router forwards it: "
                             rf"{EITHER_WAY}; its port \1 leads to 5050 here\)", said).group(1))
        self.assertNotEqual(port, 5050)
        self.assertIn((port, home.LAN_IP, 5050), home.mappings())
        self.chat_through_the_router(home, port)
        room.send_signal(signal.SIGTERM)
        self.assertEqual(room.wait(WAIT * 2), 0)
        self.assertEqual(home.mappings(), [(5050, home.OTHER_IP, 8000)])

    def test_a_router_with_a_shared_address_gets_the_cgnat_sentence(self):
        home = self.home(wan_ip="100.64.0.1")
        log_path = home.start_router()
        home.printed(log_path, "Port forwarding is impossible")   # what miniupnpd makes of it
        room = home.room("--upnp")
        said = printed_until(room, "probably CGNAT or a second router", ROUTER_SAYS)
        self.assertIn("Friends outside cannot reach this room that way", said)
        self.assertIn("ask your provider for a public IPv4 address", said)
        self.assertEqual(home.mappings(), [])
        home.at_home("ann").read_until("[1 person is online]\n")   # the room is open all the same

    def test_without_a_router_daemon_the_sentence_comes_within_10_s_and_the_room_stays_open(self):
        home = self.home()
        started = time.monotonic()
        room = home.room("--upnp")
        printed_until(room, "no router answered UPnP, NAT-PMP or PCP: forward TCP port 5050 to "
                            f"{home.LAN_IP} by hand (MAC ", 10)
        self.assertLess(time.monotonic() - started, 10)
        home.at_home("ann").read_until("[1 person is online]\n")
        self.assertIsNone(room.poll())

    def hostile_host(self, home: HomeNetwork) -> tuple[str, str]:
        """The other LAN host answering SSDP badly, and a trap on the host its LOCATION
        names (the friend's); the paths of what each prints."""
        trap = home.start("wan", sys.executable, "-c", TRAP, "8080", name="trap")
        hostile = home.start("other", sys.executable, "-c", HOSTILE_HOST, home.friend_ip,
                             home.OTHER_IP, name="hostile")
        home.printed(trap, "ready")
        home.printed(hostile, "ready")
        return trap, hostile

    def test_hostile_answers_on_the_lan_are_ignored(self):
        home = self.home(other_host=True)
        trap, hostile = self.hostile_host(home)
        room = home.room("--upnp")
        printed_until(room, "no router answered UPnP, NAT-PMP or PCP", 10)
        cut = re.search(r"big: cut after (\d+) bytes", home.printed(hostile, "big: "))
        self.assertLess(int(cut.group(1)), 10 << 20)
        room.send_signal(signal.SIGTERM)
        _, err = room.communicate(timeout=WAIT * 2)
        self.assertIn(f"ignored a UPnP answer from {home.OTHER_IP}: its description is at "
                      f"http://{home.friend_ip}:8080/rootDesc.xml", err)
        self.assertIn(f"ignored the UPnP description at http://{home.OTHER_IP}:8081/big.xml "
                      f"(an answer of more than 65536 bytes)", err)
        self.assertNotIn("contacted", home.printed(trap, "ready"))

    def test_the_real_router_is_used_beside_a_hostile_host(self):
        home = self.home(other_host=True)
        home.start_router(natpmp=False)
        trap, _ = self.hostile_host(home)
        room = home.room("--upnp")
        printed_until(room, "over the internet:  11.0.0.1:5050 (your router forwards it: UPnP)",
                      ROUTER_SAYS)
        self.chat_through_the_router(home)
        self.assertNotIn("contacted", home.printed(trap, "ready"))

    def test_without_upnp_nothing_asks_the_router(self):
        home = self.home()
        ear = home.start("router", sys.executable, "-c", ROUTER_EAR, home.ROUTER_IP, name="ear")
        home.printed(ear, "ready")
        room = home.room()
        printed_until(room, "Ctrl+C stops the server.")
        time.sleep(pcr.ROUTER_WAIT + 0.5)
        room.send_signal(signal.SIGTERM)
        self.assertEqual(room.wait(WAIT * 2), 0)
        self.assertNotIn("heard", home.printed(ear, "ready"))
        room = home.room("--upnp")   # the ear hears, when there is something to hear
        home.printed(ear, "heard on 5351 from 192.168.77.20")
        home.printed(ear, "heard on 1900 from 192.168.77.20")


class RouterPinholeTest(unittest.TestCase):
    """--upnp over IPv6 (issue 34): the router's firewall lets friends with IPv6 in, in a
    home network with IPv6 the tests build: miniupnpd with IGDv2 and PCP, a stateful
    firewall dropping new inbound IPv6, a friend outside with IPv6 (needs root and
    network namespaces)."""

    def setUp(self):
        if reason := home_network_missing():
            self.skipTest(reason)

    def home(self, **kw) -> HomeNetwork:
        return HomeNetwork(self, ipv6=True, **kw)

    def chat_over_ipv6(self, home: HomeNetwork) -> None:
        """ann at home (over IPv4, on the room's one dual-stack socket) and a friend outside
        over IPv6 chat; the friend opens the page and speaks from it too."""
        ann = home.at_home("ann")
        ann.read_until("[1 person is online]\n")
        friend = home.friend(5050, over_ipv6=True)
        friend.read_until("[2 people are online]\n")
        friend.type("hello over IPv6\n")
        ann.read_until("friend: hello over IPv6\n")
        ann.type("welcome in\n")
        friend.read_until("ann: welcome in\n")
        self.assertRegex(home.reaches_from_wan(5051, "/", home.LAN_IP6), r"^200 \d{4,}$")
        if ws_connect is not None:
            said = home.run("wan", sys.executable, "-c", PAGE_GUEST, f"[{home.LAN_IP6}]:5051",
                            "phone", "from my phone").stdout
            self.assertIn("said", said)
            ann.read_until("phone: from my phone\n")

    def test_without_upnp_the_firewall_keeps_friends_with_ipv6_out_and_the_banner_says_so(self):
        home = self.home()
        home.start_router()
        room = home.room("--web-port", "5051")
        banner = printed_until(room, "Ctrl+C stops the server.")
        ip = home.LAN_IP6
        self.assertIn(f"    over the internet:  http://[{ip}]:5051/ (IPv6)\n", banner)
        self.assertIn(f"\n                        [{ip}]:5050 (IPv6, for a terminal: the App cannot "
                      f"use it, its address box takes IPv4 only)\n", banner)
        self.assertIn("  IPv6:               your router's firewall must let TCP ports 5050 and 5051 "
                      "in (--upnp, or by hand on the router)\n", banner)
        self.assertIn("same network:       http://192.168.77.20:5051/", banner)   # the code's link
        self.assertEqual(home.reaches_from_wan(5050, host=ip), "timeout")
        self.assertEqual(home.reaches_from_wan(5050, host=ip, role="lan"), "connected")   # it listens
        home.at_home("ann").read_until("[1 person is online]\n")   # and over IPv4 too
        four = home.room("--host", "0.0.0.0", "--port", "5060")   # IPv4 alone, as asked
        self.assertNotIn("IPv6", printed_until(four, "Ctrl+C stops the server."))
        self.assertEqual(home.reaches_from_wan(5060, host=ip, role="lan"), "refused")

    def test_with_upnp_a_friend_with_ipv6_chats_and_opens_the_page_and_the_pinholes_go_at_the_stop(self):
        home = self.home()
        home.start_router()
        room = home.room("--upnp", "--web-port", "5051")
        said = printed_until(room, "your router's IPv6 firewall lets TCP ports 5050 and 5051 in to "
                                   f"{home.LAN_IP6} (", ROUTER_SAYS)
        self.assertRegex(said, rf"in to {re.escape(home.LAN_IP6)} \({EITHER_WAY}\)")
        self.assertEqual(home.pinholes(), [5050, 5051])
        self.chat_over_ipv6(home)
        room.send_signal(signal.SIGTERM)
        self.assertEqual(room.wait(WAIT * 2), 0)
        self.assertEqual(home.pinholes(), [])
        self.assertEqual(home.reaches_from_wan(5051, host=home.LAN_IP6), "timeout")

    def test_a_router_with_upnp_alone_opens_renews_and_removes_igdv2_pinholes(self):
        home = self.home()
        home.start_router(natpmp=False)
        mapper = home.start("lan", sys.executable, "-c", MAPPER6, HERE, home.LAN_IP6, "3", "UPnP,PCP",
                            "6", name="mapper")
        home.printed(mapper, f"your router's IPv6 firewall lets TCP port 5050 in to {home.LAN_IP6} "
                             f"(UPnP)", ROUTER_SAYS)
        self.assertEqual(home.pinholes(), [5050])
        time.sleep(4)   # past the 3 s lease: renewed, or the router would have closed it
        self.assertEqual(home.pinholes(), [5050])
        home.printed(mapper, "closed", ROUTER_SAYS)
        self.assertEqual(home.pinholes(), [])

    def test_behind_cgnat_a_friend_with_ipv6_still_joins(self):
        home = self.home(wan_ip="100.64.0.1")
        home.start_router()
        room = home.room("--upnp", "--web-port", "5051")
        ip = home.LAN_IP6
        said = printed_until(room, "(for a terminal).\n", ROUTER_SAYS)
        self.assertIn("  IPv6:               asking your router's firewall to let TCP ports 5050 and "
                      "5051 in…\n", said)
        self.assertIn("probably CGNAT or a second router", said)
        self.assertIn(f"Friends on the same network still can join; friends with IPv6 can join at "
                      f"http://[{ip}]:5051/ (for a browser or a phone) or [{ip}]:5050 (for a "
                      f"terminal).\n", said)
        self.assertEqual(home.pinholes(), [5050, 5051])
        self.chat_over_ipv6(home)


# ---------------------------------------------------------------------------
# 9. HTTPS for the page (ACME): the pure parts against published vectors and
#    openssl, the keeper with a stand-in CA, then the whole path against pebble
# ---------------------------------------------------------------------------

# RFC 6979 A.2.5: the P-256 key, its public key, and ECDSA-SHA256 of "sample" and "test".
RFC6979_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
RFC6979_PUBLIC = ("60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"
                  "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299")
RFC6979_SIGNATURES = {
    b"sample": ("EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
                "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8"),
    b"test": ("F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367",
              "019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083")}
NO_OPENSSL = "openssl is not on PATH (tests only use it, to check the room's own code)"


def openssl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    """openssl with `args`, bounded; SkipTest where there is none."""
    if not shutil.which("openssl"):
        raise unittest.SkipTest(NO_OPENSSL)
    return subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60)


def der_signature(raw: bytes) -> bytes:
    """A JWS signature (r and s, 32 bytes each) as openssl reads ECDSA: DER (r, s)."""
    return pcr.der(0x30, pcr.der_int(int.from_bytes(raw[:32], "big")),
                   pcr.der_int(int.from_bytes(raw[32:], "big")))


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class HttpsPartsTest(unittest.TestCase):
    """The key, ECDSA, JWS, DER, the CSR and the PEM key: the room's own code,
    checked against RFC 6979's vectors and against openssl."""

    def setUp(self):
        if pcr.ssl is None:
            self.skipTest("no ssl module")
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def read(self, name: str) -> str:
        with open(self.path(name)) as f:
            return f.read()

    def write(self, name: str, data: bytes | str) -> str:
        with open(self.path(name), "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        return self.path(name)

    def test_the_public_key_and_signatures_are_rfc_6979_a_2_5s(self):
        self.assertEqual(pcr.p256_public(RFC6979_KEY).hex().upper(), RFC6979_PUBLIC)
        for message, (r, s) in RFC6979_SIGNATURES.items():
            with self.subTest(message=message):
                self.assertEqual(pcr.ecdsa_sign(RFC6979_KEY, message), (int(r, 16), int(s, 16)))
        public = pcr.jwk(RFC6979_KEY)
        self.assertEqual((unb64url(public["x"]) + unb64url(public["y"])).hex().upper(),
                         RFC6979_PUBLIC)
        canonical = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (public["x"], public["y"])
        self.assertEqual(pcr.jwk_thumbprint(public),   # RFC 7638 §3: members sorted, no spaces
                         pcr.b64url(hashlib.sha256(canonical.encode()).digest()))

    def test_new_keys_are_on_the_curve_and_differ(self):
        keys = {pcr.p256_key() for _ in range(3)}
        self.assertEqual(len(keys), 3)
        b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
        for key in keys:
            self.assertTrue(1 <= key < pcr.P256_N)
            x, y = (int.from_bytes(half, "big") for half in (pcr.p256_public(key)[:32],
                                                             pcr.p256_public(key)[32:]))
            self.assertEqual(y * y % pcr.P256_P, (x ** 3 - 3 * x + b) % pcr.P256_P)

    def test_a_jws_verifies_with_openssl(self):
        key = pcr.p256_key()
        self.write("key.pem", pcr.key_pem(key))
        public = openssl("ec", "-in", self.path("key.pem"), "-pubout")
        self.assertEqual(public.returncode, 0, public.stderr)
        self.write("public.pem", public.stdout)
        signed = json.loads(pcr.jws(key, {"nonce": "n0nce", "url": "https://ca.example/x"},
                                    {"termsOfServiceAgreed": True}))
        self.assertEqual(json.loads(unb64url(signed["protected"])),
                         {"alg": "ES256", "nonce": "n0nce", "url": "https://ca.example/x"})
        self.assertEqual(json.loads(unb64url(signed["payload"])), {"termsOfServiceAgreed": True})
        raw = unb64url(signed["signature"])
        self.assertEqual(len(raw), 64)   # RFC 7518 §3.4: r and s, 32 bytes each
        message = f"{signed['protected']}.{signed['payload']}".encode()
        self.write("signature.der", der_signature(raw))
        checked = openssl("dgst", "-sha256", "-verify", self.path("public.pem"), "-signature",
                          self.path("signature.der"), data=message)
        self.assertEqual(checked.stdout.strip(), b"Verified OK", checked.stderr)
        wrong = openssl("dgst", "-sha256", "-verify", self.path("public.pem"), "-signature",
                        self.path("signature.der"), data=message + b"!")
        self.assertNotEqual(wrong.returncode, 0)
        self.assertEqual(json.loads(pcr.jws(key, {"kid": "k"}, None))["payload"], "")   # POST-as-GET

    def test_the_certificate_request_verifies_with_openssl_and_names_the_address_alone(self):
        for ip, shown in (("11.0.0.1", "IP Address:11.0.0.1"),
                          ("2a0f:77::20", "IP Address:2A0F:77:0:0:0:0:0:20")):
            with self.subTest(ip=ip):
                key = pcr.p256_key()
                self.write("csr.der", pcr.certificate_request(key, ip))
                checked = openssl("req", "-inform", "DER", "-in", self.path("csr.der"), "-verify",
                                  "-noout", "-text")
                self.assertEqual(checked.returncode, 0, checked.stderr)
                self.assertIn(b"verify OK", checked.stderr)
                text = checked.stdout.decode()
                self.assertIn("X509v3 Subject Alternative Name: critical", text)
                self.assertEqual(re.findall(r"(?:IP Address|DNS):\S+", text), [shown])
                self.assertRegex(text, r"Subject: *\n")   # empty: the address is the name
                self.assertIn("ASN1 OID: prime256v1", text)
                self.assertIn(pcr.p256_public(key)[:8].hex(":"), text.replace("\n", "").replace(" ", ""))

    def test_the_pem_key_loads_in_ssl_and_comes_back(self):
        key = pcr.p256_key()
        self.write("key.pem", pcr.key_pem(key))
        self.assertEqual(pcr.key_from_pem(self.read("key.pem")), key)
        made = openssl("req", "-x509", "-key", self.path("key.pem"), "-out", self.path("cert.pem"),
                       "-days", "1", "-subj", "/CN=room", "-addext", "subjectAltName=IP:11.0.0.1")
        self.assertEqual(made.returncode, 0, made.stderr)
        context = pcr.ssl.SSLContext(pcr.ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.path("cert.pem"), self.path("key.pem"))
        both = self.write("both.pem", self.read("cert.pem") + pcr.key_pem(key))
        pcr.ssl.SSLContext(pcr.ssl.PROTOCOL_TLS_SERVER).load_cert_chain(both)   # as CertificateStore keeps it
        with self.assertRaises(ValueError):
            pcr.key_from_pem(self.read("cert.pem"))

    def test_der_as_x690_writes_it(self):
        self.assertEqual(pcr.der(0x04, b"x" * 127)[:2], b"\x04\x7f")
        self.assertEqual(pcr.der(0x04, b"x" * 128)[:3], b"\x04\x81\x80")
        self.assertEqual(pcr.der(0x04, b"x" * 300)[:4], b"\x04\x82\x01\x2c")
        self.assertEqual(pcr.der_int(0), b"\x02\x01\x00")
        self.assertEqual(pcr.der_int(0x7F), b"\x02\x01\x7f")
        self.assertEqual(pcr.der_int(0x80), b"\x02\x02\x00\x80")
        self.assertEqual(pcr.der_oid("1.2.840.10045.2.1"), bytes.fromhex("06072a8648ce3d0201"))
        self.assertEqual(pcr.der_read(pcr.der(0x30, pcr.der_int(5), pcr.der(0x04, b"x" * 200))),
                         [(0x30, pcr.der_int(5) + pcr.der(0x04, b"x" * 200))])
        for bent in (b"\x30", b"\x30\x05abc", b"\x30\x85\x01\x02\x03\x04\x05"):
            with self.assertRaises(ValueError):
                pcr.der_read(bent)

    def test_what_a_certificate_says_is_read_as_openssl_reads_it(self):
        cert = self.path("cert.pem")
        made = openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                       "-nodes", "-keyout", self.path("key.pem"), "-out", cert, "-days", "2",
                       "-subj", "/CN=room", "-addext",
                       "subjectAltName=IP:11.0.0.1,DNS:room.example,IP:2a0f:77::20")
        self.assertEqual(made.returncode, 0, made.stderr)
        with open(cert) as f:
            facts = pcr.certificate_facts(pcr.pem_blocks(f.read(), "CERTIFICATE")[0])
        self.assertEqual(facts.addresses, ("11.0.0.1", "2a0f:77::20"))
        dates = openssl("x509", "-in", cert, "-noout", "-startdate", "-enddate").stdout.decode()
        start, end = (pcr.ssl.cert_time_to_seconds(line.split("=", 1)[1]) for line in dates.split("\n")[:2])
        self.assertEqual((facts.not_before, facts.not_after), (start, end))
        self.assertEqual(facts.renew_at, start + (end - start) * 2 / 3)
        with self.assertRaises(ValueError):
            pcr.certificate_facts(b"\x30\x03\x02\x01\x00")

    def test_a_problem_document_is_one_sentence_with_its_detail(self):
        kind, text = pcr.problem_text({
            "type": "urn:ietf:params:acme:error:rateLimited",
            "detail": "too many certificates (5) already issued\x1b[31m for this exact set",
            "subproblems": [{"detail": "see https://letsencrypt.org/docs/rate-limits/"}, "bent"]})
        self.assertEqual(kind, "rateLimited")
        self.assertEqual(text, "rateLimited: too many certificates (5) already issued for this exact "
                               "set; see https://letsencrypt.org/docs/rate-limits/")
        self.assertEqual(pcr.problem_text({}), ("", "no reason given"))
        self.assertEqual(pcr.retry_after({"Retry-After": "120"}), 120.0)
        later = email.utils.formatdate(time.time() + 3600, usegmt=True)
        self.assertAlmostEqual(pcr.retry_after({"Retry-After": later}), 3600, delta=5)
        self.assertEqual(pcr.retry_after({"Retry-After": "soon"}), 0.0)
        self.assertEqual(pcr.retry_after({}), 0.0)

    def test_the_address_to_certify_is_public_and_the_routers_when_it_forwards(self):
        forwarded = router_result(pcr.RouterOutcome.FORWARDED, external_ip="11.0.0.1",
                                  forwarded={5050: 5050})
        cgnat = router_result(pcr.RouterOutcome.NO_PUBLIC, external_ip="100.64.0.1")
        double = router_result(pcr.RouterOutcome.NO_PUBLIC, external_ip="192.168.1.1")
        refused = router_result(pcr.RouterOutcome.REFUSED, reason="no")
        self.assertEqual(pcr.certificate_address(forwarded, None, "11.9.9.9"), ("11.0.0.1", ""))
        self.assertEqual(pcr.certificate_address(cgnat, None, "11.9.9.9"), (None, pcr.HTTPS_NO_PUBLIC))
        self.assertEqual(pcr.certificate_address(double, "11.9.9.9", None), ("11.9.9.9", ""))
        self.assertEqual(pcr.certificate_address(refused, None, "11.9.9.9"), ("11.9.9.9", ""))
        self.assertEqual(pcr.certificate_address(None, None, None), (None, pcr.HTTPS_UNKNOWN))
        self.assertEqual(pcr.certificate_address(None, None, "2a0f:77::20"), ("2a0f:77::20", ""))
        self.assertIsNone(pcr.certificate_address(None, None, "fd00::20")[0])   # a ULA: private
        ip, why = pcr.certificate_address(None, None, "192.168.1.20")
        self.assertIsNone(ip)
        self.assertEqual(why, "192.168.1.20 is not an address on the internet; nothing was sent to a "
                              "certificate authority, and the page stays on http")
        self.assertIn("probably CGNAT", pcr.HTTPS_NO_PUBLIC)

    @unittest.skipIf(WINDOWS, "Windows keeps no POSIX modes")
    def test_the_folder_is_0700_its_files_0600_and_a_certificate_is_kept_whole(self):
        store = pcr.CertificateStore("https://acme.example:14000/dir", self.path("kept"))
        key = store.account_key()
        self.assertEqual(store.account_key(), key)   # made once, then read
        self.assertIsNone(store.saved())
        cert_key = pcr.p256_key()
        self.write("key.pem", pcr.key_pem(cert_key))
        openssl("req", "-x509", "-key", self.path("key.pem"), "-out", self.path("cert.pem"), "-days",
                "1", "-subj", "/CN=room", "-addext", "subjectAltName=IP:11.0.0.1")
        path, facts = store.keep(self.read("cert.pem"), cert_key)
        self.assertEqual(store.saved(), (path, facts))
        self.assertEqual(facts.addresses, ("11.0.0.1",))
        self.assertEqual(os.path.dirname(path), os.path.join(self.path("kept"), "acme.example_14000"))
        for folder in (self.path("kept"), os.path.dirname(path)):
            self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode), 0o700)
        self.assertEqual(sorted(os.listdir(os.path.dirname(path))), ["account.key", "certificate.pem"])
        for name in os.listdir(os.path.dirname(path)):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(os.path.dirname(path), name)).st_mode),
                             0o600)
        pcr.ssl.SSLContext(pcr.ssl.PROTOCOL_TLS_SERVER).load_cert_chain(path)


class StandInCa:
    """AcmeClient.certificate() as a CA would answer it, signed by openssl with a CA of
    the test's own, for `days` from now; or each of `problems` (AcmeError) in turn
    first.  then() is called as a certificate is handed over."""

    def __init__(self, folder: str, days: int = 3):
        self.folder, self.days, self.orders, self.problems = folder, days, [], []
        self.then: Callable[[], None] = lambda: None
        self.ca, self.ca_key = os.path.join(folder, "ca.pem"), os.path.join(folder, "ca.key")
        made = openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                       "-nodes", "-keyout", self.ca_key, "-out", self.ca, "-days", "9",
                       "-subj", "/CN=stand-in CA",   # a CA's key usage: Python 3.13 checks it
                       "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        assert made.returncode == 0, made.stderr

    def certificate(self, client, ip: str, key: int, answer) -> str:
        self.orders.append(ip)
        answer("t0ken", "t0ken.thumbprint")
        answer("t0ken", None)
        if self.problems:
            raise self.problems.pop(0)
        request = os.path.join(self.folder, "request.der")
        with open(request, "wb") as f:
            f.write(pcr.certificate_request(key, ip))
        signed = openssl("x509", "-req", "-inform", "DER", "-in", request, "-CA", self.ca,
                         "-CAkey", self.ca_key, "-days", str(self.days), "-copy_extensions", "copy",
                         "-set_serial", str(len(self.orders)))
        assert signed.returncode == 0, signed.stderr
        self.then()
        with open(self.ca) as f:
            return signed.stdout.decode() + f.read()


class PageCertificateTest(WebCase):
    """PageCertificate with a stand-in CA and a clock of the test's: got, put in place,
    kept and reused, renewed at two thirds, failures said and tried again with backoff,
    a new address, a certificate that runs out."""

    LAN = "192.168.1.20:5051"

    def setUp(self):
        super().setUp()
        if pcr.ssl is None:
            self.skipTest("no ssl module")
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ca = StandInCa(self.dir)
        patch = mock.patch.object(pcr.AcmeClient, "certificate",
                                  lambda client, *args: self.ca.certificate(client, *args))
        patch.start()
        self.addCleanup(patch.stop)
        self.now = time.time()
        self.said: list[tuple[str, bool]] = []
        self.links: list[tuple[str | None, str | None]] = []
        self.changed = threading.Condition()
        self.start(https=True, acme_directory="https://ca.test/dir")

    def keeper(self) -> pcr.PageCertificate:
        def said(sentence: str, warning: bool) -> None:
            with self.changed:
                self.said.append((sentence, warning))
                self.changed.notify_all()

        def certified(ip: str | None, link: str | None) -> None:
            with self.changed:
                self.links.append((ip, link))
                self.changed.notify_all()
        keeper = pcr.PageCertificate(self.server.settings, self.server, self.LAN, said, certified,
                                     pcr.CertificateStore("https://ca.test/dir", self.dir),
                                     lambda: self.now)
        self.addCleanup(keeper.close)
        return keeper

    def until(self, done: Callable[[], bool], what: str) -> None:
        with self.changed:
            self.assertTrue(self.changed.wait_for(done, WAIT), f"no {what}: {self.said}")

    def said_with(self, words: str, warning: bool = False) -> str:
        self.until(lambda: any(words in text and w == warning for text, w in self.said), words)
        return next(text for text, w in self.said if words in text)

    def served(self) -> bytes:
        """The certificate the page's port shows over TLS (checked against the stand-in CA)."""
        context = pcr.ssl.create_default_context(cafile=self.ca.ca)
        with socket.create_connection(("127.0.0.1", self.web), WAIT) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)

    def test_a_certificate_is_got_put_in_place_kept_and_reused_after_a_restart(self):
        link = f"http://127.0.0.1:{self.web}/"
        self.keeper().address("127.0.0.1", link=link)
        said = self.said_with("is in place")
        self.assertRegex(said, r"^the page's certificate for 127\.0\.0\.1 is in place \(new from "
                               r"ca\.test, valid until .+; renewed from .+\)$")
        self.assertIn(("asking ca.test for a certificate for 127.0.0.1…", False), self.said)
        self.until(lambda: ("127.0.0.1", f"https://127.0.0.1:{self.web}/") in self.links, "https link")
        first = self.served()
        self.assertEqual(self.ca.orders, ["127.0.0.1"])
        self.assertEqual(self.on_loop(lambda: self.server.door.secure.answers), {})   # withdrawn
        self.said.clear()
        self.keeper().address("127.0.0.1", link=link)   # the room started again
        self.said_with("is in place (kept from before")
        self.assertEqual(self.ca.orders, ["127.0.0.1"])   # no new order
        self.assertEqual(self.served(), first)

    def test_renewal_at_two_thirds_and_failures_warn_and_back_off(self):
        keeper = self.keeper()
        keeper.address("127.0.0.1")
        self.said_with("is in place")
        first = self.served()
        self.ca.then = lambda: setattr(self, "now", time.time())   # its dates are the real clock's
        self.now = time.time() + 2 * 86400 + 60   # past two thirds of 3 days
        keeper.address("127.0.0.1")
        self.until(lambda: len(self.ca.orders) == 2, "renewal")
        self.until(lambda: self.served() != first, "the new certificate served")
        self.said_with("in place (new from ca.test")
        self.ca.then = lambda: None
        self.now = time.time() + 2 * 86400 + 120
        self.ca.problems = [pcr.AcmeError("the certificate authority at ca.test said no: it has "
                                          "given this address or account too many certificates "
                                          "lately (rateLimited: slow down)", "rateLimited")] * 3
        keeper.address("127.0.0.1")
        warning = self.said_with("could not be renewed", warning=True)
        self.assertRegex(warning, r"^the page's certificate could not be renewed \(no certificate "
                                  r"for 127\.0\.0\.1: the certificate authority at ca\.test said no: "
                                  r".+ \(rateLimited: slow down\); trying again in 5 minutes\); it is "
                                  r"valid until .+$")
        self.now += 200   # before the next try: nothing asked
        keeper.address("127.0.0.1")
        time.sleep(0.3)
        self.assertEqual(len(self.ca.orders), 3)
        self.now += 101
        keeper.address("127.0.0.1")
        self.said_with("trying again in 10 minutes", warning=True)
        self.ca.problems = [pcr.AcmeError("busy", "rateLimited", retry_after=3 * 3600)]
        self.now += 601
        keeper.address("127.0.0.1")
        self.said_with("trying again in 3 hours", warning=True)   # Retry-After over backoff
        self.now += 86400   # past the end of its life
        keeper.address("127.0.0.1")
        self.said_with("has run out; the page is on http", warning=True)
        self.until(lambda: self.links[-1] == (None, None), "https withdrawn")
        self.assertIsNone(self.on_loop(lambda: self.server.door.secure.context))

    def test_the_ca_not_reaching_port_80_says_what_to_forward(self):
        self.ca.problems = [pcr.AcmeError("the certificate authority at ca.test could not check this "
                                          "room at 11.0.0.1 (connection: refused)", "connection",
                                          unreached=True, detail="connection: refused")]
        self.keeper().address("11.0.0.1")
        self.assertEqual(self.said_with("forward TCP port 80"),
                         "the certificate authority could not reach port 80 of 11.0.0.1 (connection: "
                         "refused): forward TCP port 80 to 192.168.1.20:5051 on your router; trying "
                         "again in 5 minutes; the page stays on http until then")
        self.assertEqual(self.links, [])

    def test_a_new_address_gets_a_new_certificate_and_no_address_gets_its_sentence(self):
        keeper = self.keeper()
        keeper.address(None, pcr.HTTPS_NO_PUBLIC)
        self.said_with("probably CGNAT")
        keeper.address("127.0.0.1")
        self.said_with("for 127.0.0.1 is in place")
        keeper.address("127.0.0.2")
        self.said_with("for 127.0.0.2 is in place")
        self.assertEqual(self.ca.orders, ["127.0.0.1", "127.0.0.2"])
        self.assertEqual(self.on_loop(lambda: self.server.door.secure.ip), "127.0.0.2")
        self.assertIn((None, None), self.links)   # the first withdrawn before the second came


class ScriptedCa:
    """An ACME CA of the test's own on 127.0.0.1, over https with `cert`: just enough of
    RFC 8555 to issue `chain`; it offers `profiles`, refuses the first `bad_nonces`
    POSTs with badNonce, says Retry-After: `wait` while it processes, answers a path in
    `problems` with that (status, problem, headers), and never answers one in `stall`.
    It records each POST: (path, protected header, payload)."""

    def __init__(self, case: unittest.TestCase, cert: str, key: str, chain: str,
                 profiles: dict | None = None, bad_nonces: int = 0, wait: str = "0"):
        self.chain, self.profiles, self.bad_nonces, self.wait = chain, profiles, bad_nonces, wait
        self.problems: dict[str, tuple] = {}
        self.stall: set[str] = set()
        self.posts: list[tuple[str, dict, object, float]] = []
        self.nonces = itertools.count(1)
        self.state = {"challenged": False, "finalized": 0}
        ca = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def answer(self, status: int, body: object = b"", **headers) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Replay-Nonce", f"nonce-{next(ca.nonces)}")
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_HEAD(self):
                self.answer(200)

            def do_GET(self):
                meta = {"profiles": ca.profiles} if ca.profiles else {}
                self.answer(200, {"newNonce": ca.url("/nonce"), "newAccount": ca.url("/account"),
                                  "newOrder": ca.url("/order"), "meta": meta})

            def do_POST(self):
                signed = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                payload = unb64url(signed["payload"]) if signed["payload"] else None
                ca.posts.append((self.path, json.loads(unb64url(signed["protected"])),
                                 json.loads(payload) if payload else None, time.monotonic()))
                if self.path in ca.stall:
                    time.sleep(1.5)
                    return
                if ca.bad_nonces:
                    ca.bad_nonces -= 1
                    return self.answer(400, {"type": pcr.ACME_ERROR + "badNonce", "detail": "stale"})
                if self.path in ca.problems:
                    status, problem, headers = ca.problems[self.path]
                    return self.answer(status, problem, **headers)
                status, body, headers = ca.reply(self.path)
                self.answer(status, body, **headers)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True   # a stalled answer does not hold the test's end
        context = pcr.ssl.SSLContext(pcr.ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        case.addCleanup(self.server.server_close)
        case.addCleanup(self.server.shutdown)
        self.directory = self.url("/dir")

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}{path}"

    def reply(self, path: str) -> tuple:
        """(status, body, headers) for a POST to `path`."""
        state = self.state
        if path == "/account":
            return 201, {"status": "valid"}, {"Location": self.url("/account/1")}
        if path == "/order":
            return 201, {"status": "pending", "authorizations": [self.url("/authz/1")],
                         "finalize": self.url("/finalize")}, {"Location": self.url("/order/1")}
        if path == "/authz/1":
            challenge = {"type": "http-01", "url": self.url("/chall/1"), "token": "t0k3n"}
            return 200, {"status": "valid" if state["challenged"] else "pending",
                         "challenges": [{"type": "dns-01", "token": "x"}, challenge]}, {}
        if path == "/chall/1":
            state["challenged"] = True
            return 200, {"status": "processing"}, {}
        if path == "/finalize":
            state["finalized"] = 1
            return 200, {"status": "processing"}, {"Retry_After": self.wait}
        if path == "/order/1":
            if not state["finalized"]:
                return 200, {"status": "ready", "finalize": self.url("/finalize")}, {}
            state["finalized"] += 1
            if state["finalized"] < 3:
                return 200, {"status": "processing"}, {"Retry_After": self.wait}
            return 200, {"status": "valid", "certificate": self.url("/cert/1")}, {}
        if path == "/cert/1":
            return 200, self.chain.encode(), {"Content_Type": "application/pem-certificate-chain"}
        return 404, {"type": pcr.ACME_ERROR + "malformed", "detail": "no such thing"}, {}


class AcmeClientTest(unittest.TestCase):
    """AcmeClient against a CA of the test's own: what it asks for and how it lives
    with the CA's answers (pebble, below, checks the signatures and the whole path)."""

    @classmethod
    def setUpClass(cls):
        [(cls.cert, cls.key)] = class_certificates(cls)
        with open(cls.cert) as f:
            cls.chain = f.read()

    def ca(self, **kw) -> ScriptedCa:
        patch = mock.patch.object(pcr, "ACME_POLL_FIRST", 0.05)   # Retry-After still holds
        patch.start()
        self.addCleanup(patch.stop)
        return ScriptedCa(self, self.cert, self.key, self.chain, **kw)

    def client(self, ca: ScriptedCa, ca_file: str | None = None) -> pcr.AcmeClient:
        return pcr.AcmeClient(ca.directory, self.cert if ca_file is None else ca_file, pcr.p256_key())

    def test_an_order_for_the_address_with_the_shortlived_profile_where_it_is_offered(self):
        ca = self.ca(profiles={"classic": "90 days", "shortlived": "160 hours"}, bad_nonces=2,
                     wait="1")
        answers = []
        client = self.client(ca)
        chain = client.certificate("11.0.0.1", pcr.p256_key(),
                                   lambda token, said: answers.append((token, said, ca.state["challenged"])))
        self.assertEqual(chain, self.chain)
        paths = [path for path, *_ in ca.posts]
        self.assertEqual(paths[:3], ["/account"] * 3)   # two badNonces survived
        order = next(payload for path, _, payload, _ in ca.posts if path == "/order")
        self.assertEqual(order, {"identifiers": [{"type": "ip", "value": "11.0.0.1"}],
                                 "profile": "shortlived"})
        first, *rest = [header for _, header, _, _ in ca.posts]
        self.assertIn("jwk", first)
        self.assertEqual({h.get("kid") for h in rest[2:]}, {ca.url("/account/1")})   # then kid
        self.assertEqual({h["alg"] for h in rest}, {"ES256"})
        self.assertEqual([h["nonce"] for h in rest], [f"nonce-{n}" for n in range(2, 2 + len(rest))])
        thumbprint = pcr.jwk_thumbprint(first["jwk"])
        self.assertEqual(answers, [("t0k3n", f"t0k3n.{thumbprint}", False), ("t0k3n", None, True)])
        finalize = next(payload for path, _, payload, _ in ca.posts if path == "/finalize")
        request = self.write_der(unb64url(finalize["csr"]))
        checked = openssl("req", "-inform", "DER", "-in", request, "-verify", "-noout", "-text")
        self.assertIn(b"IP Address:11.0.0.1", checked.stdout)
        polls = [at for path, _, _, at in ca.posts if path == "/order/1"][-3:]
        self.assertGreaterEqual(polls[2] - polls[1], 0.9)   # Retry-After: 1 honoured

    def write_der(self, data: bytes) -> str:
        path = os.path.join(os.path.dirname(self.cert), "request.der")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_without_profiles_no_profile_is_asked_for(self):
        ca = self.ca()
        self.client(ca).certificate("11.0.0.1", pcr.p256_key(), lambda *_: None)
        order = next(payload for path, _, payload, _ in ca.posts if path == "/order")
        self.assertNotIn("profile", order)

    def test_a_problem_is_one_sentence_with_its_detail_and_its_retry_after(self):
        ca = self.ca()
        ca.problems["/order"] = (429, {"type": pcr.ACME_ERROR + "rateLimited",
                                       "detail": "too many new orders recently"},
                                 {"Retry_After": "3600", "Content_Type": "application/problem+json"})
        with self.assertRaises(pcr.AcmeError) as caught:
            self.client(ca).certificate("11.0.0.1", pcr.p256_key(), lambda *_: None)
        e = caught.exception
        self.assertEqual((e.kind, e.retry_after, e.unreached), ("rateLimited", 3600.0, False))
        self.assertEqual(str(e), "the certificate authority at 127.0.0.1:%d said no: it has given this "
                                 "address or account too many certificates lately (rateLimited: too "
                                 "many new orders recently)" % ca.server.server_address[1])

    def test_a_failed_check_of_port_80_is_told_as_unreached(self):
        ca = self.ca()
        original = ca.reply

        def reply(path):
            if path == "/authz/1" and ca.state["challenged"]:
                return 200, {"status": "invalid", "challenges": [
                    {"type": "http-01", "token": "t0k3n", "status": "invalid", "error": {
                        "type": pcr.ACME_ERROR + "connection",
                        "detail": "11.0.0.1: Fetching http://11.0.0.1/.well-known/acme-challenge/"
                                  "t0k3n: Connection refused"}}]}, {}
            return original(path)
        ca.reply = reply
        with self.assertRaises(pcr.AcmeError) as caught:
            self.client(ca).certificate("11.0.0.1", pcr.p256_key(), lambda *_: None)
        self.assertTrue(caught.exception.unreached)
        self.assertEqual(caught.exception.detail, "connection: 11.0.0.1: Fetching http://11.0.0.1/"
                                                  ".well-known/acme-challenge/t0k3n: Connection refused")

    def test_every_request_has_a_time_out(self):
        ca = self.ca()
        ca.stall.add("/account")
        with mock.patch.object(pcr, "ACME_TIMEOUT", 0.3):
            started = time.monotonic()
            with self.assertRaises(pcr.AcmeError) as caught:
                self.client(ca).certificate("11.0.0.1", pcr.p256_key(), lambda *_: None)
        self.assertLess(time.monotonic() - started, 1.4)   # not the CA's 1.5 s
        self.assertRegex(str(caught.exception), r"^the certificate authority at 127\.0\.0\.1:\d+ "
                                                r"could not be reached \(.*timed out.*\)$")

    def test_a_ca_whose_certificate_is_not_trusted_says_so_and_how_to_trust_it(self):
        ca = self.ca()
        with self.assertRaises(pcr.AcmeError) as caught:
            self.client(ca, ca_file="").certificate("11.0.0.1", pcr.p256_key(), lambda *_: None)
        self.assertRegex(str(caught.exception), r"could not be trusted \(.+\); --acme-ca-file PEM "
                                                r"trusts another CA's certificate$")
        self.assertEqual(ca.posts, [])


# The friend's browser, run inside the friend's namespace (a program of its own: selenium
# drives Chromium there, with HOME's NSS database).  argv: the page's link, a profile
# folder, the name to join as, a photo to share.  It prints one line a step, then "done"
# and what it saw as JSON.
FRIEND_BROWSER = """
import json, shutil, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
link, profile, name, photo = sys.argv[1:5]
options = webdriver.ChromeOptions()
options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            f"--user-data-dir={profile}"):
    options.add_argument(arg)
driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
seen = {}
try:
    driver.set_page_load_timeout(20)
    driver.execute_cdp_cmd("Browser.grantPermissions", {"origin": link.rstrip("/"),
                                                        "permissions": ["notifications"]})
    driver.get(link)
    seen["title"], seen["secure"] = driver.title, driver.execute_script("return window.isSecureContext")
    wait = WebDriverWait(driver, 15)
    wait.until(lambda d: d.find_element(By.ID, "name").is_displayed())
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "join-button").click()
    wait.until(lambda d: "joined the chat" in d.find_element(By.ID, "log").text)
    seen["notify_offered"] = driver.execute_script("return !document.getElementById('notify-row').hidden")
    driver.execute_script(
        "const box = document.getElementById('notify'); if (!box.checked) { box.click(); }"
        "window.shown = []; const real = window.Notification;"
        "window.Notification = new Proxy(real, {construct(target, args) {"
        "  window.shown.push(args[0]); return new target(...args); }});"
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});"
        "document.dispatchEvent(new Event('visibilitychange'));")
    print("in the room, hidden", flush=True)
    wait.until(lambda d: d.execute_script("return window.shown.length"))
    seen["notified"] = driver.execute_script("return window.shown")
    driver.execute_script("delete document.hidden; document.dispatchEvent(new Event('visibilitychange'));")
    driver.find_element(By.ID, "message").send_keys("hello from outside" + Keys.ENTER)
    wait.until(lambda d: "hello from outside" in d.find_element(By.ID, "log").text)
    driver.find_element(By.ID, "photo-input").send_keys(photo)
    wait.until(lambda d: d.execute_script(
        "const i = document.querySelector('#log .photo img'); return i && i.complete && i.naturalWidth"))
    seen["loaded"] = driver.execute_script(
        "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name))")
finally:
    seen["log"] = driver.find_element(By.TAG_NAME, "body").text[-2000:] if driver else ""
    driver.quit()
    print("done " + json.dumps(seen), flush=True)
"""


# Run in a namespace: what a plain http GET of argv[1] answers (status and Location, no
# redirect followed), and whether a TLS handshake with argv[2]:argv[3] verifies with the
# CA file argv[4] (and with the system's roots alone).
HTTP_AND_TLS = """
import http.client, json, socket, ssl, sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
plain = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
plain.request("GET", url.path)
answer = plain.getresponse()
seen = {"status": answer.status, "location": answer.getheader("Location")}
for name, context in (("with_root", ssl.create_default_context(cafile=sys.argv[4])),
                      ("system_roots", ssl.create_default_context())):
    try:
        with socket.create_connection((sys.argv[2], int(sys.argv[3])), 5) as raw, \\
                context.wrap_socket(raw, server_hostname=sys.argv[2]) as tls:
            seen[name] = tls.getpeercert()["subjectAltName"]
    except ssl.SSLError as e:
        seen[name] = e.reason
print(json.dumps(seen))
"""


# Run in the LAN's namespace: the room's own ACME client, sent to pebble (argv[2], trusting
# argv[3]) with a nonce pebble never gave, so that its first answer is badNonce for sure.
STALE_NONCE = """
import logging, sys
sys.path.insert(0, sys.argv[1])
import pcr_server as pcr
logging.basicConfig(level=logging.INFO, format="%(message)s")
client = pcr.AcmeClient(sys.argv[2], sys.argv[3], pcr.p256_key())
client.nonce = "bm90LWEtbm9uY2UtcGViYmxlLWdhdmU"
headers, _ = client.post(client._directory()["newAccount"], {"termsOfServiceAgreed": True})
print("account:", headers.get("Location"), flush=True)
"""


def https_lab_missing() -> str:
    """Why the home network with its router and a CA (pebble) cannot be had here; "" if it can."""
    return home_network_missing() or namespaces_missing("pebble", "openssl")


class HttpsOverTheInternetTest(unittest.TestCase):
    """--https against pebble, Let's Encrypt's test CA, on the internet side of the home
    network the --upnp tests build (its validator comes to the router's port 80); the
    friend's Chromium in the friend's namespace trusts pebble's root from its NSS database."""

    def setUp(self):
        if reason := https_lab_missing():
            self.skipTest(reason)

    def room(self, home: HomeNetwork) -> subprocess.Popen:
        return home.room("--upnp", "--https", "--web-port", "5051", "--acme-directory", home.acme,
                         "--acme-ca-file", home.ca_file, "--log-file", os.path.join(home.dir, "room.log"))

    def room_log(self, home: HomeNetwork) -> str:
        with open(os.path.join(home.dir, "room.log"), encoding="utf-8") as f:
            return f.read()

    def friend_browser(self, home: HomeNetwork, link: str) -> str:
        """Chromium in the friend's namespace, with pebble's root in its NSS database; the
        path of what it prints."""
        if webdriver is None or not shutil.which("chromedriver") or not shutil.which("certutil"):
            self.skipTest(f"{NO_BROWSER}; and certutil (apt install libnss3-tools)")
        if Image is None:
            self.skipTest(NO_PIL)
        photo = os.path.join(home.dir, "photo.jpg")
        with open(photo, "wb") as f:
            f.write(picture())
        browser_home = os.path.join(home.dir, "friend")
        nss = os.path.join(browser_home, ".pki", "nssdb")
        os.makedirs(nss)
        root = os.path.join(home.dir, "pebble-root.pem")
        with open(root, "w") as f:
            f.write(home.ca_root())
        for args in (["-N", "--empty-password"], ["-A", "-t", "C,,", "-n", "pebble", "-i", root]):
            done = subprocess.run(["certutil", "-d", f"sql:{nss}", *args], capture_output=True,
                                  text=True, timeout=WAIT)
            self.assertEqual(done.returncode, 0, done.stderr)
        return home.start("wan", "env", f"HOME={browser_home}", sys.executable, "-c", FRIEND_BROWSER,
                          link, os.path.join(home.dir, "profile"), "friend", photo, name="browser")

    def test_a_friend_outside_opens_the_https_link_with_no_warning_and_chats(self):
        home = HomeNetwork(self)
        home.start_router(port_80=True)
        ca_log = home.start_ca(nonce_reject=50)   # pebble's 5% made 50%: badNonces come often
        room = self.room(home)
        said = printed_until(room, "over the internet:  https://11.0.0.1:5051/", ROUTER_SAYS)
        self.assertRegex(said, rf"\(your router forwards both: {EITHER_WAY}; and its port 80 to the "
                               r"page, for https\)")
        self.assertRegex(said, r"  https: the page's certificate for 11\.0\.0\.1 is in place \(new "
                               r"from 11\.0\.0\.2:14000, valid until")
        self.assertIn("  the App:            its lines cross the internet unencrypted; phones and "
                      "browsers use https", said)
        self.assertIn((80, home.LAN_IP, 5051), home.mappings())
        stale = home.run("lan", sys.executable, "-c", STALE_NONCE, HERE, home.acme, home.ca_file)
        self.assertIn("https: 11.0.0.2:14000 refused a nonce (badNonce); trying again", stale.stderr)
        self.assertRegex(stale.stdout, r"^account: https://11\.0\.0\.2:14000/my-account/\S+\n$")
        self.assertEqual(len(re.findall("Added order", home.printed(ca_log, "Issued certificate"))), 1)
        root = os.path.join(home.dir, "root.pem")
        with open(root, "w") as f:
            f.write(home.ca_root())
        seen = json.loads(home.run("wan", sys.executable, "-c", HTTP_AND_TLS, "http://11.0.0.1:5051/p/x",
                                   "11.0.0.1", "5051", root).stdout)
        self.assertEqual(seen["status"], 308)   # plain http from the internet: to https
        self.assertEqual(seen["location"], "https://11.0.0.1:5051/p/x")
        self.assertEqual(seen["with_root"], [["IP Address", "11.0.0.1"]])
        self.assertEqual(seen["system_roots"], "CERTIFICATE_VERIFY_FAILED")
        at_home = home.run("lan", sys.executable, "-c", HTTP_AND_TLS, "http://192.168.77.20:5051/",
                           "192.168.77.20", "5051", root).stdout
        self.assertEqual(json.loads(at_home)["status"], 200)   # the same network keeps http
        ann = home.at_home("ann")
        ann.read_until("[1 person is online]\n")
        tom = home.friend(5050, "tom")   # a terminal on the internet: photo links in https
        tom.read_until("[2 people are online]\n")
        browser = self.friend_browser(home, "https://11.0.0.1:5051/")
        home.printed(browser, "in the room, hidden", 40)
        ann.type("hello friend, can you read me?\n")
        seen = json.loads(home.printed(browser, "done ", 30).split("done ", 1)[1])
        self.assertEqual((seen["title"], seen["secure"]), ("PrivateChatRoom", True), seen)
        self.assertTrue(seen["notify_offered"])
        self.assertEqual(seen["notified"], ["ann named you"])
        self.assertGreaterEqual(len(seen["loaded"]), 2)   # the page and the photo
        self.assertEqual([url for url in seen["loaded"] if not url.startswith(
            ("https://11.0.0.1:5051/", "data:", "blob:"))], [])   # nothing over http
        ann.read_until("friend: hello from outside\n")
        ann.read_until("friend shared a photo: http://127.0.0.1:5051/p/")   # as ann reached it
        tom.read_until("friend shared a photo: https://11.0.0.1:5051/p/")
        room.send_signal(signal.SIGTERM)
        self.assertEqual(room.wait(WAIT * 2), 0)
        self.assertEqual(home.mappings(), [])   # port 80 too
        orders = home.printed(ca_log, "").count("POST /order-plz")
        room = self.room(home)   # a restart reuses the certificate: no order
        said = printed_until(room, "over the internet:  https://11.0.0.1:5051/", ROUTER_SAYS)
        self.assertIn("is in place (kept from before", said)
        self.assertEqual(home.printed(ca_log, "").count("POST /order-plz"), orders)
        kept = os.path.join(home.dir, ".pcr_https", "11.0.0.2_14000")
        self.assertEqual(sorted(os.listdir(kept)), ["account.key", "certificate.pem"])
        for secret in ("PRIVATE KEY", "BEGIN"):
            self.assertNotIn(secret, self.room_log(home))

    def test_port_80_not_forwarded_gives_its_sentence_and_the_page_stays_open_on_http(self):
        home = HomeNetwork(self)
        home.start_router()   # its rules keep port 80 for the router itself
        home.start_ca()
        room = self.room(home)
        said = printed_until(room, "the page stays on http until then\n", ROUTER_SAYS)
        self.assertRegex(said, rf"\(your router forwards both: {EITHER_WAY}; not its port 80 \(")
        self.assertRegex(said, r"  https: the certificate authority could not reach port 80 of "
                               r"11\.0\.0\.1 \(connection: .+\): forward TCP port 80 to "
                               r"192\.168\.77\.20:5051 on your router; trying again in 5 minutes; "
                               r"the page stays on http until then\n")
        self.assertRegex(home.reaches_from_wan(5051, "/"), r"^200 \d{4,}$")   # plain, not moved
        home.at_home("ann").read_until("[1 person is online]\n")
        self.assertIn("forward TCP port 80 to 192.168.77.20:5051 on your router", self.room_log(home))

    def test_without_a_known_public_address_https_says_why_and_asks_no_ca(self):
        home = HomeNetwork(self)   # no --upnp, no look-up: nothing says the address
        room = home.room("--https", "--web-port", "5051", "--acme-directory", "https://11.0.0.2/dir")
        said = printed_until(room, f"  https: {pcr.HTTPS_UNKNOWN}\n", ROUTER_SAYS)
        self.assertIn("  https:              the page over the internet, once its certificate is in "
                      "place", said)
        self.assertFalse(os.path.exists(os.path.join(home.dir, ".pcr_https")))   # no account made

    def test_cgnat_gives_its_sentence_and_the_ca_hears_nothing(self):
        home = HomeNetwork(self, wan_ip="100.64.0.1")
        home.start_router(port_80=True)
        ca_log = home.start_ca()
        room = self.room(home)
        said = printed_until(room, f"  https: {pcr.HTTPS_NO_PUBLIC}\n", ROUTER_SAYS)
        self.assertIn("probably CGNAT or a second router", said)   # the router's sentence, and https's
        home.at_home("ann").read_until("[1 person is online]\n")
        self.assertNotIn("calling handler", home.printed(ca_log, ""))


# ---------------------------------------------------------------------------
# 10. The QR code: read back by decoders of others, never by our own
# ---------------------------------------------------------------------------


class QrCodeTest(unittest.TestCase):
    """qr_code(text): every text of 1 to 500 bytes, every version at its fullest,
    UTF-8, read back exactly by zxing-cpp and by zbar, at level M."""

    @classmethod
    def setUpClass(cls):
        if zxingcpp is None:
            raise unittest.SkipTest(NO_ZXING)
        cls.texts = [sample_text(n) for n in range(1, 501)]
        cls.images = [code_image(pcr.qr_code(text)) for text in cls.texts]

    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)

    def need_zbar(self) -> None:
        if not shutil.which("zbarimg"):
            self.skipTest(NO_ZBAR)

    def test_zxing_reads_every_text_of_1_to_500_bytes_at_level_m(self):
        unread = [len(text) for text, image in zip(self.texts, self.images)
                  if zxing_read(image) != [(text, "M")]]
        self.assertEqual(unread, [])

    def test_zbar_reads_every_text_of_1_to_500_bytes(self):
        self.need_zbar()
        self.assertEqual(zbar_read(self.images, self.folder), self.texts)

    def test_every_version_holds_what_the_standard_says_and_no_more(self):
        # Byte mode at level M (ISO/IEC 18004 table 7): the most bytes of versions 1 to 40.
        most = (14, 26, 42, 62, 84, 106, 122, 152, 180, 213, 251, 287, 331, 362, 412, 450, 504,
                560, 624, 666, 711, 779, 857, 911, 997, 1059, 1125, 1190, 1264, 1370, 1452,
                1538, 1628, 1722, 1809, 1911, 1989, 2099, 2213, 2331)
        texts = [sample_text(n) for n in most]
        codes = [pcr.qr_code(text) for text in texts]
        self.assertEqual([len(code) for code in codes], [17 + 4 * v for v in range(1, 41)])
        self.assertEqual([len(pcr.qr_code(sample_text(n + 1))) for n in most[:-1]],
                         [17 + 4 * v for v in range(2, 41)])
        with self.assertRaises(ValueError):
            pcr.qr_code(sample_text(2332))
        images = [code_image(code) for code in codes]
        self.assertEqual([zxing_read(image) for image in images], [[(t, "M")] for t in texts])
        self.need_zbar()
        self.assertEqual(zbar_read(images, self.folder), texts)

    def test_utf8_text_reads_back_as_itself(self):
        texts = ["Grüße aus Köln", "日本語のテキスト", "😀 " * 40, "é" * 250]
        images = [code_image(pcr.qr_code(text)) for text in texts]
        self.assertEqual([zxing_read(image) for image in images], [[(t, "M")] for t in texts])
        self.need_zbar()
        self.assertEqual(zbar_read(images, self.folder), texts)

    def test_the_standards_worked_values(self):
        self.assertEqual(pcr.bch_code(7, pcr.QR_VERSION_POLY), 0x07C94)   # Annex D
        self.assertEqual(pcr.qr_format_bits(0), 0b101010000010010)        # M, mask 0 (Annex C)
        self.assertEqual([pcr.qr_data_capacity(v) for v in (1, 7, 17, 40)], [16, 124, 507, 2334])

    def test_the_console_drawing_in_its_own_colours_reads_on_light_and_dark_themes(self):
        self.need_zbar()
        link = "http://192.0.2.10:5051/#key=Fam%26ly%2B2026%3Dx"
        drawn = pcr.qr_console_text(pcr.qr_code(link), colours=True)
        for line in drawn.split("\n"):
            self.assertTrue(line.startswith(pcr.QR_COLOURS) and line.endswith("\x1b[0m"), line)
        themes = [terminal_image(drawn, theme) for theme in ("light", "dark")]
        self.assertEqual(zbar_read(themes, self.folder), [link, link])
        left_to_the_theme = terminal_image(drawn, "light", colours=False)   # dark on white: inverted
        self.assertEqual(zbar_read([left_to_the_theme], self.folder), [])

    def test_the_console_drawing_is_two_rows_a_line_light_on_dark(self):
        modules = pcr.qr_code("http://192.0.2.10:5051/")
        lines = pcr.qr_console_text(modules).split("\n")
        side = len(modules) + 2 * pcr.QR_QUIET
        self.assertEqual(len(lines), (side + 1) // 2)
        self.assertEqual({len(line) for line in lines}, {side})
        self.assertLessEqual(set("".join(lines)), set(BLOCKS))
        self.assertEqual(lines[0], "█" * side)   # the quiet zone is light: blocks
        self.assertEqual(zxing_read(console_image("\n".join(lines))), [(
            "http://192.0.2.10:5051/", "M")])


class InvitationTest(unittest.TestCase):
    """The invitation: the page's address on the same network, the room key in its
    fragment only; a code on the console only where it can be drawn and reached."""

    def join(self, host: str = "0.0.0.0", private_ip: str | None = "192.0.2.10",
             page_port: int | None = 5051, **settings) -> "pcr.FriendsJoin":
        return pcr.friends_join(pcr.Settings(**settings), (host, 5050), private_ip, None, page_port)

    def test_the_key_travels_in_the_fragment_only(self):
        invite = self.join(room_key="Fam&ly+2026=x").invite
        self.assertEqual(invite, "http://192.0.2.10:5051/#key=Fam%26ly%2B2026%3Dx")
        parts = urllib.parse.urlsplit(invite)
        self.assertEqual((parts.netloc, parts.path, parts.query), ("192.0.2.10:5051", "/", ""))
        self.assertEqual(urllib.parse.unquote(parts.fragment), "key=Fam&ly+2026=x")
        self.assertEqual(self.join().invite, "http://192.0.2.10:5051/")

    def test_no_invitation_where_no_phone_can_come(self):
        self.assertIsNone(self.join(host="127.0.0.1").invite)
        self.assertIsNone(self.join(page_port=None).invite)
        self.assertIsNone(self.join(private_ip="unknown").invite)
        self.assertIsNone(self.join(private_ip="127.0.1.1").invite)   # no route out

    def test_a_console_without_block_characters_gets_a_sentence_instead(self):
        for encoding in ("ascii", "cp1252", None):
            said = pcr.console_code("http://192.0.2.10:5051/", io.TextIOWrapper(
                io.BytesIO(), encoding=encoding or "ascii") if encoding else None)
            self.assertIn("cannot draw", said)
            said.encode("ascii")
        for encoding in ("utf-8", "cp437"):
            caption, drawn = pcr.console_code("http://192.0.2.10:5051/", io.TextIOWrapper(
                io.BytesIO(), encoding=encoding)).split("\n", 1)
            self.assertEqual(caption, "    scan with a phone's camera to open the page")
            self.assertLessEqual(set(drawn), set(BLOCKS) | {"\n"})   # no colours: not a terminal
            drawn.encode(encoding)
        self.assertEqual(pcr.console_code(None, sys.stdout), "")

    def test_a_loopback_room_prints_no_code(self):
        proc = run_server("--host", "127.0.0.1", "--port", str(free_port()), "--web-port",
                          str(free_port()), "--public-ip-url", "", "--log-file", "")
        try:
            printed = printed_until(proc, "Ctrl+C stops the server.")
        finally:
            interrupt(proc)
            proc.communicate(timeout=WAIT * 2)
        self.assertIn("nobody else can join", printed)
        self.assertFalse(set(printed) & set("█▀▄"), printed)
        self.assertNotIn("QR", printed)


class InvitationOnANetworkTest(unittest.TestCase):
    """The banner's code from a real terminal, the window's from a screenshot, and
    Chromium following the link: each with the room in a namespace of its own on
    TEST-NET (needs root and network namespaces), so friends could reach it."""

    KEY = "Fam&ly+2026=x"

    def setUp(self):
        if reason := test_net_missing():
            self.skipTest(reason)
        if zxingcpp is None:
            self.skipTest(NO_ZXING)
        self.net = TestNet(self)

    def banner_on_a_terminal(self, *args: str, columns: int = 80, no_color: bool = False) -> str:
        """The banner as a terminal `columns` wide shows it (TERM=xterm): the
        room's output through a pty; with NO_COLOR set if `no_color`."""
        import fcntl
        import termios
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
        env.update({"TERM": "xterm", **({"NO_COLOR": "1"} if no_color else {})})
        proc = self.net.room(*args, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.addCleanup(proc.wait, WAIT)
        self.addCleanup(proc.kill)
        return read_terminal(master, b"Ctrl+C stops the server.").decode().replace("\r\n", "\n")

    def scanned(self, image) -> str:
        """The one code in `image`, read by both decoders (zbar where installed)."""
        [(text, level)] = zxing_read(image)
        self.assertEqual(level, "M")
        if shutil.which("zbarimg"):
            self.assertEqual(zbar_read([image], self.net.dir), [text])
        return text

    def assert_fits(self, printed: str, columns: int) -> None:
        widest = max(printed.split("\n"), key=lambda line: len(SGR_CODE.sub("", line)))
        self.assertLessEqual(len(SGR_CODE.sub("", widest)), columns, widest)

    def test_the_banners_code_in_its_colours_reads_on_light_and_dark_terminals(self):
        printed = self.banner_on_a_terminal(columns=80)
        self.assertIn("  for a browser or a phone:\n    same network:       http://192.0.2.10:5051/\n"
                      f"    scan with a phone's camera to open the page\n{pcr.QR_COLOURS}█████",
                      printed)   # the caption, then the code, right under the page's line
        self.assert_fits(printed, 80)
        for theme in ("light", "dark"):
            self.assertEqual(self.scanned(terminal_image(printed, theme)), "http://192.0.2.10:5051/")
        if shutil.which("zbarimg"):   # zbar reads no inverted code: left to a light theme, it is
            self.assertEqual(zbar_read([terminal_image(printed, "light", colours=False)],
                                       self.net.dir), [])

    def test_with_no_color_the_banners_code_is_plain_blocks_light_on_dark(self):
        printed = self.banner_on_a_terminal(columns=100, no_color=True)
        self.assertNotIn("\x1b", printed)   # https://no-color.org
        self.assertIn("    same network:       http://192.0.2.10:5051/\n"
                      "    scan with a phone's camera to open the page\n█████", printed)
        self.assert_fits(printed, 100)
        self.assertEqual(self.scanned(terminal_image(printed, "dark")), "http://192.0.2.10:5051/")

    def test_an_ascii_console_gets_the_banner_without_a_code_or_a_traceback(self):
        proc = self.net.room(env={**os.environ, "PYTHONIOENCODING": "ascii"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.wait, WAIT)
        self.addCleanup(proc.kill)
        printed = printed_until(proc, "Ctrl+C stops the server.")
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=WAIT * 2)[1]
        self.assertIn("  for a browser or a phone:\n    same network:       http://192.0.2.10:5051/",
                      printed)
        self.assertIn("cannot draw the link's QR code", printed)
        self.assertNotIn("Traceback", printed + err)
        self.assertEqual(proc.returncode, 0, err)

    def test_the_window_shows_the_code_while_the_page_is_served_and_redraws_it(self):
        try:
            import tkinter  # noqa: F401
        except ImportError:
            self.skipTest("tkinter is not installed")
        if not shutil.which("import"):
            self.skipTest("ImageMagick's import is not installed (apt install imagemagick)")
        display = os.environ.get("DISPLAY") or start_xvfb()
        done = subprocess.run(self.net.inside(sys.executable, "-c", WINDOW_STEPS, HERE,
                                              self.net.dir, self.KEY),
                              cwd=self.net.dir, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "DISPLAY": display})
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        steps = [json.loads(line) for line in done.stdout.splitlines()]
        self.assertEqual([s["step"] for s in steps],
                         ["page-off", "page-on", "page-off-again", "new-port", "loopback"])
        for step in steps:
            image = Image.open(step["shot"])
            self.assertLessEqual(step["window"], [1280, 800], step)
            if step["link"] is None:
                self.assertEqual(zxing_read(image), [], step)
                continue
            self.assertEqual(self.scanned(image), step["link"])
            modules = len(pcr.qr_code(step["link"])) + 2 * pcr.QR_QUIET
            self.assertGreaterEqual(step["canvas"], 4 * modules, step)   # 4 px a module
        self.assertIn("#key=Fam%26ly%2B2026%3Dx", steps[1]["link"])
        self.assertIn(":5061/", steps[3]["link"])
        if SCREENSHOTS:   # the README's picture: the window, at the screen's top left
            Image.open(steps[1]["shot"]).crop((0, 0, *steps[1]["window"])).save(
                os.path.join(SCREENSHOTS, "invite.png"), optimize=True)

    def test_chromium_follows_the_scanned_link_and_joins_with_a_name_alone(self):
        if webdriver is None:
            self.skipTest(NO_BROWSER)
        printed = self.banner_on_a_terminal("--room-key", self.KEY)
        link = self.scanned(console_image(printed))
        self.assertEqual(link, "http://192.0.2.10:5051/#key=Fam%26ly%2B2026%3Dx")
        parts = urllib.parse.urlsplit(link)
        self.assertNotIn("Fam", parts.netloc + parts.path + parts.query)
        done = subprocess.run(self.net.inside(sys.executable, "-c", BROWSER_STEPS, HERE, link, "Wendy"),
                              capture_output=True, text=True, timeout=120)
        if "SkipTest" in done.stderr:
            self.skipTest(done.stderr.strip().splitlines()[-1])
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        seen = json.loads(done.stdout.splitlines()[-1])
        self.assertEqual(seen["address"], "http://192.0.2.10:5051/")   # the key is gone
        self.assertEqual(seen["history"], "http://192.0.2.10:5051/")
        self.assertIn("Wendy", seen["people"])


# ---------------------------------------------------------------------------
# 11. Logging, and the console the host reads
# ---------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal (and has no file behind it)."""

    def isatty(self) -> bool:
        return True


class ConsoleTextTest(unittest.TestCase):
    """Console text fits the console (issue 31): wrapped at words to the
    terminal's width, the rest indented; colours only where they are taken."""

    def test_a_row_wraps_at_words_under_its_value(self):
        row = ("    over the internet:  this machine's internet address could not be looked up; your "
               "router's status page shows it (forward TCP ports 5050 and 5051 on your router)")
        lines = pcr.fit_console(row, 80).split("\n")
        self.assertEqual(lines[0], "    over the internet:  this machine's internet address could "
                                   "not be looked up;")
        self.assertTrue(all(line.startswith(" " * 24) and line[24] != " " for line in lines[1:]), lines)
        self.assertLessEqual(max(map(len, lines)), 80)
        self.assertEqual(" ".join(" ".join(lines).split()), " ".join(row.split()))

    def test_a_sentence_goes_on_two_spaces_in_and_a_link_stays_whole(self):
        link = "http://192.0.2.10:5051/#key=" + "k" * 60
        text = f"Short.\nA sentence that is rather longer than this console is wide, with {link} in it."
        lines = pcr.fit_console(text, 40).split("\n")
        self.assertEqual(lines[0], "Short.")
        self.assertTrue(all(line.startswith("  ") for line in lines[2:]), lines)
        self.assertIn(link, [line.strip() for line in lines])   # too long to fit: whole, not cut
        self.assertTrue(all(len(line) <= 40 for line in lines if link not in line), lines)

    def test_colours_take_no_room_and_a_pipe_or_file_keeps_lines_whole(self):
        drawn = pcr.QR_COLOURS + "█" * 40 + "\x1b[0m"
        self.assertEqual(pcr.fit_console(drawn, 40), drawn)
        long = "word " * 40
        self.assertIsNone(pcr.console_width(io.StringIO()))
        self.assertEqual(pcr.fit_console(long, pcr.console_width(io.StringIO())), long)
        with mock.patch("shutil.get_terminal_size", return_value=os.terminal_size((100, 30))):
            self.assertEqual(pcr.console_width(FakeTerminal()), 100 - WINDOWS)

    def test_colours_only_on_a_terminal_without_no_color_and_not_dumb(self):
        with mock.patch.dict(os.environ, {"TERM": "xterm"}):
            os.environ.pop("NO_COLOR", None)
            self.assertFalse(pcr.console_colours(io.StringIO()))   # a pipe or a file
            if not WINDOWS:   # there the console itself is asked
                self.assertTrue(pcr.console_colours(FakeTerminal()))
            with mock.patch.dict(os.environ, {"NO_COLOR": "1"}):
                self.assertFalse(pcr.console_colours(FakeTerminal()))
            with mock.patch.dict(os.environ, {"TERM": "dumb"}):
                self.assertFalse(pcr.console_colours(FakeTerminal()))

    def test_a_warning_on_the_console_is_fitted_too(self):
        record = pcr.log.makeRecord("pcr_server", pcr.logging.WARNING, __file__, 1,
                                    "cannot write the log file %s (%s); logging to the screen only",
                                    ("/no/such/folder/server.log", "No such file or directory"), None)
        with mock.patch("shutil.get_terminal_size", return_value=os.terminal_size((50 + WINDOWS, 30))):
            shown = pcr.ConsoleLog(FakeTerminal()).format(record).split("\n")
        self.assertRegex(shown[0], r"^\d\d:\d\d:\d\d WARNING cannot write the log file$")
        self.assertTrue(all(len(line) <= 50 and line.startswith("  ") for line in shown[1:]), shown)


# ---------------------------------------------------------------------------
# 12. The GUI
# ---------------------------------------------------------------------------


class GuiTest(unittest.TestCase):
    """The --gui window, driven through its own buttons on a virtual screen."""

    @classmethod
    def setUpClass(cls):
        try:
            import tkinter  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("tkinter is not installed") from None
        if not os.environ.get("DISPLAY") and not WINDOWS:   # Tk on Windows needs no X
            os.environ["DISPLAY"] = start_xvfb()   # for the rest of this process

    def setUp(self):
        work = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, work, True)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(work)   # .pcr_port is written here
        self.log_path = os.path.join(work, "server.log")
        pcr.setup_logging(self.log_path, console=False)
        self.addCleanup(pcr.setup_logging, "", False)
        self.window = None

    # -- helpers ----------------------------------------------------------
    def open_window(self, **overrides) -> "pcr.ServerWindow":
        import tkinter
        settings = pcr.Settings(**{**FAST, "port": free_port_and_the_next(), **overrides})
        self.root = tkinter.Tk()
        self.window = pcr.ServerWindow(self.root, settings)
        self.addCleanup(self.close_window)
        return self.window

    def close_window(self):
        if self.window is None:   # closed already, by the test itself
            return
        if not self.window.closed:
            self.window.close()
            self.pump_until(lambda: self.window.closed, "the window to close")
        # Tcl aborts the process if its interpreter is freed on another thread,
        # as a garbage collection run by a server thread would: free it here.
        gc.disable()
        try:
            self.window = self.root = None
            gc.collect()
        finally:
            gc.enable()

    def pump_until(self, condition, what: str, timeout: float = WAIT) -> None:
        """Run Tk until condition() holds; Start and Stop are never both usable."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.window.closed:
                self.root.update()
            if not self.window.closed:
                self.assertFalse(self.usable(self.window.view.start_button)
                                 and self.usable(self.window.view.stop_button),
                                 "Start and Stop are both usable")
            if condition():
                return
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}")
            time.sleep(0.02)

    def pump_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.pump_until(lambda: time.monotonic() >= end, "time to pass", seconds + 1)

    @staticmethod
    def usable(widget) -> bool:
        return not widget.instate(["disabled"])

    def start_server(self) -> int:
        """Press Start and wait until it runs; the port it listens on."""
        self.window.view.start_button.invoke()
        self.pump_until(lambda: self.window.state == pcr.RoomState.RUNNING, "the server to run")
        return self.window.listening[1]

    def member(self, port: int, alias: str) -> Client:
        c = Client(port).join(alias)
        self.addCleanup(c.close)
        return c

    def listed(self) -> list[tuple[str, str]]:
        tree = self.window.view.tree
        return [(str(tree.set(item, "alias")), str(tree.set(item, "ip")))
                for item in tree.get_children()]

    def info(self, key: str) -> str:
        return str(self.window.view.info[key].cget("text"))

    def address(self, kind: str) -> str:
        """The address shown for `kind`: "private" (same network) or "public"."""
        return str(self.window.view.addresses[kind].cget("text"))

    def shown(self, label) -> str:
        """A label's text if it is on screen, else ""."""
        self.root.update()
        return str(label.cget("text")) if label.winfo_ismapped() else ""

    def window_texts(self) -> str:
        """Every label's text in the window and its dialogs."""
        widgets, texts = [self.root], []
        while widgets:
            widget = widgets.pop()
            widgets.extend(widget.winfo_children())
            if widget.winfo_class() in ("TLabel", "Label", "TButton"):
                texts.append(str(widget.cget("text")))
        return "\n".join(texts)

    def room_with_public_address(self, **overrides) -> int:
        """A running window on every network, its public address from a stub service; the port."""
        service = PublicIpService("203.0.113.7")
        self.addCleanup(service.close)
        with mock.patch.dict(os.environ, {"no_proxy": "127.0.0.1"}):
            self.open_window(host="0.0.0.0", public_ip_url=service.url, **overrides)
            port = self.start_server()
            self.pump_until(lambda: self.address("public").startswith("203.0.113.7"),
                            "the public address")
        self.pump_until(lambda: "looking up" not in self.address("private"), "the private address")
        return port

    def copy(self, kind: str) -> str:
        """Press the Copy button for `kind`; what the clipboard then holds."""
        self.root.clipboard_clear()
        self.root.clipboard_append("untouched")
        self.window.view.copy_buttons[kind].invoke()
        self.root.update()
        return self.root.clipboard_get()

    def status(self) -> str:
        return str(self.window.view.status_line.cget("text"))

    def log_panel(self) -> str:
        return self.window.view.log_text.get("1.0", "end")

    def log_file(self) -> str:
        for handler in pcr.log.handlers:
            handler.flush()
        with open(self.log_path, encoding="utf-8") as f:
            return f.read()

    @staticmethod
    def logged_line(text: str, *words: str) -> bool:
        """True if one line of the log text has all the words."""
        return any(all(w in line for w in words) for line in text.splitlines())

    def fill(self, dialog, *texts: str) -> None:
        """Type texts into the dialog's boxes and press OK."""
        for entry, text in zip(dialog.entries, texts):
            entry.delete(0, "end")
            entry.insert(0, text)
        dialog.ok_button.invoke()
        self.root.update()

    def assert_stopped_look(self):
        self.assertTrue(self.usable(self.window.view.start_button))
        self.assertFalse(self.usable(self.window.view.stop_button))

    # -- the window ---------------------------------------------------------
    def test_privacy_row_says_when_the_room_is_open(self):
        self.open_window()
        self.assertEqual(self.info("privacy"), "not encrypted, no room key")

    def test_privacy_row_says_when_the_room_is_encrypted_and_keyed(self):
        self.open_window(room_key="k", tls_cert="cert.pem")
        self.assertEqual(self.info("privacy"), "encrypted (TLS), room key")

    def test_title_names_the_version(self):
        self.open_window()
        self.assertEqual(self.root.title(), f"PrivateChatRoom-Server v{pcr.VERSION}")

    def test_opens_stopped_with_start_usable_and_stop_not(self):
        w = self.open_window()
        self.root.update()
        self.assert_stopped_look()
        self.assertIn("Stopped", w.view.badge.cget("text"))
        self.assertIn("off", self.info("listen"))
        self.assertEqual(self.info("online"), "0")

    def test_addresses_show_the_private_ip_and_the_panel_the_mac(self):
        w = self.open_window(host="0.0.0.0")
        self.pump_until(lambda: "looking up" not in self.address("private"), "the private IP")
        self.assertEqual(self.address("private"), f"{pcr.private_ipv4()}:{w.settings.port}")
        self.assertEqual(self.info("mac"), pcr.mac_address())

    def test_public_address_not_looked_up_without_a_look_up_url(self):
        self.open_window(host="0.0.0.0", public_ip_url="")
        self.pump_for(0.3)
        self.assertEqual(self.address("public"), "not looked up")

    def test_public_address_shows_looking_up_then_the_answer(self):
        service = PublicIpService("203.0.113.7")
        self.addCleanup(service.close)
        with mock.patch.dict(os.environ, {"no_proxy": "127.0.0.1"}):
            w = self.open_window(host="0.0.0.0", public_ip_url=service.url)
            self.assertEqual(self.address("public"), "looking up…")
            self.pump_until(lambda: self.address("public") == f"203.0.113.7:{w.settings.port}",
                            "the public IP")

    def test_public_address_unknown_when_the_look_up_fails(self):
        with mock.patch.dict(os.environ, {"no_proxy": "127.0.0.1"}):
            self.open_window(host="0.0.0.0", public_ip_url=f"http://127.0.0.1:{free_port()}/")
            self.pump_until(lambda: "router's status page" in self.address("public"),
                            "the router's status page")

    # -- how friends join ---------------------------------------------------
    def test_two_addresses_same_network_and_over_the_internet_after_forwarding(self):
        port = self.room_with_public_address()
        w = self.window
        self.assertEqual(self.address("private"), f"{pcr.private_ipv4()}:{port}")
        self.assertEqual(self.address("public"), f"203.0.113.7:{port}")
        texts = self.window_texts()
        self.assertIn("Same network", texts)
        self.assertIn("Over the internet", texts)
        self.assertIn(f"forward TCP port {port} on your router", self.shown(w.view.forward_note))
        self.assertEqual(self.shown(w.view.loopback_warning), "")
        self.assertIn("Give friends one of the addresses below", self.status())

    def test_each_copy_button_copies_its_address_and_says_which(self):
        port = self.room_with_public_address()
        w = self.window
        private = f"{pcr.private_ipv4()}:{port}"
        self.assertEqual(self.copy("private"), private)
        self.assertIn(f"Copied {private}", self.shown(w.view.copied_note))
        self.assertIn("same network", self.shown(w.view.copied_note))
        self.assertEqual(str(w.view.copy_buttons["private"].cget("text")), "Copied ✓")
        self.assertEqual(self.copy("public"), f"203.0.113.7:{port}")
        self.assertIn(f"Copied 203.0.113.7:{port}", self.shown(w.view.copied_note))
        self.assertIn("over the internet", self.shown(w.view.copied_note))

    def test_copy_while_stopped_copies_nothing_and_says_why(self):
        w = self.open_window(host="0.0.0.0")
        self.pump_until(lambda: "looking up" not in self.address("private"), "the private IP")
        self.assertEqual(self.copy("private"), "untouched")
        self.assertIn("Nothing copied: the room is closed", self.shown(w.view.copied_note))
        self.assertIn("Start server", self.shown(w.view.copied_note))

    def test_copy_of_an_unknown_public_address_copies_nothing_and_says_why(self):
        w = self.open_window(host="0.0.0.0", public_ip_url="")
        self.start_server()
        self.assertEqual(self.copy("public"), "untouched")
        self.assertIn("Nothing copied: this computer's public address was not looked up",
                      self.shown(w.view.copied_note))

    def test_loopback_shows_a_warning_instead_of_addresses(self):
        w = self.open_window(host="127.0.0.1")
        port = self.start_server()
        warning = self.shown(w.view.loopback_warning)
        self.assertIn("Only this computer can join", warning)
        self.assertIn("Set listen address", warning)
        self.assertIn("0.0.0.0", warning)
        for kind in ("private", "public"):
            self.assertEqual(self.shown(w.view.addresses[kind]), "")
            self.assertEqual(self.shown(w.view.copy_buttons[kind]), "")
        self.assertEqual(self.shown(w.view.forward_note), "")
        self.assertIn(f"only this computer can join it (127.0.0.1:{port})", self.status())

    def test_keyed_room_says_friends_join_as_name_key_and_never_shows_the_key(self):
        w = self.open_window(host="0.0.0.0", room_key="long-enough-key")
        self.assertIn("Friends join as name#KEY", self.shown(w.view.key_note))
        self.assertEqual(self.shown(w.view.key_warning), "")
        self.start_server()
        self.assertNotIn("long-enough-key", self.window_texts())

    def test_short_room_key_is_warned_about(self):
        w = self.open_window(host="0.0.0.0", room_key="abc")
        warning = self.shown(w.view.key_warning)
        self.assertIn("only 3 characters", warning)
        self.assertIn("8 or more", warning)

    def test_encrypted_room_says_the_app_cannot_join(self):
        w = self.open_window(host="0.0.0.0", tls_cert="cert.pem")
        note = self.shown(w.view.tls_note)
        self.assertIn("The room is encrypted: the App cannot join", note)
        self.assertNotIn("--", note)

    def test_room_without_a_key_or_tls_says_nothing_about_them(self):
        w = self.open_window(host="0.0.0.0")
        self.assertEqual(self.shown(w.view.key_note), "")
        self.assertEqual(self.shown(w.view.key_warning), "")
        self.assertEqual(self.shown(w.view.tls_note), "")

    def test_advice_never_names_a_command_line_flag(self):
        w = self.open_window(host="192.0.2.77")
        w.view.start_button.invoke()
        self.pump_until(lambda: w.state == pcr.RoomState.ERROR, "the error state")
        self.assertIn("192.0.2.77 is not on this machine", self.status())
        self.assertIn("set the listen address to 0.0.0.0", self.status())
        w.view.address_button.invoke()
        self.fill(w.dialog, "192.0.2.78", str(free_port()))
        self.assertIn("is not on this machine", w.dialog.problem.cget("text"))
        w.dialog.close()
        w.view.port_button.invoke()
        self.fill(w.dialog, "70000")
        self.assertNotRegex(self.window_texts(), r"(^|\s)--[a-z]")

    def test_nothing_is_clipped_at_the_default_size(self):
        self.open_window()
        port = self.start_server()
        self.member(port, "a member with a rather long name")
        self.pump_until(lambda: self.info("online") == "1", "the member")
        self.pump_for(0.2)
        self.assertEqual(self.clipped(), [])
        self.assertGreaterEqual(self.root.winfo_width(), self.root.minsize()[0])

    def clipped(self) -> list[tuple[str, str]]:
        """The labels and buttons on screen that are shown smaller than their text needs."""
        widgets, clipped = [self.root], []
        while widgets:
            widget = widgets.pop()
            widgets.extend(widget.winfo_children())
            if (widget.winfo_class() in ("TLabel", "TButton", "Label", "TLabelframe")
                    and widget.winfo_ismapped()):   # a hidden note is not clipped
                if (widget.winfo_width() < widget.winfo_reqwidth()
                        or widget.winfo_height() < widget.winfo_reqheight()):
                    clipped.append((str(widget), widget.cget("text")))
        return clipped

    def test_run_gui_opens_the_window_logs_warnings_and_a_terminate_signal_closes_it(self):
        self.run_gui_until_signalled(signal.SIGTERM)

    @unittest.skipUnless(hasattr(signal, "SIGHUP"), "no hang-up signal on Windows")
    def test_a_hang_up_closes_the_window_cleanly(self):
        self.run_gui_until_signalled(signal.SIGHUP)

    def run_gui_until_signalled(self, sig: int) -> None:
        if shutil.which("xdotool") is None:
            self.skipTest("xdotool is not installed")
        code = (f"import sys, {pcr.__name__} as pcr; "
                f"pcr.setup_logging({self.log_path!r}, console=False); "
                f"sys.exit(pcr.run_gui(pcr.Settings(host='127.0.0.1', port={free_port()}, "
                f"public_ip_url='', log_file=''), ['.pcr_port holds nonsense']))")
        gui = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def reap():
            if gui.poll() is None:
                gui.kill()
                gui.communicate()
        self.addCleanup(reap)
        title = f"^PrivateChatRoom-Server v{pcr.VERSION}$"
        deadline = time.monotonic() + WAIT
        while subprocess.run(["xdotool", "search", "--onlyvisible", "--name", title],
                             capture_output=True, timeout=WAIT).returncode != 0:
            self.assertIsNone(gui.poll(), "run_gui ended before its window showed")
            self.assertLess(time.monotonic(), deadline, "no window showed")
            time.sleep(0.05)
        gui.send_signal(sig)
        out, err = gui.communicate(timeout=START_WAIT)
        self.assertEqual(gui.returncode, 0, err)
        self.assertNotIn("Traceback", err)
        self.assertIn("WARNING:pcr_server:.pcr_port holds nonsense", self.log_file())

    # -- starting and stopping ----------------------------------------------
    def test_start_button_runs_the_server_and_the_list_follows_the_room(self):
        w = self.open_window()
        port = self.start_server()
        self.assertEqual(port, w.settings.port)
        self.assertFalse(self.usable(w.view.start_button))
        self.assertTrue(self.usable(w.view.stop_button))
        self.assertIn("Running", w.view.badge.cget("text"))
        self.assertEqual(self.info("listen"), f"127.0.0.1:{port}")
        self.member(port, "ann")
        bob = self.member(port, "bob")
        self.pump_until(lambda: self.info("online") == "2", "a count of 2")
        self.assertEqual(self.listed(), [("ann", "127.0.0.1"), ("bob", "127.0.0.1")])
        since = w.view.tree.set(w.view.tree.get_children()[0], "since")
        self.assertRegex(str(since), r"^\d\d:\d\d:\d\d$")
        bob.close()
        self.pump_until(lambda: self.info("online") == "1", "a count of 1")
        self.assertEqual(self.listed(), [("ann", "127.0.0.1")])

    def test_start_on_a_port_in_use_shows_why_in_the_window(self):
        blocker = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(blocker.close)
        w = self.open_window(port=blocker.getsockname()[1])
        w.view.start_button.invoke()
        self.pump_until(lambda: w.state == pcr.RoomState.ERROR, "the error state")
        self.assertIn("already in use", self.status())
        self.assertIn("Error", w.view.badge.cget("text"))
        self.assert_stopped_look()

    def test_a_server_thread_that_dies_shows_an_error(self):
        w = self.open_window()
        self.start_server()
        server = w.server
        # handler errors are contained, and so are the selector's own; a bug in the loop is not

        def broken(timeout=None):
            raise RuntimeError("a bug in the loop")
        server.loop.call_soon_threadsafe(setattr, server.loop.selector, "select", broken)
        self.pump_until(lambda: w.state == pcr.RoomState.ERROR, "the error state")
        for listener, _ in server.listeners:   # the dead loop never closed them
            listener.close()
        self.assertIn("stopped unexpectedly", self.status())
        self.assert_stopped_look()
        self.assertIn("the server stopped on an unexpected error", self.log_file())

    def test_stop_button_tells_members_and_enables_start(self):
        w = self.open_window()
        ann = self.member(self.start_server(), "ann")
        self.pump_until(lambda: self.info("online") == "1", "ann in the list")
        w.view.stop_button.invoke()
        w.dialog.ok_button.invoke()   # ann is in: Stop asks first
        self.assertFalse(self.usable(w.view.stop_button))
        self.assertTrue(ann.read_to_close().endswith(pcr.STOP_NOTICE.encode()))
        self.pump_until(lambda: w.state == pcr.RoomState.STOPPED, "the stopped state")
        self.assert_stopped_look()
        self.assertIn("Stopped", w.view.badge.cget("text"))
        self.assertEqual(self.listed(), [])
        self.assertEqual(self.info("online"), "0")

    def test_closing_the_window_stops_the_server_cleanly(self):
        w = self.open_window()
        ann = self.member(self.start_server(), "ann")
        thread = w.thread
        self.root.tk.call(self.root.protocol("WM_DELETE_WINDOW"))   # the X
        self.assertTrue(ann.read_to_close().endswith(pcr.STOP_NOTICE.encode()))
        self.pump_until(lambda: w.closed, "the window to close")
        self.assertFalse(thread.is_alive())
        self.assertIn("INFO:pcr_server:stopped", self.log_file())
        self.assertNotIn("did not stop in time", self.log_file())

    def test_closing_a_stopped_window_closes_at_once(self):
        w = self.open_window()
        self.root.tk.call(self.root.protocol("WM_DELETE_WINDOW"))
        self.assertTrue(w.closed)

    # -- members ------------------------------------------------------------
    def test_disconnect_selected_member(self):
        w = self.open_window()
        port = self.start_server()
        ann, bob = self.member(port, "ann"), self.member(port, "bob")
        self.pump_until(lambda: len(self.listed()) == 2, "two members listed")
        self.assertFalse(self.usable(w.view.disconnect_button))   # nothing selected yet
        w.view.tree.selection_set(w.view.tree.get_children()[1])
        self.pump_until(lambda: self.usable(w.view.disconnect_button), "Disconnect to be usable")
        w.view.disconnect_button.invoke()
        got = bob.read_to_close()
        self.assertIn(b"you have been disconnected by the host\n", got)
        ann.read_until(b"bob has left the chat...\n")
        self.pump_until(lambda: self.listed() == [("ann", "127.0.0.1")], "bob gone from the list")
        self.assertEqual(self.info("online"), "1")
        said = ("bob", "disconnected by the host")
        self.pump_until(lambda: self.logged_line(self.log_panel(), *said), "the log panel line")
        self.assertTrue(self.logged_line(self.log_file(), *said))

    def test_member_list_says_what_kind_of_client_each_member_uses(self):
        w = self.open_window()
        port = self.start_server()
        self.member(port, "ann")
        app = Client(port)
        self.addCleanup(app.close)
        app.answer(b"bob")   # a bare alias: PrivateChatRoom-App
        self.pump_until(lambda: len(self.listed()) == 2, "ann and bob listed")
        self.assertEqual(w.view.tree.heading("kind", "text"), "Kind")
        kinds = [w.view.tree.set(item, "kind") for item in w.view.tree.get_children()]
        self.assertEqual(kinds, ["terminal", "App"])

    # -- the web page -----------------------------------------------------------
    def test_the_router_switch_asks_while_the_room_runs_and_its_address_is_the_one_friends_get(self):
        asked, closed = [], []

        class StubRouter:   # stands in for RouterPorts: no traffic leaves this process
            closed_ports: list = closed

            def __init__(self, ports):
                self.ports = ports

            def close(self):
                self.closed_ports.append(self.ports)

        def ask_router(settings, address, page_address, heard):
            ports = (address[1],) + ((page_address[1],) if page_address else ())
            asked.append(ports)
            result = pcr.RouterResult(pcr.RouterOutcome.FORWARDED, "192.168.1.20", ports, "UPnP",
                                      "203.0.113.7", {port: port + 1000 for port in ports})
            threading.Timer(0.2, heard, (result, None)).start()   # the router answers later
            return StubRouter(ports)
        with mock.patch.object(pcr, "ask_router", ask_router):
            w = self.open_window(host="0.0.0.0")
            self.assertFalse(w.view.upnp_on.get())   # off unless asked for
            self.assertEqual(str(w.view.upnp_switch.cget("text")),   # both families (issue 34)
                             "Let my router forward the port, and let it in over IPv6 "
                             "(UPnP / NAT-PMP / PCP)")
            port = self.start_server()
            self.assertEqual(asked, [])   # nothing asked while the box is not ticked
            w.view.upnp_switch.invoke()
            self.pump_until(lambda: self.address("public") == f"203.0.113.7:{port + 1000}",
                            "the router's address")
            self.assertEqual(asked, [(port,)])
            self.assertIn("your router forwards it: UPnP", self.shown(w.view.forward_note))
            self.assertEqual(self.copy("public"), f"203.0.113.7:{port + 1000}")
            w.view.upnp_switch.invoke()   # unticked: the mappings go
            self.pump_until(lambda: closed == [(port,)], "the mappings removed")
            self.assertNotIn("203.0.113.7", self.address("public"))
            w.view.upnp_switch.invoke()
            self.pump_until(lambda: len(asked) == 2, "asked again")
            w.view.stop_button.invoke()   # the room stops: the mappings go
            self.pump_until(lambda: w.state == pcr.RoomState.STOPPED and len(closed) == 2,
                            "the mappings removed at the stop")

    def assert_fits_the_screen(self) -> None:
        """As wide as the screen at most, with nothing clipped (the IPv6 rows and notes wrap)."""
        self.pump_for(0.2)
        self.assertLessEqual(self.root.winfo_reqwidth(), 1280)
        self.assertEqual(self.clipped(), [])

    def test_ipv6_addresses_show_for_the_page_and_terminals_and_say_the_app_cannot_use_them(self):
        with mock.patch.object(pcr, "internet_ipv6", return_value=STABLE):
            w = self.open_window(host="::")
            self.pump_until(lambda: w.ips["ipv6"] == STABLE, "the IPv6 address")
        port = w.settings.port
        self.assertEqual(self.shown(w.view.addresses["public6"]), f"[{STABLE}]:{port}")
        self.assertEqual(self.shown(w.view.addresses["page6"]), "")   # no page, no page link
        w.view.page_switch.invoke()
        self.root.update()
        web = w.settings.web_port
        self.assertEqual(self.shown(w.view.addresses["page6"]), f"http://[{STABLE}]:{web}/")
        self.assertIn(f"forward TCP ports {port} and {web}", self.shown(w.view.forward_note))
        self.assertEqual(self.shown(w.view.ipv6_note),
                         "The App cannot use IPv6 addresses: its address box takes IPv4 only. For "
                         "IPv6, the router's firewall must let these ports in: tick the router box "
                         "below, or set it by hand.")
        w.view.upnp_switch.invoke()   # the router will be asked: the box says so
        self.root.update()
        self.assertEqual(self.shown(w.view.ipv6_note), "The App cannot use IPv6 addresses: its "
                                                       "address box takes IPv4 only.")
        self.assert_fits_the_screen()
        self.assertNotRegex(self.window_texts(), r"(^|\s)--[a-z]")

    def test_a_room_on_ipv4_alone_or_a_machine_without_ipv6_shows_no_ipv6_row(self):
        for host, ipv6 in (("0.0.0.0", STABLE), ("::", None)):
            with self.subTest(host=host), mock.patch.object(pcr, "internet_ipv6", return_value=ipv6):
                w = self.open_window(host=host)
                self.pump_until(lambda: w.mac != "looking up…", "the host's addresses")
                for kind in ("public6", "page6"):
                    self.assertEqual(self.shown(w.view.addresses[kind]), "")
                    self.assertEqual(self.shown(w.view.copy_buttons[kind]), "")
                self.assertEqual(self.shown(w.view.ipv6_note), "")
                self.close_window()

    def test_copy_gives_the_ipv6_links_the_page_with_its_key(self):
        try:
            pcr.open_listener("::1", 0).close()
        except OSError as e:
            self.skipTest(f"no IPv6 here ({e.strerror})")
        with mock.patch.object(pcr, "internet_ipv6", return_value=STABLE):
            w = self.open_window(host="::", room_key="long-enough-key")
            w.view.page_switch.invoke()
            port = self.start_server()
            self.pump_until(lambda: w.page_listening is not None, "the page")
        web = w.page_listening[1]
        self.assertEqual(self.copy("public6"), f"[{STABLE}]:{port}")
        self.assertIn("with a terminal with IPv6 (the App cannot use it)", self.shown(w.view.copied_note))
        self.assertEqual(self.copy("page6"), f"http://[{STABLE}]:{web}/#key=long-enough-key")
        self.assertIn("from a browser or a phone with IPv6", self.shown(w.view.copied_note))

    def test_the_router_row_gives_the_ipv6_firewalls_answer_and_the_way_in_behind_cgnat(self):
        def ask_router(settings, address, page_address, heard):
            ports = (address[1],)
            holes = pcr.RouterResult(pcr.RouterOutcome.FORWARDED, STABLE, ports, "UPnP", STABLE,
                                     {address[1]: address[1]}, tried=pcr.PINHOLE_PROTOCOLS)
            heard(pcr.RouterResult(pcr.RouterOutcome.NO_PUBLIC, "192.168.1.20", ports, "NAT-PMP",
                                   "100.64.0.1", reason="network failure", ipv6=holes), None)
            return mock.Mock()
        with mock.patch.object(pcr, "ask_router", ask_router), \
                mock.patch.object(pcr, "internet_ipv6", return_value=STABLE):
            w = self.open_window(host="::", upnp=True)
            port = self.start_server()
            self.pump_until(lambda: "CGNAT" in self.shown(w.view.router_note), "the CGNAT sentence")
        note = self.shown(w.view.router_note)
        self.assertIn(f"friends with IPv6 can join at [{STABLE}]:{port} (for a terminal).", note)
        self.assertIn(f"Your router's IPv6 firewall lets TCP port {port} in to {STABLE} (UPnP).", note)
        self.assert_fits_the_screen()

    def test_a_router_without_a_public_address_is_named_cgnat_in_the_window(self):
        def ask_router(settings, address, page_address, heard):
            result = pcr.RouterResult(pcr.RouterOutcome.NO_PUBLIC, "192.168.1.20", (address[1],),
                                      "NAT-PMP", "100.64.0.1", reason="network failure")
            heard(result, None)
            return mock.Mock()
        with mock.patch.object(pcr, "ask_router", ask_router):
            w = self.open_window(host="0.0.0.0", upnp=True)
            self.start_server()
            self.pump_until(lambda: "CGNAT" in self.shown(w.view.router_note), "the CGNAT sentence")
            self.assertIn("forward TCP port", self.shown(w.view.forward_note))   # the manual way

    def test_the_page_switch_serves_the_page_and_copy_link_gives_its_link(self):
        if ws_connect is None:
            self.skipTest(NO_WEBSOCKETS)
        service = PublicIpService("203.0.113.7")
        self.addCleanup(service.close)
        with mock.patch.dict(os.environ, {"no_proxy": "127.0.0.1"}):
            w = self.open_window(public_ip_url=service.url, port=free_port_and_the_next())
            port = self.start_server()
            self.pump_until(lambda: w.ips["public"] == "203.0.113.7", "the public address")
        self.assertEqual(w.view.copy_buttons["page"].winfo_manager(), "")   # off unless asked for
        w.view.page_switch.invoke()
        self.pump_until(lambda: w.page_listening is not None, "the page to be served")
        web = w.page_listening[1]
        self.assertEqual(web, port + 1)
        self.assertEqual(w.view.copy_buttons["page"].winfo_manager(), "grid")
        self.assertIn(f"forward TCP ports {port} and {web}", w.view.forward_note.cget("text"))
        w.view.copy_buttons["page"].invoke()
        self.assertEqual(self.root.clipboard_get(), f"http://203.0.113.7:{web}/")
        self.assertIn("from a browser", w.view.copied_note.cget("text"))
        wendy = WebMember(web, "wendy")
        self.addCleanup(wendy.close)
        wendy.until("welcome")
        self.pump_until(lambda: self.listed() == [("wendy", "127.0.0.1")], "wendy listed")
        self.assertEqual(w.view.tree.set(w.view.tree.get_children()[0], "kind"), "web")
        w.view.tree.selection_set(w.view.tree.get_children()[0])
        self.pump_until(lambda: self.usable(w.view.disconnect_button), "Disconnect to be usable")
        w.view.disconnect_button.invoke()
        self.assertIn("disconnected by the host", wendy.until("note")["text"])
        self.pump_until(lambda: self.listed() == [], "wendy gone from the list")

    def test_a_web_member_whose_connection_is_lost_is_listed_away_and_can_be_disconnected(self):
        if ws_connect is None:
            self.skipTest(NO_WEBSOCKETS)
        w = self.open_window(web_port=free_port())
        port = self.start_server()
        ann = self.member(port, "ann")
        wendy = WebMember(w.page_listening[1], "wendy")
        self.addCleanup(wendy.close)
        wendy.until("count", n=2)
        wendy.lose()

        def kinds() -> list[str]:
            return [w.view.tree.set(item, "kind") for item in w.view.tree.get_children()]
        self.pump_until(lambda: kinds() == ["terminal", "web, away"], "wendy listed as away")
        w.view.tree.selection_set(w.view.tree.get_children()[1])
        self.pump_until(lambda: self.usable(w.view.disconnect_button), "Disconnect to be usable")
        w.view.disconnect_button.invoke()
        ann.read_until(b"wendy has left the chat...\n1 person is online...\n")
        self.pump_until(lambda: self.listed() == [("ann", "127.0.0.1")], "wendy gone from the list")

    def test_switching_the_page_off_tells_its_members_and_keeps_the_room(self):
        if ws_connect is None:
            self.skipTest(NO_WEBSOCKETS)
        w = self.open_window(web_port=free_port())
        port = self.start_server()
        self.assertTrue(w.view.page_on.get())
        ann = self.member(port, "ann")
        wendy = WebMember(w.page_listening[1], "wendy")
        self.addCleanup(wendy.close)
        wendy.until("welcome")
        w.view.page_switch.invoke()
        self.assertIn("turned the web page off", wendy.until("note")["text"])
        ann.read_until(b"wendy has left the chat...\n")
        self.pump_until(lambda: w.page_listening is None, "the page off")
        ann.send(b"ann: still here\n")
        ann.read_until(b"ann: still here\n")

    def test_chat_text_never_shows_in_the_window(self):
        w = self.open_window()
        port = self.start_server()
        ann, bob = self.member(port, "ann"), self.member(port, "bob")
        ann.send(b"ann: my secret plan\n")
        bob.read_until(b"ann: my secret plan\n")
        self.pump_for(0.5)
        self.assertTrue(self.logged_line(self.log_panel(), "bob", "joined"))   # it gets the log
        self.assertNotIn("secret", self.log_panel())
        self.assertNotIn("secret", self.status())

    # -- the log panel --------------------------------------------------------
    def test_log_panel_follows_the_log_and_keeps_the_last_lines(self):
        w = self.open_window()
        for i in range(pcr.LOG_LINES + 250):
            pcr.log.info("line %d", i)
            if i in (100, pcr.LOG_LINES - 1):   # in three batches: old lines must go
                self.pump_for(0.15)
        self.pump_for(0.3)
        lines = self.log_panel().rstrip("\n").split("\n")
        self.assertEqual(len(lines), pcr.LOG_LINES)
        self.assertTrue(lines[-1].endswith(f"line {pcr.LOG_LINES + 249}"), lines[-1])
        self.assertTrue(lines[0].endswith("line 250"), lines[0])
        pcr.log.warning("one more")
        self.pump_until(lambda: "one more" in self.log_panel(), "a line logged later")
        self.assertIn("WARNING", w.view.log_text.tag_names("end-2c"))

    # -- port and address -------------------------------------------------------
    def test_change_port_accepts_only_1_to_65535_and_saves_it(self):
        w = self.open_window()
        w.view.port_button.invoke()
        dialog = w.dialog
        self.assertTrue(dialog.is_open())
        for bad in ("0", "70000", "abc", "", "5 0"):
            self.fill(dialog, bad)
            self.assertTrue(dialog.is_open(), bad)
            self.assertIn("not a port number from 1 to 65535", dialog.problem.cget("text"))
        port = free_port()
        self.fill(dialog, str(port))
        self.assertFalse(dialog.is_open())
        with open(pcr.PORT_FILE, encoding="utf-8") as f:
            self.assertEqual(f.read().strip(), str(port))
        self.assertIn(f"127.0.0.1:{port}", self.info("listen"))
        self.assertEqual(self.start_server(), port)
        self.member(port, "ann")

    def members_in_a_running_window(self) -> tuple[int, Client]:
        """A running window with ann listed; the port and ann."""
        self.open_window()
        port = self.start_server()
        ann = self.member(port, "ann")
        self.pump_until(lambda: self.listed() == [("ann", "127.0.0.1")], "ann in the list")
        return port, ann

    def assert_still_in(self, ann: Client, port: int) -> None:
        self.assertEqual(ann.read_for(0.3), b"")   # no stop lines, no close
        self.assertEqual((self.window.state, self.window.listening[1]), (pcr.RoomState.RUNNING, port))

    def test_change_port_with_members_asks_first_and_cancel_keeps_them(self):
        old, ann = self.members_in_a_running_window()
        w = self.window
        w.view.port_button.invoke()
        self.fill(w.dialog, str(free_port()))
        confirm = w.dialog
        self.assertTrue(confirm.is_open())
        self.assertIn("ann", confirm.message.cget("text"))
        self.assertIn("disconnected", confirm.message.cget("text"))
        self.assertEqual(str(confirm.ok_button.cget("text")), "Restart")
        confirm.cancel_button.invoke()
        self.assert_still_in(ann, old)
        self.assertEqual(w.settings.port, old)

    def test_address_not_on_this_machine_is_refused_before_the_room_stops(self):
        port, ann = self.members_in_a_running_window()
        w = self.window
        w.view.address_button.invoke()
        self.fill(w.dialog, "192.0.2.77", str(port))
        self.assertTrue(w.dialog.is_open())
        self.assertIn("192.0.2.77 is not on this machine", w.dialog.problem.cget("text"))
        self.assert_still_in(ann, port)

    def test_port_in_use_is_refused_before_the_room_stops(self):
        port, ann = self.members_in_a_running_window()
        blocker = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(blocker.close)
        w = self.window
        w.view.port_button.invoke()
        self.fill(w.dialog, str(blocker.getsockname()[1]))
        self.assertTrue(w.dialog.is_open())
        self.assertIn("already in use", w.dialog.problem.cget("text"))
        self.assert_still_in(ann, port)

    def test_listen_address_on_the_same_port_restarts_there(self):
        w = self.open_window()
        port = self.start_server()
        w.view.address_button.invoke()
        self.fill(w.dialog, "0.0.0.0", str(port))   # its own port is in use: by this room
        self.assertFalse(w.dialog.is_open())        # nobody in: no need to ask
        self.pump_until(lambda: w.state == pcr.RoomState.RUNNING and w.listening == ("0.0.0.0", port),
                        "the restart on every network")

    def test_change_port_while_running_restarts_on_the_new_port(self):
        old, ann = self.members_in_a_running_window()
        w = self.window
        w.view.port_button.invoke()
        new = free_port()
        self.fill(w.dialog, str(new))
        w.dialog.ok_button.invoke()   # Restart: ann will be disconnected
        self.assertTrue(ann.read_to_close().endswith(pcr.STOP_NOTICE.encode()))
        self.pump_until(lambda: w.state == pcr.RoomState.RUNNING and w.listening[1] == new,
                        "the restart on the new port")
        self.member(new, "bob")
        self.pump_until(lambda: self.listed() == [("bob", "127.0.0.1")], "bob in the list")

    def test_set_listen_address_takes_host_and_port(self):
        w = self.open_window(host="0.0.0.0")
        w.view.address_button.invoke()
        dialog = w.dialog
        port = free_port()
        self.fill(dialog, "no such host!", str(port))
        self.assertIn("not an IP address or host name", dialog.problem.cget("text"))
        self.fill(dialog, "127.0.0.1", "abc")
        self.assertIn("not a port number", dialog.problem.cget("text"))
        self.fill(dialog, " 127.0.0.1 ", str(port))
        self.assertFalse(dialog.is_open())
        self.assertEqual((w.settings.host, w.settings.port), ("127.0.0.1", port))
        self.assertEqual(self.start_server(), port)
        self.assertEqual(self.info("listen"), f"127.0.0.1:{port}")


class WindowFitTest(unittest.TestCase):
    """The window fits a laptop (issue 31): a 1366×768 screen above a 40 px
    taskbar, and 1280×720, scrolling where needed.  Its size is set once and
    nothing it shows changes it (a key, a Copy click, a port change, as
    xdotool reads it), and no row is clipped.  On a network of its own where
    namespaces can be made (the invitation's code shows then), else on loopback."""

    def fits(self, size: str) -> None:
        try:
            import tkinter  # noqa: F401
        except ImportError:
            self.skipTest("tkinter is not installed")
        if WINDOWS or not shutil.which("xdotool"):
            self.skipTest("needs xdotool and an X server (Xvfb)")
        display = start_xvfb(size)
        net = None if test_net_missing() else TestNet(self)
        folder = net.dir if net else tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        ports = (5050, 5060) if net else (free_port_and_the_next(), free_port_and_the_next())
        command = [sys.executable, "-c", WINDOW_FIT, HERE, *map(str, ports),
                   "0.0.0.0" if net else "127.0.0.1"]
        done = subprocess.run(net.inside(*command) if net else command, cwd=folder,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "DISPLAY": display})
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        steps = [json.loads(line) for line in done.stdout.splitlines()]
        self.assertEqual([step["step"] for step in steps], ["started with a key", "copied", "new port"])
        wide, tall = map(int, size.split("x"))
        for step in steps:
            self.assertEqual((step["WIDTH"], step["HEIGHT"]), (steps[0]["WIDTH"], steps[0]["HEIGHT"]),
                             step)
            self.assertLessEqual(step["X"] + step["WIDTH"], wide, step)
            self.assertLessEqual(step["Y"] + step["HEIGHT"], tall - pcr.TASKBAR, step)
            self.assertEqual(step["clipped"], [], step)
            self.assertEqual(step["wider"], [], step)   # nothing cut off at the right
            self.assertEqual(step["scrolls"].split()[-1], str(step["holds"]), step)   # all of it

    def test_on_a_1366_by_768_laptop_above_its_taskbar(self):
        self.fits("1366x768")

    def test_on_a_1280_by_720_screen(self):
        self.fits("1280x720")


class GuiLaunchTest(unittest.TestCase):
    """--gui where no window can open: one sentence, exit status 1."""

    def run_gui_quietly(self) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = pcr.run_gui(pcr.Settings(**FAST))
        return code, err.getvalue()

    @unittest.skipIf(WINDOWS, "Tk on Windows draws on the desktop, not on an X DISPLAY: "
                              "there is no display to take away (the window would open)")
    def test_without_a_display_says_so_and_returns_1(self):
        try:
            import tkinter  # noqa: F401
        except ImportError:
            self.skipTest("tkinter is not installed")
        with mock.patch.dict(os.environ, {"DISPLAY": f":{unused_display()}"}):
            code, text = self.run_gui_quietly()
        self.assertEqual(code, 1)
        self.assertEqual(len(text.strip().splitlines()), 1, text)
        self.assertIn("without --gui", text)
        self.assertNotIn("Traceback", text)

    def test_without_tkinter_says_how_to_install_it(self):
        with mock.patch.dict(sys.modules, {"tkinter": None}):
            code, text = self.run_gui_quietly()
        self.assertEqual(code, 1)
        self.assertEqual(len(text.strip().splitlines()), 1, text)
        if WINDOWS:   # the embeddable Python has none; the python.org installer has it
            self.assertIn("the embeddable Python has no tkinter", text)
            self.assertIn("install Python from python.org", text)
            self.assertIn("py pcr_server.py --gui", text)
        else:
            self.assertIn("apt install python3-tk" if sys.platform != "darwin" else "python.org", text)
            self.assertIn("python3 pcr_server.py --gui", text)
        self.assertNotIn("apt" if WINDOWS else "embeddable", text)
        self.assertNotIn("Traceback", text)

    def test_the_headless_server_does_not_load_tkinter(self):
        code = f"import sys, {pcr.__name__}; print('tkinter' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True,
                             text=True, timeout=WAIT * 2)
        self.assertEqual(out.stdout.strip(), "False", out.stderr)


class HostWindowTest(unittest.TestCase):
    """The window on a first evening: the page ticked, no stale words, Stop asks (issue 27),
    with GuiTest's helpers (not its tests)."""

    setUpClass = GuiTest.__dict__["setUpClass"]
    setUp, open_window, close_window = GuiTest.setUp, GuiTest.open_window, GuiTest.close_window
    pump_until, pump_for, usable = GuiTest.pump_until, GuiTest.pump_for, GuiTest.__dict__["usable"]
    start_server, member, info, address = (GuiTest.start_server, GuiTest.member, GuiTest.info,
                                           GuiTest.address)
    shown, status, fill = GuiTest.shown, GuiTest.status, GuiTest.fill
    room_with_public_address = GuiTest.room_with_public_address

    def test_the_page_is_ticked_from_the_command_line_and_served_at_port_plus_one(self):
        import tkinter
        port = free_port_and_the_next()
        settings, _ = pcr.settings_from(pcr.parse_args(
            ["--host", "127.0.0.1", "--port", str(port), "--public-ip-url", "", "--log-file", ""]))
        self.root = tkinter.Tk()
        self.window = w = pcr.ServerWindow(self.root, settings)
        self.addCleanup(self.close_window)
        self.assertTrue(w.view.page_on.get())
        self.start_server()
        self.assertEqual(w.page_listening[1], port + 1)

    def test_a_taken_page_port_opens_the_room_without_the_page_and_says_so(self):
        w = self.open_window(host="127.0.0.1")
        busy = socket.create_server(("127.0.0.1", w.settings.port + 1))
        self.addCleanup(busy.close)
        w.view.page_on.set(True)
        w.switch_page()
        self.start_server()
        self.assertFalse(w.view.page_on.get())
        said = self.shown(w.view.copied_note)
        self.assertIn(f"Port {w.settings.port + 1} is already in use", said)
        self.assertIn("Change port…", said)

    def test_stop_asks_first_when_anyone_is_in_the_room(self):
        w = self.open_window()
        ann = self.member(self.start_server(), "ann")
        self.pump_until(lambda: self.info("online") == "1", "ann in the list")
        w.view.stop_button.invoke()
        self.assertIn("ann", w.dialog.message.cget("text"))
        w.dialog.cancel_button.invoke()
        self.pump_for(0.2)
        self.assertEqual(w.state, pcr.RoomState.RUNNING)
        w.view.stop_button.invoke()
        w.dialog.ok_button.invoke()
        self.assertTrue(ann.read_to_close().endswith(pcr.STOP_NOTICE.encode()))
        self.pump_until(lambda: w.state == pcr.RoomState.STOPPED, "the stopped state")

    def test_stop_of_an_empty_room_asks_nothing(self):
        w = self.open_window()
        self.start_server()
        w.view.stop_button.invoke()
        self.pump_until(lambda: w.state == pcr.RoomState.STOPPED, "the stopped state")
        self.assertIsNone(w.dialog)

    def test_a_refusal_of_the_closed_room_goes_once_it_starts(self):
        w = self.open_window()
        w.copied_ms = 60000   # only Start takes it away here
        w.view.copy_buttons["private"].invoke()
        self.assertIn("Nothing copied: the room is closed", self.shown(w.view.copied_note))
        self.start_server()
        self.assertEqual(self.shown(w.view.copied_note), "")

    def test_a_port_in_use_says_how_to_pick_another_and_goes_with_the_port(self):
        blocker = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(blocker.close)
        w = self.open_window(port=blocker.getsockname()[1])
        w.view.start_button.invoke()
        self.pump_until(lambda: w.state == pcr.RoomState.ERROR, "the error state")
        self.assertIn("Change port…", self.status())
        self.assertNotIn("….", self.status())
        w.view.port_button.invoke()
        self.fill(w.dialog, str(free_port_and_the_next()))
        self.assertEqual(w.state, pcr.RoomState.STOPPED)
        self.assertNotIn("already in use", self.status())
        self.assertNotIn("Error", w.view.badge.cget("text"))

    def test_copied_fades_after_a_while(self):
        w = self.open_window()
        w.copied_ms = 200
        self.start_server()
        self.pump_until(lambda: self.address("private") != "looking up…", "the private address")
        w.view.copy_buttons["private"].invoke()
        self.assertEqual(str(w.view.copy_buttons["private"].cget("text")), "Copied ✓")
        self.pump_until(lambda: str(w.view.copy_buttons["private"].cget("text")) == "Copy",
                        "Copied ✓ to fade")
        self.assertEqual(self.shown(w.view.copied_note), "")

    def test_the_https_box_gets_the_page_a_certificate_or_says_what_to_forward(self):
        if pcr.ssl is None:
            self.skipTest("no ssl module")
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        ca = StandInCa(folder)
        ca.problems = [pcr.AcmeError("unreached", "connection", unreached=True,
                                     detail="connection: refused")]
        patch = mock.patch.object(pcr.AcmeClient, "certificate",
                                  lambda client, *args: ca.certificate(client, *args))
        patch.start()
        self.addCleanup(patch.stop)
        self.room_with_public_address(https=True, web_port=0)
        page = self.window.page_listening[1]
        note = self.window.view.https_note
        self.pump_until(lambda: "on your router" in self.shown(note), "the port 80 sentence")
        self.assertRegex(self.shown(note), rf"^HTTPS: The certificate authority could not reach port "
                                           rf"80 of 203\.0\.113\.7 \(connection: refused\): forward "
                                           rf"TCP port 80 to [\d.]+:{page} on your router; .+\.$")
        self.assertEqual(self.address("page"), f"http://203.0.113.7:{page}/")
        for _ in range(2):   # off, and on again: asked again, and this time it comes
            self.window.view.https_switch.invoke()
        self.pump_until(lambda: self.address("page") == f"https://203.0.113.7:{page}/",
                        "the https link")
        self.assertRegex(self.shown(note), r"^HTTPS: The page's certificate for 203\.0\.113\.7 is in "
                                           r"place \(new from Let's Encrypt, valid until .+\)\.$")
        self.assertEqual(ca.orders, ["203.0.113.7", "203.0.113.7"])
        self.window.view.https_switch.invoke()   # off: plain http for everyone again
        self.pump_until(lambda: self.address("page").startswith("http://"), "the http link")
        self.assertEqual(self.shown(note), "")
        self.assertIsNone(self.window.server.door.secure.context)



# ---------------------------------------------------------------------------
# 13. The terminal client
# ---------------------------------------------------------------------------


class ClientModeTest(ServerCase):
    """`pcr_server.py --connect HOST[:PORT]`: the same file as a terminal client."""

    def client(self, address: str | None = None, **kw) -> ClientProcess:
        c = ClientProcess(address or f"127.0.0.1:{self.port}", **kw)
        self.addCleanup(c.close)
        return c

    def joined(self, name: str, count: str) -> ClientProcess:
        c = self.client(name=name)
        c.read_until(f"[{count}]\n")
        return c

    def assert_one_sentence(self, err: str) -> None:
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertNotIn("Traceback", err)

    def certificate(self) -> str:
        """A self-signed certificate for 127.0.0.1 and localhost; its path (self.key: its key)."""
        if pcr.ssl is None:
            self.skipTest("no ssl module")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        cert, self.key = make_certificate(directory)
        return cert

    def tls_room(self, cert: str) -> FakeRoom:
        context = pcr.ssl.SSLContext(pcr.ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, self.key)
        return FakeRoom(self, context)

    def start_ipv6(self, **overrides) -> None:
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        try:
            self.start(host="::1", **overrides)
        except pcr.StartError as e:
            self.skipTest(f"no IPv6 loopback: {e}")

    # -- the address --------------------------------------------------------
    def test_address_forms_and_the_default_port(self):
        self.assertEqual(pcr.server_address("example.org"), ("example.org", 5050))
        self.assertEqual(pcr.server_address("10.0.0.2:6000"), ("10.0.0.2", 6000))
        self.assertEqual(pcr.server_address("[::1]:6000"), ("::1", 6000))
        self.assertEqual(pcr.server_address("[::1]"), ("::1", 5050))
        self.assertEqual(pcr.server_address("fe80::1"), ("fe80::1", 5050))

    def test_bad_addresses_are_refused(self):
        for text in ("", ":5050", "host:0", "host:99999", "host:x", "[::1", "[::1]5050", "[::1]:"):
            with self.subTest(text=text), self.assertRaises(pcr.argparse.ArgumentTypeError):
                pcr.server_address(text)

    def test_bad_address_on_the_command_line_is_one_sentence(self):
        c = self.client("host:99999", name="ann")
        self.assertEqual(c.wait(), 2)
        self.assert_one_sentence(c.errors())
        self.assertIn("not a port number", c.errors())

    # -- what is shown ------------------------------------------------------
    def test_count_lines_are_shown_in_brackets_and_nothing_else_is(self):
        self.assertEqual(pcr.shown_line("1 person is online..."), "[1 person is online]")
        self.assertEqual(pcr.shown_line("3 people are online..."), "[3 people are online]")
        self.assertEqual(pcr.shown_line("2pac: 3 people are online..."), "2pac: 3 people are online...")
        self.assertEqual(pcr.shown_line("1 people are online..."), "1 people are online...")
        self.assertIsNone(pcr.online_count("9" * 5000 + " people are online..."))

    def test_escape_sequences_from_the_server_are_not_shown(self):
        self.assertEqual(pcr.shown_line("a\x1b[2Jb\x07\tc"), "ab\tc")

    def test_odd_bytes_are_replaced_not_a_crash(self):
        room = FakeRoom(self, reply=b"ann joined the chat...\ncaf\xc3 \xff\x1b[2Jok \x07bell\n")
        c = self.client(f"127.0.0.1:{room.port}", name="ann", env={"PYTHONIOENCODING": "ascii"})
        self.assertEqual(c.wait(), 1)
        self.assertEqual(c.output(), "ann joined the chat...\ncaf? ?ok bell\n")
        self.assertIn("the server closed the connection", c.errors())
        self.assertNotIn("Traceback", c.errors())

    # -- joining and talking ------------------------------------------------
    def test_joins_and_shows_its_own_join_and_the_count(self):
        self.start()
        c = self.client(name="ann")
        c.read_until("ann joined the chat...\n")
        c.read_until("[1 person is online]\n")
        self.assertNotIn("1 person is online...", c.output())

    def test_in_the_room_is_said_only_once_the_room_has_let_you_in(self):
        room = FakeRoom(self, reply=b"ann joined the chat...\n")   # then it closes, count unsaid
        c = self.client(f"127.0.0.1:{room.port}", name="ann")
        c.read_until("ann joined the chat...\n")
        self.assertEqual(c.wait(), 1)
        self.assertNotIn("in the room", c.errors())
        self.start()
        c = self.client(name="ann")
        c.read_until("[1 person is online]\n")
        err = c.said("in the room as ann")
        self.assertIn(f"in the room as ann at 127.0.0.1:{self.port}; type a line", err)
        keys = "Ctrl+Z then Enter" if WINDOWS else "Ctrl+D"   # what ends typed input there
        self.assertIn(f"{keys} or Ctrl+C to leave", err)
        self.assertNotIn("connected to", err)

    def test_in_the_room_under_the_name_the_room_gave(self):
        self.start()
        self.member("bob")
        c = self.client(name="Bob")
        c.read_until("the room knows you as Bob (2)\n")
        c.said("in the room as Bob (2) at")

    def test_asks_for_a_name_when_none_is_given(self):
        self.start()
        c = self.client()
        c.read_until("Your name: ")
        c.type("zoe\n")
        c.read_until("zoe joined the chat...\n")

    def test_a_typed_line_reaches_another_member_and_is_not_printed_twice(self):
        self.start()
        bob = self.member("bob")
        ann = self.joined("ann", "2 people are online")
        ann.type("hello there\n")
        bob.read_until(b"ann: hello there\n")
        bob.send(b"bob: marker\n")
        ann.read_until("bob: marker\n")   # after the echo of ann's line
        self.assertEqual(ann.output().count("ann: hello there\n"), 1, ann.output())

    def test_a_typed_line_shows_once_in_a_real_terminal(self):
        try:
            import pty
        except ImportError:
            self.skipTest("no pseudo-terminals here (Windows)")
        self.start()
        bob = self.member("bob")
        controller, terminal = pty.openpty()
        self.addCleanup(os.close, controller)
        proc = subprocess.Popen([sys.executable, SERVER, "--connect", f"127.0.0.1:{self.port}",
                                 "--name", "ann"], stdin=terminal, stdout=terminal, stderr=terminal)
        os.close(terminal)
        self.addCleanup(lambda: proc.poll() is None and proc.kill() or proc.wait(START_WAIT))
        screen = bytearray()

        def read_screen_until(needle: bytes) -> None:
            deadline = time.monotonic() + WAIT
            while needle not in screen:
                self.assertLess(time.monotonic(), deadline, f"no {needle!r} on {bytes(screen)!r}")
                if select.select([controller], [], [], 0.1)[0]:
                    screen.extend(os.read(controller, 4096))
        read_screen_until(b"in the room as ann")
        os.write(controller, b"hello there\n")
        bob.read_until(b"ann: hello there\n")
        bob.send(b"bob: marker\n")   # the room sends it after ann's own line
        read_screen_until(b"bob: marker")
        self.assertEqual(screen.count(b"hello there"), 1, bytes(screen))
        os.write(controller, b"\x04")   # Ctrl+D
        self.assertEqual(proc.wait(START_WAIT), 0)

    def test_on_a_terminal_a_long_line_goes_on_in_indented_rows(self):
        """Words that the terminal's own wrap would put at the start of a row
        (`bob: ...` after 80 columns of mallory's, in words or wide characters)
        come on a row of their own, indented: never as a line of bob's (QA finding 11)."""
        if WINDOWS:
            self.skipTest("no pseudo-terminals here (Windows)")
        self.start()
        mallory = self.member("mallory")
        _, _, shown, changed = on_a_terminal(self, ["--connect", f"127.0.0.1:{self.port}",
                                                    "--name", "carol"], columns=80)
        shown_until(shown, changed, b"in the room as carol")
        for padding in (("ok see you tomorrow " * 4)[:70] + " ", "\u65e5" * 35 + " ", "x" * 71):
            with self.subTest(padding=padding[:8]):
                with changed:
                    del shown[:]
                mallory.send(f"{padding}bob: I forgot the door code\n".encode())
                screen = shown_until(shown, changed, b"door code\r\n")
                rows = screen.split(b"\x1b[K")[-1].decode().split("\r\n")[:-1]
                self.assertTrue(rows[0].startswith("mallory:"), rows)
                self.assertTrue(all(row.startswith("  ") for row in rows[1:]), rows)
                self.assertTrue(all(sum(2 if unicodedata.east_asian_width(c) == "W" else 1
                                        for c in row) <= 80 for row in rows), rows)
                self.assertEqual("".join(rows).replace(" ", ""),
                                 f"mallory: {padding}bob: I forgot the door code".replace(" ", ""))

    def test_typed_lines_and_the_goodbye_go_out_as_the_app_sends_them(self):
        room = FakeRoom(self)
        c = self.client(f"127.0.0.1:{room.port}", name="ann#K")
        c.read_until("ann#K joined the chat...\n")
        c.type("hi there\n\n")
        c.end_input()
        self.assertEqual(c.wait(), 0)
        self.assertEqual(room.done(), b"ann#K\nann#K: hi there\n\tann#K has left the chat...\n")

    def test_a_line_from_another_member_is_printed(self):
        self.start()
        bob = self.member("bob")
        ann = self.joined("ann", "2 people are online")
        bob.send(b"bob: hi ann\n")
        ann.read_until("bob: hi ann\n")

    def test_ipv6_address_in_brackets(self):
        self.start_ipv6()
        c = self.client(f"[::1]:{self.port}", name="six")
        c.read_until("six joined the chat...\n")

    # -- leaving --------------------------------------------------------------
    def expect_app_leave(self, watcher: Client, name: str) -> None:
        got = watcher.read_until(b"1 person is online...\n") + watcher.read_for(0.3)
        self.assertEqual(got.count(f"{name} has left the chat...\n".encode()), 1, got)
        self.assertIn(f'"{name}" (127.0.0.1) left: left', self.log_text())   # the goodbye line

    def test_end_of_input_sends_one_leave_line_and_exits_zero(self):
        self.start()
        bob = self.member("bob")
        ann = self.joined("ann", "2 people are online")
        ann.end_input()
        self.assertEqual(ann.wait(), 0)
        self.expect_app_leave(bob, "ann")
        self.assertNotIn("Traceback", ann.errors())

    @unittest.skipIf(WINDOWS, "Windows sends Ctrl+C to a whole console (this test's too), "
                              "Wine to none")
    def test_ctrl_c_sends_one_leave_line_and_exits_zero(self):
        self.start()
        bob = self.member("bob")
        ann = self.joined("ann", "2 people are online")
        ann.proc.send_signal(signal.SIGINT)
        self.assertEqual(ann.wait(), 0)
        self.expect_app_leave(bob, "ann")
        self.assertNotIn("Traceback", ann.errors())
        self.assertNotIn("KeyboardInterrupt", ann.errors())

    # -- when things go wrong -----------------------------------------------
    def test_unreachable_server_is_one_sentence_and_exit_one(self):
        port = free_port()
        c = self.client(f"127.0.0.1:{port}", name="ann")
        self.assertEqual(c.wait(), 1)
        self.assert_one_sentence(c.errors())
        self.assertIn(f"Cannot reach 127.0.0.1:{port}: the connection was refused", c.errors())
        self.assertEqual(c.output(), "")

    def test_refusal_is_shown_and_exit_one(self):
        self.start(max_clients=0)
        c = self.client(name="ann")
        self.assertEqual(c.wait(), 1)
        self.assertEqual(c.errors().strip(), "the room is full (0 connections); please try again later")
        self.assertEqual(c.output(), "")

    def test_silent_refusal_is_one_sentence_and_exit_one(self):
        self.start(allow=("10.0.0.0/8",))
        c = self.client(name="ann")
        self.assertEqual(c.wait(), 1)
        self.assert_one_sentence(c.errors())
        self.assertIn("closed the connection without asking for a name", c.errors())

    def test_room_key_in_the_name_joins_under_the_name_alone(self):
        self.start(room_key="s3cret-K")
        bob = self.connect().join("bob", raw=b"bob#s3cret-K")
        ann = self.joined("ann#s3cret-K", "2 people are online")
        ann.type("hello\n")
        got = bob.read_until(b"hello\n")
        self.assertTrue(got.endswith(b"\nann: hello\n"), got)   # the prefix with the key replaced
        ann.end_input()
        self.assertEqual(ann.wait(), 0)
        got = bob.read_until(b"1 person is online...\n") + bob.read_for(0.3)
        self.assertEqual(got.count(b"ann has left the chat...\n"), 1, got)
        self.assertNotIn("s3cret", ann.output())

    def test_wrong_room_key_is_said_on_stderr_and_exit_one(self):
        self.start(room_key="s3cret-K")
        c = self.client(name="ann#guess")
        self.assertEqual(c.wait(), 1)
        self.assertEqual(c.errors().splitlines()[-1],
                         "that room key is wrong: check it with the host and try again")
        self.assertEqual(c.output(), "")
        self.assertNotIn("in the room", c.errors())

    def test_refusal_with_input_closed_early_is_still_said_and_exit_one(self):
        self.start(room_key="s3cret-K")
        c = self.client(name="ann#guess")
        c.end_input()
        self.assertEqual(c.wait(), 1)
        self.assertIn("that room key is wrong", c.errors().splitlines()[-1])

    def test_input_closed_early_still_joins_says_its_lines_and_leaves(self):
        self.start()
        bob = self.member("bob")
        c = self.client(name="ann")
        c.type("hi bob\n")
        c.end_input()
        self.assertEqual(c.wait(), 0)
        got = bob.read_until(b"ann has left the chat...\n")
        self.assertIn(b"ann joined the chat...\n", got)
        self.assertIn(b"ann: hi bob\n", got)

    def test_server_going_away_is_said_and_exit_one(self):
        server = self.start()
        c = self.joined("ann", "1 person is online")
        self.assertTrue(self.on_loop(server.disconnect, "ann"))
        self.assertEqual(c.wait(), 1)
        self.assertIn("you have been disconnected by the host\n", c.output())
        self.assertEqual(c.errors().splitlines()[-1], "the server closed the connection")

    def test_server_stop_is_said_plainly_then_exit_zero(self):
        server = self.start()
        c = self.joined("ann", "1 person is online")
        server.loop.call_soon_threadsafe(server.stop)
        self.assertEqual(c.wait(), 0)
        self.assertTrue(c.output().endswith(
            "[1 person is online]\nthe server has been stopped; join again once it is back online\n"),
            c.output())
        self.assertNotIn("\t", c.output())
        self.assertNotIn("please close the app", c.output())
        self.assertNotIn("closed the connection", c.errors())

    # -- TLS --------------------------------------------------------------------
    def test_tls_with_the_servers_certificate_joins_and_talks(self):
        cert = self.certificate()
        room = self.tls_room(cert)
        c = self.client(f"127.0.0.1:{room.port}", name="ann", tls=True, ca=cert)
        c.read_until("ann joined the chat...\n")
        c.type("secret plans\n")
        c.end_input()
        self.assertEqual(c.wait(), 0)
        self.assertEqual(room.done(), b"ann\nann: secret plans\n\tann has left the chat...\n")
        self.assertNotIn("warning", c.errors())

    def test_tls_without_ca_fails_verification_in_one_sentence(self):
        room = self.tls_room(self.certificate())
        c = self.client(f"127.0.0.1:{room.port}", name="ann", tls=True)
        self.assertEqual(c.wait(), 1)
        self.assert_one_sentence(c.errors())
        self.assertIn("could not prove who it is", c.errors())
        self.assertEqual(room.done(), b"")

    def test_tls_certificate_must_name_the_host(self):
        cert = self.certificate()   # for 127.0.0.1 and localhost, not ::1
        self.start_ipv6(tls_cert=cert, tls_key=self.key)
        c = self.client(f"[::1]:{self.port}", name="ann", tls=True, ca=cert)
        self.assertEqual(c.wait(), 1)
        self.assert_one_sentence(c.errors())
        self.assertIn("lists localhost, 127.0.0.1, not ::1", c.errors())

    def test_certificate_that_does_not_list_the_address_says_what_it_lists(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        cert, key = make_certificate(directory, "DNS:myroom.example,IP:203.0.113.7")
        self.start(tls_cert=cert, tls_key=key)
        c = self.client(name="ann", tls=True, ca=cert)
        self.assertEqual(c.wait(), 1)
        self.assert_one_sentence(c.errors())
        self.assertIn(f"The certificate of 127.0.0.1:{self.port} lists myroom.example, "
                      f"203.0.113.7, not 127.0.0.1: connect with one of those, or ask the host "
                      f"for a certificate that lists the address you use.", c.errors())
        self.assertNotIn("--ca", c.errors())

    def test_tls_room_of_this_server(self):
        cert = self.certificate()
        self.start(tls_cert=cert, tls_key=self.key)
        c = self.client(name="ann", tls=True, ca=cert)
        c.read_until("ann joined the chat...\n")
        c.read_until("[1 person is online]\n")
        c.type("over TLS\n")
        c.read_until("ann: over TLS\n")
        c.end_input()
        self.assertEqual(c.wait(), 0)
        self.assertIn('"ann" (127.0.0.1) left: left', self.log_text())

    def test_tls_room_turning_people_away_is_one_sentence(self):
        cert = self.certificate()
        self.start(tls_cert=cert, tls_key=self.key, max_clients=0)
        c = self.client(name="ann", tls=True, ca=cert)
        self.assertEqual(c.wait(), 1)
        self.assert_one_sentence(c.errors())
        self.assertIn("closed the connection during the TLS handshake", c.errors())

    def test_plain_client_on_a_tls_room_is_told_to_add_tls_at_once(self):
        cert = self.certificate()
        self.start(tls_cert=cert, tls_key=self.key, handshake_timeout=30.0)
        t0 = time.monotonic()
        c = self.client(name="ann")
        self.assertEqual(c.wait(timeout=20), 1)
        self.assertLess(time.monotonic() - t0, 20)   # not when the server gives up on it
        self.assert_one_sentence(c.errors())
        self.assertIn(f"127.0.0.1:{self.port} is an encrypted room: add --tls", c.errors())

    def test_insecure_joins_with_a_warning(self):
        room = self.tls_room(self.certificate())
        c = self.client(f"127.0.0.1:{room.port}", name="ann", tls=True, insecure=True)
        c.read_until("ann joined the chat...\n")
        c.said("warning: --insecure: the server's certificate is not verified")
        c.end_input()
        self.assertEqual(c.wait(), 0)

    def test_tls_to_a_plain_server_is_told_to_leave_tls_out(self):
        self.start()
        c = self.client(name="ann", tls=True)
        self.assertEqual(c.wait(), 1)
        self.assert_one_sentence(c.errors())
        self.assertIn(f"127.0.0.1:{self.port} is not an encrypted room: connect without --tls",
                      c.errors())

    def test_unusable_ca_file_is_one_sentence(self):
        c = self.client("127.0.0.1:5050", name="ann", tls=True, ca=os.path.join(HERE, "no such.pem"))
        self.assertEqual(c.wait(), 2)
        self.assert_one_sentence(c.errors())
        self.assertIn("Cannot use the --ca file", c.errors())


@unittest.skipIf(WINDOWS, "no pseudo-terminals on Windows (and no readline: lines print where they fall)")
class HostTerminalTest(ServerCase):
    """--connect on a real terminal (a pseudo-terminal): an arriving line does
    not mix into the line being typed (issue 27)."""

    def test_an_arriving_line_prints_above_what_is_typed_and_the_typed_text_is_drawn_again(self):
        try:
            import readline  # noqa: F401
        except ImportError:
            self.skipTest("this Python has no readline")
        self.start()
        bob = self.member("bob")
        proc, leader, shown, changed = on_a_terminal(self, ["--connect", f"127.0.0.1:{self.port}",
                                                            "--name", "cy"])
        shown_until(shown, changed, b"in the room as cy")
        bob.read_until(b"cy joined the chat...\n")
        os.write(leader, b"half-typed mess")
        shown_until(shown, changed, b"half-typed mess")
        bob.send(b"bob: hello from cy's friend\n")
        after = shown_until(shown, changed, b"bob: hello from cy's friend\r\nhalf-typed mess")
        self.assertIn(b"\r\x1b[Kbob: hello from cy's friend\r\nhalf-typed mess", after)
        os.write(leader, b"age\r")
        bob.read_until(b"cy: half-typed message\n")


class ClientDoorTest(ServerCase):
    """--connect at the page's port, or given the page's link or an invitation,
    finds the room (issue 31), with ClientModeTest's helpers (not its tests)."""

    settings = {"web_port": 0}
    client, certificate = ClientModeTest.client, ClientModeTest.certificate

    def test_a_link_gives_its_address_whether_it_is_https_and_its_key(self):
        self.assertEqual(pcr.link_parts("http://192.0.2.10:5051/#key=Fam%26ly%2B2026%3Dx"),
                         ("192.0.2.10:5051", False, "Fam&ly+2026=x"))
        self.assertEqual(pcr.link_parts(" https://[::1]:5051/chat?x=1#key=k "), ("[::1]:5051", True, "k"))
        self.assertEqual(pcr.link_parts("HTTP://example.org/"), ("example.org:80", False, ""))
        self.assertEqual(pcr.link_parts("https://[::1]/"), ("[::1]:443", True, ""))
        for address in ("example.org:5050", "[::1]:5050", "192.0.2.10"):
            self.assertEqual(pcr.link_parts(address), (address, None, ""))

    def test_the_pages_port_is_asked_where_the_room_is_and_the_room_joined_within_5_s(self):
        server = self.start()
        asked = []   # when the page's port took the client's connection: after its start-up,
        accept = server._accept   # which took over 5 s once on a loaded Wine leg

        def accepting(listening):
            if listening[1] and not asked:
                asked.append(time.monotonic())
            accept(listening)
        server._accept = accepting
        c = self.client(f"127.0.0.1:{self.server.web_address[1]}", name="ann")
        c.read_until("ann joined the chat...\n")
        self.assertLess(time.monotonic() - asked[0], 5.0)
        said = c.said(f"in the room as ann at 127.0.0.1:{self.port};")
        self.assertIn(f"127.0.0.1:{self.server.web_address[1]} is the room's chat page: joining its "
                      f"room at 127.0.0.1:{self.port}\n", said)

    def test_an_invitations_link_joins_with_its_key(self):
        key = "Fam&ly+2026=x"
        self.start(room_key=key)
        tom = self.member(f"tom#{key}")
        link = pcr.invitation(f"http://127.0.0.1:{self.server.web_address[1]}/", key)
        c = self.client(link, name="ann")
        c.read_until("ann joined the chat...\n")
        tom.read_until(b"ann joined the chat...\n2 people are online...\n")
        c.type("hello from the link\n")
        tom.read_until(b"ann: hello from the link\n")
        self.assertNotIn(key, c.output() + c.errors())

    def test_the_rooms_own_link_joins_at_once(self):
        self.start()
        c = self.client(f"http://127.0.0.1:{self.port}/", name="ann")
        c.read_until("ann joined the chat...\n")
        self.assertNotIn("chat page", c.errors())

    def test_an_https_link_goes_over_tls(self):
        cert = self.certificate()
        self.start(tls_cert=cert, tls_key=self.key)
        c = self.client(f"https://localhost:{self.server.web_address[1]}/", name="ann", ca=cert)
        c.read_until("ann joined the chat...\n")
        c.said(f"in the room as ann at localhost:{self.port} over TLS;")

    def test_a_link_to_nothing_is_one_sentence(self):
        self.start()
        c = self.client(f"http://127.0.0.1:{free_port()}/#key=x", name="ann")
        self.assertEqual(c.wait(), 1)
        ClientModeTest.assert_one_sentence(self, c.errors())
        self.assertIn("Cannot reach 127.0.0.1:", c.errors())


# ---------------------------------------------------------------------------
# 14. The command line
# ---------------------------------------------------------------------------


class ProcessCase(unittest.TestCase):
    """A server process started as a person starts it, in a folder of its own."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)

    def server(self, *args) -> subprocess.Popen:
        proc = run_server("--host", "127.0.0.1", "--public-ip-url", "", *args, cwd=self.dir)

        def end():
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=START_WAIT)
        self.addCleanup(end)
        return proc


class CommandLineTest(ProcessCase):
    """The program as a person runs it."""

    def assert_signal_stops_the_room_cleanly(self, sig: int) -> None:
        port = free_port()
        proc = self.server("--port", str(port))
        wait_listening(port, proc)
        c = Client(port)
        self.addCleanup(c.close)
        c.join("ann")
        interrupt(proc, sig)
        got = c.read_to_close()
        self.assertTrue(got.endswith(pcr.STOP_NOTICE.encode()), got)
        self.assertEqual(proc.wait(START_WAIT), 0)

    @unittest.skipIf(WINDOWS, "Windows has no terminate signal to catch: terminate() kills")
    def test_sigterm_sends_stop_lines_and_exits_zero(self):
        self.assert_signal_stops_the_room_cleanly(signal.SIGTERM)

    @unittest.skipUnless(WINDOWS, "Ctrl+Break and the console window are Windows'")
    def test_ctrl_break_sends_stop_lines_and_exits_zero(self):
        self.assertIn(signal.SIGBREAK, pcr.STOP_SIGNALS)
        self.assert_signal_stops_the_room_cleanly(signal.SIGBREAK)

    def test_closing_the_console_window_asks_for_the_stop_and_holds_the_process(self):
        asked = []
        for event in (0, 1):   # Ctrl+C and Ctrl+Break: left to the signal handlers
            self.assertFalse(pcr.console_closing(event, lambda: asked.append(event), grace=0))
        self.assertEqual(asked, [])
        for event in pcr.CONSOLE_CLOSING:   # the window closed, a log-off, a shut-down
            t0 = time.monotonic()
            self.assertTrue(pcr.console_closing(event, lambda: asked.append(event), grace=0.2))
            self.assertGreaterEqual(time.monotonic() - t0, 0.2 - 0.02)   # Windows' clock: 15.6 ms steps
        self.assertEqual(asked, [2, 5, 6])
        self.assertLess(pcr.CLOSE_GRACE, 5.0)   # Windows ends the process after 5 s

    def test_restart_right_after_stop_reuses_the_port(self):
        port = free_port()
        first = self.server("--port", str(port))
        wait_listening(port, first)
        c = Client(port)
        c.join("ann")
        interrupt(first)
        self.assertEqual(first.wait(START_WAIT), 0)
        second = self.server("--port", str(port))
        wait_listening(port, second)
        c.close()

    def test_port_in_use_is_one_clear_sentence(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            proc = self.server("--port", str(port))
            _, err = proc.communicate(timeout=START_WAIT)
        self.assertEqual(proc.returncode, 1)
        self.assertIn(f"Port {port} is already in use", err)
        self.assertNotIn("Traceback", err)

    def test_windows_socket_errors_get_the_sentences_of_their_posix_twins(self):
        for name, number in (("EADDRINUSE", 10048), ("EADDRNOTAVAIL", 10049), ("EACCES", 10013)):
            posix = OSError(getattr(pcr.errno, name), "posix words")
            windows = OSError(number, "windows words")
            self.assertTrue(pcr.errno_is(windows, name) and pcr.errno_is(posix, name), name)
            self.assertEqual(pcr.bind_error_text(windows, "0.0.0.0", 80),
                             pcr.bind_error_text(posix, "0.0.0.0", 80))
        self.assertTrue(pcr.errno_is(OSError(10024, "too many sockets"), "ENFILE", "EMFILE"))
        self.assertFalse(pcr.errno_is(OSError(10024, "too many sockets"), "EACCES"))
        self.assertFalse(pcr.errno_is(OSError("no number"), "EACCES"))
        refused = pcr.bind_error_text(OSError(10013, "forbidden"), "0.0.0.0", 80)
        if WINDOWS:   # low ports need no administrator there: the port is held or reserved
            self.assertIn("another program holds it for itself, or Windows reserves it", refused)
            self.assertIn("excludedportrange", refused)
            self.assertNotIn("1024", refused)
        else:
            self.assertIn("ports below 1024 need administrator rights", refused)
            self.assertNotIn("Windows", refused)

    def test_help_gives_the_command_that_starts_the_file_here(self):
        command = "py pcr_server.py" if WINDOWS else "python3 pcr_server.py"
        self.assertEqual(pcr.RUN, command)
        with contextlib.redirect_stdout(io.StringIO()) as out, self.assertRaises(SystemExit):
            pcr.parse_args(["--help"])
        words = " ".join(out.getvalue().split())   # as said, wherever the lines wrap
        self.assertTrue(words.startswith(f"usage: {command} [-h]"), words[:80])
        self.assertIn(f"{command} --gui", words)
        self.assertIn(f"{command} --connect HOST[:PORT]", words)
        self.assertNotIn("python3" if WINDOWS else "py pcr_server.py", words)

    def test_address_not_on_this_machine_is_one_clear_sentence(self):
        proc = run_server("--host", "192.0.2.77", "--port", str(free_port()),
                          "--public-ip-url", "", cwd=self.dir)
        _, err = proc.communicate(timeout=START_WAIT)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("is not on this machine", err)
        self.assertNotIn("Traceback", err)

    def start_error(self, *args) -> tuple[int, str]:
        """Run the server with args until it gives up; its exit code and stderr."""
        proc = run_server("--public-ip-url", "", "--port", str(free_port()), *args, cwd=self.dir)
        try:
            _, err = proc.communicate(timeout=START_WAIT)
        except subprocess.TimeoutExpired:   # it started after all: end it, and say so
            proc.kill()
            proc.communicate()
            self.fail(f"the server started with {args}")
        return proc.returncode, err

    def assert_one_plain_sentence(self, err: str, *words: str) -> None:
        """The last line says it all, in words, with no Python internals."""
        last = err.strip().splitlines()[-1]
        for word in words:
            self.assertIn(word, last)
        for internal in ("Traceback", "_ssl.c", "('", "while attempting"):
            self.assertNotIn(internal, err)

    @unittest.skipUnless(hasattr(signal, "SIGHUP"), "no hang-up signal on Windows")
    def test_sighup_sends_stop_lines_and_exits_zero(self):   # a closed terminal, a dropped SSH
        self.assert_signal_stops_the_room_cleanly(signal.SIGHUP)

    def test_banner_says_how_friends_join_where_the_log_is_and_how_to_stop(self):
        service = PublicIpService("203.0.113.9")
        self.addCleanup(service.close)
        port = free_port_and_the_next()
        with mock.patch.dict(os.environ, {"no_proxy": "127.0.0.1"}):
            proc = self.server("--host", "0.0.0.0", "--port", str(port),
                               "--public-ip-url", service.url, "--log-file", "room.log")
        banner = printed_until(proc, "Ctrl+C stops the server.")   # one block, once looked up
        self.assertIn(f"The room is open on port {port}. How friends join:", banner)
        self.assertIn(f"  same network:       {pcr.private_ipv4()}:{port}\n", banner)
        forward = f"(forward TCP ports {port} and {port + 1} on your router to this machine first)"
        self.assertIn(f"At start the server asks {service.url} for this machine's public address; "
                      f"--public-ip-url '' turns that off.", banner)
        self.assertIn(f"Log file: {os.path.join(os.path.realpath(self.dir), 'room.log')}\n", banner)
        self.assertNotIn("room key", banner)
        self.assertIn(f"  over the internet:  203.0.113.9:{port} {forward}", banner)
        self.assertEqual(banner.count("How friends join"), 1)

    def test_banner_gives_the_pages_link_for_the_same_network_and_over_the_internet(self):
        service = PublicIpService("203.0.113.9")
        self.addCleanup(service.close)
        port, web = free_port(), free_port()
        with mock.patch.dict(os.environ, {"no_proxy": "127.0.0.1"}):
            proc = self.server("--host", "0.0.0.0", "--port", str(port), "--web-port", str(web),
                               "--public-ip-url", service.url, "--log-file", "room.log")
        banner = printed_until(proc, "Ctrl+C stops the server.")
        self.assertIn(f"forward TCP ports {port} and {web} on your router", banner)
        self.assertIn(f"  for a browser or a phone:\n"
                      f"    same network:       http://{pcr.private_ipv4()}:{web}/\n"
                      f"    over the internet:  http://203.0.113.9:{web}/\n", banner)

    def test_banner_without_the_public_address_look_up_says_it_is_off(self):
        proc = self.server("--host", "0.0.0.0", "--port", str(free_port()))
        banner = printed_until(proc, "Ctrl+C stops the server.")
        self.assertIn("over the internet:  not looked up: your router's status page shows "
                      "this machine's public address (forward TCP port", banner)
        self.assertNotIn("asks", banner)
        self.assertNotIn("encrypted", banner)

    def test_banner_of_an_encrypted_room_says_how_friends_join_it(self):
        cert, key = make_certificate(self.dir)
        proc = self.server("--host", "0.0.0.0", "--port", str(free_port()),
                           "--tls-cert", cert, "--tls-key", key)
        banner = printed_until(proc, "Ctrl+C stops the server.")
        self.assertIn("  encrypted:          the App cannot join; friends use "
                      f"{pcr.RUN} --connect ADDRESS --tls\n", banner)

    def test_banner_on_loopback_says_nobody_else_can_join(self):
        port = free_port()
        proc = self.server("--port", str(port))
        banner = printed_until(proc, "Ctrl+C stops the server.")
        self.assertIn(f"The room is open on 127.0.0.1:{port}, but nobody else can join", banner)
        self.assertIn("--host 0.0.0.0", banner)
        self.assertNotIn("same network", banner)

    def test_banner_of_a_keyed_room_gives_the_name_key_form_and_warns_when_short(self):
        proc = self.server("--host", "0.0.0.0", "--port", str(free_port()), "--room-key", "zq7")
        banner = printed_until(proc, "Ctrl+C stops the server.")
        self.assertIn("  with the room key:  friends type it on the page, or join as name#KEY\n",
                      banner)
        self.assertIn("  warning: the room key has only 3 characters, which can be guessed; "
                      "a key of 8 or more is much safer\n", banner)
        self.assertNotIn("zq7", banner)
        proc = self.server("--host", "0.0.0.0", "--port", str(free_port()), "--room-key", "long-key-9")
        self.assertNotIn("warning", printed_until(proc, "Ctrl+C stops the server."))

    def test_invalid_host_is_a_usage_error(self):
        code, err = self.start_error("--host", "999.1.1.1")
        self.assertEqual(code, 2)
        self.assert_one_plain_sentence(err, "--host", "'999.1.1.1' is not an IP address or host name")

    def test_unknown_host_name_is_one_sentence(self):
        code, err = self.start_error("--host", "no-such-host.invalid")
        self.assertEqual(code, 1)
        self.assert_one_plain_sentence(err, "Cannot find the address of", "--host 0.0.0.0")

    def test_empty_room_key_is_a_usage_error(self):
        for key in ("", "   "):
            code, err = self.start_error("--room-key", key)
            self.assertEqual(code, 2, key)
            self.assert_one_plain_sentence(err, "--room-key", "the room key is empty")

    def pem(self, name: str, text: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(text)
        return path

    def test_certificate_without_its_key_says_to_give_the_key(self):
        cert, key = make_certificate(self.dir)
        code, err = self.start_error("--tls-cert", cert)
        self.assertEqual(code, 1)
        self.assert_one_plain_sentence(err, f"{cert} holds no private key; give it with --tls-key FILE")
        code, err = self.start_error("--tls-cert", cert, "--tls-key", cert)
        self.assertEqual(code, 1)
        self.assert_one_plain_sentence(err, f"{cert} holds no private key", "--tls-key")

    def test_unreadable_or_garbled_tls_files_are_one_sentence(self):
        cert, key = make_certificate(self.dir)
        with open(cert, "rb") as f:
            garbled = f.read().replace(b"M", b"#", 40)
        cases = [
            ((os.path.join(self.dir, "missing.pem"),), "Cannot read"),
            ((self.pem("text.pem", b"hello\n"),), "holds no certificate"),
            ((self.pem("garbled.pem", garbled), key), "damaged"),
            ((cert, self.pem("nokey.pem", b"nothing here\n")), "holds no private key"),
        ]
        other_cert, other_key = make_certificate(tempfile.mkdtemp(dir=self.dir))
        cases.append(((cert, other_key), "does not belong to the certificate"))
        for files, words in cases:
            args = ["--tls-cert", files[0]] + (["--tls-key", files[1]] if len(files) > 1 else [])
            with self.subTest(files=files):
                code, err = self.start_error(*args)
                self.assertEqual(code, 1)
                self.assert_one_plain_sentence(err, words)

    def test_tls_errors_are_said_before_the_window_opens(self):
        code, err = self.start_error("--gui", "--tls-cert", self.pem("text.pem", b"hello\n"))
        self.assertEqual(code, 1)
        self.assert_one_plain_sentence(err, "holds no certificate")

    def test_missing_port_file_is_created_with_5050(self):
        port_file = os.path.join(self.dir, ".pcr_port")
        self.assertEqual(pcr.read_port_file(port_file), (5050, None))
        with open(port_file) as f:
            self.assertEqual(f.read().strip(), "5050")

    def test_port_file_is_used_when_no_port_is_given(self):
        port = free_port()
        with open(os.path.join(self.dir, ".pcr_port"), "w") as f:
            f.write(f"{port}\n")
        proc = self.server()
        wait_listening(port, proc)

    def test_bad_port_file_is_left_alone_with_a_warning(self):
        port_file = os.path.join(self.dir, ".pcr_port")
        for text in ("http", "0", "70000", ""):
            with open(port_file, "w") as f:
                f.write(text)
            port, warning = pcr.read_port_file(port_file)
            self.assertEqual(port, 5050)
            self.assertIn(port_file, warning)
            self.assertIn("not a port number", warning)
            with open(port_file) as f:
                self.assertEqual(f.read(), text)

    def read_port_file_apart(self) -> str:
        """read_port_file() in a process of its own with 300 MB of memory at most
        (where a process's memory can be limited: not on Windows)."""
        limit = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (300 << 20, 300 << 20)); "
                 if resource else "")
        code = f"{limit}import pcr_server; print(pcr_server.read_port_file())"
        out = subprocess.run([sys.executable, "-c", code], cwd=self.dir, capture_output=True,
                             text=True, timeout=START_WAIT, env={**os.environ, "PYTHONPATH": HERE})
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout

    @unittest.skipIf(WINDOWS, "no /dev/zero and no FIFOs on Windows")
    def test_port_file_that_is_not_a_regular_file_is_refused(self):
        port_file = os.path.join(self.dir, ".pcr_port")
        os.symlink("/dev/zero", port_file)
        self.assertIn("is not a regular file", self.read_port_file_apart())
        os.remove(port_file)
        os.mkfifo(port_file)   # opening one to read would wait for a writer
        self.assertIn("is not a regular file", self.read_port_file_apart())

    def test_port_file_read_is_bounded(self):
        with open(os.path.join(self.dir, ".pcr_port"), "w") as f:
            f.write("5051" + " " * 10_000_000)
        got = self.read_port_file_apart()
        self.assertIn("5050", got)
        self.assertIn("longer than a port number can be", got)

    def test_port_file_saved_by_notepad_or_powershell_is_read(self):
        port_file = os.path.join(self.dir, ".pcr_port")
        for raw, port in ((b"\xef\xbb\xbf6001\r\n", 6001),                      # UTF-8 with a BOM
                          ("\ufeff6002\r\n".encode("utf-16-le"), 6002),        # "Unicode", echo >
                          ("\ufeff6003\r\n".encode("utf-16-be"), 6003),
                          (b"6004 \r\n", 6004)):                                # cmd's echo 6004 >
            with open(port_file, "wb") as f:
                f.write(raw)
            self.assertEqual(pcr.read_port_file(port_file), (port, None), raw)
        with open(port_file, "wb") as f:
            f.write(b"\xef\xbb\xbfhttp\r\n")
        self.assertIn("holds 'http', which is not a port number", pcr.read_port_file(port_file)[1])

    def symlink(self, target: str, name: str) -> str:
        """A link `name` in the test's folder to `target` (POSIX only)."""
        if WINDOWS:
            self.skipTest("symbolic links need administrator rights or developer mode on "
                          "Windows (and Wine's are Unix links under a Windows name)")
        path = os.path.join(self.dir, name)
        os.symlink(target, path)
        return path

    def test_port_file_that_links_to_a_regular_file_is_read(self):
        with open(os.path.join(self.dir, "saved"), "w") as f:
            f.write("6001\n")
        self.symlink("saved", ".pcr_port")
        self.assertEqual(pcr.read_port_file(os.path.join(self.dir, ".pcr_port")), (6001, None))

    def test_dangling_port_file_link_is_not_followed(self):
        target = os.path.join(self.dir, "elsewhere")
        port_file = self.symlink(target, ".pcr_port")
        port, warning = pcr.read_port_file(port_file)
        self.assertEqual(port, 5050)
        self.assertIn("link to a file that does not exist", warning)
        self.assertFalse(os.path.exists(target))
        self.assertTrue(os.path.islink(port_file))
        with self.assertRaises(OSError):
            pcr.save_port_file(6000, port_file)
        with mock.patch.dict(pcr.os.__dict__), self.assertRaises(OSError):
            del pcr.os.O_NOFOLLOW   # as on Windows
            pcr.save_port_file(6000, port_file)
        self.assertFalse(os.path.exists(target))

    def test_room_key_file_gives_its_first_line(self):
        path = os.path.join(self.dir, "key.txt")
        with open(path, "w") as f:
            f.write("  s3cret \nsecond line\n")
        self.assertEqual(pcr.parse_args(["--room-key-file", path]).room_key, "s3cret")
        with open(path, "w") as f:
            f.write("\n")
        with contextlib.redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit) as exit:
            pcr.parse_args(["--room-key-file", path])
        self.assertEqual(exit.exception.code, 2)
        self.assertIn("holds no room key", err.getvalue())

    def test_the_https_flags_go_with_https_and_not_with_tls_cert(self):
        for args, said in ((["--acme-directory", "https://ca.example/dir"], "--acme-directory and "
                            "--acme-ca-file go with --https"),
                           (["--acme-ca-file", "ca.pem"], "go with --https"),
                           (["--https", "--tls-cert", "c.pem"], "it does not go with --tls-cert"),
                           (["--https", "--web-port", "off"], "does not go with --web-port off")):
            with self.subTest(args=args), contextlib.redirect_stderr(io.StringIO()) as err, \
                    self.assertRaises(SystemExit) as exit:
                pcr.parse_args(args)
            self.assertEqual(exit.exception.code, 2)
            self.assertIn(said, err.getvalue())
        args = pcr.parse_args(["--https", "--acme-directory", "https://ca.example/dir"])
        self.assertEqual((args.https, args.acme_directory, args.acme_ca_file),
                         (True, "https://ca.example/dir", ""))
        self.assertEqual(pcr.Settings().acme_directory, "https://acme-v02.api.letsencrypt.org/directory")

    def test_a_ca_file_that_cannot_be_used_or_a_plain_directory_is_one_sentence(self):
        for args, said in ((["--acme-ca-file", "missing.pem"], "Cannot use missing.pem for "
                            "--acme-ca-file (No such file or directory): give a PEM file holding "
                            "the certificate authority's certificate."),
                           (["--acme-directory", "http://ca.example/dir"], "--acme-directory "
                            "'http://ca.example/dir' is not an https:// address: an ACME directory "
                            "is always one.")):
            with self.subTest(args=args):
                proc = self.server("--https", "--log-file", "", *args)
                _, err = proc.communicate(timeout=START_WAIT)
                self.assertEqual(proc.returncode, 1)
                self.assertIn(said, err)
                self.assertNotIn("Traceback", err)

    def test_https_on_loopback_asks_for_no_certificate(self):
        port = free_port_and_the_next()
        proc = self.server("--https", "--port", str(port), "--log-file", "")
        said = printed_until(proc, "Ctrl+C stops the server.")
        said += printed_until(proc, "so no certificate is asked for")
        self.assertIn("  https: the room listens on 127.0.0.1 only, so no certificate is asked for",
                      said)
        self.assertFalse(os.path.exists(os.path.join(self.dir, ".pcr_https")))

    def test_nonsense_limits_are_refused(self):
        for args in (["--max-line", "-5"], ["--line-rate", "x"], ["--max-clients", "0"],
                     ["--handshake-timeout", "nan"]):
            proc = run_server(*args, cwd=self.dir)
            _, err = proc.communicate(timeout=START_WAIT)
            self.assertEqual(proc.returncode, 2, args)
            self.assertIn(args[0], err)
            self.assertNotIn("Traceback", err)

    def test_bad_port_argument_is_refused(self):
        proc = run_server("--port", "99999", cwd=self.dir)
        _, err = proc.communicate(timeout=START_WAIT)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("not a port number", err)

    def test_log_has_joins_and_leaves_but_never_chat_text(self):
        port = free_port()
        log_file = os.path.join(self.dir, "room.log")
        proc = self.server("--port", str(port), "--log-file", log_file)
        wait_listening(port, proc)
        ann = Client(port).join("ann")
        ann.send(b"ann: the secret is pumpkin-42\n")
        ann.read_until(b"pumpkin-42\n")
        ann.close()
        deadline = time.monotonic() + WAIT
        while True:
            with open(log_file, encoding="utf-8") as f:
                if '"ann" (127.0.0.1) left' in f.read():
                    break
            self.assertLess(time.monotonic(), deadline, "no leave in the log")
            time.sleep(0.02)
        interrupt(proc, signal.SIGTERM)
        _, err = proc.communicate(timeout=START_WAIT)
        with open(log_file, encoding="utf-8") as f:
            text = f.read()
        self.assertIn('joined: "ann" (terminal) from 127.0.0.1', text)
        self.assertIn('"ann" (127.0.0.1) left', text)
        self.assertRegex(text, r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+:INFO:pcr_server:")
        self.assertNotIn("pumpkin", text)
        self.assertNotIn("pumpkin", err)

    def test_log_file_rotates_at_60000_bytes_with_3_backups(self):
        log_file = os.path.join(self.dir, "rot.log")
        pcr.setup_logging(log_file, console=False)
        self.addCleanup(pcr.setup_logging, "", False)
        for i in range(3000):
            pcr.log.info("line %d %s", i, "x" * 80)
        names = sorted(n for n in os.listdir(self.dir) if n.startswith("rot.log"))
        self.assertEqual(names, ["rot.log", "rot.log.1", "rot.log.2", "rot.log.3"])
        self.assertTrue(all(os.path.getsize(os.path.join(self.dir, n)) <= 60000 for n in names))

    @unittest.skipIf(WINDOWS, "a file's mode means nothing on Windows: its folder's permissions "
                              "say who may read it")
    def test_log_file_and_its_rotations_are_readable_by_the_owner_only(self):
        log_file = os.path.join(self.dir, "rot.log")
        old = os.umask(0o022)
        try:
            pcr.setup_logging(log_file, console=False)
        finally:
            os.umask(old)
        self.addCleanup(pcr.setup_logging, "", False)
        for i in range(1500):
            pcr.log.info("line %d %s", i, "x" * 80)
        names = sorted(n for n in os.listdir(self.dir) if n.startswith("rot.log"))
        self.assertGreaterEqual(len(names), 3, names)
        for name in names:
            self.assertEqual(os.stat(os.path.join(self.dir, name)).st_mode & 0o777, 0o600, name)

    def test_public_ip_is_looked_up_from_the_given_url(self):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"203.0.113.9\n")

            def log_message(self, *args):
                pass
        httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self.addCleanup(httpd.server_close)
        self.addCleanup(httpd.shutdown)   # first
        got = []
        done = threading.Event()
        pcr.look_up_public_ip(f"http://127.0.0.1:{httpd.server_port}/",
                              lambda ip: (got.append(ip), done.set()))
        self.assertTrue(done.wait(WAIT))
        self.assertEqual(got, ["203.0.113.9"])

    def test_public_ip_unavailable_is_none_not_a_crash(self):
        got = []
        done = threading.Event()
        pcr.look_up_public_ip(f"http://127.0.0.1:{free_port()}/", lambda ip: (got.append(ip), done.set()))
        self.assertTrue(done.wait(WAIT))
        self.assertEqual(got, [None])

    def test_mac_address_format(self):
        mac = pcr.mac_address()
        self.assertRegex(mac, r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$|^unknown$")

    @unittest.skipUnless(resource and os.path.exists("/proc/self/stat"),
                         "needs a limit on open files and /proc to see CPU time (Linux)")
    def test_out_of_files_on_accept_pauses_without_spinning(self):
        port = free_port()
        code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48));"
                "import pcr_server; pcr_server.Gate.SPARE_FILES = -1000;"
                f"sys.exit(pcr_server.main(['--host', '127.0.0.1', '--port', '{port}',"
                "'--public-ip-url', '', '--max-per-ip', '1000', '--log-file', 'f.log']))")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=self.dir,
                                env={**os.environ, "PYTHONPATH": HERE},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        wait_listening(port, proc)
        clients = []
        for _ in range(80):
            clients.append(socket.create_connection(("127.0.0.1", port), WAIT))
        time.sleep(0.5)
        cpu0 = os.times()
        with open(f"/proc/{proc.pid}/stat") as f:
            before = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
        time.sleep(1.0)
        with open(f"/proc/{proc.pid}/stat") as f:
            after = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
        self.assertLess(after - before, 0.5 * os.sysconf("SC_CLK_TCK"))   # not spinning
        for c in clients:
            c.close()
        late = Client(port)
        self.addCleanup(late.close)
        late.join("late")   # accepting again once files are free
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=START_WAIT)
        self.assertEqual(err.count("cannot accept more connections"), 1, err)
        del cpu0


class Ipv6BannerTest(unittest.TestCase):
    """The banner's IPv6 lines (issue 34), under "over the internet" for each kind of
    friend, as join_banner writes them."""

    def banner(self, host: str = "::", public_ip: str | None = "203.0.113.7", **settings) -> str:
        settings = pcr.Settings(log_file="", **settings)
        join = pcr.friends_join(settings, (host, 5050), "192.168.1.20", public_ip, 5051, ipv6=STABLE)
        return pcr.join_banner(settings, join)

    def test_the_ipv6_links_come_under_over_the_internet_and_say_the_app_cannot_use_them(self):
        self.assertIn(
            "    same network:       http://192.168.1.20:5051/\n"
            "    over the internet:  http://203.0.113.7:5051/\n"
            "                        http://[2a0f:77:1::20]:5051/ (IPv6)\n"
            "  for the App or a terminal:\n"
            "    same network:       192.168.1.20:5050\n"
            "    over the internet:  203.0.113.7:5050 (forward TCP ports 5050 and 5051 on your router "
            "to this machine first)\n"
            "                        [2a0f:77:1::20]:5050 (IPv6, for a terminal: the App cannot use it, "
            "its address box takes IPv4 only)\n"
            "  IPv6:               your router's firewall must let TCP ports 5050 and 5051 in (--upnp, "
            "or by hand on the router)\n", self.banner())

    def test_without_a_public_ipv4_address_the_ipv6_link_is_the_one_over_the_internet(self):
        banner = self.banner(public_ip=None, upnp=True)
        self.assertIn("    same network:       http://192.168.1.20:5051/\n"
                      "    over the internet:  http://[2a0f:77:1::20]:5051/ (IPv6)\n", banner)
        self.assertIn("  IPv6:               asking your router's firewall to let TCP ports 5050 and "
                      "5051 in…\n", banner)

    def test_a_room_on_ipv4_alone_says_nothing_of_ipv6(self):
        self.assertNotIn("IPv6", self.banner(host="0.0.0.0"))


class HostCommandLineTest(ProcessCase):
    """What the host sees and gets from the command line on a first evening (issue 27)."""

    def stopped(self, proc: subprocess.Popen) -> tuple[str, str]:
        """Ctrl+C; then all the room printed on stdout and on stderr."""
        interrupt(proc)
        _, err = proc.communicate(timeout=START_WAIT)
        self.assertEqual(proc.returncode, 0, err)
        return bytes(proc.printed).decode(locale.getpreferredencoding(False)), err   # as printed_until

    def test_the_page_is_served_at_the_rooms_port_plus_one(self):
        port = free_port_and_the_next()
        proc = self.server("--port", str(port))
        wait_listening(port, proc)
        page = http_get(port + 1, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port + 1}\r\n\r\n".encode())
        self.assertTrue(page.startswith(b"HTTP/1.1 200 OK"), page[:80])
        self.assertIn(b"<!DOCTYPE html>", page)

    def test_web_port_off_serves_no_page_and_web_port_n_moves_it(self):
        port = free_port_and_the_next()
        proc = self.server("--port", str(port), "--web-port", "off")
        wait_listening(port, proc)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port + 1), WAIT).close()
        self.assertIsNone(pcr.settings_from(pcr.parse_args(["--port", "6000", "--web-port", "off"]))[0].web_port)
        self.assertEqual(pcr.settings_from(pcr.parse_args(["--port", "6000", "--web-port", "7001"]))[0].web_port, 7001)
        self.assertEqual(pcr.settings_from(pcr.parse_args(["--port", "6000"]))[0].web_port, 6001)
        self.assertIsNone(pcr.Settings().web_port)   # in-process rooms serve a page only when asked

    def test_a_taken_page_port_leaves_the_room_open_and_says_how_to_pick_one(self):
        port = free_port_and_the_next()
        with socket.socket() as busy:
            busy.bind(("0.0.0.0", port + 1))
            busy.listen()
            proc = self.server("--host", "0.0.0.0", "--port", str(port))
            banner = printed_until(proc, "Ctrl+C stops the server.")
            c = Client(port)
            self.addCleanup(c.close)
            c.join("ann")
        self.assertIn(f"  for a browser or a phone: the page is off, since port {port + 1} is already in use",
                      banner)
        self.assertIn("--web-port N", banner)

    def test_the_banner_says_whom_each_address_is_for(self):
        port = free_port_and_the_next()
        proc = self.server("--host", "0.0.0.0", "--port", str(port))
        banner = printed_until(proc, "Ctrl+C stops the server.")
        ip = pcr.private_ipv4()
        self.assertIn(f"  for a browser or a phone:\n    same network:       http://{ip}:{port + 1}/\n",
                      banner)
        self.assertIn(f"  for the App or a terminal:\n    same network:       {ip}:{port}\n", banner)
        self.assertLess(banner.index("for a browser or a phone"), banner.index("for the App"))

    def test_an_unreachable_look_up_is_one_host_sentence_and_no_errno(self):
        port = free_port_and_the_next()
        proc = self.server("--host", "0.0.0.0", "--port", str(port),
                           "--public-ip-url", f"http://127.0.0.1:{free_port()}/")
        banner = printed_until(proc, "Ctrl+C stops the server.")
        self.assertIn("    over the internet:  this machine's internet address could not be looked up; "
                      "your router's status page shows it (forward TCP", banner)
        out, err = self.stopped(proc)
        for said in (out, err):
            self.assertNotIn("[Errno", said)
            self.assertNotIn("Traceback", said)
        self.assertEqual(out.count("over the internet"), 1, out)   # the room's, once (the page's: unknown)
        self.assertEqual(out.count("How friends join"), 1)
        self.assertNotIn(" INFO ", err)   # the log file has those

    def test_a_terminate_or_ctrl_break_says_it_stops_then_stopped(self):
        port = free_port_and_the_next()
        proc = self.server("--port", str(port), "--log-file", "")
        printed_until(proc, "Ctrl+C stops the server.")
        interrupt(proc, signal.SIGTERM)
        proc.wait(START_WAIT)
        printed = printed_until(proc, "stopped\n")
        self.assertTrue(printed.endswith("Ctrl+C stops the server.\nstopping: telling 0 members…\n"
                                         "stopped\n"), printed[-200:])

    def test_the_readmes_sample_banner_is_what_the_program_prints_on_80_columns(self):
        with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
            sample = f.read().split("(a few seconds at most):\n\n", 1)[1].split("\n\n", 1)[0]
        settings = pcr.Settings(port=5050, web_port=5051, log_file="/home/me/.privateChat_server.log")
        join = pcr.friends_join(settings, ("0.0.0.0", 5050), "192.168.1.20", "203.0.113.7", 5051)
        code = pcr.console_code(join.invite, io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))
        banner = pcr.join_banner(settings, join, "looking", "", code)
        banner = re.sub(r"(?m)^Log file: .*$", f"Log file: {settings.log_file}", banner)   # Windows' C:
        self.assertLessEqual(set("█▀▄"), set(banner))   # drawn with its code
        self.assertEqual(sample, "\n".join("    " + line for line in pcr.fit_console(banner, 80).split("\n")))

    def test_a_failed_look_up_is_logged_without_its_errno(self):
        import urllib.error
        failure = urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
        self.assertEqual(pcr.look_up_failure(failure), "Name or service not known")

    def test_help_puts_the_hosts_options_first_and_the_rest_under_for_experts(self):
        with contextlib.redirect_stdout(io.StringIO()) as out, self.assertRaises(SystemExit):
            pcr.parse_args(["--help"])
        text = out.getvalue()
        options = text[text.index("options:"):]
        first = max(options.index(f"\n  {flag}") for flag in ("--gui", "--port", "--web-port",
                                                              "--room-key", "--upnp", "--history"))
        experts = options.index("for experts")
        self.assertLess(first, experts)
        for flag in ("--max-backlog", "--app-char-time", "--tls-cert", "--handshake-timeout"):
            self.assertGreater(options.index(f"\n  {flag}"), experts, flag)
        self.assertIn("for a browser or a phone", " ".join(text.split()))


@unittest.skipIf(WINDOWS, "no pseudo-terminals on Windows")
class HostConsoleTest(ProcessCase):
    """The console fits the console (issue 31), on a real terminal (a
    pseudo-terminal) 80 and 100 columns wide: the banner and warnings wrap
    at words, the rest indented; a stop says it begins and that it ended."""

    def terminal_room(self, columns: int, *args: str) -> tuple[subprocess.Popen, int, bytearray,
                                                                threading.Condition]:
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        return on_a_terminal(self, ["--host", "127.0.0.1", "--public-ip-url", "", *args], columns,
                             cwd=self.dir, env={**env, "TERM": "xterm"})

    def test_the_banner_and_a_warning_wrap_at_words_at_80_and_100_columns(self):
        for columns in (80, 100):
            port = free_port_and_the_next()
            proc, leader, shown, changed = self.terminal_room(
                columns, "--port", str(port), "--log-file", os.path.join(self.dir, "no", "x.log"))
            text = shown_until(shown, changed, b"Ctrl+C stops the server.").decode()
            lines = SGR_CODE.sub("", text).replace("\r\n", "\n").split("\n")
            self.assertLessEqual(max(map(len, lines)), columns, lines)
            flat = " ".join(text.split())
            self.assertIn(f"The room is open on 127.0.0.1:{port}, but nobody else can join: only this "
                          f"machine reaches 127.0.0.1. Start without --host", flat)
            self.assertIn("logging to the screen only", flat)
            opening = next(i for i, line in enumerate(lines) if line.startswith("The room is open"))
            self.assertRegex(lines[opening + 1], r"^  \S")   # its rest, two spaces in
            self.assertNotIn("asks", flat)   # a room on loopback looks nothing up
            os.write(leader, b"\x03")
            self.assertEqual(proc.wait(START_WAIT), 0)

    def test_ctrl_c_says_it_is_telling_the_members_then_that_it_stopped(self):
        port = free_port_and_the_next()
        proc, leader, shown, changed = self.terminal_room(100, "--port", str(port), "--log-file", "")
        shown_until(shown, changed, b"Ctrl+C stops the server.")
        ann = Client(port)
        self.addCleanup(ann.close)
        ann.join("ann")
        os.write(leader, b"\x03")   # Ctrl+C, as typed: the terminal echoes ^C
        after = shown_until(shown, changed, b"stopped\r\n").decode()
        self.assertIn("\rstopping: telling 1 member…\r\nstopped\r\n", after)
        self.assertTrue(ann.read_to_close().endswith(pcr.STOP_NOTICE.encode()))
        self.assertEqual(proc.wait(START_WAIT), 0)


# ---------------------------------------------------------------------------
# 15. The chat page, in a real browser
# ---------------------------------------------------------------------------


class BrowserTest(BrowserCase):
    """The page on a phone: joining, chatting, refusals, a restart."""

    def test_a_phone_joins_chats_with_a_terminal_and_sees_who_is_here(self):
        self.start()
        tom = self.member("tom")
        self.open_page()
        self.join_as("Wendy")
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        tom.read_until(b"Wendy joined the chat...\n")
        tom.send(b"tom: hello from the terminal\n")
        self.wait_for(lambda: "hello from the terminal" in self.text("#log"), "tom's line")
        self.say("hi tom")
        tom.read_until(b"Wendy: hi tom\n")
        self.wait_for(lambda: self.listed()[:2] == ["tom", "Wendy"], "tom and Wendy listed")
        self.member("zoe")
        self.wait_for(lambda: self.listed() == ["tom", "Wendy", "zoe"], "zoe listed")
        folder = os.path.abspath(SCREENSHOTS) if SCREENSHOTS else tempfile.mkdtemp()
        shot = os.path.join(folder, "web-phone.png")
        self.driver.save_screenshot(shot)
        with open(shot, "rb") as f:
            self.assertEqual(int.from_bytes(f.read(24)[16:20], "big"), 360)   # PNG width
        if not SCREENSHOTS:
            shutil.rmtree(folder, True)
        attack = "<img src=x onerror=alert(1)>"
        tom.send(f"tom: {attack}\n".encode())
        self.wait_for(lambda: attack in self.text("#log"), "the attack shown as text")
        self.assertEqual(self.driver.find_elements(By.CSS_SELECTOR, "#log img"), [])
        with self.assertRaises(NoAlertPresentException):
            self.driver.switch_to.alert.text
        self.assert_no_policy_violations()

    def test_over_ipv6_a_phone_joins_and_chats(self):
        self.start_on_ipv6()
        tom = self.connect(host="::1", family=socket.AF_INET6).join("tom")
        self.driver.get(f"http://[::1]:{self.server.web_address[1]}/")
        self.join_as("Wendy")
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        tom.read_until(b"Wendy joined the chat...\n")
        self.say("hi over IPv6")
        tom.read_until(b"Wendy: hi over IPv6\n")
        self.assert_no_policy_violations()

    def test_a_wrong_key_is_shown_and_the_right_one_lets_in(self):
        self.start(room_key="s3cret-K")
        self.open_page()
        self.join_as("Wendy", "guess")
        self.wait_for(lambda: "That room key is wrong" in self.text("#join-status"), "the refusal")
        self.assertNotIn("#KEY", self.text("#join-status"))
        self.find("#key").send_keys("s3cret-K")
        self.find("#join-button").click()
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        self.assertIn('joined: "Wendy" (web)', self.log_text())
        self.assertNotIn("s3cret", self.log_text())

    def test_the_page_comes_back_by_itself_after_a_restart(self):
        port, web = free_port(), free_port()
        first = self.start(port=port, web_port=web)
        self.open_page()
        self.join_as("Wendy")
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        first.loop.call_soon_threadsafe(first.stop)
        self.wait_for(lambda: "stopped" in self.text("#banner-text"), "the page saying so")
        self.start(port=port, web_port=web)
        tom = self.member("tom")
        tom.read_until(b"Wendy joined the chat...\n", timeout=15)
        self.say("back again")
        tom.read_until(b"Wendy: back again\n")


class HostBrowserTest(BrowserCase):
    """The page on a phone, on a first evening (issue 27)."""

    def test_a_5000_character_message_stays_in_the_box_and_costs_no_seat(self):
        self.start()
        tom = self.member("tom")
        self.open_page()
        self.join_as("Wendy")
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        tom.read_until(b"Wendy joined the chat...\n")
        long = "a" * 5000
        box = self.find("#message")
        self.driver.execute_script("arguments[0].value = arguments[1];", box, long)
        box.send_keys(Keys.ENTER)
        self.wait_for(lambda: "too long" in self.text("#banner-text"), "the sentence")
        self.assertTrue(self.find("#banner").is_displayed())
        self.assertIn("4096", self.text("#banner-text"))
        self.assertEqual(box.get_property("value"), long)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        self.wait_for(lambda: not self.find("#banner").is_displayed(), "the sentence gone")
        self.say("short one")
        got = tom.read_until(b"Wendy: short one\n")
        self.assertNotIn(b"left", got)
        self.assertNotIn(b"joined", got)
        self.assertNotIn(b"aaaa", got)


    def test_an_invitations_key_outlives_a_reload_of_its_tab_and_no_other_tab(self):
        self.start(room_key="tulip-2026")
        web = self.server.web_address[1]
        self.driver.get(f"http://127.0.0.1:{web}/#key=tulip-2026")
        self.wait_for(lambda: self.find("#key").get_property("value") == "tulip-2026", "the key")
        self.wait_for(lambda: "#" not in self.driver.current_url, "the key out of the address")
        self.driver.refresh()   # a phone's pull to refresh: the key is not in the address any more
        self.wait_for(lambda: self.find("#key").is_displayed(), "key field")
        self.assertEqual(self.find("#key").get_property("value"), "tulip-2026")
        tom = self.member("tom#tulip-2026")
        self.join_as("Wendy")   # a name alone
        tom.read_until(b"Wendy joined the chat...\n")
        self.driver.switch_to.new_window("tab")   # another tab keeps nothing of it
        self.open_page()
        self.wait_for(lambda: self.find("#key").is_displayed(), "key field")
        self.assertEqual(self.find("#key").get_property("value"), "")
        self.driver.close()
        self.driver.switch_to.window(self.driver.window_handles[0])


class RoomPortBrowserTest(BrowserCase):
    """The room's own port, the address most hosts give out (issue 31):
    Chromium opens it, at the wait as it ships, is sent on to the page and
    joins, and comes back there again (a spare connection Chromium opened to
    the room's port ahead, and which the room then asked for a name, is never
    used for the page); an invitation there fills the key in and says so."""

    settings = {"web_port": 0, "door_wait": pcr.Settings().door_wait}

    def test_chromium_at_the_rooms_port_gets_the_page_and_chats_and_comes_back(self):
        self.start()
        tom = self.member("tom")
        page = f"http://127.0.0.1:{self.server.web_address[1]}/"
        self.open_page(self.port)
        self.join_as("Wendy")
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        tom.read_until(b"Wendy joined the chat...\n")
        tom.send(b"tom: hello at the room's address\n")
        self.wait_for(lambda: "hello at the room's address" in self.text("#log"), "tom's line")
        self.say("hi tom")
        tom.read_until(b"Wendy: hi tom\n")
        self.assertEqual(self.driver.current_url, page)
        self.assert_no_policy_violations()
        for again in range(3):   # the room's address again, at once and after its spare was asked
            self.driver.get("about:blank")
            time.sleep(0.3 * again)
            self.open_page(self.port)
            self.wait_for(lambda: self.find("#name").is_displayed(), f"the page again ({again})")
            self.assertEqual(self.driver.current_url, page)
        self.assertNotIn("a browser came to the room's port", self.log_text())

    def test_an_invitation_fills_the_key_in_and_says_so(self):
        self.start(room_key="tulip-2026")
        tom = self.member("tom#tulip-2026")
        self.driver.get(f"http://127.0.0.1:{self.port}/#key=tulip-2026")
        self.wait_for(lambda: self.text("#join-status") ==
                      "This room needs a key: the key from your invitation is filled in.", "the sentence")
        self.join_as("Wendy")   # a name alone
        tom.read_until(b"Wendy joined the chat...\n")
        self.driver.get("about:blank")
        self.open_page(self.port)   # without an invitation, in a tab that kept the key
        self.wait_for(lambda: self.text("#join-status") == "This room needs a key: it is filled in.",
                      "the sentence for a kept key")


class PhoneSleepTest(PhonePageCase):
    """A phone's page through a network that drops (issue 16): headless
    Chromium reaches the room through a proxy the test cuts and restores."""

    def test_a_short_loss_is_no_leave_and_the_missed_lines_come_once_in_order(self):
        proxy, tom = self.wendy_through_a_proxy()
        proxy.cut()
        self.wait_for(lambda: "econnect" in self.text("#banner-text"), "the page saying it reconnects")
        missed = self.lines_from(tom, "while you were out", 3)
        tom.send(b"/who\n")
        tom.read_until(b"in the room now (2): tom, Wendy (away)\n")
        proxy.restore()
        self.wait_for(lambda: missed[-1] in self.bubbles(), "the missed lines", timeout=self.GRACE)
        self.assertEqual([b for b in self.bubbles() if b.startswith("while you were out")], missed)
        shown = self.log_lines()
        mark = shown.index("Back: what was said while you were away")
        self.assertTrue(shown[mark + 1].startswith("tom") and shown[mark + 1].endswith(missed[0]),
                        shown[mark:])
        self.say("back with you")
        heard = tom.read_until(b"Wendy: back with you\n")
        self.assertNotIn(b"left", heard)
        self.assertNotIn(b"joined", heard)
        tom.send(b"/who\n")
        tom.read_until(b"in the room now (2): tom, Wendy\n")
        self.assertEqual(self.text("#me"), "You are Wendy")
        self.assert_no_policy_violations()

    def test_a_line_said_while_the_network_hung_is_shown_once_after_the_return(self):
        proxy, tom = self.wendy_through_a_proxy()
        proxy.freeze()
        said = self.lines_from(tom, "said while it hung", 1)
        time.sleep(0.5)   # the room has written it into the hung connection
        self.assertNotIn(said[0], self.bubbles())
        proxy.cut()
        proxy.restore()
        self.wait_for(lambda: said[0] in self.bubbles(), "the line said while it hung",
                      timeout=self.GRACE)
        self.assertEqual(self.bubbles().count(said[0]), 1)
        self.assertNotIn(b"left", tom.read_for(0.3))

    def test_a_loss_past_the_grace_is_one_leave_then_a_fresh_join(self):
        proxy, tom = self.wendy_through_a_proxy(web_grace=1.0)
        proxy.cut()
        tom.read_until(b"Wendy has left the chat...\n1 person is online...\n", timeout=WAIT)
        proxy.restore()
        self.driver.execute_script("window.dispatchEvent(new Event('online'))")   # the phone's network is back
        tom.read_until(b"Wendy joined the chat...\n2 people are online...\n", timeout=WAIT)
        self.assertEqual(tom.read_for(0.3).count(b"left"), 0)
        self.assertEqual(self.text("#me"), "You are Wendy")

    def test_after_a_restart_unheard_the_page_hears_its_seat_was_not_kept_and_joins_as_new(self):
        port, web = free_port(), free_port()
        proxy, tom = self.wendy_through_a_proxy(port=port, web_port=web)
        proxy.cut()   # the page never hears the stop
        first = self.server
        first.loop.call_soon_threadsafe(first.stop)
        deadline = time.monotonic() + WAIT
        while first.loop.running:
            self.assertLess(time.monotonic(), deadline, "the first room did not stop")
            time.sleep(0.02)
        self.start(port=port, web_port=web, web_grace=self.GRACE)
        tom = self.member("tom")
        proxy.restore()
        tom.read_until(b"Wendy joined the chat...\n", timeout=WAIT)
        self.wait_for(lambda: "not kept" in self.text("#log"), "the page saying so")
        self.say("hello again")
        tom.read_until(b"Wendy: hello again\n")

    def test_the_name_asked_for_during_the_grace_is_numbered_and_misses_nothing_of_hers(self):
        proxy, tom = self.wendy_through_a_proxy()
        proxy.cut()
        self.wait_on_loop(lambda: self.server.room.find("Wendy").stage is pcr.Stage.AWAY,
                          "Wendy away")
        missed = self.lines_from(tom, "for Wendy alone", 2)
        twin = self.connect()
        twin.answer(b"Wendy\n")
        got = twin.read_until(b"the room knows you as Wendy (2)\n")
        proxy.restore()
        self.wait_for(lambda: missed[-1] in self.bubbles(), "the missed lines", timeout=self.GRACE)
        self.assertEqual(self.text("#me"), "You are Wendy")
        got += twin.read_for(0.3)
        self.assertNotIn(b"for Wendy alone", got)
        self.assertNotIn(b"Wendy joined", got.replace(b"Wendy (2) joined", b""))

    def test_the_token_is_replaced_on_return_and_the_old_one_is_refused(self):
        if ws_connect is None:
            self.skipTest(NO_WEBSOCKETS)
        proxy, tom = self.wendy_through_a_proxy()
        before = self.seat()
        self.assertRegex(before.get("token", ""), r"^\d+\.[0-9a-f]{32}$")
        proxy.cut()
        tom.send(b"tom: anything\n")
        proxy.restore()
        self.wait_for(lambda: "anything" in self.bubbles(), "the missed line", timeout=self.GRACE)
        after = self.seat()
        self.assertNotEqual(after["token"], before["token"])
        old = WebMember(self.server.web_address[1])
        self.addCleanup(old.close)
        old.ask_seat_back(before["token"], before["seen"])
        self.assertEqual(old.until("lost")["text"], pcr.SEAT_GONE)
        self.say("still here")
        tom.read_until(b"Wendy: still here\n")

    def test_a_page_retries_within_a_fifth_of_the_grace(self):
        proxy, tom = self.wendy_through_a_proxy()
        proxy.cut()
        time.sleep(self.GRACE * 0.6)   # several tries refused meanwhile
        restored = time.monotonic()
        proxy.restore()
        self.wait_on_loop(lambda: self.server.room.find("Wendy").stage is pcr.Stage.IN_ROOM,
                          "Wendy back", timeout=self.GRACE / 5 + 1.0)
        self.assertLess(time.monotonic() - restored, self.GRACE / 5 + 1.0)


class PageLifecycleTest(PhonePageCase):
    """The page as the browser freezes it, keeps it in its back/forward cache
    or leaves it (issue 26), driven over CDP: only what the member asked for
    is a leave; anything else keeps the seat, and the page shows what was said
    meanwhile once."""

    FROZEN, LONG_GRACE = 10.0, 60.0                    # the issue's numbers
    FROZEN_PAST, SHORT_GRACE, PING = 20.0, 8.0, 4.0    # frozen past the grace, connection kept
    SHOWN_WITHIN, LEFT_WITHIN = 10.0, 8.0

    def set_lifecycle(self, state: str) -> None:
        self.driver.execute_cdp_cmd("Page.setWebLifecycleState", {"state": state})

    def frozen_while_tom_talks(self, tom: Client, seconds: float) -> list[str]:
        """The page frozen for `seconds` while tom says 5 lines; the lines."""
        self.set_lifecycle("frozen")
        frozen = time.monotonic()
        said = self.lines_from(tom, "while frozen", 5)
        time.sleep(max(0.0, frozen + seconds - time.monotonic()))
        return said

    def assert_shown_once(self, said: list[str]) -> None:
        self.wait_for(lambda: said[-1] in self.bubbles(), "the lines said meanwhile",
                      timeout=self.SHOWN_WITHIN)
        self.assertEqual([b for b in self.bubbles() if b in said], said)   # each once, in order

    def assert_stayed(self, tom: Client, mark: int) -> None:
        """Since tom's read `mark`, the room saw Wendy neither leave nor join."""
        tom.send(b"/who\n")
        tom.read_until(b"in the room now (2): tom, Wendy\n")
        heard = b"".join(tom.reads[mark:])
        self.assertNotIn(b"left", heard)
        self.assertNotIn(b"joined", heard)
        self.assertNotIn('"Wendy" (127.0.0.1) left', self.log_text())
        self.assertEqual(self.text("#me"), "You are Wendy")

    def test_a_page_frozen_10_s_is_seen_neither_leaving_nor_joining_and_shows_5_lines_once(self):
        proxy, tom = self.wendy_through_a_proxy(web_grace=self.LONG_GRACE)
        mark = len(tom.reads)
        said = self.frozen_while_tom_talks(tom, self.FROZEN)
        self.set_lifecycle("active")
        self.assert_shown_once(said)
        self.assert_stayed(tom, mark)
        self.say("still here")
        tom.read_until(b"Wendy: still here\n")
        self.assert_no_policy_violations()

    def test_a_page_frozen_past_the_grace_with_its_connection_kept_stays_in_the_room(self):
        proxy, tom = self.wendy_through_a_proxy(web_grace=self.SHORT_GRACE, web_ping=self.PING)
        mark = len(tom.reads)
        said = self.frozen_while_tom_talks(tom, self.FROZEN_PAST)
        # pinged all along, and the browser answered for the frozen page
        self.assertIs(self.on_loop(lambda: stage_of(self.server, "Wendy")), pcr.Stage.IN_ROOM)
        self.set_lifecycle("active")
        self.assert_shown_once(said)
        self.assert_stayed(tom, mark)

    def test_a_page_back_from_the_back_forward_cache_keeps_its_seat(self):
        self.Proxy = KeptPageProxy
        proxy, tom = self.wendy_through_a_proxy(web_grace=self.LONG_GRACE)
        mark = len(tom.reads)
        self.driver.execute_script(
            "window.addEventListener('pageshow', function (e) { window.restored = e.persisted; });")
        self.driver.get(f"http://127.0.0.1:{self.server.web_address[1]}/elsewhere")
        self.wait_on_loop(lambda: stage_of(self.server, "Wendy") is pcr.Stage.AWAY,
                          "Wendy away while her page is cached")
        said = self.lines_from(tom, "while on another page", 3)
        self.driver.back()
        self.assertTrue(self.driver.execute_script("return window.restored === true"),
                        "the page was not restored from the back/forward cache")
        self.assert_shown_once(said)
        self.assert_stayed(tom, mark)

    def test_going_to_another_page_is_a_leave_at_once(self):
        proxy, tom = self.wendy_through_a_proxy(web_grace=self.LONG_GRACE)
        self.driver.get(f"http://127.0.0.1:{self.server.web_address[1]}/elsewhere")
        tom.read_until(b"Wendy has left the chat...\n1 person is online...\n",
                       timeout=self.LEFT_WITHIN)
        self.assertIn('"Wendy" (127.0.0.1) left: left', self.log_text())

    def test_the_page_says_truthfully_why_its_seat_was_not_kept(self):
        proxy, tom = self.wendy_through_a_proxy(web_grace=1.0)
        proxy.cut()
        tom.read_until(b"Wendy has left the chat...\n", timeout=WAIT)
        proxy.restore()
        self.driver.execute_script("window.dispatchEvent(new Event('online'))")
        tom.read_until(b"Wendy joined the chat...\n", timeout=WAIT)
        self.wait_for(lambda: "you were away longer than 1 s" in self.text("#log"),
                      "the page saying why")


class PageDiscardTest(PhonePageCase):
    """A tab the browser discards (issue 26): its page is gone without a
    pagehide, and the tab reloads with its seat in sessionStorage.  Headless
    Chromium discards no tab by itself (chrome://discards is turned off), so
    the renderer is crashed over CDP, which ends the page the same way, then
    the tab reloads (document.wasDiscarded stays false).  chromedriver gives
    up on a crashed tab: the page is reached over its DevTools socket."""

    def devtools(self, method: str, answer: bool = True, **params) -> dict:
        """A DevTools command to the page's tab; its result, if `answer`."""
        address = self.driver.capabilities["goog:chromeOptions"]["debuggerAddress"]
        with urllib.request.urlopen(f"http://{address}/json", timeout=WAIT) as f:
            tab = next(t for t in json.load(f) if t["type"] == "page")
        with ws_connect(tab["webSocketDebuggerUrl"], open_timeout=WAIT, max_size=None) as cdp:
            cdp.send(json.dumps({"id": 1, "method": method, "params": params}))
            while answer:
                message = json.loads(cdp.recv(WAIT))
                if message.get("id") == 1:
                    return message.get("result", {})
        return {}

    def page_shows(self) -> list[str]:
        got = self.devtools("Runtime.evaluate", returnByValue=True, expression=(
            "Array.prototype.map.call(document.querySelectorAll('#log .text'),"
            " function (e) { return e.textContent; })"))
        return got.get("result", {}).get("value") or []

    def test_a_tab_reloaded_after_a_discard_asks_for_its_seat_and_gets_it(self):
        if ws_connect is None:
            self.skipTest(NO_WEBSOCKETS)
        proxy, tom = self.wendy_through_a_proxy(web_grace=60.0)
        mark = len(tom.reads)
        token = self.seat()["token"]
        self.devtools("Page.crash", answer=False)
        self.wait_on_loop(lambda: stage_of(self.server, "Wendy") is pcr.Stage.AWAY,
                          "Wendy away")
        said = self.lines_from(tom, "while the tab was discarded", 3)
        self.devtools("Page.reload")
        deadline = time.monotonic() + WAIT * 2
        while said[-1] not in (shown := self.page_shows()):
            self.assertLess(time.monotonic(), deadline, f"the page shows only {shown}")
            time.sleep(0.1)
        self.assertEqual([line for line in shown if line in said], said)
        tom.send(b"/who\n")
        tom.read_until(b"in the room now (2): tom, Wendy\n")
        heard = b"".join(tom.reads[mark:])
        self.assertNotIn(b"left", heard)
        self.assertNotIn(b"joined", heard)
        self.assertIn('"Wendy" is back', self.log_text())
        self.assertNotIn(token, self.log_text())


class PageForEveryoneTest(BrowserCase):
    """The page for everyone (issue 24): lines for the reader stand out, a name
    starts a private line, screen readers hear a replay once, axe-core finds
    nothing, a keyboard reaches everything, 200% zoom on a phone cuts nothing."""

    axe_source = ""   # axe.min.js, read once

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                   {"source": KEEP_SOCKETS})

    def js(self, script: str, *args):
        """What the script returns, run in the page."""
        return self.driver.execute_script(script, *args)

    def tell_page(self, **event) -> None:
        """The page gets `event` as if the room had sent it on its socket."""
        self.js("const s = window.pcrSockets; s[s.length - 1].dispatchEvent("
            "new MessageEvent('message', { data: arguments[0] }))", json.dumps(event))

    def wendy_in(self, name: str = "Wendy") -> Client:
        """tom at a terminal; the page joined as `name`."""
        tom = self.member("tom")
        self.open_page()
        self.join_as(name)
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        tom.read_until(f"{name} joined the chat...\n2 people are online...\n".encode())
        return tom

    def tom_says(self, tom: Client, *texts: str) -> None:
        for text in texts:
            tom.send(f"tom: {text}\n".encode())
        self.wait_for(lambda: texts[-1] in self.bubbles(), f"tom's line {texts[-1]!r}")

    def bubbles(self) -> list[str]:
        return [e.get_attribute("textContent")
                for e in self.driver.find_elements(By.CSS_SELECTOR, "#log .text")]

    def bubble_style(self, text: str) -> dict:
        """How the line with this text looks: its bubble's computed style."""
        return self.js("""
            const line = [...document.querySelectorAll('#log li')].find(
                li => li.querySelector('.text')?.textContent === arguments[0]);
            const style = getComputedStyle(line.querySelector('.bubble'));
            return { background: style.backgroundColor,
                     border: [style.borderTopStyle, style.borderTopWidth, style.borderTopColor].join(' '),
                     head: line.querySelector('.head').textContent   // without its clock:
                         .replace(/[0-9]{1,2}:[0-9]{2}( ?[AaPp][Mm])?/, '') };   // a minute may turn
            """, text)

    def hide_page(self, hidden: bool) -> None:
        """The page as if its tab went to the background (or came back)."""
        self.js("if (arguments[0]) {"
                "  Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });"
                "} else { delete document.hidden; }"
                "document.dispatchEvent(new Event('visibilitychange'));", hidden)

    def active(self) -> str:
        return self.js("return document.activeElement.id")

    def back_to(self, element: str, keys, most: int = 4) -> None:
        """Shift+Tab from where focus is until `element` has it, `most` times at most."""
        for _ in range(most):
            keys.key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
            if self.active() == element:
                return

    def axe_violations(self) -> list[str]:
        """What axe-core finds on the page as it is now, a line per rule."""
        if not self.axe_source:
            with open(AXE, encoding="utf-8") as f:
                type(self).axe_source = f.read()
        self.js(self.axe_source)
        return self.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            axe.run(document, { resultTypes: ['violations'] }).then(function (result) {
              done(result.violations.map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(
                n => n.target.join(' ') + ' -- ' + n.failureSummary).join('; ')));
            }, function (e) { done(['axe failed: ' + e]); });""")

    def in_both_schemes(self, screen: str) -> list[str]:
        found = []
        for scheme in ("light", "dark"):
            self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
                "features": [{"name": "prefers-color-scheme", "value": scheme}]})
            found += [f"{screen}, {scheme}: {v}" for v in self.axe_violations()]
        self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        return found

    def test_private_lines_and_lines_naming_the_reader_stand_out_but_not_a_name_in_a_word(self):
        self.start()
        tom = self.wendy_in("Dora")
        self.tom_says(tom, "a plain line", "DORA, look here", "how adorable", "dora_x is not you",
                      "dora")
        tom.send(b"/msg dora psst\n")
        self.wait_for(lambda: "psst" in self.bubbles(), "the private line")
        plain, named, inside, private = map(self.bubble_style, ("a plain line", "DORA, look here",
                                                                "how adorable", "psst"))
        self.assertEqual(self.bubble_style("dora_x is not you"), plain)
        self.assertEqual(inside, plain)
        self.assertNotEqual(named["background"], plain["background"])
        self.assertNotEqual(named["border"], plain["border"])
        self.assertNotEqual(private["background"], plain["background"])
        self.assertNotEqual(private["background"], named["background"])
        self.assertNotEqual(private["border"], named["border"])
        self.assertEqual(self.bubble_style("dora"), named)
        self.assertIn("private", private["head"])
        self.assertIn("names you", named["head"])   # said to a screen reader too
        self.assertNotIn("names you", inside["head"])
        self.say("/msg tom what?")
        tom.read_until(b"[private] Dora to tom: what?\n")
        self.wait_for(lambda: "what?" in self.bubbles(), "her own private line")
        self.assertRegex(self.bubble_style("what?")["head"], r"^You ?private to tom")

    def test_while_hidden_the_title_says_a_line_named_the_reader_and_a_buzz_comes_if_allowed(self):
        self.start()
        tom = self.wendy_in()
        self.js("window.buzzes = 0;"
                "navigator.vibrate = function () { window.buzzes += 1; return true; };"
                "window.AudioContext = function () { window.buzzes += 1; throw new Error('silent'); };")
        self.hide_page(True)
        self.tom_says(tom, "not for anyone in particular", "wendyish is a word")
        self.assertEqual(self.driver.title, "(2) PrivateChatRoom")
        self.tom_says(tom, "are you there, wendy?")
        self.assertEqual(self.driver.title, "(3) mentioned — PrivateChatRoom")
        tom.send(b"/msg Wendy psst\n")
        self.wait_for(lambda: "psst" in self.bubbles(), "the private line")
        self.assertEqual(self.driver.title, "(4) private message — PrivateChatRoom")
        self.assertEqual(self.js("return window.buzzes"), 0)   # not allowed yet
        self.hide_page(False)
        self.assertEqual(self.driver.title, "PrivateChatRoom")
        self.find("#people-toggle").click()
        self.find("#buzz").click()
        self.assertEqual(self.js("return window.buzzes"), 1)   # a sample
        self.assertEqual(self.js("return localStorage.getItem('pcr-alerts')"), "buzz ")
        self.js("window.buzzes = 0; arguments[0].click()", self.find("#log"))
        self.tom_says(tom, "Wendy?", "WENDY!")
        self.assertEqual(self.js("return window.buzzes"), 1)   # one for a burst
        secure = self.js("return window.isSecureContext")
        self.assertTrue(secure)   # 127.0.0.1 is: desktop notifications may be offered
        self.assertEqual(self.js("return document.getElementById('notify-row').hidden"), not secure)

    def test_a_tap_on_a_name_starts_a_private_line_and_focus_stays_in_the_text_box(self):
        self.start()
        tom = self.wendy_in()
        ann = self.member("ann")
        self.tom_says(tom, "hello Wendy")
        self.find("#log .name").click()
        self.assertEqual(self.find("#message").get_attribute("value"), "/msg tom ")
        self.assertEqual(self.active(), "message")
        self.find("#message").send_keys("see you")
        self.wait_for(lambda: "ann" in self.listed(), "ann listed")
        self.find("#people-toggle").click()
        [button] = [b for b in self.driver.find_elements(By.CSS_SELECTOR, "#people-list .name")
                    if b.text == "ann"]
        button.click()
        self.assertEqual(self.find("#message").get_attribute("value"), "/msg ann see you")
        self.assertFalse(self.find("#people").is_displayed())
        self.member("ann lee")   # a name with a space goes in quotes: it may begin with another's
        self.wait_for(lambda: "ann lee" in self.listed(), "ann lee listed")
        for name, start in (("ann lee", '/msg "ann lee" '), ("ann", "/msg ann ")):
            self.find("#people-toggle").click()
            [button] = [b for b in self.driver.find_elements(By.CSS_SELECTOR, "#people-list .name")
                        if b.text == name]
            button.click()
            self.assertEqual(self.find("#message").get_attribute("value"), start + "see you")
        self.find("#message").send_keys(Keys.ENTER)
        ann.read_until(b"[private] Wendy to ann: see you\n")
        self.wait_for(lambda: "see you" in self.bubbles(), "what went, on her page")
        self.assertEqual(self.find("#message").get_attribute("value"), "")
        self.assertEqual(self.active(), "message")
        self.assertNotIn(b"see you", tom.read_for(0.3))
        self.find("#send").click()   # nothing to send: focus goes back all the same
        self.assertEqual(self.active(), "message")

    def test_everything_works_by_keyboard(self):
        self.start()
        tom = self.member("tom")
        self.open_page()
        self.wait_for(lambda: self.active() == "name", "the name field focused")
        self.find("#name").send_keys("Wendy" + Keys.ENTER)
        self.wait_for(lambda: self.active() == "message", "the text box focused")
        tom.read_until(b"Wendy joined the chat...\n")
        self.wait_for(lambda: "tom" in self.listed(), "tom listed")
        keys = webdriver.ActionChains(self.driver)
        self.back_to("people-toggle", keys)
        self.assertEqual(self.active(), "people-toggle")
        keys.send_keys(Keys.ENTER).perform()
        self.assertTrue(self.find("#people").is_displayed())
        for _ in range(5):
            keys.send_keys(Keys.TAB).perform()
            if self.js("return document.activeElement.textContent") == "tom":
                break
        self.assertEqual(self.js("return document.activeElement.className"), "name")
        keys.send_keys(Keys.ENTER).perform()
        self.assertEqual(self.active(), "message")
        self.assertEqual(self.find("#message").get_attribute("value"), "/msg tom ")
        keys.send_keys("by keyboard" + Keys.ENTER).perform()
        tom.read_until(b"[private] Wendy to tom: by keyboard\n")
        self.assertEqual(self.active(), "message")
        self.back_to("people-toggle", keys)
        keys.send_keys(Keys.ENTER).perform()
        for _ in range(6):
            keys.send_keys(Keys.TAB).perform()
            if self.active() == "buzz":
                break
        keys.send_keys(Keys.SPACE).perform()
        self.assertTrue(self.find("#buzz").is_selected())
        keys.send_keys(Keys.ESCAPE).perform()
        self.assertFalse(self.find("#people").is_displayed())
        self.assertEqual(self.active(), "people-toggle")

    def heard_script(self) -> None:
        """From now on the page keeps, for each line added to its log, whether
        the log was busy then; and each summary its status line said."""
        self.js("""
            window.added = []; window.summaries = [];
            const log = document.getElementById('log');
            new MutationObserver(function (changes) {
              for (const c of changes) {
                for (const node of c.addedNodes) {
                  if (node.nodeType === 1 && node.tagName === 'LI') {
                    window.added.push([node.textContent, log.getAttribute('aria-busy') === 'true']);
                  }
                }
              }
            }).observe(document.getElementById('lines'), { childList: true });
            new MutationObserver(function () {
              window.summaries.push(document.getElementById('heard').textContent);
            }).observe(document.getElementById('heard'),
                       { childList: true, characterData: true, subtree: true });""")

    def test_a_replay_is_announced_once_as_a_summary_and_new_lines_one_by_one(self):
        self.start(history=20, web_grace=6.0)
        proxy = CuttableProxy(self.server.web_address[1])
        self.addCleanup(proxy.close)
        tom = self.member("tom")
        for k in range(12):
            tom.send(f"tom: earlier {k}\n".encode())
        self.open_page(proxy.port)
        self.heard_script()
        self.join_as("Wendy")
        self.wait_for(lambda: self.js("return window.summaries.length") > 0, "a summary")
        self.assertEqual(self.js("return window.summaries"), ["12 messages before you came"])
        added = self.js("return window.added")
        earlier = [busy for text, busy in added if "earlier" in text.lower()]
        self.assertEqual(earlier, [True] * 13)   # the heading and 12 lines, all while busy
        self.assertIsNone(self.find("#log").get_attribute("aria-busy"))
        self.assertEqual(self.find("#log").get_attribute("role"), "log")   # polite by its role
        self.tom_says(tom, "a new line")
        added = self.js("return window.added")
        self.assertEqual(added[-1][1], False)   # a new line is announced by itself

        proxy.cut()
        self.wait_for(lambda: "econnect" in self.text("#banner-text"), "the page reconnecting")
        for k in range(3):
            tom.send(f"tom: missed {k}\n".encode())
        tom.send(b"tom: missed, Wendy\n/msg Wendy missed, for you alone\n")
        tom.read_until(b"[private] tom to Wendy: missed, for you alone\n")
        self.js("window.added = []")
        proxy.restore()
        self.wait_for(lambda: len(self.js("return window.summaries")) > 1,
                      "a second summary", timeout=6.0)
        self.assertEqual(self.js("return window.summaries"),
                         ["12 messages before you came", "5 messages while you were away"])
        missed = [busy for text, busy in self.js("return window.added")
                  if "missed" in text or "Back" in text]
        self.assertEqual(missed, [True] * 6)
        self.assertIsNone(self.find("#log").get_attribute("aria-busy"))

    def test_axe_core_finds_nothing_on_the_join_chat_and_lost_connection_screens(self):
        if not AXE or not os.path.exists(AXE):
            self.skipTest(NO_AXE)
        self.start(history=20, web_grace=6.0)
        proxy = CuttableProxy(self.server.web_address[1])
        self.addCleanup(proxy.close)
        tom = self.member("tom")
        for k in range(12):
            tom.send(f"tom: earlier {k}, Wendy\n".encode())
        self.open_page(proxy.port)
        self.wait_for(lambda: self.find("#name").is_displayed(), "name form")
        found = self.in_both_schemes("join")
        self.join_as("Wendy")
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        self.member("ann")
        self.tom_says(tom, "hello everyone", "hello Wendy")
        tom.send(b"/msg Wendy psst\n")
        self.say("/msg tom yes?")
        tom.read_until(b"[private] Wendy to tom: yes?\n")
        self.tell_page(type="photo", name="tom", url="/p/0123456789abcdef.jpg")
        self.say("my own line")
        self.wait_for(lambda: "my own line" in self.bubbles(), "her own line")
        self.wait_for(lambda: self.find("#log").get_attribute("aria-busy") is None, "the replay's end")
        found += self.in_both_schemes("chat")
        self.find("#people-toggle").click()
        found += self.in_both_schemes("chat with the list open")
        self.find("#people-toggle").click()
        proxy.cut()
        self.wait_for(lambda: "econnect" in self.text("#banner-text"), "the page reconnecting")
        found += self.in_both_schemes("lost connection")
        self.assertEqual(found, [])

    def test_axe_core_finds_nothing_with_replies_reactions_edits_deletions_and_typing(self):
        if not AXE or not os.path.exists(AXE):
            self.skipTest(NO_AXE)
        self.start(history=20)
        tom = self.member("tom")
        tom.send(b"tom: are we meeting at five, or would six be better?\n")   # history, with a reaction
        tom.read_until(b"better?\n")
        paul = WebMember(self.server.web_address[1], "paul")
        self.addCleanup(paul.close)
        first = paul.until("history")["lines"][0]["id"]
        paul.act(act="react", id=first, emoji="😂")
        paul.until("react")
        self.open_page()
        self.join_as("Wendy")
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        self.tom_says(tom, "can you bring the cake?")
        tap = lambda words, act: self.js("""
            const li = [...document.querySelectorAll('#lines li[data-name]')].find(
                li => li.querySelector('.text')?.textContent === arguments[0]);
            li.querySelector('.text').click(); li.querySelector('[data-act="' + arguments[1] + '"]').click();""",
            words, act)
        tap("can you bring the cake?", "reply")
        self.say("yes, at five")
        self.wait_for(lambda: "yes, at five" in self.bubbles(), "her reply")
        tap("can you bring the cake?", "react")
        self.find(".picker button").click()
        self.say("the cake is in the frige")
        self.wait_for(lambda: "the cake is in the frige" in self.bubbles(), "her line")
        tap("the cake is in the frige", "edit")
        self.driver.switch_to.active_element.send_keys(Keys.BACKSPACE * 5 + "fridge" + Keys.ENTER)
        self.say("my PIN is 4711")
        self.wait_for(lambda: "my PIN is 4711" in self.bubbles(), "the PIN")
        tap("my PIN is 4711", "delete")
        self.driver.switch_to.alert.accept()
        self.wait_for(lambda: "Wendy deleted a line" in self.text("#lines"), "the line taken back")
        mine = paul.until("chat", text="yes, at five")["id"]
        paul.act(act="reply", id=mine, text="great")
        paul.act(act="typing")
        self.wait_for(lambda: "great" in self.bubbles(), "paul's reply")
        self.wait_for(lambda: self.text("#typing") == "paul is typing…", "paul typing")
        tap("great", "reply")   # the reply bar, and a line with its buttons and picker showing
        tap("yes, at five", "react")
        self.wait_for(lambda: self.find(".picker").is_displayed(), "the picker")
        found = self.in_both_schemes("messenger")
        tap("the cake is in the fridge", "edit")
        self.wait_for(lambda: self.find(".edit-box").is_displayed(), "an edit box")
        found += self.in_both_schemes("editing")
        self.assertEqual(found, [])

    def test_nothing_is_cut_off_at_200_percent_zoom_on_a_phone(self):
        self.start(web_grace=6.0)
        proxy = CuttableProxy(self.server.web_address[1])
        self.addCleanup(proxy.close)
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {   # 360 px at 200%
            "width": 180, "height": 370, "deviceScaleFactor": 2, "mobile": True})
        self.addCleanup(self.driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride",
                        {"width": 360, "height": 740, "deviceScaleFactor": 1, "mobile": True})
        long_name = "Bartholomew-Maximilian"
        tom = self.member(long_name)
        self.open_page(proxy.port)
        self.wait_for(lambda: self.find("#name").is_displayed(), "name form")
        cut = [f"join: {c}" for c in self.js(CUT_OFF_SCRIPT)]
        self.join_as("Wendy")
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        for k in range(8):   # more than the log shows: it scrolls, the page does not
            tom.send(f"{long_name}: an_unbroken_word_that_must_wrap_somewhere {k}, Wendy\n".encode())
        self.say(f"/msg {long_name} a private line")
        self.wait_for(lambda: "a private line" in self.bubbles(), "the lines")
        cut += [f"chat: {c}" for c in self.js(CUT_OFF_SCRIPT)]
        self.assertEqual(self.js("const page = document.documentElement;"
                                 "return page.scrollHeight - page.clientHeight"), 0)
        self.find("#people-toggle").click()
        cut += [f"list: {c}" for c in self.js(CUT_OFF_SCRIPT)]
        self.find("#people-toggle").click()
        proxy.cut()
        self.wait_for(lambda: self.find("#banner-button").is_displayed(), "the banner's button")
        cut += [f"lost: {c}" for c in self.js(CUT_OFF_SCRIPT)]
        self.assertEqual(cut, [])
        buttons = [self.find(css) for css in ("#banner-button", "#people-toggle", "#leave", "#send")]
        for button in buttons:
            box = button.rect
            self.assertGreaterEqual(box["x"], 0)
            self.assertLessEqual(box["x"] + box["width"], 180)
        self.find("#banner-button").click()   # selenium clicks only what is in view and not covered


class MessengerPageTest(BrowserCase):
    """Reply, react, edit, delete and who is typing on the page, in real
    Chromium (issue 33): each seen from a second page (a tab of its own), a
    terminal and a newcomer with --history; and all of it by keyboard alone."""

    QUESTION = "are we meeting at five, or would six be better for everyone?"
    QUOTE = '"are we meeting at five, or would six be…"'

    def setUp(self):
        super().setUp()
        self.addCleanup(self.close_tabs)

    def close_tabs(self) -> None:
        for handle in self.driver.window_handles[1:]:
            self.driver.switch_to.window(handle)
            self.driver.close()
        self.driver.switch_to.window(self.driver.window_handles[0])

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def page_for(self, name: str) -> str:
        """The page joined as `name`, in this tab if it is empty, else in a new one; its tab."""
        if self.driver.current_url != "about:blank":
            self.driver.switch_to.new_window("tab")
        self.open_page()
        self.wait_for(lambda: self.find("#name").is_displayed(), "name form")
        self.find("#name").clear()   # the name kept on this device is the other tab's
        self.join_as(name)
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        return self.driver.current_window_handle

    def to(self, tab: str) -> None:
        self.driver.switch_to.window(tab)

    def press(self, element) -> None:
        """A press on `element` as a hand makes it, a moment between down and up
        (the page lays itself out in between), once it stands still where the finger lands."""
        where = ("const r = arguments[0].getBoundingClientRect(), x = r.left + r.width / 2, "
                 "y = r.top + r.height / 2; const hit = document.elementFromPoint(x, y); "
                 "return hit && arguments[0].contains(hit) ? [x, y] : null")
        self.js("arguments[0].scrollIntoView({block: 'center'})", element)
        seen = []

        def still() -> bool:
            seen.append(self.js(where, element))
            return seen[-1] is not None and seen[-2:] == seen[-1:] * 2

        self.wait_for(still, "a still element to press")
        webdriver.ActionChains(self.driver).move_to_element(element).click_and_hold().pause(0.3).release().perform()

    def line(self, words: str):
        """The list item of the line whose words are `words`, once it is on the page."""
        find = ("return [...document.querySelectorAll('#lines li[data-name]')].find("
                "li => li.querySelector('.text')?.textContent === arguments[0]) || null")
        self.wait_for(lambda: self.js(find, words), f"the line {words!r}")
        return self.js(find, words)

    def tap(self, item, act: str):
        """A tap on the line shows its buttons; then a tap on the one for `act`."""
        item.find_element(By.CSS_SELECTOR, ".text").click()
        button = item.find_element(By.CSS_SELECTOR, f'[data-act="{act}"]')
        self.assertTrue(button.is_displayed())
        button.click()

    def acts(self, item) -> list[str]:
        """The accessible names of a line's buttons."""
        return [b.get_attribute("aria-label") for b in item.find_elements(By.CSS_SELECTOR, ".actions button")]

    def active(self) -> str:
        return self.js("const a = document.activeElement; return a.getAttribute('aria-label') || a.id")

    def test_a_family_replies_reacts_edits_and_deletes_seen_by_a_second_page_a_terminal_and_a_newcomer(self):
        self.start(history=20)
        tom = self.member("tom")
        wendy = self.page_for("Wendy")
        paul = self.page_for("Paul")
        tom.read_until(b"Paul joined the chat...\n3 people are online...\n")
        tom.send(f"tom: {self.QUESTION}\n".encode())

        self.to(wendy)   # a reply: the terminal reads one line, the other page the quote above it
        question = self.line(self.QUESTION)
        self.assertEqual(self.acts(question), ["Reply to tom", "React to tom’s line"])
        self.tap(question, "reply")
        self.assertEqual(self.active(), "message")
        self.assertEqual(self.text("#replying-text"), "Replying to tom: " + self.QUOTE.strip('"'))
        self.say("yes, at five")
        tom.read_until(f"Wendy (to tom: {self.QUOTE}): yes, at five\n".encode())
        self.assertFalse(self.find("#replying").is_displayed())
        self.to(paul)
        reply = self.line("yes, at five")
        quote = reply.find_element(By.CSS_SELECTOR, ".bubble .quote")
        self.assertEqual(quote.get_attribute("textContent"), "In reply to tom" + self.QUOTE.strip('"'))
        self.assertLess(quote.rect["y"], reply.find_element(By.CSS_SELECTOR, ".text").rect["y"])
        self.press(quote)   # its line's buttons show at the press: the quote stays put
        self.assertEqual(self.js("return document.activeElement.id"), self.line(self.QUESTION).get_attribute("id"))
        self.tap(reply, "reply")   # Paul answers her: her page shows it is for her
        self.say("see you there")
        tom.read_until(b'Paul (to Wendy: "yes, at five"): see you there\n')
        self.to(wendy)
        answer = self.line("see you there")
        self.assertIn("answers you", answer.find_element(By.CSS_SELECTOR, ".head").get_attribute("textContent"))
        self.assertIn("named", answer.get_attribute("class").split())

        self.to(wendy)   # a reaction, its count, who; a second tap takes one's own back
        self.tap(self.line(self.QUESTION), "react")
        choices = self.driver.find_elements(By.CSS_SELECTOR, ".picker button")
        self.assertEqual([c.get_attribute("aria-label") for c in choices],
                         [f"React with {emoji}" for emoji in pcr.REACTIONS])
        self.assertEqual(self.active(), "React with 👍")
        choices[0].click()
        tom.read_until(f"Wendy reacted 👍 to tom: {self.QUOTE}\n".encode())
        self.to(paul)
        self.wait_for(lambda: self.line(self.QUESTION).find_elements(By.CSS_SELECTOR, ".chip"), "the 👍")
        chip = self.line(self.QUESTION).find_element(By.CSS_SELECTOR, ".chip")
        self.assertEqual((chip.text, chip.get_attribute("title"), chip.get_attribute("aria-label")),
                         ("👍 1", "Wendy", "React 👍 1: Wendy"))
        chip.click()
        tom.read_until(f"Paul reacted 👍 to tom: {self.QUOTE}\n".encode())
        chip = lambda: self.line(self.QUESTION).find_element(By.CSS_SELECTOR, ".chip")
        self.wait_for(lambda: chip().get_attribute("title") == "Wendy and you", "two on it")
        self.assertEqual((chip().text, chip().get_attribute("aria-pressed")), ("👍 2", "true"))
        chip().click()
        tom.read_until(f"Paul took back 👍 from tom: {self.QUOTE}\n".encode())
        self.wait_for(lambda: chip().get_attribute("title") == "Wendy", "Paul's taken back")

        self.to(wendy)   # an edit, in place, and marked, in the quotes of it too
        self.say("the cake is in the frige")
        tom.read_until(b"Wendy: the cake is in the frige\n")
        self.to(paul)
        self.tap(self.line("the cake is in the frige"), "reply")
        self.say("thanks")
        tom.read_until(b'Paul (to Wendy: "the cake is in the frige"): thanks\n')
        self.to(wendy)
        mine = self.line("the cake is in the frige")
        self.assertEqual(self.acts(mine), ["Reply to your line", "React to your line", "Edit your line",
                                           "Delete your line"])
        self.tap(mine, "edit")
        box = self.driver.switch_to.active_element
        self.assertEqual((box.get_attribute("aria-label"), box.get_attribute("value")),
                         ("Edit your line", "the cake is in the frige"))
        box.send_keys(Keys.BACKSPACE * 5 + "fridge" + Keys.ENTER)
        tom.read_until(b'Wendy edited: "the cake is in the fridge"\n')
        self.to(paul)
        edited = self.line("the cake is in the fridge")
        self.assertIn("edited", edited.find_element(By.CSS_SELECTOR, ".head").text)
        self.assertEqual(self.acts(edited), ["Reply to Wendy", "React to Wendy’s line"])   # not hers to change
        thanks = lambda: self.line("thanks").find_element(By.CSS_SELECTOR, ".quote").get_attribute("textContent")
        self.wait_for(lambda: thanks() == "In reply to Wendythe cake is in the fridgeedited", "the quote marked")

        self.to(wendy)   # a deletion, after its confirmation
        self.say("my PIN is 4711")
        self.tap(self.line("my PIN is 4711"), "delete")
        self.assertEqual(self.driver.switch_to.alert.text, "Delete this line for everyone?")
        self.driver.switch_to.alert.accept()
        tom.read_until(b"Wendy deleted a line\n")
        self.to(paul)
        self.wait_for(lambda: "Wendy deleted a line" in self.text("#lines"), "the line taken back")
        self.assertNotIn("4711", self.text("#lines"))

        nina = self.page_for("Nina")   # a newcomer sees it all as the others do
        self.wait_for(lambda: "Wendy deleted a line" in self.text("#lines"), "the history")
        shown = self.text("#lines")
        for gone in ("4711", "frige"):
            self.assertNotIn(gone, shown)
        self.assertEqual(self.line("yes, at five").find_element(By.CSS_SELECTOR, ".quote").get_attribute("textContent"),
                         "In reply to tom" + self.QUOTE.strip('"'))
        self.assertEqual(self.line(self.QUESTION).find_element(By.CSS_SELECTOR, ".chip").get_attribute("title"), "Wendy")
        self.assertIn("edited", self.line("the cake is in the fridge").find_element(By.CSS_SELECTOR, ".head").text)
        self.assertEqual(self.acts(self.line("the cake is in the fridge")), ["Reply to Wendy", "React to Wendy’s line"])
        self.assertEqual(thanks(), "In reply to Wendythe cake is in the fridgeedited")
        self.to(nina)
        self.assert_no_policy_violations()

    def test_all_five_by_keyboard_alone(self):
        self.start()
        tom = self.member("tom")
        self.page_for("Wendy")
        tom.send(b"tom: can you bring the cake?\n")
        self.line("can you bring the cake?")
        keys = webdriver.ActionChains(self.driver)

        def press(*pressed) -> None:
            for key in pressed:
                if key == "back":
                    keys.key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT)
                else:
                    keys.send_keys(key)
            keys.perform()

        def to_the_list() -> None:
            for _ in range(3):
                press("back")
                if self.active() == "Chat messages":
                    return

        def tab_to(label: str) -> None:
            """Tab until `label` has the focus (past a quote, say), 5 times at most."""
            for _ in range(5):
                press(Keys.TAB)
                if self.active() == label:
                    return

        self.assertEqual(self.active(), "message")
        to_the_list()
        press(Keys.ARROW_UP)   # the last line
        self.assertEqual(self.js("return document.activeElement.getAttribute('data-name')"), "tom")
        press(Keys.TAB)
        self.assertEqual(self.active(), "Reply to tom")
        press(Keys.ENTER)
        self.assertEqual(self.active(), "message")
        press("yes" + Keys.ENTER)
        tom.read_until(b'Wendy (to tom: "can you bring the cake?"): yes\n')

        to_the_list()
        press(Keys.END, Keys.ARROW_UP, Keys.TAB, Keys.TAB)
        self.assertEqual(self.active(), "React to tom’s line")
        press(Keys.ENTER)
        self.assertEqual(self.active(), "React with 👍")
        press(Keys.TAB, Keys.ENTER)
        tom.read_until('Wendy reacted ❤️ to tom: "can you bring the cake?"\n'.encode())
        self.assertEqual(self.active(), "React to tom’s line")

        press(Keys.ARROW_DOWN)   # her reply: its quote, Reply, React, Edit, Delete
        tab_to("Edit your line")
        self.assertEqual(self.active(), "Edit your line")
        press(Keys.ENTER)
        self.assertEqual((self.active(), self.js("return document.activeElement.value")), ("Edit your line", "yes"))
        press(Keys.ESCAPE)   # cancelled: nothing goes
        self.assertEqual(self.js("return document.activeElement.getAttribute('data-name')"), "Wendy")
        tab_to("Edit your line")
        press(Keys.ENTER, ", with candles", Keys.ENTER)
        tom.read_until(b'Wendy edited: "yes, with candles"\n')
        self.assertEqual(self.js("return document.activeElement.getAttribute('data-name')"), "Wendy")
        tab_to("Delete your line")
        self.assertEqual(self.active(), "Delete your line")
        press(Keys.ENTER)
        self.driver.switch_to.alert.accept()
        tom.read_until(b"Wendy deleted a line\n")
        self.wait_for(lambda: "Wendy deleted a line" in self.text("#lines"), "the line taken back")
        self.assertNotIn(b"edited", tom.read_for(0.2))   # Escape sent nothing

    def test_the_newest_line_stays_in_view_when_a_keyboard_or_a_narrower_window_shrinks_the_list(self):
        self.start()
        tom = self.member("tom")
        self.page_for("Wendy")
        tom.read_until(b"Wendy joined the chat...\n")
        words = " ".join(["word"] * 12)
        for i in range(30):   # lines that rewrap when the list narrows
            tom.send(f"tom: line {i} {words}\n".encode())
        self.line(f"line 29 {words}")
        at_bottom = ("const log = document.getElementById('log'); "
                     "return log.scrollHeight - log.scrollTop - log.clientHeight < 2")
        self.wait_for(lambda: self.js(at_bottom), "the newest line in view")
        self.addCleanup(self.driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride",
                        {"width": 360, "height": 740, "deviceScaleFactor": 1, "mobile": True})
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",   # a phone's keyboard comes up
                                    {"width": 360, "height": 440, "deviceScaleFactor": 1, "mobile": True})
        self.wait_for(lambda: self.js(at_bottom), "the newest line in view above the keyboard")
        for width in (340, 320, 300):   # narrower, as the same height: the lines rewrap
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                        {"width": width, "height": 440, "deviceScaleFactor": 1, "mobile": True})
            self.wait_for(lambda: self.js(at_bottom), f"the newest line in view {width} px wide")

    def test_who_is_typing_is_said_politely_once_never_into_the_log_and_goes(self):
        self.start()
        tom = self.member("tom")
        watcher = WebMember(self.server.web_address[1], "walt")   # counts the notices the room sends
        self.addCleanup(watcher.close)
        wendy = self.page_for("Wendy")
        self.js("""window.typingSaid = [];
            new MutationObserver(function () {
              window.typingSaid.push(document.getElementById('typing').textContent);
            }).observe(document.getElementById('typing'), { childList: true, characterData: true, subtree: true });""")
        self.assertEqual((self.find("#typing").get_attribute("role"), self.js(
            "return document.getElementById('log').contains(document.getElementById('typing'))")), ("status", False))
        paul = self.page_for("Paul")
        started = time.monotonic()
        while time.monotonic() - started < 4.0:   # a line typed slowly, over 4 s
            self.find("#message").send_keys("a")
            time.sleep(0.4)
        notices = [e for e in watcher.until_quiet(0.3) if e["type"] == "typing"]
        self.assertIn(len(notices), (2, 3))   # once every 3 s, not once a key
        self.to(wendy)
        self.assertEqual(self.text("#typing"), "Paul is typing…")
        self.to(paul)
        self.find("#message").send_keys(Keys.ENTER)
        self.to(wendy)
        self.wait_for(lambda: self.text("#typing") == "", "the notice gone with Paul's line")
        self.assertEqual(self.js("return window.typingSaid"), ["Paul is typing…", ""])   # said once
        self.assertNotIn("typing", self.text("#lines"))
        self.to(paul)
        self.find("#message").send_keys("b")
        self.to(wendy)
        self.wait_for(lambda: self.text("#typing") == "Paul is typing…", "the notice again")
        shown = time.monotonic()
        self.wait_for(lambda: self.text("#typing") == "", "the notice gone 6 s later", timeout=9.0)
        self.assertGreater(time.monotonic() - shown, 4.0)
        self.assertNotIn(b"typing", tom.read_for(0.2))   # terminals are never told


class PhotoBrowserTest(BrowserCase):
    """Photos in real Chromium: a phone picks a camera's photo, another page
    shows it, a terminal gets its link (issue 23)."""

    def setUp(self):
        if Image is None:
            self.skipTest(NO_PIL)
        super().setUp()

    def camera_file(self, data: bytes, name: str = "IMG_0001.jpg") -> str:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def tab(self, name: str) -> str:
        """A new tab of its own (its own sessionStorage), joined as `name`; its handle."""
        self.driver.switch_to.new_window("tab")
        self.addCleanup(self.close_tab, self.driver.current_window_handle)
        self.open_page()
        self.wait_for(lambda: self.find("#name").is_displayed(), "name form")
        self.find("#name").clear()   # the tabs share the name remembered on this device
        self.join_as(name)
        self.wait_for(lambda: self.find("#chat").is_displayed(), "the chat")
        return self.driver.current_window_handle

    def close_tab(self, handle: str) -> None:
        if len(self.driver.window_handles) > 1 and handle in self.driver.window_handles:
            self.driver.switch_to.window(handle)
            self.driver.close()
            self.driver.switch_to.window(self.driver.window_handles[0])

    def shown_photos(self) -> list[dict]:
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#log .photo img')).map(function (i) {"
            " return {src: i.getAttribute('src'), w: i.naturalWidth, h: i.naturalHeight,"
            " done: i.complete, shown: i.getBoundingClientRect().width,"
            " column: document.getElementById('log').clientWidth}; });")

    def pick(self, path: str) -> None:
        self.wait_for(lambda: self.find("#photo-button").is_displayed(), "the photo button")
        self.find("#photo-input").send_keys(path)

    def test_a_camera_photo_reaches_another_page_and_a_terminal_without_its_exif(self):
        self.start()
        tom = self.member("tom")
        paul = self.tab("Paul")
        self.tab("Wendy")
        tom.read_until(b"3 people are online...\n")
        original = camera_jpeg((4000, 3000))
        self.pick(self.camera_file(original))
        line = tom.read_until(b"shared a photo: ", WAIT * 3) + tom.read_until(b"\n")
        self.assertIn(b"Wendy shared a photo: http://127.0.0.1:", line)
        status, headers, body = fetch(photo_link(line))
        self.assertEqual((status, headers["X-Content-Type-Options"]), ("HTTP/1.1 200 OK", "nosniff"))
        image = assert_plain_picture(self, body, "JPEG")
        self.assertEqual(image.size, (2048, 1536))
        self.assertLess(len(body), len(original))
        self.wait_for(lambda: self.shown_photos() and self.shown_photos()[0]["done"], "her own photo")
        self.driver.switch_to.window(paul)
        self.wait_for(lambda: self.shown_photos() and self.shown_photos()[0]["w"] == 2048,
                      "the photo on the other page")
        shown = self.shown_photos()[0]
        self.assertLessEqual(shown["shown"], shown["column"])   # scaled to the column
        self.assertEqual("Photo from Wendy", self.find("#log .photo img").get_attribute("alt"))
        self.assertEqual(self.find("#log .photo").get_attribute("href"),
                         f"http://127.0.0.1:{self.server.web_address[1]}{shown['src']}")
        self.say("lovely")
        tom.read_until(b"Paul: lovely\n")
        self.assert_no_policy_violations()

    def test_a_file_that_is_not_a_picture_is_said_plainly_and_nothing_is_sent(self):
        self.start()
        tom = self.member("tom")
        self.tab("Wendy")
        tom.read_until(b"2 people are online...\n")
        self.pick(self.camera_file(b"<html><script>alert(1)</script></html>", "note.jpg"))
        self.wait_for(lambda: self.text("#upload-text") == "That file is not a picture.", "the refusal")
        self.say("still here")
        self.assertEqual(tom.read_until(b"\n"), b"Wendy: still here\n")

    def test_a_photo_that_cannot_be_had_says_it_is_no_longer_kept(self):
        self.start()
        paul = self.tab("Paul")
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/p/*"]})   # as if gone
        self.tab("Wendy")
        self.pick(self.camera_file(picture("JPEG", (640, 480))))
        self.wait_for(lambda: self.shown_photos() and self.shown_photos()[0]["done"], "her photo")
        self.driver.switch_to.window(paul)
        self.wait_for(lambda: "This photo is no longer kept." in self.text("#log"), "the sentence")
        self.assertEqual(self.shown_photos(), [])

    def test_the_history_says_a_photo_is_no_longer_kept_once_the_album_let_it_go(self):
        if ws_connect is None:
            self.skipTest(NO_WEBSOCKETS)
        self.start(history=10, photos=1)
        wendy = WebMember(self.server.web_address[1], "wendy")
        self.addCleanup(wendy.close)
        big = picture("JPEG", (1024, 1024), noise=True, quality=90)
        for _ in range(2):   # the album holds one: the first goes (issue 30)
            share(wendy, big)
            wendy.until("photo")
        self.tab("Paul")
        self.wait_for(lambda: self.shown_photos() and self.shown_photos()[0]["done"], "the kept photo")
        self.assertEqual(self.text("#log").count("This photo is no longer kept."), 1)
        self.assertEqual(len(self.shown_photos()), 1)

    def test_with_photos_0_the_button_is_hidden(self):
        self.start(photos=0)
        self.tab("Wendy")
        self.assertFalse(self.find("#photo-button").is_displayed())


class PageLeaveTest(PhonePageCase):
    """The page's Leave button (issue 26: a leave is what the member asked
    for): after a "Leave the room?" the room hears one leave at once, the seat
    ends, and the join screen joins again with one tap; "Cancel" changes nothing."""

    LEFT_WITHIN, QUIET = 8.0, 1.5

    def tap_leave(self):
        """Tap Leave; the browser's question, once it is asked."""
        self.assertEqual(self.find("#leave").text, "Leave")
        self.assertEqual(self.find("#leave").accessible_name, "Leave the room")
        self.find("#leave").click()
        self.wait_for(self.asked, "the question")
        alert = self.driver.switch_to.alert
        self.assertEqual(alert.text, "Leave the room?")
        return alert

    def asked(self) -> bool:
        try:
            return bool(self.driver.switch_to.alert.text)
        except NoAlertPresentException:
            return False

    def test_leave_is_one_leave_at_once_and_one_tap_joins_again(self):
        proxy, tom = self.wendy_through_a_proxy(web_grace=60.0)
        mark = len(tom.reads)
        self.tap_leave().accept()
        tom.read_until(b"Wendy has left the chat...\n1 person is online...\n",
                       timeout=self.LEFT_WITHIN)
        tom.read_for(self.QUIET)   # no join after it, no second leave
        heard = b"".join(tom.reads[mark:])
        self.assertEqual(heard.count(b"has left the chat"), 1)
        self.assertNotIn(b"joined", heard)
        self.assertIn('"Wendy" (127.0.0.1) left: left', self.log_text())
        self.wait_for(lambda: self.find("#join").is_displayed(), "the join screen")
        self.assertFalse(self.find("#chat").is_displayed())
        self.assertEqual(self.text("#join-status"), "You left the room.")
        self.assertEqual(self.seat(), {})
        self.assertEqual(self.log_lines(), [])
        self.find("#join-button").click()
        tom.read_until(b"Wendy joined the chat...\n2 people are online...\n")
        self.wait_for(lambda: self.find("#chat").is_displayed(), "chat view")
        self.say("back again")
        tom.read_until(b"Wendy: back again\n")
        self.assertTrue(self.seat()["token"])
        self.assert_no_policy_violations()

    def test_cancelling_the_question_changes_nothing(self):
        proxy, tom = self.wendy_through_a_proxy()
        mark, seat = len(tom.reads), self.seat()
        self.tap_leave().dismiss()
        self.assertTrue(self.find("#chat").is_displayed())
        said = self.lines_from(tom, "still there", 1)
        self.wait_for(lambda: said[-1] in self.bubbles(), "tom's line")
        self.say("yes")
        tom.read_until(b"Wendy: yes\n")
        heard = b"".join(tom.reads[mark:])
        self.assertNotIn(b"left", heard)
        self.assertNotIn(b"joined", heard)
        self.assertEqual(self.seat()["token"], seat["token"])


if __name__ == "__main__":
    unittest.main()
