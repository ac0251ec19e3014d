"""Cipher profiles: named, documented sets of DTLS 1.2 cipher suites, and the start-up check.

``ServerConfig.ciphers`` (and ``DTLSClient.connect(ciphers=...)``) is either a profile name or
a free-form OpenSSL cipher string.  A profile expands to an exact OpenSSL cipher string that
depends on the credentials configured: PSK suites only with a PSK store, ECDSA or RSA
certificate suites only with a certificate of that kind.

``default``
    AEAD suites only (no CBC, no 8-byte tags): PSK with AES-GCM, ChaCha20-Poly1305 and AES-CCM
    (16-byte tag); ECDHE-PSK with ChaCha20-Poly1305 (OpenSSL implements no ECDHE-PSK AES-GCM
    suite for TLS 1.2); with a certificate, ECDHE-ECDSA (AES-GCM, ChaCha20-Poly1305, AES-CCM)
    or ECDHE-RSA (AES-GCM, ChaCha20-Poly1305).
``iot``
    ``default`` plus the CCM_8 suites of RFC 7925, the IoT profile of DTLS 1.2:
    ``TLS_PSK_WITH_AES_128_CCM_8`` (mandatory there), ``TLS_PSK_WITH_AES_256_CCM_8`` and, with an
    ECDSA certificate, ``TLS_ECDHE_ECDSA_WITH_AES_128/256_CCM_8``.  Their 8-byte tag counts as
    64 bits of security, which OpenSSL ≥ 3.2 refuses below ``@SECLEVEL=0``; the profile sets
    that level and takes back what else it would allow (see :func:`select_ciphers`).
``compat``
    ``default`` plus CBC suites with HMAC (encrypt-then-MAC when the peer offers it) for stacks
    that have nothing else, such as the pure-JavaScript ``node-dtls-client`` (which offers
    ``PSK-AES128-CBC-SHA256``).

Anything else is passed to OpenSSL as a cipher string.

:func:`select_ciphers` resolves the choice and then *proves* it: it runs one in-memory
handshake per suite against a server context built exactly like the real one.  A
configuration in which no suite can be negotiated (no PSK store for a PSK-only list, no
certificate for certificate suites, CCM_8 without ``@SECLEVEL=0``, ...) raises
:class:`CipherConfigError` when the server is made, with the reason for each suite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from OpenSSL import SSL

from ._certificates import KeyType, ServerCertificate, use_server_certificate
from ._errors import DTLSError
from ._openssl import (
    drain_write_bio,
    install_client_psk,
    install_server_psk,
    new_dtls_context,
    openssl_error_reason,
    restrict_groups_and_signatures,
)

__all__ = [
    "DEFAULT_PSK_SUITES",
    "PROFILES",
    "CipherConfigError",
    "CipherProfile",
    "CipherSelection",
    "CipherStringError",
    "client_cipher_string",
    "lowers_security_level",
    "negotiable_suites",
    "resolve_cipher_string",
    "select_ciphers",
]


class CipherConfigError(DTLSError, ValueError):
    """The cipher choice cannot work with the configured credentials; the message says why."""


class CipherStringError(CipherConfigError, SSL.Error):
    """OpenSSL does not understand the cipher string at all.

    Also an :class:`OpenSSL.SSL.Error`, which is what an unknown cipher string raised before
    profiles existed, so callers catching that keep working.
    """


@dataclass(frozen=True, slots=True)
class CipherProfile:
    """A named set of suites, by the credential each needs (OpenSSL names, preference order)."""

    name: str
    summary: str
    psk: tuple[str, ...]
    ecdsa: tuple[str, ...]
    rsa: tuple[str, ...]
    #: ``@SECLEVEL=`` appended to the cipher string, when the profile needs a lower level.
    security_level: int | None = None

    def cipher_string(self, *, psk: bool, key_type: KeyType | None) -> str:
        """The exact OpenSSL cipher string for these credentials ("" if none applies)."""
        suites: list[str] = []
        if psk:
            suites.extend(self.psk)
        if key_type == "ecdsa":
            suites.extend(self.ecdsa)
        elif key_type == "rsa":
            suites.extend(self.rsa)
        if not suites:
            return ""
        if self.security_level is not None:
            suites.append(f"@SECLEVEL={self.security_level}")
        return ":".join(suites)


#: AEAD-only PSK and ECDHE-PSK suites, strongest first: the PSK part of the ``default``
#: profile, and (joined) ``DEFAULT_CIPHERS``.  AES-CCM (16-byte tag) is included because
#: constrained devices often have nothing else.
DEFAULT_PSK_SUITES = (
    "ECDHE-PSK-CHACHA20-POLY1305",
    "PSK-AES256-GCM-SHA384",
    "PSK-AES128-GCM-SHA256",
    "PSK-CHACHA20-POLY1305",
    "PSK-AES128-CCM",
    "PSK-AES256-CCM",
)
_DEFAULT_ECDSA = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-CCM",
    "ECDHE-ECDSA-AES256-CCM",
)
_DEFAULT_RSA = (
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

#: The named profiles (see the module docstring for what each is for).
PROFILES: dict[str, CipherProfile] = {
    "default": CipherProfile(
        "default",
        "AEAD only: AES-GCM, ChaCha20-Poly1305, AES-CCM (16-byte tag)",
        DEFAULT_PSK_SUITES,
        _DEFAULT_ECDSA,
        _DEFAULT_RSA,
    ),
    "iot": CipherProfile(
        "iot",
        "default + the CCM_8 suites of RFC 7925 (security level 0, confined)",
        (*DEFAULT_PSK_SUITES, "PSK-AES128-CCM8", "PSK-AES256-CCM8"),
        (*_DEFAULT_ECDSA, "ECDHE-ECDSA-AES128-CCM8", "ECDHE-ECDSA-AES256-CCM8"),
        _DEFAULT_RSA,
        security_level=0,
    ),
    "compat": CipherProfile(
        "compat",
        "default + AES-CBC with HMAC for older stacks",
        (
            *DEFAULT_PSK_SUITES,
            "ECDHE-PSK-AES128-CBC-SHA256",
            "ECDHE-PSK-AES256-CBC-SHA384",
            "PSK-AES128-CBC-SHA256",
            "PSK-AES256-CBC-SHA384",
            "ECDHE-PSK-AES128-CBC-SHA",
            "ECDHE-PSK-AES256-CBC-SHA",
            "PSK-AES128-CBC-SHA",
            "PSK-AES256-CBC-SHA",
        ),
        (
            *_DEFAULT_ECDSA,
            "ECDHE-ECDSA-AES128-SHA256",
            "ECDHE-ECDSA-AES256-SHA384",
            "ECDHE-ECDSA-AES128-SHA",
            "ECDHE-ECDSA-AES256-SHA",
        ),
        (
            *_DEFAULT_RSA,
            "ECDHE-RSA-AES128-SHA256",
            "ECDHE-RSA-AES256-SHA384",
            "ECDHE-RSA-AES128-SHA",
            "ECDHE-RSA-AES256-SHA",
        ),
    ),
}

_SECURITY_LEVEL = re.compile(r"@SECLEVEL=(\d+)")


def lowers_security_level(cipher_string: str) -> bool:
    """True if the string sets ``@SECLEVEL`` below OpenSSL's default of 2."""
    levels = _SECURITY_LEVEL.findall(cipher_string)
    return bool(levels) and int(levels[-1]) < 2


def _profile(ciphers: str) -> CipherProfile | None:
    return PROFILES.get(ciphers.strip().lower())


def resolve_cipher_string(ciphers: str, *, psk: bool, key_type: KeyType | None) -> str:
    """A profile name becomes its cipher string for these credentials; anything else stays."""
    profile = _profile(ciphers)
    if profile is None:
        return ciphers
    return profile.cipher_string(psk=psk, key_type=key_type)


def client_cipher_string(ciphers: str, *, psk: bool, verify_server: bool) -> str:
    """The client's list: a profile's PSK suites if it has a key, its certificate suites
    (ECDSA and RSA) if it can verify a server certificate, or a free-form string as given."""
    profile = _profile(ciphers)
    if profile is None:
        return ciphers
    suites: list[str] = []
    if psk:
        suites.extend(profile.psk)
    if verify_server:
        suites.extend((*profile.ecdsa, *profile.rsa))
    if not suites:
        raise CipherConfigError(
            "the client needs a PSK (identity and key) or a CA to verify the server with"
        )
    if profile.security_level is not None:
        suites.append(f"@SECLEVEL={profile.security_level}")
    return ":".join(suites)


# -- proving the choice -------------------------------------------------------------------------


class _ProbeResponder:
    """Answers both PSK callbacks with a throwaway key: the probe tests suites, not keys."""

    _KEY = b"\x5a" * 32

    def psk_for_identity(self, identity: bytes) -> bytes | None:
        return self._KEY

    def psk_identity_and_key(self, hint: bytes | None) -> tuple[bytes, bytes] | None:
        return b"probe", self._KEY


_PROBE_MTU = 1400


def _probe_server_context(
    cipher_string: str, *, psk: bool, certificate: ServerCertificate | None
) -> SSL.Context:
    context = new_dtls_context(server=True, ciphers=cipher_string)
    if psk:
        install_server_psk(context, None)
    if certificate is not None:
        use_server_certificate(context, certificate, verify_clients=False)
    if lowers_security_level(cipher_string):
        restrict_groups_and_signatures(context)
    return context


def _negotiates(server_context: SSL.Context, suite: str) -> bool:
    """One in-memory handshake with a client offering only ``suite`` (no cookie exchange)."""
    client_context = new_dtls_context(server=False, ciphers=f"{suite}:@SECLEVEL=0")
    install_client_psk(client_context)
    responder = _ProbeResponder()
    server = SSL.Connection(server_context, None)
    client = SSL.Connection(client_context, None)
    for connection in (server, client):
        connection.set_app_data(responder)
        connection.set_ciphertext_mtu(_PROBE_MTU)
    server.set_accept_state()
    client.set_connect_state()
    done = {id(server): False, id(client): False}
    for _ in range(12):  # a full handshake needs 3 round trips; 12 steps is plenty
        for this, other in ((client, server), (server, client)):
            if not done[id(this)]:
                try:
                    this.do_handshake()
                    done[id(this)] = True
                except SSL.WantReadError:
                    pass
                except SSL.Error:
                    return False
            flight = drain_write_bio(this)
            if flight:
                other.bio_write(flight)
        if all(done.values()):
            return server.get_cipher_name() == suite
    return False


def _suites_in(cipher_string: str) -> list[str]:
    context = new_dtls_context(server=True, ciphers=cipher_string)
    names = SSL.Connection(context, None).get_cipher_list()
    # OpenSSL lists its TLS 1.3 suites with every string; DTLS 1.2 cannot use them.
    return [name for name in names if not name.startswith("TLS_")]


_PROBE_CACHE_SIZE = 64
_probe_cache: dict[tuple[str, bool, str | None], tuple[str, ...]] = {}


def negotiable_suites(
    cipher_string: str, *, psk: bool, certificate: ServerCertificate | None
) -> tuple[str, ...]:
    """The suites of ``cipher_string`` a server with these credentials really negotiates.

    One in-memory handshake per suite (a few milliseconds in all; remembered per cipher string
    and certificate, so servers built alike pay once).
    """
    key = (cipher_string, psk, certificate.fingerprint if certificate is not None else None)
    cached = _probe_cache.get(key)
    if cached is not None:
        return cached
    server_context = _probe_server_context(cipher_string, psk=psk, certificate=certificate)
    usable = tuple(
        suite for suite in _suites_in(cipher_string) if _negotiates(server_context, suite)
    )
    if len(_probe_cache) >= _PROBE_CACHE_SIZE:
        _probe_cache.clear()  # a process making servers from ever new certificates stays bounded
    _probe_cache[key] = usable
    return usable


def _why_refused(suite: str, *, psk: bool, key_type: KeyType | None, lowered: bool) -> str:
    """Our best explanation for a suite the probe could not negotiate (for error messages)."""
    uses_psk = "PSK" in suite
    if suite.startswith("DHE-") or suite.startswith("EDH-"):
        return "needs Diffie-Hellman parameters, which this server does not load"
    if suite.startswith("RSA-PSK"):
        return "needs both a PSK store and an RSA certificate"
    if uses_psk and not psk:
        return "a PSK suite, and no PSK store is configured"
    if "ECDSA" in suite and key_type != "ecdsa":
        return "needs an ECDSA certificate"
    if not uses_psk and "ECDSA" not in suite and key_type != "rsa":
        return "needs an RSA certificate"
    if "CCM8" in suite and not lowered:
        return "CCM_8 (8-byte tag) needs @SECLEVEL=0 in the cipher string (see the iot profile)"
    if "NULL" in suite:
        return "encrypts nothing; refused at this security level"
    return "refused by OpenSSL with this configuration"


@dataclass(frozen=True, slots=True)
class CipherSelection:
    """What :func:`select_ciphers` settled on."""

    #: The profile name or cipher string that was asked for.
    requested: str
    #: The profile, when a name was given.
    profile: CipherProfile | None
    #: The exact string given to OpenSSL.
    cipher_string: str
    #: Suites that a client can negotiate with this server, in the string's order.
    suites: tuple[str, ...]
    #: Suites of the string that cannot be negotiated here, each with the reason.
    refused: tuple[tuple[str, str], ...]

    @property
    def lowers_security_level(self) -> bool:
        return lowers_security_level(self.cipher_string)


def select_ciphers(
    ciphers: str, *, psk: bool, certificate: ServerCertificate | None
) -> CipherSelection:
    """Resolve ``ciphers`` for these credentials and prove that suites remain.

    Raises :class:`CipherConfigError` if the server has no credentials, if OpenSSL does not
    understand the string, or if no suite of it can be negotiated (each suite's reason is in
    the message).
    """
    if not psk and certificate is None:
        raise CipherConfigError(
            "the server needs credentials: a PSK store (psk=...), a certificate "
            "(certificate=...), or both"
        )
    key_type = certificate.key_type if certificate is not None else None
    profile = _profile(ciphers)
    cipher_string = resolve_cipher_string(ciphers, psk=psk, key_type=key_type)
    if not cipher_string:
        raise CipherConfigError(f"cipher profile {ciphers!r} has no suite for these credentials")
    try:
        candidates = _suites_in(cipher_string)
    except SSL.Error as error:
        raise CipherStringError(
            f"OpenSSL does not accept the cipher string {cipher_string!r}: "
            f"{openssl_error_reason(error)}"
        ) from None
    usable = negotiable_suites(cipher_string, psk=psk, certificate=certificate)
    lowered = lowers_security_level(cipher_string)
    refused = tuple(
        (suite, _why_refused(suite, psk=psk, key_type=key_type, lowered=lowered))
        for suite in candidates
        if suite not in usable
    )
    if not usable:
        reasons = "; ".join(f"{suite}: {why}" for suite, why in refused[:8])
        more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
        raise CipherConfigError(
            f"no cipher suite of {ciphers!r} can be negotiated with the configured "
            f"credentials: {reasons}{more}"
        )
    return CipherSelection(ciphers, profile, cipher_string, usable, refused)
