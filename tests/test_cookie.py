"""Tests for trio_dtls_server._cookie.CookieJar."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any

import pytest
from cookie_support import HELLO, PEER, FakeClock, issued, with_cookie
from OpenSSL import SSL

from trio_dtls_server._cookie import CookieJar
from trio_dtls_server._wire import (
    build_hello_verify_request,
    parse_initial_client_hello,
)

INTERVAL = 100.0


class CountingRandom:
    """Deterministic, distinct 'random' secrets, so tests can tell them apart."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        return bytes([self.calls]) * n


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> CountingRandom:
    return CountingRandom()


@pytest.fixture
def jar(clock: FakeClock, rng: CountingRandom) -> CookieJar:
    return CookieJar(rotation_interval=INTERVAL, clock=clock, random_bytes=rng)


class TestMakeCookie:
    def test_length_and_determinism(self, jar: CookieJar) -> None:
        cookie = jar.make_cookie(PEER, HELLO)
        assert len(cookie) == CookieJar.COOKIE_LENGTH == 16
        assert jar.make_cookie(PEER, HELLO) == cookie

    def test_is_truncated_hmac_sha256_of_documented_input(self, jar: CookieJar) -> None:
        # First secret drawn by CountingRandom is 32 bytes of 0x01.
        peer_bytes = b"\x04" + bytes([192, 0, 2, 1]) + b"\x00\x00" + (5684).to_bytes(2, "big")
        expected = hmac.new(
            b"\x01" * 32, peer_bytes + HELLO.cookie_input(), hashlib.sha256
        ).digest()[:16]
        assert jar.make_cookie(PEER, HELLO) == expected

    def test_depends_on_the_secret(self, clock: FakeClock) -> None:
        a = CookieJar(clock=clock)
        b = CookieJar(clock=clock)
        assert a.make_cookie(PEER, HELLO) != b.make_cookie(PEER, HELLO)
        assert not b.is_valid(PEER, issued(a))

    def test_ignores_the_cookie_and_extensions_of_the_hello(self, jar: CookieJar) -> None:
        other = dataclasses.replace(HELLO, cookie=b"x" * 16, extensions=b"")
        assert jar.make_cookie(PEER, other) == jar.make_cookie(PEER, HELLO)

    def test_bad_interval(self) -> None:
        for interval in (0.0, -1.0, float("nan")):
            with pytest.raises(ValueError, match="rotation_interval must be positive"):
                CookieJar(rotation_interval=interval)


class TestIsValid:
    def test_accepts_own_cookie(self, jar: CookieJar) -> None:
        assert jar.is_valid(PEER, issued(jar))

    def test_empty_cookie(self, jar: CookieJar) -> None:
        assert not jar.is_valid(PEER, HELLO)

    def test_wrong_length_cookie(self, jar: CookieJar) -> None:
        cookie = jar.make_cookie(PEER, HELLO)
        assert not jar.is_valid(PEER, with_cookie(HELLO, cookie[:15]))
        assert not jar.is_valid(PEER, with_cookie(HELLO, cookie + b"\x00"))

    def test_any_flipped_bit(self, jar: CookieJar) -> None:
        cookie = jar.make_cookie(PEER, HELLO)
        for i in range(len(cookie) * 8):
            forged = bytearray(cookie)
            forged[i // 8] ^= 1 << (i % 8)
            assert not jar.is_valid(PEER, with_cookie(HELLO, bytes(forged))), i

    def test_other_port_or_address(self, jar: CookieJar) -> None:
        second = issued(jar)
        assert not jar.is_valid(("192.0.2.1", 5685), second)
        assert not jar.is_valid(("192.0.2.2", 5684), second)

    @pytest.mark.parametrize(
        "change",
        [
            {"client_version": 0xFEFF},
            {"random": bytes(32)},
            {"session_id": b"\x01"},
            {"cipher_suites": b"\xc0\xa8"},
            {"compression_methods": b"\x01\x00"},
        ],
    )
    def test_bound_to_each_repeated_field(self, jar: CookieJar, change: dict[str, Any]) -> None:
        second = issued(jar)
        assert not jar.is_valid(PEER, dataclasses.replace(second, **change))

    def test_not_bound_to_extensions(self, jar: CookieJar) -> None:
        # RFC 6347 does not require the client to repeat extensions verbatim.
        second = dataclasses.replace(issued(jar), extensions=b"")
        assert jar.is_valid(PEER, second)


class TestPeerNormalisation:
    def test_equivalent_ipv6_spellings(self, jar: CookieJar) -> None:
        assert jar.is_valid(("0:0::1", 443), issued(jar, ("::1", 443)))
        assert jar.is_valid(("2001:DB8::1", 443), issued(jar, ("2001:db8:0:0:0:0:0:1", 443)))

    def test_ipv4_and_ipv6_do_not_collide(self, jar: CookieJar) -> None:
        second = issued(jar, ("0.0.0.1", 443))
        assert not jar.is_valid(("::1", 443), second)

    def test_ipv4_mapped_is_not_folded(self, jar: CookieJar) -> None:
        second = issued(jar, ("192.0.2.1", 443))
        assert not jar.is_valid(("::ffff:192.0.2.1", 443), second)
        assert jar.is_valid(("::ffff:c000:201", 443), issued(jar, ("::ffff:192.0.2.1", 443)))

    def test_scope_is_part_of_the_address(self, jar: CookieJar) -> None:
        second = issued(jar, ("fe80::1%eth0", 443))
        assert jar.is_valid(("fe80::1%eth0", 443), second)
        assert jar.is_valid(("fe80:0::1%eth0", 443), second)
        assert not jar.is_valid(("fe80::1%eth1", 443), second)
        assert not jar.is_valid(("fe80::1", 443), second)

    def test_extra_address_items_are_ignored(self, jar: CookieJar) -> None:
        # IPv6 sockets report (host, port, flowinfo, scope_id).
        four_tuple: Any = ("2001:db8::5", 443, 0, 0)
        assert jar.is_valid(four_tuple, issued(jar, ("2001:db8::5", 443)))

    @pytest.mark.parametrize("host", ["localhost", "example.com", "", "1.2.3", "::1::2"])
    def test_non_ip_host(self, jar: CookieJar, host: str) -> None:
        with pytest.raises(ValueError, match="not an IP address literal"):
            jar.make_cookie((host, 443), HELLO)
        with pytest.raises(ValueError, match="not an IP address literal"):
            jar.is_valid((host, 443), issued(jar))

    def test_non_string_host(self, jar: CookieJar) -> None:
        packed_host: Any = b"\x7f\x00\x00\x01"
        with pytest.raises(TypeError, match="is not a string"):
            jar.make_cookie((packed_host, 443), HELLO)

    @pytest.mark.parametrize("port", [-1, 65536])
    def test_bad_port(self, jar: CookieJar, port: int) -> None:
        with pytest.raises(ValueError, match=f"peer port {port} is out of range"):
            jar.make_cookie(("127.0.0.1", port), HELLO)

    def test_port_extremes(self, jar: CookieJar) -> None:
        zero = issued(jar, ("127.0.0.1", 0))
        top = issued(jar, ("127.0.0.1", 65535))
        assert zero.cookie != top.cookie
        assert jar.is_valid(("127.0.0.1", 0), zero)
        assert jar.is_valid(("127.0.0.1", 65535), top)


class TestRotation:
    def test_valid_after_one_rotation_invalid_after_two(
        self, jar: CookieJar, clock: FakeClock
    ) -> None:
        second = issued(jar)
        clock.now += INTERVAL
        assert jar.is_valid(PEER, second)  # rotated once: now the previous secret
        assert jar.make_cookie(PEER, HELLO) != second.cookie  # new cookies use a new secret
        clock.now += INTERVAL
        assert not jar.is_valid(PEER, second)  # rotated twice: gone

    def test_no_rotation_before_the_interval(
        self, jar: CookieJar, clock: FakeClock, rng: CountingRandom
    ) -> None:
        cookie = jar.make_cookie(PEER, HELLO)
        clock.now += INTERVAL * 0.999
        assert jar.make_cookie(PEER, HELLO) == cookie
        assert rng.calls == 1

    def test_rotation_is_lazy(self, jar: CookieJar, clock: FakeClock, rng: CountingRandom) -> None:
        clock.now += 10 * INTERVAL
        assert rng.calls == 1  # nothing happens until the jar is used
        jar.make_cookie(PEER, HELLO)
        assert rng.calls == 2  # many missed rotations cost one new secret

    def test_long_idle_forgets_both_secrets(self, jar: CookieJar, clock: FakeClock) -> None:
        second = issued(jar)
        clock.now += 2 * INTERVAL
        assert not jar.is_valid(PEER, second)

    def test_just_under_two_intervals_is_still_valid(
        self, jar: CookieJar, clock: FakeClock
    ) -> None:
        second = issued(jar)
        clock.now += 1.99 * INTERVAL
        assert jar.is_valid(PEER, second)

    def test_schedule_does_not_drift_with_call_times(
        self, jar: CookieJar, clock: FakeClock
    ) -> None:
        # A cookie made at t=0 must not outlive t=2*INTERVAL even if the rotation that
        # demoted its secret happened late (at 1.9 intervals rather than 1.0).
        second = issued(jar)
        clock.now += 1.9 * INTERVAL
        assert jar.is_valid(PEER, second)
        clock.now += 0.15 * INTERVAL  # 2.05 intervals after the cookie was made
        assert not jar.is_valid(PEER, second)

    def test_cookie_from_new_secret_survives_one_more_rotation(
        self, jar: CookieJar, clock: FakeClock
    ) -> None:
        clock.now += 1.5 * INTERVAL
        second = issued(jar)  # made under the secret that became current at 1.0
        clock.now += 0.5 * INTERVAL  # 2.0: one rotation
        assert jar.is_valid(PEER, second)
        clock.now += INTERVAL  # 3.0: a second rotation
        assert not jar.is_valid(PEER, second)

    def test_forced_rotate_keeps_previous(self, jar: CookieJar, rng: CountingRandom) -> None:
        second = issued(jar)
        jar.rotate()
        assert rng.calls == 2
        assert jar.is_valid(PEER, second)
        newer = issued(jar)
        assert newer.cookie != second.cookie
        jar.rotate()
        assert not jar.is_valid(PEER, second)
        assert jar.is_valid(PEER, newer)

    def test_forced_rotate_restarts_the_schedule(self, jar: CookieJar, clock: FakeClock) -> None:
        clock.now += 0.9 * INTERVAL
        jar.rotate()
        second = issued(jar)
        clock.now += 0.9 * INTERVAL  # 1.8 since start, but only 0.9 since rotate()
        assert jar.make_cookie(PEER, HELLO) == second.cookie


class TestWhatMutationTestingFound:
    """Changes to ``_cookie.py`` that the tests above let through (mutmut, see ``nox -s mutants``).

    Each test names the code change it pins; every one of them failed with that change applied.
    """

    def test_a_fresh_cookie_is_valid_after_a_rotation(
        self, jar: CookieJar, clock: FakeClock
    ) -> None:
        # ``valid |= <previous secret matches>`` written as ``valid = ...`` would refuse every
        # cookie minted under the current secret once a previous one exists: after the first
        # rotation (300 s by default) no new client could get past the cookie exchange.
        jar.rotate()
        assert jar.is_valid(PEER, issued(jar))
        clock.now += INTERVAL  # the same through a scheduled rotation
        assert jar.is_valid(PEER, issued(jar))

    def test_one_interval_brings_exactly_one_rotation(
        self, jar: CookieJar, clock: FakeClock, rng: CountingRandom
    ) -> None:
        # The schedule advances by ``due * interval``; ``due / interval`` (or anything that
        # moves it by less than an interval) rotates again on nearly every later call, which
        # would make each cookie stale almost at once.
        clock.now += INTERVAL
        cookie = jar.make_cookie(PEER, HELLO)
        assert rng.calls == 2
        for _ in range(9):
            clock.now += 0.1 * INTERVAL  # up to 1.9 intervals: still the second secret
            assert jar.make_cookie(PEER, HELLO) == cookie
        assert rng.calls == 2
        clock.now += 0.1 * INTERVAL  # 2.0 intervals: the third secret
        assert jar.make_cookie(PEER, HELLO) != cookie
        assert rng.calls == 3

    @pytest.mark.parametrize("interval", [0.25, 0.5, 1.0])
    def test_intervals_of_at_most_one_second_are_allowed(
        self, clock: FakeClock, rng: CountingRandom, interval: float
    ) -> None:
        # Positive means positive: the check must not turn into ``> 1`` or ``>= 1``.  With an
        # interval of 1 the mutation ``due / interval`` is invisible, so also check the schedule.
        jar = CookieJar(rotation_interval=interval, clock=clock, random_bytes=rng)
        second = issued(jar)
        clock.now += interval
        assert jar.is_valid(PEER, second)
        assert jar.is_valid(PEER, issued(jar))
        assert rng.calls == 2

    def test_the_default_interval_is_300_seconds(
        self, clock: FakeClock, rng: CountingRandom
    ) -> None:
        jar = CookieJar(clock=clock, random_bytes=rng)
        cookie = jar.make_cookie(PEER, HELLO)
        clock.now += 299.5
        assert jar.make_cookie(PEER, HELLO) == cookie
        clock.now += 0.5  # 300 s
        assert jar.make_cookie(PEER, HELLO) != cookie
        assert rng.calls == 2

    def test_a_scope_id_with_a_lone_surrogate_gets_a_cookie(self, jar: CookieJar) -> None:
        # Scope ids come from the OS as text; one that is not valid UTF-8 arrives with lone
        # surrogates (surrogateescape).  "surrogatepass" keeps encoding from raising, and the
        # scope still counts.
        odd, other = ("fe80::1%eth\udcff", 443), ("fe80::1%eth\udcfe", 443)
        second = issued(jar, odd)
        assert jar.is_valid(odd, second)
        assert not jar.is_valid(other, second)
        assert not jar.is_valid(("fe80::1%eth", 443), second)

    def test_the_scope_id_length_limit_is_exactly_two_bytes(self, jar: CookieJar) -> None:
        # The scope's length is written in 2 bytes: 0xFFFF bytes fit, one more must be a clear
        # ValueError (not an OverflowError from int.to_bytes, not a silent truncation).
        longest = ("fe80::1%" + "s" * 0xFFFF, 443)
        assert jar.is_valid(longest, issued(jar, longest))
        with pytest.raises(ValueError, match=r"^peer IPv6 scope id is absurdly long$"):
            jar.make_cookie(("fe80::1%" + "s" * 0x10000, 443), HELLO)
        # Counted in bytes, not characters: 0x8000 two-byte characters are 0x10000 bytes.
        with pytest.raises(ValueError, match=r"^peer IPv6 scope id is absurdly long$"):
            jar.make_cookie(("fe80::1%" + "\u00e9" * 0x8000, 443), HELLO)


class TestWithRealOpenSSLClient:
    def test_second_hello_from_openssl_verifies(self) -> None:
        ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
        ctx.set_cipher_list(b"DEFAULT")
        conn = SSL.Connection(ctx, None)
        conn.set_connect_state()
        with pytest.raises(SSL.WantReadError):
            conn.do_handshake()
        first = parse_initial_client_hello(conn.bio_read(65536))

        peer = ("2001:db8::7", 61000)
        jar = CookieJar()
        cookie = jar.make_cookie(peer, first.hello)
        conn.bio_write(build_hello_verify_request(first.record, cookie))
        with pytest.raises(SSL.WantReadError):
            conn.do_handshake()
        second = parse_initial_client_hello(conn.bio_read(65536))

        assert second.hello.cookie == cookie
        assert jar.is_valid(peer, second.hello)
        assert jar.is_valid(("2001:db8:0::7", 61000), second.hello)
        assert not jar.is_valid(("2001:db8::7", 61001), second.hello)
        assert not jar.is_valid(("2001:db8::8", 61000), second.hello)
        assert not jar.is_valid(peer, dataclasses.replace(second.hello, random=bytes(32)))
