"""Protocol randomness: one module draws it, from AES-256-CTR; CrypTen's own generators are
re-keyed; the dealer refuses requests the protocol never makes."""
from __future__ import annotations

import re
import tokenize
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from truncbridge.backends.crypten import randomness
from truncbridge.backends.crypten.material import MAX_ELEMENTS, expand, request_key, validate

ROOT = Path(__file__).resolve().parent.parent / "truncbridge"
# the protocol backend, the CrypTen-facing package and the run driver: every place a protocol value is drawn
PACKAGES = [ROOT / "backends" / "crypten", ROOT / "crypten", ROOT / "pi"]
DRAWS = re.compile(r"torch\.(randint|rand|randn|randperm|normal|bernoulli|multinomial)\b|manual_seed|torch\.Generator\b|"
                   r"^\s*import random\b|np\.random|numpy\.random|\.random_\(|\.uniform_\(")
# lines that draw no protocol value, each with why
NOT_PROTOCOL = {
    ("client.py", "torch.randint(0, vocab_size(loaded.model), (seq_len,), generator=torch.Generator().manual_seed(0))"):
        "the client's default input for a random-weight model: public, reproducible test data"}


def code_lines(path: Path) -> dict[int, str]:
    """Each line with its comments and string literals blanked: a docstring's usage example draws nothing."""
    lines = path.read_text().splitlines()
    with path.open("rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type in (tokenize.STRING, tokenize.COMMENT):
                (first, col0), (last, col1) = tok.start, tok.end
                for number in range(first, last + 1):
                    text = lines[number - 1]
                    a, b = (col0 if number == first else 0), (col1 if number == last else len(text))
                    lines[number - 1] = text[:a] + " " * (b - a) + text[b:]
    return dict(enumerate(lines, 1))


def randomness_outside(package: Path) -> list[str]:
    """Lines of the package, outside randomness.py, that draw random numbers another way."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "randomness.py":
            continue
        for number, code in code_lines(path).items():
            if DRAWS.search(code) and not any(path.name == f and text in code for f, text in NOT_PROTOCOL):
                found.append(f"{path.name}:{number}: {code.strip()}")
    return found


def test_no_protocol_randomness_outside_the_randomness_module(tmp_path):
    assert [line for package in PACKAGES for line in randomness_outside(package)] == []
    # negative control: the old dealer's draw is found
    (tmp_path / "material.py").write_text("x = torch.randint(-(2 ** 63), 2 ** 63 - 1, size, generator=gen)\n"
                                          "gen = torch.Generator()\ngen.manual_seed(seed)\n")
    assert len(randomness_outside(tmp_path)) == 3
    # a usage example in a docstring or a comment draws nothing; the code after it still counts
    (tmp_path / "material.py").write_text('"""Example:\n    torch.manual_seed(0)\n"""\n# torch.rand(3)\nx = torch.rand(3)\n')
    assert randomness_outside(tmp_path) == ["material.py:5: x = torch.rand(3)"]


def test_the_stream_is_aes_256_ctr_from_counter_zero():
    """Independent check: the keystream is AES-256 of the counter blocks 0, 1, 2, ... (ECB)."""
    key = randomness.new_key()
    s = randomness.AesCtrStream(key)
    got = s.ring((5, 3)).flatten()
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(8))
    want = torch.frombuffer(bytearray(blocks[:15 * 8]), dtype=torch.long)
    assert torch.equal(got, want)


def test_streams_are_reproducible_from_the_key_and_continuous_across_calls():
    key = randomness.new_key()
    big = randomness.stream(key).ring((3 * randomness.CHUNK_BYTES // 8 + 5,))  # crosses chunk boundaries
    s = randomness.stream(key)
    chunk = randomness.CHUNK_BYTES // 8
    pieces = torch.cat([s.ring((7,)), s.ring((chunk,)), s.ring((len(big) - 7 - chunk,))])
    assert torch.equal(big, pieces)
    other = randomness.stream(randomness.new_key()).ring((1000,))
    assert (other == big[:1000]).sum() == 0


def test_draws_look_uniform():
    s = randomness.stream(randomness.new_key())
    x = s.ring((1 << 16,))
    bytes_ = torch.frombuffer(bytearray(x.numpy().tobytes()), dtype=torch.uint8).long()
    counts = torch.bincount(bytes_, minlength=256).double()
    expected = bytes_.numel() / 256
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 400  # 255 degrees of freedom: p < 1e-8 above this
    for k in (1, 7, 62):
        b = s.bits((4096,), k)
        assert b.min() >= 0 and b.max() < 2 ** k and b.max() >= 2 ** (k - 1)  # the top bit is reached


def test_keys_are_256_bits_and_kinds_are_named():
    assert len(randomness.new_key()) == 32 and randomness.new_key() != randomness.new_key()
    with pytest.raises(ValueError, match="32 bytes"):
        randomness.stream(b"\0" * 8)
    with pytest.raises(ValueError, match="unknown generator"):
        randomness.select("pcg")
    assert randomness.selected() == "aes-ctr"


def test_the_insecure_variant_is_the_old_generator():
    """mt19937-insecure reproduces the draw truncbridge made before (so the attack tests attack it)."""
    key = randomness.new_key()
    randomness.select("mt19937-insecure")
    try:
        s = randomness.stream(key)
    finally:
        randomness.select("aes-ctr")
    old = torch.Generator()
    old.manual_seed(int.from_bytes(key[:8], "little", signed=True))
    assert torch.equal(s.ring((100,)), torch.randint(-(2 ** 63), 2 ** 63 - 1, (100,), generator=old))
    assert isinstance(randomness.stream(key), randomness.AesCtrStream)


def test_crypten_draws_refuse_a_torch_generator():
    with pytest.raises(TypeError, match="must come from backends/crypten/randomness.py"):
        randomness.ring_element((4,), generator=torch.Generator())
    with pytest.raises(ValueError, match="Z_2\\^64"):
        randomness.ring_element((4,), ring_size=2 ** 32, generator=randomness.stream(randomness.new_key()))
    s = randomness.stream(randomness.new_key())
    assert randomness.kbit_tensor(torch.Size([3, 2]), bitlength=1, generator=s).max() <= 1


VALID = [request_key("additive", (16, 64), (64, 32), "matmul", (), {}), request_key("square", (8,)),
         request_key("binary", (4, 1), (4, 3)), request_key("wraps", (5,)), request_key("B2A", (5,)),
         request_key("trunc", (4, 8), 16, ((4, 8), (8,)), 2, (1, 0), ((0, 1, 1),))]


@pytest.mark.parametrize("req", VALID, ids=lambda r: r[0])
def test_the_dealer_accepts_the_protocols_requests(req):
    validate(req)
    expand(req, {0: randomness.stream(randomness.new_key())})


@pytest.mark.parametrize("req, why", [
    (("exec", (1,)), "kind must be one of"),
    (request_key("additive", (2, 2), (2, 2), "__import__", (), {}), "a triple is for one of"),
    (request_key("additive", (2, 2), (2, 2), "conv2d", (), {}), "a triple is for one of"),
    (request_key("additive", (2, 2), (2, 2), "matmul", (1,), {}), "no further arguments"),
    (request_key("additive", (2, 3), (2, 3), "matmul", (), {}), "inconsistent sizes"),
    (request_key("square", (MAX_ELEMENTS + 1,)), "elements"),
    (request_key("square", (-1, 2)), "not a shape"),
    (request_key("square", ("2",)), "not a shape"),
    (request_key("trunc", (4,), 63, (), 1, (), ()), "shift 63"),
    (request_key("trunc", (4,), 16, ((4,),), 99, (1,), ()), "degrees"),
    (request_key("trunc", (4,), 16, ((4,),), 1, (1,), ((0, 5, 1),)), "pairs"),
    (request_key("wraps", (4,), 1), "takes 1 fields"),
])
def test_the_dealer_refuses_what_the_protocol_never_asks(req, why):
    with pytest.raises(ValueError, match=why):
        validate(req)
