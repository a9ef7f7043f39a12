"""``truncbridge.crypten.from_pytorch`` on modules that are not LMs (an MLP with GELU and SiLU, a
small CNN; a ViT block in the emulator only): the client's input is a real-valued tensor, its bounds
declared or calibrated; the plan runs in the exact emulator and on real CrypTen parties (one mpirun
for both modules)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from from_pytorch_party import CASES, MLP_BOUNDS, PARTIES, mlp, plan_module

import truncbridge.crypten as tbc
from truncbridge.backends import run_float
from truncbridge.core.errors import UserError
from truncbridge.frontend.module import convert_module

PARTY = Path(__file__).resolve().parent / "from_pytorch_party.py"
MPIRUN = Path(sys.executable).parent / "mpirun"
# Fixed point at 16 fraction bits: each rounding is 2^-17; a few dozen of them, amplified by at most
# the layers' gains (~2^3 here), stay below 2^-10. The recipes (GELU, SiLU, by Chebyshev fits to
# 2^-12) add less. Measured (eager and lazy): 2^-13.7 (MLP), 2^-13.9 (CNN).
TOLERANCE = 2.0**-10


def float64(case: str, x: torch.Tensor) -> torch.Tensor:
    """The independent reference: the module itself, in float64."""
    factory = CASES[case][0]
    with torch.no_grad():
        return factory().double()(x.double())


@pytest.fixture(scope="module")
def modules():
    return {(name, policy): plan_module(name, policy) for name in CASES for policy in ("eager", "lazy")}


@pytest.mark.slow  # four plans (module fixture): ~20 s
@pytest.mark.parametrize("case", list(CASES))
def test_the_ring_follows_the_float64_module(case, modules):
    """Emulated in Z_2^64 (with the bound check on), each policy's output stays within the
    fixed-point tolerance of the module's own float64 output, on the client's input and on fresh
    inputs inside the range the plan assumes; lazy places fewer truncations than eager."""
    x = CASES[case][3]
    fresh = [x, *(torch.randn(x.shape, generator=torch.Generator().manual_seed(s)) for s in range(3))]
    if case == "mlp":
        fresh = [v.clamp(*MLP_BOUNDS) for v in fresh]
    for policy in ("eager", "lazy"):
        model = modules[case, policy]
        for v in fresh:
            got, want = model.emulate(v), float64(case, v)
            assert got.shape == want.shape
            assert (got - want).abs().max().item() <= TOLERANCE, (case, policy)
    eager, lazy = (modules[case, p].plan.counts()["truncations"] for p in ("eager", "lazy"))
    assert lazy < eager, (case, lazy, eager)


@pytest.mark.slow  # the same plans
def test_the_client_input_is_one_real_valued_secret(modules):
    """The plan's one input is the real-valued tensor (no one-hot), at the plan's fraction bits,
    bounded by the declared range (MLP) or the calibrated one, widened (CNN)."""
    for case, bound in (("mlp", 2.0), ("cnn", None)):
        plan = modules[case, "lazy"].plan
        (name, nid), = plan.program.inputs.items()
        node = plan.program[nid]
        assert (name, node.attrs["integer"], node.shape, node.scale) == ("input", False, tuple(CASES[case][1].shape), 16)
        assert plan.bounds[nid].source == "input"
        if bound is not None:
            assert plan.bounds[nid].value == bound
        else:  # the calibration data's max |x|, widened by a quarter of its span each side, at least
            calibration = CASES[case][2]["calibration"]
            assert plan.bounds[nid].value >= calibration.abs().max().item() * 1.25
            assert plan.model["input_range_source"] == "calibration"


def test_conv_and_pooling_lower_exactly():
    """Convolutions (padding, stride, dilation) and average pooling lowered to IR (patches gathered
    by a public index, a matmul with the kernel, window sums) and run in float64 without rounding
    equal the module in float64 to 1e-12 (no recipe involved: ReLU is a comparison)."""
    torch.manual_seed(5)
    modules = [torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.AvgPool2d(2), torch.nn.Conv2d(4, 6, 3, stride=2),
                                   torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6, 3)),
               torch.nn.Sequential(torch.nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(2, 1), dilation=2),
                                   torch.nn.AvgPool2d(2, 1, 1))]
    x = CASES["cnn"][3]
    for module in modules:
        got = run_float(convert_module(module, x, 16, input_bounds=8.0).program, {"input": x.double()})[0]
        with torch.no_grad():
            want = module.double()(x.double())
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-12


def test_a_recipe_may_read_the_input_itself():
    """SiLU of the raw input: its recipe covers the whole declared range, even where the owner's
    calibration data span less of it (here [-1, 1] of [-3, 3])."""
    torch.manual_seed(6)
    module = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(8, 4))
    narrow = torch.rand(16, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1
    model = tbc.from_pytorch(module, torch.zeros(1, 8), input_bounds=(-3.0, 3.0), calibration=narrow)
    x = torch.linspace(-3, 3, 8)[None]
    with torch.no_grad():
        want = module.double()(x.double())
    assert (model.emulate(x) - want).abs().max().item() <= TOLERANCE


class ViTBlock(torch.nn.Module):
    """Pre-norm transformer block on real-valued tokens: layer norm, multi-head attention (torch's
    SDPA, with its guard for rows masked whole), layer norm, GELU MLP."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        torch.manual_seed(7)
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attn = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


@pytest.mark.slow  # calibration and fits of a whole block
def test_a_vit_block_on_real_tokens():
    """Calibrated on the owner's samples, the block's plan follows the float64 block on a fresh input."""
    block, shape = ViTBlock().eval(), (1, 6, 16)
    samples = torch.randn(16, *shape[1:], generator=torch.Generator().manual_seed(8))
    model = tbc.from_pytorch(block, torch.zeros(shape), calibration=samples)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = block.double()(x.double())
    assert (model.emulate(x) - want).abs().max().item() <= TOLERANCE


def test_bounds_that_are_too_small_are_caught():
    """A declared input range the client's input leaves is a broken promise: the emulator's check
    names the input node; inside the range the same plan passes."""
    model = tbc.from_pytorch(mlp(), torch.zeros(1, 8), input_bounds=0.5)
    inside = CASES["mlp"][3].clamp(-0.5, 0.5)
    model.emulate(inside)
    broken = r"values exceed the plan's bounds: 4 elements, worst node \d+ \(input at input\) saw 1\.6\d* > its input bound 0\.5$"
    with pytest.raises(UserError, match=broken):
        model.emulate(CASES["mlp"][3])


def test_bad_input_is_a_one_line_error():
    two = torch.nn.Bilinear(4, 4, 2)
    cases = [
        (lambda: tbc.from_pytorch(mlp(), torch.zeros(1, 8)), "no bounds for the module's input"),
        (lambda: tbc.from_pytorch(two, (torch.zeros(1, 4), torch.zeros(1, 4)), input_bounds=1.0),
         "one real-valued input tensor, got 2 inputs"),
        (lambda: tbc.from_pytorch(torch.nn.Embedding(10, 4), torch.zeros(1, 3, dtype=torch.long), input_bounds=1.0),
         "dummy_input must be a real-valued"),
        (lambda: tbc.from_pytorch(_Cumsum(), torch.zeros(1, 8), input_bounds=1.0), "no lowering for ATen op aten.cumsum"),
        (lambda: tbc.from_pytorch(mlp(), torch.zeros(1, 8), input_bounds=(1.0, -1.0)), "lo < hi"),
        (lambda: tbc.from_pytorch(mlp(), torch.zeros(1, 8), calibration=torch.zeros(3, 7)), "does not stack inputs"),
        (lambda: tbc.from_pytorch(mlp(), torch.zeros(1, 8), input_bounds=1.0, bounds="calibrated"),
         "needs calibration data"),
    ]
    for make, message in cases:
        with pytest.raises(UserError, match=message) as caught:
            make()
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=r"inputs of shape \(1, 8\), not \(2, 8\)"):
        plan_module("mlp").emulate(torch.zeros(2, 8))


class _Cumsum(torch.nn.Module):
    def forward(self, x):
        return torch.cumsum(x, -1)


@pytest.mark.slow
@pytest.mark.skipif(not MPIRUN.exists(), reason="mpirun not installed in this environment")
def test_real_parties_match_the_emulator(tmp_path, modules):
    """One mpirun: the owner plans both modules and sends the client redacted plans; the client
    shares its real input; only the client's reveal returns the output, which matches the
    emulator within the exact truncations' stochastic rounding (|error| < 2^-16 each) and so the
    float64 module within TOLERANCE; each party executes the plan's truncations."""
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    done = subprocess.run([str(MPIRUN), "-n", str(PARTIES + 1), "--oversubscribe", sys.executable, str(PARTY), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r: json.loads((tmp_path / f"out{r}.json").read_text())["results"] for r in range(PARTIES)}
    assert not (tmp_path / f"out{PARTIES}.json").exists()  # the dealer only deals
    for case in CASES:
        model, x = modules[case, "lazy"], CASES[case][3]
        owner, client = results[0][case], results[1][case]
        assert owner["revealed"] is None and not owner["redacted"] and client["redacted"]
        got = torch.tensor(client["revealed"], dtype=torch.float64)
        emulated = model.emulate(x)
        assert (got - emulated).abs().max().item() <= 2.0**-12, case
        assert (got - float64(case, x)).abs().max().item() <= TOLERANCE, case
        assert owner["truncations"] == client["truncations"] == model.plan.counts()["truncations"]
