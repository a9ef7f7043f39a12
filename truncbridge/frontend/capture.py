"""Capture: torch.export at a fixed shape, decomposed to core ATen ops — of a Hugging Face LM on
token ids (``capture``), or of any module on one real-valued tensor (``capture_module``).

The captured graph takes every parameter, buffer and constant as an explicit placeholder; the
``Captured`` record says which placeholders are secret weights, which are public tensors, and
which one is the client's secret input: token ids (an LM), or a real-valued tensor.
"""
from __future__ import annotations

import inspect
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.export.graph_signature import InputKind

from ..core.errors import UserError, first_line
from .registry import captured_forwards, decompositions


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
    client_input: str  # placeholder name of the client's secret input
    input_shape: tuple[int, ...]  # its shape: (batch, seq_len) token ids, or the real-valued tensor's
    generate: Any = None  # name -> tensor, where parameters are on meta (fake_weights.GeneratedWeights)
    real_input: bool = False  # the client's input is a real-valued tensor, not token ids
    # generation (``capture_cached``): the KV cache, secret-shared among the parties and never opened
    state_inputs: dict[str, str] = field(default_factory=dict)  # placeholder name -> cache tensor's name
    state_outputs: tuple[str, ...] = ()  # names of the trailing outputs: the new positions' cache tensors

    @property
    def graph(self) -> torch.fx.Graph:
        return self.exported.graph_module.graph

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_shape[1]

    def placeholder_values(self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None) -> list[Any]:
        """Arguments of the graph module, in placeholder order, for a concrete client input (and
        cache tensors by name, ``state``, where the graph reads a cache)."""
        values = []
        for node in self.graph.nodes:
            if node.op != "placeholder":
                continue
            if node.name == self.client_input:
                values.append(x)
            elif node.name in self.state_inputs:
                values.append(state[self.state_inputs[node.name]])
            elif node.name in self.weights:
                w = self.weights[node.name]
                values.append(LazyWeight(self.parameter_names[node.name]) if w.is_meta else w)
            else:
                values.append(self.publics[node.name])
        return values

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.exported.graph_module(*self.placeholder_values(x))[0]


def _run_on_cpu(exported: torch.export.ExportedProgram) -> None:
    """A graph traced with meta parameters bakes device=meta into ops that create tensors
    (positions, masks): they run on the CPU, where calibration and lowering compute."""
    for node in exported.graph_module.graph.nodes:
        if node.op == "call_function" and isinstance(node.kwargs.get("device"), torch.device) \
                and node.kwargs["device"].type == "meta":
            node.kwargs = {**node.kwargs, "device": torch.device("cpu")}
    exported.graph_module.recompile()


def capture(model: torch.nn.Module, seq_len: int, batch: int = 1, generate=None) -> Captured:
    """torch.export the model on ``batch x seq_len`` token ids, with core-ATen decompositions.
    A model that derives positions from the ids (``padding_positions``) gets them as a public input."""
    vocab = model.get_input_embeddings().weight.shape[0]
    padding_idx = padding_positions(model)
    example = torch.randint(0, vocab, (batch, seq_len))
    kwargs: dict[str, Any] = {"use_cache": False}
    if padding_idx is not None:
        example[example == padding_idx] = (padding_idx + 1) % vocab  # the window is unpadded
        kwargs["position_ids"] = unpadded_positions(padding_idx, batch, seq_len)
        if generate is None:
            _check_same_output(model, example, kwargs["position_ids"])
    exported = export_decomposed(model, (example,), kwargs)

    weights, publics, names, users = _placeholders(exported)
    tokens, *extra = users
    # the user inputs after the ids are the kwargs, in export's own (pytree) order: public values
    publics.update(zip(extra, torch.utils._pytree.tree_flatten(kwargs)[0], strict=True))
    if generate is not None:
        _run_on_cpu(exported)
    return Captured(exported, weights, publics, names, tokens, (batch, seq_len), generate)


def export_decomposed(module: torch.nn.Module, args: tuple, kwargs: dict | None = None, opaque_in=None,
                      what: str = "") -> torch.export.ExportedProgram:
    """torch.export ``module`` on ``args`` (the opaque modules of ``opaque_in``, default the module itself, kept
    whole), decomposed to core ATen; a failure is one line naming the model."""
    model = module if opaque_in is None else opaque_in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with captured_forwards(model):
                exported = torch.export.export(module, args, kwargs=kwargs)
            return exported.run_decompositions(decompositions())
        except UserError:
            raise
        except Exception as exc:  # export failures are long; keep their first line
            raise UserError(f"torch.export failed for {type(model).__name__}{what}: {first_line(exc)}") from None


def padding_positions(model: torch.nn.Module) -> int | None:
    """The padding index of a model whose embeddings number positions from the token ids (RoBERTa, MPNet,
    ...: ``create_position_ids_from_input_ids``, a cumsum of ``ids != padding_idx`` — an op that reads the
    secret ids); None for any other model. In an unpadded window those positions are public:
    padding_idx + 1, padding_idx + 2, ... (``unpadded_positions``)."""
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return None
    for module in model.modules():
        padding_idx = getattr(module, "padding_idx", None)
        if isinstance(module, torch.nn.Embedding) or not isinstance(padding_idx, int):
            continue
        source = sys.modules.get(type(module).__module__)
        if hasattr(module, "create_position_ids_from_input_ids") or hasattr(source, "create_position_ids_from_input_ids"):
            return padding_idx
    return None


def unpadded_positions(padding_idx: int, batch: int, seq_len: int) -> torch.Tensor:
    """The position ids such a model computes for a window without padding tokens."""
    return torch.arange(padding_idx + 1, padding_idx + 1 + seq_len).expand(batch, seq_len)


def _check_same_output(model: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor) -> None:
    """The public positions must be the ones the model computes from the ids itself: its outputs agree."""
    with torch.no_grad():
        own, given = model(ids, use_cache=False)[0], model(ids, position_ids=positions, use_cache=False)[0]
    if not torch.equal(own, given):
        raise UserError(f"{type(model).__name__} numbers positions from its token ids, and public positions "
                        f"{positions[0, 0].item()}.. do not reproduce its output (max difference "
                        f"{(own - given).abs().max().item():.3g}): its position scheme is not the unpadded RoBERTa one")


def _placeholders(exported: torch.export.ExportedProgram) -> tuple[dict, dict, dict, list[str]]:
    """(weights, publics, parameter names, user inputs in order) of an exported program's placeholders."""
    state = exported.state_dict
    weights, publics, names, users = {}, {}, {}, []
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
            users.append(arg)
        else:
            raise UserError(f"unsupported exported input kind {spec.kind} for {arg}")
    return weights, publics, names, users


def capture_module(module: torch.nn.Module, dummy_input) -> Captured:
    """torch.export any module on ONE real-valued tensor (``dummy_input``: its shape and dtype),
    in eval mode, with core-ATen decompositions; the tensor is the client's secret input."""
    if isinstance(dummy_input, (tuple, list)):
        if len(dummy_input) != 1:
            raise UserError(f"the module must take one real-valued input tensor, got {len(dummy_input)} inputs")
        dummy_input, = dummy_input
    if not isinstance(dummy_input, torch.Tensor) or not dummy_input.is_floating_point():
        what = f"a {dummy_input.dtype} tensor" if isinstance(dummy_input, torch.Tensor) else type(dummy_input).__name__
        raise UserError(f"dummy_input must be a real-valued (floating-point) tensor, got {what}; "
                        "token ids take the LM path (truncbridge.pipeline.convert)")
    training = module.training
    module.eval()  # inference: dropout off, batch norm on its running statistics
    try:
        exported = export_decomposed(module, (dummy_input,))
    finally:
        module.train(training)
    weights, publics, names, users = _placeholders(exported)
    if len(users) != 1:
        raise UserError(f"the module must take one real-valued input tensor, its export has {len(users)}")
    return Captured(exported, weights, publics, names, users[0], tuple(dummy_input.shape), real_input=True)
