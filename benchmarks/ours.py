"""Our server under test: :class:`trio_dtls_server.DTLSServer` with an echo handler.

Run by the orchestrator as ``python -m benchmarks.ours --suite SUITE --report-file PATH``.
Every limit the benchmark depends on is set explicitly (not left to defaults that may change):
room for 20,000 peers and 1,000 handshakes in flight, a 64-datagram inbox per peer, a 30-minute
idle timeout (longer than any run), no eviction, the benchmark MTU, and exactly one suite.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import trio

from trio_dtls_server import DTLSConnection, DTLSServer, ServerConfig
from trio_dtls_server.qt import qt_ack_handler

from .common import BENCH_IDENTITY, BENCH_KEY, BENCH_MTU
from .server_harness import run_server_main

__all__ = ["OurBenchServer", "bench_config", "echo"]


def bench_config(suite: str) -> ServerConfig:
    return ServerConfig(
        ciphers=suite,
        mtu=BENCH_MTU,
        max_peers=20_000,
        max_handshakes=1_000,
        peer_queue_size=64,
        idle_timeout=1_800.0,
        evict_idle_after=None,
        handshake_timeout=30.0,
    )


async def echo(connection: DTLSConnection) -> None:
    """Send every datagram back as it came: the same handler the Trio server runs."""
    async for data in connection:
        await connection.send(data)


class OurBenchServer:
    def __init__(self, suite: str, reply: str = "echo") -> None:
        handler = qt_ack_handler if reply == "qt" else echo
        self._server = DTLSServer(
            psk={BENCH_IDENTITY: BENCH_KEY}, handler=handler, config=bench_config(suite)
        )

    async def run(self, host: str, *, task_status: trio.TaskStatus[int]) -> None:
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(self._server.serve, host, 0)
            task_status.started(port)

    def peers(self) -> int:
        return self._server.peer_count

    def stats(self) -> dict[str, Any]:
        return self._server.statistics().as_dict()


def main(argv: Sequence[str] | None = None) -> int:
    return run_server_main(OurBenchServer, "trio_dtls_server.DTLSServer under test", argv)


if __name__ == "__main__":
    sys.exit(main())
