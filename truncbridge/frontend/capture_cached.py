"""Capture for generation: the model on ``n`` new tokens after ``cached`` positions, its KV cache as
plain tensors — secret-shared among the parties, never opened.

``CachedLM`` wraps a causal LM: ``forward(ids, positions, k_0, v_0, k_1, v_1, ...)`` builds a
transformers ``DynamicCache`` from the given keys and values (each ``(1, kv_heads, cached, head_dim)``),
runs the model on the new tokens at public ``positions``, and returns ``(logits, k_0', v_0', ...)``:
the new tokens' keys and values only (what the parties append to their cache). With no cache
(``cached`` 0) it is the *prefill*: the prompt's logits and its keys and values.

``capture_cached`` exports it like ``capture.capture`` does the model: the token ids are the
client's input; the cache tensors are further secret inputs (``Captured.state_inputs``, named
``cache.<layer>.k|v``), and the new keys and values the trailing outputs (``Captured.state_outputs``)
that placement brings back to frac_bits, the scale the next step's cache inputs are read at.
"""
from __future__ import annotations

import torch

from ..core.errors import UserError
from .capture import Captured, _placeholders, _run_on_cpu, export_decomposed


def cache_names(layers: int) -> list[str]:
    """The cache's tensors in the order ``CachedLM`` takes and returns them."""
    return [f"cache.{layer}.{kind}" for layer in range(layers) for kind in ("k", "v")]


def _dynamic_cache(model: torch.nn.Module, tensors: tuple[torch.Tensor, ...]):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for layer in range(len(tensors) // 2):
        cache.update(tensors[2 * layer], tensors[2 * layer + 1], layer)
    return cache


class CachedLM(torch.nn.Module):
    """A causal LM on new tokens after a given cache (see the module docstring)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, *cache: torch.Tensor):
        dynamic = _dynamic_cache(self.model, cache)
        out = self.model(ids, position_ids=positions, use_cache=True, **{cache_argument(self.model): dynamic})
        n = ids.shape[1]
        new = [t[:, :, -n:] for layer in dynamic.layers for t in (layer.keys, layer.values)]
        return (out.logits, *new)


def cache_argument(model: torch.nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` (transformers >= 5.2x), else ``past_key_values``."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def returned_cache(output):
    """The cache a forward pass returns, under either name."""
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


def check_generates(model: torch.nn.Module) -> None:
    """Generation needs a causal LM whose attention keeps a transformers ``DynamicCache`` of keys and values."""
    if model.get_output_embeddings() is None:
        raise UserError(f"{type(model).__name__} is not a causal LM (no LM head): generation needs one")
    if "position_ids" not in _forward_parameters(model):
        raise UserError(f"{type(model).__name__} takes no position_ids: its cached steps cannot be placed")


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


@torch.no_grad()
def float_cache(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The float model's keys and values after reading ``ids`` (1, n): name -> (1, kv_heads, n, head_dim)."""
    cache = returned_cache(model(ids, use_cache=True))
    names = cache_names(len(cache.layers))
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    if any(t is None or t.shape[2] != ids.shape[1] for t in tensors):
        raise UserError(f"{type(model).__name__}'s cache does not hold every position's keys and values "
                        "(a sliding or compressed cache): generation needs a full one")
    return dict(zip(names, tensors, strict=True))


def capture_cached(model: torch.nn.Module, new_tokens: int, cached: int, generate=None) -> Captured:
    """torch.export ``CachedLM(model)`` on ``new_tokens`` ids after ``cached`` positions (core-ATen decompositions)."""
    check_generates(model)
    vocab = model.get_input_embeddings().weight.shape[0]
    layout = cache_layout(model)
    example_ids = torch.randint(0, vocab, (1, new_tokens))
    positions = torch.arange(cached, cached + new_tokens)[None]
    device = "meta" if generate is not None else "cpu"  # --fake-weights: traced beside meta parameters
    cache = tuple(torch.zeros(1, heads, cached, dim, device=device) for heads, dim in layout.values()) if cached else ()
    exported = export_decomposed(CachedLM(model).eval(), (example_ids, positions.to(device), *cache), opaque_in=model,
                                 what=" with a KV cache")
    weights, publics, names, users = _placeholders(exported)
    tokens, position_input, *cache_inputs = users
    publics[position_input] = positions
    names = {k: v.removeprefix("model.") for k, v in names.items()}
    if generate is not None:
        _run_on_cpu(exported)
        # an empty cache's first keys and values (a lifted ``torch.tensor([])``) were traced on meta
        publics.update({k: torch.empty(v.shape, dtype=v.dtype) for k, v in publics.items()
                        if isinstance(v, torch.Tensor) and v.is_meta and v.numel() == 0})
    return Captured(exported, weights, publics, names, tokens, (1, new_tokens), generate,
                    state_inputs=dict(zip(cache_inputs, list(layout) if cached else [], strict=True)),
                    state_outputs=tuple(layout))


def cache_layout(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """name -> (kv_heads, head_dim) of every cache tensor: from a float run on one token, or, where the
    parameters are on the meta device (``--fake-weights``: no float run), from the model's config."""
    if any(p.is_meta for p in model.parameters()):
        return config_layout(model.config)
    cache = float_cache(model, torch.zeros(1, 1, dtype=torch.long))
    return {name: (t.shape[1], t.shape[3]) for name, t in cache.items()}


def config_layout(config) -> dict[str, tuple[int, int]]:
    """``cache_layout`` from a config: every layer's keys and values have ``num_key_value_heads`` heads
    (default: one per attention head) of ``head_dim`` (default: hidden size / attention heads)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or any(getattr(config, k, None) for k in ("sliding_window_pattern", "kv_lora_rank")):
        raise UserError(f"{config.model_type}'s cache is not every position's keys and values in every layer "
                        f"({', '.join(sorted(kinds))}): a --fake-weights generation plan cannot read its layout from the config")
    return dict.fromkeys(cache_names(config.num_hidden_layers), (kv_heads, head_dim))
