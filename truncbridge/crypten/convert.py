"""``from_pytorch``: any ``torch.nn.Module`` on one real-valued tensor -> a ``PlanModule``, as
``crypten.nn.from_pytorch(model, dummy_input)`` does for CrypTen's own modules; ``emulate``: the same
plan in the exact ring emulator, without parties.

    import torch
    import truncbridge.crypten as tbc

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    model = tbc.from_pytorch(mlp, torch.zeros(1, 8), policy="lazy", input_bounds=(-2, 2))
    x = torch.rand(1, 8) * 4 - 2
    print(model.emulate(x), mlp(x))   # the exact ring without parties (bound check on); the float module
    print(model.plan.counts())        # truncations placed, products, comparisons
    # calibration instead of a declared range: tbc.from_pytorch(mlp, torch.zeros(1, 8), calibration=samples)

    # then in every process of a CrypTen program (RANK, WORLD_SIZE, RENDEZVOUS set; the extra rank deals):
    crypten = tbc.import_crypten()
    tbc.init()
    model = model.encrypt(src=0)                 # the owner's (rank 0's) weights are the ones used
    y = model(crypten.cryptensor(x, src=1))      # the client (rank 1) shares its real-valued input
    out = y.get_plain_text(dst=1)                # only the client learns the output

The client's input is an ``MPCTensor`` in CrypTen's own encoding; the plan computes on it at its
own scale. Its bounds come from ``input_bounds`` (a declared range ``(lo, hi)`` or a max |x|) or from
``calibration`` (sample inputs the owner provides, run through the float module), as
``frontend.module`` describes. ``**plan_options`` go to ``pipeline.plan_config`` (``protocol``,
``headroom_bits``, ``bounds="calibrated"`` with calibration data, ...). Every computing party needs
the same plan: the owner builds it and gives the others the redacted one (``core.planfile.plan_to_json(plan,
redacted=True)``, then ``PlanModule(plan_from_json(doc))``), as ``tests/from_pytorch_party.py`` does.

Supported: what the LM lowering supports (linear layers, matmuls, GELU / SiLU / tanh / any elementwise
function by an automatic fit, softmax, layer norm, ReLU / max by comparisons) plus 2-d convolution and
average pooling (``frontend.lower_conv``); an op without a rule is a one-line error naming it. The plan
is for inference: the module is captured in eval mode (dropout off). A model whose input is a keyword
(a BERT encoder fed ``inputs_embeds``) takes a wrapper whose ``forward(self, x)`` returns
``self.bert(inputs_embeds=x).last_hidden_state``.
"""
from __future__ import annotations

import torch

from ..analysis import calibrated_bounds, place, static_bounds
from ..backends import run_float
from ..core.errors import UserError
from ..core.planfile import model_hash
from ..core.types import Plan
from ..frontend.module import ConvertedModule, convert_module
from ..pipeline import plan_config
from .module import PlanModule, emulate

__all__ = ["from_pytorch", "module_plan", "emulate"]


def from_pytorch(module: torch.nn.Module, dummy_input, policy: str = "lazy", field_bits: int = 64, frac_bits: int = 16,
                 input_bounds=None, calibration=None, relu: str = "comparison", truncation: str = "exact",
                 **plan_options) -> PlanModule:
    """The module as a ``PlanModule`` (see the module docstring). ``truncation``: ``PlanModule``'s;
    the plan's protocol profile follows it (``crypten-exact-2pc`` or ``crypten-2pc``) unless
    ``protocol=`` says otherwise."""
    plan_options.setdefault("protocol", "crypten-exact-2pc" if truncation == "exact" else "crypten-2pc")
    plan = module_plan(module, dummy_input, policy=policy, field_bits=field_bits, frac_bits=frac_bits,
                       input_bounds=input_bounds, calibration=calibration, relu=relu, **plan_options)
    return PlanModule(plan, truncation=truncation)


def module_plan(module: torch.nn.Module, dummy_input, policy: str = "lazy", field_bits: int = 64,
                frac_bits: int = 16, input_bounds=None, calibration=None, relu: str = "comparison",
                **plan_options) -> Plan:
    """The placed plan ``from_pytorch`` wraps."""
    config = plan_config(policy=policy, field_bits=field_bits, frac_bits=frac_bits, **plan_options)
    if config.bounds != "static" and calibration is None:
        raise UserError("bounds='calibrated' needs calibration data")
    converted = convert_module(module, dummy_input, frac_bits, input_bounds, calibration, relu)
    if len(converted.program.outputs) != 1:
        raise UserError(f"the module must return one tensor, it returns {len(converted.program.outputs)}")
    if config.bounds == "static":
        bounds = static_bounds(converted.program)
    else:
        bounds = calibrated_bounds(converted.program, _calibrated_maxima(converted), config.margin_bits)
    plan = place(converted.program, bounds, config)
    plan.model = _identity(converted)
    plan.weights = sorted(converted.program.weights)
    return plan


def _calibrated_maxima(converted: ConvertedModule) -> dict[int, float]:
    """Largest |value| per IR node over the calibration inputs (the IR in float64)."""
    maxabs: dict[int, float] = {}

    def record(node, value):
        if value.numel():
            maxabs[node.id] = max(maxabs.get(node.id, 0.0), value.abs().max().item())

    for x in converted.samples:
        run_float(converted.program, {"input": x.double()}, visit=record)
    return maxabs


def _identity(converted: ConvertedModule) -> dict:
    """What the plan records about the module it was made for (``Plan.model``)."""
    m = converted.module
    return {"name": type(m).__name__, "class": type(m).__name__, "hash": model_hash(m),
            "input_shape": list(converted.captured.input_shape), "input_range": list(converted.input_range),
            "input_range_source": converted.range_source}
