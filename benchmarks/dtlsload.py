"""The native load generator ``dtlsload``: find or build it, run it pinned, read its JSON.

``dtlsload`` (``../shared/tools/dtlsload`` beside the project, C on the system OpenSSL: one
epoll loop, many associations) spends far less CPU per handshake or round trip than any Python
client, so the server under test, not the generator, is what a run measures.  This module

* **finds** it: ``--dtlsload PATH`` or ``$DTLSLOAD`` (a prebuilt binary, as on a machine
  without the sources), else **builds** it with ``make -C <sources> OUT=<build dir>`` from the
  first ``shared/tools/dtlsload`` found beside the repository or above it (``$DTLSLOAD_SRC``
  overrides); it needs ``gcc``, ``make`` and ``libssl-dev``.  When neither works,
  :func:`locate` says why, and the caller skips the native scenarios with that reason;
* **identifies** it: the path, and the SHA-256 of the binary (dtlsload has no ``--version``;
  the hash names the exact build), recorded in every result;
* **runs** G copies at once, each pinned to its own CPU (:func:`run_group`), and adds their
  results up (:func:`aggregate`): one dtlsload is one core, so a server with 8 workers needs
  several generators to be the bottleneck;
* **parses** its output strictly (:func:`parse_output`): the last line of stdout that is a
  JSON object, with the keys the mode must report, or :class:`DtlsloadOutputError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "REQUIRED_KEYS",
    "DtlsloadOutputError",
    "Generator",
    "GroupResult",
    "aggregate",
    "locate",
    "parse_output",
    "pin_to",
    "run_group",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where ``nox -s bench`` builds dtlsload (``build/`` is ignored by git).
DEFAULT_BUILD_DIRECTORY = REPO_ROOT / "build" / "dtlsload"
SOURCE_SUBPATH = Path("shared") / "tools" / "dtlsload"

#: Keys every result must have, by mode (``handshake``, ``echo``); a result without them is a
#: dtlsload of another version, or a crash, and is refused rather than read as zeros.
REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = {
    "handshake": ("handshakes_completed", "handshakes_failed", "handshakes_per_s_to_last_ok"),
    "echo": ("handshakes_completed", "round_trips", "msgs_per_s", "timeouts"),
    "idle": ("handshakes_completed", "healthy"),
}


class DtlsloadOutputError(ValueError):
    """dtlsload's stdout holds no usable result (no JSON object, or one without the keys)."""


@dataclass(frozen=True, slots=True)
class Generator:
    """The load generator that ran: recorded in the results so a reader knows what measured."""

    name: str
    path: str
    sha256: str
    origin: str

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "path": self.path,
            "sha256": self.sha256,
            "origin": self.origin,
        }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_directory() -> Path | None:
    """``$DTLSLOAD_SRC``, else the nearest ``shared/tools/dtlsload`` at or above the repo's
    parent (``../shared/tools/dtlsload`` for a checkout beside ``shared/``)."""
    explicit = os.environ.get("DTLSLOAD_SRC")
    if explicit:
        return Path(explicit) if (Path(explicit) / "dtlsload.c").exists() else None
    for base in (REPO_ROOT, *REPO_ROOT.parents):
        candidate = base / SOURCE_SUBPATH
        if (candidate / "dtlsload.c").exists():
            return candidate
    return None


def locate(
    explicit: Path | None, build_directory: Path = DEFAULT_BUILD_DIRECTORY
) -> Generator | str:
    """The dtlsload to use, or a sentence saying why there is none.

    Order: ``explicit`` (``--dtlsload``), ``$DTLSLOAD``, then a build from the sources into
    ``build_directory`` (``make`` only rebuilds when the sources changed).
    """
    given = explicit if explicit is not None else os.environ.get("DTLSLOAD")
    if given:
        path = Path(given)
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"dtlsload {path} is not an executable file"
        return Generator(
            "dtlsload", str(path.resolve()), _sha256(path), "given (--dtlsload/$DTLSLOAD)"
        )
    source = _source_directory()
    if source is None:
        return (
            f"no dtlsload: no --dtlsload/$DTLSLOAD and no {SOURCE_SUBPATH} beside the "
            "repository to build it from"
        )
    missing = [tool for tool in ("make", "cc") if shutil.which(tool) is None]
    if missing:
        return f"cannot build dtlsload from {source}: {', '.join(missing)} not installed"
    build_directory.mkdir(parents=True, exist_ok=True)
    try:
        completed = subprocess.run(
            ["make", "-C", str(source), f"OUT={build_directory}"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot build dtlsload from {source}: {error}"
    binary = build_directory / "dtlsload"
    if completed.returncode != 0 or not binary.exists():
        last = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return (
            f"cannot build dtlsload from {source} (make exit {completed.returncode}; "
            f"needs gcc and libssl-dev): {' | '.join(last)}"
        )
    return Generator("dtlsload", str(binary), _sha256(binary), f"built from {source}")


def parse_output(stdout: str, mode: str) -> dict[str, Any]:
    """dtlsload's result: the last stdout line that is a JSON object, checked for ``mode``'s
    keys (:data:`REQUIRED_KEYS`).  Progress goes to stderr, so stdout is normally that one
    line; anything before it is ignored."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise DtlsloadOutputError(f"dtlsload printed broken JSON: {error}") from None
        if not isinstance(data, dict):
            continue
        missing = [key for key in REQUIRED_KEYS.get(mode, ()) if key not in data]
        if missing:
            raise DtlsloadOutputError(
                f"dtlsload's {mode} result lacks {', '.join(missing)} (another version?)"
            )
        return data
    raise DtlsloadOutputError("dtlsload printed no JSON result")


def _number(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def aggregate(mode: str, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures of G dtlsload processes that ran at the same time, as one.

    * handshake: ``rate`` = all completed handshakes / the longest time any process took to
      its last successful one (``completed / handshakes_per_s_to_last_ok``): the group's rate
      over the time the whole group needed, not a sum of rates over different windows;
    * echo: ``rate`` = the sum of ``msgs_per_s`` (the windows run together, each the same
      ``--duration`` long after that process's handshakes);
    * both: counts summed; ``generator_cpu`` = each process's ``cpu_pct`` / 100 (the share of
      its one core it used: near 1.0 means that generator, not the server, was the limit).
    """
    total: dict[str, Any] = {"processes": len(results), "mode": mode}
    for key in (
        "handshakes_completed",
        "handshakes_failed",
        "hs_retransmits",
        "round_trips",
        "timeouts",
        "late_replies",
        "bad_replies",
        "send_drops",
        "icmp_refused",
    ):
        total[key] = int(sum(_number(result, key) for result in results))
    total["generator_cpu"] = [round(_number(r, "cpu_pct") / 100.0, 3) for r in results]
    if mode == "handshake":
        longest = 0.0
        for result in results:
            completed = _number(result, "handshakes_completed")
            rate = _number(result, "handshakes_per_s_to_last_ok")
            if completed > 0 and rate > 0:
                longest = max(longest, completed / rate)
        rate_value = total["handshakes_completed"] / longest if longest > 0 else 0.0
        total["rate"] = round(rate_value, 1)
        total["seconds"] = round(longest, 3)
    else:
        total["rate"] = round(sum(_number(result, "msgs_per_s") for result in results), 1)
    latencies = [r.get("handshake_latency_ms") for r in results]
    total["handshake_p50_ms"] = _worst(latencies, "p50")
    total["handshake_p99_ms"] = _worst(latencies, "p99")
    rtts = [r.get("rtt_ms") for r in results]
    total["rtt_p50_ms"] = _worst(rtts, "p50")
    total["rtt_p99_ms"] = _worst(rtts, "p99")
    ciphers = {r.get("negotiated_cipher") for r in results if r.get("negotiated_cipher")}
    total["negotiated_cipher"] = ", ".join(sorted(str(c) for c in ciphers)) or None
    errors = [str(r["first_error"]) for r in results if r.get("first_error")]
    total["first_error"] = errors[0] if errors else None
    return total


def _worst(values: Sequence[Any], key: str) -> float | None:
    """The largest ``key`` among the processes' latency summaries (the conservative one)."""
    found = [
        float(v[key]) for v in values if isinstance(v, dict) and isinstance(v.get(key), int | float)
    ]
    return round(max(found), 3) if found else None


def pin_to(cpu: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cpu`` before it runs (no window in which it
    runs elsewhere, unlike pinning after the start); None when ``cpu`` is None."""
    if cpu is None:
        return None
    wanted = {cpu}

    def pin() -> None:
        os.sched_setaffinity(0, wanted)

    return pin


@dataclass
class GroupResult:
    """What :func:`run_group` returns: the summed figures and every process's own result."""

    summary: dict[str, Any]
    results: list[dict[str, Any]]
    errors: list[str]


def run_group(
    generator: Generator,
    mode: str,
    arguments_per_process: Sequence[Sequence[str]],
    cpus: Sequence[int | None],
    timeout: float,
) -> GroupResult:
    """Start one dtlsload per entry of ``arguments_per_process`` at once, process i pinned to
    ``cpus[i]`` (None: not pinned), wait for all (killing any still running at ``timeout``),
    and parse and add up their results."""
    processes: list[subprocess.Popen[str]] = []
    try:
        for arguments, cpu in zip(arguments_per_process, cpus, strict=True):
            command = [generator.path, "--mode", mode, "--quiet", *arguments]
            processes.append(
                subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    preexec_fn=pin_to(cpu),
                )
            )
        deadline = time.monotonic() + timeout
        outputs: list[tuple[str, str, int | None]] = []
        for process in processes:
            try:
                out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.terminate()  # dtlsload still prints its JSON on SIGTERM
                out, err = process.communicate(timeout=10)
            outputs.append((out, err, process.returncode))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    for out, err, code in outputs:
        try:
            results.append(parse_output(out, mode))
        except DtlsloadOutputError as error:
            tail = " | ".join(err.strip().splitlines()[-3:])
            errors.append(f"{error} (exit {code}; {tail})")
    return GroupResult(aggregate(mode, results), results, errors)
