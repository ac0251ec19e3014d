"""Take dead DTLS backends out of an nginx ``stream`` upstream, and put them back when they heal.

Why this exists
    Open-source nginx load-balances UDP, but it never learns that a UDP backend died: the
    kernel's "port unreachable" reaches nginx as ``recv() failed (111: Connection refused)``,
    nginx ends that one session, and the client's next ClientHello -- from the same address
    and port, so with ``hash $remote_addr$remote_port consistent`` to the same backend -- goes
    to the dead server again.  ``max_fails``/``fail_timeout`` and ``proxy_next_upstream`` do
    not change that for UDP (``tests/test_nginx.py`` measures it with nginx's defaults,
    ``max_fails=1 fail_timeout=10s`` and ``proxy_next_upstream on``).  So about half of the new
    clients of a two-backend pool are never served, for as long as the dead backend stays in
    the list.  Something outside nginx has to ask the backends, and edit the list.

What it does
    Every ``--interval`` seconds it probes each backend at once with
    :func:`trio_dtls_server.probe` -- a real DTLS handshake and one message, the question "would
    a device be served right now?" -- and keeps a count of failures and successes in a row.  A
    backend that failed ``--fall`` probes in a row leaves the list; one that is out and passed
    ``--rise`` probes in a row comes back.  When the list changes, it rewrites the file that
    the ``upstream`` block includes (atomically: a temporary file, then a rename, so nginx never
    reads half a list) and reloads nginx: SIGHUP to the master process named in
    ``--pid-file``, or ``--reload-command`` (e.g. ``nginx -p DIR -c DIR/nginx.conf -s reload``).
    It then waits until the reload has taken effect (see :func:`reload_nginx`).  Every change
    is one line on standard output.  At start every ``--backend`` is in the list (the file is
    written, and nginx reloaded, only if that differs from what the file already says).

    The nginx side looks like this (see docs/deployment.md for the whole file)::

        stream {
            upstream dtls_backends {
                hash $remote_addr$remote_port consistent;
                include /etc/nginx/dtls_backends.conf;   # this program writes it
            }
            server {
                listen 203.0.113.10:22334 udp;
                proxy_pass dtls_backends;
                proxy_timeout 30m;
            }
        }

How fast
    A backend that dies is out of the list at most ``T + fall * (interval + T)`` seconds later
    (``T`` is ``--timeout``: the round that was running when it died may still take ``T``, then
    ``fall`` rounds of at most ``T`` each, with ``interval`` between them); a refused probe
    ends at once, so a stopped process is usually out after about ``fall * interval``.  The
    reload itself takes milliseconds, and the watcher says "nginx reloaded" only once the old
    worker has stopped taking datagrams.  From then on every new client is served.

The last backend is never removed
    Removing it would leave an ``upstream`` block with no ``server`` in it, which nginx refuses
    to load ("no servers are inside upstream"): the reload would fail and the old list would
    stay anyway.  And when every backend fails its probe at once, the likelier cause is the
    probe (a rotated key, the watcher's own network) than every server dying together; then a
    backend that may still serve is worth more than none.  The watcher says so in one line.

The price of a reload
    nginx keeps each client's UDP session (and so the source port the backend sees) in the
    memory of one worker process.  A reload starts new workers that know none of the old
    sessions, so every established client's next datagram reaches its backend from a new nginx
    port -- an address the backend has no association for -- and is dropped: every client
    handshakes again.  That is why the watcher reloads only when the list changes, and why
    ``--rise`` should be more than one (a flapping backend would cost everyone a reconnect
    each time).

Bounded and stoppable
    Each probe ends within ``--timeout``, each reload command within ``--reload-timeout``;
    ``--rounds`` stops after that many rounds (0: run until told).  SIGINT or SIGTERM ends it
    at once (exit 0), leaving the list as it was.

Run it::

    python examples/lb_watcher.py --backend 10.0.0.11:22334 --backend 10.0.0.12:22334 \\
        --upstream-file /etc/nginx/dtls_backends.conf --pid-file /run/nginx.pid \\
        --identity probe --psk-hex 1a2b3c4d5e6f --expect ACK
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from trio_dtls_server import (
    ProbeResult,
    probe,
)
from trio_dtls_server.qt import QT_DEMO_KEY

#: A backend's address, as nginx writes it: ``host:port`` (``[v6]:port`` for IPv6).
Address = tuple[str, int]


@dataclass
class Backend:
    """One backend and what the probes said about it lately."""

    address: Address
    #: In the upstream list now (every backend starts in it).
    in_rotation: bool = True
    #: Probes failed in a row (0 after a success).
    failures: int = 0
    #: Probes passed in a row (0 after a failure).
    successes: int = 0
    #: Failing, but kept as the last backend (said once, not every round).
    kept_as_last: bool = False

    @property
    def name(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_backend(text: str) -> Address:
    """``host:port`` or ``[v6]:port`` to an address; raises ValueError otherwise."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def update(backends: Sequence[Backend], healthy: Sequence[bool], fall: int, rise: int) -> list[str]:
    """Count one round of probe results into ``backends``; returns what changed, in words.

    A backend in rotation leaves after ``fall`` failures in a row -- unless it is the last
    one in rotation (see the module docstring); one out of rotation comes back after ``rise``
    successes in a row.  Pure bookkeeping, no I/O, so it is easy to test.
    """
    changes: list[str] = []
    for backend, ok in zip(backends, healthy, strict=True):
        if ok:
            backend.failures, backend.successes = 0, backend.successes + 1
            backend.kept_as_last = False
        else:
            backend.failures, backend.successes = backend.failures + 1, 0
    for backend in backends:
        if not backend.in_rotation and backend.successes >= rise:
            backend.in_rotation = True
            changes.append(f"added back {backend.name} after {backend.successes} good probes")
    for backend in backends:
        if backend.in_rotation and backend.failures >= fall:
            if sum(other.in_rotation for other in backends) == 1:
                if not backend.kept_as_last:
                    backend.kept_as_last = True
                    changes.append(
                        f"keeping {backend.name} although {backend.failures} probes failed: "
                        "it is the last backend"
                    )
                continue
            backend.in_rotation = False
            changes.append(f"removed {backend.name} after {backend.failures} failed probes")
    return changes


def upstream_text(backends: Sequence[Backend]) -> str:
    """The ``server`` lines the ``upstream`` block includes: the backends in rotation."""
    lines = ["# Written by lb_watcher.py: the DTLS backends that passed their probes."]
    lines += [f"server {backend.name};" for backend in backends if backend.in_rotation]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` (temporary file, then rename); False if it already was."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)  # nginx's master reads it, whoever we are
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


@dataclass(frozen=True)
class Settings:
    """What the command line says (see :func:`build_parser`)."""

    backends: tuple[Address, ...]
    upstream_file: Path
    pid_file: Path
    reload_command: tuple[str, ...] | None
    reload_timeout: float
    interval: float
    timeout: float
    fall: int
    rise: int
    rounds: int
    identity: str
    key: bytes
    expect: bytes | None


def nginx_workers(master: int) -> dict[int, str]:
    """The children of nginx's ``master`` and their titles, from Linux's ``/proc``.

    nginx retitles a worker ``nginx: worker process is shutting down`` the moment it stops
    reading the listening socket -- which is how a reload can be seen to have taken effect.
    """
    workers: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # "pid (comm) state ppid ...": the name may hold spaces and parentheses.
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            if ppid != master:
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
            continue
        workers[int(entry.name)] = title.strip()
    return workers


def _serving(title: str) -> bool:
    return "worker process" in title and "shutting down" not in title


async def reload_nginx(settings: Settings) -> str:
    """Ask nginx to read its configuration again, and wait until it has; returns how, in words.

    ``nginx -s reload`` (or SIGHUP) returns at once, while the master is still starting the
    new workers -- and until the old ones stop reading, a new client's first datagram may
    still go to the old list, and its handshake breaks when its next flight reaches a new
    worker (another nginx session, another upstream port).  So on Linux this waits until every
    worker that served before the reload is shutting down and a new one runs.  Raises OSError,
    ValueError (a bad pid file) or trio.TooSlowError (nginx did not take the new
    configuration within ``--reload-timeout``: its error log says why); the caller says so and
    tries again next round.
    """
    master = int(settings.pid_file.read_text(encoding="ascii").split()[0])
    watchable = Path("/proc/self/stat").exists()
    before = {pid for pid, title in nginx_workers(master).items() if _serving(title)}
    with trio.fail_after(settings.reload_timeout):
        if settings.reload_command is None:
            os.kill(master, signal.SIGHUP)
            how = f"SIGHUP to {master}"
        else:
            done = await trio.run_process(settings.reload_command, check=False, capture_stderr=True)
            if done.returncode != 0:
                why = " ".join(done.stderr.decode("utf-8", "replace").split())
                command = shlex.join(settings.reload_command)
                raise OSError(f"{command} exited {done.returncode}: {why}")
            how = shlex.join(settings.reload_command)
        while watchable:
            now = nginx_workers(master)
            old_serving = [pid for pid in before if pid in now and _serving(now[pid])]
            new_serving = [
                pid for pid, title in now.items() if pid not in before and _serving(title)
            ]
            if not old_serving and new_serving:
                break
            await trio.sleep(0.01)
    return how


async def probe_all(settings: Settings, backends: Sequence[Backend]) -> list[ProbeResult | str]:
    """One probe of every backend, all at once; a result, or why the probe could not run."""
    results: list[ProbeResult | str] = [""] * len(backends)

    async def one(index: int) -> None:
        host, port = backends[index].address
        try:
            results[index] = await probe(
                host,
                port,
                identity=settings.identity,
                key=settings.key,
                expect=settings.expect,
                timeout=settings.timeout,
            )
        except OSError as error:  # a name that does not resolve, no route
            results[index] = f"unhealthy (unreachable): {backends[index].name} {error}"

    async with trio.open_nursery() as nursery:
        for index in range(len(backends)):
            nursery.start_soon(one, index)
    return results


def say(line: str) -> None:
    print(line, flush=True)


async def watch(settings: Settings) -> None:
    """Probe, count, rewrite and reload, round after round (``settings.rounds``, 0: forever)."""
    backends = [Backend(address) for address in settings.backends]
    say(
        f"watching {len(backends)} backends every {settings.interval:g} s "
        f"(out after {settings.fall} failed probes, back after {settings.rise} good ones)"
    )
    needs_reload = write_atomically(settings.upstream_file, upstream_text(backends))
    round_number = 0
    while settings.rounds == 0 or round_number < settings.rounds:
        round_number += 1
        results = await probe_all(settings, backends)
        healthy = [isinstance(result, ProbeResult) and result.healthy for result in results]
        for backend, result, ok in zip(backends, results, healthy, strict=True):
            if not ok and backend.failures < settings.fall:
                # The failures that count towards a removal; not every round after it.
                line = result.line if isinstance(result, ProbeResult) else result
                say(f"{line} ({backend.failures + 1} in a row)")
        changes = update(backends, healthy, settings.fall, settings.rise)
        for change in changes:
            say(change)
        if write_atomically(settings.upstream_file, upstream_text(backends)):
            needs_reload = True
        if needs_reload:
            try:
                how = await reload_nginx(settings)
            except (OSError, ValueError, trio.TooSlowError) as error:
                say(f"could not reload nginx (trying again next round): {error}")
            else:
                needs_reload = False
                listed = ", ".join(b.name for b in backends if b.in_rotation)
                say(f"nginx reloaded ({how}); upstream now: {listed}")
        await trio.sleep(settings.interval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Probe DTLS backends and keep nginx's upstream list to the healthy ones.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="a backend (repeat the option for each; the order is the order in the file)",
    )
    parser.add_argument(
        "--upstream-file",
        type=Path,
        required=True,
        help="the file the upstream block includes; rewritten whenever the list changes",
    )
    parser.add_argument(
        "--pid-file",
        type=Path,
        required=True,
        help="nginx's pid file: the master gets SIGHUP, and its workers show the reload",
    )
    parser.add_argument(
        "--reload-command",
        help="reload nginx with this command instead of SIGHUP (shell-quoted), e.g. "
        "'nginx -p DIR -c DIR/nginx.conf -s reload'",
    )
    parser.add_argument("--reload-timeout", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--interval", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument(
        "--timeout", type=float, default=1.0, metavar="SECONDS", help="each probe's budget"
    )
    parser.add_argument("--fall", type=int, default=3, help="failed probes in a row to remove")
    parser.add_argument("--rise", type=int, default=2, help="good probes in a row to add back")
    parser.add_argument("--rounds", type=int, default=0, help="stop after N rounds; 0: never")
    parser.add_argument("--identity", default="probe", help="the probe's PSK identity")
    parser.add_argument(
        "--psk-hex", default=QT_DEMO_KEY.hex(), help="the probe's key (default: Qt's demo key)"
    )
    parser.add_argument("--expect", help="text the reply must contain, e.g. ACK")
    return parser


def settings_from(argv: Sequence[str] | None = None) -> Settings:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        backends = tuple(parse_backend(text) for text in arguments.backend)
        key = bytes.fromhex(arguments.psk_hex)
    except ValueError as error:
        parser.error(str(error))
    if not (arguments.interval > 0 and arguments.timeout > 0 and arguments.reload_timeout > 0):
        parser.error("--interval, --timeout and --reload-timeout must be positive")
    if arguments.fall < 1 or arguments.rise < 1 or arguments.rounds < 0:
        parser.error("--fall and --rise must be at least 1, --rounds at least 0")
    return Settings(
        backends=backends,
        upstream_file=arguments.upstream_file,
        pid_file=arguments.pid_file,
        reload_command=None
        if arguments.reload_command is None
        else tuple(shlex.split(arguments.reload_command)),
        reload_timeout=arguments.reload_timeout,
        interval=arguments.interval,
        timeout=arguments.timeout,
        fall=arguments.fall,
        rise=arguments.rise,
        rounds=arguments.rounds,
        identity=arguments.identity,
        key=key,
        expect=None if arguments.expect is None else arguments.expect.encode("utf-8"),
    )


async def main(settings: Settings) -> None:
    """Watch until the rounds are done or SIGINT/SIGTERM arrives."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for number in signals:
                    say(f"{signal.Signals(number).name} received: stopping")
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await watch(settings)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, settings_from())
