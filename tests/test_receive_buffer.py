"""Bursts: the socket's receive buffer is configurable, and what the kernel drops is counted.

Devices that wake on one schedule send at the same instant; what does not fit the socket's
receive buffer is lost in the kernel before any code of ours runs.  These tests overflow a
small buffer on purpose — a Trio task that sends without a checkpoint keeps the server's
reader from running, so the burst is exactly what the test sends — and check that every
datagram is accounted for: read by the server, or counted as a kernel drop.
"""

from __future__ import annotations

import socket as stdlib_socket

import pytest
import trio
from support import EventRecorder, serving, settle

from trio_dtls_server import DTLSServer, ServerConfig
from trio_dtls_server._transport import bind_udp, receive_buffer_cap

BURST = 2_000
#: A datagram of this size with a small buffer overflows after a few dozen.
DATAGRAM = b"\x17" + b"\x00" * 99


def _burst(destination: tuple[str, int], count: int) -> None:
    """Send ``count`` datagrams at once, without a checkpoint (nobody else runs meanwhile)."""
    with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as sender:
        for _ in range(count):
            sender.sendto(DATAGRAM, destination)


async def test_a_transport_counts_what_the_kernel_dropped_exactly() -> None:
    transport = await bind_udp("127.0.0.1", 0, receive_buffer=4_096)
    try:
        before = transport.kernel_drops()
        assert before == 0
        _burst(transport.local_address, BURST)
        received = 0
        while transport.receive_nowait(2048) is not None:
            received += 1
        drops = transport.kernel_drops()
        assert drops is not None and drops > 0
        # Loopback loses nothing else: every datagram was either read or dropped for the
        # full buffer.
        assert received + drops == BURST
    finally:
        transport.close()


async def test_the_server_reports_kernel_drops_in_its_statistics() -> None:
    server = DTLSServer(psk=b"k" * 16, config=ServerConfig(receive_buffer=4_096))
    async with serving(server) as running:
        assert server.statistics().kernel_drops == 0
        _burst(running.address, BURST)
        await settle()
        stats = server.statistics()
    assert stats.kernel_drops is not None and stats.kernel_drops > 0
    assert stats.datagrams_in + stats.kernel_drops == BURST
    assert stats.as_dict()["kernel_drops"] == stats.kernel_drops


@pytest.mark.parametrize(("receive_buffer", "lost"), [(4_096, True), (200_000, False)])
async def test_a_bigger_buffer_absorbs_a_burst_a_small_one_loses(
    receive_buffer: int, lost: bool
) -> None:
    # 200 small datagrams need about 200 KiB of kernel memory: more than 4 KiB, less than
    # what 200,000 gives even under Linux's stock cap (212,992, doubled to 425,984).
    server = DTLSServer(psk=b"k" * 16, config=ServerConfig(receive_buffer=receive_buffer))
    async with serving(server) as running:
        _burst(running.address, 200)
        await settle()
        stats = server.statistics()
    assert stats.kernel_drops is not None
    assert (stats.kernel_drops > 0) is lost
    assert stats.datagrams_in + stats.kernel_drops == 200


async def test_a_clipped_buffer_is_reported_once_naming_the_kernel_cap() -> None:
    cap = receive_buffer_cap()
    assert cap is not None  # Linux: the only platform the server's tests run on
    asked = 2**31 - 1
    async with trio.open_nursery() as nursery:
        server = DTLSServer(psk=b"k" * 16, config=ServerConfig(receive_buffer=asked))
        recorder = await EventRecorder.start(nursery, server)
        await nursery.start(server.serve, "127.0.0.1", 0)
        await settle()
        nursery.cancel_scope.cancel()
    clipped = recorder.with_code("receive_buffer_clipped")
    assert len(clipped) == 1
    assert f"net.core.rmem_max is {cap}" in clipped[0].message
    assert f"not the {asked} asked for" in clipped[0].message


async def test_a_buffer_that_fits_is_not_reported() -> None:
    async with trio.open_nursery() as nursery:
        server = DTLSServer(psk=b"k" * 16, config=ServerConfig(receive_buffer=65_536))
        recorder = await EventRecorder.start(nursery, server)
        await nursery.start(server.serve, "127.0.0.1", 0)
        await settle()
        nursery.cancel_scope.cancel()
    assert "listening" in recorder.codes()
    assert recorder.with_code("receive_buffer_clipped") == []


@pytest.mark.parametrize("size", [0, 4_095, 2**31])
def test_an_impossible_buffer_size_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="receive_buffer must be between 4096"):
        ServerConfig(receive_buffer=size)
