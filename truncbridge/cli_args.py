"""The ``truncbridge`` command line's arguments: one parser, one line and exit status 2 on a usage error."""
from __future__ import annotations

import argparse
import re

from .core.errors import ArgumentParser

DEFAULT_SEQ_LEN = 128
DEFAULT_WINDOWS = 16


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

    p.add_argument("--precision-tolerance", type=tolerance_bits, default=PRECISION_TOLERANCE_BITS, metavar="BITS|off",
                   help="lazy, optimal: keep every value's scale at least eager's minus BITS (default "
                        f"{PRECISION_TOLERANCE_BITS}; off: truncate to frac bits wherever that is cheaper; README, "
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
    from .frontend.models import MODEL_NAMES, PRESETS

    p.add_argument("--model", default=None,
                   help=f"{' | '.join(MODEL_NAMES)} | a local HF checkpoint directory (default: default)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="random:<model_type> at the full-size shapes of a published model")
    if seq:
        p.add_argument("--seq-len", type=positive_int, default=None,  # None: not given (--plan has its own)
                       help=f"tokens per window (default {DEFAULT_SEQ_LEN}; with --plan, the plan's)")


def _add_numeric_args(p, lists=False):
    from .core.protocols import DEFAULT_PROTOCOL, protocol_names
    from .core.types import BOUNDS_MODES, OPTIMAL_TIME_LIMIT_S, POLICIES

    if not lists:
        p.add_argument("--field-bits", type=int, default=64, help="ring size l of Z_2^l (2..128, default 64)")
        p.add_argument("--prime", type=big_int, default=None,
                       help="compute in the prime field F_p instead (p < 2^127, e.g. 2^61-1; signed encoding)")
        p.add_argument("--policy", default="eager", choices=POLICIES, help="truncation placement (default eager)")
    p.add_argument("--frac-bits", type=int, default=16, help="fixed-point fraction bits (default 16)")
    p.add_argument("--relu", default="comparison", choices=("comparison", "smooth"),
                   help="ReLU, max, min, clamp: exact by a counted comparison (default), or smooth: no comparison, "
                        "(x + sqrt(x^2 + eps^2)) / 2 with its error bound recorded (README, \"Recipes and comparisons\")")
    p.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=protocol_names(),
                   help=f"protocol profile from protocols/ (default {DEFAULT_PROTOCOL}: exact truncation, no headroom)")
    p.add_argument("--headroom", type=int, default=None, help="statistical headroom bits (default: the protocol's)")
    p.add_argument("--bounds", default="static", choices=BOUNDS_MODES, help="static analysis (default) or calibrated maxima")
    p.add_argument("--margin-bits", type=int, default=1, help="calibrated bounds: safety margin in bits (default 1)")
    p.add_argument("--time-limit", type=float, default=OPTIMAL_TIME_LIMIT_S,
                   help=f"optimal: MILP time limit in seconds (default {OPTIMAL_TIME_LIMIT_S:g})")
    add_precision_tolerance(p)
    p.add_argument("--objective", default="elements",
                   help="optimal: minimise truncated elements (default), or the online time on a network: lan, mid, wan "
                        "or rtt=MS,bw=MBIT, from the protocol's rounds and bytes (README, \"Placement objective\")")


def _add_eval_args(p, windows=DEFAULT_WINDOWS):
    p.add_argument("--text", help="evaluation text file (default: the model's held-out text)")
    p.add_argument("--windows", type=positive_int, default=windows, help=f"at most this many windows (default {windows})")
    p.add_argument("--device", default="cpu",
                   help="torch device for the emulator and the float model it is compared with (cpu, cuda, cuda:1, ...)")


def build_parser() -> argparse.ArgumentParser:
    from .core.protocols import protocol_names

    parser = ArgumentParser(prog="truncbridge", description="LLMs as fixed-point MPC plans with statically placed truncations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

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
    emu.add_argument("--seed", type=int, default=0, help="randomness of --mpc-truncation (default 0)")
    emu.add_argument("--recipes-error", action="store_true",
                     help="also run the IR in float64 (recipes, no rounding) to report the recipes' own error: "
                          "a second full forward pass per window")
    emu.add_argument("--json", help="write the results as JSON to this path")

    pl = sub.add_parser("plan", help="analyse and place truncations; write a plan file")
    _add_model_args(pl)
    _add_numeric_args(pl)
    pl.add_argument("-o", "--output", required=True, help="plan file to write (JSON)")
    pl.add_argument("--fake-weights", action="store_true",
                    help="random:<type> at full size without holding it: weights generated one at a time, "
                         "kept as statistics (static bounds)")

    rep = sub.add_parser("report", help="costs of a plan under a protocol profile and network; several plans: "
                                        "side by side under every profile")
    rep.add_argument("plan", nargs="+", help="plan file(s)")
    rep.add_argument("--protocol", default=None, choices=protocol_names(), help="profile (default: the plan's)")
    rep.add_argument("--network", default="lan", help="lan, mid, wan (protocols/networks.json) or rtt=MS,bw=MBIT (default lan)")
    rep.add_argument("--json", help="write the report as JSON to this path")

    cmp = sub.add_parser("compare", help="policies x field sizes: truncations, rounds, accuracy")
    _add_model_args(cmp)
    _add_numeric_args(cmp, lists=True)
    _add_eval_args(cmp, windows=4)
    cmp.add_argument("--field-bits", type=_int_list, default=[40, 48, 56, 64],
                     help="ring sizes, comma-separated (default 40,48,56,64; up to 128)")
    cmp.add_argument("--primes", type=_big_int_list, default=[], help="prime fields too, comma-separated (e.g. 2^61-1)")
    cmp.add_argument("--policies", type=_word_list, default=["eager", "lazy", "optimal"], help="comma-separated")
    cmp.add_argument("--json", help="write the rows as a JSON list to this path")
    cmp.add_argument("--plot", help="draw truncated elements and top-1 agreement against field size (PNG)")

    models = sub.add_parser("models", help="list the built-in model names and presets")
    models.add_argument("--types", action="store_true", help="list every model_type random:<model_type> accepts")
    return parser
