"""The ``truncbridge`` command line's checks: every flag judged before any heavy work — a flag a plan fixes,
a flag that changes nothing, a name that does not exist (with the nearest valid ones) — each one line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .core.errors import UserError, first_line


def check_output_path(path: str | None, flag: str) -> None:
    if path and not Path(path).resolve().parent.is_dir():
        raise UserError(f"{flag}: directory does not exist: {Path(path).resolve().parent}")


def check_field(field_bits: int, frac_bits: int, prime: int | None = None) -> int:
    """The field's value bits, after one clear error for a field that cannot hold the representation."""
    from .core.fields import check_prime, check_ring_bits, prime_capacity_bits

    bits = prime_capacity_bits(check_prime(prime)) if prime is not None else check_ring_bits(field_bits)
    what = f"F_p's {bits} value bits" if prime is not None else f"--field-bits {bits}"
    if not 1 <= frac_bits < bits:
        raise UserError(f"--frac-bits must be at least 1 and below {what}, got {frac_bits}")
    return bits


def check_device(device: str) -> None:
    if device != "cpu":
        import torch

        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError) as exc:
            raise UserError(f"--device {device} is not usable here: {first_line(exc)}") from None


def note(text: str) -> None:
    """A flag that changes nothing here, said on stderr (the command goes on)."""
    print(f"truncbridge: note: {text}", file=sys.stderr)


def read_texts(args) -> None:
    """--text and --calibration-text read before the slow work (args.calibration: the latter's text)."""
    from .frontend.data import read_text_file

    if getattr(args, "text", None):
        read_text_file(args.text)
    args.calibration = None
    if args.calibration_text:
        try:
            args.calibration = read_text_file(args.calibration_text)
        except UserError as exc:
            raise UserError(f"--calibration-text: {exc}") from None


def check_calibration_fits(args, seq_len: int, fake_weights: bool = False) -> None:
    """--calibration-text holds a window of --seq-len tokens: checked with the tokenizer alone."""
    from .frontend.models import load_tokenizer
    from .pipeline import calibration_windows

    if args.calibration is not None:
        calibration_windows(load_tokenizer(args.model, args.preset, fake_weights), seq_len, text=args.calibration)


def check_network(spec: str, flag: str, also: tuple[str, ...] = ()) -> None:
    """A network name (or rtt=MS,bw=MBIT), with the nearest names when it is mistyped."""
    from .core.protocols import PROTOCOL_DIR, load_network
    from .core.suggest import nearest

    if spec in also:
        return
    try:
        load_network(spec)
    except UserError:
        names = [*also, *json.loads((PROTOCOL_DIR / "networks.json").read_text())]
        raise UserError(f"{flag}: unknown network {spec!r}{nearest(spec, names)}: choose {', '.join(names)} "
                        "or rtt=MS,bw=MBIT") from None


def check_applies(args, policies: list[str]) -> None:
    """A placement flag given where it changes nothing is refused (or noted, for a mere limit)."""
    if args.objective != "elements":
        check_network(args.objective, "--objective", also=("elements",))
        if "optimal" not in policies:
            raise UserError(f"--objective {args.objective} applies to --policy optimal only (what its search "
                            f"minimises); {'/'.join(policies)} places without it")
    if "margin_bits" in args.given and args.bounds != "calibrated":
        raise UserError("--margin-bits applies to --bounds calibrated only (static bounds have no margin)")
    if "precision_tolerance" in args.given and set(policies) == {"eager"}:
        raise UserError("--precision-tolerance applies to lazy and optimal only (eager is the floor they keep to)")
    if "time_limit" in args.given and "optimal" not in policies:
        note(f"--time-limit applies to --policy optimal only: {'/'.join(policies)} ignores it")


# flags a plan file fixes when it is made: with --plan they do not apply (why)
NOT_WITH_PLAN = {"relu": "its program was lowered when it was made",
                 "calibration_text": "its ranges were calibrated when it was made",
                 "time_limit": "its truncations were placed when it was made"}


def plan_fixed(plan) -> dict[str, tuple[object, str]]:
    """Flag (dest) -> (the plan's value, how to say it): given otherwise with --plan, refused."""
    c = plan.config
    seq_len = plan.model["seq_len"]
    tolerance = "off" if c.precision_tolerance_bits is None else f"{c.precision_tolerance_bits} bits"
    return {"field_bits": (c.field_bits if c.prime is None else None, plan.field_name),
            "prime": (c.prime, plan.field_name), "policy": (c.policy, c.policy), "frac_bits": (c.frac_bits, str(c.frac_bits)),
            "protocol": (c.protocol, c.protocol), "headroom": (c.headroom_bits, f"{c.headroom_bits} bits"),
            "bounds": (c.bounds, c.bounds), "margin_bits": (c.margin_bits, str(c.margin_bits)),
            "precision_tolerance": (c.precision_tolerance_bits, tolerance), "objective": (c.objective, c.objective),
            "seq_len": (seq_len, f"{seq_len} tokens"), "preset": (plan.model.get("preset"), str(plan.model.get("preset")))}


def check_against_plan(args, plan) -> None:
    """With --plan, a flag the plan fixes is refused when given otherwise, or when it does not apply."""
    from .frontend.models import ALIASES, RANDOM_PREFIX, SHIPPED

    made_for = plan.model.get("name", "default")
    if str(plan.model.get("hash", "")).startswith("generated:"):
        raise UserError(f"{args.plan} is a --fake-weights plan of {made_for}: its weights were generated, never held, "
                        "so it is costed (truncbridge report), not emulated")
    named = ALIASES.get(args.model, args.model)
    if named and (named in SHIPPED or named.startswith(RANDOM_PREFIX)) and named != made_for:
        raise UserError(f"this plan was made for model {made_for}, not --model {args.model}: drop --model, or make a "
                        f"plan for {args.model}")
    for dest, why in NOT_WITH_PLAN.items():
        if dest in args.given or (dest == "calibration_text" and args.calibration_text):
            raise UserError(f"--{dest.replace('_', '-')} does not apply with --plan: {why}")
    for dest, (fixed, shown) in plan_fixed(plan).items():
        value = getattr(args, dest)
        if dest in args.given and value != fixed:
            flag = f"--{dest.replace('_', '-')}"
            raise UserError(f"{flag} {'off' if value is None else value} differs from the plan's {shown}: a plan is made "
                            f"for one {flag[2:]}; drop {flag}, or make a plan with it")


def check_memory(args, command: str, seq_len: int, windows: int = 0, value_bytes: int = 8, fake_weights: bool = False,
                 model: str | None = None, preset: str | None = None, activations: str | None = None) -> dict:
    """The memory the command will take, estimated from the model's config before it is built
    (``memory.py``); refused in one line, with the way out, where it exceeds what is available
    (``--memory-check off``: reported only). The estimate and what was available, for the JSON."""
    from .frontend.models import RANDOM_PREFIX, check_model
    from .memory import check_fits, command_estimate, model_shape

    model, preset = model or args.model, preset or args.preset
    activations = activations or args.activations
    shape = model_shape(model, preset, activations)
    estimate = command_estimate(command, shape, seq_len, windows, value_bytes, fake_weights,
                                getattr(args, "recipes_error", False))
    name = check_model(model, preset, fake_weights, activations)
    ways = ["a smaller --seq-len"] + (["fewer --windows"] if windows else []) + ["a bigger machine"]
    if name.startswith(RANDOM_PREFIX) and not fake_weights:
        ways.insert(0, "`truncbridge plan --fake-weights` plans it without holding its weights")
    what = f"{command} of {name}{f' at {preset}' if preset else ''} ({shape.params / 1e9:.2f}e9 parameters, --seq-len {seq_len})"
    return {**estimate.as_json(), **check_fits(estimate.total, what, "; ".join(ways), args.memory_check)}
