"""Shared fixtures: small captured models are slow-ish to build, so build each once per session."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch
import transformers

transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: whole-model or multi-process test (make test-fast skips it)")
    # one plan cache per session (truncbridge.plan_cache), in the environment so mpirun's ranks and the
    # CLIs' subprocesses share it: the suite plans each model once, and never reuses a plan from an earlier run
    config._plan_cache = tempfile.mkdtemp(prefix="truncbridge-plans-")
    os.environ["TRUNCBRIDGE_CACHE"] = config._plan_cache


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_plan_cache", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def default_converted():
    from truncbridge.frontend.models import load_model
    from truncbridge.pipeline import convert

    return convert(load_model("default"), 32, 16)


@pytest.fixture(scope="session")
def random_converted():
    from truncbridge.frontend.models import load_model
    from truncbridge.pipeline import convert

    return convert(load_model("random-llama"), 16, 16)
