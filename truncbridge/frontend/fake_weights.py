"""Full-size plans without the full model (``truncbridge plan --preset llama-7b --fake-weights``).

A plan needs the graph, the recipes' input ranges and, for the static analysis, a few numbers per
weight — never all the weights at once. So the model is built with its parameters on the meta
device (no memory; buffers such as rotary tables stay real), captured as usual, and each weight
is generated only when calibration's forward pass reaches it: by the family's own initialiser
(``_init_weights``, the distribution ``from_config`` would draw from), seeded by its name, then
dropped after its last use. What stays is its ``WeightStats`` (max |W|, row / column norms, a
spectral bound) and, for vectors and small tensors, the values themselves. Peak memory is one
weight plus activations; time is one generation of every weight and one forward pass.

Differences from holding the model: calibration sees one window (not eight); the spectral norm is
bounded (Frobenius or sqrt(||W||_1 ||W||_inf)), not computed, so norm-based bounds are looser;
initialisations that depend on a parameter's place in the model rather than its module (GPT-2's
scaled c_proj) are not reproduced. Bounds are static; calibrated bounds need the model.
"""
from __future__ import annotations

import copy
import hashlib
import json
import queue
import threading
from contextlib import contextmanager

import torch

from ..core.weight_stats import WeightStats, stats_of


@contextmanager
def params_on_meta():
    """Modules built inside put their parameters on the meta device; buffers stay real."""
    original = torch.nn.Module.register_parameter

    def register(self, name, param):
        if param is not None and not param.is_meta:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


class GeneratedWeights:
    """The weights of a random model of this config, generated one parameter at a time; with
    ``prefetch``, a background thread generates the next weights (and their statistics) while the
    calibration pass computes with the current one."""

    PREFETCH_DEPTH = 2  # weights generated ahead: memory stays a few weights

    def __init__(self, model: torch.nn.Module, seed: int = 0, transform=None):
        self.model, self.seed = model, seed
        self.transform = transform  # (name, value) -> value: realistic.RealRanges under --activations real
        self.stats: dict[str, WeightStats] = {}
        self.small: dict[str, torch.Tensor] = {}
        self.generated = 0  # elements generated, ties counted each time
        self._rng = threading.Lock()  # seeding and drawing happen together, in either thread
        self._ahead: list[str] = []
        self._ready: queue.Queue = queue.Queue(self.PREFETCH_DEPTH)

    def prefetch(self, order: list[str]) -> None:
        """Generate these weights, in this order, ahead of the calls that will ask for them."""
        self._ahead = list(order)

        def work():
            for name in order:
                self._ready.put((name, self.make(name)))

        threading.Thread(target=work, daemon=True).start()

    def __call__(self, name: str) -> torch.Tensor:
        """The parameter ``name`` (as ``named_parameters`` calls it), float32 on the CPU."""
        if self._ahead and self._ahead[0] == name:
            self._ahead.pop(0)
            got, value = self._ready.get()
            if got != name:
                raise RuntimeError(f"prefetched weight {got} arrived where {name} was asked for")
            return value
        return self.make(name)

    def make(self, name: str) -> torch.Tensor:
        module_name, _, attr = name.rpartition(".")
        owner = self.model.get_submodule(module_name)
        shell = copy.copy(owner)  # the module alone: its class decides the initialiser
        shell._modules = {}
        shell._parameters = {k: None if p is None else torch.nn.Parameter(torch.empty(p.shape), p.requires_grad)
                             for k, p in owner._parameters.items()}
        digest = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
        with self._rng, torch.no_grad():
            torch.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
            self.model._init_weights(shell)
        value = shell._parameters[attr].detach()
        if self.transform is not None:
            value = self.transform(name, value)
        self.generated += value.numel()
        if name not in self.stats:
            if value.dim() >= 2:
                self.stats[name] = stats_of(value)
            if value.dim() < 2:  # norm scales, biases: the analysis computes with their values
                self.small[name] = value.clone()
        return value

    def identity(self) -> str:
        """What the weights are, in place of their hash: the config and the seed."""
        config = json.dumps(self.model.config.to_dict(), sort_keys=True, default=str)
        transform = "" if self.transform is None else f":{type(self.transform).__name__}"
        return "generated:" + hashlib.sha256(f"{self.seed}:{config}{transform}".encode()).hexdigest()
