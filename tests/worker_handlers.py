"""Handlers for the worker-process tests: importable by name in a worker (``module:function``)."""

from __future__ import annotations

import os

from trio_dtls_server import DTLSConnection, Handler


async def pid_echo(connection: DTLSConnection) -> None:
    """Answer each datagram with ``<the worker's pid> <the datagram>``: which worker served it."""
    async for datagram in connection:
        await connection.send(f"{os.getpid()} ".encode() + datagram)


async def exit_3(connection: DTLSConnection) -> None:
    """End the worker's process with exit code 3 at the first datagram: a crashing worker."""
    async for _ in connection:
        os._exit(3)


def make_counting_handler() -> Handler:
    """A handler factory: each worker calls it once; its handler numbers the connections that
    worker served, so two connections to one worker see 1 and then 2."""
    served = 0

    async def counting(connection: DTLSConnection) -> None:
        nonlocal served
        served += 1
        number = served
        async for _ in connection:
            await connection.send(f"{os.getpid()} connection {number}".encode())

    return counting
