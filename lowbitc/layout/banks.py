"""Shared-memory bank conflicts of one warp access, counted the way the hardware serves it.

Shared memory has 32 banks of 4 bytes; bank = (byte address // 4) % 32. A warp request is
served in phases, and within a phase each wavefront can read or write one 4-byte word per bank
(lanes touching the same word share it: a broadcast). So a phase needs as many wavefronts as
the largest number of distinct words any one bank holds among its lanes' bytes:
- 1-, 2- and 4-byte accesses: one phase of all 32 lanes (lanes in one 4-byte word share it);
- 8-byte accesses: two phases, lanes 0-15 and 16-31;
- 16-byte accesses (LDS.128, STS.128, cp.async 16 B into shared): four phases of 8 lanes;
- ldmatrix .x1/.x2/.x4: one phase per 8x8 matrix, the 8 lanes 8m..8m+7 that supply its rows
  (16 bytes each); other lanes' addresses are ignored.
A conflict-free access takes one wavefront per phase (more only if a phase moves more than
128 bytes, which these widths never do). This is the model Nsight Compute's
`l1tex__data_bank_conflicts_pipe_lsu_mem_shared` counts against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lowbitc.errors import UserArgumentError

BANKS = 32
BANK_BYTES = 4
WARP = 32
_PHASE_LANES = {1: 32, 2: 32, 4: 32, 8: 16, 16: 8}


@dataclass(frozen=True, slots=True)
class BankReport:
    """Wavefronts a warp access takes, the fewest it could take, and per-phase counts."""

    wavefronts: int
    ideal: int
    per_phase: tuple[int, ...]

    @property
    def conflicts(self) -> int:
        """Extra wavefronts caused by bank conflicts (0 when conflict-free)."""
        return self.wavefronts - self.ideal


def _phase_wavefronts(addresses: Sequence[int], width: int) -> int:
    words_in_bank: dict[int, set[int]] = {}
    for addr in addresses:
        for word in range(addr // BANK_BYTES, (addr + width - 1) // BANK_BYTES + 1):
            words_in_bank.setdefault(word % BANKS, set()).add(word)
    return max((len(w) for w in words_in_bank.values()), default=0)


def _check(addresses: Sequence[int | None], width: int, what: str) -> list[int | None]:
    if width not in _PHASE_LANES:
        raise UserArgumentError(f"{what}: width must be 1, 2, 4, 8 or 16 bytes, got {width!r}")
    lanes = list(addresses)
    if len(lanes) != WARP:
        raise UserArgumentError(f"{what}: addresses must give one entry per lane (32, None for "
                                f"an inactive lane), got {len(lanes)}")
    for lane, addr in enumerate(lanes):
        if addr is not None and (int(addr) < 0 or int(addr) % width):
            raise UserArgumentError(f"{what}: lane {lane}'s byte address {addr} is not a "
                                    f"non-negative multiple of the access width {width}")
    return [None if a is None else int(a) for a in lanes]


def _report(phases: list[list[int]], width: int) -> BankReport:
    counts = tuple(_phase_wavefronts(p, width) for p in phases)
    ideal = sum(1 for p in phases if p)
    return BankReport(sum(counts), ideal, counts)


def warp_access(addresses: Sequence[int | None], width: int) -> BankReport:
    """Wavefronts of one warp-wide shared load or store of `width` (1, 2, 4, 8, 16) bytes per
    lane;
    `addresses` are the 32 lanes' byte addresses (None: the lane does not take part)."""
    lanes = _check(addresses, width, "warp_access")
    n = _PHASE_LANES[width]
    phases = [[a for a in lanes[p : p + n] if a is not None] for p in range(0, WARP, n)]
    return _report(phases, width)


def ldmatrix_access(addresses: Sequence[int | None], num: int) -> BankReport:
    """Wavefronts of ldmatrix .m8n8.x{num}: lanes 8m..8m+7 give the 16-byte rows of matrix m
    (one phase each); addresses of lanes 8*num.. are ignored."""
    if num not in (1, 2, 4):
        raise UserArgumentError(f"ldmatrix_access: num must be 1, 2 or 4, got {num!r}")
    lanes = list(addresses)
    lanes = _check(lanes[: 8 * num] + [None] * (WARP - 8 * num), 16, "ldmatrix_access")
    phases = []
    for m in range(num):
        rows = lanes[8 * m : 8 * m + 8]
        if any(a is None for a in rows):
            raise UserArgumentError(f"ldmatrix_access: lanes {8 * m}..{8 * m + 7} must all give "
                                    f"a row address of matrix {m}")
        phases.append(rows)
    return _report(phases, 16)
