"""What a resumption costs when it lands on another worker (``serve --workers N``).

``python -m benchmarks.resumption_across_workers [--rounds 40]``: two workers on loopback
(:func:`trio_dtls_server.serve_workers`, PSK, the default cipher profile).  A client makes a
full handshake and keeps its session; then clients from new ports present that session.  The
kernel puts each new port on either worker: on the session's own worker the handshake is
abbreviated; on the other, which has its own session cache and ticket keys, it is a full one.
Prints the median and 90th percentile of the client's handshake time, in milliseconds, for
the three cases: full (no session), resumed (same worker), and "resumption on the other
worker".  The worker of each connection is the pid the handler answers with.
"""

from __future__ import annotations

import argparse
import os
import statistics
from functools import partial

import trio
from OpenSSL import SSL

from trio_dtls_server import (
    DTLSClient,
    DTLSConnection,
    Supervisor,
    serve_workers,
)
from trio_dtls_server.qt import QT_DEMO_KEY

IDENTITY = "bench"


async def _connect(port: int, session: SSL.Session | None = None) -> tuple[float, DTLSClient]:
    start = trio.current_time()
    client = await DTLSClient.connect(
        "127.0.0.1",
        port,
        identity=IDENTITY,
        key=QT_DEMO_KEY,
        tls_session=session,
    )
    return (trio.current_time() - start) * 1000.0, client


async def _pid_of(client: DTLSClient) -> int:
    await client.send(b"which")
    return int((await client.receive()).partition(b" ")[0])


async def measure(rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"full": [], "resumed": [], "other worker": []}
    async with trio.open_nursery() as nursery:
        supervisor: Supervisor = await nursery.start(
            partial(
                serve_workers,
                "127.0.0.1",
                0,
                workers=2,
                handler="benchmarks.resumption_across_workers:pid_echo",
                psk={IDENTITY: QT_DEMO_KEY},
            )
        )
        assert supervisor.local_address is not None
        port = supervisor.local_address[1]
        for _ in range(rounds):
            elapsed, first = await _connect(port)
            async with first:
                home = await _pid_of(first)
                session = first.tls_session
            times["full"].append(elapsed)
            elapsed, again = await _connect(port, session)
            async with again:
                pid = await _pid_of(again)
                resumed = again.resumed
            assert resumed == (pid == home)
            times["resumed" if resumed else "other worker"].append(elapsed)
        nursery.cancel_scope.cancel()
    return times


async def pid_echo(connection: DTLSConnection) -> None:
    """The workers' handler: answer with the worker's pid (imported by name in each worker)."""
    async for datagram in connection:
        await connection.send(f"{os.getpid()} ".encode() + datagram)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    rounds = parser.parse_args().rounds
    times = trio.run(measure, rounds)
    for name, values in times.items():
        if not values:
            print(f"{name:>13}: no samples")
            continue
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        print(
            f"{name:>13}: n={len(values):3d}  median {statistics.median(values):6.2f} ms  "
            f"p90 {p90:6.2f} ms"
        )


if __name__ == "__main__":
    main()
