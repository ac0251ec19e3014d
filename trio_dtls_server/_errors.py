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

__all__ = ["ConfigError", "DTLSError"]


class DTLSError(Exception):
    """Base class of every exception trio_dtls_server raises on purpose."""


class ConfigError(DTLSError, ValueError):
    """A configuration value the library refuses.

    ``fields`` names the field or fields at fault (``("mtu",)``; ``("initial", "maximum")`` for a
    pair that only fails together) and ``problem`` says what is wrong, so a caller can point at
    the setting without reading the message: the command line turns fields into its options.
    """

    def __init__(self, fields: str | tuple[str, ...], problem: str) -> None:
        self.fields: tuple[str, ...] = (fields,) if isinstance(fields, str) else fields
        self.problem = problem
        single = len(self.fields) == 1
        super().__init__(f"{self.fields[0]} {problem}" if single else problem)
