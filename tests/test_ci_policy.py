"""The suite's own policy: under ``CI=true`` a skipped test fails the run (see conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

_CONFTEST = Path(__file__).with_name("conftest.py").read_text(encoding="utf-8")
_SKIPPING_TEST = "import pytest\n\ndef test_needs_a_peer():\n    pytest.skip('peer missing')\n"


@pytest.mark.parametrize(("ci", "outcome"), [("true", "failed"), ("", "skipped")])
def test_a_skip_fails_only_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    pytester.makeconftest(_CONFTEST)
    pytester.makepyfile(_SKIPPING_TEST)
    monkeypatch.setenv("CI", ci)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(["*skipped under CI=true*peer missing*"])
