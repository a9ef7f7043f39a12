"""Lowering: the captured ATen graph -> IR program over secret values.

Every node whose inputs are all public (positions, rotary tables, causal masks, shapes) is folded
in plaintext by running the ATen op itself. Nodes that touch a secret value are lowered by the
rules below: linear ops map one to one, data movement becomes ``move``, nonlinear ops become range-
aware recipes (``recipes.py``). An op with no rule is an error that names it.

Who holds what: parameters are the model owner's secret ``weight`` inputs; the client's token ids
enter as a secret one-hot matrix (``input`` "tokens", integer 0/1), and the embedding lookup is the
private product ``one_hot @ embedding_table`` — its cost is counted like any matmul, and neither
party learns the other's data. Additive masks of -inf (<= -1e4) are public structure: they are kept
beside the secret scores as a 0/1 ``keep`` tensor and applied after the exp inside softmax.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import erf as np_erf

from . import recipes
from .calibrate import MASK_VALUE, Range
from .capture import Captured
from ..core.errors import UserError
from ..core.ir import Builder, Program

aten = torch.ops.aten

RANGE_MARGIN = 0.25  # widen calibrated intervals by this fraction of their span on each side
POSITIVE_MARGIN = 4.0  # positive ranges (rsqrt, reciprocal inputs): lo / 4, hi * 4
RECIPE_TOL_SLACK_BITS = 4  # recipes aim at an absolute (or relative) error of 2^-(frac_bits - 4)


@dataclass
class Secret:
    id: int
    keep: torch.Tensor | None = None  # public 0/1 (bool) of entries that are not structurally -inf


class _Tokens:
    """Marker for the client's token ids: only aten.embedding may read them."""


TOKENS = _Tokens()

IDENTITY_OPS = {aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default}
MOVE_OPS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
            aten.transpose.int, aten.t.default, aten.expand.default, aten.unsqueeze.default,
            aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.slice.Tensor, aten.select.int,
            aten.cat.default, aten.index.Tensor, aten.repeat.default, aten.flatten.using_ints,
            aten.stack.default}
SKIP_OPS = {aten._assert_tensor_metadata.default}

UNARY_FUNCTIONS = {  # elementwise functions approximated by a Chebyshev fit on their input range
    aten.sigmoid.default: ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    aten.silu.default: ("silu", lambda x: x / (1 + np.exp(-x))),
    aten.tanh.default: ("tanh", np.tanh),
    aten.gelu.default: ("gelu", lambda x: 0.5 * x * (1 + np_erf(x / math.sqrt(2)))),
    aten.erf.default: ("erf", np_erf),
}


def flatten_args(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [y for item in x for y in flatten_args(item)]
    return [x]


def _widen(r: Range) -> tuple[float, float]:
    pad = RANGE_MARGIN * max(r.hi - r.lo, 1e-3)
    return r.lo - pad, r.hi + pad


def _positive(r: Range, name: str) -> tuple[float, float]:
    if r.lo <= 0:
        raise UserError(f"{name} input was not strictly positive in calibration (min {r.lo:.4g})")
    return r.lo / POSITIVE_MARGIN, r.hi * POSITIVE_MARGIN


class Lowerer:
    def __init__(self, captured: Captured, ranges: dict[str, Range], frac_bits: int):
        self.captured = captured
        self.ranges = ranges
        self.tol = 2.0 ** -(frac_bits - RECIPE_TOL_SLACK_BITS)
        self.b = Builder()
        self.env: dict[str, Any] = {}
        self.rms_of: dict[int, tuple[int, int]] = {}  # rsqrt(mean(x^2) [+ eps]) node -> (x, n)
        self.rules = {
            aten.embedding.default: self.embedding,
            aten.add.Tensor: self.add, aten.sub.Tensor: self.sub, aten.mul.Tensor: self.mul,
            aten.div.Tensor: self.div, aten.neg.default: self.neg, aten.pow.Tensor_Scalar: self.pow,
            aten.mean.dim: self.mean, aten.sum.dim_IntList: self.sum,
            aten.mm.default: self.matmul, aten.bmm.default: self.matmul, aten.matmul.default: self.matmul,
            aten.addmm.default: self.addmm,
            aten.rsqrt.default: self.rsqrt, aten.sqrt.default: self.sqrt, aten.reciprocal.default: self.reciprocal,
            aten.exp.default: self.exp, aten._softmax.default: self.softmax,
            aten._to_copy.default: self.to_copy,
        }

    # -- driver -----------------------------------------------------------------------------
    def run(self) -> Program:
        for node in self.captured.graph.nodes:
            module = node.meta.get("nn_module_stack")
            path = list(module.values())[-1][0] if module else ""
            self.b.origin = f"{path}:{node.name}" if path else node.name
            if node.op == "placeholder":
                self.env[node.name] = self.placeholder(node)
            elif node.op == "call_function":
                self.env[node.name] = self.call(node)
            elif node.op == "output":
                for value in flatten_args(self.value(node.args[0])):
                    if isinstance(value, Secret):
                        self.b.output(value.id)
        if not self.b.program.outputs:
            raise UserError("the model's output does not depend on any secret value")
        return self.b.program

    def placeholder(self, node) -> Any:
        c = self.captured
        if node.name == c.tokens:
            return TOKENS
        if node.name in c.weights:
            return Secret(self.b.weight(c.parameter_names[node.name], c.weights[node.name]))
        return c.publics[node.name]

    def value(self, arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            return self.env[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        return arg

    def call(self, node) -> Any:
        if node.target in SKIP_OPS:
            return None
        args, kwargs = self.value(node.args), self.value(node.kwargs)
        inputs = flatten_args(list(args) + list(kwargs.values()))
        if any(v is TOKENS for v in inputs) and node.target != aten.embedding.default:
            raise UserError(f"{aten_name(node.target)} reads the secret token ids; only aten.embedding may")
        if not any(isinstance(v, (Secret, _Tokens)) for v in inputs):
            return node.target(*args, **kwargs)  # public: fold in plaintext
        if node.target is operator.getitem:
            return args[0][args[1]]
        if node.target in IDENTITY_OPS:
            return args[0]
        if node.target in MOVE_OPS:
            return self.move(node, args, kwargs)
        if node.target in UNARY_FUNCTIONS:
            name, fn = UNARY_FUNCTIONS[node.target]
            x = self._plain(args[0], name)
            lo, hi = _widen(self.range_of(node.args[0]))
            return Secret(recipes.chebyshev(self.b, x, fn, lo, hi, self.tol, name))
        rule = self.rules.get(node.target)
        if rule is None:
            raise UserError(f"no lowering for ATen op {aten_name(node.target)} on secret data (node {node.name})")
        return rule(node, *args, **kwargs)

    def range_of(self, arg: torch.fx.Node) -> Range:
        if arg.name not in self.ranges:
            raise UserError(f"no calibrated range for {arg.name}: calibration did not reach it")
        return self.ranges[arg.name]

    def _plain(self, v: Secret, what: str) -> int:
        if v.keep is not None:
            raise UserError(f"a -inf mask reaches {what}; only softmax can consume masked scores")
        return v.id

    # -- rules ------------------------------------------------------------------------------
    def embedding(self, node, weight, indices, *rest, **kw) -> Secret:
        if indices is not TOKENS or not isinstance(weight, Secret):
            raise UserError("aten.embedding is supported only as (secret table, client token ids)")
        vocab = self.b.shape(weight.id)[0]
        onehot = self.b.input("tokens", (self.captured.batch, self.captured.seq_len, vocab), integer=True)
        return Secret(self.b.matmul(onehot, weight.id))

    def add(self, node, a, b, alpha=1) -> Secret:
        if not isinstance(a, Secret):
            a, b = b, a
            if alpha != 1:
                raise UserError("aten.add with alpha on a public first operand is not supported")
        elif alpha != 1:
            b = self.scale(b, alpha)
        if isinstance(b, Secret):
            keep = _and_keep(a.keep, b.keep)
            return Secret(self.b.add(a.id, b.id), keep)
        public = torch.as_tensor(b, dtype=torch.float64)
        structural = public <= MASK_VALUE
        keep = a.keep
        if structural.any():
            keep = _and_keep(keep, ~structural)
            public = public.masked_fill(structural, 0.0)
        out = self.b.add_public(a.id, public)
        if keep is not None:
            keep = torch.broadcast_to(keep, self.b.shape(out))
        return Secret(out, keep)

    def scale(self, v, factor):
        if isinstance(v, Secret):
            return Secret(self.b.mul_public(self._plain(v, "a scaled sum"), factor))
        return v * factor

    def sub(self, node, a, b, alpha=1) -> Secret:
        neg_b = Secret(self.b.neg(self._plain(b, "aten.sub"))) if isinstance(b, Secret) else -b
        return self.add(node, a, neg_b, alpha)

    def neg(self, node, a) -> Secret:
        return Secret(self.b.neg(self._plain(a, "aten.neg")))

    def mul(self, node, a, b) -> Secret:
        if isinstance(a, Secret) and isinstance(b, Secret):
            out = self.b.mul(self._plain(a, "aten.mul"), self._plain(b, "aten.mul"))
            for x, r in ((a.id, b.id), (b.id, a.id)):
                if self.rms_of.get(r, (None,))[0] == x:  # x / sqrt(mean(x^2)): rows have l2 norm sqrt(n)
                    norm = math.sqrt(self.rms_of[r][1]) * recipes.NORM_SLACK
                    self.b.declare(out, norm)
                    self.b.program[out].facts.row_l2 = norm
            return Secret(out)
        s, p = (a, b) if isinstance(a, Secret) else (b, a)
        p = torch.as_tensor(p, dtype=torch.float64)
        if s.keep is not None and bool((p <= 0).any()):
            raise UserError("a -inf mask is multiplied by a non-positive public value")
        out = self.b.mul_public(s.id, p)
        keep = None if s.keep is None else torch.broadcast_to(s.keep, self.b.shape(out))
        return Secret(out, keep)

    def div(self, node, a, b) -> Secret:
        if not isinstance(b, Secret):
            return self.mul(node, a, 1.0 / torch.as_tensor(b, dtype=torch.float64))
        inv = self.reciprocal(node, b, range_node=node.args[1])
        return self.mul(node, a, inv)

    def pow(self, node, x, exponent) -> Secret:
        x_id = self._plain(x, "aten.pow")
        if exponent == 2:
            return Secret(self.b.mul(x_id, x_id))
        if exponent == 0.5:
            return self.sqrt(node, x)
        if exponent == -0.5:
            return self.rsqrt(node, x)
        if exponent == -1:
            return self.reciprocal(node, x)
        if float(exponent).is_integer() and 1 <= exponent <= 64:
            return Secret(_power(self.b, x_id, int(exponent)))
        raise UserError(f"aten.pow with exponent {exponent} on secret data is not supported")

    def mean(self, node, x, dims, keepdim=False, **kw) -> Secret:
        x_id = self._plain(x, "aten.mean")
        shape = self.b.shape(x_id)
        count = math.prod(shape[d] for d in dims)
        return Secret(self.b.mul_public(self.b.sum(x_id, list(dims), keepdim), 1.0 / count))

    def sum(self, node, x, dims, keepdim=False, **kw) -> Secret:
        return Secret(self.b.sum(self._plain(x, "aten.sum"), list(dims), keepdim))

    def matmul(self, node, a, b) -> Secret:
        if not (isinstance(a, Secret) and isinstance(b, Secret)):
            raise UserError(f"{aten_name(node.target)} with a public operand is not supported (node {node.name})")
        return Secret(self.b.matmul(self._plain(a, "a matmul"), self._plain(b, "a matmul")))

    def addmm(self, node, bias, a, b, beta=1, alpha=1) -> Secret:
        if beta != 1 or alpha != 1:
            raise UserError("aten.addmm with alpha/beta != 1 is not supported")
        return self.add(node, self.matmul(node, a, b), bias)

    def rsqrt(self, node, x) -> Secret:
        lo, hi = _positive(self.range_of(node.args[0]), "rsqrt")
        out = recipes.rsqrt(self.b, self._plain(x, "rsqrt"), lo, hi, self.tol)
        rms = _rms_source(node.args[0])
        if rms is not None and isinstance(self.env.get(rms[0].name), Secret):
            x_id, n = self.env[rms[0].name].id, rms[1]
            self.rms_of[out] = (x_id, n)
            self.b.declare(x_id, math.sqrt(n * hi), "range")  # mean(x^2) <= hi gives |x_i| <= sqrt(n hi)
        return Secret(out)

    def sqrt(self, node, x) -> Secret:
        r = self.rsqrt(node, x)
        return Secret(self.b.mul(x.id, r.id))

    def reciprocal(self, node, x, range_node=None) -> Secret:
        lo, hi = _positive(self.range_of(range_node or node.args[0]), "reciprocal")
        return Secret(recipes.reciprocal(self.b, self._plain(x, "reciprocal"), lo, hi, self.tol))

    def exp(self, node, x) -> Secret:
        lo, hi = _widen(self.range_of(node.args[0]))
        return Secret(recipes.exp(self.b, self._plain(x, "exp"), lo, hi))

    def softmax(self, node, x, dim, half_to_float=False) -> Secret:
        zlo, zhi = _widen(self.range_of(node))  # ranged by its scores minus their row mean
        return Secret(recipes.softmax(self.b, x.id, dim, x.keep, zlo, zhi, self.tol))

    def to_copy(self, node, x, **kwargs) -> Secret:
        dtype = kwargs.get("dtype")
        if dtype is not None and not dtype.is_floating_point:
            raise UserError(f"cast of a secret value to {dtype} is not supported (node {node.name})")
        return x

    def move(self, node, args, kwargs) -> Secret:
        secrets: list[Secret] = []

        def template(v):
            if isinstance(v, Secret):
                secrets.append(v)
                return f"${len(secrets) - 1}"
            if isinstance(v, torch.Tensor):
                return "@" + self.b.const(v, hint="idx")
            if isinstance(v, (list, tuple)):
                return [template(x) for x in v]
            if isinstance(v, (int, float, bool)) or v is None:
                return v
            raise UserError(f"{aten_name(node.target)}: unsupported argument {v!r} (node {node.name})")

        arg_t = template(list(args))
        if kwargs:
            raise UserError(f"{aten_name(node.target)} with keyword arguments is not supported (node {node.name})")
        out = self.b.move(aten_name(node.target), [s.id for s in secrets], arg_t)
        keeps = [s.keep for s in secrets]
        if all(k is None for k in keeps):
            return Secret(out)
        if len(secrets) != 1:
            raise UserError(f"a -inf mask reaches {aten_name(node.target)} with several inputs")
        full = torch.broadcast_to(keeps[0], self.b.shape(secrets[0].id))
        keep = node.target(*_substitute(args, secrets[0], full))
        return Secret(out, keep)


def _rms_source(arg: torch.fx.Node) -> tuple[torch.fx.Node, int] | None:
    """(x, n) if ``arg`` is mean(x^2) or mean(x^2) + a positive constant over x's last dim of n."""
    if arg.target == aten.add.Tensor and not isinstance(arg.args[1], torch.fx.Node) and arg.args[1] >= 0:
        arg = arg.args[0]
    if arg.target != aten.mean.dim:
        return None
    square = arg.args[0]
    if square.target == aten.pow.Tensor_Scalar and square.args[1] == 2:
        x = square.args[0]
    elif square.target == aten.mul.Tensor and square.args[0] is square.args[1]:
        x = square.args[0]
    else:
        return None
    shape = x.meta["val"].shape
    dims = [d % len(shape) for d in arg.args[1]]
    if dims != [len(shape) - 1]:  # normalisation over the last dim only: rows of length n
        return None
    return x, shape[-1]


def _substitute(args, secret: Secret, tensor: torch.Tensor):
    if isinstance(args, Secret):
        return tensor if args is secret else args
    if isinstance(args, (list, tuple)):
        return type(args)(_substitute(a, secret, tensor) for a in args)
    return args


def _and_keep(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _power(b: Builder, x: int, n: int) -> int:
    """x^n by square-and-multiply."""
    result, base = None, x
    while n:
        if n & 1:
            result = base if result is None else b.mul(result, base)
        n >>= 1
        if n:
            base = b.mul(base, base)
    return result


def aten_name(target) -> str:
    """``torch.ops.aten.view.default`` -> "aten.view.default" (the form ``ir.aten_op`` reads back)."""
    if hasattr(target, "_schema"):
        return f"aten.{target._schema.name.split('::')[1]}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def lower(captured: Captured, ranges: dict[str, Range], frac_bits: int) -> Program:
    return Lowerer(captured, ranges, frac_bits).run()
