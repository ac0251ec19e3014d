"""Terminal rendering of events: what Qt's example windows show, one line per event.

Qt's server window colours each kind of message (``MainWindow::addErrorMessage`` and friends):
errors Crimson, warnings DarkOrange, information DarkBlue, received messages DarkMagenta, and a
received message shows the peer, the DTLS datagram in hex (``toHex(' ')``) and the plain text.
:class:`Display` does the same on a terminal, with three differences a terminal needs:

* **one event per line** (Qt's window uses several lines per message; a log wants one);
* **colour only where it can be seen**: on a terminal, never when ``NO_COLOR`` is set (any
  value, https://no-color.org), never for ``TERM=dumb``; without colour, warnings and errors
  start with ``warning:`` / ``error:`` so the severity is not lost;
* **peer-supplied text is escaped**: plaintexts and PSK identities come from the network, and a
  peer must not be able to move the cursor or recolour the terminal, so control characters are
  shown as ``\\n``, ``\\x1b`` and so on (see ``_text.py``, which owns that escaping: messages
  come with their peer-supplied parts quoted already; plaintexts are escaped here).

``--log-format json`` swaps the line for one JSON object per event (see :meth:`Display.json_line`).
"""

from __future__ import annotations

import enum
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from ._codes import EventCode
from ._events import DatagramReceived, EventFilter, ServerEvent
from ._stats import StatisticsSnapshot
from ._text import escape_control_characters, printable

__all__ = [
    "QT_COLOURS",
    "ColourMode",
    "Display",
    "colour_mode_for",
    "escape_control_characters",
    "hex_dump",
]

Side = Literal["server", "client"]
LogFormat = Literal["text", "json"]


class ColourMode(enum.Enum):
    """How (and whether) lines are coloured."""

    NONE = "none"
    #: xterm's 256-colour palette: what every current terminal understands.
    PALETTE_256 = "256"
    #: 24-bit colour, for terminals that say so in ``COLORTERM``.
    TRUECOLOR = "truecolor"


@dataclass(frozen=True, slots=True)
class _Colour:
    rgb: tuple[int, int, int]
    #: The nearest entry of the xterm 256-colour cube.
    palette_index: int


#: Qt's colour names by severity, with their RGB values (the SVG/X11 colour table Qt uses).
QT_COLOURS: Mapping[str, _Colour] = {
    "error": _Colour((0xDC, 0x14, 0x3C), 161),  # Crimson
    "warning": _Colour((0xFF, 0x8C, 0x00), 208),  # DarkOrange
    "info": _Colour((0x00, 0x00, 0x8B), 18),  # DarkBlue
    "message": _Colour((0x8B, 0x00, 0x8B), 90),  # DarkMagenta
}

_RESET = "\x1b[0m"


def colour_mode_for(stream: TextIO, environ: Mapping[str, str] | None = None) -> ColourMode:
    """Colour for ``stream``: only on a terminal, never with ``NO_COLOR`` or ``TERM=dumb``."""
    env = os.environ if environ is None else environ
    if "NO_COLOR" in env:
        return ColourMode.NONE
    try:
        is_terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        is_terminal = False
    if not is_terminal or env.get("TERM") == "dumb":
        return ColourMode.NONE
    if env.get("COLORTERM", "").lower() in {"truecolor", "24bit"}:
        return ColourMode.TRUECOLOR
    return ColourMode.PALETTE_256


def hex_dump(data: bytes, limit: int = 0) -> str:
    """Bytes as Qt's ``toHex(' ')`` writes them (``17 fe fd``); ``limit`` > 0 shortens it."""
    if limit <= 0 or len(data) <= limit:
        return data.hex(" ")
    return f"{data[:limit].hex(' ')} ... ({len(data)} bytes)"


class Display:
    """Writes events to a text stream, one line each, coloured when that helps.

    ``side`` chooses how a received datagram reads: the server writes Qt's
    ``A message from (addr:port) DTLS datagram: <hex> As plain text: <text>``, the client
    ``<name> received a DTLS datagram: <hex> As plain text: <text>``.  ``quiet`` keeps
    errors, warnings and the events listed in ``always_show``.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        side: Side = "server",
        log_format: LogFormat = "text",
        colour: ColourMode | None = None,
        quiet: bool = False,
        hex_limit: int = 0,
        always_show: frozenset[str] = frozenset({"listening"}),
        worker: int | None = None,
        in_group: bool = False,
    ) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.side = side
        self.log_format = log_format
        self.colour = colour_mode_for(self.stream) if colour is None else colour
        if log_format == "json":
            self.colour = ColourMode.NONE
        self.quiet = quiet
        self.hex_limit = hex_limit
        self.always_show = always_show
        #: The worker number (``serve --workers N``): text lines start with ``[worker K] ``
        #: and JSON lines carry ``"worker": K``.
        self.worker = worker
        #: Part of a group of workers: JSON lines carry a ``worker`` field, ``null`` for the
        #: supervisor's own lines, so every line of the group has the same fields.
        self.in_group = in_group or worker is not None
        #: Lines written; a reader that went away (broken pipe) stops the writing, not the server.
        self.lines_written = 0
        self._broken = False

    # -- rendering ------------------------------------------------------------------------------

    def text_line(self, event: ServerEvent) -> str:
        """The event as one line of text, without colour or prefix."""
        # Messages quote their peer-supplied parts already (backslashes stay single); this only
        # catches what an application's own event might carry.
        message = printable(event.message)
        if not isinstance(event, DatagramReceived):
            return message
        ciphertext = hex_dump(event.ciphertext, self.hex_limit)
        plaintext = escape_control_characters(event.plaintext.decode("utf-8", "replace"))
        if self.side == "server":
            return f"{message} DTLS datagram: {ciphertext} As plain text: {plaintext}"
        return f"{message}: {ciphertext} As plain text: {plaintext}"

    def json_line(self, event: ServerEvent, **extra: Any) -> str:
        """The event as one JSON object: time, severity, code, message, peer (or null), and
        ``ciphertext`` (hex) and ``plaintext`` for received datagrams."""
        record: dict[str, Any] = {
            "time": round(time.time(), 6),
            "severity": event.severity,
            "code": event.code,
            "message": event.message,
            "peer": list(event.peer) if event.peer is not None else None,
        }
        if isinstance(event, DatagramReceived):
            record["ciphertext"] = event.ciphertext.hex()
            record["plaintext"] = event.plaintext.decode("utf-8", "replace")
        if self.in_group:
            record["worker"] = self.worker
        record.update(extra)
        # ensure_ascii: no raw control or non-ASCII character can reach the terminal.
        return json.dumps(record, ensure_ascii=True)

    def paint(self, severity: str, text: str) -> str:
        """``text`` in Qt's colour for ``severity`` (or with a severity prefix, uncoloured)."""
        if self.colour is ColourMode.NONE:
            if severity in {"error", "warning"}:
                return f"{severity}: {text}"
            return text
        colour = QT_COLOURS.get(severity, QT_COLOURS["info"])
        if self.colour is ColourMode.TRUECOLOR:
            red, green, blue = colour.rgb
            start = f"\x1b[38;2;{red};{green};{blue}m"
        else:
            start = f"\x1b[38;5;{colour.palette_index}m"
        return f"{start}{text}{_RESET}"

    # -- output ---------------------------------------------------------------------------------

    def wants(self, event: ServerEvent) -> bool:
        """False for events ``--quiet`` hides."""
        if not self.quiet or event.code in self.always_show:
            return True
        return event.severity in {"error", "warning"}

    def event_filter(self) -> EventFilter | None:
        """What :meth:`wants` takes, for ``server.events(wanted=...)``; None: everything.

        Subscribing with it means the server never builds the events ``--quiet`` hides.
        """
        if not self.quiet:
            return None
        return EventFilter(frozenset({"error", "warning"}), frozenset(self.always_show))

    def show(self, event: ServerEvent) -> None:
        """Write ``event`` (unless quiet hides it).  Usable directly as an ``on_event`` callback."""
        if not self.wants(event):
            return
        if self.log_format == "json":
            self.write(self.json_line(event))
        else:
            self.write(self.labelled(self.paint(event.severity, self.text_line(event))))

    def show_statistics(self, snapshot: StatisticsSnapshot) -> None:
        """A periodic health line (``--stats-interval``)."""
        if self.log_format == "json":
            record = json.loads(self.json_line(_statistics_event(snapshot)))
            record["statistics"] = snapshot.as_dict()
            self.write(json.dumps(record, ensure_ascii=True, sort_keys=False))
            return
        if not self.quiet:
            self.write(self.labelled(self.paint("info", _statistics_event(snapshot).message)))

    def labelled(self, line: str) -> str:
        """A text line with the worker's label in front (uncoloured), when there is a worker."""
        return line if self.worker is None else f"[worker {self.worker}] {line}"

    def write(self, line: str) -> None:
        """One line, flushed at once so a pipe sees it as soon as the event happens."""
        if self._broken:
            return
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except BrokenPipeError:
            # `serve | head`: the reader left.  Keep serving; just stop printing.
            self._broken = True
            return
        self.lines_written += 1


def _statistics_event(snapshot: StatisticsSnapshot) -> ServerEvent:
    failed = sum(snapshot.handshakes_failed.values())
    drops = sum(snapshot.drops.values())
    message = (
        f"Statistics: {snapshot.peers} peers ({snapshot.handshaking} handshaking); "
        f"handshakes {snapshot.handshakes_completed} completed, {failed} failed, "
        f"{snapshot.handshakes_refused} refused; messages {snapshot.messages_received} in, "
        f"{snapshot.messages_sent} out; datagrams {snapshot.datagrams_in} in, "
        f"{snapshot.datagrams_out} out; {drops} dropped; "
        f"{snapshot.events_dropped} events not shown"
    )
    return ServerEvent(EventCode.STATISTICS, message)
