"""The sans-I/O DTLS session: one pyOpenSSL connection on memory BIOs, driven by datagrams and time.

A :class:`DTLSSession` owns no socket and reads no clock.  Its owner

* feeds it each datagram from the peer with :meth:`~DTLSSession.receive_datagram`, which returns
  the :class:`SessionEvent` objects that datagram caused;
* calls :meth:`~DTLSSession.handle_timer` when :attr:`~DTLSSession.timer_deadline` has passed
  (the handshake retransmission timer);
* sends whatever :meth:`~DTLSSession.take_datagrams` returns after every call.

Retransmission follows one rule taken from experience: **let OpenSSL produce every byte**.  When
our timer fires we ask OpenSSL to retransmit (``DTLSv1_handle_timeout``); OpenSSL keeps its own
real-time timer, so if it does not think the time has come yet (a clock skew of microseconds, or
a test running on Trio's ``MockClock``) we resend the datagrams of its last flight byte for byte.
A receiver that already saw those records drops them as duplicates; one that lost them accepts
them.  When the peer retransmits a flight after we finished (our final flight was lost), OpenSSL
answers by re-emitting that final flight, and since we drain the write BIO after every step it
goes out.  We never re-pack or re-number records ourselves.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass

from OpenSSL import SSL

from ._openssl import drain_write_bio, openssl_error_reason
from ._wire import (
    CONTENT_APPLICATION_DATA,
    MalformedDatagram,
    pack_datagrams,
    parse_records,
    split_records,
)

__all__ = [
    "MAX_PLAINTEXT",
    "ApplicationData",
    "ConnectionFailed",
    "DTLSSession",
    "HandshakeComplete",
    "HandshakeFailed",
    "HandshakeProgress",
    "PskIdentity",
    "RecordsDropped",
    "RemoteClosed",
    "Retransmitted",
    "RetransmitPolicy",
    "SessionEvent",
    "SessionState",
]

#: The most plaintext one DTLS record (and so one datagram) can carry: 2^14 bytes.
MAX_PLAINTEXT = 2**14


@dataclass(frozen=True, slots=True)
class RetransmitPolicy:
    """When to retransmit an unanswered handshake flight, and when to give up.

    The first retransmission comes ``initial`` seconds after the flight, each later one after
    twice the previous interval, never more than ``maximum`` (RFC 6347 §4.2.4.1).  After
    ``max_retransmissions`` unanswered retransmissions the handshake fails.
    """

    initial: float = 1.0
    maximum: float = 60.0
    max_retransmissions: int = 6

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("retransmission timers need 0 < initial <= maximum")
        if self.max_retransmissions < 0:
            raise ValueError("max_retransmissions must be >= 0")

    def interval(self, retransmissions_so_far: int) -> float:
        """Seconds to wait after a flight sent when ``retransmissions_so_far`` were done."""
        return min(self.initial * 2.0**retransmissions_so_far, self.maximum)


class SessionState(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class HandshakeProgress:
    """A handshake datagram was consumed and the handshake goes on (Qt: "in progress ...")."""


@dataclass(frozen=True, slots=True)
class PskIdentity:
    """The server's PSK callback ran: the client named ``identity``; ``known``: a key was found."""

    identity: bytes
    known: bool


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    cipher: str
    protocol: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake is over and failed; any alert OpenSSL wrote is already queued to send."""

    reason: str


@dataclass(frozen=True, slots=True)
class Retransmitted:
    """The timer fired and the last flight went out again (``attempt`` counts from 1)."""

    attempt: int
    datagrams: int


@dataclass(frozen=True, slots=True)
class ApplicationData:
    data: bytes


@dataclass(frozen=True, slots=True)
class RemoteClosed:
    """The peer sent close_notify."""


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """An established connection broke (a fatal alert from the peer, or a protocol error)."""

    reason: str


@dataclass(frozen=True, slots=True)
class RecordsDropped:
    """A datagram gave no plaintext. ``reason`` is one of the ``DROP_*`` strings below."""

    reason: str


DROP_AUTHENTICATION = "record failed authentication"
DROP_REPLAY = "replayed record"
DROP_HANDSHAKE_RETRANSMISSION = "late handshake retransmission"
DROP_MALFORMED = "malformed datagram"

SessionEvent = (
    HandshakeProgress
    | PskIdentity
    | HandshakeComplete
    | HandshakeFailed
    | Retransmitted
    | ApplicationData
    | RemoteClosed
    | ConnectionFailed
    | RecordsDropped
)


class _ReplayMirror:
    """Remembers which application records OpenSSL accepted, to tell replays from forgeries.

    OpenSSL silently discards both replayed records and records that fail authentication.  To
    count them separately we keep a 64-record sliding window per epoch, like RFC 6347 §4.1.2.6,
    updated only with records that did decrypt.  It never decides anything: OpenSSL does.
    """

    __slots__ = ("_epoch", "_highest", "_mask")

    def __init__(self) -> None:
        self._epoch = -1
        self._highest = -1
        self._mask = 0

    def mark(self, epoch: int, sequence: int) -> None:
        if epoch != self._epoch:
            self._epoch, self._highest, self._mask = epoch, sequence, 1
        elif sequence > self._highest:
            shift = sequence - self._highest
            self._mask = ((self._mask << shift) | 1) & 0xFFFFFFFFFFFFFFFF
            self._highest = sequence
        elif self._highest - sequence < 64:
            self._mask |= 1 << (self._highest - sequence)

    def seen(self, epoch: int, sequence: int) -> bool:
        if epoch != self._epoch or sequence > self._highest:
            return False
        offset = self._highest - sequence
        return offset >= 64 or bool(self._mask & (1 << offset))


class DTLSSession:
    """One DTLS 1.2 association, sans I/O.  Build it with :meth:`server` or :meth:`client`."""

    def __init__(
        self,
        connection: SSL.Connection,
        *,
        mtu: int,
        policy: RetransmitPolicy,
        psk_lookup: Callable[[bytes], bytes | None] | None = None,
        psk_credentials: tuple[bytes, bytes] | None = None,
    ) -> None:
        self._connection = connection
        self._mtu = mtu
        self._policy = policy
        self._psk_lookup = psk_lookup
        self._psk_credentials = psk_credentials
        self._outgoing: list[bytes] = []
        self._last_flight: list[bytes] = []
        self._retransmissions = 0
        self._callback_events: list[SessionEvent] = []
        self._replay = _ReplayMirror()
        self.state = SessionState.HANDSHAKING
        #: When :meth:`handle_timer` wants to be called next (same clock as ``now``), or None.
        self.timer_deadline: float | None = None
        #: The PSK identity the client used (server side, once the PSK callback ran).
        self.psk_identity: bytes | None = None
        #: Why the handshake or the connection failed, once it did.
        self.failure_reason: str | None = None
        #: What the first handshake step (inside :meth:`server` / :meth:`client`) caused.
        self.startup_events: list[SessionEvent] = []
        connection.set_app_data(self)
        connection.set_ciphertext_mtu(mtu)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def server(
        cls,
        context: SSL.Context,
        verified_client_hello: bytes,
        *,
        now: float,
        mtu: int,
        policy: RetransmitPolicy,
        psk_lookup: Callable[[bytes], bytes | None],
    ) -> DTLSSession:
        """A server session started from a ClientHello whose cookie the caller already verified.

        ``context`` must accept every cookie (``set_cookie_verify_callback`` returning True):
        the real, stateless check happened before any OpenSSL object existed.
        ``DTLSv1_listen`` then sets up the handshake and record sequence numbers exactly as
        OpenSSL expects for a ClientHello that follows a HelloVerifyRequest.
        """
        session = cls(SSL.Connection(context, None), mtu=mtu, policy=policy, psk_lookup=psk_lookup)
        session._connection.set_accept_state()
        session._connection.bio_write(verified_client_hello)
        try:
            session._connection.DTLSv1_listen()
        except SSL.Error as error:
            reason = f"ClientHello refused by OpenSSL: {openssl_error_reason(error)}"
            session.startup_events = session._fail(reason, now)
            return session
        session.startup_events = session._step_handshake(now)
        return session

    @classmethod
    def client(
        cls,
        context: SSL.Context,
        *,
        now: float,
        mtu: int,
        policy: RetransmitPolicy,
        identity: bytes,
        key: bytes,
    ) -> DTLSSession:
        """A client session; its first ClientHello is ready in :meth:`take_datagrams`."""
        session = cls(
            SSL.Connection(context, None), mtu=mtu, policy=policy, psk_credentials=(identity, key)
        )
        session._connection.set_connect_state()
        session.startup_events = session._step_handshake(now)
        return session

    # -- PSK callbacks (called by OpenSSL from inside do_handshake) -----------------------------

    def psk_for_identity(self, identity: bytes) -> bytes | None:
        key = self._psk_lookup(identity) if self._psk_lookup is not None else None
        self.psk_identity = identity
        self._callback_events.append(PskIdentity(identity, key is not None))
        return key

    def psk_identity_and_key(self, hint: bytes | None) -> tuple[bytes, bytes] | None:
        return self._psk_credentials

    # -- what the owner calls -----------------------------------------------------------------

    @property
    def connection(self) -> SSL.Connection:
        """The pyOpenSSL connection (for cipher, version and certificate queries)."""
        return self._connection

    def take_datagrams(self) -> list[bytes]:
        """The datagrams to send now, in order; the session forgets them."""
        out, self._outgoing = self._outgoing, []
        return out

    def receive_datagram(self, datagram: bytes, now: float) -> list[SessionEvent]:
        """Feed one datagram from the peer; return what it caused."""
        if self.state in (SessionState.CLOSED, SessionState.FAILED):
            return []
        self._connection.bio_write(datagram)
        if self.state is SessionState.HANDSHAKING:
            return self._step_handshake(now)
        return self._read_application_data(datagram)

    def handle_timer(self, now: float) -> list[SessionEvent]:
        """Retransmit the last flight if the timer is due; fail once retransmissions run out."""
        if self.timer_deadline is None or now < self.timer_deadline:
            return []
        if self._retransmissions >= self._policy.max_retransmissions:
            attempts = self._retransmissions
            return self._fail(f"no answer from the peer after {attempts} retransmissions", now)
        try:
            self._connection.DTLSv1_handle_timeout()
        except SSL.Error as error:
            return self._fail(openssl_error_reason(error), now)
        fresh = drain_write_bio(self._connection)
        if fresh:
            self._last_flight = pack_datagrams(split_records(fresh), self._mtu)
        self._outgoing.extend(self._last_flight)
        self._retransmissions += 1
        self.timer_deadline = now + self._policy.interval(self._retransmissions)
        return [Retransmitted(self._retransmissions, len(self._last_flight))]

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` as one record; the datagram is then ready in :meth:`take_datagrams`."""
        if self.state is not SessionState.ESTABLISHED:
            raise RuntimeError(f"cannot send on a {self.state.value} DTLS session")
        if len(data) > MAX_PLAINTEXT:
            raise ValueError(
                f"a DTLS datagram carries at most {MAX_PLAINTEXT} bytes of plaintext, "
                f"not {len(data)}"
            )
        if not data:
            raise ValueError("refusing to send an empty datagram (DTLS peers treat it as noise)")
        try:
            self._connection.write(data)
        except SSL.Error as error:
            self._fail(openssl_error_reason(error), None)
            raise
        self._outgoing.append(drain_write_bio(self._connection))

    def close(self) -> None:
        """Queue close_notify (if established) and end the session; idempotent."""
        if self.state is SessionState.ESTABLISHED:
            # A broken connection cannot say goodbye; there is nothing to send then.
            with contextlib.suppress(SSL.Error):
                self._connection.shutdown()
            self._flush()
        if self.state in (SessionState.HANDSHAKING, SessionState.ESTABLISHED):
            self.state = SessionState.CLOSED
        self.timer_deadline = None

    # -- internals ------------------------------------------------------------------------------

    def _flush(self) -> list[bytes]:
        raw = drain_write_bio(self._connection)
        if not raw:
            return []
        try:
            datagrams = pack_datagrams(split_records(raw), self._mtu)
        except MalformedDatagram:  # cannot happen with OpenSSL's own output; send it whole
            datagrams = [raw]
        self._outgoing.extend(datagrams)
        return datagrams

    def _take_callback_events(self) -> list[SessionEvent]:
        events, self._callback_events = self._callback_events, []
        return events

    def _step_handshake(self, now: float) -> list[SessionEvent]:
        try:
            self._connection.do_handshake()
        except SSL.WantReadError:
            events = self._take_callback_events()
            flight = self._flush()
            if flight:
                # A new flight: the peer answered, so the retransmission clock starts over.
                self._last_flight = flight
                self._retransmissions = 0
                self.timer_deadline = now + self._policy.interval(0)
            events.append(HandshakeProgress())
            return events
        except SSL.Error as error:
            events = self._take_callback_events()
            return events + self._fail(self._handshake_failure_reason(error), now)
        events = self._take_callback_events()
        self._flush()
        self.state = SessionState.ESTABLISHED
        self.timer_deadline = None
        self._last_flight = []
        cipher = self._connection.get_cipher_name() or "unknown"
        protocol = self._connection.get_protocol_version_name()
        events.append(HandshakeComplete(cipher, protocol))
        return events

    def _handshake_failure_reason(self, error: SSL.Error) -> str:
        reason = openssl_error_reason(error)
        if self.psk_identity is not None and "psk identity not found" in reason.lower():
            name = self.psk_identity.decode("latin-1")
            return f"unknown PSK identity '{name}' ({reason})"
        return reason

    def _fail(self, reason: str, now: float | None) -> list[SessionEvent]:
        # OpenSSL leaves the fatal alert in the write BIO: send it so the peer fails fast.
        self._flush()
        was_handshaking = self.state is SessionState.HANDSHAKING
        self.state = SessionState.FAILED
        self.failure_reason = reason
        self.timer_deadline = None
        return [HandshakeFailed(reason) if was_handshaking else ConnectionFailed(reason)]

    def _read_application_data(self, datagram: bytes) -> list[SessionEvent]:
        events: list[SessionEvent] = []
        size = max(len(datagram), 1)
        while True:
            try:
                plaintext = self._connection.read(size)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._flush()
                self.state = SessionState.CLOSED
                events.append(RemoteClosed())
                return events
            except SSL.Error as error:
                events.extend(self._fail(openssl_error_reason(error), None))
                return events
            if plaintext:
                events.append(ApplicationData(plaintext))
        # A retransmitted client flight makes OpenSSL re-emit our final flight: send it.
        self._flush()
        if events:
            self._mark_accepted(datagram)
        else:
            events.append(RecordsDropped(self._classify_drop(datagram)))
        return events

    def _mark_accepted(self, datagram: bytes) -> None:
        try:
            records = parse_records(datagram)
        except MalformedDatagram:
            return
        for record in records:
            if record.content_type == CONTENT_APPLICATION_DATA:
                self._replay.mark(record.epoch, record.sequence_number)

    def _classify_drop(self, datagram: bytes) -> str:
        try:
            records = parse_records(datagram)
        except MalformedDatagram:
            return DROP_MALFORMED
        protected = [r for r in records if r.epoch > 0]
        if not protected:
            return DROP_HANDSHAKE_RETRANSMISSION
        application = [r for r in protected if r.content_type == CONTENT_APPLICATION_DATA]
        if application and all(self._replay.seen(r.epoch, r.sequence_number) for r in application):
            return DROP_REPLAY
        if not application:
            # Protected handshake records (a retransmitted Finished) are not forgeries.
            return DROP_HANDSHAKE_RETRANSMISSION
        return DROP_AUTHENTICATION
