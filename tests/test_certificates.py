"""Certificates: the server's own, client certificates none/optional/required, bad CA, expiry.

Every certificate is made by ``trustme`` when the module starts (ECDSA P-256 unless the test
says RSA).  Each failure must reach the failing side as a fatal alert, so the client's
:class:`HandshakeError` comes at once (these tests would otherwise wait out the 30 s handshake
timeout), and the server's ``handshake_failed`` event names the alert.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import support
import trio
from auth_support import (
    CLIENT_SUBJECT,
    IDENTITY,
    KEY,
    ConnectionLog,
    Credentials,
    quiet,
    self_signed,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL, crypto

from trio_dtls_server import (
    CertificateConfig,
    CertificateError,
    DTLSClient,
    DTLSServer,
    HandshakeError,
)
from trio_dtls_server._certificates import _strong_keys_only, load_certificate_config


async def connect(running: support.RunningServer, **options: object) -> tuple[DTLSClient, float]:
    started = trio.current_time()
    client = await DTLSClient.connect(
        running.host,
        running.port,
        on_event=quiet,
        handshake_timeout=30.0,
        **options,  # type: ignore[arg-type]
    )
    return client, trio.current_time() - started


async def refused(running: support.RunningServer, **options: object) -> HandshakeError:
    """Connect and expect a HandshakeError (``error.alert`` says which alert, if one came)."""
    with pytest.raises(HandshakeError) as error:
        await DTLSClient.connect(
            running.host,
            running.port,
            on_event=quiet,
            handshake_timeout=30.0,
            **options,  # type: ignore[arg-type]
        )
    return error.value


# -- configuration errors, at start-up -----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"client_certificates": "sometimes"},
            "client_certificates must be one of none, optional, required, not 'sometimes'",
        ),
        (
            {"client_certificates": "required"},
            "client_certificates='required' needs client_ca, the CA bundle that client "
            "certificates must chain to",
        ),
        (
            {"client_ca": "ca.pem"},
            "client_ca is set but client_certificates is 'none': say 'optional' or "
            "'required' to verify client certificates",
        ),
    ],
)
def test_certificate_config_refuses_contradictions(options: dict[str, str], message: str) -> None:
    with pytest.raises(CertificateError) as error:
        CertificateConfig("server.pem", **options)  # type: ignore[arg-type]
    assert str(error.value) == message


def test_from_options_refuses_a_key_without_a_certificate() -> None:
    assert CertificateConfig.from_options(certificate=None) is None
    with pytest.raises(CertificateError) as error:
        CertificateConfig.from_options(certificate=None, private_key="server.key")
    assert str(error.value) == "private key given without a certificate"
    with pytest.raises(CertificateError) as error:
        CertificateConfig.from_options(certificate=None, client_certificates="required")
    assert str(error.value) == "client_certificates='required' given without a certificate"
    config = CertificateConfig.from_options(certificate="server.crt", private_key="server.key")
    assert config == CertificateConfig("server.crt", "server.key")


def test_a_missing_file_is_named(credentials: Credentials) -> None:
    missing = credentials.directory / "nope.pem"
    with pytest.raises(CertificateError) as error:
        DTLSServer(certificate=CertificateConfig(missing))
    assert str(error.value) == (
        f"cannot read the certificate file {str(missing)!r}: No such file or directory"
    )


def test_a_key_from_another_certificate_is_refused(credentials: Credentials) -> None:
    config = CertificateConfig(credentials.server_certificate, credentials.client_pem)
    with pytest.raises(CertificateError) as error:
        DTLSServer(certificate=config)
    assert str(error.value) == (
        f"the private key in {str(credentials.client_pem)!r} does not belong to the certificate "
        f"in {str(credentials.server_certificate)!r}"
    )


def test_a_file_without_a_certificate_is_refused(credentials: Credentials) -> None:
    with pytest.raises(CertificateError, match="holds no PEM certificate"):
        DTLSServer(certificate=CertificateConfig(credentials.server_key))


def test_a_weak_rsa_key_is_refused(tmp_path: Path, credentials: Credentials) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    key_path = tmp_path / "weak.key"
    key_path.write_bytes(
        weak.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CertificateError) as error:
        load_certificate_config(CertificateConfig(credentials.server_certificate, key_path))
    assert str(error.value) == (
        f"private key file {str(key_path)!r}: a 1024-bit RSA key is too weak (at least 2048)"
    )


def test_separate_key_and_certificate_files_load(credentials: Credentials) -> None:
    loaded = load_certificate_config(
        CertificateConfig(credentials.server_certificate, credentials.server_key)
    )
    assert loaded.key_type == "ecdsa"
    assert loaded.chain == ()


# -- certificates end to end ---------------------------------------------------------------------


async def test_ecdsa_p256_end_to_end_without_psk(credentials: Credentials) -> None:
    log = ConnectionLog()
    server = DTLSServer(certificate=CertificateConfig(credentials.server_pem), handler=log)
    assert server.cipher_selection.suites[0].startswith("ECDHE-ECDSA-")
    async with support.serving(server) as running:
        client, _ = await connect(running, ca=credentials.ca)
        async with client:
            await client.send(b"hello")
            assert await client.receive() == b"echo: hello"
            assert client.cipher.startswith("ECDHE-ECDSA-")
            assert client.peer_certificate is not None
            assert client.peer_certificate.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
        connection = log.connections[0]
        assert connection.peer_certificate is None
        assert connection.peer_subject is None
        assert connection.psk_identity is None


async def test_an_rsa_certificate_negotiates_ecdhe_rsa(credentials: Credentials) -> None:
    server = DTLSServer(certificate=CertificateConfig(credentials.server_rsa_pem))
    assert all(suite.startswith("ECDHE-RSA-") for suite in server.cipher_selection.suites)
    async with support.serving(server) as running:
        client, _ = await connect(running, ca=credentials.ca)
        async with client:
            assert client.cipher == "ECDHE-RSA-AES256-GCM-SHA384"


@pytest.mark.parametrize("mode", ["none", "optional"])
async def test_no_client_certificate_is_fine_unless_required(
    credentials: Credentials, mode: str
) -> None:
    log = ConnectionLog()
    config = CertificateConfig(
        credentials.server_pem,
        client_certificates=mode,  # type: ignore[arg-type]
        client_ca=None if mode == "none" else credentials.ca,
    )
    server = DTLSServer(certificate=config, handler=log)
    async with support.serving(server) as running:
        client, _ = await connect(running, ca=credentials.ca)
        async with client:
            await client.send(b"x")
            assert await client.receive() == b"echo: x"
        assert log.connections[0].peer_certificate is None


async def test_mode_none_never_asks_for_the_certificate(credentials: Credentials) -> None:
    log = ConnectionLog()
    server = DTLSServer(certificate=CertificateConfig(credentials.server_pem), handler=log)
    async with support.serving(server) as running:
        client, _ = await connect(running, ca=credentials.ca, certificate=credentials.client_pem)
        async with client:
            await client.send(b"x")
            await client.receive()
        assert log.connections[0].peer_subject is None


@pytest.mark.parametrize("mode", ["optional", "required"])
async def test_a_verified_client_certificate_is_on_the_connection(
    credentials: Credentials, mode: str
) -> None:
    log = ConnectionLog()
    config = CertificateConfig(
        credentials.server_pem,
        client_certificates=mode,  # type: ignore[arg-type]
        client_ca=credentials.ca,
    )
    server = DTLSServer(certificate=config, handler=log)
    async with support.serving(server) as running:
        client, _ = await connect(running, ca=credentials.ca, certificate=credentials.client_pem)
        async with client:
            await client.send(b"who am I?")
            assert await client.receive() == b"echo: who am I?"
        connection = log.connections[0]
        assert connection.peer_certificate == credentials.client_certificate
        assert connection.peer_subject == CLIENT_SUBJECT


async def test_required_refuses_a_certificate_client_without_one(
    credentials: Credentials,
) -> None:
    config = CertificateConfig(
        credentials.server_pem, client_certificates="required", client_ca=credentials.ca
    )
    server = DTLSServer(certificate=config)
    async with support.serving(server) as running:
        error = await refused(running, ca=credentials.ca)
        assert error.alert == "handshake_failure (40)"
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith(
            "handshake failed: peer did not return a certificate; "
            "fatal alert sent: handshake_failure (40)"
        )
        assert server.statistics().handshakes_failed == {"bad certificate": 1}


async def test_required_still_lets_psk_clients_in(credentials: Credentials) -> None:
    """PSK authenticates by itself: OpenSSL never asks a PSK client for a certificate."""
    log = ConnectionLog()
    config = CertificateConfig(
        credentials.server_pem, client_certificates="required", client_ca=credentials.ca
    )
    server = DTLSServer({IDENTITY: KEY}, certificate=config, handler=log)
    async with support.serving(server) as running:
        psk_client, _ = await connect(running, identity=IDENTITY, key=KEY)
        cert_client, _ = await connect(
            running, ca=credentials.ca, certificate=credentials.client_pem
        )
        async with psk_client, cert_client:
            for client in (psk_client, cert_client):
                await client.send(b"ping")
                assert await client.receive() == b"echo: ping"
        assert "PSK" in psk_client.cipher
        assert cert_client.cipher.startswith("ECDHE-ECDSA-")
        by_kind = {c.psk_identity is not None: c for c in log.connections}
        assert by_kind[True].psk_identity == IDENTITY.encode()
        assert by_kind[True].peer_certificate is None
        assert by_kind[False].peer_subject == CLIENT_SUBJECT


async def test_a_client_certificate_from_an_unknown_ca_gets_unknown_ca(
    credentials: Credentials,
) -> None:
    config = CertificateConfig(
        credentials.server_pem, client_certificates="optional", client_ca=credentials.ca
    )
    server = DTLSServer(certificate=config)
    async with support.serving(server) as running:
        error = await refused(
            running, ca=credentials.ca, certificate=credentials.client_from_untrusted_ca_pem
        )
        assert error.alert == "unknown_ca (48)"
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith(
            "handshake failed: certificate verify failed; fatal alert sent: unknown_ca (48)"
        )


async def test_an_expired_client_certificate_gets_certificate_expired(
    credentials: Credentials,
) -> None:
    config = CertificateConfig(
        credentials.server_pem, client_certificates="required", client_ca=credentials.ca
    )
    server = DTLSServer(certificate=config)
    async with support.serving(server) as running:
        error = await refused(
            running, ca=credentials.ca, certificate=credentials.expired_client_pem
        )
        assert error.alert == "certificate_expired (45)"
        assert "tls alert certificate expired" in str(error)
        assert server.statistics().handshakes_failed == {"bad certificate": 1}


@pytest.mark.parametrize(
    ("server_file", "trusted_ca", "alert"),
    [
        ("server_pem", "untrusted_ca", "unknown_ca (48)"),
        ("expired_server_pem", "ca", "certificate_expired (45)"),
    ],
    ids=["bad-ca", "expired-server-certificate"],
)
async def test_the_client_refuses_a_server_certificate_it_cannot_verify(
    credentials: Credentials, server_file: str, trusted_ca: str, alert: str
) -> None:
    server = DTLSServer(certificate=CertificateConfig(getattr(credentials, server_file)))
    async with support.serving(server) as running:
        error = await refused(running, ca=getattr(credentials, trusted_ca))
        assert "certificate verify failed" in str(error)
        assert error.alert is None  # the client is the one that sent the alert
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith(f"the client sent the fatal alert {alert}")


async def test_a_client_without_a_ca_does_not_offer_certificate_suites(
    credentials: Credentials,
) -> None:
    """No CA, no certificate suites: a PSK client never silently trusts a certificate."""
    server = DTLSServer(certificate=CertificateConfig(credentials.server_pem))
    async with support.serving(server) as running:
        error = await refused(running, identity=IDENTITY, key=KEY)
        assert error.alert == "handshake_failure (40)"
        failed = await running.events.wait_for("handshake_failed")
        assert "no shared cipher" in failed.message


@pytest.mark.parametrize(
    ("server_side", "client_side", "alert"),
    [
        ("psk", {"identity": "intruder", "key": KEY}, "unknown_psk_identity (115)"),
        ("psk", {"identity": IDENTITY, "key": bytes(16)}, "bad_record_mac (20)"),
        (
            "psk",
            {"identity": IDENTITY, "key": KEY, "ciphers": "PSK-AES128-CBC-SHA"},
            "handshake_failure (40)",
        ),
        ("required", {"ca": "ca"}, "handshake_failure (40)"),
        (
            "required",
            {"ca": "ca", "certificate": "client_from_untrusted_ca_pem"},
            "unknown_ca (48)",
        ),
        ("required", {"ca": "ca", "certificate": "expired_client_pem"}, "certificate_expired (45)"),
    ],
    ids=[
        "unknown-identity",
        "wrong-key",
        "no-shared-cipher",
        "no-client-certificate",
        "untrusted-client-certificate",
        "expired-client-certificate",
    ],
)
async def test_every_handshake_failure_reaches_our_client_as_an_alert(
    autojump_clock: trio.testing.MockClock,
    credentials: Credentials,
    server_side: str,
    client_side: dict[str, object],
    alert: str,
) -> None:
    """The alert ends the client's handshake before its first retransmission (1 s) is due.

    Virtual time: any wait for a retransmission timer would move the clock by whole seconds.
    """
    certificate = None
    if server_side == "required":
        certificate = CertificateConfig(
            credentials.server_pem, client_certificates="required", client_ca=credentials.ca
        )
    server = DTLSServer({IDENTITY: KEY}, certificate=certificate)
    options = {
        name: getattr(credentials, str(value)) if name in ("ca", "certificate") else value
        for name, value in client_side.items()
    }
    async with support.serving(server) as running:
        started = trio.current_time()
        error = await refused(running, **options)
        assert trio.current_time() - started < 1.0
        assert error.alert == alert
        assert str(error).endswith(f"(fatal alert from the server: {alert})")
        failed = await running.events.wait_for("handshake_failed")
        assert f"fatal alert sent: {alert}" in failed.message


def test_the_verify_callback_keeps_the_key_size_floor_at_any_security_level(
    credentials: Credentials,
) -> None:
    """With @SECLEVEL=0 (the iot profile) OpenSSL would accept a 1024-bit RSA peer; we do not."""
    weak = crypto.X509.from_cryptography(
        self_signed(rsa.generate_private_key(public_exponent=65537, key_size=1024), "weak")
    )
    good = crypto.X509.from_cryptography(credentials.client_certificate)
    connection = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
    assert _strong_keys_only(connection, good, 0, 0, 1) is True
    assert _strong_keys_only(connection, weak, 0, 0, 1) is False
    # OpenSSL's own verdict always stands.
    assert _strong_keys_only(connection, good, 10, 0, 0) is False


# -- the server's name, checked by the client ----------------------------------------------------


async def test_the_client_checks_the_name_it_connected_to(credentials: Credentials) -> None:
    """connect() checks the host it was given (127.0.0.1, in the certificate as an IP SAN)."""
    server = DTLSServer(certificate=CertificateConfig(credentials.server_pem))
    async with support.serving(server) as running:
        client, _ = await connect(running, ca=credentials.ca)
        async with client:
            assert client.peer_certificate is not None
        named, _ = await connect(running, ca=credentials.ca, server_hostname="server.test")
        async with named:
            assert named.cipher.startswith("ECDHE-ECDSA-")


async def test_a_certificate_for_another_name_is_refused(credentials: Credentials) -> None:
    """A certificate the CA signed for someone else must not pass: the name check fails."""
    server = DTLSServer(certificate=CertificateConfig(credentials.server_pem))
    async with support.serving(server) as running:
        error = await refused(running, ca=credentials.ca, server_hostname="intruder.test")
        assert "certificate verify failed" in str(error)
        assert server.statistics().handshakes_completed == 0
