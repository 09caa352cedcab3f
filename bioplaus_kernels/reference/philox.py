"""Reference Philox4x32-10, key derivation and conversions of csrc/common/philox.h, in plain Python ints
(``philox4x32_10``, ``make_key``) and vectorised over int64 tensors (``block_words``, ``words``,
``uniform_halves``, the conversions and ``philox``).

uint32 arithmetic on int64 tensors: a 32x32-bit product would overflow int64, so it is formed from two
32x16-bit halves (each < 2**48) and recombined exactly.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1
ROUNDS = 10


def philox4x32_10(ctr: Sequence[int], key: Sequence[int]) -> Tuple[int, int, int, int]:
    """Random123's philox4x32_10 on one counter (4 uint32) and key (2 uint32)."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
    return c0, c1, c2, c3


def mix64(z: int) -> int:
    """splitmix64 finaliser."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def make_key(seed: int, stream: int) -> Tuple[int, int]:
    """key64 = seed ^ mix64(stream) -> (lo32, hi32)."""
    k = seed ^ mix64(stream)
    return k & MASK32, k >> 32


def _mul_wide(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi32, lo32) of the constant a times the uint32 tensor b, exactly in int64."""
    p_lo = a * (b & 0xFFFF)           # < 2**48
    p_hi = a * (b >> 16)              # < 2**48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    return (p_hi >> 16) + (mid >> 32), mid & MASK32


def block_words(blocks: torch.Tensor, seed: int, stream: int = 0, step: int = 0) -> torch.Tensor:
    """The four words of each counter block in ``blocks`` (int64): counter (lo32(b), hi32(b), lo32(step),
    hi32(step)); int64 tensor [len(blocks), 4] of uint32 values."""
    k0, k1 = make_key(seed, stream)
    c0, c1 = blocks & MASK32, blocks >> 32
    c2 = torch.full_like(blocks, step & MASK32)
    c3 = torch.full_like(blocks, step >> 32)
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        hi0, lo0 = _mul_wide(M0, c0)
        hi1, lo1 = _mul_wide(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack([c0, c1, c2, c3], dim=1)


def words(numel: int, seed: int, stream: int = 0, step: int = 0) -> torch.Tensor:
    """The raw word of every element e < numel in the bits/normal mapping: block e // 4, word e % 4; int64
    tensor of numel uint32 values."""
    blocks = torch.arange((numel + 3) // 4, dtype=torch.int64)
    return block_words(blocks, seed, stream, step).reshape(-1)[:numel]


def uniform_halves(numel: int, seed: int, stream: int = 0, step: int = 0) -> torch.Tensor:
    """The 16-bit half-word of every element e < numel in the uniform mapping: e = 128 g + 16 s + l reads
    block 16 g + l, word s // 2, bits 16 (s % 2) .. 16 (s % 2) + 15; int64 tensor of numel values."""
    e = torch.arange(numel, dtype=torch.int64)
    lane, slot = e % 16, (e // 16) % 8
    blocks = (e // 128) * 16 + lane
    x = block_words(blocks, seed, stream, step).gather(1, (slot // 2).unsqueeze(1)).squeeze(1)
    return (x >> (16 * (slot % 2))) & 0xFFFF


def uniform_from_halves(h: torch.Tensor) -> torch.Tensor:
    """(h - 2**15) * 2**-15 in float32: exact."""
    return (h - (1 << 15)).to(torch.float32) * 2.0 ** -15


def normal_from_words(x: torch.Tensor) -> torch.Tensor:
    """Box-Muller on the word pairs (0, 1), (2, 3) of each block, in float32; x holds whole blocks."""
    x = x.view(-1, 2, 2)
    u1 = ((x[..., 0] >> 8) + 1).to(torch.float32) * 2.0 ** -24
    u2 = (x[..., 1] >> 8).to(torch.float32) * 2.0 ** -24
    r = torch.sqrt(-2.0 * torch.log(u1))
    t = u2 * torch.tensor(2 * math.pi, dtype=torch.float32)
    return torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=-1).reshape(-1)


def philox(shape: Sequence[int], seed: int, stream: int = 0, step: int = 0, distribution: str = "uniform",
           scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """CPU reference of bioplaus_kernels.ops.philox."""
    numel = math.prod(shape)
    if distribution == "uniform":
        v = uniform_from_halves(uniform_halves(numel, seed, stream, step))
    else:
        x = words(4 * ((numel + 3) // 4), seed, stream, step)  # whole blocks: a normal pair may straddle numel
        if distribution == "bits":
            return x[:numel].view(*shape)
        v = normal_from_words(x)[:numel]
    return (v * torch.tensor(scale, dtype=torch.float32)).to(dtype).view(*shape)
