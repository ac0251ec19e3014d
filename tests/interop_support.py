"""Driving external DTLS stacks (Qt, node, tinydtls, mbed TLS, wolfSSL) against our server.

Each peer is a subprocess started from ``tests/peers`` with a bounded lifetime
(:func:`run_peer` kills it by its handle if it outlives :data:`PEER_LIMIT`); :class:`AckLog`
is a server handler that answers like Qt's example and keeps the connections it served.
Shared by ``test_interop_stacks.py``, ``test_interop_mbedtls.py`` and ``test_interop_wolfssl.py``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from trio_dtls_server import DTLSConnection
from trio_dtls_server._transport import Address
from trio_dtls_server._wire import ClientHello, MalformedDatagram, parse_initial_client_hello
from trio_dtls_server.qt import qt_ack_handler

PEERS = Path(__file__).parent / "peers"
IDENTITY = "Alice (clone number 0)"
#: Longest any one peer process may live (each stops itself sooner: see its run limit).
PEER_LIMIT = 30.0


@dataclass
class AckLog:
    """A server handler that answers like Qt's example and keeps each connection it served."""

    connections: list[DTLSConnection] = field(default_factory=list)

    async def __call__(self, connection: DTLSConnection) -> None:
        self.connections.append(connection)
        await qt_ack_handler(connection)


@dataclass(frozen=True)
class PeerRun:
    returncode: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


async def kill_and_reap(process: trio.Process) -> None:
    """End a peer process we started, if it still runs (by its handle, never by name), and
    wait for it, also when the surrounding scope was cancelled: no test leaves one behind."""
    if process.returncode is None:
        process.kill()
    with trio.CancelScope(shield=True):
        await process.wait()


async def run_peer(command: Sequence[str]) -> PeerRun:
    """Run one peer to its end (stdout and stderr together); kill it if it outlives the limit."""
    environment = dict(os.environ, QT_QPA_PLATFORM="offscreen", NO_COLOR="1")
    process = await trio.lowlevel.open_process(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment,
        cwd=PEERS,
    )
    assert process.stdout is not None
    output = bytearray()
    try:
        with trio.fail_after(PEER_LIMIT):
            while chunk := await process.stdout.receive_some(65_536):
                output += chunk
            await process.wait()
    finally:
        await kill_and_reap(process)
    assert process.returncode is not None
    return PeerRun(process.returncode, output.decode(errors="replace").splitlines())


def client_hellos(received: list[tuple[bytes, Address]], peer: Address) -> list[ClientHello]:
    """The ClientHellos ``peer`` sent, parsed, in arrival order."""
    hellos: list[ClientHello] = []
    for datagram, source in received:
        if source != peer:
            continue
        try:
            hellos.append(parse_initial_client_hello(datagram).hello)
        except MalformedDatagram:
            continue  # a later flight, not a ClientHello
    return hellos


def ack_for(peer: Address) -> str:
    return f"to ({peer[0]}:{peer[1]}): ACK"
