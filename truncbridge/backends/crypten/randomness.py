"""Every random value of the protocol comes from here: AES-256-CTR keyed with 256 bits from the OS.

Whoever can predict a mask reads what it masks, and every party knows the code and may compute
anything from what it sees. torch's generator (MT19937, which ``manual_seed`` keys with 32 bits on
CPU) is cloned from 624 of its outputs, and one opening of the client's one-hot input hands the
owner thousands of the client's raw draws. So each *stream* here is AES-256 in counter mode
(``cryptography``, i.e. OpenSSL) under a fresh key from ``secrets``: a party that sees any number of
its outputs learns nothing of the others without the key.

Who holds which key:

* the dealer and each computing party share one key per party (``dealing.py``): that party's dealt
  shares and its part of every mask (``material.expand``);
* CrypTen's own generators (``crypten.generators``: "prev"/"next" shared with the neighbouring
  parties for pseudo-random zero shares — the input and weight sharing —, "local", "global") are
  re-keyed by ``secure_crypten`` right after ``crypten.init()``, and CrypTen's two drawing
  functions are replaced by ones that accept only these streams (a torch generator is refused).

No other module of the package draws protocol randomness (``tests/test_randomness.py`` scans for
``torch.randint``, ``torch.rand*``, ``manual_seed`` and ``torch.Generator``).

``select("mt19937-insecure")`` brings back the generator truncbridge used before (torch's MT19937
seeded with the key's first 8 bytes, drawn with ``torch.randint``): a named insecure variant kept
only so the attack tests can show what it gave away.
"""
from __future__ import annotations

import secrets

import torch

KEY_BYTES = 32  # AES-256
KINDS = ("aes-ctr", "mt19937-insecure")
CHUNK_BYTES = 1 << 20  # keystream is written straight into the tensor, this many bytes at a time
_ZEROS = memoryview(bytes(CHUNK_BYTES))
_selected = "aes-ctr"


def select(kind: str) -> None:
    """Choose this process's generator kind (before any stream is made)."""
    global _selected
    if kind not in KINDS:
        raise ValueError(f"unknown generator {kind!r}: choose {' or '.join(KINDS)}")
    _selected = kind


def selected() -> str:
    return _selected


def new_key() -> bytes:
    """A fresh key from the operating system's generator."""
    return secrets.token_bytes(KEY_BYTES)


def stream(key: bytes):
    """The selected kind of stream under ``key`` (the same key gives the same stream everywhere)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a stream key has {KEY_BYTES} bytes, got {len(key)}")
    return AesCtrStream(key) if _selected == "aes-ctr" else Mt19937Insecure(key)


class AesCtrStream:
    """AES-256-CTR's keystream read as int64: uniform over Z_2^64, reproducible from the key."""

    kind = "aes-ctr"

    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._keystream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def ring(self, size) -> torch.Tensor:
        """Uniform ring elements of Z_2^64 (as signed int64)."""
        out = torch.empty(tuple(size), dtype=torch.long)
        if out.numel():
            view = memoryview(out.numpy()).cast("B")
            for start in range(0, len(view), CHUNK_BYTES):
                end = min(len(view), start + CHUNK_BYTES)
                self._keystream.update_into(_ZEROS[:end - start], view[start:end])  # 0 XOR keystream
        return out

    def bits(self, size, k: int) -> torch.Tensor:
        """Uniform integers in [0, 2^k)."""
        return self.ring(size) if k == 64 else self.ring(size) & ((1 << k) - 1)


class Mt19937Insecure:
    """INSECURE, tests only: the generator truncbridge used before (torch's MT19937; ``manual_seed``
    keeps 32 bits of the seed on CPU, and 312 int64 draws give away the whole state)."""

    kind = "mt19937-insecure"

    def __init__(self, key: bytes):
        self._gen = torch.Generator()
        self._gen.manual_seed(int.from_bytes(key[:8], "little", signed=True))

    def ring(self, size) -> torch.Tensor:
        return torch.randint(-(2 ** 63), 2 ** 63 - 1, tuple(size), generator=self._gen, dtype=torch.long)

    def bits(self, size, k: int) -> torch.Tensor:
        return self.ring(size) if k == 64 else torch.randint(0, 2 ** k, tuple(size), generator=self._gen, dtype=torch.long)


# -- keys over the parties' links ------------------------------------------------------------------
def send_key(key: bytes, dst: int, group):
    """Start sending ``key`` to ``dst`` (torch.distributed); returns the request to wait on."""
    import torch.distributed as dist

    return dist.isend(torch.frombuffer(bytearray(key), dtype=torch.uint8), dst=dst, group=group)


def recv_key(src: int, group) -> bytes:
    import torch.distributed as dist

    buf = torch.empty(KEY_BYTES, dtype=torch.uint8)
    dist.irecv(buf, src=src, group=group).wait()
    return bytes(buf.numpy())


# -- CrypTen's own generators ------------------------------------------------------------------------
_CRYPTEN_DRAWERS = ("crypten.common.rng", "crypten.mpc.primitives.arithmetic", "crypten.mpc.primitives.binary",
                    "crypten.mpc.provider.tfp_provider", "crypten.mpc.provider.ttp_provider")


def secure_crypten(crypten) -> None:
    """On a computing party right after ``crypten.init()``: re-key CrypTen's generators with fresh
    256-bit keys (CrypTen's own exchange: "next" goes to the next party and comes back as its
    "prev"; "global" from party 0) and make its drawing functions use our streams. Every computing
    party calls this at the same point."""
    import importlib

    import torch.distributed as dist

    comm = crypten.communicator.get()
    rank, world, group = comm.get_rank(), comm.get_world_size(), comm.main_group
    keys = {"next": new_key(), "local": new_key(), "global": new_key()}
    if world > 1:
        sending = [send_key(keys["next"], (rank + 1) % world, group)]
        keys["prev"] = recv_key((rank - 1) % world, group)
        if rank == 0:
            sending += [send_key(keys["global"], p, group) for p in range(1, world)]
        else:
            keys["global"] = recv_key(0, group)
        for request in sending:
            request.wait()
        dist.barrier(group=group)
    else:
        keys["prev"] = keys["next"]
    for name, by_device in crypten.generators.items():
        shared = stream(keys[name])  # one stream for every device: a draw on one never repeats on another
        for device in list(by_device) or [torch.device("cpu")]:
            by_device[device] = shared
    for module in _CRYPTEN_DRAWERS:
        module = importlib.import_module(module)
        module.generate_random_ring_element = ring_element
        module.generate_kbit_random_tensor = kbit_tensor


def _stream_for(generator, device):
    import crypten

    if generator is None:
        device = torch.device(device or "cpu")
        generator = crypten.generators["local"][device]
    if not hasattr(generator, "ring"):
        raise TypeError(f"protocol randomness must come from backends/crypten/randomness.py, not {type(generator).__name__}")
    return generator


def _placed(values: torch.Tensor, device):
    if device is None or torch.device(device).type == "cpu":
        return values
    from crypten.cuda import CUDALongTensor

    return CUDALongTensor(values.to(device))


def ring_element(size, ring_size=2 ** 64, generator=None, device=None, **kwargs):
    """CrypTen's ``generate_random_ring_element``, drawn from a stream of this module."""
    if ring_size != 2 ** 64:
        raise ValueError(f"CrypTen's ring is Z_2^64; asked for a ring of size {ring_size}")
    return _placed(_stream_for(generator, device).ring(_size(size)), device)


def kbit_tensor(size, bitlength=None, generator=None, device=None, **kwargs):
    """CrypTen's ``generate_kbit_random_tensor``, drawn from a stream of this module."""
    return _placed(_stream_for(generator, device).bits(_size(size), bitlength or 64), device)


def _size(size) -> tuple:
    return tuple(size) if isinstance(size, (tuple, list, torch.Size)) else (size,)
