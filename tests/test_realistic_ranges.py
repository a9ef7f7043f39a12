"""--activations real (frontend/realistic.py): random weights given a trained LLM's ranges, measured on the float model.

For every family that can carry them: the residual stream holds massive activations of MASSIVE_ACTIVATION in the
two chosen channels at every "." and newline, in every layer, and nothing near that anywhere else; the pre-softmax
attention logits have a standard deviation of about ATTENTION_LOGIT_STD (random init: a hundred times less); the
logits stay sane. Measured here with the model's own forward pass (hidden states, and the softmax inputs of its
attention), independently of how the weights were changed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from truncbridge.core.errors import UserError
from truncbridge.frontend import realistic
from truncbridge.frontend.model_types import TESTED_FAMILIES
from truncbridge.frontend.models import load_model
from truncbridge.pipeline import tokenize_windows

SEQ, WINDOWS = 32, 2
CARRYING = [t for t in TESTED_FAMILIES if t not in realistic.REFUSED]


def attention_logits(model, ids) -> tuple[list[torch.Tensor], tuple]:
    """The unmasked pre-softmax attention logits of a forward pass (the inputs of the attention's softmax), one
    tensor per layer and head, and the model's outputs."""
    seen, softmax = [], F.softmax

    def spy(x, *args, **kwargs):
        values = x.detach().double().transpose(0, 1).flatten(1)  # (heads, batch * queries * keys)
        seen.extend(head[head > -1e4] for head in values)  # masked entries hold the dtype's minimum
        return softmax(x, *args, **kwargs)

    F.softmax = spy
    try:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True, use_cache=False)
    finally:
        F.softmax = softmax
    return seen, out


def measured(model_type: str, activations: str):
    loaded = load_model(f"random:{model_type}", activations=activations)
    ids = tokenize_windows(loaded.tokenizer, loaded.heldout_text, SEQ, limit=WINDOWS)
    logits, out = attention_logits(loaded.model, ids)
    residual = torch.stack(out.hidden_states[:-1])  # the last one is after the final norm
    carriers = torch.isin(ids, torch.tensor(realistic.massive_token_ids(loaded.tokenizer)))
    return loaded, ids, logits, residual, carriers, out.logits


@pytest.mark.parametrize("model_type", CARRYING)
def test_real_ranges_measured_on_the_float_model(model_type):
    _, ids, logits, residual, carriers, output = measured(model_type, "real")
    assert carriers.sum() >= 2, "the windows hold '.' or newline tokens"
    channels = list(realistic.massive_channels(residual.shape[-1]))
    massive = residual[:, carriers][..., channels]  # (layers, carrier positions, 2)
    target = realistic.MASSIVE_ACTIVATION
    assert massive.abs().max() == pytest.approx(target, rel=0.01)
    assert massive.abs().min() > 0.98 * target, "every layer, every '.' and newline carries them"
    assert (massive[..., 0] > 0).all() and (massive[..., 1] < 0).all(), "+target in one channel, -target in the other"
    assert residual[:, ~carriers].abs().max() < 10, "other tokens keep a random model's few units"
    others = residual[:, carriers].clone()
    others[..., channels] = 0
    assert others.abs().max() < 10, "other channels of the carriers too"
    spreads = torch.tensor([head.std() for head in logits]) / realistic.ATTENTION_LOGIT_STD
    assert len(spreads) == 2 * 4 and spreads.min() > 0.6 and spreads.max() < 1.5, f"every head: {spreads}"
    assert 20 < max(head.abs().max() for head in logits) < 100, "a window's logits span tens of units"
    assert output.abs().max() < 10, "the untied head keeps the output logits within a few units"


def test_random_weights_stay_random():
    """The same measurements without --activations real: what the transformation changes."""
    _, _, logits, residual, _, _ = measured("llama", "random")
    assert residual.abs().max() < 10
    assert max(head.std() for head in logits) < realistic.ATTENTION_LOGIT_STD / 100


def test_fake_weights_generate_the_same_transformation():
    """--fake-weights (a preset's plan without its weights): each weight transformed as it is generated, its
    statistics taken after, and the plan's identity says so."""
    plain = load_model("random:llama", fake_weights=True)
    real = load_model("random:llama", fake_weights=True, activations="real")
    table = real.generated("model.embed_tokens.weight")
    ids = realistic.massive_token_ids(real.tokenizer)
    channels = list(realistic.massive_channels(table.shape[1]))
    assert torch.equal(table[ids][:, channels], torch.tensor([[1.0, -1.0]] * len(ids)) * realistic.MASSIVE_ACTIVATION)
    assert real.generated.stats["model.embed_tokens.weight"].max_abs == realistic.MASSIVE_ACTIVATION
    q = real.generated("model.layers.0.self_attn.q_proj.weight")
    hidden, head_dim = q.shape[1], real.model.config.head_dim
    expected_rms = (realistic.ATTENTION_LOGIT_STD / (head_dim ** -0.5 * hidden * head_dim ** 0.5)) ** 0.5
    assert q.pow(2).mean().sqrt() == pytest.approx(expected_rms, rel=1e-5)
    assert real.generated.identity() != plain.generated.identity()


def test_llama_7b_channels_are_the_papers():
    assert realistic.massive_channels(4096) == (1415, 2533)
    assert realistic.massive_channels(64) == (22, 39)


@pytest.mark.parametrize("model, why", [("random:bloom", "bloom normalises its embeddings"),
                                        ("random:bert", "bert normalises its residual stream after every block"),
                                        ("default", "applies to random:<model_type> models only")])
def test_refused_in_one_line(model, why):
    with pytest.raises(UserError, match=why) as caught:
        load_model(model, activations="real")
    assert "\n" not in str(caught.value)
