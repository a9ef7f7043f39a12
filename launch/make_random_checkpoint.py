"""Write a random-weight Llama of a chosen shape as a local Hugging Face checkpoint, with the
default model's tokenizer and held-out text: a model the size users care about, for `truncbridge
emulate --model DIR` (e.g. the GPT-2-small shape of docs/benchmarks.md's emulation measurement).

    python launch/make_random_checkpoint.py /tmp/llama-gpt2small --layers 12 --hidden 768 --heads 12 --mlp 3072
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from truncbridge.frontend.models import DEFAULT_MODEL_DIR, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--mlp", type=int, default=3072)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tokenizer = load_model("default").tokenizer
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.mlp,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=1024, tie_word_embeddings=True)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    shutil.copy(DEFAULT_MODEL_DIR / "heldout.txt", args.out / "heldout.txt")
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters written to {args.out}")


if __name__ == "__main__":
    main()
