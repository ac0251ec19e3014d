"""The native scenarios' tables and targets (from ``results["native"]``, see
:mod:`benchmarks.native`); Markdown, like :mod:`benchmarks.report`."""

from __future__ import annotations

from typing import Any

__all__ = ["native_targets", "render_native"]

#: The per-core issue's targets (reported, never asserted).
HANDSHAKE_TARGET = 1.5
ROUNDTRIP_TARGET = 2.0
CHURN_TARGET = 1.10
CHURN_WAVES = 12
#: The scale-out issue's targets: (workers, least ratio to 1 worker).
SCALING_TARGETS = ((2, 1.6), (8, 6.5))

_SUITES = {
    "handshake-psk": "PSK-AES128-GCM-SHA256",
    "handshake-ecdhe": "ECDHE-PSK-CHACHA20-POLY1305",
}


def _n(value: Any, digits: int = 0) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(ours: Any, trio: Any) -> float | None:
    if not isinstance(ours, int | float) or not isinstance(trio, int | float) or trio <= 0:
        return None
    return float(ours) / float(trio)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cpu(record: dict[str, Any]) -> str:
    generator = record.get("generator_cpu")
    shares = "/".join(_n(v, 2) for v in generator) if isinstance(generator, list) else "-"
    return f"{_n(record.get('server_cpu'), 2)} / {shares}"


def _mib(kib: Any) -> str:
    return "-" if not isinstance(kib, int | float) else f"{kib / 1024:.1f}"


def render_native(native: dict[str, Any]) -> list[str]:
    """The native section: generator, per-core table, scaling table, burst, churn."""
    out: list[str] = []
    generator = native.get("generator")
    if isinstance(generator, dict):
        out.append(
            f"Native load generator: {generator.get('name')} {generator.get('path')} "
            f"(sha256 {str(generator.get('sha256'))[:12]}, {generator.get('origin')}); "
            f"CPUs available {native.get('cpus_available')}"
        )
    else:
        out.append("Native load generator: none (the scenarios that need it were skipped)")
    per_core = native.get("per_core") or {}
    if "skipped" in per_core:
        out += ["", f"Per core, ours vs trio.DTLSEndpoint: SKIPPED: {per_core['skipped']}"]
    elif per_core.get("workloads"):
        out += ["", f"Per core, ours vs trio.DTLSEndpoint ({per_core.get('cpus')}):", ""]
        out += _per_core_table(per_core, native.get("options", {}))
    scaling = native.get("scaling") or {}
    if "skipped" in scaling:
        out += ["", f"Scaling: SKIPPED: {scaling['skipped']}"]
    elif scaling.get("rows"):
        out += ["", ""]
        out += _scaling_table(scaling)
    burst = native.get("burst") or {}
    if "skipped" in burst:
        out += ["", f"Burst: SKIPPED: {burst['skipped']}"]
    elif burst.get("runs"):
        out += ["", ""]
        out += _burst_table(burst)
    churn = native.get("churn") or {}
    if churn.get("waves") or churn.get("error"):
        out += ["", ""]
        out += _churn_lines(churn)
    return out


def _per_core_table(per_core: dict[str, Any], options: dict[str, Any]) -> list[str]:
    lines = [
        "| workload | ours | trio.DTLSEndpoint | ours ÷ trio | server CPU µs per operation "
        "(ours; trio) | RSS MiB, now / peak (ours; trio) | CPU: server / dtlsload, cores "
        "(ours; trio) |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for name, pair in per_core.get("workloads", {}).items():
        ours, trio = pair.get("ours", {}), pair.get("trio", {})
        if name in _SUITES:
            label = (
                f"handshakes/s, {_SUITES[name]}, {_n(options.get('handshakes'))} handshakes, "
                f"{options.get('handshake_concurrency')} in flight"
            )
        else:
            label = (
                f"round trips/s, ECDHE-PSK-CHACHA20-POLY1305, {options.get('echo_peers')} peers, "
                "64 B, 1 in flight each"
            )
        rss = (
            f"{_mib(ours.get('rss_kib'))} / {_mib(ours.get('peak_rss_kib'))}; "
            f"{_mib(trio.get('rss_kib'))} / {_mib(trio.get('peak_rss_kib'))}"
        )
        ratio = _ratio(ours.get("rate"), trio.get("rate"))
        lines.append(
            f"| {label} | {_n(ours.get('rate'))} | {_n(trio.get('rate'))} | {_x(ratio)} | "
            f"{_n(ours.get('server_cpu_us_per_op'), 1)}; "
            f"{_n(trio.get('server_cpu_us_per_op'), 1)} | {rss} | {_cpu(ours)}; {_cpu(trio)} |"
        )
        failures = [
            f"{kind}: {record.get('handshakes_failed')} failed, {record.get('timeouts')} timeouts"
            for kind, record in (("ours", ours), ("trio", trio))
            if record.get("handshakes_failed") or record.get("timeouts") or record.get("errors")
        ]
        if failures:
            lines.append(f"|   ↳ {'; '.join(failures)} | | | | | | |")
    return lines


def _scaling_table(scaling: dict[str, Any]) -> list[str]:
    lines = [
        f"Scaling: ours with N workers (serve --workers N, one core each), the same load each "
        f"row: {scaling.get('generators')} dtlsload process(es); {scaling.get('suite')}, "
        f"{_n(scaling.get('handshakes_per_worker'))} handshakes per worker, "
        f"{_n(scaling.get('handshakes_in_flight'))} in flight in all; "
        f"{scaling.get('echo_peers')} echo peers",
        "",
        "| workers | handshakes/s | ratio to 1 worker | round trips/s | ratio to 1 worker "
        "| RSS MiB (all processes) | busiest dtlsload, cores (handshakes; round trips) "
        "| CPUs |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in scaling.get("rows", []):
        if "error" in row:
            lines.append(f"| {row.get('workers')} | ERROR {row['error']} | | | | | | |")
            continue
        handshake, roundtrip = row.get("handshake", {}), row.get("roundtrip", {})
        lines.append(
            f"| {row.get('workers')} | {_n(handshake.get('rate'))} | "
            f"{_x(row.get('handshake_ratio'))} | {_n(roundtrip.get('rate'))} | "
            f"{_x(row.get('roundtrip_ratio'))} | {_mib(row.get('rss_kib'))} | "
            f"{_busiest(handshake)}; {_busiest(roundtrip)} | {row.get('cpus')} |"
        )
    if any(row.get("shared") for row in scaling.get("rows", [])):
        lines.append("")
        lines.append(
            "NOTE: where the CPUs say 'shared', dtlsload runs on a core a worker also uses: on "
            "this machine the generator competes with the workers, so those rows understate "
            "what the workers alone would do."
        )
    return lines


def _busiest(record: dict[str, Any]) -> str:
    """The largest CPU share of any one dtlsload process (near 1.0: the generator limited the
    row, not the server)."""
    shares = record.get("generator_cpu")
    if not isinstance(shares, list) or not shares:
        return "-"
    return _n(max(shares), 2)


def _burst_table(burst: dict[str, Any]) -> list[str]:
    lines = [
        f"Burst: {_n(burst.get('peers'))} peers each send {burst.get('inflight')} requests at "
        f"the same moment ({_n(burst.get('burst_datagrams'))} datagrams), then keep that many "
        f"in flight (closed loop); {burst.get('cpus')}; net.core.rmem_default "
        f"{_n(burst.get('rmem_default'))}, rmem_max {_n(burst.get('rmem_max'))}",
        "",
        "| receive buffer | replies lost | kernel drops (statistics().kernel_drops) | "
        "round trips | round trip p50 / p99, ms |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for label, record in burst.get("runs", {}).items():
        requested = record.get("receive_buffer_requested")
        text = f"{label}: --receive-buffer {requested}" if label == "before" else f"{label}: "
        if label != "before":
            text += str(requested)
            rmem_max = burst.get("rmem_max")
            if isinstance(rmem_max, int) and rmem_max < 8 << 20:
                text += f", capped by Linux at rmem_max {rmem_max:,}"
        if "error" in record:
            lines.append(f"| {text} | ERROR {record['error']} | | | |")
            continue
        lines.append(
            f"| {text} | {_n(record.get('replies_lost'))} | {_n(record.get('kernel_drops'))} | "
            f"{_n(record.get('round_trips'))} | {_n(record.get('rtt_p50_ms'), 1)} / "
            f"{_n(record.get('rtt_p99_ms'), 1)} |"
        )
    return lines


def _churn_lines(churn: dict[str, Any]) -> list[str]:
    lines = [
        f"Churn: waves of {churn.get('clients_per_wave')} clients that pass the cookie "
        f"exchange, send their verified ClientHello and go silent; --handshake-timeout "
        f"{churn.get('handshake_timeout')}; the next wave once the server holds nothing; "
        f"ours alone ({churn.get('cpus')}); clients: {churn.get('generator')}",
    ]
    if churn.get("error"):
        lines.append(f"ERROR {churn['error']}")
    lines += [
        "",
        "| wave | verified hellos sent / server flights seen | cleaned up "
        "| RSS after cleanup, MiB |",
        "| ---: | --- | --- | ---: |",
        f"| start | | | {_mib(churn.get('rss_kib_at_start'))} |",
    ]
    for wave in churn.get("waves", []):
        lines.append(
            f"| {wave.get('wave')} | {wave.get('hello_verified')} / {wave.get('server_flight')} "
            f"| {'yes' if wave.get('cleaned_up') else 'NO'} | {_mib(wave.get('rss_kib'))} |"
        )
    return lines


def native_targets(native: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-core and scale-out issues' targets: PASS/MISS/N/A, with what was measured."""
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: str, passed: bool | None, note: str = "") -> None:
        targets.append({"target": name, "measured": measured, "passed": passed, "note": note})

    workloads = (native.get("per_core") or {}).get("workloads") or {}
    for name, suite in _SUITES.items():
        pair = workloads.get(name)
        if pair:
            ratio = _ratio(pair.get("ours", {}).get("rate"), pair.get("trio", {}).get("rate"))
            add(
                f"native: handshakes/s ≥ {HANDSHAKE_TARGET}x trio.DTLSEndpoint ({suite}), "
                "one core each",
                _x(ratio),
                None if ratio is None else ratio >= HANDSHAKE_TARGET,
            )
    pair = workloads.get("roundtrip")
    if pair:
        ratio = _ratio(pair.get("ours", {}).get("rate"), pair.get("trio", {}).get("rate"))
        add(
            f"native: round trips/s ≥ {ROUNDTRIP_TARGET}x trio.DTLSEndpoint, one core each",
            _x(ratio),
            None if ratio is None else ratio >= ROUNDTRIP_TARGET,
        )
    churn = native.get("churn") or {}
    waves = churn.get("waves") or []
    if waves:
        first, last = waves[0].get("rss_kib"), waves[-1].get("rss_kib")
        ratio = _ratio(last, first)
        enough = len(waves) >= CHURN_WAVES
        add(
            f"churn: RSS after wave {CHURN_WAVES} ≤ {CHURN_TARGET}x RSS after wave 1",
            f"wave {len(waves)} / wave 1 = {_x(ratio)} ({_mib(last)} / {_mib(first)} MiB)",
            None if ratio is None or not enough else ratio <= CHURN_TARGET,
            "" if enough else f"only {len(waves)} waves (quick run): not judged",
        )
    rows = (native.get("scaling") or {}).get("rows") or []
    by_workers = {row.get("workers"): row for row in rows}
    for workers, wanted in SCALING_TARGETS:
        row = by_workers.get(workers)
        if row is None:
            continue
        for key, label in (
            ("handshake_ratio", "handshakes/s"),
            ("roundtrip_ratio", "round trips/s"),
        ):
            ratio = row.get(key)
            note = "generator shares the workers' cores" if row.get("shared") else ""
            add(
                f"scaling: {workers} workers ≥ {wanted}x 1 worker ({label})",
                _x(ratio if isinstance(ratio, int | float) else None),
                None if not isinstance(ratio, int | float) else ratio >= wanted,
                note,
            )
    return targets
