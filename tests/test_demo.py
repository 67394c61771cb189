"""`lowbitc demo` checks every format and times a GEMV row per format with weights rotating
through distinct copies; lowbitc.memory's pieces (LLC size, copies, in-turn timing) and
QTensor.replica, which they rest on."""

from __future__ import annotations

import re

import numpy as np

from lowbitc import ops
from lowbitc.cli import main
from lowbitc.memory import copies_for, llc_bytes, time_in_turn
from lowbitc.quant import quantize
from lowbitc.repack import aligned_copy


def test_demo_checks_and_times_a_streaming_row_per_format(capsys):
    fmts = ["u3", "f8e4m3fn", "nf4"]
    code = main(["demo", "--formats", ",".join(fmts), "--n", "256", "--check-n", "128",
                 "--rounds", "2", "--copies", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "all results match numpy" in out
    part1, part2 = out.split("2. Speed")
    for f in fmts:
        assert re.search(rf"^{f}\s+bit-exact\s", part1, re.M)
        row = re.search(rf"^{f}\s+([\d.]+)\s+[\d.]+\s+3\s+\d+ us\s+([\d.]+)x\s+\d+ us", part2, re.M)
        assert row, part2
        bits = float(row.group(1))  # codes plus f32 scales (and zero points) per 128
        assert bits == {"u3": 3 + 64 / 128, "f8e4m3fn": 8 + 32 / 128, "nf4": 4 + 32 / 128}[f]
    assert "3 copies" in part2 and "one weight" in part2
    from lowbitc.backends.llvm import target
    assert f"code compiled for {target.cpu_name()}" in part1.splitlines()[0]


def test_llc_size_comes_from_sysfs(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"),
                                             (2, "Unified", "1024K"), (3, "Unified", "32768K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert llc_bytes(tmp_path) == 32 << 20
    assert llc_bytes(tmp_path / "missing") == 32 << 20  # the fallback
    assert llc_bytes() >= 1 << 20
    assert copies_for(9 << 20, llc=32 << 20) == 15  # 15 x 9 MiB >= 4 x 32 MiB
    assert copies_for(64 << 20, llc=32 << 20) == 2 and copies_for(1 << 30, llc=1) == 2


def test_time_in_turn_calls_each_in_turn():
    calls = []
    t = time_in_turn([lambda i=i: calls.append(i) for i in range(3)], rounds=2)
    assert calls == [0, 1, 2] * 3 and t >= 0


def test_a_replica_is_the_same_weight_in_fresh_memory():
    rng = np.random.default_rng(0)
    qw = quantize(rng.standard_normal((40, 96)).astype(np.float32), "u3", 32, zero_point=True)
    x = rng.standard_normal((1, 96)).astype(np.float32)
    y = ops.matmul(x, qw)  # makes the kernel's packing, which the replica copies
    twin = qw.replica()
    for a, b in [(qw.scales, twin.scales), (qw.zeros, twin.zeros)]:
        assert np.array_equal(a, b) and not np.shares_memory(a, b)
    assert twin.codes is qw.codes  # not read by u3 kernels: shared
    u8 = quantize(rng.standard_normal((8, 96)).astype(np.float32), "u8", 32, zero_point=True)
    assert not np.shares_memory(u8.codes, u8.replica().codes)  # read as bytes: copied
    for p, words in qw.__dict__["_repacked"].items():
        copy = twin.packed_as(p).words
        assert not np.shares_memory(words.words, copy) and np.array_equal(words.words, copy)
        assert copy.ctypes.data % 64 == 0  # on a line, as the packing made it
    np.testing.assert_array_equal(ops.matmul(x, twin), y)
    a8 = quantize(rng.standard_normal((4096, 256)).astype(np.float32), "u4", 128, True)
    ops.matmul(rng.standard_normal((1, 256)).astype(np.float32), a8, act="i8")  # inline: 0.6 MB
    for twin in [a8.replica() for _ in range(8)]:  # a plain copy would start 16 bytes in
        (w, sz), = twin.__dict__["_tile_major"].values()
        assert w.words.ctypes.data % 64 == 0 and np.shares_memory(w.words, sz)
    src = np.arange(1 << 12, dtype=np.uint32)
    for skip in range(16):  # any start: the copy is on a line, equal, of the same shape
        copy = aligned_copy(src[skip:skip + 2048].reshape(64, 32))
        assert copy.ctypes.data % 64 == 0 and copy.shape == (64, 32)
        assert np.array_equal(copy.reshape(-1), src[skip:skip + 2048])
