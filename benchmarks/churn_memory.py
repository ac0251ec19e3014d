"""Does memory come back after handshake churn?  Server RSS after waves of abandoned handshakes.

``python -m benchmarks.churn_memory [--waves 12] [--clients 300] [--timeout 5] [--cli]`` starts
a server in a child process on 127.0.0.1, so that the RSS measured is the server's alone:

* by default :class:`trio_dtls_server.DTLSServer` (``handshake_timeout=--timeout``) in a small
  wrapper that answers the driver's questions on stdin/stdout;
* with ``--cli``, ``python -m trio_dtls_server serve --handshake-timeout T --quiet`` (what a
  deployment runs; only its RSS can be read, from ``/proc/PID/status``).

Then, wave after wave, ``--clients`` UDP sockets each do a real cookie exchange, send their
verified ClientHello (the server starts a handshake and sends its first flight) and go silent.
After each wave the driver waits until every hello reached the server and the deadline ended
every handshake (with ``--cli``: ``--timeout`` plus two seconds), then reads the report: VmRSS,
the RSS of ``[heap]`` (glibc's main arena) and of anonymous mappings (``/proc/PID/smaps``), the
thread count, and from the wrapper also glibc's ``mallinfo2()`` (bytes in use / free in the
heap), the number of live ``SSL.Connection`` objects and the server's heap trims.  ``peak`` is
the highest RSS seen (every 50 ms) while the wave's handshakes were live.

Diagnostics (wrapper only): by default the wrapper runs ``gc.collect()`` before a report;
``--no-gc`` does not (as in production: what only the cycle collector frees shows up);
``--trim`` calls ``malloc_trim(0)`` before a report (how much of the RSS is free memory glibc
kept); ``--tracemalloc`` prints the Python allocation sites that grew from the first to the last
report.  ``MALLOC_ARENA_MAX`` and other glibc tunables pass to the child.

Bounded: ``--waves`` (at most 50) waves of ``--clients`` (at most 1,000) sockets, one hello
each, loopback only; the whole run is capped at ``--max-time`` seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Any

from benchmarks.common import MallInfo2

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# -- the server child -----------------------------------------------------------------------------


def _libc() -> Any:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def smaps_summary(pid: int | str = "self") -> dict[str, int]:
    """RSS in KiB of ``[heap]`` (glibc's main arena), of anonymous mappings (other malloc arenas,
    mmapped blocks, pymalloc arenas) and of everything else (code, libraries); plus threads."""
    summary = {"heap_kib": 0, "anon_kib": 0, "other_kib": 0}
    kind = "other_kib"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
                name = fields[5] if len(fields) > 5 else ""
                kind = "heap_kib" if name == "[heap]" else "anon_kib" if not name else "other_kib"
            elif fields[0] == "Rss:":
                summary[kind] += int(fields[1])
    summary["threads"] = len(os.listdir(f"/proc/{pid}/task"))
    return summary


def _serve_child(timeout: float, trim: bool, trace: bool, collect: bool) -> None:
    import trio
    from OpenSSL import SSL

    from trio_dtls_server import DTLSServer, ServerConfig

    if trace:
        tracemalloc.start(25)
    # The events are still built and logged, to nowhere (one line per failed handshake is noise).
    library = logging.getLogger("trio_dtls_server")
    library.addHandler(logging.NullHandler())
    library.propagate = False
    libc = _libc()
    config = ServerConfig(handshake_timeout=timeout, max_handshakes=1_000)
    server = DTLSServer({"Qt DTLS example server": b"\x12\x34" * 8}, config=config)
    first: list[tracemalloc.Snapshot] = []

    def report() -> dict[str, Any]:
        uncollected = len(gc.get_objects()) if not collect else 0
        if collect:
            gc.collect()
        if trim:
            libc.malloc_trim(0)
        info = libc.mallinfo2()
        stats = server.statistics()
        return {
            "rss_kib": rss_kib(),
            **smaps_summary(),
            "heap_in_use": info.uordblks,
            "heap_free": info.fordblks,
            "heap_arena": info.arena,
            "mmapped": info.hblkhd,
            "peers": stats.peers,
            "handshaking": stats.handshaking,
            "started": stats.handshakes_started,
            "ssl_connections": sum(1 for o in gc.get_objects() if isinstance(o, SSL.Connection)),
            "gc_objects": uncollected,
            # The server's own heap trims (trio_dtls_server._heap), where this version has them.
            "heap_trims": getattr(getattr(server, "_heap", None), "trims", None),
            "trim_ms": getattr(getattr(server, "_heap", None), "last_duration", 0.0) * 1000,
            "gc_counts": gc.get_count(),
        }

    async def control(port: int) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
        while True:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = line.decode().strip()
                if command == "quit":
                    return
                if command == "state":
                    stats = server.statistics()
                    answer: dict[str, Any] = {"peers": stats.peers, "hs": stats.handshaking}
                    answer["arrived"] = stats.handshakes_started + stats.handshakes_refused
                    answer["rss_kib"] = rss_kib()
                elif command == "report":
                    answer = report()
                    if trace:
                        snapshot = tracemalloc.take_snapshot()
                        if not first:
                            first.append(snapshot)
                        else:
                            growth = snapshot.compare_to(first[0], "traceback")[:8]
                            answer["grew"] = [
                                [stat.size_diff, stat.count_diff, stat.traceback.format()[-6:]]
                                for stat in growth
                            ]
                else:
                    answer = {"error": command}
                print(json.dumps(answer), flush=True)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(server.serve, "127.0.0.1", 0)
            await control(port)
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- the driver -----------------------------------------------------------------------------------


class CliChild:
    """The server as ``python -m trio_dtls_server serve`` (what the issue measured): only RSS can
    be asked for; a wave has ended when ``--timeout`` plus two seconds have passed."""

    def __init__(self, arguments: argparse.Namespace) -> None:
        command = [sys.executable, "-m", "trio_dtls_server", "serve", "--port", "0", "--quiet"]
        command += ["--handshake-timeout", str(arguments.timeout), "--log-format", "json"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            found = re.search(r"listening on address \S+ and port (\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        else:
            raise RuntimeError("the server did not start")
        self.pid = self.process.pid
        self.timeout = arguments.timeout
        self._lines = 0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            self._lines += 1

    def ask(self, command: str) -> dict[str, Any]:
        if command == "state":
            self._waited = getattr(self, "_waited", 0.0) + 0.05
            done = self._waited > self.timeout + 2
            if done:
                self._waited = 0.0
            return {"peers": 0 if done else -1, "hs": 0, "rss_kib": rss_kib(self.pid)}
        time.sleep(0.5)
        answer: dict[str, Any] = {"rss_kib": rss_kib(self.pid), **smaps_summary(self.pid)}
        for name in ("heap_in_use", "heap_free", "ssl_connections", "started"):
            answer[name] = 0
        return answer

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Child:
    def __init__(self, arguments: argparse.Namespace) -> None:
        command = [sys.executable, "-m", "benchmarks.churn_memory", "--serve-child"]
        command += ["--timeout", str(arguments.timeout)]
        command += ["--trim"] if arguments.trim else []
        command += ["--tracemalloc"] if arguments.tracemalloc else []
        command += ["--no-gc"] if arguments.no_gc else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT, text=True
        )
        hello = self._line()
        self.port, self.pid = int(hello["port"]), int(hello["pid"])

    def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the server child ended")
        return dict(json.loads(line))

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._line()

    def close(self) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


def _verified_hellos(count: int, port: int) -> list[tuple[socket.socket, bytes]]:
    """``count`` sockets, each with its verified second ClientHello (cookie exchange done)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from hostile_support import new_client_session

    target = ("127.0.0.1", port)
    pairs = []
    sessions = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        sock.bind(("127.0.0.1", 0))
        session = new_client_session()
        [hello] = session.take_datagrams()
        sock.sendto(hello, target)
        pairs.append(sock)
        sessions.append(session)
    verified = []
    for sock, session in zip(pairs, sessions, strict=True):
        sock.settimeout(10)
        reply = sock.recv(65_536)
        session.receive_datagram(reply, 0.0)
        [hello] = session.take_datagrams()
        verified.append((sock, hello))
    return verified


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    child: Child | CliChild = CliChild(arguments) if arguments.cli else Child(arguments)
    started = time.monotonic()
    results: dict[str, Any] = {"waves": [], "peak_kib": []}
    try:
        results["start"] = child.ask("report")
        for wave in range(arguments.waves):
            if time.monotonic() - started > arguments.max_time:
                raise RuntimeError("--max-time reached")
            clients = _verified_hellos(arguments.clients, child.port)
            for sock, hello in clients:
                sock.sendto(hello, ("127.0.0.1", child.port))
            peak = 0
            deadline = time.monotonic() + arguments.timeout + 30
            while True:
                state = child.ask("state")
                peak = max(peak, int(state["rss_kib"]))
                # Done when every hello of this wave reached the server (a handshake or a
                # refusal) and the deadline ended every handshake.
                arrived = state.get("arrived", (wave + 1) * arguments.clients)
                if arrived >= (wave + 1) * arguments.clients and state["peers"] == state["hs"] == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"wave {wave}: the server still holds {state}")
                time.sleep(0.05)
            for sock, _ in clients:
                sock.close()
            report = child.ask("report")
            results["waves"].append(report)
            results["peak_kib"].append(peak)
            grew = report.pop("grew", None)
            print(
                f"wave {wave + 1:2d}: rss {report['rss_kib'] / 1024:7.1f} MiB  "
                f"peak {peak / 1024:7.1f} MiB  heap in use {report['heap_in_use'] / 2**20:7.1f} "
                f"MiB free {report['heap_free'] / 2**20:7.1f} MiB  "
                f"ssl {report['ssl_connections']}  started {report['started']}  "
                f"[heap] {report['heap_kib'] / 1024:.1f} anon {report['anon_kib'] / 1024:.1f} "
                f"threads {report['threads']}"
                + (
                    f"  trims {report['heap_trims']} ({report['trim_ms']:.1f} ms)"
                    if report.get("heap_trims") is not None
                    else ""
                ),
                flush=True,
            )
            if grew and wave == arguments.waves - 1:
                for size, count, frames in grew:
                    print(f"  +{size / 1024:.1f} KiB in {count:+d} blocks:")
                    for frame in frames:
                        print("     ", frame)
    finally:
        child.close()
    first = results["waves"][0]["rss_kib"]
    last = results["waves"][-1]["rss_kib"]
    start = results["start"]["rss_kib"]
    highest = max(results["peak_kib"])
    print(
        f"start {start / 1024:.1f} MiB, after wave 1 {first / 1024:.1f} MiB, after wave "
        f"{len(results['waves'])} {last / 1024:.1f} MiB ({(last / first - 1) * 100:+.1f}%), "
        f"highest peak {highest / 1024:.1f} MiB"
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, default=12)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=5.0, help="the handshake timeout")
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) before each report")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument(
        "--no-gc", action="store_true", help="no gc.collect() before a report (as in production)"
    )
    parser.add_argument("--max-time", type=float, default=900.0)
    parser.add_argument(
        "--cli", action="store_true", help="serve with `python -m trio_dtls_server`"
    )
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_child:
        _serve_child(arguments.timeout, arguments.trim, arguments.tracemalloc, not arguments.no_gc)
        return
    arguments.waves = max(1, min(arguments.waves, 50))
    arguments.clients = max(1, min(arguments.clients, 1_000))
    results = run(arguments)
    if arguments.json:
        with open(arguments.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
