"""`dot` of float tiles into an f32 tile as a register-blocked GEMM microkernel.

out[m, n] += a[m, k] @ b[k, n]: b is first packed (converted to f32) into a panel [k][npad]
whose rows are contiguous along n (npad = n rounded up to the vector width; a transposed,
k-contiguous b is packed with in-register VL x VL transposes). Then each MR x (NV vectors)
block of `out` lives in vector registers for the whole k loop: per k, NV panel vectors are
loaded, MR activations broadcast, MR * NV fused multiply-adds issued. The vector width and
register budget come from the host's features (AVX-512: 16 lanes, 32 registers; otherwise
AVX2: 8 lanes, 16 registers), so the rendered IR fits the machine it is compiled for.
"""

from __future__ import annotations

import functools

from lowbitc.backends.llvm.emitter import Buf, Emitter, lltype
from lowbitc.backends.llvm.handlers import convert
from lowbitc.backends.llvm.target import cpu_features

FLOATS = ("f32", "f16", "bf16")
MIN_ROWS = 2  # fewer rows of `a` gain nothing from register blocking over the generic dot


@functools.cache
def host_vector() -> tuple[int, int]:
    """(f32 lanes per vector register, number of vector registers) of this host."""
    if cpu_features().get("avx512f"):
        return 16, 32
    return 8, 16


def applies(a: Buf, b: Buf, out: Buf) -> bool:
    """Whether `out += a @ b` can take the microkernel (float operands, an f32 result whose
    rows are contiguous, enough rows and columns to fill the registers)."""
    m, k = a.shape
    n = b.shape[1]
    lanes, _ = host_vector()
    return (out.dtype == "f32" and a.dtype in FLOATS and b.dtype in FLOATS
            and out.strides[1] == 1 and m >= MIN_ROWS and n >= lanes // 2 and k >= 1)


def blocking(m: int, nvec: int, lanes: int, regs: int) -> tuple[int, int]:
    """(rows MR, vectors NV) of one register block: accumulators MR * NV plus NV panel
    vectors and one broadcast must fit the register file."""
    nv = min(nvec, 4 if lanes == 16 else 2)
    mr = min(m, (regs - nv - 1) // nv, 14)
    return mr, nv


def emit_dot(em: Emitter, a: Buf, b: Buf, out: Buf) -> None:
    """out += a @ b through the packed panel and the register-blocked microkernel."""
    panel, pstride = pack_panel(em, b, host_vector()[0])
    emit_panel_dot(em, a, panel, pstride, out)


def emit_panel_dot(em: Emitter, a: Buf, panel: str, pstride: int, out: Buf) -> None:
    """out[m, n] += a[m, k] @ panel[k, :n]: f32 panel rows `pstride` floats apart, padded to
    whole vectors (the padding is read, never stored)."""
    m, k = a.shape
    n = out.shape[1]
    lanes, regs = host_vector()
    nvec = -(-n // lanes)
    mr, nv = blocking(m, nvec, lanes, regs)
    full_cols, rest_cols = divmod(nvec, nv)
    full_rows, rest_rows = divmod(m, mr)

    def columns(cols: int, j0: str) -> None:
        def rows(i: str) -> None:
            i0 = em.val(f"mul i64 {i}, {mr}")
            _block(em, a, panel, pstride, out, i0, mr, j0, cols, lanes, k, n)
        if full_rows:
            em.loop("0", str(full_rows), rows)
        if rest_rows:
            _block(em, a, panel, pstride, out, str(full_rows * mr), rest_rows, j0, cols,
                   lanes, k, n)

    if full_cols:
        em.loop("0", str(full_cols), lambda c: columns(nv, em.val(f"mul i64 {c}, {nv * lanes}")))
    if rest_cols:
        columns(rest_cols, str(full_cols * nv * lanes))


def _block(em: Emitter, a: Buf, panel: str, pstride: int, out: Buf, i0: str, mr: int,
           j0: str, nv: int, lanes: int, k: int, n: int) -> None:
    """out[i0 : i0+mr, j0 : j0+nv*lanes] += a[i0 : i0+mr, :] @ panel[:, j0 : ...] with the
    accumulators in registers; a vector running past column n is loaded/stored masked."""
    vt = f"<{lanes} x float>"
    masks = [_tail_mask(em, j0, v, lanes, n) for v in range(nv)]
    ptrs = {}
    accs = []
    for i in range(mr):
        row = em.val(f"mul i64 {em.val(f'add i64 {i0}, {i}')}, {out.strides[0]}")
        for v in range(nv):
            col = em.val(f"add i64 {j0}, {v * lanes}")
            p = em.val(f"getelementptr inbounds float, ptr {out.ptr}, "
                       f"i64 {em.val(f'add i64 {row}, {col}')}")
            ptrs[i, v] = p
            accs.append(_vload_out(em, p, masks[v], lanes))
    a_rows = [em.val(f"mul i64 {em.val(f'add i64 {i0}, {i}')}, {a.strides[0]}")
              for i in range(mr)]
    em.declare(f"declare {vt} @llvm.fmuladd.v{lanes}f32({vt}, {vt}, {vt})")

    def step(p: str, cur: list[str]) -> list[str]:
        prow = em.val(f"mul i64 {p}, {pstride}")
        bv = []
        for v in range(nv):
            col = em.val(f"add i64 {j0}, {v * lanes}")
            q = em.val(f"getelementptr inbounds float, ptr {panel}, i64 "
                       f"{em.val(f'add i64 {prow}, {col}')}")
            bv.append(em.val(f"load {vt}, ptr {q}, align 4"))
        pa = em.val(f"mul i64 {p}, {a.strides[1]}") if a.strides[1] != 1 else p
        nxt = []
        for i in range(mr):
            q = em.val(f"getelementptr inbounds {lltype(a.dtype)}, ptr {a.ptr}, "
                       f"i64 {em.val(f'add i64 {a_rows[i]}, {pa}')}")
            x = convert(em, em.val(f"load {lltype(a.dtype)}, ptr {q}"), a.dtype, "f32")
            ins = em.val(f"insertelement {vt} poison, float {x}, i64 0")
            xs = em.val(f"shufflevector {vt} {ins}, {vt} poison, <{lanes} x i32> "
                        "zeroinitializer")
            for v in range(nv):
                nxt.append(em.val(f"call {vt} @llvm.fmuladd.v{lanes}f32({vt} {xs}, "
                                  f"{vt} {bv[v]}, {vt} {cur[i * nv + v]})"))
        return nxt

    res = em.loop("0", str(k), None, carried=[(vt, c) for c in accs], body_carried=step)
    for i in range(mr):
        for v in range(nv):
            _vstore_out(em, ptrs[i, v], res[i * nv + v], masks[v], lanes)


def _tail_mask(em: Emitter, j0: str, v: int, lanes: int, n: int) -> str | None:
    """None when vector v of the block at column j0 lies inside n (always, for n a multiple of
    the width); else the <lanes x i1> mask of its columns < n."""
    if n % lanes == 0:
        return None
    col = em.val(f"add i64 {j0}, {v * lanes}")
    ins = em.val(f"insertelement <{lanes} x i64> poison, i64 {col}, i64 0")
    base = em.val(f"shufflevector <{lanes} x i64> {ins}, <{lanes} x i64> poison, "
                  f"<{lanes} x i32> zeroinitializer")
    steps = ", ".join(f"i64 {q}" for q in range(lanes))
    cols = em.val(f"add <{lanes} x i64> {base}, <{steps}>")
    return em.val(f"icmp slt <{lanes} x i64> {cols}, splat (i64 {n})")


def _vload_out(em: Emitter, p: str, mask: str | None, lanes: int) -> str:
    vt = f"<{lanes} x float>"
    if mask is None:
        return em.val(f"load {vt}, ptr {p}, align 4")
    fn = f"llvm.masked.load.v{lanes}f32.p0"
    em.declare(f"declare {vt} @{fn}(ptr, i32, <{lanes} x i1>, {vt})")
    return em.val(f"call {vt} @{fn}(ptr {p}, i32 4, <{lanes} x i1> {mask}, {vt} "
                  "zeroinitializer)")


def _vstore_out(em: Emitter, p: str, v: str, mask: str | None, lanes: int) -> None:
    vt = f"<{lanes} x float>"
    if mask is None:
        em.emit(f"store {vt} {v}, ptr {p}, align 4")
        return
    fn = f"llvm.masked.store.v{lanes}f32.p0"
    em.declare(f"declare void @{fn}({vt}, ptr, i32, <{lanes} x i1>)")
    em.emit(f"call void @{fn}({vt} {v}, ptr {p}, i32 4, <{lanes} x i1> {mask})")


# ---------------------------------------------------------------- packing b
def pack_panel(em: Emitter, b: Buf, lanes: int) -> tuple[str, int]:
    """b [k, n] as f32 rows contiguous along n, padded with zeros to whole vectors: (pointer,
    row stride). An f32 b already in that form is used in place."""
    k, n = b.shape
    npad = -(-n // lanes) * lanes
    if b.dtype == "f32" and b.strides[1] == 1 and n % lanes == 0:
        return b.ptr, b.strides[0]
    panel = em.alloc("f32", (k, npad))
    if npad != n:
        em.declare("declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)")
        em.emit(f"call void @llvm.memset.p0.i64(ptr align 64 {panel.ptr}, i8 0, "
                f"i64 {k * npad * 4}, i1 false)")
    dst = Buf(panel.ptr, "f32", (k, n), (npad, 1))
    if b.strides[0] == 1 and k >= lanes and n >= lanes:
        _pack_transposed(em, b, dst, lanes)
    else:
        _pack_scalar(em, b, dst, 0, k, 0, n)
    return panel.ptr, npad


def _pack_scalar(em: Emitter, b: Buf, dst: Buf, k0: int, k1: int, n0: int, n1: int) -> None:
    """dst[p, j] = f32(b[p, j]) for p in [k0, k1), j in [n0, n1) (edges of the fast paths)."""
    if k1 <= k0 or n1 <= n0:
        return

    def one(idx: list[str]) -> None:
        p, j = em.val(f"add i64 {idx[0]}, {k0}"), em.val(f"add i64 {idx[1]}, {n0}")
        x = convert(em, em.at(b, [p, j]), b.dtype, "f32")
        em.store_elem(dst, em.offset([p, j], dst.shape, dst.strides), x)
    em.nest((k1 - k0, n1 - n0), one)


def _pack_transposed(em: Emitter, b: Buf, dst: Buf, lanes: int) -> None:
    """A k-contiguous b (the transpose of a row-major [n, k] tile): lanes x lanes blocks are
    loaded as rows along k, transposed in registers and stored as panel rows along n."""
    k, n = b.shape
    kb, nb = k // lanes, n // lanes
    vt = f"<{lanes} x {lltype(b.dtype)}>"

    def block(jb: str) -> None:
        j0 = em.val(f"mul i64 {jb}, {lanes}")

        def inner(pb: str) -> None:
            p0 = em.val(f"mul i64 {pb}, {lanes}")
            rows = []
            for r in range(lanes):  # source row r = column j0 + r of b, along k
                off = _index(em, j0, r, b.strides[1], p0)
                v = em.val(f"load {vt}, ptr {em.gep(b, off)}, align 2")
                rows.append(convert(em, v, b.dtype, "f32", lanes))
            for r, v in enumerate(transpose_vectors(em, rows, lanes)):
                off = _index(em, p0, r, dst.strides[0], j0)
                em.emit(f"store <{lanes} x float> {v}, ptr {em.gep(dst, off)}, align 4")
        em.loop("0", str(kb), inner)

    em.loop("0", str(nb), block)
    _pack_scalar(em, b, dst, kb * lanes, k, 0, nb * lanes)
    _pack_scalar(em, b, dst, 0, k, nb * lanes, n)


def _index(em: Emitter, base: str, r: int, stride: int, col: str) -> str:
    """(base + r) * stride + col."""
    row = em.val(f"add i64 {base}, {r}")
    return em.val(f"add i64 {em.val(f'mul i64 {row}, {stride}')}, {col}")


def transpose_vectors(em: Emitter, rows: list[str], lanes: int) -> list[str]:
    """The transpose of a lanes x lanes matrix held as `lanes` <lanes x float> rows: at each
    scale h, rows r and r+h swap their off-diagonal h-lane blocks (one two-source shuffle
    each), so after every scale element (r, l) has moved to (l, r)."""
    vt = f"<{lanes} x float>"
    rows = list(rows)
    h = lanes // 2
    while h:
        for r in range(lanes):
            if r & h:
                continue
            lo_mask = [ln if not ln & h else lanes + ln - h for ln in range(lanes)]
            hi_mask = [ln + h if not ln & h else lanes + ln for ln in range(lanes)]
            x, y = rows[r], rows[r + h]
            rows[r] = em.val(f"shufflevector {vt} {x}, {vt} {y}, {_mask(lo_mask)}")
            rows[r + h] = em.val(f"shufflevector {vt} {x}, {vt} {y}, {_mask(hi_mask)}")
        h //= 2
    return rows


def _mask(idx: list[int]) -> str:
    return f"<{len(idx)} x i32> <" + ", ".join(f"i32 {i}" for i in idx) + ">"
