"""Prometheus metrics: the exporter reads ``statistics()``, sums workers, and survives scrapers.

Scrapes go over real HTTP on loopback and are parsed with prometheus-client's own parser, so
a malformed exposition fails here as it would in Prometheus.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
import trio
import trio.testing
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import IDENTITY, KEY, serving

from trio_dtls_server import DTLSClient, DTLSServer, HandshakeError
from trio_dtls_server._metrics import METRICS, metrics_registry, serve_metrics
from trio_dtls_server._stats import HANDSHAKE_SECONDS_BUCKETS, ServerStatistics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def _http_get(address: tuple[str, int], request: bytes) -> bytes:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(request)
        response = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65_536):
                response += chunk
    return response


async def _scrape(address: tuple[str, int]) -> Samples:
    response = await _http_get(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert b"Content-Type: text/plain; version=" in head
    return _parse(body.decode())


def test_workers_are_summed_into_one_set_of_metrics() -> None:
    first, second = ServerStatistics(), ServerStatistics()
    first.handshakes_started, second.handshakes_started = 3, 4
    first.handshakes_failed["wrong key"] = 1
    second.handshakes_failed.update({"wrong key": 2, "deadline": 5})
    first.drops["record failed authentication"] = 7
    second.drops["replayed record"] = 1
    first.record_handshake_duration(0.002)  # the first bucket
    second.record_handshake_duration(0.3)  # le=0.5
    second.record_handshake_duration(99.0)  # beyond the last bound: +Inf only
    snapshots = [
        first.snapshot(peers=10, handshaking=2, events_dropped=0, kernel_drops=3),
        second.snapshot(peers=5, handshaking=1, events_dropped=0, kernel_drops=None),
    ]
    registry = metrics_registry(lambda: snapshots, worker_restarts=lambda: 2)
    samples = _parse(generate_latest(registry).decode())
    assert samples[("dtls_handshakes_started_total", ())] == 7
    assert samples[("dtls_handshakes_failed_total", (("reason", "wrong key"),))] == 3
    assert samples[("dtls_handshakes_failed_total", (("reason", "deadline"),))] == 5
    assert samples[("dtls_mac_failures_total", ())] == 7
    assert (
        samples[("dtls_dropped_datagrams_total", (("reason", "record failed authentication"),))]
        == 7
    )
    assert samples[("dtls_kernel_dropped_datagrams_total", ())] == 3
    assert samples[("dtls_worker_restarts_total", ())] == 2
    assert samples[("dtls_associations", ())] == 12  # (10 - 2) + (5 - 1)
    assert samples[("dtls_handshakes_in_progress", ())] == 3
    assert samples[("dtls_workers", ())] == 2
    bucket = "dtls_handshake_duration_seconds_bucket"
    assert samples[(bucket, (("le", "0.005"),))] == 1
    assert samples[(bucket, (("le", "0.25"),))] == 1
    assert samples[(bucket, (("le", "0.5"),))] == 2
    assert samples[(bucket, (("le", repr(HANDSHAKE_SECONDS_BUCKETS[-1])),))] == 2
    assert samples[(bucket, (("le", "+Inf"),))] == 3
    assert samples[("dtls_handshake_duration_seconds_count", ())] == 3
    assert samples[("dtls_handshake_duration_seconds_sum", ())] == pytest.approx(99.302)


async def test_counters_move_with_real_traffic() -> None:
    server = DTLSServer(psk={IDENTITY: KEY})
    async with serving(server) as running:
        registry = metrics_registry(lambda: [server.statistics()])
        metrics = await running.nursery.start(serve_metrics, registry, "127.0.0.1", 0)
        before = await _scrape(metrics)
        assert before[("dtls_handshakes_succeeded_total", ())] == 0
        names = {name for name, _ in before}
        # Every documented name is exposed (labelled counters show up once they have a child).
        labelled = {
            "dtls_handshakes_failed_total",
            "dtls_dropped_datagrams_total",
            "dtls_peer_failures_total",
        }
        for name in set(METRICS) - labelled:
            assert name in names or f"{name}_count" in names, name
        client = await DTLSClient.connect(*running.address, identity=IDENTITY, key=KEY)
        async with client:
            for number in range(3):
                await client.send(b"ping %d" % number)
                await client.receive()
            during = await _scrape(metrics)
        with pytest.raises(HandshakeError):
            await DTLSClient.connect(*running.address, identity=IDENTITY, key=b"wrong" * 4)
        after = await _scrape(metrics)
    assert during[("dtls_handshakes_started_total", ())] == 1
    assert during[("dtls_handshakes_succeeded_total", ())] == 1
    assert during[("dtls_associations", ())] == 1
    assert during[("dtls_application_records_received_total", ())] == 3
    assert during[("dtls_application_records_sent_total", ())] == 3
    assert during[("dtls_handshake_duration_seconds_count", ())] == 1
    assert (
        during[("dtls_datagrams_received_total", ())]
        > before[("dtls_datagrams_received_total", ())]
    )
    assert after[("dtls_handshakes_failed_total", (("reason", "wrong key"),))] == 1
    assert after[("dtls_associations", ())] == 0
    assert after[("dtls_remote_closed_total", ())] == 1


async def test_the_endpoint_refuses_what_is_not_a_scrape_and_keeps_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = DTLSServer(psk={IDENTITY: KEY})
    async with serving(server) as running:
        registry = metrics_registry(lambda: [server.statistics()])
        metrics = await running.nursery.start(serve_metrics, registry, "127.0.0.1", 0)
        post = await _http_get(metrics, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405 ")
        elsewhere = await _http_get(metrics, b"GET /admin HTTP/1.1\r\n\r\n")
        assert elsewhere.startswith(b"HTTP/1.1 404 ")
        garbage = await _http_get(metrics, b"\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        huge = await _http_get(metrics, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000)
        assert huge.startswith(b"HTTP/1.1 431 ")
        # A scraper that connects and says nothing is let go after the request timeout.
        silent = await trio.open_tcp_stream(*metrics)
        async with silent:
            with trio.fail_after(30):
                assert await silent.receive_some(10) == b""
        # The scraper hanging up mid-request does not end the endpoint either.
        rude = await trio.open_tcp_stream(*metrics)
        await rude.send_all(b"GET /metr")
        await rude.aclose()
        assert (await _scrape(metrics))[("dtls_workers", ())] == 1


async def test_serve_metrics_flag_end_to_end() -> None:
    process = await trio.lowlevel.open_process(
        [
            sys.executable, "-m", "trio_dtls_server", "serve", "--port", "0",
            "--metrics", "127.0.0.1:0", "--psk-hex", KEY.hex(), "--log-format", "json",
        ],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        text = ""
        with trio.fail_after(20):
            while "Prometheus metrics on" not in text:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, text
                text += chunk.decode()
        dtls_port = int(re.search(r"and port (\d+)", text).group(1))  # type: ignore[union-attr]
        found = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", text)
        assert found is not None
        metrics = ("127.0.0.1", int(found.group(1)))
        client = await DTLSClient.connect("127.0.0.1", dtls_port, identity="m", key=KEY)
        async with client:
            await client.send(b"hello")
            await client.receive()
            samples = await _scrape(metrics)
        assert samples[("dtls_handshakes_succeeded_total", ())] == 1
        assert samples[("dtls_application_records_received_total", ())] == 1
    finally:
        process.terminate()
        with trio.fail_after(20):
            assert await process.wait() == 0


async def _scrape_until(
    address: tuple[str, int], ready: Callable[[Samples], bool], *, timeout: float = 20.0
) -> Samples:
    """Scrape until ``ready`` holds: workers report their statistics once a second."""
    with trio.fail_after(timeout):
        while True:
            samples = await _scrape(address)
            if ready(samples):
                return samples
            await trio.sleep(0.2)


async def test_metrics_sum_two_workers_and_survive_a_worker_restart() -> None:
    """``serve --workers 2 --metrics``: the counters move with traffic on both workers, sum
    them, and keep the count of a worker that was killed (its replacement starts from zero)."""
    from cli_support import in_thread, start_serve, worker_of, worker_pids

    server, port = start_serve("--workers", "2", "--psk-hex", KEY.hex(), "--metrics", "127.0.0.1:0")
    with server:
        found = await in_thread(server.stdout.wait_for, r"http://127\.0\.0\.1:(\d+)/metrics")
        metrics = ("127.0.0.1", int(found.group(1)))
        before = await _scrape_until(metrics, lambda s: s[("dtls_workers", ())] == 2)
        assert before[("dtls_handshakes_succeeded_total", ())] == 0
        served: dict[int, int] = {1: 0, 2: 0}
        clients: list[DTLSClient] = []
        try:
            for _ in range(30):
                if min(served.values()) >= 2 and sum(served.values()) >= 8:
                    break
                client = await DTLSClient.connect("127.0.0.1", port, identity="m", key=KEY)
                clients.append(client)
                await client.send(b"hello")
                await client.receive()
                served[await in_thread(worker_of, server, client.local_address[1])] += 1
            assert min(served.values()) >= 2
            total = sum(served.values())
            during = await _scrape_until(
                metrics, lambda s: s[("dtls_handshakes_succeeded_total", ())] == total
            )
            assert during[("dtls_application_records_received_total", ())] == total
            assert during[("dtls_associations", ())] == total
            assert during[("dtls_handshake_duration_seconds_count", ())] == total
            # Kill a worker: its count is kept, the restart is counted.
            os.kill(worker_pids(server)[1], signal.SIGKILL)
            after = await _scrape_until(
                metrics, lambda s: s[("dtls_worker_restarts_total", ())] == 1
            )
            assert after[("dtls_handshakes_succeeded_total", ())] == total
            assert after[("dtls_application_records_received_total", ())] == total
        finally:
            for client in clients:
                await client.aclose()
        server.send_signal(signal.SIGTERM)
        assert await in_thread(server.wait) == 0
