"""launch/run_pi.py under mpirun: real CrypTen parties and a separate dealer, one process each, on a
tiny random Llama; the privacy audit (over MPI too), its negative controls, the owner's attack, and
the client's input and output kept at the client."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MPIRUN = Path(sys.executable).parent / "mpirun"
RUN_PI = ROOT / "launch" / "run_pi.py"
VARIANTS = ROOT / "tests" / "pi_variants.py"
TINY = ["--model", "random-llama", "--seq-len", "16"]
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


timed = pytest.mark.timed  # its run's delays, watchdogs or time bounds: the every-policy runs (shared), the kills


def starts_processes(test):
    """A test that starts processes: slow (each pays every process's imports: torch, CrypTen,
    transformers), skipped without mpirun. The unit tests of this file run in the fast loop."""
    return pytest.mark.slow(pytest.mark.skipif(not MPIRUN.exists(), reason="mpirun not installed here")(test))


def mpirun(processes: int, *args: str, script: Path = RUN_PI) -> list[str]:
    return [str(MPIRUN), "-n", str(processes), "--oversubscribe", sys.executable, str(script), *args]


def run_json(tmp_path, processes: int, *args: str, script: Path = RUN_PI) -> tuple[dict, str]:
    out = tmp_path / "pi.json"
    done = subprocess.run(mpirun(processes, *args, "--json", str(out), script=script), env=ENV,
                          capture_output=True, text=True, timeout=600)  # minutes on a shared, loaded machine
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout + done.stderr


# The emulated network of the 2-party run: each round waits RTT_MS, far more than a round costs on
# loopback here (~5 ms), so the delayed pass's wall time is mostly the network's and the undelayed
# pass cannot meet the bound the delayed one meets.
RTT_MS = 20
SEQ, VOCAB = 16, 1024  # random-llama at --seq-len 16: the output the client opens is SEQ x VOCAB
PLANNED = ("eager", "lazy", "optimal")


def every_policy(tmp_path_factory, parties: int) -> tuple[dict, str]:
    """One run of every policy, CrypTen's own (vanilla) too, audited and revealed (accuracy columns);
    with 2 parties on the emulated network (3PC: loopback, for the suite's time). Tests share it."""
    network = ["--network", f"rtt={RTT_MS},bw=10000"] if parties == 2 else []
    return run_json(tmp_path_factory.mktemp(f"pc{parties}"), parties + 1, *TINY, "--policy", ",".join((*PLANNED, "vanilla")),
                    "--time-limit", "5", "--audit", "--benchmark-reveal", *network)


@pytest.fixture(scope="session")  # not torn down when xdist interleaves another module
def two_party(tmp_path_factory):
    return every_policy(tmp_path_factory, 2)


@pytest.fixture(scope="session")  # not torn down when xdist interleaves another module
def three_party(tmp_path_factory):
    return every_policy(tmp_path_factory, 3)


@pytest.fixture(params=[2, 3], ids=["2pc", "3pc"])
def every_policy_run(request):
    return request.getfixturevalue({2: "two_party", 3: "three_party"}[request.param])


def rows_of(result: dict) -> dict:
    return {r["policy"]: r for r in result["rows"]}


@timed
@starts_processes
def test_parties_match_the_emulator_and_every_receipt_is_accounted_for(every_policy_run):
    """Owner, client, [helper] and a separate dealer: every policy, CrypTen's own (vanilla) too."""
    result, output = every_policy_run
    parties, rows = result["parties"], rows_of(result)
    # the accuracy columns pool the client's ids and logits with the weights: an insecure benchmark, and said so
    assert len(result["insecure"]) == 2 and output.count("INSECURE: ") == 2, output[-3000:]
    assert result["dealer"] == "separate" and set(rows) == {*PLANNED, "vanilla"}
    for policy, row in rows.items():
        assert row["parties"] == parties
        assert row["online_dealer_requests"] == 0, policy  # everything was dealt before the online phase
        assert row["dealt_requests"] > 0 and row["offline_bytes"] > 0, policy
        if policy == "vanilla":
            continue
        assert row["truncations_executed"] == row["planned_truncations"]
        # the emulator with the protocol's own truncation model bounds what MPC may differ by
        assert row["max_abs_diff_vs_emulator"] <= 2 * row["emulated_protocol_spread"] + 1e-9, policy
        # random weights have near-tied logits, and the protocol rounds stochastically (±1 LSB):
        # over 16 positions one or two may flip; the bit-level check is the emulator bound above
        assert row["top1_agreement_vs_float"] >= 0.8, policy
        # openings batched per round: measured rounds = the cost model's critical path (with the
        # operands a truncation's message carries) + the one opening of the output
        assert row["rounds"] == row["predicted"]["rounds_critical_path"] + 1, policy
        assert row["rounds"] < row["predicted"]["rounds_sequential"], policy
        assert row["predicted"]["fused_products"] > 0, policy  # products rode on truncations' openings
        # the weights' halves of their products were opened before the online phase, in one message
        assert row["weights_rounds"] == 1 and row["weights_bytes"] == row["predicted"]["weights_bytes"] > 0, policy
    # terms with two opened operands were carried (the dealer's b·b'·S^i) and matched the emulator
    assert rows["lazy"]["predicted"]["fused_pairs"] > 0
    assert rows["lazy"]["truncations_executed"] < rows["eager"]["truncations_executed"]
    assert rows["lazy"]["rounds"] < rows["eager"]["rounds"]
    audit = result["audit"]
    assert audit["findings"] == [] and audit["finding_count"] == 0, audit["findings"]
    # over MPI: set-up, statistics after each run, the revealed data (--benchmark-reveal), the audit's pool
    assert audit["mpi_receipts"] >= parties + 2 * len(rows) * (parties - 1)
    assert audit["output_receivers"] == [1]  # only the client
    assert audit["openings"] > 100 and audit["masks_used"] == audit["masks_dealt"]
    assert audit["opened_steps"] > audit["openings"]  # several steps in one message
    # local compute: each party's wall less its time inside communicator calls; the row's, the most of any party's
    for policy, row in rows.items():
        local = [p["wall_s"] - p["comm_s"] for p in row["per_party"]]
        assert 0 < max(local) <= row["wall_s"] and row["local_s"] == pytest.approx(max(local)), policy
    # start-up: from rank 0's launch to its first online pass, after its set-up lines (their ages ascending)
    ages = [age for age, _ in result["startup_phases"]]
    assert ages == sorted(ages) and 0 < ages[0] < result["startup_s"] < ages[-1], result["startup_phases"]
    assert any(msg.startswith("running eager") for _, msg in result["startup_phases"])
    assert re.search(r"start-up: \d+\.\d s from launch to the first online pass", output)


def output_opening_bytes(parties: int, rank: int) -> int:
    """CrypTen's count for the one opening of the SEQ x VOCAB output to the client (a reduce to
    rank 1): the client receives every other party's share, the others send one; 8 bytes an element."""
    return SEQ * VOCAB * 8 * ((parties - 1) if rank == 1 else 1)


@timed
@starts_processes
def test_each_partys_online_bytes_are_the_cost_models(every_policy_run):
    """What each party's communicator counted in the online phase is, to the byte, the cost model's
    bytes for the plan (``analysis.cost.plan_costs`` with the protocol profile: 16 bytes per opened
    element, carried operands included) plus the output's opening; the weights' halves, opened
    before, are the model's ``weights_bytes``."""
    result, _ = every_policy_run
    parties = result["parties"]
    for policy, row in rows_of(result).items():
        if policy == "vanilla":
            continue
        predicted = row["predicted"]["bytes"]
        assert len(row["per_party"]) == parties
        for rank, party in enumerate(row["per_party"]):
            assert party["bytes"] == predicted + output_opening_bytes(parties, rank), (policy, rank, party["bytes"], predicted)
        assert row["bytes"] == predicted + output_opening_bytes(parties, 1)  # the row: the busiest party, the client
        assert row["predicted"]["output_bytes"] == output_opening_bytes(parties, 1)  # the cost model's count of it


@timed
@starts_processes
def test_a_second_run_deals_the_cached_requests_without_the_untimed_pass(three_party, tmp_path):
    """The 3-party command again, for lazy alone: the owner's plan and its dealer requests come from the cache
    (``plan_cache``), every party deals them without the untimed recording pass, and the run is the first one's:
    the same rounds, bytes, truncations and dealt requests, nothing asked of the dealer online, the audit clean
    (every receipt accounted for, every dealt mask used)."""
    first, _ = three_party
    again, _ = run_json(tmp_path, 4, *TINY, "--policy", "lazy", "--time-limit", "5", "--audit", "--benchmark-reveal")
    said = [msg for _, msg in again["startup_phases"]]
    assert any(m.startswith("dealer requests of lazy: from cache") for m in said), said
    assert not any(m.startswith(("recording ", "converting ", "planning ")) for m in said), said
    row, before = rows_of(again)["lazy"], rows_of(first)["lazy"]
    assert [row[k] for k in ("rounds", "bytes", "truncations_executed", "dealt_requests", "planned_truncations")] == \
        [before[k] for k in ("rounds", "bytes", "truncations_executed", "dealt_requests", "planned_truncations")]
    assert row["online_dealer_requests"] == 0 and row["max_abs_diff_vs_emulator"] <= 2 * row["emulated_protocol_spread"] + 1e-9
    audit = again["audit"]
    assert audit["findings"] == [] and audit["masks_used"] == audit["masks_dealt"] > 0


@timed
@starts_processes
def test_vanilla_crypten_truncates_every_product_and_pays_its_protocols_rounds(two_party, three_party):
    """CrypTen's own run (no plan, no prediction) against counts made elsewhere: its truncations
    (CrypTen's integer divisions, counted as they happen) are the program's, the same with 2 and 3
    parties, and more than eager's plan makes (eager truncates every product, as CrypTen does;
    CrypTen's approximations add products of their own); every party counts the same rounds; and
    where 2 parties divide locally (no round), each 3-party division opens (the wraps protocol,
    one division at a time): 3PC takes at least one round more per division."""
    two, three = rows_of(two_party[0])["vanilla"], rows_of(three_party[0])["vanilla"]
    eager = rows_of(two_party[0])["eager"]
    assert two["truncations_executed"] == three["truncations_executed"] > eager["planned_truncations"]
    for row in (two, three):
        assert len({p["rounds"] for p in row["per_party"]}) == 1, row["per_party"]
        assert row["weights_rounds"] == 0 and row["weights_bytes"] == 0  # CrypTen opens the weights' halves online
    assert two["per_party"][0]["bytes"] == two["per_party"][1]["bytes"]  # 2PC: every opening is symmetric
    assert three["rounds"] >= two["rounds"] + three["truncations_executed"], (two["rounds"], three["rounds"])
    assert three["bytes"] > two["bytes"]


@timed
@starts_processes
def test_on_an_emulated_network_every_round_waits_and_the_prediction_holds(two_party):
    """2 parties, each communicator call of the online pass delayed by RTT_MS: the pass takes at
    least the cost model's rounds (+ the output's opening) times the delay, and the prediction —
    the same pass on loopback, measured just before, plus the network time of the cost model's
    rounds and bytes — is within 25 % of it. Negative control: that loopback pass, run with no
    delay injected, stays under the bound the delayed pass meets."""
    result, _ = two_party
    assert result["network"]["rtt_ms"] == RTT_MS
    for policy, row in rows_of(result).items():
        rounds = row["rounds"] if policy == "vanilla" else row["predicted"]["rounds"] + 1
        bound = rounds * RTT_MS / 1e3
        assert min(row["wall_s_runs"]) >= bound, (policy, row["wall_s_runs"], bound)
        assert row["loopback_s"] < bound, (policy, row["loopback_s"], bound)  # the delay made the difference
        if policy != "vanilla":
            assert 0.75 <= row["predicted"]["wall_s"] / row["wall_s"] <= 1.25, (policy, row["predicted"], row["wall_s"])


@starts_processes
@pytest.mark.parametrize("variant,finding", [
    ("unmasked", "is not the secret plus a fresh dealt mask"),
    ("unmasked-operand", "is not the secret plus a fresh dealt mask"),
    ("unmasked-beaver", "is not the secret plus a fresh dealt mask"),
    ("reused", "was already used by opening"),
])
def test_the_audit_fails_on_a_broken_opening(variant, finding, tmp_path):
    """Negative controls: the same run with the truncation's mask left out of its opening, the
    operand of a product it carries opened unmasked, or material handed out twice, must not pass
    the audit."""
    result, _ = run_json(tmp_path, 3, variant, *TINY, "--policy", "eager", "--audit", script=VARIANTS)
    audit = result["audit"]
    assert audit["finding_count"] > 0 and any(finding in f for f in audit["findings"]), audit["findings"][:5]


@starts_processes
def test_the_mpi_audit_flags_logits_sent_to_the_owner(tmp_path):
    """Negative control of the MPI audit: the old run_pi, whose statistics carried every party's
    logits to rank 0 (the client's revealed output among them), without --benchmark-reveal."""
    result, _ = run_json(tmp_path, 3, "gather-logits", *TINY, "--policy", "eager", "--audit", script=VARIANTS)
    audit = result["audit"]
    leak = "party 0 received over MPI from party 1 after set-up: 'logits' (tensor(16, 1024)) among its statistics"
    assert audit["finding_count"] == 1 and audit["findings"][0].startswith(leak), audit["findings"][:5]


PROMPT = "def add(a, b):\n    return a + b\n"  # 14 tokens: right-padded to 16
TEXT = ('import os\nimport sys\n\ndef main(argv):\n    """Print where this process runs, then every argument it '
        'was given."""\n    print(os.getcwd(), argv)\n')  # 67 tokens: its last 16 kept
TIMING = re.compile(r"\d+\.\d+|pid \d+")  # what may differ between two runs of the owner: timings, its pid


PROGRESS = re.compile(r"\[run_pi\]   ")  # a long pass's progress lines: printed or not as the machine's load has it


def owner_lines(output: str) -> list[str]:
    """What rank 0 printed (mpirun --tag-output), timings and pid masked, progress lines aside."""
    return [TIMING.sub("#", line.split(":", 1)[1]) for line in output.splitlines()
            if re.match(r"\[\d+,0\]<std(out|err)>:", line) and not PROGRESS.search(line)]


def masked_json(doc):
    """The owner's JSON with every float masked (timings, sizes in MB: numbers only, never ids), and the decimals
    in its strings as in its printed lines (the seconds of startup_phases' 'memory checked (2.7 s)')."""
    if isinstance(doc, dict):
        return {k: masked_json(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [masked_json(v) for v in doc]
    if isinstance(doc, str):
        return TIMING.sub("#", doc)
    return "#" if isinstance(doc, float) else doc


def measured_memory_masked(doc: dict) -> dict:
    """The owner's JSON with the memory its host had and its processes' peaks masked: measured, they
    vary from run to run as times do (the client's own peak never reaches the owner)."""
    peaks = {k: v and "#" for k, v in doc["memory"]["peak_rss_bytes"].items()}
    memory = {**doc["memory"], "available_bytes": "#", "peak_rss_bytes": peaks}
    rows = [{**row, "per_party": [{**p, "peak_rss_bytes": p["peak_rss_bytes"] and "#"} for p in row["per_party"]]}
            for row in doc["rows"]]
    return {**doc, "memory": memory, "rows": rows}


def client_run(tmp_path, name: str, owner_args: list[str], client_args: list[str]) -> tuple[dict, list[str]]:
    """One run with each rank's own arguments (mpirun's MPMD form): the owner's JSON and lines."""
    out = tmp_path / f"{name}.json"
    # the owner plans afresh each time: whether another test had already cached the plan is no business of this one
    common = [sys.executable, str(RUN_PI), *TINY, "--policy", "eager", "--no-plan-cache", "--json", str(out)]
    ranks = [[*common, *owner_args], [*common, *client_args], [*common, *owner_args]]  # owner, client, dealer
    cmd = [str(MPIRUN), "--oversubscribe", "--tag-output"]
    for k, argv in enumerate(ranks):
        cmd += ([":"] if k else []) + ["-n", "1", *argv]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), owner_lines(done.stdout + done.stderr)


@starts_processes
def test_the_client_alone_reads_its_input_and_holds_its_output(tmp_path):
    """The client's prompt is read, tokenized and fitted to --seq-len on its rank only, and only the
    client holds the result. Two runs with different inputs — a --prompt on the command line
    every rank gets (14 tokens, padded), and a --text file that exists only where the client's
    rank reads it (67 tokens, cut to its last 16; the owner and dealer are given a path that
    does not exist, so had they opened it, the run would fail) — leave the owner's JSON and
    everything it printed the same but for decimals (timings, sizes) and its pid: no token id,
    token count or text of the client's input reaches it; nor does a logit or an accuracy figure
    (no such key or column; the MPI audit shows the owner receives numbers only). Negative
    control, by hand: the same two runs with --benchmark-reveal fail here — the owner's rows gain
    the four accuracy keys, its table the vs_emu / top1 columns and an INSECURE line. The client's
    own output matches the float model, recomputed here."""
    import torch
    from transformers import AutoTokenizer

    from truncbridge.frontend.models import DEFAULT_MODEL_DIR, load_model
    from truncbridge.pi.results import ACCURACY, STATISTICS

    text, absent = tmp_path / "client-text.txt", tmp_path / "not-on-this-host.txt"
    text.write_text(TEXT)
    first, second = tmp_path / "client-a.json", tmp_path / "client-b.json"
    a, owner_a = client_run(tmp_path, "a", ["--prompt", PROMPT],
                            ["--prompt", PROMPT, "--client-output", str(first), "--client-output-logits"])
    b, owner_b = client_run(tmp_path, "b", ["--text", str(absent)], ["--text", str(text), "--client-output", str(second)])
    assert not absent.exists()
    # the owner: the same JSON and lines for both inputs, statistics only; the client's memory stays with it
    for run in (a, b):
        assert run["memory"]["peak_rss_bytes"]["client"] is None and run["rows"][0]["per_party"][1]["peak_rss_bytes"] is None
    assert masked_json(measured_memory_masked(a)) == masked_json(measured_memory_masked(b)) and owner_a == owner_b, \
        (owner_a, owner_b)
    assert a["insecure"] == [] and "INSECURE" not in "\n".join(owner_a)
    row = a["rows"][0]
    assert not set(ACCURACY) & set(row) and "logits" not in json.dumps(a)
    assert all(set(party) <= STATISTICS for party in row["per_party"])
    assert not any("top1" in line or "vs_emu" in line for line in owner_a)
    assert any(line.lstrip().startswith("eager") for line in owner_a)  # the table was printed, masked alike
    # the client: its input as it tokenized it, and its output close to the float model's
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    mine, cut = json.loads(first.read_text()), json.loads(second.read_text())
    ids = tokenizer(PROMPT)["input_ids"]
    assert mine["input_ids"] == ids and mine["tokens"] == len(ids) == 14 and mine["source"] == "--prompt"
    assert cut["input_ids"] == tokenizer(TEXT)["input_ids"][-16:] and cut["tokens"] == 16 and cut["dropped"] == 51
    assert "logits" not in cut["policies"]["eager"]  # only when asked
    model = load_model("random-llama").model
    with torch.no_grad():
        floats = model(torch.tensor([ids + [mine["pad_id"]] * 2])).logits[0, :14].double()
    got = mine["policies"]["eager"]
    logits = torch.tensor(got["logits"], dtype=torch.float64)
    assert logits.shape == floats.shape and (logits - floats).abs().max().item() < 0.01
    assert (torch.tensor(got["top1"]) == floats.argmax(-1)).double().mean().item() >= 0.8
    assert got["next_token"] == logits[-1].argmax().item() and got["top"][0]["text"] == tokenizer.decode([got["next_token"]])


@starts_processes
def test_the_owner_reads_the_client_tokens_when_it_deals(tmp_path):
    """The owner as dealer (--dealer owner-insecure) adds the mask it dealt to the first opening of
    one_hot @ embedding and recovers every token id. With the separate dealer the owner has no
    mask to add; a stronger attacker, who models the generator, is tests/test_attacks.py's.

    This run is also the audit's control (party 0 receives openings whose masks it dealt) and,
    one step at a time (--no-batch), the control for the batched rounds above: every step opens on
    its own, and the weights' halves go online with their products."""
    result, output = run_json(tmp_path, 2, "attack", *TINY, "--policy", "eager", "--audit", "--dealer", "owner-insecure",
                              "--benchmark-reveal", "--no-batch", script=VARIANTS)
    recovered, total = map(int, re.search(r"owner recovered (\d+) of (\d+) token ids", output).groups())
    assert recovered == total == 16
    audit = result["audit"]
    assert any("party 0 receives an opening whose mask it knows" in f for f in audit["findings"]), audit["findings"][:5]
    assert "INSECURE" in output  # the table says so
    row = result["rows"][0]
    assert result["batch"] is False and row["weights_rounds"] == 0 and row["weights_bytes"] == 0
    assert row["rounds"] == row["predicted"]["rounds_sequential"] + 1 > row["predicted"]["rounds_critical_path"] + 1
    assert row["max_abs_diff_vs_emulator"] <= 2 * row["emulated_protocol_spread"] + 1e-9


@timed
@starts_processes
def test_a_set_up_failure_on_one_rank_ends_every_rank(tmp_path):
    """Rank 1 (the client) cannot find its checkpoint: it says so, and every rank exits non-zero
    soon after, without waiting for a timeout (mpirun's MPMD form gives each rank its own args)."""
    good = [sys.executable, str(RUN_PI), *TINY, "--policy", "eager", "--timeout", "20"]
    bad = [sys.executable, str(RUN_PI), "--model", str(tmp_path / "missing-checkpoint"), "--seq-len", "16",
           "--policy", "eager", "--timeout", "20"]
    cmd = [str(MPIRUN), "--oversubscribe", "-n", "1", *good, ":", "-n", "1", *bad, ":", "-n", "1", *good]
    start = time.monotonic()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert time.monotonic() - start < 20 + 10 + 30  # the timeout + 10 s, + start-up and rank 0's planning
    assert "error: model directory not found" in done.stderr
    assert "stops: party 1 (client) failed during set-up" in done.stderr  # the others say who failed
    assert "Traceback" not in done.stderr


@starts_processes
def test_the_client_keeps_the_reason_its_input_failed(tmp_path):
    """A --text file the client cannot read stops every party; the client says why, the others
    only that it failed — not the path, which is the client's."""
    absent = tmp_path / "the-clients-own-file.txt"
    common = [sys.executable, str(RUN_PI), *TINY, "--policy", "eager", "--timeout", "20"]
    cmd = [str(MPIRUN), "--oversubscribe", "--tag-output", "-n", "1", *common, ":", "-n", "1", *common, "--text",
           str(absent), ":", "-n", "1", *common]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert re.search(r"\[\d+,1\]<stderr>: error: cannot read --text .*the-clients-own-file", output), output[-3000:]
    for rank in (0, 2):
        assert re.search(rf"\[\d+,{rank}\]<stderr>: truncbridge: party {rank} \(\w[\w ]*\) stops: party 1 \(client\) "
                         r"failed during set-up \(its reason stays with it\)", output), output[-3000:]
    assert not any("the-clients-own-file" in line for line in output.splitlines() if re.match(r"\[\d+,[02]\]", line))


@starts_processes
@timed
def test_a_dealing_longer_than_the_receive_timeout_is_waited_for(tmp_path):
    """Party 0 deals for 12 s before the timed pass (pi_variants' slow-dealing), with --timeout 8: the others
    wait for it (``Party.settle``) instead of giving up. Negative control, by hand: with ``settle`` a no-op
    the same run ends "party 1 (client) failed: RuntimeError: [...] Timed out waiting 8000ms for recv"."""
    result, _ = run_json(tmp_path, 3, "slow-dealing", *TINY, "--policy", "eager", "--timeout", "8", script=VARIANTS)
    assert result["rows"][0]["policy"] == "eager" and result["rows"][0]["rounds"] > 0


def test_a_plan_with_an_impossible_shift_is_refused_up_front():
    from truncbridge.backends.crypten.runner import PlanRunner
    from truncbridge.core.errors import UserError

    from crypten_party import plan_for

    plan = plan_for("eager")
    next(n for n in plan.program.nodes if n.op == "trunc").attrs["shift"] = 63
    with pytest.raises(UserError, match="truncates by 63 bits"):
        PlanRunner(plan)


SLOW_S = 1.0  # how long a survivor is held (SIGSTOP) around the signal: it notices last


def start_and_hurt(tmp_path, victim: int, sig: int, *mpi_flags: str, slow: int | None = None,
                   processes: int = 4) -> tuple[int, str, float]:
    """Start the parties and the dealer, send ``sig`` to rank ``victim`` once the first policy runs
    (with rank ``slow`` stopped from just before it until ``SLOW_S`` after); return (mpirun's exit
    status, everything printed, seconds from the signal to the end)."""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        cmd = mpirun(processes, *TINY, "--policy", "eager,lazy", "--repeat", "3", "--silence", "3")
        proc = subprocess.Popen([cmd[0], *mpi_flags, *cmd[1:]], env=ENV, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "running eager" not in log.read_text() or f"party {victim} (" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        pid = int(re.search(rf"party {victim} \([a-z ]+\) pid (\d+)", log.read_text()).group(1))
        if slow is not None:
            while f"party {slow} (" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            held = int(re.search(rf"party {slow} \([a-z ]+\) pid (\d+)", log.read_text()).group(1))
        time.sleep(0.5)
        if slow is not None:
            os.kill(held, signal.SIGSTOP)
        os.kill(pid, sig)
        hurt = time.monotonic()
        if slow is not None:
            time.sleep(SLOW_S)
            os.kill(held, signal.SIGCONT)
        status = proc.wait(timeout=90)
        return status, log.read_text(), time.monotonic() - hurt
    finally:
        if proc.poll() is None:
            proc.kill()
        if sig == signal.SIGSTOP and "pid" in locals():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if "held" in locals():
            try:
                os.kill(held, signal.SIGCONT)
            except ProcessLookupError:
                pass


@timed
@starts_processes
def test_a_killed_party_ends_the_others_with_a_message_naming_it(tmp_path):
    """Plain mpirun tears the survivors down itself ~0.2 s after a death (naming the dead rank);
    their watchdogs see the death in /proc within one heartbeat and name it too — on a loaded
    machine the teardown may still win for one of them, so one survivor's line is required."""
    status, log, seconds = start_and_hurt(tmp_path, 1, signal.SIGKILL)
    assert status != 0 and seconds < 60
    named = [s for s in (0, 2) if re.search(rf"party {s} \(\w[\w ]*\) stops: .*party 1 \(client\) was lost", log)]
    assert named, log[-3000:]
    assert len(named) == 2 or "process rank 1 with PID" in log, log[-3000:]


@timed
@starts_processes
def test_without_mpirun_teardown_every_survivor_names_the_killed_party(tmp_path):
    status, log, seconds = start_and_hurt(tmp_path, 1, signal.SIGKILL, "--enable-recovery")
    assert status != 0 and seconds < 60
    for survivor in (0, 2):
        assert re.search(rf"party {survivor} \(\w[\w ]*\) stops: .*party 1 \(client\) was lost", log), log[-3000:]


@timed
@starts_processes
def test_a_stalled_party_is_named_by_the_others_heartbeat_watch(tmp_path):
    """SIGSTOP: the party is alive but makes no progress; mpirun does not notice, the others do."""
    status, log, seconds = start_and_hurt(tmp_path, 2, signal.SIGSTOP)
    assert status != 0 and seconds < 60
    assert re.search(r"party [01] \(\w[\w ]*\) stops: party 2 \(helper\) was lost: no heartbeat", log), log[-3000:]


@timed
@starts_processes
@pytest.mark.parametrize("processes,slow", [(4, 2), (3, 1)])  # (4, None): the client-killed test above
def test_a_killed_party_is_named_without_mpirun_teardown(processes, slow, tmp_path):
    """With --enable-recovery mpirun leaves the survivors running: their own watchdogs end them.
    Not for long, though: Open MPI 5's launcher counts each non-zero exit twice, so once the
    dealer and the client have exited it takes the job for finished and SIGKILLs the helper. A
    helper slower to notice (``slow``: held stopped for a second around the kill, as a loaded
    machine may) still names the owner, because every party lingers after its own line. With two
    parties the dealer's exit alone would end the job: the dealer lingers too."""
    status, log, seconds = start_and_hurt(tmp_path, 0, signal.SIGKILL, "--enable-recovery", slow=slow, processes=processes)
    assert status != 0 and seconds < 60
    for survivor in range(1, processes - 1):
        assert re.search(rf"party {survivor} \(\w+\) stops: party 0 \(model owner\) was lost", log), log[-3000:]


@timed
@starts_processes
def test_a_killed_dealer_is_named_as_the_dealer(tmp_path):
    """The dealer dies between the timed runs: party 0, whose next dealing fails, names the dealer
    (not itself, not a computing peer), and the others stop on its report."""
    status, log, seconds = start_and_hurt(tmp_path, 3, signal.SIGKILL, "--enable-recovery")
    assert status != 0 and seconds < 60
    assert re.search(r"party 0 \(model owner\) stops: party 3 \(dealer\) was lost", log), log[-3000:]
    assert "party 0 (model owner) failed" not in log and "party 0 (model owner) was lost" not in log, log[-3000:]


BAD_ARGUMENTS = [
    (["--policy", "bogus"], "unknown policy bogus"),
    (["--seq-len", "1"], "--seq-len must be at least 2"),
    (["--network", "rtt=10"], "unknown network 'rtt=10': choose lan, mid, wan or rtt=MS,bw=MBIT"),
    (["--prompt", "x", "--text", "y"], "argument --text: not allowed with argument --prompt"),
    (["--client-output-logits"], "--client-output-logits needs --client-output PATH"),
    (["--model", "random:llama", "--preset", "gpt2-small"], "preset gpt2-small is a gpt2 model, not llama"),
]


@pytest.mark.parametrize("args,message", BAD_ARGUMENTS)
def test_bad_arguments_are_a_user_error(args, message):
    """Every rank parses the same arguments (``options.parse_args``); a bad one is a ``UserError``,
    which ``session.main`` prints as one line on rank 0 and turns into exit status 2 (the run below)."""
    from truncbridge.core.errors import UserError
    from truncbridge.pi.options import parse_args

    with pytest.raises(UserError, match=re.escape(message)):
        parse_args(args)


@starts_processes
@pytest.mark.parametrize("args,message", [BAD_ARGUMENTS[5], BAD_ARGUMENTS[3]], ids=["ours", "argparse"])
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    """Under mpirun: one line for all three ranks, exit status 2, no traceback — for a check of
    ours and for one of argparse's own (both raise the ``UserError`` the test above sees)."""
    done = subprocess.run(mpirun(3, *args), env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]  # rank 0 speaks for every party
    assert "Traceback" not in done.stderr


@starts_processes
def test_one_process_is_told_to_use_mpirun():
    done = subprocess.run([sys.executable, str(RUN_PI)], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "needs 2 or 3 computing parties and a dealer: mpirun -n 3 or -n 4" in done.stderr
    assert "got 1 process" in done.stderr


class FakeStore:
    """The three store calls the watchdog makes, on a dict."""

    def __init__(self):
        self.data: dict[str, object] = {}

    def set(self, key, value):
        self.data[key] = value

    def get(self, key):
        return str(self.data[key]).encode()

    def add(self, key, amount):
        self.data[key] = int(self.data.get(key, 0)) + amount
        return self.data[key]


def watchdog(rank: int, world: int, monkeypatch):
    from truncbridge.pi.party import Party

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    party = Party()
    party._store, party._tick = FakeStore(), time.monotonic()
    party._seen = {p: (0, party._tick) for p in range(world) if p != rank}
    return party


def test_the_watchdog_names_the_silent_peer_and_the_stalled_one(monkeypatch):
    party = watchdog(0, 3, monkeypatch)
    party._seen[2] = (5, party._tick - 10)  # party 2's counter last moved 10 s ago
    party._seen[1] = (9, party._tick - 0.1)
    assert party._lost_peers(5.0) == [2] and party._lost_peers(20.0) == []
    for p, calls in ((0, 812), (1, 812), (2, 640)):  # alive but stuck: fewest communicator calls
        party._store.set(f"truncbridge/calls/{p}", calls)
    assert party._least_progress() == 2
    party._store.set("truncbridge/calls/2", 812)
    assert party._least_progress() is None  # everyone level: nobody to blame


def test_sigterm_from_the_launcher_blames_no_healthy_peer(monkeypatch):
    """The launcher ends this party while every peer beats: say so, name nobody; a peer silent
    for a while is named."""
    party = watchdog(1, 3, monkeypatch)
    said = []

    def exit_(reason, post=True, linger=True):
        assert not post and not linger  # the launcher ends the others too
        said.append(reason)
        raise SystemExit

    monkeypatch.setattr(party, "_exit", exit_)
    monkeypatch.setattr(party, "_pids_here", {}, raising=False)
    with pytest.raises(SystemExit):
        party._terminated()
    assert said[-1] == "terminated by the launcher"
    party._seen[2] = (4, party._tick - 3.0)
    with pytest.raises(SystemExit):
        party._terminated()
    assert said[-1].startswith("terminated by the launcher after party 2 (helper) was lost")


def test_a_stopping_party_lingers_until_the_launchers_sigterm(monkeypatch):
    """After its line a party stays ``linger_s`` (an exit could get a slower survivor killed before
    it speaks), but no longer once the launcher's SIGTERM arrives."""
    party = watchdog(1, 3, monkeypatch)
    party.silence_s = 1.0
    party._signals, wakeup = os.pipe()
    start = time.monotonic()
    party._linger()
    assert 1.0 <= time.monotonic() - start < 2.0
    os.write(wakeup, b"\x0f")  # what the C-level handler writes on SIGTERM
    start = time.monotonic()
    party._linger()
    assert time.monotonic() - start < 0.5
    party._linger()  # the byte stays: the watchdog only looks, and ends the process itself
    assert time.monotonic() - start < 0.5
    os.close(party._signals)
    os.close(wakeup)


def test_a_party_that_cannot_print_its_line_still_ends(monkeypatch):
    """mpirun gone, stderr a broken pipe: the stop line raises, and the process must end all the
    same — the other thread may be asleep in ``_exit``, waiting for this one to end it."""
    from truncbridge.backends.crypten import roles as module
    from truncbridge.backends.crypten.roles import EXIT_LOST

    party, ended = watchdog(1, 3, monkeypatch), []

    def broken_pipe(*_):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(module, "announce_stop", broken_pipe)
    monkeypatch.setattr(module.os, "_exit", ended.append)
    with pytest.raises(BrokenPipeError):
        party._exit("party 0 (model owner) was lost: its process is gone", post=False, linger=False)
    assert ended == [EXIT_LOST]
