"""Plan files: one self-describing JSON document per plan.

It holds the schema version, the model's identity (name, class, hash of its weights, sequence
length), the ``PlanConfig`` (field, fraction bits, policy, protocol, headroom, how bounds were
obtained), every node with its op parameters (``attrs``), its ``facts``, its scale and bound (and
the bound's source), every truncation with its shift, and the public constants the plan uses.
Schema v1 files (facts among the attrs, the config spread over the top level) still load.
Weights are not in the file: they are the model owner's secret; running a plan loads them from the
model and checks the hash.

The owner gives the other parties (client, helpers) a *redacted* plan (``plan_to_json(plan,
redacted=True)`` or ``redact_plan_json``): it keeps what they need to compute and drops what is
a fact about the owner's weights or calibration: float bounds (a weight node's bound is max|W|),
bound sources, declared bounds and row norms, recipe parameters, the weights hash and the solver
block. Its leak budget — all a non-owner learns (docs/threat-model.md, "What the plan reveals"): the config, the op
structure and shapes (the architecture, with its public hyperparameters and buffers: rotary
tables, masks, a norm's epsilon), every node's scale, the truncation sites and shifts, each node's
integer bit width (derived from weight norms, and with calibrated bounds from the owner's
calibration text; its stand-in bound is the power of two of those bits), and each recipe's input
range rounded outward to the public grid {0, +-2^(k/4)} (``frontend.recipe_base.public_range``).
The constants the plan reads (``consts``, base64) and its node attrs are functions of these
alone: recipes fit coefficients, centres, Newton starts and shifts on the rounded range, never on
an exact weight-derived or calibrated one (``tests/test_redaction.py`` decodes every constant and
checks it).
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .errors import UserError
from .ir import Facts, Node, Program
from .ops import OPS, check_node
from .types import Bound, Plan, PlanConfig, needed_bits

SCHEMA = "truncbridge-plan"
SCHEMA_VERSION = 2  # v2: a "config" block (PlanConfig) and typed node "facts"; v1 files still load

# node attrs a redacted plan keeps: the op parameters the parties compute with (``OpSpec.params``;
# fail closed: any other attr stops redaction)
PUBLIC_ATTRS = frozenset(p for op in OPS.values() for p in op.params)
# node facts a redacted plan keeps: structure, not numbers from the weights or the calibration
PUBLIC_FACTS = frozenset({"row_stochastic"})
# what a redacted plan says about the model: never the weights hash
PUBLIC_MODEL_KEYS = ("name", "class", "seq_len", "batch", "vocab")
# v1 kept the facts among the attrs
V1_FACTS = {"declared_bound": "bound", "declared_source": "bound_source", "declared_row_l2": "row_l2",
            "row_stochastic": "row_stochastic", "recipe_params": "recipe_params"}


def model_hash(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes and float32 bytes (tied weights counted once)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to(torch.float32).contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _encode_tensor(t: torch.Tensor) -> dict:
    arr = t.detach().cpu().numpy()
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode()}


def _decode_tensor(d: dict) -> torch.Tensor:
    arr = np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"])
    return torch.from_numpy(arr.copy())


def plan_to_json(plan: Plan, redacted: bool = False) -> dict:
    """The plan's JSON document; ``redacted``: the version for parties other than the model owner."""
    prog = plan.program
    used_consts = sorted({n.attrs["const"] for n in prog.nodes if "const" in n.attrs} |
                         {ref[1:] for n in prog.nodes if n.op == "move" for ref in _refs(n.attrs["args"])})
    nodes = [{"id": n.id, "op": n.op, "inputs": list(n.inputs), "shape": list(n.shape), "scale": n.scale,
              "bound": plan.bounds[n.id].value, "bound_source": plan.bounds[n.id].source,
              "bound_bits": plan.bound_bits(n), "attrs": n.attrs, "facts": n.facts.to_json(),
              "origin": n.origin, "recipe": n.recipe} for n in prog.nodes]
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_by": f"truncbridge {__version__}",
        "model": plan.model,
        "config": asdict(plan.config),
        "budget_bits": plan.budget_bits,
        "solver": plan.solver,
        "counts": plan.counts(),
        "truncations": [{"node": n.id, "input": n.inputs[0], "shift": n.attrs["shift"], "elements": n.numel,
                         "rounding": n.attrs.get("rounding", "nearest"), "origin": n.origin, "recipe": n.recipe}
                        for n in prog.nodes if n.op == "trunc"],
        "inputs": prog.inputs,
        "outputs": prog.outputs,
        "weights": sorted({n.attrs["name"] for n in prog.nodes if n.op == "weight"}),
        "consts": {k: _encode_tensor(prog.consts[k]) for k in used_consts},
        "nodes": nodes,
    }
    return redact_plan_json(doc) if redacted or plan.redacted else doc  # once redacted, always


def redact_plan_json(doc: dict) -> dict:
    """A copy of a plan document without the owner's secrets (see the module docstring).
    Each float bound becomes 2^(m-1), m = bound_bits - scale - 1 (the rounding floor already
    applied), so ``Plan.bound_bits`` on the loaded plan gives the same bits and nothing finer."""
    doc = upgrade(doc)
    out = {k: v for k, v in doc.items() if k not in ("solver", "model", "nodes")}
    out["model"] = {k: doc["model"][k] for k in PUBLIC_MODEL_KEYS if k in doc.get("model", {})}
    out["redacted"] = True
    out["nodes"] = [_redact_node(d) for d in doc["nodes"]]
    return json.loads(json.dumps(out))  # a deep copy: the caller's document is left as it was


def _redact_node(d: dict) -> dict:
    unknown = set(d["attrs"]) - PUBLIC_ATTRS
    if unknown:  # fail closed: a new attr must be classed public before it is sent
        raise UserError(f"node {d['id']}: attrs {sorted(unknown)} are not classified for redaction")
    bits = int(d["bound_bits"]) - int(d["scale"]) - 1
    return {**d, "bound": 2.0 ** (bits - 1), "bound_source": "redacted",
            "facts": {k: v for k, v in d.get("facts", {}).items() if k in PUBLIC_FACTS}}


def upgrade(doc: dict) -> dict:
    """A v1 document in v2's form (a copy; v2 documents are returned as they are)."""
    if not isinstance(doc, dict) or doc.get("schema_version") != 1:
        return doc
    doc = json.loads(json.dumps(doc))
    bounds = doc.get("bounds") or {}
    doc["config"] = {"field_bits": doc["field_bits"], "frac_bits": doc["frac_bits"], "policy": doc["policy"],
                     "protocol": doc["protocol"], "headroom_bits": doc["headroom_bits"],
                     "bounds": bounds.get("mode", "static"), "margin_bits": bounds.get("margin_bits")}
    for d in doc["nodes"]:
        d["facts"] = {V1_FACTS[k]: d["attrs"].pop(k) for k in list(d["attrs"]) if k in V1_FACTS}
    doc["schema_version"] = SCHEMA_VERSION
    return doc


def _refs(template) -> list[str]:
    if isinstance(template, str):
        return [template] if template.startswith("@") else []
    if isinstance(template, (list, tuple)):
        return [r for t in template for r in _refs(t)]
    return []


def save_plan(plan: Plan, path: str | Path, redacted: bool = False) -> None:
    Path(path).write_text(json.dumps(plan_to_json(plan, redacted)) + "\n")


def load_plan(path: str | Path) -> Plan:
    """Read a plan file; weights are attached later by ``attach_weights``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"plan file not found: {p}")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"corrupt plan file {p}: not JSON ({exc})") from None
    return plan_from_json(doc, str(p))


def plan_from_json(doc: dict, where: str = "plan") -> Plan:
    """A plan from its JSON document (``plan_to_json``; schema v1 or v2); ``where`` names it in errors."""
    p = where
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise UserError(f"{p} is not a truncbridge plan (schema {doc.get('schema') if isinstance(doc, dict) else None!r})")
    if doc.get("schema_version") not in (1, SCHEMA_VERSION):
        raise UserError(f"plan {p} has schema version {doc.get('schema_version')}, "
                        f"this truncbridge reads 1 and {SCHEMA_VERSION}")
    try:
        doc = upgrade(doc)
        config = PlanConfig(**{"precision_tolerance_bits": None, **doc["config"]})  # made before the floor: none
        redacted = bool(doc.get("redacted", False))  # then bound_bits is the authority, bound its stand-in
        prog, bounds = _program_from_json(doc, config.frac_bits, redacted)
        return Plan(prog, config, bounds, doc.get("solver", {}), model=doc["model"], weights=doc["weights"],
                    redacted=redacted)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UserError(f"corrupt plan file {p}: {type(exc).__name__}: {exc}") from None


def _program_from_json(doc: dict, frac_bits: int, redacted: bool) -> tuple[Program, dict[int, Bound]]:
    prog = Program()
    prog.consts = {k: _decode_tensor(v) for k, v in doc["consts"].items()}
    bounds = {}
    for d in doc["nodes"]:
        node = Node(d["id"], d["op"], tuple(d["inputs"]), tuple(d["shape"]), d["attrs"], d["origin"], d["recipe"],
                    d["scale"], Facts(**d.get("facts", {})))
        if node.id != len(prog.nodes) or any(i >= node.id for i in node.inputs):
            raise ValueError(f"node {node.id} is out of order")
        check_node(node)
        prog.nodes.append(node)
        bounds[node.id] = Bound(float(d["bound"]), d["bound_source"])
        if redacted and needed_bits(bounds[node.id], node.scale, frac_bits) != d["bound_bits"]:
            raise ValueError(f"node {node.id}: its bound does not give its bound_bits {d['bound_bits']}")
    prog.inputs = {k: int(v) for k, v in doc["inputs"].items()}
    prog.outputs = [int(o) for o in doc["outputs"]]
    return prog, bounds


def attach_weights(plan: Plan, model: torch.nn.Module, model_name: str) -> None:
    """Give the plan its weights from ``model``, which must be the model the plan was made for."""
    if plan.redacted:
        raise UserError("this plan is redacted (for parties other than the model owner): it has no weights hash "
                        "to check a model against; the owner runs the full plan")
    want = plan.model.get("hash")
    have = model_hash(model)
    if want != have:
        made_for = plan.model.get("name", "?")
        raise UserError(f"this plan was made for model {made_for} (weights {str(want)[:12]}), "
                        f"not {model_name} (weights {have[:12]})")
    state = model.state_dict()
    missing = [w for w in plan.weights if w not in state]
    if missing:
        raise UserError(f"model {model_name} lacks the plan's weights: {', '.join(missing[:3])}")
    plan.program.weights = {w: state[w].detach() for w in plan.weights}  # float64 at use (ops' real)
