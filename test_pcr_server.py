"""The behaviour of pcr_server.py, as a specification.

Real sockets on 127.0.0.1, port 0, short settable time-outs; every wait is
bounded.  Run: python3 -m unittest -v test_pcr_server
"""

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import pcr_server as pcr

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "pcr_server.py")
WAIT = 5.0   # the longest any single expectation may take

# Short delays so the suite runs fast; the rules are the same.
FAST = dict(host="127.0.0.1", port=0, public_ip_url="", log_file="",
            welcome_delay=0.05, notice_gap=0.03, count_interval=0.03,
            handshake_timeout=2.0, stop_flush=1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """A test member: a real socket with bounded reads."""

    def __init__(self, port: int, host: str = "127.0.0.1", family=socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
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
        while needle not in self.buf:
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

    def join(self, alias: str, raw: bytes | None = None) -> "Client":
        """Answer the prompt and wait for the room's count line."""
        self.read_until(b"ALIAS")
        self.send(raw if raw is not None else alias.encode())
        self.read_until(b" online...\n")
        return self

    def reset(self) -> None:
        """Close abruptly: the peer gets an RST, not a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class ServerCase(unittest.TestCase):
    """Starts an in-process server on a thread for each test."""

    settings: dict = {}

    def start(self, **overrides) -> pcr.Server:
        log_dir = tempfile.mkdtemp()
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

    def connect(self, **kw) -> Client:
        c = Client(self.port, **kw)
        self.addCleanup(c.close)
        return c

    def member(self, alias: str) -> Client:
        return self.connect().join(alias)

    def on_loop(self, fn, *args):
        """Run fn on the server's loop thread and return its result."""
        done, box = threading.Event(), []
        self.server.loop.call_soon_threadsafe(lambda: (box.append(fn(*args)), done.set()))
        self.assertTrue(done.wait(WAIT), "loop did not answer")
        return box[0]

    def log_text(self) -> str:
        for h in pcr.log.handlers:
            h.flush()
        with open(self.log_path, encoding="utf-8") as f:
            return f.read()


class ProtocolTextTest(unittest.TestCase):
    """The pure protocol functions."""

    def test_count_line_singular_and_plural(self):
        self.assertEqual(pcr.count_notice(1), "1 person is online...\n")
        self.assertEqual(pcr.count_notice(3), "3 people are online...\n")

    def test_join_and_leave_lines(self):
        self.assertEqual(pcr.joined_notice("ann"), "ann joined the chat...\n")
        self.assertEqual(pcr.left_notice("ann"), "ann has left the chat...\n")

    def test_folded_join_line_never_starts_with_a_digit(self):
        line = pcr.folded_join_notice(["a", "b", "c", "d", "e"])
        self.assertEqual(line, "a, b, c and 2 others joined the chat...\n")

    def test_alias_is_up_to_the_first_line_end_or_the_whole_read(self):
        self.assertEqual(pcr.split_alias(b"bob"), (b"bob", b""))
        self.assertEqual(pcr.split_alias(b"bob\r\nhi\n"), (b"bob", b"hi\n"))

    def test_relay_replaces_the_claimed_prefix(self):
        self.assertEqual(pcr.relay_line("ann: hi", "ann", "ann (2)"), "ann (2): hi\n")

    def test_relay_puts_the_name_in_front_of_other_lines(self):
        self.assertEqual(pcr.relay_line("bob: hi", "ann", "ann"), "ann: bob: hi\n")

    def test_blank_lines_are_not_relayed(self):
        self.assertIsNone(pcr.relay_line("ann:  ", "ann", "ann"))

    def test_escape_sequences_and_controls_are_removed(self):
        self.assertEqual(pcr.clean_text("a\x1b[31mred\x1b[0m\x07\tb\x1b]0;title\x07c\x9b2J"),
                         "ared\tbc")

    def test_names_lose_controls_format_characters_and_colons(self):
        self.assertEqual(pcr.clean_name("  e\u202eve\x00:  x\u200b "), "eve x")
        self.assertEqual(len(pcr.clean_name("n" * 100)), pcr.MAX_NAME)

    def test_numbered_names_stay_short(self):
        self.assertEqual(pcr.numbered_name("ann", 2), "ann (2)")
        self.assertEqual(len(pcr.numbered_name("n" * 32, 12)), pcr.MAX_NAME)

    def test_leave_line_is_recognised_by_alias_or_name(self):
        self.assertTrue(pcr.is_leave_line("\tann#k has left the chat...", "ann#k", "ann"))
        self.assertTrue(pcr.is_leave_line("\tann has left the chat...", "ann#k", "ann"))
        self.assertFalse(pcr.is_leave_line("\tbob has left the chat...", "ann", "ann"))


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
        c.read_until(b"ALIAS")
        c.send(b"ann")
        c.read_until(b"1 person is online...\n")
        join_reads = [r for r in c.reads if b"joined" in r]
        count_reads = [r for r in c.reads if b"online" in r]
        self.assertEqual(join_reads, [b"ann joined the chat...\n"])
        self.assertEqual(count_reads, [b"1 person is online...\n"])

    def test_welcome_waits_for_the_app_window(self):
        self.start(welcome_delay=0.5)
        c = self.connect()
        t0 = time.monotonic()
        c.read_until(b"ALIAS")
        c.send(b"ann")
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
        c.read_until(b"ALIAS")
        c.send(b"tom\r\nhello\r\n")
        c.read_until(b"tom joined the chat...\n")
        c.read_until(b"tom: hello\n")

    def test_silent_connection_is_closed_after_the_handshake_timeout(self):
        self.start(handshake_timeout=0.5)
        c = self.connect()
        t0 = time.monotonic()
        c.read_until(b"ALIAS")
        c.read_to_close(timeout=3)
        self.assertLess(time.monotonic() - t0, 2.5)

    def test_many_half_open_connections_do_not_stop_a_join(self):
        self.start(max_per_ip=1000)
        idle = [self.connect() for _ in range(300)]
        self.member("ann")
        self.assertEqual(len(idle), 300)


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
        self.start()
        ann, bob = self.member("ann"), self.member("bob")
        ann.read_until(b"2 people are online...\n")
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
        self.start()
        ann, bob = self.member("ann"), self.member("bob")
        ann.read_until(b"2 people are online...\n")
        bob.send(b"\tbob has left the chat...\n")
        bob.close()
        self.expect_one_leave(ann, "bob", b"1 person is online...\n")

    def test_abrupt_close_sends_one_leave_line(self):
        self.start()
        ann, bob = self.member("ann"), self.member("bob")
        ann.read_until(b"2 people are online...\n")
        bob.reset()
        self.expect_one_leave(ann, "bob", b"1 person is online...\n")

    def test_plain_close_sends_one_leave_line(self):
        self.start()
        ann, bob = self.member("ann"), self.member("bob")
        ann.read_until(b"2 people are online...\n")
        bob.close()
        self.expect_one_leave(ann, "bob", b"1 person is online...\n")

    def test_half_closed_member_still_gets_its_last_line_relayed(self):
        self.start()
        ann, bob = self.member("ann"), self.member("bob")
        ann.read_until(b"2 people are online...\n")
        bob.send(b"bob: bye now")
        bob.sock.shutdown(socket.SHUT_WR)
        ann.read_until(b"bob: bye now\n")
        self.expect_one_leave(ann, "bob", b"1 person is online...\n")


class StopTest(ServerCase):

    def test_stop_lines_then_close(self):
        server = self.start()
        ann = self.member("ann")
        server.loop.call_soon_threadsafe(server.stop)
        got = ann.read_to_close()
        self.assertTrue(got.endswith(pcr.STOP_NOTICE.encode()), got)
