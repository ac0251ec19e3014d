"""One worker of a group (``serve --workers N``): a full server on a socket it was handed.

The supervisor (:mod:`._supervisor`) starts each worker as ``python -m
trio_dtls_server._worker_main`` with

* its UDP socket (one of the group bound with ``SO_REUSEPORT``) open at the descriptor number
  named in its :class:`WorkerSpec`, and the write end of a *status pipe* likewise;
* the :class:`WorkerSpec` itself, pickled, length-prefixed, on its standard input.

The worker runs a :class:`~trio_dtls_server.DTLSServer` on that socket (reader task, peer
tasks: nothing is shared with the other workers but the cookie master key) until SIGTERM or
SIGINT, then closes every peer with close_notify, like a single ``serve``.  SIGHUP re-reads the
PSK file.  On the status pipe it writes one JSON object per line: ``{"ready": pid}`` once it
serves, then ``{"statistics": {...}}`` (its :meth:`~trio_dtls_server.DTLSServer.statistics`)
every ``statistics_interval`` seconds and once more as it stops.

**Nothing outlives the supervisor.**  The supervisor keeps the write end of the worker's
standard input open for its whole life and never writes to it after the spec; when the
supervisor ends, however it ends (``kill -9`` included), the kernel closes that end and the
worker reads end-of-file, which it treats like SIGTERM.  (Linux's ``PR_SET_PDEATHSIG`` is not
used: it fires when the *thread* that forked exits, and Trio starts processes from a worker
thread that retires when idle.)
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pickle
import signal
import socket as stdlib_socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import trio

from ._certificates import CertificateConfig
from ._codes import EventCode
from ._config import ServerConfig
from ._display import Display
from ._events import InfoEvent, ServerEvent
from ._psk import PskFileStore
from ._server import DTLSServer, Handler
from ._transport import UDPTransport

__all__ = [
    "DisplaySettings",
    "WorkerSpec",
    "make_handler",
    "read_spec",
    "resolve_callable",
    "resolve_handler",
    "serve_worker",
]

#: Bytes of the big-endian length that precedes the pickled spec on standard input.
SPEC_LENGTH_BYTES = 8


@dataclass(frozen=True, slots=True)
class DisplaySettings:
    """How a worker prints its events (the ``serve`` display options); see :class:`Display`."""

    log_format: Literal["text", "json"] = "text"
    quiet: bool = False
    hex_limit: int = 0
    #: ``--stats-interval``: each worker prints its own statistics line this often; 0 = never.
    stats_interval: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs, sent by the supervisor (pickled: it is the parent's data)."""

    #: 1 to N; shown as ``[worker K]``.
    number: int
    socket_fd: int
    status_fd: int
    #: Shared by every worker of the group (and their replacements): see :mod:`._cookie`.
    cookie_secret: bytes
    #: The PSK source (bytes, a mapping, a store); None with ``psk_file`` or without PSKs.
    psk: Any
    #: A PSK file the worker reads itself (and re-reads on SIGHUP).
    psk_file: str | None
    certificate: CertificateConfig | None
    config: ServerConfig
    #: An importable ``"module:function"`` name, or a callable pickle can send by reference.
    handler: Handler | str
    #: Likewise; called once in the worker, with no arguments, to make the handler (per-worker
    #: state: a database pool, a cache).  Overrides ``handler`` when given.
    handler_factory: Callable[[], Handler] | str | None
    #: None: events go to :mod:`logging` only (in the worker's process).
    display: DisplaySettings | None
    statistics_interval: float
    #: What this worker's server puts first in every Connection ID it issues: its index in the
    #: socket group (``number - 1``) when the supervisor steers CID records to their worker
    #: (:mod:`._steering`), empty when it does not (one worker, no CIDs, no program).
    connection_id_prefix: bytes = b""


def resolve_handler(handler: Handler | str) -> Handler:
    """The handler a ``"package.module:function"`` name (or a callable) stands for.

    Raises ValueError for a name without ``:``, ImportError / AttributeError for one that does
    not resolve, TypeError when what it names is not callable.
    """
    result: Handler = resolve_callable(handler, "handler")
    return result


def resolve_callable(target: Any, what: str) -> Any:
    """The callable ``target`` is, or the one its ``"package.module:attribute"`` name names."""
    if not isinstance(target, str):
        if not callable(target):
            raise TypeError(f"{what} {target!r} is not callable")
        return target
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"{what} {target!r} is not a 'package.module:function' name")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise TypeError(f"{what} {target!r} names {found!r}, which is not callable")
    return found


def make_handler(spec: WorkerSpec) -> Handler:
    """The worker's handler: the factory's product when there is one, else ``handler``."""
    if spec.handler_factory is None:
        return resolve_handler(spec.handler)
    factory = resolve_callable(spec.handler_factory, "handler_factory")
    handler = factory()
    if not callable(handler):
        raise TypeError(f"handler_factory {spec.handler_factory!r} returned {handler!r}")
    result: Handler = handler
    return result


def read_spec(fd: int = 0) -> WorkerSpec:
    """Read the length-prefixed pickled :class:`WorkerSpec` from ``fd`` (standard input).

    Exact reads with :func:`os.read`: a buffered reader could swallow the end-of-file that
    later tells the worker its supervisor is gone.
    """
    length = int.from_bytes(_read_exactly(fd, SPEC_LENGTH_BYTES), "big")
    spec = pickle.loads(_read_exactly(fd, length))
    if not isinstance(spec, WorkerSpec):
        raise TypeError(f"expected a WorkerSpec on standard input, got {type(spec).__name__}")
    return spec


def _read_exactly(fd: int, count: int) -> bytes:
    chunks: list[bytes] = []
    while count:
        chunk = os.read(fd, count)
        if not chunk:
            raise EOFError("the supervisor closed the pipe before sending the whole spec")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


class _StatusPipe:
    """The worker's end of the status pipe: one JSON object per line, never blocking serving
    for long (the supervisor reads it all the time)."""

    def __init__(self, fd: int) -> None:
        self._stream = trio.lowlevel.FdStream(fd)
        self._lock = trio.Lock()
        self.broken = False

    async def send(self, message: dict[str, Any]) -> None:
        if self.broken:
            return
        line = (json.dumps(message, separators=(",", ":")) + "\n").encode("ascii")
        async with self._lock:
            try:
                await self._stream.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.broken = True  # the supervisor is gone; stdin's EOF stops us

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _report_statistics(server: DTLSServer, status: _StatusPipe, interval: float) -> None:
    while True:
        await status.send({"statistics": server.statistics().as_dict()})
        await trio.sleep(interval)


async def _print_events(stream: trio.MemoryReceiveChannel[ServerEvent], display: Display) -> None:
    async for event in stream:
        # The supervisor prints the one listening line, once every worker is up.
        if event.code != "listening":
            display.show(event)


async def _print_statistics(server: DTLSServer, display: Display, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        display.show_statistics(server.statistics())


async def _watch_supervisor(stop: trio.Event) -> None:
    """Set ``stop`` when standard input reaches end-of-file: the supervisor has gone."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    async with stream:
        while await stream.receive_some(4096):
            pass  # the supervisor never writes after the spec; ignore anything that comes
    stop.set()


async def serve_worker(spec: WorkerSpec) -> int:
    """Serve on the spec's socket until SIGTERM/SIGINT or the supervisor's end; exit code."""
    psk = PskFileStore(spec.psk_file) if spec.psk_file is not None else spec.psk
    server = DTLSServer(
        psk,
        handler=make_handler(spec),
        config=spec.config,
        certificate=spec.certificate,
        cookie_secret=spec.cookie_secret,
    )
    # The first byte of every CID this worker issues is its index in the socket group, so the
    # supervisor's BPF program steers a client that changed address back to this worker.
    server._connection_id_prefix = spec.connection_id_prefix
    sock = stdlib_socket.socket(fileno=spec.socket_fd)
    transport = UDPTransport(sock)
    status = _StatusPipe(spec.status_fd)
    display: Display | None = None
    if spec.display is not None:
        display = Display(
            sys.stdout,
            side="server",
            log_format=spec.display.log_format,
            quiet=spec.display.quiet,
            hex_limit=spec.display.hex_limit,
            always_show=frozenset({"listening", "summary"}),
            worker=spec.number,
        )
    async with contextlib.AsyncExitStack() as stack:
        signals = stack.enter_context(trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))
        stream = (
            None
            if display is None
            else await stack.enter_async_context(server.events(wanted=display.event_filter()))
        )
        async with trio.open_nursery() as nursery:
            if stream is not None and display is not None:
                nursery.start_soon(_print_events, stream, display)
            if isinstance(psk, PskFileStore):
                # Before "ready": the supervisor may forward SIGHUP as soon as all are ready.
                await nursery.start(server.reload_psk_on_signal)
            await nursery.start(server.serve_on, transport)
            await status.send({"ready": os.getpid()})
            nursery.start_soon(_report_statistics, server, status, spec.statistics_interval)
            if display is not None and spec.display is not None and spec.display.stats_interval:
                nursery.start_soon(_print_statistics, server, display, spec.display.stats_interval)
            orphaned = trio.Event()
            nursery.start_soon(_watch_supervisor, orphaned)
            reason = await _first_stop_reason(signals, orphaned)
            note = InfoEvent(
                EventCode.SHUTDOWN,
                f"{reason}: shutting down, close_notify to {server.peer_count} peer(s)",
            )
            if display is not None:
                display.show(note)
            else:
                logging.getLogger("trio_dtls_server").info("%s", note.message)
            await server.aclose()
            nursery.cancel_scope.cancel()
        if stream is not None and display is not None:
            while True:  # what the shutdown reported is still queued
                try:
                    event = stream.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if event.code != "listening":
                    display.show(event)
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await status.send({"statistics": server.statistics().as_dict()})
            await status.aclose()
    return 0


async def _first_stop_reason(signals: Any, orphaned: trio.Event) -> str:
    """Wait for SIGTERM/SIGINT or the supervisor's end; say which, for the shutdown line."""
    reason = "the supervisor has gone"
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            nonlocal reason
            async for number in signals:
                reason = f"{signal.Signals(number).name} received"
                break
            nursery.cancel_scope.cancel()

        async def on_orphaned() -> None:
            await orphaned.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_signal)
        nursery.start_soon(on_orphaned)
    return reason


def main() -> int:
    """``python -m trio_dtls_server._worker_main``: read the spec from stdin, serve, exit 0."""
    # Until Trio installs its handlers: a SIGHUP forwarded to a worker that is still starting
    # must not end it (it reads the PSK file as it starts anyway).  SIGINT is the supervisor's
    # business: the worker has a process group of its own, and a stray one before Trio runs
    # would only make a traceback.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = read_spec(0)
    # As serve's main(): events reach the terminal through the Display only.
    library_logger = logging.getLogger("trio_dtls_server")
    if spec.display is not None:
        library_logger.addHandler(logging.NullHandler())
        library_logger.propagate = False
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return trio.run(serve_worker, spec)
