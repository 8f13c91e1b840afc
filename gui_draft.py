"""Draft of section 6 of pcr_server.py, the GUI; pasted in later.

When pasting: drop this docstring and the two import lines below, add
`import queue` to pcr_server.py's imports, and paste the rest between
sections 5 and 7.
"""

import queue

from pcr_server import *  # noqa: F401,F403  (draft only: the names above section 6)

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
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")


def port_from_text(text: str) -> int | None:
    """The port typed in a box, or None if it is not 1 to 65535."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        return None
    return int(text)


def host_from_text(text: str) -> str | None:
    """The listen address typed in a box (an IP or a host name), or None."""
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host if HOST_NAME.fullmatch(host) else None


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def since_text(when: float) -> str:
    """A wall-clock time as the member list shows it: the date only if not today."""
    t = time.localtime(when)
    if t[:3] == time.localtime()[:3]:
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%d %b %H:%M", t)


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
    """A small form: labelled boxes, OK and Cancel, a line for what is wrong.

    OK calls accept(*texts); a sentence back is shown and keeps the form
    open, None closes it.
    """

    def __init__(self, parent, title: str, fields: list[tuple[str, str]],
                 accept: Callable[..., str | None]):
        import tkinter as tk
        from tkinter import ttk
        self.accept = accept
        self.top = top = tk.Toplevel(parent, background=WINDOW_BG)
        top.title(title)
        top.transient(parent)
        top.resizable(False, False)
        form = ttk.Frame(top, padding=16)
        form.grid(sticky="nsew")
        self.entries = []
        for row, (label, value) in enumerate(fields):
            ttk.Label(form, text=label).grid(row=row, column=0, sticky="w", padx=(0, 12), pady=4)
            entry = ttk.Entry(form, width=22)
            entry.insert(0, value)
            entry.grid(row=row, column=1, sticky="ew", pady=4)
            self.entries.append(entry)
        self.problem = ttk.Label(form, text="", style="Problem.TLabel", wraplength=340)
        self.problem.grid(row=len(fields), column=0, columnspan=2, sticky="w", pady=(6, 0))
        buttons = ttk.Frame(form)
        buttons.grid(row=len(fields) + 1, column=0, columnspan=2, sticky="e", pady=(10, 0))
        self.cancel_button = ttk.Button(buttons, text="Cancel", command=self.close)
        self.ok_button = ttk.Button(buttons, text="OK", style="Go.TButton", command=self.ok)
        self.cancel_button.grid(row=0, column=0, padx=(0, 8))
        self.ok_button.grid(row=0, column=1)
        top.bind("<Return>", lambda _event: self.ok())
        top.bind("<Escape>", lambda _event: self.close())
        top.protocol("WM_DELETE_WINDOW", self.close)
        self.entries[0].focus_set()
        self.entries[0].select_range(0, "end")

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
        self.public_ip = "looking up…" if settings.public_ip_url else "off"
        self.private_ip = "looking up…"
        self.mac = "looking up…"
        self.rows: dict[str, tuple[str, str, float]] = {}   # tree item -> (name, ip, since)
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
        self._build_info(frame)
        self._build_members(frame)
        self._build_log(frame)

    def _build_bar(self, frame) -> None:
        import tkinter as tk
        from tkinter import ttk
        bar = ttk.Frame(frame)
        bar.grid(row=0, column=0, columnspan=2, sticky="ew")
        bar.columnconfigure(5, weight=1)
        self.start_button = ttk.Button(bar, text="Start server", style="Go.TButton",
                                       command=self.start)
        self.stop_button = ttk.Button(bar, text="Stop server", style="Halt.TButton",
                                      command=self.stop)
        self.port_button = ttk.Button(bar, text="Change port…", command=self.change_port)
        self.address_button = ttk.Button(bar, text="Set listen address…",
                                         command=self.set_listen_address)
        self.copy_button = ttk.Button(bar, text="Copy address", width=14,
                                      command=self.copy_address)
        for column, button in enumerate((self.start_button, self.stop_button, self.port_button,
                                         self.address_button, self.copy_button)):
            button.grid(row=0, column=column, padx=(0, 16 if column == 1 else 6))
        self.badge = tk.Label(bar, width=10, foreground="white", padx=10, pady=3,
                              font="TkHeadingFont")
        self.badge.grid(row=0, column=6, sticky="e")
        self.status_line = ttk.Label(frame, style="Note.TLabel")
        self.status_line.grid(row=1, column=0, columnspan=2, sticky="ew", pady=(10, 8))
        bar.update_idletasks()   # the bar is the narrowest the window gets: wrap there
        self.status_line.configure(wraplength=bar.winfo_reqwidth())

    def _build_info(self, frame) -> None:
        from tkinter import ttk
        box = ttk.Labelframe(frame, text="This server", padding=(12, 8))
        box.grid(row=2, column=0, sticky="nsew", padx=(0, 10))
        self.info: dict[str, ttk.Label] = {}
        for row, (key, title) in enumerate((("public", "Public IPv4"), ("private", "Private IPv4"),
                                            ("mac", "MAC address"), ("listen", "Listening on"),
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
        self.tree = ttk.Treeview(box, columns=("alias", "ip", "since"), show="headings",
                                 height=5, selectmode="extended")
        for column, title, width, stretch in (("alias", "Alias", 160, True),
                                              ("ip", "IP address", 130, False),
                                              ("since", "Online since", 120, False)):
            self.tree.heading(column, text=title, anchor="w")
            self.tree.column(column, width=width, minwidth=80, stretch=stretch, anchor="w")
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
        self.log_text = tk.Text(box, height=12, width=90, wrap="word", font="TkFixedFont",
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
                self.public_ip = news[0] or "unavailable"
            elif kind == "host":
                self.private_ip, self.mac = news
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
    def _show_members(self, snapshot: list[tuple[str, str, float]]) -> None:
        """Make the list match the room: drop who left, add who came."""
        tree, rows = self.tree, self.rows
        now_in = {name: (name, ip, since) for name, ip, since in snapshot}
        for item, (name, ip, since) in list(rows.items()):
            new = now_in.pop(name, None)
            if new is None:
                tree.delete(item)
                del rows[item]
            elif new[1] != ip or abs(new[2] - since) > 1.0:   # left and came back
                tree.item(item, values=(name, new[1], since_text(new[2])))
                rows[item] = new
        for name, ip, since in now_in.values():
            rows[tree.insert("", "end", values=(name, ip, since_text(since)))] = (name, ip, since)
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
    def _ask(self, title: str, fields: list[tuple[str, str]], accept: Callable[..., str | None]):
        if self.dialog is not None and self.dialog.is_open():
            self.dialog.top.lift()
            return
        self.dialog = FormDialog(self.root, title, fields, accept)

    def change_port(self) -> None:
        """Ask for a port, save it to .pcr_port; a running server restarts on it."""
        self._ask("Change port", [("Port (1 to 65535)", str(self.settings.port))], self._take_port)

    def set_listen_address(self) -> None:
        """Ask for the address and port to listen on (0.0.0.0: every interface)."""
        self._ask("Set listen address",
                  [("Address (0.0.0.0: all)", self.settings.host),
                   ("Port (1 to 65535)", str(self.settings.port))], self._take_address)

    def _take_port(self, port_text: str) -> str | None:
        port = port_from_text(port_text)
        if port is None:
            return f"{port_text.strip()[:20]!r} is not a port number from 1 to 65535."
        self._use_address(self.settings.host, port)
        return None

    def _take_address(self, host_text: str, port_text: str) -> str | None:
        host, port = host_from_text(host_text), port_from_text(port_text)
        if host is None:
            return f"{host_text.strip()[:40]!r} is not an IP address or host name."
        if port is None:
            return f"{port_text.strip()[:20]!r} is not a port number from 1 to 65535."
        self._use_address(host, port)
        return None

    def _use_address(self, host: str, port: int) -> None:
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

    def friend_address(self) -> str:
        """ip:port for friends: the public IP if known, else the private one."""
        port = self.listening[1] if self.listening else self.settings.port
        for ip in (self.public_ip, self.private_ip):
            try:
                return host_port(str(ipaddress.ip_address(ip)), port)
            except ValueError:
                continue
        return host_port(self.settings.host, port)

    def copy_address(self) -> None:
        """Put the friends' address on the clipboard."""
        self.root.clipboard_clear()
        self.root.clipboard_append(self.friend_address())
        self.copy_button.configure(text="Copied ✓")
        if self.flash_id:
            self.root.after_cancel(self.flash_id)
        self.flash_id = self.root.after(1500, self._copied_shown)

    def _copied_shown(self) -> None:
        self.flash_id = None
        self.copy_button.configure(text="Copy address")

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
        self.info["public"].configure(text=self.public_ip)
        self.info["private"].configure(text=self.private_ip)
        self.info["mac"].configure(text=self.mac)
        self.info["listen"].configure(
            text=host_port(*self.listening) if self.listening else f"off (next: {next_address})")
        self._show_disconnect()

    def _status_sentence(self) -> str:
        listen = host_port(self.settings.host, self.settings.port)
        if self.quitting:
            return "Stopping the server before closing…"
        return {
            STOPPED: f"The room is closed. Start server opens it on {listen}.",
            STARTING: f"Starting on {listen}…",
            RUNNING: f"The room is open. Friends join at {self.friend_address()}.",
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
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_close)
    root.deiconify()
    root.mainloop()
    return 0
