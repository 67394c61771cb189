"""`dot` of 8-bit integer tiles into an i32 tile: byte products summed in i32 vector lanes.

out[m, n] += a[m, k] @ b[k, n] where a's rows and b's columns run along k in memory (b a
transposed [N, K] tile, as in `dot(xq, transpose(wq), acc)`). Per (m, n), k goes in steps of
one vector of bytes into an i32 vector accumulator, reduced once at the end; the k tail that
fills no vector is a scalar loop. The instruction is data: `INT_DOTS` lists the recipes, each
with the host feature it needs, the bytes per step and the IR of `acc + dot4(u, s)` (u
unsigned bytes, s signed, four products per i32 lane): AVX-512 VNNI `vpdpbusd` on 64 bytes,
its 256-bit form (AVX512-VL or AVX-VNNI) on 32, an exact AVX2 fallback that widens to 16 bits
and uses `vpmaddwd` (`vpmaddubsw` would saturate once an unsigned byte exceeds 127). A u8 x i8
dot (in either order) takes them; i8 x i8 and u8 x u8 take plain widened IR.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from lowbitc.backends.llvm.emitter import Buf, Emitter
from lowbitc.backends.llvm.target import cpu_features

BYTES = ("u8", "i8")


def _vnni(em: Emitter, acc: str, u: str, s: str, lanes: int) -> str:
    """acc + vpdpbusd(u, s): lanes i32 sums of 4 u8 x i8 products each."""
    vi, vb = f"<{lanes} x i32>", f"<{4 * lanes} x i8>"
    name = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"
    em.declare(f"declare {vi} @{name}({vi}, {vi}, {vi})")
    uw = em.val(f"bitcast {vb} {u} to {vi}")
    sw = em.val(f"bitcast {vb} {s} to {vi}")
    return em.val(f"call {vi} @{name}({vi} {acc}, {vi} {uw}, {vi} {sw})")


def _maddwd(em: Emitter, acc: str, u: str, s: str, lanes: int) -> str:
    """acc + vpmaddwd of the bytes widened to 16 bits (exact): 32 bytes into 8 i32 lanes."""
    v16, v8 = "<16 x i16>", "<8 x i32>"
    em.declare(f"declare {v8} @llvm.x86.avx2.pmadd.wd({v16}, {v16})")
    uw = em.val(f"zext <32 x i8> {u} to <32 x i16>")
    sw = em.val(f"sext <32 x i8> {s} to <32 x i16>")
    for half in (range(16), range(16, 32)):
        idx = "<" + ", ".join(f"i32 {i}" for i in half) + ">"
        uh = em.val(f"shufflevector <32 x i16> {uw}, <32 x i16> poison, <16 x i32> {idx}")
        sh = em.val(f"shufflevector <32 x i16> {sw}, <32 x i16> poison, <16 x i32> {idx}")
        prod = em.val(f"call {v8} @llvm.x86.avx2.pmadd.wd({v16} {uh}, {v16} {sh})")
        acc = em.val(f"add {v8} {acc}, {prod}")
    return acc


@dataclass(frozen=True)
class IntDot:
    """One way to add the products of `step` bytes into `lanes` i32 lanes on a host with
    `feature` (None: any host)."""

    name: str
    feature: str | None
    step: int
    lanes: int
    emit: Callable[[Emitter, str, str, str, int], str]


# preferred first; the widest one whose step fits k runs the main loop
INT_DOTS = (
    IntDot("vpdpbusd-512", "avx512vnni", 64, 16, _vnni),
    IntDot("vpdpbusd-256", "avx512vl+avx512vnni", 32, 8, _vnni),
    IntDot("vpdpbusd-256", "avxvnni", 32, 8, _vnni),
    IntDot("vpmaddwd-256", "avx2", 32, 8, _maddwd),
)


def _has(features: dict, need: str | None) -> bool:
    return need is None or all(features.get(f, False) for f in need.split("+"))


@functools.cache
def host_int_dots() -> tuple[IntDot, ...]:
    """The recipes this host runs, widest first (one per step)."""
    features = cpu_features()
    chosen: dict[int, IntDot] = {}
    for r in INT_DOTS:
        if _has(features, r.feature) and r.step not in chosen:
            chosen[r.step] = r
    return tuple(chosen.values())


def applies(a: Buf, b: Buf, out: Buf) -> bool:
    """Whether `out += a @ b` is a byte dot this module emits (8-bit integer operands, an
    i32 result, both operands contiguous along k)."""
    return (out.dtype == "i32" and a.dtype in BYTES and b.dtype in BYTES
            and a.strides[1] == 1 and b.strides[0] == 1)


def emit_dot(em: Emitter, a: Buf, b: Buf, out: Buf, recipes=None) -> None:
    """out += a @ b (a [m, k] and b [k, n] 8-bit integers, out i32)."""
    m, k = a.shape
    n = b.shape[1]
    native = {a.dtype, b.dtype} == {"u8", "i8"}
    recipes = host_int_dots() if recipes is None else recipes
    usable = [r for r in recipes if r.step <= k] if native else []
    # (unsigned operand, signed operand): vpdpbusd's order
    ua, sb = (a, b) if a.dtype == "u8" else (b, a)

    def pair(i: str, j: str) -> None:
        arow = em.val(f"mul i64 {i}, {a.strides[0]}")
        bcol = em.val(f"mul i64 {j}, {b.strides[1]}")
        base = {id(a): arow, id(b): bcol}

        def bytes_at(buf: Buf, kk: str, width: int) -> str:
            p = em.val(f"getelementptr inbounds i8, ptr {buf.ptr}, "
                       f"i64 {em.val(f'add i64 {base[id(buf)]}, {kk}')}")
            return em.val(f"load <{width} x i8>, ptr {p}, align 1")

        total = None
        k0 = 0
        if usable:
            r = usable[0]
            full = k // r.step
            vi = f"<{r.lanes} x i32>"

            def step(p: str, cur: list[str]) -> list[str]:
                kk = em.val(f"mul i64 {p}, {r.step}")
                return [r.emit(em, cur[0], bytes_at(ua, kk, r.step), bytes_at(sb, kk, r.step),
                               r.lanes)]
            (acc,) = em.loop("0", str(full), None, carried=[(vi, "zeroinitializer")],
                             body_carried=step)
            k0 = full * r.step
            for r2 in usable[1:]:  # a narrower step for what is left, once
                if k - k0 >= r2.step:
                    part = r2.emit(em, "zeroinitializer", bytes_at(ua, str(k0), r2.step),
                                   bytes_at(sb, str(k0), r2.step), r2.lanes)
                    acc = _fold(em, acc, r.lanes, part, r2.lanes)
                    k0 += r2.step
            em.declare(f"declare i32 @llvm.vector.reduce.add.v{r.lanes}i32({vi})")
            total = em.val(f"call i32 @llvm.vector.reduce.add.v{r.lanes}i32({vi} {acc})")
        if k0 < k:  # the tail (or every k when no recipe applies): widened scalar products
            def scalar(p: str, cur: list[str]) -> list[str]:
                x = _widen(em, bytes_at(a, p, 1), a.dtype)
                y = _widen(em, bytes_at(b, p, 1), b.dtype)
                return [em.val(f"add i32 {cur[0]}, {em.val(f'mul i32 {x}, {y}')}")]
            (rest,) = em.loop(str(k0), str(k), None, carried=[("i32", "0")],
                              body_carried=scalar)
            total = rest if total is None else em.val(f"add i32 {total}, {rest}")
        oi = em.flat_index([i, j], out.shape) if out.strides == _row_major(out) else \
            em.offset([i, j], out.shape, out.strides)
        em.store_elem(out, oi, em.val(f"add i32 {em.load_elem(out, oi)}, {total}"))

    em.loop("0", str(m), lambda i: em.loop("0", str(n), lambda j: pair(i, j)))


def _row_major(buf: Buf) -> tuple[int, ...]:
    return Buf(buf.ptr, buf.dtype, buf.shape).strides


def _widen(em: Emitter, v1: str, dtype: str) -> str:
    """A <1 x i8> element as an i32 (sign- or zero-extended)."""
    s = em.val(f"extractelement <1 x i8> {v1}, i64 0")
    return em.val(f"{'sext' if dtype == 'i8' else 'zext'} i8 {s} to i32")


def _fold(em: Emitter, acc: str, lanes: int, part: str, plane: int) -> str:
    """acc (<lanes x i32>) + part (<plane x i32>, plane <= lanes) into acc's first lanes."""
    if plane == lanes:
        return em.val(f"add <{lanes} x i32> {acc}, {part}")
    idx = "<" + ", ".join(f"i32 {i if i < plane else plane}" for i in range(lanes)) + ">"
    wide = em.val(f"shufflevector <{plane} x i32> {part}, <{plane} x i32> zeroinitializer, "
                  f"<{lanes} x i32> {idx}")
    return em.val(f"add <{lanes} x i32> {acc}, {wide}")
