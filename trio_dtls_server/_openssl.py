"""The glue between pyOpenSSL and what pyOpenSSL does not expose: PSK and a few DTLS knobs.

pyOpenSSL has no pre-shared-key API, but the ``cryptography`` cffi bindings it is built on do
(``SSL_CTX_set_psk_server_callback`` and friends).  This module is the only place that touches
those bindings, so the rest of the package deals in plain pyOpenSSL objects.

OpenSSL's PSK callbacks are synchronous C callbacks that receive an ``SSL *``.  We map that
pointer back to the pyOpenSSL ``Connection`` (pyOpenSSL keeps the same mapping for its own
callbacks) and from there, through ``Connection.get_app_data()``, to the object that owns the
connection and knows how to answer: anything implementing :class:`PskResponder`.  An exception
cannot propagate out of a C callback, so every callback catches everything and answers
"unknown identity" (a failed handshake) instead.
"""

from __future__ import annotations

from typing import Any, Protocol

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

__all__ = [
    "DTLS_1_2",
    "PskResponder",
    "drain_write_bio",
    "install_client_psk",
    "install_server_psk",
    "new_dtls_context",
    "openssl_error_reason",
]

_binding = Binding()
_ffi: Any = _binding.ffi
_lib: Any = _binding.lib

#: The wire version number of DTLS 1.2 (``DTLS1_2_VERSION``); pyOpenSSL has no constant for it.
DTLS_1_2 = 0xFEFD

# OpenSSL hands PSK callbacks buffers of at most PSK_MAX_PSK_LEN (512) bytes.
_SERVER_PSK_SIGNATURE = "unsigned int(SSL *, const char *, unsigned char *, unsigned int)"
_CLIENT_PSK_SIGNATURE = (
    "unsigned int(SSL *, const char *, char *, unsigned int, unsigned char *, unsigned int)"
)


class PskResponder(Protocol):
    """What a connection's app data must offer so that the PSK callbacks can answer.

    The server side is asked for the key of the identity the client sent; the client side is
    asked for its identity and key given the server's hint.  Returning ``None`` fails the
    handshake (OpenSSL then sends the ``unknown_psk_identity`` alert).
    """

    def psk_for_identity(self, identity: bytes) -> bytes | None: ...

    def psk_identity_and_key(self, hint: bytes | None) -> tuple[bytes, bytes] | None: ...


def _responder_for(ssl: Any) -> PskResponder | None:
    connection = SSL.Connection._reverse_mapping.get(ssl)
    if connection is None:
        return None
    responder: PskResponder | None = connection.get_app_data()
    return responder


@_ffi.callback(_SERVER_PSK_SIGNATURE)  # type: ignore[untyped-decorator]
def _server_psk_callback(ssl: Any, identity: Any, psk: Any, max_psk_len: int) -> int:
    try:
        responder = _responder_for(ssl)
        if responder is None or identity == _ffi.NULL:
            return 0
        key = responder.psk_for_identity(_ffi.string(identity))
        if not key or len(key) > max_psk_len:
            return 0
        _ffi.memmove(psk, key, len(key))
        return len(key)
    except BaseException:  # noqa: BLE001 - nothing may unwind through OpenSSL's C frames
        return 0


@_ffi.callback(_CLIENT_PSK_SIGNATURE)  # type: ignore[untyped-decorator]
def _client_psk_callback(
    ssl: Any, hint: Any, identity: Any, max_identity_len: int, psk: Any, max_psk_len: int
) -> int:
    try:
        responder = _responder_for(ssl)
        if responder is None:
            return 0
        hint_bytes = None if hint == _ffi.NULL else _ffi.string(hint)
        answer = responder.psk_identity_and_key(hint_bytes)
        if answer is None:
            return 0
        name, key = answer
        # The identity must be NUL-terminated and fit, terminator included.
        if len(name) + 1 > max_identity_len or not key or len(key) > max_psk_len:
            return 0
        _ffi.memmove(identity, name + b"\0", len(name) + 1)
        _ffi.memmove(psk, key, len(key))
        return len(key)
    except BaseException:  # noqa: BLE001 - nothing may unwind through OpenSSL's C frames
        return 0


def new_dtls_context(*, server: bool, ciphers: str) -> SSL.Context:
    """A DTLS 1.2-only context with the options a memory-BIO DTLS endpoint needs.

    * ``OP_NO_QUERY_MTU``: there is no socket under the BIO to ask; we set the MTU ourselves.
    * ``MODE_RELEASE_BUFFERS``: idle connections give back their record buffers (≈17 KB each).
    * ``OP_NO_RENEGOTIATION``: renegotiation in DTLS buys nothing and costs attack surface.
    """
    context = SSL.Context(SSL.DTLS_SERVER_METHOD if server else SSL.DTLS_CLIENT_METHOD)
    context.set_min_proto_version(DTLS_1_2)
    context.set_max_proto_version(DTLS_1_2)
    context.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(ciphers.encode("ascii"))
    return context


def install_server_psk(context: SSL.Context, identity_hint: bytes | None) -> None:
    """Route the context's PSK lookups to each connection's :class:`PskResponder`."""
    _lib.SSL_CTX_set_psk_server_callback(context._context, _server_psk_callback)
    if identity_hint:
        _lib.SSL_CTX_use_psk_identity_hint(context._context, identity_hint)


def install_client_psk(context: SSL.Context) -> None:
    """Route the context's PSK questions to each connection's :class:`PskResponder`."""
    _lib.SSL_CTX_set_psk_client_callback(context._context, _client_psk_callback)


# BIO_get_mem_data wants somewhere to put a pointer we do not use; one is enough (Trio runs
# callbacks on one thread, and the pointer is never read).
_mem_data_pointer = _ffi.new("char **")


def drain_write_bio(connection: SSL.Connection) -> bytes:
    """Everything OpenSSL has written into the connection's outgoing memory BIO, or ``b""``.

    ``Connection.bio_read(n)`` allocates an ``n``-byte buffer per call; asking the BIO how much
    it holds first means we allocate exactly what is there and never raise for "nothing".
    """
    pending = _lib.BIO_get_mem_data(connection._from_ssl, _mem_data_pointer)
    if pending <= 0:
        return b""
    return connection.bio_read(pending)


def openssl_error_reason(error: SSL.Error) -> str:
    """A short, human reason out of pyOpenSSL's error list (``[(lib, func, reason), ...]``)."""
    reasons: list[str] = []
    for item in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(item, tuple) and item:
            reasons.append(str(item[-1]))
    if reasons:
        return "; ".join(dict.fromkeys(reasons))
    return str(error) or type(error).__name__
