"""benchmarks.ab: variants compiled side by side in one process, timed, checked bit for bit."""

import pytest

from benchmarks import ab


def test_variants_are_timed_and_compared():
    # (the inline GEMV's prefetches on, which some hosts do without: target.INLINE_PREFETCH)
    res = ab.run("u4", [("nta", "target.INLINE_PREFETCH = True; "
                                "target.PREFETCH_LOCALITY['rows'] = 0"),
                        ("t0", "target.PREFETCH_LOCALITY['rows'] = 3")],
                 act="i8", n=256, rounds=2, burst_ms=0.5, copies=2)
    try:
        assert res["copies"] == 2 and list(res["variants"]) == ["nta", "t0"]
        base, t0 = res["variants"]["nta"], res["variants"]["t0"]
        assert base["streamed_ratio"] == 1.0 and base["in_cache_ratio"] == 1.0
        assert t0["streamed"] > 0 and t0["in_cache"] > 0 and t0["cpu_per_wall"] > 0
        assert t0["max_abs_diff"] == 0.0  # a prefetch hint changes no result
        assert t0["llvm"] != base["llvm"]  # each variant compiled its own (no cache hit)
    finally:
        from lowbitc.backends.llvm import target
        target.PREFETCH_LOCALITY.clear()
        target.INLINE_PREFETCH = None


def test_a_variant_needs_a_name():
    with pytest.raises(SystemExit):
        ab.main(["u4", "no colon here"])


def test_user_kernel_variants_take_their_parameters():
    from benchmarks import ab_user

    res = ab_user.run("gptq_act", [("base", "pass"), ("gc4", "params['GC'] = 4")], n=256,
                      rounds=2, burst_ms=0.5, copies=2)
    base, gc4 = res["variants"]["base"], res["variants"]["gc4"]
    assert base["streamed_ratio"] == 1.0 and gc4["streamed"] > 0 and gc4["in_cache"] > 0
    # the snippet's GC reached the compile; the base keeps the case's (G = 2 groups: 8)
    assert gc4["params"]["GC"] == 4 and base["params"]["GC"] == 8
    assert gc4["vs_matmul"] > 0
    assert gc4["max_abs_diff"] < 1e-3  # the same sums, in passes of 4 groups


def test_user_kernel_must_be_known():
    from benchmarks import ab_user

    with pytest.raises(ValueError, match="expected one of"):
        ab_user.run("no_such_kernel", [("base", "pass")], n=256, rounds=1)
