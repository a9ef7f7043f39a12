"""What every recipe shares: tagging the nodes it emits, and declaring their bounds from a dense
grid over the input range."""
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


def jsonable(v):
    return float(v) if isinstance(v, (float, np.floating)) else v


def positive_range(name: str, lo: float, hi: float) -> None:
    if not (lo > 0 and hi >= lo and math.isfinite(hi)):
        raise UserError(f"{name} needs a positive input range, calibration gave [{lo:.4g}, {hi:.4g}]")
