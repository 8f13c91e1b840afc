"""Draft of the terminal client section of pcr_server.py; pasted in later.

When pasting: drop this docstring and the import lines below, add
`import ssl` to pcr_server.py's imports, and paste the rest just above
the command line section (which becomes 8.).  gui_draft.py defines the
same host_port(); keep one copy.
"""

import ssl

from pcr_server import *  # noqa: F401,F403  (draft only: the names above this section)

# ---------------------------------------------------------------------------
# 7. Terminal client
# ---------------------------------------------------------------------------

CONNECT_TIMEOUT = 10.0   # seconds to reach the server and to be asked for a name
LEAVE_WAIT = 2.0         # seconds for the goodbye to go out before closing anyway
MAX_REFUSAL = 4096       # bytes of a refusal worth showing
CLIENT_WOULD_BLOCK = WOULD_BLOCK + (ssl.SSLWantReadError, ssl.SSLWantWriteError)
STOP_LINE = STOP_NOTICE.strip("\n").split("\n")[0]   # the first of the stop lines


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


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def tls_context(ca: str | None, insecure: bool) -> ssl.SSLContext:
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
        raise ClientError(f"The server at {where} could not prove who it is "
                          f"({(e.verify_message or e.reason or '').rstrip('.')}); give its "
                          f"certificate with --ca FILE, or skip the check with --insecure.") from None
    except ssl.SSLError as e:
        raise ClientError(f"No encrypted connection with {where} ({e.reason or e}); "
                          f"is the server using TLS?") from None
    except OSError as e:
        raise ClientError(f"The encrypted connection with {where} failed: {e.strerror or e}.") from None


def answer_prompt(sock: socket.socket, alias: str, where: str, tls: bool) -> bytes:
    """Wait for ALIAS and answer with the alias; returns what came after ALIAS.

    ClientError if the server said something else instead (a refusal, shown
    as it is), nothing in time, or closed.
    """
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
    refusal = b"" if got.startswith(ALIAS_PROMPT) else got
    said = clean_text(refusal.decode("utf-8", "replace").replace("\n", " ")).strip()
    raise ClientError(said or "the server closed the connection")


class ClientSession:
    """One stay in a room: the server's lines printed, typed lines sent.

    The socket is touched only on the loop's thread (a TLS connection must
    not be read and written from two threads at once).  Typed lines come in
    from a stdin thread through call_soon_threadsafe; the main thread only
    waits, so Ctrl+C reaches it on every platform.
    """

    def __init__(self, sock: socket.socket, alias: str, out, early: bytes):
        self.loop = Loop()
        self.sock = sock
        self.alias = alias
        self.out = out
        self.early = early         # what came after ALIAS in the same read
        self.inbuf = b""
        self.outbuf = bytearray()
        self.events = EVENT_READ
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
        self.loop.call_soon_threadsafe(self.leave)

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
            except CLIENT_WOULD_BLOCK:
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
        if self.leaving:   # said goodbye: the rest is not for this person any more
            return
        self.stopped = self.stopped or text == STOP_LINE
        try:
            self.out.write(shown_line(text) + "\n")
            self.out.flush()
        except (OSError, ValueError):   # the output was closed (`| head`): leave
            self.leave(1)

    def _server_gone(self) -> None:
        if self.inbuf:
            self._show(decode_line(self.inbuf))
            self.inbuf = b""
        if not self.leaving:
            self.code = 0 if self.stopped else 1
            self.problem = "" if self.stopped else "the server closed the connection"
        self._end()

    def _end(self) -> None:
        self.loop.running = False

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
        except CLIENT_WOULD_BLOCK:
            pass
        except OSError:
            self._server_gone()
            return
        events = EVENT_READ | (EVENT_WRITE if self.outbuf else 0)
        if events != self.events:
            self.events = events
            self.loop.rewatch(self.sock, events, self._on_socket, None)


def join_room(host: str, port: int, context: ssl.SSLContext | None, alias: str,
              out) -> ClientSession:
    """Connect, answer the prompt, and hand back the stay; ClientError if not let in."""
    where = host_port(host, port)
    sock = open_connection(host, port, context)
    try:
        early = answer_prompt(sock, alias, where, tls=context is not None)
    except BaseException:   # Ctrl+C too
        sock.close()
        raise
    secure = " over TLS" if context is not None else ""
    print(f"connected to {where}{secure}; type a line and press Enter to send it, "
          f"Ctrl+D or Ctrl+C to leave", file=sys.stderr, flush=True)
    return ClientSession(sock, alias, out, early)


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
        try:
            context = tls_context(ca, insecure)
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
        session = join_room(host, port, context, alias_text(name), stdout)
        return session.stay(stdin)
    except ClientError as e:
        print(e, file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
