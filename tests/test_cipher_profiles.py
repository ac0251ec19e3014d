"""Cipher profiles: their exact OpenSSL strings, the suites each really negotiates, what each
refuses, and the start-up errors for configurations that could never work.

Every "negotiates" test is a real handshake over loopback with our client restricted to one
suite, so a profile that promised a suite OpenSSL would not deliver fails here.
"""

from __future__ import annotations

import pytest
import support
from auth_support import IDENTITY, KEY, ConnectionLog, Credentials, connect, quiet
from OpenSSL import SSL

from trio_dtls_server import (
    DEFAULT_CIPHERS,
    PROFILES,
    CertificateConfig,
    CipherConfigError,
    DTLSClient,
    DTLSServer,
    HandshakeError,
    ServerConfig,
)
from trio_dtls_server._client import _client_context
from trio_dtls_server._openssl import _lib, install_client_psk, new_dtls_context
from trio_dtls_server._profiles import CipherStringError, client_cipher_string
from trio_dtls_server._session import DTLSSession, RetransmitPolicy, SessionState
from trio_dtls_server._wire import (
    ContentType,
    parse_initial_client_hello,
    parse_records,
)


def client_suite(suite: str) -> str:
    # Our client's default security level would refuse to even offer a CCM_8 suite.
    return f"{suite}:@SECLEVEL=0" if "CCM8" in suite else suite


# -- the strings ---------------------------------------------------------------------------------


def test_default_profile_strings_are_exact() -> None:
    default = PROFILES["default"]
    assert (
        default.cipher_string(psk=True, key_type=None)
        == DEFAULT_CIPHERS
        == (
            "ECDHE-PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:"
            "PSK-CHACHA20-POLY1305:PSK-AES128-CCM:PSK-AES256-CCM"
        )
    )
    assert default.cipher_string(psk=False, key_type="ecdsa") == (
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:"
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-CCM:ECDHE-ECDSA-AES256-CCM"
    )
    assert default.cipher_string(psk=False, key_type="rsa") == (
        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305"
    )
    assert default.cipher_string(psk=False, key_type=None) == ""


def test_iot_profile_adds_ccm8_and_lowers_the_level_for_them() -> None:
    assert PROFILES["iot"].cipher_string(psk=True, key_type="ecdsa") == (
        f"{DEFAULT_CIPHERS}:PSK-AES128-CCM8:PSK-AES256-CCM8:"
        + PROFILES["default"].cipher_string(psk=False, key_type="ecdsa")
        + ":ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES256-CCM8:@SECLEVEL=0"
    )


def test_compat_profile_adds_cbc_suites() -> None:
    assert PROFILES["compat"].cipher_string(psk=True, key_type=None) == (
        f"{DEFAULT_CIPHERS}:ECDHE-PSK-AES128-CBC-SHA256:ECDHE-PSK-AES256-CBC-SHA384:"
        "PSK-AES128-CBC-SHA256:PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA:"
        "ECDHE-PSK-AES256-CBC-SHA:PSK-AES128-CBC-SHA:PSK-AES256-CBC-SHA"
    )


def test_the_default_profile_is_aead_only() -> None:
    default = PROFILES["default"]
    for suite in (*default.psk, *default.ecdsa, *default.rsa):
        assert any(mode in suite for mode in ("GCM", "CHACHA20-POLY1305", "CCM")), suite
        assert "CCM8" not in suite


def test_client_strings_follow_the_client_credentials() -> None:
    assert client_cipher_string("default", psk=True, verify_server=False) == DEFAULT_CIPHERS
    both = client_cipher_string("iot", psk=True, verify_server=True).split(":")
    assert both[-1] == "@SECLEVEL=0"
    assert "ECDHE-RSA-AES128-GCM-SHA256" in both and "PSK-AES128-CCM8" in both
    assert client_cipher_string("PSK-AES128-CCM", psk=False, verify_server=False) == (
        "PSK-AES128-CCM"
    )
    with pytest.raises(CipherConfigError, match="the client needs a PSK"):
        client_cipher_string("default", psk=False, verify_server=False)


# -- what each profile negotiates ----------------------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "iot", "compat"])
@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_each_profile_can_negotiate_every_suite_it_promises(
    credentials: Credentials, profile: str, key_type: str
) -> None:
    pem = credentials.server_pem if key_type == "ecdsa" else credentials.server_rsa_pem
    server = DTLSServer(
        {IDENTITY: KEY},
        certificate=CertificateConfig(pem),
        config=ServerConfig(ciphers=profile),
    )
    chosen = PROFILES[profile]
    promised = (*chosen.psk, *(chosen.ecdsa if key_type == "ecdsa" else chosen.rsa))
    assert server.cipher_selection.suites == promised
    assert server.cipher_selection.refused == ()
    assert server.cipher_selection.lowers_security_level is (profile == "iot")


@pytest.mark.parametrize("profile", ["default", "iot", "compat"])
async def test_each_promised_suite_is_negotiated_over_the_network(
    credentials: Credentials, profile: str
) -> None:
    log = ConnectionLog()
    server = DTLSServer(
        {IDENTITY: KEY},
        certificate=CertificateConfig(credentials.server_pem),
        config=ServerConfig(ciphers=profile),
        handler=log,
    )
    chosen = PROFILES[profile]
    async with support.serving(server) as running:
        for suite in chosen.psk:
            async with await connect(running, ciphers=client_suite(suite)) as client:
                assert client.cipher == suite
        for suite in chosen.ecdsa:
            async with await DTLSClient.connect(
                running.host,
                running.port,
                ca=credentials.ca,
                ciphers=client_suite(suite),
                on_event=quiet,
            ) as client:
                assert client.cipher == suite
        promised = [*chosen.psk, *chosen.ecdsa]
        await running.events.wait_for("handshake_complete", count=len(promised))
        assert [connection.cipher for connection in log.connections] == promised
        assert server.statistics().handshakes_completed == len(promised)


@pytest.mark.parametrize(
    ("profile", "suite"),
    [
        ("default", "PSK-AES128-CCM8"),
        ("default", "PSK-AES128-CBC-SHA256"),
        ("default", "ECDHE-PSK-AES128-CBC-SHA256"),
        ("default", "PSK-NULL-SHA256"),
        ("iot", "PSK-AES128-CBC-SHA256"),
        ("iot", "PSK-NULL-SHA256"),
        ("compat", "PSK-AES128-CCM8"),
        ("compat", "PSK-NULL-SHA256"),
    ],
)
async def test_each_profile_refuses_what_it_must_not_offer(profile: str, suite: str) -> None:
    server = DTLSServer({IDENTITY: KEY}, config=ServerConfig(ciphers=profile))
    async with support.serving(server) as running:
        with pytest.raises(HandshakeError) as error:
            await connect(running, ciphers=f"{suite}:@SECLEVEL=0")
        assert error.value.alert == "handshake_failure (40)"
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith(
            "handshake failed: no shared cipher; fatal alert sent: handshake_failure (40)"
        )
        assert server.statistics().handshakes_failed == {"no shared cipher": 1}


def _handshake_with_groups(server: DTLSServer, groups: bytes) -> SessionState:
    """An in-memory ECDHE-PSK handshake against ``server``'s own context, client groups given."""
    context = new_dtls_context(server=False, ciphers="ECDHE-PSK-CHACHA20-POLY1305")
    install_client_psk(context)
    assert _lib.SSL_CTX_set1_curves_list(context._context, groups) == 1
    policy = RetransmitPolicy()
    client = DTLSSession.client(
        context, now=0.0, mtu=1400, policy=policy, identity=IDENTITY.encode(), key=KEY
    )
    first = client.take_datagrams()[0]
    client.receive_datagram(support.hello_verify_request_for(first), 0.0)
    session = DTLSSession.server(
        server._context,
        client.take_datagrams()[0],
        now=0.0,
        mtu=1400,
        policy=policy,
        psk_lookup={IDENTITY.encode(): KEY}.get,
    )
    support.exchange(support.InMemoryHandshake(client, session))
    return session.state


def test_iot_lowers_the_security_level_but_not_the_key_exchange_groups() -> None:
    default = DTLSServer({IDENTITY: KEY})
    iot = DTLSServer({IDENTITY: KEY}, config=ServerConfig(ciphers="iot"))
    assert _handshake_with_groups(default, b"P-521") is SessionState.ESTABLISHED
    assert _handshake_with_groups(iot, b"P-521") is SessionState.FAILED
    assert _handshake_with_groups(iot, b"P-256") is SessionState.ESTABLISHED


#: TLS NamedGroup numbers (RFC 8422 §5.1.1, RFC 7748).
SECP256R1, X25519 = 23, 29


def _group_the_server_picks(server: DTLSServer, client_groups: bytes) -> int:
    """The named curve of the ServerKeyExchange ``server`` answers an ECDHE-PSK hello with."""
    context = new_dtls_context(server=False, ciphers="ECDHE-PSK-CHACHA20-POLY1305")
    install_client_psk(context)
    assert _lib.SSL_CTX_set1_curves_list(context._context, client_groups) == 1
    client = DTLSSession.client(
        context, now=0.0, mtu=1400, policy=RetransmitPolicy(), identity=b"i", key=KEY
    )
    client.receive_datagram(support.hello_verify_request_for(client.take_datagrams()[0]), 0.0)
    session = DTLSSession.server(
        server._context,
        client.take_datagrams()[0],
        now=0.0,
        mtu=1400,
        policy=RetransmitPolicy(),
        psk_lookup={b"i": KEY}.get,
    )
    for datagram in session.take_datagrams():
        for record in parse_records(datagram):
            # A handshake message: type (1), length (3), seq (2), offset (3), fragment length (3).
            if record.content_type == ContentType.handshake and record.fragment[0] == 12:
                body = record.fragment[12:]
                # ECDHE-PSK (RFC 5489 §2): identity hint <0..2^16-1>, then curve_type
                # named_curve (3) and the NamedGroup.
                hint_end = 2 + int.from_bytes(body[:2], "big")
                assert body[hint_end] == 3
                return int.from_bytes(body[hint_end + 1 : hint_end + 3], "big")
    raise AssertionError("no ServerKeyExchange in the server's first flight")


@pytest.mark.parametrize("profile", ["default", "iot", "compat"])
def test_the_server_prefers_p256_even_when_the_client_lists_x25519_first(profile: str) -> None:
    """RFC 7925's curve first: wolfSSL 5.5 offers X25519 before P-256 and then fails ECDHE-PSK
    with X25519 (``-352 Bad ECC Peer Key``); see test_interop_wolfssl.py for the real client.
    A client offering X25519 alone still gets it."""
    server = DTLSServer({IDENTITY: KEY}, config=ServerConfig(ciphers=profile))
    assert _group_the_server_picks(server, b"X25519:P-256") == SECP256R1
    assert _group_the_server_picks(server, b"X25519") == X25519


def test_our_client_lists_p256_first() -> None:
    """So that a server choosing by the client's order (OpenSSL's default) picks P-256 too."""
    context = _client_context(client_cipher_string("default", psk=True, verify_server=False))
    client = DTLSSession.client(
        context, now=0.0, mtu=1400, policy=RetransmitPolicy(), identity=b"i", key=KEY
    )
    hello = parse_initial_client_hello(client.take_datagrams()[0]).hello
    groups = support.hello_extension(hello.extensions, 10)  # supported_groups
    assert groups is not None
    listed = [int.from_bytes(groups[i : i + 2], "big") for i in range(2, len(groups), 2)]
    assert listed[:2] == [SECP256R1, X25519]


# -- misconfiguration is an error at start-up ----------------------------------------------------


def test_no_credentials_at_all() -> None:
    with pytest.raises(CipherConfigError) as error:
        DTLSServer()
    assert str(error.value) == (
        "the server needs credentials: a PSK store (psk=...), a certificate "
        "(certificate=...), or both"
    )


def test_a_psk_only_list_without_a_psk_store(credentials: Credentials) -> None:
    with pytest.raises(CipherConfigError) as error:
        DTLSServer(
            certificate=CertificateConfig(credentials.server_pem),
            config=ServerConfig(ciphers="PSK-AES128-GCM-SHA256:PSK-AES128-CCM"),
        )
    assert str(error.value) == (
        "no cipher suite of 'PSK-AES128-GCM-SHA256:PSK-AES128-CCM' can be negotiated with the "
        "configured credentials: PSK-AES128-GCM-SHA256: a PSK suite, and no PSK store is "
        "configured; PSK-AES128-CCM: a PSK suite, and no PSK store is configured"
    )


def test_certificate_suites_without_a_certificate() -> None:
    with pytest.raises(CipherConfigError) as error:
        DTLSServer({IDENTITY: KEY}, config=ServerConfig(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    assert str(error.value).endswith("ECDHE-ECDSA-AES128-GCM-SHA256: needs an ECDSA certificate")


def test_ecdsa_suites_with_an_rsa_certificate(credentials: Credentials) -> None:
    with pytest.raises(CipherConfigError, match="needs an ECDSA certificate"):
        DTLSServer(
            certificate=CertificateConfig(credentials.server_rsa_pem),
            config=ServerConfig(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"),
        )


def test_ccm8_without_the_lower_security_level() -> None:
    with pytest.raises(CipherConfigError) as error:
        DTLSServer({IDENTITY: KEY}, config=ServerConfig(ciphers="PSK-AES128-CCM8"))
    assert str(error.value).endswith(
        "PSK-AES128-CCM8: CCM_8 (8-byte tag) needs @SECLEVEL=0 in the cipher string "
        "(see the iot profile)"
    )


def test_a_string_openssl_does_not_know() -> None:
    with pytest.raises(CipherStringError) as error:
        DTLSServer({IDENTITY: KEY}, config=ServerConfig(ciphers="NO-SUCH-SUITE"))
    # Both a configuration error and what OpenSSL raised for unknown strings before profiles.
    assert isinstance(error.value, CipherConfigError)
    assert isinstance(error.value, SSL.Error)
    assert str(error.value) == (
        "OpenSSL does not accept the cipher string 'NO-SUCH-SUITE': no cipher match"
    )


def test_a_free_form_string_keeps_its_usable_suites_and_names_the_rest() -> None:
    server = DTLSServer(
        {IDENTITY: KEY},
        config=ServerConfig(ciphers="PSK-AES128-CCM8:DHE-PSK-AES128-GCM-SHA256:@SECLEVEL=0"),
    )
    selection = server.cipher_selection
    assert selection.profile is None
    assert selection.suites == ("PSK-AES128-CCM8",)
    assert selection.refused == (
        (
            "DHE-PSK-AES128-GCM-SHA256",
            "needs Diffie-Hellman parameters, which this server does not load",
        ),
    )
    assert selection.lowers_security_level is True
