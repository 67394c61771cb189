"""Tensor-core device helpers for generated kernels: mma.sync, ldmatrix, cp.async.

On the GPU target each helper is a numba intrinsic emitting one PTX instruction as inline asm
(sm_80 and later); under NUMBA_ENABLE_CUDASIM=1 the same name is the simulator twin from
`warpsim` with the ISA's warp semantics, so generated source runs unchanged in both. Values
travel as uint32 bit patterns (f16x2 / bf16x2 / 4 x s8 per uint32), accumulators as float32 or
int32. Fragment ownership: lowbitc/layout/mma.py.

- `mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3) -> (d0, d1, d2, d3)`:
  mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32; `mma_bf16` the same with .bf16;
  `mma_s8`: m16n8k32.row.col.s32.s8.s8.s32 (c and d int32).
- `ldmatrix_x4(smem, i)`, `ldmatrix_x4_trans`, `ldmatrix_x2`, `ldmatrix_x2_trans`: smem is a
  shared array of 16- or 32-bit elements, `i` the element index of the 16-byte row this lane
  supplies (lanes 8m..8m+7 give matrix m's rows); 4 or 2 uint32 back.
- `cp_async16(smem, i, gmem, j)`: 16 bytes global -> shared (.cg, L2 only);
  `cp_async16_zfill(smem, i, gmem, j, src_bytes)` copies `src_bytes` (0..16) and zero-fills the
  rest; `cp_async_commit()`, `cp_async_wait(n)` (n a literal: wait until at most n groups are
  pending). The simulator twins defer each copy until a `cp_async_wait` needs its group
  (the latest moment the ISA allows), so a kernel that reads a stage before waiting for it
  reads stale data there too.
- `aligned16(arr)`: the array's first element is 16-byte aligned (cp.async's precondition,
  checked once per block).

Traps (docs TOOLCHAIN): only mma is side-effect free (ldmatrix and cp.async are marked as
having side effects so LLVM does not hoist or merge them); mma and ldmatrix calls are
`convergent` (warp-collective); the shared address is the element pointer cast to
addrspace(3) and truncated to 32 bits, the global one cast to addrspace(1).
"""

from __future__ import annotations

from lowbitc.backends.numba_cuda import warpsim
from lowbitc.backends.numba_cuda.intrinsics import SIMULATOR

__all__ = [
    "SIMULATOR", "mma_f16", "mma_bf16", "mma_s8", "ldmatrix_x4", "ldmatrix_x4_trans",
    "ldmatrix_x2", "ldmatrix_x2_trans", "cp_async16", "cp_async16_zfill", "cp_async_commit",
    "cp_async_wait", "aligned16",
]

MMA_F16 = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
MMA_BF16 = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
MMA_S8 = "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32"
_MMA_OPERANDS = " {$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};"

if SIMULATOR:
    mma_f16, mma_bf16, mma_s8 = warpsim.mma_f16_py, warpsim.mma_bf16_py, warpsim.mma_s8_py
    ldmatrix_x4, ldmatrix_x4_trans = warpsim.ldmatrix_x4_py, warpsim.ldmatrix_x4_trans_py
    ldmatrix_x2, ldmatrix_x2_trans = warpsim.ldmatrix_x2_py, warpsim.ldmatrix_x2_trans_py
    cp_async16 = warpsim.cp_async16_py

    def cp_async16_zfill(smem, smem_index, gmem, gmem_index, src_bytes):  # (looked up per call:
        warpsim.cp_async16_zfill_py(smem, smem_index, gmem, gmem_index, src_bytes)  # bank_trace)

    cp_async_commit, cp_async_wait = warpsim.cp_async_commit_py, warpsim.cp_async_wait_py
    aligned16 = warpsim.aligned16_py
else:
    from llvmlite import ir
    from numba.cuda import types
    from numba.cuda.extending import intrinsic

    _I32, _I64, _F32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
    _SHARED, _GLOBAL = 3, 1  # NVPTX address spaces
    # .sync.aligned: the whole warp executes the same instruction, so LLVM must not make the
    # call control-dependent on more values (no duplication into divergent branches)
    _COLLECTIVE = ("convergent",)

    def _mma(name: str, text: str, acc):
        """An intrinsic (4 x u32 A, 2 x u32 B, 4 x acc C) -> 4 x acc D: one mma.sync."""
        llacc = _F32 if acc == types.float32 else _I32
        code = "f" if acc == types.float32 else "r"
        constraint = ",".join([f"={code}"] * 4 + ["r"] * 6 + [code] * 4)

        def impl(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):  # noqa: ARG001
            u32 = types.uint32
            ret = types.UniTuple(acc, 4)
            sig = ret(u32, u32, u32, u32, u32, u32, acc, acc, acc, acc)

            def codegen(context, builder, signature, args):
                fnty = ir.FunctionType(ir.LiteralStructType([llacc] * 4), [_I32] * 6 + [llacc] * 4)
                asm = ir.InlineAsm(fnty, text + _MMA_OPERANDS, constraint)
                res = builder.call(asm, args, attrs=_COLLECTIVE)
                items = [builder.extract_value(res, k) for k in range(4)]
                return context.make_tuple(builder, ret, items)

            return sig, codegen

        impl.__name__ = name
        return intrinsic(impl)

    mma_f16 = _mma("mma_f16", MMA_F16, types.float32)
    mma_bf16 = _mma("mma_bf16", MMA_BF16, types.float32)
    mma_s8 = _mma("mma_s8", MMA_S8, types.int32)

    def _address(context, builder, aryty, ary, index, space: int, width):
        """Address of element `index` of array `ary` in NVPTX address space `space`, as an
        integer of `width` bits (32 for shared, 64 for global)."""
        data = context.make_array(aryty)(context, builder, ary).data
        ptr = builder.gep(data, [builder.zext(index, _I64)])
        cast = builder.addrspacecast(ptr, ir.PointerType(ptr.type.pointee, space))
        return builder.ptrtoint(cast, width)

    def _is_array(a, sizes=(1, 2, 4, 8)) -> bool:
        return isinstance(a, types.Array) and a.layout == "C" and a.dtype.bitwidth // 8 in sizes

    def _ldmatrix(name: str, num: int, trans: bool):
        regs = ", ".join(f"${k}" for k in range(num))
        text = (f"ldmatrix.sync.aligned.m8n8.x{num}{'.trans' if trans else ''}.shared.b16 "
                f"{{{regs}}}, [${num}];")
        constraint = ",".join(["=r"] * num + ["r", "~{memory}"])

        def impl(typingctx, smem, index):  # noqa: ARG001
            if not _is_array(smem, (2, 4)):
                return None
            ret = types.UniTuple(types.uint32, num)
            sig = ret(smem, types.uint32)

            def codegen(context, builder, signature, args):
                addr = _address(context, builder, signature.args[0], args[0], args[1], _SHARED,
                                _I32)
                fnty = ir.FunctionType(ir.LiteralStructType([_I32] * num), [_I32])
                asm = ir.InlineAsm(fnty, text, constraint, side_effect=True)
                res = builder.call(asm, [addr], attrs=_COLLECTIVE)
                items = [builder.extract_value(res, k) for k in range(num)]
                return context.make_tuple(builder, ret, items)

            return sig, codegen

        impl.__name__ = name
        return intrinsic(impl)

    ldmatrix_x4 = _ldmatrix("ldmatrix_x4", 4, False)
    ldmatrix_x4_trans = _ldmatrix("ldmatrix_x4_trans", 4, True)
    ldmatrix_x2 = _ldmatrix("ldmatrix_x2", 2, False)
    ldmatrix_x2_trans = _ldmatrix("ldmatrix_x2_trans", 2, True)

    def _void_asm(builder, text: str, constraint: str, args: list) -> None:
        fnty = ir.FunctionType(ir.VoidType(), [a.type for a in args])
        builder.call(ir.InlineAsm(fnty, text, constraint, side_effect=True), args)

    def _copy_addresses(context, builder, signature, args):
        dst = _address(context, builder, signature.args[0], args[0], args[1], _SHARED, _I32)
        src = _address(context, builder, signature.args[2], args[2], args[3], _GLOBAL, _I64)
        return dst, src

    @intrinsic
    def cp_async16(typingctx, smem, smem_index, gmem, gmem_index):  # noqa: ARG001
        """16 bytes global -> shared, asynchronous, cached in L2 only (one LDGSTS.E.BYPASS.128)."""
        if not (_is_array(smem) and _is_array(gmem)):
            return None
        sig = types.void(smem, types.uint32, gmem, types.uint64)

        def codegen(context, builder, signature, args):
            dst, src = _copy_addresses(context, builder, signature, args)
            _void_asm(builder, "cp.async.cg.shared.global [$0], [$1], 16;", "r,l,~{memory}",
                      [dst, src])
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def cp_async16_zfill(typingctx, smem, smem_index, gmem, gmem_index, src_bytes):  # noqa: ARG001
        """cp_async16 reading only `src_bytes` (0..16) bytes; the rest of the 16 are zeroed."""
        if not (_is_array(smem) and _is_array(gmem)):
            return None
        sig = types.void(smem, types.uint32, gmem, types.uint64, types.uint32)

        def codegen(context, builder, signature, args):
            dst, src = _copy_addresses(context, builder, signature, args)
            _void_asm(builder, "cp.async.cg.shared.global [$0], [$1], 16, $2;",
                      "r,l,r,~{memory}", [dst, src, args[4]])
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def cp_async_commit(typingctx):  # noqa: ARG001
        """Close the group of this thread's cp.async issued since the last commit."""
        sig = types.void()

        def codegen(context, builder, signature, args):
            _void_asm(builder, "cp.async.commit_group;", "~{memory}", [])
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def cp_async_wait(typingctx, n):  # noqa: ARG001
        """Wait until at most `n` (a literal) of this thread's committed groups are pending."""
        if not isinstance(n, types.IntegerLiteral) or not 0 <= n.literal_value < 8:
            return None
        sig = types.void(n)
        text = f"cp.async.wait_group {int(n.literal_value)};"

        def codegen(context, builder, signature, args):
            _void_asm(builder, text, "~{memory}", [])
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def aligned16(typingctx, arr):  # noqa: ARG001
        """The address of arr's first element is a multiple of 16 bytes."""
        if not _is_array(arr):
            return None
        sig = types.boolean(arr)

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            low = builder.and_(builder.ptrtoint(data, _I64), ir.Constant(_I64, 15))
            return builder.icmp_unsigned("==", low, ir.Constant(_I64, 0))

        return sig, codegen
