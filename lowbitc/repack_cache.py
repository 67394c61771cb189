"""Canonical words transformed once per weight array, not on every call.

A kernel that reads a parameter in a layout-specific packing (`Kernel.packings`) and is given
canonical words transforms them to that packing; `WordsCache` keeps the result per array
(by identity, while the array lives) and reuses it while the array's contents are unchanged.
Whether they changed is asked first of the operating system (`lowbitc.write_watch`: on Linux
the page tables record which of the array's pages were written since the last call, at about
10 us per call for 16 MiB); only when a page was written, or where writes cannot be tracked
(another OS, arrays under 256 KiB, file-backed memory), a digest of the whole array (the LLVM
backend's runs natively on the thread pool, at about the cost of reading the words once) is
compared with the one taken when the words were transformed. Either way, writing into the
array in place is seen by the next call.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lowbitc.repack import Packing
from lowbitc.write_watch import WATCH, Watched

Digest = Callable[[np.ndarray], bytes]


def blake2_digest(array: np.ndarray) -> bytes:
    """A portable content digest (128-bit BLAKE2b of the bytes)."""
    return hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8).data,
                           digest_size=16).digest()


SEGMENT = 1 << 18  # bytes of a watched array digested together when a page in them is written


@dataclass(slots=True)
class _Array:
    digests: list[bytes]  # of the whole array, or of each SEGMENT of a watched one
    address: int
    shape: tuple[int, ...]
    watched: Watched | None
    slots: dict[tuple[Packing, int], np.ndarray]  # the words in each packing


class WordsCache:
    """`get(packing, words, count)`: `packing.from_canonical(words, count)`, transformed once
    per (array, packing, count) and kept while the array lives and its contents are unchanged
    (`watch=False`: checked by the digest on every call, never by the page tables)."""

    def __init__(self, digest: Digest = blake2_digest, watch: bool = True):
        self._digest = digest
        self._watch = watch
        self._lock = threading.Lock()
        self._arrays: dict[int, _Array] = {}
        self.transforms = 0  # how many transforms ran (tests and benchmarks read it)
        self.digests = 0  # how many digests ran

    def get(self, packing: Packing, words: np.ndarray, count: int) -> np.ndarray:
        key, slot = id(words), (packing, count)
        with self._lock:
            rec = self._arrays.get(key)
            if rec is not None and (rec.address != words.ctypes.data
                                    or rec.shape != words.shape):
                self._forget(key)
                rec = None
            if rec is None:
                rec = self._track(key, words)
            elif self._changed(rec, words):
                rec.slots.clear()
            out = rec.slots.get(slot)
            if out is None:
                out = rec.slots[slot] = packing.from_canonical(words, count)
                self.transforms += 1
            return out

    def _track(self, key: int, words: np.ndarray) -> _Array:
        """A new array: its pages watched first, then its digests taken (a write in between
        is seen by the next call)."""
        watched = WATCH.watch(words) if self._watch else None
        if watched is None:
            digests = [self._take_digest(words)]
        else:
            digests = [self._take_digest(s) for s in _segments(words, 0, words.nbytes)]
        rec = self._arrays[key] = _Array(digests, words.ctypes.data, words.shape, watched, {})
        weakref.finalize(words, self._drop, key, rec)
        return rec

    def _changed(self, rec: _Array, words: np.ndarray) -> bool:
        """Whether the contents differ from the digests (then updated): per call the whole
        array, or for a watched one only the segments holding a page written since."""
        if rec.watched is None:
            d = self._take_digest(words)
            changed, rec.digests = d != rec.digests[0], [d]
            return changed
        changed = False
        for lo, hi in WATCH.written(rec.watched):
            first = max(lo - rec.address, 0) // SEGMENT
            for i, seg in enumerate(_segments(words, first * SEGMENT, hi - rec.address),
                                    first):
                d = self._take_digest(seg)
                changed |= d != rec.digests[i]
                rec.digests[i] = d
        return changed

    def _take_digest(self, words: np.ndarray) -> bytes:
        self.digests += 1
        return self._digest(words)

    def _forget(self, key: int) -> None:
        rec = self._arrays.pop(key, None)
        if rec is not None and rec.watched is not None:
            WATCH.forget(rec.watched)

    def _drop(self, key: int, rec: _Array) -> None:
        with self._lock:
            if self._arrays.get(key) is rec:
                self._forget(key)

    def watched(self, words: np.ndarray) -> bool:
        """Whether writes to `words` are tracked by the page tables (else digested per call)."""
        with self._lock:
            rec = self._arrays.get(id(words))
            return rec is not None and rec.watched is not None

    def __len__(self) -> int:
        with self._lock:
            return sum(len(r.slots) for r in self._arrays.values())


def _segments(words: np.ndarray, lo: int, hi: int):
    """The SEGMENT-byte slices of a C-contiguous array's bytes that overlap [lo, hi)."""
    raw = words.reshape(-1).view(np.uint8)
    for s in range(lo // SEGMENT * SEGMENT, min(hi, raw.size), SEGMENT):
        yield raw[s : s + SEGMENT]


WORDS = WordsCache()  # for callers without a faster digest of their own
