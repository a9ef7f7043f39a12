"""``truncbridge generate``: private generation emulated in the ring — the prefill and step plans
(``generation.convert``) run exactly, the KV cache kept as field integers, against the float model's
own generation with a KV cache (``generation.emulate``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .cli_checks import check_memory, check_output_path
from .core.errors import UserError

DEFAULT_PROMPT_TOKENS = 32  # without --prompt: the first tokens of the model's held-out text


def prompt_ids(loaded, prompt: str | None, prompt_file: str | None, default_tokens: int = DEFAULT_PROMPT_TOKENS,
               what: str = "--prompt") -> tuple[torch.Tensor, str]:
    """The prompt's token ids and where they came from: --prompt, --prompt-file, or the held-out text's first tokens."""
    from .frontend.data import read_text_file

    if prompt_file is not None:
        prompt, what = read_text_file(prompt_file), f"--prompt-file {prompt_file}"
    elif prompt is None:
        if loaded.heldout_text is None:
            raise UserError(f"model {loaded.name} ships no held-out text: give --prompt TEXT or --prompt-file FILE")
        ids = loaded.tokenizer(loaded.heldout_text)["input_ids"][:default_tokens]
        return torch.tensor(ids, dtype=torch.long), f"the first {len(ids)} tokens of the held-out text"
    ids = loaded.tokenizer(prompt)["input_ids"] if prompt else []
    if not ids:
        raise UserError(f"the prompt ({what}) is empty: it has no tokens")
    return torch.tensor(ids, dtype=torch.long), what


def sampler_of(args):
    from .generation.sampling import Sampler

    return Sampler(temperature=args.temperature, top_k=args.top_k, seed=args.seed)


def eos_of(loaded, stop: bool) -> int | None:
    """The tokenizer's end-of-sequence id, where generation stops at it (``--eos``)."""
    if not stop:
        return None
    eos = getattr(loaded.tokenizer, "eos_token_id", None)
    if eos is None:
        raise UserError(f"--eos: model {loaded.name}'s tokenizer has no end-of-sequence token")
    return eos


def cmd_generate(args) -> dict:
    from .frontend.models import load_model
    from .generation.convert import build_generation_plans, check_generation, convert_generation
    from .generation.emulate import compare_steps, emulated_generation, float_generation
    from .pipeline import plan_config, vocab_size
    from .progress import progress_bar

    check_output_path(args.json, "--json")
    sampler = sampler_of(args)
    config = plan_config(args.policy, field_bits=args.field_bits, frac_bits=args.frac_bits, protocol=args.protocol,
                         headroom_bits=args.headroom, bounds=args.bounds, time_limit_s=args.time_limit, prime=args.prime,
                         objective=args.objective, precision_tolerance_bits=args.precision_tolerance)
    memory = check_memory(args, "emulate", args.prompt_tokens + args.tokens)
    loaded = load_model(args.model or "default", args.preset, activations=args.activations)
    prompt, source = prompt_ids(loaded, args.prompt, args.prompt_file, args.prompt_tokens)
    check_generation(loaded, len(prompt), args.tokens)
    eos = eos_of(loaded, args.eos)
    plans_made = args.tokens  # the prefill and one step per further token
    with progress_bar(plans_made, "converting the prefill and steps") as advance:
        programs = convert_generation(loaded, len(prompt), args.tokens, args.frac_bits, args.relu, progress=advance)
    with progress_bar(plans_made, f"placing ({config.policy})") as advance:
        plans = build_generation_plans(programs, config, progress=advance)
    reference = float_generation(loaded.model, prompt, args.tokens, sampler_of(args), eos)
    with progress_bar(plans_made, "generating in the ring") as advance:
        emulated = emulated_generation(plans, prompt, args.tokens, vocab_size(loaded.model), sampler, eos,
                                       check=args.check, device=args.device, progress=advance)
    steps = compare_steps(loaded.model, prompt, emulated, reference, plans)
    record = {"model": loaded.name, "policy": config.policy, "field": plans[0].field_name, "frac_bits": config.frac_bits,
              "prompt_source": source, "prompt_tokens": len(prompt), "tokens": len(emulated.ids),
              "sampling": sampler.describe(), "eos": eos, "cache_bounds": programs.cache_bounds,
              "text": loaded.tokenizer.decode(emulated.ids), "float_text": loaded.tokenizer.decode(reference.ids),
              "agreement": sum(s["agrees"] for s in steps) / len(steps), "steps": steps, "memory": memory}
    _print(record, loaded.tokenizer.decode(prompt))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return record


def _print(record: dict, prompt_text: str) -> None:
    steps = record["steps"]
    print(f"{record['model']}, {record['policy']}, {record['field']}, {record['frac_bits']} fraction bits, "
          f"{record['sampling']}: prompt of {record['prompt_tokens']} tokens ({record['prompt_source']})")
    print(f"prompt:    {prompt_text!r}")
    print(f"emulated:  {record['text']!r}")
    print(f"float:     {record['float_text']!r}")
    print(f"{'step':>4} {'cached':>6} {'token':>6} {'float':>6} {'agree':>5} {'logit err':>10} {'top-2 gap':>9} "
          f"{'truncated':>10} {'violations':>10}")
    for s in steps:
        float_token = "-" if s["float_token"] is None else s["float_token"]
        print(f"{s['step']:>4} {s['cached']:>6} {s['token']:>6} {float_token:>6} {'yes' if s['agrees'] else 'NO':>5} "
              f"{s['max_abs_logit_error']:>10.5f} {s['float_top2_margin']:>9.4f} "
              f"{s['counts']['truncated_elements']:>10,} {s['bound_violations']:>10}")
    print(f"agreement with the float generation: {sum(s['agrees'] for s in steps)}/{len(steps)} tokens; "
          f"largest logit error {max(s['max_abs_logit_error'] for s in steps):.5f}")
