"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a ``UserError`` into a one-line message and exit status 2; anything else is a bug
and keeps its traceback.
"""
import argparse


class UserError(Exception):
    """Bad input: unknown model, missing file, impossible field size, unsupported operator, ..."""


def first_line(exc: BaseException) -> str:
    """An exception's message in one line (its type name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is a ``UserError``: one line, exit status 2."""

    def error(self, message: str):
        raise UserError(message)
