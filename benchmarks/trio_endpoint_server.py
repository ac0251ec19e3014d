"""The baseline under test: ``trio.DTLSEndpoint`` serving the same echo workload.

Run by the orchestrator as ``python -m benchmarks.trio_endpoint_server --suite SUITE ...``.
It gets what our server gets: a context with the same DTLS-1.2-only options, the same single
suite and the same PSK (through a fixed-key cffi callback, see :mod:`benchmarks.common`), the
same MTU on every channel, the same 4 MiB socket buffers, a 64-datagram queue per channel
(``incoming_packets_buffer``, matching our ``peer_queue_size``) and the same 30 s handshake
deadline.  Trio does its own cookie exchange and runs its own handshake loop
(``DTLSChannel.do_handshake``); the handler then echoes ``receive()`` into ``send()``.
"""

from __future__ import annotations

import socket as stdlib_socket
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import trio
from OpenSSL import SSL

from .common import BENCH_MTU, SERVER_SOCKET_BUFFER, new_trio_server_context
from .server_harness import run_server_main

__all__ = ["TrioEndpointBenchServer"]

HANDSHAKE_TIMEOUT = 30.0
INCOMING_PACKETS_BUFFER = 64


class TrioEndpointBenchServer:
    def __init__(self, suite: str, reply: str = "echo") -> None:
        self._context = new_trio_server_context(suite)
        #: ``qt``: answer as Qt's handler (our default) does, ``to (address:port): ACK``,
        #: which dtlsload checks; ``echo``: send each datagram back.
        self._qt_reply = reply == "qt"
        self._endpoint: trio.DTLSEndpoint | None = None
        self._counters: Counter[str] = Counter()

    async def run(self, host: str, *, task_status: trio.TaskStatus[int]) -> None:
        sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
        for option in (stdlib_socket.SO_RCVBUF, stdlib_socket.SO_SNDBUF):
            sock.setsockopt(stdlib_socket.SOL_SOCKET, option, SERVER_SOCKET_BUFFER)
        await sock.bind((host, 0))
        port = int(sock.getsockname()[1])
        with trio.DTLSEndpoint(sock, incoming_packets_buffer=INCOMING_PACKETS_BUFFER) as endpoint:
            self._endpoint = endpoint
            async with trio.open_nursery() as nursery:
                await nursery.start(endpoint.serve, self._context, self._handle)
                task_status.started(port)

    async def _handle(self, channel: trio.DTLSChannel) -> None:
        channel.set_ciphertext_mtu(BENCH_MTU)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await channel.do_handshake()
        except trio.TooSlowError:
            self._counters["handshakes timed out"] += 1
            return
        except (SSL.Error, trio.BrokenResourceError, trio.ClosedResourceError):
            self._counters["handshakes failed"] += 1
            return
        self._counters["handshakes completed"] += 1
        try:
            host, port = channel.peer_address[:2]
            qt_reply = f"to ({host}:{port}): ACK".encode("latin-1")
            while True:
                data = await channel.receive()
                await channel.send(qt_reply if self._qt_reply else data)
        except SSL.ZeroReturnError:
            self._counters["remote closed"] += 1
        except (SSL.Error, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._counters[f"ended: {type(error).__name__}"] += 1

    def peers(self) -> int:
        # Trio keeps one channel per peer address in this (weak) table until it is closed.
        return len(self._endpoint._streams) if self._endpoint is not None else 0

    def stats(self) -> dict[str, Any]:
        return dict(self._counters)


def main(argv: Sequence[str] | None = None) -> int:
    return run_server_main(TrioEndpointBenchServer, "trio.DTLSEndpoint under test", argv)


if __name__ == "__main__":
    sys.exit(main())
