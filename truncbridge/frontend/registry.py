"""User recipes: how an ATen op or an ``nn.Module`` class that no rule names is computed.

``register_recipe(target, recipe=None)``:

* ``target`` — an ATen op (``torch.ops.aten.mish`` or one overload of it), or an ``nn.Module``
  subclass whose forward is elementwise in one tensor and has no parameters (a custom
  activation). Instances of a registered class are captured as one opaque op
  (``torch.ops.truncbridge.<name>``) instead of their decomposition, and calibrated by running
  the module itself.
* ``recipe`` — ``None``: an automatic Chebyshev fit of the function itself over its calibrated
  (widened) input range, to the plan's tolerance, its maximum error recorded in the plan
  (``recipes.chebyshev``). Or a callable ``recipe(builder, x, lo, hi, tol) -> node id`` that
  emits IR on the ``core.ir.Builder`` for input node ``x`` known to lie in ``[lo, hi]``.

Elementwise ATen ops without a rule get the automatic fit anyway; registering one matters for
ops that capture would otherwise decompose (a decomposition may contain comparisons), and for
a recipe of your own. Registrations are per process.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import contextmanager

import torch

from ..core.errors import UserError

aten = torch.ops.aten

# ATen ops captured whole rather than decomposed: smooth elementwise functions whose core-ATen
# decompositions branch on a comparison (softplus: where(x > 20, x, log1p(exp(x))))
KEEP_WHOLE = {aten.mish.default, aten.softplus.default}

USER_RECIPES: dict = {}  # ATen op overload (or a module's opaque op) -> recipe or None
MODULE_CLASSES: dict[type, Callable | None] = {}
_counter = itertools.count()
_module_ops: dict[int, object] = {}  # id(instance) -> its opaque op overload
_module_impls: dict[str, Callable] = {}  # opaque op name -> the instance's own forward


def register_recipe(target, recipe: Callable | None = None) -> None:
    """Register ``recipe`` (None: automatic Chebyshev fit) for an ATen op or a module class."""
    if recipe is not None and not callable(recipe):
        raise UserError(f"a recipe must be callable (builder, x, lo, hi, tol) -> node, not {type(recipe).__name__}")
    if isinstance(target, type) and issubclass(target, torch.nn.Module):
        MODULE_CLASSES[target] = recipe
        return
    if isinstance(target, torch._ops.OpOverloadPacket):
        target = target.default
    if not isinstance(target, torch._ops.OpOverload):
        raise UserError(f"register_recipe takes an ATen op or an nn.Module class, not {target!r}")
    USER_RECIPES[target] = recipe
    KEEP_WHOLE.add(target)


def _opaque_op(instance: torch.nn.Module):
    """A custom op (once per instance) that runs the instance's forward: export keeps it whole."""
    if id(instance) in _module_ops:
        return _module_ops[id(instance)]
    name = f"{type(instance).__name__.lower()}_{next(_counter)}"
    _module_impls[name] = instance.forward

    @torch.library.custom_op(f"truncbridge::{name}", mutates_args=())
    def op(x: torch.Tensor) -> torch.Tensor:
        out = _module_impls[name](x)
        return out.clone() if out is x else out

    @op.register_fake
    def _(x):
        return torch.empty_like(x)

    overload = getattr(torch.ops.truncbridge, name).default
    USER_RECIPES[overload] = MODULE_CLASSES[type(instance)]
    _module_ops[id(instance)] = overload
    return overload


# Hugging Face's spellings of GELU's tanh form: the same function as aten.gelu(approximate="tanh"),
# written out in ops that capture would decompose (x^3, tanh, ...); captured as the one op instead, its
# recipe sees the whole function (``recipes_even``: a series in x^2, less than half the products)
TANH_GELU_CLASSES = {"NewGELUActivation", "FastGELUActivation", "GELUTanh", "PytorchGELUTanh"}


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def _forward_while_captured(module: torch.nn.Module):
    """What ``module`` computes while captured, or None for its own forward: a registered class its
    opaque op (a user's registration wins), a Hugging Face tanh-GELU aten.gelu(approximate="tanh")."""
    cls = type(module)
    if cls in MODULE_CLASSES:
        if any(True for _ in module.parameters()):
            raise UserError(f"{cls.__name__}: a registered module must have no parameters")
        return _opaque_op(module)
    if cls.__name__ in TANH_GELU_CLASSES and cls.__module__.startswith("transformers."):
        return _tanh_gelu
    return None


@contextmanager
def captured_forwards(model: torch.nn.Module):
    """While capturing: the modules ``_forward_while_captured`` names compute what it says."""
    patched = []
    for module in model.modules():
        forward = _forward_while_captured(module)
        if forward is not None:
            patched.append(module)
            module.forward = forward
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # the class's own forward again


def decompositions() -> dict:
    """Core-ATen decompositions, except the ops captured whole."""
    table = torch.export.default_decompositions()
    for op in KEEP_WHOLE:
        table.pop(op, None)
    return table
