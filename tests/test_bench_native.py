"""The benchmark's pure parts: dtlsload's output parser, adding up G generators, the CPU plan,
the metrics parser and the PASS/MISS judgement of the native targets.

The benchmark itself is not part of the suite (it measures, it does not assert); these are
the pieces whose mistakes would silently turn into wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

# The benchmarks package lives beside tests/, which is what pytest puts on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.dtlsload import DtlsloadOutputError, Generator, aggregate, locate, parse_output
from benchmarks.native import generator_count, parse_metrics, plan_cpus
from benchmarks.native_report import native_targets, render_native

#: Shaped like dtlsload's real output (keys as its README lists them).
HANDSHAKE_RESULT: dict[str, Any] = {
    "mode": "handshake",
    "handshakes_completed": 2000,
    "handshakes_failed": 0,
    "handshakes_per_s_to_last_ok": 1000.0,
    "handshakes_per_s": 990.0,
    "handshake_latency_ms": {"p50": 50.0, "p90": 70.0, "p99": 90.0, "max": 99.0, "mean": 52.0},
    "negotiated_cipher": "PSK-AES128-GCM-SHA256",
    "cpu_pct": 35.0,
    "first_error": None,
}


def echo_result(msgs_per_s: float, round_trips: int, timeouts: int = 0) -> dict[str, Any]:
    return {
        "mode": "echo",
        "handshakes_completed": 25,
        "round_trips": round_trips,
        "msgs_per_s": msgs_per_s,
        "timeouts": timeouts,
        "rtt_ms": {"p50": 1.5, "p99": 4.0},
        "cpu_pct": 20.0,
    }


def test_parse_output_takes_the_last_json_object_line() -> None:
    stdout = "warming up\n" + json.dumps({"mode": "old"}) + "\n" + json.dumps(HANDSHAKE_RESULT)
    assert parse_output(stdout + "\n", "handshake")["handshakes_completed"] == 2000


def test_parse_output_refuses_a_result_without_the_modes_keys() -> None:
    incomplete = {
        key: value for key, value in HANDSHAKE_RESULT.items() if key != "handshakes_failed"
    }
    with pytest.raises(DtlsloadOutputError, match="handshakes_failed"):
        parse_output(json.dumps(incomplete), "handshake")
    # The same object is no echo result either: echo needs round trips.
    with pytest.raises(DtlsloadOutputError, match="round_trips"):
        parse_output(json.dumps(HANDSHAKE_RESULT), "echo")


@pytest.mark.parametrize("stdout", ["", "dtlsload: error: port?\n", '{"mode": "echo", '])
def test_parse_output_without_a_result_says_so(stdout: str) -> None:
    with pytest.raises(DtlsloadOutputError):
        parse_output(stdout, "echo")


def test_aggregate_handshakes_divides_by_the_slowest_process() -> None:
    # 2000 in 2 s and 1000 in 0.5 s at the same time: 3000 handshakes in 2 s, not 3000/s.
    slow = dict(HANDSHAKE_RESULT)
    fast = dict(HANDSHAKE_RESULT, handshakes_completed=1000, handshakes_per_s_to_last_ok=2000.0)
    summary = aggregate("handshake", [slow, fast])
    assert summary["rate"] == 1500.0
    assert summary["handshakes_completed"] == 3000
    assert summary["generator_cpu"] == [0.35, 0.35]
    assert summary["handshake_p99_ms"] == 90.0
    assert summary["negotiated_cipher"] == "PSK-AES128-GCM-SHA256"


def test_aggregate_echo_adds_rates_and_losses() -> None:
    summary = aggregate("echo", [echo_result(1000.0, 8000, 2), echo_result(500.0, 4000, 1)])
    assert summary["rate"] == 1500.0
    assert summary["round_trips"] == 12000
    assert summary["timeouts"] == 3


def test_aggregate_of_nothing_is_zero_not_an_error() -> None:
    assert aggregate("handshake", [])["rate"] == 0.0


def test_cpu_plan_keeps_server_and_generators_apart_where_it_can() -> None:
    two = plan_cpus([0, 1], 1, 1)
    assert (two.server, two.generators, two.shared) == ((0,), (1,), False)
    # Two workers on two CPUs: the generator's core is a worker's too, and the plan says so.
    crowded = plan_cpus([0, 1], 2, 1)
    assert (crowded.server, crowded.generators, crowded.shared) == ((0, 1), (1,), True)
    assert "competes" in crowded.describe()
    # 16 CPUs: workers from the front, generators from the back, the same for every row.
    sixteen = list(range(16))
    for workers in (1, 2, 4, 8):
        plan = plan_cpus(sixteen, workers, 8)
        assert plan.server == tuple(range(workers))
        assert plan.generators == tuple(range(8, 16))
        assert not plan.shared


def test_generator_count_uses_the_cpus_the_largest_server_leaves() -> None:
    assert generator_count(range(16), 8, 8) == 8
    assert generator_count(range(16), 4, 8) == 8  # never more than the maximum
    assert generator_count(range(2), 2, 8) == 1  # at least one, even sharing a core


def test_parse_metrics_sums_label_sets_and_skips_comments() -> None:
    text = (
        "# HELP dtls_kernel_dropped_datagrams_total Datagrams the kernel dropped.\n"
        "# TYPE dtls_kernel_dropped_datagrams_total counter\n"
        'dtls_kernel_dropped_datagrams_total{worker="0"} 12.0\n'
        'dtls_kernel_dropped_datagrams_total{worker="1"} 30.0\n'
        "dtls_handshakes_in_progress 0.0\n"
    )
    metrics = parse_metrics(text)
    assert metrics["dtls_kernel_dropped_datagrams_total"] == 42.0
    assert metrics["dtls_handshakes_in_progress"] == 0.0


def _pair(ours: float, trio: float) -> dict[str, Any]:
    return {"ours": {"rate": ours}, "trio": {"rate": trio}}


def test_native_targets_judge_the_issues_ratios() -> None:
    native: dict[str, Any] = {
        "per_core": {
            "workloads": {
                "handshake-psk": _pair(1500.0, 1000.0),
                "handshake-ecdhe": _pair(1400.0, 1000.0),
                "roundtrip": _pair(20000.0, 9000.0),
            }
        },
        "scaling": {
            "rows": [
                {"workers": 1, "handshake_ratio": 1.0, "roundtrip_ratio": 1.0},
                {"workers": 2, "handshake_ratio": 1.7, "roundtrip_ratio": 1.5, "shared": True},
            ]
        },
        "churn": {"waves": [{"rss_kib": 1000}] + [{"rss_kib": 1050}] * 11},
    }
    verdicts = {target["target"]: target["passed"] for target in native_targets(native)}
    assert verdicts == {
        "native: handshakes/s ≥ 1.5x trio.DTLSEndpoint (PSK-AES128-GCM-SHA256), one core each": (
            True
        ),
        "native: handshakes/s ≥ 1.5x trio.DTLSEndpoint (ECDHE-PSK-CHACHA20-POLY1305), "
        "one core each": False,
        "native: round trips/s ≥ 2.0x trio.DTLSEndpoint, one core each": True,
        "churn: RSS after wave 12 ≤ 1.1x RSS after wave 1": True,
        "scaling: 2 workers ≥ 1.6x 1 worker (handshakes/s)": True,
        "scaling: 2 workers ≥ 1.6x 1 worker (round trips/s)": False,
    }


def test_a_short_churn_run_is_not_judged() -> None:
    native = {"churn": {"waves": [{"rss_kib": 1000}, {"rss_kib": 5000}]}}
    (target,) = native_targets(native)
    assert target["passed"] is None
    assert "not judged" in target["note"]


def test_render_says_which_scenarios_were_skipped_and_why() -> None:
    reason = "no dtlsload: no --dtlsload/$DTLSLOAD and no shared/tools/dtlsload"
    text = "\n".join(
        render_native(
            {"generator": None, "per_core": {"skipped": reason}, "burst": {"skipped": reason}}
        )
    )
    assert "Native load generator: none" in text
    assert f"Per core, ours vs trio.DTLSEndpoint: SKIPPED: {reason}" in text
    assert f"Burst: SKIPPED: {reason}" in text


def test_locate_says_why_there_is_no_dtlsload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DTLSLOAD", raising=False)
    monkeypatch.setenv("DTLSLOAD_SRC", str(tmp_path))  # no dtlsload.c there
    reason = locate(None, build_directory=tmp_path / "build")
    assert isinstance(reason, str)
    assert "no dtlsload" in reason
    not_a_program = tmp_path / "dtlsload"
    not_a_program.write_text("")
    reason = locate(not_a_program)
    assert isinstance(reason, str)
    assert "not an executable file" in reason


def test_locate_records_a_given_binary_by_its_hash(tmp_path: Path) -> None:
    program = tmp_path / "dtlsload"
    program.write_bytes(b"#!/bin/sh\n")
    program.chmod(0o755)
    generator = locate(program)
    assert isinstance(generator, Generator)
    assert generator.sha256 == hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    assert generator.as_dict()["path"] == str(program.resolve())
