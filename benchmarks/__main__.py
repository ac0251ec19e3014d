"""``python -m benchmarks``: run the suite (see :mod:`benchmarks` and ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

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


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if arguments.render is not None:
        print(render(json.loads(arguments.render.read_text())))
        return 0
    options = options_from(arguments)
    print(f"running {', '.join(options.workloads)} against ours and trio.DTLSEndpoint ...")
    results = run_benchmarks(options, progress=lambda line: print(line, flush=True))
    print()
    print(render(results))
    if not arguments.no_save:
        latest, stamped = save_results(results, arguments.output_dir)
        print(f"\nresults written to {latest} and {stamped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
