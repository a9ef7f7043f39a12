"""One decode step at full size (``truncbridge plan --decode-step C``): the plan of one new token after
``C`` cached positions, the cache's bounds settled over the prefill of ``C`` tokens and that step.

With the model's weights (a checkpoint, ``default``, a small ``random:<type>``) it is
``convert_generation`` for a ``C``-token prompt and one further token (the prefill and the step at
``C``, calibrated on the bundled text's windows as a generation reads them). With ``--fake-weights``
(``frontend/fake_weights.py``: parameters on meta, each weight generated when calibration reads it,
statistics kept) no float run of the model holds its cache, so calibration runs the captured graphs
themselves on one window: the prefill on its first ``C`` tokens, whose trailing outputs are the
cache; then the step on its next token against that cache. Each pass generates every weight once
(the step's pass generates them again, seeded by name: the same values). The prefill is planned for
nothing but its static bounds of the keys and values: with those, ``settle_cache_bounds`` gives the
step's cache inputs their bound.
"""
from __future__ import annotations

import time

import torch

from ..core.errors import UserError
from ..core.types import Plan, PlanConfig
from ..frontend.calibrate import Range, _Recorder, weight_order
from ..frontend.capture_cached import capture_cached
from ..frontend.lower import lower
from ..frontend.models import LoadedModel
from ..pipeline import Converted, build_plan, calibration_windows
from .convert import PREFILL, GenerationPrograms, check_generation, convert_generation, declare_cache_bounds, settle_cache_bounds


def decode_step_window(cached: int, args_given: set[str], calibration_text: str | None) -> int:
    """The longest window a ``--decode-step`` plan reads (the prefill's ``cached`` tokens and the step's
    one): what its memory estimate is for. --seq-len means nothing with it (refused where given)."""
    if cached < 1:
        raise UserError(f"--decode-step must be a cache length of at least 1, got {cached}")
    if "seq_len" in args_given:
        raise UserError("--decode-step C plans one new token after C cached positions: --seq-len means nothing "
                        "with it (leave it out)")
    if calibration_text is not None:
        raise UserError("--decode-step calibrates on the bundled text as a generation reads it: "
                        "--calibration-text is not supported with it")
    return cached + 1


def check_decode_step(loaded: LoadedModel, cached: int) -> None:
    """A step after ``cached`` positions: at least one cached position, within the model's context."""
    if cached < 1:
        raise UserError(f"--decode-step must be a cache length of at least 1, got {cached}")
    check_generation(loaded, cached, 2)


def plan_decode_step(loaded: LoadedModel, cached: int, config: PlanConfig, frac_bits: int, relu: str) -> Plan:
    """``truncbridge plan --decode-step``: convert (with its status line), settle the cache, place the step."""
    from ..progress import status_line

    check_decode_step(loaded, cached)
    with status_line(f"converting the prefill of {cached} tokens and the step after it"):
        programs = convert_decode_step(loaded, cached, frac_bits, relu)
    limit = f", up to {config.time_limit_s:g} s" if config.policy == "optimal" else ""
    with status_line(f"placing the step ({config.policy}{limit})") as update:
        return decode_step_plan(programs, config, update)


def convert_decode_step(loaded: LoadedModel, cached: int, frac_bits: int, relu: str = "comparison") -> GenerationPrograms:
    """The prefill of ``cached`` tokens and the step at ``cached``, lowered, the cache's bounds settled."""
    check_decode_step(loaded, cached)
    if loaded.generated is None:
        return convert_generation(loaded, cached, 2, frac_bits, relu)
    out = GenerationPrograms(loaded, cached, 2)
    window = calibration_windows(loaded.tokenizer, cached + 1, 1)[0]  # one window, as plan --fake-weights
    cache = None
    for length in (PREFILL, cached):
        t = time.perf_counter()
        n = cached if length == PREFILL else 1
        captured = capture_cached(loaded.model, n, length, generate=loaded.generated)
        ranges, outputs = _calibrate_one(captured, window[None, length: length + n], cache)
        cache = dict(zip(captured.state_outputs, outputs[1:], strict=True))
        program = lower(captured, ranges, frac_bits, relu)
        program.weight_stats = dict(loaded.generated.stats)
        program.weights.update({k: v.double() for k, v in loaded.generated.small.items()})
        out.converted[length] = Converted(loaded, captured, program, {"capture+calibrate+lower": time.perf_counter() - t})
    out.cache_bounds = settle_cache_bounds([c.program for c in out.converted.values()])
    return out


@torch.no_grad()
def _calibrate_one(captured, ids: torch.Tensor, cache: dict | None) -> tuple[dict[str, Range], tuple]:
    """``calibrate`` on one batch with generated weights, keeping the graph's outputs (the new keys and values)."""
    ranges: dict[str, Range] = {}
    recorder = _Recorder(captured.exported.graph_module, ranges, {captured.client_input, *captured.state_inputs},
                         captured.generate)
    captured.generate.prefetch(weight_order(captured))
    outputs = recorder.run(*captured.placeholder_values(ids, cache))
    return ranges, tuple(outputs)


def decode_step_plan(programs: GenerationPrograms, config: PlanConfig, progress=None) -> Plan:
    """The step's plan under ``config``, its cache inputs at their settled bounds."""
    if config.bounds != "static":
        raise UserError("--decode-step plans use static bounds: the cache's bounds are settled over the prefill and "
                        "the step (--bounds calibrated is not supported with it)")
    converted = programs.converted[programs.prompt_len]
    declare_cache_bounds(converted.program, programs.cache_bounds)
    plan = build_plan(converted, config, progress=progress)
    plan.model["cached"] = programs.prompt_len
    return plan
