"""The house rules that keep the code readable, checked: small files, small functions.

(The linter and the import-layer contract run from ``make test`` / ``make lint``.)"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


@pytest.mark.slow  # a fresh interpreter importing torch and CrypTen
def test_a_crypten_program_imports_the_protocol_backend_alone():
    """What the import contract promises, in a fresh interpreter: the backend's modules load without the converter,
    the run driver or transformers (negative control: the same probe sees them after importing the driver)."""
    import subprocess
    import sys

    probe = ("import sys, importlib; [importlib.import_module(m) for m in sys.argv[1:]]; "
             "print(' '.join(sorted(m for m in ('truncbridge.pi', 'truncbridge.pipeline', 'truncbridge.frontend', "
             "'transformers') if m in sys.modules)))")
    backend = [f"truncbridge.backends.crypten.{m}" for m in ("runner", "dealing", "truncation", "material")]
    loaded = subprocess.run([sys.executable, "-c", probe, *backend], capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == []
    driver = subprocess.run([sys.executable, "-c", probe, "truncbridge.pi.session"], capture_output=True, text=True,
                            check=True)
    assert "truncbridge.pi" in driver.stdout.split()
