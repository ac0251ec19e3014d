"""One verified, handshaken peer as the application sees it: :class:`DTLSConnection`.

The server creates one per peer once its handshake completes and hands it to the application's
handler inside that peer's own task.  Everything here runs in that task: datagrams wait in the
peer's bounded inbox (filled by the reader task) until :meth:`DTLSConnection.receive` decrypts
them, so a slow handler slows only its own peer.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from cryptography import x509

from ._certificates import describe_subject
from ._codes import DROP_WARNING_CODES, DropReason, EventCode
from ._errors import DTLSError
from ._events import DatagramReceived, ErrorEvent, EventHub, InfoEvent, WarningEvent, peer_info
from ._peers import Peer
from ._session import (
    ApplicationData,
    ConnectionFailed,
    DTLSSession,
    RecordsDropped,
    RemoteClosed,
    SessionEvent,
    SessionState,
)
from ._stats import ServerStatistics
from ._transport import ReplySource

__all__ = [
    "AddressedDatagram",
    "IDLE_WATCH_GRACE",
    "ConnectionClosed",
    "DTLSConnection",
    "PeerSlot",
    "drop_warning",
]

Address = tuple[str, int]

#: How long after the idle timeout the handler of a quiet peer is cancelled if it is not
#: reading.  A reading handler's :meth:`DTLSConnection.receive` ends the connection at the idle
#: timeout itself (and says why to the handler), so this backstop must come later: it fires
#: between one and two grace periods after the idle timeout (it is moved on lazily).
IDLE_WATCH_GRACE = 1.0


class AddressedDatagram(bytes):
    """A datagram that found its peer by connection ID (RFC 9146), with where it came from.

    The inbox carries plain ``bytes``; a ``tls12_cid`` datagram from another address than the
    peer's travels as this subclass, so that the peer task can move the association there
    once a record in it authenticates and is the newest (see ``DTLSConnection``).  Everything
    else treats it as the bytes it is.
    """

    source: Address
    reply_source: ReplySource | None

    @classmethod
    def make(
        cls, datagram: bytes, source: Address, reply_source: ReplySource | None
    ) -> AddressedDatagram:
        addressed = cls(datagram)
        addressed.source = source
        addressed.reply_source = reply_source
        return addressed


def drop_warning(reason: DropReason, peer: Address) -> WarningEvent:
    """The (rate-limited) warning for one dropped datagram of an established peer.

    Said the same way whether the reader task dropped it unread (:meth:`DTLSSession.screen`)
    or the peer task after trying it; the counter ``drops[reason]`` counts both.
    """
    info = peer_info(peer)
    if reason == DropReason.HANDSHAKE_RETRANSMISSION:
        message = f"{info}: 0 byte dgram, could be a re-connect attempt?"  # Qt's words
    else:
        message = f"{info}: {reason}, dropped"
    return WarningEvent(DROP_WARNING_CODES.get(reason, EventCode.RECORD_DROPPED), message, peer)


class ConnectionClosed(DTLSError, trio.BrokenResourceError):
    """The connection is over: ``reason`` says why (close_notify, idle, fatal alert, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class PeerSlot(Peer):
    """The server's record of one verified peer: its inbox, its task's cancel scope, its health.

    Its place in the peer's life (state, why the server ended it, the association it keeps
    aside) is :class:`~._peers.Peer`'s, written by :class:`~._peers.PeerTable` only.  The reader
    task only ever touches ``inbox_send``, ``queued``, ``queued_bytes`` and the counters, and
    reads ``session`` (to screen datagrams); the peer task owns the rest.
    Nothing here ever makes the reader drop a datagram because of what else came from the same
    address: an off-path attacker can send anything "from" it, and the real peer must still be
    heard.
    """

    client_random: bytes
    inbox_send: trio.MemorySendChannel[bytes]
    inbox_receive: trio.MemoryReceiveChannel[bytes]
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    session: DTLSSession | None = None
    #: Times of the latest (at most ``max_auth_failures``) records that failed authentication;
    #: created on the first one (most peers never have any, and a deque costs 760 bytes).
    auth_failures: deque[float] | None = None
    #: Until then the ``forged_records`` warning has been given for this peer, and its further
    #: authentication failures are counted but not logged one by one.
    forgery_quiet_until: float = -math.inf
    #: Around the handler: enforces the idle timeout on a handler that stops reading (see
    #: ``DTLSServer._serve_connection``); every authentic datagram moves its deadline on.
    idle_watch: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: Where this peer's replies leave from (the local address its verified hello was sent
    #: to), for servers bound to a wildcard address; see :class:`~._transport.UDPTransport`.
    reply_source: ReplySource | None = None
    #: Datagrams waiting in the inbox (the reader adds, the peer task takes): lets
    #: :meth:`DTLSConnection.send` see without a failed ``receive_nowait`` whether the peer
    #: said something a handler that only sends has not read yet.
    queued: int = 0
    #: The bytes of those datagrams: a handshaking peer's inbox is bounded by them too.
    queued_bytes: int = 0

    @property
    def info(self) -> str:
        return peer_info(self.address)

    # The inbox goes through these three, which keep ``queued`` right.

    def deliver_nowait(self, datagram: bytes) -> None:
        """The reader's side: queue a datagram (raises ``trio.WouldBlock`` when full)."""
        self.inbox_send.send_nowait(datagram)
        self.queued += 1
        self.queued_bytes += len(datagram)

    def take_nowait(self) -> bytes:
        """A datagram already waiting (raises ``trio.WouldBlock`` if none)."""
        datagram = self.inbox_receive.receive_nowait()
        self.queued -= 1
        self.queued_bytes -= len(datagram)
        return datagram

    def take_ready(self) -> bytes | None:
        """A datagram already waiting, or None; never raises for an empty inbox.

        With nothing counted the inbox is empty, and asking :meth:`take_nowait` would only raise
        WouldBlock, which costs more than this check on every wait of a peer task.
        """
        if not self.queued:
            return None
        try:
            return self.take_nowait()
        except trio.WouldBlock:  # counted, but handed to a receive() waiting in another task
            return None

    async def take(self) -> bytes:
        """The next datagram, waiting for it."""
        datagram = await self.inbox_receive.receive()
        self.queued -= 1
        self.queued_bytes -= len(datagram)
        return datagram


class DTLSConnection(trio.abc.Channel[bytes]):
    """An encrypted association with one peer.

    * ``await receive()`` returns the next decrypted datagram; ``async for data in connection``
      does the same until the connection ends.
    * ``await send(data)`` encrypts ``data`` as one datagram (at most 16,384 bytes).
    * ``await aclose()`` sends close_notify; the peer is then released.

    :attr:`peer`, :attr:`psk_identity`, :attr:`peer_certificate`, :attr:`peer_subject`,
    :attr:`cipher`, :attr:`protocol` and :attr:`resumed` describe the peer.

    It is a ``trio.abc.Channel[bytes]``, like ``trio.DTLSChannel``: code written for any
    channel of bytes drives it (see "Channels" in the API reference for the two differences:
    every end is a :class:`ConnectionClosed`, never ``EndOfChannel``, and ``async for`` ends
    quietly on any end).
    """

    def __init__(
        self,
        *,
        slot: PeerSlot,
        session: DTLSSession,
        transmit: Callable[[list[bytes]], Awaitable[None]],
        hub: EventHub,
        stats: ServerStatistics,
        idle_timeout: float | None,
        max_auth_failures: int,
        auth_failure_window: float,
        ready_limit: int = 64,
        follow: Callable[[Address, ReplySource | None], bool] | None = None,
    ) -> None:
        self._slot = slot
        # The server's move of this peer to a new address (RFC 9146 §6); True if it moved.
        self._follow = follow
        self._ready_limit = ready_limit
        self._session = session
        self._transmit = transmit
        self._hub = hub
        self._stats = stats
        self._idle_timeout = idle_timeout
        self._max_auth_failures = max_auth_failures
        self._auth_failure_window = auth_failure_window
        # Plaintexts decrypted but not yet returned: nearly always zero or one, so a list.
        self._ready: list[bytes] = []
        self._closed_reason: str | None = None
        #: The peer's ``(host, port)``.
        self.peer: Address = slot.address
        #: Qt's ``(host:port)`` text for the peer.
        self.peer_info: str = slot.info
        #: The PSK identity the peer authenticated with, or None (certificate clients).
        self.psk_identity: bytes | None = session.psk_identity
        #: The negotiated cipher suite, OpenSSL's name (``PSK-AES128-GCM-SHA256``).
        self.cipher: str = session.cipher
        #: ``DTLSv1.2``.
        self.protocol: str = session.protocol
        #: The client certificate OpenSSL verified against the server's client CA bundle, or
        #: None (PSK peers, and certificate peers that sent none in ``"optional"`` mode).
        self.peer_certificate: x509.Certificate | None = session.peer_certificate
        #: That certificate's subject as an RFC 4514 string (``CN=device-7,O=Example``).
        self.peer_subject: str | None = (
            None if self.peer_certificate is None else describe_subject(self.peer_certificate)
        )
        #: True if the peer resumed an earlier session (an abbreviated handshake).
        self.resumed: bool = session.resumed
        #: The most plaintext one :meth:`send` may carry: 16,384 bytes, or less if the peer
        #: negotiated a smaller max_fragment_length (RFC 6066), as constrained devices do.
        self.max_plaintext: int = session.max_plaintext

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    def __aiter__(self) -> DTLSConnection:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def receive(self) -> bytes:
        """The next datagram's plaintext; raises :class:`ConnectionClosed` once it ends."""
        while not self._ready:
            if self._closed_reason is not None:
                raise ConnectionClosed(self._closed_reason)
            await self._receive_one()
        return self._ready.pop(0)

    async def send(self, data: bytes) -> None:
        """Encrypt and send one datagram.

        Whatever the peer sent meanwhile is taken in first, so a handler that only sends
        still learns of the peer's close_notify (this raises :class:`ConnectionClosed`), the
        peer still counts as active, and its data waits for :meth:`receive` (at most
        ``peer_queue_size`` datagrams of it; more are dropped and counted).
        """
        if self._slot.queued and self._closed_reason is None:
            await self._take_queued()
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        self._session.send(data)
        self._stats.messages_sent += 1
        await self._transmit(self._session.take_datagrams())

    async def aclose(self) -> None:
        """Send close_notify (once) and end the connection."""
        if self._closed_reason is None:
            self._closed_reason = "closed by the server"
        if self._session.state is SessionState.ESTABLISHED:
            self._session.close()
            await self._transmit(self._session.take_datagrams())

    async def _take_early_events(self) -> None:
        """Take in what the peer sent ahead of its Finished (the server calls this first).

        Its data is delivered before anything later, counted and reported like any other; a
        close_notify that came with it ends the connection once that data has been read.
        """
        events = self._session.take_early_events()
        if events:
            await self._note_events(events, trio.current_time(), None)

    async def _take_queued(self) -> None:
        """Handle every datagram already in the inbox, without waiting for more."""
        slot = self._slot
        while slot.queued and self._closed_reason is None:
            try:
                datagram = slot.take_nowait()
            except trio.WouldBlock:
                # The count is a datagram already handed to a receive() waiting in another
                # task of this handler: that task takes it (and the count) when it wakes.
                return
            except trio.EndOfChannel:
                slot.queued = 0
                return
            await self._handle_datagram(datagram)

    async def _receive_one(self) -> None:
        slot = self._slot
        # Fast path: a datagram is already waiting, so no deadline needs arming.
        datagram = slot.take_ready()
        if datagram is None:
            deadline = math.inf
            if self._idle_timeout is not None:
                deadline = slot.last_activity + self._idle_timeout
            datagram = None
            with trio.move_on_at(deadline):
                datagram = await slot.take()
        if datagram is None:
            self._stats.idle_closed += 1
            self._hub.emit(
                InfoEvent(
                    EventCode.IDLE_TIMEOUT,
                    f"{self.peer_info}: no authentic datagram for {self._idle_timeout:g} s, "
                    "closing the connection",
                    self.peer,
                )
            )
            await self.aclose()
            self._closed_reason = "idle timeout"
            return
        await self._handle_datagram(datagram)

    async def _handle_datagram(self, datagram: bytes) -> None:
        """Decrypt one datagram from the inbox, answer what needs answering, note the rest."""
        now = trio.current_time()
        events = self._session.receive_datagram(datagram, now)
        if (
            isinstance(datagram, AddressedDatagram)
            and self._session.newest_record_authenticated
            and datagram.source != self.peer
            and self._follow is not None
            and self._follow(datagram.source, datagram.reply_source)
        ):
            # RFC 9146 §6: an authentic record newer than any before, from a new address: the
            # peer is there now (a NAT rebinding).  Replies, this datagram's included, go there.
            self.peer = self._slot.address
            self.peer_info = self._slot.info
        await self._note_events(events, now, datagram)

    async def _note_events(
        self, events: list[SessionEvent], now: float, datagram: bytes | None
    ) -> None:
        """Send what the session queued, then act on its events (``datagram``: their source)."""
        slot = self._slot
        outgoing = self._session.take_datagrams()
        if outgoing:
            await self._transmit(outgoing)
        for event in events:
            if isinstance(event, ApplicationData):
                slot.last_activity = now
                idle = self._idle_timeout
                # Move the backstop only when it has fallen behind, so that a busy peer
                # touches Trio's deadline heap at most once per grace period, not per datagram.
                if idle is not None and slot.idle_watch.deadline < now + idle + IDLE_WATCH_GRACE:
                    slot.idle_watch.deadline = now + idle + 2 * IDLE_WATCH_GRACE
                self._stats.messages_received += 1
                if len(self._ready) >= self._ready_limit:
                    # A handler that sends but does not read: bounded like the inbox.
                    self._stats.queue_overflows += 1
                    self._stats.drops[DropReason.QUEUE_FULL] += 1
                    continue
                self._ready.append(event.data)
                if self._hub.wants("message", EventCode.DATAGRAM):
                    self._hub.emit(
                        DatagramReceived(
                            EventCode.DATAGRAM,
                            f"A message from {self.peer_info}",
                            self.peer,
                            ciphertext=event.record if datagram is None else datagram,
                            plaintext=event.data,
                        )
                    )
            elif isinstance(event, RemoteClosed):
                self._stats.remote_closed += 1
                self._closed_reason = "the peer sent close_notify"
                if self._hub.wants("info", EventCode.REMOTE_CLOSED):
                    self._hub.emit(
                        InfoEvent(
                            EventCode.REMOTE_CLOSED,
                            f"{self.peer_info}: The DTLS connection has been shutdown",
                            self.peer,
                        )
                    )
            elif isinstance(event, ConnectionFailed):
                self._closed_reason = event.reason
                self._hub.emit(
                    ErrorEvent(
                        EventCode.CONNECTION_FAILED, f"{self.peer_info}: {event.reason}", self.peer
                    )
                )
            elif isinstance(event, RecordsDropped):
                self._record_drop(event.reason, now)

    def _record_drop(self, reason: DropReason, now: float) -> None:
        """Count a dropped datagram and say so (rate-limited).  Never more than that.

        RFC 6347 §4.1.2.7: invalid records are silently discarded and the association goes
        on.  Whoever knows the peer's address and port can send records "from" it, so a
        forgery must never cost the real peer anything: its next authentic record is accepted
        whatever came before.  ``max_auth_failures`` per ``auth_failure_window`` only bounds
        the log: past it the peer gets one ``forged_records`` warning, and its further
        failures in that window are counted without a warning each.
        """
        self._stats.drops[reason] += 1
        if reason == DropReason.AUTHENTICATION and self._forgeries_reported(now):
            return
        self._hub.emit(drop_warning(reason, self.peer), rate_limited=True)

    def _forgeries_reported(self, now: float) -> bool:
        """Note one authentication failure; True if it needs no warning of its own."""
        slot = self._slot
        if now < slot.forgery_quiet_until:
            return True
        failures = slot.auth_failures
        if failures is None:
            failures = slot.auth_failures = deque(maxlen=self._max_auth_failures)
        failures.append(now)
        if (
            len(failures) < self._max_auth_failures
            or failures[0] <= now - self._auth_failure_window
        ):
            return False
        failures.clear()
        slot.forgery_quiet_until = now + self._auth_failure_window
        self._stats.forgery_alarms += 1
        self._hub.emit(
            WarningEvent(
                EventCode.FORGED_RECORDS,
                f"{self.peer_info}: {self._max_auth_failures} records failed authentication "
                f"within {self._auth_failure_window:g} s: someone may be sending forged records "
                "from this address.  The association is kept and every authentic record "
                f"accepted; further failures are counted, not logged, for "
                f"{self._auth_failure_window:g} s",
                self.peer,
            ),
            rate_limited=True,
        )
        return True
