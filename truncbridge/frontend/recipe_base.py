"""What every recipe shares: tagging the nodes it emits, declaring their bounds from a dense grid
over the input range, and the public grid every input range is rounded out to before a recipe
picks a parameter (``public_range``)."""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from ..core.errors import UserError
from ..core.ir import Builder
from ..core.ops import real_value


@contextmanager
def recipe(b: Builder, name: str, **params):
    """Tag the nodes emitted inside with the recipe name; record its parameters on the first."""
    previous, first = b.recipe, len(b.program.nodes)
    b.recipe = name
    try:
        yield
    finally:
        b.recipe = previous
        if len(b.program.nodes) > first:
            b.program.nodes[first].facts.recipe_params = {k: jsonable(v) for k, v in params.items()}


GRID_POINTS = 4001
GRID_SLACK = 1.001  # declared bounds: grid maximum x this, for extrema between grid points


def declare_by_grid(b: Builder, first: int, source: int, grid: np.ndarray) -> None:
    """Declare bounds for the elementwise nodes emitted since ``first`` (all functions of node
    ``source`` and public scalars) by evaluating them on ``grid``, a dense sample of the range
    the recipe was built for."""
    env = {source: torch.as_tensor(grid, dtype=torch.float64)}
    for node in b.program.nodes[first:]:
        env[node.id] = real_value(node, [env[i] for i in node.inputs], b.program)
        b.declare(node.id, env[node.id].abs().max().item() * GRID_SLACK)


RANGE_GRID_STEPS = 4  # steps per octave of the public range grid: 0 and +-2^(k/4), k any integer


def grid_point(v: float, up: bool) -> float:
    """The point 2^(k/RANGE_GRID_STEPS) of the public grid nearest to v > 0 at or above it (``up``)
    or at or below it: a function of the integer k alone."""
    q = RANGE_GRID_STEPS
    k = math.ceil(math.log2(v) * q) if up else math.floor(math.log2(v) * q)
    point = lambda j: math.ldexp(2.0 ** ((j % q) / q), j // q)  # noqa: E731
    while up and point(k - 1) >= v:  # log2's rounding, corrected: the nearest point, not one past it
        k -= 1
    while up and point(k) < v:
        k += 1
    while not up and point(k + 1) <= v:
        k += 1
    while not up and point(k) > v:
        k -= 1
    return point(k)


def public_range(lo: float, hi: float) -> tuple[float, float]:
    """[lo, hi] rounded outward to the public grid {0, +-2^(k/RANGE_GRID_STEPS)}. Recipes fit every
    constant and pick every parameter (shifts, degrees, iterations, starts) on this range only, so
    what they put in a plan is a function of a few integers k — quarter bit widths — and never of
    the exact ranges, which come from the owner's weights and calibration text. Idempotent;
    infinities and NaN pass through (the recipe refuses them)."""
    def out(v: float, up: bool) -> float:
        if v == 0 or not math.isfinite(v):
            return v
        return grid_point(v, up) if v > 0 else -grid_point(-v, not up)
    return out(lo, False), out(hi, True)


def jsonable(v):
    return float(v) if isinstance(v, (float, np.floating)) else v


def positive_range(name: str, lo: float, hi: float) -> None:
    if not (lo > 0 and hi >= lo and math.isfinite(hi)):
        raise UserError(f"{name} needs a positive input range, calibration gave [{lo:.4g}, {hi:.4g}]")
