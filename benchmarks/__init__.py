"""Benchmarks: trio_dtls_server against ``trio.DTLSEndpoint``, on loopback, in the same run.

``python -m benchmarks`` (or ``nox -s bench``) runs every workload against both servers and
prints one table with both figures and their ratio, the issue's targets as PASS/MISS, where
our server's CPU time goes (py-spy or cProfile), and writes the results as JSON to
``benchmarks/results/``.  ``--quick`` is a smoke run (about a minute); ``--help`` lists the
knobs.

Three kinds of process take part, so that no one measures itself:

* the **server under test** (:mod:`benchmarks.ours` or :mod:`benchmarks.trio_endpoint_server`),
  each in its own process so its RSS and CPU time are its own (:mod:`benchmarks.server_harness`);
* the **load generator** (:mod:`benchmarks.loadgen`): lean DTLS clients on plain sockets and
  one epoll loop, reporting its own CPU share so a saturated generator is visible;
* the **orchestrator** (:mod:`benchmarks.runner`, :mod:`benchmarks.report`), which starts and
  stops the other two and judges the results.

:mod:`benchmarks.floor` measures what one OpenSSL connection costs with no server around it.
"""
