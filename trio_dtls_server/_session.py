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
goes out.  But OpenSSL drops a byte-for-byte resent flight as a replay, so when the peer's
retransmitted Finished made OpenSSL send nothing we resend our saved final flight byte for byte
(:meth:`~DTLSSession._resend_final_flight`).  We never re-pack records ourselves; the one
renumbering is of a server's plaintext epoch-0 records, so that they follow the number our
stateless HelloVerifyRequest used (:meth:`~DTLSSession._renumbered`).

During the handshake, the one record we write ourselves is an alert: OpenSSL silently drops a
client Finished that fails authentication (a wrong PSK), so the client would only time out; we
answer it with a plaintext fatal ``bad_record_mac`` alert
(:meth:`~DTLSSession._reject_bad_finished`).

After the handshake, a session that negotiated an AEAD suite lets go of its OpenSSL connection
(about 64 KiB) and protects records itself with :class:`~trio_dtls_server._records.RecordProtection`
(a few KiB, and a quarter of the CPU per record).  It does so only once the keys it derived have
opened the Finished records both sides really sent; otherwise, and for CBC suites or with
``release_openssl=False``, OpenSSL goes on doing the work.  See ``_records.py``.

A CBC session with encrypt-then-MAC checks each record's MAC itself before OpenSSL sees it,
because OpenSSL's DTLS record layer fails the association on a bad encrypt-then-MAC tag: one
spoofed datagram would end it.  See ``_etm.py``.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from OpenSSL import SSL

from ._certificates import peer_certificate
from ._etm import EtmGuard, etm_guard_for, etm_in_server_hello, mac_hash, read_guard
from ._openssl import (
    alert_name,
    drain_write_bio,
    expect_server_name,
    openssl_error_reason,
    session_max_fragment_length,
    session_psk_identity,
    session_reused,
)
from ._records import RecordProtection, ReplayWindow, record_protection_for
from ._wire import (
    CONTENT_ALERT,
    CONTENT_APPLICATION_DATA,
    CONTENT_HANDSHAKE,
    DTLS_1_2,
    MalformedDatagram,
    Record,
    pack_datagrams,
    parse_alert,
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
    """The handshake finished; ``resumed``: it was an abbreviated one (session resumption)."""

    cipher: str
    protocol: str
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake is over and failed; any alert OpenSSL wrote is already queued to send.

    ``alert_sent`` names the fatal alert going to the peer (``unknown_psk_identity (115)``),
    ``alert_received`` the one the peer sent us, when there is one.
    """

    reason: str
    alert_sent: str | None = None
    alert_received: str | None = None


@dataclass(frozen=True, slots=True)
class Retransmitted:
    """The timer fired and the last flight went out again (``attempt`` counts from 1)."""

    attempt: int
    datagrams: int


@dataclass(frozen=True, slots=True)
class ApplicationData:
    data: bytes
    #: The record it came in, when the owner cannot know it (data that overtook the Finished,
    #: see :meth:`DTLSSession.take_early_events`); not part of equality.
    record: bytes = field(default=b"", compare=False, repr=False)


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


_WARNING = 1
_FATAL = 2
_CLOSE_NOTIFY = 0
_BAD_RECORD_MAC = 20
_NO_RENEGOTIATION = 100
#: Handshake message types (the first byte of a handshake fragment).
_SERVER_HELLO = b"\x02"
_HELLO_VERIFY_REQUEST = b"\x03"
#: A max_fragment_length extension's type (1) and length (1), as they appear in a ClientHello.
_MAX_FRAGMENT_LENGTH_EXTENSION = b"\x00\x01\x00\x01"
_FINISHED = 20
#: At most this many of the peer's protected records are kept during a handshake (its Finished,
#: and application data that overtook it), for the switch to our own record protection.
_MAX_EARLY_PROTECTED = 32


def _plaintext_fatal_alert(datagrams: list[bytes]) -> str | None:
    """The name of the first plaintext (epoch 0) fatal alert in ``datagrams``, or None."""
    for datagram in datagrams:
        try:
            records = parse_records(datagram)
        except MalformedDatagram:
            continue
        for record in records:
            if record.content_type != CONTENT_ALERT or record.epoch != 0:
                continue
            try:
                level, description = parse_alert(record.fragment)
            except MalformedDatagram:
                continue
            if level == _FATAL:
                return alert_name(description)
    return None


def _records_or_none(datagram: bytes) -> list[Record] | None:
    """The datagram's records, or None if it does not split into DTLS records."""
    try:
        return parse_records(datagram)
    except MalformedDatagram:
        return None


def _has_protected_handshake(records: list[Record]) -> bool:
    """A Finished (or a later handshake message) travels in a protected handshake record."""
    return any(r.epoch > 0 and r.content_type == CONTENT_HANDSHAKE for r in records)


def _single_record_header(datagram: bytes) -> tuple[int, int, int] | None:
    """(content type, epoch, sequence) if ``datagram`` is exactly one record, else None.

    The hot path's shortcut around :func:`parse_records`: an application datagram is almost
    always one record, and its header is all we need.
    """
    if len(datagram) < 13 or int.from_bytes(datagram[11:13], "big") != len(datagram) - 13:
        return None
    return (
        datagram[0],
        int.from_bytes(datagram[3:5], "big"),
        int.from_bytes(datagram[5:11], "big"),
    )


class _ReplayMirror:
    """Remembers which application records OpenSSL accepted, to tell replays from forgeries.

    OpenSSL silently discards both replayed records and records that fail authentication.  To
    count them separately we keep the record layer's 64-record window
    (:class:`~._records.ReplayWindow`, RFC 6347 §4.1.2.6) for the current epoch, updated only
    with records that did decrypt.  It never decides anything: OpenSSL does.
    """

    __slots__ = ("_epoch", "_window")

    def __init__(self) -> None:
        self._epoch = -1
        self._window = ReplayWindow()

    def mark(self, epoch: int, sequence: int) -> None:
        if epoch != self._epoch:
            self._epoch, self._window = epoch, ReplayWindow()
        self._window.mark(sequence)

    def seen(self, epoch: int, sequence: int) -> bool:
        return epoch == self._epoch and self._window.seen(sequence)


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
        is_server: bool,
        release_openssl: bool = True,
    ) -> None:
        self._openssl: SSL.Connection | None = connection
        self._is_server = is_server
        self._release_openssl = release_openssl
        #: Our own record protection once OpenSSL's connection is released (see ``_records``).
        self._records: RecordProtection | None = None
        #: The MAC check in front of OpenSSL for a CBC suite with encrypt-then-MAC (``_etm``).
        self._etm: EtmGuard | None = None
        # The same during the handshake: whether the ServerHello agreed to encrypt-then-MAC
        # (None: not seen, or not readable), and the check once OpenSSL holds the keys.
        self._etm_in_hello: bool | None = None
        self._handshake_etm: EtmGuard | None = None
        # The protected records each side sent during the handshake, for _release_to_records.
        self._peer_protected: list[Record] = []
        self._own_protected: list[Record] = []
        self._mtu = mtu
        self._policy = policy
        self._psk_lookup = psk_lookup
        self._psk_credentials = psk_credentials
        self._outgoing: list[bytes] = []
        self._last_flight: list[bytes] = []
        self._retransmissions = 0
        # Our final handshake flight (the server's CCS + Finished), kept until the peer proves
        # it arrived; see _resend_final_flight.
        self._final_flight: list[bytes] = []
        self._final_flight_resends = 0
        self._renegotiation_refusals = 0
        self._callback_events: list[SessionEvent] = []
        self._replay = _ReplayMirror()
        self.state = SessionState.HANDSHAKING
        #: When :meth:`handle_timer` wants to be called next (same clock as ``now``), or None.
        self.timer_deadline: float | None = None
        #: The PSK identity the client used (server side, once the PSK callback ran, or from
        #: the session once a resumed handshake finished).
        self.psk_identity: bytes | None = None
        #: Keys an asynchronous PSK store answered before OpenSSL asked (server side): the owner
        #: fills it, the PSK callback reads it.  A ``None`` value means "no key".
        self.prefetched_keys: dict[bytes, bytes | None] = {}
        #: Why the prefetched key is missing (lookup timed out or raised), for the reason text.
        self.psk_lookup_failure: str | None = None
        #: True once a handshake finished by resuming an earlier session.
        self.resumed = False
        #: The fatal alert we sent / received when the handshake failed (``name (number)``).
        self.alert_sent: str | None = None
        self.alert_received: str | None = None
        # What our own alert needs if we must write one (see _reject_bad_finished): the next
        # record sequence number of epoch 0, and whether we already sent protected records.
        self._next_plaintext_sequence = 0
        self._sent_protected = False
        self._last_received = b""
        #: Why the handshake or the connection failed, once it did.
        self.failure_reason: str | None = None
        #: What the first handshake step (inside :meth:`server` / :meth:`client`) caused.
        self.startup_events: list[SessionEvent] = []
        #: Facts about the finished handshake, kept because the OpenSSL connection may be gone:
        #: the suite (``PSK-AES128-GCM-SHA256``), the protocol (``DTLSv1.2``), the peer's verified
        #: certificate, and (client side) the session to resume later.
        self.cipher = "unknown"
        self.protocol = "unknown"
        self.peer_certificate: x509.Certificate | None = None
        self.ssl_session: SSL.Session | None = None
        #: The most plaintext one of our records may carry: 2^14, or less if the peer asked
        #: for a smaller max_fragment_length (RFC 6066 §4: constrained devices do).
        self.max_plaintext = MAX_PLAINTEXT
        # Whether the peer's ClientHello may carry max_fragment_length (server side; our own
        # client never asks for it).  Reading the session's DER costs 4 µs a handshake, so
        # only then: the extension (type 1, length 1) cannot be there without these bytes.
        self._peer_may_limit_fragments = False
        # Added to OpenSSL's epoch-0 record numbers (server side; see _renumbered).
        self._epoch0_offset = 0
        # Client side: whether a ServerHello came (see receive_datagram).
        self._heard_server_hello = False
        #: Application data the peer sent before its Finished was processed (it overtook the
        #: handshake), and a close_notify or fatal alert that came with it; the owner takes
        #: them with :meth:`take_early_events` once established.
        self._early_events: list[SessionEvent] = []
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
        psk_lookup: Callable[[bytes], bytes | None] | None,
        release_openssl: bool = True,
    ) -> DTLSSession:
        """A server session started from a ClientHello whose cookie the caller already verified.

        ``psk_lookup`` answers the PSK callback; ``None`` means keys come only from
        :attr:`prefetched_keys` (an asynchronous store) or that there is no PSK at all.

        ``context`` must accept every cookie (``set_cookie_verify_callback`` returning True):
        the real, stateless check happened before any OpenSSL object existed.
        ``DTLSv1_listen`` then sets up the handshake and record sequence numbers exactly as
        OpenSSL expects for a ClientHello that follows a HelloVerifyRequest.
        """
        session = cls(
            SSL.Connection(context, None),
            mtu=mtu,
            policy=policy,
            psk_lookup=psk_lookup,
            is_server=True,
            release_openssl=release_openssl,
        )
        session._peer_may_limit_fragments = _MAX_FRAGMENT_LENGTH_EXTENSION in verified_client_hello
        hello_number = int.from_bytes(verified_client_hello[5:11], "big")
        if 1 < hello_number < 2**40:  # OpenSSL starts at 1; leave room below 2^48
            session._epoch0_offset = hello_number - 1
        session._connection.set_accept_state()
        session._connection.bio_write(verified_client_hello)
        try:
            session._connection.DTLSv1_listen()
        except SSL.Error as error:
            reason = f"ClientHello refused by OpenSSL: {openssl_error_reason(error)}"
            session.startup_events = session._fail(reason, now)
            return session
        session.startup_events = session._step_handshake(now)
        # Our own ServerHello, in the first flight: trusted bytes.
        session._etm_in_hello = etm_in_server_hello(session._outgoing)
        return session

    @classmethod
    def client(
        cls,
        context: SSL.Context,
        *,
        now: float,
        mtu: int,
        policy: RetransmitPolicy,
        identity: bytes | None,
        key: bytes | None,
        session: SSL.Session | None = None,
        server_hostname: str | None = None,
        release_openssl: bool = True,
    ) -> DTLSSession:
        """A client session; its first ClientHello is ready in :meth:`take_datagrams`.

        ``identity`` and ``key`` may be None for a certificate-only client.  ``session`` (from an
        earlier connection's ``connection.get_session()``) asks the server to resume it.
        ``server_hostname`` is the name (or IP address) the server's certificate must carry,
        when the context verifies certificates; a DNS name is also sent as SNI.
        """
        credentials = (identity, key) if identity is not None and key is not None else None
        client = cls(
            SSL.Connection(context, None),
            mtu=mtu,
            policy=policy,
            psk_credentials=credentials,
            is_server=False,
            release_openssl=release_openssl,
        )
        if session is not None:
            client._connection.set_session(session)
        if server_hostname is not None:
            expect_server_name(client._connection, server_hostname)
        client._connection.set_connect_state()
        client.startup_events = client._step_handshake(now)
        return client

    # -- PSK callbacks (called by OpenSSL from inside do_handshake) -----------------------------

    def psk_for_identity(self, identity: bytes) -> bytes | None:
        if identity in self.prefetched_keys:
            key = self.prefetched_keys[identity]
        elif self._psk_lookup is not None:
            key = self._psk_lookup(identity)
        else:
            key = None
            if self.psk_lookup_failure is None:
                self.psk_lookup_failure = (
                    "no key was looked up for it (its ClientKeyExchange was not recognised)"
                )
        self.psk_identity = identity
        self._callback_events.append(PskIdentity(identity, key is not None))
        return key

    def psk_identity_and_key(self, hint: bytes | None) -> tuple[bytes, bytes] | None:
        return self._psk_credentials

    # -- what the owner calls -----------------------------------------------------------------

    @property
    def _connection(self) -> SSL.Connection:
        if self._openssl is None:
            raise RuntimeError("this session released its OpenSSL connection after the handshake")
        return self._openssl

    @property
    def connection(self) -> SSL.Connection | None:
        """The pyOpenSSL connection, or None once released after the handshake."""
        return self._openssl

    @property
    def openssl_released(self) -> bool:
        """True once records are protected by :mod:`._records` rather than by OpenSSL."""
        return self._records is not None

    @property
    def encrypt_then_mac(self) -> bool:
        """True once the session checks the peer's encrypt-then-MAC tags before OpenSSL does
        (a CBC suite with RFC 7366's extension, see :mod:`._etm`)."""
        return self._etm is not None

    def take_early_events(self) -> list[SessionEvent]:
        """What the peer's records that overtook its Finished said; the session forgets them.

        :class:`ApplicationData` (with :attr:`~ApplicationData.record` set) in the order it
        arrived, then possibly a :class:`RemoteClosed` or :class:`ConnectionFailed`: a peer
        that sent a reading and said goodbye before its Finished got through.  Taking such an
        ending applies it now: close_notify is answered (see :meth:`take_datagrams`) and the
        session closes, or the session fails.
        """
        events, self._early_events = self._early_events, []
        if self.state is SessionState.ESTABLISHED and events:
            ending = events[-1]
            if isinstance(ending, RemoteClosed):
                self._say_goodbye()
                self.state = SessionState.CLOSED
            elif isinstance(ending, ConnectionFailed):
                self.state = SessionState.FAILED
                self.failure_reason = ending.reason
        return events

    def take_early_data(self) -> list[bytes]:
        """The plaintexts of :meth:`take_early_events` (which it takes, ending included)."""
        return [e.data for e in self.take_early_events() if isinstance(e, ApplicationData)]

    def take_datagrams(self) -> list[bytes]:
        """The datagrams to send now, in order; the session forgets them."""
        out, self._outgoing = self._outgoing, []
        return out

    def receive_datagram(self, datagram: bytes, now: float) -> list[SessionEvent]:
        """Feed one datagram from the peer; return what it caused."""
        if self.state in (SessionState.CLOSED, SessionState.FAILED):
            return []
        if not datagram:
            # A zero-length BIO write raises WantReadError out of pyOpenSSL; and there is
            # nothing in it for OpenSSL anyway.
            return [RecordsDropped(DROP_MALFORMED)]
        if self.state is not SessionState.HANDSHAKING:
            if self._records is not None:
                return self._open_datagram(self._records, datagram)
            if self._etm is not None:
                # A record that fails its MAC would be fatal inside OpenSSL: never let it in.
                screened = self._etm.screen(datagram)
                if screened is None:
                    malformed = _records_or_none(datagram) is None
                    return [RecordsDropped(DROP_MALFORMED if malformed else DROP_AUTHENTICATION)]
                datagram = screened
            self._connection.bio_write(datagram)
            return self._read_application_data(datagram)
        records = _records_or_none(datagram)
        if records is None:
            # Epoch-0 records are unauthenticated: a spoofed datagram of garbage sent to a
            # client's address mid-handshake would make OpenSSL abort that handshake.  What
            # does not even split into DTLS records cannot be the peer's, so OpenSSL never
            # sees it (well-framed forgeries still can; DTLS 1.2 offers no defence there).
            return [RecordsDropped(DROP_MALFORMED)]
        if not self._is_server and not self._heard_server_hello:
            first = records[0]
            if first.epoch == 0 and first.content_type == CONTENT_HANDSHAKE:
                message_type = first.fragment[:1]
                if message_type == _SERVER_HELLO:
                    self._heard_server_hello = True
                    # The first ServerHello is the one OpenSSL acts on; later copies it drops.
                    self._etm_in_hello = etm_in_server_hello([datagram])
                elif message_type != _HELLO_VERIFY_REQUEST:
                    return [RecordsDropped(DROP_HANDSHAKE_RETRANSMISSION)]
            elif not (first.epoch == 0 and first.content_type == CONTENT_ALERT):
                # Until the server answers this hello, anything else is a late datagram meant
                # for an earlier client on this port (a device that restarted): OpenSSL would
                # buffer its messages and mark its record numbers seen, and then drop the real
                # ones as replays.
                return [RecordsDropped(DROP_HANDSHAKE_RETRANSMISSION)]
        if self._etm_in_hello and any(record.epoch > 0 for record in records):
            return self._receive_screened(records, now)
        return self._feed_handshake(datagram, records, now)

    def _feed_handshake(self, raw: bytes, records: list[Record], now: float) -> list[SessionEvent]:
        """Give OpenSSL ``raw`` (``records``, whole) and take the handshake a step further."""
        self._connection.bio_write(raw)
        self._last_received = raw
        for record in records:
            if record.epoch > 0:
                if any(
                    kept.sequence_number == record.sequence_number and kept.epoch == record.epoch
                    for kept in self._peer_protected
                ):
                    continue  # a network duplicate must not push a real record out
                if len(self._peer_protected) >= _MAX_EARLY_PROTECTED:
                    del self._peer_protected[0]  # keep the latest: the Finished comes last
                self._peer_protected.append(record)
        events = self._step_handshake(now)
        if self.state is SessionState.HANDSHAKING and self._peer_finished_rejected(records):
            events.extend(self._reject_bad_finished(now))
        return events

    def _receive_screened(self, records: list[Record], now: float) -> list[SessionEvent]:
        """A handshake datagram with protected records, under encrypt-then-MAC (see ``_etm``).

        OpenSSL would keep a forged epoch-1 record and fail the association on its MAC once it
        has the keys.  So the plaintext records go first (they may carry the key exchange and
        the ChangeCipherSpec that give OpenSSL the keys), and then only the protected records
        whose MAC we checked; before the keys exist none can be checked, and none is given.
        """
        cipher = self._connection.get_cipher_name()
        if cipher is not None and mac_hash(cipher) is None:
            # A suite whose MAC we do not know: no check is possible, OpenSSL decides alone.
            self._etm_in_hello = False
            return self._feed_handshake(b"".join(r.raw for r in records), records, now)
        events: list[SessionEvent] = []
        plain = [record for record in records if record.epoch == 0]
        if plain:
            stepped = self._feed_handshake(b"".join(r.raw for r in plain), plain, now)
            if self.state is not SessionState.HANDSHAKING:
                return stepped
            events = [event for event in stepped if not isinstance(event, HandshakeProgress)]
        guard = self._handshake_guard()
        protected = [record for record in records if record.epoch > 0]
        authentic = [r for r in protected if guard is not None and guard.authentic(r.raw)]
        forged = [record for record in protected if record not in authentic]
        if authentic:
            events += self._feed_handshake(b"".join(r.raw for r in authentic), authentic, now)
        if forged and self.state is not SessionState.FAILED:
            # What OpenSSL would have dropped in silence with an AEAD suite; a Finished among
            # them, after the peer's ChangeCipherSpec, is what a wrong key looks like.
            events.append(RecordsDropped(DROP_AUTHENTICATION))
            if self.state is SessionState.HANDSHAKING and self._peer_finished_rejected(forged):
                events.extend(self._reject_bad_finished(now))
        return events

    def _handshake_guard(self) -> EtmGuard | None:
        """The MAC check of the peer's epoch-1 records, once OpenSSL holds the keys."""
        if self._handshake_etm is None:
            connection = self._connection
            cipher = connection.get_cipher_name()
            if cipher is None:
                return None
            try:
                master_secret = connection.master_key()
            except SSL.Error:  # no key exchange yet: pyOpenSSL raises for an empty key
                return None
            self._handshake_etm = read_guard(
                cipher,
                is_server=self._is_server,
                master_secret=master_secret or b"",
                client_random=connection.client_random() or b"",
                server_random=connection.server_random() or b"",
            )
        return self._handshake_etm

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
            records = self._renumbered(split_records(fresh))
            # A retransmitted Finished takes new record numbers: our own record layer must
            # start after them (a number used twice would repeat a ChaCha20 nonce).
            self._note_sent(records)
            self._last_flight = pack_datagrams(records, self._mtu)
        self._outgoing.extend(self._last_flight)
        self._retransmissions += 1
        self.timer_deadline = now + self._policy.interval(self._retransmissions)
        return [Retransmitted(self._retransmissions, len(self._last_flight))]

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` as one record; the datagram is then ready in :meth:`take_datagrams`."""
        if self.state is not SessionState.ESTABLISHED:
            raise RuntimeError(f"cannot send on a {self.state.value} DTLS session")
        if len(data) > self.max_plaintext:
            if self.max_plaintext < MAX_PLAINTEXT:
                raise ValueError(
                    f"the peer asked for records of at most {self.max_plaintext} bytes of "
                    f"plaintext (max_fragment_length, RFC 6066), not {len(data)}"
                )
            raise ValueError(
                f"a DTLS datagram carries at most {MAX_PLAINTEXT} bytes of plaintext, "
                f"not {len(data)}"
            )
        if not data:
            raise ValueError("refusing to send an empty datagram (DTLS peers treat it as noise)")
        if self._records is not None:
            try:
                self._outgoing.append(self._records.seal(CONTENT_APPLICATION_DATA, data))
            except OverflowError as error:
                self._fail(str(error), None)
                raise
            return
        try:
            self._connection.write(data)
        except SSL.Error as error:
            self._fail(openssl_error_reason(error), None)
            raise
        self._outgoing.append(drain_write_bio(self._connection))

    def close(self) -> None:
        """Queue close_notify (if established) and end the session; idempotent."""
        if self.state is SessionState.ESTABLISHED:
            self._say_goodbye()
        if self.state in (SessionState.HANDSHAKING, SessionState.ESTABLISHED):
            self.state = SessionState.CLOSED
        self.timer_deadline = None

    # -- internals ------------------------------------------------------------------------------

    def _say_goodbye(self) -> None:
        """Queue our close_notify (a broken connection cannot say goodbye: then nothing)."""
        if self._records is not None:
            with contextlib.suppress(OverflowError):
                self._outgoing.append(
                    self._records.seal(CONTENT_ALERT, bytes((_WARNING, _CLOSE_NOTIFY)))
                )
            return
        with contextlib.suppress(SSL.Error):
            self._connection.shutdown()
        self._flush()

    def _flush(self) -> list[bytes]:
        raw = drain_write_bio(self._connection)
        if not raw:
            return []
        try:
            records = self._renumbered(split_records(raw))
            datagrams = pack_datagrams(records, self._mtu)
        except MalformedDatagram:  # cannot happen with OpenSSL's own output; send it whole
            records, datagrams = [], [raw]
        if self.state is SessionState.HANDSHAKING:
            self._note_sent(records)
        self._outgoing.extend(datagrams)
        return datagrams

    def _renumbered(self, records: list[bytes]) -> list[bytes]:
        """Our epoch-0 records, numbered after the client's verified ClientHello (server side).

        Our stateless HelloVerifyRequest carries the record number of the ClientHello it
        answers (RFC 6347 §4.2.1), and a client whose first hellos were lost has sent a few:
        say 4.  But OpenSSL 4 numbers a server's epoch-0 records from 1 whatever the verified
        hello's number, so its fourth record (a ChangeCipherSpec) would be 4 too, and the
        client would drop it as a replay of the HelloVerifyRequest.  Starting at the verified
        hello's own number, as older OpenSSL did, keeps every number new to the client.  The
        numbers of plaintext records are not authenticated and not in the handshake hash.
        """
        offset = self._epoch0_offset
        if not offset:
            return records
        return [
            record[:5]
            + (int.from_bytes(record[5:11], "big") + offset).to_bytes(6, "big")
            + record[11:]
            if record[3:5] == b"\0\0"
            else record
            for record in records
        ]

    def _note_sent(self, records: list[bytes]) -> None:
        """Track the records OpenSSL wrote for us (trusted bytes).

        Epoch 0: the next free number, for our own alert (:meth:`_reject_bad_finished`).
        Protected records (our Finished, and its retransmissions): kept for
        :meth:`_release_to_records`, which checks the keys on them and numbers our next
        record after the highest.
        """
        for record in records:
            if record[3:5] == b"\0\0":
                sequence = int.from_bytes(record[5:11], "big")
                self._next_plaintext_sequence = max(self._next_plaintext_sequence, sequence + 1)
            else:
                self._sent_protected = True
                with contextlib.suppress(MalformedDatagram):
                    self._own_protected.extend(parse_records(record))

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
        self._final_flight = self._flush()
        self.state = SessionState.ESTABLISHED
        self.timer_deadline = None
        self._last_flight = []
        self._last_received = b""
        connection = self._connection
        self.resumed = session_reused(connection)
        if self.resumed and self.psk_identity is None:
            # A resumed handshake skips the PSK callback; the session remembers the identity.
            self.psk_identity = session_psk_identity(connection)
        self.cipher = connection.get_cipher_name() or "unknown"
        self.protocol = connection.get_protocol_version_name()
        self.peer_certificate = peer_certificate(connection)
        if self._peer_may_limit_fragments:
            self.max_plaintext = session_max_fragment_length(connection) or MAX_PLAINTEXT
        if not self._is_server:
            # Only a client resumes; on a server it would pin the session past the cache.
            self.ssl_session = connection.get_session()
        events.append(HandshakeComplete(self.cipher, self.protocol, self.resumed))
        if self._release_openssl:
            self._release_to_records()
        if self._records is None:
            self._etm = etm_guard_for(
                self.cipher,
                is_server=self._is_server,
                master_secret=connection.master_key() or b"",
                client_random=connection.client_random() or b"",
                server_random=connection.server_random() or b"",
                peer_protected=self._peer_protected,
                own_protected=self._own_protected,
            )
            self._read_buffered_early_data()
        self._peer_protected = []
        self._own_protected = []
        return events

    def _read_buffered_early_data(self) -> None:
        """Take the application data OpenSSL buffered while the handshake was finishing.

        Records of the new epoch that overtake the Finished wait in OpenSSL.  The established
        path reads one plaintext per one-record datagram, so without this they would come out
        one datagram late, for the rest of the connection.
        """
        # Those records are OpenSSL's now: let the replay counters know them (see
        # _ReplayMirror), so that a late copy counts as a replay, not as a forgery.  (A forgery
        # among them would then be named a replay: the mirror only names drops.)
        for record in self._peer_protected:
            if record.content_type == CONTENT_APPLICATION_DATA:
                self._replay.mark(record.epoch, record.sequence_number)
        connection = self._connection
        for _ in range(_MAX_EARLY_PROTECTED):
            try:
                plaintext = connection.read(MAX_PLAINTEXT)
            except SSL.WantReadError:  # nothing (more) buffered
                return
            except SSL.ZeroReturnError:  # the peer's close_notify came with it
                self._early_events.append(RemoteClosed())
                return
            except SSL.Error as error:
                self._early_events.append(ConnectionFailed(openssl_error_reason(error)))
                return
            if plaintext:
                self._early_events.append(ApplicationData(plaintext))

    def _release_to_records(self) -> None:
        """Hand record protection to :mod:`._records` and let the OpenSSL connection go.

        Only if the keys derived from the session open the Finished records both sides sent
        (see :func:`~._records.record_protection_for`); otherwise OpenSSL carries on.  The
        peer's application data (and alerts) that overtook its Finished sit in OpenSSL's
        buffers, which are about to be freed, so we open them from our own copy and keep them
        for :meth:`take_early_events`.
        """
        connection = self._connection
        handshake_records = [r for r in self._peer_protected if r.content_type == CONTENT_HANDSHAKE]
        protection = record_protection_for(
            self.cipher,
            is_server=self._is_server,
            master_secret=connection.master_key() or b"",
            client_random=connection.client_random() or b"",
            server_random=connection.server_random() or b"",
            peer_protected=handshake_records,
            own_protected=self._own_protected,
        )
        if protection is None:
            return
        for record in self._peer_protected:
            content = record.content_type
            if content not in (CONTENT_APPLICATION_DATA, CONTENT_ALERT):
                continue
            if record.epoch != protection.epoch:
                continue
            plaintext = protection.open_record(
                content, record.version, record.sequence_number, record.fragment
            )
            if plaintext is None:
                continue  # a forgery, or a copy of a record already opened
            if content == CONTENT_APPLICATION_DATA:
                if plaintext:
                    self._early_events.append(ApplicationData(plaintext, record.raw))
                continue
            ending = self._alert_ending(plaintext)
            if ending is not None:
                self._early_events.append(ending)
                break  # nothing the peer sent after its goodbye counts
        self._records = protection
        # OpenSSL forgets the session of a connection freed before a shutdown, as if it had
        # failed; this one did not, so say it ended cleanly and keep it resumable.
        connection.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        connection.set_app_data(None)
        self._openssl = None

    @staticmethod
    def _alert_ending(plaintext: bytes) -> RemoteClosed | ConnectionFailed | None:
        """How an authenticated alert ends the session; None for a warning, which changes
        nothing (RFC 5246 §7.2.2)."""
        try:
            level, description = parse_alert(plaintext)
        except MalformedDatagram:
            return ConnectionFailed("the peer sent a malformed alert")
        if description == _CLOSE_NOTIFY:
            return RemoteClosed()
        if level == _WARNING:
            return None
        return ConnectionFailed(f"the peer sent the fatal alert {alert_name(description)}")

    def _handshake_failure_reason(self, error: SSL.Error) -> str:
        reason = openssl_error_reason(error)
        if self.psk_identity is not None and "psk identity not found" in reason.lower():
            name = self.psk_identity.decode("latin-1")
            if self.psk_lookup_failure is not None:
                return f"PSK lookup for '{name}' failed: {self.psk_lookup_failure} ({reason})"
            return f"unknown PSK identity '{name}' ({reason})"
        return reason

    def _fail(self, reason: str, now: float | None) -> list[SessionEvent]:
        # OpenSSL leaves the fatal alert in the write BIO: send it so the peer fails fast.
        sent = self._flush() if self._openssl is not None else []
        was_handshaking = self.state is SessionState.HANDSHAKING
        self.state = SessionState.FAILED
        self.failure_reason = reason
        self.timer_deadline = None
        if not was_handshaking:
            return [ConnectionFailed(reason)]
        self.alert_sent = self.alert_sent or _plaintext_fatal_alert(sent)
        self.alert_received = _plaintext_fatal_alert([self._last_received])
        self._last_received = b""
        return [HandshakeFailed(reason, self.alert_sent, self.alert_received)]

    def _peer_finished_rejected(self, records: list[Record]) -> bool:
        """Did OpenSSL just drop the peer's Finished because it failed authentication?

        DTLS discards records that fail authentication without a word (RFC 6347 §4.1.2.7), so
        a client with the wrong PSK would retransmit until it gives up.  The sign: OpenSSL has
        read the peer's ChangeCipherSpec (so it holds the new keys), this datagram carried a
        protected handshake record (the Finished), and the handshake still did not finish.
        """
        if b"read change cipher spec" not in self._connection.get_state_string():
            return False
        return _has_protected_handshake(records)

    def _reject_bad_finished(self, now: float) -> list[SessionEvent]:
        """Fail the handshake and tell the peer with a fatal ``bad_record_mac`` alert.

        OpenSSL has no way to send it, so this is the one record we write ourselves: a
        plaintext epoch-0 alert, which the peer still reads because we have not sent our
        ChangeCipherSpec yet (RFC 6347 §4.1.2.7 allows a fatal alert for an invalid record).
        After our ChangeCipherSpec (a resumed handshake) only an encrypted alert would be read,
        and OpenSSL cannot make one on demand, so then the handshake just fails.
        """
        if not self._sent_protected:
            header = bytes([CONTENT_ALERT]) + DTLS_1_2.to_bytes(2, "big") + b"\0\0"
            sequence = self._next_plaintext_sequence.to_bytes(6, "big")
            self._outgoing.append(header + sequence + b"\0\x02" + bytes([_FATAL, _BAD_RECORD_MAC]))
            self._next_plaintext_sequence += 1
            self.alert_sent = alert_name(_BAD_RECORD_MAC)
        return self._fail(
            "the peer's Finished failed authentication: the two sides derived different keys "
            "(a wrong PSK?)",
            now,
        )

    def _open_datagram(self, protection: RecordProtection, datagram: bytes) -> list[SessionEvent]:
        """An established datagram, once OpenSSL is released: we open its records ourselves."""
        header = _single_record_header(datagram)
        if (
            header is not None
            and header[0] == CONTENT_APPLICATION_DATA
            and header[1] == protection.epoch
        ):
            # The hot path: a datagram of one application record.
            sequence = header[2]
            if protection.replay.seen(sequence):
                return [RecordsDropped(DROP_REPLAY)]
            version = int.from_bytes(datagram[1:3], "big")
            plaintext = protection.decrypt(
                CONTENT_APPLICATION_DATA, version, sequence, datagram[13:]
            )
            if plaintext is None:
                return [RecordsDropped(DROP_AUTHENTICATION)]
            protection.replay.mark(sequence)
            self._final_flight = []  # authentic data: the peer has finished its handshake
            return [ApplicationData(plaintext)] if plaintext else []
        records = _records_or_none(datagram)
        if records is None:
            return [RecordsDropped(DROP_MALFORMED)]
        events: list[SessionEvent] = []
        drop: str | None = None
        for record in records:
            content, sequence = record.content_type, record.sequence_number
            if record.epoch != protection.epoch:
                # Epoch 0: the rest of the peer's retransmitted flight.  Any other: not ours.
                older = record.epoch < protection.epoch
                drop = drop or (DROP_HANDSHAKE_RETRANSMISSION if older else DROP_AUTHENTICATION)
                continue
            if content != CONTENT_HANDSHAKE and protection.replay.seen(sequence):
                drop = drop or DROP_REPLAY
                continue
            # A retransmitted Finished may be byte for byte the one already seen: no replay
            # check for handshake records, which change nothing but trigger a bounded resend.
            plaintext = protection.decrypt(content, record.version, sequence, record.fragment)
            if plaintext is None:
                drop = drop or DROP_AUTHENTICATION
                continue
            if content != CONTENT_HANDSHAKE:
                protection.replay.mark(sequence)
            if content == CONTENT_APPLICATION_DATA:
                self._final_flight = []
                if plaintext:
                    events.append(ApplicationData(plaintext))
            elif content == CONTENT_ALERT:
                ending = self._on_protected_alert(plaintext)
                if ending is not None:
                    events.append(ending)
                    return events
            elif content == CONTENT_HANDSHAKE:
                self._on_protected_handshake(protection, plaintext)
                drop = drop or DROP_HANDSHAKE_RETRANSMISSION
        if not events and drop is not None:
            events.append(RecordsDropped(drop))
        return events

    def _on_protected_alert(self, plaintext: bytes) -> SessionEvent | None:
        """The peer's authenticated alert: close_notify or fatal end the session."""
        ending = self._alert_ending(plaintext)
        if isinstance(ending, RemoteClosed):
            # RFC 5246 §7.2.1: answer close_notify with our own before closing.
            self._say_goodbye()
            self.state = SessionState.CLOSED
        elif isinstance(ending, ConnectionFailed):
            self._fail(ending.reason, None)
        return ending

    def _on_protected_handshake(self, protection: RecordProtection, plaintext: bytes) -> None:
        """A handshake message after the handshake: a retransmitted Finished, or renegotiation.

        A Finished means our final flight was lost: resend it (at most ``max_retransmissions``
        times).  Anything else asks for a renegotiation, which we do not do; RFC 5246 §7.2.2
        has the warning alert ``no_renegotiation`` for that answer.
        """
        if plaintext[:1] == bytes((_FINISHED,)):
            self._resend_saved_final_flight()
            return
        # Handshake records skip the replay check, so cap the answers: a replayed record
        # must not make us talk without end.
        if self._renegotiation_refusals >= self._policy.max_retransmissions:
            return
        self._renegotiation_refusals += 1
        with contextlib.suppress(OverflowError):
            self._outgoing.append(
                protection.seal(CONTENT_ALERT, bytes((_WARNING, _NO_RENEGOTIATION)))
            )

    def _read_application_data(self, datagram: bytes) -> list[SessionEvent]:
        events: list[SessionEvent] = []
        size = max(len(datagram), 1)
        single_record = _single_record_header(datagram)
        while True:
            try:
                plaintext = self._connection.read(size)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # RFC 5246 §7.2.1: answer close_notify with our own before closing.
                with contextlib.suppress(SSL.Error):
                    self._connection.shutdown()
                self._flush()
                self.state = SessionState.CLOSED
                events.append(RemoteClosed())
                return events
            except SSL.Error as error:
                events.extend(self._fail(openssl_error_reason(error), None))
                return events
            if plaintext:
                events.append(ApplicationData(plaintext))
                if single_record is not None:
                    # The datagram was one record and it is consumed: asking OpenSSL again
                    # would only raise WantReadError, and an exception per datagram is a
                    # measurable share of a round trip.
                    break
        # A retransmitted client flight makes OpenSSL re-emit our final flight: send it.
        reemitted = self._flush()
        if events:
            if single_record is not None:
                if single_record[0] == CONTENT_APPLICATION_DATA:
                    self._replay.mark(single_record[1], single_record[2])
            else:
                for record in _records_or_none(datagram) or []:
                    if record.content_type == CONTENT_APPLICATION_DATA:
                        self._replay.mark(record.epoch, record.sequence_number)
            self._final_flight = []  # authentic data: the peer has finished its handshake
        else:
            records = _records_or_none(datagram)
            reason = DROP_MALFORMED if records is None else self._classify_drop(records)
            if reason == DROP_HANDSHAKE_RETRANSMISSION and not reemitted:
                self._resend_final_flight(records or [])
            events.append(RecordsDropped(reason))
        return events

    def _resend_final_flight(self, records: list[Record]) -> None:
        """Answer the peer's retransmitted final flight with our final flight, byte for byte.

        OpenSSL re-emits our final flight only if the peer's retransmitted Finished passes its
        replay check, that is, only if the peer's OpenSSL made fresh records.  A peer that
        resends its flight byte for byte (as :meth:`handle_timer` does whenever OpenSSL's
        real-time timer is not due yet: under a mock clock, or with a policy faster than
        OpenSSL's own 1 s doubling) has its Finished dropped as a replay, and would wait
        forever for our lost final flight.  So: a datagram carrying a protected handshake
        record (the peer's Finished) that made OpenSSL send nothing gets our saved final flight,
        at most ``max_retransmissions`` times.
        """
        if _has_protected_handshake(records):
            self._resend_saved_final_flight()

    def _resend_saved_final_flight(self) -> None:
        """Queue our saved final flight again, at most ``max_retransmissions`` times."""
        if self._final_flight and self._final_flight_resends < self._policy.max_retransmissions:
            self._final_flight_resends += 1
            self._outgoing.extend(self._final_flight)

    def _classify_drop(self, records: list[Record]) -> str:
        """Why a well-framed datagram gave no plaintext (OpenSSL drops silently)."""
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
