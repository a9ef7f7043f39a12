"""Shared fixtures: small captured models are slow-ish to build, so build each once per session."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch
import transformers

transformers.utils.logging.disable_progress_bar()
# under `pytest -n 2` (make test) two workers share the two cores: one torch thread each
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# Under `pytest -n 2` (make test) the tests marked `timed` — they time what they see: an emulated network's delay,
# watchdogs, a killed party named within a bound, a solver against the clock — run one after another on one xdist
# worker; every other test (in-process, or starting processes that time nothing) is shared between both workers.
@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timed"):
            item.add_marker(pytest.mark.xdist_group("timed"))


TIMED_SAMPLE = "tests/test_dealer_startup.py::"  # every test of it is timed


def pytest_xdist_node_collection_finished(node, ids):
    """xdist groups a test by renaming it NAME@GROUP; where that fails (pytest 9.2 ignores the rename
    xdist 3.8 makes), the timed tests would silently run beside each other, and their session
    fixtures once per worker: stop and say so."""
    lost = [i for i in ids if i.startswith(TIMED_SAMPLE) and "@" not in i]
    if lost and node.config.getvalue("dist") == "loadgroup":
        raise pytest.UsageError(f"--dist loadgroup did not group {lost[0]} (and {len(lost) - 1} more): "
                                f"pytest {pytest.__version__} breaks this pytest-xdist's grouping (pyproject.toml pins it)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: whole-model or multi-process test (make test-fast skips it)")
    config.addinivalue_line("markers", "timed: times what it sees; make test runs these in order on one worker")
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
