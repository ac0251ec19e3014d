"""Memory comes back after handshake churn (per-core issue, item 3).

Waves of clients that do the cookie exchange, send their verified ClientHello and go silent
each leave the server a handshake that only the deadline ends.  Every one of them must leave
nothing behind: not in the peer table or the handshake count, not in the per-peer structures,
and not as an OpenSSL connection that waits for Python's cycle collector.

That last point is the one that cost memory.  A session used to be its OpenSSL connection's
app data while the connection was its session's attribute: a reference cycle, so an ended
handshake's ``SSL.Connection`` (about 70 KB of C memory, which the cycle collector does not
see) lived until a full collection -- rare, because the Python objects involved are few and
small.  Under churn the server's RSS grew by ~100 MB.  These tests run with the cycle
collector switched off: everything a handshake created must go by reference counting alone,
the moment the handshake ends.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import platform
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import support
import trio
import trio.testing
from fakenet import FakeEndpoint, FakeNetwork
from hostile_support import new_client_session
from OpenSSL import SSL

from trio_dtls_server import DTLSServer, ServerConfig
from trio_dtls_server._heap import HeapTrimmer, malloc_trim
from trio_dtls_server._session import SessionState
from trio_dtls_server._wire import parse_hello_verify_request

SERVER = ("127.0.0.1", 4433)
WAVES = 12
WAVE_SIZE = 25
DEADLINE = 5.0


@contextlib.contextmanager
def no_cycle_collector() -> Iterator[None]:
    """Switch Python's cycle collector off (and back on): what only it would free stays."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def live_objects() -> Counter[str]:
    """Objects that exist right now, collectable garbage included (nothing is collected here):
    every OpenSSL connection, and every instance of a class of this project (sessions, peer
    slots, record protection, replay windows, events ...), by class name."""
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        if isinstance(obj, SSL.Connection) or kind.__module__.startswith("trio_dtls_server"):
            counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
    return counts


async def abandoned_wave(network: FakeNetwork, count: int) -> list[FakeEndpoint]:
    """``count`` clients that pass the cookie check, send their verified ClientHello, receive
    the server's first flight (the handshake started) and then say nothing more."""
    clients = []
    for _ in range(count):
        endpoint = network.endpoint()
        session = new_client_session()
        [hello] = session.take_datagrams()
        endpoint.send_nowait(hello, SERVER)
        clients.append((endpoint, session))
    for endpoint, session in clients:
        with trio.fail_after(10):
            await endpoint.wait_readable()
        received = endpoint.receive_nowait(65_536)
        assert received is not None
        assert len(parse_hello_verify_request(received[0])) == 16
        session.receive_datagram(received[0], trio.current_time())
        [verified] = session.take_datagrams()
        endpoint.send_nowait(verified, SERVER)
    for endpoint, _ in clients:
        with trio.fail_after(10):
            await endpoint.wait_readable()  # the ServerHello flight: a handshake holds a slot
    return [endpoint for endpoint, _ in clients]


def server_state(server: DTLSServer) -> dict[str, object]:
    """Every per-peer structure of the server that a handshake could leave something in."""
    nursery = server._nursery
    assert nursery is not None
    return {
        "peers": dict(server._peers.peers),
        "handshaking": server._peers.handshaking,
        "held datagram": server._held,
        "peer tasks": len(nursery.child_tasks),
        "trio tasks": trio.lowlevel.current_statistics().tasks_living,
    }


async def count_events(server: DTLSServer, codes: Counter[str], *, task_status: Any) -> None:
    """Subscribe to the server's events and count them by code (keeping none)."""
    async with server.events() as stream:
        task_status.started()
        async for event in stream:
            codes[event.code] += 1


async def test_waves_of_abandoned_handshakes_leave_nothing_behind(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest keeps every log record (each holding its event) until the test ends; a subscriber
    # that counts them takes the events here instead.
    monkeypatch.setattr(logging.getLogger("trio_dtls_server"), "disabled", True)
    network = FakeNetwork(seed=3_003)
    config = ServerConfig(max_handshakes=WAVE_SIZE, handshake_timeout=DEADLINE)
    server = DTLSServer({support.IDENTITY: support.KEY}, config=config)
    # Each trim notes when it ran and how many OpenSSL connections were alive then.
    trims: list[tuple[float, int]] = []
    before: Counter[str] = Counter()  # what lives before the first wave

    def trim(pad: int) -> int:
        alive = live_objects()["OpenSSL.SSL.Connection"] - before["OpenSSL.SSL.Connection"]
        trims.append((trio.current_time(), alive))
        return 1

    server._heap = HeapTrimmer(trim, min_ended=WAVE_SIZE)
    codes: Counter[str] = Counter()
    with no_cycle_collector():
        async with trio.open_nursery() as nursery:
            await nursery.start(count_events, server, codes)
            await nursery.start(server.serve_on, network.endpoint(SERVER))
            empty = server_state(server)
            before.update(live_objects())
            baseline: Counter[str] | None = None
            for wave in range(WAVES):
                clients = await abandoned_wave(network, WAVE_SIZE)
                stats = server.statistics()
                assert (stats.handshaking, stats.peers) == (WAVE_SIZE, WAVE_SIZE)
                await trio.sleep(DEADLINE + 1)
                for endpoint in clients:
                    endpoint.close()
                del clients
                assert server_state(server) == empty, f"after wave {wave + 1}"
                if baseline is None:
                    # What the first wave created once and keeps (a rate limit per event code,
                    # the cipher lookups ...), and nothing that the collector alone would free.
                    gc.collect()
                    baseline = live_objects()
                    limited_codes = set(server._hub._limits)
                    assert limited_codes <= set(codes)  # event codes, not peers
                    for kind in ("trio_dtls_server._session.DTLSSession", "OpenSSL.SSL.Connection"):
                        assert baseline[kind] == before[kind]  # (earlier tests may keep some)
            # Eleven more waves, and not one object more -- without the cycle collector.
            assert live_objects() == baseline
            stats = server.statistics()
            assert stats.handshakes_started == WAVES * WAVE_SIZE
            assert stats.handshakes_failed == {"deadline": WAVES * WAVE_SIZE}
            assert stats.handshakes_refused == 0
            # The event hub's rate limits are one per event code, never one per peer.
            assert set(server._hub._limits) == limited_codes
            assert codes["verified"] == WAVES * WAVE_SIZE
            assert 50 <= codes["handshake_failed"] <= WAVES * WAVE_SIZE  # rate-limited
            assert (stats.handshaking, stats.peers) == (0, 0)
            # The heap was trimmed once per wave, once its last handshake had ended and every
            # OpenSSL connection of the wave had been freed.
            assert len(trims) == WAVES
            assert [alive for _, alive in trims] == [0] * WAVES
            assert server._heap.trims == WAVES
            nursery.cancel_scope.cancel()


def _references(result: support.InMemoryHandshake) -> list[weakref.ref[object]]:
    """Weak references to both sessions of ``result`` and to their OpenSSL connections."""
    sessions = [result.server, result.client]
    connections = [s.connection for s in sessions]
    assert None not in connections
    return [weakref.ref(obj) for s, c in zip(sessions, connections, strict=True) for obj in (s, c)]


def test_a_session_and_its_openssl_connection_go_with_the_last_reference() -> None:
    with no_cycle_collector():
        # Abandoned mid-handshake (the churn above), on both sides.
        started = support.begin_handshake_in_memory()
        started.server.take_datagrams()
        assert started.server.state is SessionState.HANDSHAKING
        references = _references(started)
        del started
        assert [ref() for ref in references] == [None] * 4

        # Failed: the client's key is wrong.
        failed = support.handshake_in_memory(keys={support.IDENTITY.encode(): b"\x00" * 16})
        assert failed.server.state is SessionState.FAILED
        references = _references(failed)
        del failed
        assert [ref() for ref in references] == [None] * 4

        # Established on a CBC suite, which keeps OpenSSL's connection for its records.
        kept = support.handshake_in_memory(ciphers="PSK-AES128-CBC-SHA256")
        assert kept.server.state is SessionState.ESTABLISHED
        assert kept.server.connection is not None
        references = _references(kept)
        del kept
        assert [ref() for ref in references] == [None] * 4


def test_the_heap_trimmer_waits_for_the_end_of_a_wave() -> None:
    now = [0.0]
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    trimmer = HeapTrimmer(trim, min_ended=3, min_interval=1.0, clock=lambda: now[0])
    # Handshakes end while others are in flight: nothing to do yet.
    assert [trimmer.handshake_ended(in_flight) for in_flight in (4, 3, 2, 1)] == [False] * 4
    # The last one: due (four ended, none in flight); one trim, however often it is asked.
    assert trimmer.handshake_ended(0)
    assert not trimmer.handshake_ended(0)  # already scheduled
    trimmer.trim()
    assert (calls, trimmer.trims) == ([0], 1)
    # Too few ended since: no trim.
    now[0] = 5.0
    assert not trimmer.handshake_ended(0)
    assert not trimmer.handshake_ended(0)
    # Enough, but within min_interval of the last trim: not yet; after it: due.
    now[0] = 5.5
    trimmer.trim()
    now[0] = 6.0
    assert [trimmer.handshake_ended(0) for _ in range(3)] == [False] * 3
    now[0] = 6.5
    assert trimmer.handshake_ended(0)


def test_without_malloc_trim_the_trimmer_never_asks() -> None:
    trimmer = HeapTrimmer(None, min_ended=1, clock=lambda: 0.0)
    assert not any(trimmer.handshake_ended(0) for _ in range(100))
    if platform.libc_ver()[0] == "glibc":
        assert malloc_trim is not None  # the server's default on glibc Linux
