"""Stateless cookies for the DTLS HelloVerifyRequest exchange (RFC 6347 section 4.2.1).

UDP source addresses are trivially spoofed. If a server answered every ClientHello with
its full first flight (certificates and all) it could be used to flood a victim with
traffic many times larger than what the attacker sends, and it would allocate handshake
state for addresses that never asked for it. So the first ClientHello from an address is
answered only with a small HelloVerifyRequest carrying a cookie; a client that really
owns the address echoes the cookie in a second ClientHello, and only then does the server
create a connection.

The server keeps no per-client state: the cookie is a MAC over the peer's address and the
ClientHello fields that RFC 6347 requires the client to repeat, keyed with a secret only
the server knows. Verifying means recomputing it. The secret is replaced periodically so
a cookie observed once cannot be replayed forever; the previous secret is still accepted
so that a cookie minted just before a rotation keeps working for the second ClientHello.

Several processes serving one address (``serve --workers N``: one socket each, the kernel
spreading clients over them) must accept each other's cookies, and a restarted worker must
accept the cookies its predecessor handed out.  They share one *master key* instead of a
secret: the secret of rotation period ``k`` (``k = floor(clock() / rotation_interval)``, on
a clock all processes share) is ``HMAC-SHA256(master, label || k)``.  Every process computes
the same current and previous secret on its own, with no messages between them, and a
process that starts later knows both at once.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import os
import time
from collections.abc import Callable

from ._wire import ClientHello

__all__ = ["MIN_MASTER_KEY_LENGTH", "CookieJar", "derive_cookie_secret"]

_SECRET_LENGTH = 32  # one SHA-256 block's worth of key is plenty for HMAC-SHA256
#: Shortest master key accepted for a shared jar (128 bits: beyond guessing).
MIN_MASTER_KEY_LENGTH = 16
#: Domain separation: the master key derives cookie secrets and nothing else.
_DERIVATION_LABEL = b"trio_dtls_server cookie secret\0"


def derive_cookie_secret(master_key: bytes, period: int) -> bytes:
    """The cookie secret of rotation ``period`` for a shared jar: HMAC-SHA256(master, label || k).

    ``period`` is a signed 64-bit big-endian number in the MAC input, so distinct periods can
    never give the same input.
    """
    return hmac.digest(
        master_key, _DERIVATION_LABEL + period.to_bytes(8, "big", signed=True), hashlib.sha256
    )


class CookieJar:
    """HMAC-SHA256 cookies bound to the peer address and port and ClientHello.cookie_input().

    Secrets rotate every ``rotation_interval`` seconds on a fixed schedule (measured with
    ``clock``, which should be monotonic). Rotation is lazy: it happens on the first
    :meth:`make_cookie` or :meth:`is_valid` call after it falls due, so an idle jar costs
    nothing. A cookie is accepted while its secret is the current or the previous one,
    which means it lives at least one interval and at most two: a client gets ample time
    to send its second ClientHello, and a captured cookie soon goes stale.

    ``clock`` and ``random_bytes`` exist so tests can control time and randomness.

    ``master_key`` makes a *shared* jar (see the module docstring): no secret is drawn; the
    secrets are derived from the key and the period number ``floor(clock() / interval)``, so
    every jar with the same key and a shared clock accepts the others' cookies.  The default
    clock, :func:`time.monotonic`, is CLOCK_MONOTONIC, one clock for the whole system on
    Linux (the time since boot), so processes on one host agree on it.  A shared jar always
    accepts the previous period's secret, even right after it was made, and cannot be
    :meth:`rotate`-d by hand (its schedule is the clock's, the same in every process).

    Peer addresses are compared as IP addresses, not strings: ``"::1"`` and ``"0:0::1"``
    give the same cookie. An IPv4-mapped IPv6 address (``"::ffff:192.0.2.1"``) is *not*
    treated as the IPv4 address it maps: a given socket reports a given client the same
    way every time, so folding them would add code without making any cookie valid that
    is not already valid. An IPv6 scope (``"fe80::1%eth0"``) is part of the address.
    """

    COOKIE_LENGTH = 16
    """Bytes of HMAC output kept. 128 bits is far beyond guessing range, and it keeps the
    HelloVerifyRequest at 44 bytes, smaller than any valid ClientHello (at least 67), so
    answering a spoofed hello never sends more than the attacker sent."""

    def __init__(
        self,
        *,
        rotation_interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        random_bytes: Callable[[int], bytes] = os.urandom,
        master_key: bytes | None = None,
    ) -> None:
        if not rotation_interval > 0:
            raise ValueError(f"rotation_interval must be positive, not {rotation_interval}")
        if master_key is not None and len(master_key) < MIN_MASTER_KEY_LENGTH:
            raise ValueError(
                f"a shared cookie master key needs at least {MIN_MASTER_KEY_LENGTH} bytes"
            )
        self._rotation_interval = rotation_interval
        self._clock = clock
        self._random_bytes = random_bytes
        self._master_key = master_key
        self._previous: bytes | None = None
        #: The rotation period whose secret is current (shared jars only).
        self._period: int | None = None
        if master_key is not None:
            self._current = b""
            self._follow_shared_schedule()
        else:
            self._current = random_bytes(_SECRET_LENGTH)
        self._last_rotation = clock()

    @property
    def shared(self) -> bool:
        """Whether the secrets derive from a master key (several processes share them)."""
        return self._master_key is not None

    def rotate(self) -> None:
        """Rotate now: the current secret becomes the previous one, and a new one is drawn.

        Cookies minted before this call stay valid until the next rotation. The rotation
        schedule restarts from now.  Not available for a shared jar (RuntimeError): rotating one
        process's secret by hand would make it refuse every other process's cookies.
        """
        if self._master_key is not None:
            raise RuntimeError("a shared cookie jar rotates on the shared clock's schedule only")
        self._previous = self._current
        self._current = self._random_bytes(_SECRET_LENGTH)
        self._last_rotation = self._clock()

    def make_cookie(self, peer: tuple[str, int], hello: ClientHello) -> bytes:
        """Return the cookie to send to ``peer`` in reply to ``hello``.

        ``peer`` is ``(host, port)`` as the socket reported it; extra items (IPv6
        flowinfo and scope id) are ignored. Raises ValueError if host is not an IP
        address literal: that would be a bug in our caller, not a hostile datagram.
        """
        self._maybe_rotate()
        return self._mac(self._current, _peer_bytes(peer), hello)

    def is_valid(self, peer: tuple[str, int], hello: ClientHello) -> bool:
        """Whether ``hello.cookie`` is one we made for this peer and these hello fields.

        Checked against the current and the previous secret, comparing in constant time so
        the response time does not reveal how many leading bytes of a forgery were right.
        A hello without a cookie is simply not valid.
        """
        self._maybe_rotate()
        cookie = hello.cookie
        # The length is public (every cookie we issue has it), so bailing out early on a
        # wrong length leaks nothing and saves computing MACs for junk.
        if len(cookie) != self.COOKIE_LENGTH:
            return False
        peer_bytes = _peer_bytes(peer)
        # Evaluate both comparisons unconditionally: short-circuiting would make it
        # measurable which secret matched, which is harmless but also pointless to leak.
        valid = hmac.compare_digest(cookie, self._mac(self._current, peer_bytes, hello))
        if self._previous is not None:
            valid |= hmac.compare_digest(cookie, self._mac(self._previous, peer_bytes, hello))
        return valid

    def _maybe_rotate(self) -> None:
        """Catch up with the rotation schedule."""
        if self._master_key is not None:
            self._follow_shared_schedule()
            return
        now = self._clock()
        due = int((now - self._last_rotation) // self._rotation_interval)
        if due <= 0:
            return
        if due == 1:
            self._previous = self._current
        else:
            # Two or more rotations were missed: the secret that was current is already
            # older than any cookie we accept, and so is the one before it.
            self._previous = None
        self._current = self._random_bytes(_SECRET_LENGTH)
        # Advance along the schedule rather than to "now", so that a secret's lifetime is
        # bounded by the interval no matter when the calls that trigger rotation arrive.
        self._last_rotation += due * self._rotation_interval

    def _follow_shared_schedule(self) -> None:
        """A shared jar: the secrets of the clock's current period and the one before it."""
        assert self._master_key is not None
        period = math.floor(self._clock() / self._rotation_interval)
        if period == self._period:
            return
        self._period = period
        self._current = derive_cookie_secret(self._master_key, period)
        self._previous = derive_cookie_secret(self._master_key, period - 1)

    def _mac(self, secret: bytes, peer_bytes: bytes, hello: ClientHello) -> bytes:
        digest = hmac.digest(secret, peer_bytes + hello.cookie_input(), hashlib.sha256)
        return digest[: self.COOKIE_LENGTH]


def _peer_bytes(peer: tuple[str, int]) -> bytes:
    """Encode a peer address unambiguously for the MAC input.

    Layout: packed-address length (4 or 16, doubling as the family tag, so an IPv4
    address can never collide with an IPv6 one), packed address, scope length (2 bytes),
    scope text, port (2 bytes).
    """
    host, port = peer[0], peer[1]
    # ip_address() also accepts ints and packed bytes; a peer host is always text, and
    # accepting other types would give one address several encodings.
    if not isinstance(host, str):
        raise TypeError(f"peer host {host!r} is not a string")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"peer port {port} is out of range")
    return _host_bytes(host) + port.to_bytes(2, "big")


@functools.lru_cache(maxsize=1024)
def _host_bytes(host: str) -> bytes:
    """The address part of :func:`_peer_bytes`.  Cached: ``ip_address`` costs 3 µs, and every
    handshake needs it twice (the cookie sent, the cookie checked)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"peer host {host!r} is not an IP address literal") from None
    packed = address.packed
    scope = b""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # surrogatepass: the scope is text from the OS; never let encoding be what fails.
        scope = address.scope_id.encode("utf-8", "surrogatepass")
        if len(scope) > 0xFFFF:
            raise ValueError("peer IPv6 scope id is absurdly long")
    return b"".join((bytes([len(packed)]), packed, len(scope).to_bytes(2, "big"), scope))
