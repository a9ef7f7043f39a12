"""The multi-host path for real: every party in its own network namespace on this machine, joined
by veth links to a bridge, started the way the README tells users to start a cross-host run
(``TRUNCBRIDGE_MASTER_ADDR``, ``GLOO_SOCKET_IFNAME``), each link's bandwidth shaped by the kernel
(``tc`` token bucket; netem delay does not exist on these machines). MPI, the launcher's side
channel, still reaches the ranks through shared memory; the protocol's traffic can only take the
veth links. Skipped, with the reason, where namespaces cannot be made (not root, no ``ip``)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MPIRUN = Path(sys.executable).parent / "mpirun"
SUBNET = "10.213.77"  # addresses of these test hosts only, inside their namespaces
RATE = "400mbit"  # each party's link, shaped by tc's token bucket
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}

pytestmark = [pytest.mark.skipif(not MPIRUN.exists(), reason="mpirun not installed in this environment"),
              pytest.mark.slow]


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


class Hosts:
    """``n`` namespaces tb<tag>-<i>, each with interface tb0 at SUBNET.<i+1>, on a bridge in a
    namespace of its own (the host's own network is not touched)."""

    def __init__(self, n: int):
        tag = uuid.uuid4().hex[:6]
        self.switch, self.names = f"tb{tag}-sw", [f"tb{tag}-{i}" for i in range(n)]
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", f"tb{tag}{i}", "type", "veth", "peer", "name", f"tb{tag}{i}p")
            sh("ip", "link", "set", f"tb{tag}{i}", "netns", ns)
            sh("ip", "link", "set", f"tb{tag}{i}p", "netns", self.switch)
            sh("ip", "-n", ns, "link", "set", f"tb{tag}{i}", "name", "tb0")
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "tb0")
            for dev in ("tb0", "lo"):
                sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", self.switch, "link", "set", f"tb{tag}{i}p", "master", "br0", "up")
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "tb0", "root", "tbf",
               "rate", RATE, "burst", "256kb", "latency", "100ms")

    def sent(self, i: int) -> int:
        return int(sh("ip", "netns", "exec", self.names[i], "cat", "/sys/class/net/tb0/statistics/tx_bytes"))

    def remove(self) -> None:
        for ns in [*self.names, self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def hosts():
    if shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("cross-host test: the ip and tc tools are not installed")
    made = None
    try:
        made = Hosts(3)
    except (subprocess.CalledProcessError, OSError) as exc:
        if made is not None:
            made.remove()
        reason = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        pytest.skip(f"cross-host test: cannot make network namespaces here ({reason or exc})")
    yield made
    made.remove()


def test_parties_in_separate_network_namespaces(hosts, tmp_path):
    """Owner, client and dealer each in a namespace of its own, over shaped veth links."""
    out = tmp_path / "pi.json"
    app = [sys.executable, str(ROOT / "launch" / "run_pi.py"), "--model", "random-llama", "--seq-len", "8",
           "--policy", "eager", "--json", str(out)]
    cmd = [str(MPIRUN), "--oversubscribe", "-x", "TRUNCBRIDGE_MASTER_ADDR", "-x", "GLOO_SOCKET_IFNAME"]
    for i, ns in enumerate(hosts.names):
        cmd += (["-n", "1", "ip", "netns", "exec", ns, *app] + ([":"] if i < len(hosts.names) - 1 else []))
    before = [hosts.sent(i) for i in range(3)]
    env = {**ENV, "TRUNCBRIDGE_MASTER_ADDR": f"{SUBNET}.1", "GLOO_SOCKET_IFNAME": "tb0"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["top1_agreement_vs_float"] >= 0.8 and row["max_abs_diff_vs_emulator"] <= 2 * row["emulated_protocol_spread"] + 1e-9
    sent = [hosts.sent(i) - b for i, b in zip(range(3), before)]
    # every online byte the client sent crossed its veth link (CrypTen counts sent + received)
    assert sent[1] >= row["per_party"][1]["bytes"] / 2, (sent, row["per_party"])
    assert sent[2] > 0  # the dealer's seeds went over the links too
