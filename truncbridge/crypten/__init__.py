"""truncbridge on CrypTen: run a truncation-annotated plan on real secret shares.

Threat model (the one every part of this package is built and tested for): semi-honest,
non-colluding parties. The model owner (rank 0) holds the weights, which no other party learns;
the client (rank 1) holds the token ids, which no other party learns; an optional helper (rank 2)
computes with them; only the client learns the logits. Correlated randomness (Beaver triples,
truncation masks, comparison material) comes from a dealer that is no computing party and
receives nothing but sizes (``dealer.py``); every online receipt is a share, an opening masked by
a fresh dealt mask the receiver does not know, or the client's output (checked by ``audit.py``).
The client and helper receive a redacted plan: structure, shapes, scales, shifts and integer bit
widths (``core.planfile.redact_plan_json`` says what those still reveal). Links between parties are
gloo TCP and the rendezvous store, neither authenticated nor encrypted: across hosts, run them
inside an authenticated, encrypted network (a VPN or TLS tunnel).

    import truncbridge.crypten as tbc
    crypten = tbc.import_crypten()      # CrypTen 0.4.1 on recent torch (see compat.py)
    tbc.init()                          # crypten.init() with the dealer (the extra rank deals)
    model = tbc.PlanModule(plan).encrypt(src=0)
    y = model(crypten.cryptensor(x, src=1))     # an MPCTensor in CrypTen's own encoding

This package is what a CrypTen program imports: ``module`` (the plan as a ``crypten.nn.Module``),
``convert`` (``from_pytorch``: any module on one real-valued tensor as a ``PlanModule``), ``generation``
(``PrivateGeneration``: the client's prompt in, its tokens out, the KV cache kept as shares) and
``vanilla`` (the same model with CrypTen's own functions, for comparison). The protocol itself lives in
``truncbridge.backends.crypten`` (on ``core`` alone: runner, truncations, openings, dealer,
randomness); the mpirun driver of ``launch/run_pi.py`` in ``truncbridge.pi``.
"""
from ..backends.crypten.compat import import_crypten
from ..backends.crypten.runner import PlanRunner
from .convert import from_pytorch, module_plan
from .generation import PrivateGeneration
from .module import PlanModule, emulate, init
from .vanilla import VanillaRunner

__all__ = ["import_crypten", "init", "PlanModule", "PlanRunner", "PrivateGeneration", "VanillaRunner", "from_pytorch",
           "module_plan", "emulate"]
