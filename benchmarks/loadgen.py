"""The load generator: lean DTLS 1.2 clients on plain sockets, one epoll loop, no Trio.

It runs in its own process (``python -m benchmarks.loadgen WORKLOAD ...``), prints one JSON line
with its measurements, and is built to cost the server under test as little CPU as possible on
the machine they share:

* one non-blocking, *connected* UDP socket per client (so every client has its own address,
  and ``send``/``recv_into`` need no address tuples), all in one level-triggered ``epoll``;
* handshakes through pyOpenSSL (the crypto dominates there), but the data path straight through
  the ``cryptography`` cffi bindings -- ``SSL_write`` + ``BIO_read`` into one preallocated buffer,
  ``recv_into`` + ``BIO_write`` + ``SSL_read`` out of another -- so a round trip costs the
  generator a few microseconds of Python instead of pyOpenSSL's per-call buffer allocations;
* one timer per client in a heap (handshake retransmission, request timeout, next ping).

It measures its own CPU share (``os.times`` over the measured window) and the server's
(``/proc/PID/stat``), so a run where the generator saturated its core says so.

Workloads (each bounded in time *and* count):

``handshake``  full handshakes, ``--concurrency`` in flight; each client sends close_notify and
               goes away once it is done.  Rate, latency (first ClientHello to Finished),
               failures, and handshakes *left hanging* after a drain period.
``roundtrip``  ``--peers`` established clients, one ``--size``-byte request in flight each,
               closed loop: rate and round-trip latency.
``memory``     warm up, ask the server for a memory report, establish ``--peers`` idle clients,
               wait until the server is quiet, ask again: RSS growth per peer.
``capacity``   ramp up to ``--peers`` clients, each pinging every ``--ping-interval`` seconds;
               a client whose two consecutive pings go unanswered, or whom the server closes,
               is *lost*.  Hold the full count for ``--hold`` seconds.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from OpenSSL import SSL

from trio_dtls_server._wire import pack_datagrams, split_records

from .common import (
    BENCH_MTU,
    MemoryReport,
    clock_ticks_per_second,
    cpu_seconds_of,
    ffi,
    lib,
    new_client_context,
    read_json_file,
)

__all__ = ["main", "percentiles"]

_BUFFER_SIZE = 65_536
_SSL_ERROR_WANT_READ: int = lib.SSL_ERROR_WANT_READ
_SSL_ERROR_ZERO_RETURN: int = lib.SSL_ERROR_ZERO_RETURN

HANDSHAKING, ESTABLISHED, DONE = 0, 1, 2


def percentiles(samples: list[float], scale: float = 1_000.0) -> dict[str, float | int]:
    """p50/p90/p99/max of ``samples`` (nearest rank), scaled (seconds to ms by default)."""
    if not samples:
        return {"samples": 0}
    ordered = sorted(samples)

    def rank(fraction: float) -> float:
        index = max(0, math.ceil(fraction * len(ordered)) - 1)
        return round(ordered[index] * scale, 3)

    return {
        "samples": len(ordered),
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": round(ordered[-1] * scale, 3),
    }


def _split_flight(flight: bytes, mtu: int) -> list[bytes]:
    """Pack a flight (records glued together by the memory BIO) into datagrams of <= ``mtu``."""
    if len(flight) <= mtu:
        return [flight]
    return pack_datagrams(split_records(flight), mtu)


class Peer:
    """One lean client: a connected UDP socket and a pyOpenSSL connection on memory BIOs."""

    __slots__ = (
        "awaiting_reply",
        "conn",
        "established_at",
        "fd",
        "last_flight",
        "missed",
        "rbio",
        "request_sent_at",
        "retransmissions",
        "sequence",
        "sock",
        "ssl",
        "started",
        "state",
        "timer_token",
        "wbio",
    )

    def __init__(self, context: SSL.Context, server: tuple[str, int], mtu: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(server)
        self.fd = self.sock.fileno()
        self.conn = SSL.Connection(context, None)
        self.conn.set_connect_state()
        self.conn.set_ciphertext_mtu(mtu)
        self.ssl: Any = self.conn._ssl
        self.rbio: Any = self.conn._into_ssl
        self.wbio: Any = self.conn._from_ssl
        self.state = HANDSHAKING
        self.started = 0.0
        self.established_at = 0.0
        self.last_flight: list[bytes] = []
        self.retransmissions = 0
        self.timer_token = -1
        self.sequence = 0
        self.request_sent_at = 0.0
        self.awaiting_reply = False
        self.missed = 0


class Engine:
    """The epoll loop, the handshake driver and the raw data path; workloads subclass it."""

    def __init__(self, server: tuple[str, int], suite: str, server_pid: int | None) -> None:
        self.server = server
        self.server_pid = server_pid
        self.context = new_client_context(suite)
        self.mtu = BENCH_MTU
        self.epoll = select.epoll()
        self.peers: dict[int, Peer] = {}
        self.timers: list[tuple[float, int, Peer]] = []
        self.tokens = itertools.count()
        self.receive_buffer = bytearray(_BUFFER_SIZE)
        self.receive_cdata: Any = ffi.from_buffer(self.receive_buffer)
        self.out_cdata: Any = ffi.new("char[]", _BUFFER_SIZE)
        self.out_view = memoryview(ffi.buffer(self.out_cdata))
        self.plain_cdata: Any = ffi.new("char[]", _BUFFER_SIZE)
        self.plain_view = memoryview(ffi.buffer(self.plain_cdata))
        self.handshaking = 0
        self.established = 0
        self.counters: Counter[str] = Counter()
        self.failure_reasons: Counter[str] = Counter()
        #: A handshake older than this is abandoned and counted as left hanging.
        self.give_up_after = 8.0
        self.retransmit_initial = 1.0

    # -- hooks for workloads ----------------------------------------------------------------

    def on_established(self, peer: Peer, now: float) -> None:
        """The handshake finished."""

    def on_handshake_failed(self, peer: Peer, now: float, reason: str) -> None:
        """The handshake failed or was abandoned (the peer is already closed)."""

    def on_data(self, peer: Peer, length: int, now: float) -> None:
        """``length`` bytes of plaintext are in :attr:`plain_view`."""

    def on_lost(self, peer: Peer, now: float, reason: str) -> None:
        """An established peer was closed by the server or broke (the peer is closed)."""

    def on_timer(self, peer: Peer, now: float) -> None:
        """An established peer's timer fired."""

    # -- peers ----------------------------------------------------------------------------------

    def launch(self, now: float) -> Peer:
        peer = Peer(self.context, self.server, self.mtu)
        self.peers[peer.fd] = peer
        self.epoll.register(peer.fd, select.EPOLLIN)
        self.handshaking += 1
        peer.started = now
        self._step_handshake(peer, now)
        return peer

    def close(self, peer: Peer, *, notify: bool = False) -> None:
        if peer.state == DONE:
            return
        if peer.state == HANDSHAKING:
            self.handshaking -= 1
        elif peer.state == ESTABLISHED:
            self.established -= 1
            if notify:
                lib.SSL_shutdown(peer.ssl)
                self._send_pending(peer)
        peer.state = DONE
        peer.timer_token = -1
        self.epoll.unregister(peer.fd)
        del self.peers[peer.fd]
        peer.sock.close()

    def set_timer(self, peer: Peer, deadline: float) -> None:
        token = next(self.tokens)
        peer.timer_token = token
        heapq.heappush(self.timers, (deadline, token, peer))

    # -- sending --------------------------------------------------------------------------------

    def _send(self, peer: Peer, datagram: bytes | memoryview) -> None:
        try:
            peer.sock.send(datagram)
        except BlockingIOError:
            self.counters["send buffer full (datagram dropped)"] += 1
        except OSError as error:
            self.counters[f"send error: {error.strerror}"] += 1

    def _send_pending(self, peer: Peer) -> None:
        size = lib.BIO_read(peer.wbio, self.out_cdata, _BUFFER_SIZE)
        if size > 0:
            self._send(peer, self.out_view[:size])

    def send_plaintext(self, peer: Peer, data: bytes) -> None:
        """Encrypt ``data`` as one record and send it (the raw, allocation-free path)."""
        if lib.SSL_write(peer.ssl, data, len(data)) <= 0:
            lib.ERR_clear_error()
            self.counters["SSL_write failed"] += 1
            return
        self._send_pending(peer)

    # -- the handshake --------------------------------------------------------------------------

    def _take_flight(self, peer: Peer) -> list[bytes]:
        size = lib.BIO_read(peer.wbio, self.out_cdata, _BUFFER_SIZE)
        if size <= 0:
            return []
        return _split_flight(bytes(self.out_view[:size]), self.mtu)

    def _step_handshake(self, peer: Peer, now: float) -> None:
        try:
            peer.conn.do_handshake()
        except SSL.WantReadError:
            flight = self._take_flight(peer)
            if flight:
                for datagram in flight:
                    self._send(peer, datagram)
                peer.last_flight = flight
                peer.retransmissions = 0
                self.set_timer(peer, now + self.retransmit_initial)
            return
        except SSL.Error as error:
            for datagram in self._take_flight(peer):  # the alert, if OpenSSL wrote one
                self._send(peer, datagram)
            self._fail_handshake(peer, now, f"handshake error: {_reason(error)}")
            return
        self.handshaking -= 1
        self.established += 1
        peer.state = ESTABLISHED
        peer.established_at = now
        peer.timer_token = -1
        self.on_established(peer, now)

    def _fail_handshake(self, peer: Peer, now: float, reason: str) -> None:
        self.failure_reasons[reason] += 1
        self.close(peer)
        self.on_handshake_failed(peer, now, reason)

    def _retransmit(self, peer: Peer, now: float) -> None:
        if now - peer.started >= self.give_up_after:
            self._fail_handshake(peer, now, f"no handshake within {self.give_up_after:g} s")
            return
        try:
            peer.conn.DTLSv1_handle_timeout()
        except SSL.Error as error:
            self._fail_handshake(peer, now, f"retransmission error: {_reason(error)}")
            return
        fresh = self._take_flight(peer)
        if fresh:
            peer.last_flight = fresh
        for datagram in peer.last_flight:
            self._send(peer, datagram)
        peer.retransmissions += 1
        self.counters["handshake retransmissions"] += 1
        interval = min(self.retransmit_initial * 2.0**peer.retransmissions, 60.0)
        self.set_timer(peer, now + interval)

    # -- receiving ------------------------------------------------------------------------------

    def _readable(self, peer: Peer, now: float) -> None:
        # Level-triggered epoll: one datagram per readiness event; more wakes us again.
        try:
            size = peer.sock.recv_into(self.receive_buffer)
        except BlockingIOError:
            return
        except OSError as error:
            self.counters[f"receive error: {error.strerror}"] += 1
            if peer.state == HANDSHAKING:
                self._fail_handshake(peer, now, f"socket error: {error.strerror}")
            elif peer.state == ESTABLISHED:
                self.close(peer)
                self.on_lost(peer, now, f"socket error: {error.strerror}")
            return
        lib.BIO_write(peer.rbio, self.receive_cdata, size)
        if peer.state == HANDSHAKING:
            self._step_handshake(peer, now)
            return
        ssl = peer.ssl
        while peer.state == ESTABLISHED:
            result = lib.SSL_read(ssl, self.plain_cdata, _BUFFER_SIZE)
            if result > 0:
                self.on_data(peer, result, now)
                continue
            code = lib.SSL_get_error(ssl, result)
            if code == _SSL_ERROR_WANT_READ:
                return
            lib.ERR_clear_error()
            reason = "close_notify from the server" if code == _SSL_ERROR_ZERO_RETURN else "alert"
            self.close(peer)
            self.on_lost(peer, now, reason)

    # -- the loop -------------------------------------------------------------------------------

    def run_until(self, deadline: float, *, stop: Any = None, tick: float = 0.05) -> float:
        """Serve sockets and timers until ``deadline`` or ``stop()``; returns the time then.

        ``stop`` is checked at least every ``tick`` seconds; :meth:`each_pass` runs every pass.
        """
        poll = self.epoll.poll
        peers = self.peers
        timers = self.timers
        readable = self._readable
        monotonic = time.monotonic
        while True:
            now = monotonic()
            while timers and timers[0][0] <= now:
                _, token, peer = heapq.heappop(timers)
                if token != peer.timer_token:
                    continue
                peer.timer_token = -1
                if peer.state == HANDSHAKING:
                    self._retransmit(peer, now)
                elif peer.state == ESTABLISHED:
                    self.on_timer(peer, now)
            self.each_pass(now)
            if now >= deadline or (stop is not None and stop()):
                return now
            wait = min(deadline - now, tick)
            if timers:
                wait = min(wait, max(0.0, timers[0][0] - now))
            for fd, _ in poll(wait, 1_024):
                peer_or_none = peers.get(fd)
                if peer_or_none is not None:
                    readable(peer_or_none, monotonic())

    def each_pass(self, now: float) -> None:
        """Called once per loop pass (workloads top up their clients here)."""

    # -- measuring ----------------------------------------------------------------------------

    def cpu_mark(self) -> CpuMark:
        """Wall clock and CPU seconds used so far: by us, by the server, by the whole machine."""
        times = os.times()
        server = None
        if self.server_pid is not None:
            try:
                server = cpu_seconds_of(self.server_pid)
            except OSError:
                server = None
        return CpuMark(time.monotonic(), times.user + times.system, server, _machine_busy())

    @staticmethod
    def cpu_shares(start: CpuMark, end: CpuMark) -> dict[str, float | None]:
        """Cores used between two marks: generator, server, and everything else."""
        wall = max(end.wall - start.wall, 1e-9)
        generator = (end.own - start.own) / wall
        server = None
        if start.server is not None and end.server is not None:
            server = (end.server - start.server) / wall
        other = None
        if start.machine is not None and end.machine is not None:
            other = max(0.0, (end.machine - start.machine) / wall - generator - (server or 0.0))
        return {
            "generator_cpu": round(generator, 3),
            "server_cpu": None if server is None else round(server, 3),
            "other_cpu": None if other is None else round(other, 3),
        }

    def server_report(self, report_file: Path, sequence: int) -> MemoryReport | None:
        """Ask the server (SIGUSR1) for a memory report and wait for it (at most 15 s)."""
        if self.server_pid is None:
            return None
        os.kill(self.server_pid, signal.SIGUSR1)
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            data = read_json_file(report_file)
            if isinstance(data, dict) and data.get("sequence") == sequence:
                return MemoryReport.from_dict(data)
            # Keep answering the server (a ping reply or retransmission) while we wait.
            self.run_until(time.monotonic() + 0.02)
        return None

    def wait_until_server_quiet(self, limit: float = 5.0) -> float:
        """Wait (serving our sockets) until the server used < 5% CPU over 0.25 s, or ``limit``."""
        started = time.monotonic()
        if self.server_pid is None:
            return 0.0
        previous = cpu_seconds_of(self.server_pid)
        while time.monotonic() - started < limit:
            self.run_until(time.monotonic() + 0.25)
            current = cpu_seconds_of(self.server_pid)
            if current - previous < 0.0125:
                break
            previous = current
        return round(time.monotonic() - started, 3)

    def base_result(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "handshake_failures": dict(self.failure_reasons),
        }


class CpuMark(NamedTuple):
    wall: float
    own: float
    server: float | None
    machine: float | None


def _machine_busy() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores), from ``/proc/stat``."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    values = [int(value) for value in fields[1:9]]
    busy = values[0] + values[1] + values[2] + values[5] + values[6] + values[7]
    return busy / clock_ticks_per_second()


def _reason(error: SSL.Error) -> str:
    parts = [str(item[-1]) for item in (error.args[0] if error.args else []) if item]
    return "; ".join(parts) or type(error).__name__


# -- workloads ------------------------------------------------------------------------------------


class HandshakeLoad(Engine):
    """Full handshakes, ``concurrency`` in flight, for ``warmup + duration`` seconds, then drain."""

    def __init__(
        self,
        server: tuple[str, int],
        suite: str,
        server_pid: int | None,
        *,
        concurrency: int,
        warmup: float,
        duration: float,
        drain: float,
        close_notify: bool = True,
    ) -> None:
        super().__init__(server, suite, server_pid)
        self.close_notify = close_notify
        self.concurrency = concurrency
        self.warmup = warmup
        self.duration = duration
        self.drain = drain
        self.window_start = math.inf
        self.window_end = math.inf
        self.launching = True
        self.completed_in_window = 0
        self.completed_total = 0
        self.completed_late = 0
        self.failed = 0
        self.latencies: list[float] = []
        #: Bounded in count as well as in time (a million handshakes is far beyond any window).
        self.launched = 0
        self.launch_cap = 1_000_000

    def on_established(self, peer: Peer, now: float) -> None:
        self.completed_total += 1
        if self.window_start <= now < self.window_end:
            self.completed_in_window += 1
            self.latencies.append(now - peer.started)
        elif now >= self.window_end:
            self.completed_late += 1
        self.close(peer, notify=self.close_notify)

    def on_handshake_failed(self, peer: Peer, now: float, reason: str) -> None:
        self.failed += 1

    def each_pass(self, now: float) -> None:
        if self.launching:
            while self.handshaking < self.concurrency and self.launched < self.launch_cap:
                self.launched += 1
                self.launch(now)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.window_start = started + self.warmup
        self.window_end = self.window_start + self.duration
        self.run_until(self.window_start)
        mark_start = self.cpu_mark()
        self.run_until(self.window_end)
        mark_end = self.cpu_mark()
        self.launching = False
        drain_started = time.monotonic()
        self.run_until(drain_started + self.drain, stop=lambda: self.handshaking == 0)
        hanging = self.handshaking
        abandoned = sum(
            count for reason, count in self.failure_reasons.items() if reason.startswith("no hand")
        )
        result = self.base_result()
        result.update(
            {
                "concurrency": self.concurrency,
                "window_s": self.duration,
                "completed": self.completed_in_window,
                "rate": round(self.completed_in_window / self.duration, 1),
                "latency_ms": percentiles(self.latencies),
                "completed_total": self.completed_total,
                "completed_after_window": self.completed_late,
                "failed": self.failed - abandoned,
                "abandoned": abandoned,
                "still_hanging_after_drain": hanging,
                "left_hanging": hanging + abandoned,
                "drain_s": round(time.monotonic() - drain_started, 3),
                **self.cpu_shares(mark_start, mark_end),
            }
        )
        return result


class RoundTripLoad(Engine):
    """``peers`` established clients, one request in flight each, closed loop."""

    def __init__(
        self,
        server: tuple[str, int],
        suite: str,
        server_pid: int | None,
        *,
        peers: int,
        size: int,
        warmup: float,
        duration: float,
        request_timeout: float = 1.0,
    ) -> None:
        super().__init__(server, suite, server_pid)
        self.wanted = peers
        self.padding = b"\x5a" * (size - 8)
        self.warmup = warmup
        self.duration = duration
        self.request_timeout = request_timeout
        self.window_start = math.inf
        self.window_end = math.inf
        self.measuring = False
        self.round_trips = 0
        self.latencies: list[float] = []
        self.timeouts = 0
        self.stale_replies = 0
        self.lost = 0
        self.started_requests = False
        self.next_sweep = 0.0

    def on_established(self, peer: Peer, now: float) -> None:
        if self.started_requests:
            self._request(peer, now)

    def _request(self, peer: Peer, now: float) -> None:
        peer.sequence += 1
        peer.request_sent_at = now
        peer.awaiting_reply = True
        self.send_plaintext(peer, struct.pack("!Q", peer.sequence) + self.padding)

    def each_pass(self, now: float) -> None:
        # Request timeouts by a sweep over the few clients, not a heap push per request.
        if now < self.next_sweep:
            return
        self.next_sweep = now + 0.1
        limit = now - self.request_timeout
        for peer in list(self.peers.values()):
            if peer.state == ESTABLISHED and peer.awaiting_reply and peer.request_sent_at < limit:
                if self.window_start <= now < self.window_end:
                    self.timeouts += 1
                self._request(peer, now)

    def on_data(self, peer: Peer, length: int, now: float) -> None:
        if length < 8 or struct.unpack_from("!Q", self.plain_view)[0] != peer.sequence:
            self.stale_replies += 1
            return
        peer.awaiting_reply = False
        if self.window_start <= now < self.window_end:
            self.round_trips += 1
            self.latencies.append(now - peer.request_sent_at)
        self._request(peer, now)

    def on_lost(self, peer: Peer, now: float, reason: str) -> None:
        self.lost += 1

    def run(self) -> dict[str, Any]:
        setup_started = time.monotonic()
        for _ in range(self.wanted):
            self.launch(setup_started)
        self.run_until(setup_started + 20.0, stop=lambda: self.handshaking == 0)
        setup_s = round(time.monotonic() - setup_started, 3)
        ready = self.established
        self.started_requests = True
        now = time.monotonic()
        for peer in list(self.peers.values()):
            if peer.state == ESTABLISHED:
                self._request(peer, now)
        self.window_start = now + self.warmup
        self.window_end = self.window_start + self.duration
        self.run_until(self.window_start)
        mark_start = self.cpu_mark()
        self.run_until(self.window_end)
        mark_end = self.cpu_mark()
        result = self.base_result()
        result.update(
            {
                "peers": self.wanted,
                "peers_established": ready,
                "setup_s": setup_s,
                "window_s": self.duration,
                "round_trips": self.round_trips,
                "rate": round(self.round_trips / self.duration, 1),
                "latency_ms": percentiles(self.latencies),
                "timeouts": self.timeouts,
                "stale_replies": self.stale_replies,
                "peers_lost": self.lost,
                **self.cpu_shares(mark_start, mark_end),
            }
        )
        return result


class PeersLoad(Engine):
    """Establish many peers (``concurrency`` handshakes in flight) and keep them.

    With ``ping_interval`` each established peer sends ``size`` bytes every interval and a peer
    with two consecutive unanswered pings is lost; without it the peers stay idle.
    """

    def __init__(
        self,
        server: tuple[str, int],
        suite: str,
        server_pid: int | None,
        *,
        target: int,
        concurrency: int,
        ping_interval: float | None,
        size: int = 16,
    ) -> None:
        super().__init__(server, suite, server_pid)
        self.target = target
        self.concurrency = concurrency
        self.ping_interval = ping_interval
        self.payload = b"\xa5" * size
        self.launching = False
        self.lost = 0
        self.lost_reasons: Counter[str] = Counter()
        self.alive_at_first_loss: int | None = None
        self.peak_alive = 0
        self.pings_sent = 0
        self.pings_answered = 0
        self.pings_missed = 0
        self.ping_latencies: list[float] = []
        self.handshake_failures = 0
        self.launched = 0
        self.launch_limit = target
        self.warming = False

    def each_pass(self, now: float) -> None:
        if not self.launching:
            return
        while (
            self.handshaking < self.concurrency
            and self.established + self.handshaking < self.target
            and self.launched < self.launch_limit
        ):
            self.launched += 1
            self.launch(now)

    def on_established(self, peer: Peer, now: float) -> None:
        if self.warming:
            self.close(peer, notify=True)
            return
        self.peak_alive = max(self.peak_alive, self.established)
        if self.ping_interval is not None:
            self.set_timer(peer, now + self.ping_interval)

    def on_handshake_failed(self, peer: Peer, now: float, reason: str) -> None:
        self.handshake_failures += 1

    def on_timer(self, peer: Peer, now: float) -> None:
        if self.ping_interval is None:
            return
        if peer.awaiting_reply:
            self.pings_missed += 1
            peer.missed += 1
            if peer.missed >= 2:
                self._lose(peer, now, "two consecutive pings unanswered")
                return
        peer.awaiting_reply = True
        peer.request_sent_at = now
        self.pings_sent += 1
        self.send_plaintext(peer, self.payload)
        self.set_timer(peer, now + self.ping_interval)

    def on_data(self, peer: Peer, length: int, now: float) -> None:
        if peer.awaiting_reply:
            peer.awaiting_reply = False
            peer.missed = 0
            self.pings_answered += 1
            self.ping_latencies.append(now - peer.request_sent_at)

    def _lose(self, peer: Peer, now: float, reason: str) -> None:
        self.close(peer)
        self.on_lost(peer, now, reason)

    def on_lost(self, peer: Peer, now: float, reason: str) -> None:
        if self.alive_at_first_loss is None:
            self.alive_at_first_loss = self.established + 1
        self.lost += 1
        self.lost_reasons[reason] += 1

    def establish(self, budget: float, *, stop_on_loss: bool) -> float:
        """Launch until ``target`` peers are established (or the budget runs out); seconds."""
        started = time.monotonic()
        self.launching = True
        self.launch_limit = self.launched + 3 * self.target  # failures are retried, boundedly

        def done() -> bool:
            return (self.established >= self.target and self.handshaking == 0) or (
                stop_on_loss and self.lost > 0
            )

        self.run_until(started + budget, stop=done)
        self.launching = False
        # Let the handshakes already in flight finish (bounded).
        self.run_until(time.monotonic() + 10.0, stop=lambda: self.handshaking == 0)
        return round(time.monotonic() - started, 3)

    def warm_up(self, count: int) -> None:
        """``count`` handshakes that are closed again: the server's code paths are warm."""
        self.warming = True
        try:
            now = time.monotonic()
            for _ in range(count):
                self.launch(now)
            self.run_until(now + 15.0, stop=lambda: self.handshaking == 0)
        finally:
            self.warming = False

    def run_memory(self, report_file: Path, budget: float) -> dict[str, Any]:
        self.warm_up(min(64, self.target))
        self.wait_until_server_quiet()
        before = self.server_report(report_file, 1)
        establish_s = self.establish(budget, stop_on_loss=False)
        quiet_s = self.wait_until_server_quiet()
        after = self.server_report(report_file, 2)
        result = self.base_result()
        result.update(
            {
                "peers_wanted": self.target,
                "peers_established": self.established,
                "establish_s": establish_s,
                "handshake_rate": round(self.established / max(establish_s, 1e-9), 1),
                "handshake_failures": self.handshake_failures,
                "quiet_wait_s": quiet_s,
                "peers_lost": self.lost,
                "before": before.as_dict() if before else None,
                "after": after.as_dict() if after else None,
            }
        )
        if before is not None and after is not None and after.peers > 0:
            peers = after.peers - before.peers
            result["server_peers_delta"] = peers
            result["rss_kib_per_peer"] = round((after.rss_kib - before.rss_kib) / peers, 2)
            for field in ("malloc_in_use", "pymalloc_in_use"):
                first, last = getattr(before, field), getattr(after, field)
                if first is not None and last is not None:
                    result[f"{field}_kib_per_peer"] = round((last - first) / 1024 / peers, 2)
        return result

    def run_capacity(self, report_file: Path, budget: float, hold: float) -> dict[str, Any]:
        ramp_s = self.establish(budget, stop_on_loss=True)
        held_at_ramp_end = self.established
        hold_started = time.monotonic()
        mark_start = self.cpu_mark()
        self.run_until(hold_started + hold)
        mark_end = self.cpu_mark()
        # Stop pinging, give the last pings 2 s to be answered, then judge every peer.
        self.ping_interval = None
        self.run_until(
            time.monotonic() + 2.0,
            stop=lambda: not any(p.awaiting_reply for p in self.peers.values()),
        )
        unanswered = sum(1 for p in self.peers.values() if p.awaiting_reply)
        report = self.server_report(report_file, 1)
        held = self.established - unanswered
        most_held = held if self.lost == 0 else (self.alive_at_first_loss or 0) - 1
        result = self.base_result()
        result.update(
            {
                "peers_wanted": self.target,
                "ramp_s": ramp_s,
                "established_at_ramp_end": held_at_ramp_end,
                "hold_s": hold,
                "peak_established": self.peak_alive,
                "held_at_end": held,
                "unanswered_at_end": unanswered,
                "lost": self.lost,
                "lost_reasons": dict(self.lost_reasons),
                "most_held_without_loss": max(0, most_held),
                "handshake_failures": self.handshake_failures,
                "pings_sent": self.pings_sent,
                "pings_answered": self.pings_answered,
                "pings_missed": self.pings_missed,
                "ping_latency_ms": percentiles(self.ping_latencies),
                "server_peers": report.peers if report else None,
                "server_rss_kib": report.rss_kib if report else None,
                **self.cpu_shares(mark_start, mark_end),
            }
        )
        return result


# -- command line ---------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload", choices=["handshake", "roundtrip", "memory", "capacity"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--report-file", type=Path, default=None)
    parser.add_argument("--suite", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--drain", type=float, default=8.0)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds to establish peers")
    parser.add_argument("--ping-interval", type=float, default=5.0)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument(
        "--no-close-notify",
        action="store_true",
        help="handshake workload: clients vanish without close_notify (the server keeps them)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse(argv)
    server = (arguments.host, arguments.port)
    common = (server, arguments.suite, arguments.server_pid)
    result: dict[str, Any]
    if arguments.workload == "handshake":
        result = HandshakeLoad(
            *common,
            concurrency=arguments.concurrency,
            warmup=arguments.warmup,
            duration=arguments.duration,
            drain=arguments.drain,
            close_notify=not arguments.no_close_notify,
        ).run()
    elif arguments.workload == "roundtrip":
        result = RoundTripLoad(
            *common,
            peers=arguments.peers,
            size=arguments.size,
            warmup=arguments.warmup,
            duration=arguments.duration,
        ).run()
    else:
        if arguments.report_file is None:
            raise SystemExit("--report-file is required for the memory and capacity workloads")
        if arguments.workload == "memory":
            load = PeersLoad(
                *common,
                target=arguments.peers,
                concurrency=arguments.concurrency,
                ping_interval=None,
            )
            result = load.run_memory(arguments.report_file, arguments.budget)
        else:
            load = PeersLoad(
                *common,
                target=arguments.peers,
                concurrency=arguments.concurrency,
                ping_interval=arguments.ping_interval,
                size=arguments.size,
            )
            result = load.run_capacity(arguments.report_file, arguments.budget, arguments.hold)
    result["workload"] = arguments.workload
    result["suite"] = arguments.suite
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
