"""Recipes: nonlinear functions as additions, multiplications and free power-of-two rescales.

Each recipe is range-aware: it is given the interval its input lies in (calibrated, widened by a
safety margin) and an absolute tolerance, rounds the interval outward to the public grid
(``recipe_base.public_range``: 0 and +-2^(k/4)), and picks its parameters — normalisation shifts,
iteration counts, polynomial degree, coefficients — by simulating itself in float64 over that
rounded interval, so that they depend on the owner's exact ranges only through the integers k. The
parameters it picked are written on the nodes it emits (``facts.recipe_params`` on the first
one) so a plan says exactly what was computed. No recipe uses a comparison.

    exp         limit method (1 + u + u^2/2 + u^3/6)^(2^n), u = x/2^n, n sized by the interval
    reciprocal  x = u 2^k with u in (0, 1]; Newton  y <- y (2 - u y)  from a public start
    rsqrt       x = u 4^k with u in (0, 1]; Newton  y <- y (3 - u y^2) / 2  from a public start,
                coupled with v = u y^2 so that one truncation carries a step (``newton.py``)
    chebyshev   any smooth elementwise f: Chebyshev interpolant on the interval, T_k by doubling;
                its maximum error over the interval is recorded (``max_error``)
    softmax     centred on the row mean; exp by the limit with interleaved normalisations (no max)
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..core.errors import UserError
from ..core.ir import Builder
from .newton import reciprocal, rsqrt  # noqa: F401 (recipes.rsqrt, recipes.reciprocal)
from .recipe_base import GRID_POINTS, declare_by_grid, public_range, recipe

EXP_MIN_ITERS = 8  # CrypTen's choice; more only when the range needs it
MAX_CHEBYSHEV_DEGREE = 96
NORM_SLACK = 1.01  # bounds that hold for exact normalisation, widened for the reciprocal's error
ROUGH_TOL = 0.25  # softmax's intermediate normalisations: rows within 25 % of mean 1 (ranges below hold)


def power(x, n: int, mul: Callable, square: Callable | None = None):
    """x^n (n >= 1) by square-and-multiply with the given product (IR nodes or CrypTen tensors)."""
    square = square or (lambda v: mul(v, v))
    result, base = None, x
    while n:
        if n & 1:
            result = base if result is None else mul(result, base)
        n >>= 1
        if n:
            base = square(base)
    return result


# -- exp -----------------------------------------------------------------------------------------
def exp_iterations(lo: float) -> int:
    """Squarings N for the limit method: at least EXP_MIN_ITERS, and u = lo / 2^N >= -3/4,
    where the cubic base 1 + u + u^2/2 + u^3/6 is still above 1/2 and increasing."""
    need = math.ceil(math.log2(-lo / 0.75)) if lo < -0.75 else 0
    return max(EXP_MIN_ITERS, need)


def exp_base(b: Builder, z: int, squarings: int) -> int:
    """1 + u + u^2/2 + u^3/6 with u = z / 2^squarings: exp(u) to O(u^4), so that squaring it
    ``squarings`` times gives exp(z) with relative error ~ z^4 / (24 * 8^squarings), where the
    plain limit base 1 + u would leave z^2 / 2^(squarings + 1)."""
    u = b.pow2(z, -squarings)
    u2 = b.mul(u, u)
    cubic = b.mul_public(b.mul(u2, u), 1.0 / 6.0)
    return b.add_public(b.add(b.add(u, b.pow2(u2, -1)), cubic), 1.0)


def exp_error(lo: float, hi: float, squarings: int) -> float:
    """max |limit / exp - 1| over [lo, hi] in real arithmetic (fixed point adds ~2^squarings LSBs, relative)."""
    z = np.linspace(lo, hi, GRID_POINTS)
    u = z / 2.0**squarings
    return float(np.max(np.abs((1 + u + u * u / 2 + u**3 / 6) ** (2.0**squarings) / np.exp(z) - 1)))


def exp(b: Builder, x: int, lo: float, hi: float) -> int:
    lo, hi = public_range(lo, hi)
    n = exp_iterations(lo)
    b.declare(x, max(-lo, hi), "range")
    first = len(b.program.nodes)
    with recipe(b, "exp", lo=lo, hi=hi, method="limit", steps=n, degree=3, max_error=exp_error(lo, hi, n),
                relative=True, squarings=n):
        y = exp_base(b, x, n)
        for _ in range(n):
            y = b.mul(y, y)
    declare_by_grid(b, first, x, np.linspace(lo, hi, GRID_POINTS))
    return y


# -- Chebyshev -----------------------------------------------------------------------------------
ERROR_GRID_POINTS = 20001


def fit_error(fn, m: float, h: float, coef: np.ndarray, lo: float, hi: float) -> float:
    """A bound on max |fit(x) - fn(x)| over [lo, hi] in real arithmetic: the maximum on a dense
    grid plus half the largest change between neighbours (how far the error can rise between
    grid points when it is smooth at the grid's scale), widened by 1 %."""
    xs = np.linspace(lo, hi, ERROR_GRID_POINTS)
    err = np.polynomial.chebyshev.chebval((xs - m) / h, coef) - fn(xs)
    return float((np.max(np.abs(err)) + np.max(np.abs(np.diff(err))) / 2) * 1.01)


POWER_OF_TWO_SLACK = 2  # degrees a free power-of-two scaling may add before the exact one's truncation pays


def chebyshev_fit(fn, lo: float, hi: float, tol: float, name: str,
                  max_degree: int = MAX_CHEBYSHEV_DEGREE) -> tuple[float, float, np.ndarray]:
    """Centre m, half-width h (t = (x - m) / h) and the coefficients of the lowest degree whose
    error in real arithmetic is within tol / 2 on a dense grid; the other half is left to
    fixed-point rounding, which ``chebyshev`` bounds and records. h is the range's own half-width
    (t fills [-1, 1]; scaling by 1/h costs a truncation) or the power of two above it (free; t
    fills part of [-1, 1], up to twice the degree on a wide range), whichever needs at most
    POWER_OF_TWO_SLACK degrees more. A UserError when no degree up to ``max_degree`` fits."""
    m, h = (lo + hi) / 2, max((hi - lo) / 2, 2.0**-20)
    coef, best = _lowest_fit(fn, m, h, tol, max_degree)
    if coef is None:
        raise UserError(f"{name}: no Chebyshev fit of degree <= {max_degree} reaches {tol / 2:.2g} on "
                        f"[{lo:.4g}, {hi:.4g}] (best {best:.2g}): narrow the range or register a recipe (register_recipe)")
    h2 = 2.0 ** math.ceil(math.log2(h))
    if h2 != h:
        coef2, _ = _lowest_fit(fn, m, h2, tol, min(max_degree, len(coef) - 1 + POWER_OF_TWO_SLACK))
        if coef2 is not None:
            return m, h2, coef2
    return m, h, coef


def _lowest_fit(fn, m: float, h: float, tol: float, max_degree: int) -> tuple[np.ndarray | None, float]:
    """Coefficients of the lowest-degree interpolant of fn(m + h t) on [-1, 1] within tol / 2 (or
    None), and the best error seen."""
    g = lambda t: fn(m + t * h)  # noqa: E731
    ts = np.linspace(-1.0, 1.0, 4001)
    exact = g(ts)
    best = math.inf
    for degree in range(1, max_degree + 1):
        series = np.polynomial.chebyshev.Chebyshev.interpolate(g, degree)
        fit = float(np.max(np.abs(series(ts) - exact)))
        best = min(best, fit)
        if fit <= tol / 2:
            coef = series.coef.copy()
            coef[np.abs(coef) < tol / (64 * len(coef))] = 0.0  # drop terms that cannot matter
            return coef, best
    return None, best


def is_power_of_two(v: float) -> bool:
    return v > 0 and math.frexp(v)[0] == 0.5


def chebyshev_series(b: Builder, x: int, m: float, h: float, coef: np.ndarray) -> int:
    """sum_k coef_k T_k((x - m) / h): the scaling is free where h is a power of two."""
    degree = int(np.max(np.nonzero(coef)[0])) if np.any(coef) else 0
    t = b.mul_public(b.add_public(x, -m), 1.0 / h)
    T = chebyshev_basis(b, t, degree)
    terms = [b.mul_public(T[k], float(coef[k])) for k in range(1, degree + 1) if coef[k] != 0.0]
    if not terms:  # constant function on the range
        terms = [b.mul_public(t, 0.0)]
    out = terms[0]
    for term in terms[1:]:
        out = b.add(out, term)
    return b.add_public(out, float(coef[0]))


def chebyshev(b: Builder, x: int, fn, lo: float, hi: float, tol: float, name: str, gain_bits: int = 0) -> int:
    """fn on [lo, hi] by its Chebyshev series. ``gain_bits`` j > 0: the series computes 2^j fn and
    its output is relabelled by 2^-j (free), so it carries j more fraction bits — for an output a
    public factor >= 2^j scales up next (soft-capping's cap * tanh(x / cap))."""
    lo, hi = public_range(lo, hi)
    m, h, coef = chebyshev_fit(fn, lo, hi, tol, name)
    b.declare(x, max(-lo, hi), "range")
    degree = int(np.max(np.nonzero(coef)[0])) if np.any(coef) else 0
    first = len(b.program.nodes)
    fitted = fit_error(fn, m, h, coef, lo, hi)  # on [lo, hi], before fixed-point rounding
    params = dict(lo=lo, hi=hi, method="chebyshev", degree=degree, centre=m, half_width=h, fit_error=fitted)
    with recipe(b, name, **params) as recorded:
        out = b.pow2(chebyshev_series(b, x, m, h, coef * 2.0**gain_bits), -gain_bits)
        rounding = declare_by_grid(b, first, x, np.linspace(lo, hi, GRID_POINTS), tol)
        recorded["max_error"] = fitted + rounding[out]  # holds in fixed point: the recipe's roundings included
    return out


def chebyshev_basis(b: Builder, t: int, degree: int) -> dict[int, int]:
    """T_1..T_degree of a secret t by T_2k = 2 T_k^2 - 1 and T_2k+1 = 2 T_k T_k+1 - t (depth log d)."""
    T = {1: t}
    for k in range(2, degree + 1):
        half = k // 2
        if k % 2 == 0:
            T[k] = b.add_public(b.pow2(b.mul(T[half], T[half]), 1), -1.0)
        else:
            T[k] = b.sub(b.pow2(b.mul(T[half], T[half + 1]), 1), t)
    return T


# -- softmax -------------------------------------------------------------------------------------
def softmax_plan(zlo: float, zhi: float, row: int) -> tuple[int, int]:
    """(normalisations m, total squarings N) for centred scores in [zlo, zhi] and rows of ``row``.

    m makes exp(zhi / 2^m) <= row, so every reciprocal sees a range of at most [1, row];
    N makes the base 1 + u + u^2/2 + u^3/6 with u = z / 2^N stay above 1/2 on [zlo, zhi].
    """
    m = max(0, math.ceil(math.log2(zhi / math.log(max(row, 2))))) if zhi > 0 else 0
    return m, max(exp_iterations(zlo), m)


def softmax(b: Builder, x: int, dim: int, keep: torch.Tensor | None, zlo: float, zhi: float, tol: float) -> int:
    """softmax along ``dim`` with no comparison and no max.

    Scores are centred on their row mean (z = x - mean; the mean is local and free), then
    exp(z) is the limit (1 + u + u^2/2 + u^3/6)^(2^N), u = z / 2^N, whose last m squarings are
    interleaved with normalisations q <- q^2 / mean(q^2). A row of q has mean 1, so
    mean(q^2) lies in [1, row] whatever the scores: the reciprocals have static, narrow ranges
    and nothing overflows. Only the last normalisation must be exact; the others divide by a
    reciprocal good to ROUGH_TOL (row means within [0.75, 1.25], mean(q^2) within
    [0.56, 1.56 row], inside the same ranges), which takes 3 fewer Newton rounds each.
    ``keep`` is the public 0/1 mask of entries that are not -inf;
    [zlo, zhi] is the calibrated (widened) range of the centred scores.
    """
    zlo, zhi = public_range(zlo, zhi)
    shape = b.shape(x)
    n = shape[dim]
    live = torch.ones(shape, dtype=torch.float64) if keep is None else keep.to(torch.float64)
    inv_count = 1.0 / live.sum(dim, keepdim=True).clamp(min=1)  # public: 1 / live entries per row
    m, N = softmax_plan(zlo, zhi, n)
    with recipe(b, "softmax", lo=zlo, hi=zhi, method="limit-normalised", steps=N, max_error=tol, relative=True,
                normalisations=m, squarings=N, zlo=zlo, zhi=zhi, row=n):
        xs = x if keep is None else b.mul_public(x, live)
        mean = b.mul_public(b.sum(xs, [dim], keepdim=True), inv_count)
        z = b.sub(x, mean)
        b.declare(z, max(-zlo, zhi), "range")  # the range this recipe is built for
        first = len(b.program.nodes)
        y = exp_base(b, z, N)
        for _ in range(N - m):
            y = b.mul(y, y)
        declare_by_grid(b, first, z, np.linspace(zlo, zhi, GRID_POINTS))  # y ~ exp(z / 2^m)
        if keep is not None:
            y = b.mul_public(y, live)
        first_hi, slack = math.exp(zhi / 2**m) * 2, NORM_SLACK
        for k in range(m + 1):
            last = k == m
            if k:  # the previous stage left row means within a factor `slack` of 1: q <= n·slack
                y = b.mul(y, y)
                b.declare(y, (slack * n) ** 2)
            s = b.sum(y, [dim], keepdim=True)
            t = b.mul_public(s, inv_count)  # mean over live entries
            row_mean_hi = first_hi / 2 if k == 0 else slack**2 * n  # mean(q^2) <= max(q)·mean(q)
            b.declare(s, n * row_mean_hi)
            b.declare(t, row_mean_hi)
            # only the last normalisation must be exact to tol: the ones before just keep rows near
            # mean 1 (any positive factor cancels in the end), so a rough reciprocal does — fewer rounds
            r = reciprocal(b, t, 0.5, first_hi if k == 0 else 2.0 * n, tol if last else ROUGH_TOL)
            slack = NORM_SLACK if last else 1 + ROUGH_TOL
            y = b.mul(y, r)
            b.declare(y, slack * n)
        out = b.mul_public(y, inv_count)
        b.declare(out, NORM_SLACK)
        # rows (last dim) are non-negative and sum to 1 when that is the dim normalised
        b.program[out].facts.row_stochastic = dim % len(b.shape(out)) == len(b.shape(out)) - 1
    return out
