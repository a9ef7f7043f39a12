"""The house rules that keep the code readable, checked: small files, small functions.

(The linter and the import-layer contract run from ``make test`` / ``make lint``.)"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "truncbridge"
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_source_file_is_over_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"split these files (lines): {long}"


def test_no_function_is_over_60_lines():
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = lines
    assert not long, f"split these functions (lines): {long}"
