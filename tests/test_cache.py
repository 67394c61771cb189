"""The persistent compile cache: keys, storage, corruption, eviction, processes, CLI."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbitc.cache import (
    Cache,
    CacheError,
    CacheKey,
    CacheWarning,
    canonical_json,
    codegen_files,
    codegen_hash,
    toolchain_versions,
)
from lowbitc.cache import (
    key as key_module,
)
from lowbitc.cli import main as cli_main
from lowbitc.errors import UserArgumentError

SOURCE = "kernel k[BM: int = 16](x: f32[M]) grid (1,) { }\n"


def make_key(source: str = SOURCE, backend: str = "llvm", target: str = "znver4:+avx2", **params):
    return CacheKey.make(source, params or {"BM": 16}, backend=backend, target=target)


def content_file(cache: Cache, key: CacheKey) -> Path:
    (rel,) = (
        cache._db().execute("SELECT file FROM entries WHERE digest = ?", (key.digest,)).fetchone()
    )
    return cache.path / rel


@pytest.fixture
def cache(tmp_path):
    return Cache(tmp_path / "cache", max_bytes=1 << 20)


# -- keys -------------------------------------------------------------------------------------
def test_every_key_part_changes_the_digest():
    base = make_key()
    variants = [
        make_key(source=SOURCE + " "),
        make_key(BM=32),
        make_key(backend="cuda"),
        make_key(target="sm_80"),
        dataclasses.replace(base, toolchain=base.toolchain + (("numba", "9.9"),)),
        dataclasses.replace(base, codegen="0" * 64),
        base.derive("tuning", bucket={"M": "1"}),
    ]
    digests = {v.digest for v in variants}
    assert base.digest not in digests
    assert len(digests) == len(variants)
    assert make_key().digest == base.digest


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=4),
        st.one_of(st.integers(), st.booleans(), st.text(max_size=4), st.lists(st.integers())),
        max_size=5,
    )
)
def test_params_key_depends_on_content_not_order(params):
    reordered = dict(reversed(list(params.items())))
    a = CacheKey.make(SOURCE, params, backend="llvm", target="t")
    b = CacheKey.make(SOURCE, reordered, backend="llvm", target="t")
    assert a.digest == b.digest
    as_tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    assert CacheKey.make(SOURCE, as_tuples, backend="llvm", target="t").digest == a.digest


def test_canonical_json_handles_numpy_and_dataclasses_and_rejects_objects():
    @dataclasses.dataclass(frozen=True)
    class Fmt:
        name: str
        values: tuple

    assert canonical_json({"b": np.int64(3), "a": 1.5}) == '{"a":1.5,"b":3}'
    (tagged,) = json.loads(canonical_json(Fmt("cb", (1, 2)))).items()
    assert tagged[0].endswith(".Fmt") and tagged[1] == {"name": "cb", "values": [1, 2]}
    assert canonical_json(Fmt("cb", (1, 2))) != canonical_json(Fmt("cb", (1, 3)))
    w1 = canonical_json(np.arange(4, dtype=np.uint8))
    assert w1 != canonical_json(np.arange(4, dtype=np.int8))
    with pytest.raises(UserArgumentError, match=r"params\['f'\]"):
        CacheKey.make(SOURCE, {"f": object()}, backend="llvm")


def test_codegen_hash_covers_the_compiler_sources():
    names = {p.name for p in codegen_files()}
    assert {"key.py", "store.py", "cli.py", "errors.py"} <= names
    roots = {p.parent.name for p in codegen_files()}
    assert {"dsl", "backends"} & roots, "dsl/ and backends/ must be hashed too"
    assert len(codegen_hash()) == 64 and codegen_hash() == codegen_hash()


def test_toolchain_versions_match_the_installed_distributions():
    versions = dict(toolchain_versions())
    for dist in ("llvmlite", "numba", "numba-cuda", "numpy"):
        try:
            expected = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            expected = "absent"
        assert versions[dist] == expected
    assert versions["llvm"].count(".") == 2


def test_codegen_hash_changes_when_a_compiler_file_changes(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "g.lark").write_text("start: 'a'\n")
    (pkg / "notes.txt").write_text("not code")
    monkeypatch.setattr(key_module, "_package_dirs", lambda: [str(pkg)])
    compute = key_module.codegen_hash.__wrapped__
    before = compute()
    (pkg / "notes.txt").write_text("still not code")
    assert compute() == before
    (pkg / "sub" / "g.lark").write_text("start: 'b'\n")
    assert compute() != before


# -- storage ------------------------------------------------------------------------------------
def test_put_get_and_json_round_trip(cache):
    k = make_key()
    assert cache.get(k) is None
    cache.put(k, b"\x7fELF object code", kind="object")
    assert cache.get(k) == b"\x7fELF object code"
    j = make_key(BM=64).derive("tuning", bucket={"M": "2-4"})
    cache.put_json(j, {"config": {"BM": 64}, "seconds": 1e-3})
    assert cache.get_json(j) == {"config": {"BM": 64}, "seconds": 1e-3}
    info = cache.info()
    assert info["entries"] == 2
    assert set(info["by_kind"]) == {"object", "tuning"}


def test_bad_arguments_are_named(cache, tmp_path):
    with pytest.raises(UserArgumentError, match="data"):
        cache.put(make_key(), "text, not bytes")
    with pytest.raises(UserArgumentError, match="kind"):
        cache.put(make_key(), b"x", kind="../evil")
    with pytest.raises(UserArgumentError, match="key"):
        cache.get("abc")
    with pytest.raises(UserArgumentError, match="build"):
        cache.get_or_build(make_key(), lambda: "not bytes")
    with pytest.raises(UserArgumentError, match="max_bytes"):
        Cache(tmp_path / "c2", max_bytes=0)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "empty"])
def test_damaged_entry_is_detected_discarded_and_rebuilt(cache, damage):
    k = make_key()
    data = bytes(range(256)) * 4
    cache.put(k, data)
    path = content_file(cache, k)
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[100] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(data[:500])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.warns(CacheWarning, match="discarded"):
        assert cache.get_or_build(k, lambda: data) == data
    assert cache.stats["builds"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(k) == data


def test_corrupt_index_is_set_aside_and_the_cache_starts_empty(tmp_path):
    cache = Cache(tmp_path / "c")
    cache.put(make_key(), b"old")
    cache.close()
    for leftover in (tmp_path / "c").glob("index.sqlite-*"):
        leftover.unlink()
    (tmp_path / "c" / "index.sqlite").write_bytes(b"this is not a database" * 100)
    fresh = Cache(tmp_path / "c")
    with pytest.warns(CacheWarning, match="index was unreadable"):
        assert fresh.get(make_key()) is None
    fresh.put(make_key(), b"new")
    assert fresh.get(make_key()) == b"new"
    assert (tmp_path / "c" / "index.sqlite.corrupt").exists()


def test_lru_eviction_removes_least_recently_used_first(tmp_path):
    cache = Cache(tmp_path / "c", max_bytes=300)
    keys = [make_key(BM=i) for i in range(4)]
    for k in keys[:3]:
        cache.put(k, b"x" * 100)
    assert cache.get(keys[0]) is not None  # touch the oldest: now keys[1] is least recent
    cache.put(keys[3], b"y" * 100)
    assert cache.get(keys[1]) is None
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], keys[3]))
    assert cache.info()["bytes"] <= 300
    cache.put(keys[1], b"z" * 250)  # evicts as many old entries as needed, keeps the new one
    assert cache.get(keys[1]) == b"z" * 250
    assert cache.info()["bytes"] <= 300
    assert not list((cache.path / "objects").rglob(f"{keys[2].digest}*"))


def test_threads_share_one_build(cache):
    k = make_key()
    calls = []
    out = []

    def build():
        calls.append(1)
        time.sleep(0.2)
        return b"built"

    threads = [
        threading.Thread(target=lambda: out.append(cache.get_or_build(k, build))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [b"built"] * 4 and len(calls) == 1


# -- directory safety ---------------------------------------------------------------------------
def test_unsafe_directories_are_refused(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(CacheError, match="world-writable"):
        Cache(open_dir)
    open_dir.chmod(0o1777)  # sticky, like /tmp: accepted
    Cache(open_dir)
    (tmp_path / "file").write_text("")
    with pytest.raises(CacheError, match="not a directory"):
        Cache(tmp_path / "file")
    fresh = Cache(tmp_path / "new" / "cache")
    assert fresh.path.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(not hasattr(os, "lchown") or os.geteuid() != 0, reason="needs root to chown")
def test_symlink_owned_by_someone_else_is_refused(tmp_path):
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    os.lchown(link, 12345, 12345)
    with pytest.raises(CacheError, match="symlink is owned by uid 12345"):
        Cache(link)


def test_default_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBITC_CACHE_DIR", str(tmp_path / "env"))
    assert Cache().path == tmp_path / "env"


# -- processes ----------------------------------------------------------------------------------
CHILD = """
import sys
from lowbitc.cache import Cache, CacheKey
cache = Cache(sys.argv[1])
key = CacheKey.make("kernel child", {"BM": 8}, backend="llvm")
def build():
    open(sys.argv[2], "a").write("built\\n")
    return b"object code"
assert cache.get_or_build(key, build) == b"object code"
print(cache.stats["hits"])
"""


def test_hit_across_processes(tmp_path):
    marker = tmp_path / "builds.txt"
    runs = [
        subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path / "c"), str(marker)],
            capture_output=True,
            text=True,
            check=True,
        )
        for _ in range(2)
    ]
    assert marker.read_text() == "built\n"
    assert [r.stdout.strip() for r in runs] == ["0", "1"]


def _racer(path: str, marker: str, barrier, queue) -> None:
    cache = Cache(path)
    key = make_key(source="kernel raced")

    def build():
        with open(marker, "a") as f:
            f.write("built\n")
        time.sleep(0.3)
        return b"A" * 5000

    barrier.wait()
    queue.put(cache.get_or_build(key, build))


def _writer(path: str, seed: int, barrier, queue) -> None:
    cache = Cache(path, max_bytes=40_000)
    rng = np.random.default_rng(seed)
    keys = [make_key(BM=i) for i in range(6)]
    bad = 0
    barrier.wait()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(40):
            k = keys[rng.integers(len(keys))]
            if rng.random() < 0.5:
                cache.put(k, bytes([seed]) * int(rng.integers(1, 9000)))
            else:
                data = cache.get(k)
                bad += data is not None and len(set(data)) != 1
        bad += len(seen)
    queue.put(bad)


@pytest.mark.parametrize("n", [2, 3])
def test_processes_racing_on_one_key_build_it_once(tmp_path, n):
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    marker = tmp_path / "builds.txt"
    procs = [
        ctx.Process(target=_racer, args=(str(tmp_path / "c"), str(marker), barrier, queue))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == [b"A" * 5000] * n
    assert marker.read_text() == "built\n"


def test_concurrent_writers_and_readers_never_see_bad_data(tmp_path):
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(str(tmp_path / "c"), seed, barrier, queue))
        for seed in (1, 2)
    ]
    for p in procs:
        p.start()
    bad = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert bad == [0, 0]
    cache = Cache(tmp_path / "c", max_bytes=40_000)
    assert cache.info()["bytes"] <= 40_000


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_info_and_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWBITC_CACHE_DIR", str(tmp_path / "c"))
    cache = Cache()
    cache.put(make_key(), b"1234")
    cache.put_json(make_key().derive("tuning", bucket="x"), {"BM": 16})
    assert cli_main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "entries:      2" in out and str(tmp_path / "c") in out and "tuning:" in out
    assert cli_main(["cache", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 2
    for extra in ("hosts", "tmp"):  # what the native loader and host records leave
        (tmp_path / "c" / extra).mkdir()
        (tmp_path / "c" / extra / "f").write_bytes(b"x")
    assert cli_main(["cache", "clear"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert list((tmp_path / "c").iterdir()) == []  # the directory is left empty
    assert cache.get(make_key()) is None and cache.info()["entries"] == 0
    cache.put(make_key(), b"5678")  # and the cache still works
    assert cache.get(make_key()) == b"5678"


def test_cli_reports_an_unsafe_directory_without_traceback(tmp_path, capsys):
    bad = tmp_path / "open"
    bad.mkdir()
    bad.chmod(0o777)
    assert cli_main(["cache", "info", "--dir", str(bad)]) == 2
    assert "world-writable" in capsys.readouterr().err
