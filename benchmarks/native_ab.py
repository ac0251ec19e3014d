"""An A/B tool: our server (or other copies of our code) against ``trio.DTLSEndpoint``
under the native load generator, in interleaved rounds.

``python -m benchmarks.native_ab --dtlsload PATH [--rounds 3] [--connections 2000]``

Each round starts a fresh server process pinned to one core (``taskset -c 0``), runs the C
generator ``dtlsload`` (``shared/tools/dtlsload``) pinned to another, and stops the server:
PSK handshakes, ECDHE-PSK handshakes, then closed-loop round trips.  Ours is the command-line
server (``python -m trio_dtls_server serve --quiet``, as a user runs it), the baseline
``benchmarks.trio_endpoint_server`` (an echo handler, so its replies are not checked for the
``ACK`` text).  Servers alternate within every round, so a slower machine slows both.  Besides
the generator's rates it reads the server's CPU time from ``/proc`` before and after the load:
CPU µs per handshake or round trip is steadier than a rate when other work shares the machine.
Prints one line per measurement and the medians with the ours ÷ trio ratios at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from .common import stop_process

PSK_HEX = "5f1e0c7a9b3d4e2f8a6c1b0d9e7f3a25"  # benchmarks.common.BENCH_KEY
IDENTITY = "bench-client"  # benchmarks.common.BENCH_IDENTITY
SUITES = ("PSK-AES128-GCM-SHA256", "ECDHE-PSK-CHACHA20-POLY1305")
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def _start(
    kind: str, suite: str, server_core: str, variants: dict[str, str]
) -> tuple[subprocess.Popen[str], int]:
    pin = ["taskset", "-c", server_core, sys.executable, "-m"]
    env = dict(os.environ)
    if kind != "trio":
        if kind in variants:
            env["PYTHONPATH"] = variants[kind]
        command = [*pin, "trio_dtls_server", "serve", "--port", "0", "--psk-hex", PSK_HEX]
        command += ["--quiet"]
    else:
        report = Path(tempfile.gettempdir()) / f"native-trio-{os.getpid()}.json"
        command = [*pin, "benchmarks.trio_endpoint_server", "--suite", suite]
        command += ["--report-file", str(report)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    if kind != "trio":
        match = re.search(r"port (\d+)", line)
        assert match, line
        return process, int(match.group(1))
    return process, int(json.loads(line)["port"])


def _measure(
    dtlsload: str, kind: str, mode: str, suite: str, arguments: argparse.Namespace
) -> dict[str, float]:
    process, port = _start(kind, suite, arguments.server_core, arguments.variants)
    try:
        time.sleep(0.3)
        load = ["taskset", "-c", arguments.load_core, dtlsload, "--port", str(port), "--quiet"]
        load += ["--cipher", suite, "--psk-hex", PSK_HEX, "--identity", IDENTITY]
        if mode == "handshake":
            load += ["--mode", "handshake", "--connections", str(arguments.connections)]
            load += ["--concurrency", "64"]
        else:
            load += ["--mode", "echo", "--connections", "50", "--duration", str(arguments.duration)]
            if kind == "trio":
                load.append("--no-check-reply")
        before = _cpu_seconds(process.pid)
        started = time.monotonic()
        result = json.loads(subprocess.run(load, capture_output=True, text=True, check=True).stdout)
        wall = time.monotonic() - started
        after = _cpu_seconds(process.pid)
        user, system = after[0] - before[0], after[1] - before[1]
        cpu = user + system
    finally:
        stop_process(process, timeout=10)
    if mode == "handshake":
        done = result["handshakes_completed"]
        rate = result["handshakes_per_s_to_last_ok"]
        failed = result["handshakes_failed"]
    else:
        done = result["round_trips"]
        rate = result["msgs_per_s"]
        failed = result.get("timeouts", 0) + result.get("bad_replies", 0)
    cpu_per = cpu / max(done, 1) * 1e6
    return {
        "rate": rate,
        "cpu_us": cpu_per,
        "user_us": user / max(done, 1) * 1e6,
        "sys_us": system / max(done, 1) * 1e6,
        "failed": failed,
        "wall": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtlsload", default="/tmp/dtlsload/dtlsload")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--server-core", default="0")
    parser.add_argument("--load-core", default="1")
    parser.add_argument("--only", choices=("psk", "ecdhe", "echo"), action="append")
    parser.add_argument("--no-trio", action="store_true", help="compare our variants only")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=PYTHONPATH",
        help="also run our server from another tree (e.g. base=/tmp/base), interleaved",
    )
    arguments = parser.parse_args()
    arguments.variants = dict(v.split("=", 1) for v in arguments.variant)
    kinds = ["ours", *arguments.variants] + ([] if arguments.no_trio else ["trio"])
    workloads = [
        ("psk", "handshake", SUITES[0]),
        ("ecdhe", "handshake", SUITES[1]),
        ("echo", "echo", SUITES[0]),
    ]
    if arguments.only:
        workloads = [w for w in workloads if w[0] in arguments.only]
    results: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for round_number in range(arguments.rounds):
        for name, mode, suite in workloads:
            shift = round_number % len(kinds)
            order = kinds[shift:] + kinds[:shift]
            for kind in order:
                measured = _measure(arguments.dtlsload, kind, mode, suite, arguments)
                results[(name, kind)].append(measured)
                print(
                    f"round {round_number + 1} {name:5} {kind:6} rate {measured['rate']:9.0f}/s"
                    f"  server CPU {measured['cpu_us']:7.1f} µs each"
                    f" (user {measured['user_us']:.1f}, sys {measured['sys_us']:.1f})"
                    f"  failed {measured['failed']}",
                    flush=True,
                )
    print("medians:")
    for name, _, _ in workloads:
        trio = results[(name, "trio")] or results[(name, "ours")]
        rate_t = statistics.median(m["rate"] for m in trio)
        cpu_t = statistics.median(m["cpu_us"] for m in trio)
        for kind in ["ours", *arguments.variants]:
            ours = results[(name, kind)]
            rate_o = statistics.median(m["rate"] for m in ours)
            cpu_o = statistics.median(m["cpu_us"] for m in ours)
            best_o = min(m["cpu_us"] for m in ours)
            best_t = min(m["cpu_us"] for m in trio)
            user_o = statistics.median(m["user_us"] for m in ours)
            sys_o = statistics.median(m["sys_us"] for m in ours)
            print(
                f"{name:5} {kind:6} {rate_o:9.0f}/s (user {user_o:.1f} sys {sys_o:.1f} µs)"
                f" trio {rate_t:9.0f}/s rate ratio"
                f" {rate_o / rate_t:5.2f}x | CPU µs {cpu_o:6.1f} trio {cpu_t:6.1f}"
                f" CPU ratio {cpu_t / cpu_o:5.2f}x | least CPU µs {best_o:6.1f} trio {best_t:6.1f}"
                f" ratio {best_t / best_o:5.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
