"""Import CrypTen 0.4.1 on recent torch.

CrypTen's ``nn/onnx_converter.py`` imports ``torch.onnx._internal.registration``, which newer torch
moved to ``torch.onnx._internal.torchscript_exporter.registration``. Registering the new module
under the old name in ``sys.modules`` before the import is all CrypTen needs; nothing else is
patched. Use ``import_crypten()`` instead of ``import crypten``.
"""
from __future__ import annotations

import importlib
import sys

OLD = "torch.onnx._internal.registration"
NEW = "torch.onnx._internal.torchscript_exporter.registration"


def alias_onnx_registration() -> None:
    """Make ``torch.onnx._internal.registration`` importable if this torch only has the new path."""
    try:
        importlib.import_module(OLD)
        return
    except ImportError:
        pass
    sys.modules[OLD] = importlib.import_module(NEW)


def import_crypten():
    """``import crypten`` with the compatibility alias applied first; returns the module."""
    alias_onnx_registration()
    return importlib.import_module("crypten")
