"""Functions that flatten out, on any finite range: f(x) = F(tanh(x / s)), with T = tanh(x / s) by
the tanh doublings (``recipes_wide.saturating``, any range) and F(T) = f(s atanh T) by a Chebyshev
fit on T's range. Where f has finite limits and is smooth, F is smooth on [-1, 1] (for erf, flat to
every order at +-1), so a fixed degree serves every range: the range only adds doublings.

    erf, GELU (erf form)   past +-8: erf(x) = F(tanh(x/2)), GELU = x (1 + erf(x / sqrt 2)) / 2
    any other op           when its plain fit fails: the cheapest s = 2^j whose F fits (atan, ...)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.errors import UserError
from ..core.ir import Builder
from .recipe_base import GRID_POINTS, declare_by_grid, public_range, recipe, truncation_error
from .recipes import chebyshev_fit, chebyshev_series, fit_error
from .recipes_wide import WIDE_MAX_DEGREE, _reciprocal_iterations, declare_with_margin, double, saturating

ERF_PLAIN_REACH = 8.0  # erf and GELU beyond +-8: erf_family at once (the plain fit is dear there, or fails)
COMPRESSION = 2.0  # erf(x) = F(tanh(x / COMPRESSION)), a power of two: F's transition spans most of (-1, 1)


def compressed_erf(b: Builder, x: int, lo: float, hi: float, tol: float, scale: float = 1.0) -> tuple[int, dict]:
    """erf(scale x) for x in [lo, hi]: erf's own argument would need doublings that grow with the
    range *and* a fit whose tolerance shrinks with them; F here is flat at T = +-1."""
    fn = lambda v: torch.erf(torch.as_tensor(scale * np.asarray(v))).numpy()  # noqa: E731
    return compressed(b, x, fn, lo, hi, tol, COMPRESSION, "erf")


def _inverse_tanh(s: float, fn):
    return lambda v: fn(s * np.arctanh(np.clip(v, -1 + 1e-16, 1 - 1e-16)))


def compressed(b: Builder, x: int, fn, lo: float, hi: float, tol: float, s: float, name: str) -> tuple[int, dict]:
    """fn(x) for x in [lo, hi] as F(tanh(x / s)), s a power of two (x / s is free). The tanh's
    error grows by at most max |F'| on T's range. Returns the output node and its errors."""
    inner_lo, inner_hi = public_range(lo / s, hi / s)
    y = b.pow2(x, -int(math.log2(s)))
    inner = len(b.program.nodes)
    t = saturating(b, y, "tanh", inner_lo, inner_hi, tol / 4)
    tanh_params = b.program[inner].facts.recipe_params
    tlo, thi = math.tanh(inner_lo), math.tanh(inner_hi)
    F = _inverse_tanh(s, fn)
    m, h, coef = chebyshev_fit(F, tlo, thi, tol, name, WIDE_MAX_DEGREE)
    first = len(b.program.nodes)
    out = chebyshev_series(b, t, m, h, coef)
    spread = tanh_params["max_error"]  # T as computed may be off by this: its uses' bounds cover it
    grid = np.tanh(np.linspace(inner_lo, inner_hi, GRID_POINTS))
    grid = np.concatenate([grid - spread, grid, grid + spread])
    rounding = declare_by_grid(b, first, t, grid, tol)[out]
    ts = np.linspace(tlo, thi, GRID_POINTS)
    slope = float(np.max(np.abs(np.diff(F(ts)) / np.diff(ts))))
    return out, {"fit_error": fit_error(F, m, h, coef, tlo, thi), "rounding": rounding + slope * tanh_params["max_error"],
                 "degree": int(np.max(np.nonzero(coef)[0])) if np.any(coef) else 0, "steps": tanh_params["steps"]}


def erf_family(b: Builder, x: int, name: str, lo: float, hi: float, tol: float) -> int:
    """erf(x), or GELU(x) = x (1 + erf(x / sqrt 2)) / 2, on any finite range (``compressed_erf``)."""
    lo, hi = public_range(lo, hi)
    gelu = name == "gelu"
    reach = max(abs(lo), abs(hi)) if gelu else 1.0
    b.declare(x, max(-lo, hi), "range")
    with recipe(b, name, lo=lo, hi=hi, method="tanh_compressed", compression=COMPRESSION) as recorded:
        inner_tol = tol / reach
        out, err = compressed_erf(b, x, lo, hi, inner_tol, 1 / math.sqrt(2.0) if gelu else 1.0)
        if gelu:
            out = b.mul(x, b.add_public(b.pow2(out, -1), 0.5))
        error = (err["fit_error"] + err["rounding"]) * (reach / 2 if gelu else 1.0) + (truncation_error(tol) if gelu else 0)
        recorded.update(degree=err["degree"], steps=err["steps"], fit_error=err["fit_error"] * (reach / 2 if gelu else 1.0),
                        max_error=error)
    return out




def auto_compressed(b: Builder, x: int, fn, lo: float, hi: float, tol: float, name: str) -> int:
    """The automatic recipe where the plain fit fails: fn(x) = F(tanh(x / s)) for the s = 2^j (1 up to
    the range) with the cheapest fit; a UserError when none fits (fn does not flatten out)."""
    lo, hi = public_range(lo, hi)
    reach = max(abs(lo), abs(hi), 1.0)
    fits = []
    for j in range(0, math.ceil(math.log2(reach)) + 1):
        inner_lo, inner_hi = public_range(lo / 2**j, hi / 2**j)
        try:
            m, h, coef = chebyshev_fit(_inverse_tanh(2.0**j, fn), math.tanh(inner_lo), math.tanh(inner_hi), tol, name,
                                       WIDE_MAX_DEGREE)
        except UserError:
            continue
        fits.append((int(np.max(np.nonzero(coef)[0])) if np.any(coef) else 0, j))
    if not fits:
        raise UserError(f"{name}: no Chebyshev fit of degree <= {WIDE_MAX_DEGREE} reaches {tol / 2:.2g} on "
                        f"[{lo:.4g}, {hi:.4g}], directly or through tanh(x / 2^j): narrow the range or register a recipe")
    degree, j = min(fits)
    b.declare(x, max(-lo, hi), "range")
    with recipe(b, name, lo=lo, hi=hi, method="tanh_compressed", compression=2.0**j) as recorded:
        out, err = compressed(b, x, fn, lo, hi, tol, 2.0**j, name)
        recorded.update(degree=err["degree"], steps=err["steps"], fit_error=err["fit_error"],
                        max_error=err["fit_error"] + err["rounding"])
    return out


SOFTPLUS_COMPRESSION = 4.0  # T = tanh(x / 4): sigmoid(x) = (1 + T)^2 / (2 (1 + T^2)), and G below is C^3 at +-1


def softplus(b: Builder, x: int, lo: float, hi: float, tol: float) -> int:
    """log(1 + e^x) on any finite range: x sigmoid(x) + G(T), T = tanh(x / 4) (doublings, any range),
    sigmoid(x) = (1 + T)^2 / (2 (1 + T^2)) with 1 / (1 + T^2) on [1, 2] by Newton, and G(T) =
    softplus(x) - x sigmoid(x) (the binary entropy of sigmoid(x), decaying like |x| e^-|x| both
    ways) by a Chebyshev fit on T's range. sigmoid's error is multiplied by |x|: T is computed to
    tol / max|x|."""
    lo, hi = public_range(lo, hi)
    reach = max(abs(lo), abs(hi), 1.0)
    s = SOFTPLUS_COMPRESSION
    b.declare(x, max(-lo, hi), "range")
    sp = lambda v: np.logaddexp(0.0, v)  # noqa: E731
    G = _inverse_tanh(s, lambda v: sp(v) - v / (1 + np.exp(-np.clip(v, -700, 700))))
    inner_lo, inner_hi = public_range(lo / s, hi / s)
    tlo, thi = math.tanh(inner_lo), math.tanh(inner_hi)
    m, h, coef = chebyshev_fit(G, tlo, thi, tol, "softplus", WIDE_MAX_DEGREE)
    with recipe(b, "softplus", lo=lo, hi=hi, method="tanh_compressed", compression=s) as recorded:
        inner = len(b.program.nodes) + 1
        t = saturating(b, b.pow2(x, -2), "tanh", inner_lo, inner_hi, tol / reach)
        tanh_params = b.program[inner].facts.recipe_params
        first = len(b.program.nodes)
        # (1 + T)^2 / (2 (1 + T^2)) = (1 + 2T / (1 + T^2)) / 2 = (1 + tanh(x / 2)) / 2: one doubling
        sigmoid = b.add_public(b.pow2(double(b, t, _reciprocal_iterations(tol / reach)), -1), 0.5)
        entropy = chebyshev_series(b, t, m, h, coef)
        grid = np.linspace(lo, hi, GRID_POINTS)
        rounding = declare_by_grid(b, first, t, np.tanh(grid / s), tol)  # everything so far is a function of t
        error_sigmoid = rounding[sigmoid] + 2 * tanh_params["max_error"]
        fitted = fit_error(G, m, h, coef, tlo, thi)
        error = fitted + rounding[entropy] + reach * error_sigmoid + truncation_error(tol)
        second = len(b.program.nodes)
        out = b.add(b.mul(x, sigmoid), entropy)
        sig = 1 / (1 + np.exp(-np.clip(grid, -700, 700)))
        declare_with_margin(b, second, {x: grid, sigmoid: sig, entropy: G(np.tanh(grid / s))}, error)
        recorded.update(degree=int(np.max(np.nonzero(coef)[0])), steps=tanh_params["steps"] + 1, fit_error=fitted,
                        max_error=error)
    return out
