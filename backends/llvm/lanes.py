"""Reading codes stored in the lanes packing (lowbitc.repack, docs/packing.md).

`unpack_lanes` decodes 32 consecutive codes of a row into a <32 x i32> vector: per bit plane,
one vector load of the plane's words (a 128- or 256-bit load is repeated across the 16 lanes
by the load itself), then per 16-code half a shift and a mask, and an `or` to join planes;
no lane reads another lane's word. `read_lanes` is the scalar read of one code (edges and
unaligned windows); `window_ok` tells when a window can take the vector path.
"""

from __future__ import annotations

from lowbitc.backends.llvm.emitter import Emitter
from lowbitc.repack import LANES, Packing, Plane


def _vec(items) -> str:
    return "<" + ", ".join(f"i32 {v}" for v in items) + ">"


def _plane_words(
    em: Emitter, ptr: str, base: str, pl: Plane, packing: Packing, t: int
) -> tuple[str, int, bool]:
    """The <16 x i32> words feeding sub-vector t of a step from plane `pl`, already moved by
    each lane's own offset (the same for every t: LLVM computes it once per step), and the
    shift left to reach sub-vector t (the same in every lane: an immediate)."""
    v16 = f"<{LANES} x i32>"
    tcount = packing.step // LANES
    if tcount * pl.width <= 32:
        n = pl.words
        first = pl.offset
        lane_shift = [(lane // n) * tcount * pl.width for lane in range(LANES)]
        shift = t * pl.width
    else:
        n = LANES
        per_word = 32 // pl.width
        first = pl.offset + LANES * (t // per_word)
        lane_shift = [0] * LANES
        shift = (t % per_word) * pl.width
    idx = em.val(f"add i64 {base}, {first}")
    p = em.val(f"getelementptr inbounds i32, ptr {ptr}, i64 {idx}")
    words = em.val(f"load <{n} x i32>, ptr {p}, align 4")
    if n != LANES:
        words = em.val(
            f"shufflevector <{n} x i32> {words}, <{n} x i32> poison, "
            f"{v16} {_vec(lane % n for lane in range(LANES))}"
        )
    if any(lane_shift):
        words = _shift(em, words, _vec(lane_shift), rotate=bool(pl.shift))
    return words, shift, min(lane_shift) + shift + pl.width < 32


def _shift(em: Emitter, v: str, amount: str, rotate: bool) -> str:
    v16 = f"<{LANES} x i32>"
    if not rotate:
        return em.val(f"lshr {v16} {v}, {amount}")
    em.declare(f"declare {v16} @llvm.fshr.v{LANES}i32({v16}, {v16}, {v16})")
    return em.val(f"call {v16} @llvm.fshr.v{LANES}i32({v16} {v}, {v16} {v}, {v16} {amount})")


def _sub_vector(em: Emitter, ptr: str, base: str, packing: Packing, t: int, clean: bool) -> str:
    """Codes 16t .. 16t+15 of the step whose first word is `base`, as <16 x i32>. The first
    plane is shifted down and masked; a higher plane is rotated so that its bits land at
    their place in the code (one op, no shift back), masked and or-ed in."""
    v16 = f"<{LANES} x i32>"
    code = None
    for pl in packing.planes:
        words, shift, masked = _plane_words(em, ptr, base, pl, packing, t)
        mask = _vec([((1 << pl.width) - 1) << pl.shift] * LANES)
        if pl.shift:
            v = words
            if (shift - pl.shift) % 32:
                v = _shift(em, v, _vec([(shift - pl.shift) % 32] * LANES), rotate=True)
            v = em.val(f"and {v16} {v}, {mask}")
            code = em.val(f"or disjoint {v16} {code}, {v}")
            continue
        v = words
        if shift:
            v = em.val(f"lshr {v16} {v}, {_vec([shift] * LANES)}")
        # a single plane feeding only a 16-entry table permute (which reads the low 4 bits
        # of each index; the table repeats) needs no mask
        if masked and (clean or len(packing.planes) > 1):
            v = em.val(f"and {v16} {v}, {mask}")
        code = v
    return code


def unpack_lanes(
    em: Emitter, ptr: str, row: str, packing: Packing, unit: int, clean: bool = True,
    stride: str | None = None
) -> str:
    """Codes 32*unit .. 32*unit+31 of the window whose row's first step starts at word `row`
    (a step-aligned window), as <32 x i32>; with `clean` False, a one-plane code of < 4 bits
    may carry other codes' bits above it (for a consumer that reads only the low 4 bits).
    `stride`: words from one step of the row to its next (`row_start`; step_words if None)."""
    per_step = packing.step // 32
    base = row
    if unit // per_step:
        base = em.val(f"add i64 {row}, "
                      f"{em.val(f'mul i64 {stride or packing.step_words}, {unit // per_step}')}")
    t = 2 * (unit % per_step)
    lo = _sub_vector(em, ptr, base, packing, t, clean)
    hi = _sub_vector(em, ptr, base, packing, t + 1, clean)
    return em.val(
        f"shufflevector <{LANES} x i32> {lo}, <{LANES} x i32> {hi}, <32 x i32> {_vec(range(32))}"
    )


def row_start(em: Emitter, t, n: str, k0: str, packing: Packing) -> tuple[str, str]:
    """(word index of the step holding code k0 (a multiple of the step) in row n, words from
    that step of the row to its next)."""
    return step_word(em, t, n, em.val(f"udiv i64 {k0}, {packing.step}"), packing)


def step_word(em: Emitter, t, n: str, s: str, packing: Packing) -> tuple[str, str]:
    """(word index of step `s` of row n, words from it to the row's next step): n * wpr +
    s * step_words and step_words, or in a packing of row blocks (`packing.tile` rows, the
    last block L <= tile of them) the block's first word plus (s * L + n % tile) *
    step_words and L * step_words."""
    sw = packing.step_words
    if not packing.tile:
        return em.val(f"add i64 {em.val(f'mul i64 {n}, {t.strides[0]}')}, "
                      f"{em.val(f'mul i64 {s}, {sw}')}"), str(sw)
    first = em.val(f"and i64 {n}, {-packing.tile}")
    em.declare("declare i64 @llvm.smin.i64(i64, i64)")
    rows = em.val(f"call i64 @llvm.smin.i64(i64 {packing.tile}, "
                  f"i64 {em.val(f'sub i64 {t.dims[0]}, {first}')})")
    at = em.val(f"add i64 {em.val(f'mul i64 {s}, {rows}')}, "
                f"{em.val(f'and i64 {n}, {packing.tile - 1}')}")
    return (em.val(f"add i64 {em.val(f'mul i64 {first}, {t.strides[0]}')}, "
                   f"{em.val(f'mul i64 {at}, {sw}')}"), em.val(f"mul i64 {rows}, {sw}"))


def window_ok(em: Emitter, t, starts: list[str], sizes, packing, rows: str = "") -> str:
    """Whether a [BN, BK] window can take the vector path: K start a multiple of the step,
    rows inside the tensor (or below `rows`), K start inside the row (rows are padded to whole
    steps with code 0, which is what a load past K reads)."""
    ok = em.val(f"icmp eq i64 {em.val(f'and i64 {starts[1]}, {packing.step - 1}')}, 0")
    n_end = em.val(f"add i64 {starts[0]}, {sizes[0]}")
    for c in (
        f"icmp sle i64 {n_end}, {rows or t.dims[0]}",
        f"icmp sge i64 {starts[0]}, 0",
        f"icmp sge i64 {starts[1]}, 0",
        f"icmp slt i64 {starts[1]}, {t.dims[1]}",
    ):
        ok = em.val(f"and i1 {ok}, {em.val(c)}")
    return ok


def read_lanes(em: Emitter, t, idx: list[str], packing: Packing) -> str:
    """Code (row idx[0], column idx[1]) as i32: plane by plane, word and shift computed."""
    k = idx[1]
    tt = em.val(f"lshr i64 {em.val(f'urem i64 {k}, {packing.step}')}, 4")
    lane = em.val(f"and i64 {k}, {LANES - 1}")
    base = step_word(em, t, idx[0], em.val(f"udiv i64 {k}, {packing.step}"), packing)[0]
    tcount = packing.step // LANES
    code = "0"
    for pl in packing.planes:
        if tcount * pl.width <= 32:
            word = em.val(f"urem i64 {lane}, {pl.words}")
            group = em.val(f"udiv i64 {lane}, {pl.words}")
            slot = em.val(f"add i64 {em.val(f'mul i64 {group}, {tcount}')}, {tt}")
        else:
            per_word = 32 // pl.width
            vec = em.val(f"udiv i64 {tt}, {per_word}")
            word = em.val(f"add i64 {em.val(f'mul i64 {vec}, {LANES}')}, {lane}")
            slot = em.val(f"urem i64 {tt}, {per_word}")
        wi = em.val(f"add i64 {base}, {em.val(f'add i64 {word}, {pl.offset}')}")
        p = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {wi}")
        w = em.val(f"load i32, ptr {p}")
        sh = em.val(f"trunc i64 {em.val(f'mul i64 {slot}, {pl.width}')} to i32")
        v = em.val(f"and i32 {em.val(f'lshr i32 {w}, {sh}')}, {(1 << pl.width) - 1}")
        if pl.shift:
            v = em.val(f"shl i32 {v}, {pl.shift}")
        code = em.val(f"or i32 {code}, {v}")
    return code


ROWS = 4  # weight rows whose dot products are summed across lanes together (row_sums)


def row_sums(em: Emitter, vecs: list[str], width: int, elem: str = "float") -> str:
    """The lane sums of len(vecs) (a power of two <= 16) <width x elem> vectors, as one
    <len(vecs) x elem>: pairs of vectors fold into one holding both rows' half sums, so R
    rows cost about R + 2 log(16) shuffles and adds instead of R log(16) + R."""
    add = "fadd reassoc" if elem == "float" else "add"

    def fold(x: str, y: str, w: int, groups: int) -> str:
        s = w // groups
        halves = [
            [
                xi * w + r * s + h * (s // 2) + q
                for xi in (0, 1)
                for r in range(groups)
                for q in range(s // 2)
            ]
            for h in (0, 1)
        ]
        lo, hi = (
            em.val(f"shufflevector <{w} x {elem}> {x}, <{w} x {elem}> {y}, <{w} x i32> {_vec(idx)}")
            for idx in halves
        )
        return em.val(f"{add} <{w} x {elem}> {lo}, {hi}")

    def part(v: str, w: int, idx) -> str:
        return em.val(
            f"shufflevector <{w} x {elem}> {v}, <{w} x {elem}> poison, "
            f"<{len(idx)} x i32> {_vec(idx)}"
        )

    while width > LANES:  # halve each vector first
        half = width // 2
        vecs = [
            em.val(
                f"{add} <{half} x {elem}> {part(v, width, range(half))}, "
                f"{part(v, width, range(half, width))}"
            )
            for v in vecs
        ]
        width = half
    groups = 1
    while len(vecs) > 1:
        vecs = [fold(vecs[i], vecs[i + 1], width, groups) for i in range(0, len(vecs), 2)]
        groups *= 2
    v, s = vecs[0], width // groups
    d = s // 2
    while d:  # within each row's block of s lanes
        swap = part(v, width, [i ^ d for i in range(width)])
        v = em.val(f"{add} <{width} x {elem}> {v}, {swap}")
        d //= 2
    return part(v, width, [r * s for r in range(groups)])
