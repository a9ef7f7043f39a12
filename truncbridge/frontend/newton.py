"""Newton–Raphson recipes: reciprocal and rsqrt from a public start, iteration count and start
chosen by simulating them over the input range (rounded out to the public grid first); rsqrt's
steps coupled so that one truncation carries each (``core.fusion``)."""
from __future__ import annotations

import math

import numpy as np

from ..core.errors import UserError
from ..core.ir import Builder
from .recipe_base import GRID_POINTS, declare_by_grid, positive_range, public_range, recipe

MAX_NEWTON_ITERS = 40
NEWTON_STARTS = (0.75, 1.0, 1.25, 1.5, 1.75)


def _newton_plan(step, start_error, r: float, tol: float, name: str) -> tuple[float, int, float]:
    """Best public start c, iteration count so that ``step`` converges on u in [r, 1] to tol, and
    the relative error it reaches there (real arithmetic)."""
    us = np.geomspace(r, 1.0, 4000)
    best = None
    for c in NEWTON_STARTS:
        y = np.full_like(us, c)
        for it in range(1, MAX_NEWTON_ITERS + 1):
            y = step(us, y)
            if np.all(np.isfinite(y)) and np.max(start_error(us, y)) <= tol:
                if best is None or it < best[1]:
                    best = (c, it, float(np.max(start_error(us, y))))
                break
    if best is None:
        raise UserError(f"{name}: no Newton start converges within {MAX_NEWTON_ITERS} iterations "
                        f"on a dynamic range of {1 / r:.3g}; narrow the input range")
    return best


def reciprocal(b: Builder, x: int, lo: float, hi: float, tol: float) -> int:
    positive_range("reciprocal", lo, hi)
    lo, hi = public_range(lo, hi)
    b.declare(x, hi, "range")
    k = math.ceil(math.log2(hi))
    r = lo / 2.0**k
    c, iters, error = _newton_plan(lambda u, y: y * (2 - u * y), lambda u, y: np.abs(1 - u * y), r, tol, "reciprocal")
    first = len(b.program.nodes)
    with recipe(b, "reciprocal", lo=lo, hi=hi, method="newton", steps=iters, max_error=error, relative=True,
                start=c, iterations=iters, shift=k):
        u = b.pow2(x, -k)
        y = b.add_public(b.mul_public(u, -c * c), 2 * c)  # first step from the public start c
        for _ in range(iters - 1):
            y = b.mul(y, b.add_public(b.neg(b.mul(u, y)), 2.0))
        out = b.pow2(y, -k)
    declare_by_grid(b, first, x, np.geomspace(lo, hi, GRID_POINTS))
    return out


def rsqrt(b: Builder, x: int, lo: float, hi: float, tol: float) -> int:
    positive_range("rsqrt", lo, hi)
    lo, hi = public_range(lo, hi)
    b.declare(x, hi, "range")
    k = math.ceil(math.log2(hi) / 2)  # may be negative: small inputs are scaled up, for free
    r = lo / 4.0**k
    c, iters, error = _newton_plan(lambda u, y: y * (1.5 - 0.5 * u * y * y), lambda u, y: np.abs(1 - np.sqrt(u) * y),
                                   r, tol, "rsqrt")
    plain, coupled = _newton_split(c, r, iters - 1, tol)
    first = len(b.program.nodes)
    with recipe(b, "rsqrt", lo=lo, hi=hi, method="newton", steps=iters, max_error=error, relative=True,
                start=c, iterations=iters, coupled=coupled, shift=k):
        u = b.pow2(x, -2 * k)
        y = b.add_public(b.mul_public(u, -0.5 * c**3), 1.5 * c)  # first step from the public start c
        for _ in range(plain):
            y = _newton_step(b, u, y)
        if coupled:
            y = _coupled_newton_steps(b, _uy2(b, u, y) if plain else _first_v(b, u, c), y, coupled)
        for _ in range(iters - 1 - plain - coupled):
            y = _newton_step(b, u, y)
        out = b.pow2(y, -k)
    declare_by_grid(b, first, x, np.geomspace(lo, hi, GRID_POINTS))
    return out


def _uy2(b: Builder, u: int, y: int) -> int:
    return b.mul(u, b.mul(y, y))


def _newton_step(b: Builder, u: int, y: int) -> int:
    """y (1.5 - u y^2 / 2): the plain step, self-correcting."""
    return b.mul(y, b.add_public(b.neg(b.pow2(_uy2(b, u, y), -1)), 1.5))


ROUNDING = 2.0**-5  # a truncation's rounding error, in units of a recipe's tol (lower.RECIPE_TOL_SLACK_BITS + 1)


def _newton_split(c: float, r: float, steps: int, tol: float) -> tuple[int, int]:
    """rsqrt's Newton steps as (plain, coupled): ``plain`` steps as they are, then ``coupled``
    steps (``_coupled_newton_steps``), then the rest as they are. A coupled step's rounding of v
    costs y about that error / (2 v), relative, which the coupled steps never correct; the plain
    step after them does, squaring it (1.5 e^2). So couple all steps but the last, starting as
    soon as the error they leave, squared, is within one rounding over [r, 1]. v1 as a polynomial
    in u (``_first_v``) may carry the roundings of u^2 and u^3 times their coefficients."""
    us = np.geomspace(r, 1.0, 4000)
    ys = c * (1.5 - 0.5 * c * c * us)
    for plain in range(steps - 1):
        vs = us * ys * ys
        error = ROUNDING * tol * (1.5 * c**4 + 0.25 * c**6 if plain == 0 else 1) / (2 * np.min(vs))
        for _ in range(steps - 1 - plain):
            error += ROUNDING * tol / (2 * np.min(vs))
            vs = vs * (1.5 - 0.5 * vs) ** 2
        if 1.5 * error**2 <= ROUNDING * tol:
            return plain, steps - 1 - plain
        ys = ys * (1.5 - 0.5 * us * ys * ys)
    return steps, 0


def _first_v(b: Builder, u: int, c: float) -> int:
    """v1 = u y1^2 with y1 = c (1.5 - c^2 u / 2), as a polynomial in u: its powers ride on one
    truncation where u's does (``core.fusion``), one round sooner than y1^2 then u y1^2."""
    u2 = b.mul(u, u)
    return b.add(b.add(b.mul_public(u, 2.25 * c**2), b.mul_public(u2, -1.5 * c**4)),
                 b.mul_public(b.mul(u2, u), 0.25 * c**6))


def _coupled_newton_steps(b: Builder, v: int, y: int, steps: int) -> int:
    """Newton's rsqrt steps y <- y m, m = 1.5 - v/2, with v = u y^2 carried along as v <- v m^2:
    the same iterates, but v's chain is one product deep per step, so one truncation of v carries
    a whole step (``core.fusion``). y m1 m2 ... is multiplied up off that chain, odd and even
    steps' factors apart: each partial product has a step's slack to be truncated before its next
    factor arrives, so its truncations never hold up v's."""
    partial = [None, y]  # y waits a step for its first factor: its truncation, if any, holds nothing up
    for step in range(steps):
        m = b.add_public(b.neg(b.pow2(v, -1)), 1.5)
        partial[step % 2] = m if partial[step % 2] is None else b.mul(partial[step % 2], m)
        if step < steps - 1:
            v = b.mul(v, b.mul(m, m))
    return partial[1] if partial[0] is None else b.mul(*partial)
