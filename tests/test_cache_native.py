"""Kernels cached as shared libraries (backends/llvm/native.py) and the host record that keys
them without llvmlite (lowbitc/cache/host.py): a hit in a new process loads the library with
ctypes and never imports llvmlite; a corrupt library is detected and rebuilt; without a linker
(or with one that fails) kernels run through MCJIT, and such entries load anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lowbitc import compiler
from lowbitc.backends.llvm import jit, native
from lowbitc.cache import CacheWarning, default_cache
from lowbitc.cache import host as cache_host
from lowbitc.compiler import compile
from lowbitc.errors import BackendError

SOURCE = """kernel twice[BN: int = 64](x: f32[N], y: f32[N])
  grid (cdiv(N, BN),)
{
  a = load(x[block.x*BN :+ BN])
  store(y[block.x*BN :+ BN], a + a)
}
"""
needs_linker = pytest.mark.skipif(native.linker() is None, reason="no linker on this machine")

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import lowbitc
    k = lowbitc.compile(sys.argv[1])
    x = np.arange(1000, dtype=np.float32)
    y = np.zeros_like(x)
    k(x, y)  # a grid of 16 blocks: the thread pool's own library loads too
    from lowbitc.cache import default_cache
    print(json.dumps({"ok": bool((y == 2 * x).all()), "llvmlite": "llvmlite" in sys.modules,
                      "module": type(k._exe.module).__name__,
                      "builds": default_cache().stats["builds"]}))
""")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBITC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LOWBITC_NO_CACHE", raising=False)
    monkeypatch.delenv("LOWBITC_LINKER", raising=False)
    return tmp_path / "cache"


def run_child(cache: Path, **env: str) -> dict:
    env = {**os.environ, "LOWBITC_CACHE_DIR": str(cache), **env}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, SOURCE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(k) -> None:
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    y = np.zeros_like(x)
    k(x, y)
    np.testing.assert_array_equal(y, 2 * x)


def kernel_blob(cache_dir: Path) -> Path:
    """The content file of the one compiled kernel (JSON header line, then its machine code)."""
    files = [p for p in (cache_dir / "objects").rglob("*.bin") if b'"lowered"' in p.read_bytes()]
    assert len(files) == 1
    return files[0]


@needs_linker
def test_a_hit_in_a_new_process_loads_a_shared_library_without_llvmlite(cache_dir):
    first, second = run_child(cache_dir), run_child(cache_dir)
    assert first["ok"] and second["ok"]
    assert first["builds"] >= 1 and first["llvmlite"]
    assert second["builds"] == 0 and not second["llvmlite"]  # the pool came from the cache too
    assert first["module"] == second["module"] == "SharedModule"
    data = kernel_blob(cache_dir).read_bytes()
    assert native.elf_type(data.partition(b"\n")[2]) == native.ET_DYN
    assert not any((cache_dir / "tmp").iterdir())  # the private copies are unlinked after dlopen


@needs_linker
def test_a_corrupt_shared_library_is_detected_and_rebuilt(cache_dir, monkeypatch):
    compile(SOURCE)
    default_cache().close()
    path = kernel_blob(cache_dir)
    data = bytearray(path.read_bytes())
    head = data.index(b"\n") + 1
    data[head + 0x1000] ^= 0xFF  # in the library's code, past the ELF header
    path.write_bytes(bytes(data))
    built = []
    real = compiler._build
    monkeypatch.setattr(compiler, "_build", lambda *a: built.append(1) or real(*a))
    with pytest.warns(CacheWarning, match="sha256"):
        k = compile(SOURCE)
    check(k)
    assert built == [1] and isinstance(k._exe.module, native.SharedModule)
    check(compile(SOURCE))
    assert built == [1]


@needs_linker
def test_a_library_that_does_not_load_is_replaced(cache_dir):
    compile(SOURCE)
    key = compiler._key(compiler._read(SOURCE), "llvm", None, {})
    data = default_cache().get(key)
    head, _, image = data.partition(b"\n")
    bad = image[:64] + b"\0" * (len(image) - 64)  # an ELF header over nothing: dlopen fails
    default_cache().put(key, head + b"\n" + bad, kind="kernel")
    with pytest.raises(BackendError, match="cannot load the shared library"):
        native.load(bad, "twice")
    with pytest.warns(CacheWarning, match="could not be loaded"):
        k = compile(SOURCE)
    check(k)


def test_without_a_linker_kernels_run_through_mcjit_and_load_anywhere(cache_dir):
    without = run_child(cache_dir, LOWBITC_LINKER="none")
    assert without["ok"] and without["module"] == "CompiledModule"
    assert native.elf_type(kernel_blob(cache_dir).read_bytes().partition(b"\n")[2]) == (
        native.ET_REL
    )
    again = run_child(cache_dir)  # a machine with a linker hits the object: MCJIT loads it
    assert again["ok"] and again["builds"] == 0 and again["module"] == "CompiledModule"


def test_a_failing_linker_falls_back_to_mcjit_with_a_warning(cache_dir, monkeypatch):
    monkeypatch.setenv("LOWBITC_LINKER", "false")  # /bin/false: runs and fails
    with pytest.warns(CacheWarning, match="linking .* failed"):
        k = compile(SOURCE)
    check(k)
    assert isinstance(k._exe.module, jit.CompiledModule)


def test_elf_type_accepts_only_this_machines_elf_files():
    obj = jit.object_code("define void @f() {\n  ret void\n}\n", "f")
    assert native.elf_type(obj) == native.ET_REL
    assert native.elf_type(b"not an ELF file" * 8) is None
    foreign = bytearray(obj)
    foreign[18:20] = (40).to_bytes(2, "little")  # ARM (32-bit)
    assert native.elf_type(bytes(foreign)) is None
    with pytest.raises(BackendError, match="empty"):
        native.load(b"", "f")


def test_the_host_record_answers_as_llvm_does_and_is_rewritten_when_bad(cache_dir):
    fp = cache_host.fingerprint()
    if fp is None:
        pytest.skip("no /proc/cpuinfo: every process asks LLVM")
    truth = cache_host.query_llvm()
    assert cache_host.real_host() == truth  # (llvm_host: LOWBITC_TARGET_CPU applied to it)
    path = cache_host.record_path(fp)
    record = json.loads(path.read_text())
    assert record["host"]["cpu"] == truth.cpu and record["fingerprint"] == fp
    # a record is believed only with its checksum: an edited one is replaced by LLVM's word
    record["host"]["cpu"] = "some-other-cpu"
    path.write_text(json.dumps(record))
    assert cache_host._read_record(path, fp) is None
    assert cache_host.real_host() == truth
    assert json.loads(path.read_text())["host"]["cpu"] == truth.cpu
    # a record under another fingerprint (another CPU or llvmlite) is not this host's
    assert cache_host._read_record(path, "0" * 64) is None


def test_the_fingerprint_follows_the_cpu_description():
    text = "processor\t: 0\nvendor_id\t: X\ncpu MHz\t\t: 2100.1\nflags\t\t: sse avx\n\nprocessor: 1"
    stable = cache_host._first_cpu(text)
    assert stable == ["vendor_id:X", "flags:sse avx"]  # per-core and clock lines dropped
    assert cache_host._first_cpu(text.replace("2100.1", "800.0")) == stable
    assert cache_host._first_cpu(text.replace("sse avx", "sse avx avx512f")) != stable
