"""Prometheus metrics: the health report (``statistics()``) in the form monitoring systems read.

The server's counters live in one place, :meth:`DTLSServer.statistics`; this module only reads
them.  On every scrape, :class:`StatisticsCollector` asks its *source* for the current
snapshots — one per server, or one per worker process of a ``--workers`` group — adds them up,
and hands Prometheus the totals.  So a group of workers looks like one server to whoever
scrapes it, and nothing is counted twice or kept in a second set of counters that could drift.

:func:`serve_metrics` answers ``GET /metrics`` over HTTP from a Trio task (no thread, nothing
that outlives its nursery).  Names follow Prometheus conventions: a ``dtls_`` prefix, base
units (seconds, bytes), ``_total`` on counters; the full list is in ``docs/deployment.md``
(Metrics) and in :data:`METRICS`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._codes import DropReason
from ._stats import HANDSHAKE_SECONDS_BUCKETS, StatisticsSnapshot

__all__ = ["METRICS", "StatisticsCollector", "metrics_registry", "serve_metrics"]

#: Where the snapshots come from: a callable returning one per server (or worker) now.
SnapshotSource = Callable[[], Sequence[StatisticsSnapshot]]

#: Plain counters: metric name (without ``_total``), the snapshot field, the help text.
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("dtls_datagrams_received", "datagrams_in", "UDP datagrams read from the socket."),
    ("dtls_datagrams_sent", "datagrams_out", "UDP datagrams sent."),
    ("dtls_received_bytes", "bytes_in", "Bytes of UDP payload read."),
    ("dtls_sent_bytes", "bytes_out", "Bytes of UDP payload sent."),
    ("dtls_send_failures", "send_failures", "Datagrams the kernel refused to send."),
    ("dtls_handshakes_started", "handshakes_started", "Handshakes started (cookie verified)."),
    ("dtls_handshakes_succeeded", "handshakes_completed", "Handshakes that completed."),
    ("dtls_handshakes_resumed", "handshakes_resumed", "Completed handshakes that resumed."),
    ("dtls_handshakes_refused", "handshakes_refused", "Verified hellos refused at a limit."),
    ("dtls_cookies_sent", "cookies_sent", "HelloVerifyRequests sent."),
    ("dtls_cookies_verified", "cookies_verified", "ClientHellos with a valid cookie."),
    ("dtls_cookies_rejected", "cookies_rejected", "ClientHellos with a bad or stale cookie."),
    ("dtls_evictions", "evictions", "Idle peers evicted to make room."),
    ("dtls_replacements", "replacements", "Associations replaced by a restarted client."),
    ("dtls_idle_closed", "idle_closed", "Peers closed by the idle timeout."),
    ("dtls_remote_closed", "remote_closed", "Peers that sent close_notify."),
    ("dtls_queue_overflows", "queue_overflows", "Datagrams dropped at a full peer inbox."),
    ("dtls_retransmissions", "retransmissions", "Handshake flights resent."),
    (
        "dtls_application_records_received",
        "messages_received",
        "Application records decrypted and handed to the handler.",
    ),
    ("dtls_application_records_sent", "messages_sent", "Application records sent."),
    ("dtls_openssl_released", "openssl_released", "Associations moved to our record layer."),
    ("dtls_events_dropped", "events_dropped", "Events a slow subscriber missed."),
    (
        "dtls_connection_id_associations",
        "connection_id_associations",
        "Handshakes that negotiated an RFC 9146 connection ID.",
    ),
    ("dtls_peer_moves", "peer_moves", "Associations moved to a new address by a CID record."),
    (
        "dtls_peer_moves_refused",
        "peer_moves_refused",
        "CID moves refused: another association holds the new address.",
    ),
    (
        "dtls_forgery_alarms",
        "forgery_alarms",
        "Times one address sent max_auth_failures forged records within the window.",
    ),
)

#: Every metric name this module exposes (counters with their ``_total``), for the docs and
#: the tests.
METRICS: tuple[str, ...] = (
    *(f"{name}_total" for name, _, _ in _COUNTERS),
    "dtls_handshakes_failed_total",
    "dtls_dropped_datagrams_total",
    "dtls_peer_failures_total",
    "dtls_mac_failures_total",
    "dtls_kernel_dropped_datagrams_total",
    "dtls_worker_restarts_total",
    "dtls_associations",
    "dtls_handshakes_in_progress",
    "dtls_workers",
    "dtls_handshake_duration_seconds",
)


class StatisticsCollector(Collector):
    """Sums the snapshots of ``source`` into Prometheus metric families on every scrape.

    For a ``--workers`` group: ``retired`` gives the last snapshots of worker processes that
    died (their replacements count from zero, so the counters add both and never go backwards;
    the gauges, and the kernel's drop count of each socket, come from the live workers only),
    and ``worker_restarts`` says how many workers were restarted.
    """

    def __init__(
        self,
        source: SnapshotSource,
        *,
        retired: SnapshotSource | None = None,
        worker_restarts: Callable[[], int] | None = None,
    ) -> None:
        self._source = source
        self._retired = retired
        self._worker_restarts = worker_restarts

    def collect(self) -> Iterator[Metric]:
        live = list(self._source())
        snapshots = live + (list(self._retired()) if self._retired is not None else [])
        for name, attribute, documentation in _COUNTERS:
            yield CounterMetricFamily(
                name,
                documentation,
                value=sum(getattr(snapshot, attribute) for snapshot in snapshots),
            )
        failed: Counter[str] = Counter()
        drops: Counter[str] = Counter()
        faults: Counter[str] = Counter()
        for snapshot in snapshots:
            failed.update(snapshot.handshakes_failed)
            drops.update(snapshot.drops)
            faults.update(snapshot.peer_failures)
        yield _labelled_counter(
            "dtls_handshakes_failed", "Handshakes that failed, by reason.", failed
        )
        yield _labelled_counter(
            "dtls_dropped_datagrams", "Datagrams dropped without an answer, by reason.", drops
        )
        yield _labelled_counter(
            "dtls_peer_failures",
            "Peers ended by an unexpected exception (a bug), by where it was raised.",
            faults,
            label="where",
        )
        yield CounterMetricFamily(
            "dtls_mac_failures",
            "Records from known peers that failed authentication (forged or corrupted).",
            value=drops.get(DropReason.AUTHENTICATION, 0),
        )
        yield CounterMetricFamily(
            "dtls_kernel_dropped_datagrams",
            "Datagrams the kernel dropped at a full socket receive buffer.",
            # Per socket and cumulative: a restarted worker reads the same socket's count.
            value=sum(snapshot.kernel_drops or 0 for snapshot in live),
        )
        restarts = self._worker_restarts() if self._worker_restarts is not None else 0
        yield CounterMetricFamily(
            "dtls_worker_restarts", "Worker processes restarted after dying.", value=restarts
        )
        peers = sum(snapshot.peers for snapshot in live)
        handshaking = sum(snapshot.handshaking for snapshot in live)
        yield GaugeMetricFamily(
            "dtls_associations", "Established associations now.", value=peers - handshaking
        )
        yield GaugeMetricFamily(
            "dtls_handshakes_in_progress", "Handshakes in flight now.", value=handshaking
        )
        yield GaugeMetricFamily("dtls_workers", "Server processes serving now.", value=len(live))
        yield _duration_histogram(snapshots)


def _labelled_counter(
    name: str, documentation: str, counts: Counter[str], *, label: str = "reason"
) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value in sorted(counts):
        family.add_metric([value], counts[value])
    return family


def _duration_histogram(snapshots: Sequence[StatisticsSnapshot]) -> Metric:
    per_bucket = [0] * (len(HANDSHAKE_SECONDS_BUCKETS) + 1)
    for snapshot in snapshots:
        for index, count in enumerate(snapshot.handshake_seconds_buckets):
            per_bucket[index] += count
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*HANDSHAKE_SECONDS_BUCKETS, math.inf), per_bucket, strict=True):
        running += count
        cumulative.append(("+Inf" if bound == math.inf else repr(bound), running))
    family = HistogramMetricFamily(
        "dtls_handshake_duration_seconds",
        "Completed handshakes, verified ClientHello to Finished.",
        buckets=cumulative,
        sum_value=sum(snapshot.handshake_seconds_sum for snapshot in snapshots),
    )
    return family


def metrics_registry(
    source: SnapshotSource,
    *,
    retired: SnapshotSource | None = None,
    worker_restarts: Callable[[], int] | None = None,
) -> CollectorRegistry:
    """A registry holding only our collector (no process or platform metrics of the exporter).

    One server: ``metrics_registry(lambda: [server.statistics()])``.  A worker group:
    ``metrics_registry(supervisor.worker_statistics, retired=supervisor.retired_statistics,
    worker_restarts=lambda: supervisor.restarts)``.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatisticsCollector(source, retired=retired, worker_restarts=worker_restarts))
    return registry


#: An HTTP request head larger than this, or slower than the timeout, is answered 400/dropped:
#: the scrape endpoint must not be a way to hold the server's memory or tasks.
_MAX_REQUEST_HEAD = 8_192
_REQUEST_TIMEOUT = 5.0


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` (Prometheus' text format) on ``host``:``port`` until cancelled.

    ``await nursery.start(serve_metrics, registry, host, port)`` returns the bound
    ``(host, port)`` (the real port when 0 was asked).  One connection, one answer, then close:
    what Prometheus does, and nothing for a slow client to hold open.
    """

    async def answer(stream: trio.SocketStream) -> None:
        # A scraper that misbehaves or vanishes ends its own connection, never the server.
        try:
            async with stream:
                with trio.move_on_after(_REQUEST_TIMEOUT):
                    await _answer_one(stream, registry)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    task_status.started((str(sockname[0]), int(sockname[1])))
    await trio.serve_listeners(answer, listeners)


async def _answer_one(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        if len(head) > _MAX_REQUEST_HEAD:
            await _respond(stream, 431, b"request head too large\n")
            return
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        head += chunk
    request_line = head.split(b"\n", 1)[0].strip().split()
    if len(request_line) < 2:
        await _respond(stream, 400, b"bad request\n")
    elif request_line[0] != b"GET":
        await _respond(stream, 405, b"only GET\n")
    elif request_line[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
        await _respond(stream, 404, b"try /metrics\n")
    else:
        await _respond(stream, 200, generate_latest(registry), CONTENT_TYPE_LATEST)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


async def _respond(
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    await stream.send_all(head + body)
    # Half-close, then read away (bounded) what the client still sends: closing a socket with
    # unread input makes the kernel send a reset, which can destroy the answer in flight.
    await stream.send_eof()
    with trio.move_on_after(1.0):
        drained = 0
        while drained < 65_536 and (chunk := await stream.receive_some(16_384)):
            drained += len(chunk)
