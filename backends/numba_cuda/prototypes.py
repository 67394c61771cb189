"""Hand-designed dequantization kernels (numba-cuda source, generated per format and shape).

They are what the renderer should produce for `dequant`, and the yardstick for its SASS:
- every width 1..8 (`u<b>`): each f16x2 output pair is one `prmt` (bring the two codes'
  bytes into the two halves), one LOP3 (mask the codes, OR the magic exponent: a code at bit
  o of a half becomes 2^(10-o) + code) and one HFMA2 (subtract the magic, times the scale);
  b = 8 needs no mask, b = 7 reads codes above bit 3 of a byte from a copy shifted down 4 bits;
- `u4` with `order="interleaved"`: words pre-shuffled on the host (nibble order 0,2,4,6,1,3,
  5,7, as FasterTransformer/Marlin) so a pair is one LOP3 on the word, no prmt;
- `e2m1` (fp4): even/odd codes are re-spaced so sign and exponent-mantissa sit 6 bits apart
  (as in f16), then per pair one prmt, one shift into f16 position and one HMUL2 by
  scale * 2^14 (the exponent-bias difference).

Kernel arguments: words uint32[N * K*b/32] (rows are whole words), scales uint16[N * G]
(f16 bits), out uint32[N * K/2] (f16 pairs), n_chunks = N*K/128. Each thread loops over
chunks of 128 codes (4*b words, loaded 16 bytes at a time). K % 128 == 0, and the group size
divides 128 or is a multiple of it. Scales must satisfy |s| < 64 (u) or |s| < 4 (e2m1) so the
folded constants stay finite in f16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbitc.backends.numba_cuda.recipes import prmt_pair
from lowbitc.errors import UserArgumentError

CHUNK = 128  # codes per loop iteration and thread
SIGNATURE = "void(uint32[::1], uint16[::1], uint32[::1], uint32)"
_INTERLEAVE = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble slot p of an interleaved word holds code _[p]


@dataclass(frozen=True)
class DequantSpec:
    """One dequant kernel: format ("u" or "e2m1"), bits, K, group size, word order."""

    fmt: str
    bits: int
    k: int
    group_size: int
    order: str = "canonical"

    def __post_init__(self) -> None:
        if self.fmt not in ("u", "e2m1"):
            raise UserArgumentError(f"fmt must be 'u' or 'e2m1', got {self.fmt!r}")
        if not 1 <= self.bits <= 8 or (self.fmt == "e2m1" and self.bits != 4):
            raise UserArgumentError(f"bits must be 1..8 (4 for e2m1), got {self.bits}")
        if self.k <= 0 or self.k % CHUNK:
            raise UserArgumentError(f"k must be a positive multiple of {CHUNK}, got {self.k}")
        g = self.group_size
        if g <= 0 or g % 32 or (g < CHUNK and CHUNK % g) or (g > CHUNK and g % CHUNK):
            raise UserArgumentError(
                f"group_size must be 32, 64, 128 or a multiple of 128, got {g}"
            )
        if self.order not in ("canonical", "interleaved") or (
            self.order == "interleaved" and (self.fmt, self.bits) != ("u", 4)
        ):
            raise UserArgumentError(f"order 'interleaved' is for u4 only, got {self.order!r}")

    @property
    def name(self) -> str:
        tag = "i" if self.order == "interleaved" else ""
        kind = "e2m1" if self.fmt == "e2m1" else f"u{self.bits}{tag}"
        return f"dequant_{kind}_k{self.k}_g{self.group_size}"

    @property
    def groups(self) -> int:
        return -(-self.k // self.group_size)


def _f16_bits(value: float) -> int:
    return int(np.array(value, dtype=np.float16).view(np.uint16))


def _pair_const(lo: float, hi: float) -> int:
    return _f16_bits(lo) | _f16_bits(hi) << 16


def _u_pairs(bits: int, interleaved: bool) -> list[tuple[str, tuple[int, int]]]:
    """(expression, magic offsets) of the 16 f16x2 pairs of 32 codes in words w0..w{b-1}."""
    mask = (1 << bits) - 1
    if interleaved:  # u4: pairs (slot j, slot j+4) of word q, see _INTERLEAVE
        out = []
        for i in range(bits):
            for j in range(4):
                src = f"w{i}" if j < 2 else f"(w{i} >> U(8))"
                o = 4 * (j % 2)
                m, magic = (0xF << o) * 0x10001, ((25 - o) << 10) * 0x10001
                out.append((f"lop3({src}, U({m:#x}), U({magic:#x}), 0xEA)", (o, o)))
        return out
    out = []
    for k in range(0, 32, 2):
        p_lo, p_hi = k * bits, (k + 1) * bits
        o_lo, o_hi = p_lo % 8, p_hi % 8
        i = p_lo // 32
        second = f"w{i + 1}" if i + 1 < bits else f"w{i}"
        b_lo, b_hi = p_lo // 8 - 4 * i, p_hi // 8 - 4 * i
        if bits == 8:  # whole bytes: the magic bytes come from the second prmt source
            sel = b_lo | 4 << 4 | b_hi << 8 | 4 << 12
            out.append((f"prmt(w{i}, U(0x64646464), U({sel:#x}))", (0, 0)))
        elif o_lo + bits <= 10 and o_hi + bits <= 10:
            sel = b_lo | (b_lo + 1) << 4 | b_hi << 8 | (b_hi + 1) << 12
            m = mask << o_lo | mask << (16 + o_hi)
            magic = (25 - o_lo) << 10 | (25 - o_hi) << 26
            window = f"prmt(w{i}, {second}, U({sel:#x}))"
            out.append((f"lop3({window}, U({m:#x}), U({magic:#x}), 0xEA)", (o_lo, o_hi)))
        else:  # a code too high in its byte: read it from v, the stream shifted down 4 bits
            out.append(_shifted_pair(p_lo, p_hi, bits))
    return out


def _shifted_pair(p_lo: int, p_hi: int, bits: int) -> tuple[str, tuple[int, int]]:
    """A pair whose codes come from w or v (v = w >> 4 across words): one prmt, one lop3."""
    found = prmt_pair(p_lo, p_hi, bits, ("w", "v"))
    if found is not None:
        window, m, (o_lo, o_hi), _ = found
        magic = (25 - o_lo) << 10 | (25 - o_hi) << 26
        window = window.replace("U32(", "U(")  # these prototypes name the cast U
        return f"lop3({window}, U({m:#x}), U({magic:#x}), 0xEA)", (o_lo, o_hi)
    lo_val, hi_val = _funnel(p_lo, bits), _funnel(p_hi, bits)  # rare: shift both to bit 0
    return f"({lo_val} | ({hi_val} << U(16)) | U(0x64006400))", (0, 0)


def _funnel(p: int, bits: int) -> str:
    i, o, mask = p // 32, p % 32, (1 << bits) - 1
    if o + bits <= 32:
        return f"((w{i} >> U({o})) & U({mask:#x}))"
    return f"(((w{i} >> U({o})) | (w{i + 1} << U({32 - o}))) & U({mask:#x}))"


def _e2m1_body() -> tuple[list[str], list[str]]:
    """Per-word prologue and pair expressions for e2m1: y/z hold even/odd codes as s00eem."""
    pro, pairs = [], []
    for i in range(4):
        pro.append(f"    y{i} = (w{i} & U(0x07070707)) | ((w{i} << U(3)) & U(0x40404040))")
        pro.append(
            f"    z{i} = ((w{i} >> U(4)) & U(0x07070707)) | ((w{i} >> U(1)) & U(0x40404040))"
        )
        for j in range(4):
            sel = j | 8 << 4 | (4 + j) << 8 | 8 << 12
            pairs.append(f"(prmt(y{i}, z{i}, U({sel:#x})) << U(9))")
    return pro, pairs


def _bias_name(key: tuple[int, int]) -> str:
    return f"b{key[0]}{key[1]}"


def dequant_source(spec: DequantSpec) -> str:
    """numba-cuda source of the dequant kernel `spec.name` (see the module docstring).

    A device function converts 32 codes (b words, 16 f16x2 pairs); the kernel loads a
    128-code chunk with 16-byte loads and calls it four times (small functions keep numba's
    compile time down; NVVM inlines them).
    """
    b, g, cpr = spec.bits, spec.group_size, spec.k // CHUNK
    if spec.fmt == "e2m1":
        prologue, exprs = _e2m1_body()
        keys: list[tuple[int, int]] = []
        bias_of = ["U(0)"] * 16
    else:
        prologue, found = [], _u_pairs(b, spec.order == "interleaved")
        if any(" v" in e or "(v" in e for e, _ in found):
            prologue = [
                f"    v{i} = (w{i} >> U(4)) | (w{i + 1} << U(28))" for i in range(b - 1)
            ] + [f"    v{b - 1} = w{b - 1} >> U(4)"]
        exprs = [e for e, _ in found]
        keys = sorted({key for _, key in found})
        bias_of = [_bias_name(key) for _, key in found]
    words = ", ".join(f"w{i}" for i in range(b))
    biases = "".join(f", {_bias_name(key)}" for key in keys)
    sub = f"_{spec.name}_32"
    lines = [
        "from numba import cuda, uint32 as U, uint64 as U64",
        "from lowbitc.backends.numba_cuda.intrinsics import hfma2, ld_u32x4, lop3, prmt, st_u32x4",
        "",
        "",
        "@cuda.jit(device=True)",
        f"def {sub}(out, o, s{biases}, {words}):",
        *prologue,
    ]
    for start in range(0, 16, 4):
        vals = [f"hfma2({exprs[start + t]}, s, {bias_of[start + t]})" for t in range(4)]
        lines.append(f"    st_u32x4(out, o + U64({start}),")
        lines += [f"             {v}," for v in vals[:3]] + [f"             {vals[3]})"]
    lines += [
        "",
        "",
        f"def {spec.name}(words, scales, out, n_chunks):",
        "    c = U(cuda.blockIdx.x) * U(cuda.blockDim.x) + U(cuda.threadIdx.x)",
        "    step = U(cuda.gridDim.x) * U(cuda.blockDim.x)",
        "    while c < n_chunks:",
        f"        row = c // U({cpr})",
        f"        kc = c - row * U({cpr})",
    ]
    if g <= CHUNK:
        lines.append(f"        sbase = row * U({spec.groups}) + kc * U({CHUNK // g})")
    else:
        lines.append(f"        sbase = row * U({spec.groups}) + kc // U({g // CHUNK})")
    lines.append(f"        wbase = U64(c) * U64({4 * b})")
    lines.append(f"        obase = U64(c) * U64({CHUNK // 2})")
    for q in range(b):
        names = ", ".join(f"w{4 * q + t}" for t in range(4))
        lines.append(f"        {names} = ld_u32x4(words, wbase + U64({4 * q}))")
    per_scale = min(g, CHUNK) // 32  # sub-chunks sharing one scale
    for j in range(4):
        if j % per_scale == 0:
            lines.append(f"        s = U(scales[sbase + U({j // per_scale})]) * U(0x10001)")
            if spec.fmt == "e2m1":
                lines.append(f"        s = hfma2(s, U({_pair_const(2.0**14, 2.0**14):#x}), U(0))")
            for key in keys:
                neg = _pair_const(-(2.0 ** (10 - key[0])), -(2.0 ** (10 - key[1])))
                lines.append(f"        {_bias_name(key)} = hfma2(s, U({neg:#x}), U(0))")
        args = ", ".join(f"w{j * b + i}" for i in range(b))
        lines.append(f"        {sub}(out, obase + U64({16 * j}), s{biases}, {args})")
    lines.append("        c += step")
    return "\n".join(lines) + "\n"


def interleave_u4(words: np.ndarray) -> np.ndarray:
    """Host transform canonical u4 words to the interleaved order the fast kernel reads."""
    w = np.asarray(words, dtype=np.uint32)
    nib = [(w >> np.uint32(4 * p)) & np.uint32(0xF) for p in range(8)]
    out = np.zeros_like(w)
    for slot, code in enumerate(_INTERLEAVE):
        out |= nib[code] << np.uint32(4 * slot)
    return out


def pack_lsb(codes: np.ndarray, bits: int) -> np.ndarray:
    """Canonical packing (DESIGN.md Storage): LSB-first bit stream per row, uint32 words."""
    codes = np.asarray(codes, dtype=np.uint64)
    n, k = codes.shape
    nwords = -(-k * bits // 32)
    stream = np.zeros((n, nwords + 1), dtype=np.uint64)
    for j in range(k):
        word, off = divmod(j * bits, 32)
        stream[:, word] |= (codes[:, j] << np.uint64(off)) & np.uint64(0xFFFFFFFF)
        stream[:, word + 1] |= codes[:, j] >> np.uint64(32 - off) if off else np.uint64(0)
    return stream[:, :nwords].astype(np.uint32)


E2M1_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def reference(codes: np.ndarray, scales_f16: np.ndarray, spec: DequantSpec) -> np.ndarray:
    """What the kernel must produce, bit for bit: f16(decode(code) * scale), one rounding."""
    vals = E2M1_VALUES[codes] if spec.fmt == "e2m1" else codes.astype(np.float64)
    s = np.repeat(scales_f16.astype(np.float64), spec.group_size, axis=1)[:, : spec.k]
    return (vals * s).astype(np.float16)


def host_arrays(
    codes: np.ndarray, scales_f16: np.ndarray, spec: DequantSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Kernel arguments (words, scale bits, zeroed output, n_chunks) for codes [N, K]."""
    n, k = codes.shape
    if k != spec.k or scales_f16.shape != (n, spec.groups):
        raise UserArgumentError(
            f"codes/scales: expected [N, {spec.k}] and [N, {spec.groups}], "
            f"got {codes.shape} and {scales_f16.shape}"
        )
    words = pack_lsb(codes, spec.bits)
    if spec.order == "interleaved":
        words = interleave_u4(words)
    scale_bits = np.ascontiguousarray(scales_f16, dtype=np.float16).view(np.uint16).ravel()
    out = np.zeros(n * k // 2, dtype=np.uint32)
    return np.ascontiguousarray(words).ravel(), scale_bits, out, n * k // CHUNK


def run(
    spec: DequantSpec, codes: np.ndarray, scales_f16: np.ndarray, blocks: int = 2, threads: int = 4
) -> np.ndarray:
    """Run the kernel with numba-cuda (GPU, or the simulator under NUMBA_ENABLE_CUDASIM=1)."""
    from numba import cuda

    from lowbitc.backends.numba_cuda.toolchain import load_source

    kernel = cuda.jit(load_source(dequant_source(spec), spec.name))
    words, scale_bits, out, n_chunks = host_arrays(codes, scales_f16, spec)
    kernel[blocks, threads](words, scale_bits, out, np.uint32(n_chunks))
    return out.view(np.float16).reshape(codes.shape)
