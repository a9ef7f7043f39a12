"""Memory a command will take, known before it allocates: an estimate from the model's config alone,
checked against what this machine has (one line and exit 2 where it will not fit, with the way out),
and the peak resident set measured after (``peak_rss_bytes``: ru_maxrss), both in ``--json``.

The model, in bytes. P: the parameters, counted on the meta device from the config (a 1- and a
2-layer model, extrapolated to the config's layers: nothing allocated, exact for uniform layers);
L the largest parameter; s --seq-len; n --windows; w the widest value per token, max(vocab, MLP width,
heads x s, 3 x hidden); o the output width (vocab, an encoder's hidden); b the bytes of one ring
element: 8 in Z_2^l for l <= 64, 16 (two int64 words, ``core/wide.py``) for wider rings and primes.

    runtime          RUNTIME_BYTES      the interpreter, torch, transformers, torch.export's machinery
    float model      4 P                float32, held for the whole command (the float reference)
    program weights  8 P                lowering's float64 copy of every weight
    ring weights     8 P                emulate, compare: the executor's folded weights, float64 GEMM operands
    activations      LIVE x s x w x b   the largest live values of one pass (LIVE = 8: the one-hot input,
                                        its product, GEMM parts and the values around the widest op)
    results          n x s x o x 8 x k  emulate, compare: float and emulated outputs of every window kept
                                        for the metrics (k = 2; 3 with --recipes-error)
    --fake-weights   8 L                replaces the three weight terms: one parameter generated, one prefetched

run_pi, per process (``pi_estimates``; W the --material-window, 1 GB by default):

    a party          RUNTIME_BYTES + CRYPTEN_BYTES (CrypTen and its communicator)
    owner            4 P + 8 P (the model, the program; planning) + 2 x min(material, FETCH_BYTES) (one message
                     of party 0's corrections and its pickle; those beyond the window wait on its disk) + a party's
    client, helper   min(material + 8 P, W) + halves' message, + 4 P where vanilla runs (the
                     architecture, built from the config; else the client builds it on the meta device)
                     (the owner's "a party's" adds OWNER_WEIGHT_BYTES x P)
    dealer           DEALER_BYTES (its runtime: no model) + 2 x min(material x parties, FETCH_BYTES) + the largest
                     request (8 L, the head's weight mask, + 2 x 8 x parties x s x w: its c, every party's draw)
                     (--dealer owner-insecure: the owner deals, and that term is the owner's)
    material         MATERIAL x s x layers x (4 hidden + 2 MLP + heads x s) x 8   (one policy's dealt values
                     besides the weights' masks, 8 P)
    halves' message  5 x 8 x min(P, max(HALVES_PER_MESSAGE, L)) (a weight larger than a message is one alone: the
                     head's, GPT-2-small's 38.6 M): the shares, masked shares, their concatenation and
                     its opening of one message of weights' halves (``backends/crypten/batched.py``)

A weight is the owner's alone in the weights' phase (its share is the weight, the others' zero), and the
owner sends its halves (``openings.half_opened``): the others make nothing weight-sized, and the owner's
shares live one message at a time. OWNER_WEIGHT_BYTES = 4: the weights in the ring that the owner keeps
for its online products; material is expanded at most W ahead (``dealer.DealtProvider``). Measured on
issue 27's 114 M-parameter Llama, 2PC, seq 32, one policy: owner 3.5 GB, dealer 0.95 GB (11.4 and 1.9 GB
before memory was bounded); GPT-2-small, 3PC + dealer, seq 128, W = 512 MB, planning in the same run:
owner 3.47, helper 2.02, dealer 1.65 GB, the client's 2.0 sampled (estimated 5.11, 2.58, 2.58, 1.50: the
owner's term holds the planning's float64 program, gone by the weights' phase). MATERIAL = 16 fits the
449 MB dealt there. The constants were measured on a 2-core x86-64 Linux machine (tests/test_memory.py and
tests/test_run_pi_medium.py check the estimate against peak RSS of real commands within ``AGREEMENT``).
``--memory-check off`` skips the refusal (the estimate is still reported).
"""
from __future__ import annotations

import copy
import resource
from dataclasses import dataclass, field
from pathlib import Path

from .core.errors import UserError

RUNTIME_BYTES = 450e6  # emulate random:llama --seq-len 16 (0.2 M parameters) peaks at 0.48 GB here
CRYPTEN_BYTES = 50e6  # run_pi random-llama --seq-len 16 --policy lazy: owner 0.53 GB, client 0.47 GB
DEALER_BYTES = 350e6  # the dealer builds no model: 0.36 GB in that run
LIVE_VALUES = 8
OWNER_WEIGHT_BYTES = 4  # int32, where a weight in the ring fits (|w| < 2^15 at 16 fraction bits); else 8
WINDOW_BYTES = 1 << 30  # run_pi's default --material-window (backends/crypten/dealer.py)
FETCH_BYTES = 256 << 20  # party 0's corrections per message (backends/crypten/dealer.py)
HALVES_PER_MESSAGE = 1 << 24  # weights' elements per message of halves (backends/crypten/batched.py)
MATERIAL = 16
FAKE_WEIGHT_BYTES = 8
AGREEMENT = (0.75, 1.5)  # estimate / measured peak RSS, checked by tests/test_memory.py (seen: 1.03-1.19)
CHECK_MODES = ("on", "off")
GB = 1e9


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model, read from its config alone."""

    params: int
    largest_param: int
    vocab: int
    hidden: int
    mlp: int
    heads: int
    layers: int
    encoder: bool

    def widest(self, seq_len: int) -> int:
        """The widest value per token: the one-hot input or the head, the MLP, the attention scores, q|k|v."""
        return max(self.vocab, self.mlp, self.heads * seq_len, 3 * self.hidden)

    @property
    def output_width(self) -> int:
        return self.hidden if self.encoder else self.vocab


@dataclass
class Estimate:
    """Bytes by term (the module docstring's model); ``total`` is their sum."""

    terms: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def as_json(self) -> dict:
        return {"estimate_bytes": int(self.total), "terms": {k: int(v) for k, v in self.terms.items()}}


def model_shape(name: str | None, preset: str | None = None, activations: str = "random") -> ModelShape:
    """The shape of ``--model`` (``--preset``, ``--activations``) from its config, without building it."""
    from .frontend.models import RANDOM_PREFIX, SHIPPED, check_model, is_encoder_config, random_config

    name = check_model(name, preset, activations=activations)
    if name.startswith(RANDOM_PREFIX):
        config = random_config(name[len(RANDOM_PREFIX):], preset)
        if activations == "real":
            from .frontend import realistic

            realistic.untie(config)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(SHIPPED.get(name, Path(name)))
    params, largest = _count_parameters(config, name)
    hidden = config.hidden_size
    mlp = next((v for k in ("intermediate_size", "n_inner", "ffn_dim") if (v := getattr(config, k, None))), 4 * hidden)
    return ModelShape(params, largest, config.vocab_size, hidden, mlp, config.num_attention_heads,
                      config.num_hidden_layers, is_encoder_config(config))


def _count_parameters(config, name: str) -> tuple[int, int]:
    """(parameters, largest parameter) of the config's model: a 1- and a 2-layer copy built on the meta
    device, the difference being one layer's (the embeddings and head counted once)."""
    import torch

    from .frontend.models import from_config

    counts, largest = [], 0
    for layers in (1, 2):
        small = copy.deepcopy(config)
        small.num_hidden_layers = layers
        if isinstance(getattr(small, "layer_types", None), list):  # per-layer attention kinds (Gemma 3, Qwen 2)
            small.layer_types = small.layer_types[:layers]
        with torch.device("meta"):
            sizes = [p.numel() for p in from_config(small, name).parameters()]
        counts.append(sum(sizes))
        largest = max(largest, *sizes)
    return counts[0] + (config.num_hidden_layers - 1) * (counts[1] - counts[0]), largest


def ring_value_bytes(field_bits: int, prime: int | None = None) -> int:
    """One element of the emulator's ring: an int64, or two (``core/wide.py``) past 64 bits and in F_p."""
    return 8 if prime is None and field_bits <= 64 else 16


def command_estimate(command: str, shape: ModelShape, seq_len: int, windows: int = 0, value_bytes: int = 8,
                     fake_weights: bool = False, recipes_error: bool = False) -> Estimate:
    """emulate, plan or compare (the module docstring's model)."""
    emulates = command in ("emulate", "compare")
    terms = {"runtime": RUNTIME_BYTES}
    if fake_weights:
        terms["generated weights"] = FAKE_WEIGHT_BYTES * shape.largest_param
    else:
        terms["float model"] = 4 * shape.params
        terms["program weights"] = 8 * shape.params
        if emulates:
            terms["ring weights"] = 8 * shape.params
    terms["activations"] = LIVE_VALUES * seq_len * shape.widest(seq_len) * value_bytes
    if emulates:
        terms["results"] = windows * seq_len * shape.output_width * 8 * (3 if recipes_error else 2)
    return Estimate(terms)


def pi_estimates(shape: ModelShape, seq_len: int, parties: int, dealer: bool, vanilla: bool = True,
                 window: int = WINDOW_BYTES) -> dict[str, Estimate]:
    """run_pi: role -> the estimate of its process (the module docstring's model)."""
    material = MATERIAL * seq_len * shape.layers * (4 * shape.hidden + 2 * shape.mlp + shape.heads * seq_len) * 8
    base = {"runtime": RUNTIME_BYTES + CRYPTEN_BYTES}
    shares = {"material": min(material + 8 * shape.params, window),
              "halves' message": 5 * 8 * min(shape.params, max(HALVES_PER_MESSAGE, shape.largest_param))}
    out = {"owner": Estimate({**base, "float model": 4 * shape.params, "program weights": 8 * shape.params,
                              "corrections' message": 2 * min(material, FETCH_BYTES), **shares,
                              "ring weights": OWNER_WEIGHT_BYTES * shape.params})}
    for role in ("client", "helper")[:parties - 1]:
        out[role] = Estimate({**base, **({"architecture": 4 * shape.params} if vanilla else {}), **shares})
    dealing = {"runtime": DEALER_BYTES, "material": 2 * min(material * parties, FETCH_BYTES),
               "largest request": 8 * shape.largest_param + 2 * 8 * parties * seq_len * shape.widest(seq_len)}
    if dealer:
        out["dealer"] = Estimate(dealing)
    else:  # --dealer owner-insecure: the owner deals too
        out["owner"].terms["dealing"] = dealing["material"] + dealing["largest request"]
    return out


def available_bytes() -> tuple[float | None, str]:
    """(bytes this process may still take, where that comes from): MemAvailable of /proc/meminfo, or
    less where a cgroup limit leaves less; (None, "unknown") where neither is known."""
    free = meminfo_available()
    limit = cgroup_headroom()
    if limit is not None and (free is None or limit < free):
        return limit, "left under the cgroup's limit"
    return free, "MemAvailable" if free is not None else "unknown"


def meminfo_available() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


CGROUP_FILES = (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes"))  # v2, v1
UNLIMITED = 2**62  # cgroup v1 writes "no limit" as a page-rounded 2^63 - 1


def cgroup_headroom(folders: list[Path] | None = None) -> float | None:
    """The limit less the usage of this process's memory cgroup (v2 or v1; ``folders``: where to look),
    None where unlimited or unknown."""
    for folder in _cgroup_folders() if folders is None else folders:
        for limit_name, usage_name in CGROUP_FILES:
            try:
                limit, usage = ((folder / f).read_text().strip() for f in (limit_name, usage_name))
            except OSError:
                continue
            return None if limit == "max" or int(limit) >= UNLIMITED else int(limit) - int(usage)
    return None


def _cgroup_folders() -> list[Path]:
    """From /proc/self/cgroup: v2's "0::/path", v1's "N:memory:/path" (in a container, the mount is the path)."""
    root, out = Path("/sys/fs/cgroup"), []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for hierarchy, controllers, path in (line.split(":", 2) for line in lines if line.count(":") >= 2):
        if hierarchy == "0" and not controllers:
            out.append(root / path.lstrip("/"))
        elif "memory" in controllers.split(","):
            out += [root / "memory" / path.lstrip("/"), root / "memory"]
    return out


def check_fits(estimate: float, what: str, ways_out: str, mode: str = "on", override: str = "--memory-check off") -> dict:
    """Refuse (one line) where ``estimate`` bytes exceed what is available; the facts, for the JSON."""
    free, source = available_bytes()
    if mode == "on" and free is not None and estimate > free:
        raise UserError(f"{what} needs about {estimate / GB:.1f} GB (estimated from its config, before building "
                        f"anything), more than the {free / GB:.1f} GB available ({source}): {ways_out}"
                        + (f", or pass {override} to try anyway" if override else ""))
    return {"available_bytes": None if free is None else int(free), "available_from": source, "check": mode}


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (ru_maxrss: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
