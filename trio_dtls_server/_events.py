"""What the server tells the world: Qt's four signals as typed events, plus logging.

Qt's ``DtlsServer`` has four signals: ``errorMessage``, ``warningMessage``, ``infoMessage`` and
``datagramReceived(peerInfo, cipherText, plainText)``.  Here they are four frozen dataclasses
sharing one base, :class:`ServerEvent`.  Each carries Qt's wording in ``message`` and a stable,
machine-readable ``code`` (``"handshake_complete"``, ``"cookie_sent"``, ...), so applications can
match on codes while people read messages.

The :class:`EventHub` fans every event out to

* the standard :mod:`logging` logger ``trio_dtls_server`` (error → ERROR, warning → WARNING,
  info and datagrams → INFO/DEBUG), and
* every subscriber's bounded Trio memory channel.  A subscriber that does not keep up loses
  events, never the server's time: delivery is ``send_nowait`` and each loss is counted;
* every observer (``DTLSServer(on_event=...)``): a plain callback called at once, inside
  :meth:`EventHub.emit`, like a Qt signal with a direct connection.  It sees each event
  *before* the server does what comes next (sends the reply, the next flight), so output that
  mixes the server's events with its peers' (the example runner) reads in causal order; a
  subscriber's task runs later, after replies may already have arrived.  An observer must be
  quick and must not block: it runs in the server's own tasks.

Floods (10,000 garbage datagrams a second) must not turn into 10,000 log lines a second, so
warnings about unauthenticated traffic go through a per-code rate limit; what it holds back
is counted and summarised in the next line of that code that gets through.

Nothing from the network reaches a log line raw: messages quote peer-supplied text (PSK
identities, ...) with :func:`~._text.quote_peer_text` where they are built, and the hub passes
every message through :func:`~._text.printable` before logging or handing it out, so no
message can hold a newline, an ESC or any other unprintable character (a forged log line, a
rewritten terminal).  Raw bytes stay in structured fields (``plaintext``, ``ciphertext``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ._codes import EventCode
from ._text import printable

__all__ = [
    "DatagramReceived",
    "ErrorEvent",
    "EventFilter",
    "EventHub",
    "InfoEvent",
    "ServerEvent",
    "WarningEvent",
    "describe_exception",
    "peer_info",
]

logger = logging.getLogger("trio_dtls_server")

Address = tuple[str, int]


def peer_info(peer: Address) -> str:
    """Qt's ``(address:port)`` text: ``(127.0.0.1:5555)``; IPv6 has no brackets: ``(::1:5555)``."""
    return f"({peer[0]}:{peer[1]})"


def describe_exception(error: BaseException) -> str:
    """``RuntimeError: the handler broke``; just the type's name when there is no message."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """Base of every event. ``peer`` is the ``(host, port)`` concerned, when there is one."""

    code: EventCode
    message: str
    peer: Address | None = None

    @property
    def severity(self) -> str:
        return "info"


@dataclass(frozen=True, slots=True)
class ErrorEvent(ServerEvent):
    """Qt's ``errorMessage``: something failed (a handshake, a bind, a connection).

    ``exception`` is the exception behind it when one was raised where none was expected (an
    application handler, a bug): the log line then carries its traceback.
    """

    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def severity(self) -> str:
        return "error"


@dataclass(frozen=True, slots=True)
class WarningEvent(ServerEvent):
    """Qt's ``warningMessage``: bad or unexpected input that was dropped and counted."""

    @property
    def severity(self) -> str:
        return "warning"


@dataclass(frozen=True, slots=True)
class InfoEvent(ServerEvent):
    """Qt's ``infoMessage``: progress (verified, handshaking, encrypted, closed, ...)."""


@dataclass(frozen=True, slots=True)
class DatagramReceived(ServerEvent):
    """Qt's ``datagramReceived``: one decrypted datagram, with the DTLS bytes it came in."""

    ciphertext: bytes = b""
    plaintext: bytes = b""

    @property
    def severity(self) -> str:
        return "message"


_LOG_LEVELS = {
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "message": logging.INFO,
}


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscriber takes: those of ``severities`` (None: every severity), and
    those whose code is in ``codes`` whatever their severity."""

    severities: frozenset[str] | None = None
    codes: frozenset[str] = frozenset()

    def takes(self, event: ServerEvent) -> bool:
        severities = self.severities
        return severities is None or event.severity in severities or event.code in self.codes


@dataclass
class _RateLimit:
    """A token bucket per event code: ``burst`` events at once, then ``rate`` per second."""

    rate: float
    burst: float
    tokens: float
    updated: float
    suppressed: int = 0


@dataclass
class EventHub:
    """Delivers events to logging and to subscribers without ever blocking the caller."""

    clock: Callable[[], float] = trio.current_time
    warning_rate: float = 10.0
    warning_burst: float = 50.0
    #: Events that a full subscriber channel could not take.
    dropped: int = 0
    #: Warnings held back by the rate limit (they were counted in the statistics regardless).
    suppressed: int = 0
    #: Exceptions raised by observers (the first one is logged with its traceback).
    observer_errors: int = 0
    _subscribers: list[trio.MemorySendChannel[ServerEvent]] = field(default_factory=list)
    _observers: list[Callable[[ServerEvent], object]] = field(default_factory=list)
    _limits: dict[str, _RateLimit] = field(default_factory=dict)
    # What each subscriber takes (see subscribe); absent: everything.
    _filters: dict[int, EventFilter] = field(default_factory=dict)
    # Severities and codes some subscriber takes (or None: some subscriber takes all); the
    # answer of wants() without walking the subscribers.
    _wanted_severities: frozenset[str] | None = frozenset()
    _wanted_codes: frozenset[str] = frozenset()

    def subscribe(
        self, max_buffer: int, wanted: EventFilter | None = None
    ) -> trio.MemoryReceiveChannel[ServerEvent]:
        """A bounded stream of events: all of them, or only those ``wanted`` names.

        A filter is not only a convenience: an event that no subscriber, observer or logger
        takes is never built by the hot paths that ask :meth:`wants` first (a quiet command
        line skips the formatting, the channel and the wake-up of its printing task for every
        "handshake in progress" line it would throw away).
        """
        send, receive = trio.open_memory_channel[ServerEvent](max_buffer)
        self._subscribers.append(send)
        if wanted is not None:
            self._filters[id(send)] = wanted
        self._refresh_wanted()
        return receive

    def _refresh_wanted(self) -> None:
        severities: set[str] = set()
        codes: set[str] = set()
        for channel in self._subscribers:
            wanted = self._filters.get(id(channel))
            if wanted is None or wanted.severities is None:
                self._wanted_severities = None
                return
            severities |= wanted.severities
            codes |= wanted.codes
        self._wanted_severities = frozenset(severities)
        self._wanted_codes = frozenset(codes)

    def _unsubscribe(self, channel: trio.MemorySendChannel[ServerEvent]) -> None:
        self._subscribers.remove(channel)
        self._filters.pop(id(channel), None)
        self._refresh_wanted()

    def observe(self, callback: Callable[[ServerEvent], object]) -> None:
        """Call ``callback(event)`` for every event, synchronously, before :meth:`emit` returns.

        What it raises is logged and counted (:attr:`observer_errors`), never propagated.
        """
        self._observers.append(callback)

    def wants(self, severity: str, code: str | None = None) -> bool:
        """Would an event of ``severity`` (and ``code``, if given) go anywhere?

        Lets hot paths skip building an event nobody takes: no observer, no logger at its
        level, and no subscriber whose filter takes it.  Without ``code``, a subscriber that
        takes some codes of any severity counts as wanting it.
        """
        if self._observers:
            return True
        severities = self._wanted_severities
        if severities is None or severity in severities:
            return True
        if self._wanted_codes and (code is None or code in self._wanted_codes):
            return True
        return logger.isEnabledFor(_LOG_LEVELS[severity])

    def emit(self, event: ServerEvent, *, rate_limited: bool = False) -> None:
        """Log ``event``, call every observer, hand it to every subscriber; never raises.

        It never blocks either, as long as the observers do not.
        """
        severity = event.severity
        level = _LOG_LEVELS[severity]
        if not self.wants(severity, event.code):
            return  # nobody would see it: skip the rate limiter's bookkeeping too
        if not event.message.isprintable():
            # The last line of defence: a message someone built with raw peer text.
            event = dataclasses.replace(event, message=printable(event.message))
        note = ""
        if rate_limited:
            held_back = self._admit(event)
            if held_back < 0:
                return
            if held_back:
                note = f" ({held_back} more like this were not logged)"
        if logger.isEnabledFor(level):
            exception = event.exception if isinstance(event, ErrorEvent) else None
            logger.log(
                level, "%s%s", event.message, note, exc_info=exception, extra={"dtls_event": event}
            )
        for observer in self._observers:
            try:
                observer(event)
            except Exception as error:  # a broken callback must not stop a peer
                self.observer_errors += 1
                logger.error(
                    "an on_event callback raised %s on %r (%d so far)",
                    type(error).__name__,
                    event.code,
                    self.observer_errors,
                    exc_info=self.observer_errors == 1,
                )
        for channel in list(self._subscribers):
            wanted = self._filters.get(id(channel)) if self._filters else None
            if wanted is not None and not wanted.takes(event):
                continue
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._unsubscribe(channel)

    def close(self) -> None:
        """End every subscriber's stream (their ``async for`` finishes)."""
        for channel in self._subscribers:
            channel.close()
        self._subscribers.clear()
        self._filters.clear()
        self._refresh_wanted()

    def _admit(self, event: ServerEvent) -> int:
        """-1 if the rate limit holds ``event`` back, else how many it held back before it."""
        now = self.clock()
        limit = self._limits.get(event.code)
        if limit is None:
            limit = self._limits[event.code] = _RateLimit(
                self.warning_rate, self.warning_burst, self.warning_burst, now
            )
        limit.tokens = min(limit.burst, limit.tokens + (now - limit.updated) * limit.rate)
        limit.updated = now
        if limit.tokens < 1.0:
            limit.suppressed += 1
            self.suppressed += 1
            return -1
        limit.tokens -= 1.0
        held_back, limit.suppressed = limit.suppressed, 0
        return held_back
