"""Every code block of README.md and docs/*.md runs as written, and every output they show is what
its command prints now (``launch/regen_docs.py`` says how blocks declare what they are).

Fast: extraction, links, and the ```python blocks that run alone (but those that load a model). Slow:
each doc's ```sh blocks and the programs they start (mpirun among them), in the doc's order, and the
regenerated outputs."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("regen_docs", ROOT / "launch" / "regen_docs.py")
docs = sys.modules["regen_docs"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(docs)

DOCS = docs.doc_files()
ALONE = [b for p in DOCS for b in docs.blocks(p) if b.kind == "python" and "file" not in b.options]
RUNS = [p for p in DOCS if any(b.kind == "sh" and "skip" not in b.options for b in docs.blocks(p))]
OUTPUTS = [o for p in DOCS for o in docs.outputs(p)]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_docs_hold_blocks_of_every_kind():
    found = [b for p in DOCS for b in docs.blocks(p)]
    kinds = {(b.kind, "skip" in b.options, "file" in b.options) for b in found}
    assert {("python", False, False), ("python", False, True), ("sh", False, False), ("sh", True, False),
            ("text", False, False)} <= kinds
    assert len(OUTPUTS) >= 2 and all(o.text.strip() for o in OUTPUTS), "an output block is empty: run make docs"


def test_every_program_a_doc_writes_is_run_by_that_doc():
    for path in DOCS:
        found = docs.blocks(path)
        commands = "\n".join(b.text for b in found if b.kind == "sh" and "skip" not in b.options)
        for b in found:
            if "file" in b.options:
                assert re.search(rf"python {re.escape(b.options['file'])}\b", commands), f"{b.where} is never run"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in path.read_text().split("\n") if re.match(r"^#+ ", line)}


def test_links_stay_inside_the_repository_and_resolve():
    for path in DOCS:
        text = path.read_text()
        assert "../shared" not in text and "/work/" not in text, f"{path.name} names a file outside the repository"
        for target in LINK.findall(text):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{path.name}: broken link {target}"
            assert not anchor or anchor in _anchors(resolved), f"{path.name}: no heading for #{anchor} in {file}"


def _alone(block):
    """A block that loads a model converts it too (about 20 s of CPU): slow."""
    return pytest.param(block, id=block.where, marks=[pytest.mark.slow] if "load_model(" in block.text else [])


@pytest.mark.slow  # each block in a fresh interpreter, most on a model
@pytest.mark.parametrize("block", [_alone(b) for b in ALONE])
def test_python_block_runs_alone(block, tmp_path):
    assert docs.run_block(block, docs.workdir(tmp_path)) is None


BROKEN = """# A doc

```python
x = torch.zeros(3)       # torch never imported
```

```sh
ls launch/no_such_script.py
```

<!-- output: echo "rows 12"; echo "took 0.51 s"; vary: ^took -->
```text
rows 13
took 9.99 s
```
<!-- /output -->
"""


def test_a_broken_doc_fails(tmp_path):
    """Negative controls: a snippet that raises, a command that fails, an output that is not what
    its command prints (a masked time may differ, a count may not), a block that says nothing."""
    doc = tmp_path / "broken.md"
    doc.write_text(BROKEN)
    py, sh, _ = docs.blocks(doc)  # and the output block
    cwd = docs.workdir(tmp_path / "run")
    assert "NameError: name 'torch' is not defined" in docs.run_block(py, cwd)
    assert "No such file or directory" in docs.run_block(sh, cwd)
    out, = docs.outputs(doc)
    fresh = docs.run_output(out, cwd)
    assert fresh == "rows 12\ntook 0.51 s"
    assert docs.differences(out, fresh) == ["  doc: 'rows 13'\n  run: 'rows 12'"]
    assert docs.differences(out, "rows 13\ntook 0.51 s") == []  # only the time differs: masked
    with pytest.raises(ValueError, match="must say what it is"):
        docs.blocks(doc, "```\nls\n```\n")
    with pytest.raises(ValueError, match="needs its reason"):
        docs.blocks(doc, '```sh skip=""\nls\n```\n')


@pytest.mark.slow  # model captures and real party processes
@pytest.mark.parametrize("path", RUNS, ids=[p.name for p in RUNS])
def test_commands_of_a_doc_run_in_order(path, tmp_path):
    cwd = docs.workdir(tmp_path)
    for block in docs.blocks(path):
        if block.kind != "python" or "file" in block.options:  # python run alone: the fast test
            failure = docs.run_block(block, cwd)
            assert failure is None, failure


@pytest.mark.slow  # each runs a command on a model
@pytest.mark.parametrize("out", OUTPUTS, ids=[f"{o.path.name}:{o.command.split(';')[0]}" for o in OUTPUTS])
def test_output_shown_is_what_the_command_prints(out, tmp_path):
    diff = docs.differences(out, docs.run_output(out, docs.workdir(tmp_path)))
    assert not diff, f"{out.path.name}:{out.line}: run `make docs`\n" + "\n".join(diff)
