"""MPI as the launcher's side channel: waiting without spinning, and failing together.

MPI carries no secret of the protocol: rendezvous addresses, (redacted) plans, statistics, failure
notices. Two rules keep a run from hanging before the parties' own watchdogs exist:

* every wait is idle (``Iprobe`` + sleep): Open MPI's blocking receive spins, which would take
  the cores rank 0 plans on away from it;
* every wait also listens for a *failure notice*: a rank whose set-up fails prints its own error
  and sends a notice to every other rank before it exits non-zero, and a rank that receives one
  says who failed and exits non-zero too — within one poll, not at some timeout.

Every receipt is logged (``RECEIPTS``): who sent it, what the receiver expected (``kind``:
``hosts``, ``address``, ``plans``, ``traces``, ``stats``, ``reveal``, ``audit``, ``notice``), whether set-up
was over (``setup_done``), and the receipt's shape — types, keys, tensor shapes, never values.
``audit_mpi.mpi_findings`` checks the log like the communicator's receipts: after set-up a party may
receive statistics and failure notices only, plus what an insecure mode announces (the
client's revealed ids and logits under ``--benchmark-reveal``, the pooled views of ``--audit``).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time

from ..backends.crypten.roles import announce_stop
from ..core.errors import UserError, first_line

DATA_TAG = 11
FAIL_TAG = 13
USAGE_FAIL_TAG = 14  # a failure notice for the user's error (UserError): every rank exits 2
POLL_S = 0.05
EXIT_SETUP = 1  # a set-up failure that is not the user's (UserError exits 2)
RECEIPTS: list[dict] = []  # this rank's receipts over MPI (see the module docstring)
_PHASE = {"setup": True}
OPAQUE = ("audit", "traces")  # kinds logged without their shape: the --audit pool, the dealer's request sequences


class PeerFailed(Exception):
    """Another rank sent a failure notice; ``status``: the exit status this rank then ends with."""

    def __init__(self, rank: int, message: str, status: int = 1):
        super().__init__(message)
        self.rank, self.status = rank, status


def setup_done() -> None:
    """From now on every receipt is checked as one after set-up."""
    _PHASE["setup"] = False


def describe(obj, kind: str = "") -> object:
    """A receipt's shape without its values: type names, dict keys, tensor shapes; a plan
    document as whether it is redacted."""
    if kind in OPAQUE:
        return kind
    if kind == "plans" and isinstance(obj, dict):  # policy -> plan, or (--generate) policy -> cache length -> plan
        return {str(k): "redacted plan" if isinstance(d, dict) and d.get("redacted") is True else
                describe(d, kind) if isinstance(d, dict) and "schema" not in d else describe(d) for k, d in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return type(obj).__name__
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # a torch tensor or numpy array
        return f"tensor{tuple(obj.shape)}"
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # its fields, as a dict's keys
        return {f.name: describe(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    return type(obj).__name__


def _log(comm, source: int, kind: str, obj) -> None:
    RECEIPTS.append({"rank": comm.Get_rank(), "source": source, "kind": kind, "setup": _PHASE["setup"],
                     "what": describe(obj, kind)})


def _check_notices(comm) -> None:
    from mpi4py import MPI

    status = MPI.Status()
    for tag, exit_status in ((USAGE_FAIL_TAG, 2), (FAIL_TAG, EXIT_SETUP)):
        if comm.Iprobe(source=MPI.ANY_SOURCE, tag=tag, status=status):
            notice = comm.recv(source=status.Get_source(), tag=tag)
            _log(comm, status.Get_source(), "notice", notice)
            raise PeerFailed(status.Get_source(), notice, exit_status)


def wait_for(comm, source: int, kind: str, tag: int = DATA_TAG):
    """Receive a ``kind`` from ``source`` without spinning (logged), raising ``PeerFailed`` on any
    failure notice."""
    while not comm.Iprobe(source=source, tag=tag):
        _check_notices(comm)
        time.sleep(POLL_S)
    obj = comm.recv(source=source, tag=tag)
    _log(comm, source, kind, obj)
    return obj


def bcast(comm, obj, kind: str, root: int = 0, ranks=None):
    """``obj`` from ``root`` to ``ranks`` (default: all), idle-waiting; a receiver that fails before it
    receives (a large message waits for its receiver) raises ``PeerFailed`` here too."""
    ranks = range(comm.Get_size()) if ranks is None else ranks
    if comm.Get_rank() == root:
        requests = [comm.isend(obj, dest=r, tag=DATA_TAG) for r in ranks if r != root]
        while not all(r.Test() for r in requests):
            _check_notices(comm)
            time.sleep(POLL_S)
        return obj
    return wait_for(comm, root, kind) if comm.Get_rank() in ranks else None


def gather(comm, obj, kind: str, root: int = 0) -> list | None:
    """Every rank's ``obj`` at ``root`` (a list by rank; None elsewhere), idle-waiting."""
    if comm.Get_rank() != root:
        comm.isend(obj, dest=root, tag=DATA_TAG).wait()
        return None
    return [obj if r == root else wait_for(comm, r, kind) for r in range(comm.Get_size())]


def send(comm, obj, dest: int) -> None:
    comm.isend(obj, dest=dest, tag=DATA_TAG).wait()


def notify_failure(comm, message: str, usage: bool = False) -> None:
    """Tell every other rank this one failed (best effort: eager sends of a short message);
    ``usage``: the user's error, which every rank ends with exit status 2."""
    tag = USAGE_FAIL_TAG if usage else FAIL_TAG
    for request in [comm.isend(message, dest=r, tag=tag) for r in range(comm.Get_size()) if r != comm.Get_rank()]:
        try:
            request.wait()
        except Exception:  # noqa: BLE001 - a rank that is already gone
            pass


def fail_setup(comm, who: str, exc: BaseException) -> int:
    """This rank's set-up failed: print its own error (one line), tell the others, give the exit
    status (2 for the user's error, on every rank; 1 otherwise)."""
    first = first_line(exc)
    own = f"{who} failed during set-up: {type(exc).__name__}: {first}"
    line = f"error: {first}" if isinstance(exc, UserError) else f"error: {own}"
    print(line, file=sys.stderr, flush=True)
    private = getattr(exc, "private", False)  # e.g. the client's input: its reason stays on its rank
    notify_failure(comm, f"{who} failed during set-up" + (" (its reason stays with it)" if private else f": {first}"),
                   usage=isinstance(exc, UserError))
    return 2 if isinstance(exc, UserError) else EXIT_SETUP


def peer_failed(who: str, exc: PeerFailed) -> int:
    announce_stop(who, str(exc))
    return exc.status


def threads_per_party(comm) -> int:
    """This host's cores divided among the processes running on it (at least 1): parties that
    each take every core fight over them, and their timings become noise."""
    from mpi4py import MPI

    on_this_host = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    return max(1, len(os.sched_getaffinity(0)) // on_this_host)


def rendezvous(comm) -> str:
    """Rank 0 picks a free TCP port on its host; everyone learns tcp://host:port."""
    hosts = gather(comm, socket.gethostname(), "hosts")
    address = None
    if comm.Get_rank() == 0:
        host = os.environ.get("TRUNCBRIDGE_MASTER_ADDR") or socket.gethostname()
        if len(set(hosts)) == 1 and "TRUNCBRIDGE_MASTER_ADDR" not in os.environ:
            host = "127.0.0.1"  # one machine: stay on loopback
        with socket.socket() as s:
            s.bind(("", 0))
            address = f"tcp://{host}:{s.getsockname()[1]}"
    return bcast(comm, address, "address")


def leave(status: int):
    """End the process with ``status`` once every result is out: flush, finalize MPI, and skip C++
    static destructors — gloo's sometimes abort ("terminate called without an active exception")
    after a clean crypten.uninit()."""
    from mpi4py import MPI

    sys.stdout.flush()
    sys.stderr.flush()
    MPI.Finalize()
    os._exit(status)
