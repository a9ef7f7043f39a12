"""Executing programs and plans through ``core.interpret``: float64 reals (the reference) and
exact ring integers (the emulator, with the protocols' truncation models). The CrypTen backend
lives in ``truncbridge.crypten``."""
from .emulator import RingExecutor
from .reference import run_float
from .truncation_models import TRUNCATION_MODELS, truncation_model_for

__all__ = ["RingExecutor", "run_float", "TRUNCATION_MODELS", "truncation_model_for"]
