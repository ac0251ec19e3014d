"""Every knob of the server in one frozen dataclass, with the defaults and why they are so."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._errors import ConfigError
from ._profiles import DEFAULT_PSK_SUITES
from ._session import RetransmitPolicy

__all__ = [
    "DEFAULT_CIPHERS",
    "DEFAULT_IPV4_MTU",
    "DEFAULT_IPV6_MTU",
    "DEFAULT_PORT",
    "ServerConfig",
]

#: Qt's example port (its server and client both default to it).
DEFAULT_PORT = 22334

#: UDP payload that fits an Ethernet frame: 1500 - 20 (IPv4) - 8 (UDP).
DEFAULT_IPV4_MTU = 1472
#: 1500 - 40 (IPv6) - 8 (UDP).
DEFAULT_IPV6_MTU = 1452

#: AEAD-only PSK and ECDHE-PSK suites, strongest first.  AES-CCM (16-byte tag) is included
#: because constrained devices often have nothing else.  This is the PSK part of the
#: ``default`` cipher profile (see :mod:`._profiles`, which owns the list).
DEFAULT_CIPHERS = ":".join(DEFAULT_PSK_SUITES)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits and timers.  Every field is also a ``serve`` command-line option.

    Sizes are in bytes, times in seconds.
    """

    #: Sent to clients in the ServerKeyExchange; Qt's example sends ``Qt DTLS example server``.
    identity_hint: str | None = None
    #: A cipher profile -- ``default`` (AEAD only), ``iot`` (adds RFC 7925's CCM_8 suites) or
    #: ``compat`` (adds CBC suites) -- or a free-form OpenSSL cipher string.  A profile offers
    #: PSK suites when there is a PSK store and certificate suites when there is a certificate.
    ciphers: str = "default"
    #: Largest datagram we send during handshakes; ``None`` picks 1472 (IPv4) or 1452 (IPv6).
    mtu: int | None = None
    #: Handshake retransmission: 1 s, doubling, at most 60 s, at most 6 times.
    retransmit: RetransmitPolicy = field(default_factory=RetransmitPolicy)
    #: A handshake not finished this long after the verified ClientHello fails and is released.
    handshake_timeout: float = 30.0
    #: An established peer that sends nothing authentic for this long gets close_notify and is
    #: released.  ``None`` keeps quiet peers forever (until evicted).
    idle_timeout: float | None = 1800.0
    #: Peers held at once, handshaking or established.  A handshake holds an OpenSSL
    #: connection (60-140 KB); an established AEAD peer about 20 KiB once it is released.
    max_peers: int = 20_000
    #: Handshakes in flight at once; a verified ClientHello beyond this is refused (the client
    #: retransmits and gets in once a slot frees).
    max_handshakes: int = 1_000
    #: When the peer table is full, a new verified client may evict the least recently active
    #: peer if it has been idle at least this long; ``None`` never evicts (new clients are refused).
    evict_idle_after: float | None = 60.0
    #: Datagrams queued per peer before the reader drops more for that peer.
    peer_queue_size: int = 64
    #: Larger datagrams are dropped unread (a DTLS record holds at most 16 KiB + overhead).
    max_datagram_size: int = 16_384 + 2_048 + 13
    #: The UDP socket's receive buffer, in bytes: room for a burst, such as a fleet of devices
    #: that wake on one schedule and all send at once (at about 1 KiB of kernel memory per
    #: small datagram, 8 MiB holds some 8,000).  Linux caps it at ``net.core.rmem_max`` (often
    #: 208 KiB); a clipped request is reported once (warning ``receive_buffer_clipped``), and
    #: ``statistics().kernel_drops`` counts the datagrams the kernel then threw away.
    receive_buffer: int = 8 << 20
    #: How often the cookie secret changes (the previous one stays valid for one more period).
    cookie_rotation: float = 300.0
    #: How many records failing authentication one peer's address may send within
    #: ``auth_failure_window`` seconds before the server warns (``forged_records``) that
    #: someone may be forging it; the rest of that window its failures are counted, not
    #: logged one by one.  They bound the log only: a peer is never ignored, since anyone can
    #: send records "from" its address (RFC 6347 §4.1.2.7: drop them, keep the association).
    max_auth_failures: int = 32
    auth_failure_window: float = 10.0
    #: Events buffered per subscriber of :meth:`DTLSServer.events`.
    event_buffer: int = 1_024
    #: How long an *async* PSK store may take to answer; then that handshake fails with the
    #: ``unknown_psk_identity`` alert.
    psk_lookup_timeout: float = 5.0
    #: Let returning clients resume their session (an abbreviated handshake: no key exchange,
    #: one round trip fewer), with stateless tickets or OpenSSL's session cache.
    session_resumption: bool = True
    #: A session older than this is not resumed (a full handshake happens instead).
    session_lifetime: float = 3600.0
    #: Once a handshake that negotiated an AEAD suite (GCM, CCM, CCM_8, ChaCha20-Poly1305) is
    #: over, free its OpenSSL connection (about 64 KiB) and protect records with our own small
    #: record layer (``_records.py``), after checking its keys against both Finished records.
    #: ``False`` keeps OpenSSL for every record, as CBC suites always do.
    release_openssl: bool = True
    #: RFC 9146 connection IDs: the length of the CID the server issues to a client that
    #: offers the ``connection_id`` extension with an AEAD suite; its records then find their
    #: association by CID, so a client whose address changes (a NAT rebinding) keeps it.
    #: 0 turns CIDs off (the extension is ignored, as before); at most 255.
    connection_id_length: int = 6

    def __post_init__(self) -> None:
        positive = {
            "handshake_timeout": self.handshake_timeout,
            "max_peers": self.max_peers,
            "max_handshakes": self.max_handshakes,
            "peer_queue_size": self.peer_queue_size,
            "cookie_rotation": self.cookie_rotation,
            "max_auth_failures": self.max_auth_failures,
            "auth_failure_window": self.auth_failure_window,
            "event_buffer": self.event_buffer,
            "psk_lookup_timeout": self.psk_lookup_timeout,
            "session_lifetime": self.session_lifetime,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(name, f"must be positive, not {value!r}")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ConfigError(
                "idle_timeout", f"must be positive or None, not {self.idle_timeout!r}"
            )
        if self.evict_idle_after is not None and self.evict_idle_after < 0:
            raise ConfigError("evict_idle_after", "must be >= 0 or None")
        if self.mtu is not None and not 256 <= self.mtu <= 65_507:
            raise ConfigError("mtu", f"must be between 256 and 65507, not {self.mtu}")
        if not 4_096 <= self.receive_buffer <= 2**31 - 1:
            raise ConfigError(
                "receive_buffer", f"must be between 4096 and {2**31 - 1}, not {self.receive_buffer}"
            )
        if (
            isinstance(self.connection_id_length, bool)
            or not isinstance(self.connection_id_length, int)
            or not 0 <= self.connection_id_length <= 255
        ):
            raise ConfigError(
                "connection_id_length",
                f"must be an integer from 0 (off) to 255, not {self.connection_id_length!r}",
            )
        if not 512 <= self.max_datagram_size <= 65_535:
            raise ConfigError("max_datagram_size", "must be between 512 and 65535")
