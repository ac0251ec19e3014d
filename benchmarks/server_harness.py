"""The wrapper every server under test runs in: ready line, memory reports, clean stop, profile.

A server under test is a separate process (so its RSS and CPU are its own).  The harness

* binds the server on loopback, port 0, and prints one JSON line ``{"event": "ready", ...}``
  with the port and PID on stdout: the orchestrator waits for that line;
* on ``SIGUSR1`` writes a :class:`~benchmarks.common.MemoryReport` (RSS, malloc and pymalloc
  bytes in use, peers held, the server's counters) to ``--report-file``: the load generator
  asks for one at the moments it chooses (before and after establishing peers);
* on ``SIGINT``/``SIGTERM`` prints a final ``{"event": "stopped", ...}`` line and exits 0;
* with ``--cprofile PATH``, runs under :mod:`cProfile` and dumps the stats there on exit (the
  fallback when py-spy is not installed);
* with ``--tracemalloc``, traces Python allocations and adds to every report after the first
  the allocation sites that grew since the first (a diagnostic run only: tracing itself costs
  memory, so its RSS figures are not the benchmark's).

The signal receiver is installed before the ready line is printed, so a ``SIGUSR1`` can never
hit the default action (which would kill the process).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import signal
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from .common import PLAIN_PSK_SUITE, self_memory_report, write_json_atomically

__all__ = ["BenchServer", "run_server_main"]


class BenchServer(Protocol):
    """What the harness needs from a server under test."""

    async def run(self, host: str, *, task_status: trio.TaskStatus[int]) -> None:
        """Bind ``host`` on a free port, report the port through ``task_status``, serve."""
        ...

    def peers(self) -> int:
        """Peers the server holds right now (its own count, not the generator's)."""
        ...

    def stats(self) -> dict[str, Any]:
        """The server's counters, JSON-serialisable."""
        ...


def _arguments(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--suite", default=PLAIN_PSK_SUITE, help="the one cipher suite to offer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--report-file", type=Path, required=True)
    parser.add_argument("--cprofile", type=Path, default=None, help="dump cProfile stats here")
    parser.add_argument("--tracemalloc", action="store_true", help="report allocation sites")
    parser.add_argument(
        "--reply",
        choices=["echo", "qt"],
        default="echo",
        help="echo each datagram, or answer Qt's 'to (address:port): ACK' (what dtlsload checks)",
    )
    return parser.parse_args(argv)


async def _serve(server: BenchServer, arguments: argparse.Namespace) -> None:
    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    with trio.open_signal_receiver(*wanted) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run, arguments.host)
            ready = {"event": "ready", "port": port, "pid": os.getpid()}
            print(json.dumps(ready), flush=True)
            sequence = 0
            first_snapshot: tracemalloc.Snapshot | None = None
            async for signum in signals:
                if signum != signal.SIGUSR1:
                    break
                sequence += 1
                sites = None
                if tracemalloc.is_tracing():
                    snapshot = tracemalloc.take_snapshot()
                    if first_snapshot is None:
                        first_snapshot = snapshot
                    else:
                        sites = _grown_sites(snapshot, first_snapshot)
                report = self_memory_report(sequence, server.peers(), server.stats(), sites)
                write_json_atomically(arguments.report_file, report.as_dict())
            final = {"event": "stopped", "peers": server.peers(), "stats": server.stats()}
            print(json.dumps(final), flush=True)
            nursery.cancel_scope.cancel()


def _grown_sites(
    snapshot: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot, top: int = 25
) -> dict[str, list[list[Any]]]:
    """Allocation growth since ``baseline``: ``[bytes, blocks, where]`` by line and by file."""
    grown: dict[str, list[list[Any]]] = {}
    for key_type, label in (("lineno", "lines"), ("filename", "files")):
        differences = snapshot.compare_to(baseline, key_type)
        differences.sort(key=lambda difference: difference.size_diff, reverse=True)
        entries: list[list[Any]] = []
        for difference in differences[:top]:
            frame = difference.traceback[0]
            where = "/".join(Path(frame.filename).parts[-2:])
            if key_type == "lineno":
                where += f":{frame.lineno}"
            entries.append([difference.size_diff, difference.count_diff, where])
        grown[label] = entries
    return grown


def run_server_main(
    make_server: Callable[[str, str], BenchServer], description: str, argv: Sequence[str] | None
) -> int:
    """Parse the common options, build the server for ``--suite`` and ``--reply``, run it
    until signalled."""
    arguments = _arguments(description, argv)
    if arguments.tracemalloc:
        tracemalloc.start(1)
    server = make_server(arguments.suite, arguments.reply)
    profiler = cProfile.Profile() if arguments.cprofile else None
    if profiler is not None:
        profiler.enable()
    try:
        trio.run(_serve, server, arguments)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(arguments.cprofile))
    return 0
