"""``python -m benchmarks``: run the suite (see :mod:`benchmarks` and ``--help``)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .dtlsload import locate
from .native import SCENARIOS, NativeOptions, run_native
from .report import render, save_results
from .runner import WORKLOADS, BenchOptions, run_benchmarks

RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="trio_dtls_server vs trio.DTLSEndpoint on loopback, measured in the same run",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: short, reduced scale")
    parser.add_argument("--duration", type=float, help="measured window per run, s (10; quick 3)")
    parser.add_argument("--warmup", type=float, help="unmeasured lead-in per run, s (1; quick 0.5)")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(WORKLOADS),
        help="run only this workload (repeatable)",
    )
    parser.add_argument(
        "--rounds", type=int, help="alternating rounds per rate workload, best kept (3; quick 1)"
    )
    parser.add_argument("--memory-peers", type=int, help="idle peers for memory (5000)")
    parser.add_argument("--capacity-peers", type=int, help="pinging peers to hold (10000)")
    parser.add_argument("--hold", type=float, help="seconds to hold the full capacity count (12)")
    parser.add_argument(
        "--profile",
        choices=["auto", "py-spy", "cprofile", "none"],
        default="auto",
        help="profile our server afterwards (auto: py-spy if installed, else cProfile)",
    )
    parser.add_argument(
        "--profile-workload",
        action="append",
        choices=list(WORKLOADS),
        help="workload(s) to profile (default: roundtrip and handshake-psk)",
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the OpenSSL floor probe")
    parser.add_argument(
        "--pin", action="store_true", help="pin server and generator to separate CPUs"
    )
    native = parser.add_argument_group(
        "native load generator (dtlsload)",
        "Per-core ours vs trio, the scaling table and the burst scenario are driven by "
        "dtlsload, pinned to CPUs of its own; the churn scenario uses Python clients.",
    )
    native.add_argument(
        "--dtlsload",
        type=Path,
        default=None,
        help="a prebuilt dtlsload binary (else $DTLSLOAD, else build ../shared/tools/dtlsload "
        "into build/dtlsload with make, gcc and libssl-dev)",
    )
    native.add_argument(
        "--native",
        choices=["auto", "require", "skip"],
        default="auto",
        help="auto: run the dtlsload scenarios when dtlsload is there or builds, else skip "
        "them and say why; require: exit 2 without it; skip: never (default: auto)",
    )
    native.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this native scenario (repeatable; default: all)",
    )
    native.add_argument(
        "--workers-list",
        type=_worker_counts,
        default=None,
        help="worker counts for the scaling table, e.g. 1,2,4,8 (counts above the usable "
        "CPUs are left out; default 1,2,4,8)",
    )
    native.add_argument(
        "--scaling-only",
        action="store_true",
        help="only ours vs trio on one core and the scaling table, dtlsload required; no "
        "Python generator, profile or floor probe (the device script's run)",
    )
    native.add_argument(
        "--python-rates",
        action="store_true",
        help="also run the Python generator's handshake and round-trip workloads when "
        "dtlsload ran (they are superseded by the native ones otherwise)",
    )
    native.add_argument(
        "--no-python",
        action="store_true",
        help="skip every Python-generator workload, the profile and the floor probe",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIRECTORY)
    parser.add_argument("--no-save", action="store_true", help="do not write JSON files")
    parser.add_argument("--render", type=Path, help="only re-render a saved JSON result file")
    return parser


def options_from(arguments: argparse.Namespace) -> BenchOptions:
    options = BenchOptions.quick_defaults() if arguments.quick else BenchOptions()
    for name in ("duration", "warmup", "rounds", "memory_peers", "capacity_peers", "hold"):
        value = getattr(arguments, name)
        if value is not None:
            setattr(options, name, value)
    if arguments.only:
        options.workloads = [name for name in WORKLOADS if name in arguments.only]
    if arguments.profile_workload:
        options.profile_workloads = list(arguments.profile_workload)
    options.profile = arguments.profile
    options.floor = not arguments.no_floor
    options.pin = arguments.pin
    return options


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,2,4,8") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts must be 1 or more")
    return counts


#: The Python generator's workloads that the native per-core scenario supersedes.
SUPERSEDED = ("handshake-psk", "handshake-ecdhe", "roundtrip")


def native_options_from(arguments: argparse.Namespace) -> NativeOptions:
    native = NativeOptions.quick_defaults() if arguments.quick else NativeOptions()
    if arguments.scaling_only:
        native.scenarios = ["per_core", "scaling"]
    if arguments.scenario:
        native.scenarios = [name for name in SCENARIOS if name in arguments.scenario]
    if arguments.workers_list:
        native.scaling_workers = list(arguments.workers_list)
    return native


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if arguments.render is not None:
        print(render(json.loads(arguments.render.read_text())))
        return 0
    options = options_from(arguments)
    progress = _progress
    notes: list[str] = []
    native_run: Callable[[Path], dict[str, Any]] | None = None
    mode = "require" if arguments.scaling_only else arguments.native
    if mode != "skip":
        print("native load generator: looking for dtlsload ...", flush=True)
        generator = locate(arguments.dtlsload)
        if isinstance(generator, str):
            if mode == "require":
                print(f"python -m benchmarks: error: {generator}", file=sys.stderr)
                return 2
            notes.append(
                f"native scenarios that need dtlsload SKIPPED: {generator}. The rate figures "
                "come from the Python generator, which shares the cores with the server."
            )
            print(f"native load generator: NONE: {generator}", flush=True)
        else:
            print(f"native load generator: {generator.path} ({generator.origin})", flush=True)
        native_options = native_options_from(arguments)
        native_run = functools.partial(run_native, generator, native_options, progress=progress)
        per_core = "per_core" in native_options.scenarios
        python_runs = not (arguments.scaling_only or arguments.no_python)
        if (
            not isinstance(generator, str)
            and per_core
            and python_runs
            and not arguments.python_rates
            and not arguments.only
        ):
            options.workloads = [name for name in options.workloads if name not in SUPERSEDED]
            notes.append(
                "handshake and round-trip rates come from dtlsload (per core, pinned); the "
                "Python generator ran only the memory and capacity workloads (--python-rates "
                "runs its rate workloads too)"
            )
    if arguments.scaling_only or arguments.no_python:
        options.workloads = []
        options.profile = "none"
        options.floor = False
    workloads = ", ".join(options.workloads) or "no"
    print(f"then the Python generator: {workloads} workloads", flush=True)
    results = run_benchmarks(options, progress=progress, native=native_run, notes=notes)
    print()
    print(render(results))
    if not arguments.no_save:
        latest, stamped = save_results(results, arguments.output_dir)
        print(f"\nresults written to {latest} and {stamped}")
    return 0


def _progress(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
