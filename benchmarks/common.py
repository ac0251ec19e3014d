"""What the servers under test and the load generator share: keys, suites, contexts, /proc.

Everything here is deliberately boring: one PSK identity and key for every peer, one cipher
suite per run (both sides offer exactly that suite, so every run negotiates what its name says),
the same MTU for both servers, and small readers for ``/proc/PID/status`` and ``/proc/PID/stat``
so one process can measure another without asking it.

The PSK callbacks here are *fixed-key* callbacks written against the ``cryptography`` cffi
bindings.  The load generator uses the client one (no per-connection lookup at all: it must stay
cheap), and the ``trio.DTLSEndpoint`` server uses the server one, because that is exactly what a
Trio user has to write today to get PSK into an ``SSL.Context``: pyOpenSSL has no PSK API.
Our own server uses its own :mod:`trio_dtls_server._openssl` glue and a mapping store, as any
user of the library would.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

from trio_dtls_server._openssl import new_dtls_context

__all__ = [
    "MallInfo2",
    "BENCH_IDENTITY",
    "BENCH_KEY",
    "BENCH_MTU",
    "ECDHE_PSK_SUITE",
    "PLAIN_PSK_SUITE",
    "SERVER_SOCKET_BUFFER",
    "MemoryReport",
    "clock_ticks_per_second",
    "cpu_seconds_of",
    "ffi",
    "install_fixed_server_psk",
    "lib",
    "new_client_context",
    "new_trio_server_context",
    "read_json_file",
    "rss_kib_of",
    "self_memory_report",
    "stop_process",
    "write_json_atomically",
]

_binding = Binding()
#: The ``cryptography`` cffi handles (untyped by nature); the load generator's data path calls
#: ``SSL_read``/``SSL_write``/``BIO_read``/``BIO_write`` through them to skip pyOpenSSL's
#: per-call buffer allocation.
ffi: Any = _binding.ffi
lib: Any = _binding.lib

#: The PSK identity every benchmark client presents.
BENCH_IDENTITY = b"bench-client"
#: 16 random-looking bytes; the value does not matter, only that both sides agree.
BENCH_KEY = bytes.fromhex("5f1e0c7a9b3d4e2f8a6c1b0d9e7f3a25")
#: UDP payload per datagram, IPv4 over Ethernet (1500 - 20 - 8); Trio's DTLSEndpoint guesses
#: the same value, and our server's default for IPv4 is the same.  Both are set explicitly.
BENCH_MTU = 1472
#: The two suites the issue names.
PLAIN_PSK_SUITE = "PSK-AES128-GCM-SHA256"
ECDHE_PSK_SUITE = "ECDHE-PSK-CHACHA20-POLY1305"
#: Both servers' socket buffers (our ``bind_udp`` uses 4 MiB; the Trio socket gets the same).
SERVER_SOCKET_BUFFER = 4 << 20

_SERVER_PSK_SIGNATURE = "unsigned int(SSL *, const char *, unsigned char *, unsigned int)"
_CLIENT_PSK_SIGNATURE = (
    "unsigned int(SSL *, const char *, char *, unsigned int, unsigned char *, unsigned int)"
)


@ffi.callback(_SERVER_PSK_SIGNATURE)  # type: ignore[untyped-decorator]
def _fixed_server_psk(ssl: Any, identity: Any, psk: Any, max_psk_len: int) -> int:
    # Runs inside OpenSSL: nothing may raise out of it.
    try:
        if identity == ffi.NULL or ffi.string(identity) != BENCH_IDENTITY:
            return 0
        ffi.memmove(psk, BENCH_KEY, len(BENCH_KEY))
        return len(BENCH_KEY)
    except BaseException:  # noqa: BLE001 - must not unwind through C frames
        return 0


@ffi.callback(_CLIENT_PSK_SIGNATURE)  # type: ignore[untyped-decorator]
def _fixed_client_psk(
    ssl: Any, hint: Any, identity: Any, max_identity_len: int, psk: Any, max_psk_len: int
) -> int:
    try:
        name = BENCH_IDENTITY + b"\0"
        ffi.memmove(identity, name, len(name))
        ffi.memmove(psk, BENCH_KEY, len(BENCH_KEY))
        return len(BENCH_KEY)
    except BaseException:  # noqa: BLE001 - must not unwind through C frames
        return 0


def new_client_context(suite: str) -> SSL.Context:
    """A DTLS 1.2 client context offering exactly ``suite``, with the fixed benchmark PSK."""
    context = new_dtls_context(server=False, ciphers=suite)
    lib.SSL_CTX_set_psk_client_callback(context._context, _fixed_client_psk)
    return context


def new_trio_server_context(suite: str) -> SSL.Context:
    """The context handed to ``trio.DTLSEndpoint.serve``: same options as our server's.

    Same DTLS-1.2-only version range, ``OP_NO_QUERY_MTU``, ``OP_NO_RENEGOTIATION`` and
    ``MODE_RELEASE_BUFFERS`` (our :func:`new_dtls_context`), same single suite, same key.
    """
    context = new_dtls_context(server=True, ciphers=suite)
    install_fixed_server_psk(context)
    return context


def install_fixed_server_psk(context: SSL.Context) -> None:
    """Answer every PSK lookup for :data:`BENCH_IDENTITY` with :data:`BENCH_KEY`."""
    lib.SSL_CTX_set_psk_server_callback(context._context, _fixed_server_psk)


# -- measuring a process from the outside ------------------------------------------------------


def rss_kib_of(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` in ``/proc/PID/status``)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmRSS line for pid {pid}")
    return int(match.group(1))


def clock_ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (``/proc/PID/stat`` fields 14, 15)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / clock_ticks_per_second()


# -- measuring a process from the inside ---------------------------------------------------------


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (``mallinfo2()``, glibc 2.33 and later)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _malloc_in_use() -> int | None:
    """Bytes handed out by glibc malloc (OpenSSL's memory, and Python objects > 512 bytes)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return int(info.uordblks) + int(info.hblkhd)


def _pymalloc_in_use() -> int | None:
    """Bytes in pymalloc's allocated blocks (Python objects of at most 512 bytes).

    ``sys._debugmallocstats`` prints to the C-level stderr, so fd 2 is pointed at a temporary
    file for the call.
    """
    stats = getattr(sys, "_debugmallocstats", None)
    if stats is None:
        return None
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile(mode="w+b") as capture:
            os.dup2(capture.fileno(), 2)
            try:
                stats()
            finally:
                os.dup2(saved, 2)
            capture.seek(0)
            text = capture.read().decode("ascii", "replace")
    finally:
        os.close(saved)
    match = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    return int(match.group(1).replace(",", "")) if match else None


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """One server process's memory and state at one moment (written on SIGUSR1)."""

    sequence: int
    rss_kib: int
    malloc_in_use: int | None
    pymalloc_in_use: int | None
    peers: int
    cpu_seconds: float
    server_stats: dict[str, Any]
    #: With ``--tracemalloc`` only: ``{"lines": [[bytes, blocks, "file:line"], ...],
    #: "files": [...]}``, the growth since report 1.
    allocation_sites: dict[str, list[list[Any]]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryReport:
        fields: dict[str, Any] = {name: data.get(name) for name in cls.__slots__}
        return cls(**fields)


def self_memory_report(
    sequence: int,
    peers: int,
    server_stats: dict[str, Any],
    allocation_sites: dict[str, list[list[Any]]] | None = None,
) -> MemoryReport:
    return MemoryReport(
        sequence=sequence,
        rss_kib=rss_kib_of(os.getpid()),
        malloc_in_use=_malloc_in_use(),
        pymalloc_in_use=_pymalloc_in_use(),
        peers=peers,
        cpu_seconds=time.process_time(),
        server_stats=server_stats,
        allocation_sites=allocation_sites,
    )


def stop_process(process: subprocess.Popen[str], timeout: float) -> None:
    """Stop a server process as a user would (SIGINT: a graceful shutdown), killing it if it
    has not exited within ``timeout`` seconds; returns once it has exited."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def write_json_atomically(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so a reader never sees half a file (temporary file + rename)."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, sort_keys=True))
    os.replace(temporary, path)


def read_json_file(path: Path) -> Any:
    with contextlib.suppress(FileNotFoundError):
        return json.loads(path.read_text())
    return None
