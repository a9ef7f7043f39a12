"""Capture: torch.export of a causal LM at a fixed shape, decomposed to core ATen ops.

The captured graph takes every parameter, buffer and constant as an explicit placeholder; the
``Captured`` record says which placeholders are secret weights, which are public tensors, and
which one is the client's ``input_ids``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.export.graph_signature import InputKind

from ..core.errors import UserError, first_line
from .registry import decompositions, opaque_modules


@dataclass(frozen=True)
class LazyWeight:
    """A weight generated when calibration reaches it (``fake_weights.py``)."""

    name: str


@dataclass
class Captured:
    exported: torch.export.ExportedProgram
    weights: dict[str, torch.Tensor]  # placeholder name -> parameter (secret, model owner)
    publics: dict[str, Any]  # placeholder name -> buffer / constant / fixed user argument
    parameter_names: dict[str, str]  # placeholder name -> module parameter name
    tokens: str  # placeholder name of input_ids (secret, client)
    batch: int
    seq_len: int
    generate: Any = None  # name -> tensor, where parameters are on meta (fake_weights.GeneratedWeights)

    @property
    def graph(self) -> torch.fx.Graph:
        return self.exported.graph_module.graph

    def placeholder_values(self, input_ids: torch.Tensor) -> list[Any]:
        """Arguments of the graph module, in placeholder order, for concrete token ids."""
        values = []
        for node in self.graph.nodes:
            if node.op != "placeholder":
                continue
            if node.name == self.tokens:
                values.append(input_ids)
            elif node.name in self.weights:
                w = self.weights[node.name]
                values.append(LazyWeight(self.parameter_names[node.name]) if w.is_meta else w)
            else:
                values.append(self.publics[node.name])
        return values

    def run(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.exported.graph_module(*self.placeholder_values(input_ids))[0]


def _run_on_cpu(exported: torch.export.ExportedProgram) -> None:
    """A graph traced with meta parameters bakes device=meta into ops that create tensors
    (positions, masks): they run on the CPU, where calibration and lowering compute."""
    for node in exported.graph_module.graph.nodes:
        if node.op == "call_function" and isinstance(node.kwargs.get("device"), torch.device) \
                and node.kwargs["device"].type == "meta":
            node.kwargs = {**node.kwargs, "device": torch.device("cpu")}
    exported.graph_module.recompile()


def capture(model: torch.nn.Module, seq_len: int, batch: int = 1, generate=None) -> Captured:
    """torch.export the model on ``batch x seq_len`` token ids, with core-ATen decompositions."""
    vocab = model.get_input_embeddings().weight.shape[0]
    example = torch.randint(0, vocab, (batch, seq_len))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with opaque_modules(model):
                exported = torch.export.export(model, (example,), kwargs={"use_cache": False})
            exported = exported.run_decompositions(decompositions())
        except UserError:
            raise
        except Exception as exc:  # export failures are long; keep their first line
            raise UserError(f"torch.export failed for {type(model).__name__}: {first_line(exc)}") from None

    state = exported.state_dict
    weights, publics, names, tokens = {}, {}, {}, None
    for spec in exported.graph_signature.input_specs:
        arg = spec.arg.name
        if spec.kind == InputKind.PARAMETER:
            weights[arg] = state[spec.target].detach()
            names[arg] = spec.target
        elif spec.kind == InputKind.BUFFER:
            publics[arg] = state[spec.target] if spec.target in state else exported.constants[spec.target]
        elif spec.kind in (InputKind.CONSTANT_TENSOR, InputKind.CUSTOM_OBJ):
            publics[arg] = exported.constants[spec.target]
        elif spec.kind == InputKind.USER_INPUT:
            if tokens is None:
                tokens = arg
            else:
                publics[arg] = False  # use_cache
        else:
            raise UserError(f"unsupported exported input kind {spec.kind} for {arg}")
    if generate is not None:
        _run_on_cpu(exported)
    return Captured(exported, weights, publics, names, tokens, batch, seq_len, generate)
