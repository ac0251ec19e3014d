"""The root of every exception the library raises on purpose: :class:`DTLSError`.

Catch ``DTLSError`` to catch any of them.  Each one also keeps the standard base it always had,
so code written against those keeps working: configuration mistakes are still ``ValueError``
(:class:`~trio_dtls_server.CertificateError`, :class:`~trio_dtls_server.CipherConfigError`,
:class:`~trio_dtls_server.PskFileError`), a bind failure is still ``OSError``
(:class:`~trio_dtls_server.ServerBindError`), and a connection that is over
(:class:`~trio_dtls_server.ConnectionClosed`) is also a ``trio.BrokenResourceError``, as a
closed ``trio.DTLSChannel`` is to its users.
"""

from __future__ import annotations

__all__ = ["DTLSError"]


class DTLSError(Exception):
    """Base class of every exception trio_dtls_server raises on purpose."""
