"""The same floor probe as :mod:`benchmarks.floor`, on the system's OpenSSL (``libssl.so.3``).

The issue's 50 KB target comes from a C server on OpenSSL 3.0.  This probe drives the
*system* library through :mod:`ctypes` -- the same DTLS 1.2 server context options, suite, PSK,
MTU and in-memory handshake as :mod:`benchmarks.floor` -- so the two floors can be compared on
one machine: if the system OpenSSL needs much less per connection than the one inside the
``cryptography`` wheel, the gap is the library's, not ours.

``python -m benchmarks.floor_system [--connections N] [--no-release-buffers]`` prints one JSON
line; it prints ``{"error": ...}`` when there is no ``libssl.so.3`` to load.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from collections.abc import Sequence
from typing import Any

from .common import BENCH_IDENTITY, BENCH_KEY, BENCH_MTU, ECDHE_PSK_SUITE, self_memory_report

__all__ = ["measure_system_floor"]

# OpenSSL constants (stable ABI values from the 3.x headers).
_SSL_CTRL_MODE = 33
_SSL_CTRL_SET_MTU = 17
_SSL_CTRL_SET_MIN_PROTO_VERSION = 123
_SSL_CTRL_SET_MAX_PROTO_VERSION = 124
_SSL_MODE_RELEASE_BUFFERS = 0x10
_SSL_OP_NO_QUERY_MTU = 0x1000
_SSL_OP_NO_RENEGOTIATION = 0x40000000
_SSL_ERROR_WANT_READ = 2
_DTLS_1_2 = 0xFEFD

_ServerCallback = ctypes.CFUNCTYPE(
    ctypes.c_uint, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint
)
_ClientCallback = ctypes.CFUNCTYPE(
    ctypes.c_uint,
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_uint,
    ctypes.c_void_p,
    ctypes.c_uint,
)


def _server_psk(ssl: Any, identity: bytes | None, psk: int, max_psk_len: int) -> int:
    if identity != BENCH_IDENTITY:
        return 0
    ctypes.memmove(psk, BENCH_KEY, len(BENCH_KEY))
    return len(BENCH_KEY)


def _client_psk(
    ssl: Any, hint: bytes | None, identity: int, max_identity: int, psk: int, max_psk: int
) -> int:
    name = BENCH_IDENTITY + b"\0"
    ctypes.memmove(identity, name, len(name))
    ctypes.memmove(psk, BENCH_KEY, len(BENCH_KEY))
    return len(BENCH_KEY)


# Kept at module level: the C side holds raw pointers to these.
_SERVER_CALLBACK = _ServerCallback(_server_psk)
_CLIENT_CALLBACK = _ClientCallback(_client_psk)


class _SystemOpenSSL:
    def __init__(self) -> None:
        self.ssl = ctypes.CDLL("libssl.so.3")
        self.crypto = ctypes.CDLL("libcrypto.so.3")
        pointer_returning = [
            (self.ssl, "DTLS_server_method"),
            (self.ssl, "DTLS_client_method"),
            (self.ssl, "SSL_CTX_new"),
            (self.ssl, "SSL_new"),
            (self.crypto, "BIO_new"),
            (self.crypto, "BIO_s_mem"),
            (self.crypto, "OpenSSL_version"),
        ]
        for library, name in pointer_returning:
            getattr(library, name).restype = ctypes.c_void_p
        self.crypto.OpenSSL_version.restype = ctypes.c_char_p
        self.ssl.SSL_CTX_new.argtypes = [ctypes.c_void_p]
        self.ssl.SSL_new.argtypes = [ctypes.c_void_p]
        self.crypto.BIO_new.argtypes = [ctypes.c_void_p]
        self.ssl.SSL_CTX_ctrl.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_long,
            ctypes.c_void_p,
        ]
        self.ssl.SSL_CTX_ctrl.restype = ctypes.c_long
        self.ssl.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ssl.SSL_ctrl.restype = ctypes.c_long
        self.ssl.SSL_CTX_set_options.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        self.ssl.SSL_CTX_set_options.restype = ctypes.c_uint64
        self.ssl.SSL_CTX_set_cipher_list.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.ssl.SSL_CTX_set_psk_server_callback.argtypes = [ctypes.c_void_p, _ServerCallback]
        self.ssl.SSL_CTX_set_psk_client_callback.argtypes = [ctypes.c_void_p, _ClientCallback]
        for name in ("SSL_set_accept_state", "SSL_set_connect_state", "SSL_free"):
            getattr(self.ssl, name).argtypes = [ctypes.c_void_p]
        self.ssl.SSL_set_bio.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        for name in ("SSL_do_handshake", "SSL_get_error", "SSL_read", "SSL_write"):
            getattr(self.ssl, name).restype = ctypes.c_int
        self.ssl.SSL_do_handshake.argtypes = [ctypes.c_void_p]
        self.ssl.SSL_get_error.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.ssl.SSL_read.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self.ssl.SSL_write.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        self.crypto.BIO_read.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self.crypto.BIO_write.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self.buffer = ctypes.create_string_buffer(65_536)

    @property
    def version(self) -> str:
        raw: bytes = self.crypto.OpenSSL_version(0)
        return raw.decode()

    def context(self, *, server: bool, suite: str, release_buffers: bool) -> int:
        method = self.ssl.DTLS_server_method() if server else self.ssl.DTLS_client_method()
        context: int = self.ssl.SSL_CTX_new(method)
        self.ssl.SSL_CTX_ctrl(context, _SSL_CTRL_SET_MIN_PROTO_VERSION, _DTLS_1_2, None)
        self.ssl.SSL_CTX_ctrl(context, _SSL_CTRL_SET_MAX_PROTO_VERSION, _DTLS_1_2, None)
        self.ssl.SSL_CTX_set_options(context, _SSL_OP_NO_QUERY_MTU | _SSL_OP_NO_RENEGOTIATION)
        if release_buffers:
            self.ssl.SSL_CTX_ctrl(context, _SSL_CTRL_MODE, _SSL_MODE_RELEASE_BUFFERS, None)
        if self.ssl.SSL_CTX_set_cipher_list(context, suite.encode("ascii")) != 1:
            raise RuntimeError(f"system OpenSSL does not know {suite}")
        if server:
            self.ssl.SSL_CTX_set_psk_server_callback(context, _SERVER_CALLBACK)
        else:
            self.ssl.SSL_CTX_set_psk_client_callback(context, _CLIENT_CALLBACK)
        return context

    def connection(self, context: int, *, server: bool) -> tuple[int, int, int]:
        """(SSL *, its read BIO, its write BIO)."""
        ssl: int = self.ssl.SSL_new(context)
        read_bio: int = self.crypto.BIO_new(self.crypto.BIO_s_mem())
        write_bio: int = self.crypto.BIO_new(self.crypto.BIO_s_mem())
        self.ssl.SSL_set_bio(ssl, read_bio, write_bio)
        if server:
            self.ssl.SSL_set_accept_state(ssl)
        else:
            self.ssl.SSL_set_connect_state(ssl)
        self.ssl.SSL_ctrl(ssl, _SSL_CTRL_SET_MTU, BENCH_MTU, None)
        return ssl, read_bio, write_bio

    def pump(self, source: tuple[int, int, int], sink: tuple[int, int, int]) -> None:
        size = self.crypto.BIO_read(source[2], self.buffer, len(self.buffer))
        if size > 0:
            self.crypto.BIO_write(sink[1], self.buffer, size)

    def handshake(self, server: tuple[int, int, int], client: tuple[int, int, int]) -> None:
        for _ in range(20):
            done = 0
            for side in (client, server):
                result = self.ssl.SSL_do_handshake(side[0])
                if result == 1:
                    done += 1
                elif self.ssl.SSL_get_error(side[0], result) != _SSL_ERROR_WANT_READ:
                    raise RuntimeError("system OpenSSL handshake failed")
            self.pump(client, server)
            self.pump(server, client)
            if done == 2:
                return
        raise RuntimeError("system OpenSSL handshake did not complete")

    def exchange(self, server: tuple[int, int, int], client: tuple[int, int, int]) -> None:
        self.ssl.SSL_write(client[0], b"ping", 4)
        self.pump(client, server)
        self.ssl.SSL_read(server[0], self.buffer, len(self.buffer))
        self.ssl.SSL_write(server[0], b"pong", 4)
        self.pump(server, client)
        self.ssl.SSL_read(client[0], self.buffer, len(self.buffer))


def measure_system_floor(suite: str, connections: int, release_buffers: bool) -> dict[str, Any]:
    library = _SystemOpenSSL()
    server_context = library.context(server=True, suite=suite, release_buffers=release_buffers)
    client_context = library.context(server=False, suite=suite, release_buffers=release_buffers)

    def established() -> int:
        server = library.connection(server_context, server=True)
        client = library.connection(client_context, server=False)
        library.handshake(server, client)
        library.exchange(server, client)
        library.ssl.SSL_free(client[0])  # frees its BIOs too
        return server[0]

    warm = [established() for _ in range(16)]
    for ssl in warm:
        library.ssl.SSL_free(ssl)
    before = self_memory_report(0, 0, {})
    kept = [established() for _ in range(connections)]
    after = self_memory_report(1, len(kept), {})
    result: dict[str, Any] = {
        "library": "system",
        "openssl": library.version,
        "suite": suite,
        "connections": connections,
        "release_buffers": release_buffers,
        "stage": "established",
        "rss_kib_per_connection": round((after.rss_kib - before.rss_kib) / connections, 2),
    }
    if before.malloc_in_use is not None and after.malloc_in_use is not None:
        growth = after.malloc_in_use - before.malloc_in_use
        result["malloc_in_use_kib_per_connection"] = round(growth / 1024 / connections, 2)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="per-connection memory of the system OpenSSL")
    parser.add_argument("--suite", default=ECDHE_PSK_SUITE)
    parser.add_argument("--connections", type=int, default=2_000)
    parser.add_argument("--no-release-buffers", action="store_true")
    arguments = parser.parse_args(argv)
    try:
        result = measure_system_floor(
            arguments.suite, arguments.connections, not arguments.no_release_buffers
        )
    except (OSError, RuntimeError, AttributeError) as error:
        result = {"error": f"system OpenSSL probe unavailable: {error}"}
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
