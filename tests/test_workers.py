"""``serve --workers N`` and :func:`serve_workers`: real processes on loopback.

A supervisor binds N sockets with ``SO_REUSEPORT`` on one port and runs a worker process on
each; the kernel keeps each client (its address and port) on one socket.  What is shown here:
40 clients from distinct ports are all answered and both workers serve some; a worker killed
with SIGKILL is restarted on its socket, the other worker's peers never notice, and the dead
worker's peers are answered again after a new handshake; SIGTERM to the supervisor closes
every peer of every worker with close_notify and exits 0; SIGHUP reloads the PSK file in every
worker; a cookie made by one worker is accepted by another (and by a restarted one); the
library form reports each worker's statistics and every restart.

Which worker served a client is read from the server's own words: each worker's lines start
with ``[worker K]`` (the CLI), or the test handler answers with its process id (the library).
The kernel's hash decides where a client lands, so the tests that need clients on both
workers keep adding clients until both have some (bounded), instead of hoping.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket as stdlib_socket
from collections import Counter
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import pytest
import support
import trio
from cli_support import (
    TIMEOUT,
    WORKER_STARTED,
    Program,
    command,
    in_thread,
    start_serve,
    subcommands,
    worker_of,
    worker_pids,
)
from support import IDENTITY, KEY

from trio_dtls_server import (
    DTLSClient,
    DTLSConnection,
    Handler,
    InfoEvent,
    PskFileStore,
    Supervisor,
    WorkerExited,
    WorkerStartError,
    WorkersUnsupportedError,
    _cli,
    _supervisor,
    serve_workers,
)
from trio_dtls_server._cli import build_parser, main
from trio_dtls_server._codes import EventCode
from trio_dtls_server._display import ColourMode, Display

KEY_HEX = KEY.hex()
#: Clients never need more than this many tries to have peers on both of two workers (each
#: new client lands on either with probability 1/2: 30 tries all on one is 2**-29).
MAX_TRIES = 30


def acked_ports(client_output: str) -> set[str]:
    """The client ports named in Qt's ACK replies (``to (127.0.0.1:PORT): ACK``)."""
    return set(re.findall(r"As plain text: to \(127\.0\.0\.1:(\d+)\): ACK$", client_output, re.M))


async def ping(client: DTLSClient, message: bytes = b"ping") -> bytes:
    await client.send(message)
    with trio.fail_after(TIMEOUT):
        return await client.receive()


def pinging_clients(port: int, count: int) -> Program:
    """``client`` with ``count`` associations pinging the server on ``port`` five times a second;
    returned once every association has had its first ACK."""
    client = Program(
        command(
            "client", "127.0.0.1", str(port), "--connections", str(count), "--pings", "100000",
            "--interval", "0.2",
        )
    )  # fmt: skip
    try:
        for number in range(count):
            client.stdout.wait_for(
                rf"^Alice \(clone number {number}\) received a DTLS datagram: .* ACK$"
            )
    except BaseException:
        client.stop()
        raise
    return client


# -- the command line ---------------------------------------------------------------------------


def test_two_workers_answer_40_clients_and_both_workers_serve_some() -> None:
    server, port = start_serve("--workers", "2", "--psk-hex", KEY_HEX)
    with server:
        assert sorted(worker_pids(server)) == [1, 2]
        with Program(
            command(
                "client", "127.0.0.1", str(port), "--connections", "40", "--pings", "1",
                "--interval", "0",
            )
        ) as client:  # fmt: skip
            assert client.wait() == 0, client.stdout.text + client.stderr.text
        assert client.stdout.text.splitlines()[-1] == (
            "Summary: 40 association(s), 40 handshake(s), 40 ping(s) sent, "
            "40 repl(ies) received, 0 failed"
        )
        ports = acked_ports(client.stdout.text)
        assert len(ports) == 40  # 40 distinct client ports
        served = Counter(worker_of(server, port) for port in ports)
        assert set(served) == {1, 2}, served
        # Each client was served by exactly one worker (one handshake, in one process).
        for client_port in ports:
            handshakes = re.findall(
                rf"^\[worker \d\] Connection with \(127\.0\.0\.1:{client_port}\) encrypted\.",
                server.stdout.text,
                re.MULTILINE,
            )
            assert len(handshakes) == 1, client_port

        # The port is the group's: another server cannot bind it, one line, exit 1.
        with Program(command("serve", "--port", str(port), "--workers", "2")) as intruder:
            assert intruder.wait() == 1
        assert intruder.stderr.text == (
            f"trio-dtls-server: error: cannot bind UDP 127.0.0.1:{port}: Address already in use\n"
        )

        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert server.stderr.text == ""
    # Every line is a worker's (labelled) or one of the supervisor's own.
    supervisor_lines = {
        f"Server is listening on address 127.0.0.1 and port {port}",
        "2 workers on one SO_REUSEPORT port; limits are per worker",
        "SIGTERM received: shutting down 2 workers, each sends close_notify to its peers",
        "Server is not accepting new connections",
    }
    for line in server.stdout.text.splitlines():
        assert (
            line.startswith(("[worker 1] ", "[worker 2] "))
            or line in supervisor_lines
            or re.match(WORKER_STARTED, line)
            or line.startswith("warning: using Qt's demo key")
        ), line
    # One listening line, printed once both workers serve.
    assert server.stdout.text.count("Server is listening") == 1
    lines = server.stdout.text.splitlines()
    listening = lines.index(f"Server is listening on address 127.0.0.1 and port {port}")
    assert sum(1 for line in lines[:listening] if re.match(WORKER_STARTED, line)) == 2


def test_sigterm_to_the_supervisor_closes_every_peer_of_every_worker_and_exits_0() -> None:
    server, port = start_serve("--workers", "2", "--psk-hex", KEY_HEX)
    with server, pinging_clients(port, 16) as client:
        assert {worker_of(server, port) for port in acked_ports(client.stdout.text)} == {1, 2}
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
        assert client.wait() == 1
    lines = client.stdout.text.splitlines()
    for number in range(16):
        assert f"error: Alice (clone number {number}): shutdown alert received" in lines
    text = server.stdout.text
    closed = {
        int(worker): int(peers)
        for worker, peers in re.findall(
            r"^\[worker (\d)\] SIGTERM received: shutting down, close_notify to (\d+) peer\(s\)$",
            text,
            re.MULTILINE,
        )
    }
    assert sorted(closed) == [1, 2] and all(closed.values()), closed
    assert sum(closed.values()) == 16
    assert text.splitlines()[-1] == "Server is not accepting new connections"
    assert server.stderr.text == ""


def test_sighup_reloads_the_psk_file_in_every_worker(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sensor-0,1a2b3c4d5e6f\n")
    server, port = start_serve("--workers", "2", "--psk-file", str(keys))

    def newcomers(connections: int) -> list[str]:
        return command(
            "client", "127.0.0.1", str(port), "--identity", "newcomer", "--psk-hex", "c0ffee",
            "--connections", str(connections), "--pings", "1", "--interval", "0",
        )  # fmt: skip

    with server:
        with Program(newcomers(1)) as refused:
            assert refused.wait() == 1  # not in the file yet
        keys.write_text("sensor-0,1a2b3c4d5e6f\nnewcomer,c0ffee\n")
        server.send_signal(signal.SIGHUP)
        reloaded = re.escape(f"PSK file {str(keys)!r} reloaded: 2 identities, keys changed")
        for worker in (1, 2):
            server.stdout.wait_for(rf"^\[worker {worker}\] {reloaded}$")
        server.stdout.wait_for(r"^SIGHUP received: 2 worker\(s\) re-read the PSK file$")
        with Program(newcomers(16)) as welcome:
            assert welcome.wait() == 0, welcome.stdout.text + welcome.stderr.text
        # Both workers took the newcomer in with the new key.
        assert {worker_of(server, port) for port in acked_ports(welcome.stdout.text)} == {1, 2}
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


async def test_a_cookie_made_by_one_worker_is_accepted_by_another() -> None:
    # In a group that does not change, the kernel sends one client address to one socket every
    # time, so to put a cookie before another worker the test steers the kernel: it connects
    # the other worker's socket (the supervisor's descriptor of it, in this process) to the
    # client.  Linux prefers a connected socket of the group whose peer matches exactly.
    supervisor = Supervisor(KEY, workers=2, statistics_interval=0.1)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(supervisor.serve, "127.0.0.1", 0)
        client = support.MemoryBioClient()
        with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.1", 0))
            raw.setblocking(False)
            raw.sendto(client.start(), ("127.0.0.1", port))
            hello_verify_request = await _receive(raw)
            with trio.fail_after(TIMEOUT):
                while sum(s.cookies_sent for s in supervisor.worker_statistics()) != 1:
                    await trio.sleep(0.05)  # the workers report every 0.1 s
            maker = [s.cookies_sent for s in supervisor.worker_statistics()].index(1)
            other = 1 - maker
            supervisor._workers[other].sock.connect(raw.getsockname())
            (second,) = client.feed(hello_verify_request)  # the maker's cookie
            raw.sendto(second, ("127.0.0.1", port))
            reply = await _receive(raw)
            assert (reply[0], reply[13]) == (22, 2)  # a ServerHello: the cookie passed
            with trio.fail_after(TIMEOUT):
                while supervisor.worker_statistics()[other].cookies_verified != 1:
                    await trio.sleep(0.05)
            statistics = supervisor.worker_statistics()
            assert (statistics[maker].cookies_sent, statistics[maker].cookies_verified) == (1, 0)
            assert (statistics[other].cookies_sent, statistics[other].cookies_rejected) == (0, 0)
        nursery.cancel_scope.cancel()


async def _receive(sock: stdlib_socket.socket) -> bytes:
    with trio.fail_after(TIMEOUT):
        await trio.lowlevel.wait_readable(sock)
    return sock.recv(65_536)


async def test_a_killed_worker_is_restarted_on_its_socket_and_only_its_peers_handshake_again() -> (
    None
):
    server, port = start_serve("--workers", "2", "--psk-hex", KEY_HEX)
    with server:
        pids = worker_pids(server)
        clients: dict[int, list[DTLSClient]] = {1: [], 2: []}
        async with AsyncExitStack() as stack:

            async def connect(local_port: int = 0) -> DTLSClient:
                client = await DTLSClient.connect(
                    "127.0.0.1",
                    port,
                    identity=IDENTITY,
                    key=KEY,
                    local_port=local_port,
                    handshake_timeout=TIMEOUT,
                )
                stack.push_async_callback(client.aclose)
                assert (await ping(client)).endswith(b": ACK")
                return client

            for _ in range(MAX_TRIES):
                if min(len(peers) for peers in clients.values()) >= 2:
                    break
                client = await connect()
                clients[await in_thread(worker_of, server, client.local_address[1])].append(client)
            assert min(len(peers) for peers in clients.values()) >= 2

            # A cookie from the worker about to be killed, for a ClientHello sent after.
            cookie_client = support.MemoryBioClient()
            raw = stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
            stack.callback(raw.close)
            raw.bind(("127.0.0.1", 0))
            raw.settimeout(TIMEOUT)
            for _ in range(MAX_TRIES):
                raw.close()
                raw = stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
                stack.callback(raw.close)
                raw.bind(("127.0.0.1", 0))
                raw.settimeout(TIMEOUT)
                cookie_client = support.MemoryBioClient()
                raw.sendto(cookie_client.start(), ("127.0.0.1", port))
                hello_verify_request, _ = raw.recvfrom(65_536)
                found = await in_thread(
                    server.stdout.wait_for,
                    rf"^\[worker (\d)\] \(127\.0\.0\.1:{raw.getsockname()[1]}\): not verified yet$",
                )
                if found.group(1) == "1":
                    break
            else:
                pytest.fail(f"{MAX_TRIES} client sockets all reached worker 2")

            os.kill(pids[1], signal.SIGKILL)
            await in_thread(
                server.stdout.wait_for,
                rf"^warning: worker 1 \(pid {pids[1]}\) was killed by SIGKILL: restarting it on "
                r"the same socket in [\d.]+ s \(restart 1\)$",
            )
            restarted = await in_thread(server.stdout.wait_for, WORKER_STARTED, count=3)
            assert restarted.group(1) == "1" and int(restarted.group(2)) != pids[1]

            # The other worker's peers notice nothing: the same associations are answered.
            for client in clients[2]:
                assert (await ping(client)).endswith(b": ACK")
            # The killed worker's peers reach its replacement, which does not know them...
            for client in clients[1]:
                await client.send(b"anyone there?")
                await in_thread(
                    server.stdout.wait_for,
                    rf"^\[worker 1\] warning: \(127\.0\.0\.1:{client.local_address[1]}\): not a "
                    r"ClientHello and no association, dropped$",
                )
            # ... and the cookie the dead worker made passes with the replacement.
            (second,) = cookie_client.feed(hello_verify_request)
            raw.sendto(second, ("127.0.0.1", port))
            reply, _ = raw.recvfrom(65_536)
            assert (reply[0], reply[13]) == (22, 2)  # a ServerHello
            # A new handshake from the same port lands on the same socket: worker 1 again.
            for client in clients[1]:
                client_port = client.local_address[1]
                await client.aclose()
                await connect(client_port)
                assert await in_thread(worker_of, server, client_port, count=2) == 1

        text = server.stdout.text
        for client in clients[2]:  # one handshake each, never a second one
            assert text.count(f"Connection with (127.0.0.1:{client.local_address[1]}) ") == 1
        assert "worker 2 (pid" not in text  # worker 2 never restarted
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0


def test_a_supervisor_killed_with_sigkill_leaves_no_worker_behind() -> None:
    # Each worker watches its stdin, which only the supervisor holds open: when the kernel
    # closes it (however the supervisor ended), the worker stops as on SIGTERM.
    server, port = start_serve("--workers", "2", "--psk-hex", KEY_HEX)
    with server, pinging_clients(port, 8) as client:
        server.process.kill()
        assert server.process.wait(TIMEOUT) == -signal.SIGKILL
        # The workers wrote to the same stdout: it reaches its end once both have exited.
        server.stdout.join(TIMEOUT)
        assert server.stdout.finished, "a worker outlived its supervisor"
        assert client.wait() == 1
    text = server.stdout.text
    closed = re.findall(
        r"^\[worker \d\] the supervisor has gone: shutting down, close_notify to (\d+) "
        r"peer\(s\)$",
        text,
        re.MULTILINE,
    )
    assert len(closed) == 2 and sum(map(int, closed)) == 8, text
    lines = client.stdout.text.splitlines()
    for number in range(8):
        assert f"error: Alice (clone number {number}): shutdown alert received" in lines


def test_more_than_one_worker_without_reuseport_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_cli, "reuseport_balances", lambda: False)
    out, errors = io.StringIO(), io.StringIO()
    assert main(["serve", "--port", "0", "--workers", "3"], stdout=out, stderr=errors) == 2
    assert re.fullmatch(
        r"trio-dtls-server: error: --workers 3 needs Linux's load-balancing SO_REUSEPORT, "
        r"which this platform \(\w+\) does not have; use --workers 1\n",
        errors.getvalue(),
    )
    assert out.getvalue() == ""
    monkeypatch.setattr(_supervisor, "reuseport_balances", lambda: False)
    with pytest.raises(WorkersUnsupportedError):
        Supervisor(KEY, workers=2)
    Supervisor(KEY, workers=1)  # one worker needs no SO_REUSEPORT


def test_workers_auto_is_the_cpus_this_process_may_use() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve", "--workers", "auto"]).workers == len(os.sched_getaffinity(0))
    assert parser.parse_args(["serve"]).workers == 1
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["serve", "--workers", "0"])
    assert exit_info.value.code == 2
    help_text = " ".join(subcommands()["serve"].format_help().split())
    assert "The limits below apply per worker" in help_text
    assert "every worker has these limits of its own" in help_text


def test_worker_lines_carry_the_worker_number() -> None:
    event = InfoEvent(EventCode.VERIFIED, "(127.0.0.1:5555): verified, starting a handshake")
    stream = io.StringIO()
    Display(stream, colour=ColourMode.NONE, worker=2).show(event)
    assert stream.getvalue() == "[worker 2] (127.0.0.1:5555): verified, starting a handshake\n"
    record = json.loads(Display(io.StringIO(), log_format="json", worker=2).json_line(event))
    assert record["worker"] == 2
    supervisor = json.loads(
        Display(io.StringIO(), log_format="json", in_group=True).json_line(event)
    )
    assert supervisor["worker"] is None
    alone = json.loads(Display(io.StringIO(), log_format="json").json_line(event))
    assert "worker" not in alone


# -- the library --------------------------------------------------------------------------------


async def start_pid_echo_workers(
    nursery: trio.Nursery, statistics_interval: float = 1.0
) -> tuple[Supervisor, int]:
    """Two workers answering with their pid (``worker_handlers:pid_echo``) on a free loopback
    port, started in ``nursery``; the supervisor and the port."""
    supervisor: Supervisor = await nursery.start(
        partial(
            serve_workers,
            "127.0.0.1",
            0,
            workers=2,
            handler="worker_handlers:pid_echo",
            psk={IDENTITY: KEY},
            statistics_interval=statistics_interval,
        )
    )
    assert supervisor.local_address is not None
    return supervisor, supervisor.local_address[1]


async def test_serve_workers_reports_statistics_and_restarts_with_a_handler_by_name() -> None:
    async with trio.open_nursery() as nursery:
        supervisor, port = await start_pid_echo_workers(nursery, statistics_interval=0.1)
        pids = supervisor.worker_pids()
        assert None not in pids and len(set(pids)) == 2
        served: Counter[int] = Counter()
        for _ in range(MAX_TRIES):
            client = await DTLSClient.connect(
                "127.0.0.1", port, identity=IDENTITY, key=KEY, handshake_timeout=TIMEOUT
            )
            async with client:
                pid, _, echo = (await ping(client, b"hello")).partition(b" ")
                assert echo == b"hello"
                served[int(pid)] += 1
            if len(served) == 2 and sum(served.values()) >= 4:
                break
        assert set(served) == set(pids)
        expected = [served[pid] for pid in pids]  # type: ignore[index]
        with trio.fail_after(TIMEOUT):
            while [s.handshakes_completed for s in supervisor.worker_statistics()] != expected:
                await trio.sleep(0.05)  # the workers report every 0.1 s
        assert [s.messages_received for s in supervisor.worker_statistics()] == expected

        async with supervisor.events() as stream:
            os.kill(pids[0], signal.SIGKILL)  # type: ignore[arg-type]
            with trio.fail_after(TIMEOUT):
                restarted = await support.next_event(stream, "worker_restarted")
                started = await support.next_event(stream, "worker_started")
        assert isinstance(restarted, WorkerExited)
        assert (restarted.worker, restarted.pid, restarted.exit_status) == (
            1,
            pids[0],
            -signal.SIGKILL,
        )
        assert started.message.startswith("worker 1 started (pid ")
        assert supervisor.restarts == 1 and supervisor.worker_restarts() == [1, 0]
        new_pids = supervisor.worker_pids()
        assert new_pids[1] == pids[1] and new_pids[0] not in (None, pids[0])
        nursery.cancel_scope.cancel()
    for worker_pid in (*pids, *new_pids):
        with pytest.raises(ProcessLookupError):  # stopped and reaped: nothing outlives us
            os.kill(worker_pid, 0)  # type: ignore[arg-type]


async def test_a_worker_that_keeps_crashing_is_restarted_with_a_growing_delay() -> None:
    supervisor = Supervisor(
        KEY, workers=1, handler="worker_handlers:exit_3", restart_delay=(0.2, 0.3)
    )
    async with trio.open_nursery() as nursery, supervisor.events() as stream:
        _, port = await nursery.start(supervisor.serve, "127.0.0.1", 0)
        delays = []
        for restart in (1, 2, 3):
            client = await DTLSClient.connect(
                "127.0.0.1", port, identity=IDENTITY, key=KEY, handshake_timeout=TIMEOUT
            )
            async with client:
                await client.send(b"crash")  # the handler ends its worker with exit code 3
                with trio.fail_after(TIMEOUT):
                    event = await support.next_event(stream, "worker_restarted")
                    await support.next_event(stream, "worker_started")
            assert isinstance(event, WorkerExited)
            assert (event.worker, event.exit_status, event.restarts) == (1, 3, restart)
            assert event.message.startswith(f"worker 1 (pid {event.pid}) exited with code 3: ")
            delays.append(event.delay)
        # Doubling from the first delay while the worker dies young, never past the maximum.
        assert delays == [0.2, 0.3, 0.3]
        assert supervisor.restarts == 3
        nursery.cancel_scope.cancel()


async def test_a_handler_factory_is_called_once_in_each_worker() -> None:
    supervisor = Supervisor(KEY, workers=1, handler_factory="worker_handlers:make_counting_handler")
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(supervisor.serve, "127.0.0.1", 0)
        replies = []
        for _ in range(2):
            client = await DTLSClient.connect("127.0.0.1", port, identity=IDENTITY, key=KEY)
            async with client:
                replies.append(await ping(client))
        pid = supervisor.worker_pids()[0]
        # One factory call: the second connection saw the state the first one left.
        assert replies == [f"{pid} connection 1".encode(), f"{pid} connection 2".encode()]
        nursery.cancel_scope.cancel()
    with pytest.raises(ModuleNotFoundError):  # resolved in the supervisor, before any worker
        Supervisor(KEY, workers=1, handler_factory="no_such_module:factory")
    with pytest.raises(TypeError, match="__main__"):
        Supervisor(KEY, workers=1, handler=_defined_in_main())


def _defined_in_main() -> Handler:
    async def handler(connection: DTLSConnection) -> None:
        pass

    handler.__module__ = "__main__"  # as a function of the script that was run
    return handler


async def test_a_resumption_that_lands_on_another_worker_becomes_a_full_handshake() -> None:
    # A session can only reach another worker if the client's address or port changed: each
    # worker has its own session cache and ticket keys, so there it is a full handshake.
    async with trio.open_nursery() as nursery:
        _, port = await start_pid_echo_workers(nursery)
        first = await DTLSClient.connect("127.0.0.1", port, identity=IDENTITY, key=KEY)
        async with first:
            home = int((await ping(first)).partition(b" ")[0])
            session = first.tls_session
        outcomes: Counter[bool] = Counter()
        for _ in range(MAX_TRIES):
            client = await DTLSClient.connect(
                "127.0.0.1", port, identity=IDENTITY, key=KEY, tls_session=session
            )
            async with client:
                pid = int((await ping(client)).partition(b" ")[0])
                assert client.resumed == (pid == home), (pid, home)
                outcomes[client.resumed] += 1
            if outcomes[True] and outcomes[False]:
                break
        assert outcomes[True] and outcomes[False], outcomes
        nursery.cancel_scope.cancel()


async def test_a_worker_that_cannot_start_stops_the_group_with_one_error(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sensor-0,1a2b3c4d5e6f\n")
    supervisor = Supervisor(PskFileStore(keys), workers=2)  # checked here: the file is good
    keys.unlink()  # ... and gone by the time the workers read it
    with pytest.raises(WorkerStartError, match=r"^worker \d \(pid \d+\) exited with code 1 "):
        await supervisor.serve("127.0.0.1", 0)
    assert supervisor.local_address is None
