"""Certificates: the server's own certificate and key, and how it treats client certificates.

Everything is PEM on disk, read once with ``cryptography`` when the server (or client) is made,
so a missing file, a key that does not belong to its certificate or a weak key is an error at
start-up that names the file, never a handshake failure later.

* :class:`CertificateConfig` — what a server is given: certificate, private key, optional
  chain, and the client-certificate mode (``"none"``, ``"optional"``, ``"required"``) with the
  CA bundle that client certificates must chain to.
* :func:`load_certificate_config` turns it into :class:`ServerCertificate` (parsed objects);
  :func:`use_server_certificate` installs that into a pyOpenSSL context.
* :func:`use_client_credentials` does the same for :class:`~trio_dtls_server.DTLSClient`: the CA
  that must have signed the server's certificate, and an optional client certificate.

A server may hold a PSK store *and* a certificate: each client then picks by the suites it
offers.  Client-certificate modes only concern certificate suites: OpenSSL never asks a PSK
client for a certificate (the key already authenticates it), so ``"required"`` does not lock
PSK devices out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal, TypeAlias, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto

from ._errors import DTLSError

__all__ = [
    "CertificateConfig",
    "CertificateError",
    "ClientCertificateMode",
    "KeyType",
    "ServerCertificate",
    "UnreadablePeerCertificate",
    "describe_subject",
    "load_certificate_config",
    "peer_certificate",
    "use_client_credentials",
    "use_server_certificate",
]

#: Whether the server asks certificate clients for a certificate, and whether it insists.
ClientCertificateMode: TypeAlias = Literal["none", "optional", "required"]
#: Which family of certificate suites a key can serve (Ed25519/Ed448 sign like ECDSA suites).
KeyType: TypeAlias = Literal["ecdsa", "rsa"]

_MODES: tuple[str, ...] = get_args(ClientCertificateMode)
#: Smallest keys we accept, ours or a peer's (the same as OpenSSL's default security level 2).
MINIMUM_RSA_BITS = 2048
MINIMUM_EC_BITS = 256

PathLike: TypeAlias = str | PurePath
_SHA256 = hashes.SHA256()
#: The private keys a DTLS 1.2 certificate suite can sign with.
SigningKey: TypeAlias = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


class CertificateError(DTLSError, ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file."""


class UnreadablePeerCertificate(DTLSError):
    """A peer's certificate that OpenSSL verified but ``cryptography`` cannot read.

    OpenSSL parses certificates leniently and checks the CA's signature over the bytes as sent,
    so it accepts BER where X.509 demands DER (older device CAs write an extension's
    ``critical FALSE``, a DEFAULT value DER leaves out).  ``cryptography`` refuses them, and
    without it there is no :attr:`~trio_dtls_server.DTLSConnection.peer_certificate` to give
    the application, so the handshake is refused.  Raised in the verify callback: pyOpenSSL
    then fails the handshake (OpenSSL sends its fatal alert) and raises this again out of
    ``do_handshake``, where the session turns it into a failed handshake with this message.
    """


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    """The server's certificate setup.

    ``certificate`` is a PEM file whose first certificate is the server's; certificates after
    it (and those in ``chain``) are sent as the chain.  ``private_key`` is the PEM key; ``None``
    means the key is in the ``certificate`` file too.  ``client_certificates`` is ``"none"``
    (never ask), ``"optional"`` (ask; verify one if sent) or ``"required"`` (certificate clients
    without one are refused with a fatal alert); the last two need ``client_ca``, the PEM
    bundle of CAs a client certificate must chain to.
    """

    certificate: PathLike
    private_key: PathLike | None = None
    chain: PathLike | None = None
    client_certificates: ClientCertificateMode = "none"
    client_ca: PathLike | None = None
    #: Password of an encrypted ``private_key``.
    private_key_password: bytes | None = None

    def __post_init__(self) -> None:
        if self.client_certificates not in _MODES:
            raise CertificateError(
                f"client_certificates must be one of {', '.join(_MODES)}, "
                f"not {self.client_certificates!r}"
            )
        if self.client_certificates != "none" and self.client_ca is None:
            raise CertificateError(
                f"client_certificates={self.client_certificates!r} needs client_ca, the CA "
                "bundle that client certificates must chain to"
            )
        if self.client_certificates == "none" and self.client_ca is not None:
            raise CertificateError(
                "client_ca is set but client_certificates is 'none': say 'optional' or "
                "'required' to verify client certificates"
            )

    @classmethod
    def from_options(
        cls,
        *,
        certificate: PathLike | None,
        private_key: PathLike | None = None,
        chain: PathLike | None = None,
        client_certificates: ClientCertificateMode = "none",
        client_ca: PathLike | None = None,
    ) -> CertificateConfig | None:
        """Build from loose options (command-line flags); None when no certificate is wanted.

        A key, chain or client CA without a certificate is an error, not a silent no-op.
        """
        if certificate is None:
            strays = [
                name
                for name, value in (
                    ("private key", private_key),
                    ("chain", chain),
                    ("client CA", client_ca),
                )
                if value is not None
            ]
            if strays or client_certificates != "none":
                given = ", ".join(strays) or f"client_certificates={client_certificates!r}"
                raise CertificateError(f"{given} given without a certificate")
            return None
        return cls(certificate, private_key, chain, client_certificates, client_ca)


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """A loaded, checked :class:`CertificateConfig`."""

    config: CertificateConfig
    certificate: x509.Certificate
    private_key: SigningKey
    chain: tuple[x509.Certificate, ...]
    client_cas: tuple[x509.Certificate, ...]
    key_type: KeyType

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the certificate and chain (a cache key: same files, same answer)."""
        digest = hashlib.sha256()
        for certificate in (self.certificate, *self.chain, *self.client_cas):
            digest.update(certificate.fingerprint(_SHA256))
        digest.update(self.config.client_certificates.encode())
        return digest.hexdigest()


def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise CertificateError(f"cannot read the {what} {str(path)!r}: {error.strerror}") from None


def _load_certificates(path: PathLike, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise CertificateError(
            f"the {what} {str(path)!r} holds no PEM certificate: {error}"
        ) from None
    return certificates


def _load_private_key(path: PathLike, password: bytes | None, what: str) -> PrivateKeyTypes:
    data = _read(path, what)
    try:
        return serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as error:
        raise CertificateError(
            f"the {what} {str(path)!r} holds no usable private key: {error}"
        ) from None


def _signing_key(key: PrivateKeyTypes, where: str) -> tuple[SigningKey, KeyType]:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MINIMUM_RSA_BITS:
            raise CertificateError(
                f"{where}: a {key.key_size}-bit RSA key is too weak (at least {MINIMUM_RSA_BITS})"
            )
        return key, "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size < MINIMUM_EC_BITS:
            raise CertificateError(
                f"{where}: curve {key.curve.name} is too weak (at least {MINIMUM_EC_BITS} bits)"
            )
        return key, "ecdsa"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return key, "ecdsa"
    raise CertificateError(f"{where}: {type(key).__name__} keys are not supported (use EC or RSA)")


def _public_bytes(key: object) -> bytes:
    public_bytes: Callable[..., bytes] = key.public_bytes  # type: ignore[attr-defined]
    return public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_certificate_config(config: CertificateConfig) -> ServerCertificate:
    """Read and check every file of ``config``; :class:`CertificateError` says what is wrong."""
    certificates = _load_certificates(config.certificate, "certificate file")
    leaf, *chain = certificates
    if config.chain is not None:
        chain.extend(_load_certificates(config.chain, "chain file"))
    key_path = config.private_key if config.private_key is not None else config.certificate
    raw_key = _load_private_key(key_path, config.private_key_password, "private key file")
    key, key_type = _signing_key(raw_key, f"private key file {str(key_path)!r}")
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise CertificateError(
            f"the private key in {str(key_path)!r} does not belong to the certificate in "
            f"{str(config.certificate)!r}"
        )
    client_cas: list[x509.Certificate] = []
    if config.client_ca is not None:
        client_cas = _load_certificates(config.client_ca, "client CA file")
    return ServerCertificate(config, leaf, key, tuple(chain), tuple(client_cas), key_type)


def _strong_keys_only(
    connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
) -> bool:
    """Verify callback: OpenSSL's verdict, plus our minimum key sizes for every certificate.

    With ``@SECLEVEL=0`` (the ``iot`` profile) OpenSSL itself would accept 512-bit RSA keys;
    this keeps the floor where the default security level puts it.  A certificate that
    ``cryptography`` cannot read raises :class:`UnreadablePeerCertificate`.
    """
    if not ok:
        return False
    try:
        parsed = certificate.to_cryptography()
    except ValueError as error:
        raise UnreadablePeerCertificate(
            f"the peer's certificate (chain depth {depth}) verified, but it is not DER-encoded "
            f"and cryptography cannot read it: {error}"
        ) from None
    try:
        _check_public_key(parsed.public_key())
    except CertificateError:
        return False
    return True


def _check_public_key(key: object) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MINIMUM_RSA_BITS:
            raise CertificateError("RSA key too small")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < MINIMUM_EC_BITS:
            raise CertificateError("curve too small")
    elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise CertificateError("unsupported key type")


def use_server_certificate(
    context: SSL.Context, loaded: ServerCertificate, *, verify_clients: bool = True
) -> None:
    """Install the certificate, key and chain; set up client-certificate verification.

    ``verify_clients=False`` installs only the server's own credentials (for probing which
    suites the server can negotiate).
    """
    context.use_certificate(loaded.certificate)
    context.use_privatekey(loaded.private_key)
    for extra in loaded.chain:
        context.add_extra_chain_cert(extra)
    context.check_privatekey()
    mode = loaded.config.client_certificates
    if not verify_clients or mode == "none":
        return
    assert loaded.config.client_ca is not None  # checked by CertificateConfig
    context.load_verify_locations(str(loaded.config.client_ca))
    for authority in loaded.client_cas:
        # Named in the CertificateRequest, so a client holding several certificates picks one
        # that this server can verify.
        context.add_client_ca(authority)
    flags = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
    if mode == "required":
        flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    context.set_verify(flags, _strong_keys_only)


def use_client_credentials(
    context: SSL.Context,
    *,
    ca: PathLike | None,
    certificate: PathLike | None,
    private_key: PathLike | None,
) -> None:
    """Client side: verify the server against ``ca``; present ``certificate`` if given.

    Without ``ca`` the client does not verify server certificates at all, so it must not offer
    certificate suites (the client's cipher choice takes care of that).
    """
    if ca is not None:
        _load_certificates(ca, "CA file")  # a clear error now instead of a failed handshake
        context.load_verify_locations(str(ca))
        context.set_verify(SSL.VERIFY_PEER, _strong_keys_only)
    if certificate is None:
        if private_key is not None:
            raise CertificateError("a client private key was given without a certificate")
        return
    loaded = load_certificate_config(CertificateConfig(certificate, private_key))
    context.use_certificate(loaded.certificate)
    context.use_privatekey(loaded.private_key)
    for extra in loaded.chain:
        context.add_extra_chain_cert(extra)
    context.check_privatekey()


def peer_certificate(connection: SSL.Connection) -> x509.Certificate | None:
    """The certificate the peer presented and OpenSSL verified, or None (PSK, or none sent)."""
    return connection.get_peer_certificate(as_cryptography=True)


def describe_subject(certificate: x509.Certificate) -> str:
    """The subject as an RFC 4514 string, e.g. ``CN=device-7,O=Example``, safe to log.

    The peer chose every character of it, and RFC 4514 escapes only its own specials, so a
    CN with a newline would start a log line of its own.  Every character outside printable
    ASCII is written as RFC 4514 hex pairs of its UTF-8 bytes (``CN=J\\C3\\BCrgen``,
    ``CN=a\\0Ab``): still a valid RFC 4514 string, naming the same subject.
    """
    text = certificate.subject.rfc4514_string()
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        [
            character
            if " " <= character <= "~"
            else "".join(f"\\{byte:02X}" for byte in character.encode("utf-8", "surrogatepass"))
            for character in text
        ]
    )
