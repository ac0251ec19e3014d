"""``python -m trio_dtls_server`` and the ``trio-dtls-server`` console script.

``serve`` runs the server in the foreground; ``client`` runs Qt's client example.  See
``trio-dtls-server --help`` and :mod:`trio_dtls_server._cli`.
"""

from __future__ import annotations

import sys

from ._cli import main as _run

__all__ = ["main"]


def main() -> int:
    """Run the command line with ``sys.argv`` and return the exit code."""
    return _run()


if __name__ == "__main__":
    sys.exit(main())
