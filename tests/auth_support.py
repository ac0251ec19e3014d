"""Helpers for the authentication tests: certificates made at test time, and a recording handler.

Used by the certificate tests (``test_certificates.py``, ``test_cipher_profiles.py``,
``test_resumption.py``, ``test_interop_auth.py`` and others; pytest puts ``tests/`` on the
path).  Nothing here asserts by itself.  ``conftest.py`` turns :func:`make_credentials` into the
module-scoped ``credentials`` fixture.

Certificates come from ``trustme``: a CA, a second CA nobody trusts, and leaf certificates with
ECDSA P-256 keys (RFC 7925's curve) unless said otherwise, each written as one PEM file holding
the key and the certificate.  :func:`self_signed` makes the few that ``trustme`` will not.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from trio_dtls_server import DTLSClient, DTLSConnection, ServerEvent

if TYPE_CHECKING:
    from support import RunningServer

__all__ = [
    "CLIENT_COMMON_NAME",
    "CLIENT_SUBJECT",
    "IDENTITY",
    "KEY",
    "ConnectionLog",
    "Credentials",
    "connect",
    "make_credentials",
    "quiet",
    "self_signed",
]

IDENTITY = "device-1"
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")

CLIENT_COMMON_NAME = "device-7"
#: The subject of the good client certificate, as DTLSConnection.peer_subject renders it.
CLIENT_SUBJECT = f"CN={CLIENT_COMMON_NAME},OU=devices,O=trio-dtls tests"


@dataclass(frozen=True)
class Credentials:
    """PEM files in one directory; ``*_pem`` files hold a private key and its certificate."""

    directory: Path
    ca: Path
    untrusted_ca: Path
    server_pem: Path
    server_rsa_pem: Path
    expired_server_pem: Path
    client_pem: Path
    client_from_untrusted_ca_pem: Path
    expired_client_pem: Path
    server_key: Path
    server_certificate: Path
    client_certificate: x509.Certificate


def self_signed(
    key: CertificateIssuerPrivateKeyTypes, common_name: str, organization: str | None = None
) -> x509.Certificate:
    """A certificate for ``key``, signed by itself, valid from a day ago for two days.

    For the tests that need a certificate ``trustme`` will not make (a weak key, a subject
    with hostile characters); the subject is ``CN=common_name`` (then ``O=organization``).
    """
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    name = x509.Name(attributes)
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _write(directory: Path, name: str, leaf: trustme.LeafCert) -> Path:
    path = directory / name
    leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


def make_credentials(directory: Path) -> Credentials:
    """Make every certificate the tests need, in ``directory``."""
    ca = trustme.CA(organization_name="trio-dtls test CA")
    untrusted = trustme.CA(organization_name="nobody trusts this CA")
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    untrusted.cert_pem.write_to_path(str(directory / "untrusted-ca.pem"))
    server = ca.issue_cert("server.test", "127.0.0.1")
    # The key and the certificate also as separate files, as most deployments keep them.
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    client = ca.issue_cert(
        common_name=CLIENT_COMMON_NAME,
        organization_name="trio-dtls tests",
        organization_unit_name="devices",
    )
    return Credentials(
        directory=directory,
        ca=directory / "ca.pem",
        untrusted_ca=directory / "untrusted-ca.pem",
        server_pem=_write(directory, "server.pem", server),
        server_rsa_pem=_write(
            directory,
            "server-rsa.pem",
            ca.issue_cert("server.test", "127.0.0.1", key_type=trustme.KeyType.RSA),
        ),
        expired_server_pem=_write(
            directory,
            "expired-server.pem",
            ca.issue_cert(
                "server.test",
                "127.0.0.1",
                not_before=long_ago,
                not_after=long_ago + datetime.timedelta(1),
            ),
        ),
        client_pem=_write(directory, "client.pem", client),
        client_from_untrusted_ca_pem=_write(
            directory, "stranger.pem", untrusted.issue_cert(common_name="stranger")
        ),
        expired_client_pem=_write(
            directory,
            "expired-client.pem",
            ca.issue_cert(
                common_name="old-device",
                not_before=long_ago,
                not_after=long_ago + datetime.timedelta(1),
            ),
        ),
        server_key=directory / "server.key",
        server_certificate=directory / "server.crt",
        client_certificate=x509.load_pem_x509_certificate(client.cert_chain_pems[0].bytes()),
    )


@dataclass
class ConnectionLog:
    """A server handler that records each :class:`DTLSConnection` it gets, then echoes."""

    connections: list[DTLSConnection] = field(default_factory=list)
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, connection: DTLSConnection) -> None:
        self.connections.append(connection)
        self._arrived.set()
        self._arrived = trio.Event()
        async for data in connection:
            await connection.send(b"echo: " + data)

    async def wait_for(self, count: int) -> DTLSConnection:
        """The ``count``-th connection (from 1), once it has arrived."""
        with trio.fail_after(20):
            while len(self.connections) < count:
                await self._arrived.wait()
        return self.connections[count - 1]


def quiet(event: ServerEvent) -> None:
    """An ``on_event`` for clients whose progress the test does not care about."""


async def connect(
    running: RunningServer, identity: str = IDENTITY, key: bytes = KEY, **options: Any
) -> DTLSClient:
    """Our client, connected to ``running`` with ``identity`` and ``key``, its events
    :func:`quiet`; ``options`` (``tls_session=``, ``ciphers=``...) go to
    :meth:`DTLSClient.connect`."""
    return await DTLSClient.connect(
        running.host, running.port, identity=identity, key=key, on_event=quiet, **options
    )
