"""The shared cookie jar: one master key, many processes (``serve --workers N``).

Each jar stands for one worker process: its own clock reading (the same clock: every process
reads CLOCK_MONOTONIC) and its own random source, which a shared jar must never use.  Any jar
must accept a cookie any other made, a jar made later (a restarted worker) must accept the
cookies in flight, and the rotation must still retire old cookies.
"""

from __future__ import annotations

import hashlib
import hmac
import math

import pytest
from cookie_support import HELLO, PEER, FakeClock, issued

from trio_dtls_server import DTLSServer
from trio_dtls_server._cookie import MIN_MASTER_KEY_LENGTH, CookieJar, derive_cookie_secret

INTERVAL = 100.0
MASTER = bytes(range(32))


def _no_randomness(count: int) -> bytes:
    raise AssertionError("a shared jar must not draw secrets of its own")


def shared_jar(clock: FakeClock, master: bytes = MASTER) -> CookieJar:
    return CookieJar(
        rotation_interval=INTERVAL, clock=clock, random_bytes=_no_randomness, master_key=master
    )


def test_the_secret_of_period_k_is_hmac_of_the_master_key_and_k() -> None:
    expected = hmac.digest(
        MASTER, b"trio_dtls_server cookie secret\0" + (7).to_bytes(8, "big"), hashlib.sha256
    )
    assert derive_cookie_secret(MASTER, 7) == expected
    assert derive_cookie_secret(MASTER, 8) != expected
    assert derive_cookie_secret(bytes(32), 7) != expected
    assert len({derive_cookie_secret(MASTER, k) for k in range(-3, 100)}) == 103


def test_a_cookie_is_the_mac_under_the_clocks_period_secret() -> None:
    clock = FakeClock()
    clock.now = 12_345.0
    cookie = shared_jar(clock).make_cookie(PEER, HELLO)
    secret = derive_cookie_secret(MASTER, math.floor(12_345.0 / INTERVAL))
    # The same MAC input as an unshared jar: only the secret's origin differs.
    plain = CookieJar(rotation_interval=INTERVAL, clock=clock, random_bytes=lambda n: secret)
    assert cookie == plain.make_cookie(PEER, HELLO)


def test_every_jar_with_the_key_accepts_every_other_jars_cookies() -> None:
    clock = FakeClock()
    workers = [shared_jar(clock) for _ in range(4)]
    for maker in workers:
        second = issued(maker)
        assert all(jar.is_valid(PEER, second) for jar in workers)


def test_a_jar_with_another_key_refuses_them() -> None:
    clock = FakeClock()
    second = issued(shared_jar(clock))
    assert not shared_jar(clock, bytes(32)).is_valid(PEER, second)
    assert not CookieJar(rotation_interval=INTERVAL, clock=clock).is_valid(PEER, second)


def test_a_restarted_worker_accepts_the_cookies_in_flight() -> None:
    clock = FakeClock()
    clock.now = 10 * INTERVAL + 0.99 * INTERVAL  # the end of a period
    second = issued(shared_jar(clock))
    clock.now += 0.02 * INTERVAL  # the next period has begun
    replacement = shared_jar(clock)  # a new process: it knows the previous secret at once
    assert replacement.is_valid(PEER, second)


def test_the_shared_schedule_still_retires_cookies_after_two_periods() -> None:
    clock = FakeClock()
    clock.now = 50 * INTERVAL + 0.5 * INTERVAL
    maker, checker = shared_jar(clock), shared_jar(clock)
    second = issued(maker)
    clock.now += INTERVAL  # one rotation: the previous secret
    assert checker.is_valid(PEER, second)
    assert maker.make_cookie(PEER, HELLO) != second.cookie
    clock.now += INTERVAL  # two: gone, in every jar, also one that was idle meanwhile
    assert not checker.is_valid(PEER, second)
    assert not shared_jar(clock).is_valid(PEER, second)


def test_a_shared_jar_cannot_be_rotated_by_hand_or_keyed_weakly() -> None:
    jar = shared_jar(FakeClock())
    assert jar.shared
    with pytest.raises(RuntimeError, match="shared clock"):
        jar.rotate()
    with pytest.raises(ValueError, match=f"at least {MIN_MASTER_KEY_LENGTH} bytes"):
        CookieJar(master_key=bytes(MIN_MASTER_KEY_LENGTH - 1))
    assert not CookieJar().shared


def test_servers_given_one_cookie_secret_accept_each_others_cookies() -> None:
    first = DTLSServer(b"key", cookie_secret=MASTER)
    second = DTLSServer(b"key", cookie_secret=MASTER)
    stranger = DTLSServer(b"key")
    hello = issued(first._cookies)
    assert second._cookies.is_valid(PEER, hello)
    assert not stranger._cookies.is_valid(PEER, hello)
