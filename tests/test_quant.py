"""quantize/QTensor: the dequantization formula, search quality, options, storage, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbitc
from lowbitc.quant import QTensor


def weights(n=64, k=256, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


def mse(q: QTensor, w: np.ndarray) -> float:
    return float(np.mean((q.dequantize().astype(np.float64) - w) ** 2))


def reference_dequantize(q: QTensor) -> np.ndarray:
    """The documented formula, element by element in float32."""
    n, k = q.shape
    out = np.empty((n, k), np.float32)
    for i in range(n):
        for j in range(k):
            g = j // q.group_size
            v = q.dtype.decode(q.codes[i, j : j + 1])[0]
            if q.zeros is not None:
                v = np.float32(v - q.zeros[i, g])
            out[i, j] = np.float32(v * q.scales[i, g])
    return out


@pytest.mark.parametrize(
    "name,gs,zp,sd",
    [("u4", 32, True, "f32"), ("i3", 7, False, "f32"), ("nf4", 16, False, "f16"),
     ("f4e2m1", 32, False, "f8e8m0fnu"), ("b2", 5, False, "bf16"), ("u2", 64, True, "f8e4m3fn")],
)  # fmt: skip
def test_fields_and_formula(name, gs, zp, sd):
    w = weights(6, 50)
    q = lowbitc.quantize(w, name, gs, zero_point=zp, scale_dtype=sd)
    groups = -(-50 // gs)
    assert q.dtype is lowbitc.dtype(name) and q.shape == (6, 50) and q.group_size == gs
    assert q.codes.dtype == np.uint8 and q.codes.shape == (6, 50)
    assert q.scales.dtype == np.float32 and q.scales.shape == (6, groups)
    assert (q.zeros is not None) == zp == q.zero_point and q.scale_dtype == sd
    if zp:
        assert q.zeros.dtype == np.float32 and q.zeros.shape == (6, groups)
    assert (q.codes < len(q.dtype.values())).all()
    assert np.array_equal(q.packed, lowbitc.pack(q.codes, q.dtype.bits))
    deq = q.dequantize()
    assert deq.dtype == np.float32
    assert np.array_equal(deq.view(np.uint32), reference_dequantize(q).view(np.uint32))
    sfmt = lowbitc.dtype(sd)
    if sfmt.bits < 32:  # scales are values of the scale format
        assert np.array_equal(sfmt.decode(sfmt.encode(q.scales)), q.scales)
    assert (q.scales > 0).all()


def test_codes_are_nearest_for_the_stored_scale():
    w = weights()
    for name, sd in (("i4", "f32"), ("f4e2m1", "f8e8m0fnu"), ("nf4", "f8e4m3fn")):
        q = lowbitc.quantize(w, name, 32, scale_dtype=sd)
        y = w / np.repeat(q.scales, 32, axis=1)
        assert np.array_equal(q.codes, q.dtype.encode(y))


def test_error_falls_as_bits_rise():
    w = weights(32, 512)
    for family, zp in (("u", True), ("i", False), ("b", False)):
        errs = [mse(lowbitc.quantize(w, f"{family}{b}", 64, zp), w) for b in range(2, 9)]
        assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), (family, errs)
    names = ("f3e1m1", "f4e2m1", "f5e2m2", "f6e2m3")
    floats = [mse(lowbitc.quantize(w, n, 64), w) for n in names]
    assert all(a > b for a, b in zip(floats, floats[1:], strict=False)), floats


@pytest.mark.parametrize("name,zp", [("u1", True), ("u1", False), ("i1", False), ("b1", False),
                                     ("u2", True), ("i2", False), ("b2", False), ("f2e1m0", False),
                                     ("f3e1m1", False)])  # fmt: skip
def test_low_bit_error_below_zeros(name, zp):
    w = weights(32, 512, seed=1)
    e = mse(lowbitc.quantize(w, name, 128, zero_point=zp), w)
    assert e < 0.9 * float(np.mean(w.astype(np.float64) ** 2)), e


def test_search_beats_min_max():
    """On 2- and 3-bit codes the search must beat plain min-max (absmax) scaling."""
    w = weights(64, 512, seed=2)
    for name in ("i2", "i3", "b2"):
        q = lowbitc.quantize(w, name, 128)
        fmt = q.dtype
        vmax = float(np.abs(fmt.values()).max())
        s = np.abs(w.reshape(64, 4, 128)).max(-1) / vmax
        naive = QTensor(fmt, w.shape, 128, fmt.encode(w / np.repeat(s, 128, 1)),
                        s.astype(np.float32))
        assert mse(q, w) < 0.9 * mse(naive, w), name
    b1 = mse(lowbitc.quantize(w, "b1", 128), w)
    assert abs(b1 - (1 - 2 / np.pi)) < 0.02  # the optimum for +-s codes is s = mean |w|


@pytest.mark.parametrize("name,gs,scale_dtype", [("u4", 64, "f32"), ("u3", 24, "f32"),
                                                 ("u2", 32, "f8e4m3fn"), ("u8", 64, "f32")])
def test_zero_point_refit_never_loses_and_helps(monkeypatch, name, gs, scale_dtype):
    """The least-squares polish after the grid keeps a group's (scale, zero) unless it lowers
    that group's error; over many groups it lowers the total."""
    from lowbitc import quant

    w = weights(64, 200, seed=5) * np.linspace(0.2, 3, 200, dtype=np.float32)

    def group_errors(q: QTensor) -> np.ndarray:
        d = (q.dequantize().astype(np.float64) - w) ** 2
        return np.add.reduceat(d, np.arange(0, w.shape[1], gs), axis=1)

    monkeypatch.setattr(quant, "REFITS", 0)
    grid = lowbitc.quantize(w, name, gs, zero_point=True, scale_dtype=scale_dtype)
    monkeypatch.setattr(quant, "REFITS", 4)
    fit = lowbitc.quantize(w, name, gs, zero_point=True, scale_dtype=scale_dtype)
    e_grid, e_fit = group_errors(grid), group_errors(fit)
    assert np.all(e_fit <= e_grid * (1 + 1e-5) + 1e-12)
    assert e_fit.sum() < 0.995 * e_grid.sum()


def test_partial_groups_and_edges():
    w = weights(3, 70)
    q = lowbitc.quantize(w, "u3", 32, zero_point=True)
    assert q.scales.shape == (3, 3)
    tail = lowbitc.quantize(w[:, 64:], "u3", 32, zero_point=True)  # same search on its own
    assert np.array_equal(q.scales[:, 2], tail.scales[:, 0])
    assert np.array_equal(q.codes[:, 64:], tail.codes)
    big = lowbitc.quantize(w, "i4", 1000)
    assert big.scales.shape == (3, 1)
    one = lowbitc.quantize(w, "i4", 1)
    assert one.scales.shape == (3, 70) and mse(one, w) < 1e-3
    z = lowbitc.quantize(np.zeros((2, 8), np.float32), "i4", 4)
    assert np.all(z.dequantize() == 0) and np.all(np.isfinite(z.scales))
    c = lowbitc.quantize(np.full((2, 8), 3.0, np.float32), "u2", 4, zero_point=True)
    assert np.allclose(c.dequantize(), 3.0)
    assert lowbitc.quantize(w.astype(np.float16), "i4", 16).codes.shape == (3, 70)


def test_mx_and_nvfp4_options():
    w = weights(16, 256)
    mx = lowbitc.quantize(w, "f4e2m1", 32, scale_dtype="f8e8m0fnu")
    log2 = np.log2(mx.scales)
    assert np.array_equal(log2, np.round(log2))  # powers of two
    # the search is at least as good as the OCP MX rule 2^(floor(log2 amax) - emax)
    amax = np.abs(w.reshape(16, 8, 32)).max(-1)
    s = (2.0 ** (np.floor(np.log2(amax)) - 2)).astype(np.float32)
    rule = QTensor(mx.dtype, w.shape, 32, mx.dtype.encode(w / np.repeat(s, 32, 1)), s)
    assert mse(mx, w) <= mse(rule, w)
    nv = lowbitc.quantize(w, "f4e2m1", 16, scale_dtype="f8e4m3fn")
    e4 = lowbitc.dtype("f8e4m3fn")
    assert np.array_equal(e4.decode(e4.encode(nv.scales)), nv.scales)
    assert mse(nv, w) < mse(mx, w)


def test_save_load_round_trip(tmp_path):
    w = weights(5, 45)
    cb = lowbitc.codebook([-1.5, -0.5, 0.0, 0.25, 1.0], name="tiny")
    for q in (lowbitc.quantize(w, "u5", 16, zero_point=True),
              lowbitc.quantize(w, "f8e4m3", 8, scale_dtype="bf16"),
              lowbitc.quantize(w, cb, 10)):  # fmt: skip
        path = tmp_path / f"{q.dtype.name}.safetensors"
        q.save(path)
        r = lowbitc.load(path)
        assert r.dtype == q.dtype and r.shape == q.shape and r.group_size == q.group_size
        assert r.scale_dtype == q.scale_dtype and np.array_equal(r.codes, q.codes)
        assert np.array_equal(r.scales, q.scales)
        assert (r.zeros is None) == (q.zeros is None)
        if q.zeros is not None:
            assert np.array_equal(r.zeros, q.zeros)
        assert np.array_equal(r.dequantize(), q.dequantize())
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="path: .*not a lowbitc QTensor"):
        lowbitc.load(tmp_path / "other.safetensors")


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 70), st.integers(1, 40),
       st.sampled_from(["u1", "i2", "b3", "u4", "f4e2m1", "nf4", "f6e3m2", "f8e5m2"]))
def test_any_shape(n, k, gs, name):
    w = np.random.default_rng(n * 1000 + k).standard_normal((n, k)).astype(np.float32) * 3
    q = lowbitc.quantize(w, name, gs, zero_point=name[0] == "u")
    assert q.scales.shape == (n, -(-k // gs))
    assert np.array_equal(lowbitc.unpack(q.packed, q.dtype.bits, k), q.codes)
    assert np.isfinite(q.dequantize()).all()


def test_bad_inputs():
    w = weights(4, 16)
    with pytest.raises(ValueError, match=r"w: expected finite .*index \(1, 2\)"):
        bad = w.copy()
        bad[1, 2] = np.nan
        lowbitc.quantize(bad, "u4", 8)
    with pytest.raises(ValueError, match=r"w: expected a 2-D .*shape \(16,\)"):
        lowbitc.quantize(w[0], "u4", 8)
    with pytest.raises(TypeError, match="w: expected a float array"):
        lowbitc.quantize(w.astype(np.int32), "u4", 8)
    for gs in (0, -3):
        with pytest.raises(ValueError, match="group_size"):
            lowbitc.quantize(w, "u4", gs)
    for gs in (2.0, True, None):
        with pytest.raises(TypeError, match="group_size"):
            lowbitc.quantize(w, "u4", gs)
    with pytest.raises(ValueError, match="zero_point: .*i4"):
        lowbitc.quantize(w, "i4", 8, zero_point=True)
    with pytest.raises(ValueError, match="scale_dtype"):
        lowbitc.quantize(w, "u4", 8, scale_dtype="u8")
    with pytest.raises(ValueError, match="dtype"):
        lowbitc.quantize(w, "u9", 8)
    # the module-level quantizer takes one format; it points a list at lowbitc.quantize
    from lowbitc import quant
    with pytest.raises(TypeError, match=r"dtype: expected one format .*\['u4', 'nf4'\].*mixture"):
        quant.quantize(w, ["u4", "nf4"], 8)
    with pytest.raises(ValueError, match="dtype: expected a 1-8-bit"):
        lowbitc.quantize(w, "f16", 8)
    q = lowbitc.quantize(w, "u4", 8)
    with pytest.raises(ValueError, match="scales: expected float32"):
        QTensor(q.dtype, q.shape, 8, q.codes, q.scales[:, :1])
