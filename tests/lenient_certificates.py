"""Certificates that OpenSSL accepts but ``cryptography`` refuses: BER where DER is required.

Older device CAs write an extension's ``critical`` flag even when it is FALSE, its DEFAULT
(``BOOLEAN FALSE`` spelled out).  DER forbids encoding a DEFAULT value (X.690 §11.5), so
``cryptography``'s strict parser raises on such a certificate, while OpenSSL parses it
leniently and verifies the CA's signature over the bytes as they are.  A real device can
present one; the tests use :func:`issue_lenient_certificate` to make one.

How: ``cryptography`` issues a normal leaf certificate signed by a ``trustme`` CA; we re-encode
its TBSCertificate with ``critical FALSE`` added to its first non-critical extension (a tiny
DER reader and writer below, enough for this one edit) and sign the new TBSCertificate with
the CA's key.  The signature algorithm stays the one ``cryptography`` chose.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["issue_lenient_certificate"]

_SEQUENCE = 0x30
_BOOLEAN = 0x01
_BIT_STRING = 0x03
_EXTENSIONS = 0xA3  # [3] EXPLICIT Extensions, in a TBSCertificate
#: BOOLEAN FALSE, spelled out: what DER forbids for a DEFAULT FALSE field.
_EXPLICIT_FALSE = bytes((_BOOLEAN, 1, 0))


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _length(len(value)) + value


def _items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, value) pairs of concatenated DER items (single-byte tags only)."""
    items: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        tag, first = data[offset], data[offset + 1]
        offset += 2
        if first & 0x80:
            count = first & 0x7F
            size = int.from_bytes(data[offset : offset + count], "big")
            offset += count
        else:
            size = first
        items.append((tag, data[offset : offset + size]))
        offset += size
    return items


def _with_explicit_false(tbs: bytes) -> bytes:
    """``tbs`` (a DER TBSCertificate), ``critical FALSE`` written into its first extension."""
    [(tag, body)] = _items(tbs)
    assert tag == _SEQUENCE
    fields = _items(body)
    for index, (field_tag, field) in enumerate(fields):
        if field_tag != _EXTENSIONS:
            continue
        [(_, extensions)] = _items(field)
        rewritten: list[bytes] = []
        done = False
        for _, extension in _items(extensions):
            parts = _items(extension)
            if not done and len(parts) == 2:  # extnID, extnValue: critical left at its DEFAULT
                parts.insert(1, (_BOOLEAN, b"\x00"))
                done = True
            rewritten.append(_tlv(_SEQUENCE, b"".join(_tlv(t, v) for t, v in parts)))
        assert done, "the certificate has no non-critical extension"
        fields[index] = (_EXTENSIONS, _tlv(_SEQUENCE, b"".join(rewritten)))
        encoded = _tlv(_SEQUENCE, b"".join(_tlv(t, v) for t, v in fields))
        assert _EXPLICIT_FALSE in encoded
        return encoded
    raise AssertionError("the certificate has no extensions")


def issue_lenient_certificate(
    ca: trustme.CA, common_name: str, path: Path, *, ip_address: str | None = None
) -> Path:
    """Write to ``path`` a PEM key and certificate for ``common_name`` (and ``ip_address`` as a
    subjectAltName, for a server), signed by ``ca``, whose TBSCertificate spells out
    ``critical FALSE``: OpenSSL verifies it, ``cryptography`` refuses to parse it.
    """
    ca_certificate = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if ip_address is not None:
        address = x509.IPAddress(ipaddress.ip_address(ip_address))
        builder = builder.add_extension(x509.SubjectAlternativeName([address]), critical=False)
    signed = builder.sign(ca_key, hashes.SHA256())
    [(_, body)] = _items(signed.public_bytes(serialization.Encoding.DER))
    _, algorithm = _items(body)[1]
    tbs = _with_explicit_false(signed.tbs_certificate_bytes)
    signature = ca_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    der = _tlv(
        _SEQUENCE,
        tbs + _tlv(_SEQUENCE, algorithm) + _tlv(_BIT_STRING, b"\x00" + signature),
    )
    pem = b"".join(
        (
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            b"-----BEGIN CERTIFICATE-----\n",
            _base64_lines(der),
            b"-----END CERTIFICATE-----\n",
        )
    )
    path.write_bytes(pem)
    return path


def _base64_lines(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + 64] + b"\n" for i in range(0, len(text), 64))
