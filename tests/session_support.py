"""Session pairs in memory for the record-layer and Connection ID tests.

:func:`begin_pair` starts a client and a server :class:`~trio_dtls_server._session.DTLSSession`
(``support.begin_handshake_in_memory`` with the suite first); :func:`cid_handshake` does the
same with the connection_id callbacks installed; :func:`zero_key_protection` is a record layer
with all-zero keys that opens what it sealed itself.  Everything runs with explicit ``now``.
"""

from __future__ import annotations

from typing import Unpack

import support
from support import IDENTITY, KEY, InMemoryHandshake

from trio_dtls_server import RetransmitPolicy
from trio_dtls_server._openssl import install_client_connection_id, install_server_connection_id
from trio_dtls_server._records import AeadSuite, RecordProtection
from trio_dtls_server._session import DTLSSession

IDENTITY_BYTES = IDENTITY.encode("latin-1")
GCM = "PSK-AES128-GCM-SHA256"
NOW = 0.0
SERVER_CID = b"SRVCID"
CLIENT_CID = b"\x01\x02\x03"


def begin_pair(
    ciphers: str = GCM, /, **options: Unpack[support.HandshakeOptions]
) -> InMemoryHandshake:
    """``support.begin_handshake_in_memory`` with the suite first, :data:`GCM` by default."""
    options["ciphers"] = ciphers
    return support.begin_handshake_in_memory(now=NOW, **options)


def zero_key_protection(suite: AeadSuite, next_sequence: int) -> RecordProtection:
    """A :class:`RecordProtection` with all-zero keys and IVs: it opens what it sealed itself."""
    return RecordProtection(
        suite,
        epoch=1,
        read_key=bytes(suite.key_length),
        read_iv=bytes(suite.implicit_iv_length),
        write_key=bytes(suite.key_length),
        write_iv=bytes(suite.implicit_iv_length),
        next_sequence=next_sequence,
    )


def cid_handshake(
    *,
    key: bytes = KEY,
    client_cid: bytes | None = CLIENT_CID,
    server_cid: bytes | None = SERVER_CID,
    ciphers: str = GCM,
    server_releases: bool = True,
    policy: RetransmitPolicy | None = None,
    run: bool = True,
) -> support.InMemoryHandshake:
    """A client and a server session whose contexts carry the connection_id callbacks.

    ``client_cid``: what the client asks for (None: no extension); ``server_cid``: what the
    server would issue (None: it never answers, like ``--cid-length 0``).
    """
    client_ssl = support.client_context(ciphers)
    install_client_connection_id(client_ssl)
    server_ssl = support.server_context(None, ciphers)
    install_server_connection_id(server_ssl)
    chosen = policy or RetransmitPolicy()
    client = DTLSSession.client(
        client_ssl,
        now=0.0,
        mtu=1400,
        policy=chosen,
        identity=IDENTITY_BYTES,
        key=key,
        connection_id=client_cid,
    )
    first = client.take_datagrams()
    client.receive_datagram(support.hello_verify_request_for(first[0]), 0.0)
    second = client.take_datagrams()
    server = DTLSSession.server(
        server_ssl,
        second[0],
        now=0.0,
        mtu=1400,
        policy=chosen,
        psk_lookup={IDENTITY_BYTES: KEY}.get,
        release_openssl=server_releases,
        connection_id=server_cid,
    )
    result = support.InMemoryHandshake(
        client, server, server_events=list(server.startup_events), client_datagrams=first + second
    )
    return support.exchange(result) if run else result
