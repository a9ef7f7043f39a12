"""Shared fixtures: small captured models are slow-ish to build, so build each once per session."""
from __future__ import annotations

import pytest
import torch
import transformers

transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: whole-model or multi-process test (make test-fast skips it)")


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
