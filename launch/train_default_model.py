"""Train the small models shipped in ``truncbridge/assets``.

``--arch llama`` (the default) trains the default model, ``truncbridge/assets/default_model``: a small
Llama-architecture causal LM (4 layers, hidden 128, 4 query / 2 key-value heads, SiLU-gated MLP, RMSNorm,
rotary embeddings, tied embeddings) with a 1024-token byte-level BPE, trained on the standard library's
``pydoc_data`` documentation (see ``truncbridge/frontend/data.py`` for the split).

``--arch gpt2`` trains ``truncbridge/assets/gpt2_model``: a GPT-2-architecture causal LM (4 layers, hidden
128, 4 heads, 512-wide GeLU-tanh MLP, LayerNorm, learned positions, tied embeddings, no dropout) on the same
text and split, reusing the default model's tokenizer rather than training a new one (so run the llama
command first on a fresh checkout).

    python launch/train_default_model.py               # about 2.5 minutes on 2 CPU cores
    python launch/train_default_model.py --arch gpt2   # about 3 minutes on 2 CPU cores

Both use the same training loop, defaults and seed. Seeded and single-process; the output directory is a
regular Hugging Face checkpoint (config.json, model.safetensors, tokenizer files) plus ``heldout.txt`` and
``training.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from truncbridge.frontend.data import split_pydoc_text

ASSETS = Path(__file__).resolve().parent.parent / "truncbridge" / "assets"
DEFAULT_OUT = ASSETS / "default_model"
OUT_BY_ARCH = {"llama": DEFAULT_OUT, "gpt2": ASSETS / "gpt2_model"}


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def llama_config(vocab_size: int, context: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )


def gpt2_config(vocab_size: int, context: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=128,
        n_inner=512,
        n_layer=4,
        n_head=4,
        n_positions=context,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )


def build(arch: str, train_text: str, vocab: int, context: int) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and freshly initialised model for ``arch``; gpt2 reuses the default model's tokenizer."""
    if arch == "llama":
        tokenizer = train_tokenizer(train_text, vocab)
        return tokenizer, LlamaForCausalLM(llama_config(len(tokenizer), context))
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_OUT)
    for loader_only in ("is_local", "local_files_only"):  # keep the saved tokenizer_config.json the default model's
        tokenizer.init_kwargs.pop(loader_only, None)
    if len(tokenizer) != vocab:
        raise SystemExit(f"--vocab {vocab} does not match the shared tokenizer in {DEFAULT_OUT} ({len(tokenizer)} tokens)")
    return tokenizer, GPT2LMHeadModel(gpt2_config(len(tokenizer), context))


@torch.no_grad()
def bits_per_token(model: PreTrainedModel, ids: torch.Tensor, context: int) -> float:
    """Mean next-token cross-entropy in bits over non-overlapping windows of ``context`` tokens."""
    n = (len(ids) // context) * context
    windows = ids[:n].view(-1, context)
    total, count = 0.0, 0
    for chunk in windows.split(16):
        logits = model(chunk).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += chunk[:, 1:].numel()
    return total / count / math.log(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(OUT_BY_ARCH), default="llama")
    ap.add_argument("--out", type=Path, default=None, help="default: truncbridge/assets/{default,gpt2}_model by --arch")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-heldout", action="store_true", help="print held-out bits/token every 250 steps")
    args = ap.parse_args()
    out = args.out if args.out is not None else OUT_BY_ARCH[args.arch]

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    start = time.time()

    train_text, heldout_text = split_pydoc_text()
    tokenizer, model = build(args.arch, train_text, args.vocab, args.context)
    train_ids = torch.tensor(tokenizer(train_text)["input_ids"], dtype=torch.long)
    heldout_ids = torch.tensor(tokenizer(heldout_text)["input_ids"], dtype=torch.long)
    print(f"tokens: train {len(train_ids)}, held-out {len(heldout_ids)}; uniform = {math.log2(args.vocab):.2f} bits/token")

    params = sum(p.numel() for p in model.parameters())  # parameters() lists a tied table once
    print(f"parameters: {params}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
    )
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(train_ids) - args.context - 1, (args.batch,), generator=gen)
        batch = torch.stack([train_ids[s : s + args.context] for s in starts.tolist()])
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == 1:
            print(f"step {step:5d}  loss {loss.item() / math.log(2):.3f} bits/token  {time.time() - start:6.0f} s", flush=True)
        if step % 250 == 0 and args.log_heldout:
            model.eval()
            print(f"  held-out {bits_per_token(model, heldout_ids, args.context):.3f} bits/token", flush=True)
            model.train()

    model.eval()
    train_bpt = bits_per_token(model, train_ids, args.context)
    heldout_bpt = bits_per_token(model, heldout_ids, args.context)
    wall = time.time() - start
    print(f"bits/token: train {train_bpt:.3f}, held-out {heldout_bpt:.3f} (uniform {math.log2(args.vocab):.3f}); "
          f"wall {wall:.0f} s")

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "heldout.txt").write_text(heldout_text, encoding="utf-8")
    record = {
        "command": "python launch/train_default_model.py" + ("" if args.arch == "llama" else f" --arch {args.arch}"),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "log_heldout", "arch")},
        "parameters": params,
        "train_tokens": len(train_ids),
        "heldout_tokens": len(heldout_ids),
        "bits_per_token": {"train": round(train_bpt, 4), "heldout": round(heldout_bpt, 4), "uniform": math.log2(args.vocab)},
        "wall_s": round(wall, 1),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
