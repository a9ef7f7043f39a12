"""Any ``torch.nn.Module`` on one real-valued tensor -> IR: capture, calibrate, lower.

The LM path (``pipeline.convert``) feeds token ids and calibrates on text; here the client's input
is a real-valued tensor, and what the plan assumes about it comes from its owner, in one of two ways:

* ``input_bounds`` — a declared range ``(lo, hi)``, or a float ``m`` for ``(-m, m)``: the input's
  static bound is max(|lo|, |hi|). Recipes (GELU, softmax, layer norm, ...) still need the ranges of
  their own inputs: they are measured on the dummy input clamped to the range, the range's two
  corners and ``BOX_SAMPLES`` uniform samples in it — unless calibration data is given too.
* ``calibration`` — sample inputs (a tensor of the dummy's shape, a batch of them stacked along
  dim 0, or a list of either), run through the float module: every recipe's range is measured on
  them, and without ``input_bounds`` the input's range is their range widened like any calibrated
  range (``calibrate.widened``).

Either way the plan's promises rest on these ranges; ``emulate --check`` (``RingExecutor(check=True)``)
reports any value outside them, the client's input included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.errors import UserError
from .calibrate import Range, calibrate, widened
from .capture import Captured, capture_module
from .lower import lower

BOX_SAMPLES = 8  # uniform samples in a declared input range, where no calibration data is given


@dataclass
class ConvertedModule:
    """A module lowered to IR on a fixed input shape; ``input_range``: the range its plan assumes
    for the client's input, and where that range came from ("declared" or "calibration")."""

    module: torch.nn.Module
    captured: Captured
    program: object  # core.ir.Program
    input_range: tuple[float, float]
    range_source: str
    samples: list[torch.Tensor]  # the inputs recipes were calibrated on

    @property
    def input_bound(self) -> float:
        return max(abs(self.input_range[0]), abs(self.input_range[1]))


def convert_module(module: torch.nn.Module, dummy_input, frac_bits: int, input_bounds=None, calibration=None,
                   relu: str = "comparison") -> ConvertedModule:
    """Capture ``module`` on ``dummy_input``'s shape, calibrate its recipes, lower it to IR."""
    declared = _declared_range(input_bounds)
    if declared is None and calibration is None:
        raise UserError("no bounds for the module's input: give input_bounds=(lo, hi) (or a max |x|) or calibration=")
    captured = capture_module(module, dummy_input)
    shape = captured.input_shape
    if calibration is not None:
        samples = _calibration_samples(calibration, shape, dummy_input.dtype)
    else:
        samples = _box_samples(dummy_input.reshape(shape), declared)
    ranges = calibrate(captured, samples)
    if declared is not None:
        input_range, source = declared, "declared"
    else:
        input_range, source = widened(ranges[captured.client_input]), "calibration"
    ranges[captured.client_input] = Range(*input_range)  # recipes on the raw input cover all of it
    bound = max(abs(input_range[0]), abs(input_range[1]))
    program = lower(captured, ranges, frac_bits, relu, input_bound=bound)
    return ConvertedModule(module, captured, program, input_range, source, samples)


def _declared_range(input_bounds) -> tuple[float, float] | None:
    if input_bounds is None:
        return None
    if isinstance(input_bounds, (int, float)):
        lo, hi = -float(input_bounds), float(input_bounds)
    elif isinstance(input_bounds, (tuple, list)) and len(input_bounds) == 2:
        lo, hi = (float(v) for v in input_bounds)
    else:
        raise UserError(f"input_bounds must be (lo, hi) or a max |x|, got {input_bounds!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"input_bounds must be finite with lo < hi, got ({lo}, {hi})")
    return lo, hi


def _calibration_samples(calibration, shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    """Calibration data as inputs of the captured shape: each tensor of that shape, or a stack of
    them along dim 0 (its first dimension a multiple of the shape's)."""
    tensors = list(calibration) if isinstance(calibration, (list, tuple)) else [calibration]
    samples = []
    for t in tensors:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise UserError(f"calibration data must be real-valued tensors, got {type(t).__name__}")
        if not shape or t.dim() != len(shape) or tuple(t.shape[1:]) != tuple(shape[1:]) or t.shape[0] % shape[0]:
            raise UserError(f"calibration tensor of shape {tuple(t.shape)} does not stack inputs of shape {tuple(shape)}")
        samples.extend(t.split(shape[0]))
    if not samples:
        raise UserError("calibration data is empty")
    return [s.to(dtype) for s in samples]


def _box_samples(dummy: torch.Tensor, box: tuple[float, float]) -> list[torch.Tensor]:
    """The dummy input clamped to the box, its two corners and uniform samples in it (seeded)."""
    lo, hi = box
    g = torch.Generator().manual_seed(0)
    uniform = [lo + (hi - lo) * torch.rand(dummy.shape, generator=g, dtype=dummy.dtype) for _ in range(BOX_SAMPLES)]
    corners = [torch.full(dummy.shape, lo, dtype=dummy.dtype), torch.full(dummy.shape, hi, dtype=dummy.dtype)]
    return [dummy.detach().clamp(lo, hi), *corners, *uniform]
