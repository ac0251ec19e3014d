"""Drive the Connection ID test clients (pion/dtls, Scandium) line by line from a Trio test.

Both clients speak one line protocol (``CID_SHARED.md``; see ``tests/peers/pion_client/
main.go``)::

    <client> --host H --port P --identity ID --key HEX [--cid none|send-only|N]
    stdout: "connected" | "received <text>" | "error <message>" (then exit 1)
    stdin:  "send <text>" | "reconnect" | "quit" (EOF = quit)

A :class:`PeerCommand` says how to start one stack's client (the argv before those options),
how long its first line may take (a JVM starts slower than a Go binary) and, when it cannot run
here, why.  :func:`running_peer` starts it and yields a :class:`PeerProcess` whose
:meth:`~PeerProcess.expect` waits for the next line with a timeout; :meth:`~PeerProcess.quit`
and :meth:`~PeerProcess.exited` give the exit status, and :meth:`~PeerProcess.silent` fails a
block the moment the client says anything (a client facing a server that never answers).  On
the way out :func:`running_peer` closes the client's stdin (a clean ``quit``) and kills the
process by its handle if it has not exited soon after.

``.ci/run`` builds the clients (both outputs are ignored by git): pion's into ``build/peers/``
(``cd tests/peers/pion_client && go build -o ../../../build/peers/pion_client .``), Scandium's
jar into its Maven ``target/``.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from interop_support import kill_and_reap

from trio_dtls_server._transport import Address

ROOT = Path(__file__).resolve().parent.parent
#: Where ``.ci/run`` puts the built clients.
BUILD = ROOT / "build" / "peers"
#: Longest wait for one line from a client (a handshake on loopback takes milliseconds; the
#: clients give up on a handshake after 10 s and say so), and for a client to exit when a test
#: asks for its exit status.
LINE_TIMEOUT = 15.0
#: How long a client may take to exit after its stdin closed before it is killed.
EXIT_TIMEOUT = 5.0


class PeerError(AssertionError):
    """The client printed ``error ...``, exited, or printed something unexpected."""


@dataclass(frozen=True)
class PeerCommand:
    """How to start one stack's test client."""

    #: Short name for test ids and messages: ``pion``, ``scandium``.
    name: str
    #: Everything before ``--host``: the binary, or ``java -jar client.jar``.
    argv_prefix: tuple[str, ...]
    #: Files that must exist (the built binary or jar), with how to build them.
    needs: tuple[Path, ...] = ()
    build_hint: str = ""
    #: Programs that must be on PATH (``java``).
    programs: tuple[str, ...] = ()
    #: Longest wait for the client's *first* line (``connected`` or ``error ...``): its own
    #: start plus the first handshake.  Later lines get :data:`LINE_TIMEOUT`.
    startup_timeout: float = LINE_TIMEOUT

    def missing(self) -> str | None:
        """Why this client cannot run here, or None."""
        for program in self.programs:
            if shutil.which(program) is None:
                return f"{self.name}: {program} is not installed"
        for path in self.needs:
            if not path.exists():
                return f"{self.name}: {path} is not built ({self.build_hint})"
        return None

    def argv(self, server: Address, identity: str, key: bytes, cid: str = "none") -> list[str]:
        host, port = server
        options = ["--host", host, "--port", str(port), "--identity", identity, "--key", key.hex()]
        return [*self.argv_prefix, *options, "--cid", cid]


PION = PeerCommand(
    "pion",
    (str(BUILD / "pion_client"),),
    needs=(BUILD / "pion_client",),
    build_hint="run .ci/run, or: cd tests/peers/pion_client && go build -o "
    "../../../build/peers/pion_client .",
)

#: Californium Scandium's client (``tests/peers/scandium_client``, a shaded jar that Maven
#: builds into its ``target/``).
SCANDIUM_JAR = ROOT / "tests" / "peers" / "scandium_client" / "target" / "scandium-client.jar"
SCANDIUM = PeerCommand(
    "scandium",
    # C1 only (a short-lived client never needs C2), and the JDK's class-data-sharing archive.
    ("java", "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-jar", str(SCANDIUM_JAR)),
    needs=(SCANDIUM_JAR,),
    build_hint="run .ci/run, or: cd tests/peers/scandium_client && mvn -q package",
    programs=("java",),
    # The JVM's start and first handshake: 0.3 s measured here, but the machine is shared, and
    # hitting this limit is a failure, not a measurement.
    startup_timeout=30.0,
)


@dataclass
class PeerProcess:
    """A running client: read its lines, send it commands."""

    command: PeerCommand
    process: trio.Process
    _lines: trio.MemoryReceiveChannel[str]
    #: Every line the client printed so far (for failure messages and measurements).
    transcript: list[str] = field(default_factory=list)

    async def next_line(self, timeout: float | None = None) -> str:
        """The next stdout line; PeerError if the client exits or says nothing in time.

        ``timeout`` defaults to the command's ``startup_timeout`` for the client's first line
        and to :data:`LINE_TIMEOUT` for every later one.
        """
        if timeout is None:
            timeout = LINE_TIMEOUT if self.transcript else self.command.startup_timeout
        try:
            with trio.fail_after(timeout):
                line = await self._lines.receive()
        except trio.TooSlowError:
            raise PeerError(self._story(f"no line within {timeout} s")) from None
        except trio.EndOfChannel:
            raise PeerError(self._story("the client exited")) from None
        self.transcript.append(line)
        return line

    async def expect(self, keyword: str, timeout: float | None = None) -> str:
        """Wait for the next line; it must be ``keyword`` or ``keyword <text>``: return text."""
        line = await self.next_line(timeout)
        word, _, text = line.partition(" ")
        if word != keyword:
            raise PeerError(self._story(f"expected {keyword!r}, got {line!r}"))
        return text

    def pending(self) -> list[str]:
        """Lines printed but not read yet (without waiting)."""
        lines = []
        while True:
            try:
                lines.append(self._lines.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                self.transcript += lines
                return lines

    async def command_line(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def send(self, text: str) -> None:
        await self.command_line(f"send {text}")

    async def reconnect(self) -> None:
        """Close the association, handshake again (from a new socket); wait for ``connected``."""
        await self.command_line("reconnect")
        await self.expect("connected")

    async def exited(self, timeout: float = LINE_TIMEOUT) -> int:
        """Wait for the client to exit; its exit status (PeerError if it is still running)."""
        with trio.move_on_after(timeout):
            return await self.process.wait()
        raise PeerError(self._story(f"still running after {timeout} s"))

    async def quit(self, timeout: float = LINE_TIMEOUT) -> int:
        """``quit``: the client sends close_notify and exits; its exit status (0: all went well)."""
        await self.command_line("quit")
        return await self.exited(timeout)

    async def end_input(self, timeout: float = LINE_TIMEOUT) -> int:
        """Close the client's stdin (the protocol's EOF, which means ``quit``); its exit status."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        return await self.exited(timeout)

    @asynccontextmanager
    async def silent(self) -> AsyncIterator[None]:
        """Fail the block with PeerError as soon as the client prints a line or exits.

        For a client facing a server that never answers: whatever it says then (``connected``
        too early, an ``error``) is wrong, and the test should end at once, not at a timeout.
        """
        async with trio.open_nursery() as nursery:

            async def fail_on_any_line() -> None:
                line = await self.next_line(math.inf)
                raise PeerError(self._story(f"it said {line!r} where it should say nothing"))

            nursery.start_soon(fail_on_any_line)
            yield
            nursery.cancel_scope.cancel()

    def _story(self, what: str) -> str:
        lines = "\n    ".join(self.transcript) or "(nothing)"
        return f"{self.command.name} client: {what}; it printed:\n    {lines}"


async def _read_lines(stream: trio.abc.ReceiveStream, sink: trio.MemorySendChannel[str]) -> None:
    async with sink:
        buffer = b""
        while chunk := await stream.receive_some(65_536):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                await sink.send(line.decode(errors="replace").rstrip("\r"))


@asynccontextmanager
async def running_peer(
    command: PeerCommand, argv: Sequence[str], *, connect: bool = True
) -> AsyncIterator[PeerProcess]:
    """Start the client ``argv``; with ``connect``, wait for its first ``connected``.

    Without ``connect`` the test reads the first line itself (an ``error``), or none at all
    (a client whose server never answers; see :meth:`PeerProcess.silent`).

    On the way out: stdin closes (the client sends close_notify and exits 0); a client still
    running after :data:`EXIT_TIMEOUT` is killed by its handle.
    """
    process = await trio.lowlevel.open_process(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdin is not None and process.stdout is not None
    send, receive = trio.open_memory_channel[str](1_000)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_lines, process.stdout, send)
            peer = PeerProcess(command, process, receive)
            if connect:
                await peer.expect("connected")
            yield peer
            await process.stdin.aclose()
            with trio.move_on_after(EXIT_TIMEOUT):
                await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        await kill_and_reap(process)
