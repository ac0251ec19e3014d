"""The peer table's rules (admission, §4.2.8 replacement, eviction, CID moves), plain asserts.

No Trio, no sockets: :class:`PeerTable` takes the time as an argument and returns decisions;
these tests check each decision and what the table holds afterwards.
"""

from __future__ import annotations

from trio_dtls_server._peers import EndReason, Peer, PeerState, PeerTable

A = ("127.0.0.1", 4000)
B = ("127.0.0.1", 4001)
C = ("127.0.0.1", 4002)


def table(
    max_peers: int = 10, max_handshakes: int = 10, evict_idle_after: float | None = None
) -> PeerTable[Peer]:
    return PeerTable(
        max_peers=max_peers, max_handshakes=max_handshakes, evict_idle_after=evict_idle_after
    )


def check(peers: PeerTable[Peer]) -> None:
    """The table's invariants: what is in the map is alive and not ended by the server."""
    for address, peer in peers.peers.items():
        assert peer.address == address
        assert peer.end_reason is None
        assert not peer.finished
        if peer.replacing is not None:
            assert peer.replacing.established
            assert peers.get(peer.replacing.address) is not peer.replacing
    in_map = sum(peer.state is PeerState.HANDSHAKING for peer in peers.peers.values())
    assert peers.handshaking >= in_map


def admit(peers: PeerTable[Peer], address: tuple[str, int], now: float) -> Peer:
    admission = peers.admit(address, now, lambda: Peer(address))
    assert admission.refused is None
    assert admission.peer is not None
    return admission.peer


def established(peers: PeerTable[Peer], address: tuple[str, int], now: float) -> Peer:
    peer = admit(peers, address, now)
    peers.handshake_completed(peer, now)
    return peer


def test_admission_puts_a_handshaking_peer_in_the_map() -> None:
    peers = table()
    admission = peers.admit(A, 5.0, lambda: Peer(A))
    peer = admission.peer
    assert peer is not None
    assert admission.refused is None
    assert admission.evicted is None
    assert admission.superseded is None
    assert peers.get(A) is peer
    assert len(peers) == 1
    assert peers.handshaking == 1
    assert peer.state is PeerState.HANDSHAKING
    assert peer.last_activity == 5.0
    assert not peer.established
    assert not peer.finished
    assert peer.end_reason is None
    assert peer.end_message is None
    assert peer.replacing is None
    check(peers)


def test_completion_establishes_and_measures_the_handshake() -> None:
    peers = table()
    peer = admit(peers, A, 5.0)
    completion = peers.handshake_completed(peer, 7.5)
    assert completion.duration == 2.5
    assert completion.replaced is None
    assert peer.state is PeerState.ESTABLISHED
    assert peer.established
    assert peer.last_activity == 7.5
    assert peers.handshaking == 0
    assert peers.get(A) is peer
    check(peers)


def test_refused_when_max_handshakes_are_in_flight() -> None:
    peers = table(max_handshakes=2)
    admit(peers, A, 0.0)
    admit(peers, B, 0.0)
    made: list[Peer] = []

    def make() -> Peer:
        made.append(Peer(C))
        return made[-1]

    admission = peers.admit(C, 0.0, make)
    assert admission.refused == "2 handshakes already in flight"
    assert admission.peer is None
    assert made == []  # a refused hello costs no peer
    assert peers.get(C) is None
    assert peers.handshaking == 2
    # A completed handshake frees its place.
    peers.handshake_completed(peers.peers[A], 1.0)
    assert admit(peers, C, 1.0) is peers.get(C)
    check(peers)


def test_refused_when_the_table_is_full_and_nobody_may_be_evicted() -> None:
    peers = table(max_peers=2)
    established(peers, A, 0.0)
    established(peers, B, 0.0)
    admission = peers.admit(C, 1000.0, lambda: Peer(C))
    assert admission.refused == "the peer table is full (2 peers)"
    assert admission.evicted is None
    assert peers.get(A) is not None and peers.get(B) is not None
    assert peers.get(A).end_reason is None  # type: ignore[union-attr]
    check(peers)


def test_a_full_table_still_admits_a_new_hello_from_a_known_address() -> None:
    peers = table(max_peers=1)
    old = established(peers, A, 0.0)
    new = admit(peers, A, 1.0)
    assert peers.get(A) is new
    assert new.replacing is old
    check(peers)


def test_eviction_takes_the_least_recently_active_idle_established_peer() -> None:
    peers = table(max_peers=3, evict_idle_after=60.0)
    a = established(peers, A, 0.0)
    b = established(peers, B, 0.0)
    handshaking = admit(peers, C, 0.0)  # never evicted, however old
    a.last_activity = 30.0
    b.last_activity = 10.0
    # At 69 s nobody has been idle for 60 s: refused.
    assert peers.admit(("127.0.0.1", 9), 69.0, lambda: Peer(("127.0.0.1", 9))).refused
    # At 71 s B (idle 61 s) may go, A (idle 41 s) may not.
    admission = peers.admit(("127.0.0.1", 9), 71.0, lambda: Peer(("127.0.0.1", 9)))
    assert admission.evicted is b
    assert b.end_reason is EndReason.EVICTED
    assert b.end_message == "evicted to make room (idle for 61 s)"
    assert peers.get(B) is None  # out of the map at once
    assert peers.get(("127.0.0.1", 9)) is admission.peer
    assert a.end_reason is None and handshaking.end_reason is None
    assert len(peers) == 3
    check(peers)


def test_eviction_ties_go_to_the_peer_admitted_first_and_threshold_is_inclusive() -> None:
    peers = table(max_peers=2, evict_idle_after=60.0)
    a = established(peers, A, 0.0)
    established(peers, B, 0.0)
    admission = peers.admit(C, 60.0, lambda: Peer(C))
    assert admission.evicted is a
    check(peers)


def test_no_eviction_without_evict_idle_after() -> None:
    peers = table(max_peers=1, evict_idle_after=None)
    established(peers, A, 0.0)
    assert peers.admit(B, 1e9, lambda: Peer(B)).refused == "the peer table is full (1 peers)"
    check(peers)


def test_an_evicted_peers_end_does_not_touch_the_map() -> None:
    peers = table(max_peers=1, evict_idle_after=1.0)
    a = established(peers, A, 0.0)
    b = peers.admit(B, 5.0, lambda: Peer(B)).peer
    finish = peers.finished(a)
    assert finish.was_handshaking is False
    assert finish.restored is None
    assert a.state is PeerState.CLOSED
    assert peers.get(B) is b
    check(peers)


def test_an_established_association_is_kept_aside_then_replaced() -> None:
    peers = table()
    old = established(peers, A, 0.0)
    new = peers.admit(A, 10.0, lambda: Peer(A))
    assert new.superseded is None and new.evicted is None
    assert new.peer is not None
    assert peers.get(A) is new.peer  # the new handshake gets the address's datagrams
    assert new.peer.replacing is old  # the old association goes on meanwhile
    assert old.end_reason is None
    completion = peers.handshake_completed(new.peer, 11.0)
    assert completion.replaced is old
    assert old.end_reason is EndReason.REPLACED
    assert old.end_message == "replaced by a new handshake from the same address"
    assert new.peer.replacing is None
    # The replaced one ends later; the map keeps the new one.
    finish = peers.finished(old)
    assert finish.restored is None
    assert peers.get(A) is new.peer
    check(peers)


def test_a_failed_replacement_restores_the_kept_association() -> None:
    peers = table()
    old = established(peers, A, 0.0)
    new = admit(peers, A, 10.0)
    finish = peers.finished(new)
    assert finish.was_handshaking is True
    assert finish.restored is old
    assert new.state is PeerState.ABANDONED
    assert new.replacing is None
    assert peers.get(A) is old
    assert peers.handshaking == 0
    assert old.end_reason is None
    check(peers)


def test_a_kept_association_that_ended_meanwhile_is_not_restored() -> None:
    peers = table()
    old = established(peers, A, 0.0)
    new = admit(peers, A, 10.0)
    peers.finished(old)  # idle timeout, close_notify...: it ended on its own
    assert peers.get(A) is new  # its end does not touch the new handshake's entry
    assert peers.finished(new).restored is None
    assert peers.get(A) is None
    assert len(peers) == 0
    check(peers)


def test_a_kept_association_that_ended_meanwhile_is_not_replaced() -> None:
    peers = table()
    old = established(peers, A, 0.0)
    new = admit(peers, A, 10.0)
    peers.finished(old)
    assert peers.handshake_completed(new, 11.0).replaced is None
    assert old.end_reason is None
    check(peers)


def test_a_newer_hello_supersedes_a_handshake_and_keeps_what_it_protected() -> None:
    peers = table()
    old = established(peers, A, 0.0)
    first = admit(peers, A, 10.0)
    second = peers.admit(A, 11.0, lambda: Peer(A))
    assert second.superseded is first
    assert first.end_reason is EndReason.SUPERSEDED
    assert first.end_message == "superseded by a newer handshake from the same address"
    assert first.replacing is None
    assert second.peer is not None
    assert second.peer.replacing is old
    assert peers.get(A) is second.peer
    # The superseded task counts as a handshake in flight until it ends.
    assert peers.handshaking == 2
    finish = peers.finished(first)
    assert finish.was_handshaking is True
    assert finish.restored is None
    assert peers.get(A) is second.peer
    assert peers.handshaking == 1
    # And the second one's failure gives the address back to the old association.
    assert peers.finished(second.peer).restored is old
    assert peers.get(A) is old
    check(peers)


def test_finishing_frees_the_address_and_the_handshake_count() -> None:
    peers = table()
    a = admit(peers, A, 0.0)
    b = established(peers, B, 0.0)
    assert peers.handshaking == 1
    finish_a = peers.finished(a)
    assert finish_a.was_handshaking is True
    assert a.state is PeerState.ABANDONED
    assert a.finished and not a.established
    finish_b = peers.finished(b)
    assert finish_b.was_handshaking is False
    assert b.state is PeerState.CLOSED
    assert b.finished and b.established
    assert peers.handshaking == 0
    assert len(peers) == 0
    assert a.end_reason is None and b.end_reason is None
    check(peers)


# -- RFC 9146: connection IDs and moves -------------------------------------------------------

CID = b"\x00cid01"


def test_a_connection_id_routes_to_its_peer_until_the_peer_finishes() -> None:
    peers = table()
    a = established(peers, A, 0.0)
    assert peers.bind_connection_id(a, CID)
    assert peers.get_by_connection_id(CID) is a
    assert a.connection_id == CID
    # One CID, one peer: another peer cannot take it.
    b = established(peers, B, 0.0)
    assert not peers.bind_connection_id(b, CID)
    assert b.connection_id is None
    peers.finished(a)
    assert peers.get_by_connection_id(CID) is None
    # A finished peer gets none.
    assert not peers.bind_connection_id(a, b"\x00other")
    check(peers)


def test_a_peer_that_negotiated_no_cid_gives_its_cid_back() -> None:
    peers = table()
    a = admit(peers, A, 0.0)
    assert peers.bind_connection_id(a, CID)
    peers.unbind_connection_id(a)
    assert peers.get_by_connection_id(CID) is None
    assert a.connection_id is None


def test_a_move_takes_the_new_address_and_frees_the_old() -> None:
    peers = table()
    a = established(peers, A, 0.0)
    peers.bind_connection_id(a, CID)
    move = peers.move(a, C)
    assert (move.old, move.moved, move.refused) == (A, True, None)
    assert a.address == C
    assert peers.get(C) is a
    assert peers.get(A) is None
    assert peers.get_by_connection_id(CID) is a
    # The same address again: nothing to do, nothing refused.
    again = peers.move(a, C)
    assert (again.old, again.moved, again.refused) == (C, False, None)
    check(peers)


def test_a_move_onto_another_live_peers_address_is_refused() -> None:
    peers = table()
    a = established(peers, A, 0.0)
    b = established(peers, B, 0.0)
    move = peers.move(a, B)
    assert not move.moved
    assert move.refused == "another association holds that address"
    assert (a.address, peers.get(A), peers.get(B)) == (A, a, b)
    check(peers)


def test_a_peer_outside_the_map_does_not_move() -> None:
    peers = table()
    old = established(peers, A, 0.0)
    admit(peers, A, 1.0)  # a new handshake from A keeps the old association aside (§4.2.8)
    move = peers.move(old, C)
    assert not move.moved
    assert move.refused == "it is not in the address map"
    assert peers.get(C) is None
    peers.finished(old)
    assert peers.move(old, C).refused == "it is not in the address map"
    check(peers)
