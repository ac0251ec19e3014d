"""Cookie test data: a peer, a ClientHello, a settable clock, a hello that carries our cookie.

Shared by ``test_cookie.py`` and ``test_cookie_shared.py``.
"""

from __future__ import annotations

import dataclasses

from trio_dtls_server._cookie import CookieJar
from trio_dtls_server._wire import ClientHello


def with_cookie(hello: ClientHello, cookie: bytes) -> ClientHello:
    return dataclasses.replace(hello, cookie=cookie)


PEER = ("192.0.2.1", 5684)
HELLO = ClientHello(
    client_version=0xFEFD,
    random=bytes(range(32)),
    session_id=b"",
    cookie=b"",
    cipher_suites=b"\xc0\xa8\x00\xff",
    compression_methods=b"\x00",
    extensions=b"\x00\x17\x00\x00",
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issued(jar: CookieJar, peer: tuple[str, int] = PEER, hello: ClientHello = HELLO) -> ClientHello:
    """The second ClientHello a well-behaved client sends: the first one plus our cookie."""
    return with_cookie(hello, jar.make_cookie(peer, hello))
