"""Functions whose odd part is linear, f(x) = c x + E(x) with E even — SiLU and both GELUs (c = 1/2) —
by a Chebyshev series of E in u = x^2 (``_fit`` says over which interval, and why).

A fit of E in u has about half the degree of a fit of f in x, and E's saturation (E(x) ~ |x| / 2 in
the tails) is smooth in u: its nearest singularity lies at negative u, off the interval. So the
series costs one product (the square) and degree - 1 more, where the tanh doublings
(``recipes_wide.saturating``) pay a fit of tanh, two products and a Newton reciprocal per doubling
and the product by x: GPT-2-small's GELU on [-4.76, 4.76] takes 11 products here against their 23. The
lowering (``lower_functions.on_pointwise``) takes whichever candidate has the fewest products.
"""
from __future__ import annotations

import math

import numpy as np

from ..core.errors import UserError
from ..core.ir import Builder
from .recipe_base import GRID_POINTS, declare_by_grid, public_range, recipe
from .recipes import _lowest_fit, chebyshev_series, fit_error

EVEN_MAX_DEGREE = 48  # in u: a wider range is left to the tanh doublings


def square_range(lo: float, hi: float) -> tuple[float, float]:
    """[min x^2, max x^2] for x in [lo, hi]."""
    return (0.0 if lo <= 0.0 <= hi else min(lo * lo, hi * hi)), max(lo * lo, hi * hi)


def even_part(fn, c: float):
    """E(sqrt u) = f(sqrt u) - c sqrt u, with f's values in float64."""
    def of_u(u):
        x = np.sqrt(np.maximum(np.asarray(u, dtype=np.float64), 0.0))
        return np.asarray(fn(x), dtype=np.float64) - c * x
    return of_u


def _fit(fn, c: float, lo: float, hi: float, tol: float, name: str):
    """The series of E over [u_lo, u_lo + 2h], h the power of two at or above half of u's range:
    t = (u - m) / h is then a free relabel, so t keeps all of u's fraction bits (a rounded 1 / h
    would put an absolute error of 2^-17 on t, which T_k amplifies up to k^2 times). The interval
    starts at u_lo, not below: E(sqrt u) has no smooth continuation far into u < 0."""
    lo, hi = public_range(lo, hi)
    grid = np.linspace(lo, hi, GRID_POINTS)
    odd = np.asarray(fn(grid), dtype=np.float64) - np.asarray(fn(-grid), dtype=np.float64)  # f(x) - f(-x) = 2 c x
    if not np.allclose(odd, 2 * c * grid, atol=tol / 64):
        raise UserError(f"{name}: its odd part is not {c:g} x on [{lo:.4g}, {hi:.4g}]")
    u_lo, u_hi = square_range(lo, hi)
    h = 2.0 ** math.ceil(math.log2(max((u_hi - u_lo) / 2, 2.0**-20)))
    coef, best = _lowest_fit(even_part(fn, c), u_lo + h, h, tol, EVEN_MAX_DEGREE)
    if coef is None:
        raise UserError(f"{name}: no Chebyshev fit in x^2 of degree <= {EVEN_MAX_DEGREE} reaches {tol / 2:.2g} on "
                        f"[{lo:.4g}, {hi:.4g}] (best {best:.2g})")
    return (u_lo, u_hi), (u_lo + h, h, coef)


def _degree(coef: np.ndarray) -> int:
    return int(np.max(np.nonzero(coef)[0])) if np.any(coef) else 0


def products(fn, c: float, lo: float, hi: float, tol: float, name: str) -> int:
    """Secret products ``even_linear`` would emit (the square and the series'); UserError if no fit."""
    return max(_degree(_fit(fn, c, lo, hi, tol, name)[1][2]) - 1, 0) + 1


def even_linear(b: Builder, x: int, fn, c: float, lo: float, hi: float, tol: float, name: str,
                gain_bits: int = 0) -> int:
    """f(x) = c x + E(x) on [lo, hi] (E even: the caller knows f's odd part is c x), E by its
    Chebyshev series in u = x^2. ``gain_bits`` as ``recipes.chebyshev``'s: the sum is computed at
    2^j times f and relabelled by 2^-j (free), carrying j more fraction bits."""
    lo, hi = public_range(lo, hi)
    (u_lo, u_hi), (m, h, coef) = _fit(fn, c, lo, hi, tol, name)
    grid = np.linspace(lo, hi, GRID_POINTS)
    b.declare(x, max(-lo, hi), "range")
    first = len(b.program.nodes)
    fitted = fit_error(even_part(fn, c), m, h, coef, u_lo, u_hi)
    params = dict(lo=lo, hi=hi, method="even_chebyshev", degree=_degree(coef), centre=m, half_width=h, fit_error=fitted)
    gain = 2.0**gain_bits
    with recipe(b, name, **params) as recorded:
        even = chebyshev_series(b, b.mul(x, x), m, h, coef * gain)
        out = b.pow2(b.add(even, b.mul_public(x, c * gain)), -gain_bits)
        rounding = declare_by_grid(b, first, x, grid, tol)
        recorded["max_error"] = fitted + rounding[out]  # fit and fixed-point rounding
    return out
