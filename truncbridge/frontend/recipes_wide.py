"""Recipes for the tanh family on any finite range: tanh, sigmoid, SiLU, GELU (erf and tanh forms), erf.

Each is f(x) = tanh(H(x)) composed with public affine maps and at most one product by x:

    tanh(x)        H = x                            sigmoid(x)  (1 + tanh(x/2)) / 2
    erf(x)         H = atanh(erf(x))                SiLU(x)     x (1 + tanh(x/2)) / 2
    GELU(x)        x (1 + erf(x/sqrt 2)) / 2        GELU_tanh   x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))) / 2

tanh(H) saturates, which a polynomial cannot do on a wide range, so it is computed by k doublings
t <- 2t / (1 + t^2) (tanh's double-angle formula) from a low-degree Chebyshev fit of
tanh(H(x) / 2^k); 1 + t^2 lies in [1, 2], whose reciprocal Newton reaches from a public start in a
few steps. A doubling contracts errors where |t| is near 1 (the tails) and at most doubles them
near 0. The recipe tries k = 0 (the plain fit), 1, 2, ... and takes the candidate with the fewest
products whose fit meets the tolerance; more range, more doublings.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.errors import UserError
from ..core.ir import Builder
from ..core.ops import real_value
from .recipe_base import GRID_POINTS, GRID_SLACK, declare_by_grid, public_range, recipe, truncation_error
from .recipes import chebyshev_fit, chebyshev_series, fit_error

RECIPROCAL_START = 2.0 / 3.0  # 1 / 1.5: |1 - u y0| <= 1/3 on u in [1, 2]
MAX_DOUBLINGS = 24
WIDE_MAX_DEGREE = 32  # a core fit above this degree is left to more doublings


def _atanh_erf(z: np.ndarray) -> np.ndarray:
    """atanh(erf(z)) = (log(1 + erf|z|) - log erfc|z|) / 2, odd; log erfc from log_ndtr: finite for any z."""
    a = torch.as_tensor(np.abs(z), dtype=torch.float64)
    log_erfc = math.log(2.0) + torch.special.log_ndtr(-a * math.sqrt(2.0))
    return np.sign(z) * ((torch.log1p(torch.erf(a)) - log_erfc) / 2).numpy()


ERF_SLOPE_CAP, ERF_CAP_SHARPNESS = 2.5, 16.0


def _erf_argument(z: np.ndarray) -> np.ndarray:
    """An odd H with tanh(H(z)) = erf(z) to far below any tolerance, growing linearly: atanh(erf(z))
    grows like z^2, which would need twice the doublings; past |z| ~ 4, where erf is 1 - 1e-8,
    any H >= 10 will do, so H / z is capped softly at ERF_SLOPE_CAP."""
    z = np.asarray(z, dtype=np.float64)
    safe = np.where(np.abs(z) < 1e-6, 1e-6, z)
    slope = _atanh_erf(safe) / safe  # even, from 2/sqrt(pi) upwards
    gap = ERF_SLOPE_CAP - slope
    capped = ERF_SLOPE_CAP - np.logaddexp(0.0, ERF_CAP_SHARPNESS * gap) / ERF_CAP_SHARPNESS
    return z * capped


SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
FAMILY = {  # name -> (H, scale of x inside H's argument, times x afterwards?, output affine (a, c): a t + c)
    "tanh": (lambda x: x, False, (1.0, 0.0)),
    "sigmoid": (lambda x: x / 2, False, (0.5, 0.5)),
    "silu": (lambda x: x / 2, True, (0.5, 0.5)),
    "erf": (_erf_argument, False, (1.0, 0.0)),
    "gelu": (lambda x: _erf_argument(x / math.sqrt(2.0)), True, (0.5, 0.5)),
    "gelu_tanh": (lambda x: SQRT_2_OVER_PI * (x + 0.044715 * x**3), True, (0.5, 0.5)),
}


def family_name(name: str, kwargs: dict) -> str | None:
    """The family member an ATen op computes (gelu with approximate='tanh' is its own), or None."""
    if name == "gelu" and kwargs.get("approximate", "none") == "tanh":
        return "gelu_tanh"
    return name if name in FAMILY else None


def odd_slope(name: str) -> float | None:
    """c where ``name`` is c x + an even function (a member multiplied by x, H odd), else None."""
    _, times_x, (_, c) = FAMILY[name]
    return c if times_x else None


def _reciprocal_iterations(tol: float) -> int:
    e, n = 1.0 / 3.0, 0
    while e > tol / 64:
        e, n = e * e, n + 1
    return n


def _plan(H, lo: float, hi: float, tol: float) -> tuple[int, tuple[float, float, np.ndarray]]:
    """The cheapest (doublings k, core fit) whose real-arithmetic error meets tol / 2, in products:
    a fit of degree d costs d - 1, a doubling 2 + 2 Newton steps."""
    newton = _reciprocal_iterations(tol)
    best = None
    reach = float(np.max(np.abs(H(np.linspace(lo, hi, 1001)))))
    last = min(MAX_DOUBLINGS, max(0, math.ceil(math.log2(max(reach, 1.0)))) + 2)  # the core's argument is within 1/4 by then
    for k in range(last + 1):
        if best is not None and k * (2 + 2 * newton) >= best[0]:
            break  # the doublings alone cost more than the best so far
        core = lambda x, k=k: np.tanh(H(x) / 2.0**k)  # noqa: E731
        try:
            fit = chebyshev_fit(core, lo, hi, tol / 2 / 2**k, "core", WIDE_MAX_DEGREE)
        except UserError:
            continue
        degree = int(np.max(np.nonzero(fit[2])[0])) if np.any(fit[2]) else 0
        cost = max(degree - 1, 0) + k * (2 + 2 * newton)
        if best is None or cost < best[0]:
            best = (cost, k, fit)
    if best is None:
        raise UserError(f"no fit of tanh(H(x) / 2^k) of degree <= {WIDE_MAX_DEGREE} for k <= {last}")
    return best[1], best[2]


def products(name: str, lo: float, hi: float, tol: float) -> int:
    """How many secret products ``saturating`` would emit for ``name`` on [lo, hi] (UserError if none fits)."""
    H, times_x, _ = FAMILY[name]
    lo, hi = public_range(lo, hi)
    k, (_, _, coef) = _plan(H, lo, hi, tol)
    degree = int(np.max(np.nonzero(coef)[0])) if np.any(coef) else 0
    return max(degree - 1, 0) + k * (2 + 2 * _reciprocal_iterations(tol)) + int(times_x)


def double(b: Builder, t: int, iterations: int) -> int:
    """tanh(2y) = 2t / (1 + t^2), t = tanh(y); 1 / (1 + t^2) by Newton from the public start."""
    u = b.add_public(b.mul(t, t), 1.0)
    c = RECIPROCAL_START
    r = b.add_public(b.mul_public(u, -c * c), 2 * c)
    for _ in range(iterations - 1):
        r = b.mul(r, b.add_public(b.neg(b.mul(u, r)), 2.0))
    return b.pow2(b.mul(t, r), 1)


def saturating(b: Builder, x: int, name: str, lo: float, hi: float, tol: float, gain_bits: int = 0) -> int:
    """``name`` (a FAMILY member) of x in [lo, hi], by k doublings of a Chebyshev fit (k = 0: the fit
    alone, with the output's affine map folded into its coefficients). ``gain_bits``: as
    ``recipes.chebyshev``'s, j more fraction bits on the output where no doubling comes between."""
    H, times_x, (a, c) = FAMILY[name]
    lo, hi = public_range(lo, hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(f"{name}: needs a finite input range, got [{lo:.4g}, {hi:.4g}]")
    try:
        k, (m, h, coef) = _plan(H, lo, hi, tol)
    except UserError as e:
        raise UserError(f"{name} on [{lo:.4g}, {hi:.4g}]: {e}") from None
    b.declare(x, max(-lo, hi), "range")
    first, newton = len(b.program.nodes), _reciprocal_iterations(tol)
    core = lambda v: np.tanh(H(v) / 2.0**k)  # noqa: E731
    fitted = fit_error(core, m, h, coef, lo, hi) * 2**k  # a doubling at most doubles an error
    degree = int(np.max(np.nonzero(coef)[0])) if np.any(coef) else 0
    params = dict(lo=lo, hi=hi, method="tanh_doubling", degree=degree, steps=k, newton=newton, fit_error=fitted)
    grid = np.linspace(lo, hi, GRID_POINTS)
    with recipe(b, name, **params) as recorded:
        gain = 2.0**gain_bits if k == 0 and not times_x else 1.0
        t = chebyshev_series(b, x, m, h, coef * a * gain + np.eye(len(coef))[0] * c * gain if gain > 1 else coef)
        error = declare_by_grid(b, first, x, grid, tol)[t] / gain  # the core's roundings, worst case
        error = doubling_error(core(grid), k, error, tol)
        t_error = error
        for _ in range(k):
            t = double(b, t, newton)
        out = b.pow2(t, -gain_bits) if gain > 1 else b.add_public(b.mul_public(t, a), c)
        error = abs(a) * fitted + (error if gain > 1 else abs(a) * error)
        if times_x:
            out = b.mul(x, out)
            error = max(abs(lo), abs(hi)) * error + truncation_error(tol)
        declare_with_margin(b, first, {x: grid}, t_error * (1 + max(abs(lo), abs(hi))))
        recorded["max_error"] = error  # fit and fixed-point rounding
    return out


def doubling_error(t: np.ndarray, k: int, error: float, tol: float) -> float:
    """The rounding error left after k doublings of t (values of the core on the grid) that carry
    ``error``: a doubling's derivative 2 (1 - t^2) / (1 + t^2)^2 (at most 2, near 0 in the tails
    where |t| -> 1) times the error, plus its own: Newton's residual (tol / 64 relative) and three
    truncations, doubled."""
    trunc = truncation_error(tol)
    for _ in range(k):
        near = np.clip(np.abs(t) - error, 0.0, 1.0)  # the smallest |t| the emulated value may take
        slope = np.max(2 * (1 - near**2) / (1 + near**2) ** 2)
        error = slope * error + 2 * (tol / 64 + 3 * trunc)
        t = 2 * t / (1 + t * t)
    return float(error)


def declare_with_margin(b: Builder, first: int, sources: dict, margin: float) -> None:
    """Bounds of the nodes since ``first`` from grids of their ``sources`` (node -> values), each
    widened by ``margin`` (Newton's roundings are self-correcting, which a linear worst-case model
    cannot see). Nodes already declared keep the tighter of the two."""
    env = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in sources.items()}
    for node in b.program.nodes[first:]:
        env[node.id] = real_value(node, [env[i] for i in node.inputs], b.program)
        b.declare(node.id, env[node.id].abs().max().item() * GRID_SLACK + margin)
