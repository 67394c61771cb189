"""exp of float32 vectors in registers. LLVM lowers `llvm.exp.v*f32` to one libm `expf` call
per lane (no vector math library is linked); softmax over a tile then costs a call per score.
This is Cephes' expf: x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2, e^r by a
degree-6 polynomial, 2^n put in the exponent bits: within 2 ulp of expf over the normal range
(checked in tests/test_vexp.py). Below the smallest normal result it gives 0 (expf gives
subnormals there), above the largest +inf; NaN stays NaN."""

from __future__ import annotations

from lowbitc.backends.llvm.emitter import Emitter, float_literal

LOG2E = 1.44269504088896341
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split: n * LN2_HI is exact
POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
        1.6666665459e-1, 5.0000001201e-1)
LO, HI = -87.33654, 88.72283  # e^LO is the smallest normal float32, e^HI the largest float


def vexp_f32(em: Emitter, x: str, width: int) -> str:
    """e^x of a <width x float> vector."""
    t = f"<{width} x float>"
    it = f"<{width} x i32>"

    def c(v: float) -> str:
        return f"splat (float {float_literal(v, 'f32')})"

    em.declare(f"declare {t} @llvm.fma.v{width}f32({t}, {t}, {t})")
    em.declare(f"declare {t} @llvm.roundeven.v{width}f32({t})")

    def fma(a: str, b: str, d: str) -> str:
        return em.val(f"call {t} @llvm.fma.v{width}f32({t} {a}, {t} {b}, {t} {d})")

    xc = em.val(f"select <{width} x i1> {em.val(f'fcmp olt {t} {x}, {c(LO)}')}, {t} "
                f"{c(LO)}, {t} {x}")
    xc = em.val(f"select <{width} x i1> {em.val(f'fcmp ogt {t} {xc}, {c(HI)}')}, {t} "
                f"{c(HI)}, {t} {xc}")
    n = em.val(f"fmul {t} {xc}, {c(LOG2E)}")
    n = em.val(f"call {t} @llvm.roundeven.v{width}f32({t} {n})")
    r = fma(em.val(f"fneg {t} {n}"), c(LN2_HI), xc)
    r = fma(em.val(f"fneg {t} {n}"), c(LN2_LO), r)
    p = c(POLY[0])
    for k in POLY[1:]:
        p = fma(p, r, c(k))
    r2 = em.val(f"fmul {t} {r}, {r}")
    y = em.val(f"fadd {t} {fma(p, r2, r)}, {c(1.0)}")
    # 2^n: n in -126..128 here; 2^128 is built as 2 * 2^127
    ni = em.val(f"fptosi {t} {n} to {it}")
    half = em.val(f"icmp sgt {it} {ni}, splat (i32 127)")
    ni = em.val(f"sub {it} {ni}, {em.val(f'zext <{width} x i1> {half} to {it}')}")
    biased = em.val(f"add {it} {ni}, splat (i32 127)")
    scale = em.val(f"bitcast {it} {em.val(f'shl {it} {biased}, splat (i32 23)')} to {t}")
    y = em.val(f"fmul {t} {y}, {scale}")
    twice = em.val(f"fmul {t} {y}, {c(2.0)}")
    y = em.val(f"select <{width} x i1> {half}, {t} {twice}, {t} {y}")
    y = em.val(f"select <{width} x i1> {em.val(f'fcmp olt {t} {x}, {c(LO)}')}, {t} "
               f"{c(0.0)}, {t} {y}")
    inf = "splat (float 0x7FF0000000000000)"
    return em.val(f"select <{width} x i1> {em.val(f'fcmp ogt {t} {x}, {c(HI)}')}, {t} "
                  f"{inf}, {t} {y}")
