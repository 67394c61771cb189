"""benchmarks/roofline_cuda.py: the static tensor-core roofline's arithmetic and its table."""

import math

import pytest

R = pytest.importorskip("benchmarks.roofline_cuda")


def test_bytes_and_bounds_of_a_u4_gemv_on_a100():
    gpu = R.GPUS["A100"]
    n = k = 4096
    want = n * k // 2 + 2 * 4 * n * (k // 128) + 2 * k + 4 * n  # codes, f32 scales+zeros, x, y
    assert R.bytes_moved(1, n, k, "u4") == want
    b = R.bounds(gpu, 1, n, k, "u4", r=8)
    assert math.isclose(b["bandwidth_s"], want / 2.039e12)
    assert math.isclose(b["tensor_s"], 2 * 16 * n * k / 312e12)  # one 16-row tile
    hmma = (n // 8) * (k // 16)
    assert R.hmma_count(1, n, k) == hmma
    assert math.isclose(b["issue_s"], hmma * 9 / (4 * 108 * 1.41e9))
    assert b["predicted_s"] == max(b["bandwidth_s"], b["tensor_s"], b["issue_s"])


def test_floats_carry_no_zero_points():
    assert R.bytes_moved(1, 256, 256, "u4") - R.bytes_moved(1, 256, 256, "f4e2m1fn") == \
        4 * 256 * 2


def test_effective_ratio_amortises_the_weight_side_over_row_tiles():
    assert R.effective_ratio(8, 1) == R.effective_ratio(8, 16) == 8
    assert R.effective_ratio(8, 32) == 8 / 2 + 1 / 8
    assert R.effective_ratio(8, 4096) == 8 / 4 + 1 / 8


def test_ratio_from_stats():
    loop = {"instructions": 90, "sass_mix": {"HMMA": 10, "LOP3": 40}}
    assert R.ratio_from_stats({"inner_loop": loop}) == 8.0
    assert R.ratio_from_stats({"inner_loop": {"instructions": 50, "sass_mix": {"FFMA": 46}}}) \
        is None
    assert R.ratio_from_stats({"inner_loop": None}) is None
    assert R.ratio_from_stats({"inner_loop": {"non_hmma_per_hmma": 6.5}}) == 6.5
    # the tensor-core kernel's figure (`lowbitc emit ... -D A=f16 --format stats`) wins
    assert R.ratio_from_stats({"mma_loop": {"non_hmma_per_hmma": 12.6},
                               "inner_loop": {"non_hmma_per_hmma": 6.5}}) == 12.6


def test_table_labels_bounds_and_predictions():
    text, rows = R.table({("u4", "sm_80"): 7.0})
    assert len(rows) == 2 * 2 * 5 * 4 and "*predicted*" in text.splitlines()[0]
    u4 = [r for r in rows if r["format"] == "u4" and r["gpu"] == "A100"]
    assert all(r["r_measured"] and r["r"] == 7.0 for r in u4)
    assert all(not r["r_measured"] for r in rows if r["gpu"] == "H100")
    assert "bound)" in text


def test_a_ratio_measured_on_the_tile_of_m_is_taken_as_is():
    big = R.tile(4096, 4096, "u4")
    assert big[0] > 16 and R.tile(1, 4096, "u4")[0] == 16  # four warps above M = 16
    text, rows = R.table({("u4", "sm_80", big): 3.25, ("u4", "sm_80"): 6.0})
    a100 = {(r["M"], r["N"]): r for r in rows if r["format"] == "u4" and r["gpu"] == "A100"}
    assert a100[(4096, 4096)]["r_on_tile"] and a100[(4096, 4096)]["r_eff"] == 3.25
    # M <= 16 has no figure on its tile: the 16-row one, not amortised
    assert not a100[(1, 4096)]["r_on_tile"] and a100[(1, 4096)]["r_eff"] == 6.0
    hmma = R.hmma_count(4096, 4096, 4096)
    assert math.isclose(a100[(4096, 4096)]["issue_s"], hmma * 4.25 / (4 * 108 * 1.41e9))
    assert f"| A100 | 4096 | 4096 | u4 | {big[0]}x{big[1]} |" in text
