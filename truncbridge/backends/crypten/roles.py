"""Who is who: rank 0 owns the model, rank 1 is the client, rank 2 helps in 3PC, and the rank
after the computing parties is the dealer (``dealer.py``)."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

OWNER = 0
CLIENT = 1
ROLES = {OWNER: "model owner", CLIENT: "client", 2: "helper"}
EXIT_LOST = 3  # the status a party (or the dealer) ends with when a peer is lost or reports a failure


def role(rank: int, parties: int | None = None) -> str:
    """``party R (what it is)``; ``parties`` (default: ``WORLD_SIZE``) computing parties come first."""
    parties = int(os.environ.get("WORLD_SIZE", 0)) if parties is None else parties
    return f"party {rank} ({'dealer' if rank == parties else ROLES.get(rank, 'helper')})"


def announce_stop(who: str, reason: str) -> None:
    """The one line a party (or the dealer) prints when it stops early."""
    print(f"truncbridge: {who} stops: {reason}", file=sys.stderr, flush=True)


def stop_process(lock: threading.Lock, who: str, reason: str, then: Callable[[], None] = lambda: None) -> None:
    """End this process early: say why (once: a second caller waits for the first to end it), run
    ``then`` (tell the others, linger), exit with ``EXIT_LOST`` — even if the line cannot be
    printed, since the other thread may be asleep in here."""
    if not lock.acquire(blocking=False):
        time.sleep(3600)
    try:
        announce_stop(who, reason)
        then()
    finally:
        os._exit(EXIT_LOST)
