"""Software prefetch of the fused register dot's codes: a window's rows are pages apart,
which the hardware prefetchers lose track of, so each row's next windows are fetched ahead."""

from __future__ import annotations

from lowbitc.backends.llvm import byte_window, target
from lowbitc.backends.llvm.emitter import Emitter
from lowbitc.backends.llvm.fusion_plan import Plan

# Bytes read from memory order (u8 weights, byte windows) are prefetched at least this far
# ahead of a row's window, over at least two lines: two K windows of a GGUF block (18-34
# bytes) are closer than a DRAM latency at these rates (measured streaming, 2 threads, Zen 5:
# Q5_0 1.25x, Q4_K 1.15x faster than two windows ahead).
AHEAD_BYTES = 192
LANES_AHEAD = 2  # K windows ahead for codes in the lanes packing (1-4 measured alike)


def run_offsets(nbytes: int) -> list[int]:
    """Byte offsets whose lines cover a run of `nbytes` at any start: one per 64 bytes and the
    run's last byte, whose line a run that starts inside a line also spans (a plain numpy
    array starts 16 bytes past one)."""
    return [*range(0, nbytes, 64), nbytes - 1]


def run_ahead(em: Emitter, first: str, nbytes: int) -> None:
    """Prefetch the `nbytes` bytes at pointer `first` (run_offsets: without the last line, a
    run of an unaligned array's row was a demand miss from DRAM per row, 1.2-1.6x the time of
    the same GEMV on aligned copies, one thread, streamed)."""
    at_offsets(em, first, run_offsets(nbytes))


def at_offsets(em: Emitter, first: str, offsets) -> None:
    """Prefetch (for reading, into every cache level) the lines of the bytes at pointer
    `first` plus each of `offsets`."""
    for off in offsets:
        q = em.val(f"getelementptr i8, ptr {first}, i64 {off}")
        em.prefetch(q, target.prefetch_locality("runs"))


def next_windows(em: Emitter, plan: Plan, t, starts: list[str], n: str, bk: int,
                   lanes_base: str | None = None, lanes_stride: str | None = None) -> None:
    """Prefetch row n's codes two K windows ahead (two steps of the grid's K loop later), or
    AHEAD_BYTES where that is further."""
    if plan.chain:  # a byte window: the row's window (codes and the bytes between them)
        step, nbytes = byte_window.span(em, plan.codes, t.strides)
        first = byte_window.address(em, plan.codes, t.ptr, "0", t.strides, n, "0")
        em.declare("declare i64 @llvm.smax.i64(i64, i64)")
        dist = em.val(f"call i64 @llvm.smax.i64(i64 {em.val(f'mul i64 {step}, 2')}, "
                      f"i64 {AHEAD_BYTES})")
        ahead = em.val(f"getelementptr i8, ptr {first}, i64 {dist}")
        lines = range(0, nbytes + 64, 64)
        if len(plan.codes.results[0].type.shape) == 2 and nbytes <= 64:
            # windows back to back, a line or less each (a 2-D window steps by its width):
            # the last bytes of successive windows reach every line of the row (NF4 user
            # GEMV, M = 1, one thread: 0.96x the time of two prefetches per window)
            lines = [nbytes - 1]
        at_offsets(em, ahead, lines)
        return
    if lanes_base is not None:
        nbytes = bk * plan.codes.attrs.bits // 8
        first = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {lanes_base}")
        ahead = LANES_AHEAD * nbytes
        if t.packing.tile:  # the row's steps are a block's steps apart: each step a run
            steps, sw = bk // t.packing.step, 4 * t.packing.step_words
            for s in range(steps):
                at = em.val(f"mul i64 {lanes_stride}, {4 * (steps * LANES_AHEAD + s)}")
                run_ahead(em, em.val(f"getelementptr i8, ptr {first}, i64 {at}"), sw)
            return
    elif plan.codes.opcode == "load":  # bytes: AHEAD_BYTES on, two lines at least
        nbytes, ahead = max(bk, 128), max(2 * bk, AHEAD_BYTES)
        i = em.val(f"add i64 {em.val(f'mul i64 {n}, {t.strides[0]}')}, {starts[1]}")
        first = em.val(f"getelementptr inbounds i8, ptr {t.ptr}, i64 {i}")
    else:
        bits = plan.codes.attrs.bits
        nbytes = bk * bits // 8
        ahead = 2 * nbytes
        w0 = em.val(f"mul i64 {em.val(f'lshr i64 {starts[1]}, 5')}, {bits}")
        i = em.val(f"add i64 {em.val(f'mul i64 {n}, {t.strides[0]}')}, {w0}")
        first = em.val(f"getelementptr inbounds i32, ptr {t.ptr}, i64 {i}")
    run_ahead(em, em.val(f"getelementptr i8, ptr {first}, i64 {ahead}"), nbytes)
