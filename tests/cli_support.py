"""Running the command line as a process: ``python -m trio_dtls_server ...`` under test.

Every process is started through :class:`Program`, which collects its output in reader
threads, lets a test wait (with a timeout) for a pattern to appear, and always ends the
process by its handle when the ``with`` block exits.  :func:`start_serve` runs ``serve`` on a
port the server reports; :func:`free_udp_port` finds a port for programs that cannot report
theirs.  The ``--workers N`` helpers read which worker did what from the supervisor's lines.
Shared by ``test_cli.py``, ``test_cli_certificates.py``, ``test_examples.py``,
``test_interop.py``, ``test_nginx.py``, ``test_workers.py``, ``test_metrics.py`` and others.
"""

from __future__ import annotations

import argparse
import codecs
import os
import pty
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import TypeVar

import trio

from trio_dtls_server._cli import build_parser

#: Longest wait for any one expected output (the machine may be loaded: it is generous).
TIMEOUT = 30.0
LISTENING = r"Server is listening on address (\S+) and port (\d+)"
HEX = r"(?:[0-9a-f]{2} )*[0-9a-f]{2}"


class _Collector:
    """Reads one file descriptor to its end in a thread; tests wait for patterns in the text."""

    def __init__(self, fd: int) -> None:
        self.text = ""
        self.finished = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self._thread.start()

    def _read(self, fd: int) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            try:
                chunk = os.read(fd, 65_536)
            except OSError:  # a pty master reports EIO once the child has gone
                chunk = b""
            with self._condition:
                self.text += decoder.decode(chunk, final=not chunk)
                if not chunk:
                    self.finished = True
                self._condition.notify_all()
            if not chunk:
                return

    def wait_for(self, pattern: str, timeout: float = TIMEOUT, *, count: int = 1) -> re.Match[str]:
        """The ``count``-th match of ``pattern`` (multi-line regex), waiting up to ``timeout``."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                matches = list(regex.finditer(self.text))
                if len(matches) >= count:
                    return matches[count - 1]
                remaining = deadline - time.monotonic()
                if self.finished or remaining <= 0:
                    raise AssertionError(
                        f"{pattern!r} (x{count}) not seen within {timeout:g} s; "
                        f"output so far:\n{self.text}"
                    )
                self._condition.wait(remaining)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def clean_environment(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The test's environment without colour settings, plus ``overrides`` (None deletes)."""
    environment = dict(os.environ)
    for name in ("NO_COLOR", "COLORTERM", "FORCE_COLOR"):
        environment.pop(name, None)
    for name, value in (overrides or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment


class Program:
    """A subprocess with collected output, always ended by its handle on ``__exit__``.

    ``terminal=True`` runs it with stdout and stderr on a pseudo-terminal (then both land in
    :attr:`stdout`).
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
        stdin: bool = False,
        terminal: bool = False,
    ) -> None:
        self.args = list(args)
        self._terminal_fd: int | None = None
        environment = clean_environment(env)
        stdin_mode = subprocess.PIPE if stdin else subprocess.DEVNULL
        if terminal:
            master, slave = pty.openpty()
            try:
                self.process = subprocess.Popen(
                    self.args, stdin=stdin_mode, stdout=slave, stderr=slave, env=environment
                )
            finally:
                os.close(slave)
            self._terminal_fd = master
            self.stdout = _Collector(master)
            self.stderr = self.stdout
        else:
            self.process = subprocess.Popen(
                self.args,
                stdin=stdin_mode,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment,
            )
            assert self.process.stdout is not None and self.process.stderr is not None
            self.stdout = _Collector(self.process.stdout.fileno())
            self.stderr = _Collector(self.process.stderr.fileno())

    def __enter__(self) -> Program:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def send_signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """The exit code, once the process has ended and all its output was read."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.args} still running after {timeout:g} s; output:\n{self.stdout.text}"
                f"\nstderr:\n{self.stderr.text}"
            ) from None
        self.stdout.join(TIMEOUT)
        self.stderr.join(TIMEOUT)
        return code

    def stop(self) -> None:
        """Kill the process if it still runs, reap it, close our ends of its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        if self._terminal_fd is not None:
            self.stdout.join(TIMEOUT)
            os.close(self._terminal_fd)
            self._terminal_fd = None


def command(*args: str) -> list[str]:
    """``python -m trio_dtls_server <args>`` with the interpreter running the tests."""
    return [sys.executable, "-m", "trio_dtls_server", *args]


def start_serve(
    *args: str, env: Mapping[str, str | None] | None = None, terminal: bool = False
) -> tuple[Program, int]:
    """``serve --port 0 <args>``, running; returns it and the port it reported."""
    program = Program(command("serve", "--port", "0", *args), env=env, terminal=terminal)
    try:
        port = int(program.stdout.wait_for(LISTENING).group(2))
    except BaseException:
        program.stop()
        raise
    return program, port


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody uses right now (for programs that cannot report theirs)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser (``serve``, ``client``, ...) by name."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


# -- serve --workers N ----------------------------------------------------------------------

#: The supervisor's line for each worker that came up (again): group 1 its number, 2 its pid.
WORKER_STARTED = r"^worker (\d) started \(pid (\d+)\)$"
T = TypeVar("T")


def worker_pids(server: Program) -> dict[int, int]:
    """Each worker's current pid, from the supervisor's ``worker K started`` lines."""
    found = re.finditer(WORKER_STARTED, server.stdout.text, re.MULTILINE)
    return {int(match.group(1)): int(match.group(2)) for match in found}


def worker_of(server: Program, port: int | str, *, count: int = 1) -> int:
    """The worker whose ``count``-th handshake with 127.0.0.1:``port`` completed."""
    pattern = rf"^\[worker (\d)\] Connection with \(127\.0\.0\.1:{port}\) encrypted\."
    return int(server.stdout.wait_for(pattern, count=count).group(1))


async def in_thread(function: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run a blocking wait (a Program's output) without blocking the Trio loop."""
    return await trio.to_thread.run_sync(partial(function, *args, **kwargs))
