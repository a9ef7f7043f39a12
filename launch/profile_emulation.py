"""Where the exact emulator's time goes: per op kind and per node, beside the float pass.

    python launch/profile_emulation.py --model random:gpt2 --preset gpt2-small --seq-len 128 \\
        --policy lazy --windows 3 --threads 1 [--save out.pt | --compare out.pt]

Random token windows (seeded); the float model and the emulation run interleaved, window by window,
in one process, so both see the same machine load. Prints the float and emulated seconds and their
ratio, the emulation's time per (hook, op) and the slowest nodes, --check's own time, the process's
peak RSS. --save keeps the output integers; --compare checks a later run's are bit-identical (the
same windows: same --seed and --windows), e.g. before and after a change to the emulator.
"""
from __future__ import annotations

import argparse
import resource
import time
from collections import defaultdict
from pathlib import Path

import torch

HOOKS = ("source", "local", "product", "public", "relabel", "shift", "truncate", "compare", "output")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="random:gpt2")
    p.add_argument("--preset", default="gpt2-small")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--policy", default="lazy")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-check", action="store_true", help="emulate without --check's bound check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=8, help="slowest nodes listed")
    p.add_argument("--save", type=Path, help="write the output integers here")
    p.add_argument("--compare", type=Path, help="compare the output integers with a --save file")
    return p.parse_args()


def timed(executor, times: dict, per_node: dict) -> None:
    """Wrap the backend's hooks and the executor's check so each call adds its seconds."""
    backend = executor.backend

    def wrap(kind):
        hook = getattr(backend, kind)

        def run(node, op, xs):
            t = time.perf_counter()
            value = hook(node, op, xs)
            dt = time.perf_counter() - t
            times[kind, node.op] += dt
            per_node[node.id, node.op, tuple(node.shape)] += dt
            return value
        setattr(backend, kind, run)

    for kind in HOOKS:
        wrap(kind)
    check = executor._check

    def checked(node, value):
        t = time.perf_counter()
        check(node, value)
        times["check", ""] += time.perf_counter() - t
    executor._check = checked


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from truncbridge.backends import RingExecutor
    from truncbridge.frontend.models import load_model
    from truncbridge.pipeline import build_plan, convert, model_output, one_hot, plan_config, vocab_size

    loaded = load_model(args.model, args.preset)
    plan = build_plan(convert(loaded, args.seq_len, 16), plan_config(args.policy))
    vocab = vocab_size(loaded.model)
    ids = torch.randint(0, vocab, (args.windows, args.seq_len), generator=torch.Generator().manual_seed(args.seed))
    executor = RingExecutor(plan, "cpu")
    times, per_node = defaultdict(float), defaultdict(float)
    timed(executor, times, per_node)
    t_float = t_emu = 0.0
    outs = []
    for w in ids:
        t = time.perf_counter()
        with torch.no_grad():
            model_output(loaded.model, w[None])[0].double()
        t_float += time.perf_counter() - t
        t = time.perf_counter()
        out, _ = executor.run({"tokens": one_hot(w[None], vocab)}, check=not args.no_check)
        executor.decode_outputs(out)
        t_emu += time.perf_counter() - t
        outs.append(out[0].clone())
    print(f"{args.model} {args.preset or ''} seq {args.seq_len} {args.policy}, {args.windows} windows, "
          f"{torch.get_num_threads()} threads, check {'off' if args.no_check else 'on'}")
    print(f"float {t_float:.3f} s  emulated {t_emu:.3f} s  emulated / float {t_emu / t_float:.2f}")
    for (kind, op), s in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:9s} {op:12s} {s:8.3f} s {100 * s / t_emu:5.1f} %")
    print("slowest nodes (id, op, shape):")
    for key, s in sorted(per_node.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {key} {s:.3f} s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    if args.save:
        torch.save({"ids": ids, "outs": outs}, args.save)
    if args.compare:
        ref = torch.load(args.compare)
        same = torch.equal(ref["ids"], ids) and all(torch.equal(a, b) for a, b in zip(ref["outs"], outs))
        print(f"output integers bit-identical to {args.compare}: {same}")


if __name__ == "__main__":
    main()
