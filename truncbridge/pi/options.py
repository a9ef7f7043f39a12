"""run_pi's command line (``session.py`` runs it): the same argv on every rank, checked alike, so
rank 0 speaks for all on a usage error. The client's own arguments (``--prompt``, ``--text``,
``--client-output``) are read on the client's rank only. ``parse_args`` returns a frozen
``PiConfig``: nothing below the command line reads argparse's Namespace."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..backends.crypten.dealer import DEALERS
from ..backends.crypten.truncation import PROTOCOLS
from ..cli_args import add_precision_tolerance
from ..core.errors import ArgumentParser, UserError
from ..core.protocols import load_network
from ..core.types import POLICIES as PLAN_POLICIES
from ..core.types import PRECISION_TOLERANCE_BITS
from .generation_options import GenerationOptions, add_generation_arguments, generation_options
from .results import INSECURE

POLICIES = PLAN_POLICIES + ("vanilla",)  # vanilla: CrypTen as is, no plan


@dataclass(frozen=True)
class ClientOptions:
    """The client's input and output: read and written on the client's rank only (``client.py``)."""

    prompt: str | None = None
    text: str | None = None  # a file holding the prompt
    output: str | None = None  # --client-output: where the client writes its result
    output_logits: bool = False


@dataclass(frozen=True)
class PiConfig:
    """One run_pi session, as the command line asked for it (``parse_args``), checked."""

    model: str = "default"
    preset: str | None = None  # --preset: random:<model_type> at a published model's full-size shapes
    seq_len: int = 32
    policies: tuple[str, ...] = POLICIES  # with --plan: () or ("vanilla",), the plans name theirs
    plan_files: tuple[str, ...] = ()  # --plan: the owner's plans, instead of planning here
    truncation: str = "exact"  # backends.crypten.truncation.PROTOCOLS
    bounds: str = "static"
    frac_bits: int = 16
    time_limit_s: float = 60.0  # the optimal placement's MILP
    precision_tolerance_bits: int | None = PRECISION_TOLERANCE_BITS
    repeat: int = 1
    threads: int = 0  # 0: this host's cores / parties on it
    timeout_s: float = 30.0  # a party waits this long on a peer
    silence_s: float = 5.0  # without a heartbeat, a peer is lost
    vanilla_rsqrt_scale: int = 1
    network: dict | None = None  # core.protocols.load_network's dict; None: loopback as is
    fuse: bool = True
    batch: bool = True
    plan_cache: bool = True  # --no-plan-cache: plan afresh (plan_cache)
    dealer: str = "separate"  # dealer.DEALERS
    audit: bool = False  # INSECURE
    benchmark_reveal: bool = False  # INSECURE
    json_path: str | None = None  # rank 0's --json
    memory_check: str = "on"  # memory.CHECK_MODES: refuse a run that will not fit this host, before building
    material_window_mb: int = 1024  # dealt material a party expands ahead of use (dealer.DealtProvider)
    client: ClientOptions = ClientOptions()
    generation: GenerationOptions | None = None  # --generate T (generation_options.py)

    @property
    def vanilla(self) -> bool:
        return "vanilla" in self.policies


def parse_args(argv: list[str]) -> PiConfig:
    from ..frontend.models import MODEL_NAMES, PRESET_TYPES, PRESETS

    p = ArgumentParser(prog="run_pi.py", description="Private inference with real CrypTen parties and a separate dealer "
                "(mpirun -n 3: owner, client, dealer; -n 4: owner, client, helper, dealer).")
    p.add_argument("--model", default="default", help=f"{' | '.join(MODEL_NAMES)} | a local HF checkpoint directory")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="random:<model_type> at the full-size shapes of a published model, as emulate takes it (with "
                        "--model random:<type>: " + ", ".join(f"{k} random:{v}" for k, v in PRESET_TYPES.items()) + ")")
    p.add_argument("--seq-len", type=int, default=32,
                   help="tokens in the client's input, public (default 32): a longer prompt keeps its last ones, a "
                        "shorter one is right-padded")
    _client_arguments(p)
    add_generation_arguments(p)
    p.add_argument("--policy", default=None, help="comma-separated subset of " + ",".join(POLICIES) + " (default: all; "
                   "with --plan, the plan files' policies: --policy may add vanilla)")
    p.add_argument("--plan", nargs="+", metavar="FILE",
                   help="run these plan files (truncbridge plan -o FILE, one per policy; read by the model owner, "
                        "the others get their redacted copies) instead of planning here: each must be made for this "
                        "--model and --seq-len, and be one the chosen --truncation can run")
    p.add_argument("--truncation", default="exact", choices=PROTOCOLS,
                   help="exact: truncbridge's 1-round exact protocol (default); crypten: CrypTen's own div")
    # planning flags: default None, so that --plan can refuse them (a plan file fixed them when it was made)
    p.add_argument("--bounds", choices=("static", "calibrated"), help="bit-width analysis (default static)")
    p.add_argument("--frac-bits", type=int, help="fixed-point fraction bits (default 16)")
    p.add_argument("--time-limit", type=float, help="seconds for the optimal placement's MILP (default 60)")
    add_precision_tolerance(p)
    p.add_argument("--repeat", type=int, default=1, help="run every policy this many times, interleaved; "
                   "wall_s is the median (default 1)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a party waits on a peer before giving up (default 30)")
    p.add_argument("--silence", type=float, default=5.0, help="seconds without a heartbeat before a peer is lost (default 5)")
    p.add_argument("--vanilla-rsqrt-scale", type=int, default=1,
                   help="vanilla only: rsqrt(x) = s * inv_sqrt(s^2 x), the hand-made workaround for CrypTen's "
                        "inv_sqrt range (default 1: CrypTen as is)")
    p.add_argument("--network", default=None,
                   help="emulate a network in software: lan, mid, wan (protocols/networks.json) or rtt=MS,bw=MBIT; each "
                        "communicator call of the online phase waits its round trip and bytes (default: none, as is)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="exact truncation: open every product on its own instead of letting it ride on a "
                        "truncation's opening (to measure what fusing buys)")
    p.add_argument("--no-batch", dest="batch", action="store_false",
                   help="open one step at a time, as CrypTen does, instead of every opening ready in the same "
                        "round in one message (to measure what batching buys)")
    p.add_argument("--dealer", default="separate", choices=DEALERS,
                   help="separate: the last rank deals and receives only sizes (default); owner-insecure: the model "
                        "owner deals and can read the client's data (a benchmark setting, marked in every table)")
    p.add_argument("--audit", action="store_true",
                   help="INSECURE test/debug: pool every party's view and the dealer's masks at rank 0 and check that every "
                        "receipt is a share, a fresh-masked opening or the client's output, and every MPI receipt after "
                        "set-up a statistic (reveals everything to rank 0; marked in every table)")
    p.add_argument("--json", help="write the rows as JSON to this path (rank 0)")
    _resource_arguments(p)
    return pi_config(p.parse_args(argv))


def _resource_arguments(p) -> None:
    """What each process may take: threads, memory (the check, the material window), the plan cache."""
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per party (default: this host's cores / parties on it, at least 1)")
    p.add_argument("--memory-check", default="on", choices=("on", "off"),
                   help="on (default): rank 0 estimates every process's memory from the model's config before any "
                        "party builds, and all refuse where the processes on its host will not fit; off: try anyway")
    p.add_argument("--material-window", type=int, default=1024, metavar="MB",
                   help="dealt material each party expands before the pass, in MB (default 1024); what lies beyond is "
                        "expanded when the pass takes it, reported as late_expansion_s (local work, no communication)")
    p.add_argument("--no-plan-cache", dest="plan_cache", action="store_false",
                   help="plan afresh instead of reading (and writing) the owner's plan cache ($TRUNCBRIDGE_CACHE, "
                        "default ~/.cache/truncbridge/plans)")


def pi_config(args: argparse.Namespace) -> PiConfig:
    """The checked ``PiConfig`` of parsed arguments: the one place a Namespace is read."""
    policies = _policies(args.policy, args.plan)
    _planning_flags(args)
    _model_flags(args.model, args.preset)
    if args.seq_len < 2:
        raise UserError(f"--seq-len must be at least 2, got {args.seq_len}")
    if args.client_output_logits and not args.client_output:
        raise UserError("--client-output-logits needs --client-output PATH")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    if args.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {args.repeat}")
    if args.timeout <= 0 or args.silence <= 0:
        raise UserError("--timeout and --silence must be positive")
    if args.material_window < 0:
        raise UserError(f"--material-window must be >= 0 MB, got {args.material_window}")
    return PiConfig(
        model=args.model, preset=args.preset, seq_len=args.seq_len, policies=policies, plan_files=tuple(args.plan or ()),
        truncation=args.truncation, bounds=args.bounds or PiConfig.bounds,
        frac_bits=PiConfig.frac_bits if args.frac_bits is None else args.frac_bits,
        time_limit_s=PiConfig.time_limit_s if args.time_limit is None else args.time_limit,
        precision_tolerance_bits=args.precision_tolerance, repeat=args.repeat, threads=args.threads,
        timeout_s=args.timeout, silence_s=args.silence, vanilla_rsqrt_scale=args.vanilla_rsqrt_scale,
        network=None if args.network is None else load_network(args.network), fuse=args.fuse, batch=args.batch,
        dealer=args.dealer, audit=args.audit, benchmark_reveal=args.benchmark_reveal, json_path=args.json,
        plan_cache=args.plan_cache, memory_check=args.memory_check, material_window_mb=args.material_window,
        client=ClientOptions(prompt=args.prompt, text=args.text, output=args.client_output,
                             output_logits=args.client_output_logits), generation=generation_options(args))



def _policies(text: str | None, plan_files: list[str] | None) -> tuple[str, ...]:
    """--policy's policies; with --plan the files name theirs, and --policy may add only vanilla."""
    if text is None:
        return () if plan_files else POLICIES
    policies = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in policies if x not in POLICIES]
    if bad or not policies:
        raise UserError(f"unknown policy {', '.join(bad) or '(none)'}: choose from {', '.join(POLICIES)}")
    if plan_files and set(policies) != {"vanilla"}:
        raise UserError(f"--plan runs the plan files' own policies: --policy may add vanilla only, not "
                        f"{', '.join(p for p in policies if p != 'vanilla')}")
    return policies


PLANNING_FLAGS = {"bounds": "--bounds", "frac_bits": "--frac-bits", "time_limit": "--time-limit"}


def _planning_flags(args: argparse.Namespace) -> None:
    """--plan runs plans made already: a flag that would change how they were made does not apply."""
    given = [flag for dest, flag in PLANNING_FLAGS.items() if getattr(args, dest) is not None]
    if args.plan and given:
        raise UserError(f"--plan runs plan files as they were made: {' and '.join(given)} would change how they were "
                        "planned (give them to truncbridge plan instead)")


def _model_flags(model: str, preset: str | None) -> None:
    """--model random:<type> and --preset checked on every rank alike, before anything is built (a checkpoint
    directory is checked where it is read: the owner's weights, the others' config)."""
    from ..frontend.models import ALIASES, RANDOM_PREFIX, check_model

    if preset is not None or ALIASES.get(model, model).startswith(RANDOM_PREFIX):
        check_model(model, preset)


def computing_parties(size: int, dealer: str) -> int:
    parties = size - 1 if dealer == "separate" else size
    if parties not in (2, 3):
        raise UserError(f"run_pi needs 2 or 3 computing parties and a dealer: mpirun -n 3 or -n 4 "
                        f"(or -n 2|3 with --dealer {INSECURE}); got {size} process{'es' if size != 1 else ''}")
    return parties


def _client_arguments(p) -> None:
    """The client's input and output (``client.py``), and the benchmark that pools them."""
    given = p.add_mutually_exclusive_group()
    given.add_argument("--prompt", help="the client's input text, read on the client's rank only (default: the model's "
                       "held-out text). mpirun's one command line gives every rank the same argv: see --text")
    given.add_argument("--text", metavar="FILE", help="the client's input, a UTF-8 file read on the client's rank "
                       "only (it need not exist on other hosts)")
    p.add_argument("--client-output", metavar="PATH",
                   help="the client writes its result here (JSON, on its own rank): input ids, top tokens")
    p.add_argument("--client-output-logits", action="store_true", help="--client-output also holds the logits")
    p.add_argument("--benchmark-reveal", action="store_true",
                   help="INSECURE benchmark: after the timed runs the client sends its token ids and logits to the "
                        "model owner, which measures them against the emulator and the float model (the accuracy "
                        "columns; marked in every table)")
