"""An on-disk cache of the owner's plans: converting and placing the same model again costs seconds
(capture, calibration, a MILP) for a plan already made.

A plan is stored as a plan file (``core.planfile``), under a key that hashes everything the plan is
a function of: the model (its name and a hash of its weights), the sequence length, the conversion's
settings (fraction bits, relu, calibration text), every ``PlanConfig`` field, the placement's hints,
the torch and transformers versions, and the bytes of truncbridge's own source and data files (a
code change never serves a stale plan). Weights are not in the file: they are re-attached on load
(``attach_weights``, which checks the hash), as ``emulate --plan`` does.

Location: ``$TRUNCBRIDGE_CACHE``, default ``~/.cache/truncbridge/plans``; ``--no-plan-cache`` bypasses it.
Models with generated (``--fake-weights``) weights are never cached: their plans hold no whole model.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from .core.errors import UserError
from .core.planfile import SCHEMA_VERSION, attach_weights, model_hash, plan_from_json, plan_to_json
from .core.types import Plan, PlanConfig
from .frontend.models import LoadedModel
from .pipeline import Converted, build_plan, convert

PACKAGE = Path(__file__).resolve().parent
SOURCE_SUFFIXES = (".py", ".json", ".txt")  # code, protocol profiles, bundled texts (weights: hashed per model)


def cache_root() -> Path:
    return Path(os.environ.get("TRUNCBRIDGE_CACHE") or Path.home() / ".cache" / "truncbridge" / "plans")


@functools.cache
def source_digest(package: Path = PACKAGE) -> str:
    """sha256 over the relative paths and bytes of the package's source and data files."""
    h = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def plan_key(model_name: str, weights_hash: str, seq_len: int, conversion: dict, config: PlanConfig,
             hints: tuple = ()) -> str:
    """The cache key of the plan made under ``config`` for this model and conversion."""
    fields = {"model": model_name, "weights": weights_hash, "seq_len": seq_len, "conversion": conversion,
              "config": asdict(config), "hints": [sorted(int(s) for s in h) for h in hints],
              "source": source_digest(), "schema": SCHEMA_VERSION,
              "torch": torch.__version__, "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=repr).encode()).hexdigest()


@dataclass
class PlanMaker:
    """Plans for one loaded model at one sequence length: from the cache when it holds them, else
    built (converting once, at the first miss) and stored. ``hits``: the keys served from the cache."""

    loaded: LoadedModel
    seq_len: int
    frac_bits: int
    relu: str = "comparison"
    calibration_text: str | None = None
    use_cache: bool = True
    root: Path = field(default_factory=cache_root)
    converted: Converted | None = None
    hits: list[str] = field(default_factory=list)
    seconds: float = 0.0  # spent in the cache: hashing, reading, writing
    say: object = None  # progress lines (converting), if given
    _weights_hash: str = ""

    @property
    def caching(self) -> bool:
        return self.use_cache and self.loaded.generated is None

    def convert(self) -> Converted:
        if self.converted is None:
            if self.say:
                self.say(f"converting {self.loaded.name} (seq {self.seq_len})")
            self.converted = convert(self.loaded, self.seq_len, self.frac_bits, self.relu, self.calibration_text)
            self.converted.weights_hash = self._weights_hash  # already hashed for the key (empty: hashed on demand)
        return self.converted

    def key(self, config: PlanConfig, hints: tuple = ()) -> str:
        if not self._weights_hash:
            self._weights_hash = model_hash(self.loaded.model)
        conversion = {"frac_bits": self.frac_bits, "relu": self.relu, "calibration_text": self.calibration_text}
        return plan_key(self.loaded.name, self._weights_hash, self.seq_len, conversion, config, hints)

    def plan(self, config: PlanConfig, hints: tuple = (), progress=None, announce=None) -> Plan:
        """The plan under ``config``; ``announce()`` is called before one is built (not on a hit)."""
        plan = self.cached(config, hints)
        if plan is None:
            plan = self._build(config, hints, progress, announce)
            self.store(config, plan, hints)
        return plan

    def cached(self, config: PlanConfig, hints: tuple = ()) -> Plan | None:
        """The stored plan under ``config`` (its weights attached), or None."""
        if not self.caching:
            return None
        t = time.perf_counter()
        key = self.key(config, hints)
        plan = self._read(self.root / f"{key}.json")
        self.seconds += time.perf_counter() - t
        if plan is not None:
            self.hits.append(key)
        return plan

    def store(self, config: PlanConfig, plan: Plan, hints: tuple = ()) -> None:
        if self.caching:
            t = time.perf_counter()
            self._write(self.root / f"{self.key(config, hints)}.json", plan)
            self.seconds += time.perf_counter() - t

    def _build(self, config: PlanConfig, hints: tuple, progress, announce) -> Plan:
        converted = self.convert()
        if announce:
            announce()
        return build_plan(converted, config, hints, progress=progress)

    def _read(self, path: Path) -> Plan | None:
        """The stored plan with its weights attached; None if absent or unreadable (then rebuilt)."""
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            plan = plan_from_json(doc, str(path))
            plan.sites = [int(s) for s in doc["sites"]]
            attach_weights(plan, self.loaded.model, self.loaded.name)
        except (UserError, ValueError, KeyError, TypeError):
            return None
        return plan

    def _write(self, path: Path, plan: Plan) -> None:
        """A plan file plus the plan's sites (the next policy's hints; a plan file does not keep them),
        written to a private name, then renamed: a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_text(json.dumps({**plan_to_json(plan), "sites": [int(s) for s in plan.sites]}) + "\n")
        os.replace(partial, path)


# -- the dealer's request sequence of a plan, as run_pi runs it ------------------------------------
# run_pi records, in an untimed pass, the sequence of correlated-randomness requests a plan makes (kinds
# and sizes: what the dealer sees), to deal it before the timed pass. It is a function of the redacted
# plan, the parties and the runner's settings, so a second run of the same command reads it from here.
TRACES = "traces"


def trace_key(redacted_doc: dict, parties: int, runner: dict) -> str:
    """The key of the request sequence of the plan ``redacted_doc`` (``plan_to_json(plan, redacted=True)``,
    what every party holds) run by ``parties`` parties with the runner's settings (truncation, fuse, batch)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        crypten = version("crypten")
    except PackageNotFoundError:
        crypten = None
    fields = {"plan": hashlib.sha256(json.dumps(redacted_doc, sort_keys=True, default=repr).encode()).hexdigest(),
              "parties": parties, "runner": runner, "source": source_digest(), "torch": torch.__version__,
              "crypten": crypten}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _tuples(x):
    """JSON's lists back to the tuples a request is made of (``material.request_key``)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def read_trace(key: str, root: Path | None = None) -> list | None:
    """The stored request sequence, or None if absent or unreadable (then recorded again)."""
    path = (root or cache_root()) / TRACES / f"{key}.json"
    try:
        return [_tuples(r) for r in json.loads(path.read_text())["requests"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_trace(key: str, trace: list, root: Path | None = None) -> None:
    """Store a recorded request sequence (written to a private name, then renamed)."""
    path = (root or cache_root()) / TRACES / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    partial.write_text(json.dumps({"requests": trace}) + "\n")
    os.replace(partial, path)
