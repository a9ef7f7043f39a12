"""The ``truncbridge`` command line's arguments: one parser, one line and exit status 2 on a usage error."""
from __future__ import annotations

import argparse
import re

from .core.errors import ArgumentParser as OneLineParser
from .core.suggest import nearest

DEFAULT_SEQ_LEN = 128
DEFAULT_WINDOWS = 16
PLAN_PROTOCOL = "crypten-exact-2pc"  # plan's default in Z_2^64: CrypTen's backend runs its plans (|x| < 2^62)


class _Unset:
    """The default of a flag whose default is filled in after parsing (``parse_args``): a flag the
    user gave is then told from one left at its default, even when both have the same value."""

    def __repr__(self) -> str:
        return "the default"


UNSET = _Unset()


class ArgumentParser(OneLineParser):
    """One line and exit status 2 on a usage error; a mistyped choice gets the nearest valid ones;
    flags declared with ``_flag`` keep their defaults in ``resolved_defaults`` (see ``parse_args``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resolved_defaults: dict[str, object] = {}
        self.commands: dict[str, ArgumentParser] = {}

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from {choices})"
                                                 f"{nearest(value, action.choices)}")


def _flag(p, *names, default, **kwargs):
    """``p.add_argument`` whose default is filled in by ``parse_args`` (a plain parser: as given)."""
    registry = getattr(p, "resolved_defaults", None)
    action = p.add_argument(*names, default=default if registry is None else UNSET, **kwargs)
    if registry is not None:
        registry[action.dest] = default
    return action


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with ``args.given``: the flags the user gave (their defaults filled in)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = set()
    for dest, default in parser.commands[args.command].resolved_defaults.items():
        if getattr(args, dest) is UNSET:
            setattr(args, dest, default)
        else:
            args.given.add(dest)
    return args


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def tolerance_bits(text: str) -> int | None:
    """--precision-tolerance: bits below eager's scale a value may go, or off (None)."""
    if text == "off":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bits or off, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 bits or off, got {value}")
    return value


def add_precision_tolerance(p) -> None:
    from .core.types import PRECISION_TOLERANCE_BITS

    _flag(p, "--precision-tolerance", type=tolerance_bits, default=PRECISION_TOLERANCE_BITS, metavar="BITS|off",
                   help="lazy, optimal: keep every value's scale at least eager's minus BITS (default "
                        f"{PRECISION_TOLERANCE_BITS}; off: truncate to frac bits wherever that is cheaper; docs/placement.md, "
                        "\"Precision floor\")")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def big_int(text: str) -> int:
    """An integer as written: decimal, 0x hex, or 2^k +- c (e.g. 2^61-1, 2^127-1)."""
    spelled = text.replace(" ", "").replace("**", "^")
    match = re.fullmatch(r"2\^(\d+)(?:([+-])(\d+))?", spelled)
    if match:
        k, sign, c = match.groups()
        return 2 ** int(k) + (int(c) if sign == "+" else -int(c) if sign else 0)
    try:
        return int(spelled, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer such as 2305843009213693951 or 2^61-1, got {text!r}") from None


def _big_int_list(text: str) -> list[int]:
    return [big_int(x) for x in text.split(",") if x.strip()]


def _word_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_model_args(p, seq=True):
    from .frontend.models import MODEL_NAMES, PRESET_TYPES, PRESETS
    from .frontend.realistic import ACTIVATION_MODES, MASSIVE_ACTIVATION

    p.add_argument("--model", default=None,
                   help=f"{' | '.join(MODEL_NAMES)} | a local HF checkpoint directory (default: default)")
    _flag(p, "--preset", default=None, choices=sorted(PRESETS),
          help="random:<model_type> at the full-size shapes of a published model (with --model random:<type>: "
               + ", ".join(f"{k} random:{v}" for k, v in PRESET_TYPES.items()) + ")")
    _flag(p, "--activations", default="random", choices=ACTIVATION_MODES,
          help=f"random:<model_type>: random (the initialiser's ranges, a few units; default) or real: a trained LLM's "
               f"ranges, massive activations of {MASSIVE_ACTIVATION:g} in two residual channels at '.' and newline, "
               "attention logits spread over tens (docs/models.md, \"Real activation ranges\")")
    if seq:
        _flag(p, "--seq-len", type=positive_int, default=DEFAULT_SEQ_LEN,
              help=f"tokens per window (default {DEFAULT_SEQ_LEN}; with --plan, the plan's)")
    p.add_argument("--calibration-text", default=None, metavar="FILE",
                   help="text whose windows calibrate the recipes' input ranges (default: the bundled training text)")
    p.add_argument("--memory-check", default="on", choices=("on", "off"),
                   help="on (default): estimate the memory the model and the run take from the config before building "
                        "anything and refuse where it exceeds what is available; off: try anyway (docs/cli.md, \"Memory\")")


def _add_numeric_args(p, lists=False, protocol_help: str | None = None):
    from .core.protocols import DEFAULT_PROTOCOL, protocol_names
    from .core.types import BOUNDS_MODES, OPTIMAL_TIME_LIMIT_S, POLICIES

    if not lists:
        _flag(p, "--field-bits", type=int, default=64, help="ring size l of Z_2^l (2..128, default 64)")
        _flag(p, "--prime", type=big_int, default=None,
              help="compute in the prime field F_p instead (p < 2^127, e.g. 2^61-1; signed encoding)")
        _flag(p, "--policy", default="eager", choices=POLICIES, help="truncation placement (default eager)")
    _flag(p, "--frac-bits", type=int, default=16, help="fixed-point fraction bits (default 16)")
    _flag(p, "--relu", default="comparison", choices=("comparison", "smooth"),
          help="ReLU, max, min, clamp: exact by a counted comparison (default), or smooth: no comparison, "
               "(x + sqrt(x^2 + eps^2)) / 2 with its error bound recorded (docs/recipes.md)")
    _flag(p, "--protocol", default=DEFAULT_PROTOCOL, choices=protocol_names(),
          help=protocol_help or f"protocol profile from protocols/ (default {DEFAULT_PROTOCOL}: exact truncation, no headroom)")
    _flag(p, "--headroom", type=int, default=None, help="statistical headroom bits (default: the protocol's)")
    _flag(p, "--bounds", default="static", choices=BOUNDS_MODES, help="static analysis (default) or calibrated maxima")
    _flag(p, "--margin-bits", type=int, default=1, help="calibrated bounds: safety margin in bits (default 1)")
    _flag(p, "--time-limit", type=float, default=OPTIMAL_TIME_LIMIT_S,
          help=f"optimal: MILP time limit in seconds (default {OPTIMAL_TIME_LIMIT_S:g})")
    add_precision_tolerance(p)
    _flag(p, "--objective", default="elements",
          help="optimal: minimise truncated elements (default), or the online time on a network: lan, mid, wan "
               "or rtt=MS,bw=MBIT, from the protocol's rounds and bytes (docs/placement.md, \"Placement objective\")")


def _add_eval_args(p, windows=DEFAULT_WINDOWS):
    p.add_argument("--text", help="evaluation text file (default: the model's held-out text)")
    p.add_argument("--windows", type=positive_int, default=windows, help=f"at most this many windows (default {windows})")
    p.add_argument("--device", default="cpu",
                   help="torch device for the emulator and the float model it is compared with (cpu, cuda, cuda:1, ...)")


def _add_emulate(sub) -> None:
    emu = sub.add_parser("emulate", help="run a fixed-point plan exactly in plaintext and compare with float")
    _add_model_args(emu)
    _add_numeric_args(emu)
    _add_eval_args(emu)
    emu.add_argument("--plan", help="run this plan file (its field, policy and shapes replace the flags above)")
    check = emu.add_mutually_exclusive_group()
    check.add_argument("--check", dest="check", action="store_true", default=True,
                       help="verify at run time that no value exceeds its promised bound (default)")
    check.add_argument("--no-check", dest="check", action="store_false", help="skip the bound check (bound_violations = null)")
    emu.add_argument("--mpc-truncation", action="store_true",
                     help="sample the protocol's own truncation (its error model: LSB errors, failures) instead of "
                          "exact round-nearest: what MPC under --protocol (or the plan's) would output")
    _flag(emu, "--seed", type=int, default=0, help="randomness of --mpc-truncation (default 0)")
    emu.add_argument("--recipes-error", action="store_true",
                     help="also run the IR in float64 (recipes, no rounding) to report the recipes' own error: "
                          "a second full forward pass per window")
    emu.add_argument("--json", help="write the results as JSON to this path")


def _add_plan(sub) -> None:
    pl = sub.add_parser("plan", help="analyse and place truncations; write a plan file")
    _add_model_args(pl)
    _add_numeric_args(pl, protocol_help=f"protocol profile from protocols/ (default: {PLAN_PROTOCOL} in Z_2^64, a plan "
                      "CrypTen's backend runs — run_pi --plan, PlanModule; faithful-2pc in other fields)")
    pl.add_argument("-o", "--output", required=True, help="plan file to write (JSON)")
    pl.add_argument("--no-plan-cache", dest="plan_cache", action="store_false",
                    help="plan afresh instead of reading (and writing) the plan cache ($TRUNCBRIDGE_CACHE)")
    pl.add_argument("--fake-weights", action="store_true",
                    help="random:<type> at full size without holding it: weights generated one at a time, "
                         "kept as statistics (static bounds)")
    pl.add_argument("--decode-step", type=int, metavar="C",
                    help="the plan of one generated token after C cached positions (a KV-cache decode step; its cache "
                         "bounds settled over the prefill of C tokens and the step); --seq-len means nothing with it")


def _add_report(sub) -> None:
    from .core.protocols import protocol_names

    rep = sub.add_parser("report", help="costs of a plan under a protocol profile and network; several plans: "
                                        "side by side under every profile")
    rep.add_argument("plan", nargs="+", help="plan file(s)")
    rep.add_argument("--protocol", default=None, choices=protocol_names(), help="profile (default: the plan's)")
    rep.add_argument("--network", default="lan", help="lan, mid, wan (protocols/networks.json) or rtt=MS,bw=MBIT (default lan)")
    rep.add_argument("--json", help="write the report as JSON to this path")
    rep.add_argument("--plot", metavar="FILE",
                     help="draw the plan(s): each value's bits against the field along the program, where each "
                          "policy truncates, and rounds and bytes per recipe kind (PNG)")


def _add_compare(sub) -> None:
    cmp = sub.add_parser("compare", help="policies x field sizes: truncations, rounds, accuracy")
    _add_model_args(cmp)
    _add_numeric_args(cmp, lists=True)
    _add_eval_args(cmp, windows=4)
    _flag(cmp, "--field-bits", type=_int_list, default=[40, 48, 56, 64],
          help="ring sizes, comma-separated (default 40,48,56,64; up to 128)")
    _flag(cmp, "--primes", type=_big_int_list, default=[], help="prime fields too, comma-separated (e.g. 2^61-1)")
    _flag(cmp, "--policies", type=_word_list, default=["eager", "lazy", "optimal"], help="comma-separated")
    cmp.add_argument("--json", help="write the rows as a JSON list to this path")
    cmp.add_argument("--plot", help="draw truncated elements and top-1 agreement against field size (PNG)")


def _add_models(sub) -> None:
    models = sub.add_parser("models", help="list the built-in model names and presets")
    models.add_argument("--types", action="store_true",
                        help="list the model_types random:<model_type> converts (tested, then untested text models)")


def _add_generate(sub) -> None:
    """``truncbridge generate`` (``cli_generate.py``)."""
    gen = sub.add_parser("generate", help="private generation in the ring (a prefill and KV-cache steps) against "
                                          "the float model's own generation")
    _add_model_args(gen, seq=False)
    _add_numeric_args(gen)
    given = gen.add_mutually_exclusive_group()
    given.add_argument("--prompt", help="the prompt (default: the first 32 tokens of the model's held-out text)")
    given.add_argument("--prompt-file", metavar="FILE", help="the prompt, a UTF-8 file")
    _flag(gen, "--prompt-tokens", type=positive_int, default=32,
          help="without --prompt: the prompt is the first this many tokens of the held-out text (default 32)")
    _flag(gen, "--tokens", type=positive_int, default=16, help="tokens to generate (default 16)")
    _flag(gen, "--temperature", type=float, default=0.0, help="0: greedy (default); above 0: sample at this temperature")
    _flag(gen, "--top-k", type=int, default=0, help="sample from the k most likely tokens (default 0: all)")
    _flag(gen, "--seed", type=int, default=0, help="the sampling's seed (default 0)")
    gen.add_argument("--eos", action="store_true", help="stop at the tokenizer's end-of-sequence token")
    gen.add_argument("--device", default="cpu", help="torch device of the emulator (cpu, cuda, ...)")
    gen.add_argument("--no-check", dest="check", action="store_false",
                     help="skip the run-time bound check (bound_violations: 0)")
    gen.add_argument("--json", help="write the generation, per step, as JSON to this path")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="truncbridge", description="LLMs as fixed-point MPC plans with statically placed truncations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for add in (_add_emulate, _add_plan, _add_report, _add_compare, _add_models):
        add(sub)
    _add_generate(sub)
    parser.commands = sub.choices
    return parser
