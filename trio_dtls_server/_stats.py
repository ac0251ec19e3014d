"""The health report: counters the server keeps, and the snapshot it hands out."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HANDSHAKE_SECONDS_BUCKETS", "ServerStatistics", "StatisticsSnapshot"]

#: Upper bounds, in seconds, of the handshake-duration histogram's buckets (one more bucket,
#: above the last bound, counts the rest).  A loopback handshake takes about 2 ms; a device
#: behind a cellular link 100 ms to seconds; retransmissions add 1 s, 2 s, 4 s, ...
HANDSHAKE_SECONDS_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(frozen=True, slots=True)
class StatisticsSnapshot:
    """A consistent copy of the counters at one moment (see :class:`ServerStatistics`)."""

    datagrams_in: int
    datagrams_out: int
    bytes_in: int
    bytes_out: int
    send_failures: int
    handshakes_started: int
    handshakes_completed: int
    #: Of the completed handshakes, those that resumed an earlier session (abbreviated).
    handshakes_resumed: int
    #: Of the completed handshakes, those whose OpenSSL connection was then freed (an AEAD
    #: suite: our own record layer protects the records; see ``release_openssl``).
    openssl_released: int
    handshakes_failed: dict[str, int]
    handshakes_refused: int
    #: Peers ended by an exception where none was expected, by where it was raised:
    #: ``"handshake"`` (also counted in ``handshakes_failed["internal error"]``), ``"handler"``
    #: (the application's handler), ``"connection"`` (after the handshake, outside the
    #: handler).  Each also gave an error event with the exception; the server went on.
    peer_failures: dict[str, int]
    cookies_sent: int
    cookies_verified: int
    cookies_rejected: int
    drops: dict[str, int]
    peers: int
    handshaking: int
    peak_peers: int
    evictions: int
    #: Always 0: kept so that readers of older snapshots (and ``as_dict`` consumers) do not
    #: break.  Peers are no longer throttled: forged records from a peer's address cost the
    #: real peer nothing (see ``forgery_alarms``).
    throttles: int
    replacements: int
    idle_closed: int
    remote_closed: int
    queue_overflows: int
    messages_received: int
    messages_sent: int
    events_dropped: int
    #: Datagrams the kernel dropped for our socket before we could read them (a full receive
    #: buffer: see ``ServerConfig.receive_buffer``), counted since the socket was opened; None
    #: where the platform does not tell (it is read from Linux's ``/proc/net/udp``).
    kernel_drops: int | None = None
    #: Handshake flights the server resent because the peer's answer did not come in time.
    retransmissions: int = 0
    #: Completed handshakes by duration (verified ClientHello to Finished): one count per
    #: bucket of :data:`HANDSHAKE_SECONDS_BUCKETS`, then one for longer ones (not cumulative).
    handshake_seconds_buckets: tuple[int, ...] = (0,) * (len(HANDSHAKE_SECONDS_BUCKETS) + 1)
    #: The sum of those durations, in seconds.
    handshake_seconds_sum: float = 0.0
    #: Times a peer's address sent ``max_auth_failures`` records failing authentication within
    #: ``auth_failure_window`` (each time a ``forged_records`` warning).  The peer is still
    #: served; the drops themselves are in ``drops`` by reason.
    forgery_alarms: int = 0
    #: Completed handshakes that negotiated an RFC 9146 connection ID (the server issued one).
    connection_id_associations: int = 0
    #: Times an association moved to a new address on an authentic, newest CID record
    #: (each also a ``peer_moved`` event).
    peer_moves: int = 0
    #: Moves not made because another live association holds the new address (the record was
    #: still accepted; replies stay at the old address).
    peer_moves_refused: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (the histogram's buckets as a list)."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields["handshake_seconds_buckets"] = list(self.handshake_seconds_buckets)
        return fields


@dataclass(slots=True)
class ServerStatistics:
    """Live counters; only the server writes them.  Read them with :meth:`snapshot`."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    send_failures: int = 0
    handshakes_started: int = 0
    handshakes_completed: int = 0
    handshakes_resumed: int = 0
    openssl_released: int = 0
    handshakes_failed: Counter[str] = field(default_factory=Counter)
    handshakes_refused: int = 0
    peer_failures: Counter[str] = field(default_factory=Counter)
    cookies_sent: int = 0
    cookies_verified: int = 0
    cookies_rejected: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    peak_peers: int = 0
    evictions: int = 0
    throttles: int = 0
    forgery_alarms: int = 0
    replacements: int = 0
    idle_closed: int = 0
    remote_closed: int = 0
    queue_overflows: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    retransmissions: int = 0
    handshake_seconds_buckets: list[int] = field(
        default_factory=lambda: [0] * (len(HANDSHAKE_SECONDS_BUCKETS) + 1)
    )
    handshake_seconds_sum: float = 0.0
    connection_id_associations: int = 0
    peer_moves: int = 0
    peer_moves_refused: int = 0

    def record_handshake_duration(self, seconds: float) -> None:
        """Count one completed handshake in the duration histogram."""
        self.handshake_seconds_buckets[bisect.bisect_left(HANDSHAKE_SECONDS_BUCKETS, seconds)] += 1
        self.handshake_seconds_sum += seconds

    def snapshot(
        self,
        *,
        peers: int,
        handshaking: int,
        events_dropped: int,
        kernel_drops: int | None = None,
    ) -> StatisticsSnapshot:
        return StatisticsSnapshot(
            datagrams_in=self.datagrams_in,
            datagrams_out=self.datagrams_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            send_failures=self.send_failures,
            handshakes_started=self.handshakes_started,
            handshakes_completed=self.handshakes_completed,
            handshakes_resumed=self.handshakes_resumed,
            openssl_released=self.openssl_released,
            handshakes_failed=dict(self.handshakes_failed),
            handshakes_refused=self.handshakes_refused,
            peer_failures=dict(self.peer_failures),
            cookies_sent=self.cookies_sent,
            cookies_verified=self.cookies_verified,
            cookies_rejected=self.cookies_rejected,
            drops=dict(self.drops),
            peers=peers,
            handshaking=handshaking,
            peak_peers=self.peak_peers,
            evictions=self.evictions,
            throttles=self.throttles,
            replacements=self.replacements,
            idle_closed=self.idle_closed,
            remote_closed=self.remote_closed,
            queue_overflows=self.queue_overflows,
            messages_received=self.messages_received,
            messages_sent=self.messages_sent,
            events_dropped=events_dropped,
            kernel_drops=kernel_drops,
            retransmissions=self.retransmissions,
            handshake_seconds_buckets=tuple(self.handshake_seconds_buckets),
            handshake_seconds_sum=self.handshake_seconds_sum,
            forgery_alarms=self.forgery_alarms,
            connection_id_associations=self.connection_id_associations,
            peer_moves=self.peer_moves,
            peer_moves_refused=self.peer_moves_refused,
        )
