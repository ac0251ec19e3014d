"""``python -m trio_dtls_server._worker_main``: how the supervisor starts a worker.

A module of its own, which the package never imports: ``-m`` on a module the package already
imported (:mod:`._worker`, which the supervisor uses) would run a second copy of it under the
name ``__main__``, and the pickled spec names the package's class, not that copy's.
"""

from __future__ import annotations

import sys

from trio_dtls_server._worker import main

if __name__ == "__main__":
    sys.exit(main())
