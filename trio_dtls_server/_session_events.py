"""What a DTLS session says and is: its state, its events and the outcome of its handshake.

The values :class:`~._session.DTLSSession` hands its owner, in a module of their own so that
the pieces of a session (the handshake driver of ``_handshake.py`` and the record protectors
of ``_protection.py``) and its facade all speak the same words without importing each other.
``_session.py`` re-exports every name here: import them from there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cryptography import x509
from OpenSSL import SSL

from ._codes import DropReason, FailureKind
from ._errors import ConfigError

__all__ = [
    "MAX_PLAINTEXT",
    "ApplicationData",
    "ConnectionFailed",
    "HandshakeComplete",
    "HandshakeFailed",
    "HandshakeOutcome",
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
            raise ConfigError(
                ("initial", "maximum"), "retransmission timers need 0 < initial <= maximum"
            )
        if self.max_retransmissions < 0:
            raise ConfigError("max_retransmissions", "must be >= 0")

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
class HandshakeOutcome:
    """What a finished handshake settled, in one value: kept because the OpenSSL connection
    may be gone (records protected by :mod:`._records`).

    ``cipher``: the suite (``PSK-AES128-GCM-SHA256``); ``protocol``: ``DTLSv1.2``;
    ``resumed``: an abbreviated handshake; ``peer_certificate``: the peer's verified
    certificate, if it showed one; ``tls_session``: (client side) the TLS session to resume
    later; ``max_plaintext``: the most plaintext one of our records may carry (2^14, or less
    if the peer asked for a smaller max_fragment_length, RFC 6066 §4); ``psk_identity``: the
    identity the PSK handshake used (from the PSK callback, or from the resumed session);
    ``connection_id`` / ``peer_connection_id``: the RFC 9146 CIDs on the peer's records to us
    and on ours to it (None: not negotiated).
    """

    cipher: str
    protocol: str
    resumed: bool = False
    peer_certificate: x509.Certificate | None = None
    tls_session: SSL.Session | None = None
    max_plaintext: int = MAX_PLAINTEXT
    psk_identity: bytes | None = None
    connection_id: bytes | None = None
    peer_connection_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake is over and failed; any alert OpenSSL wrote is already queued to send.

    ``alert_sent`` names the fatal alert going to the peer (``unknown_psk_identity (115)``),
    ``alert_received`` the one the peer sent us, when there is one; ``kind`` is the
    statistics bucket (:class:`FailureKind`).
    """

    reason: str
    alert_sent: str | None = None
    alert_received: str | None = None
    kind: FailureKind = FailureKind.OTHER


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
    """A datagram gave no plaintext, and why (a :class:`~._codes.DropReason`)."""

    reason: DropReason


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
