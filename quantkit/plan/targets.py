"""Size targets (``--target-size``, ``--target-bpw``, ``auto@SIZE``) and the allocation of types to them.

Sizes: a number of bytes, or a number with K, M or G (powers of 1000, as llama.cpp's
``--split-max-size`` reads them and as ``100MB`` reads to most people), optionally followed by ``B``;
KiB, MiB, GiB are powers of 1024 (llama.cpp's log prints "model size = ... MiB"). Bits per weight:
8 x the bytes of all tensors / their elements, as llama.cpp reports it ("... BPW").

Allocation (:func:`allocate`): every group of tensors has a curve of options (type, bytes, measured
KLD increase); minimizing the summed KLD with the bytes within the budget is a multiple-choice
knapsack, solved exactly up to a rounding of the costs to 1/RESOLUTION of the budget (a Lagrangian
walk along each curve's convex hull, as llama.cpp PR 15550 does, misses the points inside the hull:
up to 8% more KLD on the random curves of tests/test_automix.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import QuantkitError

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(k|m|g|t|kib|mib|gib|tib)?b?", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
            "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_size(text, what: str = "--target-size") -> int:
    """Bytes of ``100MB``, ``1.5G``, ``98MiB`` or ``123456`` (K/M/G: 1000; KiB/MiB/GiB: 1024)."""
    match = _SIZE.fullmatch(str(text).strip())
    if not match:
        raise QuantkitError(f"{what} {text!r}: expected bytes or a size such as 100MB, 1.5G, 98MiB")
    size = int(float(match.group(1)) * _FACTORS[(match.group(2) or "").lower()])
    if size <= 0:
        raise QuantkitError(f"{what} {text!r}: the size must be positive")
    return size


@dataclass(frozen=True)
class Target:
    """A file size in bytes and/or bits per weight; the mix must fit both that are given."""

    size: int | None = None
    bpw: float | None = None

    def __post_init__(self):
        if self.size is None and self.bpw is None:
            raise QuantkitError("a target needs a size or bits per weight")
        if self.bpw is not None and not 0 < self.bpw <= 32:
            raise QuantkitError(f"--target-bpw {self.bpw}: expected bits per weight between 0 and 32")

    @property
    def label(self) -> str:
        parts = ([f"{self.size}B"] if self.size is not None else []) + \
            ([f"{self.bpw:g}bpw"] if self.bpw is not None else [])
        return "+".join(parts)


def parse_target(text: str) -> Target:
    """``4.5bpw`` (bits per weight) or a size (``100MB``): the part after ``auto@``."""
    raw = str(text).strip()
    if raw.lower().endswith("bpw"):
        try:
            return Target(bpw=float(raw[:-3]))
        except ValueError:
            raise QuantkitError(f"auto@{raw}: expected bits per weight such as 4.5bpw") from None
    return Target(size=parse_size(raw, "auto@"))


@dataclass(frozen=True)
class Option:
    """One choice for a group: its type, its file bytes (each tensor padded to the alignment), its
    tensor bytes (unpadded, what bits per weight count) and the KLD it adds."""

    qtype: str
    file_bytes: int
    tensor_bytes: int
    kld: float


RESOLUTION = 4000  # budget units of the knapsack: each option's bytes rounded up to 1/RESOLUTION of the budget


def allocate(groups: Sequence[Sequence[Option]], fixed_file_bytes: int, fixed_tensor_bytes: int, n_elements: int,
             target: Target) -> list[int]:
    """The option index per group minimizing the summed KLD with the file within ``target``.

    ``fixed_file_bytes``: header, metadata and the tensors no group holds (padded);
    ``fixed_tensor_bytes``: those tensors' unpadded bytes; ``n_elements``: all tensors' elements.
    A multiple-choice knapsack solved by dynamic programming over RESOLUTION budget units (costs
    rounded up, so the solution fits in bytes), then the bytes the rounding left are spent on the
    single upgrades that save the most KLD.
    """
    file_room = None if target.size is None else target.size - fixed_file_bytes
    tensor_room = None if target.bpw is None else int(target.bpw * n_elements // 8) - fixed_tensor_bytes
    used_file = sum(min(o.file_bytes for o in g) for g in groups)
    used_tensor = sum(min(o.tensor_bytes for o in g) for g in groups)
    if (file_room is not None and used_file > file_room) or (tensor_room is not None and used_tensor > tensor_room):
        smallest = (f"{used_file + fixed_file_bytes:,} bytes" if target.size is not None
                    else f"{8 * (used_tensor + fixed_tensor_bytes) / n_elements:.3f} bpw")
        raise QuantkitError(f"target {target.label}: the smallest mix of the candidate types is {smallest}")

    def units(o: Option) -> int:
        need = 0
        if file_room is not None:
            need = max(need, -(-o.file_bytes * RESOLUTION // max(file_room, 1)))
        if tensor_room is not None:
            need = max(need, -(-o.tensor_bytes * RESOLUTION // max(tensor_room, 1)))
        return need

    best = np.zeros(RESOLUTION + 1)  # least summed KLD of the groups so far within s units
    picks = []
    for g in groups:
        new, pick = np.full(RESOLUTION + 1, np.inf), np.full(RESOLUTION + 1, -1)
        for i, o in enumerate(g):
            u = units(o)
            if u > RESOLUTION:
                continue
            candidate = np.full(RESOLUTION + 1, np.inf)
            candidate[u:] = best[:RESOLUTION + 1 - u] + o.kld
            better = candidate < new
            new[better], pick[better] = candidate[better], i
        best = new
        picks.append(pick)
    choice = [0] * len(groups)
    if np.isfinite(best[RESOLUTION]):
        s = RESOLUTION
        for g in range(len(groups) - 1, -1, -1):
            choice[g] = int(picks[g][s])
            s -= units(groups[g][choice[g]])
    else:  # rounding up left no room: start from the smallest options, which fit in bytes
        choice = [min(range(len(g)), key=lambda i, g=g: (g[i].file_bytes, g[i].kld)) for g in groups]
    used_file = sum(g[c].file_bytes for g, c in zip(groups, choice))
    used_tensor = sum(g[c].tensor_bytes for g, c in zip(groups, choice))
    while True:  # what rounding left: the single upgrade that saves the most KLD and fits
        best_step = None
        for gi, g in enumerate(groups):
            now = g[choice[gi]]
            for i, o in enumerate(g):
                saved = now.kld - o.kld
                if (saved > 0 and (file_room is None or used_file + o.file_bytes - now.file_bytes <= file_room)
                        and (tensor_room is None or used_tensor + o.tensor_bytes - now.tensor_bytes <= tensor_room)
                        and (best_step is None or saved > best_step[0])):
                    best_step = (saved, gi, i)
        if best_step is None:
            return choice
        _, gi, i = best_step
        used_file += groups[gi][i].file_bytes - groups[gi][choice[gi]].file_bytes
        used_tensor += groups[gi][i].tensor_bytes - groups[gi][choice[gi]].tensor_bytes
        choice[gi] = i
