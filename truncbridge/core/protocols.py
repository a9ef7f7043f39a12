"""Protocol profiles (``protocols/*.json``) and the cost model that turns plan counts into
rounds, bytes, latency and expected truncation failures."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import UserError

PROTOCOL_DIR = Path(__file__).resolve().parents[2] / "protocols"
DEFAULT_PROTOCOL = "faithful-2pc"
COMPUTE_FILE = PROTOCOL_DIR / "compute.json"  # the local-compute term's coefficients (analysis/compute.py)
NOT_PROTOCOLS = ("networks", "compute")  # the other data files of protocols/
COMPUTE_KINDS = ("source", "local", "public", "relabel", "shift", "output", "matmul", "weight_matmul", "mul", "carried",
                 "truncate", "compare", "wave")  # the local-compute term's kinds (analysis/compute.py says what each counts)
FAILURE_MODELS = {  # probability that one truncation of a value below 2^bits (sign included) fails
    "none": lambda bits, l: 0.0,
    "abs_over_ring": lambda bits, l: min(1.0, 2.0 ** (bits - 1 - l)),  # |x| / 2^l
    "twice_abs_over_ring": lambda bits, l: min(1.0, 2.0 ** (bits - l)),  # 2^(l_x + 1 - l)
}


def _formula(text: str | int | float, l: int) -> float:
    """Evaluate a cost formula in the ring bits ``l`` (profiles are our own data files)."""
    return float(eval(str(text), {"__builtins__": {}}, {"l": l, "log2": math.log2, "ceil": math.ceil}))


@dataclass(frozen=True)
class Protocol:
    name: str
    data: dict

    @property
    def parties(self) -> int:
        return self.data["parties"]

    @property
    def headroom_bits(self) -> int:
        return self.data["truncation"]["headroom_bits"]

    @property
    def truncation_kind(self) -> str:
        return self.data["truncation"]["kind"]

    @property
    def fuses_products(self) -> bool:
        """Its truncation's opening can carry the next elementwise product (``core.fusion``)."""
        return bool(self.data["truncation"].get("fused_products", False))

    def check_ring(self, field_bits: int, prime: int | None = None) -> None:
        ring = self.data.get("ring_bits")
        if ring is not None and (ring != field_bits or prime is not None):
            what = "a prime field" if prime is not None else f"a {field_bits}-bit field"
            raise UserError(f"protocol {self.name} works in Z_2^{ring} only, not {what}")

    def rounds(self, op: str, l: int) -> float:
        return _formula(self.data[op]["rounds"], l)

    def bits(self, op: str, l: int) -> float:
        key = "bits_per_opened_element" if op == "mul" else "bits_per_element"
        return _formula(self.data[op][key], l)

    def failure_probability(self, bits: int, l: int) -> float:
        return FAILURE_MODELS[self.data["truncation"]["failure"]](bits, l)


def protocol_names() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.json") if p.stem not in NOT_PROTOCOLS)


@cache
def load_protocol(name: str | None) -> Protocol:
    name = name or DEFAULT_PROTOCOL
    path = PROTOCOL_DIR / f"{name}.json"
    if name in NOT_PROTOCOLS or not path.is_file():
        raise UserError(f"unknown protocol {name!r}: choose one of {', '.join(protocol_names())}")
    data = json.loads(path.read_text())
    if data["truncation"]["failure"] not in FAILURE_MODELS:
        raise UserError(f"protocol {name}: unknown failure model {data['truncation']['failure']!r}")
    return Protocol(name, data)


def network_names() -> list[str]:
    return list(json.loads((PROTOCOL_DIR / "networks.json").read_text()))


@cache
def load_network(spec: str) -> dict:
    """A named network of ``networks.json`` (lan, mid, wan) or ``rtt=MS,bw=MBIT``: round-trip time in
    milliseconds and bandwidth in Mbit/s. Returns ``{"name", "rtt_ms", "bandwidth_gbps"}``."""
    networks = json.loads((PROTOCOL_DIR / "networks.json").read_text())
    if spec in networks:
        return {"name": spec, **networks[spec]}
    fields = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    try:
        rtt, bw = float(fields.pop("rtt")), float(fields.pop("bw"))
        ok = not fields and spec.count("=") == 2 and rtt >= 0 and bw > 0
    except (KeyError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"unknown network {spec!r}: choose {', '.join(networks)} or rtt=MS,bw=MBIT "
                        "(round trip in ms >= 0, bandwidth in Mbit/s > 0)")
    return {"name": spec, "rtt_ms": rtt, "bandwidth_gbps": bw / 1000}


def network_seconds(network: dict, rounds: float, nbytes: float) -> float:
    """What ``rounds`` sequential round trips and ``nbytes`` through one link cost on ``network``."""
    return rounds * network["rtt_ms"] / 1e3 + nbytes * 8 / (network["bandwidth_gbps"] * 1e9)


@cache
def load_compute(path: str | Path | None = None) -> dict:
    """The local-compute coefficients measured on this machine (``protocols/compute.json``, written by
    ``launch/calibrate_compute.py``): refused in one line if missing, unreadable, or not every kind's
    ``per_node_s`` and ``per_element_s`` a finite number >= 0 (``COMPUTE_KINDS``)."""
    path = Path(path or COMPUTE_FILE)
    try:
        data = json.loads(path.read_text())
        numbers = [data["dispatch_s"], *(data["kinds"][k][c] for k in COMPUTE_KINDS for c in ("per_node_s", "per_element_s"))]
        factor = data["parties_factor"]["value"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: no local-compute calibration ({type(exc).__name__}: {exc}); "
                        "make one with python launch/calibrate_compute.py") from exc
    if not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in [*numbers, factor]) or not factor:
        raise UserError(f"{path}: every coefficient must be a finite number >= 0 (parties_factor > 0); recalibrate with "
                        "python launch/calibrate_compute.py")
    return data
