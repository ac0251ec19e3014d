"""The orchestrator: start each server in its own process, drive it, compare, report.

For every workload it runs our server and ``trio.DTLSEndpoint`` one after the other, each in a
fresh subprocess, against the same load generator (itself a third process), so both figures
come from the same run on the same machine state.  Then it optionally profiles our server, runs
the OpenSSL floor probe, prints one table plus PASS/MISS per target, and writes the JSON.

Every child process is started here and ended here, by its handle, in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import ECDHE_PSK_SUITE, PLAIN_PSK_SUITE
from .profiling import summarise_collapsed, summarise_cprofile

__all__ = ["KINDS", "WORKLOADS", "BenchOptions", "ServerHandle", "run_benchmarks"]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The two servers under test: label -> module run with ``python -m``.
KINDS = {"ours": "benchmarks.ours", "trio": "benchmarks.trio_endpoint_server"}
#: Workload name -> (load generator workload, suite).
WORKLOADS = {
    "handshake-psk": ("handshake", PLAIN_PSK_SUITE),
    "handshake-ecdhe": ("handshake", ECDHE_PSK_SUITE),
    "roundtrip": ("roundtrip", ECDHE_PSK_SUITE),
    "memory": ("memory", ECDHE_PSK_SUITE),
    "capacity": ("capacity", ECDHE_PSK_SUITE),
}


@dataclass
class BenchOptions:
    """Everything that shapes a run (recorded in the JSON so runs can be compared)."""

    quick: bool = False
    duration: float = 10.0
    warmup: float = 1.0
    handshake_concurrency: int = 64
    handshake_drain: float = 8.0
    roundtrip_peers: int = 50
    roundtrip_size: int = 64
    memory_peers: int = 5_000
    capacity_peers: int = 10_000
    ping_interval: float = 5.0
    ping_size: int = 16
    hold: float = 12.0
    establish_budget: float = 150.0
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    profile: str = "auto"
    profile_workloads: list[str] = field(default_factory=lambda: ["roundtrip", "handshake-psk"])
    pin: bool = False
    floor: bool = True
    #: Rate workloads run this many alternating rounds (ours, trio, trio, ours, ...); the best
    #: round of each server is reported, every round is kept in the JSON.  On a shared machine
    #: other processes only ever slow a run down, so the best round is the least disturbed.
    rounds: int = 3

    @classmethod
    def quick_defaults(cls) -> BenchOptions:
        return cls(
            quick=True,
            duration=3.0,
            warmup=0.5,
            handshake_drain=4.0,
            memory_peers=1_000,
            capacity_peers=2_000,
            hold=6.0,
            establish_budget=40.0,
            profile_workloads=["roundtrip"],
            rounds=1,
        )


# -- child processes ------------------------------------------------------------------------------


@dataclass
class ServerHandle:
    kind: str
    suite: str
    pid: int
    port: int
    report_file: Path
    final: dict[str, Any] | None = None
    stderr_tail: str = ""


def _read_json_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                continue
            line = process.stdout.readline()
            if not line:
                break
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(line)
                if isinstance(data, dict):
                    return data
    raise RuntimeError(f"no JSON line from pid {process.pid} within {timeout:g} s")


def _stop(process: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """Ask the process to stop (SIGINT), kill it if it does not; return what it printed."""
    output = ""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output or ""


@contextlib.contextmanager
def server_process(
    kind: str,
    suite: str,
    workdir: Path,
    *,
    cprofile: Path | None = None,
    cpu: int | None = None,
    extra: Sequence[str] = (),
) -> Iterator[ServerHandle]:
    """Run one server under test; yields once it listens; always ends it.

    After the ``with`` block, the handle's ``final`` holds the server's last words (its
    counters) and ``stderr_tail`` the end of anything it logged.
    """
    # Fresh names per process: a report left by an earlier server must never be mistaken for
    # this one's (the generator matches reports by sequence number only).
    stem = f"{kind}-{time.monotonic_ns()}"
    report_file = workdir / f"{stem}-report.json"
    log_path = workdir / f"{stem}.log"
    command = [sys.executable, "-m", KINDS[kind], "--suite", suite, "--report-file"]
    command.append(str(report_file))
    if cprofile is not None:
        command += ["--cprofile", str(cprofile)]
    command += extra
    handle: ServerHandle | None = None
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True
        )
        try:
            if cpu is not None:
                os.sched_setaffinity(process.pid, {cpu})
            ready = _read_json_line(process, timeout=30.0)
            handle = ServerHandle(kind, suite, int(ready["pid"]), int(ready["port"]), report_file)
            yield handle
        finally:
            output = _stop(process)
            if handle is not None:
                handle.stderr_tail = log_path.read_text()[-1_000:]
                for line in output.splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        data = json.loads(line)
                        if isinstance(data, dict) and data.get("event") == "stopped":
                            handle.final = data


def _run_generator(
    arguments: list[str], timeout: float, *, cpu: int | None = None
) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.loadgen", *arguments]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        if cpu is not None:
            os.sched_setaffinity(process.pid, {cpu})
        output, errors = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, errors = process.communicate()
        return {"error": f"load generator exceeded {timeout:g} s", "stderr": errors[-2_000:]}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"error": f"load generator exit {process.returncode}", "stderr": errors[-2_000:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _generator_arguments(
    name: str, handle: ServerHandle, options: BenchOptions
) -> tuple[list[str], float]:
    """The load generator's command line for workload ``name``, and a hard time limit."""
    workload, suite = WORKLOADS[name]
    common = [
        workload,
        "--port",
        str(handle.port),
        "--server-pid",
        str(handle.pid),
        "--suite",
        suite,
        "--report-file",
        str(handle.report_file),
    ]
    timing = ["--warmup", str(options.warmup), "--duration", str(options.duration)]
    if workload == "handshake":
        extra = ["--concurrency", str(options.handshake_concurrency)]
        extra += ["--drain", str(options.handshake_drain)]
        limit = options.warmup + options.duration + options.handshake_drain + 30
        return [*common, *timing, *extra], limit
    if workload == "roundtrip":
        extra = ["--peers", str(options.roundtrip_peers), "--size", str(options.roundtrip_size)]
        return [*common, *timing, *extra], options.warmup + options.duration + 60
    budget = ["--budget", str(options.establish_budget)]
    if workload == "memory":
        extra = ["--peers", str(options.memory_peers), "--concurrency", "64", *budget]
        return [*common, *extra], options.establish_budget + 60
    extra = [
        "--peers",
        str(options.capacity_peers),
        "--concurrency",
        "64",
        "--ping-interval",
        str(options.ping_interval),
        "--size",
        str(options.ping_size),
        "--hold",
        str(options.hold),
        *budget,
    ]
    return [*common, *extra], options.establish_budget + options.hold + 60


def _cpus(options: BenchOptions) -> tuple[int | None, int | None]:
    """(server CPU, generator CPU) when pinning, else (None, None)."""
    if not options.pin:
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


def run_workload(
    name: str, kind: str, options: BenchOptions, workdir: Path, *, extra: Sequence[str] = ()
) -> dict[str, Any]:
    _, suite = WORKLOADS[name]
    server_cpu, generator_cpu = _cpus(options)
    started = time.monotonic()
    with server_process(kind, suite, workdir, cpu=server_cpu, extra=extra) as handle:
        arguments, limit = _generator_arguments(name, handle, options)
        result = _run_generator(arguments, limit, cpu=generator_cpu)
    result["server_final"] = handle.final
    if handle.stderr_tail.strip():
        result["server_stderr_tail"] = handle.stderr_tail
    result["elapsed_s"] = round(time.monotonic() - started, 2)
    return result


# -- profiling ------------------------------------------------------------------------------------


def _py_spy() -> str | None:
    beside_python = Path(sys.executable).parent / "py-spy"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("py-spy")


def profile_workload(name: str, options: BenchOptions, workdir: Path) -> dict[str, Any]:
    """Run workload ``name`` against our server once more, profiled; summarise the profile."""
    tool = options.profile
    spy = _py_spy()
    if tool == "auto":
        tool = "py-spy" if spy else "cprofile"
    if tool == "py-spy" and spy is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    _, suite = WORKLOADS[name]
    output = workdir / f"profile-{name}.{'txt' if tool == 'py-spy' else 'prof'}"
    cprofile = output if tool == "cprofile" else None
    server_cpu, generator_cpu = _cpus(options)
    with server_process("ours", suite, workdir, cprofile=cprofile, cpu=server_cpu) as handle:
        arguments, limit = _generator_arguments(name, handle, options)
        spy_process: subprocess.Popen[str] | None = None
        if tool == "py-spy" and spy is not None:
            seconds = max(1, round(options.warmup + options.duration))
            spy_command = [spy, "record", "--pid", str(handle.pid), "--duration", str(seconds)]
            spy_command += ["--rate", "250", "--format", "raw", "--function", "--native"]
            spy_command += ["--output", str(output)]
            spy_process = subprocess.Popen(
                spy_command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        try:
            result = _run_generator(arguments, limit, cpu=generator_cpu)
            spy_error = ""
            if spy_process is not None:
                try:
                    _, spy_error = spy_process.communicate(timeout=seconds + 30)
                except subprocess.TimeoutExpired:
                    spy_process.kill()
                    spy_process.communicate()
        finally:
            if spy_process is not None and spy_process.poll() is None:
                spy_process.kill()
                spy_process.wait()
    if not output.exists():
        return {"error": f"no profile written ({spy_error.strip()[-300:]})", "run": result}
    summary = summarise_collapsed(output) if tool == "py-spy" else summarise_cprofile(output)
    summary["workload"] = name
    summary["run"] = {
        key: result.get(key) for key in ("rate", "latency_ms", "server_cpu", "generator_cpu")
    }
    return summary


def memory_breakdown(options: BenchOptions, workdir: Path) -> dict[str, Any]:
    """Where our server's per-peer Python bytes are allocated (a tracemalloc diagnostic run).

    Tracing costs memory of its own, so this run's RSS is not the benchmark's; only the
    allocation sites (file:line, grown between the two reports) are kept, per peer.
    """
    peers = min(options.memory_peers, 2_000)
    diagnostic = replace(options, memory_peers=peers)
    result = run_workload("memory", "ours", diagnostic, workdir, extra=["--tracemalloc"])
    sites = _get_sites(result)
    established = result.get("server_peers_delta") or peers

    def per_peer(entries: list[list[Any]]) -> list[list[Any]]:
        return [
            [round(size / established, 1), round(blocks / established, 2), where]
            for size, blocks, where in entries
        ]

    traced = sum(entry[0] for entry in sites.get("files", []))
    return {
        "peers": established,
        "traced_kib_per_peer": round(traced / 1024 / established, 2),
        "lines": per_peer(sites.get("lines", [])),
        "files": per_peer(sites.get("files", [])),
        "error": result.get("error"),
    }


def _get_sites(result: dict[str, Any]) -> dict[str, list[list[Any]]]:
    after = result.get("after")
    if not isinstance(after, dict):
        return {}
    sites = after.get("allocation_sites")
    return sites if isinstance(sites, dict) else {}


def run_floor(options: BenchOptions) -> list[dict[str, Any]]:
    """The OpenSSL floor probes, each in a fresh process: the wheel's OpenSSL three ways
    (established with and without MODE_RELEASE_BUFFERS, and fresh), then the system's."""
    connections = "500" if options.quick else "2000"
    probes = [
        ("benchmarks.floor", []),
        ("benchmarks.floor", ["--no-release-buffers"]),
        ("benchmarks.floor", ["--no-handshake"]),
        ("benchmarks.floor_system", []),
    ]
    results: list[dict[str, Any]] = []
    for module, variant in probes:
        command = [sys.executable, "-m", module, "--connections", connections, *variant]
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        try:
            output, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        lines = [line for line in (output or "").splitlines() if line.startswith("{")]
        if lines:
            probe = json.loads(lines[-1])
            probe.setdefault("library", "system" if module.endswith("system") else "wheel")
            results.append(probe)
    return results


# -- the machine ----------------------------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    import cryptography
    import OpenSSL
    import trio
    from OpenSSL import SSL

    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gib = round(int(first.split()[1]) / 1024 / 1024, 1)
    load = None
    with contextlib.suppress(OSError):
        load = os.getloadavg()[0]
    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "trio": trio.__version__,
        "pyopenssl": OpenSSL.__version__,
        "cryptography": cryptography.__version__,
        "openssl": SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode(),
        "load_average_at_start": load,
    }


# -- the whole run --------------------------------------------------------------------------------


def run_benchmarks(
    options: BenchOptions,
    progress: Any = print,
    native: Callable[[Path], dict[str, Any]] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the native scenarios (``native``, given the scratch directory: see
    :mod:`benchmarks.native`), then every selected Python-generator workload against both
    servers; return the full results.  ``notes`` are printed with the report."""
    started = time.monotonic()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "options": asdict(options),
        "workloads": {},
        "profiles": {},
        "floor": [],
        "notes": list(notes),
    }
    with tempfile.TemporaryDirectory(prefix="dtls-bench-") as temporary:
        workdir = Path(temporary)
        if native is not None:
            results["native"] = native(workdir)
        for name in options.workloads:
            results["workloads"][name] = _run_pair(name, options, workdir, progress)
        if options.profile != "none":
            for name in options.profile_workloads:
                if name not in WORKLOADS:
                    continue
                progress(f"  profiling ours under {name} ...")
                results["profiles"][name] = profile_workload(name, options, workdir)
        if options.floor:
            progress("  OpenSSL floor probe ...")
            results["floor"] = run_floor(options)
            if "memory" in options.workloads:
                progress("  memory breakdown of ours (tracemalloc) ...")
                results["memory_breakdown"] = memory_breakdown(options, workdir)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


_RATE_WORKLOADS = ("handshake", "roundtrip")
_ROUND_SUMMARY_KEYS = ("rate", "latency_ms", "generator_cpu", "server_cpu", "other_cpu")


def _run_pair(name: str, options: BenchOptions, workdir: Path, progress: Any) -> dict[str, Any]:
    """Both servers under workload ``name``; rate workloads in alternating rounds, best kept."""
    workload, _ = WORKLOADS[name]
    rounds = max(1, options.rounds) if workload in _RATE_WORKLOADS else 1
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for number in range(rounds):
        # Alternate who goes first, so a drift in machine load favours neither server.
        order = list(KINDS) if number % 2 == 0 else list(reversed(KINDS))
        for kind in order:
            label = f"{name:<16} {kind:<5}" + (
                f" round {number + 1}/{rounds}" if rounds > 1 else ""
            )
            result = run_workload(name, kind, options, workdir)
            runs[kind].append(result)
            progress(f"  {label} {_one_line(name, result)}")
    pair: dict[str, Any] = {}
    for kind, results in runs.items():
        measured = [r for r in results if "error" not in r]
        best = max(measured, key=lambda r: r.get("rate") or 0.0) if measured else results[0]
        if rounds > 1:
            best = dict(best)
            best["rounds"] = [
                {key: r.get(key) for key in (*_ROUND_SUMMARY_KEYS, "error")} for r in results
            ]
        pair[kind] = best
    return pair


def _one_line(name: str, result: dict[str, Any]) -> str:
    if "error" in result:
        return f"ERROR {result['error']}"
    workload, _ = WORKLOADS[name]
    cpu = (
        f"CPU: generator {result.get('generator_cpu')}, server {result.get('server_cpu')}, "
        f"others {result.get('other_cpu')}"
    )
    if workload in ("handshake", "roundtrip"):
        latency = result.get("latency_ms", {})
        return (
            f"{result.get('rate')}/s p50 {latency.get('p50')} ms p99 {latency.get('p99')} ms; {cpu}"
        )
    if workload == "memory":
        return f"{result.get('rss_kib_per_peer')} KiB/peer ({result.get('peers_established')})"
    return (
        f"held {result.get('held_at_end')}, lost {result.get('lost')}, "
        f"server says {result.get('server_peers')}"
    )
