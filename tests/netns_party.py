"""run_pi.py with each rank in its own network namespace, for the cross-host test (start it under
mpirun like run_pi.py, with TRUNCBRIDGE_TEST_NETNS=PREFIX: rank k enters namespace PREFIX-k).

Open MPI 5.0.11 cannot start ranks that live in separate network namespaces (MPI_INIT fails:
"PML add procs failed"), so each rank starts on the host, lets MPI connect (its side channel keeps
those connections), and only then moves into its namespace — before CrypTen, gloo and the
rendezvous store make a single socket. Every byte of the protocol then crosses the veth links,
addressed as docs/protocol.md ("Across hosts") tells a cross-host run to (TRUNCBRIDGE_MASTER_ADDR, GLOO_SOCKET_IFNAME).
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

CLONE_NEWNET = 0x40000000


def enter_namespace(name: str) -> None:
    """setns(2) into /run/netns/NAME (``ip netns add``): this thread and every thread it starts."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
    finally:
        os.close(fd)


def main() -> None:
    from mpi4py import MPI  # MPI_Init here, on the host

    rank = MPI.COMM_WORLD.Get_rank()
    enter_namespace(f"{os.environ['TRUNCBRIDGE_TEST_NETNS']}-{rank}")
    from truncbridge.pi import mpi, session

    mpi.leave(session.main(sys.argv[1:]))


if __name__ == "__main__":
    main()
