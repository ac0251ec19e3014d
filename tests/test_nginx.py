"""Two ``serve`` backends behind nginx's stream module, on loopback, with and without a watcher.

The deployment of docs/deployment.md's nginx section, for real: Debian's ``nginx`` with
``libnginx-mod-stream`` (``.ci/run`` installs both), started by the test as a child process with
a configuration in the test's temporary folder, in front of two ``trio-dtls-server serve``
processes.  Clients are :class:`DTLSClient` objects, each on its own port, so nginx's
``hash $remote_addr$remote_port consistent`` spreads them over both backends.

What is measured, not claimed:

* through nginx every client is served, both backends take clients, and the address a backend
  sees -- and names in its ACK -- is nginx's upstream socket, never the client's own;
* with one backend stopped, nginx keeps hashing new clients to it (its passive checks --
  ``max_fails=1 fail_timeout=10s`` and ``proxy_next_upstream on`` are nginx's defaults -- never
  take a UDP backend out on "Connection refused"): some new clients are not served at all;
* with ``examples/lb_watcher.py`` running, the dead backend leaves the list and every new client
  is served by the survivor within :data:`RECOVERY_BOUND` seconds of the stop; the last backend
  is never removed; a backend that comes back is added back.

Every wait is bounded.  nginx is always stopped by its PID (its process group on a timeout).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
from auth_support import quiet
from cli_support import LISTENING, TIMEOUT, Program, command, free_udp_port

from trio_dtls_server import DTLSClient, HandshakeError

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
#: Debian's libnginx-mod-stream puts the module here (its modules-enabled snippet loads it).
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

needs_nginx = pytest.mark.skipif(
    not (Path(NGINX).exists() and STREAM_MODULE.exists()),
    reason="nginx and its stream module are not installed (apt-get install nginx "
    "libnginx-mod-stream; .ci/run does)",
)

KEY_HEX = "1a2b3c4d5e6f"
KEY = bytes.fromhex(KEY_HEX)

#: The watcher's settings in this test, and the recovery bound they give (docs/deployment.md):
#: ``T + FALL * (INTERVAL + T)`` until the dead backend is out of the list (the round running
#: when it died may take T, then FALL failing rounds of at most T each, INTERVAL apart), plus
#: 1 s for nginx's reload (the watcher waits until the old worker stops reading) and the new
#: clients' handshakes.
INTERVAL, PROBE_TIMEOUT, FALL = 0.5, 2.0, 2
RECOVERY_BOUND = PROBE_TIMEOUT + FALL * (INTERVAL + PROBE_TIMEOUT) + 1.0

#: The configuration docs/deployment.md shows, with the test's paths and port.  ``proxy_timeout`` is
#: how long nginx keeps a client's UDP session (and so its upstream socket, the address the
#: backend knows the client by) without traffic: longer than the clients' quiet periods.
#: ``worker_shutdown_timeout``: after a reload the old worker's UDP sessions are of no use
#: (new datagrams go to the new worker), so it need not linger for ``proxy_timeout``.
NGINX_CONF = """\
# Written by tests/test_nginx.py; nginx -p {prefix} -c {prefix}/nginx.conf
load_module {module};
worker_processes 1;
worker_shutdown_timeout 5s;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 1024; }}
stream {{
    upstream dtls_backends {{
        hash $remote_addr$remote_port consistent;
        include {prefix}/upstreams.conf;
    }}
    server {{
        listen 127.0.0.1:{port} udp;
        proxy_pass dtls_backends;
        proxy_timeout 30m;
    }}
}}
"""

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_watcher() -> ModuleType:
    """``examples/lb_watcher.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("lb_watcher", EXAMPLES / "lb_watcher.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lb_watcher"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


lb_watcher = load_watcher()


# -- the processes ------------------------------------------------------------------------------


@dataclass
class Backend:
    """A ``serve`` process and its port."""

    program: Program
    port: int

    def peers(self) -> set[int]:
        """The ports of every peer whose handshake this backend finished (from its output)."""
        found = re.findall(r"^Connection with \(127\.0\.0\.1:(\d+)\) encrypted", self.text, re.M)
        return {int(port) for port in found}

    @property
    def text(self) -> str:
        return self.program.stdout.text

    def stop(self) -> None:
        """SIGTERM, as an operator stops it; the port is closed once it has exited."""
        self.program.send_signal(signal.SIGTERM)
        assert self.program.wait() == 0, self.text


def unassigned_port() -> int:
    """A free UDP port below the kernel's ephemeral range.

    No socket bound to port 0 -- nginx's upstream sockets, the probes, the clients -- is ever
    given such a port, so a backend that stopped can come back on its own port.
    """
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(range_file.read_text().split()[0]) if range_file.exists() else 32768
    for _ in range(100):
        port = random.randrange(max(1024, low - 10_000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free UDP port below the ephemeral range")


def start_backends(count: int, ports: list[int] | None = None) -> list[Backend]:
    """``count`` ``serve`` processes (started together: Python's start-up is the slow part)."""
    ports = ports or [unassigned_port() for _ in range(count)]
    programs = [
        Program(command("serve", "--port", str(port), "--psk-hex", KEY_HEX)) for port in ports
    ]
    backends = []
    try:
        for program in programs:
            port = int(program.stdout.wait_for(LISTENING).group(2))
            backends.append(Backend(program, port))
    except BaseException:
        for program in programs:
            program.stop()
        raise
    return backends


class Nginx:
    """nginx in the foreground (``daemon off``) with everything under ``prefix``.

    Started in a session of its own, so that if the master does not stop on SIGTERM the test
    can kill the master *and its workers* by their process group -- a killed master alone
    would leave its workers running.
    """

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.error_log = prefix / "error.log"
        self.pid_file = prefix / "nginx.pid"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, upstreams: str) -> None:
        (self.prefix / "upstreams.conf").write_text(upstreams, encoding="utf-8")
        for _ in range(3):  # the free port may be taken before nginx binds it: try another
            self.port = free_udp_port()
            (self.prefix / "nginx.conf").write_text(
                NGINX_CONF.format(prefix=self.prefix, module=STREAM_MODULE, port=self.port),
                encoding="utf-8",
            )
            self.process = subprocess.Popen(
                [NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                 "-e", str(self.error_log), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            # The master writes its pid file after it has bound the listening socket; from
            # then on datagrams wait in that socket until the worker reads them.
            deadline = time.monotonic() + TIMEOUT
            while not self.pid_file.exists() and self.process.poll() is None:
                assert time.monotonic() < deadline, "nginx did not start:\n" + self.log()
                time.sleep(0.02)
            if self.process.poll() is None:
                return
            if "Address already in use" not in self.log():
                break
        assert self.process is not None
        raise AssertionError(f"nginx exited {self.process.returncode}:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.error_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the master (it stops its workers); the whole group if it hangs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(TIMEOUT)
        self.process = None


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    running = Nginx(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def two_backends() -> Iterator[list[Backend]]:
    backends = start_backends(2)
    try:
        yield backends
    finally:
        for backend in backends:
            backend.program.stop()


def upstream_list(backends: list[Backend]) -> str:
    """The include file as the watcher writes it, so that its first round changes nothing."""
    return str(
        lb_watcher.upstream_text([lb_watcher.Backend(("127.0.0.1", b.port)) for b in backends])
    )


# -- the clients --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A client that got its ACK: its own port, and the port the ACK named."""

    client_port: int
    ack_port: int


async def clients_through(port: int, count: int, handshake_timeout: float) -> list[Served | str]:
    """``count`` new clients at once, each on its own port: handshake, one message, its ACK.

    Each result is :class:`Served` or why not (a handshake that never finished: its
    ClientHellos went to a backend that is not there).
    """
    results: list[Served | str] = ["not run"] * count

    async def one(number: int) -> None:
        try:
            client = await DTLSClient.connect(
                "127.0.0.1",
                port,
                identity=f"client {number}",
                key=KEY,
                handshake_timeout=handshake_timeout,
                on_event=quiet,
            )
        except HandshakeError as error:
            results[number] = str(error)
            return
        async with client:
            await client.send(b"hello through nginx")
            with trio.fail_after(TIMEOUT):
                reply = await client.receive()
            match = re.fullmatch(rb"to \(127\.0\.0\.1:(\d+)\): ACK", reply)
            assert match is not None, reply
            # Read while our socket is open: it holds its port on every address (a wildcard
            # bind, no SO_REUSEADDR), so an ACK naming another port names another socket --
            # nginx's upstream socket, not ours.
            results[number] = Served(client.local_address[1], int(match.group(1)))

    async with trio.open_nursery() as nursery:
        for number in range(count):
            nursery.start_soon(one, number)
    return results


async def ask(client: DTLSClient, timeout: float = TIMEOUT) -> int | None:
    """One message; the port its ACK names, or None without a reply within ``timeout``."""
    await client.send(b"still there?")
    with trio.move_on_after(timeout):
        reply = await client.receive()
        match = re.fullmatch(rb"to \(127\.0\.0\.1:(\d+)\): ACK", reply)
        assert match is not None, reply
        return int(match.group(1))
    return None


async def established_on(port: int, wanted: Backend, other: Backend) -> tuple[DTLSClient, int]:
    """A client through nginx on ``port`` that nginx hashed to ``wanted``, and its ACK port."""
    for attempt in range(30):  # each lands on ``wanted`` with odds about 1/2
        client = await DTLSClient.connect(
            "127.0.0.1", port, identity=f"long-lived {attempt}", key=KEY, on_event=quiet
        )
        ack_port = await ask(client)
        assert ack_port is not None
        if served_by([Served(client.local_address[1], ack_port)], [wanted, other])[0]:
            return client, ack_port
        await client.aclose()
    raise AssertionError(f"30 clients, none hashed to {wanted.port}")


def served_by(results: list[Served | str], backends: list[Backend]) -> list[int]:
    """How many of ``results`` each backend served, found by the port its ACK names.

    Every ACK names nginx's upstream socket, which finished its handshake on exactly one
    backend (nginx holds each of those sockets open, so no two share a port while the test
    runs).  Waits until the backends' output shows those handshakes.
    """
    served = [result for result in results if isinstance(result, Served)]
    deadline = time.monotonic() + TIMEOUT
    while True:
        peers = [backend.peers() for backend in backends]
        counts = [sum(result.ack_port in seen for result in served) for seen in peers]
        if sum(counts) == len(served) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(counts) == len(served), (counts, [b.text for b in backends])
    return counts


def check_spread(results: list[Served | str], backends: list[Backend]) -> None:
    """Every client ACKed, both backends used, and the backends saw nginx, never the client."""
    failed = [result for result in results if not isinstance(result, Served)]
    assert not failed, failed
    counts = served_by(results, backends)
    assert all(count > 0 for count in counts), counts
    for result in results:
        assert isinstance(result, Served)
        # The ACK names the peer the backend saw: nginx's side, not the client's port.
        assert result.ack_port != result.client_port


# -- the tests ----------------------------------------------------------------------------------


@needs_nginx
async def test_without_a_watcher_nginx_keeps_sending_new_clients_to_a_dead_backend(
    nginx: Nginx, two_backends: list[Backend]
) -> None:
    nginx.start("".join(f"server 127.0.0.1:{b.port};\n" for b in two_backends))
    check_spread(await clients_through(nginx.port, 40, handshake_timeout=TIMEOUT), two_backends)

    survivor, dead = two_backends
    dead.stop()
    # Each client sends its ClientHello twice (at 0 and 1 s) before giving up at 2.5 s.
    results = await clients_through(nginx.port, 20, handshake_timeout=2.5)
    unserved = [result for result in results if not isinstance(result, Served)]
    # About half hash to the dead backend (all 20 to the survivor: odds about 1 in 10^4).
    assert unserved, "every new client was served: nginx took the dead backend out by itself?"
    print(f"without a watcher, {len(unserved)} of 20 new clients were not served")
    assert all("handshake not finished" in result for result in unserved), unserved
    assert served_by(results, [survivor]) == [20 - len(unserved)]
    # nginx did see the refusals -- and kept the backend in its list all the same.
    assert "Connection refused" in nginx.log()


@needs_nginx
@pytest.mark.parametrize("reload", ["SIGHUP", "nginx -s reload"])
async def test_the_watcher_takes_a_dead_backend_out_and_puts_it_back(
    nginx: Nginx, two_backends: list[Backend], reload: str
) -> None:
    nginx.start(upstream_list(two_backends))
    upstreams = nginx.prefix / "upstreams.conf"
    how = []
    if reload != "SIGHUP":
        how = [
            "--reload-command",
            shlex.join(
                [NGINX, "-p", str(nginx.prefix), "-c", str(nginx.prefix / "nginx.conf"),
                 "-e", str(nginx.error_log), "-s", "reload"]
            ),
        ]  # fmt: skip
    watcher = Program(
        [
            sys.executable, str(EXAMPLES / "lb_watcher.py"),
            *(f"--backend=127.0.0.1:{b.port}" for b in two_backends),
            f"--upstream-file={upstreams}", f"--pid-file={nginx.pid_file}", *how,
            f"--interval={INTERVAL}", f"--timeout={PROBE_TIMEOUT}", f"--fall={FALL}",
            "--rise=1", f"--psk-hex={KEY_HEX}", "--expect=ACK",
        ]
    )  # fmt: skip
    with watcher:
        watcher.stdout.wait_for(r"^watching 2 backends")
        check_spread(await clients_through(nginx.port, 40, handshake_timeout=TIMEOUT), two_backends)
        # Nothing changed, so nginx was left alone.
        assert "reloaded" not in watcher.stdout.text, watcher.stdout.text

        survivor, dead = two_backends
        # A client already connected to the survivor, to see what the reload does to it.
        established, old_ack_port = await established_on(nginx.port, survivor, dead)
        stopped = time.monotonic()
        dead.stop()
        watcher.stdout.wait_for(
            rf"^removed 127\.0\.0\.1:{dead.port} after {FALL} failed probes$", RECOVERY_BOUND
        )
        done = r"SIGHUP to \d+" if reload == "SIGHUP" else r".* -s reload"
        watcher.stdout.wait_for(rf"^nginx reloaded \({done}\); upstream now: 127\.0\.0\.1:\d+$")
        assert upstreams.read_text(encoding="utf-8").count("server ") == 1
        results = await clients_through(nginx.port, 20, handshake_timeout=RECOVERY_BOUND)
        recovered = time.monotonic() - stopped
        assert all(isinstance(result, Served) for result in results), (
            results,
            watcher.stdout.text,
            nginx.log()[-3000:],
        )
        assert served_by(results, [survivor]) == [20]
        assert recovered <= RECOVERY_BOUND, recovered
        print(f"all 20 new clients served {recovered:.2f} s after the backend stopped")

        # The price of the reload: the new nginx worker knows none of the old worker's
        # sessions, so the established client's next record reaches the survivor from a new
        # nginx port, which the survivor has no association for: dropped, no reply.
        dropped_before = survivor.text.count("not a ClientHello and no association, dropped")
        assert await ask(established, timeout=2.0) is None
        assert survivor.text.count("not a ClientHello and no association") > dropped_before
        # A new handshake from the same client port is served, by the same backend (same
        # hash), under a new nginx port.
        client_port = established.local_address[1]
        await established.aclose()
        again = await DTLSClient.connect(
            "127.0.0.1", nginx.port, identity="long-lived", key=KEY, local_port=client_port,
            on_event=quiet,
        )  # fmt: skip
        async with again:
            new_ack_port = await ask(again)
        assert new_ack_port is not None and new_ack_port != old_ack_port
        assert served_by([Served(client_port, new_ack_port)], [survivor]) == [1]

        # The survivor stops too: the watcher keeps it in the list (the last one), says so.
        survivor.stop()
        watcher.stdout.wait_for(rf"^keeping 127\.0\.0\.1:{survivor.port} although .* last")
        assert f"server 127.0.0.1:{survivor.port};" in upstreams.read_text(encoding="utf-8")

        # The first one comes back on its port: it is added back, the dead survivor leaves.
        (returned,) = start_backends(1, [dead.port])
        try:
            watcher.stdout.wait_for(rf"^added back 127\.0\.0\.1:{dead.port} after 1 good probes")
            watcher.stdout.wait_for(rf"^removed 127\.0\.0\.1:{survivor.port} after")
            watcher.stdout.wait_for(rf"^nginx reloaded .*; upstream now: 127\.0\.0\.1:{dead.port}$")
            results = await clients_through(nginx.port, 5, handshake_timeout=RECOVERY_BOUND)
            assert served_by(results, [returned]) == [5]
        finally:
            returned.program.stop()

        # SIGTERM stops it at once, cleanly.
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait() == 0, watcher.stderr.text
        assert watcher.stdout.text.rstrip().endswith("SIGTERM received: stopping")
        assert not watcher.stderr.text


# -- the watcher's bookkeeping, without processes -----------------------------------------------


def _pool(count: int) -> list[Any]:
    return [lb_watcher.Backend(("127.0.0.1", 4000 + n)) for n in range(count)]


def test_a_backend_leaves_after_fall_failures_and_returns_after_rise_successes() -> None:
    pool = _pool(3)
    assert lb_watcher.update(pool, [True, False, True], 2, 2) == []
    assert lb_watcher.update(pool, [True, True, True], 2, 2) == []  # a success resets the count
    assert lb_watcher.update(pool, [True, False, True], 2, 2) == []
    assert lb_watcher.update(pool, [True, False, True], 2, 2) == [
        "removed 127.0.0.1:4001 after 2 failed probes"
    ]
    assert lb_watcher.upstream_text(pool).splitlines()[1:] == [
        "server 127.0.0.1:4000;",
        "server 127.0.0.1:4002;",
    ]
    assert lb_watcher.update(pool, [True, True, True], 2, 2) == []
    assert lb_watcher.update(pool, [True, True, True], 2, 2) == [
        "added back 127.0.0.1:4001 after 2 good probes"
    ]
    assert all(backend.in_rotation for backend in pool)


def test_the_last_backend_is_never_removed_and_that_is_said_once() -> None:
    pool = _pool(2)
    assert lb_watcher.update(pool, [False, False], 1, 1) == [
        "removed 127.0.0.1:4000 after 1 failed probes",
        "keeping 127.0.0.1:4001 although 1 probes failed: it is the last backend",
    ]
    assert lb_watcher.update(pool, [False, False], 1, 1) == []
    assert [backend.in_rotation for backend in pool] == [False, True]
    # The first one heals: it comes back, and the failing last one can now leave.
    assert lb_watcher.update(pool, [True, False], 1, 1) == [
        "added back 127.0.0.1:4000 after 1 good probes",
        "removed 127.0.0.1:4001 after 3 failed probes",
    ]


def test_the_upstream_file_is_replaced_whole_and_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.conf"
    assert lb_watcher.write_atomically(path, "server 127.0.0.1:1;\n")
    assert not lb_watcher.write_atomically(path, "server 127.0.0.1:1;\n")
    assert lb_watcher.write_atomically(path, "server 127.0.0.1:2;\n")
    assert path.read_text(encoding="utf-8") == "server 127.0.0.1:2;\n"
    assert [p.name for p in tmp_path.iterdir()] == ["upstreams.conf"]  # no temporary left


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:22334", ("127.0.0.1", 22334)), ("[::1]:5684", ("::1", 5684))],
)
def test_backend_addresses_parse(text: str, address: tuple[str, int]) -> None:
    assert lb_watcher.parse_backend(text) == address
    assert lb_watcher.Backend(address).name == text


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:0", "host:http", ":22334", "a:70000"])
def test_bad_backend_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        lb_watcher.parse_backend(text)
