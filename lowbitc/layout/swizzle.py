"""XOR swizzles (CuTe's Swizzle<B,M,S>) and layouts composed with them.

`Swizzle(bits, base, shift)` xors the `bits`-bit field at bit `base + max(shift,0)` into the
field at bit `base - min(shift,0)`; composed after a layout it spreads the rows of a shared
tile over memory banks. It is a bijection on every aligned block of `2**(bits+base+|shift|)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbitc.errors import UserArgumentError
from lowbitc.layout import inttuple as it
from lowbitc.layout.algebra import composition
from lowbitc.layout.layout import Layout, as_layout


@dataclass(frozen=True, slots=True)
class Swizzle:
    """offset -> offset ^ ((offset & yyy_mask) >> shift)."""

    bits: int
    base: int
    shift: int

    def __post_init__(self) -> None:
        for name in ("bits", "base", "shift"):
            if not it.is_int(getattr(self, name)):
                raise UserArgumentError(f"Swizzle: {name} must be an int, got "
                                        f"{getattr(self, name)!r}")
        if self.bits < 0 or self.base < 0 or abs(self.shift) < self.bits:
            raise UserArgumentError(
                f"Swizzle({self.bits},{self.base},{self.shift}): need bits >= 0, base >= 0 "
                f"and |shift| >= bits so the two bit fields do not overlap")

    @property
    def yyy_mask(self) -> int:
        return ((1 << self.bits) - 1) << (self.base + max(0, self.shift))

    @property
    def zzz_mask(self) -> int:
        return ((1 << self.bits) - 1) << (self.base - min(0, self.shift))

    def __call__(self, offset: int) -> int:
        y = offset & self.yyy_mask
        return offset ^ (y >> self.shift if self.shift >= 0 else y << -self.shift)

    def size(self) -> int:
        """The smallest block on which the swizzle is a permutation."""
        return 1 << (self.bits + self.base + abs(self.shift))

    def cosize(self) -> int:
        return self.size()

    def __str__(self) -> str:
        return f"Sw<{self.bits},{self.base},{self.shift}>"

    def compose(self, inner) -> ComposedLayout:
        """swizzle o inner."""
        return ComposedLayout(self, as_layout(inner, "composition"))


@dataclass(frozen=True, slots=True)
class ComposedLayout:
    """outer(inner(c)): a swizzle applied to a layout's indices."""

    outer: Swizzle
    inner: Layout

    @property
    def shape(self):
        return self.inner.shape

    def __call__(self, *coord: object) -> int:
        return self.outer(self.inner(*coord))

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> ComposedLayout:
        return ComposedLayout(self.outer, self.inner[i])

    def size(self) -> int:
        return self.inner.size()

    def cosize(self) -> int:
        return max(self(i) for i in range(self.size())) + 1

    def compose(self, b) -> ComposedLayout:
        """(outer o inner) o b = outer o (inner o b)."""
        return ComposedLayout(self.outer, composition(self.inner, b))

    def __str__(self) -> str:
        return f"{self.outer} o {self.inner}"

