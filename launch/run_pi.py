"""Private inference with real CrypTen parties, one process per party, started by mpirun.

    mpirun -n 3 python launch/run_pi.py [--model default] [--policy eager,lazy,optimal,vanilla] [--json out.json]
    mpirun -n 4 python launch/run_pi.py ...          # rank 2 only helps; the last rank deals
    mpirun -H hostA,hostB,hostC -n 3 python launch/run_pi.py ...   # across machines (docs/protocol.md, "Across hosts")
    mpirun -n 3 python launch/run_pi.py --text prompt.txt --client-output out.json   # the client's input
    mpirun -n 3 python launch/run_pi.py --model M --seq-len N --plan lazy.json optimal.json  # plans made
                                                     # by truncbridge plan, for M and N, that CrypTen runs

As root, Open MPI also wants --allow-run-as-root, and --oversubscribe when ranks exceed cores.
Rank 0 owns the weights, rank 1 is the client: only rank 1 reads --prompt / --text and learns the
logits; it prints its top tokens and writes them with --client-output. Rank 0 prints one row per
policy (wall_s, rounds, bytes, truncations_executed: statistics only) and the lazy/eager,
optimal/eager ratios; --benchmark-reveal (INSECURE) adds max_abs_diff_vs_emulator and
top1_agreement_vs_float. With --plan the owner runs its own plan files (the others get redacted
copies); a plan made for another model or length, or one the chosen --truncation cannot run (the
exact truncation needs |x| < 2^62: plan for crypten-exact-2pc/-3pc), is refused in one line on
every rank (exit 2). See truncbridge/pi/session.py, owner.py and client.py.
"""
import os

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # a lost peer is reported by truncbridge in one line

from truncbridge.pi.mpi import leave  # noqa: E402
from truncbridge.pi.session import main  # noqa: E402

if __name__ == "__main__":
    leave(main())
