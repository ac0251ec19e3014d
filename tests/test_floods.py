"""Issue 4, item 4: floods.  Each one is bounded by the server, counted, and harmless to others.

* 10,000 cookieless ClientHellos from 200 ports: no state, only small HelloVerifyRequests;
* 1,000 clients that pass the cookie check and then go silent: at most ``max_handshakes`` in
  flight, every one released by the handshake deadline;
* a burst of forged records from an established peer's address: counted, warned about once
  past ``max_auth_failures``, and the peer is answered all along (never throttled);
* a replayed application record: dropped by the replay window, counted, not answered.

In each, a well-behaved client keeps exchanging messages with the server throughout.
Everything is real UDP on 127.0.0.1; the long timers run under Trio's autojump clock.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio
import trio.testing
from hostile_support import (
    ack_for,
    connect,
    cookie_round_trip,
    drain,
    forged_record,
    live_ssl_connections,
    real_client_hello,
    serving_psk,
    smallest_client_hello,
    udp_sockets,
    with_random,
)
from support import settle

from trio_dtls_server import ServerConfig
from trio_dtls_server._wire import (
    parse_hello_verify_request,
    parse_initial_client_hello,
)


@pytest.mark.slow
async def test_cookieless_hello_flood_creates_no_state_and_is_not_amplified() -> None:
    rng = random.Random(44_001)
    senders, rounds = 200, 50
    async with serving_psk() as served:
        good = await connect(served.address)
        await good.round_trip(b"before", ack_for(good.address))
        before = served.server.statistics()
        good_sent_before = len(good.transport.sent)
        ssl_before = live_ssl_connections()

        # A hello with a valid cookie -- for the port that did the exchange, not for the
        # flooders: sprayed from their ports it must be rejected (and still only answered
        # with a HelloVerifyRequest).
        with udp_sockets(1) as [cookie_owner]:
            stolen = await cookie_round_trip(cookie_owner, served.address)
        assert len(parse_initial_client_hello(stolen).hello.cookie) == 16

        real = real_client_hello()
        with udp_sockets(senders, hosts=("127.0.0.1", "127.0.0.2", "127.0.0.3")) as flooders:
            # Every tenth sender sends the smallest possible hello, every tenth the stolen
            # cookie, the rest OpenSSL's own hello with a fresh random each time.
            kinds = [
                "smallest" if i % 10 == 0 else "stolen" if i % 10 == 1 else "real"
                for i in range(senders)
            ]
            hello_sizes: dict[int, set[int]] = {i: set() for i in range(senders)}
            replies: dict[int, list[bytes]] = {i: [] for i in range(senders)}
            newcomer = None
            flood_bytes = 0
            with trio.fail_after(60):  # bounded in time as well as in count
                for round_ in range(rounds):
                    for index, sock in enumerate(flooders):
                        if kinds[index] == "smallest":
                            hello = smallest_client_hello(rng)
                        elif kinds[index] == "stolen":
                            hello = stolen
                        else:
                            hello = with_random(real, rng)
                        hello_sizes[index].add(len(hello))
                        flood_bytes += len(hello)
                        sock.sendto(hello, served.address)
                    await settle()
                    for index, sock in enumerate(flooders):
                        replies[index] += drain(sock)
                    # The well-behaved client is answered all along, and a new client can still
                    # get in (its cookie exchange competes with the flood).
                    await good.round_trip(f"during {round_}".encode(), ack_for(good.address))
                    if round_ == rounds // 2:
                        newcomer = await connect(served.address, identity="newcomer")
                        await newcomer.round_trip(b"hello", ack_for(newcomer.address))
            assert newcomer is not None

        after = served.server.statistics()
        flood = senders * rounds
        # Exactly one HelloVerifyRequest per hello, each to the port it came from, each a
        # well-formed HelloVerifyRequest no larger than the smallest hello that port sent.
        assert [len(replies[i]) for i in range(senders)] == [rounds] * senders
        reply_sizes: Counter[int] = Counter()
        for index in range(senders):
            for reply in replies[index]:
                assert len(parse_hello_verify_request(reply)) == 16
                assert len(reply) <= min(hello_sizes[index])
                reply_sizes[len(reply)] += 1
        assert reply_sizes == {44: flood}
        all_sizes = set().union(*hello_sizes.values())
        assert all_sizes == {67, len(real), len(stolen)}

        # No per-peer state: the flood started no handshake and no OpenSSL object.
        assert after.handshakes_started - before.handshakes_started == 1  # the newcomer
        assert (after.peers, after.peak_peers) == (2, 2)
        # The newcomer's two ends are established, and an established AEAD session has
        # already let its OpenSSL connection go: so no OpenSSL object more than before.
        assert live_ssl_connections() == ssl_before
        assert after.cookies_sent - before.cookies_sent == flood + 1 + 1  # + owner, newcomer
        assert after.cookies_rejected - before.cookies_rejected == flood // 10
        assert after.drops == before.drops == {}

        # Every datagram was read and handled (no kernel drop hid anything), and the flood
        # got back about a quarter of the bytes it sent.
        good_sent = len(good.transport.sent) - good_sent_before
        expected_in = flood + 1 + good_sent + len(newcomer.transport.sent)
        assert after.datagrams_in - before.datagrams_in == expected_in
        assert 44 * flood / flood_bytes < 0.3
        await good.client.aclose()
        await newcomer.client.aclose()


@pytest.mark.slow
async def test_verified_hellos_that_go_silent_are_all_released_by_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attackers, cap, deadline = 1_000, 200, 10.0
    config = ServerConfig(max_handshakes=cap, handshake_timeout=deadline)
    async with serving_psk(config) as served:
        good = await connect(served.address)
        ssl_before = live_ssl_connections()
        with udp_sockets(attackers) as sockets:
            # Each attacker owns its port: it does a real cookie exchange, so its second hello
            # verifies.  Then it sends that hello -- and never anything else -- every 4 s until
            # the server answers with its first flight ("admitted"), like a real client
            # retransmitting while the server refuses it.
            # Bounded in count (waves) and in time (virtual seconds, on the autojump clock).
            with trio.fail_after(300):
                verified = [await cookie_round_trip(sock, served.address) for sock in sockets]
                admitted: set[int] = set()
                hellos_sent = 0
                most_in_flight = 0
                for _wave in range(30):  # bounded: five waves of 200 need about 12
                    waiting = [i for i in range(attackers) if i not in admitted]
                    if not waiting:
                        break
                    for start in range(0, len(waiting), 100):
                        for index in waiting[start : start + 100]:
                            sockets[index].sendto(verified[index], served.address)
                            hellos_sent += 1
                        await settle()
                        most_in_flight = max(most_in_flight, served.server.statistics().handshaking)
                    admitted.update(i for i in waiting if drain(sockets[i]))
                    await good.round_trip(b"still there?", ack_for(good.address))
                    await trio.sleep(4)
            assert len(admitted) == attackers
            await trio.sleep(deadline)
            stats = served.server.statistics()

        assert most_in_flight == cap
        assert stats.peak_peers == cap + 1  # the cap, plus the well-behaved client
        assert stats.handshakes_started == attackers + 1
        assert stats.handshakes_failed == {"deadline": attackers}
        assert stats.handshakes_refused == hellos_sent - attackers
        assert (stats.handshaking, stats.peers) == (0, 1)
        # Every failure is counted, but the error events are rate-limited (50 at once, then
        # 10 a second) so that an attacker holding the handshake slots cannot flood the log.
        reported = len(served.events.with_code("handshake_failed"))
        assert 50 <= reported < attackers
        assert served.events.messages("handshake_failed")[0].endswith(
            "handshake failed: handshake not finished within 10 s"
        )
        assert live_ssl_connections() == ssl_before
        await good.round_trip(b"after", ack_for(good.address))
        await good.client.aclose()


async def test_a_burst_of_forged_records_is_counted_and_never_silences_the_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Until the off-path hardening this burst throttled the peer: every datagram from its
    # address, the real client's own included, was dropped for the window.  Now a record that
    # authenticates is always accepted (RFC 6347 §4.1.2.7); max_auth_failures per
    # auth_failure_window only bounds the log.
    config = ServerConfig(max_auth_failures=32, auth_failure_window=10.0)
    async with serving_psk(config) as served:
        victim = await connect(served.address, identity="victim")
        bystander = await connect(served.address, identity="bystander")
        await victim.round_trip(b"hello", ack_for(victim.address))
        authentic = victim.application_datagrams()[-1]

        # 32 records that fail authentication, "from" the victim's address.
        for sequence in range(1_000, 1_032):
            victim.transport.send_raw(forged_record(authentic, sequence))
        await settle()
        alarm_at = trio.current_time()
        stats = served.server.statistics()
        assert (stats.forgery_alarms, stats.throttles) == (1, 0)
        assert stats.drops == {"record failed authentication": 32}
        # One warning per forgery up to the threshold, then one saying what is going on.
        assert len(served.events.with_code("authentication_failed")) == 31
        [warning] = served.events.with_code("forged_records")
        assert warning.severity == "warning"
        assert warning.message == (
            f"(127.0.0.1:{victim.address[1]}): 32 records failed authentication within 10 s: "
            "someone may be sending forged records from this address.  The association is "
            "kept and every authentic record accepted; further failures are counted, not "
            "logged, for 10 s"
        )

        # More forgeries in the window are counted without a warning each -- and the real
        # client's message among them is answered, as is every other peer's.
        for sequence in range(2_000, 2_010):
            victim.transport.send_raw(forged_record(authentic, sequence))
        await victim.round_trip(b"are you there?", ack_for(victim.address))
        await bystander.round_trip(b"business as usual", ack_for(bystander.address))
        for sequence in range(2_010, 2_020):
            victim.transport.send_raw(forged_record(authentic, sequence))
        await victim.round_trip(b"still here", ack_for(victim.address))
        await settle()
        stats = served.server.statistics()
        assert stats.drops == {"record failed authentication": 52}
        assert (stats.forgery_alarms, stats.messages_received) == (1, 4)
        assert len(served.events.with_code("authentication_failed")) == 31
        assert "peer_throttled" not in served.events.codes()

        # Once the window has passed, each failure is logged again.
        await trio.sleep(alarm_at + 10.0 - trio.current_time() + 0.01)
        victim.transport.send_raw(forged_record(authentic, 3_000))
        await victim.round_trip(b"back again", ack_for(victim.address))
        await settle()
        stats = served.server.statistics()
        assert stats.drops == {"record failed authentication": 53}
        assert len(served.events.with_code("authentication_failed")) == 32
        assert (stats.messages_received, stats.peers, stats.forgery_alarms) == (5, 2, 1)
        await victim.client.aclose()
        await bystander.client.aclose()


async def test_a_replayed_application_record_is_dropped_counted_and_not_answered() -> None:
    async with serving_psk() as served:
        client = await connect(served.address)
        bystander = await connect(served.address, identity="bystander")
        for index in range(5):
            await client.round_trip(f"message {index}".encode(), ack_for(client.address))
        captured = client.application_datagrams()
        assert len(captured) == 5
        before = served.server.statistics()
        received_before = len(client.transport.received)

        # Replay each captured record from the client's own address, the latest three times.
        for datagram in [*captured, captured[-1], captured[-1]]:
            client.transport.send_raw(datagram)
        # ...and from an address the server does not know.
        with udp_sockets(1) as [stranger]:
            stranger.sendto(captured[-1], served.address)
            await bystander.round_trip(b"unaffected", ack_for(bystander.address))
            await settle()
            assert drain(stranger) == []

        after = served.server.statistics()
        assert len(client.transport.received) == received_before  # nothing answered
        assert after.messages_received == before.messages_received + 1  # the bystander's
        assert after.datagrams_out == before.datagrams_out + 1  # the bystander's answer
        assert after.drops == {
            "replayed record": 7,
            "not a ClientHello from an unknown peer": 1,
        }
        assert after.forgery_alarms == 0  # a replay is not a forgery
        assert len(served.events.with_code("replayed_record")) == 7
        assert served.events.messages("replayed_record")[0] == (
            f"(127.0.0.1:{client.address[1]}): replayed record, dropped"
        )
        # The client's session is intact: its next message is answered, once.
        await client.round_trip(b"message 5", ack_for(client.address))
        await settle()
        assert len(client.transport.received) == received_before + 1
        await client.client.aclose()
        await bystander.client.aclose()
