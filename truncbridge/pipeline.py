"""The pipeline in one place: capture -> calibrate -> lower -> analyse -> place -> emulate."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .analysis import calibrated_bounds, static_bounds
from .calibrate import calibrate
from .capture import Captured, capture
from .data import split_pydoc_text
from .errors import UserError
from .execute import RingExecutor, run_float
from .ir import Program
from .lower import lower
from .metrics import compare_logits
from .models import LoadedModel
from .placement import OPTIMAL_TIME_LIMIT_S, Plan, place
from .planfile import model_hash
from .protocols import load_protocol

CALIBRATION_WINDOWS = 8


@dataclass
class Converted:
    """A model lowered to IR at one sequence length, with calibrated magnitudes per IR node."""

    loaded: LoadedModel
    captured: Captured
    program: Program
    maxabs: dict[int, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    weights_hash: str = ""

    @property
    def vocab(self) -> int:
        return vocab_size(self.loaded.model)

    def identity(self) -> dict:
        """What a plan file records about the model it was made for."""
        if not self.weights_hash:
            self.weights_hash = model_hash(self.loaded.model)
        return {"name": self.loaded.name, "class": type(self.loaded.model).__name__, "hash": self.weights_hash,
                "seq_len": self.captured.seq_len, "batch": self.captured.batch, "vocab": self.vocab}


def vocab_size(model: torch.nn.Module) -> int:
    return model.get_input_embeddings().weight.shape[0]


def tokenize_windows(tokenizer, text: str, seq_len: int, limit: int | None = None, what: str = "text") -> torch.Tensor:
    """Non-overlapping windows (n, seq_len) of the tokenized text; at most ``limit`` of them."""
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    n = len(ids) // seq_len
    if n == 0:
        raise UserError(f"{what} has {len(ids)} tokens, fewer than --seq-len {seq_len}")
    if limit is not None:
        n = min(n, limit)
    return ids[: n * seq_len].view(n, seq_len)


def calibration_windows(tokenizer, seq_len: int, count: int = CALIBRATION_WINDOWS) -> torch.Tensor:
    """Windows spread evenly over the training text (never the held-out split)."""
    windows = tokenize_windows(tokenizer, split_pydoc_text()[0], seq_len, what="calibration text")
    step = max(1, len(windows) // count)
    return windows[::step][:count]


def one_hot(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(ids, vocab).to(torch.float64)


def convert(loaded: LoadedModel, seq_len: int, frac_bits: int) -> Converted:
    if seq_len <= 0:
        raise UserError(f"--seq-len must be positive, got {seq_len}")
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise UserError(f"--seq-len {seq_len} exceeds the model's max_position_embeddings {limit}")
    timings = {}
    t = time.perf_counter()
    captured = capture(loaded.model, seq_len)
    timings["capture"] = time.perf_counter() - t

    t = time.perf_counter()
    calib = calibration_windows(loaded.tokenizer, seq_len)
    ranges = calibrate(captured, [w[None] for w in calib])
    program = lower(captured, ranges, frac_bits)
    vocab = loaded.model.get_input_embeddings().weight.shape[0]
    maxabs: dict[int, float] = {}

    def record(node, value):
        if value.numel():
            lo, hi = torch.aminmax(value)
            maxabs[node.id] = max(maxabs.get(node.id, 0.0), -lo.item(), hi.item())

    for w in calib:
        run_float(program, {"tokens": one_hot(w[None], vocab)}, visit=record)
    timings["lower"] = time.perf_counter() - t
    return Converted(loaded, captured, program, maxabs, timings)


def build_plan(converted: Converted, policy: str, field_bits: int, frac_bits: int, bounds: str = "static",
               margin_bits: int = 1, protocol: str | None = None, headroom_bits: int | None = None,
               time_limit: float = OPTIMAL_TIME_LIMIT_S, hints: tuple = ()) -> Plan:
    """Analyse and place. The protocol's statistical headroom (or ``headroom_bits``) shrinks the budget."""
    proto = load_protocol(protocol)
    proto.check_ring(field_bits)
    headroom = proto.headroom_bits if headroom_bits is None else headroom_bits
    if headroom < 0:
        raise UserError(f"--headroom must be >= 0 bits, got {headroom}")
    if bounds == "static":
        node_bounds = static_bounds(converted.program)
    elif bounds == "calibrated":
        node_bounds = calibrated_bounds(converted.program, converted.maxabs, margin_bits)
    else:
        raise UserError(f"unknown bounds mode {bounds!r}: choose static or calibrated")
    t = time.perf_counter()
    plan = place(converted.program, policy, field_bits, frac_bits, node_bounds, headroom, time_limit, hints)
    plan.solver.setdefault("wall_s", round(time.perf_counter() - t, 3))
    plan.meta = {"model": converted.identity(), "protocol": proto.name,
                 "bounds": {"mode": bounds, "margin_bits": margin_bits if bounds == "calibrated" else None},
                 "weights": sorted(converted.program.weights)}
    return plan


@dataclass
class EmulationResult:
    metrics: dict[str, float]
    bound_violations: int
    time_float: float
    time_emulated: float
    windows: int
    positions: int
    ir_float_max_abs_logit_error: float  # recipes alone (no rounding) vs the float model


def emulate(model: torch.nn.Module, plan: Plan, windows: torch.Tensor, device: str = "cpu",
            check: bool = True, progress=None, truncation: str = "nearest", seed: int = 0) -> EmulationResult:
    """Run the float model and the plan on every window; compare logits position by position.
    ``truncation``: the executor's truncation model (``execute.TRUNCATION_MODELS``)."""
    vocab = vocab_size(model)
    seq_len = plan.program[plan.program.inputs["tokens"]].shape[1]
    if windows.shape[1] != seq_len:
        raise UserError(f"the plan was made for windows of {seq_len} tokens, not {windows.shape[1]}")
    executor = RingExecutor(plan, device, truncation, seed)
    floats, emus, irs = [], [], []
    t_float = t_emu = 0.0
    violations = 0
    for w in windows:
        t = time.perf_counter()
        with torch.no_grad():
            floats.append(model(w[None]).logits[0].double())
        t_float += time.perf_counter() - t
        inputs = {"tokens": one_hot(w[None], vocab)}
        t = time.perf_counter()
        outs, v = executor.run(inputs, check=check)
        emus.append(executor.decode_outputs(outs)[0][0])
        t_emu += time.perf_counter() - t
        violations += v
        irs.append(run_float(plan.program, inputs)[0][0])
        if progress is not None:
            progress()
    f, ir = torch.cat(floats), torch.cat(irs)
    metrics = _metrics_per_window(floats, emus, windows)
    return EmulationResult(metrics, violations, t_float, t_emu, len(windows), f.shape[0], (f - ir).abs().max().item())


def _metrics_per_window(floats, emus, windows) -> dict[str, float]:
    """Mean of per-window metrics (windows have equal length); max for the max error; perplexity
    from the mean log-perplexity."""
    parts = [compare_logits(f, e, w) for f, e, w in zip(floats, emus, windows)]
    n = len(parts)
    out = {k: sum(p[k] for p in parts) / n for k in ("top1_agreement", "kl_mean")}
    out["max_abs_logit_error"] = max(p["max_abs_logit_error"] for p in parts)
    for k in ("ppl_float", "ppl_emulated"):
        out[k] = math.exp(sum(math.log(p[k]) for p in parts) / n)
    return out
