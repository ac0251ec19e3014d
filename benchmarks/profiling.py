"""Turn a profile of the server under test into a short list of where its time goes.

Two sources:

* **py-spy** (preferred; ``pip install py-spy``): sampled from outside the process with
  ``--native``, so samples that end in C are attributed to the library they are in (OpenSSL
  inside the ``cryptography`` wheel, libc system calls, the interpreter).  Its ``raw`` output
  is one collapsed stack per line: ``frame;frame;...;leaf COUNT``.
* **cProfile** (fallback, built in): deterministic, but it inflates Python call overhead and
  cannot see into C; summarised with :mod:`pstats`.

Percentages are of the samples in which the server was busy (py-spy skips idle samples).
"""

from __future__ import annotations

import pstats
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["format_profile", "summarise_collapsed", "summarise_cprofile"]

# Which library a native leaf frame belongs to, by a piece of its text (first match wins).
_NATIVE_KINDS = [
    ("_rust.abi3.so", "OpenSSL + cffi glue (C, in the cryptography wheel)"),
    ("libcrypto", "OpenSSL (C)"),
    ("libssl", "OpenSSL (C)"),
    ("_cffi_backend", "cffi call machinery (C)"),
    ("libc.so", "libc: system calls (sendto, recvfrom, epoll_wait) and malloc"),
    ("ld-linux", "dynamic linker (C)"),
    ("socketmodule.c", "CPython socket module (C)"),
]
_PROJECT_MARKERS = ("trio_dtls_server/", "OpenSSL/", "trio/", "benchmarks/", "outcome/")


def _is_python_frame(frame: str) -> bool:
    return ".py:" in frame or "<frozen" in frame


def _leaf_kind(frame: str) -> str:
    if _is_python_frame(frame):
        return "Python bytecode (the frame itself)"
    for marker, kind in _NATIVE_KINDS:
        if marker in frame:
            return kind
    return "CPython runtime and other C"


_MODULE_GROUPS = [
    ("OpenSSL/", "pyOpenSSL (and the OpenSSL C it calls)"),
    ("trio/", "trio (scheduler, epoll, channels, cancel scopes)"),
    ("outcome/", "trio (scheduler, epoll, channels, cancel scopes)"),
    ("benchmarks/", "benchmark harness and echo handler"),
]


def _module_of(frame: str) -> str:
    """Our files one by one; other packages as one group each."""
    inside = frame[frame.rfind("(") + 1 :].rstrip(")")
    path = inside.rsplit(":", 1)[0]
    if "trio_dtls_server/" in path:
        return path[path.index("trio_dtls_server/") :]
    for marker, group in _MODULE_GROUPS:
        if marker in path:
            return group
    return "Python standard library and other"


def _short(frame: str) -> str:
    # "DTLSSession.send (trio_dtls_server/_session.py:346)" stays; site-packages paths go.
    return frame.replace("site-packages/", "")


def summarise_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Summarise py-spy ``--format raw`` output: by leaf kind, by Python function, inclusive."""
    by_kind: Counter[str] = Counter()
    by_python_function: Counter[str] = Counter()
    by_module: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        by_kind[_leaf_kind(frames[-1])] += count
        python_frames = [frame for frame in frames if _is_python_frame(frame)]
        if python_frames:
            by_python_function[_short(python_frames[-1])] += count
            by_module[_module_of(python_frames[-1])] += count
        for frame in dict.fromkeys(python_frames):
            if any(marker in frame for marker in _PROJECT_MARKERS):
                inclusive[_short(frame)] += count

    def shares(counter: Counter[str], limit: int) -> list[list[Any]]:
        return [[round(100.0 * n / total, 1), name] for name, n in counter.most_common(limit)]

    if total == 0:
        return {"tool": "py-spy", "samples": 0}
    # The harness and trio's outermost frames are in every sample: they say nothing.
    for frame, count in list(inclusive.items()):
        if count >= 0.99 * total:
            del inclusive[frame]
    return {
        "tool": "py-spy",
        "samples": total,
        "by_leaf_kind": shares(by_kind, 10),
        "self_by_module": shares(by_module, 10),
        "self_by_python_function": shares(by_python_function, top),
        "inclusive": shares(inclusive, top + 10),
    }


def summarise_cprofile(path: Path, top: int = 15) -> dict[str, Any]:
    """Summarise a cProfile dump: top functions by own time and by cumulative time."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1e-9

    def name(key: tuple[str, int, str]) -> str:
        filename, line, function = key
        shortened = "/".join(Path(filename).parts[-2:]) if filename != "~" else "builtin"
        return f"{function} ({shortened}:{line})"

    by_own = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    by_cumulative = sorted(raw.items(), key=lambda item: item[1][3], reverse=True)[: top + 10]
    return {
        "tool": "cProfile",
        "total_seconds": round(total, 3),
        "self_by_python_function": [
            [round(100.0 * entry[2] / total, 1), name(key)] for key, entry in by_own
        ],
        "inclusive": [
            [round(100.0 * entry[3] / total, 1), name(key)] for key, entry in by_cumulative
        ],
    }


def format_profile(summary: dict[str, Any], *, top: int = 12) -> list[str]:
    """Plain-text lines for the console and docs/performance.md."""
    lines: list[str] = []
    if summary.get("tool") == "py-spy":
        lines.append(f"py-spy, {summary.get('samples', 0)} busy samples")
        if summary.get("by_leaf_kind"):
            lines.append("  where the CPU is when sampled (leaf frame):")
            lines += [f"    {share:5.1f}%  {kind}" for share, kind in summary["by_leaf_kind"]]
    else:
        lines.append(f"cProfile, {summary.get('total_seconds', 0)} s of profiled time")
    if summary.get("self_by_module"):
        lines.append("  self time by module of the innermost Python frame (with the C below it):")
        lines += [f"    {share:5.1f}%  {module}" for share, module in summary["self_by_module"]]
    if summary.get("self_by_python_function"):
        lines.append("  self time by Python function (including the C it calls directly):")
        for share, name in summary["self_by_python_function"][:top]:
            lines.append(f"    {share:5.1f}%  {name}")
    if summary.get("inclusive"):
        lines.append("  inclusive time (the function and everything it calls):")
        for share, name in summary["inclusive"][: top + 6]:
            lines.append(f"    {share:5.1f}%  {name}")
    return lines
