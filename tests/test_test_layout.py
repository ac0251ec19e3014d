"""The suite's own layout: a test module never imports from another test module.

Helpers that several test files share live in a support module named after their concern
(``cli_support.py``, ``interop_support.py``, ``session_support.py``, ...), so that running,
moving or deleting one ``test_*.py`` file never breaks another and pytest never collects a
module twice under two roles.  Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def _imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.append((node.lineno, node.module))
    return found


def _is_test_module(name: str) -> bool:
    last = name.split(".")[-1]
    return last.startswith("test_") or name.startswith("tests.test_")


def test_no_test_module_imports_another_test_module() -> None:
    offenders = [
        f"{path.name}:{line}: imports {module}"
        for path in sorted(TESTS.glob("test_*.py"))
        for line, module in _imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        if _is_test_module(module)
    ]
    assert offenders == [], "move shared helpers into a *_support.py module:\n" + "\n".join(
        offenders
    )
