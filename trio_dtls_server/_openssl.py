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

OpenSSL reads the peer's *warning* alerts without a word.  :func:`watch_alerts_read` installs
an info callback (``SSL_set_info_callback``) on one connection that tells its app data
(an :class:`AlertReader`) about every alert OpenSSL authenticated and read, so that the session
can end a connection whose peer sent a fatal-only description at warning level.

It also holds what the bindings offer for session resumption (the session ID context, whether
a handshake resumed, the PSK identity a resumed session was made with) and the names of the
TLS alerts, so events can say ``unknown_psk_identity (115)`` instead of a number.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from typing import Any, Protocol

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

from ._wire import (
    DTLS_1_2,
    AlertDescription,
    ExtensionType,
    MalformedDatagram,
    encode_connection_id_extension,
    parse_connection_id_extension,
)

__all__ = [
    "ALERT_NAMES",
    "DTLS_1_2",
    "GROUPS",
    "AlertReader",
    "ConnectionIdResponder",
    "PskResponder",
    "alert_name",
    "cipher_name_for_suite",
    "expect_server_name",
    "configure_session_resumption",
    "drain_write_bio",
    "install_client_connection_id",
    "install_client_psk",
    "install_server_connection_id",
    "install_server_psk",
    "new_dtls_context",
    "openssl_error_reason",
    "restrict_groups_and_signatures",
    "session_psk_identity",
    "session_reused",
    "set_session_id_context",
    "watch_alerts_read",
]

_binding = Binding()
_ffi: Any = _binding.ffi
_lib: Any = _binding.lib

# DTLS_1_2, the wire version number of DTLS 1.2 (``DTLS1_2_VERSION``; pyOpenSSL has no constant
# for it), is defined once, in _wire.py, with every other wire constant; re-exported here.

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
    * Key exchange groups :data:`GROUPS`, P-256 first (see there why).
    """
    context = SSL.Context(SSL.DTLS_SERVER_METHOD if server else SSL.DTLS_CLIENT_METHOD)
    context.set_min_proto_version(DTLS_1_2)
    context.set_max_proto_version(DTLS_1_2)
    options = SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION
    if server:
        # The profiles list suites strongest first; without this a client that offers CBC
        # or CCM_8 before AES-GCM would get the weaker suite it happened to list first.
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE
    context.set_options(options)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_cipher_list(ciphers.encode("ascii"))
    _set_groups(context, GROUPS)
    return context


#: The ECDHE groups of every context, in order of preference: the server picks the first one
#: the client offers (``OP_CIPHER_SERVER_PREFERENCE`` covers groups too), a client lists them in
#: this order.  OpenSSL's own default puts X25519 first; P-256 comes first here because RFC 7925
#: (the IoT profile of DTLS 1.2) makes it the one curve every constrained device implements, and
#: because wolfSSL 5.5 (Debian 12's) offers X25519 and then fails ECDHE-PSK with it
#: (``-352 Bad ECC Peer Key``) while it completes with P-256.  The set is OpenSSL's default set
#: for (D)TLS 1.2, only reordered.
GROUPS = "P-256:X25519:P-384:X448:P-521"


def _set_groups(context: SSL.Context, groups: str) -> None:
    if not _lib.SSL_CTX_set1_curves_list(context._context, groups.encode("ascii")):
        raise SSL.Error(f"SSL_CTX_set1_curves_list({groups!r}) failed")


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


def expect_server_name(connection: SSL.Connection, name: str) -> None:
    """Make certificate verification also require ``name`` (DNS name or IP address).

    OpenSSL's chain check alone accepts any certificate the CA signed; RFC 6125 name checking
    is a verify parameter that pyOpenSSL does not expose.  A DNS name also goes out as SNI.
    """
    param = _lib.SSL_get0_param(connection._ssl)
    try:
        packed = ipaddress.ip_address(name.split("%", 1)[0]).packed
    except ValueError:
        encoded = name.encode("idna")
        if _lib.X509_VERIFY_PARAM_set1_host(param, encoded, len(encoded)) != 1:
            raise ValueError(f"cannot check the server certificate against {name!r}") from None
        connection.set_tlsext_host_name(encoded)
        return
    if _lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed)) != 1:
        raise ValueError(f"cannot check the server certificate against {name!r}")


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


# -- alerts -------------------------------------------------------------------------------------

#: TLS alert names by number (RFC 5246 §7.2 and later registrations; see ``AlertDescription``).
ALERT_NAMES: dict[int, str] = {alert.value: alert.name for alert in AlertDescription}


class AlertReader(Protocol):
    """What a connection's app data must offer for :func:`watch_alerts_read`."""

    def alert_read(self, level: int, description: int) -> None: ...


@_ffi.callback("void(SSL *, int, int)")  # type: ignore[untyped-decorator]
def _info_callback(ssl: Any, where: int, value: int) -> None:
    if where & _READ_ALERT != _READ_ALERT:
        return  # handshake states, alerts we write: not our business
    try:
        connection = SSL.Connection._reverse_mapping.get(ssl)
        reader = None if connection is None else connection.get_app_data()
        if reader is not None:
            # OpenSSL passes (level << 8) | description.
            reader.alert_read((value >> 8) & 0xFF, value & 0xFF)
    except BaseException:  # noqa: BLE001 - nothing may unwind through OpenSSL's C frames
        return


_READ_ALERT: int = _lib.SSL_CB_READ_ALERT


def watch_alerts_read(connection: SSL.Connection) -> None:
    """Tell ``connection``'s app data (an :class:`AlertReader`) of each alert OpenSSL reads.

    Alerts reach the callback only once their record was authenticated, and in the order of
    the records; the callback runs inside ``read()``, before it returns.  Installed on an
    established connection only: during a handshake OpenSSL calls it at every state change.
    """
    _lib.SSL_set_info_callback(connection._ssl, _info_callback)


def alert_name(description: int) -> str:
    """``unknown_psk_identity (115)``: the alert's RFC name and its number, for messages."""
    return f"{ALERT_NAMES.get(description, 'unknown alert')} ({description})"


# -- session resumption -------------------------------------------------------------------------


def set_session_id_context(context: SSL.Context, session_id_context: bytes) -> None:
    """Set the context in which sessions may be resumed; a session made under another is not.

    Unlike ``Context.set_session_id`` this may be called after the context made connections
    (pyOpenSSL forbids that for its own setter): each new connection copies the value, so
    changing it makes every session issued before unresumable, tickets included.
    """
    if not 1 <= len(session_id_context) <= 32:  # SSL_MAX_SID_CTX_LENGTH
        raise ValueError("a session ID context is 1 to 32 bytes")
    if not _lib.SSL_CTX_set_session_id_context(
        context._context, session_id_context, len(session_id_context)
    ):
        raise SSL.Error("SSL_CTX_set_session_id_context failed")


def configure_session_resumption(
    context: SSL.Context, *, enabled: bool, lifetime: float, session_id_context: bytes
) -> None:
    """Server side: resume with tickets (no server state) and with OpenSSL's session-ID cache.

    ``lifetime`` (seconds) bounds both: a ticket or cached session older than that is not
    resumed.  The cache holds at most OpenSSL's built-in 20,480 sessions (the ``cryptography``
    bindings do not expose ``SSL_CTX_sess_set_cache_size``); OpenSSL evicts the oldest beyond
    that and drops expired ones as it goes.  ``enabled=False`` turns off both, so every
    handshake is a full one.
    """
    set_session_id_context(context, session_id_context)
    if not enabled:
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        context.set_options(SSL.OP_NO_TICKET)
        return
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    context.set_timeout(max(1, math.ceil(lifetime)))


def cipher_name_for_suite(connection: SSL.Connection, suite: int) -> str | None:
    """OpenSSL's name for the suite numbered ``suite``: ``ECDHE-PSK-CHACHA20-POLY1305`` for 0xCCAC.

    None for a number OpenSSL does not know.  Unlike ``get_cipher_name()``, this works in the
    middle of a handshake (OpenSSL records the chosen suite on the session only at its end).
    """
    cipher = _lib.SSL_CIPHER_find(connection._ssl, suite.to_bytes(2, "big"))
    if cipher == _ffi.NULL:
        return None
    name: bytes = _ffi.string(_lib.SSL_CIPHER_get_name(cipher))
    return name.decode("ascii")


def session_reused(connection: SSL.Connection) -> bool:
    """True if the (finished) handshake resumed an earlier session: an abbreviated handshake."""
    return bool(_lib.SSL_session_reused(connection._ssl))


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """Split DER into (tag, content) pairs, one level deep.  The bytes come from OpenSSL."""
    items: list[tuple[int, bytes]] = []
    position = 0
    while position + 2 <= len(data):
        tag, length = data[position], data[position + 1]
        position += 2
        if length & 0x80:
            width = length & 0x7F
            length = int.from_bytes(data[position : position + width], "big")
            position += width
        items.append((tag, data[position : position + length]))
        position += length
    return items


def _session_fields(connection: SSL.Connection) -> dict[int, bytes]:
    """The tagged fields of the DER form of the connection's session (``SSL_SESSION_ASN1`` in
    OpenSSL's ``ssl_asn1.c``), by tag byte; empty without a session."""
    session = _lib.SSL_get_session(connection._ssl)
    if session == _ffi.NULL:
        return {}
    length = _lib.i2d_SSL_SESSION(session, _ffi.NULL)
    if length <= 0:
        return {}
    buffer = _ffi.new("unsigned char[]", length)
    cursor = _ffi.new("unsigned char **", buffer)
    if _lib.i2d_SSL_SESSION(session, cursor) != length:
        return {}
    outer = _der_items(bytes(_ffi.buffer(buffer, length)))
    if not outer or outer[0][0] != 0x30:  # SEQUENCE
        return {}
    return dict(_der_items(outer[0][1]))


def session_psk_identity(connection: SSL.Connection) -> bytes | None:
    """The PSK identity of the connection's session, or None (certificate session, no session).

    A resumed handshake never calls the PSK callback, so this is how the identity of a resumed
    peer is known.  The bindings lack ``SSL_get_psk_identity``; the identity is field ``[8]`` of
    the DER form of the session.
    """
    content = _session_fields(connection).get(0xA8)  # [8] EXPLICIT OCTET STRING psk_identity
    if content is None:
        return None
    inner = _der_items(content)
    if inner and inner[0][0] == 0x04:
        return inner[0][1]
    return None


def session_max_fragment_length(connection: SSL.Connection) -> int | None:
    """The record plaintext limit the peer negotiated (RFC 6066 max_fragment_length), or None.

    Field ``[17]`` of the session's DER form holds the mode, 1 to 4 for 2^9 to 2^12 bytes (the
    bindings lack ``SSL_SESSION_get_max_fragment_length``).
    """
    content = _session_fields(connection).get(0xB1)  # [17] EXPLICIT INTEGER max_fragment_len_mode
    if content is None:
        return None
    inner = _der_items(content)
    if not inner or inner[0][0] != 0x02:
        return None
    mode = int.from_bytes(inner[0][1], "big")
    return 2 ** (8 + mode) if 1 <= mode <= 4 else None


# -- what a lowered security level must not lower -----------------------------------------------

#: Key exchange groups when the security level is lowered (RFC 7925 needs only P-256): the
#: first three of :data:`GROUPS`, in the same order.
SAFE_GROUPS = "P-256:X25519:P-384"
#: Signature algorithms when the security level is lowered: no SHA-1, no MD5.
SAFE_SIGNATURE_ALGORITHMS = ":".join(
    [
        "ECDSA+SHA256",
        "ECDSA+SHA384",
        "ed25519",
        "rsa_pss_rsae_sha256",
        "rsa_pss_rsae_sha384",
        "RSA+SHA256",
        "RSA+SHA384",
    ]
)


def restrict_groups_and_signatures(context: SSL.Context) -> None:
    """Pin ECDHE groups and signature algorithms to strong ones.

    ``@SECLEVEL=0`` (needed for the 8-byte-tag CCM_8 suites) would also let small groups and
    SHA-1 signatures through; these two lists take that back, so the lowered level only
    admits the suites that were asked for.
    """
    _set_groups(context, SAFE_GROUPS)
    if not _lib.SSL_CTX_set1_sigalgs_list(
        context._context, SAFE_SIGNATURE_ALGORITHMS.encode("ascii")
    ):
        raise SSL.Error("SSL_CTX_set1_sigalgs_list failed")


# -- connection IDs (RFC 9146) ------------------------------------------------------------------


class ConnectionIdResponder(Protocol):
    """What a connection's app data must offer for the ``connection_id`` extension callbacks.

    OpenSSL knows nothing of RFC 9146; the extension is a custom one (``SSL_CTX_add_*_custom_ext``,
    OpenSSL's legacy API: TLS 1.2 ClientHello and ServerHello only, and *skipped on resumed
    handshakes*).  Client: :meth:`connection_id_to_offer` fills the ClientHello, and
    :meth:`connection_id_received` gets the server's answer.  Server:
    :meth:`connection_id_received` gets the client's offer (only called if it made one), then
    :meth:`connection_id_to_answer` decides whether the ServerHello answers.
    """

    def connection_id_to_offer(self) -> bytes | None: ...

    def connection_id_received(self, cid: bytes) -> bool: ...

    def connection_id_to_answer(self) -> bytes | None: ...


_ADD_SIGNATURE = "int(SSL *, unsigned int, const unsigned char **, size_t *, int *, void *)"
_PARSE_SIGNATURE = "int(SSL *, unsigned int, const unsigned char *, size_t, int *, void *)"
_DECODE_ERROR = int(AlertDescription.decode_error)
_INTERNAL_ERROR_ALERT = int(AlertDescription.internal_error)
# The extension body handed to OpenSSL must live until OpenSSL copied it (it does so inside the
# add callback's caller, before the next one runs: Trio runs one callback at a time).  We keep
# the latest one alive here; no free callback is needed.
_extension_buffer: list[Any] = [None]


def _cid_responder(ssl: Any) -> ConnectionIdResponder | None:
    connection = SSL.Connection._reverse_mapping.get(ssl)
    if connection is None:
        return None
    responder: ConnectionIdResponder | None = connection.get_app_data()
    return responder


def _hand_extension(out: Any, outlen: Any, cid: bytes) -> int:
    body = encode_connection_id_extension(cid)
    buffer = _ffi.new("unsigned char[]", body)
    _extension_buffer[0] = buffer
    out[0] = buffer
    outlen[0] = len(body)
    return 1


def _add_cid(
    ssl: Any,
    out: Any,
    outlen: Any,
    al: Any,
    choose: Callable[[ConnectionIdResponder], bytes | None],
) -> int:
    """The add callbacks' body: the CID that ``choose`` picks, if any, as the extension.

    Returns what OpenSSL expects of an add callback: 1 (added), 0 (nothing to add) or -1 with
    the alert in ``al`` (any exception: nothing may unwind through OpenSSL's C frames).
    """
    try:
        responder = _cid_responder(ssl)
        cid = None if responder is None else choose(responder)
        return 0 if cid is None else _hand_extension(out, outlen, cid)
    except BaseException:  # noqa: BLE001 - nothing may unwind through OpenSSL's C frames
        al[0] = _INTERNAL_ERROR_ALERT
        return -1


@_ffi.callback(_ADD_SIGNATURE)  # type: ignore[untyped-decorator]
def _client_cid_add(ssl: Any, ext_type: int, out: Any, outlen: Any, al: Any, arg: Any) -> int:
    return _add_cid(ssl, out, outlen, al, lambda responder: responder.connection_id_to_offer())


@_ffi.callback(_ADD_SIGNATURE)  # type: ignore[untyped-decorator]
def _server_cid_add(ssl: Any, ext_type: int, out: Any, outlen: Any, al: Any, arg: Any) -> int:
    return _add_cid(ssl, out, outlen, al, lambda responder: responder.connection_id_to_answer())


@_ffi.callback(_PARSE_SIGNATURE)  # type: ignore[untyped-decorator]
def _cid_parse(ssl: Any, ext_type: int, data: Any, length: int, al: Any, arg: Any) -> int:
    try:
        responder = _cid_responder(ssl)
        if responder is None:
            return 1
        cid = parse_connection_id_extension(bytes(_ffi.buffer(data, length)))
        if responder.connection_id_received(cid):
            return 1
        al[0] = _DECODE_ERROR
        return 0
    except MalformedDatagram:
        al[0] = _DECODE_ERROR
        return 0
    except BaseException:  # noqa: BLE001 - nothing may unwind through OpenSSL's C frames
        al[0] = _INTERNAL_ERROR_ALERT
        return 0


def install_server_connection_id(context: SSL.Context) -> None:
    """Let the context's connections negotiate RFC 9146 connection IDs as a server.

    OpenSSL calls the parse callback only for a ClientHello that carries extension 54, and the
    add callback only then; each connection's app data (a :class:`ConnectionIdResponder`)
    answers.  On a resumed handshake OpenSSL skips both: the server must not resume a client
    that offers the extension (see ``DTLSServer``).
    """
    if not _lib.SSL_CTX_add_server_custom_ext(
        context._context,
        ExtensionType.connection_id,
        _server_cid_add,
        _ffi.NULL,
        _ffi.NULL,
        _cid_parse,
        _ffi.NULL,
    ):
        raise SSL.Error("SSL_CTX_add_server_custom_ext(connection_id) failed")


def install_client_connection_id(context: SSL.Context) -> None:
    """Let the context's connections offer RFC 9146 connection IDs as a client (each
    connection's app data decides, see :class:`ConnectionIdResponder`)."""
    if not _lib.SSL_CTX_add_client_custom_ext(
        context._context,
        ExtensionType.connection_id,
        _client_cid_add,
        _ffi.NULL,
        _ffi.NULL,
        _cid_parse,
        _ffi.NULL,
    ):
        raise SSL.Error("SSL_CTX_add_client_custom_ext(connection_id) failed")


def current_cipher_name(connection: SSL.Connection) -> str | None:
    """OpenSSL's name of the connection's current cipher (``SSL_get_current_cipher``), or None."""
    cipher = _lib.SSL_get_current_cipher(connection._ssl)
    if cipher == _ffi.NULL:
        return None
    name: bytes = _ffi.string(_lib.SSL_CIPHER_get_name(cipher))
    return name.decode("ascii")
