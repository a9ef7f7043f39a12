"""The emulator on CUDA: bit-identical to the CPU, and how fast against the float model there.

For the default model and a GPT-2-small-shaped Llama (12 layers, width 768, random weights,
written to a temporary checkpoint), at seq 128: plans under eager / lazy / optimal in Z_2^64, and
eager in Z_2^128 and F_p (p = 2^127 - 1), each run on the CPU and on the GPU on the same windows;
every output integer must be equal. Then, on the GPU, the float32 model and the emulation are
timed side by side (synchronized, best of --repeat): emulated / float.

    python launch/gpu_check.py [--seq-len 128] [--windows 2] [--repeat 3] [--device cuda]

Exits 2 with one line where there is no usable CUDA device; 1 if any output differs.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from truncbridge.backends import RingExecutor
from truncbridge.frontend.models import load_model
from truncbridge.pipeline import build_plan, convert, model_output, one_hot, plan_config, tokenize_windows, vocab_size

CONFIGS = (("eager", 64, None), ("lazy", 64, None), ("optimal", 64, None), ("eager", 128, None),
           ("eager", None, 2**127 - 1))


def integers(field, value) -> list:
    return field.to_ints(value) if not isinstance(value, torch.Tensor) else value.cpu().tolist()


def timed(fn, device: torch.device, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def check_model(name: str, args, device: torch.device) -> bool:
    loaded = load_model(name)
    converted = convert(loaded, args.seq_len, 16)
    windows = tokenize_windows(loaded.tokenizer, loaded.heldout_text, args.seq_len, args.windows)
    inputs = [{"tokens": one_hot(w[None], vocab_size(loaded.model))} for w in windows]
    ok = True
    for policy, bits, prime in CONFIGS:
        plan = build_plan(converted, plan_config(policy, field_bits=bits or 64, frac_bits=16, time_limit_s=30, prime=prime))
        cpu, gpu = RingExecutor(plan, "cpu"), RingExecutor(plan, device)
        same = all(integers(cpu.backend.field, cpu.run(x)[0][0]) == integers(gpu.backend.field, gpu.run(x)[0][0])
                   for x in inputs)
        ok &= same
        emulated = timed(lambda ex=gpu: [ex.run(x) for x in inputs], device, args.repeat)
        print(f"  {name:12s} {policy:8s} {plan.field_name:22s} CPU == GPU: {'yes' if same else 'NO'}"
              f"   emulation on GPU {emulated:7.3f} s", flush=True)
    model = loaded.model.to(device)
    with torch.no_grad():
        floats = timed(lambda: [model_output(model, w[None].to(device)) for w in windows], device, args.repeat)
    eager = RingExecutor(build_plan(converted, plan_config("eager")), device)
    emulated = timed(lambda: [eager.run(x) for x in inputs], device, args.repeat)
    print(f"  {name:12s} float32 on GPU {floats:.3f} s, eager Z_2^64 emulation {emulated:.3f} s: "
          f"{emulated / floats:.1f} x float", flush=True)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
        torch.cuda.synchronize(device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        print(f"gpu_check: no usable CUDA device {args.device!r} here ({str(exc).splitlines()[0]})", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name(device)}; seq {args.seq_len}, {args.windows} windows")
    ok = check_model("default", args, device)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(Path(__file__).parent / "make_random_checkpoint.py"), tmp], check=True)
        ok &= check_model(tmp, args, device)
    print("all outputs bit-identical" if ok else "OUTPUTS DIFFER between CPU and GPU")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
