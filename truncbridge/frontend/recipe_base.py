"""What every recipe shares: tagging the nodes it emits, declaring their bounds from a dense grid
over the input range, and the public grid every input range is rounded out to before a recipe
picks a parameter (``public_range``)."""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from ..core.errors import UserError
from ..core.fields import MAX_RING_BITS
from ..core.ir import Builder
from ..core.ops import real_value
from ..core.types import PRECISION_TOLERANCE_BITS


@contextmanager
def recipe(b: Builder, name: str, **params):
    """Tag the nodes emitted inside with the recipe name; record its parameters on the first.
    Yields the parameters' dict: what the recipe learns after emitting (its error bound, with the
    roundings included) is added to it before it is recorded."""
    previous, first = b.recipe, len(b.program.nodes)
    b.recipe = name
    try:
        yield params
    finally:
        b.recipe = previous
        if len(b.program.nodes) > first:
            b.program.nodes[first].facts.recipe_params = {k: jsonable(v) for k, v in params.items()}


GRID_POINTS = 4001
GRID_SLACK = 1.001  # declared bounds: grid maximum x this, for extrema between grid points


def declare_by_grid(b: Builder, first: int, source: int, grid: np.ndarray, tol: float | None = None) -> dict[int, float]:
    """Declare bounds for the elementwise nodes emitted since ``first`` (all functions of node
    ``source`` and public scalars) by evaluating them on ``grid``, a dense sample of the range
    the recipe was built for. With ``tol`` (the recipe's tolerance, which fixes frac_bits), each
    bound is widened by what fixed-point rounding can add to it (``rounding_errors``), so that
    the bounds hold for the emulated values, not only for real arithmetic; returns those errors."""
    env = {source: torch.as_tensor(grid, dtype=torch.float64)}
    for node in b.program.nodes[first:]:
        env[node.id] = real_value(node, [env[i] for i in node.inputs], b.program)
    magnitude = {i: v.abs().max().item() for i, v in env.items()}
    if not all(math.isfinite(m) for m in magnitude.values()):  # beyond float64, so beyond every field
        name = b.program.nodes[first].recipe if len(b.program.nodes) > first else "a recipe"
        raise UserError(f"{name or 'a recipe'} on [{grid[0]:.4g}, {grid[-1]:.4g}] reaches values over 2^1024: no field "
                        f"holds them (the widest has {MAX_RING_BITS} bits); narrow the input range (--bounds calibrated)")
    errors = rounding_errors(b, first, source, magnitude, tol) if tol is not None else {}
    for node in b.program.nodes[first:]:
        b.declare(node.id, magnitude[node.id] * GRID_SLACK + errors.get(node.id, 0.0))
    return errors


RECIPE_TOL_SLACK_BITS = 4  # lower.py: recipes aim at 2^-(frac_bits - 4), so frac_bits = 4 - log2(tol)


def truncation_error(tol: float) -> float:
    """The most one truncation can move a value, as a recipe sees it: half an LSB of frac_bits
    (nearest rounding), times 2^PRECISION_TOLERANCE_BITS because lazy and optimal may keep a
    value that many bits below eager's scale."""
    return tol * 2.0 ** (PRECISION_TOLERANCE_BITS - RECIPE_TOL_SLACK_BITS - 1)


def encoding_error(value: torch.Tensor, tol: float) -> float:
    """How far encoding a public constant at frac_bits moves it (0 for small integers: scale 0)."""
    v = value.double()
    if bool(torch.all(v == torch.round(v))):
        return 0.0
    step = tol * 2.0 ** -RECIPE_TOL_SLACK_BITS
    return (torch.round(v / step) * step - v).abs().max().item()


def rounding_errors(b: Builder, first: int, source: int, magnitude: dict[int, float], tol: float) -> dict[int, float]:
    """Per node emitted since ``first``, a worst-case bound on |fixed point - real| caused by the
    recipe's own roundings (the input ``source`` taken as exact): every product may be truncated
    (``truncation_error``), public constants are encoded at frac_bits, and errors travel through
    each op with the magnitudes the grid gave: |a'b' - ab| <= (|a| + ea) eb + |b| ea."""
    err, trunc = {source: 0.0}, truncation_error(tol)
    for node in b.program.nodes[first:]:
        e = [err.get(i, 0.0) for i in node.inputs]
        m = [magnitude.get(i, 0.0) for i in node.inputs]
        if node.op == "mul":
            err[node.id] = (m[0] + e[0]) * e[1] + m[1] * e[0] + trunc
        elif node.op == "mul_public":
            c = b.program.consts[node.attrs["const"]]
            dc = encoding_error(c, tol)
            integer = bool(torch.all(c == torch.round(c)))  # encoded at scale 0: no truncation follows
            err[node.id] = e[0] * (c.abs().max().item() + dc) + m[0] * dc + (0.0 if integer else trunc)
        elif node.op == "add_public":
            err[node.id] = e[0] + encoding_error(b.program.consts[node.attrs["const"]], tol)
        elif node.op == "pow2":
            err[node.id] = e[0] * 2.0 ** node.attrs["exp"]
        else:  # add, sub, neg, data moves: errors add
            err[node.id] = sum(e)
    return err


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
