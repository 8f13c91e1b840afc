"""Draft of the GUI tests; pasted into test_pcr_server.py later.

When pasting: drop this docstring and the draft-only imports below (the
`import gui_draft as pcr` line becomes the file's `import pcr_server as pcr`),
add the other imports to the file's own, and paste the rest at the end.
"""

import contextlib
import gc
import http.server
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

import gui_draft as pcr   # draft only: becomes `import pcr_server as pcr`
from test_pcr_server import FAST, HERE, WAIT, Client, free_port


def unused_display() -> int:
    """An X display number nobody is serving."""
    for n in range(99, 400):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            return n
    raise unittest.SkipTest("no free X display number")


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """A private virtual screen for the window tests, or SkipTest saying why not."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise unittest.SkipTest("no DISPLAY and no Xvfb to make one")
    for _ in range(3):   # another Xvfb may take the number first
        n = unused_display()
        proc = subprocess.Popen([xvfb, f":{n}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(f"/tmp/.X11-unix/X{n}"):
                return proc, f":{n}"
            time.sleep(0.05)
        proc.kill()
        proc.wait(WAIT)
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


class GuiTest(unittest.TestCase):
    """The --gui window, driven through its own buttons on a virtual screen."""

    xvfb: subprocess.Popen | None = None
    saved_display: str | None = None

    @classmethod
    def setUpClass(cls):
        try:
            import tkinter  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("tkinter is not installed") from None
        cls.saved_display = os.environ.get("DISPLAY")
        if not cls.saved_display:
            cls.xvfb, os.environ["DISPLAY"] = start_xvfb()

    @classmethod
    def tearDownClass(cls):
        if cls.xvfb is not None:
            del os.environ["DISPLAY"]
            cls.xvfb.terminate()
            try:
                cls.xvfb.wait(WAIT)
            except subprocess.TimeoutExpired:
                cls.xvfb.kill()
                cls.xvfb.wait(WAIT)

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
        settings = pcr.Settings(**{**FAST, "port": free_port(), **overrides})
        self.root = tkinter.Tk()
        self.window = pcr.ServerWindow(self.root, settings)
        self.addCleanup(self.close_window)
        return self.window

    def close_window(self):
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
                self.assertFalse(self.usable(self.window.start_button)
                                 and self.usable(self.window.stop_button),
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
        self.window.start_button.invoke()
        self.pump_until(lambda: self.window.state == pcr.RUNNING, "the server to run")
        return self.window.listening[1]

    def member(self, port: int, alias: str) -> Client:
        c = Client(port).join(alias)
        self.addCleanup(c.close)
        return c

    def listed(self) -> list[tuple[str, str]]:
        tree = self.window.tree
        return [(str(tree.set(item, "alias")), str(tree.set(item, "ip")))
                for item in tree.get_children()]

    def info(self, key: str) -> str:
        return str(self.window.info[key].cget("text"))

    def status(self) -> str:
        return str(self.window.status_line.cget("text"))

    def log_panel(self) -> str:
        return self.window.log_text.get("1.0", "end")

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
        self.assertTrue(self.usable(self.window.start_button))
        self.assertFalse(self.usable(self.window.stop_button))

    # -- the window ---------------------------------------------------------
    def test_title_names_the_version(self):
        self.open_window()
        self.assertEqual(self.root.title(), f"PrivateChatRoom-Server v{pcr.VERSION}")

    def test_opens_stopped_with_start_usable_and_stop_not(self):
        w = self.open_window()
        self.root.update()
        self.assert_stopped_look()
        self.assertIn("Stopped", w.badge.cget("text"))
        self.assertIn("off", self.info("listen"))
        self.assertEqual(self.info("online"), "0")

    def test_info_panel_shows_private_ip_and_mac(self):
        self.open_window()
        self.pump_until(lambda: "looking up" not in self.info("private"), "the private IP")
        self.assertEqual(self.info("private"), pcr.private_ipv4())
        self.assertEqual(self.info("mac"), pcr.mac_address())

    def test_public_ip_is_off_without_a_look_up_url(self):
        self.open_window(public_ip_url="")
        self.pump_for(0.3)
        self.assertEqual(self.info("public"), "off")

    def test_public_ip_shows_looking_up_then_the_answer(self):
        service = PublicIpService("203.0.113.7")
        self.addCleanup(service.close)
        with mock.patch.dict(os.environ, {"no_proxy": "127.0.0.1"}):
            self.open_window(public_ip_url=service.url)
            self.assertEqual(self.info("public"), "looking up…")
            self.pump_until(lambda: self.info("public") == "203.0.113.7", "the public IP")

    def test_public_ip_unavailable_when_the_look_up_fails(self):
        with mock.patch.dict(os.environ, {"no_proxy": "127.0.0.1"}):
            self.open_window(public_ip_url=f"http://127.0.0.1:{free_port()}/")
            self.pump_until(lambda: self.info("public") == "unavailable", "'unavailable'")

    def test_nothing_is_clipped_at_the_default_size(self):
        self.open_window()
        port = self.start_server()
        self.member(port, "a member with a rather long name")
        self.pump_until(lambda: self.info("online") == "1", "the member")
        self.pump_for(0.2)
        widgets, clipped = [self.root], []
        while widgets:
            widget = widgets.pop()
            widgets.extend(widget.winfo_children())
            if widget.winfo_class() in ("TLabel", "TButton", "Label", "TLabelframe"):
                if (widget.winfo_width() < widget.winfo_reqwidth()
                        or widget.winfo_height() < widget.winfo_reqheight()):
                    clipped.append((str(widget), widget.cget("text")))
        self.assertEqual(clipped, [])
        self.assertGreaterEqual(self.root.winfo_width(), self.root.minsize()[0])

    def test_run_gui_opens_the_window_logs_warnings_and_a_terminate_signal_closes_it(self):
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
        while subprocess.run(["xdotool", "search", "--name", title],
                             capture_output=True, timeout=WAIT).returncode != 0:
            self.assertIsNone(gui.poll(), "run_gui ended before its window showed")
            self.assertLess(time.monotonic(), deadline, "no window showed")
            time.sleep(0.05)
        gui.terminate()
        out, err = gui.communicate(timeout=WAIT)
        self.assertEqual(gui.returncode, 0, err)
        self.assertNotIn("Traceback", err)
        self.assertIn("WARNING:pcr_server:.pcr_port holds nonsense", self.log_file())

    # -- starting and stopping ----------------------------------------------
    def test_start_button_runs_the_server_and_the_list_follows_the_room(self):
        w = self.open_window()
        port = self.start_server()
        self.assertEqual(port, w.settings.port)
        self.assertFalse(self.usable(w.start_button))
        self.assertTrue(self.usable(w.stop_button))
        self.assertIn("Running", w.badge.cget("text"))
        self.assertEqual(self.info("listen"), f"127.0.0.1:{port}")
        self.member(port, "ann")
        bob = self.member(port, "bob")
        self.pump_until(lambda: self.info("online") == "2", "a count of 2")
        self.assertEqual(self.listed(), [("ann", "127.0.0.1"), ("bob", "127.0.0.1")])
        since = w.tree.set(w.tree.get_children()[0], "since")
        self.assertRegex(str(since), r"^\d\d:\d\d:\d\d$")
        bob.close()
        self.pump_until(lambda: self.info("online") == "1", "a count of 1")
        self.assertEqual(self.listed(), [("ann", "127.0.0.1")])

    def test_start_on_a_port_in_use_shows_why_in_the_window(self):
        blocker = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(blocker.close)
        w = self.open_window(port=blocker.getsockname()[1])
        w.start_button.invoke()
        self.pump_until(lambda: w.state == pcr.ERROR, "the error state")
        self.assertIn("already in use", self.status())
        self.assertIn("Error", w.badge.cget("text"))
        self.assert_stopped_look()

    def test_a_server_thread_that_dies_shows_an_error(self):
        w = self.open_window()
        self.start_server()
        server = w.server
        server.loop.call_soon_threadsafe(lambda: 1 / 0)   # a bug inside the loop
        self.pump_until(lambda: w.state == pcr.ERROR, "the error state")
        server.listener.close()   # the dead loop never did
        self.assertIn("stopped unexpectedly", self.status())
        self.assert_stopped_look()
        self.assertIn("ZeroDivisionError", self.log_file())

    def test_stop_button_tells_members_and_enables_start(self):
        w = self.open_window()
        ann = self.member(self.start_server(), "ann")
        self.pump_until(lambda: self.info("online") == "1", "ann in the list")
        w.stop_button.invoke()
        self.assertFalse(self.usable(w.stop_button))
        self.assertTrue(ann.read_to_close().endswith(pcr.STOP_NOTICE.encode()))
        self.pump_until(lambda: w.state == pcr.STOPPED, "the stopped state")
        self.assert_stopped_look()
        self.assertIn("Stopped", w.badge.cget("text"))
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
        self.assertFalse(self.usable(w.disconnect_button))   # nothing selected yet
        w.tree.selection_set(w.tree.get_children()[1])
        self.pump_until(lambda: self.usable(w.disconnect_button), "Disconnect to be usable")
        w.disconnect_button.invoke()
        got = bob.read_to_close()
        self.assertIn(b"you have been disconnected by the host\n", got)
        ann.read_until(b"bob has left the chat...\n")
        self.pump_until(lambda: self.listed() == [("ann", "127.0.0.1")], "bob gone from the list")
        self.assertEqual(self.info("online"), "1")
        said = ("bob", "disconnected by the host")
        self.pump_until(lambda: self.logged_line(self.log_panel(), *said), "the log panel line")
        self.assertTrue(self.logged_line(self.log_file(), *said))

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
        self.assertIn("WARNING", w.log_text.tag_names("end-2c"))

    # -- port and address -------------------------------------------------------
    def test_change_port_accepts_only_1_to_65535_and_saves_it(self):
        w = self.open_window()
        w.port_button.invoke()
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

    def test_change_port_while_running_restarts_on_the_new_port(self):
        w = self.open_window()
        old = self.start_server()
        ann = self.member(old, "ann")
        w.port_button.invoke()
        new = free_port()
        self.fill(w.dialog, str(new))
        self.assertTrue(ann.read_to_close().endswith(pcr.STOP_NOTICE.encode()))
        self.pump_until(lambda: w.state == pcr.RUNNING and w.listening[1] == new,
                        "the restart on the new port")
        self.member(new, "bob")
        self.pump_until(lambda: self.listed() == [("bob", "127.0.0.1")], "bob in the list")

    def test_set_listen_address_takes_host_and_port(self):
        w = self.open_window(host="0.0.0.0")
        w.address_button.invoke()
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

    def test_copy_address_puts_public_ip_and_port_on_the_clipboard(self):
        service = PublicIpService("203.0.113.7")
        self.addCleanup(service.close)
        with mock.patch.dict(os.environ, {"no_proxy": "127.0.0.1"}):
            w = self.open_window(public_ip_url=service.url)
            port = self.start_server()
            self.pump_until(lambda: self.info("public") == "203.0.113.7", "the public IP")
        w.copy_button.invoke()
        self.assertEqual(self.root.clipboard_get(), f"203.0.113.7:{port}")
        self.assertIn(f"203.0.113.7:{port}", self.status())

    def test_copy_address_uses_the_private_ip_without_a_public_one(self):
        w = self.open_window(public_ip_url="")
        self.pump_until(lambda: "looking up" not in self.info("private"), "the private IP")
        w.copy_button.invoke()
        self.assertEqual(self.root.clipboard_get(), f"{pcr.private_ipv4()}:{w.settings.port}")


class GuiLaunchTest(unittest.TestCase):
    """--gui where no window can open: one sentence, exit status 1."""

    def run_gui_quietly(self) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = pcr.run_gui(pcr.Settings(**FAST))
        return code, err.getvalue()

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
        self.assertIn("apt install python3-tk", text)
        self.assertNotIn("Traceback", text)

    def test_the_headless_server_does_not_load_tkinter(self):
        code = f"import sys, {pcr.__name__}; print('tkinter' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True,
                             text=True, timeout=WAIT * 2)
        self.assertEqual(out.stdout.strip(), "False", out.stderr)
