"""Soak the record layer (``_records.py``) on the seeded lossy fake network, many seeds at a time.

Run it by hand (pytest does not collect it: no ``test_`` prefix)::

    /work/venv/bin/python tests/soak_records.py --seeds 30
    /work/venv/bin/python tests/soak_records.py --seeds 5 --scenario restart-resume --verbose

Every run is one Trio program on :class:`trio.testing.MockClock` (autojump), so minutes of
network time cost a fraction of a second.  A run is one *scenario* with one *seed* (which picks
the loss rate, the MTU and every random choice of the network and of the driver), once with
``ServerConfig(release_openssl=True)`` (our record layer) and once with ``False`` (OpenSSL's,
the control).  The scenarios:

``lossy``
    clients handshake and get messages answered over loss, duplication, reordering and delay.
``resume``
    each client talks, says goodbye, then reconnects from a new port with ``tls_session=``: a
    resumed handshake under loss, where the client finishes first and its data can overtake its
    Finished.
``restart`` / ``restart-resume``
    each client talks, sends one more message and "crashes" (its socket closes, no goodbye)
    while that message (or its answer) is in flight, then restarts on the *same* address and
    port, without or with ``tls_session=``.  The server keeps the old association aside until the
    new handshake completes, and hands protected application data to both meanwhile.
``client-close``
    clients say close_notify under loss; a lost goodbye leaves the server to its idle timeout.
``idle``
    clients go quiet; the server's idle timeout closes them (close_notify under loss).
``server-close``
    clients arrive over time and talk until ``server.aclose()``, some still handshaking.
``burst-resume``
    twenty messages back to back, and again right after a resumed handshake: with the
    client's Finished lost, many records overtake it.
``restart-anytime``
    each client restarts on its port once or twice at a random moment (mid-handshake,
    mid-conversation, during the previous restart's handshake), resuming at most once per
    session; a client whose handshake fails tries again, as a device would.

Each seed also picks the one suite the clients offer (ChaCha20-Poly1305, AES-GCM with SHA-256
and SHA-384, AES-CCM_8, AES-256-CCM): every nonce construction and both tag lengths.

How a run is judged (everything below is a *problem*, listed in the report):

* **handshakes**: every one completes (lossy network, generous retransmission budget), within
  its deadline; every ``tls_session=`` reconnect resumes; the server counts them all exactly.
* **exactly once**: every plaintext is unique (association, message, attempt), so the server
  must decrypt each at most once, answer each it decrypted once, and each client must get each
  answer at most once and only its own.
* **the wire as oracle**: the fake network logs every datagram and when each copy was read.
  The driver opens every protected record itself with the *client's* keys (client-sent records
  with its write key, server-sent ones with its read key), which attributes each record to one
  association.  Then: a client datagram whose first copy the server read while that
  association was alive on the server must have been delivered to the handler; every further
  copy read then is a replay, and (without restarts) ``drops["replayed record"]`` must equal
  their count exactly; ``drops["record failed authentication"]`` must be 0.
* **the documented bounds are not defects**: early data beyond the 16 protected records the
  server keeps while waiting for a Finished may be lost (counted as a fact); a restarted
  client's handshake spoilt by a datagram of its previous life (:func:`_restart_race`) is a
  race DTLS 1.2 cannot prevent (counted; the client retries).
* **no nonce reuse**: per association and direction, each (epoch, sequence number) carries one
  byte string only (a byte-identical resend is allowed; two different records are not).  No
  protected record may be left unattributed.
* **closing**: each server connection ends with the reason the wire explains (the peer's
  close_notify at the moment its first copy was read, the idle timeout, the server closing, a
  replacement); the server sends exactly one close_notify per ended connection (none on
  replacement); a client learns of the server's close_notify iff a copy reached it; at the end
  the server holds no peers and no handshakes; ``remote_closed`` and ``idle_closed`` match.
* **control**: the released and the kept run of one seed see the same network fates (the fake
  network's draws depend only on each link's datagram count), so their outcomes -- every
  counter except ``openssl_released`` -- must agree; any difference is listed.

WARP: ``--openssl-time-warp 1000`` restarts the soak under libfaketime with OpenSSL's clock a
thousand times fast, so that OpenSSL's own retransmission timer fires and it re-makes its
Finished with new record numbers (never under the mock clock alone).  Runs are then not
repeatable and the released/kept comparison is skipped; every other check holds.

Bounded: each run under a mock-time limit, the whole soak under ``--time-limit`` seconds of
real time (runs not started by then are skipped and reported as such).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
import trio.testing
from fakenet import Address, FakeEndpoint, FakeNetwork, Impairments, SentDatagram
from OpenSSL import SSL

from trio_dtls_server import (
    ConnectionClosed,
    DTLSClient,
    DTLSConnection,
    DTLSServer,
    HandshakeError,
    RetransmitPolicy,
    ServerConfig,
    ServerEvent,
    StatisticsSnapshot,
)
from trio_dtls_server._protection import AeadProtector
from trio_dtls_server._records import RecordProtection
from trio_dtls_server._session import HANDSHAKE_KEPT_BUDGET
from trio_dtls_server._wire import (
    AlertDescription,
    AlertLevel,
    ContentType,
    HandshakeType,
    MalformedDatagram,
    Record,
    encode_alert,
    parse_records,
)

__all__ = [
    "MODES",
    "SCENARIOS",
    "RunResult",
    "RunSpec",
    "compare_modes",
    "run_one",
    "spec_for",
]

KEY = bytes.fromhex("5f0e7a1c93d2b84460ce1f27a9b3d58e")
SERVER: Address = ("127.0.0.1", 5684)
MAX_DELAY = 3.0
REORDER_HOLD = 1.0
#: A round trip through the worst delays (3 s each way plus the 1 s reorder hold) fits in this.
REPLY_TIMEOUT = 8.0
#: More attempts than this for one message means something is broken, not unlucky.
MAX_ATTEMPTS = 25
HANDSHAKE_TIMEOUT = 120.0
#: RFC 6347's 1 s doubling, capped at 8 s so lossy handshakes keep trying often.
RETRANSMIT = RetransmitPolicy(initial=1.0, maximum=8.0, max_retransmissions=14)
#: Time for every copy still travelling to arrive (and be handled) before counting.
SETTLE = 2 * (MAX_DELAY + REORDER_HOLD)
#: Long enough that a talking client (one send per REPLY_TIMEOUT at most) is never idle.
IDLE_TIMEOUT = 150.0
#: The server's idle backstop fires up to two grace periods (1 s each) after the timeout.
IDLE_MARGIN = 3.0
#: Mock-time limit of one run: it fails instead of hanging.
RUN_LIMIT = 4 * 3600.0

PEER_CLOSED = "the peer sent close_notify"
SERVER_CLOSED = "the server sent close_notify"
IDLE = "idle timeout"
CANCELLED = "cancelled"
CLOSE_NOTIFY = encode_alert(AlertLevel.warning, AlertDescription.close_notify)

MODES = ("released", "kept")
#: One per seed, in turn: every nonce construction (ChaCha20's XOR, GCM's and CCM's explicit
#: nonce) and both tag lengths (CCM_8) and PRF hashes (SHA-384) get soaked.
SUITES = (
    "ECDHE-PSK-CHACHA20-POLY1305",
    "PSK-AES128-GCM-SHA256",
    "PSK-AES256-GCM-SHA384",
    "PSK-AES128-CCM8",
    "PSK-AES256-CCM",
)


def _silence(event: ServerEvent) -> None:
    """Client events are not looked at: the outcome is in what the clients and server saw."""


# -- what a run is made of -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run: a scenario, a seed and the network and workload it implies."""

    scenario: str
    seed: int
    released: bool
    mtu: int
    drop: float
    clients: int
    messages: int
    #: The one suite the clients offer (the server offers the ``iot`` profile: all of them).
    suite: str = "ECDHE-PSK-CHACHA20-POLY1305"

    @property
    def name(self) -> str:
        mode = "released" if self.released else "kept"
        return (
            f"{self.scenario} seed={self.seed} mtu={self.mtu} drop={self.drop:.2f} "
            f"{self.suite} {mode}"
        )


@dataclass(eq=False)
class Association:
    """One client association as the client saw it (a restart or reconnect is a new one)."""

    label: str
    #: The PSK identity the server sees (a resumed session keeps the original one).
    identity: str
    address: Address | None = None
    resume_from: SSL.Session | None = None
    client: DTLSClient | None = None
    endpoint: FakeEndpoint | None = None
    handshake_started: float = 0.0
    handshake_ended: float = -1.0
    handshake_error: str | None = None
    resumed: bool = False
    #: Messages that must be answered (a message left in flight by a crash is not).
    expected: set[int] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)
    replies: list[bytes] = field(default_factory=list)
    #: Why the client's connection ended, if it saw the end (``ConnectionClosed.reason``).
    closed_reason: str | None = None
    #: How the client left: "open", "close_notify" (aclose) or "crashed" (socket closed).
    fate: str = "open"
    #: When the client looked for the server's close_notify for the last time (or -1).
    drained_until: float = -1.0

    @property
    def protection(self) -> RecordProtection | None:
        """The client's own record layer (the driver opens records with its keys)."""
        if self.client is None:
            return None
        protector = self.client._session._protector
        return protector.protection if isinstance(protector, AeadProtector) else None

    def text(self, message: int, attempt: int) -> bytes:
        return f"{self.label} m{message:02d} a{attempt:02d}".encode()


def parse_text(text: bytes) -> tuple[str, int]:
    """``(label, message)`` of a plaintext ``b"c03.1 m07 a02"`` (or its reply ``b"re ..."``)."""
    words = text.split()
    if words and words[0] == b"re":
        words = words[1:]
    return words[0].decode(), int(words[1][1:])


@dataclass(eq=False)
class ServerConn:
    """One connection the server's handler got, and how it ended."""

    peer: Address
    identity: bytes | None
    resumed: bool
    started: float
    ended: float = math.inf
    end_reason: str | None = None
    received: list[bytes] = field(default_factory=list)
    #: When the handler got each plaintext.
    delivered_at: dict[bytes, float] = field(default_factory=dict)
    replied: list[bytes] = field(default_factory=list)
    #: Decrypted but not answered: the peer's close_notify was taken in first.
    unanswered: list[bytes] = field(default_factory=list)


@dataclass
class RunResult:
    spec: RunSpec
    problems: list[str]
    stats: StatisticsSnapshot | None
    #: What must agree between the released and the kept run of one seed.
    signature: dict[str, object]
    network: dict[str, int]
    mock_time: float
    wall_time: float
    #: Facts worth a line in the report (counts of replays, restarts, ...).
    facts: dict[str, int] = field(default_factory=dict)


class Harness:
    """The network, the server, the associations, and the problems found so far."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.rng = random.Random(f"driver|{spec.scenario}|{spec.seed}")
        self.network = FakeNetwork(
            seed=spec.seed * 7919 + spec.mtu,
            impairments=Impairments(
                drop=spec.drop,
                duplicate=0.1,
                reorder=0.1,
                max_delay=MAX_DELAY,
                reorder_hold=REORDER_HOLD,
            ),
        )
        self.config = ServerConfig(
            ciphers="iot",
            mtu=spec.mtu,
            retransmit=RETRANSMIT,
            handshake_timeout=HANDSHAKE_TIMEOUT,
            idle_timeout=IDLE_TIMEOUT,
            release_openssl=spec.released,
        )
        self.server = DTLSServer(psk=KEY, handler=self.handler, config=self.config)
        self.associations: list[Association] = []
        self.conns: list[ServerConn] = []
        self.problems: list[str] = []
        self.events: Counter[str] = Counter()
        #: Restarts on the same address whose new handshake completed (replacements).
        self.restarts = 0
        #: Whether datagram copies may legitimately go to two associations (restart windows).
        self.replacing = False
        #: When server.aclose() was called, if it was.
        self.server_closed_at = math.inf

    def problem(self, text: str) -> None:
        self.problems.append(text)

    # -- the server side ------------------------------------------------------------------------

    async def handler(self, connection: DTLSConnection) -> None:
        """Answer every plaintext with ``re <plaintext>``; note how the connection ends."""
        conn = ServerConn(
            connection.peer, connection.psk_identity, connection.resumed, trio.current_time()
        )
        self.conns.append(conn)
        try:
            while True:
                try:
                    plaintext = await connection.receive()
                except ConnectionClosed as closed:
                    conn.end_reason = closed.reason
                    return
                conn.received.append(plaintext)
                conn.delivered_at[plaintext] = trio.current_time()
                try:
                    await connection.send(b"re " + plaintext)
                except ConnectionClosed as closed:
                    conn.unanswered.append(plaintext)
                    conn.end_reason = closed.reason
                    return
                conn.replied.append(plaintext)
        finally:
            conn.ended = trio.current_time()
            if conn.end_reason is None:
                conn.end_reason = CANCELLED

    async def collect_events(self, task_status: trio.TaskStatus[None]) -> None:
        async with self.server.events(max_buffer=1 << 16) as stream:
            task_status.started()
            async for event in stream:
                if event.severity == "error":
                    self.events[event.code] += 1

    # -- the client side ------------------------------------------------------------------------

    def new_association(
        self, number: int, incarnation: int, identity: str, *, address: Address | None = None
    ) -> Association:
        """Client ``number``'s ``incarnation``-th association, on a port of its own by default.

        Ports are fixed by (number, incarnation), never by the order tasks happen to bind in:
        the network's random draws are per link, so the same seed gives the same fates.
        """
        if address is None:
            address = ("127.0.0.1", 41_000 + 10 * number + incarnation)
        association = Association(f"c{number:02d}.{incarnation}", identity, address)
        self.associations.append(association)
        return association

    async def run_clients(self, client: Callable[[int], Awaitable[None]]) -> None:
        """Run ``client(number)`` for every client of the spec at once; return when all have."""
        async with trio.open_nursery() as nursery:
            for number in range(self.spec.clients):
                nursery.start_soon(client, number)

    async def plain_client(self, number: int) -> None:
        """Client ``number``: one association that handshakes and sends every message."""
        association = self.new_association(number, 0, f"dev-{number:02d}")
        if await self.handshake(association):
            await self.converse(association, range(self.spec.messages))

    def rng_for(self, number: int) -> random.Random:
        """Client ``number``'s own random choices (a shared generator would depend on the
        order Trio runs the clients in)."""
        return random.Random(f"driver|{self.spec.scenario}|{self.spec.seed}|{number}")

    async def handshake(self, association: Association) -> bool:
        """Bind the association's endpoint (a fresh port unless given) and handshake."""
        endpoint = self.network.endpoint(association.address)
        association.address = endpoint.local_address
        association.endpoint = endpoint
        association.handshake_started = trio.current_time()
        try:
            association.client = await DTLSClient.connect_over(
                endpoint,
                SERVER,
                identity=association.identity,
                key=KEY,
                ciphers=f"{self.spec.suite}:@SECLEVEL=0",
                mtu=self.spec.mtu,
                retransmit=RETRANSMIT,
                handshake_timeout=HANDSHAKE_TIMEOUT,
                tls_session=association.resume_from,
                on_event=_silence,
            )
        except HandshakeError as error:
            association.handshake_error = str(error)
            return False
        finally:
            association.handshake_ended = trio.current_time()
        association.resumed = association.client.resumed
        if association.client.cipher != self.spec.suite:
            self.problem(f"{association.label}: negotiated {association.client.cipher}")
        return True

    def note_reply(self, association: Association, reply: bytes) -> None:
        label, message = parse_text(reply)
        association.replies.append(reply)
        if label != association.label:
            self.problem(f"{association.label} received another association's reply {reply!r}")
            return
        association.answered.add(message)

    async def converse(
        self,
        association: Association,
        messages: range,
        *,
        burst: int = 1,
        leave_last_in_flight: bool = False,
    ) -> None:
        """Get each message answered, resending it as a new attempt after REPLY_TIMEOUT.

        ``burst`` messages go out back to back before waiting (they overtake one another on
        the network, and after a resumed handshake they can overtake the client's Finished).
        With ``leave_last_in_flight`` the last message is sent once and not waited for (the
        client is about to crash).  Stops quietly if the connection ends.
        """
        client = association.client
        assert client is not None
        for start in range(messages.start, messages.stop, burst):
            chunk = range(start, min(start + burst, messages.stop))
            for message in chunk:
                if not (leave_last_in_flight and message == messages[-1]):
                    association.expected.add(message)
            while True:
                waiting = [m for m in chunk if m not in association.answered]
                if not waiting:
                    break
                for message in waiting:
                    attempt = association.attempts.get(message, 0) + 1
                    if attempt > MAX_ATTEMPTS:
                        self.problem(
                            f"{association.label}: message {message} unanswered after "
                            f"{MAX_ATTEMPTS} attempts"
                        )
                        return
                    try:
                        await client.send(association.text(message, attempt))
                    except ConnectionClosed as closed:
                        association.closed_reason = closed.reason
                        return
                    association.attempts[message] = attempt
                if leave_last_in_flight and messages[-1] in chunk:
                    return
                with trio.move_on_after(REPLY_TIMEOUT):
                    while not set(waiting) <= association.answered:
                        try:
                            reply = await client.receive()
                        except ConnectionClosed as closed:
                            association.closed_reason = closed.reason
                            return
                        self.note_reply(association, reply)

    async def drain(self, association: Association, seconds: float) -> None:
        """Read whatever reached the client for ``seconds``: late replies, a close_notify."""
        client = association.client
        if client is None or association.fate != "open":
            return
        with trio.move_on_after(seconds):
            while association.closed_reason is None:
                try:
                    reply = await client.receive()
                except ConnectionClosed as closed:
                    association.closed_reason = closed.reason
                    break
                self.note_reply(association, reply)
        association.drained_until = trio.current_time()

    async def say_goodbye(self, association: Association) -> None:
        if association.client is not None and association.fate == "open":
            association.fate = "close_notify"
            await association.client.aclose()

    async def finish_with_goodbyes(self) -> None:
        """Every client says goodbye; wait out the idle timeout for goodbyes the network lost."""
        for association in self.associations:
            await self.say_goodbye(association)
        await trio.sleep(IDLE_TIMEOUT + IDLE_MARGIN + SETTLE)

    def crash(self, association: Association) -> None:
        """The client's process dies: its socket closes, no close_notify."""
        if association.endpoint is not None and association.fate == "open":
            association.fate = "crashed"
            association.endpoint.close()  # already closed if the handshake was cut short


# -- scenarios -----------------------------------------------------------------------------------


async def _lossy(h: Harness) -> None:
    await h.run_clients(h.plain_client)
    await trio.sleep(SETTLE)
    await h.finish_with_goodbyes()


async def _resume(h: Harness) -> None:
    half = max(1, h.spec.messages // 2)

    async def client(number: int) -> None:
        rng = h.rng_for(number)
        first = h.new_association(number, 0, f"dev-{number:02d}")
        if not await h.handshake(first):
            return
        await h.converse(first, range(half))
        # Let the last answers' duplicates land (or not), then leave: close_notify, maybe lost.
        await trio.sleep(rng.uniform(0.0, SETTLE))
        await h.say_goodbye(first)
        await trio.sleep(rng.uniform(0.0, 4.0))
        second = h.new_association(number, 1, first.identity)
        second.resume_from = first.client.tls_session if first.client is not None else None
        if await h.handshake(second):
            await h.converse(second, range(half, h.spec.messages))

    await h.run_clients(client)
    await trio.sleep(SETTLE)
    await h.finish_with_goodbyes()


def _restart(resume: bool) -> Callable[[Harness], Awaitable[None]]:
    async def scenario(h: Harness) -> None:
        h.replacing = True
        half = max(1, h.spec.messages // 2)

        async def client(number: int) -> None:
            rng = h.rng_for(number)
            old = h.new_association(number, 0, f"dev-{number:02d}")
            if not await h.handshake(old):
                return
            # Talk, send one more message, and crash while it (or its answer) travels.
            await h.converse(old, range(half + 1), leave_last_in_flight=True)
            await trio.sleep(rng.uniform(0.0, 4.0))
            h.crash(old)
            identity = old.identity if resume else f"dev-{number:02d}-restarted"
            new = h.new_association(number, 1, identity, address=old.address)
            if resume and old.client is not None:
                new.resume_from = old.client.tls_session
            if await h.handshake(new):
                h.restarts += 1
                await h.converse(new, range(half + 1, h.spec.messages + 1))

        await h.run_clients(client)
        await trio.sleep(SETTLE)
        await h.finish_with_goodbyes()

    return scenario


async def _client_close(h: Harness) -> None:
    async def client(number: int) -> None:
        rng = h.rng_for(number)
        association = h.new_association(number, 0, f"dev-{number:02d}")
        if await h.handshake(association):
            await h.converse(association, range(h.spec.messages))
            # Leave at once half the time: the goodbye races the last answer's duplicates.
            await trio.sleep(rng.choice((0.0, rng.uniform(0.0, SETTLE))))
            await h.say_goodbye(association)

    await h.run_clients(client)
    # Lost goodbyes leave the server to its idle timeout.
    await trio.sleep(IDLE_TIMEOUT + IDLE_MARGIN + SETTLE)


async def _idle(h: Harness) -> None:
    await h.run_clients(h.plain_client)
    # Everyone is quiet now: the server closes them all (its close_notify may be lost).
    await trio.sleep(IDLE_TIMEOUT + IDLE_MARGIN + SETTLE)
    async with trio.open_nursery() as nursery:
        for association in h.associations:
            nursery.start_soon(h.drain, association, 1.0)
    for association in h.associations:
        await h.say_goodbye(association)


async def _server_close(h: Harness) -> None:
    talking: list[trio.CancelScope] = []
    close_at = h.rng.uniform(10.0, 40.0)

    async def client(number: int, start: float) -> None:
        await trio.sleep(start)
        association = h.new_association(number, 0, f"dev-{number:02d}")
        if not await h.handshake(association):
            return
        with trio.CancelScope() as scope:
            talking.append(scope)
            if trio.current_time() >= h.server_closed_at:
                scope.cancel()
            await h.converse(association, range(h.spec.messages))

    async with trio.open_nursery() as nursery:
        for number in range(h.spec.clients):
            nursery.start_soon(client, number, h.rng_for(number).uniform(0.0, close_at + 2.0))
        await trio.sleep_until(close_at)
        h.server_closed_at = trio.current_time()
        with trio.fail_after(1.0):  # mock time: closing must not wait for the network
            await h.server.aclose()
        # The server is gone: stop talking; handshakes still running must end by themselves.
        for scope in talking:
            scope.cancel()
    # Messages the clients could still have been waiting for are not expected any more.
    for association in h.associations:
        association.expected = {m for m in association.expected if m in association.answered}
    async with trio.open_nursery() as nursery:
        for association in h.associations:
            nursery.start_soon(h.drain, association, SETTLE)
    for association in h.associations:
        await h.say_goodbye(association)


async def _burst_resume(h: Harness) -> None:
    """Bursts of messages, and a burst right after a resumed handshake: with the client's
    Finished lost or late, many records overtake it (more than the server keeps, sometimes)."""
    burst = h.spec.messages

    async def client(number: int) -> None:
        rng = h.rng_for(number)
        first = h.new_association(number, 0, f"dev-{number:02d}")
        if not await h.handshake(first):
            return
        await h.converse(first, range(burst), burst=burst)
        await trio.sleep(rng.uniform(0.0, SETTLE))
        await h.say_goodbye(first)
        second = h.new_association(number, 1, first.identity)
        second.resume_from = first.client.tls_session if first.client is not None else None
        if await h.handshake(second):
            await h.converse(second, range(burst, 2 * burst), burst=burst)

    await h.run_clients(client)
    await trio.sleep(SETTLE)
    await h.finish_with_goodbyes()


async def _restart_anytime(h: Harness) -> None:
    """Each client restarts once or twice on its port at a random moment: mid-handshake,
    mid-conversation, or while a previous restart's handshake still runs; each restart
    resumes the last session at most once, or handshakes in full."""
    h.replacing = True

    async def client(number: int) -> None:
        rng = h.rng_for(number)
        address = ("127.0.0.1", 41_000 + 10 * number)
        restarts = rng.choice((1, 2))
        resumable: Association | None = None
        for incarnation in range(restarts + 1):
            resume = resumable is not None and rng.random() < 0.6
            if resume and resumable is not None and resumable.client is not None:
                association = h.new_association(
                    number, incarnation, resumable.identity, address=address
                )
                association.resume_from = resumable.client.tls_session
                resumable = None  # one resumption per session keeps server connections apart
            else:
                identity = f"dev-{number:02d}-{incarnation}"
                association = h.new_association(number, incarnation, identity, address=address)
            messages = range(100 * incarnation, 100 * incarnation + h.spec.messages)
            if incarnation == restarts:
                # A device whose handshake fails tries again (a stale datagram of its previous
                # life can spoil one: see _restart_race), from the same port.
                for retry in range(1, 4):
                    if await h.handshake(association):
                        await h.converse(association, messages, burst=rng.choice((1, 3)))
                        return
                    association.fate = "gave up"
                    if retry == 3:
                        return
                    identity = f"dev-{number:02d}-{incarnation}-retry{retry}"
                    association = h.new_association(
                        number, incarnation + retry, identity, address=address
                    )
                return
            with trio.move_on_after(rng.uniform(0.0, 30.0)):
                if await h.handshake(association):
                    if association.resume_from is None:
                        resumable = association
                    await h.converse(association, messages, burst=rng.choice((1, 3)))
            h.crash(association)

    await h.run_clients(client)
    await trio.sleep(SETTLE)
    await h.finish_with_goodbyes()


SCENARIOS: dict[str, Callable[[Harness], Awaitable[None]]] = {
    "lossy": _lossy,
    "resume": _resume,
    "restart": _restart(resume=False),
    "restart-resume": _restart(resume=True),
    "client-close": _client_close,
    "idle": _idle,
    "server-close": _server_close,
    "burst-resume": _burst_resume,
    "restart-anytime": _restart_anytime,
}


# -- judging a run -------------------------------------------------------------------------------


@dataclass
class _Wire:
    """What the log says about each association, from records opened with its keys."""

    #: Client→server application datagrams: (datagram, plaintext).
    data: dict[str, list[tuple[SentDatagram, bytes]]] = field(default_factory=dict)
    #: Client close_notify datagrams, and the server's ones (to the client).
    client_goodbyes: dict[str, list[SentDatagram]] = field(default_factory=dict)
    server_goodbyes: dict[str, list[SentDatagram]] = field(default_factory=dict)
    #: (direction, label, epoch, sequence) -> the distinct record bytes seen with that number.
    numbers: dict[tuple[str, str, int, int], set[bytes]] = field(default_factory=dict)
    unattributed: Counter[str] = field(default_factory=Counter)
    #: Protected records to or from an address where a handshake never finished on the client
    #: (its Finished, sent before the server stopped): no keys to open them with, no problem.
    unfinished: int = 0
    protected_records: int = 0


def _read_wire(h: Harness) -> _Wire:
    wire = _Wire()
    by_address: dict[Address, list[tuple[Association, RecordProtection]]] = {}
    unfinished: set[Address] = set()
    for association in h.associations:
        protection = association.protection
        if association.address is not None and protection is not None:
            by_address.setdefault(association.address, []).append((association, protection))
        elif association.address is not None:
            unfinished.add(association.address)
    for datagram in h.network.log:
        if datagram.source == SERVER:
            direction, peer = "server", datagram.destination
        elif datagram.destination == SERVER:
            direction, peer = "client", datagram.source
        else:
            continue
        try:
            records = parse_records(datagram.data)
        except MalformedDatagram:
            h.problem(f"malformed datagram on the wire: {datagram.data[:16].hex()}")
            continue
        for record in records:
            if record.epoch == 0:
                continue
            wire.protected_records += 1
            found = _attribute(record, direction, by_address.get(peer, []))
            if found is None and peer in unfinished:
                wire.unfinished += 1
                continue
            if found is None:
                wire.unattributed[direction] += 1
                continue
            association, plaintext = found
            key = (direction, association.label, record.epoch, record.sequence_number)
            wire.numbers.setdefault(key, set()).add(record.raw)
            if direction == "client" and record.content_type == ContentType.application_data:
                wire.data.setdefault(association.label, []).append((datagram, plaintext))
            elif record.content_type == ContentType.alert and plaintext == CLOSE_NOTIFY:
                goodbyes = wire.client_goodbyes if direction == "client" else wire.server_goodbyes
                goodbyes.setdefault(association.label, []).append(datagram)
    return wire


def _attribute(
    record: Record, direction: str, candidates: list[tuple[Association, RecordProtection]]
) -> tuple[Association, bytes] | None:
    """The association whose keys open ``record``, and the plaintext."""
    for association, protection in candidates:
        if protection.epoch != record.epoch:
            continue
        opener = protection.decrypt if direction == "server" else protection.decrypt_own
        plaintext = opener(
            record.content_type, record.version, record.sequence_number, record.fragment
        )
        if plaintext is not None:
            return association, plaintext
    return None


def _first_handshake_type(datagram: bytes) -> int | None:
    """The handshake message type at the start of an epoch-0 handshake datagram, else None."""
    if len(datagram) < 14 or datagram[0] != ContentType.handshake or datagram[3:5] != b"\0\0":
        return None
    return datagram[13]


def _restart_race(h: Harness, association: Association) -> str | None:
    """Why a restarted client's handshake could fail through no fault of either side, or None.

    A client that restarts on its port while datagrams of its previous life are still on the
    way can have them read by the wrong handshake: the server's late final flight (or a
    ServerHello answering the old ClientHello) reaches the new client, whose OpenSSL buffers
    those handshake messages and marks their record numbers as seen, so the real ones are
    dropped as replays or the transcripts differ; or the old client's late flight reaches the
    server's new handshake.  DTLS 1.2 gives neither side a way to tell.
    """
    if association.address is None:
        return None
    start = association.handshake_started
    # Until the server reads this client's cookie'd ClientHello (record number 1 or more), any
    # handshake datagram it sends to the address other than a HelloVerifyRequest belongs to an
    # earlier handshake from that address.
    cookied = [
        t
        for d in h.network.sent(source=association.address, destination=SERVER)
        if d.sent_at >= start
        and _first_handshake_type(d.data) == HandshakeType.client_hello
        and int.from_bytes(d.data[5:11], "big") > 0
        for t in d.received_at
    ]
    new_handshake_from = min(cookied, default=math.inf)
    for datagram in h.network.sent(source=SERVER, destination=association.address):
        kind = _first_handshake_type(datagram.data)
        if kind is None or kind == HandshakeType.hello_verify_request:
            continue
        if datagram.sent_at < new_handshake_from and any(t >= start for t in datagram.received_at):
            return "the server was still answering an earlier handshake from that address"
    for datagram in h.network.log:
        if datagram.sent_at >= start or not any(t >= start for t in datagram.received_at):
            continue
        if datagram.source == SERVER and datagram.destination == association.address:
            return "a datagram the server sent the previous client reached the new one"
        if datagram.source == association.address and datagram.destination == SERVER:
            return "a datagram of the previous client reached the server's new handshake"
    return None


def _server_conn_for(h: Harness, association: Association) -> ServerConn | None:
    matches = [
        conn
        for conn in h.conns
        if conn.peer == association.address
        and conn.identity == association.identity.encode()
        and conn.resumed == (association.resume_from is not None)
    ]
    if len(matches) > 1:
        h.problem(f"{association.label}: {len(matches)} server connections match it")
    return matches[0] if matches else None


def _judge(h: Harness, stats: StatisticsSnapshot) -> dict[str, int]:
    spec = h.spec
    facts: Counter[str] = Counter()
    wire = _read_wire(h)
    server_close = spec.scenario == "server-close"

    # -- handshakes ---------------------------------------------------------------------------
    completed = [a for a in h.associations if a.client is not None]
    races: list[str] = []
    for association in h.associations:
        duration = association.handshake_ended - association.handshake_started
        if association.handshake_ended < 0:
            h.problem(f"{association.label}: handshake never ended")
        elif duration > HANDSHAKE_TIMEOUT + 1e-6:
            h.problem(f"{association.label}: handshake took {duration:.1f} s")
        if association.handshake_error is not None:
            # Only the server's going away may fail a handshake, and then only by silence;
            # or a restart race, which DTLS 1.2 cannot prevent (see _restart_race).
            silence = ("no answer from the peer", "handshake not finished within")
            race = _restart_race(h, association)
            if race is not None:
                hung = any(s in association.handshake_error for s in silence)
                facts[f"restart races ({'hung until retries ran out' if hung else 'alert'})"] += 1
                races.append(f"{association.label}: {association.handshake_error} ({race})")
            elif server_close and any(s in association.handshake_error for s in silence):
                facts["handshakes cut short by server.aclose()"] += 1
            else:
                h.problem(f"{association.label}: handshake failed: {association.handshake_error}")
        if association.resume_from is not None and association.client is not None:
            facts["resumed handshakes"] += 1
            if not association.resumed:
                h.problem(f"{association.label}: asked to resume, got a full handshake")
        if association.client is not None and association.protection is None:
            h.problem(f"{association.label}: the client kept OpenSSL (cannot attribute records)")
    resumed_expected = sum(1 for a in completed if a.resume_from is not None)
    reasons = Counter(conn.end_reason for conn in h.conns)
    if spec.scenario == "restart-anytime":
        # Which handshakes the server saw through depends on where the crashes fell; what it
        # counted must still agree with what its handler got.
        want = {
            "handshakes_completed": len(h.conns),
            "handshakes_resumed": sum(1 for conn in h.conns if conn.resumed),
            "openssl_released": len(h.conns) if spec.released else 0,
            "replacements": reasons[CANCELLED],
        }
        got = {name: getattr(stats, name) for name in want}
        if got != want:
            h.problem(f"handshake counters {got}, expected {want}")
        if stats.handshakes_failed and not races:
            h.problem(f"handshakes_failed {stats.handshakes_failed}")
        for association in h.associations:
            if association.fate == "open" and association.client is None:
                h.problem(f"{association.label}: the last restart never completed its handshake")
    elif not server_close:
        want = {
            "handshakes_started": len(h.associations),
            "handshakes_completed": len(completed),
            "handshakes_resumed": resumed_expected,
            "openssl_released": len(completed) if spec.released else 0,
            "replacements": h.restarts,
        }
        got = {name: getattr(stats, name) for name in want}
        if got != want:
            h.problem(f"handshake counters {got}, expected {want}")
        if stats.handshakes_failed:
            h.problem(f"handshakes_failed {stats.handshakes_failed}")
    else:
        # Handshakes the server cancelled when it stopped are neither completed nor failed.
        if stats.handshakes_failed:
            h.problem(f"handshakes_failed {stats.handshakes_failed} (server-close)")
        if stats.handshakes_completed > stats.handshakes_started:
            h.problem(f"completed {stats.handshakes_completed} > started")
    if stats.handshakes_refused:
        h.problem(f"handshakes_refused {stats.handshakes_refused}")
    if len(h.conns) != stats.handshakes_completed and not server_close:
        h.problem(f"{len(h.conns)} handler calls for {stats.handshakes_completed} handshakes")

    # -- exactly once, on the server ----------------------------------------------------------
    received = Counter(p for conn in h.conns for p in conn.received)
    twice = [p for p, n in received.items() if n > 1]
    if twice:
        h.problem(f"decrypted more than once on the server: {sorted(twice)[:5]}")
    replied = Counter(p for conn in h.conns for p in conn.replied)
    for handled in h.conns:
        if len(handled.replied) + len(handled.unanswered) != len(handled.received):
            h.problem(
                f"{handled.peer}: received {len(handled.received)}, replied {len(handled.replied)}"
            )
        for plaintext in handled.received:
            label, _ = parse_text(plaintext)
            owner = next((a for a in h.associations if a.label == label), None)
            if owner is None or owner.address != handled.peer:
                h.problem(f"{handled.peer}: got {plaintext!r} of another peer")
            elif _server_conn_for(h, owner) is not handled:
                h.problem(f"{plaintext!r} delivered to the wrong association of {handled.peer}")
    if stats.messages_received != sum(received.values()):
        h.problem(f"messages_received {stats.messages_received} != {sum(received.values())}")
    if stats.messages_sent != sum(replied.values()):
        h.problem(f"messages_sent {stats.messages_sent} != replies {sum(replied.values())}")
    sent_texts = {
        a.text(message, attempt)
        for a in h.associations
        for message, attempts in a.attempts.items()
        for attempt in range(1, attempts + 1)
    }
    strays = set(received) - sent_texts
    if strays:
        h.problem(f"the server decrypted texts no client sent: {sorted(strays)[:3]}")

    # -- exactly once, on the clients ----------------------------------------------------------
    for association in h.associations:
        missing = association.expected - association.answered
        ended_by_server = association.closed_reason is not None
        if missing and not ended_by_server and association.fate != "crashed":
            h.problem(f"{association.label}: messages {sorted(missing)} never answered")
        repeated = [r for r, n in Counter(association.replies).items() if n > 1]
        if repeated:
            h.problem(f"{association.label}: replies received twice: {repeated[:3]}")
        for reply in association.replies:
            if reply[3:] not in replied:
                h.problem(f"{association.label}: reply {reply!r} the server never sent")

    # -- the wire as oracle: what was read while alive must be delivered -----------------------
    expected_replays = 0
    ambiguous = 0
    early_copies = 0
    late: list[tuple[bytes, float, float]] = []
    for association in h.associations:
        conn = _server_conn_for(h, association)
        end = conn.ended if conn is not None else -math.inf
        started = conn.started if conn is not None else math.inf
        # The server keeps at most HANDSHAKE_KEPT_BUDGET bytes of the peer's protected records
        # while it waits for the Finished: beyond that much distinct data read before then,
        # losing some is the documented bound, not a defect.
        early = {
            (datagram.index, len(datagram.data))
            for datagram, plaintext in wire.data.get(association.label, [])
            if any(t < started for t in datagram.received_at)
        }
        over_bound = sum(size for _, size in early) > HANDSHAKE_KEPT_BUDGET
        for datagram, plaintext in wire.data.get(association.label, []):
            reads = datagram.received_at
            delivered = plaintext in received
            if not reads:
                if delivered:
                    h.problem(f"{plaintext!r} delivered, yet no copy was read")
                continue
            first = reads[0]
            if first < end and not delivered and over_bound and first < started:
                facts["early data lost beyond the byte budget"] += 1
            elif first < end and not delivered:
                h.problem(
                    f"{association.label}: {plaintext!r} read at {first:.3f} while its "
                    f"association lived (until {end:.3f}), never delivered"
                )
            elif first > end and delivered:
                h.problem(f"{plaintext!r} delivered after its association ended")
            if delivered and conn is not None:
                # Delivered when a copy was read (or, for a copy read during the handshake,
                # when the handshake completed), never later: no plaintext may lag behind.
                when = conn.delivered_at.get(plaintext)
                if when is None:
                    h.problem(f"{plaintext!r} delivered to another association than its own")
                elif not any(abs(when - max(t, conn.started)) < 1e-9 for t in reads):
                    late.append((plaintext, min(reads), when))
                # Copies read before the server finished the handshake (data that overtook
                # the client's Finished, twice) are dropped and counted as replays during the
                # handshake, in both record layers (one copy is kept, de-duplicated on
                # content).  Every other copy read while the connection lived is a replay
                # too (the copy that delivered it is the one read at the delivery time, if
                # any was).
                early_reads = [t for t in reads if t < conn.started]
                alive = [t for t in reads if conn.started <= t < end]
                delivering = 1 if when is not None and when in alive else 0
                early_copies += max(0, len(early_reads) - (1 - delivering))
                expected_replays += len(alive) - delivering
                ambiguous += sum(1 for t in reads[1:] if t == end)
    if late:
        text, first, when = late[0]
        h.problem(
            f"{len(late)} plaintexts reached the handler after the datagram that carried them "
            f"was read: {text!r} read at {first:.3f}, delivered at {when:.3f}"
        )
    replays = stats.drops.get("replayed record", 0)
    failures = stats.drops.get("record failed authentication", 0)
    facts["copies of early data read during the handshake"] = early_copies
    expected_replays += early_copies
    facts["replays on the wire"] = expected_replays
    facts["replayed record"] = replays
    facts["record failed authentication"] = failures
    if h.replacing:
        # During a restart window both associations get each protected datagram; the one
        # whose keys do not fit counts a replay or an authentication failure.
        if replays + failures < expected_replays:
            h.problem(f"replays {replays} + failures {failures} < {expected_replays} on the wire")
    else:
        if not expected_replays <= replays <= expected_replays + ambiguous:
            h.problem(f"drops['replayed record'] {replays}, wire says {expected_replays}")
        if failures:
            h.problem(f"drops['record failed authentication'] {failures}, expected 0")

    # -- no nonce reuse --------------------------------------------------------------------------
    for (direction, label, epoch, sequence), raws in wire.numbers.items():
        if len(raws) > 1:
            h.problem(
                f"NONCE REUSE: {direction} records of {label} epoch {epoch} sequence {sequence}: "
                f"{len(raws)} different records"
            )
    if wire.unattributed:
        h.problem(f"protected records no association's keys open: {dict(wire.unattributed)}")
    facts["records of unfinished handshakes"] = wire.unfinished
    facts["protected records"] = wire.protected_records
    # Finished records OpenSSL re-made with new numbers (a retransmission it sent itself, in
    # answer to the peer's retransmitted flight): what our next sequence number must follow.
    finished_numbers = Counter(
        (direction, label, epoch)
        for (direction, label, epoch, sequence), raws in wire.numbers.items()
        if any(raw[0] == ContentType.handshake for raw in raws)
    )
    facts["Finished resent with a new number"] = sum(n - 1 for n in finished_numbers.values())

    # -- closing ---------------------------------------------------------------------------------
    facts.update({f"ended: {reason}": n for reason, n in reasons.items()})
    if stats.remote_closed != reasons[PEER_CLOSED]:
        h.problem(f"remote_closed {stats.remote_closed} != {reasons[PEER_CLOSED]} connections")
    if stats.idle_closed != reasons[IDLE]:
        h.problem(f"idle_closed {stats.idle_closed} != {reasons[IDLE]} connections")
    for association in h.associations:
        conn = _server_conn_for(h, association)
        if conn is None:
            continue
        goodbye_reads = sorted(
            t for d in wire.client_goodbyes.get(association.label, []) for t in d.received_at
        )
        first_goodbye = goodbye_reads[0] if goodbye_reads else math.inf
        if conn.end_reason == PEER_CLOSED and conn.ended != first_goodbye:
            h.problem(
                f"{association.label}: ended by close_notify at {conn.ended:.3f}, "
                f"its first copy was read at {first_goodbye:.3f}"
            )
        if conn.end_reason != PEER_CLOSED and first_goodbye < conn.ended:
            h.problem(
                f"{association.label}: close_notify read at {first_goodbye:.3f} but the "
                f"connection went on until {conn.ended:.3f} ({conn.end_reason})"
            )
        if conn.end_reason == IDLE and not server_close:
            # Idle only when the client was quiet that long.
            quiet_since = max(
                (t for d, _ in wire.data.get(association.label, []) for t in d.received_at[:1]),
                default=conn.started,
            )
            if conn.ended - quiet_since < IDLE_TIMEOUT - 1e-6:
                h.problem(f"{association.label}: idle-closed after {conn.ended - quiet_since:.1f}")
        if association.client is None:
            continue  # no keys to recognise the server's goodbye with
        goodbyes_sent = len(wire.server_goodbyes.get(association.label, []))
        replaced = association.fate == "crashed" and conn.end_reason == CANCELLED
        if replaced and not server_close:
            if goodbyes_sent:
                h.problem(f"{association.label}: replaced, yet the server sent close_notify")
        elif goodbyes_sent != 1:
            h.problem(
                f"{association.label}: the server sent {goodbyes_sent} close_notify "
                f"(connection ended: {conn.end_reason})"
            )
        # A client that was still reading must have seen the server's goodbye iff it came.
        if association.drained_until >= 0 and association.fate != "crashed":
            arrived = any(
                t <= association.drained_until
                for d in wire.server_goodbyes.get(association.label, [])
                for t in d.arrivals
            )
            saw = association.closed_reason == SERVER_CLOSED
            if arrived != saw:
                h.problem(
                    f"{association.label}: server close_notify arrived={arrived}, "
                    f"client saw it={saw} ({association.closed_reason})"
                )
    if stats.peers or stats.handshaking:
        h.problem(
            f"at the end the server holds {stats.peers} peers, {stats.handshaking} handshaking"
        )
    if stats.queue_overflows or h.network.overflowed:
        h.problem(f"queue overflows: server {stats.queue_overflows}, net {h.network.overflowed}")
    errors = {code: n for code, n in h.events.items() if code not in ("handshake_failed",)}
    if errors and not server_close:
        h.problem(f"error events: {errors}")
    facts["associations"] = len(h.associations)
    facts["restarts"] = h.restarts
    return dict(facts)


def _signature(h: Harness, stats: StatisticsSnapshot) -> dict[str, object]:
    """Everything that must be the same whichever record layer the server used."""
    counters = stats.as_dict()
    for name in ("openssl_released", "events_dropped"):
        counters.pop(name)
    return {
        "stats": counters,
        "associations": sorted(
            (
                a.label,
                a.handshake_error is None,
                a.resumed,
                sorted(a.answered),
                a.closed_reason,
                a.handshake_ended,
            )
            for a in h.associations
        ),
        "conns": sorted(
            (str(c.peer), c.end_reason or "", c.ended, len(c.received)) for c in h.conns
        ),
        "network": h.network.summary(),
    }


async def _run(h: Harness) -> StatisticsSnapshot:
    scenario = SCENARIOS[h.spec.scenario]
    with trio.fail_after(RUN_LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(h.collect_events)
            await nursery.start(h.server.serve_on, h.network.endpoint(SERVER))
            await scenario(h)
            stats = h.server.statistics()
            nursery.cancel_scope.cancel()
    return stats


def run_one(spec: RunSpec) -> RunResult:
    """Run one scenario with one seed in its own Trio run; never raises."""
    harness = Harness(spec)
    clock = trio.testing.MockClock(autojump_threshold=0)
    started = time.perf_counter()
    stats: StatisticsSnapshot | None = None
    facts: dict[str, int] = {}
    signature: dict[str, object] = {}
    mock_time = 0.0

    async def main() -> StatisticsSnapshot:
        nonlocal mock_time
        try:
            return await _run(harness)
        finally:
            mock_time = trio.current_time()

    try:
        stats = trio.run(main, clock=clock)
    except BaseException as error:  # a soak reports every failure, then goes on
        if isinstance(error, KeyboardInterrupt):
            raise
        lines = traceback.format_exception(error)
        harness.problem(f"EXCEPTION {type(error).__name__}: {error}\n" + "".join(lines[-12:]))
    if stats is not None:
        try:
            facts = _judge(harness, stats)
            signature = _signature(harness, stats)
        except Exception as error:  # noqa: BLE001 - a bug in the judge is reported too
            lines = traceback.format_exception(error)
            harness.problem(f"JUDGE EXCEPTION {error!r}\n" + "".join(lines[-8:]))
    return RunResult(
        spec,
        harness.problems,
        stats,
        signature,
        harness.network.summary(),
        mock_time,
        time.perf_counter() - started,
        facts,
    )


def compare_modes(released: RunResult, kept: RunResult) -> list[str]:
    """The differences in outcome between our record layer and OpenSSL's for one seed."""
    differences: list[str] = []
    if bool(released.problems) != bool(kept.problems):
        differences.append(
            f"problems only with {'released' if released.problems else 'kept'} OpenSSL"
        )
    for key in sorted(set(released.signature) | set(kept.signature)):
        ours, theirs = released.signature.get(key), kept.signature.get(key)
        if ours == theirs:
            continue
        if isinstance(ours, dict) and isinstance(theirs, dict):
            for name in sorted(set(ours) | set(theirs)):
                if ours.get(name) != theirs.get(name):
                    differences.append(
                        f"{key}.{name}: released {ours.get(name)!r}, kept {theirs.get(name)!r}"
                    )
        elif isinstance(ours, list) and isinstance(theirs, list):
            diffs = [(a, b) for a, b in zip(ours, theirs, strict=False) if a != b]
            differences.append(
                f"{key}: {len(diffs)} differ, first: released {diffs[0][0] if diffs else ''!r}"
                f" kept {diffs[0][1] if diffs else ''!r}"
                + ("" if len(ours) == len(theirs) else f" (lengths {len(ours)}/{len(theirs)})")
            )
        else:
            differences.append(f"{key}: released {ours!r}, kept {theirs!r}")
    return differences


def spec_for(
    scenario: str, seed: int, released: bool, mtu: int | None = None, *, scale: int = 1
) -> RunSpec:
    """The run a seed stands for: the loss rate cycles through 10/20/30 %, the MTU alternates,
    the suite goes round :data:`SUITES`; ``scale`` multiplies the number of clients."""
    drop = (0.1, 0.2, 0.3)[seed % 3]
    chosen_mtu = mtu if mtu is not None else (576, 1500)[(seed // 3) % 2]
    clients, messages = {
        "lossy": (12, 8),
        "resume": (10, 8),
        "restart": (10, 8),
        "restart-resume": (10, 8),
        "client-close": (12, 6),
        "idle": (12, 4),
        "server-close": (12, 20),
        "burst-resume": (10, 20),
        "restart-anytime": (10, 8),
    }[scenario]
    suite = SUITES[seed % len(SUITES)]
    return RunSpec(scenario, seed, released, chosen_mtu, drop, clients * scale, messages, suite)


# -- the command line ----------------------------------------------------------------------------


#: Set (to the factor) in the environment of a soak restarted under libfaketime.
WARP_VARIABLE = "SOAK_RECORDS_WARP"
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def _restart_with_warp(factor: float) -> None:
    """Run this soak again with OpenSSL's clock ``factor`` times fast (WARP in the module doc).

    Under Trio's mock clock OpenSSL's own retransmission timer (real time) is never due, so
    every retransmission is our byte-for-byte resend and OpenSSL never re-makes a Finished
    with new record numbers -- the very case where our first sequence number must follow
    OpenSSL's highest.  libfaketime speeds up the wall clock OpenSSL reads (``gettimeofday``)
    and leaves the monotonic one alone.  The process replaces itself (``os.execve``): nothing
    is left running.  ``apt-get install libfaketime`` provides the library.
    """
    if not os.path.exists(LIBFAKETIME):
        sys.exit(f"--openssl-time-warp needs {LIBFAKETIME} (apt-get install libfaketime)")
    environment = dict(os.environ)
    environment.update(
        {
            "LD_PRELOAD": LIBFAKETIME,
            "FAKETIME": f"+0 x{factor:g}",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            WARP_VARIABLE: f"{factor:g}",
        }
    )
    os.execve(sys.executable, [sys.executable, *sys.argv], environment)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=30, help="seeds per scenario (default 30)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="(repeatable) default: all"
    )
    parser.add_argument(
        "--time-limit", type=float, default=900.0, help="real seconds; later runs are skipped"
    )
    parser.add_argument("--verbose", action="store_true", help="a line per run")
    parser.add_argument(
        "--scale", type=int, default=2, help="clients per run, times the tests' (default 2)"
    )
    parser.add_argument(
        "--openssl-time-warp",
        type=float,
        metavar="FACTOR",
        help="run OpenSSL's clock FACTOR times fast (libfaketime): see WARP below",
    )
    args = parser.parse_args(argv)
    if args.openssl_time_warp and WARP_VARIABLE not in os.environ:
        _restart_with_warp(args.openssl_time_warp)  # does not return
    warped = WARP_VARIABLE in os.environ
    logging.getLogger("trio_dtls_server").setLevel(logging.CRITICAL + 1)

    scenarios = args.scenario or list(SCENARIOS)
    started = time.perf_counter()
    runs = skipped = 0
    failures: list[tuple[RunSpec, list[str]]] = []
    differences: list[tuple[str, list[str]]] = []
    totals: dict[str, Counter[str]] = {name: Counter() for name in scenarios}
    per_scenario_time: dict[str, float] = dict.fromkeys(scenarios, 0.0)
    for scenario in scenarios:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            mtus: list[int | None] = [576, 1500] if scenario == "lossy" else [None]
            for mtu in mtus:
                if time.perf_counter() - started > args.time_limit:
                    skipped += 1
                    continue
                results = [
                    run_one(spec_for(scenario, seed, mode == "released", mtu, scale=args.scale))
                    for mode in MODES
                ]
                for result in results:
                    runs += 1
                    per_scenario_time[scenario] += result.wall_time
                    totals[scenario].update(result.facts)
                    if result.problems:
                        failures.append((result.spec, result.problems))
                    if args.verbose:
                        status = "ok" if not result.problems else f"{len(result.problems)} PROBLEMS"
                        print(
                            f"{result.spec.name}: {status}, {result.wall_time:.2f} s real, "
                            f"{result.mock_time:.0f} s mock, net {result.network}",
                            flush=True,
                        )
                # Under the warp OpenSSL's timers fire by real time: runs are not repeatable,
                # so the two modes cannot be compared run for run.
                diff = [] if warped else compare_modes(*results)
                if diff:
                    differences.append((results[0].spec.name.rsplit(" ", 1)[0], diff))
    elapsed = time.perf_counter() - started

    print(f"\n{runs} runs in {elapsed:.1f} s real ({skipped} skipped by --time-limit)")
    for scenario in scenarios:
        print(f"  {scenario}: {per_scenario_time[scenario]:.1f} s; {dict(totals[scenario])}")
    for spec, problems in failures:
        print(f"\nFAIL {spec.name}")
        for text in problems[:12]:
            print(f"  - {text}")
        if len(problems) > 12:
            print(f"  ... {len(problems) - 12} more")
    for name, diff in differences:
        print(f"\nRELEASED vs KEPT differ: {name}")
        for text in diff[:8]:
            print(f"  - {text}")
    print(
        f"\n{len(failures)} failing runs, {len(differences)} seeds where released and kept differ"
    )
    return 1 if failures or differences else 0


if __name__ == "__main__":
    sys.exit(main())
