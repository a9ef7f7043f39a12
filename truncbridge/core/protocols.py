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
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.json") if p.stem != "networks")


@cache
def load_protocol(name: str | None) -> Protocol:
    name = name or DEFAULT_PROTOCOL
    path = PROTOCOL_DIR / f"{name}.json"
    if name == "networks" or not path.is_file():
        raise UserError(f"unknown protocol {name!r}: choose one of {', '.join(protocol_names())}")
    data = json.loads(path.read_text())
    if data["truncation"]["failure"] not in FAILURE_MODELS:
        raise UserError(f"protocol {name}: unknown failure model {data['truncation']['failure']!r}")
    return Protocol(name, data)


@cache
def load_network(name: str) -> dict:
    networks = json.loads((PROTOCOL_DIR / "networks.json").read_text())
    if name not in networks:
        raise UserError(f"unknown network {name!r}: choose one of {', '.join(networks)}")
    return networks[name]
