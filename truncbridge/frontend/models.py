"""Where models come from: the shipped default, random-weight configs, or a local HF checkpoint.

Nothing is downloaded: ``default`` is a small Llama trained by ``launch/train_default_model.py``
and shipped in ``truncbridge/assets/default_model``, ``default-gpt2`` a GPT-2 of the same size
trained on the same text with the same tokenizer (``--arch gpt2``, ``assets/gpt2_model``); ``random:<model_type>`` builds a seeded
random-weight model of any Hugging Face ``model_type`` from its config class — small (2 layers,
hidden 64) for architecture coverage, or at full size with a preset (``PRESETS``); its metrics say
nothing about language. Any other argument must be a local directory in Hugging Face format, a
causal LM or an encoder (``AutoModel``: its last hidden state is the output).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import UserError, first_line
from .model_types import (
    PRESET_TYPES,
    PRESETS,
    check_checkpoint_type,
    check_model_type,
    check_tokenizer,
    check_tokenizer_files,
    model_types,
)
from .realistic import check_activations

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL_DIR = ASSETS / "default_model"
# trained models shipped in the repository (launch/train_default_model.py [--arch gpt2])
SHIPPED = {"default": DEFAULT_MODEL_DIR, "default-gpt2": ASSETS / "gpt2_model"}
RANDOM_PREFIX = "random:"
ALIASES = {"random-llama": "random:llama"}

# a small model of any family: each key is set where the family's config has it (under its own
# name too, through the config's attribute_map: GPT-2's n_embd is hidden_size)
SMALL_SHAPES = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "num_kv_heads": 2, "head_dim": 16,
                "query_pre_attn_scalar": 16, "max_position_embeddings": 512, "n_inner": 160, "ffn_dim": 160,
                "word_embed_proj_dim": 64, "sliding_window": 512}

MODEL_NAMES = (*SHIPPED, "random:<model_type>", *ALIASES)

@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object
    heldout_text: str | None  # evaluation text shipped with the model, if any

    preset: str | None = None  # random:<model_type> at a preset's full-size shapes
    generated: object = None  # fake_weights.GeneratedWeights: parameters on meta, generated on demand
    activations: str = "random"  # "real": random weights given a trained LLM's ranges (realistic.py)

    @property
    def label(self) -> str:
        details = [d for d in (self.preset, "real activations" if self.activations == "real" else None) if d]
        return f"{self.name} ({', '.join(details)})" if details else self.name


def is_encoder(model: torch.nn.Module) -> bool:
    """No language-model head: the output is the last hidden state (BERT-style encoders)."""
    return model.get_output_embeddings() is None


def check_model(name: str | None, preset: str | None = None, fake_weights: bool = False, activations: str = "random") -> str:
    """The model flags checked without building the model (one line for each misuse); the resolved name."""
    if name is None and (preset or fake_weights):
        flag = f"--preset {preset}" if preset else "--fake-weights"
        needs = f"--model random:{PRESET_TYPES[preset]}" if preset in PRESET_TYPES else "--model random:<model_type>"
        raise UserError(f"{flag} needs {needs}: it makes a random-weight model, and --model defaults to the "
                        "trained default")
    name = ALIASES.get(name or "default", name or "default")
    if activations != "random" and not name.startswith(RANDOM_PREFIX):
        raise UserError(f"--activations {activations} applies to random:<model_type> models only ({name} has its own "
                        "activations): --model random:llama --activations real")
    if name.startswith(RANDOM_PREFIX):
        model_type = name[len(RANDOM_PREFIX):]
        check_model_type(model_type)
        check_activations(model_type, activations)
        if preset is not None and model_type != PRESET_TYPES.get(preset, model_type):
            raise UserError(f"preset {preset} is a {PRESET_TYPES[preset]} model, not {model_type}")
        return name
    if fake_weights:
        raise UserError(f"--fake-weights applies to random:<model_type> models only ({name} is a checkpoint: "
                        "it has its weights)")
    if preset is not None:
        raise UserError(f"--preset applies to random:<model_type> models only: --model random:{PRESET_TYPES[preset]} "
                        f"--preset {preset}")
    path = _checkpoint_dir(name)
    check_checkpoint_type(path)
    check_tokenizer_files(path)
    return name


def random_config(model_type: str, preset: str | None = None):
    """The config of ``random:<model_type>``: small shapes, or a preset's full-size ones."""
    from transformers import AutoConfig

    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        preset_type, shapes = PRESETS[preset]
        if model_type != preset_type:
            raise UserError(f"preset {preset} is a {preset_type} model, not {model_type}")
        return AutoConfig.for_model(preset_type, **shapes)
    check_model_type(model_type)
    defaults = AutoConfig.for_model(model_type)
    shapes = {k: v for k, v in SMALL_SHAPES.items() if hasattr(defaults, k) and _settable(defaults, k)}
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        if isinstance(getattr(defaults, key, None), int) and getattr(defaults, key) >= SMALL_SHAPES["vocab_size"]:
            shapes[key] = 0  # a special token past the small vocabulary
    return AutoConfig.for_model(model_type, **shapes)


def _settable(config, key: str) -> bool:
    """Not a derived read-only property (Falcon's head_dim is hidden_size / heads)."""
    prop = getattr(type(config), config.attribute_map.get(key, key), None)
    return not (isinstance(prop, property) and prop.fset is None)


def is_encoder_config(config) -> bool:
    """An encoder (BERT-style): a checkpoint whose architectures name no LM head, or a family
    that has a masked-LM class (BERT also has a causal-LM head class, but is an encoder)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    archs = getattr(config, "architectures", None) or []
    if archs:
        return not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def from_config(config, name: str) -> torch.nn.Module:
    """A causal LM of the config's family, or its base model for encoders."""
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModel if is_encoder_config(config) else AutoModelForCausalLM
    with _build_errors(name):
        return auto.from_config(config, attn_implementation="eager")


def _build_errors(name):
    """Whatever stops transformers from building the model is the user's model choice: one line, naming the kind."""
    return _one_line_errors(f"cannot build {name}", (Exception,), kind=True)


def _random_model(name: str, preset: str | None, fake_weights: bool, activations: str = "random") -> LoadedModel:
    from transformers import AutoTokenizer

    from . import realistic
    from .fake_weights import GeneratedWeights, params_on_meta

    model_type = name[len(RANDOM_PREFIX):]
    config = random_config(model_type, preset)
    if activations == "real":
        realistic.untie(config)
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)  # ids < 1024 fit every vocabulary
    # the default model's tokenizer, so its held-out text is the evaluation text too
    transform = realistic.RealRanges(config, realistic.massive_token_ids(tokenizer)) if activations == "real" else None
    torch.manual_seed(0)
    generated = None
    if fake_weights:
        with params_on_meta():
            model = from_config(config, name)
        generated = GeneratedWeights(model, transform=transform)
    else:
        model = from_config(config, name)
        if transform is not None:
            realistic.apply(model, transform)
    return LoadedModel(name, model.float().eval(), tokenizer, _heldout(DEFAULT_MODEL_DIR), preset, generated, activations)


def load_model(name: str | None, preset: str | None = None, fake_weights: bool = False,
               activations: str = "random") -> LoadedModel:
    """Load ``default``, ``random:<model_type>`` (``preset``: full-size shapes; ``fake_weights``:
    parameters on meta, generated on demand — ``fake_weights.py``; ``activations="real"``: a trained
    LLM's activation ranges — ``realistic.py``), or a local Hugging Face checkpoint directory."""
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # our own progress goes to stderr
    name = check_model(name, preset, fake_weights, activations)
    if name.startswith(RANDOM_PREFIX):
        return _random_model(name, preset, fake_weights, activations)
    path = _checkpoint_dir(name)
    with _checkpoint_errors(path):
        model = _pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, path)
    return LoadedModel(_label(name, path), model.eval(), tokenizer, _heldout(path))


def _pretrained(path: Path) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    auto = AutoModel if is_encoder_config(AutoConfig.from_pretrained(path)) else AutoModelForCausalLM
    return auto.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)


def _checkpoint_dir(name: str) -> Path:
    path = SHIPPED.get(name, Path(name))
    if name not in SHIPPED and not (path.exists() or "/" in name or name.startswith(".")):
        raise UserError(f"unknown model {name!r}{_model_suggestion(name)}: use default, default-gpt2, "
                        "random:<model_type> or a local checkpoint directory")
    if not path.is_dir():
        raise UserError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise UserError(f"not a Hugging Face checkpoint (no config.json): {path}")
    return path


def _model_suggestion(name: str) -> str:
    """' (did you mean ...?)' for a mistyped model name: a shipped model, an alias, a preset (as
    random:<type> --preset P) or a model_type (as random:<type>)."""
    from ..core.suggest import close_matches

    if name in PRESET_TYPES:
        return f" (a preset: --model random:{PRESET_TYPES[name]} --preset {name})"
    bare = name.removeprefix(RANDOM_PREFIX)
    spelled = {**{t: f"random:{t}" for t in model_types()}, **{n: n for n in (*SHIPPED, *ALIASES)},
               **{p: f"random:{t} --preset {p}" for p, t in PRESET_TYPES.items()}}
    close = [spelled[w] for w in close_matches(bare, spelled)]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _label(name: str, path: Path) -> str:
    return name if name in SHIPPED else str(path)


def _checkpoint_errors(path):
    """A checkpoint transformers cannot read is the user's error, in one line."""
    return _one_line_errors(f"cannot load model {path}", (OSError, ValueError, KeyError))


@contextmanager
def _one_line_errors(what: str, caught: tuple[type[BaseException], ...], kind: bool = False):
    """Quiet transformers' warnings; an exception of ``caught`` becomes ``what: its first line`` (with its type
    when ``kind``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        except caught as exc:
            raise UserError(f"{what}: {type(exc).__name__ + ': ' if kind else ''}{first_line(exc)}") from None


def _heldout(path: Path) -> str | None:
    heldout = path / "heldout.txt"
    return heldout.read_text(encoding="utf-8") if heldout.is_file() else None


def load_tokenizer(name: str | None, preset: str | None = None, fake_weights: bool = False):
    """The model's tokenizer alone, after ``check_model``: a text is checked with it before the model is built."""
    from transformers import AutoTokenizer

    name = check_model(name, preset, fake_weights)
    path = DEFAULT_MODEL_DIR if name.startswith(RANDOM_PREFIX) else _checkpoint_dir(name)
    with _checkpoint_errors(path):
        tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, path)
    return tokenizer


def load_architecture(name: str | None, preset: str | None = None) -> LoadedModel:
    """The model's architecture and tokenizer without its weights: what a party other than the
    owner may hold. A checkpoint's ``config.json`` gives a model with seeded random weights; the
    weight files are never read (``random:`` models are public anyway)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    name = ALIASES.get(name or "default", name or "default")
    if name.startswith(RANDOM_PREFIX):
        return load_model(name, preset)
    transformers.utils.logging.disable_progress_bar()
    path = _checkpoint_dir(name)
    check_model(name)
    with _checkpoint_errors(path):
        torch.manual_seed(0)
        model = from_config(AutoConfig.from_pretrained(path), str(path))
        tokenizer = AutoTokenizer.from_pretrained(path)
    check_tokenizer(tokenizer, path)
    return LoadedModel(_label(name, path), model.float().eval(), tokenizer, _heldout(path))
