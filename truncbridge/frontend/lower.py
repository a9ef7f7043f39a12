"""Lowering: the captured ATen graph -> IR program over secret values.

The walk (``walk.py``) folds public nodes in plaintext; nodes that touch a secret value are lowered
by the rule tables of ``lower_rules.py`` (linear ops one to one), ``lower_conv.py`` (convolution,
average pooling) and ``lower_functions.py``
(nonlinear ops as range-aware recipes, comparisons, the automatic recipe and user registrations),
data movement becomes ``move`` here. An op with no rule is an error that names it, where it is
in the model, and how to register a recipe.

Who holds what: parameters are the model owner's secret ``weight`` inputs; the client's token ids
enter as a secret one-hot matrix (``input`` "tokens", integer 0/1), and the embedding lookup is the
private product ``one_hot @ embedding_table`` — its cost is counted like any matmul, and neither
party learns the other's data. A real-valued client input (``capture_module``) enters as the secret
``input`` at frac_bits, with the bound its owner declared. Additive masks of -inf (<= -1e4) are public structure: they are kept
beside the secret scores as a 0/1 ``keep`` tensor and applied after the exp inside softmax.
"""
from __future__ import annotations

from typing import Any

import torch

from ..core.errors import UserError
from ..core.ir import Builder, Program, aten_op
from .calibrate import Range
from .capture import Captured
from .lower_conv import CONV_RULES
from .lower_functions import FUNCTION_RULES, is_pointwise, on_pointwise, registered_rule
from .lower_rules import LINEAR_RULES, Secret
from .reassociate import reassociate_products
from .registry import USER_RECIPES
from .walk import GraphWalk, aten_name

RULES = {**LINEAR_RULES, **CONV_RULES, **FUNCTION_RULES}

RELU_MODES = ("comparison", "smooth")  # ReLU, max, min, clamp: exact by a comparison, or smooth_relu
RECIPE_TOL_SLACK_BITS = 4  # recipes aim at an absolute (or relative) error of 2^-(frac_bits - 4)


class Lowerer(GraphWalk):
    secret_types = (Secret,)
    rules = RULES
    no_rule_hint = ("; if it is an elementwise function, register it: truncbridge.register_recipe(torch.ops."
                    "<op>) fits it automatically, or pass your own recipe (docs/recipes.md)")

    def __init__(self, captured: Captured, ranges: dict[str, Range], frac_bits: int, relu: str = "comparison",
                 input_bound: float | None = None):
        super().__init__(captured)
        if relu not in RELU_MODES:
            raise UserError(f"relu must be one of {', '.join(RELU_MODES)}, got {relu!r}")
        self.relu = relu
        self.input_bound = input_bound
        self.ranges = ranges
        self.tol = 2.0 ** -(frac_bits - RECIPE_TOL_SLACK_BITS)
        self.b = Builder()
        self.rms_of: dict[int, tuple[int, int]] = {}  # rsqrt(mean(x^2) [+ eps]) node -> (x, n)

    def run(self) -> Program:
        self.walk()
        if not self.b.program.outputs:
            raise UserError("the model's output does not depend on any secret value")
        return self.b.program

    def begin(self, node) -> None:
        module = node.meta.get("nn_module_stack")
        path = list(module.values())[-1][0] if module else ""
        self.b.origin = f"{path}:{node.name}" if path else node.name

    def rule_for(self, node, inputs: list):
        """A user's registration first, then the rule table, then the automatic recipe for any
        elementwise op of one secret tensor."""
        target = node.target
        if target in USER_RECIPES:
            return registered_rule(USER_RECIPES[target])
        if target in self.rules:
            return self.rules[target]
        return on_pointwise if is_pointwise(node, inputs) else None

    def placeholder(self, node) -> Any:
        c = self.captured
        if node.name in c.weights:
            if not node.users:  # a tied duplicate (the LM head reads the embedding's placeholder)
                return None
            return Secret(self.b.weight(c.parameter_names[node.name], c.weights[node.name]))
        return c.publics[node.name]

    def real_input(self, node) -> Secret:
        """A real-valued client input ("input", at frac_bits): its declared bound |x| <= input_bound
        is the one assumption static analysis starts from (``emulate --check`` verifies it)."""
        if self.input_bound is None:
            raise UserError("a real-valued input needs a bound: give input_bounds or calibration data")
        x = self.b.input("input", self.captured.input_shape)
        self.b.declare(x, self.input_bound, "input")
        return Secret(x)

    def state_input(self, node) -> Secret:
        """A cache tensor ("cache.<layer>.k|v", at frac_bits): its bound is the cache's, settled over the prefill's
        and every step's outputs (``generation.bounds``) and declared before analysis."""
        name = self.captured.state_inputs[node.name]
        return Secret(self.b.input(name, tuple(node.meta["val"].shape)))

    def output(self, value: Secret) -> int:
        state = len(self.b.program.outputs) > 0 and bool(self.captured.state_outputs)  # after the logits: the cache
        return self.b.output(self.plain(value, "an output"), state=state)

    def range_of(self, arg: torch.fx.Node) -> Range:
        if arg.name not in self.ranges:
            raise UserError(f"no calibrated range for {arg.name}: calibration did not reach it")
        return self.ranges[arg.name]

    def plain(self, v: Secret, what: str) -> int:
        """The node id of a secret that carries no -inf mask."""
        if v.keep is not None:
            raise UserError(f"a -inf mask reaches {what}; only softmax can consume masked scores")
        return v.id

    def move(self, node, args, kwargs, fn: str | None = None) -> Secret:
        """Data movement as a local ``move`` node: the ATen op (or ``fn``) applied to the secrets."""
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

        if node.target == torch.ops.aten.cat.default:  # an empty public piece (a cache before its first token) adds nothing
            args = ([a for a in args[0] if not (isinstance(a, torch.Tensor) and a.numel() == 0)], *args[1:])
        arg_t = template(list(args))
        if kwargs:
            raise UserError(f"{aten_name(node.target)} with keyword arguments is not supported (node {node.name})")
        out = self.b.move(fn or aten_name(node.target), [s.id for s in secrets], arg_t)
        keeps = [s.keep for s in secrets]
        if all(k is None for k in keeps):
            return Secret(out)
        if len(secrets) != 1:
            raise UserError(f"a -inf mask reaches {aten_name(node.target)} with several inputs")
        full = torch.broadcast_to(keeps[0], self.b.shape(secrets[0].id))
        target = aten_op(fn) if fn else node.target
        keep = target(*_substitute(args, secrets[0], full))
        return Secret(out, keep)


def _substitute(args, secret: Secret, tensor: torch.Tensor):
    if isinstance(args, Secret):
        return tensor if args is secret else args
    if isinstance(args, (list, tuple)):
        return type(args)(_substitute(a, secret, tensor) for a in args)
    return args


def lower(captured: Captured, ranges: dict[str, Range], frac_bits: int, relu: str = "comparison",
          input_bound: float | None = None) -> Program:
    """``input_bound``: the bound of a real-valued client input (``capture_module``)."""
    return reassociate_products(Lowerer(captured, ranges, frac_bits, relu, input_bound).run())
