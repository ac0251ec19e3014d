"""The scenarios driven by the native generator (dtlsload), plus the churn scenario.

What users will see: our server runs as users run it, ``python -m trio_dtls_server serve``
(with ``--workers N`` for the scaling table), the baseline is ``trio.DTLSEndpoint`` in
:mod:`benchmarks.trio_endpoint_server` answering as Qt's handler does, and the load comes from
dtlsload processes pinned to CPUs of their own (:func:`plan_cpus`).

Scenarios (each recorded under ``results["native"]``):

* ``per_core``: ours (1 worker) and trio on **one** core, dtlsload on another: handshakes/s for
  PSK-AES128-GCM-SHA256 and ECDHE-PSK-CHACHA20-POLY1305, round trips/s with 50 peers, and each
  server's RSS (now and peak); alternating rounds, best kept;
* ``scaling``: ours with 1, 2, 4, 8 ... workers (each pinned to its own core), the same
  workload, handshakes/s and round trips/s and the ratio to 1 worker;
* ``burst``: N established peers each fire K requests at the same moment (dtlsload's echo mode
  starts every association's K requests back to back), once with the kernel's default receive
  buffer (``--receive-buffer`` = ``net.core.rmem_default``: *before*) and once with the
  server's default (8 MiB requested: *after*): replies lost and the kernel's drop counter
  (``statistics().kernel_drops``, read through ``--metrics``);
* ``churn``: waves of 300 clients that pass the cookie exchange, send their verified
  ClientHello and go silent (:mod:`benchmarks.churn`), ``--handshake-timeout 5``, the next wave
  once the previous one's handshakes have all timed out; RSS after each wave's cleanup.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    BENCH_IDENTITY,
    BENCH_KEY,
    BENCH_MTU,
    ECDHE_PSK_SUITE,
    PLAIN_PSK_SUITE,
    cpu_seconds_of,
    rss_kib_of,
    stop_process,
)
from .dtlsload import Generator, GroupResult, run_group
from .runner import server_process

__all__ = [
    "SCENARIOS",
    "CpuPlan",
    "NativeOptions",
    "OurServer",
    "parse_metrics",
    "plan_cpus",
    "run_native",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on address (\S+) and port (\d+)")


@dataclass
class NativeOptions:
    """What shapes the native scenarios (recorded in the JSON)."""

    quick: bool = False
    rounds: int = 2
    handshakes: int = 5_000
    handshake_concurrency: int = 64
    echo_peers: int = 50
    echo_duration: float = 8.0
    scaling_workers: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    scaling_handshakes_per_worker: int = 6_000
    scaling_echo_peers: int = 256
    #: Handshakes in flight in the scaling table, per worker of the *largest* row: the same
    #: total for every row (so the load is the same), enough to keep the largest busy, and
    #: few enough that one worker answers within dtlsload's 1 s retransmission timeout.
    scaling_concurrency_per_worker: int = 32
    max_generators: int = 8
    burst_peers: int = 1_000
    burst_inflight: int = 3
    burst_duration: float = 4.0
    churn_waves: int = 12
    churn_clients: int = 300
    churn_handshake_timeout: float = 5.0
    scenarios: list[str] = field(default_factory=lambda: ["per_core", "scaling", "burst", "churn"])

    @classmethod
    def quick_defaults(cls) -> NativeOptions:
        return cls(
            quick=True,
            rounds=1,
            handshakes=600,
            echo_duration=2.0,
            scaling_handshakes_per_worker=500,
            scaling_echo_peers=64,
            burst_peers=300,
            burst_inflight=8,
            burst_duration=2.0,
            churn_waves=3,
        )


# -- which CPUs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuPlan:
    """Server cores and generator cores for one run.

    ``shared`` is True when some generator core is also a server core (a machine too small to
    keep them apart): the figures then include the generator's competition for that core.
    """

    server: tuple[int, ...]
    generators: tuple[int, ...]

    @property
    def shared(self) -> bool:
        return bool(set(self.server) & set(self.generators))

    def describe(self) -> str:
        text = (
            f"server on CPU {_cpu_list(self.server)}, dtlsload on CPU {_cpu_list(self.generators)}"
        )
        if self.shared:
            text += " (shared: the generator competes with the server)"
        return text


def _cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def plan_cpus(available: Sequence[int], server_cores: int, generator_cores: int) -> CpuPlan:
    """Server on the first ``server_cores`` CPUs of ``available``, generators on the last
    ``generator_cores`` (at least one each).  The generator cores do not depend on
    ``server_cores``, so every row of the scaling table has the same load; where the two
    overlap (2 CPUs, 2 workers) the plan says so (:attr:`CpuPlan.shared`)."""
    cpus = sorted(available)
    if not cpus:
        raise ValueError("no CPUs available")
    servers = tuple(cpus[: max(1, min(server_cores, len(cpus)))])
    count = max(1, min(generator_cores, len(cpus)))
    return CpuPlan(server=servers, generators=tuple(cpus[-count:]))


def generator_count(available: Sequence[int], largest_server: int, maximum: int) -> int:
    """How many dtlsload processes: the CPUs the largest server leaves free, 1 to ``maximum``."""
    return max(1, min(maximum, len(available) - largest_server))


# -- the servers under test -------------------------------------------------------------------


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {metric name: sum over its label sets} (comments skipped)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value_part = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        try:
            value = float(value_part)
        except ValueError:
            continue
        totals[name] = totals.get(name, 0.0) + value
    return totals


def _children(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            children += [int(child) for child in text.split()]
    return children


def _peak_rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        if match:
            return int(match.group(1))
    return None


@dataclass
class OurServer:
    """A running ``python -m trio_dtls_server serve`` (one process, or a supervisor and its
    workers), its port, and its metrics endpoint."""

    pid: int
    port: int
    metrics_port: int
    workers: list[int]
    log: Path

    def processes(self) -> list[int]:
        return [self.pid, *self.workers]

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return parse_metrics(response.read().decode("utf-8", "replace"))

    def rss_kib(self) -> int:
        return sum(_safe(rss_kib_of, pid) or 0 for pid in self.processes())

    def peak_rss_kib(self) -> int:
        return sum(_peak_rss_kib(pid) or 0 for pid in self.processes())

    def cpu_seconds(self) -> float:
        return sum(_safe(cpu_seconds_of, pid) or 0.0 for pid in self.processes())


def _safe(function: Any, pid: int) -> Any:
    try:
        return function(pid)
    except (OSError, RuntimeError):
        return None


def our_command(
    suite: str,
    metrics_port: int,
    *,
    workers: int = 1,
    receive_buffer: int | None = None,
    handshake_timeout: float = 30.0,
) -> list[str]:
    """The ``serve`` command line: the limits of :func:`benchmarks.ours.bench_config`, set
    explicitly, ``--quiet`` (no line per event: the trio server prints none either)."""
    command = [sys.executable, "-m", "trio_dtls_server", "serve", "--host", "127.0.0.1"]
    command += ["--port", "0", "--quiet", "--psk-hex", BENCH_KEY.hex(), "--ciphers", suite]
    command += ["--mtu", str(BENCH_MTU), "--max-peers", "20000", "--max-handshakes", "1000"]
    command += ["--peer-queue-size", "64", "--idle-timeout", "1800"]
    command += ["--evict-idle-after", "none", "--handshake-timeout", f"{handshake_timeout:g}"]
    command += ["--metrics", f"127.0.0.1:{metrics_port}", "--workers", str(workers)]
    if receive_buffer is not None:
        command += ["--receive-buffer", str(receive_buffer)]
    return command


@contextlib.contextmanager
def our_server(
    suite: str,
    workdir: Path,
    cpus: Sequence[int],
    *,
    workers: int = 1,
    receive_buffer: int | None = None,
    handshake_timeout: float = 30.0,
) -> Iterator[OurServer]:
    """Run ``serve`` pinned to ``cpus`` (worker K on ``cpus[K % len]``); yield once it
    listens and every worker runs; always stop it (SIGINT, then SIGKILL after 15 s)."""
    metrics_port = _free_tcp_port()
    log = workdir / f"ours-{time.monotonic_ns()}.log"
    command = our_command(
        suite,
        metrics_port,
        workers=workers,
        receive_buffer=receive_buffer,
        handshake_timeout=handshake_timeout,
    )
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_pin_set(cpus),
        )
    try:
        port = _wait_listening(process, log, timeout=60.0)
        worker_pids = _wait_workers(process.pid, workers) if workers > 1 else []
        for index, pid in enumerate(worker_pids):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, {cpus[index % len(cpus)]})
        server = OurServer(process.pid, port, metrics_port, worker_pids, log)
        _wait_metrics(server, timeout=15.0)
        yield server
    finally:
        stop_process(process, timeout=15)


def _pin_set(cpus: Sequence[int]) -> Any:
    wanted = set(cpus)

    def pin() -> None:
        os.sched_setaffinity(0, wanted)

    return pin


def _wait_listening(process: subprocess.Popen[str], log: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return int(match.group(2))
        if process.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-600:]
    raise RuntimeError(f"our server did not start listening ({tail.strip()})")


def _wait_workers(pid: int, workers: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = _children(pid)
        if len(children) >= workers:
            return children[:workers]
        time.sleep(0.05)
    return _children(pid)


def _wait_metrics(server: OurServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.metrics()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- dtlsload command lines -------------------------------------------------------------------


def _common_arguments(port: int, suite: str) -> list[str]:
    return [
        "--port",
        str(port),
        "--cipher",
        suite,
        "--psk-hex",
        BENCH_KEY.hex(),
        "--identity",
        BENCH_IDENTITY.decode("ascii"),
        "--mtu",
        str(BENCH_MTU),
        "--no-tickets",
    ]


def _split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal whole shares (each at least 1)."""
    base, extra = divmod(total, parts)
    return [max(1, base + (1 if index < extra else 0)) for index in range(parts)]


def handshake_group(
    generator: Generator, port: int, suite: str, total: int, concurrency: int, cpus: Sequence[int]
) -> GroupResult:
    arguments = [
        [
            *_common_arguments(port, suite),
            "--connections",
            str(count),
            "--concurrency",
            str(concurrency),
            "--max-time",
            "300",
        ]
        for count in _split(total, len(cpus))
    ]
    return run_group(generator, "handshake", arguments, list(cpus), timeout=320)


def echo_group(
    generator: Generator,
    port: int,
    suite: str,
    peers: int,
    duration: float,
    cpus: Sequence[int],
    *,
    inflight: int = 1,
    size: int = 64,
) -> GroupResult:
    arguments = [
        [
            *_common_arguments(port, suite),
            "--connections",
            str(count),
            "--concurrency",
            "64",
            "--duration",
            f"{duration:g}",
            "--inflight",
            str(inflight),
            "--size",
            str(size),
            "--max-time",
            f"{120 + 2 * duration:g}",
        ]
        for count in _split(peers, len(cpus))
    ]
    return run_group(generator, "echo", arguments, list(cpus), timeout=150 + 2 * duration)


# -- scenarios ----------------------------------------------------------------------------------

#: Workload name -> (dtlsload mode, suite).
PER_CORE_WORKLOADS = {
    "handshake-psk": ("handshake", PLAIN_PSK_SUITE),
    "handshake-ecdhe": ("handshake", ECDHE_PSK_SUITE),
    "roundtrip": ("echo", ECDHE_PSK_SUITE),
}


def _measure(
    server_cpu: Callable[[], float], run: Callable[[], GroupResult]
) -> tuple[GroupResult, float, float]:
    """Run ``run()`` and return its result, the wall time and the server's CPU seconds used."""
    before = server_cpu()
    started = time.monotonic()
    result = run()
    wall = time.monotonic() - started
    return result, wall, server_cpu() - before


def _record(group: GroupResult, wall: float, server_cpu_s: float) -> dict[str, Any]:
    record = dict(group.summary)
    record["server_cpu"] = round(server_cpu_s / wall, 3) if wall > 0 else None
    record["server_cpu_s"] = round(server_cpu_s, 3)
    # Server CPU per operation: the figure a busy shared machine disturbs least (a server
    # that gets half a core does half the operations, each at about the same cost).
    key = "handshakes_completed" if group.summary.get("mode") == "handshake" else "round_trips"
    operations = group.summary.get(key)
    record["server_cpu_us_per_op"] = (
        round(server_cpu_s / operations * 1e6, 1)
        if isinstance(operations, int) and operations
        else None
    )
    record["wall_s"] = round(wall, 2)
    if group.errors:
        record["errors"] = group.errors
    return record


def _run_per_core_once(
    kind: str,
    workload: str,
    generator: Generator,
    options: NativeOptions,
    plan: CpuPlan,
    workdir: Path,
) -> dict[str, Any]:
    mode, suite = PER_CORE_WORKLOADS[workload]
    generator_cpus = plan.generators[:1]  # one generator: the per-core pairing

    def drive(port: int) -> GroupResult:
        if mode == "handshake":
            return handshake_group(
                generator,
                port,
                suite,
                options.handshakes,
                options.handshake_concurrency,
                generator_cpus,
            )
        return echo_group(
            generator, port, suite, options.echo_peers, options.echo_duration, generator_cpus
        )

    if kind == "ours":
        with our_server(suite, workdir, plan.server) as server:
            group, wall, cpu = _measure(server.cpu_seconds, lambda: drive(server.port))
            record = _record(group, wall, cpu)
            record["rss_kib"] = server.rss_kib()
            record["peak_rss_kib"] = server.peak_rss_kib()
        return record
    with server_process(
        "trio", suite, workdir, cpu=plan.server[0], extra=["--reply", "qt"]
    ) as handle:
        pid = handle.pid
        group, wall, cpu = _measure(lambda: cpu_seconds_of(pid), lambda: drive(handle.port))
        record = _record(group, wall, cpu)
        record["rss_kib"] = rss_kib_of(pid)
        record["peak_rss_kib"] = _peak_rss_kib(pid)
    return record


def run_per_core(
    generator: Generator,
    options: NativeOptions,
    available: Sequence[int],
    workdir: Path,
    progress: Any,
) -> dict[str, Any]:
    """Ours (1 worker) and trio on one core each, in alternating rounds; the best round kept."""
    plan = plan_cpus(available, 1, 1)
    out: dict[str, Any] = {"cpus": plan.describe(), "shared": plan.shared, "workloads": {}}
    for workload in PER_CORE_WORKLOADS:
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trio": []}
        for number in range(max(1, options.rounds)):
            order = ["ours", "trio"] if number % 2 == 0 else ["trio", "ours"]
            for kind in order:
                try:
                    record = _run_per_core_once(kind, workload, generator, options, plan, workdir)
                except (RuntimeError, OSError) as error:
                    record = {"error": str(error)}
                runs[kind].append(record)
                progress(f"  native {workload:<16} {kind:<5} {_line(record)}")
        pair: dict[str, Any] = {}
        for kind, records in runs.items():
            good = [r for r in records if "error" not in r]
            chosen: dict[str, Any] = max(good, key=_rate_of) if good else records[0]
            best = dict(chosen)
            best["rounds"] = [r.get("rate") for r in records]
            pair[kind] = best
        out["workloads"][workload] = pair
    return out


def run_scaling(
    generator: Generator,
    options: NativeOptions,
    available: Sequence[int],
    workdir: Path,
    progress: Any,
) -> dict[str, Any]:
    """Ours with each worker count, the same load each time; ratio to 1 worker."""
    counts = sorted({n for n in options.scaling_workers if n >= 1 and n <= len(available)})
    if 1 not in counts:
        counts.insert(0, 1)
    generators = generator_count(available, max(counts), options.max_generators)
    in_flight = options.scaling_concurrency_per_worker * max(counts)
    per_generator = max(1, in_flight // generators)
    rows: list[dict[str, Any]] = []
    for workers in counts:
        plan = plan_cpus(available, workers, generators)
        row: dict[str, Any] = {"workers": workers, "cpus": plan.describe(), "shared": plan.shared}
        try:
            with our_server(PLAIN_PSK_SUITE, workdir, plan.server, workers=workers) as server:
                total = options.scaling_handshakes_per_worker * workers
                group, wall, cpu = _measure(
                    server.cpu_seconds,
                    functools.partial(
                        handshake_group,
                        generator,
                        server.port,
                        PLAIN_PSK_SUITE,
                        total,
                        per_generator,
                        plan.generators,
                    ),
                )
                row["handshake"] = _record(group, wall, cpu)
                group, wall, cpu = _measure(
                    server.cpu_seconds,
                    functools.partial(
                        echo_group,
                        generator,
                        server.port,
                        PLAIN_PSK_SUITE,
                        options.scaling_echo_peers,
                        options.echo_duration,
                        plan.generators,
                    ),
                )
                row["roundtrip"] = _record(group, wall, cpu)
                row["rss_kib"] = server.rss_kib()
                row["processes"] = len(server.processes())
        except (RuntimeError, OSError) as error:
            row["error"] = str(error)
        rows.append(row)
        progress(
            f"  native scaling {workers} worker(s): handshakes/s "
            f"{_get_rate(row, 'handshake')} (retransmits "
            f"{row.get('handshake', {}).get('hs_retransmits')}), round trips/s "
            f"{_get_rate(row, 'roundtrip')}; {plan.describe()}"
        )
    base_hs, base_rt = _get_rate(rows[0], "handshake"), _get_rate(rows[0], "roundtrip")
    for row in rows:
        row["handshake_ratio"] = _ratio(_get_rate(row, "handshake"), base_hs)
        row["roundtrip_ratio"] = _ratio(_get_rate(row, "roundtrip"), base_rt)
    return {
        "generators": generators,
        "suite": PLAIN_PSK_SUITE,
        "handshakes_per_worker": options.scaling_handshakes_per_worker,
        "handshakes_in_flight": per_generator * generators,
        "echo_peers": options.scaling_echo_peers,
        "rows": rows,
    }


def _rate_of(record: dict[str, Any]) -> float:
    rate = record.get("rate")
    return float(rate) if isinstance(rate, int | float) else 0.0


def _get_rate(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if isinstance(value, dict) and isinstance(value.get("rate"), int | float):
        return float(value["rate"])
    return None


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return round(value / base, 3)


def _read_int(path: str, fallback: int | None) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return fallback


def run_burst(
    generator: Generator,
    options: NativeOptions,
    available: Sequence[int],
    workdir: Path,
    progress: Any,
) -> dict[str, Any]:
    """N peers fire K requests each at once; before (kernel default buffer) and after."""
    plan = plan_cpus(available, 1, 1)
    default = _read_int("/proc/sys/net/core/rmem_default", 212_992)
    rmem_max = _read_int("/proc/sys/net/core/rmem_max", None)
    out: dict[str, Any] = {
        "cpus": plan.describe(),
        "peers": options.burst_peers,
        "inflight": options.burst_inflight,
        "burst_datagrams": options.burst_peers * options.burst_inflight,
        "rmem_default": default,
        "rmem_max": rmem_max,
        "runs": {},
    }
    for label, buffer in (("before", default), ("after", None)):
        record: dict[str, Any] = {
            "receive_buffer_requested": buffer if buffer is not None else "server default (8 MiB)"
        }
        try:
            with our_server(ECDHE_PSK_SUITE, workdir, plan.server, receive_buffer=buffer) as server:
                drops_before = server.metrics().get("dtls_kernel_dropped_datagrams_total", 0.0)
                group, wall, cpu = _measure(
                    server.cpu_seconds,
                    lambda: echo_group(
                        generator,
                        server.port,
                        ECDHE_PSK_SUITE,
                        options.burst_peers,
                        options.burst_duration,
                        plan.generators[:1],
                        inflight=options.burst_inflight,
                    ),
                )
                drops_after = server.metrics().get("dtls_kernel_dropped_datagrams_total", 0.0)
                record.update(_record(group, wall, cpu))
                record["replies_lost"] = group.summary.get("timeouts")
                record["kernel_drops"] = int(drops_after - drops_before)
        except (RuntimeError, OSError) as error:
            record["error"] = str(error)
        out["runs"][label] = record
        progress(
            f"  native burst {label:<6} lost {record.get('replies_lost')}, kernel drops "
            f"{record.get('kernel_drops')}, round trips {record.get('round_trips')}"
        )
    return out


def run_churn(
    options: NativeOptions, available: Sequence[int], workdir: Path, progress: Any
) -> dict[str, Any]:
    """Waves of half-open clients; our server's RSS after each wave's cleanup."""
    from .churn import half_open_wave

    plan = plan_cpus(available, 1, 1)
    waves: list[dict[str, Any]] = []
    out: dict[str, Any] = {
        "cpus": f"server on CPU {_cpu_list(plan.server)}, clients unpinned in the orchestrator",
        "clients_per_wave": options.churn_clients,
        "handshake_timeout": options.churn_handshake_timeout,
        "waves": waves,
        "generator": "benchmarks.churn (Python, pyOpenSSL memory BIOs)",
    }
    try:
        with our_server(
            PLAIN_PSK_SUITE,
            workdir,
            plan.server,
            handshake_timeout=options.churn_handshake_timeout,
        ) as server:
            out["rss_kib_at_start"] = server.rss_kib()
            for number in range(1, options.churn_waves + 1):
                with contextlib.ExitStack() as stack:
                    wave = half_open_wave(
                        server.port, PLAIN_PSK_SUITE, options.churn_clients, stack
                    )
                    cleaned = _wait_cleanup(server, options.churn_handshake_timeout + 15.0)
                    wave["cleaned_up"] = cleaned
                    wave["rss_kib"] = server.rss_kib()
                    wave["wave"] = number
                waves.append(wave)
                progress(
                    f"  native churn wave {number}: {wave['hello_verified']} verified hellos "
                    f"sent, RSS {wave['rss_kib']} KiB{'' if cleaned else ' (NOT cleaned up)'}"
                )
            metrics = server.metrics()
            out["handshakes_failed_total"] = metrics.get("dtls_handshakes_failed_total")
    except (RuntimeError, OSError) as error:
        out["error"] = str(error)
    if len(waves) >= 2:
        first, last = waves[0]["rss_kib"], waves[-1]["rss_kib"]
        out["ratio_last_to_first"] = round(last / first, 3) if first else None
    return out


def _wait_cleanup(server: OurServer, limit: float) -> bool:
    """Wait until the server holds no handshake and no peer (every half-open one timed out)."""
    deadline = time.monotonic() + limit
    time.sleep(1.0)
    while time.monotonic() < deadline:
        metrics = server.metrics()
        if (
            metrics.get("dtls_handshakes_in_progress", 1.0) == 0
            and metrics.get("dtls_associations", 1.0) == 0
        ):
            return True
        time.sleep(0.25)
    return False


def _line(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"ERROR {record['error']}"
    text = (
        f"{record.get('rate')}/s, RSS {record.get('rss_kib')} KiB, server CPU "
        f"{record.get('server_cpu')}, dtlsload CPU {record.get('generator_cpu')}"
    )
    if record.get("handshakes_failed") or record.get("timeouts"):
        text += f", failed {record.get('handshakes_failed')}, timeouts {record.get('timeouts')}"
    if record.get("errors"):
        text += f", errors {record['errors']}"
    return text


#: The scenarios that need dtlsload (churn uses its own Python clients).
NEEDS_DTLSLOAD = ("per_core", "scaling", "burst")
#: Every scenario, in the order they run.
SCENARIOS = ("per_core", "scaling", "burst", "churn")


def run_native(
    generator: Generator | str,
    options: NativeOptions,
    workdir: Path,
    *,
    progress: Any = print,
) -> dict[str, Any]:
    """Every selected scenario.  ``generator`` is the dtlsload to use, or the reason there is
    none: then the scenarios that need it are skipped, each with that reason."""
    available = sorted(os.sched_getaffinity(0))
    results: dict[str, Any] = {
        "generator": generator.as_dict() if isinstance(generator, Generator) else None,
        "cpus_available": available,
        "options": asdict(options),
        "ours_command": " ".join(our_command("SUITE", 0)[1:]),
    }
    for name in options.scenarios:
        started = time.monotonic()
        if name in NEEDS_DTLSLOAD and not isinstance(generator, Generator):
            results[name] = {"skipped": generator}
            progress(f"  native {name}: SKIPPED ({generator})")
            continue
        if name == "churn":
            results[name] = run_churn(options, available, workdir, progress)
        elif isinstance(generator, Generator):
            scenario = {"per_core": run_per_core, "scaling": run_scaling, "burst": run_burst}
            results[name] = scenario[name](generator, options, available, workdir, progress)
        results[name]["elapsed_s"] = round(time.monotonic() - started, 1)
    return results
