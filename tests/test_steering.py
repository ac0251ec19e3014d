"""Steering Connection ID records to their worker (``--workers N``, :mod:`._steering`).

Everything here runs through the real kernel (Linux): a group of ``SO_REUSEPORT`` sockets on
127.0.0.1 bound by the supervisor's own :func:`bind_reuseport_group`, the classic BPF program
attached, datagrams sent from many source ports, and the socket each one reached read back.
What is shown:

* a ``tls12_cid`` datagram whose CID starts with byte k reaches socket k, from any source;
* everything else (ClientHellos, short or foreign datagrams, CIDs naming no worker) is still
  delivered, each to the very socket the kernel's hash picks for its source without any
  program (measured per source with a datagram the program cannot steer): none is lost;
* a program result beyond the group makes the kernel fall back to its hash, and a load past
  the packet's end ends a program with 0 (socket 0) -- the two kernel facts the program's
  design rests on;
* when a socket of the group closes, the last one takes its index (why the supervisor keeps
  every socket open);
* a small interpreter of classic BPF, run on the same payloads as the kernel (Hypothesis),
  agrees with it;
* with real workers: records naming worker k are counted by worker k only, and still after
  worker k was killed and restarted.
"""

from __future__ import annotations

import os
import select
import signal
import socket as stdlib_socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from types import SimpleNamespace
from typing import cast

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import KEY, LOOPBACK_HOSTS, next_event

from trio_dtls_server import ServerConfig, Supervisor
from trio_dtls_server._steering import (
    CID_OFFSET,
    HASH_FALLBACK,
    JEQ,
    JGE,
    LD_BYTE,
    LD_LEN,
    RET_A,
    RET_K,
    TLS12_CID,
    UNSTEERED_PREFIX,
    Instruction,
    SteeringUnsupportedError,
    attach_program,
    build_program,
    pack_program,
    plan_steering,
    worker_connection_id_prefix,
)
from trio_dtls_server._supervisor import connection_id_length_of
from trio_dtls_server._transport import bind_reuseport_group

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_ATTACH_REUSEPORT_CBPF is Linux's"
)

#: Sockets in the test group.
GROUP = 4
#: The CID length the test records carry (the server's default).
CID_LENGTH = 6
#: Client sockets, each its own source port.
SOURCES = 64
#: Seconds to wait for one loopback datagram (it is normally there at once).
WAIT = 5.0


# -- a classic BPF interpreter: what the kernel computes, in a few lines ----------------------


def run_cbpf(program: Sequence[Instruction], payload: bytes) -> int:
    """Run ``program`` on ``payload`` as the kernel runs a reuseport program on a UDP payload.

    Only the instructions the steering program uses.  A load past the end of the packet ends
    the program with 0, as in the kernel.
    """
    accumulator = 0
    pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == LD_LEN:
            accumulator = len(payload)
        elif code == LD_BYTE:
            if k >= len(payload):
                return 0
            accumulator = payload[k]
        elif code in (JEQ, JGE):
            taken = accumulator == k if code == JEQ else accumulator >= k
            pc += jt if taken else jf
        elif code == RET_K:
            return k
        elif code == RET_A:
            return accumulator
        else:
            raise AssertionError(f"instruction {code:#x} not modelled")


def cid_record(
    first_cid_byte: int, *, cid_length: int = CID_LENGTH, body: bytes = b"x" * 24
) -> bytes:
    """A ``tls12_cid`` record whose CID starts with ``first_cid_byte`` (the rest fixed)."""
    cid = bytes([first_cid_byte]) + bytes(range(1, cid_length))
    header = bytes([TLS12_CID]) + b"\xfe\xfd" + b"\x00\x01" + (7).to_bytes(6, "big")
    return header + cid + len(body).to_bytes(2, "big") + body


#: The start of a ClientHello record (content type 22), with a 2 where a CID's first byte
#: would be: the program must not read it.
CLIENT_HELLO = bytes([22]) + b"\xfe\xfd" + bytes(8) + b"\x02" + bytes(40)


# -- the group and its clients ----------------------------------------------------------------


@contextmanager
def socket_group(
    count: int = GROUP, host: str = "127.0.0.1"
) -> Iterator[list[stdlib_socket.socket]]:
    """``count`` sockets bound as the supervisor binds them (in its order), non-blocking."""
    sockets = trio.run(bind_reuseport_group, host, 0, count)
    try:
        for sock in sockets:
            sock.setblocking(False)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def client_sockets(
    count: int = SOURCES, host: str = "127.0.0.1"
) -> Iterator[list[stdlib_socket.socket]]:
    """``count`` client sockets on ``host``, each with a source port of its own."""
    family = stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET
    with ExitStack() as stack:
        clients = []
        for _ in range(count):
            client = stack.enter_context(stdlib_socket.socket(family, stdlib_socket.SOCK_DGRAM))
            client.bind((host, 0))
            clients.append(client)
        yield clients


def where(group: list[stdlib_socket.socket], client: stdlib_socket.socket, payload: bytes) -> int:
    """Send ``payload`` from ``client`` to the group; the index of the one socket it reached."""
    client.sendto(payload, group[0].getsockname())
    ready, _, _ = select.select(group, [], [], WAIT)
    assert len(ready) == 1, f"{payload.hex()} reached {len(ready)} sockets"
    (sock,) = ready
    assert sock.recv(65_536) == payload
    return group.index(sock)


def hashed(group: list[stdlib_socket.socket], clients: list[stdlib_socket.socket]) -> list[int]:
    """The socket the kernel's hash gives each client: where a ClientHello from it goes."""
    return [where(group, client, CLIENT_HELLO) for client in clients]


# -- the program through the kernel ------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_a_cid_record_reaches_the_socket_its_first_cid_byte_names_from_any_source(
    host: str,
) -> None:
    with socket_group(host=host) as group, client_sockets(host=host) as clients:
        attach_program(group[0], build_program(GROUP, CID_LENGTH))
        for index in range(GROUP):
            reached = Counter(where(group, client, cid_record(index)) for client in clients)
            assert reached == {index: SOURCES}
        # The shortest record the program steers: the header up to the CID's last byte.
        shortest = cid_record(3)[: CID_OFFSET + CID_LENGTH]
        assert {where(group, client, shortest) for client in clients} == {3}


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_everything_else_is_delivered_where_the_hash_puts_it(host: str) -> None:
    with socket_group(host=host) as group, client_sockets(host=host) as clients:
        attach_program(group[0], build_program(GROUP, CID_LENGTH))
        home = hashed(group, clients)
        # Spread over the sockets as without a program: 64 sources leave none out (each is
        # missed with probability (3/4)**64).
        assert set(home) == set(range(GROUP)), Counter(home)
        unsteered = [
            cid_record(GROUP),  # a CID naming no worker of the group
            cid_record(200),
            cid_record(UNSTEERED_PREFIX),  # the prefix of workers past the 255th
            cid_record(1)[: CID_OFFSET + CID_LENGTH - 1],  # too short to hold the CID
            bytes([TLS12_CID]),
            b"",
            bytes([23]) + cid_record(1)[1:],  # application data without a CID
            bytes([TLS12_CID - 1]) + cid_record(1)[1:],
            CLIENT_HELLO,
        ]
        for payload in unsteered:
            for client, expected in zip(clients, home, strict=True):
                assert where(group, client, payload) == expected, payload.hex()


def test_an_index_beyond_the_group_falls_back_to_the_hash() -> None:
    # The kernel fact the fallback rests on (reuseport_select_sock: "no bpf or invalid bpf
    # result: fall back to hash usage"): a program that always answers 7 in a group of 4.
    with socket_group() as group, client_sockets(16) as clients:
        home = hashed(group, clients)
        attach_program(group[0], [Instruction(RET_K, 0, 0, 7)])
        assert [where(group, client, cid_record(1)) for client in clients] == home
        attach_program(group[0], [Instruction(RET_K, 0, 0, HASH_FALLBACK)])
        assert [where(group, client, cid_record(1)) for client in clients] == home
        attach_program(group[0], [Instruction(RET_K, 0, 0, 2)])  # ... and 2 means socket 2
        assert {where(group, client, CLIENT_HELLO) for client in clients} == {2}


def test_a_load_past_the_end_sends_the_datagram_to_socket_0() -> None:
    # Why the program checks the length first: without the check, a short tls12_cid datagram
    # aborts the program at the CID load, which returns 0 -- socket 0, for every source.
    unchecked = build_program(GROUP, CID_LENGTH)[2:]  # from "ldb [0]" on; jumps are relative
    short = cid_record(3)[:CID_OFFSET]
    assert run_cbpf(unchecked, short) == 0
    assert run_cbpf(build_program(GROUP, CID_LENGTH), short) == HASH_FALLBACK
    with socket_group() as group, client_sockets(16) as clients:
        home = hashed(group, clients)
        assert set(home) != {0}  # (16 sources all hashed to socket 0: (1/4)**16)
        attach_program(group[0], unchecked)
        assert {where(group, client, short) for client in clients} == {0}
        assert {where(group, client, cid_record(3)) for client in clients} == {3}
        attach_program(group[0], build_program(GROUP, CID_LENGTH))
        assert [where(group, client, short) for client in clients] == home


def test_a_closed_socket_gives_its_index_to_the_last_one() -> None:
    # Why the supervisor keeps every socket of the group open, across worker restarts too.
    with socket_group() as group, client_sockets(8) as clients:
        attach_program(group[0], build_program(GROUP, CID_LENGTH))
        group[1].close()
        remaining = [group[0], group[2], group[3]]
        reached = {where(remaining, client, cid_record(1)) for client in clients}
        assert reached == {remaining.index(group[3])}  # index 1 is now the last socket's
        home = hashed(remaining, clients)
        # Index 3 is past the group's end now: hashed.
        assert [where(remaining, client, cid_record(3)) for client in clients] == home


def test_the_kernel_and_the_interpreter_agree_on_random_payloads() -> None:
    program = build_program(GROUP, CID_LENGTH)
    records = st.builds(
        lambda first, cid_byte, rest: bytes([first]) + rest[: CID_OFFSET - 1] + bytes([cid_byte])
        + rest[CID_OFFSET - 1 :],
        st.sampled_from([TLS12_CID, TLS12_CID, 22, 23, 0, 255]),
        st.integers(0, 255) | st.integers(0, GROUP + 1),
        st.binary(max_size=40),
    )  # fmt: skip
    with socket_group() as group, client_sockets(8) as clients:
        attach_program(group[0], program)
        home = hashed(group, clients)

        @settings(
            max_examples=300,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(payload=st.binary(max_size=64) | records, source=st.integers(0, len(clients) - 1))
        @example(payload=cid_record(2)[: CID_OFFSET + CID_LENGTH], source=0)
        @example(payload=cid_record(2)[: CID_OFFSET + CID_LENGTH - 1], source=0)
        @example(payload=cid_record(GROUP), source=1)
        @example(payload=b"", source=2)
        def check(payload: bytes, source: int) -> None:
            expected = run_cbpf(program, payload)
            if expected >= GROUP:
                expected = home[source]
            assert where(group, clients[source], payload) == expected

        check()


def test_attaching_needs_no_privilege() -> None:
    # Classic BPF, unlike SO_ATTACH_REUSEPORT_EBPF, needs no capability.  Shown in a process
    # without any: run as root (here), the child imports what it needs and then becomes
    # nobody, which clears every capability; run as anyone else it has none to begin with.
    code = (
        "import os, socket\n"
        "from trio_dtls_server._steering import attach_program, build_program\n"
        "if os.geteuid() == 0:\n"
        "    os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "status = open('/proc/self/status').read()\n"
        "assert 'CapEff:\\t0000000000000000' in status, status\n"
        "group = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]\n"
        "for sock in group:\n"
        "    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
        "    sock.bind(('127.0.0.1', group[0].getsockname()[1]))\n"
        "attach_program(group[0], build_program(2, 6))\n"
        "print('attached as', os.geteuid() and 'unprivileged')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout) == (0, "attached as unprivileged\n"), result.stderr


def test_attaching_to_a_socket_outside_a_group_is_refused() -> None:
    with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as alone:
        alone.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as error:
            attach_program(alone, build_program(2, CID_LENGTH))
        assert error.value.errno == 22  # EINVAL: not bound with SO_REUSEPORT


def test_attaching_off_linux_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with (
        stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as sock,
        pytest.raises(SteeringUnsupportedError, match="needs Linux's SO_ATTACH_REUSEPORT_CBPF"),
    ):
        attach_program(sock, build_program(2, CID_LENGTH))


# -- the program and the plan, without the kernel ---------------------------------------------


def test_the_program_is_the_documented_listing() -> None:
    assert build_program(4, 6) == (
        (LD_LEN, 0, 0, 0),
        (JGE, 0, 4, 17),
        (LD_BYTE, 0, 0, 0),
        (JEQ, 0, 2, 25),
        (LD_BYTE, 0, 0, 11),
        (JGE, 0, 1, 4),
        (RET_K, 0, 0, 0xFFFF_FFFF),
        (RET_A, 0, 0, 0),
    )
    assert (LD_LEN, LD_BYTE, JEQ, JGE, RET_K, RET_A) == (0x80, 0x30, 0x15, 0x35, 0x06, 0x16)
    assert build_program(1000, 8)[1].k == 19 and build_program(1000, 8)[5].k == 255
    assert len(pack_program(build_program(4, 6))) == 8 * 8  # struct sock_filter: 8 bytes
    for workers, length in ((0, 6), (2, 0), (2, 256)):
        with pytest.raises(ValueError):
            build_program(workers, length)


def test_each_worker_prefix_is_its_index_and_past_255_the_unsteered_byte() -> None:
    assert [worker_connection_id_prefix(i) for i in (0, 1, 254)] == [b"\x00", b"\x01", b"\xfe"]
    assert worker_connection_id_prefix(255) == worker_connection_id_prefix(300) == b"\xff"
    program = build_program(1000, CID_LENGTH)
    assert run_cbpf(program, cid_record(254)) == 254
    assert run_cbpf(program, cid_record(UNSTEERED_PREFIX)) == HASH_FALLBACK
    with pytest.raises(ValueError):
        worker_connection_id_prefix(-1)


def test_the_plan_steers_only_groups_that_can_use_it() -> None:
    assert not plan_steering(1, 6).enabled  # one socket: nothing to steer
    assert not plan_steering(4, 0).enabled  # no CIDs
    assert plan_steering(4, 0).warning is None and plan_steering(1, 6).warning is None
    assert plan_steering(4, 0).prefix(2) == b""
    short = plan_steering(4, 3)
    assert not short.enabled and short.prefix(2) == b""
    assert short.warning is not None and "too short to name the worker" in short.warning
    steered = plan_steering(4, 4)
    assert steered.enabled and steered.warning is None and steered.prefix(2) == b"\x02"
    many = plan_steering(300, 6)
    assert many.enabled and many.prefix(299) == b"\xff"
    assert many.warning == (
        "a connection id names at most 255 workers: clients of workers 256-300 that change "
        "address must handshake again"
    )


def test_the_supervisor_reads_the_cid_length_from_the_configuration() -> None:
    assert connection_id_length_of(ServerConfig()) == 6
    assert connection_id_length_of(ServerConfig(connection_id_length=0)) == 0
    stub = cast(ServerConfig, SimpleNamespace(connection_id_length=8))
    assert connection_id_length_of(stub) == 8


def test_a_kernel_that_refuses_the_program_costs_the_steering_not_the_start() -> None:
    supervisor = Supervisor(KEY, workers=2)
    supervisor._steering = plan_steering(2, CID_LENGTH)
    with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as alone:
        alone.bind(("127.0.0.1", 0))  # not a group: the kernel refuses (EINVAL)
        achieved = supervisor._attach_steering(alone)
    assert not achieved.enabled and achieved.prefix(1) == b""
    assert achieved.warning is not None
    assert achieved.warning.startswith(
        "cannot steer connection ids to their workers (SO_ATTACH_REUSEPORT_CBPF: Invalid argument)"
    )


# -- real workers ------------------------------------------------------------------------------

WORKERS = 3
#: Source ports per worker index in each round.
PER_WORKER = 8


def steered_supervisor() -> Supervisor:
    """A group of ``WORKERS`` that steers CIDs of ``CID_LENGTH`` bytes."""
    config = ServerConfig(connection_id_length=CID_LENGTH)
    return Supervisor(KEY, workers=WORKERS, config=config, statistics_interval=0.1)


def dropped(supervisor: Supervisor) -> list[int]:
    """Each worker's dropped datagrams, whatever the reason (today "not a ClientHello from an
    unknown peer"; "unknown connection id" once the workers demultiplex by CID)."""
    return [sum(s.drops.values()) for s in supervisor.worker_statistics()]


async def send_round(port: int, indices: Sequence[int]) -> None:
    """``PER_WORKER`` records naming each of ``indices``, each from a source port of its own."""
    for index in indices:
        for _ in range(PER_WORKER):
            with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as client:
                client.bind(("127.0.0.1", 0))
                client.sendto(cid_record(index, body=os.urandom(24)), ("127.0.0.1", port))


async def wait_for_counts(supervisor: Supervisor, total: int) -> list[int]:
    """Each worker's datagrams_in once together they reached ``total``; dropped == received."""
    with trio.fail_after(30):
        while sum(s.datagrams_in for s in supervisor.worker_statistics()) < total:
            await trio.sleep(0.05)  # the workers report every 0.1 s
    await trio.sleep(0.3)  # a few more reports: nothing else arrives
    received = [s.datagrams_in for s in supervisor.worker_statistics()]
    assert dropped(supervisor) == received
    return received


async def test_only_the_worker_a_cid_names_counts_its_records_also_after_a_restart() -> None:
    supervisor = steered_supervisor()
    async with trio.open_nursery() as nursery, supervisor.events() as stream:
        _, port = await nursery.start(supervisor.serve, "127.0.0.1", 0)
        assert supervisor.steers_connection_ids
        # Each worker process is told its index: the prefix of the CIDs it will issue.
        assert [supervisor._spec_for(w, -1).connection_id_prefix for w in supervisor._workers] == [
            b"\x00",
            b"\x01",
            b"\x02",
        ]
        # One worker index at a time, each from PER_WORKER source ports: only that worker
        # counts them (by the kernel's hash, the 8 would spread over the 3 workers).
        for index in range(WORKERS):
            await send_round(port, [index])
            expected = [PER_WORKER if i <= index else 0 for i in range(WORKERS)]
            assert await wait_for_counts(supervisor, PER_WORKER * (index + 1)) == expected

        # Worker 2 (index 1) killed and restarted on its socket, which keeps index 1.
        pid = supervisor.worker_pids()[1]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(30):
            await next_event(stream, "worker_restarted")
            # While no process reads it, what is steered to socket 1 waits in its buffer.
            await send_round(port, [1])
            await next_event(stream, "worker_started")
        assert supervisor.worker_pids()[1] not in (None, pid)
        assert supervisor._spec_for(supervisor._workers[1], -1).connection_id_prefix == b"\x01"
        await send_round(port, [1, 1, 0])
        # The replacement counts from zero: the round sent while it was down, and the 2 after;
        # the others kept their counts, and only worker 1 (index 0) had more.
        expected = [PER_WORKER * 2, PER_WORKER * 3, PER_WORKER]
        assert await wait_for_counts(supervisor, sum(expected)) == expected
        nursery.cancel_scope.cancel()


async def test_a_group_that_cannot_steer_says_why_and_serves() -> None:
    supervisor = Supervisor(KEY, workers=2, statistics_interval=0.1)
    supervisor._steering = plan_steering(2, 3)  # CIDs too short to spare a byte
    async with trio.open_nursery() as nursery, supervisor.events() as stream:
        _, port = await nursery.start(supervisor.serve, "127.0.0.1", 0)
        with trio.fail_after(30):
            event = await next_event(stream, "connection_id_steering")
        assert event.severity == "warning"
        assert event.message.startswith("connection ids of 3 byte(s) are too short to name the")
        assert not supervisor.steers_connection_ids
        assert [supervisor._spec_for(w, -1).connection_id_prefix for w in supervisor._workers] == [
            b"",
            b"",
        ]
        # No program: records naming worker 1 spread over the group by the hash.
        await send_round(port, [0, 0, 0, 0])
        with trio.fail_after(30):
            while sum(s.datagrams_in for s in supervisor.worker_statistics()) < 4 * PER_WORKER:
                await trio.sleep(0.05)
        assert all(s.datagrams_in for s in supervisor.worker_statistics())
        nursery.cancel_scope.cancel()
