"""Draft of the terminal client tests; pasted into test_pcr_server.py later.

When pasting: drop this docstring and the draft-only imports below (the
`import client_draft as pcr` line becomes the file's `import pcr_server as
pcr`), add `import shutil` and `import ssl` to the file's imports, paste the
rest at the end, and make ClientProcess run
`[sys.executable, SERVER, "--connect", address, ...]` (see its comment).
"""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import unittest

import client_draft as pcr   # draft only: becomes `import pcr_server as pcr`
from test_pcr_server import HERE, WAIT, Client, ServerCase, free_port


class ClientProcess:
    """`pcr_server.py --connect ...` run as a person would, through pipes.

    Everything it prints is collected by two threads; every read is bounded.
    """

    def __init__(self, address: str, name: str | None = None, tls: bool = False,
                 ca: str | None = None, insecure: bool = False, env: dict | None = None):
        # Until main() parses --connect: after pasting, run
        # [sys.executable, SERVER, "--connect", address] + ["--name", name] ... instead.
        code = (f"import sys; sys.path.insert(0, {HERE!r}); import client_draft; "
                f"sys.exit(client_draft.run_client({address!r}, {name!r}, {tls!r}, {ca!r}, "
                f"{insecure!r}))")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {})})
        self.out, self.err = bytearray(), bytearray()
        self.seen = 0   # how far read_until has read
        self.changed = threading.Condition()
        self.readers = [threading.Thread(target=self._collect, args=(pipe, buf), daemon=True)
                        for pipe, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    def _collect(self, pipe, buf: bytearray) -> None:
        while chunk := pipe.read1(65536):
            with self.changed:
                buf += chunk
                self.changed.notify_all()

    def read_until(self, needle: str, timeout: float = WAIT) -> str:
        """Its output up to and including `needle`; fails after `timeout`."""
        want = needle.encode()
        with self.changed:
            if not self.changed.wait_for(lambda: want in self.out[self.seen:], timeout):
                raise AssertionError(f"timed out waiting for {needle!r}; got "
                                     f"{bytes(self.out[-300:])!r}, stderr {bytes(self.err)!r}")
            cut = self.out.index(want, self.seen) + len(want)
            got, self.seen = bytes(self.out[self.seen:cut]), cut
        return got.decode()

    def type(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def end_input(self) -> None:
        """Ctrl+D."""
        self.proc.stdin.close()

    def wait(self) -> int:
        """The exit code, once it has exited and said everything."""
        code = self.proc.wait(WAIT)
        for reader in self.readers:
            reader.join(WAIT)
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
        self.proc.wait(WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()


class FakeRoom:
    """A one-connection stand-in server: ALIAS, then `{alias} joined the chat...`.

    Keeps what the client sends until its leave line (or sends `reply` and
    closes instead); speaks TLS if given a context.
    """

    def __init__(self, test: unittest.TestCase, context: ssl.SSLContext | None = None,
                 reply: bytes | None = None):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, args=(context, reply), daemon=True)
        self.thread.start()
        test.addCleanup(self.listener.close)

    def _serve(self, context: ssl.SSLContext | None, reply: bytes | None) -> None:
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
            conn.sendall(self.received.split(b"\n")[0] + b" joined the chat...\n")
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

    def certificate(self, names: str = "DNS:localhost,IP:127.0.0.1") -> str:
        """A self-signed certificate for `names` (skips without openssl); its path."""
        if shutil.which("openssl") is None:
            self.skipTest("no openssl to make a certificate")
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        cert, key = os.path.join(folder, "c.pem"), os.path.join(folder, "k.pem")
        made = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
             "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext",
             f"subjectAltName={names}"], capture_output=True, timeout=60)
        if made.returncode:
            self.skipTest(f"openssl cannot make a certificate: {made.stderr[-200:]!r}")
        self.key = key
        return cert

    def tls_room(self, cert: str) -> FakeRoom:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, self.key)
        return FakeRoom(self, context)

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
        room = FakeRoom(self, reply=b"caf\xc3 \xff\x1b[2Jok \x07bell\n")
        c = self.client(f"127.0.0.1:{room.port}", name="ann", env={"PYTHONIOENCODING": "ascii"})
        self.assertEqual(c.wait(), 1)
        self.assertEqual(c.output(), "caf? ?ok bell\n")
        self.assertIn("the server closed the connection", c.errors())
        self.assertNotIn("Traceback", c.errors())

    # -- joining and talking ------------------------------------------------
    def test_joins_and_shows_its_own_join_and_the_count(self):
        self.start()
        c = self.client(name="ann")
        c.read_until("ann joined the chat...\n")
        c.read_until("[1 person is online]\n")
        self.assertNotIn("1 person is online...", c.output())

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

    def test_a_line_from_another_member_is_printed(self):
        self.start()
        bob = self.member("bob")
        ann = self.joined("ann", "2 people are online")
        bob.send(b"bob: hi ann\n")
        ann.read_until("bob: hi ann\n")

    def test_ipv6_address_in_brackets(self):
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        try:
            self.start(host="::1")
        except pcr.StartError as e:
            self.skipTest(f"no IPv6 loopback: {e}")
        c = self.client(f"[::1]:{self.port}", name="six")
        c.read_until("six joined the chat...\n")

    # -- leaving --------------------------------------------------------------
    def expect_app_leave(self, watcher: Client, name: str) -> None:
        got = watcher.read_until(b"1 person is online...\n") + watcher.read_for(0.3)
        self.assertEqual(got.count(f"{name} has left the chat...\n".encode()), 1, got)
        self.assertIn(f"{name} (127.0.0.1) left: left", self.log_text())   # the goodbye line

    def test_end_of_input_sends_one_leave_line_and_exits_zero(self):
        self.start()
        bob = self.member("bob")
        ann = self.joined("ann", "2 people are online")
        ann.end_input()
        self.assertEqual(ann.wait(), 0)
        self.expect_app_leave(bob, "ann")
        self.assertNotIn("Traceback", ann.errors())

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

    def test_server_going_away_is_said_and_exit_one(self):
        server = self.start()
        c = self.joined("ann", "1 person is online")
        self.assertTrue(self.on_loop(server.disconnect, "ann"))
        self.assertEqual(c.wait(), 1)
        self.assertIn("you have been disconnected by the host\n", c.output())
        self.assertEqual(c.errors().splitlines()[-1], "the server closed the connection")

    def test_server_stop_lines_are_shown_then_exit_zero(self):
        server = self.start()
        c = self.joined("ann", "1 person is online")
        server.loop.call_soon_threadsafe(server.stop)
        self.assertEqual(c.wait(), 0)
        self.assertTrue(c.output().endswith(pcr.STOP_NOTICE), c.output())
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

    def test_tls_certificate_for_another_name_is_refused(self):
        cert = self.certificate("DNS:elsewhere.example")
        room = self.tls_room(cert)
        c = self.client(f"127.0.0.1:{room.port}", name="ann", tls=True, ca=cert)
        self.assertEqual(c.wait(), 1)
        self.assert_one_sentence(c.errors())
        self.assertIn("mismatch", c.errors())
        self.assertEqual(room.done(), b"")

    def test_insecure_joins_with_a_warning(self):
        room = self.tls_room(self.certificate())
        c = self.client(f"127.0.0.1:{room.port}", name="ann", tls=True, insecure=True)
        c.read_until("ann joined the chat...\n")
        self.assertIn("warning: --insecure: the server's certificate is not verified", c.errors())
        c.end_input()
        self.assertEqual(c.wait(), 0)

    def test_tls_to_a_plain_server_is_one_sentence(self):
        self.start()
        c = self.client(name="ann", tls=True)
        self.assertEqual(c.wait(), 1)
        self.assert_one_sentence(c.errors())
        self.assertIn("is the server using TLS?", c.errors())

    def test_unusable_ca_file_is_one_sentence(self):
        c = self.client("127.0.0.1:5050", name="ann", tls=True, ca=os.path.join(HERE, "no such.pem"))
        self.assertEqual(c.wait(), 2)
        self.assert_one_sentence(c.errors())
        self.assertIn("Cannot use the --ca file", c.errors())


if __name__ == "__main__":
    unittest.main()
