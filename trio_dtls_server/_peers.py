"""The peer table: who is admitted, who is replaced, who is evicted; synchronous, no Trio.

One owner for the life of a peer as the server sees it.  :class:`PeerTable` holds the address
map and the count of handshakes in flight, and applies RFC 6347 §4.2.8 (a cookie-verified
ClientHello from an address that already has a peer means the client restarted).  It takes the
time as an argument (``now``), never reads a clock, and never touches a task, a channel or a
socket: each method changes the table and returns a decision (the peer to evict, the handshake
a newer one supersedes, the association a completed handshake replaces, the one a failed
handshake restores) that the Trio layer (:mod:`._server`) carries out by cancelling a scope and
emitting an event.  That keeps these rules testable with plain asserts (``tests/test_peers.py``).

A peer goes ``HANDSHAKING`` → ``ESTABLISHED`` → ``CLOSED``, or ``HANDSHAKING`` → ``ABANDONED``
(its task ended before the handshake completed).  Separately, :attr:`Peer.end_reason` says why
the *server* ended it, if it did (replaced, superseded, evicted); a peer that ended on its own
(close_notify, idle timeout, a failed handshake, a handler that returned) has none: those are
reported by the events of the layer that saw them.

§4.2.8 in this table:

* A verified hello from an address whose peer is **established** starts a new handshake; the
  established association is *kept aside* (out of the map, so the new handshake gets the
  address's datagrams, but still running) in the new peer's :attr:`Peer.replacing`.  A replayed
  cookie'd hello then costs the real client at most one handshake timeout, never its association.
* When that handshake completes, the kept association is **replaced** (ended by the server).
* When that handshake fails, the kept association is **restored** into the map, unless it has
  ended meanwhile.
* A verified hello from an address whose peer is still **handshaking** supersedes that handshake;
  what it kept aside stays kept aside by the new one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Self, TypeVar

from ._events import Address

__all__ = [
    "Admission",
    "Completion",
    "EndReason",
    "Finish",
    "Move",
    "Peer",
    "PeerState",
    "PeerTable",
]


class PeerState(enum.Enum):
    """Where a peer is in its life; only :class:`PeerTable` moves it on."""

    #: Admitted, its handshake in flight (it counts against ``max_handshakes``).
    HANDSHAKING = "handshaking"
    #: Its handshake completed; the handler runs.
    ESTABLISHED = "established"
    #: Its task ended before the handshake completed.
    ABANDONED = "abandoned"
    #: Its task ended after the handshake completed.
    CLOSED = "closed"


class EndReason(enum.Enum):
    """Why the server ended a peer; the value is the text of its ``peer_ended`` event.

    Events and tests match these texts: they are kept exactly as they were.
    """

    #: RFC 6347 §4.2.8: the same address completed a new handshake; no close_notify is sent
    #: (the restarted client has no keys for the old epoch).
    REPLACED = "replaced by a new handshake from the same address"
    #: A newer verified hello from the same address arrived while this one's handshake ran.
    SUPERSEDED = "superseded by a newer handshake from the same address"
    #: The table was full and this was the least recently active idle peer.
    EVICTED = "evicted to make room"


@dataclass(eq=False)
class Peer:
    """What the table knows of one peer; the server's ``PeerSlot`` adds the Trio objects.

    Only :class:`PeerTable` writes ``state``, ``end_reason``, ``end_message`` and
    ``replacing``.  ``last_activity`` is the admission time until the handshake completes,
    then the time of the latest authentic datagram (the connection moves it on).
    """

    address: Address
    last_activity: float = field(default=0.0, kw_only=True)
    state: PeerState = field(default=PeerState.HANDSHAKING, kw_only=True)
    #: Why the server ended this peer, or None while it has not.
    end_reason: EndReason | None = field(default=None, kw_only=True)
    #: The ``peer_ended`` event's text: ``end_reason``'s, with the idle time of an eviction.
    end_message: str | None = field(default=None, kw_only=True)
    #: The established association this peer's handshake will replace once it completes
    #: (RFC 6347 §4.2.8: a client that restarted on the same address and port).
    replacing: Self | None = field(default=None, kw_only=True)
    #: The RFC 9146 connection ID issued to this peer (its ``tls12_cid`` records find it by
    #: this), or None.
    connection_id: bytes | None = field(default=None, kw_only=True)

    @property
    def established(self) -> bool:
        """Its handshake completed (it may have ended since)."""
        return self.state is PeerState.ESTABLISHED or self.state is PeerState.CLOSED

    @property
    def finished(self) -> bool:
        """Its task has ended."""
        return self.state is PeerState.ABANDONED or self.state is PeerState.CLOSED


P = TypeVar("P", bound=Peer)


@dataclass
class Admission(Generic[P]):
    """What :meth:`PeerTable.admit` decided.

    Either ``refused`` (why, for the ``handshake_refused`` warning) and nothing else, or
    ``peer`` (the new peer, already in the map), with ``evicted`` (a peer ended to make room:
    cancel it) or ``superseded`` (the handshake it replaces at the same address: cancel it).
    """

    peer: P | None = None
    refused: str | None = None
    evicted: P | None = None
    superseded: P | None = None


@dataclass
class Completion(Generic[P]):
    """What :meth:`PeerTable.handshake_completed` decided."""

    #: How long the handshake took (admission to completion).
    duration: float
    #: The association kept aside that this handshake replaces (cancel it), or None.
    replaced: P | None = None


@dataclass
class Move:
    """What :meth:`PeerTable.move` decided."""

    #: The address the peer had.
    old: Address
    #: True if the peer now has the new address.
    moved: bool = False
    #: Why it did not move (for the warning), when it did not and the address differed.
    refused: str | None = None


@dataclass
class Finish(Generic[P]):
    """What :meth:`PeerTable.finished` decided."""

    #: The peer ended during its handshake: one handshake fewer in flight.
    was_handshaking: bool
    #: The association kept aside that goes on, back in the map, because this handshake failed.
    restored: P | None = None


class PeerTable(Generic[P]):
    """The address map and the handshakes in flight, and the rules that change them.

    Invariants: every peer in :attr:`peers` has no ``end_reason`` and is not finished; a peer
    kept aside (some peer's ``replacing``) is established and out of the map.

    ``max_peers`` bounds the map, ``max_handshakes`` the handshakes in flight;
    ``evict_idle_after`` (seconds, or None for never) lets a new peer take the place of the
    least recently active established peer idle at least that long when the map is full.
    """

    def __init__(
        self, *, max_peers: int, max_handshakes: int, evict_idle_after: float | None
    ) -> None:
        self.max_peers = max_peers
        self.max_handshakes = max_handshakes
        self.evict_idle_after = evict_idle_after
        #: The peer of each address: the reader routes datagrams with it.
        self.peers: dict[Address, P] = {}
        #: Handshakes in flight (peers in the HANDSHAKING state, superseded ones included
        #: until their tasks end).
        self.handshaking = 0
        #: The peer of each connection ID issued (RFC 9146): ``tls12_cid`` records are routed
        #: with it, whatever their source address.  A peer stays here until its task ends.
        self.by_connection_id: dict[bytes, P] = {}

    def __len__(self) -> int:
        return len(self.peers)

    def get(self, address: Address) -> P | None:
        return self.peers.get(address)

    def get_by_connection_id(self, cid: bytes) -> P | None:
        return self.by_connection_id.get(cid)

    def bind_connection_id(self, peer: P, cid: bytes) -> bool:
        """Route ``tls12_cid`` records carrying ``cid`` to ``peer``; False if another holds it."""
        if cid in self.by_connection_id or peer.finished:
            return False
        self.by_connection_id[cid] = peer
        peer.connection_id = cid
        return True

    def unbind_connection_id(self, peer: P) -> None:
        """``peer`` does not use its CID after all (the handshake negotiated none)."""
        cid, peer.connection_id = peer.connection_id, None
        if cid is not None and self.by_connection_id.get(cid) is peer:
            del self.by_connection_id[cid]

    def move(self, peer: P, address: Address) -> Move:
        """RFC 9146 §6: ``peer`` sent an authentic, newest CID record from ``address``.

        The peer takes the new address in the map (replies go there), unless another live
        peer holds it: then nothing moves (:attr:`Move.refused`).  An off-path attacker cannot
        make a CID record authenticate, so only the key holder moves its own association; but
        an on-path one can replay a fresh record from a spoofed source before the real one
        arrives (RFC 9146 §6 / RFC 9853), so a move must never end someone else's.  A peer
        not in the map (kept aside by a §4.2.8 replacement, or ended) does not move either.
        """
        old = peer.address
        if old == address:
            return Move(old)
        if self.peers.get(old) is not peer or peer.finished:
            return Move(old, refused="it is not in the address map")
        holder = self.peers.get(address)
        if holder is not None and holder is not peer:
            return Move(old, refused="another association holds that address")
        del self.peers[old]
        self.peers[address] = peer
        peer.address = address
        return Move(old, moved=True)

    def admit(self, address: Address, now: float, new_peer: Callable[[], P]) -> Admission[P]:
        """A cookie-verified hello from ``address``: start a handshake, or refuse it.

        ``new_peer`` makes the peer (only once admitted: refusals under a flood cost nothing).
        """
        if self.handshaking >= self.max_handshakes:
            return Admission(refused=f"{self.handshaking} handshakes already in flight")
        old = self.peers.get(address)
        evicted: P | None = None
        if old is None and len(self.peers) >= self.max_peers:
            evicted = self._evict_one(now)
            if evicted is None:
                return Admission(refused=f"the peer table is full ({self.max_peers} peers)")
        protected: P | None = None
        superseded: P | None = None
        if old is not None and old.established:
            protected = old  # kept aside until the new handshake completes or fails
        elif old is not None:
            # A handshake that a newer hello supersedes; what it was protecting stays protected.
            self._end(old, EndReason.SUPERSEDED)
            protected, old.replacing = old.replacing, None
            superseded = old
        peer = new_peer()
        peer.state = PeerState.HANDSHAKING
        peer.last_activity = now
        peer.replacing = protected
        self.peers[address] = peer
        self.handshaking += 1
        return Admission(peer=peer, evicted=evicted, superseded=superseded)

    def handshake_completed(self, peer: P, now: float) -> Completion[P]:
        """``peer``'s handshake completed: it is established, and what it kept aside goes."""
        previous, peer.replacing = peer.replacing, None
        replaced: P | None = None
        if previous is not None and not previous.finished:
            # The client proved itself with a Finished: now the old association goes.
            self._end(previous, EndReason.REPLACED)
            replaced = previous
        peer.state = PeerState.ESTABLISHED
        # last_activity still holds the admission time: nothing moves it before this.
        duration = now - peer.last_activity
        peer.last_activity = now
        self.handshaking -= 1
        return Completion(duration=duration, replaced=replaced)

    def finished(self, peer: P) -> Finish[P]:
        """``peer``'s task ended: free its address, or give it back to what it kept aside."""
        was_handshaking = peer.state is PeerState.HANDSHAKING
        if was_handshaking:
            peer.state = PeerState.ABANDONED
            self.handshaking -= 1
        elif peer.state is PeerState.ESTABLISHED:
            peer.state = PeerState.CLOSED
        restored: P | None = None
        if self.peers.get(peer.address) is peer:
            kept = peer.replacing
            # A kept association is never ended by the server while kept aside (only a
            # completed handshake replaces it, and that clears ``replacing``): it may only have
            # ended on its own meanwhile.
            if kept is not None and not kept.finished:
                # The handshake that would have replaced it failed: it goes on.
                self.peers[peer.address] = kept
                restored = kept
            else:
                del self.peers[peer.address]
        peer.replacing = None
        cid = peer.connection_id
        if cid is not None and self.by_connection_id.get(cid) is peer:
            del self.by_connection_id[cid]
        return Finish(was_handshaking=was_handshaking, restored=restored)

    def _evict_one(self, now: float) -> P | None:
        """End the least recently active established peer idle ≥ ``evict_idle_after``, if any.

        It leaves the map at once (its task only ends at its next checkpoint).  Ties go to the
        peer admitted first.
        """
        threshold = self.evict_idle_after
        if threshold is None:
            return None
        victim: P | None = None
        for peer in self.peers.values():
            # Every peer in the map is one the server has not ended (an evicted, superseded or
            # replaced peer leaves it at once), so none is evicted twice.
            if (peer.established and now - peer.last_activity >= threshold) and (
                victim is None or peer.last_activity < victim.last_activity
            ):
                victim = peer
        if victim is None:
            return None
        idle = now - victim.last_activity
        self._end(victim, EndReason.EVICTED, f" (idle for {idle:.0f} s)")
        del self.peers[victim.address]
        return victim

    @staticmethod
    def _end(peer: Peer, reason: EndReason, detail: str = "") -> None:
        peer.end_reason = reason
        peer.end_message = reason.value + detail
