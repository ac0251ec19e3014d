"""Several worker processes on one address and port: ``serve --workers N`` and
:func:`serve_workers`.

One server process is one core.  The way production UDP servers use more (nginx and Envoy
workers) is Linux's ``SO_REUSEPORT``: N sockets bound to one address and port, and the kernel
hands each datagram to one of them by a hash of its source and destination, so a client stays
on one socket.  Here:

* the **supervisor** (:class:`Supervisor`, this process) binds the N sockets
  (:func:`~._transport.bind_reuseport_group`) and keeps them open for its whole life;
* **worker** K (:mod:`._worker`, a child process) gets socket K by descriptor and runs a full
  :class:`~trio_dtls_server.DTLSServer` on it: reader task, peer tasks, its own limits;
* a worker that dies is restarted **on the same socket**.  The group never changes, so the
  kernel keeps steering every client to the socket it used before: the other workers' peers
  notice nothing, and the dead worker's peers reach its replacement (which does not know them:
  they handshake again).  Datagrams that arrive meanwhile wait in the socket's buffer;
* the **cookie secret** is shared: the supervisor draws one master key and gives it to every
  worker and every replacement, and each derives the rotating secret from it and the clock
  (:mod:`._cookie`), so any worker accepts a cookie any other made, also across a restart;
* with Connection IDs (RFC 9146), worker K puts its index (K - 1) first in every CID it
  issues and the supervisor attaches a BPF program to the group that steers each CID record
  to the socket of the worker its CID names (:mod:`._steering`): a client that changes
  address still reaches its association.  The program belongs to the group and the indices
  are the sockets' places in it, which never change while the supervisor holds every socket;
* SIGTERM/SIGINT to the supervisor (:meth:`Supervisor.aclose`) stop every worker gracefully:
  each sends close_notify to its peers.  SIGHUP (:meth:`Supervisor.reload_psk`) is forwarded,
  and every worker re-reads its PSK file.

Why child processes started with ``python -m trio_dtls_server._worker_main`` (``pass_fds`` for the
socket and the status pipe, the settings pickled on stdin) rather than :mod:`multiprocessing`:
the supervisor's loop is Trio's (``trio.lowlevel.open_process``, waits in the nursery that owns
the workers), a worker is a fresh interpreter with nothing inherited but the two descriptors,
and nothing requires an ``if __name__ == "__main__"`` guard in the caller's program.

What the workers do **not** share: each has its own OpenSSL session cache and ticket keys
(the ``cryptography`` bindings offer no callbacks to share them), its own peer table and its
own limits (``max_peers`` and the others are *per worker*, as nginx's ``worker_connections``).
A client that resumes a session from a new port may land on another worker; that worker does
a full handshake instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import socket as stdlib_socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import trio

from ._certificates import CertificateConfig
from ._codes import EventCode
from ._config import DEFAULT_PORT, ServerConfig
from ._errors import DTLSError
from ._events import EventHub, InfoEvent, ServerEvent, WarningEvent
from ._psk import PskFileStore, PskSource
from ._server import DTLSServer, Handler, ServerBindError
from ._stats import ServerStatistics, StatisticsSnapshot
from ._steering import SteeringPlan, attach_program, plan_steering
from ._transport import bind_reuseport_group, reuseport_balances
from ._worker import (
    SPEC_LENGTH_BYTES,
    DisplaySettings,
    WorkerSpec,
    resolve_callable,
    resolve_handler,
)
from .qt import qt_ack_handler

__all__ = [
    "Supervisor",
    "WorkerExited",
    "WorkerStartError",
    "WorkersUnsupportedError",
    "available_cpus",
    "serve_workers",
]

Address = tuple[str, int]

#: Bytes of the cookie master key the supervisor draws.
COOKIE_MASTER_KEY_LENGTH = 32
#: A worker that ran at least this long before it died is restarted at once (the first delay);
#: one that dies sooner waits twice as long as the last time, up to the maximum.
STABLE_AFTER = 10.0


class WorkersUnsupportedError(DTLSError, RuntimeError):
    """More than one worker on a platform without load-balancing ``SO_REUSEPORT``."""


class WorkerStartError(DTLSError, RuntimeError):
    """A worker ended before it was serving, at start: the whole group does not start."""


@dataclass(frozen=True, slots=True)
class WorkerExited(WarningEvent):
    """A worker ended while the group was serving; it is being restarted on its socket.

    ``code`` is ``worker_restarted``.  ``exit_status`` is the process's return code as
    :attr:`subprocess.Popen.returncode` gives it (negative: killed by that signal).
    """

    worker: int = 0
    pid: int = 0
    exit_status: int = 0
    restarts: int = 0
    delay: float = 0.0


def available_cpus() -> int:
    """``--workers auto``: the CPUs this process may run on (its affinity mask, not the
    machine's count: a container or ``taskset`` may allow fewer)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return max(1, len(affinity(0)))
    return max(1, os.cpu_count() or 1)


def unsupported_message(workers: int) -> str:
    """The one line for ``--workers N`` (N > 1) on a platform that cannot balance them."""
    return (
        f"--workers {workers} needs Linux's load-balancing SO_REUSEPORT, which this platform "
        f"({sys.platform}) does not have; use --workers 1"
    )


def describe_exit(status: int) -> str:
    """``exited with code 3`` / ``was killed by SIGKILL`` for a return code."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with code {status}"


def connection_id_length_of(config: ServerConfig) -> int:
    """The length of the CIDs the workers' servers issue; 0 when they issue none."""
    return config.connection_id_length


def _zero_snapshot() -> StatisticsSnapshot:
    return ServerStatistics().snapshot(peers=0, handshaking=0, events_dropped=0)


def snapshot_from_dict(values: dict[str, Any]) -> StatisticsSnapshot:
    """A :class:`StatisticsSnapshot` from the dict a worker sent (unknown keys ignored, so a
    supervisor and a worker of slightly different versions still agree)."""
    names = {f.name for f in dataclasses.fields(StatisticsSnapshot)}
    return StatisticsSnapshot(**{k: v for k, v in values.items() if k in names})


@dataclass(slots=True)
class _Worker:
    """The supervisor's view of worker ``number``: its socket, its current process."""

    number: int
    sock: stdlib_socket.socket
    process: trio.Process | None = None
    started_at: float = 0.0
    ready: trio.Event = field(default_factory=trio.Event)
    statistics: StatisticsSnapshot = field(default_factory=_zero_snapshot)
    restarts: int = 0
    delay: float = 0.0


class Supervisor:
    """Runs ``workers`` server processes on one address and port, and keeps them running.

    ``psk``, ``config``, ``certificate`` and ``identity_hint`` are those of
    :class:`~trio_dtls_server.DTLSServer`, and every worker gets them; they must pickle
    (bytes, a mapping, a :class:`~trio_dtls_server.PskFileStore` -- which each worker reads
    itself, and re-reads on :meth:`reload_psk` --, a store class defined in a module).
    ``handler`` is a ``"package.module:function"`` name or a function defined at the top of
    an importable module (pickle sends it by name); the workers import it, with the
    supervisor's ``sys.path``.  ``handler_factory`` (likewise a name or an importable
    function) is the alternative for handlers with per-worker state: each worker calls it
    once, with no arguments, and serves with the handler it returns.  Everything is checked
    here, in this process (the factory is imported, not called), so a mistake is one
    exception now and not N crashing workers.

    ``display`` makes each worker print its events on this process's standard output, each
    line labelled ``[worker K]`` (what ``serve --workers N`` does); None leaves the workers'
    events to :mod:`logging` in their own processes.  The supervisor's own events
    (``worker_started``, ``worker_restarted``, ``listening``, ``stopped``) come from
    :meth:`events`.  :meth:`worker_statistics` has each worker's latest counters (sent every
    ``statistics_interval`` seconds).

    Use it like a server: ``address = await nursery.start(supervisor.serve, host, port)``, or
    call :func:`serve_workers`.
    """

    def __init__(
        self,
        psk: PskSource | None = None,
        *,
        workers: int,
        handler: Handler | str = qt_ack_handler,
        handler_factory: Callable[[], Handler] | str | None = None,
        config: ServerConfig | None = None,
        identity_hint: str | None = None,
        certificate: CertificateConfig | None = None,
        display: DisplaySettings | None = None,
        statistics_interval: float = 1.0,
        stop_timeout: float = 10.0,
        start_timeout: float = 60.0,
        restart_delay: tuple[float, float] = (0.1, 10.0),
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if workers > 1 and not reuseport_balances():
            raise WorkersUnsupportedError(unsupported_message(workers))
        if not statistics_interval > 0:
            raise ValueError(f"statistics_interval must be positive, not {statistics_interval}")
        self.workers = workers
        config = config or ServerConfig()
        if identity_hint is not None:
            config = dataclasses.replace(config, identity_hint=identity_hint)
        self.config = config
        # Build one server here: every error in the credentials or the configuration (a bad
        # file, no usable cipher) is raised now, as DTLSServer raises it.
        DTLSServer(psk, handler=resolve_handler(handler), config=config, certificate=certificate)
        if handler_factory is not None:
            # Resolved (imported) here, but called only in the workers: what it makes, such as
            # a connection pool, belongs to the worker's process.
            resolve_callable(handler_factory, "handler_factory")
        psk_file = str(psk.path) if isinstance(psk, PskFileStore) else None
        self._psk_file = psk_file
        self._cookie_secret = os.urandom(COOKIE_MASTER_KEY_LENGTH)
        self._template = WorkerSpec(
            number=0,
            socket_fd=-1,
            status_fd=-1,
            cookie_secret=self._cookie_secret,
            psk=None if psk_file is not None else psk,
            psk_file=psk_file,
            certificate=certificate,
            config=config,
            handler=handler,
            handler_factory=handler_factory,
            display=display,
            statistics_interval=statistics_interval,
        )
        _check_picklable(self._template)
        #: Steering by CID, as the configuration asks for it; ``_steering_now`` is what
        #: :meth:`serve` achieved (the program may fail to attach).
        self._steering = plan_steering(workers, connection_id_length_of(config))
        self._steering_now = self._steering
        self._stop_timeout = stop_timeout
        self._start_timeout = start_timeout
        self._restart_delay = restart_delay
        self._hub = EventHub()
        self._workers: list[_Worker] = []
        self._local_address: Address | None = None
        self._stopping = False
        self._stop_requested = trio.Event()
        self._stopped = trio.Event()
        self._stopped.set()
        #: Restarts of any worker since :meth:`serve` started (each also an event).
        self.restarts = 0
        # The last statistics of each worker process that died (see retired_statistics).
        self._retired: list[StatisticsSnapshot] = []

    # -- public API -----------------------------------------------------------------------------

    @property
    def local_address(self) -> Address | None:
        """The bound ``(host, port)`` (the real port when 0 was asked), or None."""
        return self._local_address

    @property
    def reloads_psk(self) -> bool:
        """Whether the workers have a PSK file to re-read (:meth:`reload_psk`)."""
        return self._psk_file is not None

    @property
    def steers_connection_ids(self) -> bool:
        """Whether ``tls12_cid`` records go to the worker their connection ID names (a BPF
        program on the socket group; see the deployment page): as planned before
        :meth:`serve`, as achieved once it has bound the group."""
        return self._steering_now.enabled

    def worker_pids(self) -> list[int | None]:
        """Each worker's process id (None while it is being restarted), worker 1 first."""
        return [
            w.process.pid if w.process is not None and w.process.returncode is None else None
            for w in self._workers
        ]

    def worker_restarts(self) -> list[int]:
        """How many times each worker was restarted, worker 1 first."""
        return [w.restarts for w in self._workers]

    def worker_statistics(self) -> list[StatisticsSnapshot]:
        """Each worker's latest :meth:`~trio_dtls_server.DTLSServer.statistics`, worker 1 first.

        At most ``statistics_interval`` seconds old.  A worker that was restarted starts from
        zero again (a counter reset, as Prometheus understands one); one that has not reported
        yet shows zeros.
        """
        return [w.statistics for w in self._workers]

    def retired_statistics(self) -> list[StatisticsSnapshot]:
        """The last statistics of every worker process that died and was replaced.

        A replacement counts from zero; adding these to :meth:`worker_statistics` gives counters
        for the whole group that never go backwards (what :func:`~trio_dtls_server.metrics_registry`
        does with ``retired=``).  Their gauges (peers now) are history, not the present.
        """
        return list(self._retired)

    def reload_psk(self) -> int:
        """Forward SIGHUP to every running worker: each re-reads the PSK file (and says so).

        Returns how many workers were signalled.  A worker that is being restarted reads the
        file as it starts.  Raises TypeError when there is no PSK file.
        """
        if self._psk_file is None:
            raise TypeError("reload_psk needs a PskFileStore as the workers' PSK store")
        return self._signal_all(signal.SIGHUP)

    @asynccontextmanager
    async def events(
        self, max_buffer: int = 1024
    ) -> AsyncIterator[trio.MemoryReceiveChannel[ServerEvent]]:
        """The supervisor's own events (see :meth:`DTLSServer.events`)."""
        receive = self._hub.subscribe(max_buffer)
        async with receive:
            yield receive

    def close(self) -> None:
        """Stop every worker gracefully (SIGTERM: close_notify to each peer); returns at once."""
        self._stop_requested.set()

    async def aclose(self) -> None:
        """:meth:`close`, and wait until :meth:`serve` has returned."""
        self.close()
        await self._stopped.wait()

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind the group on ``host``:``port``, start the workers, keep them running until
        :meth:`close` or cancellation; then stop them all gracefully and close the sockets.

        ``task_status.started`` gets the bound ``(host, port)`` once every worker serves.
        Raises :class:`~trio_dtls_server.ServerBindError` when the address cannot be bound and
        :class:`WorkerStartError` when a worker ends before it serves.
        """
        if not self._stopped.is_set():
            raise RuntimeError("this supervisor is already serving")
        try:
            sockets = await bind_reuseport_group(
                host, port, self.workers, receive_buffer=self.config.receive_buffer
            )
        except OSError as error:
            raise ServerBindError(error.errno or 0, error.strerror or str(error)) from None
        self._stopped = trio.Event()
        self._stop_requested = trio.Event()
        self._stopping = False
        self.restarts = 0
        self._workers = [_Worker(number, sock) for number, sock in enumerate(sockets, 1)]
        self._steering_now = self._attach_steering(sockets[0])
        if self._steering_now.warning is not None:
            self._hub.emit(
                WarningEvent(EventCode.CONNECTION_ID_STEERING, self._steering_now.warning)
            )
        bound = sockets[0].getsockname()
        self._local_address = (bound[0], bound[1])
        start_error: WorkerStartError | None = None
        try:
            async with trio.open_nursery() as nursery:
                failed: list[str] = []
                for worker in self._workers:
                    nursery.start_soon(self._keep_running, worker, failed)
                try:
                    # Raised outside the nursery (below), not wrapped in an exception group.
                    start_error = await self._wait_until_ready(failed)
                    if start_error is None:
                        host_text, port_number = self._local_address
                        self._hub.emit(
                            InfoEvent(
                                EventCode.LISTENING,
                                f"Server is listening on address {host_text} and port "
                                f"{port_number}",
                            )
                        )
                        task_status.started(self._local_address)
                        await self._stop_requested.wait()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._stop_workers()
            if start_error is not None:
                raise start_error
        finally:
            for worker in self._workers:
                worker.sock.close()
            self._local_address = None
            if start_error is None:
                self._hub.emit(
                    InfoEvent(EventCode.STOPPED, "Server is not accepting new connections")
                )
            self._stopped.set()

    # -- inside ---------------------------------------------------------------------------------

    def _attach_steering(self, sock: stdlib_socket.socket) -> SteeringPlan:
        """Attach the steering program to the group, before any worker reads; what it achieved.

        A kernel that refuses (not Linux, before 4.5, ``optmem_max`` too small) costs the group
        its steering, not its start: the workers then issue CIDs without a prefix and a client
        that changes address may reach another worker and handshake again, as without CIDs.
        """
        plan = self._steering
        if not plan.enabled:
            return plan
        try:
            attach_program(sock, plan.program())
        except OSError as error:
            return plan.disabled(
                "cannot steer connection ids to their workers (SO_ATTACH_REUSEPORT_CBPF: "
                f"{error.strerror or error}): a client that changes address may reach another "
                "worker and must handshake again"
            )
        return plan

    async def _wait_until_ready(self, failed: list[str]) -> WorkerStartError | None:
        """Wait until every worker serves; the error if one ended first or time ran out."""
        with trio.move_on_after(self._start_timeout):
            for worker in self._workers:
                await worker.ready.wait()
                if failed:
                    return WorkerStartError(failed[0])
            return None
        return WorkerStartError(
            f"the workers did not all start within {self._start_timeout:g} seconds"
        )

    async def _keep_running(self, worker: _Worker, failed: list[str]) -> None:
        """Run worker ``number``; restart it on its socket whenever it ends, until stopping."""
        while True:
            status, pid, was_ready = await self._run_once(worker)
            if self._stopping or self._stop_requested.is_set():
                return  # (the supervisor may be told to stop after a worker heard it first)
            if not was_ready and not self._workers_all_ready():
                # At start: a worker that cannot start will not start next time either.
                failed.append(
                    f"worker {worker.number} (pid {pid}) {describe_exit(status)} before it "
                    "was serving"
                )
                for other in self._workers:
                    other.ready.set()  # wake _wait_until_ready
                return
            lived = trio.current_time() - worker.started_at
            low, high = self._restart_delay
            worker.delay = low if lived >= STABLE_AFTER or not worker.delay else worker.delay * 2
            worker.delay = min(worker.delay, high)
            worker.restarts += 1
            self.restarts += 1
            # Its replacement counts from zero: keep what this one counted, so that the group's
            # totals (the metrics) never go backwards.
            self._retired.append(worker.statistics)
            worker.statistics = _zero_snapshot()
            self._hub.emit(
                WorkerExited(
                    EventCode.WORKER_RESTARTED,
                    f"worker {worker.number} (pid {pid}) {describe_exit(status)}: restarting "
                    f"it on the same socket in {worker.delay:g} s (restart {worker.restarts})",
                    worker=worker.number,
                    pid=pid,
                    exit_status=status,
                    restarts=worker.restarts,
                    delay=worker.delay,
                )
            )
            # Bounded back-off: a worker that crashes at once cannot make us spin.
            with trio.move_on_after(worker.delay):
                await self._stop_requested.wait()
            if self._stopping or self._stop_requested.is_set():
                return

    def _workers_all_ready(self) -> bool:
        return all(w.ready.is_set() for w in self._workers)

    def _spec_for(self, worker: _Worker, status_fd: int) -> WorkerSpec:
        """What worker ``number``'s process (the first one or a replacement) is told."""
        return dataclasses.replace(
            self._template,
            number=worker.number,
            socket_fd=worker.sock.fileno(),
            status_fd=status_fd,
            # The index is the socket's place in the group: the order bind_reuseport_group
            # bound them, unchanged while this process holds them all (also across restarts).
            connection_id_prefix=self._steering_now.prefix(worker.number - 1),
        )

    async def _run_once(self, worker: _Worker) -> tuple[int, int, bool]:
        """Start the worker's process, follow its status pipe, wait for it to end.

        Returns (exit status, pid, whether it became ready).
        """
        read_end, write_end = os.pipe()
        payload = pickle.dumps(self._spec_for(worker, write_end))
        environment = dict(os.environ)
        # The workers import what the supervisor can import (the handler's module above all).
        environment["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trio_dtls_server._worker_main"],
                stdin=subprocess.PIPE,
                pass_fds=(worker.sock.fileno(), write_end),
                env=environment,
                # Signals reach a worker from the supervisor only: a Ctrl-C on the terminal
                # goes to the supervisor, which stops every worker once, in order.
                process_group=0,
            )
        finally:
            os.close(write_end)
        worker.process = process
        worker.started_at = trio.current_time()
        became_ready = False
        status_stream = trio.lowlevel.FdStream(read_end)
        try:
            assert process.stdin is not None
            try:
                # The stdin pipe then stays open and silent: its end-of-file is how the worker
                # learns that the supervisor is gone.
                await process.stdin.send_all(len(payload).to_bytes(SPEC_LENGTH_BYTES, "big"))
                await process.stdin.send_all(payload)
            except trio.BrokenResourceError:
                pass  # it died at once; its exit status says why
            async with status_stream:
                buffer = b""
                while chunk := await status_stream.receive_some(65_536):
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if self._on_status(worker, line):
                            became_ready = True
                            self._hub.emit(
                                InfoEvent(
                                    EventCode.WORKER_STARTED,
                                    f"worker {worker.number} started (pid {process.pid})",
                                )
                            )
                            worker.ready.set()
            status = await process.wait()
        finally:
            if process.stdin is not None:
                with trio.CancelScope(shield=True):
                    await process.stdin.aclose()
        return status, process.pid, became_ready

    def _on_status(self, worker: _Worker, line: bytes) -> bool:
        """Take one status line; True if it says the worker is ready."""
        try:
            message = json.loads(line)
        except ValueError:
            return False
        if not isinstance(message, dict):
            return False
        if isinstance(message.get("statistics"), dict):
            with suppress(TypeError):  # a malformed report: keep the last good one
                worker.statistics = snapshot_from_dict(message["statistics"])
        return "ready" in message

    def _signal_all(self, number: int) -> int:
        sent = 0
        for worker in self._workers:
            process = worker.process
            if process is not None and process.returncode is None:
                try:
                    process.send_signal(number)
                except ProcessLookupError:
                    continue
                sent += 1
        return sent

    async def _stop_workers(self) -> None:
        """SIGTERM every worker (each closes its peers with close_notify), wait for them up to
        ``stop_timeout`` seconds, then SIGKILL what is left."""
        self._stopping = True
        self._signal_all(signal.SIGTERM)
        processes = [w.process for w in self._workers if w.process is not None]
        with trio.move_on_after(self._stop_timeout):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


def _check_picklable(spec: WorkerSpec) -> None:
    """Refuse, here and now, settings a worker could not receive."""
    for what, target in (("handler", spec.handler), ("handler_factory", spec.handler_factory)):
        if not isinstance(target, str) and getattr(target, "__module__", None) == "__main__":
            raise TypeError(
                f"{what} {target!r} is defined in __main__, which a worker cannot import: "
                "put it in a module, or give its 'package.module:function' name"
            )
    try:
        pickle.dumps(spec)
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        raise TypeError(
            "the workers' settings cannot be sent to them (they must pickle: give the handler "
            f"as 'package.module:function', keys as bytes, a mapping or a PSK file): {error}"
        ) from None


async def serve_workers(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    workers: int | None = None,
    handler: Handler | str = qt_ack_handler,
    handler_factory: Callable[[], Handler] | str | None = None,
    psk: PskSource | None = None,
    config: ServerConfig | None = None,
    certificate: CertificateConfig | None = None,
    identity_hint: str | None = None,
    statistics_interval: float = 1.0,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``host``:``port`` with ``workers`` processes (None: one per CPU this process may
    use) until cancelled; the library form of ``serve --workers N``.

    ::

        supervisor = await nursery.start(
            functools.partial(
                serve_workers, "0.0.0.0", 5684, workers=4,
                handler="myapp.handlers:on_connection", psk=PskFileStore("keys.txt"),
            )
        )

    returns once every worker serves, with the :class:`Supervisor` (its ``local_address``,
    ``worker_statistics()``, ``reload_psk()``, ``events()``).  Cancelling the nursery stops
    every worker gracefully (close_notify to each peer).  ``handler`` and ``handler_factory``
    are as for :class:`Supervisor`: a ``"package.module:function"`` name or a function of an
    importable module.  Limits in ``config`` are per worker.  Linux only for ``workers`` > 1
    (:class:`WorkersUnsupportedError` elsewhere).
    """
    supervisor = Supervisor(
        psk,
        workers=available_cpus() if workers is None else workers,
        handler=handler,
        handler_factory=handler_factory,
        config=config,
        certificate=certificate,
        identity_hint=identity_hint,
        statistics_interval=statistics_interval,
    )

    await supervisor.serve(host, port, task_status=_Relay(task_status, supervisor))


class _Relay(trio.TaskStatus[Address]):
    """Passes "started" on with the supervisor instead of the address."""

    def __init__(self, outer: trio.TaskStatus[Supervisor], supervisor: Supervisor) -> None:
        self._outer = outer
        self._supervisor = supervisor

    def started(self, value: Address | None = None) -> None:
        self._outer.started(self._supervisor)
