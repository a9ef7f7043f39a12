"""The pipeline in one place: capture -> calibrate -> lower -> analyse -> place -> emulate."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .analysis import calibrated_bounds, place, static_bounds
from .backends import RingExecutor, run_float
from .core.errors import UserError
from .core.fields import check_prime, prime_capacity_bits
from .core.ir import Program
from .core.planfile import model_hash
from .core.protocols import load_protocol
from .core.types import OPTIMAL_TIME_LIMIT_S, PRECISION_TOLERANCE_BITS, Plan, PlanConfig
from .frontend.calibrate import calibrate
from .frontend.capture import Captured, capture
from .frontend.data import split_pydoc_text
from .frontend.lower import lower
from .frontend.models import LoadedModel, is_encoder
from .metrics import compare_hidden, compare_logits, exp_or_inf

CALIBRATION_WINDOWS = 8


@dataclass
class Converted:
    """A model lowered to IR at one sequence length, with calibrated magnitudes per IR node."""

    loaded: LoadedModel
    captured: Captured
    program: Program
    timings: dict[str, float] = field(default_factory=dict)
    weights_hash: str = ""
    calibration_text: str | None = None  # None: the bundled training text (``calibration_windows``)
    _maxabs: dict[int, float] | None = None

    @property
    def maxabs(self) -> dict[int, float]:
        """Largest |value| per IR node over the calibration windows (the IR run in float64, once,
        when first asked: calibrated bounds need it, static bounds do not)."""
        if self._maxabs is None:
            if self.loaded.generated is not None:
                raise UserError("--fake-weights plans use static bounds: calibrated maxima need the whole model")
            t = time.perf_counter()
            self._maxabs = _calibration_maxima(self.program, self.loaded, self.captured.seq_len, self.calibration_text)
            self.timings["calibrated maxima"] = time.perf_counter() - t
        return self._maxabs

    @property
    def vocab(self) -> int:
        return vocab_size(self.loaded.model)

    def identity(self) -> dict:
        """What a plan file records about the model it was made for."""
        if not self.weights_hash:
            generated = self.loaded.generated
            self.weights_hash = generated.identity() if generated else model_hash(self.loaded.model)
        identity = {"name": self.loaded.name, "class": type(self.loaded.model).__name__, "hash": self.weights_hash,
                    "seq_len": self.captured.seq_len, "batch": self.captured.batch, "vocab": self.vocab}
        if self.loaded.preset:
            identity["preset"] = self.loaded.preset
        if self.loaded.activations != "random":  # realistic.py: the weights emulate --plan must rebuild
            identity["activations"] = self.loaded.activations
        return identity


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


def calibration_windows(tokenizer, seq_len: int, count: int = CALIBRATION_WINDOWS, text: str | None = None) -> torch.Tensor:
    """Windows spread evenly over ``text`` (default: the bundled training text, never its held-out split)."""
    what = "calibration text" if text is None else "--calibration-text"
    windows = tokenize_windows(tokenizer, split_pydoc_text()[0] if text is None else text, seq_len, what=what)
    step = max(1, len(windows) // count)
    return windows[::step][:count]


def model_output(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """What the plan's first output is: a causal LM's logits, an encoder's last hidden state."""
    out = model(ids)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def one_hot(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(ids, vocab).to(torch.float64)


def convert(loaded: LoadedModel, seq_len: int, frac_bits: int, relu: str = "comparison",
            calibration_text: str | None = None) -> Converted:
    """Capture, calibrate (on ``calibration_text``'s windows; default: the bundled training text), lower."""
    if seq_len <= 0:
        raise UserError(f"--seq-len must be positive, got {seq_len}")
    limit = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise UserError(f"--seq-len {seq_len} exceeds the model's max_position_embeddings {limit}")
    timings = {}
    # a calibration text too short for one window is refused before the capture
    calib = calibration_windows(loaded.tokenizer, seq_len, 1 if loaded.generated else CALIBRATION_WINDOWS, calibration_text)
    t = time.perf_counter()
    captured = capture(loaded.model, seq_len, generate=loaded.generated)
    timings["capture"] = time.perf_counter() - t

    t = time.perf_counter()
    ranges = calibrate(captured, [w[None] for w in calib])
    timings["calibrate"] = time.perf_counter() - t
    t = time.perf_counter()
    program = lower(captured, ranges, frac_bits, relu)
    if loaded.generated is not None:  # statistics only: no float run, static bounds only
        program.weight_stats = dict(loaded.generated.stats)
        program.weights.update({k: v.double() for k, v in loaded.generated.small.items()})
    timings["lower"] = time.perf_counter() - t
    return Converted(loaded, captured, program, timings, calibration_text=calibration_text)


def _calibration_maxima(program: Program, loaded: LoadedModel, seq_len: int, text: str | None = None) -> dict[int, float]:
    vocab = vocab_size(loaded.model)
    maxabs: dict[int, float] = {}

    def record(node, value):
        if value.numel():
            lo, hi = torch.aminmax(value)
            maxabs[node.id] = max(maxabs.get(node.id, 0.0), -lo.item(), hi.item())

    for w in calibration_windows(loaded.tokenizer, seq_len, text=text):
        run_float(program, {"tokens": one_hot(w[None], vocab)}, visit=record)
    return maxabs


def plan_config(policy: str, *, field_bits: int = 64, frac_bits: int = 16, protocol: str | None = None,
                headroom_bits: int | None = None, bounds: str = "static", margin_bits: int = 1,
                time_limit_s: float = OPTIMAL_TIME_LIMIT_S, prime: int | None = None,
                objective: str = "elements",
                precision_tolerance_bits: int | None = PRECISION_TOLERANCE_BITS) -> PlanConfig:
    """A checked ``PlanConfig``; the protocol profile (default: faithful-2pc) gives the headroom
    unless ``headroom_bits`` says otherwise. ``prime``: compute in F_prime (``field_bits`` is then
    the prime's capacity, ``core.fields``). ``objective``: what optimal minimises
    (``analysis.objective``). ``precision_tolerance_bits``: lazy and optimal keep every value's
    scale at least eager's less this (None: no floor; ``analysis.greedy.precision_floors``)."""
    if prime is not None:
        field_bits = prime_capacity_bits(check_prime(prime))
    proto = load_protocol(protocol)
    proto.check_ring(field_bits, prime)
    headroom = proto.headroom_bits if headroom_bits is None else headroom_bits
    return PlanConfig(field_bits=field_bits, frac_bits=frac_bits, policy=policy, protocol=proto.name,
                      headroom_bits=headroom, bounds=bounds, margin_bits=margin_bits if bounds == "calibrated" else None,
                      time_limit_s=time_limit_s, prime=prime, objective=objective,
                      precision_tolerance_bits=precision_tolerance_bits).validate()


def build_plan(converted: Converted, config: PlanConfig, hints: tuple = (), progress=None) -> Plan:
    """Analyse and place under ``config`` (``plan_config``); ``hints``, ``progress``: see ``analysis.place``."""
    if config.bounds == "static":
        node_bounds = static_bounds(converted.program)
    else:
        node_bounds = calibrated_bounds(converted.program, converted.maxabs, config.margin_bits)
    t = time.perf_counter()
    plan = place(converted.program, node_bounds, config, hints, progress)
    plan.solver.setdefault("wall_s", round(time.perf_counter() - t, 3))
    plan.model, plan.weights = converted.identity(), sorted(converted.program.weights)
    return plan


@dataclass
class EmulationResult:
    metrics: dict[str, float]
    bound_violations: int
    time_float: float
    time_emulated: float
    windows: int
    positions: int
    ir_float_max_abs_logit_error: float | None  # recipes alone (no rounding) vs the float model; None: not run
    above_bound: int = 0  # --check: elements above their bound (beyond rounding), bit width kept or not
    offenders: list[dict] = field(default_factory=list)  # --check: the nodes furthest above their bounds


def emulate(model: torch.nn.Module, plan: Plan, windows: torch.Tensor, device: str = "cpu",
            check: bool = True, progress=None, truncation: str = "nearest", seed: int = 0,
            recipes_error: bool = False) -> EmulationResult:
    """Run the float model and the plan on every window; compare logits position by position.
    ``truncation``: the executor's truncation model (``backends.TRUNCATION_MODELS``);
    ``recipes_error``: also run the IR in float64 (recipes, no rounding) for the error of the
    recipes alone — a whole second forward pass, so only when asked."""
    vocab = vocab_size(model)
    seq_len = plan.program[plan.program.inputs["tokens"]].shape[1]
    if windows.shape[1] != seq_len:
        raise UserError(f"the plan was made for windows of {seq_len} tokens, not {windows.shape[1]}")
    executor = RingExecutor(plan, device, truncation, seed)
    model_device = next(model.parameters()).device  # both results end on the CPU: both timings include that
    floats, emus, irs = [], [], []
    t_float = t_emu = 0.0
    violations = 0
    for w in windows:
        t = time.perf_counter()
        with torch.no_grad():
            floats.append(model_output(model, w[None].to(model_device))[0].double().cpu())
        t_float += time.perf_counter() - t
        inputs = {"tokens": one_hot(w[None], vocab)}
        t = time.perf_counter()
        outs, v = executor.run(inputs, check=check)
        emus.append(executor.decode_outputs(outs)[0][0])
        t_emu += time.perf_counter() - t
        violations += v
        if recipes_error:
            irs.append(run_float(plan.program, inputs)[0][0])
        if progress is not None:
            progress()
    f = torch.cat(floats)
    recipes_alone = (f - torch.cat(irs)).abs().max().item() if recipes_error else None
    metrics = _metrics_per_window(floats, emus, windows, is_encoder(model))
    return EmulationResult(metrics, violations, t_float, t_emu, len(windows), f.shape[0], recipes_alone,
                           executor.above_bound, executor.worst_offenders())


def _metrics_per_window(floats, emus, windows, encoder: bool) -> dict[str, float]:
    """Mean of per-window metrics (windows have equal length); max for the max error; perplexity
    from the mean log-perplexity. Encoders (hidden states, not logits): cosine_mean (per token),
    cosine_pooled (each window's mean-pooled sentence embedding), max_abs_error."""
    if encoder:
        parts = [compare_hidden(f, e) for f, e in zip(floats, emus)]
        return {"cosine_mean": sum(p["cosine_mean"] for p in parts) / len(parts),
                "cosine_pooled": sum(p["cosine_pooled"] for p in parts) / len(parts),
                "max_abs_error": max(p["max_abs_error"] for p in parts)}
    parts = [compare_logits(f, e, w) for f, e, w in zip(floats, emus, windows)]
    n = len(parts)
    out = {k: sum(p[k] for p in parts) / n for k in ("top1_agreement", "kl_mean")}
    out["max_abs_logit_error"] = max(p["max_abs_logit_error"] for p in parts)
    out["top1_flips"] = sum(p["top1_flips"] for p in parts)
    out["flip_margin_max"] = max(p["flip_margin_max"] for p in parts)
    for k in ("ppl_float", "ppl_emulated"):
        out[k] = exp_or_inf(sum(math.log(p[k]) for p in parts) / n)
    return out
