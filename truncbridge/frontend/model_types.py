"""Which models there are and which convert: the presets' full-size shapes, the tested families, the
model_types refused with the reason (audio, vision, multimodal, encoder-decoder — by transformers' own
auto-mapping tables), and a checkpoint's type and tokenizer checked before anything is built."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError, first_line

# full-size shapes of published models (their config.json), weights random
PRESETS = {
    "llama-7b": ("llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                               rms_norm_eps=1e-6, tie_word_embeddings=False)),
    "gemma-2b": ("gemma", dict(vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                               num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                               max_position_embeddings=8192, hidden_activation="gelu_pytorch_tanh",
                               rms_norm_eps=1e-6, tie_word_embeddings=True)),
    "gpt2-small": ("gpt2", dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)),
    "qwen2-0.5b": ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)),
}
PRESET_TYPES = {preset: model_type for preset, (model_type, _) in PRESETS.items()}

# The families tests/test_families.py converts and emulates within their bounds (what `truncbridge
# models --types` lists as tested): model_type -> a recipe (or "comparisons") its plan must contain,
# the family's own nonlinearity
TESTED_FAMILIES = {
    "llama": "silu", "mistral": "silu", "qwen2": "silu", "qwen3": "silu",
    "gemma": "gelu",  # tanh GeLU (gelu_pytorch_tanh), fitted by evaluating the op with its argument
    "gemma2": "tanh",  # logit soft-capping: cap * tanh(x / cap)
    "gemma3_text": "gelu", "phi3": "silu",
    "gpt2": "tanh",  # GPT-2's gelu_new is written out with tanh
    "gpt_neox": "gelu",  # erf GeLU; partial rotary is slices and cats
    "opt": "comparisons",  # ReLU
    "bloom": "tanh",  # bloom_gelu is tanh GeLU; ALiBi is public and folded
    "falcon": "gelu",
    "bert": "gelu",  # an encoder: LayerNorm, erf GeLU, bidirectional attention, pooler
}

# why a model_type is not converted: the first of transformers' auto-mapping tables that holds it
# (MODEL_FOR_<TABLE>_MAPPING_NAMES); a text family (causal LM or encoder) in none of them may convert
REFUSED_KINDS = (
    ("an audio model", ("AUDIO_CLASSIFICATION", "AUDIO_FRAME_CLASSIFICATION", "AUDIO_XVECTOR", "CTC",
                        "SPEECH_SEQ_2_SEQ", "TEXT_TO_WAVEFORM", "TEXT_TO_SPECTROGRAM", "RNNT", "TDT")),
    ("a multimodal model", ("IMAGE_TEXT_TO_TEXT", "MULTIMODAL_LM", "VISUAL_QUESTION_ANSWERING",
                            "DOCUMENT_QUESTION_ANSWERING", "VISION_2_SEQ")),
    ("a vision model", ("IMAGE", "IMAGE_CLASSIFICATION", "ZERO_SHOT_IMAGE_CLASSIFICATION", "IMAGE_SEGMENTATION",
                        "SEMANTIC_SEGMENTATION", "OBJECT_DETECTION", "DEPTH_ESTIMATION", "VIDEO_CLASSIFICATION",
                        "MASKED_IMAGE_MODELING", "BACKBONE", "KEYPOINT_DETECTION", "IMAGE_TO_IMAGE")),
    ("an encoder-decoder model", ("SEQ_TO_SEQ_CAUSAL_LM",)),
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")


def model_types() -> list[str]:
    from transformers import CONFIG_MAPPING

    return sorted(CONFIG_MAPPING.keys())


def refusal(model_type: str) -> str | None:
    """Why ``model_type`` does not convert ("an audio model (TEXT_TO_WAVEFORM)", ...), or None: a tested
    family, or a text model (causal LM or encoder) that may."""
    from transformers.models.auto import modeling_auto

    if model_type in TESTED_FAMILIES:
        return None
    for kind, tables in REFUSED_KINDS:
        for table in tables:
            if model_type in getattr(modeling_auto, f"MODEL_FOR_{table}_MAPPING_NAMES", {}):
                return f"{kind} ({table.lower()})"
    if not is_text_model(model_type):
        return "neither a causal LM nor a text encoder in transformers"
    return None


def is_text_model(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def convertible_types() -> tuple[list[str], list[str]]:
    """The tested families, and the other text model_types (untested: they may or may not convert)."""
    untested = [t for t in model_types() if t not in TESTED_FAMILIES and refusal(t) is None]
    return list(TESTED_FAMILIES), untested


def check_model_type(model_type: str) -> None:
    from ..core.suggest import nearest

    if model_type not in model_types():
        raise UserError(f"unknown model_type {model_type!r}{nearest(model_type, model_types())}: "
                        "`truncbridge models --types` lists those that convert")
    why = refusal(model_type)
    if why:
        raise UserError(f"random:{model_type} is {why}: truncbridge converts text models (causal LMs and encoders); "
                        f"tested: {', '.join(TESTED_FAMILIES)}")


def check_checkpoint_type(path: Path) -> None:
    import json

    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"cannot read {path / 'config.json'}: {first_line(exc)}") from None
    why = refusal(model_type) if model_type in model_types() else None
    if why:
        raise UserError(f"{path} holds {model_type}, {why}: truncbridge converts text models (causal LMs and encoders)")


def check_tokenizer_files(path: Path) -> None:
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"no tokenizer in {path} (looked for {', '.join(TOKENIZER_FILES)}): save the model's "
                        "tokenizer there (tokenizer.save_pretrained(DIR))")


def check_tokenizer(tokenizer, path: Path) -> None:
    """transformers builds an empty tokenizer from a vocabulary-less directory: name it, not its 0 tokens."""
    if len(tokenizer) <= 1 or not tokenizer("a text")["input_ids"]:
        raise UserError(f"the tokenizer in {path} is empty ({len(tokenizer)} tokens; tokenizer files there: "
                        f"{', '.join(f for f in TOKENIZER_FILES if (path / f).is_file())}): save the model's "
                        "tokenizer there (tokenizer.save_pretrained(DIR))")
