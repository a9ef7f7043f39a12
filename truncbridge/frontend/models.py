"""Where models come from: the shipped default, random-weight configs, or a local HF checkpoint.

Nothing is downloaded: ``default`` is a small Llama trained by ``launch/train_default_model.py``
and shipped in ``truncbridge/assets/default_model``; ``random-*`` models are built from
transformers configs with seeded random weights (architecture coverage; their metrics say nothing
about language); any other argument must be a local directory in Hugging Face format.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import UserError, first_line

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_model"


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object
    heldout_text: str | None  # evaluation text shipped with the model, if any


def _random_llama():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=False)


RANDOM_CONFIGS = {"random-llama": _random_llama}
MODEL_NAMES = ("default", *RANDOM_CONFIGS)


def load_model(name: str | None) -> LoadedModel:
    """Load ``default``, a ``random-*`` name, or a local Hugging Face checkpoint directory."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # our own progress goes to stderr
    name = name or "default"
    if name in RANDOM_CONFIGS:
        torch.manual_seed(0)
        config = RANDOM_CONFIGS[name]()
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
        return LoadedModel(name, model.float().eval(), tokenizer, None)

    path = DEFAULT_MODEL_DIR if name == "default" else Path(name)
    if name != "default" and not (path.exists() or "/" in name or name.startswith(".")):
        raise UserError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)} or a local checkpoint directory")
    if not path.is_dir():
        raise UserError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise UserError(f"not a Hugging Face checkpoint (no config.json): {path}")
    with _checkpoint_errors(path):
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    return LoadedModel("default" if name == "default" else str(path), model.eval(), tokenizer, _heldout(path))


@contextmanager
def _checkpoint_errors(path: Path):
    """Quiet transformers' warnings; a checkpoint it cannot read is the user's error, in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot load checkpoint {path}: {first_line(exc)}") from None


def _heldout(path: Path) -> str | None:
    heldout = path / "heldout.txt"
    return heldout.read_text(encoding="utf-8") if heldout.is_file() else None


def load_architecture(name: str | None) -> LoadedModel:
    """The model's architecture and tokenizer without its weights: what a party other than the
    owner may hold. A checkpoint's ``config.json`` gives a model with seeded random weights; the
    weight files are never read (``random-*`` models are public anyway)."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = name or "default"
    if name in RANDOM_CONFIGS:
        return load_model(name)
    transformers.utils.logging.disable_progress_bar()
    path = DEFAULT_MODEL_DIR if name == "default" else Path(name)
    if not (path / "config.json").is_file():
        raise UserError(f"model directory not found or not a Hugging Face checkpoint: {path}")
    with _checkpoint_errors(path):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(path)
    return LoadedModel("default" if name == "default" else str(path), model.float().eval(), tokenizer, _heldout(path))
