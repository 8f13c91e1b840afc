#!/usr/bin/env python3
"""PrivateChatRoom-Server: a private chat room in one file.

Run it, give your address to family or friends, and they join from a
browser or a phone (the chat page, on the room's port + 1), with the
PrivateChatRoom-App desktop client, or from any terminal (`nc HOST 5050`).
Standard library only.  The wire protocol is docs/PROTOCOL.md; usage: README.md.

    python3 pcr_server.py                 # headless
    python3 pcr_server.py --gui           # with a window
    python3 pcr_server.py --web-port off  # without the chat page
    python3 pcr_server.py --connect HOST  # join a room from a terminal

The file, top to bottom (each part uses only those above it; a test keeps it so):
  1. Constants and settings   one dataclass; command line > .pcr_port > defaults
  2. The protocol             pure functions on bytes and strings: names, lines and
                              their texts, App pieces (app_cut), WebSocket frames
                              (FrameReader: one announced binary message, into an
                              Upload), HTTP, ChatPage (the page's headers), photos
                              (photo_parts: JPEG, PNG, WebP by their own bytes,
                              rebuilt from what decoders need, in bounded pieces)
  3. The event loop and the transport
                              Loop (file events, timers, calls from other threads),
                              Bucket, Tally, Transport (one socket: the one send,
                              kept bytes, write interest, TLS steps, the close)
  4. The room and its outlets Member (who, and where in its life), Room (names,
                              welcomes, leaves, the count, the history for newcomers,
                              /msg: each event published once, a private line to
                              its two members alone), an outlet per kind of
                              reader, each encoding and delivering the events
                              (Stream: what an outlet says, parts for some alone):
                              LineOutlet (terminals, the shared stream), WebOutlet
                              (frames marked with their place; WebSeat: a seat held
                              through a lost connection, away, until the page is
                              back), AppOutlet (the App's pace: one piece when it is free);
                              Album (the photos shared, in memory, the oldest go);
                              Said and Transcript (each line by its id: replies,
                              reactions, edits, deletions, checked and bounded)
  5. The gate                 yes or no, and why, to a connection, a name, a line:
                              Gate (--allow, connections per address and in all,
                              the silent ones and which makes room, the rates,
                              the room key's tries, the photo rate and the photo
                              bytes the room takes in, the refusal sentences)
  6. The server and its doors PhotoDesk (the web door's: photos taken in, within the
                              room's bound and pace, or refused in a sentence),
                              WebDoor (HTTP, photos served, the
                              WebSocket upgrade, frames in, a page asking for its
                              seat back, a page's actions on lines), SecurePage
                              (--https on the page's port: its certificate, a CA's
                              answers, the 308 to https), Handshakes (TLS, paced),
                              Doorway (a new connection's first bytes choose its
                              door: at the room's port, and at the page's with
                              --https, TLS or http), Naming (an alias to a place in
                              line), Server (listening, accepting, each connection
                              to its door, reading, lines, closing; it asks the gate)
  7. Host addresses           listen addresses as people type them (none: every
                              network, dual-stack), private, public and MAC
                              addresses, the IPv6 address on the internet (stable,
                              not temporary), the invitation
  8. The router client        --upnp: the router forwards the room's ports with
                              PCP, NAT-PMP or UPnP-IGD (RouterPorts, ask_router),
                              and lets them in over IPv6 (Pinholes: IGDv2's
                              firewall control, or PCP over IPv6), and what
                              happened in plain words; then FriendsJoin
                              (how friends join, for the banner and the window)
  9. HTTPS for the page (ACME)
                              --https: P-256, ECDSA (RFC 6979), DER, the CSR, JWS,
                              AcmeClient (RFC 8555: the CA asked, IP identifiers),
                              CertificateStore (the folder beside .pcr_port),
                              PageCertificate (gets, puts in place and renews the
                              page's certificate, on a thread of its own)
  10. The QR code             qr_code(text): the invitation for a phone's camera
                              (ISO/IEC 18004, byte mode, level M), drawn for a console
  11. Logging                 a rotating file, created readable by its owner only;
                              the console (text fitted to the terminal's width,
                              colours only where it takes them)
  12. The GUI                 WindowView (the widgets, the log panel; ScrollArea:
                              the part that scrolls on a small screen), RouterSwitch
                              (the router asked while its switch is on), HttpsSwitch
                              (the page's certificate kept while its box is ticked),
                              InvitationCode (the code to scan), ServerWindow
                              (the room as the window runs it: RoomState), tkinter
                              imported here
  13. The terminal client     --connect (an address, the page's, or its link)
  14. The command line        main()
  15. The chat page (data)    PAGE_HTML, handed to WebDoor when a Server is built

Threads: the loop's thread owns every socket and all room and server state.
The GUI runs on the main thread and reaches the room only through
Loop.call_soon_threadsafe; look-ups of addresses run on threads of their own
and hand their answers back through queues.  RouterPorts asks the router on
the caller's thread and renews on one of its own; its state is behind its lock.
PageCertificate talks to the CA on a thread of its own and hands the
certificate to the loop (SecurePage) through call_soon_threadsafe.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import calendar
import codecs
import collections
import contextlib
import dataclasses
import email.utils
import enum
import errno
import functools
import hashlib
import heapq
import hmac
import http.client
import ipaddress
import itertools
import json
import logging
import logging.handlers
import math
import mmap
import os
import queue
import re
import secrets
import selectors
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ElementTree
import xml.parsers.expat
import zlib
from typing import Callable, Collection

try:
    import resource
except ImportError:  # not on Windows: the open-files limit stays as it is
    resource = None
try:
    import ssl
except ImportError:  # Python built without OpenSSL: no --tls-cert
    ssl = None
try:
    import termios
except ImportError:  # Windows: typed lines come as its console gives them
    termios = None

VERSION = "2.0.0"

# ---------------------------------------------------------------------------
# 1. Constants and settings
# ---------------------------------------------------------------------------

DEFAULT_PORT = 5050
PORT_FILE = ".pcr_port"
LOG_FILE = ".privateChat_server.log"
LOG_FORMAT = "%(asctime)s:%(levelname)s:%(name)s:%(message)s"
DEFAULT_PUBLIC_IP_URL = "https://api.ipify.org"
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"   # --https's CA unless told
HTTPS_FOLDER = ".pcr_https"   # beside PORT_FILE: --https's keys and certificate, one folder per CA
RECV_SIZE = 65536   # the terminal client's reads
# Ctrl+C, a terminate, the terminal going away (SSH dropped) and Windows' Ctrl+Break all
# stop the room cleanly; so does closing the console window (see on_stop_signals).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK")
                     if hasattr(signal, name))
PORT_FILE_BYTES = 64      # a port number, spaces and a line end fit with room to spare
MIN_KEY = 8               # a shorter room key is warned about: it can be guessed

log = logging.getLogger("pcr_server")


@dataclasses.dataclass
class Settings:
    """Everything the server can be told; the command line maps onto it."""

    host: str = "0.0.0.0"             # the command line's default is every_network(): `::`,
                                      # IPv6 and IPv4 at once, where the system can
    port: int = DEFAULT_PORT
    web_port: int | None = None       # the chat page and its WebSocket; None: no page (the
                                      # command line's default is next_page_port: port + 1)
    log_file: str = LOG_FILE
    public_ip_url: str = DEFAULT_PUBLIC_IP_URL
    upnp: bool = False                # ask the router to forward the room's ports
    keepalive: float = 60.0           # idle seconds before the kernel probes a member; 0: off
    web_ping: float = 30.0            # a web member is pinged this often; no pong by the next: gone
    web_grace: float = 120.0          # a web member whose connection is lost keeps its seat this long
    history: int = 0                  # chat lines kept in memory for newcomers; 0: none
    edit_window: float = 900.0        # seconds in which a member may edit or delete its own line
    photos: int = 64                  # MiB of photos shared on the page, kept in memory; 0: none
    photo_rate: float = 0.2           # photos a second per member (above 0), bursts of PHOTO_BURST
    photo_pace: int = 4096            # bytes a second: a page sending slower (over a ping
                                      # interval) is not answering pings, and its photo goes
    handshake_timeout: float = 600.0  # seconds to give an alias: an App's user may still be typing it
    door_wait: float = 0.1            # the room's port waits this long for a client that speaks
                                      # first (a browser), then asks for an alias (the App never does)
    max_unnamed: int = 1000           # connections at once that have not given a name yet
    max_line: int = 4096              # bytes in one chat line
    line_rate: float = 10.0           # lines per second per member (4x per address); 0: off
    max_backlog: int = 1 << 20        # bytes waiting for one member
    max_clients: int = 10000
    max_per_ip: int = 16
    allow: tuple = ()                 # ip networks; empty: everyone
    app_char_time: float = 0.07       # the App types each character this long
    app_margin: float = 0.5           # and needs this much more per read (network, a slow desktop)
    welcome_delay: float = 1.0        # from an App's alias to its welcome: its window is being built
    count_interval: float = 0.25      # joins and leaves this close together share one count line
    join_window: float = 0.05         # Apps named within one such window are welcomed together
    fold_joins: int = 3               # more joins at once: one folded notice
    stop_flush: float = 2.0           # seconds to deliver the stop lines
    accept_pause: float = 0.5         # after EMFILE/ENFILE on accept
    churn_period: float = 60.0        # an address gets 4 x max_per_ip welcomes per this
    log_summary: float = 60.0         # a repeated warning is logged once, then summed up this often
    room_key: str = ""                # members join as name#KEY; empty: no key
    tls_cert: str = ""                # PEM files; empty: plain text
    tls_key: str = ""
    https: bool = False               # the page gets a certificate for the public address (ACME)
    acme_directory: str = LETS_ENCRYPT
    acme_ca_file: str = ""            # PEM: trusted for the ACME directory, beside the system's roots


def parse_port(text: str) -> int | None:
    """The port number written in `text`, or None if it is not 1 to 65535."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        return None
    return int(text)


def port_number(text: str) -> int:
    """An argparse type: a port number from 1 to 65535."""
    port = parse_port(text)
    if port is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 1 to 65535")
    return port


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
    """At most `size` bytes of a regular file, as text; OSError for anything else.

    UTF-8, with or without the BOM Notepad writes; UTF-16 after its BOM (Notepad's
    "Unicode", PowerShell's `echo 6000 > .pcr_port`)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))   # a pipe must not hold us
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file")
        raw = os.read(fd, size)
    finally:
        os.close(fd)
    return raw.decode("utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")


def short_key_warning(key: str) -> str:
    """A sentence when the room key is short enough to guess, else ""."""
    if not key or len(key) >= MIN_KEY:
        return ""
    return (f"the room key has only {len(key)} characters, which can be guessed; "
            f"a key of {MIN_KEY} or more is much safer")


def save_port_file(port: int, path: str = PORT_FILE) -> None:
    """Write the port to `path`, never through a link (OSError if it is one)."""
    if not hasattr(os, "O_NOFOLLOW") and os.path.islink(path):   # Windows has no O_NOFOLLOW
        raise OSError(errno.ELOOP, "it is a link", path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)   # a pipe with no reader must not hold us either
    with open(os.open(path, flags, 0o644), "w", encoding="utf-8") as f:
        f.write(f"{port}\n")


# -- where it runs: Windows or POSIX -------------------------------------------

WINDOWS = sys.platform == "win32"
RUN = "py pcr_server.py" if WINDOWS else "python3 pcr_server.py"   # how a person starts this file
END_OF_INPUT = "Ctrl+Z then Enter" if WINDOWS else "Ctrl+D"          # the keys that end typed input
GET_TKINTER = {   # where tkinter comes from, for a Python without it
    "win32": "install Python from python.org with its \"tcl/tk and IDLE\" option ticked "
             "(the embeddable Python has no tkinter)",
    "darwin": "install Python from python.org, which includes it (Homebrew's Python needs "
              "`brew install python-tk`)",
}.get(sys.platform, "install it (for example `sudo apt install python3-tk`)")
# Windows numbers socket errors apart: WSAEACCES is 10013 where EACCES is 13.
WINSOCK_ERRORS = {"EACCES": 10013, "EMFILE": 10024, "EADDRINUSE": 10048,
                  "EADDRNOTAVAIL": 10049, "ENOBUFS": 10055}
CONSOLE_CLOSING = (2, 5, 6)   # Windows' CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT
CLOSE_GRACE = 4.5             # Windows ends a process 5 s after its console window is closed


def errno_is(e: OSError, *names: str) -> bool:
    """Whether `e` is one of the errors `names` ("EACCES", ...), by its POSIX
    number or by its Windows socket number."""
    return e.errno is not None and any(
        e.errno in (getattr(errno, name, None), WINSOCK_ERRORS.get(name)) for name in names)


def on_stop_signals(request: Callable[[], None]) -> None:
    """Call `request` on each of STOP_SIGNALS and, on Windows, when the console
    window is closed, the user logs off or the machine shuts down (main thread)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: request())
    if not WINDOWS:
        return
    try:
        import ctypes
        from ctypes import wintypes
    except ImportError:   # a Python without ctypes: Ctrl+C and Ctrl+Break still stop cleanly
        return
    handler = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)(
        lambda event: console_closing(event, request))
    ctypes.windll.kernel32.SetConsoleCtrlHandler(handler, True)
    on_stop_signals.console_handler = handler   # kept: Windows may call it until the end


def console_closing(event: int, request: Callable[[], None], grace: float = CLOSE_GRACE) -> bool:
    """Windows' console handler, on a thread of its own.  On a close, log-off or
    shut-down: ask for the clean stop and hold the process up to `grace`
    seconds, since Windows ends it once this returns.  Ctrl+C and Ctrl+Break
    are left to the signal handlers (False)."""
    if event not in CONSOLE_CLOSING:
        return False
    request()
    time.sleep(grace)   # the process ends sooner, when main() returns
    return True


# ---------------------------------------------------------------------------
# 2. The protocol
# ---------------------------------------------------------------------------

ALIAS_PROMPT = b"ALIAS"
HTTP_REQUEST_LINE = re.compile(rb"[A-Z]{3,16} [!-~]+ HTTP/[0-9]\.[0-9]\r?")   # RFC 9112 §3
# What a request line's first bytes may be while the rest is still on its way
HTTP_REQUEST_START = re.compile(rb"[A-Z]{1,16}(?: [!-~]*(?: (?:H(?:T(?:T(?:P(?:/[0-9.]{0,3})?)?)?)?)?)?)?")
STOP_NOTICE = ("\n\t\t\tthe server has been stopped...\n"
               "\t\tplease close the app and relaunch once the server is online..\n")
MAX_NAME = 32
APP_READ = 1024      # the App's recv size: no piece sent to an App is longer
APP_SLACK = 0.2      # an App types up to this much slower than --app-char-time (a busy desktop)
WHO_SHOWN = 50       # names listed in an answer to /who
KNOWN_AS = "the room knows you as "   # told to a member whose name is not the one it gave
STOPPED_TEXT = "the server has been stopped"   # the stop, where one line says it (the page)
NEEDS_KEY = ("this room needs a key: join with your name followed by #KEY "
             "(ask the host for the key)\n")
WRONG_KEY = "that room key is wrong: check it with the host and try again\n"
# The page has a field of its own for the key: it is never told to type name#KEY.
NEEDS_KEY_ON_PAGE = "this room needs a key: type it under your name (ask the host for it)\n"
FELL_BEHIND = ("you were disconnected: the room says more than your App can show in time; "
               "please close the app and relaunch to catch up\n")
TLS_JOINING = "the App cannot join; friends use {}"   # how they do, in the words of where it is said
# Why a page that asked for its seat back (docs/PROTOCOL.md, "Coming back") did not get it.
SEAT_GONE = "your seat in the room was not kept; joining as new"   # no more is known, or told
GRACE_RAN_OUT = "your seat in the room was not kept: you were away longer than {:g} s; joining as new"
NAME_TAKEN = ("your seat in the room was not kept: you were away longer than {:g} s, "
              "and someone else has your name now; joining as new")
ROOM_RESTARTED = "your seat in the room was not kept: the room was restarted; joining as new"
MISSED_TOO_MUCH = "you missed too much while you were away; joining as new"
TAKEN_OVER = "this page carries on over a newer connection"   # the older one is closed with this
HISTORY_KEPT = "newcomers see the last {} chat lines"   # --history
PHOTOS_KEPT = "kept in memory only (up to {} MiB), gone when the room stops"   # photos shared
PHOTO_BURST = 3.0    # photos a member may share at once, then one each 1 / Settings.photo_rate s
PRIVATE_TAG = "[private]"   # begins a private line; no name may (clean_name)
MSG_USAGE = "to send a line to one member alone, type /msg NAME TEXT\n"
HELP_TEXT = ("commands: /who lists who is in the room; /msg NAME TEXT sends TEXT to NAME alone "
             "(a NAME that could be more than one member's, in quotes: /msg \"bob can\" TEXT); "
             "/help shows this\n")
# What a page does to a line (docs/PROTOCOL.md, "Replies, reactions, edits"): it asks with a
# text that begins with NUL, which no typed line does; the room answers its sender in a sentence.
ACTION_MARK = "\x00"
PAGE_ACTS = ("reply", "react", "edit", "delete", "typing")
REACTIONS = ("👍", "❤️", "😂", "😮", "😢", "🙏")
QUOTE_CHARS = 40     # a reply or a reaction quotes about this many of a line's first characters
EDITED_MARK = " (edited)"   # after an edited line's words, and a quote of them, for line readers
LINE_ACTS_DONE = {"react": "reacted to", "edit": "edited", "delete": "deleted"}   # in sentences
LINE_NOT_KEPT = "that line is no longer kept in the room, so it cannot be {}\n"
LINE_DELETED = "that line was deleted, so it cannot be {}\n"
NOT_YOURS = "only the member who sent a line can {} it\n"
TOO_LATE = "a line can be {} only within {} of sending it\n"
PHOTO_NOT_EDITED = "a photo cannot be edited: delete it and share another\n"
EDIT_NEEDS_WORDS = "an edit needs words: to take a line back, delete it\n"
ANSWERED_NOT_KEPT = "the line you answered is no longer kept, so yours was sent as a new line\n"
PRIVATE_NOT_KEPT = "the private line you answered is no longer kept, so your reply was not sent\n"
PARTNER_GONE = "{} is not in the room now, so your private reply was not sent\n"
NOT_A_REACTION = f"a reaction is one of {' '.join(REACTIONS)}\n"
REACTING_TOO_FAST = "you are reacting to that line too fast; wait a few seconds\n"
NOT_UNDERSTOOD = "the room did not understand what your page sent; reload the page\n"
# The room's own lines, by their first words (a member's line is NAME: TEXT): a name that
# looks like one of these (name_look, from its start) gets a `_` (clean_name), and one that
# still does (a form inside it, as in `anna reacted 👍 to bob`) has its spaces made `_`, so
# that no member's line can pass for the room's.  A form either begins the line or holds a
# space; one that ends where a name would ends at \b, so that a numbered name (`x (2)`) is
# caught too.  One list: new kinds of lines add theirs here.
ROOM_FORMS = (
    re.escape(PRIVATE_TAG),   # [private] ann to bob: TEXT
    r".* shared a photo\b",   # ann shared a photo: LINK
    r"in the room now\b",     # the answer to /who
    r"commands\b",            # the answer to /help
    r".*\(to\s",              # ann (to bob: "FIRST WORDS…"): TEXT, a reply
    r".*\sreacted\s",         # ann reacted 👍 to bob: "FIRST WORDS…"
    r".*\stook back\s",       # ann took back 👍 from bob: "FIRST WORDS…"
    r".*\sedited$",           # ann edited: "TEXT"
)
ROOM_LINE = re.compile("|".join(f"(?:{form})" for form in ROOM_FORMS))
READABLE_NAME = 4 * MAX_NAME   # the longest words /msg tries as a name (invisible characters too)

# Terminal escape sequences (CSI, OSC, DCS/PM/APC strings, two-byte ESC
# forms, 8-bit CSI), every C0/C1 control but tab, bidi overrides and
# isolates (they reorder the text around them), and line/paragraph separators.
_UNSAFE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|[PX^_][^\x1b]*(?:\x1b\\)?|[ -/]*[0-~]?)"
    r"|\x9b[0-?]*[ -/]*[@-~]?|[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_SPACES = re.compile(r"\s+")
# Code points that show nothing, or a blank: Unicode's default-ignorables and the fillers.
_INVISIBLE_CHARS = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff")
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")
# A run of blanks (spaces, tabs, blank and invisible characters) holding more than
# BLANK_RUN that take a column is made BLANK_RUN spaces: padding could push a line's last
# words to the start of a row of a terminal (or the App), where they would read as another
# member's line.  Characters that take no column (a flag's tags, joiners) push nothing.
BLANK_RUN = 4
_BLANK_RUNS = re.compile(rf"[\s{_INVISIBLE_CHARS}]{{{BLANK_RUN + 1},}}")
_COLUMN_BLANKS = re.compile(r"[\s\u115f\u1160\u2800\u3164\uffa0]")   # \s and the blank fillers
# Look-alikes as the letters and marks they look like (Unicode TR39's confusables: Cyrillic,
# Greek, Armenian, Cherokee, Lisu, Canadian syllabics, small capitals, some symbols; never
# digits), both cases, as case is ignored; what NFKC folds already is not listed.  Colons
# and their look-alikes go from names (clean_name): none can pose as another's line prefix.
_COLONS = ":ː˸։᛬᠃᠉⁚∶ꓽ꞉︓︰﹕："
_LOOKALIKES = str.maketrans({look_alike: letter for letter, look_alikes in (
    ("a", "аαɑАΑᎪᗅ⍺ꓮ𐊠𖽀"),
    ("b", "ВΒƄЬᏏᏴᑲᖯᗷꓐꞴ𐊂𐊡𐌁"),
    ("c", "сϲᴄСᏟⲤⲥꓚꮯ𐊢𐌂𐐕𐐽𐔜𑣲🝌"),
    ("d", "ԁᎠᏧᑯᗞᗪꓒꓓ"),
    ("e", "еЕΕҽᎬ℮⋿ⴹꓰꬲ𐊆𑢦𑢮"),
    ("f", "ϜքᖴẝꓝꞘꞙꬵ𐊇𐊥𐔥𑢢𑣂𝈓"),
    ("g", "ɡցƍԌᏀᏳᶃꓖ"),
    ("h", "һհНҺΗᎻᏂᕼⲎꓧ𐋏"),
    ("i", "іιıɩІΙɪӀᎥᛁ∣⍳⏽Ⲓⵏꓲꙇꭵ𐊊𐌉𐌠𑣃𖼨"),
    ("j", "јϳȷЈᎫᒍꓙꞲ"),
    ("k", "КΚᏦᛕⲔꓗ𐔘"),
    ("l", "ӏǀᏞᒪⳐꓡ𐐛𐔦𑢣𑢲𖼖𝈪"),
    ("m", "МΜϺᎷᗰᛖⲘꓟ𐊰𐌑"),
    ("n", "ոΝռⲚꓠ𐔓"),
    ("o", "оοօᴏОΟσଠഠဝჿዐᴑⲞⲟⵔ〇ꓳꬽ𐊒𐊫𐐄𐐬𐓂𐓪𐔖𑢵𑣈𑣗"),
    ("p", "рρРΡᏢᑭ⍴Ⲣⲣꓑ𐊕"),
    ("q", "ԛզԚգⵕ"),
    ("r", "ƦгᎡᏒᖇᴦⲅꓣꭇꭈꮁ𐒴𖼵𝈖"),
    ("s", "ѕꜱЅƽՏᏕᏚꓢꮪ𐊖𐐠𐑈𑣁𖼺"),
    ("t", "ТΤᎢ⊤⟙Ⲧꓔ𐊗𐊱𐌕𑢼𖼊🝨"),
    ("u", "υսᴜʋሀᑌ∪⋃ꓴꞟꭎꭒ𐓎𐓶𑢸𑣘𖽂"),
    ("v", "ѵνᴠѴᏙᐯ∨⋁ⴸꓦꛟꮩ𐔝𑜆𑢠𑣀𖼈𝈍"),
    ("w", "ԝᴡԜɯѡաᎳᏔꓪꮃ𑜊𑜎𑜏𑣯"),
    ("x", "хХΧ×ᕁᕽ᙭᙮ᚷ╳⤫⤬⨯ⲬⵝꓫꞳ𐊐𐊴𐌗𐌢𐔧𑣬"),
    ("y", "уУҮΥɣʏγүყᎩᎽᶌỿⲨꓬꭚ𐊲𑢤𑣜𖽃"),
    ("z", "ᴢΖᏃꓜꮓ𐋵𑢩𑣄"),
    ("(", "❨﴾"),
    (")", "❩﴿"),
    ("[", "⁅❲〔⟦⦋⦍⦏【〚"),
    ("]", "⁆❳〕⟧⦌⦎⦐】〛"),
    (":", _COLONS),
) for look_alike in look_alikes})


def joined_notice(names: list[str]) -> str:
    """One member's join, or one line for many at once (a join storm)."""
    if len(names) == 1:
        return f"{names[0]} joined the chat...\n"
    shown, more = ", ".join(names[:3]), len(names) - 3
    return f"{shown} and {more} {'other' if more == 1 else 'others'} joined the chat...\n"


def left_notice(name: str) -> str:
    return f"{name} has left the chat...\n"


def chat_notice(name: str, text: str) -> str:
    return f"{name}: {text}\n"


def photo_notice(name: str, link: str) -> str:
    return f"{name} shared a photo: {link}\n"


def first_words(text: str, most: int = QUOTE_CHARS) -> str:
    """About the first `most` characters of `text`, cut after a word and
    ended with … when anything was cut: how a reply or a reaction quotes it."""
    text = _SPACES.sub(" ", text).strip()
    if len(text) <= most:
        return text
    cut = text.rfind(" ", 0, most + 1)
    return text[:cut if cut > most // 2 else most].rstrip(" ,;:.!?-") + "…"


def answered_text(name: str, words: str | None, edited: bool = False) -> str:
    """A line as a reply or a reaction names it: `bob: "are we meeting at five…"`
    (its first words; `bob: "…" (edited)` once edited), `bob: a photo`, or
    `bob: a deleted line` (words "")."""
    if words:
        return f'{name}: "{words}"' + EDITED_MARK * edited
    return f"{name}: {'a photo' if words is None else 'a deleted line'}"


def reply_notice(speaker: str, answered: str, text: str) -> str:
    """A reply: `anna (to bob: "are we meeting at five…"): yes, at five`; the
    speaker of a private one is `[private] anna to bob`."""
    return f"{speaker} (to {answered}): {text}\n"


def reaction_notice(name: str, emoji: str, answered: str, on: bool) -> str:
    """`anna reacted 👍 to bob: "…"`, or `anna took back 👍 from bob: "…"`."""
    if on:
        return f"{name} reacted {emoji} to {answered}\n"
    return f"{name} took back {emoji} from {answered}\n"


def edit_notice(name: str, text: str) -> str:
    return f'{name} edited: "{text}"\n'


def delete_notice(name: str) -> str:
    """A line taken back: who, never its words."""
    return f"{name} deleted a line\n"


def duration_words(seconds: float) -> str:
    """A time as a sentence says it: `15 minutes`, `1 minute`, `90 seconds`."""
    n, unit = (seconds // 60, "minute") if seconds >= 60 and seconds % 60 == 0 else (seconds, "second")
    return f"{n:g} {unit}{'' if n == 1 else 's'}"


def count_notice(n: int) -> str:
    return "1 person is online...\n" if n == 1 else f"{n} people are online...\n"


def who_notice(names: list[str]) -> str:
    """The answer to /who: who is in the room, the first WHO_SHOWN by name."""
    shown = ", ".join(names[:WHO_SHOWN])
    more = len(names) - WHO_SHOWN
    if more > 0:
        shown += f" and {more} {'other' if more == 1 else 'others'}"
    return f"in the room now ({len(names)}): {shown}\n"


def private_notice(sender: str, receiver: str, text: str) -> str:
    """A private line, as its sender and its receiver both read it."""
    return f"{PRIVATE_TAG} {sender} to {receiver}: {text}\n"


def nobody_notice(name: str) -> str:
    """The answer to /msg for a name that is nobody's in the room."""
    return f'nobody called "{name}" is in the room; /who lists who is\n'


def which_notice(names: list[str]) -> str:
    """The answer to /msg whose words could name each of `names` (the longest
    first): nothing went, and how to say which."""
    listed = ", ".join(f'"{name}"' for name in names[:-1]) + f' or "{names[-1]}"'
    return (f'nothing was sent: that could be for {listed}; say which in quotes, '
            f'as in /msg "{names[0]}" TEXT\n')


def private_readings(request: str) -> list[tuple[str, str, str]]:
    """The ways the rest of `/msg NAME TEXT` can be read, as (NAME, its
    name_look, TEXT), the longest NAME first: a name may hold spaces, and a
    NAME in quotes (`"bob can" hi`) is read only as that; none without both,
    nor a NAME longer than READABLE_NAME.  The words are read no further than
    that, and each once: a NAME's look is the one before it and the words it
    adds (no look joins across a space or a quote)."""
    request = request.strip()
    quoted = request.startswith('"')
    first = len(request) - len(request[1:].lstrip()) if quoted else 0   # after `"` and its spaces
    cuts = re.compile(r'"\s+' if quoted else r"\s+").finditer(request, first)
    readings, look, looked = [], "", first
    for cut in itertools.takewhile(lambda cut: cut.start() <= quoted + READABLE_NAME, cuts):
        end = len(request[:cut.start()].rstrip())
        if end > looked:
            look, looked = look + name_look(request[looked:end]), end
        readings.append((request[first:end], look, request[cut.end():]))
    return [reading for reading in reversed(readings) if reading[0] and len(reading[0]) <= READABLE_NAME]


def page_json(text: str | bytes):
    """The JSON value a page sent (an action, a request for its seat); None
    if it is not JSON.  JSON may escape a lone surrogate (`"\\ud800"`), which
    no UTF-8 can hold: each comes in as U+FFFD, as bad UTF-8 does in a line,
    so that nothing a page sends can make a line the room cannot send."""
    try:
        value = json.loads(text)
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:   # pairs whole, lone ones U+FFFD
            held = json.dumps(value, ensure_ascii=False).encode("utf-16-le", "surrogatepass")
            value = json.loads(held.decode("utf-16-le", "replace"))
    except (ValueError, RecursionError):   # (UnicodeEncodeError is a ValueError: caught first)
        return None
    return value


def page_action(text: str) -> dict | None:
    """What a page asks of the room after ACTION_MARK: one JSON object,
    {"act": "reply" | "react" | "edit" | "delete" | "typing", "id": LINE,
    "text": ..., "emoji": ..., "private": ...}; None if it is not one."""
    action = page_json(text)
    if not isinstance(action, dict) or action.get("act") not in PAGE_ACTS:
        return None
    line_id = action.setdefault("id", 0)
    if action["act"] != "typing" and not (type(line_id) is int and line_id > 0):
        return None
    if not (isinstance(action.setdefault("text", ""), str)
            and isinstance(action.setdefault("emoji", ""), str)):
        return None
    return action


def clean_text(text: str) -> str:
    """Text with escape sequences, control characters (but tab), bidi
    overrides and line separators removed, and each run of more than
    BLANK_RUN blanks made BLANK_RUN spaces."""
    text = _UNSAFE.sub("", text)
    if text.isascii() and "  " not in text and "\t" not in text:   # no run of blanks: most lines
        return text
    return _BLANK_RUNS.sub(_shorter_blanks, text)


def _shorter_blanks(run: re.Match) -> str:
    """A run of blank and invisible characters: BLANK_RUN spaces if more than
    BLANK_RUN of them take a column, else as it was."""
    return " " * BLANK_RUN if len(_COLUMN_BLANKS.findall(run[0])) > BLANK_RUN else run[0]


def clean_name(text: str) -> str:
    """A name as the room shows it: visible, one line, trimmed, short.

    Colons and their look-alikes go too, so that no name can pose as
    another's line prefix, and a leading digit gets a `_` before it: the App
    takes any read that starts with a digit for the count.  So does a name
    that looks like the first words of the room's own lines (ROOM_FORMS,
    `[private]` in any look), and
    one that still does (`anna shared a photo`, `anna reacted 👍 to bob`) has
    its spaces made `_` too: no member's line can pose as the room's.
    """
    text = _INVISIBLE.sub("", clean_text(text.replace("\t", " ")))
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C" and c not in _COLONS)
    text = _SPACES.sub(" ", text).strip()[:MAX_NAME].strip()
    if text[:1].isdigit() or ROOM_LINE.match(name_look(text)):
        text = ("_" + text)[:MAX_NAME].strip()
    if ROOM_LINE.match(name_look(text)):   # a form inside the name: its spaces become `_`
        text = "".join("_" if _SPACES.search(name_look(c)) else c for c in text)
    return text


def name_look(name: str) -> str:
    """What a name looks like, to tell names apart and to tell it from the
    room's own words (ROOM_FORMS): compatibility forms as their letters
    (NFKC), no invisible characters nor combining marks, look-alikes as the
    letters they look like, case folded.  `ＡＬＩＣＥ`, `𝖺𝗅𝗂𝖼𝖾`, `аlice`
    (Cyrillic а) and `álice` all look like `alice`."""
    text = unicodedata.normalize("NFKD", _INVISIBLE.sub("", name))
    text = unicodedata.normalize("NFKC", "".join(c for c in text if unicodedata.category(c)[0] != "M"))
    return text.translate(_LOOKALIKES).casefold().translate(_LOOKALIKES)


def numbered_name(name: str, n: int) -> str:
    """`name (n)`, still within MAX_NAME characters."""
    suffix = f" ({n})"
    return name[:MAX_NAME - len(suffix)].rstrip() + suffix


def quoted(name: str) -> str:
    """A name as the log writes it: in quotes, so that no name can read as
    log text (`"x from 10.9.8.7"`)."""
    return json.dumps(name, ensure_ascii=False)


def split_alias(data: bytes) -> tuple[bytes, bytes, bool]:
    """The alias (up to the first line end, else the whole read), the rest,
    and whether a line end came: a bare alias is how the App answers."""
    end = data.find(b"\n")
    if end < 0:
        return data.rstrip(b"\r"), b"", False
    return data[:end].rstrip(b"\r"), data[end + 1:], True


def browser_request(data: bytes) -> bool:
    """Whether `data` begins with an HTTP request line (METHOD SP target SP
    HTTP/x.y): a browser at the room's port, never a name.  Without its line
    end yet, only bytes that can be nothing else count (an App's alias has none)."""
    return HTTP_REQUEST_LINE.fullmatch(data.split(b"\n", 1)[0]) is not None


def request_begun(data: bytes) -> bool:
    """Whether `data`, with no line end yet, may still become an HTTP request
    line (browser_request): the first bytes of a request cut short."""
    return HTTP_REQUEST_START.fullmatch(data) is not None


def split_key(alias: str) -> tuple[str, str]:
    """`name#KEY` -> (name, KEY); without a `#` the key is empty."""
    name, _, key = alias.partition("#")
    return name, key


def alias_forms(claimed: str, name: str) -> tuple[str, ...]:
    """How a member's own lines may begin: the alias exactly as its client
    sent it (the App writes `{alias}: `), trimmed, cleaned, or the room's
    name for it; the longest first."""
    forms = {claimed, claimed.strip(), clean_name(split_key(claimed)[0]), name} - {""}
    return tuple(sorted(forms, key=len, reverse=True))


def decode_line(raw: bytes) -> str:
    """A received line (without its newline) as text; bad UTF-8 replaced."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "replace")


def is_leave_line(text: str, forms: tuple[str, ...]) -> bool:
    """True for the App's own goodbye, `\\t{alias} has left the chat...`."""
    return text.startswith("\t") and text.endswith(" has left the chat...") \
        and text[1:-len(" has left the chat...")] in forms


def said_text(text: str, forms: tuple[str, ...]) -> str | None:
    """What a member's line says, without its own prefix and made safe;
    None if it says nothing."""
    for form in forms:
        if text.startswith(form) and text[len(form):len(form) + 2] == ": ":
            text = text[len(form) + 2:]
            break
    text = clean_text(text)
    return text if text.strip() else None


def app_cut(data: bytes, limit: int = APP_READ) -> int:
    """How many bytes of `data` (whole UTF-8 lines) go to the App as one read.

    Up to `limit` bytes ending at a line end; a longer line is cut at a
    character boundary, moved back (a little) so that the rest does not
    begin with a digit and the piece does not end with " online..." (the
    App would show either in its count box).  Only a long run of digits
    leaves no such cut: then it is cut at the limit.
    """
    if len(data) <= limit:
        return len(data)
    line_end = data.rfind(b"\n", 0, limit)
    if line_end >= 0:
        return line_end + 1
    cut = limit
    while 0x80 <= data[cut] < 0xC0:   # not inside a character
        cut -= 1
    last = cut
    for _ in range(64):
        rest = data[cut:cut + 4].decode("utf-8", "ignore")[:1]
        if not rest.isdigit() and not data[:cut].endswith(b" online..."):
            return cut
        cut -= 1
        while 0x80 <= data[cut] < 0xC0:
            cut -= 1
    return last


# -- the web page's WebSocket (RFC 6455) ----------------------------------

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
# close codes
WS_NORMAL, WS_GOING_AWAY, WS_PROTOCOL_ERROR, WS_UNSUPPORTED = 1000, 1001, 1002, 1003
WS_BAD_DATA, WS_POLICY, WS_TOO_BIG, WS_INTERNAL, WS_TRY_LATER = 1007, 1008, 1009, 1011, 1013
WS_ANNOUNCED = 0x100 | WS_BINARY   # not on the wire: the binary message announced (FrameReader)
UNMASK_PIECE = 1 << 16             # a multiple of 4: each piece starts with the mask's first byte
UTF8_CHECK = codecs.getincrementaldecoder("utf-8")   # one a text message, fed as its bytes come
WS_DROP_UP_TO = 1 << 20   # a member's message past --max-line is dropped with a note up to this


class WsError(Exception):
    """A client broke RFC 6455 (or the room's use of it, docs/PROTOCOL.md):
    close the connection with `code`, and the sentence as its reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code

    @property
    def sentence(self) -> str:
        """Why, for the person: within a close frame's 123 bytes for every reason raised."""
        return f"this connection broke the room's WebSocket protocol ({self}); reload the page"


def ws_accept(key: str) -> str:
    """The Sec-WebSocket-Accept answer to a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_frame(payload: bytes, opcode: int = WS_TEXT) -> bytes:
    """One whole, unmasked frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


WS_PING_FRAME = ws_frame(b"", WS_PING)


def ws_close(code: int, reason: str = "") -> bytes:
    return ws_frame(struct.pack("!H", code) + reason.encode()[:120], WS_CLOSE)


# One encoder, made once (json.dumps makes one a call when told how to encode).
EVENT_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def event_json(event: dict) -> bytes:
    """An event as the page reads it: JSON, UTF-8, with no space to spare
    (every byte of it is sent to every page)."""
    return EVENT_ENCODER.encode(event).encode()


def ws_event(kind: str, /, **fields) -> bytes:
    """A message for the page: one text frame holding {"type": kind, ...}."""
    return ws_frame(event_json({"type": kind, **fields}))


def ws_marked_event(start: int, kind: str, /, **fields) -> bytes:
    """ws_event, written at stream position `start` and marked with `at`, the
    position right after it: where a page that has it picks up again."""
    body = event_json({"type": kind, **fields})[:-1] + b',"at":'
    at = start
    while True:   # `at` counts its own digits: two or three rounds settle it
        frame = ws_frame(b"%s%d}" % (body, at))
        if start + len(frame) == at:
            return frame
        at = start + len(frame)


def ws_frame_span(data: bytes | bytearray, offset: int) -> tuple[int, int]:
    """Where the payload of the whole frame ws_frame() wrote at `offset` is: (start, stop)."""
    length, at = data[offset + 1], offset + 2
    if length == 126:
        length, at = struct.unpack_from("!H", data, at)[0], at + 2
    elif length == 127:
        length, at = struct.unpack_from("!Q", data, at)[0], at + 8
    return at, at + length


def ws_marked_at(data: bytes | bytearray, offset: int, start: int) -> bool:
    """True if `data` holds, at `offset`, a whole event that ws_marked_event()
    wrote at stream position `start`."""
    if len(data) < offset + 10 or data[offset] != 0x80 | WS_TEXT:
        return False
    at, stop = ws_frame_span(data, offset)
    try:
        event = json.loads(data[at:stop])
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("at") == start + stop - offset


def ws_scrubbed(payload: bytes, line_id: int) -> bytes:
    """An event's JSON `payload` without the words of line `line_id` (its
    text or photo, an edit's text, a reply's quote of it), as long as it
    was: everything else, `at` too, is kept, so the stream's marks hold."""
    event = json.loads(payload)
    if event.get("id") == line_id:
        for words in ("text", "url", "width", "height"):
            event.pop(words, None)
    reply = event.get("reply")
    if isinstance(reply, dict) and reply.get("id") == line_id:
        reply.pop("text", None)
    body = event_json(event)
    return body[:-1] + b" " * (len(payload) - len(body)) + b"}"


def resume_request(payload: bytes) -> tuple[str, str, int] | None:
    """(seat, secret, seen) of a page's request for its seat back: a binary
    message holding {"resume": "SEAT.SECRET", "seen": POSITION}; None if it is not one."""
    try:
        request = page_json(payload)
        seat, secret = request["resume"].split(".")
        seen = request["seen"]
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):   # nested too deep
        return None
    if not (isinstance(seen, int) and seen >= 0 and seat.isascii() and seat.isdigit() and secret):
        return None
    return seat, secret, seen


@functools.lru_cache(maxsize=4)
def piece_key(mask: bytes) -> int:
    """A whole piece's mask as one number: a photo's frames come in many pieces with one mask."""
    return int.from_bytes(mask * (UNMASK_PIECE // 4), "little")


def ws_unmask(payload, mask: bytes) -> bytes:
    n = len(payload)
    if n > UNMASK_PIECE:   # a photo: a piece at a time, not four big numbers at once
        return b"".join(ws_unmask(payload[i:i + UNMASK_PIECE], mask) for i in range(0, n, UNMASK_PIECE))
    key = piece_key(bytes(mask)) if n == UNMASK_PIECE else int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


class FrameReader:
    """A client's bytes in, its messages and control frames out (RFC 6455 §5).

    Holds at most one frame and one message of `max_message` bytes.  A longer
    message of up to `drop_up_to` bytes is skipped unread as it comes and said
    once, at its start, as (opcode, None); anything bigger, unmasked, reserved
    or out of order raises WsError with the RFC's code.  Text is checked with
    one incremental UTF-8 decoder per message, as its bytes come: bad UTF-8
    raises (1007) as soon as it is in, without waiting for the end of its frame
    or of its message.  One binary message may be announced (announce()) with
    an Upload of its own: its frames' payloads are unmasked into it as they
    come, never held here, and it comes out as (WS_ANNOUNCED, upload) once
    whole, or as soon as a frame's header says it is longer than announced
    (upload.over: the rest is skipped unread).  Announced with None, or with
    an upload released meanwhile, it is skipped unread and unsaid.
    """

    __slots__ = ("max_message", "drop_up_to", "buf", "parts", "size", "opcode", "text", "checked",
                 "announced", "photo", "streaming", "mask", "fin", "skip", "dropping")

    def __init__(self, max_message: int, drop_up_to: int = 0):
        self.max_message = max_message
        self.drop_up_to = max(max_message, drop_up_to)   # past max_message, skipped up to this
        self.buf = bytearray()
        self.parts: list[bytes] = []   # the fragments of a message so far
        self.size = 0
        self.opcode = 0                # of the message being fragmented; 0: none
        self.text = None               # the UTF-8 check of a text message coming in pieces
        self.checked = -1              # of the data frame under way: bytes checked; -1: none yet
        self.announced = False         # the next binary message is announced: photo's
        self.photo: Upload | None = None
        self.streaming = 0             # bytes of a photo's frame still to come into it
        self.mask = b""                # that frame's mask, turned to where it goes on
        self.fin = 0                   # that frame ends its message
        self.skip = 0                  # bytes of a frame still to be dropped unread
        self.dropping = False          # the message under way is dropped, fragments and all

    def announce(self, photo: Upload | None) -> None:
        """The next binary message is `photo`'s bytes (None: skip it unread, unsaid);
        an upload announced before is released."""
        self.release()
        self.announced, self.photo = True, photo

    def release(self) -> None:
        """The announced upload, if any, gives its buffer back (its connection ends)."""
        if self.photo is not None:
            self.photo.release()
            self.photo = None

    def feed(self, data: bytes) -> list[tuple[int, bytes | None]]:
        """(opcode, payload) of each whole message or control frame in `data`;
        (opcode, None) for a message too long to keep."""
        return list(self.messages(data))

    def messages(self, data: bytes):
        """feed(), one at a time: the next frame is read only once the caller
        is done with this one (a text may announce a binary message)."""
        self.buf += data
        while (frame := self._frame()) is not None:
            yield from frame

    def _frame(self) -> list[tuple[int, bytes | None]] | None:
        buf = self.buf
        if self.skip:
            dropped = min(self.skip, len(buf))
            del buf[:dropped]
            self.skip -= dropped
            if self.skip:
                return None
        if self.streaming:
            return self._stream()
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
        if first & 0x70:
            raise WsError(WS_PROTOCOL_ERROR, "reserved bits set")
        if opcode not in (0x0, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG):
            raise WsError(WS_PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if not second & 0x80:
            raise WsError(WS_PROTOCOL_ERROR, "client frames must be masked")
        at = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, at = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if length >> 63:   # RFC 6455 §5.2: its most significant bit MUST be 0
                raise WsError(WS_PROTOCOL_ERROR, "a 64-bit length with its top bit set")
        end = at + 4 + length
        if opcode >= 0x8:
            if not fin or length > 125:
                raise WsError(WS_PROTOCOL_ERROR, "control frames are short and whole")
        else:
            if self.checked < 0:   # a data frame whose head is in: it starts or goes on a message
                self._start_frame(opcode)
            if self.opcode == WS_BINARY and self.announced:   # a photo: into its upload
                return self._photo_frame(fin, length, at, end)
            if self.size + length > self.drop_up_to:
                raise WsError(WS_TOO_BIG, f"a message over {self.drop_up_to} bytes")
            if self.dropping or self.size + length > self.max_message:
                return self._drop(fin, length, end)
            if self.opcode == WS_TEXT and at + 4 <= len(buf) < end:   # a frame coming in pieces
                self._check_text(buf, at, len(buf))
        if len(buf) < end:
            return None
        payload = ws_unmask(buf[at + 4:end], buf[at:at + 4])
        del buf[:end]
        if opcode >= 0x8:
            return [(opcode, payload)]
        if self.opcode == WS_TEXT:   # what was not checked as it came: a whole frame, all of it
            self._decode(payload[self.checked:], bool(fin))
        self.checked = -1
        return self._fragment(fin, payload)

    def _start_frame(self, opcode: int) -> None:
        if (opcode == 0) != bool(self.opcode):
            raise WsError(WS_PROTOCOL_ERROR, "fragments out of order")
        if opcode:
            self.opcode = opcode
            self.text = None
        self.checked = 0

    def _check_text(self, buf: bytearray, at: int, stop: int) -> None:
        """Check the text of the frame under way (its mask at buf[at:]) up to buf[stop]."""
        k, mask = self.checked % 4, buf[at:at + 4]
        self._decode(ws_unmask(buf[at + 4 + self.checked:stop], mask[k:] + mask[:k]), False)
        self.checked = stop - at - 4

    def _decode(self, text: bytes, last: bool) -> None:
        """Feed the message's UTF-8 check; bad UTF-8 closes with 1007."""
        try:
            if self.text is None and last:   # a whole message in one frame: checked in one go
                text.decode()
            else:
                self.text = self.text or UTF8_CHECK()
                self.text.decode(text, last)
        except UnicodeDecodeError:
            raise WsError(WS_BAD_DATA, "text that is not UTF-8") from None

    def _fragment(self, fin: int, payload: bytes) -> list[tuple[int, bytes]]:
        self.parts.append(payload)
        self.size += len(payload)
        if not fin:
            return []
        message, opcode = b"".join(self.parts), self.opcode
        self.parts, self.size, self.opcode, self.text = [], 0, 0, None
        return [(opcode, message)]

    def _drop(self, fin: int, length: int, frame_size: int) -> list[tuple[int, None]]:
        """Skip this data frame unread, and the rest of its message; the message is
        said once, at its start."""
        said = [] if self.dropping else [(self.opcode, None)]
        self.parts, self.size = [], 0 if fin else self.size + length
        self.text, self.checked, self.dropping, self.skip = None, -1, not fin, frame_size
        if fin:
            self.opcode = 0
        return said

    # -- the announced binary message: a photo, into its upload as it comes --------
    def _photo_frame(self, fin: int, length: int, at: int, end: int) -> list | None:
        """A frame of the photo: its payload goes into the upload as it comes, or the
        frame is skipped unread (the photo refused, released, or longer than announced)."""
        photo = self.photo
        taken = photo is not None and photo.buffer is not None and not self.dropping
        if taken and self.size + length > photo.size:
            photo.over = True
        if not taken or photo.over:
            self.skip, self.dropping, self.checked = end, not fin, -1
            if fin:
                self._photo_done()
            return [(WS_ANNOUNCED, photo)] if taken else []
        if len(self.buf) < at + 4:   # its mask is not in yet
            return None
        self.mask, self.streaming, self.fin = bytes(self.buf[at:at + 4]), length, fin
        self.size += length
        del self.buf[:at + 4]
        return self._stream()

    def _stream(self) -> list | None:
        """What came of the photo's frame, unmasked into its upload; the photo once whole."""
        buf, photo = self.buf, self.photo
        if photo is None or photo.buffer is None:   # released meanwhile: the rest skipped, unsaid
            self.skip, self.streaming, self.dropping, self.checked = self.streaming, 0, not self.fin, -1
            if self.fin:
                self._photo_done()
            return []
        n = min(self.streaming, len(buf))
        if n:
            photo.take(ws_unmask(buf[:n], self.mask))
            del buf[:n]
            self.mask = self.mask[n % 4:] + self.mask[:n % 4]
            self.streaming -= n
        if self.streaming:
            return None
        self.checked = -1
        if not self.fin:
            return []
        self._photo_done()
        return [(WS_ANNOUNCED, photo)]

    def _photo_done(self) -> None:
        """The announced message is over: the next binary message is not announced."""
        self.opcode, self.size, self.dropping, self.announced, self.photo = 0, 0, False, False, None


def ws_close_is_leave(code: int) -> bool:
    """What a page's close frame with `code` (no code: 1000) means: the member
    leaves only when it asked to, with 1000 (the page's own goodbye, or being
    closed for good).  Any other code (1001: the browser froze the page, put
    it in its back/forward cache or dropped it; an error) is like a
    connection lost: the member is away and keeps its seat (--web-grace).
    docs/PROTOCOL.md, "Coming back", says the same."""
    return code == WS_NORMAL


def ws_close_code(payload: bytes) -> int:
    """The code to answer a client's close frame with (RFC 6455 §5.5.1, §7.4)."""
    if not payload:
        return WS_NORMAL
    if len(payload) == 1:
        raise WsError(WS_PROTOCOL_ERROR, "a close payload has a 2-byte code")
    code = struct.unpack_from("!H", payload)[0]
    if not (code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011)
            or 3000 <= code <= 4999):
        raise WsError(WS_PROTOCOL_ERROR, "invalid close code")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WsError(WS_BAD_DATA, "close reason is not UTF-8") from None
    return code


# -- the web page's HTTP ------------------------------------------------------

MAX_REQUEST = 8192   # request line and headers
HTTP_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


def parse_request(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, path and headers (lower-case names) of an HTTP/1.1 request
    head; ValueError if it is not one."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x request line")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError("malformed header")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], headers


def http_head(status: str, length: int, content_type: str = "text/plain; charset=utf-8",
              headers: tuple[tuple[str, str], ...] = (), cache: str = "no-store") -> bytes:
    """A response's status line and headers, for a body of `length` bytes sent after them."""
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}",
             f"Content-Length: {length}", "Connection: close", f"Cache-Control: {cache}",
             "X-Content-Type-Options: nosniff", "Referrer-Policy: no-referrer",
             *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def host_port(host: str, port: int) -> str:
    """host:port as people write it ([v6]:port for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_name(host: str) -> str:
    """A Host header without its port: `[::1]:5050` -> `::1`, `a.example:5050` -> `a.example`."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if ":" in host else host


def page_link(host: str, port: int, tls: bool) -> str:
    """The chat page's address, as a friend types or taps it."""
    return f"{'https' if tls else 'http'}://{host_port(host, port)}/"


class ChatPage:
    """The chat page as it is served: its bytes, and headers that allow only
    its own inline code (by hash) and its own socket."""

    def __init__(self, html: str):
        self.body = html.encode()
        self.csp = (f"default-src 'none'; script-src {self._inline_hash(html, 'script')}; "
                    f"style-src {self._inline_hash(html, 'style')}; img-src 'self' data:; "
                    f"base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
                    f"connect-src 'self' ")

    @staticmethod
    def _inline_hash(html: str, tag: str) -> str:
        """The CSP source for the page's one inline <script> or <style>."""
        body = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S).group(1)
        return f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"

    def headers(self, host: str) -> tuple[tuple[str, str], ...]:
        """For the page as asked for at `host` (its Host header).  A CSP source cannot name
        an IPv6 address ([2a0f::1]:5051): there 'self' alone allows its socket (CSP 3)."""
        own = "" if host.startswith("[") else f"ws://{host} wss://{host}"
        return (("Content-Security-Policy", (self.csp + own).rstrip()),)


# -- photos a page shares: only pictures whose own bytes say so, only what decoders need --

MAX_PHOTO = 8 << 20      # bytes in one photo (the page sends 0.5 to 1.5 MB)
MAX_PHOTO_SIDE = 2048    # pixels on its long side: the page shrinks it to this
# A picture's pieces (segments, chunks) are each a step of Python, so there are few of them;
# the image data between them is walked at C speed (re, slices), never a step per byte.
HEAD_PIECES = 64         # before the image data (a camera's JPEG has 10 to 25)
MAX_PIECES = 4096        # in all: a progressive JPEG's scans, a PNG's IDATs, an animation's frames
MAX_ICC = 1 << 20        # bytes in a colour profile
PHOTO_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
# The text before a photo's bytes: NUL first, so that no line a member types is taken for it.
PHOTO_ANNOUNCED = re.compile(rb"\x00photo ([1-9][0-9]{0,9})")
NOT_SHARED = "your photo was not shared: {}"
NOT_A_PICTURE = "it is not a JPEG, PNG or WebP picture"
DAMAGED = "the picture is damaged or cut short"
TOO_MANY_PIECES = "it is made of more pieces than a picture needs"
TWO_PICTURES = "it holds more than one picture"
UNSHOWN_JPEG = "it is a kind of JPEG that browsers do not show"
TOO_BIG = f"it is larger than {MAX_PHOTO >> 20} MiB"
TOO_WIDE = f"it is larger than {MAX_PHOTO_SIDE} pixels on its long side"
ALBUM_TOO_SMALL = "the room keeps only {} MiB of photos"
LONGER_THAN_ANNOUNCED = "it is longer than the {} bytes announced"
ANNOUNCED_AGAIN = "another photo was announced before its bytes came"
ROOM_BUSY = "the room is taking in other photos just now; try again in a moment"
TOO_SLOW = "it came in slower than {:g} KiB a second"
SHARING_OFF = "photo sharing is off in this room"
SHARING_TOO_FAST = "you are sharing photos too fast; wait a few seconds"
PHOTO_GONE = "This photo is no longer kept."   # a photo line in the history, once the album let it go
# JPEG: the frame headers (SOFn) browsers show: baseline, extended and progressive (Huffman).
JPEG_FRAMES = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}
JPEG_SHOWN = {0xC0, 0xC1, 0xC2}
JPEG_MARKER = re.compile(rb"\xff+")   # a marker, after any fill bytes
# Where a scan's entropy-coded data ends: FF 00 is a data byte, FF D0-D7 a restart, FF FF fill.
JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
JFIF_APP0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"   # 1.01, 1:1, no thumbnail
ICC_TAG = b"ICC_PROFILE\x00"   # APP2 chunks of a colour profile
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG: the critical chunks, and the ancillary ones that say how its colours look.
PNG_KEPT = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
            b"pHYs"}
PNG_SIZES = {b"IHDR": 13, b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9}
WEBP_STILL = {b"ALPH", b"VP8 ", b"VP8L"}   # a still image's chunks, or an animation frame's
WEBP_ICC, WEBP_ALPHA, WEBP_ANIMATED = 0x20, 0x10, 0x02   # VP8X's flags that stay true
# A colour profile is kept (colour matters: phones take photos in Display P3, which shown
# as sRGB look dull), but its header's date, platform, device maker, model and attributes,
# creator and ID are blanked, and every tag that is not colour data is emptied (descriptions,
# copyright, device names): what is left says how colours look, not when or with what.
ICC_BLANKED = ((4, 8), (24, 36), (40, 44), (48, 64), (80, 100))
ICC_COLOUR = {b"curv", b"para", b"XYZ ", b"sf32", b"mft1", b"mft2", b"mAB ", b"mBA ", b"mpet",
              b"chrm", b"clro", b"sig ", b"meas", b"view"}


class PhotoRefused(ValueError):
    """Bytes that are not a photo the room shares; the message says why, for its sender."""


class Upload:
    """An announced binary message (a photo) as it comes in: its bytes, unmasked as
    they come, in one buffer of the size announced, an anonymous memory map, whose
    pages go back to the system when it is released (a heap may keep freed blocks).
    `released(upload)` is called once, when it is."""

    __slots__ = ("size", "buffer", "filled", "paced", "over", "released")

    def __init__(self, size: int, released: Callable[[Upload], None] = lambda upload: None):
        self.size, self.released = size, released
        self.buffer: mmap.mmap | None = mmap.mmap(-1, size)
        self.filled = 0      # bytes in
        self.paced = 0       # bytes in when its pace was last looked at
        self.over = False    # its frames said it is longer than announced

    def take(self, data: bytes) -> None:
        self.buffer[self.filled:self.filled + len(data)] = data
        self.filled += len(data)

    def view(self) -> memoryview:
        return memoryview(self.buffer)[:self.filled]

    def release(self) -> None:
        if self.buffer is None:
            return
        buffer, self.buffer = self.buffer, None
        try:
            buffer.close()
        except BufferError:   # a view of it is still held: unmapped when the last one goes
            pass
        self.released(self)


def mapped(parts: list) -> mmap.mmap:
    """`parts` joined in a memory map of their own, given back to the system once dropped."""
    joined = mmap.mmap(-1, sum(len(part) for part in parts))
    for part in parts:
        joined.write(part)
    return joined


def photo_announcement(text: bytes) -> int | None:
    """The size a page announces with `NUL photo BYTES` before a photo's binary message."""
    announced = PHOTO_ANNOUNCED.fullmatch(text)
    return int(announced.group(1)) if announced else None


def photo_size(width: int, height: int) -> tuple[int, int]:
    """A frame header's size, if the room shows it: read before any image data, as decoders do."""
    if not (width and height):
        raise PhotoRefused(DAMAGED)
    if max(width, height) > MAX_PHOTO_SIDE:
        raise PhotoRefused(TOO_WIDE)
    return width, height


def counted(pieces: int, in_image: bool) -> int:
    """One more piece of a picture (`in_image`: its image data has begun); refused past the bounds."""
    if pieces >= MAX_PIECES or pieces >= HEAD_PIECES and not in_image:
        raise PhotoRefused(TOO_MANY_PIECES)
    return pieces + 1


def icc_clean(profile) -> bytes | None:
    """A colour profile with only its colours left (ICC_BLANKED, ICC_COLOUR); None if it
    is not one (it is then left out)."""
    profile = bytes(profile)
    size = len(profile)
    if not 132 <= size <= MAX_ICC or int.from_bytes(profile[:4], "big") != size \
            or profile[36:40] != b"acsp":
        return None
    tags = int.from_bytes(profile[128:132], "big")
    if tags > 100 or 132 + 12 * tags > size:
        return None
    clean = bytearray(profile)
    for start, stop in ICC_BLANKED:
        clean[start:stop] = bytes(stop - start)
    for n in range(tags):
        offset, length = struct.unpack_from("!II", profile, 136 + 12 * n)
        if length < 8 or offset + length > size:
            return None
        if profile[offset:offset + 4] not in ICC_COLOUR:
            clean[offset + 8:offset + length] = bytes(length - 8)
    return bytes(clean)


def jpeg_segment(marker: int, body) -> bytes:
    return b"\xff" + bytes((marker,)) + struct.pack("!H", len(body) + 2) + bytes(body)


def jpeg_scan_end(data, pos: int) -> int:
    """Where the entropy-coded data starting at `pos` ends: at the next marker,
    found at C speed."""
    found = JPEG_SCAN_END.search(data, pos)
    if found is None:
        raise PhotoRefused(DAMAGED)
    return found.start()


def jpeg_frame(body) -> tuple[tuple[int, int], dict[int, int]]:
    """A frame header's (SOF) size, and its components' quantization tables; every byte
    of it is a field, checked here."""
    if len(body) < 6:
        raise PhotoRefused(DAMAGED)
    height, width, count = struct.unpack_from("!HHB", body, 1)
    size = photo_size(width, height)
    tables = {body[6 + 3 * n]: body[8 + 3 * n] for n in range(count)} if len(body) == 6 + 3 * count \
        else {}
    if not 1 <= len(tables) == count <= 4 or max(tables.values()) > 3:
        raise PhotoRefused(DAMAGED)
    return size, tables


def jpeg_tables(body, huffman: bool) -> dict:
    """The tables a DHT (huffman) or DQT segment defines, by what names them ((class, id),
    or id); what does not read as a table is left out."""
    tables, at = {}, 0
    for _ in range(8 if huffman else 4):   # more would only redefine these
        if at >= len(body):
            break
        head = body[at]
        if huffman:
            end = at + 17 + (sum(body[at + 1:at + 17]) if at + 17 <= len(body) else len(body))
        else:
            end = at + 1 + 64 * (1 + (head >> 4))
        if head >> 4 > 1 or head & 15 > 3 or end > len(body) or huffman and end - at > 17 + 256:
            break
        tables[(head >> 4, head & 15) if huffman else head & 15] = bytes(body[at:end])
        at = end
    return tables


class JpegRebuild:
    """A JPEG rebuilt, as its segments are read, from what a decoder needs and nothing
    else: a minimal JFIF APP0 of our own (where it had one, for its colours' sake), its
    colour profile (icc_clean), the Adobe APP14's colour transform, the frame header
    (exactly one, before any scan), each scan's header and data, and before each scan
    the quantization and Huffman tables and restart interval it uses that the output
    does not have yet.  Everything else goes (APPn, COM, tables no scan uses, bytes
    hidden in a segment past its fields, anything after the end)."""

    def __init__(self, data):
        self.data = data
        self.parts: list = [b"\xff\xd8"]
        self.marker = 0                  # the frame header's
        self.frame = b""                 # its segment
        self.size = (0, 0)
        self.components: dict[int, int] = {}   # component -> its quantization table
        self.jfif, self.adobe = False, -1        # what its APP0 and APP14 said
        self.profile: dict[int, tuple] = {}      # ICC chunk number -> (chunks, bytes)
        self.huffman: dict = {}          # the tables defined so far
        self.quant: dict = {}
        self.restart = b""
        self.sent: dict = {}             # what the output has defined: table (or "DRI") -> bytes
        self.latched: set[int] = set()   # components a scan has used (their quantization is fixed)
        self.scans = 0

    def rebuilt(self) -> tuple[list, int, int]:
        data, pos, pieces = self.data, 2, 0
        while True:
            pieces = counted(pieces, self.scans > 0)
            fill = JPEG_MARKER.match(data, pos)
            if fill is None or fill.end() >= len(data):
                raise PhotoRefused(DAMAGED)
            marker, pos = data[fill.end()], fill.end() + 1
            if marker == 0xD9 and self.scans:
                self.parts.append(b"\xff\xd9")
                return self.parts, *self.size
            if marker in (0x00, 0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:
                raise PhotoRefused(DAMAGED)
            end = pos + struct.unpack_from("!H", data, pos)[0]
            if end > len(data) or end < pos + 2:
                raise PhotoRefused(DAMAGED)
            if marker == 0xDA:
                end = self._scan(data[pos + 2:end], end)
            else:
                self._segment(marker, data[pos + 2:end])
            pos = end

    def _segment(self, marker: int, body) -> None:
        if marker in JPEG_FRAMES:
            if self.marker:
                raise PhotoRefused(TWO_PICTURES)
            if marker not in JPEG_SHOWN:
                raise PhotoRefused(UNSHOWN_JPEG)
            self.size, self.components = jpeg_frame(body)
            self.marker, self.frame = marker, jpeg_segment(marker, body)
        elif marker in (0xC4, 0xDB):
            (self.huffman if marker == 0xC4 else self.quant).update(jpeg_tables(body, marker == 0xC4))
        elif marker == 0xDD and len(body) >= 2:
            self.restart = bytes(body[:2])
        elif self.scans:   # what an APPn says after the first scan, no decoder reads
            return
        elif marker == 0xE0 and body[:5] == b"JFIF\x00":
            self.jfif = True
        elif marker == 0xEE and len(body) >= 12 and body[:5] == b"Adobe" and body[11] <= 2:
            self.adobe = body[11]
        elif marker == 0xE2 and len(body) > 14 and body[:12] == ICC_TAG:
            self.profile[body[12]] = (body[13], body[14:])

    def _scan(self, body, end: int) -> int:
        """A scan: what it needs first, its header, its data; where its data ends."""
        count = body[0] if body else 0
        if not self.marker or not 1 <= count <= 4 or len(body) != 4 + 2 * count:
            raise PhotoRefused(DAMAGED)
        used = [(body[1 + 2 * n], body[2 + 2 * n]) for n in range(count)]
        if any(c not in self.components for c, _ in used):
            raise PhotoRefused(DAMAGED)
        first_dc = body[1 + 2 * count] == 0 and body[3 + 2 * count] >> 4 == 0
        progressive = self.marker == 0xC2   # a DC scan uses DC tables (its first only), an AC scan AC ones
        huffman = [(0, t >> 4) for _, t in used if first_dc or not progressive]
        huffman += [(1, t & 15) for _, t in used if body[1 + 2 * count] or not progressive]
        new = {c for c, _ in used} - self.latched
        self.latched |= new
        if not self.scans:
            self.parts += self._heads()
            new = self.components   # the usual way: all of them before the frame header
        tables = self._unsent(sorted({self.components[c] for c in new}), self.quant)
        self.parts += [jpeg_segment(0xDB, tables)] if tables else []
        self.parts += [] if self.scans else [self.frame]
        tables = self._unsent(huffman, self.huffman)
        self.parts += [jpeg_segment(0xC4, tables)] if tables else []
        if self.restart and self._unsent(["DRI"], {"DRI": self.restart}):
            self.parts.append(jpeg_segment(0xDD, self.restart))
        stop = jpeg_scan_end(self.data, end)
        self.parts += [jpeg_segment(0xDA, body), self.data[end:stop]]
        self.scans += 1
        return stop

    def _unsent(self, wanted: list, tables: dict) -> bytes:
        """The tables among `wanted` that the output lacks or has otherwise (sent now)."""
        new = []
        for key in dict.fromkeys(wanted):
            if key in tables and self.sent.get(key) != tables[key]:
                self.sent[key] = tables[key]
                new.append(tables[key])
        return b"".join(new)

    def _heads(self) -> list:
        """Before the first scan: our own JFIF APP0, the colour profile and the Adobe
        colour transform, where the picture had them."""
        heads = [JFIF_APP0] if self.jfif else []
        chunks = self.profile
        if chunks and sorted(chunks) == list(range(1, len(chunks) + 1)) \
                and {count for count, _ in chunks.values()} == {len(chunks)} \
                and sum(len(chunk) for _, chunk in chunks.values()) <= MAX_ICC:
            profile = icc_clean(b"".join(chunks[n][1] for n in sorted(chunks)))
            step = 0xFFFF - 2 - len(ICC_TAG) - 2
            count = -(-len(profile or b"") // step)
            heads += [jpeg_segment(0xE2, ICC_TAG + bytes((n + 1, count)) + profile[n * step:(n + 1) * step])
                      for n in range(count)]
        if self.adobe >= 0:
            heads.append(jpeg_segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00" + bytes((self.adobe,))))
        return heads


def jpeg_parts(data) -> tuple[list, int, int]:
    """A JPEG's parts as JpegRebuild makes them, and its width and height."""
    return JpegRebuild(data).rebuilt()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + kind + payload + struct.pack("!I", zlib.crc32(kind + payload))


def png_fits(kind: bytes, length: int, colour: int) -> bool:
    """Whether a kept chunk has the length its kind and the picture's colour type allow."""
    if kind == b"IDAT":
        return True
    if kind == b"PLTE":
        return length % 3 == 0 and 0 < length <= 768 and colour in (2, 3, 6)
    if kind == b"tRNS":
        return 0 < length <= 256 if colour == 3 else length == {0: 2, 2: 6}.get(colour)
    if kind == b"sBIT":
        return length == {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}[colour]
    return length == PNG_SIZES.get(kind)


def png_profile(payload) -> bytes | None:
    """An iCCP chunk with its profile cleaned (icc_clean) and a plain name; None to leave it out."""
    named = bytes(payload[:81]).find(b"\x00")
    if named < 1 or len(payload) < named + 2 or payload[named + 1] != 0:
        return None
    unzip = zlib.decompressobj()
    try:
        profile = unzip.decompress(payload[named + 2:], MAX_ICC + 1)
    except zlib.error:
        return None
    profile = icc_clean(profile) if unzip.eof else None
    return png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(profile)) if profile else None


def png_parts(data) -> tuple[list, int, int]:
    """A PNG's kept chunks (PNG_KEPT, each with the length it allows; its profile cleaned),
    and its width and height; PhotoRefused unless each chunk is whole with its CRC,
    exactly one IHDR first, image data, IEND last (nothing after it is kept)."""
    parts, pos, pieces, size, colour, image = [PNG_SIGNATURE], len(PNG_SIGNATURE), 0, None, 0, False
    profiled = False   # one colour profile at most
    while True:
        pieces = counted(pieces, image)
        if pos + 12 > len(data):
            raise PhotoRefused(DAMAGED)
        length, kind = struct.unpack_from("!I4s", data, pos)
        end = pos + 12 + length
        if end > len(data) or zlib.crc32(data[pos + 4:end - 4]) != struct.unpack_from("!I", data, end - 4)[0]:
            raise PhotoRefused(DAMAGED)
        if (kind == b"IHDR") != (size is None) or size is None and length != 13:
            raise PhotoRefused(DAMAGED if size is None else TWO_PICTURES)
        if kind == b"IHDR":
            size = photo_size(*struct.unpack_from("!II", data, pos + 8))
            colour = data[pos + 17]
            if colour not in (0, 2, 3, 4, 6):
                raise PhotoRefused(DAMAGED)
        image = image or kind == b"IDAT"
        if kind == b"IEND":
            if not image:
                raise PhotoRefused(DAMAGED)
            return parts + [png_chunk(b"IEND", b"")], *size
        if kind == b"iCCP" and not profiled:
            parts.append(png_profile(data[pos + 8:end - 4]) or b"")
            profiled = True
        elif kind in PNG_KEPT - {b"iCCP"} and png_fits(kind, length, colour):
            parts.append(data[pos:end])
        pos = end


def webp_chunk(kind: bytes, *payload) -> list:
    """A RIFF chunk: its kind, its size, its payload (in parts) and the pad to an even size."""
    size = sum(len(part) for part in payload)
    return [kind + struct.pack("<I", size), *payload] + ([b"\x00"] if size & 1 else [])


def webp_chunks(data, start: int, stop: int, pieces: list[int],
                image: bool = False) -> list[tuple[bytes, int, int]]:
    """(kind, payload start, payload stop) of the chunks from `start` to `stop`, counted in
    pieces[0] (`image`: the image data has begun); PhotoRefused unless each is whole."""
    chunks = []
    while start < stop:
        pieces[0] = counted(pieces[0], image)
        if start + 8 > stop:
            raise PhotoRefused(DAMAGED)
        kind, length = struct.unpack_from("<4sI", data, start)
        if start + 8 + length > stop:
            raise PhotoRefused(DAMAGED)
        chunks.append((kind, start + 8, start + 8 + length))
        image = image or kind in WEBP_STILL or kind == b"ANMF"
        start += 8 + length + (length & 1)
    return chunks


def webp_size(kind: bytes, body) -> tuple[int, int] | None:
    """The width and height a VP8 (a key frame) or VP8L bitstream's header gives, or None."""
    if kind == b"VP8 " and len(body) >= 10 and not body[0] & 1 and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", body, 6)
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and len(body) >= 5 and body[0] == 0x2F and not body[4] >> 5:
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    return None


def webp_still(data, chunks: list, canvas: tuple[int, int]) -> list:
    """A still image's chunks (VP8 with its ALPH before it, or VP8L): exactly one
    bitstream, as large as the canvas it fills."""
    images = [(kind, a, b) for kind, a, b in chunks if kind != b"ALPH"]
    if len(images) != 1:
        raise PhotoRefused(TWO_PICTURES if images else DAMAGED)
    kind, a, b = images[0]
    if webp_size(kind, data[a:b]) != canvas:
        raise PhotoRefused(DAMAGED)
    alpha = chunks[:1] if kind == b"VP8 " and chunks[0][0] == b"ALPH" else []
    return [part for kind, a, b in alpha + images for part in webp_chunk(kind, data[a:b])]


def webp_frame(data, a: int, b: int, canvas: tuple[int, int], pieces: list[int]) -> list:
    """An ANMF chunk with its frame cleaned as a still image is, within the canvas."""
    if b - a < 16:
        raise PhotoRefused(DAMAGED)
    x, y, width, height = (int.from_bytes(data[a + n:a + n + 3], "little") for n in range(0, 12, 3))
    if 2 * x + width + 1 > canvas[0] or 2 * y + height + 1 > canvas[1]:
        raise PhotoRefused(DAMAGED)
    frame = [chunk for chunk in webp_chunks(data, a + 16, b, pieces, True) if chunk[0] in WEBP_STILL]
    head = bytes(data[a:a + 15]) + bytes((data[a + 15] & 0x03,))   # blending and disposal
    return webp_chunk(b"ANMF", head, *webp_still(data, frame, (width + 1, height + 1)))


def webp_parts(data) -> tuple[list, int, int]:
    """A WebP's kept chunks (VP8X with the flags of what is left, a cleaned ICCP, ANIM,
    ANMF frames cleaned alike, ALPH, VP8, VP8L: one bitstream, consistent with the
    canvas), the RIFF size to match, and its width and height."""
    end = 8 + struct.unpack_from("<I", data, 4)[0]
    if end > len(data) or end < 20:
        raise PhotoRefused(DAMAGED)
    pieces = [0]
    chunks = webp_chunks(data, 12, end, pieces)
    kind, a, b = chunks[0]
    if kind != b"VP8X":
        canvas = webp_size(kind, data[a:b]) or (0, 0)
        photo_size(*canvas)
        kept = webp_still(data, [c for c in chunks if c[0] in (b"VP8 ", b"VP8L")], canvas)
    elif b - a < 10:
        raise PhotoRefused(DAMAGED)
    else:
        canvas = photo_size(*(int.from_bytes(data[a + n:a + n + 3], "little") + 1 for n in (4, 7)))
        animated, profile, kept = data[a] & WEBP_ANIMATED, None, []
        for kind, a2, b2 in chunks[1:]:
            if kind == b"ICCP" and profile is None and not kept:
                profile = icc_clean(data[a2:b2]) or b""
                kept += webp_chunk(kind, profile) if profile else []
            elif kind == b"ANIM" and animated and b2 - a2 == 6:
                kept += webp_chunk(kind, data[a2:b2])
            elif kind == b"ANMF" and animated:
                kept += webp_frame(data, a2, b2, canvas, pieces)
        if not animated:
            kept += webp_still(data, [c for c in chunks if c[0] in WEBP_STILL], canvas)
        elif not any(c[0] == b"ANMF" for c in chunks):
            raise PhotoRefused(DAMAGED)
        flags = data[a] & (WEBP_ALPHA | WEBP_ANIMATED) | (WEBP_ICC if profile else 0)
        kept = webp_chunk(b"VP8X", bytes((flags, 0, 0, 0)) + bytes(data[a + 4:a + 10])) + kept
    return [b"RIFF" + struct.pack("<I", 4 + sum(len(part) for part in kept)) + b"WEBP", *kept], *canvas


def photo_parts(data) -> tuple[str, list, int, int]:
    """(extension, the parts of the picture without its metadata, width, height) of a
    JPEG, PNG or WebP that says so in its own bytes (a bytes-like object) and measures
    at most MAX_PHOTO_SIDE; PhotoRefused, saying why, for anything else.  Its cost is
    bounded by its pieces (HEAD_PIECES, MAX_PIECES), and its image data is only sliced."""
    data = memoryview(data)   # sliced without copies
    if data[:3] == b"\xff\xd8\xff":
        ext, parts_of = "jpg", jpeg_parts
    elif data[:8] == PNG_SIGNATURE:
        ext, parts_of = "png", png_parts
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        ext, parts_of = "webp", webp_parts
    else:
        raise PhotoRefused(NOT_A_PICTURE)
    try:
        parts, width, height = parts_of(data)
    except (struct.error, IndexError):
        raise PhotoRefused(DAMAGED) from None
    return ext, parts, width, height


def clean_photo(data) -> tuple[str, bytes, int, int]:
    """photo_parts(), the picture's parts joined."""
    ext, parts, width, height = photo_parts(data)
    return ext, b"".join(parts), width, height


# ---------------------------------------------------------------------------
# 3. The event loop and the transport
# ---------------------------------------------------------------------------

EVENT_READ, EVENT_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
READ_SIZE = 4096    # one read from a member: all it can make the server hold beyond a line
UPLOAD_READ = 1 << 16   # one read from a page sending a photo: it goes into the photo's buffer
WRITE_PIECE = 1 << 16   # kept bytes handed to the kernel at once: a photo goes out a piece a turn
KEEP_MOST = 1 << 16     # kept bytes past which a write is refused: the peer reads nothing it is sent
SELECT_LIMIT = 512  # sockets select() can watch where it is the selector (Windows' FD_SETSIZE)
WOULD_BLOCK = (BlockingIOError,) + (
    (ssl.SSLWantReadError, ssl.SSLWantWriteError) if ssl else ())


def log_fault(doing: str, error: Exception, tally: "Tally | None" = None, now: float = 0.0) -> None:
    """Log an unexpected error for the operator: its type and where it
    happened, not its message, which could quote what a member wrote.  With
    a tally, the same error at the same place again is only counted, and
    summed up by the tally: a bug met again and again cannot flood the log."""
    stack = traceback.extract_tb(error.__traceback__)
    if tally is not None and stack and not tally.first(
            now, f"internal error: {type(error).__name__} in {stack[-1].name} "
                 f"({os.path.basename(stack[-1].filename)} line {stack[-1].lineno})"):
        return
    log.error("internal error while %s: %s\n%s", doing, type(error).__name__,
              "".join(stack.format()).rstrip())


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
    `now` is the time of this turn, read once before its events and again
    before its timers.  An error escaping a handler, timer or call is
    logged (fault(): the same again is summed up) and the loop goes on.
    """

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Timer]] = []   # a heap
        self._seq = itertools.count()
        self.soon: collections.deque = collections.deque()
        self.now = time.monotonic()
        self.running = False
        self.failure_logged = -60.0
        self.faults = Tally()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, EVENT_READ, (self._drain_wake, None))

    def capacity(self) -> int | None:
        """How many sockets the selector can watch at once beside the loop's
        own, if it has a limit: select() watches at most SELECT_LIMIT (Windows
        builds it so); epoll and kqueue have none."""
        if isinstance(self.selector, selectors.SelectSelector):
            return SELECT_LIMIT - 1   # the wake-up socket
        return None

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
        """Turn until stop(): events, then due timers, then calls for the end of the turn."""
        self.running = True
        timers, soon = self.timers, self.soon
        while self.running:
            if soon:
                timeout = 0
            elif timers:
                timeout = max(0.0, timers[0][0] - time.monotonic())
            else:
                timeout = None
            try:
                events = self.selector.select(timeout)
            except (ValueError, OSError) as e:   # e.g. more sockets than select() can watch
                self._selector_failed(e)
                events = ()
            self.now = time.monotonic()
            for key, mask in events:
                handler, obj = key.data
                try:
                    handler(obj, mask)
                except Exception as e:
                    self.fault(f"handling {handler.__name__}", e)
            if timers:
                self.now = time.monotonic()
            while timers and timers[0][0] <= self.now:
                timer = heapq.heappop(timers)[2]
                if not timer.cancelled:
                    self._call(timer.fn, timer.args)
            for _ in range(len(soon)):
                self._call(*soon.popleft())
            if self.faults.seen:
                self.faults.flush(self.now)
        self.faults.flush(time.monotonic(), everything=True)

    def stop(self) -> None:
        """End run() after this turn."""
        self.running = False

    def _selector_failed(self, error: Exception) -> None:
        """Log it (once a minute at most) and wait a moment: the loop goes on."""
        now = time.monotonic()
        if now - self.failure_logged >= 60.0:
            self.failure_logged = now
            log.error("the selector failed (%s: %s); the room goes on",
                      type(error).__name__, error)
        time.sleep(0.05)   # not a busy loop if it fails again at once

    def _call(self, fn: Callable, args: tuple) -> None:
        try:
            fn(*args)
        except Exception as e:
            self.fault(f"running {getattr(fn, '__name__', fn)}", e)

    def fault(self, doing: str, error: Exception) -> None:
        """An unexpected error: logged the first time (log_fault), summed up after."""
        log_fault(doing, error, self.faults, self.now)

    def close(self) -> None:
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()


class Bucket:
    """A token bucket: `rate` tokens a second, at most `burst` saved up.
    Line rates, join slots and connection rates are all one of these."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0.0: now)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1.0

    def book(self, now: float) -> float:
        """Take a token now or in advance: seconds until it is there (later
        bookings queue behind it)."""
        self.wait(now)
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0.0 else -self.tokens / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class Tally:
    """Warnings that repeat, summed up so that a flood cannot rotate the log
    away: the first of a kind is logged at once, the rest as one line with
    a count per `interval`.  What a browser does is counted in tries: the
    connections it opens for one (retries, spares) come in a burst, each
    within TRY_BURST s of the last, and count once."""

    TRY_BURST = 1.0

    def __init__(self, interval: float = 60.0):
        self.interval = interval
        self.seen: dict[str, list] = {}   # warning -> [count since logged, since, last, in tries]

    def add(self, now: float, warning: str, tries: bool = False) -> None:
        if self.first(now, warning, tries):
            log.warning("%s", warning)

    def first(self, now: float, warning: str, tries: bool = False) -> bool:
        """Count `warning`: True if it is the first of its kind (the caller
        logs it now), False if it is only summed up."""
        entry = self.seen.get(warning)
        if entry is None:
            self.seen[warning] = [0, now, now, tries]
            return True
        if not tries or now - entry[2] > self.TRY_BURST:
            entry[0] += 1
        entry[2] = now
        return False

    def flush(self, now: float, everything: bool = False) -> None:
        """Log the sums whose interval is over (called every second), or all
        of them (at the end)."""
        for warning, (count, since, last, tries) in list(self.seen.items()):
            if now - since < self.interval and not everything:
                continue
            if count:
                what = ("try" if count == 1 else "tries") if tries else \
                    ("time" if count == 1 else "times")
                log.warning("%s (%d more %s in %d s)", warning, count, what, round(now - since))
                self.seen[warning] = [0, now, last, tries]
            else:
                del self.seen[warning]


KEEPALIVE_PROBES = 5   # unanswered keepalive probes before the kernel gives up
# Linux gives an accepted socket its listening socket's options: set once, they cost
# a member nothing.  Elsewhere each accepted socket is set too.
OPTIONS_INHERITED = sys.platform.startswith("linux")


def tune_socket(sock: socket.socket, keepalive: float) -> None:
    """A member's socket (or the listening socket its options come from): lines
    go out at once (no Nagle delay), and keep_alive()."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    keep_alive(sock, keepalive)


def keep_alive(sock: socket.socket, idle: float) -> None:
    """Have the kernel find out when a quiet member's machine has vanished:
    probes after `idle` seconds without traffic, KEEPALIVE_PROBES of them
    idle/6 apart; and give up on unacknowledged data after as long (without
    that, a room that talks to the vanished member keeps it for about 15
    minutes of retransmissions).  The probes also keep NAT entries alive.
    0: off.  Options the platform lacks are left alone (macOS names the idle
    time TCP_KEEPALIVE; Windows sets it with an ioctl)."""
    if not idle:
        return
    idle_s, interval = max(1, round(idle)), max(1, round(idle / 6))
    tcp = socket.IPPROTO_TCP
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", interval),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
                        ("TCP_USER_TIMEOUT", (idle_s + KEEPALIVE_PROBES * interval) * 1000)):
        if hasattr(socket, name):
            options.append((tcp, getattr(socket, name), value))
    if not hasattr(socket, "TCP_KEEPIDLE") and hasattr(socket, "TCP_KEEPALIVE"):
        options.append((tcp, socket.TCP_KEEPALIVE, idle_s))
    try:
        for level, option, value in options:
            sock.setsockopt(level, option, value)
        if hasattr(socket, "SIO_KEEPALIVE_VALS"):
            sock.ioctl(socket.SIO_KEEPALIVE_VALS, (1, idle_s * 1000, interval * 1000))
    except OSError:   # a platform that refuses one: the member is served all the same
        pass


class Transport:
    """One connection's socket and everything that touches it (asyncio's
    selector transport is the model): reading on or off, what came in and
    is not taken yet (and how it is framed: WebSocket frames, an over-long
    line being skipped), what was written and the kernel has not taken yet,
    interest in write readiness, the TLS handshake, and the close with its
    last words.  Nothing else calls send() or changes the interest.

    Two ways out: write() keeps what the kernel does not take (a response,
    an App's piece), up to KEEP_MOST bytes beyond one write; send() keeps
    nothing, for a stream that is its own buffer (so a member in the room,
    served from its outlet's stream, is kept one piece at most, and the cap
    bounds those with no seat yet).  While anything waits, `blocked` is
    true; the loop then calls `handler(owner, EVENT_WRITE)` when the socket
    takes more, and flush() sends what was kept.
    """

    __slots__ = ("sock", "loop", "handler", "owner", "inbuf", "frame_reader", "skipping", "out",
                 "reading", "blocked", "events", "closed", "pos", "received", "unread")

    def __init__(self, sock, loop: Loop, handler: Callable | None = None, owner=None):
        self.sock, self.loop, self.handler, self.owner = sock, loop, handler, owner
        self.inbuf = b""        # received and not taken yet (typed ahead, half a line)
        self.frame_reader: FrameReader | None = None   # a web member's frames, once upgraded
        self.skipping = False   # dropping the rest of an over-long line
        self.out = b""          # written and not taken by the kernel yet
        self.reading = handler is not None
        self.blocked = False    # something waits for the kernel to take more
        self.events = 0
        self.closed = False
        self.pos = 0            # how far it has been sent its outlet's stream (the outlet's to write)
        self.received = 0       # bytes read from it: life, for a page too busy sending to pong
        self.unread = b""       # decrypted while its door was chosen (peek), and not read yet
        self._interest()

    def _interest(self) -> None:
        """Make the selector watch for what this transport waits for."""
        if self.closed:
            return
        events = (EVENT_READ if self.reading else 0) | (EVENT_WRITE if self.blocked else 0)
        if events == self.events:
            return
        if not events:
            self.loop.unwatch(self.sock)
        elif not self.events:
            self.loop.watch(self.sock, events, self.handler, self.owner)
        else:
            self.loop.rewatch(self.sock, events, self.handler, self.owner)
        self.events = events

    def hand_over(self, owner) -> None:
        """From now on the events on this socket are `owner`'s."""
        self.owner = owner
        if self.events:
            self.loop.rewatch(self.sock, self.events, self.handler, owner)

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._interest()

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self._interest()

    # -- out --------------------------------------------------------------
    def send(self, data) -> int:
        """The one non-blocking send.  Sends what the kernel takes of `data`
        now and keeps nothing: the bytes taken, or -1 if the connection is
        lost.  Falling short is being blocked until the socket takes more."""
        try:
            n = self.sock.send(data)
        except WOULD_BLOCK:
            n = 0
        except OSError:
            return -1
        if n < len(data) and not self.blocked:
            self.blocked = True
            self._interest()
        return n

    def write(self, data: bytes | memoryview) -> bool:
        """Send `data` after what waits, keeping what the kernel does not
        take (as a view, not a copy: a photo served to many, the page);
        False if the connection is lost, or if over KEEP_MOST bytes wait
        already: a peer that reads none of what it makes the server write
        (pongs to its pings before its name) is closed by the caller."""
        if self.blocked:
            if len(self.out) > KEEP_MOST:
                return False
            if not self.out:
                self.out = memoryview(data)
            else:   # appended in place from now on, not copied whole at each write
                if not isinstance(self.out, bytearray):
                    self.out = bytearray(self.out)
                self.out += data
            return True
        n = self.send(data[:WRITE_PIECE] if len(data) > WRITE_PIECE else data)
        if 0 <= n < len(data):
            self.out = memoryview(data)[n:]
            self._more_next_turn()
        return n >= 0

    def _more_next_turn(self) -> None:
        """Bytes are kept: send them when the socket is writable (the next turn, at the earliest)."""
        if not self.blocked:
            self.blocked = True
            self._interest()

    def flush(self) -> bool:
        """The socket takes more: send what was kept.  Still `blocked` if the
        kernel took only part; False if the connection is lost."""
        self.blocked = False
        if self.out:
            n = self.send(self.out[:WRITE_PIECE])
            if n < 0:
                return False
            if isinstance(self.out, bytearray):
                del self.out[:n]   # from the front of a bytearray: no copy of the rest
            else:   # a view: an empty one would still hold what it viewed
                self.out = self.out[n:] if n < len(self.out) else b""
            if self.out:
                self.blocked = True
        self._interest()
        return True

    # -- in ---------------------------------------------------------------
    def receive(self) -> bytes | None:
        """One read: b"" if nothing is there now, None if the peer closed or
        reset the connection.  TLS may hold decrypted bytes the selector
        cannot see: more_held() says so."""
        if self.unread:
            data, self.unread = self.unread, b""
            self.received += len(data)
            return data
        reader = self.frame_reader
        try:
            data = self.sock.recv(UPLOAD_READ if reader is not None and reader.streaming else READ_SIZE)
        except WOULD_BLOCK:
            return b""
        except OSError:
            return None
        self.received += len(data)
        return data or None

    def peek(self) -> bytes | None:
        """What the peer has sent and nobody has read yet, left for receive():
        b"" if nothing yet, None if the peer closed or reset the connection.
        A plain socket is only peeked at (so a door may still wrap it in
        TLS); a TLS socket cannot be, so what it decrypts is kept (`unread`)."""
        try:
            if ssl is None or not isinstance(self.sock, ssl.SSLSocket):
                return self.sock.recv(READ_SIZE, socket.MSG_PEEK) or None
            data = self.sock.recv(READ_SIZE)
            self.unread += data
            return self.unread or None   # nothing came, and the peer closed
        except WOULD_BLOCK:
            return self.unread
        except OSError:
            return None

    def more_held(self) -> bool:
        return self.reading and not self.closed and self.encrypted and self.sock.pending() > 0

    @property
    def encrypted(self) -> bool:
        return ssl is not None and isinstance(self.sock, ssl.SSLSocket)

    def secure(self, context) -> None:
        """Encrypt with `context` from here on: the server's side of a TLS handshake comes next."""
        self.hold()
        self.sock = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)

    def handshake(self) -> str | None:
        """One step of the TLS handshake: None when done, "" while under way
        (waiting to read or to write), or why it failed."""
        under_way = ""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.reading, self.blocked = True, False
        except ssl.SSLWantWriteError:
            self.reading, self.blocked = False, True
        except (ssl.SSLError, OSError) as e:
            return getattr(e, "reason", None) or e.__class__.__name__
        else:
            self.reading, self.blocked, under_way = True, False, None
        self._interest()
        return under_way

    def hold(self) -> None:
        """Watch nothing for now (a TLS handshake waits its turn)."""
        self.reading = self.blocked = False
        self._interest()

    # -- closing ----------------------------------------------------------
    def close(self, last_words: bytes = b"", at: float = 0.0, drain: bool = True) -> None:
        """Stop watching; then (at `at`, if later) what was kept and the last
        words, best effort, and a clean close.  What the peer sent and was
        not read is read first: closing on unread bytes resets the
        connection, and a reset kills the App's reader."""
        if self.closed:
            return
        if self.events:
            self.loop.unwatch(self.sock)
        self.closed, self.events = True, 0
        if self.frame_reader is not None:   # a photo coming in on it goes, at once
            self.frame_reader.release()
        data, self.out = b"".join((self.out, last_words)), b""
        if at > self.loop.now:
            self.loop.call_at(at, self._close_now, data, drain)
        else:
            self._close_now(data, drain)

    def _close_now(self, data: bytes, drain: bool) -> None:
        try:
            self.sock.setblocking(False)
            if data:
                self.send(data)
            self.sock.shutdown(socket.SHUT_WR)
            for _ in range(16 if drain else 0):
                if not self.sock.recv(READ_SIZE):
                    break
        except (OSError, ValueError):
            pass
        self.sock.close()


# ---------------------------------------------------------------------------
# 4. The room and its outlets
# ---------------------------------------------------------------------------

MAX_NOTES = 16      # lines for one member alone waiting to be sent
LINES_KEPT = 2000   # lines the room keeps by id, to be answered, reacted to, edited, deleted
REACTIONS_KEPT = 20000   # reactions on them, all told: past that the oldest lines go
REACTORS_LISTED = 20     # names a page is given for one reaction on one line; the rest are counted
ENDED_SEATS = 1000  # web seats that ended while away, remembered to tell their pages why
TIMER_SLACK = 0.01  # a member's turn this close is taken now


class Stage(enum.Enum):
    """Where a connection is in its life."""
    OPENING = "opening"         # its first bytes (or none, in time) choose its door: Doorway
    SECURING = "securing"       # TLS handshake
    REQUESTING = "requesting"   # web port: reading the HTTP request
    ANSWERED = "answered"       # web port: an HTTP answer goes out, then the close
    NAMING = "naming"           # asked for its alias
    CHECKING = "checking"       # its room key waits its turn to be checked
    WELCOMING = "welcoming"     # named, waiting for its welcome
    IN_ROOM = "in room"
    AWAY = "away"               # web: its connection lost, its seat held (--web-grace)
    GONE = "gone"


class Kind(enum.Enum):
    """How a member reads: its answer to ALIAS tells (PROTOCOL.md)."""
    LINE = "terminal"   # `alias\n`: reads whole lines, gets everything at once
    APP = "App"         # a bare alias: PrivateChatRoom-App, paced to what it can show
    WEB = "web"         # the chat page, over a WebSocket

    __hash__ = object.__hash__   # each kind is one object: hashed in C, not in Enum's Python


class Member:
    """One connection: who it is, where it is in its life, and its line rate.
    What it is sent, and when, is its outlet's business; its socket is its
    transport's."""

    __slots__ = ("transport", "ip", "group", "stage", "kind", "claimed", "name", "look", "forms",
                 "since", "named_at", "ready_at", "bucket", "resume", "number")

    def __init__(self, ip: str, group: str, now: float, kind: Kind = Kind.LINE):
        self.transport: Transport | None = None
        self.ip, self.group = ip, group   # group: what per-address limits count
        self.stage = Stage.NAMING
        self.kind = kind
        self.claimed = ""        # the alias as the client sent it
        self.name = ""           # the name the room knows
        self.look = ""           # what the name it asked for looks like (name_look)
        self.forms: tuple[str, ...] = ()   # how its own lines may begin (alias_forms)
        self.since = now
        self.named_at = 0.0      # when its alias came
        self.ready_at = 0.0      # when it is (to be) welcomed
        self.bucket: Bucket | None = None   # its line rate, once in
        self.resume: Timer | None = None    # lets it speak again after its rate held it back
        self.number = 0          # once in: its number in this run of the room, on what it says

    def __repr__(self) -> str:
        return f"<Member {self.name or '?'} {self.ip} {self.stage.value}>"


def plain_ip(address: str) -> str:
    """An IPv4-mapped IPv6 address as plain IPv4; others as they are."""
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address.split("%", 1)[0]


def global_ip(ip: str) -> bool:
    """True for an address on the internet (not private, shared, loopback or link-local)."""
    try:
        return ipaddress.ip_address(plain_ip(ip)).is_global
    except ValueError:
        return False


def address_group(ip: str) -> str:
    """What the per-address limits count: an IPv4 address, or an IPv6 /64
    (one home or phone gets a whole /64 to pick addresses from)."""
    if ":" not in ip:
        return ip
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def address_network(group: str) -> str:
    """The network an address group is part of, when a crowd of silent connections
    must make room: an IPv4 /24, an IPv6 /48 (a provider hands a customer a /48 or
    /56: 65,536 /64s, each an address group of its own, cost nothing)."""
    if ":" not in group:
        return group.rpartition(".")[0] + ".0/24"
    return str(ipaddress.ip_network(group.split("/")[0] + "/48", strict=False))


class Stream:
    """What an outlet says, appended once, read by many members each at its
    own position; trimmed once everyone has had it.  A part of it may be for
    some members alone (a private line for one, a photo's link for those who
    reached the room at one address): the others step over it (run)."""

    __slots__ = ("buf", "base", "parts")

    def __init__(self):
        self.buf = bytearray()
        self.base = 0    # stream position of buf[0]
        self.parts: list[tuple[int, int, Collection[Member]]] = []   # (start, stop, for whom), in order

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    @property
    def parted_until(self) -> int:
        """Where the last part for one member alone stops: a reader from
        there on meets none."""
        return self.parts[-1][1] if self.parts else 0

    def between(self, start: int, stop: int) -> bytes:
        return bytes(self.buf[start - self.base:stop - self.base])

    def add_part(self, data: bytes, readers: Collection[Member]) -> None:
        """`data` at the end, for `readers` alone (a set, or one member's tuple)."""
        start = self.end
        self.buf += data
        self.parts.append((start, self.end, readers))

    def run(self, m: Member, pos: int) -> tuple[int, int]:
        """What m reads next from `pos`: (start, stop), past the parts for
        others at `pos` (or around it), up to the next one or the end."""
        parts = self.parts
        if not parts or parts[-1][1] <= pos:
            return pos, self.end
        i = max(0, bisect.bisect_right(parts, (pos, math.inf)) - 1)
        while i < len(parts) and parts[i][0] <= pos:
            if m not in parts[i][2] and parts[i][1] > pos:
                pos = parts[i][1]
            i += 1
        while i < len(parts) and m in parts[i][2]:
            i += 1
        return pos, parts[i][0] if i < len(parts) else self.end

    def trim(self, low: int) -> None:
        if low > self.base:
            del self.buf[:low - self.base]
            self.base = low
            n = bisect.bisect_left(self.parts, (low,))
            if n and self.parts[n - 1][1] > low:   # a reader is inside it still
                n -= 1
            del self.parts[:n]


class Photo:
    """A shared photo: its file name (`TOKEN.EXT`, 128 random bits), its
    bytes without metadata, served to every page from this one copy (in a
    memory map of its own), and its size.  Once the album lets it go, only
    its line's facts are left: its bytes go back to the system."""

    __slots__ = ("file", "body", "content_type", "width", "height")

    def __init__(self, ext: str, body, width: int, height: int):
        self.file = f"{secrets.token_hex(16)}.{ext}"
        self.body: memoryview | None = memoryview(body)
        self.content_type, self.width, self.height = PHOTO_TYPES[ext], width, height

    @property
    def url(self) -> str:
        return f"/p/{self.file}"

    @property
    def kept(self) -> bool:
        return self.body is not None


class Album:
    """The room's photos, in memory only (nothing touches the disk), up to
    `capacity` bytes: when it is full the oldest go."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.photos: dict[str, Photo] = {}   # file name -> photo, oldest first
        self.size = 0

    def add(self, photo: Photo) -> bool:
        """Keep `photo`, making room; False if it is larger than the album."""
        if len(photo.body) > self.capacity:
            return False
        while self.size + len(photo.body) > self.capacity:
            self._let_go(next(iter(self.photos)))
        self.photos[photo.file] = photo
        self.size += len(photo.body)
        return True

    def get(self, file: str) -> Photo | None:
        return self.photos.get(file)

    def _let_go(self, file: str) -> None:
        photo = self.photos.pop(file)
        self.size -= len(photo.body)
        photo.body = None   # its line stays (history), its bytes go

    def remove(self, photo: Photo) -> None:
        """Its sender took it back: its address is nothing from now on, its bytes go."""
        if self.photos.get(photo.file) is photo:
            self._let_go(photo.file)

    def clear(self) -> None:
        for file in list(self.photos):
            self._let_go(file)


class Said:
    """A line said in the room (a chat line, a private line, a photo), as
    the room keeps it: its id, who said it (name, and the member's number),
    when, its words or photo, for a private line its receiver, the line it
    answers (`re`: id, name, and that line's first words: None for a photo,
    "" once deleted), who reacted with what (None: nobody yet), whether it
    was edited or deleted (then its words and photo are gone), and where in
    the web stream the frames that hold its words begin (`framed`) and those
    that hold its quote of the line it answers (`quoting`: the web outlet's
    to write).  Made for every line said: its making is kept cheap."""

    __slots__ = ("id", "name", "author", "at", "text", "photo", "to", "to_number", "re",
                 "reactions", "edited", "deleted", "framed", "quoting")

    def __init__(self, m: Member, at: float, text: str, photo: Photo | None = None,
                 to: Member | None = None, answers: Said | None = None):
        self.id = 0
        self.name = m.name
        self.author = m.number
        self.at = at
        self.text = text
        self.photo = photo
        self.to = "" if to is None else to.name
        self.to_number = 0 if to is None else to.number
        self.re = None if answers is None else answers.quoted()
        self.reactions: dict[str, dict[int, str]] | None = None   # emoji -> member number -> name
        self.edited = False
        self.deleted = False
        self.framed: list[int] | None = None
        self.quoting: list[int] | None = None

    def quoted(self) -> tuple[int, str, str | None, bool]:
        """This line as a reply quotes it: (id, name, first words, edited)."""
        if self.deleted:
            return self.id, self.name, "", False
        return self.id, self.name, None if self.photo else first_words(self.text), self.edited

    def heard_by(self, m: Member) -> bool:
        """m may see this line: everyone, or the two of a private line."""
        return not self.to_number or m.number in (self.author, self.to_number)

    def reaction_count(self) -> int:
        return sum(map(len, self.reactions.values())) if self.reactions else 0


class Transcript:
    """The room's last lines by id, in memory only, for what members do to
    them: ids count from 1 and are never reused in a run of the room; at
    most LINES_KEPT lines and REACTIONS_KEPT reactions on them are kept
    (the oldest lines go first, so the ids kept run from `oldest` on).  So
    it holds at most LINES_KEPT times --max-line bytes of words (8 MiB at
    4096) and about 2 MiB of reactions."""

    def __init__(self):
        self.lines: dict[int, Said] = {}
        self.next_id = self.oldest = 1
        self.reactions = 0

    def keep(self, said: Said) -> Said:
        said.id = line_id = self.next_id
        self.next_id = line_id + 1
        self.lines[line_id] = said
        while line_id - self.oldest >= LINES_KEPT:   # a dict by consecutive ids: the oldest
            self._forget_oldest()                    # goes by its key, never by a scan
        return said

    def _forget_oldest(self) -> None:
        said = self.lines.pop(self.oldest)
        self.oldest += 1
        if said.reactions:
            self.reactions -= said.reaction_count()

    def get(self, line_id: int) -> Said | None:
        return self.lines.get(line_id)

    def react(self, said: Said, m: Member, emoji: str) -> bool:
        """m's reaction on `said`, or taken back if m had it (False)."""
        if said.reactions is None:
            said.reactions = {}
        who = said.reactions.setdefault(emoji, {})
        if who.pop(m.number, None) is not None:
            self.reactions -= 1
            if not who:
                del said.reactions[emoji]
            return False
        who[m.number] = m.name
        self.reactions += 1
        while self.reactions > REACTIONS_KEPT and self.oldest < said.id:
            self._forget_oldest()
        return True

    def changed(self, said: Said) -> list[Said]:
        """`said` was edited or deleted: the replies that quote it (they are
        newer, so kept while it is) quote it so; they are returned."""
        if said.deleted and said.reactions:
            self.reactions -= said.reaction_count()
            said.reactions = None
        quoted, answering = said.quoted(), []
        for line in self.lines.values():
            if line.re is not None and line.re[0] == said.id:
                line.re = quoted
                answering.append(line)
        return answering


class Outlet:
    """The room's events, encoded and delivered for one kind of reader.

    The room calls the event methods (chat, photo, joined, left, count, stop,
    reacted, edited, deleted, typing, and note, who and private for one
    member); an outlet appends what its readers
    should get to its own stream, once, and flush() sends it at the end of
    the loop turn.  This base class is the shared stream that terminals
    and web members read: each member is only a position in it, and gets
    the rest in one send per turn (the hot path).  Answers for one member
    alone wait at their place in the stream (`notes`); private lines are
    parts of the stream for one member alone, which the others step over.

    Two calls back up: `drop(m, reason, farewell="")`, m is to leave (it
    cannot be sent to any more), and `lose(m, reason)`, m's connection is
    gone without a goodbye (its outlet may hold its seat: hold()).  One
    question up, set by the server: `page_at(m)`, the page's address as m
    reached the room (`http://HOST:PORT/`), for links to photos.
    """

    def __init__(self, loop: Loop, settings: Settings, drop: Callable[..., None],
                 lose: Callable[[Member, str], None]):
        self.loop, self.settings, self.drop, self.lose = loop, settings, drop, lose
        self.readers: dict[Member, Transport] = {}   # member -> its transport (.pos: its place)
        self.notes: dict[Member, collections.deque] = {}   # member -> (position, bytes) for it alone
        self.stream = Stream()
        self.flush_due = False
        self.page_at: Callable[[Member], str] = lambda m: "/"

    # -- members ----------------------------------------------------------
    def greet(self, m: Member) -> bool:
        """m's connection is ready: ask for its alias; False if that could not be sent."""
        m.stage = Stage.NAMING
        return m.transport.write(ALIAS_PROMPT)

    def ready_at(self, named_at: float) -> float:
        """When a member named at `named_at` can be welcomed: at once."""
        return named_at

    def add(self, m: Member, present: int) -> None:
        """m reads from here on; `present` members are in the room with it."""
        m.transport.pos = self.stream.end
        self.readers[m] = m.transport

    def remove(self, m: Member) -> None:
        self.readers.pop(m, None)
        self.notes.pop(m, None)

    def hold(self, m: Member) -> bool:
        """m's connection is lost: keep its seat (True), or let it leave."""
        return False

    @property
    def listening(self) -> bool:
        """Anyone reads here: only then is what happens encoded."""
        return bool(self.readers)

    def pending(self, m: Member) -> bool:
        """Something is still to be sent to m."""
        t = self.readers.get(m)
        return t is not None and self.stream.run(m, t.pos)[0] < self.stream.end \
            or m in self.notes or bool(m.transport.out)

    def welcome(self, m: Member) -> None:
        """What m is told first, once in (web members: their name)."""

    def farewell_at(self, m: Member) -> float:
        """When m may be sent its last words: now."""
        return 0.0

    def last_words(self, m: Member, farewell: str, code: int | None, was_in: bool) -> bytes:
        """What m is sent before the close: the farewell as it is."""
        return farewell.encode()

    # -- saying -----------------------------------------------------------
    def _say(self, data: bytes) -> None:
        if self.listening:
            self.stream.buf += data
            self._flush_soon()

    def _say_to(self, readers: Collection[Member], data: bytes) -> None:
        """`data` for `readers` alone, in the stream: kept and paced like the rest."""
        self.stream.add_part(data, readers)
        self._flush_soon()

    def _tell(self, data: bytes, only: tuple[Member, ...]) -> None:
        """`data` for every reader, or in the stream for `only` alone."""
        if only:
            self._say_to(only, data)
        else:
            self._say(data)

    def typing(self, name: str) -> None:
        """`name` is typing: only pages are told."""

    def _note(self, m: Member, data: bytes, at: int | None = None) -> None:
        """`data` for m alone, at stream position `at`: after what it has been sent so far."""
        notes = self.notes.get(m)
        if notes is None:
            notes = self.notes[m] = collections.deque()
        elif len(notes) >= MAX_NOTES:   # it is not reading them
            return
        notes.append((self.stream.end if at is None else at, data))
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self.flush)

    # -- sending ----------------------------------------------------------
    def flush(self) -> None:
        """The hot path: one send of the rest of the stream to each reader."""
        self.flush_due = False
        stream, readers, notes = self.stream, self.readers, self.notes
        end, base, parted = stream.end, stream.base, stream.parted_until
        limit = self.settings.max_backlog
        low, slow, failed = end, [], []
        with memoryview(stream.buf) as view:
            for m, t in readers.items():
                pos = t.pos
                if not t.blocked and (pos < end or notes and m in notes):
                    if pos < parted or notes and m in notes:
                        pos = self._send_noted(m, pos, view)
                    else:
                        n = t.send(view[pos - base:])
                        pos = pos + n if n >= 0 else -1
                    if pos < 0:
                        failed.append(m)
                        continue
                    t.pos = pos
                if t.blocked and end - pos > limit:   # the kernel refuses more, too
                    slow.append(m)
                elif pos < low:
                    low = pos
        for m in failed:
            self.lose(m, "connection lost while sending")
        for m in slow:
            self.drop(m, f"not reading: over {limit} bytes waiting")
        self._trim(low)

    def _trim(self, low: int) -> None:
        """Forget what every reader has been sent (it is before `low`)."""
        self.stream.trim(low)

    def _send_noted(self, m: Member, pos: int, view: memoryview) -> int:
        """The careful path: m's notes at their places in the stream, past the
        parts for others; its new position, or -1 if the connection is lost."""
        t, notes, base = m.transport, self.notes.get(m), self.stream.base
        while not t.blocked:
            pos, stop = self.stream.run(m, pos)
            if notes and notes[0][0] <= pos:
                at, data = notes[0]
                n = t.send(data)
                if n < 0:
                    return -1
                if n < len(data):
                    notes[0] = (at, data[n:])
                else:
                    notes.popleft()
            elif pos < stop:
                if notes:
                    stop = min(stop, notes[0][0])
                n = t.send(view[pos - base:stop - base])
                if n < 0:
                    return -1
                pos += n
            else:
                break
        if notes is not None and not notes:
            del self.notes[m]
        return pos

    def writable(self, m: Member) -> None:
        """m's socket takes more again: go on where it stopped."""
        t = self.readers.get(m)
        if t is None or t.blocked:
            return
        with memoryview(self.stream.buf) as view:
            pos = self._send_noted(m, t.pos, view)
        if pos < 0:
            self.lose(m, "connection lost while sending")
        else:
            t.pos = pos


def said_notice(said: Said) -> str:
    """A line as line readers read it: `anna: hi`, `[private] anna to bob: hi`,
    a reply (reply_notice), or `anna deleted a line`; an edited one's new
    words with EDITED_MARK after them."""
    if said.deleted:
        return f"{PRIVATE_TAG} " * bool(said.to) + delete_notice(said.name)
    text = said.text + EDITED_MARK * said.edited
    if said.re is not None:
        speaker = f"{PRIVATE_TAG} {said.name} to {said.to}" if said.to else said.name
        return reply_notice(speaker, answered_text(*said.re[1:]), text)
    return private_notice(said.name, said.to, text) if said.to else chat_notice(said.name, text)


class LineOutlet(Outlet):
    """Terminals: the room's lines, as they are said; what is done to a line
    (a reaction, an edit, a deletion), as one more line."""

    kind = Kind.LINE

    def chat(self, said: Said) -> None:
        """A line said in public: a reply, or (the hot path) a plain line."""
        self._say((said_notice(said) if said.re else chat_notice(said.name, said.text)).encode())

    def joined(self, names: list[str], present: int) -> None:
        self._say(joined_notice(names).encode())

    def left(self, name: str, present: int) -> None:
        self._say(left_notice(name).encode())

    def count(self, n: int) -> None:
        self._say(count_notice(n).encode())

    def stop(self) -> None:
        self._say(STOP_NOTICE.encode())

    def note(self, m: Member, text: str, words: str = "") -> None:
        self._note(m, text.encode())

    def photo(self, said: Said) -> None:
        """A line with a link to it for each reader, at the address it reached the room
        at: one part of the stream per link, for the readers it is for (most often one
        for all), paced and kept like a private line."""
        links: dict[str, set[Member]] = {}
        for m in self.readers:
            links.setdefault(self._link(m, said.photo), set()).add(m)
        for link, readers in links.items():
            self._say_to(readers, photo_notice(said.name, link).encode())

    def _link(self, m: Member, photo: Photo) -> str:
        return self.page_at(m) + photo.url[1:]

    def joined_note(self, m: Member) -> None:
        """m's own join line, when the room saw its join folded with others."""
        self._note(m, joined_notice([m.name]).encode())

    def who(self, m: Member, names: list[str]) -> None:
        self._note(m, who_notice(names).encode())

    def private(self, m: Member, said: Said) -> None:
        """A private line, for m (its sender or its receiver) alone."""
        self._say_to((m,), said_notice(said).encode())

    def reacted(self, said: Said, name: str, emoji: str, on: bool, only: tuple[Member, ...] = ()) -> None:
        """`name` reacted to `said` with `emoji` (or took it back): for all, or `only`."""
        answered = answered_text(*said.quoted()[1:])
        self._about(said, reaction_notice(name, emoji, answered, on), only)

    def edited(self, said: Said, answering: list[Said], only: tuple[Member, ...] = ()) -> None:
        """`said` has new words (`answering`: the replies that quote it)."""
        self._about(said, edit_notice(said.name, said.text), only)

    def deleted(self, said: Said, answering: list[Said], only: tuple[Member, ...] = ()) -> None:
        self._about(said, delete_notice(said.name), only)

    def _about(self, said: Said, text: str, only: tuple[Member, ...]) -> None:
        """A line about `said`: private like it, if it is."""
        self._tell((f"{PRIVATE_TAG} " * bool(said.to) + text).encode(), only)

    def history(self, m: Member, lines: list[Said]) -> None:
        """What was said before m came (--history), before its own join line: each line as it reads now."""
        self._note(m, "".join(
            photo_notice(said.name, self._link(m, said.photo) if said.photo.kept else PHOTO_GONE)
            if said.photo else said_notice(said) for said in lines).encode())


class WebSeat:
    """A web member's claim to its place in the room (--web-grace): its
    number and the secret its page proves itself with (the token is
    `NUMBER.SECRET`; the secret is replaced at each return), the timer that
    ends the seat while its connection is lost, and, for a while after, why
    it ended (GRACE_RAN_OUT, MISSED_TOO_MUCH), for a page that comes back
    too late to hear it.  Seat numbers begin at a random point in each run
    of the room: a page holding a token from before a restart is told so."""

    __slots__ = ("member", "number", "secret", "timer", "ended")

    def __init__(self, member: Member, number: str):
        self.member, self.number = member, number
        self.secret = secrets.token_hex(16)   # 128 random bits
        self.timer: Timer | None = None
        self.ended = ""

    @property
    def token(self) -> str:
        return f"{self.number}.{self.secret}"


class WebOutlet(Outlet):
    """The chat page's members: each event is a JSON message in a
    WebSocket frame (docs/PROTOCOL.md, "The web page").

    Each event is marked with its place in the stream (`at`).  A member
    whose connection is lost without a goodbye keeps its seat for
    web_grace seconds (hold): it is away, only a position in the stream,
    and the stream keeps the last max_backlog bytes, what a page may not
    have shown yet.  Its page comes back with its token and the mark of
    the last event it has, and gets everything after it (back).
    """

    kind = Kind.WEB
    WHO_LISTED = 1000   # names in an answer to /who; the rest are counted

    def __init__(self, loop: Loop, settings: Settings, drop: Callable[..., None],
                 lose: Callable[[Member, str], None]):
        super().__init__(loop, settings, drop, lose)
        self.unanswered: dict[Member, int] = {}    # pinged, no pong yet: -> bytes it had sent then
        self.ping_timer: Timer | None = None
        self.away: dict[Member, int] = {}          # its connection lost: the position it was sent to
        self.seats: dict[str, WebSeat] = {}        # number -> seat held
        self.ended: dict[str, WebSeat] = {}        # number -> seat ended while away, oldest first
        self.seat_of: dict[Member, WebSeat] = {}
        self.first_number = 1 + secrets.randbelow(10 ** 9) * 10 ** 9   # this run's first seat
        self.next_number = self.first_number

    def greet(self, m: Member) -> bool:
        """m's connection is ready: the web door reads its HTTP request first."""
        m.stage = Stage.REQUESTING
        return True

    # -- events -----------------------------------------------------------
    @property
    def listening(self) -> bool:
        return bool(self.readers or self.away)   # those away may come back for it

    def _event(self, kind: str, /, only: tuple[Member, ...] = (), **fields) -> int:
        """An event for every web member, those away too, or for `only` alone;
        where it begins in the stream (-1: nobody reads it)."""
        start = self.stream.end
        if only:
            self._say_to(only, ws_marked_event(start, kind, **fields))
        elif self.listening:
            self.stream.buf += ws_marked_event(start, kind, **fields)
            self._flush_soon()
        else:
            return -1
        return start

    def chat(self, said: Said) -> None:
        self._framed(said, self._event("chat", **self._line_fields(said)), quote=True)

    def photo(self, said: Said) -> None:
        self._framed(said, self._event("photo", **self._line_fields(said)))

    def private(self, m: Member, said: Said) -> None:
        """A private line for m alone, marked with its place like every event,
        kept like them for a page that is away."""
        self._framed(said, self._event("private", only=(m,), **self._line_fields(said)), quote=True)

    @staticmethod
    def _photo_fields(photo: Photo) -> dict:
        """A photo as the page finds it: its address on the page's own server, and its size."""
        return {"url": photo.url, "width": photo.width, "height": photo.height}

    def _line_fields(self, said: Said, reactions: bool = False) -> dict:
        """A line as a page shows it: its id, who said it, its words or photo
        (none once deleted), edited, the line it answers; and its reactions."""
        fields: dict = {"id": said.id}
        if said.to:
            fields.update({"kind": "private", "from": said.name, "to": said.to})
        else:
            fields["name"] = said.name
        if said.deleted:
            fields["deleted"] = True
        elif said.photo:   # one the album has let go since: no longer kept
            fields.update(self._photo_fields(said.photo) if said.photo.kept else {"gone": True})
        else:
            fields["text"] = said.text
            if said.edited:
                fields["edited"] = True
        if said.re is not None:
            line_id, name, words, edited = said.re
            fields["reply"] = {"id": line_id, "name": name, **(
                {"text": words} if words else {"photo": True} if words is None else {"deleted": True}),
                **({"edited": True} if edited else {})}
        if reactions and said.reactions:
            fields["reactions"] = {emoji: self._reactors(who) for emoji, who in said.reactions.items()}
        return fields

    @staticmethod
    def _reactors(who: dict[int, str]) -> dict:
        return {"n": len(who), "names": list(itertools.islice(who.values(), REACTORS_LISTED))}

    def reacted(self, said: Said, name: str, emoji: str, on: bool, only: tuple[Member, ...] = ()) -> None:
        """A reaction to `said` (or taken back), with who has it on that line now."""
        self._event("react", only=only, id=said.id, emoji=emoji, name=name, on=on,
                    **self._reactors((said.reactions or {}).get(emoji, {})))

    def edited(self, said: Said, answering: list[Said], only: tuple[Member, ...] = ()) -> None:
        """The new words of `said`: they alone are kept from now on."""
        self._forget_words(said, answering)
        self._framed(said, self._event("edit", only=only, id=said.id, name=said.name, text=said.text))

    def deleted(self, said: Said, answering: list[Said], only: tuple[Member, ...] = ()) -> None:
        self._forget_words(said, answering)
        self._event("delete", only=only, id=said.id, name=said.name)

    def typing(self, name: str) -> None:
        self._event("typing", name=name)

    # -- what the stream keeps of a line: its words go when it is edited or deleted
    @staticmethod
    def _framed(said: Said, start: int, quote: bool = False) -> None:
        """The frame at `start` (-1: none was written) holds words of `said`
        (with `quote`, and of a reply its quote of the line it answers)."""
        if start >= 0:
            if said.framed is None:
                said.framed = [start]
            else:
                said.framed.append(start)
            if quote and said.re is not None:
                said.quoting = [start] if said.quoting is None else said.quoting + [start]

    def _forget_words(self, said: Said, answering: list[Said]) -> None:
        """The words of `said` leave every frame the stream still keeps (what
        a page that is away will be given): its own, and the replies' quotes
        of it.  Each frame loses them once: the frames are forgotten then."""
        self._scrub(said.framed, said.id)
        said.framed = None
        for reply in answering:
            self._scrub(reply.quoting, said.id)
            reply.quoting = None

    def _scrub(self, frames: list[int] | None, line_id: int) -> None:
        """The words of line `line_id` leave the `frames` that the stream
        still keeps: each is rewritten as long as it was, without them
        (ws_scrubbed).  A reader in the middle of one is given the rest of
        it first, as it was."""
        stream = self.stream
        for start in frames or ():
            if start < stream.base:
                continue
            begin, stop = ws_frame_span(stream.buf, start - stream.base)
            end = stream.base + stop
            for t in self.readers.values():
                if start < t.pos < end:
                    t.write(stream.between(t.pos, end))
                    t.pos = end
            stream.buf[begin:stop] = ws_scrubbed(bytes(stream.buf[begin:stop]), line_id)

    def unshared(self, m: Member, text: str) -> None:
        """m's photo was not shared: why."""
        self._note(m, ws_event("unshared", text=text))

    def joined(self, names: list[str], present: int) -> None:
        self._event("join", names=names[:3], others=max(0, len(names) - 3),
                    text=joined_notice(names).rstrip("\n"))

    def left(self, name: str, present: int) -> None:
        self._event("leave", name=name, text=left_notice(name).rstrip("\n"))

    def count(self, n: int) -> None:
        self._event("count", n=n, text=count_notice(n).rstrip("\n"))

    def stop(self) -> None:
        self._say(ws_event("stop", text=STOPPED_TEXT) + ws_close(WS_GOING_AWAY, STOPPED_TEXT))

    def note(self, m: Member, text: str, words: str = "") -> None:
        """A line for m alone; `words`: what m sent that did not go, back for its text box."""
        self._note(m, ws_event("note", text=text.rstrip("\n"), **({"words": words} if words else {})))

    def joined_note(self, m: Member) -> None:
        self._note(m, ws_event("join", names=[m.name], others=0,
                               text=joined_notice([m.name]).rstrip("\n")))

    def who(self, m: Member, names: list[str]) -> None:
        self._note(m, ws_event("who", names=names[:self.WHO_LISTED],
                               others=max(0, len(names) - self.WHO_LISTED)))

    def history(self, m: Member, lines: list[Said]) -> None:
        """What was said before m came, each line as the other pages show it now."""
        self._note(m, ws_event("history", lines=[self._line_fields(said, reactions=True)
                                                 for said in lines]))

    def welcome(self, m: Member) -> None:
        """The page learns its name in the room, and the token that brings it back."""
        fields = {}
        if self.settings.web_grace:
            seat = WebSeat(m, str(self.next_number))
            self.next_number += 1
            self.seats[seat.number] = self.seat_of[m] = seat
            fields = {"token": seat.token, "grace": self.settings.web_grace}
        self._note(m, ws_event("welcome", name=m.name, at=self.stream.end, **fields))

    def pong(self, m: Member, payload: bytes) -> None:
        self._note(m, ws_frame(payload, WS_PONG))

    # -- seats: a page whose connection is lost comes back ------------------
    def hold(self, m: Member) -> bool:
        """Keep m's seat through its lost connection for web_grace seconds:
        it stays in the room, away, a position in the stream."""
        seat = self.seat_of.get(m)
        if seat is None:
            return False
        self.away[m] = self.readers.pop(m).pos
        self.notes.pop(m, None)
        self.unanswered.pop(m, None)
        seat.timer = self.loop.call_later(self.settings.web_grace, self._grace_over, seat)
        return True

    def _grace_over(self, seat: WebSeat) -> None:
        seat.ended = GRACE_RAN_OUT
        self.drop(seat.member, f"away for more than {self.settings.web_grace:g} s")

    def claim(self, number: str, secret: str, seen: int,
              find: Callable[[str], Member | None]) -> tuple[Member | None, str]:
        """The member whose seat a page asks back, if the secret is its seat's
        and what it missed after `seen` is still here; else None and why not
        (`find(name)`: who in the room has that name now)."""
        if not (len(number) < 20 and self.first_number <= int(number) < self.next_number):
            return None, ROOM_RESTARTED
        seat = self.seats.get(number) or self.ended.get(number)
        if seat is None or not hmac.compare_digest(secret.encode(), seat.secret.encode()):
            return None, SEAT_GONE
        if seat.ended == GRACE_RAN_OUT:
            why = NAME_TAKEN if find(seat.member.name) else GRACE_RAN_OUT
            return None, why.format(self.settings.web_grace)
        if seat.ended:
            return None, seat.ended
        stream = self.stream
        if not (stream.base <= seen <= stream.end and stream.end - seen <= self.settings.max_backlog
                and (seen == stream.end or ws_marked_at(stream.buf, seen - stream.base, seen))):
            seat.ended = MISSED_TOO_MUCH
            self.drop(seat.member, "missed too much while away")
            return None, MISSED_TOO_MUCH
        return seat.member, ""

    def back(self, m: Member, seen: int) -> None:
        """m's page is back on a new connection: a new token, then everything
        said after `seen`, and no history (it was there)."""
        seat = self.seat_of[m]
        if seat.timer is not None:
            seat.timer.cancel()
            seat.timer = None
        seat.secret = secrets.token_hex(16)
        self.away.pop(m, None)
        self.notes.pop(m, None)
        self.unanswered.pop(m, None)
        m.transport.pos = seen
        self.readers[m] = m.transport
        self._note(m, ws_event("welcome", name=m.name, at=seen, token=seat.token,
                               grace=self.settings.web_grace, back=True,
                               missed=seen < self.stream.end), at=seen)
        self._keep_pinging()

    def _trim(self, low: int) -> None:
        """While seats are held, keep the last max_backlog bytes (what a page
        may not have shown when its connection was lost), and end the seats
        of those away that missed more."""
        if self.settings.web_grace:
            keep = self.stream.end - self.settings.max_backlog
            if self.away and min(self.away.values()) < keep:
                for m in [m for m, pos in self.away.items() if pos < keep]:
                    self.seat_of[m].ended = MISSED_TOO_MUCH
                    self.drop(m, f"missed over {self.settings.max_backlog} bytes while away")
            low = min(low, keep)
        self.stream.trim(low)

    # -- pings: a page whose connection is gone leaves ---------------------
    def add(self, m: Member, present: int) -> None:
        super().add(m, present)
        self._keep_pinging()

    def _keep_pinging(self) -> None:
        if self.ping_timer is None and self.settings.web_ping:
            self.ping_timer = self.loop.call_later(self.settings.web_ping, self._ping)

    def remove(self, m: Member) -> None:
        super().remove(m)
        self.unanswered.pop(m, None)
        self.away.pop(m, None)
        seat = self.seat_of.pop(m, None)
        if seat is None:
            return
        if seat.timer is not None:
            seat.timer.cancel()
        del self.seats[seat.number]
        if seat.ended:   # its page, back later, hears why
            self.ended[seat.number] = seat
            if len(self.ended) > ENDED_SEATS:
                del self.ended[next(iter(self.ended))]

    def ponged(self, m: Member) -> None:
        self.unanswered.pop(m, None)

    def _ping(self) -> None:
        """Every web_ping: a ping to each web member; one that has not answered
        the last ping by now is gone, unless bytes came from it at photo_pace or
        faster since (a long frame coming in, which no pong can interrupt), or
        the server is not reading from it (its lines wait for the line rate)."""
        least = self.settings.photo_pace * self.settings.web_ping
        gone = [m for m, heard in self.unanswered.items()   # (a page not read now, its lines
                if m in self.readers and m.transport.reading      # waiting their turn, has its
                and m.transport.received - heard < least]         # pong unread: it is not gone)
        for m in gone:
            self.lose(m, f"no answer to a ping within {self.settings.web_ping:g} s")
        for m in self.readers:
            self.unanswered[m] = m.transport.received
            self._note(m, WS_PING_FRAME)
        self.ping_timer = (self.loop.call_later(self.settings.web_ping, self._ping)
                           if self.readers else None)

    def last_words(self, m: Member, farewell: str, code: int | None, was_in: bool) -> bytes:
        """A note (or why it was refused) and the close frame; nothing once a
        frame may be half sent."""
        if m.transport.blocked or code is None or m.stage in (Stage.REQUESTING, Stage.SECURING):
            return b""
        said = ws_event("note" if was_in else "refused", text=farewell.strip()) if farewell else b""
        return said + ws_close(code, farewell.strip())


class AppSeat:
    """Where one PrivateChatRoom-App is in the App stream, and its pace."""

    __slots__ = ("pos", "free_at", "quiet_until", "counted", "timer", "new_line", "idle")

    def __init__(self, pos: int, counted: int):
        self.pos = pos
        self.free_at = 0.0        # when the App will have shown all it was sent
        self.quiet_until = 0.0    # the last count must be read alone: nothing else before this
        self.counted = counted    # the count serial this App has been shown
        self.timer: Timer | None = None   # the call back at free_at
        self.new_line = False     # the next piece goes on with a run of digits: break the line
        self.idle = True          # it had nothing to show: news may come before its count


class AppOutlet(LineOutlet):
    """PrivateChatRoom-App members, each paced to what its App can show.

    The App reads 1024 bytes, decodes them strictly, puts a read that begins
    with a digit or ends with " online..." into its count box and types any
    other read at `app_char_time` a character before it reads again
    (PROTOCOL.md, "The App's reader, exactly").  So each App gets one piece
    at a time, when it is predicted free, and each piece is its own read:
    - the count, alone, made when it is sent (never stale): right after the
      piece it was typing, or, for an App that was waiting for news, after
      the lines it counts if they fit in one piece;
    - else up to 1024 bytes of lines that no read can split in a character
      or mistake for a count (app_cut).
    Its first lines come once its window is up (welcome_delay after its
    alias); after a count it is sent nothing, its last words included,
    until it has read the count alone; when the server stops it gets the
    stop lines as soon as that allows, and nothing else that waited.
    """

    kind = Kind.APP

    def __init__(self, loop: Loop, settings: Settings, drop: Callable[..., None],
                 lose: Callable[[Member, str], None]):
        super().__init__(loop, settings, drop, lose)
        self.readers: dict[Member, AppSeat] = {}   # member -> its seat
        self.idle: set[Member] = set()    # free and sent everything: served on news
        self.marks: list[int] = []        # stream positions where a count was announced
        self.serial = 0                   # bumped with each count
        self.present = 0                  # members in the room, for the count made at send time

    # -- members ----------------------------------------------------------
    def ready_at(self, named_at: float) -> float:
        """Its window is up welcome_delay after its alias (Apps named within
        one join_window are welcomed together)."""
        window = self.settings.join_window
        ready = named_at + self.settings.welcome_delay
        return math.ceil(ready / window) * window if window else ready

    def add(self, m: Member, present: int) -> None:
        self.present = present
        self.readers[m] = AppSeat(self.stream.end, self.serial)   # owed the count that includes it
        self.idle.add(m)
        self._flush_soon()

    def remove(self, m: Member) -> None:
        seat = self.readers.get(m)
        super().remove(m)
        self.idle.discard(m)
        if seat is not None and seat.timer is not None:
            seat.timer.cancel()

    def farewell_at(self, m: Member) -> float:
        """Not before its window is up, nor while its last count is read alone."""
        seat = self.readers.get(m)
        return seat.quiet_until if seat is not None else self.ready_at(m.named_at)

    # -- events -----------------------------------------------------------
    def joined(self, names: list[str], present: int) -> None:
        self.present = present
        super().joined(names, present)

    def left(self, name: str, present: int) -> None:
        self.present = present
        super().left(name, present)

    def count(self, n: int) -> None:
        """No count line: each App is owed one, made when it is sent."""
        if self.readers:
            self.present = n
            self.serial += 1
            self.marks.append(self.stream.end)
            self._flush_soon()

    def stop(self) -> None:
        """The stop lines, as soon as each App's last count has been read alone."""
        start = self.stream.end
        super().stop()
        self.notes.clear()
        for m, seat in self.readers.items():
            if seat.timer is not None:
                seat.timer.cancel()
            seat.pos, seat.counted, seat.free_at = start, self.serial, seat.quiet_until
            self.idle.add(m)

    # -- sending ----------------------------------------------------------
    def flush(self) -> None:
        """Serve the Apps that were waiting for news; drop those too far behind."""
        self.flush_due = False
        if self.idle:
            idle, self.idle = self.idle, set()
            for m in idle:
                self._serve(m)
        end, limit = self.stream.end, self.settings.max_backlog
        low, behind = end, []
        for m, seat in self.readers.items():
            if end - seat.pos > limit:
                behind.append(m)
            elif seat.pos < low:
                low = seat.pos
        for m in behind:
            self.drop(m, f"App not keeping up: over {limit} bytes waiting", FELL_BEHIND)
        self.stream.trim(low)
        cut = bisect.bisect_right(self.marks, self.stream.base) - 1
        if cut > 0:
            del self.marks[:cut]

    def writable(self, m: Member) -> None:
        """Its kernel took the rest of the piece: the App types it now."""
        seat = self.readers.get(m)
        if seat is not None and not m.transport.blocked:
            seat.timer = self.loop.call_at(seat.free_at, self._serve, m)

    def _serve(self, m: Member) -> None:
        """Send m's App its next piece if it is free; else come back when it will be."""
        seat = self.readers.get(m)
        if seat is None:
            return
        seat.timer = None
        t = m.transport
        if t.blocked:
            return
        now = self.loop.now
        if now + TIMER_SLACK < seat.free_at:
            seat.timer = self.loop.call_at(seat.free_at, self._serve, m)
            return
        piece = self._next_piece(m, seat, now)
        if not piece:
            seat.idle = True
            self.idle.add(m)
        elif not t.write(piece):
            self.lose(m, "connection lost while sending")
        else:
            seat.idle = False
            self.writable(m)

    def _next_piece(self, m: Member, seat: AppSeat, now: float) -> bytes:
        """The next read for m's App (b"" if nothing waits); moves it past
        that and says when the App will be free again."""
        settings = self.settings
        pos, run_stop = self.stream.run(m, seat.pos)   # past the private lines of others
        seat.pos = pos
        notes = self.notes.get(m)
        note_due = bool(notes) and notes[0][0] <= pos
        counted_at = self.marks[-1] if self.marks else -1   # the lines it counts end there
        lines_first = seat.idle and (note_due and notes[0][0] <= counted_at
                                     or 0 < counted_at - pos <= APP_READ)
        if seat.counted != self.serial and not lines_first:
            seat.counted = self.serial
            seat.free_at = seat.quiet_until = now + settings.app_margin
            return count_notice(self.present).encode()
        if note_due:
            at, data = notes[0]
            piece, n = self._piece_of(seat, data)
            if n < len(data):
                notes[0] = (at, data[n:])
            else:
                notes.popleft()
                if not notes:
                    del self.notes[m]
        else:   # up to the next count's place (the last one's, when the lines it counts go first)
            i = len(self.marks) - 1 if lines_first else bisect.bisect_right(self.marks, pos)
            stop = min(self.marks[i] if i < len(self.marks) else self.stream.end, run_stop)
            if notes:
                stop = min(stop, notes[0][0])
            if pos >= stop:
                return b""
            piece, n = self._piece_of(seat, self.stream.between(pos, min(stop, pos + APP_READ + 4)))
            seat.pos += n
        typing = len(piece.decode("utf-8", "replace")) * settings.app_char_time * (1 + APP_SLACK)
        seat.free_at = now + typing + settings.app_margin
        return piece

    @staticmethod
    def _piece_of(seat: AppSeat, data: bytes) -> tuple[bytes, int]:
        """One read from the start of `data` (the stream's, or a note's: whole
        lines) and how many of its bytes it takes.  It is cut by app_cut; a run
        of digits that goes on past it (longer than a read) goes on after a line
        end, so that no read begins with a digit, wherever its bytes come from."""
        n = app_cut(data, APP_READ - seat.new_line)
        piece = b"\n" * seat.new_line + data[:n]
        seat.new_line = data[n - 1] != 0x0A and data[n:n + 4].decode("utf-8", "ignore")[:1].isdigit()
        return piece, n


class Room:
    """The members and their names; what happens in the room, published
    once to each outlet: chat, joins (folded or not), leaves, the count,
    the stop, and notes and answers for one member.  It knows no wire
    format and no socket.

    A named member waits for its welcome until its outlet can take it
    (ready_at); joins and leaves within count_interval share one count.  A
    member whose outlet holds its seat through a lost connection stays in,
    away (away, back).  The last `history` chat lines are kept, in memory
    only, for newcomers, and the photos shared (the album); a photo's line in
    the history keeps its token, never its bytes (once the album lets the
    photo go, the line says so).  Each line said gets an id (the
    transcript), by which it can be answered, reacted to, and, by its
    sender within edit_window, edited or deleted; what is done to a private
    line stays between its two members.  `entered(m)` is the one call back
    up: m is in, read what it says.
    """

    def __init__(self, loop: Loop, settings: Settings, outlets: list[Outlet],
                 entered: Callable[[Member], None]):
        self.loop, self.settings, self.entered = loop, settings, entered
        self.outlets = {outlet.kind: outlet for outlet in outlets}
        self.members: dict[Member, None] = {}   # in the room, in join order
        self.names: dict[str, Member] = {}      # name_look(name) -> member (welcoming too)
        self.bases: dict[str, list[int]] = {}   # look asked for -> [members holding it, last number]
        self.arrivals: list[Member] = []        # named, waiting for their welcome
        self.count_due = False                  # membership changed since the last count
        self.count_at = -1e9
        self.presence_timer: Timer | None = None
        self.closing = False
        self.guests = 0
        self.history: collections.deque[Said] = collections.deque(maxlen=settings.history)
        self.album = Album(settings.photos << 20)
        self.transcript = Transcript()
        self.numbers = itertools.count(1)   # each member's, as it comes in

    def outlet(self, m: Member) -> Outlet:
        return self.outlets[m.kind]

    # -- names ----------------------------------------------------------
    def reserve_name(self, m: Member, wanted: str) -> None:
        """Give m a name like `wanted` that looks like nobody else's
        (empty -> guest-N; a look that is taken -> `x (2)`, `x (3)`...)."""
        if not wanted:
            self.guests += 1
            wanted = f"guest-{self.guests}"
        m.look = name_look(wanted)
        held = self.bases.setdefault(m.look, [0, 1])
        name, look, n = wanted, m.look, held[1]
        while look in self.names:
            n += 1
            name = numbered_name(wanted, n)
            look = name_look(name)
        held[0] += 1
        held[1] = max(held[1], n)
        m.name = name
        self.names[look] = m

    def _release_name(self, m: Member) -> None:
        look = name_look(m.name)
        if self.names.get(look) is m:
            del self.names[look]
        held = self.bases.get(m.look)
        if held:
            held[0] -= 1
            if held[0] <= 0:   # nobody holds it: its numbering starts afresh
                del self.bases[m.look]

    def find(self, name: str) -> Member | None:
        return self.names.get(name_look(name))

    # -- what happens ---------------------------------------------------
    def _listening(self) -> list[Outlet]:
        """The outlets anyone reads from: only they encode what happens."""
        return [outlet for outlet in self.outlets.values() if outlet.listening]

    def say(self, m: Member, said: str) -> None:
        """What m's line says: a command (/who, /help, /msg) or a chat line."""
        command, rest = (said.split(None, 1) + [""])[:2]
        if command == "/who" and not rest:
            self.who(m)
        elif command == "/help" and not rest:
            self.tell(m, HELP_TEXT)
        elif command == "/msg":
            self.private(m, rest)
        else:
            self.chat(m, said)

    def chat(self, m: Member, text: str, answers: Said | None = None) -> None:
        said = self.transcript.keep(Said(m, self.loop.now, text, None, None, answers))
        for outlet in self._listening():
            outlet.chat(said)
        self.history.append(said)

    def photo(self, m: Member, photo: Photo) -> bool:
        """m shares a photo: kept in the album (the oldest may go) and shown to
        everyone; False if it is larger than the whole album."""
        if not self.album.add(photo):
            return False
        said = self.transcript.keep(Said(m, self.loop.now, "", photo))
        for outlet in self._listening():
            outlet.photo(said)
        self.history.append(said)
        log.info("%s shared a photo (%d KiB)", quoted(m.name), -(-len(photo.body) // 1024))
        return True

    def tell(self, m: Member, text: str, words: str = "") -> None:
        """A line for m alone, after what it has been sent so far (and what
        it sent that did not go, back, for a page)."""
        self.outlet(m).note(m, text, words)

    def who(self, m: Member) -> None:
        """Answer /who to m alone: who is in the room (`NAME (away)`: its seat is held)."""
        self.outlet(m).who(m, [f"{x.name} (away)" if x.stage is Stage.AWAY else x.name
                               for x in self.members])

    def private(self, m: Member, request: str) -> None:
        """/msg NAME TEXT from m: TEXT for the member called NAME alone (as
        the room matches names), and m sees what went; or m alone is told
        why not: nobody is called NAME, or the words could name two or more
        members (then nothing goes: m is told their names and how to quote
        one).  Never kept for newcomers, never logged."""
        readings = private_readings(request)
        if not readings:
            self.tell(m, MSG_USAGE)
            return
        found: dict[Member, str] = {}   # each member the words could name -> the text then
        for _, look, text in readings:
            receiver = self.names.get(look)
            if receiver in self.members:
                found.setdefault(receiver, text)
        if len(found) != 1:
            self.tell(m, which_notice([x.name for x in found]) if found
                      else nobody_notice(clean_name(readings[-1][0])))
            return
        (receiver, text), = found.items()
        self._private(m, receiver, text)

    def _private(self, m: Member, receiver: Member, text: str, answers: Said | None = None) -> None:
        said = self.transcript.keep(Said(m, self.loop.now, text, None, receiver, answers))
        for x in {receiver: None, m: None}:   # the receiver, then the sender (once if the same)
            self.outlet(x).private(x, said)

    # -- what members do to lines ----------------------------------------
    def reply(self, m: Member, line_id: int, lines: list[str], private: bool = False) -> list[str]:
        """m answers line `line_id` with its first line: in public, or, to a
        private line, to the other of its two.  A line no longer kept is
        answered with a new line, unless m's page says it was private (then m
        is told, and given its words back).  The lines left for m to say in
        public: none when the reply is private, which goes whole, as one line."""
        answered = self.transcript.get(line_id)
        if private or answered is not None and answered.heard_by(m) and answered.to:
            text, rest = " ".join(lines), []
        else:
            text, rest = lines[0], lines[1:]
        self._reply(m, answered, text, private)
        return rest

    def _reply(self, m: Member, answered: Said | None, text: str, private: bool) -> None:
        if answered is None or not answered.heard_by(m):
            if private:
                self.tell(m, PRIVATE_NOT_KEPT, text)
            else:
                self.tell(m, ANSWERED_NOT_KEPT)
                self.chat(m, text)
        elif not answered.to:
            self.chat(m, text, answered)
        else:
            other = answered.to if m.number == answered.author else answered.name
            receiver = self.find(other)
            if receiver in self.members and receiver.number in (answered.author, answered.to_number):
                self._private(m, receiver, text, answered)
            else:
                self.tell(m, PARTNER_GONE.format(other), text)

    def react(self, m: Member, line_id: int, emoji: str) -> None:
        """m's reaction to a line, or taken back if m had it already."""
        said = self._line_for(m, line_id, "react")
        if said is not None:
            on = self.transcript.react(said, m, emoji)
            self._publish(said, lambda outlet, only: outlet.reacted(said, m.name, emoji, on, only))

    def edit(self, m: Member, line_id: int, text: str) -> None:
        """m's own line gets new words (edit_window after it was said at most)."""
        said = self._line_for(m, line_id, "edit")
        if said is None or said.text == text:
            return
        said.text, said.edited = text, True
        answering = self.transcript.changed(said)
        self._publish(said, lambda outlet, only: outlet.edited(said, answering, only))

    def delete(self, m: Member, line_id: int) -> None:
        """m takes its own line back (edit_window after it was said at most):
        its words (or photo) are gone from the room; who said it stays."""
        said = self._line_for(m, line_id, "delete")
        if said is None:
            return
        if said.photo is not None:
            self.album.remove(said.photo)
        said.text, said.photo, said.deleted = "", None, True
        answering = self.transcript.changed(said)
        self._publish(said, lambda outlet, only: outlet.deleted(said, answering, only))

    def typing(self, m: Member) -> None:
        for outlet in self._listening():
            outlet.typing(m.name)

    def _line_for(self, m: Member, line_id: int, act: str) -> Said | None:
        """The line m may `act` on ("react", "edit", "delete"); or None, and m
        is told why not in a sentence."""
        said, done, why = self.transcript.get(line_id), LINE_ACTS_DONE[act], ""
        if said is None or not said.heard_by(m):
            why = LINE_NOT_KEPT.format(done)
        elif said.deleted:
            why = LINE_DELETED.format(done)
        elif act != "react":
            if said.author != m.number:
                why = NOT_YOURS.format(act)
            elif self.loop.now - said.at > self.settings.edit_window:
                why = TOO_LATE.format(done, duration_words(self.settings.edit_window))
            elif act == "edit" and said.photo is not None:
                why = PHOTO_NOT_EDITED
        if why:
            self.tell(m, why)
            return None
        return said

    def _publish(self, said: Said, event: Callable[[Outlet, tuple[Member, ...]], None]) -> None:
        """event(outlet, only) to everyone who sees `said`: every outlet (only
        empty), or, for a private line, each outlet once with those of its two it serves."""
        if not said.to_number:
            for outlet in self._listening():
                event(outlet, ())
            return
        pair: dict[Outlet, dict[Member, None]] = {}
        for x in (self.find(said.to), self.find(said.name)):
            if x in self.members and x.number in (said.author, said.to_number):
                pair.setdefault(self.outlet(x), {})[x] = None
        for outlet, members in pair.items():
            event(outlet, tuple(members))

    def arrive(self, m: Member, not_before: float) -> None:
        """A named member enters once its outlet can take it, not before `not_before`."""
        m.stage = Stage.WELCOMING
        m.ready_at = max(self.outlet(m).ready_at(m.named_at), not_before)
        self.arrivals.append(m)
        self._presence_at(m.ready_at)

    def leave(self, m: Member) -> bool:
        """Forget a member; the room hears it left if it was in (True)."""
        if m.name:
            self._release_name(m)
        if m.stage is Stage.WELCOMING:
            self.arrivals.remove(m)
        if m not in self.members:
            return False
        del self.members[m]
        self.outlet(m).remove(m)
        if not self.closing:
            for outlet in self._listening():
                outlet.left(m.name, len(self.members))
            self.count_due = True
            self._presence_at(self.loop.now)
        return True

    def away(self, m: Member, reason: str) -> None:
        """m's connection is lost but its outlet holds its seat: it stays in
        the room, and nobody hears it left."""
        m.stage = Stage.AWAY
        log.info("%s (%s) is away: %s", quoted(m.name), m.ip, reason)

    def back(self, m: Member) -> None:
        """m is back from being away (or on a newer connection)."""
        m.stage = Stage.IN_ROOM
        log.info("%s is back, from %s", quoted(m.name), m.ip)

    def stop(self) -> None:
        """The last words: the stop lines, and no more counts."""
        self.closing = True
        for outlet in self.outlets.values():
            outlet.stop()

    def pending(self) -> bool:
        """Something is still to be sent to a member."""
        return any(self.outlet(m).pending(m) for m in self.members)

    def snapshot(self) -> list[tuple[str, str, float, str]]:
        """(name, ip, wall-clock join time, kind: `web, away` while its seat is
        held) of everyone in, in join order."""
        offset = time.time() - time.monotonic()
        return [(m.name, m.ip, m.ready_at + offset,
                 f"{m.kind.value}, away" if m.stage is Stage.AWAY else m.kind.value)
                for m in self.members]

    # -- presence: welcomes and the count ---------------------------------
    def _presence_at(self, when: float) -> None:
        timer = self.presence_timer
        if timer is not None and timer.when <= when:
            return
        if timer is not None:
            timer.cancel()
        self.presence_timer = self.loop.call_at(when, self._presence)

    def _presence(self) -> None:
        """Welcome whoever is due, then the count, at most so often."""
        self.presence_timer = None
        now = self.loop.now
        soon = now + TIMER_SLACK
        due = [m for m in self.arrivals if m.ready_at <= soon]
        if due:
            self.arrivals = [m for m in self.arrivals if m.ready_at > soon]
            self._welcome(due)
        if self.count_due and not self.closing:
            next_count = self.count_at + self.settings.count_interval
            if now + TIMER_SLACK >= next_count:
                self._announce_count(now)
            else:
                self._presence_at(next_count)
        if self.arrivals:
            self._presence_at(min(m.ready_at for m in self.arrivals))

    def _announce_count(self, now: float) -> None:
        self.count_due = False
        self.count_at = now
        n = len(self.members)
        for outlet in self._listening():
            outlet.count(n)
        log.info("%d online", n)

    def _welcome(self, newcomers: list[Member]) -> None:
        """In they come, one by one in the order they were named, so each
        newcomer's first line is its own join.  More than fold_joins at once
        make one folded line for those already in."""
        for m in newcomers:
            m.stage = Stage.IN_ROOM
            m.number = next(self.numbers)
            self.members[m] = None
        present = len(self.members)
        folded = len(newcomers) > self.settings.fold_joins
        history = list(self.history)
        if folded:
            self._publish_joined([m.name for m in newcomers], present)
        for m in newcomers:
            outlet = self.outlet(m)
            outlet.add(m, present)
            outlet.welcome(m)
            if history:
                outlet.history(m, history)
            if folded:
                outlet.joined_note(m)
            else:   # the ones before it in this batch were in before it
                self._publish_joined([m.name], present)
        self.count_due = True
        for m in newcomers:
            if m.name != split_key(m.claimed)[0].strip():
                self.tell(m, f"{KNOWN_AS}{m.name}\n")
            self.entered(m)
        log.info("joined: %s", ", ".join(f"{quoted(m.name)} ({m.kind.value}) from {m.ip}"
                                         for m in newcomers))

    def _publish_joined(self, names: list[str], present: int) -> None:
        for outlet in self._listening():
            outlet.joined(names, present)


# ---------------------------------------------------------------------------
# 5. The gate
# ---------------------------------------------------------------------------

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


def key_wait(failures: int) -> float:
    """How long an address waits between room-key checks after this many wrong keys."""
    return 0.0 if failures <= 0 else min(0.25 * 2 ** (failures - 1), 30.0)


def allow_networks(text: str) -> tuple:
    """--allow: the networks, as CIDR texts the gate reads (Settings.allow)."""
    try:
        return tuple(str(ipaddress.ip_network(part.strip(), strict=False))
                     for part in text.split(",") if part.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class Gate:
    """Says yes or no (and why) to a connection, a name and a line, as nginx's
    limit_conn and limit_req do in front of its handlers: --allow, the
    connections per address and in all, the rates (connecting, joining and
    speaking, per member and per address), the room key's tries.

    A connection is silent until it gives its alias (on the web port: until
    its WebSocket gives one).  Silent connections count against the
    per-address cap and `max_unnamed`; when a cap is reached the oldest
    silent one makes room: the gate has it closed through `close(m)`.
    """

    SPARE_FILES = 32            # descriptors kept for the log, the GUI and look-ups
    KEY_MEMORY = 600.0          # seconds after which an address's wrong keys are forgotten
    LINES_PER_ADDRESS = 4.0     # an address may say this many times --line-rate
    REFUSING = 32               # web connections let in at once only to be told why not
    REACT_RATE, REACT_BURST = 0.5, 4.0    # reactions a second by a member to one line, at once
    TYPING_RATE, TYPING_BURST = 0.5, 2.0  # "typing" notices a second by a member (pages: 1 / 3 s)

    def __init__(self, loop: Loop, settings: Settings, tally: Tally,
                 close: Callable[[Member], None]):
        self.loop, self.settings, self.tally, self.close = loop, settings, tally, close
        self.capacity = settings.max_clients                        # connections at once
        self.per_ip: collections.Counter = collections.Counter()   # address group -> connections
        self.silent: dict[Member, None] = {}                       # no alias yet, oldest first
        self.silent_by: dict[str, dict[Member, None]] = {}         # ... by address group
        self.network_of: dict[str, str] = {}                       # ... their address_network
        self.silent_in: collections.Counter = collections.Counter()  # ... how many by network
        self.buckets: dict[tuple[str, str], Bucket] = {}           # (what, address group) -> Bucket
        self.key_tries: dict[str, list[float]] = {}   # address group -> [wrong keys, next check, last try]
        self.refusals: dict[Member, str] = {}         # let in only to be told why not
        self.allow = [ipaddress.ip_network(n, strict=False) for n in settings.allow]

    def fit(self) -> int:
        """Size the room to what this machine allows: --max-clients, within the
        open-files limit and what the loop can watch.  The capacity."""
        s = self.settings
        self.capacity = min(s.max_clients, raise_open_files_limit(s.max_clients + self.SPARE_FILES)
                            - self.SPARE_FILES)
        watchable = self.loop.capacity()
        if watchable is not None:   # beside the room's and the page's listening sockets, and
            self.capacity = min(self.capacity, watchable - 2 - self.REFUSING)   # refusals
        return self.capacity

    def _bucket(self, what: str, group: str, rate: float, burst: float) -> Bucket:
        bucket = self.buckets.get((what, group))
        if bucket is None:
            bucket = self.buckets[(what, group)] = Bucket(rate, burst, self.loop.now)
        return bucket

    # -- a connection -----------------------------------------------------
    def refusal(self, ip: str, group: str, connections: int) -> str | None:
        """Why a new connection from `ip` is turned away (logged), or None; makes
        room by closing a silent connection where a cap allows that."""
        refusal = self._refusal(ip, group, connections)
        if refusal is not None:
            self.tally.add(self.loop.now, f"refused {ip}: {refusal.strip() or 'not in --allow'}")
        return refusal

    def _refusal(self, ip: str, group: str, connections: int) -> str | None:
        s = self.settings
        if self.allow:
            addr = ipaddress.ip_address(ip)
            if not any(addr.version == n.version and addr in n for n in self.allow):
                return ""
        # before anything costly (a TLS handshake): an address connects at most
        # 4 x max_per_ip times a second, after 8 x max_per_ip at once
        connects = self._bucket("connect", group, 4.0 * s.max_per_ip, 8.0 * s.max_per_ip)
        if connects.wait(self.loop.now):
            return "you are connecting too often; wait a few seconds and try again\n"
        connects.take()
        if self.per_ip[group] >= s.max_per_ip and not self._make_room(group):
            return (f"too many connections from your address (at most {s.max_per_ip}); "
                    f"close one and try again\n")
        if connections - len(self.refusals) >= self.capacity and not self._make_room(None):
            return f"the room is full ({self.capacity} connections); please try again later\n"
        if len(self.silent) >= s.max_unnamed:
            self._make_room(None)
        return None

    def _make_room(self, group: str | None) -> bool:
        """Close the oldest silent connection of `group` (None: of the address
        holding the most, within the network holding the most: a crowd with an
        address each goes before an App whose user is typing a name); False if
        there is none."""
        if group is None and self.silent_by:
            network = max(self.silent_in, key=self.silent_in.__getitem__)   # the oldest of equals
            group = max((g for g in self.silent_by if self.network_of[g] == network),
                        key=lambda g: len(self.silent_by[g]))
        waiting = self.silent_by.get(group)
        if not waiting:
            return False
        oldest = next(iter(waiting))
        self.tally.add(self.loop.now, f"closed a silent connection from {oldest.ip} to make room")
        self.close(oldest)
        return True

    def may_explain(self) -> bool:
        """A refused web connection may yet be let in, for its page to show why."""
        return len(self.refusals) < self.REFUSING

    def let_in(self, m: Member, refusal: str = "") -> None:
        """m is connected, silent; with a `refusal`, only to be told it."""
        if refusal:
            self.refusals[m] = refusal
        else:
            self.per_ip[m.group] += 1
        self.silent[m] = None
        if m.group not in self.silent_by:
            self.silent_by[m.group], self.network_of[m.group] = {}, address_network(m.group)
        self.silent_by[m.group][m] = None
        self.silent_in[self.network_of[m.group]] += 1

    def refused(self, m: Member) -> str | None:
        """What m was let in to be told, if it was let in only for that."""
        return self.refusals.get(m)

    def named(self, m: Member) -> None:
        """m gave its alias: it is no longer silent."""
        if m in self.silent:
            del self.silent[m]
            waiting, network = self.silent_by[m.group], self.network_of[m.group]
            del waiting[m]
            if not waiting:
                del self.silent_by[m.group], self.network_of[m.group]
            self.silent_in[network] -= 1
            if not self.silent_in[network]:
                del self.silent_in[network]

    def let_go(self, m: Member) -> None:
        """m's connection is closed: it counts no more."""
        self.named(m)
        if self.refusals.pop(m, None) is None:
            self.per_ip[m.group] -= 1
            if not self.per_ip[m.group]:
                del self.per_ip[m.group]

    def sweep(self) -> None:
        """Close silent connections past the handshake time-out; forget rates
        and wrong keys that no longer matter."""
        now, timeout = self.loop.now, self.settings.handshake_timeout
        while self.silent:
            m = next(iter(self.silent))
            if m.since + timeout > now:
                break
            self.tally.add(now, f"closed {m.ip}: no alias within {timeout:g} s")
            self.close(m)
        for key in [k for k, b in self.buckets.items() if b.full(now)]:
            del self.buckets[key]
        for group in [g for g, (_, at, last) in self.key_tries.items()
                      if now - last > self.KEY_MEMORY and at < now]:
            del self.key_tries[group]

    # -- a name -----------------------------------------------------------
    def key_turn(self, group: str) -> float:
        """When a room key from `group` may be checked: each try counts as wrong
        until it proves right, and an address's tries are checked ever further
        apart, so guessing in parallel gains nothing."""
        now = self.loop.now
        tries = self.key_tries.setdefault(group, [0, now, now])
        tries[0] += 1
        at = max(now, tries[1])
        tries[1], tries[2] = at + key_wait(tries[0]), now
        return at

    def key_right(self, m: Member) -> bool:
        """m's alias carries the room key (its try is forgotten); else it is logged."""
        if hmac.compare_digest(split_key(m.claimed)[1].encode(), self.settings.room_key.encode()):
            tries = self.key_tries.get(m.group)
            if tries:
                tries[0] -= 1
                if tries[0] <= 0:
                    del self.key_tries[m.group]
            return True
        self.tally.add(self.loop.now, f"wrong or missing room key from {m.ip}")
        return False

    def welcome_at(self, m: Member) -> float:
        """When named m may be welcomed; from then on it speaks at its line rate."""
        s, now = self.settings, self.loop.now
        if s.line_rate:
            m.bucket = Bucket(s.line_rate, 2.0 * s.line_rate, now)
        # an address gets 4 x max_per_ip welcomes at once, then that many per
        # churn_period: reconnecting in a loop cannot flood the room, nobody is refused
        burst = 4.0 * s.max_per_ip
        return now + self._bucket("join", m.group, burst / s.churn_period, burst).book(now)

    # -- a photo ----------------------------------------------------------
    def photo_refusal(self, m: Member, size: int, room: int) -> str:
        """Why m may not send a photo of `size` bytes now, `room` bytes being left for
        its photos coming in (the room's, within its address's share: PhotoDesk), or ""
        (its photo rate then gives one: PHOTO_BURST at once, then Settings.photo_rate a second)."""
        s = self.settings
        rate = self._bucket("photos", m.name, s.photo_rate, PHOTO_BURST)
        why = (SHARING_OFF if not s.photos else TOO_BIG if size > MAX_PHOTO
               else ALBUM_TOO_SMALL.format(s.photos) if size > s.photos << 20
               else ROOM_BUSY if size > room
               else SHARING_TOO_FAST if rate.wait(self.loop.now) else "")
        if not why:
            rate.take()
        return why

    # -- what a page does to lines ----------------------------------------
    def may_act(self, m: Member, what: str, line_id: int = 0) -> bool:
        """m may react to line `line_id` now ("react": REACT_BURST at once, then
        one each 1 / REACT_RATE s), or tell it is typing ("typing": TYPING_BURST,
        then one each 1 / TYPING_RATE s); taken from its rate if so."""
        rate, burst = (self.REACT_RATE, self.REACT_BURST) if what == "react" else \
            (self.TYPING_RATE, self.TYPING_BURST)
        bucket = self._bucket(what, f"{m.number} {line_id}", rate, burst)
        if bucket.wait(self.loop.now):
            return False
        bucket.take()
        return True

    # -- a line -----------------------------------------------------------
    def line_wait(self, m: Member) -> float:
        """0 if m may say a line now (taken from its rate and its address's;
        before its welcome it has only its address's), else how long until it may."""
        now, rate = self.loop.now, self.settings.line_rate * self.LINES_PER_ADDRESS
        address = self._bucket("lines", m.group, rate, 2.0 * rate)
        wait = max(m.bucket.wait(now) if m.bucket else 0.0, address.wait(now))
        if not wait:
            if m.bucket:
                m.bucket.take()
            address.take()
        return wait


# ---------------------------------------------------------------------------
# 6. The server and its doors
# ---------------------------------------------------------------------------

TLS_HELLO = b"\x16\x03"   # how a TLS client begins: not a name
PLAIN_ROOM = "it speaks TLS to a room that is not encrypted"   # why such a client is closed
ROOM_PATH = "/room"   # the web door says where the room is (a line client at the page's port)
REDIRECT_KEPT = 600   # seconds a browser keeps the room's port's redirect to the page's
INTERNAL_ERROR = "the room met an error serving you and closed your connection; please join again\n"
PAGE_IS_OFF = ("this room's chat page is off; join with PrivateChatRoom-App or a terminal at "
               "this address\n")


def not_a_name(data: bytes, page: tuple[str, int] | None) -> str | None:
    """Why what came after ALIAS at the room's port is no alias (a TLS client, a
    browser: then where the page is), for the log; None if it may be one."""
    if data.startswith(TLS_HELLO):
        return PLAIN_ROOM
    if browser_request(data):
        return "a browser came to the room's port; " + (
            f"the page is on port {page[1]}" if page else "the page is off (--web-port N serves it)")
    return None


def key_refusal(m: Member) -> str:
    """What a member whose key is not the room's is told: wrong, or missing (the
    page has a field of its own for it: it is never told to type name#KEY)."""
    return WRONG_KEY if split_key(m.claimed)[1] else NEEDS_KEY_ON_PAGE if m.kind is Kind.WEB \
        else NEEDS_KEY


class StartError(Exception):
    """The server cannot start; the message says why and what to do."""


# What to change when the address cannot be used, in the words of where it is said.
FLAG_ADVICE = {
    "host": "use --host :: (or --host 0.0.0.0, IPv4 alone) to listen on every network, or one "
            "of this machine's addresses",
    "port": "choose another port with --port" if WINDOWS else "choose a port above 1023 with --port",
    "in use": "stop that program or choose another port with --port N",
    "page in use": "choose its port with --web-port N, or turn it off with --web-port off",
    "encrypted": f"{RUN} --connect ADDRESS --tls",
    "firewall": "--upnp, or by hand on the router"}
# Why a port is refused: low ports are for administrators on POSIX; on Windows
# they are not, and a refusal means the port is held or reserved.
PORT_REFUSED = ("another program holds it for itself, or Windows reserves it; `netsh interface "
                "ipv4 show excludedportrange protocol=tcp` lists the reserved ports" if WINDOWS
                else "ports below 1024 need administrator rights")
# getaddrinfo's "no such name" errors (create_server hides the gaierror class)
NAME_ERRORS = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_AGAIN", "EAI_FAIL",
                                                  "EAI_NODATA", "EAI_ADDRFAMILY")
               if hasattr(socket, name)}


def full_stop(text: str) -> str:
    """`text` ending a sentence: a full stop after it, but not after a label that
    ends in "…" (the window's Change port…)."""
    return text if text.endswith(("…", ".")) else text + "."


def bind_error_text(e: OSError, host: str, port: int, advice: dict = FLAG_ADVICE,
                    in_use: str = "in use") -> str:
    """One sentence: why `host` port `port` cannot be listened on, and what to do
    (advice[in_use] when another program holds the port)."""
    if errno_is(e, "EADDRINUSE"):
        return (f"Port {port} is already in use (is another server running?): "
                f"{full_stop(advice[in_use])}")
    if errno_is(e, "EADDRNOTAVAIL"):
        return f"The address {host} is not on this machine: {full_stop(advice['host'])}"
    if errno_is(e, "EACCES"):
        return f"Not allowed to listen on port {port} ({PORT_REFUSED}): {full_stop(advice['port'])}"
    if isinstance(e, socket.gaierror) or e.errno in NAME_ERRORS:
        return f"Cannot find the address of {host!r}: {full_stop(advice['host'])}"
    reason = (e.strerror or str(e)).split(" (while attempting")[0]
    return f"Cannot listen on {host} port {port}: {reason}."


def open_listener(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A socket listening on host:port; `::` takes IPv4 too (dual-stack, IPV6_V6ONLY
    off) where the system can, so one socket serves both families."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    dual = host == "::" and socket.has_dualstack_ipv6()
    return socket.create_server((host, port), family=family, backlog=backlog, dualstack_ipv6=dual)


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
                         f"(docs/TLS.md).") from None
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


ACME_CHALLENGE = "/.well-known/acme-challenge/"   # http-01 (RFC 8555 §8.3): where a CA looks


class SecurePage:
    """The page's https with --https, on the loop's thread: the TLS context of its
    certificate (None until one is in place), which new connections to the page's
    port get when their first byte says TLS (those open keep theirs); the address it
    names; a CA's http-01 answers; and the redirect (308) of a plain request from
    outside this machine's networks to https.  Its certificate comes from
    PageCertificate, through the loop."""

    def __init__(self, on: bool):
        self.on = on                        # --https: the page's port tells TLS from http
        self.context = None                 # ssl.SSLContext, once a certificate is in place
        self.ip: str | None = None          # the address it names
        self.answers: dict[str, str] = {}   # http-01: token -> key authorization

    def certified(self, context, ip: str | None) -> None:
        self.context, self.ip = context, ip
        log.info("https: the page's port %s", f"serves https for {ip} and http" if ip
                 else "serves http alone")

    def switch(self, on: bool) -> None:
        """--https on or off while the room runs (the window's box); off: plain http alone."""
        self.on = on
        if not on:
            self.context = self.ip = None
            self.answers.clear()

    def answer(self, token: str, key_authorization: str | None) -> None:
        """Answer the CA's look at `token` (None: no more)."""
        if key_authorization is None:
            self.answers.pop(token, None)
        else:
            self.answers[token] = key_authorization

    def redirect(self, m: Member, host: str, target: str) -> str | None:
        """Where a request for `target` that came as plain http is sent instead: the same
        at https, for a member from outside once the certificate is in place; else None."""
        if self.ip is None or m.transport.encrypted or not self.outside(m):
            return None
        port = re.search(r":(\d+)$", host)   # as the member reached it; else the page's own
        port = int(port[1]) if port else m.transport.sock.getsockname()[1]
        path = target if re.fullmatch("/[!-~]*", target) else "/"   # nothing else in a header
        return f"https://{host_port(self.ip, port)}{path}"

    @staticmethod
    def outside(m: Member) -> bool:
        """From the internet: a global address, not in this machine's own IPv6 /64."""
        if not global_ip(m.ip):
            return False
        with contextlib.suppress(OSError, ValueError):
            here = plain_ip(m.transport.sock.getsockname()[0])
            return ":" not in m.ip or address_group(here) != address_group(m.ip)
        return True


class PhotoDesk:
    """Photos as pages share them: the gate's yes or no to an announced
    photo, then a buffer for its bytes (Upload), then its bytes cleaned and
    kept in the room's album and shown, or one sentence to the page saying
    why not; and the page's address as each member reached the room, for the
    links line clients get.

    The room's photo bytes are bounded: those coming in (as announced) stay
    within --photos MiB, those from one address (Member.group) within its
    share of them, and the album within as much again.  A new announcement
    past that is refused at once; an upload slower than
    photo_pace over a ping interval is dropped; one whose connection ends
    goes with it (Transport.close).  Buffers are memory maps: what is let go
    goes back to the system."""

    ADDRESS_SHARE = 4   # an address may announce a quarter of the photos coming in at once

    def __init__(self, settings: Settings, tally: Tally, gate: Gate, room: Room, webs: WebOutlet):
        self.settings, self.tally, self.gate, self.room, self.webs = settings, tally, gate, room, webs
        self.loop, self.album = room.loop, room.album
        self.web_port: int | None = None   # the page's, while it is served
        self.internet_page: str | None = None   # the page's link over the internet, once known
        self.uploads: dict[Upload, Member] = {}   # photos coming in, and whose
        self.coming = 0                           # their bytes, as announced
        self.coming_from: collections.Counter[str] = collections.Counter()   # by address (group)
        self.groups: dict[Upload, str] = {}       # each upload's address, as it was announced
        self.pace_every = settings.web_ping or 30.0
        for outlet in room.outlets.values():   # line readers get links to the page
            outlet.page_at = self.page_at

    def announced(self, m: Member, size: int) -> None:
        """m announced a photo of `size` bytes: its bytes go into a buffer of
        that size, or are skipped unread while m is told why not.  An earlier
        announcement whose bytes never came goes (m is told)."""
        reader = m.transport.frame_reader
        if reader.photo is not None:
            self._unshared(m, ANNOUNCED_AGAIN)
            reader.release()
        why = self.gate.photo_refusal(m, size, self._room_for(m.group))
        if why:
            self._unshared(m, why)
            reader.announce(None)
            return
        upload = Upload(size, self._gone)
        self.uploads[upload], self.groups[upload] = m, m.group
        self.coming += size
        self.coming_from[m.group] += size
        reader.announce(upload)
        self.loop.call_later(self.pace_every, self._pace, upload)

    def _room_for(self, group: str) -> int:
        """The bytes an address may still announce: what is left of the room's
        photos coming in, and of the address's share of them (a quarter, and at
        least a photo of MAX_PHOTO), so that no one address can hold them all."""
        budget = self.settings.photos << 20
        share = max(budget // self.ADDRESS_SHARE, min(budget, MAX_PHOTO))
        return min(budget - self.coming, share - self.coming_from[group])

    def _gone(self, upload: Upload) -> None:
        """An upload gave its buffer back."""
        self.coming -= upload.size
        group = self.groups.pop(upload)
        self.coming_from[group] -= upload.size
        if not self.coming_from[group]:
            del self.coming_from[group]
        del self.uploads[upload]

    def _pace(self, upload: Upload) -> None:
        """An upload still coming in: dropped if slower than photo_pace since the last look."""
        m = self.uploads.get(upload)
        if m is None:
            return
        if upload.filled - upload.paced < self.settings.photo_pace * self.pace_every:
            upload.release()
            self._unshared(m, TOO_SLOW.format(self.settings.photo_pace / 1024))
        else:
            upload.paced = upload.filled
            self.loop.call_later(self.pace_every, self._pace, upload)

    def share(self, m: Member, upload: Upload) -> None:
        """The photo m announced, whole or longer than announced: cleaned and
        shared, or m is told why not; its buffer goes back either way."""
        try:
            if upload.over:
                raise PhotoRefused(LONGER_THAN_ANNOUNCED.format(upload.size))
            if m.stage is Stage.IN_ROOM:
                ext, parts, width, height = photo_parts(upload.view())
                photo, parts = Photo(ext, mapped(parts), width, height), None
                if not self.room.photo(m, photo):
                    raise PhotoRefused(ALBUM_TOO_SMALL.format(self.settings.photos))
        except PhotoRefused as e:
            self._unshared(m, str(e))
        finally:
            upload.release()

    def _unshared(self, m: Member, why: str) -> None:
        self.tally.add(self.loop.now, f"refused a photo from {m.ip}: {why}")
        self.webs.unshared(m, NOT_SHARED.format(why))

    def page_served(self, port: int | None) -> None:
        """The page is served on `port` now (None: it is off, and no photo is kept)."""
        self.web_port = port
        if port is None:
            self.album.clear()
            log.info("the chat page is off")
        else:
            log.info("the chat page is on port %d; %s", port, "photos shared on it are "
                     + PHOTOS_KEPT.format(self.settings.photos)
                     if self.settings.photos else "photo sharing is off")

    def heard_internet_page(self, link: str | None) -> None:
        """The page's link over the internet (the router's forwarding, or the public address)."""
        self.internet_page = link

    def page_at(self, m: Member) -> str:
        """The page's address as m reached the room: its connection's own
        address (what m connected to) and the page's port; for a member who
        came from the internet through this machine's router, the page's
        link over the internet, when it is known."""
        try:
            host = plain_ip(m.transport.sock.getsockname()[0])
        except OSError:
            host = self.settings.host
        if self.internet_page and global_ip(m.ip) and not global_ip(host):
            return self.internet_page
        return page_link(host, self.web_port or 0, bool(self.settings.tls_cert))


@dataclasses.dataclass(frozen=True)
class Entrance:
    """What the web door hands on to the server once a WebSocket speaks."""
    name: Callable[[Member, bytes, bytes], None]   # name(m, alias, what came after it)
    lines: Callable[[Member, bytes], None]         # lines(m, what it said, and kept before)
    too_long: Callable[[Member], None]             # a message from a member in the room, dropped
    may_say: Callable[[Member], bool]              # m's line rate takes one more (else it waits)
    leave: Callable[..., None]                     # leave(m, reason, farewell, code): it closed or broke
    lose: Callable[[Member, str], None]            # lose(m, reason): it went away, may come back
    find: Callable[[str], Member | None]           # find(name): who in the room has that name
    close: Callable[..., None]                     # close(m, farewell="", code=None): done with it
    resume: Callable[[Member, Member], None]       # resume(new, m): new's connection is m's now


class WebDoor:
    """The web port: one HTTP request per connection, answered with the
    page, a photo from the album, an error, or the upgrade of /ws to a
    WebSocket (RFC 6455 §4.2); then the WebSocket's frames in (RFC 6455 §5):
    a name, or a request for a seat held by the web outlet (docs/PROTOCOL.md,
    "Coming back"), then lines, photos (`NUL photo BYTES`, then one binary
    message) and what it does to lines (`NUL {JSON}`, act(), read in the
    order of its lines by the server).  The page itself is data, given when the door is made (the last
    section); a connection the gate let in only to be told why not hears
    it once its WebSocket is open."""

    def __init__(self, settings: Settings, tally: Tally, entrance: Entrance, outlet: WebOutlet,
                 gate: Gate, page: ChatPage, room: Room):
        self.settings, self.tally, self.entrance, self.outlet = settings, tally, entrance, outlet
        self.gate, self.page, self.room = gate, page, room
        self.photos = PhotoDesk(settings, tally, gate, room, outlet)
        self.secure = SecurePage(settings.https)
        self.room_port = 0   # where the App and terminals join
        self.sending: dict[Member, Photo] = {}   # answers with a photo's bytes still to send

    def room_listens(self, port: int) -> None:
        self.room_port = port

    def request(self, m: Member, data: bytes) -> None:
        """Read an HTTP request head; answer with the page (at the room's port:
        the way to it), a WebSocket, where the room is (ROOM_PATH: for the
        terminal client), or an error."""
        t = m.transport
        t.inbuf += data
        if t.inbuf.startswith(TLS_HELLO) and not t.encrypted:
            self.tally.add(m.since, f"closed {m.ip}: a browser asked for https on the page's port; "
                           + ("its certificate is not in place yet" if self.secure.on
                              else "start with --https or --tls-cert for https"), tries=True)
            self.entrance.close(m)
            return
        end = t.inbuf.find(b"\r\n\r\n")
        if end < 0 and b"\n" in t.inbuf and not browser_request(t.inbuf):   # a line client
            self._answer(m, "", f"this port is the chat page's, for a browser; the App and "
                                f"terminals join at port {self.room_port}\n".encode())
            return
        if end < 0 and len(t.inbuf) <= MAX_REQUEST:
            return
        if end < 0 or end + 4 > MAX_REQUEST:
            self._answer(m, "431 Request Header Fields Too Large", b"request too large\n")
            return
        head, t.inbuf = t.inbuf[:end], t.inbuf[end + 4:]
        try:
            method, target, headers = parse_request(head)
        except ValueError:
            self._answer(m, "400 Bad Request", b"not an HTTP request\n")
            return
        host, path = headers.get("host", ""), target.split("?", 1)[0]
        if not HTTP_HOST.fullmatch(host):
            self._answer(m, "400 Bad Request", b"no valid Host header\n")
        elif method != "GET":
            self._answer(m, "405 Method Not Allowed", b"only GET\n", headers=(("Allow", "GET"),))
        elif path.startswith(ACME_CHALLENGE) and (said := self.secure.answers.get(
                path[len(ACME_CHALLENGE):])):
            self._answer(m, "200 OK", said.encode(), "application/octet-stream")
        elif path == ROOM_PATH:
            self._answer(m, "200 OK", json.dumps({"port": self.room_port}).encode(),
                         "application/json")
        elif self.photos.web_port is None:   # a browser at the room's port
            self._answer(m, "404 Not Found", PAGE_IS_OFF.encode())
        elif path == "/" and m.transport.sock.getsockname()[1] == self.room_port:
            self._to_page_port(m, host)
        elif m.transport.sock.getsockname()[1] != self.room_port and (
                location := self.secure.redirect(m, host, target)):
            self._answer(m, "308 Permanent Redirect", b"this page is at https\n",
                         headers=(("Location", location),))
        elif path == "/":
            self._answer(m, "200 OK", self.page.body, "text/html; charset=utf-8",
                         self.page.headers(host))
        elif path == "/ws":
            self._upgrade(m, headers, host)
        elif path.startswith("/p/") and (photo := self.photos.album.get(path[3:])):
            self._answer(m, "200 OK", photo.body, photo.content_type,
                         (("Content-Security-Policy", "default-src 'none'"),), cache="private")
            if m.transport.blocked:   # what waits is a view of the album's copy
                self.sending[m] = photo
        else:
            self._answer(m, "404 Not Found", b"not found\n")

    def sweep(self) -> None:
        """Every second: an answer still sending a photo the album has let go
        is cut, so that no reader keeps the photo's memory past the album's
        bound (what waits for it is a view of that memory)."""
        for m, photo in list(self.sending.items()):
            if m.stage is Stage.GONE or not photo.kept:
                del self.sending[m]
                if m.stage is not Stage.GONE:
                    self.tally.add(self.room.loop.now, f"cut a photo's answer to {m.ip}: "
                                                       f"the album let the photo go before it was read")
                    self.entrance.close(m)

    def _to_page_port(self, m: Member, host: str) -> None:
        """A browser at the room's port is sent on to the page's, on the host it asked
        for (over the internet, the port the router forwards to the page's), with a
        redirect it keeps a while: it never comes back to the room's port for the
        page, where a spare connection it opened ahead has been asked for a name."""
        port = self.photos.web_port
        if self.photos.internet_page and global_ip(m.ip):
            port = urllib.parse.urlsplit(self.photos.internet_page).port or port
        secure = self.secure.ip is not None and self.secure.outside(m)   # --https: straight there
        link = page_link(self.secure.ip if secure else host_name(host), port,
                         bool(self.settings.tls_cert) or secure)
        self._answer(m, "301 Moved Permanently", f"the chat page is at {link}\n".encode(),
                     headers=(("Location", link),), cache=f"max-age={REDIRECT_KEPT}")

    def _answer(self, m: Member, status: str, body: bytes | memoryview, content_type: str =
                "text/plain; charset=utf-8", headers: tuple[tuple[str, str], ...] = (),
                cache: str = "no-store") -> None:
        """The answer (without a status, the body alone: for a client that
        speaks no HTTP), then the close once it is out.  A photo's bytes are
        sent from the album's one copy, as the socket takes them."""
        m.stage = Stage.ANSWERED
        t = m.transport
        t.pause_reading()
        head = http_head(status, len(body), content_type, headers, cache) if status else b""
        if not (t.write(head) and t.write(body)) or not t.blocked:
            self.entrance.close(m)   # else once the rest is out

    def _upgrade(self, m: Member, headers: dict[str, str], host: str) -> None:
        """Turn the request into a WebSocket and say hello."""
        key = headers.get("sec-websocket-key", "")
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid_key = False
        origin = headers.get("origin")
        scheme = "https" if m.transport.encrypted else "http"
        if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in tokens \
                or not valid_key:
            self._answer(m, "400 Bad Request", b"not a WebSocket request\n")
        elif headers.get("sec-websocket-version") != "13":
            self._answer(m, "426 Upgrade Required", b"WebSocket version 13 only\n",
                         headers=(("Sec-WebSocket-Version", "13"),))
        elif origin is not None and origin.lower() != f"{scheme}://{host.lower()}":
            self.tally.add(m.since, f"refused a WebSocket from {m.ip}: "
                                    f"it came from another site's page")
            self._answer(m, "403 Forbidden", b"this socket is for this server's own page\n")
        else:
            m.transport.frame_reader = FrameReader(self.settings.max_line, WS_DROP_UP_TO)
            m.stage = Stage.NAMING
            m.transport.write((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               f"Connection: Upgrade\r\nSec-WebSocket-Accept: {ws_accept(key)}"
                               f"\r\n\r\n").encode()
                              + ws_event("hello", key=bool(self.settings.room_key),
                                         max_line=self.settings.max_line,
                                         photos=bool(self.settings.photos),
                                         edit_window=self.settings.edit_window))
            refusal = self.gate.refused(m)
            if refusal:
                self.entrance.close(m, refusal, WS_TRY_LATER)
            elif m.transport.inbuf:
                data, m.transport.inbuf = m.transport.inbuf, b""
                self.frames(m, data)

    def frames(self, m: Member, data: bytes) -> None:
        """What a web member sent: its alias (or its request for its seat
        back), its lines, pings, its goodbye.  Pings read together get one
        pong, for the most recent (RFC 6455 §5.5.3); each ping or pong is
        taken from the line rate (before the welcome, the address's), so a
        flood of them waits as one of lines does (what came after it is read
        when the rate allows)."""
        ping = None
        try:
            for opcode, payload in m.transport.frame_reader.messages(data):
                if m.stage is Stage.GONE:
                    return
                if opcode == WS_ANNOUNCED:   # a photo's bytes (or more than it said)
                    self.photos.share(m, payload)
                elif payload is None and m.stage is not Stage.IN_ROOM:   # past --max-line
                    raise WsError(WS_TOO_BIG, f"a message over {self.settings.max_line} bytes "
                                              f"before the name")
                elif opcode == WS_BINARY and payload and m.stage is Stage.NAMING \
                        and (request := resume_request(payload)):
                    m = self._come_back(m, *request)
                elif opcode == WS_BINARY:
                    raise WsError(WS_UNSUPPORTED, "a photo's bytes without their announcement"
                                  if m.stage is Stage.IN_ROOM else "binary messages are not taken")
                elif payload is None:   # a text past --max-line from a member in the room: told
                    self.entrance.too_long(m)
                elif opcode == WS_TEXT:   # its UTF-8 was checked by the frame reader
                    size = photo_announcement(payload) if m.stage is Stage.IN_ROOM else None
                    if size is None:
                        self._text(m, payload)
                    else:   # a photo's bytes come next, as one binary message
                        self.photos.announced(m, size)
                elif opcode == WS_CLOSE:
                    self._closing(m, ws_close_code(payload))
                else:   # a ping or a pong; past the rate, the frames after it wait unread
                    if opcode == WS_PING:
                        ping = payload
                    else:
                        self.outlet.ponged(m)
                    if not self.entrance.may_say(m):
                        break
        except WsError as e:
            self.tally.add(self.room.loop.now, f"closed the web member from {m.ip}: {e}")
            self.entrance.leave(m, f"broke the WebSocket protocol ({e})", e.sentence, e.code)
            return
        if ping is None or m.stage is Stage.GONE or m.transport.closed:
            return
        if m.stage is Stage.IN_ROOM:
            self.outlet.pong(m, ping)
        else:
            self._tell_unseated(m, ws_frame(ping, WS_PONG))

    def _tell_unseated(self, m: Member, data: bytes) -> None:
        """Write to m, which has no seat in the room yet: if it reads none of
        what it makes the server keep for it (Transport.write), it is closed."""
        if not m.transport.write(data):
            self.tally.add(self.room.loop.now, f"closed {m.ip}: its page read nothing it was "
                                               f"sent (over {KEEP_MOST} bytes waiting)")
            self.entrance.close(m)

    def _text(self, m: Member, payload: bytes) -> None:
        """A text message: its alias, then lines."""
        if m.stage is Stage.NAMING:
            self.entrance.name(m, *split_alias(payload)[:2])
            return
        lines = payload if payload.endswith(b"\n") else payload + b"\n"
        t = m.transport
        if m.stage is Stage.IN_ROOM and t.reading:
            self.entrance.lines(m, t.inbuf + lines if t.inbuf else lines)
        else:   # waiting for its welcome or its rate: no more reads come until then
            t.inbuf += lines

    def act(self, m: Member, text: str) -> bytes:
        """What m's page asks after ACTION_MARK (page_action): the room does
        it, or m is told why not.  A reply's further lines are lines of their
        own: returned, for the server to take as m's next lines, each through
        the gate like any other; "typing" past its rate (the gate's) is
        dropped unsaid."""
        action, room = page_action(text), self.room
        if action is None:
            room.tell(m, NOT_UNDERSTOOD)
            return b""
        act, line_id = action["act"], action["id"]
        if act == "typing":
            if self.gate.may_act(m, "typing"):
                room.typing(m)
        elif act == "react":
            emoji = {"❤": "❤️"}.get(action["emoji"], action["emoji"])
            if emoji not in REACTIONS:
                room.tell(m, NOT_A_REACTION)
            elif self.gate.may_act(m, "react", line_id):
                room.react(m, line_id, emoji)
            else:
                room.tell(m, REACTING_TOO_FAST)
        elif act == "delete":
            room.delete(m, line_id)
        elif act == "edit":   # one line stays one line
            words = clean_text(action["text"].replace("\n", " ")).strip()
            if words:
                room.edit(m, line_id, words)
            else:
                room.tell(m, EDIT_NEEDS_WORDS)
        else:
            lines = [line for line in map(clean_text, action["text"].split("\n")) if line.strip()]
            if lines:
                rest = room.reply(m, line_id, lines, action.get("private") is True)
                return "".join(f"{line}\n" for line in rest).encode()
        return b""

    def _closing(self, m: Member, code: int) -> None:
        """The page closed its socket: a leave, or away (ws_close_is_leave);
        either way its close is answered in kind."""
        if ws_close_is_leave(code):
            self.entrance.leave(m, "left", code=code)
        else:
            m.transport.write(self.outlet.last_words(m, "", code, True))
            self.entrance.lose(m, f"its page closed with {code}")

    def _come_back(self, m: Member, number: str, secret: str, seen: int) -> Member:
        """A page asks for its seat back: its connection becomes its member's,
        which gets what it missed; or it is told why not (`lost`) and names
        itself as new.  The member this connection now serves."""
        member, why = self.outlet.claim(number, secret, seen, self.entrance.find)
        if member is None:
            self._tell_unseated(m, ws_event("lost", text=why))
            return m
        self.entrance.resume(m, member)
        self.outlet.back(member, seen)
        return member


class Handshakes:
    """TLS handshakes, paced: a few steps a loop turn, so that a burst of
    them (each a millisecond or more) never holds members' lines up.
    done(m, failed) once m's handshake has ended: failed is why, or None.
    With --https, page_door is the Doorway's choice at the page's port: TLS
    with the certificate in place, or plain http (`plain`, the server's greet)."""

    PER_TURN = 2

    def __init__(self, loop: Loop, done: Callable[[Member, str | None], None], secure: SecurePage,
                 plain: Callable[[Member], None]):
        self.loop, self.done, self.secure, self.plain = loop, done, secure, plain
        self.waiting: collections.deque = collections.deque()   # members waiting for a step

    def step_soon(self, m: Member) -> None:
        """Queue m's next handshake step; its connection is not watched until then."""
        m.transport.hold()
        self.waiting.append(m)
        if len(self.waiting) == 1:
            self.loop.call_soon(self._steps)

    def _steps(self) -> None:
        for _ in range(min(self.PER_TURN, len(self.waiting))):
            m = self.waiting.popleft()
            if m.stage is Stage.SECURING:
                failed = m.transport.handshake()
                if failed != "":   # "": under way, the next step when its socket is ready
                    self.done(m, failed)
        if self.waiting:   # the rest after the next turn's events
            self.loop.call_soon(self._steps)

    def page_door(self, first: bytes, final: bool) -> Callable[[Member], None]:
        """Where the first bytes at the page's port lead with --https (the Doorway
        asks, untimed): a TLS hello (0x16) to a handshake with the certificate in
        place; anything else, or TLS before it is in place, to plain http."""
        return self._secure if first[:1] == TLS_HELLO[:1] and self.secure.context else self.plain

    def _secure(self, m: Member) -> None:
        m.stage = Stage.SECURING
        m.transport.secure(self.secure.context)
        self.step_soon(m)


class Doorway:
    """Where a new connection waits for its first bytes, which choose its door
    (docs/PROTOCOL.md): a browser speaks first, with its request, and a TLS
    client with its hello; the App never speaks first.

    admit(m, choose) keeps m here.  Each time m's socket has bytes,
    choose(first, final) is asked for its door: a call that takes m in, or
    None while more bytes may still tell.  The bytes are looked at, not
    taken (Transport.peek): the door reads them as its own, so a door may
    still wrap a plain socket in TLS; bytes that did not tell are looked
    at again every AGAIN seconds.  A timed wait ends after `wait` seconds
    with choose(what came, final=True), which names the door for silence or
    for bytes that did not tell; an untimed one waits for bytes (the gate
    closes a connection silent for too long), and its choose must decide
    on any.  Every timed wait is as long, so those waiting are in arrival
    order and one timer, at the oldest one's end, serves them all."""

    AGAIN = 0.01   # seconds until bytes that did not tell are looked at again

    def __init__(self, loop: Loop, wait: float):
        self.loop, self.wait = loop, wait
        self.choosers: dict[Member, Callable] = {}   # waiting here -> its port's choose
        self.ends: dict[Member, float] = {}          # timed -> when its wait ends, oldest first
        self.timer: Timer | None = None

    def admit(self, m: Member, choose: Callable[[bytes, bool], Callable[[Member], None] | None],
              timed: bool = True) -> None:
        """m waits here for its first bytes (for `wait` seconds at most, if `timed`)."""
        m.stage = Stage.OPENING
        self.choosers[m] = choose
        if timed:
            self.ends[m] = self.loop.now + self.wait
            if self.timer is None:
                self.timer = self.loop.call_at(self.ends[m], self._time_up)
        if m.transport.more_held():   # TLS decrypted them already: no event will say so
            self.look(m)

    def look(self, m: Member) -> None:
        """m's socket has something: its door, if what came tells."""
        if m in self.choosers:
            self._choose(m, False)

    def forget(self, m: Member) -> None:
        """m is closed: it waits no more."""
        self.choosers.pop(m, None)
        self.ends.pop(m, None)

    def _choose(self, m: Member, final: bool) -> None:
        first = m.transport.peek()
        door = self.choosers[m](first or b"", final or first is None)
        if door is None:   # more may tell: look again soon (peeked bytes leave it readable)
            m.transport.pause_reading()
            self.loop.call_later(self.AGAIN, self.look, m)
            return
        self.forget(m)
        m.transport.resume_reading()
        door(m)

    def _time_up(self) -> None:
        self.timer = None
        try:
            while self.ends:
                m, end = next(iter(self.ends.items()))
                if end > self.loop.now + TIMER_SLACK:
                    break
                del self.ends[m]
                self._choose(m, True)
        finally:   # the next one's end, even if a door failed
            if self.ends:
                self.timer = self.loop.call_at(next(iter(self.ends.values())), self._time_up)


class Naming:
    """From an alias to a place in line for the welcome: the kind of reader
    its answer shows (at the room's port), the room key checked in its
    address's turn (the gate's key_turn), the name the room gives it.
    keep(m, rest) keeps what it sent after its alias until it is in;
    close(m, farewell="", code=None) turns away what is no alias, or a
    wrong key; page() is where the page is served (None: off), for the log."""

    def __init__(self, loop: Loop, settings: Settings, tally: Tally, gate: Gate, room: Room,
                 keep: Callable[[Member, bytes], None], close: Callable[..., None],
                 page: Callable[[], tuple[str, int] | None]):
        self.loop, self.settings, self.tally, self.gate, self.room = loop, settings, tally, gate, room
        self.keep, self.close, self.page = keep, close, page

    def alias(self, m: Member, data: bytes) -> None:
        """The alias came to the room's port: it says the kind of reader."""
        if wrong := not_a_name(data, self.page()):
            self.tally.add(self.loop.now, f"closed {m.ip}: {wrong}")
            self.close(m)
            return
        raw, rest, line_end = split_alias(data)
        m.kind = Kind.LINE if line_end else Kind.APP
        self.named(m, raw, rest)

    def named(self, m: Member, raw: bytes, rest: bytes) -> None:
        """m's alias is `raw`: then the key, the name, the welcome."""
        m.claimed = decode_line(raw)
        m.named_at = self.loop.now
        self.gate.named(m)
        self.keep(m, rest)   # typed ahead: it waits for the welcome
        m.transport.pause_reading()   # until welcomed: what it types waits in the kernel
        if self.settings.room_key:
            self._check_key(m)
        else:
            self._enter(m)

    def _check_key(self, m: Member) -> None:
        """Check m's room key in its address's turn (the gate's key_turn)."""
        m.stage = Stage.CHECKING
        at = self.gate.key_turn(m.group)
        if at <= self.loop.now:
            self._key_turn(m)
        else:
            self.loop.call_at(at, self._key_turn, m)

    def _key_turn(self, m: Member) -> None:
        if m.stage is not Stage.CHECKING:
            return
        if self.gate.key_right(m):
            self._enter(m)
        else:
            self.close(m, key_refusal(m), WS_POLICY)

    def _enter(self, m: Member) -> None:
        """Name m and put it in line for its welcome."""
        self.room.reserve_name(m, clean_name(split_key(m.claimed)[0]))
        m.forms = alias_forms(m.claimed, m.name)
        self.room.arrive(m, self.gate.welcome_at(m))


class Server:
    """Listens, accepts, hands each connection to its door, reads members and
    dispatches what they say; the gate says who may come in, name
    themselves and speak, the room decides what happens and its outlets
    who is sent what."""

    def __init__(self, settings: Settings, loop: Loop | None = None):
        self.settings = settings
        self.loop = loop or Loop()
        self.terminals = LineOutlet(self.loop, settings, self.drop, self.lose)
        self.apps = AppOutlet(self.loop, settings, self.drop, self.lose)
        self.webs = WebOutlet(self.loop, settings, self.drop, self.lose)
        self.room = Room(self.loop, settings, [self.terminals, self.apps, self.webs],
                         entered=self._listen_again)
        self.tally = Tally(settings.log_summary)
        self.gate = Gate(self.loop, settings, self.tally, self._close)
        self.naming = Naming(self.loop, settings, self.tally, self.gate, self.room, self._keep,
                             self._close, lambda: self.web_address)
        self.door = WebDoor(settings, self.tally, Entrance(
            self.naming.named, self._take_lines, self._too_long, self._may_say, self.drop, self.lose,
            self.room.find, self._close, self._take_over), self.webs, self.gate,
            ChatPage(PAGE_HTML), self.room)
        self.doorway = Doorway(self.loop, settings.door_wait)
        self.connections: set[Member] = set()
        self.listeners: list[tuple[socket.socket, bool]] = []     # (socket, serves the web page)
        self.address: tuple[str, int] = ("", 0)
        self.web_address: tuple[str, int] | None = None
        self.page_problem = ""   # why the page asked for is off (the room opens all the same)
        self.accept_error_logged = False
        self.stopping = False
        self.handshakes = Handshakes(self.loop, self._secured, self.door.secure, self._greet)
        self.tls = None                                  # ssl.SSLContext when encrypting

    # -- start and stop -------------------------------------------------
    def listen(self) -> tuple[str, int]:
        """Bind and listen, and serve the page if asked (if it cannot be, the room opens
        all the same: `page_problem` says why); StartError with a sentence for the person."""
        s = self.settings
        if s.tls_cert:
            self.tls = tls_context(s.tls_cert, s.tls_key)
        self.address = self._listen_on(s.port, web=False)
        self.door.room_listens(self.address[1])
        log.info("listening on %s port %d (up to %d members)", self.address[0],
                 self.address[1], self.gate.fit())
        if s.web_port is not None:
            try:
                self.open_page(s.web_port)
            except StartError as e:   # the banner and the window say it
                self.page_problem = str(e)
        self.loop.call_later(1.0, self._sweep)
        if self.tls:
            log.info("encrypted with TLS: %s", TLS_JOINING.format(FLAG_ADVICE["encrypted"]))
        if s.room_key:
            log.info("this room needs a key: members join as name#KEY")
        if s.history:
            log.info("%s", HISTORY_KEPT.format(s.history))
        return self.address

    def _listen_on(self, port: int, web: bool) -> tuple[str, int]:
        host = self.settings.host
        try:
            sock = open_listener(host, port)
        except OSError as e:
            raise StartError(bind_error_text(e, host, port, in_use=f"{'page ' * web}in use")) from None
        sock.setblocking(False)
        tune_socket(sock, self.settings.keepalive)
        self.listeners.append((sock, web))
        self.loop.watch(sock, EVENT_READ, self._on_accept, (sock, web))
        return sock.getsockname()[:2]

    def _close_listeners(self, which: Callable[[bool], bool]) -> None:
        """Stop listening where which(serves the web page) is true."""
        for sock, web in [(sock, web) for sock, web in self.listeners if which(web)]:
            self.loop.unwatch(sock)
            sock.close()
            self.listeners.remove((sock, web))

    def open_page(self, port: int) -> tuple[str, int]:
        """Serve the chat page on `port` too (0: any free one); StartError if it cannot."""
        if self.web_address is None:
            self.web_address = self._listen_on(port, web=True)
            self.door.photos.page_served(self.web_address[1])
        return self.web_address

    def close_page(self) -> None:
        """Stop serving the page; web members are told and leave the room."""
        self._close_listeners(lambda web: web)
        self.web_address = None
        for m in [m for m in {*self.connections, *self.room.members}
                  if self.room.outlet(m) is self.webs]:
            self.drop(m, "the host turned the web page off",
                      "the host turned the web page off", WS_GOING_AWAY)
        self.door.photos.page_served(None)   # says the page is off

    def serve(self) -> None:
        """Run the loop until stop() has finished."""
        self.loop.run()

    def stop(self) -> None:
        """Tell members the server stops, flush (bounded), close, end the loop."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping")
        self._close_listeners(lambda web: True)
        for m in list(self.connections):
            if m.stage is not Stage.IN_ROOM:
                self._close(m)
            else:
                m.transport.pause_reading()
        self.room.stop()
        self._finish_stop(time.monotonic() + self.settings.stop_flush)

    def _finish_stop(self, deadline: float) -> None:
        if self.room.pending() and time.monotonic() < deadline:
            self.loop.call_later(0.02, self._finish_stop, deadline)
            return
        for m in list(self.connections):
            self._close(m)
        self.tally.flush(time.monotonic(), everything=True)
        log.info("stopped")
        self.loop.stop()

    # -- accepting ------------------------------------------------------
    def _on_accept(self, listening: tuple[socket.socket, bool], _mask: int) -> None:
        """Connections wait at a listening socket: they are taken at the end of this
        turn, after its other events.  select() may report them first, and a member
        who left and came back at once would count twice for its address."""
        self.loop.call_soon(self._accept, listening)

    def _accept(self, listening: tuple[socket.socket, bool]) -> None:
        if listening not in self.listeners:   # closed in this turn
            return
        listener, web = listening
        for _ in range(512):
            try:
                sock, addr = listener.accept()
            except WOULD_BLOCK:
                self.accept_error_logged = False   # backlog drained: the crunch is over
                return
            except OSError as e:
                if errno_is(e, "EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"):
                    self._pause_accepting(e)
                    return
                # a connection that failed before it was accepted; the next may not
                log.debug("accept failed: %s", e)
                continue
            self._admit(sock, plain_ip(addr[0]), addr[1], web)

    def _pause_accepting(self, e: OSError) -> None:
        if not self.accept_error_logged:
            log.error("cannot accept more connections (%s); pausing %.1f s",
                      e.strerror, self.settings.accept_pause)
            self.accept_error_logged = True
        for sock, _ in self.listeners:
            self.loop.unwatch(sock)
        self.loop.call_later(self.settings.accept_pause, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self.stopping:
            for sock, web in self.listeners:
                self.loop.watch(sock, EVENT_READ, self._on_accept, (sock, web))

    def _admit(self, sock: socket.socket, ip: str, port: int, web: bool) -> None:
        group = address_group(ip)
        refusal = self.gate.refusal(ip, group, len(self.connections))
        if refusal is None:
            self._start(sock, ip, port, group, web)
        elif web and refusal and not self.tls and self.gate.may_explain():
            self._start(sock, ip, port, group, web, refusal)   # its page can show why
        else:   # a TLS client could not read a plain line: it only sees the close
            sock.setblocking(False)
            Transport(sock, self.loop).close(b"" if self.tls or web else refusal.encode(),
                                             drain=False)

    def _start(self, sock: socket.socket, ip: str, port: int, group: str, web: bool,
               refusal: str = "") -> None:
        sock.setblocking(False)
        if not OPTIONS_INHERITED:
            tune_socket(sock, self.settings.keepalive)
        try:
            if self.tls:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError:
            sock.close()
            return
        m = Member(ip, group, self.loop.now, Kind.WEB if web else Kind.LINE)
        m.transport = Transport(sock, self.loop, self._on_event, m)
        self.connections.add(m)
        self.gate.let_in(m, refusal)
        log.debug("connection from %s port %d", ip, port)
        if self.tls:
            m.stage = Stage.SECURING
            self.handshakes.step_soon(m)
        else:
            self._ready(m)

    def _secured(self, m: Member, failed: str | None) -> None:
        """m's TLS handshake has ended: then its door."""
        if failed:
            self.tally.add(self.loop.now, f"closed {m.ip}: TLS handshake failed ({failed})", tries=True)
            self._close(m)
        else:
            self._ready(m)

    def _ready(self, m: Member) -> None:
        """m's connection is ready (encrypted, if the room is): at the page's port the
        web door reads its request (with --https, once its first bytes chose TLS or
        http); at the room's its first bytes choose its door."""
        if m.kind is not self.webs.kind:
            self.doorway.admit(m, self._room_door)
        elif self.door.secure.on and not m.transport.encrypted:
            self.doorway.admit(m, self.handshakes.page_door, timed=False)
        else:
            self._greet(m)

    def _room_door(self, first: bytes, final: bool) -> Callable[[Member], None] | None:
        """Where the first bytes at the room's port lead: a browser's request to the
        web door (which sends it on to the page's port: the address the host gave
        out works), a TLS hello to a plain room nowhere; anything else, or nothing
        in time, to the ALIAS prompt."""
        if first.startswith(TLS_HELLO) and not self.tls:
            return self._not_tls
        if browser_request(first):
            return self._to_page
        return None if not final and request_begun(first) else self._greet

    def _to_page(self, m: Member) -> None:
        m.kind = self.webs.kind
        self._greet(m)

    def _not_tls(self, m: Member) -> None:
        self.tally.add(self.loop.now, f"closed {m.ip}: {PLAIN_ROOM}", tries=True)
        self._close(m)

    def _greet(self, m: Member) -> None:
        """m's outlet greets it (ALIAS, or the web door reads its request); what
        came before is read now if TLS decrypted it, else when the socket says so."""
        if not self.room.outlet(m).greet(m):
            self._close(m)
        elif m.transport.unread:
            self._read(m)

    def _sweep(self) -> None:
        """Every second: the gate's sweep and the web door's, then a sum of repeated warnings."""
        self.gate.sweep()
        self.door.sweep()
        self.tally.flush(self.loop.now)
        if not self.stopping:
            self.loop.call_later(1.0, self._sweep)

    # -- events on a member's socket --------------------------------------
    def _on_event(self, m: Member, mask: int) -> None:
        if m.stage is Stage.GONE:   # closed earlier in this same turn
            return
        try:
            if m.stage is Stage.SECURING:
                self.handshakes.step_soon(m)
                return
            if m.stage is Stage.OPENING:
                self.doorway.look(m)
                return
            if mask & EVENT_WRITE:
                self._writable(m)
            if mask & EVENT_READ and m.stage is not Stage.GONE and m.transport.reading:
                self._read(m)
        except Exception as e:   # a bug met by one member costs that member only
            self.loop.fault(f"serving {quoted(m.name) if m.name else m.ip}", e)
            self.drop(m, "internal error", INTERNAL_ERROR, WS_INTERNAL)

    def _writable(self, m: Member) -> None:
        t = m.transport
        if not t.flush():
            self.lose(m, "connection lost while sending")
        elif t.blocked:
            return
        elif m.stage is Stage.IN_ROOM:
            self.room.outlet(m).writable(m)
        elif m.stage is Stage.ANSWERED:
            self._close(m)

    def _read(self, m: Member) -> None:
        t = m.transport
        while True:
            data = t.receive()
            if data is None:
                if t.inbuf and m.stage is Stage.IN_ROOM and m.transport.frame_reader is None \
                        and not m.transport.skipping:
                    self._say(m, t.inbuf)   # a last line without its line end
                self.lose(m, "disconnected")
                return
            if not data:
                return
            if m.stage is Stage.REQUESTING:
                self.door.request(m, data)
            elif m.transport.frame_reader is not None:
                self.door.frames(m, data)
                m = t.owner   # a page back for its seat: its member reads on
            elif m.stage is Stage.NAMING:
                self.naming.alias(m, data)
            else:
                self._take_lines(m, t.inbuf + data if t.inbuf else data)
            if not t.more_held():
                return

    # -- lines ----------------------------------------------------------
    def _listen_again(self, m: Member) -> None:
        """Read m again (it is in, or may speak again), starting with what it sent meanwhile."""
        t = m.transport
        t.resume_reading()
        if t.inbuf:
            data, t.inbuf = t.inbuf, b""
            self._take_lines(m, data)
        if t.reading and t.frame_reader is not None and t.frame_reader.buf:   # frames past the rate
            self.door.frames(m, b"")

    def _take_lines(self, m: Member, buf: bytes) -> None:
        """Relay each whole line in buf; keep the rest; honour the limits."""
        s, t = self.settings, m.transport
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if not self._may_say(m):
                self._keep(m, buf[start:])
                return
            line = buf[start:nl]
            start = nl + 1
            if t.skipping:
                t.skipping = False
            elif len(line) - line.endswith(b"\r") > s.max_line:
                self._too_long(m)
            elif (further := self._say(m, line)) is None:
                return
            elif further:   # a page's reply's further lines: next, each through the gate
                buf, start = further + buf[start:], 0
        rest = buf[start:]
        if len(rest) > s.max_line + 1:
            if not t.skipping:
                t.skipping = True
                self._too_long(m)
            rest = b""
        m.transport.inbuf = rest

    def _keep(self, m: Member, buf: bytes) -> None:
        """Keep what m sent for later: its whole lines, and of an unfinished one
        no more than shows it is too long."""
        whole = buf.rfind(b"\n") + 1
        m.transport.inbuf = buf[:whole] + buf[whole:whole + self.settings.max_line + 2]

    def _too_long(self, m: Member) -> None:
        self.tally.add(self.loop.now, f"{quoted(m.name)} sent a line over {self.settings.max_line} "
                                      f"bytes; not relayed")
        self.room.tell(m, f"your line was longer than {self.settings.max_line} bytes "
                          f"and was not sent\n")

    def _may_say(self, m: Member) -> bool:
        """The gate takes a line from m's rate (with --line-rate); if it has
        none left, stop reading m until it may speak again."""
        wait = self.settings.line_rate and self.gate.line_wait(m)
        if wait and m.resume is None:
            m.transport.pause_reading()
            m.resume = self.loop.call_later(wait, self._resume_reading, m)
        return not wait

    def _resume_reading(self, m: Member) -> None:
        m.resume = None
        if m.stage in (Stage.IN_ROOM, Stage.NAMING) and not self.stopping:
            self._listen_again(m)

    def _say(self, m: Member, raw: bytes) -> bytes | None:
        """Relay one line from m; None if the line was m's goodbye, else the lines
        it hands on as m's next (a page's reply's further lines: WebDoor.act)."""
        text = decode_line(raw)
        if is_leave_line(text, m.forms):
            self.drop(m, "left")
            return None
        if text[:1] == ACTION_MARK and m.transport.frame_reader is not None:
            return self.door.act(m, text[1:])   # a page's reply, reaction, edit, deletion, typing
        if (said := said_text(text, m.forms)) is not None:
            self.room.say(m, said)
        return b""

    def disconnect(self, name: str) -> bool:
        """The host removes a member by name; False if nobody has that name."""
        m = self.room.find(name)
        if m is None or m.name != name or m not in self.room.members:
            return False
        self.drop(m, "disconnected by the host", "you have been disconnected by the host\n",
                  WS_POLICY)
        return True

    # -- closing --------------------------------------------------------
    def drop(self, m: Member, reason: str, farewell: str = "", code: int | None = None) -> None:
        """Close m for good (after `farewell`, and for a web member a close
        frame with `code`); the room hears it left if it was in."""
        if m.stage is Stage.GONE:
            return
        was_in = self.room.leave(m)
        self._close(m, farewell, code, was_in)
        if was_in:
            log.info("%s (%s) left: %s", quoted(m.name), m.ip, reason)
        else:
            log.debug("connection from %s closed: %s", m.ip, reason)

    def lose(self, m: Member, reason: str) -> None:
        """m's connection is gone without a goodbye: its outlet may hold its
        seat (a web member, --web-grace), and it is away; else it leaves."""
        if m.stage is Stage.IN_ROOM and not self.stopping and self.room.outlet(m).hold(m):
            self._hang_up(m)
            self.room.away(m, reason)
        else:
            self.drop(m, reason)

    def _take_over(self, new: Member, m: Member) -> None:
        """m's page is back on `new`'s connection, which becomes m's; an
        older one of m's is closed, with TAKEN_OVER (a phone that moved from
        Wi-Fi to mobile data)."""
        if m in self.connections:
            outlet = self.room.outlet(m)
            self._hang_up(m, outlet.last_words(m, TAKEN_OVER, WS_POLICY, True))
            log.info("%s (%s) carries on over a newer connection", quoted(m.name), m.ip)
        self.gate.named(new)
        self.connections.discard(new)
        new.stage = Stage.GONE
        m.transport, m.ip, m.group = new.transport, new.ip, new.group
        m.transport.hand_over(m)
        self.connections.add(m)
        self.room.back(m)

    def _close(self, m: Member, farewell: str = "", code: int | None = None,
               was_in: bool = False) -> None:
        """Release m's connection, if it still has one (the room is told by drop())."""
        if m.stage is Stage.GONE:
            return
        if m in self.connections:
            outlet = self.room.outlet(m)
            self._hang_up(m, outlet.last_words(m, farewell, code, was_in), outlet.farewell_at(m))
        m.stage = Stage.GONE

    def _hang_up(self, m: Member, last_words: bytes = b"", at: float = 0.0) -> None:
        """Close m's socket (after `last_words`, at `at`) and release its counts."""
        if m.resume:
            m.resume.cancel()
            m.resume = None
        self.gate.let_go(m)
        self.doorway.forget(m)
        m.transport.close(last_words, 0.0 if self.stopping else at)
        self.connections.discard(m)


# ---------------------------------------------------------------------------
# 7. Host addresses
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


def forward_advice(port: int, web_port: int | None = None) -> str:
    ports = f"ports {port} and {web_port}" if web_port else f"port {port}"
    return f"forward TCP {ports} on your router to this machine first"


def invitation(link: str, key: str) -> str:
    """The page's link as friends are given it: with a room key, the key rides in the
    fragment (#key=...), which a browser keeps to itself: no server, log or proxy sees it."""
    return f"{link}#key={urllib.parse.quote(key, safe='')}" if key else link


def next_page_port(settings: Settings) -> int:
    """The port the page gets when it is turned on: --web-port, else the room's
    port + 1 (any free one when the room's is any free one, 0)."""
    if settings.web_port is not None:
        return settings.web_port
    if not settings.port:
        return 0
    return settings.port + 1 if settings.port < 65535 else settings.port - 1


def bind_problem(host: str, port: int, advice: dict = FLAG_ADVICE,
                 held_port: int = 0, in_use: str = "in use") -> str | None:
    """Why this machine cannot listen on host:port, found by binding it for a
    moment; None if it can.  `held_port` is in use by this program: a restart frees it."""
    try:
        open_listener(host, port, backlog=1).close()
    except OSError as e:
        if errno_is(e, "EADDRINUSE") and port == held_port:
            return None
        return bind_error_text(e, host, port, advice, in_use)
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


def every_network() -> str:
    """The listen address for every network (no --host given): `::`, IPv6 and IPv4 on
    one socket, where the system has dual-stack sockets; else 0.0.0.0, IPv4 alone."""
    return "::" if socket.has_dualstack_ipv6() else "0.0.0.0"


IPV6_PROBE = "2000::1"   # global: a UDP connect toward it picks the way out and sends nothing
# /proc/net/if_inet6's flags of an address not to give out: a temporary (privacy) address,
# one whose duplicate check failed, one being retired (deprecated), one still being checked
IFA_F_TEMPORARY, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE = 0x01, 0x08, 0x20, 0x40
NOT_GIVEN_OUT = IFA_F_TEMPORARY | IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE
# IPv6 addresses the internet cannot reach, whatever this Python's ipaddress thinks of them
NOT_INTERNET6 = tuple(ipaddress.ip_network(n) for n in (
    "fc00::/7", "fe80::/10", "2001:db8::/32", "::ffff:0:0/96", "::/8", "ff00::/8"))


def internet_ipv6_address(ip: str) -> bool:
    """True for an IPv6 address friends on the internet can reach: global, never
    link-local, unique-local (fc00::/7), documentation (2001:db8::/32) or IPv4-mapped."""
    try:
        address = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_global and not any(address in network for network in NOT_INTERNET6)


def if_inet6_rows(text: str) -> list[tuple[str, int, int, int, str]]:
    """Linux's /proc/net/if_inet6 as (address, interface index, prefix length, flags,
    interface name) rows."""
    rows = []
    for row in text.splitlines():
        f = row.split()
        try:
            rows.append((str(ipaddress.IPv6Address(bytes.fromhex(f[0]))), int(f[1], 16),
                         int(f[2], 16), int(f[4], 16), f[5]))
        except (IndexError, ValueError):
            continue
    return rows


def stable_ipv6(chosen: str, if_inet6: str) -> str | None:
    """The IPv6 address to give friends, from the one the system chose to reach the
    internet (`chosen`) and Linux's list of this machine's addresses: that one if it is
    global and stable; else a stable global one on its interface, in its network
    first; never a temporary, deprecated or tentative one.  None if there is none."""
    chosen = chosen.split("%", 1)[0]
    if not internet_ipv6_address(chosen):   # the way out is not over the internet's IPv6
        return None
    rows = if_inet6_rows(if_inet6)
    mine = next((row for row in rows if row[0] == chosen), None)
    if mine is None:   # not listed: the system's choice is all there is to go by
        return chosen
    usable = [row for row in rows if row[4] == mine[4] and not row[3] & NOT_GIVEN_OUT
              and internet_ipv6_address(row[0])]
    network = ipaddress.ip_network(f"{chosen}/{mine[2]}", strict=False)
    usable.sort(key=lambda row: (row != mine, ipaddress.ip_address(row[0]) not in network))
    return usable[0][0] if usable else None


def internet_ipv6() -> str | None:
    """This machine's IPv6 address on the internet, for friends to join at: the one
    the system would use to reach it (nothing is sent), a stable one rather than a
    temporary one where the system tells them apart (Linux); None if it has none."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.connect((IPV6_PROBE, 9))
            chosen = s.getsockname()[0]
    except OSError:   # no IPv6 here, or no way out over it
        return None
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            return stable_ipv6(chosen, f.read())
    except OSError:   # not Linux: take what the system gives
        return chosen if internet_ipv6_address(chosen) else None


def ipv6_host(host: str, ipv6: str | None) -> str | None:
    """The IPv6 address friends on the internet join a room listening on `host` at:
    this machine's `ipv6` on every network (`::`), the listen address when it is one
    such address itself; None for a room on IPv4 alone (0.0.0.0) or on this machine."""
    if host == "::":
        return ipv6
    return host if internet_ipv6_address(host) else None


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


# Who each address is for, and what to do when the internet address is not known:
# the banner and the window say it alike.
CHAT_FOR = "for the App or a terminal"
PAGE_FOR = "for a browser or a phone"
IPV6_CHAT_FOR = "IPv6, for a terminal: the App cannot use it, its address box takes IPv4 only"
IPV6_FIREWALL = "your router's firewall must let TCP {ports} in ({how})"   # IPv6, without --upnp
LOOK_UP_FAILED = ("this machine's internet address could not be looked up; "
                  "your router's status page shows it")


def look_up_failure(e: Exception) -> str:
    """Why a look-up failed, for the log file: the reason's words, without an errno."""
    reason = getattr(e, "reason", e)
    return getattr(reason, "strerror", None) or str(reason)


def look_up_public_ip(url: str, done: Callable[[str | None], None]) -> None:
    """Fetch the public IP in a background thread; call done(ip or None) there.
    A failure is the host's to hear (LOOK_UP_FAILED) and the log file's."""
    def work():
        try:
            ip = fetch_public_ip(url)
        except (OSError, ValueError) as e:
            log.info("public IP not looked up at %s (%s)", url, look_up_failure(e))
            done(None)
            return
        log.info("public IPv4: %s", ip)
        done(ip)
    threading.Thread(target=work, name="public-ip", daemon=True).start()


# ---------------------------------------------------------------------------
# 8. The router client
# ---------------------------------------------------------------------------
# Asking the router to forward the room's ports (--upnp).  Three ways to ask,
# tried at once; whichever answers first and works is used: PCP (RFC 6887) and
# NAT-PMP (RFC 6886) on the default gateway's UDP 5351, and UPnP-IGD, found
# with SSDP.  Over IPv6 nothing is translated, but the router's firewall keeps
# friends out: Pinholes asks it to let the same ports in (a pinhole each), with
# UPnP IGDv2's WANIPv6FirewallControl or PCP sent over IPv6 to the router.
# Pure functions build and read every packet, SOAP body and sentence;
# RouterPorts does the talking, bounded in time.  Answers are believed only
# from the gateway or this machine's own network, and only the room's own
# ports are ever mapped, to this machine's own address.

PORT_CONTROL = 5351                # PCP and NAT-PMP share the gateway's port
SSDP_GROUP = ("239.255.255.250", 1900)
SSDP_GROUP6 = ("ff02::c", 1900)    # IPv6: this link's SSDP group
FIREWALL_SERVICE = "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1"   # IGDv2's pinholes
PINHOLE_LEASE_MOST = 86400         # seconds: the longest pinhole IGDv2 allows
IGD_DEVICES = ("urn:schemas-upnp-org:device:InternetGatewayDevice:2",
               "urn:schemas-upnp-org:device:InternetGatewayDevice:1")
IGD_SERVICES = ("urn:schemas-upnp-org:service:WANIPConnection:2",   # the best first
                "urn:schemas-upnp-org:service:WANIPConnection:1",
                "urn:schemas-upnp-org:service:WANPPPConnection:1")
ROUTER_LEASE = 3600.0              # seconds a mapping lives unless renewed
ROUTER_WAIT = 3.0                  # "no answer within a few seconds"
ROUTER_OPEN_TIME = 8.5             # RouterPorts.open(), however many routers answer (+1 s to undo)
ROUTER_PROTOCOLS = ("PCP", "NAT-PMP", "UPnP")
PINHOLE_PROTOCOLS = ("PCP", "UPnP")   # the ways to ask for IPv6 pinholes
LINK_LOCAL = ipaddress.ip_network("fe80::/10")   # IPv6: this link, whoever is on it
DESCRIPTION_LIMIT = 64 * 1024      # bytes of a UPnP description or SOAP answer
MAPPING_NAME = "PrivateChatRoom"
RTF_UP, RTF_GATEWAY = 0x1, 0x2     # /proc/net/route's flags
# Addresses the internet cannot reach: a router with one of these has no public address.
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12",
                                                            "192.168.0.0/16"))   # RFC 1918
SHARED_ADDRESSES = ipaddress.ip_network("100.64.0.0/10")   # RFC 6598: carriers' own NAT
NOT_INTERNET = PRIVATE_NETWORKS + (SHARED_ADDRESSES, *(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3")))
NATPMP_RESULTS = {1: "unsupported version", 2: "not authorized or refused",
                  3: "network failure", 4: "out of resources", 5: "unsupported opcode"}
PCP_RESULTS = {1: "unsupported version", 2: "not authorized", 3: "malformed request",
               4: "unsupported opcode", 5: "unsupported option", 6: "malformed option",
               7: "network failure", 8: "no resources", 9: "unsupported protocol",
               10: "user exceeded quota", 11: "cannot provide external address",
               12: "address mismatch", 13: "excessive remote peers"}
NATPMP_NETWORK_FAILURE, PCP_NETWORK_FAILURE = 3, 7   # what miniupnpd says without a public address
PCP_UNSUPPORTED_VERSION, PCP_ANNOUNCE, PCP_MAP, TCP = 1, 0, 1, 6


class RouterRefused(Exception):
    """A router answered but would not (or could not) forward; `no_public`: it has
    no public address to offer (CGNAT or a second router)."""

    def __init__(self, protocol: str, reason: str, no_public: bool = False):
        super().__init__(f"{protocol}: {reason}")
        self.protocol, self.reason, self.no_public = protocol, reason, no_public


# -- routes: the default gateway and this machine's own network --------------
def proc_routes(text: str) -> list[tuple[ipaddress.IPv4Network, str | None, int]]:
    """Linux's /proc/net/route as (network, gateway or None when on-link, metric)."""
    def address(hex_text: str) -> str:
        return str(ipaddress.IPv4Address(struct.pack("<I", int(hex_text, 16))))
    routes = []
    for row in text.splitlines()[1:]:
        f = row.split()
        try:
            flags, metric = int(f[3], 16), int(f[6])
            network = ipaddress.IPv4Network(f"{address(f[1])}/{address(f[7])}", strict=False)
            gateway = address(f[2])
        except (IndexError, ValueError):
            continue
        if flags & RTF_UP:
            routes.append((network, gateway if flags & RTF_GATEWAY else None, metric))
    return routes


def route_print_routes(text: str) -> list[tuple[ipaddress.IPv4Network, str | None, int]]:
    """Windows' `route print -4` (active routes) in the same form; 'On-link' has no gateway."""
    routes = []
    for row in text.split("Persistent Routes")[0].splitlines():
        f = row.split()
        try:
            network = ipaddress.IPv4Network(f"{f[0]}/{f[1]}", strict=False)
            ipaddress.IPv4Address(f[3])
            metric = int(f[4])
        except (IndexError, ValueError):
            continue
        gateway = f[2] if re.fullmatch(r"[0-9.]+", f[2]) else None
        routes.append((network, gateway, metric))
    return routes


def route_get_routes(text: str) -> list[tuple[ipaddress.IPv4Network, str | None, int]]:
    """macOS's `route -n get default` (or `-inet6 default`): the default route alone; an
    IPv6 link-local gateway keeps its interface (fe80::1%en0)."""
    found = re.search(r"^\s*gateway:\s*([0-9A-Fa-f.:]+(%\w+)?)\s*$", text, re.MULTILINE)
    if not found:
        return []
    gateway = found.group(1)
    return [(ipaddress.ip_network("::/0" if ":" in gateway else "0.0.0.0/0"), gateway, 0)]


def proc_routes6(text: str) -> list[tuple[ipaddress.IPv6Network, str | None, int]]:
    """Linux's /proc/net/ipv6_route in the same form; a link-local gateway keeps its
    interface (fe80::1%eth0): without it, it cannot be reached."""
    routes = []
    for row in text.splitlines():
        f = row.split()
        try:
            network = ipaddress.IPv6Network((bytes.fromhex(f[0]), int(f[1], 16)))
            gateway = ipaddress.IPv6Address(bytes.fromhex(f[4]))
            metric, flags = int(f[5], 16), int(f[8], 16)
        except (IndexError, ValueError):
            continue
        if flags & RTF_UP:
            scope = f"%{f[9]}" if gateway.is_link_local and len(f) > 9 else ""
            routes.append((network, f"{gateway}{scope}" if flags & RTF_GATEWAY else None, metric))
    return routes


def route_print_routes6(text: str) -> list[tuple[ipaddress.IPv6Network, str | None, int]]:
    """Windows' `route print -6` (active routes): If, Metric, Network Destination, Gateway."""
    routes = []
    for row in text.split("Persistent Routes")[0].splitlines():
        f = row.split()
        try:
            interface, metric, network = int(f[0]), int(f[1]), ipaddress.IPv6Network(f[2])
            gateway = ipaddress.IPv6Address(f[3]) if f[3] != "On-link" else None
        except (IndexError, ValueError):
            continue
        scope = f"%{interface}" if gateway and gateway.is_link_local else ""
        routes.append((network, f"{gateway}{scope}" if gateway else None, metric))
    return routes


ROUTE_COMMANDS = {   # (platform, IP version) -> the command that lists its routes, and its reader
    ("win32", 4): (["route", "print", "-4"], route_print_routes),
    ("win32", 6): (["route", "print", "-6"], route_print_routes6),
    ("darwin", 4): (["route", "-n", "get", "default"], route_get_routes),
    ("darwin", 6): (["route", "-n", "get", "-inet6", "default"], route_get_routes)}


def read_routes(version: int = 4) -> list[tuple]:
    """This machine's IPv4 (or IPv6) routes, read with the standard library; [] where unknown."""
    try:
        if sys.platform.startswith("linux"):
            path, parse = (("/proc/net/route", proc_routes) if version == 4
                           else ("/proc/net/ipv6_route", proc_routes6))
            with open(path, encoding="ascii") as f:
                return parse(f.read())
        command, parse = ROUTE_COMMANDS.get((sys.platform, version), (None, None))
        if command:
            out = subprocess.run(command, capture_output=True, text=True, errors="replace",
                                 timeout=ROUTER_WAIT).stdout
            return parse(out)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        log.warning("could not read this machine's routes (%s)", e)
    return []


def default_gateway(routes: list) -> str | None:
    """The gateway of the default route with the lowest metric, or None."""
    defaults = [(metric, gateway) for network, gateway, metric in routes
                if network.prefixlen == 0 and gateway]
    return min(defaults)[1] if defaults else None


def own_networks(routes: list, lan_ip: str) -> list[ipaddress.IPv4Network]:
    """The on-link networks holding `lan_ip`; its /24 (IPv6: /64) where the routes do not say."""
    ip = ipaddress.ip_address(lan_ip)
    found = [network for network, gateway, _ in routes
             if gateway is None and network.prefixlen > 0 and ip in network]
    return found or [ipaddress.ip_network(f"{lan_ip}/{24 if ip.version == 4 else 64}", strict=False)]


def lan_address(gateway: str) -> str:
    """This machine's address toward `gateway` (a UDP connect picks it; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((gateway, PORT_CONTROL))
        return s.getsockname()[0]


def answer_allowed(ip: str, gateway: str | None, networks: list) -> bool:
    """May a discovery answer from `ip` be believed: the gateway, or this machine's network?"""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return ip == (gateway or "").split("%", 1)[0] or any(
        address in network for network in networks if network.version == address.version)


def public_address(ip: str) -> bool:
    """True for an address the internet can reach: IPv4 neither private, shared nor
    empty; IPv6 global (internet_ipv6_address)."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return internet_ipv6_address(ip)
    return not any(address in network for network in NOT_INTERNET)


# -- NAT-PMP and PCP packets ---------------------------------------------------
def natpmp_address_request() -> bytes:
    """NAT-PMP: "what is your external address?" (RFC 6886 3.2); maps nothing."""
    return b"\x00\x00"


def natpmp_map_request(port: int, external_port: int, lifetime: int) -> bytes:
    """NAT-PMP: forward TCP `external_port` to `port` here for `lifetime` s (0: remove, RFC 6886 3.4)."""
    return struct.pack("!BBHHHI", 0, 2, 0, port, external_port if lifetime else 0, lifetime)


def natpmp_answer(data: bytes, opcode: int, size: int) -> tuple[int, bytes]:
    """(result code, the body after the epoch) of a NAT-PMP answer to `opcode`;
    ValueError if `data` is not one."""
    if len(data) < 4 or data[0] != 0 or data[1] != 128 + opcode:
        raise ValueError("not a NAT-PMP answer")
    result = struct.unpack("!H", data[2:4])[0]
    if result == 0 and len(data) < size:
        raise ValueError("a short NAT-PMP answer")
    return result, data[8:size]


def natpmp_address(data: bytes) -> tuple[int, str]:
    """(result code, external address) of an answer to natpmp_address_request()."""
    result, body = natpmp_answer(data, 0, 12)
    return result, str(ipaddress.IPv4Address(body)) if result == 0 else ""


def natpmp_mapping(data: bytes) -> tuple[int, int, int, int]:
    """(result code, internal port, external port, lifetime) of a TCP mapping answer."""
    result, body = natpmp_answer(data, 2, 16)
    return (result, *struct.unpack("!HHI", body)) if result == 0 else (result, 0, 0, 0)


def pcp_address(ip: str) -> bytes:
    """An address as PCP carries it, 16 bytes: IPv6 as it is, IPv4 as IPv4-mapped IPv6."""
    return ipaddress.IPv6Address(ip if ":" in ip else f"::ffff:{ip}").packed


def pcp_map_request(client_ip: str, port: int, external_port: int, lifetime: int,
                    nonce: bytes, exact: bool = False) -> bytes:
    """PCP MAP (RFC 6887 11.1): forward TCP to client_ip:port, suggesting `external_port`
    (`exact`: that port or none, with the PREFER_FAILURE option, 13.2); for an IPv6
    client_ip, a pinhole: the router's firewall lets that port in to it."""
    header = struct.pack("!BBHI16s", 2, PCP_MAP, 0, lifetime, pcp_address(client_ip))
    return header + struct.pack("!12sB3xHH16s", nonce, TCP, port, external_port,
                                pcp_address("::" if ":" in client_ip else "0.0.0.0")) + (
        b"\x02\x00\x00\x00" if exact else b"")


def pcp_announce_request(client_ip: str) -> bytes:
    """PCP ANNOUNCE (RFC 6887 14.1): "do you speak PCP?"; maps nothing."""
    return struct.pack("!BBHI16s", 2, PCP_ANNOUNCE, 0, 0, pcp_address(client_ip))


def pcp_mapping(data: bytes, nonce: bytes) -> tuple[int, int, int, int, str]:
    """(result code, internal port, external port, lifetime, external address) of a PCP
    MAP answer to `nonce`; ValueError if it is none.  A NAT-PMP-only gateway answers
    PCP with NAT-PMP's "unsupported version": that is result 1 here too."""
    if len(data) >= 4 and data[0] == 0 and data[1] == 128 + PCP_MAP:
        return PCP_UNSUPPORTED_VERSION, 0, 0, 0, ""
    if len(data) < 24 or data[0] != 2 or data[1] != 128 + PCP_MAP:
        raise ValueError("not a PCP MAP answer")
    result, lifetime = data[3], struct.unpack("!I", data[4:8])[0]
    if len(data) >= 36 and data[24:36] != nonce:
        raise ValueError("the answer to another request")
    if result:
        return result, 0, 0, 0, ""
    if len(data) < 60:
        raise ValueError("a short PCP answer")
    _, protocol, port, external_port, external = struct.unpack("!12sB3xHH16s", data[24:60])
    if protocol != TCP:
        raise ValueError("the answer to another request")
    external = ipaddress.IPv6Address(external)
    shown = external.ipv4_mapped or ("" if external.is_unspecified else external)
    return result, port, external_port, lifetime, str(shown)


def udp_exchange(sock: socket.socket, request: bytes, read: Callable, deadline: float):
    """Send `request` on a connected socket until read(answer) accepts one (it raises
    ValueError for anything else), resending after 250 ms, then twice as long each
    time (RFC 6886 3.1); TimeoutError at `deadline`."""
    wait = 0.25
    while (left := deadline - time.monotonic()) > 0:
        sock.send(request)
        until = time.monotonic() + min(wait, left)
        while (rest := until - time.monotonic()) > 0:
            sock.settimeout(rest)
            try:
                return read(sock.recv(1100))
            except socket.timeout:
                break
            except ValueError:
                continue
        wait *= 2
    raise TimeoutError("no answer")


# -- UPnP-IGD: SSDP, the description, SOAP ------------------------------------
class UpnpError(Exception):
    """A UPnP action's fault: its error code and description."""

    def __init__(self, code: int, description: str):
        super().__init__(f"{description or 'error'} ({code})")
        self.code, self.description = code, description


def ssdp_search(target: str, group: tuple = SSDP_GROUP) -> bytes:
    """An SSDP M-SEARCH for `target` (UPnP Device Architecture 1.1, 1.3.2; 2.0 over IPv6)."""
    return (f"M-SEARCH * HTTP/1.1\r\nHOST: {host_port(*group[:2])}\r\n"
            f"MAN: \"ssdp:discover\"\r\nMX: 2\r\nST: {target}\r\n\r\n").encode("ascii")


def ssdp_group(sock: socket.socket, lan_ip: str, interface: int = 0) -> tuple:
    """Make `sock` search from `lan_ip` on this network alone (2 hops); the SSDP group
    to search: IPv4's, or IPv6's link-local one on `interface` (0: the system's choice)."""
    if ":" in lan_ip:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 2)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, interface)
        group = (*SSDP_GROUP6, 0, interface)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(lan_ip))
        group = SSDP_GROUP
    sock.bind((lan_ip, 0))
    return group


def ssdp_location(data: bytes) -> str | None:
    """The LOCATION of an SSDP search answer (HTTP/1.1 200), or None."""
    lines = data.decode("latin-1").split("\r\n")
    if not re.fullmatch(r"HTTP/1\.[01] 200( .*)?", lines[0]):
        return None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "location":
            value = value.strip()   # shown in the log if refused: printable ASCII only
            return value if value and value.isascii() and value.isprintable() else None
    return None


def url_on_host(url: str, host: str) -> tuple[int, str] | None:
    """(port, path) when `url` is plain http on `host` itself (an IP, as answered),
    else None: a description or control URL may not send us anywhere else."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 80
    except ValueError:
        return None
    if parts.scheme != "http" or (parts.hostname or "").split("%", 1)[0] != host.split("%", 1)[0] \
            or parts.username or parts.password:
        return None
    return port, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def xml_root(text: bytes) -> ElementTree.Element:
    """Parsed XML; ValueError if it is not XML or declares a DOCTYPE or entities (a
    router never needs them, and they can blow up or leak).  A first pass with
    expat's own handlers finds them in any encoding, before anything is expanded."""
    def refuse(*_) -> None:
        raise ValueError("XML with a DOCTYPE or entities is refused")
    scan = xml.parsers.expat.ParserCreate()
    scan.StartDoctypeDeclHandler = scan.EntityDeclHandler = refuse
    try:
        scan.Parse(text, True)
        return ElementTree.fromstring(text)
    except (xml.parsers.expat.ExpatError, ElementTree.ParseError) as e:
        raise ValueError(f"not XML ({e})") from None


def local_name(element: ElementTree.Element) -> str:
    return element.tag.rpartition("}")[2]


def igd_service(description: bytes, location: str,
                services: tuple[str, ...] = IGD_SERVICES) -> tuple[str, str] | None:
    """(service type, control URL) of the best of `services` (a WAN connection) in a
    device description, or None; URLs resolve against URLBase or `location`."""
    root = xml_root(description)
    base = next((e.text.strip() for e in root.iter() if local_name(e) == "URLBase" and e.text),
                location)
    offered = {}
    for service in (e for e in root.iter() if local_name(e) == "service"):
        fields = {local_name(child): (child.text or "").strip() for child in service}
        if fields.get("serviceType") in services and fields.get("controlURL"):
            offered.setdefault(fields["serviceType"], urllib.parse.urljoin(base, fields["controlURL"]))
    for service in services:
        if service in offered:
            return service, offered[service]
    return None


def soap_body(service: str, action: str, arguments: dict[str, str | int]) -> bytes:
    """The SOAP envelope for a UPnP action (arguments in the order given)."""
    inner = "".join(f"<{name}>{xml_escape(str(value))}</{name}>" for name, value in arguments.items())
    return ('<?xml version="1.0"?>\r\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action} xmlns:u="{service}">{inner}</u:{action}></s:Body></s:Envelope>\r\n'
            ).encode("utf-8")


def xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def soap_answer(body: bytes, action: str) -> dict[str, str]:
    """The out-arguments of a SOAP answer to `action`; UpnpError for a fault,
    ValueError for anything else."""
    root = xml_root(body)
    for element in root.iter():
        if local_name(element) == f"{action}Response":
            return {local_name(child): (child.text or "").strip() for child in element}
        if local_name(element) == "UPnPError":
            fields = {local_name(child): (child.text or "").strip() for child in element}
            code = fields.get("errorCode", "")
            raise UpnpError(int(code) if code.isdigit() else 0,
                            clean_text(fields.get("errorDescription", ""))[:100])
    raise ValueError(f"no answer to {action}")


def http_exchange(host: str, port: int, path: str, deadline: float, body: bytes | None = None,
                  headers: dict[str, str] | None = None, source: str = "") -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.0 GET (or POST of `body`) to host:port from the
    address `source` (the system's choice if ""): no redirect is followed, at most
    DESCRIPTION_LIMIT bytes are read (ValueError past that), and TimeoutError comes
    at `deadline`."""
    lines = [f"{'GET' if body is None else 'POST'} {path} HTTP/1.0",
             f"Host: {host_port(host.split('%', 1)[0], port)}",
             "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
    with socket.create_connection((host, port), timeout=time_left(deadline),
                                  source_address=(source, 0) if source else None) as sock:
        sock.sendall(request)
        reply = b""
        while not http_reply_complete(reply):
            sock.settimeout(time_left(deadline))
            chunk = sock.recv(DESCRIPTION_LIMIT + 1 - len(reply))
            if not chunk:
                break
            reply += chunk
            if len(reply) > DESCRIPTION_LIMIT:
                raise ValueError(f"an answer of more than {DESCRIPTION_LIMIT} bytes")
    return http_reply(reply)


def time_left(deadline: float) -> float:
    """Seconds until `deadline`; TimeoutError if none are left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no answer in time")
    return left


def content_length(head: bytes) -> int | None:
    size = re.search(rb"^content-length:[ \t]*(\d+)[ \t]*\r?$", head, re.IGNORECASE | re.MULTILINE)
    return int(size.group(1)) if size else None


def http_reply_complete(reply: bytes) -> bool:
    """True once `reply` holds its head and all the Content-Length it announces."""
    head, found, body = reply.partition(b"\r\n\r\n")
    size = content_length(head)
    return bool(found) and size is not None and len(body) >= size


def http_reply(reply: bytes) -> tuple[int, bytes]:
    """(status, body) of a whole HTTP reply; ValueError if it is not one."""
    head, found, body = reply.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not found or not status:
        raise ValueError("not an HTTP answer")
    size = content_length(head)
    return int(status.group(1)), body if size is None else body[:size]


# -- the ways to ask: the gateway's port 5351 (PCP, NAT-PMP), UPnP-IGD ---------
class PortControl:
    """The gateway's UDP 5351: PCP, or NAT-PMP where the gateway speaks only that."""

    def __init__(self, gateway: str, lan_ip: str, protocols: tuple):
        self.gateway, self.lan_ip = gateway, lan_ip
        self.kinds = [kind for kind in ("PCP", "NAT-PMP") if kind in protocols]
        self.name = self.kinds[0]
        self.nonce = os.urandom(12)          # PCP: names our mappings, to renew and remove them
        self.external_ip: str | None = None   # as the gateway says it; "": it has none

    def exchange(self, request: bytes, read: Callable, deadline: float, port: int = 0):
        """read(the gateway's answer) to `request`; an answer that names another
        internal port than `port` (if given) is not ours."""
        def ours(data: bytes):
            answer = read(data)
            if port and answer[0] == 0 and answer[1] != port:
                raise ValueError("the answer about another port")
            return answer
        family = socket.AF_INET6 if ":" in self.lan_ip else socket.AF_INET
        gateway = socket.getaddrinfo(self.gateway, PORT_CONTROL, family, socket.SOCK_DGRAM,
                                     flags=socket.AI_NUMERICHOST)[0][4]   # fe80::1%eth0 too
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((self.lan_ip, 0))
            sock.connect(gateway)   # only the gateway's answers arrive
            return udp_exchange(sock, request, ours, deadline)

    def forward(self, port: int, wanted: int, lease: int, deadline: float,
                exact: bool = False) -> tuple[int, int]:
        """(external port, seconds granted) of a mapping to our `port`; RouterRefused if not.
        `exact`: PCP maps `wanted` or nothing (NAT-PMP cannot say so)."""
        if self.name == "PCP":
            result, _, external_port, lifetime, external_ip = self.exchange(
                pcp_map_request(self.lan_ip, port, wanted, lease, self.nonce, exact),
                lambda data: pcp_mapping(data, self.nonce), deadline, port)
            if result == PCP_UNSUPPORTED_VERSION and "NAT-PMP" in self.kinds:
                self.name = "NAT-PMP"
                return self.forward(port, wanted, lease, deadline)
            if result:
                raise RouterRefused("PCP", PCP_RESULTS.get(result, f"error {result}"),
                                    no_public=result == PCP_NETWORK_FAILURE)
            self.external_ip = external_ip
            return external_port, lifetime
        result, _, external_port, lifetime = self.exchange(
            natpmp_map_request(port, wanted, lease), natpmp_mapping, deadline, port)
        if result:
            raise RouterRefused("NAT-PMP", NATPMP_RESULTS.get(result, f"error {result}"),
                                no_public=result == NATPMP_NETWORK_FAILURE)
        return external_port, lifetime

    def renew(self, port: int, external_port: int, lease: int, deadline: float) -> tuple[int, int]:
        return self.forward(port, external_port, lease, deadline)

    def remove(self, port: int, external_port: int, deadline: float) -> None:
        """Remove our mapping of `port` (lifetime 0; PCP: only the one with our nonce)."""
        if self.name == "PCP":
            result = self.exchange(pcp_map_request(self.lan_ip, port, external_port, 0, self.nonce),
                                   lambda data: pcp_mapping(data, self.nonce), deadline, port)[0]
        else:
            result = self.exchange(natpmp_map_request(port, 0, 0), natpmp_mapping, deadline, port)[0]
        if result:
            raise RouterRefused(self.name, (PCP_RESULTS if self.name == "PCP" else
                                            NATPMP_RESULTS).get(result, f"error {result}"))

    def external_address(self, deadline: float) -> str | None:
        return self.external_ip


def port_control_probe(data: bytes) -> tuple[int, str | None]:
    """(result, external address: "" if none) of the gateway's answer to
    natpmp_address_request() (or, over IPv6, pcp_announce_request()); a PCP-only
    gateway answers in PCP's format, saying no address (None), and PCP will then do."""
    if len(data) >= 4 and data[0] == 2:
        return 0, None
    result, external_ip = natpmp_address(data)
    return result, external_ip if result in (0, NATPMP_NETWORK_FAILURE) else None


def find_port_control(gateway: str, lan_ip: str, protocols: tuple,
                      deadline: float) -> PortControl | None:
    """The gateway's PCP/NAT-PMP service, if it answers within ROUTER_WAIT; it maps nothing.
    Over IPv6 (`lan_ip` an IPv6 address) only PCP is asked."""
    way = PortControl(gateway, lan_ip, protocols)
    try:
        _, way.external_ip = way.exchange(
            pcp_announce_request(lan_ip) if ":" in lan_ip else natpmp_address_request(),
            port_control_probe, min(deadline, time.monotonic() + ROUTER_WAIT))
    except OSError:   # no answer in time, or nothing listens (ICMP port unreachable)
        return None
    return way


class UpnpIgd:
    """A router's WAN connection service (UPnP-IGD), spoken to with SOAP from lan_ip."""

    name = "UPnP"
    TARGETS, SERVICES = IGD_DEVICES, IGD_SERVICES   # what SSDP searches for; what is used

    def __init__(self, host: str, port: int, path: str, service: str, lan_ip: str):
        self.host, self.port, self.path, self.service, self.lan_ip = host, port, path, service, lan_ip

    def call(self, action: str, arguments: dict, deadline: float) -> dict[str, str]:
        """One SOAP action; its out-arguments, UpnpError for its fault."""
        headers = {"Content-Type": 'text/xml; charset="utf-8"',
                   "SOAPAction": f'"{self.service}#{action}"'}
        status, body = http_exchange(self.host, self.port, self.path,
                                     min(deadline, time.monotonic() + ROUTER_WAIT),
                                     soap_body(self.service, action, arguments), headers, self.lan_ip)
        if status not in (200, 500):
            raise ValueError(f"HTTP {status} to {action}")
        return soap_answer(body, action)

    def mapping(self, port: int, external_port: int, lease: int) -> dict:
        return {"NewRemoteHost": "", "NewExternalPort": external_port, "NewProtocol": "TCP",
                "NewInternalPort": port, "NewInternalClient": self.lan_ip, "NewEnabled": 1,
                "NewPortMappingDescription": MAPPING_NAME, "NewLeaseDuration": lease}

    def holder(self, external_port: int, deadline: float) -> str | None:
        """Who the router already forwards `external_port` to, or None if nobody."""
        try:
            entry = self.call("GetSpecificPortMappingEntry", {
                "NewRemoteHost": "", "NewExternalPort": external_port, "NewProtocol": "TCP"}, deadline)
        except UpnpError:   # 714 NoSuchEntryInArray: free
            return None
        return f"{entry.get('NewInternalClient', '?')}:{entry.get('NewInternalPort', '?')}"

    def forward(self, port: int, wanted: int, lease: int, deadline: float,
                exact: bool = False) -> tuple[int, int]:
        """(external port, lease) of a new mapping to our `port`.  A port the router
        already forwards (to anyone) is left alone: IGDv2 picks another (unless `exact`),
        v1 refuses."""
        try:
            holder = self.holder(wanted, deadline)
            if holder is None:
                self.call("AddPortMapping", self.mapping(port, wanted, lease), deadline)
                return wanted, lease
            if exact or not self.service.endswith(":2"):
                raise RouterRefused("UPnP", f"its port {wanted} already goes to {holder}; "
                                            f"that mapping is not ours and is left alone")
            got = self.call("AddAnyPortMapping", self.mapping(port, wanted % 65535 + 1, lease), deadline)
            return int(got.get("NewReservedPort", "")), lease
        except UpnpError as e:
            raise RouterRefused("UPnP", upnp_reason(e)) from None

    def renew(self, port: int, external_port: int, lease: int, deadline: float) -> tuple[int, int]:
        try:
            self.call("AddPortMapping", self.mapping(port, external_port, lease), deadline)
        except UpnpError as e:
            raise RouterRefused("UPnP", upnp_reason(e)) from None
        return external_port, lease

    def remove(self, port: int, external_port: int, deadline: float) -> None:
        """Remove our mapping, if it still is ours: one that ran out may be another's now."""
        if self.holder(external_port, deadline) != f"{self.lan_ip}:{port}":
            return
        try:
            self.call("DeletePortMapping", {"NewRemoteHost": "", "NewExternalPort": external_port,
                                            "NewProtocol": "TCP"}, deadline)
        except UpnpError as e:
            raise RouterRefused("UPnP", upnp_reason(e)) from None

    def external_address(self, deadline: float) -> str | None:
        return self.call("GetExternalIPAddress", {}, deadline).get("NewExternalIPAddress", "")


class UpnpFirewall(UpnpIgd):
    """A router's IPv6 firewall (UPnP IGDv2, WANIPv6FirewallControl): a pinhole lets
    a TCP port in to lan_ip, this machine's IPv6 address; the router allows it only
    when asked from that address itself.  The same calls as UpnpIgd, so that
    RouterPorts keeps and removes pinholes as it keeps and removes mappings."""

    TARGETS = ("urn:schemas-upnp-org:device:InternetGatewayDevice:2", FIREWALL_SERVICE)
    SERVICES = (FIREWALL_SERVICE,)

    def __init__(self, *args):
        super().__init__(*args)
        self.pinholes: dict[int, str] = {}   # our port -> the router's UniqueID for its pinhole

    def forward(self, port: int, wanted: int, lease: int, deadline: float) -> tuple[int, int]:
        """A pinhole for our `port` (the same port outside: IPv6 needs no translation)."""
        lease = max(1, min(lease, PINHOLE_LEASE_MOST))
        try:
            made = self.call("AddPinhole", {
                "RemoteHost": "", "RemotePort": 0, "InternalClient": self.lan_ip,
                "InternalPort": port, "Protocol": TCP, "LeaseTime": lease}, deadline)
        except UpnpError as e:
            raise RouterRefused("UPnP", upnp_reason(e)) from None
        self.pinholes[port] = made.get("UniqueID", "")
        return port, lease

    def renew(self, port: int, external_port: int, lease: int, deadline: float) -> tuple[int, int]:
        """A longer life for our pinhole; a new one if the router has lost it (a restart)."""
        try:
            self.call("UpdatePinhole", {"UniqueID": self.pinholes.get(port, ""),
                                        "NewLeaseTime": max(1, min(lease, PINHOLE_LEASE_MOST))},
                      deadline)
        except UpnpError:
            return self.forward(port, external_port, lease, deadline)
        return port, lease

    def remove(self, port: int, external_port: int, deadline: float) -> None:
        try:
            self.call("DeletePinhole", {"UniqueID": self.pinholes.pop(port, "")}, deadline)
        except UpnpError as e:
            raise RouterRefused("UPnP", upnp_reason(e)) from None

    def external_address(self, deadline: float) -> str | None:
        return self.lan_ip   # friends reach this machine at its own address


def upnp_reason(e: UpnpError) -> str:
    """A UPnP fault in words a host can act on."""
    if e.code == 718:
        return "the port is already forwarded to another machine (ConflictInMappingEntry)"
    if e.code == 725:
        return ("it only makes mappings that never expire (OnlyPermanentLeasesSupported), "
                "which would outlive the room")
    if e.code in (702, 703):
        return f"its IPv6 firewall takes no pinholes ({e.description or 'error'}, {e.code})"
    return f"{e.description or 'error'} ({e.code})"


def find_upnp(gateway: str | None, lan_ip: str, networks: list, deadline: float,
              way: type = UpnpIgd, interface: int = 0) -> UpnpIgd | None:
    """Search with SSDP from lan_ip (IPv4, or IPv6 on `interface`) for ROUTER_WAIT: the
    first answer from the gateway or this network whose description, on the answering
    host itself, offers `way`'s service (a WAN connection; UpnpFirewall: pinholes)."""
    seen: set[tuple[str, str]] = set()
    searches = [time.monotonic(), time.monotonic() + 1.0]   # once more, in case one got lost
    until = min(deadline, time.monotonic() + ROUTER_WAIT)
    try:
        with socket.socket(socket.AF_INET6 if ":" in lan_ip else socket.AF_INET,
                           socket.SOCK_DGRAM) as sock:
            group = ssdp_group(sock, lan_ip, interface)
            while (left := until - time.monotonic()) > 0:
                if searches and searches[0] <= time.monotonic():
                    searches.pop(0)
                    for target in way.TARGETS:
                        sock.sendto(ssdp_search(target, group), group)
                sock.settimeout(min([left] + [max(0.01, t - time.monotonic()) for t in searches]))
                try:
                    data, sender = sock.recvfrom(2048)
                except socket.timeout:
                    continue
                if igd := upnp_from_answer(data, sender, gateway, networks, lan_ip, deadline, seen,
                                           way):
                    return igd
    except OSError as e:   # no network to search on
        log.info("router: no UPnP search possible (%s)", e)
    return None


def upnp_from_answer(data: bytes, sender: tuple, gateway: str | None, networks: list, lan_ip: str,
                     deadline: float, seen: set, way: type = UpnpIgd) -> UpnpIgd | None:
    """The router behind one SSDP answer from `sender` (a socket address), if it may be
    believed and offers `way`'s service."""
    ip = sender[0]
    host = f"{ip}%{sender[3]}" if len(sender) > 3 and sender[3] else ip   # fe80:: needs its link
    location = ssdp_location(data)
    if not location or (ip, location) in seen:
        return None
    seen.add((ip, location))
    if not answer_allowed(ip, gateway, networks):
        log.warning("ignored a UPnP answer from %s: neither the gateway nor this network", ip)
        return None
    if (where := url_on_host(location, ip)) is None:
        log.warning("ignored a UPnP answer from %s: its description is at %s, not on %s itself",
                    ip, location[:200], ip)
        return None
    try:
        until = min(deadline, time.monotonic() + ROUTER_WAIT)
        status, description = http_exchange(host, *where, until, source=lan_ip)
        if status != 200:
            raise ValueError(f"HTTP {status}")
        found = igd_service(description, location, way.SERVICES)
    except (OSError, ValueError) as e:
        log.warning("ignored the UPnP description at %s (%s)", location[:200], e)
        return None
    control = found and url_on_host(found[1], ip)
    if not control:
        return None
    return way(host, control[0], control[1], found[0], lan_ip)


# -- what happened, in plain words ----------------------------------------------
class RouterOutcome(enum.Enum):
    FORWARDED = "forwarded"                 # friends outside reach the room at the router's address
    NO_PUBLIC = "no public address"         # the router has none to offer: CGNAT or a second router
    REFUSED = "refused"
    NO_ANSWER = "no answer"


@dataclasses.dataclass
class RouterResult:
    """What RouterPorts.open() found; router_sentence() says it."""

    outcome: RouterOutcome
    lan_ip: str                              # this machine, as the router sees it
    ports: tuple[int, ...]                   # ours: the room's, then the page's
    protocol: str = ""                       # the way that answered: PCP, NAT-PMP or UPnP
    external_ip: str = ""                    # the router's internet side, as it says
    forwarded: dict[int, int] = dataclasses.field(default_factory=dict)   # ours -> the router's
    reason: str = ""                         # a refusal, in the router's words
    tried: tuple[str, ...] = ROUTER_PROTOCOLS
    mac: str = "unknown"
    ipv6: RouterResult | None = None         # its IPv6 firewall's answer (Pinholes), if this
                                             # machine has an IPv6 address on the internet
    port_80: str = ""                        # --https: "forwarded" to the page, or why not ("": not asked)

    def address(self, port: int) -> str | None:
        """What friends outside connect to for our `port` (host:port), if the router forwards it."""
        if self.outcome is not RouterOutcome.FORWARDED or port not in self.forwarded:
            return None
        return host_port(self.external_ip, self.forwarded[port])

    def needs_public_ip(self) -> bool:
        """True when only the public look-up can tell a second router (double NAT) from CGNAT."""
        return self.outcome is RouterOutcome.NO_PUBLIC and private_router_address(self.external_ip)


def private_router_address(ip: str) -> bool:
    """A private (RFC 1918) address on the router's internet side: a router in front of it."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return any(address in network for network in PRIVATE_NETWORKS)


def port_words(ports: tuple[int, ...]) -> str:
    return f"ports {' and '.join(map(str, ports))}" if len(ports) > 1 else f"port {ports[0]}"


def by_hand(result: RouterResult) -> str:
    return (f"forward TCP {port_words(result.ports)} to {result.lan_ip} by hand "
            f"(MAC {result.mac})")


def router_sentence(result: RouterResult, public_ip: str | None = None, ipv6_way: str = "") -> str:
    """One sentence for the host: the address friends use, or why there is none and
    what to do.  `public_ip` (the web look-up's answer, if any) tells double NAT;
    `ipv6_way` (where friends with IPv6 join, if anywhere) ends the CGNAT sentence."""
    if result.outcome is RouterOutcome.FORWARDED:
        return forwarded_sentence(result)
    if result.outcome is RouterOutcome.NO_PUBLIC:
        if result.needs_public_ip() and public_ip and public_ip != result.external_ip:
            return double_nat_sentence(result, public_ip)
        return cgnat_sentence(result, ipv6_way)
    if result.outcome is RouterOutcome.REFUSED:
        return (f"the router refused to forward {port_words(result.ports)} "
                f"({result.protocol}: {result.reason}): {by_hand(result)}")
    return f"no router answered {tried_words(result)}: {by_hand(result)}"


def tried_words(result: RouterResult) -> str:
    names = ", ".join(kind for kind in ("UPnP", "NAT-PMP", "PCP") if kind in result.tried)
    return " or ".join(names.rsplit(", ", 1))


def pinhole_sentence(result: RouterResult) -> str:
    """One sentence for the host: the router's IPv6 firewall lets the room's ports in
    to this machine (result.lan_ip), or why not and what to do."""
    ports = f"TCP {port_words(result.ports)} in to {result.lan_ip}"
    if result.outcome is RouterOutcome.FORWARDED:
        return f"your router's IPv6 firewall lets {ports} ({result.protocol})"
    if result.outcome is RouterOutcome.NO_ANSWER:
        return (f"no router answered about its IPv6 firewall ({tried_words(result)}): if it "
                f"keeps friends with IPv6 out, let {ports} by hand on the router")
    return (f"the router would not open its IPv6 firewall ({result.protocol}: {result.reason}): "
            f"let {ports} by hand on the router")


def forwarded_sentence(result: RouterResult) -> str:
    room, *page = result.ports
    text = f"over the internet:  {result.address(room)}"
    if page:
        text += f", the page on port {result.forwarded[page[0]]}"
    port_80 = {"": "", "forwarded": "; and its port 80 to the page, for https"}.get(
        result.port_80, f"; not its port 80 ({result.port_80})")
    return f"{text} ({router_forwards(result)}{port_80})"


def router_forwards(result: RouterResult) -> str:
    """`your router forwards it: UPnP`, and any port the router moved."""
    moved = [f"; its port {result.forwarded[port]} leads to {port} here" for port in result.ports
             if result.forwarded[port] != port]
    how = "both" if len(result.ports) > 1 else "it"
    return f"your router forwards {how}: {result.protocol}" + "".join(moved)


def cgnat_sentence(result: RouterResult, ipv6_way: str = "") -> str:
    side = f" (its internet side is {result.external_ip})" if result.external_ip else ""
    said = f": {result.reason}" if result.reason else ""
    ipv6 = f"; friends with IPv6 can join at {ipv6_way}" if ipv6_way else ""
    return (f"your router answered ({result.protocol}{said}) but has no public address to offer"
            f"{side}: probably CGNAT or a second router. Friends outside cannot reach this room "
            f"that way; ask your provider for a public IPv4 address, or set up the outer router "
            f"to forward TCP {port_words(result.ports)}. Friends on the same network still can "
            f"join{ipv6}.")


def double_nat_sentence(result: RouterResult, public_ip: str) -> str:
    ports = tuple(result.forwarded.get(port, port) for port in result.ports)
    here = (f"your router forwards {port_words(ports)} to this machine ({result.protocol})"
            if result.forwarded else f"your router still needs {by_hand(result)}")
    return (f"your router's internet side is {result.external_ip}, a private address, while the "
            f"internet sees {public_ip}: a second router stands in front (double NAT). Set up that "
            f"outer router: forward TCP {port_words(ports)} to {result.external_ip}; {here}.")


# -- RouterPorts: ask, keep, remove ---------------------------------------------
class RouterPorts:
    """Asks the router to forward our TCP `ports` (the room's, then the page's) to this
    machine, keeps the mappings alive, and removes them.

    open() blocks for at most ROUTER_OPEN_TIME and returns a RouterResult (say it
    with router_sentence()); a thread of its own then renews the lease before it
    runs out, and calls on_change(result) if the router moves a port.  close()
    stops that and removes every mapping this object made, and no other.  Call
    open() once, from a thread of your own; close() from any thread, any time.
    `pinholes` (Pinholes) asks the router's IPv6 firewall alongside, within the
    same time: its answer is the result's `ipv6`, and close() closes it too.
    `gateway` and `protocols` are for tests: the default gateway, all three ways.
    `challenge`: our port that the router's port 80 should lead to as well (the
    page's, for --https), asked once the others are forwarded, and not needed for them.
    """

    DOES = "forwards"   # what the log says a way does with a port

    def __init__(self, ports: tuple[int, ...] | list[int], lease: float = ROUTER_LEASE,
                 gateway: str | None = None, protocols: tuple[str, ...] = ROUTER_PROTOCOLS,
                 on_change: Callable[[RouterResult], None] | None = None,
                 pinholes: RouterPorts | None = None, challenge: int | None = None):
        self.ports, self.lease, self.gateway = tuple(ports), lease, gateway
        self.protocols, self.on_change, self.pinholes = tuple(protocols), on_change, pinholes
        self.challenge = challenge
        self._port_80: dict[int, int] = {}   # the page's port -> 80, while the router forwards it
        self.result: RouterResult | None = None
        self._lock = threading.Lock()        # held while mappings are made, renewed or removed
        self._closed = threading.Event()
        self._way: PortControl | UpnpIgd | None = None
        self._mapped: dict[int, int] = {}    # ours -> the router's port: what close() removes

    def open(self) -> RouterResult:
        deadline = time.monotonic() + ROUTER_OPEN_TIME
        ipv6: queue.Queue = queue.Queue()
        if self.pinholes:
            threading.Thread(target=self._open_pinholes, args=(ipv6,), name="router-ipv6",
                             daemon=True).start()
        routes = read_routes()
        gateway = self.gateway or default_gateway(routes)
        try:
            lan_ip = lan_address(gateway) if gateway else private_ipv4()
            networks = own_networks(routes, lan_ip)
        except (OSError, ValueError):   # no route to the gateway, or no address at all
            gateway, lan_ip, networks = None, private_ipv4(), []
        result = self._ask(gateway, lan_ip, networks, deadline)
        log.info("router: %s", router_sentence(result))
        if self.pinholes:
            with contextlib.suppress(queue.Empty):   # as bounded in time as this ask
                result.ipv6 = ipv6.get(timeout=ROUTER_OPEN_TIME + 2.0)
        self.result = result
        return result

    def _open_pinholes(self, answer: queue.Queue) -> None:
        try:
            answer.put(self.pinholes.open())
        except Exception as e:   # a bug must not leave open() waiting
            log_fault("asking the router's IPv6 firewall", e)

    def _ask(self, gateway: str | None, lan_ip: str, networks: list,
             deadline: float) -> RouterResult:
        """The first way that answers and works; else the first refusal, or no answer."""
        refusals = []
        for way in self._search(gateway, lan_ip, networks, deadline):
            try:
                return self._take(way, lan_ip, deadline)
            except RouterRefused as e:
                refusals.append(e)
        if refusals:
            return self._result(RouterOutcome.REFUSED, lan_ip, refusals[0].protocol,
                                reason=refusals[0].reason)
        return self._result(RouterOutcome.NO_ANSWER, lan_ip)

    def _result(self, outcome: RouterOutcome, lan_ip: str, protocol: str = "",
                **found) -> RouterResult:
        return RouterResult(outcome, lan_ip, self.ports, protocol, tried=self.protocols,
                            mac=mac_address(), **found)

    def _searches(self, gateway: str | None, lan_ip: str, networks: list, deadline: float) -> list:
        """The searches for the ways to ask, to run at once."""
        searches = []
        if gateway and {"PCP", "NAT-PMP"} & set(self.protocols):
            searches.append(lambda: find_port_control(gateway, lan_ip, self.protocols, deadline))
        if "UPnP" in self.protocols and networks:
            searches.append(lambda: find_upnp(gateway, lan_ip, networks, deadline))
        return searches

    def _search(self, gateway: str | None, lan_ip: str, networks: list, deadline: float):
        """The ways to ask, as they answer (each search ends within ROUTER_WAIT or so)."""
        found: queue.Queue = queue.Queue()
        searches = self._searches(gateway, lan_ip, networks, deadline)

        def run(search: Callable) -> None:
            try:
                found.put(search())
            except Exception as e:   # a bug must not leave open() waiting
                log_fault("searching for the router", e)
                found.put(None)
        for search in searches:
            threading.Thread(target=run, args=(search,), name="router-search", daemon=True).start()
        for _ in searches:
            try:
                way = found.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if way is not None:
                yield way

    def _take(self, way, lan_ip: str, deadline: float) -> RouterResult:
        """Map every port with `way`, all or none; RouterRefused if it will not, unless
        for want of a public address (a NO_PUBLIC result then)."""
        made: dict[int, int] = {}
        granted = self.lease
        with self._lock:
            if self._closed.is_set():
                raise RouterRefused(way.name, "the room stopped before the router answered")
            try:
                for port in self.ports:
                    made[port], lifetime = way.forward(port, port, int(self.lease), deadline)
                    granted = min(granted, lifetime)
            except (RouterRefused, OSError, ValueError) as e:
                self._remove(way, made, deadline + 1.0)   # all or none, and open() under 10 s
                return self._refused(way, lan_ip, e, deadline)
            external = self._external(way, deadline) or ""
            self._way, self._mapped = way, made
            outcome = RouterOutcome.FORWARDED if public_address(external) else RouterOutcome.NO_PUBLIC
            port_80 = self._forward_80(way, deadline) if self.challenge and \
                outcome is RouterOutcome.FORWARDED else ""
        for port, external_port in {**made, **self._port_80}.items():
            log.info("router: %s %s TCP %s to %s for %d s", way.name, self.DOES,
                     host_port(external or "?", external_port), host_port(lan_ip, port), granted)
        threading.Thread(target=self._keep, args=(granted,), name="router-renew", daemon=True).start()
        return self._result(outcome, lan_ip, way.name, external_ip=external, forwarded=dict(made),
                            port_80=port_80)

    def _forward_80(self, way, deadline: float) -> str:
        """Ask for the router's port 80 to lead to `challenge` (a CA's http-01 looks there):
        "forwarded", or why not."""
        try:
            got, _ = way.forward(self.challenge, 80, int(self.lease), deadline, exact=True)
        except (RouterRefused, OSError, ValueError) as e:
            why = getattr(e, "reason", None) or str(e)
            log.info("router: %s would not forward its port 80 (%s)", way.name, why)
            return why
        if got != 80:   # NAT-PMP's other port is of no use to a CA.  It is left to its lease:
            # NAT-PMP removes by our port, which could remove the page's own mapping instead.
            log.info("router: %s offered its port %d instead of 80; left to its lease", way.name, got)
            return f"it offered port {got} instead"
        self._port_80 = {self.challenge: 80}
        return "forwarded"

    def _refused(self, way, lan_ip: str, e: Exception, deadline: float) -> RouterResult:
        """The result of a refusal that comes of having no public address; else RouterRefused."""
        refusal = e if isinstance(e, RouterRefused) else RouterRefused(
            way.name, f"it stopped answering ({e})")
        external = self._external(way, deadline)
        if refusal.no_public or (external is not None and not public_address(external)):
            return self._result(RouterOutcome.NO_PUBLIC, lan_ip, way.name,
                                external_ip=external or "", reason=refusal.reason)
        raise refusal

    @staticmethod
    def _external(way, deadline: float) -> str | None:
        """The router's external address as it says it ("" for none), or None if it would not say."""
        try:
            return way.external_address(deadline)
        except (UpnpError, OSError, ValueError):
            return None

    def _keep(self, lifetime: float) -> None:
        """Renew at half the lease (sooner after a failure) until close()."""
        wait = max(1.0, lifetime / 2)
        while not self._closed.wait(wait):
            wait = self._renew(lifetime)

    def _renew(self, lifetime: float) -> float:
        """Renew every mapping; the seconds until the next renewal."""
        with self._lock:
            if self._closed.is_set():
                return 0.0
            deadline = time.monotonic() + ROUTER_WAIT
            try:
                for port, external_port in list(self._mapped.items()):
                    got, lifetime = self._way.renew(port, external_port, int(self.lease), deadline)
                    self._mapped[port] = got
            except (RouterRefused, OSError, ValueError) as e:
                log.warning("router: could not renew the room's ports (%s); trying again soon", e)
                return max(1.0, min(60.0, lifetime / 8))
            for port in self._port_80:   # for --https alone: the room does without it
                try:
                    self._way.renew(port, 80, int(self.lease), deadline)
                except (RouterRefused, OSError, ValueError) as e:
                    log.info("router: could not renew its port 80 for https (%s)", e)
            external = self._external(self._way, deadline) or ""   # a home's address changes
            readdressed = bool(self.result and public_address(external)
                               and external != self.result.external_ip)
            moved = self.result and (self.result.forwarded != self._mapped or readdressed)
            if moved:
                self.result = dataclasses.replace(self.result, forwarded=dict(self._mapped),
                                                  external_ip=external if readdressed
                                                  else self.result.external_ip)
        if moved:
            log.info("router: %s", router_sentence(self.result))
            if self.on_change:
                self.on_change(self.result)
        return max(1.0, lifetime / 2)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop renewing and remove every mapping this object made (a few seconds at most)."""
        self._closed.set()
        if self.pinholes:
            self.pinholes.close()
        with self._lock:
            mapped, self._mapped = self._mapped, {}
            if mapped:
                self._remove(self._way, mapped, time.monotonic() + ROUTER_WAIT)
            port_80, self._port_80 = self._port_80, {}
            if port_80:
                self._remove(self._way, port_80, time.monotonic() + ROUTER_WAIT)

    @classmethod
    def _remove(cls, way, mapped: dict[int, int], deadline: float) -> None:
        for port, external_port in mapped.items():
            try:
                way.remove(port, external_port, deadline)
                log.info("router: %s no longer %s TCP port %d", way.name, cls.DOES, external_port)
            except (RouterRefused, OSError, ValueError) as e:
                log.warning("router: could not remove the mapping of TCP port %d (%s); it ends "
                            "with its lease", external_port, e)


class Pinholes(RouterPorts):
    """RouterPorts for IPv6, where nothing is translated and the router's firewall keeps
    friends out instead: a pinhole for each of our TCP `ports` to this machine's IPv6
    `address`, asked for with UPnP IGDv2 (WANIPv6FirewallControl) or PCP MAP sent over
    IPv6 to the router, kept and removed as RouterPorts keeps and removes mappings.
    Asked from `address` itself (a router opens only the asker's own address);
    answers believed only from the IPv6 gateway or this network."""

    DOES = "lets in"

    def __init__(self, ports: tuple[int, ...] | list[int], address: str, lease: float = ROUTER_LEASE,
                 gateway: str | None = None, protocols: tuple[str, ...] = PINHOLE_PROTOCOLS):
        super().__init__(ports, lease, gateway, protocols)
        self.address = address

    def open(self) -> RouterResult:
        deadline = time.monotonic() + ROUTER_OPEN_TIME
        routes = read_routes(6)
        gateway = self.gateway or default_gateway(routes)
        networks = own_networks(routes, self.address) + [LINK_LOCAL]
        self.result = self._ask(gateway, self.address, networks, deadline)
        log.info("router: %s", pinhole_sentence(self.result))
        return self.result

    def _searches(self, gateway: str | None, address: str, networks: list, deadline: float) -> list:
        interface = ipv6_interface(address, gateway)
        searches = []
        if gateway and "PCP" in self.protocols:
            searches.append(lambda: find_port_control(gateway, address, ("PCP",), deadline))
        if "UPnP" in self.protocols:
            searches.append(lambda: find_upnp(gateway, address, networks, deadline, UpnpFirewall,
                                              interface))
        return searches


def ipv6_interface(address: str, gateway: str | None) -> int:
    """The interface IPv6 searches go out on: the gateway's link (fe80::1%eth0), else
    the one `address` is on (Linux), else 0 (the system's choice)."""
    zone = (gateway or "").partition("%")[2]
    try:
        if zone:
            return int(zone) if zone.isdigit() else socket.if_nametoindex(zone)
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            return next((row[1] for row in if_inet6_rows(f.read()) if row[0] == address), 0)
    except OSError:
        return 0


def ask_router(settings: Settings, address: tuple[str, int], page_address: tuple[str, int] | None,
               heard: Callable[[RouterResult, str | None], None]) -> RouterPorts | None:
    """Ask the router to forward the room's port (and the page's) on a thread of its
    own, and, for a room on IPv6 on a machine with an address on the internet, to
    let them in through its IPv6 firewall (Pinholes); heard(result, public_ip) there
    once it knows, and again if the router moves a port.  public_ip is the web
    look-up's answer where only it tells a second router from CGNAT, else None.
    close() what it returns when the room stops: that removes the mappings and the
    pinholes.  A room only this machine reaches asks nothing: None."""
    if is_loopback(address[0]):
        return None
    ports = [address[1]] + ([page_address[1]] if page_address else [])
    ipv6 = ipv6_host(address[0], internet_ipv6())
    router = RouterPorts(ports, on_change=lambda moved: heard(moved, None),
                         pinholes=Pinholes(ports, ipv6) if ipv6 else None,
                         challenge=page_address[1] if page_address and settings.https else None)

    def work() -> None:
        result = router.open()
        if router.closed:   # the room stopped meanwhile: nothing left to say
            return
        public_ip = None
        if result.needs_public_ip() and settings.public_ip_url:
            try:   # only the public look-up tells a second router from CGNAT
                public_ip = fetch_public_ip(settings.public_ip_url)
            except (OSError, ValueError) as e:
                log.info("public IP not looked up at %s (%s)", settings.public_ip_url,
                         look_up_failure(e))
        heard(result, public_ip)
    threading.Thread(target=work, name="router-ports", daemon=True).start()
    return router


# -- how friends join: the addresses and the router's answer, put together ------

@dataclasses.dataclass(frozen=True)
class FriendsJoin:
    """How friends join a room, worked out once: the console's banner says
    it and the window shows it.  An address is None while it is not known."""

    listen: tuple[str, int]        # where the room listens
    only_here: bool                # on loopback: nobody else can join
    same_network: str | None       # host:port for friends on the same network
    internet: str | None           # host:port over the internet
    page_port: int | None          # the chat page's port, if it is served
    page_same: str | None          # the page's link on the same network
    page_internet: str | None      # ... and over the internet
    ipv6: str | None               # [ADDR]:PORT over the internet with IPv6 (not the App's)
    page_ipv6: str | None          # the page's link there: http://[ADDR]:PORT/
    invite: str | None             # the page's invitation for a phone here (its code), if one can come
    forward: str                   # what to set up on the router
    encrypted: bool                # TLS: the App cannot join (TLS_JOINING)
    keyed: bool                    # friends join as name#KEY
    key_warning: str               # the key is short enough to guess, or ""
    router: str                    # what the router said when asked to forward (--upnp), or ""
    firewall: str                  # ... and of its IPv6 firewall (pinhole_sentence), or ""


def friends_join(settings: Settings, listen: tuple[str, int], private_ip: str | None,
                 public_ip: str | None, page_port: int | None,
                 router: RouterResult | None = None, router_public_ip: str | None = None,
                 ipv6: str | None = None, certified: bool = False) -> FriendsJoin:
    """How friends join a room listening at `listen`, with what is known of this
    machine's addresses (None: not known; `ipv6`: internet_ipv6()), the page's port
    (None: no page) and the router's answer to --upnp (None: not asked, or no answer
    yet).  Where the router forwards the ports, its address is the one friends use.
    `certified`: the page's certificate is in place (--https): its link over the
    internet is https."""
    host, port = listen
    same = same_network_host(host, "" if private_ip == "unknown" else private_ip or "") or None
    tls = bool(settings.tls_cert)
    six = ipv6_host(host, ipv6)
    ipv6_chat = host_port(six, port) if six else None
    page_ipv6 = page_link(six, page_port, tls) if six and page_port else None
    holes = router.ipv6 if router is not None else None
    ipv6_way = " or ".join(f"{link} ({whom})" for link, whom in (
        (page_ipv6, PAGE_FOR), (ipv6_chat, "for a terminal")) if link)
    if ipv6_way and (holes is None or holes.outcome is not RouterOutcome.FORWARDED):
        ipv6_way += " once your router's firewall lets them in"
    internet = page_internet = None
    if public_ip:
        internet = host_port(public_ip, port)
        page_internet = page_link(public_ip, page_port, tls or certified) if page_port else None
    forward = forward_advice(port, page_port)
    if router is not None and router.address(port):
        internet, forward = router.address(port), router_forwards(router)
        page_internet = (page_link(router.external_ip, router.forwarded[page_port], tls or certified)
                         if page_port in router.forwarded else page_internet)
    return FriendsJoin(
        listen=listen, only_here=is_loopback(host),
        same_network=host_port(same, port) if same else None, internet=internet,
        page_port=page_port,
        page_same=page_link(same, page_port, tls) if same and page_port else None,
        page_internet=page_internet, ipv6=ipv6_chat, page_ipv6=page_ipv6,
        invite=invitation(page_link(same, page_port, tls), settings.room_key)
        if same and page_port and not is_loopback(same) else None,
        forward=forward, encrypted=tls,
        keyed=bool(settings.room_key), key_warning=short_key_warning(settings.room_key),
        router=router_sentence(router, router_public_ip, ipv6_way) if router is not None else "",
        firewall=pinhole_sentence(holes) if holes is not None else "")


# ---------------------------------------------------------------------------
# 9. HTTPS for the page (ACME)
# ---------------------------------------------------------------------------
# --https: a certificate every phone trusts, for this machine's public address,
# from an ACME CA (RFC 8555, with IP identifiers: RFC 8738), with no openssl and
# no domain.  Each part from its standard, small and pure: P-256 and ECDSA with
# deterministic nonces (FIPS 186-4, RFC 6979), DER (X.690) for the CSR (PKCS #10,
# RFC 2986) and the key's PEM (SEC 1, RFC 5915), JWS ES256 (RFC 7515, 7518) and
# the JWK thumbprint (RFC 7638).  Then AcmeClient (the conversation with the CA),
# CertificateStore (the folder) and PageCertificate (getting, putting in place and
# renewing, on a thread of its own).  TLS itself stays the ssl module's.

P256_P = 2 ** 256 - 2 ** 224 + 2 ** 192 + 2 ** 96 - 1   # the field; the curve is y² = x³ - 3x + b
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551   # the group's order
P256_G = (0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
          0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)
OID_EC_KEY, OID_P256 = "1.2.840.10045.2.1", "1.2.840.10045.3.1.7"
OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
OID_EXTENSION_REQUEST, OID_ALT_NAMES = "1.2.840.113549.1.9.14", "2.5.29.17"
DER_BOOLEAN, DER_INTEGER, DER_BITS, DER_OCTETS, DER_OID = 0x01, 0x02, 0x03, 0x04, 0x06
DER_UTC_TIME, DER_TIME, DER_SEQUENCE, DER_SET = 0x17, 0x18, 0x30, 0x31
DER_IP_NAME = 0x87                 # [7] iPAddress in GeneralNames
PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----\s*([A-Za-z0-9+/=\s]+?)-----END \1-----")
ACME_ERROR = "urn:ietf:params:acme:error:"
ACME_PROFILE = "shortlived"        # Let's Encrypt's profile for IP addresses (about 160 hours)
ACME_TIMEOUT = 15.0                # seconds for one request to the CA, however slowly it answers
ACME_POLL_TIME = 120.0             # seconds for a validation or an issuance to finish
ACME_POLL_FIRST = 0.5              # seconds before the first look at a validation, doubling
ACME_POLL_MOST = 10.0              # seconds between two looks, whatever Retry-After says
ACME_NONCE_TRIES = 16              # a refused nonce is tried again (RFC 8555 §6.5)
ACME_ANSWER_LIMIT = 1 << 20        # bytes of one answer
ACME_USER_AGENT = f"PrivateChatRoom-Server/{VERSION} (Python urllib)"
ACME_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")   # base64url: safe in a path
RENEW_AT = 2 / 3                   # of a certificate's life; before that a saved one is reused
RETRY_FIRST, RETRY_MOST = 300.0, 7200.0   # after a failure: 5 minutes, doubling up to 2 hours
CERTIFICATE_CHECK = 3600.0         # the keeper looks at least this often (a laptop that slept)
# What a CA's problem types mean (RFC 8555 §6.7), for the host; any other is "it refused".
ACME_PROBLEMS = {
    "rateLimited": "it has given this address or account too many certificates lately",
    "rejectedIdentifier": "it does not certify this address",
    "unsupportedIdentifier": "it does not certify IP addresses",
    "caa": "it is not allowed to certify this address",
    "serverInternal": "it had a problem of its own",
    "userActionRequired": "its terms of service need the host's agreement on its website",
    "externalAccountRequired": "it needs an account made on its website first",
    "badCSR": "it did not accept the certificate request",
    "malformed": "it did not understand a request"}
# Challenge failures that mean the CA did not get this room's answer on port 80.
UNREACHED = {"connection", "unauthorized", "incorrectResponse", "dns", "tls"}


# -- P-256 and ECDSA ------------------------------------------------------------
def p256_add(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    """The sum of two points of P-256 (None: the point at infinity)."""
    if a is None or b is None:
        return a or b
    (x1, y1), (x2, y2) = a, b
    if x1 == x2:
        if (y1 + y2) % P256_P == 0:
            return None
        slope = (3 * x1 * x1 - 3) * pow(2 * y1, -1, P256_P)
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, P256_P)
    x3 = (slope * slope - x1 - x2) % P256_P
    return x3, (slope * (x1 - x3) - y1) % P256_P


def p256_times(k: int, point: tuple[int, int] = P256_G) -> tuple[int, int] | None:
    """k × point, by a Montgomery ladder: the same two steps for every bit of k."""
    r0, r1 = None, point
    for i in reversed(range(256)):
        if k >> i & 1:
            r0, r1 = p256_add(r0, r1), p256_add(r1, r1)
        else:
            r0, r1 = p256_add(r0, r0), p256_add(r0, r1)
    return r0


def p256_key() -> int:
    """A new private key: a secret number from 1 to n - 1."""
    return secrets.randbelow(P256_N - 1) + 1


def p256_public(key: int) -> bytes:
    """The public key of `key`: x and y, 32 bytes each."""
    x, y = p256_times(key)
    return x.to_bytes(32, "big") + y.to_bytes(32, "big")


def rfc6979_nonces(key: int, digest: bytes):
    """ECDSA's per-signature secrets k for `key` and a SHA-256 `digest`, made from
    them both with HMAC-SHA256 (RFC 6979 §3.2): no random number can leak the key."""
    def mac(k: bytes, data: bytes) -> bytes:
        return hmac.new(k, data, hashlib.sha256).digest()
    secret = key.to_bytes(32, "big") + (int.from_bytes(digest, "big") % P256_N).to_bytes(32, "big")
    v, k = b"\x01" * 32, b"\x00" * 32
    k = mac(k, v + b"\x00" + secret)
    v = mac(k, v)
    k = mac(k, v + b"\x01" + secret)
    v = mac(k, v)
    while True:
        v = mac(k, v)
        candidate = int.from_bytes(v, "big")
        if 1 <= candidate < P256_N:
            yield candidate
        k = mac(k, v + b"\x00")
        v = mac(k, v)


def ecdsa_sign(key: int, message: bytes) -> tuple[int, int]:
    """(r, s): ECDSA with P-256 and SHA-256 (FIPS 186-4 §6.4), k as RFC 6979 makes it."""
    digest = hashlib.sha256(message).digest()
    e = int.from_bytes(digest, "big")
    for k in rfc6979_nonces(key, digest):   # they never end; the first almost always does
        r = p256_times(k)[0] % P256_N
        s = pow(k, -1, P256_N) * (e + r * key) % P256_N
        if r and s:
            return r, s


# -- DER and PEM ---------------------------------------------------------------
def der(tag: int, *parts: bytes) -> bytes:
    """One DER value: its tag, its length, its contents (`parts`, joined)."""
    body = b"".join(parts)
    size = len(body)
    if size < 0x80:
        return bytes((tag, size)) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + body


def der_int(n: int) -> bytes:
    """A non-negative INTEGER (a leading zero byte where the top bit is set)."""
    return der(DER_INTEGER, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def der_oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER from its dotted form."""
    first, second, *rest = map(int, dotted.split("."))
    body = bytearray([40 * first + second])
    for n in rest:
        chunk = [n & 0x7F]
        while n := n >> 7:
            chunk.append(0x80 | n & 0x7F)
        body += bytes(reversed(chunk))
    return der(DER_OID, bytes(body))


def der_read(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, contents) of each DER value in `data`, in order; ValueError if cut or bent."""
    values, i = [], 0
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError("a DER value cut short")
        tag, size = data[i], data[i + 1]
        i += 2
        if size & 0x80:
            n = size & 0x7F
            if not 1 <= n <= 4 or i + n > len(data):
                raise ValueError("a DER length out of bounds")
            size, i = int.from_bytes(data[i:i + n], "big"), i + n
        if i + size > len(data):
            raise ValueError("a DER value cut short")
        values.append((tag, data[i:i + size]))
        i += size
    return values


def der_time(tag: int, body: bytes) -> float:
    """A UTCTime or GeneralizedTime (RFC 5280 §4.1.2.5) as seconds since the epoch."""
    text = body.decode("ascii")
    if tag == DER_UTC_TIME:
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    return float(calendar.timegm(time.strptime(text, "%Y%m%d%H%M%SZ")))


def pem(kind: str, data: bytes) -> str:
    """`data` as a PEM block of `kind` (RFC 7468)."""
    text = base64.b64encode(data).decode()
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return "\n".join([f"-----BEGIN {kind}-----", *lines, f"-----END {kind}-----"]) + "\n"


def pem_blocks(text: str, kind: str) -> list[bytes]:
    """The DER of each PEM block of `kind` in `text`."""
    return [base64.b64decode(body) for found, body in PEM_BLOCK.findall(text) if found == kind]


def key_pem(key: int) -> str:
    """A P-256 private key as SEC 1 PEM (RFC 5915), which ssl's load_cert_chain reads."""
    return pem("EC PRIVATE KEY", der(
        DER_SEQUENCE, der_int(1), der(DER_OCTETS, key.to_bytes(32, "big")),
        der(0xA0, der_oid(OID_P256)), der(0xA1, der(DER_BITS, b"\x00\x04" + p256_public(key)))))


def key_from_pem(text: str) -> int:
    """The private key in key_pem()'s form; ValueError if there is none."""
    for block in pem_blocks(text, "EC PRIVATE KEY"):
        [(tag, body)] = der_read(block)
        fields = der_read(body)
        if tag == DER_SEQUENCE and len(fields) >= 2 and fields[1][0] == DER_OCTETS:
            key = int.from_bytes(fields[1][1], "big")
            if 1 <= key < P256_N:
                return key
    raise ValueError("no P-256 private key")


# -- JWS, the certificate request, the certificate -----------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk(key: int) -> dict[str, str]:
    """The public half of `key` as a JWK (RFC 7518 §6.2)."""
    public = p256_public(key)
    return {"crv": "P-256", "kty": "EC", "x": b64url(public[:32]), "y": b64url(public[32:])}


def jwk_thumbprint(public: dict[str, str]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without white space."""
    text = json.dumps({name: public[name] for name in ("crv", "kty", "x", "y")},
                      sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(text.encode()).digest())


def jws(key: int, protected: dict, payload: dict | None) -> bytes:
    """A flattened JWS signed with ES256 (RFC 7515 §7.2.2; RFC 7518 §3.4: r and s,
    32 bytes each); payload None is ACME's POST-as-GET (an empty payload)."""
    head = b64url(json.dumps({"alg": "ES256", **protected}).encode())
    body = "" if payload is None else b64url(json.dumps(payload).encode())
    r, s = ecdsa_sign(key, f"{head}.{body}".encode("ascii"))
    return json.dumps({"protected": head, "payload": body,
                       "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}).encode()


def certificate_request(key: int, ip: str) -> bytes:
    """The DER of a PKCS #10 request for a certificate naming the address `ip` alone
    (an iPAddress subjectAltName, critical: the subject is empty), signed by `key`."""
    public = der(DER_SEQUENCE, der(DER_SEQUENCE, der_oid(OID_EC_KEY), der_oid(OID_P256)),
                 der(DER_BITS, b"\x00\x04" + p256_public(key)))
    names = der(DER_SEQUENCE, der(DER_IP_NAME, ipaddress.ip_address(ip).packed))
    extension = der(DER_SEQUENCE, der_oid(OID_ALT_NAMES), der(DER_BOOLEAN, b"\xff"),
                    der(DER_OCTETS, names))
    asked = der(0xA0, der(DER_SEQUENCE, der_oid(OID_EXTENSION_REQUEST),
                          der(DER_SET, der(DER_SEQUENCE, extension))))
    info = der(DER_SEQUENCE, der_int(0), der(DER_SEQUENCE), public, asked)
    r, s = ecdsa_sign(key, info)
    return der(DER_SEQUENCE, info, der(DER_SEQUENCE, der_oid(OID_ECDSA_SHA256)),
               der(DER_BITS, b"\x00" + der(DER_SEQUENCE, der_int(r), der_int(s))))


@dataclasses.dataclass(frozen=True)
class CertificateFacts:
    """What a certificate says that the room acts on."""
    addresses: tuple[str, ...]   # the IP addresses it names
    not_before: float            # seconds since the epoch
    not_after: float

    @property
    def renew_at(self) -> float:
        """Two thirds into its life: renewed then; a saved one is reused until then."""
        return self.not_before + RENEW_AT * (self.not_after - self.not_before)


def certificate_facts(data: bytes) -> CertificateFacts:
    """The addresses and validity of an X.509 certificate's DER (RFC 5280 §4.1);
    ValueError if it is not one."""
    try:
        [(_, certificate)] = der_read(data)
        fields = der_read(der_read(certificate)[0][1])
        if fields[0][0] == 0xA0:   # [0] version
            fields = fields[1:]
        validity, extras = der_read(fields[3][1]), fields[6:]
        addresses = []
        for tag, body in extras:
            if tag != 0xA3:   # [3] extensions
                continue
            for _, extension in der_read(der_read(body)[0][1]):
                parts = der_read(extension)
                if der(*parts[0]) == der_oid(OID_ALT_NAMES):
                    names = der_read(der_read(parts[-1][1])[0][1])
                    addresses += [str(ipaddress.ip_address(name)) for tag, name in names
                                  if tag == DER_IP_NAME]
        return CertificateFacts(tuple(addresses), der_time(*validity[0]), der_time(*validity[1]))
    except (IndexError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"not a certificate ({e})") from None


# -- the conversation with the CA ------------------------------------------------
class AcmeError(Exception):
    """The CA, or the way to it, failed: str() is one sentence for the host; `kind`
    the problem's type ("rateLimited", "connection", ...; "" if there was none),
    `retry_after` the seconds the CA asked to wait (0: it did not say), and
    `unreached` true when the CA could not get this room's answer on port 80
    (`detail`: the CA's words for it)."""

    def __init__(self, sentence: str, kind: str = "", retry_after: float = 0.0,
                 unreached: bool = False, detail: str = ""):
        super().__init__(sentence)
        self.kind, self.retry_after, self.unreached, self.detail = kind, retry_after, unreached, detail


def ca_name(directory: str) -> str:
    """The CA as a host would call it: Let's Encrypt, or its host's name."""
    host = urllib.parse.urlsplit(directory).netloc
    return "Let's Encrypt" if host.endswith(".letsencrypt.org") else host


def problem_text(problem) -> tuple[str, str]:
    """(kind, "kind: detail, and its subproblems' details") of an ACME problem
    document (RFC 8555 §6.7), cleaned for a log line; anything else is no reason."""
    problem = problem if isinstance(problem, dict) else {}
    kind = str(problem.get("type", "")).removeprefix(ACME_ERROR)
    details = [str(problem.get("detail", ""))] + [
        str(sub.get("detail", "")) for sub in problem.get("subproblems") or () if isinstance(sub, dict)]
    detail = clean_text("; ".join(d for d in details if d))[:400]
    return kind, f"{kind}: {detail}" if detail else kind or "no reason given"


def retry_after(headers) -> float:
    """Retry-After (seconds, or an HTTP date) as seconds from now; 0 if absent."""
    value = (headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return 0.0


def json_object(data: bytes) -> dict:
    try:
        found = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


class AcmeClient:
    """One account's conversation with an ACME CA (RFC 8555), on the caller's thread.
    Every request is bounded in time (ACME_TIMEOUT); a badNonce is tried again with
    the nonce it came with; waits honour Retry-After and end when `stopped` is set;
    whatever goes wrong is an AcmeError with its sentence."""

    def __init__(self, directory: str, ca_file: str, account_key: int,
                 stopped: threading.Event | None = None):
        self.directory_url, self.key, self.stopped = directory, account_key, stopped or threading.Event()
        self.ca = ca_name(directory)
        context = ssl.create_default_context()
        if ca_file:
            context.load_verify_locations(ca_file)
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        self.directory: dict = {}
        self.nonce: str | None = None
        self.account: str | None = None   # its URL, the kid of every request after the first

    def _request(self, url: str, body: bytes | None = None, method: str = "",
                 accept: str = "application/json") -> tuple[int, http.client.HTTPMessage, bytes]:
        """One HTTP exchange: status, headers, body (at most ACME_ANSWER_LIMIT bytes, within
        ACME_TIMEOUT in all); its Replay-Nonce is kept for the next request."""
        headers = {"User-Agent": ACME_USER_AGENT, "Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/jose+json"
        request = urllib.request.Request(url, body, headers, method=method or None)
        deadline = time.monotonic() + ACME_TIMEOUT
        try:
            try:
                reply = self.opener.open(request, timeout=ACME_TIMEOUT)
            except urllib.error.HTTPError as e:   # a problem document comes with these
                reply = e
            with reply:
                data = b""
                while chunk := getattr(reply, "read1", reply.read)(65536):
                    data += chunk
                    if len(data) > ACME_ANSWER_LIMIT or time.monotonic() > deadline:
                        raise ValueError("its answer was too long or too slow")
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise AcmeError(self._unreachable(e)) from None
        if reply.headers.get("Replay-Nonce"):
            self.nonce = reply.headers["Replay-Nonce"]
        return reply.status, reply.headers, data

    def _unreachable(self, e: Exception) -> str:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLCertVerificationError):
            return (f"the certificate authority at {self.ca} could not be trusted "
                    f"({reason.verify_message}); --acme-ca-file PEM trusts another CA's certificate")
        why = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return f"the certificate authority at {self.ca} could not be reached ({why})"

    def _directory(self) -> dict:
        if not self.directory:
            status, _, body = self._request(self.directory_url)
            self.directory = json_object(body)
            if status != 200 or not all(isinstance(self.directory.get(k), str)
                                        for k in ("newNonce", "newAccount", "newOrder")):
                raise AcmeError(f"{self.directory_url} is not an ACME directory (HTTP {status})")
        return self.directory

    def post(self, url: str, payload: dict | None,
             accept: str = "application/json") -> tuple[http.client.HTTPMessage, bytes]:
        """A signed POST (payload None: POST-as-GET): headers and body; AcmeError for a problem."""
        for _ in range(ACME_NONCE_TRIES):
            nonce, self.nonce = self.nonce, None
            if nonce is None:
                self._request(self._directory()["newNonce"], method="HEAD")
                nonce, self.nonce = self.nonce, None
            who = {"kid": self.account} if self.account else {"jwk": jwk(self.key)}
            status, headers, body = self._request(
                url, jws(self.key, {"nonce": nonce, "url": url, **who}, payload), accept=accept)
            if status < 400:
                return headers, body
            kind, text = problem_text(json_object(body))
            if kind != "badNonce":
                words = ACME_PROBLEMS.get(kind, "it refused")
                raise AcmeError(f"the certificate authority at {self.ca} said no: {words} ({text})",
                                kind, retry_after(headers))
            log.info("https: %s refused a nonce (badNonce); trying again", self.ca)
        raise AcmeError(f"the certificate authority at {self.ca} refused every nonce (badNonce)",
                        "badNonce")

    def _post_json(self, url: str, payload: dict | None) -> tuple[http.client.HTTPMessage, dict]:
        headers, body = self.post(url, payload)
        return headers, json_object(body)

    def certificate(self, ip: str, key: int, answer: Callable[[str, str | None], None]) -> str:
        """The PEM chain of a new certificate for `ip` and `key`, shortlived where the CA
        offers it.  answer(token, key authorization) publishes an http-01 answer
        (answer(token, None) withdraws it)."""
        directory = self._directory()
        if self.account is None:
            headers, _ = self.post(directory["newAccount"], {"termsOfServiceAgreed": True})
            self.account = headers.get("Location")
        wanted = {"identifiers": [{"type": "ip", "value": ip}]}
        meta = directory.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("profiles"), dict) \
                and ACME_PROFILE in meta["profiles"]:
            wanted["profile"] = ACME_PROFILE
        headers, order = self._post_json(directory["newOrder"], wanted)
        order_url = headers.get("Location", "")
        for url in order.get("authorizations") or ():
            self._authorize(str(url), ip, answer)
        order = self._until_done(order_url, order)
        if order.get("status") == "ready":
            _, order = self._post_json(str(order.get("finalize")),
                                       {"csr": b64url(certificate_request(key, ip))})
            order = self._until_done(order_url, order)
        if order.get("status") != "valid" or not order.get("certificate"):
            why = problem_text(order.get("error") or {})[1]
            raise AcmeError(f"the certificate authority at {self.ca} did not issue the "
                            f"certificate (order {order.get('status')}: {why})")
        _, chain = self.post(str(order["certificate"]), None, "application/pem-certificate-chain")
        return chain.decode("ascii", "replace")

    def _authorize(self, url: str, ip: str, answer: Callable[[str, str | None], None]) -> None:
        """Prove this room holds `ip`: the http-01 answer, published while the CA looks."""
        _, authorization = self._post_json(url, None)
        if authorization.get("status") == "valid":
            return
        challenge = next((c for c in authorization.get("challenges") or ()
                          if isinstance(c, dict) and c.get("type") == "http-01"), {})
        token = str(challenge.get("token", ""))
        if not ACME_TOKEN.fullmatch(token):
            raise AcmeError(f"the certificate authority at {self.ca} offers no http-01 "
                            f"challenge for {ip}")
        answer(token, f"{token}.{jwk_thumbprint(jwk(self.key))}")
        try:
            self.post(str(challenge.get("url")), {})
            authorization = self._until_done(url, authorization)
        finally:
            answer(token, None)
        if authorization.get("status") != "valid":
            tried = next((c for c in authorization.get("challenges") or ()
                          if isinstance(c, dict) and c.get("token") == token), {})
            kind, text = problem_text(tried.get("error") or authorization.get("error") or {})
            raise AcmeError(f"the certificate authority at {self.ca} could not check this room "
                            f"at {ip} ({text})", kind, unreached=kind in UNREACHED, detail=text)

    def _until_done(self, url: str, thing: dict) -> dict:
        """Look at an order or authorization (POST-as-GET) until it is neither pending nor
        processing, as often as Retry-After says (within ACME_POLL_MOST), ACME_POLL_TIME at most."""
        deadline, pause = time.monotonic() + ACME_POLL_TIME, ACME_POLL_FIRST
        while thing.get("status") in ("pending", "processing"):
            if time.monotonic() + pause > deadline:
                raise AcmeError(f"the certificate authority at {self.ca} did not finish within "
                                f"{ACME_POLL_TIME:g} s")
            if self.stopped.wait(pause):
                raise AcmeError("the room stopped before the certificate came")
            headers, thing = self._post_json(url, None)
            pause = min(ACME_POLL_MOST, retry_after(headers) or pause * 2)
        return thing


# -- the folder, and the keeper ----------------------------------------------------
class CertificateStore:
    """What --https keeps beside PORT_FILE: a folder (0700) with one folder per CA,
    holding account.key (the account's key) and certificate.pem (the chain, then
    the certificate's key, written whole or not at all), each 0600.  Their
    contents are never logged."""

    def __init__(self, directory: str, root: str = HTTPS_FOLDER):
        place = re.sub(r"[^A-Za-z0-9.-]", "_", urllib.parse.urlsplit(directory).netloc) or "ca"
        self.folder = os.path.join(root, place)
        self.root = root

    def _write(self, name: str, text: str) -> str:
        """Write `text` to `name` in the folder by a new file put in its place; its path."""
        for folder in (self.root, self.folder):
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
        path = os.path.join(self.folder, name)
        part = path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with open(os.open(part, flags, 0o600), "w", encoding="ascii") as f:
            f.write(text)
        os.replace(part, path)
        return path

    def _read(self, name: str) -> str:
        with open(os.path.join(self.folder, name), encoding="ascii") as f:
            return f.read(ACME_ANSWER_LIMIT)

    def account_key(self) -> int:
        """The account's key, made and kept the first time it is needed."""
        try:
            return key_from_pem(self._read("account.key"))
        except (OSError, ValueError):
            key = p256_key()
            self._write("account.key", key_pem(key))
            return key

    def saved(self) -> tuple[str, CertificateFacts] | None:
        """The kept certificate's file and what it says, if there is a readable one."""
        try:
            text = self._read("certificate.pem")
            return os.path.join(self.folder, "certificate.pem"), certificate_facts(
                pem_blocks(text, "CERTIFICATE")[0])
        except (OSError, ValueError, IndexError):
            return None

    def keep(self, chain: str, key: int) -> tuple[str, CertificateFacts]:
        """Keep a new certificate with its key (the old one goes); its file and facts."""
        facts = certificate_facts(pem_blocks(chain, "CERTIFICATE")[0])
        return self._write("certificate.pem", chain.rstrip("\n") + "\n" + key_pem(key)), facts


def when_text(at: float) -> str:
    """A moment as the host reads it, in local time: `Sat 7 Mar 14:05`."""
    t = time.localtime(at)
    return time.strftime(f"%a {t.tm_mday} %b %H:%M", t)


def wait_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} seconds"
    if seconds < 5400:
        return f"{round(seconds / 60)} minutes"
    return f"{round(seconds / 3600)} hours"


def certificate_address(router: RouterResult | None, router_public_ip: str | None,
                        looked_up: str | None) -> tuple[str | None, str]:
    """The address to ask a certificate for, and why there is none ("" if there is one):
    the router's internet side where it forwards the room, the look-up's answer where it
    does not (or where a second router stands in front), never a private or shared one."""
    if router is not None and router.outcome is RouterOutcome.FORWARDED:
        return router.external_ip, ""
    if router is not None and router.outcome is RouterOutcome.NO_PUBLIC:
        if not (router_public_ip and router.needs_public_ip() and public_address(router_public_ip)):
            return None, HTTPS_NO_PUBLIC
        looked_up = router_public_ip
    if looked_up is None:
        return None, HTTPS_UNKNOWN
    if not (global_ip(looked_up) if ":" in looked_up else public_address(looked_up)):
        return None, f"{looked_up} is not an address on the internet; {HTTPS_NOTHING_SENT}"
    return looked_up, ""


HTTPS_NOTHING_SENT = "nothing was sent to a certificate authority, and the page stays on http"
HTTPS_NO_PUBLIC = ("your router has no public address to offer (probably CGNAT), so no "
                   f"certificate authority can reach this room; {HTTPS_NOTHING_SENT}")
HTTPS_UNKNOWN = ("this machine's public address is not known (no look-up answered and no router "
                 f"said it); {HTTPS_NOTHING_SENT}")
HTTPS_ONLY_HERE = "the room listens on {} only, so no certificate is asked for"
# What the banner and the README say once: who gets https, and who cannot.
HTTPS_WHO = ("the page over the internet, once its certificate is in place; on the same network it "
             "stays http, since no certificate authority certifies a private address")
APP_IN_CLEAR = "its lines cross the internet unencrypted; phones and browsers use https"


def https_problem(settings: Settings) -> str | None:
    """Why --https cannot work with these settings, in a sentence; None if it can."""
    if ssl is None:
        return "This Python has no ssl module, so it cannot serve https; run without --https."
    if not settings.acme_directory.lower().startswith("https://"):
        return (f"--acme-directory {settings.acme_directory[:100]!r} is not an https:// address: "
                f"an ACME directory is always one.")
    if settings.acme_ca_file:
        try:
            ssl.create_default_context().load_verify_locations(settings.acme_ca_file)
        except (OSError, ssl.SSLError) as e:
            why = getattr(e, "strerror", None) or getattr(e, "reason", None) or e
            return (f"Cannot use {settings.acme_ca_file} for --acme-ca-file ({why}): give a PEM "
                    f"file holding the certificate authority's certificate.")
    return None


class PageCertificate:
    """--https at work, on a thread of its own: once told the public address
    (address()), a certificate for it, the kept one if it still names that address
    and has more than a third of its life left, else a new one from the CA;
    put in place on the page's port for new connections (through the loop: those
    open keep theirs), renewed at two thirds of its life, tried again with
    backoff after a failure, and a new one for a new address.

    What happens is logged and said in one sentence: said(sentence, warning).
    certified(ip or None, link) whenever the page's https starts or stops working:
    `link` is its link over the internet then (https while certified).
    address() and close() may be called from any thread."""

    def __init__(self, settings: Settings, server: Server, lan: str,
                 said: Callable[[str, bool], None],
                 certified: Callable[[str | None, str | None], None],
                 store: CertificateStore | None = None, clock: Callable[[], float] = time.time):
        self.settings, self.server, self.lan, self.clock = settings, server, lan, clock
        self.said, self.certified = said, certified
        self.store = store or CertificateStore(settings.acme_directory)
        self.ca = ca_name(settings.acme_directory)
        self._lock = threading.Lock()
        self._news, self._closed = threading.Event(), threading.Event()
        self._wanted: tuple[str | None, str] | None = None   # (address, why none), once known
        self.link: str | None = None    # the page's link over the internet, as http
        self.recheck_at = 0.0           # when a looked-up address is looked up again (0: never)
        self.facts: CertificateFacts | None = None   # the certificate in place
        self.asked_for: str | None = None   # the address tried for (a new one is tried at once)
        self.failures, self.retry_at, self.last_said = 0, 0.0, ""
        self.thread = threading.Thread(target=self._run, name="https", daemon=True)
        self.thread.start()

    def address(self, ip: str | None, why: str = "", link: str | None = None,
                recheck: bool = False) -> None:
        """The public address to certify (None: there is none, and `why`); `link`: the
        page's link over the internet.  `recheck`: it came from the look-up, which is
        asked again every CERTIFICATE_CHECK (a home's address changes now and then)."""
        with self._lock:
            self._wanted, self.link = (ip, why), link
            self.recheck_at = time.monotonic() + CERTIFICATE_CHECK if recheck else 0.0
        self._news.set()

    def close(self) -> None:
        """Stop (a request under way ends within ACME_TIMEOUT)."""
        self._closed.set()
        self._news.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._news.clear()
            if self.recheck_at and time.monotonic() >= self.recheck_at:
                self._recheck()
            with self._lock:
                wanted = self._wanted
            try:
                wait = self._step(*wanted) if wanted else None
            except Exception as e:   # a bug must not end https for good
                log_fault("keeping the page's certificate", e)
                wait = RETRY_MOST
            self._news.wait(CERTIFICATE_CHECK if wait is None else min(wait, CERTIFICATE_CHECK))

    def _step(self, ip: str | None, why: str) -> float | None:
        """Do what is due for the address `ip`: the seconds until the next step (None: news)."""
        now = self.clock()
        if ip != self.asked_for:   # a new address is tried at once
            self.asked_for, self.failures, self.retry_at = ip, 0, 0.0
        if self.facts and (ip not in self.facts.addresses or now >= self.facts.not_after):
            if ip in self.facts.addresses:
                self._say("the page's certificate has run out; the page is on http until a "
                          "new one is in place", True)
            self.facts = None
            self._in_place(None, None)
        if ip is None:
            self._say(why)
            return None
        if self.facts and now < self.facts.renew_at:
            return self.facts.renew_at - now
        if now < self.retry_at:
            return self.retry_at - now
        saved = self.store.saved() if self.facts is None else None
        if saved and ip in saved[1].addresses and now < saved[1].renew_at:
            try:
                return self._use(*saved, "kept from before")
            except StartError as e:   # a damaged file: a new certificate replaces it
                log.warning("https: the kept certificate cannot be used (%s)", e)
        self._say(f"asking {self.ca} for a certificate for {ip}…")
        try:
            key = p256_key()
            client = AcmeClient(self.settings.acme_directory, self.settings.acme_ca_file,
                                self.store.account_key(), self._closed)
            chain = client.certificate(ip, key, self._answer)
            return self._use(*self.store.keep(chain, key), f"new from {self.ca}")
        except AcmeError as e:
            return self._failed(ip, e)
        except (OSError, ValueError, StartError) as e:
            return self._failed(ip, AcmeError(f"the certificate could not be kept or used ({e})"))

    def _recheck(self) -> None:
        """Look the public address up again; a new one gets a certificate of its own."""
        try:
            ip = fetch_public_ip(self.settings.public_ip_url)
        except (OSError, ValueError) as e:
            log.info("https: public IP not looked up again (%s)", look_up_failure(e))
            ip = None
        with self._lock:
            self.recheck_at = time.monotonic() + CERTIFICATE_CHECK
            if ip and self._wanted and ip != self._wanted[0]:
                log.info("https: this machine's public address is %s now", ip)
                port = urllib.parse.urlsplit(self.link or "").port
                self._wanted = certificate_address(None, None, ip)
                self.link = page_link(ip, port, False) if port else None

    def _use(self, path: str, facts: CertificateFacts, how: str) -> float:
        """Put the certificate in `path` in place (StartError if ssl will not take it)."""
        context = tls_context(path, "")
        self.facts, self.failures, self.retry_at = facts, 0, 0.0
        self._in_place(context, facts.addresses[0], (
            f"the page's certificate for {', '.join(facts.addresses)} is in place ({how}, valid "
            f"until {when_text(facts.not_after)}; renewed from {when_text(facts.renew_at)})"))
        return max(1.0, facts.renew_at - self.clock())

    def _failed(self, ip: str, e: AcmeError) -> float:
        """Say why, and when the next try comes (backoff, or what the CA asked)."""
        self.failures += 1
        wait = max(e.retry_after, min(RETRY_MOST, RETRY_FIRST * 2 ** (self.failures - 1)))
        self.retry_at = self.clock() + wait
        again = f"trying again in {wait_text(wait)}"
        if e.unreached:
            why = (f"the certificate authority could not reach port 80 of {ip} ({e.detail}): "
                   f"forward TCP port 80 to {self.lan} on your router; {again}")
        else:
            why = f"no certificate for {ip}: {e}; {again}"
        if self.facts:   # the one in place still serves: a warning, well before it runs out
            self._say(f"the page's certificate could not be renewed ({why}); it is valid "
                      f"until {when_text(self.facts.not_after)}", True)
        else:
            self._say(f"{why}; the page stays on http until then")
        return wait

    def _in_place(self, context, ip: str | None, sentence: str = "") -> None:
        """New TLS connections to the page get `context` (None: plain http for everyone);
        then `sentence` is said and the link told."""
        if self._closed.is_set():
            return
        self._on_loop(self.server.door.secure.certified, context, ip)
        if sentence:
            self._say(sentence)
        link = self.link
        self.certified(ip, f"https:{link[5:]}" if ip and link and link.startswith("http:") else link)

    def _answer(self, token: str, key_authorization: str | None) -> None:
        self._on_loop(self.server.door.secure.answer, token, key_authorization)

    def _on_loop(self, fn: Callable, *args) -> None:
        """Run fn(*args) on the server's loop and wait (boundedly) until it has run."""
        done = threading.Event()

        def call() -> None:
            fn(*args)
            done.set()
        self.server.loop.call_soon_threadsafe(call)
        done.wait(ACME_TIMEOUT)

    def _say(self, sentence: str, warning: bool = False) -> None:
        """Log it and say it, once (a sentence said last time is not said again)."""
        if sentence == self.last_said or self._closed.is_set():
            return
        self.last_said = sentence
        log.log(logging.WARNING if warning else logging.INFO, "https: %s", sentence)
        self.said(sentence, warning)


# ---------------------------------------------------------------------------
# 10. The QR code
# ---------------------------------------------------------------------------
# The invitation drawn for a phone's camera, written from ISO/IEC 18004: byte
# mode, error correction level M, versions 1 to 40 (up to 2331 bytes).  The
# standard's tables, then one pure function per step; nothing is kept between calls.

# Level M, for versions 1 to 40: error correction codewords in each block, and blocks.
QR_EC_PER_BLOCK = (10, 16, 26, 18, 24, 16, 18, 22, 22, 26, 30, 22, 22, 24, 24, 28, 28, 26, 26, 26,
                   26, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28)
QR_BLOCKS = (1, 1, 1, 2, 2, 4, 4, 4, 5, 5, 5, 8, 9, 9, 10, 10, 11, 13, 14, 16,
             17, 17, 18, 20, 21, 23, 25, 26, 28, 29, 31, 33, 35, 37, 38, 40, 43, 45, 47, 49)
# The rows and columns of the alignment patterns' centres, for versions 2 to 40 (Annex E).
QR_ALIGNMENT = (
    (6, 18), (6, 22), (6, 26), (6, 30), (6, 34), (6, 22, 38), (6, 24, 42), (6, 26, 46),
    (6, 28, 50), (6, 30, 54), (6, 32, 58), (6, 34, 62), (6, 26, 46, 66), (6, 26, 48, 70),
    (6, 26, 50, 74), (6, 30, 54, 78), (6, 30, 56, 82), (6, 30, 58, 86), (6, 34, 62, 90),
    (6, 28, 50, 72, 94), (6, 26, 50, 74, 98), (6, 30, 54, 78, 102), (6, 28, 54, 80, 106),
    (6, 32, 58, 84, 110), (6, 30, 58, 86, 114), (6, 34, 62, 90, 118),
    (6, 26, 50, 74, 98, 122), (6, 30, 54, 78, 102, 126), (6, 26, 52, 78, 104, 130),
    (6, 30, 56, 82, 108, 134), (6, 34, 60, 86, 112, 138), (6, 30, 58, 86, 114, 142),
    (6, 34, 62, 90, 118, 146), (6, 30, 54, 78, 102, 126, 150), (6, 24, 50, 76, 102, 128, 154),
    (6, 28, 54, 80, 106, 132, 158), (6, 32, 58, 84, 110, 136, 162), (6, 26, 54, 82, 110, 138, 166),
    (6, 30, 58, 86, 114, 142, 170))
QR_BYTE_MODE = 0b0100
QR_UTF8 = f"{0b0111:04b}{26:08b}"   # ECI 26, UTF-8: byte mode is read as ISO 8859-1 without it
QR_PAD = (0xEC, 0x11)         # the pad codewords, in turn
QR_LEVEL_M = 0b00             # level M's two bits in the format information
QR_FORMAT_POLY = 0b10100110111          # BCH (15, 5)
QR_FORMAT_XOR = 0b101010000010010       # so that no format information is all light
QR_VERSION_POLY = 0b1111100100101       # BCH (18, 6)
QR_FIELD_POLY = 0b100011101             # GF(256): x^8 + x^4 + x^3 + x^2 + 1
QR_MASKS = (                  # (row, column) -> flip this data module
    lambda r, c: (r + c) % 2 == 0,
    lambda r, c: r % 2 == 0,
    lambda r, c: c % 3 == 0,
    lambda r, c: (r + c) % 3 == 0,
    lambda r, c: (r // 2 + c // 3) % 2 == 0,
    lambda r, c: r * c % 2 + r * c % 3 == 0,
    lambda r, c: (r * c % 2 + r * c % 3) % 2 == 0,
    lambda r, c: ((r + c) % 2 + r * c % 3) % 2 == 0)
QR_FINDER_LIKE = re.compile(r"(?=10111010000|00001011101)")   # penalty rule 3, in a line
QR_QUIET = 4                  # light modules around the code
QR_COLOURS = "\x1b[97;40m"    # SGR: bright white blocks (light) on black (dark), whatever the theme


def gf_powers() -> tuple[list[int], list[int]]:
    """GF(256)'s powers of 2 (twice over, so sums of logarithms need no modulo) and logarithms."""
    powers, logs, x = [], [0] * 256, 1
    for i in range(255):
        powers.append(x)
        logs[x] = i
        x <<= 1
        if x & 0x100:
            x ^= QR_FIELD_POLY
    return powers + powers, logs


GF_POWERS, GF_LOGS = gf_powers()


def gf_times(a: int, b: int) -> int:
    return GF_POWERS[GF_LOGS[a] + GF_LOGS[b]] if a and b else 0


def rs_generator(degree: int) -> list[int]:
    """The Reed-Solomon generator (x - 1)(x - 2)...(x - 2^(degree-1)), highest power first."""
    g = [1]
    for i in range(degree):
        g = [a ^ gf_times(b, GF_POWERS[i]) for a, b in zip(g + [0], [0] + g)]
    return g


def rs_remainder(data: bytes, degree: int) -> bytes:
    """The error correction codewords of `data`: its remainder by the generator."""
    g, rest = rs_generator(degree), [0] * degree
    for word in data:
        factor = word ^ rest[0]
        rest = [r ^ gf_times(c, factor) for r, c in zip(rest[1:] + [0], g[1:])]
    return bytes(rest)


def bch_code(value: int, poly: int) -> int:
    """`value` followed by its BCH check bits (the remainder by `poly`)."""
    degree = poly.bit_length() - 1
    rest = value << degree
    for shift in range(rest.bit_length() - 1, degree - 1, -1):
        if rest >> shift & 1:
            rest ^= poly << (shift - degree)
    return value << degree | rest


def qr_format_bits(mask: int) -> int:
    return bch_code(QR_LEVEL_M << 3 | mask, QR_FORMAT_POLY) ^ QR_FORMAT_XOR


def qr_format_places(size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Where format bits 0 (least significant) to 14 go, as (row, column): beside the
    top-left finder, and split between the other two."""
    first = [(i, 8) for i in range(6)] + [(7, 8), (8, 8), (8, 7)] + [(8, 14 - i) for i in range(9, 15)]
    second = [(8, size - 1 - i) for i in range(8)] + [(size - 15 + i, 8) for i in range(8, 15)]
    return first, second


def qr_version_places(size: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where version bits 0 to 17 go: a 6 x 3 block beside two finders, one the other's mirror."""
    return [((size - 11 + i % 3, i // 3), (i // 3, size - 11 + i % 3)) for i in range(18)]


def qr_function_patterns(version: int) -> tuple[list[list[bool]], list[list[bool]]]:
    """The modules the standard fixes, as (dark, fixed): finders and their
    separators, timing, alignment patterns, version information, the dark
    module, and the format information's place (light until a mask is chosen)."""
    size = 17 + 4 * version
    dark = [[False] * size for _ in range(size)]
    fixed = [[False] * size for _ in range(size)]

    def put(row: int, col: int, on: bool) -> None:
        dark[row][col], fixed[row][col] = on, True
    for i in range(size):
        put(6, i, i % 2 == 0)
        put(i, 6, i % 2 == 0)
    for top, left in ((0, 0), (0, size - 7), (size - 7, 0)):
        for row in range(max(top - 1, 0), min(top + 8, size)):
            for col in range(max(left - 1, 0), min(left + 8, size)):
                put(row, col, max(abs(row - top - 3), abs(col - left - 3)) in (0, 1, 3))
    centres = QR_ALIGNMENT[version - 2] if version > 1 else ()
    corners = {(6, 6), (6, size - 7), (size - 7, 6)}   # at the finders: left out
    for row in centres:
        for col in centres:
            if (row, col) not in corners:
                for r, c in itertools.product(range(row - 2, row + 3), range(col - 2, col + 3)):
                    put(r, c, max(abs(r - row), abs(c - col)) != 1)
    if version >= 7:
        bits = bch_code(version, QR_VERSION_POLY)
        for i, places in enumerate(qr_version_places(size)):
            for row, col in places:
                put(row, col, bool(bits >> i & 1))
    for row, col in itertools.chain(*qr_format_places(size)):
        put(row, col, False)
    put(size - 8, 8, True)
    return dark, fixed


def qr_data_places(fixed: list[list[bool]]) -> list[tuple[int, int]]:
    """The free modules in the order codeword bits fill them: two columns at a
    time from the right, up then down, the vertical timing column skipped."""
    size, places, col, upward = len(fixed), [], len(fixed) - 1, True
    while col > 0:
        if col == 6:
            col = 5
        for row in range(size - 1, -1, -1) if upward else range(size):
            places += [(row, c) for c in (col, col - 1) if not fixed[row][c]]
        col, upward = col - 2, not upward
    return places


def qr_data_capacity(version: int) -> int:
    """Data codewords that version `version` holds at level M."""
    total = len(qr_data_places(qr_function_patterns(version)[1])) // 8
    return total - QR_BLOCKS[version - 1] * QR_EC_PER_BLOCK[version - 1]


def qr_count_bits(version: int) -> int:
    return 8 if version < 10 else 16


def qr_data_bits(data: bytes, version: int) -> str:
    """Byte mode as a string of 0 and 1: UTF-8 said where it matters (not ASCII),
    the mode indicator, the count, the bytes."""
    said = "" if data.isascii() else QR_UTF8
    return (f"{said}{QR_BYTE_MODE:04b}{len(data):0{qr_count_bits(version)}b}"
            + "".join(f"{byte:08b}" for byte in data))


def qr_version_for(data: bytes) -> int:
    """The smallest version that holds `data`; ValueError if none does."""
    for version in range(1, 41):
        if len(qr_data_bits(data, version)) <= 8 * qr_data_capacity(version):
            return version
    raise ValueError(f"{len(data)} bytes are too many for a QR code")


def qr_data_codewords(data: bytes, version: int) -> bytes:
    """The data bits, a terminator, then padding to the version's capacity."""
    capacity, bits = qr_data_capacity(version), qr_data_bits(data, version)
    bits += "0" * min(4, 8 * capacity - len(bits))
    bits += "0" * (-len(bits) % 8)
    words = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
    return words + bytes(QR_PAD[i % 2] for i in range(capacity - len(words)))


def qr_codewords(data: bytes, version: int) -> bytes:
    """The data codewords cut into blocks, each with its error correction, interleaved:
    the first codeword of each block, then the second, ...; then the same for the
    error correction.  The last blocks hold one data codeword more than the first."""
    words, count = qr_data_codewords(data, version), QR_BLOCKS[version - 1]
    short, longer = divmod(len(words), count)
    starts = [i * short + max(0, i - (count - longer)) for i in range(count + 1)]
    blocks = [words[starts[i]:starts[i + 1]] for i in range(count)]
    checks = [rs_remainder(block, QR_EC_PER_BLOCK[version - 1]) for block in blocks]
    return bytes(block[i] for part in (blocks, checks) for i in range(short + 1)
                 for block in part if i < len(block))


def qr_masked(dark: list[list[bool]], fixed: list[list[bool]], mask: int) -> list[list[bool]]:
    """The symbol with data modules flipped by `mask` and its format information in place."""
    flip = QR_MASKS[mask]
    masked = [[on ^ (not fixed[r][c] and flip(r, c)) for c, on in enumerate(row)]
              for r, row in enumerate(dark)]
    bits = qr_format_bits(mask)
    for places in qr_format_places(len(dark)):
        for i, (row, col) in enumerate(places):
            masked[row][col] = bool(bits >> i & 1)
    return masked


def qr_line_penalty(line: list[bool]) -> int:
    """Rules 1 and 3 in one row or column: runs of five or more of a colour, and
    1:1:3:1:1 finder look-alikes with four light modules on a side."""
    runs = sum(3 + n - 5 for n in (len(list(run)) for _, run in itertools.groupby(line)) if n >= 5)
    text = "0000" + "".join("1" if on else "0" for on in line) + "0000"   # the quiet zone is light
    return runs + 40 * len(QR_FINDER_LIKE.findall(text))


def qr_penalty(modules: list[list[bool]]) -> int:
    """The standard's four penalty rules; the mask with the lowest total is used."""
    lines = modules + [list(col) for col in zip(*modules)]
    boxes = sum(3 for above, below in zip(modules, modules[1:]) for c in range(len(above) - 1)
                if above[c] == above[c + 1] == below[c] == below[c + 1])
    dark, total = sum(map(sum, modules)), len(modules) ** 2
    return (sum(map(qr_line_penalty, lines)) + boxes
            + 10 * (abs(20 * dark - 10 * total) // total))


def qr_code(text: str) -> list[list[bool]]:
    """`text` (UTF-8) as a QR code at level M: its rows top to bottom, True for a
    dark module, without the quiet zone.  ValueError if it is too long."""
    data = text.encode("utf-8")
    version = qr_version_for(data)
    dark, fixed = qr_function_patterns(version)
    bits = [word >> (7 - i) & 1 for word in qr_codewords(data, version) for i in range(8)]
    for (row, col), bit in zip(qr_data_places(fixed), bits):   # what is left over stays light
        dark[row][col] = bool(bit)
    return min((qr_masked(dark, fixed, mask) for mask in range(8)), key=qr_penalty)


def qr_console_text(modules: list[list[bool]], colours: bool = False) -> str:
    """The code in block characters with its quiet zone, as light text on a dark
    background: a light module is a block, a dark one a space; two rows a line.
    With `colours`, each line sets its own (QR_COLOURS) and resets them after:
    a light theme's dark text on white would show the code inverted."""
    size = len(modules)
    light = [[not (0 <= r - QR_QUIET < size and 0 <= c - QR_QUIET < size
                   and modules[r - QR_QUIET][c - QR_QUIET])
              for c in range(size + 2 * QR_QUIET)] for r in range(size + 2 * QR_QUIET)]
    light.append([False] * len(light[0]))   # below the last line: the background
    blocks = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}
    start, end = (QR_COLOURS, "\x1b[0m") if colours else ("", "")
    return "\n".join(start + "".join(blocks[pair] for pair in zip(top, bottom)) + end
                     for top, bottom in zip(light[::2], light[1::2]))


# ---------------------------------------------------------------------------
# 11. Logging
# ---------------------------------------------------------------------------

# -- the console: what the host reads, fitted to the terminal ------------------

SGR = re.compile(r"\x1b\[[0-9;]*m")      # a colour: it takes no room on the screen
HANGING_ROW = re.compile(r"\s*[^\s:][^:]*:\s{2,}(?=\S)")   # "    label:   " before a value


def console_width(stream) -> int | None:
    """The columns a line printed to `stream` may take: the terminal's, or None
    where it is no terminal (a pipe or a file keeps each line whole)."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError, OSError):
        return None
    return shutil.get_terminal_size().columns - WINDOWS   # Windows' console wraps at its last column


def fit_console(text: str, width: int | None) -> str:
    """`text` with each line longer than `width` wrapped at words, the rest of it
    indented under its value (a "label:   value" row) or two spaces in; a word
    longer than the width (a link) stays whole."""
    if not width:
        return text
    lines = []
    for line in text.split("\n"):
        if len(SGR.sub("", line)) <= width:
            lines.append(line)
            continue
        lead = len(line) - len(line.lstrip(" "))
        row = HANGING_ROW.match(line)
        hang = row.end() if row and row.end() <= width // 2 else lead + 2
        lines += textwrap.wrap(line, width, initial_indent="", subsequent_indent=" " * hang,
                               break_long_words=False, break_on_hyphens=False,
                               drop_whitespace=True) or [line]
    return "\n".join(lines)


def console_colours(stream) -> bool:
    """Whether `stream` takes colours (SGR codes): a terminal, TERM not dumb,
    NO_COLOR not set (https://no-color.org), and on Windows a console whose
    virtual-terminal processing is on (turned on here if it can be)."""
    try:
        if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb" or not stream.isatty():
            return False
    except (AttributeError, ValueError, OSError):
        return False
    return not WINDOWS or windows_terminal_codes(stream)


def windows_terminal_codes(stream) -> bool:
    """Turn on the Windows console's virtual-terminal processing for `stream`; whether it is on."""
    import ctypes   # Windows' console API
    import msvcrt
    vt_processing = 0x0004   # ENABLE_VIRTUAL_TERMINAL_PROCESSING
    try:
        kernel32 = ctypes.windll.kernel32
        handle = msvcrt.get_osfhandle(stream.fileno())
        mode = ctypes.c_uint32()
        if not kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
            return False
        return bool(mode.value & vt_processing
                    or kernel32.SetConsoleMode(handle, mode.value | vt_processing))
    except (AttributeError, OSError, ValueError):
        return False


class ConsoleLog(logging.Formatter):
    """A log record as the console shows it: its time, level and message, fitted to the terminal."""

    def __init__(self, stream):
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
        self.stream = stream

    def format(self, record: logging.LogRecord) -> str:
        return fit_console(super().format(record), console_width(self.stream))


class PrivateLogFile(logging.handlers.RotatingFileHandler):
    """The rotating log, each file created readable by its owner only: it holds addresses."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def setup_logging(log_file: str, console: bool = True) -> None:
    """Log to a rotating file (4 files of 60000 bytes at most) and, from
    warnings up, to stderr."""
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.propagate = False
    if console:   # the console is the host's: warnings and errors only, the rest in the file
        stream = logging.StreamHandler()
        stream.setLevel(logging.WARNING)
        stream.setFormatter(ConsoleLog(stream.stream))
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
# 12. The GUI
# ---------------------------------------------------------------------------

TICK_MS = 100         # how often the window reads news from other threads
MEMBER_TICKS = 4      # ask the room who is in every 4 ticks
LOG_LINES = 3000      # log lines the window keeps
QUIT_GRACE = 3.0      # seconds past stop_flush before closing anyway



class RoomState(enum.Enum):
    """The room as the window runs it: its badge colour and word."""
    STOPPED = ("#868e96", "Stopped")
    STARTING = ("#e8890c", "Starting")
    RUNNING = ("#2f9e44", "Running")
    STOPPING = ("#e8890c", "Stopping")
    ERROR = ("#e03131", "Error")


WINDOW_BG = "#f3f4f6"
NOTE_WRAP = 440       # pixels: the notes under the addresses wrap here
ADDRESS_WRAP = 300    # pixels: a long address wraps rather than widen the window
TASKBAR = 40          # pixels a laptop's taskbar takes off the screen's height
TITLE_BAR = 32        # ... and the window manager's title bar and frame
WINDOW_TALL = 760     # pixels: the window's height where the screen has room for it
LISTS_GAP = 10        # pixels above who is online and the log
COPIED_MS = 4000      # how long the window says what was copied
CODE_PIXELS = 4       # a module of the invitation's code, on screen: it scans from arm's length
WINDOW_ADVICE = {     # bind_error_text's advice, in the window's own words
    "host": "set the listen address to 0.0.0.0 (every IPv4 network), :: (IPv6 too) or one of "
            "this machine's addresses",
    "port": "choose another port" if WINDOWS else "choose a port above 1023",
    "in use": "stop that program or choose another port with Change port…",
    "page in use": "choose another port for the room with Change port… (the page takes the one "
                   "after it), or untick the web page",
    "encrypted": "the terminal client in pcr_server.py, with encryption on (see its README)",
    "firewall": "tick the router box below, or set it by hand"}
ADDRESS_KINDS = {     # kind -> (its title, whom it is for, whose address it is), as listed
    "page": ("Web page", "from a browser or a phone", "this computer's address"),
    "page6": ("With IPv6", "from a browser or a phone with IPv6", "this computer's IPv6 address"),
    "private": ("Same network", "with the App or a terminal on the same network",
                "this computer's address on the network"),
    "public": ("Over the internet", "with the App or a terminal over the internet",
               "this computer's public address"),
    "public6": ("With IPv6", "with a terminal with IPv6 (the App cannot use it)",
                "this computer's IPv6 address")}
ADDRESS_NEEDS = {"page": "private", "page6": "ipv6", "private": "private", "public": "public",
                 "public6": "ipv6"}   # kind -> the address of this computer it is made of
ADDRESS_HEADINGS = {"page": PAGE_FOR, "private": CHAT_FOR}   # above the first address for each
COPY_TEXT = {"private": "Copy", "public": "Copy", "public6": "Copy", "page": "Copy link",
             "page6": "Copy link"}
UNKNOWN = {           # why an address is not known -> (what the window shows, what Copy says)
    "looking": ("looking up…", "{whose} is still being looked up"),
    "off": ("not looked up", "{whose} was not looked up; your router's status page shows it"),
    "failed": ("not found: your router's status page shows it", LOOK_UP_FAILED),
}


def since_text(when: float) -> str:
    """A wall-clock time as the member list shows it: the date only if not today."""
    t = time.localtime(when)
    if t[:3] == time.localtime()[:3]:
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%d %b %H:%M", t)


def privacy_text(settings: Settings) -> str:
    """Whether the room is encrypted, needs a key, keeps lines for newcomers and
    how much of the photos shared, in a few words."""
    encrypted = "encrypted (TLS)" if settings.tls_cert else "not encrypted"
    text = f"{encrypted}, {'room key' if settings.room_key else 'no room key'}"
    text += f",\n{HISTORY_KEPT.format(settings.history)}" if settings.history else ""
    photos = settings.photos and settings.web_port is not None   # shared on the page alone
    return text + (f",\nphotos shared on the page: {PHOTOS_KEPT.format(settings.photos)}"
                   if photos else "")


def member_row(name: str, ip: str, since: float, kind: str) -> tuple[str, str, str, str]:
    """A member as the list shows it: alias, kind, IP address, online since."""
    return name, kind, ip, since_text(since)


def window_size(wants: tuple[int, int], screen: tuple[int, int]) -> tuple[int, int]:
    """The window's size, set once (it never changes by itself): as wide as it
    asks, as tall as WINDOW_TALL, both within the screen above a taskbar."""
    return (min(wants[0], screen[0]),
            min(max(wants[1], WINDOW_TALL), screen[1] - TASKBAR - TITLE_BAR))


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

    def take(self) -> list[tuple[int, str]]:
        """The records that came since the last take (on the window's thread)."""
        lines = []
        while True:
            try:
                lines.append(self.records.get_nowait())
            except queue.Empty:
                return lines


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


def few_names(rows: dict[str, tuple]) -> str:
    """Who is in the room (the member list's rows), in a few names."""
    names = [member[0] for member in rows.values()]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def moved_to(settings: Settings, host: str, port: int) -> Settings:
    """The settings with the room at host:port; a page on the room's port + 1 moves with it."""
    follows = settings.web_port == next_page_port(dataclasses.replace(settings, web_port=None))
    web_port = next_page_port(dataclasses.replace(settings, port=port, web_port=None))
    return dataclasses.replace(settings, host=host, port=port,
                               web_port=web_port if follows else settings.web_port)


def page_problem(settings: Settings) -> str | None:
    """Why the page cannot be served where `settings` say, in the window's words; None if it can."""
    if settings.web_port is None:
        return None
    return bind_problem(settings.host, settings.web_port, WINDOW_ADVICE, in_use="page in use")


def ipv6_note(join: FriendsJoin, upnp: bool) -> str:
    """What the window says under the IPv6 addresses: not for the App; without the router
    box, the router's firewall must let the ports in.  "" without them."""
    if not join.ipv6:
        return ""
    return ("The App cannot use IPv6 addresses: its address box takes IPv4 only."
            + ("" if upnp else f" For IPv6, the router's firewall must let these ports in: "
                               f"{WINDOW_ADVICE['firewall']}."))


def hand_internet_page(server: Server | None, join: FriendsJoin) -> None:
    """Tell a running room the page's link over the internet: the photo links
    of members who come from the internet."""
    if server:
        server.loop.call_soon_threadsafe(server.door.photos.heard_internet_page, join.page_internet)


def serve_in_thread(server: Server, inbox: queue.Queue) -> None:
    """The GUI's server thread: listen, serve until stopped, close the loop.

    Tells the window through `inbox`: ("listening", server, address, page
    address or None), then ("page-failed", server, sentence) if the page asked
    for cannot be served; or ("failed", server, sentence).
    """
    try:
        try:
            address = server.listen()
        except StartError as e:
            log.error("%s", e)
            inbox.put(("failed", server, str(e)))
            return
        inbox.put(("listening", server, address, server.web_address))
        if server.page_problem:   # the room is open without it
            inbox.put(("page-failed", server, server.page_problem))
        server.serve()
    except Exception:
        log.exception("the server stopped on an unexpected error")
    finally:
        server.loop.close()


def open_page_in(server: Server, port: int, inbox: queue.Queue) -> None:
    """On the loop's thread: serve the page on `port` too; tell the window
    ("page", server, address) or ("page-failed", server, sentence)."""
    try:
        inbox.put(("page", server, server.open_page(port)))
    except StartError as e:
        inbox.put(("page-failed", server, str(e)))


class InvitationCode:
    """The page's invitation as a QR code, above who is online (where the window has
    room to spare): drawn again when the link changes, hidden while there is none."""

    def __init__(self, side):
        import tkinter as tk
        from tkinter import ttk
        self.box = ttk.Labelframe(side, text="Scan to join from a phone", padding=(10, 4))
        self.box.grid(row=0, column=0, sticky="ew", pady=(0, 8))
        self.canvas = tk.Canvas(self.box, background="white", highlightthickness=0, borderwidth=0)
        self.canvas.grid(row=0, column=0, sticky="w")
        ttk.Label(self.box, style="Note.TLabel", wraplength=NOTE_WRAP // 2,
                  text="A phone on the same network opens the chat page with its camera."
                  ).grid(row=0, column=1, sticky="nw", padx=(14, 0))
        self.link: str | None = ""   # the link drawn ("": nothing yet)
        self.show(None)

    def show(self, link: str | None) -> None:
        """Draw the code of `link`; None (or a link too long for a code) hides it."""
        if link == self.link:
            return
        self.link = link
        self.canvas.delete("all")
        try:
            modules = qr_code(link) if link else []
        except ValueError:
            modules = []
        if not modules:
            self.box.grid_remove()
            return
        side = (len(modules) + 2 * QR_QUIET) * CODE_PIXELS
        self.canvas.configure(width=side, height=side)
        for r, row in enumerate(modules):
            for c, dark in enumerate(row):
                if dark:
                    x, y = (c + QR_QUIET) * CODE_PIXELS, (r + QR_QUIET) * CODE_PIXELS
                    self.canvas.create_rectangle(x, y, x + CODE_PIXELS, y + CODE_PIXELS,
                                                 fill="black", width=0)
        self.box.grid()


class ScrollArea:
    """A frame (`inner`) that scrolls up and down where the window is too short
    for it (a laptop's screen): as wide as the area, as tall as what it holds.
    The scroll bar shows only while something is out of sight; the wheel
    scrolls it while the pointer is over it."""

    def __init__(self, parent, row: int):
        import tkinter as tk
        from tkinter import ttk
        self.canvas = tk.Canvas(parent, background=WINDOW_BG, highlightthickness=0, borderwidth=0)
        self.canvas.grid(row=row, column=0, sticky="nsew")
        self.bar = ttk.Scrollbar(parent, orient="vertical", command=self.canvas.yview)
        self.bar.grid(row=row, column=1, sticky="ns", padx=(6, 0))
        parent.columnconfigure(1, minsize=self.bar.winfo_reqwidth() + 6)   # the bar's, shown or not
        self.canvas.configure(yscrollcommand=self.bar.set)
        self.inner = ttk.Frame(self.canvas)
        self.item = self.canvas.create_window(0, 0, window=self.inner, anchor="nw")
        self.inner.bind("<Configure>", self._fit)
        self.canvas.bind("<Configure>", self._fit)
        for wheel in ("<MouseWheel>", "<Button-4>", "<Button-5>"):   # Windows and macOS; X11
            self.canvas.bind_all(wheel, self._scroll, add="+")

    def _fit(self, _event=None) -> None:
        """Ask for room for all it holds; show what fits, the bar if not all does."""
        wide, tall = self.inner.winfo_reqwidth(), self.inner.winfo_reqheight()
        self.canvas.configure(width=wide, height=tall, scrollregion=(0, 0, wide, tall))
        self.canvas.itemconfigure(self.item, width=max(wide, self.canvas.winfo_width()))
        if tall > self.canvas.winfo_height() > 1:
            self.bar.grid()
        else:
            self.bar.grid_remove()
            self.canvas.yview_moveto(0)

    def _scroll(self, event) -> None:
        """The wheel turned: scroll, if the pointer is over this area and not all of it shows."""
        over, area = str(self.canvas.winfo_containing(event.x_root, event.y_root)), str(self.canvas)
        if self.bar.winfo_ismapped() and (over == area or over.startswith(area + ".")):
            up = event.num == 4 or event.delta > 0
            self.canvas.yview_scroll(-1 if up else 1, "units")


class WindowView:
    """The window's widgets, built once: the bar; how friends join, the
    invitation's code and this server (in a ScrollArea); who is online and
    the log.  It holds no state of the room; its buttons call the
    ServerWindow that made it."""

    def __init__(self, root, window: "ServerWindow", settings: Settings):
        self.root = root
        self._style()
        self._build(window, settings)

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

    def _build(self, window: "ServerWindow", settings: Settings) -> None:
        from tkinter import ttk
        self.root.title(f"PrivateChatRoom-Server v{VERSION}")
        self.root.columnconfigure(0, weight=1)
        self.root.rowconfigure(0, weight=1)
        frame = ttk.Frame(self.root, padding=12)
        frame.grid(sticky="nsew")
        frame.columnconfigure(0, weight=1)
        frame.rowconfigure(2, weight=1)   # it scrolls once the lists below are at their least
        frame.rowconfigure(3, weight=100)   # at least what they ask (fit_screen)
        self.frame = frame
        self._build_bar(frame, window)
        self.upper = ScrollArea(frame, row=2)
        top = self.upper.inner
        top.columnconfigure(1, weight=1)
        self._build_join(top, window, settings)
        side = ttk.Frame(top)
        side.grid(row=0, column=1, sticky="nsew", padx=(10, 0))
        side.columnconfigure(0, weight=1)
        self.invite_code = InvitationCode(side)
        self._build_info(side)
        self.lists = lists = ttk.Frame(frame)
        lists.grid(row=3, column=0, columnspan=2, sticky="nsew", pady=(LISTS_GAP, 0))
        lists.columnconfigure(0, weight=1)
        lists.columnconfigure(1, weight=2)
        lists.rowconfigure(0, weight=1)
        self._build_members(lists, window)
        self._build_log(lists)

    def _build_bar(self, frame, window: "ServerWindow") -> None:
        import tkinter as tk
        from tkinter import ttk
        bar = ttk.Frame(frame)
        bar.grid(row=0, column=0, columnspan=2, sticky="ew")
        bar.columnconfigure(4, weight=1)
        self.start_button = ttk.Button(bar, text="Start server", style="Go.TButton",
                                       command=window.start)
        self.stop_button = ttk.Button(bar, text="Stop server", style="Halt.TButton",
                                      command=window.ask_stop)
        self.port_button = ttk.Button(bar, text="Change port…", command=window.change_port)
        self.address_button = ttk.Button(bar, text="Set listen address…",
                                         command=window.set_listen_address)
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

    def _build_join(self, side, window: "ServerWindow", settings: Settings) -> None:
        """The two addresses, each with its Copy button, and what else friends need."""
        from tkinter import ttk
        box = ttk.Labelframe(side, text="How friends join", padding=(12, 8))
        box.grid(row=0, column=0, sticky="nsew")
        self.address_rows = rows = ttk.Frame(box)
        rows.grid(row=0, column=0, sticky="ew")
        rows.columnconfigure(1, weight=1)
        self.addresses: dict[str, ttk.Label] = {}
        self.copy_buttons: dict[str, ttk.Button] = {}
        self.address_rows_of: dict[str, list] = {}   # kind -> its widgets, heading included
        row = 0
        for kind, (title, _, _) in ADDRESS_KINDS.items():
            heading = ADDRESS_HEADINGS.get(kind)
            if heading:   # whom the addresses below are for
                heading = ttk.Label(rows, text=heading[:1].upper() + heading[1:] + ":",
                                    style="Note.TLabel")
                heading.grid(row=row, column=0, columnspan=3, sticky="w", pady=(4, 0))
                row += 1
            title_label = ttk.Label(rows, text=title, style="Key.TLabel")
            title_label.grid(row=row, column=0, sticky="w", pady=3, padx=(12, 14))
            self.addresses[kind] = ttk.Label(rows, style="Value.TLabel", width=-21,
                                             wraplength=ADDRESS_WRAP)
            self.addresses[kind].grid(row=row, column=1, sticky="w", pady=3)
            self.copy_buttons[kind] = ttk.Button(rows, text=COPY_TEXT[kind], width=9,
                                                 command=lambda kind=kind: window.copy_address(kind))
            self.copy_buttons[kind].grid(row=row, column=2, sticky="e", pady=3, padx=(10, 0))
            self.address_rows_of[kind] = [widget for widget in (
                heading, title_label, self.addresses[kind], self.copy_buttons[kind]) if widget]
            row += 1
        self.forward_note = ttk.Label(rows, style="Note.TLabel", wraplength=NOTE_WRAP)
        self.forward_note.grid(row=row, column=0, columnspan=3, sticky="w", pady=(0, 3))
        self.ipv6_note = ttk.Label(rows, style="Note.TLabel", wraplength=NOTE_WRAP)
        self.ipv6_note.grid(row=row + 1, column=0, columnspan=3, sticky="w", pady=(0, 3))
        self._build_switches(box, window, settings)
        notes = []
        for row, style in enumerate(("Problem", "Note", "Note", "Note", "Note", "Problem", "Note"),
                                    start=4):
            notes.append(ttk.Label(box, style=f"{style}.TLabel", wraplength=NOTE_WRAP))
            notes[-1].grid(row=row, column=0, sticky="w", pady=(4, 0))
        (self.loopback_warning, self.router_note, self.https_note, self.tls_note, self.key_note,
         self.key_warning, self.copied_note) = notes
        self.copied_note.grid_remove()

    def _build_switches(self, box, window: "ServerWindow", settings: Settings) -> None:
        """The page switch, the router switch and the https box: each works while the room runs."""
        import tkinter as tk
        from tkinter import ttk
        self.page_on = tk.BooleanVar(value=settings.web_port is not None)
        self.page_switch = ttk.Checkbutton(box, variable=self.page_on, command=window.switch_page)
        self.page_switch.grid(row=1, column=0, sticky="w", pady=(4, 0))
        self.upnp_on = tk.BooleanVar(value=settings.upnp)
        self.upnp_switch = ttk.Checkbutton(box, variable=self.upnp_on, command=window.switch_router,
                                           text="Let my router forward the port, and let it in "
                                                "over IPv6 (UPnP / NAT-PMP / PCP)")
        self.upnp_switch.grid(row=2, column=0, sticky="w", pady=(4, 0))
        self.https_on = tk.BooleanVar(value=settings.https)
        self.https_switch = ttk.Checkbutton(box, variable=self.https_on, command=window.switch_https,
                                            text="HTTPS for the page over the internet")
        self.https_switch.grid(row=3, column=0, sticky="w", pady=(4, 0))

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
        self.info["privacy"].configure(wraplength=NOTE_WRAP * 3 // 4)   # the photos' words wrap

    def _build_members(self, side, window: "ServerWindow") -> None:
        from tkinter import ttk
        self.members_box = box = ttk.Labelframe(side, text="Online (0)", padding=(10, 8))
        box.grid(row=0, column=0, sticky="nsew")
        box.columnconfigure(0, weight=1)
        box.rowconfigure(0, weight=1)
        self.tree = ttk.Treeview(box, columns=("alias", "kind", "ip", "since"), show="headings",
                                 height=3, selectmode="extended")   # more where the screen has room
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
        self.tree.bind("<<TreeviewSelect>>", lambda _event: window._show_disconnect())
        self.disconnect_button = ttk.Button(box, text="Disconnect selected",
                                            command=window.disconnect_selected)
        self.disconnect_button.grid(row=1, column=0, columnspan=2, sticky="e", pady=(8, 0))

    def _build_log(self, frame) -> None:
        import tkinter as tk
        from tkinter import ttk
        box = ttk.Labelframe(frame, text="Server log", padding=(10, 8))
        box.grid(row=0, column=1, sticky="nsew", padx=(10, 0))
        box.columnconfigure(0, weight=1)
        box.rowconfigure(0, weight=1)
        self.log_text = tk.Text(box, height=5, width=60, wrap="word", font="TkFixedFont",
                                background="white", foreground="#212529", relief="flat",
                                borderwidth=0, highlightthickness=1, highlightcolor="#ced4da",
                                highlightbackground="#ced4da", padx=8, pady=6, state="disabled")
        self.log_text.tag_configure("WARNING", foreground="#b35c00")
        self.log_text.tag_configure("ERROR", foreground="#c92a2a")
        scroll = ttk.Scrollbar(box, orient="vertical", command=self.log_text.yview)
        self.log_text.configure(yscrollcommand=scroll.set)
        self.log_text.grid(row=0, column=0, sticky="nsew")
        scroll.grid(row=0, column=1, sticky="ns")

    def fit_screen(self) -> None:
        """Give the window its size, once (window_size): nothing shown later makes it
        grow.  Who is online and the log keep what they ask; the part above scrolls."""
        root = self.root
        root.update_idletasks()
        least = self.lists.winfo_reqheight() + LISTS_GAP
        self.frame.rowconfigure(3, minsize=least)
        wide, tall = window_size((root.winfo_reqwidth(), root.winfo_reqheight()),
                                 (root.winfo_screenwidth(), root.winfo_screenheight()))
        root.geometry(f"{wide}x{tall}")
        root.minsize(wide, min(tall, least * 2))

    def show_log(self, lines: list[tuple[int, str]]) -> None:
        """Add (levelno, text) lines to the log panel; it keeps the last LOG_LINES."""
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

    def show_members(self, rows: dict[str, tuple], snapshot: list[tuple[str, str, float, str]]) -> None:
        """Make the list and `rows` (tree item -> member) match the room: drop who left,
        add who came.  `snapshot` holds (name, ip, wall-clock join time, kind) per member."""
        tree = self.tree
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

    def copied_gone(self) -> None:
        """What was copied is said no more: the Copy buttons read Copy again."""
        for kind, button in self.copy_buttons.items():
            button.configure(text=COPY_TEXT[kind])
        show_line(self.copied_note, "")


class RouterSwitch:
    """The window's router switch at work: while it is on and the room runs,
    the router is asked to forward the room's ports (ask_router), and its
    answer is kept.  On the Tk thread; the answer comes through the inbox."""

    def __init__(self):
        self.router: RouterPorts | None = None   # asking the router to forward
        self.heard: tuple[RouterResult, str | None] | None = None   # its answer

    def ask(self, settings: Settings, listening: tuple[str, int] | None,
            page_listening: tuple[str, int] | None, news: Callable) -> None:
        """Ask (again: the ports changed) if the switch is on and friends elsewhere
        could join; news(result, public_ip) on another thread once it knows."""
        self.forget()
        if settings.upnp and listening is not None and not is_loopback(listening[0]):
            self.router = ask_router(settings, listening, page_listening, news)

    def hear(self, result: RouterResult, public_ip: str | None) -> None:
        if self.router is not None:
            self.heard = result, public_ip

    def forget(self) -> None:
        """Remove the mappings, on a thread: it takes a few seconds, and the process
        waits for it before it ends."""
        router, self.router, self.heard = self.router, None, None
        if router is not None:
            threading.Thread(target=router.close, name="router-close").start()

    def close(self) -> None:
        """Remove the mappings now, before the window goes (a few seconds)."""
        if self.router is not None:
            self.router.close()
            self.router = None

    def note(self, join: FriendsJoin) -> str:
        """What the window says of the router, for both IPv4 (a forwarded port shows as
        the address) and its IPv6 firewall."""
        if self.router is not None and self.heard is None:
            return "Asking your router to forward the port…"
        said = [join.router] if self.heard and not self.heard[0].address(join.listen[1]) else []
        said += [join.firewall] if self.heard and join.firewall else []
        return " ".join(f"{s[:1].upper()}{s[1:]}{'' if s.endswith('.') else '.'}" for s in said)


class HttpsSwitch:
    """The window's https box at work: while it is ticked and the room serves its page,
    a PageCertificate keeps the page's certificate, told the public address once the
    look-up or the router has said it.  On the Tk thread; what the keeper says comes
    through the inbox (hear)."""

    def __init__(self):
        self.keeper: PageCertificate | None = None
        self.told: tuple[str | None, str] | None = None   # the address last told to the keeper
        self.said: tuple[str, bool] = ("", False)         # its last sentence, and if a warning
        self.certified: str | None = None                 # the address its certificate names

    def start(self, settings: Settings, server: Server | None, listening: tuple[str, int] | None,
              page_listening: tuple[str, int] | None, private_ip: str | None,
              news: Callable) -> None:
        """Keep a certificate for the page (again: a port changed) if the box is ticked and
        friends elsewhere could open it; news(kind, ...) on the keeper's thread."""
        self.stop(server)
        if not (settings.https and server and listening and page_listening):
            return
        if is_loopback(listening[0]) or https_problem(settings):   # a Python without ssl, say
            self.said = (https_problem(settings) or HTTPS_ONLY_HERE.format(listening[0]), False)
            return
        server.loop.call_soon_threadsafe(server.door.secure.switch, True)
        lan = host_port(same_network_host(listening[0], private_ip or "?"), page_listening[1])
        self.keeper = PageCertificate(settings, server, lan, lambda *said: news("https-said", *said),
                                      lambda ip, _: news("https-certified", ip))

    def stop(self, server: Server | None = None) -> None:
        """No certificate kept any more; the page's port serves http alone."""
        keeper, self.keeper, self.told, self.certified, self.said = self.keeper, None, None, None, (
            "", False)
        if keeper is not None:
            keeper.close()
        if server is not None:
            server.loop.call_soon_threadsafe(server.door.secure.switch, False)

    def hear(self, kind: str, *news) -> None:
        if self.keeper is not None:
            if kind == "https-said":
                self.said = news[0], news[1]
            else:
                self.certified = news[0]

    def tell(self, router: RouterSwitch, public_ip: str | None, looking: bool) -> None:
        """Tell the keeper the address to certify once it is known: the router's where it
        forwards the room (or has none), else the look-up's."""
        result, router_public_ip = router.heard or (None, None)
        if result and result.outcome in (RouterOutcome.FORWARDED, RouterOutcome.NO_PUBLIC):
            address = certificate_address(result, router_public_ip, None)
        elif (router.router is not None and result is None) or (looking and not public_ip):
            return   # not known yet
        else:
            address = certificate_address(None, None, public_ip)
        if self.keeper is not None and address != self.told:
            self.told = address
            self.keeper.address(*address)

    def show(self, view: WindowView, page: bool) -> None:
        """What the window says of https (a warning as a problem); the box works with the page."""
        text, warning = self.said
        text = text[:1].upper() + text[1:]
        show_line(view.https_note, f"HTTPS: {text}" + ("" if text.endswith(("…", ".")) else ".")
                  if text else "")
        view.https_note.configure(style="Problem.TLabel" if warning else "Note.TLabel")
        view.https_switch.state(["!disabled"] if page and view.upnp_switch.instate(["!disabled"])
                                else ["disabled"])


def status_sentence(state: RoomState, listen: tuple[str, int], quitting: bool, problem: str) -> str:
    """The window's status line for the room in `state`, listening at `listen`."""
    host, port = listen
    where = host_port(host, port)
    if quitting:
        return "Stopping the server before closing…"
    if state == RoomState.RUNNING and is_loopback(host):
        return f"The room is open, but only this computer can join it ({where})."
    return {
        RoomState.STOPPED: f"The room is closed. Start server opens it on {where}.",
        RoomState.STARTING: f"Starting on {where}…",
        RoomState.RUNNING: f"The room is open on port {port}. Give friends one of the addresses below.",
        RoomState.STOPPING: "Stopping: members are being told the server stops…",
        RoomState.ERROR: problem,
    }[state]


class ServerWindow:
    """The server's window: start and stop, addresses, who is in, the log.

    Everything here runs on the Tk thread.  The server runs on a thread of
    its own; the window reaches it only through loop.call_soon_threadsafe
    and hears back through `inbox`, read every TICK_MS by after().
    """

    def __init__(self, root, settings: Settings):
        self.root = root
        self.settings = dataclasses.replace(settings)
        self.state = RoomState.STOPPED
        self.problem = ""                 # why the server is in RoomState.ERROR
        self.server: Server | None = None
        self.thread: threading.Thread | None = None
        self.listening: tuple[str, int] | None = None
        self.page_listening: tuple[str, int] | None = None   # where the page is served
        self.start_error: str | None = None
        self.restart_pending = False
        self.quitting = False
        self.quit_deadline = 0.0
        self.close_requested = False      # set by a signal handler
        self.closed = False
        self.inbox: queue.Queue = queue.Queue()   # (kind, ...) from other threads
        self.log_feed = LogFeed()
        self.ips: dict[str, str | None] = {"private": None, "public": None, "ipv6": None}   # once known
        self.unknown = {"private": "looking", "ipv6": "looking",              # kind -> why not yet
                        "public": "looking" if settings.public_ip_url else "off"}
        self.mac = "looking up…"
        self.rows: dict[str, tuple] = {}   # tree item -> (name, ip, since, kind)
        self.dialog: FormDialog | None = None
        self.ticks = 0
        self.flash_id = None
        self.copied_ms = COPIED_MS   # how long "Copied ✓" and what was copied stay
        self.router = RouterSwitch()
        self.https = HttpsSwitch()
        self.view = WindowView(root, self, settings)
        log.addHandler(self.log_feed)
        self._look_up_addresses()
        self._show_members([])
        self._show_state()
        self.view.fit_screen()
        root.protocol("WM_DELETE_WINDOW", self.close)
        self.tick_id = root.after(TICK_MS, self._tick)

    # -- starting and stopping ------------------------------------------
    def start(self) -> None:
        """Open the room with the current settings, on a thread of its own."""
        if self.state not in (RoomState.STOPPED, RoomState.ERROR) or self.thread is not None or self.quitting:
            return
        show_line(self.view.copied_note, "")   # a refusal of the closed room no longer holds
        problem = bind_problem(self.settings.host, self.settings.port, WINDOW_ADVICE)
        if problem:   # said here in the window's words; the server would name a flag
            log.error("%s", problem)
            self._set_state(RoomState.ERROR, problem)
            return
        if problem := page_problem(self.settings):   # the room opens all the same
            self._page_refused(problem)
        self.server = Server(dataclasses.replace(self.settings))
        self.thread = threading.Thread(target=serve_in_thread, args=(self.server, self.inbox),
                                       name="server", daemon=True)
        self._set_state(RoomState.STARTING)
        self.thread.start()

    def ask_stop(self) -> None:
        """The Stop button: asks first when anyone is in the room."""
        if not self.rows:
            return self.stop()
        self._ask("Stop the room?", [], self.stop, ok_text="Stop server",
                  message=f"Everyone in the room ({few_names(self.rows)}) will be disconnected.")

    def stop(self) -> None:
        """Ask the server to stop; _tick notices when its thread has ended."""
        if self.server is None or self.state == RoomState.STOPPING:
            return
        self._set_state(RoomState.STOPPING)
        self.server.loop.call_soon_threadsafe(self.server.stop)

    def _server_ended(self) -> None:
        """The server thread is gone: show why, then restart or close if asked."""
        self.server = self.thread = self.listening = self.page_listening = None
        self.router.forget()
        self.https.stop()
        self._show_members([])
        problem, self.start_error = self.start_error, None
        restart, self.restart_pending = self.restart_pending, False
        if self.quitting:
            self._destroy()
        elif problem:
            self._set_state(RoomState.ERROR, problem)
        elif self.state == RoomState.STOPPING:
            self._set_state(RoomState.STOPPED)
            if restart:
                self.start()
        else:
            self._set_state(RoomState.ERROR, "The server stopped unexpectedly; the log below says why.")

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
        self.router.close()
        self.https.stop()
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
        self.view.show_log(self.log_feed.take())
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
        if self.state == RoomState.RUNNING and self.ticks % MEMBER_TICKS == 0:
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
                self._learn_ip("ipv6", news[2])
                self.mac = news[1]
            elif news[0] is not self.server:
                continue   # from a server that has been replaced
            elif kind == "listening":
                self.listening, self.page_listening = news[1], news[2]
                if self.state == RoomState.STARTING:
                    self.state = RoomState.RUNNING
                    self._ask_router()
            elif kind == "page":
                self.page_listening = news[1]
                self._ask_router()   # the page's port too
            elif kind == "router":
                self.router.hear(news[1], news[2])
            elif kind.startswith("https"):
                self.https.hear(kind, *news[1:])
            elif kind == "page-failed":
                self._page_refused(news[1])
            elif kind == "failed":
                self.start_error = news[1]
            elif kind == "members" and self.state == RoomState.RUNNING:
                self._show_members(news[1])
            self._show_state()

    def _look_up_addresses(self) -> None:
        """Private IP, MAC and IPv6 address on one thread, the public IP on another."""
        inbox = self.inbox   # threads hold the queue, never the window (Tk dies on its own thread)
        threading.Thread(target=lambda: inbox.put(
            ("host", private_ipv4(), mac_address(), internet_ipv6())), name="host-addresses",
            daemon=True).start()
        if self.settings.public_ip_url:
            look_up_public_ip(self.settings.public_ip_url, lambda ip: inbox.put(("public-ip", ip)))

    def _learn_ip(self, kind: str, ip: str | None) -> None:
        try:
            self.ips[kind] = str(ipaddress.ip_address(ip or ""))
        except ValueError:
            self.unknown[kind] = "failed"

    # -- who is online ----------------------------------------------------
    def _show_members(self, snapshot: list[tuple[str, str, float, str]]) -> None:
        self.view.show_members(self.rows, snapshot)
        self._show_disconnect()

    def _show_disconnect(self) -> None:
        usable = self.state == RoomState.RUNNING and any(i in self.rows for i in self.view.tree.selection())
        self.view.disconnect_button.state(["!disabled"] if usable else ["disabled"])

    def disconnect_selected(self) -> None:
        """Remove the selected members: each gets a line saying so, the room sees them leave."""
        if self.state != RoomState.RUNNING:
            return
        for item in self.view.tree.selection():
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
        """Ask for the address and port to listen on (`::` or 0.0.0.0: every network)."""
        self._ask("Set listen address",
                  [("Address (:: all, 0.0.0.0 IPv4 alone)", self.settings.host),
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
        running = self.state in (RoomState.STARTING, RoomState.RUNNING)
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
        self._ask("Restart the room?", [], lambda: self._apply_address(host, port),
                  message=f"The room will restart on {host_port(host, port)}. Everyone in it "
                          f"({few_names(self.rows)}) will be disconnected and must join again at the new "
                          f"address.", ok_text="Restart")

    def _apply_address(self, host: str, port: int) -> None:
        """Listen there from the next start (now, if running); keep the port in .pcr_port."""
        try:
            save_port_file(port)
        except OSError as e:
            log.warning("could not save the port to %s (%s)", PORT_FILE, e.strerror)
        if (host, port) != (self.settings.host, self.settings.port):
            self.settings = moved_to(self.settings, host, port)
            log.info("listen address set to %s", host_port(host, port))
            show_line(self.view.copied_note, "")   # what was said of the old address
            if self.state in (RoomState.STARTING, RoomState.RUNNING):
                self.restart_pending = True
                self.stop()
            elif self.state == RoomState.ERROR:   # its cause was the old address
                self.state = RoomState.STOPPED
        self._show_state()

    # -- how friends join -------------------------------------------------
    def _listen_address(self) -> tuple[str, int]:
        return self.listening or (self.settings.host, self.settings.port)

    def _page_port(self) -> int:
        return self.page_listening[1] if self.page_listening else next_page_port(self.settings)

    def _friends_join(self) -> FriendsJoin:
        return friends_join(self.settings, self._listen_address(), self.ips["private"],
                            self.ips["public"], self._page_port() if self.view.page_on.get() else None,
                            *(self.router.heard or (None, None)), ipv6=self.ips["ipv6"],
                            certified=self.https.certified is not None)

    def _address(self, kind: str) -> str | None:
        """The address friends join at, for `kind` ("private", "public", or "page": the
        page's link, public when known); None if not known."""
        join = self._friends_join()
        return {"private": join.same_network, "public": join.internet, "public6": join.ipv6,
                "page": join.page_internet or join.page_same, "page6": join.page_ipv6}[kind]

    def switch_page(self) -> None:
        """The page switch: serve the chat page from the next start, and now if running."""
        on, running = self.view.page_on.get(), self.state == RoomState.RUNNING
        port = next_page_port(self.settings)
        if on and running:
            problem = bind_problem(self.settings.host, port, WINDOW_ADVICE)
            if problem:
                self._page_refused(problem)
                return
        self.settings = dataclasses.replace(self.settings, web_port=port if on else None)
        if running:
            server, inbox = self.server, self.inbox
            if on:
                server.loop.call_soon_threadsafe(open_page_in, server, port, inbox)
            else:
                self.page_listening = None
                server.loop.call_soon_threadsafe(server.close_page)
                self._ask_router()   # the room's port alone
        self._show_state()

    # -- the router ---------------------------------------------------------
    def switch_router(self) -> None:
        """The router switch: ask the router to forward the ports from the next
        start, and now if running; unticked, the mappings are removed."""
        on = self.view.upnp_on.get()
        self.settings = dataclasses.replace(self.settings, upnp=on)
        if self.state == RoomState.RUNNING:
            self._ask_router() if on else self.router.forget()
        self._show_state()

    def _ask_router(self) -> None:
        server, inbox = self.server, self.inbox
        self.router.ask(self.settings, self.listening, self.page_listening,
                        lambda result, ip: inbox.put(("router", server, result, ip)))
        self.https.start(self.settings, server, self.listening, self.page_listening,   # if ticked
                         self.ips["private"], lambda kind, *news: inbox.put((kind, server, *news)))

    def switch_https(self) -> None:
        """The https box: from the next start, and now if the room runs with its page."""
        self.settings = dataclasses.replace(self.settings, https=self.view.https_on.get())
        if self.state == RoomState.RUNNING:
            self._ask_router()   # the router's port 80 too, and the keeper
        self._show_state()

    def _page_refused(self, problem: str) -> None:
        self.view.page_on.set(False)
        self.settings = dataclasses.replace(self.settings, web_port=None)
        show_line(self.view.copied_note, f"The web page cannot be served: {problem}")
        self._show_state()

    def copy_address(self, kind: str) -> None:
        """Put one of the friends' addresses on the clipboard and say which; nothing while closed."""
        address, (_, whom, whose) = self._address(kind), ADDRESS_KINDS[kind]
        if self.state != RoomState.RUNNING:
            said = "Nothing copied: the room is closed. Press Start server first."
        elif address is None:
            why = self.unknown[ADDRESS_NEEDS[kind]]
            said = "Nothing copied: " + UNKNOWN[why][1].format(whose=whose) + "."
        else:
            copied = invitation(address, self.settings.room_key) if kind.startswith("page") else address
            self.root.clipboard_clear()
            self.root.clipboard_append(copied)
            self.view.copy_buttons[kind].configure(text="Copied ✓")
            keyed = " with the room key" if copied != address else ""
            said = f"Copied {address}{keyed}: give it to friends who join {whom}."
        show_line(self.view.copied_note, said)
        if self.flash_id:
            self.root.after_cancel(self.flash_id)
        self.flash_id = self.root.after(self.copied_ms, self._copied_shown)

    def _copied_shown(self) -> None:
        self.flash_id = None
        self.view.copied_gone()

    def _show_join(self) -> None:
        """How friends join (friends_join, as the banner says it): the addresses and
        the router advice, or the warning that nobody else can join; the key form
        and a short-key warning."""
        view, join = self.view, self._friends_join()
        hand_internet_page(self.server, join)
        for kind, label in view.addresses.items():
            label.configure(text=self._address(kind) or UNKNOWN[self.unknown[ADDRESS_NEEDS[kind]]][0])
            shown = {"page": join.page_port, "page6": join.page_ipv6, "public6": join.ipv6}.get(kind, 1)
            for widget in view.address_rows_of[kind]:
                widget.grid() if shown else widget.grid_remove()
        served = self.state == RoomState.RUNNING and self.page_listening
        view.invite_code.show(join.invite if served else None)
        view.page_switch.configure(text=f"Web page for phones and browsers (port {self._page_port()})")
        view.page_switch.state(["!disabled"] if self.state in (
            RoomState.STOPPED, RoomState.ERROR, RoomState.RUNNING) else ["disabled"])
        view.forward_note.configure(text=f"Over the internet: {join.forward}.")
        show_line(view.ipv6_note, ipv6_note(join, self.settings.upnp))
        view.upnp_switch.state(["!disabled"] if self.state in (
            RoomState.STOPPED, RoomState.ERROR, RoomState.RUNNING) else ["disabled"])
        show_line(view.router_note, self.router.note(join))
        self.https.tell(self.router, self.ips["public"], self.unknown["public"] == "looking")
        self.https.show(view, bool(join.page_port))
        view.address_rows.grid_remove() if join.only_here else view.address_rows.grid()
        show_line(view.loopback_warning,
                  f"Only this computer can join: the listen address is {join.listen[0]}. To let "
                  f"friends in, use Set listen address… and choose :: (every network) or 0.0.0.0."
                  if join.only_here else "")
        encrypted = TLS_JOINING.format(WINDOW_ADVICE["encrypted"])
        show_line(view.tls_note, f"The room is encrypted: {encrypted}." if join.encrypted else "")
        show_line(view.key_note, "Friends join as name#KEY from the App or a terminal; on the "
                  "page they type the key under their name." if join.keyed else "")
        warning = join.key_warning
        show_line(view.key_warning, warning[:1].upper() + warning[1:] + "." if warning else "")

    # -- showing the state --------------------------------------------------
    def _set_state(self, state: RoomState, problem: str = "") -> None:
        self.state, self.problem = state, problem
        self._show_state()

    def _show_state(self) -> None:
        """Buttons, badge, status line and info panel as the state says."""
        state = self.state
        can_start = state in (RoomState.STOPPED, RoomState.ERROR) and not self.quitting
        can_stop = state in (RoomState.STARTING, RoomState.RUNNING) and not self.quitting
        self.view.start_button.state(["!disabled"] if can_start else ["disabled"])
        self.view.stop_button.state(["!disabled"] if can_stop else ["disabled"])
        colour, word = state.value
        self.view.badge.configure(text=f"● {word}", background=colour)
        self.view.status_line.configure(text=status_sentence(state, self._listen_address(),
                                                             self.quitting, self.problem),
                                   style="Problem.TLabel" if state == RoomState.ERROR else "Note.TLabel")
        next_address = host_port(self.settings.host, self.settings.port)
        self._show_join()
        self.view.info["mac"].configure(text=self.mac)
        self.view.info["listen"].configure(
            text=host_port(*self.listening) if self.listening else f"off (next: {next_address})")
        self.view.info["privacy"].configure(text=privacy_text(self.settings))
        self._show_disconnect()



def run_gui(settings: Settings, warnings: list[str] | tuple = ()) -> int:
    """Run the server from a window until it is closed; 1 if no window can open.

    `warnings` (from reading the settings) are logged once the window's log
    panel can show them.
    """
    try:
        import tkinter
    except ImportError:
        print(f"The --gui window needs tkinter, which this Python does not have: {GET_TKINTER}, "
              f"then run {RUN} --gui; or run without --gui.", file=sys.stderr)
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

    def request_close():
        window.close_requested = True   # _tick acts on it within TICK_MS
    on_stop_signals(request_close)
    root.deiconify()
    root.mainloop()
    return 0


# ---------------------------------------------------------------------------
# 13. The terminal client
# ---------------------------------------------------------------------------

CONNECT_TIMEOUT = 10.0   # seconds to reach the server and to be asked for a name
LEAVE_WAIT = 2.0         # seconds for the goodbye to go out before closing anyway
MAX_REFUSAL = 4096       # bytes of a refusal worth showing
HELD_LINES = 16          # lines kept from before the welcome (a refusal is one or two)
SILENCE = 1.5            # seconds without ALIAS before the client asks whether it reached a
                         # page's port (ROOM_PATH), or (plain) a room that speaks TLS
TLS_ASKING = 10.0        # seconds that asking may take (a busy room paces its handshakes)
PAGE_ASKING = 3.0        # seconds a page's port has to say where its room is
LINK_PORTS = {"http": 80, "https": 443}   # a link to the page without a port
STOP_LINE = STOP_NOTICE.strip("\n").split("\n")[0]   # the first of the stop lines
STOP_LINES = set(STOP_NOTICE.split("\n"))             # all of them, and the blank ones
STOP_SAID = "the server has been stopped; join again once it is back online"
# OpenSSL's verify codes for a certificate that does not list the name or address used
NAME_MISMATCH = {62, 64}
PLAIN_TEXT = "{} is not an encrypted room: connect without --tls (and without --ca or --insecure)."


class ClientError(Exception):
    """The client cannot go on; the message is one sentence for the person."""


KEEP_TYPED = "\r\x1b[K{}\n{}"   # to the line's start, erase it, the arriving line, then what was typed


class TypedLine:
    """The line being typed on a terminal, kept here rather than in the
    terminal's own buffer (its echo and line editing off, Ctrl+C still a
    signal), so that a line arriving meanwhile prints above it and it is drawn
    again.  Keys: text, Backspace, Ctrl+U (erase the line), Enter, Ctrl+D on an
    empty line (the end); other control keys and escape sequences do nothing."""

    def __init__(self, fd: int, out):
        self.fd, self.out = fd, out
        self.text = ""
        self.lock = threading.Lock()   # the stdin thread types, the loop's thread prints
        self.found = termios.tcgetattr(fd)

    def __enter__(self) -> "TypedLine":
        keys = termios.tcgetattr(self.fd)
        keys[3] &= ~(termios.ICANON | termios.ECHO)
        keys[6][termios.VMIN], keys[6][termios.VTIME] = 1, 0
        termios.tcsetattr(self.fd, termios.TCSANOW, keys)
        return self

    def __exit__(self, *_) -> None:
        termios.tcsetattr(self.fd, termios.TCSANOW, self.found)   # as it was found

    def lines(self):
        """Each line as Enter ends it (stdin thread), until Ctrl+D or the end of input."""
        decode, escape = codecs.getincrementaldecoder("utf-8")("replace").decode, 0
        while data := os.read(self.fd, 1024):
            for key in decode(data):
                if escape or key == "\x1b":   # ESC, then [ or O, then up to a final byte
                    escape = 1 if key == "\x1b" else 2 if escape == 1 and key in "[O" \
                        else 2 if escape == 2 and not "@" <= key <= "~" else 0
                    continue
                with self.lock:
                    line = self._key(key)
                if line is False:
                    return
                if line is not None:
                    yield line

    def _key(self, key: str) -> str | bool | None:
        """Take one key and show it: the line Enter ends, False for the end, else None."""
        if key in "\r\n":
            line, self.text = self.text, ""
            self._write("\n")
            return line
        if key == "\x04" and not self.text:
            return False
        if key in "\x7f\b" and self.text:
            self.text = self.text[:-1]
            self._write("\b \b")
        elif key == "\x15":
            self.text = ""
            self._write("\r\x1b[K")
        elif key.isprintable():
            self.text += key
            self._write(key)
        return None

    def show(self, line: str) -> None:
        """An arriving line, above what is being typed, which is drawn again (loop's thread)."""
        with self.lock:
            self._write(KEEP_TYPED.format(line, self.text))

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


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


def link_parts(text: str) -> tuple[str, bool | None, str]:
    """What --connect was given: a link to the page (http(s)://HOST[:PORT]/...,
    an invitation with #key=KEY too) as (HOST:PORT, True for https, KEY), the
    scheme and path dropped; anything else as (it, None, "")."""
    parts = urllib.parse.urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in LINK_PORTS or not parts.netloc:
        return text, None, ""
    address = parts.netloc.rpartition("@")[2]
    if not re.search(r"(^[^:]*|\]):\d+$", address):
        address += f":{LINK_PORTS[scheme]}"
    key = parts.fragment[4:] if parts.fragment.startswith("key=") else ""
    return address, scheme == "https", urllib.parse.unquote(key)


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


ROW_INDENT = "  "   # how a line's further rows begin on a terminal (terminal_rows)


def cell_width(c: str) -> int:
    """The columns a terminal gives `c`, counted high where terminals differ:
    wide (East Asian) characters two, an emoji's VS16 one more, each half of a
    flag two; marks and format characters none."""
    if c == "\ufe0f":
        return 1
    if "\U0001f1e6" <= c <= "\U0001f1ff" or unicodedata.east_asian_width(c) in "WF":
        return 2
    return 0 if unicodedata.category(c) in ("Mn", "Me", "Cf") else 1


def terminal_rows(line: str, width: int | None) -> str:
    """`line` in rows of at most `width` columns (None: whole), broken at the
    last space that fits (else inside a word), each further row indented:
    the terminal's own wrap would begin a row with whatever comes there, and
    words at a row's start (`bob: ...`) read as a line of their own."""
    line = line.expandtabs()
    if not width or width < 20 or 2 * len(line) <= width:
        return line
    rows, start, indent = [], 0, ""
    while start < len(line):
        room, used, end, cut = width - len(indent), 0, start, start
        while end < len(line) and used + (columns := cell_width(line[end])) <= room:
            cut = end if line[end] == " " else cut
            used, end = used + columns, end + 1
        cut = end if end == len(line) or line[end] == " " or cut <= start else cut
        rows.append(indent + line[start:cut].rstrip(" "))
        start, indent = len(line) - len(line[cut:].lstrip(" ")), ROW_INDENT
    return "\n".join(rows)


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
    except (ssl.SSLEOFError, ConnectionError):   # how a TLS server turns people away, and a plain
        if speaks_plain(host, port):              # one closes a TLS client at once
            raise ClientError(PLAIN_TEXT.format(where)) from None
        raise ClientError(f"{where} closed the connection during the TLS handshake "
                          f"(the room may be full, or not open to your address).") from None
    except ssl.SSLError as e:
        if e.reason == "WRONG_VERSION_NUMBER":   # it answered in plain text
            raise ClientError(PLAIN_TEXT.format(where)) from None
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


def speaks_plain(host: str, port: int) -> bool:
    """True if host:port answers in plain text where its room is (a room or a page's port)."""
    try:
        return page_room_port(host, port, None) is not None
    except ClientError:
        return False


def speaks_tls(host: str, port: int) -> bool:
    """True if host:port completes a TLS handshake (nothing is checked: this only asks)."""
    if ssl is None:
        return False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=TLS_ASKING) as raw, \
                context.wrap_socket(raw):
            return True
    except (OSError, ValueError):
        return False


def page_room_port(host: str, port: int, context: ssl.SSLContext | None) -> int | None:
    """The room's port, as host:port says it if it is a page's port (ROOM_PATH);
    None if it does not say.  ClientError if it cannot be reached."""
    with open_connection(host, port, context) as sock:
        sock.settimeout(PAGE_ASKING)
        reply = b""
        try:
            sock.sendall(f"GET {ROOM_PATH} HTTP/1.1\r\nHost: {host_port(host, port)}\r\n"
                         f"Connection: close\r\n\r\n".encode())
            while len(reply) < MAX_REFUSAL and (data := sock.recv(RECV_SIZE)):
                reply += data
        except OSError:   # a room that speaks TLS, or a slow one: it did not say
            pass
    try:
        status, body = http_reply(reply)
        room = json.loads(body)["port"] if status == 200 else None
    except (ValueError, TypeError, KeyError):
        return None
    return room if isinstance(room, int) and 1 <= room <= 65535 else None


def quiet_for(sock: socket.socket, seconds: float) -> bool:
    """True if nothing arrives on `sock` within `seconds`."""
    if ssl is not None and isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    with selectors.DefaultSelector() as selector:
        selector.register(sock, EVENT_READ)
        return not selector.select(seconds)


def answer_prompt(sock: socket.socket, alias: str, host: str, port: int, tls: bool) -> bytes:
    """Wait for ALIAS and answer with the alias; returns what came after ALIAS.

    ClientError if the server said something else instead (a refusal, shown
    as it is), nothing in time, or closed.
    """
    where = host_port(host, port)
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
        self.typed: TypedLine | None = None   # on a terminal: the line being typed
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
        """Run until the person leaves or the server goes; the exit code.  On
        a terminal, the line being typed is kept here (TypedLine), and the
        terminal is left as it was found."""
        if not (self.typed_shows and termios):
            return self._stay(stdin)
        with TypedLine(stdin.fileno(), self.out) as self.typed:
            return self._stay(self.typed.lines())

    def _stay(self, typed) -> int:
        try:   # Ctrl+C may come as soon as the room's first lines are shown
            threading.Thread(target=self._run, name="pcr-client", daemon=True).start()
            threading.Thread(target=self._read_typed, args=(typed,), name="pcr-client-stdin",
                             daemon=True).start()
            while not self.over.wait(0.5):   # timed, so Ctrl+C gets through on Windows too
                pass
        except KeyboardInterrupt:
            self.loop.call_soon_threadsafe(self.leave)
            self.over.wait(LEAVE_WAIT + 1.0)
            return 0
        if self.problem:
            print(self.problem, file=sys.stderr, flush=True)
        return self.code

    def _read_typed(self, typed) -> None:
        """Hand each typed line to the loop; at the end of input, leave (stdin thread)."""
        try:
            for line in typed:
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
            if len(self.held) < HELD_LINES:
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
        note = (f"in the room as {self.name} at {self.where}; type a line and press Enter to "
                f"send it, {END_OF_INPUT} or Ctrl+C to leave\n")
        with self.typed.lock if self.typed else contextlib.nullcontext():   # no key shown inside it
            sys.stderr.write(note)   # one write, its line end included: a key comes after it
            sys.stderr.flush()
        if self.leave_asked:
            self.leave()

    def _print(self, line: str) -> None:
        """Print a line; on a terminal in rows of its width (terminal_rows), above
        what is being typed, which is drawn again."""
        try:
            if self.typed is None:
                self.out.write(line + "\n")
                self.out.flush()
            else:
                self.typed.show(terminal_rows(line, console_width(self.out)))
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
        self.loop.stop()

    def end_of_input(self) -> None:
        """End of input: leave, once in the room (a refusal on the way must still be heard)."""
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
              out, typed_shows: bool = False, page: bool = False) -> ClientSession:
    """Connect, answer the prompt, and hand back the stay; ClientError if not let in.
    The page's port (`page`: a link to it) is asked where its room is first; so is
    an address that does not ask for a name at once, and a plain one then whether it
    is an encrypted room."""
    where = host_port(host, port)
    room = page_room_port(host, port, context) if page else None
    if page and room is None:
        raise ClientError(f"{where} did not say where its room is (is it the chat page of a "
                          f"PrivateChatRoom server?).")
    sock = open_connection(host, room or port, context)
    try:
        if not page and quiet_for(sock, SILENCE):
            room = page_room_port(host, port, context)
            if room is None and context is None and speaks_tls(host, port):
                raise ClientError(f"{where} is an encrypted room: add --tls "
                                  f"(and --ca FILE with the host's certificate).")
            if room is not None:
                sock.close()
                sock = open_connection(host, room, context)
        if room is not None and room != port:
            print(f"{where} is the room's chat page: joining its room at {host_port(host, room)}",
                  file=sys.stderr, flush=True)
            port = room
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
    --ca and --insecure imply --tls, and so does an https link.
    """
    stdin = lenient(sys.stdin) if stdin is None else stdin
    stdout = lenient(sys.stdout) if stdout is None else stdout
    address, https, key = link_parts(address)
    try:
        host, port = server_address(address)
    except argparse.ArgumentTypeError as e:
        print(f"--connect: {e}.", file=sys.stderr)
        return 2
    context = None
    if tls or https or ca is not None or insecure:
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
        if key and "#" not in name:   # an invitation's key
            name = f"{name.strip()}#{key}"
        session = join_room(host, port, context, alias_text(name), stdout, typed_shows,
                            page=https is not None)
        return session.stay(stdin)
    except ClientError as e:
        print(e, file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------------
# 14. The command line
# ---------------------------------------------------------------------------

PAGE_OFF = "off"   # --web-port off


def web_port_number(text: str) -> int | str:
    """--web-port: a port, 0 for any free one, or "off"."""
    if text.strip().lower() == PAGE_OFF:
        return PAGE_OFF
    return 0 if text.strip() == "0" else port_number(text)


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
                                         f"(:: or 0.0.0.0 listens on every network)")
    return host


def room_key_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the room key is empty: give one of at least "
                                         f"{MIN_KEY} characters, or leave --room-key out")
    return text


def add_limit_options(p: argparse.ArgumentParser, d: Settings) -> None:
    limits = p.add_argument_group("for experts: limits")
    limits.add_argument("--keepalive", type=at_least(0, float), default=d.keepalive,
                        metavar="SECONDS",
                        help="idle time before a quiet member's connection is checked; a "
                             "member whose machine vanished leaves within about twice this "
                             "(0: off; default: %(default)s)")
    limits.add_argument("--handshake-timeout", type=at_least(0.1, float),
                        default=d.handshake_timeout, metavar="SECONDS",
                        help="time a connection has to give its name: the App asks its user "
                             "for a name only after connecting (default: %(default)s)")
    limits.add_argument("--max-unnamed", type=at_least(1), default=d.max_unnamed, metavar="N",
                        help="connections at once that have not given a name; when full, the "
                             "oldest makes room (default: %(default)s)")
    limits.add_argument("--max-line", type=at_least(1), default=d.max_line, metavar="BYTES",
                        help="longest chat line (default: %(default)s)")
    limits.add_argument("--line-rate", type=at_least(0, float), default=d.line_rate, metavar="N",
                        help="lines per second per member, bursts of 2N, and 4N per address; "
                             "0: no limit (default: %(default)s)")
    limits.add_argument("--max-backlog", type=at_least(1024), default=d.max_backlog,
                        metavar="BYTES", help="output waiting for one member before it is "
                                              "disconnected (default: %(default)s)")
    limits.add_argument("--max-clients", type=at_least(1), default=d.max_clients, metavar="N",
                        help="connections at once (default: %(default)s)")
    limits.add_argument("--max-per-ip", type=at_least(1), default=d.max_per_ip, metavar="N",
                        help="connections from one address (default: %(default)s)")
    limits.add_argument("--allow", type=allow_networks, default=(), metavar="CIDR[,CIDR...]",
                        help="only these networks may connect (default: everyone)")


def add_reader_options(p: argparse.ArgumentParser, d: Settings) -> None:
    readers = p.add_argument_group("for experts: PrivateChatRoom-App pacing (the server paces "
                                   "what it sends the App)")
    readers.add_argument("--app-char-time", type=at_least(0, float), default=d.app_char_time,
                         metavar="S", help="seconds the App takes to show one character "
                                           "(default: %(default)s)")
    readers.add_argument("--app-margin", type=at_least(0, float), default=d.app_margin,
                         metavar="S", help="seconds added for each read: the network, a slow "
                                           "desktop (default: %(default)s)")


def add_room_options(p: argparse.ArgumentParser, d: Settings) -> None:
    """What a host needs, first in --help: in plain words, one group to add to."""
    room = p.add_argument_group("running a room")
    room.add_argument("--gui", action="store_true", help="run the room in a window")
    room.add_argument("--port", type=port_number,
                      help=f"the room's port, for the App and terminals (default: the number in "
                           f"{PORT_FILE}, else {DEFAULT_PORT})")
    room.add_argument("--web-port", type=web_port_number, metavar="N|off",
                      help="the chat page's port, for a browser or a phone (default: the room's "
                           "port + 1; 0: any free one; off: no page)")
    key = room.add_mutually_exclusive_group()
    key.add_argument("--room-key", type=room_key_text, metavar="KEY",
                     help="a key that friends need to come in (they type it on the page, or "
                          "join as name#KEY from the App or a terminal)")
    key.add_argument("--room-key-file", metavar="PATH", help="read the room key from a file")
    room.add_argument("--upnp", action="store_true",
                      help="let friends in from the internet: ask the router to forward the "
                           "room's port with UPnP / NAT-PMP / PCP (the page's too), and to let "
                           "them in through its IPv6 firewall")
    room.add_argument("--https", action="store_true",
                      help="HTTPS for the page over the internet: the room gets a certificate "
                           "every phone trusts for its public address, from Let's Encrypt, and "
                           "renews it; its check comes to port 80, so forward TCP port 80 to the "
                           "page's port (--upnp asks the router)")
    room.add_argument("--history", type=at_least(0), default=d.history, metavar="N",
                      help="show newcomers the last N chat lines, kept in memory only "
                           "(default: %(default)s, nothing kept)")
    room.add_argument("--photos", type=at_least(0), default=d.photos, metavar="MB",
                      help="memory for photos shared on the page (MiB), the oldest go when it is "
                           "full (photos on their way in take as much again at most); nothing is "
                           "written to disk and they are gone when the room stops (0: no photo "
                           "sharing; default: %(default)s)")


def add_expert_options(p: argparse.ArgumentParser, d: Settings) -> None:
    """Everything a host rarely needs: where to listen and log, the page's seats, TLS."""
    network = p.add_argument_group("for experts: network and log")
    network.add_argument("--host", type=listen_host, default=every_network(),
                         help="address to listen on (default: %(default)s, every network: "
                              "'::' is IPv6 and IPv4 at once, 0.0.0.0 IPv4 alone)")
    network.add_argument("--log-file", default=d.log_file, help=f"log file (default: {LOG_FILE})")
    network.add_argument("--public-ip-url", default=d.public_ip_url,
                         help="service that answers with your public IP ('' turns the look-up off)")
    network.add_argument("--web-grace", type=at_least(0, float), default=d.web_grace, metavar="S",
                         help="a page whose connection is lost (a phone asleep, a change of "
                              "network) keeps its seat this long, away, and gets what it missed "
                              "when it is back (0: it leaves at once; default: %(default)s)")
    add_limit_options(p, d)
    add_reader_options(p, d)
    tls = p.add_argument_group("for experts: encryption (TLS)")
    tls.add_argument("--tls-cert", default="", metavar="FILE",
                     help="encrypt with TLS using this certificate (PEM); "
                          + TLS_JOINING.format(FLAG_ADVICE["encrypted"]))
    tls.add_argument("--tls-key", default="", metavar="FILE",
                     help="the certificate's private key (PEM), if not in --tls-cert")
    tls.add_argument("--acme-directory", default=d.acme_directory, metavar="URL",
                     help="the ACME certificate authority --https asks (a company's own, or a "
                          "test CA; default: Let's Encrypt, %(default)s)")
    tls.add_argument("--acme-ca-file", default="", metavar="PEM",
                     help="trust this CA certificate for --acme-directory's https, beside the "
                          "system's")


def add_client_options(p: argparse.ArgumentParser) -> None:
    client = p.add_argument_group("joining a room from a terminal")
    client.add_argument("--connect", metavar="HOST[:PORT]",
                        help=f"join the room at HOST instead of running one (port {DEFAULT_PORT} "
                             f"unless given; IPv6 as [::1]:{DEFAULT_PORT}); the page's address "
                             f"or an invitation's link works too")
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
        prog=RUN,
        description="A private chat room for family and friends: they join from a browser or "
                    "a phone, with PrivateChatRoom-App, or from a terminal.",
        epilog=f"Run a room: {RUN} (in a window: {RUN} --gui). "
               f"Join one from a terminal: {RUN} --connect HOST[:PORT].")
    p.add_argument("--version", action="version", version=f"PrivateChatRoom-Server {VERSION}")
    add_room_options(p, d)
    add_client_options(p)
    add_expert_options(p, d)
    args = p.parse_args(argv)
    if args.connect is None and (args.name is not None or args.tls or args.ca or args.insecure):
        p.error("--name, --tls, --ca and --insecure go with --connect")
    if args.connect is not None and args.gui:
        p.error("--gui runs a room; it does not go with --connect")
    if args.tls_key and not args.tls_cert:
        p.error("--tls-key needs --tls-cert")
    if not args.https and (args.acme_ca_file or args.acme_directory != d.acme_directory):
        p.error("--acme-directory and --acme-ca-file go with --https")
    if args.https and args.tls_cert:
        p.error("--https gets the page a certificate of its own; it does not go with --tls-cert, "
                "which encrypts every port with yours")
    if args.https and args.web_port == PAGE_OFF:
        p.error("--https is for the page; it does not go with --web-port off")
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
    given["web_port"] = (None if args.web_port == PAGE_OFF else
                         next_page_port(Settings(port=port, web_port=args.web_port)))
    return Settings(**given), warnings


QR_CAPTION = "scan with a phone's camera to open the page"   # above the banner's code
# What the banner says of the internet address while it is not known (FriendsJoin)
NOT_KNOWN = {"looking": "looking up this machine's public address…",
             "off": "not looked up: your router's status page shows this machine's public address",
             "failed": LOOK_UP_FAILED}


def join_banner(settings: Settings, join: FriendsJoin, unknown: str = "looking",
                page_problem: str = "", code: str = "") -> str:
    """What the host needs once the room is open, in one block: how friends join
    (each address with whom it is for; with `code`, the invitation's QR code as
    console_code draws it, under the page's links), the log, how to stop.
    `unknown`: why the internet address is not known (NOT_KNOWN); `page_problem`:
    why the page asked for is off."""
    host, port = join.listen
    page_off = f"the page is off, since {page_problem[:1].lower()}{page_problem[1:]}"
    if join.only_here:
        lines = [f"The room is open on {host_port(host, port)}, but nobody else can join: only "
                 f"this machine reaches {host}. Start without --host (or with --host 0.0.0.0, "
                 f"IPv4 alone) to let friends in."]
        if join.page_port:
            lines.append(f"  the page, in a browser on this machine: "
                         f"{page_link(host, join.page_port, join.encrypted)}")
        elif page_problem:
            lines.append(f"  {page_off}")
    else:
        ports = port_words((port, join.page_port) if join.page_port else (port,))
        lines = [f"The room is open on port {port}. How friends join:"]
        if join.page_port:
            lines += [f"  {PAGE_FOR}:", f"    same network:       {join.page_same or 'unknown'}"]
            page = join.page_internet
            if page and settings.https and page.startswith("http:"):
                page += " (https once its certificate is in place)"
            lines += labelled("over the internet:", page,
                              join.page_ipv6 and f"{join.page_ipv6} (IPv6)")
            lines += [code] if code else []
        else:
            lines.append(f"  {PAGE_FOR}: " + (page_off if page_problem
                                              else "the page is off (--web-port off)"))
        lines += [f"  {CHAT_FOR}:", f"    same network:       {join.same_network or 'unknown'}",
                  f"    over the internet:  asking your router to forward TCP {ports}…"
                  if settings.upnp else internet_line(join, NOT_KNOWN[unknown])]
        if join.ipv6:
            lines += labelled("", f"{join.ipv6} ({IPV6_CHAT_FOR})")
            lines.append("  IPv6:               " + (
                (join.firewall or f"asking your router's firewall to let TCP {ports} in…")
                if settings.upnp else IPV6_FIREWALL.format(ports=ports, how=FLAG_ADVICE["firewall"])))
    if join.encrypted:
        lines.append("  encrypted:          " + TLS_JOINING.format(FLAG_ADVICE["encrypted"]))
    if settings.https and join.page_port and not join.only_here:
        lines += [f"  https:              {HTTPS_WHO}", f"  the App:            {APP_IN_CLEAR}"]
    if join.keyed:
        lines.append("  with the room key:  friends type it on the page, or join as name#KEY")
        if join.key_warning:
            lines.append(f"  warning: {join.key_warning}")
    if settings.history:
        lines.append(f"  history:            {HISTORY_KEPT.format(settings.history)} "
                     f"(kept in memory only)")
    if join.page_port and settings.photos:
        lines.append(f"  photos:             {PHOTOS_KEPT.format(settings.photos)}")
    if settings.public_ip_url and not join.only_here:   # a room on loopback asks nothing
        when = "If your router cannot tell it, the server" if settings.upnp else "At start the server"
        lines.append(f"{when} asks {settings.public_ip_url} for this machine's public address; "
                     f"--public-ip-url '' turns that off.")
    lines.append(f"Log file: {os.path.abspath(settings.log_file)}" if settings.log_file
                 else "Log file: none (--log-file '')")
    lines.append("Ctrl+C stops the server.")
    return "\n".join(lines)


def labelled(label: str, *texts: str | None) -> list[str]:
    """The banner's lines under one label (`over the internet:`), on the first line only."""
    shown = [text for text in texts if text]
    return [f"    {label if i == 0 else '':<20}{text}" for i, text in enumerate(shown)]


def internet_line(join: FriendsJoin, unknown: str) -> str:
    return f"    over the internet:  {join.internet or unknown} ({join.forward})"


def page_line(link: str) -> str:
    return f"  {PAGE_FOR}, over the internet:  {link}"


def console_code(link: str | None, stream) -> str:
    """The code of `link` to scan off `stream`, under its caption: in colours of its
    own where the console takes them, else as light text on a dark background
    (qr_console_text); a sentence where the console has no block characters or
    is too narrow for it; "" with no link."""
    if not link:
        return ""
    try:
        "█▀▄".encode(getattr(stream, "encoding", None) or "ascii")
        modules = qr_code(link)
    except (UnicodeEncodeError, LookupError):
        return "  (this console cannot draw the link's QR code to scan; --gui shows it)"
    except ValueError:   # a room key too long for any code
        return ""
    side, width = len(modules) + 2 * QR_QUIET, console_width(stream)
    if width and width < side:
        return (f"  (the link's QR code needs a console {side} characters wide; widen this one "
                f"and start again, or --gui shows it)")
    return f"    {QR_CAPTION}\n{qr_console_text(modules, console_colours(stream))}"


def print_for_host(text: str, at_line_start: bool = False) -> None:
    """Print for the host, each line fitted to the terminal (fit_console); a
    terminal that has gone away (hang-up) is no error.  `at_line_start`: from
    the line's start, over what the terminal echoed (Ctrl+C's ^C)."""
    try:
        text = fit_console(text, console_width(sys.stdout))
        print("\r" + text if at_line_start and sys.stdout.isatty() else text, flush=True)
    except (OSError, ValueError):
        pass


def members_text(n: int) -> str:
    return f"{n} member" if n == 1 else f"{n} members"


def announce(settings: Settings, address: tuple[str, int],
             page_address: tuple[str, int] | None = None, page_problem: str = "",
             internet_page: Callable[[str | None], None] = lambda link: None,
             https: PageCertificate | None = None) -> RouterPorts | None:
    """Log this machine's addresses and print the banner, once the public
    address is looked up (on the look-up's thread); with --upnp, at once, and
    the router's answer when it comes.  With --https, tell `https` the address
    to certify once it is known.  The router's mappings, to close when the room
    stops."""
    private_ip, ipv6 = private_ipv4(), internet_ipv6()
    log.info("private IPv4: %s, MAC: %s", private_ip, mac_address())
    log.info("IPv6 address on the internet: %s", ipv6 or "none")
    page_port = page_address[1] if page_address else None
    join = friends_join(settings, address, private_ip, None, page_port, ipv6=ipv6)
    tell = https.address if https else lambda *_, **__: None
    if not join.only_here and not settings.upnp and settings.public_ip_url:
        def public_ip_heard(ip: str | None) -> None:
            known = friends_join(settings, address, private_ip, ip, page_port, ipv6=ipv6)
            internet_page(known.page_internet)
            print_for_host(join_banner(settings, known, "looking" if ip else "failed", page_problem,
                                       console_code(known.invite, sys.stdout)))
            tell(*certificate_address(None, None, ip), known.page_internet, recheck=True)
        look_up_public_ip(settings.public_ip_url, public_ip_heard)
        return None
    print_for_host(join_banner(settings, join, "looking" if settings.public_ip_url else "off",
                               page_problem, console_code(join.invite, sys.stdout)))
    if join.only_here:
        if settings.upnp:
            print_for_host(f"  the room listens on {address[0]} only, so the router was not "
                           f"asked to forward it")
        if settings.https and page_address:
            print_for_host(f"  https: {HTTPS_ONLY_HERE.format(address[0])}")
        return None
    if not settings.upnp:
        tell(None, HTTPS_UNKNOWN)

    def public_ip_known(ip: str | None, result: RouterResult) -> None:
        known = friends_join(settings, address, private_ip, ip, page_port)
        internet_page(known.page_internet)
        print_for_host(internet_line(known, LOOK_UP_FAILED))
        if known.page_internet:
            print_for_host(page_line(known.page_internet))
        if result.outcome is not RouterOutcome.NO_PUBLIC:   # CGNAT: its look-up is not ours
            tell(*certificate_address(None, None, ip), known.page_internet, recheck=True)

    def router_answered(result: RouterResult, public_ip: str | None) -> None:
        known = friends_join(settings, address, private_ip, None, page_port, result, public_ip, ipv6)
        print_for_host(f"  {known.router}")
        if known.firewall:
            print_for_host(f"  {known.firewall}")
        internet_page(known.page_internet)
        if known.page_internet:
            print_for_host(page_line(known.page_internet))
        elif known.internet is None and settings.public_ip_url and public_ip is None:
            look_up_public_ip(settings.public_ip_url, lambda ip: public_ip_known(ip, result))
            if result.outcome is not RouterOutcome.NO_PUBLIC:
                return   # the look-up's answer is the address to certify
        tell(*certificate_address(result, public_ip, None), known.page_internet)
    if settings.upnp:
        return ask_router(settings, address, page_address, router_answered)
    return None


def run_headless(settings: Settings) -> int:
    server = Server(settings)
    try:
        address = server.listen()
    except StartError as e:
        log.error("%s", e)
        return 1
    def stop() -> None:   # on the loop's thread: the host hears it begin, then end
        if not server.stopping:
            told = sum(m.stage is Stage.IN_ROOM for m in server.room.members)
            print_for_host(f"stopping: telling {members_text(told)}…", at_line_start=True)
        server.stop()
    # Ctrl+C while the banner is printed (or the router asked) stops the room as ever
    on_stop_signals(lambda: server.loop.call_soon_threadsafe(stop))
    lenient(sys.stdout)   # an ASCII console shows the banner with a ? for what it lacks
    photos = server.door.photos   # photo links for members from the internet

    def internet_page(link: str | None) -> None:
        server.loop.call_soon_threadsafe(photos.heard_internet_page, link)
    https = page_certificate(settings, server, address, internet_page)
    router = announce(settings, address, server.web_address, server.page_problem, internet_page,
                      https)
    server.serve()
    if https:
        https.close()
    if router:
        router.close()
    server.loop.close()
    print_for_host("stopped")
    return 0


def page_certificate(settings: Settings, server: Server, address: tuple[str, int],
                     internet_page: Callable[[str | None], None]) -> PageCertificate | None:
    """--https on a console: what it says is printed (warnings, by the log), and the
    page's link over the internet, https once its certificate is in place."""
    if not (settings.https and server.web_address) or is_loopback(address[0]):
        return None

    def said(sentence: str, warning: bool) -> None:
        if not warning:   # a warning reaches the console through the log
            print_for_host(f"  https: {sentence}")

    def certified(ip: str | None, link: str | None) -> None:
        internet_page(link)
        if ip and link:
            print_for_host(page_line(link))
    lan = host_port(same_network_host(address[0], private_ipv4()), server.web_address[1])
    return PageCertificate(settings, server, lan, said, certified)


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
    if settings.https and (problem := https_problem(settings)):
        log.error("%s", problem)
        return 1
    if args.gui:
        return run_gui(settings, warnings)
    for warning in warnings:
        log.warning("%s", warning)
    return run_headless(settings)


# ---------------------------------------------------------------------------
# 15. The chat page (data)
# ---------------------------------------------------------------------------

# One document, nothing loaded from anywhere else.  A raw string with no
# backslash in it (a test keeps it so): what is written here is what is served.
PAGE_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name=viewport content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>PrivateChatRoom</title>
<link rel="icon" href="data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E%3Cpath fill='%232f6f68' d='M6 4h20a4 4 0 0 1 4 4v12a4 4 0 0 1-4 4H14l-7 6v-6H6a4 4 0 0 1-4-4V8a4 4 0 0 1 4-4z'/%3E%3C/svg%3E">
<style>
:root {
  color-scheme: light dark;
  --bg: #f3f5f7; --panel: #ffffff; --text: #1f2933; --quiet: #5f6b77; --line: #d9e0e6;
  --accent: #2f6f68; --accent-text: #ffffff; --own: #e1f0ec; --own-line: #bfdcd5;
  --warn-bg: #fff3dc; --warn-text: #6b4400; --ok-bg: #e3f3e8; --ok-text: #1d5530;
  --error: #a12a2a; --shadow: rgba(15, 30, 45, 0.16);
  --n0: #2e6aa0; --n1: #8447a8; --n2: #a4501c; --n3: #2d7a4c;
  --n4: #a2305f; --n5: #1d7585; --n6: #756512; --n7: #5357b8;
  --named-bg: #fff6d6; --named-line: #b7791f;
  --private-bg: #f5eefc; --private-line: #8447a8; --private-text: #7b3fa3;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #14181c; --panel: #1d2227; --text: #e3e7eb; --quiet: #9ba6b2; --line: #2f363e;
    --accent: #5fb3a8; --accent-text: #0e1a18; --own: #1e3935; --own-line: #2b514b;
    --warn-bg: #3a2f18; --warn-text: #f0d08e; --ok-bg: #1b3224; --ok-text: #a8dfb8;
    --error: #ff9d9d; --shadow: rgba(0, 0, 0, 0.5);
    --n0: #8cb9e6; --n1: #caa2e6; --n2: #eea476; --n3: #8bd0a2;
    --n4: #ee93bd; --n5: #80cfdc; --n6: #d8c66e; --n7: #abaff2;
    --named-bg: #352c12; --named-line: #d8a84a;
    --private-bg: #2b2340; --private-line: #caa2e6; --private-text: #d9bdf0;
  }
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
html, body { height: 100%; margin: 0; }
body {
  font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
        "Noto Sans", sans-serif;
  background: var(--bg); color: var(--text);
  -webkit-text-size-adjust: 100%; text-size-adjust: 100%;
}
button, input, textarea { font: inherit; color: inherit; }
button { cursor: pointer; }
button:disabled { cursor: default; opacity: 0.55; }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.visually-hidden {
  position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; border: 0;
  overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap;
}
.primary {
  min-height: 48px; padding: 0 20px; border: 0; border-radius: 12px;
  background: var(--accent); color: var(--accent-text); font-weight: 600;
}
.secondary {
  min-height: 40px; padding: 0 14px; border: 1px solid currentColor; border-radius: 20px;
  background: transparent; font-weight: 600; white-space: nowrap;
}

/* The join card */
.join { min-height: 100%; display: flex; align-items: center; justify-content: center; padding: 16px; }
.card {
  width: 100%; max-width: 380px; padding: 26px 22px 22px; background: var(--panel); overflow-wrap: anywhere;
  border: 1px solid var(--line); border-radius: 16px; box-shadow: 0 6px 24px var(--shadow);
}
.card h1 { font-size: 1.45rem; margin: 0 0 4px; }
.lead { color: var(--quiet); margin: 0 0 8px; }
.card label { display: block; font-weight: 600; margin: 16px 0 6px; }
.card input {
  width: 100%; min-height: 48px; padding: 10px 12px; border: 1px solid var(--line);
  border-radius: 12px; background: var(--bg);
}
.card .primary { width: 100%; margin-top: 22px; }
.status { min-height: 1.45em; margin: 14px 0 0; color: var(--quiet); }
.status.error { color: var(--error); font-weight: 600; }

/* The chat */
.chat { height: 100%; height: 100dvh; display: flex; flex-direction: column; }
.topbar {
  display: flex; flex-wrap: wrap; align-items: center; gap: 4px 12px; padding: 8px 12px 8px 16px;
  background: var(--panel); border-bottom: 1px solid var(--line);
}
.titles { flex: 1 1 auto; min-width: 0; overflow-wrap: anywhere; }
.titles h1 { font-size: 1.05rem; margin: 0; }
.me { margin: 0; color: var(--quiet); font-size: 0.875rem; }
.people-toggle {
  min-height: 44px; padding: 0 16px; border: 1px solid var(--line); border-radius: 22px;
  background: var(--bg); font-weight: 600; white-space: nowrap;
}
.me-row { display: flex; flex-wrap: wrap; align-items: center; gap: 2px 10px; }
.leave { min-height: 32px; padding: 0 12px; font-size: 0.875rem; }
.offline .dot { background: var(--quiet); }
.people-toggle[aria-expanded="true"] { background: var(--own); border-color: var(--own-line); }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; background: #3a9d5d; margin-right: 8px; vertical-align: 1px; }
.banner {
  display: flex; flex-wrap: wrap; align-items: center; gap: 6px 12px; padding: 8px 16px;
  background: var(--warn-bg); color: var(--warn-text); font-weight: 600;
}
.banner.ok { background: var(--ok-bg); color: var(--ok-text); }
.banner span { flex: 1 1 12em; }
.middle { flex: 1; min-height: 0; display: flex; position: relative; }
.log {
  flex: 1; min-width: 0; overflow-y: auto; padding: 12px 12px 16px; overscroll-behavior: contain;
  position: relative;   /* what is hidden for screen readers scrolls with its line */
}
.lines { list-style: none; margin: 0; padding: 0; }
.log li { display: flex; flex-direction: column; align-items: flex-start; margin: 8px 0; }
.bubble {
  max-width: min(86%, 680px); padding: 6px 12px 8px; background: var(--panel);
  border: 1px solid var(--line); border-radius: 16px 16px 16px 4px;
}
.log li.own { align-items: flex-end; }
.own .bubble { background: var(--own); border-color: var(--own-line); border-radius: 16px 16px 4px 16px; }
.head { display: flex; flex-wrap: wrap; column-gap: 8px; align-items: baseline; font-size: 0.8125rem; font-weight: 700; }
.time { color: var(--quiet); font-weight: 400; font-size: 0.75rem; white-space: nowrap; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word; }
.log li.event, .log li.note {
  align-items: center; text-align: center; color: var(--quiet); font-size: 0.875rem;
  margin: 6px 24px; overflow-wrap: anywhere;
}
.log li.note { font-style: italic; }
.log li.mark { color: var(--warn-text); font-weight: 600; font-style: normal; }
.log li.earlier .bubble { border-style: dashed; }
.log li.named .bubble { background: var(--named-bg); border: 2px solid var(--named-line); }
.log li.private .bubble { background: var(--private-bg); border: 2px dotted var(--private-line); }
.tag { color: var(--private-text); font-weight: 700; }
.name {
  padding: 0; border: 0; background: none; font-weight: inherit; text-align: start;
  text-decoration: underline dotted; text-underline-offset: 3px; overflow-wrap: anywhere;
}
.n0 { color: var(--n0); } .n1 { color: var(--n1); } .n2 { color: var(--n2); } .n3 { color: var(--n3); }
.n4 { color: var(--n4); } .n5 { color: var(--n5); } .n6 { color: var(--n6); } .n7 { color: var(--n7); }
.own .head { color: var(--quiet); }
.newest {
  position: absolute; left: 50%; bottom: 12px; transform: translateX(-50%);
  min-height: 40px; padding: 0 16px; border: 0; border-radius: 20px;
  background: var(--accent); color: var(--accent-text); font-weight: 600;
  box-shadow: 0 4px 14px var(--shadow);
}
.people {
  width: 250px; flex: none; overflow-y: auto; padding: 14px 16px;
  background: var(--panel); border-left: 1px solid var(--line);
}
.people h2 { font-size: 0.9375rem; margin: 0 0 8px; }
.people ul { list-style: none; margin: 0; padding: 0; }
.people li { padding: 7px 0; border-bottom: 1px solid var(--line); overflow-wrap: anywhere; }
.people li:last-child { border-bottom: 0; }
.people li.more { color: var(--quiet); font-style: italic; }
.people li .name { min-height: 32px; width: 100%; }
.people h2 + .choice, .people ul + h2 { margin-top: 18px; }
.choice { display: flex; gap: 8px; align-items: flex-start; margin: 8px 0; font-size: 0.875rem; }
.choice input { flex: none; width: 20px; height: 20px; margin: 1px 0 0; }
.beside { color: var(--quiet); font-size: 0.875rem; }
.composer {
  display: flex; align-items: flex-end; gap: 8px; padding: 8px;
  padding-bottom: max(8px, env(safe-area-inset-bottom));
  background: var(--panel); border-top: 1px solid var(--line);
}
.composer textarea {
  flex: 1; min-width: 0; min-height: 48px; max-height: 9.5em; resize: none;
  padding: 11px 14px; border: 1px solid var(--line); border-radius: 14px;
  background: var(--bg); line-height: 1.4; field-sizing: content;
}
.composer .primary { min-width: 80px; }
.photo-button {
  flex: none; width: 48px; height: 48px; padding: 0; border: 1px solid var(--line);
  border-radius: 14px; background: var(--bg); display: inline-flex; align-items: center; justify-content: center;
}
.upload {
  display: flex; align-items: center; gap: 12px; padding: 6px 16px; font-size: 0.875rem;
  background: var(--panel); color: var(--quiet); border-top: 1px solid var(--line);
}
.upload.error { color: var(--error); font-weight: 600; }
.upload progress { flex: 1; min-width: 60px; accent-color: var(--accent); }
.upload span { flex: 3; }
.photo { display: block; margin-top: 4px; }
.photo img {
  display: block; max-width: 100%; max-height: 70vh; height: auto; object-fit: contain;
  object-position: left; border-radius: 10px;
}
.gone { color: var(--quiet); font-style: italic; }
.edited { color: var(--quiet); font-weight: 400; font-size: 0.75rem; font-style: italic; }
.quote {
  display: block; margin: 4px 0 2px; padding: 2px 8px; border-left: 3px solid var(--accent);
  border-radius: 4px; background: var(--bg); color: var(--text); font-size: 0.875rem;
  text-decoration: none; overflow-wrap: anywhere;
}
a.quote:hover { text-decoration: underline; }
.quote-name { font-weight: 700; margin-right: 6px; }
.quote-text { color: var(--quiet); }
.quote .edited { margin-left: 6px; }
.log li[data-name] { scroll-margin: 24px; }
.log li.found .bubble { outline: 3px solid var(--named-line); }
.reactions, .actions, .picker { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 4px; }
.actions { display: none; }
.log li:focus-within .actions { display: flex; }
.log li.editing .actions { display: none; }
.chip, .act, .picker button {
  min-height: 32px; padding: 0 10px; border: 1px solid var(--line); border-radius: 16px;
  background: var(--panel); font-size: 0.875rem; white-space: nowrap;
}
.chip[aria-pressed="true"] { background: var(--own); border-color: var(--accent); font-weight: 700; }
.act { font-weight: 600; }
.picker { flex-basis: 100%; }
.picker button { min-width: 40px; font-size: 1.125rem; }
.edit-box {
  width: 100%; min-width: 12em; min-height: 40px; padding: 6px 10px; margin-top: 2px;
  border: 1px solid var(--accent); border-radius: 10px; background: var(--bg);
}
.replying {
  display: flex; align-items: center; gap: 8px 12px; padding: 6px 8px 6px 16px; font-size: 0.875rem;
  background: var(--panel); border-top: 1px solid var(--line); border-left: 4px solid var(--accent);
}
.replying span { flex: 1; min-width: 0; overflow-wrap: anywhere; }
.typing {
  min-height: 1.5em; margin: 0; padding: 0 16px; background: var(--bg); color: var(--quiet);
  font-size: 0.8125rem; font-style: italic; overflow-wrap: anywhere;
}
@media (max-width: 699px) {
  .people {
    position: absolute; top: 0; right: 0; z-index: 2; width: min(300px, 88%); max-height: 75%;
    border: 1px solid var(--line); border-top: 0; border-radius: 0 0 0 14px;
    box-shadow: 0 10px 28px var(--shadow);
  }
  .people:not(.open) { display: none; }
}
@media (max-width: 320px) {
  .join { padding: 8px; }
  .card { padding: 18px 12px 14px; }
  .composer .primary { min-width: 0; padding: 0 12px; }
}
@media (min-width: 700px) {
  .people-toggle { display: none; }
  .log { padding: 16px 24px 20px; }
  .composer { padding: 12px 16px; }
}
</style>
</head>
<body>
<main id="join" class="join">
  <form id="join-form" class="card" novalidate>
    <h1>PrivateChatRoom</h1>
    <p class="lead">Type your name to join the chat.</p>
    <label for="name">Your name</label>
    <input id="name" name="name" type="text" maxlength="32" autocomplete="nickname"
           autocapitalize="words" spellcheck="false" enterkeyhint="go" required>
    <div id="key-row" hidden>
      <label for="key">Room key</label>
      <input id="key" name="key" type="password" autocomplete="off" autocapitalize="none"
             spellcheck="false" enterkeyhint="go">
    </div>
    <button id="join-button" class="primary" type="submit">Join</button>
    <p id="join-status" class="status" role="status" aria-live="polite">Connecting…</p>
  </form>
</main>

<main id="chat" class="chat" hidden>
  <div class="topbar">
    <div class="titles">
      <h1>PrivateChatRoom</h1>
      <div class="me-row">
        <p id="me" class="me"></p>
        <button id="leave" class="secondary leave" type="button" aria-label="Leave the room">Leave</button>
      </div>
    </div>
    <button id="people-toggle" class="people-toggle" type="button"
            aria-expanded="false" aria-controls="people"><span class="dot" aria-hidden="true"></span><span id="people-count">1 online</span></button>
  </div>
  <div id="banner" class="banner" role="status" aria-live="polite" hidden>
    <span id="banner-text"></span>
    <button id="banner-button" class="secondary" type="button" hidden></button>
  </div>
  <div class="middle">
    <div id="log" class="log" role="log" aria-live="polite" aria-relevant="additions" aria-label="Chat messages" tabindex="0"><ol id="lines" class="lines"></ol></div>
    <button id="newest" class="newest" type="button" hidden>New messages ↓</button>
    <section id="people" class="people" aria-labelledby="people-title">
      <h2 id="people-title">1 person is online</h2>
      <ul id="people-list"></ul>
      <h2>Alerts</h2>
      <p class="choice"><input id="buzz" type="checkbox"> <label for="buzz">Buzz or beep for a line that names me or is private</label></p>
      <p id="notify-row" class="choice" hidden><input id="notify" type="checkbox"> <label for="notify">Desktop notifications while this page is hidden</label></p>
    </section>
  </div>
  <p id="heard" class="visually-hidden" role="status"></p>
  <p id="typing" class="typing" role="status"></p>
  <div id="upload" class="upload" role="status" aria-live="polite" hidden>
    <span id="upload-text"></span><progress id="upload-bar" max="100" hidden></progress>
  </div>
  <div id="replying" class="replying" hidden>
    <span id="replying-text"></span>
    <button id="reply-cancel" class="secondary" type="button" aria-label="Cancel the reply">Cancel</button>
  </div>
  <form id="composer" class="composer" novalidate>
    <button id="photo-button" class="photo-button" type="button" aria-label="Share a photo"
            title="Share a photo" hidden><svg aria-hidden="true" viewBox="0 0 24 24" width="24" height="24"><path fill="currentColor" d="M9 3 7.2 5H4a2 2 0 0 0-2 2v11a2 2 0 0 0 2 2h16a2 2 0 0 0 2-2V7a2 2 0 0 0-2-2h-3.2L15 3H9zm3 5a5 5 0 1 1 0 10 5 5 0 0 1 0-10zm0 2a3 3 0 1 0 0 6 3 3 0 0 0 0-6z"/></svg></button>
    <input id="photo-input" type="file" accept="image/*" hidden>
    <label for="message" class="visually-hidden">Message</label>
    <textarea id="message" rows="1" placeholder="Message" enterkeyhint="send" autocomplete="off"></textarea>
    <button id="send" class="primary" type="submit">Send</button>
  </form>
</main>
<script>
"use strict";
(function () {
  const MAX_LINES = 2000;       // lines kept on the page; older ones go
  const MAX_DELAY = 30;         // seconds: the longest wait between reconnects
  const WHO_PATIENCE = 5000;    // ms to wait for a "who" answer before asking again
  const PROBE_AFTER = 20000;    // ms hidden after which the socket may be dead
  const NAME_KEY = "pcr-name";  // the name is remembered on this device; the key is not
  const SEAT_KEY = "pcr-seat";  // the token back to this tab's seat, kept in the tab alone
  const ROOM_KEY = "pcr-key";   // the room key, kept in this tab alone: a reload keeps it
  const MAX_PHOTO = 8 * 1024 * 1024;   // bytes the room takes in one photo
  const PHOTO_SIDE = 2048;      // pixels on a photo's long side: larger ones are shrunk to it
  const AWAY_CLOSE = 4000;      // closing to come back: the room holds the seat (only 1000 leaves)
  const AWAY = " (away)";        // how "who" lists a member whose seat is held
  const ALERTS_KEY = "pcr-alerts";   // the member's choice of buzz and notifications, on this device
  const BUZZ_GAP = 3000;        // ms: a burst of lines for the reader buzzes once
  const REPLAY_QUIET = 1000;    // ms without a line that ends a replay (history, or what was missed)
  const REPLAY_MOST = 5000;     // ms: the longest a replay keeps the log quiet
  const REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];   // the room's, in this order
  const TYPING_EVERY = 3000;    // ms: the room is told its member is typing at most this often
  const TYPING_SHOWN = 6000;    // ms: "NAME is typing…" this long after NAME's last notice
  const QUOTE_CHARS = 40;       // a reply shows about this many of the first characters it answers

  const $ = function (id) { return document.getElementById(id); };
  const ui = {
    join: $("join"), joinForm: $("join-form"), name: $("name"), keyRow: $("key-row"),
    key: $("key"), joinButton: $("join-button"), joinStatus: $("join-status"),
    chat: $("chat"), me: $("me"), peopleToggle: $("people-toggle"), leave: $("leave"),
    peopleCount: $("people-count"), people: $("people"), peopleTitle: $("people-title"),
    peopleList: $("people-list"), banner: $("banner"), bannerText: $("banner-text"),
    bannerButton: $("banner-button"), log: $("log"), lines: $("lines"), newest: $("newest"),
    heard: $("heard"), buzz: $("buzz"), notify: $("notify"), notifyRow: $("notify-row"),
    composer: $("composer"), message: $("message"), send: $("send"),
    photoButton: $("photo-button"), photoInput: $("photo-input"), upload: $("upload"),
    uploadText: $("upload-text"), uploadBar: $("upload-bar"), typing: $("typing"),
    replying: $("replying"), replyingText: $("replying-text"), replyCancel: $("reply-cancel")
  };

  const room = {
    ws: null,            // the current socket, or null
    helloSeen: false,    // the current socket said hello
    keyNeeded: false,
    maxLine: 0,          // bytes the room takes in one message (hello says; 0: not known)
    tooLong: false,      // the banner says the message in the box is too long
    aliasSent: false,
    refusal: "",         // the server's sentence on the current socket
    stopped: false,      // the server said it is stopping
    inRoom: false,       // welcomed on the current socket
    everIn: false,       // welcomed once: after a drop, re-join by itself
    wantJoin: false,     // send the alias as soon as hello comes
    name: "", key: "",   // what the member typed
    invited: false,      // the key field was filled in from an invitation's link (#key=)
    me: "",              // the name the room gave
    attempt: 0, retryTimer: 0, tickTimer: 0, retryAt: 0, retryText: "",
    everOpen: false,     // a socket was open once (the room was reachable)
    names: [], others: 0, count: 0,
    whoPending: false, whoTimer: 0, whoShown: false,
    lastHeard: 0, hiddenAt: 0, probeTimer: 0,
    unread: 0, stuck: true, lastTop: 0, logSize: "", unseen: 0, okTimer: 0,
    token: "",           // brings this page back to its seat after a lost connection
    seen: 0,             // the mark of the last event shown: what it missed starts there
    grace: 0,            // seconds the room holds the seat of a lost connection
    lostAt: 0,           // when the connection was lost while in the room
    forYou: "",          // while hidden: "named" or "private" when a line was for the reader
    replay: null,        // a batch being shown quietly: { lines, words, until }
    replayTimer: 0,
    prefix: "",          // the "/msg name " a tap on a name put in the text box
    buzzedAt: 0, audio: null,
    photos: false,       // the room takes photos
    upload: null,        // the photo being sent: {ws, size, timer}
    uploadTimer: 0,      // hides a failure's sentence
    editWindow: 900,     // seconds after sending in which one's own line can be edited or deleted
    replyTo: null,       // the line the text box answers: {id, private}
    typingSent: 0,       // when the room was last told this member is typing
    typers: {},          // name -> until when "NAME is typing…" is shown
    typingTimer: 0
  };

  /* ---------- small helpers ---------- */

  function plain(text) {
    // The server's notices end in "..." and a newline; the page shows a sentence.
    let t = String(text == null ? "" : text).trim();
    while (t.endsWith(".")) { t = t.slice(0, -1); }
    return t;
  }

  function sentence(text) {
    // "the room is full" -> "The room is full."
    const t = String(text == null ? "" : text).trim();
    if (!t) { return ""; }
    const end = t.charAt(t.length - 1);
    return t.charAt(0).toUpperCase() + t.slice(1) + (end === "." || end === "!" || end === "?" ? "" : ".");
  }

  function colourOf(name) {
    let h = 0;
    for (let i = 0; i < name.length; i++) { h = (h * 31 + name.charCodeAt(i)) % 9973; }
    return "n" + (h % 8);
  }

  function clock() {
    return new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function make(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text != null) { node.textContent = text; }
    return node;
  }

  function remember(key, value) {
    try { localStorage.setItem(key, value); } catch (e) { /* private mode: fine */ }
  }

  function remembered(key) {
    try { return localStorage.getItem(key) || ""; } catch (e) { return ""; }
  }

  function keepKey(key) {
    try { sessionStorage.setItem(ROOM_KEY, key); } catch (e) { /* private mode: typed again */ }
  }

  function wordy(c) {
    // A letter (it has cases) or a digit: what a name must not touch to be a whole word.
    return c.toLowerCase() !== c.toUpperCase() || (c >= "0" && c <= "9") || c === "_";
  }

  function mentions(text, name) {
    // True if text has name as a whole word, whatever its case: "Dora!" does, "adorable" does not.
    const hay = text.toLowerCase(), needle = name.toLowerCase();
    for (let at = needle ? hay.indexOf(needle) : -1; at >= 0; at = hay.indexOf(needle, at + 1)) {
      if (!wordy(hay.charAt(at - 1)) && !wordy(hay.charAt(at + needle.length))) { return true; }
    }
    return false;
  }

  function keepSeat() {
    try {
      sessionStorage.setItem(SEAT_KEY, JSON.stringify(
        { token: room.token, seen: room.seen, grace: room.grace, name: room.name }));
    } catch (e) { /* kept in this page only */ }
  }

  function forgetSeat() {
    room.token = "";
    try { sessionStorage.removeItem(SEAT_KEY); } catch (e) { /* nothing kept */ }
  }

  function keptSeat() {
    // A tab the phone put away and reloaded may still have its seat.
    try {
      const seat = JSON.parse(sessionStorage.getItem(SEAT_KEY) || "null");
      if (seat && typeof seat.token === "string" && typeof seat.seen === "number") {
        room.token = seat.token;
        room.seen = seat.seen;
        room.grace = Number(seat.grace) || 0;
        room.name = String(seat.name || "");
      }
    } catch (e) { /* none */ }
  }

  function seatHeld() {
    return !!room.token && room.grace > 0 && (!room.lostAt || Date.now() - room.lostAt < room.grace * 1000);
  }

  /* ---------- the message list ---------- */

  function nearBottom() {
    const log = ui.log;
    return log.scrollHeight - log.scrollTop - log.clientHeight < 48;
  }

  function toBottom() {
    ui.log.scrollTop = ui.log.scrollHeight;
    room.lastTop = ui.log.scrollTop;
    room.stuck = true;
    room.unseen = 0;
    ui.newest.hidden = true;
  }

  function append(item, counts) {
    const stick = room.stuck;
    ui.lines.appendChild(item);
    let extra = ui.lines.childElementCount - MAX_LINES;
    if (extra > 0) {
      const before = ui.log.scrollHeight;
      while (extra-- > 0) { ui.lines.removeChild(ui.lines.firstElementChild); }
      if (!stick) { ui.log.scrollTop -= before - ui.log.scrollHeight; }
    }
    if (room.replay) { keepQuiet(); }
    if (stick) {
      toBottom();
    } else if (counts) {
      room.unseen += 1;
      ui.newest.textContent = room.unseen === 1 ? "1 new message ↓" : room.unseen + " new messages ↓";
      ui.newest.hidden = false;
    }
    if (counts && document.hidden) {
      room.unread += 1;
      retitle();
    }
  }

  function retitle() {
    const why = room.forYou === "private" ? "private message — " : room.forYou ? "mentioned — " : "";
    document.title = room.unread ? "(" + room.unread + ") " + why + "PrivateChatRoom" : "PrivateChatRoom";
  }

  function nameButton(name) {
    // A tap on a name starts a private line to that member.
    const button = make("button", "name", name);
    button.type = "button";
    button.title = "Private message to " + name;
    button.setAttribute("data-name", name);
    return button;
  }

  function said(name, content, kind, when, tag, msg) {
    // A line someone said: the name, a tag (private, names you), when, the line it answers,
    // what was said (text or photo); its reactions, and what can be done to it (lineTools).
    const own = name === room.me;
    const item = make("li", kind + (own ? " own" : ""));
    const bubble = make("div", "bubble");
    const head = make("div", "head " + (own ? "" : colourOf(name)));
    if (own) {
      head.appendChild(make("span", "", "You"));
    } else {
      head.appendChild(nameButton(name)).tabIndex = -1;   // by keyboard: the list of who is online
    }
    if (tag) { head.appendChild(tag); }
    head.appendChild(make("span", "time", when));
    bubble.appendChild(head);
    if (msg.reply) { bubble.appendChild(quoteOf(msg.reply)); }
    bubble.appendChild(content);
    item.appendChild(bubble);
    if (typeof msg.id === "number") { lineTools(item, msg, name, own && kind.indexOf("earlier") < 0); }
    if (room.replay) { room.replay.lines += 1; }
    stopsTyping(name);
    append(item, !own && kind.indexOf("earlier") < 0);
  }

  function addChat(name, msg, earlier) {
    if (msg.deleted) { return addDeleted(name, msg, earlier ? "earlier" : ""); }
    const text = msg.text == null ? "" : String(msg.text);   // none yet: an edit or a deletion follows
    const answers = name !== room.me && !!msg.reply && String(msg.reply.name) === room.me;   // a reply to you
    const named = answers || name !== room.me && mentions(text, room.me);
    said(name, make("div", "text", text), (earlier ? "earlier" : "") + (named ? " named" : ""), earlier ? "earlier" : clock(),
         named ? make("span", "visually-hidden", answers ? "answers you" : "names you") : null, msg);
    if (named && !earlier) { heed(answers ? "answered" : "named", name); }
  }

  function addPrivate(msg) {
    const from = String(msg.from), to = String(msg.to);
    if (msg.deleted) { return addDeleted(from, msg, "private"); }
    said(from, make("div", "text", msg.text == null ? "" : String(msg.text)), "private", clock(),
         make("span", "tag", from === room.me ? "private to " + to : "private"), msg);
    if (from !== room.me) { heed("private", from); }
  }

  function addDeleted(name, msg, kind) {
    // A line taken back: "NAME deleted a line", in its place.
    const item = make("li", kind + (name === room.me ? " own" : ""));
    item.appendChild(make("div", "bubble")).appendChild(make("div", "text gone", name + " deleted a line"));
    if (typeof msg.id === "number") { item.id = "line-" + msg.id; }
    append(item, false);
  }

  function heed(kind, name) {
    // A line for the reader: the title says so while the page is hidden; a buzz
    // and a desktop notification (secure pages only) if the member allowed them.
    if (document.hidden) {
      room.forYou = kind === "private" || room.forYou === "private" ? "private" : "named";
      retitle();
      if (ui.notify.checked && window.isSecureContext && window.Notification && Notification.permission === "granted") {
        try {
          new Notification(kind === "private" ? name + " wrote to you privately" : kind === "answered" ? name + " answered you" : name + " named you", { tag: "pcr" });
        } catch (e) { /* phones show them from a service worker only */ }
      }
    }
    if (ui.buzz.checked && Date.now() - room.buzzedAt > BUZZ_GAP) {
      room.buzzedAt = Date.now();
      buzz();
    }
  }

  function buzz() {
    // A phone vibrates; elsewhere a short beep.
    if (navigator.vibrate && matchMedia("(pointer: coarse)").matches && navigator.vibrate(200)) { return; }
    const Sound = window.AudioContext || window.webkitAudioContext;
    if (!Sound) { return; }
    try {
      room.audio = room.audio || new Sound();
      const tone = room.audio.createOscillator(), gain = room.audio.createGain();
      tone.frequency.value = 880;
      gain.gain.value = 0.1;
      tone.connect(gain).connect(room.audio.destination);
      tone.start();
      tone.stop(room.audio.currentTime + 0.15);
    } catch (e) { /* no sound here */ }
  }

  function quietly(words, missed) {
    // A replay (the history, or what was missed while away) fills the log while it
    // is busy, then one status line sums it up: a screen reader says it once.
    if (!room.replay) {
      room.replay = { lines: 0, words: words, until: Date.now() + REPLAY_MOST, missed: !!missed };
      ui.log.setAttribute("aria-busy", "true");
    }
    keepQuiet();
  }

  function keepQuiet() {
    clearTimeout(room.replayTimer);
    room.replayTimer = setTimeout(replayed, Math.max(0, Math.min(REPLAY_QUIET, room.replay.until - Date.now())));
  }

  function replayed() {
    const n = room.replay.lines, words = room.replay.words;
    room.replay = null;
    ui.log.removeAttribute("aria-busy");
    ui.heard.textContent = (n === 0 ? "Nothing said " : n === 1 ? "1 message " : n + " messages ") + words;
  }

  function addPhoto(name, msg, earlier) {
    // Scaled to the column; a tap opens it full size; one no longer kept says so.
    if (msg.deleted) { return addDeleted(name, msg, earlier ? "earlier" : ""); }
    if (msg.gone) {
      said(name, make("div", "text gone", "This photo is no longer kept."), earlier ? "earlier" : "", earlier ? "earlier" : clock(), null, msg);
      return;
    }
    const url = String(msg.url);
    if (!/^[/]p[/][0-9a-f]+[.](jpg|png|webp)$/.test(url)) {
      if (msg.url == null && typeof msg.id === "number") {   // taken back while this page was away
        said(name, make("div", "text"), earlier ? "earlier" : "", earlier ? "earlier" : clock(), null, msg);
      }
      return;
    }
    const link = make("a", "photo");
    link.href = url;
    link.target = "_blank";
    link.rel = "noopener";
    const img = make("img");
    img.alt = name === room.me ? "Your photo" : "Photo from " + name;
    img.width = msg.width | 0;
    img.height = msg.height | 0;
    img.addEventListener("error", function () {
      link.replaceWith(make("div", "text gone", "This photo is no longer kept."));
    });
    img.src = url;
    link.appendChild(img);
    said(name, link, earlier ? "earlier" : "", earlier ? "earlier" : clock(), null, msg);
    if (name === room.me && !earlier && room.upload) { uploadEnded(""); }
  }

  function addLine(text, kind) {
    const t = plain(text);
    if (t) { append(make("li", kind, t), false); }
  }

  /* ---------- what members do to lines: reply, react, edit, delete; who is typing ---------- */

  function act(action) {
    // The room is asked with NUL first, so no typed line is ever taken for it.
    if (!room.inRoom || !room.ws) { return false; }
    room.ws.send(String.fromCharCode(0) + JSON.stringify(action));
    return true;
  }

  function lineOf(id) { return document.getElementById("line-" + (id | 0)); }

  function tool(name, text, label) {
    const button = make("button", "act", text);
    button.type = "button";
    button.setAttribute("data-act", name);
    button.setAttribute("aria-label", label);
    return button;
  }

  function lineTools(item, msg, name, mine) {
    // Its id, its reactions under it, and its buttons, shown while the line has the focus
    // (a tap, or the arrow keys in the list): Reply, React; Edit and Delete on one's own.
    item.id = "line-" + msg.id;
    item.tabIndex = -1;
    item.setAttribute("data-name", name);
    item.reactions = {};
    Object.keys(msg.reactions || {}).forEach(function (emoji) {
      const r = msg.reactions[emoji] || {};
      const names = Array.isArray(r.names) ? r.names.map(String) : [];
      item.reactions[emoji] = { n: r.n | 0, names: names, mine: names.indexOf(room.me) >= 0 };
    });
    const row = item.appendChild(make("div", "reactions"));
    row.setAttribute("aria-live", "off");
    showReactions(item);
    if (msg.edited) { markEdited(item); }
    const tools = item.appendChild(make("div", "actions"));
    tools.setAttribute("aria-live", "off");
    const whose = mine ? "your line" : name + "’s line";
    tools.appendChild(tool("reply", "Reply", mine ? "Reply to your line" : "Reply to " + name));
    tools.appendChild(tool("react", "React", "React to " + whose)).setAttribute("aria-expanded", "false");
    if (mine) {
      item.setAttribute("data-sent", String(Date.now()));
      if (!msg.url) { tools.appendChild(tool("edit", "Edit", "Edit your line")); }
      tools.appendChild(tool("delete", "Delete", "Delete your line"));
    }
  }

  function listed(names, more) {
    // "anna", "anna and you", "anna, bob and 3 others"
    const all = more > 0 ? names.concat([more + (more === 1 ? " other" : " others")]) : names.slice();
    return all.length < 2 ? all.join("") : all.slice(0, -1).join(", ") + " and " + all[all.length - 1];
  }

  function showReactions(item) {
    // Each reaction with its count; who reacted is in its name and its title.
    const row = item.querySelector(".reactions");
    const pressed = row.contains(document.activeElement) && document.activeElement.getAttribute("data-emoji");
    row.textContent = "";
    REACTIONS.forEach(function (emoji) {
      const r = item.reactions[emoji];
      if (!r || r.n <= 0) { return; }
      const who = listed(r.names.map(function (n) { return n === room.me ? "you" : n; }), r.n - r.names.length);
      const chip = row.appendChild(make("button", "chip", emoji + " " + r.n));
      chip.type = "button";
      chip.setAttribute("data-emoji", emoji);
      chip.setAttribute("aria-pressed", r.mine ? "true" : "false");
      chip.setAttribute("aria-label", "React " + emoji + " " + r.n + ": " + who);
      chip.title = who;
    });
    row.hidden = !row.firstChild;
    if (pressed) {   // the focus stays where it was: on that reaction, or on its line
      const again = row.querySelector('[data-emoji="' + pressed + '"]');
      (again || item).focus();
    }
  }

  function firstWords(text) {
    const t = String(text).replace(/[ ]+/g, " ").trim();
    if (t.length <= QUOTE_CHARS) { return t; }
    const cut = t.lastIndexOf(" ", QUOTE_CHARS);
    return t.slice(0, cut > QUOTE_CHARS / 2 ? cut : QUOTE_CHARS) + "…";
  }

  function quoteWords(reply) {
    return reply.deleted ? "a deleted line" : reply.photo ? "a photo" : reply.text == null ? "…" : String(reply.text);
  }

  function quoteOf(reply) {
    // The line a reply answers, above its words: its author and first words; a tap moves to it.
    const quote = make("a", "quote");
    quote.href = "#line-" + (reply.id | 0);
    quote.setAttribute("data-to", String(reply.id | 0));
    quote.appendChild(make("span", "visually-hidden", "In reply to "));
    quote.appendChild(make("span", "quote-name", String(reply.name)));
    quote.appendChild(make("span", "quote-text", quoteWords(reply)));
    if (reply.edited && !reply.deleted) { quote.appendChild(make("span", "edited", "edited")); }
    return quote;
  }

  function requote(id, words, edited) {
    // The quotes of line id take its new words; an edited line's are marked, a deleted one's not.
    document.querySelectorAll('.quote[data-to="' + (id | 0) + '"]').forEach(function (quote) {
      quote.querySelector(".quote-text").textContent = words;
      const mark = quote.querySelector(".edited");
      if (edited && !mark) { quote.appendChild(make("span", "edited", "edited")); }
      if (!edited && mark) { mark.remove(); }
    });
  }

  function markEdited(item) {
    const head = item.querySelector(".head");
    if (head && !head.querySelector(".edited")) { head.appendChild(make("span", "edited", "edited")); }
  }

  function lineEdited(msg) {
    if (typeof msg.text !== "string") { return; }   // words since changed again: the next event has them
    requote(msg.id, firstWords(msg.text), true);
    const item = lineOf(msg.id), text = item && item.querySelector(".text");
    if (!text) { return; }
    text.textContent = msg.text;
    markEdited(item);
  }

  function lineDeleted(msg) {
    requote(msg.id, "a deleted line", false);
    const item = lineOf(msg.id);
    if (!item) { return; }
    const name = String(msg.name || item.getAttribute("data-name") || "");
    const gone = make("li", ["earlier", "private", "own"].filter(function (c) { return item.classList.contains(c); }).join(" "));
    gone.id = item.id;
    gone.appendChild(make("div", "bubble")).appendChild(make("div", "text gone", name + " deleted a line"));
    const focused = item.contains(document.activeElement);
    item.replaceWith(gone);
    if (focused) { ui.log.focus(); }
  }

  function lineReacted(msg) {
    const item = lineOf(msg.id), emoji = String(msg.emoji);
    if (!item || !item.reactions || REACTIONS.indexOf(emoji) < 0) { return; }
    const r = item.reactions[emoji] || { mine: false };
    r.n = msg.n | 0;
    r.names = Array.isArray(msg.names) ? msg.names.map(String) : [];
    if (String(msg.name) === room.me) { r.mine = !!msg.on; }
    item.reactions[emoji] = r;
    showReactions(item);
  }

  function openPicker(button) {
    // The six reactions, each a button; Escape or a choice closes it.
    closePicker(false);
    const picker = make("div", "picker");
    picker.setAttribute("role", "group");
    picker.setAttribute("aria-label", "Reactions");
    REACTIONS.forEach(function (emoji) {
      const choice = picker.appendChild(make("button", "", emoji));
      choice.type = "button";
      choice.setAttribute("data-emoji", emoji);
      choice.setAttribute("aria-label", "React with " + emoji);
    });
    button.parentNode.appendChild(picker);
    button.setAttribute("aria-expanded", "true");
    picker.firstChild.focus();
  }

  function closePicker(refocus) {
    const picker = ui.lines.querySelector(".picker");
    if (!picker) { return; }
    const button = picker.parentNode.querySelector('[data-act="react"]');
    if (refocus) { button.focus(); }   // first: while the line has the focus, its buttons show
    picker.remove();
    button.setAttribute("aria-expanded", "false");
  }

  function startReply(item) {
    // The text box answers this line until it is sent or the reply is cancelled.
    const text = item.querySelector(".text"), name = item.getAttribute("data-name");
    const words = item.querySelector(".photo") ? "a photo" : firstWords(text ? text.textContent : "");
    const secret = item.classList.contains("private");
    room.replyTo = { id: Number(item.id.slice(5)), private: secret };
    ui.replyingText.textContent = (secret ? "Replying privately to " : "Replying to ") + name + ": " + words;
    ui.replying.hidden = false;
    ui.message.setAttribute("aria-describedby", "replying-text");
    ui.message.focus();
  }

  function endReply() {
    room.replyTo = null;
    ui.replying.hidden = true;
    ui.message.removeAttribute("aria-describedby");
  }

  function startEdit(item) {
    // The line's words in a box in its place: Enter saves them, Escape (or leaving it) cancels.
    const text = item.querySelector(".text");
    if (!text || item.classList.contains("editing")) { return; }
    const box = make("input", "edit-box");
    box.type = "text";
    box.value = text.textContent;
    box.setAttribute("aria-label", "Edit your line");
    box.setAttribute("enterkeyhint", "done");
    item.classList.add("editing");
    text.hidden = true;
    text.after(box);
    let done = false;
    function finish(save) {
      if (done) { return; }
      done = true;
      const words = box.value.trim();
      if (save && words && words !== text.textContent.trim()) { act({ act: "edit", id: Number(item.id.slice(5)), text: words }); }
      box.remove();
      text.hidden = false;
      item.classList.remove("editing");
      if (save !== null) { item.focus(); }
    }
    box.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && !ev.isComposing && ev.keyCode !== 229) {
        ev.preventDefault();
        if (overLimit(box.value)) {
          banner("These words are too long for the room: up to " + room.maxLine + " bytes.", "warn");
        } else {
          finish(true);
        }
      }
      if (ev.key === "Escape") { ev.preventDefault(); ev.stopPropagation(); finish(false); }
    });
    box.addEventListener("blur", function () { finish(null); });
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
  }

  function expireTools() {
    // Past the room's window one's own lines can no longer be edited or deleted: the buttons go.
    document.querySelectorAll("#lines li[data-sent]").forEach(function (item) {
      if (Date.now() - Number(item.getAttribute("data-sent")) < room.editWindow * 1000 - 2000) { return; }
      item.removeAttribute("data-sent");
      item.querySelectorAll('[data-act="edit"], [data-act="delete"]').forEach(function (b) { b.remove(); });
    });
  }

  function goTo(quote) {
    // A tap on a quote moves to the line it answers, while it is on the page.
    const item = lineOf(quote.getAttribute("data-to"));
    if (!item) {
      banner("That line is no longer on this page.", "ok");
      return;
    }
    item.scrollIntoView({ block: "center" });
    item.classList.add("found");
    setTimeout(function () { item.classList.remove("found"); }, 1500);
    item.focus({ preventScroll: true });
  }

  function onLine(ev) {
    // One listener for what is tapped in the list: a line's buttons, its reactions, a quote.
    const target = ev.target.closest("button, a.quote, input");
    const item = ev.target.closest("li[data-name]");
    if (!target) {
      if (item && !window.getSelection().toString()) { item.focus({ preventScroll: true }); }
      return;
    }
    if (target.matches("a.quote")) { ev.preventDefault(); goTo(target); return; }
    if (!item || target.matches("input, .name")) { return; }
    const id = Number(item.id.slice(5)), what = target.getAttribute("data-act");
    const emoji = target.getAttribute("data-emoji");
    if (emoji) {
      act({ act: "react", id: id, emoji: emoji });
      if (target.parentNode.classList.contains("picker")) { closePicker(true); }
    } else if (what === "reply") {
      startReply(item);
    } else if (what === "react") {
      if (target.getAttribute("aria-expanded") === "true") { closePicker(true); } else { openPicker(target); }
    } else if (what === "edit") {
      startEdit(item);
    } else if (what === "delete" && confirm("Delete this line for everyone?")) {
      act({ act: "delete", id: id });
    }
  }

  function onLineKey(ev) {
    // In the list, the arrow keys (and Home, End) move from line to line; Escape closes a picker.
    if (ev.key === "Escape" && ui.lines.querySelector(".picker")) { ev.stopPropagation(); closePicker(true); return; }
    const moves = { ArrowUp: -1, ArrowDown: 1, Home: -Infinity, End: Infinity };
    if (!(ev.key in moves) || ev.target.tagName === "INPUT" || ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    const items = Array.prototype.slice.call(ui.lines.querySelectorAll("li[data-name]"));
    if (!items.length) { return; }
    const here = items.indexOf(ev.target.closest("li[data-name]"));
    const at = Math.max(0, Math.min(items.length - 1, (here < 0 ? items.length : here) + moves[ev.key]));
    ev.preventDefault();
    items[at].focus();
  }

  function showTyping() {
    // "anna is typing…": said politely, and only when who is typing changes.
    clearTimeout(room.typingTimer);
    const now = Date.now();
    const names = Object.keys(room.typers).filter(function (n) { return room.typers[n] > now; });
    Object.keys(room.typers).forEach(function (n) { if (room.typers[n] <= now) { delete room.typers[n]; } });
    const text = !names.length ? "" : names.length < 4 ? listed(names, 0) + (names.length === 1 ? " is typing…" : " are typing…")
      : listed(names.slice(0, 2), names.length - 2) + " are typing…";
    if (ui.typing.textContent !== text) { ui.typing.textContent = text; }
    if (names.length) {
      const next = Math.min.apply(null, names.map(function (n) { return room.typers[n]; }));
      room.typingTimer = setTimeout(showTyping, next - now + 50);
    }
  }

  function stopsTyping(name) {
    if (room.typers[name]) { delete room.typers[name]; showTyping(); }
  }

  function tellTyping() {
    // Typing a line (not a command) tells the room, at most once every TYPING_EVERY.
    const text = ui.message.value;
    if (text.trim() && text.charAt(0) !== "/" && Date.now() - room.typingSent >= TYPING_EVERY && act({ act: "typing" })) {
      room.typingSent = Date.now();
    }
  }

  /* ---------- who is online ---------- */

  function renderPeople() {
    const n = room.count || room.names.length + room.others;
    ui.peopleToggle.classList.toggle("offline", !room.inRoom);
    ui.peopleCount.textContent = room.inRoom ? n + " online" : "Offline";
    ui.peopleTitle.textContent = !room.inRoom ? "Not connected: the list may be out of date"
      : n === 1 ? "1 person is online" : n + " people are online";
    const list = ui.peopleList;
    while (list.firstChild) { list.removeChild(list.firstChild); }
    room.names.forEach(function (name) {
      const li = make("li");
      const bare = name.endsWith(AWAY) ? name.slice(0, -AWAY.length) : name;
      const shown = li.appendChild(bare === room.me ? make("span", "", bare) : nameButton(bare));
      if (bare === room.me || bare !== name) { shown.appendChild(make("span", "beside", bare === room.me ? " (you)" : AWAY)); }
      list.appendChild(li);
    });
    if (room.others > 0) {
      list.appendChild(make("li", "more", "and " + room.others + (room.others === 1 ? " other" : " others")));
    }
  }

  function askWho() {
    if (!room.inRoom || room.whoPending) { return; }
    room.whoPending = true;
    clearTimeout(room.whoTimer);
    room.whoTimer = setTimeout(function () { room.whoPending = false; }, WHO_PATIENCE);
    room.ws.send("/who");
  }

  function setPeopleOpen(open) {
    ui.people.classList.toggle("open", open);
    ui.peopleToggle.setAttribute("aria-expanded", open ? "true" : "false");
  }

  /* ---------- what the member sees about the connection ---------- */

  function showJoin(text, isError, focusKey) {
    ui.chat.hidden = true;
    ui.join.hidden = false;
    ui.keyRow.hidden = !room.keyNeeded;
    ui.joinButton.disabled = false;
    ui.joinStatus.textContent = text || "";
    ui.joinStatus.classList.toggle("error", !!isError);
    (focusKey && room.keyNeeded ? ui.key : ui.name).focus();
  }

  function showChat() {
    const first = !ui.join.hidden;
    ui.join.hidden = true;
    ui.chat.hidden = false;
    if (first) { toBottom(); ui.message.focus(); }
  }

  function banner(text, kind, button) {
    clearTimeout(room.okTimer);
    room.tooLong = false;
    ui.banner.hidden = !text;
    ui.banner.classList.toggle("ok", kind === "ok");
    ui.bannerText.textContent = text || "";
    ui.bannerButton.hidden = !button;
    ui.bannerButton.textContent = button || "";
    if (kind === "ok") { room.okTimer = setTimeout(function () { banner(""); }, 3000); }
  }

  function say(text, isError, button) {
    // Connection news goes where the member is looking: the chat or the join card.
    if (ui.chat.hidden) {
      ui.joinStatus.textContent = text;
      ui.joinStatus.classList.toggle("error", !!isError);
    } else {
      banner(text, "warn", button);
    }
  }

  function setCanSend(can) {
    ui.send.disabled = !can;
    ui.photoButton.disabled = !can || !!room.upload;
  }

  /* ---------- photos: shrunk and re-encoded here, sent as one binary message ---------- */

  function showUpload(text, isError, percent) {
    clearTimeout(room.uploadTimer);
    ui.upload.hidden = !text;
    ui.upload.classList.toggle("error", !!isError);
    ui.uploadText.textContent = text;
    ui.uploadBar.hidden = percent == null;
    if (percent != null) { ui.uploadBar.value = percent; }
    if (isError) { room.uploadTimer = setTimeout(function () { showUpload(""); }, 8000); }
  }

  function uploadEnded(failure) {
    // The room showed the photo (no failure), or one sentence says why not.
    const up = room.upload;
    if (up) { clearInterval(up.timer); }
    room.upload = null;
    showUpload(failure, !!failure);
    setCanSend(room.inRoom);
  }

  function shrink(bitmap) {
    // At most PHOTO_SIDE on the long side, as a JPEG: the camera's EXIF (place, camera) stays behind.
    const scale = Math.min(1, PHOTO_SIDE / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    if (bitmap.close) { bitmap.close(); }
    return new Promise(function (done) { canvas.toBlob(done, "image/jpeg", 0.85); });
  }

  function sharePhoto(file) {
    if (!room.inRoom || !room.ws || room.upload) { return; }
    room.upload = { ws: null, size: 0, timer: 0 };
    setCanSend(true);
    showUpload("Preparing your photo…", false);
    createImageBitmap(file).then(shrink, function () { return "not a picture"; }).then(function (blob) {
      if (!blob || blob === "not a picture") {
        uploadEnded("That file is not a picture.");
      } else if (blob.size > MAX_PHOTO) {
        uploadEnded("That photo is too big to send.");
      } else {
        return blob.arrayBuffer().then(sendPhoto);
      }
    }).catch(function () { uploadEnded("Your photo could not be read."); });
  }

  function sendPhoto(bytes) {
    const ws = room.ws;
    if (!ws || !room.inRoom || !room.upload) {
      uploadEnded("The connection was lost before your photo was shared.");
      return;
    }
    ws.send(String.fromCharCode(0) + "photo " + bytes.byteLength);   // NUL: nobody types it; then the bytes, alone
    ws.send(bytes);
    room.upload = { ws: ws, size: bytes.byteLength, timer: setInterval(uploadProgress, 250) };
    uploadProgress();
  }

  function uploadProgress() {
    const up = room.upload;
    if (!up || !up.ws) { return; }
    const sent = Math.max(0, up.size - up.ws.bufferedAmount);
    const percent = Math.round(100 * sent / up.size);
    showUpload(sent < up.size ? "Sending your photo… " + percent + "%" : "Sharing your photo…", false, percent);
  }

  /* ---------- the socket ---------- */

  function connect() {
    clearRetry();
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      scheduleRetry();
      return;
    }
    room.ws = ws;
    room.helloSeen = room.aliasSent = room.inRoom = room.stopped = false;
    room.refusal = "";
    let opened = false;
    ws.addEventListener("open", function () { opened = room.everOpen = true; });
    ws.addEventListener("message", function (ev) { if (room.ws === ws) { receive(ev.data); } });
    ws.addEventListener("close", function (ev) { if (room.ws === ws) { closed(ev.code, ev.reason, opened); } });
    if (room.everIn) { say("Reconnecting…", false, ""); }
  }

  function askSeatBack() {
    // A binary message: a name is always text, so the two are never confused.
    room.ws.send(new TextEncoder().encode(JSON.stringify({ resume: room.token, seen: room.seen })));
    room.aliasSent = true;
  }

  function sendAlias() {
    if (room.keyNeeded && !room.key) {
      room.wantJoin = false;
      showJoin("This room needs a key. Ask the host for it.", true, true);
      return;
    }
    room.ws.send(room.keyNeeded ? room.name + "#" + room.key : room.name);
    room.aliasSent = true;
    if (ui.chat.hidden) {
      ui.joinButton.disabled = true;
      ui.joinStatus.textContent = "Joining…";
      ui.joinStatus.classList.remove("error");
    }
  }

  const handlers = {
    hello: function (msg) {
      room.helloSeen = true;
      room.retryText = "";
      room.keyNeeded = !!msg.key;
      room.photos = !!msg.photos;
      ui.photoButton.hidden = !room.photos;
      room.maxLine = Number(msg.max_line) || 0;
      room.editWindow = Number(msg.edit_window) || room.editWindow;
      ui.keyRow.hidden = !room.keyNeeded;
      if (room.token) {
        askSeatBack();   // held or not, the room says which, and why
      } else if (room.wantJoin || room.everIn) {
        sendAlias();
      } else if (ui.chat.hidden) {
        ui.joinStatus.textContent = !room.keyNeeded ? "" : room.invited
          ? "This room needs a key: the key from your invitation is filled in."
          : ui.key.value ? "This room needs a key: it is filled in."
            : "This room needs a key: ask the host for it.";
        ui.joinStatus.classList.remove("error");
      }
    },
    welcome: function (msg) {
      const back = room.everIn;
      room.me = String(msg.name || room.name);
      if (msg.token) {
        room.token = String(msg.token);
        room.grace = Number(msg.grace) || 0;
        room.seen = Number(msg.at) || 0;
        keepSeat();
      } else {
        forgetSeat();
      }
      room.lostAt = 0;
      room.inRoom = room.everIn = true;
      room.wantJoin = false;
      room.attempt = 0;
      room.names = [room.me];
      room.others = 0;
      room.count = 0;
      room.whoPending = false;
      ui.me.textContent = "You are " + room.me;
      showChat();
      setCanSend(true);
      if (msg.back) {
        if (msg.missed) { quietly("while you were away", true); }
        addLine(msg.missed ? "Back: what was said while you were away" : "Back: you missed nothing", "note mark");
        banner("Reconnected", "ok");
      } else if (back) {
        addLine("Reconnected", "note mark");
        banner("Reconnected", "ok");
      } else {
        banner("");
      }
      renderPeople();
      askWho();
    },
    join: function (msg) {
      addLine(msg.text, "event");
      (Array.isArray(msg.names) ? msg.names : []).forEach(function (name) {
        name = String(name);
        if (room.names.indexOf(name) < 0) { room.names.push(name); }
      });
      renderPeople();
      if ((msg.others | 0) > 0) { askWho(); }
    },
    leave: function (msg) {
      addLine(msg.text, "event");
      const at = room.names.indexOf(String(msg.name));
      if (at >= 0) { room.names.splice(at, 1); }
      renderPeople();
    },
    count: function (msg) {
      room.count = msg.n | 0;
      renderPeople();
      if (room.count !== room.names.length + room.others) { askWho(); }
    },
    chat: function (msg) { addChat(String(msg.name), msg, false); },
    private: addPrivate,
    photo: function (msg) { addPhoto(String(msg.name), msg, false); },
    react: lineReacted,
    edit: lineEdited,
    delete: lineDeleted,
    typing: function (msg) {
      const name = String(msg.name);
      if (name === room.me || room.replay && room.replay.missed) { return; }   // old news
      room.typers[name] = Date.now() + TYPING_SHOWN;
      showTyping();
    },
    unshared: function (msg) { uploadEnded(sentence(plain(msg.text))); },
    history: function (msg) {
      const lines = Array.isArray(msg.lines) ? msg.lines : [];
      if (lines.length) {
        quietly("before you came");
        addLine("Earlier in the room", "note");
      }
      lines.forEach(function (line) {
        if (line.url || line.gone) { addPhoto(String(line.name), line, true); } else { addChat(String(line.name), line, true); }
      });
    },
    lost: function (msg) {
      // The seat was not kept: join again as new, on this same socket.
      forgetSeat();
      room.aliasSent = false;
      const text = sentence(plain(msg.text));
      if (room.everIn || room.wantJoin) {
        addLine(text, "note mark");
        sendAlias();
      } else {
        showJoin(text, false, false);
      }
    },
    note: function (msg) {
      addLine(msg.text, "note");
      if (typeof msg.words === "string" && !ui.message.value) { ui.message.value = msg.words; fitMessage(); }   // it did not go
    },
    who: function (msg) {
      room.names = Array.isArray(msg.names) ? msg.names.map(String) : [];
      room.others = msg.others | 0;
      room.whoPending = false;
      clearTimeout(room.whoTimer);
      renderPeople();
      if (room.whoShown) {
        room.whoShown = false;
        let text = "Online: " + room.names.join(", ");
        if (room.others > 0) { text += " and " + room.others + " more"; }
        addLine(text, "note");
      }
    },
    stop: function () { room.stopped = true; },
    refused: function (msg) { room.refusal = sentence(plain(msg.text)); }
  };

  function receive(data) {
    room.lastHeard = Date.now();
    clearTimeout(room.probeTimer);
    let msg;
    try { msg = JSON.parse(data); } catch (e) { return; }
    if (msg && typeof msg === "object" && Object.prototype.hasOwnProperty.call(handlers, msg.type)) {
      handlers[msg.type](msg);
      if (typeof msg.at === "number" && room.token && msg.type !== "welcome") {
        room.seen = msg.at;
        keepSeat();
      }
    }
  }

  function closed(code, reason, opened) {
    const wasIn = room.inRoom;
    room.ws = null;
    room.inRoom = false;
    if (code === 1008 || room.stopped) {
      forgetSeat();   // put out, carried on elsewhere, or the room stopped: no seat is held
    } else if (wasIn) {
      room.lostAt = Date.now();
    }
    clearTimeout(room.probeTimer);
    setCanSend(false);
    renderPeople();
    if (room.upload) { uploadEnded("The connection was lost before your photo was shared."); }
    if (code === 1008) {
      // Refused (wrong key, bad name) or put out by the host: no retry by itself.
      const text = room.refusal || sentence(reason) || "The host closed your connection.";
      room.wantJoin = false;
      if (wasIn) {
        addLine(text, "note mark");
        banner(text, "warn", "Join again");
      } else {
        room.everIn = false;
        if (/key/i.test(text) && room.keyNeeded) { ui.key.value = ""; room.key = ""; keepKey(""); }
        showJoin(text, true, /key/i.test(text));
      }
      return;
    }
    if (wasIn) { addLine(room.stopped ? "The server stopped" : "Connection lost", "note mark"); }
    if (!opened && room.retryText) {
      // still away: keep saying why we first lost it
    } else if (room.refusal) {
      room.retryText = room.refusal + " Trying again in ";
    } else if (room.stopped) {
      room.retryText = "The server stopped, reconnecting in ";
    } else if (room.everOpen) {
      room.retryText = "Connection lost, reconnecting in ";
    } else {
      room.retryText = "Cannot reach the room, trying again in ";
    }
    ui.joinButton.disabled = false;
    scheduleRetry();
  }

  function clearRetry() {
    clearTimeout(room.retryTimer);
    clearInterval(room.tickTimer);
    room.retryTimer = room.tickTimer = 0;
  }

  function scheduleRetry() {
    clearRetry();
    const base = Math.min(MAX_DELAY, Math.pow(2, room.attempt));
    // While the room holds the seat, come back well inside its grace.
    const most = seatHeld() ? Math.min(MAX_DELAY, room.grace / 5) : MAX_DELAY;
    const delay = Math.min(most, base * (0.8 + 0.4 * Math.random()));
    room.attempt = Math.min(room.attempt + 1, 10);
    room.retryAt = Date.now() + delay * 1000;
    room.retryTimer = setTimeout(connect, delay * 1000);
    room.tickTimer = setInterval(tell, 1000);
    tell();
  }

  function tell() {
    const left = Math.max(1, Math.ceil((room.retryAt - Date.now()) / 1000));
    say(room.retryText + left + " s…", !!room.refusal, "Try now");
  }

  function waiting() { return room.retryTimer !== 0; }

  function dropDead() {
    // No answer after the phone woke up: treat the socket as lost.
    const ws = room.ws;
    if (!ws) { return; }
    room.ws = null;
    try { ws.close(AWAY_CLOSE); } catch (e) { /* already closing */ }
    closed(1006, "", true);
  }

  function hangUp(code) {
    // No reconnect follows: AWAY_CLOSE keeps the seat; 1000 is a leave at once and ends it.
    const ws = room.ws;
    clearRetry();
    if (!ws) { return; }
    room.ws = null;
    ws.close(code);
    if (code === 1000) { forgetSeat(); }
  }

  /* ---------- what the member does ---------- */

  ui.joinForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    const name = ui.name.value.trim();
    if (!name) {
      showJoin("Please type your name.", true, false);
      return;
    }
    if (room.keyNeeded && name.indexOf("#") >= 0) {
      showJoin("A name cannot contain # in this room.", true, false);
      return;
    }
    if (room.keyNeeded && !ui.key.value) {
      showJoin("Please type the room key.", true, true);
      return;
    }
    room.name = name;
    room.key = room.keyNeeded ? ui.key.value : "";
    room.wantJoin = true;
    remember(NAME_KEY, name);
    keepKey(room.key);
    ui.joinButton.disabled = true;
    ui.joinStatus.classList.remove("error");
    const ws = room.ws;
    if (ws && room.helloSeen && !room.aliasSent && ws.readyState === WebSocket.OPEN) {
      sendAlias();
    } else if (!ws) {
      room.attempt = 0;
      ui.joinStatus.textContent = "Connecting…";
      connect();
    } else {
      ui.joinStatus.textContent = "Connecting…";
    }
  });

  function overLimit(text) {
    // Bytes past what the room takes in one message: the text stays in the box.
    const size = new TextEncoder().encode(text).length;
    return room.maxLine && size > room.maxLine ? size : 0;
  }

  function sayFit() {
    // Once the text fits (or is sent), the warning goes.
    if (room.tooLong && !overLimit(ui.message.value)) { banner(""); }
  }

  function sendMessage() {
    const text = ui.message.value;
    if (!text.trim() || !room.inRoom || !room.ws) { return; }
    const reply = room.replyTo && { act: "reply", id: room.replyTo.id, text: text, private: room.replyTo.private };
    const size = overLimit(reply ? String.fromCharCode(0) + JSON.stringify(reply) : text);
    if (size) {
      banner("This message is too long for the room: shorten it or send it in parts (up to " +
             room.maxLine + " bytes at a time; this one has " + size + ").", "warn");
      room.tooLong = true;
      return;
    }
    if (reply) {
      act(reply);
      endReply();
    } else {
      if (text.trim() === "/who") { room.whoShown = true; }
      room.ws.send(text);
    }
    room.typingSent = 0;   // the line is out: the next one is news again
    ui.message.value = "";
    sayFit();
    fitMessage();
    toBottom();
  }

  function fitMessage() {
    // Grow with the text up to five lines where CSS field-sizing is missing.
    const lines = ui.message.value.split(String.fromCharCode(10)).length;
    ui.message.rows = Math.min(5, Math.max(1, lines));
  }

  ui.composer.addEventListener("submit", function (ev) {
    ev.preventDefault();
    sendMessage();
    ui.message.focus();
  });

  ui.message.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      sendMessage();
    }
  });
  ui.message.addEventListener("input", function () { fitMessage(); sayFit(); tellTyping(); });
  ui.message.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape" && room.replyTo) { ev.preventDefault(); endReply(); }
  });
  ui.replyCancel.addEventListener("click", function () { endReply(); ui.message.focus(); });
  ui.lines.addEventListener("click", onLine);
  ui.log.addEventListener("keydown", onLineKey);
  setInterval(expireTools, 15000);

  ui.photoButton.addEventListener("click", function () { ui.photoInput.click(); });
  ui.photoInput.addEventListener("change", function () {
    const file = ui.photoInput.files && ui.photoInput.files[0];
    ui.photoInput.value = "";
    if (file) { sharePhoto(file); }
  });

  ui.peopleToggle.addEventListener("click", function () {
    setPeopleOpen(!ui.people.classList.contains("open"));
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape" && ui.people.classList.contains("open")) {
      setPeopleOpen(false);
      ui.peopleToggle.focus();
    }
  });

  ui.leave.addEventListener("click", function () {
    if (!confirm("Leave the room?")) { return; }   // a phone's mistaken tap
    hangUp(1000);
    forgetSeat();   // without a socket, the room ends the held seat when its grace runs out
    room.inRoom = room.everIn = room.wantJoin = false;
    uploadEnded("");
    banner("");
    endReply();
    room.typers = {};
    showTyping();
    ui.lines.textContent = "";   // joining again shows the room afresh
    showJoin("You left the room.", false, false);
  });

  ui.bannerButton.addEventListener("click", function () {
    if (room.ws) { return; }
    if (!waiting()) { room.wantJoin = true; room.everIn = true; room.attempt = 0; }
    connect();
  });

  function startPrivate(ev) {
    // "/msg name " in front of what is typed (in place of the last such start); a name
    // with a space in quotes, as it may begin with another member's name.
    const button = ev.target.closest("button.name");
    if (!button) { return; }
    const text = ui.message.value;
    const rest = room.prefix && text.indexOf(room.prefix) === 0 ? text.slice(room.prefix.length) : text;
    const name = button.getAttribute("data-name");
    room.prefix = "/msg " + (name.indexOf(" ") < 0 ? name : '"' + name + '"') + " ";
    ui.message.value = room.prefix + rest;
    fitMessage();
    setPeopleOpen(false);
    ui.message.focus();
    ui.message.setSelectionRange(ui.message.value.length, ui.message.value.length);
  }
  ui.lines.addEventListener("click", startPrivate);
  ui.peopleList.addEventListener("click", startPrivate);

  function keepAlerts() {
    remember(ALERTS_KEY, (ui.buzz.checked ? "buzz " : "") + (ui.notify.checked ? "notify" : ""));
  }
  ui.buzz.addEventListener("change", function () {
    keepAlerts();
    if (ui.buzz.checked) { buzz(); }   // what it will be like
  });
  ui.notify.addEventListener("change", function () {
    keepAlerts();
    if (ui.notify.checked && Notification.permission !== "granted") {
      Notification.requestPermission().then(function (answer) {
        ui.notify.checked = answer === "granted";
        keepAlerts();
      });
    }
  });

  ui.newest.addEventListener("click", toBottom);
  ui.log.addEventListener("click", function () { setPeopleOpen(false); });
  ui.log.addEventListener("scroll", function () {
    // Only the member scrolling up unsticks the view; the list shrinking under a
    // banner or the keyboard fires scroll events too.
    const top = ui.log.scrollTop;
    if (!(room.stuck && top >= room.lastTop - 1)) { room.stuck = nearBottom(); }
    room.lastTop = top;
    if (room.stuck) { room.unseen = 0; ui.newest.hidden = true; }
  });
  if (window.ResizeObserver) {
    // The phone keyboard shrinks the list, a narrower window rewraps it: keep the
    // newest line in view. A scroll bar coming (a line's buttons shown) changes
    // neither its height nor its outer width: it must not move the list under a
    // finger that is pressing a quote.
    new ResizeObserver(function () {
      const size = ui.log.clientHeight + "x" + ui.log.offsetWidth;
      if (size === room.logSize) { return; }
      room.logSize = size;
      if (room.stuck) { toBottom(); }
    }).observe(ui.log);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      room.hiddenAt = Date.now();
      return;
    }
    room.unread = 0;
    room.forYou = "";
    retitle();
    if (waiting()) {
      connect();   // timers sleep in the background: try at once
    } else if (room.inRoom && Date.now() - room.hiddenAt > PROBE_AFTER && room.hiddenAt) {
      const asked = Date.now();
      room.whoPending = false;
      askWho();
      room.probeTimer = setTimeout(function () {
        if (room.lastHeard < asked) { dropDead(); }
      }, 8000);
    }
  });
  window.addEventListener("online", function () { if (waiting()) { connect(); } });

  /* ---------- the page's lifecycle: frozen, cached, discarded ---------- */
  // Only the member leaves: Leave, or closing or leaving the page, closes with 1000. A page the
  // browser freezes, keeps in its back/forward cache or discards keeps its seat.

  function reconnectNow() {
    // What came while the page was frozen may be lost with its socket: a new one
    // asks for the seat and for everything after the last line shown.
    const ws = room.ws;
    room.ws = null;
    if (ws) { try { ws.close(AWAY_CLOSE); } catch (e) { /* already closing */ } }
    if (room.inRoom) { room.lostAt = Date.now(); }
    room.inRoom = false;
    room.attempt = 0;
    setCanSend(false);
    connect();
  }

  function fromDiscard() {
    // A tab the browser discarded reloads with its seat still in sessionStorage
    // (document.wasDiscarded): it asks for the seat, or joins again as new.
    keptSeat();
    if (room.token) { room.wantJoin = true; }
  }

  document.addEventListener("freeze", function () {
    if (room.token) { keepSeat(); }   // what it has seen, for its return
  });
  document.addEventListener("resume", function () {
    if (room.token || waiting()) { reconnectNow(); }
  });
  window.addEventListener("pagehide", function (ev) {
    // Into the back/forward cache: away, its seat held; closed or left: a leave.
    hangUp(ev.persisted ? AWAY_CLOSE : 1000);
  });
  window.addEventListener("pageshow", function (ev) {
    if (ev.persisted && !room.ws) { reconnectNow(); }
  });

  function keyFromLink() {
    // An invitation carries the room key in its fragment (#key=...), which no server
    // sees: it fills the key field, then leaves the address bar and the history.
    const found = /^#key=(.*)$/.exec(location.hash);
    if (!found) { return; }
    try { ui.key.value = decodeURIComponent(found[1]); } catch (e) { /* a broken link: type it */ }
    room.invited = ui.key.value !== "";
    keepKey(ui.key.value);
    history.replaceState(history.state, "", location.pathname + location.search);
  }

  ui.name.value = remembered(NAME_KEY);
  try { ui.key.value = sessionStorage.getItem(ROOM_KEY) || ""; } catch (e) { /* not kept */ }
  ui.buzz.checked = remembered(ALERTS_KEY).indexOf("buzz") >= 0;
  ui.notify.checked = remembered(ALERTS_KEY).indexOf("notify") >= 0;
  ui.notifyRow.hidden = !(window.isSecureContext && window.Notification);
  fromDiscard();
  keyFromLink();
  setCanSend(false);
  renderPeople();
  ui.name.focus();
  connect();
})();
</script>
</body>
</html>
"""


if __name__ == "__main__":
    sys.exit(main())
