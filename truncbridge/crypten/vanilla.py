"""Vanilla CrypTen: the captured model run with CrypTen's own MPCTensor functions, as a baseline.

This is what a CrypTen user gets without truncbridge: default configuration, 16 fraction bits,
CrypTen's automatic truncation after every multiplication, and CrypTen's approximations (``exp``,
``reciprocal``, ``inv_sqrt``, ``sigmoid``, ``tanh``, ``erf``, ``softmax`` with its row max).
Compare its wall time, rounds, bytes and accuracy with ``PlanRunner`` on the same model.

It walks the captured ATen graph with the walk lowering uses (``frontend.walk``): nodes with only
public inputs are folded in plaintext; nodes computed from weights alone (``aten.t`` of a weight, ...) are the model owner's
plaintext and are shared (``src=0``) where they meet secret data; the client's token ids enter as a
secret one-hot matrix shared by ``client``, and the embedding is ``one_hot @ table``. Data movement
acts on the shares locally. Weights are shared inside ``run`` (no communication), as PlanRunner does.

Known deviations from the float model (all CrypTen's, kept on purpose except where noted):
- Additive -inf attention masks: CrypTen's exp is garbage below about -256, so entries <=
  ``MASK_VALUE`` of a public tensor added to secret data are replaced by the finite ``MASK_FILL``
  (the usual user workaround; see its comment).
- GELU: CrypTen has none; its tanh form (GPT-2's) is written out on CrypTen's tanh, as Hugging Face writes
  it; the erf form is x * sigmoid(1.702 x) (the sigmoid approximation of GELU).
- ``pow`` with odd exponents >= 5 is wrong in CrypTen (it returns x^(3(p-1)/2)): we use
  square-and-multiply with CrypTen's products instead. CrypTen's ``erf`` suffers from the same bug
  and is used as is.
- Outputs are decoded exactly (``open_outputs``), not by CrypTen's ``get_plain_text``, whose
  decoder is off by exactly -1 for some negative values (about |x| in 2^16 of them).
- ``inv_sqrt`` is accurate only for inputs in about [0.1, 64], ``reciprocal`` for [~0.003, ~50];
  no rescaling is done unless asked (``rsqrt_scale``: the hand-made user workaround; truncbridge's
  range-aware recipes pick such scales from the bounds).

Call inside an initialised CrypTen process (``truncbridge.crypten.import_crypten()``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..backends.crypten.compat import import_crypten
from ..backends.crypten.roles import OWNER
from ..core.errors import UserError
from ..frontend.calibrate import MASK_VALUE
from ..frontend.capture import Captured
from ..frontend.recipes import power
from ..frontend.walk import GraphWalk, TokenIds, aten_name, first_unhandled, flatten_args, where

aten = torch.ops.aten
# Masked entries become score + MASK_FILL. After softmax subtracts the row max, a masked entry sits in
# [MASK_FILL - 2S, MASK_FILL + 2S] for scores in [-S, S]: it must stay above -256, where CrypTen's exp
# (1 + x/256)^256 breaks down, and below -12, where exp < 2^-17 rounds to 0 at 16 fraction bits.
# -128 satisfies both for S <= 58; the shipped models' live scores lie within [-19, 21].
MASK_FILL = -128.0


@dataclass
class Owned:
    """A plaintext value computed from weights only: known to the model owner (rank 0)."""
    value: torch.Tensor


def _value_rule(fn):
    """A rule that needs only the op's arguments."""
    return lambda walk, node, *args, **kwargs: fn(*args, **kwargs)


def _method_rule(name: str):
    return lambda walk, node, *args, **kwargs: getattr(walk, name)(*args, **kwargs)


def _rules(rsqrt) -> dict:
    """ATen op -> rule, for ops on secret data (``rsqrt``: the runner's inv_sqrt, rescaled or not)."""
    return {
        **{t: _method_rule(m) for t, m in (
            (aten.embedding.default, "embedding"), (aten.add.Tensor, "add"), (aten.sub.Tensor, "sub"),
            (aten.mul.Tensor, "mul"), (aten.div.Tensor, "div"), (aten.pow.Tensor_Scalar, "pow"),
            (aten.mm.default, "matmul"), (aten.bmm.default, "matmul"), (aten.matmul.default, "matmul"),
            (aten.addmm.default, "addmm"), (aten._to_copy.default, "to_copy"),
            (aten.native_layer_norm.default, "layer_norm"), (aten.split_with_sizes.default, "split"),
            (aten.split.Tensor, "split"), (aten.unbind.int, "unbind"))},
        **{t: _value_rule(f) for t, f in {
            aten.neg.default: lambda x: -x, aten._softmax.default: lambda x, dim, *_: x.softmax(dim),
            aten.mean.dim: lambda x, dims, keepdim=False, **_: x.mean(dims, keepdim=keepdim),
            aten.sum.dim_IntList: lambda x, dims, keepdim=False, **_: x.sum(dims, keepdim=keepdim),
            aten.rsqrt.default: rsqrt, aten.sqrt.default: lambda x: x.sqrt(),
            aten.reciprocal.default: lambda x: x.reciprocal(), aten.exp.default: lambda x: x.exp(),
            aten.sigmoid.default: lambda x: x.sigmoid(), aten.silu.default: lambda x: x * x.sigmoid(),
            aten.tanh.default: lambda x: x.tanh(), aten.erf.default: lambda x: x.erf(), aten.relu.default: lambda x: x.relu(),
            aten.gelu.default: _gelu,
        }.items()},
    }


def _gelu(x, approximate: str = "none"):  # the tanh form as Hugging Face writes it out (GPT-2's gelu_new)
    if approximate == "tanh":
        return x * 0.5 + x * 0.5 * ((x + x * x * x * 0.044715) * math.sqrt(2.0 / math.pi)).tanh()
    return x * (x * 1.702).sigmoid()


def check_supported(captured: Captured) -> None:
    """Refuse, in one line and before any party computes, a graph with an op on secret data that vanilla
    CrypTen has no rule for (else found only when vanilla's pass reaches it, after every other policy's)."""
    node = first_unhandled(captured, _rules(None))
    if node is not None:
        raise UserError(f"{VanillaRunner.no_rule} ATen op {aten_name(node.target)} on secret data (node {node.name}"
                        f"{where(node)}): leave vanilla out of --policy")


class VanillaRunner(GraphWalk):
    no_rule = "vanilla CrypTen: no rule for"

    def __init__(self, captured: Captured, client: int = 1, rsqrt_scale: int = 1):
        """``rsqrt_scale`` s > 1 applies the usual user workaround for ``inv_sqrt``'s narrow range:
        rsqrt(x) = s * inv_sqrt(s^2 x) with a public integer s chosen by hand (1: CrypTen as is)."""
        super().__init__(captured)
        self.crypten = import_crypten()
        from crypten.mpc import MPCTensor

        self.MPC, self.client = MPCTensor, client
        self.secret_types = (MPCTensor,)
        self.rank = self.crypten.communicator.get().get_rank()
        # other ranks do not hold the weights: zeros of the right shape make that explicit
        self.weights = captured.weights if self.rank == OWNER else {k: torch.zeros_like(v) for k, v in captured.weights.items()}
        self.rsqrt_scale = rsqrt_scale
        self.rules = _rules(self.rsqrt)

    def rsqrt(self, x):
        """CrypTen's inv_sqrt, with the hand-made rescaling ``rsqrt_scale`` s: s · inv_sqrt(s² x)."""
        s = self.rsqrt_scale
        return x.inv_sqrt() if s == 1 else (x * (s * s)).inv_sqrt() * s

    def run(self, input_ids: torch.Tensor | None, state: dict | None = None) -> list:
        """Evaluate the graph; ``input_ids`` only on the client's rank; ``state``: the KV cache's MPCTensors by
        name, where the graph reads one (``capture_cached``). Returns the output MPCTensors."""
        self.input_ids, self.state = input_ids, state or {}
        return self.walk()

    def state_input(self, node):
        return self.state[self.captured.state_inputs[node.name]]

    # -- the walk's hooks -----------------------------------------------------------------------
    def placeholder(self, node):
        name = node.name
        return Owned(self.weights[name]) if name in self.weights else self.captured.publics[name]

    def is_output(self, v) -> bool:
        return isinstance(v, (self.MPC, Owned))

    def output(self, v):
        return self.secret(v)

    def fold(self, target, args, kwargs):
        """Public or owner-only inputs: plaintext; the result is the owner's if any input was."""
        owned = any(isinstance(v, Owned) for v in flatten_args(list(args) + list(kwargs.values())))
        out = target(*_unwrap(args), **_unwrap(kwargs))
        return _map(lambda t: Owned(t) if owned and isinstance(t, torch.Tensor) else t, out)

    def share(self, args, kwargs):
        return _map(self.secret, args), _map(self.secret, kwargs)  # weights meet secrets

    def open_outputs(self, outs: list, dst: int = 1) -> list[torch.Tensor] | None:
        """Reveal to ``dst`` only: float64 tensors there, None elsewhere. Decoded here, not by
        ``get_plain_text``: CrypTen's decoder is off by -1 for negative values within ~|x| LSBs
        above an integer (e.g. -63.99998 -> -64.99998), and it returns float32."""
        opened = [o.reveal(dst=dst) for o in outs]
        if self.rank != dst:
            return None
        return [v.to(torch.float64) / o._tensor.encoder.scale for v, o in zip(opened, outs)]

    def secret(self, v):
        """Share an owner value (src=0); MPCTensors and public values pass unchanged."""
        return self.crypten.cryptensor(v.value, src=OWNER) if isinstance(v, Owned) else v

    def _wrap(self, share: torch.Tensor, like):
        out = like.shallow_copy()
        out._tensor = like._tensor.shallow_copy()
        out._tensor.share = share
        return out

    # -- rules ----------------------------------------------------------------------------------
    def embedding(self, table, indices, *rest, **kw):
        if not isinstance(indices, TokenIds) or not isinstance(table, self.MPC):
            raise UserError("vanilla CrypTen: aten.embedding is supported only as (secret table, client token ids)")
        shape = (self.captured.batch, self.captured.seq_len, table.size(0))
        if self.rank == self.client:
            onehot = torch.nn.functional.one_hot(self.input_ids.view(shape[:2]), shape[2]).float()
        else:  # a tensor of the right shape, ignored by the sharing: no size broadcast needed
            onehot = torch.zeros(shape)
        out = self.crypten.cryptensor(onehot, src=self.client).matmul(table)
        return out.view(*indices.shape, table.size(1))  # the ids may have been reshaped first

    def add(self, a, b, alpha=1):
        if alpha != 1:
            b = b * alpha
        if not isinstance(a, self.MPC):
            a, b = b, a
        if isinstance(b, torch.Tensor) and b.is_floating_point() and bool((b <= MASK_VALUE).any()):
            b = b.masked_fill(b <= MASK_VALUE, MASK_FILL)  # see MASK_FILL
        return a + b

    def sub(self, a, b, alpha=1):
        return self.add(a, -b, alpha)

    def mul(self, a, b):
        return a * b if isinstance(a, self.MPC) else b * a

    def div(self, a, b):
        if isinstance(b, self.MPC):
            return b.reciprocal() * a
        return a.div(b)  # public divisor: CrypTen multiplies by its reciprocal (integers: truncates)

    def pow(self, x, exponent):
        if exponent == 2:
            return x.square()
        if exponent in (0.5, -0.5, -1):
            return {0.5: x.sqrt, -0.5: x.inv_sqrt, -1: x.reciprocal}[exponent]()
        if not (float(exponent).is_integer() and exponent >= 1):
            raise UserError(f"vanilla CrypTen: aten.pow with exponent {exponent} on secret data")
        # square-and-multiply with CrypTen's products: its own pow is wrong for odd exponents >= 5
        return power(x, int(exponent), lambda u, v: u * v, lambda v: v.square())

    def matmul(self, a, b):
        if not isinstance(a, self.MPC):
            raise UserError("vanilla CrypTen: a matmul with a public first operand is not supported")
        return a.matmul(b)

    def addmm(self, bias, a, b, beta=1, alpha=1):
        if beta != 1 or alpha != 1:
            raise UserError("vanilla CrypTen: aten.addmm with alpha/beta != 1 is not supported")
        return self.add(self.matmul(a, b), bias)

    def layer_norm(self, x, shape, weight=None, bias=None, eps=1e-5):
        """LayerNorm as CrypTen normalises in its batch norm (0.4.1 has no LayerNorm): the mean and the
        variance over the last ``len(shape)`` dims, (x − mean) · inv_sqrt(variance + eps), then the weight
        and bias; ATen's (output, mean, rstd)."""
        dims = list(range(-len(shape), 0))
        mean = x.mean(dims, keepdim=True)
        centred = x - mean
        rstd = self.rsqrt(centred.square().mean(dims, keepdim=True) + eps)
        out = centred * rstd
        if weight is not None:
            out = out * weight
        return (out if bias is None else out + bias), mean, rstd

    def split(self, x, sizes, dim=0):
        """split / split_with_sizes on the shares (local): each part a secret of its own."""
        return [self._wrap(part.contiguous(), x) for part in torch.split(x.share, sizes, dim)]

    def unbind(self, x, dim=0):
        return [self._wrap(part.contiguous(), x) for part in torch.unbind(x.share, dim)]

    def to_copy(self, x, **kwargs):
        dtype = kwargs.get("dtype")
        if dtype is not None and not dtype.is_floating_point:
            raise UserError(f"vanilla CrypTen: cast of a secret value to {dtype} is not supported")
        return x

    def move(self, node, args, kwargs):
        """Data movement on the shares (local). cat/stack accept public parts (held by rank 0)."""
        target = node.target
        like = next(v for v in flatten_args(list(args)) if isinstance(v, self.MPC))
        if target in (aten.cat.default, aten.stack.default):
            encode = like._tensor.encoder.encode
            parts = [v.share if isinstance(v, self.MPC) else
                     encode(v) if self.rank == 0 else torch.zeros_like(encode(v)) for v in args[0]]
            return self._wrap(target(parts, *args[1:], **kwargs).contiguous(), like)
        if not isinstance(args[0], self.MPC) or sum(isinstance(v, self.MPC) for v in flatten_args(args)) > 1:
            raise UserError(f"vanilla CrypTen: {aten_name(target)} with secret data past its first argument")
        return self._wrap(target(args[0].share, *args[1:], **kwargs).contiguous(), like)


def _map(fn, x):
    if isinstance(x, (list, tuple)):
        return (list if isinstance(x, list) else tuple)(_map(fn, v) for v in x)
    if isinstance(x, dict):
        return {k: _map(fn, v) for k, v in x.items()}
    return fn(x)


def _unwrap(x):
    return _map(lambda v: v.value if isinstance(v, Owned) else v, x)


class CountDivisions:
    """Counts CrypTen's truncations (``ArithmeticSharedTensor.div_`` by an integer) while active."""

    def __init__(self, ast_cls):
        self.cls, self.count = ast_cls, 0

    def __enter__(self):
        self.original = self.cls.div_

        def div_(tensor, y):
            if isinstance(y, int):
                self.count += 1
            return self.original(tensor, y)

        self.cls.div_ = div_
        return self

    def __exit__(self, *exc):
        self.cls.div_ = self.original
