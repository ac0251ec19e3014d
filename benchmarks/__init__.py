"""Benchmarks: trio_dtls_server against ``trio.DTLSEndpoint``, on loopback, in the same run.

``python -m benchmarks`` (or ``nox -s bench``) runs every workload against both servers and
prints one table with both figures and their ratio, the issue's targets as PASS/MISS, where
our server's CPU time goes (py-spy or cProfile), and writes the results as JSON to
``benchmarks/results/``.  ``--quick`` is a smoke run (under two minutes); ``--help`` lists the
knobs.

Two load generators:

* the **native** one, ``dtlsload`` (C, :mod:`benchmarks.dtlsload` finds or builds it from
  ``../shared/tools/dtlsload``), pinned to CPUs of its own, drives what users will see
  (:mod:`benchmarks.native`): our ``serve`` command against ``trio.DTLSEndpoint`` on one core
  each (handshakes/s, round trips/s, RSS), the scaling table (``serve --workers N``), the burst
  scenario (replies lost and kernel drops, before and after the receive-buffer change); the
  churn scenario (waves of half-open clients, RSS per wave) uses small Python clients
  (:mod:`benchmarks.churn`).  Where dtlsload is neither given nor buildable, those scenarios
  are skipped and the report says why;
* the **Python** one, :mod:`benchmarks.loadgen`, for the memory and capacity workloads, the
  profile, and the rate workloads when dtlsload is missing (``--python-rates`` runs them
  anyway).  It shares the cores with the server, so its rates understate both servers.

``benchmarks/device_run.sh OUT DTLSLOAD`` runs the native part alone, in four time-boxed parts,
on a many-core machine without network.

Three kinds of process take part, so that no one measures itself:

* the **server under test** (:mod:`benchmarks.ours` or :mod:`benchmarks.trio_endpoint_server`),
  each in its own process so its RSS and CPU time are its own (:mod:`benchmarks.server_harness`);
* the **load generator** (dtlsload, or :mod:`benchmarks.loadgen`: lean DTLS clients on plain
  sockets and one epoll loop), reporting its own CPU share so a saturated generator is visible;
* the **orchestrator** (:mod:`benchmarks.runner`, :mod:`benchmarks.report`), which starts and
  stops the other two and judges the results.

:mod:`benchmarks.floor` measures what one OpenSSL connection costs with no server around it.
"""
