"""The receipt audit's side channel: MPI, the launcher's.

``mpi_findings`` checks every rank's ``mpi.RECEIPTS``: at set-up a party may receive host names, the
rendezvous address and redacted plans; after set-up only statistics (numbers under the names
``results.STATISTICS`` lists) and failure notices — and what an announced insecure mode sends: the
client's ids and logits to the owner under ``--benchmark-reveal``, the pooled views of the audit itself.
"""
from __future__ import annotations

from ..backends.crypten.roles import CLIENT, OWNER
from .results import STATISTICS

NUMBERS = ("int", "float", "bool", "NoneType")  # mpi.describe's names of the values a statistic may take
# the rendezvous (host names, rank 0's address), and the owner's cached dealer requests of the redacted plans
AT_SETUP = {"hosts": "str", "address": "str", "traces": "traces", "length": "int"}  # length: the prompt's (--generate)


def _redacted(what) -> bool:
    """A plan's receipt shape is a redacted plan's, or (--generate) every cache length's is."""
    return what == "redacted plan" or isinstance(what, dict) and bool(what) and all(map(_redacted, what.values()))


def mpi_findings(receipts: list[list[dict]], reveal: bool = False) -> list[str]:
    """Every MPI receipt (each rank's log) that is neither set-up material, a statistic, a
    failure notice, nor data an announced insecure mode sends (``reveal``: --benchmark-reveal)."""
    out = []
    for r in (r for log in receipts for r in log):
        where = f"party {r['rank']} received over MPI from party {r['source']} {'at' if r['setup'] else 'after'} set-up"
        kind, what = r["kind"], r["what"]
        if kind == "notice":
            bad = [] if what == "str" else [f"a failure notice that is a {what}"]
        elif kind in AT_SETUP:
            bad = [] if r["setup"] and what == AT_SETUP[kind] else [f"{kind}: {what}"]
        elif kind == "plans":
            bad = (["plans after set-up"] if not r["setup"] else
                   [f"plan {k}: {v}" for k, v in what.items() if not _redacted(v)] if isinstance(what, dict) else
                   [f"plans: {what}"])
        elif kind == "stats":
            bad = ([f"statistics that are a {what}"] if not isinstance(what, dict) else
                   [f"{k!r} ({v}) among its statistics, which are numbers only" for k, v in what.items()
                    if k not in STATISTICS or v not in NUMBERS])
        elif kind == "control":  # --generate --eos: the client's word after each step, go on or stop (public)
            bad = [] if r["source"] == CLIENT and not r["setup"] and what == "bool" else [f"a control message: {what}"]
        elif kind == "reveal":
            allowed = reveal and r["rank"] == OWNER and r["source"] == CLIENT and not r["setup"]
            bad = [] if allowed else [f"the client's revealed data ({what}) without --benchmark-reveal"]
        elif kind == "audit":  # this audit's own pool: an --audit run is insecure by itself (and says so)
            bad = [] if r["rank"] == OWNER and not r["setup"] else ["the audit's pooled views, not at the owner"]
        else:
            bad = [f"an unexpected {kind}: {what}"]
        out += [f"{where}: {b}" for b in bad]
    return out
