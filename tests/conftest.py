"""Suite-wide pytest hooks and the fixtures several test modules share.

Skips are for laptops: a test that skips because a peer stack (Qt, tinydtls, Mbed TLS,
node-dtls-client, wolfSSL, ...) or a privilege (raw sockets) is missing says so and moves on.
Under CI (``CI=true``) every test must really run, so there a skip is reported as a failure:
a peer that failed to install cannot hide behind a green run.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    # Only for the annotation: test_ci_policy.py runs a copy of this file where the test
    # helpers are not importable, so the fixture imports them when it runs.
    from auth_support import Credentials

#: True where the environment says this is a CI run (GitHub Actions, GitLab and our .ci/run
#: all set ``CI=true``).
UNDER_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if UNDER_CI and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"


pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def credentials(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Credentials:
    """Every certificate and key the certificate tests need (see :func:`make_credentials`).

    Made once per test module (``trustme`` takes a moment per CA), in a directory of its own
    named after the module, so no module sees files another one wrote.
    """
    from auth_support import make_credentials

    return make_credentials(tmp_path_factory.mktemp(request.path.stem))
