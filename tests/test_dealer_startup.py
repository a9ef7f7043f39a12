"""The separate dealer does not wait out its week-long receive timeout when a computing party never
starts: after ``startup_s`` it names the reason and ends (``dealing.run_dealer``)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from truncbridge.backends.crypten.roles import EXIT_LOST

DEALER = ("import sys; from truncbridge.backends.crypten.dealing import run_dealer; "
          "run_dealer(startup_s=float(sys.argv[1]), linger_s=0)")


def start_dealer_alone(tmp_path, startup_s: float, wait_s: float) -> subprocess.CompletedProcess:
    """The dealer of a 2-party run (rank 2) whose parties never come."""
    env = {**os.environ, "RANK": "2", "WORLD_SIZE": "2", "RENDEZVOUS": f"file://{tmp_path / 'rendezvous'}",
           "DISTRIBUTED_BACKEND": "gloo"}
    return subprocess.run([sys.executable, "-c", DEALER, str(startup_s)], env=env, capture_output=True, text=True,
                          timeout=wait_s)


pytestmark = [pytest.mark.slow, pytest.mark.timed]  # processes of their own, one waiting 5 s


def test_a_dealer_whose_parties_never_start_says_so_and_ends(tmp_path):
    t = time.monotonic()
    done = start_dealer_alone(tmp_path, 2, 60)
    assert done.returncode == EXIT_LOST
    assert "party 2 (dealer) stops: the computing parties did not all start within 2 s" in done.stderr
    assert time.monotonic() - t < 30


def test_without_its_start_up_limit_the_dealer_would_wait(tmp_path):
    """Negative control: a limit longer than the test's patience keeps it waiting."""
    with pytest.raises(subprocess.TimeoutExpired):
        start_dealer_alone(tmp_path, 600, 5)
