"""The docs' code blocks, run as written, and the outputs they show, regenerated (`make docs`).

    python launch/regen_docs.py            # rewrite every output block of README.md and docs/*.md
    python launch/regen_docs.py --check    # exit 1 if a committed output differs from a fresh run's
    python launch/regen_docs.py --only report   # only the outputs whose command contains "report"

Every fenced block in the docs says what it is by its info string:

* ```` ```python ```` runs alone as a script, in a fresh directory;
* ```` ```python file=NAME ```` is a program the doc then runs from a ```` ```sh ```` block (written to NAME);
* ```` ```sh ```` runs its commands with bash (``set -e``), in the doc's order, in one directory per doc;
  ```` ```sh skip="why" ```` is shown and not run, for the reason given;
* ```` ```text ```` is not code: a synopsis, a diagram, a schema.

An output is a ```` ```text ```` block between ``<!-- output: COMMAND; vary: REGEX -->`` and
``<!-- /output -->``: COMMAND's standard output, written here. Lines matching REGEX hold numbers
that vary from run to run (times): comparisons mask their numbers, and nothing else.

Commands run with the venv's ``bin`` first on ``PATH`` (its ``python``, ``truncbridge`` and
``mpirun``), from a directory that holds links to the repository's ``launch`` and ``protocols``.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("python", "sh", "text")
FENCE = re.compile(r"^```(.*)$")
OUTPUT = re.compile(r"^<!-- output: (?P<command>.+?)(?:; vary: (?P<vary>.+?))? -->$")
OUTPUT_END = "<!-- /output -->"
LINKED = ("launch", "protocols")  # what the docs' commands read from the repository


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    kind: str
    options: dict[str, str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


@dataclass
class Output:
    path: Path
    line: int
    command: str
    vary: str | None
    text: str
    span: tuple[int, int] = field(default=(0, 0))  # 0-based lines between the markers


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def parse_info(info: str, where: str) -> tuple[str, dict[str, str]]:
    """``python file=x.py`` -> ("python", {"file": "x.py"}); a fence must name what it holds."""
    words = shlex.split(info)
    if not words or words[0] not in KINDS:
        raise ValueError(f"{where}: a code block must say what it is ({', '.join(KINDS)}), not {info!r}")
    options = dict(w.split("=", 1) if "=" in w else (w, "") for w in words[1:])
    unknown = set(options) - {"file", "skip"}
    if unknown or (words[0] != "sh" and "skip" in options) or (words[0] != "python" and "file" in options):
        raise ValueError(f"{where}: options {sorted(options)} do not fit a {words[0]} block")
    if "skip" in options and not options["skip"].strip():
        raise ValueError(f"{where}: skip= needs its reason")
    return words[0], options


def blocks(path: Path, text: str | None = None) -> list[Block]:
    lines = (path.read_text() if text is None else text).split("\n")
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == "```"), None)
        if end is None:
            raise ValueError(f"{path.name}:{i + 1}: code block never closed")
        kind, options = parse_info(m.group(1), f"{path.name}:{i + 1}")
        found.append(Block(path, i + 1, kind, options, "\n".join(lines[i + 1:end]) + "\n"))
        i = end + 1
    return found


def outputs(path: Path, text: str | None = None) -> list[Output]:
    lines = (path.read_text() if text is None else text).split("\n")
    found = []
    for i, line in enumerate(lines):
        m = OUTPUT.match(line)
        if not m:
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == OUTPUT_END), None)
        if end is None:
            raise ValueError(f"{path.name}:{i + 1}: output marker without {OUTPUT_END}")
        body = lines[i + 1:end]
        inner = body[1:-1] if body[:1] == ["```text"] and body[-1:] == ["```"] else body
        found.append(Output(path, i + 1, m.group("command"), m.group("vary"), "\n".join(inner), (i + 1, end)))
    return found


def environment() -> dict[str, str]:
    venv_bin = ROOT / ".venv" / "bin"
    return {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "80",
            "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}  # more ranks than this machine's cores


def workdir(base: Path) -> Path:
    """A fresh directory the docs' relative paths (launch/run_pi.py, protocols/) work from."""
    base.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        if not (base / name).exists():
            (base / name).symlink_to(ROOT / name)
    return base


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout)


def run_block(block: Block, cwd: Path, timeout: float = 600) -> str | None:
    """Run one block as the doc says; None when it ran cleanly, else what went wrong."""
    if block.kind == "text" or "skip" in block.options:
        return None
    if block.kind == "python":
        script = cwd / block.options.get("file", f"block_{block.line}.py")
        script.write_text(block.text)
        if "file" in block.options:
            return None  # a program the doc runs from a later sh block
        done = run([sys.executable, script.name], cwd, timeout)
    else:
        done = run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd, timeout)
    if done.returncode == 0:
        return None
    said = done.stdout + done.stderr
    errors = "\n".join(line for line in said.split("\n") if "Error" in line)[:3000]  # a rank's error, wherever it is
    return f"{block.where} exited {done.returncode}:\n{block.text}\n{errors}\n...\n{said[-3000:]}"


def run_output(out: Output, cwd: Path, timeout: float = 600) -> str:
    done = run(["bash", "-e", "-o", "pipefail", "-c", out.command], cwd, timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{out.path.name}:{out.line}: `{out.command}` exited {done.returncode}: {done.stderr[-2000:]}")
    return "\n".join(line.rstrip() for line in done.stdout.rstrip("\n").split("\n"))


def masked(text: str, vary: str | None) -> list[str]:
    """The lines with the numbers of lines matching ``vary`` replaced by #, and widths (runs of
    spaces and rules, which follow the numbers' widths) made one."""
    pattern = re.compile(vary) if vary else None
    lines = []
    for line in text.split("\n"):
        if pattern and pattern.search(line):
            line = re.sub(r"\d+(?:[.,]\d+)*(?:e[-+]?\d+)?", "#", line)
        lines.append(re.sub(r"([ ─━])\1+", r"\1", line.rstrip()))
    return lines


def differences(out: Output, fresh: str) -> list[str]:
    """The lines of the committed output that a fresh run does not reproduce (masked as above)."""
    have, want = masked(out.text, out.vary), masked(fresh, out.vary)
    diff = [f"  doc: {a!r}\n  run: {b!r}" for a, b in zip(have, want) if a != b]
    if len(have) != len(want):
        diff.append(f"  the doc shows {len(have)} lines, the run printed {len(want)}")
    return diff


def rewrite(path: Path, fresh: dict[int, str]) -> None:
    """Put each fresh output (by its marker's line) between its markers, as a text block."""
    lines = path.read_text().split("\n")
    for out in sorted((o for o in outputs(path) if o.line in fresh), key=lambda o: -o.line):
        start, end = out.span
        lines[start:end] = ["```text", *fresh[out.line].split("\n"), "```"]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of rewriting; exit 1 on a difference")
    ap.add_argument("--only", default="", metavar="TEXT", help="only the outputs whose command contains TEXT")
    args = ap.parse_args(argv)
    failed = False
    with tempfile.TemporaryDirectory(prefix="truncbridge-docs-") as tmp:
        for path in doc_files():
            found = [o for o in outputs(path) if args.only in o.command]
            fresh = {o.line: run_output(o, workdir(Path(tmp) / path.stem)) for o in found}
            for out in found:
                diff = differences(out, fresh[out.line])
                failed |= bool(diff)
                if diff:
                    print(f"{path.name}:{out.line}: `{out.command}` prints otherwise\n" + "\n".join(diff))
            if found and not args.check:
                rewrite(path, fresh)
                print(f"{path.relative_to(ROOT)}: {len(found)} output(s) regenerated")
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
