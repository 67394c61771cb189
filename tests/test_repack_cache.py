"""Canonical words given to a kernel that reads another packing are transformed once per
array and reused while its contents are unchanged (issue 15); `Kernel.prepare` does it ahead."""

import gc
import platform
import re
import sys

import numpy as np
import pytest

import lowbitc
from lowbitc import dtype, pack
from lowbitc.backends.llvm.digest import CHUNK, WORDS, digest
from lowbitc.benchmarks.user_cases import USER_GEMV
from lowbitc.errors import UserArgumentError
from lowbitc.repack import PackedWords
from lowbitc.repack_cache import SEGMENT, WordsCache, blake2_digest
from lowbitc.write_watch import WATCH

GEMV = USER_GEMV  # the natural user GEMV of the DSL tour (also the repack_* bench rows)
RNG = np.random.default_rng(15)
_G = 0x9E3779B97F4A7C15


def _reference_digest(a: np.ndarray) -> bytes:
    """The documented digest in Python integers: per chunk, sum x_i * (2 i G + 1) mod 2^64."""
    raw = a.reshape(-1).view(np.uint8)
    whole = raw.size // 8
    words = [int(v) for v in raw[: whole * 8].view(np.uint64)]
    sums = [sum(x * (2 * i * _G + 1) for i, x in enumerate(words[c : c + CHUNK])) % 2**64
            for c in range(0, whole, CHUNK)]
    return np.array(sums, np.uint64).tobytes() + raw[whole * 8 :].tobytes()


@pytest.mark.parametrize("shape", [(3, 5), (40, 333), (2, CHUNK + 7), (1, 1)])
def test_native_digest_is_the_documented_sum(shape):
    a = RNG.integers(0, 2**32, shape, dtype=np.uint32)
    assert digest(a) == _reference_digest(a)


def test_every_single_bit_flip_changes_the_digest():
    a = RNG.integers(0, 2**32, (7, 19), dtype=np.uint32)  # a 4-byte tail past the 8-byte words
    base = digest(a)
    flat = a.reshape(-1)
    for i in range(flat.size):
        for b in range(32):
            flat[i] ^= np.uint32(1 << b)
            assert digest(a) != base, (i, b)
            flat[i] ^= np.uint32(1 << b)
    swapped = a.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert digest(swapped) != base


@pytest.mark.parametrize("w", ["b2", "u4", "u3"])
def test_canonical_words_are_transformed_once_and_writes_are_seen(w):
    k = lowbitc.compile(GEMV, W=dtype(w))
    assert k.packings  # the kernel reads a layout-specific packing
    bits = dtype(w).bits
    n, kk = 70, 200
    codes = RNG.integers(0, 1 << bits, (n, kk), dtype=np.uint8)
    canon = pack(codes, bits)
    x = RNG.standard_normal((1, kk)).astype(np.float32)

    def call() -> np.ndarray:
        y = np.zeros((1, n), np.float32)
        k(x, canon, y, K=kk)
        return y

    def ref() -> np.ndarray:
        c = lowbitc.unpack(canon, bits, kk).reshape(n, kk)
        return x.astype(np.float64) @ dtype(w).decode(c).astype(np.float64).T

    before = WORDS.transforms
    np.testing.assert_allclose(call(), ref(), rtol=1e-5, atol=1e-4)
    call()
    call()
    assert WORDS.transforms == before + 1  # one transform for three calls
    canon[5, 3] ^= np.uint32(1 << 7)  # written in place: the next call sees it
    got = call()
    np.testing.assert_allclose(got, ref(), rtol=1e-5, atol=1e-4)
    assert WORDS.transforms == before + 2
    canon[:] = canon[::-1].copy()  # every row moved, same multiset of words
    np.testing.assert_allclose(call(), ref(), rtol=1e-5, atol=1e-4)


def test_the_cache_forgets_an_array_when_it_dies():
    cache = WordsCache(blake2_digest)
    k = lowbitc.compile(GEMV, W=dtype("u4"))
    p = k.packings["w"]
    words = pack(RNG.integers(0, 16, (32, 64), dtype=np.uint8), 4)
    out = cache.get(p, words, 64)
    assert np.array_equal(out, p.from_canonical(words, 64))
    assert cache.get(p, words, 64) is out and cache.transforms == 1
    assert len(cache) == 1
    del words
    gc.collect()
    assert len(cache) == 0


def test_prepare_gives_packed_words_equal_to_the_transform():
    k = lowbitc.compile(GEMV, W=dtype("b2"))
    p = k.packings["w"]
    codes = RNG.integers(0, 4, (64, 128), dtype=np.uint8)
    canon = pack(codes, 2)
    pw = k.prepare("w", canon)
    assert isinstance(pw, PackedWords) and pw.packing == p and pw.count == 128
    assert np.array_equal(pw.words, p.from_codes(codes))
    x = RNG.standard_normal((1, 128)).astype(np.float32)
    y1, y2 = np.zeros((1, 64), np.float32), np.zeros((1, 64), np.float32)
    k(x, pw, y1)
    k(x, canon, y2)
    assert np.array_equal(y1, y2)
    assert k.prepare("x", x) is x  # a param read as given comes back unchanged
    assert k.prepare("w", pack(codes[:, :100], 2), count=100).count == 100


def test_prepare_names_the_bad_argument():
    k = lowbitc.compile(GEMV, W=dtype("b2"))
    canon = pack(np.zeros((32, 128), np.uint8), 2)
    with pytest.raises(UserArgumentError, match="no parameter 'v'"):
        k.prepare("v", canon)
    with pytest.raises(UserArgumentError, match="count: .* 8 uint32 words .* got 200"):
        k.prepare("w", canon, count=200)
    with pytest.raises(UserArgumentError, match="words: expected the canonical uint32"):
        k.prepare("w", canon.astype(np.int64))


def _tracking() -> bool:
    """Page-table write tracking needs Linux >= 6.7 on x86_64 with userfaultfd allowed;
    elsewhere the cache falls back to the digest and these tests are skipped."""
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return False
    major, minor = (int(v) for v in re.match(r"(\d+)\.(\d+)", platform.release()).groups())
    if (major, minor) < (6, 7):
        return False
    # a kernel that has it may still refuse userfaultfd (a container's seccomp profile, or
    # vm.unprivileged_userfaultfd without UFFD_USER_MODE_ONLY): then the digest path runs
    return WATCH.available()


needs_tracking = pytest.mark.skipif(not _tracking(), reason="no page-table write tracking")


def _own_pages(a: np.ndarray) -> np.ndarray:
    """A copy of `a` on pages of its own, a page of nothing either side: an array that shares
    an edge page with a neighbour (where the heap reuses earlier tests' memory) sees the
    neighbour's writes as its own."""
    page = 4096
    raw = np.zeros(a.nbytes + 3 * page, np.uint8)
    start = -raw.ctypes.data % page + page
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@needs_tracking
def test_large_words_skip_the_digest_and_every_write_is_seen(tmp_path):
    k = lowbitc.compile(GEMV, W=dtype("u4"))
    n, kk = 1024, 4096  # 2 MiB of words: tracked by the page tables, 8 segments
    codes = RNG.integers(0, 16, (n, kk), dtype=np.uint8)
    canon = _own_pages(pack(codes, 4))
    x = RNG.standard_normal((1, kk)).astype(np.float32)

    def call() -> np.ndarray:
        y = np.zeros((1, n), np.float32)
        k(x, canon, y)
        return y

    def check() -> None:
        c = lowbitc.unpack(canon, 4, kk).reshape(n, kk)
        want = x.astype(np.float64) @ dtype("u4").decode(c).astype(np.float64).T
        np.testing.assert_allclose(call(), want, rtol=1e-5, atol=1e-3)

    check()
    assert WORDS.watched(canon)
    t, d = WORDS.transforms, WORDS.digests
    for _ in range(3):
        call()
    # no transform, and at most the two edge segments digested (their pages may be shared
    # with neighbouring heap allocations, which were written), never the whole array
    assert WORDS.transforms == t and WORDS.digests <= d + 2
    assert canon.nbytes == 8 * SEGMENT
    flat = canon.reshape(-1)
    for i, bit in [(0, 0), (flat.size // 2 + 3, 17), (flat.size - 1, 31)]:
        flat[i] ^= np.uint32(1 << bit)  # one bit, first, middle and last page
        check()
    assert WORDS.transforms == t + 3
    canon[7:9] = canon[7:9].copy()  # written with the same contents: compared, kept
    call()
    assert WORDS.transforms == t + 3
    f = tmp_path / "words.bin"
    f.write_bytes(np.full(1000, 0x12345678, np.uint32).tobytes())
    with open(f, "rb") as fh:  # written by the OS (read() into the buffer)
        assert fh.readinto(memoryview(canon.reshape(-1)[5000:6000]).cast("B")) == 4000
    check()
    assert WORDS.transforms == t + 4


@needs_tracking
def test_overlapping_watched_arrays_each_see_a_write():
    base = np.ones(1 << 18, np.uint32)
    view = base[1 << 16 :]
    wb, wv = WATCH.watch(base), WATCH.watch(view)
    assert wb is not None and wv is not None
    assert not WATCH.written(wb) and not WATCH.written(wv)
    base[-1] = 5  # a page both hold: the first ask re-protects it, the second still sees it
    assert WATCH.written(wb) and WATCH.written(wv)
    assert not WATCH.written(wb) and not WATCH.written(wv)
    base[0] = 5  # a page only the base holds
    assert not WATCH.written(wv) and WATCH.written(wb)
    WATCH.forget(wv)
    WATCH.forget(wb)
    assert WATCH.watch(np.ones(16, np.uint32)) is None  # small arrays are digested instead
