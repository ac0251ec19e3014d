"""The table, the targets (PASS/MISS), the memory breakdown, and the JSON files.

All figures come from the results dictionary :func:`benchmarks.runner.run_benchmarks` returns,
so a saved JSON file can be re-rendered later (``python -m benchmarks --render FILE``).
The table is Markdown so the same text goes to the console and into docs/performance.md.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .native_report import native_targets, render_native
from .profiling import format_profile

__all__ = ["GENERATOR_SATURATED", "evaluate_targets", "render", "save_results"]

#: A generator using more than this share of one core may have limited the figures.
GENERATOR_SATURATED = 0.9


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(ours: Any, trio: Any) -> float | None:
    if not isinstance(ours, int | float) or not isinstance(trio, int | float) or trio == 0:
        return None
    return float(ours) / float(trio)


def _ratio_text(ours: Any, trio: Any) -> str:
    ratio = _ratio(ours, trio)
    return "-" if ratio is None else f"{ratio:.2f}x"


def _per_operation_us(result: dict[str, Any]) -> float | None:
    """Server CPU time per completed operation, in µs (robust on a shared, noisy machine)."""
    share, rate = result.get("server_cpu"), result.get("rate")
    if not isinstance(share, int | float) or not isinstance(rate, int | float) or rate <= 0:
        return None
    return float(share) / float(rate) * 1e6


def _generator_cell(pair: dict[str, Any]) -> str:
    parts = []
    for kind in ("ours", "trio"):
        share = _get(pair, kind, "generator_cpu")
        if share is None:
            continue
        flag = " ⚠ saturated" if share > GENERATOR_SATURATED else ""
        parts.append(f"{share:.2f}{flag}")
    return " / ".join(parts) or "-"


def _latency_cell(result: dict[str, Any], key: str = "latency_ms") -> str:
    latency = result.get(key) or {}
    return f"{_number(latency.get('p50'), 1)} / {_number(latency.get('p99'), 1)}"


def _table(results: dict[str, Any]) -> list[str]:
    options = results.get("options", {})
    workloads = results.get("workloads", {})
    lines = [
        "| workload | measure | ours | trio.DTLSEndpoint | ours ÷ trio | generator CPU, "
        "cores (ours / trio) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]

    def row(label: str, measure: str, ours: str, trio: str, ratio: str, cpu: str = "") -> None:
        lines.append(f"| {label} | {measure} | {ours} | {trio} | {ratio} | {cpu} |")

    for name, suite in (
        ("handshake-psk", "PSK-AES128-GCM-SHA256"),
        ("handshake-ecdhe", "ECDHE-PSK-CHACHA20-POLY1305"),
    ):
        pair = workloads.get(name)
        if not pair:
            continue
        ours, trio = pair.get("ours", {}), pair.get("trio", {})
        label = f"full handshakes, {suite}, {options.get('handshake_concurrency')} in flight"
        row(
            label,
            "handshakes/s",
            _number(ours.get("rate")),
            _number(trio.get("rate")),
            _ratio_text(ours.get("rate"), trio.get("rate")),
            _generator_cell(pair),
        )
        row("", "latency p50 / p99, ms", _latency_cell(ours), _latency_cell(trio), "")
        row(
            "",
            "failed / left hanging",
            f"{_number(ours.get('failed'))} / {_number(ours.get('left_hanging'))}",
            f"{_number(trio.get('failed'))} / {_number(trio.get('left_hanging'))}",
            "",
        )
        row(
            "",
            "server CPU per handshake, µs",
            _number(_per_operation_us(ours)),
            _number(_per_operation_us(trio)),
            _ratio_text(_per_operation_us(ours), _per_operation_us(trio)),
        )
    pair = workloads.get("roundtrip")
    if pair:
        ours, trio = pair.get("ours", {}), pair.get("trio", {})
        label = (
            f"request/reply, {options.get('roundtrip_peers')} peers x "
            f"{options.get('roundtrip_size')} B, 1 in flight each"
        )
        row(
            label,
            "round trips/s",
            _number(ours.get("rate")),
            _number(trio.get("rate")),
            _ratio_text(ours.get("rate"), trio.get("rate")),
            _generator_cell(pair),
        )
        row("", "round trip p50 / p99, ms", _latency_cell(ours), _latency_cell(trio), "")
        row(
            "",
            "server CPU per round trip, µs",
            _number(_per_operation_us(ours), 1),
            _number(_per_operation_us(trio), 1),
            _ratio_text(_per_operation_us(ours), _per_operation_us(trio)),
        )
    pair = workloads.get("memory")
    if pair:
        ours, trio = pair.get("ours", {}), pair.get("trio", {})
        label = f"established idle peers, {_number(options.get('memory_peers'))}"
        row(
            label,
            "server RSS growth per peer, KiB",
            _number(ours.get("rss_kib_per_peer"), 1),
            _number(trio.get("rss_kib_per_peer"), 1),
            _ratio_text(ours.get("rss_kib_per_peer"), trio.get("rss_kib_per_peer")),
        )
        row(
            "",
            "… of it Python objects (pymalloc), KiB",
            _number(ours.get("pymalloc_in_use_kib_per_peer"), 1),
            _number(trio.get("pymalloc_in_use_kib_per_peer"), 1),
            "",
        )
    pair = workloads.get("capacity")
    if pair:
        ours, trio = pair.get("ours", {}), pair.get("trio", {})
        label = (
            f"peers pinging ({options.get('ping_size')} B every "
            f"{_number(options.get('ping_interval'))} s), up to "
            f"{_number(options.get('capacity_peers'))}"
        )
        row(
            label,
            "most held at once, none lost",
            _number(ours.get("most_held_without_loss")),
            _number(trio.get("most_held_without_loss")),
            _ratio_text(ours.get("most_held_without_loss"), trio.get("most_held_without_loss")),
            _generator_cell(pair),
        )
        row(
            "",
            "lost / unanswered at end / server's own count",
            f"{_number(ours.get('lost'))} / {_number(ours.get('unanswered_at_end'))} / "
            f"{_number(ours.get('server_peers'))}",
            f"{_number(trio.get('lost'))} / {_number(trio.get('unanswered_at_end'))} / "
            f"{_number(trio.get('server_peers'))}",
            "",
        )
        row(
            "",
            "ping p50 / p99, ms",
            _latency_cell(ours, "ping_latency_ms"),
            _latency_cell(trio, "ping_latency_ms"),
            "",
        )
    return lines


def _cpu_lines(results: dict[str, Any]) -> list[str]:
    """Where the machine's CPU went during each measured window (cores, out of all)."""
    lines = [
        "| run | generator | server | everything else on the machine |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, pair in results.get("workloads", {}).items():
        for kind in ("ours", "trio"):
            result = pair.get(kind, {})
            if result.get("generator_cpu") is None:
                continue
            lines.append(
                f"| {name} {kind} | {_number(result.get('generator_cpu'), 2)} | "
                f"{_number(result.get('server_cpu'), 2)} | "
                f"{_number(result.get('other_cpu'), 2)} |"
            )
    return lines


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured and PASS/MISS."""
    workloads = results.get("workloads", {})
    options = results.get("options", {})
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: str, passed: bool | None, note: str = "") -> None:
        targets.append({"target": name, "measured": measured, "passed": passed, "note": note})

    for name, suite in (
        ("handshake-psk", "PSK-AES128-GCM-SHA256"),
        ("handshake-ecdhe", "ECDHE-PSK-CHACHA20-POLY1305"),
    ):
        pair = workloads.get(name)
        if not pair:
            continue
        ratio = _ratio(_get(pair, "ours", "rate"), _get(pair, "trio", "rate"))
        add(
            f"handshakes/s ≥ 3x trio.DTLSEndpoint ({suite})",
            "-" if ratio is None else f"{ratio:.2f}x",
            None if ratio is None else ratio >= 3.0,
            "" if ratio is None or ratio >= 3.0 else f"short by {3.0 / ratio:.1f}x",
        )
        failed = _get(pair, "ours", "failed")
        hanging = _get(pair, "ours", "left_hanging")
        add(
            f"no handshake left hanging ({suite})",
            f"{_number(failed)} failed, {_number(hanging)} left hanging",
            None if hanging is None else (hanging == 0 and failed == 0),
        )
    pair = workloads.get("roundtrip")
    if pair:
        ratio = _ratio(_get(pair, "ours", "rate"), _get(pair, "trio", "rate"))
        add(
            "round trips/s ≥ 8x trio.DTLSEndpoint",
            "-" if ratio is None else f"{ratio:.2f}x",
            None if ratio is None else ratio >= 8.0,
            "" if ratio is None or ratio >= 8.0 else f"short by {8.0 / ratio:.1f}x",
        )
        ours_p99 = _get(pair, "ours", "latency_ms", "p99")
        trio_p99 = _get(pair, "trio", "latency_ms", "p99")
        add(
            "round-trip p99 lower than trio.DTLSEndpoint's",
            f"{_number(ours_p99, 2)} ms vs {_number(trio_p99, 2)} ms",
            None if ours_p99 is None or trio_p99 is None else ours_p99 < trio_p99,
        )
    pair = workloads.get("memory")
    if pair:
        per_peer = _get(pair, "ours", "rss_kib_per_peer")
        add(
            "memory per established idle peer ≤ 50 KB",
            f"{_number(per_peer, 1)} KiB",
            None if per_peer is None else per_peer <= 50.0,
            "" if per_peer is None or per_peer <= 50 else f"over by {per_peer - 50:.1f} KiB",
        )
    pair = workloads.get("capacity")
    if pair:
        wanted = options.get("capacity_peers", 10_000)
        held = _get(pair, "ours", "held_at_end")
        lost = _get(pair, "ours", "lost")
        server_count = _get(pair, "ours", "server_peers")
        passed = None
        if held is not None:
            passed = held >= wanted and lost == 0 and server_count == held
        add(
            f"{wanted:,} established peers held by one process, none dropped",
            f"{_number(held)} held, {_number(lost)} lost, server counts {_number(server_count)}",
            passed,
            "reduced scale (--quick)" if options.get("quick") else "",
        )
    targets += native_targets(results.get("native") or {})
    return targets


def _floor_lines(results: dict[str, Any]) -> list[str]:
    floor = results.get("floor") or []
    if not floor:
        return []
    lines = ["OpenSSL floor: one server-side DTLS connection, in memory, no server around it:"]
    for probe in floor:
        if "error" in probe:
            lines.append(f"  {probe['error']}")
            continue
        where = "cryptography wheel" if probe.get("library") == "wheel" else "system library"
        release = "MODE_RELEASE_BUFFERS" if probe.get("release_buffers") else "no release"
        lines.append(
            f"  {probe.get('openssl')} ({where}), {probe.get('stage')}, {release}: "
            f"{_number(probe.get('rss_kib_per_connection'), 1)} KiB RSS "
            f"({_number(probe.get('malloc_in_use_kib_per_connection'), 1)} KiB malloc'ed)"
        )
    ours = _get(results, "workloads", "memory", "ours")
    established = [
        probe
        for probe in floor
        if probe.get("library") == "wheel"
        and probe.get("stage") == "established"
        and probe.get("release_buffers")
    ]
    if ours and established and ours.get("rss_kib_per_peer") is not None:
        total = ours["rss_kib_per_peer"]
        python = ours.get("pymalloc_in_use_kib_per_peer") or 0.0
        released = _released_share(ours)
        if released is not None and released >= 0.99:
            # Our record layer took over: no OpenSSL connection per peer any more; the C heap
            # holds the two AEAD contexts of each peer's record layer and the cached session.
            c_heap = ours.get("malloc_in_use_kib_per_peer") or 0.0
            rest = total - python - c_heap
            lines.append(
                f"  ours, per idle peer: {total:.1f} KiB = {python:.1f} Python objects + "
                f"{c_heap:.1f} C heap (the record layer's AEAD contexts, OpenSSL's session "
                f"cache) + {rest:.1f} other; "
                f"OpenSSL connections released after the handshake: {released:.0%} of the peers"
            )
        else:
            openssl = established[0]["rss_kib_per_connection"]
            rest = total - openssl - python
            lines.append(
                f"  ours, per idle peer: {total:.1f} KiB = {openssl:.1f} OpenSSL connection + "
                f"{python:.1f} Python objects + {rest:.1f} other (allocator slack, large buffers)"
            )
    return lines


def _released_share(ours: dict[str, Any]) -> float | None:
    """Of the peers the memory workload added, the share whose OpenSSL connection was freed."""
    after = _get(ours, "after", "server_stats", "openssl_released")
    before = _get(ours, "before", "server_stats", "openssl_released")
    peers = ours.get("server_peers_delta")
    if not isinstance(after, int) or not isinstance(before, int) or not isinstance(peers, int):
        return None
    return min(1.0, (after - before) / peers) if peers > 0 else None


def render(results: dict[str, Any]) -> str:
    """The whole human report: machine, table, CPU split, targets, memory, profiles."""
    machine = results.get("machine", {})
    options = results.get("options", {})
    out: list[str] = []
    title = "Benchmark: trio_dtls_server vs trio.DTLSEndpoint, loopback, same run"
    if options.get("quick"):
        title += " (QUICK run: short windows, reduced scale)"
    out.append(title)
    out.append(
        f"machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"{machine.get('memory_gib')} GiB, Linux {machine.get('kernel')}; Python "
        f"{machine.get('python')}, trio {machine.get('trio')}, pyOpenSSL "
        f"{machine.get('pyopenssl')}, cryptography {machine.get('cryptography')} "
        f"({machine.get('openssl')}); load average at start {machine.get('load_average_at_start')}"
    )
    rounds = options.get("rounds", 1)
    started = f"started {results.get('started_at')}, took {results.get('elapsed_s')} s"
    if results.get("workloads"):
        started += (
            f"; Python generator: windows {options.get('duration')} s after "
            f"{options.get('warmup')} s warm-up"
        )
        if rounds > 1:
            started += f", rate workloads: best of {rounds} alternating rounds per server"
    out.append(started)
    native = results.get("native")
    if isinstance(native, dict):
        out.append("")
        out += render_native(native)
    if results.get("workloads"):
        out.append("")
        out.append(
            "Python load generator (benchmarks.loadgen, sharing the machine's cores with the "
            "server):"
        )
        out.append("")
        out += _table(results)
        out.append("")
        out.append("CPU during the measured windows, in cores (the machine may be shared):")
        out += _cpu_lines(results)
    notes = results.get("notes") or []
    if notes:
        out.append("")
        out += [f"NOTE: {note}" for note in notes]
    out.append("")
    out.append("Targets:")
    for target in evaluate_targets(results):
        verdict = {True: "PASS", False: "MISS", None: "N/A "}[target["passed"]]
        note = f"  ({target['note']})" if target["note"] else ""
        out.append(f"  {verdict}  {target['target']}: {target['measured']}{note}")
    floor = _floor_lines(results)
    if floor:
        out.append("")
        out += floor
    breakdown = results.get("memory_breakdown") or {}
    if breakdown.get("files"):
        out.append("")
        out.append(
            f"Python allocations held per idle peer by ours (tracemalloc diagnostic run, "
            f"{breakdown.get('peers')} peers, {breakdown.get('traced_kib_per_peer')} KiB per "
            "peer traced):"
        )
        out.append("  by file:")
        for size, blocks, where in breakdown["files"][:10]:
            out.append(f"    {size:7.0f} B  {blocks:5.2f} blocks  {where}")
        out.append("  by line:")
        for size, blocks, where in breakdown.get("lines", [])[:12]:
            out.append(f"    {size:7.0f} B  {blocks:5.2f} blocks  {where}")
    for name, profile in (results.get("profiles") or {}).items():
        out.append("")
        if "error" in profile:
            out.append(f"Profile of ours under {name}: {profile['error']}")
            continue
        run = profile.get("run", {})
        out.append(
            f"Profile of ours under {name} (rate {run.get('rate')}/s, server CPU "
            f"{run.get('server_cpu')}):"
        )
        out += format_profile(profile)
    errors = [
        f"{name}/{kind}: {result['error']}"
        for name, pair in results.get("workloads", {}).items()
        for kind, result in pair.items()
        if isinstance(result, dict) and "error" in result
    ]
    if errors:
        out.append("")
        out.append("Errors:")
        out += [f"  {error}" for error in errors]
    return "\n".join(out)


def save_results(results: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write ``latest.json`` (``latest-quick.json`` for quick runs) and a timestamped copy."""
    directory.mkdir(parents=True, exist_ok=True)
    quick = bool(_get(results, "options", "quick"))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = "-quick" if quick else ""
    results = dict(results, targets=evaluate_targets(results), table=_table(results))
    stamped = directory / f"{stamp}{suffix}.json"
    stamped.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    latest = directory / f"latest{suffix}.json"
    shutil.copyfile(stamped, latest)
    return latest, stamped
