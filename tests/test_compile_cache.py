"""lowbitc.compile's persistent cache: hits across processes (without the DSL front end),
misses when the source, an imported file, the parameters, the target or the codegen hash
change, corrupt entries rebuilt with a warning, concurrent compiles, and hits that behave
exactly like fresh compiles. No timing is asserted (benchmarks/bench_compile.py times it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lowbitc
from lowbitc import compiler
from lowbitc.abi import ABI
from lowbitc.backends.llvm.native import linker
from lowbitc.cache import CacheWarning, default_cache
from lowbitc.cache import key as cache_key
from lowbitc.compiler import compile
from lowbitc.errors import LowbitcError

SOURCE = """kernel scale[BN: int = 64, F: float = 2.0](x: f32[N], y: f32[N])
  grid (cdiv(N, BN),)
{
  a = load(x[block.x*BN :+ BN])
  store(y[block.x*BN :+ BN], a * F)
}
"""
MATMUL = str(Path(lowbitc.__file__).parent / "kernels" / "matmul.lbk")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBITC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LOWBITC_NO_CACHE", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def built(monkeypatch) -> list:
    """Each uncached compile (parse, lower, passes, backend) the compiler runs."""
    calls, real = [], compiler._build
    monkeypatch.setattr(compiler, "_build", lambda *a: calls.append(a[2:]) or real(*a))
    return calls


def kernel_entries() -> int:
    return default_cache().info()["by_kind"].get("kernel", {}).get("entries", 0)


def run_scale(k, factor: float = 2.0) -> None:
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    y = np.zeros_like(x)
    k(x, y)
    np.testing.assert_array_equal(y, np.float32(factor) * x)


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import lowbitc
    k = lowbitc.compile(sys.argv[1], W=lowbitc.dtype("u3"), BM=4)
    M, N, K = 3, 40, 300
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K)).astype(np.float32)
    codes = rng.integers(0, 8, (N, K)).astype(np.uint8)
    s = np.ones((N, 3), np.float32)
    y = np.empty((M, N), np.float32)
    k(x, lowbitc.pack(codes, 3), s, np.zeros((1, 1), np.float32), y, 128, K=K)
    err = float(np.abs(y - x @ codes.T.astype(np.float32)).max())
    from lowbitc.cache import default_cache
    print(json.dumps({"err": err, "front_end": "lark" in sys.modules,
                      "passes_ran": "lowbitc.dsl.lower" in sys.modules,
                      "loaded": sorted(m for m in sys.argv[2].split(",") if m in sys.modules),
                      "stats": default_cache().stats}))
""")
# what a compile-cache hit (loading and calling the kernel) must not import
NOT_ON_A_HIT = ("lark", "networkx", "numba", "ml_dtypes", "importlib.metadata", "lowbitc.dsl",
                "lowbitc.passes", "lowbitc.interp", "lowbitc.ir.opdefs", "lowbitc.ir.type_rules",
                "lowbitc.ir.memory_rules", "lowbitc.ir.parser",
                "lowbitc.ir.printer", "lowbitc.ir.builder", "lowbitc.ir.core",
                "lowbitc.backends.llvm.codegen")
if linker() is not None:  # the kernel is a shared library: neither MCJIT nor llvmlite
    NOT_ON_A_HIT += ("lowbitc.backends.llvm.jit", "llvmlite")


def child(cache: Path) -> dict:
    env = {**os.environ, "LOWBITC_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", CHILD, MATMUL, ",".join(NOT_ON_A_HIT)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_shipped_gemm_without_the_front_end(cache_dir):
    first, second = child(cache_dir), child(cache_dir)
    assert first["front_end"] and first["stats"]["builds"] >= 1
    assert not second["front_end"] and not second["passes_ran"]
    assert second["loaded"] == []  # nor the passes, the IR's op table and parser, numba...
    assert "lark" in first["loaded"] and "lowbitc.passes" in first["loaded"]
    assert second["stats"]["builds"] == 0 and second["stats"]["hits"] >= 1
    assert first["err"] < 1e-3 and second["err"] < 1e-3


def test_a_hit_is_the_same_kernel(cache_dir, built):
    fresh = compile(MATMUL, W=lowbitc.dtype("nf4"), ZP=True)
    hit = compile(MATMUL, W=lowbitc.dtype("nf4"), ZP=True)
    assert len(built) == 1 and hit is not fresh
    assert hit.ir == fresh.ir and hit.lowered == fresh.lowered
    assert hit.text("llvm") == fresh.text("llvm") and hit.source == fresh.source
    assert hit.name == fresh.name and hit.params == fresh.params


def test_source_params_target_and_codegen_changes_miss(cache_dir, built, monkeypatch):
    run_scale(compile(SOURCE))
    run_scale(compile(SOURCE))
    assert len(built) == 1
    run_scale(compile(SOURCE.replace("a * F", "F * a")))  # source
    assert len(built) == 2
    run_scale(compile(SOURCE, F=3.0), 3.0)  # parameters
    run_scale(compile(SOURCE, BN=64), 2.0)  # a default spelled out is another key
    assert len(built) == 4
    with monkeypatch.context() as m:
        m.setattr(cache_key, "host_target", lambda: "some-other-cpu:+avx2")
        run_scale(compile(SOURCE))  # target
    assert len(built) == 5
    with monkeypatch.context() as m:
        m.setattr(cache_key, "codegen_hash", lambda: "0" * 64)
        run_scale(compile(SOURCE))  # lowbitc's own compiler changed
    assert len(built) == 6
    run_scale(compile(SOURCE))
    assert len(built) == 6 and kernel_entries() == 6


def test_a_change_in_an_imported_file_misses(cache_dir, built, tmp_path):
    (tmp_path / "helpers.lbk").write_text("func twice(v) { return v * 2.0 }\n")
    main = tmp_path / "main.lbk"
    main.write_text('import "helpers.lbk"\n' + SOURCE.replace("a * F", "twice(a)"))
    run_scale(compile(main))
    run_scale(compile(str(main)))
    assert len(built) == 1
    (tmp_path / "helpers.lbk").write_text("func twice(v) { return v + v }\n")
    run_scale(compile(main))
    assert len(built) == 2


def test_compile_errors_are_not_cached(cache_dir):
    bad = SOURCE.replace("a * F", "a * G")
    for _ in range(2):
        with pytest.raises(LowbitcError, match=r"<string>:5:\d+"):
            compile(bad)
    assert kernel_entries() == 0


def _corrupt_kernel_file(cache_dir: Path) -> None:
    files = [p for p in (cache_dir / "objects").rglob("*.bin") if b'"lowered"' in p.read_bytes()]
    assert len(files) == 1
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    files[0].write_bytes(bytes(data))


def test_a_corrupt_entry_is_rebuilt_with_a_warning(cache_dir, built):
    compile(SOURCE)
    default_cache().close()
    _corrupt_kernel_file(cache_dir)
    with pytest.warns(CacheWarning, match="sha256"):
        k = compile(SOURCE)
    run_scale(k)
    assert len(built) == 2
    run_scale(compile(SOURCE))  # the rebuilt entry serves the next compile
    assert len(built) == 2


def test_an_unloadable_entry_is_replaced_with_a_warning(cache_dir, built):
    compile(SOURCE)
    key = compiler._key(compiler._read(SOURCE), "llvm", None, {})
    default_cache().put(key, b'{"version": 1, "name": "scale"}\n\x00garbage', kind="kernel")
    with pytest.warns(CacheWarning, match="could not be loaded"):
        k = compile(SOURCE)
    run_scale(k)
    run_scale(compile(SOURCE))
    assert len(built) == 2


def test_the_cache_can_be_turned_off(cache_dir, monkeypatch):
    monkeypatch.setenv("LOWBITC_NO_CACHE", "1")
    run_scale(compile(SOURCE))
    assert not (cache_dir / "index.sqlite").exists()


def test_two_processes_compiling_at_once_build_once(cache_dir, built):
    env = {**os.environ, "LOWBITC_CACHE_DIR": str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, MATMUL, ""], env=env, text=True,
                              stdout=subprocess.PIPE) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert sorted(r["front_end"] for r in results) == [False, True]
    assert all(r["err"] < 1e-3 for r in results)
    assert kernel_entries() == 1


SHIFT_GRID = SOURCE.replace("grid (cdiv(N, BN),)", "grid ((N + BN - 1) >> 6,)")


@pytest.mark.parametrize("source", [SOURCE, SHIFT_GRID], ids=["int-grid", "shift-grid"])
def test_a_hit_launches_from_its_abi_and_parses_the_ir_only_when_asked(cache_dir, source):
    fresh = compile(source)
    hit = compile(source)
    assert isinstance(hit._ir, str) and isinstance(hit._lowered, str)  # not parsed yet
    run_scale(hit)  # a grid beyond integer arithmetic (>>) asks for the lowered IR
    assert (hit._exe.grid is None) == (source is SHIFT_GRID)
    assert isinstance(hit._lowered, str) == (source is SOURCE)
    assert hit.ir == fresh.ir and hit.lowered == fresh.lowered


def test_the_abi_round_trips_through_json_and_rejects_garbage():
    k = compile(SOURCE).lowered
    abi = ABI.of(k)
    assert abi.grid is not None and [p.name for p in abi.params] == ["x", "y"]
    assert ABI.from_json(json.loads(json.dumps(abi.to_json()))) == abi
    assert ABI.from_json(ABI.of(compile(SHIFT_GRID).lowered).to_json()).grid is None
    bad = abi.to_json()
    bad["grid"][0][0][1] = "pow"
    for data in ({"name": "k"}, bad, {**abi.to_json(), "params": [[0, "x", "f32", [1.5]]]}):
        with pytest.raises(LowbitcError, match="malformed kernel ABI"):
            ABI.from_json(data)


def test_the_ir_package_loads_its_parts_on_first_use():
    code = ("import sys, lowbitc.ir.core; assert 'lowbitc.ir.opdefs' not in sys.modules; "
            "import lowbitc.ir.verify; from lowbitc.ir import verify, parse, OPS; "
            "import lowbitc.ir as ir; print(callable(verify), ir.verify is verify, len(OPS) > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "True"]


def test_ops_matmul_on_a_hit_imports_no_heavy_module(cache_dir):
    """The user's path (import lowbitc, lowbitc.ops, a cached kernel's first call) loads none
    of ml_dtypes (0.5 s to import in 0.7.0), torch, llvmlite, lark, networkx or numba."""
    from benchmarks.bench_compile import OPS_CHILD, OPS_HEAVY

    heavy = OPS_HEAVY + ("benchmarks",) if linker() is not None else tuple(
        m for m in OPS_HEAVY + ("benchmarks",) if m != "llvmlite")
    env = {**os.environ, "LOWBITC_CACHE_DIR": str(cache_dir)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", OPS_CHILD.format(heavy=heavy)],
                                      env=env, capture_output=True, text=True, timeout=300,
                                      check=True).stdout.strip().splitlines()[-1])
            for _ in range(2)]
    assert runs[0]["built"] and "lark" in runs[0]["heavy_modules_loaded"]
    assert not runs[1]["built"] and runs[1]["heavy_modules_loaded"] == []
