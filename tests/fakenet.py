"""A seeded, in-memory, lossy datagram network for Trio tests.

Why it exists
-------------
The server and the client talk to the world only through the ``DatagramTransport`` protocol of
:mod:`trio_dtls_server._transport`.  :class:`FakeNetwork` hands out :class:`FakeEndpoint` objects
that implement that protocol without any socket, so a test can

* lose, duplicate, reorder and delay datagrams on purpose (:class:`Impairments`), with every
  random choice drawn from a seeded :class:`random.Random`, so a failing run can be replayed;
* run entirely on Trio's clock: delays are deadlines in ``trio.current_time()``, never real
  sleeps, so under pytest-trio's ``autojump_clock`` fixture a test that spans minutes of
  network time finishes in milliseconds, and timer tests can assert exact times;
* look at the wire afterwards: every datagram sent is kept in :attr:`FakeNetwork.log` as a
  :class:`SentDatagram` (when, from where, to where, the bytes, and what the network did to it).

Using it
--------
::

    network = FakeNetwork(seed=7, impairments=Impairments(drop=0.1, max_delay=3.0))
    server_endpoint = network.endpoint(("127.0.0.1", 4433))
    server = DTLSServer(psk={"alice": key})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_on, server_endpoint)
        client = await DTLSClient.connect_over(
            network.endpoint(), ("127.0.0.1", 4433), identity="alice", key=key
        )
        ...
    # the wire, as the server sent it:
    times = [d.sent_at for d in network.sent(source=("127.0.0.1", 4433))]

Impairments apply per link (one direction between two addresses) and can be changed while a
test runs: ``network.set_impairments(Impairments(drop=1.0), source=server_address)`` makes the
server's datagrams vanish from that moment on (a "silent server"), for instance.  To lose
particular datagrams instead (say, the server's final handshake flight, once), register a
predicate with :meth:`FakeNetwork.lose_if`.

How a datagram travels
----------------------
:meth:`FakeEndpoint.send_nowait` decides the datagram's fate at once, from its link's random
generator, and always draws the same five numbers per datagram (drop, duplicate, reorder and
two delays), so changing one probability never shifts the other draws.  Each link (source,
destination) has its own generator seeded from ``(seed, source, destination)``: the fate of the
n-th datagram on a link depends only on n, not on how Trio interleaved other tasks' sends.

* **drop**: with probability ``drop`` the datagram is lost.
* **delay**: a copy that is not lost becomes readable at ``sent_at + U(0, max_delay)``.
* **duplicate**: with probability ``duplicate`` a second copy travels with its own delay.
* **reorder**: with probability ``reorder`` the (first) copy is held back until the next
  datagram on the same link would arrive, and then arrives just after it, so that datagram
  overtakes it; if nothing follows within ``reorder_hold`` seconds of its normal arrival, it
  arrives then.

Nothing is ever delivered by a background task: a copy waits in its destination's queue, a
heap ordered by arrival time, and :meth:`FakeEndpoint.receive_nowait` hands out the copies
whose time has come.  :meth:`FakeEndpoint.wait_readable` sleeps until the earliest arrival or
until a new copy is queued, which is what lets ``autojump_clock`` jump straight there.

Bounds
------
Everything is bounded: each endpoint's queue holds at most ``queue_capacity`` copies (copies in
flight towards it count too); a copy that finds it full is lost and counted
(:attr:`SentDatagram.overflowed`, :attr:`FakeNetwork.overflowed`), like a full socket buffer.
At most one held (reordered) copy exists per link.  The log keeps the first ``max_log``
datagrams and counts the rest in :attr:`FakeNetwork.unlogged`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from trio_dtls_server._transport import ReplySource

__all__ = [
    "PERFECT",
    "Address",
    "FakeEndpoint",
    "FakeNetwork",
    "Impairments",
    "SentDatagram",
]

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Impairments:
    """What a link does to the datagrams that cross it.  Probabilities are in [0, 1].

    The defaults describe a perfect network: nothing lost, duplicated, reordered or delayed.
    """

    #: Probability that a datagram is lost.
    drop: float = 0.0
    #: Probability that a datagram that was not lost arrives twice.
    duplicate: float = 0.0
    #: Probability that a datagram is held back so that the next one on its link overtakes it.
    reorder: float = 0.0
    #: Each copy's delay is drawn uniformly from [0, max_delay) seconds (Trio time).
    max_delay: float = 0.0
    #: How long past its normal arrival a reordered copy waits for a datagram to overtake it.
    reorder_hold: float = 1.0

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {value!r}")
        if self.max_delay < 0 or self.reorder_hold < 0:
            raise ValueError("max_delay and reorder_hold must be >= 0")


#: A link that delivers every datagram at once, in order.
PERFECT = Impairments()


@dataclass(eq=False, slots=True)
class SentDatagram:
    """One datagram as it was sent, and what the network did with it."""

    #: Position in :attr:`FakeNetwork.log` (0 for the first datagram sent on the network).
    index: int
    #: ``trio.current_time()`` when :meth:`FakeEndpoint.send_nowait` was called.
    sent_at: float
    source: Address
    destination: Address
    data: bytes
    #: Lost by the link's drop draw (no copy travels).
    dropped: bool = False
    #: No endpoint was bound at the destination when it was sent (nothing travels).
    unroutable: bool = False
    #: A second copy was sent.
    duplicated: bool = False
    #: The first copy was held back for reordering.
    reordered: bool = False
    #: When each travelling copy was due to arrive (a reordered copy's entry is updated when
    #: the datagram that overtakes it is sent).
    arrivals: list[float] = field(default_factory=list)
    #: When the destination read each copy (``receive_nowait``); shorter than ``arrivals`` if
    #: a copy was never read (the endpoint closed first, or the test ended).
    received_at: list[float] = field(default_factory=list)
    #: Copies lost because the destination's queue was full.
    overflowed: int = 0

    @property
    def lost(self) -> bool:
        """True if no copy could reach the destination."""
        return self.dropped or self.unroutable or (not self.arrivals and self.overflowed > 0)


@dataclass(eq=False, slots=True)
class _Copy:
    """One copy on its way to an endpoint; ``cancelled`` when rescheduled (lazy heap delete)."""

    record: SentDatagram
    #: Index of this copy's entry in ``record.arrivals``.
    slot: int
    arrives_at: float
    cancelled: bool = False


# Heap entries: (arrival time, global order, copy).  The order breaks ties by sending order,
# and lets a released reordered copy be placed just after the datagram that overtook it.
_Entry = tuple[float, int, _Copy]


class FakeEndpoint:
    """A bound address on a :class:`FakeNetwork`; implements ``DatagramTransport``.

    Beyond the protocol it offers :meth:`block_sends` / :meth:`unblock_sends` (to make
    ``send_nowait`` report a full buffer, exercising the callers' ``wait_writable`` path) and
    a few counters.
    """

    def __init__(self, network: FakeNetwork, address: Address, capacity: int) -> None:
        self._network = network
        self._address = address
        self._capacity = capacity
        self._queue: list[_Entry] = []
        #: Copies queued and not cancelled (what counts against ``capacity``).
        self._live = 0
        self._wakeup = trio.Event()
        self._closed = False
        self._writable: trio.Event | None = None
        #: Datagrams handed out by :meth:`receive_nowait`.
        self.datagrams_received = 0
        #: Datagrams returned truncated because they were longer than ``max_size``.
        self.truncated = 0
        #: Sends attempted after :meth:`close` (counted and ignored, as UDPTransport does).
        self.send_errors = 0

    # -- the DatagramTransport protocol -----------------------------------------------------

    @property
    def local_address(self) -> Address:
        return self._address

    @property
    def is_ipv6(self) -> bool:
        return ":" in self._address[0]

    @property
    def closed(self) -> bool:
        return self._closed

    def receive_nowait(self, max_size: int) -> tuple[bytes, Address] | None:
        """The earliest copy whose arrival time has come, truncated to ``max_size``, or None."""
        if self._closed:
            raise trio.ClosedResourceError("this endpoint is closed")
        now = trio.current_time()
        self._discard_cancelled_head()
        if not self._queue or self._queue[0][0] > now:
            return None
        _, _, copy = heapq.heappop(self._queue)
        self._live -= 1
        record = copy.record
        record.received_at.append(now)
        self.datagrams_received += 1
        data = record.data
        if len(data) > max_size:
            self.truncated += 1
            data = data[:max_size]
        return data, record.source

    async def wait_readable(self) -> None:
        """Return once a copy is readable; always a checkpoint, like the real transport.

        Raises ``trio.ClosedResourceError`` if the endpoint is (or gets) closed.
        """
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this endpoint is closed")
            self._discard_cancelled_head()
            if self._queue and self._queue[0][0] <= trio.current_time():
                await trio.lowlevel.checkpoint()
                return
            wakeup = self._wakeup
            next_arrival = self._queue[0][0] if self._queue else math.inf
            # Wake for whichever comes first: the earliest queued arrival, or a new copy
            # (which may arrive earlier) or close().  Then look again.
            with trio.move_on_at(next_arrival):
                await wakeup.wait()

    def reply_source(self) -> ReplySource | None:
        """One address per endpoint: replies always come from it, nothing to choose."""
        return None

    def send_nowait(
        self, datagram: bytes, address: Address, source: ReplySource | None = None
    ) -> bool:
        """Hand ``datagram`` to the network; False only while :meth:`block_sends` is in force."""
        if self._closed:
            self.send_errors += 1
            return True
        if self._writable is not None:
            return False
        self._network._transmit(self._address, (address[0], address[1]), bytes(datagram))
        return True

    async def wait_writable(self) -> None:
        """Return when sending may succeed (at once unless sends are blocked); a checkpoint."""
        writable = self._writable
        if writable is None:
            await trio.lowlevel.checkpoint()
        else:
            await writable.wait()

    def close(self) -> None:
        """Unbind the address, drop queued copies and wake any waiter (which then raises)."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._live = 0
        self._network._unbind(self)
        self._wakeup.set()
        if self._writable is not None:
            self._writable.set()
            self._writable = None

    # -- test controls ----------------------------------------------------------------------

    def block_sends(self) -> None:
        """Make :meth:`send_nowait` return False (a full buffer) until :meth:`unblock_sends`."""
        if self._writable is None:
            self._writable = trio.Event()

    def unblock_sends(self) -> None:
        if self._writable is not None:
            self._writable.set()
            self._writable = None

    @property
    def queued(self) -> int:
        """Copies on their way to, or waiting at, this endpoint."""
        return self._live

    # -- used by the network ----------------------------------------------------------------

    def _enqueue(self, copy: _Copy, order: int) -> bool:
        """Queue ``copy``; False if the queue is full (the copy is lost)."""
        if self._live >= self._capacity:
            return False
        self._live += 1
        heapq.heappush(self._queue, (copy.arrives_at, order, copy))
        self._wake()
        return True

    def _reschedule(self, copy: _Copy, arrives_at: float, order: int) -> _Copy:
        """Move a queued copy to a new arrival time (the old heap entry is left, cancelled)."""
        copy.cancelled = True
        moved = _Copy(copy.record, copy.slot, arrives_at)
        copy.record.arrivals[copy.slot] = arrives_at
        heapq.heappush(self._queue, (arrives_at, order, moved))
        self._wake()
        return moved

    def _discard_cancelled_head(self) -> None:
        while self._queue and self._queue[0][2].cancelled:
            heapq.heappop(self._queue)

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()


@dataclass(slots=True)
class _Held:
    """A reordered copy waiting on its link for a datagram to overtake it."""

    endpoint: FakeEndpoint
    copy: _Copy


class FakeNetwork:
    """Endpoints plus the links between them; see the module docstring.

    ``impairments`` is the default for every link; :meth:`set_impairments` overrides it for
    datagrams from one source, to one destination, or on one link.  ``queue_capacity`` bounds
    each endpoint's queue; ``max_log`` bounds :attr:`log`.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        impairments: Impairments = PERFECT,
        queue_capacity: int = 1024,
        max_log: int = 500_000,
    ) -> None:
        if queue_capacity <= 0 or max_log < 0:
            raise ValueError("queue_capacity must be positive and max_log >= 0")
        self.seed = seed
        self.queue_capacity = queue_capacity
        self.max_log = max_log
        self._default = impairments
        self._rules: dict[tuple[Address | None, Address | None], Impairments] = {}
        self._endpoints: dict[Address, FakeEndpoint] = {}
        self._generators: dict[tuple[Address, Address], random.Random] = {}
        self._held: dict[tuple[Address, Address], _Held] = {}
        self._loss_rules: list[Callable[[SentDatagram], bool]] = []
        self._order = itertools.count()
        self._next_port = 40_000
        self._sent = 0
        #: Every datagram sent, in sending order (the first ``max_log`` of them).
        self.log: list[SentDatagram] = []
        #: Datagrams sent after the log was full.
        self.unlogged = 0
        #: Totals over all links.
        self.dropped = 0
        self.duplicated = 0
        self.reordered = 0
        self.overflowed = 0
        self.unroutable = 0

    # -- endpoints ----------------------------------------------------------------------------

    def endpoint(self, address: Address | None = None, *, host: str = "127.0.0.1") -> FakeEndpoint:
        """Bind ``address``, or a fresh port on ``host`` (ports count up from 40000).

        Raises ``OSError`` if the address is taken, like a real bind.
        """
        if address is None:
            while (host, self._next_port) in self._endpoints:
                self._next_port += 1
            address = (host, self._next_port)
            self._next_port += 1
        if address in self._endpoints:
            raise OSError(f"address {address[0]}:{address[1]} is already in use")
        endpoint = FakeEndpoint(self, address, self.queue_capacity)
        self._endpoints[address] = endpoint
        return endpoint

    def _unbind(self, endpoint: FakeEndpoint) -> None:
        if self._endpoints.get(endpoint.local_address) is endpoint:
            del self._endpoints[endpoint.local_address]
        for link, held in list(self._held.items()):
            if held.endpoint is endpoint:
                del self._held[link]

    # -- impairments --------------------------------------------------------------------------

    def set_impairments(
        self,
        impairments: Impairments,
        *,
        source: Address | None = None,
        destination: Address | None = None,
    ) -> None:
        """Override the impairments for datagrams from ``source`` and/or to ``destination``.

        With neither given this replaces the default.  The most specific rule wins: the link
        (both), then the source, then the destination, then the default.  It applies to
        datagrams sent from now on; copies already travelling keep their fate.
        """
        if source is None and destination is None:
            self._default = impairments
        else:
            self._rules[(source, destination)] = impairments

    def lose_if(self, predicate: Callable[[SentDatagram], bool]) -> Callable[[], None]:
        """Lose every datagram for which ``predicate(datagram)`` is true, from now on.

        The predicate sees the :class:`SentDatagram` (source, destination, bytes, time) before
        its fate is decided; it may keep state (to lose only the first match, say).  A lost
        datagram is logged with ``dropped=True``.  Returns a function that removes the rule.
        """
        self._loss_rules.append(predicate)

        def remove() -> None:
            if predicate in self._loss_rules:
                self._loss_rules.remove(predicate)

        return remove

    def inject(self, source: Address, destination: Address, data: bytes) -> None:
        """Send ``data`` to ``destination`` claiming to come from ``source``, bound or not.

        An off-path attacker spoofing another host's address: the datagram crosses the
        ``source`` to ``destination`` link like any other (its impairments, the log).
        """
        self._transmit(source, destination, bytes(data))

    def impairments_for(self, source: Address, destination: Address) -> Impairments:
        for key in ((source, destination), (source, None), (None, destination)):
            rule = self._rules.get(key)
            if rule is not None:
                return rule
        return self._default

    # -- the wire -----------------------------------------------------------------------------

    def sent(
        self, *, source: Address | None = None, destination: Address | None = None
    ) -> list[SentDatagram]:
        """The logged datagrams from ``source`` and/or to ``destination``, in sending order."""
        return [
            record
            for record in self.log
            if (source is None or record.source == source)
            and (destination is None or record.destination == destination)
        ]

    def summary(self) -> dict[str, int]:
        """The network's totals, for reports and assertions."""
        return {
            "sent": self._sent,
            "dropped": self.dropped,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "overflowed": self.overflowed,
            "unroutable": self.unroutable,
        }

    def _generator(self, link: tuple[Address, Address]) -> random.Random:
        generator = self._generators.get(link)
        if generator is None:
            # A string seed is hashed (SHA-512) by random.Random: stable across runs and
            # Python versions, unlike hash().
            source, destination = link
            seed = f"{self.seed}|{source[0]}|{source[1]}|{destination[0]}|{destination[1]}"
            generator = self._generators[link] = random.Random(seed)
        return generator

    def _transmit(self, source: Address, destination: Address, data: bytes) -> None:
        now = trio.current_time()
        link = (source, destination)
        rules = self.impairments_for(source, destination)
        generator = self._generator(link)
        # Always five draws, whatever the outcome, so one setting never shifts the others.
        drop_draw, duplicate_draw, reorder_draw = (generator.random() for _ in range(3))
        first_delay = generator.random() * rules.max_delay
        second_delay = generator.random() * rules.max_delay

        record = SentDatagram(self._sent, now, source, destination, data)
        self._sent += 1
        if len(self.log) < self.max_log:
            self.log.append(record)
        else:
            self.unlogged += 1

        natural_arrival = now + first_delay
        order = next(self._order)
        # This datagram overtakes a copy held back on its link: that copy now arrives just
        # after this one would (whether or not this one survives the drop draw).
        held = self._held.pop(link, None)
        if held is not None and held.copy.arrives_at > natural_arrival and not held.copy.cancelled:
            held.endpoint._reschedule(held.copy, natural_arrival, next(self._order))

        if drop_draw < rules.drop or any(rule(record) for rule in list(self._loss_rules)):
            record.dropped = True
            self.dropped += 1
            return
        endpoint = self._endpoints.get(destination)
        if endpoint is None:
            record.unroutable = True
            self.unroutable += 1
            return

        reorder = reorder_draw < rules.reorder
        arrival = natural_arrival + rules.reorder_hold if reorder else natural_arrival
        first = self._queue_copy(endpoint, record, arrival, order)
        if reorder and first is not None:
            record.reordered = True
            self.reordered += 1
            self._held[link] = _Held(endpoint, first)
        if duplicate_draw < rules.duplicate:
            record.duplicated = True
            self.duplicated += 1
            self._queue_copy(endpoint, record, now + second_delay, next(self._order))

    def _queue_copy(
        self, endpoint: FakeEndpoint, record: SentDatagram, arrives_at: float, order: int
    ) -> _Copy | None:
        copy = _Copy(record, len(record.arrivals), arrives_at)
        if not endpoint._enqueue(copy, order):
            record.overflowed += 1
            self.overflowed += 1
            return None
        record.arrivals.append(arrives_at)
        return copy
